#!/usr/bin/python3
"""Interpolate two models of the same geometry, weight by weight.

  tools/mix-models.py --a DIR_A --b DIR_B --alpha X --out DIR

Writes DIR/model.safetensors with every tensor (1 - X) * A + X * B,
computed in double precision and stored in A's dtype (F16 or F32), and
copies B's other files (config, tokenizer, preprocessor_config.json,
NOTICE); DIR/training.json is B's with an "interpolation" record (both
models' paths and SHA-256, alpha).  Fine-tuning a model moves it away
from what it knew; a point between the model it started from and the
fine-tuned one often keeps most of the gain and loses less (Wortsman et
al., "Robust fine-tuning of zero-shot models", CVPR 2022: WiSE-FT).

Both models must have the same tensor names, shapes and dtypes.
"""
import argparse, hashlib, json, os, shutil, struct, sys


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


FMT = {"F16": "e", "F32": "f"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--alpha", type=float, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if not 0 <= a.alpha <= 1:
        sys.exit("mix-models: --alpha must be in [0, 1]")
    pa = os.path.join(a.a, "model.safetensors")
    pb = os.path.join(a.b, "model.safetensors")
    ha, da = read_st(pa)
    hb, db = read_st(pb)
    names = [k for k in ha if k != "__metadata__"]
    if sorted(names) != sorted(k for k in hb if k != "__metadata__"):
        sys.exit("mix-models: the two models have different tensors")
    out_data = bytearray()
    out_header = {"__metadata__": ha.get("__metadata__", {"format": "pt"})}
    x = a.alpha
    for name in sorted(names, key=lambda k: ha[k]["data_offsets"][0]):
        ta, tb = ha[name], hb[name]
        if ta["shape"] != tb["shape"] or ta["dtype"] != tb["dtype"]:
            sys.exit("mix-models: %s: %s %s against %s %s" %
                     (name, ta["dtype"], ta["shape"], tb["dtype"], tb["shape"]))
        fmt = FMT.get(ta["dtype"])
        if not fmt:
            sys.exit("mix-models: %s: dtype %s" % (name, ta["dtype"]))
        sa, ea = ta["data_offsets"]
        sb, eb = tb["data_offsets"]
        n = (ea - sa) // struct.calcsize(fmt)
        va = struct.unpack("<%d%s" % (n, fmt), da[sa:ea])
        vb = struct.unpack("<%d%s" % (n, fmt), db[sb:eb])
        mixed = [(1 - x) * p + x * q for p, q in zip(va, vb)]
        start = len(out_data)
        out_data += struct.pack("<%d%s" % (n, fmt), *mixed)
        out_header[name] = {"dtype": ta["dtype"], "shape": ta["shape"],
                            "data_offsets": [start, len(out_data)]}
    hjson = json.dumps(out_header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    os.makedirs(a.out, exist_ok=True)
    for f in os.listdir(a.b):
        src = os.path.join(a.b, f)
        if f in ("model.safetensors", "training.json") or not os.path.isfile(src):
            continue
        if f.endswith((".json", ".txt", ".model")) or f in ("NOTICE",):
            shutil.copyfile(src, os.path.join(a.out, f))
    tmp = os.path.join(a.out, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        f.write(out_data)
    os.replace(tmp, os.path.join(a.out, "model.safetensors"))
    tj = os.path.join(a.b, "training.json")
    rec = json.load(open(tj)) if os.path.exists(tj) else {}
    rec["interpolation"] = {
        "a": a.a, "a_sha256": sha256(pa), "b": a.b, "b_sha256": sha256(pb),
        "alpha": x,
        "rule": "every tensor (1 - alpha) * a + alpha * b (tools/mix-models.py)"}
    with open(os.path.join(a.out, "training.json"), "w") as f:
        json.dump(rec, f, indent=1)
        f.write("\n")
    print("mix-models: %d tensors, alpha %g -> %s" % (len(names), x, a.out),
          file=sys.stderr)


if __name__ == "__main__":
    main()
