package floats

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The truth is testdata/truth.py: numpy decoding every bit pattern from
// the format definitions and rounding by value, written without looking
// at this package. It runs once per test binary.

const python = "/usr/bin/python3" // Debian's, the one with numpy

var (
	truthOnce sync.Once
	truthDir  string
	truthErr  error
	noNumpy   error
)

func truth(t *testing.T) string {
	t.Helper()
	// Asked once: every load asks for the truth, and an interpreter that
	// imports numpy costs 0.3 s of CPU (8 s of this package's 18 under
	// -race when each load asked).
	truthOnce.Do(func() {
		noNumpy = exec.Command(python, "-c", "import numpy").Run()
		if noNumpy != nil {
			return
		}
		dir, err := os.MkdirTemp("", "floats-truth")
		if err != nil {
			truthErr = err
			return
		}
		out, err := exec.Command(python, "testdata/truth.py", dir).CombinedOutput()
		if err != nil {
			os.RemoveAll(dir)
			truthErr = fmt.Errorf("truth.py: %v\n%s", err, out)
			return
		}
		truthDir = dir
	})
	if noNumpy != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the conversion tests need %s with numpy (apt-get install python3-numpy): %v", python, noNumpy)
		}
		t.Skipf("no numpy for %s", python)
	}
	if truthErr != nil {
		t.Fatal(truthErr)
	}
	return truthDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if truthDir != "" {
		os.RemoveAll(truthDir)
	}
	os.Exit(code)
}

func load(t *testing.T, name string) []uint32 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(truth(t), name+".bin"))
	if err != nil {
		t.Fatal(err)
	}
	v := make([]uint32, len(b)/4)
	for i := range v {
		v[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return v
}

var converted = []safetensors.DType{
	safetensors.BF16, safetensors.F16, safetensors.F8_E5M2, safetensors.F8_E4M3,
	safetensors.F8_E4M3FNUZ, safetensors.F8_E5M2FNUZ, safetensors.F8_E8M0,
	safetensors.F6_E2M3, safetensors.F6_E3M2, safetensors.F4,
}

func TestHas(t *testing.T) {
	for d := range safetensors.DType(22) {
		want := false
		for _, c := range converted {
			want = want || c == d
		}
		if Has(d) != want {
			t.Errorf("Has(%v) = %v", d, !want)
		}
	}
	if Group(safetensors.F4) != 2 || Group(safetensors.F6_E3M2) != 4 || Group(safetensors.BF16) != 1 {
		t.Error("Group")
	}
}

// pack lays codes out as a tensor of d holds them.
func pack(d safetensors.DType, codes []uint32) []byte {
	switch d.Bits() {
	case 16:
		b := make([]byte, 2*len(codes))
		for i, c := range codes {
			binary.LittleEndian.PutUint16(b[2*i:], uint16(c))
		}
		return b
	case 8:
		b := make([]byte, len(codes))
		for i, c := range codes {
			b[i] = byte(c)
		}
		return b
	}
	panic("pack: sub-byte codes come packed from truth.py")
}

func unpack(d safetensors.DType, b []byte) []uint32 {
	v := make([]uint32, len(b)*8/d.Bits())
	for i := range v {
		if d.Bits() == 16 {
			v[i] = uint32(binary.LittleEndian.Uint16(b[2*i:]))
		} else {
			v[i] = uint32(b[i])
		}
	}
	return v
}

func TestDecodeEveryCode(t *testing.T) {
	for _, d := range converted {
		t.Run(d.String(), func(t *testing.T) {
			want := load(t, "decode_"+d.String())
			if len(want) != 1<<d.Bits() {
				t.Fatalf("truth has %d codes", len(want))
			}
			bad := 0
			for code, w := range want {
				if got := math.Float32bits(ToFloat32(d, uint32(code))); got != w && bad < 10 {
					bad++
					t.Errorf("code %#x: got %#08x (%g), want %#08x (%g)", code, got, math.Float32frombits(got), w, math.Float32frombits(w))
				}
			}
			if d.Bits() < 8 {
				return // TestPacking covers the slice path
			}
			codes := make([]uint32, len(want))
			for i := range codes {
				codes[i] = uint32(i)
			}
			src := pack(d, codes)
			got := make([]float32, len(codes))
			if n := Decode(d, got, src); n != len(codes) {
				t.Fatalf("Decode converted %d of %d", n, len(codes))
			}
			le := make([]byte, 4*len(codes))
			if n := DecodeLE(d, le, src); n != len(codes) {
				t.Fatalf("DecodeLE converted %d of %d", n, len(codes))
			}
			for i, w := range want {
				if g := math.Float32bits(got[i]); g != w {
					t.Fatalf("Decode: code %#x: got %#08x, want %#08x", i, g, w)
				}
				if g := binary.LittleEndian.Uint32(le[4*i:]); g != w {
					t.Fatalf("DecodeLE: code %#x: got %#08x, want %#08x", i, g, w)
				}
			}
		})
	}
}

func TestF16AgainstNumpy(t *testing.T) {
	dec := load(t, "numpy_decode_F16")
	for code, w := range dec {
		if got := math.Float32bits(ToFloat32(safetensors.F16, uint32(code))); got != w {
			t.Fatalf("F16 %#04x: got %#08x, numpy %#08x", code, got, w)
		}
	}
	in, enc := load(t, "inputs"), load(t, "numpy_encode_F16")
	bad := 0
	for i, x := range in {
		if got := FromFloat32(safetensors.F16, math.Float32frombits(x)); got != enc[i] && bad < 10 {
			bad++
			t.Errorf("float32 %#08x -> F16: got %#04x, numpy %#04x", x, got, enc[i])
		}
	}
}

func TestEncode(t *testing.T) {
	in := load(t, "inputs")
	vals := make([]float32, len(in))
	le := make([]byte, 4*len(in))
	for i, x := range in {
		vals[i] = math.Float32frombits(x)
		binary.LittleEndian.PutUint32(le[4*i:], x)
	}
	for _, d := range converted {
		t.Run(d.String(), func(t *testing.T) {
			want := load(t, "encode_"+d.String())
			bad := 0
			for i, x := range in {
				if got := FromFloat32(d, vals[i]); got != want[i] && bad < 10 {
					bad++
					t.Errorf("float32 %#08x (%g) -> got %#x, want %#x", x, vals[i], got, want[i])
				}
			}
			if bad > 0 || d.Bits() < 8 {
				return
			}
			n := len(in) - len(in)%Group(d)
			out := make([]byte, n*d.Bits()/8)
			if k := Encode(d, out, vals[:n]); k != n {
				t.Fatalf("Encode converted %d of %d", k, n)
			}
			outLE := make([]byte, len(out))
			if k := EncodeLE(d, outLE, le[:4*n]); k != n {
				t.Fatalf("EncodeLE converted %d of %d", k, n)
			}
			for i, c := range unpack(d, out) {
				if c != want[i] {
					t.Fatalf("Encode: element %d: got %#x, want %#x", i, c, want[i])
				}
			}
			for i, c := range unpack(d, outLE) {
				if c != want[i] {
					t.Fatalf("EncodeLE: element %d: got %#x, want %#x", i, c, want[i])
				}
			}
		})
	}
}

// TestPacking checks the sub-byte layout both ways on bytes truth.py packed.
func TestPacking(t *testing.T) {
	for _, c := range []struct {
		name string
		ds   []safetensors.DType
	}{{"F4", []safetensors.DType{safetensors.F4}}, {"F6", []safetensors.DType{safetensors.F6_E2M3, safetensors.F6_E3M2}}} {
		codes, packed := load(t, "pack_"+c.name+"_codes"), load(t, "pack_"+c.name+"_bytes")
		src := make([]byte, len(packed))
		for i, b := range packed {
			src[i] = byte(b)
		}
		for _, d := range c.ds {
			table := load(t, "decode_"+d.String())
			got := make([]float32, len(codes))
			if n := Decode(d, got, src); n != len(codes) {
				t.Fatalf("%v: Decode converted %d of %d", d, n, len(codes))
			}
			le := make([]byte, 4*len(codes))
			DecodeLE(d, le, src)
			for i, code := range codes {
				if g := math.Float32bits(got[i]); g != table[code] {
					t.Fatalf("%v element %d (code %#x): got %#08x, want %#08x", d, i, code, g, table[code])
				}
				if g := binary.LittleEndian.Uint32(le[4*i:]); g != table[code] {
					t.Fatalf("%v DecodeLE element %d: got %#08x", d, i, g)
				}
			}
			// Every F6/F4 value is finite and distinct but for ±0, so
			// encoding the decoded values gives the bytes back (with -0
			// kept).
			back := make([]byte, len(src))
			if n := Encode(d, back, got); n != len(codes) {
				t.Fatalf("%v: Encode converted %d", d, n)
			}
			backLE := make([]byte, len(src))
			EncodeLE(d, backLE, le)
			for i := range src {
				if back[i] != src[i] || backLE[i] != src[i] {
					t.Fatalf("%v: byte %d: Encode %#02x, EncodeLE %#02x, want %#02x", d, i, back[i], backLE[i], src[i])
				}
			}
		}
	}
}

// TestAnchors pins values the format specifications and ml_dtypes' own
// tests state, so that a shared misreading of a format by this package and
// truth.py still fails.
func TestAnchors(t *testing.T) {
	cases := []struct {
		d    safetensors.DType
		code uint32
		want float64
	}{
		{safetensors.F8_E4M3, 0x7E, 448}, {safetensors.F8_E4M3, 0x01, 0x1p-9}, {safetensors.F8_E4M3, 0x38, 1},
		{safetensors.F8_E5M2, 0x7B, 57344}, {safetensors.F8_E5M2, 0x01, 0x1p-16}, {safetensors.F8_E5M2, 0x3C, 1},
		{safetensors.F8_E4M3FNUZ, 0x7F, 240}, {safetensors.F8_E4M3FNUZ, 0x01, 0x1p-10}, {safetensors.F8_E4M3FNUZ, 0x40, 1},
		{safetensors.F8_E5M2FNUZ, 0x7F, 57344}, {safetensors.F8_E5M2FNUZ, 0x01, 0x1p-17}, {safetensors.F8_E5M2FNUZ, 0x40, 1},
		{safetensors.F8_E8M0, 0x7F, 1}, {safetensors.F8_E8M0, 0x00, 0x1p-127}, {safetensors.F8_E8M0, 0xFE, 0x1p127},
		{safetensors.F6_E2M3, 0x1F, 7.5}, {safetensors.F6_E2M3, 0x01, 0.125}, {safetensors.F6_E2M3, 0x08, 1},
		{safetensors.F6_E3M2, 0x1F, 28}, {safetensors.F6_E3M2, 0x01, 0.0625}, {safetensors.F6_E3M2, 0x0C, 1},
		{safetensors.F4, 0x7, 6}, {safetensors.F4, 0x1, 0.5}, {safetensors.F4, 0x2, 1}, {safetensors.F4, 0xF, -6},
		{safetensors.F16, 0x7BFF, 65504}, {safetensors.F16, 0x0001, 0x1p-24}, {safetensors.BF16, 0x3F80, 1},
		{safetensors.BF16, 0x7F7F, 0x1.FEp127},
	}
	for _, c := range cases {
		if got := ToFloat32(c.d, c.code); float64(got) != c.want {
			t.Errorf("%v %#x = %g, want %g", c.d, c.code, got, c.want)
		}
	}
	nans := map[safetensors.DType][]uint32{
		safetensors.F8_E4M3: {0x7F, 0xFF}, safetensors.F8_E5M2: {0x7D, 0x7E, 0x7F, 0xFD},
		safetensors.F8_E4M3FNUZ: {0x80}, safetensors.F8_E5M2FNUZ: {0x80}, safetensors.F8_E8M0: {0xFF},
		safetensors.F16: {0x7E00, 0x7C01}, safetensors.BF16: {0x7FC0, 0xFF81},
	}
	for d, codes := range nans {
		for _, c := range codes {
			if v := ToFloat32(d, c); !math.IsNaN(float64(v)) {
				t.Errorf("%v %#x = %g, want NaN", d, c, v)
			}
		}
	}
	// Rounding and overflow, stated by the formats' definitions.
	enc := []struct {
		d    safetensors.DType
		v    float32
		want uint32
	}{
		{safetensors.F8_E4M3, 464, 0x7E}, {safetensors.F8_E4M3, 465, 0x7F}, {safetensors.F8_E4M3, -1e9, 0xFF},
		{safetensors.F8_E5M2, 61440, 0x7C}, {safetensors.F8_E5M2, 61439, 0x7B}, {safetensors.F8_E5M2, float32(math.Inf(-1)), 0xFC},
		{safetensors.F8_E4M3FNUZ, 1e6, 0x80}, {safetensors.F8_E4M3FNUZ, float32(math.Copysign(0, -1)), 0x00},
		{safetensors.F4, 100, 0x7}, {safetensors.F4, -100, 0xF}, {safetensors.F4, 0.25, 0x0}, {safetensors.F4, 0.75, 0x2},
		{safetensors.F6_E3M2, float32(math.Inf(1)), 0x1F},
		{safetensors.F8_E8M0, 1.5, 0x80}, {safetensors.F8_E8M0, 0, 0xFF}, {safetensors.F8_E8M0, -1, 0xFF},
		{safetensors.BF16, 1 + 0x1p-8, 0x3F80}, {safetensors.BF16, 1 + 0x1p-8 + 0x1p-20, 0x3F81},
		{safetensors.F16, 65520, 0x7C00}, {safetensors.F16, 65519, 0x7BFF},
	}
	for _, c := range enc {
		if got := FromFloat32(c.d, c.v); got != c.want {
			t.Errorf("%v(%g) = %#x, want %#x", c.d, c.v, got, c.want)
		}
	}
}

// TestCounts: conversions stop at whole groups and at the shorter side.
func TestCounts(t *testing.T) {
	if n := Decode(safetensors.F6_E2M3, make([]float32, 10), make([]byte, 9)); n != 8 {
		t.Errorf("F6 decode of 9 bytes into 10: %d, want 8", n)
	}
	if n := Decode(safetensors.F4, make([]float32, 5), make([]byte, 9)); n != 4 {
		t.Errorf("F4 decode into 5: %d, want 4", n)
	}
	if n := DecodeLE(safetensors.BF16, make([]byte, 4*3000), make([]byte, 2*2500)); n != 2500 {
		t.Errorf("BF16 DecodeLE: %d, want 2500", n)
	}
	if n := Encode(safetensors.F6_E3M2, make([]byte, 6), make([]float32, 12)); n != 8 {
		t.Errorf("F6 encode into 6 bytes: %d, want 8", n)
	}
	if n := EncodeLE(safetensors.F8_E4M3, make([]byte, 2000), make([]byte, 4*1500)); n != 1500 {
		t.Errorf("F8 EncodeLE: %d, want 1500", n)
	}
	if n := Decode(safetensors.F16, nil, nil); n != 0 {
		t.Error("empty")
	}
}

// TestDecodeLEMatchesDecode: the direct little-endian paths agree with
// Decode for every length (the BF16 path takes four elements at a time).
func TestDecodeLEMatchesDecode(t *testing.T) {
	for _, d := range converted {
		for n := 0; n <= 40; n += Group(d) {
			src := make([]byte, n*d.Bits()/8)
			for i := range src {
				src[i] = byte(i*151 + n*7 + 3)
			}
			want := make([]float32, n)
			Decode(d, want, src)
			got := make([]byte, 4*n+3)
			if k := DecodeLE(d, got, src); k != n {
				t.Fatalf("%v: DecodeLE of %d converted %d", d, n, k)
			}
			for i, w := range want {
				if g := binary.LittleEndian.Uint32(got[4*i:]); g != math.Float32bits(w) {
					t.Fatalf("%v n=%d element %d: %#08x, Decode %#08x", d, n, i, g, math.Float32bits(w))
				}
			}
		}
	}
}
