#!/bin/sh
# Install the Debian packages vlmdb needs, if any are missing.
# Usage: tools/deps.sh [build|data|cluster|peers]   (build: compile and
# test; data: also the sources of the catalogs `make data` and `make demo`
# build; data-next is the same as data; cluster: also Slurm and MUNGE for
# `make test-cluster`; peers: also the libraries bench/peers/run.sh
# compares vlmdb with).
set -eu

# (chromium and npm: make test-web, the web console in a real browser;
# haproxy: test_replica runs tools/haproxy/vlmdb.cfg in front of replicas)
BUILD_PKGS="build-essential pkg-config clang libfaiss-dev liblmdb-dev lmdb-utils
libsqlite3-dev libuv1-dev libcmocka-dev libopenblas-dev libhiredis-dev
redis-tools redis-server libjpeg62-turbo-dev libpng-dev libutf8proc-dev
libjansson-dev libclang-rt-14-dev libxml2-dev zlib1g-dev python3-redis
libxxhash-dev libsentencepiece-dev libwebp-dev libgif-dev libtiff-dev
libheif-dev libhttp-parser-dev prometheus chromium npm haproxy"
# the catalogs of `make data` (tools/DATA.md): openclipart, Fashion-MNIST,
# emoji (Noto + CLDR names), emoji styles (npm tarballs), Tux Paint, the
# WordNet/FreeDict caption variants, EmojiOne (ruby-gemojione), art4apps
# (inside pysiogame), qABCs, and Unihan (unicode-data: Chinese characters'
# English definitions) for the text pairs
DATA_PKGS="openclipart-png openclipart-svg dataset-fashion-mnist
fonts-noto-color-emoji unicode-cldr-core python3-fonttools
tuxpaint-stamps-default librsvg2-bin wordnet-base dict-freedict-eng-deu
dict-freedict-eng-fra dict-freedict-eng-spa dict-freedict-eng-rus
dict-freedict-eng-jpn python3-numpy ruby-gemojione pysiogame qabcs-data
unicode-data"

# `make test-cluster`: a Slurm controller and two slurmd nodes on this host
# (tools/slurm/test-cluster.sh), authenticated by MUNGE; GNU time for
# bench/shard.sh (wall, CPU and peak RSS of each vlmdb command)
CLUSTER_PKGS="slurmctld slurmd slurm-client munge time"

# bench/peers/run.sh (not the build or the tests): hnswlib and FAISS for
# Debian's /usr/bin/python3, NumPy for the shared data; its LanceDB,
# usearch and sqlite-vec come from npm; time: /usr/bin/time -v for peak RSS
PEERS_PKGS="python3-hnswlib python3-faiss python3-numpy time"

pkgs=$BUILD_PKGS
case ${1:-build} in
  data|data-next) pkgs="$BUILD_PKGS $DATA_PKGS" ;;
  cluster) pkgs="$BUILD_PKGS $CLUSTER_PKGS" ;;
  peers) pkgs="$BUILD_PKGS $PEERS_PKGS" ;;
esac

missing=""
for p in $pkgs; do
  # npm may come with another Node.js build (its nodejs conflicts with
  # Debian's npm package): any working npm will do
  [ "$p" = npm ] && command -v npm >/dev/null 2>&1 && continue
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  case "$status" in
    "install ok installed") ;;
    *) missing="$missing $p" ;;
  esac
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "vlmdb: missing Debian packages:$missing" >&2
  echo "vlmdb: run this as root, then run make again:" >&2
  echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$missing" >&2
  exit 1
fi

echo "vlmdb: installing missing packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine often runs unattended-upgrades at boot: wait for its dpkg
# lock (up to 10 minutes) instead of failing at once.
LOCK_WAIT="-o DPkg::Lock::Timeout=600"
# shellcheck disable=SC2086
$SUDO apt-get $LOCK_WAIT update -q >&2 || true
# shellcheck disable=SC2086
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get $LOCK_WAIT install -y -q --no-install-recommends $missing >&2
