#!/bin/sh
# The recipe of models/candidate (models/candidate/README.md): continue
# the text-pair run (tools/train-default.sh's result, models/candidate at
# commit a00cb29) for 1,500 steps with a fifth of every drawing and photo
# catalog's draws shown as silhouettes (--silhouette 0.2: gray, negated,
# blurred to 28 x 28, train/README.md), not the synthetic shapes, whose
# captions are about colour.
#
#   make data
#   git archive a00cb29 models/candidate | tar -x -C /tmp
#   INIT=/tmp/models/candidate tools/train-candidate.sh [OUT]   (OUT: data/runs/v7)
#
# About 35 minutes on the 2-core machine with nothing else running (53
# minutes shared with builds and tests).  Ctrl-C checkpoints; the same
# command with --resume appended continues bit for bit.
set -eu
BUILD=${BUILD:-build}
INIT=${INIT:-models/candidate}
OUT=${1:-data/runs/v7}
[ $# -gt 0 ] && shift
S=0.2
exec "$BUILD/vlmdb" train --init "$INIT" --context 64 \
  --catalog data/openclipart/train.jsonl --silhouette $S \
  --catalog data/emoji/train.jsonl --silhouette $S \
  --catalog data/emoji-styles/train.jsonl --weight 0.6 --silhouette $S \
  --catalog data/tuxpaint/train.jsonl --weight 3 --silhouette $S \
  --catalog data/wordnet/train.jsonl --silhouette $S \
  --catalog data/shapes/train.jsonl --weight 2 \
  --catalog data/fluent/train.jsonl --weight 0.6 --silhouette $S \
  --catalog data/emojione/train.jsonl --weight 0.6 --silhouette $S \
  --catalog data/art4apps/train.jsonl --weight 2 --silhouette $S \
  --catalog data/qabcs/train.jsonl --weight 2 --silhouette $S \
  --text-pairs data/textpairs/wordnet.jsonl \
  --text-pairs data/textpairs/freedict.jsonl \
  --text-pairs data/textpairs/unihan.jsonl --weight 22 \
  --text-pairs data/textpairs/cldr.jsonl --weight 0.37 \
  --text-pairs data/textpairs/tuxpaint.jsonl --weight 2.1 \
  --val-catalog data/openclipart/test.jsonl --val-catalog data/tuxpaint/test.jsonl \
  --text-rounds 4 --out "$OUT" --max-steps 1500 --batch 128 --lr 1e-4 \
  --warmup 50 --alpha-white --threads 2 --seed 7 --checkpoint-every 250 "$@"
