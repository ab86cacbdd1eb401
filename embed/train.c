/* train.c - the CLIP trainer (see vlm_train.h): setup, the training loop,
 * AdamW, evaluation, checkpoints and the Hugging Face export. */
#include "vlm_train.h"

#include <cblas.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "safetensors.h"
#include "safetensors_write.h"
#include "sha256.h"
#include "tokenizer.h"
#include "train_data.h"
#include "train_model.h"
#include "vlm_clip.h"
#include "vlm_error.h"

#define CKPT_FORMAT "vlmdb-train-checkpoint"
#define CKPT_VERSION 1
#define LN100 4.605170185988092f /* open_clip clamps logit_scale to ln 100 */

typedef struct {
  vlm_train_options o;
  vlm__clip_config cfg;
  vlm__tlayout *L;
  vlm__tpool *pool;
  vlm__tmodel_f32 *m;
  vlm__tokenizer *tok;
  char tok_dir[4096];
  vlm__tdata *train, *val;
  vlm_train_item *train_items, *val_items; /* the split, when by fraction */
  const vlm_train_item *val_src;          /* items the val set indexes */
  int *val_src_index;                      /* val pair -> caller's index */
  /* optimizer over the trainable array (base or LoRA) */
  float *w, *g, *adam_m, *adam_v;
  uint8_t *decay;
  size_t ntrain;
  /* schedule */
  int spe;
  int64_t step, total_steps;
  int warmup;
  /* progress */
  double t_start, t_last_log;
  int64_t steps_this_call;
  double loop_s; /* time in the training loop */
  double epoch_loss_sum;
  int epoch_loss_n;
  double last_epoch_loss;
  int epochs_done;
  vlm_train_recall recall;
  float *eval_img, *eval_txt;
  int eval_n;
  FILE *logfile;
  int blas_threads_before;
  char resumed_from[64];
} trainer;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void say(trainer *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(trainer *t, const char *fmt, ...) {
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

static int join_path(char *out, size_t cap, const char *dir, const char *name) {
  if ((size_t)snprintf(out, cap, "%s/%s", dir, name) >= cap)
    return vlm_seterr(VLM_EINVAL, "%s/%s: path too long", dir, name);
  return 0;
}

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

static int mkdir_p(const char *dir) {
  char tmp[4096];
  if (strlen(dir) >= sizeof tmp)
    return vlm_seterr(VLM_EINVAL, "%s: path too long", dir);
  strcpy(tmp, dir);
  for (char *p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      if (mkdir(tmp, 0777) && errno != EEXIST)
        return vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
      *p = '/';
    }
  if (mkdir(tmp, 0777) && errno != EEXIST)
    return vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
  return 0;
}

static int copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb");
  if (!in)
    return vlm_seterr(errno == ENOENT ? VLM_ENOTFOUND : VLM_EIO, "%s: %s",
                      from, strerror(errno));
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", to);
  FILE *out = fopen(tmp, "wb");
  if (!out) {
    fclose(in);
    return vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
  }
  char buf[65536];
  size_t n;
  int bad = 0;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    if (fwrite(buf, 1, n, out) != n)
      bad = 1;
  bad |= ferror(in);
  fclose(in);
  if (fclose(out) || bad || rename(tmp, to)) {
    unlink(tmp);
    return vlm_seterr(VLM_EIO, "%s: cannot write", to);
  }
  return 0;
}

/* Write a JSON document atomically. */
static int write_json(const char *path, json_t *doc) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  if (json_dump_file(doc, tmp, JSON_INDENT(2) | JSON_PRESERVE_ORDER) ||
      rename(tmp, path)) {
    unlink(tmp);
    return vlm_seterr(VLM_EIO, "%s: cannot write", path);
  }
  return 0;
}

/* ---- configuration ------------------------------------------------------ */

static int cfg_int(json_t *o, const char *key, int *v, const char *path) {
  json_t *j = json_object_get(o, key);
  if (!j)
    return 0;
  if (!json_is_integer(j))
    return vlm_seterr(VLM_EFORMAT, "%s: %s must be an integer", path, key);
  *v = (int)json_integer_value(j);
  return 0;
}

static int cfg_float(json_t *o, const char *key, float *v, const char *path) {
  json_t *j = json_object_get(o, key);
  if (!j)
    return 0;
  if (!json_is_number(j))
    return vlm_seterr(VLM_EFORMAT, "%s: %s must be a number", path, key);
  *v = (float)json_number_value(j);
  return 0;
}

static int cfg_act(json_t *o, int *quick, const char *path) {
  json_t *j = json_object_get(o, "hidden_act");
  if (!j)
    return 0;
  const char *s = json_string_value(j);
  if (s && !strcmp(s, "quick_gelu"))
    *quick = 1;
  else if (s && !strcmp(s, "gelu"))
    *quick = 0;
  else
    return vlm_seterr(VLM_EUNSUPPORTED,
                      "%s: hidden_act must be quick_gelu or gelu", path);
  return 0;
}

/* A Hugging Face CLIP config.json (text_config / vision_config) over the
 * HF defaults. */
static int parse_config(json_t *root, const char *path, vlm__clip_config *c) {
  vlm__tconfig_defaults(c);
  if (!json_is_object(root))
    return vlm_seterr(VLM_EFORMAT, "%s: not a JSON object", path);
  json_t *t = json_object_get(root, "text_config");
  json_t *v = json_object_get(root, "vision_config");
  if (!json_is_object(t) || !json_is_object(v))
    return vlm_seterr(VLM_EFORMAT, "%s: needs text_config and vision_config",
                      path);
  int rc;
  if ((rc = cfg_int(root, "projection_dim", &c->projection_dim, path)) ||
      (rc = cfg_float(root, "logit_scale_init_value", &c->logit_scale,
                      path)) ||
      (rc = cfg_int(t, "vocab_size", &c->vocab_size, path)) ||
      (rc = cfg_int(t, "hidden_size", &c->text_width, path)) ||
      (rc = cfg_int(t, "intermediate_size", &c->text_mlp, path)) ||
      (rc = cfg_int(t, "num_hidden_layers", &c->text_layers, path)) ||
      (rc = cfg_int(t, "num_attention_heads", &c->text_heads, path)) ||
      (rc = cfg_int(t, "max_position_embeddings", &c->context_length, path)) ||
      (rc = cfg_float(t, "layer_norm_eps", &c->text_eps, path)) ||
      (rc = cfg_int(t, "bos_token_id", &c->bos_id, path)) ||
      (rc = cfg_int(t, "eos_token_id", &c->eos_id, path)) ||
      (rc = cfg_act(t, &c->text_quick_gelu, path)) ||
      (rc = cfg_int(v, "hidden_size", &c->vision_width, path)) ||
      (rc = cfg_int(v, "intermediate_size", &c->vision_mlp, path)) ||
      (rc = cfg_int(v, "num_hidden_layers", &c->vision_layers, path)) ||
      (rc = cfg_int(v, "num_attention_heads", &c->vision_heads, path)) ||
      (rc = cfg_int(v, "image_size", &c->image_size, path)) ||
      (rc = cfg_int(v, "patch_size", &c->patch_size, path)) ||
      (rc = cfg_float(v, "layer_norm_eps", &c->vision_eps, path)) ||
      (rc = cfg_act(v, &c->vision_quick_gelu, path)))
    return rc;
  json_t *nc = json_object_get(v, "num_channels");
  if (nc && json_integer_value(nc) != 3)
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: num_channels must be 3", path);
  /* legacy configs say eos 2 and mean "the largest id", which is eos */
  if (c->eos_id == 2)
    c->eos_id = 49407;
  if (c->bos_id == 0)
    c->bos_id = 49406;
  return 0;
}

static int load_config_file(const char *path, vlm__clip_config *c) {
  json_error_t e;
  json_t *root = json_load_file(path, 0, &e);
  if (!root)
    return vlm_seterr(file_exists(path) ? VLM_EFORMAT : VLM_ENOTFOUND,
                      "%s:%d: %s", path, e.line, e.text);
  int rc = parse_config(root, path, c);
  json_decref(root);
  return rc;
}

static json_t *config_json(const vlm__clip_config *c) {
  json_t *t = json_pack(
      "{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:i, s:i, s:i, s:i}",
      "model_type", "clip_text_model", "vocab_size", c->vocab_size,
      "hidden_size", c->text_width, "intermediate_size", c->text_mlp,
      "num_hidden_layers", c->text_layers, "num_attention_heads",
      c->text_heads, "max_position_embeddings", c->context_length,
      "hidden_act", c->text_quick_gelu ? "quick_gelu" : "gelu",
      "layer_norm_eps", (double)c->text_eps, "projection_dim",
      c->projection_dim, "bos_token_id", c->bos_id, "eos_token_id", c->eos_id,
      "pad_token_id", 1);
  json_t *v = json_pack(
      "{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:i}", "model_type",
      "clip_vision_model", "hidden_size", c->vision_width, "intermediate_size",
      c->vision_mlp, "num_hidden_layers", c->vision_layers,
      "num_attention_heads", c->vision_heads, "image_size", c->image_size,
      "patch_size", c->patch_size, "num_channels", 3, "hidden_act",
      c->vision_quick_gelu ? "quick_gelu" : "gelu", "layer_norm_eps",
      (double)c->vision_eps, "projection_dim", c->projection_dim);
  return json_pack("{s:[s], s:s, s:i, s:f, s:s, s:o, s:o}", "architectures",
                   "CLIPModel", "model_type", "clip", "projection_dim",
                   c->projection_dim, "logit_scale_init_value",
                   (double)c->logit_scale, "torch_dtype", "float32",
                   "text_config", t, "vision_config", v);
}

static json_t *preprocessor_json(const vlm__clip_config *c) {
  return json_pack(
      "{s:{s:i, s:i}, s:b, s:b, s:b, s:b, s:b, s:[f,f,f], s:[f,f,f], "
      "s:s, s:i, s:f, s:{s:i}}",
      "crop_size", "height", c->image_size, "width", c->image_size,
      "do_center_crop", 1, "do_normalize", 1, "do_resize", 1, "do_rescale", 1,
      "do_convert_rgb", 1, "image_mean", (double)c->mean[0],
      (double)c->mean[1], (double)c->mean[2], "image_std", (double)c->std[0],
      (double)c->std[1], (double)c->std[2], "image_processor_type",
      "CLIPImageProcessor", "resample", 3, "rescale_factor", 1.0 / 255,
      "size", "shortest_edge", c->image_size);
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

/* Hugging Face's CLIPPreTrainedModel._init_weights (factor 1). */
static void init_scratch(const vlm__tlayout *L, float *p, uint64_t seed) {
  const vlm__clip_config *c = &L->cfg;
  for (int i = 0; i < L->nparams; i++) {
    const vlm__tparam *t = &L->params[i];
    const char *n = t->name;
    int vision = !strncmp(n, "vision_model.", 13);
    double C = vision ? c->vision_width : c->text_width;
    double layers = vision ? c->vision_layers : c->text_layers;
    double in_std = pow(C, -0.5) * pow(2 * (layers > 0 ? layers : 1), -0.5);
    double std = 0, fill = 0;
    if (strstr(n, "layer_norm") || strstr(n, "layrnorm") ||
        strstr(n, "layernorm")) {
      fill = strstr(n, ".weight") ? 1 : 0;
    } else if (strstr(n, ".bias")) {
      fill = 0;
    } else if (!strcmp(n, "logit_scale")) {
      fill = c->logit_scale;
    } else if (strstr(n, "token_embedding")) {
      std = 0.02;
    } else if (strstr(n, "position_embedding")) {
      std = vision ? 0.02 : 0.01;
    } else if (strstr(n, "class_embedding")) {
      std = pow(C, -0.5);
    } else if (strstr(n, "patch_embedding")) {
      std = 0.02;
    } else if (strstr(n, "q_proj") || strstr(n, "k_proj") ||
               strstr(n, "v_proj") || strstr(n, "fc2")) {
      std = in_std;
    } else if (strstr(n, "out_proj")) {
      std = pow(C, -0.5);
    } else if (strstr(n, "fc1")) {
      std = pow(2 * C, -0.5);
    } else if (!strcmp(n, "visual_projection.weight")) {
      std = pow(c->vision_width, -0.5);
    } else if (!strcmp(n, "text_projection.weight")) {
      std = pow(c->text_width, -0.5);
    }
    rng r = {mix64(seed ^ mix64(0x696e6974ull + (uint64_t)i))};
    for (size_t j = 0; j < t->numel; j++)
      p[t->offset + j] = std > 0 ? (float)(rng_normal(&r) * std) : (float)fill;
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

static int init_from_model(trainer *t, vlm_clip *clip) {
  float *p = vlm__tmodel_params_f32(t->m);
  for (int i = 0; i < t->L->nparams; i++) {
    const vlm__tparam *tp = &t->L->params[i];
    int64_t numel = 0;
    const float *src = vlm__clip_tensor(clip, tp->name, &numel);
    if (!src && !strcmp(tp->name, "logit_scale")) {
      p[tp->offset] = vlm__clip_get_config(clip)->logit_scale;
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

static float lr_at(const trainer *t, int64_t step) {
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
static int evaluate(trainer *t) {
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

/* ---- checkpoints and export --------------------------------------------- */

/* Base weights as exported: with LoRA, W + (alpha/r) B A merged in. */
static float *merged_weights(trainer *t) {
  const vlm__tlayout *L = t->L;
  float *p = malloc(sizeof(float) * L->total);
  if (!p)
    return NULL;
  memcpy(p, vlm__tmodel_params_f32(t->m), sizeof(float) * L->total);
  if (L->lora_rank == 0)
    return p;
  const float *lp = vlm__tmodel_lora_f32(t->m);
  for (int tower = 0; tower < 2; tower++) {
    int layers = tower ? L->cfg.text_layers : L->cfg.vision_layers;
    int C = tower ? L->cfg.text_width : L->cfg.vision_width;
    int M = tower ? L->cfg.text_mlp : L->cfg.vision_mlp;
    const vlm__tlayer *ly = tower ? L->tlayers : L->vlayers;
    for (int l = 0; l < layers; l++) {
      size_t base[VLM__LORA_N] = {
          ly[l].qkv_w, ly[l].qkv_w + (size_t)C * C,
          ly[l].qkv_w + 2 * (size_t)C * C, ly[l].o_w, ly[l].fc1_w,
          ly[l].fc2_w};
      for (int w = 0; w < VLM__LORA_N; w++) {
        int in = w == VLM__LORA_FC2 ? M : C, out = w == VLM__LORA_FC1 ? M : C;
        /* W[out,in] += scale * B[out,r] A[r,in] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in,
                    L->lora_rank, L->lora_scale, lp + ly[l].lora_b[w],
                    L->lora_rank, lp + ly[l].lora_a[w], in, 1, p + base[w],
                    in);
      }
    }
  }
  return p;
}

static int write_tensors(const char *path, const vlm__tparam *tab, int n,
                         const float *data, int f16, const char *prefix,
                         const char *const *meta) {
  vlm__stw_tensor *ts = calloc((size_t)n, sizeof *ts);
  char (*names)[160] = calloc((size_t)n, sizeof *names);
  if (!ts || !names) {
    free(ts);
    free(names);
    return vlm_seterr(VLM_ENOMEM, "%s", path);
  }
  for (int i = 0; i < n; i++) {
    snprintf(names[i], sizeof names[i], "%s%s", prefix, tab[i].name);
    ts[i] = (vlm__stw_tensor){names[i], tab[i].ndim, tab[i].shape,
                              data + tab[i].offset};
  }
  int rc = vlm__safetensors_write(path, ts, n, f16, meta);
  free(ts);
  free(names);
  return rc;
}

/* The Hugging Face directory: config, weights, tokenizer, preprocessor,
 * and with LoRA optionally the adapters alone. */
static int export_model(trainer *t) {
  char path[4200];
  const char *dir = t->o.out_dir;
  int rc;
  json_t *cfg = config_json(&t->cfg);
  json_t *pre = preprocessor_json(&t->cfg);
  if (!cfg || !pre) {
    json_decref(cfg);
    json_decref(pre);
    return vlm_seterr(VLM_ENOMEM, "config.json");
  }
  if (!t->o.f16)
    json_object_set_new(cfg, "torch_dtype", json_string("float32"));
  else
    json_object_set_new(cfg, "torch_dtype", json_string("float16"));
  if ((rc = join_path(path, sizeof path, dir, "config.json")) ||
      (rc = write_json(path, cfg)) ||
      (rc = join_path(path, sizeof path, dir, "preprocessor_config.json")) ||
      (rc = write_json(path, pre))) {
    json_decref(cfg);
    json_decref(pre);
    return rc;
  }
  json_decref(cfg);
  json_decref(pre);
  static const char *const tokfiles[2] = {"vocab.json", "merges.txt"};
  for (int i = 0; i < 2; i++) {
    char src[4200];
    if ((rc = join_path(src, sizeof src, t->tok_dir, tokfiles[i])) ||
        (rc = join_path(path, sizeof path, dir, tokfiles[i])))
      return rc;
    struct stat a, b;
    if (stat(path, &b) == 0 && stat(src, &a) == 0 && a.st_ino == b.st_ino &&
        a.st_dev == b.st_dev)
      continue; /* the tokenizer already lives here */
    if ((rc = copy_file(src, path)))
      return rc;
  }
  float *w = merged_weights(t);
  if (!w)
    return vlm_seterr(VLM_ENOMEM, "export");
  static const char *const meta[] = {"format", "pt", NULL};
  if (!(rc = join_path(path, sizeof path, dir, "model.safetensors")))
    rc = write_tensors(path, t->L->params, t->L->nparams, w, t->o.f16, "",
                       meta);
  free(w);
  if (rc || t->L->lora_rank == 0 || !t->o.save_adapters)
    return rc;
  if ((rc = join_path(path, sizeof path, dir, "adapter_model.safetensors")) ||
      (rc = write_tensors(path, t->L->lora, t->L->nlora,
                          vlm__tmodel_lora_f32(t->m), 0, "base_model.model.",
                          meta)))
    return rc;
  json_t *ac = json_pack(
      "{s:s, s:i, s:f, s:f, s:[s,s,s,s,s,s], s:s, s:s?, s:b}", "peft_type",
      "LORA", "r", t->L->lora_rank, "lora_alpha", (double)t->L->lora_alpha,
      "lora_dropout", 0.0, "target_modules", "q_proj", "k_proj", "v_proj",
      "out_proj", "fc1", "fc2", "bias", "none", "base_model_name_or_path",
      t->o.init_dir, "fan_in_fan_out", 0);
  if (!ac)
    return vlm_seterr(VLM_ENOMEM, "adapter_config.json");
  if (!(rc = join_path(path, sizeof path, dir, "adapter_config.json")))
    rc = write_json(path, ac);
  json_decref(ac);
  return rc;
}

/* A float option as its shortest decimal (0.9, not 0.899999976). */
static double f7(float x) {
  char buf[32];
  snprintf(buf, sizeof buf, "%.7g", (double)x);
  return strtod(buf, NULL);
}

static json_t *options_json(const trainer *t) {
  const vlm_train_options *o = &t->o;
  return json_pack(
      "{s:I, s:i, s:I, s:f, s:f, s:i, s:f, s:f, s:f, s:f, s:f, s:i, s:f, "
      "s:b, s:b, s:f, s:f, s:b, s:i, s:b, s:b}",
      "seed", (json_int_t)o->seed, "batch", o->batch, "total_steps",
      (json_int_t)t->total_steps, "lr", f7(o->lr), "min_lr", f7(o->min_lr),
      "warmup_steps", t->warmup, "weight_decay", f7(o->weight_decay),
      "beta1", f7(o->beta1), "beta2", f7(o->beta2), "adam_eps",
      f7(o->adam_eps), "grad_clip", f7(o->grad_clip), "lora_rank",
      o->lora_rank, "lora_alpha", f7(o->lora_alpha), "augment",
      !o->no_augment, "hflip", o->hflip, "crop_scale_min",
      f7(o->crop_scale_min), "jitter", f7(o->jitter), "f16", o->f16,
      "epochs", o->epochs, "save_adapters", o->save_adapters, "alpha_white",
      o->alpha_white);
}

/* The resumable state: F32 weights (and adapters), AdamW moments, step,
 * and everything the schedule and data order depend on. */
static int save_checkpoint(trainer *t) {
  char dir[4200], path[4200];
  int rc;
  if ((rc = join_path(dir, sizeof dir, t->o.out_dir, "checkpoint")) ||
      (rc = mkdir_p(dir)) ||
      (rc = join_path(path, sizeof path, dir, "state.safetensors")))
    return rc;
  json_t *cfg = config_json(&t->cfg);
  json_t *opt = options_json(t);
  char *cfg_s = cfg ? json_dumps(cfg, JSON_COMPACT | JSON_PRESERVE_ORDER)
                    : NULL;
  char *opt_s = opt ? json_dumps(opt, JSON_COMPACT | JSON_PRESERVE_ORDER)
                    : NULL;
  json_decref(cfg);
  json_decref(opt);
  char step_s[32], ver_s[16], thr_s[16];
  snprintf(step_s, sizeof step_s, "%lld", (long long)t->step);
  snprintf(ver_s, sizeof ver_s, "%d", CKPT_VERSION);
  snprintf(thr_s, sizeof thr_s, "%d", vlm__tpool_threads(t->pool));
  const char *meta[] = {"format", CKPT_FORMAT, "version", ver_s,
                        "step", step_s, "threads", thr_s,
                        "data_digest", vlm__tdata_digest(t->train),
                        "config", cfg_s ? cfg_s : "{}",
                        "options", opt_s ? opt_s : "{}", NULL};
  int64_t total = (int64_t)t->L->total, nt = (int64_t)t->ntrain;
  int64_t lt = (int64_t)t->L->lora_total;
  vlm__stw_tensor ts[4] = {
      {"params", 1, &total, vlm__tmodel_params_f32(t->m)},
      {"adam_m", 1, &nt, t->adam_m},
      {"adam_v", 1, &nt, t->adam_v},
      {"lora", 1, &lt, vlm__tmodel_lora_f32(t->m)}};
  if (!cfg_s || !opt_s)
    rc = vlm_seterr(VLM_ENOMEM, "checkpoint");
  else
    rc = vlm__safetensors_write(path, ts, t->L->lora_rank ? 4 : 3, 0, meta);
  free(cfg_s);
  free(opt_s);
  return rc;
}

static const char *meta_get(json_t *meta, const char *key) {
  return json_string_value(json_object_get(meta, key));
}

/* Read the checkpoint's metadata (config, options, step). */
static int read_checkpoint_meta(const char *path, json_t **meta) {
  *meta = NULL;
  FILE *f = fopen(path, "rb");
  if (!f)
    return vlm_seterr(VLM_ENOTFOUND, "%s: %s", path, strerror(errno));
  uint8_t len8[8];
  uint64_t n = 0;
  if (fread(len8, 1, 8, f) != 8) {
    fclose(f);
    return vlm_seterr(VLM_ECORRUPT, "%s: truncated", path);
  }
  for (int i = 0; i < 8; i++)
    n |= (uint64_t)len8[i] << (8 * i);
  char *h = n < (1u << 26) ? malloc(n + 1) : NULL;
  if (!h || fread(h, 1, n, f) != n) {
    free(h);
    fclose(f);
    return vlm_seterr(VLM_ECORRUPT, "%s: bad header", path);
  }
  fclose(f);
  h[n] = '\0';
  json_error_t e;
  json_t *root = json_loads(h, 0, &e);
  free(h);
  json_t *m = root ? json_object_get(root, "__metadata__") : NULL;
  if (!m || !meta_get(m, "format") ||
      strcmp(meta_get(m, "format"), CKPT_FORMAT)) {
    json_decref(root);
    return vlm_seterr(VLM_EFORMAT, "%s: not a vlmdb training checkpoint",
                      path);
  }
  *meta = json_incref(m);
  json_decref(root);
  return 0;
}

static int load_tensor(const vlm__safetensors *st, const char *path,
                       const char *name, float *dst, size_t n) {
  const vlm__st_tensor *t = vlm__st_find(st, name);
  if (!t || t->dtype != VLM__DT_F32 || (size_t)t->numel != n)
    return vlm_seterr(VLM_ECORRUPT, "%s: tensor %s missing or not F32[%zu]",
                      path, name, n);
  memcpy(dst, t->data, sizeof(float) * n);
  return 0;
}

static int load_checkpoint_tensors(trainer *t, const char *path) {
  vlm__safetensors *st = NULL;
  int rc = vlm__st_open(path, &st);
  if (rc)
    return rc;
  if (!(rc = load_tensor(st, path, "params", vlm__tmodel_params_f32(t->m),
                         t->L->total)) &&
      !(rc = load_tensor(st, path, "adam_m", t->adam_m, t->ntrain)) &&
      !(rc = load_tensor(st, path, "adam_v", t->adam_v, t->ntrain)) &&
      t->L->lora_rank > 0)
    rc = load_tensor(st, path, "lora", vlm__tmodel_lora_f32(t->m),
                     t->L->lora_total);
  vlm__st_close(st);
  return rc;
}

/* Options saved in a checkpoint override the caller's, so a resumed run
 * continues the same schedule. */
static int apply_saved_options(trainer *t, json_t *opt, const char *path) {
  vlm_train_options *o = &t->o;
  if (!json_is_object(opt))
    return vlm_seterr(VLM_EFORMAT, "%s: bad options", path);
#define GET_I(key, dst)                                                      \
  do {                                                                       \
    json_t *j = json_object_get(opt, key);                                   \
    if (!json_is_integer(j))                                                 \
      goto bad;                                                              \
    dst = json_integer_value(j);                                             \
  } while (0)
#define GET_F(key, dst)                                                      \
  do {                                                                       \
    json_t *j = json_object_get(opt, key);                                   \
    if (!json_is_number(j))                                                  \
      goto bad;                                                              \
    dst = (float)json_number_value(j);                                       \
  } while (0)
#define GET_B(key, dst)                                                      \
  do {                                                                       \
    json_t *j = json_object_get(opt, key);                                   \
    if (!json_is_boolean(j))                                                 \
      goto bad;                                                              \
    dst = json_is_true(j);                                                   \
  } while (0)
  int aug = 1;
  GET_I("seed", o->seed);
  GET_I("batch", o->batch);
  GET_I("total_steps", t->total_steps);
  GET_F("lr", o->lr);
  GET_F("min_lr", o->min_lr);
  GET_I("warmup_steps", t->warmup);
  GET_F("weight_decay", o->weight_decay);
  GET_F("beta1", o->beta1);
  GET_F("beta2", o->beta2);
  GET_F("adam_eps", o->adam_eps);
  GET_F("grad_clip", o->grad_clip);
  GET_I("lora_rank", o->lora_rank);
  GET_F("lora_alpha", o->lora_alpha);
  GET_B("augment", aug);
  GET_B("hflip", o->hflip);
  GET_F("crop_scale_min", o->crop_scale_min);
  GET_F("jitter", o->jitter);
  GET_B("f16", o->f16);
  GET_I("epochs", o->epochs);
  GET_B("save_adapters", o->save_adapters);
  GET_B("alpha_white", o->alpha_white);
  o->no_augment = !aug;
  o->max_steps = t->total_steps;
  return 0;
bad:
  return vlm_seterr(VLM_EFORMAT, "%s: bad or missing saved option", path);
#undef GET_I
#undef GET_F
#undef GET_B
}

static void json_recall(json_t *o, const char *dir, const double r[3],
                        double median) {
  json_object_set_new(o, dir,
                      json_pack("{s:f, s:f, s:f, s:f}", "recall@1", r[0],
                                "recall@5", r[1], "recall@10", r[2],
                                "median_rank", median));
}

static int write_training_json(trainer *t, double elapsed) {
  char path[4200];
  int rc = join_path(path, sizeof path, t->o.out_dir, "training.json");
  if (rc)
    return rc;
  json_t *doc = json_object();
  json_t *opt = options_json(t);
  if (!doc || !opt) {
    json_decref(doc);
    json_decref(opt);
    return vlm_seterr(VLM_ENOMEM, "training.json");
  }
  json_object_set_new(doc, "command",
                      t->o.command ? json_string(t->o.command) : json_null());
  json_object_set_new(doc, "seed", json_integer((json_int_t)t->o.seed));
  json_object_set_new(doc, "data_digest",
                      json_string(vlm__tdata_digest(t->train)));
  json_object_set_new(doc, "train_pairs",
                      json_integer(vlm__tdata_count(t->train)));
  json_object_set_new(doc, "skipped_pairs",
                      json_integer(vlm__tdata_skipped(t->train)));
  json_object_set_new(doc, "heldout_pairs",
                      json_integer(t->val ? vlm__tdata_count(t->val) : 0));
  json_object_set_new(doc, "init", t->o.init_dir ? json_string(t->o.init_dir)
                                                 : json_null());
  json_object_set_new(doc, "steps", json_integer((json_int_t)t->step));
  json_object_set_new(doc, "epochs", json_integer(t->epochs_done));
  json_object_set_new(doc, "threads",
                      json_integer(vlm__tpool_threads(t->pool)));
  json_object_set_new(doc, "options", opt);
  if (t->resumed_from[0])
    json_object_set_new(doc, "resumed_at_step",
                        json_string(t->resumed_from));
  json_object_set_new(doc, "elapsed_s_last_run", json_real(elapsed));
  json_t *fin = json_object();
  json_object_set_new(fin, "loss", json_real(t->last_epoch_loss));
  json_object_set_new(
      fin, "logit_scale",
      json_real(vlm__tmodel_params_f32(t->m)[t->L->logit_scale]));
  if (t->recall.n) {
    json_object_set_new(fin, "heldout_pairs", json_integer(t->recall.n));
    json_recall(fin, "image_to_text", t->recall.i2t, t->recall.i2t_median);
    json_recall(fin, "text_to_image", t->recall.t2i, t->recall.t2i_median);
  }
  json_object_set_new(doc, "final", fin);
  rc = write_json(path, doc);
  json_decref(doc);
  return rc;
}

/* metrics.csv: one row per evaluation.  On resume, rows past the
 * checkpoint's step (written after it, then lost) are dropped. */
static int metrics_trim(trainer *t, int64_t max_step) {
  char path[4200];
  int rc = join_path(path, sizeof path, t->o.out_dir, "metrics.csv");
  if (rc)
    return rc;
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  char tmp[4300];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *out = fopen(tmp, "w");
  if (!out) {
    fclose(f);
    return vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
  }
  char line[1024];
  int first = 1;
  while (fgets(line, sizeof line, f)) {
    long long epoch, step;
    if (first || sscanf(line, "%lld,%lld", &epoch, &step) != 2 ||
        step <= max_step)
      fputs(line, out);
    first = 0;
  }
  fclose(f);
  if (fclose(out) || rename(tmp, path))
    return vlm_seterr(VLM_EIO, "%s: cannot rewrite", path);
  return 0;
}

static int metrics_append(trainer *t, double elapsed) {
  char path[4200];
  int rc = join_path(path, sizeof path, t->o.out_dir, "metrics.csv");
  if (rc)
    return rc;
  int fresh = !file_exists(path);
  FILE *f = fopen(path, "a");
  if (!f)
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  if (fresh)
    fprintf(f, "epoch,step,train_loss,lr,temperature,heldout_pairs,"
               "i2t_r1,i2t_r5,i2t_r10,i2t_median_rank,"
               "t2i_r1,t2i_r5,t2i_r10,t2i_median_rank,elapsed_s\n");
  const vlm_train_recall *r = &t->recall;
  float ls = vlm__tmodel_params_f32(t->m)[t->L->logit_scale];
  fprintf(f, "%d,%lld,%.6f,%.6g,%.6f,%d,%.4f,%.4f,%.4f,%.1f,%.4f,%.4f,%.4f,"
             "%.1f,%.1f\n",
          t->epochs_done, (long long)t->step, t->last_epoch_loss,
          (double)lr_at(t, t->step > 0 ? t->step - 1 : 0), exp(-ls), r->n,
          r->i2t[0], r->i2t[1], r->i2t[2], r->i2t_median, r->t2i[0], r->t2i[1],
          r->t2i[2], r->t2i_median, elapsed);
  if (fclose(f))
    return vlm_seterr(VLM_EIO, "%s: write error", path);
  return 0;
}

static int save_all(trainer *t) {
  int rc = save_checkpoint(t);
  if (!rc)
    rc = export_model(t);
  if (!rc)
    rc = write_training_json(t, now_s() - t->t_start);
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

static int split_data(trainer *t) {
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

static void trainer_free(trainer *t) {
  if (t->blas_threads_before > 0)
    openblas_set_num_threads(t->blas_threads_before);
  vlm__tmodel_free_f32(t->m);
  vlm__tlayout_free(t->L);
  vlm__tpool_free(t->pool);
  vlm__tokenizer_free(t->tok);
  vlm__tdata_free(t->train);
  vlm__tdata_free(t->val);
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
  return 0;
}

static int setup(trainer *t, const vlm_train_options *opts) {
  int rc;
  char path[4200], ckpt[4200];
  t->o = *opts;
  vlm_train_options *o = &t->o;
  if ((rc = check_options(o)) || (rc = mkdir_p(o->out_dir)))
    return rc;
  if ((rc = join_path(path, sizeof path, o->out_dir, "train.log")))
    return rc;
  t->logfile = fopen(path, "a");
  if ((rc = join_path(ckpt, sizeof ckpt, o->out_dir,
                      "checkpoint/state.safetensors")))
    return rc;
  json_t *meta = NULL;
  int resuming = 0;
  if (file_exists(ckpt)) {
    if (!o->resume)
      return vlm_seterr(VLM_EEXISTS,
                        "%s holds a training checkpoint: resume it or "
                        "choose another output directory",
                        o->out_dir);
    if ((rc = read_checkpoint_meta(ckpt, &meta)))
      return rc;
    resuming = 1;
  }
  /* geometry: the checkpoint's, the initial model's or the config's */
  vlm_clip *clip = NULL;
  if (resuming) {
    json_error_t e;
    json_t *c = json_loads(meta_get(meta, "config") ? meta_get(meta, "config")
                                                    : "",
                           0, &e);
    rc = c ? parse_config(c, ckpt, &t->cfg)
           : vlm_seterr(VLM_EFORMAT, "%s: bad config", ckpt);
    json_decref(c);
    if (!rc) {
      json_t *opt = json_loads(meta_get(meta, "options") ? meta_get(meta,
                                                                    "options")
                                                         : "",
                               0, &e);
      rc = apply_saved_options(t, opt, ckpt);
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
  } else if (o->config_path) {
    if ((rc = load_config_file(o->config_path, &t->cfg)))
      return rc;
  } else {
    return vlm_seterr(VLM_EINVAL, "give an initial model (--init) or a "
                                  "geometry (--config)");
  }
  /* defaults that depend on the mode */
  if (o->lora_alpha <= 0)
    o->lora_alpha = 2.0f * (o->lora_rank > 0 ? o->lora_rank : 1);
  if (o->lr <= 0)
    o->lr = o->lora_rank > 0 ? 1e-4f : o->init_dir ? 1e-5f : 5e-4f;
  /* tokenizer: given, else the initial model's, else the output's own */
  const char *td = o->tokenizer_dir;
  char vocab[4200];
  if (!td && o->init_dir) {
    join_path(vocab, sizeof vocab, o->init_dir, "vocab.json");
    if (file_exists(vocab))
      td = o->init_dir;
  }
  if (!td && resuming)
    td = o->out_dir;
  if (!td) {
    rc = vlm_seterr(VLM_EINVAL, "no tokenizer: give a directory with "
                                "vocab.json and merges.txt");
    goto fail;
  }
  snprintf(t->tok_dir, sizeof t->tok_dir, "%s", td);
  char merges[4200];
  if ((rc = join_path(vocab, sizeof vocab, td, "vocab.json")) ||
      (rc = join_path(merges, sizeof merges, td, "merges.txt")) ||
      (rc = vlm__tokenizer_load(vocab, merges, &t->tok)))
    goto fail;
  if (vlm__tokenizer_vocab_size(t->tok) > t->cfg.vocab_size) {
    rc = vlm_seterr(VLM_EMISMATCH, "tokenizer has %d tokens, model %d",
                    vlm__tokenizer_vocab_size(t->tok), t->cfg.vocab_size);
    goto fail;
  }
  t->cfg.bos_id = vlm__tokenizer_bos(t->tok);
  t->cfg.eos_id = vlm__tokenizer_eos(t->tok);
  /* compute */
  int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
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
      .alpha_white = o->alpha_white,
      .cache_bytes = (int64_t)(o->cache_mb > 0 ? o->cache_mb : 4096) << 20,
      .threads = threads,
      .loader_threads = o->loader_threads > 0 ? o->loader_threads : 1,
      .seed = o->seed,
      .context_length = t->cfg.context_length,
      .vocab_size = t->cfg.vocab_size,
      .log = o->log};
  memcpy(dc.mean, t->cfg.mean, sizeof dc.mean);
  memcpy(dc.std, t->cfg.std, sizeof dc.std);
  double t0 = now_s();
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
      t->val ? vlm__tdata_count(t->val) : 0, now_s() - t0,
      vlm__tdata_digest(t->train));
  if (resuming && strcmp(meta_get(meta, "data_digest")
                             ? meta_get(meta, "data_digest") : "",
                         vlm__tdata_digest(t->train))) {
    rc = vlm_seterr(VLM_EMISMATCH, "%s: the training data differ from the "
                                   "checkpoint's (digest %.16s, now %.16s)",
                    ckpt, meta_get(meta, "data_digest"),
                    vlm__tdata_digest(t->train));
    goto fail;
  }
  if (o->batch > vlm__tdata_count(t->train)) {
    say(t, "vlmdb train: batch %d reduced to the %d training pairs\n",
        o->batch, vlm__tdata_count(t->train));
    o->batch = vlm__tdata_count(t->train);
  }
  t->spe = vlm__tdata_count(t->train) / o->batch;
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
    if ((rc = load_checkpoint_tensors(t, ckpt)))
      goto fail;
    t->step = atoll(meta_get(meta, "step") ? meta_get(meta, "step") : "0");
    snprintf(t->resumed_from, sizeof t->resumed_from, "%lld",
             (long long)t->step);
    int saved_threads = atoi(meta_get(meta, "threads") ? meta_get(meta,
                                                                  "threads")
                                                       : "0");
    if (saved_threads != threads)
      say(t, "vlmdb train: warning: checkpoint made with %d threads, now %d: "
             "the run stays valid but is no longer bit-identical to an "
             "uninterrupted one\n",
          saved_threads, threads);
    if ((rc = metrics_trim(t, t->step)))
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

static int train_step(trainer *t, const float *pixels, const int *pairs,
                      double *loss_out) {
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
    vlm__tdata_tokens(t->train, pairs[b], &tk, &tl);
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
  /* global gradient norm, clipping, AdamW */
  double norm = sqrt(vlm__tgrad_sumsq(t->pool, t->g, t->ntrain));
  *loss_out = loss;
  if (!isfinite(loss) || !isfinite(norm))
    return VLM_ENUMERIC; /* caller skips the update */
  vlm__tadamw h = {lr_at(t, t->step), t->o.beta1, t->o.beta2, t->o.adam_eps,
                   t->o.weight_decay, 1, t->step + 1};
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

static int run_loop(trainer *t) {
  const vlm_train_options *o = &t->o;
  int64_t end = t->total_steps;
  if (o->stop_after > 0 && o->stop_after < end)
    end = o->stop_after;
  int rc = 0, bad_steps = 0, evaluated_at_end = 0;
  if (t->step >= end)
    goto finish;
  if ((rc = vlm__tdata_start(t->train, o->batch, t->step, end)))
    return rc;
  double t_loop = now_s(), loss_avg = 0;
  int64_t first = t->step;
  int loss_n = 0;
  t->t_last_log = t_loop;
  while (t->step < end) {
    const float *pixels;
    const int *pairs;
    if ((rc = vlm__tdata_next(t->train, t->step, &pixels, &pairs)))
      return rc;
    double loss = 0;
    int src = train_step(t, pixels, pairs, &loss);
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
      t->epoch_loss_n++;
      loss_avg = loss_n ? 0.9 * loss_avg + 0.1 * loss : loss;
      loss_n++;
    }
    t->step++;
    t->steps_this_call++;
    t->loop_s = now_s() - t_loop;
    int epoch_end = t->step % t->spe == 0;
    double tn = now_s();
    if (o->log && (tn - t->t_last_log >= o->log_every_s || t->step == end ||
                   t->step == first + 1 || epoch_end)) {
      double rate = (double)(t->step - first) * o->batch / (tn - t_loop);
      char eta[32];
      fmt_duration(eta, sizeof eta,
                   (double)(t->total_steps - t->step) * o->batch / rate);
      float ls = vlm__tmodel_params_f32(t->m)[t->L->logit_scale];
      say(t, "step %lld/%lld epoch %lld/%lld loss %.4f lr %.3g temp %.4f "
             "%.1f img/s ETA %s\n",
          (long long)t->step, (long long)t->total_steps,
          (long long)((t->step - 1) / t->spe + 1),
          (long long)((t->total_steps + t->spe - 1) / t->spe), loss_avg,
          (double)lr_at(t, t->step - 1), exp(-ls), rate, eta);
      t->t_last_log = tn;
    }
    if (epoch_end) {
      t->epochs_done = (int)(t->step / t->spe);
      t->last_epoch_loss =
          t->epoch_loss_n ? t->epoch_loss_sum / t->epoch_loss_n : 0;
      t->epoch_loss_sum = 0;
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
      if ((rc = metrics_append(t, now_s() - t->t_start)))
        return rc;
    }
    int ck = o->checkpoint_every > 0 ? t->step % o->checkpoint_every == 0
                                     : epoch_end;
    if (ck && t->step < end) {
      if ((rc = save_all(t)))
        return rc;
    }
    if (o->stop && *o->stop) {
      say(t, "vlmdb train: stopping at step %lld\n", (long long)t->step);
      if ((rc = save_all(t)))
        return rc;
      return vlm_seterr(VLM_EINTR, "stopped at step %lld; resume with the "
                                   "same command and --resume",
                        (long long)t->step);
    }
  }
finish:
  if (t->epoch_loss_n) /* a partial last epoch */
    t->last_epoch_loss = t->epoch_loss_sum / t->epoch_loss_n;
  if (!evaluated_at_end && t->val) {
    if ((rc = evaluate(t)))
      return rc;
    if ((rc = metrics_append(t, now_s() - t->t_start)))
      return rc;
  }
  return save_all(t);
}

int vlm_train_run(const vlm_train_options *opts, vlm_train_result *res) {
  trainer t = {0};
  if (res)
    memset(res, 0, sizeof *res);
  t.t_start = now_s();
  int rc = setup(&t, opts);
  if (!rc) {
    say(&t,
        "vlmdb train: %s, %lld steps of %d pairs (%d per epoch), lr %.3g, "
        "warm-up %d, %d threads, %.2f GFLOP per step\n",
        t.L->lora_rank ? "LoRA" : t.o.init_dir ? "fine-tuning" : "from scratch",
        (long long)t.total_steps, t.o.batch, t.spe, (double)t.o.lr, t.warmup,
        vlm__tpool_threads(t.pool),
        vlm__tmodel_step_flops(t.L, t.o.batch,
                               (int64_t)t.o.batch * 16) / 1e9);
    rc = run_loop(&t);
  }
  if (res && t.train) {
    res->steps = t.step;
    res->epochs = t.epochs_done;
    res->loss = t.last_epoch_loss;
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
