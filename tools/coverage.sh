#!/bin/sh
# Line coverage per module from a --coverage build whose tests have run
# (`make coverage`): gcov over each module's sources and objects, summed.
#
#   BUILD=build-cov tools/coverage.sh MODULE...
set -eu
BUILD=${BUILD:-build-cov}
printf '%-8s %8s %8s %8s\n' module lines covered percent
for m in "$@"; do
  [ -d "$BUILD/obj/$m" ] || continue
  # gcov -n prints, per source file: "File 'x'" then "Lines executed:P% of N"
  gcov -n -o "$BUILD/obj/$m" "$m"/*.c 2>/dev/null |
    awk -v m="$m" -v dir="$m/" '
      /^File / { f = $2; gsub(/\047/, "", f); mine = index(f, dir) == 1 }
      /^Lines executed:/ && mine {
        split($0, a, /[:% ]+/); p = a[3]; n = a[5]
        total += n; hit += p * n / 100; mine = 0
      }
      END {
        if (total) printf "%-8s %8d %8d %7.1f%%\n", m, total, hit + 0.5, 100 * hit / total
      }'
done
