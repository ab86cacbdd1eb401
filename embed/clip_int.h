/* clip_int.h - the engine's private structures (embed/ only).
 *
 * A loaded model is one vlm_clip: geometry (vlm__clip_config), the mapped
 * checkpoint, one arena holding every weight that could not be used in
 * place (converted from F16/BF16, or transposed from the original layout),
 * named pointers per tower and block, and the table that maps Hugging Face
 * names to F32 tensors for vlm__clip_tensor.  Everything is read-only after
 * vlm_clip_load returns.
 */
#ifndef VLM_CLIP_INT_H
#define VLM_CLIP_INT_H

#include <pthread.h>
#include <stdint.h>

#include "model.h"
#include "preprocess.h"
#include "quant.h"
#include "safetensors.h"
#include "vlm_clip.h"

/* One transformer block; all weights F32 in Hugging Face layout (Linear
 * weights are [out, in]).  Pre-LN (CLIP, SigLIP): ln1 before attention,
 * ln2 before the MLP.  Post-LN (BERT, Chinese-CLIP's text tower): ln1 is
 * attention.output.LayerNorm after the attention's residual, ln2
 * output.LayerNorm after the MLP's.  SigLIP's attention-pooling head is a
 * block too: q/k/v rows of its in_proj, out_proj, ln2 = its layernorm,
 * its MLP; ln1 unused. */
typedef struct {
  const float *ln1_w, *ln1_b;
  const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b; /* [C, C], [C] */
  const float *o_w, *o_b;                          /* [C, C], [C] */
  const float *ln2_w, *ln2_b;
  const float *fc1_w, *fc1_b;                      /* [F, C], [F] */
  const float *fc2_w, *fc2_b;                      /* [C, F], [C] */
  /* q, k, v weights (and biases) are adjacent in memory, so one GEMM of
   * width 3C computes all three. */
  int qkv_fused;
  /* The same weights packed for few-row products (kernels.h), or NULL:
   * [q; k; v] as one matrix of 3C rows, out_proj, fc1, fc2. */
  const uint16_t *p_qkv, *p_o, *p_fc1, *p_fc2;
  /* With int8 / bf16 compute (quant.h), the same four products, and the
   * weights above NULL; else NULL. */
  const vlm__qlinear *ql_qkv, *ql_o, *ql_fc1, *ql_fc2;
} vlm__block;

/* NULL where the family has no such tensor (see model.h). */
typedef struct {
  /* vision */
  const float *patch_w;          /* [Wv, 3, P, P] */
  const float *patch_b;          /* [Wv] SigLIP */
  const uint16_t *p_patch;       /* the same, packed (kernels.h), or NULL */
  const float *class_emb;        /* [Wv] CLIP, Chinese-CLIP */
  const float *vpos;             /* [G*G (+ 1 with a class token), Wv] */
  const float *pre_ln_w, *pre_ln_b, *post_ln_w, *post_ln_b;
  const float *vproj;            /* [D, Wv] CLIP, Chinese-CLIP */
  vlm__block *vblocks;
  /* SigLIP's attention-pooling head */
  const float *probe;            /* [Wv] */
  const float *head_in_w, *head_in_b; /* in_proj [3 Wv, Wv], [3 Wv] */
  vlm__block vhead;
  /* text */
  const float *tok_emb;          /* [V, Wt] */
  const float *tpos;             /* [ctx, Wt] */
  const float *type_emb;         /* [types, Wt] Chinese-CLIP */
  const float *emb_ln_w, *emb_ln_b; /* Chinese-CLIP's embedding LayerNorm */
  const float *final_ln_w, *final_ln_b; /* CLIP, SigLIP */
  const float *tproj;            /* [D, Wt]; SigLIP: text_model.head */
  const float *tproj_b;          /* [D] SigLIP's head bias */
  vlm__block *tblocks;
  const float *logit_scale;      /* 0-d */
  const float *logit_bias;       /* 0-d, SigLIP */
} vlm__weights;

/* A tensor as vlm__clip_tensor exposes it.  Linear weights that the towers
 * read from packed panels are "lazy": no F32 copy is made at load, and
 * vlm__clip_tensor converts one from the file on first use. */
typedef struct {
  char *name;                    /* Hugging Face name */
  const float *data;             /* NULL while a lazy tensor is unconverted */
  int64_t numel;
  int lazy;
  const vlm__st_tensor *src;     /* lazy: elements src_offset.. of src */
  const vlm__st_tensor *scale;   /* I8 src: its per-row F32 scales */
  const vlm__st_tensor *smooth;  /* I8 src: its F32 smoothing, or NULL */
  int64_t src_offset;
  float *owned;                  /* lazy: the converted copy, once made */
} vlm__named_tensor;

typedef enum { VLM__LAYOUT_HF = 0, VLM__LAYOUT_ORIGINAL = 1 } vlm__layout;

struct vlm__tokenizer;
struct vlm__spm_tok;
struct vlm__wp_tok;

/* Activation buffers kept between calls: a fresh multi-MB malloc is a
 * fresh mmap, and zeroing its pages cost as much as a fifth of a batch. */
#define VLM__SCRATCH_KEEP 8
typedef struct {
  void *ptr;
  size_t bytes;
} vlm__scratch;

struct vlm_clip {
  vlm__clip_config cfg;
  vlm__preprocess_cfg pp;
  vlm_clip_options opts;
  int threads;                   /* resolved: >= 1 */
  vlm__layout layout;
  char *weights_path;
  vlm__safetensors *st;
  float *arena;                  /* converted / transposed weights */
  size_t arena_bytes;
  uint16_t *panels;              /* weights packed for the panel kernel */
  size_t panels_bytes;
  int panels_bf16;               /* panels hold bfloat16, else half */
  vlm__compute compute;          /* the Linear layers' arithmetic */
  vlm__qlinear *qlin;            /* int8 / bf16: 4 per block, both towers */
  /* the file tensors each qlin's rows come from (q, k, v; one for the
   * others; the same tensor thrice for a stacked in_proj_weight) */
  const vlm__st_tensor *(*qlin_src)[3];
  int n_qlin;
  vlm__weights w;
  vlm__named_tensor *named;      /* sorted by name */
  int n_named;
  struct vlm__tokenizer *tok;    /* CLIP: byte-level BPE */
  struct vlm__spm_tok *spm;      /* SigLIP: SentencePiece */
  struct vlm__wp_tok *wp;        /* Chinese-CLIP: WordPiece */
  int text_max_len;              /* ids a text may take (tokenizer limit) */
  pthread_mutex_t lazy_lock;     /* guards named[].data of lazy tensors */
  pthread_mutex_t scratch_lock;  /* guards scratch[] */
  vlm__scratch scratch[VLM__SCRATCH_KEEP];
  int n_scratch;
  pthread_mutex_t id_lock;       /* guards the lazily computed model id */
  int id_done;
  char model_id[65];
};

/* config.c --------------------------------------------------------------- */

/* CLIP's preprocessing (vlm__preprocess_defaults). */
void vlm__pp_defaults(vlm__preprocess_cfg *pp, int image_size);

/* The family's image processor's defaults for a model of image_size:
 * CLIP's (torchvision), SigLIP's (EXIF, RGB first, straight to
 * image_size, mean = std = 0.5) or Chinese-CLIP's (EXIF, RGB first,
 * shortest edge and center crop, CLIP's mean and std). */
void vlm__pp_family_defaults(vlm__preprocess_cfg *pp, vlm__family family,
                             int image_size);

/* Read config.json (CLIPModel, SiglipModel, ChineseCLIPModel) over cfg's
 * defaults.  Errors name the file and the field: VLM_EIO, VLM_EFORMAT,
 * VLM_EUNSUPPORTED. */
int vlm__config_read_hf(const char *path, vlm__clip_config *cfg);

/* Read open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": ...})
 * into a cfg whose geometry starts at zero: it sets the fields the file
 * states and leaves the rest zero, to be inferred from tensor shapes. */
int vlm__config_read_open_clip(const char *path, vlm__clip_config *cfg,
                               vlm__preprocess_cfg *pp);

/* Read preprocessor_config.json (the family's image processor) over pp:
 * image_mean/std, do_normalize, size (int, shortest_edge or
 * height/width), do_resize, do_center_crop and crop_size (not for SigLIP,
 * whose processor has no crop), do_rescale and rescale_factor, resample
 * (3 only), and vlmdb's own vlmdb_alpha and vlmdb_exif_transpose. */
int vlm__config_read_preprocessor(const char *path, vlm__family family,
                                  vlm__preprocess_cfg *pp);

/* Check ranges and divisibility; names the offending field. */
int vlm__config_validate(const vlm__clip_config *cfg, const char *label);

/* weights.c -------------------------------------------------------------- */

/* Map path, work out its layout from the tensor names, and bind every
 * weight.  clip->cfg holds the geometry read from config files; for the
 * original layout a zero field means "infer it from the tensor shapes as
 * the reference does", and a non-zero field must agree with them.  Every
 * expected tensor must be present with the expected shape, or the load
 * fails naming it.  On failure vlm__weights_free releases what was set. */
int vlm__weights_load(vlm_clip *clip, const char *path);
void vlm__weights_free(vlm_clip *clip);

/* Elements [i, i + count) of a named tensor as F32 into dst (from its F32
 * data, or converted from the file for a lazy tensor). */
void vlm__named_read(const vlm__named_tensor *t, int64_t i, int64_t count,
                     float *dst);

/* clip.c ----------------------------------------------------------------- */

/* A buffer of at least bytes for one call (from the model's pool when one
 * fits), and its return; thread safe.  NULL when out of memory. */
void *vlm__scratch_get(const vlm_clip *clip, size_t bytes, size_t *got);
void vlm__scratch_put(const vlm_clip *clip, void *ptr, size_t bytes);

/* forward.c -------------------------------------------------------------- */

/* Text tower over n token sequences; out[n * D] (projection output, not
 * normalized).  ids[i] has n_ids[i] ids (1..context_length), all of
 * which are computed (vlm__clip_encode_tokens trims CLIP's to its end
 * token). */
int vlm__text_forward(const vlm_clip *clip, const int32_t *const *ids,
                      const int *n_ids, int n, float *out);

/* Vision tower over n images pixels[n * 3 * S * S]; out[n * D]. */
int vlm__vision_forward(const vlm_clip *clip, const float *pixels, int n,
                        float *out);

#endif
