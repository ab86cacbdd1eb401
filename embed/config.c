/* config.c - CLIP geometry and preprocessing from the checkpoint's JSON
 * files: config.json (Hugging Face CLIPModel), open_clip_config.json, and
 * preprocessor_config.json (CLIPImageProcessor). */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "clip_int.h"
#include "vlm_error.h"

static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

void vlm__config_defaults(vlm__clip_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  /* transformers' CLIPVisionConfig / CLIPTextConfig defaults. */
  cfg->vision_width = 768;
  cfg->vision_layers = 12;
  cfg->vision_heads = 12;
  cfg->vision_mlp = 3072;
  cfg->image_size = 224;
  cfg->patch_size = 32;
  cfg->vision_quick_gelu = 1;
  cfg->vision_eps = 1e-5f;
  cfg->text_width = 512;
  cfg->text_layers = 12;
  cfg->text_heads = 8;
  cfg->text_mlp = 2048;
  cfg->vocab_size = 49408;
  cfg->context_length = 77;
  cfg->text_quick_gelu = 1;
  cfg->text_eps = 1e-5f;
  cfg->bos_id = 49406;
  cfg->eos_id = 49407;
  cfg->projection_dim = 512;
  cfg->logit_scale = 2.6592f;
  memcpy(cfg->mean, clip_mean, sizeof clip_mean);
  memcpy(cfg->std, clip_std, sizeof clip_std);
}

void vlm__pp_defaults(vlm__preprocess_cfg *pp, int image_size) {
  memset(pp, 0, sizeof *pp);
  pp->resize = image_size;
  pp->crop = image_size;
  memcpy(pp->mean, clip_mean, sizeof clip_mean);
  memcpy(pp->std, clip_std, sizeof clip_std);
  pp->alpha = VLM_ALPHA_DROP;
}

static json_t *load_json(const char *path, int *rc) {
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    if (jerr.line < 0 || jerr.position == 0)
      *rc = vlm_seterr(VLM_EIO, "%s: %s", path, jerr.text);
    else
      *rc = vlm_seterr(VLM_EFORMAT, "%s:%d: %s", path, jerr.line, jerr.text);
    return NULL;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    *rc = vlm_seterr(VLM_EFORMAT, "%s: not a JSON object", path);
    return NULL;
  }
  return root;
}

/* Read obj[key] as a positive int into *out if present. */
static int get_int(json_t *obj, const char *key, const char *path,
                   const char *section, int *out) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_integer(v) || json_integer_value(v) < 0 ||
      json_integer_value(v) > (1 << 24))
    return vlm_seterr(VLM_EFORMAT, "%s: %s%s%s is not an integer in range",
                      path, section, *section ? "." : "", key);
  *out = (int)json_integer_value(v);
  return 0;
}

static int get_float(json_t *obj, const char *key, const char *path,
                     const char *section, float *out) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_number(v) || !isfinite(json_number_value(v)))
    return vlm_seterr(VLM_EFORMAT, "%s: %s%s%s is not a number", path,
                      section, *section ? "." : "", key);
  *out = (float)json_number_value(v);
  return 0;
}

static int get_act(json_t *obj, const char *path, const char *section,
                   int *quick) {
  json_t *v = json_object_get(obj, "hidden_act");
  if (!v || json_is_null(v))
    return 0;
  const char *s = json_string_value(v);
  if (!s)
    return vlm_seterr(VLM_EFORMAT, "%s: %s.hidden_act is not a string", path,
                      section);
  if (!strcmp(s, "quick_gelu"))
    *quick = 1;
  else if (!strcmp(s, "gelu"))
    *quick = 0;
  else
    return vlm_seterr(VLM_EUNSUPPORTED,
                      "%s: %s.hidden_act '%.32s' (supported: quick_gelu, gelu)",
                      path, section, s);
  return 0;
}

static json_t *section(json_t *root, const char *name, const char *legacy) {
  json_t *s = json_object_get(root, name);
  if (!json_is_object(s))
    s = json_object_get(root, legacy);
  return json_is_object(s) ? s : NULL;
}

int vlm__config_read_hf(const char *path, vlm__clip_config *cfg) {
  int rc = 0;
  json_t *root = load_json(path, &rc);
  if (!root)
    return rc;
  rc = vlm__config_parse_hf(root, path, cfg);
  json_decref(root);
  return rc;
}

int vlm__config_parse_hf(json_t *root, const char *path,
                         vlm__clip_config *cfg) {
  int rc = 0;
  if (!json_is_object(root))
    return vlm_seterr(VLM_EFORMAT, "%s: not a JSON object", path);
  json_t *text = section(root, "text_config", "text_config_dict");
  json_t *vision = section(root, "vision_config", "vision_config_dict");
  if (!text || !vision) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: missing %s (not a CLIPModel config)",
                    path, text ? "vision_config" : "text_config");
    goto done;
  }
  int channels = 3;
  if ((rc = get_int(root, "projection_dim", path, "", &cfg->projection_dim)) ||
      (rc = get_float(root, "logit_scale_init_value", path, "",
                      &cfg->logit_scale)) ||
      (rc = get_int(text, "vocab_size", path, "text_config", &cfg->vocab_size)) ||
      (rc = get_int(text, "hidden_size", path, "text_config", &cfg->text_width)) ||
      (rc = get_int(text, "intermediate_size", path, "text_config",
                    &cfg->text_mlp)) ||
      (rc = get_int(text, "num_hidden_layers", path, "text_config",
                    &cfg->text_layers)) ||
      (rc = get_int(text, "num_attention_heads", path, "text_config",
                    &cfg->text_heads)) ||
      (rc = get_int(text, "max_position_embeddings", path, "text_config",
                    &cfg->context_length)) ||
      (rc = get_float(text, "layer_norm_eps", path, "text_config",
                      &cfg->text_eps)) ||
      (rc = get_int(text, "bos_token_id", path, "text_config", &cfg->bos_id)) ||
      (rc = get_int(text, "eos_token_id", path, "text_config", &cfg->eos_id)) ||
      (rc = get_act(text, path, "text_config", &cfg->text_quick_gelu)) ||
      (rc = get_int(vision, "hidden_size", path, "vision_config",
                    &cfg->vision_width)) ||
      (rc = get_int(vision, "intermediate_size", path, "vision_config",
                    &cfg->vision_mlp)) ||
      (rc = get_int(vision, "num_hidden_layers", path, "vision_config",
                    &cfg->vision_layers)) ||
      (rc = get_int(vision, "num_attention_heads", path, "vision_config",
                    &cfg->vision_heads)) ||
      (rc = get_int(vision, "image_size", path, "vision_config",
                    &cfg->image_size)) ||
      (rc = get_int(vision, "patch_size", path, "vision_config",
                    &cfg->patch_size)) ||
      (rc = get_int(vision, "num_channels", path, "vision_config", &channels)) ||
      (rc = get_float(vision, "layer_norm_eps", path, "vision_config",
                      &cfg->vision_eps)) ||
      (rc = get_act(vision, path, "vision_config", &cfg->vision_quick_gelu)))
    goto done;
  if (channels != 3) {
    rc = vlm_seterr(VLM_EUNSUPPORTED, "%s: vision_config.num_channels is %d "
                    "(only 3 is supported)", path, channels);
    goto done;
  }
  rc = vlm__config_validate(cfg, path);
done:
  return rc;
}

int vlm__config_read_open_clip(const char *path, vlm__clip_config *cfg,
                               vlm__preprocess_cfg *pp) {
  int rc = 0;
  json_t *root = load_json(path, &rc);
  if (!root)
    return rc;
  json_t *model = json_object_get(root, "model_cfg");
  if (!json_is_object(model)) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: missing model_cfg", path);
    goto done;
  }
  json_t *vision = json_object_get(model, "vision_cfg");
  json_t *text = json_object_get(model, "text_cfg");
  json_t *qg = json_object_get(model, "quick_gelu");
  /* open_clip's default activation is GELU; OpenAI's weights say
   * quick_gelu: true. */
  int quick = json_is_true(qg);
  cfg->vision_quick_gelu = cfg->text_quick_gelu = quick;
  if ((rc = get_int(model, "embed_dim", path, "model_cfg",
                    &cfg->projection_dim)))
    goto done;
  if (json_is_object(vision)) {
    int head_width = 64;
    if ((rc = get_int(vision, "width", path, "model_cfg.vision_cfg",
                      &cfg->vision_width)) ||
        (rc = get_int(vision, "layers", path, "model_cfg.vision_cfg",
                      &cfg->vision_layers)) ||
        (rc = get_int(vision, "patch_size", path, "model_cfg.vision_cfg",
                      &cfg->patch_size)) ||
        (rc = get_int(vision, "image_size", path, "model_cfg.vision_cfg",
                      &cfg->image_size)) ||
        (rc = get_int(vision, "head_width", path, "model_cfg.vision_cfg",
                      &head_width)))
      goto done;
    if (cfg->vision_width && head_width > 0)
      cfg->vision_heads = cfg->vision_width / head_width;
  }
  if (json_is_object(text)) {
    cfg->text_heads = 8; /* open_clip's CLIPTextCfg default */
    if ((rc = get_int(text, "width", path, "model_cfg.text_cfg",
                      &cfg->text_width)) ||
        (rc = get_int(text, "heads", path, "model_cfg.text_cfg",
                      &cfg->text_heads)) ||
        (rc = get_int(text, "layers", path, "model_cfg.text_cfg",
                      &cfg->text_layers)) ||
        (rc = get_int(text, "context_length", path, "model_cfg.text_cfg",
                      &cfg->context_length)) ||
        (rc = get_int(text, "vocab_size", path, "model_cfg.text_cfg",
                      &cfg->vocab_size)))
      goto done;
  }
  json_t *pre = json_object_get(root, "preprocess_cfg");
  if (json_is_object(pre)) {
    json_t *mean = json_object_get(pre, "mean");
    json_t *std = json_object_get(pre, "std");
    for (int c = 0; c < 3; c++) {
      json_t *m = json_array_get(mean, (size_t)c);
      json_t *s = json_array_get(std, (size_t)c);
      if (json_is_number(m))
        pp->mean[c] = cfg->mean[c] = (float)json_number_value(m);
      if (json_is_number(s) && json_number_value(s) > 0)
        pp->std[c] = cfg->std[c] = (float)json_number_value(s);
    }
  }
done:
  json_decref(root);
  return rc;
}

/* size / crop_size: an int, {"shortest_edge": n} or {"height", "width"}. */
static int get_side(json_t *root, const char *key, const char *path,
                    int *out) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v))
    return 0;
  if (json_is_integer(v)) {
    *out = (int)json_integer_value(v);
  } else if (json_is_object(v)) {
    json_t *se = json_object_get(v, "shortest_edge");
    json_t *h = json_object_get(v, "height");
    json_t *w = json_object_get(v, "width");
    if (json_is_integer(se)) {
      *out = (int)json_integer_value(se);
    } else if (json_is_integer(h) && json_is_integer(w)) {
      if (json_integer_value(h) != json_integer_value(w))
        return vlm_seterr(VLM_EUNSUPPORTED, "%s: %s is not square", path, key);
      *out = (int)json_integer_value(h);
    } else {
      return vlm_seterr(VLM_EFORMAT, "%s: %s has no shortest_edge or "
                        "height/width", path, key);
    }
  } else {
    return vlm_seterr(VLM_EFORMAT, "%s: %s is not an integer or object", path,
                      key);
  }
  if (*out <= 0 || *out > 16384)
    return vlm_seterr(VLM_EFORMAT, "%s: %s is out of range", path, key);
  return 0;
}

int vlm__config_read_preprocessor(const char *path, vlm__preprocess_cfg *pp) {
  int rc = 0;
  json_t *root = load_json(path, &rc);
  if (!root)
    return rc;
  static const char *keys[2] = {"image_mean", "image_std"};
  float *dst[2] = {pp->mean, pp->std};
  for (int k = 0; k < 2; k++) {
    json_t *arr = json_object_get(root, keys[k]);
    if (!arr || json_is_null(arr))
      continue;
    if (!json_is_array(arr) || json_array_size(arr) != 3) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: %s is not an array of 3 numbers",
                      path, keys[k]);
      goto done;
    }
    for (size_t c = 0; c < 3; c++) {
      json_t *x = json_array_get(arr, c);
      double d = json_is_number(x) ? json_number_value(x) : NAN;
      if (!isfinite(d) || (k == 1 && d <= 0)) {
        rc = vlm_seterr(VLM_EFORMAT, "%s: %s[%zu] is not a valid number",
                        path, keys[k], c);
        goto done;
      }
      dst[k][c] = (float)d;
    }
  }
  if ((rc = get_side(root, "size", path, &pp->resize)) ||
      (rc = get_side(root, "crop_size", path, &pp->crop)))
    goto done;
  json_t *alpha = json_object_get(root, "vlmdb_alpha");
  if (alpha && !json_is_null(alpha)) {
    const char *mode = json_string_value(alpha);
    if (mode && !strcmp(mode, "white"))
      pp->alpha = VLM_ALPHA_WHITE;
    else if (mode && !strcmp(mode, "drop"))
      pp->alpha = VLM_ALPHA_DROP;
    else
      rc = vlm_seterr(VLM_EFORMAT, "%s: vlmdb_alpha must be \"white\" or "
                      "\"drop\"", path);
  }
  json_t *exif = json_object_get(root, "vlmdb_exif_transpose");
  if (!rc && exif && !json_is_null(exif)) {
    if (json_is_boolean(exif))
      pp->exif_transpose = json_is_true(exif);
    else
      rc = vlm_seterr(VLM_EFORMAT, "%s: vlmdb_exif_transpose must be true or "
                      "false", path);
  }
done:
  json_decref(root);
  return rc;
}

int vlm__config_validate(const vlm__clip_config *cfg, const char *label) {
  struct {
    const char *name;
    int value, max;
  } ints[] = {
      {"vision_config.hidden_size", cfg->vision_width, 1 << 14},
      {"vision_config.num_hidden_layers", cfg->vision_layers, 1 << 10},
      {"vision_config.num_attention_heads", cfg->vision_heads, 1 << 10},
      {"vision_config.intermediate_size", cfg->vision_mlp, 1 << 16},
      {"vision_config.image_size", cfg->image_size, 1 << 13},
      {"vision_config.patch_size", cfg->patch_size, 1 << 10},
      {"text_config.hidden_size", cfg->text_width, 1 << 14},
      {"text_config.num_hidden_layers", cfg->text_layers, 1 << 10},
      {"text_config.num_attention_heads", cfg->text_heads, 1 << 10},
      {"text_config.intermediate_size", cfg->text_mlp, 1 << 16},
      {"text_config.vocab_size", cfg->vocab_size, 1 << 22},
      {"text_config.max_position_embeddings", cfg->context_length, 1 << 14},
      {"projection_dim", cfg->projection_dim, 1 << 14},
  };
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
    if (ints[i].value <= 0 || ints[i].value > ints[i].max)
      return vlm_seterr(VLM_EFORMAT, "%s: %s = %d is out of range (1..%d)",
                        label, ints[i].name, ints[i].value, ints[i].max);
  if (cfg->vision_width % cfg->vision_heads)
    return vlm_seterr(VLM_EFORMAT, "%s: vision_config.hidden_size %d is not "
                      "a multiple of num_attention_heads %d", label,
                      cfg->vision_width, cfg->vision_heads);
  if (cfg->text_width % cfg->text_heads)
    return vlm_seterr(VLM_EFORMAT, "%s: text_config.hidden_size %d is not "
                      "a multiple of num_attention_heads %d", label,
                      cfg->text_width, cfg->text_heads);
  if (cfg->image_size % cfg->patch_size)
    return vlm_seterr(VLM_EFORMAT, "%s: vision_config.image_size %d is not a "
                      "multiple of patch_size %d", label, cfg->image_size,
                      cfg->patch_size);
  int grid = cfg->image_size / cfg->patch_size;
  if ((int64_t)grid * grid > 1 << 16)
    return vlm_seterr(VLM_EFORMAT, "%s: %d patches per image is too many",
                      label, grid * grid);
  if (!(cfg->vision_eps > 0) || !(cfg->text_eps > 0))
    return vlm_seterr(VLM_EFORMAT, "%s: layer_norm_eps must be positive",
                      label);
  if (cfg->bos_id < 0 || cfg->bos_id >= cfg->vocab_size || cfg->eos_id < 0 ||
      cfg->eos_id >= cfg->vocab_size)
    return vlm_seterr(VLM_EFORMAT, "%s: text_config.bos_token_id/eos_token_id "
                      "out of the vocabulary", label);
  return 0;
}
