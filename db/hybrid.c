/* hybrid.c - BM25 over captions (SQLite FTS5) for hybrid search.
 *
 * The query text is never handed to FTS5's query syntax as is: it is cut
 * into words (runs of letters, digits and non-ASCII bytes; CJK runs into
 * bigrams where the captions use vlm_cjk, fts_cjk.c), each word is
 * quoted as an FTS5 string and the words are OR-ed, so any user text is a
 * valid query and BM25 ranks captions by how many and how rare the shared
 * words are; vlm__fuse_rrf fuses that ranking with the vector ranking
 * (reciprocal rank fusion) for the planner.
 */
#include "db_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* Append one quoted FTS5 string, OR-ed to what is there. */
static char *put_term(char *p, int *terms, const char *t, size_t n) {
  if ((*terms)++)
    p += sprintf(p, " OR ");
  *p++ = '"';
  memcpy(p, t, n);
  p += n;
  *p++ = '"';
  return p;
}

/* The query text as OR-ed FTS5 strings: each word (a run of letters,
 * digits and non-ASCII bytes).  With cjk (captions tokenized by vlm_cjk),
 * a CJK run inside a word gives each of its overlapping bigrams as a term
 * of its own (a lone character: itself), as a space would give words, so
 * BM25 ranks by the bigrams shared rather than asking for the whole run
 * as one phrase. */
static char *fts_query(const char *text, int cjk) {
  size_t n = strlen(text);
  char *out = malloc(n * 6 + 16), *p = out;
  int terms = 0;
  if (!out)
    return NULL;
  for (size_t i = 0; i < n;) {
    unsigned char c = (unsigned char)text[i];
    if (!(isalnum(c) || c >= 0x80)) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < n && (isalnum((unsigned char)text[j]) ||
                     (unsigned char)text[j] >= 0x80))
      j++;
    if (!cjk) {
      p = put_term(p, &terms, text + i, j - i);
      i = j;
      continue;
    }
    /* the word's CJK and other runs */
    while (i < j) {
      uint32_t cp;
      int len = vlm__utf8_next(text, (int)j, (int)i, &cp);
      int is_cjk = vlm__cjk_char(cp);
      size_t e = i + (size_t)len;
      while (e < j) {
        len = vlm__utf8_next(text, (int)j, (int)e, &cp);
        if (vlm__cjk_char(cp) != is_cjk)
          break;
        e += (size_t)len;
      }
      if (!is_cjk) {
        p = put_term(p, &terms, text + i, e - i);
      } else {
        size_t a = i;
        int l1 = vlm__utf8_next(text, (int)e, (int)a, &cp);
        if (a + (size_t)l1 >= e)
          p = put_term(p, &terms, text + a, (size_t)l1);
        while (a + (size_t)l1 < e) {
          int l2 = vlm__utf8_next(text, (int)e, (int)(a + (size_t)l1), &cp);
          p = put_term(p, &terms, text + a, (size_t)(l1 + l2));
          a += (size_t)l1;
          l1 = l2;
        }
      }
      i = e;
    }
  }
  *p = '\0';
  if (!terms) {
    free(out);
    return strdup("");
  }
  return out;
}

/* 1 when the captions table's tokenizer is vlm_cjk (its schema names it;
 * databases made before it keep unicode61), 0 if not, negative on error. */
static int captions_cjk(sqlite3 *sql) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(sql, "SELECT sql FROM sqlite_master WHERE "
                              "name = 'captions'", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return vlm__sql_err(sql, rc, "hybrid");
  rc = sqlite3_step(st);
  int cjk = 0;
  if (rc == SQLITE_ROW) {
    const char *schema = (const char *)sqlite3_column_text(st, 0);
    cjk = schema && strstr(schema, "tokenize='" VLM__FTS_CJK) != NULL;
  } else if (rc != SQLITE_DONE) {
    cjk = vlm__sql_err(sql, rc, "hybrid");
  }
  sqlite3_finalize(st);
  return cjk;
}

int vlm__hybrid(vlm_db *db, vlm__reader *r, const char *text,
                const uint8_t *allow, uint64_t allow_bits, int depth,
                uint64_t **ids_out, int *n_out) {
  sqlite3_stmt *st = NULL;
  uint64_t *ids = NULL;
  int n = 0, rc;
  (void)db;
  *ids_out = NULL;
  *n_out = 0;
  int cjk = captions_cjk(r->sql);
  if (cjk < 0)
    return cjk;
  char *q = fts_query(text, cjk);
  if (!q)
    return vlm_seterr(VLM_ENOMEM, "hybrid");
  if (!*q) {
    free(q);
    return 0; /* no words: BM25 has nothing to rank */
  }
  if (!(ids = malloc((size_t)depth * sizeof *ids))) {
    free(q);
    return vlm_seterr(VLM_ENOMEM, "hybrid");
  }
  rc = sqlite3_prepare_v2(r->sql,
                          "SELECT rowid FROM captions WHERE captions MATCH ?1 "
                          "ORDER BY rank",
                          -1, &st, NULL);
  if (rc != SQLITE_OK) {
    rc = vlm__sql_err(r->sql, rc, "hybrid");
    goto done;
  }
  sqlite3_bind_text(st, 1, q, -1, SQLITE_STATIC);
  while (n < depth && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    uint64_t id = (uint64_t)sqlite3_column_int64(st, 0);
    if (allow && (id >= allow_bits || !vlm__bit(allow, id)))
      continue;
    ids[n++] = id;
  }
  if (n < depth && rc != SQLITE_DONE) {
    rc = vlm__sql_err(r->sql, rc, "hybrid");
    goto done;
  }
  rc = 0;
  *ids_out = ids;
  *n_out = n;
  ids = NULL;
done:
  sqlite3_finalize(st);
  free(ids);
  free(q);
  return rc;
}

#define RRF_K 60.0f

/* Reciprocal rank fusion of the vector ranking vr and the BM25 ranking
 * bm25 into out (room for nvr + nbm): an id gets (1 - w) / (RRF_K + rank)
 * from its first place in vr and w / (RRF_K + rank) from each place in
 * bm25; ids only BM25 found are appended as text matches.  Unsorted.  An
 * open-addressing table from id to its place in out keeps it linear (a
 * k = 10,000 hybrid search spent most of its time in the nested scan this
 * replaced).  Returns the number of entries, or -1 out of memory. */
int vlm__fuse_rrf(const vlm__cand *vr, int nvr, const uint64_t *bm25,
                    int nbm, float w, vlm__cand *out) {
  size_t cap = 16;
  while (cap < 2 * ((size_t)nvr + (size_t)nbm))
    cap <<= 1;
  int *slot = malloc(cap * sizeof *slot); /* index into out, -1 empty */
  if (!slot)
    return -1;
  memset(slot, 0xff, cap * sizeof *slot);
  int n = 0;
  for (int i = 0; i < nvr + nbm; i++) {
    int from_vr = i < nvr;
    uint64_t id = from_vr ? vr[i].id : bm25[i - nvr];
    size_t h = (size_t)((id * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
    while (slot[h] >= 0 && out[slot[h]].id != id)
      h = (h + 1) & (cap - 1);
    float add = from_vr ? (1 - w) / (RRF_K + i + 1)
                        : w / (RRF_K + (i - nvr) + 1);
    if (slot[h] >= 0 && !from_vr) {
      out[slot[h]].score += add;
      continue;
    }
    if (slot[h] < 0)
      slot[h] = n;
    if (from_vr) {
      out[n] = vr[i]; /* a repeated vector id keeps its own entry */
    } else {
      memset(&out[n], 0, sizeof out[n]);
      out[n].id = id;
      out[n].mod = VLM__MOD_TEXT;
    }
    out[n++].score = add;
  }
  free(slot);
  return n;
}
