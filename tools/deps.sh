#!/bin/sh
# Install the Debian packages vlmdb needs, if any are missing.
# Usage: tools/deps.sh [build|data|data-next]   (build: compile and test;
# data: also the catalogs `make demo` and `make data` read; data-next: also
# the emoji and Tux Paint sources of `tools/make-data.sh emoji tuxpaint`).
set -eu

BUILD_PKGS="build-essential pkg-config clang libfaiss-dev liblmdb-dev lmdb-utils
libsqlite3-dev libuv1-dev libcmocka-dev libopenblas-dev libhiredis-dev
redis-tools redis-server libjpeg62-turbo-dev libpng-dev libutf8proc-dev
libjansson-dev libclang-rt-14-dev libxml2-dev zlib1g-dev python3-redis"
DATA_PKGS="openclipart-png openclipart-svg dataset-fashion-mnist"
# the next default model's sources (tools/make-data.sh emoji tuxpaint)
DATA_NEXT_PKGS="fonts-noto-color-emoji unicode-cldr-core python3-fonttools
tuxpaint-stamps-default librsvg2-bin npm"

pkgs=$BUILD_PKGS
[ "${1:-build}" = data ] && pkgs="$BUILD_PKGS $DATA_PKGS"
[ "${1:-build}" = data-next ] && pkgs="$BUILD_PKGS $DATA_PKGS $DATA_NEXT_PKGS"

missing=""
for p in $pkgs; do
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
