package formats

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/formats/pickle"
)

// maxVisits bounds the walk of a pickle's object graph: shared containers
// (a pickle can reference one list from many places) could otherwise make
// it exponential.
const maxVisits = 1 << 22

type torchWalker struct {
	tensors []pendingTensor
	meta    map[string]string
	visits  int
	depth   int // of the walk now (maxDepth)
	keys    keyBudget
	onPath  map[any]bool
}

// maxDepth bounds how deeply the object may nest, as msgpack's MaxDepth
// does for Flax: one byte of pickle (TUPLE1) nests a level.
const maxDepth = 256

type pendingTensor struct {
	key string
	t   *torchTensor
}

// walk names every tensor in the unpickled object: dict keys (and list
// indices) joined with ".". Numbers become 0-d tensors and other leaves
// metadata, as for Flax checkpoints.
func (w *torchWalker) walk(v pickle.Value, key string, f *File) error {
	if w.visits++; w.visits > maxVisits {
		return fmt.Errorf("the object graph has more than %d nodes", maxVisits)
	}
	if w.depth++; w.depth > maxDepth {
		return fmt.Errorf("key %q: the object nests more than %d levels deep", key, maxDepth)
	}
	defer func() { w.depth-- }()
	if len(w.tensors)+len(f.Tensors) >= MaxTensors {
		return fmt.Errorf("more than %d tensors", MaxTensors)
	}
	if len(w.meta) >= MaxMetadata {
		return fmt.Errorf("more than %d values that are not tensors", MaxMetadata)
	}
	switch x := v.(type) {
	case *torchTensor:
		if key == "" {
			key = "tensor" // torch.save(a_tensor): one tensor, no name
		}
		w.tensors = append(w.tensors, pendingTensor{key, x})
		return nil
	case *pickle.Dict:
		if w.onPath[x] {
			return fmt.Errorf("key %q: the dict contains itself", key)
		}
		if len(x.Keys) == 0 && key != "" {
			w.meta[key] = "{}"
			return nil
		}
		w.onPath[x] = true
		defer delete(w.onPath, x)
		for i, k := range x.Keys {
			var ks string
			switch kk := k.(type) {
			case string:
				ks = kk
			case int64:
				ks = strconv.FormatInt(kk, 10)
			case bool:
				ks = map[bool]string{true: "True", false: "False"}[kk]
			default:
				return fmt.Errorf("key %q: a dict key of type %s", key, pickle.TypeName(k))
			}
			child, err := w.keys.join(key, ks)
			if err != nil {
				return err
			}
			if err := w.walk(x.Vals[i], child, f); err != nil {
				return err
			}
		}
		return nil
	case *pickle.List:
		return w.seq(x, x.Items, key, f)
	case pickle.Tuple:
		return w.seq(&x, x, key, f)
	case int64:
		f.Tensors = append(f.Tensors, Tensor{Key: key, DType: safetensors.I64, Shape: []uint64{}, Size: 8, data: memRange(key, binary.LittleEndian.AppendUint64(nil, uint64(x)))})
	case float64:
		f.Tensors = append(f.Tensors, Tensor{Key: key, DType: safetensors.F64, Shape: []uint64{}, Size: 8, data: memRange(key, binary.LittleEndian.AppendUint64(nil, math.Float64bits(x)))})
	case bool:
		b := byte(0)
		if x {
			b = 1
		}
		f.Tensors = append(f.Tensors, Tensor{Key: key, DType: safetensors.BOOL, Shape: []uint64{}, Size: 1, data: memRange(key, []byte{b})})
	case []byte:
		f.Tensors = append(f.Tensors, Tensor{Key: key, DType: safetensors.U8, Shape: []uint64{uint64(len(x))}, Size: int64(len(x)), data: memRange(key, x)})
	case string:
		w.meta[key] = x
	case nil:
		w.meta[key] = "None"
	case torchGlobal:
		w.meta[key] = string(x) // a dtype, say
	case *pickle.Set:
		w.meta[key] = fmt.Sprintf("a set of %d items", len(x.Items))
	case *storage:
		return fmt.Errorf("key %q: a bare storage, not a tensor", key)
	default:
		return fmt.Errorf("key %q: a %s", key, pickle.TypeName(v))
	}
	if key == "" {
		return fmt.Errorf("the checkpoint is a single %s, not a dict of tensors", pickle.TypeName(v))
	}
	return nil
}

func (w *torchWalker) seq(id any, items []pickle.Value, key string, f *File) error {
	if len(items) == 0 {
		if key != "" {
			w.meta[key] = "[]"
		}
		return nil
	}
	if l, ok := id.(*pickle.List); ok {
		if w.onPath[l] {
			return fmt.Errorf("key %q: the list contains itself", key)
		}
		w.onPath[l] = true
		defer delete(w.onPath, l)
	}
	for i, it := range items {
		child, err := w.keys.join(key, strconv.Itoa(i))
		if err != nil {
			return err
		}
		if err := w.walk(it, child, f); err != nil {
			return err
		}
	}
	return nil
}

// finish turns the rebuilt tensors into Tensors once every storage has its
// bytes (bound): views checked against their storage, laid out C-order
// when contiguous, else strided; big-endian files byte-swapped.
func (w *torchWalker) finish(f *File, bigEndian bool) error {
	for _, p := range w.tensors {
		t, err := torchTensorOf(p, bigEndian)
		if err != nil {
			return err
		}
		f.Tensors = append(f.Tensors, t)
	}
	if len(w.meta) > 0 {
		f.Metadata = w.meta
	}
	return nil
}

func torchTensorOf(p pendingTensor, bigEndian bool) (Tensor, error) {
	st := p.t.st
	root, viewOff := st, int64(0)
	if st.root != nil {
		root, viewOff = st.root, st.viewOff
	}
	if root.base == nil {
		return Tensor{}, fmt.Errorf("key %q: storage %q has no data in the file", p.key, root.key)
	}
	et := st.et
	storageBytes := st.numel * int64(et.size)
	start, err := checkView(p.t.shape, p.t.strides, p.t.offset, et.size, storageBytes)
	if err != nil {
		return Tensor{}, fmt.Errorf("key %q: %v", p.key, err)
	}
	size, ok := byteSize(p.t.shape, et.size)
	if !ok {
		return Tensor{}, fmt.Errorf("key %q: shape %v overflows any file size", p.key, p.t.shape)
	}
	l := layout{base: root.base, start: viewOff*int64(et.size) + start, elem: et.size, shape: p.t.shape, swap: bigEndian && et.size > 1}
	if !isCContiguous(p.t.shape, p.t.strides) {
		l.strides = p.t.strides
	}
	t := Tensor{Key: p.key, DType: et.dtype, Shape: p.t.shape, Size: size, Storage: root.key, data: l}
	if et.foreign != "" {
		t.Type, t.TypeShape, t.Shape = et.foreign, p.t.shape, []uint64{uint64(size)}
	}
	return t, nil
}
