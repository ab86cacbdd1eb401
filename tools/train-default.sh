#!/bin/sh
# The recipe of the default model (README.md, "The default model"):
# continue today's default (INIT, models/default) on every train split of
# `make data`, the synthetic colour x shape pictures included, with a
# 64-token text context for non-Latin captions, and with the text pairs of
# data/textpairs (WordNet definitions, FreeDict and Unihan translations,
# CLDR names in 133 locales, Tux Paint sentences in 76), 4 x 64 of them per
# step on the text tower alone, mixed about 35% WordNet, 15% FreeDict, 3%
# Unihan, 25% CLDR and 22% Tux Paint by the --weight after each file.
#
#   make data
#   git archive <the commit before the model> models/default | tar -x -C /tmp
#   INIT=/tmp/models/default tools/train-default.sh [OUT]   (OUT: data/runs/v6)
#
# About 65 minutes on the 2-core machine with nothing else running;
# Ctrl-C checkpoints, and the same command with --resume appended
# continues bit for bit.  Measure the result with tools/eval-model.py
# --model OUT (and --model models/default to compare).
#
# Held-out sets for --val-catalog or tools/eval-model.py:
# data/{fluent,emojione,art4apps,qabcs}/test.jsonl, data/fluent/style.jsonl
# (Fluent's high-contrast style, never trained on).
set -eu
BUILD=${BUILD:-build}
INIT=${INIT:-models/default}
OUT=${1:-data/runs/v6}
[ $# -gt 0 ] && shift
exec "$BUILD/vlmdb" train --init "$INIT" --context 64 \
  --catalog data/openclipart/train.jsonl --catalog data/emoji/train.jsonl \
  --catalog data/emoji-styles/train.jsonl --weight 0.6 \
  --catalog data/tuxpaint/train.jsonl --weight 3 \
  --catalog data/wordnet/train.jsonl \
  --catalog data/shapes/train.jsonl --weight 2 \
  --catalog data/fluent/train.jsonl --weight 0.6 \
  --catalog data/emojione/train.jsonl --weight 0.6 \
  --catalog data/art4apps/train.jsonl --weight 2 \
  --catalog data/qabcs/train.jsonl --weight 2 \
  --text-pairs data/textpairs/wordnet.jsonl \
  --text-pairs data/textpairs/freedict.jsonl \
  --text-pairs data/textpairs/unihan.jsonl --weight 22 \
  --text-pairs data/textpairs/cldr.jsonl --weight 0.37 \
  --text-pairs data/textpairs/tuxpaint.jsonl --weight 2.1 \
  --val-catalog data/openclipart/test.jsonl --val-catalog data/tuxpaint/test.jsonl \
  --text-rounds 4 \
  --out "$OUT" --max-steps 3000 --batch 128 --lr 2e-4 --warmup 100 \
  --alpha-white --threads 2 --seed 1 --checkpoint-every 200 "$@"
