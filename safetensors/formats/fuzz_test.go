package formats

import (
	"bytes"
	"io"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors/formats/msgpack"
	"github.com/safejaxfs/safejaxfs/safetensors/formats/pickle"
)

// openBytes parses b as Open would (format sniffed) and streams every
// tensor, without a file: what fuzzing drives.
func openBytes(b []byte) error {
	f := &File{Path: "fuzz", m: b, ra: bytes.NewReader(b), size: int64(len(b)), made: map[*base][]byte{}, mades: map[int]*madeOnce{}}
	f.Format = Sniff(b[:min(len(b), SniffLen)], int64(len(b)))
	if f.Format == Zip {
		f.Format = sniffZip(bytes.NewReader(b), int64(len(b)))
	}
	if !f.Format.Mountable() {
		return nil
	}
	if err := f.parse(); err != nil {
		return err
	}
	if err := checkKeys(f.Tensors); err != nil {
		return err
	}
	for i := range f.Tensors {
		var n countWriter
		n.w = io.Discard
		if err := f.WriteTo(i, &n); err != nil {
			continue // a strided view of a deflated member needs a file
		}
		if n.n != f.Tensors[i].Size {
			panic("a tensor streamed another size than it has")
		}
	}
	return nil
}

func seeds(f *testing.F) {
	f.Add(flaxArray([]uint64{2, 2}, "float32", make([]byte, 16)))
	f.Add([]byte("\x93NUMPY\x01\x00\x46\x00{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }           \n" + string(make([]byte, 24))))
	f.Add([]byte("GGUF\x03\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00t\x01\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + string(make([]byte, 48))))
	f.Add(torchZip(f, []byte("\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x06tq\x07QK\x01K\x02K\x02\x86q\x08K\x01K\x02\x86q\tN}q\ntq\x0bRq\x0cs."), map[string][]byte{"0": make([]byte, 24)}))
}

func FuzzOpen(f *testing.F) {
	seeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		openBytes(b)
	})
}

func FuzzMsgpack(f *testing.F) {
	f.Add(flaxArray([]uint64{3}, "int8", []byte{1, 2, 3}))
	f.Add([]byte{0xdf, 0, 0, 0, 1, 0xa1, 'a', 0x93, 0xc0, 0xc2, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgpack.Decode(b, msgpack.Limits{MaxDepth: 64, MaxNodes: 1 << 16})
	})
}

func FuzzPickle(f *testing.F) {
	f.Add([]byte("\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01K\x02eX\x01\x00\x00\x00bcollections\nOrderedDict\n)Rq\x02u."))
	f.Add([]byte("\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x05torch\x94\x8c\x04Size\x94\x93K\x02\x85R."))
	f.Fuzz(func(t *testing.T, b []byte) {
		pickle.Load(b, &torchHooks{storages: map[string]*storage{}, persistent: func(pickle.Tuple) (*storage, error) {
			return &storage{key: "0", et: native(0), numel: 4}, nil
		}}, pickle.Limits{MaxItems: 1 << 16, MaxMarks: 64})
	})
}

// The seeds must be valid files, so fuzzing starts inside every parser.
func TestFuzzSeedsParse(t *testing.T) {
	for i, b := range [][]byte{
		flaxArray([]uint64{2, 2}, "float32", make([]byte, 16)),
		[]byte("\x93NUMPY\x01\x00\x46\x00{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }           \n" + string(make([]byte, 24))),
		[]byte("GGUF\x03\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00t\x01\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + string(make([]byte, 48))),
		torchZip(t, []byte("\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x06tq\x07QK\x01K\x02K\x02\x86q\x08K\x01K\x02\x86q\tN}q\ntq\x0bRq\x0cs."), map[string][]byte{"0": make([]byte, 24)}),
	} {
		if err := openBytes(b); err != nil {
			t.Errorf("seed %d: %v", i, err)
		}
	}
}
