/* weights.c - bind a checkpoint's tensors to the towers.
 *
 * Both layouts are described by one list of expected tensors, each with its
 * Hugging Face name and shape and where it comes from in the file: the same
 * tensor, a block of rows of one (q, k, v inside open_clip's stacked
 * in_proj_weight), or the transpose of one (open_clip's visual.proj and
 * text_projection are [in, out]).  Every entry must be found with the
 * expected dtype and shape, or the load fails naming it; nothing is
 * optional, so a model can never run with a weight left unset.
 *
 * F32 data that is suitably aligned is used where it lies in the mapping.
 * Everything else (F16/BF16 converted, transposes) goes into one arena,
 * laid out in list order so that q, k and v of a block end up adjacent
 * and one GEMM computes all three.
 *
 * When every Linear weight is F16 (or every one BF16) and the CPU has
 * AVX-512, those weights are instead packed from the file into panels for
 * the panel kernel (kernels.h) and get no F32 copy at load ("lazy": made on
 * request by vlm__clip_tensor). */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "clip_int.h"
#include "kernels.h"
#include "vlm_error.h"

enum { SRC_WHOLE, SRC_ROWS, SRC_TRANSPOSE };

typedef struct {
  char hf[96];                 /* Hugging Face name */
  char src[96];                /* name in the file */
  int kind;                    /* SRC_* */
  int64_t offset;              /* SRC_ROWS: first element within src */
  int ndim;                    /* expected shape of the HF tensor */
  int64_t shape[4];
  int src_ndim;                /* expected shape of the file's tensor */
  int64_t src_shape[4];
  const float **bind;          /* where the tower keeps the pointer */
  int lazy;                    /* read from panels: no F32 copy at load */
  /* filled while loading */
  const vlm__st_tensor *t;
  const vlm__st_tensor *scale; /* t is I8: its F32 scales, one per row */
  const vlm__st_tensor *smooth; /* ... and its smoothing, F32 [cols] */
  const float *data;
} spec;

typedef struct {
  spec *v;
  int n, cap;
  int failed;
} spec_list;

static spec *add(spec_list *l, const char *hf, const char *src, int kind,
                 const float **bind, int ndim, const int64_t *shape) {
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 256;
    spec *v = realloc(l->v, (size_t)cap * sizeof *v);
    if (!v) {
      l->failed = 1;
      return NULL;
    }
    l->v = v;
    l->cap = cap;
  }
  spec *s = &l->v[l->n++];
  memset(s, 0, sizeof *s);
  snprintf(s->hf, sizeof s->hf, "%s", hf);
  snprintf(s->src, sizeof s->src, "%s", src);
  s->kind = kind;
  s->bind = bind;
  s->ndim = s->src_ndim = ndim;
  for (int d = 0; d < ndim; d++)
    s->shape[d] = s->src_shape[d] = shape[d];
  return s;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
/* An HF tensor read unchanged from src. */
#define SAME(l, hf, src, bind, ...) \
  add(l, hf, src, SRC_WHOLE, bind, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__))
/* An HF tensor under its own name. */
#define HF_SAME(l, hf, bind, ...) SAME(l, hf, hf, bind, __VA_ARGS__)

/* ---- the expected tensors of each layout ------------------------------- */

static void block_specs(spec_list *l, vlm__layout layout, int tower_text,
                        int i, int C, int F, vlm__block *b) {
  char hf[96], src[96], hfp[64], srcp[64];
  snprintf(hfp, sizeof hfp, "%s.encoder.layers.%d",
           tower_text ? "text_model" : "vision_model", i);
  snprintf(srcp, sizeof srcp, "%stransformer.resblocks.%d",
           tower_text ? "" : "visual.", i);
#define HF(suffix) (snprintf(hf, sizeof hf, "%s.%s", hfp, suffix), hf)
#define OC(suffix) (snprintf(src, sizeof src, "%s.%s", srcp, suffix), src)
  if (layout == VLM__LAYOUT_HF) {
    SAME(l, HF("layer_norm1.weight"), hf, &b->ln1_w, C);
    SAME(l, HF("layer_norm1.bias"), hf, &b->ln1_b, C);
    /* q, k, v weights then biases, in this order, so converted copies
     * land adjacent in the arena. */
    SAME(l, HF("self_attn.q_proj.weight"), hf, &b->q_w, C, C);
    SAME(l, HF("self_attn.k_proj.weight"), hf, &b->k_w, C, C);
    SAME(l, HF("self_attn.v_proj.weight"), hf, &b->v_w, C, C);
    SAME(l, HF("self_attn.q_proj.bias"), hf, &b->q_b, C);
    SAME(l, HF("self_attn.k_proj.bias"), hf, &b->k_b, C);
    SAME(l, HF("self_attn.v_proj.bias"), hf, &b->v_b, C);
    SAME(l, HF("self_attn.out_proj.weight"), hf, &b->o_w, C, C);
    SAME(l, HF("self_attn.out_proj.bias"), hf, &b->o_b, C);
    SAME(l, HF("layer_norm2.weight"), hf, &b->ln2_w, C);
    SAME(l, HF("layer_norm2.bias"), hf, &b->ln2_b, C);
    SAME(l, HF("mlp.fc1.weight"), hf, &b->fc1_w, F, C);
    SAME(l, HF("mlp.fc1.bias"), hf, &b->fc1_b, F);
    SAME(l, HF("mlp.fc2.weight"), hf, &b->fc2_w, C, F);
    SAME(l, HF("mlp.fc2.bias"), hf, &b->fc2_b, C);
    return;
  }
  SAME(l, HF("layer_norm1.weight"), OC("ln_1.weight"), &b->ln1_w, C);
  SAME(l, HF("layer_norm1.bias"), OC("ln_1.bias"), &b->ln1_b, C);
  static const char *qkv[3] = {"q", "k", "v"};
  const float **wbind[3] = {&b->q_w, &b->k_w, &b->v_w};
  const float **bbind[3] = {&b->q_b, &b->k_b, &b->v_b};
  for (int j = 0; j < 3; j++) {
    snprintf(hf, sizeof hf, "%s.self_attn.%s_proj.weight", hfp, qkv[j]);
    spec *s = add(l, hf, OC("attn.in_proj_weight"), SRC_ROWS, wbind[j], 2,
                  SHAPE(C, C));
    if (s) {
      s->offset = (int64_t)j * C * C;
      s->src_shape[0] = 3 * (int64_t)C;
    }
  }
  for (int j = 0; j < 3; j++) {
    snprintf(hf, sizeof hf, "%s.self_attn.%s_proj.bias", hfp, qkv[j]);
    spec *s = add(l, hf, OC("attn.in_proj_bias"), SRC_ROWS, bbind[j], 1,
                  SHAPE(C));
    if (s) {
      s->offset = (int64_t)j * C;
      s->src_shape[0] = 3 * (int64_t)C;
    }
  }
  SAME(l, HF("self_attn.out_proj.weight"), OC("attn.out_proj.weight"),
       &b->o_w, C, C);
  SAME(l, HF("self_attn.out_proj.bias"), OC("attn.out_proj.bias"), &b->o_b,
       C);
  SAME(l, HF("layer_norm2.weight"), OC("ln_2.weight"), &b->ln2_w, C);
  SAME(l, HF("layer_norm2.bias"), OC("ln_2.bias"), &b->ln2_b, C);
  SAME(l, HF("mlp.fc1.weight"), OC("mlp.c_fc.weight"), &b->fc1_w, F, C);
  SAME(l, HF("mlp.fc1.bias"), OC("mlp.c_fc.bias"), &b->fc1_b, F);
  SAME(l, HF("mlp.fc2.weight"), OC("mlp.c_proj.weight"), &b->fc2_w, C, F);
  SAME(l, HF("mlp.fc2.bias"), OC("mlp.c_proj.bias"), &b->fc2_b, C);
#undef HF
#undef OC
}

/* BERT's post-LN layer (Chinese-CLIP's text tower), in the same order as
 * block_specs so converted q, k, v land adjacent. */
static void bert_block_specs(spec_list *l, int i, int C, int F,
                             vlm__block *b) {
  char hf[96];
#define BT(suffix) \
  (snprintf(hf, sizeof hf, "text_model.encoder.layer.%d.%s", i, suffix), hf)
  SAME(l, BT("attention.self.query.weight"), hf, &b->q_w, C, C);
  SAME(l, BT("attention.self.key.weight"), hf, &b->k_w, C, C);
  SAME(l, BT("attention.self.value.weight"), hf, &b->v_w, C, C);
  SAME(l, BT("attention.self.query.bias"), hf, &b->q_b, C);
  SAME(l, BT("attention.self.key.bias"), hf, &b->k_b, C);
  SAME(l, BT("attention.self.value.bias"), hf, &b->v_b, C);
  SAME(l, BT("attention.output.dense.weight"), hf, &b->o_w, C, C);
  SAME(l, BT("attention.output.dense.bias"), hf, &b->o_b, C);
  SAME(l, BT("attention.output.LayerNorm.weight"), hf, &b->ln1_w, C);
  SAME(l, BT("attention.output.LayerNorm.bias"), hf, &b->ln1_b, C);
  SAME(l, BT("intermediate.dense.weight"), hf, &b->fc1_w, F, C);
  SAME(l, BT("intermediate.dense.bias"), hf, &b->fc1_b, F);
  SAME(l, BT("output.dense.weight"), hf, &b->fc2_w, C, F);
  SAME(l, BT("output.dense.bias"), hf, &b->fc2_b, C);
  SAME(l, BT("output.LayerNorm.weight"), hf, &b->ln2_w, C);
  SAME(l, BT("output.LayerNorm.bias"), hf, &b->ln2_b, C);
#undef BT
}

/* SiglipModel: no class token, pre-LN or projections; a patch bias, the
 * attention-pooling head, text_model.head, logit_bias. */
static void siglip_specs(spec_list *l, const vlm__clip_config *c,
                         vlm__weights *w) {
  const int64_t Wv = c->vision_width, Wt = c->text_width, F = c->vision_mlp;
  const int64_t P = c->patch_size, G = c->image_size / c->patch_size;
  HF_SAME(l, "vision_model.embeddings.patch_embedding.weight", &w->patch_w, Wv, 3, P, P);
  HF_SAME(l, "vision_model.embeddings.patch_embedding.bias", &w->patch_b, Wv);
  HF_SAME(l, "vision_model.embeddings.position_embedding.weight", &w->vpos, G * G, Wv);
  for (int i = 0; i < c->vision_layers; i++)
    block_specs(l, VLM__LAYOUT_HF, 0, i, (int)Wv, c->vision_mlp,
                &w->vblocks[i]);
  HF_SAME(l, "vision_model.post_layernorm.weight", &w->post_ln_w, Wv);
  HF_SAME(l, "vision_model.post_layernorm.bias", &w->post_ln_b, Wv);
  vlm__block *h = &w->vhead;
  HF_SAME(l, "vision_model.head.probe", &w->probe, 1, 1, Wv);
  HF_SAME(l, "vision_model.head.attention.in_proj_weight", &w->head_in_w, 3 * Wv, Wv);
  HF_SAME(l, "vision_model.head.attention.in_proj_bias", &w->head_in_b, 3 * Wv);
  HF_SAME(l, "vision_model.head.attention.out_proj.weight", &h->o_w, Wv, Wv);
  HF_SAME(l, "vision_model.head.attention.out_proj.bias", &h->o_b, Wv);
  HF_SAME(l, "vision_model.head.layernorm.weight", &h->ln2_w, Wv);
  HF_SAME(l, "vision_model.head.layernorm.bias", &h->ln2_b, Wv);
  HF_SAME(l, "vision_model.head.mlp.fc1.weight", &h->fc1_w, F, Wv);
  HF_SAME(l, "vision_model.head.mlp.fc1.bias", &h->fc1_b, F);
  HF_SAME(l, "vision_model.head.mlp.fc2.weight", &h->fc2_w, Wv, F);
  HF_SAME(l, "vision_model.head.mlp.fc2.bias", &h->fc2_b, Wv);
  HF_SAME(l, "text_model.embeddings.token_embedding.weight", &w->tok_emb,
       c->vocab_size, Wt);
  HF_SAME(l, "text_model.embeddings.position_embedding.weight", &w->tpos,
       c->context_length, Wt);
  for (int i = 0; i < c->text_layers; i++)
    block_specs(l, VLM__LAYOUT_HF, 1, i, (int)Wt, c->text_mlp,
                &w->tblocks[i]);
  HF_SAME(l, "text_model.final_layer_norm.weight", &w->final_ln_w, Wt);
  HF_SAME(l, "text_model.final_layer_norm.bias", &w->final_ln_b, Wt);
  HF_SAME(l, "text_model.head.weight", &w->tproj, c->projection_dim, Wt);
  HF_SAME(l, "text_model.head.bias", &w->tproj_b, c->projection_dim);
  add(l, "logit_scale", "logit_scale", SRC_WHOLE, &w->logit_scale, 0, NULL);
  add(l, "logit_bias", "logit_bias", SRC_WHOLE, &w->logit_bias, 0, NULL);
}

static void model_specs(spec_list *l, vlm__layout layout,
                        const vlm__clip_config *c, vlm__weights *w) {
  const int64_t Wv = c->vision_width, Wt = c->text_width, D = c->projection_dim;
  const int64_t P = c->patch_size, G = c->image_size / c->patch_size;
  const int hf = layout == VLM__LAYOUT_HF;
  if (c->family == VLM__FAMILY_SIGLIP) {
    siglip_specs(l, c, w);
    return;
  }
  /* CLIP's ViT (Chinese-CLIP's too, under the same names) */
  SAME(l, "vision_model.embeddings.class_embedding",
       hf ? "vision_model.embeddings.class_embedding" : "visual.class_embedding",
       &w->class_emb, Wv);
  SAME(l, "vision_model.embeddings.patch_embedding.weight",
       hf ? "vision_model.embeddings.patch_embedding.weight"
          : "visual.conv1.weight",
       &w->patch_w, Wv, 3, P, P);
  SAME(l, "vision_model.embeddings.position_embedding.weight",
       hf ? "vision_model.embeddings.position_embedding.weight"
          : "visual.positional_embedding",
       &w->vpos, G * G + 1, Wv);
  SAME(l, "vision_model.pre_layrnorm.weight",
       hf ? "vision_model.pre_layrnorm.weight" : "visual.ln_pre.weight",
       &w->pre_ln_w, Wv);
  SAME(l, "vision_model.pre_layrnorm.bias",
       hf ? "vision_model.pre_layrnorm.bias" : "visual.ln_pre.bias",
       &w->pre_ln_b, Wv);
  for (int i = 0; i < c->vision_layers; i++)
    block_specs(l, layout, 0, i, (int)Wv, c->vision_mlp, &w->vblocks[i]);
  SAME(l, "vision_model.post_layernorm.weight",
       hf ? "vision_model.post_layernorm.weight" : "visual.ln_post.weight",
       &w->post_ln_w, Wv);
  SAME(l, "vision_model.post_layernorm.bias",
       hf ? "vision_model.post_layernorm.bias" : "visual.ln_post.bias",
       &w->post_ln_b, Wv);
  if (hf) {
    SAME(l, "visual_projection.weight", "visual_projection.weight", &w->vproj,
         D, Wv);
  } else {
    spec *s = add(l, "visual_projection.weight", "visual.proj", SRC_TRANSPOSE,
                  &w->vproj, 2, SHAPE(D, Wv));
    if (s)
      s->src_shape[0] = Wv, s->src_shape[1] = D;
  }

  if (c->family == VLM__FAMILY_CHINESE_CLIP) {
    /* BERT: word + position + token type embeddings, their LayerNorm,
     * post-LN layers; no final layer norm; [CLS] projected */
    HF_SAME(l, "text_model.embeddings.word_embeddings.weight", &w->tok_emb,
         c->vocab_size, Wt);
    HF_SAME(l, "text_model.embeddings.position_embeddings.weight", &w->tpos,
         c->context_length, Wt);
    HF_SAME(l, "text_model.embeddings.token_type_embeddings.weight", &w->type_emb,
         c->type_vocab_size, Wt);
    HF_SAME(l, "text_model.embeddings.LayerNorm.weight", &w->emb_ln_w, Wt);
    HF_SAME(l, "text_model.embeddings.LayerNorm.bias", &w->emb_ln_b, Wt);
    for (int i = 0; i < c->text_layers; i++)
      bert_block_specs(l, i, (int)Wt, c->text_mlp, &w->tblocks[i]);
    SAME(l, "text_projection.weight", "text_projection.weight", &w->tproj, D,
         Wt);
    add(l, "logit_scale", "logit_scale", SRC_WHOLE, &w->logit_scale, 0, NULL);
    return;
  }

  SAME(l, "text_model.embeddings.token_embedding.weight",
       hf ? "text_model.embeddings.token_embedding.weight"
          : "token_embedding.weight",
       &w->tok_emb, c->vocab_size, Wt);
  SAME(l, "text_model.embeddings.position_embedding.weight",
       hf ? "text_model.embeddings.position_embedding.weight"
          : "positional_embedding",
       &w->tpos, c->context_length, Wt);
  for (int i = 0; i < c->text_layers; i++)
    block_specs(l, layout, 1, i, (int)Wt, c->text_mlp, &w->tblocks[i]);
  SAME(l, "text_model.final_layer_norm.weight",
       hf ? "text_model.final_layer_norm.weight" : "ln_final.weight",
       &w->final_ln_w, Wt);
  SAME(l, "text_model.final_layer_norm.bias",
       hf ? "text_model.final_layer_norm.bias" : "ln_final.bias",
       &w->final_ln_b, Wt);
  if (hf) {
    SAME(l, "text_projection.weight", "text_projection.weight", &w->tproj, D,
         Wt);
  } else {
    spec *s = add(l, "text_projection.weight", "text_projection",
                  SRC_TRANSPOSE, &w->tproj, 2, SHAPE(D, Wt));
    if (s)
      s->src_shape[0] = Wt, s->src_shape[1] = D;
  }
  /* A 0-d tensor; binding it gives the value to the config. */
  add(l, "logit_scale", "logit_scale", SRC_WHOLE, &w->logit_scale, 0, NULL);
}

/* ---- geometry of the original layout, from shapes ---------------------- */

static const vlm__st_tensor *need(const vlm__safetensors *st, const char *name,
                                  int ndim, int *rc) {
  const vlm__st_tensor *t = vlm__st_find(st, name);
  if (!t) {
    *rc = vlm_seterr(VLM_ENOTFOUND, "%s: missing tensor %s", st->path, name);
    return NULL;
  }
  if (t->ndim != ndim) {
    *rc = vlm_seterr(VLM_EMISMATCH, "%s: tensor %s has %d dimensions, "
                     "expected %d", st->path, name, t->ndim, ndim);
    return NULL;
  }
  return t;
}

/* Count distinct N in "<prefix>N.<anything>" names. */
static int count_blocks(const vlm__safetensors *st, const char *prefix) {
  size_t plen = strlen(prefix);
  int max = -1;
  for (int i = 0; i < st->n_tensors; i++) {
    const char *name = st->tensors[i].name;
    if (strncmp(name, prefix, plen) || !isdigit((unsigned char)name[plen]))
      continue;
    long n = strtol(name + plen, NULL, 10);
    if (n > max && n < 4096)
      max = (int)n;
  }
  return max + 1;
}

/* Set a zero field to v; a non-zero one must already agree (the tensor
 * shapes checked later would also catch it, but this names the field). */
static int infer(int *field, int64_t v, const char *what, const char *tensor,
                 const char *path) {
  if (v <= 0 || v > (1 << 24))
    return vlm_seterr(VLM_EMISMATCH, "%s: tensor %s gives an invalid %s "
                      "(%lld)", path, tensor, what, (long long)v);
  if (*field == 0)
    *field = (int)v;
  else if (*field != v)
    return vlm_seterr(VLM_EMISMATCH, "%s: tensor %s implies %s %lld but the "
                      "config says %d", path, tensor, what, (long long)v,
                      *field);
  return 0;
}

static int infer_original(const vlm__safetensors *st, vlm__clip_config *c) {
  int rc = 0;
  const char *path = st->path;
  if (vlm__st_find(st, "visual.layer1.0.conv1.weight"))
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: ResNet CLIP vision towers are "
                      "not supported (only ViT)", path);
  const vlm__st_tensor *conv, *vpos, *fc, *tok, *tpos, *lnf, *proj, *tfc;
  if (!(conv = need(st, "visual.conv1.weight", 4, &rc)) ||
      !(vpos = need(st, "visual.positional_embedding", 2, &rc)) ||
      !(fc = need(st, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2,
                  &rc)) ||
      !(tok = need(st, "token_embedding.weight", 2, &rc)) ||
      !(tpos = need(st, "positional_embedding", 2, &rc)) ||
      !(lnf = need(st, "ln_final.weight", 1, &rc)) ||
      !(proj = need(st, "text_projection", 2, &rc)) ||
      !(tfc = need(st, "transformer.resblocks.0.mlp.c_fc.weight", 2, &rc)))
    return rc;
  int64_t patch = conv->shape[3], ntok = vpos->shape[0] - 1, grid = 0;
  while ((grid + 1) * (grid + 1) <= ntok)
    grid++;
  if (grid * grid != ntok)
    return vlm_seterr(VLM_EMISMATCH, "%s: visual.positional_embedding has "
                      "%lld rows, not 1 + a square number of patches", path,
                      (long long)vpos->shape[0]);
  if ((rc = infer(&c->vision_width, conv->shape[0], "vision width",
                  "visual.conv1.weight", path)) ||
      (rc = infer(&c->patch_size, patch, "patch size", "visual.conv1.weight",
                  path)) ||
      (rc = infer(&c->image_size, patch * grid, "image size",
                  "visual.positional_embedding", path)) ||
      (rc = infer(&c->vision_layers,
                  count_blocks(st, "visual.transformer.resblocks."),
                  "vision layer count", "visual.transformer.resblocks.*",
                  path)) ||
      (rc = infer(&c->vision_mlp, fc->shape[0], "vision MLP width",
                  "visual.transformer.resblocks.0.mlp.c_fc.weight", path)) ||
      (rc = infer(&c->vocab_size, tok->shape[0], "vocabulary size",
                  "token_embedding.weight", path)) ||
      (rc = infer(&c->context_length, tpos->shape[0], "context length",
                  "positional_embedding", path)) ||
      (rc = infer(&c->text_width, lnf->shape[0], "text width",
                  "ln_final.weight", path)) ||
      (rc = infer(&c->text_layers, count_blocks(st, "transformer.resblocks."),
                  "text layer count", "transformer.resblocks.*", path)) ||
      (rc = infer(&c->text_mlp, tfc->shape[0], "text MLP width",
                  "transformer.resblocks.0.mlp.c_fc.weight", path)) ||
      (rc = infer(&c->projection_dim, proj->shape[1], "projection dim",
                  "text_projection", path)))
    return rc;
  /* Without a config the start and end tokens are the vocabulary's last
   * two ids, as in CLIP's tokenizer. */
  if (c->bos_id == 0 && c->eos_id == 0) {
    c->bos_id = c->vocab_size - 2 > 0 ? c->vocab_size - 2 : 0;
    c->eos_id = c->vocab_size - 1;
  }
  /* The reference builds heads = width / 64. */
  if (!c->vision_heads)
    c->vision_heads = c->vision_width >= 64 ? c->vision_width / 64 : 1;
  if (!c->text_heads)
    c->text_heads = c->text_width >= 64 ? c->text_width / 64 : 1;
  return vlm__config_validate(c, path);
}

/* ---- loading ------------------------------------------------------------ */

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *s) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < ndim && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "",
                          (long long)s[i]);
  if (n < cap)
    snprintf(buf + n, cap - n, "]");
}

/* Element i .. i+count of t as F32 into out (an I8 tensor times its
 * row's scale from the F32 tensor scale, divided by its column's
 * smoothing from smooth when there is one). */
static void read_f32(float *out, const vlm__st_tensor *t,
                     const vlm__st_tensor *scale,
                     const vlm__st_tensor *smooth, int64_t i, int64_t count) {
  switch (t->dtype) {
  case VLM__DT_I8: {
    const int8_t *q = t->data;
    int64_t cols = t->shape[t->ndim - 1];
    for (int64_t j = 0; j < count; j++) {
      float sc, sm = 1; /* neither need be aligned in the file */
      memcpy(&sc, (const char *)scale->data + (size_t)((i + j) / cols) * 4,
             4);
      if (smooth)
        memcpy(&sm, (const char *)smooth->data + (size_t)((i + j) % cols) * 4,
               4);
      out[j] = (float)q[i + j] * sc / sm;
    }
    break;
  }
  case VLM__DT_F32:
    memcpy(out, (const float *)t->data + i, (size_t)count * sizeof *out);
    break;
  case VLM__DT_F16:
    vlm__f16_to_f32(out, (const uint16_t *)t->data + i, (size_t)count);
    break;
  case VLM__DT_BF16:
    vlm__bf16_to_f32(out, (const uint16_t *)t->data + i, (size_t)count);
    break;
  default:
    break; /* rejected before */
  }
}

static int in_place(const vlm__st_tensor *t) {
  return t->dtype == VLM__DT_F32 && ((uintptr_t)t->data & 3) == 0;
}

/* The spec that binds *bind. */
static spec *find_bind(const spec_list *l, const float *const *bind) {
  for (int i = 0; i < l->n; i++)
    if (l->v[i].bind == bind)
      return &l->v[i];
  return NULL;
}

/* The 16-bit file data behind the tensor bound to *bind, or NULL if it is
 * not F16/BF16 (of the wanted kind) read unchanged or as a block of rows. */
static const uint16_t *raw16(const spec_list *l, const float *const *bind,
                             int bf16) {
  const spec *s = find_bind(l, bind);
  vlm__dtype want = bf16 ? VLM__DT_BF16 : VLM__DT_F16;
  if (!s || s->kind == SRC_TRANSPOSE || s->t->dtype != want ||
      ((uintptr_t)s->t->data & 1))
    return NULL;
  return (const uint16_t *)s->t->data + (s->kind == SRC_ROWS ? s->offset : 0);
}

/* Pack every Linear weight of the towers (and the patch embedding, and
 * SigLIP's pooling head) into panels (kernels.h) when the file holds them
 * as F16 or BF16, so the panels are exact.  The panel kernel needs no
 * per-call packing of the weights (which at a few rows costs as much as
 * the product) and reads half the bytes of F32.  Not an error when it
 * cannot be done (an F32 file, mixed dtypes, no AVX-512): the towers then
 * use sgemm. */
static size_t panel_elems(int N, int K) {
  size_t pc = VLM__PANEL;
  return (((size_t)N + pc - 1) / pc) * pc * (size_t)K;
}

static size_t tower_panel_elems(int L, int C, int F) {
  return (size_t)L * (panel_elems(3 * C, C) + panel_elems(C, C) +
                      panel_elems(F, C) + panel_elems(C, F));
}

/* Packing is planned first (where each matrix goes, which file rows feed
 * it) and then run on the model's threads: it is most of the load time. */
typedef struct {
  uint16_t *dst;
  const uint16_t **rows;
  int N, K;
} pack_job;

typedef struct {
  pack_job *jobs;
  int n;
  const uint16_t **rows; /* next free entries of the row-pointer table */
  uint16_t *at;          /* next free panel element */
  pthread_mutex_t mu;
  int next;
} pack_plan;

/* Plan the matrix bound to *bind (N x K) at plan->at. */
static int plan_one(const spec_list *l, const float *const *bind, int bf16,
                    int N, int K, pack_plan *plan, const uint16_t **dst) {
  const uint16_t *w = raw16(l, bind, bf16);
  if (!w)
    return -1;
  pack_job *j = &plan->jobs[plan->n++];
  *j = (pack_job){plan->at, plan->rows, N, K};
  for (int n = 0; n < N; n++)
    plan->rows[n] = w + (size_t)n * K;
  plan->rows += N;
  *dst = plan->at;
  plan->at += panel_elems(N, K);
  return 0;
}

/* Out-proj, fc1 and fc2 of a block; q, k, v are planned by the caller. */
static int plan_rest(const spec_list *l, int bf16, int C, int F,
                     vlm__block *b, pack_plan *plan) {
  return plan_one(l, &b->o_w, bf16, C, C, plan, &b->p_o) ||
         plan_one(l, &b->fc1_w, bf16, F, C, plan, &b->p_fc1) ||
         plan_one(l, &b->fc2_w, bf16, C, F, plan, &b->p_fc2);
}

static int plan_tower(const spec_list *l, int bf16, int L, int C, int F,
                      vlm__block *blocks, pack_plan *plan) {
  for (int i = 0; i < L; i++) {
    vlm__block *b = &blocks[i];
    if (!b->qkv_fused) /* the biases must be one [3C] vector */
      return -1;
    const float *const *qkv[3] = {&b->q_w, &b->k_w, &b->v_w};
    const uint16_t **rows = plan->rows;
    for (int j = 0; j < 3; j++) {
      const uint16_t *w = raw16(l, qkv[j], bf16);
      if (!w)
        return -1;
      for (int n = 0; n < C; n++)
        rows[j * C + n] = w + (size_t)n * C;
    }
    plan->jobs[plan->n++] = (pack_job){plan->at, rows, 3 * C, C};
    plan->rows += 3 * C;
    b->p_qkv = plan->at;
    plan->at += panel_elems(3 * C, C);
    if (plan_rest(l, bf16, C, F, b, plan))
      return -1;
  }
  return 0;
}

static void *pack_worker(void *arg) {
  pack_plan *plan = arg;
  for (;;) {
    pthread_mutex_lock(&plan->mu);
    int i = plan->next++;
    pthread_mutex_unlock(&plan->mu);
    if (i >= plan->n)
      return NULL;
    const pack_job *j = &plan->jobs[i];
    vlm__panel_pack(j->dst, j->rows, j->N, j->K);
  }
}

/* The bind addresses of every matrix the panels replace: per block q, k,
 * v, out, fc1, fc2; SigLIP's head in_proj, out, fc1, fc2; the patch
 * embedding.  Returns the count written to out (cap entries). */
static int packed_binds(const vlm_clip *clip, const float *const **out,
                        int cap) {
  const vlm__clip_config *c = &clip->cfg;
  vlm__weights *w = (vlm__weights *)&clip->w;
  int n = 0;
  for (int t = 0; t < 2; t++) {
    int L = t ? c->vision_layers : c->text_layers;
    for (int i = 0; i < L; i++) {
      vlm__block *b = t ? &w->vblocks[i] : &w->tblocks[i];
      const float *const *m[6] = {&b->q_w, &b->k_w,   &b->v_w,
                                  &b->o_w, &b->fc1_w, &b->fc2_w};
      for (int k = 0; k < 6 && n < cap; k++)
        out[n++] = m[k];
    }
  }
  if (c->family == VLM__FAMILY_SIGLIP) {
    const float *const *m[4] = {&w->head_in_w, &w->vhead.o_w,
                                &w->vhead.fc1_w, &w->vhead.fc2_w};
    for (int k = 0; k < 4 && n < cap; k++)
      out[n++] = m[k];
  }
  if (n < cap)
    out[n++] = &w->patch_w;
  return n;
}

/* Whether every Linear weight (and the patch embedding) can be packed:
 * all F16 or all BF16, 2-byte aligned.  If so, mark them lazy and set
 * *bf16.  Widths must be whole vectors so the q, k, v biases converted in
 * list order lie adjacent (one [3C] bias for the fused product). */
static int panels_possible(const vlm_clip *clip, spec_list *l, int *bf16) {
  const vlm__clip_config *c = &clip->cfg;
  const char *env = getenv("VLMDB_CLIP_PANELS");
  if (!vlm__panels_supported() || (env && !strcmp(env, "0")) ||
      c->text_width % 16 || c->vision_width % 16)
    return 0;
  spec *probe = find_bind(l, &clip->w.patch_w);
  if (!probe || (probe->t->dtype != VLM__DT_F16 &&
                 probe->t->dtype != VLM__DT_BF16))
    return 0;
  *bf16 = probe->t->dtype == VLM__DT_BF16;
  int cap = 6 * (c->text_layers + c->vision_layers) + 5;
  const float *const **binds = malloc((size_t)cap * sizeof *binds);
  if (!binds)
    return 0;
  int n = packed_binds(clip, binds, cap), ok = 1;
  for (int i = 0; i < n && ok; i++)
    ok = raw16(l, binds[i], *bf16) != NULL;
  for (int i = 0; i < n && ok; i++) /* check all, then mark all */
    find_bind(l, binds[i])->lazy = 1;
  free(binds);
  return ok;
}

static int build_panels(vlm_clip *clip, const spec_list *l, int bf16) {
  const vlm__clip_config *c = &clip->cfg;
  const int P = c->patch_size, KP = 3 * P * P;
  const int head = c->family == VLM__FAMILY_SIGLIP;
  size_t elems = tower_panel_elems(c->text_layers, c->text_width,
                                   c->text_mlp) +
                 tower_panel_elems(c->vision_layers + head, c->vision_width,
                                   c->vision_mlp) +
                 panel_elems(c->vision_width, KP);
  size_t bytes = elems * sizeof(uint16_t);
  size_t n_rows = (size_t)c->text_layers * (5 * c->text_width + c->text_mlp) +
                  (size_t)(c->vision_layers + head) *
                      (5 * c->vision_width + c->vision_mlp) +
                  (size_t)c->vision_width;
  int n_jobs = 4 * (c->text_layers + c->vision_layers + head) + 1;
  pack_plan plan = {0};
  plan.jobs = malloc((size_t)n_jobs * sizeof *plan.jobs);
  const uint16_t **rows = malloc(n_rows * sizeof *rows);
  void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!rows || !plan.jobs || mem == MAP_FAILED) {
    free(rows);
    free(plan.jobs);
    if (mem != MAP_FAILED)
      munmap(mem, bytes);
    return vlm_seterr(VLM_ENOMEM, "out of memory packing weights");
  }
  plan.rows = rows;
  plan.at = mem;
  const uint16_t *patch = NULL;
  vlm__block *vh = &clip->w.vhead;
  int bad = plan_tower(l, bf16, c->text_layers, c->text_width, c->text_mlp,
                       clip->w.tblocks, &plan) ||
            plan_tower(l, bf16, c->vision_layers, c->vision_width,
                       c->vision_mlp, clip->w.vblocks, &plan) ||
            (head && (plan_one(l, &clip->w.head_in_w, bf16,
                               3 * c->vision_width, c->vision_width, &plan,
                               &vh->p_qkv) ||
                      plan_rest(l, bf16, c->vision_width, c->vision_mlp, vh,
                                &plan))) ||
            plan_one(l, &clip->w.patch_w, bf16, c->vision_width, KP, &plan,
                     &patch);
  if (!bad) {
    pthread_t th[64];
    int started = 0;
    pthread_mutex_init(&plan.mu, NULL);
    for (int t = 1; t < clip->threads && t < 64; t++)
      if (!pthread_create(&th[started], NULL, pack_worker, &plan))
        started++;
    pack_worker(&plan);
    for (int t = 0; t < started; t++)
      pthread_join(th[t], NULL);
    pthread_mutex_destroy(&plan.mu);
  }
  free(rows);
  free(plan.jobs);
  if (bad) { /* panels_possible checked every source: cannot happen */
    munmap(mem, bytes);
    return vlm_seterr(VLM_ECORRUPT, "%s: weights changed while packing",
                      clip->st->path);
  }
  mprotect(mem, bytes, PROT_READ);
  clip->panels = mem;
  clip->panels_bytes = bytes;
  clip->panels_bf16 = bf16;
  clip->w.p_patch = patch;
  return 0;
}

/* ---- int8 / bf16 compute (quant.h) ------------------------------------ */

/* With int8 / bf16 compute the blocks have their own packed layers; the
 * patch embedding stays exact, and runs on the panel kernel as the exact
 * path's does when the file holds it in F16 / BF16 (else sgemm). */
static int build_patch_panel(vlm_clip *clip, const spec_list *l) {
  const vlm__clip_config *c = &clip->cfg;
  const char *env = getenv("VLMDB_CLIP_PANELS");
  spec *probe = find_bind(l, &clip->w.patch_w);
  if (!vlm__panels_supported() || (env && !strcmp(env, "0")) ||
      c->vision_width % 16 || !probe ||
      (probe->t->dtype != VLM__DT_F16 && probe->t->dtype != VLM__DT_BF16))
    return 0;
  const int bf16 = probe->t->dtype == VLM__DT_BF16;
  const int N = c->vision_width, K = 3 * c->patch_size * c->patch_size;
  size_t bytes = panel_elems(N, K) * sizeof(uint16_t);
  pack_job job;
  pack_plan plan = {.jobs = &job};
  const uint16_t **rows = malloc((size_t)N * sizeof *rows), *patch = NULL;
  void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!rows || mem == MAP_FAILED) {
    free(rows);
    if (mem != MAP_FAILED)
      munmap(mem, bytes);
    return vlm_seterr(VLM_ENOMEM, "out of memory packing weights");
  }
  plan.rows = rows;
  plan.at = mem;
  if (plan_one(l, &clip->w.patch_w, bf16, N, K, &plan, &patch)) {
    free(rows);
    munmap(mem, bytes);
    return 0; /* not in 16-bit form: sgemm on the F32 copy */
  }
  vlm__panel_pack(job.dst, job.rows, job.N, job.K);
  free(rows);
  mprotect(mem, bytes, PROT_READ);
  clip->panels = mem;
  clip->panels_bytes = bytes;
  clip->panels_bf16 = bf16;
  clip->w.p_patch = patch;
  return 0;
}

/* An I8 tensor must be a matrix with "<name>_scale", F32 [rows], beside
 * it, and may have "<name>_smooth", F32 [cols], all positive and finite
 * (as vlm_clip_quantize writes). */
static int check_i8(const vlm__safetensors *st, const vlm__st_tensor *t,
                    const char *path, const vlm__st_tensor **scale,
                    const vlm__st_tensor **smooth) {
  char name[512];
  snprintf(name, sizeof name, "%s_smooth", t->name);
  const vlm__st_tensor *sm = vlm__st_find(st, name);
  *smooth = NULL;
  if (sm && t->ndim == 2) {
    if (sm->dtype != VLM__DT_F32 || sm->ndim != 1 ||
        sm->shape[0] != t->shape[1])
      return vlm_seterr(VLM_EMISMATCH, "%s: %s must be F32 [%lld]", path,
                        name, (long long)t->shape[1]);
    if (sm->shape[0] > VLM__QSMOOTH_MAX_K)
      return vlm_seterr(VLM_EUNSUPPORTED, "%s: %s: smoothing of inputs "
                        "wider than %d", path, name, VLM__QSMOOTH_MAX_K);
    for (int64_t k = 0; k < sm->shape[0]; k++) {
      float v;
      memcpy(&v, (const char *)sm->data + k * 4, 4);
      if (!(v > 0 && v < 3.0e38f))
        return vlm_seterr(VLM_ECORRUPT, "%s: %s[%lld] is %g (a smoothing "
                          "factor is positive and finite)", path, name,
                          (long long)k, (double)v);
    }
    *smooth = sm;
  }
  snprintf(name, sizeof name, "%s_scale", t->name);
  const vlm__st_tensor *sc = vlm__st_find(st, name);
  if (t->ndim != 2)
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: I8 tensor %s is not a matrix",
                      path, t->name);
  if (!sc)
    return vlm_seterr(VLM_ENOTFOUND, "%s: I8 tensor %s has no %s", path,
                      t->name, name);
  if (sc->dtype != VLM__DT_F32 || sc->ndim != 1 || sc->shape[0] != t->shape[0])
    return vlm_seterr(VLM_EMISMATCH, "%s: %s must be F32 [%lld]", path, name,
                      (long long)t->shape[0]);
  *scale = sc;
  return 0;
}

/* The compute mode: the load option, else VLMDB_CLIP_COMPUTE, else the
 * file's "vlmdb.quantization", else exact. */
static int parse_compute(const char *s, vlm__compute *out) {
  if (!strcmp(s, "exact"))
    *out = VLM__COMPUTE_EXACT;
  else if (!strcmp(s, "bf16"))
    *out = VLM__COMPUTE_BF16;
  else if (!strcmp(s, "int8"))
    *out = VLM__COMPUTE_INT8;
  else
    return -1;
  return 0;
}

static int resolve_compute(vlm_clip *clip, const char *path) {
  const char *env = getenv("VLMDB_CLIP_COMPUTE");
  const char *meta = clip->st->quantization;
  clip->compute = VLM__COMPUTE_EXACT;
  switch (clip->opts.compute) {
  case VLM_COMPUTE_EXACT:
    return 0;
  case VLM_COMPUTE_BF16:
    clip->compute = VLM__COMPUTE_BF16;
    return 0;
  case VLM_COMPUTE_INT8:
    clip->compute = VLM__COMPUTE_INT8;
    return 0;
  case VLM_COMPUTE_MODEL:
    break;
  default:
    return vlm_seterr(VLM_EINVAL, "compute mode %d", (int)clip->opts.compute);
  }
  if (env && *env) {
    if (parse_compute(env, &clip->compute))
      return vlm_seterr(VLM_EINVAL, "VLMDB_CLIP_COMPUTE=%s (exact, bf16 or "
                        "int8)", env);
    return 0;
  }
  if (meta && parse_compute(meta, &clip->compute))
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: vlmdb.quantization \"%s\" "
                      "(known: int8, bf16)", path, meta);
  return 0;
}

/* The binds of a block's Linear weights: q, k, v, out, fc1, fc2. */
static void block_binds(vlm__block *b, const float *const **m) {
  m[0] = &b->q_w;
  m[1] = &b->k_w;
  m[2] = &b->v_w;
  m[3] = &b->o_w;
  m[4] = &b->fc1_w;
  m[5] = &b->fc2_w;
}

/* Quantized compute: the blocks' Linear weights get no F32 copy. */
static void mark_quantized(vlm_clip *clip, spec_list *l) {
  const vlm__clip_config *c = &clip->cfg;
  for (int t = 0; t < 2; t++) {
    int L = t ? c->vision_layers : c->text_layers;
    for (int i = 0; i < L; i++) {
      const float *const *m[6];
      block_binds(t ? &clip->w.vblocks[i] : &clip->w.tblocks[i], m);
      for (int k = 0; k < 6; k++) {
        spec *s = find_bind(l, m[k]);
        if (s)
          s->lazy = 1;
      }
    }
  }
}

/* Row n (K values) of the matrix a spec binds: as int8 from an I8 file
 * tensor when q8 is not NULL (*q8 and *scale set, returns 1), else as F32
 * into f (an I8 one dequantized; returns 0). */
static int spec_row(const spec *s, int n, int K, float *f, const int8_t **q8,
                    float *scale) {
  int64_t first = (s->kind == SRC_ROWS ? s->offset : 0) + (int64_t)n * K;
  if (q8 && s->t->dtype == VLM__DT_I8 && s->kind != SRC_TRANSPOSE) {
    *q8 = (const int8_t *)s->t->data + first;
    memcpy(scale, (const char *)s->scale->data + (size_t)(first / K) * 4, 4);
    return 1;
  }
  if (s->kind == SRC_TRANSPOSE) { /* never for block weights; kept whole */
    int64_t rows = s->t->shape[0];
    for (int k = 0; k < K; k++)
      read_f32(&f[k], s->t, s->scale, s->smooth, (int64_t)k * rows + n, 1);
    return 0;
  }
  read_f32(f, s->t, s->scale, s->smooth, first, K);
  return 0;
}

/* One quantized layer from up to three stacked matrices (q, k, v) of N
 * rows each.  int8 keeps an I8 file's values (the file's scales), and
 * quantizes float ones here exactly as vlm_clip_quantize does. */
static int build_one(vlm_clip *clip, vlm__qlinear *q, const spec *const *parts,
                     int nparts, const float *const *biases, int N, int K) {
  /* an int8 file's BF16 block weights run bf16 (mixed precision) */
  const int mixed_bf16 = clip->st->quantization &&
                         !strcmp(clip->st->quantization, "int8") &&
                         parts[0]->t->dtype == VLM__DT_BF16;
  const int rows = N * nparts,
            int8 = clip->compute == VLM__COMPUTE_INT8 && !mixed_bf16;
  /* The parts of one layer (q, k, v) share its input, so they share one
   * precision, and one smoothing (SmoothQuant) or none: an int8 product
   * divides its input by it (the file's weights were multiplied by it). */
  const vlm__st_tensor *sm0 = parts[0]->t->dtype == VLM__DT_I8
                                  ? parts[0]->smooth : NULL;
  for (int p = 1; p < nparts; p++) {
    const vlm__st_tensor *sm = parts[p]->t->dtype == VLM__DT_I8
                                   ? parts[p]->smooth : NULL;
    if ((parts[p]->t->dtype == VLM__DT_BF16) !=
        (parts[0]->t->dtype == VLM__DT_BF16) && mixed_bf16)
      return vlm_seterr(VLM_ECORRUPT, "%s and %s: one layer's weights in "
                        "BF16 and %s", parts[0]->t->name, parts[p]->t->name,
                        vlm__dtype_name(parts[p]->t->dtype));
    if (!sm0 != !sm || (sm && memcmp(sm->data, sm0->data, (size_t)K * 4)))
      return vlm_seterr(VLM_ECORRUPT, "%s and %s: one layer's weights with "
                        "different smoothing", parts[0]->t->name,
                        parts[p]->t->name);
  }
  float *f = malloc((size_t)rows * K * sizeof *f);
  int8_t *q8 = int8 ? malloc((size_t)rows * K) : NULL;
  float *scale = malloc((size_t)rows * sizeof *scale);
  float *bias = malloc((size_t)rows * sizeof *bias);
  const void **rowp = malloc((size_t)rows * sizeof *rowp);
  int rc = 0, has_bias = 1;
  if (!f || (int8 && !q8) || !scale || !bias || !rowp) {
    rc = vlm_seterr(VLM_ENOMEM, "out of memory quantizing weights");
    goto done;
  }
  for (int p = 0; p < nparts; p++) {
    if (!biases[p])
      has_bias = 0;
    else
      memcpy(bias + (size_t)p * N, biases[p], (size_t)N * sizeof *bias);
    for (int n = 0; n < N; n++) {
      int r = p * N + n;
      const int8_t *src8 = NULL;
      float *fr = f + (size_t)r * K;
      /* bf16 compute reads an I8 file's rows dequantized (and divided
       * by their smoothing) */
      if (spec_row(parts[p], n, K, fr, int8 ? &src8 : NULL, &scale[r])) {
        rowp[r] = src8;
        continue;
      }
      if (int8) {
        scale[r] = vlm__q8_quantize_row(q8 + (size_t)r * K, fr, K);
        rowp[r] = q8 + (size_t)r * K;
        continue;
      }
      rowp[r] = fr;
    }
  }
  if (!int8) {
    rc = vlm__qlinear_init_bf16(q, (const float *const *)rowp,
                                has_bias ? bias : NULL, rows, K);
    goto done;
  }
  if ((rc = vlm__qlinear_init_int8(q, (const int8_t *const *)rowp, scale,
                                   has_bias ? bias : NULL, rows, K)) ||
      !sm0)
    goto done;
  if (!(q->ismooth = malloc((size_t)K * sizeof *q->ismooth))) {
    rc = vlm_seterr(VLM_ENOMEM, "out of memory quantizing weights");
    goto done;
  }
  for (int k = 0; k < K; k++) {
    float d;
    memcpy(&d, (const char *)sm0->data + (size_t)k * 4, 4);
    q->ismooth[k] = 1.0f / d;
  }
done:
  free(f);
  free(q8);
  free(scale);
  free(bias);
  free(rowp);
  return rc;
}

static int build_qlinears(vlm_clip *clip, const spec_list *l) {
  const vlm__clip_config *c = &clip->cfg;
  int total = 4 * (c->text_layers + c->vision_layers);
  clip->qlin = calloc((size_t)total, sizeof *clip->qlin);
  clip->qlin_src = calloc((size_t)total, sizeof *clip->qlin_src);
  if (!clip->qlin || !clip->qlin_src)
    return vlm_seterr(VLM_ENOMEM, "out of memory quantizing weights");
  for (int t = 0; t < 2; t++) {
    int L = t ? c->vision_layers : c->text_layers;
    int C = t ? c->vision_width : c->text_width;
    int F = t ? c->vision_mlp : c->text_mlp;
    for (int i = 0; i < L; i++) {
      vlm__block *b = t ? &clip->w.vblocks[i] : &clip->w.tblocks[i];
      const float *const *m[6];
      const spec *sp[6];
      block_binds(b, m);
      for (int k = 0; k < 6; k++)
        if (!(sp[k] = find_bind(l, m[k])))
          return vlm_seterr(VLM_ECORRUPT, "internal: layer %d has no weight "
                            "%d", i, k);
      vlm__qlinear *q = &clip->qlin[clip->n_qlin];
      const float *qkv_b[3] = {b->q_b, b->k_b, b->v_b};
      int rc;
      /* count each layer as soon as it holds memory, so a failure frees it */
      if ((rc = build_one(clip, q, sp, 3, qkv_b, C, C)))
        return rc;
      clip->n_qlin++;
      if ((rc = build_one(clip, q + 1, sp + 3, 1, &b->o_b, C, C)))
        return rc;
      clip->n_qlin++;
      if ((rc = build_one(clip, q + 2, sp + 4, 1, &b->fc1_b, F, C)))
        return rc;
      clip->n_qlin++;
      if ((rc = build_one(clip, q + 3, sp + 5, 1, &b->fc2_b, C, F)))
        return rc;
      clip->n_qlin++;
      int at = (int)(q - clip->qlin);
      for (int k = 0; k < 3; k++)
        clip->qlin_src[at][k] = sp[k]->t;
      clip->qlin_src[at + 1][0] = sp[3]->t;
      clip->qlin_src[at + 2][0] = sp[4]->t;
      clip->qlin_src[at + 3][0] = sp[5]->t;
      b->ql_qkv = q;
      b->ql_o = q + 1;
      b->ql_fc1 = q + 2;
      b->ql_fc2 = q + 3;
    }
  }
  return 0;
}

static int cmp_named(const void *a, const void *b) {
  return strcmp(((const vlm__named_tensor *)a)->name,
                ((const vlm__named_tensor *)b)->name);
}

int vlm__weights_load(vlm_clip *clip, const char *path) {
  int rc = 0;
  spec_list l = {0};
  const vlm__st_tensor **src_done = NULL;
  const float **src_data = NULL;
  vlm__clip_config *c = &clip->cfg;

  if ((rc = vlm__st_open(path, &clip->st)))
    return rc;
  vlm__safetensors *st = clip->st;
  /* SigLIP and Chinese-CLIP come in the Hugging Face layout only (a
   * missing tensor is then named by the list below). */
  if (c->family != VLM__FAMILY_CLIP ||
      vlm__st_find(st, "vision_model.embeddings.patch_embedding.weight") ||
      vlm__st_find(st, "text_model.embeddings.token_embedding.weight")) {
    clip->layout = VLM__LAYOUT_HF;
    if (c->vision_width == 0) {
      rc = vlm_seterr(VLM_ENOTFOUND, "%s: the Hugging Face layout needs "
                      "config.json beside it", path);
      goto fail;
    }
  } else if (vlm__st_find(st, "visual.conv1.weight") ||
             vlm__st_find(st, "token_embedding.weight")) {
    clip->layout = VLM__LAYOUT_ORIGINAL;
    if ((rc = infer_original(st, c)))
      goto fail;
  } else {
    rc = vlm_seterr(VLM_EFORMAT, "%s: not a CLIP checkpoint (no "
                    "vision_model.embeddings.patch_embedding.weight or "
                    "visual.conv1.weight)", path);
    goto fail;
  }
  if ((rc = vlm__config_validate(c, path)))
    goto fail;

  clip->w.vblocks = calloc((size_t)c->vision_layers, sizeof(vlm__block));
  clip->w.tblocks = calloc((size_t)c->text_layers, sizeof(vlm__block));
  if (!clip->w.vblocks || !clip->w.tblocks)
    goto nomem;
  model_specs(&l, clip->layout, c, &clip->w);
  if (l.failed)
    goto nomem;

  /* 1. Find and check every tensor; size the arena. */
  size_t arena_floats = 0;
  src_done = calloc((size_t)l.n, sizeof *src_done);
  src_data = calloc((size_t)l.n, sizeof *src_data);
  if (!src_done || !src_data)
    goto nomem;
  int n_src = 0;
  for (int i = 0; i < l.n; i++) {
    spec *s = &l.v[i];
    const vlm__st_tensor *t = vlm__st_find(st, s->src);
    if (!t) {
      rc = vlm_seterr(VLM_ENOTFOUND, "%s: missing tensor %s", path, s->src);
      goto fail;
    }
    if (t->dtype == VLM__DT_I8 &&
        (rc = check_i8(st, t, path, &s->scale, &s->smooth)))
      goto fail;
    if (t->dtype != VLM__DT_F32 && t->dtype != VLM__DT_F16 &&
        t->dtype != VLM__DT_BF16 && t->dtype != VLM__DT_I8) {
      rc = vlm_seterr(VLM_EUNSUPPORTED, "%s: tensor %s has dtype %s "
                      "(supported: F32, F16, BF16, I8 with scales)", path,
                      s->src, vlm__dtype_name(t->dtype));
      goto fail;
    }
    int same = t->ndim == s->src_ndim;
    for (int d = 0; same && d < t->ndim; d++)
      same = t->shape[d] == s->src_shape[d];
    if (s->src_ndim == 0 && t->ndim == 1 && t->shape[0] == 1)
      same = 1; /* a scalar saved as [1] */
    if (!same) {
      char got[96], want[96];
      format_shape(got, sizeof got, t->ndim, t->shape);
      format_shape(want, sizeof want, s->src_ndim, s->src_shape);
      rc = vlm_seterr(VLM_EMISMATCH, "%s: tensor %s has shape %s but the "
                      "model's configuration needs %s", path, s->src, got,
                      want);
      goto fail;
    }
    s->t = t;
  }
  if ((rc = resolve_compute(clip, path)))
    goto fail;
  int bf16 = 0, use_panels = 0;
  if (clip->compute == VLM__COMPUTE_EXACT)
    use_panels = panels_possible(clip, &l, &bf16);
  else
    mark_quantized(clip, &l);
  for (int i = 0; i < l.n; i++) {
    spec *s = &l.v[i];
    const vlm__st_tensor *t = s->t;
    if (s->lazy)
      continue;
    int seen = 0;
    for (int j = 0; j < n_src && !seen; j++)
      seen = src_done[j] == t;
    if (!seen) {
      src_done[n_src++] = t;
      if (!in_place(t) && s->kind != SRC_TRANSPOSE)
        arena_floats += ((size_t)t->numel + 15) & ~(size_t)15;
    }
    if (s->kind == SRC_TRANSPOSE)
      arena_floats += ((size_t)t->numel + 15) & ~(size_t)15;
  }

  /* 2. One arena for everything converted.  Anonymous memory, so pages
   * the model never touches cost nothing. */
  if (arena_floats) {
    clip->arena_bytes = arena_floats * sizeof(float);
    void *a = mmap(NULL, clip->arena_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) {
      clip->arena_bytes = 0;
      goto nomem;
    }
    clip->arena = a;
  }

  /* 3. Convert each source once, in list order, then bind. */
  size_t used = 0;
  memset(src_done, 0, (size_t)l.n * sizeof *src_done);
  n_src = 0;
  for (int i = 0; i < l.n; i++) {
    spec *s = &l.v[i];
    const vlm__st_tensor *t = s->t;
    const float *data = NULL;
    int j;
    if (s->lazy) {
      s->data = NULL;
      continue;
    }
    for (j = 0; j < n_src; j++)
      if (src_done[j] == t)
        break;
    if (s->kind == SRC_TRANSPOSE) {
      float *dst = clip->arena + used;
      used += ((size_t)t->numel + 15) & ~(size_t)15;
      int64_t rows = t->shape[0], cols = t->shape[1];
      float *row = malloc((size_t)cols * sizeof *row);
      if (!row)
        goto nomem;
      for (int64_t r = 0; r < rows; r++) {
        read_f32(row, t, s->scale, s->smooth, r * cols, cols);
        for (int64_t k = 0; k < cols; k++)
          dst[k * rows + r] = row[k];
      }
      free(row);
      s->data = dst;
      continue;
    }
    if (j < n_src) {
      data = src_data[j];
    } else if (in_place(t)) {
      data = t->data;
    } else {
      float *dst = clip->arena + used;
      used += ((size_t)t->numel + 15) & ~(size_t)15;
      read_f32(dst, t, s->scale, s->smooth, 0, t->numel);
      data = dst;
    }
    if (j == n_src) {
      src_done[n_src] = t;
      src_data[n_src++] = data;
    }
    s->data = data + (s->kind == SRC_ROWS ? s->offset : 0);
  }

  /* 4. Bind the towers and the name table. */
  clip->named = calloc((size_t)l.n, sizeof *clip->named);
  if (!clip->named)
    goto nomem;
  for (int i = 0; i < l.n; i++) {
    spec *s = &l.v[i];
    *s->bind = s->data;
    int64_t numel = 1;
    for (int d = 0; d < s->ndim; d++)
      numel *= s->shape[d];
    clip->named[i].name = strdup(s->hf);
    clip->named[i].data = s->data;
    clip->named[i].numel = numel;
    clip->named[i].lazy = s->lazy;
    clip->named[i].src = s->t;
    clip->named[i].scale = s->scale;
    clip->named[i].smooth = s->smooth;
    clip->named[i].src_offset = s->kind == SRC_ROWS ? s->offset : 0;
    clip->n_named = i + 1;
    if (!clip->named[i].name)
      goto nomem;
  }
  qsort(clip->named, (size_t)clip->n_named, sizeof *clip->named, cmp_named);
  c->logit_scale = *clip->w.logit_scale;
  c->logit_bias = clip->w.logit_bias ? *clip->w.logit_bias : 0.0f;
  if (c->family == VLM__FAMILY_SIGLIP) {
    /* the pooling head's q, k, v: row blocks of its one in_proj (no F32
     * copy of the weight when it is packed) */
    vlm__weights *w = &clip->w;
    size_t C = (size_t)c->vision_width;
    w->vhead.q_w = w->head_in_w;
    w->vhead.k_w = w->head_in_w ? w->head_in_w + C * C : NULL;
    w->vhead.v_w = w->head_in_w ? w->head_in_w + 2 * C * C : NULL;
    w->vhead.q_b = w->head_in_b;
    w->vhead.k_b = w->head_in_b + C;
    w->vhead.v_b = w->head_in_b + 2 * C;
    w->vhead.qkv_fused = 1;
  }
  for (int t = 0; t < 2; t++) {
    int L = t ? c->vision_layers : c->text_layers;
    size_t C = (size_t)(t ? c->vision_width : c->text_width);
    for (int i = 0; i < L; i++) {
      vlm__block *b = t ? &clip->w.vblocks[i] : &clip->w.tblocks[i];
      /* With panels the weights have no F32 copy; the packed [q; k; v]
       * matrix is fused by construction. */
      int biases = b->k_b == b->q_b + C && b->v_b == b->k_b + C;
      b->qkv_fused = biases && (use_panels || (b->k_w == b->q_w + C * C &&
                                               b->v_w == b->k_w + C * C));
      if (clip->compute != VLM__COMPUTE_EXACT)
        b->qkv_fused = 1; /* one packed [q; k; v] with its own bias */
      if (use_panels && !biases) {
        rc = vlm_seterr(VLM_ECORRUPT, "%s: internal: q/k/v biases of layer "
                        "%d are not adjacent", path, i);
        goto fail;
      }
    }
  }
  if (clip->arena)
    mprotect(clip->arena, clip->arena_bytes, PROT_READ);
  if (use_panels && (rc = build_panels(clip, &l, bf16)))
    goto fail;
  if (clip->compute != VLM__COMPUTE_EXACT &&
      ((rc = build_qlinears(clip, &l)) || (rc = build_patch_panel(clip, &l))))
    goto fail;
  goto done;

nomem:
  rc = vlm_seterr(VLM_ENOMEM, "%s: out of memory loading weights", path);
fail:
  vlm__weights_free(clip);
done:
  free(l.v);
  free(src_done);
  free(src_data);
  return rc;
}

void vlm__weights_free(vlm_clip *clip) {
  for (int i = 0; i < clip->n_named; i++) {
    free(clip->named[i].name);
    free(clip->named[i].owned);
  }
  free(clip->named);
  clip->named = NULL;
  clip->n_named = 0;
  if (clip->arena)
    munmap(clip->arena, clip->arena_bytes);
  clip->arena = NULL;
  clip->arena_bytes = 0;
  if (clip->panels)
    munmap(clip->panels, clip->panels_bytes);
  clip->panels = NULL;
  clip->panels_bytes = 0;
  for (int i = 0; i < clip->n_qlin; i++)
    vlm__qlinear_free(&clip->qlin[i]);
  free(clip->qlin);
  clip->qlin = NULL;
  free(clip->qlin_src);
  clip->qlin_src = NULL;
  clip->n_qlin = 0;
  free(clip->w.vblocks);
  free(clip->w.tblocks);
  memset(&clip->w, 0, sizeof clip->w);
  vlm__st_close(clip->st);
  clip->st = NULL;
}

const vlm__clip_config *vlm__clip_get_config(const vlm_clip *clip) {
  return clip ? &clip->cfg : NULL;
}

const float *vlm__clip_tensor(const vlm_clip *clip, const char *hf_name,
                              int64_t *numel) {
  if (!clip || !hf_name || !clip->named)
    return NULL;
  vlm__named_tensor key = {.name = (char *)hf_name};
  const vlm__named_tensor *t =
      bsearch(&key, clip->named, (size_t)clip->n_named, sizeof *clip->named,
              cmp_named);
  if (!t)
    return NULL;
  if (numel)
    *numel = t->numel;
  if (!t->lazy)
    return t->data;
  vlm_clip *m = (vlm_clip *)clip; /* converted once, under the lock */
  vlm__named_tensor *mt = (vlm__named_tensor *)t;
  pthread_mutex_lock(&m->lazy_lock);
  if (!mt->owned) {
    float *buf = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *buf);
    if (buf) {
      read_f32(buf, t->src, t->scale, t->smooth, t->src_offset, t->numel);
      mt->owned = buf;
      mt->data = buf;
    }
  }
  const float *data = mt->owned;
  pthread_mutex_unlock(&m->lazy_lock);
  return data;
}

void vlm__named_read(const vlm__named_tensor *t, int64_t i, int64_t count,
                     float *dst) {
  if (t->lazy)
    read_f32(dst, t->src, t->scale, t->smooth, t->src_offset + i, count);
  else
    memcpy(dst, t->data + i, (size_t)count * sizeof *dst);
}
