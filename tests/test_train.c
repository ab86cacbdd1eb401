/* test_train.c - the CLIP trainer: gradient checks of every op and of the
 * whole model against central finite differences (double precision),
 * float kernels against double ones. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train_kernels.h"
#include "train_model.h"
#include "vlm_error.h"

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double urand(void) { /* [0, 1) */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0;
}

static double nrand(void) {
  double u = urand() + 1e-12, v = urand();
  return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

static double *drand_array(size_t n, double scale) {
  double *p = malloc(sizeof(double) * (n ? n : 1));
  assert_non_null(p);
  for (size_t i = 0; i < n; i++)
    p[i] = nrand() * scale;
  return p;
}

static double dot(const double *a, const double *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += a[i] * b[i];
  return s;
}

/* A scalar function of the inputs: the tests use loss = sum(out * R) for a
 * random R, so dout = R. */
typedef double (*loss_fn)(void *ctx);

/* Compare analytic[n] with central differences of f in the elements of
 * x[n]; fails when ||a - num|| / max(||a||, ||num||) > tol.  Returns the
 * relative error. */
static double gradcheck(const char *what, loss_fn f, void *ctx, double *x,
                        const double *analytic, size_t n, double tol) {
  double num2 = 0, an2 = 0, diff2 = 0, h = 1e-5;
  for (size_t i = 0; i < n; i++) {
    double save = x[i];
    x[i] = save + h;
    double lp = f(ctx);
    x[i] = save - h;
    double lm = f(ctx);
    x[i] = save;
    double num = (lp - lm) / (2 * h);
    num2 += num * num;
    an2 += analytic[i] * analytic[i];
    diff2 += (num - analytic[i]) * (num - analytic[i]);
  }
  double scale = sqrt(fmax(num2, an2));
  /* A tensor whose true gradient is zero (the key bias: softmax ignores a
   * constant added to every score of a row) has only rounding noise in
   * both; compare those absolutely. */
  if (scale < 1e-8)
    return -1;
  double rel = sqrt(diff2) / scale;
  if (!(rel <= tol)) {
    print_error("%s: relative error %.3e (tolerance %.1e), |analytic| %.3e, "
                "|numeric| %.3e\n",
                what, rel, tol, sqrt(an2), sqrt(num2));
    fail();
  }
  return rel;
}

#define TOL 1e-6 /* the requirement is 1e-3; double precision does far better */

/* ---- linear ----------------------------------------------------------- */

typedef struct {
  int N, C, OC;
  double *inp, *w, *b, *out, *R;
} lin_ctx;

static double lin_loss(void *p) {
  lin_ctx *c = p;
  vlm__tk_linear_forward_f64(NULL, c->out, c->inp, c->w, c->b, c->N, c->C,
                             c->OC);
  return dot(c->out, c->R, (size_t)c->N * c->OC);
}

static void test_grad_linear(void **state) {
  (void)state;
  lin_ctx c = {.N = 5, .C = 7, .OC = 6};
  c.inp = drand_array(35, 1);
  c.w = drand_array(42, 1);
  c.b = drand_array(6, 1);
  c.out = drand_array(30, 0);
  c.R = drand_array(30, 1);
  double *dinp = drand_array(35, 0), *dw = drand_array(42, 0),
         *db = drand_array(6, 0);
  vlm__tk_linear_backward_f64(NULL, dinp, 0, dw, db, c.R, c.inp, c.w, c.N, c.C,
                              c.OC);
  gradcheck("linear dinp", lin_loss, &c, c.inp, dinp, 35, TOL);
  gradcheck("linear dw", lin_loss, &c, c.w, dw, 42, TOL);
  gradcheck("linear db", lin_loss, &c, c.b, db, 6, TOL);
  /* accumulate = 1 adds to what is there */
  double *acc = drand_array(35, 1), *before = malloc(sizeof(double) * 35);
  memcpy(before, acc, sizeof(double) * 35);
  vlm__tk_linear_backward_f64(NULL, acc, 1, NULL, NULL, c.R, c.inp, c.w, c.N,
                              c.C, c.OC);
  for (int i = 0; i < 35; i++)
    assert_true(fabs(acc[i] - before[i] - dinp[i]) < 1e-12);
  free(acc); free(before);
  free(c.inp); free(c.w); free(c.b); free(c.out); free(c.R);
  free(dinp); free(dw); free(db);
}

/* ---- layer norm ------------------------------------------------------- */

typedef struct {
  int N, C;
  double *inp, *w, *b, *out, *mean, *rstd, *R;
} ln_ctx;

static double ln_loss(void *p) {
  ln_ctx *c = p;
  vlm__tk_layernorm_forward_f64(NULL, c->out, c->mean, c->rstd, c->inp, c->w,
                                c->b, c->N, c->C, 1e-5);
  return dot(c->out, c->R, (size_t)c->N * c->C);
}

static void test_grad_layernorm(void **state) {
  (void)state;
  ln_ctx c = {.N = 4, .C = 9};
  size_t n = 36;
  c.inp = drand_array(n, 2);
  c.w = drand_array(9, 1);
  c.b = drand_array(9, 1);
  c.out = drand_array(n, 0);
  c.mean = drand_array(4, 0);
  c.rstd = drand_array(4, 0);
  c.R = drand_array(n, 1);
  ln_loss(&c);
  double *dinp = drand_array(n, 0), *dw = drand_array(9, 0),
         *db = drand_array(9, 0);
  vlm__tk_layernorm_backward_f64(NULL, dinp, dw, db, c.R, c.inp, c.w, c.mean,
                                 c.rstd, c.N, c.C);
  gradcheck("layernorm dinp", ln_loss, &c, c.inp, dinp, n, TOL);
  gradcheck("layernorm dw", ln_loss, &c, c.w, dw, 9, TOL);
  gradcheck("layernorm db", ln_loss, &c, c.b, db, 9, TOL);
  free(c.inp); free(c.w); free(c.b); free(c.out); free(c.mean); free(c.rstd);
  free(c.R); free(dinp); free(dw); free(db);
}

/* ---- attention -------------------------------------------------------- */

typedef struct {
  int C, H, causal;
  vlm__tk_seqs seqs;
  int64_t N, probs_n;
  double *qkv, *out, *probs, *R;
} att_ctx;

static double att_loss(void *p) {
  att_ctx *c = p;
  vlm__tk_attention_forward_f64(NULL, c->out, c->probs, c->qkv, &c->seqs, c->C,
                                c->H, c->causal);
  return dot(c->out, c->R, (size_t)c->N * c->C);
}

static void attention_case(int causal) {
  /* three packed sequences of different lengths, 2 heads of 3 columns */
  static const int off[3] = {0, 4, 5}, len[3] = {4, 1, 6};
  int64_t prob_off[3];
  att_ctx c = {.C = 6, .H = 2, .causal = causal};
  c.N = 11;
  int64_t po = 0;
  for (int s = 0; s < 3; s++) {
    prob_off[s] = po;
    po += (int64_t)c.H * len[s] * len[s];
  }
  c.probs_n = po;
  c.seqs = (vlm__tk_seqs){3, off, len, prob_off, 6};
  c.qkv = drand_array((size_t)c.N * 3 * c.C, 1);
  c.out = drand_array((size_t)c.N * c.C, 0);
  c.probs = drand_array((size_t)po, 0);
  c.R = drand_array((size_t)c.N * c.C, 1);
  att_loss(&c);
  if (causal) /* masked probabilities are exactly zero */
    for (int s = 0; s < 3; s++)
      for (int h = 0; h < c.H; h++)
        for (int i = 0; i < len[s]; i++)
          for (int j = i + 1; j < len[s]; j++)
            assert_true(c.probs[prob_off[s] + (h * len[s] + i) * len[s] + j] ==
                        0.0);
  double *dqkv = drand_array((size_t)c.N * 3 * c.C, 0);
  double *dprobs = drand_array((size_t)po, 0);
  vlm__tk_attention_backward_f64(NULL, dqkv, dprobs, c.R, c.qkv, c.probs,
                                 &c.seqs, c.C, c.H);
  gradcheck(causal ? "causal attention dqkv" : "attention dqkv", att_loss, &c,
            c.qkv, dqkv, (size_t)c.N * 3 * c.C, TOL);
  free(c.qkv); free(c.out); free(c.probs); free(c.R); free(dqkv);
  free(dprobs);
}

static void test_grad_attention(void **state) {
  (void)state;
  attention_case(0);
}

static void test_grad_attention_causal(void **state) {
  (void)state;
  attention_case(1);
}

/* ---- activations ------------------------------------------------------ */

typedef struct {
  int quick;
  int64_t n;
  double *inp, *out, *R;
} act_ctx;

static double act_loss(void *p) {
  act_ctx *c = p;
  vlm__tk_act_forward_f64(NULL, c->out, c->inp, c->n, c->quick);
  return dot(c->out, c->R, (size_t)c->n);
}

static void act_case(int quick) {
  act_ctx c = {.quick = quick, .n = 40};
  c.inp = drand_array(40, 2);
  c.out = drand_array(40, 0);
  c.R = drand_array(40, 1);
  double *dinp = drand_array(40, 0);
  vlm__tk_act_backward_f64(NULL, dinp, c.inp, c.R, 40, quick);
  gradcheck(quick ? "quick_gelu" : "gelu", act_loss, &c, c.inp, dinp, 40, TOL);
  /* values: quick_gelu(1) = 1 / (1 + e^-1.702), gelu(1) = 0.841344746 */
  double one = 1, y;
  vlm__tk_act_forward_f64(NULL, &y, &one, 1, quick);
  double want = quick ? 1 / (1 + exp(-1.702)) : 0.8413447460685429;
  if (fabs(y - want) > 1e-12) {
    print_error("act(1) = %.12f, want %.12f\n", y, want);
    fail();
  }
  free(c.inp); free(c.out); free(c.R); free(dinp);
}

static void test_grad_gelu(void **state) {
  (void)state;
  act_case(0);
}

static void test_grad_quick_gelu(void **state) {
  (void)state;
  act_case(1);
}

/* ---- embeddings ------------------------------------------------------- */

typedef struct {
  int B, S, P, C;
  double *pixels, *w, *patches, *out, *R;
} pe_ctx;

static double pe_loss(void *p) {
  pe_ctx *c = p;
  vlm__tk_patch_embed_forward_f64(NULL, c->out, c->patches, c->pixels, c->w,
                                  c->B, c->S, c->P, c->C);
  int np = (c->S / c->P) * (c->S / c->P);
  return dot(c->out, c->R, (size_t)c->B * np * c->C);
}

static void test_grad_patch_embed(void **state) {
  (void)state;
  pe_ctx c = {.B = 2, .S = 6, .P = 3, .C = 5};
  int np = 4, K = 27;
  c.pixels = drand_array(2 * 3 * 36, 1);
  c.w = drand_array((size_t)5 * K, 1);
  c.patches = drand_array((size_t)2 * np * K, 0);
  c.out = drand_array((size_t)2 * np * 5, 0);
  c.R = drand_array((size_t)2 * np * 5, 1);
  pe_loss(&c);
  /* the im2col + gemm equals a direct stride-P convolution */
  for (int b = 0; b < 2; b++)
    for (int gy = 0; gy < 2; gy++)
      for (int gx = 0; gx < 2; gx++)
        for (int o = 0; o < 5; o++) {
          double s = 0;
          for (int ch = 0; ch < 3; ch++)
            for (int y = 0; y < 3; y++)
              for (int x = 0; x < 3; x++)
                s += c.w[((o * 3 + ch) * 3 + y) * 3 + x] *
                     c.pixels[((b * 3 + ch) * 6 + gy * 3 + y) * 6 + gx * 3 + x];
          double got = c.out[((b * 2 + gy) * 2 + gx) * 5 + o];
          if (fabs(got - s) > 1e-12) {
            print_error("patch embed [%d,%d,%d,%d] %.12f, conv %.12f\n", b, gy,
                        gx, o, got, s);
            fail();
          }
        }
  double *dw = drand_array((size_t)5 * K, 0);
  vlm__tk_patch_embed_backward_f64(NULL, dw, c.R, c.patches, c.B, c.S, c.P,
                                   c.C);
  gradcheck("patch embedding dw", pe_loss, &c, c.w, dw, (size_t)5 * K, TOL);
  free(c.pixels); free(c.w); free(c.patches); free(c.out); free(c.R);
  free(dw);
}

typedef struct {
  int B, T, C;
  double *patch, *cls, *pos, *out, *R;
} ve_ctx;

static double ve_loss(void *p) {
  ve_ctx *c = p;
  vlm__tk_vision_embed_forward_f64(NULL, c->out, c->patch, c->cls, c->pos,
                                   c->B, c->T, c->C);
  return dot(c->out, c->R, (size_t)c->B * c->T * c->C);
}

static void test_grad_vision_embed(void **state) {
  (void)state;
  ve_ctx c = {.B = 3, .T = 5, .C = 4};
  c.patch = drand_array(3 * 4 * 4, 1);
  c.cls = drand_array(4, 1);
  c.pos = drand_array(5 * 4, 1);
  c.out = drand_array(3 * 5 * 4, 0);
  c.R = drand_array(3 * 5 * 4, 1);
  double *dpatch = drand_array(48, 0), *dcls = drand_array(4, 0),
         *dpos = drand_array(20, 0);
  vlm__tk_vision_embed_backward_f64(NULL, dpatch, dcls, dpos, c.R, 3, 5, 4);
  gradcheck("vision embed dpatch", ve_loss, &c, c.patch, dpatch, 48, TOL);
  gradcheck("vision embed dcls", ve_loss, &c, c.cls, dcls, 4, TOL);
  gradcheck("vision embed dpos", ve_loss, &c, c.pos, dpos, 20, TOL);
  free(c.patch); free(c.cls); free(c.pos); free(c.out); free(c.R);
  free(dpatch); free(dcls); free(dpos);
}

typedef struct {
  int N, C;
  const int32_t *ids, *posn;
  double *tok, *pos, *out, *R;
} te_ctx;

static double te_loss(void *p) {
  te_ctx *c = p;
  vlm__tk_text_embed_forward_f64(NULL, c->out, c->ids, c->posn, c->tok, c->pos,
                                 c->N, c->C);
  return dot(c->out, c->R, (size_t)c->N * c->C);
}

static void test_grad_text_embed(void **state) {
  (void)state;
  /* repeated ids (2 and 0) accumulate */
  static const int32_t ids[7] = {0, 2, 5, 2, 0, 2, 1};
  static const int32_t posn[7] = {0, 1, 2, 0, 1, 0, 1};
  te_ctx c = {.N = 7, .C = 3, .ids = ids, .posn = posn};
  c.tok = drand_array(6 * 3, 1);
  c.pos = drand_array(4 * 3, 1);
  c.out = drand_array(21, 0);
  c.R = drand_array(21, 1);
  double *dtok = drand_array(18, 0), *dpos = drand_array(12, 0);
  vlm__tk_text_embed_backward_f64(NULL, dtok, dpos, c.R, ids, posn, 7, 3);
  gradcheck("token embedding", te_loss, &c, c.tok, dtok, 18, TOL);
  gradcheck("text position embedding", te_loss, &c, c.pos, dpos, 12, TOL);
  free(c.tok); free(c.pos); free(c.out); free(c.R); free(dtok); free(dpos);
}

/* ---- normalization and loss ------------------------------------------ */

typedef struct {
  int B, D;
  double *inp, *out, *norm, *R;
} l2_ctx;

static double l2_loss(void *p) {
  l2_ctx *c = p;
  vlm__tk_l2norm_forward_f64(c->out, c->norm, c->inp, c->B, c->D);
  return dot(c->out, c->R, (size_t)c->B * c->D);
}

static void test_grad_l2norm(void **state) {
  (void)state;
  l2_ctx c = {.B = 3, .D = 5};
  c.inp = drand_array(15, 1);
  c.out = drand_array(15, 0);
  c.norm = drand_array(3, 0);
  c.R = drand_array(15, 1);
  l2_loss(&c);
  for (int b = 0; b < 3; b++) {
    double n = sqrt(dot(c.out + b * 5, c.out + b * 5, 5));
    assert_true(fabs(n - 1) < 1e-12);
  }
  double *dinp = drand_array(15, 0);
  vlm__tk_l2norm_backward_f64(dinp, c.R, c.out, c.norm, 3, 5);
  gradcheck("l2 normalization", l2_loss, &c, c.inp, dinp, 15, TOL);
  free(c.inp); free(c.out); free(c.norm); free(c.R); free(dinp);
}

typedef struct {
  int B, D;
  double *img, *txt, *pr, *pc, scale;
} loss_ctx;

static double clip_loss(void *p) {
  loss_ctx *c = p;
  return vlm__tk_clip_loss_forward_f64(c->pr, c->pc, c->img, c->txt, c->scale,
                                       c->B, c->D);
}

static double clip_loss_scale(void *p) { return clip_loss(p); }

static void test_grad_clip_loss(void **state) {
  (void)state;
  loss_ctx c = {.B = 4, .D = 3};
  c.img = drand_array(12, 0.5);
  c.txt = drand_array(12, 0.5);
  c.pr = drand_array(16, 0);
  c.pc = drand_array(16, 0);
  c.scale = 1.3;
  double loss = clip_loss(&c);
  /* oracle: the definition, computed directly */
  double want = 0, sc = exp(c.scale);
  for (int i = 0; i < 4; i++) {
    double lse_r = 0, lse_c = 0;
    for (int j = 0; j < 4; j++) {
      lse_r += exp(sc * dot(c.img + i * 3, c.txt + j * 3, 3));
      lse_c += exp(sc * dot(c.img + j * 3, c.txt + i * 3, 3));
    }
    double diag = sc * dot(c.img + i * 3, c.txt + i * 3, 3);
    want += (log(lse_r) - diag) + (log(lse_c) - diag);
  }
  want /= 8;
  if (fabs(loss - want) > 1e-12) {
    print_error("clip loss %.15f, direct %.15f\n", loss, want);
    fail();
  }
  double *dimg = drand_array(12, 0), *dtxt = drand_array(12, 0), ds = 0;
  vlm__tk_clip_loss_backward_f64(dimg, dtxt, &ds, c.pr, c.pc, c.img, c.txt,
                                 c.scale, 4, 3);
  gradcheck("clip loss dimg", clip_loss, &c, c.img, dimg, 12, TOL);
  gradcheck("clip loss dtxt", clip_loss, &c, c.txt, dtxt, 12, TOL);
  gradcheck("clip loss dscale", clip_loss_scale, &c, &c.scale, &ds, 1, TOL);
  free(c.img); free(c.txt); free(c.pr); free(c.pc); free(dimg); free(dtxt);
}

/* ---- float kernels agree with double ones ---------------------------- */

static float *to_float(const double *d, size_t n) {
  float *f = malloc(sizeof(float) * (n ? n : 1));
  for (size_t i = 0; i < n; i++)
    f[i] = (float)d[i];
  return f;
}

static void expect_close(const char *what, const float *f, const double *d,
                         size_t n, double tol) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < n; i++) {
    err = fmax(err, fabs(f[i] - d[i]));
    scale = fmax(scale, fabs(d[i]));
  }
  if (!(err <= tol * fmax(scale, 1))) {
    print_error("%s: float vs double max abs diff %.3e (scale %.3e)\n", what,
                err, scale);
    fail();
  }
}

static void test_float_matches_double(void **state) {
  (void)state;
  vlm__tpool *pool;
  assert_int_equal(vlm__tpool_create(2, &pool), 0);
  /* linear and attention with a 2-thread pool, sizes that split */
  int N = 70, C = 24, OC = 72;
  double *inp = drand_array((size_t)N * C, 1), *w = drand_array(OC * C, 0.3),
         *b = drand_array(OC, 1), *out = drand_array((size_t)N * OC, 0);
  float *finp = to_float(inp, (size_t)N * C), *fw = to_float(w, OC * C),
        *fb = to_float(b, OC), *fout = to_float(out, (size_t)N * OC);
  vlm__tk_linear_forward_f64(NULL, out, inp, w, b, N, C, OC);
  vlm__tk_linear_forward_f32(pool, fout, finp, fw, fb, N, C, OC);
  expect_close("linear", fout, out, (size_t)N * OC, 1e-5);
  double *dw = drand_array(OC * C, 0), *dinp = drand_array((size_t)N * C, 0);
  float *fdw = to_float(dw, OC * C), *fdinp = to_float(dinp, (size_t)N * C);
  vlm__tk_linear_backward_f64(NULL, dinp, 0, dw, NULL, out, inp, w, N, C, OC);
  vlm__tk_linear_backward_f32(pool, fdinp, 0, fdw, NULL, fout, finp, fw, N, C,
                              OC);
  expect_close("linear dw", fdw, dw, OC * C, 1e-5);
  expect_close("linear dinp", fdinp, dinp, (size_t)N * C, 1e-5);
  /* attention over 10 sequences of 7 rows, 3 heads of 8 */
  int off[10], len[10];
  int64_t poff[10];
  for (int s = 0; s < 10; s++) {
    off[s] = 7 * s;
    len[s] = 7;
    poff[s] = (int64_t)s * 3 * 49;
  }
  vlm__tk_seqs seqs = {10, off, len, poff, 7};
  double *probs = drand_array(10 * 3 * 49, 0), *att = drand_array(70 * 24, 0);
  float *fprobs = to_float(probs, 10 * 3 * 49), *fatt = to_float(att, 70 * 24);
  vlm__tk_attention_forward_f64(NULL, att, probs, out, &seqs, 24, 3, 1);
  vlm__tk_attention_forward_f32(pool, fatt, fprobs, fout, &seqs, 24, 3, 1);
  expect_close("attention", fatt, att, 70 * 24, 1e-5);
  free(inp); free(w); free(b); free(out); free(finp); free(fw); free(fb);
  free(fout); free(dw); free(dinp); free(fdw); free(fdinp); free(probs);
  free(att); free(fprobs); free(fatt);
  vlm__tpool_free(pool);
}

/* ---- the whole model ------------------------------------------------- */

static void tiny_config(vlm__clip_config *c, int quick) {
  vlm__tconfig_defaults(c);
  c->vision_width = 8;
  c->vision_layers = 2;
  c->vision_heads = 2;
  c->vision_mlp = 12;
  c->image_size = 8;
  c->patch_size = 4;
  c->vision_quick_gelu = quick;
  c->text_width = 6;
  c->text_layers = 2;
  c->text_heads = 2;
  c->text_mlp = 10;
  c->vocab_size = 11;
  c->context_length = 6;
  c->text_quick_gelu = quick;
  c->bos_id = 9;
  c->eos_id = 10;
  c->projection_dim = 5;
}

typedef struct {
  vlm__tmodel_f64 *m;
  const double *pixels;
  vlm__ttexts texts;
  int B;
} model_ctx;

static double model_loss(void *p) {
  model_ctx *c = p;
  vlm__tmodel_images_f64(c->m, c->pixels, c->B, NULL);
  vlm__tmodel_texts_f64(c->m, &c->texts, NULL);
  return vlm__tmodel_loss_f64(c->m);
}

/* Train-mode gradients of every tensor against finite differences. */
static void model_case(int quick, int lora) {
  vlm__clip_config cfg;
  tiny_config(&cfg, quick);
  vlm__tlayout *L;
  assert_int_equal(vlm__tlayout_create(&cfg, lora ? 2 : 0, 3.0f, &L), 0);
  enum { B = 3 };
  static const int32_t ids[] = {9, 1, 2, 10, 9, 10, 9, 3, 3, 4, 5, 10};
  static const int off[B] = {0, 4, 6}, len[B] = {4, 2, 6};
  vlm__tmodel_f64 *m;
  assert_int_equal(vlm__tmodel_create_f64(L, NULL, B, 12, 1, &m), 0);
  double *p = vlm__tmodel_params_f64(m);
  for (size_t i = 0; i < L->total; i++)
    p[i] = nrand() * 0.5;
  /* layer norm weights near 1 keep the towers well conditioned */
  for (int i = 0; i < L->nparams; i++)
    if (strstr(L->params[i].name, "norm") &&
        strstr(L->params[i].name, "weight"))
      for (size_t j = 0; j < L->params[i].numel; j++)
        p[L->params[i].offset + j] += 1;
  p[L->logit_scale] = 1.0;
  double *lp = vlm__tmodel_lora_f64(m);
  if (lora) /* B random too (zero at the start of training), else dA = 0 */
    for (size_t i = 0; i < L->lora_total; i++)
      lp[i] = nrand() * 0.5;
  vlm__tmodel_freeze_base_f64(m, 0); /* check base and adapters together */
  double *pixels = drand_array((size_t)B * 3 * 64, 1);
  model_ctx c = {m, pixels, {B, ids, off, len}, B};
  double loss = model_loss(&c);
  assert_true(isfinite(loss) && loss > 0);
  vlm__tmodel_zero_grads_f64(m);
  vlm__tmodel_backward_f64(m);
  double *g = vlm__tmodel_grads_f64(m);
  double worst = 0;
  int zero = 0, key_bias = 0;
  for (int i = 0; i < L->nparams; i++) {
    const vlm__tparam *t = &L->params[i];
    double rel = gradcheck(t->name, model_loss, &c, p + t->offset,
                           g + t->offset, t->numel, 1e-3);
    worst = fmax(worst, rel);
    zero += rel < 0;
    key_bias += strstr(t->name, "k_proj.bias") != NULL;
  }
  /* only the key biases have an identically zero gradient */
  assert_int_equal(zero, key_bias);
  if (lora) {
    double *lg = vlm__tmodel_lora_grads_f64(m);
    for (int i = 0; i < L->nlora; i++) {
      const vlm__tparam *t = &L->lora[i];
      double rel = gradcheck(t->name, model_loss, &c, lp + t->offset,
                             lg + t->offset, t->numel, 1e-3);
      worst = fmax(worst, rel);
    }
  }
  print_message("whole model (%s%s): %d tensors, worst relative error %.2e\n",
                quick ? "quick_gelu" : "gelu", lora ? ", LoRA" : "",
                L->nparams + (lora ? L->nlora : 0), worst);
  /* frozen base: base gradients stay zero, adapters still get theirs */
  if (lora) {
    vlm__tmodel_freeze_base_f64(m, 1);
    vlm__tmodel_zero_grads_f64(m);
    model_loss(&c);
    vlm__tmodel_backward_f64(m);
    for (size_t i = 0; i < L->total; i++)
      assert_true(g[i] == 0.0);
    double s = 0;
    double *lg = vlm__tmodel_lora_grads_f64(m);
    for (size_t i = 0; i < L->lora_total; i++)
      s += fabs(lg[i]);
    assert_true(s > 0);
  }
  free(pixels);
  vlm__tmodel_free_f64(m);
  vlm__tlayout_free(L);
}

static void test_grad_model_quick_gelu(void **state) {
  (void)state;
  model_case(1, 0);
}

static void test_grad_model_gelu(void **state) {
  (void)state;
  model_case(0, 0);
}

static void test_grad_model_lora(void **state) {
  (void)state;
  model_case(1, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_grad_linear),
      cmocka_unit_test(test_grad_layernorm),
      cmocka_unit_test(test_grad_attention),
      cmocka_unit_test(test_grad_attention_causal),
      cmocka_unit_test(test_grad_gelu),
      cmocka_unit_test(test_grad_quick_gelu),
      cmocka_unit_test(test_grad_patch_embed),
      cmocka_unit_test(test_grad_vision_embed),
      cmocka_unit_test(test_grad_text_embed),
      cmocka_unit_test(test_grad_l2norm),
      cmocka_unit_test(test_grad_clip_loss),
      cmocka_unit_test(test_float_matches_double),
      cmocka_unit_test(test_grad_model_quick_gelu),
      cmocka_unit_test(test_grad_model_gelu),
      cmocka_unit_test(test_grad_model_lora),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
