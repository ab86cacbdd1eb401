/* train.c - the CLIP trainer (see vlm_train.h): setup, initialization,
 * the training loop and evaluation.  Its files are train_io.c's. */
#include "train_int.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tokenizer_spm.h"
#include "tokenizer_wp.h"
#include "vlm_clip.h"
#include "vlm_error.h"

double vlm__train_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void say(vlm__trainer *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(vlm__trainer *t, const char *fmt, ...) {
  va_list ap;
  if (t->o.log) {
    va_start(ap, fmt);
    vfprintf(t->o.log, fmt, ap);
    va_end(ap);
    fflush(t->o.log);
  }
  if (t->logfile) {
    va_start(ap, fmt);
    vfprintf(t->logfile, fmt, ap);
    va_end(ap);
    fflush(t->logfile);
  }
}

void vlm_train_options_default(vlm_train_options *o) {
  memset(o, 0, sizeof *o);
  o->epochs = 10;
  o->batch = 128;
  o->warmup_steps = -1;
  o->weight_decay = 0.1f;
  o->beta1 = 0.9f;
  o->beta2 = 0.98f;
  o->adam_eps = 1e-6f;
  o->grad_clip = 1.0f;
  o->seed = 1;
  o->crop_scale_min = 0.5f;
  o->jitter = 0.2f;
  o->cache_mb = 4096;
  o->alt_text_share = 0.5f;
  o->text_weight = 1;
  o->f16 = 1;
  o->log_every_s = 10;
}

void vlm_train_result_free(vlm_train_result *r) {
  if (!r)
    return;
  free(r->image_emb);
  free(r->text_emb);
  free(r->eval_index);
  r->image_emb = r->text_emb = NULL;
  r->eval_index = NULL;
}

/* ---- initialization ----------------------------------------------------- */

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

typedef struct {
  uint64_t s;
} rng;

static double rng_uniform(rng *r) {
  r->s += 0x9e3779b97f4a7c15ull;
  return (double)(mix64(r->s) >> 11) * (1.0 / 9007199254740992.0);
}

static double rng_normal(rng *r) {
  double u = rng_uniform(r), v = rng_uniform(r);
  return sqrt(-2 * log(1 - u)) * cos(6.283185307179586 * v);
}

/* A standard normal truncated to [-2, 2], as torch's trunc_normal_tf_. */
static double rng_trunc_normal(rng *r) {
  for (;;) {
    double z = rng_normal(r);
    if (z >= -2 && z <= 2)
      return z;
  }
}

typedef enum { INIT_FILL, INIT_NORMAL, INIT_UNIFORM, INIT_TRUNC } init_kind;

static int is_norm(const char *n) {
  return strstr(n, "layer_norm") || strstr(n, "layrnorm") ||
         strstr(n, "layernorm") || strstr(n, "LayerNorm");
}

/* Hugging Face's CLIPPreTrainedModel._init_weights (factor 1), except the
 * text position embedding: std 0.01 as open_clip.  Chinese-CLIP's vision
 * tower and projections are CLIP's. */
static void init_rule_clip(const vlm__clip_config *c, const vlm__tparam *t,
                           init_kind *kind, double *a) {
  const char *n = t->name;
  int vision = !strncmp(n, "vision_model.", 13);
  double C = vision ? c->vision_width : c->text_width;
  double layers = vision ? c->vision_layers : c->text_layers;
  double in_std = pow(C, -0.5) * pow(2 * (layers > 0 ? layers : 1), -0.5);
  *kind = INIT_NORMAL;
  if (is_norm(n)) {
    *kind = INIT_FILL;
    *a = strstr(n, ".weight") ? 1 : 0;
  } else if (strstr(n, ".bias")) {
    *kind = INIT_FILL;
    *a = 0;
  } else if (!strcmp(n, "logit_scale")) {
    *kind = INIT_FILL;
    *a = c->logit_scale;
  } else if (strstr(n, "token_embedding")) {
    *a = 0.02;
  } else if (strstr(n, "position_embedding")) {
    *a = vision ? 0.02 : 0.01;
  } else if (strstr(n, "class_embedding")) {
    *a = pow(C, -0.5);
  } else if (strstr(n, "patch_embedding")) {
    *a = 0.02;
  } else if (strstr(n, "q_proj") || strstr(n, "k_proj") ||
             strstr(n, "v_proj") || strstr(n, "fc2")) {
    *a = in_std;
  } else if (strstr(n, "out_proj")) {
    *a = pow(C, -0.5);
  } else if (strstr(n, "fc1")) {
    *a = pow(2 * C, -0.5);
  } else if (!strcmp(n, "visual_projection.weight")) {
    *a = pow(c->vision_width, -0.5);
  } else if (!strcmp(n, "text_projection.weight")) {
    *a = pow(c->text_width, -0.5);
  } else {
    *kind = INIT_FILL;
    *a = 0;
  }
}

/* ChineseCLIPPreTrainedModel._init_weights: the BERT text tower's linear
 * layers and embeddings N(0, initializer_range 0.02), biases 0; the rest
 * as CLIP's. */
static void init_rule_chinese_clip(const vlm__clip_config *c,
                                   const vlm__tparam *t, init_kind *kind,
                                   double *a) {
  const char *n = t->name;
  if (strncmp(n, "text_model.", 11) || is_norm(n)) {
    init_rule_clip(c, t, kind, a);
    return;
  }
  *kind = strstr(n, ".bias") ? INIT_FILL : INIT_NORMAL;
  *a = strstr(n, ".bias") ? 0 : 0.02;
}

/* SiglipPreTrainedModel._init_weights (transformers 4.44.2): embeddings
 * N(0, 1/width) (the vision positions) or flax's default (variance 1 /
 * fan_in), attention and MLP weights xavier-uniform (MLP biases N(0,
 * 1e-6)), the head's probe and in_proj xavier-uniform, other linear and
 * convolution weights lecun-normal (truncated), norms 1 and 0.  The
 * scalars start as the SigLIP paper's: logit_scale log 10, logit_bias -10
 * (transformers' _init_weights has log 1 and 0, which leaves a model from
 * scratch with a loss dominated by its negatives). */
static void init_rule_siglip(const vlm__clip_config *c, const vlm__tparam *t,
                             init_kind *kind, double *a) {
  const char *n = t->name;
  double fan_in = t->ndim >= 2 ? (double)t->shape[1] : 1;
  for (int d = 2; d < t->ndim; d++)
    fan_in *= (double)t->shape[d];
  double fan_out = t->ndim >= 1 ? (double)t->shape[0] : 1;
  for (int d = 2; d < t->ndim; d++)
    fan_out *= (double)t->shape[d];
  *kind = INIT_FILL;
  *a = 0;
  if (is_norm(n)) {
    *a = strstr(n, ".weight") ? 1 : 0;
  } else if (!strcmp(n, "logit_scale")) {
    *a = log(10.0);
  } else if (!strcmp(n, "logit_bias")) {
    *a = -10;
  } else if (!strcmp(n, "vision_model.embeddings.position_embedding.weight")) {
    *kind = INIT_NORMAL;
    *a = 1 / sqrt((double)c->vision_width);
  } else if (!strncmp(n, "text_model.embeddings.", 22)) {
    *kind = INIT_NORMAL;
    *a = sqrt(1 / fan_in);
  } else if (!strcmp(n, "vision_model.head.probe")) {
    *kind = INIT_UNIFORM; /* [1, 1, C]: fan_in = fan_out = C */
    *a = sqrt(6 / (2.0 * (double)t->shape[2]));
  } else if (strstr(n, ".bias")) {
    if (strstr(n, "mlp.fc")) {
      *kind = INIT_NORMAL;
      *a = 1e-6;
    } /* else 0: attention, in_proj, patch, head biases */
  } else if (strstr(n, "in_proj_weight") || strstr(n, "self_attn.") ||
             strstr(n, "mlp.fc")) {
    *kind = INIT_UNIFORM; /* xavier */
    *a = sqrt(6 / (fan_in + fan_out));
  } else {
    /* patch embedding, the head's out_proj, text_model.head: lecun */
    *kind = INIT_TRUNC;
    *a = sqrt(1 / fan_in) / 0.87962566103423978;
  }
}

static void init_scratch(const vlm__tlayout *L, float *p, uint64_t seed) {
  const vlm__clip_config *c = &L->cfg;
  for (int i = 0; i < L->nparams; i++) {
    const vlm__tparam *t = &L->params[i];
    init_kind kind;
    double a;
    if (c->family == VLM__FAMILY_SIGLIP)
      init_rule_siglip(c, t, &kind, &a);
    else if (c->family == VLM__FAMILY_CHINESE_CLIP)
      init_rule_chinese_clip(c, t, &kind, &a);
    else
      init_rule_clip(c, t, &kind, &a);
    rng r = {mix64(seed ^ mix64(0x696e6974ull + (uint64_t)i))};
    for (size_t j = 0; j < t->numel; j++) {
      double v = a;
      if (kind == INIT_NORMAL)
        v = rng_normal(&r) * a;
      else if (kind == INIT_UNIFORM)
        v = (2 * rng_uniform(&r) - 1) * a;
      else if (kind == INIT_TRUNC)
        v = rng_trunc_normal(&r) * a;
      p[t->offset + j] = (float)v;
    }
  }
}

/* A: kaiming-uniform (a = sqrt 5) = U(+-1/sqrt(in)), as PEFT; B: zero. */
static void init_lora(const vlm__tlayout *L, float *p, uint64_t seed) {
  for (int i = 0; i < L->nlora; i++) {
    const vlm__tparam *t = &L->lora[i];
    int is_a = strstr(t->name, "lora_A") != NULL;
    double bound = 1 / sqrt((double)t->shape[1]);
    rng r = {mix64(seed ^ mix64(0x6c6f7261ull + (uint64_t)i))};
    for (size_t j = 0; j < t->numel; j++)
      p[t->offset + j] =
          is_a ? (float)((2 * rng_uniform(&r) - 1) * bound) : 0.0f;
  }
}

static int init_from_model(vlm__trainer *t, vlm_clip *clip) {
  float *p = vlm__tmodel_params_f32(t->m);
  const char *text_pos =
      t->L->text_bert ? "text_model.embeddings.position_embeddings.weight"
                      : "text_model.embeddings.position_embedding.weight";
  for (int i = 0; i < t->L->nparams; i++) {
    const vlm__tparam *tp = &t->L->params[i];
    int64_t numel = 0;
    const float *src = vlm__clip_tensor(clip, tp->name, &numel);
    int64_t width = t->cfg.text_width;
    if (src && !strcmp(tp->name, text_pos) && numel % width == 0 &&
        (size_t)numel < tp->numel) { /* a longer context (--context) */
      memcpy(p + tp->offset, src, sizeof(float) * (size_t)numel);
      for (size_t j = (size_t)numel; j < tp->numel; j += (size_t)width)
        memcpy(p + tp->offset + j, src + numel - width,
               sizeof(float) * (size_t)width);
      continue;
    }
    if (!src && !strcmp(tp->name, "logit_scale")) {
      p[tp->offset] = vlm__clip_get_config(clip)->logit_scale;
      continue;
    }
    if (!src && !strcmp(tp->name, "logit_bias")) {
      p[tp->offset] = vlm__clip_get_config(clip)->logit_bias;
      continue;
    }
    if (!src)
      return vlm_seterr(VLM_ENOTFOUND, "%s: no tensor %s", t->o.init_dir,
                        tp->name);
    if ((size_t)numel != tp->numel)
      return vlm_seterr(VLM_EMISMATCH, "%s: %s has %lld elements, want %zu",
                        t->o.init_dir, tp->name, (long long)numel, tp->numel);
    memcpy(p + tp->offset, src, sizeof(float) * tp->numel);
  }
  return 0;
}

/* ---- optimizer ---------------------------------------------------------- */

float vlm__train_lr_at(const vlm__trainer *t, int64_t step) {
  const vlm_train_options *o = &t->o;
  if (step < t->warmup)
    return o->lr * (float)(step + 1) / (float)t->warmup;
  int64_t n = t->total_steps - t->warmup;
  double progress = n > 0 ? (double)(step - t->warmup) / n : 1;
  if (progress > 1)
    progress = 1;
  return (float)(o->min_lr +
                 0.5 * (o->lr - o->min_lr) * (1 + cos(M_PI * progress)));
}

/* ---- evaluation --------------------------------------------------------- */

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

/* Ranks (1 = best) of the matching column of each row of a @ b^T:
 * strictly better scores count, ties with earlier columns count too. */
static int ranks(const float *a, const float *b, int n, int D, int *rank) {
  int chunk = 256;
  float *s = malloc(sizeof(float) * (size_t)chunk * n);
  if (!s)
    return VLM_ENOMEM;
  for (int r0 = 0; r0 < n; r0 += chunk) {
    int rows = n - r0 < chunk ? n - r0 : chunk;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, D, 1,
                a + (size_t)r0 * D, D, b, D, 0, s, n);
    for (int i = 0; i < rows; i++) {
      const float *row = s + (size_t)i * n;
      int self = r0 + i, better = 0;
      float d = row[self];
      for (int j = 0; j < n; j++)
        if (row[j] > d || (row[j] == d && j < self))
          better++;
      rank[self] = better + 1;
    }
  }
  free(s);
  return 0;
}

static void recall_from_ranks(int *rank, int n, double r[3], double *median) {
  static const int ks[3] = {1, 5, 10};
  for (int k = 0; k < 3; k++) {
    int hits = 0;
    for (int i = 0; i < n; i++)
      hits += rank[i] <= ks[k];
    r[k] = n ? (double)hits / n : 0;
  }
  qsort(rank, (size_t)n, sizeof *rank, cmp_int);
  *median = n ? (n % 2 ? rank[n / 2] : 0.5 * (rank[n / 2 - 1] + rank[n / 2]))
              : 0;
}

/* Embed every held-out pair with the current weights and measure
 * Recall@K in both directions. */
static int evaluate(vlm__trainer *t) {
  if (!t->val)
    return 0;
  int n = vlm__tdata_count(t->val), D = t->cfg.projection_dim;
  int S = t->cfg.image_size, B = t->o.batch;
  size_t per = (size_t)3 * S * S;
  float *img = malloc(sizeof(float) * (size_t)n * D);
  float *txt = malloc(sizeof(float) * (size_t)n * D);
  float *pix = malloc(sizeof(float) * per * B);
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)B * t->cfg.context_length);
  int *off = malloc(sizeof(int) * B), *len = malloc(sizeof(int) * B);
  int *rank = malloc(sizeof(int) * (size_t)n);
  int rc = 0;
  if (!img || !txt || !pix || !ids || !off || !len || !rank) {
    rc = vlm_seterr(VLM_ENOMEM, "evaluation of %d pairs", n);
    goto done;
  }
  for (int i0 = 0; i0 < n; i0 += B) {
    int b = n - i0 < B ? n - i0 : B, pos = 0;
    for (int k = 0; k < b; k++) {
      memcpy(pix + k * per, vlm__tdata_pixels(t->val, i0 + k),
             sizeof(float) * per);
      const int32_t *tk;
      int tl;
      vlm__tdata_tokens(t->val, i0 + k, &tk, &tl);
      memcpy(ids + pos, tk, sizeof(int32_t) * tl);
      off[k] = pos;
      len[k] = tl;
      pos += tl;
    }
    vlm__ttexts tx = {b, ids, off, len};
    vlm__tmodel_images_f32(t->m, pix, b, img + (size_t)i0 * D);
    vlm__tmodel_texts_f32(t->m, &tx, txt + (size_t)i0 * D);
  }
  vlm_train_recall *r = &t->recall;
  r->n = n;
  if ((rc = ranks(img, txt, n, D, rank)))
    goto done;
  recall_from_ranks(rank, n, r->i2t, &r->i2t_median);
  if ((rc = ranks(txt, img, n, D, rank)))
    goto done;
  recall_from_ranks(rank, n, r->t2i, &r->t2i_median);
  free(t->eval_img);
  free(t->eval_txt);
  t->eval_img = img;
  t->eval_txt = txt;
  t->eval_n = n;
  img = txt = NULL;
done:
  free(img); free(txt); free(pix); free(ids); free(off); free(len);
  free(rank);
  return rc;
}

/* ---- setup -------------------------------------------------------------- */

static uint64_t key_hash(const char *key) { /* FNV-1a 64 */
  uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char *p = (const unsigned char *)key; p && *p; p++) {
    h ^= *p;
    h *= 0x100000001b3ull;
  }
  return h;
}

static int split_data(vlm__trainer *t) {
  const vlm_train_options *o = &t->o;
  if (o->val_items || o->val_fraction <= 0) {
    t->val_src = o->val_items;
    return 0;
  }
  t->train_items = calloc((size_t)o->n_items, sizeof *t->train_items);
  t->val_items = calloc((size_t)o->n_items, sizeof *t->val_items);
  t->val_src_index = calloc((size_t)o->n_items, sizeof *t->val_src_index);
  if (!t->train_items || !t->val_items || !t->val_src_index)
    return vlm_seterr(VLM_ENOMEM, "split");
  int nt = 0, nv = 0;
  for (int i = 0; i < o->n_items; i++) {
    /* held out when the key's hash falls in the lowest val_fraction */
    double u = (double)(key_hash(o->items[i].key) >> 11) / 9007199254740992.0;
    if (u < o->val_fraction) {
      t->val_src_index[nv] = i;
      t->val_items[nv++] = o->items[i];
    } else {
      t->train_items[nt++] = o->items[i];
    }
  }
  t->val_src = o->items;
  t->o.items = t->train_items;
  t->o.n_items = nt;
  t->o.val_items = t->val_items;
  t->o.n_val = nv;
  return 0;
}

static void trainer_free(vlm__trainer *t) {
  if (t->blas_threads_before > 0)
    openblas_set_num_threads(t->blas_threads_before);
  vlm__tmodel_free_f32(t->m);
  vlm__tlayout_free(t->L);
  vlm__tpool_free(t->pool);
  vlm__tokenizer_free(t->tok);
  vlm__spm_tok_free(t->spm);
  vlm__wp_tok_free(t->wp);
  vlm__tdata_free(t->train);
  vlm__tdata_free(t->val);
  vlm__ttext_free(t->text);
  free(t->train_items);
  free(t->val_items);
  free(t->val_src_index);
  free(t->adam_m);
  free(t->adam_v);
  free(t->decay);
  free(t->eval_img);
  free(t->eval_txt);
  if (t->logfile)
    fclose(t->logfile);
}

static int check_options(const vlm_train_options *o) {
  if (!o->out_dir || !*o->out_dir)
    return vlm_seterr(VLM_EINVAL, "no output directory");
  if (!o->items || o->n_items <= 0)
    return vlm_seterr(VLM_EINVAL, "no training pairs");
  if (o->init_dir && o->config_path)
    return vlm_seterr(VLM_EINVAL, "give an initial model or a config, not "
                                  "both");
  if (o->batch < 2)
    return vlm_seterr(VLM_EINVAL, "batch %d: the contrastive loss needs 2 or "
                                  "more pairs", o->batch);
  if (o->epochs < 1 && o->max_steps <= 0)
    return vlm_seterr(VLM_EINVAL, "epochs %d", o->epochs);
  if (o->val_fraction < 0 || o->val_fraction >= 1)
    return vlm_seterr(VLM_EINVAL, "held-out fraction %g not in [0, 1)",
                      o->val_fraction);
  if (o->lora_rank < 0 || o->lr < 0 || o->weight_decay < 0 ||
      o->beta1 < 0 || o->beta1 >= 1 || o->beta2 < 0 || o->beta2 >= 1 ||
      o->crop_scale_min <= 0 || o->crop_scale_min > 1 || o->jitter < 0 ||
      o->jitter >= 1)
    return vlm_seterr(VLM_EINVAL, "an optimizer or augmentation option is "
                                  "out of range");
  if (o->n_text_pairs > 0 &&
      (!o->text_pairs || o->text_batch < 0 || o->text_batch > o->batch / 2 ||
       o->text_rounds < 0 || o->text_rounds > 1024 ||
       !(o->text_weight >= 0) || !isfinite(o->text_weight)))
    return vlm_seterr(VLM_EINVAL, "text pairs: %d per step (at most half "
                      "the batch, %d), weight %g", o->text_batch,
                      o->batch / 2, (double)o->text_weight);
  return 0;
}

/* The family's tokenizer, from --tokenizer, else the initial model, else
 * (resuming) the output directory, where the export copied it:
 * vocab.json + merges.txt (CLIP), spiece.model or tokenizer.model
 * (SigLIP), vocab.txt (Chinese-CLIP). */
static int load_tokenizer(vlm__trainer *t, int resuming) {
  const vlm_train_options *o = &t->o;
  const vlm__family fam = t->cfg.family;
  const char *key = fam == VLM__FAMILY_SIGLIP         ? "spiece.model"
                    : fam == VLM__FAMILY_CHINESE_CLIP ? "vocab.txt"
                                                      : "vocab.json";
  const char *td = o->tokenizer_dir;
  char path[4200];
  int rc, vocab;
  if (!td && o->init_dir) {
    vlm__train_join_path(path, sizeof path, o->init_dir, key);
    int found = vlm__train_file_exists(path);
    if (!found && fam == VLM__FAMILY_SIGLIP) { /* SigLIP 2: Gemma's */
      vlm__train_join_path(path, sizeof path, o->init_dir, "tokenizer.model");
      found = vlm__train_file_exists(path);
    }
    if (found)
      td = o->init_dir;
  }
  if (!td && resuming)
    td = o->out_dir;
  if (!td)
    return vlm_seterr(VLM_EINVAL, "no tokenizer: give a directory with %s",
                      fam == VLM__FAMILY_SIGLIP
                          ? "spiece.model or tokenizer.model"
                      : fam == VLM__FAMILY_CHINESE_CLIP
                          ? "vocab.txt"
                          : "vocab.json and merges.txt");
  snprintf(t->tok_dir, sizeof t->tok_dir, "%s", td);
  if (fam == VLM__FAMILY_SIGLIP) {
    if ((rc = vlm__spm_tok_load(td, &t->spm)))
      return rc;
    if (vlm__spm_tok_pad(t->spm) < 0)
      return vlm_seterr(VLM_EUNSUPPORTED, "%s: the SentencePiece tokenizer "
                        "names no pad token (SigLIP pads every text to %d "
                        "ids)", td, t->cfg.context_length);
    vocab = vlm__spm_tok_vocab_size(t->spm);
  } else if (fam == VLM__FAMILY_CHINESE_CLIP) {
    if ((rc = vlm__wp_tok_load(td, &t->wp)))
      return rc;
    vocab = vlm__wp_tok_vocab_size(t->wp);
    /* the tokenizer's model_max_length limits texts, as vlm_clip_load
     * reads it (the export copies tokenizer_config.json) */
    vlm__train_join_path(path, sizeof path, td, "tokenizer_config.json");
    json_t *tc = json_load_file(path, 0, NULL);
    json_t *mx = tc ? json_object_get(tc, "model_max_length") : NULL;
    if (json_is_integer(mx) && json_integer_value(mx) >= 3 &&
        json_integer_value(mx) < 1 << 20)
      t->text_max_len = (int)json_integer_value(mx);
    json_decref(tc);
  } else {
    char merges[4200];
    if ((rc = vlm__train_join_path(path, sizeof path, td, "vocab.json")) ||
        (rc = vlm__train_join_path(merges, sizeof merges, td,
                                   "merges.txt")) ||
        (rc = vlm__tokenizer_load(path, merges, &t->tok)))
      return rc;
    vocab = vlm__tokenizer_vocab_size(t->tok);
    t->cfg.bos_id = vlm__tokenizer_bos(t->tok);
    t->cfg.eos_id = vlm__tokenizer_eos(t->tok);
  }
  if (vocab > t->cfg.vocab_size)
    return vlm_seterr(VLM_EMISMATCH, "tokenizer has %d tokens, model %d",
                      vocab, t->cfg.vocab_size);
  return 0;
}

static int setup(vlm__trainer *t, const vlm_train_options *opts) {
  int rc;
  char path[4200], ckpt[4200];
  t->o = *opts;
  vlm_train_options *o = &t->o;
  if ((rc = check_options(o)) || (rc = vlm__train_mkdir_p(o->out_dir)))
    return rc;
  if ((rc = vlm__train_join_path(path, sizeof path, o->out_dir, "train.log")))
    return rc;
  t->logfile = fopen(path, "a");
  if ((rc = vlm__train_join_path(ckpt, sizeof ckpt, o->out_dir,
                      "checkpoint/state.safetensors")))
    return rc;
  json_t *meta = NULL;
  int resuming = 0;
  if (vlm__train_file_exists(ckpt)) {
    if (!o->resume)
      return vlm_seterr(VLM_EEXISTS,
                        "%s holds a training checkpoint: resume it or "
                        "choose another output directory",
                        o->out_dir);
    if ((rc = vlm__train_read_checkpoint_meta(ckpt, &meta)))
      return rc;
    resuming = 1;
  }
  /* geometry: the checkpoint's, the initial model's or the config's */
  vlm_clip *clip = NULL;
  if (resuming) {
    json_error_t e;
    json_t *c = json_loads(vlm__train_meta_get(meta, "config")
                               ? vlm__train_meta_get(meta, "config")
                               : "",
                           0, &e);
    rc = c ? vlm__train_parse_config(c, ckpt, &t->cfg)
           : vlm_seterr(VLM_EFORMAT, "%s: bad config", ckpt);
    json_decref(c);
    if (!rc) {
      json_t *opt = json_loads(vlm__train_meta_get(meta, "options")
                                   ? vlm__train_meta_get(meta, "options")
                                   : "",
                               0, &e);
      rc = vlm__train_apply_saved_options(t, opt, ckpt);
      json_decref(opt);
    }
    /* mean/std: from the exported preprocessor config, which we wrote */
    if (!rc && o->init_dir) {
      /* nothing: weights come from the checkpoint */
    }
    if (rc) {
      json_decref(meta);
      return rc;
    }
  } else if (o->init_dir) {
    if ((rc = vlm_clip_load(o->init_dir, NULL, &clip)))
      return rc;
    t->cfg = *vlm__clip_get_config(clip);
    if (o->context_length > 0 && o->context_length < t->cfg.context_length) {
      vlm_clip_free(clip);
      return vlm_seterr(VLM_EINVAL, "context %d is shorter than the initial "
                        "model's %d", o->context_length,
                        t->cfg.context_length);
    }
  } else if (o->config_path) {
    if ((rc = vlm__train_load_config(o->config_path, &t->cfg)))
      return rc;
  } else {
    return vlm_seterr(VLM_EINVAL, "give an initial model (--init) or a "
                                  "geometry (--config)");
  }
  /* SigLIP's text tower reads exactly max_position_embeddings ids, the
   * padding included, and pools the last: a longer context would change
   * every text's input */
  if (!resuming && t->cfg.family == VLM__FAMILY_SIGLIP &&
      o->context_length > 0 && o->context_length != t->cfg.context_length) {
    rc = vlm_seterr(VLM_EUNSUPPORTED, "--context: a SigLIP model reads "
                    "exactly %d text positions (its texts are padded to "
                    "them and pooled at the last)", t->cfg.context_length);
    goto fail;
  }
  if (!resuming && o->context_length > 0)
    t->cfg.context_length = o->context_length;
  /* defaults that depend on the mode */
  if (o->lora_alpha <= 0)
    o->lora_alpha = 2.0f * (o->lora_rank > 0 ? o->lora_rank : 1);
  if (o->lr <= 0)
    o->lr = o->lora_rank > 0 ? 1e-4f : o->init_dir ? 1e-5f : 5e-4f;
  if ((rc = load_tokenizer(t, resuming)))
    goto fail;
  /* compute */
  int threads =
      o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (threads < 1)
    threads = 1;
  t->blas_threads_before = openblas_get_num_threads();
  openblas_set_num_threads(1); /* our pool splits the work */
  if ((rc = vlm__tpool_create(threads, &t->pool)) ||
      (rc = vlm__tlayout_create(&t->cfg, o->lora_rank, o->lora_alpha, &t->L)))
    goto fail;
  /* data */
  if ((rc = split_data(t)))
    goto fail;
  vlm__tdata_cfg dc = {
      .image_size = t->cfg.image_size,
      .augment = !o->no_augment,
      .crop_scale_min = o->crop_scale_min,
      .jitter = o->jitter,
      .hflip = o->hflip,
      .alt_text_share = o->alt_text_share,
      .alpha_white = o->alpha_white,
      .cache_bytes = (int64_t)(o->cache_mb > 0 ? o->cache_mb : 4096) << 20,
      .threads = threads,
      .loader_threads = o->loader_threads > 0 ? o->loader_threads : 1,
      .seed = o->seed,
      .context_length = t->cfg.context_length,
      .vocab_size = t->cfg.vocab_size,
      .family = t->cfg.family,
      .spm = t->spm,
      .wp = t->wp,
      .pad_id = t->spm ? vlm__spm_tok_pad(t->spm) : 0,
      .wp_max_len = t->text_max_len,
      .log = o->log};
  memcpy(dc.mean, t->cfg.mean, sizeof dc.mean);
  memcpy(dc.std, t->cfg.std, sizeof dc.std);
  double t0 = vlm__train_now();
  if ((rc = vlm__tdata_open(&dc, o->items, o->n_items, t->tok, &t->train)))
    goto fail;
  if (o->val_items && o->n_val > 0) {
    dc.eval = 1;
    dc.augment = 0;
    if ((rc = vlm__tdata_open(&dc, o->val_items, o->n_val, t->tok, &t->val)))
      goto fail;
  }
  say(t, "vlmdb train: %d training pairs (%d skipped), %d held out, read in "
         "%.1f s; data digest %.16s\n",
      vlm__tdata_count(t->train), vlm__tdata_skipped(t->train),
      t->val ? vlm__tdata_count(t->val) : 0, vlm__train_now() - t0,
      vlm__tdata_digest(t->train));
  if (resuming && strcmp(vlm__train_meta_get(meta, "data_digest")
                             ? vlm__train_meta_get(meta, "data_digest") : "",
                         vlm__tdata_digest(t->train))) {
    rc = vlm_seterr(VLM_EMISMATCH, "%s: the training data differ from the "
                                   "checkpoint's (digest %.16s, now %.16s)",
                    ckpt, vlm__train_meta_get(meta, "data_digest"),
                    vlm__tdata_digest(t->train));
    goto fail;
  }
  if (o->batch > vlm__tdata_draws(t->train)) {
    say(t, "vlmdb train: batch %d reduced to the %d training pairs\n",
        o->batch, vlm__tdata_draws(t->train));
    o->batch = vlm__tdata_draws(t->train);
  }
  if (o->n_text_pairs > 0) {
    t0 = vlm__train_now();
    if ((rc = vlm__ttext_open(&dc, t->tok, o->text_pairs, o->n_text_pairs,
                              &t->text)))
      goto fail;
    t->text_P = o->text_batch > 0 ? o->text_batch : o->batch / 2;
    if (t->text_P > o->batch / 2)
      t->text_P = o->batch / 2;
    if (t->text_P > vlm__ttext_count(t->text))
      t->text_P = vlm__ttext_count(t->text);
    say(t, "vlmdb train: %d text pairs (%d skipped), %d x %d per step at "
           "weight %g, read in %.1f s; digest %.16s\n",
        vlm__ttext_count(t->text), vlm__ttext_skipped(t->text),
        o->text_rounds > 0 ? o->text_rounds : 1, t->text_P,
        (double)o->text_weight, vlm__train_now() - t0,
        vlm__ttext_digest(t->text));
    const char *was = resuming ? vlm__train_meta_get(meta, "text_digest")
                               : NULL;
    if (resuming && strcmp(was ? was : "", vlm__ttext_digest(t->text))) {
      rc = vlm_seterr(VLM_EMISMATCH, "%s: the text pairs differ from the "
                      "checkpoint's (digest %.16s, now %.16s)", ckpt,
                      was ? was : "none", vlm__ttext_digest(t->text));
      goto fail;
    }
  } else if (resuming && vlm__train_meta_get(meta, "text_digest") &&
             *vlm__train_meta_get(meta, "text_digest")) {
    rc = vlm_seterr(VLM_EMISMATCH, "%s: the checkpoint was trained with text "
                    "pairs; give them again to resume", ckpt);
    goto fail;
  }
  t->spe = vlm__tdata_draws(t->train) / o->batch;
  if (!resuming) {
    t->total_steps = o->max_steps > 0 ? o->max_steps
                                      : (int64_t)o->epochs * t->spe;
    t->warmup = o->warmup_steps >= 0
                    ? o->warmup_steps
                    : (int)(t->total_steps / 10 < 2000 ? t->total_steps / 10
                                                        : 2000);
  }
  /* model and optimizer state */
  if ((rc = vlm__tmodel_create_f32(t->L, t->pool, o->batch,
                                   (int64_t)o->batch * t->cfg.context_length,
                                   1, &t->m)))
    goto fail;
  int lora = t->L->lora_rank > 0;
  t->ntrain = lora ? t->L->lora_total : t->L->total;
  t->w = lora ? vlm__tmodel_lora_f32(t->m) : vlm__tmodel_params_f32(t->m);
  t->g = lora ? vlm__tmodel_lora_grads_f32(t->m) : vlm__tmodel_grads_f32(t->m);
  t->adam_m = calloc(t->ntrain, sizeof(float));
  t->adam_v = calloc(t->ntrain, sizeof(float));
  t->decay = calloc(t->ntrain, 1);
  if (!t->adam_m || !t->adam_v || !t->decay) {
    rc = vlm_seterr(VLM_ENOMEM, "optimizer state");
    goto fail;
  }
  if (!lora)
    for (int i = 0; i < t->L->nparams; i++)
      if (t->L->params[i].decay)
        memset(t->decay + t->L->params[i].offset, 1, t->L->params[i].numel);
  if (lora) /* adapters are matrices: decayed, as PEFT leaves them to AdamW */
    memset(t->decay, 1, t->ntrain);
  if (resuming) {
    if ((rc = vlm__train_load_checkpoint(t, ckpt)))
      goto fail;
    t->step = atoll(vlm__train_meta_get(meta, "step")
                        ? vlm__train_meta_get(meta, "step")
                        : "0");
    snprintf(t->resumed_from, sizeof t->resumed_from, "%lld",
             (long long)t->step);
    int saved_threads = atoi(vlm__train_meta_get(meta, "threads")
                                 ? vlm__train_meta_get(meta, "threads")
                                 : "0");
    if (saved_threads != threads)
      say(t, "vlmdb train: warning: checkpoint made with %d threads, now %d: "
             "the run stays valid but is no longer bit-identical to an "
             "uninterrupted one\n",
          saved_threads, threads);
    if ((rc = vlm__train_metrics_trim(t, t->step)))
      goto fail;
    say(t, "vlmdb train: resumed at step %lld of %lld\n", (long long)t->step,
        (long long)t->total_steps);
  } else if (clip) {
    if ((rc = init_from_model(t, clip)))
      goto fail;
  } else {
    init_scratch(t->L, vlm__tmodel_params_f32(t->m), o->seed);
  }
  if (lora && !resuming)
    init_lora(t->L, vlm__tmodel_lora_f32(t->m), o->seed);
  t->epochs_done = (int)(t->step / t->spe);
  vlm_clip_free(clip);
  json_decref(meta);
  return 0;
fail:
  vlm_clip_free(clip);
  json_decref(meta);
  return rc;
}

/* ---- the loop ----------------------------------------------------------- */

static void fmt_duration(char *buf, size_t n, double s) {
  if (!(s >= 0) || s > 1e8)
    snprintf(buf, n, "?");
  else if (s >= 3600)
    snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
  else
    snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
}

static int train_step(vlm__trainer *t, int64_t epoch, const float *pixels,
                      const int *pairs, double *loss_out, double *tloss_out) {
  int B = t->o.batch;
  const vlm__tlayout *L = t->L;
  int ctx = t->cfg.context_length;
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)B * ctx);
  int *off = malloc(sizeof(int) * B), *len = malloc(sizeof(int) * B);
  if (!ids || !off || !len) {
    free(ids); free(off); free(len);
    return vlm_seterr(VLM_ENOMEM, "step");
  }
  int pos = 0;
  for (int b = 0; b < B; b++) {
    const int32_t *tk;
    int tl;
    vlm__tdata_train_tokens(t->train, pairs[b], epoch, &tk, &tl);
    memcpy(ids + pos, tk, sizeof(int32_t) * tl);
    off[b] = pos;
    len[b] = tl;
    pos += tl;
  }
  vlm__ttexts tx = {B, ids, off, len};
  vlm__tmodel_zero_grads_f32(t->m);
  vlm__tmodel_images_f32(t->m, pixels, B, NULL);
  vlm__tmodel_texts_f32(t->m, &tx, NULL);
  float loss = vlm__tmodel_loss_f32(t->m);
  vlm__tmodel_backward_f32(t->m);
  free(ids); free(off); free(len);
  float tloss = 0;
  if (t->text) {
    int P = t->text_P;
    ids = malloc(sizeof(int32_t) * (size_t)2 * P * ctx);
    off = malloc(sizeof(int) * 2 * (size_t)P);
    len = malloc(sizeof(int) * 2 * (size_t)P);
    int *which = malloc(sizeof(int) * (size_t)P);
    if (!ids || !off || !len || !which) {
      free(ids); free(off); free(len); free(which);
      return vlm_seterr(VLM_ENOMEM, "step");
    }
    /* K rounds of P pairs, each its own in-batch negatives; their mean
     * loss has text_weight */
    int K = t->o.text_rounds > 0 ? t->o.text_rounds : 1;
    for (int k = 0; k < K; k++) {
      vlm__ttext_batch(t->text, P, t->step * K + k, ids, off, len, which);
      vlm__ttexts ttx = {2 * P, ids, off, len};
      vlm__tmodel_texts_f32(t->m, &ttx, NULL);
      tloss += vlm__tmodel_text_pair_loss_f32(t->m) / K;
      vlm__tmodel_text_pair_backward_f32(t->m, t->o.text_weight / K);
    }
    free(ids); free(off); free(len); free(which);
  }
  *tloss_out = tloss;
  /* global gradient norm, clipping, AdamW */
  double norm = sqrt(vlm__tgrad_sumsq(t->pool, t->g, t->ntrain));
  *loss_out = loss;
  if (!isfinite(loss) || !isfinite(tloss) || !isfinite(norm))
    return VLM_ENUMERIC; /* caller skips the update */
  vlm__tadamw h = {vlm__train_lr_at(t, t->step),
                   t->o.beta1,
                   t->o.beta2,
                   t->o.adam_eps,
                   t->o.weight_decay,
                   1,
                   t->step + 1};
  if (t->o.grad_clip > 0 && norm > t->o.grad_clip)
    h.grad_scale = (float)(t->o.grad_clip / norm);
  vlm__tadamw_update(t->pool, &h, t->w, t->g, t->adam_m, t->adam_v, t->decay,
                     t->ntrain);
  if (L->lora_rank == 0) {
    float *ls = vlm__tmodel_params_f32(t->m) + L->logit_scale;
    if (*ls > LN100)
      *ls = LN100;
    if (*ls < 0)
      *ls = 0;
  }
  return 0;
}

static int run_loop(vlm__trainer *t) {
  const vlm_train_options *o = &t->o;
  int64_t end = t->total_steps;
  if (o->stop_after > 0 && o->stop_after < end)
    end = o->stop_after;
  int rc = 0, bad_steps = 0, evaluated_at_end = 0;
  if (t->step >= end)
    goto finish;
  if ((rc = vlm__tdata_start(t->train, o->batch, t->step, end)))
    return rc;
  double t_loop = vlm__train_now(), loss_avg = 0, tloss_avg = 0;
  int64_t first = t->step;
  int loss_n = 0;
  t->t_last_log = t_loop;
  while (t->step < end) {
    const float *pixels;
    const int *pairs;
    if ((rc = vlm__tdata_next(t->train, t->step, &pixels, &pairs)))
      return rc;
    double loss = 0, tloss = 0;
    int src = train_step(t, t->step / vlm__tdata_steps_per_epoch(t->train),
                         pixels, pairs, &loss, &tloss);
    vlm__tdata_release(t->train, t->step);
    if (src == VLM_ENUMERIC) {
      say(t, "vlmdb train: step %lld: non-finite loss or gradient; update "
             "skipped\n",
          (long long)t->step + 1);
      if (++bad_steps >= 3)
        return vlm_seterr(VLM_ENUMERIC, "training diverged at step %lld "
                                        "(try a lower --lr)",
                          (long long)t->step + 1);
    } else if (src) {
      return src;
    } else {
      bad_steps = 0;
      t->epoch_loss_sum += loss;
      t->epoch_tloss_sum += tloss;
      t->epoch_loss_n++;
      loss_avg = loss_n ? 0.9 * loss_avg + 0.1 * loss : loss;
      tloss_avg = loss_n ? 0.9 * tloss_avg + 0.1 * tloss : tloss;
      loss_n++;
    }
    t->step++;
    t->steps_this_call++;
    t->loop_s = vlm__train_now() - t_loop;
    int epoch_end = t->step % t->spe == 0;
    double tn = vlm__train_now();
    if (o->log && (tn - t->t_last_log >= o->log_every_s || t->step == end ||
                   t->step == first + 1 || epoch_end)) {
      double rate = (double)(t->step - first) * o->batch / (tn - t_loop);
      char eta[32];
      fmt_duration(eta, sizeof eta,
                   (double)(t->total_steps - t->step) * o->batch / rate);
      float ls = vlm__tmodel_params_f32(t->m)[t->L->logit_scale];
      char text_loss[48] = "";
      if (t->text)
        snprintf(text_loss, sizeof text_loss, " text loss %.4f", tloss_avg);
      say(t, "step %lld/%lld epoch %lld/%lld loss %.4f%s lr %.3g temp %.4f "
             "%.1f img/s ETA %s\n",
          (long long)t->step, (long long)t->total_steps,
          (long long)((t->step - 1) / t->spe + 1),
          (long long)((t->total_steps + t->spe - 1) / t->spe), loss_avg,
          text_loss, (double)vlm__train_lr_at(t, t->step - 1), exp(-ls), rate,
          eta);
      t->t_last_log = tn;
    }
    if (epoch_end) {
      t->epochs_done = (int)(t->step / t->spe);
      t->last_epoch_loss =
          t->epoch_loss_n ? t->epoch_loss_sum / t->epoch_loss_n : 0;
      t->last_epoch_tloss =
          t->epoch_loss_n ? t->epoch_tloss_sum / t->epoch_loss_n : 0;
      t->epoch_loss_sum = 0;
      t->epoch_tloss_sum = 0;
      t->epoch_loss_n = 0;
      if ((rc = evaluate(t)))
        return rc;
      evaluated_at_end = t->step == end;
      if (t->recall.n)
        say(t, "epoch %d: loss %.4f, held-out %d pairs: image->text R@1 %.3f "
               "R@5 %.3f R@10 %.3f, text->image R@1 %.3f R@5 %.3f R@10 %.3f\n",
            t->epochs_done, t->last_epoch_loss, t->recall.n, t->recall.i2t[0],
            t->recall.i2t[1], t->recall.i2t[2], t->recall.t2i[0],
            t->recall.t2i[1], t->recall.t2i[2]);
      if ((rc = vlm__train_metrics_append(t, vlm__train_now() - t->t_start)))
        return rc;
    }
    int ck = o->checkpoint_every > 0 ? t->step % o->checkpoint_every == 0
                                     : epoch_end;
    if (ck && t->step < end) {
      if ((rc = vlm__train_save_all(t)))
        return rc;
    }
    if (o->stop && *o->stop) {
      say(t, "vlmdb train: stopping at step %lld\n", (long long)t->step);
      if ((rc = vlm__train_save_all(t)))
        return rc;
      return vlm_seterr(VLM_EINTR, "stopped at step %lld; resume with the "
                                   "same command and --resume",
                        (long long)t->step);
    }
  }
finish:
  if (t->epoch_loss_n) /* a partial last epoch */
  {
    t->last_epoch_loss = t->epoch_loss_sum / t->epoch_loss_n;
    t->last_epoch_tloss = t->epoch_tloss_sum / t->epoch_loss_n;
  }
  if (!evaluated_at_end && t->val) {
    if ((rc = evaluate(t)))
      return rc;
    /* a run resumed at its end has its row already */
    if (t->step != t->metrics_last_step &&
        (rc = vlm__train_metrics_append(t, vlm__train_now() - t->t_start)))
      return rc;
  }
  return vlm__train_save_all(t);
}

int vlm_train_run(const vlm_train_options *opts, vlm_train_result *res) {
  vlm__trainer t = {0};
  if (res)
    memset(res, 0, sizeof *res);
  t.t_start = vlm__train_now();
  t.metrics_last_step = -1;
  int rc = setup(&t, opts);
  if (!rc) {
    /* FLOPs of a step with captions of the mean length */
    double tokens = 0;
    int n = vlm__tdata_count(t.train);
    for (int i = 0; i < n; i++) {
      const int32_t *ids;
      int len;
      vlm__tdata_tokens(t.train, i, &ids, &len);
      tokens += len;
    }
    double gflop =
        vlm__tmodel_step_flops(t.L, t.o.batch,
                               (int64_t)(tokens / n * t.o.batch)) / 1e9;
    say(&t,
        "vlmdb train: %s %s, %lld steps of %d pairs (%d per epoch), lr %.3g, "
        "warm-up %d, %d threads, %zu parameters, %.1f GFLOP per step\n",
        vlm__family_name(t.cfg.family),
        t.L->lora_rank ? "LoRA" : t.o.init_dir ? "fine-tuning" : "from scratch",
        (long long)t.total_steps, t.o.batch, t.spe, (double)t.o.lr, t.warmup,
        vlm__tpool_threads(t.pool), t.ntrain, gflop);
    rc = run_loop(&t);
  }
  if (res && t.train) {
    res->steps = t.step;
    res->epochs = t.epochs_done;
    res->loss = t.last_epoch_loss;
    res->text_loss = t.last_epoch_tloss;
    if (t.text) {
      res->n_text_pairs = vlm__ttext_count(t.text);
      res->n_text_skipped = vlm__ttext_skipped(t.text);
    }
    res->n_train = vlm__tdata_count(t.train);
    res->n_skipped = vlm__tdata_skipped(t.train);
    snprintf(res->data_digest, sizeof res->data_digest, "%s",
             vlm__tdata_digest(t.train));
    res->recall = t.recall;
    res->dim = t.cfg.projection_dim;
    res->pairs_per_s = t.loop_s > 0
                           ? (double)t.steps_this_call * t.o.batch / t.loop_s
                           : 0;
    if (t.eval_n) {
      res->image_emb = t.eval_img;
      res->text_emb = t.eval_txt;
      t.eval_img = t.eval_txt = NULL;
      res->eval_index = malloc(sizeof(int) * (size_t)t.eval_n);
      if (res->eval_index)
        for (int i = 0; i < t.eval_n; i++) {
          int k = vlm__tdata_item(t.val, i);
          res->eval_index[i] = t.val_src_index ? t.val_src_index[k] : k;
        }
    }
  }
  trainer_free(&t);
  return rc;
}
