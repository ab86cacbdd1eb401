#!/usr/bin/python3
"""Measure a model on vlmdb's held-out data, with vlmdb itself.

  tools/eval-model.py --model models/default [--work DIR] [--json OUT]
                      [--only held,lang,fmnist,shapes,queries,textq]

Needs `make data` and `tools/make-data.sh emoji tuxpaint emoji-styles`.
Every measure builds a database with `vlmdb init/ingest` and reads
`vlmdb eval --json` or `vlmdb search --json`:

- held: Recall@1/5/10 text->image and image->text on each held-out set
  (openclipart test; emoji, emoji-styles and tuxpaint concept tests; the
  OpenMoji line drawings held out as a style).
- lang: the emoji and Tux Paint concept tests captioned in one language
  each (en de fr es zh ja ru).
- fmnist: Fashion-MNIST zero-shot accuracy (10 class captions).
- shapes: 1,000 synthetic pictures, 5 colours x 5 shapes; the caption
  nearest each picture among the 25 "a <colour> <shape>": right shape,
  right colour; and both on the pictures whose combination data/shapes
  holds out of training.
- textq: the same queries against the openclipart captions, text to
  text (the text tower alone, no image involved).
- queries: tools/queries.json (natural-language queries in 7 languages
  with the items that should come back), precision@10 text->image on the
  openclipart catalog and on the demo catalog (openclipart + emoji + Tux
  Paint), with and without collapse of near-duplicates.
"""
import argparse, json, os, random, re, struct, subprocess, sys, zlib

VLMDB = os.environ.get("VLMDB", "build/vlmdb")
LANGS = ["en", "de", "fr", "es", "zh", "ja", "ru"]
HELD = [("openclipart", "data/openclipart/test.jsonl"),
        ("emoji", "data/emoji/test.jsonl"),
        ("emoji-styles", "data/emoji-styles/test.jsonl"),
        ("openmoji-line (style)", "data/emoji-styles/style.jsonl"),
        ("tuxpaint", "data/tuxpaint/test.jsonl")]
DEMO = ["data/openclipart/catalog.jsonl", "data/emoji/catalog.jsonl",
        "data/tuxpaint/catalog.jsonl"]


def run(*args, quiet=True):
    r = subprocess.run([VLMDB] + list(args), capture_output=True, text=True)
    if r.returncode:
        sys.exit("vlmdb %s failed: %s" % (" ".join(args), r.stderr.strip()[-500:]))
    return r.stdout


def make_db(path, model, catalogs):
    if os.path.exists(path):
        subprocess.run(["rm", "-rf", path], check=True)
    run("init", "--db", path, "--model", model, "--index", "Flat")
    for c in catalogs:
        run("ingest", "--db", path, "--quiet", c)


def recall(db, pairs=None, direction="t2i,i2t"):
    args = ["eval", "--db", db, "--json", "--no-index", "--direction", direction]
    if pairs:
        args += ["--pairs", pairs]
    j = json.loads(run(*args))
    out = {}
    for d in ("t2i", "i2t"):
        if d in j and j[d]:
            out[d] = {k: round(v, 4) for k, v in j[d]["recall"].items()}
    out["pairs"] = j["pairs"]
    return out


def pick_text(row, lang):
    if lang == "en":
        return row["text"]
    texts = row.get("texts") or {}
    for k in [lang] + sorted(k for k in texts if k.startswith(lang + "_")):
        if texts.get(k):
            v = texts[k]
            return v if isinstance(v, str) else v[0]
    return None


def held(model, work):
    out = {}
    for name, cat in HELD:
        db = os.path.join(work, "held-" + re.sub(r"\W+", "-", name))
        make_db(db, model, [cat])
        out[name] = recall(db)
        print("held %-24s %s" % (name, out[name]), file=sys.stderr)
    return out


def lang(model, work):
    out = {}
    for l in LANGS:
        path = os.path.join(work, "lang-%s.jsonl" % l)
        n = 0
        with open(path, "w") as f:
            for cat in ("data/emoji/test.jsonl", "data/tuxpaint/test.jsonl"):
                for line in open(cat):
                    r = json.loads(line)
                    t = pick_text(r, l)
                    if t:
                        f.write(json.dumps({"key": r["key"], "image": r["image"],
                                            "text": t}, ensure_ascii=False) + "\n")
                        n += 1
        db = os.path.join(work, "lang-" + l)
        make_db(db, model, [path])
        out[l] = recall(db)
        print("lang %s (%d) %s" % (l, n, out[l]), file=sys.stderr)
    return out


def fmnist(model, work):
    db = os.path.join(work, "fmnist")
    make_db(db, model, ["data/fashion-mnist/zeroshot.jsonl"])
    r = recall(db, "data/fashion-mnist/zeroshot-pairs.jsonl", "i2t")
    acc = r["i2t"]["1"]
    print("fashion-mnist zero-shot %.4f" % acc, file=sys.stderr)
    return {"accuracy": acc, "images": r["pairs"]}


# ---- colour x shape -------------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220),
           "yellow": (240, 210, 20), "purple": (140, 40, 170)}
SHAPES = ["circle", "square", "triangle", "star", "heart"]


def inside(shape, x, y):   # x, y in [-1, 1], y down
    import math
    if shape == "circle":
        return x * x + y * y <= 1
    if shape == "square":
        return abs(x) <= 0.85 and abs(y) <= 0.85
    if shape == "triangle":
        return y <= 0.8 and y >= -0.9 and abs(x) <= (y + 0.9) / 1.7 * 0.95
    if shape == "star":
        a = math.atan2(y, x) + math.pi / 2
        r = math.hypot(x, y)
        k = (a % (2 * math.pi / 5)) / (2 * math.pi / 5)
        edge = 0.42 + 0.58 * abs(1 - 2 * k) ** 1.6
        return r <= edge
    if shape == "heart":
        X, Y = x * 1.25, -y * 1.25 + 0.25
        return (X * X + Y * Y - 1) ** 3 - X * X * Y ** 3 <= 0
    raise ValueError(shape)


def write_png(path, w, h, rgb):
    raw = b"".join(b"\0" + bytes(rgb[y * w * 3:(y + 1) * w * 3]) for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def shapes(model, work):
    d = os.path.join(work, "shapes")
    os.makedirs(d, exist_ok=True)
    rng = random.Random(12)
    S = 96
    rows, shape_pairs, colour_pairs = [], [], []
    for c in COLOURS:
        for s in SHAPES:
            rows.append({"key": "cap/%s-%s" % (c, s), "text": "a %s %s" % (c, s)})
    for c, col in COLOURS.items():
        for s in SHAPES:
            for v in range(40):
                scale = rng.uniform(0.25, 0.42) * S
                cx = rng.uniform(scale, S - scale)
                cy = rng.uniform(scale, S - scale)
                px = bytearray(b"\xff" * (S * S * 3))
                for y in range(S):
                    for x in range(S):
                        if inside(s, (x + 0.5 - cx) / scale, (y + 0.5 - cy) / scale):
                            px[(y * S + x) * 3:(y * S + x) * 3 + 3] = bytes(col)
                key = "img/%s-%s-%02d" % (c, s, v)
                path = os.path.join(d, key.replace("/", "_") + ".png")
                if not os.path.exists(path):
                    write_png(path, S, S, px)
                rows.append({"key": key, "image": os.path.abspath(path)})
                shape_pairs.append({"image": key, "text": ["cap/%s-%s" % (o, s) for o in COLOURS]})
                colour_pairs.append({"image": key, "text": ["cap/%s-%s" % (c, o) for o in SHAPES]})
    for name, data in (("catalog", rows), ("shape-pairs", shape_pairs), ("colour-pairs", colour_pairs)):
        with open(os.path.join(d, name + ".jsonl"), "w") as f:
            for r in data:
                f.write(json.dumps(r) + "\n")
    db = os.path.join(work, "shapes-db")
    make_db(db, model, [os.path.join(d, "catalog.jsonl")])
    sh = recall(db, os.path.join(d, "shape-pairs.jsonl"), "i2t")["i2t"]["1"]
    co = recall(db, os.path.join(d, "colour-pairs.jsonl"), "i2t")["i2t"]["1"]
    print("colour x shape: right shape %.3f, right colour %.3f" % (sh, co), file=sys.stderr)
    res = {"right_shape": sh, "right_colour": co, "pictures": len(shape_pairs)}
    # the combinations data/shapes holds out of training: does the model
    # compose a colour and a form it learned apart?
    try:
        with open("data/shapes/stats.json") as f:
            held = set(json.load(f)["held_out"])
    except OSError:
        held = set()
    sel = [i for i, p in enumerate(shape_pairs)
           if " ".join(p["image"][4:].split("-")[:2]) in held]
    if sel:
        for name, pairs in (("shape-held", shape_pairs), ("colour-held", colour_pairs)):
            with open(os.path.join(d, name + ".jsonl"), "w") as f:
                for i in sel:
                    f.write(json.dumps(pairs[i]) + "\n")
        hs = recall(db, os.path.join(d, "shape-held.jsonl"), "i2t")["i2t"]["1"]
        hc = recall(db, os.path.join(d, "colour-held.jsonl"), "i2t")["i2t"]["1"]
        print("  on the %d pictures of combinations data/shapes holds out: "
              "shape %.3f, colour %.3f" % (len(sel), hs, hc), file=sys.stderr)
        res.update({"held_combinations": sorted({" ".join(shape_pairs[i]["image"][4:].split("-")[:2]) for i in sel}),
                    "held_right_shape": hs, "held_right_colour": hc, "held_pictures": len(sel)})
    return res


# ---- queries ----------------------------------------------------------------

def load_rows(catalogs):
    rows = {}
    for c in catalogs:
        for line in open(c):
            r = json.loads(line)
            rows[r["key"]] = (r["key"] + " " + (r.get("text") or "")).lower()
    return rows


def precision(db, rows, queries, collapse=None, langs=LANGS):
    out = {}
    for l in langs:
        ps = []
        for q in queries:
            args = ["search", "--db", db, "--text", q["q"][l], "-k", "10",
                    "--target", "image", "--json"]
            if collapse:
                args += ["--collapse", str(collapse)]
            res = json.loads(run(*args))["results"]
            rel = re.compile(q["relevant"])
            hits = sum(1 for r in res if rel.search(rows.get(r["key"], "")))
            ps.append(hits / 10)
        out[l] = round(sum(ps) / len(ps), 4)
    return out


def queries(model, work, collapse):
    qs = json.load(open("tools/queries.json"))["queries"]
    out = {}
    for name, cats in (("openclipart", ["data/openclipart/catalog.jsonl"]), ("demo", DEMO)):
        db = os.path.join(work, "q-" + name)
        make_db(db, model, cats)
        rows = load_rows(cats)
        out[name] = precision(db, rows, qs)
        print("P@10 %s %s" % (name, out[name]), file=sys.stderr)
        if collapse:
            out[name + " collapse %.2f" % collapse] = precision(db, rows, qs, collapse)
            print("P@10 %s collapsed %s" % (name, out[name + " collapse %.2f" % collapse]), file=sys.stderr)
    return out


def embed_texts(model, texts):
    """L2-normalized text embeddings from `vlmdb embed`, in order."""
    out = []
    for i in range(0, len(texts), 500):
        args = ["embed", "--model", model]
        for t in texts[i:i + 500]:
            args += ["--text", t]
        for line in run(*args).splitlines():
            out.append(json.loads(line)["embedding"])
    return out


def textq(model):
    """Images left out: each query ranks the openclipart captions by
    text-text cosine; P@10 with the queries' relevance expressions.  It
    measures the text tower alone (chance: the share of relevant
    captions, about 0.016)."""
    qs = json.load(open("tools/queries.json"))["queries"]
    rows = load_rows(["data/openclipart/catalog.jsonl"])
    keys = sorted(rows)
    caps = []
    for line in open("data/openclipart/catalog.jsonl"):
        r = json.loads(line)
        caps.append((r["key"], r.get("text") or r["key"]))
    caps.sort()
    cv = embed_texts(model, [c for _, c in caps])
    out = {}
    for l in LANGS:
        qv = embed_texts(model, [q["q"][l] for q in qs])
        ps = []
        for q, v in zip(qs, qv):
            sc = sorted(((sum(a * b for a, b in zip(v, c)), k)
                         for (k, _), c in zip(caps, cv)), reverse=True)[:10]
            rel = re.compile(q["relevant"])
            ps.append(sum(1 for _, k in sc if rel.search(rows[k])) / 10)
        out[l] = round(sum(ps) / len(ps), 4)
    rel_share = sum(sum(1 for k in keys if re.search(q["relevant"], rows[k]))
                    for q in qs) / (len(qs) * len(keys))
    out["chance"] = round(rel_share, 4)
    print("text->caption P@10 %s" % out, file=sys.stderr)
    return out


def p10_main(argv):
    """tools/eval-model.py p10 --db DB --catalog C [--catalog C ...]
    [--langs en,de] [--collapse T]: P@10 of tools/queries.json on an
    existing database, with and without collapse (make demo uses it)."""
    ap = argparse.ArgumentParser(prog="eval-model.py p10")
    ap.add_argument("--db", required=True)
    ap.add_argument("--catalog", action="append", required=True)
    ap.add_argument("--langs", default=",".join(LANGS))
    ap.add_argument("--collapse", type=float, default=0)
    a = ap.parse_args(argv)
    qs = json.load(open("tools/queries.json"))["queries"]
    rows = load_rows(a.catalog)
    langs = a.langs.split(",")
    plain = precision(a.db, rows, qs, None, langs)
    coll = precision(a.db, rows, qs, a.collapse, langs) if a.collapse else None
    print("%d queries, precision@10 (relevant: tools/queries.json)" % len(qs))
    print("language  P@10" + ("  with --collapse %.2f" % a.collapse if coll else ""))
    for l in langs:
        print("%-8s  %.3f" % (l, plain[l]) + ("  %.3f" % coll[l] if coll else ""))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "p10":
        return p10_main(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", default="data/eval")
    ap.add_argument("--json")
    ap.add_argument("--only", default="held,lang,fmnist,shapes,queries,textq")
    ap.add_argument("--collapse", type=float, default=0)
    a = ap.parse_args()
    work = os.path.join(a.work, re.sub(r"\W+", "-", a.model.strip("/")))
    os.makedirs(work, exist_ok=True)
    res = {"model": a.model}
    for part in a.only.split(","):
        if part == "held": res["held_out"] = held(a.model, work)
        elif part == "lang": res["per_language"] = lang(a.model, work)
        elif part == "fmnist": res["fashion_mnist"] = fmnist(a.model, work)
        elif part == "shapes": res["colour_shape"] = shapes(a.model, work)
        elif part == "queries": res["queries_p10"] = queries(a.model, work, a.collapse)
        elif part == "textq": res["text_queries_p10"] = textq(a.model)
        else: sys.exit("unknown part " + part)
    text = json.dumps(res, indent=1, ensure_ascii=False)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
