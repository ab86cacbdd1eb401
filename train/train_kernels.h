/* train_kernels.h - forward (with cache) and backward kernels of CLIP
 * training, and the thread pool they run on (internal to embed/).
 *
 * Every op comes in two precisions compiled from one source
 * (train_kernels_tmpl.h): the _f32 kernels train, the _f64 kernels are the
 * same code in double precision, used by the gradient checks.  Kernels are
 * plain loops or BLAS calls in the llm.c style:
 *   op_forward(out, inp, weights..., dims)      writes out (and any cache)
 *   op_backward(dinp, dweights..., dout, cache, dims)
 * Unless a comment says otherwise, backward kernels ADD into weight
 * gradients (so a step accumulates), and gradient pointers may be NULL
 * when that gradient is not wanted (frozen weights).
 *
 * Work is split into contiguous static chunks over the pool's threads,
 * and reductions never depend on timing: results are a pure function of
 * the inputs and the pool's thread count.
 */
#ifndef VLM_TRAIN_KERNELS_H
#define VLM_TRAIN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---- thread pool ---------------------------------------------------- */

typedef struct vlm__tpool vlm__tpool;

/* n threads in all (the caller counts as one); n <= 1 runs inline. */
int vlm__tpool_create(int n, vlm__tpool **out);
void vlm__tpool_free(vlm__tpool *pool); /* accepts NULL */
int vlm__tpool_threads(const vlm__tpool *pool);  /* 1 for NULL */

/* Call fn(ctx, begin, end, thread) on the chunks of [0, n) that the
 * pool's threads each own (chunk t = [n*t/T, n*(t+1)/T)), and return when
 * all are done.  Not reentrant: fn must not call vlm__tpool_for. */
typedef void (*vlm__tpool_fn)(void *ctx, int64_t begin, int64_t end,
                              int thread);
void vlm__tpool_for(vlm__tpool *pool, int64_t n, vlm__tpool_fn fn, void *ctx);

/* ---- kernels, once per precision ----------------------------------- */

/* Sequences of variable length packed as rows of one [N, ...] tensor:
 * sequence s holds rows [off[s], off[s] + len[s]); its attention
 * probabilities, H x len x len, start at prob_off[s] of the cache. */
typedef struct {
  int n;                 /* number of sequences */
  const int *off, *len;
  const int64_t *prob_off;
  int max_len;
} vlm__tk_seqs;

#define VLM__TK_DECLARE(real, SFX)                                            \
  /* C[M,N] = alpha * op(A) op(B) + beta * C, row-major, split over rows  \
   * (or columns when M is small) across the pool. */                      \
  void vlm__tk_gemm_##SFX(vlm__tpool *pool, int transA, int transB, int M,   \
                          int N, int K, real alpha, const real *A, int lda,  \
                          const real *B, int ldb, real beta, real *C,        \
                          int ldc);                                          \
  /* out[N,OC] = inp[N,C] . w[OC,C]^T + b[OC]   (b may be NULL) */           \
  void vlm__tk_linear_forward_##SFX(vlm__tpool *pool, real *out,             \
                                    const real *inp, const real *w,          \
                                    const real *b, int N, int C, int OC);    \
  /* dinp[N,C] (= or +=, see accumulate) dout . w; dw[OC,C] += dout^T inp;  \
   * db[OC] += column sums of dout[N,OC]. */                                 \
  void vlm__tk_linear_backward_##SFX(                                        \
      vlm__tpool *pool, real *dinp, int accumulate, real *dw, real *db,      \
      const real *dout, const real *inp, const real *w, int N, int C,        \
      int OC);                                                               \
  /* out[N,C] = (inp - mean) * rstd * w + b per row; mean, rstd [N] */       \
  void vlm__tk_layernorm_forward_##SFX(vlm__tpool *pool, real *out,          \
                                       real *mean, real *rstd,               \
                                       const real *inp, const real *w,       \
                                       const real *b, int N, int C,          \
                                       real eps);                            \
  /* dinp[N,C] += ...; dw[C], db[C] += ... */                               \
  void vlm__tk_layernorm_backward_##SFX(                                     \
      vlm__tpool *pool, real *dinp, real *dw, real *db, const real *dout,    \
      const real *inp, const real *w, const real *mean, const real *rstd,    \
      int N, int C);                                                         \
  /* qkv[N,3C] (q | k | v per row, heads of C/H columns each) ->           \
   * out[N,C]; probs: the cache (see vlm__tk_seqs).  causal: row i of a    \
   * sequence attends to rows <= i only. */                                 \
  void vlm__tk_attention_forward_##SFX(vlm__tpool *pool, real *out,          \
                                       real *probs, const real *qkv,         \
                                       const vlm__tk_seqs *seqs, int C,      \
                                       int H, int causal);                   \
  /* dqkv[N,3C] = (overwritten); dprobs: scratch the size of probs. */       \
  void vlm__tk_attention_backward_##SFX(                                     \
      vlm__tpool *pool, real *dqkv, real *dprobs, const real *dout,          \
      const real *qkv, const real *probs, const vlm__tk_seqs *seqs, int C,   \
      int H);                                                                \
  /* out[n] = act(inp[n]), act a vlm__act: 0 gelu (erf form), 1          \
   * quick_gelu x * sigmoid(1.702x), 2 gelu_pytorch_tanh                   \
   * 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))) */                         \
  void vlm__tk_act_forward_##SFX(vlm__tpool *pool, real *out,                \
                                 const real *inp, int64_t n, int act);       \
  /* dinp[n] = dout[n] * act'(inp[n])   (overwritten) */                     \
  void vlm__tk_act_backward_##SFX(vlm__tpool *pool, real *dinp,              \
                                  const real *inp, const real *dout,         \
                                  int64_t n, int act);                       \
  /* out[n] = a[n] + b[n] */                                                 \
  void vlm__tk_add_##SFX(vlm__tpool *pool, real *out, const real *a,         \
                         const real *b, int64_t n);                          \
  /* Patch embedding (a stride-P convolution without bias) as im2col +    \
   * gemm: pixels[B,3,S,S] -> patches[B*np, 3*P*P] (the cache) ->         \
   * out[B*np, C] with w[C, 3*P*P] (= conv weight [C,3,P,P]); np =        \
   * (S/P)^2, patches in row-major order. */                                \
  void vlm__tk_patch_embed_forward_##SFX(vlm__tpool *pool, real *out,        \
                                         real *patches, const real *pixels,  \
                                         const real *w, int B, int S, int P, \
                                         int C);                             \
  /* dw[C, 3*P*P] += dout^T patches   (pixels get no gradient) */            \
  void vlm__tk_patch_embed_backward_##SFX(vlm__tpool *pool, real *dw,        \
                                          const real *dout,                  \
                                          const real *patches, int B, int S, \
                                          int P, int C);                     \
  /* out[B,T,C]: row 0 = cls[C] + pos[0], row 1+p = patch[B,T-1,C] + pos; \
   * cls NULL (SigLIP): no class token, row p = patch[B,T,C] + pos[p] */    \
  void vlm__tk_vision_embed_forward_##SFX(vlm__tpool *pool, real *out,       \
                                          const real *patch, const real *cls, \
                                          const real *pos, int B, int T,     \
                                          int C);                            \
  /* dpatch[B,T-has_cls,C] = (overwritten); dcls[C], dpos[T,C] += */       \
  void vlm__tk_vision_embed_backward_##SFX(vlm__tpool *pool, real *dpatch,   \
                                           real *dcls, real *dpos,           \
                                           const real *dout, int B, int T,   \
                                           int C, int has_cls);              \
  /* out[N,C] = tok[ids[n]] + pos[posn[n]] */                                \
  void vlm__tk_text_embed_forward_##SFX(vlm__tpool *pool, real *out,         \
                                        const int32_t *ids,                  \
                                        const int32_t *posn, const real *tok, \
                                        const real *pos, int N, int C);      \
  /* dtok[V,C], dpos[ctx,C] += scattered rows of dout[N,C] */                \
  void vlm__tk_text_embed_backward_##SFX(vlm__tpool *pool, real *dtok,       \
                                         real *dpos, const real *dout,       \
                                         const int32_t *ids,                 \
                                         const int32_t *posn, int N, int C); \
  /* out[B,C] = inp[idx[b], :] */                                            \
  void vlm__tk_gather_rows_##SFX(real *out, const real *inp, const int *idx, \
                                 int B, int C);                              \
  /* dinp[idx[b], :] += dout[b, :]   (idx distinct) */                       \
  void vlm__tk_scatter_rows_##SFX(real *dinp, const real *dout,              \
                                  const int *idx, int B, int C);             \
  /* out[B,D] = inp / |inp| per row; norm[B] the cache */                    \
  void vlm__tk_l2norm_forward_##SFX(real *out, real *norm, const real *inp,  \
                                    int B, int D);                           \
  /* dinp[B,D] = (dout - out (out . dout)) / norm   (overwritten) */         \
  void vlm__tk_l2norm_backward_##SFX(real *dinp, const real *dout,           \
                                     const real *out, const real *norm,      \
                                     int B, int D);                          \
  /* CLIP's symmetric loss: logits[B,B] = exp(scale) img[B,D] txt[B,D]^T; \
   * loss = (CE over rows + CE over columns) / 2, the matching pair on    \
   * the diagonal.  probs_row, probs_col [B,B]: the cache.  Returns the   \
   * loss. */                                                                \
  real vlm__tk_clip_loss_forward_##SFX(real *probs_row, real *probs_col,     \
                                       const real *img, const real *txt,     \
                                       real logit_scale, int B, int D);      \
  /* dimg[B,D], dtxt[B,D] = (overwritten); *dscale += */                     \
  void vlm__tk_clip_loss_backward_##SFX(real *dimg, real *dtxt, real *dscale, \
                                        const real *probs_row,               \
                                        const real *probs_col,               \
                                        const real *img, const real *txt,    \
                                        real logit_scale, int B, int D);     \
  /* out[N,C] += row[C] on every row (a bias; BERT's token type 0) */        \
  void vlm__tk_add_row_forward_##SFX(vlm__tpool *pool, real *out,            \
                                     const real *row, int N, int C);         \
  /* drow[C] += column sums of dout[N,C] */                                  \
  void vlm__tk_add_row_backward_##SFX(vlm__tpool *pool, real *drow,          \
                                      const real *dout, int N, int C);       \
  /* SigLIP's attention pooling: one query q[C] (the probe's projection)   \
   * against the T rows of each of B images, kv[B*T, 2C] (k | v per row,  \
   * heads of C/H columns); out[B,C] = softmax(q.k^T / sqrt(C/H)) v per    \
   * head; probs[B,H,T] the cache. */                                        \
  void vlm__tk_map_attention_forward_##SFX(vlm__tpool *pool, real *out,      \
                                           real *probs, const real *q,       \
                                           const real *kv, int B, int T,     \
                                           int C, int H);                    \
  /* dq[C], dkv[B*T,2C] = (overwritten) */                                   \
  void vlm__tk_map_attention_backward_##SFX(                                 \
      vlm__tpool *pool, real *dq, real *dkv, const real *dout,               \
      const real *q, const real *kv, const real *probs, int B, int T, int C, \
      int H);                                                                \
  /* SigLIP's sigmoid loss as Hugging Face's SiglipModel has it:           \
   * logits[B,B] = exp(scale) img[B,D] txt[B,D]^T + bias (kept as the      \
   * cache); loss = -sum_ij log sigmoid(z_ij logits_ij) / B, z = +1 on    \
   * the diagonal and -1 elsewhere. */                                       \
  real vlm__tk_siglip_loss_forward_##SFX(real *logits, const real *img,      \
                                         const real *txt, real logit_scale,  \
                                         real logit_bias, int B, int D);     \
  /* dimg[B,D], dtxt[B,D] = (overwritten); *dscale, *dbias += (either may  \
   * be NULL) */                                                             \
  void vlm__tk_siglip_loss_backward_##SFX(                                   \
      real *dimg, real *dtxt, real *dscale, real *dbias, const real *logits, \
      const real *img, const real *txt, real logit_scale, int B, int D);

VLM__TK_DECLARE(float, f32)
VLM__TK_DECLARE(double, f64)

#endif
