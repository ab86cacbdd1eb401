#!/bin/bash
# Run test binaries one after another, streaming each one's cmocka output,
# then print a total.  Exit non-zero if any program failed.
set -u
tests=0; failed=""
for t in "$@"; do
  echo "=== $t"
  if [ ! -x "$t" ]; then echo "run-tests: $t is not built" >&2; failed="$failed $t"; continue; fi
  out=$(mktemp)
  "$t" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  n=$(grep -c '^\[       OK \]' "$out")
  tests=$((tests + n))
  if [ "$rc" -ne 0 ] || ! grep -q '^\[  PASSED  \]' "$out"; then
    failed="$failed $t"
  fi
  rm -f "$out"
done
echo "==================== vlmdb test summary ===================="
echo "[==========] $# program(s), $tests test(s) passed."
if [ -n "$failed" ]; then
  echo "[  FAILED  ] program(s):$failed"
  exit 1
fi
echo "[  PASSED  ] all test programs passed."
