/* model.h - model geometry and weight access (internal to embed/ and the
 * trainer).  Weights are exposed as F32 under Hugging Face names and
 * layouts, whatever the file's names and dtype were.
 *
 * Three families share one engine (config.json's model_type):
 *   clip          CLIPModel: causal text tower pooled at the end token,
 *                 ViT with class token and pre-LN, projections.
 *   siglip        SiglipModel (SigLIP, fixed-resolution SigLIP 2): text
 *                 tower without mask over exactly max_position_embeddings
 *                 ids pooled at the last position through text_model.head;
 *                 ViT without class token or pre-LN, patch bias, an
 *                 attention-pooling head; no projections (dim = width);
 *                 sigmoid scores with logit_bias.
 *   chinese_clip  ChineseCLIPModel: BERT text tower (post-LN, token types,
 *                 embedding LayerNorm) pooled at [CLS], CLIP's ViT. */
#ifndef VLM_MODEL_H
#define VLM_MODEL_H

#include <stdint.h>

#include "vlm_clip.h"

typedef enum {
  VLM__FAMILY_CLIP = 0,
  VLM__FAMILY_SIGLIP = 1,
  VLM__FAMILY_CHINESE_CLIP = 2
} vlm__family;

/* hidden_act */
typedef enum {
  VLM__ACT_GELU = 0,       /* "gelu": 0.5 x (1 + erf(x / sqrt 2)) */
  VLM__ACT_QUICK_GELU = 1, /* "quick_gelu": x sigmoid(1.702 x) */
  VLM__ACT_GELU_TANH = 2   /* "gelu_pytorch_tanh" (= gelu_new, gelu_fast) */
} vlm__act;

typedef struct {
  vlm__family family;
  /* vision tower */
  int vision_width, vision_layers, vision_heads, vision_mlp;
  int image_size, patch_size;
  vlm__act vision_act;
  float vision_eps;
  /* text tower */
  int text_width, text_layers, text_heads, text_mlp;
  int vocab_size, context_length; /* context: max_position_embeddings */
  vlm__act text_act;
  float text_eps;
  int bos_id, eos_id;      /* CLIP's start and end tokens; -1 for the
                              other families (their tokenizers say) */
  int type_vocab_size;     /* Chinese-CLIP's token types (0 otherwise) */
  /* shared */
  int projection_dim;      /* SigLIP: the towers' width */
  float logit_scale;       /* log of the temperature's inverse, as stored */
  float logit_bias;        /* SigLIP's logit_bias; 0 for the others */
  float mean[3], std[3];   /* preprocessing */
} vlm__clip_config;

/* transformers' CLIPVisionConfig / CLIPTextConfig defaults. */
void vlm__config_defaults(vlm__clip_config *cfg);

/* The defaults of another family (transformers v4.44.2's
 * SiglipTextConfig / SiglipVisionConfig, ChineseCLIPTextConfig /
 * ChineseCLIPVisionConfig / ChineseCLIPConfig; CLIP's as above). */
void vlm__config_family_defaults(vlm__clip_config *cfg, vlm__family family);

/* "clip", "siglip" or "chinese_clip". */
const char *vlm__family_name(vlm__family family);

/* A Hugging Face config.json (text_config / vision_config, or the legacy
 * *_config_dict keys) over what cfg holds, validated; root is the parsed
 * document, path names it in errors.  The family comes from model_type
 * (else architectures, else CLIP); when it is not the family cfg holds,
 * cfg first gets that family's defaults, since real SigLIP and
 * Chinese-CLIP configs state only what differs from them.  An unknown
 * model_type is VLM_EUNSUPPORTED.  vlm_clip_load and the trainer both read
 * configs with it.  Declared with json_t from <jansson.h>. */
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

/* vlm_clip_load without the tokenizer: the towers alone, for checkpoints
 * that come without one (tests of other geometries); texts then give
 * VLM_EUNSUPPORTED and token ids are encoded with vlm__clip_encode_tokens. */
int vlm__clip_load_towers(const char *dir, const vlm_clip_options *opts,
                          vlm_clip **out);

/* Encode n token sequences (the text tower alone): ids[i] holds n_ids[i]
 * ids, each < vocab_size, as the family's tokenizer gives them:
 * - CLIP: start and end tokens included, 1 <= n_ids[i] <= context_length.
 *   The sequence is pooled at its end token as the reference finds it:
 *   the argmax of the ids (the first end token, the largest id of CLIP's
 *   vocabulary); when a config's eos_token_id is not the largest id, its
 *   first occurrence (as Hugging Face does).  Only positions up to that
 *   one are computed.
 * - SigLIP: exactly context_length ids (the tokenizer's ids padded with
 *   its pad id), all attending to all, pooled at the last position;
 *   another count is VLM_EINVAL.
 * - Chinese-CLIP: [CLS] ... [SEP], unpadded, 1 <= n_ids[i] <=
 *   context_length, token type 0, pooled at [CLS].
 * out[n * dim]; flags as for vlm_clip_encode_texts.  Thread safe like the
 * public encoders. */
int vlm__clip_encode_tokens(const vlm_clip *clip, const int32_t *const *ids,
                            const int *n_ids, int n, unsigned flags,
                            float *out);

#endif
