#!/bin/bash
# test-cluster.sh - `make test-cluster`: build a sharded vlmdb through a
# real Slurm, on this machine, and check the result against a single
# process.
#
#   tools/slurm/test-cluster.sh [VLMDB]     (default build/vlmdb)
#
# A self-contained cluster in a temporary directory, nothing in /etc:
# munged with its own key and socket (slurm.conf's AuthInfo=socket=...),
# slurmctld and two slurmd nodes (n1, n2) on loopback ports, all started
# and stopped by their pids (tools/slurm/cluster-lib.sh, which bench/shard.sh
# uses too).  The packages come from tools/deps.sh cluster.
#
# Then: the shard array and the merge (tools/slurm/submit.sh, the merge
# after the array with --dependency=afterok), polled with squeue in a
# bounded loop; and the checks: the union of the shards' keys is the
# catalog's, each key in exactly one shard by its slot (vlmdb cluster
# check), the merged database equal to a single-process ingest record for
# record (vectors bit for bit: export prints floats that read back
# exactly), a scatter-gathered exact top-k over the shards equal to the
# single database's, the merged IVF index (every list probed) answering as
# the exact search does; and a task killed with SIGKILL and submitted
# again ending with the same shard.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
VLMDB=$(readlink -f "${1:-$root/build/vlmdb}")
MODEL=$root/tests/fixtures/clip-tiny
[ -x "$VLMDB" ] || { echo "test-cluster: $VLMDB is not built" >&2; exit 1; }
command -v python3 >/dev/null || {
  echo "test-cluster: python3 is missing (tools/deps.sh cluster)" >&2; exit 1; }

# shellcheck source=tools/slurm/cluster-lib.sh
. "$here/cluster-lib.sh"
T=$(mktemp -d /tmp/vlm-slurm.XXXXXX)
chmod 755 "$T"
cleanup() {
  local rc=$?
  cluster_stop "$T"
  if [ "$rc" -ne 0 ]; then
    echo "test-cluster: FAILED; the daemons' logs:" >&2
    tail -n 20 "$T"/log/* >&2 2>/dev/null || true
    tail -n 20 "$T"/out/*.out >&2 2>/dev/null || true
  fi
  [ -n "${VLM_KEEP_CLUSTER_DIR:-}" ] && echo "test-cluster: kept $T" >&2 || rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
fail() { echo "test-cluster: FAIL: $*" >&2; exit 1; }
say() { echo "test-cluster: $*"; }

# ---------------------------------------------------------------- daemons
mkdir -p "$T/out"
t0=$(date +%s.%N)
cluster_start "$T" 2 || fail "the nodes did not come up"
say "cluster up in $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}") s: $(sinfo -h -o '%P %D %t')"

wait_jobs() { cluster_wait "$@" || fail "jobs still queued"; }
job_state() { cluster_job_state "$1"; }

# ------------------------------------------------------------------ data
W=$T/work
mkdir -p "$W"
python3 - "$W/catalog.jsonl" <<'EOF'
import json, math, random, sys
rnd = random.Random(18)
def unit(d=48):
    v = [rnd.uniform(-1, 1) for _ in range(d)]
    n = math.sqrt(sum(x * x for x in v))
    return [float("%.9g" % (x / n)) for x in v]
with open(sys.argv[1], "w") as f:
    for i in range(300):
        key = ("{tag}item%d" if i % 7 == 0 else "item%d") % i
        f.write(json.dumps({"key": key, "caption": "caption %d" % i,
                            "meta": {"year": 1900 + i},
                            "image_vector": unit(), "text_vector": unit()}) + "\n")
EOF
cat > "$W/cluster.json" <<'EOF'
{"shards": [{"id": 0, "slots": [[0, 5460]]}, {"id": 1, "slots": [[5461, 10922]]},
            {"id": 2, "slots": [[10923, 16383]]}]}
EOF
FACTORY=IVF4,Flat
"$VLMDB" init --db "$W/single" --model "$MODEL" --index "$FACTORY" --field year:int >/dev/null
"$VLMDB" ingest --db "$W/single" "$W/catalog.jsonl" -q >/dev/null
"$VLMDB" index train --db "$W/single" --factory "$FACTORY" --sample 300 \
  --out "$W/trained.vlmidx" >/dev/null

# ------------------------------------------------------- build and merge
export CATALOG=$W/catalog.jsonl CLUSTER=$W/cluster.json OUT=$W/out \
  MODEL INDEX=$FACTORY FIELDS="year:int" TRAINED=$W/trained.vlmidx VLMDB
cd "$T/out"
ids=$("$here/submit.sh")
say "submitted: $ids"
build=$(echo "$ids" | awk '{print $2}')
merge=$(echo "$ids" | awk '{print $4}')
wait_jobs 120 "$build" "$merge"
case "$(job_state "$build")" in "JobState=COMPLETED ") ;; *) fail "build: $(job_state "$build")" ;; esac
case "$(job_state "$merge")" in "JobState=COMPLETED ") ;; *) fail "merge: $(job_state "$merge")" ;; esac
say "array $build and merge $merge completed"

# every key once, in its slot's shard, the shards alike
"$VLMDB" cluster check "$CLUSTER" "$OUT"/shard-0 "$OUT"/shard-1 "$OUT"/shard-2 \
  > "$W/check.txt" || fail "cluster check: $(cat "$W/check.txt")"
grep -q "ok: 3 shard databases, 300 items, 0 problems" "$W/check.txt" ||
  fail "cluster check: $(cat "$W/check.txt")"

# the merged database is the single one, record for record, bit for bit
"$VLMDB" export --db "$W/single" --vectors | sort > "$W/single.jsonl"
"$VLMDB" export --db "$OUT/merged" --vectors | sort > "$W/merged.jsonl"
cmp -s "$W/single.jsonl" "$W/merged.jsonl" || fail "the merged database differs from the single one"
[ "$(wc -l < "$W/merged.jsonl")" = 300 ] || fail "the merged database has $(wc -l < "$W/merged.jsonl") items"
for s in 0 1 2; do "$VLMDB" export --db "$OUT/shard-$s" --vectors; done | sort > "$W/union.jsonl"
cmp -s "$W/single.jsonl" "$W/union.jsonl" || fail "the union of the shards differs from the single database"

# scatter-gather exact top-k over the shards = the single database's;
# the merged IVF index, every list probed, = the exact search
for q in "caption 5" "a red bike" "caption 123"; do
  for s in 0 1 2; do
    "$VLMDB" search --db "$OUT/shard-$s" --text "$q" --exact -k 10 --json
  done > "$W/scatter.json"
  "$VLMDB" search --db "$W/single" --text "$q" --exact -k 10 --json > "$W/one.json"
  "$VLMDB" search --db "$OUT/merged" --text "$q" --nprobe 4 -k 10 --json > "$W/ivf.json"
  python3 - "$W/scatter.json" "$W/one.json" "$W/ivf.json" <<'EOF' || fail "top-k of \"$q\" differs"
import json, sys
shards = [json.loads(l) for l in open(sys.argv[1])]
hits = sorted((r for s in shards for r in s["results"]),
              key=lambda r: (-r["score"], r["key"]))[:10]
one = json.load(open(sys.argv[2]))["results"]
ivf = json.load(open(sys.argv[3]))["results"]
gathered = [(r["key"], r["score"]) for r in hits]
single = [(r["key"], r["score"]) for r in one]
merged = [r["key"] for r in ivf]
if gathered != single or merged != [k for k, _ in single]:
    print("gathered", gathered, "\nsingle", single, "\nmerged", merged, file=sys.stderr)
    sys.exit(1)
EOF
done
say "merged database = single ingest (300 records, vectors bit for bit); scatter-gather top-10 and the merged IVF index agree with it"

# ------------------------------------------- a task killed, submitted again
"$VLMDB" export --db "$OUT/shard-1" --vectors | sort > "$W/shard1.jsonl"
OUT=$W/again
INGEST_OPTS="--batch 1"   # one commit per row: the kill lands mid-ingest
export OUT INGEST_OPTS
mkdir -p "$OUT"
# The kill must land after the task made shard-1.tmp and before it
# published: the task can finish first, so until a kill lands in time,
# up to 8 tries, each killing sooner (at last as soon as it appears).
landed=0
for delay in 0.2 0.1 0.05 0 0 0 0 0; do
  rm -rf "$OUT/shard-1" "$OUT/shard-1.tmp"
  j=$(sbatch --parsable --array=1 --export=ALL,TRAINED= "$here/build.sbatch")
  j=${j%%;*}
  for _ in $(seq 1 1000); do
    [ -d "$OUT/shard-1.tmp" ] && break
    sleep 0.01
  done
  sleep "$delay"
  # (a job just started can be unknown to scancel for a moment: retry)
  for _ in 1 2 3 4 5; do
    scancel --signal=KILL --full "$j" 2>/dev/null && break
    sleep 0.1
  done
  wait_jobs 60 "$j"
  say "task $j killed after ${delay} s: $(job_state "$j")"
  if [ -d "$OUT/shard-1.tmp" ] && [ ! -e "$OUT/shard-1" ]; then
    landed=1
    break
  fi
done
[ "$landed" = 1 ] || fail "the kill never landed mid-build (nothing to resume)"
j=$(sbatch --parsable --array=1 --export=ALL,TRAINED= "$here/build.sbatch")
j=${j%%;*}
wait_jobs 60 "$j"
case "$(job_state "$j")" in "JobState=COMPLETED ") ;; *) fail "resubmitted task: $(job_state "$j")" ;; esac
[ -d "$OUT/shard-1" ] && [ ! -e "$OUT/shard-1.tmp" ] || fail "shard-1 was not published"
"$VLMDB" export --db "$OUT/shard-1" --vectors | sort > "$W/again1.jsonl"
cmp -s "$W/shard1.jsonl" "$W/again1.jsonl" || fail "the resubmitted shard differs"
say "a task killed and submitted again ends with the same shard"
say "PASSED"
