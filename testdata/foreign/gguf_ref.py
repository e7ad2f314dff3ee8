# Writes GGUF files as the GGUF specification lays them out (ggml's
# docs/gguf.md), and dequantizes blocks with numpy, vectorized as llama.cpp's
# gguf-py does it (a formulation independent of the Go code under test), in
# float32 throughout. Used by the tests as the independent truth.
import struct
import numpy as np

QK_K = 256
TYPES = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22),
         "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
         "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "I32": (26, 1, 4), "BF16": (30, 1, 2)}


def _s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def _val(t, v):
    if t == 8:
        return _s(v)
    if t == 9:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(_val(et, x) for x in items)
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}[t]
    return struct.pack(fmt, v)


def write(path, kvs, tensors, alignment=32, version=3):
    """kvs: [(key, gguf value type, value)]; tensors: [(name, ne (fastest first), type name, bytes)]."""
    pad = lambda n: (n + alignment - 1) // alignment * alignment
    out = bytearray(b"GGUF") + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += _s(k) + struct.pack("<I", t) + _val(t, v)
    off = 0
    for name, ne, typ, data in tensors:
        out += _s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", TYPES[typ][0], off)
        off += pad(len(data))
    out += b"\0" * (pad(len(out)) - len(out))
    for name, ne, typ, data in tensors:
        out += data + b"\0" * (pad(len(data)) - len(data))
    open(path, "wb").write(bytes(out))


def random_blocks(typ, n_blocks, rng):
    """Random blocks whose f16 scales are finite."""
    _, _, size = TYPES[typ]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    halves = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[typ]
    for o in halves:
        b[:, o:o + 2] = (rng.standard_normal(n_blocks).astype(np.float16) * np.float16(0.01)).view(np.uint8).reshape(n_blocks, 2)
    return b


def _f16(b):
    return b.copy().view(np.float16).astype(np.float32)


def dequant(typ, blocks):
    n = blocks.shape[0]
    if typ == "Q8_0":
        d = _f16(blocks[:, :2])
        return (d * blocks[:, 2:].view(np.int8).astype(np.float32)).reshape(-1)
    if typ == "Q4_0":
        d = _f16(blocks[:, :2])
        qs = blocks[:, 2:].reshape((n, 1, 16)) >> np.array([0, 4], dtype=np.uint8).reshape((1, 2, 1))
        qs = (qs & 0x0F).reshape((n, 32)).astype(np.int8) - np.int8(8)
        return (d * qs.astype(np.float32)).reshape(-1)
    if typ == "Q4_1":
        d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
        qs = blocks[:, 4:].reshape((n, 1, 16)) >> np.array([0, 4], dtype=np.uint8).reshape((1, 2, 1))
        qs = (qs & 0x0F).reshape((n, 32)).astype(np.float32)
        return (d * qs + m).reshape(-1)
    if typ == "Q4_K":
        d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
        scales = blocks[:, 4:16].reshape((n, 3, 4))
        dd, mm, md = scales[:, 0], scales[:, 1], scales[:, 2]
        sc = np.concatenate([dd & 0x3F, (md & 0x0F) | ((dd >> 2) & 0x30)], axis=-1)
        mn = np.concatenate([mm & 0x3F, (md >> 4) | ((mm >> 2) & 0x30)], axis=-1)
        d = (d * sc.astype(np.float32)).reshape((n, -1, 1))
        dm = (dmin * mn.astype(np.float32)).reshape((n, -1, 1))
        qs = blocks[:, 16:].reshape((n, -1, 1, 32)) >> np.array([0, 4], dtype=np.uint8).reshape((1, 1, 2, 1))
        qs = (qs & 0x0F).reshape((n, -1, 32)).astype(np.float32)
        return (d * qs - dm).reshape(-1)
    if typ == "Q6_K":
        ql, qh, sc, d = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208], blocks[:, 208:210]
        sc = sc.copy().view(np.int8).astype(np.float32)
        d = (_f16(d) * sc).reshape((n, 16, 1))
        ql = ql.reshape((n, -1, 1, 64)) >> np.array([0, 4], dtype=np.uint8).reshape((1, 1, 2, 1))
        ql = (ql & np.uint8(0x0F)).reshape((n, -1, 32))
        qh = qh.reshape((n, -1, 1, 32)) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape((1, 1, 4, 1))
        qh = (qh & np.uint8(0x03)).reshape((n, -1, 32))
        q = (ql | (qh << np.uint8(4))).astype(np.int8) - np.int8(32)
        q = q.reshape((n, 16, -1)).astype(np.float32)
        return (d * q).reshape(-1)
    return np.concatenate([_scalar(typ, blk) for blk in blocks]).astype(np.float32)


# The other types, element by element from the block layouts of
# ggml-common.h, in numpy float32 scalars (slow: for a few blocks).
F = np.float32


def _h(b, o):
    return F(np.frombuffer(bytes(b[o:o + 2]), np.float16)[0])


def _scale_min_k4(j, q):
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def _scalar(typ, b):
    b = [int(x) for x in b]
    y = []
    if typ in ("Q5_0", "Q5_1"):
        d = _h(b, 0)
        m = _h(b, 2) if typ == "Q5_1" else None
        o = 4 if typ == "Q5_1" else 2
        qh = int.from_bytes(bytes(b[o:o + 4]), "little")
        qs = b[o + 4:o + 20]
        vals = [0] * 32
        for j in range(32):
            nib = qs[j % 16] & 0xF if j < 16 else qs[j % 16] >> 4
            vals[j] = nib | (((qh >> j) & 1) << 4)
        for v in vals:
            y.append(F(v - 16) * d if m is None else F(F(v) * d) + m)
        return np.array(y, np.float32)
    if typ == "Q2_K":
        sc, qs, d, dmin = b[:16], b[16:80], _h(b, 80), _h(b, 82)
        for j in range(256):
            half, r = divmod(j, 128)       # which 32-byte group of qs
            shift, k = divmod(r, 32)       # which 2 bits, which byte
            s = sc[j // 16]
            q = (qs[32 * half + k] >> (2 * shift)) & 3
            y.append(F(F(d * F(s & 0xF)) * F(q)) - F(dmin * F(s >> 4)))
        return np.array(y, np.float32)
    if typ == "Q3_K":
        hm, qs, raw, d = b[:32], b[32:96], b[96:108], _h(b, 108)
        scales = []
        for j in range(16):
            lo = raw[j] & 0xF if j < 8 else raw[j - 8] >> 4
            hi = (raw[8 + j % 4] >> (2 * (j // 4))) & 3
            scales.append((lo | (hi << 4)) - 32)
        for j in range(256):
            half, r = divmod(j, 128)
            shift, k = divmod(r, 32)
            q = (qs[32 * half + k] >> (2 * shift)) & 3
            high = (hm[k] >> (4 * half + shift)) & 1
            y.append(F(d * F(scales[j // 16])) * F(q - (0 if high else 4)))
        return np.array(y, np.float32)
    if typ == "Q5_K":
        d, dmin, sc, qh, ql = _h(b, 0), _h(b, 2), b[4:16], b[16:48], b[48:176]
        for j in range(256):
            grp, r = divmod(j, 64)
            hi_nib, k = divmod(r, 32)
            s, m = _scale_min_k4(2 * grp + hi_nib, sc)
            q = (ql[32 * grp + k] >> (4 * hi_nib)) & 0xF
            q += 16 if (qh[k] >> (2 * grp + hi_nib)) & 1 else 0
            y.append(F(F(d * F(s)) * F(q)) - F(dmin * F(m)))
        return np.array(y, np.float32)
    raise ValueError(typ)
