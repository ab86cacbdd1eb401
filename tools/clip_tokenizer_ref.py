#!/usr/bin/env python3
"""The reference CLIP tokenizer (OpenAI CLIP's simple_tokenizer.py logic,
with ftfy.fix_text taken as the identity), used to write the expected ids
of tests/fixtures/tokenizer/cases.json.  Needs Debian's python3-regex.
    python3 tools/clip_tokenizer_ref.py BPE_GZ CASES_IN.json > cases.json
CASES_IN.json is a JSON list of texts (strings)."""
import gzip
import html
import json
import sys

import regex as re


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def get_pairs(word):
    return set(zip(word[:-1], word[1:]))


class Tokenizer:
    def __init__(self, bpe_path):
        self.byte_encoder = bytes_to_unicode()
        merges = gzip.open(bpe_path).read().decode("utf-8").split('\n')
        merges = merges[1:49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + '</w>' for v in vocab]
        for m in merges:
            vocab.append(''.join(m))
        vocab.extend(['<|startoftext|>', '<|endoftext|>'])
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {'<|startoftext|>': '<|startoftext|>', '<|endoftext|>': '<|endoftext|>'}
        self.pat = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", re.IGNORECASE)

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + '</w>',)
        pairs = get_pairs(word)
        if not pairs:
            return token + '</w>'
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float('inf')))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        return ' '.join(word)

    def encode(self, text):
        text = html.unescape(html.unescape(text)).strip()  # ftfy: identity
        text = re.sub(r'\s+', ' ', text).strip().lower()
        out = []
        for token in re.findall(self.pat, text):
            token = ''.join(self.byte_encoder[b] for b in token.encode('utf-8'))
            out.extend(self.encoder[t] for t in self.bpe(token).split(' '))
        return out

    def tokenize(self, text, context_length=77):
        tokens = [self.encoder['<|startoftext|>']] + self.encode(text) + [self.encoder['<|endoftext|>']]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = self.encoder['<|endoftext|>']
        return tokens


if __name__ == '__main__':
    tok = Tokenizer(sys.argv[1])
    texts = json.load(open(sys.argv[2]))
    json.dump([{"text": t, "ids": tok.tokenize(t)} for t in texts], sys.stdout,
              ensure_ascii=True, indent=0)
    sys.stdout.write("\n")
