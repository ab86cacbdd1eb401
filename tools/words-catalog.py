#!/usr/bin/python3
"""Build vlmdb's art4apps and qABCs catalogs: drawings named by a word in
many languages (see tools/DATA.md).

  tools/words-catalog.py art4apps --out data/art4apps
  tools/words-catalog.py qabcs    --out data/qabcs

art4apps: the 585 Art4Apps drawings (200 x 200 JPEG) that Debian's
pysiogame ships in res/images/art4apps/<category>/<word>.jpg, named from
the game's word-list translations i18n/custom/a4a_po/<lang>.po (msgid: the
English word, msgstr: the word in that language).
qabcs: the 328 pictures of qabcs-data (abcs/all/pics/<category>/<stem>.png),
named from each language's alphabet tables abcs/<lang>/abc*.properties
("category:letter=WORD=SYLLABLES=stem=sound=noise").

The pictures are used in place (absolute package paths).  Split by concept
("word/<English word>", synonyms grouped, the same rule and key space in
both sets), so a held-out word is held out in both; tools/families-catalog.py
supplies the hash rule and the catalog writer.
"""
import hashlib, importlib.util, os, re, sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "families_catalog", os.path.join(HERE, "families-catalog.py"))
fc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fc)

A4A_IMAGES = "/usr/share/games/pysiogame/res/images/art4apps"
A4A_PO = "/usr/share/games/pysiogame/i18n/custom/a4a_po"
QABCS = "/usr/share/qabcs/abcs"

# English caption hint per category (the words alone are often ambiguous:
# "bank", "pool", "back", "well").
A4A_CATEGORY = {"actions": "action", "animals": "animal", "body": "body part",
                "clothes_n_accessories": "clothing", "construction": "building",
                "food": "food", "fruit_n_veg": "fruit or vegetable", "jobs": "job",
                "nature": "nature", "people": "people", "sport": "sport",
                "transport": "transport"}
QABCS_CATEGORY = {"animals": "animal", "food": "food", "instrument": "musical instrument",
                  "misc": "", "toys": "toy"}

# art4apps file names that differ from the English word of the word list
A4A_FILE = {"trainer": "sneaker", "to drink": "drink", "policeman": "police",
            "magician": "magic", "office worker": "office", "ballet dancer": "ballet"}

# Words of one concept, so that they fall on one side of the split: the
# words pysiogame's matching game leaves out because another word of the
# same category shows the same thing (game_boards/game089.py), and the
# drawings that the package ships twice under two words (byte-identical).
SYNONYMS = {"hop": "jump", "hike": "walk", "jog": "run", "male": "man",
            "mates": "friends", "mother": "mom", "female": "woman", "lady": "woman",
            "madam": "woman", "bride": "wife", "lad": "boy", "cabin": "hut",
            "chef": "cook", "bake": "cook", "badge": "policeman", "bike": "bicycle",
            "sweep": "cleaner", "juggle": "juggler", "teach": "teacher"}


def concept(word):
    w = word.lower()
    return "word/" + SYNONYMS.get(w, w)


def po_entries(path):
    """msgid -> msgstr of a gettext .po file (no plurals or contexts; the
    a4a files have none).  Empty msgstr: untranslated, left out."""
    out, cur, key = {}, None, None
    def unq(s):
        s = s.strip()
        if len(s) < 2 or s[0] != '"' or s[-1] != '"':
            raise ValueError("%s: bad string %r" % (path, s))
        return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s[1:-1])
    msgid = msgstr = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("msgid "):
                if msgid is not None and msgstr:
                    out[msgid] = msgstr
                msgid, msgstr, cur = unq(line[6:]), None, "id"
            elif line.startswith("msgstr "):
                msgstr, cur = unq(line[7:]), "str"
            elif line.startswith('"') and cur == "id":
                msgid += unq(line)
            elif line.startswith('"') and cur == "str":
                msgstr += unq(line)
    if msgid is not None and msgstr:
        out[msgid] = msgstr
    out.pop("", None)
    return out


def clean(word):
    word = " ".join(word.split())
    if word.startswith("<") and word.endswith(">"):
        return ""   # the game's marker for "not translated yet"
    return word


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def finish(out, rows, stats, label):
    per_lang = {}
    for r in rows:
        for loc in r["texts"]:
            per_lang[loc] = per_lang.get(loc, 0) + 1
    stats["items"] = len(rows)
    stats["languages"] = dict(sorted(per_lang.items()))
    stats["test"] = sum(r["meta"]["split"] == "test" for r in rows)
    stats["train"] = len(rows) - stats["test"]
    fc.write_catalog(out, rows, stats)
    print("%s: %d pictures (%d train, %d test), English + %d languages; dropped %s"
          % (label, len(rows), stats["train"], stats["test"], len(per_lang),
             stats["dropped"] or "none"), file=sys.stderr)


def art4apps(out):
    langs = {}
    for name in sorted(os.listdir(A4A_PO)):
        if name.endswith(".po"):
            langs[name[:-3]] = po_entries(os.path.join(A4A_PO, name))
    rows, seen = [], {}
    stats = {"files": 0, "dropped": {}, "po_languages": sorted(langs)}
    # A drawing shipped twice keeps its noun ("cook", a job) over its verb
    # ("bake", an action): actions come last.
    for cat in sorted(os.listdir(A4A_IMAGES), key=lambda c: (c == "actions", c)):
        for fname in sorted(os.listdir(os.path.join(A4A_IMAGES, cat))):
            if not fname.endswith(".jpg"):
                continue
            stats["files"] += 1
            path = os.path.join(A4A_IMAGES, cat, fname)
            stem = fname[:-4]
            word = next((w for w, f in A4A_FILE.items() if f == stem), stem.replace("_", " "))
            digest = sha256_file(path)
            if digest in seen:   # the same drawing under another word
                stats["dropped"].setdefault("same_picture_as", []).append(
                    "%s/%s=%s" % (cat, stem, seen[digest]))
                continue
            seen[digest] = "%s/%s" % (cat, stem)
            if cat not in A4A_CATEGORY:
                stats["dropped"].setdefault("unknown_category", []).append(cat + "/" + stem)
                continue
            texts = {}
            for loc, d in langs.items():
                t = clean(d.get(word, ""))
                if not t:
                    continue
                if loc.startswith("en") and t.lower() == word.lower():
                    continue   # en_US and en_GB only where they differ
                texts[loc] = t
            c = concept(word)
            rows.append({"key": "art4apps/%s/%s" % (cat, stem), "image": path,
                         "text": "%s. %s" % (word, A4A_CATEGORY[cat]), "texts": texts,
                         "weight": 1.0,
                         "meta": {"name": word, "category": cat, "concept": c,
                                  "split": "test" if fc.is_test(c) else "train"}})
    finish(out, rows, stats, "art4apps")


def qabcs_tables():
    """stem -> {lang: [words]} from every abcs/<lang>/abc*.properties;
    la_it and la_ru are one Latin table (identical words), read as 'la'."""
    names = {}
    for lang in sorted(os.listdir(QABCS)):
        d = os.path.join(QABCS, lang)
        if lang == "all" or not os.path.isdir(d):
            continue
        loc = "la" if lang.startswith("la_") else "en_GB" if lang == "en_gb" else lang
        for f in sorted(os.listdir(d)):
            if not (f.startswith("abc") and f.endswith(".properties")):
                continue
            with open(os.path.join(d, f), encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    head = line.split("=", 1)[0]
                    if line.startswith("#") or "=" not in line or ":" not in head:
                        continue
                    parts = line.split("=")
                    if len(parts) < 4 or not parts[3]:
                        continue
                    word = " ".join(parts[1].split())
                    if word.isupper():
                        word = word.lower()   # ru/be tables are in capitals
                    if not word:
                        continue
                    lst = names.setdefault(parts[3], {}).setdefault(loc, [])
                    if word not in lst:
                        lst.append(word)
    return names


def qabcs(out):
    pics = {}
    for cat in sorted(os.listdir(os.path.join(QABCS, "all", "pics"))):
        d = os.path.join(QABCS, "all", "pics", cat)
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                if f.endswith(".png"):
                    pics.setdefault(f[:-4], []).append(cat)
    names = qabcs_tables()
    rows, seen = [], {}
    stats = {"files": sum(len(v) for v in pics.values()), "dropped": {},
             "table_words_without_picture": sum(1 for s in names if s not in pics),
             "english_from_file_name": []}
    for stem in sorted(pics):
        for cat in pics[stem]:
            path = os.path.join(QABCS, "all", "pics", cat, stem + ".png")
            digest = sha256_file(path)
            if digest in seen:
                stats["dropped"].setdefault("same_picture_as", []).append(
                    "%s/%s=%s" % (cat, stem, seen[digest]))
                continue
            seen[digest] = "%s/%s" % (cat, stem)
            tables = names.get(stem, {})
            if tables.get("en"):
                word = tables["en"][0]
            else:   # not in the English tables: its file name is English
                word = stem.replace("_", " ")
                stats["english_from_file_name"].append(stem)
            texts = {}
            for loc, words in sorted(tables.items()):
                if loc == "en":
                    words = words[1:]
                    loc = "en_US"   # further English words of the US table
                elif loc == "en_GB":
                    words = [w for w in words if w.lower() != word.lower()]
                if words:
                    texts[loc] = ", ".join(words)
            c = concept(word)
            hint = QABCS_CATEGORY.get(cat, "")
            rows.append({"key": "qabcs/%s/%s" % (cat, stem), "image": path,
                         "text": "%s. %s" % (word, hint) if hint else word,
                         "texts": texts, "weight": 1.0,
                         "meta": {"name": word, "category": cat, "concept": c,
                                  "split": "test" if fc.is_test(c) else "train"}})
    finish(out, rows, stats, "qabcs")


if __name__ == "__main__":
    sets = {"art4apps": art4apps, "qabcs": qabcs}
    if len(sys.argv) != 4 or sys.argv[2] != "--out" or sys.argv[1] not in sets:
        sys.exit("usage: words-catalog.py art4apps|qabcs --out DIR")
    os.makedirs(sys.argv[3], exist_ok=True)
    sets[sys.argv[1]](sys.argv[3])
