/* train_kernels.c - the thread pool, and the training kernels compiled
 * for float and for double from train_kernels_tmpl.h. */
#include "train_kernels.h"

#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#include "vlm_error.h"

/* ---- thread pool ---------------------------------------------------- */

struct vlm__tpool {
  int n;
  pthread_t *threads;
  pthread_mutex_t mu;
  pthread_cond_t go, done;
  uint64_t generation; /* bumped for each job */
  int pending;         /* workers still running the current job */
  int quit;
  vlm__tpool_fn fn;
  void *ctx;
  int64_t total;
};

typedef struct {
  vlm__tpool *pool;
  int index;
} tpool_arg;

static void run_chunk(vlm__tpool *p, int t) {
  int64_t begin = p->total * t / p->n, end = p->total * (t + 1) / p->n;
  if (end > begin)
    p->fn(p->ctx, begin, end, t);
}

static void *tpool_main(void *argp) {
  tpool_arg *arg = argp;
  vlm__tpool *p = arg->pool;
  int t = arg->index;
  free(arg);
  uint64_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->quit && p->generation == seen)
      pthread_cond_wait(&p->go, &p->mu);
    if (p->quit)
      break;
    seen = p->generation;
    pthread_mutex_unlock(&p->mu);
    run_chunk(p, t);
    pthread_mutex_lock(&p->mu);
    if (--p->pending == 0)
      pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int vlm__tpool_create(int n, vlm__tpool **out) {
  *out = NULL;
  if (n < 1)
    n = 1;
  vlm__tpool *p = calloc(1, sizeof *p);
  if (!p)
    return vlm_seterr(VLM_ENOMEM, "thread pool");
  p->n = n;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->go, NULL);
  pthread_cond_init(&p->done, NULL);
  if (n > 1) {
    p->threads = calloc((size_t)n, sizeof *p->threads);
    if (!p->threads) {
      vlm__tpool_free(p);
      return vlm_seterr(VLM_ENOMEM, "thread pool");
    }
    for (int t = 1; t < n; t++) {
      tpool_arg *arg = malloc(sizeof *arg);
      if (arg) {
        arg->pool = p;
        arg->index = t;
      }
      if (!arg || pthread_create(&p->threads[t], NULL, tpool_main, arg)) {
        free(arg);
        p->n = t; /* threads 1..t-1 exist */
        vlm__tpool_free(p);
        return vlm_seterr(VLM_ENOMEM, "thread pool: cannot start thread %d",
                          t);
      }
    }
  }
  *out = p;
  return 0;
}

void vlm__tpool_free(vlm__tpool *p) {
  if (!p)
    return;
  if (p->threads) {
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n; t++)
      pthread_join(p->threads[t], NULL);
    free(p->threads);
  }
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->go);
  pthread_cond_destroy(&p->done);
  free(p);
}

int vlm__tpool_threads(const vlm__tpool *p) { return p ? p->n : 1; }

void vlm__tpool_for(vlm__tpool *p, int64_t n, vlm__tpool_fn fn, void *ctx) {
  if (n <= 0)
    return;
  if (!p || p->n <= 1 || n == 1) {
    fn(ctx, 0, n, 0);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->ctx = ctx;
  p->total = n;
  p->pending = p->n - 1;
  p->generation++;
  pthread_cond_broadcast(&p->go);
  pthread_mutex_unlock(&p->mu);
  run_chunk(p, 0);
  pthread_mutex_lock(&p->mu);
  while (p->pending > 0)
    pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

/* ---- kernels -------------------------------------------------------- */

/* exp for the float kernels in a form the compiler vectorizes (libm's
 * expf is a scalar call; floorf would not vectorize either): 2^k exp(r),
 * k rounded by the 1.5 * 2^23 trick, r = x - k ln 2 with ln 2 split in
 * two, Cephes' degree-6 polynomial.  Within 1.4 ulp of exp over the
 * clamped range [-87, 88]; below it gives about 1.6e-38 instead of 0,
 * which the softmax and sigmoid it serves cannot tell apart. */
static inline float tk_expf(float x) {
  x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
  float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  /* a NaN x leaves k NaN, whose conversion to int is undefined: take 0
   * (y is NaN already, so the result stays NaN) */
  int32_t ki = k == k ? (int32_t)k : 0;
  union {
    int32_t i;
    float f;
  } scale = {(ki + 127) << 23};
  return y * scale.f;
}

#define real float
#define SFX f32
#define GEMM cblas_sgemm
#define EXP tk_expf
#include "train_kernels_tmpl.h"
#undef real
#undef SFX
#undef GEMM
#undef EXP

#define real double
#define SFX f64
#define GEMM cblas_dgemm
#define EXP exp
#include "train_kernels_tmpl.h"
#undef real
#undef SFX
#undef GEMM
#undef EXP
