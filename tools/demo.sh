#!/bin/sh
# vlmdb end to end on public-domain clip art (called by `make demo`, which
# has already installed the packages and built vlmdb).
#
# 1. builds the openclipart catalog (tools/make-data.sh, see tools/DATA.md)
# 2. creates data/demo.vlmdb with the default model and a `category` field
#    (models/default/; until it exists, the random-weight test model
#    tests/fixtures/clip-tiny, whose results mean nothing)
# 3. ingests the catalog, then searches: text->image, with a filter,
#    image->image, hybrid (vectors + BM25 over captions)
# 4. measures Recall@K on the held-out test split (data/demo-test.vlmdb)
# 5. prints how to serve the database and query it with redis-cli
#
# Re-runnable: it deletes and recreates its own two databases each time.
# Settings (environment):
#   VLMDB_DEMO_DB      the database (default data/demo.vlmdb; the test split
#                      goes to the same name with -test before .vlmdb)
#   VLMDB_DEMO_ITEMS   ingest only about this many catalog items (spread
#                      over the catalog), for a quicker run
#   VLMDB_MODEL        the model directory (default models/default)
#   BUILD              the build directory (default build)
set -eu

BUILD=${BUILD:-build}
VLMDB=$BUILD/vlmdb
DB=${VLMDB_DEMO_DB:-data/demo.vlmdb}
case $DB in
  *.vlmdb) TEST_DB=${DB%.vlmdb}-test.vlmdb ;;
  *) TEST_DB=$DB-test ;;
esac
ITEMS=${VLMDB_DEMO_ITEMS:-0}
CATALOG_DIR=data/openclipart

start=$(date +%s)
if [ -t 1 ]; then bold=$(printf '\033[1m') plain=$(printf '\033[0m'); else bold="" plain=""; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
note() { printf '%s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
run() {   # show the command, then run it
  printf '$ %s\n' "$*"
  "$@"
}

[ -x "$VLMDB" ] || die "$VLMDB is not built (run: make demo)"

# ---- 1. the catalog ----------------------------------------------------
step "1. The catalog: openclipart (public domain clip art from Debian)"
[ -x "$BUILD/tools/openclipart-catalog" ] ||
  make --no-print-directory -s BUILD="$BUILD" "$BUILD/tools/openclipart-catalog" >/dev/null
BUILD=$BUILD sh tools/make-data.sh openclipart
CATALOG=$CATALOG_DIR/catalog.jsonl
TEST_CATALOG=$CATALOG_DIR/test.jsonl
total=$(wc -l < "$CATALOG" | tr -d ' ')
ntest=$(wc -l < "$TEST_CATALOG" | tr -d ' ')
note "$total items ($ntest in the test split); one line:"
head -n 1 "$CATALOG" | cut -c 1-300
if [ "$ITEMS" -gt 0 ] 2>/dev/null && [ "$ITEMS" -lt "$total" ]; then
  # Every k-th item, so every category keeps its share.
  subset=$CATALOG_DIR/demo-subset.jsonl
  awk -v n="$ITEMS" -v t="$total" 'BEGIN { s = t / n } NR == int(c * s) + 1 { print; c++ }' \
    "$CATALOG" > "$subset"
  CATALOG=$subset
  note "VLMDB_DEMO_ITEMS=$ITEMS: using $(wc -l < "$CATALOG" | tr -d ' ') of them ($CATALOG)"
  if [ "$ITEMS" -lt "$ntest" ]; then
    awk -v n="$ITEMS" -v t="$ntest" 'BEGIN { s = t / n } NR == int(c * s) + 1 { print; c++ }' \
      "$TEST_CATALOG" > "$CATALOG_DIR/demo-test-subset.jsonl"
    TEST_CATALOG=$CATALOG_DIR/demo-test-subset.jsonl
  fi
fi

# ---- 2. the database ---------------------------------------------------
step "2. A database bound to a CLIP model"
if [ -n "${VLMDB_MODEL:-}" ]; then
  MODEL=$VLMDB_MODEL
elif [ -f models/default/config.json ]; then
  MODEL=models/default
else
  MODEL=tests/fixtures/clip-tiny
  cat <<'EOF'
NOTE: models/default/ does not exist yet, so this demo runs on
tests/fixtures/clip-tiny, a tiny CLIP with RANDOM weights made for
conformance tests.  Everything below runs for real (embedding, index,
filters, BM25, the server), but the rankings and the recall figures are
meaningless: expect chance level.  With the trained default model in
models/default/ the same commands give real answers.
EOF
fi
note "model: $MODEL"

# Delete our own databases only: directories vlmdb made (manifest.json), or
# empty ones.
reset_db() {
  if [ -e "$1" ]; then
    if [ -f "$1/manifest.json" ] || [ -z "$(ls -A "$1" 2>/dev/null)" ]; then
      rm -rf "$1"
    else
      die "$1 exists and is not a vlmdb database; move it away or set VLMDB_DEMO_DB"
    fi
  fi
}
reset_db "$DB"
reset_db "$TEST_DB"
mkdir -p "$(dirname "$DB")"
run "$VLMDB" init --db "$DB" --model "$MODEL" --field category:text --field subcategory:text

# ---- 3. ingest and search ---------------------------------------------
step "3. Ingest the catalog (embeds every image and caption)"
run "$VLMDB" ingest --db "$DB" "$CATALOG"
run "$VLMDB" info --db "$DB"

step "Text -> image: what the model sees in the pictures"
for q in "a planet in space" "a red car" "a cat"; do
  run "$VLMDB" search --db "$DB" --text "$q" -k 5 --target image --fields category
  echo
done

step "Text -> image, only in one category (a SQL filter on a declared field)"
run "$VLMDB" search --db "$DB" --text "a bird" -k 5 --target image \
  --filter "category = 'animals'" --fields category,subcategory

step "Image -> image: pictures like this one"
# The first cat in the catalog (else the first item) as the query image.
query=$(grep -m 1 '"key":"animals/mammals/housecats/' "$CATALOG" || head -n 1 "$CATALOG")
query_image=$(printf '%s\n' "$query" | sed -n 's/^{"key":"[^"]*","image":"\([^"]*\)".*/\1/p')
note "query image: $query_image"
run "$VLMDB" search --db "$DB" --image "$query_image" -k 5 --target image --fields category

step "Hybrid: vector ranking fused with BM25 over the captions"
run "$VLMDB" search --db "$DB" --text "penguin" -k 5 --hybrid --fields category

# ---- 4. recall ---------------------------------------------------------
step "4. Retrieval quality on the held-out test split"
note "A separate database holds only the test items (never trained on),"
note "so each caption's own picture competes with the other test pictures."
run "$VLMDB" init --db "$TEST_DB" --model "$MODEL" --field category:text
run "$VLMDB" ingest --db "$TEST_DB" "$TEST_CATALOG"
run "$VLMDB" eval --db "$TEST_DB" -k 1,5,10
n=$(wc -l < "$TEST_CATALOG" | tr -d ' ')
awk -v n="$n" 'BEGIN { printf "chance level with %d items: R@1 %.4f  R@5 %.4f  R@10 %.4f  median rank %d\n", n, 1/n, 5/n, 10/n, (n+1)/2 }'

# ---- 5. the server -----------------------------------------------------
step "5. Serve it (Redis protocol: any Redis client works)"
cat <<EOF
The database stays in $DB (the test split in $TEST_DB).
Start the server (port 7878 by default, bound to 127.0.0.1):

  $VLMDB serve --db $DB

then, from another terminal:

  redis-cli -p 7878 PING
  redis-cli -p 7878 COUNT
  redis-cli -p 7878 SEARCH TEXT "a red car" K 5 RETURN 2 caption category
  redis-cli -p 7878 SEARCH TEXT "a bird" K 5 FILTER "category = 'animals'" RETURN 1 caption
  redis-cli -p 7878 SEARCH KEY "$(printf '%s\n' "$query" | sed -n 's/^{"key":"\([^"]*\)".*/\1/p')" K 5
  redis-cli -p 7878 INFO model
  redis-cli -p 7878 COMMAND DOCS SEARCH

Run the demo again at any time: make demo (it recreates both databases).
EOF
note "demo finished in $(( $(date +%s) - start )) s"
