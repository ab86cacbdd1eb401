/* test_index.c - vlm_index end to end through the FAISS C API.
 *
 * Every check compares FAISS's answer with a brute-force oracle computed
 * here over the same vectors (all of them, the ones left after a remove,
 * or the ones a bitmap allows), for Flat, HNSW32, IVF64,Flat, IVF,PQ and
 * IVF,SQ8, plus write/read round trips and the error codes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"
#include "vlm_error.h"
#include "vlm_index.h"

#define DIM 32
#define K 10
#define NQ 50

/* ------------------------------------------------------------ data */

static uint64_t rng_state;

static uint64_t rng_next(void) { return vlm_test_splitmix64(&rng_state); }

static double rng_uniform(void) { return vlm_test_uniform(&rng_state); }

static float rng_normal(void) {
  double u = rng_uniform(), v = rng_uniform();
  if (u < 1e-300) u = 1e-300;
  return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static void normalize(float *x, int d) {
  double s = 0;
  for (int j = 0; j < d; j++) s += (double)x[j] * x[j];
  float inv = (float)(1.0 / sqrt(s));
  for (int j = 0; j < d; j++) x[j] *= inv;
}

/* n unit vectors around nclusters random centres (spread 0.5), the way
 * CLIP embeddings bunch up: x[n * d]. */
static float *clustered(int64_t n, int d, int nclusters, uint64_t seed) {
  rng_state = seed;
  float *centres = malloc(sizeof(float) * nclusters * d);
  float *x = malloc(sizeof(float) * n * d);
  assert_non_null(centres);
  assert_non_null(x);
  for (int c = 0; c < nclusters; c++) {
    for (int j = 0; j < d; j++) centres[c * d + j] = rng_normal();
    normalize(centres + c * d, d);
  }
  for (int64_t i = 0; i < n; i++) {
    int c = (int)(rng_next() % (uint64_t)nclusters);
    for (int j = 0; j < d; j++)
      x[i * d + j] = centres[c * d + j] + 0.5f * rng_normal() / sqrtf((float)d) * 2;
    normalize(x + i * d, d);
  }
  free(centres);
  return x;
}

/* ids far from 0..n-1 so an untranslated (internal) id would show. */
static int64_t id_of(int64_t i) { return 1000 + 7 * i; }

/* ---------------------------------------------------------- oracle */

static float score(vlm_metric m, const float *a, const float *b, int d) {
  double s = 0;
  for (int j = 0; j < d; j++) {
    if (m == VLM_METRIC_IP) s += (double)a[j] * b[j];
    else s += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
  }
  return (float)s;
}

static int better(vlm_metric m, float a, float b) {
  return m == VLM_METRIC_IP ? a > b : a < b;
}

/* Exact top-k over the vectors i < n with live[i] (NULL: all):
 * out_ids/out_scores[nq * k], padded with -1. */
static void brute_force(vlm_metric m, const float *x, int64_t n,
                        const uint8_t *live, const float *q, int nq, int k,
                        int64_t *out_ids, float *out_scores) {
  for (int qi = 0; qi < nq; qi++) {
    int64_t *ids = out_ids + (size_t)qi * k;
    float *sc = out_scores + (size_t)qi * k;
    int found = 0;
    for (int r = 0; r < k; r++) ids[r] = -1;
    for (int64_t i = 0; i < n; i++) {
      if (live && !live[i]) continue;
      float s = score(m, q + (size_t)qi * DIM, x + i * DIM, DIM);
      if (found == k && !better(m, s, sc[k - 1])) continue;
      int r = found < k ? found++ : k - 1;
      while (r > 0 && better(m, s, sc[r - 1])) {
        sc[r] = sc[r - 1];
        ids[r] = ids[r - 1];
        r--;
      }
      sc[r] = s;
      ids[r] = id_of(i);
    }
  }
}

static int64_t index_of(int64_t id) { return (id - 1000) / 7; }

/* FAISS's result equals the oracle's: same score at every rank (ties may
 * swap ids), and every returned id's true score is its reported score. */
static void assert_exact(vlm_metric m, const float *x, const float *q,
                         const int64_t *ids, const float *sc,
                         const int64_t *oids, const float *osc, int nq) {
  for (int i = 0; i < nq * K; i++) {
    if (oids[i] < 0 || ids[i] < 0) {
      if (oids[i] != ids[i])
        fail_msg("query %d rank %d: faiss id %lld, oracle id %lld", i / K,
                 i % K, (long long)ids[i], (long long)oids[i]);
      continue;
    }
    if (fabsf(sc[i] - osc[i]) > 1e-4f)
      fail_msg("query %d rank %d: faiss score %.6f (id %lld), oracle %.6f "
               "(id %lld)", i / K, i % K, sc[i], (long long)ids[i], osc[i],
               (long long)oids[i]);
    float truth = score(m, q + (size_t)(i / K) * DIM, x + index_of(ids[i]) * DIM, DIM);
    if (fabsf(truth - sc[i]) > 1e-4f)
      fail_msg("query %d rank %d: id %lld reported %.6f, true %.6f", i / K,
               i % K, (long long)ids[i], sc[i], truth);
  }
}

/* |found ∩ exact| / |exact| over all queries (recall@K). */
static double recall(const int64_t *ids, const int64_t *oids, int nq) {
  int hit = 0, total = 0;
  for (int qi = 0; qi < nq; qi++)
    for (int a = 0; a < K; a++) {
      int64_t o = oids[qi * K + a];
      if (o < 0) continue;
      total++;
      for (int b = 0; b < K; b++)
        if (ids[qi * K + b] == o) {
          hit++;
          break;
        }
    }
  return total ? (double)hit / total : 1.0;
}

/* Every returned id is one of ours, allowed by live[], and no id repeats
 * within a query. */
static void assert_ids_valid(const int64_t *ids, int nq, int64_t n,
                             const uint8_t *live) {
  for (int qi = 0; qi < nq; qi++)
    for (int r = 0; r < K; r++) {
      int64_t id = ids[qi * K + r];
      if (id < 0) continue;
      int64_t i = index_of(id);
      if (id != id_of(i) || i < 0 || i >= n)
        fail_msg("query %d rank %d: id %lld was never added", qi, r, (long long)id);
      if (live && !live[i])
        fail_msg("query %d rank %d: id %lld is removed or not allowed", qi, r,
                 (long long)id);
      for (int s = 0; s < r; s++)
        if (ids[qi * K + s] == id)
          fail_msg("query %d: id %lld at ranks %d and %d", qi, (long long)id, s, r);
    }
}

/* ---------------------------------------------------------- helpers */

typedef struct {
  int64_t n;
  float *x;      /* n * DIM */
  int64_t *ids;  /* n */
  float *q;      /* NQ * DIM */
} dataset;

static dataset make_data_clusters(int64_t n, int nclusters, uint64_t seed) {
  dataset d = {.n = n};
  d.x = clustered(n, DIM, nclusters, seed);
  d.q = clustered(NQ, DIM, nclusters, seed); /* same centres: same seed */
  /* the first NQ vectors of the same stream are data points; perturb the
   * queries so none coincides exactly with a stored vector */
  rng_state = seed ^ 0xabcdef;
  for (int i = 0; i < NQ * DIM; i++) d.q[i] += 0.05f * rng_normal();
  for (int i = 0; i < NQ; i++) normalize(d.q + i * DIM, DIM);
  d.ids = malloc(sizeof(int64_t) * n);
  assert_non_null(d.ids);
  for (int64_t i = 0; i < n; i++) d.ids[i] = id_of(i);
  return d;
}

static dataset make_data(int64_t n, uint64_t seed) {
  return make_data_clusters(n, 40, seed);
}

static void free_data(dataset *d) {
  free(d->x);
  free(d->ids);
  free(d->q);
}

static vlm_index *build(const char *factory, vlm_metric m, const dataset *d) {
  vlm_index *index = NULL;
  int rc = vlm_index_create(factory, DIM, m, &index);
  if (rc != 0) fail_msg("create %s: %s", factory, vlm_errmsg());
  if (!vlm_index_is_trained(index)) {
    int64_t want = vlm_index_train_size(index);
    assert_true(want > 0);
    if (want > d->n) fail_msg("%s wants %lld training vectors, have %lld",
                              factory, (long long)want, (long long)d->n);
    rc = vlm_index_train(index, d->n, d->x);
    if (rc != 0) fail_msg("train %s: %s", factory, vlm_errmsg());
  }
  assert_int_equal(vlm_index_train_size(index), 0);
  rc = vlm_index_add(index, d->n, d->x, d->ids);
  if (rc != 0) fail_msg("add %s: %s", factory, vlm_errmsg());
  assert_int_equal(vlm_index_count(index), d->n);
  assert_string_equal(vlm_index_factory(index), factory);
  assert_int_equal(vlm_index_dim(index), DIM);
  assert_int_equal(vlm_index_metric(index), m);
  return index;
}

static void search(const vlm_index *index, const float *q, int nq,
                   const vlm_index_params *p, int64_t *ids, float *sc) {
  int rc = vlm_index_search(index, nq, q, K, p, sc, ids);
  if (rc != 0) fail_msg("search %s: %s", vlm_index_factory(index), vlm_errmsg());
}

/* A random subset of about frac of 0..n-1 (seeded), as live[] and as a
 * bitmap over the ids. */
static uint8_t *random_subset(int64_t n, double frac, uint64_t seed,
                              uint8_t **bitmap, int64_t *bits) {
  uint8_t *live = calloc((size_t)n, 1);
  *bits = id_of(n - 1) + 1;
  *bitmap = calloc((size_t)(*bits + 7) / 8, 1);
  assert_non_null(live);
  assert_non_null(*bitmap);
  rng_state = seed;
  for (int64_t i = 0; i < n; i++)
    if (rng_uniform() < frac) {
      live[i] = 1;
      int64_t id = id_of(i);
      (*bitmap)[id >> 3] |= (uint8_t)(1u << (id & 7));
    }
  return live;
}

/* ------------------------------------------------------------ tests */

static void test_flat_exact_ip_and_l2(void **state) {
  (void)state;
  dataset d = make_data(3000, 11);
  int64_t ids[NQ * K], oids[NQ * K];
  float sc[NQ * K], osc[NQ * K];
  vlm_metric metrics[] = {VLM_METRIC_IP, VLM_METRIC_L2};
  for (int mi = 0; mi < 2; mi++) {
    vlm_index *index = build("Flat", metrics[mi], &d);
    assert_int_equal(vlm_index_can_remove(index), 1);
    search(index, d.q, NQ, NULL, ids, sc);
    brute_force(metrics[mi], d.x, d.n, NULL, d.q, NQ, K, oids, osc);
    assert_exact(metrics[mi], d.x, d.q, ids, sc, oids, osc, NQ);
    /* one query at a time takes FAISS's non-BLAS path: same answer */
    for (int qi = 0; qi < 3; qi++) {
      search(index, d.q + qi * DIM, 1, NULL, ids, sc);
      assert_exact(metrics[mi], d.x, d.q + qi * DIM, ids, sc, oids + qi * K,
                   osc + qi * K, 1);
    }
    vlm_index_free(index);
  }
  free_data(&d);
}

/* An index of 64 MiB or more gets transparent huge pages, collapsed on a
 * thread of its own while searches run: the answers stay exact before,
 * during and after (whether the kernel grants the pages is its choice,
 * printed, not asserted). */
static void test_flat_huge_pages(void **state) {
  (void)state;
  dataset d = make_data(540000, 13); /* 540,000 x 32 floats: 69 MB */
  int64_t ids[NQ * K], oids[NQ * K];
  float sc[NQ * K], osc[NQ * K];
  vlm_index *index = build("Flat", VLM_METRIC_IP, &d);
  brute_force(VLM_METRIC_IP, d.x, d.n, NULL, d.q, NQ, K, oids, osc);
  for (int round = 0; round < 3; round++) {
    search(index, d.q, NQ, NULL, ids, sc);
    assert_exact(VLM_METRIC_IP, d.x, d.q, ids, sc, oids, osc, NQ);
    usleep(100 * 1000);
  }
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  char line[256];
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "AnonHugePages:", 14))
      print_message("69 MB Flat index: %s", line);
  if (f) fclose(f);
  vlm_index_free(index);
  free_data(&d);
}

/* Room reserved in a Flat index, then its vectors added in small chunks:
 * the same exact answers as one add (and a no-op for HNSW). */
static void test_flat_reserve_then_chunks(void **state) {
  (void)state;
  dataset d = make_data(3000, 12);
  int64_t ids[NQ * K], oids[NQ * K];
  float sc[NQ * K], osc[NQ * K];
  vlm_index *index = NULL;
  assert_int_equal(vlm_index_create("Flat", DIM, VLM_METRIC_IP, &index), 0);
  assert_int_equal(vlm_index_reserve(index, d.n), 0);
  assert_int_equal(vlm_index_count(index), 0);
  for (int64_t i = 0; i < d.n; i += 128) {
    int64_t n = d.n - i < 128 ? d.n - i : 128;
    assert_int_equal(vlm_index_add(index, n, d.x + i * DIM, d.ids + i), 0);
  }
  assert_int_equal(vlm_index_count(index), d.n);
  search(index, d.q, NQ, NULL, ids, sc);
  brute_force(VLM_METRIC_IP, d.x, d.n, NULL, d.q, NQ, K, oids, osc);
  assert_exact(VLM_METRIC_IP, d.x, d.q, ids, sc, oids, osc, NQ);
  vlm_index_free(index);
  assert_int_equal(vlm_index_create("HNSW16", DIM, VLM_METRIC_IP, &index), 0);
  assert_int_equal(vlm_index_reserve(index, d.n), 0);
  assert_int_equal(vlm_index_count(index), 0);
  vlm_index_free(index);
  free_data(&d);
}

static int float_desc(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

static int float_asc(const void *a, const void *b) { return -float_desc(a, b); }

/* Range search over Flat: exactly the vectors whose inner product is at
 * least the threshold (L2: whose squared distance is at most it), against
 * a brute-force scan in double; a score equal to the threshold is kept
 * (FAISS's own bound is strict).  Other kinds refuse it; a NaN threshold
 * or query is refused. */
static void test_flat_range_search(void **state) {
  (void)state;
  dataset d = make_data(3000, 21);
  vlm_metric metrics[] = {VLM_METRIC_IP, VLM_METRIC_L2};
  for (int mi = 0; mi < 2; mi++) {
    vlm_index *index = build("Flat", metrics[mi], &d);
    assert_int_equal(vlm_index_can_range(index), 1);
    for (int qi = 0; qi < 8; qi++) {
      const float *q = d.q + qi * DIM;
      /* the threshold: the 40th best score the range search itself
       * gives (its sums may round differently from the k-NN scan's), so
       * a score equal to the threshold must come back */
      float *sc = NULL;
      int64_t *ids = NULL, n = -1;
      float low = metrics[mi] == VLM_METRIC_IP ? 0.3f : 1.4f;
      assert_int_equal(vlm_index_range_search(index, q, low, &sc, &ids, &n),
                       0);
      assert_true(n > 60);
      float *sorted = malloc((size_t)n * sizeof *sorted);
      memcpy(sorted, sc, (size_t)n * sizeof *sorted);
      qsort(sorted, (size_t)n, sizeof *sorted,
            metrics[mi] == VLM_METRIC_IP ? float_desc : float_asc);
      float thr = sorted[39];
      int64_t edge = -1;
      for (int64_t r = 0; r < n; r++)
        if (sc[r] == thr)
          edge = ids[r];
      free(sorted);
      free(sc);
      free(ids);
      assert_int_equal(vlm_index_range_search(index, q, thr, &sc, &ids, &n),
                       0);
      int found_edge = 0, inside = 0;
      for (int64_t r = 0; r < n; r++) {
        found_edge |= ids[r] == edge;
        int ok = metrics[mi] == VLM_METRIC_IP ? sc[r] >= thr : sc[r] <= thr;
        if (!ok)
          fail_msg("range result %lld scores %f past %f", (long long)ids[r],
                   sc[r], thr);
      }
      if (!found_edge)
        fail_msg("metric %d query %d: id %lld at the threshold %.9g is "
                 "missing", mi, qi, (long long)edge, thr);
      assert_true(n >= 40);
      /* every vector clearly inside the threshold is there, and nothing
       * clearly outside */
      for (int64_t i = 0; i < d.n; i++) {
        double s = 0;
        for (int j = 0; j < DIM; j++) {
          double a = d.x[i * DIM + j], b = q[j];
          s += metrics[mi] == VLM_METRIC_IP ? a * b : (a - b) * (a - b);
        }
        double margin = metrics[mi] == VLM_METRIC_IP ? s - thr : thr - s;
        if (fabs(margin) < 1e-5)
          continue;
        int present = 0;
        for (int64_t r = 0; r < n && !present; r++)
          present = ids[r] == d.ids[i];
        if (present != (margin > 0))
          fail_msg("query %d: id %lld (score %f, threshold %f) %s", qi,
                   (long long)d.ids[i], s, thr,
                   present ? "returned" : "missing");
        inside += margin > 0;
      }
      assert_true(inside >= 35 && n >= inside);
      free(sc);
      free(ids);
    }
    /* nothing reaches it: an empty answer, no arrays */
    float *sc = (float *)1;
    int64_t *ids = (int64_t *)1, n = -1;
    assert_int_equal(vlm_index_range_search(index, d.q,
                                            metrics[mi] == VLM_METRIC_IP
                                                ? 5.0f
                                                : -1.0f,
                                            &sc, &ids, &n),
                     0);
    assert_int_equal(n, 0);
    assert_null(sc);
    assert_null(ids);
    assert_int_equal(vlm_index_range_search(index, d.q, NAN, &sc, &ids, &n),
                     VLM_ENUMERIC);
    float bad[DIM];
    memcpy(bad, d.q, sizeof bad);
    bad[3] = INFINITY;
    assert_int_equal(vlm_index_range_search(index, bad, 0.5f, &sc, &ids, &n),
                     VLM_ENUMERIC);
    vlm_index_free(index);
  }
  vlm_index *hnsw = build("HNSW16", VLM_METRIC_IP, &d);
  float *sc;
  int64_t *ids, n;
  assert_int_equal(vlm_index_can_range(hnsw), 0);
  assert_int_equal(vlm_index_range_search(hnsw, d.q, 0.5f, &sc, &ids, &n),
                   VLM_EUNSUPPORTED);
  vlm_index_free(hnsw);
  assert_int_equal(vlm_index_can_range(NULL), 0);
  free_data(&d);
}

static void test_hnsw_recall_and_ef_search(void **state) {
  (void)state;
  /* nearly uniform data, where a small ef visibly misses neighbours */
  dataset d = make_data_clusters(5000, 5000, 12);
  int64_t ids[NQ * K], oids[NQ * K];
  float sc[NQ * K], osc[NQ * K];
  vlm_index *index = build("HNSW32", VLM_METRIC_IP, &d);
  brute_force(VLM_METRIC_IP, d.x, d.n, NULL, d.q, NQ, K, oids, osc);

  vlm_index_params low = {.ef_search = 10}, high = {.ef_search = 256};
  search(index, d.q, NQ, &low, ids, sc);
  assert_ids_valid(ids, NQ, d.n, NULL);
  double r_low = recall(ids, oids, NQ);
  search(index, d.q, NQ, &high, ids, sc);
  assert_ids_valid(ids, NQ, d.n, NULL);
  double r_high = recall(ids, oids, NQ);
  search(index, d.q, NQ, NULL, ids, sc); /* FAISS default ef 16 */
  double r_default = recall(ids, oids, NQ);
  print_message("HNSW32 recall@10: ef10 %.3f, default %.3f, ef256 %.3f\n",
                r_low, r_default, r_high);
  if (!(r_high >= 0.98)) fail_msg("HNSW ef256 recall %.3f < 0.98", r_high);
  if (!(r_high > r_low)) fail_msg("ef256 recall %.3f not above ef10 %.3f", r_high, r_low);
  /* reported scores are the true inner products of the returned ids */
  for (int i = 0; i < NQ * K; i++) {
    float t = score(VLM_METRIC_IP, d.q + (i / K) * DIM, d.x + index_of(ids[i]) * DIM, DIM);
    if (fabsf(t - sc[i]) > 1e-4f) fail_msg("rank %d: score %f, true %f", i, sc[i], t);
  }
  vlm_index_free(index);
  free_data(&d);
}

/* A one-query HNSW call runs the shim's own walk with per-thread buffers;
 * a multi-query call runs FAISS's IndexHNSW::search.  Both must give the
 * same ids and scores, whatever efSearch, k (also above efSearch), metric
 * and bitmap, and a thread must keep giving them when it switches between
 * indexes of different sizes (its visited table is reused). */
static void test_hnsw_one_query_matches_faiss(void **state) {
  (void)state;
  enum { KK = 40 };
  dataset big = make_data_clusters(4000, 400, 31);
  dataset small = make_data_clusters(700, 70, 32);
  uint8_t *bitmap;
  int64_t bits;
  uint8_t *live = random_subset(big.n, 0.3, 5, &bitmap, &bits);
  vlm_metric metrics[] = {VLM_METRIC_IP, VLM_METRIC_L2};
  int64_t *ids = malloc(sizeof(int64_t) * NQ * KK);
  int64_t *one = malloc(sizeof(int64_t) * KK);
  float *sc = malloc(sizeof(float) * NQ * KK), *osc = malloc(sizeof(float) * KK);
  assert_non_null(ids);
  assert_non_null(one);
  assert_non_null(sc);
  assert_non_null(osc);
  int compared = 0;
  for (int mi = 0; mi < 2; mi++) {
    vlm_index *ix[2] = {build("HNSW32", metrics[mi], &big),
                        build("HNSW32", metrics[mi], &small)};
    const int efs[] = {10, 16, 64, 256};
    const int ks[] = {1, K, KK};
    for (int e = 0; e < 4; e++)
      for (int ki = 0; ki < 3; ki++)
        for (int b = 0; b < 3; b++) {
          /* b: 0 the big index, 1 the big one with a bitmap, 2 the small */
          const vlm_index *index = ix[b == 2];
          const dataset *d = b == 2 ? &small : &big;
          vlm_index_params p = {.ef_search = efs[e]};
          if (b == 1) {
            p.bitmap = bitmap;
            p.bitmap_bits = bits;
          }
          int k = ks[ki];
          assert_int_equal(vlm_index_search(index, NQ, d->q, k, &p, sc, ids), 0);
          for (int q = 0; q < NQ; q++) {
            assert_int_equal(vlm_index_search(index, 1, d->q + q * DIM, k, &p,
                                              osc, one), 0);
            for (int r = 0; r < k; r++) {
              if (one[r] != ids[q * k + r] || osc[r] != sc[q * k + r])
                fail_msg("%s ef %d k %d case %d query %d rank %d: one query "
                         "%lld (%.7g), FAISS batch %lld (%.7g)",
                         metrics[mi] == VLM_METRIC_IP ? "IP" : "L2", efs[e], k,
                         b, q, r, (long long)one[r], osc[r],
                         (long long)ids[q * k + r], sc[q * k + r]);
              if (b == 1 && one[r] >= 0 && !live[index_of(one[r])])
                fail_msg("rank %d: id %lld is outside the bitmap", r,
                         (long long)one[r]);
              compared++;
            }
          }
        }
    vlm_index_free(ix[0]);
    vlm_index_free(ix[1]);
  }
  print_message("HNSW one-query walk: %d results identical to FAISS's batch "
                "search\n", compared);

  /* A stored vector searched with its own vertex hidden: the walk never
   * returns it, and still finds its other neighbours (the oracle: brute
   * force over the rest).  Without hiding it is its own best match. */
  {
    vlm_index *index = build("HNSW32", VLM_METRIC_IP, &big);
    vlm_index_params p = {.ef_search = 64, .has_hidden = 1};
    int64_t got[K], want[K];
    float gs[K], ws[K];
    uint8_t *others = malloc((size_t)big.n);
    assert_non_null(others);
    memset(others, 1, (size_t)big.n);
    int hits = 0, nq = 100;
    for (int i = 0; i < nq; i++) {
      const float *x = big.x + (size_t)i * 37 * DIM;
      int64_t self = big.ids[i * 37];
      vlm_index_params plain = {.ef_search = 64};
      search(index, x, 1, &plain, got, gs);
      assert_int_equal(got[0], self);
      p.hidden_id = self;
      search(index, x, 1, &p, got, gs);
      others[i * 37] = 0;
      brute_force(VLM_METRIC_IP, big.x, big.n, others, x, 1, K, want, ws);
      others[i * 37] = 1;
      for (int r = 0; r < K; r++) {
        if (got[r] == self)
          fail_msg("query %d: hidden id %lld returned at rank %d", i,
                   (long long)self, r);
        for (int w = 0; w < K; w++)
          hits += got[r] == want[w];
      }
    }
    double r = (double)hits / (nq * K);
    print_message("HNSW32, stored vectors as held-out queries: recall@10 "
                  "%.3f at efSearch 64\n", r);
    if (!(r >= 0.9))
      fail_msg("held-out recall %.3f < 0.9", r);
    free(others);
    vlm_index_free(index);
  }
  free(ids);
  free(one);
  free(sc);
  free(osc);
  free(live);
  free(bitmap);
  free_data(&big);
  free_data(&small);
}

static void test_ivf_flat_nprobe(void **state) {
  (void)state;
  dataset d = make_data(3000, 13);
  int64_t ids[NQ * K], oids[NQ * K];
  float sc[NQ * K], osc[NQ * K];
  vlm_index *index = NULL;
  assert_int_equal(vlm_index_create("IVF64,Flat", DIM, VLM_METRIC_IP, &index), 0);
  assert_int_equal(vlm_index_is_trained(index), 0);
  assert_int_equal(vlm_index_train_size(index), 64 * 39);
  vlm_index_free(index);

  index = build("IVF64,Flat", VLM_METRIC_IP, &d);
  brute_force(VLM_METRIC_IP, d.x, d.n, NULL, d.q, NQ, K, oids, osc);
  vlm_index_params one = {.nprobe = 1}, all = {.nprobe = 64};
  search(index, d.q, NQ, &one, ids, sc);
  assert_ids_valid(ids, NQ, d.n, NULL);
  double r1 = recall(ids, oids, NQ);
  search(index, d.q, NQ, &all, ids, sc);
  /* probing every list is an exhaustive search */
  assert_exact(VLM_METRIC_IP, d.x, d.q, ids, sc, oids, osc, NQ);
  search(index, d.q, NQ, NULL, ids, sc); /* default nprobe 1 */
  double rdef = recall(ids, oids, NQ);
  print_message("IVF64,Flat recall@10: nprobe1 %.3f, default %.3f, nprobe64 1.0\n",
                r1, rdef);
  if (!(r1 < 1.0)) fail_msg("nprobe 1 recall %.3f: nprobe had no effect?", r1);
  if (fabs(rdef - r1) > 1e-9) fail_msg("default recall %.3f != nprobe1 %.3f", rdef, r1);
  vlm_index_free(index);
  free_data(&d);
}

static void test_ivf_pq_and_sq8(void **state) {
  (void)state;
  dataset d = make_data(10000, 14);
  int64_t ids[NQ * K], oids[NQ * K];
  float sc[NQ * K], osc[NQ * K];
  brute_force(VLM_METRIC_IP, d.x, d.n, NULL, d.q, NQ, K, oids, osc);
  struct { const char *factory; int64_t train; double min_recall; } kinds[] = {
      {"IVF32,PQ8", 39 * 256, 0.40},  /* 4 dims per byte: coarse codes */
      {"IVF32,SQ8", 32 * 39, 0.95},
  };
  for (int t = 0; t < 2; t++) {
    vlm_index *index = NULL;
    assert_int_equal(vlm_index_create(kinds[t].factory, DIM, VLM_METRIC_IP, &index), 0);
    assert_int_equal(vlm_index_train_size(index), kinds[t].train);
    vlm_index_free(index);
    index = build(kinds[t].factory, VLM_METRIC_IP, &d);
    vlm_index_params one = {.nprobe = 1}, all = {.nprobe = 32};
    search(index, d.q, NQ, &one, ids, sc);
    assert_ids_valid(ids, NQ, d.n, NULL);
    double r1 = recall(ids, oids, NQ);
    search(index, d.q, NQ, &all, ids, sc);
    assert_ids_valid(ids, NQ, d.n, NULL);
    double rall = recall(ids, oids, NQ);
    print_message("%s recall@10: nprobe1 %.3f, nprobe32 %.3f\n",
                  kinds[t].factory, r1, rall);
    if (!(rall >= kinds[t].min_recall))
      fail_msg("%s recall %.3f < %.2f", kinds[t].factory, rall, kinds[t].min_recall);
    if (!(rall > r1)) fail_msg("%s: nprobe 32 recall %.3f not above nprobe 1 %.3f",
                               kinds[t].factory, rall, r1);
    vlm_index_free(index);
  }
  free_data(&d);
}

static void test_remove(void **state) {
  (void)state;
  dataset d = make_data(3000, 15);
  int64_t ids[NQ * K], oids[NQ * K];
  float sc[NQ * K], osc[NQ * K];
  /* remove every third vector, plus two ids that were never added */
  uint8_t *live = malloc((size_t)d.n);
  int64_t *gone = malloc(sizeof(int64_t) * (size_t)d.n);
  int64_t ngone = 0;
  for (int64_t i = 0; i < d.n; i++) {
    live[i] = i % 3 != 0;
    if (!live[i]) gone[ngone++] = id_of(i);
  }
  gone[ngone] = 5;
  gone[ngone + 1] = id_of(d.n + 10);

  const char *kinds[] = {"Flat", "IVF64,Flat", "IVF32,SQ8"};
  for (int t = 0; t < 3; t++) {
    vlm_index *index = build(kinds[t], VLM_METRIC_IP, &d);
    int64_t removed = -1;
    int rc = vlm_index_remove(index, ngone + 2, gone, &removed);
    if (rc != 0) fail_msg("remove %s: %s", kinds[t], vlm_errmsg());
    assert_int_equal(removed, ngone);
    assert_int_equal(vlm_index_count(index), d.n - ngone);
    vlm_index_params all = {.nprobe = 64};
    search(index, d.q, NQ, &all, ids, sc);
    assert_ids_valid(ids, NQ, d.n, live);
    brute_force(VLM_METRIC_IP, d.x, d.n, live, d.q, NQ, K, oids, osc);
    if (t < 2) assert_exact(VLM_METRIC_IP, d.x, d.q, ids, sc, oids, osc, NQ);
    /* removing again removes nothing */
    assert_int_equal(vlm_index_remove(index, ngone, gone, &removed), 0);
    assert_int_equal(removed, 0);
    /* re-adding a removed id makes it findable again */
    assert_int_equal(vlm_index_add(index, 1, d.x, &gone[0]), 0);
    search(index, d.x, 1, &all, ids, sc);
    assert_int_equal(ids[0], gone[0]);
    vlm_index_free(index);
  }

  vlm_index *hnsw = build("HNSW32", VLM_METRIC_IP, &d);
  assert_int_equal(vlm_index_can_remove(hnsw), 0);
  int64_t removed = -1;
  assert_int_equal(vlm_index_remove(hnsw, ngone, gone, &removed), VLM_EUNSUPPORTED);
  assert_non_null(strstr(vlm_errmsg(), "HNSW"));
  assert_int_equal(removed, 0);
  assert_int_equal(vlm_index_count(hnsw), d.n);
  vlm_index_free(hnsw);
  free(live);
  free(gone);
  free_data(&d);
}

static void test_bitmap_selector(void **state) {
  (void)state;
  dataset d = make_data(3000, 16);
  int64_t ids[NQ * K], oids[NQ * K];
  float sc[NQ * K], osc[NQ * K];
  double fracs[] = {0.2, 0.01};
  const char *kinds[] = {"Flat", "IVF64,Flat", "HNSW32", "IVF32,SQ8"};
  for (int t = 0; t < 4; t++) {
    vlm_index *index = build(kinds[t], VLM_METRIC_IP, &d);
    for (int f = 0; f < 2; f++) {
      uint8_t *bitmap;
      int64_t bits;
      uint8_t *live = random_subset(d.n, fracs[f], 100 + f, &bitmap, &bits);
      brute_force(VLM_METRIC_IP, d.x, d.n, live, d.q, NQ, K, oids, osc);
      vlm_index_params p = {.bitmap = bitmap, .bitmap_bits = bits,
                            .nprobe = 64, .ef_search = 512};
      search(index, d.q, NQ, &p, ids, sc);
      assert_ids_valid(ids, NQ, d.n, live);
      double r = recall(ids, oids, NQ);
      print_message("%s bitmap %.0f%%: recall@10 %.3f\n", kinds[t], 100 * fracs[f], r);
      /* Flat and IVF at full nprobe are exhaustive: exact.  HNSW's walk
       * at 1% can end before finding k allowed vectors (documented; db/
       * searches exactly at such selectivity), so only 20% is held to a
       * recall floor. */
      if (t < 2) assert_exact(VLM_METRIC_IP, d.x, d.q, ids, sc, oids, osc, NQ);
      else if (fracs[f] >= 0.2 && !(r >= 0.9))
        fail_msg("%s bitmap %.2f recall %.3f < 0.9", kinds[t], fracs[f], r);
      free(live);
      free(bitmap);
    }

    /* bits at or above bitmap_bits never select, even if set in the last
     * byte: allow exactly the ids below the cut */
    int64_t cut_i = 1500, cut = id_of(cut_i) + 3; /* mid-byte cut */
    uint8_t *all_set = malloc((size_t)(cut + 7) / 8 + 1);
    memset(all_set, 0xff, (size_t)(cut + 7) / 8 + 1);
    uint8_t *live = malloc((size_t)d.n);
    for (int64_t i = 0; i < d.n; i++) live[i] = id_of(i) < cut;
    vlm_index_params p = {.bitmap = all_set, .bitmap_bits = cut, .nprobe = 64,
                          .ef_search = 256};
    search(index, d.q, NQ, &p, ids, sc);
    assert_ids_valid(ids, NQ, d.n, live);
    /* an empty bitmap selects nothing */
    p.bitmap_bits = 0;
    search(index, d.q, NQ, &p, ids, sc);
    for (int i = 0; i < NQ * K; i++) {
      assert_int_equal(ids[i], -1);
      assert_true(sc[i] == -FLT_MAX);
    }
    free(all_set);
    free(live);
    vlm_index_free(index);
  }
  free_data(&d);
}

static char tmpdir[64];

static void make_tmpdir(void) {
  strcpy(tmpdir, "/tmp/vlm_test_index.XXXXXX");
  assert_non_null(mkdtemp(tmpdir));
}

static void test_write_read_roundtrip(void **state) {
  (void)state;
  dataset d = make_data(10000, 17);
  make_tmpdir();
  char path[128];
  snprintf(path, sizeof path, "%s/index.faiss", tmpdir);
  const char *kinds[] = {"Flat", "HNSW32", "IVF64,Flat", "IVF32,PQ8", "IVF32,SQ8"};
  int64_t ids[NQ * K], ids2[NQ * K];
  float sc[NQ * K], sc2[NQ * K];
  for (int t = 0; t < 5; t++) {
    vlm_metric m = t == 0 ? VLM_METRIC_L2 : VLM_METRIC_IP;
    vlm_index *index = build(kinds[t], m, &d);
    if (vlm_index_can_remove(index)) {
      int64_t gone[2] = {id_of(0), id_of(1)};
      assert_int_equal(vlm_index_remove(index, 2, gone, NULL), 0);
    }
    uint8_t *bitmap;
    int64_t bits;
    uint8_t *live = random_subset(d.n, 0.3, 7, &bitmap, &bits);
    vlm_index_params p = {.nprobe = 8, .ef_search = 64, .bitmap = bitmap,
                          .bitmap_bits = bits};
    int rc = vlm_index_write(index, path);
    if (rc != 0) fail_msg("write %s: %s", kinds[t], vlm_errmsg());
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_equal(access(tmp, F_OK), -1);

    vlm_index *back = NULL;
    rc = vlm_index_read(path, &back);
    if (rc != 0) fail_msg("read %s: %s", kinds[t], vlm_errmsg());
    assert_string_equal(vlm_index_factory(back), kinds[t]);
    assert_int_equal(vlm_index_count(back), vlm_index_count(index));
    assert_int_equal(vlm_index_dim(back), DIM);
    assert_int_equal(vlm_index_metric(back), m);
    assert_int_equal(vlm_index_can_remove(back), vlm_index_can_remove(index));
    assert_int_equal(vlm_index_is_trained(back), 1);
    for (int withp = 0; withp < 2; withp++) {
      search(index, d.q, NQ, withp ? &p : NULL, ids, sc);
      search(back, d.q, NQ, withp ? &p : NULL, ids2, sc2);
      for (int i = 0; i < NQ * K; i++)
        if (ids[i] != ids2[i] || sc[i] != sc2[i])
          fail_msg("%s rank %d: before write id %lld score %.7f, after read "
                   "id %lld score %.7f", kinds[t], i, (long long)ids[i], sc[i],
                   (long long)ids2[i], sc2[i]);
    }
    /* the index read back keeps working: add and search */
    if (vlm_index_can_remove(back)) {
      int64_t again = id_of(0);
      assert_int_equal(vlm_index_add(back, 1, d.x, &again), 0);
      vlm_index_params all = {.nprobe = 64};
      search(back, d.x, 1, &all, ids, sc);
      assert_int_equal(ids[0], again);
    }
    vlm_index_free(back);
    vlm_index_free(index);
    free(live);
    free(bitmap);
  }
  unlink(path);
  rmdir(tmpdir);
  free_data(&d);
}

static void write_bytes(const char *path, const void *buf, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(buf, 1, len, f), len);
  fclose(f);
}

/* Bitwise CRC-32C (Castagnoli, reflected), the header's checksum. */
static uint32_t crc32c_ref(const void *buf, size_t len) {
  const uint8_t *p = buf;
  uint32_t crc = 0xffffffffu;
  while (len--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
  }
  return ~crc;
}

static void test_read_rejects_bad_files(void **state) {
  (void)state;
  dataset d = make_data(500, 18);
  make_tmpdir();
  char path[128], bad[128];
  snprintf(path, sizeof path, "%s/index.faiss", tmpdir);
  snprintf(bad, sizeof bad, "%s/bad.faiss", tmpdir);
  vlm_index *index = build("Flat", VLM_METRIC_IP, &d), *back = NULL;
  assert_int_equal(vlm_index_write(index, path), 0);
  vlm_index_free(index);

  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)len);
  assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
  fclose(f);

  assert_int_equal(vlm_index_read(path, &back), 0);
  vlm_index_free(back);

  struct { const char *what; long at; int len_delta; int expect; } cases[] = {
      {"flipped vector byte", len - 100, 0, VLM_ECORRUPT},
      {"flipped header byte", 17, 0, VLM_ECORRUPT},
      {"truncated payload", 0, -200, VLM_ECORRUPT},
      {"truncated header", 0, -(int)len + 10, VLM_EFORMAT},
      {"not an index", 0, 0, VLM_EFORMAT},
  };
  for (int c = 0; c < 5; c++) {
    char *copy = malloc((size_t)len);
    memcpy(copy, buf, (size_t)len);
    if (c <= 1) copy[cases[c].at] ^= 0x10;
    if (c == 4) memcpy(copy, "PK\3\4 zip", 8);
    write_bytes(bad, copy, (size_t)(len + cases[c].len_delta));
    back = (vlm_index *)1;
    int rc = vlm_index_read(bad, &back);
    if (rc != cases[c].expect)
      fail_msg("%s: got %s (%s), want %s", cases[c].what, vlm_errname(rc),
               vlm_errmsg(), vlm_errname(cases[c].expect));
    assert_null(back);
    print_message("%s -> %s: %s\n", cases[c].what, vlm_errname(rc), vlm_errmsg());
    free(copy);
  }
  /* a newer format version with a valid header checksum: VLM_EVERSION */
  {
    char *copy = malloc((size_t)len);
    memcpy(copy, buf, (size_t)len);
    uint32_t version = 2, crc;
    memcpy(copy + 8, &version, 4);
    crc = crc32c_ref(copy, 60);
    memcpy(copy + 60, &crc, 4);
    write_bytes(bad, copy, (size_t)len);
    assert_int_equal(vlm_index_read(bad, &back), VLM_EVERSION);
    print_message("version 2 -> %s\n", vlm_errmsg());
    /* and the reference CRC agrees with the writer's for the original */
    memcpy(&crc, buf + 60, 4);
    assert_int_equal(crc, crc32c_ref(buf, 60));
    free(copy);
  }
  assert_int_equal(vlm_index_read("/nonexistent/dir/x.faiss", &back), VLM_ENOTFOUND);
  assert_int_equal(vlm_index_write(index = build("Flat", VLM_METRIC_IP, &d),
                                   "/nonexistent/dir/x.faiss"), VLM_EIO);
  assert_non_null(strstr(vlm_errmsg(), "/nonexistent/dir/x.faiss"));
  vlm_index_free(index);
  free(buf);
  unlink(bad);
  unlink(path);
  rmdir(tmpdir);
  free_data(&d);
}

static void test_errors(void **state) {
  (void)state;
  vlm_index *index = (vlm_index *)1;
  int rc = vlm_index_create("NoSuchIndex42", DIM, VLM_METRIC_IP, &index);
  assert_int_equal(rc, VLM_EINVAL);
  assert_null(index);
  print_message("bad factory: %s\n", vlm_errmsg());
  assert_non_null(strstr(vlm_errmsg(), "NoSuchIndex42"));
  /* FAISS's own words, once, without its C++ signature or source path */
  assert_string_equal(vlm_errmsg(), "index factory \"NoSuchIndex42\": could "
                                    "not parse index string NoSuchIndex42");

  assert_int_equal(vlm_index_create("Flat", 0, VLM_METRIC_IP, &index), VLM_EINVAL);
  assert_int_equal(vlm_index_create("Flat", -5, VLM_METRIC_IP, &index), VLM_EINVAL);
  /* PQ7 cannot split 32 dimensions */
  rc = vlm_index_create("IVF16,PQ7", DIM, VLM_METRIC_IP, &index);
  assert_int_equal(rc, VLM_EINVAL);
  print_message("IVF16,PQ7 on dim 32: %s\n", vlm_errmsg());
  assert_int_equal(vlm_index_create("", DIM, VLM_METRIC_IP, &index), VLM_EINVAL);
  assert_int_equal(vlm_index_create("Flat", DIM, (vlm_metric)7, &index), VLM_EINVAL);

  dataset d = make_data(3000, 19);
  int64_t ids[K];
  float sc[K];
  assert_int_equal(vlm_index_create("IVF64,Flat", DIM, VLM_METRIC_IP, &index), 0);
  rc = vlm_index_search(index, 1, d.q, K, NULL, sc, ids);
  assert_int_equal(rc, VLM_ESTATE);
  print_message("search before training: %s\n", vlm_errmsg());
  assert_int_equal(vlm_index_add(index, 1, d.x, d.ids), VLM_ESTATE);
  assert_int_equal(vlm_index_train(index, 100, d.x), VLM_EINVAL);
  print_message("train on too few: %s\n", vlm_errmsg());
  d.x[5] = NAN;
  assert_int_equal(vlm_index_train(index, d.n, d.x), VLM_ENUMERIC);
  d.x[5] = 0.1f;
  assert_int_equal(vlm_index_train(index, d.n, d.x), 0);
  assert_int_equal(vlm_index_train(index, d.n, d.x), 0); /* no-op */

  int64_t neg = -3;
  assert_int_equal(vlm_index_add(index, 1, d.x, &neg), VLM_EINVAL);
  d.x[DIM + 2] = INFINITY;
  assert_int_equal(vlm_index_add(index, 2, d.x, d.ids), VLM_ENUMERIC);
  print_message("inf in add: %s\n", vlm_errmsg());
  assert_int_equal(vlm_index_count(index), 0);
  d.x[DIM + 2] = 0.1f;
  assert_int_equal(vlm_index_add(index, 2, d.x, d.ids), 0);
  assert_int_equal(vlm_index_search(index, 1, d.q, 0, NULL, sc, ids), VLM_EINVAL);
  float nanq[DIM];
  memcpy(nanq, d.q, sizeof nanq);
  nanq[3] = NAN;
  assert_int_equal(vlm_index_search(index, 1, nanq, K, NULL, sc, ids), VLM_ENUMERIC);
  vlm_index_params negp = {.nprobe = -1};
  assert_int_equal(vlm_index_search(index, 1, d.q, K, &negp, sc, ids), VLM_EINVAL);
  /* fewer than k vectors: padded with -1 and the documented filler */
  vlm_index_params all = {.nprobe = 64};
  assert_int_equal(vlm_index_search(index, 1, d.q, K, &all, sc, ids), 0);
  for (int r = 2; r < K; r++) {
    assert_int_equal(ids[r], -1);
    assert_true(sc[r] == -FLT_MAX);
  }
  assert_true(ids[0] >= 0 && ids[1] >= 0);
  vlm_index_free(index);
  vlm_index_free(NULL);

  /* a kind whose FAISS search takes no parameters: plain search works, a
   * bitmap is refused as unsupported rather than silently ignored */
  assert_int_equal(vlm_index_create("LSH", DIM, VLM_METRIC_L2, &index), 0);
  assert_int_equal(vlm_index_add(index, 100, d.x, d.ids), 0);
  assert_int_equal(vlm_index_search(index, 1, d.q, K, NULL, sc, ids), 0);
  assert_true(ids[0] >= 0);
  uint8_t bitmap[8] = {0xff};
  vlm_index_params withbits = {.bitmap = bitmap, .bitmap_bits = 64};
  rc = vlm_index_search(index, 1, d.q, K, &withbits, sc, ids);
  assert_int_equal(rc, VLM_EUNSUPPORTED);
  print_message("LSH with bitmap: %s\n", vlm_errmsg());
  vlm_index_free(index);
  free_data(&d);
}

/* Concurrent searches with different parameters on one index give the
 * same answers as the same searches run alone. */
typedef struct {
  const vlm_index *index;
  const float *q;
  vlm_index_params p;
  int64_t ids[NQ * K];
  float sc[NQ * K];
  int rc;
} search_job;

static void *search_thread(void *arg) {
  search_job *j = arg;
  for (int rep = 0; rep < 5 && j->rc == 0; rep++)
    j->rc = vlm_index_search(j->index, NQ, j->q, K, &j->p, j->sc, j->ids);
  return NULL;
}

static void test_concurrent_search(void **state) {
  (void)state;
  dataset d = make_data(3000, 20);
  vlm_index *index = build("HNSW32", VLM_METRIC_IP, &d);
  uint8_t *bitmap;
  int64_t bits;
  uint8_t *live = random_subset(d.n, 0.5, 3, &bitmap, &bits);
  search_job jobs[4];
  for (int t = 0; t < 4; t++) {
    memset(&jobs[t], 0, sizeof jobs[t]);
    jobs[t].index = index;
    jobs[t].q = d.q;
    jobs[t].p.ef_search = 16 << t;
    if (t & 1) {
      jobs[t].p.bitmap = bitmap;
      jobs[t].p.bitmap_bits = bits;
    }
  }
  pthread_t th[4];
  for (int t = 0; t < 4; t++) assert_int_equal(pthread_create(&th[t], NULL, search_thread, &jobs[t]), 0);
  for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
  int64_t ids[NQ * K];
  float sc[NQ * K];
  for (int t = 0; t < 4; t++) {
    assert_int_equal(jobs[t].rc, 0);
    search(index, d.q, NQ, &jobs[t].p, ids, sc);
    for (int i = 0; i < NQ * K; i++)
      if (ids[i] != jobs[t].ids[i])
        fail_msg("job %d rank %d: concurrent id %lld, alone %lld", t, i,
                 (long long)jobs[t].ids[i], (long long)ids[i]);
    if (t & 1) assert_ids_valid(ids, NQ, d.n, live);
  }
  free(live);
  free(bitmap);
  vlm_index_free(index);
  free_data(&d);
}

/* Which HNSW indexes can score a bitmap's vectors from a flat store: the
 * float ones only (a quantized store is left to the graph walk). */
static void test_can_scan(void **state) {
  (void)state;
  static const struct {
    const char *factory;
    int scan;
  } cases[] = {{"HNSW16", 1},     {"HNSW32,Flat", 1}, {"HNSW16_SQ8", 0},
               {"HNSW16_PQ4", 0}, {"Flat", 0},        {"IVF4,Flat", 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    vlm_index *index = NULL;
    assert_int_equal(
        vlm_index_create(cases[i].factory, DIM, VLM_METRIC_IP, &index), 0);
    if (vlm_index_can_scan(index) != cases[i].scan)
      fail_msg("%s: can_scan %d", cases[i].factory, vlm_index_can_scan(index));
    vlm_index_free(index);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_can_scan),
      cmocka_unit_test(test_flat_exact_ip_and_l2),
      cmocka_unit_test(test_flat_range_search),
      cmocka_unit_test(test_flat_huge_pages),
      cmocka_unit_test(test_flat_reserve_then_chunks),
      cmocka_unit_test(test_hnsw_recall_and_ef_search),
      cmocka_unit_test(test_hnsw_one_query_matches_faiss),
      cmocka_unit_test(test_ivf_flat_nprobe),
      cmocka_unit_test(test_ivf_pq_and_sq8),
      cmocka_unit_test(test_remove),
      cmocka_unit_test(test_bitmap_selector),
      cmocka_unit_test(test_write_read_roundtrip),
      cmocka_unit_test(test_read_rejects_bad_files),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_concurrent_search),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
