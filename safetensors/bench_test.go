package safetensors

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// manyTensorHeader is the header of a transformer-like checkpoint with n
// tensors (keys like model.layers.12.self_attn.q_proj.weight), and the size
// of the file it belongs to. The data is never materialized: ReadHeader does
// not read it.
func manyTensorHeader(tb testing.TB, n int) ([]byte, int64) {
	names := []struct {
		suffix string
		shape  []uint64
		dtype  DType
	}{
		{"self_attn.q_proj.weight", []uint64{4096, 4096}, BF16},
		{"self_attn.k_proj.weight", []uint64{1024, 4096}, BF16},
		{"self_attn.v_proj.weight", []uint64{1024, 4096}, BF16},
		{"self_attn.o_proj.weight", []uint64{4096, 4096}, BF16},
		{"mlp.gate_proj.weight", []uint64{14336, 4096}, BF16},
		{"mlp.up_proj.weight", []uint64{14336, 4096}, BF16},
		{"mlp.down_proj.weight", []uint64{4096, 14336}, BF16},
		{"input_layernorm.weight", []uint64{4096}, F32},
		{"post_attention_layernorm.weight", []uint64{4096}, F32},
		{"mlp.down_proj.weight.absmax", []uint64{}, F32},
	}
	sources := make([]Source, n)
	for i := range sources {
		nm := names[i%len(names)]
		sources[i] = Source{Key: fmt.Sprintf("model.layers.%d.%s", i/len(names), nm.suffix), DType: nm.dtype, Shape: nm.shape}
	}
	l, err := Plan(sources, map[string]string{"format": "pt"})
	if err != nil {
		tb.Fatal(err)
	}
	return l.Header, int64(len(l.Header)) + int64(l.DataSize())
}

func BenchmarkReadHeader(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		hdr, size := manyTensorHeader(b, n)
		b.Run(fmt.Sprintf("tensors=%d", n), func(b *testing.B) {
			r := bytes.NewReader(hdr)
			b.SetBytes(int64(len(hdr)))
			b.ReportAllocs()
			for b.Loop() {
				h, err := ReadHeader(r, size)
				if err != nil || len(h.Tensors) != n {
					b.Fatal(err)
				}
			}
		})
	}
}

// resnet50 returns the shapes of torchvision's ResNet-50 state_dict: 320
// tensors, 25.6M float32 parameters plus the batch-norm running statistics
// and num_batches_tracked counters (I64 scalars).
func resnet50() []Source {
	var s []Source
	conv := func(name string, out, in, k uint64) {
		s = append(s, Source{Key: name + ".weight", DType: F32, Shape: []uint64{out, in, k, k}})
	}
	bn := func(name string, c uint64) {
		for _, p := range []string{"weight", "bias", "running_mean", "running_var"} {
			s = append(s, Source{Key: name + "." + p, DType: F32, Shape: []uint64{c}})
		}
		s = append(s, Source{Key: name + ".num_batches_tracked", DType: I64, Shape: []uint64{}})
	}
	conv("conv1", 64, 3, 7)
	bn("bn1", 64)
	in := uint64(64)
	for li, l := range []struct{ blocks, width uint64 }{{3, 64}, {4, 128}, {6, 256}, {3, 512}} {
		for bi := range l.blocks {
			p := fmt.Sprintf("layer%d.%d", li+1, bi)
			conv(p+".conv1", l.width, in, 1)
			bn(p+".bn1", l.width)
			conv(p+".conv2", l.width, l.width, 3)
			bn(p+".bn2", l.width)
			conv(p+".conv3", l.width*4, l.width, 1)
			bn(p+".bn3", l.width*4)
			if bi == 0 {
				conv(p+".downsample.0", l.width*4, in, 1)
				bn(p+".downsample.1", l.width*4)
			}
			in = l.width * 4
		}
	}
	s = append(s, Source{Key: "fc.weight", DType: F32, Shape: []uint64{1000, 2048}})
	s = append(s, Source{Key: "fc.bias", DType: F32, Shape: []uint64{1000}})
	return s
}

// resnet50Sources gives every tensor its own slice of one patterned buffer.
func resnet50Sources(tb testing.TB) ([]Source, []byte, int64) {
	sources := resnet50()
	var total uint64
	for _, s := range sources {
		n, err := ByteSize(s.DType, s.Shape)
		if err != nil {
			tb.Fatal(err)
		}
		total += n
	}
	data := patterned(int(total))
	var off uint64
	for i := range sources {
		n, _ := ByteSize(sources[i].DType, sources[i].Shape)
		sources[i].Data = Bytes(data[off : off+n])
		off += n
	}
	l, err := Plan(sources, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return sources, data, int64(len(l.Header)) + int64(l.DataSize())
}

func TestResNet50Shapes(t *testing.T) {
	t.Parallel()
	sources, data, _ := resnet50Sources(t)
	var params uint64
	for _, s := range sources {
		if s.DType == F32 && !bytes.HasSuffix([]byte(s.Key), []byte("running_mean")) && !bytes.HasSuffix([]byte(s.Key), []byte("running_var")) {
			n, _ := ByteSize(s.DType, s.Shape)
			params += n / 4
		}
	}
	// torchvision's resnet50 has 25,557,032 trainable parameters in 320
	// state_dict entries; if these shapes match both, they are the real ones.
	if len(sources) != 320 || params != 25_557_032 {
		t.Fatalf("%d tensors, %d parameters", len(sources), params)
	}
	if len(data) < 100_000_000 {
		t.Fatalf("only %d bytes", len(data))
	}
}

// BenchmarkWrite and BenchmarkMemcpy move the same bytes, so their MB/s
// compare directly: the writer should be close to a plain copy.
func BenchmarkWrite(b *testing.B) {
	sources, _, size := resnet50Sources(b)
	var buf bytes.Buffer
	buf.Grow(int(size))
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		buf.Reset()
		if _, err := Write(&buf, sources, nil); err != nil {
			b.Fatal(err)
		}
	}
	if int64(buf.Len()) != size {
		b.Fatalf("wrote %d of %d bytes", buf.Len(), size)
	}
}

func BenchmarkMemcpy(b *testing.B) {
	_, data, size := resnet50Sources(b)
	dst := make([]byte, size)
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		copy(dst, data)
	}
}

// BenchmarkWriteFile is the rewriter's real path: from an open checkpoint
// to a new file, where copy_file_range keeps the data in the kernel.
func BenchmarkWriteFile(b *testing.B) {
	sources, _, _ := resnet50Sources(b)
	dir := b.TempDir()
	srcPath := filepath.Join(dir, "src.safetensors")
	sf, err := os.Create(srcPath)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := Write(sf, sources, nil); err != nil {
		b.Fatal(err)
	}
	sf.Close()
	f, err := Open(srcPath)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for _, kind := range []string{"fd", "mmap"} {
		b.Run(kind, func(b *testing.B) {
			fs := make([]Source, len(f.Tensors))
			for i, ts := range f.Tensors {
				fs[i] = Source{Key: ts.Key, DType: ts.DType, Shape: ts.Shape, Off: f.DataOffset() + int64(ts.Begin)}
				if kind == "fd" {
					fs[i].Data = f.Fd()
				} else {
					fs[i].Data = f
				}
			}
			b.SetBytes(f.Size)
			dstPath := filepath.Join(dir, "dst.safetensors")
			for b.Loop() {
				dst, err := os.Create(dstPath)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := Write(dst, fs, f.Metadata); err != nil {
					b.Fatal(err)
				}
				dst.Close()
			}
		})
	}
}
