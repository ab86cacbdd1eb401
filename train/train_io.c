/* train_io.c - the trainer's files: Hugging Face config and export,
 * checkpoints (save, read, resume), training.json and metrics.csv. */
#include "train_int.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "safetensors_write.h"
#include "vlm_error.h"

int vlm__train_join_path(char *out, size_t cap, const char *dir,
                         const char *name) {
  if ((size_t)snprintf(out, cap, "%s/%s", dir, name) >= cap)
    return vlm_seterr(VLM_EINVAL, "%s/%s: path too long", dir, name);
  return 0;
}

int vlm__train_file_exists(const char *path) { return access(path, F_OK) == 0; }

int vlm__train_mkdir_p(const char *dir) {
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

/* A Hugging Face CLIP config.json over the Hugging Face defaults, read as
 * vlm_clip_load reads it (embed/config.c). */
int vlm__train_parse_config(json_t *root, const char *path,
                            vlm__clip_config *c) {
  vlm__config_defaults(c);
  int rc = vlm__config_parse_hf(root, path, c);
  if (rc || c->family != VLM__FAMILY_CLIP)
    return rc;
  /* legacy configs say eos 2 and mean "the largest id", which is eos */
  if (c->eos_id == 2)
    c->eos_id = 49407;
  if (c->bos_id == 0)
    c->bos_id = 49406;
  return 0;
}

int vlm__train_load_config(const char *path, vlm__clip_config *c) {
  json_error_t e;
  json_t *root = json_load_file(path, 0, &e);
  if (!root)
    return vlm_seterr(vlm__train_file_exists(path) ? VLM_EFORMAT
                                                   : VLM_ENOTFOUND,
                      "%s:%d: %s", path, e.line, e.text);
  int rc = vlm__train_parse_config(root, path, c);
  json_decref(root);
  return rc;
}

static const char *act_name(vlm__act act) {
  return act == VLM__ACT_QUICK_GELU  ? "quick_gelu"
         : act == VLM__ACT_GELU_TANH ? "gelu_pytorch_tanh"
                                     : "gelu";
}

/* The vision_config every family shares. */
static json_t *vision_json(const vlm__clip_config *c, const char *type) {
  return json_pack(
      "{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f}", "model_type", type,
      "hidden_size", c->vision_width, "intermediate_size", c->vision_mlp,
      "num_hidden_layers", c->vision_layers, "num_attention_heads",
      c->vision_heads, "image_size", c->image_size, "patch_size",
      c->patch_size, "num_channels", 3, "hidden_act", act_name(c->vision_act),
      "layer_norm_eps", (double)c->vision_eps);
}

/* config.json of the family: CLIPModel, SiglipModel or ChineseCLIPModel,
 * stating every field vlm_clip_load and transformers read. */
static json_t *config_json(const vlm__clip_config *c) {
  json_t *t = NULL, *v = NULL;
  if (c->family == VLM__FAMILY_SIGLIP) {
    t = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f}",
                  "model_type", "siglip_text_model", "vocab_size",
                  c->vocab_size, "hidden_size", c->text_width,
                  "intermediate_size", c->text_mlp, "num_hidden_layers",
                  c->text_layers, "num_attention_heads", c->text_heads,
                  "max_position_embeddings", c->context_length, "hidden_act",
                  act_name(c->text_act), "layer_norm_eps", (double)c->text_eps);
    v = vision_json(c, "siglip_vision_model");
    return t && v ? json_pack("{s:[s], s:s, s:f, s:s, s:o, s:o}",
                              "architectures", "SiglipModel", "model_type",
                              "siglip", "initializer_factor", 1.0,
                              "torch_dtype", "float32", "text_config", t,
                              "vision_config", v)
                  : (json_decref(t), json_decref(v), NULL);
  }
  if (c->family == VLM__FAMILY_CHINESE_CLIP) {
    t = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:i, "
                  "s:s}",
                  "model_type", "chinese_clip_text_model", "vocab_size",
                  c->vocab_size, "hidden_size", c->text_width,
                  "intermediate_size", c->text_mlp, "num_hidden_layers",
                  c->text_layers, "num_attention_heads", c->text_heads,
                  "max_position_embeddings", c->context_length,
                  "type_vocab_size", c->type_vocab_size, "hidden_act",
                  act_name(c->text_act), "layer_norm_eps", (double)c->text_eps,
                  "pad_token_id", 0, "position_embedding_type", "absolute");
    v = vision_json(c, "chinese_clip_vision_model");
    if (v)
      json_object_set_new(v, "projection_dim", json_integer(c->projection_dim));
    return t && v ? json_pack("{s:[s], s:s, s:i, s:f, s:f, s:f, s:s, s:o, "
                              "s:o}",
                              "architectures", "ChineseCLIPModel",
                              "model_type", "chinese_clip", "projection_dim",
                              c->projection_dim, "logit_scale_init_value",
                              (double)c->logit_scale, "initializer_factor",
                              1.0, "initializer_range", 0.02, "torch_dtype",
                              "float32", "text_config", t, "vision_config", v)
                  : (json_decref(t), json_decref(v), NULL);
  }
  t = json_pack(
      "{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:i, s:i, s:i, s:i}",
      "model_type", "clip_text_model", "vocab_size", c->vocab_size,
      "hidden_size", c->text_width, "intermediate_size", c->text_mlp,
      "num_hidden_layers", c->text_layers, "num_attention_heads",
      c->text_heads, "max_position_embeddings", c->context_length,
      "hidden_act", act_name(c->text_act), "layer_norm_eps",
      (double)c->text_eps, "projection_dim", c->projection_dim,
      "bos_token_id", c->bos_id, "eos_token_id", c->eos_id, "pad_token_id",
      1);
  v = vision_json(c, "clip_vision_model");
  if (v)
    json_object_set_new(v, "projection_dim", json_integer(c->projection_dim));
  return t && v ? json_pack("{s:[s], s:s, s:i, s:f, s:s, s:o, s:o}",
                            "architectures", "CLIPModel", "model_type", "clip",
                            "projection_dim", c->projection_dim,
                            "logit_scale_init_value", (double)c->logit_scale,
                            "torch_dtype", "float32", "text_config", t,
                            "vision_config", v)
                : (json_decref(t), json_decref(v), NULL);
}

/* The preprocessing the model was trained with, as the family's image
 * processor states it (for evaluation the trainer preprocesses as
 * vlm_clip_load's family defaults do); "vlmdb_alpha" tells the engine how
 * to flatten transparent images as training did. */
static json_t *preprocessor_json(const vlm__clip_config *c, int alpha_white) {
  int S = c->image_size;
  const char *alpha = alpha_white ? "white" : "drop";
  if (c->family == VLM__FAMILY_SIGLIP)
    return json_pack(
        "{s:b, s:b, s:b, s:b, s:[f,f,f], s:[f,f,f], s:s, s:i, s:f, "
        "s:{s:i, s:i}, s:s}",
        "do_convert_rgb", 1, "do_normalize", 1, "do_rescale", 1, "do_resize",
        1, "image_mean", (double)c->mean[0], (double)c->mean[1],
        (double)c->mean[2], "image_std", (double)c->std[0], (double)c->std[1],
        (double)c->std[2], "image_processor_type", "SiglipImageProcessor",
        "resample", 3, "rescale_factor", 1.0 / 255, "size", "height", S,
        "width", S, "vlmdb_alpha", alpha);
  return json_pack(
      "{s:{s:i, s:i}, s:b, s:b, s:b, s:b, s:b, s:[f,f,f], s:[f,f,f], "
      "s:s, s:i, s:f, s:{s:i}, s:s}",
      "crop_size", "height", S, "width", S, "do_center_crop", 1,
      "do_normalize", 1, "do_resize", 1, "do_rescale", 1, "do_convert_rgb", 1,
      "image_mean", (double)c->mean[0], (double)c->mean[1],
      (double)c->mean[2], "image_std", (double)c->std[0], (double)c->std[1],
      (double)c->std[2], "image_processor_type",
      c->family == VLM__FAMILY_CHINESE_CLIP ? "ChineseCLIPImageProcessor"
                                            : "CLIPImageProcessor",
      "resample", 3, "rescale_factor", 1.0 / 255, "size", "shortest_edge", S,
      "vlmdb_alpha", alpha);
}

/* ---- checkpoints and export --------------------------------------------- */

/* Base weights as exported: with LoRA, W + (alpha/r) B A merged in. */
static float *merged_weights(vlm__trainer *t) {
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

/* The family's tokenizer files from the tokenizer directory: the model
 * files are required (vocab.json + merges.txt, spiece.model or Gemma's
 * tokenizer.model, vocab.txt), tokenizer_config.json and
 * special_tokens_map.json copied when present (they hold the special
 * tokens, lowercasing and length limits the engine reads). */
static int copy_tokenizer(vlm__trainer *t) {
  static const char *const clip_files[] = {"vocab.json", "merges.txt", NULL};
  static const char *const spm_files[] = {"spiece.model", "tokenizer.model",
                                          NULL};
  static const char *const wp_files[] = {"vocab.txt", NULL};
  static const char *const extra[] = {"tokenizer_config.json",
                                      "special_tokens_map.json", NULL};
  const vlm__family fam = t->cfg.family;
  const char *const *need = fam == VLM__FAMILY_SIGLIP         ? spm_files
                            : fam == VLM__FAMILY_CHINESE_CLIP ? wp_files
                                                              : clip_files;
  int copied = 0, rc;
  for (int pass = 0; pass < 2; pass++) {
    const char *const *list = pass ? extra : need;
    if (pass && fam == VLM__FAMILY_CLIP)
      break; /* CLIP's vocab.json + merges.txt are all it reads */
    for (int i = 0; list[i]; i++) {
      char src[4200], dst[4200];
      if ((rc = vlm__train_join_path(src, sizeof src, t->tok_dir, list[i])) ||
          (rc = vlm__train_join_path(dst, sizeof dst, t->o.out_dir, list[i])))
        return rc;
      /* SigLIP has one of its two model files; the others all theirs */
      int optional = pass || fam == VLM__FAMILY_SIGLIP;
      if (optional && !vlm__train_file_exists(src))
        continue;
      struct stat a, b;
      if (stat(dst, &b) == 0 && stat(src, &a) == 0 && a.st_ino == b.st_ino &&
          a.st_dev == b.st_dev) {
        copied += !pass;
        continue; /* the tokenizer already lives here */
      }
      if ((rc = copy_file(src, dst)))
        return rc;
      copied += !pass;
    }
  }
  if (!copied)
    return vlm_seterr(VLM_ENOTFOUND, "%s: no spiece.model or tokenizer.model",
                      t->tok_dir);
  return 0;
}

/* The Hugging Face directory: config, weights, tokenizer, preprocessor,
 * and with LoRA optionally the adapters alone. */
static int export_model(vlm__trainer *t) {
  char path[4200];
  const char *dir = t->o.out_dir;
  int rc;
  json_t *cfg = config_json(&t->cfg);
  json_t *pre = preprocessor_json(&t->cfg, t->o.alpha_white);
  if (!cfg || !pre) {
    json_decref(cfg);
    json_decref(pre);
    return vlm_seterr(VLM_ENOMEM, "config.json");
  }
  if (!t->o.f16)
    json_object_set_new(cfg, "torch_dtype", json_string("float32"));
  else
    json_object_set_new(cfg, "torch_dtype", json_string("float16"));
  if ((rc = vlm__train_join_path(path, sizeof path, dir, "config.json")) ||
      (rc = write_json(path, cfg)) ||
      (rc = vlm__train_join_path(path, sizeof path, dir,
                                 "preprocessor_config.json")) ||
      (rc = write_json(path, pre))) {
    json_decref(cfg);
    json_decref(pre);
    return rc;
  }
  json_decref(cfg);
  json_decref(pre);
  if ((rc = copy_tokenizer(t)))
    return rc;
  float *w = merged_weights(t);
  if (!w)
    return vlm_seterr(VLM_ENOMEM, "export");
  static const char *const meta[] = {"format", "pt", NULL};
  if (!(rc = vlm__train_join_path(path, sizeof path, dir, "model.safetensors")))
    rc = write_tensors(path, t->L->params, t->L->nparams, w, t->o.f16, "",
                       meta);
  free(w);
  if (rc || t->L->lora_rank == 0 || !t->o.save_adapters)
    return rc;
  if ((rc = vlm__train_join_path(path, sizeof path, dir,
                                 "adapter_model.safetensors")) ||
      (rc = write_tensors(path, t->L->lora, t->L->nlora,
                          vlm__tmodel_lora_f32(t->m), 0, "base_model.model.",
                          meta)))
    return rc;
  /* PEFT's target_modules: CLIP's and Chinese-CLIP's module names are
   * each unique to the encoder layers (BERT's "dense" is its attention
   * output, intermediate and output projections: ChineseCLIPModel has no
   * pooler); SigLIP's head reuses out_proj, fc1 and fc2, so its targets
   * are the pattern PEFT full-matches against module names. */
  json_t *targets;
  if (t->cfg.family == VLM__FAMILY_SIGLIP)
    targets = json_string("(vision|text)_model\\.encoder\\.layers\\.[0-9]+\\."
                          "(self_attn\\.(q_proj|k_proj|v_proj|out_proj)|"
                          "mlp\\.(fc1|fc2))");
  else if (t->cfg.family == VLM__FAMILY_CHINESE_CLIP)
    targets = json_pack("[s,s,s,s,s,s,s,s,s,s]", "q_proj", "k_proj", "v_proj",
                        "out_proj", "fc1", "fc2", "query", "key", "value",
                        "dense");
  else
    targets = json_pack("[s,s,s,s,s,s]", "q_proj", "k_proj", "v_proj",
                        "out_proj", "fc1", "fc2");
  json_t *ac = targets ? json_pack(
      "{s:s, s:i, s:f, s:f, s:o, s:s, s:s?, s:b}", "peft_type",
      "LORA", "r", t->L->lora_rank, "lora_alpha", (double)t->L->lora_alpha,
      "lora_dropout", 0.0, "target_modules", targets, "bias", "none",
      "base_model_name_or_path", t->o.init_dir, "fan_in_fan_out", 0) : NULL;
  if (!ac)
    return vlm_seterr(VLM_ENOMEM, "adapter_config.json");
  if (!(rc = vlm__train_join_path(path, sizeof path, dir,
                                  "adapter_config.json")))
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

static json_t *options_json(const vlm__trainer *t) {
  const vlm_train_options *o = &t->o;
  json_t *j = json_pack(
      "{s:I, s:i, s:I, s:f, s:f, s:i, s:f, s:f, s:f, s:f, s:f, s:i, s:f, "
      "s:b, s:b, s:f, s:f, s:b, s:i, s:b, s:b, s:f}",
      "seed", (json_int_t)o->seed, "batch", o->batch, "total_steps",
      (json_int_t)t->total_steps, "lr", f7(o->lr), "min_lr", f7(o->min_lr),
      "warmup_steps", t->warmup, "weight_decay", f7(o->weight_decay),
      "beta1", f7(o->beta1), "beta2", f7(o->beta2), "adam_eps",
      f7(o->adam_eps), "grad_clip", f7(o->grad_clip), "lora_rank",
      o->lora_rank, "lora_alpha", f7(o->lora_alpha), "augment",
      !o->no_augment, "hflip", o->hflip, "crop_scale_min",
      f7(o->crop_scale_min), "jitter", f7(o->jitter), "f16", o->f16,
      "epochs", o->epochs, "save_adapters", o->save_adapters, "alpha_white",
      o->alpha_white, "alt_text_share", f7(o->alt_text_share));
  if (j && t->text) { /* absent without text pairs: older files unchanged */
    json_object_set_new(j, "text_batch", json_integer(t->text_P));
    json_object_set_new(j, "text_rounds",
                        json_integer(o->text_rounds > 0 ? o->text_rounds : 1));
    json_object_set_new(j, "text_weight", json_real(f7(o->text_weight)));
  }
  return j;
}

/* The resumable state: F32 weights (and adapters), AdamW moments, step,
 * and everything the schedule and data order depend on. */
static int save_checkpoint(vlm__trainer *t) {
  char dir[4200], path[4200];
  int rc;
  if ((rc =
           vlm__train_join_path(dir, sizeof dir, t->o.out_dir, "checkpoint")) ||
      (rc = vlm__train_mkdir_p(dir)) ||
      (rc = vlm__train_join_path(path, sizeof path, dir, "state.safetensors")))
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
                        "options", opt_s ? opt_s : "{}",
                        t->text ? "text_digest" : NULL,
                        t->text ? vlm__ttext_digest(t->text) : NULL, NULL};
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

const char *vlm__train_meta_get(json_t *meta, const char *key) {
  return json_string_value(json_object_get(meta, key));
}

/* Read the checkpoint's metadata (config, options, step). */
int vlm__train_read_checkpoint_meta(const char *path, json_t **meta) {
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
  if (!m || !vlm__train_meta_get(m, "format") ||
      strcmp(vlm__train_meta_get(m, "format"), CKPT_FORMAT)) {
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

int vlm__train_load_checkpoint(vlm__trainer *t, const char *path) {
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
int vlm__train_apply_saved_options(vlm__trainer *t, json_t *opt,
                                   const char *path) {
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
  /* added after the first checkpoints were made: optional */
  if (json_object_get(opt, "alpha_white"))
    GET_B("alpha_white", o->alpha_white);
  if (json_object_get(opt, "alt_text_share"))
    GET_F("alt_text_share", o->alt_text_share);
  if (json_object_get(opt, "text_batch")) {
    GET_I("text_batch", o->text_batch);
    if (json_object_get(opt, "text_rounds"))
      GET_I("text_rounds", o->text_rounds);
    GET_F("text_weight", o->text_weight);
  }
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

static int write_training_json(vlm__trainer *t, double elapsed) {
  char path[4200];
  int rc =
      vlm__train_join_path(path, sizeof path, t->o.out_dir, "training.json");
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
  if (t->text) {
    json_object_set_new(doc, "text_digest",
                        json_string(vlm__ttext_digest(t->text)));
    json_object_set_new(doc, "text_pairs",
                        json_integer(vlm__ttext_count(t->text)));
    json_object_set_new(doc, "skipped_text_pairs",
                        json_integer(vlm__ttext_skipped(t->text)));
  }
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
  if (t->text)
    json_object_set_new(fin, "text_loss", json_real(t->last_epoch_tloss));
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
int vlm__train_metrics_trim(vlm__trainer *t, int64_t max_step) {
  char path[4200];
  int rc = vlm__train_join_path(path, sizeof path, t->o.out_dir, "metrics.csv");
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
    int is_row = !first && sscanf(line, "%lld,%lld", &epoch, &step) == 2;
    if (!is_row || step <= max_step)
      fputs(line, out);
    if (is_row && step <= max_step && step > t->metrics_last_step)
      t->metrics_last_step = step;
    first = 0;
  }
  fclose(f);
  if (fclose(out) || rename(tmp, path))
    return vlm_seterr(VLM_EIO, "%s: cannot rewrite", path);
  return 0;
}

int vlm__train_metrics_append(vlm__trainer *t, double elapsed) {
  char path[4200];
  int rc = vlm__train_join_path(path, sizeof path, t->o.out_dir, "metrics.csv");
  if (rc)
    return rc;
  int fresh = !vlm__train_file_exists(path);
  FILE *f = fopen(path, "a");
  if (!f)
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  if (fresh)
    fprintf(f, "epoch,step,train_loss,lr,temperature,heldout_pairs,"
               "i2t_r1,i2t_r5,i2t_r10,i2t_median_rank,"
               "t2i_r1,t2i_r5,t2i_r10,t2i_median_rank,elapsed_s\n");
  const vlm_train_recall *r = &t->recall;
  float ls = vlm__tmodel_params_f32(t->m)[t->L->logit_scale];
  fprintf(f,
          "%d,%lld,%.6f,%.6g,%.6f,%d,%.4f,%.4f,%.4f,%.1f,%.4f,%.4f,%.4f,"
          "%.1f,%.1f\n",
          t->epochs_done, (long long)t->step, t->last_epoch_loss,
          (double)vlm__train_lr_at(t, t->step > 0 ? t->step - 1 : 0), exp(-ls),
          r->n, r->i2t[0], r->i2t[1], r->i2t[2], r->i2t_median, r->t2i[0],
          r->t2i[1], r->t2i[2], r->t2i_median, elapsed);
  t->metrics_last_step = t->step;
  if (fclose(f))
    return vlm_seterr(VLM_EIO, "%s: write error", path);
  return 0;
}

int vlm__train_save_all(vlm__trainer *t) {
  int rc = save_checkpoint(t);
  if (!rc)
    rc = export_model(t);
  if (!rc)
    rc = write_training_json(t, vlm__train_now() - t->t_start);
  return rc;
}

