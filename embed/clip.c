/* clip.c - the public vlm_clip_* API: loading, the model id, and batched
 * encoding on top of the towers in forward.c. */
#include <cblas.h>
#include <jansson.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clip_int.h"
#include "image.h"
#include "kernels.h"
#include "sha256.h"
#include "tokenizer.h"
#include "tokenizer_spm.h"
#include "tokenizer_wp.h"
#include "vlm_error.h"
#include "vlm_file.h"

/* Sequences are encoded in groups of about this many rows: big enough
 * that each GEMM runs near peak, small enough that activations stay a few
 * tens of MB whatever n the caller passes. */
#define ROWS_PER_PASS 1024

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

static int cpu_count(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

/* The preprocessed image must be the model's image_size square: the crop
 * when there is one, else the straight resize. */
static int check_input_size(vlm__preprocess_cfg *pp, int image_size,
                            const char *path) {
  if (pp->center_crop) {
    if (pp->crop != image_size)
      return vlm_seterr(VLM_EMISMATCH, "%s: crop_size %d does not match the "
                        "model's image_size %d", path, pp->crop, image_size);
    return 0;
  }
  pp->crop = image_size; /* the side the pipeline produces */
  if (!pp->do_resize)
    return 0; /* each image must then already be image_size square */
  if (pp->resize_w <= 0)
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: size.shortest_edge without a "
                      "center crop gives images of varying shape", path);
  if (pp->resize_w != image_size || pp->resize_h != image_size)
    return vlm_seterr(VLM_EMISMATCH, "%s: size %dx%d does not match the "
                      "model's image_size %d", path, pp->resize_w,
                      pp->resize_h, image_size);
  return 0;
}

/* Every id a tokenizer gives must have a row in the token embedding. */
static int check_tokenizer_vocab(const char *dir, int tok_vocab,
                                 int model_vocab) {
  if (tok_vocab > model_vocab)
    return vlm_seterr(VLM_EMISMATCH, "%s: the tokenizer has %d ids but the "
                      "model's token embedding only %d", dir, tok_vocab,
                      model_vocab);
  return 0;
}

/* tokenizer_config.json's model_max_length (what tokenizer(text,
 * truncation=True) cuts at), when it is below the model's positions. */
static int tokenizer_max_length(const char *dir, int positions) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
  json_t *root = json_load_file(path, 0, NULL);
  int n = positions;
  json_t *v = root ? json_object_get(root, "model_max_length") : NULL;
  if (json_is_integer(v) && json_integer_value(v) >= 3 &&
      json_integer_value(v) < positions)
    n = (int)json_integer_value(v);
  json_decref(root);
  return n;
}

static int load_model(const char *dir, const char *weights_path,
                      const vlm_clip_options *opts, int with_tokenizer,
                      vlm_clip **out) {
  int rc = 0;
  char path[PATH_MAX];
  if (!out)
    return vlm_seterr(VLM_EINVAL, "vlm_clip_load: out is NULL");
  *out = NULL;
  if (!dir || !weights_path)
    return vlm_seterr(VLM_EINVAL, "vlm_clip_load: no model directory");
  vlm_clip *clip = calloc(1, sizeof *clip);
  if (!clip)
    return vlm_seterr(VLM_ENOMEM, "%s: out of memory", dir);
  pthread_mutex_init(&clip->id_lock, NULL);
  pthread_mutex_init(&clip->scratch_lock, NULL);
  pthread_mutex_init(&clip->lazy_lock, NULL);
  if (opts)
    clip->opts = *opts;
  clip->threads = clip->opts.threads > 0 ? clip->opts.threads : cpu_count();
  if (clip->threads > 64)
    clip->threads = 64;

  /* Geometry: config.json states all of it; without it (original layout
   * only) open_clip_config.json may state some, the shapes give the rest. */
  vlm__clip_config *cfg = &clip->cfg;
  vlm__config_defaults(cfg);
  snprintf(path, sizeof path, "%s/config.json", dir);
  int have_config = file_exists(path);
  vlm__preprocess_cfg oc_pp;
  vlm__pp_defaults(&oc_pp, 0);
  if (have_config) {
    if ((rc = vlm__config_read_hf(path, cfg)))
      goto fail;
  } else {
    cfg->vision_width = cfg->vision_layers = cfg->vision_heads = 0;
    cfg->vision_mlp = cfg->image_size = cfg->patch_size = 0;
    cfg->text_width = cfg->text_layers = cfg->text_heads = cfg->text_mlp = 0;
    cfg->vocab_size = cfg->context_length = cfg->projection_dim = 0;
    cfg->bos_id = cfg->eos_id = 0; /* CLIP's: the last two ids (below) */
    snprintf(path, sizeof path, "%s/open_clip_config.json", dir);
    if (file_exists(path) &&
        (rc = vlm__config_read_open_clip(path, cfg, &oc_pp)))
      goto fail;
  }
  if ((rc = vlm__weights_load(clip, weights_path)))
    goto fail;

  /* Preprocessing: the family's defaults (for CLIP with open_clip's
   * mean/std), then preprocessor_config.json. */
  vlm__preprocess_cfg *pp = &clip->pp;
  vlm__pp_family_defaults(pp, cfg->family, cfg->image_size);
  if (cfg->family == VLM__FAMILY_CLIP) {
    memcpy(pp->mean, oc_pp.mean, sizeof pp->mean);
    memcpy(pp->std, oc_pp.std, sizeof pp->std);
  }
  snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
  if (file_exists(path) &&
      (rc = vlm__config_read_preprocessor(path, cfg->family, pp)))
    goto fail;
  if ((rc = check_input_size(pp, cfg->image_size, path)))
    goto fail;
  memcpy(cfg->mean, pp->mean, sizeof cfg->mean);
  memcpy(cfg->std, pp->std, sizeof cfg->std);
  if (clip->opts.alpha != VLM_ALPHA_MODEL)
    pp->alpha = clip->opts.alpha;
  if (clip->opts.orientation != VLM_ORIENT_MODEL)
    pp->exif_transpose = clip->opts.orientation == VLM_ORIENT_APPLY;
  pp->max_pixels = clip->opts.max_pixels;

  /* Tokenizer: the family's own.  SigLIP: SentencePiece (spiece.model,
   * or SigLIP 2's Gemma tokenizer.model); Chinese-CLIP: BERT's WordPiece
   * (vocab.txt), its texts limited by the tokenizer's model_max_length;
   * CLIP: the Hugging Face files, else CLIP's original merges. */
  clip->text_max_len = cfg->context_length;
  if (!with_tokenizer)
    goto tokenizer_done;
  if (cfg->family == VLM__FAMILY_SIGLIP) {
    if ((rc = vlm__spm_tok_load(dir, &clip->spm)))
      goto fail;
    if (vlm__spm_tok_pad(clip->spm) < 0) {
      rc = vlm_seterr(VLM_EUNSUPPORTED, "%s: the SentencePiece tokenizer "
                      "names no pad token (SigLIP pads every text to %d "
                      "ids)", dir, cfg->context_length);
      goto fail;
    }
    if ((rc = check_tokenizer_vocab(dir, vlm__spm_tok_vocab_size(clip->spm),
                                    cfg->vocab_size)))
      goto fail;
    goto tokenizer_done;
  }
  if (cfg->family == VLM__FAMILY_CHINESE_CLIP) {
    if ((rc = vlm__wp_tok_load(dir, &clip->wp)))
      goto fail;
    if ((rc = check_tokenizer_vocab(dir, vlm__wp_tok_vocab_size(clip->wp),
                                    cfg->vocab_size)))
      goto fail;
    clip->text_max_len = tokenizer_max_length(dir, cfg->context_length);
    goto tokenizer_done;
  }
  char merges[PATH_MAX];
  snprintf(path, sizeof path, "%s/vocab.json", dir);
  snprintf(merges, sizeof merges, "%s/merges.txt", dir);
  if (file_exists(path) || file_exists(merges)) {
    rc = vlm__tokenizer_load(path, merges, &clip->tok);
  } else {
    snprintf(path, sizeof path, "%s/bpe_simple_vocab_16e6.txt.gz", dir);
    if (file_exists(path))
      rc = vlm__tokenizer_load_bpe_gz(path, &clip->tok);
    else
      rc = vlm_seterr(VLM_ENOTFOUND, "%s: no tokenizer (vocab.json and "
                      "merges.txt, or bpe_simple_vocab_16e6.txt.gz)", dir);
  }
  if (rc || (rc = check_tokenizer_vocab(
                 dir, vlm__tokenizer_vocab_size(clip->tok), cfg->vocab_size)))
    goto fail;

tokenizer_done:
  clip->weights_path = strdup(weights_path);
  if (!clip->weights_path) {
    rc = vlm_seterr(VLM_ENOMEM, "%s: out of memory", dir);
    goto fail;
  }
  /* The towers split work over their own threads and call sgemm from
   * each; OpenBLAS's own pool (one per process) would multiply that and
   * serialize concurrent callers, so it runs single-threaded. */
  openblas_set_num_threads(1);
  *out = clip;
  return 0;

fail:
  vlm_clip_free(clip);
  return rc;
}

int vlm__clip_load_weights(const char *dir, const char *weights_path,
                           const vlm_clip_options *opts, vlm_clip **out) {
  return load_model(dir, weights_path, opts, 1, out);
}

/* The weights file of a model directory into path. */
static int find_weights(const char *dir, char *path, size_t cap) {
  snprintf(path, cap, "%s/model.safetensors", dir);
  if (file_exists(path))
    return 0;
  snprintf(path, cap, "%s/open_clip_model.safetensors", dir);
  if (file_exists(path))
    return 0;
  return vlm_seterr(VLM_ENOTFOUND, "%s: no model.safetensors or "
                    "open_clip_model.safetensors", dir);
}

int vlm_clip_load(const char *dir, const vlm_clip_options *opts,
                  vlm_clip **out) {
  char path[PATH_MAX];
  if (out)
    *out = NULL;
  if (!dir || !out)
    return vlm_seterr(VLM_EINVAL, "vlm_clip_load: NULL argument");
  int rc = find_weights(dir, path, sizeof path);
  return rc ? rc : load_model(dir, path, opts, 1, out);
}

int vlm__clip_load_towers(const char *dir, const vlm_clip_options *opts,
                          vlm_clip **out) {
  char path[PATH_MAX];
  if (out)
    *out = NULL;
  if (!dir || !out)
    return vlm_seterr(VLM_EINVAL, "vlm_clip_load: NULL argument");
  int rc = find_weights(dir, path, sizeof path);
  return rc ? rc : load_model(dir, path, opts, 0, out);
}

void vlm_clip_free(vlm_clip *clip) {
  if (!clip)
    return;
  vlm__weights_free(clip);
  vlm__tokenizer_free(clip->tok);
  vlm__spm_tok_free(clip->spm);
  vlm__wp_tok_free(clip->wp);
  free(clip->weights_path);
  for (int i = 0; i < clip->n_scratch; i++)
    free(clip->scratch[i].ptr);
  pthread_mutex_destroy(&clip->scratch_lock);
  pthread_mutex_destroy(&clip->lazy_lock);
  pthread_mutex_destroy(&clip->id_lock);
  free(clip);
}

int vlm_clip_dim(const vlm_clip *clip) {
  return clip ? clip->cfg.projection_dim : 0;
}

int vlm_clip_image_size(const vlm_clip *clip) {
  return clip ? clip->cfg.image_size : 0;
}

int vlm_clip_layers(const vlm_clip *clip, int vision) {
  return clip ? vision ? clip->cfg.vision_layers : clip->cfg.text_layers : 0;
}

int vlm_clip_context_length(const vlm_clip *clip) {
  return clip ? clip->cfg.context_length : 0;
}

const char *vlm_clip_family(const vlm_clip *clip) {
  return clip ? vlm__family_name(clip->cfg.family) : NULL;
}

float vlm_clip_logit_scale(const vlm_clip *clip) {
  return clip ? clip->cfg.logit_scale : 0.0f;
}

float vlm_clip_logit_bias(const vlm_clip *clip) {
  return clip ? clip->cfg.logit_bias : 0.0f;
}

float vlm_clip_logit(const vlm_clip *clip, float cosine) {
  if (!clip)
    return 0.0f;
  return expf(clip->cfg.logit_scale) * cosine + clip->cfg.logit_bias;
}

int vlm_clip_probabilities(const vlm_clip *clip, const float *cosines, int n,
                           float *probs) {
  if (!clip || n < 0 || (n > 0 && (!cosines || !probs)))
    return vlm_seterr(VLM_EINVAL, "vlm_clip_probabilities: NULL argument");
  if (n == 0)
    return 0;
  if (clip->cfg.family == VLM__FAMILY_SIGLIP) {
    /* each pair on its own: sigmoid(logit) */
    for (int i = 0; i < n; i++)
      probs[i] = 1.0f / (1.0f + expf(-vlm_clip_logit(clip, cosines[i])));
    return 0;
  }
  /* softmax over the candidates, in double so a large scale cannot
   * overflow */
  double mx = vlm_clip_logit(clip, cosines[0]), sum = 0;
  for (int i = 1; i < n; i++) {
    double l = vlm_clip_logit(clip, cosines[i]);
    mx = l > mx ? l : mx;
  }
  for (int i = 0; i < n; i++)
    sum += exp(vlm_clip_logit(clip, cosines[i]) - mx);
  for (int i = 0; i < n; i++)
    probs[i] = (float)(exp(vlm_clip_logit(clip, cosines[i]) - mx) / sum);
  return 0;
}

/* ---- scratch pool -------------------------------------------------------- */

void *vlm__scratch_get(const vlm_clip *clip, size_t bytes, size_t *got) {
  vlm_clip *m = (vlm_clip *)clip; /* the pool is the one mutable part */
  void *ptr = NULL;
  pthread_mutex_lock(&m->scratch_lock);
  int best = -1;
  for (int i = 0; i < m->n_scratch; i++)
    if (m->scratch[i].bytes >= bytes &&
        (best < 0 || m->scratch[i].bytes < m->scratch[best].bytes))
      best = i;
  if (best >= 0) {
    ptr = m->scratch[best].ptr;
    *got = m->scratch[best].bytes;
    m->scratch[best] = m->scratch[--m->n_scratch];
  }
  pthread_mutex_unlock(&m->scratch_lock);
  if (!ptr) {
    ptr = malloc(bytes ? bytes : 1);
    *got = bytes;
  }
  return ptr;
}

void vlm__scratch_put(const vlm_clip *clip, void *ptr, size_t bytes) {
  vlm_clip *m = (vlm_clip *)clip;
  if (!ptr)
    return;
  pthread_mutex_lock(&m->scratch_lock);
  if (m->n_scratch == VLM__SCRATCH_KEEP) {
    /* Full: drop the smallest kept buffer if this one is bigger. */
    int small = 0;
    for (int i = 1; i < m->n_scratch; i++)
      if (m->scratch[i].bytes < m->scratch[small].bytes)
        small = i;
    if (m->scratch[small].bytes < bytes) {
      void *old = m->scratch[small].ptr;
      m->scratch[small] = (vlm__scratch){ptr, bytes};
      ptr = old;
    }
  } else {
    m->scratch[m->n_scratch++] = (vlm__scratch){ptr, bytes};
    ptr = NULL;
  }
  pthread_mutex_unlock(&m->scratch_lock);
  free(ptr);
}

/* ---- model id ------------------------------------------------------------ */

/* SHA-256 of a versioned text of the geometry and preprocessing (the
 * alpha mode in effect included), then
 * every tensor in name order: its Hugging Face name, element count, and
 * F32 little-endian values.  The values are the ones the towers use, so
 * the two layouts of one model, or its F16 and F32 files, share an id. */
static void compute_model_id(vlm_clip *clip) {
  const vlm__clip_config *c = &clip->cfg;
  vlm__sha256 s;
  vlm__sha256_init(&s);
  char text[1024];
  int n = snprintf(
      text, sizeof text,
      "vlmdb clip model id v1\n"
      "vision %d %d %d %d image %d patch %d act %d eps %.9g\n"
      "text %d %d %d %d vocab %d ctx %d act %d eps %.9g bos %d eos %d\n"
      "proj %d\n"
      "mean %.9g %.9g %.9g std %.9g %.9g %.9g resize %d crop %d\n",
      c->vision_width, c->vision_layers, c->vision_heads, c->vision_mlp,
      c->image_size, c->patch_size, (int)c->vision_act, c->vision_eps,
      c->text_width, c->text_layers, c->text_heads, c->text_mlp,
      c->vocab_size, c->context_length, (int)c->text_act, c->text_eps,
      c->bos_id, c->eos_id, c->projection_dim, clip->pp.mean[0],
      clip->pp.mean[1], clip->pp.mean[2], clip->pp.std[0], clip->pp.std[1],
      clip->pp.std[2], clip->pp.resize, clip->pp.crop);
  vlm__sha256_update(&s, text, (size_t)n);
  /* Other families, and preprocessing that is not CLIP's classic one, add
   * a line; CLIP models with the classic pipeline keep the ids they had. */
  const vlm__preprocess_cfg *pp = &clip->pp;
  if (c->family != VLM__FAMILY_CLIP || pp->resize_w > 0 || !pp->do_resize ||
      !pp->center_crop || pp->crop_floor || pp->rgb_first ||
      pp->exif_transpose || pp->rescale != 1.0 / 255) {
    n = snprintf(text, sizeof text,
                 "family %s types %d resize %dx%d do %d crop %d floor %d "
                 "rgb first %d exif %d rescale %.17g\n",
                 vlm__family_name(c->family), c->type_vocab_size,
                 pp->resize_w, pp->resize_h, pp->do_resize, pp->center_crop,
                 pp->crop_floor, pp->rgb_first, pp->exif_transpose,
                 pp->rescale);
    vlm__sha256_update(&s, text, (size_t)n);
  }
  /* Compositing transparent images onto white changes their vectors; the
   * reference behaviour (drop alpha) adds nothing, so ids of models that
   * use it stay as they were. */
  if (clip->pp.alpha == VLM_ALPHA_WHITE)
    vlm__sha256_update(&s, "alpha white\n", 12);
  /* Turning photos upright by their EXIF orientation changes their
   * vectors likewise; the reference behaviour (ignore it) adds nothing. */
  if (clip->pp.exif_transpose)
    vlm__sha256_update(&s, "exif transpose\n", 15);
  /* int8 / bf16 compute gives other vectors than exact compute of the
   * same values (an int8 file's values are its dequantized weights). */
  if (clip->compute != VLM__COMPUTE_EXACT) {
    n = snprintf(text, sizeof text, "compute %s\n", vlm_clip_compute(clip));
    vlm__sha256_update(&s, text, (size_t)n);
  }
  enum { CHUNK = 1 << 16 };
  float *buf = malloc(CHUNK * sizeof *buf);
  for (int i = 0; i < clip->n_named; i++) {
    const vlm__named_tensor *t = &clip->named[i];
    uint8_t count[8];
    for (int b = 0; b < 8; b++)
      count[b] = (uint8_t)((uint64_t)t->numel >> (8 * b));
    vlm__sha256_update(&s, t->name, strlen(t->name) + 1);
    vlm__sha256_update(&s, count, sizeof count);
    /* x86-64 and every other host we build on is little-endian. */
    for (int64_t k = 0; k < t->numel; k += CHUNK) {
      int64_t m = t->numel - k < CHUNK ? t->numel - k : CHUNK;
      if (buf) {
        vlm__named_read(t, k, m, buf);
        vlm__sha256_update(&s, buf, (size_t)m * sizeof(float));
      }
    }
  }
  if (!buf) /* out of memory: an id that matches nothing */
    vlm__sha256_update(&s, "out of memory", 13);
  free(buf);
  uint8_t digest[32];
  vlm__sha256_final(&s, digest, clip->model_id);
}

const char *vlm_clip_compute(const vlm_clip *clip) {
  if (!clip)
    return NULL;
  switch (clip->compute) {
  case VLM__COMPUTE_BF16:
    return "bf16";
  case VLM__COMPUTE_INT8:
    return "int8";
  default:
    return "exact";
  }
}

const char *vlm_clip_model_id(const vlm_clip *clip) {
  if (!clip)
    return NULL;
  vlm_clip *m = (vlm_clip *)clip; /* the id is computed once, on demand */
  pthread_mutex_lock(&m->id_lock);
  if (!m->id_done) {
    compute_model_id(m);
    m->id_done = 1;
  }
  pthread_mutex_unlock(&m->id_lock);
  return m->model_id;
}

/* ---- text ---------------------------------------------------------------- */

/* Position of the end token the reference pools at. */
static int pool_position(const vlm__clip_config *cfg, const int32_t *ids,
                         int n) {
  if (cfg->eos_id != 2) /* 2: legacy configs, where HF uses argmax too */
    for (int i = 0; i < n; i++)
      if (ids[i] == cfg->eos_id)
        return i;
  int best = 0;
  for (int i = 1; i < n; i++)
    if (ids[i] > ids[best])
      best = i;
  return best;
}

static void finish(const vlm_clip *clip, float *out, int n, unsigned flags) {
  if (flags & VLM_CLIP_RAW)
    return;
  int D = clip->cfg.projection_dim;
  for (int i = 0; i < n; i++)
    vlm__l2_normalize(out + (size_t)i * D, D);
}

int vlm__clip_encode_tokens(const vlm_clip *clip, const int32_t *const *ids,
                            const int *n_ids, int n, unsigned flags,
                            float *out) {
  if (!clip || n < 0 || (n > 0 && (!ids || !n_ids || !out)))
    return vlm_seterr(VLM_EINVAL, "vlm_clip_encode: NULL argument");
  const vlm__clip_config *cfg = &clip->cfg;
  int rc = 0;
  int *len = malloc((size_t)(n ? n : 1) * sizeof *len);
  if (!len)
    return vlm_seterr(VLM_ENOMEM, "out of memory");
  for (int i = 0; i < n; i++) {
    if (!ids[i] || n_ids[i] < 1 || n_ids[i] > cfg->context_length) {
      rc = vlm_seterr(VLM_EINVAL, "text %d: %d tokens (must be 1..%d)", i,
                      n_ids[i], cfg->context_length);
      goto done;
    }
    for (int t = 0; t < n_ids[i]; t++)
      if (ids[i][t] < 0 || ids[i][t] >= cfg->vocab_size) {
        rc = vlm_seterr(VLM_EINVAL, "text %d: token %d is id %d, outside the "
                        "vocabulary (%d)", i, t, (int)ids[i][t],
                        cfg->vocab_size);
        goto done;
      }
    if (cfg->family == VLM__FAMILY_CLIP) {
      /* Causal attention: positions after the pooled one cannot change
       * it. */
      len[i] = pool_position(cfg, ids[i], n_ids[i]) + 1;
    } else if (cfg->family == VLM__FAMILY_SIGLIP &&
               n_ids[i] != cfg->context_length) {
      /* every position attends to every other and the last is pooled, so
       * the padding is part of the input */
      rc = vlm_seterr(VLM_EINVAL, "text %d: %d tokens (SigLIP encodes "
                      "exactly %d: the ids padded with the tokenizer's pad "
                      "id)", i, n_ids[i], cfg->context_length);
      goto done;
    } else {
      len[i] = n_ids[i];
    }
  }
  const int D = cfg->projection_dim;
  for (int i = 0; i < n;) {
    int j = i, rows = 0;
    while (j < n && (j == i || rows + len[j] <= ROWS_PER_PASS))
      rows += len[j++];
    if ((rc = vlm__text_forward(clip, ids + i, len + i, j - i,
                                out + (size_t)i * D)))
      goto done;
    i = j;
  }
  finish(clip, out, n, flags);
done:
  free(len);
  return rc;
}

int vlm_clip_tokenize(const vlm_clip *clip, const char *text, int32_t *ids,
                      int max_ids, int *n_ids) {
  if (n_ids)
    *n_ids = 0;
  if (!clip || !text || !ids || !n_ids || max_ids < 2)
    return vlm_seterr(VLM_EINVAL, "vlm_clip_tokenize: NULL argument or "
                      "max_ids < 2");
  if (!clip->tok && !clip->spm && !clip->wp)
    return vlm_seterr(VLM_EUNSUPPORTED, "the model was loaded without its "
                      "tokenizer (encode token ids instead)");
  if (clip->spm) {
    /* SigLIP's model sees exactly context_length ids: the tokenizer's,
     * padded with its pad id (as the processor's padding="max_length") */
    const int ctx = clip->cfg.context_length;
    if (max_ids < ctx)
      return vlm_seterr(VLM_EINVAL, "vlm_clip_tokenize: SigLIP texts take "
                        "%d ids, max_ids is %d", ctx, max_ids);
    int rc = vlm__spm_tokenize(clip->spm, text, ctx, ids, ctx, n_ids);
    if (rc)
      return rc;
    for (int i = *n_ids; i < ctx; i++)
      ids[i] = vlm__spm_tok_pad(clip->spm);
    *n_ids = ctx;
    return 0;
  }
  if (clip->wp)
    return vlm__wp_tokenize(clip->wp, text, clip->text_max_len, ids, max_ids,
                            n_ids);
  return vlm__tokenize(clip->tok, text, clip->cfg.context_length, ids,
                       max_ids, n_ids);
}

int vlm_clip_encode_texts(const vlm_clip *clip, const char *const *texts,
                          int n, unsigned flags, float *out) {
  if (!clip || n < 0 || (n > 0 && (!texts || !out)))
    return vlm_seterr(VLM_EINVAL, "vlm_clip_encode_texts: NULL argument");
  if (n == 0)
    return 0;
  const int ctx = clip->cfg.context_length;
  int32_t *buf = malloc((size_t)n * ctx * sizeof *buf);
  int32_t **ids = malloc((size_t)n * sizeof *ids);
  int *n_ids = malloc((size_t)n * sizeof *n_ids);
  int rc = 0;
  if (!buf || !ids || !n_ids) {
    rc = vlm_seterr(VLM_ENOMEM, "out of memory for %d texts", n);
    goto done;
  }
  for (int i = 0; i < n; i++) {
    ids[i] = buf + (size_t)i * ctx;
    if (!texts[i]) {
      rc = vlm_seterr(VLM_EINVAL, "text %d: NULL", i);
      goto done;
    }
    if ((rc = vlm_clip_tokenize(clip, texts[i], ids[i], ctx, &n_ids[i]))) {
      char detail[512];
      snprintf(detail, sizeof detail, "%s", vlm_errmsg());
      vlm_seterr(rc, "text %d: %s", i, detail);
      goto done;
    }
  }
  rc = vlm__clip_encode_tokens(clip, (const int32_t *const *)ids, n_ids, n,
                               flags, out);
done:
  free(buf);
  free(ids);
  free(n_ids);
  return rc;
}

/* ---- images -------------------------------------------------------------- */

int vlm_clip_encode_pixels(const vlm_clip *clip, const float *pixels, int n,
                           unsigned flags, float *out) {
  if (!clip || n < 0 || (n > 0 && (!pixels || !out)))
    return vlm_seterr(VLM_EINVAL, "vlm_clip_encode_pixels: NULL argument");
  const vlm__clip_config *cfg = &clip->cfg;
  const int G = cfg->image_size / cfg->patch_size;
  const size_t per_image = (size_t)3 * cfg->image_size * cfg->image_size;
  int batch = ROWS_PER_PASS / (G * G + 1);
  if (batch < 1)
    batch = 1;
  for (int i = 0; i < n; i += batch) {
    int m = n - i < batch ? n - i : batch;
    int rc = vlm__vision_forward(clip, pixels + (size_t)i * per_image, m,
                                 out + (size_t)i * cfg->projection_dim);
    if (rc)
      return rc;
  }
  finish(clip, out, n, flags);
  return 0;
}

int vlm_clip_preprocess(const vlm_clip *clip, const void *data, size_t len,
                        float *pixels) {
  if (!clip || !pixels || (!data && len))
    return vlm_seterr(VLM_EINVAL, "vlm_clip_preprocess: NULL argument");
  return vlm__preprocess(&clip->pp, data, len, pixels);
}

int vlm_clip_preprocess_image(const vlm_clip *clip, const void *data,
                              size_t len, float *pixels, vlm_image *img) {
  if (img)
    memset(img, 0, sizeof *img);
  if (!clip || !pixels || !img || (!data && len))
    return vlm_seterr(VLM_EINVAL, "vlm_clip_preprocess_image: NULL argument");
  vlm__decoded im;
  int rc = vlm__image_decode_native(data, len, clip->pp.max_pixels, &im);
  if (rc)
    return rc;
  /* The model's pipeline first (it may turn the image upright and
   * composite it onto white in place), then upright and onto white for
   * the thumbnail (no-ops when already done). */
  if ((rc = vlm__preprocess_decoded(&clip->pp, &im, pixels)) ||
      (rc = vlm__decoded_apply_orientation(&im)) ||
      (rc = vlm__decoded_flatten_white(&im)))
    goto done;
  if (im.mode == VLM__MODE_RGB) {
    /* already RGB8, w * h * 3: hand the decoded pixels over */
    img->rgb = im.pixels;
    im.pixels = NULL;
  } else {
    img->rgb = malloc((size_t)im.w * im.h * 3);
    if (!img->rgb) {
      rc = vlm_seterr(VLM_ENOMEM, "image: %dx%d", im.w, im.h);
      goto done;
    }
    vlm__decoded_to_rgb(&im, img->rgb);
  }
  img->w = im.w;
  img->h = im.h;
done:
  vlm__decoded_free(&im);
  return rc;
}

int vlm_clip_preprocess_file(const vlm_clip *clip, const char *path,
                             float *pixels) {
  if (!clip || !path || !pixels)
    return vlm_seterr(VLM_EINVAL, "vlm_clip_preprocess_file: NULL argument");
  uint8_t *data;
  size_t len;
  int rc = vlm_read_file(path, VLM_MAX_IMAGE_FILE, &data, &len);
  if (rc)
    return rc;
  rc = vlm__preprocess(&clip->pp, data, len, pixels);
  free(data);
  if (rc) {
    char detail[512];
    snprintf(detail, sizeof detail, "%s", vlm_errmsg());
    vlm_seterr(rc, "%s: %s", path, detail);
  }
  return rc;
}

/* Decoding and preprocessing run on the model's threads, each image on
 * one thread; the first failure (lowest index) is reported. */
typedef struct {
  const vlm_clip *clip;
  const char *const *paths;       /* files, or */
  const void *const *data;        /* buffers */
  const size_t *lens;
  float *pixels;                  /* [n, 3, S, S] */
  int first, n;
  pthread_mutex_t mu;
  int next;
  int err_index, err_rc;
  char err_msg[768];
} decode_job;

static void *decode_worker(void *arg) {
  decode_job *j = arg;
  const size_t per = (size_t)3 * j->clip->cfg.image_size *
                     j->clip->cfg.image_size;
  for (;;) {
    pthread_mutex_lock(&j->mu);
    int i = j->next++;
    int stop = i >= j->n || (j->err_rc && i > j->err_index);
    pthread_mutex_unlock(&j->mu);
    if (stop)
      break;
    int idx = j->first + i, rc;
    float *dst = j->pixels + (size_t)i * per;
    if (j->paths) {
      rc = vlm_clip_preprocess_file(j->clip, j->paths[idx], dst);
    } else {
      rc = vlm_clip_preprocess(j->clip, j->data[idx], j->lens[idx], dst);
      if (rc) {
        char detail[512];
        snprintf(detail, sizeof detail, "%s", vlm_errmsg());
        vlm_seterr(rc, "image %d: %s", idx, detail);
      }
    }
    if (rc) {
      pthread_mutex_lock(&j->mu);
      if (!j->err_rc || i < j->err_index) {
        j->err_rc = rc;
        j->err_index = i;
        snprintf(j->err_msg, sizeof j->err_msg, "%s", vlm_errmsg());
      }
      pthread_mutex_unlock(&j->mu);
    }
  }
  return NULL;
}

static int decode_all(decode_job *j) {
  pthread_t th[64];
  int want = j->clip->threads < j->n ? j->clip->threads : j->n, started = 0;
  pthread_mutex_init(&j->mu, NULL);
  j->next = 0;
  j->err_rc = 0;
  for (int t = 1; t < want; t++) {
    if (pthread_create(&th[started], NULL, decode_worker, j))
      break;
    started++;
  }
  decode_worker(j);
  for (int t = 0; t < started; t++)
    pthread_join(th[t], NULL);
  pthread_mutex_destroy(&j->mu);
  if (j->err_rc)
    return vlm_seterr(j->err_rc, "%s", j->err_msg);
  return 0;
}

/* Images per decode + encode round: bounds the pixel buffer. */
#define IMAGES_PER_ROUND 32

static int encode_images(const vlm_clip *clip, const char *const *paths,
                         const void *const *data, const size_t *lens, int n,
                         unsigned flags, float *out) {
  if (!clip || n < 0 || (n > 0 && !out) || (n > 0 && !paths && !data) ||
      (data && !lens))
    return vlm_seterr(VLM_EINVAL, "vlm_clip_encode_images: NULL argument");
  if (n == 0)
    return 0;
  const int D = clip->cfg.projection_dim, S = clip->cfg.image_size;
  const size_t per = (size_t)3 * S * S;
  int round = n < IMAGES_PER_ROUND ? n : IMAGES_PER_ROUND;
  size_t pixels_bytes;
  float *pixels = vlm__scratch_get(clip, (size_t)round * per * sizeof *pixels,
                                   &pixels_bytes);
  /* Results go to out only once every image has succeeded. */
  float *vec = malloc((size_t)n * D * sizeof *vec);
  int rc = 0;
  if (!pixels || !vec) {
    rc = vlm_seterr(VLM_ENOMEM, "out of memory for %d images", n);
    goto done;
  }
  for (int i = 0; i < n; i += round) {
    decode_job j = {.clip = clip, .paths = paths, .data = data, .lens = lens,
                    .pixels = pixels, .first = i,
                    .n = n - i < round ? n - i : round};
    if ((rc = decode_all(&j)) ||
        (rc = vlm_clip_encode_pixels(clip, pixels, j.n, flags,
                                     vec + (size_t)i * D)))
      goto done;
  }
  memcpy(out, vec, (size_t)n * D * sizeof *out);
done:
  vlm__scratch_put(clip, pixels, pixels_bytes);
  free(vec);
  return rc;
}

int vlm_clip_encode_images(const vlm_clip *clip, const char *const *paths,
                           int n, unsigned flags, float *out) {
  if (n > 0 && paths)
    for (int i = 0; i < n; i++)
      if (!paths[i])
        return vlm_seterr(VLM_EINVAL, "image %d: NULL path", i);
  return encode_images(clip, paths, NULL, NULL, n, flags, out);
}

int vlm_clip_encode_image_buffers(const vlm_clip *clip,
                                  const void *const *data, const size_t *lens,
                                  int n, unsigned flags, float *out) {
  if (n > 0 && !data)
    return vlm_seterr(VLM_EINVAL, "vlm_clip_encode_image_buffers: NULL data");
  return encode_images(clip, NULL, data, lens, n, flags, out);
}
