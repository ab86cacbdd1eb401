#!/bin/sh
# Runs node-redis and ioredis against a fresh `vlmdb serve` and prints the
# compatibility table of tools/compat/compat.mjs. From the repo root:
#
#   sh tools/compat/run.sh [--resp 2|3] [--verbose]
#
# BUILD (default: build) names the build folder holding vlmdb; the options
# go to compat.mjs. The packages come from the npm registry through
# `npm ci` (package-lock.json pins them; npm's cache serves them offline
# after the first install). Exits non-zero if any check fails.
set -eu

BUILD=${BUILD:-build}
HERE=$(cd "$(dirname "$0")" && pwd)
VLMDB=$BUILD/vlmdb
[ -x "$VLMDB" ] || { echo "run.sh: $VLMDB not found (make -j2 all, or set BUILD)" >&2; exit 2; }
command -v node >/dev/null 2>&1 || { echo "run.sh: node not found" >&2; exit 2; }
command -v npm >/dev/null 2>&1 || { echo "run.sh: npm not found" >&2; exit 2; }

# Install exactly what package-lock.json pins; skipped when node_modules was
# installed from this same lock file.
if [ ! -f "$HERE/node_modules/.vlmdb-lock" ] ||
   ! cmp -s "$HERE/package-lock.json" "$HERE/node_modules/.vlmdb-lock"; then
	(cd "$HERE" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error) >&2
	cp "$HERE/package-lock.json" "$HERE/node_modules/.vlmdb-lock"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/vlmdb-compat.XXXXXX")
PID=

# SIGTERM, then wait for the graceful shutdown (it finishes within 10 s);
# TERM again each second (a TERM that lands before the server is running
# can be lost), SIGKILL after 30 s. Sets SRC to the server's exit status.
stop_server() {
	SRC=0
	[ -n "$PID" ] || return 0
	kill -TERM "$PID" 2>/dev/null || true
	n=0
	while kill -0 "$PID" 2>/dev/null; do
		n=$((n + 1))
		if [ "$n" -ge 300 ]; then
			echo "run.sh: vlmdb serve did not stop in 30 s; SIGKILL" >&2
			kill -KILL "$PID" 2>/dev/null || true
			break
		fi
		[ $((n % 10)) -ne 0 ] || kill -TERM "$PID" 2>/dev/null || true
		sleep 0.1
	done
	wait "$PID" 2>/dev/null || SRC=$?
	PID=
}
cleanup() {
	stop_server || true
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$VLMDB" init --db "$TMP/db" --index Flat >"$TMP/init.log" 2>&1 ||
	{ cat "$TMP/init.log" >&2; echo "run.sh: vlmdb init failed" >&2; exit 2; }

: >"$TMP/serve.out"
"$VLMDB" serve --db "$TMP/db" --port 0 >"$TMP/serve.out" 2>"$TMP/serve.log" &
PID=$!
# The first line on stdout says where it listens: "... listening on HOST:PORT".
PORT=
n=0
while :; do
	PORT=$(sed -n '1s/.*listening on .*:\([0-9][0-9]*\)[[:space:]]*$/\1/p' "$TMP/serve.out" 2>/dev/null || true)
	[ -z "$PORT" ] || break
	if ! kill -0 "$PID" 2>/dev/null || [ "$n" -ge 600 ]; then
		cat "$TMP/serve.out" "$TMP/serve.log" >&2
		echo "run.sh: vlmdb serve did not start" >&2
		exit 2
	fi
	n=$((n + 1))
	sleep 0.1
done
echo "run.sh: $(head -n 1 "$TMP/serve.out") (pid $PID)" >&2

RC=0
node "$HERE/compat.mjs" "$PORT" "$@" || RC=$?

stop_server
if [ "$SRC" -ne 0 ]; then
	echo "run.sh: vlmdb serve exited with status $SRC" >&2
	cat "$TMP/serve.log" >&2
	[ "$RC" -ne 0 ] || RC=1
fi
exit "$RC"
