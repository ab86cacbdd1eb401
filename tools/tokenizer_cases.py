#!/usr/bin/python3
"""Reference ids for tests/test_tokenizers.c from the real Hugging Face
slow tokenizers (transformers v4.44.2: SiglipTokenizer, GemmaTokenizer,
BertTokenizer), run unmodified over the tokenizer files of
tests/fixtures/{siglip-tiny,gemma-tiny,chinese-clip-tiny} with
tokenizer_config.json variants, for curated texts and seeded random mixes
of the characters the rules treat specially (whitespace and control
characters, punctuation, special-token strings in both cases, U+2581,
case-mapping oddities, full-width forms, CJK, kana, Hangul, accents,
emoji, over-long words).

Usage: HF_SRC=DIR tools/tokenizer_cases.py > tests/fixtures/tokenizers/cases.json
DIR holds `transformers/` (git archive of tag v4.44.2, src/transformers)
and `huggingface_hub/` (tag v0.24.6, src/huggingface_hub).  Needs Debian's
python3-sentencepiece python3-protobuf python3-numpy python3-regex
python3-filelock python3-tqdm python3-requests python3-packaging
python3-yaml python3-fsspec.  Only slow tokenizers are used, so the Rust
`tokenizers` and `safetensors` packages are replaced by inert stubs made
here (import-time names only; transformers' fallback AddedToken gets
`tokenizers.AddedToken`'s hash/equality by content and __setstate__, as
in the fixtures' README)."""
import json, os, random, shutil, sys, tempfile, warnings

warnings.filterwarnings("ignore")
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
src = os.environ["HF_SRC"]
stubs = tempfile.mkdtemp()
os.makedirs(stubs + "/tokenizers")
open(stubs + "/tokenizers/__init__.py", "w").write(
    "class _Inert:\n    def __init__(self, *a, **k): pass\nAddedToken = Tokenizer = Regex = _Inert\n")
for m in ("decoders", "normalizers", "pre_tokenizers", "processors", "models"):
    open(f"{stubs}/tokenizers/{m}.py", "w").write(
        "def __getattr__(n):\n    class _X:\n        def __init__(self, *a, **k): pass\n    return _X\n")
os.makedirs(stubs + "/safetensors/torch")
open(stubs + "/safetensors/__init__.py", "w").close()
open(stubs + "/safetensors/torch/__init__.py", "w").close()
for name, ver in (("transformers", "4.44.2"), ("huggingface_hub", "0.24.6"), ("safetensors", "0.4.5")):
    os.makedirs(f"{stubs}/{name}-{ver}.dist-info")
    open(f"{stubs}/{name}-{ver}.dist-info/METADATA", "w").write(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n")
sys.path[:0] = [stubs, src]

import transformers  # noqa: E402
import transformers.tokenization_utils_base as tub  # noqa: E402
from transformers.utils import logging as tlog  # noqa: E402

assert transformers.__version__ == "4.44.2", transformers.__version__
tlog.set_verbosity_error()
AT = tub.AddedToken
AT.__hash__ = lambda self: hash(self.content)
AT.__eq__ = lambda self, other: isinstance(other, AT) and self.content == other.content
AT.__setstate__ = lambda self, d: [setattr(self, k, v) for k, v in d.items()] and None
from transformers import BertTokenizer, GemmaTokenizer, SiglipTokenizer  # noqa: E402

POOL = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3 + [" "] * 30 + \
    list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + \
    ["\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u2029", "\u3000", "\u200b",
     "\u200e", "\xad", "\ufffd", "\x7f", "\x01", "\ue000", "\U000e0001", "\u0378",
     "\u2581", "\u2581\u2581", "</s>", "<unk>", "</S>", "<UNK>", "<pad>", "<s>", "[CLS]", "[SEP]", "[UNK]", "[PAD]",
     "[MASK]", "[cls]", "[mask]", "<bos>", "<eos>", "<mask>", "<2mass>", "<start_of_turn>", "<end_of_turn>", "<0x41>",
     "\u0130", "\u03a3", "\u03c3", "\u03c2", "ΣΑΣ", "ß", "ẞ", "ﬁ", "Ａ", "ｂ", "１", "！", "，", "。", "《", "》", "（", "）",
     "、", "中", "文", "猫", "狗", "汉字", "日本語", "テキスト", "ひらがな", "한국어", "é", "e\u0301", "ñ", "Ö", "Å", "ø",
     "café", "naïve", "Ǆ", "ǅ", "ǆ", "ﬀ", "😀", "👍🏽", "🇩🇪", "𠀀", "\U0002a700", "\uf900", "\U0002f800", "Привет", "мир",
     "Ελληνικά", "שלום", "مرحبا", "ℌ", "Ⅻ", "½", "²", "…", "—", "–", "“", "”", "‘", "’", "•", "€", "©",
     "the", "photo", "of", "a", "cat", "dog", "hello", "world", "unaffable", "x" * 105, "y" * 99, "z" * 100,
     "foo-bar", "Foo-Bar", "<extra>", "<EXTRA>", "extra",
     # assigned in Unicode 15.0 (unassigned, so dropped by BERT, in the
     # reference's Python 3.11): CJK Extension H, Nag Mundari, Kawi
     "\U00031350", "\U0001e4d0", "\U00011f00"]
CURATED = [
    "", " ", "   ", "!!!", "...", "?!", "\u2581", "\u2581\u2581 \u2581", "</s>", "</S>", "<unk>", "</s></s>", " </s> ",
    "HELLO </S>", "<unk>hello", "\u2581</s>", "a photo of a cat", "A Photo Of A CAT.", "it's 3.14 a_b", "İstanbul",
    "ΣΑΣ ΟΔΟΣ", "ǅemal", "ﬁne ﬂour", "ＦＵＬＬ　ｗｉｄｔｈ！", "１２３", "猫が好きです。", "我爱北京天安门。", "한국어 텍스트",
    "テキスト", "café naïve résumé", "Crème Brûlée", "e\u0301", "\u00c5ngstr\u00f6m", "[CLS] hello [SEP]", "[cls] [Mask]",
    "[MASK]x[UNK]", "a\u200bb\u00adc\u200ed", "tab\there\nnew\rline\u2028ls\u2029ps", "\x0b\x0c\x1c\x1d\x1e\x1f\x85",
    "x" * 100, "x" * 101, "unaffable " * 3, "😀 👍🏽 🇩🇪", "𠀀𪜀\U0002f800", "foo-bar Foo-Bar", "<extra>x <EXTRA> extra",
    "<start_of_turn>user\nhi<end_of_turn>", "<bos><eos><pad>", "<2mass> <mask>", "1234567890", "  leading and trailing  ",
    "a " * 80, "word" * 40, "。" * 70, "中文" * 40, "猫\U00031350\U000313a0狗 a\U0001e4d0b \U00011f00\U00011f41",
]


def texts(seed, n):
    rnd = random.Random(seed)
    out = list(CURATED)
    for _ in range(n):
        k = rnd.choice([0, 1, 2, 3, 5, 8, 13, 30, 60, 120])
        out.append("".join(rnd.choice(POOL) for _ in range(k)))
    return out


VARIANTS = [
    # (name, class, fixture, tokenizer_config.json changes, max_length)
    ("siglip", SiglipTokenizer, "siglip-tiny", {}, 64),
    ("siglip-trunc8", SiglipTokenizer, "siglip-tiny", {}, 8),
    ("siglip-cased", SiglipTokenizer, "siglip-tiny", {"do_lower_case": False}, 64),
    ("siglip-left", SiglipTokenizer, "siglip-tiny", {"truncation_side": "left"}, 12),
    ("siglip-added", SiglipTokenizer, "siglip-tiny", {
        "additional_special_tokens": ["<extra>"],
        "added_tokens_decoder+": {"4000": {"content": "extra", "lstrip": False, "normalized": True, "rstrip": False,
                                           "single_word": True, "special": False}}}, 64),
    ("bert", BertTokenizer, "chinese-clip-tiny", {}, 52),
    ("bert-trunc6", BertTokenizer, "chinese-clip-tiny", {}, 6),
    ("bert-cased", BertTokenizer, "chinese-clip-tiny", {"do_lower_case": False}, 52),
    ("bert-cased-strip", BertTokenizer, "chinese-clip-tiny", {"do_lower_case": False, "strip_accents": True}, 52),
    ("bert-nostrip", BertTokenizer, "chinese-clip-tiny", {"strip_accents": False}, 52),
    ("bert-nocjk", BertTokenizer, "chinese-clip-tiny", {"tokenize_chinese_chars": False}, 52),
    ("bert-neversplit", BertTokenizer, "chinese-clip-tiny", {"never_split": ["foo-bar", "Foo-Bar"]}, 52),
    ("bert-nobasic", BertTokenizer, "chinese-clip-tiny", {"do_basic_tokenize": False}, 52),
    ("bert-left", BertTokenizer, "chinese-clip-tiny", {"truncation_side": "left"}, 10),
    ("bert-split-special", BertTokenizer, "chinese-clip-tiny", {"split_special_tokens": True}, 52),
    ("gemma", GemmaTokenizer, "gemma-tiny", {}, 64),
    ("gemma-siglip2", GemmaTokenizer, "gemma-tiny", {"add_bos_token": False, "add_eos_token": True,
                                                     "do_lower_case": True, "padding_side": "right"}, 64),
    ("gemma-trunc8", GemmaTokenizer, "gemma-tiny", {"add_eos_token": True}, 8),
]


def many_added(first_id, seed):
    """An added_tokens_decoder of 227 tokens with seeded random flags:
    prefixes of each other, ones that hold spaces or U+2581, and every mix
    of lstrip / rstrip / single_word / normalized / special."""
    rnd = random.Random(seed)
    words = ["<unused%d>" % i for i in range(200)] + ["<h%d>" % i for i in range(1, 7)] + \
        ["</h%d>" % i for i in range(1, 7)] + ["<b>", "<br>", "<table>", "ab", "abc", "bcd", "\u2581\u2581", "  ",
                                              "x y", "Ab", "AB", "d\u00e9j\u00e0", "\u4e2d\u6587", "[x]", "<T>"]
    dec = {}
    for i, w in enumerate(words):
        dec[str(first_id + i)] = {"content": w, "lstrip": rnd.random() < 0.3, "rstrip": rnd.random() < 0.3,
                                  "single_word": rnd.random() < 0.2, "normalized": rnd.random() < 0.5,
                                  "special": rnd.random() < 0.5}
    return dec, words


MANY = {fx: many_added(first, 77 + i) for i, (fx, first) in
        enumerate((("siglip-tiny", 4000), ("chinese-clip-tiny", 5361), ("gemma-tiny", 1000)))}


def many_texts(seed, words, n):
    rnd = random.Random(seed)
    pool = words + list("abcdxy <>/\t\n") + ["<unused1", "<unused12", "unused3>", "<h", "h1>", "\u4e2d", "\u00e9",
                                               "AB", "<UNUSED7>", "X Y", "D\u00c9J\u00c0"]
    return ["".join(rnd.choice(pool) for _ in range(rnd.choice([1, 2, 5, 10, 30]))) for _ in range(n)]


VARIANTS += [
    ("siglip-many-added", SiglipTokenizer, "siglip-tiny", {"added_tokens_decoder+": MANY["siglip-tiny"][0]}, 64),
    ("bert-many-added", BertTokenizer, "chinese-clip-tiny",
     {"added_tokens_decoder+": MANY["chinese-clip-tiny"][0]}, 52),
    ("gemma-many-added", GemmaTokenizer, "gemma-tiny", {"added_tokens_decoder+": MANY["gemma-tiny"][0]}, 64),
]

FILES = ("spiece.model", "tokenizer.model", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
cases = []
for i, (name, cls, fixture, change, L) in enumerate(VARIANTS):
    d = tempfile.mkdtemp()
    for f in FILES:
        p = os.path.join(root, "tests/fixtures", fixture, f)
        if os.path.exists(p):
            shutil.copy(p, d)
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
    for k, v in change.items():
        if k.endswith("+"):
            cfg[k[:-1]].update(v)
        else:
            cfg[k] = v
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"), ensure_ascii=False)
    tok = cls.from_pretrained(d)
    entry = {"name": name, "fixture": fixture, "config": change, "max_length": L, "texts": []}
    sample = many_texts(2000 + i, MANY[fixture][1], 300) if name.endswith("-many-added") else texts(1000 + i, 150)
    for t in sample:
        ids = tok(t, truncation=True, max_length=L)["input_ids"]
        if cls is GemmaTokenizer and "<" not in t and not name.endswith("-many-added"):
            # no added token in the text: GemmaTokenizer is plain SentencePiece
            body = tok.sp_model.encode(t)[:L - tok.add_bos_token - tok.add_eos_token]
            assert ids == [2] * tok.add_bos_token + body + [1] * tok.add_eos_token, (t, ids)
        entry["texts"].append({"text": t, "ids": ids})
    cases.append(entry)
    shutil.rmtree(d)
shutil.rmtree(stubs)
# one text per line
w = sys.stdout.write
w('{"generator": "tools/tokenizer_cases.py", "transformers_version": "%s", "variants": [\n' % transformers.__version__)
for i, v in enumerate(cases):
    head = {k: v[k] for k in ("name", "fixture", "config", "max_length")}
    w(json.dumps(head, ensure_ascii=False)[:-1] + ', "texts": [\n')
    w(",\n".join(json.dumps(t, ensure_ascii=False) for t in v["texts"]))
    w("\n]}" + ("," if i + 1 < len(cases) else "") + "\n")
w("]}\n")
