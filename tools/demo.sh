#!/bin/sh
# vlmdb end to end on free pictures from Debian: openclipart clip art, Noto
# emoji and Tux Paint's photos and drawings (called by `make demo`, which
# has already installed the packages and built vlmdb).
#
# 1. builds the three catalogs (tools/make-data.sh, see tools/DATA.md) and
#    joins them into data/demo/catalog.jsonl (and their test splits)
# 2. creates data/demo.vlmdb with the default model and a `category` field
#    (models/default/; until it exists, the random-weight test model
#    tests/fixtures/clip-tiny, whose results mean nothing)
# 3. ingests the held-out test split into data/demo-test.vlmdb, then the
#    whole catalog into data/demo.vlmdb (or, when the model is too slow to
#    embed it all within VLMDB_DEMO_BUDGET seconds, a sample spread over
#    the catalog; `vlmdb ingest` can finish it later, it resumes)
# 4. searches: text->image (English, German, Chinese), near-duplicates
#    collapsed, with a filter, image->image, hybrid (vectors + BM25 over
#    captions), and a contact sheet PNG of results
# 5. measures Recall@K on the test splits and precision@10 of natural-
#    language queries, before and after collapse
# 6. prints how to serve the database and query it with redis-cli
#
# Re-runnable: it deletes and recreates its own two databases each time.
# Settings (environment):
#   VLMDB_DEMO_DB      the database (default data/demo.vlmdb; the test split
#                      goes to the same name with -test before .vlmdb)
#   VLMDB_DEMO_ITEMS   ingest only about this many catalog items (spread
#                      over the catalog), for a quicker run
#   VLMDB_DEMO_BUDGET  seconds the catalog's ingest may take, judged from
#                      the speed of the test split's (default 180)
#   VLMDB_MODEL        the model directory (default models/default)
#   BUILD              the build directory (default build)
set -eu

BUILD=${BUILD:-build}
VLMDB=$BUILD/vlmdb
export VLMDB   # tools/eval-model.py runs it too
DB=${VLMDB_DEMO_DB:-data/demo.vlmdb}
case $DB in
  *.vlmdb) TEST_DB=${DB%.vlmdb}-test.vlmdb ;;
  *) TEST_DB=$DB-test ;;
esac
ITEMS=${VLMDB_DEMO_ITEMS:-0}
BUDGET=${VLMDB_DEMO_BUDGET:-180}
CATALOG_DIR=data/demo

start=$(date +%s)
if [ -t 1 ]; then bold=$(printf '\033[1m') plain=$(printf '\033[0m'); else bold="" plain=""; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
note() { printf '%s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
run() {   # show the command (quoted as a shell would need), then run it
  line='$'
  for a in "$@"; do
    case $a in
      *[!A-Za-z0-9_./:,=@%+-]*|'') a="'$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'" ;;
    esac
    line="$line $a"
  done
  printf '%s\n' "$line"
  "$@"
}
# Every k-th line of a file, about n of them, so each category keeps its share.
spread() {   # file n
  awk -v n="$2" -v t="$(wc -l < "$1")" 'BEGIN { s = t / n } NR == int(c * s) + 1 { print; c++ }' "$1"
}

[ -x "$VLMDB" ] || die "$VLMDB is not built (run: make demo)"

# ---- 1. the catalog ----------------------------------------------------
step "1. The catalog: clip art, emoji and Tux Paint photos and drawings (free data from Debian)"
[ -x "$BUILD/tools/openclipart-catalog" ] ||
  make --no-print-directory -s BUILD="$BUILD" "$BUILD/tools/openclipart-catalog" >/dev/null
BUILD=$BUILD sh tools/make-data.sh openclipart emoji tuxpaint
mkdir -p "$CATALOG_DIR"
cat data/openclipart/catalog.jsonl data/emoji/catalog.jsonl data/tuxpaint/catalog.jsonl > "$CATALOG_DIR/catalog.jsonl"
cat data/openclipart/test.jsonl data/emoji/test.jsonl data/tuxpaint/test.jsonl > "$CATALOG_DIR/test.jsonl"
CATALOG=$CATALOG_DIR/catalog.jsonl
TEST_CATALOG=$CATALOG_DIR/test.jsonl
total=$(wc -l < "$CATALOG" | tr -d ' ')
ntest=$(wc -l < "$TEST_CATALOG" | tr -d ' ')
note "$total items: openclipart $(wc -l < data/openclipart/catalog.jsonl | tr -d ' '), emoji $(wc -l < data/emoji/catalog.jsonl | tr -d ' '), Tux Paint $(wc -l < data/tuxpaint/catalog.jsonl | tr -d ' ') ($ntest in the held-out test splits); a Tux Paint line:"
head -n 1 data/tuxpaint/catalog.jsonl | cut -c 1-300
case $ITEMS in *[!0-9]*|'') die "VLMDB_DEMO_ITEMS must be a number" ;; esac
case $BUDGET in *[!0-9]*|'') die "VLMDB_DEMO_BUDGET must be a number" ;; esac
if [ "$ITEMS" -gt 0 ] && [ "$ITEMS" -lt "$ntest" ]; then
  spread "$TEST_CATALOG" "$ITEMS" > "$CATALOG_DIR/demo-test-subset.jsonl"
  TEST_CATALOG=$CATALOG_DIR/demo-test-subset.jsonl
fi

# ---- 2. the model --------------------------------------------------------
step "2. The model"
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
mkdir -p "$(dirname "$DB")" "$(dirname "$TEST_DB")"

# ---- 3. ingest ---------------------------------------------------------
step "3. Ingest (embeds every image and caption)"
note "First the held-out test split, into its own database for step 5:"
run "$VLMDB" init --db "$TEST_DB" --model "$MODEL" --field category:text
t0=$(date +%s)
run "$VLMDB" ingest --db "$TEST_DB" "$TEST_CATALOG"
t1=$(date +%s)
ntest_done=$(wc -l < "$TEST_CATALOG" | tr -d ' ')

# How much of the catalog fits the time budget at the speed just seen.
want=$total
[ "$ITEMS" -gt 0 ] && [ "$ITEMS" -lt "$total" ] && want=$ITEMS
elapsed=$((t1 - t0)); [ "$elapsed" -lt 1 ] && elapsed=1
fits=$((ntest_done * BUDGET / elapsed))
if [ "$ITEMS" -eq 0 ] && [ "$fits" -lt "$want" ]; then
  want=$fits
  [ "$want" -lt 200 ] && want=200
  note "At about $((ntest_done / elapsed)) items/s the whole catalog would take about $((total * elapsed / ntest_done)) s;"
  note "this demo ingests $want items spread over it (VLMDB_DEMO_BUDGET=$BUDGET s)."
fi
if [ "$want" -lt "$total" ]; then
  CATALOG=$CATALOG_DIR/demo-subset.jsonl
  spread "$CATALOG_DIR/catalog.jsonl" "$want" > "$CATALOG"
  note "Using $(wc -l < "$CATALOG" | tr -d ' ') of the $total items ($CATALOG)."
fi
note ""
note "Then the catalog:"
run "$VLMDB" init --db "$DB" --model "$MODEL" --field category:text --field subcategory:text
run "$VLMDB" ingest --db "$DB" "$CATALOG"
run "$VLMDB" info --db "$DB"

# ---- 4. search ----------------------------------------------------------
step "4. Search, text -> image: objects, described in other words"
for q in "a dog" "a cat" "something to drink" "a furry pet"; do
  run "$VLMDB" search --db "$DB" --text "$q" -k 5 --target image --collapse 0.98 --fields category
  echo
done

step "4. Search in other languages (the same model, the same database)"
for q in "ein Flugzeug" "猫"; do
  run "$VLMDB" search --db "$DB" --text "$q" -k 5 --target image --collapse 0.98 --fields category
  echo
done

step "4. Near-duplicates: --collapse keeps one of each group of near-identical pictures"
note "Without it, a series of nearly identical items (here 16 red jigsaw pieces) fills the top:"
run "$VLMDB" search --db "$DB" --text "a red jigsaw piece" -k 6 --target image
echo
note "With --collapse 0.98 each group takes one slot; the match column counts the rest (+N):"
run "$VLMDB" search --db "$DB" --text "a red jigsaw piece" -k 6 --target image --collapse 0.98

step "4. Search, text -> image, only in one category (a SQL filter on a declared field)"
run "$VLMDB" search --db "$DB" --text "a bird" -k 5 --target image \
  --filter "category = 'animals'" --fields category,subcategory

step "4. Search, image -> image: pictures like this one"
# The first cat photo among the Tux Paint stamps (else the first item).
query=$(grep -m 1 '"key":"tuxpaint/animals/mammals/cats/' "$CATALOG" || head -n 1 "$CATALOG")
query_image=$(printf '%s\n' "$query" | sed -n 's/^{"key":"[^"]*","image":"\([^"]*\)".*/\1/p')
note "query image: $query_image"
run "$VLMDB" search --db "$DB" --image "$query_image" -k 5 --target image --fields category

step "4. Search, hybrid: vector ranking fused with BM25 over the captions"
run "$VLMDB" search --db "$DB" --text "penguin" -k 5 --hybrid --fields category

step "4. A contact sheet: the results as pictures (one row per query)"
run "$VLMDB" sheet --db "$DB" --out data/demo-sheet.png -k 8 --collapse 0.98 \
  --text "a dog" --text "a red car" --text "something to drink" --text "ein Flugzeug" --text "猫"
note "written to data/demo-sheet.png"

# ---- 5. quality ------------------------------------------------------------
step "5. Retrieval quality on the held-out test splits"
note "$TEST_DB holds only the test items (concepts never trained on): each"
note "caption's own picture competes with the other test pictures, and vice versa."
run "$VLMDB" eval --db "$TEST_DB" -k 1,5,10
n=$(wc -l < "$TEST_CATALOG" | tr -d ' ')
awk -v n="$n" 'BEGIN { printf "chance level with %d items: R@1 %.4f  R@5 %.4f  R@10 %.4f  median rank %d\n", n, 1/n, 5/n, 10/n, (n+1)/2 }'
if [ "$CATALOG" = "$CATALOG_DIR/catalog.jsonl" ]; then
  note ""
  note "Natural-language queries (tools/queries.json: none uses the words of the"
  note "captions it should find), precision@10 over the whole catalog, before and"
  note "after collapsing near-duplicates:"
  run /usr/bin/python3 tools/eval-model.py p10 --db "$DB" --catalog "$CATALOG" \
    --langs en,de,zh --collapse 0.98
fi

# ---- 6. the server -------------------------------------------------------
step "6. Serve it (Redis protocol: any Redis client works)"
cat <<EOF
The database stays in $DB (the test split in $TEST_DB).
Start the server (port 7878 by default, bound to 127.0.0.1):

  $VLMDB serve --db $DB --model $MODEL

then, from another terminal:

  redis-cli -p 7878 PING
  redis-cli -p 7878 COUNT
  redis-cli -p 7878 SEARCH TEXT "a red car" K 5 COLLAPSE 0.98 RETURN 3 caption category similar
  redis-cli -p 7878 SEARCH TEXT "a bird" K 5 FILTER "category = 'animals'" RETURN 1 caption
  redis-cli -p 7878 SEARCH KEY "$(printf '%s\n' "$query" | sed -n 's/^{"key":"\([^"]*\)".*/\1/p')" K 5
  redis-cli -p 7878 INFO model
  redis-cli -p 7878 COMMAND DOCS SEARCH

Run the demo again at any time: make demo (it recreates both databases).
EOF
if [ "$CATALOG" != "$CATALOG_DIR/catalog.jsonl" ]; then
  note "To add the rest of the catalog (it skips what is already in):"
  note "  $VLMDB ingest --db $DB $CATALOG_DIR/catalog.jsonl"
fi
note "demo finished in $(( $(date +%s) - start )) s"
