/* forward.c - the vision and text towers.
 *
 * One call runs as a team of threads (the caller plus threads-1 helpers,
 * created for the call), each executing the same layer sequence on its
 * share of the work and meeting at a barrier between steps: matrix
 * products are split by output columns, layer norms by rows, attention by
 * (sequence, head).  Each thread calls single-threaded sgemm.  This keeps
 * every call's parallelism its own, so concurrent callers on one model do
 * not fight over OpenBLAS's process-wide thread pool; a call's result
 * depends only on its inputs and the model's thread count, never on what
 * other threads are doing.
 *
 * Sequences of one batch are packed row after row (a text of 7 tokens
 * takes 7 rows), so one GEMM covers the batch and padding costs nothing.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "clip_int.h"
#include "kernels.h"
#include "vlm_error.h"

#define MAX_THREADS 64

/* A barrier that spins briefly before sleeping.  The steps between
 * barriers are short (a text query's layer is tens of microseconds), and
 * waking a thread from a futex costs about as much as the step, so the
 * waiters first watch the generation counter; if the others are slow (a
 * busy machine), they block on the condition variable. */
#define SPIN_ITERATIONS 4000

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int n;
  atomic_int arrived;
  atomic_uint gen;
} barrier;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static void barrier_wait(barrier *b) {
  unsigned g = atomic_load_explicit(&b->gen, memory_order_acquire);
  if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) ==
      b->n - 1) {
    /* Last to arrive: reset for the next use, then release the others.
     * Whoever sees the new generation also sees arrived == 0. */
    atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
    pthread_mutex_lock(&b->mu);
    atomic_store_explicit(&b->gen, g + 1, memory_order_release);
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return;
  }
  for (int i = 0; i < SPIN_ITERATIONS; i++) {
    if (atomic_load_explicit(&b->gen, memory_order_acquire) != g)
      return;
    cpu_relax();
  }
  pthread_mutex_lock(&b->mu);
  while (atomic_load_explicit(&b->gen, memory_order_acquire) == g)
    pthread_cond_wait(&b->cv, &b->mu);
  pthread_mutex_unlock(&b->mu);
}

typedef struct team team;
struct team {
  void (*fn)(void *arg, int tid);
  void *arg;
  int nth;
  int go;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  barrier bar;
};

typedef struct {
  team *tm;
  int tid;
} team_slot;

static void *team_worker(void *p) {
  team_slot *s = p;
  team *tm = s->tm;
  pthread_mutex_lock(&tm->mu);
  while (!tm->go)
    pthread_cond_wait(&tm->cv, &tm->mu);
  pthread_mutex_unlock(&tm->mu);
  if (s->tid < tm->nth)
    tm->fn(tm->arg, s->tid);
  return NULL;
}

/* Run fn(arg, tid) on up to want threads (the caller is tid 0).  If a
 * thread cannot be created the team is smaller; the work split adapts
 * because every thread reads tm->nth only after the start gate opens. */
static void team_run(team *tm, int want, void (*fn)(void *, int), void *arg) {
  pthread_t th[MAX_THREADS];
  team_slot slots[MAX_THREADS];
  if (want > MAX_THREADS)
    want = MAX_THREADS;
  if (want < 1)
    want = 1;
  tm->fn = fn;
  tm->arg = arg;
  tm->go = 0;
  tm->nth = want;
  pthread_mutex_init(&tm->mu, NULL);
  pthread_cond_init(&tm->cv, NULL);
  int started = 1;
  for (int t = 1; t < want; t++) {
    slots[t].tm = tm;
    slots[t].tid = t;
    if (pthread_create(&th[t], NULL, team_worker, &slots[t]))
      break;
    started++;
  }
  tm->nth = started;
  if (started > 1) {
    pthread_mutex_init(&tm->bar.mu, NULL);
    pthread_cond_init(&tm->bar.cv, NULL);
    tm->bar.n = started;
    atomic_init(&tm->bar.arrived, 0);
    atomic_init(&tm->bar.gen, 0);
  }
  pthread_mutex_lock(&tm->mu);
  tm->go = 1;
  pthread_cond_broadcast(&tm->cv);
  pthread_mutex_unlock(&tm->mu);
  fn(arg, 0);
  for (int t = 1; t < started; t++)
    pthread_join(th[t], NULL);
  if (started > 1) {
    pthread_cond_destroy(&tm->bar.cv);
    pthread_mutex_destroy(&tm->bar.mu);
  }
  pthread_cond_destroy(&tm->cv);
  pthread_mutex_destroy(&tm->mu);
}

static inline void team_sync(team *tm) {
  if (tm->nth > 1)
    barrier_wait(&tm->bar);
}

/* [lo, hi) of n items for thread tid. */
static inline void share(int n, int tid, int nth, int *lo, int *hi) {
  *lo = (int)((int64_t)n * tid / nth);
  *hi = (int)((int64_t)n * (tid + 1) / nth);
}

/* Columns [lo, hi) of N for thread tid, in whole groups of 16. */
static inline void share_cols(int N, int tid, int nth, int *lo, int *hi) {
  int groups = (N + 15) / 16;
  share(groups, tid, nth, lo, hi);
  *lo *= 16;
  *hi *= 16;
  if (*hi > N)
    *hi = N;
  if (*lo > N)
    *lo = N;
}

/* ---- one forward pass -------------------------------------------------- */

typedef struct {
  team tm;
  /* tower geometry */
  int C, H, hd, F, layers, causal, quick;
  float eps;
  int panels, panels_bf16; /* use the blocks' packed weights */
  const vlm__block *blocks;
  /* batch: n sequences packed into R rows */
  int n, R, max_T;
  int *start, *len;
  /* activations */
  float *x;      /* [R, C] residual stream */
  float *h;      /* [R, C] normed input of a sub-layer */
  float *qkv;    /* [R, 3C] */
  float *att;    /* [R, C] attention output before out_proj */
  float *mlp;    /* [R, F] */
  float *scores; /* [threads, scores_per_thread] attention scratch */
  size_t scores_per_thread;
  float *pooled; /* [n, C] */
  float *xc;     /* [n, C] the pooled rows' residual stream, last block */
  /* pooling and projection */
  const float *ln_w, *ln_b, *proj;
  int D;
  float *out; /* [n, D] */
  /* inputs */
  const vlm_clip *clip;
  const int32_t *const *ids;
  const float *pixels;
  float *patches; /* [n * G*G, 3*P*P] */
  size_t mem_bytes; /* the scratch block x points into */
} fwd;

/* out[:, cols of tid] = in · w[cols]ᵀ (+ bias), from the packed panels
 * when the pass uses them (few rows), else sgemm. */
static void mm_share(const fwd *f, int tid, float *out, int ldo,
                     const float *in, int ldi, const float *w,
                     const uint16_t *panels, const float *bias, int M, int N,
                     int K, int acc) {
  int lo, hi;
  if (panels && f->panels) {
    int np = (N + VLM__PANEL - 1) / VLM__PANEL;
    share(np, tid, f->tm.nth, &lo, &hi);
    lo *= VLM__PANEL;
    hi = hi * VLM__PANEL < N ? hi * VLM__PANEL : N;
    if (hi > lo)
      vlm__matmul_panels(out, ldo, in, ldi, panels, f->panels_bf16, bias, M,
                         lo, hi, K, acc);
    return;
  }
  share_cols(N, tid, f->tm.nth, &lo, &hi);
  if (hi > lo)
    vlm__matmul(out + lo, ldo, in, ldi, w + (size_t)lo * K, K,
                bias ? bias + lo : NULL, M, hi - lo, K, acc);
}

/* The second half of a block over R rows: x += att·Woᵀ + bo, then
 * x += W2·act(W1·ln_2(x)).  h and mlp are scratch of R rows. */
static void block_tail(fwd *f, int tid, const vlm__block *b, float *x,
                       const float *att, float *h, float *mlp, int R) {
  const int C = f->C, F = f->F, nth = f->tm.nth;
  int r0, r1;
  share(R, tid, nth, &r0, &r1);
  mm_share(f, tid, x, C, att, C, b->o_w, b->p_o, b->o_b, R, C, C, 1);
  team_sync(&f->tm);
  vlm__layernorm(h + (size_t)r0 * C, C, x + (size_t)r0 * C, C, b->ln2_w,
                 b->ln2_b, r1 - r0, C, f->eps);
  team_sync(&f->tm);
  /* mlp = act(h · W1ᵀ + b1), each thread on its own columns */
  int c0, c1;
  if (f->panels && b->p_fc1) {
    share((F + VLM__PANEL - 1) / VLM__PANEL, tid, nth, &c0, &c1);
    c0 *= VLM__PANEL;
    c1 = c1 * VLM__PANEL < F ? c1 * VLM__PANEL : F;
    if (c1 > c0)
      vlm__matmul_panels(mlp, F, h, C, b->p_fc1, f->panels_bf16, b->fc1_b, R,
                         c0, c1, C, 0);
  } else {
    share_cols(F, tid, nth, &c0, &c1);
    if (c1 > c0)
      vlm__matmul(mlp + c0, F, h, C, b->fc1_w + (size_t)c0 * C, C,
                  b->fc1_b + c0, R, c1 - c0, C, 0);
  }
  if (c1 > c0)
    for (int r = 0; r < R; r++) {
      float *seg = mlp + (size_t)r * F + c0;
      if (f->quick)
        vlm__quick_gelu(seg, (size_t)(c1 - c0));
      else
        vlm__gelu(seg, (size_t)(c1 - c0));
    }
  team_sync(&f->tm);
  mm_share(f, tid, x, C, mlp, F, b->fc2_w, b->p_fc2, b->fc2_b, R, C, F, 1);
  team_sync(&f->tm);
}

/* Row of sequence i the tower pools: the class token (vision) or the end
 * token, the sequence's last row (text). */
static inline int pool_row(const fwd *f, int i) {
  return f->causal ? f->start[i] + f->len[i] - 1 : f->start[i];
}

/* The blocks.  In the last one only the pooled rows matter past the
 * attention (keys and values still come from every row), so the rest of
 * it runs on those n rows, gathered into xc. */
static void blocks_run(fwd *f, int tid) {
  const int C = f->C, R = f->R, nth = f->tm.nth;
  int r0, r1;
  share(R, tid, nth, &r0, &r1);
  for (int l = 0; l < f->layers; l++) {
    const vlm__block *b = &f->blocks[l];
    const int last = l == f->layers - 1;
    /* h = ln_1(x) */
    vlm__layernorm(f->h + (size_t)r0 * C, C, f->x + (size_t)r0 * C, C,
                   b->ln1_w, b->ln1_b, r1 - r0, C, f->eps);
    team_sync(&f->tm);
    /* qkv = h · [Wq; Wk; Wv]ᵀ + b */
    if (b->qkv_fused) {
      mm_share(f, tid, f->qkv, 3 * C, f->h, C, b->q_w, b->p_qkv, b->q_b, R,
               3 * C, C, 0);
    } else {
      mm_share(f, tid, f->qkv, 3 * C, f->h, C, b->q_w, NULL, b->q_b, R, C, C,
               0);
      mm_share(f, tid, f->qkv + C, 3 * C, f->h, C, b->k_w, NULL, b->k_b, R, C,
               C, 0);
      mm_share(f, tid, f->qkv + 2 * C, 3 * C, f->h, C, b->v_w, NULL, b->v_b,
               R, C, C, 0);
    }
    team_sync(&f->tm);
    /* attention per (sequence, head); in the last block only the pooled
     * query, written to row i of att */
    int t0, t1;
    share(f->n * f->H, tid, nth, &t0, &t1);
    for (int task = t0; task < t1; task++) {
      int i = task / f->H, head = task % f->H;
      size_t row = (size_t)f->start[i];
      const float *q = f->qkv + row * 3 * C + (size_t)head * f->hd;
      int q0 = last ? pool_row(f, i) - f->start[i] : 0;
      int q1 = last ? q0 + 1 : f->len[i];
      float *out = f->att + (last ? (size_t)i : row) * C + (size_t)head * f->hd;
      vlm__attention(out, C, q, q + C, q + 2 * C, 3 * C, f->len[i], f->hd,
                     f->causal, q0, q1,
                     f->scores + (size_t)tid * f->scores_per_thread);
    }
    if (!last) {
      team_sync(&f->tm);
      block_tail(f, tid, b, f->x, f->att, f->h, f->mlp, R);
      continue;
    }
    int i0, i1;
    share(f->n, tid, nth, &i0, &i1);
    for (int i = i0; i < i1; i++)
      memcpy(f->xc + (size_t)i * C, f->x + (size_t)pool_row(f, i) * C,
             (size_t)C * sizeof(float));
    team_sync(&f->tm);
    block_tail(f, tid, b, f->xc, f->att, f->h, f->mlp, f->n);
  }
}

/* pooled = ln(pooled rows, in xc); out = pooled · projᵀ */
static void pool_run(fwd *f, int tid) {
  int i0, i1;
  share(f->n, tid, f->tm.nth, &i0, &i1);
  vlm__layernorm(f->pooled + (size_t)i0 * f->C, f->C,
                 f->xc + (size_t)i0 * f->C, f->C, f->ln_w, f->ln_b, i1 - i0,
                 f->C, f->eps);
  team_sync(&f->tm);
  mm_share(f, tid, f->out, f->D, f->pooled, f->C, f->proj, NULL, NULL, f->n,
           f->D, f->C, 0);
}

static void text_thread(void *arg, int tid) {
  fwd *f = arg;
  const vlm__weights *w = &f->clip->w;
  const int C = f->C;
  int i0, i1;
  share(f->n, tid, f->tm.nth, &i0, &i1);
  for (int i = i0; i < i1; i++)
    for (int t = 0; t < f->len[i]; t++) {
      float *x = f->x + (size_t)(f->start[i] + t) * C;
      const float *e = w->tok_emb + (size_t)f->ids[i][t] * C;
      const float *p = w->tpos + (size_t)t * C;
      for (int c = 0; c < C; c++)
        x[c] = e[c] + p[c];
    }
  team_sync(&f->tm);
  blocks_run(f, tid);
  pool_run(f, tid);
}

static void vision_thread(void *arg, int tid) {
  fwd *f = arg;
  const vlm__clip_config *cfg = &f->clip->cfg;
  const vlm__weights *w = &f->clip->w;
  const int C = f->C, P = cfg->patch_size, S = cfg->image_size;
  const int G = S / P, NP = G * G, K = 3 * P * P, T = NP + 1;
  const int nth = f->tm.nth;
  /* im2col: row (image, patch), column (channel, y, x) as conv1's
   * [C, 3, P, P] weight is laid out. */
  int p0, p1;
  share(f->n * NP, tid, nth, &p0, &p1);
  for (int r = p0; r < p1; r++) {
    int img = r / NP, gy = (r % NP) / G, gx = r % G;
    const float *src = f->pixels + (size_t)img * 3 * S * S;
    float *dst = f->patches + (size_t)r * K;
    for (int c = 0; c < 3; c++)
      for (int y = 0; y < P; y++)
        memcpy(dst + (c * P + y) * P,
               src + ((size_t)c * S + (size_t)gy * P + y) * S + (size_t)gx * P,
               (size_t)P * sizeof(float));
  }
  team_sync(&f->tm);
  /* h[n*NP, C] = patches · conv1ᵀ */
  mm_share(f, tid, f->h, C, f->patches, K, w->patch_w, w->p_patch, NULL,
           f->n * NP, C, K, 0);
  team_sync(&f->tm);
  /* x = [class; patches] + positions, then pre-LN in place */
  int r0, r1;
  share(f->R, tid, nth, &r0, &r1);
  for (int r = r0; r < r1; r++) {
    int img = r / T, t = r % T;
    float *x = f->x + (size_t)r * C;
    const float *src = t == 0 ? w->class_emb
                              : f->h + ((size_t)img * NP + (size_t)(t - 1)) * C;
    const float *pos = w->vpos + (size_t)t * C;
    for (int c = 0; c < C; c++)
      x[c] = src[c] + pos[c];
  }
  vlm__layernorm(f->x + (size_t)r0 * C, C, f->x + (size_t)r0 * C, C,
                 w->pre_ln_w, w->pre_ln_b, r1 - r0, C, f->eps);
  team_sync(&f->tm);
  blocks_run(f, tid);
  pool_run(f, tid);
}

static int fwd_alloc(fwd *f, size_t extra_floats, float **extra) {
  size_t R = (size_t)f->R, C = (size_t)f->C, F = (size_t)f->F;
  f->scores_per_thread = vlm__attention_scratch(f->max_T, f->hd);
  size_t floats = R * C * 3 + R * 3 * C + R * F +
                  (size_t)MAX_THREADS * f->scores_per_thread +
                  2 * (size_t)f->n * C + extra_floats;
  float *mem = vlm__scratch_get(f->clip, floats * sizeof(float),
                                &f->mem_bytes);
  int *idx = malloc((size_t)f->n * 2 * sizeof(int));
  if (!mem || !idx) {
    vlm__scratch_put(f->clip, mem, f->mem_bytes);
    free(idx);
    return vlm_seterr(VLM_ENOMEM, "out of memory for %d-row activations",
                      f->R);
  }
  f->x = mem;
  f->h = f->x + R * C;
  f->att = f->h + R * C;
  f->qkv = f->att + R * C;
  f->mlp = f->qkv + R * 3 * C;
  f->scores = f->mlp + R * F;
  f->pooled = f->scores + (size_t)MAX_THREADS * f->scores_per_thread;
  f->xc = f->pooled + (size_t)f->n * C;
  *extra = f->xc + (size_t)f->n * C;
  f->start = idx;
  f->len = idx + f->n;
  return 0;
}

static void fwd_free(fwd *f) {
  vlm__scratch_put(f->clip, f->x, f->mem_bytes);
  free(f->start);
}

int vlm__text_forward(const vlm_clip *clip, const int32_t *const *ids,
                      const int *n_ids, int n, float *out) {
  const vlm__clip_config *cfg = &clip->cfg;
  fwd f;
  memset(&f, 0, sizeof f);
  f.clip = clip;
  f.C = cfg->text_width;
  f.H = cfg->text_heads;
  f.hd = f.C / f.H;
  f.F = cfg->text_mlp;
  f.layers = cfg->text_layers;
  f.causal = 1;
  f.quick = cfg->text_quick_gelu;
  f.eps = cfg->text_eps;
  f.blocks = clip->w.tblocks;
  f.ln_w = clip->w.final_ln_w;
  f.ln_b = clip->w.final_ln_b;
  f.proj = clip->w.tproj;
  f.D = cfg->projection_dim;
  f.out = out;
  f.ids = ids;
  f.n = n;
  for (int i = 0; i < n; i++) {
    f.R += n_ids[i];
    if (n_ids[i] > f.max_T)
      f.max_T = n_ids[i];
  }
  f.panels = clip->panels != NULL;
  f.panels_bf16 = clip->panels_bf16;
  float *unused;
  int rc = fwd_alloc(&f, 0, &unused);
  if (rc)
    return rc;
  for (int i = 0, row = 0; i < n; i++) {
    f.start[i] = row;
    f.len[i] = n_ids[i];
    row += n_ids[i];
  }
  team_run(&f.tm, clip->threads, text_thread, &f);
  fwd_free(&f);
  return 0;
}

int vlm__vision_forward(const vlm_clip *clip, const float *pixels, int n,
                        float *out) {
  const vlm__clip_config *cfg = &clip->cfg;
  const int G = cfg->image_size / cfg->patch_size;
  fwd f;
  memset(&f, 0, sizeof f);
  f.clip = clip;
  f.C = cfg->vision_width;
  f.H = cfg->vision_heads;
  f.hd = f.C / f.H;
  f.F = cfg->vision_mlp;
  f.layers = cfg->vision_layers;
  f.causal = 0;
  f.quick = cfg->vision_quick_gelu;
  f.eps = cfg->vision_eps;
  f.blocks = clip->w.vblocks;
  f.ln_w = clip->w.post_ln_w;
  f.ln_b = clip->w.post_ln_b;
  f.proj = clip->w.vproj;
  f.D = cfg->projection_dim;
  f.out = out;
  f.pixels = pixels;
  f.n = n;
  f.max_T = G * G + 1;
  f.R = n * f.max_T;
  f.panels = clip->panels != NULL;
  f.panels_bf16 = clip->panels_bf16;
  size_t patch_floats = (size_t)n * G * G * 3 * cfg->patch_size *
                        cfg->patch_size;
  int rc = fwd_alloc(&f, patch_floats, &f.patches);
  if (rc)
    return rc;
  for (int i = 0; i < n; i++) {
    f.start[i] = i * f.max_T;
    f.len[i] = f.max_T;
  }
  team_run(&f.tm, clip->threads, vision_thread, &f);
  fwd_free(&f);
  return 0;
}
