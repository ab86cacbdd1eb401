#!/bin/sh
# The learning loop on the demo catalog, end to end (README, "Model
# migration and the learning loop"): ingest (keeping the image bytes) ->
# eval -> fine-tune on the database's own pairs (LoRA, a split held out
# by key) -> re-embed the database with the tuned model -> eval again,
# on the held-out split, on the whole catalog and on the demo's test
# split (concepts the catalog does not have).  Also measures what
# --keep-images costs on disk (the same catalog ingested without it).
#
# Needs the demo catalogs (make data, or tools/demo.sh's first step:
# data/demo/catalog.jsonl and test.jsonl) and build/vlmdb.  Takes about
# half an hour on 2 cores.  Re-runnable: it starts OUT afresh.
# Settings (environment): BUILD (default build), VLMDB_MODEL (default
# models/default), EPOCHS (default 2), LORA (default 8); argument: OUT
# (default data/loop).
set -eu

BUILD=${BUILD:-build}
V=$BUILD/vlmdb
MODEL=${VLMDB_MODEL:-models/default}
EPOCHS=${EPOCHS:-2}
LORA=${LORA:-8}
OUT=${1:-data/loop}
CATALOG=data/demo/catalog.jsonl
TEST=data/demo/test.jsonl
[ -x "$V" ] || { echo "demo-loop: $V is not built" >&2; exit 1; }
[ -f "$CATALOG" ] && [ -f "$TEST" ] ||
  { echo "demo-loop: $CATALOG and $TEST are missing (make data)" >&2; exit 1; }

run() {   # show the command, run it, say how long it took
  printf '\n$ %s\n' "$*"
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  printf '(%.1f s, load %s)\n' "$(echo "$t1 - $t0" | bc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
}
fields="--field category:text --field subcategory:text"

rm -rf "$OUT"
mkdir -p "$OUT"

echo "== disk: the catalog without and with --keep-images"
run "$V" init --db "$OUT/plain.vlmdb" --model "$MODEL" $fields
run "$V" ingest --db "$OUT/plain.vlmdb" "$CATALOG" --quiet
run "$V" init --db "$OUT/demo.vlmdb" --model "$MODEL" $fields
run "$V" ingest --db "$OUT/demo.vlmdb" "$CATALOG" --keep-images --quiet
python3 - "$CATALOG" "$OUT/plain.vlmdb" "$OUT/demo.vlmdb" <<'EOF'
import json, os, sys
paths = {json.loads(l).get("image") for l in open(sys.argv[1])} - {None}
files = sum(os.path.getsize(p) for p in paths if os.path.exists(p))
def du(d):
    return sum(os.path.getsize(os.path.join(r, f))
               for r, _, fs in os.walk(d) for f in fs)
plain, kept = du(sys.argv[2]), du(sys.argv[3])
print(f"image files: {len(paths)}, {files / 2**20:.1f} MiB")
print(f"database without --keep-images: {plain / 2**20:.1f} MiB")
print(f"database with --keep-images:    {kept / 2**20:.1f} MiB "
      f"(+{(kept - plain) / 2**20:.1f} MiB, {(kept - plain) / files:.2f}x the files)")
EOF
rm -rf "$OUT/plain.vlmdb"
run "$V" init --db "$OUT/demo-test.vlmdb" --model "$MODEL" $fields
run "$V" ingest --db "$OUT/demo-test.vlmdb" "$TEST" --keep-images --quiet

echo
echo "== eval with $MODEL"
run "$V" eval --db "$OUT/demo.vlmdb" -k 1,5,10 --no-index
run "$V" eval --db "$OUT/demo-test.vlmdb" -k 1,5,10 --no-index

echo
echo "== fine-tune on the database's own pairs"
run "$V" train --db "$OUT/demo.vlmdb" --init "$MODEL" --lora "$LORA" \
  --epochs "$EPOCHS" --batch 64 --val-fraction 0.1 --seed 1 --out "$OUT/tuned"
run "$V" eval --db "$OUT/demo.vlmdb" --pairs "$OUT/tuned/heldout-pairs.jsonl" -k 1,5,10 --no-index

echo
echo "== re-embed with the tuned model"
run "$V" reembed --db "$OUT/demo.vlmdb" --model "$OUT/tuned"
run "$V" reembed --db "$OUT/demo-test.vlmdb" --model "$OUT/tuned"

echo
echo "== eval with the tuned model"
run "$V" eval --db "$OUT/demo.vlmdb" --pairs "$OUT/tuned/heldout-pairs.jsonl" -k 1,5,10 --no-index
run "$V" eval --db "$OUT/demo.vlmdb" -k 1,5,10 --no-index
run "$V" eval --db "$OUT/demo-test.vlmdb" -k 1,5,10 --no-index
run "$V" verify --db "$OUT/demo.vlmdb"
