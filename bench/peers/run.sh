#!/bin/sh
# The peer benchmark of issue 20 (scripts, not tests): the same clustered
# N x 512 vectors through vlmdb, LanceDB, hnswlib, usearch, sqlite-vec and
# FAISS, each in its own process, one after another, under /usr/bin/time -v.
#
#   sh bench/peers/run.sh [N] [OUTDIR]     (from the repository root;
#                                           N default 200000, OUTDIR
#                                           default /tmp/vlm-peers)
#
# Prints one markdown table (also OUTDIR/peers.md) with the load average
# before and after.  Rows: ingest items/s, build time, QPS at recall@10
# 0.95 and 0.99 on 1 and 2 threads (each system's effort knob swept),
# filtered search at 1%, 10%, 50% selectivity (recall against exact
# filtered search, QPS), disk bytes, peak RSS.  A system that does not
# install or run gets "n/a: why" and the others go on.
#
# Needs: `sh tools/deps.sh peers` (Debian's python3-hnswlib, python3-faiss,
# python3-numpy), node + npm (@lancedb/lancedb, apache-arrow, usearch and
# sqlite-vec are installed into OUTDIR/npm with `npm i -E`; sqlite-vec's
# vec0.so is loaded into Debian's Python sqlite3), and libvlm (built here).
# Environment: NQ (queries, default 1000), SEED (default 1),
# SECONDS_PER_POINT (time per measurement, default 3), SYSTEMS (a subset,
# space-separated), KEEP=1 keeps each system's files in OUTDIR/work.
# The data is generated once per N, NQ and SEED and reused.
#
# Numbers to compare come from a quiet machine: run it when nothing else
# runs (on 2 cores, 200,000 vectors should take about 15 minutes: the five
# HNSW builds about a minute each, usearch's two, each sweep point up to
# SECONDS_PER_POINT).
set -u
N=${1:-200000}
OUT=${2:-/tmp/vlm-peers}
NQ=${NQ:-1000}
SEED=${SEED:-1}
SYSTEMS=${SYSTEMS:-vlmdb lancedb hnswlib usearch sqlite-vec faiss}
export SECONDS_PER_POINT=${SECONDS_PER_POINT:-3}
LANCEDB_VERSION=0.31.0
ARROW_VERSION=18.1.0
USEARCH_VERSION=2.25.3
SQLITE_VEC_VERSION=0.1.9
PY=/usr/bin/python3 # Debian's, which has the Debian modules
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
DATA="$OUT/data-$N-$NQ-$SEED"
RES="$OUT/res"
mkdir -p "$RES" "$OUT/work"
rm -f "$RES"/*

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "n=$N"
  echo "nq=$NQ"
  echo "seed=$SEED"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine=$(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
  echo "load_before=$load_before"
} > "$RES/meta.txt"

if [ ! -f "$DATA/gt_f50.npy" ]; then
  echo "peers: generating $N x 512 vectors, $NQ queries into $DATA" >&2
  $PY "$HERE/gen.py" "$N" "$DATA" "$NQ" "$SEED" || exit 1
fi

fail() { # SYSTEM REASON
  echo "$2" | tr '\n' ' ' | cut -c1-200 > "$RES/$1.fail"
  echo "peers: $1: n/a: $2" >&2
}

# npm packages, once per OUTDIR
NPM="$OUT/npm"
npm_ok=1
if [ ! -f "$NPM/.installed-$LANCEDB_VERSION-$USEARCH_VERSION-$SQLITE_VEC_VERSION" ]; then
  echo "peers: npm i -E into $NPM" >&2
  mkdir -p "$NPM"
  if (cd "$NPM" && { [ -f package.json ] || npm init -y >/dev/null; } &&
      npm i -E --no-audit --no-fund "@lancedb/lancedb@$LANCEDB_VERSION" \
        "apache-arrow@$ARROW_VERSION" "usearch@$USEARCH_VERSION" \
        "sqlite-vec@$SQLITE_VEC_VERSION" > "$NPM/install.log" 2>&1); then
    touch "$NPM/.installed-$LANCEDB_VERSION-$USEARCH_VERSION-$SQLITE_VEC_VERSION"
  else
    npm_ok=0
  fi
fi
cp "$HERE/js_peers.mjs" "$NPM/" 2>/dev/null || npm_ok=0
VEC0=$(find "$NPM/node_modules" -name vec0.so 2>/dev/null | head -1)
export VEC0

# run SYSTEM COMMAND...: in its own process under /usr/bin/time -v, its
# files in OUT/work/SYSTEM (their size is the disk row)
run() {
  sys=$1
  shift
  work="$OUT/work/$sys"
  rm -rf "$work"
  mkdir -p "$work"
  echo "peers: $sys ..." >&2
  t0=$(date +%s)
  if /usr/bin/time -v -o "$RES/$sys.time" "$@" > "$RES/$sys.log" 2>&1 &&
     [ -s "$RES/$sys.json" ]; then
    du -sb "$work" | cut -f1 > "$RES/$sys.disk"
    echo "peers: $sys done in $(($(date +%s) - t0)) s" >&2
  else
    fail "$sys" "$(grep -v '^\[.*WARN' "$RES/$sys.log" | grep . | tail -1)"
  fi
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}

for sys in $SYSTEMS; do
  case $sys in
    vlmdb)
      if (cd "$ROOT" && make -j2 build/bench/peers/vlmdb_peer) > "$RES/build.log" 2>&1; then
        run vlmdb "$ROOT/build/bench/peers/vlmdb_peer" "$DATA" \
          "$OUT/work/vlmdb" "$RES/vlmdb.json" "$SECONDS_PER_POINT"
      else
        fail vlmdb "build failed: $(tail -1 "$RES/build.log")"
      fi ;;
    lancedb|usearch)
      if [ $npm_ok = 1 ]; then
        run "$sys" sh -c 'cd "$1" && exec node js_peers.mjs "$2" "$3" "$4" "$5"' \
          sh "$NPM" "$sys" "$DATA" "$OUT/work/$sys" "$RES/$sys.json"
      else
        fail "$sys" "npm install failed: $(tail -1 "$NPM/install.log" 2>/dev/null)"
      fi ;;
    hnswlib|faiss|sqlite-vec)
      if [ "$sys" = sqlite-vec ] && [ -z "$VEC0" ]; then
        fail "$sys" "vec0.so not installed (npm sqlite-vec)"
      else
        run "$sys" "$PY" "$HERE/py_peers.py" "$sys" "$DATA" \
          "$OUT/work/$sys" "$RES/$sys.json"
      fi ;;
    *) fail "$sys" "unknown system" ;;
  esac
done

echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/meta.txt"
# shellcheck disable=SC2086
$PY "$HERE/report.py" "$RES" $SYSTEMS > "$OUT/peers.md"
cat "$OUT/peers.md"
