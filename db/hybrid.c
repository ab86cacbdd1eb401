/* hybrid.c - BM25 over captions (SQLite FTS5) for hybrid search.
 *
 * The query text is never handed to FTS5's query syntax as is: it is cut
 * into words (runs of letters, digits and non-ASCII bytes), each word is
 * quoted as an FTS5 string and the words are OR-ed, so any user text is a
 * valid query and BM25 ranks captions by how many and how rare the shared
 * words are; vlm__fuse_rrf fuses that ranking with the vector ranking
 * (reciprocal rank fusion) for the planner.
 */
#include "db_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static char *fts_query(const char *text) {
  size_t n = strlen(text);
  char *out = malloc(n * 3 + 8), *p = out;
  int words = 0;
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
    if (words++)
      p += sprintf(p, " OR ");
    *p++ = '"';
    memcpy(p, text + i, j - i);
    p += j - i;
    *p++ = '"';
    i = j;
  }
  *p = '\0';
  if (!words) {
    free(out);
    return strdup("");
  }
  return out;
}

int vlm__hybrid(vlm_db *db, vlm__reader *r, const char *text,
                const uint8_t *allow, uint64_t allow_bits, int depth,
                uint64_t **ids_out, float **scores_out, int *n_out) {
  sqlite3_stmt *st = NULL;
  uint64_t *ids = NULL;
  float *scores = NULL;
  int n = 0, rc;
  char *q = fts_query(text);
  (void)db;
  *ids_out = NULL;
  if (scores_out)
    *scores_out = NULL;
  *n_out = 0;
  if (!q)
    return vlm_seterr(VLM_ENOMEM, "hybrid");
  if (!*q) {
    free(q);
    return 0; /* no words: BM25 has nothing to rank */
  }
  if (!(ids = malloc((size_t)depth * sizeof *ids)) ||
      (scores_out && !(scores = malloc((size_t)depth * sizeof *scores)))) {
    free(ids);
    free(q);
    return vlm_seterr(VLM_ENOMEM, "hybrid");
  }
  rc = sqlite3_prepare_v2(r->sql,
                          "SELECT rowid, rank FROM captions WHERE captions "
                          "MATCH ?1 ORDER BY rank",
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
    if (scores) /* FTS5's rank is bm25(), lower is better */
      scores[n] = (float)-sqlite3_column_double(st, 1);
    ids[n++] = id;
  }
  if (n < depth && rc != SQLITE_DONE) {
    rc = vlm__sql_err(r->sql, rc, "hybrid");
    goto done;
  }
  rc = 0;
  *ids_out = ids;
  if (scores_out)
    *scores_out = scores;
  *n_out = n;
  ids = NULL;
  scores = NULL;
done:
  sqlite3_finalize(st);
  free(ids);
  free(scores);
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

/* ---- fusion by key, for rankings merged across shards ---------------- */

static int key_cmp(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

typedef struct {
  vlm__cand c;
  const char *key;
} keyed_cand;

static int keyed_desc(const void *a, const void *b) {
  const keyed_cand *x = a, *y = b;
  if (x->c.score != y->c.score)
    return x->c.score < y->c.score ? 1 : -1;
  return strcmp(x->key, y->key);
}

int vlm_fuse_rrf(const vlm_hit *vec, int nvec, const vlm_hit *text,
                 int ntext, float weight, int k, vlm_hit **out, int *nout) {
  const char **keys = NULL;
  vlm__cand *vr = NULL, *fused = NULL;
  uint64_t *bm = NULL;
  keyed_cand *kc = NULL;
  vlm_hit *hits = NULL;
  int nkeys = 0, nh = 0, rc = VLM_ENOMEM;
  *out = NULL;
  *nout = 0;
  if (nvec < 0 || ntext < 0 || k < 1 || !(weight >= 0 && weight <= 1))
    return vlm_seterr(VLM_EINVAL, "fuse: bad arguments");
  float w = weight > 0 ? weight : 0.5f;
  size_t n = (size_t)nvec + (size_t)ntext;
  /* ids: each key's place among the distinct keys, sorted */
  if (!(keys = malloc((n + 1) * sizeof *keys)) ||
      !(vr = malloc(((size_t)nvec + 1) * sizeof *vr)) ||
      !(bm = malloc(((size_t)ntext + 1) * sizeof *bm)) ||
      !(fused = malloc((n + 1) * sizeof *fused)))
    goto done;
  for (int i = 0; i < nvec; i++)
    keys[nkeys++] = vec[i].key;
  for (int i = 0; i < ntext; i++)
    keys[nkeys++] = text[i].key;
  qsort(keys, (size_t)nkeys, sizeof *keys, key_cmp);
  int u = 0;
  for (int i = 0; i < nkeys; i++)
    if (u == 0 || strcmp(keys[u - 1], keys[i]))
      keys[u++] = keys[i];
  nkeys = u;
  for (int i = 0; i < nvec; i++) {
    const char **at = bsearch(&vec[i].key, keys, (size_t)nkeys,
                              sizeof *keys, key_cmp);
    memset(&vr[i], 0, sizeof vr[i]);
    vr[i].id = (uint64_t)(at - keys);
    vr[i].score = vec[i].score;
    vr[i].mod = vec[i].modality == VLM_TARGET_IMAGE ? VLM__MOD_IMAGE
                                                    : VLM__MOD_TEXT;
  }
  for (int i = 0; i < ntext; i++) {
    const char **at = bsearch(&text[i].key, keys, (size_t)nkeys,
                              sizeof *keys, key_cmp);
    bm[i] = (uint64_t)(at - keys);
  }
  int nf = vlm__fuse_rrf(vr, nvec, bm, ntext, w, fused);
  if (nf < 0)
    goto done;
  if (!(kc = malloc(((size_t)nf + 1) * sizeof *kc)))
    goto done;
  for (int i = 0; i < nf; i++) {
    kc[i].c = fused[i];
    kc[i].key = keys[fused[i].id];
  }
  qsort(kc, (size_t)nf, sizeof *kc, keyed_desc);
  if (nf > k)
    nf = k;
  if (!(hits = calloc((size_t)nf + 1, sizeof *hits)))
    goto done;
  for (nh = 0; nh < nf; nh++) {
    if (!(hits[nh].key = strdup(kc[nh].key)))
      goto done;
    hits[nh].score = kc[nh].c.score;
    hits[nh].modality = kc[nh].c.mod == VLM__MOD_IMAGE ? VLM_TARGET_IMAGE
                                                       : VLM_TARGET_TEXT;
  }
  *out = hits;
  *nout = nh;
  hits = NULL;
  rc = 0;
done:
  vlm_hits_free(hits, nh);
  free(keys);
  free(vr);
  free(bm);
  free(fused);
  free(kc);
  return rc == VLM_ENOMEM ? vlm_seterr(VLM_ENOMEM, "fuse") : rc;
}
