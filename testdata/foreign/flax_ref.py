# flax.serialization's msgpack path (msgpack_serialize, msgpack_restore, the ext
# hooks and the chunking of arrays over MAX_CHUNK_SIZE), copied with jax taken
# out: numpy arrays only. The tests build Flax checkpoints with it exactly as
# flax builds them, and restore what safejaxfs writes.
import msgpack, numpy as np
MAX_CHUNK_SIZE = 2**30
def _ndarray_to_bytes(arr):
    if arr.dtype.hasobject or arr.dtype.isalignedstruct:
        raise ValueError('Object and structured dtypes not supported')
    tpl = (arr.shape, arr.dtype.name, arr.tobytes('C'))
    return msgpack.packb(tpl, use_bin_type=True)
def _dtype_from_name(name):
    # flax maps b'bfloat16' to jax.numpy.bfloat16; without ml_dtypes (not in
    # Debian) its 16-bit patterns are read as uint16.
    if name == b'bfloat16':
        return np.dtype('<u2')
    return np.dtype(name)
def _ndarray_from_bytes(data):
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    return np.frombuffer(buffer, dtype=_dtype_from_name(dtype_name), count=-1, offset=0).reshape(shape, order='C')
def _msgpack_ext_pack(x):
    if isinstance(x, np.ndarray):
        return msgpack.ExtType(1, _ndarray_to_bytes(x))
    if np.issctype(type(x)):
        return msgpack.ExtType(3, _ndarray_to_bytes(np.asarray(x)))
    elif isinstance(x, complex):
        return msgpack.ExtType(2, msgpack.packb((x.real, x.imag)))
    return x
def _msgpack_ext_unpack(code, data):
    if code == 1: return _ndarray_from_bytes(data)
    elif code == 2:
        t = msgpack.unpackb(data); return complex(t[0], t[1])
    elif code == 3: return _ndarray_from_bytes(data)[()]
    return msgpack.ExtType(code, data)
_tuple_to_dict = lambda tpl: {str(x): y for x, y in enumerate(tpl)}
_dict_to_tuple = lambda dct: tuple(dct[str(i)] for i in range(len(dct)))
def _chunk(arr):
    chunksize = max(1, int(MAX_CHUNK_SIZE / arr.dtype.itemsize))
    data = {'__msgpack_chunked_array__': True, 'shape': _tuple_to_dict(arr.shape)}
    flatarr = arr.reshape(-1)
    chunks = [flatarr[i:i + chunksize] for i in range(0, flatarr.size, chunksize)]
    data['chunks'] = _tuple_to_dict(chunks)
    return data
def _unchunk(data):
    shape = _dict_to_tuple(data['shape'])
    flatarr = np.concatenate(_dict_to_tuple(data['chunks']))
    return flatarr.reshape(shape)
def _chunk_array_leaves_in_place(d):
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, np.ndarray):
                if v.size * v.dtype.itemsize > MAX_CHUNK_SIZE:
                    d[k] = _chunk(v)
            elif isinstance(v, dict):
                _chunk_array_leaves_in_place(v)
    elif isinstance(d, np.ndarray):
        if d.size * d.dtype.itemsize > MAX_CHUNK_SIZE:
            return _chunk(d)
    return d
def _unchunk_array_leaves_in_place(d):
    if isinstance(d, dict):
        if '__msgpack_chunked_array__' in d:
            return _unchunk(d)
        for k, v in d.items():
            if isinstance(v, dict) and '__msgpack_chunked_array__' in v:
                d[k] = _unchunk(v)
            elif isinstance(v, dict):
                _unchunk_array_leaves_in_place(v)
    return d
def msgpack_serialize(pytree):
    pytree = _chunk_array_leaves_in_place(pytree)
    return msgpack.packb(pytree, default=_msgpack_ext_pack, strict_types=True)
def msgpack_restore(b):
    return _unchunk_array_leaves_in_place(msgpack.unpackb(b, ext_hook=_msgpack_ext_unpack, raw=False))
