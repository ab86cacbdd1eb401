/* train_model.h - the trainable model: parameter layout under Hugging Face
 * names, and forward/backward of the whole model (internal to train/).
 *
 * Three families (model.h): CLIP; SigLIP (no class token or pre-LN, patch
 * bias, the attention-pooling head, a text tower without mask pooled at
 * its last position through text_model.head, the sigmoid loss with
 * logit_bias); Chinese-CLIP (CLIP's vision tower, a BERT text tower:
 * token-type embeddings, embedding LayerNorm, post-LN blocks, [CLS]
 * pooled).
 *
 * All base parameters live in one array of `total` elements; each tensor
 * has a name, shape and offset in the layout's table (llm.c style).  The
 * q, k and v projections of a layer are adjacent, so together they are
 * one [3C, C] matrix (and one [3C] bias).  LoRA adapters, when enabled,
 * live in a second array with their own table.
 *
 * The model is compiled for float (training) and double (gradient
 * checks) from train_model_tmpl.h; both share one layout.
 */
#ifndef VLM_TRAIN_MODEL_H
#define VLM_TRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "train_kernels.h"

typedef struct {
  char name[112];   /* Hugging Face name */
  int ndim;         /* 0 for the scalar logit_scale */
  int64_t shape[4];
  size_t offset, numel;
  int decay;        /* AdamW weight decay applies (matrices, not norms,
                       biases, embeddings or logit_scale) */
} vlm__tparam;

enum { VLM__LORA_Q, VLM__LORA_K, VLM__LORA_V, VLM__LORA_O, VLM__LORA_FC1,
       VLM__LORA_FC2, VLM__LORA_N };

/* One block.  Pre-LN (CLIP, SigLIP): ln1 before the attention, ln2
 * before the MLP.  Post-LN (BERT): ln1 = attention.output.LayerNorm after
 * the attention's residual, ln2 = output.LayerNorm after the MLP's.
 * SigLIP's head is one too: qkv = its in_proj, o = out_proj, ln2 = its
 * layernorm, the MLP; ln1 unused. */
typedef struct {
  size_t ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b;
  size_t fc1_w, fc1_b, fc2_w, fc2_b;
  size_t lora_a[VLM__LORA_N], lora_b[VLM__LORA_N]; /* into the lora array */
} vlm__tlayer;

/* PEFT module name (under the layer) of LoRA target w of a tower:
 * CLIP/SigLIP "self_attn.q_proj" ... "mlp.fc2", BERT
 * "attention.self.query" ... "output.dense". */
const char *vlm__tlora_module(int bert, int w);

typedef struct {
  vlm__clip_config cfg;
  int vision_cls;     /* a class token (CLIP, Chinese-CLIP) */
  int vision_tokens;  /* (image_size / patch_size)^2 + vision_cls */
  int text_bert;      /* Chinese-CLIP's BERT text tower */
  /* base parameters; offsets of tensors the family lacks are 0 and
   * unused */
  vlm__tparam *params;
  int nparams;
  size_t total;
  size_t patch_w, patch_b, cls, vpos, pre_ln_w, pre_ln_b, post_ln_w,
      post_ln_b, vproj;
  size_t probe;       /* SigLIP's head: the probe, and the block vhead */
  vlm__tlayer vhead;
  size_t tok, tpos, type_emb, emb_ln_w, emb_ln_b, final_ln_w, final_ln_b;
  size_t tproj, tproj_b, logit_scale, logit_bias;
  vlm__tlayer *vlayers, *tlayers;
  /* LoRA (rank 0 = none) */
  int lora_rank;
  float lora_alpha, lora_scale; /* scale = alpha / rank */
  vlm__tparam *lora;
  int nlora;
  size_t lora_total;
} vlm__tlayout;

/* Check the geometry (divisibility, positive sizes) and build the table. */
int vlm__tlayout_create(const vlm__clip_config *cfg, int lora_rank,
                        float lora_alpha, vlm__tlayout **out);
void vlm__tlayout_free(vlm__tlayout *layout); /* accepts NULL */
/* The parameter named name (base table), or NULL. */
const vlm__tparam *vlm__tlayout_find(const vlm__tlayout *layout,
                                     const char *name);

/* Floating-point operations of one training step (forward + backward)
 * over B pairs with text_tokens tokens in all; matmuls only. */
double vlm__tmodel_step_flops(const vlm__tlayout *layout, int B,
                              int64_t text_tokens);

/* AdamW as PyTorch has it: w *= 1 - lr * weight_decay where decay[i],
 * then w -= lr * mhat / (sqrt(vhat) + eps), with the gradient scaled by
 * grad_scale (clipping) and bias corrections for step (1-based). */
typedef struct {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  int64_t step;
} vlm__tadamw;

void vlm__tadamw_update(vlm__tpool *pool, const vlm__tadamw *h, float *w,
                        const float *g, float *m, float *v,
                        const uint8_t *decay, size_t n);
/* Sum of squares of g[n], in double; deterministic for a given pool. */
double vlm__tgrad_sumsq(vlm__tpool *pool, const float *g, size_t n);

/* A batch of texts: ids of sequence b at ids[off[b] .. off[b]+len[b]),
 * as the family's tokenizer gives them: CLIP's bos first and eos last
 * (pooled at the last position), SigLIP's padded to context_length
 * (pooled at the last position), BERT's [CLS] first (pooled there). */
typedef struct {
  int n;
  const int32_t *ids;
  const int *off, *len;
} vlm__ttexts;

#define VLM__TM_DECLARE(real, SFX)                                            \
  typedef struct vlm__tmodel_##SFX vlm__tmodel_##SFX;                        \
  /* Activations for up to max_batch pairs and max_text_tokens tokens.     \
   * with_grads = 0: no gradient arrays (evaluation only).  The model     \
   * borrows layout and pool, which must outlive it. */                    \
  int vlm__tmodel_create_##SFX(const vlm__tlayout *layout, vlm__tpool *pool, \
                               int max_batch, int64_t max_text_tokens,       \
                               int with_grads, vlm__tmodel_##SFX **out);     \
  void vlm__tmodel_free_##SFX(vlm__tmodel_##SFX *m);                         \
  /* The parameter and gradient arrays (layout->total and ->lora_total    \
   * elements; grads NULL without with_grads; lora NULL without LoRA). */  \
  real *vlm__tmodel_params_##SFX(vlm__tmodel_##SFX *m);                      \
  real *vlm__tmodel_grads_##SFX(vlm__tmodel_##SFX *m);                       \
  real *vlm__tmodel_lora_##SFX(vlm__tmodel_##SFX *m);                        \
  real *vlm__tmodel_lora_grads_##SFX(vlm__tmodel_##SFX *m);                  \
  /* Freeze the base weights (gradients only for LoRA); default with LoRA. */\
  void vlm__tmodel_freeze_base_##SFX(vlm__tmodel_##SFX *m, int frozen);      \
  /* Encode B images, pixels[B,3,S,S] -> emb[B,D], L2-normalized (emb may  \
   * be NULL: the result stays in the model for the loss). */               \
  void vlm__tmodel_images_##SFX(vlm__tmodel_##SFX *m, const real *pixels,    \
                                int B, real *emb);                           \
  void vlm__tmodel_texts_##SFX(vlm__tmodel_##SFX *m, const vlm__ttexts *t,   \
                               real *emb);                                   \
  /* Unnormalized projection outputs of the last images/texts call [B,D]. */ \
  const real *vlm__tmodel_image_proj_##SFX(const vlm__tmodel_##SFX *m);      \
  const real *vlm__tmodel_text_proj_##SFX(const vlm__tmodel_##SFX *m);       \
  /* The family's loss of the last images + texts calls (same B): CLIP's  \
   * contrastive loss, or SigLIP's sigmoid loss. */                         \
  real vlm__tmodel_loss_##SFX(vlm__tmodel_##SFX *m);                         \
  /* Add the gradients of the last loss to the gradient arrays (zero them  \
   * first with vlm__tmodel_zero_grads). */                                 \
  void vlm__tmodel_backward_##SFX(vlm__tmodel_##SFX *m);                     \
  /* Texts alone: after a texts call of 2P texts, the first P anchors a_i \
   * and the last P their paraphrases b_i (P <= max_batch / 2), CLIP's    \
   * symmetric contrastive loss between the two halves (whatever the      \
   * family), in-batch negatives, at exp(logit_scale), which this loss    \
   * does not train.  backward adds weight x its gradients (text tower    \
   * only). */                                                             \
  real vlm__tmodel_text_pair_loss_##SFX(vlm__tmodel_##SFX *m);              \
  void vlm__tmodel_text_pair_backward_##SFX(vlm__tmodel_##SFX *m,           \
                                            real weight);                   \
  void vlm__tmodel_zero_grads_##SFX(vlm__tmodel_##SFX *m);                  \
  /* Explanation (Grad-CAM on the token grid), after an images call of B  \
   * images, with the score s = sum_b <emb_b, q> for a normalized text     \
   * vector q[D]: the input of the vision tower's last block [B*T, C]      \
   * (normed = 0) or its first LayerNorm's output (normed = 1; the class   \
   * token first for CLIP; borrowed, valid until the next call), and the   \
   * gradients of s with respect to both into grad and grad_normed [B*T,  \
   * C] (either may be NULL; no weight gradient is touched; the model      \
   * needs with_grads).  The vision tower must have a layer. */             \
  const real *vlm__tmodel_image_block_input_##SFX(                           \
      const vlm__tmodel_##SFX *m, int normed);                               \
  void vlm__tmodel_image_block_grad_##SFX(vlm__tmodel_##SFX *m,              \
                                          const real *q, real *grad,         \
                                          real *grad_normed);                \
  /* s recomputed with tokens[B*T, C] as the last block's input (normed =  \
   * 0) or its first norm's output (normed = 1), for the finite-difference \
   * checks; overwrites the activations. */                                 \
  real vlm__tmodel_image_score_from_block_##SFX(                             \
      vlm__tmodel_##SFX *m, const real *tokens, int normed, const real *q);   \
  /* Gradient x attention relevance (Chefer et al., ICCV 2021) of the     \
   * class token to every token, rel[B*T], after an images call, for the  \
   * score against q[D].  -1: the tower has no class token (SigLIP) or is  \
   * post-LN; -2: out of memory. */                                         \
  int vlm__tmodel_image_relevance_##SFX(vlm__tmodel_##SFX *m, const real *q, \
                                        real *rel);                          \
  /* After an images call of B images: the gradient of s (as above) with   \
   * respect to the patch convolution's output (before its bias, the      \
   * positions, the class token and the pre-norm), grad[B*np, C], and that \
   * output itself, conv[B*np, C] (either may be NULL).  Integrated        \
   * gradients walk the pixels from zero (the normalized mean colour), on  \
   * which the convolution is linear, so these two give a patch's share.  \
   * Touches no weight gradient; the model needs with_grads. */            \
  void vlm__tmodel_image_patch_grad_##SFX(vlm__tmodel_##SFX *m,              \
                                          const real *q, real *grad,         \
                                          real *conv);

VLM__TM_DECLARE(float, f32)
VLM__TM_DECLARE(double, f64)

#endif
