#!/bin/sh
# The recipe of the default-model candidate measured in README.md ("The
# default model"): continue models/default on every train split of
# `make data`, with a 64-token text context for non-Latin captions.
#
#   make data && tools/train-default.sh [OUT]     (default OUT: data/runs/v3)
#
# About 50 minutes on the 2-core machine; Ctrl-C checkpoints, and the same
# command with --resume appended continues bit for bit.  Measure the result
# with tools/eval-model.py --model OUT (and --model models/default to
# compare).
set -eu
BUILD=${BUILD:-build}
OUT=${1:-data/runs/v3}
[ $# -gt 0 ] && shift
exec "$BUILD/vlmdb" train --init models/default --context 64 \
  --catalog data/openclipart/train.jsonl --catalog data/emoji/train.jsonl \
  --catalog data/emoji-styles/train.jsonl --weight 0.6 \
  --catalog data/tuxpaint/train.jsonl --weight 3 \
  --catalog data/wordnet/train.jsonl \
  --val-catalog data/openclipart/test.jsonl --val-catalog data/tuxpaint/test.jsonl \
  --out "$OUT" --max-steps 2000 --batch 128 --lr 2e-4 --warmup 100 \
  --alpha-white --threads 2 --seed 1 --checkpoint-every 200 "$@"
