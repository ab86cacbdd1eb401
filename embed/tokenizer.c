/* tokenizer.c - CLIP's byte-level BPE tokenizer, as the reference
 * (OpenAI CLIP's simple_tokenizer.py, also Hugging Face's CLIPTokenizer).
 *
 * The reference pipeline, step by step, and what this file does for each:
 *
 *   ftfy.fix_text(text)       pass-through: not reproduced (see below)
 *   html.unescape(), twice    Python's rules: the full HTML5 table of named
 *                             references (html_entities.inc), the longest
 *                             legacy-prefix rule, numeric references with
 *                             Python's replacements for invalid code points
 *   .strip()                  Python's str.isspace set
 *   re.sub(r'\s+', ' ')       the `regex` module's \s: Unicode White_Space
 *   .strip()                  str.isspace again
 *   .lower()                  Python's full lower-casing: utf8proc's simple
 *                             mapping, U+0130 -> "i\u0307", final sigma
 *   regex findall             the pattern below, matched by hand
 *   bytes_to_unicode + BPE    ids computed directly on byte symbols
 *
 * Pattern (regex module, IGNORECASE):
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
 *   [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * After lower() the only case-insensitive effect left is U+017F (long s)
 * matching 's'; it is honoured.  A special-token match that is not the
 * exact ASCII text (it contains U+017F) is BPE-encoded as a normal word,
 * as the reference's cache lookup does.
 *
 * ftfy: the reference calls ftfy.fix_text first.  For clean text it is the
 * identity; it differs for mojibake, curly quotes (uncurled), ligatures,
 * full-width forms, some control characters and non-NFC text.  We do not
 * reproduce those heuristics: text is used as given.
 */
#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <zlib.h>

#include "hf_tok.h"
#include "vlm_error.h"
#include "vlm_file.h"
#include "vlm_utf8.h"

/* The reference keeps merges[1 : 49152 - 256 - 2 + 1] of the list. */
#define CLIP_MAX_MERGES (49152 - 256 - 2)

/* ---- load-time string -> id map ------------------------------------- */

typedef struct {
  char *key; /* NULL = empty slot */
  size_t len;
  int32_t id;
} str_slot;

typedef struct {
  str_slot *slots;
  size_t cap, count;
} str_map;

static uint64_t hash_bytes(const char *s, size_t len) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static void str_map_free(str_map *m) {
  if (!m->slots) return;
  for (size_t i = 0; i < m->cap; i++) free(m->slots[i].key);
  free(m->slots);
  m->slots = NULL;
}

static int str_map_init(str_map *m, size_t expected) {
  size_t cap = 64;
  while (cap < expected * 2) cap <<= 1;
  m->slots = calloc(cap, sizeof *m->slots);
  m->cap = cap;
  m->count = 0;
  return m->slots ? 0 : vlm_seterr(VLM_ENOMEM, "tokenizer: vocabulary map");
}

static str_slot *str_map_find(const str_map *m, const char *key, size_t len) {
  size_t i = hash_bytes(key, len) & (m->cap - 1);
  for (;;) {
    str_slot *s = &m->slots[i];
    if (!s->key || (s->len == len && memcmp(s->key, key, len) == 0)) return s;
    i = (i + 1) & (m->cap - 1);
  }
}

/* Insert or overwrite (Python's dict(zip(vocab, range)) keeps the last id
 * of a repeated string). */
static int str_map_put(str_map *m, const char *key, size_t len, int32_t id) {
  if ((m->count + 1) * 2 > m->cap) {
    str_map bigger;
    if (str_map_init(&bigger, m->cap) != 0) return VLM_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
      str_slot *s = &m->slots[i];
      if (!s->key) continue;
      *str_map_find(&bigger, s->key, s->len) = *s;
      bigger.count++;
    }
    free(m->slots);
    *m = bigger;
  }
  str_slot *s = str_map_find(m, key, len);
  if (!s->key) {
    s->key = malloc(len + 1);
    if (!s->key) return vlm_seterr(VLM_ENOMEM, "tokenizer: vocabulary map");
    memcpy(s->key, key, len);
    s->key[len] = 0;
    s->len = len;
    m->count++;
  }
  s->id = id;
  return 0;
}

static int32_t str_map_get(const str_map *m, const char *key, size_t len) {
  const str_slot *s = str_map_find(m, key, len);
  return s->key ? s->id : -1;
}

/* ---- the tokenizer -------------------------------------------------- */

typedef struct {
  uint64_t key; /* 0 = empty; else (first+1) << 32 | (second+1) */
  int32_t rank;
  int32_t merged;
} merge_slot;

struct vlm__tokenizer {
  int32_t byte_id[256];     /* id of the symbol for byte b */
  int32_t byte_end_id[256]; /* id of that symbol + "</w>" */
  merge_slot *merges;
  size_t merge_cap;
  int32_t bos, eos;
  int vocab_size;
  str_map vocab; /* token string -> id, for vlm__tokenizer_lookup */
};

static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

static uint64_t pair_key(int32_t a, int32_t b) {
  return ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1);
}

static const merge_slot *merge_find(const vlm__tokenizer *tok, int32_t a,
                                    int32_t b) {
  uint64_t key = pair_key(a, b);
  size_t i = mix64(key) & (tok->merge_cap - 1);
  for (;;) {
    const merge_slot *s = &tok->merges[i];
    if (s->key == key) return s;
    if (s->key == 0) return NULL;
    i = (i + 1) & (tok->merge_cap - 1);
  }
}

/* Later duplicates overwrite the rank, as dict(zip(merges, range)) does. */
static void merge_put(vlm__tokenizer *tok, int32_t a, int32_t b, int32_t rank,
                      int32_t merged) {
  uint64_t key = pair_key(a, b);
  size_t i = mix64(key) & (tok->merge_cap - 1);
  while (tok->merges[i].key != 0 && tok->merges[i].key != key)
    i = (i + 1) & (tok->merge_cap - 1);
  tok->merges[i].key = key;
  tok->merges[i].rank = rank;
  tok->merges[i].merged = merged;
}

/* bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other
 * 68 bytes to U+0100.. in byte order.  order[] lists the bytes in the
 * reference's order (which is also their id order in the vocabulary). */
static uint32_t byte_to_cp(int b, int *order_index) {
  static const struct { int lo, hi; } printable[] = {{33, 126}, {161, 172}, {174, 255}};
  int idx = 0;
  for (int r = 0; r < 3; r++) {
    if (b >= printable[r].lo && b <= printable[r].hi) {
      if (order_index) *order_index = idx + (b - printable[r].lo);
      return (uint32_t)b;
    }
    idx += printable[r].hi - printable[r].lo + 1;
  }
  int n = 0; /* rank of b among the non-printable bytes */
  for (int c = 0; c < b; c++) {
    int printable_c = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
    if (!printable_c) n++;
  }
  if (order_index) *order_index = idx + n;
  return 256u + (uint32_t)n;
}


void vlm__tokenizer_free(vlm__tokenizer *tok) {
  if (!tok) return;
  str_map_free(&tok->vocab);
  free(tok->merges);
  free(tok);
}

/* Build the tokenizer from the string -> id vocabulary (taken over, also
 * on failure) and the merge list (`lines` of "first second", already
 * sliced as the reference does). */
static int build(str_map *vocab_in, char **lines, size_t n_lines,
                 const char *what, vlm__tokenizer **out) {
  int rc = 0;
  vlm__tokenizer *tok = calloc(1, sizeof *tok);
  if (!tok) return vlm_seterr(VLM_ENOMEM, "%s: tokenizer", what);
  tok->vocab = *vocab_in; /* takes ownership */
  memset(vocab_in, 0, sizeof *vocab_in);
  const str_map *vocab = &tok->vocab;
  tok->merge_cap = 64;
  while (tok->merge_cap < n_lines * 2 + 2) tok->merge_cap <<= 1;
  tok->merges = calloc(tok->merge_cap, sizeof *tok->merges);
  if (!tok->merges) {
    rc = vlm_seterr(VLM_ENOMEM, "%s: merge table", what);
    goto fail;
  }
  int32_t max_id = -1;
  for (size_t i = 0; i < vocab->cap; i++)
    if (vocab->slots[i].key && vocab->slots[i].id > max_id) max_id = vocab->slots[i].id;
  tok->vocab_size = max_id + 1;

  char buf[64];
  for (int b = 0; b < 256; b++) {
    size_t n = vlm_utf8_put(buf, byte_to_cp(b, NULL));
    tok->byte_id[b] = str_map_get(vocab, buf, n);
    memcpy(buf + n, "</w>", 4);
    tok->byte_end_id[b] = str_map_get(vocab, buf, n + 4);
    if (tok->byte_id[b] < 0 || tok->byte_end_id[b] < 0) {
      buf[n + 4] = 0;
      rc = vlm_seterr(VLM_EFORMAT, "%s: vocabulary lacks the byte symbol \"%s\" (byte %d)",
                      what, buf, b);
      goto fail;
    }
  }
  tok->bos = str_map_get(vocab, "<|startoftext|>", 15);
  tok->eos = str_map_get(vocab, "<|endoftext|>", 13);
  if (tok->bos < 0 || tok->eos < 0) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: vocabulary lacks <|startoftext|> or <|endoftext|>", what);
    goto fail;
  }

  for (size_t i = 0; i < n_lines; i++) {
    /* Python's merge.split(): fields separated by whitespace runs. */
    const char *f[3];
    size_t fl[3], nf = 0;
    const char *p = lines[i];
    while (*p && nf < 3) {
      while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f') p++;
      if (!*p) break;
      const char *s = p;
      while (*p && !(*p == ' ' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f')) p++;
      f[nf] = s;
      fl[nf] = (size_t)(p - s);
      nf++;
    }
    if (nf != 2) continue; /* never matches a pair of symbols */
    int32_t a = str_map_get(vocab, f[0], fl[0]);
    int32_t b = str_map_get(vocab, f[1], fl[1]);
    char joined[512];
    if (fl[0] + fl[1] >= sizeof joined) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: merge line %zu too long", what, i + 2);
      goto fail;
    }
    memcpy(joined, f[0], fl[0]);
    memcpy(joined + fl[0], f[1], fl[1]);
    int32_t m = str_map_get(vocab, joined, fl[0] + fl[1]);
    if (a < 0 || b < 0 || m < 0) {
      joined[fl[0] + fl[1]] = 0;
      rc = vlm_seterr(VLM_EFORMAT, "%s: merge line %zu: \"%s\" not in the vocabulary",
                      what, i + 2, a < 0 ? "(first)" : b < 0 ? "(second)" : joined);
      goto fail;
    }
    merge_put(tok, a, b, (int32_t)i, m);
  }
  *out = tok;
  return 0;
fail:
  vlm__tokenizer_free(tok);
  return rc;
}

/* Tokenizer files (vocab.json, merges.txt, CLIP's .txt.gz), read whole
 * and NUL-terminated; a few MB in practice. */
static int read_file(const char *path, char **data, size_t *len) {
  return vlm_read_file(path, (size_t)256 << 20, (uint8_t **)data, len);
}

/* Split data (NUL-terminated) into '\n' lines in place, keep the reference's
 * slice [1 : 1 + CLIP_MAX_MERGES]. */
static size_t slice_merge_lines(char *data, char **lines) {
  size_t n = 0, line_no = 0;
  char *p = data;
  while (p && n < CLIP_MAX_MERGES) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    if (line_no++ >= 1) lines[n++] = p;
    p = nl ? nl + 1 : NULL;
  }
  return n;
}

static int check_utf8(const char *data, size_t len, const char *path) {
  const unsigned char *s = (const unsigned char *)data;
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    size_t n = vlm_utf8_next(s + i, len - i, &cp);
    if (!n) return vlm_seterr(VLM_EFORMAT, "%s: invalid UTF-8 at byte %zu", path, i);
    i += n;
  }
  return 0;
}

int vlm__tokenizer_load(const char *vocab_json, const char *merges_txt,
                        vlm__tokenizer **out) {
  int rc = 0;
  str_map vocab = {0};
  char *data = NULL;
  char **lines = NULL;
  size_t len = 0;
  json_error_t jerr;
  json_t *root = json_load_file(vocab_json, 0, &jerr);
  *out = NULL;
  if (!root) {
    rc = vlm_seterr(VLM_EFORMAT, "%s:%d: %s", vocab_json, jerr.line, jerr.text);
    goto done;
  }
  if (!json_is_object(root)) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: not a JSON object", vocab_json);
    goto done;
  }
  if ((rc = str_map_init(&vocab, json_object_size(root))) != 0) goto done;
  const char *key;
  json_t *val;
  json_object_foreach(root, key, val) {
    if (!json_is_integer(val) || json_integer_value(val) < 0 ||
        json_integer_value(val) >= (1 << 30)) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: id of \"%s\" is not a valid token id", vocab_json, key);
      goto done;
    }
    if ((rc = str_map_put(&vocab, key, strlen(key), (int32_t)json_integer_value(val))) != 0)
      goto done;
  }
  if ((rc = read_file(merges_txt, &data, &len)) != 0) goto done;
  if ((rc = check_utf8(data, len, merges_txt)) != 0) goto done;
  lines = malloc(CLIP_MAX_MERGES * sizeof *lines);
  if (!lines) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", merges_txt);
    goto done;
  }
  size_t n_lines = slice_merge_lines(data, lines);
  rc = build(&vocab, lines, n_lines, merges_txt, out);
done:
  json_decref(root);
  str_map_free(&vocab);
  free(data);
  free(lines);
  return rc;
}

static int read_gz(const char *path, char **data, size_t *len) {
  gzFile gz = gzopen(path, "rb");
  if (!gz) return vlm_seterr(errno == ENOENT ? VLM_ENOTFOUND : VLM_EIO, "%s: %s", path,
                             errno ? strerror(errno) : "cannot open");
  size_t cap = 1 << 20, n = 0;
  char *buf = malloc(cap + 1);
  int rc = 0;
  if (!buf) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", path);
    goto done;
  }
  for (;;) {
    if (n == cap) {
      if (cap >= ((size_t)1 << 30)) {
        rc = vlm_seterr(VLM_ETOOBIG, "%s: more than 1 GiB uncompressed", path);
        goto done;
      }
      char *bigger = realloc(buf, cap * 2 + 1);
      if (!bigger) {
        rc = vlm_seterr(VLM_ENOMEM, "%s", path);
        goto done;
      }
      buf = bigger;
      cap *= 2;
    }
    int got = gzread(gz, buf + n, (unsigned)(cap - n));
    if (got < 0) {
      int zerr;
      const char *msg = gzerror(gz, &zerr);
      rc = vlm_seterr(VLM_ECORRUPT, "%s: %s", path, msg);
      goto done;
    }
    if (got == 0) break;
    n += (size_t)got;
  }
done:
  gzclose(gz);
  if (rc) {
    free(buf);
    return rc;
  }
  buf[n] = 0;
  *data = buf;
  *len = n;
  return 0;
}

/* The reference builds the vocabulary from the merges: the 256 byte
 * symbols in bytes_to_unicode order, the same with "</w>", one entry per
 * merge (its two halves joined), then the two special tokens. */
int vlm__tokenizer_load_bpe_gz(const char *bpe_gz, vlm__tokenizer **out) {
  int rc = 0;
  str_map vocab = {0};
  char *data = NULL;
  char **lines = NULL;
  size_t len = 0;
  *out = NULL;
  if ((rc = read_gz(bpe_gz, &data, &len)) != 0) goto done;
  if ((rc = check_utf8(data, len, bpe_gz)) != 0) goto done;
  lines = malloc(CLIP_MAX_MERGES * sizeof *lines);
  if (!lines) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", bpe_gz);
    goto done;
  }
  size_t n_lines = slice_merge_lines(data, lines);
  if ((rc = str_map_init(&vocab, 512 + n_lines + 2)) != 0) goto done;
  char buf[512];
  for (int pass = 0; pass < 2; pass++) {
    for (int b = 0; b < 256; b++) {
      int idx;
      size_t n = vlm_utf8_put(buf, byte_to_cp(b, &idx));
      if (pass) {
        memcpy(buf + n, "</w>", 4);
        n += 4;
      }
      if ((rc = str_map_put(&vocab, buf, n, pass * 256 + idx)) != 0) goto done;
    }
  }
  int32_t next_id = 512;
  for (size_t i = 0; i < n_lines; i++) {
    /* ''.join(merge.split()) */
    size_t n = 0;
    for (const char *p = lines[i]; *p; p++) {
      if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f') continue;
      if (n + 1 >= sizeof buf) {
        rc = vlm_seterr(VLM_EFORMAT, "%s: merge line %zu too long", bpe_gz, i + 2);
        goto done;
      }
      buf[n++] = *p;
    }
    if ((rc = str_map_put(&vocab, buf, n, next_id++)) != 0) goto done;
  }
  if ((rc = str_map_put(&vocab, "<|startoftext|>", 15, next_id++)) != 0) goto done;
  if ((rc = str_map_put(&vocab, "<|endoftext|>", 13, next_id++)) != 0) goto done;
  rc = build(&vocab, lines, n_lines, bpe_gz, out);
done:
  str_map_free(&vocab);
  free(data);
  free(lines);
  return rc;
}

int32_t vlm__tokenizer_bos(const vlm__tokenizer *tok) { return tok->bos; }
int32_t vlm__tokenizer_eos(const vlm__tokenizer *tok) { return tok->eos; }
int vlm__tokenizer_vocab_size(const vlm__tokenizer *tok) { return tok->vocab_size; }

int32_t vlm__tokenizer_lookup(const vlm__tokenizer *tok, const char *piece) {
  return str_map_get(&tok->vocab, piece, strlen(piece));
}

/* ---- text normalization --------------------------------------------- */

/* The `regex` module's \s: the Unicode White_Space property. */
static int is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Python's str.isspace (used by str.strip()): White_Space plus the
 * information separators U+001C..U+001F. */
static int is_py_space(uint32_t c) {
  return is_white_space(c) || (c >= 0x1C && c <= 0x1F);
}

static int is_letter(uint32_t c) {
  utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
  return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

static int is_number(uint32_t c) {
  utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
  return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

typedef struct {
  const char *name;
  uint32_t first, second;
} html_entity;

static const html_entity html_entities[] = {
#include "html_entities.inc"
};

static const html_entity *entity_find(const char *name) {
  size_t lo = 0, hi = sizeof html_entities / sizeof html_entities[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(html_entities[mid].name, name);
    if (c == 0) return &html_entities[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

/* html._invalid_charrefs: numeric references to C1 controls and NUL are
 * read as Windows-1252 (0 = keep the code point itself). */
static const uint16_t cp1252_c1[32] = {
    0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
    0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D,   0x017D, 0x8F,
    0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178};

/* html._invalid_codepoints: references to these are dropped. */
static int html_invalid_codepoint(uint32_t c) {
  return (c >= 0x1 && c <= 0x8) || c == 0xB || (c >= 0xE && c <= 0x1F) ||
         (c >= 0x7F && c <= 0x9F) || (c >= 0xFDD0 && c <= 0xFDEF) ||
         ((c & 0xFFFE) == 0xFFFE && c <= 0x10FFFF);
}

static int is_ascii_digit(uint32_t c) { return c >= '0' && c <= '9'; }
static int is_ascii_hex(uint32_t c) {
  return is_ascii_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
static uint32_t hex_value(uint32_t c) {
  return is_ascii_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* Python's html.unescape.  The output is never longer than the input. */
static size_t html_unescape(const uint32_t *in, size_t n, uint32_t *out) {
  size_t m = 0, i = 0;
  while (i < n) {
    if (in[i] != '&' || i + 1 >= n) {
      out[m++] = in[i++];
      continue;
    }
    size_t p = i + 1;
    if (in[p] == '#') {
      /* &#[0-9]+;?  or  &#[xX][0-9a-fA-F]+;? */
      int hex = p + 1 < n && (in[p + 1] == 'x' || in[p + 1] == 'X');
      size_t d = p + 1 + (size_t)hex, e = d;
      uint64_t num = 0;
      while (e < n && (hex ? is_ascii_hex(in[e]) : is_ascii_digit(in[e]))) {
        num = num * (hex ? 16 : 10) + (hex ? hex_value(in[e]) : in[e] - '0');
        if (num > 0x110000) num = 0x110000; /* saturate: anything past 10FFFF */
        e++;
      }
      if (e == d) { /* no digits: '#' is outside the name class too */
        out[m++] = in[i++];
        continue;
      }
      if (e < n && in[e] == ';') e++;
      uint32_t c = (uint32_t)num;
      if (c == 0) out[m++] = 0xFFFD;
      else if (c == 0x0D) out[m++] = 0x0D;
      else if (c >= 0x80 && c <= 0x9F) out[m++] = cp1252_c1[c - 0x80];
      else if ((c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) out[m++] = 0xFFFD;
      else if (!html_invalid_codepoint(c)) out[m++] = c;
      i = e;
      continue;
    }
    /* [^\t\n\f <&#;]{1,32};? */
    size_t e = p;
    while (e < n && e - p < 32) {
      uint32_t c = in[e];
      if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' ||
          c == '#' || c == ';')
        break;
      e++;
    }
    if (e == p) {
      out[m++] = in[i++];
      continue;
    }
    if (e < n && in[e] == ';') e++;
    /* s = in[p..e); the names are ASCII, so only its ASCII prefix can match */
    char name[40];
    size_t len = e - p, ascii = 0;
    while (ascii < len && in[p + ascii] < 0x80) {
      name[ascii] = (char)in[p + ascii];
      ascii++;
    }
    const html_entity *ent = NULL;
    size_t used = 0;
    if (ascii == len) {
      name[len] = 0;
      ent = entity_find(name);
      used = len;
    }
    for (size_t x = len - 1; !ent && x >= 2; x--) {
      if (x > ascii) continue;
      name[x] = 0;
      ent = entity_find(name);
      used = x;
    }
    if (!ent) { /* unchanged: '&' + s */
      for (size_t k = i; k < e; k++) out[m++] = in[k];
    } else {
      out[m++] = ent->first;
      if (ent->second) out[m++] = ent->second;
      for (size_t k = p + used; k < e; k++) out[m++] = in[k];
    }
    i = e;
  }
  return m;
}

/* whitespace_clean(basic_clean(text)) after unescaping: strip, collapse
 * White_Space runs to ' ', strip.  In place. */
static size_t clean_whitespace(uint32_t *t, size_t n) {
  size_t a = 0, b = n;
  while (a < b && is_py_space(t[a])) a++;
  while (b > a && is_py_space(t[b - 1])) b--;
  size_t m = 0;
  for (size_t i = a; i < b;) {
    if (is_white_space(t[i])) {
      while (i < b && is_white_space(t[i])) i++;
      t[m++] = ' ';
    } else {
      t[m++] = t[i++];
    }
  }
  a = 0;
  b = m;
  while (a < b && is_py_space(t[a])) a++;
  while (b > a && is_py_space(t[b - 1])) b--;
  memmove(t, t + a, (b - a) * sizeof *t);
  return b - a;
}

/* ---- BPE ------------------------------------------------------------ */

typedef struct {
  /* per-word scratch, sized for the longest word */
  int32_t *sym;
  int32_t *next, *prev;
  uint64_t *heap; /* (rank << 32) | position */
  size_t heap_n;
  size_t *batch;
} bpe_scratch;

static void heap_push(bpe_scratch *s, uint64_t v) {
  size_t i = s->heap_n++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (s->heap[parent] <= v) break;
    s->heap[i] = s->heap[parent];
    i = parent;
  }
  s->heap[i] = v;
}

static uint64_t heap_pop(bpe_scratch *s) {
  uint64_t top = s->heap[0], v = s->heap[--s->heap_n];
  size_t i = 0, n = s->heap_n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && s->heap[c + 1] < s->heap[c]) c++;
    if (v <= s->heap[c]) break;
    s->heap[i] = s->heap[c];
    i = c;
  }
  if (n) s->heap[i] = v;
  return top;
}

static void push_pair(const vlm__tokenizer *tok, bpe_scratch *s, int32_t pos) {
  int32_t nx = s->next[pos];
  if (nx < 0) return;
  const merge_slot *m = merge_find(tok, s->sym[pos], s->sym[nx]);
  if (m) heap_push(s, ((uint64_t)(uint32_t)m->rank << 32) | (uint32_t)pos);
}

/* BPE of one pre-token's UTF-8 bytes, as the reference's bpe(): each round
 * takes the lowest-ranked pair present and merges all of its
 * non-overlapping occurrences left to right.  The heap holds candidate
 * pairs; all entries of the round's rank are taken together, in position
 * order, so pairs created during a round wait for the next one, exactly
 * like the reference's rescan.  Appends ids to out (up to cap), returns the
 * number of ids the word has. */
static size_t bpe_word(const vlm__tokenizer *tok, bpe_scratch *s,
                       const unsigned char *bytes, size_t n, int32_t *out,
                       size_t cap) {
  if (n == 1) {
    if (cap) out[0] = tok->byte_end_id[bytes[0]];
    return 1;
  }
  for (size_t i = 0; i < n; i++) {
    s->sym[i] = i + 1 == n ? tok->byte_end_id[bytes[i]] : tok->byte_id[bytes[i]];
    s->next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
    s->prev[i] = (int32_t)i - 1;
  }
  s->heap_n = 0;
  for (size_t i = 0; i + 1 < n; i++) push_pair(tok, s, (int32_t)i);
  while (s->heap_n) {
    uint32_t rank = (uint32_t)(s->heap[0] >> 32);
    size_t nb = 0;
    while (s->heap_n && (uint32_t)(s->heap[0] >> 32) == rank)
      s->batch[nb++] = (size_t)(uint32_t)heap_pop(s);
    for (size_t k = 0; k < nb; k++) {
      int32_t pos = (int32_t)s->batch[k];
      if (s->sym[pos] < 0) continue; /* merged into its left neighbour */
      int32_t nx = s->next[pos];
      if (nx < 0) continue;
      const merge_slot *m = merge_find(tok, s->sym[pos], s->sym[nx]);
      if (!m || (uint32_t)m->rank != rank) continue; /* stale entry */
      s->sym[pos] = m->merged;
      s->sym[nx] = -1;
      s->next[pos] = s->next[nx];
      if (s->next[nx] >= 0) s->prev[s->next[nx]] = pos;
      /* New pairs with the neighbours go to the heap for later rounds;
       * they cannot have this round's rank (their symbols differ). */
      if (s->prev[pos] >= 0) push_pair(tok, s, s->prev[pos]);
      push_pair(tok, s, pos);
    }
  }
  size_t count = 0;
  for (int32_t p = 0; p >= 0; p = s->next[p]) {
    if (count < cap) out[count] = s->sym[p];
    count++;
  }
  return count;
}

/* ---- tokenize ------------------------------------------------------- */

/* Does t[i..] start with the ASCII text lit, letting U+017F stand for 's'
 * (IGNORECASE)?  *exact tells whether no substitution was needed. */
static int match_ci(const uint32_t *t, size_t n, size_t i, const char *lit,
                    int *exact) {
  size_t len = strlen(lit);
  if (n - i < len) return 0;
  *exact = 1;
  for (size_t k = 0; k < len; k++) {
    uint32_t c = t[i + k];
    if (c == (unsigned char)lit[k]) continue;
    if (lit[k] == 's' && c == 0x17F) {
      *exact = 0;
      continue;
    }
    return 0;
  }
  return 1;
}

int vlm__tokenize(const vlm__tokenizer *tok, const char *text,
                  int context_length, int32_t *ids, int max_ids, int *n_ids) {
  int rc = 0;
  uint32_t *a = NULL, *b = NULL;
  unsigned char *word = NULL;
  bpe_scratch s = {0};
  if (n_ids) *n_ids = 0;
  if (!tok || !text || !ids || !n_ids || context_length < 1 || max_ids < 1)
    return vlm_seterr(VLM_EINVAL, "tokenize: bad arguments");
  size_t limit = (size_t)(context_length < max_ids ? context_length : max_ids);
  size_t len = strlen(text);

  /* decode, rejecting invalid UTF-8 with its byte offset */
  a = malloc((len + 1) * sizeof *a);
  b = malloc((2 * len + 1) * sizeof *b);
  if (!a || !b) {
    rc = vlm_seterr(VLM_ENOMEM, "tokenize: %zu bytes of text", len);
    goto done;
  }
  size_t n = 0;
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    size_t k = vlm_utf8_next((const unsigned char *)text + i, len - i, &cp);
    if (!k) {
      rc = vlm_seterr(VLM_EFORMAT, "tokenize: invalid UTF-8 at byte %zu (0x%02x)", i,
                      (unsigned char)text[i]);
      goto done;
    }
    a[n++] = cp;
    i += k;
  }

  n = html_unescape(a, n, b);
  n = html_unescape(b, n, a);
  n = clean_whitespace(a, n);
  n = vlm__py_lower(a, n, b);
  uint32_t *t = b;

  /* body ids: the reference keeps [bos] + body[:limit - 2] + [eos] */
  size_t want = limit >= 2 ? limit - 2 : 0, got = 0;
  int32_t *body = ids + 1;
  word = malloc(4 * n + 1);
  s.sym = malloc((4 * n + 1) * sizeof *s.sym);
  s.next = malloc((4 * n + 1) * sizeof *s.next);
  s.prev = malloc((4 * n + 1) * sizeof *s.prev);
  s.heap = malloc((12 * n + 1) * sizeof *s.heap);
  s.batch = malloc((12 * n + 1) * sizeof *s.batch);
  if (!word || !s.sym || !s.next || !s.prev || !s.heap || !s.batch) {
    rc = vlm_seterr(VLM_ENOMEM, "tokenize: %zu code points", n);
    goto done;
  }
  static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  size_t i = 0;
  while (i < n && got < want) {
    size_t start = i;
    int exact = 1, special = -1;
    if (match_ci(t, n, i, "<|startoftext|>", &exact)) {
      i += 15;
      special = exact ? tok->bos : -1;
    } else if (match_ci(t, n, i, "<|endoftext|>", &exact)) {
      i += 13;
      special = exact ? tok->eos : -1;
    } else {
      size_t k;
      for (k = 0; k < sizeof contractions / sizeof contractions[0]; k++)
        if (match_ci(t, n, i, contractions[k], &exact)) break;
      if (k < sizeof contractions / sizeof contractions[0]) {
        i += strlen(contractions[k]);
      } else if (is_letter(t[i])) {
        while (i < n && is_letter(t[i])) i++;
      } else if (is_number(t[i])) {
        i++;
      } else if (!is_white_space(t[i])) {
        while (i < n && !is_white_space(t[i]) && !is_letter(t[i]) && !is_number(t[i])) i++;
      } else {
        i++; /* whitespace: no alternative matches, findall moves on */
        continue;
      }
    }
    if (special >= 0) {
      body[got++] = special;
      continue;
    }
    size_t nb = 0;
    for (size_t k = start; k < i; k++) nb += vlm_utf8_put((char *)word + nb, t[k]);
    got += bpe_word(tok, &s, word, nb, body + got, want - got) ;
    if (got > want) got = want;
  }
  if (limit == 1) {
    ids[0] = tok->eos;
    *n_ids = 1;
  } else {
    ids[0] = tok->bos;
    ids[1 + got] = tok->eos;
    *n_ids = (int)(got + 2);
  }
done:
  free(a);
  free(b);
  free(word);
  free(s.sym);
  free(s.next);
  free(s.prev);
  free(s.heap);
  free(s.batch);
  return rc;
}
