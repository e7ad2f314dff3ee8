"""Independent truth for the floats package, from the format definitions.

Run by floats_test.go with Debian's /usr/bin/python3 and numpy (no ml_dtypes:
no PyPI here). Nothing here comes from the Go code: every format is decoded
by numpy bit manipulation from its sign/exponent/mantissa/bias definition
and special values, and every float32 -> format conversion is computed by
value: round |x| to the nearest multiple of the quantum of its binade with
np.round (ties to even), then apply the format's overflow/NaN/zero rules as
ml_dtypes documents them (numpy's for F16). F16 is also checked against
numpy's own float16 casts.

usage: truth.py OUTDIR   writes little-endian uint32 arrays, NAME.bin
"""
import os
import sys

import numpy as np

# Overflow and NaN casts are the point of several inputs.
np.seterr(all="ignore")


def save(out, name, a):
    np.asarray(a, dtype="<u4").tofile(os.path.join(out, name + ".bin"))


# name: (bits, exponent bits, mantissa bits, bias, kind)
#   ieee: exponent all ones is Inf (mantissa 0) or NaN
#   fn:   no Inf, S.1111.111 is NaN            (float8_e4m3fn)
#   fnuz: no Inf, no -0, 0x80 is the only NaN  (float8_e4m3fnuz, float8_e5m2fnuz)
#   e8m0: unsigned, 2^(e-127), 0xFF is NaN, no zero  (float8_e8m0fnu)
#   mx:   no Inf, no NaN                       (float6_e2m3fn, float6_e3m2fn, float4_e2m1fn)
FORMATS = {
    "BF16": (16, 8, 7, 127, "ieee"),
    "F16": (16, 5, 10, 15, "ieee"),
    "F8_E5M2": (8, 5, 2, 15, "ieee"),
    "F8_E4M3": (8, 4, 3, 7, "fn"),
    "F8_E4M3FNUZ": (8, 4, 3, 8, "fnuz"),
    "F8_E5M2FNUZ": (8, 5, 2, 16, "fnuz"),
    "F8_E8M0": (8, 8, 0, 127, "e8m0"),
    "F6_E2M3": (6, 2, 3, 1, "mx"),
    "F6_E3M2": (6, 3, 2, 3, "mx"),
    "F4": (4, 2, 1, 1, "mx"),
}

QNAN = np.uint64(0x7FC00000)
INF = np.uint64(0x7F800000)


def fields(codes, bits, E, M, kind):
    signed = kind != "e8m0"
    s = (codes >> (bits - 1)) & 1 if signed else np.zeros_like(codes)
    e = (codes >> M) & ((1 << E) - 1)
    m = codes & ((1 << M) - 1)
    return s, e, m


def specials(codes, bits, E, M, kind):
    """Masks of the NaN and Inf codes."""
    s, e, m = fields(codes, bits, E, M, kind)
    ones = (1 << E) - 1
    if kind == "ieee":
        return (e == ones) & (m != 0), (e == ones) & (m == 0)
    if kind == "fn":
        return (e == ones) & (m == (1 << M) - 1), np.zeros(codes.shape, bool)
    if kind == "fnuz":
        return codes == (1 << (bits - 1)), np.zeros(codes.shape, bool)
    if kind == "e8m0":
        return codes == 0xFF, np.zeros(codes.shape, bool)
    return np.zeros(codes.shape, bool), np.zeros(codes.shape, bool)


def values(codes, bits, E, M, bias, kind):
    """float64 value of every code (NaN/Inf codes give garbage: masked by callers)."""
    s, e, m = fields(codes, bits, E, M, kind)
    if kind == "e8m0":
        v = np.ldexp(1.0, (e - 127).astype(np.int64))
    else:
        sub = np.ldexp(m.astype(np.float64), (1 - bias - M))
        nor = np.ldexp((m + (1 << M)).astype(np.float64), (e - bias - M).astype(np.int64))
        v = np.where(e == 0, sub, nor)
    return np.where(s == 1, -v, v)


def decode_table(name):
    bits, E, M, bias, kind = FORMATS[name]
    codes = np.arange(1 << bits, dtype=np.int64)
    s, e, m = fields(codes, bits, E, M, kind)
    nan, inf = specials(codes, bits, E, M, kind)
    v = values(codes, bits, E, M, bias, kind)
    with np.errstate(over="ignore", invalid="ignore"):
        f = np.where(nan | inf, 0.0, v).astype(np.float32).view(np.uint32).astype(np.uint64)
    sign = s.astype(np.uint64) << np.uint64(31)
    if bits == 16:
        # BF16 and F16 carry the NaN payload into float32.
        nanbits = sign | INF | (m.astype(np.uint64) << np.uint64(23 - M))
    else:
        # ml_dtypes: the float32 quiet NaN with the pattern's sign bit.
        nanbits = sign | QNAN
    f = np.where(nan, nanbits, f)
    f = np.where(inf, sign | INF, f)
    return f


def positive_finite(name):
    """(sorted values, their codes) of the finite codes with sign bit 0."""
    bits, E, M, bias, kind = FORMATS[name]
    n = 1 << (bits - 1) if kind != "e8m0" else 1 << bits
    codes = np.arange(n, dtype=np.int64)
    nan, inf = specials(codes, bits, E, M, kind)
    keep = ~(nan | inf)
    codes = codes[keep]
    v = values(codes, bits, E, M, bias, kind)
    order = np.argsort(v, kind="stable")
    return v[order], codes[order]


def encode(name, xbits):
    bits, E, M, bias, kind = FORMATS[name]
    xbits = xbits.astype(np.uint64)
    x = xbits.astype(np.uint32).view(np.float32).astype(np.float64)
    sign = (xbits >> np.uint64(31)).astype(np.int64)
    a = np.abs(x)
    isnan = np.isnan(x)
    isinf = np.isinf(x)
    fin = ~(isnan | isinf)
    vals, codes = positive_finite(name)
    vmax = vals[-1]
    sbit = 1 << (bits - 1)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "e8m0":
            # Powers of two only: round to the nearer one, a tie (1.5 * 2^k)
            # upwards (no mantissa to be even). ml_dtypes' rounding treats
            # the format as if it had subnormals, so everything strictly
            # between 2^-127 and 2^-126 (float32 subnormals) goes to 2^-126.
            mant, ex = np.frexp(np.where(fin & (a > 0), a, 1.0))
            lo = np.ldexp(1.0, ex - 1)
            r = np.where(a < 1.5 * lo, lo, 2 * lo)
            r = np.where((a > 2.0**-127) & (a < 2.0**-126), 2.0**-126, r)
            r = np.where(a <= 2.0**-127, 2.0**-127, r)
        else:
            # Quantum of |x|'s binade, floored at the subnormal quantum.
            mant, ex = np.frexp(np.where(fin & (a > 0), a, 1.0))
            binade = np.maximum(ex - 1, 1 - bias)
            q = np.ldexp(1.0, binade - M)
            r = np.round(a / q) * q  # np.round: ties to even
    over = fin & (r > vmax)
    idx = np.clip(np.searchsorted(vals, np.where(over | ~fin, 0.0, r)), 0, len(vals) - 1)
    code = codes[idx].copy()
    exact = vals[idx] == np.where(over | ~fin, 0.0, r)
    assert exact[fin & ~over].all(), name + ": a rounded value is not representable"

    # Signs, zeros, overflow, Inf, NaN: per kind.
    if kind == "ieee":
        infc = ((1 << E) - 1) << M
        code = np.where(over, infc, code)
        code = code | (sign * sbit)
        code = np.where(isinf, infc | sign * sbit, code)
        if name == "F16":
            # numpy: keep the payload's top 10 bits; if they are all zero,
            # set the lowest so the result stays a NaN.
            pay = ((xbits & np.uint64(0x7FFFFF)) >> np.uint64(13)).astype(np.int64)
            pay = np.where(pay == 0, 1, pay)
            nanc = infc | pay | sign * sbit
        else:
            nanc = infc | (1 << (M - 1)) | sign * sbit  # the quiet NaN
        code = np.where(isnan, nanc, code)
    elif kind == "fn":
        nanc = (1 << (bits - 1)) - 1
        code = np.where(over | isinf | isnan, nanc, code) | (sign * sbit)
    elif kind == "fnuz":
        code = np.where((code != 0) & (sign == 1), code | sbit, code)  # no -0
        code = np.where(over | isinf | isnan, sbit, code)
    elif kind == "e8m0":
        code = np.where(over | isinf | isnan | (a == 0) | (sign == 1), 0xFF, code)
    elif kind == "mx":
        maxc = sbit - 1
        code = np.where(over | isinf, maxc, code) | (sign * sbit)
        # No NaN: ml_dtypes gives its quiet_NaN(), the -0 pattern, and its
        # unary minus flips the sign bit for a negative NaN.
        code = np.where(isnan, np.where(sign == 1, 0, sbit), code)
    return code


def f32bits(v):
    return np.asarray(v, dtype=np.float32).view(np.uint32).astype(np.uint64)


def inputs(rng):
    parts = []
    # Special values and NaN payloads (quiet, signalling, payload only in
    # the low bits, negative).
    parts.append(np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,
                           0x7F800001, 0xFF800001, 0x7FA00000, 0x7FBFFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                           0x7F802000, 0x7F801FFF, 0x7FC00001, 0x7F7FFFFF, 0xFF7FFFFF,
                           0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x00400000, 0x00400001,
                           0x00600000, 0x80400001], dtype=np.uint64))
    # Random bit patterns: every region of float32.
    parts.append(rng.integers(0, 1 << 32, 200_000, dtype=np.uint64))
    # float32 subnormals.
    parts.append(rng.integers(1, 1 << 23, 10_000, dtype=np.uint64) | (rng.integers(0, 2, 10_000, dtype=np.uint64) << np.uint64(31)))
    for name, (bits, E, M, bias, kind) in FORMATS.items():
        vals, _ = positive_finite(name)
        v = vals.astype(np.float32)
        mids = ((vals[1:] + vals[:-1]) / 2).astype(np.float32)  # exact ties
        top = vals[-1]
        if kind == "e8m0":
            beyond = np.array([top * 1.25, top * 1.5, top * 1.4999, top * 1.75], dtype=np.float32)
            mids = (vals[:-1] * 1.5).astype(np.float32)  # its tie points
        else:
            step = top - vals[-2]
            beyond = np.array([top + step / 2, top + step / 2 * 0.999, top + step / 2 * 1.001, top + step, top * 2, top * 1024], dtype=np.float32)
        below = np.array([vals[1] / 2, vals[1] / 4, vals[1] * 0.75, vals[1] / 2 * 1.0001, vals[1] / 2 * 0.9999], dtype=np.float32)
        for group in (v, mids, beyond, below):
            b = f32bits(group)
            parts += [b, b | np.uint64(0x80000000)]
            # One float32 ulp either side.
            parts += [f32bits(np.nextafter(group, np.float32(np.inf))), f32bits(np.nextafter(group, np.float32(-np.inf)))]
        # Values spread over the format's range (log-uniform).
        lo, hi = np.log2(vals[1]) - 3, np.log2(top) + 2
        r = np.exp2(rng.uniform(lo, hi, 10_000)).astype(np.float32)
        parts += [f32bits(r), f32bits(-r)]
    # Every BF16 and F16 value with random, tie and near-tie low bits.
    hi16 = np.arange(1 << 16, dtype=np.uint64) << np.uint64(16)
    for low in (np.uint64(0x8000), np.uint64(0x7FFF), np.uint64(0x8001)):
        parts.append(hi16 | low)
    parts.append(hi16 | rng.integers(0, 1 << 16, 1 << 16, dtype=np.uint64))
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    hf = h.astype(np.float32)
    ok = np.isfinite(hf)
    hb = hf[ok].view(np.uint32).astype(np.uint64)
    parts += [hb, hb + np.uint64(0x1000), hb - np.uint64(0x1000), hb + np.uint64(0x0FFF), hb + np.uint64(1)]
    x = np.concatenate(parts) & np.uint64(0xFFFFFFFF)
    return x


def unpack_codes(name, raw, n):
    """The n codes of a tensor of a FORMATS dtype, from its bytes."""
    bits = FORMATS[name][0]
    b = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    if bits == 16:
        return np.frombuffer(raw, dtype="<u2").astype(np.int64)[:n]
    if bits == 8:
        return b[:n]
    if bits == 4:
        return np.stack([b & 15, b >> 4], axis=1).reshape(-1)[:n]
    g = b[: (len(b) // 3) * 3].reshape(-1, 3)
    w = g[:, 0] | (g[:, 1] << 8) | (g[:, 2] << 16)
    return np.stack([(w >> (6 * k)) & 63 for k in range(4)], axis=1).reshape(-1)[:n]


INTS = {"I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
        "U8": "<u1", "U16": "<u2", "U32": "<u4", "U64": "<u8"}


def tensor_values(dtype, raw, n):
    """A tensor's elements: float64 for floats, exact ints, 0/1 for BOOL,
    complex128 for C64."""
    if dtype in FORMATS:
        table = decode_table(dtype).astype(np.uint32).view(np.float32)
        return table[unpack_codes(dtype, raw, n)].astype(np.float64)
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4")[:n].astype(np.float64)
    if dtype == "F64":
        return np.frombuffer(raw, dtype="<f8")[:n].copy()
    if dtype == "BOOL":
        return (np.frombuffer(raw, dtype=np.uint8)[:n] != 0).astype(np.uint64)
    if dtype == "C64":
        return np.frombuffer(raw, dtype="<c8")[:n].astype(np.complex128)
    return np.frombuffer(raw, dtype=INTS[dtype])[:n].copy()


def main(out):
    rng = np.random.default_rng(20240611)
    x = inputs(rng)
    save(out, "inputs", x)
    for name in FORMATS:
        save(out, "decode_" + name, decode_table(name))
        save(out, "encode_" + name, encode(name, x))

    # numpy's own float16, both ways.
    save(out, "numpy_decode_F16", np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32).view(np.uint32))
    with np.errstate(over="ignore", invalid="ignore"):
        save(out, "numpy_encode_F16", x.astype(np.uint32).view(np.float32).astype(np.float16).view(np.uint16))

    # Packing (PyTorch's float4_e2m1fn_x2: element 2i in the low nibble; F6:
    # element k of each group of 4 at bits 6k of the 24-bit little-endian word).
    c4 = rng.integers(0, 16, 4096, dtype=np.uint64)
    save(out, "pack_F4_codes", c4)
    save(out, "pack_F4_bytes", c4[0::2] | (c4[1::2] << np.uint64(4)))
    c6 = rng.integers(0, 64, 4096, dtype=np.uint64)
    w = c6[0::4] | (c6[1::4] << np.uint64(6)) | (c6[2::4] << np.uint64(12)) | (c6[3::4] << np.uint64(18))
    save(out, "pack_F6_codes", c6)
    save(out, "pack_F6_bytes", np.stack([w & np.uint64(0xFF), (w >> np.uint64(8)) & np.uint64(0xFF), w >> np.uint64(16)], axis=1).reshape(-1))
    print(len(x))


if __name__ == "__main__":
    main(sys.argv[1])
