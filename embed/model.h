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

/* Geometry of a loaded model. */
const vlm__clip_config *vlm__clip_get_config(const vlm_clip *clip);

/* F32 weights of a loaded model under its Hugging Face name, e.g.
 * "vision_model.encoder.layers.0.self_attn.q_proj.weight"; *numel gets
 * the element count.  NULL if the model has no such tensor.  The pointer
 * lives as long as the model. */
const float *vlm__clip_tensor(const vlm_clip *clip, const char *hf_name,
                              int64_t *numel);

#endif
