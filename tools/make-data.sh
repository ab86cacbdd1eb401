#!/bin/sh
# Build vlmdb's example catalogs under data/ from Debian packages
# (see tools/DATA.md).  Called by `make data`, which installs the packages
# and builds the builders first.
#
#   tools/make-data.sh [openclipart] [fashion-mnist] [emoji] [tuxpaint]
#                      [emoji-styles] [wordnet] [shapes] [fluent] [emojione]
#                      [art4apps] [qabcs] [textpairs]   (default: all)
#
# A dataset is rebuilt only when its builder or its package changed since
# the last run (FORCE=1 rebuilds anyway).  Each dataset directory gets
# digest.json: SHA-256 of train.jsonl, test.jsonl and of the images, plus
# the package versions; the training record cites the train digest.
set -eu

BUILD=${BUILD:-build}
DATA=${DATA:-data}
FORCE=${FORCE:-0}

sets=${*:-openclipart fashion-mnist emoji tuxpaint emoji-styles wordnet shapes fluent emojione art4apps qabcs textpairs}

say() { echo "make-data: $*" >&2; }

pkg_version() {
  dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo missing
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# The stamp: what the outputs were made from.
stamp_of() {   # builder package...
  tool=$1; shift
  printf 'builder %s\n' "$(sha "$tool")"
  for p in "$@"; do printf '%s %s\n' "$p" "$(pkg_version "$p")"; done
}

up_to_date() {   # dir stamp_text
  [ "$FORCE" = 0 ] && [ -f "$1/.stamp" ] && [ -f "$1/digest.json" ] &&
    [ "$(cat "$1/.stamp")" = "$2" ]
}

# digest.json for a dataset directory.  images_digest: SHA-256 of the
# sorted "sha256  key" lines of every image the catalogs name.
write_digest() {   # dir images_digest packages...
  dir=$1 images=$2; shift 2
  {
    printf '{\n'
    printf '  "train_jsonl_sha256": "%s",\n' "$(sha "$dir/train.jsonl")"
    printf '  "test_jsonl_sha256": "%s",\n' "$(sha "$dir/test.jsonl")"
    [ -f "$dir/catalog.jsonl" ] &&
      printf '  "catalog_jsonl_sha256": "%s",\n' "$(sha "$dir/catalog.jsonl")"
    printf '  "train_items": %s,\n' "$(wc -l < "$dir/train.jsonl" | tr -d ' ')"
    printf '  "test_items": %s,\n' "$(wc -l < "$dir/test.jsonl" | tr -d ' ')"
    printf '  "images_sha256": "%s",\n' "$images"
    printf '  "packages": {'
    sep=""
    for p in "$@"; do printf '%s"%s": "%s"' "$sep" "$p" "$(pkg_version "$p")"; sep=", "; done
    printf '}\n}\n'
  } > "$dir/digest.json.tmp"
  mv "$dir/digest.json.tmp" "$dir/digest.json"
}

# Image paths of catalog lines ("image":"..." is the second field the
# builders write; no other field can contain that text before it).
image_paths() {
  sed -n 's/^{"key":"[^"]*","image":"\([^"]*\)".*/\1/p' "$@"
}

openclipart() {
  tool=$BUILD/tools/openclipart-catalog
  out=$DATA/openclipart
  [ -x "$tool" ] || { say "$tool is not built (run: make data)"; exit 1; }
  [ -d /usr/share/openclipart/png ] || { say "openclipart-png is not installed (run: make data)"; exit 1; }
  stamp=$(stamp_of "$tool" openclipart-png openclipart-svg)
  if up_to_date "$out" "$stamp"; then
    say "openclipart: up to date ($out/, FORCE=1 to rebuild)"
    return 0
  fi
  mkdir -p "$out"
  "$tool" --out "$out"
  say "openclipart: hashing images"
  images=$(image_paths "$out/catalog.jsonl" | tr '\n' '\0' | xargs -0 sha256sum |
           sed 's|  /usr/share/openclipart/png/|  |' | LC_ALL=C sort -k2 | sha256sum | cut -d' ' -f1)
  write_digest "$out" "$images" openclipart-png openclipart-svg
  printf '%s\n' "$stamp" > "$out/.stamp"
}

fashion_mnist() {
  tool=$BUILD/tools/fashion-mnist
  out=$DATA/fashion-mnist
  [ -x "$tool" ] || { say "$tool is not built (run: make data)"; exit 1; }
  [ -d /usr/share/datasets/fashion-mnist ] ||
    { say "dataset-fashion-mnist is not installed (run: make data)"; exit 1; }
  stamp=$(stamp_of "$tool" dataset-fashion-mnist)
  if up_to_date "$out" "$stamp"; then
    say "fashion-mnist: up to date ($out/, FORCE=1 to rebuild)"
    return 0
  fi
  mkdir -p "$out"
  "$tool" --out "$out"
  # The PNGs are a pure function of the package's idx files: hash those.
  images=$(cd /usr/share/datasets/fashion-mnist && sha256sum ./*-images-idx3-ubyte.gz |
           LC_ALL=C sort -k2 | sha256sum | cut -d' ' -f1)
  write_digest "$out" "$images" dataset-fashion-mnist
  printf '%s\n' "$stamp" > "$out/.stamp"
}

# Emoji, emoji styles and Tux Paint: tools/families-catalog.py writes the catalog and the PNGs it extracts or
# renders under data/<set>/.
families() {   # set packages...
  set_name=$1; shift
  tool=tools/families-catalog.py
  out=$DATA/$set_name
  for p in "$@"; do
    [ "$(pkg_version "$p")" != missing ] ||
      { say "$p is not installed (run: sh tools/deps.sh data)"; exit 1; }
  done
  stamp=$(stamp_of "$tool" "$@")
  if up_to_date "$out" "$stamp"; then
    say "$set_name: up to date ($out/, FORCE=1 to rebuild)"
    return 0
  fi
  rm -rf "$out"
  mkdir -p "$out"
  /usr/bin/python3 "$tool" "$set_name" --out "$out"
  images=$(cd "$out" && find png -type f -print0 | LC_ALL=C sort -z |
           xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
  write_digest "$out" "$images" "$@"
  printf '%s\n' "$stamp" > "$out/.stamp"
}

# npm tarballs, pinned by SHA-256 (tools/DATA.md): fetched once with
# `npm pack` into $DATA/.npm and checked every time.
NPM_PKGS="emoji-datasource-twitter@16.0.0 f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877
openmoji@17.0.0 55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68"
# Fluent emoji (npm integrity sha512-JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1saB2xw==)
FLUENT_NPM="fluentui-emoji@1.3.0 ec892e607e854859b812c7d827801756adc19955b0ef56d4ae8afcddd19492c5"

npm_fetch() {   # ["spec sha256" lines; default NPM_PKGS]
  mkdir -p "$DATA/.npm"
  printf '%s\n' "${1:-$NPM_PKGS}" | while read -r spec want; do
    file=$DATA/.npm/$(printf '%s' "$spec" | sed 's/@/-/').tgz
    if [ ! -f "$file" ]; then
      command -v npm >/dev/null ||
        { say "npm is not installed (run: sh tools/deps.sh data)"; exit 1; }
      say "fetching $spec from the npm registry"
      (cd "$DATA/.npm" && npm pack --silent "$spec" >/dev/null) ||
        { say "npm pack $spec failed"; exit 1; }
    fi
    got=$(sha "$file")
    [ "$got" = "$want" ] ||
      { say "$file: sha256 $got, want $want"; rm -f "$file"; exit 1; }
  done
}

# Caption variants from WordNet and FreeDict for the train rows of the
# picture catalogs (tools/wordnet-captions.py); made after them.
WORDNET_PKGS="wordnet-base dict-freedict-eng-deu dict-freedict-eng-fra
dict-freedict-eng-spa dict-freedict-eng-rus dict-freedict-eng-jpn"
WORDNET_FROM="openclipart emoji emoji-styles tuxpaint"

wordnet() {
  tool=tools/wordnet-captions.py
  out=$DATA/wordnet
  for p in $WORDNET_PKGS; do
    [ "$(pkg_version "$p")" != missing ] ||
      { say "$p is not installed (run: sh tools/deps.sh data)"; exit 1; }
  done
  srcs=""
  for src in $WORDNET_FROM; do
    [ -f "$DATA/$src/train.jsonl" ] ||
      { say "wordnet: $DATA/$src/train.jsonl is missing (run: tools/make-data.sh $src)"; exit 1; }
    srcs="$srcs $DATA/$src/train.jsonl"
  done
  # shellcheck disable=SC2086
  stamp=$(stamp_of "$tool" $WORDNET_PKGS; for f in $srcs; do printf '%s %s\n' "$f" "$(sha "$f")"; done)
  if up_to_date "$out" "$stamp"; then
    say "wordnet: up to date ($out/, FORCE=1 to rebuild)"
    return 0
  fi
  mkdir -p "$out"
  # shellcheck disable=SC2086
  /usr/bin/python3 "$tool" --out "$out" $srcs
  # the pictures are the sources': their digests stand for them
  images=$(for src in $WORDNET_FROM; do sed -n 's/^  "images_sha256": "\(.*\)",/\1/p' "$DATA/$src/digest.json"; done |
           sha256sum | cut -d' ' -f1)
  # shellcheck disable=SC2086
  write_digest "$out" "$images" $WORDNET_PKGS
  printf '%s\n' "$stamp" > "$out/.stamp"
}

# Pairs of texts that mean the same thing, for the text tower's contrastive
# objective (tools/text-pairs.py): WordNet, FreeDict and Unihan, and the
# train rows of the CLDR-named emoji sets, Tux Paint, art4apps and qABCs;
# made after them (last in the default list).  Their test rows are read only
# to leave the held-out names out, tools/queries.json only to leave the
# evaluation queries out: both are in the stamp.
TEXTPAIRS_PKGS="$WORDNET_PKGS unicode-data"
TEXTPAIRS_FROM="emoji fluent emojione emoji-styles tuxpaint art4apps qabcs"

textpairs() {
  tool=tools/text-pairs.py
  out=$DATA/textpairs
  for p in $TEXTPAIRS_PKGS; do
    [ "$(pkg_version "$p")" != missing ] ||
      { say "$p is not installed (run: sh tools/deps.sh data)"; exit 1; }
  done
  srcs=""
  for src in $TEXTPAIRS_FROM; do
    for f in train test; do
      [ -f "$DATA/$src/$f.jsonl" ] ||
        { say "textpairs: $DATA/$src/$f.jsonl is missing (run: tools/make-data.sh $src)"; exit 1; }
      srcs="$srcs $DATA/$src/$f.jsonl"
    done
  done
  # shellcheck disable=SC2086
  stamp=$(stamp_of "$tool" $TEXTPAIRS_PKGS
          printf 'shared %s\nqueries %s\n' "$(sha tools/wordnet-captions.py)" "$(sha tools/queries.json)"
          for f in $srcs; do printf '%s %s\n' "$f" "$(sha "$f")"; done)
  if up_to_date "$out" "$stamp"; then
    say "textpairs: up to date ($out/, FORCE=1 to rebuild)"
    return 0
  fi
  rm -rf "$out"
  mkdir -p "$out"
  /usr/bin/python3 "$tool" --out "$out" --data "$DATA"
  # no pictures: train.jsonl (every source file, concatenated) is the digest
  # shellcheck disable=SC2086
  write_digest "$out" none $TEXTPAIRS_PKGS
  printf '%s\n' "$stamp" > "$out/.stamp"
}

# Synthetic colour x shape pictures (tools/shapes-data.py): no package
# data, only numpy; the builder's digest and its seed fix the bytes.
shapes() {
  tool=tools/shapes-data.py
  out=$DATA/shapes
  [ "$(pkg_version python3-numpy)" != missing ] ||
    { say "python3-numpy is not installed (run: sh tools/deps.sh data)"; exit 1; }
  stamp=$(stamp_of "$tool" python3-numpy)
  if up_to_date "$out" "$stamp"; then
    say "shapes: up to date ($out/, FORCE=1 to rebuild)"
    return 0
  fi
  rm -rf "$out"
  mkdir -p "$out"
  /usr/bin/python3 "$tool" --out "$out"
  images=$(cd "$out/png" && sha256sum -- *.png | sha256sum | cut -d' ' -f1)
  write_digest "$out" "$images" python3-numpy
  printf '%s\n' "$stamp" > "$out/.stamp"
}

# Fluent, EmojiOne, art4apps and qabcs (tools/DATA.md): builder scripts that
# import tools/families-catalog.py (so it is in their stamp, with the
# checker), checked by tools/check-catalog.py before anything is stamped.
# IMAGES: png (the builder renders into <set>/png/) or the package folder
# the catalog points into (its sha256 lines are taken relative to it).
more_set() {   # set builder images packages...
  set_name=$1 tool=$2 where=$3; shift 3
  out=$DATA/$set_name
  for p in "$@"; do
    [ "$(pkg_version "$p")" != missing ] ||
      { say "$p is not installed (run: sh tools/deps.sh data)"; exit 1; }
  done
  stamp=$(stamp_of "$tool" "$@"
          printf 'shared %s\ncheck %s\n' "$(sha tools/families-catalog.py)" "$(sha tools/check-catalog.py)"
          [ -z "${MORE_STAMP:-}" ] || printf '%s\n' "$MORE_STAMP")
  if up_to_date "$out" "$stamp"; then
    say "$set_name: up to date ($out/, FORCE=1 to rebuild)"
    return 0
  fi
  rm -rf "$out"
  mkdir -p "$out"
  /usr/bin/python3 "$tool" "$set_name" --out "$out"
  /usr/bin/python3 tools/check-catalog.py "$out" ||
    { say "$set_name: the builder wrote a malformed catalog (above); not stamped"; exit 1; }
  if [ "$where" = png ]; then
    images=$(cd "$out" && find png -type f -print0 | LC_ALL=C sort -z |
             xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
  else
    images=$(image_paths "$out/catalog.jsonl" | tr '\n' '\0' | xargs -0 sha256sum |
             sed "s|  $where/|  |" | LC_ALL=C sort -k2 | sha256sum | cut -d' ' -f1)
  fi
  write_digest "$out" "$images" "$@"
  printf '%s\n' "$stamp" > "$out/.stamp"
}

for s in $sets; do
  case $s in
    openclipart) openclipart ;;
    fashion-mnist) fashion_mnist ;;
    emoji) families emoji fonts-noto-color-emoji unicode-cldr-core python3-fonttools ;;
    tuxpaint) families tuxpaint tuxpaint-stamps-default librsvg2-bin ;;
    emoji-styles) npm_fetch
       NPM_CACHE=$DATA/.npm families emoji-styles unicode-cldr-core librsvg2-bin ;;
    wordnet) wordnet ;;
    shapes) shapes ;;
    fluent) npm_fetch "$FLUENT_NPM"
       NPM_CACHE=$DATA/.npm MORE_STAMP="npm $FLUENT_NPM" \
         more_set fluent tools/more-emoji-catalog.py png unicode-cldr-core librsvg2-bin ;;
    emojione) more_set emojione tools/more-emoji-catalog.py \
         /usr/share/rubygems-integration/all/gems/gemojione-3.3.0/assets/png ruby-gemojione unicode-cldr-core ;;
    art4apps) more_set art4apps tools/words-catalog.py /usr/share/games/pysiogame/res/images/art4apps pysiogame ;;
    qabcs) more_set qabcs tools/words-catalog.py /usr/share/qabcs/abcs/all/pics qabcs-data ;;
    textpairs) textpairs ;;
    *) say "unknown dataset '$s' (openclipart, fashion-mnist, emoji, emoji-styles, tuxpaint, wordnet, shapes, fluent, emojione, art4apps, qabcs, textpairs)"; exit 2 ;;
  esac
  d=$DATA/$s/digest.json
  field() { sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\).*/\1/p" "$d"; }
  say "$s: $(field train_items) train + $(field test_items) test items in $DATA/$s/;" \
      "train.jsonl sha256 $(field train_jsonl_sha256)"
done
