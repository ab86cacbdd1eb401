/* test_train.c - the CLIP trainer: gradient checks of every op and of the
 * whole model against central finite differences (double precision),
 * float kernels against double ones, the F16 writer against the
 * compiler's conversion, and end to end: a tiny model learns a synthetic
 * set of coloured shapes, its export loads in the inference engine and
 * gives the trainer's embeddings, a resumed run equals an uninterrupted
 * one bit for bit, and LoRA exports the merged weights. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "safetensors.h"
#include "safetensors_write.h"
#include "train_data.h"
#include "train_int.h"
#include "train_kernels.h"
#include "train_model.h"
#include "util/util.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_train.h"

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double urand(void) { /* [0, 1) */
  return vlm_test_uniform(&rng_state);
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
  int act; /* vlm__act */
  int64_t n;
  double *inp, *out, *R;
} act_ctx;

static double act_loss(void *p) {
  act_ctx *c = p;
  vlm__tk_act_forward_f64(NULL, c->out, c->inp, c->n, c->act);
  return dot(c->out, c->R, (size_t)c->n);
}

static void act_case(int act) {
  static const char *const names[3] = {"gelu", "quick_gelu",
                                       "gelu_pytorch_tanh"};
  act_ctx c = {.act = act, .n = 40};
  c.inp = drand_array(40, 2);
  c.out = drand_array(40, 0);
  c.R = drand_array(40, 1);
  double *dinp = drand_array(40, 0);
  vlm__tk_act_backward_f64(NULL, dinp, c.inp, c.R, 40, act);
  gradcheck(names[act], act_loss, &c, c.inp, dinp, 40, TOL);
  /* values: quick_gelu(1) = 1 / (1 + e^-1.702), gelu(1) = 0.841344746,
   * the tanh form by its definition */
  double one = 1, y;
  vlm__tk_act_forward_f64(NULL, &y, &one, 1, act);
  double want = act == 1   ? 1 / (1 + exp(-1.702))
                : act == 2 ? 0.5 * (1 + tanh(sqrt(2 / M_PI) * 1.044715))
                           : 0.8413447460685429;
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

static void test_grad_gelu_tanh(void **state) {
  (void)state;
  act_case(2);
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
  vlm__tk_vision_embed_backward_f64(NULL, dpatch, dcls, dpos, c.R, 3, 5, 4,
                                    1);
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

/* ---- SigLIP's and Chinese-CLIP's kernels ------------------------------ */

/* A row added to every row: SigLIP's patch bias, BERT's token type 0. */
typedef struct {
  int N, C;
  double *base, *row, *out, *R;
} row_ctx;

static double row_loss(void *p) {
  row_ctx *c = p;
  memcpy(c->out, c->base, sizeof(double) * c->N * c->C);
  vlm__tk_add_row_forward_f64(NULL, c->out, c->row, c->N, c->C);
  return dot(c->out, c->R, (size_t)c->N * c->C);
}

static void test_grad_add_row(void **state) {
  (void)state;
  row_ctx c = {.N = 5, .C = 4};
  c.base = drand_array(20, 1);
  c.row = drand_array(4, 1);
  c.out = drand_array(20, 0);
  c.R = drand_array(20, 1);
  row_loss(&c);
  for (int n = 0; n < 5; n++)
    for (int i = 0; i < 4; i++)
      assert_true(c.out[n * 4 + i] == c.base[n * 4 + i] + c.row[i]);
  double *drow = drand_array(4, 0);
  vlm__tk_add_row_backward_f64(NULL, drow, c.R, 5, 4);
  gradcheck("row added to every row (token type, patch bias)", row_loss, &c,
            c.row, drow, 4, TOL);
  free(c.base); free(c.row); free(c.out); free(c.R); free(drow);
}

static double ve_nocls_loss(void *p) {
  ve_ctx *c = p;
  vlm__tk_vision_embed_forward_f64(NULL, c->out, c->patch, NULL, c->pos, c->B,
                                   c->T, c->C);
  return dot(c->out, c->R, (size_t)c->B * c->T * c->C);
}

/* SigLIP's embeddings: patches + positions, no class token. */
static void test_grad_vision_embed_no_class(void **state) {
  (void)state;
  ve_ctx c = {.B = 3, .T = 4, .C = 4};
  c.patch = drand_array(48, 1);
  c.pos = drand_array(16, 1);
  c.out = drand_array(48, 0);
  c.R = drand_array(48, 1);
  ve_nocls_loss(&c);
  assert_true(c.out[(1 * 4 + 2) * 4 + 3] ==
              c.patch[(1 * 4 + 2) * 4 + 3] + c.pos[2 * 4 + 3]);
  double *dpatch = drand_array(48, 0), *dpos = drand_array(16, 0);
  vlm__tk_vision_embed_backward_f64(NULL, dpatch, NULL, dpos, c.R, 3, 4, 4, 0);
  gradcheck("vision embed (no class) dpatch", ve_nocls_loss, &c, c.patch,
            dpatch, 48, TOL);
  gradcheck("vision embed (no class) dpos", ve_nocls_loss, &c, c.pos, dpos, 16,
            TOL);
  free(c.patch); free(c.pos); free(c.out); free(c.R); free(dpatch);
  free(dpos);
}

typedef struct {
  int B, T, C, H;
  double *q, *kv, *out, *probs, *R;
} map_ctx;

static double map_loss(void *p) {
  map_ctx *c = p;
  vlm__tk_map_attention_forward_f64(NULL, c->out, c->probs, c->q, c->kv, c->B,
                                    c->T, c->C, c->H);
  return dot(c->out, c->R, (size_t)c->B * c->C);
}

/* SigLIP's attention pooling: one query over each image's rows. */
static void test_grad_map_attention(void **state) {
  (void)state;
  enum { B = 3, T = 5, C = 6, H = 2, hd = C / H };
  map_ctx c = {.B = B, .T = T, .C = C, .H = H};
  c.q = drand_array(C, 1);
  c.kv = drand_array(B * T * 2 * C, 1);
  c.out = drand_array(B * C, 0);
  c.probs = drand_array(B * H * T, 0);
  c.R = drand_array(B * C, 1);
  map_loss(&c);
  /* oracle: softmax(q.k / sqrt(hd)) v per image and head, directly */
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      double w[T], sum = 0;
      for (int j = 0; j < T; j++) {
        w[j] = exp(dot(c.q + h * hd, c.kv + (b * T + j) * 2 * C + h * hd, hd) /
                   sqrt(hd));
        sum += w[j];
      }
      for (int i = 0; i < hd; i++) {
        double o = 0;
        for (int j = 0; j < T; j++)
          o += w[j] / sum * c.kv[(b * T + j) * 2 * C + C + h * hd + i];
        assert_true(fabs(o - c.out[b * C + h * hd + i]) < 1e-12);
      }
    }
  double *dq = drand_array(C, 0), *dkv = drand_array(B * T * 2 * C, 0);
  vlm__tk_map_attention_backward_f64(NULL, dq, dkv, c.R, c.q, c.kv, c.probs, B,
                                     T, C, H);
  gradcheck("attention pooling dq", map_loss, &c, c.q, dq, C, TOL);
  gradcheck("attention pooling dkv", map_loss, &c, c.kv, dkv, B * T * 2 * C,
            TOL);
  free(c.q); free(c.kv); free(c.out); free(c.probs); free(c.R); free(dq);
  free(dkv);
}

typedef struct {
  int B, D;
  double *img, *txt, *logits, scale, bias;
} sig_ctx;

static double sig_loss(void *p) {
  sig_ctx *c = p;
  return vlm__tk_siglip_loss_forward_f64(c->logits, c->img, c->txt, c->scale,
                                         c->bias, c->B, c->D);
}

/* SigLIP's sigmoid loss, logit_bias included, against its definition
 * (transformers' SiglipModel: -sum log sigmoid(z * logits) / B). */
static void test_grad_siglip_loss(void **state) {
  (void)state;
  sig_ctx c = {.B = 4, .D = 3, .scale = 1.7, .bias = -2.5};
  c.img = drand_array(12, 0.6);
  c.txt = drand_array(12, 0.6);
  c.logits = drand_array(16, 0);
  double loss = sig_loss(&c), want = 0;
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) {
      double l = exp(c.scale) * dot(c.img + i * 3, c.txt + j * 3, 3) + c.bias;
      double z = i == j ? 1 : -1;
      want -= log(1 / (1 + exp(-z * l)));
    }
  want /= 4;
  if (fabs(loss - want) > 1e-12) {
    print_error("sigmoid loss %.15f, direct %.15f\n", loss, want);
    fail();
  }
  double *dimg = drand_array(12, 0), *dtxt = drand_array(12, 0), ds = 0,
         db = 0;
  vlm__tk_siglip_loss_backward_f64(dimg, dtxt, &ds, &db, c.logits, c.img,
                                   c.txt, c.scale, 4, 3);
  gradcheck("sigmoid loss dimg", sig_loss, &c, c.img, dimg, 12, TOL);
  gradcheck("sigmoid loss dtxt", sig_loss, &c, c.txt, dtxt, 12, TOL);
  gradcheck("sigmoid loss dscale", sig_loss, &c, &c.scale, &ds, 1, TOL);
  gradcheck("sigmoid loss dbias", sig_loss, &c, &c.bias, &db, 1, TOL);
  /* large logits neither overflow nor lose the loss */
  c.bias = 800;
  assert_true(isfinite(sig_loss(&c)) && sig_loss(&c) > 100);
  free(c.img); free(c.txt); free(c.logits); free(dimg); free(dtxt);
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
  vlm__config_defaults(c);
  c->vision_width = 8;
  c->vision_layers = 2;
  c->vision_heads = 2;
  c->vision_mlp = 12;
  c->image_size = 8;
  c->patch_size = 4;
  c->vision_act = quick ? VLM__ACT_QUICK_GELU : VLM__ACT_GELU;
  c->text_width = 6;
  c->text_layers = 2;
  c->text_heads = 2;
  c->text_mlp = 10;
  c->vocab_size = 11;
  c->context_length = 6;
  c->text_act = quick ? VLM__ACT_QUICK_GELU : VLM__ACT_GELU;
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

/* Train-mode gradients of every tensor against finite differences, for
 * three texts ids[off[b] .. off[b] + len[b]). */
static void model_check(const vlm__clip_config *cfg, int lora,
                        const int32_t *ids, const int *off, const int *len,
                        const char *label) {
  vlm__tlayout *L;
  assert_int_equal(vlm__tlayout_create(cfg, lora ? 2 : 0, 3.0f, &L), 0);
  enum { B = 3 };
  int ntok = len[0] + len[1] + len[2];
  vlm__tmodel_f64 *m;
  assert_int_equal(vlm__tmodel_create_f64(L, NULL, B, ntok, 1, &m), 0);
  double *p = vlm__tmodel_params_f64(m);
  for (size_t i = 0; i < L->total; i++)
    p[i] = nrand() * 0.5;
  /* layer norm weights near 1 keep the towers well conditioned */
  for (int i = 0; i < L->nparams; i++)
    if ((strstr(L->params[i].name, "norm") ||
         strstr(L->params[i].name, "Norm")) &&
        strstr(L->params[i].name, "weight"))
      for (size_t j = 0; j < L->params[i].numel; j++)
        p[L->params[i].offset + j] += 1;
  p[L->logit_scale] = 1.0;
  double *lp = vlm__tmodel_lora_f64(m);
  if (lora) /* B random too (zero at the start of training), else dA = 0 */
    for (size_t i = 0; i < L->lora_total; i++)
      lp[i] = nrand() * 0.5;
  vlm__tmodel_freeze_base_f64(m, 0); /* check base and adapters together */
  int S = cfg->image_size;
  double *pixels = drand_array((size_t)B * 3 * S * S, 1);
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
    key_bias += strstr(t->name, "k_proj.bias") != NULL ||
                strstr(t->name, "self.key.bias") != NULL;
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
                label, lora ? ", LoRA" : "",
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

static void model_case(int quick, int lora) {
  vlm__clip_config cfg;
  tiny_config(&cfg, quick);
  static const int32_t ids[] = {9, 1, 2, 10, 9, 10, 9, 3, 3, 4, 5, 10};
  static const int off[3] = {0, 4, 6}, len[3] = {4, 2, 6};
  model_check(&cfg, lora, ids, off, len, quick ? "quick_gelu" : "gelu");
}

/* A tiny SigLIP: one width, tanh GELU, no class token, the attention-
 * pooling head, unmasked texts of exactly context_length ids (padded with
 * 1), the sigmoid loss with logit_bias. */
static void siglip_model_case(int lora) {
  vlm__clip_config cfg;
  vlm__config_family_defaults(&cfg, VLM__FAMILY_SIGLIP);
  cfg.vision_width = cfg.text_width = cfg.projection_dim = 8;
  cfg.vision_layers = cfg.text_layers = 2;
  cfg.vision_heads = cfg.text_heads = 2;
  cfg.vision_mlp = 12;
  cfg.text_mlp = 10;
  cfg.image_size = 8;
  cfg.patch_size = 4;
  cfg.vocab_size = 11;
  cfg.context_length = 5;
  static const int32_t ids[] = {3, 4, 2, 1, 1, 7, 2, 1, 1, 1,
                                5, 5, 6, 8, 2};
  static const int off[3] = {0, 5, 10}, len[3] = {5, 5, 5};
  model_check(&cfg, lora, ids, off, len, "SigLIP");
}

/* A tiny Chinese-CLIP: CLIP's vision tower, a BERT text tower (token
 * types, embedding LayerNorm, post-LN blocks, erf GELU, [CLS] pooled). */
static void chinese_clip_model_case(int lora) {
  vlm__clip_config cfg;
  tiny_config(&cfg, 1);
  vlm__clip_config d;
  vlm__config_family_defaults(&d, VLM__FAMILY_CHINESE_CLIP);
  cfg.family = VLM__FAMILY_CHINESE_CLIP;
  cfg.text_act = VLM__ACT_GELU;
  cfg.text_eps = d.text_eps;
  cfg.type_vocab_size = 2;
  cfg.bos_id = cfg.eos_id = -1;
  static const int32_t ids[] = {9, 1, 2, 10, 9, 10, 9, 3, 3, 4, 5, 10};
  static const int off[3] = {0, 4, 6}, len[3] = {4, 2, 6};
  model_check(&cfg, lora, ids, off, len, "Chinese-CLIP");
}

/* ---- the text-pair loss (texts alone) --------------------------------- */

typedef struct {
  vlm__tmodel_f64 *m;
  vlm__ttexts texts; /* 2P texts: P anchors, then their P paraphrases */
  double weight;
} pair_ctx;

static double pair_loss(void *p) {
  pair_ctx *c = p;
  vlm__tmodel_texts_f64(c->m, &c->texts, NULL);
  return c->weight * vlm__tmodel_text_pair_loss_f64(c->m);
}

/* The loss against its definition (symmetric InfoNCE between the halves
 * at exp(logit_scale)), every text-tower tensor's gradient against finite
 * differences at weight 0.5, and no gradient at all for the vision tower
 * or the temperature. */
static void pair_check(const vlm__clip_config *cfg, const int32_t *ids,
                       const int *off, const int *len, const char *label) {
  vlm__tlayout *L;
  assert_int_equal(vlm__tlayout_create(cfg, 0, 0, &L), 0);
  enum { P = 3 };
  int ntok = 0;
  for (int i = 0; i < 2 * P; i++)
    ntok += len[i];
  vlm__tmodel_f64 *m;
  assert_int_equal(vlm__tmodel_create_f64(L, NULL, 2 * P, ntok, 1, &m), 0);
  double *p = vlm__tmodel_params_f64(m);
  for (size_t i = 0; i < L->total; i++)
    p[i] = nrand() * 0.5;
  for (int i = 0; i < L->nparams; i++)
    if ((strstr(L->params[i].name, "norm") ||
         strstr(L->params[i].name, "Norm")) &&
        strstr(L->params[i].name, "weight"))
      for (size_t j = 0; j < L->params[i].numel; j++)
        p[L->params[i].offset + j] += 1;
  p[L->logit_scale] = 1.0;
  pair_ctx c = {m, {2 * P, ids, off, len}, 0.5};
  /* oracle: the definition from the embeddings themselves */
  int D = cfg->projection_dim;
  double *emb = malloc(sizeof(double) * 2 * P * D);
  assert_non_null(emb);
  vlm__tmodel_texts_f64(m, &c.texts, emb);
  double want = 0, sc = exp(1.0);
  for (int i = 0; i < P; i++) {
    double lse_r = 0, lse_c = 0;
    for (int j = 0; j < P; j++) {
      lse_r += exp(sc * dot(emb + i * D, emb + (P + j) * D, D));
      lse_c += exp(sc * dot(emb + j * D, emb + (P + i) * D, D));
    }
    double diag = sc * dot(emb + i * D, emb + (P + i) * D, D);
    want += (log(lse_r) - diag) + (log(lse_c) - diag);
  }
  want /= 2 * P;
  double loss = pair_loss(&c) / c.weight;
  if (!(fabs(loss - want) <= 1e-12)) {
    print_error("%s: text pair loss %.15f, direct %.15f\n", label, loss, want);
    fail();
  }
  vlm__tmodel_zero_grads_f64(m);
  pair_loss(&c);
  vlm__tmodel_text_pair_backward_f64(m, c.weight);
  double *g = vlm__tmodel_grads_f64(m);
  double worst = 0;
  int text_tensors = 0;
  for (int i = 0; i < L->nparams; i++) {
    const vlm__tparam *t = &L->params[i];
    int text = !strncmp(t->name, "text_", 5); /* text_model, text_projection */
    if (!text) { /* the vision tower and the temperature: nothing */
      for (size_t j = 0; j < t->numel; j++)
        if (g[t->offset + j] != 0.0) {
          print_error("%s: %s has a gradient\n", label, t->name);
          fail();
        }
      continue;
    }
    double rel = gradcheck(t->name, pair_loss, &c, p + t->offset,
                           g + t->offset, t->numel, 1e-3);
    worst = fmax(worst, rel);
    text_tensors++;
  }
  assert_true(text_tensors > 8);
  print_message("text pairs (%s): %d text tensors, worst relative error "
                "%.2e\n", label, text_tensors, worst);
  free(emb);
  vlm__tmodel_free_f64(m);
  vlm__tlayout_free(L);
}

static void test_grad_text_pairs(void **state) {
  (void)state;
  /* six texts of unequal lengths, CLIP's bos first and eos (10) last */
  static const int32_t ids[] = {9, 1, 2, 10, 9, 10, 9, 3, 3, 4, 5, 10,
                                9, 4, 10, 9, 6, 7, 8, 10, 9, 2, 2, 10};
  static const int off[6] = {0, 4, 6, 12, 15, 20}, len[6] = {4, 2, 6, 3, 5, 4};
  vlm__clip_config cfg;
  tiny_config(&cfg, 1);
  pair_check(&cfg, ids, off, len, "CLIP");
  /* Chinese-CLIP's BERT tower pools [CLS], the first id */
  vlm__clip_config d;
  vlm__config_family_defaults(&d, VLM__FAMILY_CHINESE_CLIP);
  cfg.family = VLM__FAMILY_CHINESE_CLIP;
  cfg.text_act = VLM__ACT_GELU;
  cfg.text_eps = d.text_eps;
  cfg.type_vocab_size = 2;
  cfg.bos_id = cfg.eos_id = -1;
  pair_check(&cfg, ids, off, len, "Chinese-CLIP");
  /* SigLIP: texts of exactly context_length ids, the head's bias */
  vlm__config_family_defaults(&cfg, VLM__FAMILY_SIGLIP);
  cfg.vision_width = cfg.text_width = cfg.projection_dim = 8;
  cfg.vision_layers = cfg.text_layers = 2;
  cfg.vision_heads = cfg.text_heads = 2;
  cfg.vision_mlp = 12;
  cfg.text_mlp = 10;
  cfg.image_size = 8;
  cfg.patch_size = 4;
  cfg.vocab_size = 11;
  cfg.context_length = 4;
  static const int32_t sids[] = {3, 4, 2, 1, 7, 2, 1, 1, 5, 5, 6, 8,
                                 3, 3, 2, 1, 8, 2, 1, 1, 6, 5, 2, 1};
  static const int soff[6] = {0, 4, 8, 12, 16, 20}, slen[6] = {4, 4, 4, 4, 4, 4};
  pair_check(&cfg, sids, soff, slen, "SigLIP");
}

static void test_grad_model_siglip(void **state) {
  (void)state;
  siglip_model_case(0);
}

static void test_grad_model_siglip_lora(void **state) {
  (void)state;
  siglip_model_case(1);
}

static void test_grad_model_chinese_clip(void **state) {
  (void)state;
  chinese_clip_model_case(0);
}

static void test_grad_model_chinese_clip_lora(void **state) {
  (void)state;
  chinese_clip_model_case(1);
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

/* ---- F16 conversion -------------------------------------------------- */

static void test_f16_matches_compiler(void **state) {
  (void)state;
  /* every half value round-trips, and random floats (normal, subnormal,
   * overflowing, ties) round as the compiler's conversion does */
  for (uint32_t h = 0; h < 0x10000; h++) {
    uint16_t bits = (uint16_t)h;
    _Float16 hv;
    memcpy(&hv, &bits, 2);
    float f = (float)hv;
    if (f != f)
      continue; /* NaN payloads need not match */
    uint16_t got = vlm__f32_to_f16(f);
    if (got != bits) {
      print_error("half %04x -> %g -> %04x\n", bits, f, got);
      fail();
    }
  }
  for (int i = 0; i < 200000; i++) {
    uint32_t x = (uint32_t)(urand() * 4294967296.0);
    /* bias towards the half range */
    if (i % 2)
      x = (x & 0x807fffffu) | ((uint32_t)(100 + (x >> 23) % 60) << 23);
    float f;
    memcpy(&f, &x, 4);
    if (f != f)
      continue;
    _Float16 want = (_Float16)f;
    uint16_t wb;
    memcpy(&wb, &want, 2);
    uint16_t got = vlm__f32_to_f16(f);
    if (got != wb) {
      print_error("%.9g (%08x): %04x, compiler %04x\n", f, x, got, wb);
      fail();
    }
  }
}

/* ---- end to end: a synthetic image-text set -------------------------- */

#define NCOLOURS 6
#define NSHAPES 4
#define NPAIRS (NCOLOURS * NSHAPES)

static const char *const colour_names[NCOLOURS] = {
    "red", "green", "blue", "yellow", "purple", "black"};
static const uint8_t colour_rgb[NCOLOURS][3] = {
    {220, 30, 30}, {30, 170, 40}, {30, 60, 220},
    {230, 210, 30}, {140, 40, 170}, {20, 20, 20}};
static const char *const shape_names[NSHAPES] = {"circle", "square",
                                                 "triangle", "cross"};

typedef struct {
  char dir[256];
  char config[300], catalog[300];
  char keys[NPAIRS][32], paths[NPAIRS][300], texts[NPAIRS][64];
  vlm_train_item items[NPAIRS];
  /* the trained model of the learning test, shared by later tests */
  char trained[300];
  int have_trained;
} synth;

static synth *S;

static int inside(int shape, double dx, double dy, double r) {
  switch (shape) {
  case 0: return dx * dx + dy * dy <= r * r;
  case 1: return fabs(dx) <= r * 0.85 && fabs(dy) <= r * 0.85;
  case 2: return dy <= r * 0.8 && dy >= -r && fabs(dx) <= (dy + r) * 0.6;
  default: return (fabs(dx) <= r * 0.3 && fabs(dy) <= r) ||
                  (fabs(dy) <= r * 0.3 && fabs(dx) <= r);
  }
}

/* A 36x32 PNG: one shape of one colour on a light, slightly noisy
 * background, its size and position varied a little. */
static void write_shape_png(const char *path, int colour, int shape) {
  enum { W = 36, H = 32 };
  uint8_t px[W * H * 3];
  double r = 9 + 3 * urand(), cx = W / 2.0 + 4 * (urand() - 0.5),
         cy = H / 2.0 + 4 * (urand() - 0.5);
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) {
      uint8_t *p = px + (y * W + x) * 3;
      int in = inside(shape, x + 0.5 - cx, y + 0.5 - cy, r);
      for (int c = 0; c < 3; c++) {
        int v = in ? colour_rgb[colour][c] : 235;
        v += (int)(urand() * 12) - 6;
        p[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
      }
    }
  png_image img;
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = W;
  img.height = H;
  img.format = PNG_FORMAT_RGB;
  assert_true(png_image_write_to_file(&img, path, 0, px, 0, NULL));
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}


static const char tiny_config_json[] =
    "{\"projection_dim\": 32, \"logit_scale_init_value\": 2.6592,\n"
    " \"text_config\": {\"vocab_size\": 49408, \"hidden_size\": 64,\n"
    "   \"intermediate_size\": 128, \"num_hidden_layers\": 2,\n"
    "   \"num_attention_heads\": 2, \"max_position_embeddings\": 16,\n"
    "   \"hidden_act\": \"quick_gelu\", \"layer_norm_eps\": 1e-5},\n"
    " \"vision_config\": {\"hidden_size\": 64, \"intermediate_size\": 128,\n"
    "   \"num_hidden_layers\": 2, \"num_attention_heads\": 2,\n"
    "   \"image_size\": 32, \"patch_size\": 8, \"hidden_act\": \"gelu\",\n"
    "   \"layer_norm_eps\": 1e-5}}\n";

static int synth_setup(void **state) {
  (void)state;
  S = calloc(1, sizeof *S);
  if (!S)
    return -1;
  strcpy(S->dir, "/tmp/vlm_train_XXXXXX");
  if (!mkdtemp(S->dir))
    return -1;
  rng_state = 0x1234567ull;
  for (int c = 0; c < NCOLOURS; c++)
    for (int sh = 0; sh < NSHAPES; sh++) {
      int i = c * NSHAPES + sh;
      char key[32], dir[256], file[300];
      snprintf(key, sizeof key, "%s-%s", colour_names[c], shape_names[sh]);
      memcpy(dir, S->dir, sizeof dir);
      snprintf(file, sizeof file, "%s/%s.png", dir, key);
      memcpy(S->keys[i], key, sizeof key);
      memcpy(S->paths[i], file, sizeof file);
      snprintf(S->texts[i], sizeof S->texts[i], "a %s %s", colour_names[c],
               shape_names[sh]);
      write_shape_png(S->paths[i], c, sh);
      S->items[i] = (vlm_train_item){.key = S->keys[i], .image = S->paths[i], .text = S->texts[i]};
    }
  snprintf(S->config, sizeof S->config, "%s/config.json", S->dir);
  write_text(S->config, tiny_config_json);
  snprintf(S->catalog, sizeof S->catalog, "%s/catalog.jsonl", S->dir);
  FILE *f = fopen(S->catalog, "w");
  if (!f)
    return -1;
  for (int i = 0; i < NPAIRS; i++)
    fprintf(f, "{\"key\": \"%s\", \"image\": \"%s.png\", \"text\": \"%s\"}\n",
            S->keys[i], S->keys[i], S->texts[i]);
  fclose(f);
  return 0;
}

static int synth_teardown(void **state) {
  (void)state;
  if (S) {
    vlm_test_rm_rf(S->dir);
    free(S);
    S = NULL;
  }
  return 0;
}

static void base_options(vlm_train_options *o, const char *out) {
  vlm_train_options_default(o);
  o->items = S->items;
  o->n_items = NPAIRS;
  o->out_dir = out;
  o->config_path = S->config;
  o->tokenizer_dir = "tests/fixtures/clip-tiny";
  o->batch = NPAIRS;
  o->lr = 2e-3f;
  o->warmup_steps = 20;
  o->weight_decay = 0.01f;
  o->crop_scale_min = 0.8f;
  o->jitter = 0; /* colours are the labels */
  o->threads = 1;
  o->loader_threads = 2;
  o->seed = 7;
}

static double cosine(const float *a, const float *b, int n) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < n; i++) {
    ab += (double)a[i] * b[i];
    aa += (double)a[i] * a[i];
    bb += (double)b[i] * b[i];
  }
  return ab / sqrt(aa * bb);
}

static int read_file_all(const char *path, uint8_t **data, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  *data = malloc((size_t)n + 1);
  *len = fread(*data, 1, (size_t)n, f);
  fclose(f);
  return 0;
}

/* The model learns the set (loss falls, Recall@1 >= 0.9 both ways on it),
 * and its export, loaded by the inference engine, gives the embeddings the
 * trainer computed in its last evaluation. */
static void test_train_learns_and_round_trips(void **state) {
  (void)state;
  vlm_train_options o;
  snprintf(S->trained, sizeof S->trained, "%s/learned", S->dir);
  base_options(&o, S->trained);
  o.max_steps = 300;
  o.val_items = S->items; /* evaluate on the training set itself */
  o.n_val = NPAIRS;
  o.f16 = 0;
  o.checkpoint_every = 100;
  vlm_train_result res;
  int rc = vlm_train_run(&o, &res);
  if (rc)
    print_error("train: %s\n", vlm_errmsg());
  assert_int_equal(rc, 0);
  assert_int_equal(res.steps, 300);
  assert_int_equal(res.n_train, NPAIRS);
  double chance_loss = log((double)NPAIRS);
  print_message("loss %.4f (chance %.4f); R@1 i2t %.3f t2i %.3f; %.0f "
                "pairs/s\n",
                res.loss, chance_loss, res.recall.i2t[0], res.recall.t2i[0],
                res.pairs_per_s);
  assert_true(res.loss < 0.5 * chance_loss);
  assert_true(res.recall.n == NPAIRS);
  assert_true(res.recall.i2t[0] >= 0.9);
  assert_true(res.recall.t2i[0] >= 0.9);
  /* metrics.csv has one row per epoch (300 steps of a 24-pair epoch) */
  char path[512];
  snprintf(path, sizeof path, "%s/metrics.csv", S->trained);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  int lines = 0;
  char line[1024];
  while (fgets(line, sizeof line, f))
    lines++;
  fclose(f);
  assert_int_equal(lines, 1 + 300);
  /* round trip through the inference engine */
  vlm_clip *clip = NULL;
  rc = vlm_clip_load(S->trained, NULL, &clip);
  if (rc)
    print_error("load: %s\n", vlm_errmsg());
  assert_int_equal(rc, 0);
  int D = vlm_clip_dim(clip);
  assert_int_equal(D, res.dim);
  const char *paths[NPAIRS], *texts[NPAIRS];
  for (int i = 0; i < NPAIRS; i++) {
    int k = res.eval_index[i];
    paths[i] = S->items[k].image;
    texts[i] = S->items[k].text;
  }
  float *img = malloc(sizeof(float) * NPAIRS * D);
  float *txt = malloc(sizeof(float) * NPAIRS * D);
  /* the files themselves, through the engine's decode, preprocessing and
   * forward pass */
  int rc_img = vlm_clip_encode_images(clip, paths, NPAIRS, 0, img);
  if (rc_img)
    print_error("encode images: %s\n", vlm_errmsg());
  assert_int_equal(rc_img, 0);
  assert_int_equal(vlm_clip_encode_texts(clip, texts, NPAIRS, 0, txt), 0);
  double worst_cos = 1, worst_abs = 0;
  for (int i = 0; i < NPAIRS; i++) {
    worst_cos = fmin(worst_cos, cosine(img + i * D, res.image_emb + i * D, D));
    worst_cos = fmin(worst_cos, cosine(txt + i * D, res.text_emb + i * D, D));
    for (int j = 0; j < D; j++) {
      worst_abs = fmax(worst_abs, fabs(img[i * D + j] - res.image_emb[i * D + j]));
      worst_abs = fmax(worst_abs, fabs(txt[i * D + j] - res.text_emb[i * D + j]));
    }
  }
  print_message("round trip: worst cosine %.8f, max abs diff %.2e\n",
                worst_cos, worst_abs);
  assert_true(worst_cos >= 0.99999);
  assert_true(worst_abs <= 1e-4);
  free(img);
  free(txt);
  vlm_clip_free(clip);
  vlm_train_result_free(&res);
  S->have_trained = 1;
}

/* Text pairs teach words no caption uses: colour synonyms paired with
 * the captions' colour words ("a crimson circle" = "a red circle", for
 * three of the four shapes, and "crimson" = "red") make "a crimson
 * <shape>" find the red pictures, the fourth shape included; the same
 * run without them does not. */
static const char *const colour_synonyms[NCOLOURS] = {
    "crimson", "emerald", "azure", "golden", "violet", "ebony"};

static int synonym_hits(const char *model, int *held_out_hits) {
  vlm_clip *clip = NULL;
  int rc = vlm_clip_load(model, NULL, &clip);
  if (rc)
    print_error("load: %s\n", vlm_errmsg());
  assert_int_equal(rc, 0);
  int D = vlm_clip_dim(clip);
  const char *paths[NPAIRS];
  char qs[NPAIRS][64];
  const char *texts[NPAIRS];
  for (int i = 0; i < NPAIRS; i++) {
    paths[i] = S->items[i].image;
    snprintf(qs[i], sizeof qs[i], "a %s %s", colour_synonyms[i / NSHAPES],
             shape_names[i % NSHAPES]);
    texts[i] = qs[i];
  }
  float *img = malloc(sizeof(float) * NPAIRS * D);
  float *txt = malloc(sizeof(float) * NPAIRS * D);
  assert_int_equal(vlm_clip_encode_images(clip, paths, NPAIRS, 0, img), 0);
  assert_int_equal(vlm_clip_encode_texts(clip, texts, NPAIRS, 0, txt), 0);
  int hits = 0;
  *held_out_hits = 0;
  for (int q = 0; q < NPAIRS; q++) {
    int best = 0;
    double bs = -2;
    for (int i = 0; i < NPAIRS; i++) {
      double sc = cosine(txt + q * D, img + i * D, D);
      if (sc > bs) {
        bs = sc;
        best = i;
      }
    }
    int ok = best / NSHAPES == q / NSHAPES; /* the right colour */
    hits += ok;
    if (q % NSHAPES == NSHAPES - 1)
      *held_out_hits += ok;
  }
  free(img);
  free(txt);
  vlm_clip_free(clip);
  return hits;
}

static void test_text_pairs_teach_synonyms(void **state) {
  (void)state;
  enum { NTP = NCOLOURS * (NSHAPES - 1 + 1) };
  vlm_train_text_pair tp[NTP];
  char a[NTP][64], b[NTP][64];
  int n = 0;
  for (int c = 0; c < NCOLOURS; c++) {
    for (int sh = 0; sh < NSHAPES - 1; sh++) {
      snprintf(a[n], sizeof a[n], "a %s %s", colour_synonyms[c],
               shape_names[sh]);
      snprintf(b[n], sizeof b[n], "a %s %s", colour_names[c], shape_names[sh]);
      n++;
    }
    snprintf(a[n], sizeof a[n], "%s", colour_synonyms[c]);
    snprintf(b[n], sizeof b[n], "%s", colour_names[c]);
    n++;
  }
  for (int i = 0; i < n; i++)
    tp[i] = (vlm_train_text_pair){a[i], b[i], 0};
  int hits[2], held[2];
  for (int with = 0; with < 2; with++) {
    char out[400];
    snprintf(out, sizeof out, "%s/synonyms-%d", S->dir, with);
    vlm_train_options o;
    base_options(&o, out);
    o.max_steps = 300;
    o.f16 = 0;
    if (with) {
      o.text_pairs = tp;
      o.n_text_pairs = n;
      o.text_batch = 6;
    }
    vlm_train_result res;
    int rc = vlm_train_run(&o, &res);
    if (rc)
      print_error("train: %s\n", vlm_errmsg());
    assert_int_equal(rc, 0);
    if (with) {
      assert_int_equal(res.n_text_pairs, n);
      assert_true(res.text_loss > 0 && res.text_loss < log(6.0) / 2);
    }
    vlm_train_result_free(&res);
    hits[with] = synonym_hits(out, &held[with]);
  }
  print_message("\"a crimson circle\" finds the red pictures: %d/%d without "
                "text pairs, %d/%d with them (held-out shape: %d/%d, %d/%d)\n",
                hits[0], NPAIRS, hits[1], NPAIRS, held[0], NCOLOURS, held[1],
                NCOLOURS);
  assert_true(hits[1] >= NPAIRS * 3 / 4);
  assert_true(held[1] >= NCOLOURS / 2);
  assert_true(hits[0] < NPAIRS / 2);
}

static int same_file(const char *a, const char *b) {
  uint8_t *x = NULL, *y = NULL;
  size_t nx = 0, ny = 0;
  int ok = !read_file_all(a, &x, &nx) && !read_file_all(b, &y, &ny) &&
           nx == ny && !memcmp(x, y, nx);
  free(x);
  free(y);
  return ok;
}

/* With text pairs, a resumed run still equals an uninterrupted one bit
 * for bit (the pairs of a step are a function of the seed and step);
 * resuming with other pairs, or none, is refused; unusable pairs are
 * skipped and counted. */
static void test_text_pairs_resume(void **state) {
  (void)state;
  vlm_train_text_pair tp[] = {
      {"crimson", "red", 0},        {"azure", "blue", 2},
      {"emerald", "green", 0.5},    {"ebony", "black", 0},
      {"", "purple", 0},            /* empty: skipped */
      {"same", "same", 0},          /* the same ids: skipped */
      {"violet", "purple", -1},     /* negative weight: skipped */
      {"golden", "yellow", 0}};
  int n = (int)(sizeof tp / sizeof tp[0]);
  char a[300], b[300], pa[400], pb[400];
  snprintf(a, sizeof a, "%s/tp-straight", S->dir);
  snprintf(b, sizeof b, "%s/tp-resumed", S->dir);
  vlm_train_options o;
  base_options(&o, a);
  o.max_steps = 12;
  o.threads = 2;
  o.f16 = 0;
  o.batch = 8;
  o.checkpoint_every = 4;
  o.text_pairs = tp;
  o.n_text_pairs = n;
  o.text_batch = 4;
  o.text_rounds = 2;
  o.text_weight = 0.5f;
  vlm_train_result ra, rb;
  assert_int_equal(vlm_train_run(&o, &ra), 0);
  assert_int_equal(ra.n_text_pairs, 5);
  assert_int_equal(ra.n_text_skipped, 3);
  assert_true(ra.text_loss > 0);
  o.out_dir = b;
  o.stop_after = 5;
  assert_int_equal(vlm_train_run(&o, &rb), 0);
  vlm_train_result_free(&rb);
  o.stop_after = 0;
  o.resume = 1;
  tp[0].b = "scarlet"; /* other pairs */
  assert_int_equal(vlm_train_run(&o, &rb), VLM_EMISMATCH);
  vlm_train_result_free(&rb);
  o.n_text_pairs = 0; /* none */
  assert_int_equal(vlm_train_run(&o, &rb), VLM_EMISMATCH);
  vlm_train_result_free(&rb);
  tp[0].b = "red";
  o.n_text_pairs = n;
  o.text_weight = 3; /* ignored: the checkpoint's options win */
  assert_int_equal(vlm_train_run(&o, &rb), 0);
  assert_int_equal(rb.steps, 12);
  snprintf(pa, sizeof pa, "%s/model.safetensors", a);
  snprintf(pb, sizeof pb, "%s/model.safetensors", b);
  assert_true(same_file(pa, pb));
  snprintf(pa, sizeof pa, "%s/checkpoint/state.safetensors", a);
  snprintf(pb, sizeof pb, "%s/checkpoint/state.safetensors", b);
  assert_true(same_file(pa, pb));
  /* more pairs per step than half the batch is refused up front */
  o.resume = 0;
  o.text_batch = 5;
  snprintf(b, sizeof b, "%s/tp-refused", S->dir);
  o.out_dir = b;
  assert_int_equal(vlm_train_run(&o, &rb), VLM_EINVAL);
  vlm_train_result_free(&rb);
  vlm_train_result_free(&ra);
}

/* N steps straight == 1 step and a stop request, resume to step 13,
 * resume to N: identical weights and optimizer state, with 2 compute
 * threads. */
static void test_resume_is_bit_exact(void **state) {
  (void)state;
  char a[300], b[300], pa[400], pb[400];
  snprintf(a, sizeof a, "%s/straight", S->dir);
  snprintf(b, sizeof b, "%s/resumed", S->dir);
  vlm_train_options o;
  base_options(&o, a);
  o.max_steps = 30;
  o.threads = 2;
  o.f16 = 0;
  o.batch = 16; /* 1 step per epoch, so the run crosses reshuffles */
  o.checkpoint_every = 10;
  o.val_fraction = 0.2; /* held out by key hash */
  o.items = S->items;
  o.n_items = NPAIRS;
  vlm_train_result ra, rb, rc2;
  assert_int_equal(vlm_train_run(&o, &ra), 0);
  o.out_dir = b;
  /* a stop request (Ctrl-C) checkpoints after the current step */
  volatile int stop = 1;
  o.stop = &stop;
  assert_int_equal(vlm_train_run(&o, &rb), VLM_EINTR);
  assert_int_equal(rb.steps, 1);
  vlm_train_result_free(&rb);
  stop = 0;
  o.resume = 1;
  o.stop_after = 13;
  assert_int_equal(vlm_train_run(&o, &rb), 0);
  assert_int_equal(rb.steps, 13);
  o.resume = 0;
  /* not resuming over a checkpoint is refused */
  o.stop_after = 0;
  assert_int_equal(vlm_train_run(&o, &rc2), VLM_EEXISTS);
  vlm_train_result_free(&rc2);
  o.resume = 1;
  o.lr = 1; /* ignored: the checkpoint's options win */
  assert_int_equal(vlm_train_run(&o, &rc2), 0);
  assert_int_equal(rc2.steps, 30);
  snprintf(pa, sizeof pa, "%s/checkpoint/state.safetensors", a);
  snprintf(pb, sizeof pb, "%s/checkpoint/state.safetensors", b);
  assert_true(same_file(pa, pb));
  snprintf(pa, sizeof pa, "%s/model.safetensors", a);
  snprintf(pb, sizeof pb, "%s/model.safetensors", b);
  assert_true(same_file(pa, pb));
  assert_string_equal(ra.data_digest, rc2.data_digest);
  assert_true(ra.recall.n > 0 && ra.recall.n < NPAIRS);
  assert_true(ra.recall.n == rc2.recall.n);
  assert_memory_equal(ra.image_emb, rc2.image_emb,
                      sizeof(float) * ra.recall.n * ra.dim);
  /* resuming a finished run changes nothing and adds no metrics row */
  vlm_train_result rd;
  assert_int_equal(vlm_train_run(&o, &rd), 0);
  assert_int_equal(rd.steps, 30);
  vlm_train_result_free(&rd);
  assert_true(same_file(pa, pb));
  char csv[400], line[1024];
  snprintf(csv, sizeof csv, "%s/metrics.csv", b);
  FILE *f = fopen(csv, "r");
  assert_non_null(f);
  long long last = -1, epoch, step;
  int rows = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "%lld,%lld", &epoch, &step) == 2) {
      assert_true(step > last); /* one row per evaluation, in order */
      last = step;
      rows++;
    }
  fclose(f);
  assert_int_equal(rows, 30); /* one step per epoch */
  vlm_train_result_free(&ra);
  vlm_train_result_free(&rb);
  vlm_train_result_free(&rc2);
}

/* The loader threads build exactly the batches a direct build gives, so
 * the data order and augmentation do not depend on timing; a corrupt
 * image is skipped, not fatal. */
static void test_loader_matches_direct_build(void **state) {
  (void)state;
  vlm_train_item items[NPAIRS + 1];
  memcpy(items, S->items, sizeof S->items);
  char bad[320];
  snprintf(bad, sizeof bad, "%s/corrupt.png", S->dir);
  write_text(bad, "\x89PNG\r\n\x1a\n this is not a PNG");
  items[NPAIRS] = (vlm_train_item){.key = "corrupt", .image = bad, .text = "a broken image"};
  vlm__tokenizer *tok = NULL;
  assert_int_equal(vlm__tokenizer_load("tests/fixtures/clip-tiny/vocab.json",
                                       "tests/fixtures/clip-tiny/merges.txt",
                                       &tok),
                   0);
  vlm__tdata_cfg cfg = {.image_size = 32, .augment = 1,
                        .crop_scale_min = 0.5f, .jitter = 0.3f, .hflip = 1,
                        .cache_bytes = 1000, /* most images not cached */
                        .threads = 2, .loader_threads = 3, .seed = 11,
                        .context_length = 16, .vocab_size = 49408};
  for (int c = 0; c < 3; c++) {
    cfg.mean[c] = 0.5f;
    cfg.std[c] = 0.25f;
  }
  vlm__tdata *d = NULL;
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS + 1, tok, &d), 0);
  assert_int_equal(vlm__tdata_count(d), NPAIRS);
  assert_int_equal(vlm__tdata_skipped(d), 1);
  int B = 5, steps = 12; /* 4 steps per epoch: 3 epochs */
  size_t per = 3 * 32 * 32;
  float *direct = malloc(sizeof(float) * per * B);
  int pairs[5];
  assert_int_equal(vlm__tdata_start(d, B, 0, steps), 0);
  int seen[NPAIRS] = {0};
  for (int s = 0; s < steps; s++) {
    const float *px;
    const int *pp;
    assert_int_equal(vlm__tdata_next(d, s, &px, &pp), 0);
    vlm__tdata_build(d, B, s, direct, pairs);
    assert_memory_equal(pp, pairs, sizeof pairs);
    assert_memory_equal(px, direct, sizeof(float) * per * B);
    if (s < 4)
      for (int b = 0; b < B; b++)
        seen[pp[b]]++;
    vlm__tdata_release(d, s);
  }
  /* an epoch draws distinct pairs */
  for (int i = 0; i < NPAIRS; i++)
    assert_true(seen[i] <= 1);
  /* another epoch, another order and other crops */
  float *e0 = malloc(sizeof(float) * per * B);
  int p0[5], p1[5];
  vlm__tdata_build(d, B, 0, e0, p0);
  vlm__tdata_build(d, B, 4, direct, p1);
  assert_true(memcmp(p0, p1, sizeof p0) != 0 ||
              memcmp(e0, direct, sizeof(float) * per * B) != 0);
  free(e0);
  free(direct);
  vlm__tdata_free(d);
  vlm__tokenizer_free(tok);
}

/* Silhouettes: an item's share of draws becomes gray, negated and blurred
 * (light on dark); the other items, the order and the crops are drawn as
 * without them, and the digest tells the data sets apart. */
static void test_item_silhouette(void **state) {
  (void)state;
  vlm_train_item items[NPAIRS];
  memcpy(items, S->items, sizeof items);
  vlm__tokenizer *tok = NULL;
  assert_int_equal(vlm__tokenizer_load("tests/fixtures/clip-tiny/vocab.json",
                                       "tests/fixtures/clip-tiny/merges.txt",
                                       &tok),
                   0);
  vlm__tdata_cfg cfg = {.image_size = 32, .augment = 1,
                        .crop_scale_min = 0.5f, .jitter = 0.3f,
                        .cache_bytes = 1 << 22, .threads = 1, .seed = 5,
                        .context_length = 16, .vocab_size = 49408};
  for (int c = 0; c < 3; c++)
    cfg.mean[c] = 0.5f, cfg.std[c] = 0.25f;
  vlm__tdata *plain = NULL, *sil = NULL;
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &plain), 0);
  items[0].silhouette = 1;
  items[1].silhouette = 0.5;
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &sil), 0);
  assert_string_not_equal(vlm__tdata_digest(plain), vlm__tdata_digest(sil));

  const int N = NPAIRS, epochs = 200, n = 32 * 32;
  size_t per = 3 * (size_t)n;
  float *a = malloc(sizeof(float) * per * N), *b = malloc(sizeof(float) * per * N);
  int pa[NPAIRS], pb[NPAIRS], half = 0;
  for (int e = 0; e < epochs; e++) {
    vlm__tdata_build(plain, N, e, a, pa);
    vlm__tdata_build(sil, N, e, b, pb);
    assert_memory_equal(pa, pb, sizeof pa);
    for (int k = 0; k < N; k++) {
      const float *x = a + per * k, *y = b + per * k;
      if (pa[k] >= 2) { /* untouched */
        assert_memory_equal(x, y, sizeof(float) * per);
        continue;
      }
      int gray = 1;
      double lum = 0, neg = 0;
      for (int i = 0; i < n; i++) {
        float r = y[i] * 0.25f + 0.5f, g = y[n + i] * 0.25f + 0.5f,
              bl = y[2 * n + i] * 0.25f + 0.5f;
        gray &= fabsf(r - g) < 1e-5f && fabsf(g - bl) < 1e-5f;
        neg += r;
        lum += 0.299f * (x[i] * 0.25f + 0.5f) +
               0.587f * (x[n + i] * 0.25f + 0.5f) +
               0.114f * (x[2 * n + i] * 0.25f + 0.5f);
      }
      if (pa[k] == 0)
        assert_true(gray);
      if (gray) { /* the plain picture, negated (blurring keeps the mean) */
        assert_true(fabs(neg / n - (1 - lum / n)) < 0.03);
        half += pa[k] == 1;
      } else {
        assert_memory_equal(x, y, sizeof(float) * per);
      }
    }
  }
  /* binomial(200, 0.5): sd 7; 5 sigma */
  print_message("silhouette 0.5: %d of %d epochs\n", half, epochs);
  assert_true(abs(half - epochs / 2) < 35);
  free(a);
  free(b);
  vlm__tdata_free(sil);
  vlm__tdata_free(plain);
  vlm__tokenizer_free(tok);
}

/* Weights: an epoch draws pair i floor(w) times plus once with probability
 * frac(w), as a function of (seed, epoch); repeated draws get their own
 * augmentation; all weights 1 is a permutation, as without weights. */
static void test_item_weights(void **state) {
  (void)state;
  vlm_train_item items[NPAIRS];
  memcpy(items, S->items, sizeof items);
  vlm__tokenizer *tok = NULL;
  assert_int_equal(vlm__tokenizer_load("tests/fixtures/clip-tiny/vocab.json",
                                       "tests/fixtures/clip-tiny/merges.txt",
                                       &tok),
                   0);
  vlm__tdata_cfg cfg = {.image_size = 16, .augment = 1,
                        .crop_scale_min = 0.5f, .jitter = 0.3f,
                        .cache_bytes = 1 << 22, .threads = 1, .seed = 3,
                        .context_length = 16, .vocab_size = 49408};
  for (int c = 0; c < 3; c++)
    cfg.mean[c] = 0.5f, cfg.std[c] = 0.25f;
  vlm__tdata *plain = NULL, *w = NULL;
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &plain), 0);
  items[0].weight = 0.25;
  items[1].weight = 2;
  items[2].weight = 1; /* the same as absent */
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &w), 0);
  assert_int_equal(vlm__tdata_draws(plain), NPAIRS);
  assert_int_equal(vlm__tdata_draws(w), NPAIRS); /* llround(N + 0.25) */
  assert_string_not_equal(vlm__tdata_digest(plain), vlm__tdata_digest(w));

  const int N = NPAIRS, epochs = 1600;
  size_t per = 3 * 16 * 16;
  float *px = malloc(sizeof(float) * per * (size_t)N);
  int pairs[NPAIRS];
  int zero = 0, one_twice = 0, one_distinct = 0;
  for (int e = 0; e < epochs; e++) {
    int seen[NPAIRS] = {0};
    vlm__tdata_build(plain, N, e, px, pairs);
    for (int b = 0; b < N; b++) {
      assert_true(pairs[b] >= 0 && pairs[b] < N);
      seen[pairs[b]]++;
    }
    for (int i = 0; i < N; i++)
      assert_int_equal(seen[i], 1);
    memset(seen, 0, sizeof seen);
    vlm__tdata_build(w, N, e, px, pairs);
    int at[2] = {-1, -1};
    for (int b = 0; b < N; b++) {
      assert_true(pairs[b] >= 0 && pairs[b] < 2 * N);
      seen[pairs[b] % N]++;
      if (pairs[b] % N == 1)
        at[pairs[b] / N] = b;
    }
    zero += seen[0];
    assert_true(seen[0] <= 1);
    assert_true(seen[1] >= 1 && seen[1] <= 2); /* the cut may take one */
    for (int i = 2; i < N; i++)
      assert_true(seen[i] <= 1);
    if (seen[1] == 2) {
      one_twice++;
      assert_true(at[0] >= 0 && at[1] >= 0);
      one_distinct += memcmp(px + per * (size_t)at[0],
                             px + per * (size_t)at[1],
                             sizeof(float) * per) != 0;
    }
  }
  /* binomial(1600, 0.25): sd 17; 5 sigma */
  print_message("weight 0.25: %d of %d epochs; weight 2 twice in %d, with "
                "distinct crops in %d\n", zero, epochs, one_twice,
                one_distinct);
  assert_true(abs(zero - epochs / 4) < 5 * 17);
  assert_true(one_twice > epochs * 9 / 10);
  assert_int_equal(one_distinct, one_twice);
  /* the same seed, the same epochs */
  vlm__tdata *again = NULL;
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &again), 0);
  int p2[NPAIRS];
  float *px2 = malloc(sizeof(float) * per * (size_t)N);
  vlm__tdata_build(w, N, 7, px, pairs);
  vlm__tdata_build(again, N, 7, px2, p2);
  assert_memory_equal(pairs, p2, sizeof pairs);
  assert_memory_equal(px, px2, sizeof(float) * per * (size_t)N);
  free(px2);
  free(px);
  vlm__tdata_free(again);
  vlm__tdata_free(w);
  vlm__tdata_free(plain);
  vlm__tokenizer_free(tok);
}

/* Other captions: each draw of a pair with alt_texts takes one of them
 * with probability alt_text_share (uniformly among the usable ones), else
 * its text, as a function of (seed, epoch, pair); unusable alt texts are
 * left out, not the pair; the digest covers them only where they exist. */
static void test_alt_texts(void **state) {
  (void)state;
  static const char *const alts[] = {"eine rote katze", "", "un chat rouge",
                                     "\xe7\x8c\xab"};
  vlm_train_item items[NPAIRS];
  memcpy(items, S->items, sizeof items);
  vlm__tokenizer *tok = NULL;
  assert_int_equal(vlm__tokenizer_load("tests/fixtures/clip-tiny/vocab.json",
                                       "tests/fixtures/clip-tiny/merges.txt",
                                       &tok),
                   0);
  vlm__tdata_cfg cfg = {.image_size = 32, .threads = 1, .seed = 5,
                        .context_length = 16, .vocab_size = 49408,
                        .cache_bytes = 1 << 20, .alt_text_share = 0.5f};
  for (int c = 0; c < 3; c++)
    cfg.mean[c] = 0.5f, cfg.std[c] = 0.25f;
  vlm__tdata *plain = NULL, *d = NULL, *again = NULL;
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &plain), 0);
  items[0].alt_texts = alts;
  items[0].n_alt_texts = 4;
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &d), 0);
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &again), 0);
  assert_int_equal(vlm__tdata_count(d), NPAIRS);
  assert_int_equal(vlm__tdata_alt_count(d, 0), 3); /* "" is left out */
  assert_int_equal(vlm__tdata_alt_count(d, 1), 0);
  assert_string_not_equal(vlm__tdata_digest(plain), vlm__tdata_digest(d));
  assert_string_equal(vlm__tdata_digest(d), vlm__tdata_digest(again));

  /* The candidates, tokenized by the oracle. */
  const char *cands[4] = {items[0].text, alts[0], alts[2], alts[3]};
  int32_t cand_ids[4][16];
  int cand_len[4];
  for (int k = 0; k < 4; k++)
    assert_int_equal(vlm__tokenize(tok, cands[k], 16, cand_ids[k], 16,
                                   &cand_len[k]),
                     0);
  int counts[4] = {0};
  const int epochs = 4000;
  for (int e = 0; e < epochs; e++) {
    const int32_t *ids, *ids2;
    int len, len2;
    vlm__tdata_train_tokens(d, 0, e, &ids, &len);
    vlm__tdata_train_tokens(again, 0, e, &ids2, &len2);
    assert_int_equal(len, len2);
    assert_memory_equal(ids, ids2, sizeof *ids * (size_t)len);
    int which = -1;
    for (int k = 0; k < 4 && which < 0; k++)
      if (len == cand_len[k] &&
          !memcmp(ids, cand_ids[k], sizeof *ids * (size_t)len))
        which = k;
    if (which < 0)
      fail_msg("epoch %d: a caption that is none of the pair's", e);
    counts[which]++;
    /* a pair without alt texts always has its text */
    vlm__tdata_train_tokens(d, 1, e, &ids, &len);
    const int32_t *ref;
    int ref_len;
    vlm__tdata_tokens(d, 1, &ref, &ref_len);
    assert_ptr_equal(ids, ref);
  }
  /* binomial: 4000 draws at 0.5, then 1/6 each; 5 sigma bounds */
  print_message("text %d, alt %d %d %d of %d\n", counts[0], counts[1],
                counts[2], counts[3], epochs);
  assert_true(abs(counts[0] - epochs / 2) < 5 * 32);
  for (int k = 1; k < 4; k++)
    assert_true(abs(counts[k] - epochs / 6) < 5 * 24);
  /* share 0: always the text; share 1: never */
  vlm__tdata_free(again);
  cfg.alt_text_share = 0;
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &again), 0);
  for (int e = 0; e < 200; e++) {
    const int32_t *ids;
    int len;
    vlm__tdata_train_tokens(again, 0, e, &ids, &len);
    assert_int_equal(len, cand_len[0]);
    assert_memory_equal(ids, cand_ids[0], sizeof *ids * (size_t)len);
  }
  vlm__tdata_free(again);
  cfg.alt_text_share = 1;
  assert_int_equal(vlm__tdata_open(&cfg, items, NPAIRS, tok, &again), 0);
  for (int e = 0; e < 200; e++) {
    const int32_t *ids;
    int len;
    vlm__tdata_train_tokens(again, 0, e, &ids, &len);
    assert_false(len == cand_len[0] &&
                 !memcmp(ids, cand_ids[0], sizeof *ids * (size_t)len));
  }
  vlm__tdata_free(again);
  vlm__tdata_free(d);
  vlm__tdata_free(plain);
  vlm__tokenizer_free(tok);
}

/* A longer context from an initial model: its position embeddings are
 * kept and the new rows start as copies of its last one (LoRA keeps them
 * frozen, so the export shows exactly the initial values); a shorter one
 * is refused. */
/* The trainer reads a config.json exactly as vlm_clip_load does (one
 * parser): the legacy text_config_dict / vision_config_dict keys too, and
 * the same refusals. */
static void test_trainer_reads_configs_as_the_engine(void **state) {
  (void)state;
  char dir[] = "/tmp/vlm-train-cfg-XXXXXX", path[64];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("{\"projection_dim\": 32, \"text_config_dict\": {\"hidden_size\": "
        "64, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
        "\"intermediate_size\": 128, \"max_position_embeddings\": 16}, "
        "\"vision_config_dict\": {\"hidden_size\": 48, \"num_hidden_layers"
        "\": 1, \"num_attention_heads\": 3, \"intermediate_size\": 96, "
        "\"image_size\": 32, \"patch_size\": 8, \"hidden_act\": \"gelu\"}}",
        f);
  fclose(f);
  vlm__clip_config c;
  assert_int_equal(vlm__train_load_config(path, &c), 0);
  assert_int_equal(c.projection_dim, 32);
  assert_int_equal(c.text_width, 64);
  assert_int_equal(c.context_length, 16);
  assert_int_equal(c.vision_width, 48);
  assert_int_equal(c.patch_size, 8);
  assert_int_equal(c.vision_act, VLM__ACT_GELU);
  assert_int_equal(c.text_act, VLM__ACT_QUICK_GELU); /* the default */
  assert_int_equal(c.vocab_size, 49408);
  /* a width the heads do not divide: refused like the engine refuses it */
  f = fopen(path, "w");
  assert_non_null(f);
  fputs("{\"text_config\": {\"hidden_size\": 65, \"num_attention_heads\": "
        "2}, \"vision_config\": {}}", f);
  fclose(f);
  assert_int_not_equal(vlm__train_load_config(path, &c), 0);
  unlink(path);
  rmdir(dir);
}

static void test_context_growth(void **state) {
  (void)state;
  if (!S->have_trained)
    skip();
  char out[300];
  snprintf(out, sizeof out, "%s/longer", S->dir);
  vlm_clip *base = NULL, *grown = NULL;
  assert_int_equal(vlm_clip_load(S->trained, NULL, &base), 0);
  const vlm__clip_config *bc = vlm__clip_get_config(base);
  int ctx = bc->context_length, width = bc->text_width;
  vlm_train_options o;
  base_options(&o, out);
  o.config_path = NULL;
  o.init_dir = S->trained;
  o.tokenizer_dir = NULL;
  o.lora_rank = 2;
  o.max_steps = 1;
  o.f16 = 0;
  o.context_length = ctx - 1;
  vlm_train_result res;
  assert_int_not_equal(vlm_train_run(&o, &res), 0);
  assert_non_null(strstr(vlm_errmsg(), "shorter"));
  o.context_length = ctx + 8;
  int rc = vlm_train_run(&o, &res);
  if (rc)
    print_error("context: %s\n", vlm_errmsg());
  assert_int_equal(rc, 0);
  vlm_train_result_free(&res);
  assert_int_equal(vlm_clip_load(out, NULL, &grown), 0);
  assert_int_equal(vlm__clip_get_config(grown)->context_length, ctx + 8);
  const char *name = "text_model.embeddings.position_embedding.weight";
  int64_t n0, n1;
  const float *p0 = vlm__clip_tensor(base, name, &n0);
  const float *p1 = vlm__clip_tensor(grown, name, &n1);
  assert_non_null(p0);
  assert_non_null(p1);
  assert_int_equal(n0, (int64_t)ctx * width);
  assert_int_equal(n1, (int64_t)(ctx + 8) * width);
  assert_memory_equal(p0, p1, sizeof(float) * (size_t)n0);
  for (int r = ctx; r < ctx + 8; r++)
    assert_memory_equal(p1 + (size_t)r * width,
                        p0 + (size_t)(ctx - 1) * width,
                        sizeof(float) * (size_t)width);
  vlm_clip_free(grown);
  vlm_clip_free(base);
}

/* LoRA from the learned model: the base stays frozen, and the exported
 * weights are exactly W + (alpha / r) B A of the saved adapters. */
static void test_lora_exports_merged_weights(void **state) {
  (void)state;
  if (!S->have_trained)
    skip();
  char out[300], path[400];
  snprintf(out, sizeof out, "%s/lora", S->dir);
  vlm_train_options o;
  base_options(&o, out);
  o.config_path = NULL;
  o.init_dir = S->trained;
  o.tokenizer_dir = NULL; /* the initial model's */
  o.lora_rank = 4;
  o.lora_alpha = 8;
  o.lr = 5e-3f;
  o.max_steps = 10;
  o.save_adapters = 1;
  o.f16 = 0;
  vlm_train_result res;
  int rc = vlm_train_run(&o, &res);
  if (rc)
    print_error("lora: %s\n", vlm_errmsg());
  assert_int_equal(rc, 0);
  vlm_train_result_free(&res);
  vlm_clip *base = NULL, *merged = NULL;
  assert_int_equal(vlm_clip_load(S->trained, NULL, &base), 0);
  assert_int_equal(vlm_clip_load(out, NULL, &merged), 0);
  snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
  vlm__safetensors *ad = NULL;
  assert_int_equal(vlm__st_open(path, &ad), 0);
  vlm__tlayout *L;
  assert_int_equal(
      vlm__tlayout_create(vlm__clip_get_config(base), 4, 8.0f, &L), 0);
  int adapted = 0, nonzero_b = 0;
  for (int i = 0; i < L->nparams; i++) {
    const char *name = L->params[i].name;
    int64_t n0, n1;
    const float *w0 = vlm__clip_tensor(base, name, &n0);
    const float *w1 = vlm__clip_tensor(merged, name, &n1);
    assert_non_null(w0);
    assert_non_null(w1);
    assert_int_equal(n0, n1);
    char an[200], bn[200];
    const char *dot = strrchr(name, '.');
    int is_weight = dot && !strcmp(dot, ".weight");
    if (!dot)
      dot = name + strlen(name);
    snprintf(an, sizeof an, "base_model.model.%.*s.lora_A.weight",
             (int)(dot - name), name);
    snprintf(bn, sizeof bn, "base_model.model.%.*s.lora_B.weight",
             (int)(dot - name), name);
    const vlm__st_tensor *A = is_weight ? vlm__st_find(ad, an) : NULL;
    const vlm__st_tensor *Bt = is_weight ? vlm__st_find(ad, bn) : NULL;
    if (!A) { /* not adapted: unchanged to the bit */
      assert_memory_equal(w0, w1, sizeof(float) * n0);
      continue;
    }
    assert_non_null(Bt);
    adapted++;
    int r = (int)A->shape[0], in = (int)A->shape[1], outd = (int)Bt->shape[0];
    assert_int_equal(r, 4);
    assert_int_equal((int64_t)in * outd, n0);
    const float *a = A->data, *b = Bt->data;
    double worst = 0;
    for (int y = 0; y < outd; y++)
      for (int x = 0; x < in; x++) {
        double d = 0;
        for (int k = 0; k < r; k++)
          d += (double)b[y * r + k] * a[k * in + x];
        double want = w0[(size_t)y * in + x] + 2.0 * d; /* alpha/r = 2 */
        worst = fmax(worst, fabs(want - w1[(size_t)y * in + x]));
      }
    for (int k = 0; k < outd * r; k++)
      nonzero_b += b[k] != 0;
    if (worst > 1e-5) {
      print_error("%s: merged weight off by %.3e\n", name, worst);
      fail();
    }
  }
  /* 6 projections per layer, 2 layers, 2 towers; and training moved B */
  assert_int_equal(adapted, 24);
  assert_true(nonzero_b > 0);
  vlm__st_close(ad);
  vlm__tlayout_free(L);
  vlm_clip_free(base);
  vlm_clip_free(merged);
}

/* `vlmdb train` from a catalog file: flags, outputs, F16 export that the
 * engine loads, training.json contents. */
/* ---- SigLIP and Chinese-CLIP checkpoints ------------------------------ */

/* The trainer's forward with a conformance fixture's weights gives the
 * inference engine's embeddings (vlm_clip), images and texts. */
static void forward_matches_engine(const char *dir) {
  vlm_clip *clip = NULL;
  int rc = vlm_clip_load(dir, NULL, &clip);
  if (rc)
    print_error("%s: %s\n", dir, vlm_errmsg());
  assert_int_equal(rc, 0);
  vlm__clip_config cfg = *vlm__clip_get_config(clip);
  vlm__tlayout *L;
  assert_int_equal(vlm__tlayout_create(&cfg, 0, 0, &L), 0);
  enum { N = 3 };
  const char *texts[N] = {"a photo of a cat", "two dogs on a red sofa, 2024",
                          "x"};
  const char *files[N] = {"rgb.png", "photo_rgb.jpg", "wide.png"};
  int ctx = cfg.context_length, S = cfg.image_size, D = cfg.projection_dim;
  int32_t *ids = malloc(sizeof(int32_t) * N * ctx);
  int off[N], len[N], pos = 0;
  for (int i = 0; i < N; i++) {
    assert_int_equal(vlm_clip_tokenize(clip, texts[i], ids + pos, ctx,
                                       &len[i]), 0);
    off[i] = pos;
    pos += len[i];
  }
  vlm__tmodel_f32 *m;
  assert_int_equal(vlm__tmodel_create_f32(L, NULL, N, pos, 0, &m), 0);
  float *p = vlm__tmodel_params_f32(m);
  for (int i = 0; i < L->nparams; i++) {
    const vlm__tparam *t = &L->params[i];
    int64_t numel = 0;
    const float *src = vlm__clip_tensor(clip, t->name, &numel);
    if (!src || (size_t)numel != t->numel)
      print_error("%s: %s missing or of %lld elements\n", dir, t->name,
                  (long long)numel);
    assert_non_null(src);
    assert_true((size_t)numel == t->numel);
    memcpy(p + t->offset, src, sizeof(float) * t->numel);
  }
  size_t per = (size_t)3 * S * S;
  float *pix = malloc(sizeof(float) * per * N);
  float *a = malloc(sizeof(float) * N * D), *b = malloc(sizeof(float) * N * D);
  for (int i = 0; i < N; i++) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    assert_int_equal(vlm_clip_preprocess_file(clip, path, pix + per * i), 0);
  }
  double worst = 1;
  vlm__tmodel_images_f32(m, pix, N, a);
  assert_int_equal(vlm_clip_encode_pixels(clip, pix, N, 0, b), 0);
  for (int i = 0; i < N; i++)
    worst = fmin(worst, cosine(a + i * D, b + i * D, D));
  vlm__ttexts tx = {N, ids, off, len};
  vlm__tmodel_texts_f32(m, &tx, a);
  assert_int_equal(vlm_clip_encode_texts(clip, texts, N, 0, b), 0);
  for (int i = 0; i < N; i++)
    worst = fmin(worst, cosine(a + i * D, b + i * D, D));
  print_message("%s: trainer forward vs engine, worst cosine %.8f\n",
                vlm_clip_family(clip), worst);
  assert_true(worst >= 0.99999);
  free(ids); free(pix); free(a); free(b);
  vlm__tmodel_free_f32(m);
  vlm__tlayout_free(L);
  vlm_clip_free(clip);
}

static void test_forward_matches_engine_siglip(void **state) {
  (void)state;
  forward_matches_engine("tests/fixtures/siglip-tiny");
}

static void test_forward_matches_engine_chinese_clip(void **state) {
  (void)state;
  forward_matches_engine("tests/fixtures/chinese-clip-tiny");
}

/* train_loss of metrics.csv's first and last rows. */
static void metrics_first_last(const char *dir, double *first, double *last,
                               int *rows) {
  char path[512], line[1024];
  snprintf(path, sizeof path, "%s/metrics.csv", dir);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  *rows = 0;
  long long epoch, step;
  double loss;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "%lld,%lld,%lf", &epoch, &step, &loss) == 3) {
      if (!(*rows)++)
        *first = loss;
      *last = loss;
    }
  fclose(f);
}

static void family_options(vlm_train_options *o, const char *fixture,
                           const char *out) {
  base_options(o, out);
  o->config_path = NULL;
  o->tokenizer_dir = NULL; /* the initial model's */
  o->init_dir = fixture;
  o->lr = 1e-3f;
  o->warmup_steps = 3;
  o->f16 = 0;
}

/* Fine-tuning a family's checkpoint on the synthetic set: the loss falls,
 * the export (with its tokenizer) loads as the same family and gives the
 * embeddings of the trainer's last evaluation, which differ from the
 * initial model's; then LoRA with --save-adapters: PEFT names of the
 * family's modules, merged weights that load. */
static void family_train_case(const char *fixture, const char *family,
                              const char *const *tok_files,
                              const char *adapter_name,
                              const char *target_probe) {
  char out[300], path[512];
  snprintf(out, sizeof out, "%s/%s-ft", S->dir, family);
  vlm_train_options o;
  family_options(&o, fixture, out);
  o.max_steps = 30; /* one step per epoch: one metrics row per step */
  o.val_items = S->items;
  o.n_val = NPAIRS;
  vlm_train_result res;
  int rc = vlm_train_run(&o, &res);
  if (rc)
    print_error("train %s: %s\n", family, vlm_errmsg());
  assert_int_equal(rc, 0);
  double first = 0, last = 0;
  int rows = 0;
  metrics_first_last(out, &first, &last, &rows);
  print_message("%s: loss %.4f -> %.4f over %d steps; R@1 i2t %.3f t2i "
                "%.3f\n",
                family, first, last, rows, res.recall.i2t[0],
                res.recall.t2i[0]);
  assert_int_equal(rows, 30);
  assert_true(last < 0.8 * first);
  for (int i = 0; tok_files[i]; i++) {
    snprintf(path, sizeof path, "%s/%s", out, tok_files[i]);
    assert_true(vlm__train_file_exists(path));
  }
  vlm_clip *trained = NULL, *init = NULL;
  rc = vlm_clip_load(out, NULL, &trained);
  if (rc)
    print_error("load %s: %s\n", out, vlm_errmsg());
  assert_int_equal(rc, 0);
  assert_string_equal(vlm_clip_family(trained), family);
  assert_int_equal(vlm_clip_load(fixture, NULL, &init), 0);
  int D = vlm_clip_dim(trained);
  assert_int_equal(D, res.dim);
  const char *paths[NPAIRS], *texts[NPAIRS];
  for (int i = 0; i < NPAIRS; i++) {
    paths[i] = S->items[res.eval_index[i]].image;
    texts[i] = S->items[res.eval_index[i]].text;
  }
  float *img = malloc(sizeof(float) * NPAIRS * D);
  float *txt = malloc(sizeof(float) * NPAIRS * D);
  float *img0 = malloc(sizeof(float) * NPAIRS * D);
  float *txt0 = malloc(sizeof(float) * NPAIRS * D);
  assert_int_equal(vlm_clip_encode_images(trained, paths, NPAIRS, 0, img), 0);
  assert_int_equal(vlm_clip_encode_texts(trained, texts, NPAIRS, 0, txt), 0);
  assert_int_equal(vlm_clip_encode_images(init, paths, NPAIRS, 0, img0), 0);
  assert_int_equal(vlm_clip_encode_texts(init, texts, NPAIRS, 0, txt0), 0);
  double worst = 1, moved = 1;
  for (int i = 0; i < NPAIRS; i++) {
    worst = fmin(worst, cosine(img + i * D, res.image_emb + i * D, D));
    worst = fmin(worst, cosine(txt + i * D, res.text_emb + i * D, D));
    moved = fmin(moved, cosine(img + i * D, img0 + i * D, D));
    moved = fmin(moved, cosine(txt + i * D, txt0 + i * D, D));
  }
  print_message("%s: export vs trainer worst cosine %.8f; vs the initial "
                "model %.4f\n",
                family, worst, moved);
  assert_true(worst >= 0.99999);
  assert_true(moved < 0.999);
  vlm_clip_free(trained);
  vlm_train_result_free(&res);

  /* LoRA */
  snprintf(out, sizeof out, "%s/%s-lora", S->dir, family);
  family_options(&o, fixture, out);
  o.max_steps = 4;
  o.lora_rank = 2;
  o.save_adapters = 1;
  /* one held-out caption longer than any limit: the trainer cuts it
   * where the engine does (Chinese-CLIP: the tokenizer's
   * model_max_length, below the context) */
  vlm_train_item val[NPAIRS];
  memcpy(val, S->items, sizeof val);
  char long_text[1200] = "";
  for (int i = 0; i < 40; i++)
    strcat(long_text, i % 2 ? "a blue square, " : "a red circle and ");
  val[0].text = long_text;
  o.val_items = val;
  o.n_val = NPAIRS;
  rc = vlm_train_run(&o, &res);
  if (rc)
    print_error("LoRA %s: %s\n", family, vlm_errmsg());
  assert_int_equal(rc, 0);
  snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
  vlm__safetensors *st = NULL;
  assert_int_equal(vlm__st_open(path, &st), 0);
  if (!vlm__st_find(st, adapter_name))
    print_error("%s: no %s\n", path, adapter_name);
  assert_non_null(vlm__st_find(st, adapter_name));
  /* every adapter pairs A and B under the base model's module names */
  int n_a = 0, n_b = 0;
  for (int i = 0; i < st->n_tensors; i++) {
    const char *n = st->tensors[i].name;
    assert_true(!strncmp(n, "base_model.model.", 17));
    n_a += strstr(n, ".lora_A.weight") != NULL;
    n_b += strstr(n, ".lora_B.weight") != NULL;
  }
  assert_true(n_a == n_b && n_a == 6 * 4); /* 6 modules, 2 + 2 layers */
  vlm__st_close(st);
  snprintf(path, sizeof path, "%s/adapter_config.json", out);
  uint8_t *cfg_text = NULL;
  size_t cfg_len = 0;
  assert_int_equal(read_file_all(path, &cfg_text, &cfg_len), 0);
  cfg_text[cfg_len] = '\0';
  if (!strstr((char *)cfg_text, target_probe))
    print_error("%s lacks %s:\n%s\n", path, target_probe, (char *)cfg_text);
  assert_non_null(strstr((char *)cfg_text, target_probe));
  free(cfg_text);
  rc = vlm_clip_load(out, NULL, &trained);
  assert_int_equal(rc, 0);
  for (int i = 0; i < NPAIRS; i++) {
    paths[i] = val[res.eval_index[i]].image;
    texts[i] = val[res.eval_index[i]].text;
  }
  assert_int_equal(vlm_clip_encode_images(trained, paths, NPAIRS, 0, img), 0);
  assert_int_equal(vlm_clip_encode_texts(trained, texts, NPAIRS, 0, txt), 0);
  worst = 1;
  for (int i = 0; i < NPAIRS; i++) {
    worst = fmin(worst, cosine(img + i * D, res.image_emb + i * D, D));
    worst = fmin(worst, cosine(txt + i * D, res.text_emb + i * D, D));
  }
  assert_true(worst >= 0.99999);
  vlm_clip_free(trained);
  vlm_clip_free(init);
  vlm_train_result_free(&res);
  free(img); free(txt); free(img0); free(txt0);
}

static void test_train_siglip(void **state) {
  (void)state;
  static const char *const files[] = {"spiece.model", "tokenizer_config.json",
                                      "special_tokens_map.json",
                                      "preprocessor_config.json", NULL};
  family_train_case(
      "tests/fixtures/siglip-tiny", "siglip", files,
      "base_model.model.text_model.encoder.layers.1.self_attn.q_proj.lora_A."
      "weight",
      "encoder\\\\.layers");
}

static void test_train_chinese_clip(void **state) {
  (void)state;
  static const char *const files[] = {"vocab.txt", "tokenizer_config.json",
                                      "special_tokens_map.json",
                                      "preprocessor_config.json", NULL};
  family_train_case(
      "tests/fixtures/chinese-clip-tiny", "chinese_clip", files,
      "base_model.model.text_model.encoder.layer.1.attention.output.dense."
      "lora_B.weight",
      "\"dense\"");
}

/* A SigLIP run stopped after its first step and resumed ends bit-for-bit
 * where the uninterrupted run does (two compute threads). */
static void test_resume_siglip(void **state) {
  (void)state;
  char a[300], b[300], pa[400], pb[400];
  snprintf(a, sizeof a, "%s/siglip-straight", S->dir);
  snprintf(b, sizeof b, "%s/siglip-resumed", S->dir);
  vlm_train_options o;
  family_options(&o, "tests/fixtures/siglip-tiny", a);
  o.max_steps = 8;
  o.batch = 8; /* three steps per epoch: the run crosses reshuffles */
  o.threads = 2;
  o.checkpoint_every = 3;
  vlm_train_result ra, rb;
  assert_int_equal(vlm_train_run(&o, &ra), 0);
  o.out_dir = b;
  volatile int stop = 1;
  o.stop = &stop;
  assert_int_equal(vlm_train_run(&o, &rb), VLM_EINTR);
  assert_int_equal(rb.steps, 1);
  vlm_train_result_free(&rb);
  stop = 0;
  o.resume = 1;
  o.init_dir = NULL; /* the checkpoint holds everything */
  int rc = vlm_train_run(&o, &rb);
  if (rc)
    print_error("resume: %s\n", vlm_errmsg());
  assert_int_equal(rc, 0);
  assert_int_equal(rb.steps, 8);
  snprintf(pa, sizeof pa, "%s/checkpoint/state.safetensors", a);
  snprintf(pb, sizeof pb, "%s/checkpoint/state.safetensors", b);
  assert_true(same_file(pa, pb));
  snprintf(pa, sizeof pa, "%s/model.safetensors", a);
  snprintf(pb, sizeof pb, "%s/model.safetensors", b);
  assert_true(same_file(pa, pb));
  vlm_train_result_free(&ra);
  vlm_train_result_free(&rb);
}

/* From a config.json of each family: a SiglipModel and a
 * ChineseCLIPModel geometry train from scratch with the family's
 * tokenizer, start from the family's initialization (SigLIP's
 * logit_scale log 10 and logit_bias -10) and export a model of that
 * family. */
static void test_train_families_from_scratch(void **state) {
  (void)state;
  static const char siglip_json[] =
      "{\"model_type\": \"siglip\",\n"
      " \"text_config\": {\"vocab_size\": 4000, \"hidden_size\": 32,\n"
      "   \"intermediate_size\": 64, \"num_hidden_layers\": 1,\n"
      "   \"num_attention_heads\": 2, \"max_position_embeddings\": 16},\n"
      " \"vision_config\": {\"hidden_size\": 32, \"intermediate_size\": 64,\n"
      "   \"num_hidden_layers\": 1, \"num_attention_heads\": 2,\n"
      "   \"image_size\": 16, \"patch_size\": 8}}\n";
  static const char cc_json[] =
      "{\"model_type\": \"chinese_clip\", \"projection_dim\": 24,\n"
      " \"text_config\": {\"vocab_size\": 5361, \"hidden_size\": 32,\n"
      "   \"intermediate_size\": 64, \"num_hidden_layers\": 1,\n"
      "   \"num_attention_heads\": 2, \"max_position_embeddings\": 24},\n"
      " \"vision_config\": {\"hidden_size\": 32, \"intermediate_size\": 64,\n"
      "   \"num_hidden_layers\": 1, \"num_attention_heads\": 2,\n"
      "   \"image_size\": 16, \"patch_size\": 8}}\n";
  /* SigLIP 2 (fixed resolution) is a SiglipModel with Gemma's tokenizer */
  static const struct {
    const char *name, *json, *tok, *tok_file;
  } cases[3] = {
      {"siglip", siglip_json, "tests/fixtures/siglip-tiny", "spiece.model"},
      {"chinese_clip", cc_json, "tests/fixtures/chinese-clip-tiny",
       "vocab.txt"},
      {"siglip", siglip_json, "tests/fixtures/gemma-tiny", "tokenizer.model"}};
  for (int k = 0; k < 3; k++) {
    char cfg[300], out[300];
    snprintf(cfg, sizeof cfg, "%s/%s-config.json", S->dir, cases[k].name);
    snprintf(out, sizeof out, "%s/%s-scratch-%d", S->dir, cases[k].name, k);
    write_text(cfg, cases[k].json);
    vlm_train_options o;
    base_options(&o, out);
    o.config_path = cfg;
    o.tokenizer_dir = cases[k].tok;
    o.max_steps = 1;
    o.lr = 1e-12f; /* the export is the initialization */
    o.warmup_steps = 0;
    o.f16 = 0;
    vlm_train_result res;
    int rc = vlm_train_run(&o, &res);
    if (rc)
      print_error("%s from scratch: %s\n", cases[k].name, vlm_errmsg());
    assert_int_equal(rc, 0);
    assert_true(isfinite(res.loss) && res.loss > 0);
    vlm_train_result_free(&res);
    vlm_clip *clip = NULL;
    rc = vlm_clip_load(out, NULL, &clip);
    if (rc)
      print_error("load %s: %s\n", out, vlm_errmsg());
    assert_int_equal(rc, 0);
    assert_string_equal(vlm_clip_family(clip), cases[k].name);
    char tok[512];
    snprintf(tok, sizeof tok, "%s/%s", out, cases[k].tok_file);
    assert_true(vlm__train_file_exists(tok));
    if (k != 1) {
      assert_int_equal(vlm_clip_dim(clip), 32);
      assert_true(fabs(vlm_clip_logit_scale(clip) - log(10.0)) < 1e-5);
      assert_true(fabs(vlm_clip_logit_bias(clip) + 10) < 1e-5);
    } else {
      assert_int_equal(vlm_clip_dim(clip), 24);
      assert_true(fabs(vlm_clip_logit_scale(clip) - 2.6592) < 1e-5);
    }
    /* the encoders run on the exported tokenizer and weights */
    const char *text = "a red circle";
    float *e = malloc(sizeof(float) * vlm_clip_dim(clip));
    assert_int_equal(vlm_clip_encode_texts(clip, &text, 1, 0, e), 0);
    assert_int_equal(
        vlm_clip_encode_images(clip, (const char *const *)&S->items[0].image,
                               1, 0, e),
        0);
    free(e);
    vlm_clip_free(clip);
  }
}

/* `vlmdb train` on a SigLIP checkpoint with LoRA, stopped by
 * --stop-after and resumed without --init (the tokenizer comes from the
 * output directory). */
static void test_cli_train_siglip(void **state) {
  (void)state;
  char out[300];
  snprintf(out, sizeof out, "%s/cli-siglip", S->dir);
  char *argv[] = {"train", "--catalog", S->catalog, "--out", out, "--init",
                  "tests/fixtures/siglip-tiny", "--lora", "2",
                  "--save-adapters", "--max-steps", "4", "--batch", "8",
                  "--val-fraction", "0.25", "--threads", "2", "--stop-after",
                  "2", "--quiet", NULL};
  int argc = (int)(sizeof argv / sizeof argv[0]) - 1;
  assert_int_equal(cmd_train(argc, argv), 0);
  char *resume_argv[] = {"train", "--catalog", S->catalog, "--out", out,
                         "--resume", "--val-fraction", "0.25", "--threads",
                         "2", "--quiet", NULL};
  assert_int_equal(
      cmd_train((int)(sizeof resume_argv / sizeof resume_argv[0]) - 1,
                resume_argv),
      0);
  char path[512];
  snprintf(path, sizeof path, "%s/training.json", out);
  uint8_t *js;
  size_t n;
  assert_int_equal(read_file_all(path, &js, &n), 0);
  js[n] = 0;
  assert_non_null(strstr((char *)js, "\"steps\": 4"));
  free(js);
  vlm_clip *clip = NULL;
  assert_int_equal(vlm_clip_load(out, NULL, &clip), 0);
  assert_string_equal(vlm_clip_family(clip), "siglip");
  vlm_clip_free(clip);
}

/* What cannot be trained is refused with a clear error. */
static void test_refusals(void **state) {
  (void)state;
  char out[300];
  snprintf(out, sizeof out, "%s/siglip-context", S->dir);
  vlm_train_options o;
  family_options(&o, "tests/fixtures/siglip-tiny", out);
  o.max_steps = 1;
  o.context_length = 80;
  vlm_train_result res;
  assert_int_equal(vlm_train_run(&o, &res), VLM_EUNSUPPORTED);
  assert_non_null(strstr(vlm_errmsg(), "SigLIP"));
  vlm_train_result_free(&res);
  /* a CLIP tokenizer does not tokenize for a SigLIP model */
  snprintf(out, sizeof out, "%s/siglip-tok", S->dir);
  family_options(&o, "tests/fixtures/siglip-tiny", out);
  o.max_steps = 1;
  o.tokenizer_dir = "tests/fixtures/clip-tiny";
  assert_true(vlm_train_run(&o, &res) != 0);
  vlm_train_result_free(&res);
}

static void test_cli_train(void **state) {
  (void)state;
  char out[300], steps[16] = "6";
  snprintf(out, sizeof out, "%s/cli", S->dir);
  char *argv[] = {"train", "--catalog", S->catalog, "--out", out,
                  "--config", S->config, "--tokenizer",
                  "tests/fixtures/clip-tiny", "--max-steps", steps,
                  "--batch", "8", "--val-fraction", "0.25", "--seed", "3",
                  "--threads", "2", "--checkpoint-every", "100", "--quiet", NULL};
  int argc = (int)(sizeof argv / sizeof argv[0]) - 1;
  assert_int_equal(cmd_train(argc, argv), 0);
  static const char *const files[] = {
      "config.json", "model.safetensors", "vocab.json", "merges.txt",
      "preprocessor_config.json", "training.json", "metrics.csv",
      "checkpoint/state.safetensors"};
  char path[512];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", out, files[i]);
    if (access(path, R_OK)) {
      print_error("missing %s\n", path);
      fail();
    }
  }
  vlm_clip *clip = NULL;
  assert_int_equal(vlm_clip_load(out, NULL, &clip), 0);
  assert_int_equal(vlm_clip_dim(clip), 32);
  assert_int_equal(vlm_clip_context_length(clip), 16);
  vlm_clip_free(clip);
  snprintf(path, sizeof path, "%s/training.json", out);
  uint8_t *js;
  size_t n;
  assert_int_equal(read_file_all(path, &js, &n), 0);
  js[n] = 0;
  assert_non_null(strstr((char *)js, "\"steps\": 6"));
  assert_non_null(strstr((char *)js, "\"seed\": 3"));
  assert_non_null(strstr((char *)js, "\"data_digest\": \""));
  assert_non_null(strstr((char *)js, "--max-steps 6"));
  free(js);
  /* A catalog whose rows carry other captions ("texts"): they reach the
   * trainer (the data digest covers them) and the share is recorded. */
  char alt_catalog[300], alt_out[300];
  snprintf(alt_catalog, sizeof alt_catalog, "%s/alt.jsonl", S->dir);
  snprintf(alt_out, sizeof alt_out, "%s/cli-alt", S->dir);
  FILE *f = fopen(alt_catalog, "w");
  assert_non_null(f);
  for (int i = 0; i < NPAIRS; i++)
    fprintf(f, "{\"key\": \"%s\", \"image\": \"%s.png\", \"text\": \"%s\", "
            "\"texts\": {\"de\": \"ein Bild\", \"fr\": [\"une image\"]}}\n",
            S->keys[i], S->keys[i], S->texts[i]);
  fclose(f);
  char *alt_argv[] = {"train", "--catalog", alt_catalog, "--out", alt_out,
                      "--config", S->config, "--tokenizer",
                      "tests/fixtures/clip-tiny", "--max-steps", steps,
                      "--batch", "8", "--val-fraction", "0.25", "--seed", "3",
                      "--threads", "2", "--alt-text-share", "0.75", "--quiet",
                      NULL};
  assert_int_equal(cmd_train((int)(sizeof alt_argv / sizeof alt_argv[0]) - 1,
                             alt_argv),
                   0);
  snprintf(path, sizeof path, "%s/training.json", alt_out);
  uint8_t *alt_js;
  assert_int_equal(read_file_all(path, &alt_js, &n), 0);
  alt_js[n] = 0;
  assert_non_null(strstr((char *)alt_js, "\"alt_text_share\": 0.75"));
  snprintf(path, sizeof path, "%s/training.json", out);
  assert_int_equal(read_file_all(path, &js, &n), 0);
  js[n] = 0;
  const char *d1 = strstr((char *)js, "\"data_digest\": \"");
  const char *d2 = strstr((char *)alt_js, "\"data_digest\": \"");
  assert_non_null(d1);
  assert_non_null(d2);
  assert_true(strncmp(d1, d2, 80) != 0);
  free(js);
  free(alt_js);
  /* Several catalogs, one scaled by --weight, rows with their own
   * "weight" (a bad one skips its row, not the catalog). */
  char mix_catalog[300], mix_out[300];
  snprintf(mix_catalog, sizeof mix_catalog, "%s/mix.jsonl", S->dir);
  snprintf(mix_out, sizeof mix_out, "%s/cli-mix", S->dir);
  f = fopen(mix_catalog, "w");
  assert_non_null(f);
  for (int i = 0; i < NPAIRS; i++)
    fprintf(f, "{\"key\": \"mix/%s\", \"image\": \"%s.png\", \"text\": "
            "\"%s\", \"weight\": %s}\n", S->keys[i], S->keys[i], S->texts[i],
            i == 0 ? "-1" : i == 1 ? "\"heavy\"" : i % 2 ? "0.5" : "3");
  fclose(f);
  char *mix_argv[] = {"train", "--catalog", S->catalog, "--catalog",
                      mix_catalog, "--weight", "2", "--out", mix_out,
                      "--config", S->config, "--tokenizer",
                      "tests/fixtures/clip-tiny", "--max-steps", "2",
                      "--batch", "8", "--val-fraction", "0", "--seed", "3",
                      "--threads", "1", "--quiet", NULL};
  assert_int_equal(cmd_train((int)(sizeof mix_argv / sizeof mix_argv[0]) - 1,
                             mix_argv),
                   0);
  snprintf(path, sizeof path, "%s/training.json", mix_out);
  assert_int_equal(read_file_all(path, &js, &n), 0);
  js[n] = 0;
  char want[64];
  snprintf(want, sizeof want, "\"train_pairs\": %d,", 2 * NPAIRS - 2);
  assert_non_null(strstr((char *)js, want));
  assert_non_null(strstr((char *)js, "--weight 2"));
  free(js);
  /* Text pairs from two files, one scaled by --weight; bad rows are
   * skipped and counted, the rest recorded in training.json. */
  char tp1[300], tp2[300], tp_out[300];
  snprintf(tp1, sizeof tp1, "%s/pairs1.jsonl", S->dir);
  snprintf(tp2, sizeof tp2, "%s/pairs2.jsonl", S->dir);
  snprintf(tp_out, sizeof tp_out, "%s/cli-pairs", S->dir);
  f = fopen(tp1, "w");
  assert_non_null(f);
  fputs("{\"a\": \"crimson\", \"b\": \"red\"}\n"
        "\n"
        "{\"a\": \"azure\", \"b\": \"blue\", \"weight\": 2}\n"
        "not json\n"
        "{\"a\": \"azure\"}\n"
        "[\"a\", \"b\"]\n"
        "{\"a\": \"x\", \"b\": \"y\", \"weight\": 0}\n"
        "{\"a\": \"x\", \"b\": \"y\", \"weight\": \"heavy\"}\n"
        "{\"a\": \"ebony\", \"b\": \"black\"}\n", f);
  fclose(f);
  f = fopen(tp2, "w");
  assert_non_null(f);
  fputs("{\"a\": \"ein roter Kreis\", \"b\": \"a red circle\"}\n"
        "{\"a\": \"\u7ea2\u8272\u7684\u5706\", \"b\": \"a red circle\"}\n", f);
  fclose(f);
  char *tp_argv[] = {"train", "--catalog", S->catalog, "--text-pairs", tp1,
                     "--text-pairs", tp2, "--weight", "3", "--text-batch",
                     "3", "--text-weight", "0.5", "--text-rounds", "2",
                     "--out", tp_out,
                     "--config", S->config, "--tokenizer",
                     "tests/fixtures/clip-tiny", "--max-steps", "3",
                     "--batch", "8", "--val-fraction", "0", "--seed", "3",
                     "--threads", "1", "--quiet", NULL};
  assert_int_equal(cmd_train((int)(sizeof tp_argv / sizeof tp_argv[0]) - 1,
                             tp_argv),
                   0);
  snprintf(path, sizeof path, "%s/training.json", tp_out);
  assert_int_equal(read_file_all(path, &js, &n), 0);
  js[n] = 0;
  assert_non_null(strstr((char *)js, "\"text_pairs\": 5,"));
  assert_non_null(strstr((char *)js, "\"text_batch\": 3"));
  assert_non_null(strstr((char *)js, "\"text_weight\": 0.5"));
  assert_non_null(strstr((char *)js, "\"text_rounds\": 2"));
  assert_non_null(strstr((char *)js, "\"text_digest\": \""));
  assert_non_null(strstr((char *)js, "\"text_loss\": "));
  free(js);
  /* a file with no usable row, a missing file, too many pairs per step */
  char *none_argv[] = {"train", "--catalog", S->catalog, "--text-pairs",
                       mix_catalog, "--out", tp_out, "--config", S->config,
                       "--quiet", NULL};
  assert_int_equal(cmd_train(10, none_argv), 1);
  char *missing_argv[] = {"train", "--catalog", S->catalog, "--text-pairs",
                          "/nonexistent/pairs.jsonl", "--out", tp_out,
                          "--config", S->config, "--quiet", NULL};
  assert_int_equal(cmd_train(10, missing_argv), 1);
  /* bad flags are usage errors */
  char *bad[] = {"train", "--catalog", S->catalog, NULL};
  assert_int_equal(cmd_train(3, bad), 2);
  char *early[] = {"train", "--weight", "2", "--catalog", S->catalog,
                   "--out", mix_out, NULL};
  assert_int_equal(cmd_train(7, early), 2);
  char *zero[] = {"train", "--catalog", S->catalog, "--weight", "0",
                  "--out", mix_out, NULL};
  assert_int_equal(cmd_train(7, zero), 2);
}

int main(void) {
  const struct CMUnitTest grads[] = {
      cmocka_unit_test(test_grad_linear),
      cmocka_unit_test(test_grad_layernorm),
      cmocka_unit_test(test_grad_attention),
      cmocka_unit_test(test_grad_attention_causal),
      cmocka_unit_test(test_grad_gelu),
      cmocka_unit_test(test_grad_quick_gelu),
      cmocka_unit_test(test_grad_gelu_tanh),
      cmocka_unit_test(test_grad_patch_embed),
      cmocka_unit_test(test_grad_vision_embed),
      cmocka_unit_test(test_grad_text_embed),
      cmocka_unit_test(test_grad_l2norm),
      cmocka_unit_test(test_grad_clip_loss),
      cmocka_unit_test(test_grad_add_row),
      cmocka_unit_test(test_grad_vision_embed_no_class),
      cmocka_unit_test(test_grad_map_attention),
      cmocka_unit_test(test_grad_siglip_loss),
      cmocka_unit_test(test_float_matches_double),
      cmocka_unit_test(test_grad_model_quick_gelu),
      cmocka_unit_test(test_grad_model_gelu),
      cmocka_unit_test(test_grad_model_lora),
      cmocka_unit_test(test_grad_model_siglip),
      cmocka_unit_test(test_grad_model_siglip_lora),
      cmocka_unit_test(test_grad_model_chinese_clip),
      cmocka_unit_test(test_grad_model_chinese_clip_lora),
      cmocka_unit_test(test_grad_text_pairs),
      cmocka_unit_test(test_f16_matches_compiler),
  };
  const struct CMUnitTest training[] = {
      cmocka_unit_test(test_train_learns_and_round_trips),
      cmocka_unit_test(test_resume_is_bit_exact),
      cmocka_unit_test(test_loader_matches_direct_build),
      cmocka_unit_test(test_alt_texts),
      cmocka_unit_test(test_item_weights),
      cmocka_unit_test(test_item_silhouette),
      cmocka_unit_test(test_text_pairs_teach_synonyms),
      cmocka_unit_test(test_text_pairs_resume),
      cmocka_unit_test(test_lora_exports_merged_weights),
      cmocka_unit_test(test_context_growth),
      cmocka_unit_test(test_trainer_reads_configs_as_the_engine),
      cmocka_unit_test(test_cli_train),
      cmocka_unit_test(test_forward_matches_engine_siglip),
      cmocka_unit_test(test_forward_matches_engine_chinese_clip),
      cmocka_unit_test(test_train_siglip),
      cmocka_unit_test(test_train_chinese_clip),
      cmocka_unit_test(test_resume_siglip),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_train_families_from_scratch),
      cmocka_unit_test(test_cli_train_siglip),
  };
  if (getenv("VLM_TEST_FILTER")) /* one test while working on it */
    cmocka_set_test_filter(getenv("VLM_TEST_FILTER"));
  int failed = cmocka_run_group_tests_name("gradients", grads, NULL, NULL);
  failed += cmocka_run_group_tests_name("training", training, synth_setup,
                                        synth_teardown);
  return failed;
}
