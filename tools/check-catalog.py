#!/usr/bin/python3
"""Check a dataset directory that a catalog builder of `make data` wrote.

  tools/check-catalog.py DIR [--min-items N] [--max-side PX]

Exits 1 with one line per problem (the first 20) when the result is
malformed, 0 when it is sound.  tools/make-data.sh runs it after building
fluent, emojione, art4apps and qabcs, and before writing the digest, so a
malformed catalog is never stamped as built.  Checks:

- catalog.jsonl, train.jsonl, test.jsonl exist (style.jsonl may), each line
  a JSON object with a non-empty string "key" (unique), "image" and
  "text"; "texts", if there, maps locale names to non-empty strings;
  "weight", if there, is a number in (0, 100]; "meta.split" is train,
  test or style and names the file the row is in; "meta.concept" is a
  non-empty string;
- train, test and style together are exactly catalog.jsonl, line for line,
  each sorted by key;
- no concept is in both train and test (held out by concept), and test
  holds between 3% and 25% of train + test;
- every image exists (absolute, or relative to DIR), is a PNG or a JPEG by
  its header, and its sides are between 8 and --max-side (default 1024);
- stats.json is a JSON object.
"""
import json, os, struct, sys

MAX_ERRORS = 20


def image_size(path):
    """(width, height) from a PNG or JPEG header, or a string saying why not."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                if len(head) < 24 or head[12:16] != b"IHDR":
                    return "PNG without IHDR"
                return struct.unpack(">II", head[16:24])
            if head.startswith(b"\xff\xd8"):
                f.seek(2)
                while True:
                    m = f.read(4)
                    if len(m) < 4 or m[0] != 0xFF:
                        return "JPEG without a frame header"
                    marker, seglen = m[1], struct.unpack(">H", m[2:4])[0]
                    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                        sof = f.read(5)
                        if len(sof) < 5:
                            return "truncated JPEG"
                        h, w = struct.unpack(">HH", sof[1:5])
                        return (w, h)
                    if seglen < 2:
                        return "bad JPEG segment"
                    f.seek(seglen - 2, 1)
            return "neither PNG nor JPEG"
    except OSError as e:
        return str(e)


def main(argv):
    args = argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit("usage: check-catalog.py DIR [--min-items N] [--max-side PX]")
    d, min_items, max_side = args[0], 1, 1024
    i = 1
    while i < len(args):
        if args[i] == "--min-items" and i + 1 < len(args):
            min_items = int(args[i + 1])
        elif args[i] == "--max-side" and i + 1 < len(args):
            max_side = int(args[i + 1])
        else:
            sys.exit("check-catalog: unknown argument %r" % args[i])
        i += 2
    errors = []
    def err(msg):
        errors.append(msg)

    files = {}
    for name in ("catalog", "train", "test", "style"):
        path = os.path.join(d, name + ".jsonl")
        if not os.path.exists(path):
            if name != "style":
                err("%s is missing" % path)
            files[name] = []
            continue
        with open(path, "rb") as f:
            files[name] = f.read().split(b"\n")
        if files[name] and files[name][-1] == b"":
            files[name].pop()
        else:
            err("%s: does not end with a newline" % path)

    rows, keys, sizes = {}, set(), {}
    for name in ("train", "test", "style"):
        prev = None
        for n, raw in enumerate(files[name], 1):
            where = "%s.jsonl:%d" % (name, n)
            try:
                r = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                err("%s: not JSON (%s)" % (where, e))
                continue
            if not isinstance(r, dict):
                err("%s: not an object" % where)
                continue
            key, image, text = r.get("key"), r.get("image"), r.get("text")
            if not isinstance(key, str) or not key:
                err("%s: no key" % where)
                continue
            if key in keys:
                err("%s: key %s again" % (where, key))
            keys.add(key)
            if prev is not None and key < prev:
                err("%s: %s after %s (not sorted)" % (where, key, prev))
            prev = key
            if not isinstance(text, str) or not text.strip():
                err("%s: %s has no text" % (where, key))
            texts = r.get("texts", {})
            if not isinstance(texts, dict) or not all(
                    isinstance(k, str) and k and isinstance(v, str) and v.strip()
                    for k, v in texts.items()):
                err("%s: %s: texts is not a map of locale to text" % (where, key))
            w = r.get("weight", 1.0)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 100:
                err("%s: %s: weight %r" % (where, key, w))
            meta = r.get("meta")
            if not isinstance(meta, dict):
                err("%s: %s has no meta" % (where, key))
                continue
            if meta.get("split") != name:
                err("%s: %s: meta.split %r in %s.jsonl" % (where, key, meta.get("split"), name))
            c = meta.get("concept")
            if not isinstance(c, str) or not c:
                err("%s: %s has no meta.concept" % (where, key))
            if not isinstance(image, str) or not image:
                err("%s: %s has no image" % (where, key))
                continue
            path = image if os.path.isabs(image) else os.path.join(d, image)
            size = sizes.get(path) or image_size(path)
            sizes[path] = size
            if isinstance(size, str):
                err("%s: %s: %s: %s" % (where, key, image, size))
            elif not (8 <= size[0] <= max_side and 8 <= size[1] <= max_side):
                err("%s: %s: %s is %dx%d (sides 8..%d)" % (where, key, image, size[0], size[1], max_side))
            rows.setdefault(name, []).append((key, raw, c))

    split_lines = sorted(((k, raw) for name in rows for k, raw, _c in rows[name]))
    if [raw for _k, raw in split_lines] != files["catalog"]:
        err("train + test + style is not catalog.jsonl (%d lines vs %d)"
            % (len(split_lines), len(files["catalog"])))
    train_c = {c for _k, _r, c in rows.get("train", [])}
    both = sorted({c for _k, _r, c in rows.get("test", [])} & train_c)
    if both:
        err("%d concepts in train and test, e.g. %s" % (len(both), ", ".join(both[:3])))
    n_train, n_test = len(rows.get("train", [])), len(rows.get("test", []))
    if n_train + n_test < min_items:
        err("%d train + test items, want at least %d" % (n_train + n_test, min_items))
    elif not 0.03 <= n_test / (n_train + n_test) <= 0.25:
        err("test holds %d of %d items" % (n_test, n_train + n_test))
    try:
        with open(os.path.join(d, "stats.json")) as f:
            if not isinstance(json.load(f), dict):
                err("stats.json is not an object")
    except (OSError, ValueError) as e:
        err("stats.json: %s" % e)

    for e in errors[:MAX_ERRORS]:
        print("check-catalog: %s: %s" % (d, e), file=sys.stderr)
    if len(errors) > MAX_ERRORS:
        print("check-catalog: %s: ... %d more" % (d, len(errors) - MAX_ERRORS), file=sys.stderr)
    if errors:
        return 1
    print("check-catalog: %s: %d train, %d test, %d style rows, %d images: ok"
          % (d, n_train, n_test, len(rows.get("style", [])), len(sizes)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
