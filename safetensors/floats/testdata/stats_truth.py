"""numpy's figures for floats.Stats and floats.Diff (and the stats and diff
commands), computed from the definitions in their doc comments:

  stats over the finite elements: min, max, mean(dtype=float64),
  std(dtype=float64) of a[np.isfinite(a)]; counts of NaN, Inf, zeros.
  C64 by magnitude (NaN if a part is NaN, else |z|).
  diff: equal = (a == b) | both NaN; over elements that differ and are
  finite in both, max |a-b| and max |a-b| / max(|a|, |b|).

Reads a JSON request on stdin:
  {"tensors": [{"dtype": D, "count": N, "file": PATH}],          raw bytes
   "pairs": [{"dtype": D, "count": N, "a": PATH, "b": PATH}],
   "checkpoints": [PATH, ...],      every tensor of these safetensors files
   "diff_checkpoints": [[PATH, ...], [PATH, ...]]}   the tensors two sets share
and prints {"tensors": [...], "pairs": [...], "checkpoints": {key: stats},
"diff_checkpoints": {key: diff}}.
Checkpoint files are read with plain Python (length, JSON header, bytes).
"""
import json
import math
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import truth  # noqa: E402

np.seterr(all="ignore")


def num(x):
    """A JSON-safe number: exact ints; floats, or "inf"/"-inf"/"nan" as
    strings (a float64 mean of huge F64 values can overflow)."""
    if isinstance(x, (np.integer, int)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else str(x)


def stats(dtype, raw, n):
    v = truth.tensor_values(dtype, raw, n)
    out = {"dtype": dtype, "count": int(n)}
    if dtype == "C64":
        nanm = np.isnan(v.real) | np.isnan(v.imag)
        v = np.where(nanm, np.nan, np.abs(v))
    if v.dtype.kind == "f":
        nan, inf = np.isnan(v), np.isinf(v)
        fin = v[~(nan | inf)]
        out["nan"], out["inf"] = int(nan.sum()), int(inf.sum())
        out["zeros"] = int((v == 0).sum())
    else:
        fin = v
        out["nan"] = out["inf"] = 0
        out["zeros"] = int((v == 0).sum())
    out["finite"] = int(fin.size)
    if fin.size:
        out["min"], out["max"] = num(fin.min()), num(fin.max())
        out["mean"] = num(fin.mean(dtype=np.float64))
        out["std"] = num(fin.std(dtype=np.float64))
    return out


def diff(dtype, ra, rb, n):
    a, b = truth.tensor_values(dtype, ra, n), truth.tensor_values(dtype, rb, n)
    out = {"dtype": dtype, "count": int(n), "bytes_equal": ra == rb}
    if a.dtype.kind in "iu":
        # Exact integer differences (int64 - int64 can overflow in numpy).
        ai, bi = [int(x) for x in a], [int(x) for x in b]
        d = [(abs(x - y), max(abs(x), abs(y))) for x, y in zip(ai, bi) if x != y]
        out["differ"], out["nonfinite"] = len(d), 0
        out["max_abs"] = float(max((x for x, _ in d), default=0))
        out["max_rel"] = max((x / s for x, s in d), default=0.0)
        return out
    if dtype == "C64":
        nana = np.isnan(a.real) | np.isnan(a.imag)
        nanb = np.isnan(b.real) | np.isnan(b.imag)
        fina, finb = np.isfinite(a.real) & np.isfinite(a.imag), np.isfinite(b.real) & np.isfinite(b.imag)
    else:
        nana, nanb = np.isnan(a), np.isnan(b)
        fina, finb = np.isfinite(a), np.isfinite(b)
    differ = ~((a == b) | (nana & nanb))
    both = fina & finb
    m = differ & both
    out["differ"] = int(differ.sum())
    out["nonfinite"] = int((differ & ~both).sum())
    ad = np.abs(a[m] - b[m])
    scale = np.maximum(np.abs(a[m]), np.abs(b[m]))
    out["max_abs"] = num(ad.max()) if ad.size else 0.0
    out["max_rel"] = num((ad / scale).max()) if ad.size else 0.0
    return out


def read_checkpoint(path):
    """{key: (dtype, shape, count, raw bytes)} of one safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    base = 8 + hlen
    out = {}
    for key, t in header.items():
        if key == "__metadata__":
            continue
        lo, hi = t["data_offsets"]
        out[key] = (t["dtype"], t["shape"], math.prod(t["shape"]), data[base + lo : base + hi])
    return out


def read_set(paths):
    out = {}
    for p in paths:
        out.update(read_checkpoint(p))
    return out


req = json.load(sys.stdin)
res = {"tensors": [], "pairs": [], "checkpoints": {}, "diff_checkpoints": {}}
for t in req.get("tensors", []):
    with open(t["file"], "rb") as f:
        res["tensors"].append(stats(t["dtype"], f.read(), t["count"]))
for p in req.get("pairs", []):
    with open(p["a"], "rb") as f, open(p["b"], "rb") as g:
        res["pairs"].append(diff(p["dtype"], f.read(), g.read(), p["count"]))
# Every tensor of these files (a sharded checkpoint: all its shards).
for key, (dtype, shape, n, raw) in read_set(req.get("checkpoints", [])).items():
    res["checkpoints"][key] = dict(stats(dtype, raw, n), shape=shape)
# The tensors two sets of files share, with the same dtype and shape.
if "diff_checkpoints" in req:
    a, b = (read_set(ps) for ps in req["diff_checkpoints"])
    for key in a.keys() & b.keys():
        (da, sa, n, ra), (db, sb, _, rb) = a[key], b[key]
        if da == db and sa == sb:
            res["diff_checkpoints"][key] = diff(da, ra, rb, n)
json.dump(res, sys.stdout, allow_nan=False)
