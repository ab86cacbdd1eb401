#!/usr/bin/python3
"""Caption variants from WordNet and FreeDict (see tools/DATA.md).

  tools/wordnet-captions.py --out data/wordnet data/emoji/train.jsonl ...

For every training row of the given catalogs, find the English nouns of its
caption in WordNet (wordnet-base), take each noun's most frequent sense and
write one row for the same picture whose captions say what the thing is
without naming it: the sense's definition ("feline mammal usually having
thick soft fur"), its hypernyms ("a feline", "a mammal"), its synonyms, and
word-by-word renderings of those in German, French, Spanish, Russian and
Japanese from the FreeDict English dictionaries (dict-freedict-eng-*).  The
text tower learns from them that "a furry pet" is near a cat although no
caption of a cat says "furry" or "pet".

Only train rows are read, so held-out concepts stay held out.  The output is
a pure function of the input catalogs and the packages.
"""
import argparse, gzip, json, os, re, sys

WN = "/usr/share/wordnet"
DICTD = "/usr/share/dictd"
LANGS = ["deu", "fra", "spa", "rus", "jpn"]

# Hypernyms too abstract to say anything about a picture.
ABSTRACT = {
    "entity", "physical_entity", "abstraction", "abstract_entity", "object",
    "physical_object", "whole", "unit", "artifact", "artefact", "thing",
    "matter", "causal_agent", "cause", "causal_agency", "living_thing",
    "animate_thing", "organism", "being", "instrumentality",
    "instrumentation", "part", "portion", "component", "group", "grouping",
    "attribute", "relation", "measure", "quantity", "amount", "psychological_feature",
    "event", "act", "deed", "human_action", "human_activity", "state",
    "communication", "location", "substance", "natural_object", "shape",
    "form", "content", "cognitive_content", "mental_object", "person",
    "individual", "someone", "somebody", "mortal", "soul", "device",
    "commodity", "trade_good", "good", "structure", "construction",
    "container", "covering", "creation", "solid", "food", "nutrient",
    "vertebrate", "craniate", "chordate", "animal", "animate_being",
    "beast", "brute", "creature", "fauna", "plant", "flora", "plant_life",
    "vascular_plant", "tracheophyte", "region", "area", "point",
}
# Caption words that are not what the picture shows.
SKIP = {
    "a", "an", "the", "of", "and", "or", "with", "in", "on", "at", "to",
    "for", "from", "by", "is", "are", "this", "that", "it", "its", "one",
    "two", "three", "sign", "symbol", "button", "mark", "type", "face",
    "man", "woman", "person", "people", "light", "medium", "dark", "skin",
    "tone", "flag", "clip", "art", "clipart", "picture", "image", "icon",
    "drawing", "cartoon", "black", "white", "red", "green", "blue",
    "yellow", "orange", "purple", "brown", "pink", "gray", "grey", "lumen",
    "design", "studio", "no", "not", "up", "down", "left", "right", "big",
    "small", "little", "old", "new", "set", "style", "simple", "free",
}
# Words WordNet lists as nouns that captions use as something else.
PRONOUNS = {
    "nothing", "something", "anything", "everything", "what", "who", "all",
    "have", "get", "got", "do", "does", "did", "done", "go", "going", "let",
    "will", "would", "should", "could", "must", "might", "here", "there",
    "now", "then", "yes", "you", "your", "our", "their", "his", "her",
    "him", "she", "they", "them", "we", "me", "my", "mine", "say", "see",
    "look", "like", "just", "only", "well", "back", "out", "off", "over",
    "under", "time", "way", "day", "thing", "things", "stuff", "version",
    "number", "hash", "pound", "lb", "test", "example", "sample", "work",
}
STOP = SKIP | {
    "usually", "often", "especially", "typically", "sometimes", "any",
    "some", "such", "as", "which", "who", "whose", "has", "have", "having",
    "being", "been", "be", "used", "use", "made", "make", "can", "may",
    "other", "into", "than", "but", "also", "very", "more", "most", "that",
    "etc", "e.g.", "i.e.", "various", "several", "many", "much", "having",
}


def morph(word, exc):
    """Base forms of a noun, WordNet's morphy rules for nouns."""
    out = [word]
    if word in exc:
        out += exc[word]
    for suf, rep in (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                     ("shes", "sh"), ("men", "man"), ("ies", "y"), ("s", "")):
        if word.endswith(suf) and len(word) > len(suf) + 1:
            out.append(word[: -len(suf)] + rep)
    return out


class WordNet:
    def __init__(self, root=WN):
        self.index = {}
        with open(os.path.join(root, "index.noun"), encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                p = line.split()
                lemma, ptr_cnt = p[0], int(p[3])
                sense_cnt = int(p[2])
                offs = p[6 + ptr_cnt:6 + ptr_cnt + sense_cnt]
                self.index[lemma] = [int(o) for o in offs]
        self.adj = set()
        with open(os.path.join(root, "index.adj"), encoding="utf-8") as f:
            for line in f:
                if not line.startswith(" "):
                    self.adj.add(line.split(" ", 1)[0])
        self.exc = {}
        with open(os.path.join(root, "noun.exc"), encoding="utf-8") as f:
            for line in f:
                p = line.split()
                self.exc.setdefault(p[0], []).extend(p[1:])
        self.data = open(os.path.join(root, "data.noun"), "rb")
        self.cache = {}

    def synset(self, off):
        if off in self.cache:
            return self.cache[off]
        self.data.seek(off)
        line = self.data.readline().decode("utf-8")
        head, _, gloss = line.partition(" | ")
        p = head.split()
        nw = int(p[3], 16)
        words = [p[4 + 2 * i] for i in range(nw)]
        k = 4 + 2 * nw
        np_ = int(p[k])
        hyper = []
        for i in range(np_):
            sym, o = p[k + 1 + 4 * i], int(p[k + 2 + 4 * i])
            if sym in ("@", "@i"):
                hyper.append(o)
        s = (words, hyper, gloss.strip())
        self.cache[off] = s
        return s

    def lookup(self, phrase):
        words = phrase.split("_")
        for base in morph(words[-1], self.exc):
            key = "_".join(words[:-1] + [base])
            if key in self.index:
                return key, self.index[key]
        return None, None


def clean_gloss(g):
    """The definition without its quoted examples, split into clauses."""
    g = re.sub(r'"[^"]*"', "", g)
    g = re.sub(r":[^;]*", "", g)   # "...: domestic cats; wildcats"
    parts = [re.sub(r"\s+", " ", s).strip(" ;:,.") for s in g.split(";")]
    return [s for s in parts if len(s) > 3]


def words_of(text):
    return re.findall(r"[a-z][a-z'-]*[a-z]|[a-z]", text.lower())


def nouns_of(wn, text, limit=2):
    """Up to `limit` WordNet nouns of a caption, longest phrase first."""
    toks = words_of(text)
    found, used = [], set()
    for n in (3, 2, 1):
        for i in range(len(toks) - n + 1):
            if any(j in used for j in range(i, i + n)):
                continue
            span = toks[i:i + n]
            if n == 1 and (span[0] in STOP or span[0] in PRONOUNS or
                           len(span[0]) < 3):
                continue
            # an adjective in front of another word describes it
            if n == 1 and span[0] in wn.adj and i + 1 < len(toks) and \
                    toks[i + 1] not in SKIP:
                continue
            lemma, offs = wn.lookup("_".join(span))
            if not lemma:
                continue
            found.append((i, lemma, offs))
            used.update(range(i, i + n))
    # the caption's first words name the picture (titles, CLDR names)
    found.sort(key=lambda t: t[0])
    out, seen = [], set()
    for _, lemma, offs in found:
        if lemma not in seen:
            seen.add(lemma)
            out.append((lemma, offs))
    return out[:limit]


class FreeDict:
    """English → other language, first translations of a headword."""
    def __init__(self, lang):
        b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        val = lambda s: sum(b64.index(c) * 64 ** i for i, c in enumerate(reversed(s)))
        data = gzip.open(os.path.join(DICTD, "freedict-eng-%s.dict.dz" % lang)).read()
        self.lang, self.words = lang, {}
        with open(os.path.join(DICTD, "freedict-eng-%s.index" % lang), encoding="utf-8") as f:
            for line in f:
                p = line.rstrip("\n").split("\t")
                if len(p) < 3 or p[0].startswith("00") or p[0] in self.words:
                    continue
                o, n = val(p[1]), val(p[2])
                t = self.parse(data[o:o + n].decode("utf-8", "replace"))
                if t:
                    self.words[p[0].lower()] = t

    def parse(self, entry):
        out = []
        for line in entry.split("\n")[1:]:
            if line.startswith((" ", "\t")) and self.lang != "jpn":
                continue   # examples, notes, synonyms, see-also
            line = re.sub(r"^\d+\.\s*", "", line.strip())
            line = re.sub(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)|\{[^}]*\}|\s\d+\.?$", "", line)
            if not line or re.fullmatch(r"[\x00-\x7f]+", line) and self.lang == "jpn":
                continue   # jpn: the English description of a sense
            for w in re.split(r"[,;、]", line):
                w = w.strip(" .")
                if w and w not in out and len(w) < 30:
                    out.append(w)
            if len(out) >= 2:
                break
        return out[:2]

    def tr(self, word):
        w = word.replace("_", " ").lower()
        return self.words.get(w) or self.words.get(w.split(" ")[-1])


def article(w):
    return ("an " if w[0] in "aeiou" else "a ") + w


def variants(wn, dicts, lemma, offs):
    words, hyper, gloss = wn.synset(offs[0])
    clauses = clean_gloss(gloss)
    if not clauses:
        return None
    # hypernyms, two levels, skipping the abstract ones
    hyp, frontier = [], hyper
    for _ in range(3):
        nxt = []
        for h in frontier:
            hw, hh, _ = wn.synset(h)
            if hw[0].lower() not in ABSTRACT and hw[0].lower() != lemma:
                hyp.append(hw[0].replace("_", " "))
            nxt += hh
        frontier = nxt
        if len(hyp) >= 3:
            break
    hyp = list(dict.fromkeys(hyp))[:3]
    syn = [w.replace("_", " ") for w in words
           if w.lower() != lemma and "_" not in w.lower()][:2]
    en = [clauses[0]]
    if len(clauses) > 1:
        en.append(clauses[0] + ", " + clauses[1])
    for h in hyp:
        en.append(article(h))
    if hyp:
        en.append("a kind of " + hyp[0] + ": " + clauses[0])
    for s in syn:
        en.append(article(s))
    # word by word in other languages: the hypernyms and the definition's
    # content words
    content = [w for w in words_of(clauses[0]) if w not in STOP][:4]
    texts = {}
    for lang, d in dicts.items():
        parts = []
        for w in [lemma] + hyp + content:
            t = d.tr(w)
            if t and t[0] not in parts:
                parts.append(t[0])
        if len(parts) >= 2:
            sep = "、" if lang == "jpn" else ", "
            texts[lang] = sep.join(parts)
    return en, texts


ISO = {"deu": "de", "fra": "fr", "spa": "es", "rus": "ru", "jpn": "ja"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("catalogs", nargs="+")
    a = ap.parse_args()
    wn = WordNet()
    dicts = {l: FreeDict(l) for l in LANGS
             if os.path.exists(os.path.join(DICTD, "freedict-eng-%s.index" % l))}
    os.makedirs(a.out, exist_ok=True)
    rows, stats = [], {"rows_read": 0, "rows_written": 0, "per_catalog": {},
                       "concepts": 0, "dictionaries": {ISO[l]: len(d.words) for l, d in dicts.items()}}
    concepts = set()
    for cat in a.catalogs:
        n_in = n_out = 0
        with open(cat, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                n_in += 1
                text = r.get("text") or ""
                for lemma, offs in nouns_of(wn, text):
                    v = variants(wn, dicts, lemma, offs)
                    if not v:
                        continue
                    en, texts = v
                    alt = en[1:] + [texts[l] for l in sorted(texts)]
                    row = {"key": "wordnet/" + r["key"] + "#" + lemma,
                           "image": r["image"], "text": en[0], "texts": alt,
                           "weight": float(r.get("weight", 1.0)) / 2}
                    rows.append(row)
                    concepts.add(lemma)
                    n_out += 1
        stats["per_catalog"][cat] = {"read": n_in, "written": n_out}
        stats["rows_read"] += n_in
        stats["rows_written"] += n_out
    stats["concepts"] = len(concepts)
    rows.sort(key=lambda r: r["key"])
    with open(os.path.join(a.out, "train.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    with open(os.path.join(a.out, "test.jsonl"), "w") as f:
        pass   # nothing is held out here: the sources' test splits are
    with open(os.path.join(a.out, "stats.json"), "w") as f:
        json.dump(stats, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")
    print("wordnet-captions: %d rows for %d concepts from %d rows" %
          (stats["rows_written"], stats["concepts"], stats["rows_read"]), file=sys.stderr)


if __name__ == "__main__":
    main()
