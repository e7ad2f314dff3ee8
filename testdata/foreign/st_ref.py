# A safetensors writer in numpy that follows the reference implementation's
# rules (the Rust crate's serialize): tensors sorted by dtype, descending in
# the crate's enum order, then by key; compact JSON, "__metadata__" first
# (keys sorted), fields dtype, shape, data_offsets; padded with spaces to a
# multiple of 8. The tests compare safejaxfs convert's output to it byte for
# byte, and the benchmark uses it as "python + a numpy safetensors writer".
import json
import struct

ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
         "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
NUMPY = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "float16": "F16",
         "int32": "I32", "uint32": "U32", "float32": "F32", "complex64": "C64", "float64": "F64",
         "int64": "I64", "uint64": "U64"}


def save(path, tensors, metadata=None):
    """tensors: {key: (dtype name, shape, little-endian C-order bytes)}."""
    items = sorted(tensors.items(), key=lambda kv: (-ORDER.index(kv[1][0]), kv[0].encode()))
    header = {}
    if metadata is not None:
        header["__metadata__"] = dict(sorted(metadata.items()))
    off = 0
    for k, (dt, shape, data) in items:
        header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, (_, _, data) in items:
            f.write(data)


def from_numpy(a):
    a = a.astype(a.dtype.newbyteorder("<"))
    return (NUMPY[a.dtype.name], a.shape, a.tobytes(order="C"))
