#!/bin/sh
# Build tests/fixtures/gemma-tiny/tokenizer.model: a small SentencePiece
# model trained like Gemma's (BPE, byte fallback, digits split, no dummy
# prefix, whitespace kept as it is, identity normalization, <pad>=0 <eos>=1
# <bos>=2 <unk>=3, user-defined <mask> <2mass> <start_of_turn>
# <end_of_turn>), with Debian's spm_train (package sentencepiece), single
# threaded so the file is reproducible.  The corpus is Debian's GPL-3 and
# Apache-2.0 texts plus the multilingual texts of the siglip-tiny and
# chinese-clip-tiny references.  Usage: tools/make-gemma-tiny.sh
set -eu
out=tests/fixtures/gemma-tiny
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 > "$tmp/corpus.txt"
python3 -c '
import json, sys
for f in sys.argv[1:]:
    for t in json.load(open(f))["texts"]:
        print(t["text"].replace("\0", ""))
' tests/fixtures/siglip-tiny/reference.json tests/fixtures/chinese-clip-tiny/reference.json >> "$tmp/corpus.txt"
# relative names: the trainer records them in the model
(cd "$tmp" && spm_train --input=corpus.txt --model_prefix=tokenizer --vocab_size=1000 \
  --model_type=bpe --byte_fallback=true --split_digits=true --add_dummy_prefix=false \
  --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true \
  --normalization_rule_name=identity --character_coverage=1.0 --num_threads=1 \
  --pad_id=0 --eos_id=1 --bos_id=2 --unk_id=3 \
  --pad_piece='<pad>' --eos_piece='<eos>' --bos_piece='<bos>' --unk_piece='<unk>' \
  --user_defined_symbols='<mask>,<2mass>,<start_of_turn>,<end_of_turn>' >/dev/null 2>&1)
cp "$tmp/tokenizer.model" "$out/tokenizer.model"
echo "wrote $out/tokenizer.model ($(wc -c < "$out/tokenizer.model") bytes)"
