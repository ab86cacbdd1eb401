#!/usr/bin/python3
"""Build vlmdb's Fluent and EmojiOne emoji catalogs (see tools/DATA.md).

  tools/more-emoji-catalog.py fluent   --out data/fluent     (NPM_CACHE: the tarball's folder)
  tools/more-emoji-catalog.py emojione --out data/emojione

Both name their pictures with the CLDR names of the other emoji sets, by
the code path of tools/families-catalog.py (imported: its CLDR reader,
caption rule, skin-tone weight, concept split and catalog writer), so a
concept held out there is held out here too.

fluent: npm fluentui-emoji (Microsoft's Fluent emoji, MIT), SVGs in three
styles named by a slug of the emoji's English name ("cat-face",
"man-dancing-medium-dark"); the slug is matched to the CLDR English names.
flat and modern (colour) go to train/test by concept; high-contrast (black
and white) is held out as a style (style.jsonl).
emojione: Debian ruby-gemojione's 64 px PNGs (EmojiOne 2, CC-BY-SA-4.0),
named by code points; used in place.
"""
import importlib.util, os, re, sys, tarfile, unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "families_catalog", os.path.join(HERE, "families-catalog.py"))
fc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fc)

FLUENT_TGZ = "fluentui-emoji-1.3.0.tgz"
FLUENT_PREFIX = "package/icons/"
# style, held out as a style
FLUENT_STYLES = [("flat", False), ("modern", False), ("high-contrast", True)]
FLUENT_SIDE = 72
GEMOJIONE_PNG = "/usr/share/rubygems-integration/all/gems/gemojione-3.3.0/assets/png"

TONE_SLUG = {0x1F3FB: "light", 0x1F3FC: "medium-light", 0x1F3FD: "medium",
             0x1F3FE: "medium-dark", 0x1F3FF: "dark"}
ZWJ = 0x200D

# Fluent file names that keep an older Unicode name where CLDR 41 has a
# newer one (or words in another order): Fluent slug -> CLDR name slug.
# Skin-tone suffixes are applied after the alias.
FLUENT_ALIASES = {
    "hugging-face": "smiling-face-with-open-hands",
    "keycap-asterisk": "keycap-*", "keycap-hashtag": "keycap-#",
    "knocked-out-face": "face-with-crossed-out-eyes",
    "pouting-face": "enraged-face",
    "red-triangle": "red-triangle-pointed-up",
    "man-blonde-hair": "man-blond-hair", "woman-blonde-hair": "woman-blond-hair",
    "person-blonde-hair": "person-blond-hair",
    "man-deaf": "deaf-man", "woman-deaf": "deaf-woman", "person-deaf": "deaf-person",
    "man-merpeople": "merman", "woman-merpeople": "mermaid",
    "person-merpeople": "merperson",
    "man-with-bunny-ears": "men-with-bunny-ears",
    "woman-with-bunny-ears": "women-with-bunny-ears",
    "person-with-bunny-ears": "people-with-bunny-ears",
    "man-wrestling": "men-wrestling", "woman-wrestling": "women-wrestling",
    "person-wrestling": "people-wrestling",
    "person-elf": "elf", "person-fairy": "fairy", "person-genie": "genie",
    "person-mage": "mage", "person-superhero": "superhero",
    "person-supervillain": "supervillain", "person-vampire": "vampire",
    "person-zombie": "zombie",
}


def slug(name):
    """CLDR name -> Fluent-style slug: ASCII letters and digits, '-' between
    words ("Côte d’Ivoire" -> "cote-divoire"); '*' and '#' are kept so that
    the keycaps stay apart."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    s = s.lower().replace("'", "")
    return re.sub(r"[^a-z0-9*#]+", "-", s).strip("-")


def cldr_slugs(en):
    """slug -> code point tuple for every English CLDR name, with the
    skin-tone forms Fluent uses ("<base>-<tone>" for a sequence whose
    modifiers are all one tone, "<base>-default" for the toneless one).
    Slugs that two sequences share are left out (ambiguous)."""
    seen = {}
    def add(s, cps):
        seen.setdefault(s, set()).add(cps)
    for cps, (name, _kws) in en.items():
        if not name:
            continue
        add(slug(name), cps)
        tones = {c for c in cps if c in TONE_SLUG}
        base = tuple(c for c in cps if c not in TONE_SLUG)
        if not tones:
            add(slug(name) + "-default", cps)
        elif len(tones) == 1 and base in en and en[base][0]:
            add(slug(en[base][0]) + "-" + TONE_SLUG[tones.pop()], cps)
    return {s: next(iter(v)) for s, v in seen.items() if len(v) == 1}


def fluent_lookup(stem, slugs):
    """A Fluent file stem -> code points, or None when CLDR 41 has no name."""
    if stem in slugs:
        return slugs[stem]
    tone = ""
    m = re.match(r"^(.*?)(-(?:default|light|medium-light|medium|medium-dark|dark))?$", stem)
    base, tone = m.group(1), m.group(2) or ""
    if base in FLUENT_ALIASES:
        return slugs.get(FLUENT_ALIASES[base] + tone)
    return None


def emoji_row(prefix, hexs, path, cps, ann, style, split_held):
    en = ann["en"]
    texts = {loc: fc.caption(*d[cps]) for loc, d in ann.items()
             if loc not in ("en", "root") and cps in d and (d[cps][0] or d[cps][1])}
    skin = any(c in fc.SKIN for c in cps)
    concept = "emoji/" + "_".join("%04x" % c for c in cps if c not in fc.SKIN)
    split = "style" if split_held else "test" if fc.is_test(concept) else "train"
    return skin, {"key": prefix + "/" + hexs, "image": path,
                  "text": fc.caption(*en[cps]), "texts": texts,
                  "weight": fc.SKIN_WEIGHT if skin else 1.0,
                  "meta": {"name": en[cps][0], "concept": concept,
                           "style": style, "split": split}}


def finish(out, rows, stats, label):
    stats["items"] = len(rows)
    stats["test"] = sum(r["meta"]["split"] == "test" for r in rows)
    stats["style"] = sum(r["meta"]["split"] == "style" for r in rows)
    stats["train"] = stats["items"] - stats["test"] - stats["style"]
    locs = {}
    for r in rows:
        for loc in r["texts"]:
            locs[loc] = locs.get(loc, 0) + 1
    stats["locales"] = len(locs)
    fc.write_catalog(out, rows, stats)
    print("%s: %d items (%d train, %d concept-test, %d style-test), %d locales; %s"
          % (label, len(rows), stats["train"], stats["test"], stats["style"], len(locs),
             ", ".join("%s %d/%d named" % (k, v["named"], v["files"])
                       for k, v in sorted(stats.items()) if isinstance(v, dict) and "files" in v)),
          file=sys.stderr)


def fluent(out):
    npm = os.environ.get("NPM_CACHE", "data/.npm")
    ann = fc.cldr_annotations()
    slugs = cldr_slugs(ann["en"])
    rows, stats = [], {}
    with tarfile.open(os.path.join(npm, FLUENT_TGZ)) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile()
                          and m.name.startswith(FLUENT_PREFIX) and m.name.endswith(".svg")),
                         key=lambda m: m.name)
        for style, held in FLUENT_STYLES:
            pngdir = os.path.join(out, "png", style)
            os.makedirs(pngdir, exist_ok=True)
            st = stats.setdefault(style, {"files": 0, "named": 0, "skin_tone": 0,
                                          "unnamed": [], "duplicate": []})
            jobs, pending, taken = [], [], {}
            for m in members:
                rel = m.name[len(FLUENT_PREFIX):]
                if not rel.startswith(style + "/") or "/" in rel[len(style) + 1:]:
                    continue
                stem = rel[len(style) + 1:-4]
                st["files"] += 1
                cps = fluent_lookup(stem, slugs)
                if cps is None:
                    st["unnamed"].append(stem)   # newer than CLDR 41, or unknown
                    continue
                if cps in taken:   # "x" and "x-default" draw the same emoji
                    st["duplicate"].append(stem + "=" + taken[cps])
                    continue
                taken[cps] = stem
                st["named"] += 1
                hexs = "_".join("%04x" % c for c in cps)
                # realpath: a data/ that is a symlink names the real tree, as a plain
                # data/ would (the other sets write absolute paths too)
                path = os.path.realpath(os.path.join(pngdir, hexs + ".png"))
                jobs.append((tf.extractfile(m).read(), path))
                skin, row = emoji_row("fluent-" + style, hexs, path, cps, ann,
                                      "fluent-" + style, held)
                row["meta"]["file"] = stem
                st["skin_tone"] += skin
                pending.append((path, row))
            ok = fc.render_svgs(jobs, FLUENT_SIDE)
            bad = {p for (_svg, p), good in zip(jobs, ok) if not good}
            st["render_failed"] = len(bad)
            rows += [r for p, r in pending if p not in bad]
    finish(out, rows, stats, "fluent")


def emojione(out):
    ann = fc.cldr_annotations()
    en = ann["en"]
    rows = []
    st = {"files": 0, "named": 0, "skin_tone": 0, "unnamed": [], "zwj_added": 0}
    for name in sorted(os.listdir(GEMOJIONE_PNG)):
        if not name.endswith(".png"):
            continue
        st["files"] += 1
        try:
            raw = tuple(int(h, 16) for h in name[:-4].split("-"))
        except ValueError:
            st["unnamed"].append(name)
            continue
        cps = fc.strip_fe0f(raw)
        if not (cps in en and en[cps][0]):
            # EmojiOne 2 names its ZWJ sequences without the joiners
            # (1F468-1F469-1F467 is family: man, woman, girl)
            joined = tuple(x for i, c in enumerate(cps) for x in ((ZWJ, c) if i else (c,)))
            if joined in en and en[joined][0]:
                cps = joined
                st["zwj_added"] += 1
            else:
                st["unnamed"].append(name)   # e.g. wrestlers with a skin tone: not RGI
                continue
        st["named"] += 1
        hexs = "_".join("%04x" % c for c in cps)
        skin, row = emoji_row("emojione", hexs, os.path.join(GEMOJIONE_PNG, name),
                              cps, ann, "emojione", False)
        st["skin_tone"] += skin
        rows.append(row)
    finish(out, rows, {"emojione": st}, "emojione")


if __name__ == "__main__":
    sets = {"fluent": fluent, "emojione": emojione}
    if len(sys.argv) != 4 or sys.argv[2] != "--out" or sys.argv[1] not in sets:
        sys.exit("usage: more-emoji-catalog.py fluent|emojione --out DIR")
    os.makedirs(sys.argv[3], exist_ok=True)
    sets[sys.argv[1]](sys.argv[3])
