#!/usr/bin/python3
"""Pairs of texts that mean the same thing, for the text tower's contrastive
objective (see tools/DATA.md).

  tools/text-pairs.py --out data/textpairs --data data

Writes one JSONL file per source, each line {"a": ..., "b": ..., "weight": W}
(weight left out when 1):

  wordnet.jsonl   English: a concrete noun (WordNet, wordnet-base) and its
                  definition, synonyms, hypernyms and their definitions; an
                  adjective and its synonyms, cluster head and definition
  freedict.jsonl  English noun or adjective and its German, French, Spanish,
                  Russian, Japanese translation (dict-freedict-eng-*), and
                  the definition of a concrete noun and its translation
  unihan.jsonl    English word and a common Chinese character whose Unihan
                  definition (unicode-data) it is
  cldr.jsonl      emoji names and keywords in every CLDR locale, from the
                  train rows of the emoji catalogs
  tuxpaint.jsonl  Tux Paint's English caption and its translations, art4apps'
                  and qABCs' English word and its translations (train rows)

plus train.jsonl (the files above concatenated, in that order), an empty
test.jsonl and stats.json.  Held out stays held out: a pair is left out when
either side names a concept of a catalog's test split, or is one of the
evaluation queries of tools/queries.json.  The output is a pure function of
the packages, the catalogs' train and test rows and the queries.
"""
import argparse, bz2, gzip, importlib.util, json, os, re, sys, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "wordnet_captions", os.path.join(HERE, "wordnet-captions.py"))
wc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wc)

SOURCES = ["wordnet", "freedict", "unihan", "cldr", "tuxpaint"]
EMOJI_SETS = ["emoji", "fluent", "emojione", "emoji-styles"]
WORD_SETS = ["art4apps", "qabcs"]
UNIHAN = "/usr/share/unicode/Unihan_Readings.txt.bz2"
UNIHAN_VARIANTS = "/usr/share/unicode/Unihan_Variants.txt.bz2"
UNIHAN_MIN_COUNT = 30   # kHanyuPinlu occurrences: 2,891 of its 3,799 characters
MAX_LEN = 200

SKIN_WEIGHT = 0.05      # "waving hand: medium skin tone": 1,590 names, 5 per emoji
FLAG_WEIGHT = 0.3       # "flag: Chile": 241 of the 3,267 train names
RANK_WEIGHT = {1: 1.0, 2: 0.5}   # WordNet sense rank of the lemma; rarer: skipped
SYNSET_CAP = 8          # rows a noun synset contributes about itself
HYPONYM_CAP = 12        # "hyponym's definition <-> hypernym" rows per hypernym
# WordNet lexicographer files of mass nouns (no plural, no article)
MASS_LEXFILES = {13, 27}    # noun.food, noun.substance
FOOD_LEXFILE = 13
# FreeDict (German) translations marked as regional or of another register
DEU_SKIP_TAGS = {"Ös.", "Schw.", "Bayr.", "Süddt.", "Norddt.", "Mitteldt.",
                 "ugs.", "humor.", "pej.", "slang", "vulg.", "veraltet",
                 "veraltend", "obs.", "dated", "rare", "selten", "poet.",
                 "übtr.", "fig.", "geh.", "alt"}


# ---- text keys ------------------------------------------------------------

def clean(s):
    return re.sub(r"\s+", " ", s).strip()


def key(s):
    """Equality of two texts: case, spacing and end punctuation ignored."""
    return clean(s).casefold().strip(" .,;:!?。、")


def core(s):
    """What a text names: key() less "a picture of", articles."""
    k = key(s)
    k = re.sub(r"^(a picture of|a photo of|some) ", "", k)
    return re.sub(r"^(a|an|the) ", "", k)


def base_lang(loc):
    return re.split(r"[_@-]", loc)[0]


class Pairs:
    """One source's rows: checked, deduplicated (either order), blocked."""
    def __init__(self, name, held, queries):
        self.name, self.held, self.queries = name, held, queries
        self.rows = {}          # (key a, key b) -> [a, b, weight, lang]
        self.kinds = {}
        self.dropped = {"held_out_or_query": 0, "too_long": 0, "same": 0,
                        "duplicate": 0, "empty": 0}

    def blocked(self, text, lang):
        k, c = key(text), core(text)
        return k in self.queries or c in self.queries or \
            c in self.held.get(base_lang(lang), ())

    def add(self, a, b, weight=1.0, lang="en", a_lang="en", kind="pair"):
        """a in a_lang, b in lang (a locale: "de", "pt_BR"); kind: for the
        counts in stats.json."""
        a, b = clean(a), clean(b)
        if not a or not b:
            self.dropped["empty"] += 1
            return
        if len(a) > MAX_LEN or len(b) > MAX_LEN:
            self.dropped["too_long"] += 1
            return
        ka, kb = key(a), key(b)
        if ka == kb or not ka or not kb or \
                re.sub(r"[\W_]+", "", ka) == re.sub(r"[\W_]+", "", kb) != "":
            self.dropped["same"] += 1
            return
        if self.blocked(a, a_lang) or self.blocked(b, lang):
            self.dropped["held_out_or_query"] += 1
            return
        k = (ka, kb) if ka <= kb else (kb, ka)
        old = self.rows.get(k)
        if old is not None:
            self.dropped["duplicate"] += 1
            if weight > old[2]:
                old[2] = weight
            return
        self.rows[k] = [a, b, weight, lang]
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def sorted_rows(self):
        return sorted(self.rows.values(), key=lambda r: (r[0], r[1], r[3]))


def dump(a, b, w):
    r = {"a": a, "b": b}
    if w != 1.0:
        r["weight"] = round(w, 3)
    return json.dumps(r, ensure_ascii=False, separators=(",", ":"))


# ---- catalogs ----------------------------------------------------------------

def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def blocked_texts(data, queries):
    """What no pair may say: the names of the held-out concepts (test rows of
    every catalog), by language, so that Spanish "pan" (bread, held out)
    does not block English "pan"; and the evaluation queries, in any
    language.  Returns ({language: {core}}, {key and core of queries})."""
    held, n_test = {}, 0

    def hold(lang, text):
        held.setdefault(base_lang(lang), set()).add(core(text))
    for s in EMOJI_SETS:
        for r in read_jsonl(os.path.join(data, s, "test.jsonl")):
            n_test += 1
            hold("en", r["meta"]["name"])
            for loc, t in r.get("texts", {}).items():
                hold(loc, split_caption(t)[0])
    for s in ["tuxpaint"] + WORD_SETS:
        for r in read_jsonl(os.path.join(data, s, "test.jsonl")):
            n_test += 1
            hold("en", r["meta"]["name"] if "name" in r.get("meta", {}) else r["text"])
            for loc, t in r.get("texts", {}).items():
                hold(loc, t)
    qs = set()
    with open(queries, encoding="utf-8") as f:
        for q in json.load(f)["queries"]:
            for t in q["q"].values():
                qs.update((key(t), core(t)))
    for v in held.values():
        v.discard("")
    qs.discard("")
    return held, qs, {"test_rows": n_test, "held_out_names_en": len(held.get("en", ())),
                      "held_out_names": sum(len(v) for v in held.values()),
                      "query_texts": len(qs)}


def split_caption(text):
    """A catalog caption "name. kw1, kw2" (families-catalog.caption) as
    (name, [keywords]).  Names may hold ". " ("Flagge: St. Lucia"), keywords
    hardly: split at the last one."""
    name, sep, kws = text.rpartition(". ")
    if not sep:
        return text, []
    return name, [k.strip() for k in kws.split(", ") if k.strip()]


# ---- WordNet -----------------------------------------------------------------

class Synset:
    __slots__ = ("off", "lexfile", "kind", "words", "hyper", "inst", "hypo",
                 "similar", "gloss")


def read_data(path):
    """Every synset of a WordNet data file: offset -> Synset."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):
                continue
            head, _, gloss = line.partition(" | ")
            p = head.split()
            s = Synset()
            s.off, s.lexfile, s.kind = int(p[0]), int(p[1]), p[2]
            nw = int(p[3], 16)
            s.words = [re.sub(r"\([a-z]+\)$", "", p[4 + 2 * i]) for i in range(nw)]
            k = 4 + 2 * nw
            s.hyper, s.inst, s.hypo, s.similar = [], [], [], []
            for i in range(int(p[k])):
                sym, o = p[k + 1 + 4 * i], int(p[k + 2 + 4 * i])
                if sym == "@":
                    s.hyper.append(o)
                elif sym == "@i":
                    s.inst.append(o)
                elif sym == "~":
                    s.hypo.append(o)
                elif sym == "&":
                    s.similar.append(o)
            # "(British informal) pork sausage": the parentheses say little;
            # after a colon come examples ("...: domestic cats; wildcats")
            g = re.sub(r'"[^"]*"|\s*\([^)]*\)', "", gloss.strip()).split(":")[0]
            s.gloss = wc.clean_gloss(g)
            out[s.off] = s
    return out


def read_index(path):
    """lemma -> [offsets], most frequent sense first."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):
                continue
            p = line.split()
            ptr_cnt, sense_cnt = int(p[3]), int(p[2])
            out[p[0]] = [int(o) for o in p[6 + ptr_cnt:6 + ptr_cnt + sense_cnt]]
    return out


def read_counts(path):
    """(lemma, 'n' or 'a', sense number) -> SemCor tag count."""
    out = {}
    pos = {"1": "n", "3": "a", "5": "a"}
    with open(path, encoding="utf-8") as f:
        for line in f:
            sk, num, cnt = line.split()
            lemma, _, rest = sk.partition("%")
            if rest[0] in pos:
                k = (lemma, pos[rest[0]], int(num))
                out[k] = out.get(k, 0) + int(cnt)
    return out


class WordNetPairs:
    def __init__(self):
        self.wn = wc.WordNet()          # noun index and plural exceptions
        self.nouns = read_data(os.path.join(wc.WN, "data.noun"))
        self.adjs = read_data(os.path.join(wc.WN, "data.adj"))
        self.adj_index = read_index(os.path.join(wc.WN, "index.adj"))
        self.counts = read_counts(os.path.join(wc.WN, "cntlist.rev"))
        self.plural = {}
        for pl, sgs in sorted(self.wn.exc.items()):
            for sg in sgs:
                self.plural.setdefault(sg, pl)
        top = self.wn.index["physical_entity"][0]
        memo = {top: True}
        # processes ("evolution", "respiration") are physical entities in
        # WordNet, but not things a picture shows
        for o in self.wn.index["physical_process"]:
            memo[o] = False

        def physical(off):
            if off not in memo:
                memo[off] = False       # cycles: none in WordNet, but safe
                s = self.nouns[off]
                memo[off] = any(physical(h) for h in s.hyper + s.inst)
            return memo[off]
        # concrete: reaches physical_entity (not through a process), or a
        # food; not an instance (proper names: "Paris", "Einstein")
        self.concrete = {o for o, s in self.nouns.items()
                         if not s.inst and (physical(o) or s.lexfile == FOOD_LEXFILE)}

    def rank(self, word, off, index):
        offs = index.get(word.lower(), [])
        return offs.index(off) + 1 if off in offs else 99

    def head(self, s, index):
        """(rank, lemma) of the word a synset is most likely meant by: the
        lowest sense rank, then the most SemCor tags ("furry" before
        "furred"), then WordNet's order."""
        pos = "n" if index is self.wn.index else "a"
        best = None
        for i, w in enumerate(s.words):
            if w != w.lower():
                continue        # proper nouns and abbreviations
            r = self.rank(w, s.off, index)
            k = (r, -self.counts.get((w, pos, r), 0), i)
            if best is None or k < best[0]:
                best = (k, w.replace("_", " "))
        return (best[0][0], best[1]) if best else (99, None)

    def tags(self, lemma, pos, off, index):
        return self.counts.get((lemma.replace(" ", "_"), pos,
                                self.rank(lemma.replace(" ", "_"), off, index)), 0)

    def plural_of(self, w):
        words = w.split(" ")
        last = words[-1]
        if last in self.plural:
            p = self.plural[last]
        elif re.search(r"(s|x|z|ch|sh)$", last):
            p = last + "es"
        elif re.search(r"[^aeiou]y$", last):
            p = last[:-1] + "ies"
        else:
            p = last + "s"
        return " ".join(words[:-1] + [p.replace("_", " ")])

    def phrase(self, w, s, salt):
        """The lemma in one of a few templates, chosen by a hash (fixed)."""
        h = zlib.crc32((w + "|" + salt).encode("utf-8"))
        if s.lexfile in MASS_LEXFILES:
            forms = [w, "some " + w, "a picture of " + w, w]
        else:
            art = wc.article(w)
            forms = [art, self.plural_of(w), "a picture of " + art, w,
                     "a photo of " + art]
        return forms[h % len(forms)]

    def abstract(self, s):
        return any(w.lower() in wc.ABSTRACT for w in s.words)

    def targets(self, s):
        """Hypernyms worth naming: the direct ones, or their parents where
        a direct one is too general."""
        out = []
        for h in s.hyper:
            hs = self.nouns[h]
            if not self.abstract(hs):
                out.append(hs)
            else:
                out += [self.nouns[g] for g in hs.hyper
                        if not self.abstract(self.nouns[g])]
        seen, res = set(), []
        for t in out:
            if t.off not in seen:
                seen.add(t.off)
                res.append(t)
        return res[:2]

    def noun_pairs(self, P):
        index = self.wn.index
        heads = {}
        for off in sorted(self.concrete):
            heads[off] = self.head(self.nouns[off], index)
        # per hypernym, the hyponyms whose definition may name it: the most
        # frequent first (SemCor count of the head lemma), then by offset
        kids = {}
        for off in sorted(self.concrete):
            r, w = heads[off]
            if w is None or r > 2 or not self.nouns[off].gloss:
                continue
            for t in self.targets(self.nouns[off]):
                kids.setdefault(t.off, []).append(
                    (-self.tags(w, "n", off, index), r, off))
        allowed = set()
        for t, lst in kids.items():
            allowed.update((o, t) for _, _, o in sorted(lst)[:HYPONYM_CAP])
        for off in sorted(self.concrete):
            s = self.nouns[off]
            r, w = heads[off]
            if w is None or r > 2 or not s.gloss:
                continue
            wt = RANK_WEIGHT[r]
            rows = []
            rows.append((w, s.gloss[0], wt, "gloss"))
            both = "; ".join(s.gloss[:2])
            if len(s.gloss) < 2 or len(s.gloss[1].split()) < 3 or len(both) > MAX_LEN:
                both = s.gloss[0]
            rows.append((self.phrase(w, s, "gloss"), both, wt, "gloss"))
            syn = [x.replace("_", " ") for x in s.words
                   if x == x.lower() and x.replace("_", " ") != w]
            for x in syn[:2]:
                if self.rank(x, off, index) <= 2:
                    rows.append((w, x, 0.7 * wt, "synonym"))
            for i, t in enumerate(self.targets(s)):
                tr, tw = self.head(t, index)
                if tw is None:
                    continue
                f = 1.0 if i == 0 else 0.5
                rows.append((self.phrase(w, s, "hyper"), wc.article(tw), f * wt, "hypernym"))
                if t.gloss and i == 0:
                    rows.append((w, t.gloss[0], 0.7 * wt, "hypernym_gloss"))
                if (off, t.off) in allowed:
                    rows.append((s.gloss[0], wc.article(tw), 0.7 * wt, "gloss_hypernym"))
            for a, b, x, kind in rows[:SYNSET_CAP]:
                P.add(a, b, x, "en", kind=kind)

    def adj_pairs(self, P):
        index = self.adj_index
        for off in sorted(self.adjs):
            s = self.adjs[off]
            r, w = self.head(s, index)
            if w is None or r > 2:
                continue
            # common: the lemma's first sense, or one SemCor has seen
            if r > 1 and not self.tags(w, "a", off, index):
                continue
            wt = RANK_WEIGHT[r]
            syn = [x.replace("_", " ") for x in s.words
                   if x == x.lower() and x.replace("_", " ") != w]
            for x in syn[:3]:
                P.add(w, x, 0.7 * wt, "en", kind="adj_synonym")
            if s.kind == "s":
                # a satellite and its cluster's head ("furry" ~ "hairy")
                for h in s.similar[:1]:
                    hs = [x.replace("_", " ") for x in self.adjs[h].words if x == x.lower()]
                    for x in hs[:2]:
                        P.add(w, x, 0.5 * wt, "en", kind="adj_similar")
            if s.gloss:
                P.add(w, s.gloss[0], wt, "en", kind="adj_gloss")

    # English lemmas for the dictionaries: nouns whose first sense is
    # concrete, adjectives (first sense); with that sense
    def dictionary_words(self):
        out = []
        for lemma in sorted(self.wn.index):
            if lemma != lemma.lower() or not re.fullmatch(r"[a-z][a-z_' -]*", lemma):
                continue
            off = self.wn.index[lemma][0]
            if off in self.concrete:
                out.append((lemma.replace("_", " "), "n", self.nouns[off]))
        for lemma in sorted(self.adj_index):
            if lemma != lemma.lower() or not re.fullmatch(r"[a-z][a-z_' -]*", lemma):
                continue
            s = self.adjs.get(self.adj_index[lemma][0])
            if s is not None:
                out.append((lemma.replace("_", " "), "a", s))
        return out

    def sense_words(self, s, pos):
        """Words that say which sense is meant (FreeDict's notes and
        synonyms): (the synset's and its hypernyms' lemmas, the content
        words of its definition)."""
        strong, weak = set(), set()
        for c in s.gloss[:2]:
            weak.update(x for x in wc.words_of(c) if x not in wc.STOP)
        for t in [s] + (self.targets(s) if pos == "n" else []):
            for x in t.words:
                strong.update(x.lower().split("_"))
        return strong, weak


# ---- FreeDict ------------------------------------------------------------------

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64val(s):
    v = 0
    for c in s:
        v = v * 64 + B64.index(c)
    return v


class DictEntries:
    """An eng-* FreeDict dictionary: every entry of a headword, parsed on
    demand into senses [(translations, English note)] and a part of speech."""
    def __init__(self, lang):
        self.lang = lang
        self.data = gzip.open(os.path.join(wc.DICTD, "freedict-eng-%s.dict.dz" % lang)).read()
        self.index = {}
        with open(os.path.join(wc.DICTD, "freedict-eng-%s.index" % lang), encoding="utf-8") as f:
            for line in f:
                p = line.rstrip("\n").split("\t")
                if len(p) < 3 or p[0].startswith("00"):
                    continue
                self.index.setdefault(p[0].lower(), []).append((b64val(p[1]), b64val(p[2])))

    def entries(self, word):
        """[(case differs, pos, senses, examples, notes, English words of
        its synonyms and see-also, length of the pronunciation)] of a
        lower-case headword."""
        out = []
        for o, n in self.index.get(word, []):
            text = self.data[o:o + n].decode("utf-8", "replace")
            lines = text.split("\n")
            hw = lines[0].split(" /")[0].split(" <")[0].strip()
            if hw.lower() != word:
                continue        # "computed axial tomography (CAT)" under "cat"
            e = self.parse(lines)
            if e:
                # fra, spa, rus list "apple sauce" under "apple /ˈapəl/":
                # the shortest pronunciation is the word itself
                ipa = re.search(r"/[^/]*/", lines[0])
                out.append((hw != word,) + e + (len(ipa.group(0)) if ipa else 99,))
        return out

    def parse(self, lines):
        """(pos, senses, examples, notes, related); pos 'n', 'a', 'v', 'x'
        (another) or '' (not said); senses [(translations, English note)]."""
        head = lines[0]
        pos = "n" if "<n>" in head else "a" if "<adj>" in head else \
              "v" if "<v" in head else "x" if re.search(r"<(pn|adv|prep|pron|int|conj|abbr)", head) else ""
        senses, examples, notes, related = [], 0, 0, set()
        body = [x for x in lines[1:] if x.strip()]
        if self.lang == "deu" and body:
            # the first line translates; then examples, notes, synonyms
            for x in body[1:]:
                x = x.strip()
                examples += x.startswith('"')
                notes += x.startswith("Note:")
                if x.startswith(("Synonym", "see:")):
                    for r in re.findall(r"\{([^}]*)\}", x):
                        related.update(wc.words_of(r))
            body = [re.sub(r"^(\s*\[[^\]]*\])+", "", body[0])]   # [Br.] [coll.]: the English
        for line in body:
            s = line.strip()
            if self.lang == "jpn":
                s = re.sub(r"\s\d+\.$", "", re.sub(r"^\d+\.\s*", "", s))
                if re.fullmatch(r"[\x00-\x7f]*", s):
                    if senses and senses[-1][1] is None:
                        senses[-1] = (senses[-1][0], s)
                    continue
            else:
                s = re.sub(r"^\d+\.\s*", "", s)
            trs = []
            for item in re.split(r"[,;、](?![^<]*>)", s):
                tags = set(re.findall(r"\[([^\]]*)\]", item))
                if self.lang == "deu":
                    if "<adj>" in item:
                        pos = pos or "a"
                    elif re.search(r"<(masc|fem|neut|pl)", item):
                        pos = pos or "n"
                    elif re.search(r"<v\b", item):
                        pos = pos or "v"
                    if tags & DEU_SKIP_TAGS:
                        continue
                t = re.sub(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)|\{[^}]*\}", "", item)
                t = clean(t).strip(" .")
                if t and len(t) < 40 and t not in trs:
                    trs.append(t)
            if trs:
                senses.append((trs, None))
        if not senses:
            return None
        return pos, senses, examples, notes, related

    def best(self, word, pos, sense_words):
        """Translations of the entry and sense that fit the WordNet sense
        best: ([(translation, weight)], confident) or None.  Confident: the
        sense is the only one, or its notes (jpn) or synonyms (deu) share a
        word with the WordNet sense."""
        es = [e for e in self.entries(word) if e[1] in (pos, "")]
        if not es:
            return None
        own = set(wc.words_of(word))
        strong, weak = sense_words[0] - own, sense_words[1] - own

        def fit(words):     # the hypernym's or a synonym's name counts double
            return 2 * len(words & strong) + len(words & weak)
        if self.lang == "deu":
            fits = [fit(e[5]) for e in es]
            # else the main sense: it has the examples, technical ones notes
            i = max(range(len(es)), key=lambda i: (not es[i][0], es[i][1] == pos, fits[i] > 0,
                                                   es[i][3] - 3 * es[i][4], fits[i],
                                                   len(es[i][2][0][0]), -i))
            trs = es[i][2][0][0]
            return [(t, f) for t, f in zip(trs, (1.0, 0.5))], \
                fits[i] > 0 or (len(es) == 1 and not es[i][4])
        i = min(range(len(es)), key=lambda i: (es[i][0], es[i][1] != pos, es[i][6],
                                              len(es[i][2]), i))
        senses = es[i][2]
        if self.lang == "jpn" and len(senses) > 1:
            score = [fit(set(wc.words_of(note or ""))) for _, note in senses]
            j = max(range(len(senses)), key=lambda j: (score[j], -j))
            return [(t, f) for t, f in zip(senses[j][0], (1.0, 0.5))], score[j] > 0
        if len(senses) == 1:
            note = senses[0][1]     # jpn: a note must not say another sense
            return [(t, f) for t, f in zip(senses[0][0], (1.0, 0.5))], \
                len(es) == 1 and (not note or fit(set(wc.words_of(note))) > 0)
        # fra, spa, rus: numbered senses without notes: the first word of
        # each of the first three, sharing the weight
        n = min(3, len(senses))
        return [(s[0][0], 1.0 / n) for s in senses[:n]], False


def freedict_pairs(P, wnp, stats):
    lang_of = {"deu": "de", "fra": "fr", "spa": "es", "rus": "ru", "jpn": "ja"}
    words = wnp.dictionary_words()
    for lang in wc.LANGS:
        if not os.path.exists(os.path.join(wc.DICTD, "freedict-eng-%s.index" % lang)):
            continue
        d = DictEntries(lang)
        iso = lang_of[lang]
        n_words = 0
        gloss_rows = {}
        for w, pos, s in words:
            if w not in d.index:
                continue
            got = d.best(w, pos, wnp.sense_words(s, pos))
            if not got:
                continue
            trs, confident = got
            n_words += 1
            f = 1.0 if confident else 0.5
            for t, x in trs:
                P.add(w, t, f * x, iso, kind="noun" if pos == "n" else "adjective")
            if pos == "n" and confident and s.gloss and len(s.gloss[0].split()) >= 3:
                # the definition names the translated word; two per synset
                k = (s.off, iso)
                if gloss_rows.get(k, 0) < 2:
                    gloss_rows[k] = gloss_rows.get(k, 0) + 1
                    P.add(s.gloss[0], trs[0][0], 0.7, iso, kind="gloss")
        stats["dictionary_words"][iso] = n_words


# ---- Unihan (Chinese) ------------------------------------------------------------

def unihan_pairs(P, wnp, stats):
    """Common characters (seen 30 times or more in the Xiandai Hanyu Pinlu
    Cidian, kHanyuPinlu) whose Unihan definition begins with a WordNet noun
    of a concrete first sense or an adjective: that word <-> the character.
    A character with a simplified variant is traditional (zh_Hant)."""
    defs, common, traditional = {}, set(), set()
    with bz2.open(UNIHAN, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.startswith("U+"):
                continue
            cp, field, value = line.rstrip("\n").split("\t", 2)
            if field == "kDefinition":
                defs[cp] = value
            elif field == "kHanyuPinlu":
                n = sum(int(x) for x in re.findall(r"\((\d+)\)", value))
                if n >= UNIHAN_MIN_COUNT:
                    common.add(cp)
    with bz2.open(UNIHAN_VARIANTS, "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith("U+"):
                cp, field, value = line.rstrip("\n").split("\t", 2)
                if field == "kSimplifiedVariant" and cp not in value.split():
                    traditional.add(cp)
    words = wnp.dictionary_words()
    known = {w for w, _, _ in words}
    n = 0
    for cp in sorted(common, key=lambda c: int(c[2:], 16)):
        if cp not in defs:
            continue
        ch = chr(int(cp[2:], 16))
        items = []
        for part in re.split(r"[;,]", re.sub(r"\([^)]*\)", "", defs[cp])):
            part = clean(part).lower()
            if part.startswith("to "):
                continue        # verbs
            part = re.sub(r"^(a|an|the) ", "", part)
            if part and part not in items:
                items.append(part)
        # the first sense only: later ones drift ("right; west" for 右)
        if items and len(items[0]) > 2 and items[0] in known:
            P.add(items[0], ch, 0.5, "zh_Hant" if cp in traditional else "zh",
                  kind="character")
            n += 1
    stats["unihan_characters"] = n


# ---- CLDR emoji names ---------------------------------------------------------

def cldr_pairs(P, data, stats):
    names = {}      # English name -> (English keywords, {locale: caption})
    for s in EMOJI_SETS:
        for r in read_jsonl(os.path.join(data, s, "train.jsonl")):
            name = r["meta"]["name"]
            text = r["text"]
            kws = text[len(name) + 2:].split(", ") if text.startswith(name + ". ") else []
            en_kws, texts = names.setdefault(name, (kws, {}))
            for loc, t in r.get("texts", {}).items():
                texts.setdefault(loc, t)
    stats["emoji_names"] = len(names)
    for name in sorted(names):
        en_kws, texts = names[name]
        skin = "skin tone" in name
        w = SKIN_WEIGHT if skin else FLAG_WEIGHT if name.startswith("flag") else 1.0
        for loc in sorted(texts):
            if base_lang(loc) == "en":
                continue
            lname, lkws = split_caption(texts[loc])
            P.add(name, lname, w, loc, kind="name")
            if lkws and not skin and not name.startswith("flag:"):
                kw = ", ".join(lkws)
                while len(kw) > MAX_LEN and ", " in kw:
                    kw = kw.rsplit(", ", 1)[0]
                P.add(kw, lname, w, loc, loc, kind="keywords")
        if not skin:
            for k in en_kws:
                P.add(k, name, 0.5 * w, "en", kind="en_keyword")


# ---- Tux Paint, art4apps, qABCs -------------------------------------------

def tuxpaint_pairs(P, data):
    for r in read_jsonl(os.path.join(data, "tuxpaint", "train.jsonl")):
        for loc in sorted(r.get("texts", {})):
            if base_lang(loc) != "en":
                P.add(r["text"], r["texts"][loc], 1.0, loc, kind="tuxpaint")
    for s in WORD_SETS:
        for r in read_jsonl(os.path.join(data, s, "train.jsonl")):
            for loc in sorted(r.get("texts", {})):
                if base_lang(loc) != "en":
                    P.add(r["meta"]["name"], r["texts"][loc], 1.0, loc, kind=s)


# ---- main -----------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default="data", help="where the catalogs are")
    ap.add_argument("--queries", default=os.path.join(HERE, "queries.json"))
    a = ap.parse_args()
    held, queries, bstats = blocked_texts(a.data, a.queries)
    stats = {"held_out": bstats, "dictionary_words": {}, "sources": {}}
    pairs = {s: Pairs(s, held, queries) for s in SOURCES}
    wnp = WordNetPairs()
    stats["wordnet_concrete_synsets"] = len(wnp.concrete)
    wnp.noun_pairs(pairs["wordnet"])
    wnp.adj_pairs(pairs["wordnet"])
    freedict_pairs(pairs["freedict"], wnp, stats)
    unihan_pairs(pairs["unihan"], wnp, stats)
    cldr_pairs(pairs["cldr"], a.data, stats)
    tuxpaint_pairs(pairs["tuxpaint"], a.data)

    os.makedirs(a.out, exist_ok=True)
    langs_all = {}
    with open(os.path.join(a.out, "train.jsonl"), "w", encoding="utf-8") as train:
        for s in SOURCES:
            P = pairs[s]
            rows = P.sorted_rows()
            langs, locs = {}, {}
            with open(os.path.join(a.out, s + ".jsonl"), "w", encoding="utf-8") as f:
                for x, y, w, loc in rows:
                    line = dump(x, y, w) + "\n"
                    f.write(line)
                    train.write(line)
                    lang = base_lang(loc)
                    langs[lang] = langs.get(lang, 0) + 1
                    locs[loc] = locs.get(loc, 0) + 1
                    langs_all[lang] = langs_all.get(lang, 0) + 1
            n = len(rows)
            stats["sources"][s] = {
                "file": s + ".jsonl", "rows": n,
                "weight_sum": round(sum(r[2] for r in rows), 1),
                "languages": dict(sorted(langs.items(), key=lambda kv: (-kv[1], kv[0]))),
                "locales": len(locs), "kinds": P.kinds, "dropped": P.dropped,
                "examples": [{"a": r[0], "b": r[1], "weight": r[2]}
                             for r in (rows[n // 4], rows[n // 2], rows[3 * n // 4])] if n else []}
            print("text-pairs: %s.jsonl %d rows, %d languages" % (s, n, len(langs)),
                  file=sys.stderr)
    stats["rows"] = sum(v["rows"] for v in stats["sources"].values())
    stats["languages"] = dict(sorted(langs_all.items(), key=lambda kv: (-kv[1], kv[0])))
    with open(os.path.join(a.out, "test.jsonl"), "w"):
        pass    # the held-out pairs are the catalogs' test splits
    with open(os.path.join(a.out, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("text-pairs: %d rows in %s" % (stats["rows"], a.out), file=sys.stderr)


if __name__ == "__main__":
    main()
