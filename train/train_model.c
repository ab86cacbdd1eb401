/* train_model.c - parameter layout of the trainable model (CLIP, SigLIP,
 * Chinese-CLIP), and the model compiled for float and double from
 * train_model_tmpl.h. */
#include "train_model.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm_error.h"

/* ---- layout --------------------------------------------------------- */

typedef struct {
  vlm__tparam *t;
  int n, cap;
  size_t total;
  int fail;
} table;

/* Append a tensor; align = 0 keeps it adjacent to the previous one (the
 * k and v projections follow q to form one [3C, C] matrix). */
static size_t add(table *tb, int align, int decay, int ndim, int64_t d0,
                  int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));

static size_t add(table *tb, int align, int decay, int ndim, int64_t d0,
                  int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...) {
  if (tb->n == tb->cap) {
    int cap = tb->cap ? tb->cap * 2 : 64;
    vlm__tparam *t = realloc(tb->t, sizeof *t * cap);
    if (!t) {
      tb->fail = 1;
      return 0;
    }
    tb->t = t;
    tb->cap = cap;
  }
  if (align)
    tb->total = (tb->total + 15) & ~(size_t)15; /* 64-byte floats */
  vlm__tparam *p = &tb->t[tb->n++];
  memset(p, 0, sizeof *p);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->name, sizeof p->name, fmt, ap);
  va_end(ap);
  int64_t dims[4] = {d0, d1, d2, d3};
  p->ndim = ndim;
  p->numel = 1;
  for (int i = 0; i < ndim; i++) {
    p->shape[i] = dims[i];
    p->numel *= (size_t)dims[i];
  }
  p->decay = decay;
  p->offset = tb->total;
  tb->total += p->numel;
  return p->offset;
}

static void add_layers(table *tb, const char *tower, int layers, int C, int M,
                       vlm__tlayer *out) {
  for (int l = 0; l < layers; l++) {
    vlm__tlayer *o = &out[l];
    const char *pre = tower;
    o->ln1_w = add(tb, 1, 0, 1, C, 0, 0, 0,
                   "%s.encoder.layers.%d.layer_norm1.weight", pre, l);
    o->ln1_b = add(tb, 1, 0, 1, C, 0, 0, 0,
                   "%s.encoder.layers.%d.layer_norm1.bias", pre, l);
    o->qkv_w = add(tb, 1, 1, 2, C, C, 0, 0,
                   "%s.encoder.layers.%d.self_attn.q_proj.weight", pre, l);
    add(tb, 0, 1, 2, C, C, 0, 0, "%s.encoder.layers.%d.self_attn.k_proj.weight",
        pre, l);
    add(tb, 0, 1, 2, C, C, 0, 0, "%s.encoder.layers.%d.self_attn.v_proj.weight",
        pre, l);
    o->qkv_b = add(tb, 1, 0, 1, C, 0, 0, 0,
                   "%s.encoder.layers.%d.self_attn.q_proj.bias", pre, l);
    add(tb, 0, 0, 1, C, 0, 0, 0, "%s.encoder.layers.%d.self_attn.k_proj.bias",
        pre, l);
    add(tb, 0, 0, 1, C, 0, 0, 0, "%s.encoder.layers.%d.self_attn.v_proj.bias",
        pre, l);
    o->o_w = add(tb, 1, 1, 2, C, C, 0, 0,
                 "%s.encoder.layers.%d.self_attn.out_proj.weight", pre, l);
    o->o_b = add(tb, 1, 0, 1, C, 0, 0, 0,
                 "%s.encoder.layers.%d.self_attn.out_proj.bias", pre, l);
    o->ln2_w = add(tb, 1, 0, 1, C, 0, 0, 0,
                   "%s.encoder.layers.%d.layer_norm2.weight", pre, l);
    o->ln2_b = add(tb, 1, 0, 1, C, 0, 0, 0,
                   "%s.encoder.layers.%d.layer_norm2.bias", pre, l);
    o->fc1_w = add(tb, 1, 1, 2, M, C, 0, 0,
                   "%s.encoder.layers.%d.mlp.fc1.weight", pre, l);
    o->fc1_b = add(tb, 1, 0, 1, M, 0, 0, 0, "%s.encoder.layers.%d.mlp.fc1.bias",
                   pre, l);
    o->fc2_w = add(tb, 1, 1, 2, C, M, 0, 0,
                   "%s.encoder.layers.%d.mlp.fc2.weight", pre, l);
    o->fc2_b = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.encoder.layers.%d.mlp.fc2.bias",
                   pre, l);
  }
}

/* BertLayer's names (Chinese-CLIP's text tower): query, key and value
 * adjacent as for CLIP. */
static void add_bert_layers(table *tb, int layers, int C, int M,
                            vlm__tlayer *out) {
  const char *pre = "text_model.encoder.layer";
  for (int l = 0; l < layers; l++) {
    vlm__tlayer *o = &out[l];
    o->qkv_w = add(tb, 1, 1, 2, C, C, 0, 0,
                   "%s.%d.attention.self.query.weight", pre, l);
    add(tb, 0, 1, 2, C, C, 0, 0, "%s.%d.attention.self.key.weight", pre, l);
    add(tb, 0, 1, 2, C, C, 0, 0, "%s.%d.attention.self.value.weight", pre, l);
    o->qkv_b = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.%d.attention.self.query.bias",
                   pre, l);
    add(tb, 0, 0, 1, C, 0, 0, 0, "%s.%d.attention.self.key.bias", pre, l);
    add(tb, 0, 0, 1, C, 0, 0, 0, "%s.%d.attention.self.value.bias", pre, l);
    o->o_w = add(tb, 1, 1, 2, C, C, 0, 0,
                 "%s.%d.attention.output.dense.weight", pre, l);
    o->o_b = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.%d.attention.output.dense.bias",
                 pre, l);
    o->ln1_w = add(tb, 1, 0, 1, C, 0, 0, 0,
                   "%s.%d.attention.output.LayerNorm.weight", pre, l);
    o->ln1_b = add(tb, 1, 0, 1, C, 0, 0, 0,
                   "%s.%d.attention.output.LayerNorm.bias", pre, l);
    o->fc1_w = add(tb, 1, 1, 2, M, C, 0, 0, "%s.%d.intermediate.dense.weight",
                   pre, l);
    o->fc1_b = add(tb, 1, 0, 1, M, 0, 0, 0, "%s.%d.intermediate.dense.bias",
                   pre, l);
    o->fc2_w = add(tb, 1, 1, 2, C, M, 0, 0, "%s.%d.output.dense.weight", pre,
                   l);
    o->fc2_b = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.%d.output.dense.bias", pre, l);
    o->ln2_w = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.%d.output.LayerNorm.weight",
                   pre, l);
    o->ln2_b = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.%d.output.LayerNorm.bias", pre,
                   l);
  }
}

/* SigLIP's attention-pooling head (vision_model.head): the probe, torch's
 * MultiheadAttention (in_proj = q; k; v rows), layernorm, MLP. */
static void add_head(table *tb, int C, int M, vlm__tlayout *L) {
  vlm__tlayer *o = &L->vhead;
  const char *pre = "vision_model.head";
  L->probe = add(tb, 1, 0, 3, 1, 1, C, 0, "%s.probe", pre);
  o->qkv_w = add(tb, 1, 1, 2, 3 * C, C, 0, 0, "%s.attention.in_proj_weight",
                 pre);
  o->qkv_b = add(tb, 1, 0, 1, 3 * C, 0, 0, 0, "%s.attention.in_proj_bias",
                 pre);
  o->o_w = add(tb, 1, 1, 2, C, C, 0, 0, "%s.attention.out_proj.weight", pre);
  o->o_b = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.attention.out_proj.bias", pre);
  o->ln2_w = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.layernorm.weight", pre);
  o->ln2_b = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.layernorm.bias", pre);
  o->fc1_w = add(tb, 1, 1, 2, M, C, 0, 0, "%s.mlp.fc1.weight", pre);
  o->fc1_b = add(tb, 1, 0, 1, M, 0, 0, 0, "%s.mlp.fc1.bias", pre);
  o->fc2_w = add(tb, 1, 1, 2, C, M, 0, 0, "%s.mlp.fc2.weight", pre);
  o->fc2_b = add(tb, 1, 0, 1, C, 0, 0, 0, "%s.mlp.fc2.bias", pre);
}

static const char *const lora_module[2][VLM__LORA_N] = {
    {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
     "self_attn.out_proj", "mlp.fc1", "mlp.fc2"},
    {"attention.self.query", "attention.self.key", "attention.self.value",
     "attention.output.dense", "intermediate.dense", "output.dense"}};

const char *vlm__tlora_module(int bert, int w) {
  return lora_module[bert != 0][w];
}

static void add_lora(table *tb, const char *tower, int bert, int layers, int C,
                     int M, int r, vlm__tlayer *out) {
  const char *layer = bert ? "encoder.layer" : "encoder.layers";
  for (int l = 0; l < layers; l++)
    for (int w = 0; w < VLM__LORA_N; w++) {
      int in = w == VLM__LORA_FC2 ? M : C, outd = w == VLM__LORA_FC1 ? M : C;
      out[l].lora_a[w] = add(tb, 1, 0, 2, r, in, 0, 0,
                             "%s.%s.%d.%s.lora_A.weight", tower, layer, l,
                             lora_module[bert][w]);
      out[l].lora_b[w] = add(tb, 1, 0, 2, outd, r, 0, 0,
                             "%s.%s.%d.%s.lora_B.weight", tower, layer, l,
                             lora_module[bert][w]);
    }
}

static int check_geometry(const vlm__clip_config *c) {
#define NEED(cond, ...)                                                      \
  do {                                                                       \
    if (!(cond))                                                             \
      return vlm_seterr(VLM_EINVAL, __VA_ARGS__);                            \
  } while (0)
  if (c->family != VLM__FAMILY_CLIP && c->family != VLM__FAMILY_SIGLIP &&
      c->family != VLM__FAMILY_CHINESE_CLIP)
    return vlm_seterr(VLM_EUNSUPPORTED, "config: training supports the clip, "
                      "siglip and chinese_clip families");
  NEED(c->vision_width > 0 && c->vision_layers >= 0 && c->vision_heads > 0 &&
           c->vision_mlp > 0,
       "config: vision tower sizes must be positive");
  NEED(c->text_width > 0 && c->text_layers >= 0 && c->text_heads > 0 &&
           c->text_mlp > 0,
       "config: text tower sizes must be positive");
  NEED(c->vision_width % c->vision_heads == 0,
       "config: vision hidden_size %d not divisible by %d heads",
       c->vision_width, c->vision_heads);
  NEED(c->text_width % c->text_heads == 0,
       "config: text hidden_size %d not divisible by %d heads", c->text_width,
       c->text_heads);
  NEED(c->patch_size > 0 && c->image_size >= c->patch_size &&
           c->image_size % c->patch_size == 0,
       "config: image_size %d not a multiple of patch_size %d", c->image_size,
       c->patch_size);
  NEED(c->vocab_size > 0 && c->context_length >= 2 &&
           c->context_length <= 4096,
       "config: vocab_size %d / max_position_embeddings %d", c->vocab_size,
       c->context_length);
  if (c->family == VLM__FAMILY_CLIP)
    NEED(c->bos_id >= 0 && c->bos_id < c->vocab_size && c->eos_id >= 0 &&
             c->eos_id < c->vocab_size,
         "config: bos/eos token ids %d/%d outside the vocabulary of %d",
         c->bos_id, c->eos_id, c->vocab_size);
  NEED(c->projection_dim > 0, "config: projection_dim must be positive");
  if (c->family == VLM__FAMILY_SIGLIP)
    NEED(c->projection_dim == c->vision_width &&
             c->text_width == c->vision_width,
         "config: SigLIP's towers must have one width (text %d, vision %d)",
         c->text_width, c->vision_width);
  if (c->family == VLM__FAMILY_CHINESE_CLIP)
    NEED(c->type_vocab_size >= 1, "config: type_vocab_size %d",
         c->type_vocab_size);
  NEED(c->vision_eps > 0 && c->text_eps > 0,
       "config: layer_norm_eps must be positive");
  NEED(c->vision_act >= VLM__ACT_GELU && c->vision_act <= VLM__ACT_GELU_TANH &&
           c->text_act >= VLM__ACT_GELU && c->text_act <= VLM__ACT_GELU_TANH,
       "config: hidden_act");
  return 0;
#undef NEED
}

int vlm__tlayout_create(const vlm__clip_config *cfg, int lora_rank,
                        float lora_alpha, vlm__tlayout **out) {
  *out = NULL;
  int rc = check_geometry(cfg);
  if (rc)
    return rc;
  if (lora_rank < 0 || lora_rank > 4096)
    return vlm_seterr(VLM_EINVAL, "lora rank %d", lora_rank);
  vlm__tlayout *L = calloc(1, sizeof *L);
  if (!L)
    return vlm_seterr(VLM_ENOMEM, "trainer layout");
  L->cfg = *cfg;
  const vlm__clip_config *c = &L->cfg;
  const int siglip = c->family == VLM__FAMILY_SIGLIP;
  const int bert = c->family == VLM__FAMILY_CHINESE_CLIP;
  int G = c->image_size / c->patch_size;
  L->vision_cls = !siglip;
  L->text_bert = bert;
  L->vision_tokens = G * G + L->vision_cls;
  L->vlayers = calloc((size_t)c->vision_layers + 1, sizeof *L->vlayers);
  L->tlayers = calloc((size_t)c->text_layers + 1, sizeof *L->tlayers);
  table tb = {0};
  if (!L->vlayers || !L->tlayers)
    tb.fail = 1;
  int Cv = c->vision_width, Ct = c->text_width, D = c->projection_dim;
  int P = c->patch_size;
  if (!tb.fail) {
    if (!siglip)
      L->cls = add(&tb, 1, 0, 1, Cv, 0, 0, 0,
                   "vision_model.embeddings.class_embedding");
    L->patch_w = add(&tb, 1, 1, 4, Cv, 3, P, P,
                     "vision_model.embeddings.patch_embedding.weight");
    if (siglip)
      L->patch_b = add(&tb, 1, 0, 1, Cv, 0, 0, 0,
                       "vision_model.embeddings.patch_embedding.bias");
    L->vpos = add(&tb, 1, 0, 2, L->vision_tokens, Cv, 0, 0,
                  "vision_model.embeddings.position_embedding.weight");
    if (!siglip) {
      L->pre_ln_w = add(&tb, 1, 0, 1, Cv, 0, 0, 0,
                        "vision_model.pre_layrnorm.weight");
      L->pre_ln_b = add(&tb, 1, 0, 1, Cv, 0, 0, 0,
                        "vision_model.pre_layrnorm.bias");
    }
    add_layers(&tb, "vision_model", c->vision_layers, Cv, c->vision_mlp,
               L->vlayers);
    L->post_ln_w = add(&tb, 1, 0, 1, Cv, 0, 0, 0,
                       "vision_model.post_layernorm.weight");
    L->post_ln_b = add(&tb, 1, 0, 1, Cv, 0, 0, 0,
                       "vision_model.post_layernorm.bias");
    if (siglip)
      add_head(&tb, Cv, c->vision_mlp, L);
    else
      L->vproj = add(&tb, 1, 1, 2, D, Cv, 0, 0, "visual_projection.weight");
    if (bert) {
      L->tok = add(&tb, 1, 0, 2, c->vocab_size, Ct, 0, 0,
                   "text_model.embeddings.word_embeddings.weight");
      L->tpos = add(&tb, 1, 0, 2, c->context_length, Ct, 0, 0,
                    "text_model.embeddings.position_embeddings.weight");
      L->type_emb = add(&tb, 1, 0, 2, c->type_vocab_size, Ct, 0, 0,
                        "text_model.embeddings.token_type_embeddings.weight");
      L->emb_ln_w = add(&tb, 1, 0, 1, Ct, 0, 0, 0,
                        "text_model.embeddings.LayerNorm.weight");
      L->emb_ln_b = add(&tb, 1, 0, 1, Ct, 0, 0, 0,
                        "text_model.embeddings.LayerNorm.bias");
      add_bert_layers(&tb, c->text_layers, Ct, c->text_mlp, L->tlayers);
      L->tproj = add(&tb, 1, 1, 2, D, Ct, 0, 0, "text_projection.weight");
    } else {
      L->tok = add(&tb, 1, 0, 2, c->vocab_size, Ct, 0, 0,
                   "text_model.embeddings.token_embedding.weight");
      L->tpos = add(&tb, 1, 0, 2, c->context_length, Ct, 0, 0,
                    "text_model.embeddings.position_embedding.weight");
      add_layers(&tb, "text_model", c->text_layers, Ct, c->text_mlp,
                 L->tlayers);
      L->final_ln_w = add(&tb, 1, 0, 1, Ct, 0, 0, 0,
                          "text_model.final_layer_norm.weight");
      L->final_ln_b = add(&tb, 1, 0, 1, Ct, 0, 0, 0,
                          "text_model.final_layer_norm.bias");
      if (siglip) {
        L->tproj = add(&tb, 1, 1, 2, D, Ct, 0, 0, "text_model.head.weight");
        L->tproj_b = add(&tb, 1, 0, 1, D, 0, 0, 0, "text_model.head.bias");
      } else {
        L->tproj = add(&tb, 1, 1, 2, D, Ct, 0, 0, "text_projection.weight");
      }
    }
    /* SiglipModel's scalars are [1]; CLIPModel's logit_scale is 0-d */
    if (siglip) {
      L->logit_scale = add(&tb, 1, 0, 1, 1, 0, 0, 0, "logit_scale");
      L->logit_bias = add(&tb, 1, 0, 1, 1, 0, 0, 0, "logit_bias");
    } else {
      L->logit_scale = add(&tb, 1, 0, 0, 0, 0, 0, 0, "logit_scale");
    }
  }
  L->params = tb.t;
  L->nparams = tb.n;
  L->total = (tb.total + 15) & ~(size_t)15;
  if (!tb.fail && lora_rank > 0) {
    table lt = {0};
    add_lora(&lt, "vision_model", 0, c->vision_layers, Cv, c->vision_mlp,
             lora_rank, L->vlayers);
    add_lora(&lt, "text_model", bert, c->text_layers, Ct, c->text_mlp,
             lora_rank, L->tlayers);
    L->lora = lt.t;
    L->nlora = lt.n;
    L->lora_total = (lt.total + 15) & ~(size_t)15;
    L->lora_rank = lora_rank;
    L->lora_alpha = lora_alpha;
    L->lora_scale = lora_alpha / (float)lora_rank;
    if (lt.fail)
      tb.fail = 1;
  }
  if (tb.fail) {
    vlm__tlayout_free(L);
    return vlm_seterr(VLM_ENOMEM, "trainer layout");
  }
  *out = L;
  return 0;
}

void vlm__tlayout_free(vlm__tlayout *L) {
  if (!L)
    return;
  free(L->params);
  free(L->lora);
  free(L->vlayers);
  free(L->tlayers);
  free(L);
}

const vlm__tparam *vlm__tlayout_find(const vlm__tlayout *L, const char *name) {
  for (int i = 0; i < L->nparams; i++)
    if (!strcmp(L->params[i].name, name))
      return &L->params[i];
  return NULL;
}

double vlm__tmodel_step_flops(const vlm__tlayout *L, int B,
                              int64_t text_tokens) {
  const vlm__clip_config *c = &L->cfg;
  double T = L->vision_tokens, Nv = (double)B * T, Nt = (double)text_tokens;
  double np = T - L->vision_cls;
  double Cv = c->vision_width, Ct = c->text_width, D = c->projection_dim;
  double P = c->patch_size, r = L->lora_rank;
  /* forward multiply-adds: linear layers per token, attention per pair
   * of positions (scores and P V), projections per pooled row */
  double fv = Nv * c->vision_layers * (4 * Cv * Cv + 2 * Cv * c->vision_mlp) +
              (double)B * np * 3 * P * P * Cv +
              (double)B * c->vision_layers * T * T * Cv * 2 + B * Cv * D;
  double ft = Nt * c->text_layers * (4 * Ct * Ct + 2 * Ct * c->text_mlp) +
              B * Ct * D;
  /* text attention (computed in full, masked after): len^2 pairs per
   * sequence with len ~ N/B */
  double len = B ? Nt / B : 0;
  ft += (double)B * c->text_layers * len * len * Ct * 2;
  double fwd = 2 * (fv + ft) + 2.0 * B * B * D;
  /* backward: twice the forward (input and weight gradients); with LoRA
   * the base weight gradients are skipped but the adapters add a little */
  double bwd = 2 * fwd;
  if (r > 0)
    bwd = fwd + 2 * r * (Nv * c->vision_layers * (6 * Cv + 2 * c->vision_mlp) +
                         Nt * c->text_layers * (6 * Ct + 2 * c->text_mlp)) *
                    3;
  return fwd + bwd;
}

/* ---- optimizer -------------------------------------------------------- */

typedef struct {
  const vlm__tadamw *h;
  float *w, *m, *v;
  const float *g;
  const uint8_t *decay;
  double partial[256];
} adamw_ctx;

static void sumsq_chunk(void *p, int64_t begin, int64_t end, int th) {
  adamw_ctx *c = p;
  double s = 0;
  for (int64_t i = begin; i < end; i++)
    s += (double)c->g[i] * c->g[i];
  c->partial[th] = s;
}

double vlm__tgrad_sumsq(vlm__tpool *pool, const float *g, size_t n) {
  adamw_ctx c = {.g = g};
  int T = vlm__tpool_threads(pool);
  if (T > 256) /* partial sums per thread */
    T = 256;
  vlm__tpool_for(T == vlm__tpool_threads(pool) ? pool : NULL, (int64_t)n,
                 sumsq_chunk, &c);
  double s = 0;
  for (int t = 0; t < T; t++)
    s += c.partial[t];
  return s;
}

static void adamw_chunk(void *p, int64_t begin, int64_t end, int th) {
  (void)th;
  adamw_ctx *c = p;
  const vlm__tadamw *h = c->h;
  float b1 = h->beta1, b2 = h->beta2, lr = h->lr, eps = h->eps;
  float bc1 = 1 - powf(b1, (float)h->step), bc2 = 1 - powf(b2, (float)h->step);
  float step_size = lr / bc1, inv_bc2_sqrt = 1 / sqrtf(bc2);
  float wdf = 1 - lr * h->weight_decay, gs = h->grad_scale;
  float *w = c->w, *m = c->m, *v = c->v;
  const float *g = c->g;
  const uint8_t *decay = c->decay;
  for (int64_t i = begin; i < end; i++) {
    float gi = g[i] * gs;
    m[i] = b1 * m[i] + (1 - b1) * gi;
    v[i] = b2 * v[i] + (1 - b2) * gi * gi;
    if (decay[i])
      w[i] *= wdf;
    w[i] -= step_size * m[i] / (sqrtf(v[i]) * inv_bc2_sqrt + eps);
  }
}

void vlm__tadamw_update(vlm__tpool *pool, const vlm__tadamw *h, float *w,
                        const float *g, float *m, float *v,
                        const uint8_t *decay, size_t n) {
  adamw_ctx c = {.h = h, .w = w, .m = m, .v = v, .g = g, .decay = decay};
  vlm__tpool_for(pool, (int64_t)n, adamw_chunk, &c);
}

/* ---- the model, twice ----------------------------------------------- */

#include <tgmath.h>

#define real float
#define SFX f32
#include "train_model_tmpl.h"
#undef real
#undef SFX

#define real double
#define SFX f64
#include "train_model_tmpl.h"
#undef real
#undef SFX
