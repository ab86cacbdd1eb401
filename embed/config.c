/* config.c - model geometry and preprocessing from the checkpoint's JSON
 * files: config.json (Hugging Face CLIPModel, SiglipModel or
 * ChineseCLIPModel), open_clip_config.json, and preprocessor_config.json
 * (CLIPImageProcessor, SiglipImageProcessor, ChineseCLIPImageProcessor).
 *
 * transformers writes only the values that differ from its defaults, so
 * real SigLIP and Chinese-CLIP configs state little; the defaults below are
 * transformers v4.44.2's, family by family. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "clip_int.h"
#include "vlm_error.h"

static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

void vlm__config_defaults(vlm__clip_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->family = VLM__FAMILY_CLIP;
  /* transformers' CLIPVisionConfig / CLIPTextConfig defaults. */
  cfg->vision_width = 768;
  cfg->vision_layers = 12;
  cfg->vision_heads = 12;
  cfg->vision_mlp = 3072;
  cfg->image_size = 224;
  cfg->patch_size = 32;
  cfg->vision_act = VLM__ACT_QUICK_GELU;
  cfg->vision_eps = 1e-5f;
  cfg->text_width = 512;
  cfg->text_layers = 12;
  cfg->text_heads = 8;
  cfg->text_mlp = 2048;
  cfg->vocab_size = 49408;
  cfg->context_length = 77;
  cfg->text_act = VLM__ACT_QUICK_GELU;
  cfg->text_eps = 1e-5f;
  cfg->bos_id = 49406;
  cfg->eos_id = 49407;
  cfg->projection_dim = 512;
  cfg->logit_scale = 2.6592f;
  memcpy(cfg->mean, clip_mean, sizeof clip_mean);
  memcpy(cfg->std, clip_std, sizeof clip_std);
}

void vlm__config_family_defaults(vlm__clip_config *cfg, vlm__family family) {
  vlm__config_defaults(cfg);
  cfg->family = family;
  if (family == VLM__FAMILY_SIGLIP) {
    /* SiglipTextConfig / SiglipVisionConfig */
    cfg->vision_width = cfg->text_width = 768;
    cfg->vision_layers = cfg->text_layers = 12;
    cfg->vision_heads = cfg->text_heads = 12;
    cfg->vision_mlp = cfg->text_mlp = 3072;
    cfg->image_size = 224;
    cfg->patch_size = 16;
    cfg->vision_act = cfg->text_act = VLM__ACT_GELU_TANH;
    cfg->vision_eps = cfg->text_eps = 1e-6f;
    cfg->vocab_size = 32000;
    cfg->context_length = 64;
    cfg->projection_dim = 768; /* = the width: there are no projections */
    cfg->logit_scale = 0;      /* from the checkpoint's tensors */
    for (int c = 0; c < 3; c++)
      cfg->mean[c] = cfg->std[c] = 0.5f;
  } else if (family == VLM__FAMILY_CHINESE_CLIP) {
    /* ChineseCLIPTextConfig (BERT) / ChineseCLIPVisionConfig */
    cfg->text_width = 768;
    cfg->text_layers = 12;
    cfg->text_heads = 12;
    cfg->text_mlp = 3072;
    cfg->text_act = VLM__ACT_GELU;
    cfg->text_eps = 1e-12f;
    cfg->vocab_size = 30522;
    cfg->context_length = 512;
    cfg->type_vocab_size = 2;
    /* the vision defaults are CLIPVisionConfig's (patch 32, quick_gelu) */
  }
  if (family != VLM__FAMILY_CLIP)
    cfg->bos_id = cfg->eos_id = -1; /* their tokenizers say */
}

const char *vlm__family_name(vlm__family family) {
  switch (family) {
  case VLM__FAMILY_SIGLIP:
    return "siglip";
  case VLM__FAMILY_CHINESE_CLIP:
    return "chinese_clip";
  default:
    return "clip";
  }
}

void vlm__pp_defaults(vlm__preprocess_cfg *pp, int image_size) {
  vlm__preprocess_defaults(pp, image_size);
}

void vlm__pp_family_defaults(vlm__preprocess_cfg *pp, vlm__family family,
                             int image_size) {
  vlm__preprocess_defaults(pp, image_size);
  if (family == VLM__FAMILY_CLIP)
    return;
  /* Hugging Face pipelines: load_image applies the EXIF orientation and
   * converts to RGB; the processors' crops floor their offsets. */
  pp->rgb_first = 1;
  pp->exif_transpose = 1;
  pp->crop_floor = 1;
  if (family == VLM__FAMILY_SIGLIP) {
    /* SiglipImageProcessor: straight to size x size, no crop (its own
     * default size is 224; the model's is the only one that runs),
     * mean = std = 0.5 */
    pp->resize_w = pp->resize_h = image_size;
    pp->center_crop = 0;
    for (int c = 0; c < 3; c++)
      pp->mean[c] = pp->std[c] = 0.5f;
  }
  /* ChineseCLIPImageProcessor: shortest edge, center crop, CLIP's mean
   * and std, as vlm__preprocess_defaults */
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
                   vlm__act *act) {
  json_t *v = json_object_get(obj, "hidden_act");
  if (!v || json_is_null(v))
    return 0;
  const char *s = json_string_value(v);
  if (!s)
    return vlm_seterr(VLM_EFORMAT, "%s: %s.hidden_act is not a string", path,
                      section);
  if (!strcmp(s, "quick_gelu"))
    *act = VLM__ACT_QUICK_GELU;
  else if (!strcmp(s, "gelu"))
    *act = VLM__ACT_GELU;
  else if (!strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_new") ||
           !strcmp(s, "gelu_fast"))
    *act = VLM__ACT_GELU_TANH;
  else
    return vlm_seterr(VLM_EUNSUPPORTED,
                      "%s: %s.hidden_act '%.32s' (supported: quick_gelu, "
                      "gelu, gelu_pytorch_tanh, gelu_new, gelu_fast)",
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

/* The family a config.json describes: model_type, else the first of
 * architectures, else CLIP (older CLIP configs state neither). */
static int detect_family(json_t *root, const char *path, vlm__family *out) {
  static const struct {
    const char *model_type, *architecture;
    vlm__family family;
  } known[] = {{"clip", "CLIPModel", VLM__FAMILY_CLIP},
               {"siglip", "SiglipModel", VLM__FAMILY_SIGLIP},
               {"chinese_clip", "ChineseCLIPModel", VLM__FAMILY_CHINESE_CLIP}};
  const size_t n_known = sizeof known / sizeof known[0];
  json_t *mt = json_object_get(root, "model_type");
  *out = VLM__FAMILY_CLIP;
  if (mt && !json_is_null(mt)) {
    const char *s = json_string_value(mt);
    if (!s)
      return vlm_seterr(VLM_EFORMAT, "%s: model_type is not a string", path);
    for (size_t i = 0; i < n_known; i++)
      if (!strcmp(s, known[i].model_type)) {
        *out = known[i].family;
        return 0;
      }
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: model_type '%.40s' (supported: "
                      "clip, siglip, chinese_clip)", path, s);
  }
  const char *arch = json_string_value(
      json_array_get(json_object_get(root, "architectures"), 0));
  for (size_t i = 0; arch && i < n_known; i++)
    if (!strcmp(arch, known[i].architecture))
      *out = known[i].family;
  return 0;
}

static int read_vision(json_t *vision, const char *path,
                       vlm__clip_config *cfg) {
  int rc, channels = 3;
  const char *sec = "vision_config";
  if ((rc = get_int(vision, "hidden_size", path, sec, &cfg->vision_width)) ||
      (rc = get_int(vision, "intermediate_size", path, sec,
                    &cfg->vision_mlp)) ||
      (rc = get_int(vision, "num_hidden_layers", path, sec,
                    &cfg->vision_layers)) ||
      (rc = get_int(vision, "num_attention_heads", path, sec,
                    &cfg->vision_heads)) ||
      (rc = get_int(vision, "image_size", path, sec, &cfg->image_size)) ||
      (rc = get_int(vision, "patch_size", path, sec, &cfg->patch_size)) ||
      (rc = get_int(vision, "num_channels", path, sec, &channels)) ||
      (rc = get_float(vision, "layer_norm_eps", path, sec,
                      &cfg->vision_eps)) ||
      (rc = get_act(vision, path, sec, &cfg->vision_act)))
    return rc;
  if (channels != 3)
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: vision_config.num_channels is "
                      "%d (only 3 is supported)", path, channels);
  /* SigLIP towers built without their pooling head have no image
   * embedding. */
  if (json_is_false(json_object_get(vision, "vision_use_head")))
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: vision_config.vision_use_head "
                      "is false (no image embedding without the head)", path);
  return 0;
}

static int read_text(json_t *text, const char *path, vlm__clip_config *cfg) {
  int rc;
  const char *sec = "text_config";
  if ((rc = get_int(text, "vocab_size", path, sec, &cfg->vocab_size)) ||
      (rc = get_int(text, "hidden_size", path, sec, &cfg->text_width)) ||
      (rc = get_int(text, "intermediate_size", path, sec, &cfg->text_mlp)) ||
      (rc = get_int(text, "num_hidden_layers", path, sec,
                    &cfg->text_layers)) ||
      (rc = get_int(text, "num_attention_heads", path, sec,
                    &cfg->text_heads)) ||
      (rc = get_int(text, "max_position_embeddings", path, sec,
                    &cfg->context_length)) ||
      (rc = get_float(text, "layer_norm_eps", path, sec, &cfg->text_eps)) ||
      (rc = get_act(text, path, sec, &cfg->text_act)))
    return rc;
  if (cfg->family == VLM__FAMILY_CLIP) {
    if ((rc = get_int(text, "bos_token_id", path, sec, &cfg->bos_id)) ||
        (rc = get_int(text, "eos_token_id", path, sec, &cfg->eos_id)))
      return rc;
  } else if (cfg->family == VLM__FAMILY_CHINESE_CLIP) {
    /* bos/eos_token_id are meaningless for BERT ([CLS]/[SEP] come from
     * the tokenizer) and are not read. */
    if ((rc = get_int(text, "type_vocab_size", path, sec,
                      &cfg->type_vocab_size)))
      return rc;
    json_t *pet = json_object_get(text, "position_embedding_type");
    const char *s = json_string_value(pet);
    if (pet && !json_is_null(pet) && (!s || strcmp(s, "absolute")))
      return vlm_seterr(VLM_EUNSUPPORTED, "%s: text_config."
                        "position_embedding_type '%.32s' (only absolute is "
                        "supported)", path, s ? s : "?");
  }
  /* SigLIP's bos/eos_token_id default to CLIP's ids and mean nothing. */
  return 0;
}

int vlm__config_parse_hf(json_t *root, const char *path,
                         vlm__clip_config *cfg) {
  int rc = 0;
  if (!json_is_object(root))
    return vlm_seterr(VLM_EFORMAT, "%s: not a JSON object", path);
  vlm__family family;
  if ((rc = detect_family(root, path, &family)))
    return rc;
  if (family != cfg->family)
    vlm__config_family_defaults(cfg, family);
  json_t *text = section(root, "text_config", "text_config_dict");
  json_t *vision = section(root, "vision_config", "vision_config_dict");
  /* SiglipConfig and ChineseCLIPConfig build a missing section from the
   * defaults; CLIP configs have always stated both. */
  if (family == VLM__FAMILY_CLIP && (!text || !vision))
    return vlm_seterr(VLM_EFORMAT, "%s: missing %s (not a CLIPModel config)",
                      path, text ? "vision_config" : "text_config");
  if (family != VLM__FAMILY_SIGLIP &&
      ((rc = get_int(root, "projection_dim", path, "",
                     &cfg->projection_dim)) ||
       (rc = get_float(root, "logit_scale_init_value", path, "",
                       &cfg->logit_scale))))
    return rc;
  if ((text && (rc = read_text(text, path, cfg))) ||
      (vision && (rc = read_vision(vision, path, cfg))))
    return rc;
  if (family == VLM__FAMILY_SIGLIP)
    cfg->projection_dim = cfg->text_width; /* text_model.head: C -> C */
  return vlm__config_validate(cfg, path);
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
  vlm__act act = json_is_true(qg) ? VLM__ACT_QUICK_GELU : VLM__ACT_GELU;
  cfg->vision_act = cfg->text_act = act;
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

/* size / crop_size: an int or {"shortest_edge": n} (*w = *h = 0,
 * *shortest = n), or {"height", "width"} (*w, *h).  Keys absent or null
 * leave the outputs as they are. */
static int get_size(json_t *root, const char *key, const char *path,
                    int *shortest, int *w, int *h) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v))
    return 0;
  json_int_t se = 0, hh = 0, ww = 0;
  if (json_is_integer(v)) {
    se = json_integer_value(v);
  } else if (json_is_object(v)) {
    json_t *jse = json_object_get(v, "shortest_edge");
    json_t *jh = json_object_get(v, "height");
    json_t *jw = json_object_get(v, "width");
    if (json_is_integer(jse)) {
      se = json_integer_value(jse);
    } else if (json_is_integer(jh) && json_is_integer(jw)) {
      hh = json_integer_value(jh);
      ww = json_integer_value(jw);
    } else {
      return vlm_seterr(VLM_EFORMAT, "%s: %s has no shortest_edge or "
                        "height/width", path, key);
    }
  } else {
    return vlm_seterr(VLM_EFORMAT, "%s: %s is not an integer or object", path,
                      key);
  }
  int edge = hh == 0 && ww == 0; /* an int or shortest_edge */
  if (edge ? se <= 0 || se > 16384
           : hh <= 0 || hh > 16384 || ww <= 0 || ww > 16384)
    return vlm_seterr(VLM_EFORMAT, "%s: %s is out of range", path, key);
  *shortest = (int)se;
  *w = (int)ww;
  *h = (int)hh;
  return 0;
}

static int get_bool(json_t *root, const char *key, const char *path,
                    int *out) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_boolean(v))
    return vlm_seterr(VLM_EFORMAT, "%s: %s is not true or false", path, key);
  *out = json_is_true(v);
  return 0;
}

int vlm__config_read_preprocessor(const char *path, vlm__family family,
                                  vlm__preprocess_cfg *pp) {
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
  int do_normalize = 1, do_rescale = 1, exif = pp->exif_transpose;
  int crop_w = pp->crop, crop_h = pp->crop, crop_se = 0;
  if ((rc = get_size(root, "size", path, &pp->resize, &pp->resize_w,
                     &pp->resize_h)) ||
      (rc = get_bool(root, "do_resize", path, &pp->do_resize)) ||
      (rc = get_bool(root, "do_normalize", path, &do_normalize)) ||
      (rc = get_bool(root, "do_rescale", path, &do_rescale)) ||
      (rc = get_bool(root, "vlmdb_exif_transpose", path, &exif)))
    goto done;
  /* SiglipImageProcessor has no crop; the others read theirs. */
  if (family != VLM__FAMILY_SIGLIP &&
      ((rc = get_bool(root, "do_center_crop", path, &pp->center_crop)) ||
       (rc = get_size(root, "crop_size", path, &crop_se, &crop_w, &crop_h))))
    goto done;
  if (crop_se)
    crop_w = crop_h = crop_se;
  if (crop_w != crop_h) {
    rc = vlm_seterr(VLM_EUNSUPPORTED, "%s: crop_size is not square", path);
    goto done;
  }
  pp->crop = crop_w;
  pp->exif_transpose = exif;
  json_t *factor = json_object_get(root, "rescale_factor");
  if (factor && !json_is_null(factor)) {
    double f = json_is_number(factor) ? json_number_value(factor) : NAN;
    if (!isfinite(f) || f <= 0) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: rescale_factor is not a positive "
                      "number", path);
      goto done;
    }
    pp->rescale = f;
  }
  if (!do_rescale)
    pp->rescale = 1.0;
  if (!do_normalize)
    for (int c = 0; c < 3; c++) {
      pp->mean[c] = 0.0f;
      pp->std[c] = 1.0f;
    }
  json_t *resample = json_object_get(root, "resample");
  if (resample && !json_is_null(resample) &&
      (!json_is_integer(resample) || json_integer_value(resample) != 3)) {
    rc = vlm_seterr(VLM_EUNSUPPORTED, "%s: resample must be 3 (bicubic, the "
                    "only filter these models use)", path);
    goto done;
  }
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
  if (cfg->family == VLM__FAMILY_CLIP &&
      (cfg->bos_id < 0 || cfg->bos_id >= cfg->vocab_size || cfg->eos_id < 0 ||
       cfg->eos_id >= cfg->vocab_size))
    return vlm_seterr(VLM_EFORMAT, "%s: text_config.bos_token_id/eos_token_id "
                      "out of the vocabulary", label);
  if (cfg->family == VLM__FAMILY_SIGLIP &&
      cfg->text_width != cfg->vision_width)
    return vlm_seterr(VLM_EFORMAT, "%s: text_config.hidden_size %d and "
                      "vision_config.hidden_size %d differ (SigLIP compares "
                      "the towers' outputs directly)", label, cfg->text_width,
                      cfg->vision_width);
  if (cfg->family == VLM__FAMILY_CHINESE_CLIP &&
      (cfg->type_vocab_size < 1 || cfg->type_vocab_size > 1 << 10))
    return vlm_seterr(VLM_EFORMAT, "%s: text_config.type_vocab_size = %d is "
                      "out of range (1..1024)", label, cfg->type_vocab_size);
  return 0;
}
