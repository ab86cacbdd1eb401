/* tune.c - the search effort that meets the recall target.
 *
 * How much an HNSW graph or an IVF index loses against exact search
 * depends on the data: the same efSearch gives recall@10 0.995 on one
 * collection and 0.81 on another.  So a database measures it.  When a
 * modality's index has grown to twice the size it was last tuned at (and
 * holds at least TUNE_MIN vectors), the writer's index thread takes
 * TUNE_QUERIES held-out queries, computes their exact top 10 with a
 * blocked sgemm over the stored vectors, and tries efSearch (HNSW) or
 * nprobe (IVF) in growing steps until recall@10 on the sample reaches
 * TUNE_RECALL.  The result is the default effort of searches that do not
 * set one (the filtered-search planner widens from it); it is kept, with
 * the recall measured at it, in the index's checkpoint entry of the
 * manifest, and `vlmdb info` / INFO report both.
 *
 * The queries must not be the indexed vectors themselves: a stored
 * vector is a vertex of the graph whose links lead straight to its
 * neighbours, so leave-one-out queries measured 0.997 at an efSearch
 * that gave 0.976-0.980 to new queries of the same data (issue 22).
 * Half come from the other modality when the database has one (text
 * vectors searching the image index: what a text-to-image query is, and
 * not in this index).  The rest are stored vectors of this modality
 * searched as held-out queries: their own vertex is hidden from the walk
 * (vlm_index_params.has_hidden: never visited, expanded or returned) and
 * from the exact answer, so each is a point drawn from the data itself
 * that the graph does not hold.  That is what a new query is, but for
 * one thing on the safe side: the graph was built with the hidden vertex,
 * which took link slots of its neighbours that a graph without it would
 * have given to others.  (Moving stored vectors away from themselves in a
 * random direction was tried first: in 512 dimensions such points leave
 * the clusters, and efSearch 1024 came out where 128 serves new queries
 * at 0.998.)  IVF indexes hold no links to follow, so their stored
 * queries only leave themselves out of the answer.
 *
 * The sample's recall is an estimate: its standard error at 0.99 over
 * 5,000 neighbour slots is 0.0014, so the target, 0.995, lies 3.5
 * standard errors above the 0.99 promised.
 */
#include "db_int.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define TUNE_MIN 1000
#define TUNE_QUERIES 500
#define TUNE_K 10
#define TUNE_RECALL 0.995
#define TUNE_CHUNK 2048
#define TUNE_TIE 1e-5f /* scores this close are equal (summation order) */

static const int hnsw_steps[] = {16,  24,  32,  48,   64,   96,   128,  192, 256,
                                 384, 512, 768, 1024, 1536, 2048, 3072, 4096};
static const int ivf_steps[] = {1,  2,   3,   4,   6,   8,    12,   16,  24,
                                32, 48,  64,  96,  128, 192,  256,  384, 512,
                                768, 1024, 1536, 2048, 3072, 4096, 8192};

typedef struct {
  uint64_t self; /* query's own item id (excluded), 0 if none */
  int n;
  uint64_t id[TUNE_K];
  float s[TUNE_K];
} truth;

static void truth_push(truth *t, uint64_t id, float s) {
  if (id == t->self)
    return;
  if (t->n == TUNE_K && s <= t->s[TUNE_K - 1])
    return;
  int j = t->n < TUNE_K ? t->n++ : TUNE_K - 1;
  while (j > 0 && t->s[j - 1] < s) {
    t->s[j] = t->s[j - 1];
    t->id[j] = t->id[j - 1];
    j--;
  }
  t->s[j] = s;
  t->id[j] = id;
}

static uint64_t xorshift(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Up to want ids with bit set in live below upto, spread at random (the
 * same sample for the same database state). */
static int sample_ids(const uint8_t *live, uint64_t upto, int want,
                      uint64_t seed, uint64_t *out) {
  int n = 0;
  if (upto <= 1)
    return 0;
  for (int tries = 0; n < want && tries < want * 64; tries++) {
    uint64_t id = 1 + xorshift(&seed) % (upto - 1);
    if (!vlm__bit(live, id))
      continue;
    int dup = 0;
    for (int i = 0; i < n && !dup; i++)
      dup = out[i] == id;
    if (!dup)
      out[n++] = id;
  }
  return n;
}

/* Exact top TUNE_K of every query over modality m's vectors below upto. */
static int exact_truth(vlm_db *db, MDB_txn *txn, int m, uint64_t upto,
                       const float *qs, int nq, truth *t) {
  int dim = db->man.dim, rc, rows = 0;
  float *block = malloc((size_t)TUNE_CHUNK * dim * sizeof *block);
  float *scores = malloc((size_t)nq * TUNE_CHUNK * sizeof *scores);
  uint64_t *ids = malloc(TUNE_CHUNK * sizeof *ids);
  MDB_cursor *cur = NULL;
  if (!block || !scores || !ids) {
    rc = vlm_seterr(VLM_ENOMEM, "tune");
    goto done;
  }
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(txn, db->lm.vecs, &cur)))) {
    rc = vlm__lmdb_err(rc, "vecs");
    goto done;
  }
  MDB_val k, v;
  int last = 0;
  rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_FIRST);
  while (!last) {
    uint64_t id = 0;
    if (rc == 0) {
      memcpy(&id, k.mv_data, 8);
      if (id >= upto)
        rc = MDB_NOTFOUND;
    }
    if (rc != 0 && rc != MDB_NOTFOUND) {
      rc = vlm__lmdb_err(rc, "vecs");
      goto done;
    }
    last = rc == MDB_NOTFOUND;
    if (!last) {
      uint32_t flags;
      const void *vec[VLM__NMOD];
      if ((rc = vlm__vecs_parse(&v, dim, &flags, vec)))
        goto done;
      if (vec[m] && vlm__bit(db->vx[m].live, id)) {
        memcpy(block + (size_t)rows * dim, vec[m], (size_t)dim * sizeof(float));
        ids[rows++] = id;
      }
      rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (rows == TUNE_CHUNK || (last && rows > 0)) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, rows, dim,
                  1.0f, qs, dim, block, dim, 0.0f, scores, rows);
      for (int q = 0; q < nq; q++)
        for (int j = 0; j < rows; j++)
          truth_push(&t[q], ids[j], scores[(size_t)q * rows + j]);
      rows = 0;
    }
  }
  rc = 0;
done:
  if (cur)
    mdb_cursor_close(cur);
  free(block);
  free(scores);
  free(ids);
  return rc;
}

/* Recall@TUNE_K of the index at effort p over the sample. */
static int trial(vlm_db *db, int m, int hnsw, int p, const float *qs, int nq,
                 const truth *t, double *recall) {
  vlm__vindex *vx = &db->vx[m];
  int kk = TUNE_K + 1, rc = 0;
  float *scores = malloc((size_t)nq * kk * sizeof *scores);
  int64_t *ids = malloc((size_t)nq * kk * sizeof *ids);
  if (!scores || !ids) {
    free(scores);
    free(ids);
    return vlm_seterr(VLM_ENOMEM, "tune");
  }
  vlm_index_params ip = {0};
  if (hnsw)
    ip.ef_search = p < kk ? kk : p;
  else
    ip.nprobe = p;
  pthread_rwlock_rdlock(&db->index_lock);
  if (vx->ntomb > 0) {
    ip.bitmap = vx->live;
    ip.bitmap_bits = (int64_t)vx->upto;
  }
  /* One query per call, on one thread, as searches run: a batch call
   * would hold the HNSW efSearch gate (faiss_c_api.cpp) for the whole
   * sample and make concurrent searches with another efSearch wait. */
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  for (int q = 0; q < nq && rc == 0; q++) {
    /* a stored query's own vertex is hidden from the walk (held out) */
    ip.has_hidden = hnsw && t[q].self != 0;
    ip.hidden_id = (int64_t)t[q].self;
    rc = vlm_index_search(vx->index, 1, qs + (size_t)q * db->man.dim, kk, &ip,
                          scores + (size_t)q * kk, ids + (size_t)q * kk);
  }
  omp_set_num_threads(threads);
  pthread_rwlock_unlock(&db->index_lock);
  if (rc == 0) {
    /* A result is right when it scores at least the exact k-th score:
     * with duplicate vectors (the same caption on many items) the exact
     * and the index's top k pick different ids among equals, and an id
     * match would count those as misses. */
    long hits = 0, slots = 0;
    for (int q = 0; q < nq; q++) {
      const int64_t *r = ids + (size_t)q * kk;
      const float *sc = scores + (size_t)q * kk;
      int taken = 0;
      if (t[q].n == 0)
        continue;
      float kth = t[q].s[t[q].n - 1];
      for (int j = 0; j < kk && taken < t[q].n; j++) {
        if (r[j] < 0 || (uint64_t)r[j] == t[q].self)
          continue;
        taken++;
        hits += sc[j] >= kth - TUNE_TIE;
      }
      slots += t[q].n;
    }
    *recall = slots ? (double)hits / (double)slots : 1.0;
  }
  free(scores);
  free(ids);
  return rc;
}

int vlm__vindex_tune(vlm_db *db, int m, int force) {
  assert(vlm__index_held(db));
  vlm__vindex *vx = &db->vx[m];
  int hnsw = strstr(db->man.factory, "HNSW") != NULL;
  int nlist = vlm__factory_nlist(db->man.factory);
  if ((!hnsw && nlist <= 0) || vx->upto == 0 || !vx->index ||
      !vlm_index_is_trained(vx->index) || vx->nlive < TUNE_MIN)
    return 0;
  if (!force && vx->tuned > 0 && vx->nlive < 2 * vx->tuned_n)
    return 0;
  int dim = db->man.dim, other = 1 - m, rc, nq = 0;
  uint64_t qid[TUNE_QUERIES];
  int qmod[TUNE_QUERIES];
  float *qs = malloc((size_t)TUNE_QUERIES * dim * sizeof *qs);
  truth *t = calloc(TUNE_QUERIES, sizeof *t);
  MDB_txn *txn = NULL;
  if (!qs || !t) {
    rc = vlm_seterr(VLM_ENOMEM, "tune");
    goto done;
  }
  uint64_t seed = 0x9E3779B97F4A7C15ull ^ (uint64_t)vx->nlive ^
                  ((uint64_t)m << 40);
  if (db->vx[other].nlive > 0 && db->vx[other].live) {
    nq = sample_ids(db->vx[other].live, vx->upto, TUNE_QUERIES / 2, seed, qid);
    for (int i = 0; i < nq; i++)
      qmod[i] = other;
  }
  int own = sample_ids(vx->live, vx->upto, TUNE_QUERIES - nq, seed * 31 + 7,
                       qid + nq);
  for (int i = nq; i < nq + own; i++)
    qmod[i] = m;
  nq += own;
  if (nq == 0) {
    rc = 0;
    goto done;
  }
  pthread_rwlock_rdlock(&db->pub_lock);
  rc = VLM__STORE("lmdb-read", mdb_txn_begin(db->lm.env, NULL, MDB_RDONLY, &txn));
  pthread_rwlock_unlock(&db->pub_lock);
  if (rc) {
    txn = NULL;
    rc = vlm__lmdb_err(rc, "tune");
    goto done;
  }
  int w = 0;
  for (int i = 0; i < nq; i++) {
    uint32_t flags;
    const void *vec[VLM__NMOD];
    rc = vlm__vecs_get(&db->lm, txn, qid[i], dim, &flags, vec);
    if (rc == VLM_ENOTFOUND || (rc == 0 && !vec[qmod[i]]))
      continue; /* deleted since the index side last caught up */
    if (rc)
      goto done;
    memcpy(qs + (size_t)w * dim, vec[qmod[i]], (size_t)dim * sizeof(float));
    t[w].self = qmod[i] == m ? qid[i] : 0;
    w++;
  }
  nq = w;
  if ((rc = exact_truth(db, txn, m, vx->upto, qs, nq, t)))
    goto done;
  mdb_txn_abort(txn);
  txn = NULL;
  const int *steps = hnsw ? hnsw_steps : ivf_steps;
  int nsteps = hnsw ? (int)(sizeof hnsw_steps / sizeof *hnsw_steps)
                    : (int)(sizeof ivf_steps / sizeof *ivf_steps);
  int chosen = 0;
  double recall = 0;
  for (int i = 0; i < nsteps; i++) {
    int p = steps[i];
    if (!hnsw && p >= nlist)
      p = nlist;
    if ((rc = trial(db, m, hnsw, p, qs, nq, t, &recall)))
      goto done;
    chosen = p;
    if (recall >= TUNE_RECALL || (!hnsw && p == nlist))
      break;
  }
  pthread_rwlock_wrlock(&db->index_lock);
  vx->tuned = chosen;
  vx->tuned_n = vx->nlive;
  vx->tuned_recall = recall;
  vx->tuned_queries = nq;
  pthread_rwlock_unlock(&db->index_lock);
  rc = 0;
done:
  if (txn)
    mdb_txn_abort(txn);
  free(qs);
  free(t);
  return rc;
}
