/* forward.c - the vision and text towers.
 *
 * One call runs as a team of threads (the caller plus threads-1 helpers,
 * created for the call), each executing the same sequence of steps (layer
 * norm, q/k/v product, attention, ...).  A step is cut into chunks (a few
 * panels of output columns, a (sequence, head) pair, a block of rows) that
 * the threads claim from a per-step counter, and a thread moves on once
 * every chunk of the step is done.  So the work goes to whichever threads
 * are running: on a busy machine, where a helper may not get a core for a
 * while, the others take its share instead of waiting for it, and a thread
 * that was away finds the finished steps and catches up.  Each thread
 * calls single-threaded BLAS, so concurrent callers on one model do not
 * fight over OpenBLAS's process-wide pool.  Which thread computes a chunk
 * does not change its result: a call's output depends only on its inputs
 * and the model's thread count (the sgemm path sizes its chunks by it).
 *
 * Sequences of one batch are packed row after row (a text of 7 tokens
 * takes 7 rows), so one product covers the batch and padding costs nothing.
 */
#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "clip_int.h"
#include "kernels.h"
#include "vlm_error.h"

#define MAX_THREADS 64

/* ---- steps and the team ------------------------------------------------- */

/* Waiting for a step's last chunk: spin briefly (steps are short: a text
 * query's layer is tens of microseconds, and a futex wake costs about as
 * much), then sleep on the team's condition variable. */
#define SPIN_ITERATIONS 4000
#define ROWS_PER_CHUNK 16
#define PANELS_PER_CHUNK 2

typedef struct {
  atomic_int claimed; /* next chunk to hand out */
  atomic_int done;    /* chunks finished */
} step;

typedef struct {
  void (*fn)(void *arg, int tid);
  void *arg;
  int nth;
  int go;
  pthread_mutex_t mu; /* start gate, and sleeping waiters */
  pthread_cond_t cv;
  step *steps;        /* one per step of the pass, zeroed */
  int n_steps;
} team;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* The next step of this thread's program (every thread runs the same
 * sequence, so the same index means the same step everywhere). */
static inline step *step_next(team *tm, int *s) {
  assert(*s < tm->n_steps);
  return &tm->steps[(*s)++];
}

static inline int step_claim(step *st) {
  return atomic_fetch_add_explicit(&st->claimed, 1, memory_order_relaxed);
}

/* A chunk is finished: its writes are released to whoever sees done. */
static inline void step_finish(team *tm, step *st, int n) {
  if (atomic_fetch_add_explicit(&st->done, 1, memory_order_acq_rel) + 1 == n &&
      tm->nth > 1) {
    pthread_mutex_lock(&tm->mu);
    pthread_cond_broadcast(&tm->cv);
    pthread_mutex_unlock(&tm->mu);
  }
}

/* Wait until all n chunks of st are finished (and see their writes). */
static void step_wait(team *tm, step *st, int n) {
  for (int i = 0; i < SPIN_ITERATIONS; i++) {
    if (atomic_load_explicit(&st->done, memory_order_acquire) >= n)
      return;
    cpu_relax();
  }
  pthread_mutex_lock(&tm->mu);
  while (atomic_load_explicit(&st->done, memory_order_acquire) < n)
    pthread_cond_wait(&tm->cv, &tm->mu);
  pthread_mutex_unlock(&tm->mu);
}

/* for (each chunk k of n claimed by this thread) { body }, then wait for
 * the step to complete. */
#define FOR_CHUNKS(tm, s, k, n)                                               \
  for (step *st_ = step_next(tm, s), *once_ = st_; once_;                     \
       step_wait(tm, st_, n), once_ = NULL)                                   \
    for (int k; (k = step_claim(st_)) < (n); step_finish(tm, st_, n))

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
  tm->fn(tm->arg, s->tid);
  return NULL;
}

/* Run fn(arg, tid) on up to want threads (the caller is tid 0).  If a
 * thread cannot be created the team is just smaller: chunks go to the
 * threads there are. */
static void team_run(team *tm, int want, void (*fn)(void *, int), void *arg) {
  pthread_t th[MAX_THREADS];
  team_slot slots[MAX_THREADS];
  if (want > MAX_THREADS)
    want = MAX_THREADS;
  tm->fn = fn;
  tm->arg = arg;
  tm->go = 0;
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
  pthread_mutex_lock(&tm->mu);
  tm->nth = started;
  tm->go = 1;
  pthread_cond_broadcast(&tm->cv);
  pthread_mutex_unlock(&tm->mu);
  fn(arg, 0);
  for (int t = 1; t < started; t++)
    pthread_join(th[t], NULL);
  pthread_cond_destroy(&tm->cv);
  pthread_mutex_destroy(&tm->mu);
}

static inline int chunks_of(int n, int per) { return (n + per - 1) / per; }

/* ---- one forward pass ---------------------------------------------------- */

/* How a tower pools each sequence into one vector. */
typedef enum {
  POOL_FIRST, /* the first row: CLIP's class token, BERT's [CLS] */
  POOL_LAST,  /* the last row: CLIP's end token, SigLIP's last position */
  POOL_HEAD   /* SigLIP's attention-pooling head over every row */
} pool_kind;

typedef struct {
  team tm;
  /* tower geometry */
  int C, H, hd, F, layers, causal;
  vlm__act act;
  int post_ln;       /* BERT's post-LN blocks, else pre-LN */
  pool_kind pool;
  float eps;
  int panels, panels_bf16; /* use the blocks' packed weights */
  vlm__compute qmode;      /* int8 / bf16: the blocks' quantized layers */
  uint8_t *qa;             /* [R, up to F] the quantized input of a product */
  float *xs;               /* [R] its row scales (int8) */
  int32_t *xz;             /* [R] its row zero points (int8) */
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
  /* pooling and projection: out = ln(pooled) · projᵀ + proj_b (ln_w and
   * proj_b NULL when the tower has none) */
  const float *ln_w, *ln_b, *proj, *proj_b;
  int D;
  float *out; /* [n, D] */
  /* inputs */
  const vlm_clip *clip;
  const int32_t *const *ids;
  const float *pixels;
  float *patches;   /* [n * G*G, 3*P*P] */
  size_t mem_bytes; /* the scratch block x points into */
} fwd;

/* The tower's activation as a kernel. */
static void (*act_fn(vlm__act act))(float *, size_t) {
  switch (act) {
  case VLM__ACT_QUICK_GELU:
    return vlm__quick_gelu;
  case VLM__ACT_GELU_TANH:
    return vlm__gelu_tanh;
  default:
    return vlm__gelu;
  }
}

/* Column chunks of a product with N outputs: a couple of panels each for
 * the panel kernel (it reads its input in place, so small chunks cost
 * nothing); for sgemm, which packs the input on every call, a few large
 * ones. */
static int col_chunks(const fwd *f, const uint16_t *panels,
                      const vlm__qlinear *ql, int N) {
  if (ql)
    return chunks_of(chunks_of(N, VLM__QPANEL), PANELS_PER_CHUNK);
  if (panels && f->panels)
    return chunks_of(chunks_of(N, VLM__PANEL), PANELS_PER_CHUNK);
  int n = 2 * f->tm.nth;
  int groups = chunks_of(N, 16);
  return n < groups ? n : groups;
}

/* out[:, columns of chunk k] = act(in · w[columns]ᵀ (+ bias)) (act NULL:
 * none).  The panel kernel applies act to a few rows at a time, while they
 * are in cache. */
static void mm_chunk(const fwd *f, int k, int nk, float *out, int ldo,
                     const float *in, int ldi, const float *w,
                     const uint16_t *panels, const vlm__qlinear *ql,
                     const float *bias, int M, int N, int K, int acc,
                     void (*act)(float *, size_t)) {
  int lo, hi;
  if (ql) { /* from f->qa, which a qact_step filled from in */
    const int per = PANELS_PER_CHUNK * VLM__QPANEL;
    int ld;
    vlm__qact_bytes(ql->mode, 0, K, &ld);
    lo = k * per;
    hi = lo + per < N ? lo + per : N;
    vlm__qmatmul(out, ldo, f->qa, ld, f->xs, f->xz, ql, M, lo, hi, acc, act);
  } else if (panels && f->panels) {
    const int per = PANELS_PER_CHUNK * VLM__PANEL;
    lo = k * per;
    hi = lo + per < N ? lo + per : N;
    vlm__matmul_panels(out, ldo, in, ldi, panels, f->panels_bf16, bias, M, lo,
                       hi, K, acc, act);
  } else {
    int groups = chunks_of(N, 16);
    lo = (int)((int64_t)groups * k / nk) * 16;
    hi = (int)((int64_t)groups * (k + 1) / nk) * 16;
    hi = hi < N ? hi : N;
    if (hi > lo)
      vlm__matmul(out + lo, ldo, in, ldi, w + (size_t)lo * K, K,
                  bias ? bias + lo : NULL, M, hi - lo, K, acc);
    for (int r = 0; act && r < M && hi > lo; r++)
      act(out + (size_t)r * ldo + lo, (size_t)(hi - lo));
  }
}

/* f->qa = in[M, K] quantized for ql's product (one step, before it). */
static void qact_step(fwd *f, int *s, const vlm__qlinear *ql, const float *in,
                      int ldi, int M, int K) {
  int ld;
  vlm__qact_bytes(ql->mode, 0, K, &ld);
  const int nk = chunks_of(M, ROWS_PER_CHUNK);
  FOR_CHUNKS(&f->tm, s, k, nk) {
    int r0 = k * ROWS_PER_CHUNK;
    int r1 = r0 + ROWS_PER_CHUNK < M ? r0 + ROWS_PER_CHUNK : M;
    vlm__qact_rows(ql->mode, f->qa, ld, f->xs, f->xz, in, ldi, r0, r1, K, ql);
  }
}

/* A whole product as one step (two with a quantized layer ql; then w,
 * panels and bias are unused). */
static void mm_step(fwd *f, int *s, float *out, int ldo, const float *in,
                    int ldi, const float *w, const uint16_t *panels,
                    const vlm__qlinear *ql, const float *bias, int M, int N,
                    int K, int acc) {
  if (ql)
    qact_step(f, s, ql, in, ldi, M, K);
  const int nk = col_chunks(f, panels, ql, N);
  FOR_CHUNKS(&f->tm, s, k, nk)
  mm_chunk(f, k, nk, out, ldo, in, ldi, w, panels, ql, bias, M, N, K, acc,
           NULL);
}

/* out[rows] = layer_norm(in[rows]) as one step. */
static void ln_step(fwd *f, int *s, float *out, const float *in,
                    const float *w, const float *b, int R) {
  const int C = f->C, nk = chunks_of(R, ROWS_PER_CHUNK);
  FOR_CHUNKS(&f->tm, s, k, nk) {
    int r0 = k * ROWS_PER_CHUNK;
    int rows = R - r0 < ROWS_PER_CHUNK ? R - r0 : ROWS_PER_CHUNK;
    vlm__layernorm(out + (size_t)r0 * C, C, in + (size_t)r0 * C, C, w, b,
                   rows, C, f->eps);
  }
}

/* The second half of a block over R rows.  Pre-LN: x += att·Woᵀ + bo,
 * then x += W2·act(W1·ln_2(x)).  Post-LN (BERT): x = ln_1(x + att·Woᵀ +
 * bo), then x = ln_2(x + W2·act(W1·x)).  h and mlp are scratch of R
 * rows. */
static void block_tail(fwd *f, int *s, const vlm__block *b, float *x,
                       const float *att, float *h, float *mlp, int R) {
  const int C = f->C, F = f->F;
  mm_step(f, s, x, C, att, C, b->o_w, b->p_o, b->ql_o, b->o_b, R, C, C, 1);
  const float *in;
  if (f->post_ln) {
    ln_step(f, s, x, x, b->ln1_w, b->ln1_b, R);
    in = x;
  } else {
    ln_step(f, s, h, x, b->ln2_w, b->ln2_b, R);
    in = h;
  }
  /* mlp = act(in · W1ᵀ + b1) */
  if (b->ql_fc1)
    qact_step(f, s, b->ql_fc1, in, C, R, C);
  const int nk = col_chunks(f, b->p_fc1, b->ql_fc1, F);
  FOR_CHUNKS(&f->tm, s, k, nk)
  mm_chunk(f, k, nk, mlp, F, in, C, b->fc1_w, b->p_fc1, b->ql_fc1, b->fc1_b,
           R, F, C, 0, act_fn(f->act));
  mm_step(f, s, x, C, mlp, F, b->fc2_w, b->p_fc2, b->ql_fc2, b->fc2_b, R, C,
          F, 1);
  if (f->post_ln)
    ln_step(f, s, x, x, b->ln2_w, b->ln2_b, R);
}

/* Row of sequence i the tower pools. */
static inline int pool_row(const fwd *f, int i) {
  return f->pool == POOL_LAST ? f->start[i] + f->len[i] - 1 : f->start[i];
}

/* The blocks.  When one row per sequence is pooled, only those rows
 * matter in the last block past the attention (keys and values still come
 * from every row), so the rest of it runs on those n rows, gathered into
 * xc; the attention-pooling head needs every row of the last block. */
static void blocks_run(fwd *f, int tid, int *s) {
  const int C = f->C, R = f->R;
  float *scores = f->scores + (size_t)tid * f->scores_per_thread;
  for (int l = 0; l < f->layers; l++) {
    const vlm__block *b = &f->blocks[l];
    const int last = l == f->layers - 1 && f->pool != POOL_HEAD;
    const float *in = f->x;
    if (!f->post_ln) {
      ln_step(f, s, f->h, f->x, b->ln1_w, b->ln1_b, R);
      in = f->h;
    }
    /* qkv = in · [Wq; Wk; Wv]ᵀ + b */
    if (b->qkv_fused) {
      mm_step(f, s, f->qkv, 3 * C, in, C, b->q_w, b->p_qkv, b->ql_qkv, b->q_b,
              R, 3 * C, C, 0);
    } else {
      mm_step(f, s, f->qkv, 3 * C, in, C, b->q_w, NULL, NULL, b->q_b, R, C, C,
              0);
      mm_step(f, s, f->qkv + C, 3 * C, in, C, b->k_w, NULL, NULL, b->k_b, R,
              C, C, 0);
      mm_step(f, s, f->qkv + 2 * C, 3 * C, in, C, b->v_w, NULL, NULL, b->v_b,
              R, C, C, 0);
    }
    /* attention per (sequence, head); in the last block only the pooled
     * query, written to row i of att */
    FOR_CHUNKS(&f->tm, s, task, f->n * f->H) {
      int i = task / f->H, head = task % f->H;
      size_t row = (size_t)f->start[i];
      const float *q = f->qkv + row * 3 * C + (size_t)head * f->hd;
      int q0 = last ? pool_row(f, i) - f->start[i] : 0;
      int q1 = last ? q0 + 1 : f->len[i];
      float *out = f->att + (last ? (size_t)i : row) * C + (size_t)head * f->hd;
      vlm__attention(out, C, q, q + C, q + 2 * C, 3 * C, f->len[i], f->hd,
                     f->causal, q0, q1, scores);
    }
    if (!last) {
      block_tail(f, s, b, f->x, f->att, f->h, f->mlp, R);
      continue;
    }
    FOR_CHUNKS(&f->tm, s, i, f->n)
    memcpy(f->xc + (size_t)i * C, f->x + (size_t)pool_row(f, i) * C,
           (size_t)C * sizeof(float));
    block_tail(f, s, b, f->xc, f->att, f->h, f->mlp, f->n);
  }
}

/* SigLIP's multihead attention-pooling head (torch MultiheadAttention with
 * one learned query, the probe), over x = post_layernorm(last hidden
 * state) of every row: a = softmax(q·kᵀ/√hd)·v per head, then out_proj;
 * the result y = a + mlp(layernorm(a)) (the probe is not added back) goes
 * to xc.  The block_tail of the head block computes exactly that from a
 * zeroed xc. */
static void head_run(fwd *f, int tid, int *s) {
  const vlm__weights *w = &f->clip->w;
  const vlm__block *hb = &w->vhead;
  const int C = f->C;
  float *scores = f->scores + (size_t)tid * f->scores_per_thread;
  float *pq = f->pooled; /* the probe's query row, C floats */
  ln_step(f, s, f->x, f->x, w->post_ln_w, w->post_ln_b, f->R);
  /* qkv of every row (its q part unused), and the probe's q */
  mm_step(f, s, f->qkv, 3 * C, f->x, C, hb->q_w, hb->p_qkv, NULL, hb->q_b,
          f->R, 3 * C, C, 0);
  mm_step(f, s, pq, C, w->probe, C, hb->q_w, hb->p_qkv, NULL, hb->q_b, 1, C,
          C, 0);
  FOR_CHUNKS(&f->tm, s, task, f->n * f->H) {
    int i = task / f->H, head = task % f->H;
    const float *kv = f->qkv + (size_t)f->start[i] * 3 * C +
                      (size_t)head * f->hd;
    vlm__attention(f->att + (size_t)i * C + (size_t)head * f->hd, C,
                   pq + (size_t)head * f->hd, kv + C, kv + 2 * C, 3 * C,
                   f->len[i], f->hd, 0, 0, 1, scores);
  }
  FOR_CHUNKS(&f->tm, s, i, f->n)
  memset(f->xc + (size_t)i * C, 0, (size_t)C * sizeof(float));
  block_tail(f, s, hb, f->xc, f->att, f->h, f->mlp, f->n);
  FOR_CHUNKS(&f->tm, s, i, f->n)
  memcpy(f->out + (size_t)i * f->D, f->xc + (size_t)i * C,
         (size_t)C * sizeof(float));
}

/* pooled = ln(pooled rows, in xc) (or them unchanged); out = pooled ·
 * projᵀ + proj_b */
static void pool_run(fwd *f, int tid, int *s) {
  if (f->pool == POOL_HEAD) {
    head_run(f, tid, s);
    return;
  }
  const float *pooled = f->xc;
  if (f->ln_w) {
    ln_step(f, s, f->pooled, f->xc, f->ln_w, f->ln_b, f->n);
    pooled = f->pooled;
  }
  mm_step(f, s, f->out, f->D, pooled, f->C, f->proj, NULL, NULL, f->proj_b,
          f->n, f->D, f->C, 0);
}

static void text_thread(void *arg, int tid) {
  fwd *f = arg;
  const vlm__weights *w = &f->clip->w;
  const int C = f->C;
  int s = 0;
  /* x = token + position (+ token type 0, for BERT) embeddings */
  FOR_CHUNKS(&f->tm, &s, i, f->n)
  for (int t = 0; t < f->len[i]; t++) {
    float *x = f->x + (size_t)(f->start[i] + t) * C;
    const float *e = w->tok_emb + (size_t)f->ids[i][t] * C;
    const float *p = w->tpos + (size_t)t * C;
    for (int c = 0; c < C; c++)
      x[c] = e[c] + p[c];
    if (w->type_emb)
      for (int c = 0; c < C; c++)
        x[c] += w->type_emb[c];
  }
  if (w->emb_ln_w)
    ln_step(f, &s, f->x, f->x, w->emb_ln_w, w->emb_ln_b, f->R);
  blocks_run(f, tid, &s);
  pool_run(f, tid, &s);
}

static void vision_thread(void *arg, int tid) {
  fwd *f = arg;
  const vlm__clip_config *cfg = &f->clip->cfg;
  const vlm__weights *w = &f->clip->w;
  const int C = f->C, P = cfg->patch_size, S = cfg->image_size;
  const int cls = w->class_emb != NULL; /* SigLIP has no class token */
  const int G = S / P, NP = G * G, K = 3 * P * P, T = NP + cls;
  int s = 0;
  /* im2col: row (image, patch), column (channel, y, x) as conv1's
   * [C, 3, P, P] weight is laid out. */
  FOR_CHUNKS(&f->tm, &s, k, chunks_of(f->n * NP, ROWS_PER_CHUNK)) {
    int end = (k + 1) * ROWS_PER_CHUNK < f->n * NP ? (k + 1) * ROWS_PER_CHUNK
                                                   : f->n * NP;
    for (int r = k * ROWS_PER_CHUNK; r < end; r++) {
      int img = r / NP, gy = (r % NP) / G, gx = r % G;
      const float *src = f->pixels + (size_t)img * 3 * S * S;
      float *dst = f->patches + (size_t)r * K;
      for (int c = 0; c < 3; c++)
        for (int y = 0; y < P; y++)
          memcpy(dst + (c * P + y) * P,
                 src + ((size_t)c * S + (size_t)gy * P + y) * S +
                     (size_t)gx * P,
                 (size_t)P * sizeof(float));
    }
  }
  /* h[n*NP, C] = patches · conv1ᵀ (+ bias) */
  mm_step(f, &s, f->h, C, f->patches, K, w->patch_w, w->p_patch, NULL,
          w->patch_b, f->n * NP, C, K, 0);
  /* x = [class;] patches + positions */
  FOR_CHUNKS(&f->tm, &s, k, chunks_of(f->R, ROWS_PER_CHUNK)) {
    int end = (k + 1) * ROWS_PER_CHUNK < f->R ? (k + 1) * ROWS_PER_CHUNK
                                              : f->R;
    for (int r = k * ROWS_PER_CHUNK; r < end; r++) {
      int img = r / T, t = r % T;
      float *x = f->x + (size_t)r * C;
      const float *src =
          cls && t == 0 ? w->class_emb
                        : f->h + ((size_t)img * NP + (size_t)(t - cls)) * C;
      const float *pos = w->vpos + (size_t)t * C;
      for (int c = 0; c < C; c++)
        x[c] = src[c] + pos[c];
    }
  }
  if (w->pre_ln_w)
    ln_step(f, &s, f->x, f->x, w->pre_ln_w, w->pre_ln_b, f->R);
  blocks_run(f, tid, &s);
  pool_run(f, tid, &s);
}

/* Steps of one pass: an upper bound on what the thread functions take
 * (embeddings 4, a block at most 10 and 4 quantization steps, pooling at
 * most 14). */
static int steps_needed(const fwd *f) {
  return 4 + f->layers * 14 + 14;
}

static int fwd_alloc(fwd *f, size_t extra_floats, float **extra) {
  size_t R = (size_t)f->R, C = (size_t)f->C, F = (size_t)f->F;
  f->scores_per_thread = vlm__attention_scratch(f->max_T, f->hd);
  size_t q_floats = 0;
  if (f->qmode != VLM__COMPUTE_EXACT) /* qa (bytes), xs, xz */
    q_floats = (vlm__qact_bytes(VLM__COMPUTE_BF16, f->R, /* the wider */
                                f->F > f->C ? f->F : f->C,
                                NULL) + 3) / 4 + 2 * R + 16;
  size_t floats = R * C * 3 + R * 3 * C + R * F +
                  (size_t)MAX_THREADS * f->scores_per_thread +
                  2 * (size_t)f->n * C + q_floats + extra_floats;
  float *mem = vlm__scratch_get(f->clip, floats * sizeof(float),
                                &f->mem_bytes);
  int *idx = malloc((size_t)f->n * 2 * sizeof(int));
  f->tm.n_steps = steps_needed(f);
  f->tm.steps = calloc((size_t)f->tm.n_steps, sizeof *f->tm.steps);
  if (!mem || !idx || !f->tm.steps) {
    vlm__scratch_put(f->clip, mem, f->mem_bytes);
    free(idx);
    free(f->tm.steps);
    return vlm_seterr(VLM_ENOMEM, "out of memory for %d-row activations",
                      f->R);
  }
  for (int i = 0; i < f->tm.n_steps; i++) {
    atomic_init(&f->tm.steps[i].claimed, 0);
    atomic_init(&f->tm.steps[i].done, 0);
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
  if (q_floats) {
    f->xs = *extra;
    f->xz = (int32_t *)(void *)(f->xs + R);
    /* 64-byte rows, from a 64-byte boundary */
    uintptr_t at = (uintptr_t)(f->xz + R);
    f->qa = (uint8_t *)((at + 63) & ~(uintptr_t)63);
    *extra += q_floats;
  }
  f->start = idx;
  f->len = idx + f->n;
  return 0;
}

static void fwd_free(fwd *f) {
  vlm__scratch_put(f->clip, f->x, f->mem_bytes);
  free(f->start);
  free(f->tm.steps);
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
  /* CLIP: causal, pooled at the end token (the last row computed);
   * SigLIP: no mask, the last position; BERT: no mask, [CLS] */
  f.causal = cfg->family == VLM__FAMILY_CLIP;
  f.post_ln = cfg->family == VLM__FAMILY_CHINESE_CLIP;
  f.pool = f.post_ln ? POOL_FIRST : POOL_LAST;
  f.act = cfg->text_act;
  f.eps = cfg->text_eps;
  f.blocks = clip->w.tblocks;
  f.ln_w = clip->w.final_ln_w;
  f.ln_b = clip->w.final_ln_b;
  f.proj = clip->w.tproj;
  f.proj_b = clip->w.tproj_b;
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
  f.qmode = clip->compute;
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
  f.pool = cfg->family == VLM__FAMILY_SIGLIP ? POOL_HEAD : POOL_FIRST;
  f.act = cfg->vision_act;
  f.eps = cfg->vision_eps;
  f.blocks = clip->w.vblocks;
  f.ln_w = clip->w.post_ln_w;
  f.ln_b = clip->w.post_ln_b;
  f.proj = clip->w.vproj;
  f.D = cfg->projection_dim;
  f.out = out;
  f.pixels = pixels;
  f.n = n;
  f.max_T = G * G + (clip->w.class_emb != NULL);
  f.R = n * f.max_T;
  f.panels = clip->panels != NULL;
  f.panels_bf16 = clip->panels_bf16;
  f.qmode = clip->compute;
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
