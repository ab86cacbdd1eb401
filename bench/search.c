/* search.c - recall@10 and QPS of vlm_index kinds on clustered 512-d unit
 * vectors, and what Debian's non-AVX2 FAISS build costs.
 *
 *   build/bench/search [--n 20000] [--nq 1000] [--seconds 2] [--nlist 0]
 *                      [--only flat,hnsw,ivf,ivfpq,kernel] [--seed 1]
 *
 * Data: n vectors around n / 100 random unit centres (x = c + g, g ~
 * N(0, NOISE^2 I / d), so cos(x, c) is about 0.55 and two points of one
 * cluster have cos about 0.3), normalised; nq queries drawn the same way.
 * The cluster size stays about 100 at every n, so the difficulty does
 * not change with n.
 * Exact neighbours come from a blocked OpenBLAS sgemm over all n.
 *
 * Each row times vlm_index_search one query per call (the way db/ calls
 * it), on 1 thread and on 2 threads sharing the query list, each with
 * OpenMP and OpenBLAS held to one thread.  A measurement stops after
 * --seconds or nq queries, whichever comes first; recall@10 is over the
 * queries it ran.  IVF uses nlist 4096 when n >= 39 * 4096 (FAISS's
 * training floor), else the largest power of two that n can train, or
 * --nlist.
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <faiss/c_api/utils/distances_c.h>

#include "vlm_error.h"
#include "vlm_index.h"

#define D 512
#define K 10
#define NOISE 1.5f /* |x - c| before normalising: cos(x, c) ~ 0.55 */

typedef struct {
  int64_t n;
  int nq;
  double seconds;
  int nlist;
  const char *only;
  uint64_t seed;
} options;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU seconds used by the calling thread: on a shared machine this is
 * the time the work took when it actually ran. */
static double thread_cpu(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "search: %s: %s\n", what, vlm_errmsg());
  exit(1);
}

static int wanted(const options *o, const char *name) {
  if (o->only == NULL) return 1;
  size_t len = strlen(name);
  for (const char *p = o->only; *p;) {
    const char *comma = strchr(p, ',');
    size_t l = comma ? (size_t)(comma - p) : strlen(p);
    if (l == len && strncmp(p, name, len) == 0) return 1;
    if (!comma) break;
    p = comma + 1;
  }
  return 0;
}

/* ----------------------------------------------------------------- data */

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Fill x[n] with N(0, sigma^2) samples (Box-Muller, both outputs). */
static void normals(float *x, int64_t n, float sigma, uint64_t *s) {
  for (int64_t i = 0; i < n; i += 2) {
    double u = ((splitmix(s) >> 11) + 1) * (1.0 / 9007199254740993.0);
    double v = (splitmix(s) >> 11) * (1.0 / 9007199254740992.0);
    double r = sqrt(-2.0 * log(u)) * sigma;
    x[i] = (float)(r * cos(6.283185307179586 * v));
    if (i + 1 < n) x[i + 1] = (float)(r * sin(6.283185307179586 * v));
  }
}

static void normalize(float *x) {
  double s = 0;
  for (int j = 0; j < D; j++) s += (double)x[j] * x[j];
  float inv = (float)(1.0 / sqrt(s));
  for (int j = 0; j < D; j++) x[j] *= inv;
}

/* x[n * D]: points around the centres c[ncentres * D]. */
static void clustered(float *x, int64_t n, const float *c, int ncentres,
                      uint64_t seed) {
  uint64_t s = seed;
  for (int64_t i = 0; i < n; i++) {
    float *xi = x + i * D;
    const float *ci = c + (splitmix(&s) % (uint64_t)ncentres) * D;
    normals(xi, D, NOISE / sqrtf((float)D), &s);
    for (int j = 0; j < D; j++) xi[j] += ci[j];
    normalize(xi);
  }
}

/* ------------------------------------------------------------ exact k-NN */

/* Keep the k best (ids[k], sc[k] sorted descending) with a new candidate. */
static void topk_push(int64_t *ids, float *sc, float s, int64_t id) {
  if (s <= sc[K - 1]) return;
  int r = K - 1;
  while (r > 0 && s > sc[r - 1]) {
    sc[r] = sc[r - 1];
    ids[r] = ids[r - 1];
    r--;
  }
  sc[r] = s;
  ids[r] = id;
}

static void topk_init(int64_t *ids, float *sc, int nq) {
  for (int i = 0; i < nq * K; i++) {
    ids[i] = -1;
    sc[i] = -INFINITY;
  }
}

/* Exact inner-product top-K of q[nq * D] over x[n * D] by sgemm in
 * blocks: scores[nq * B] = q[nq * D] . x_block[B * D]^T. */
static void brute_force_sgemm(const float *x, int64_t n, const float *q,
                              int nq, int64_t *ids, float *sc) {
  const int64_t B = 8192;
  float *s = malloc(sizeof(float) * (size_t)nq * B);
  if (!s) {
    fprintf(stderr, "search: out of memory\n");
    exit(1);
  }
  topk_init(ids, sc, nq);
  for (int64_t b0 = 0; b0 < n; b0 += B) {
    int64_t nb = n - b0 < B ? n - b0 : B;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, (int)nb, D, 1.0f,
                q, D, x + b0 * D, D, 0.0f, s, (int)nb);
    for (int i = 0; i < nq; i++)
      for (int64_t j = 0; j < nb; j++)
        topk_push(ids + i * K, sc + i * K, s[i * nb + j], b0 + j);
  }
  free(s);
}

static double recall_at_k(const int64_t *found, const int64_t *truth,
                          const unsigned char *done, int nq) {
  int64_t hit = 0, total = 0;
  for (int i = 0; i < nq; i++) {
    if (!done[i]) continue;
    for (int a = 0; a < K; a++) {
      total++;
      for (int b = 0; b < K; b++)
        if (found[i * K + b] == truth[i * K + a]) {
          hit++;
          break;
        }
    }
  }
  return total ? (double)hit / total : 0;
}

/* -------------------------------------------------------------- queries */

typedef enum { RUN_INDEX, RUN_SGEMV } run_kind;

typedef struct {
  run_kind kind;
  const vlm_index *index;
  vlm_index_params params;
  const float *x; /* RUN_SGEMV */
  int64_t n;
  const float *q;
  int nq;
  double deadline;
  atomic_int next;
  int64_t *ids;       /* nq * K */
  unsigned char *done;
  int error;
  double cpu_s[2];    /* per worker thread CPU seconds */
} run;

typedef struct {
  run *r;
  int slot;
} worker_arg;

static void *run_worker(void *arg) {
  run *r = ((worker_arg *)arg)->r;
  int slot = ((worker_arg *)arg)->slot;
  double c0 = thread_cpu();
  float sc[K];
  float *scores = r->kind == RUN_SGEMV ? malloc(sizeof(float) * r->n) : NULL;
  omp_set_num_threads(1);
  for (;;) {
    int i = atomic_fetch_add(&r->next, 1);
    if (i >= r->nq || now() > r->deadline) break;
    if (r->kind == RUN_INDEX) {
      if (vlm_index_search(r->index, 1, r->q + (size_t)i * D, K, &r->params,
                           sc, r->ids + (size_t)i * K) != 0) {
        r->error = 1;
        fprintf(stderr, "search: %s\n", vlm_errmsg());
        break;
      }
    } else {
      int64_t *ids = r->ids + (size_t)i * K;
      cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)r->n, D, 1.0f, r->x, D,
                  r->q + (size_t)i * D, 1, 0.0f, scores, 1);
      topk_init(ids, sc, 1);
      for (int64_t j = 0; j < r->n; j++) topk_push(ids, sc, scores[j], j);
    }
    r->done[i] = 1;
  }
  free(scores);
  r->cpu_s[slot] = thread_cpu() - c0;
  return NULL;
}

/* Queries per wall-clock second over nthreads threads; fills ids/done
 * and, in *cpu_qps (may be NULL), queries per CPU-second. */
static double measure(run *r, int nthreads, double seconds, double *cpu_qps) {
  pthread_t th[2];
  worker_arg args[2] = {{r, 0}, {r, 1}};
  memset(r->done, 0, (size_t)r->nq);
  atomic_store(&r->next, 0);
  r->error = 0;
  openblas_set_num_threads(1);
  double t0 = now();
  r->deadline = t0 + seconds;
  for (int t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, run_worker, &args[t]);
  for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
  double dt = now() - t0;
  int ran = 0;
  for (int i = 0; i < r->nq; i++) ran += r->done[i];
  if (r->error) exit(1);
  if (cpu_qps) {
    double cpu = 0;
    for (int t = 0; t < nthreads; t++) cpu += r->cpu_s[t];
    *cpu_qps = cpu > 0 ? ran / cpu : 0;
  }
  return ran / dt;
}

/* --------------------------------------------------------------- tables */

typedef struct {
  const float *x, *q;
  int64_t n;
  int nq;
  const int64_t *truth;
  double seconds;
} bench_data;

static int count_done(const unsigned char *done, int nq) {
  int c = 0;
  for (int i = 0; i < nq; i++) c += done[i];
  return c;
}

static void row(const bench_data *bd, const char *name, const char *param,
                double build_s, run *r) {
  double cpu_qps;
  double qps1 = measure(r, 1, bd->seconds, &cpu_qps);
  double rec = recall_at_k(r->ids, bd->truth, r->done, bd->nq);
  int n1 = count_done(r->done, bd->nq);
  double qps2 = measure(r, 2, bd->seconds, NULL);
  /* results are deterministic per query: take recall over the larger run */
  if (count_done(r->done, bd->nq) > n1)
    rec = recall_at_k(r->ids, bd->truth, r->done, bd->nq);
  char build[32] = "";
  if (build_s >= 0) snprintf(build, sizeof build, "%.1f", build_s);
  printf("%-18s %-12s %9s %10.4f %10.1f %10.1f %10.1f\n", name, param, build,
         rec, qps1, qps2, cpu_qps);
  fflush(stdout);
}

static vlm_index *build_index(const bench_data *bd, const char *factory,
                              double *build_s) {
  vlm_index *index = NULL;
  double t0 = now();
  openblas_set_num_threads(2);
  omp_set_num_threads(2);
  if (vlm_index_create(factory, D, VLM_METRIC_IP, &index) != 0) die(factory);
  int64_t need = vlm_index_train_size(index);
  if (need > bd->n) {
    fprintf(stderr, "search: %s needs %lld training vectors, n is %lld\n",
            factory, (long long)need, (long long)bd->n);
    exit(1);
  }
  if (need > 0 && vlm_index_train(index, need, bd->x) != 0) die("train");
  double t1 = now();
  int64_t *ids = malloc(sizeof(int64_t) * (size_t)bd->n);
  for (int64_t i = 0; i < bd->n; i++) ids[i] = i;
  const int64_t chunk = 100000;
  for (int64_t i = 0; i < bd->n; i += chunk) {
    int64_t m = bd->n - i < chunk ? bd->n - i : chunk;
    if (vlm_index_add(index, m, bd->x + i * D, ids + i) != 0) die("add");
  }
  free(ids);
  *build_s = now() - t0;
  fprintf(stderr, "  %s: train %.1f s, add %.1f s\n", factory, t1 - t0,
          now() - t1);
  return index;
}

/* ------------------------------------------------------- AVX2 estimate */

typedef float v8sf __attribute__((vector_size(32)));

/* The loop FAISS's generic fvec_inner_product runs, written with 8-wide
 * vectors so this file (built -march=native) shows what an AVX2 build of
 * that loop does here: out[ny] = y[ny * D] . x[D]. */
static void inner_products_v8(float *out, const float *x, const float *y,
                              int64_t ny) {
  for (int64_t i = 0; i < ny; i++) {
    const float *yi = y + i * D;
    v8sf acc[4] = {{0}, {0}, {0}, {0}};
    for (int j = 0; j < D; j += 32)
      for (int u = 0; u < 4; u++) {
        v8sf a, b;
        memcpy(&a, x + j + 8 * u, 32);
        memcpy(&b, yi + j + 8 * u, 32);
        acc[u] += a * b;
      }
    v8sf s = acc[0] + acc[1] + acc[2] + acc[3];
    out[i] = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
  }
}

/* GFlop/s of one kernel: repeat over a cache-resident block for ~0.2 s. */
static double kernel_gflops(int which, float *out, const float *q,
                            const float *y, int64_t ny) {
  double t0 = thread_cpu(), t;
  long reps = 0;
  do {
    if (which == 0) faiss_fvec_inner_products_ny(out, q, y, D, (size_t)ny);
    else if (which == 1) inner_products_v8(out, q, y, ny);
    else cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)ny, D, 1.0f, y, D, q, 1,
                     0.0f, out, 1);
    reps++;
  } while ((t = thread_cpu() - t0) < 0.2);
  return 2.0 * D * ny * reps / t * 1e-9;
}

static void kernel_report(const bench_data *bd) {
  /* 1000 x 512 floats = 2 MB: in cache, so this times arithmetic, not
   * memory bandwidth */
  int64_t ny = bd->n < 1000 ? bd->n : 1000;
  float *out = malloc(sizeof(float) * ny);
  double best[3] = {0, 0, 0};
  openblas_set_num_threads(1);
  for (int round = 0; round < 5; round++)
    for (int k = 0; k < 3; k++) {
      double g = kernel_gflops(k, out, bd->q + (size_t)(round % bd->nq) * D,
                               bd->x, ny);
      if (g > best[k]) best[k] = g;
    }
  printf("\nDistance kernel, one query against %lld cached vectors of %d-d, "
         "1 thread (best of 5 x 0.2 CPU-s):\n", (long long)ny, D);
  printf("  %-48s %7.1f GFlop/s\n",
         "FAISS fvec_inner_products_ny (Debian, no AVX2)", best[0]);
  printf("  %-48s %7.1f GFlop/s\n",
         "same loop, 8-wide (AVX2) vectors, -march=native", best[1]);
  printf("  %-48s %7.1f GFlop/s\n",
         "OpenBLAS sgemv (runtime-dispatched kernel)", best[2]);
  printf("  -> Debian's libfaiss.a (x86-64 baseline) runs the scalar reference\n"
         "     loop (fvec_inner_product -> fvec_inner_product_ref: one mulss +\n"
         "     addss per component, one serial chain).  An AVX2 build of it would\n"
         "     run %.1fx faster here.  vlmdb's index shim gives the flat stores\n"
         "     under HNSW, Flat and IVF quantizers AVX-512 kernels of its own, so\n"
         "     HNSW and single-query Flat no longer pay this; IVF-Flat's list\n"
         "     scans and IVF-PQ's tables still do.  Batch Flat and k-means\n"
         "     training use BLAS either way.\n", best[1] / best[0]);
  free(out);
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
  fprintf(stderr,
          "usage: search [--n N] [--nq Q] [--seconds S] [--nlist L]\n"
          "              [--only flat,hnsw,ivf,ivfpq,kernel] [--seed S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  /* libgomp reads OMP_WAIT_POLICY once, at load.  Its default spins in
   * every barrier, which on a shared 2-core machine turns FAISS's many
   * short parallel regions (k-means, PQ training) into time-slice waits:
   * IVF256,PQ64 training took 282 s spinning and 20 s passive here. */
  if (getenv("OMP_WAIT_POLICY") == NULL) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
  }
  options o = {.n = 20000, .nq = 1000, .seconds = 2.0, .seed = 1};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc) usage();
    if (!strcmp(a, "--n")) o.n = atoll(argv[++i]);
    else if (!strcmp(a, "--nq")) o.nq = atoi(argv[++i]);
    else if (!strcmp(a, "--seconds")) o.seconds = atof(argv[++i]);
    else if (!strcmp(a, "--nlist")) o.nlist = atoi(argv[++i]);
    else if (!strcmp(a, "--only")) o.only = argv[++i];
    else if (!strcmp(a, "--seed")) o.seed = strtoull(argv[++i], NULL, 10);
    else usage();
  }
  if (o.n < 1000 || o.nq < 1 || o.seconds <= 0) usage();

  int nlist = o.nlist;
  if (nlist <= 0) {
    nlist = 4096;
    while (nlist > 16 && (int64_t)nlist * 39 > o.n) nlist /= 2;
  }

  int ncentres = (int)(o.n / 100 < 16 ? 16 : o.n / 100);
  double t0 = now();
  float *centres = malloc(sizeof(float) * (size_t)ncentres * D);
  float *x = malloc(sizeof(float) * (size_t)o.n * D);
  float *q = malloc(sizeof(float) * (size_t)o.nq * D);
  int64_t *truth = malloc(sizeof(int64_t) * (size_t)o.nq * K);
  float *truth_sc = malloc(sizeof(float) * (size_t)o.nq * K);
  int64_t *ids = malloc(sizeof(int64_t) * (size_t)o.nq * K);
  unsigned char *done = malloc((size_t)o.nq);
  if (!centres || !x || !q || !truth || !truth_sc || !ids || !done) {
    fprintf(stderr, "search: out of memory for n %lld\n", (long long)o.n);
    return 1;
  }
  uint64_t s = o.seed;
  for (int c = 0; c < ncentres; c++) {
    normals(centres + c * D, D, 1.0f, &s);
    normalize(centres + c * D);
  }
  clustered(x, o.n, centres, ncentres, o.seed * 7919 + 1);
  clustered(q, o.nq, centres, ncentres, o.seed * 7919 + 2);
  fprintf(stderr, "data: %.1f s\n", now() - t0);

  char cpu[128] = "unknown CPU";
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f) {
    char line[256];
    while (fgets(line, sizeof line, f))
      if (!strncmp(line, "model name", 10)) {
        char *v = strchr(line, ':');
        if (v) snprintf(cpu, sizeof cpu, "%s", v + 2);
        cpu[strcspn(cpu, "\n")] = 0;
        break;
      }
    fclose(f);
  }

  /* exact neighbours, timed: the batch brute-force baseline */
  double qps_sgemm[2];
  for (int t = 0; t < 2; t++) {
    openblas_set_num_threads(t + 1);
    double tb = now();
    brute_force_sgemm(x, o.n, q, o.nq, truth, truth_sc);
    qps_sgemm[t] = o.nq / (now() - tb);
  }

  printf("vlmdb bench/search: n %lld, %d-d unit vectors around %d centres "
         "(noise %.1f), %d queries, k %d, %.1f s per measurement\n",
         (long long)o.n, D, ncentres, NOISE, o.nq, K, o.seconds);
  printf("machine: %s, %d CPUs (shared; numbers are noisy), "
         "OMP_WAIT_POLICY=%s\n", cpu, omp_get_num_procs(),
         getenv("OMP_WAIT_POLICY"));
  printf("QPS: one query per vlm_index_search call, wall clock; 2T = two "
         "threads sharing the queries;\nQPS/cpu-s = queries per CPU-second of "
         "the 1T run (what one dedicated core would do)\n\n");
  printf("%-18s %-12s %9s %10s %10s %10s %10s\n", "index", "param",
         "build_s", "recall@10", "QPS(1T)", "QPS(2T)", "QPS/cpu-s");

  bench_data bd = {.x = x, .q = q, .n = o.n, .nq = o.nq, .truth = truth,
                   .seconds = o.seconds};
  run r = {.kind = RUN_INDEX, .q = q, .nq = o.nq, .ids = ids, .done = done};
  double build_s;
  char factory[64], param[32];

  double flat_qps1 = 0;
  if (wanted(&o, "flat")) {
    vlm_index *index = build_index(&bd, "Flat", &build_s);
    r.index = index;
    memset(&r.params, 0, sizeof r.params);
    row(&bd, "Flat", "-", build_s, &r);
    measure(&r, 1, o.seconds, &flat_qps1);
    /* FAISS batch path: all queries in one call (it uses BLAS sgemm) */
    omp_set_num_threads(2);
    openblas_set_num_threads(2);
    float *sc = malloc(sizeof(float) * (size_t)o.nq * K);
    double tb = now();
    if (vlm_index_search(index, o.nq, q, K, NULL, sc, ids) != 0) die("batch");
    double batch_qps = o.nq / (now() - tb);  /* wall: 2 OpenMP threads */
    free(sc);
    vlm_index_free(index);

    run rs = {.kind = RUN_SGEMV, .x = x, .n = o.n, .q = q, .nq = o.nq,
              .ids = ids, .done = done};
    double sgemv_qps;
    measure(&rs, 1, o.seconds, &sgemv_qps);
    double sgemv_rec = recall_at_k(ids, truth, done, o.nq);
    printf("\nExhaustive search, FAISS vs OpenBLAS:\n");
    printf("  %-54s %9.1f QPS/cpu-s\n", "FAISS Flat, 1 query per call (vlmdb's SIMD store)",
           flat_qps1);
    printf("  %-54s %9.1f QPS/cpu-s (recall %.4f)\n",
           "OpenBLAS sgemv + top-k, 1 query per call", sgemv_qps, sgemv_rec);
    printf("  %-54s %9.1f QPS wall\n", "FAISS Flat, all queries in 1 call (BLAS), 2 thr",
           batch_qps);
    printf("  %-54s %9.1f QPS wall\n", "OpenBLAS sgemm + top-k, batch, 1 thread",
           qps_sgemm[0]);
    printf("  %-54s %9.1f QPS wall\n\n", "OpenBLAS sgemm + top-k, batch, 2 threads",
           qps_sgemm[1]);
  }

  if (wanted(&o, "hnsw")) {
    vlm_index *index = build_index(&bd, "HNSW32", &build_s);
    r.index = index;
    int efs[] = {16, 32, 64, 128, 256};
    for (int i = 0; i < 5; i++) {
      memset(&r.params, 0, sizeof r.params);
      r.params.ef_search = efs[i];
      snprintf(param, sizeof param, "ef=%d", efs[i]);
      row(&bd, "HNSW32", param, i == 0 ? build_s : -1, &r);
    }
    vlm_index_free(index);
  }

  const char *ivf_kinds[2] = {"ivf", "ivfpq"};
  for (int v = 0; v < 2; v++) {
    if (!wanted(&o, ivf_kinds[v])) continue;
    snprintf(factory, sizeof factory, v == 0 ? "IVF%d,Flat" : "IVF%d,PQ64", nlist);
    vlm_index *index = build_index(&bd, factory, &build_s);
    r.index = index;
    for (int nprobe = 1, i = 0; nprobe <= 64 && nprobe <= nlist; nprobe *= 2, i++) {
      memset(&r.params, 0, sizeof r.params);
      r.params.nprobe = nprobe;
      snprintf(param, sizeof param, "nprobe=%d", nprobe);
      row(&bd, factory, param, i == 0 ? build_s : -1, &r);
    }
    vlm_index_free(index);
  }

  if (wanted(&o, "kernel")) kernel_report(&bd);

  free(centres);
  free(x);
  free(q);
  free(truth);
  free(truth_sc);
  free(ids);
  free(done);
  return 0;
}
