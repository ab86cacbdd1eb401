#!/bin/bash
# shard.sh - issue #18's benchmark: a sharded build through a real Slurm
# against one process, the IVF-PQ merge, and the merged index served
# memory-mapped against the same index in RAM.
#
#   make build bench && nice bench/shard.sh [N]      (default 1,000,000)
#
# Environment: NQ (queries, default 1000), NPROBE (default "16,64"),
# WORK (a directory to keep everything in; default a temporary one,
# removed at the end), VLMDB (default build/vlmdb).  N must be at least
# 10,000 (PQ64 trains on 39 x 256 vectors).  Needs tools/deps.sh cluster
# (Slurm, MUNGE, GNU time), about 23 GB of disk and 3 GB of memory per
# million vectors (three sets of databases of 6 GB: the LMDB store takes
# 4 KiB a 2 KiB vector, the Flat index 2 KiB more).
#
# 1. Data (not timed in the tables): N 512-d unit vectors around N / 100
#    random centres (build/bench/shard data), written once as
#    clip-retrieval's layout (img_emb_0.npy, float32, and metadata_0.jsonl
#    with the keys): what `vlmdb ingest` reads fastest, with no model and
#    nothing to parse but the keys.  Plus NQ queries and their exact
#    top-10 (sgemm over all N).
# 2. Build: one process, `vlmdb init` + `vlmdb ingest` of everything into
#    one database, against 4 shards as a Slurm array (tools/slurm/
#    build.sbatch: every task reads the whole layout and skips the other
#    shards' rows), timed from sbatch until the last task left the queue;
#    and again with the layout split by shard beforehand (DIR/split/
#    shard-I, written with the data), each task reading only its rows.
#    Both with index Flat (the IVF-PQ index is built in part 3; an HNSW
#    graph of 1M vectors would take hours on 2 cores and dwarf the rest)
#    and --batch 1000.  Fairness on this 2-core machine: the test cluster
#    has two nodes of 1 CPU each and the tasks ask for 1 CPU, so at most 2
#    of the 4 run at a time, one per core.  The single ingest may use
#    both cores too (its reader and writer are threads).  Every vlmdb
#    command runs under GNU time, so the table also gives CPU seconds:
#    the sharded build's sum against the single one's is the work that
#    sharding adds (each task reads all N rows), whatever the overlap.
# 3. IVF-PQ: `vlmdb index train` on a sample of the single database
#    (IVF<nlist>,PQ64, nlist = the power of two nearest sqrt(N), at most
#    1024 and N/39: 1024 at 1M; the sample 39 x nlist, at least 10,000),
#    `vlmdb index add` per shard, `vlmdb index merge` under GNU time
#    (/usr/bin/time's %M, the peak RSS -v prints): wall, CPU, peak RSS and
#    the sizes
#    (FAISS and OpenBLAS held to one thread throughout: on a shared
#    2-core machine their thread pools spin and take 3 times the CPU).
# 4. Search: build/bench/shard search, once per mode in its own process:
#    the merged index with its lists mapped (their cached pages dropped
#    first, so the first pass is cold) and the same index in RAM; NQ
#    queries one per call on one thread per nprobe; QPS, recall@10
#    against the exact top-10, and the process's own memory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
N=${1:-1000000}
NQ=${NQ:-1000}
NPROBE=${NPROBE:-16,64}
VLMDB=$(readlink -f "${VLMDB:-$root/build/vlmdb}")
BENCH=$root/build/bench/shard
if [ ! -x "$VLMDB" ] || [ ! -x "$BENCH" ]; then
  echo "shard.sh: build first: make build bench" >&2; exit 1; fi
[ -x /usr/bin/time ] || { echo "shard.sh: /usr/bin/time is missing (tools/deps.sh cluster)" >&2; exit 1; }
[ "$N" -ge 10000 ] || { echo "shard.sh: N must be at least 10000" >&2; exit 1; }

# shellcheck source=tools/slurm/cluster-lib.sh
. "$root/tools/slurm/cluster-lib.sh"
if [ -n "${WORK:-}" ]; then T=$WORK; mkdir -p "$T"; keep=1
else T=$(mktemp -d /tmp/vlm-bench-shard.XXXXXX); keep=; fi
T=$(readlink -f "$T")
chmod 755 "$T"
cleanup() {
  local rc=$?
  cluster_stop "$T/slurm"
  if [ "$rc" -ne 0 ]; then
    echo "shard.sh: FAILED; the last logs:" >&2
    tail -n 20 "$T"/slurm/log/* "$T"/out/*.out >&2 2>/dev/null || true
  fi
  [ -n "$keep" ] || rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1


load() { cut -d' ' -f1-3 /proc/loadavg; }
secs() { awk "BEGIN {printf \"%.1f\", $2 - $1}"; }
# every vlmdb command under GNU time: "wall user sys maxrss_kb task cmd"
TIMES=$T/times.txt
cat > "$T/vlmdb-timed" <<EOF
#!/bin/sh
exec /usr/bin/time -a -o "$TIMES" -f "%e %U %S %M \${SPLIT:+s}\${SLURM_ARRAY_TASK_ID:--} \$1" "$VLMDB" "\$@"
EOF
chmod 755 "$T/vlmdb-timed"
: > "$TIMES"
# init and ingest of the task (- for the single process): wall, CPU, peak MiB
sum_times() {
  awk -v task="$1" '($5 ~ task) && ($6 == "init" || $6 == "ingest") {
    w += $1; c += $2 + $3; if ($4 > m) m = $4 }
    END {printf "%.1f %.1f %.0f", w, c, m / 1024}' "$TIMES"
}

echo "bench/shard.sh: N=$N vectors of 512-d, 4 shards, $NQ queries; $(date -u '+%F %T') UTC"
echo "machine: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average $(load)"
echo "work directory: $T"

# ------------------------------------------------------------------ data
t0=$(date +%s.%N)
"$BENCH" data --n "$N" --nq "$NQ" --out "$T"
echo "data: $N vectors and $NQ queries with their exact top-10 in $(secs "$t0" "$(date +%s.%N)") s ($(du -sh "$T/emb" | cut -f1) of .npy + metadata)"
# The databases need a model of dimension 512 (no vector is embedded):
# the conformance model tests/fixtures/clip-tiny with its two projections
# made 512-wide (random F16 weights).
mkdir -p "$T/model512"
cp "$root"/tests/fixtures/clip-tiny/{merges.txt,vocab.json,preprocessor_config.json} "$T/model512/"
python3 - "$root/tests/fixtures/clip-tiny" "$T/model512" <<'EOF'
import json, random, struct, sys
src, dst = sys.argv[1], sys.argv[2]
cfg = json.load(open(src + "/config.json"))
cfg["projection_dim"] = cfg["text_config"]["projection_dim"] = 512
cfg["vision_config"]["projection_dim"] = 512
json.dump(cfg, open(dst + "/config.json", "w"), indent=2)
f = open(src + "/model.safetensors", "rb")
n = struct.unpack("<Q", f.read(8))[0]
head = json.loads(f.read(n))
data = f.read()
rnd = random.Random(18)
out, blobs, off = {"__metadata__": head.pop("__metadata__", {})}, [], 0
for name, t in sorted(head.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    a, b = t["data_offsets"]
    blob = data[a:b]
    if name in ("text_projection.weight", "visual_projection.weight"):
        cols = t["shape"][1]
        t = dict(t, shape=[512, cols])
        blob = struct.pack("<%de" % (512 * cols),
                           *(rnd.gauss(0, 0.05) for _ in range(512 * cols)))
    out[name] = dict(t, data_offsets=[off, off + len(blob)])
    blobs.append(blob)
    off += len(blob)
h = json.dumps(out).encode()
h += b" " * (-len(h) % 8)
with open(dst + "/model.safetensors", "wb") as g:
    g.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
EOF
export VLMDB_MODEL=$T/model512
cat > "$T/cluster.json" <<'EOF'
{"shards": [{"id": 0, "slots": [[0, 4095]]}, {"id": 1, "slots": [[4096, 8191]]},
            {"id": 2, "slots": [[8192, 12287]]}, {"id": 3, "slots": [[12288, 16383]]}]}
EOF

# ----------------------------------------------------------------- build
echo
echo "## 1. Build: one process against 4 shards through Slurm (index Flat, --batch 1000)"
echo "load average before: $(load)"
t0=$(date +%s.%N)
"$T/vlmdb-timed" init --db "$T/single" --index Flat >/dev/null
"$T/vlmdb-timed" ingest --db "$T/single" --embeddings "$T/emb" --batch 1000 -q >/dev/null
single_wall=$(secs "$t0" "$(date +%s.%N)")

mkdir -p "$T/slurm" "$T/out"
t0=$(date +%s.%N)
cluster_start "$T/slurm" 1
cluster_up=$(secs "$t0" "$(date +%s.%N)")
export CATALOG=$T/emb CLUSTER=$T/cluster.json OUT=$T/out INDEX=Flat \
  INGEST_OPTS="--batch 1000 -q" TRAINED=
cd "$T/out"
t0=$(date +%s.%N)
job=$(sbatch --parsable --array=0-3 --cpus-per-task=1 --export=ALL,VLMDB="$T/vlmdb-timed" "$root/tools/slurm/build.sbatch")
job=${job%%;*}
cluster_wait $((N / 100 + 600)) "$job"
shard_wall=$(secs "$t0" "$(date +%s.%N)")
case "$(cluster_job_state "$job")" in "JobState=COMPLETED ") ;;
  *) echo "shard.sh: the array ended $(cluster_job_state "$job")" >&2; exit 1 ;; esac
# the same with the layout split by shard beforehand (as `vlmdb split`
# cuts a catalog): each task reads only its own rows
mkdir -p "$T/out-split"
t0=$(date +%s.%N)
job2=$(CATALOG=$T/split OUT=$T/out-split sbatch --parsable --array=0-3 --cpus-per-task=1 \
  --export=ALL,VLMDB="$T/vlmdb-timed",SPLIT=1 "$root/tools/slurm/build.sbatch")
job2=${job2%%;*}
cluster_wait $((N / 100 + 600)) "$job2"
split_wall=$(secs "$t0" "$(date +%s.%N)")
cd "$root"
case "$(cluster_job_state "$job2")" in "JobState=COMPLETED ") ;;
  *) echo "shard.sh: the split array ended $(cluster_job_state "$job2")" >&2; exit 1 ;; esac
for o in "$OUT" "$T/out-split"; do
  "$VLMDB" cluster check "$CLUSTER" "$o"/shard-{0,1,2,3} > "$T/check.txt"
  grep -q "ok: 4 shard databases, $N items, 0 problems" "$T/check.txt" || {
    cat "$T/check.txt" >&2; exit 1; }
done

read -r _ s_c s_m <<< "$(sum_times '^-$')"
read -r t_w t_c t_m <<< "$(sum_times '^[0-3]$')"
printf '| %-52s | %8s | %10s | %11s | %9s |\n' "" "wall s" "CPU s" "items/s" "peak MiB"
printf '|%s|%s|%s|%s|%s|\n' ------------------------------------------------------ ---------- ------------ ------------- -----------
printf '| %-52s | %8s | %10s | %11.0f | %9s |\n' "one process (init + ingest), the anchor" "$single_wall" "$s_c" "$(awk "BEGIN {print $N / $single_wall}")" "$s_m"
for i in 0 1 2 3; do
  read -r w c m <<< "$(sum_times "^$i\$")"
  items=$("$VLMDB" info --db "$OUT/shard-$i" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"])')
  printf '| %-52s | %8s | %10s | %11.0f | %9s |\n' "  shard $i task ($items items; reads all $N rows)" "$w" "$c" "$(awk "BEGIN {print $items / $w}")" "$m"
done
printf '| %-52s | %8s | %10s | %11.0f | %9s |\n' "4 shards via Slurm, 2 at a time (sbatch to done)" "$shard_wall" "$t_c" "$(awk "BEGIN {print $N / $shard_wall}")" "$t_m"
read -r p_w p_c p_m <<< "$(sum_times '^s[0-3]$')"
printf '| %-52s | %8s | %10s | %11.0f | %9s |\n' "same, the layout split by shard first (own rows)" "$split_wall" "$p_c" "$(awk "BEGIN {print $N / $split_wall}")" "$p_m"
echo
pct() { awk "BEGIN {printf \"%+.1f%%\", ($1 / $2 - 1) * 100}"; }
echo "overhead of the sharded build against one process: wall $(pct "$shard_wall" "$single_wall"), CPU $(pct "$t_c" "$s_c") (every task reading all rows); split first: wall $(pct "$split_wall" "$single_wall"), CPU $(pct "$p_c" "$s_c").  CPU is the work sharding adds (target <= 10%); wall is below 0 when 2 tasks at a time on 2 cores keep them busier than one process does."
echo "scheduling: cluster up in $cluster_up s (not counted); task walls sum to $t_w s (split: $p_w s) (at small N the scheduler's passes, 1 s apart, dominate the wall time); load average after: $(load)"

# ---------------------------------------------------------------- IVF-PQ
echo
# nlist: the power of two nearest sqrt(N), at most 1024 and N / 39
nlist=$(awk -v n="$N" 'BEGIN { l = 2 ^ int(log(sqrt(n)) / log(2) + 0.5)
  if (l > 1024) l = 1024; while (l * 39 > n) l /= 2; print l }')
# the smallest sample FAISS trains on without a warning (39 per list, and
# 39 x 256 for the PQ): Debian's FAISS trains PQ64 slowly (6 minutes on
# 100,000 here), and the training is not what this measures
sample=$((nlist * 39 > 10000 ? nlist * 39 : 10000))
sample=$((sample < N ? sample : N))
FACTORY=IVF$nlist,PQ64
echo "## 2. One IVF-PQ index: $FACTORY trained on $sample vectors, filled per shard, merged"
echo "load average before: $(load)"
timed() { local out=$1; shift
  /usr/bin/time -o "$T/t.txt" -f "%e %U %S %M" "$@" > "$out"; read -r w u s m < "$T/t.txt";
  printf '%s %.1f %.0f' "$w" "$(awk "BEGIN {print $u + $s}")" "$((m / 1024))"; }
printf '| %-44s | %8s | %8s | %9s | %12s |\n' "step" "wall s" "CPU s" "peak MiB" "output MiB"
printf '|%s|%s|%s|%s|%s|\n' ---------------------------------------------- ---------- ---------- ----------- --------------
read -r w c m <<< "$(timed /dev/null "$VLMDB" index train --db "$T/single" --factory "$FACTORY" --sample "$sample" --out "$T/trained.vlmidx")"
printf '| %-44s | %8s | %8s | %9s | %12.1f |\n' "index train ($sample of the single database)" "$w" "$c" "$m" "$(du -k "$T/trained.vlmidx" | awk '{print $1 / 1024}')"
mkdir -p "$T/parts"
parts=()
for i in 0 1 2 3; do
  read -r w c m <<< "$(timed /dev/null "$VLMDB" index add --db "$OUT/shard-$i" --trained "$T/trained.vlmidx" --out "$T/parts/image-$i.vlmidx")"
  printf '| %-44s | %8s | %8s | %9s | %12.1f |\n' "index add, shard $i" "$w" "$c" "$m" "$(du -k "$T/parts/image-$i.vlmidx" | awk '{print $1 / 1024}')"
  parts+=("$T/parts/image-$i.vlmidx")
done
read -r w c m <<< "$(timed "$T/merge.json" "$VLMDB" index merge --trained "$T/trained.vlmidx" --out "$T/image.vlmidx" --json "${parts[@]}")"
printf '| %-44s | %8s | %8s | %9s | %12.1f |\n' "**index merge** (4 parts, lists mapped)" "**$w**" "$c" "**$m**" "$(du -kc "$T/image.vlmidx" "$T/image.vlmidx.ivfdata" | tail -1 | awk '{print $1 / 1024}')"
echo
echo "merged: $(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%d vectors, list file %.1f MiB (%.1f bytes a vector: PQ64 codes and 8-byte ids)" % (j["vectors"], j["lists_bytes"] / 1048576, j["lists_bytes"] / j["vectors"]))' "$T/merge.json"); load average after: $(load)"

# ---------------------------------------------------------------- search
echo
echo "## 3. Search: the merged $FACTORY mapped against the same index in RAM ($NQ queries, 1 thread, one per call)"
echo "load average before: $(load)"
shards=$(python3 -c 'import json,sys
j = json.load(open(sys.argv[1]))
print(" ".join("%s:%d" % (p["part"], p["offset"]) for p in j["parts"]))' "$T/merge.json" |
  sed "s#$T/parts/image-\([0-9]\)\.vlmidx#$OUT/shard-\1#g")
# shellcheck disable=SC2086
"$BENCH" search --mode mmap --dir "$T" --index "$T/image.vlmidx" --trained "$T/trained.vlmidx" --nprobe "$NPROBE" $shards > "$T/mmap.txt"
# shellcheck disable=SC2086
"$BENCH" search --mode ram --dir "$T" --index "$T/image.vlmidx" --trained "$T/trained.vlmidx" --nprobe "$NPROBE" $shards > "$T/ram.txt"
grep -v '^ROW' "$T/mmap.txt" "$T/ram.txt" | sed 's/^[^:]*://'
printf '| %-24s | %6s | %9s | %9s | %14s | %14s |\n' "index" "nprobe" "QPS" "recall@10" "own anon MiB" "own file MiB"
printf '|%s|%s|%s|%s|%s|%s|\n' -------------------------- -------- ----------- ----------- ---------------- ----------------
cat "$T/mmap.txt" "$T/ram.txt" | awk '$1 == "ROW" {
  printf "| %-24s | %6s | %9.0f | %9.4f | %14.1f | %14.1f |\n",
    ($2 == "mmap" ? "merged, mapped" : "same, in RAM") ($3 == "cold" ? ", 1st pass" : ""), $4, $5, $6, $7, $8 }'
same=yes
for p in ${NPROBE//,/ }; do
  a=$(awk -v p="$p" '$1 == "ROW" && $4 == p {print $9}' "$T/mmap.txt" | sort -u)
  b=$(awk -v p="$p" '$1 == "ROW" && $4 == p {print $9}' "$T/ram.txt" | sort -u)
  [ "$a" = "$b" ] || same=no
done
echo
echo "same results in both modes (every id of every query): $same; index files: $(du -sh "$T/image.vlmidx.ivfdata" | cut -f1) of lists; load average after: $(load)"
[ "$same" = yes ]
