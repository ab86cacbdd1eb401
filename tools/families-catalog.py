#!/usr/bin/python3
"""Build vlmdb's emoji and Tux Paint catalogs (see tools/DATA.md).

  tools/families-catalog.py emoji    --out data/emoji
  tools/families-catalog.py tuxpaint --out data/tuxpaint

emoji: the PNG bitmaps of fonts-noto-color-emoji (CBDT/CBLC, read with
python3-fonttools), every character sequence that reaches a glyph (cmap and
GSUB ligatures), named from unicode-cldr-core's annotations in each locale.
tuxpaint: tuxpaint-stamps-default's stamps with their .txt captions.

Split by concept: an item is test when FNV-1a-64 of its concept string mod
10 is 0 (emoji: the sequence without skin-tone modifiers; tuxpaint: the
lower-cased English caption), so variants of one concept share a split.
"""
import json, os, re, subprocess, sys, glob
import xml.etree.ElementTree as ET

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
CLDR = "/usr/share/unicode/cldr/common"
STAMPS = "/usr/share/tuxpaint/stamps"
SKIN = set(range(0x1F3FB, 0x1F400))
SKIN_WEIGHT = 0.25


def fnv1a64(s):
    h = 0xcbf29ce484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def is_test(concept):
    return fnv1a64(concept) % 10 == 0


def write_catalog(out, rows, stats):
    rows.sort(key=lambda r: r["key"])
    dump = lambda r: json.dumps(r, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(out, "catalog.jsonl"), "w") as c, \
         open(os.path.join(out, "train.jsonl"), "w") as tr, \
         open(os.path.join(out, "test.jsonl"), "w") as te, \
         open(os.path.join(out, "style.jsonl"), "w") as styl:
        for r in rows:
            line = dump(r) + "\n"
            c.write(line)
            split = r["meta"]["split"]
            if split == "style":
                styl.write(line)
            else:
                (te if split == "test" else tr).write(line)
    with open(os.path.join(out, "stats.json"), "w") as f:
        json.dump(stats, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")


# ---- emoji -------------------------------------------------------------

def strip_fe0f(cps):
    return tuple(c for c in cps if c != 0xFE0F)


def font_sequences(font):
    """glyph name -> set of codepoint tuples that reach it (FE0F removed)."""
    seqs = {}
    cmap = font.getBestCmap()
    for cp, g in cmap.items():
        seqs.setdefault(g, set()).add((cp,))
    # Ligatures: first glyph + components -> ligature glyph; a component
    # may itself be reached by several sequences, so iterate to a fixpoint.
    ligs = []
    gsub = font["GSUB"].table if "GSUB" in font else None
    if gsub and gsub.LookupList:
        for lk in gsub.LookupList.Lookup:
            for st in lk.SubTable:
                t = lk.LookupType
                if t == 7:
                    t, st = st.ExtensionLookupType, st.ExtSubTable
                if t != 4:
                    continue
                for first, lst in st.ligatures.items():
                    for lig in lst:
                        ligs.append(([first] + list(lig.Component), lig.LigGlyph))
    changed = True
    while changed:
        changed = False
        for comps, out in ligs:
            parts = [seqs.get(g) for g in comps]
            if not all(parts):
                continue
            combos = [()]
            for p in parts:
                combos = [a + b for a in combos for b in sorted(p)][:64]
            s = seqs.setdefault(out, set())
            for cps in combos:
                cps = strip_fe0f(cps)
                if cps not in s:
                    s.add(cps)
                    changed = True
    return {g: {strip_fe0f(c) for c in s} for g, s in seqs.items()}


def cldr_annotations():
    """locale -> {cps tuple: (name, [keywords])}."""
    out = {}
    for sub in ("annotations", "annotationsDerived"):
        for path in sorted(glob.glob(os.path.join(CLDR, sub, "*.xml"))):
            loc = os.path.basename(path)[:-4]
            d = out.setdefault(loc, {})
            for a in ET.parse(path).getroot().iter("annotation"):
                if not a.text or a.get("draft") in ("unconfirmed", "provisional"):
                    continue
                if a.text.strip() == "↑↑↑":
                    continue
                cps = strip_fe0f(tuple(ord(ch) for ch in a.get("cp")))
                name, kws = d.get(cps, (None, []))
                if a.get("type") == "tts":
                    name = a.text.strip()
                else:
                    kws = [k.strip() for k in a.text.split("|") if k.strip()]
                d[cps] = (name, kws)
    # Inherit parent locales (de_CH from de) only where the child lacks it
    return out


def caption(name, kws):
    kws = [k for k in kws if k.lower() != (name or "").lower()]
    if name and kws:
        return name + ". " + ", ".join(kws[:8])
    return name or ", ".join(kws[:8])


def emoji(out):
    from fontTools.ttLib import TTFont
    font = TTFont(FONT)
    seqs = font_sequences(font)
    strike = max(font["CBDT"].strikeData, key=lambda s: len(s))
    ann = cldr_annotations()
    en = ann.get("en", {})
    pngdir = os.path.join(out, "png")
    os.makedirs(pngdir, exist_ok=True)
    rows, cover = [], {}
    stats = {"glyphs": 0, "named": 0, "skin_tone": 0, "sequences": 0}
    for g, bm in sorted(strike.items()):
        data = getattr(bm, "imageData", None)
        if not data or not data.startswith(b"\x89PNG") or g not in seqs:
            continue
        stats["glyphs"] += 1
        ss = sorted(seqs[g], key=lambda c: (len(c), c))
        stats["sequences"] += len(ss)
        hit = next((c for c in ss if c in en and en[c][0]), None)
        if hit is None:
            continue
        stats["named"] += 1
        hexs = "_".join("%04x" % c for c in hit)
        path = os.path.join(pngdir, hexs + ".png")
        with open(path, "wb") as f:
            f.write(data)
        texts = {}
        for loc, d in ann.items():
            if loc in ("en", "root"):
                continue
            c = next((c for c in ss if c in d and (d[c][0] or d[c][1])), None)
            if c is not None:
                texts[loc] = caption(*d[c])
                cover[loc] = cover.get(loc, 0) + 1
        skin = any(c in SKIN for c in hit)
        stats["skin_tone"] += skin
        concept = "emoji/" + "_".join("%04x" % c for c in hit if c not in SKIN)
        rows.append({"key": "emoji/" + hexs, "image": os.path.abspath(path),
                     "text": caption(*en[hit]), "texts": texts,
                     "weight": SKIN_WEIGHT if skin else 1.0,
                     "meta": {"name": en[hit][0], "concept": concept,
                              "sequences": ["_".join("%04x" % c for c in s) for s in ss],
                              "split": "test" if is_test(concept) else "train"}})
    stats["locales"] = dict(sorted(cover.items()))
    stats["locales_80pct"] = sum(1 for v in cover.values() if v >= 0.8 * stats["named"])
    stats["test"] = sum(r["meta"]["split"] == "test" for r in rows)
    write_catalog(out, rows, stats)
    print("emoji: %d glyphs with PNG, %d named, %d skin-tone, %d locales (%d >= 80%%), %d test"
          % (stats["glyphs"], stats["named"], stats["skin_tone"], len(cover),
             stats["locales_80pct"], stats["test"]), file=sys.stderr)


# ---- more emoji styles (npm packages) -----------------------------------

# name, npm tarball, member prefix, file suffix, held out as a style
STYLES = [
    ("twemoji", "emoji-datasource-twitter-16.0.0.tgz", "package/img/twitter/64/", ".png", False),
    ("openmoji", "openmoji-17.0.0.tgz", "package/color/svg/", ".svg", False),
    ("openmoji-line", "openmoji-17.0.0.tgz", "package/black/svg/", ".svg", True),
]


def render_svgs(jobs, side):
    """(svg bytes, png path) pairs -> PNGs, side x side, with rsvg-convert."""
    from concurrent.futures import ThreadPoolExecutor
    def one(job):
        svg, path = job
        r = subprocess.run(["rsvg-convert", "-w", str(side), "-h", str(side),
                            "-o", path], input=svg, capture_output=True)
        return r.returncode == 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        return list(ex.map(one, jobs))


def emoji_styles(out):
    import tarfile
    npm = os.environ.get("NPM_CACHE", "data/.npm")
    ann = cldr_annotations()
    en = ann.get("en", {})
    rows, stats = [], {}
    for style, tgz, prefix, suffix, held in STYLES:
        pngdir = os.path.join(out, "png", style)
        os.makedirs(pngdir, exist_ok=True)
        st = stats.setdefault(style, {"files": 0, "named": 0, "skin_tone": 0})
        jobs, pending = [], []
        with tarfile.open(os.path.join(npm, tgz)) as tf:
            for m in sorted(tf.getmembers(), key=lambda m: m.name):
                if not m.isfile() or not m.name.startswith(prefix) \
                        or not m.name.endswith(suffix):
                    continue
                stem = m.name[len(prefix):-len(suffix)]
                try:
                    cps = strip_fe0f(tuple(int(h, 16) for h in stem.split("-")))
                except ValueError:
                    continue
                st["files"] += 1
                if cps not in en or not en[cps][0]:
                    continue   # OpenMoji's extras and unnamed sequences
                st["named"] += 1
                hexs = "_".join("%04x" % c for c in cps)
                path = os.path.abspath(os.path.join(pngdir, hexs + ".png"))
                data = tf.extractfile(m).read()
                if suffix == ".svg":
                    jobs.append((data, path))
                else:
                    with open(path, "wb") as f:
                        f.write(data)
                texts = {loc: caption(*d[cps]) for loc, d in ann.items()
                         if loc not in ("en", "root") and cps in d
                         and (d[cps][0] or d[cps][1])}
                skin = any(c in SKIN for c in cps)
                st["skin_tone"] += skin
                concept = "emoji/" + "_".join("%04x" % c for c in cps if c not in SKIN)
                split = "style" if held else "test" if is_test(concept) else "train"
                pending.append((path, {"key": style + "/" + hexs, "image": path,
                     "text": caption(*en[cps]), "texts": texts,
                     "weight": SKIN_WEIGHT if skin else 1.0,
                     "meta": {"name": en[cps][0], "concept": concept,
                              "style": style, "split": split}}))
        ok = render_svgs(jobs, 72) if jobs else []
        bad = {p for (svg, p), good in zip(jobs, ok) if not good}
        st["render_failed"] = len(bad)
        rows += [r for p, r in pending if p not in bad]
    stats["items"] = len(rows)
    stats["test"] = sum(r["meta"]["split"] == "test" for r in rows)
    stats["style"] = sum(r["meta"]["split"] == "style" for r in rows)
    write_catalog(out, rows, stats)
    print("emoji-styles: %s; %d items, %d concept-test, %d style-test"
          % (", ".join("%s %d/%d named" % (k, v["named"], v["files"])
                       for k, v in stats.items() if isinstance(v, dict)),
             len(rows), stats["test"], stats["style"]), file=sys.stderr)


# ---- Tux Paint ---------------------------------------------------------

LANG_RE = re.compile(r"^([A-Za-z]{2,3}(?:_[A-Za-z]{2,4})?(?:@\w+)?)(?:\.utf-?8)?=(.*)$")
DROP_LANGS = {"ta", "ml"}   # garbled Tamil / broken Malayalam in the package


def parse_stamp_txt(text):
    """(english, {lang: caption}) from a stamp .txt file's text."""
    english, langs = None, {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        m = LANG_RE.match(line)
        if m:
            lang, cap = m.group(1), " ".join(m.group(2).split())
            if lang.split("_")[0] in DROP_LANGS or not cap:
                continue
            langs.setdefault(lang, cap)
        elif english is None:
            english = " ".join(line.split())
    if english:
        for k in [k for k in langs if k.startswith("en_")]:
            if langs[k].lower() == english.lower():
                del langs[k]
    return english, langs


def tuxpaint(out):
    pngdir = os.path.join(out, "png")
    os.makedirs(pngdir, exist_ok=True)
    rows, per_lang = [], {}
    stats = {"txt": 0, "no_english": 0, "rendered_svg": 0, "no_image": 0}
    for txt in sorted(glob.glob(os.path.join(STAMPS, "**", "*.txt"), recursive=True)):
        stats["txt"] += 1
        stem = txt[:-4]
        rel = os.path.relpath(stem, STAMPS)
        with open(txt, encoding="utf-8", errors="replace") as f:
            english, langs = parse_stamp_txt(f.read())
        if not english:
            stats["no_english"] += 1
            continue
        if os.path.exists(stem + ".png"):
            image = stem + ".png"
        elif os.path.exists(stem + ".svg"):
            image = os.path.abspath(os.path.join(pngdir, rel.replace("/", "__") + ".png"))
            if subprocess.run(["rsvg-convert", "-w", "256", "-h", "256",
                               "--keep-aspect-ratio", "-o", image, stem + ".svg"]).returncode:
                stats["no_image"] += 1
                continue
            stats["rendered_svg"] += 1
        else:
            stats["no_image"] += 1
            continue
        for k in langs:
            per_lang[k] = per_lang.get(k, 0) + 1
        concept = "tuxpaint/" + english.lower().rstrip(".")
        parts = rel.split("/")
        rows.append({"key": "tuxpaint/" + rel, "image": image, "text": english,
                     "texts": langs, "weight": 1.0,
                     "meta": {"category": parts[0],
                              "subcategory": parts[1] if len(parts) > 2 else "",
                              "concept": concept,
                              "split": "test" if is_test(concept) else "train"}})
    stats["items"] = len(rows)
    stats["languages"] = dict(sorted(per_lang.items()))
    stats["test"] = sum(r["meta"]["split"] == "test" for r in rows)
    write_catalog(out, rows, stats)
    print("tuxpaint: %d stamps (%d rendered from SVG), %d languages, %d test"
          % (len(rows), stats["rendered_svg"], len(per_lang), stats["test"]), file=sys.stderr)


if __name__ == "__main__":
    sets = {"emoji": emoji, "emoji-styles": emoji_styles, "tuxpaint": tuxpaint}
    if len(sys.argv) != 4 or sys.argv[2] != "--out" or sys.argv[1] not in sets:
        sys.exit("usage: families-catalog.py emoji|emoji-styles|tuxpaint --out DIR")
    os.makedirs(sys.argv[3], exist_ok=True)
    sets[sys.argv[1]](sys.argv[3])
