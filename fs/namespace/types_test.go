package namespace

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// The type rules as a table of what users' tools do: setfattr, cp -a and
// rsync -X restoring attributes before or after the bytes, tar x after rm.
// A step that succeeds must have applied its type, or be waiting for bytes
// that are still coming (success means applied: issue 17 item 1); a step
// refused changes nothing.
func TestTypes(t *testing.T) {
	type step struct {
		op      string // "write N" (bytes, then flush), "writing N" (not flushed), "set dtype|shape|key V", "settle", "rm+create"
		want    error  // for set
		applied bool   // for set: applied now (else waiting)
	}
	tests := []struct {
		name  string
		new   bool // a file created in the mount (else the tensor params/Dense_0/kernel, U8 [4])
		steps []step
		dtype safetensors.DType
		shape []uint64
	}{
		{"setfattr dtype after the bytes", true, []step{{op: "write 16"}, {op: "set dtype F32", applied: true}}, safetensors.F32, []uint64{4}},
		{"setfattr dtype that cannot fit", true, []step{{op: "write 6"}, {op: "set dtype F32", want: ErrType}}, safetensors.U8, []uint64{6}},
		{"not a dtype", false, []step{{op: "set dtype F33", want: ErrType}}, safetensors.U8, []uint64{4}},
		{"not a shape", false, []step{{op: "set shape [2,", want: ErrType}}, safetensors.U8, []uint64{4}},
		{"shape then dtype (rsync -X order)", true, []step{{op: "write 16"}, {op: "set shape [2,2]"}, {op: "set dtype F32", applied: true}}, safetensors.F32, []uint64{2, 2}},
		{"shape as numpy prints it, then dtype", true, []step{{op: "write 16"}, {op: "set shape (2,2)"}, {op: "set dtype F32", applied: true}}, safetensors.F32, []uint64{2, 2}},
		{"dtype as numpy prints it", true, []step{{op: "write 16"}, {op: "set dtype float32", applied: true}}, safetensors.F32, []uint64{4}},
		{"shape as a bare list", true, []step{{op: "write 16"}, {op: "set dtype F32", applied: true}, {op: "set shape 4,1", applied: true}}, safetensors.F32, []uint64{4, 1}},
		{"dtype then shape", true, []step{{op: "write 16"}, {op: "set dtype F32", applied: true}, {op: "set shape [2,2]", applied: true}}, safetensors.F32, []uint64{2, 2}},
		{"tar --xattrs: attributes before the bytes", true, []step{{op: "set dtype BF16"}, {op: "set shape [3]"}, {op: "write 6"}, {op: "settle"}}, safetensors.BF16, []uint64{3}},
		{"cp -a: attributes while the bytes are written", true, []step{{op: "writing 2"}, {op: "set dtype F32"}, {op: "write 8"}, {op: "settle"}}, safetensors.F32, []uint64{2}},
		{"a shape no dtype fits", false, []step{{op: "set shape [3]", want: ErrType}}, safetensors.U8, []uint64{4}},
		{"retype an existing tensor", false, []step{{op: "set dtype I16", applied: true}}, safetensors.I16, []uint64{2}},
		{"the key follows the path", false, []step{{op: "set key elsewhere", want: ErrFixed}, {op: "set key params.Dense_0.kernel", applied: true}}, safetensors.U8, []uint64{4}},
		{"any key on a new file (cp -a from elsewhere)", true, []step{{op: "set key other.model.w", applied: true}}, safetensors.U8, []uint64{0}},
		{"tar x after rm: the removed tensor's type", false, []step{{op: "set dtype F16", applied: true}, {op: "rm+create"}, {op: "write 4"}, {op: "settle"}}, safetensors.F16, []uint64{2}},
		{"tar x after rm, another size: stays bytes", false, []step{{op: "set dtype F16", applied: true}, {op: "rm+create"}, {op: "write 6"}, {op: "settle"}}, safetensors.U8, []uint64{6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, flaxKeys)
			dir := f.node("params/Dense_0")
			id := checkpoint.ID(f.node("params/Dense_0/kernel").Tensor)
			create := func(name string) {
				err := f.ns.Update(func(tx *Tx) error {
					n, err := tx.Create(dir, name, f.ck.Create)
					if err == nil {
						id = checkpoint.ID(n.Tensor)
					}
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			if tc.new {
				create("new")
			}
			writing := false
			for _, s := range tc.steps {
				before, _ := f.ck.Info(id)
				var op, arg string
				var n int
				switch {
				case scan(s.op, "write %d", &n):
					writing = false
					if err := f.ck.Truncate(id, int64(n)); err != nil {
						t.Fatal(err)
					}
				case scan(s.op, "writing %d", &n):
					writing = true
					if err := f.ck.Truncate(id, int64(n)); err != nil {
						t.Fatal(err)
					}
				case s.op == "settle":
					if _, err := f.ns.Settle(id); err != nil {
						t.Fatal(err)
					}
				case s.op == "rm+create":
					if err := f.do("unlink params/Dense_0/kernel"); err != nil {
						t.Fatal(err)
					}
					create("kernel")
				case scan(s.op, "set %s %s", &op, &arg):
					attr := map[string]TypeAttr{"dtype": AttrDType, "shape": AttrShape, "key": AttrKey}[op]
					res, err := f.ns.SetType(id, attr, []byte(arg), writing)
					if !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
						t.Fatalf("%s: %v, want %v", s.op, err, s.want)
					}
					after, _ := f.ck.Info(id)
					switch {
					case err != nil && (after.DType != before.DType || !slices.Equal(after.Shape, before.Shape)):
						t.Fatalf("refused %s changed the type: %v %v", s.op, after.DType, after.Shape)
					case err == nil && res.Applied != s.applied:
						t.Fatalf("%s: %+v, want applied %v", s.op, res, s.applied)
					case err == nil && !res.Applied && res.Waiting == "":
						t.Fatalf("%s: success that neither applied nor waits", s.op)
					case res.Applied && attr == AttrDType && !sameDType(after.DType, arg):
						t.Fatalf("%s: said applied, tensor is %v", s.op, after.DType)
					}
				default:
					t.Fatalf("bad step %q", s.op)
				}
			}
			info, _ := f.ck.Info(id)
			if info.DType != tc.dtype || !slices.Equal(info.Shape, tc.shape) {
				t.Errorf("ends %v %v, want %v %v", info.DType, info.Shape, tc.dtype, tc.shape)
			}
			if err := f.ns.Check(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// scan is fmt.Sscanf that reports whether every verb matched.
func scan(s, format string, args ...any) bool {
	n, err := fmt.Sscanf(s, format, args...)
	return err == nil && n == len(args)
}

func TestFitShape(t *testing.T) {
	for _, c := range []struct {
		shape []uint64
		size  int64
		d     safetensors.DType
		want  []uint64 // nil: no fit
	}{
		{[]uint64{64}, 64, safetensors.F32, []uint64{16}},
		{[]uint64{3, 16}, 192, safetensors.F16, []uint64{3, 32}},
		{[]uint64{3, 16}, 192, safetensors.F64, []uint64{3, 8}},
		{[]uint64{}, 4, safetensors.U8, []uint64{4}},
		{[]uint64{10}, 10, safetensors.F32, nil},
		{[]uint64{3, 2}, 6, safetensors.F32, nil},
		{[]uint64{8}, 8, safetensors.F4, []uint64{16}},
		{[]uint64{0, 4}, 0, safetensors.F32, nil},
	} {
		got, ok := fitShape(c.shape, c.size, c.d)
		if ok != (c.want != nil) || !slices.Equal(got, c.want) {
			t.Errorf("fitShape(%v, %d, %s) = %v %v, want %v", c.shape, c.size, c.d, got, ok, c.want)
		}
	}
}

// sameDType reports whether d is the dtype arg names, in any form
// parseDType takes.
func sameDType(d safetensors.DType, arg string) bool {
	want, ok := parseDType([]byte(arg))
	return ok && want == d
}
