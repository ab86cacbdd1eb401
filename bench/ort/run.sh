#!/bin/sh
# The ONNX Runtime anchor of issue 20 (not part of `make test`): the same
# random-weight ViT-B/32 vision tower through vlmdb (exact, bf16, int8) and
# through ONNX Runtime fp32 at 1 and 2 intra-op threads.
#
#   sh bench/ort/run.sh [DIR]      (from the repository root; DIR default
#                                   /tmp/vlm-ort, holds the checkpoint, the
#                                   ONNX file and node_modules)
#
# Needs: Debian's python3-torch (apt-get install python3-torch), node + npm
# (onnxruntime-node is installed into DIR by npm, with --ignore-scripts: its
# install script only fetches the CUDA provider, from nuget.org), `make bench`.
# For numbers to compare, run it on a quiet machine (nothing else running):
# the targets are vlmdb int8 >= 2x and bf16 >= 1.5x ONNX Runtime's images/s
# at batch 16, 2 threads.  On a busy machine compare the "1 thread CPU
# time" lines instead.
set -eu
DIR=${1:-/tmp/vlm-ort}
ORT_VERSION=${ORT_VERSION:-1.30.0}
REPS=${REPS:-7}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DIR"
[ -x build/bench/embed ] || make bench
# 1. the checkpoint (bench/embed writes it, and measures vlmdb on it)
build/bench/embed --geometry vit-b32 --keep "$DIR" --reps "$REPS"
# 2. the same weights as ONNX (opset 14), with PyTorch's outputs
[ -f "$DIR/vit-b32.onnx" ] ||
  /usr/bin/python3 "$HERE/export_vit.py" "$DIR/vit-b32" "$DIR/vit-b32.onnx"
# 3. ONNX Runtime
if [ ! -d "$DIR/node_modules/onnxruntime-node" ]; then
  (cd "$DIR" && npm init -y >/dev/null && npm i -E --ignore-scripts "onnxruntime-node@$ORT_VERSION" >/dev/null)
fi
cp "$HERE/time_ort.mjs" "$DIR/"
node "$DIR/time_ort.mjs" "$DIR/vit-b32.onnx" "$REPS"
