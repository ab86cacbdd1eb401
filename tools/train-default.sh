#!/bin/sh
# The recipe of the default model (README.md, "The default model"):
# continue the model trained on openclipart alone (INIT; models/default at
# commit bae8a62, see models/default/training.json) on every train split of
# `make data`, the synthetic colour x shape pictures included, with a
# 64-token text context for non-Latin captions.
#
#   make data
#   git archive bae8a62 models/default | tar -x -C /tmp
#   INIT=/tmp/models/default tools/train-default.sh [OUT]   (OUT: data/runs/v4)
#
# (INIT defaults to models/default, which continues today's default.)  64
# minutes on the 2-core machine, shared with builds; Ctrl-C checkpoints, and
# the same command with --resume appended continues bit for bit.  Measure the result
# with tools/eval-model.py --model OUT (and --model models/default to
# compare).
#
# Available but not in this recipe (tools/DATA.md; the mix is still open):
# `make data` also builds these train splits, which can be appended as
# extra arguments, e.g. `tools/train-default.sh OUT --catalog
# data/art4apps/train.jsonl --weight 2`:
#   --catalog data/fluent/train.jsonl     Fluent flat + modern, 5,352 rows
#   --catalog data/emojione/train.jsonl   EmojiOne, 1,602 rows
#   --catalog data/art4apps/train.jsonl   art4apps drawings, 517 rows, 13 languages
#   --catalog data/qabcs/train.jsonl      qABCs pictures, 290 rows, 17 languages
# and held-out sets for --val-catalog or tools/eval-model.py:
# data/{fluent,emojione,art4apps,qabcs}/test.jsonl, data/fluent/style.jsonl
# (Fluent's high-contrast style, never trained on).
set -eu
BUILD=${BUILD:-build}
INIT=${INIT:-models/default}
OUT=${1:-data/runs/v4}
[ $# -gt 0 ] && shift
exec "$BUILD/vlmdb" train --init "$INIT" --context 64 \
  --catalog data/openclipart/train.jsonl --catalog data/emoji/train.jsonl \
  --catalog data/emoji-styles/train.jsonl --weight 0.6 \
  --catalog data/tuxpaint/train.jsonl --weight 3 \
  --catalog data/wordnet/train.jsonl \
  --catalog data/shapes/train.jsonl --weight 2 \
  --val-catalog data/openclipart/test.jsonl --val-catalog data/tuxpaint/test.jsonl \
  --out "$OUT" --max-steps 2500 --batch 128 --lr 2e-4 --warmup 100 \
  --alpha-white --threads 2 --seed 1 --checkpoint-every 200 "$@"
