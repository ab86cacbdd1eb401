/* data_caption.c - captions for clip art from messy SVG metadata.
 *
 * openclipart's metadata was typed by hundreds of people over years:
 * titles are often the author's or the collection's name ("gramastar",
 * "Open Clip Art Library", "Clipart by Nicu Buculei - head1"),
 * descriptions repeat the title or carry an e-mail address, and keywords
 * include tool noise ("hash").  The rules below keep what describes the
 * picture and drop the rest; see vlm_data.h for the list.
 */
#include "vlm_data.h"
#include "vlm_error.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- text primitives ------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1..4), 0 if invalid. */
static int utf8_len(const unsigned char *s) {
  unsigned c = s[0];
  int n;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) n = 2, min = 0x80;
  else if (c >= 0xe0 && c <= 0xef) n = 3, min = 0x800;
  else if (c >= 0xf0 && c <= 0xf4) n = 4, min = 0x10000;
  else return 0;
  unsigned cp = c & (0x3f >> (n - 1));
  for (int i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

int vlm_data_text_normalize(const char *s, char **out) {
  *out = NULL;
  if (!s) return 0;
  size_t n = strlen(s);
  char *r = malloc(n + 1);
  if (!r) return vlm_seterr(VLM_ENOMEM, "normalize %zu bytes", n);
  size_t o = 0;
  int pending_space = 0;
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    /* U+00A0 (no-break space) counts as white space too. */
    if (*p < 0x20 || *p == ' ' || *p == 0x7f || (p[0] == 0xc2 && p[1] == 0xa0)) {
      pending_space = 1;
      p += (*p == 0xc2) ? 2 : 1;
      continue;
    }
    if (pending_space && o > 0) r[o++] = ' ';
    pending_space = 0;
    int len = utf8_len(p);
    if (len == 0) {
      r[o++] = '?';
      p++;
      continue;
    }
    memcpy(r + o, p, (size_t)len);
    o += (size_t)len;
    p += len;
  }
  r[o] = 0;
  *out = r;
  return 0;
}

static int is_space_byte(char c) { return c == ' '; }

/* Token that is a URL, an e-mail address or a Perl "HASH(0x...)". */
static int is_noise_token(const char *t, size_t n) {
  char buf[64];
  size_t m = n < sizeof buf - 1 ? n : sizeof buf - 1;
  for (size_t i = 0; i < m; i++) buf[i] = (char)tolower((unsigned char)t[i]);
  buf[m] = 0;
  const char *b = buf;
  while (*b == '(' || *b == '[' || *b == '<' || *b == '"' || *b == '\'') b++;
  if (!strncmp(b, "http:", 5) || !strncmp(b, "https:", 6) ||
      !strncmp(b, "ftp:", 4) || !strncmp(b, "www.", 4) ||
      !strncmp(b, "mailto:", 7) || !strncmp(b, "hash(0x", 7))
    return 1;
  if (memmem(t, n, "://", 3)) return 1;
  const char *at = memchr(t, '@', n);
  if (at && at > t && memchr(at, '.', n - (size_t)(at - t))) return 1;
  return 0;
}

static int is_edge_punct(char c) {
  return c == ' ' || c == '-' || c == ':' || c == ';' || c == ',' ||
         c == '/' || c == '|' || c == '(' || c == '[' || c == '_';
}

/* Encode code point cp as UTF-8 into out (4 bytes room); the length. */
static int utf8_put(unsigned cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | cp >> 6);
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | cp >> 12);
    out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | cp >> 18);
  out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
  out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* Decode HTML entities left in the text by double escaping ("B &amp;amp;
 * W" in the file is "B &amp; W" after XML parsing), in place: the named
 * five and numeric ones.  Never lengthens the string. */
static void decode_entities(char *s) {
  static const struct { const char *name; char c; } named[] = {
      {"amp;", '&'}, {"lt;", '<'}, {"gt;", '>'}, {"quot;", '"'}, {"apos;", '\''}};
  char *w = s;
  for (const char *r = s; *r;) {
    if (*r == '&') {
      int done = 0;
      for (size_t i = 0; i < sizeof named / sizeof named[0] && !done; i++) {
        size_t n = strlen(named[i].name);
        if (!strncmp(r + 1, named[i].name, n)) {
          *w++ = named[i].c;
          r += 1 + n;
          done = 1;
        }
      }
      if (!done && r[1] == '#') {
        int hex = r[2] == 'x' || r[2] == 'X';
        const char *d = r + 2 + hex;
        unsigned long cp = 0;
        int nd = 0;
        while (nd < 7 && (hex ? isxdigit((unsigned char)*d) : isdigit((unsigned char)*d))) {
          cp = cp * (hex ? 16 : 10) +
               (unsigned long)(isdigit((unsigned char)*d) ? *d - '0' : (tolower((unsigned char)*d) - 'a' + 10));
          d++, nd++;
        }
        /* Only when the encoding is at least as long as the UTF-8. */
        int len = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        if (nd && *d == ';' && cp > 0 && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) &&
            (d + 1 - r) >= len) {
          w += utf8_put((unsigned)cp, w);
          r = d + 1;
          done = 1;
        }
      }
      if (done) continue;
    }
    *w++ = *r++;
  }
  *w = 0;
}

/* Normalize s, decode stray entities, drop noise tokens and dangling
 * punctuation at both ends.  *out is NULL when nothing is left. */
static int clean_text(const char *s, char **out) {
  *out = NULL;
  char *decoded = strdup(s);
  if (!decoded) return vlm_seterr(VLM_ENOMEM, "clean text");
  decode_entities(decoded);
  decode_entities(decoded);   /* "&amp;amp;" was escaped twice */
  char *norm;
  int rc = vlm_data_text_normalize(decoded, &norm);
  free(decoded);
  if (rc || !norm) return rc;
  size_t n = strlen(norm), o = 0;
  char *r = malloc(n + 1);
  if (!r) {
    free(norm);
    return vlm_seterr(VLM_ENOMEM, "clean text");
  }
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && !is_space_byte(norm[j])) j++;
    if (!is_noise_token(norm + i, j - i)) {
      if (o) r[o++] = ' ';
      memcpy(r + o, norm + i, j - i);
      o += j - i;
    }
    i = j + 1;
  }
  r[o] = 0;
  free(norm);
  size_t start = 0;
  while (r[start] && is_edge_punct(r[start]) && r[start] != '(' && r[start] != '[')
    start++;
  while (o > start && is_edge_punct(r[o - 1])) r[--o] = 0;
  /* "()" or "[]" left by a removed URL. */
  if (o >= start + 2 && (r[o - 1] == ')' || r[o - 1] == ']') &&
      (r[o - 2] == '(' || r[o - 2] == '[')) {
    o -= 2;
    while (o > start && is_edge_punct(r[o - 1])) o--;
    r[o] = 0;
  }
  if (start) memmove(r, r + start, o - start + 1);
  if (!*r) {
    free(r);
    r = NULL;
  }
  *out = r;
  return 0;
}

/* ASCII letters and digits lower-cased, non-ASCII bytes kept, everything
 * else one space: "Ice-Cream (3 Scoop)" -> "ice cream 3 scoop".  For
 * comparisons only. */
static char *fold(const char *s) {
  if (!s) s = "";
  size_t n = strlen(s), o = 0;
  char *r = malloc(n + 1);
  if (!r) return NULL;
  int space = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (isalnum(c) || c >= 0x80) {
      if (space && o) r[o++] = ' ';
      space = 0;
      r[o++] = (char)tolower(c);
    } else {
      space = 1;
    }
  }
  r[o] = 0;
  return r;
}

/* 1 if needle (folded, non-empty) occurs in hay (folded) as whole words. */
static int has_phrase(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  if (!n) return 0;
  for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) {
    int left = p == hay || p[-1] == ' ';
    int right = p[n] == 0 || p[n] == ' ';
    if (left && right) return 1;
  }
  return 0;
}

static int count_letters(const char *s) {
  int n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (isalpha(*p) || *p >= 0xc0) n++;
  return n;
}

/* ---- boilerplate counts ---------------------------------------------- */

typedef struct {
  char *text;   /* folded; NULL = empty slot */
  int titles, descriptions;
} bp_slot;

struct vlm_data_boilerplate {
  int min_titles, min_descriptions;
  size_t cap, used;
  bp_slot *slots;
};

int vlm_data_boilerplate_new(int min_titles, int min_descriptions,
                             vlm_data_boilerplate **out) {
  *out = NULL;
  vlm_data_boilerplate *bp = calloc(1, sizeof *bp);
  if (!bp) return vlm_seterr(VLM_ENOMEM, "boilerplate table");
  bp->min_titles = min_titles;
  bp->min_descriptions = min_descriptions;
  bp->cap = 1024;
  bp->slots = calloc(bp->cap, sizeof *bp->slots);
  if (!bp->slots) {
    free(bp);
    return vlm_seterr(VLM_ENOMEM, "boilerplate table");
  }
  *out = bp;
  return 0;
}

void vlm_data_boilerplate_free(vlm_data_boilerplate *bp) {
  if (!bp) return;
  for (size_t i = 0; i < bp->cap; i++) free(bp->slots[i].text);
  free(bp->slots);
  free(bp);
}

static bp_slot *bp_find(bp_slot *slots, size_t cap, const char *key) {
  size_t h = (size_t)vlm_data_fnv1a64(key, strlen(key)) & (cap - 1);
  while (slots[h].text && strcmp(slots[h].text, key)) h = (h + 1) & (cap - 1);
  return &slots[h];
}

static int bp_grow(vlm_data_boilerplate *bp) {
  size_t cap = bp->cap * 2;
  bp_slot *slots = calloc(cap, sizeof *slots);
  if (!slots) return vlm_seterr(VLM_ENOMEM, "boilerplate table");
  for (size_t i = 0; i < bp->cap; i++)
    if (bp->slots[i].text) *bp_find(slots, cap, bp->slots[i].text) = bp->slots[i];
  free(bp->slots);
  bp->slots = slots;
  bp->cap = cap;
  return 0;
}

/* The table's key of a text: cleaned, then folded; NULL if empty. */
static int bp_key(const char *text, char **out) {
  *out = NULL;
  char *clean;
  int rc = clean_text(text, &clean);
  if (rc || !clean) return rc;
  char *key = fold(clean);
  free(clean);
  if (!key) return vlm_seterr(VLM_ENOMEM, "boilerplate key");
  if (!*key) {
    free(key);
    return 0;
  }
  *out = key;
  return 0;
}

static int bp_add_text(vlm_data_boilerplate *bp, const char *text, int is_title) {
  char *key;
  int rc = bp_key(text, &key);
  if (rc || !key) return rc;
  if ((bp->used + 1) * 2 > bp->cap && (rc = bp_grow(bp))) {
    free(key);
    return rc;
  }
  bp_slot *slot = bp_find(bp->slots, bp->cap, key);
  if (slot->text) {
    free(key);
  } else {
    slot->text = key;
    bp->used++;
  }
  if (is_title) slot->titles++;
  else slot->descriptions++;
  return 0;
}

int vlm_data_boilerplate_add(vlm_data_boilerplate *bp,
                             const vlm_data_svg_meta *meta) {
  int rc = 0;
  if (meta->title) rc = bp_add_text(bp, meta->title, 1);
  if (!rc && meta->description) rc = bp_add_text(bp, meta->description, 0);
  return rc;
}

static const bp_slot *bp_lookup(const vlm_data_boilerplate *bp, const char *text) {
  if (!bp || !text) return NULL;
  char *key;
  if (bp_key(text, &key) || !key) return NULL;
  const bp_slot *slot = bp_find(bp->slots, bp->cap, key);
  free(key);
  return slot->text ? slot : NULL;
}

int vlm_data_boilerplate_titles(const vlm_data_boilerplate *bp, const char *text) {
  const bp_slot *slot = bp_lookup(bp, text);
  return slot ? slot->titles : 0;
}

int vlm_data_boilerplate_descriptions(const vlm_data_boilerplate *bp,
                                      const char *text) {
  const bp_slot *slot = bp_lookup(bp, text);
  return slot ? slot->descriptions : 0;
}

/* ---- the caption's parts --------------------------------------------- */

/* Titles that name a collection, a tool or nobody, never the picture. */
static int is_generic_title(const char *folded, const char *creator_folded) {
  static const char *const prefixes[] = {
      "clipart by ", "clip art by ", "part of ", "open clip art", "svg ",
      "created with ", "made with ", "drawn by ", NULL};
  static const char *const words[] = {
      "collection", "theme", "clipart", "openclipart", "public domain",
      "various", "untitled", "inkscape", NULL};
  static const char *const whole[] = {
      "image", "drawing", "svg", "title", "new document", "layer 1",
      "picture", "icon", "logo", "clip art", NULL};
  for (int i = 0; prefixes[i]; i++)
    if (!strncmp(folded, prefixes[i], strlen(prefixes[i]))) return 1;
  for (int i = 0; words[i]; i++)
    if (has_phrase(folded, words[i])) return 1;
  for (int i = 0; whole[i]; i++)
    if (!strcmp(folded, whole[i])) return 1;
  return creator_folded && *creator_folded && !strcmp(folded, creator_folded);
}

static int is_digits(const char *s, size_t n) {
  if (!n) return 0;
  for (size_t i = 0; i < n; i++)
    if (!isdigit((unsigned char)s[i])) return 0;
  return 1;
}

/* 1 if tok (length n, lower case) is a prefix of a word of the folded
 * creator name: file names carry the author truncated ("_benji_pa_01"). */
static int is_creator_piece(const char *tok, size_t n, const char *creator_folded) {
  if (!creator_folded) return 0;
  const char *w = creator_folded;
  while (*w) {
    size_t len = strcspn(w, " ");
    if (n <= len && !strncmp(w, tok, n)) return 1;
    w += len;
    while (*w == ' ') w++;
  }
  return 0;
}

/* "arrow-left-blue_benji_pa_01" by "Benji Park" -> "arrow left blue". */
static int name_from_stem(const char *stem, const char *creator_folded,
                          char **out) {
  *out = NULL;
  if (!stem) return 0;
  char *lower = fold(stem);     /* separators become spaces */
  if (!lower) return vlm_seterr(VLM_ENOMEM, "stem");
  /* Token boundaries. */
  size_t starts[64], lens[64];
  int ntok = 0;
  for (char *p = lower; *p && ntok < 64;) {
    size_t len = strcspn(p, " ");
    starts[ntok] = (size_t)(p - lower);
    lens[ntok++] = len;
    p += len;
    while (*p == ' ') p++;
  }
  int keep = ntok;
  while (keep > 0 && is_digits(lower + starts[keep - 1], lens[keep - 1])) keep--;
  int before_creator = keep;
  while (keep > 1 &&
         is_creator_piece(lower + starts[keep - 1], lens[keep - 1], creator_folded))
    keep--;
  /* Never strip the whole name away as "author". */
  if (keep == 0) keep = before_creator;
  while (keep > 1 && is_digits(lower + starts[keep - 1], lens[keep - 1])) keep--;
  if (keep == 0) {
    free(lower);
    return 0;
  }
  size_t end = starts[keep - 1] + lens[keep - 1];
  /* "home15" -> "home" (but keep "4x4" and pure numbers). */
  size_t last = starts[keep - 1];
  size_t d = end;
  while (d > last && isdigit((unsigned char)lower[d - 1])) d--;
  if (d > last && d < end && isalpha((unsigned char)lower[d - 1])) end = d;
  lower[end] = 0;
  *out = lower;
  return 0;
}

/* Cut s (in place) to at most max bytes: at the end of the first sentence
 * when that is long enough, else at the last space. */
static void cut_text(char *s, size_t max) {
  size_t n = strlen(s);
  if (n <= max) return;
  for (size_t i = 20; i < max; i++)
    if ((s[i] == '.' || s[i] == '!' || s[i] == '?') && s[i + 1] == ' ') {
      s[i + 1] = 0;
      return;
    }
  size_t cut = max;
  while (cut > 0 && s[cut] != ' ') cut--;
  if (cut == 0) {
    cut = max;   /* one huge word: cut at a UTF-8 boundary */
    while (cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80) cut--;
  }
  s[cut] = 0;
  while (cut > 0 && is_edge_punct(s[cut - 1])) s[--cut] = 0;
}

static const char *const filler_keywords[] = {
    "hash", "clipart", "clip art", "clip-art", "openclipart", "open clip art",
    "svg", "png", "image", "images", "inkscape", "picture", "drawing",
    "public domain", "media", "externalsource", "remix", "unsorted",
    "how i did it", NULL};

static int keyword_clean(const char *raw, char **out) {
  *out = NULL;
  char *kw;
  int rc = clean_text(raw, &kw);
  if (rc || !kw) return rc;
  for (char *p = kw; *p; p++) {
    if (*p == '_') *p = ' ';
    else *p = (char)tolower((unsigned char)*p);
  }
  char *norm;
  rc = clean_text(kw, &norm);   /* spaces from '_' collapsed, ends trimmed */
  free(kw);
  if (rc || !norm) return rc;
  size_t n = strlen(norm);
  int drop = n > 32 || is_digits(norm, n) || count_letters(norm) < 2;
  for (int i = 0; !drop && filler_keywords[i]; i++)
    drop = !strcmp(norm, filler_keywords[i]);
  if (drop) {
    free(norm);
    return 0;
  }
  *out = norm;
  return 0;
}

/* Append part to buf (capacity cap) with the separator a caption wants. */
static void append_part(char *buf, size_t cap, const char *part, const char *sep) {
  size_t n = strlen(buf);
  if (n && n + strlen(sep) < cap) {
    char last = buf[n - 1];
    if (!strcmp(sep, ". ") && (last == '.' || last == '!' || last == '?'))
      sep = " ";
    strcat(buf, sep);
    n = strlen(buf);
  }
  size_t room = cap - 1 - n;
  size_t len = strlen(part);
  if (len <= room) {
    memcpy(buf + n, part, len + 1);
    return;
  }
  /* Cut at a space (or ", ") so no word or UTF-8 sequence is split. */
  size_t cut = room;
  while (cut > 0 && part[cut] != ' ') cut--;
  memcpy(buf + n, part, cut);
  buf[n + cut] = 0;
  n += cut;
  while (n > 0 && is_edge_punct(buf[n - 1])) buf[--n] = 0;
}

void vlm_data_caption_free(vlm_data_caption *c) {
  if (!c) return;
  free(c->text);
  free(c->name);
  free(c->description);
  free(c->author);
  for (int i = 0; i < c->nkeywords; i++) free(c->keywords[i]);
  free(c->keywords);
  memset(c, 0, sizeof *c);
}

/* Descriptions that credit, license or file the work instead of
 * describing it. */
static int is_generic_description(const char *folded) {
  static const char *const prefixes[] = {
      "data from", "created by", "drawn by", "made by", "designed by",
      "image from", "source", "contact", "thanks to", "converted from",
      "eps converted", "part of", "released", "this work", "copyright",
      "created with", "made with", "drawn with", "done with", "from the ",
      NULL};
  static const char *const words[] = {
      "public domain", "collection", "copyright", "license", "licence",
      "creative commons", "openclipart", "open clip art", NULL};
  for (int i = 0; prefixes[i]; i++)
    if (!strncmp(folded, prefixes[i], strlen(prefixes[i]))) return 1;
  for (int i = 0; words[i]; i++)
    if (has_phrase(folded, words[i])) return 1;
  return 0;
}

/* A name with a word of three letters or more says something. */
static int has_word(const char *s) {
  int run = 0;
  for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
    run = (isalpha(*p) || *p >= 0x80) ? run + 1 : 0;
    if (run >= 3) return 1;
  }
  return 0;
}

/* Titles typed as identifiers: "tennis_racket" -> "tennis racket". */
static void underscores_to_spaces(char *s) {
  if (!s) return;
  for (char *p = s; *p; p++)
    if (*p == '_') *p = ' ';
  char *clean;
  if (clean_text(s, &clean) == 0 && clean) {
    strcpy(s, clean);   /* never longer */
    free(clean);
  }
}

int vlm_data_caption_build(const vlm_data_svg_meta *meta, const char *stem,
                           const char *fallback,
                           const vlm_data_boilerplate *bp,
                           vlm_data_caption *out) {
  memset(out, 0, sizeof *out);
  int rc = 0;
  char *creator_folded = NULL, *title = NULL, *name_folded = NULL,
       *desc_folded = NULL, *context = NULL, *stem_name = NULL;

  if (meta->creator && (rc = clean_text(meta->creator, &out->author))) goto fail;
  creator_folded = fold(out->author);
  if (!creator_folded) goto nomem;
  if ((rc = name_from_stem(stem, creator_folded, &stem_name))) goto fail;

  /* The name: the work's title, the SVG <title>, or the file name.  A
   * title that is merely frequent ("card", "stick man") still beats a
   * file name with no word in it ("sm_01"). */
  if (meta->title && (rc = clean_text(meta->title, &title))) goto fail;
  if (title) {
    underscores_to_spaces(title);
    char *f = fold(title);
    if (!f) goto nomem;
    int generic = !*f || is_generic_title(f, creator_folded) || count_letters(title) < 2;
    int frequent = bp && vlm_data_boilerplate_titles(bp, title) >= bp->min_titles;
    free(f);
    if (!generic && (!frequent || !has_word(stem_name))) {
      out->name = title;
      title = NULL;
      out->name_source = VLM_DATA_NAME_TITLE;
    }
  }
  if (!out->name && meta->svg_title) {
    char *t;
    if ((rc = clean_text(meta->svg_title, &t))) goto fail;
    char *f = t ? fold(t) : NULL;
    if (t && !f) {
      free(t);
      goto nomem;
    }
    /* Group titles in drawings are ids ("n44", "g"): want several words. */
    if (t && strchr(f, ' ') && !is_generic_title(f, creator_folded) &&
        count_letters(t) >= 3) {
      out->name = t;
      out->name_source = VLM_DATA_NAME_SVG_TITLE;
    } else {
      free(t);
    }
    free(f);
  }
  if (!out->name && stem_name) {
    out->name = stem_name;
    stem_name = NULL;
    out->name_source = VLM_DATA_NAME_STEM;
  }
  name_folded = fold(out->name);
  if (!name_folded) goto nomem;

  /* The description. */
  if (meta->description) {
    char *d;
    if ((rc = clean_text(meta->description, &d))) goto fail;
    if (d) {
      char *f = fold(d);
      if (!f) {
        free(d);
        goto nomem;
      }
      char *title_folded = fold(meta->title);
      int drop = !title_folded || count_letters(d) < 3 || is_generic_description(f) ||
                 (bp && vlm_data_boilerplate_descriptions(bp, d) >= bp->min_descriptions) ||
                 !strcmp(f, creator_folded) ||
                 (*title_folded && has_phrase(title_folded, f)) ||
                 has_phrase(name_folded, f);
      free(title_folded);
      free(f);
      if (drop) {
        free(d);
      } else {
        cut_text(d, VLM_DATA_DESCRIPTION_MAX);
        out->description = d;
      }
    }
  }
  desc_folded = fold(out->description);
  if (!desc_folded) goto nomem;
  /* A description that already says the name makes the name redundant. */
  int name_in_desc = *name_folded && has_phrase(desc_folded, name_folded);

  /* Keywords: all cleaned ones kept in out->keywords. */
  if (meta->nkeywords) {
    out->keywords = calloc((size_t)meta->nkeywords, sizeof *out->keywords);
    if (!out->keywords) goto nomem;
  }
  for (int i = 0; i < meta->nkeywords; i++) {
    char *kw;
    if ((rc = keyword_clean(meta->keywords[i], &kw))) goto fail;
    if (!kw) continue;
    char *kw_folded = fold(kw);
    if (!kw_folded) {
      free(kw);
      goto nomem;
    }
    int dup = !strcmp(kw_folded, creator_folded);   /* the author's name */
    free(kw_folded);
    for (int j = 0; j < out->nkeywords && !dup; j++)
      dup = !strcmp(out->keywords[j], kw);
    if (dup) free(kw);
    else out->keywords[out->nkeywords++] = kw;
  }

  /* Assemble. */
  char buf[VLM_DATA_CAPTION_MAX + 1];
  buf[0] = 0;
  if (out->name && !name_in_desc) append_part(buf, sizeof buf, out->name, ". ");
  if (out->description) append_part(buf, sizeof buf, out->description, ". ");
  size_t ctx_len = strlen(name_folded) + strlen(desc_folded) + 2;
  context = malloc(ctx_len);
  if (!context) goto nomem;
  snprintf(context, ctx_len, "%s %s", name_folded, desc_folded);
  char kwbuf[VLM_DATA_CAPTION_MAX + 1];
  kwbuf[0] = 0;
  int nkw = 0;
  for (int i = 0; i < out->nkeywords && nkw < VLM_DATA_CAPTION_KEYWORDS; i++) {
    char *f = fold(out->keywords[i]);
    if (!f) goto nomem;
    int known = has_phrase(context, f);
    free(f);
    if (known) continue;
    if (strlen(kwbuf) + strlen(out->keywords[i]) + 2 > VLM_DATA_CAPTION_MAX) break;
    if (nkw++) strcat(kwbuf, ", ");
    strcat(kwbuf, out->keywords[i]);
  }
  if (nkw) append_part(buf, sizeof buf, kwbuf, ". ");
  if (!buf[0]) {
    const char *fb = fallback && *fallback ? fallback : "clip art";
    append_part(buf, sizeof buf, fb, "");
  }
  out->text = strdup(buf);
  if (!out->text) goto nomem;

  out->usable = out->name_source == VLM_DATA_NAME_TITLE ||
                out->name_source == VLM_DATA_NAME_SVG_TITLE ||
                out->description != NULL ||
                (out->name_source == VLM_DATA_NAME_STEM && has_word(out->name));
  goto done;

nomem:
  rc = vlm_seterr(VLM_ENOMEM, "caption of %s", stem ? stem : "?");
fail:
  vlm_data_caption_free(out);
done:
  free(creator_folded);
  free(title);
  free(stem_name);
  free(name_folded);
  free(desc_folded);
  free(context);
  return rc;
}
