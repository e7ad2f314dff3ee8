package npy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
)

// The truth for headers is numpy itself. testdata/golden.json holds what
// numpy wrote for every case below, so the comparison runs without numpy;
// when numpy is installed, the tests also ask it again, which checks both
// this package and the stored table. Regenerate the table with
//
//	go test ./safetensors/npy/ -run TestGolden -update
var update = flag.Bool("update", false, "rewrite testdata/golden.json from numpy")

const (
	pythonPath = "/usr/bin/python3" // Debian's, the one with numpy
	goldenPath = "testdata/golden.json"
	// Headers longer than this are stored as a hash, to keep the table small.
	maxStoredHex = 4096
)

// numpyGen runs inside Python. It reads a JSON list of cases on stdin and
// prints {name: hex} for each. Three ways to ask numpy:
//   - "save": the prefix np.save writes for a C-order array of that dtype and
//     shape. Small arrays are saved whole and the data cut off; large ones
//     are zero-stride views saved into a writer that keeps only the first
//     write (write_array writes the header in one call) and then aborts.
//   - "dict": _write_array_header, the function np.save calls, with the dict
//     np.save would build; for shapes no array can have (over 32 dims in
//     numpy 1.24, or dims past intp).
//   - "file": the whole file np.save (or write_array with a version) writes
//     for the array a Python expression builds.
const numpyGen = `
import sys, json, io, warnings
import numpy as np
from numpy.lib import format as F

class Stop(Exception):
    pass

class FirstWrite:
    def __init__(self):
        self.first = None
    def write(self, b):
        if self.first is not None:
            raise Stop()
        self.first = bytes(b)
        return len(b)

def save(dt, shape):
    dt = np.dtype(dt)
    n = 1
    for d in shape:
        n *= d
    if n * dt.itemsize <= 1 << 20:
        arr = np.zeros(shape, dt)
        buf = io.BytesIO()
        np.save(buf, arr)
        full = buf.getvalue()
        h = full[:len(full) - arr.nbytes]
        assert full[len(h):] == arr.tobytes()
        return h
    arr = np.broadcast_to(np.zeros((), dt), shape)
    w = FirstWrite()
    try:
        np.save(w, arr)
    except Stop:
        pass
    return w.first

def dict_header(dt, shape):
    buf = io.BytesIO()
    d = {'descr': F.dtype_to_descr(np.dtype(dt)), 'fortran_order': False, 'shape': tuple(shape)}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        F._write_array_header(buf, d)
    return buf.getvalue()

def whole_file(expr, version):
    arr = eval(expr, {'np': np})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if version:
            F.write_array(buf, arr, version=tuple(version))
        else:
            np.save(buf, arr)
    return buf.getvalue()

out = {'numpy_version': np.__version__, 'cases': {}}
for c in json.load(sys.stdin):
    m = c['method']
    if m == 'save':
        b = save(c['np'], c['shape'])
    elif m == 'dict':
        b = dict_header(c['np'], c['shape'])
    else:
        b = whole_file(c['expr'], c.get('version'))
    out['cases'][c['name']] = b.hex()
json.dump(out, sys.stdout)
`

// genCase is one request to numpyGen.
type genCase struct {
	Name    string   `json:"name"`
	Method  string   `json:"method"`
	NP      string   `json:"np,omitempty"`
	Shape   []uint64 `json:"shape"`
	Expr    string   `json:"expr,omitempty"`
	Version []int    `json:"version,omitempty"`
}

// headerCase: Header(d, shape) must equal numpy's bytes for each d in dtypes.
type headerCase struct {
	gen    genCase
	dtypes []string
}

// npNames maps numpy dtype names to the safetensors dtypes saved that way.
var npNames = []struct {
	np     string
	dtypes []string
}{
	{"bool", []string{"BOOL"}},
	{"uint8", []string{"U8"}},
	{"int8", []string{"I8"}},
	{"int16", []string{"I16"}},
	{"uint16", []string{"U16"}},
	{"float16", []string{"F16"}},
	{"int32", []string{"I32"}},
	{"uint32", []string{"U32"}},
	{"float32", []string{"F32"}},
	{"complex64", []string{"C64"}},
	{"float64", []string{"F64"}},
	{"int64", []string{"I64"}},
	{"uint64", []string{"U64"}},
	// ml_dtypes arrays reach np.save as void; a plain void array is the
	// same bytes.
	{"V2", []string{"BF16"}},
	{"V1", []string{"F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}},
}

func ones(n int) []uint64 {
	s := make([]uint64, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

func shapeLabel(s []uint64) string {
	if len(s) > 4 && slices.Equal(s, ones(len(s))) {
		return fmt.Sprintf("(1,)*%d", len(s))
	}
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	if len(s) == 1 {
		return "(" + parts[0] + ",)"
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func headerCases() []headerCase {
	var cs []headerCase
	add := func(method, np string, shape []uint64, dtypes []string) {
		cs = append(cs, headerCase{
			gen:    genCase{Name: method + " " + np + " " + shapeLabel(shape), Method: method, NP: np, Shape: shape},
			dtypes: dtypes,
		})
	}
	// Every dtype with the shapes that exercise the repr and the padding.
	for _, n := range npNames {
		for _, s := range [][]uint64{{}, {0}, {5}, {2, 3}, {1, 2, 3, 4}, {1 << 40}, ones(32)} {
			add("save", n.np, s, n.dtypes)
		}
	}
	// The growth padding depends on the digits of the first dimension.
	for d := uint64(1); d <= 1e18; d *= 10 {
		add("save", "float32", []uint64{d, 1}, []string{"F32"})
	}
	// Only axis 0 counts in C order, however wide the others are.
	add("save", "float32", []uint64{3, 1e12}, []string{"F32"})
	// Past intp no array exists, but the header is still defined; uint8 keeps
	// the byte size within uint64, which Header requires.
	add("dict", "uint8", []uint64{1e19}, []string{"U8"})
	add("dict", "uint8", []uint64{math.MaxUint64}, []string{"U8"})
	add("dict", "float32", []uint64{math.MaxUint64, math.MaxUint64, 0}, []string{"F32"})
	// Each dimension adds 3 bytes and 3 is prime to 64, so 64 consecutive
	// ranks hit every padding length, including numpy's 64 (never 0).
	for k := 33; k <= 96; k++ {
		add("dict", "float32", ones(k), []string{"F32"})
	}
	// The last rank numpy writes as version 1.0 and the first as 2.0.
	add("dict", "uint8", ones(21817), []string{"U8"})
	add("dict", "uint8", ones(21818), []string{"U8"})
	add("dict", "float32", ones(30000), []string{"F32"})
	return cs
}

// fileCase: Parse of a whole file numpy wrote must give this result.
type fileCase struct {
	gen       genCase
	dtype     string
	shape     []uint64
	version   [2]byte
	fortran   bool
	wantErr   error  // matched with errors.Is
	errSubstr string // or the error must contain this
}

func fileCases() []fileCase {
	file := func(name, expr string, version ...int) genCase {
		return genCase{Name: "file " + name, Method: "file", Expr: expr, Version: version}
	}
	return []fileCase{
		{gen: file("f32 v1", "np.arange(6, dtype='<f4').reshape(2, 3)"), dtype: "F32", shape: []uint64{2, 3}, version: [2]byte{1, 0}},
		{gen: file("f32 v2", "np.arange(6, dtype='<f4').reshape(2, 3)", 2, 0), dtype: "F32", shape: []uint64{2, 3}, version: [2]byte{2, 0}},
		{gen: file("f16 v3", "np.zeros((4, 1, 2), np.float16)", 3, 0), dtype: "F16", shape: []uint64{4, 1, 2}, version: [2]byte{3, 0}},
		{gen: file("i64 scalar v3", "np.array(7, np.int64)", 3, 0), dtype: "I64", shape: []uint64{}, version: [2]byte{3, 0}},
		{gen: file("bool v2", "np.ones(3, bool)", 2, 0), dtype: "BOOL", shape: []uint64{3}, version: [2]byte{2, 0}},
		{gen: file("big-endian u1", "np.zeros(3, '>u1')"), dtype: "U8", shape: []uint64{3}, version: [2]byte{1, 0}},
		{gen: file("V2", "np.zeros((2, 2), 'V2')"), dtype: "BF16", shape: []uint64{2, 2}, version: [2]byte{1, 0}},
		{gen: file("V1", "np.zeros(4, 'V1')"), shape: []uint64{4}, version: [2]byte{1, 0}, wantErr: ErrAmbiguousVoid},
		{gen: file("fortran", "np.asfortranarray(np.zeros((2, 3), '<f4'))"), wantErr: ErrFortran},
		{gen: file("big-endian f4", "np.zeros(3, '>f4')"), errSubstr: "big-endian descr '>f4'"},
		{gen: file("big-endian i8 v2", "np.zeros(3, '>i8')", 2, 0), errSubstr: "big-endian descr '>i8'"},
		{gen: file("object", "np.array([None, 1], dtype=object)"), errSubstr: "object arrays are not supported"},
		{gen: file("unicode", "np.array(['abc'])"), errSubstr: "unknown descr '<U3'"},
		{gen: file("bytes", "np.array([b'ab'])"), errSubstr: "unknown descr '|S2'"},
		{gen: file("structured", "np.zeros(2, dtype=[('a', '<f4'), ('b', '<i2')])"), errSubstr: "structured dtypes are not supported"},
		{gen: file("complex128", "np.zeros(2, np.complex128)"), errSubstr: "unknown descr '<c16'"},
		{gen: file("longdouble", "np.zeros(2, np.longdouble)"), errSubstr: "unknown descr '<f16'"},
		{gen: file("datetime", "np.zeros(2, 'datetime64[ns]')"), errSubstr: "unknown descr '<M8[ns]'"},
		{gen: file("V4", "np.zeros(2, 'V4')"), errSubstr: "unknown descr '|V4'"},
	}
}

func allGenCases() []genCase {
	var gs []genCase
	for _, c := range headerCases() {
		gs = append(gs, c.gen)
	}
	for _, c := range fileCases() {
		gs = append(gs, c.gen)
	}
	return gs
}

// goldenEntry stores bytes as hex, or only their hash and length when large.
type goldenEntry struct {
	Hex    string `json:"hex,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Len    int    `json:"len,omitempty"`
}

type goldenFile struct {
	NumpyVersion string                 `json:"numpy_version"`
	Cases        map[string]goldenEntry `json:"cases"`
}

func entryFor(b []byte) goldenEntry {
	if len(b)*2 <= maxStoredHex {
		return goldenEntry{Hex: hex.EncodeToString(b)}
	}
	sum := sha256.Sum256(b)
	return goldenEntry{SHA256: hex.EncodeToString(sum[:]), Len: len(b)}
}

// matches reports whether b is the stored entry, and the stored bytes when
// the entry holds them.
func (e goldenEntry) matches(b []byte) bool {
	if e.Hex != "" {
		return hex.EncodeToString(b) == e.Hex
	}
	sum := sha256.Sum256(b)
	return e.SHA256 != "" && len(b) == e.Len && hex.EncodeToString(sum[:]) == e.SHA256
}

func loadGolden(t *testing.T) goldenFile {
	t.Helper()
	raw, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("reading golden table: %v (regenerate with -update)", err)
	}
	var g goldenFile
	if err := json.Unmarshal(raw, &g); err != nil {
		t.Fatalf("decoding %s: %v", goldenPath, err)
	}
	return g
}

var numpyOnce struct {
	sync.Once
	version string
	cases   map[string][]byte
	err     error
}

// liveNumpy asks numpy for every case once per test binary. It skips the
// test when numpy is not there, unless CI is set: a CI run must not pass by
// skipping the only independent check.
func liveNumpy(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	numpyOnce.Do(func() {
		numpyOnce.version, numpyOnce.cases, numpyOnce.err = runNumpy()
	})
	if numpyOnce.err != nil {
		if _, ci := os.LookupEnv("CI"); !ci && errors.Is(numpyOnce.err, errNoNumpy) {
			t.Skipf("numpy unavailable, checking against %s only: %v", goldenPath, numpyOnce.err)
		}
		t.Fatalf("numpy generator: %v", numpyOnce.err)
	}
	return numpyOnce.version, numpyOnce.cases
}

var errNoNumpy = errors.New("no numpy")

func runNumpy() (string, map[string][]byte, error) {
	if err := exec.Command(pythonPath, "-c", "import numpy").Run(); err != nil {
		return "", nil, fmt.Errorf("%w: %s -c 'import numpy': %v", errNoNumpy, pythonPath, err)
	}
	in, err := json.Marshal(allGenCases())
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(pythonPath, "-c", numpyGen)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", nil, fmt.Errorf("%v: %s", err, stderr.Bytes())
	}
	var res struct {
		NumpyVersion string            `json:"numpy_version"`
		Cases        map[string]string `json:"cases"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return "", nil, err
	}
	cases := make(map[string][]byte, len(res.Cases))
	for name, h := range res.Cases {
		if cases[name], err = hex.DecodeString(h); err != nil {
			return "", nil, fmt.Errorf("case %q: %v", name, err)
		}
	}
	return res.NumpyVersion, cases, nil
}

// TestGoldenTable checks that the stored table covers every case, and, with
// numpy present, that it still says what numpy says (or rewrites it with
// -update).
func TestGoldenTable(t *testing.T) {
	gs := allGenCases()
	seen := map[string]bool{}
	for _, g := range gs {
		if seen[g.Name] {
			t.Fatalf("duplicate case name %q", g.Name)
		}
		seen[g.Name] = true
	}
	if *update {
		// No skipping here: -update without numpy must not look like success.
		version, live, err := runNumpy()
		if err != nil {
			t.Fatalf("-update needs numpy: %v", err)
		}
		g := goldenFile{NumpyVersion: version, Cases: map[string]goldenEntry{}}
		for _, c := range gs {
			g.Cases[c.Name] = entryFor(live[c.Name])
		}
		raw, err := json.MarshalIndent(g, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenPath, append(raw, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s from numpy %s", goldenPath, version)
	}
	g := loadGolden(t)
	for _, c := range gs {
		if _, ok := g.Cases[c.Name]; !ok {
			t.Errorf("%s has no case %q (regenerate with -update)", goldenPath, c.Name)
		}
	}
	if len(g.Cases) != len(gs) {
		t.Errorf("%s has %d cases, the tests define %d", goldenPath, len(g.Cases), len(gs))
	}
	_, live := liveNumpy(t)
	for _, c := range gs {
		if !g.Cases[c.Name].matches(live[c.Name]) {
			t.Errorf("%s: stored bytes differ from what numpy writes now", c.Name)
		}
	}
}

// checkHeaders compares Header with the expected bytes of every header case.
func checkHeaders(t *testing.T, want func(name string) (goldenEntry, bool)) {
	for _, c := range headerCases() {
		e, ok := want(c.gen.Name)
		if !ok {
			t.Errorf("%s: no expected bytes", c.gen.Name)
			continue
		}
		for _, d := range c.dtypes {
			got, err := Header(d, c.gen.Shape)
			if err != nil {
				t.Errorf("%s: Header(%s): %v", c.gen.Name, d, err)
				continue
			}
			if !e.matches(got) {
				if e.Hex != "" {
					t.Errorf("%s: Header(%s) =\n%q\nnumpy:\n%q", c.gen.Name, d, got, mustHex(e.Hex))
				} else {
					t.Errorf("%s: Header(%s) (%d bytes) differs from numpy (%d bytes)", c.gen.Name, d, len(got), e.Len)
				}
			}
		}
	}
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestHeaderMatchesStoredNumpy(t *testing.T) {
	g := loadGolden(t)
	checkHeaders(t, func(name string) (goldenEntry, bool) {
		e, ok := g.Cases[name]
		return e, ok
	})
}

func TestHeaderMatchesLiveNumpy(t *testing.T) {
	_, live := liveNumpy(t)
	checkHeaders(t, func(name string) (goldenEntry, bool) {
		b, ok := live[name]
		return goldenEntry{Hex: hex.EncodeToString(b)}, ok
	})
}

// checkFiles parses whole files numpy wrote.
func checkFiles(t *testing.T, files func(name string) ([]byte, bool)) {
	for _, c := range fileCases() {
		b, ok := files(c.gen.Name)
		if !ok {
			t.Errorf("%s: no file bytes", c.gen.Name)
			continue
		}
		info, err := Parse(b)
		switch {
		case c.wantErr != nil:
			if !errors.Is(err, c.wantErr) {
				t.Errorf("%s: err = %v, want %v", c.gen.Name, err, c.wantErr)
				continue
			}
		case c.errSubstr != "":
			if err == nil || !strings.Contains(err.Error(), c.errSubstr) {
				t.Errorf("%s: err = %v, want one containing %q", c.gen.Name, err, c.errSubstr)
			}
			continue
		case err != nil:
			t.Errorf("%s: %v", c.gen.Name, err)
			continue
		}
		if info == nil {
			if c.shape != nil {
				t.Errorf("%s: no Info with error %v", c.gen.Name, err)
			}
			continue
		}
		if info.DType != c.dtype || !slices.Equal(info.Shape, c.shape) || info.Version != c.version || info.Fortran != c.fortran {
			t.Errorf("%s: got %+v, want dtype %q shape %v version %v", c.gen.Name, info, c.dtype, c.shape, c.version)
		}
		if info.DataOffset%64 != 0 || info.DataOffset > len(b) {
			t.Errorf("%s: DataOffset %d in a %d-byte file", c.gen.Name, info.DataOffset, len(b))
		}
		// The rest of the file is the data, as numpy reads it.
		if c.dtype != "" || errors.Is(err, ErrAmbiguousVoid) {
			d, _ := lookup(c.dtype)
			size := d.size
			if c.dtype == "" {
				size = 1
			}
			n, _ := byteSize(info.Shape, size)
			if uint64(len(b)-info.DataOffset) != n {
				t.Errorf("%s: %d data bytes after offset %d, shape says %d", c.gen.Name, len(b)-info.DataOffset, info.DataOffset, n)
			}
		}
	}
}

func TestParseStoredNumpyFiles(t *testing.T) {
	g := loadGolden(t)
	checkFiles(t, func(name string) ([]byte, bool) {
		e, ok := g.Cases[name]
		if !ok || e.Hex == "" {
			return nil, false
		}
		return mustHex(e.Hex), true
	})
}

func TestParseLiveNumpyFiles(t *testing.T) {
	_, live := liveNumpy(t)
	checkFiles(t, func(name string) ([]byte, bool) {
		b, ok := live[name]
		return b, ok
	})
}
