/* filter.c - filtered search: recall@10 and QPS per selectivity.
 *
 *   build/bench/filter [-n ITEMS] [-d DIM] [-q QUERIES] [-f FACTORY]
 *                      [--ef EF[,EF...]] [--dir TMPDIR]
 *
 * --ef 0 (the default) leaves efSearch to the database: the effort it
 * tuned for this data (see db/tune.c).
 *
 * N random-but-clustered unit vectors (100 clusters) with two int fields:
 *   rnd   uniform in 0..999999, independent of the vector;
 *   corr  cluster * 10000 + uniform 0..9999, so `corr < s * 1e6` selects
 *         whole clusters: the matches lie in a few clusters, mostly far
 *         from the query (the hard case for a graph index).
 * For each selectivity (0.1%, 1%, 10%, 50%, 100%) and field, Q queries
 * (vectors near random items) run through vlm_db_search (k = 10) and are
 * compared with a brute-force oracle over the matching vectors computed
 * here.  QPS is single-threaded; "cold" gives each query its own range of
 * the field of the same width (field >= lo AND field < lo + width: the
 * same selectivity, other matches, another text), so no cached matches or
 * warm index pages of the previous query serve it; "same" repeats one
 * filter (the common case of one filter, many query vectors).  Recall is
 * that of the "same" pass.
 *
 * Last, hybrid search at depth: k = 10,000 over the vectors alone, then
 * fused with BM25 over the items' captions (a few words each from a
 * vocabulary of 200, so a 3-word query matches thousands), both
 * rankings 10,000 deep; the ratio is what fusion adds to the search.
 */
#include <cblas.h>
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vlm_error.h"
#include "vlmdb.h"

#define NCLUSTERS 100
#define K 10

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next_u64(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}
static double uniform(void) {
  return (double)(next_u64() >> 11) / 9007199254740992.0;
}
static float normal(void) {
  double u = uniform(), v = uniform();
  if (u < 1e-300)
    u = 1e-300;
  return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}
static void normalize(float *x, int d) {
  double s = 0;
  for (int i = 0; i < d; i++)
    s += (double)x[i] * x[i];
  float inv = (float)(1.0 / sqrt(s));
  for (int i = 0; i < d; i++)
    x[i] *= inv;
}

static int rm_cb(const char *p, const struct stat *sb, int flag,
                 struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

typedef struct {
  int i;
  float s;
} scored;

/* Top K of sims over items passing the filter (field < limit). */
static int oracle(const float *sims, const int *field, int n, int limit,
                  scored *top) {
  int m = 0;
  for (int i = 0; i < n; i++) {
    if (field[i] >= limit)
      continue;
    float s = sims[i];
    if (m < K) {
      int j = m++;
      while (j > 0 && top[j - 1].s < s) {
        top[j] = top[j - 1];
        j--;
      }
      top[j].i = i, top[j].s = s;
    } else if (s > top[K - 1].s) {
      int j = K - 1;
      while (j > 0 && top[j - 1].s < s) {
        top[j] = top[j - 1];
        j--;
      }
      top[j].i = i, top[j].s = s;
    }
  }
  return m;
}

int main(int argc, char **argv) {
  int n = 200000, dim = 512, nq = 200, ef = 0;
  const char *eflist = "0";
  const char *factory = "HNSW32", *tmpdir = "/tmp";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-n") && i + 1 < argc)
      n = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-d") && i + 1 < argc)
      dim = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-q") && i + 1 < argc)
      nq = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-f") && i + 1 < argc)
      factory = argv[++i];
    else if (!strcmp(argv[i], "--ef") && i + 1 < argc)
      eflist = argv[++i];
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      tmpdir = argv[++i];
    else {
      fprintf(stderr, "usage: filter [-n N] [-d DIM] [-q Q] [-f FACTORY] "
                      "[--ef EF[,EF...]] [--dir TMPDIR]\n");
      return 2;
    }
  }
  float *centres = malloc((size_t)NCLUSTERS * dim * sizeof(float));
  float *x = malloc((size_t)n * dim * sizeof(float));
  int *rnd = malloc((size_t)n * sizeof(int));
  int *corr = malloc((size_t)n * sizeof(int));
  char (*keys)[16] = malloc((size_t)n * sizeof *keys);
  char (*metas)[64] = malloc((size_t)n * sizeof *metas);
  char (*caps)[48] = malloc((size_t)n * sizeof *caps);
  float *q = malloc((size_t)nq * dim * sizeof(float));
  float *sims = malloc((size_t)n * sizeof(float));
  int *got = malloc((size_t)nq * K * sizeof(int));
  if (!centres || !x || !rnd || !corr || !keys || !metas || !caps || !q ||
      !sims || !got) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  for (int c = 0; c < NCLUSTERS; c++) {
    for (int d = 0; d < dim; d++)
      centres[(size_t)c * dim + d] = normal();
    normalize(centres + (size_t)c * dim, dim);
  }
  float spread = 1.0f / sqrtf((float)dim);
  for (int i = 0; i < n; i++) {
    int c = (int)(next_u64() % NCLUSTERS);
    float *v = x + (size_t)i * dim;
    for (int d = 0; d < dim; d++)
      v[d] = centres[(size_t)c * dim + d] + spread * normal();
    normalize(v, dim);
    rnd[i] = (int)(next_u64() % 1000000);
    corr[i] = c * 10000 + (int)(next_u64() % 10000);
    snprintf(keys[i], sizeof keys[i], "%d", i);
    snprintf(metas[i], sizeof metas[i], "{\"rnd\": %d, \"corr\": %d}",
             rnd[i], corr[i]);
    snprintf(caps[i], sizeof caps[i], "w%d w%d w%d w%d w%d",
             (int)(next_u64() % 200), (int)(next_u64() % 200),
             (int)(next_u64() % 200), (int)(next_u64() % 200),
             (int)(next_u64() % 200));
  }
  for (int j = 0; j < nq; j++) {
    const float *base = x + (size_t)(next_u64() % (uint64_t)n) * dim;
    float *v = q + (size_t)j * dim;
    for (int d = 0; d < dim; d++)
      v[d] = base[d] + 0.5f * spread * normal();
    normalize(v, dim);
  }

  char root[256], dir[300];
  snprintf(root, sizeof root, "%s/vlmdb-filter-XXXXXX", tmpdir);
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(dir, sizeof dir, "%s/db", root);
  vlm_field fields[] = {{"rnd", VLM_FIELD_INT}, {"corr", VLM_FIELD_INT}};
  vlm_db_config cfg = {0};
  cfg.dim = dim;
  cfg.index_factory = factory;
  cfg.model_id = "bench";
  cfg.fields = fields;
  cfg.nfields = 2;
  vlm_db *db;
  if (vlm_db_create(dir, &cfg, &db) != 0) {
    fprintf(stderr, "create: %s\n", vlm_errmsg());
    return 1;
  }
  double t0 = now();
  vlm_item *items = calloc(10000, sizeof *items);
  for (int i = 0; i < n; i += 10000) {
    int m = 0;
    for (int j = i; j < n && j < i + 10000; j++, m++) {
      items[m].key = keys[j];
      items[m].image_vec = x + (size_t)j * dim;
      items[m].meta_json = metas[j];
      items[m].caption = caps[j];
    }
    if (vlm_db_put(db, items, m, 0, NULL) != 0) {
      fprintf(stderr, "put: %s\n", vlm_errmsg());
      return 1;
    }
  }
  printf("filter: %d items, dim %d, %s, %d queries, k %d; built in %.1f s\n",
         n, dim, factory, nq, K, now() - t0);
  vlm_db_info info;
  if (vlm_db_stat(db, &info) == 0)
    printf("tuned default effort (efSearch/nprobe): %d, measured at %lld "
           "vectors\n",
           info.tuned_effort[0], (long long)info.tuned_at[0]);
  char tuned_name[48];
  snprintf(tuned_name, sizeof tuned_name, "default (tuned: %d)",
           info.tuned_effort[0]);

  char *efl = strdup(eflist);
  for (char *efname = strtok(efl, ","); efname; efname = strtok(NULL, ",")) {
  ef = atoi(efname);
  static const double sels[] = {0.001, 0.01, 0.1, 0.5, 1.0};
  static const char *names[] = {"rnd", "corr"};
  /* Unfiltered baseline first. */
  double qps_base = 0, recall_base = 0;
  {
    double found = 0;
    double ta = now();
    long done = 0;
    for (int rep = 0; rep == 0 || now() - ta < 0.5; rep++)
    for (int j = 0; j < nq; j++, done++) {
      vlm_search_options o = {0};
      vlm_hit *hits;
      int nh;
      o.k = K;
      o.ef_search = ef;
      if (vlm_db_search(db, q + (size_t)j * dim, &o, &hits, &nh) != 0) {
        fprintf(stderr, "search: %s\n", vlm_errmsg());
        return 1;
      }
      for (int b = 0; b < K; b++)
        got[(size_t)j * K + b] = b < nh ? atoi(hits[b].key) : -1;
      vlm_hits_free(hits, nh);
    }
    qps_base = done / (now() - ta);
    for (int j = 0; j < nq; j++) {
      scored top[K];
      cblas_sgemv(CblasRowMajor, CblasNoTrans, n, dim, 1.0f, x, dim,
                  q + (size_t)j * dim, 1, 0.0f, sims, 1);
      int m = oracle(sims, rnd, n, 1000000, top);
      for (int a = 0; a < m; a++)
        for (int b = 0; b < K; b++)
          if (got[(size_t)j * K + b] == top[a].i) {
            found++;
            break;
          }
    }
    recall_base = found / ((double)nq * K);
  }
  printf("efSearch %s: unfiltered recall@10 %.4f, %.0f QPS\n\n",
         ef ? efname : info.tuned_effort[0] ? tuned_name : "default (64)",
         recall_base, qps_base);
  printf("%-6s %11s %9s %10s %10s %10s\n", "field", "selectivity",
         "recall@10", "QPS cold", "QPS same", "vs unfilt");
  for (int f = 0; f < 2; f++) {
    const int *field = f == 0 ? rnd : corr;
    for (int s = 0; s < 5; s++) {
      int limit = (int)(sels[s] * 1000000 + 0.5);
      double found = 0, want = 0, tcold = 0, tsame = 0;
      for (int pass = 0; pass < 2; pass++) {
        double ta = now();
        long done = 0;
        /* repeat the query set until 0.5 s have passed: short runs are
         * all noise on a shared machine */
        for (int rep = 0; rep == 0 || now() - ta < 0.5; rep++)
        for (int j = 0; j < nq; j++, done++) {
          char filter[96];
          if (pass == 0) {
            /* cold: per query a distinct text and a distinct range of
             * the same width (the same selectivity, other matches), so
             * neither the reader's cached matches nor SQLite's pages of
             * the last query's range serve it */
            long lo = limit >= 1000000
                          ? 0
                          : (done * 7919 % 1000) * ((1000000L - limit) / 1000);
            snprintf(filter, sizeof filter, "%s >= %ld AND %s < %ld",
                     names[f], lo, names[f], lo + limit);
          } else
            snprintf(filter, sizeof filter, "%s < %d", names[f], limit);
          vlm_search_options o = {0};
          vlm_hit *hits;
          int nh;
          o.k = K;
          o.ef_search = ef;
          o.filter = filter;
          if (vlm_db_search(db, q + (size_t)j * dim, &o, &hits, &nh) != 0) {
            fprintf(stderr, "search: %s\n", vlm_errmsg());
            return 1;
          }
          for (int b = 0; b < K; b++)
            got[(size_t)j * K + b] = b < nh ? atoi(hits[b].key) : -1;
          vlm_hits_free(hits, nh);
        }
        if (pass == 0)
          tcold = (now() - ta) / done * nq;
        else
          tsame = (now() - ta) / done * nq;
      }
      /* recall of the last pass against brute force, outside the timing */
      for (int j = 0; j < nq; j++) {
        scored top[K];
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n, dim, 1.0f, x, dim,
                    q + (size_t)j * dim, 1, 0.0f, sims, 1);
        int m = oracle(sims, field, n, limit, top);
        want += m;
        for (int a = 0; a < m; a++)
          for (int b = 0; b < K; b++)
            if (got[(size_t)j * K + b] == top[a].i) {
              found++;
              break;
            }
      }
      double qcold = nq / tcold, qsame = nq / tsame;
      printf("%-6s %10.1f%% %9.4f %10.0f %10.0f %9.2fx\n", names[f],
             sels[s] * 100, want > 0 ? found / want : 1.0, qcold, qsame,
             qcold / qps_base);
      fflush(stdout);
    }
  }
  printf("\n");
  }
  free(efl);

  /* Hybrid at k = 10,000: the vector search alone, then with BM25 fused. */
  {
    int kh = n < 10000 ? n : 10000, nqh = nq < 20 ? nq : 20;
    double t[2] = {0, 0};
    for (int mode = 0; mode < 2; mode++) {
      double ta = now();
      for (int j = 0; j < nqh; j++) {
        char text[32];
        snprintf(text, sizeof text, "w%d w%d w%d", j % 200, (j * 7 + 3) % 200,
                 (j * 13 + 5) % 200);
        vlm_search_options o = {0};
        vlm_hit *hits;
        int nh;
        o.k = kh;
        o.hybrid_text = mode ? text : NULL;
        if (vlm_db_search(db, q + (size_t)j * dim, &o, &hits, &nh) != 0) {
          fprintf(stderr, "search: %s\n", vlm_errmsg());
          return 1;
        }
        vlm_hits_free(hits, nh);
      }
      t[mode] = (now() - ta) / nqh;
    }
    printf("hybrid k %d: vector %.1f ms, hybrid %.1f ms per query (%.2fx)\n",
           kh, t[0] * 1e3, t[1] * 1e3, t[1] / t[0]);
  }
  vlm_db_close(db);
  nftw(root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  free(centres), free(x), free(rnd), free(corr), free(keys), free(metas);
  free(caps);
  free(q), free(sims), free(items), free(got);
  return 0;
}
