package formats

import (
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/formats/pickle"
)

// A PyTorch checkpoint is a pickle whose tensors are
// torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
// calls, the storages being persistent ids ("storage", torch.FloatStorage,
// key, location, numel) whose bytes are elsewhere (a zip member, or a
// section after the pickles). torchHooks give the pickle the meaning
// torch.load(weights_only=True) gives it, and nothing more: any other
// global is refused by name, and nothing is ever called.

// torchGlobal is a global the allowlist let through.
type torchGlobal string

// storageTypes are the typed storages torch pickles (torch 1.x and 2.x
// name them the same), and the element type each holds.
var storageTypes = map[string]elemType{
	"torch.FloatStorage":           native(safetensors.F32),
	"torch.DoubleStorage":          native(safetensors.F64),
	"torch.HalfStorage":            native(safetensors.F16),
	"torch.BFloat16Storage":        native(safetensors.BF16),
	"torch.LongStorage":            native(safetensors.I64),
	"torch.IntStorage":             native(safetensors.I32),
	"torch.ShortStorage":           native(safetensors.I16),
	"torch.CharStorage":            native(safetensors.I8),
	"torch.ByteStorage":            native(safetensors.U8),
	"torch.BoolStorage":            native(safetensors.BOOL),
	"torch.ComplexFloatStorage":    native(safetensors.C64),
	"torch.ComplexDoubleStorage":   raw("complex128", 16),
	"torch.UntypedStorage":         native(safetensors.U8),
	"torch.storage.UntypedStorage": native(safetensors.U8),
	"torch.Float8_e4m3fnStorage":   native(safetensors.F8_E4M3),
	"torch.Float8_e5m2Storage":     native(safetensors.F8_E5M2),
}

// torchDTypes are the dtype globals (torch.float32, ...) a pickle may
// name (as _rebuild_tensor_v2's metadata or a state dict's leaf).
var torchDTypes = map[string]bool{
	"float16": true, "float32": true, "float64": true, "bfloat16": true, "complex32": true, "complex64": true,
	"complex128": true, "int8": true, "int16": true, "int32": true, "int64": true, "uint8": true, "bool": true,
	"float8_e4m3fn": true, "float8_e5m2": true, "half": true, "float": true, "double": true, "long": true, "int": true,
}

// refusedWhy are globals torch's weights_only loader allows but that
// build what safetensors cannot hold.
var refusedWhy = map[string]string{
	"torch._utils._rebuild_sparse_tensor":            "sparse tensors are not supported",
	"torch._utils._rebuild_sparse_csr_tensor":        "sparse tensors are not supported",
	"torch.serialization._get_layout":                "sparse tensors are not supported",
	"torch._utils._rebuild_meta_tensor_no_storage":   "meta tensors have no data",
	"torch._utils._rebuild_qtensor":                  "quantized tensors are not supported",
	"torch._utils._rebuild_wrapper_subclass":         "tensor subclasses are not supported",
	"torch._utils._rebuild_nested_tensor":            "nested tensors are not supported",
	"torch._utils._rebuild_device_tensor_from_numpy": "tensors rebuilt from numpy are not supported",
}

var allowedCalls = map[string]bool{
	"collections.OrderedDict":                    true,
	"torch._utils._rebuild_tensor":               true,
	"torch._utils._rebuild_tensor_v2":            true,
	"torch._utils._rebuild_parameter":            true,
	"torch._utils._rebuild_parameter_with_state": true,
	"torch._tensor._rebuild_from_type_v2":        true,
	"torch.Size":                                 true,
	"torch.device":                               true,
	"_codecs.encode":                             true,
	"torch.nn.parameter.Parameter":               true,
	"torch.Tensor":                               true,
}

// storage is one persistent storage: its element type and size, and
// (once bound) where its bytes are.
type storage struct {
	key   string
	et    elemType
	numel int64
	base  *base
	// view: a legacy storage view of another storage (root), starting at
	// element viewOff.
	root    *storage
	viewOff int64
}

// torchTensor is a rebuilt tensor: a view of a storage.
type torchTensor struct {
	st      *storage
	offset  int64
	shape   []uint64
	strides []int64
}

// ErrRefusedGlobal: the pickle names a global torch.load(weights_only=True)
// would refuse (or one that builds what safetensors cannot hold).
var ErrRefusedGlobal = errors.New("refused global")

type torchHooks struct {
	storages map[string]*storage
	// persistent makes the storage of a persistent id's tuple (the zip
	// and legacy formats differ in the tuple's length and meaning).
	persistent func(pid pickle.Tuple) (*storage, error)
}

func (h *torchHooks) Global(module, name string) (pickle.Value, error) {
	full := module + "." + name
	if _, ok := storageTypes[full]; ok {
		return torchGlobal(full), nil
	}
	if module == "torch" && torchDTypes[name] {
		return torchGlobal(full), nil
	}
	if allowedCalls[full] {
		return torchGlobal(full), nil
	}
	if _, ok := refusedWhy[full]; ok {
		return torchGlobal(full), nil // refused when called, with why
	}
	return nil, fmt.Errorf("%w %q: a PyTorch checkpoint is read only as torch.load(weights_only=True) reads it (tensor rebuild functions, storages, dtypes, OrderedDict, torch.Size); this one names other code, which is never run", ErrRefusedGlobal, printableName(full))
}

func (h *torchHooks) Call(fn pickle.Value, args pickle.Tuple) (pickle.Value, error) {
	g, ok := fn.(torchGlobal)
	if !ok {
		return nil, fmt.Errorf("%w: a call of a %s", pickle.ErrRefused, pickle.TypeName(fn))
	}
	if why, ok := refusedWhy[string(g)]; ok {
		return nil, fmt.Errorf("%w %q: %s", ErrRefusedGlobal, g, why)
	}
	switch g {
	case "collections.OrderedDict":
		if len(args) != 0 {
			return nil, errors.New("OrderedDict called with arguments")
		}
		return &pickle.Dict{}, nil
	case "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2":
		return rebuildTensor(args)
	case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
		if len(args) < 1 {
			return nil, fmt.Errorf("%s without a tensor", g)
		}
		if _, ok := args[0].(*torchTensor); !ok {
			return nil, fmt.Errorf("%s of a %s, not a tensor", g, pickle.TypeName(args[0]))
		}
		return args[0], nil
	case "torch._tensor._rebuild_from_type_v2":
		// (func, new_type, args, state): a Tensor or Parameter rebuilt
		// by func; Python attributes in state are not tensor data.
		if len(args) != 4 {
			return nil, fmt.Errorf("%s with %d arguments", g, len(args))
		}
		if t, ok := args[1].(torchGlobal); !ok || (t != "torch.Tensor" && t != "torch.nn.parameter.Parameter") {
			return nil, fmt.Errorf("%w: %s of a tensor subclass", ErrRefusedGlobal, g)
		}
		inner, ok := args[2].(pickle.Tuple)
		if !ok {
			return nil, fmt.Errorf("%s: arguments are not a tuple", g)
		}
		return h.Call(args[0], inner)
	case "torch.Size":
		if len(args) != 1 {
			return nil, errors.New("torch.Size called with other than one argument")
		}
		if t, ok := args[0].(pickle.Tuple); ok {
			return t, nil
		}
		if l, ok := args[0].(*pickle.List); ok {
			return pickle.Tuple(l.Items), nil
		}
		return nil, errors.New("torch.Size of something other than a tuple")
	case "torch.device":
		if len(args) >= 1 {
			if s, ok := args[0].(string); ok {
				return s, nil
			}
		}
		return nil, errors.New("torch.device without a device name")
	case "_codecs.encode":
		// Protocol 2 pickles Python 3 bytes as _codecs.encode(str, 'latin1').
		if len(args) == 2 {
			s, ok1 := args[0].(string)
			enc, ok2 := args[1].(string)
			if ok1 && ok2 && (enc == "latin1" || enc == "latin-1") {
				b := make([]byte, 0, len(s))
				for _, r := range s {
					if r > 0xff {
						return nil, errors.New("_codecs.encode: a character beyond latin-1")
					}
					b = append(b, byte(r))
				}
				return b, nil
			}
		}
		return nil, fmt.Errorf("%w: _codecs.encode other than (str, 'latin1')", ErrRefusedGlobal)
	}
	return nil, fmt.Errorf("%w: calling %s", ErrRefusedGlobal, g)
}

func (h *torchHooks) New(cls pickle.Value, args pickle.Tuple) (pickle.Value, error) {
	if g, ok := cls.(torchGlobal); ok && g == "torch.nn.parameter.Parameter" && len(args) >= 1 {
		if t, ok := args[0].(*torchTensor); ok {
			return t, nil
		}
	}
	return nil, fmt.Errorf("%w: instantiating a %v", ErrRefusedGlobal, cls)
}

func (h *torchHooks) Build(obj, state pickle.Value) (pickle.Value, error) {
	switch o := obj.(type) {
	case *pickle.Dict:
		// An OrderedDict's attributes: a state dict's _metadata (module
		// versions), not tensors.
		return o, nil
	case *torchTensor:
		if isEmpty(state, 0) {
			return o, nil
		}
	}
	return nil, fmt.Errorf("%w: BUILD (setting the state) of a %s", ErrRefusedGlobal, pickle.TypeName(obj))
}

func isEmpty(v pickle.Value, depth int) bool {
	switch s := v.(type) {
	case nil:
		return true
	case *pickle.Dict:
		return len(s.Keys) == 0
	case pickle.Tuple:
		if depth > maxDepth {
			return false // (and so refused)
		}
		for _, x := range s {
			if !isEmpty(x, depth+1) {
				return false
			}
		}
		return true
	}
	return false
}

func (h *torchHooks) Persistent(pid pickle.Value) (pickle.Value, error) {
	t, ok := pid.(pickle.Tuple)
	if !ok || len(t) < 1 {
		return nil, fmt.Errorf("a persistent id of type %s", pickle.TypeName(pid))
	}
	var kind string
	switch k := t[0].(type) {
	case string:
		kind = k
	case []byte:
		kind = string(k)
	}
	if kind != "storage" {
		return nil, fmt.Errorf("%w: persistent id %q (only storages are loaded)", ErrRefusedGlobal, printableName(kind))
	}
	return h.persistent(t)
}

// storageID reads ("storage", type, key, location, numel) common to both
// formats.
func (h *torchHooks) storageID(t pickle.Tuple) (*storage, error) {
	if len(t) < 5 {
		return nil, fmt.Errorf("a storage id of %d fields", len(t))
	}
	g, ok := t[1].(torchGlobal)
	et, known := storageTypes[string(g)]
	if !ok || !known {
		return nil, fmt.Errorf("a storage of type %v", t[1])
	}
	var key string
	switch k := t[2].(type) {
	case string:
		key = k
	case int64:
		key = strconv.FormatInt(k, 10)
	default:
		return nil, fmt.Errorf("a storage key of type %s", pickle.TypeName(t[2]))
	}
	numel, ok := t[4].(int64)
	if !ok || numel < 0 {
		return nil, fmt.Errorf("storage %q: its size is not a non-negative int", key)
	}
	if numel > math.MaxInt64/int64(et.size) {
		// Its byte size would overflow: every offset computed from it
		// (views, the end-of-file check) would wrap.
		return nil, fmt.Errorf("storage %q: %d elements of %d bytes overflow any file size", key, numel, et.size)
	}
	if st, ok := h.storages[key]; ok {
		if st.et != et || st.numel != numel {
			return nil, fmt.Errorf("storage %q is named twice with different types or sizes", key)
		}
		return st, nil
	}
	st := &storage{key: key, et: et, numel: numel}
	h.storages[key] = st
	return st, nil
}

func ints(v pickle.Value, what string) ([]int64, error) {
	var items []pickle.Value
	switch t := v.(type) {
	case pickle.Tuple:
		items = t
	case *pickle.List:
		items = t.Items
	default:
		return nil, fmt.Errorf("%s is a %s, not a tuple", what, pickle.TypeName(v))
	}
	out := make([]int64, len(items))
	for i, x := range items {
		n, ok := x.(int64)
		if !ok {
			return nil, fmt.Errorf("%s[%d] is a %s, not an int", what, i, pickle.TypeName(x))
		}
		out[i] = n
	}
	return out, nil
}

// rebuildTensor reads _rebuild_tensor(_v2)'s (storage, storage_offset,
// size, stride, ...).
func rebuildTensor(args pickle.Tuple) (pickle.Value, error) {
	if len(args) < 4 {
		return nil, fmt.Errorf("_rebuild_tensor with %d arguments", len(args))
	}
	st, ok := args[0].(*storage)
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor of a %s, not a storage", pickle.TypeName(args[0]))
	}
	off, ok := args[1].(int64)
	if !ok || off < 0 {
		return nil, errors.New("_rebuild_tensor: the storage offset is not a non-negative int")
	}
	size, err := ints(args[2], "size")
	if err != nil {
		return nil, err
	}
	stride, err := ints(args[3], "stride")
	if err != nil {
		return nil, err
	}
	if len(size) != len(stride) {
		return nil, fmt.Errorf("_rebuild_tensor: %d sizes and %d strides", len(size), len(stride))
	}
	t := &torchTensor{st: st, offset: off, shape: make([]uint64, len(size)), strides: stride}
	for i, d := range size {
		if d < 0 {
			return nil, fmt.Errorf("_rebuild_tensor: size %v has a negative dimension", size)
		}
		t.shape[i] = uint64(d)
	}
	return t, nil
}
