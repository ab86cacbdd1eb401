/* train_kernels_tmpl.h - the training kernels, written once for `real`.
 *
 * Included twice by train_kernels.c: with real = float, SFX = f32,
 * GEMM = cblas_sgemm and EXP = a vectorizable expf, then with real =
 * double, SFX = f64, GEMM = cblas_dgemm, EXP = exp.  No include guard on
 * purpose.  Shapes are in
 * train_kernels.h.
 */

#define TK_CAT2(a, b) a##_##b
#define TK_CAT(a, b) TK_CAT2(a, b)
#define TK(name) TK_CAT(vlm__tk_##name, SFX)
#define TKS(name) TK_CAT(tk_##name, SFX) /* file-local helpers */

/* ---- gemm ----------------------------------------------------------- */

typedef struct {
  int transA, transB, M, N, K;
  real alpha, beta;
  const real *A, *B;
  real *C;
  int lda, ldb, ldc;
  int split_cols;
} TKS(gemm_ctx);

static void TKS(gemm_chunk)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(gemm_ctx) *g = p;
  if (end <= begin)
    return;
  int n0 = (int)begin, n1 = (int)end;
  if (g->split_cols) {
    /* columns n0..n1 of C and of op(B) */
    const real *B = g->transB ? g->B + (size_t)n0 * g->ldb : g->B + n0;
    GEMM(CblasRowMajor, g->transA ? CblasTrans : CblasNoTrans,
         g->transB ? CblasTrans : CblasNoTrans, g->M, n1 - n0, g->K, g->alpha,
         g->A, g->lda, B, g->ldb, g->beta, g->C + n0, g->ldc);
  } else {
    /* rows n0..n1 of C and of op(A) */
    const real *A = g->transA ? g->A + n0 : g->A + (size_t)n0 * g->lda;
    GEMM(CblasRowMajor, g->transA ? CblasTrans : CblasNoTrans,
         g->transB ? CblasTrans : CblasNoTrans, n1 - n0, g->N, g->K, g->alpha,
         A, g->lda, g->B, g->ldb, g->beta, g->C + (size_t)n0 * g->ldc, g->ldc);
  }
}

void TK(gemm)(vlm__tpool *pool, int transA, int transB, int M, int N, int K,
              real alpha, const real *A, int lda, const real *B, int ldb,
              real beta, real *C, int ldc) {
  if (M <= 0 || N <= 0)
    return;
  TKS(gemm_ctx) g = {transA, transB, M, N, K, alpha, beta, A, B, C,
                     lda, ldb, ldc, 0};
  int T = vlm__tpool_threads(pool);
  /* Split the larger of the two output dimensions; chunks of a few rows
   * would waste the packing of the other operand. */
  if (T <= 1 || (int64_t)M * N * K < 32768) {
    TKS(gemm_chunk)(&g, 0, M, 0);
    return;
  }
  if (M >= 16 * T || M >= N) {
    vlm__tpool_for(pool, M, TKS(gemm_chunk), &g);
  } else {
    g.split_cols = 1;
    vlm__tpool_for(pool, N, TKS(gemm_chunk), &g);
  }
}

/* ---- linear --------------------------------------------------------- */

typedef struct {
  real *out;
  const real *b;
  int OC;
} TKS(bias_ctx);

static void TKS(bias_rows)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(bias_ctx) *c = p;
  for (int64_t n = begin; n < end; n++) {
    real *o = c->out + n * c->OC;
    for (int j = 0; j < c->OC; j++)
      o[j] += c->b[j];
  }
}

void TK(linear_forward)(vlm__tpool *pool, real *out, const real *inp,
                        const real *w, const real *b, int N, int C, int OC) {
  /* out[N,OC] = inp[N,C] . w[OC,C]^T */
  TK(gemm)(pool, 0, 1, N, OC, C, 1, inp, C, w, C, 0, out, OC);
  if (b) {
    TKS(bias_ctx) c = {out, b, OC};
    vlm__tpool_for(pool, N, TKS(bias_rows), &c);
  }
}

typedef struct {
  real *db;
  const real *dout;
  int N, OC;
} TKS(colsum_ctx);

/* db[j] += sum_n dout[n, j] for the thread's columns; rows in order. */
static void TKS(colsum)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(colsum_ctx) *c = p;
  for (int n = 0; n < c->N; n++) {
    const real *d = c->dout + (size_t)n * c->OC;
    for (int64_t j = begin; j < end; j++)
      c->db[j] += d[j];
  }
}

void TK(linear_backward)(vlm__tpool *pool, real *dinp, int accumulate,
                         real *dw, real *db, const real *dout, const real *inp,
                         const real *w, int N, int C, int OC) {
  /* dinp[N,C] = dout[N,OC] . w[OC,C] */
  if (dinp)
    TK(gemm)(pool, 0, 0, N, C, OC, 1, dout, OC, w, C, accumulate ? 1 : 0,
             dinp, C);
  /* dw[OC,C] += dout^T[OC,N] . inp[N,C] */
  if (dw)
    TK(gemm)(pool, 1, 0, OC, C, N, 1, dout, OC, inp, C, 1, dw, C);
  if (db) {
    TKS(colsum_ctx) c = {db, dout, N, OC};
    vlm__tpool_for(pool, OC, TKS(colsum), &c);
  }
}

/* ---- layer norm ----------------------------------------------------- */

typedef struct {
  real *out, *mean, *rstd, *dinp, *dw, *db;
  const real *inp, *w, *b, *dout, *cmean, *crstd;
  int N, C;
  real eps;
} TKS(ln_ctx);

static void TKS(ln_fwd_rows)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(ln_ctx) *c = p;
  int C = c->C;
  for (int64_t n = begin; n < end; n++) {
    const real *x = c->inp + n * C;
    real m = 0;
    for (int i = 0; i < C; i++)
      m += x[i];
    m /= C;
    real v = 0;
    for (int i = 0; i < C; i++) {
      real d = x[i] - m;
      v += d * d;
    }
    v /= C;
    real s = 1 / sqrt(v + c->eps);
    real *o = c->out + n * C;
    for (int i = 0; i < C; i++)
      o[i] = (x[i] - m) * s * c->w[i] + c->b[i];
    c->mean[n] = m;
    c->rstd[n] = s;
  }
}

void TK(layernorm_forward)(vlm__tpool *pool, real *out, real *mean, real *rstd,
                           const real *inp, const real *w, const real *b,
                           int N, int C, real eps) {
  TKS(ln_ctx) c = {.out = out, .mean = mean, .rstd = rstd, .inp = inp,
                   .w = w, .b = b, .N = N, .C = C, .eps = eps};
  vlm__tpool_for(pool, N, TKS(ln_fwd_rows), &c);
}

/* dinp: with xhat = (x - mean) * rstd and g = dout * w,
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). */
static void TKS(ln_bwd_rows)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(ln_ctx) *c = p;
  int C = c->C;
  for (int64_t n = begin; n < end; n++) {
    const real *x = c->inp + n * C, *d = c->dout + n * C;
    real m = c->cmean[n], s = c->crstd[n];
    real gmean = 0, gxmean = 0;
    for (int i = 0; i < C; i++) {
      real g = d[i] * c->w[i];
      gmean += g;
      gxmean += g * (x[i] - m) * s;
    }
    gmean /= C;
    gxmean /= C;
    real *dx = c->dinp + n * C;
    for (int i = 0; i < C; i++) {
      real g = d[i] * c->w[i];
      dx[i] += s * (g - gmean - (x[i] - m) * s * gxmean);
    }
  }
}

/* dw, db over the thread's columns, rows in order (deterministic). */
static void TKS(ln_bwd_cols)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(ln_ctx) *c = p;
  int C = c->C;
  for (int n = 0; n < c->N; n++) {
    const real *x = c->inp + (size_t)n * C, *d = c->dout + (size_t)n * C;
    real m = c->cmean[n], s = c->crstd[n];
    for (int64_t i = begin; i < end; i++) {
      if (c->dw)
        c->dw[i] += d[i] * (x[i] - m) * s;
      if (c->db)
        c->db[i] += d[i];
    }
  }
}

void TK(layernorm_backward)(vlm__tpool *pool, real *dinp, real *dw, real *db,
                            const real *dout, const real *inp, const real *w,
                            const real *mean, const real *rstd, int N, int C) {
  TKS(ln_ctx) c = {.dinp = dinp, .dw = dw, .db = db, .inp = inp, .w = w,
                   .dout = dout, .cmean = mean, .crstd = rstd, .N = N, .C = C};
  if (dinp)
    vlm__tpool_for(pool, N, TKS(ln_bwd_rows), &c);
  if (dw || db)
    vlm__tpool_for(pool, C, TKS(ln_bwd_cols), &c);
}

/* ---- attention ------------------------------------------------------ */

typedef struct {
  real *out, *probs, *dqkv, *dprobs;
  const real *qkv, *cprobs, *dout;
  const vlm__tk_seqs *seqs;
  int C, H, causal;
} TKS(attn_ctx);

/* One task per (sequence, head): scores by gemm, softmax, then P V. */
static void TKS(attn_fwd_tasks)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(attn_ctx) *c = p;
  int C = c->C, H = c->H, hd = C / H, ld = 3 * C;
  real scale = 1 / sqrt((real)hd);
  for (int64_t task = begin; task < end; task++) {
    int s = (int)(task / H), h = (int)(task % H);
    int L = c->seqs->len[s];
    const real *q = c->qkv + (size_t)c->seqs->off[s] * ld + h * hd;
    const real *k = q + C, *v = q + 2 * C;
    real *P = c->probs + c->seqs->prob_off[s] + (size_t)h * L * L;
    /* P[L,L] = scale * q[L,hd] . k[L,hd]^T */
    GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, hd, scale, q, ld, k,
         ld, 0, P, L);
    for (int i = 0; i < L; i++) {
      real *row = P + (size_t)i * L;
      int n = c->causal ? i + 1 : L;
      real mx = row[0];
      for (int j = 1; j < n; j++)
        if (row[j] > mx)
          mx = row[j];
      real sum = 0;
      for (int j = 0; j < n; j++) {
        row[j] = EXP(row[j] - mx);
        sum += row[j];
      }
      real inv = 1 / sum;
      for (int j = 0; j < n; j++)
        row[j] *= inv;
      for (int j = n; j < L; j++)
        row[j] = 0;
    }
    /* out[L,hd] = P[L,L] . v[L,hd] */
    real *o = c->out + (size_t)c->seqs->off[s] * C + h * hd;
    GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, hd, L, 1, P, L, v, ld,
         0, o, C);
  }
}

void TK(attention_forward)(vlm__tpool *pool, real *out, real *probs,
                           const real *qkv, const vlm__tk_seqs *seqs, int C,
                           int H, int causal) {
  TKS(attn_ctx) c = {.out = out, .probs = probs, .qkv = qkv, .seqs = seqs,
                     .C = C, .H = H, .causal = causal};
  vlm__tpool_for(pool, (int64_t)seqs->n * H, TKS(attn_fwd_tasks), &c);
}

/* dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(P * dP)) (masked entries
 * have P = 0 and so get no gradient); dQ = scale dS K; dK = scale dS^T Q. */
static void TKS(attn_bwd_tasks)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(attn_ctx) *c = p;
  int C = c->C, H = c->H, hd = C / H, ld = 3 * C;
  real scale = 1 / sqrt((real)hd);
  for (int64_t task = begin; task < end; task++) {
    int s = (int)(task / H), h = (int)(task % H);
    int L = c->seqs->len[s];
    size_t row0 = (size_t)c->seqs->off[s];
    const real *q = c->qkv + row0 * ld + h * hd;
    const real *k = q + C, *v = q + 2 * C;
    real *dq = c->dqkv + row0 * ld + h * hd;
    real *dk = dq + C, *dv = dq + 2 * C;
    const real *P = c->cprobs + c->seqs->prob_off[s] + (size_t)h * L * L;
    real *dP = c->dprobs + c->seqs->prob_off[s] + (size_t)h * L * L;
    const real *dO = c->dout + row0 * C + h * hd;
    /* dv[L,hd] = P^T[L,L] . dO[L,hd] */
    GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, L, hd, L, 1, P, L, dO, C, 0,
         dv, ld);
    /* dP[L,L] = dO[L,hd] . v^T */
    GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, hd, 1, dO, C, v, ld, 0,
         dP, L);
    for (int i = 0; i < L; i++) {
      const real *pr = P + (size_t)i * L;
      real *dr = dP + (size_t)i * L;
      real dot = 0;
      for (int j = 0; j < L; j++)
        dot += pr[j] * dr[j];
      for (int j = 0; j < L; j++)
        dr[j] = pr[j] * (dr[j] - dot);
    }
    /* dq[L,hd] = scale dS[L,L] . k[L,hd];  dk = scale dS^T . q */
    GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, hd, L, scale, dP, L, k,
         ld, 0, dq, ld);
    GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, L, hd, L, scale, dP, L, q,
         ld, 0, dk, ld);
  }
}

void TK(attention_backward)(vlm__tpool *pool, real *dqkv, real *dprobs,
                            const real *dout, const real *qkv,
                            const real *probs, const vlm__tk_seqs *seqs, int C,
                            int H) {
  TKS(attn_ctx) c = {.dqkv = dqkv, .dprobs = dprobs, .qkv = qkv,
                     .cprobs = probs, .dout = dout, .seqs = seqs, .C = C,
                     .H = H};
  vlm__tpool_for(pool, (int64_t)seqs->n * H, TKS(attn_bwd_tasks), &c);
}

/* ---- activations ---------------------------------------------------- */

typedef struct {
  real *out;
  const real *inp, *dout;
  int act;
} TKS(act_ctx);

#define TK_SQRT1_2 0.70710678118654752440
#define TK_INV_SQRT_2PI 0.39894228040143267794

#define TK_SQRT_2_PI 0.79788456080286535588 /* sqrt(2 / pi) */

static void TKS(act_fwd)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(act_ctx) *c = p;
  if (c->act == 1) {
    for (int64_t i = begin; i < end; i++) {
      real x = c->inp[i];
      c->out[i] = x / (1 + EXP((real)-1.702 * x));
    }
  } else if (c->act == 2) {
    /* 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) */
    for (int64_t i = begin; i < end; i++) {
      real x = c->inp[i];
      real u = (real)TK_SQRT_2_PI * (x + (real)0.044715 * x * x * x);
      c->out[i] = x / (1 + EXP(-2 * u));
    }
  } else {
    for (int64_t i = begin; i < end; i++) {
      real x = c->inp[i];
      c->out[i] = (real)0.5 * x * (1 + erf(x * (real)TK_SQRT1_2));
    }
  }
}

static void TKS(act_bwd)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(act_ctx) *c = p;
  if (c->act == 1) {
    for (int64_t i = begin; i < end; i++) {
      real x = c->inp[i];
      real sg = 1 / (1 + EXP((real)-1.702 * x));
      c->out[i] = c->dout[i] * (sg + (real)1.702 * x * sg * (1 - sg));
    }
  } else if (c->act == 2) {
    /* d/dx 0.5 x (1 + th) = 0.5 (1 + th) + 0.5 x (1 - th^2) u'(x) */
    for (int64_t i = begin; i < end; i++) {
      real x = c->inp[i];
      real u = (real)TK_SQRT_2_PI * (x + (real)0.044715 * x * x * x);
      real th = 2 / (1 + EXP(-2 * u)) - 1;
      real du = (real)TK_SQRT_2_PI * (1 + (real)(3 * 0.044715) * x * x);
      c->out[i] = c->dout[i] * ((real)0.5 * (1 + th) +
                                (real)0.5 * x * (1 - th * th) * du);
    }
  } else {
    for (int64_t i = begin; i < end; i++) {
      real x = c->inp[i];
      real cdf = (real)0.5 * (1 + erf(x * (real)TK_SQRT1_2));
      real pdf = (real)TK_INV_SQRT_2PI * exp((real)-0.5 * x * x);
      c->out[i] = c->dout[i] * (cdf + x * pdf);
    }
  }
}

void TK(act_forward)(vlm__tpool *pool, real *out, const real *inp, int64_t n,
                     int act) {
  TKS(act_ctx) c = {out, inp, NULL, act};
  vlm__tpool_for(pool, n, TKS(act_fwd), &c);
}

void TK(act_backward)(vlm__tpool *pool, real *dinp, const real *inp,
                      const real *dout, int64_t n, int act) {
  TKS(act_ctx) c = {dinp, inp, dout, act};
  vlm__tpool_for(pool, n, TKS(act_bwd), &c);
}

typedef struct {
  real *out;
  const real *a, *b;
} TKS(add_ctx);

static void TKS(add_chunk)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(add_ctx) *c = p;
  for (int64_t i = begin; i < end; i++)
    c->out[i] = c->a[i] + c->b[i];
}

void TK(add)(vlm__tpool *pool, real *out, const real *a, const real *b,
             int64_t n) {
  TKS(add_ctx) c = {out, a, b};
  vlm__tpool_for(pool, n, TKS(add_chunk), &c);
}

/* ---- embeddings ----------------------------------------------------- */

typedef struct {
  real *patches;
  const real *pixels;
  int S, P, G; /* G = S / P patches per side */
} TKS(im2col_ctx);

static void TKS(im2col)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(im2col_ctx) *c = p;
  int S = c->S, P = c->P, G = c->G, K = 3 * P * P;
  for (int64_t r = begin; r < end; r++) { /* r = b * G*G + gy * G + gx */
    int64_t b = r / (G * G);
    int gy = (int)(r % (G * G)) / G, gx = (int)(r % G);
    real *dst = c->patches + r * K;
    for (int ch = 0; ch < 3; ch++)
      for (int y = 0; y < P; y++) {
        const real *src = c->pixels + ((b * 3 + ch) * S + gy * P + y) * S +
                          (size_t)gx * P;
        for (int x = 0; x < P; x++)
          *dst++ = src[x];
      }
  }
}

void TK(patch_embed_forward)(vlm__tpool *pool, real *out, real *patches,
                             const real *pixels, const real *w, int B, int S,
                             int P, int C) {
  int G = S / P, K = 3 * P * P;
  TKS(im2col_ctx) c = {patches, pixels, S, P, G};
  vlm__tpool_for(pool, (int64_t)B * G * G, TKS(im2col), &c);
  TK(linear_forward)(pool, out, patches, w, NULL, B * G * G, K, C);
}

void TK(patch_embed_backward)(vlm__tpool *pool, real *dw, const real *dout,
                              const real *patches, int B, int S, int P,
                              int C) {
  int G = S / P, K = 3 * P * P;
  TK(linear_backward)(pool, NULL, 0, dw, NULL, dout, patches, NULL, B * G * G,
                      K, C);
}

typedef struct {
  real *out, *dpatch, *dcls, *dpos;
  const real *patch, *cls, *pos, *dout;
  int B, T, C, has_cls;
} TKS(vemb_ctx);

static void TKS(vemb_fwd)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(vemb_ctx) *c = p;
  int T = c->T, C = c->C;
  for (int64_t r = begin; r < end; r++) {
    int64_t b = r / T;
    int tt = (int)(r % T), k = c->has_cls;
    const real *src = k && tt == 0 ? c->cls
                                   : c->patch + (b * (T - k) + tt - k) * C;
    const real *pe = c->pos + (size_t)tt * C;
    real *o = c->out + r * C;
    for (int i = 0; i < C; i++)
      o[i] = src[i] + pe[i];
  }
}

void TK(vision_embed_forward)(vlm__tpool *pool, real *out, const real *patch,
                              const real *cls, const real *pos, int B, int T,
                              int C) {
  TKS(vemb_ctx) c = {.out = out, .patch = patch, .cls = cls, .pos = pos,
                     .B = B, .T = T, .C = C, .has_cls = cls != NULL};
  vlm__tpool_for(pool, (int64_t)B * T, TKS(vemb_fwd), &c);
}

/* Over column chunks: every output element is owned by one thread and
 * summed over the batch in order. */
static void TKS(vemb_bwd)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(vemb_ctx) *c = p;
  int T = c->T, C = c->C, k = c->has_cls;
  for (int b = 0; b < c->B; b++)
    for (int tt = 0; tt < T; tt++) {
      const real *d = c->dout + ((size_t)b * T + tt) * C;
      if (c->dpos) {
        real *dp = c->dpos + (size_t)tt * C;
        for (int64_t i = begin; i < end; i++)
          dp[i] += d[i];
      }
      if (k && tt == 0) {
        if (c->dcls)
          for (int64_t i = begin; i < end; i++)
            c->dcls[i] += d[i];
      } else if (c->dpatch) {
        real *dp = c->dpatch + ((size_t)b * (T - k) + tt - k) * C;
        for (int64_t i = begin; i < end; i++)
          dp[i] = d[i];
      }
    }
}

void TK(vision_embed_backward)(vlm__tpool *pool, real *dpatch, real *dcls,
                               real *dpos, const real *dout, int B, int T,
                               int C, int has_cls) {
  TKS(vemb_ctx) c = {.dpatch = dpatch, .dcls = dcls, .dpos = dpos,
                     .dout = dout, .B = B, .T = T, .C = C,
                     .has_cls = has_cls};
  vlm__tpool_for(pool, C, TKS(vemb_bwd), &c);
}

typedef struct {
  real *out, *dtok, *dpos;
  const int32_t *ids, *posn;
  const real *tok, *pos, *dout;
  int N, C;
} TKS(temb_ctx);

static void TKS(temb_fwd)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(temb_ctx) *c = p;
  int C = c->C;
  for (int64_t n = begin; n < end; n++) {
    const real *a = c->tok + (size_t)c->ids[n] * C;
    const real *b = c->pos + (size_t)c->posn[n] * C;
    real *o = c->out + n * C;
    for (int i = 0; i < C; i++)
      o[i] = a[i] + b[i];
  }
}

void TK(text_embed_forward)(vlm__tpool *pool, real *out, const int32_t *ids,
                            const int32_t *posn, const real *tok,
                            const real *pos, int N, int C) {
  TKS(temb_ctx) c = {.out = out, .ids = ids, .posn = posn, .tok = tok,
                     .pos = pos, .N = N, .C = C};
  vlm__tpool_for(pool, N, TKS(temb_fwd), &c);
}

static void TKS(temb_bwd)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(temb_ctx) *c = p;
  int C = c->C;
  for (int n = 0; n < c->N; n++) {
    const real *d = c->dout + (size_t)n * C;
    if (c->dtok) {
      real *dt = c->dtok + (size_t)c->ids[n] * C;
      for (int64_t i = begin; i < end; i++)
        dt[i] += d[i];
    }
    if (c->dpos) {
      real *dp = c->dpos + (size_t)c->posn[n] * C;
      for (int64_t i = begin; i < end; i++)
        dp[i] += d[i];
    }
  }
}

void TK(text_embed_backward)(vlm__tpool *pool, real *dtok, real *dpos,
                             const real *dout, const int32_t *ids,
                             const int32_t *posn, int N, int C) {
  TKS(temb_ctx) c = {.dtok = dtok, .dpos = dpos, .dout = dout, .ids = ids,
                     .posn = posn, .N = N, .C = C};
  vlm__tpool_for(pool, C, TKS(temb_bwd), &c);
}

void TK(gather_rows)(real *out, const real *inp, const int *idx, int B,
                     int C) {
  for (int b = 0; b < B; b++)
    memcpy(out + (size_t)b * C, inp + (size_t)idx[b] * C, sizeof(real) * C);
}

void TK(scatter_rows)(real *dinp, const real *dout, const int *idx, int B,
                      int C) {
  for (int b = 0; b < B; b++) {
    real *d = dinp + (size_t)idx[b] * C;
    const real *s = dout + (size_t)b * C;
    for (int i = 0; i < C; i++)
      d[i] += s[i];
  }
}

/* ---- normalization and loss ----------------------------------------- */

void TK(l2norm_forward)(real *out, real *norm, const real *inp, int B, int D) {
  for (int b = 0; b < B; b++) {
    const real *x = inp + (size_t)b * D;
    real ss = 0;
    for (int i = 0; i < D; i++)
      ss += x[i] * x[i];
    real n = sqrt(ss);
    if (n < (real)1e-12)
      n = (real)1e-12;
    norm[b] = n;
    for (int i = 0; i < D; i++)
      out[(size_t)b * D + i] = x[i] / n;
  }
}

void TK(l2norm_backward)(real *dinp, const real *dout, const real *out,
                         const real *norm, int B, int D) {
  for (int b = 0; b < B; b++) {
    const real *y = out + (size_t)b * D, *dy = dout + (size_t)b * D;
    real dot = 0;
    for (int i = 0; i < D; i++)
      dot += y[i] * dy[i];
    for (int i = 0; i < D; i++)
      dinp[(size_t)b * D + i] = (dy[i] - y[i] * dot) / norm[b];
  }
}

real TK(clip_loss_forward)(real *probs_row, real *probs_col, const real *img,
                           const real *txt, real logit_scale, int B, int D) {
  real sc = exp(logit_scale);
  /* logits[i,j] = sc * img_i . txt_j, kept in probs_row for now */
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, B, B, D, sc, img, D, txt, D, 0,
       probs_row, B);
  real loss = 0;
  for (int i = 0; i < B; i++) { /* columns first: probs_row still logits */
    real mx = probs_row[i];
    for (int r = 1; r < B; r++)
      if (probs_row[(size_t)r * B + i] > mx)
        mx = probs_row[(size_t)r * B + i];
    real sum = 0;
    for (int r = 0; r < B; r++)
      sum += exp(probs_row[(size_t)r * B + i] - mx);
    for (int r = 0; r < B; r++)
      probs_col[(size_t)r * B + i] =
          exp(probs_row[(size_t)r * B + i] - mx) / sum;
    loss += log(sum) + mx - probs_row[(size_t)i * B + i];
  }
  for (int i = 0; i < B; i++) {
    real *row = probs_row + (size_t)i * B;
    real diag = row[i], mx = row[0];
    for (int j = 1; j < B; j++)
      if (row[j] > mx)
        mx = row[j];
    real sum = 0;
    for (int j = 0; j < B; j++)
      sum += exp(row[j] - mx);
    for (int j = 0; j < B; j++)
      row[j] = exp(row[j] - mx) / sum;
    loss += log(sum) + mx - diag;
  }
  return loss / (2 * (real)B);
}

void TK(clip_loss_backward)(real *dimg, real *dtxt, real *dscale,
                            const real *probs_row, const real *probs_col,
                            const real *img, const real *txt, real logit_scale,
                            int B, int D) {
  real sc = exp(logit_scale);
  /* dlogits[i,j] = (probs_row + probs_col - 2 I) / (2B); logits = sc *
   * img . txt^T, so dimg = sc dlogits txt, dtxt = sc dlogits^T img and
   * dscale = sum dlogits * logits = sc sum dlogits * (img . txt^T). */
  real ds = 0;
  for (int i = 0; i < B; i++)
    for (int i2 = 0; i2 < D; i2++)
      dimg[(size_t)i * D + i2] = 0;
  for (int j = 0; j < B; j++)
    for (int i2 = 0; i2 < D; i2++)
      dtxt[(size_t)j * D + i2] = 0;
  real inv = 1 / (2 * (real)B);
  for (int i = 0; i < B; i++) {
    const real *a = img + (size_t)i * D;
    for (int j = 0; j < B; j++) {
      const real *b = txt + (size_t)j * D;
      real g = (probs_row[(size_t)i * B + j] + probs_col[(size_t)i * B + j] -
                (i == j ? 2 : 0)) *
               inv;
      real dot = 0;
      for (int k = 0; k < D; k++)
        dot += a[k] * b[k];
      ds += g * dot;
      real gs = g * sc;
      real *da = dimg + (size_t)i * D, *db = dtxt + (size_t)j * D;
      for (int k = 0; k < D; k++) {
        da[k] += gs * b[k];
        db[k] += gs * a[k];
      }
    }
  }
  if (dscale)
    *dscale += sc * ds;
}

/* ---- a row added to every row (bias, token type) --------------------- */

void TK(add_row_forward)(vlm__tpool *pool, real *out, const real *row, int N,
                         int C) {
  TKS(bias_ctx) c = {out, row, C};
  vlm__tpool_for(pool, N, TKS(bias_rows), &c);
}

void TK(add_row_backward)(vlm__tpool *pool, real *drow, const real *dout,
                          int N, int C) {
  TKS(colsum_ctx) c = {drow, dout, N, C};
  vlm__tpool_for(pool, C, TKS(colsum), &c);
}

/* ---- attention pooling (SigLIP's head) ------------------------------- */

typedef struct {
  real *out, *probs, *dq, *dkv;
  const real *q, *kv, *cprobs, *dout;
  int B, T, C, H;
} TKS(map_ctx);

/* One task per (image, head): scores of the one query against the T keys
 * of the image, softmax, then the weighted sum of the values. */
static void TKS(map_fwd_tasks)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(map_ctx) *c = p;
  int C = c->C, H = c->H, T = c->T, hd = C / H;
  real scale = 1 / sqrt((real)hd);
  for (int64_t task = begin; task < end; task++) {
    int b = (int)(task / H), h = (int)(task % H);
    const real *q = c->q + h * hd;
    const real *kv = c->kv + (size_t)b * T * 2 * C + h * hd;
    real *P = c->probs + ((size_t)b * H + h) * T;
    real mx = 0;
    for (int j = 0; j < T; j++) {
      const real *k = kv + (size_t)j * 2 * C;
      real s = 0;
      for (int i = 0; i < hd; i++)
        s += q[i] * k[i];
      P[j] = s * scale;
      if (j == 0 || P[j] > mx)
        mx = P[j];
    }
    real sum = 0;
    for (int j = 0; j < T; j++) {
      P[j] = EXP(P[j] - mx);
      sum += P[j];
    }
    real *o = c->out + (size_t)b * C + h * hd;
    for (int i = 0; i < hd; i++)
      o[i] = 0;
    for (int j = 0; j < T; j++) {
      P[j] /= sum;
      const real *v = kv + (size_t)j * 2 * C + C;
      for (int i = 0; i < hd; i++)
        o[i] += P[j] * v[i];
    }
  }
}

void TK(map_attention_forward)(vlm__tpool *pool, real *out, real *probs,
                               const real *q, const real *kv, int B, int T,
                               int C, int H) {
  TKS(map_ctx) c = {.out = out, .probs = probs, .q = q, .kv = kv, .B = B,
                    .T = T, .C = C, .H = H};
  vlm__tpool_for(pool, (int64_t)B * H, TKS(map_fwd_tasks), &c);
}

/* One task per head, the images in order (the query's gradient sums over
 * them): dV_j = P_j dO; dS_j = P_j (dO . v_j - sum_k P_k dO . v_k);
 * dq += scale sum_j dS_j k_j; dK_j = scale dS_j q. */
static void TKS(map_bwd_tasks)(void *p, int64_t begin, int64_t end, int t) {
  (void)t;
  const TKS(map_ctx) *c = p;
  int C = c->C, H = c->H, T = c->T, hd = C / H;
  real scale = 1 / sqrt((real)hd);
  for (int64_t h = begin; h < end; h++) {
    real *dq = c->dq + h * hd;
    const real *q = c->q + h * hd;
    for (int i = 0; i < hd; i++)
      dq[i] = 0;
    for (int b = 0; b < c->B; b++) {
      const real *kv = c->kv + (size_t)b * T * 2 * C + h * hd;
      real *dkv = c->dkv + (size_t)b * T * 2 * C + h * hd;
      const real *P = c->cprobs + ((size_t)b * H + h) * T;
      const real *dO = c->dout + (size_t)b * C + h * hd;
      real dot = 0;
      for (int j = 0; j < T; j++) {
        const real *v = kv + (size_t)j * 2 * C + C;
        real dp = 0;
        for (int i = 0; i < hd; i++)
          dp += dO[i] * v[i];
        dot += P[j] * dp;
      }
      for (int j = 0; j < T; j++) {
        const real *k = kv + (size_t)j * 2 * C, *v = k + C;
        real *dk = dkv + (size_t)j * 2 * C, *dv = dk + C;
        real dp = 0;
        for (int i = 0; i < hd; i++)
          dp += dO[i] * v[i];
        real ds = P[j] * (dp - dot) * scale;
        for (int i = 0; i < hd; i++) {
          dv[i] = P[j] * dO[i];
          dk[i] = ds * q[i];
          dq[i] += ds * k[i];
        }
      }
    }
  }
}

void TK(map_attention_backward)(vlm__tpool *pool, real *dq, real *dkv,
                                const real *dout, const real *q,
                                const real *kv, const real *probs, int B,
                                int T, int C, int H) {
  TKS(map_ctx) c = {.dq = dq, .dkv = dkv, .q = q, .kv = kv, .cprobs = probs,
                    .dout = dout, .B = B, .T = T, .C = C, .H = H};
  vlm__tpool_for(pool, H, TKS(map_bwd_tasks), &c);
}

/* ---- SigLIP's sigmoid loss ------------------------------------------- */

/* log sigmoid(x) without overflow */
static real TKS(log_sigmoid)(real x) {
  return (x < 0 ? x : 0) - log1p(exp(-fabs(x)));
}

real TK(siglip_loss_forward)(real *logits, const real *img, const real *txt,
                             real logit_scale, real logit_bias, int B, int D) {
  real sc = exp(logit_scale);
  /* logits[i,j] = sc * img_i . txt_j + bias */
  GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, B, B, D, sc, img, D, txt, D, 0,
       logits, B);
  real loss = 0;
  for (int i = 0; i < B; i++)
    for (int j = 0; j < B; j++) {
      real *l = logits + (size_t)i * B + j;
      *l += logit_bias;
      loss -= TKS(log_sigmoid)(i == j ? *l : -*l);
    }
  return loss / (real)B;
}

void TK(siglip_loss_backward)(real *dimg, real *dtxt, real *dscale,
                              real *dbias, const real *logits,
                              const real *img, const real *txt,
                              real logit_scale, int B, int D) {
  real sc = exp(logit_scale);
  /* dlogits[i,j] = -z sigmoid(-z l) / B with z = +1 on the diagonal, -1
   * elsewhere; dimg = sc dlogits txt, dtxt = sc dlogits^T img, dscale =
   * sc sum dlogits (img . txt^T), dbias = sum dlogits */
  for (size_t k = 0; k < (size_t)B * D; k++)
    dimg[k] = dtxt[k] = 0;
  real ds = 0, db = 0, inv = 1 / (real)B;
  for (int i = 0; i < B; i++) {
    const real *a = img + (size_t)i * D;
    real *da = dimg + (size_t)i * D;
    for (int j = 0; j < B; j++) {
      const real *b = txt + (size_t)j * D;
      real *dt = dtxt + (size_t)j * D;
      real z = i == j ? 1 : -1, l = logits[(size_t)i * B + j];
      real g = -z * inv / (1 + exp(z * l));
      real dot = 0;
      for (int k = 0; k < D; k++)
        dot += a[k] * b[k];
      ds += g * dot;
      db += g;
      real gs = g * sc;
      for (int k = 0; k < D; k++) {
        da[k] += gs * b[k];
        dt[k] += gs * a[k];
      }
    }
  }
  if (dscale)
    *dscale += sc * ds;
  if (dbias)
    *dbias += db;
}

#undef TK_SQRT1_2
#undef TK_INV_SQRT_2PI
#undef TK_SQRT_2_PI
#undef TK_CAT2
#undef TK_CAT
#undef TK
#undef TKS
