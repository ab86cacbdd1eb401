/* fts_cjk.c - the vlm_cjk FTS5 tokenizer: CJK text as character bigrams.
 *
 * FTS5's unicode61 tokenizer takes a run of letters as one token, and
 * Chinese and Japanese put no spaces between words, so a whole CJK
 * sentence was one token and BM25 never matched a word inside it.
 * vlm_cjk cuts the text into runs of CJK characters (Han, Hiragana,
 * Katakana, Hangul; see vlm__cjk_char) and the rest:
 *
 *   - the rest goes, run by run, to a unicode61 tokenizer created with the
 *     same arguments (through fts5_api's xFindTokenizer), so its folding,
 *     diacritics and separators are unicode61's own, unchanged;
 *   - a CJK run of n >= 2 characters becomes its n - 1 overlapping
 *     bigrams, one position each (东京塔 -> 东京 京塔); a lone character is
 *     one unigram.  In documents (not in queries) every character of a
 *     run is also emitted as a unigram colocated with the bigram it
 *     starts (the last with the last bigram), so a query of one character
 *     (猫, 犬, 강) finds it inside a sentence too; colocated tokens take no
 *     position, so phrases and document lengths count bigrams only.
 *
 * Hangul words are space-separated, so a Korean word is its own run; its
 * bigrams still match it inside a longer word (서울 in 서울은).
 *
 * The tokenizer is registered for every SQLite connection of the process
 * (sqlite3_auto_extension, from vlm__sql_vfs's one-time setup), so every
 * connection that can open meta.sqlite can read a table that names it.
 */
#include "db_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

int vlm__cjk_char(uint32_t c) {
  return (c >= 0x3400 && c <= 0x4DBF) ||   /* Han extension A */
         (c >= 0x4E00 && c <= 0x9FFF) ||   /* Han */
         (c >= 0xF900 && c <= 0xFAFF) ||   /* Han compatibility */
         (c >= 0x20000 && c <= 0x3134F) || /* Han extensions B-H */
         c == 0x3005 || c == 0x3007 ||     /* 々 〇 */
         (c >= 0x3040 && c <= 0x309F) ||   /* Hiragana */
         (c >= 0x30A0 && c <= 0x30FF) ||   /* Katakana (ー included) */
         (c >= 0x31F0 && c <= 0x31FF) ||   /* Katakana phonetic extensions */
         (c >= 0xFF66 && c <= 0xFF9F) ||   /* halfwidth Katakana */
         (c >= 0x1100 && c <= 0x11FF) ||   /* Hangul Jamo */
         (c >= 0x3130 && c <= 0x318F) ||   /* Hangul compatibility Jamo */
         (c >= 0xA960 && c <= 0xA97F) ||   /* Hangul Jamo extended A */
         (c >= 0xAC00 && c <= 0xD7AF) ||   /* Hangul syllables */
         (c >= 0xD7B0 && c <= 0xD7FF);     /* Hangul Jamo extended B */
}

int vlm__utf8_next(const char *s, int n, int i, uint32_t *cp) {
  const unsigned char *p = (const unsigned char *)s + i;
  int left = n - i, len;
  uint32_t c;
  if (p[0] < 0x80) {
    *cp = p[0];
    return 1;
  }
  if (p[0] >= 0xC2 && p[0] <= 0xDF)
    len = 2, c = p[0] & 0x1F;
  else if (p[0] >= 0xE0 && p[0] <= 0xEF)
    len = 3, c = p[0] & 0x0F;
  else if (p[0] >= 0xF0 && p[0] <= 0xF4)
    len = 4, c = p[0] & 0x07;
  else
    goto bad;
  if (left < len)
    goto bad;
  for (int k = 1; k < len; k++) {
    if ((p[k] & 0xC0) != 0x80)
      goto bad;
    c = (c << 6) | (p[k] & 0x3F);
  }
  if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
      (c >= 0xD800 && c <= 0xDFFF))
    goto bad;
  *cp = c;
  return len;
bad:
  *cp = 0xFFFD; /* one invalid byte: not CJK, unicode61's to judge */
  return 1;
}

/* ---- the tokenizer ------------------------------------------------------ */

typedef struct {
  fts5_tokenizer base; /* unicode61's methods */
  Fts5Tokenizer *inner;
} cjk_tok;

static int cjk_create(void *api_ptr, const char **argv, int argc,
                      Fts5Tokenizer **out) {
  fts5_api *api = api_ptr;
  void *ud = NULL;
  cjk_tok *t = calloc(1, sizeof *t);
  *out = NULL;
  if (!t)
    return SQLITE_NOMEM;
  int rc = api->xFindTokenizer(api, "unicode61", &ud, &t->base);
  if (rc == SQLITE_OK)
    rc = t->base.xCreate(ud, argv, argc, &t->inner);
  if (rc != SQLITE_OK) {
    free(t);
    return rc;
  }
  *out = (Fts5Tokenizer *)t;
  return SQLITE_OK;
}

static void cjk_delete(Fts5Tokenizer *p) {
  cjk_tok *t = (cjk_tok *)p;
  if (t) {
    t->base.xDelete(t->inner);
    free(t);
  }
}

typedef int (*token_fn)(void *ctx, int flags, const char *token, int n,
                        int start, int end);

/* unicode61's tokens of a substring, offsets moved back to the text's */
typedef struct {
  void *ctx;
  token_fn emit;
  int off;
} shifted;

static int shift_token(void *p, int flags, const char *token, int n,
                       int start, int end) {
  shifted *s = p;
  return s->emit(s->ctx, flags, token, n, start + s->off, end + s->off);
}

/* The tokens of one CJK run text[a .. b) of nchar characters. */
static int cjk_run(void *ctx, int flags, const char *text, int a, int b,
                   token_fn emit) {
  int colocate = (flags & FTS5_TOKENIZE_QUERY) == 0;
  uint32_t cp;
  int first = vlm__utf8_next(text, b, a, &cp);
  if (a + first >= b) /* one character */
    return emit(ctx, 0, text + a, first, a, b);
  int rc = SQLITE_OK;
  for (int i = a; i < b && rc == SQLITE_OK;) {
    int l1 = vlm__utf8_next(text, b, i, &cp);
    int j = i + l1;
    if (j >= b) { /* the last character: a unigram with the last bigram */
      if (colocate)
        rc = emit(ctx, FTS5_TOKEN_COLOCATED, text + i, l1, i, j);
      break;
    }
    int l2 = vlm__utf8_next(text, b, j, &cp);
    rc = emit(ctx, 0, text + i, l1 + l2, i, j + l2);
    if (rc == SQLITE_OK && colocate)
      rc = emit(ctx, FTS5_TOKEN_COLOCATED, text + i, l1, i, j);
    i = j;
  }
  return rc;
}

static int cjk_tokenize(Fts5Tokenizer *p, void *ctx, int flags,
                        const char *text, int n, token_fn emit) {
  cjk_tok *t = (cjk_tok *)p;
  int rc = SQLITE_OK, i = 0;
  while (i < n && rc == SQLITE_OK) {
    uint32_t cp;
    int len = vlm__utf8_next(text, n, i, &cp), cjk = vlm__cjk_char(cp);
    int j = i + len;
    while (j < n) {
      len = vlm__utf8_next(text, n, j, &cp);
      if (vlm__cjk_char(cp) != cjk)
        break;
      j += len;
    }
    if (cjk) {
      rc = cjk_run(ctx, flags, text, i, j, emit);
    } else {
      shifted s = {ctx, emit, i};
      rc = t->base.xTokenize(t->inner, &s, flags, text + i, j - i,
                             shift_token);
    }
    i = j;
  }
  return rc;
}

/* ---- registration ------------------------------------------------------- */

static fts5_api *fts5_of(sqlite3 *db) {
  fts5_api *api = NULL;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, "SELECT fts5(?1)", -1, &st, NULL) == SQLITE_OK) {
    sqlite3_bind_pointer(st, 1, (void *)&api, "fts5_api_ptr", NULL);
    sqlite3_step(st);
  }
  sqlite3_finalize(st);
  return api;
}

int vlm__fts_cjk_register(sqlite3 *db) {
  fts5_api *api = fts5_of(db);
  if (!api || api->iVersion < 2)
    return SQLITE_ERROR;
  fts5_tokenizer methods = {cjk_create, cjk_delete, cjk_tokenize};
  return api->xCreateTokenizer(api, VLM__FTS_CJK, api, &methods, NULL);
}

static int cjk_entry(sqlite3 *db, char **err,
                     const struct sqlite3_api_routines *routines) {
  (void)routines;
  int rc = vlm__fts_cjk_register(db);
  if (rc != SQLITE_OK && err)
    *err = sqlite3_mprintf("cannot register the " VLM__FTS_CJK
                           " tokenizer");
  return rc;
}

static pthread_once_t auto_once = PTHREAD_ONCE_INIT;

static void auto_reg(void) {
  sqlite3_auto_extension((void (*)(void))cjk_entry);
}

void vlm__fts_cjk_auto(void) { pthread_once(&auto_once, auto_reg); }
