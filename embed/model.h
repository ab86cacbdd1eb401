/* model.h - CLIP geometry and weight access (internal to embed/ and the
 * trainer).  Weights are exposed as F32 under Hugging Face names and
 * layouts, whatever the file's names and dtype were. */
#ifndef VLM_MODEL_H
#define VLM_MODEL_H

#include <stdint.h>

#include "vlm_clip.h"

typedef struct {
  /* vision tower */
  int vision_width, vision_layers, vision_heads, vision_mlp;
  int image_size, patch_size;
  int vision_quick_gelu;   /* 1 = quick_gelu, 0 = gelu (erf) */
  float vision_eps;
  /* text tower */
  int text_width, text_layers, text_heads, text_mlp;
  int vocab_size, context_length;
  int text_quick_gelu;
  float text_eps;
  int bos_id, eos_id;
  /* shared */
  int projection_dim;
  float logit_scale;       /* log of the temperature's inverse, as stored */
  float mean[3], std[3];   /* preprocessing */
} vlm__clip_config;

/* transformers' CLIPVisionConfig / CLIPTextConfig defaults. */
void vlm__config_defaults(vlm__clip_config *cfg);

/* A Hugging Face CLIP config.json (text_config / vision_config, or the
 * legacy *_config_dict keys) over what cfg holds, validated; root is the
 * parsed document, path names it in errors.  vlm_clip_load and the trainer
 * both read configs with it.  Declared with json_t from <jansson.h>. */
struct json_t;
int vlm__config_parse_hf(struct json_t *root, const char *path,
                         vlm__clip_config *cfg);

/* Geometry of a loaded model. */
const vlm__clip_config *vlm__clip_get_config(const vlm_clip *clip);

/* F32 weights of a loaded model under its Hugging Face name, e.g.
 * "vision_model.encoder.layers.0.self_attn.q_proj.weight", in Hugging Face
 * layout whatever the file's layout and dtype; *numel gets the element
 * count.  NULL if the model has no such tensor (or, for a weight the
 * towers read from packed F16 panels and that is converted to F32 on its
 * first request, if that conversion runs out of memory).  Thread safe;
 * the pointer lives as long as the model. */
const float *vlm__clip_tensor(const vlm_clip *clip, const char *hf_name,
                              int64_t *numel);

/* Load with an explicit weights file (model.safetensors or
 * open_clip_model.safetensors, or any file in either layout); dir supplies
 * config.json, open_clip_config.json, preprocessor_config.json and the
 * tokenizer files, each when present.  vlm_clip_load is this with the
 * file found in dir.  Tests use it to load both layouts of one fixture. */
int vlm__clip_load_weights(const char *dir, const char *weights_path,
                           const vlm_clip_options *opts, vlm_clip **out);

/* Encode n token sequences (the text tower alone): ids[i] holds n_ids[i]
 * ids, start and end tokens included, 1 <= n_ids[i] <= context_length,
 * each id < vocab_size.  The sequence is pooled at its end token as the
 * reference finds it: the argmax of the ids (the first end token, the
 * largest id of CLIP's vocabulary); when a config's eos_token_id is not
 * the largest id, its first occurrence (as Hugging Face does).  Only
 * positions up to that one are computed.  out[n * dim]; flags as for
 * vlm_clip_encode_texts.  Thread safe like the public encoders. */
int vlm__clip_encode_tokens(const vlm_clip *clip, const int32_t *const *ids,
                            const int *n_ids, int n, unsigned flags,
                            float *out);

#endif
