#!/bin/sh
# submit.sh - submit a whole build: the shard array, then the merge once
# every task succeeded (--dependency=afterok).  Prints both job ids.
#
#   CATALOG=catalog.jsonl CLUSTER=cluster.json OUT=out tools/slurm/submit.sh
#
# The shard count is the map's.  Other sbatch options (partition, time,
# account) go in SBATCH_* environment variables as usual.
set -eu
here=$(dirname "$0")
: "${CLUSTER:?set CLUSTER}"
n=$(grep -o '"id"' "$CLUSTER" | wc -l)
[ "$n" -ge 1 ] || { echo "submit.sh: $CLUSTER has no shards" >&2; exit 1; }
build=$(sbatch --parsable --array=0-$((n - 1)) --export=ALL "$here/build.sbatch")
build=${build%%;*}
merge=$(sbatch --parsable --dependency=afterok:"$build" --export=ALL "$here/merge.sbatch")
echo "build $build merge ${merge%%;*}"
