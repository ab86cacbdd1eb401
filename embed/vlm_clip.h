/* vlm_clip.h - CLIP inference: load a checkpoint, tokenize, preprocess,
 * and encode texts and images into vectors of one shared space.
 *
 * A vlm_clip is loaded once and is then read-only: any number of threads
 * may call the encode and tokenize functions on one handle at the same
 * time (each call allocates its own scratch).  vlm_clip_free must not race
 * with other calls.  Every function returns 0 or a negative VLM_E* code
 * and on failure sets vlm_errmsg() with the file, tensor or field at fault.
 *
 * Threads: each encode call runs on up to vlm_clip_options.threads threads
 * of its own (the caller's plus helpers created for the call), each
 * calling single-threaded BLAS.  OpenBLAS keeps one thread count for the
 * whole process, and its pool would multiply that and make concurrent
 * callers queue for it, so vlm_clip_load sets OpenBLAS to one thread
 * (openblas_set_num_threads(1)) for the process.
 */
#ifndef VLM_CLIP_H
#define VLM_CLIP_H

#include <stddef.h>
#include <stdint.h>

typedef struct vlm_clip vlm_clip;

/* How an image with an alpha channel becomes RGB.  A model records the
 * way it was trained in its preprocessor_config.json as
 * "vlmdb_alpha": "white" or "drop" (other CLIP loaders ignore the key);
 * VLM_ALPHA_MODEL follows that record, and the reference behaviour (drop)
 * when there is none, so the vectors of a database and of its queries are
 * always made the same way. */
typedef enum {
  VLM_ALPHA_MODEL = 0, /* as the model says; drop when it says nothing */
  VLM_ALPHA_DROP = 1,  /* as the reference (PIL convert("RGB")): ignore alpha */
  VLM_ALPHA_WHITE = 2  /* composite onto white first */
} vlm_alpha_mode;

/* Whether a photo's EXIF orientation turns it upright before a model sees
 * it.  The OpenAI CLIP reference ignores it (the stored pixels); Hugging
 * Face pipelines apply it (ImageOps.exif_transpose).  A model records its
 * choice in preprocessor_config.json as "vlmdb_exif_transpose": true or
 * false; VLM_ORIENT_MODEL follows that record (ignore when there is
 * none).  Thumbnails always show the picture upright, whatever the model
 * does.  TIFF, HEIC and AVIF come out of their decoders upright already
 * (as Pillow and pillow-heif open them), so this changes JPEG, PNG and
 * WebP photos only. */
typedef enum {
  VLM_ORIENT_MODEL = 0,  /* as the model says; ignore when it says nothing */
  VLM_ORIENT_IGNORE = 1, /* the stored pixels, as the CLIP reference */
  VLM_ORIENT_APPLY = 2   /* turned upright first, as exif_transpose */
} vlm_orient_mode;

/* The arithmetic of the towers' Linear layers (attention and MLP
 * products; embeddings, layer norms, attention itself and the final
 * projection are always float).  EXACT computes with the checkpoint's
 * values in fp32; BF16 rounds weights and activations to bfloat16 and
 * sums in fp32; INT8 uses per-output-channel int8 weights and per-row u8
 * activations with int32 sums.  VLM_COMPUTE_MODEL takes the
 * VLMDB_CLIP_COMPUTE environment variable ("exact", "bf16", "int8") when
 * set, else what the checkpoint's "vlmdb.quantization" metadata says
 * (written by vlm_clip_quantize), else EXACT.  A mode other than EXACT
 * changes vlm_clip_model_id. */
typedef enum {
  VLM_COMPUTE_MODEL = 0,
  VLM_COMPUTE_EXACT = 1,
  VLM_COMPUTE_BF16 = 2,
  VLM_COMPUTE_INT8 = 3
} vlm_compute_mode;

typedef struct {
  int threads;              /* compute threads per call; 0 = all cores */
  vlm_alpha_mode alpha;     /* default VLM_ALPHA_MODEL */
  uint64_t max_pixels;      /* decoded width*height cap; 0 = 64 Mpx default */
  vlm_orient_mode orientation; /* default VLM_ORIENT_MODEL */
  vlm_compute_mode compute; /* default VLM_COMPUTE_MODEL */
} vlm_clip_options;

/* Decoded 8-bit RGB image, for thumbnails and training augmentation. */
typedef struct {
  int w, h;
  uint8_t *rgb; /* w * h * 3, row-major */
} vlm_image;

/* Encode flags. */
#define VLM_CLIP_RAW 1u /* return the projection output, not L2-normalized */

/* Load a model from a directory holding config.json and
 * model.safetensors (Hugging Face names) or open_clip_model.safetensors
 * (original names), vocab.json + merges.txt, optional
 * preprocessor_config.json.  opts may be NULL for defaults.
 *
 * Three families (config.json's model_type): CLIP ("clip", either
 * layout), SigLIP and fixed-resolution SigLIP 2 ("siglip", Hugging Face
 * layout) and Chinese-CLIP ("chinese_clip", Hugging Face layout), each
 * with its own tokenizer files: vocab.json + merges.txt (CLIP),
 * spiece.model or tokenizer.model (SigLIP, SigLIP 2), vocab.txt
 * (Chinese-CLIP), with tokenizer_config.json and special_tokens_map.json
 * where the family has them. */
int vlm_clip_load(const char *dir, const vlm_clip_options *opts,
                  vlm_clip **out);
void vlm_clip_free(vlm_clip *clip); /* accepts NULL */

/* The compute mode in effect: "exact", "bf16" or "int8". */
const char *vlm_clip_compute(const vlm_clip *clip);

/* Write a quantized copy of the model in in_dir to out_dir (created if
 * missing): model.safetensors with every transformer-block Linear weight
 * of both towers as I8 plus an F32 "<name>_scale" per output channel
 * (mode VLM_COMPUTE_INT8) or as BF16 (VLM_COMPUTE_BF16), every other
 * tensor as the source stores it, "__metadata__": {"vlmdb.quantization":
 * "int8" | "bf16"}; and a copy of the directory's other files (config,
 * tokenizer, preprocessor).  The source must be a Hugging Face layout
 * model.safetensors or an open_clip_model.safetensors (written back
 * under its own name).  Checks nothing about quality: `vlmdb quantize`
 * measures that.  Errors: VLM_EIO / VLM_ENOSPACE (writing), VLM_EINVAL
 * (mode; out_dir is in_dir; the source is already quantized), the load
 * errors. */
int vlm_clip_quantize(const char *in_dir, const char *out_dir,
                      vlm_compute_mode mode);

/* Inputs that calibrate int8 smoothing (SmoothQuant: Xiao et al., ICML
 * 2023): texts, and images as normalized CHW pixels of the model's size
 * (vlm_clip_preprocess), are run through the model in bf16 compute to
 * find the largest magnitude m[k] of every input channel k of every
 * block Linear layer; its weight columns are then multiplied by
 * s[k] = m[k]^alpha / max_n |w[n,k]|^(1 - alpha) before they are
 * quantized, written as "<name>_smooth" (F32 [K]) beside the scales, and
 * an int8 product divides its input by s (bf16 and exact loads divide the
 * weights back).  Channels that are large in every token (activation
 * outliers) then no longer take the row's 255 steps from the rest. */
typedef struct {
  const char *const *texts;
  int ntexts;
  const float *pixels;  /* nimages x 3 x S x S */
  int nimages;
  float alpha;          /* migration strength in (0, 1); 0: 0.5 */
  int threads;          /* for the calibration run; 0: all cores */
} vlm_quant_calib;

/* Mixed precision in an int8 file: the blocks [bf16_from[t], bf16_to[t])
 * of tower t (0 text, 1 image) keep their Linear weights in BF16, and an
 * int8 load computes those layers in bf16 (a block weight an int8 file
 * stores as BF16 runs bf16; every other file's BF16 weights run int8
 * under int8 compute, as before).  For layers whose int8 rounding the
 * model amplifies; `vlmdb quantize` finds them. */
typedef struct {
  int bf16_from[2], bf16_to[2];
} vlm_quant_mixed;

/* vlm_clip_quantize, with smoothing calibrated on calib when mode is
 * VLM_COMPUTE_INT8 and calib is not NULL, and the blocks mixed names in
 * BF16 (int8 only; NULL: none).  Both NULL: as vlm_clip_quantize.
 * Errors: as vlm_clip_quantize; VLM_EINVAL (calib without inputs, alpha
 * outside (0, 1)). */
int vlm_clip_quantize_ex(const char *in_dir, const char *out_dir,
                         vlm_compute_mode mode, const vlm_quant_calib *calib,
                         const vlm_quant_mixed *mixed);

int vlm_clip_dim(const vlm_clip *clip);            /* projection dim */
int vlm_clip_image_size(const vlm_clip *clip);     /* input side, pixels */
int vlm_clip_context_length(const vlm_clip *clip); /* text positions */
/* Transformer blocks of the text (vision 0) or image (vision 1) tower. */
int vlm_clip_layers(const vlm_clip *clip, int vision);

/* The model's family: "clip", "siglip" or "chinese_clip" (NULL for a
 * NULL handle). */
const char *vlm_clip_family(const vlm_clip *clip);

/* The trained score of a pair is logit = exp(logit_scale) * cosine +
 * logit_bias, with the values as the checkpoint stores them (logit_bias
 * is SigLIP's; 0 for CLIP and Chinese-CLIP). */
float vlm_clip_logit_scale(const vlm_clip *clip);
float vlm_clip_logit_bias(const vlm_clip *clip);
float vlm_clip_logit(const vlm_clip *clip, float cosine);

/* The family's probabilities for one query's cosines to n candidates
 * (normalized vectors' dot products), into probs[n]: SigLIP scores each
 * pair on its own, sigmoid(logit); CLIP and Chinese-CLIP share one
 * softmax of the logits over the n candidates.  For eval and the
 * server's logits. */
int vlm_clip_probabilities(const vlm_clip *clip, const float *cosines, int n,
                           float *probs);

/* A stable identity of the loaded weights and geometry: a hex digest
 * (64 chars + NUL) of config and tensor bytes.  Databases record it so
 * vectors from different models are never mixed. */
const char *vlm_clip_model_id(const vlm_clip *clip);

/* Tokenize one UTF-8 text into the ids the model sees, as the family's
 * reference tokenizer does with truncation: CLIP start token, BPE ids,
 * end token (the end token kept last when cut to the context length);
 * SigLIP the SentencePiece ids and </s>, padded with the pad id to exactly
 * the context length (max_ids must allow it); Chinese-CLIP [CLS] WordPiece
 * ids [SEP].  Writes up to max_ids ids and the count to *n_ids.  Invalid
 * UTF-8 gives VLM_EFORMAT. */
int vlm_clip_tokenize(const vlm_clip *clip, const char *text, int32_t *ids,
                      int max_ids, int *n_ids);

/* Encode n texts into out[n * dim]. */
int vlm_clip_encode_texts(const vlm_clip *clip, const char *const *texts,
                          int n, unsigned flags, float *out);

/* Decode and preprocess one encoded image (JPEG, PNG, WebP, GIF, TIFF,
 * BMP, HEIC or AVIF bytes; the format is read from the bytes) into
 * pixels[3 * S * S] (S = vlm_clip_image_size), normalized, CHW.  Thread
 * safe; this is the per-image step a pipeline runs in its decode workers. */
int vlm_clip_preprocess(const vlm_clip *clip, const void *data, size_t len,
                        float *pixels);
int vlm_clip_preprocess_file(const vlm_clip *clip, const char *path,
                             float *pixels);
/* vlm_clip_preprocess, and from the same decode the image as RGB8
 * composited onto white and turned upright by its EXIF orientation into
 * *img (for a thumbnail; free it with vlm_image_free).  Decoding once matters when decoding costs more than
 * encoding (small models, large images).  On failure *img is zeroed. */
int vlm_clip_preprocess_image(const vlm_clip *clip, const void *data,
                              size_t len, float *pixels, vlm_image *img);

/* Encode n preprocessed images, pixels[n * 3 * S * S], into out[n * dim]. */
int vlm_clip_encode_pixels(const vlm_clip *clip, const float *pixels, int n,
                           unsigned flags, float *out);

/* Decode + preprocess + encode, from files or memory buffers.  If any
 * image fails, nothing is written to out and the error names the input. */
int vlm_clip_encode_images(const vlm_clip *clip, const char *const *paths,
                           int n, unsigned flags, float *out);
int vlm_clip_encode_image_buffers(const vlm_clip *clip,
                                  const void *const *data, const size_t *lens,
                                  int n, unsigned flags, float *out);


/* Decode image bytes (the formats of vlm_clip_preprocess) to RGB8: the
 * picture as a person sees it, turned upright by its EXIF orientation
 * unless opts->orientation is VLM_ORIENT_IGNORE (there is no model here:
 * VLM_ORIENT_MODEL applies it); alpha handled as opts->alpha says;
 * max_pixels enforced before allocation.  opts may be NULL.  Free with
 * vlm_image_free. */
int vlm_image_decode(const void *data, size_t len,
                     const vlm_clip_options *opts, vlm_image *out);
void vlm_image_free(vlm_image *img); /* accepts NULL and zeroed images */

/* Encode img as a baseline JPEG whose longest side is at most max_side
 * (downscaled with antialiasing; never upscaled).  *jpeg is malloc'd. */
int vlm_image_thumbnail_jpeg(const vlm_image *img, int max_side, int quality,
                             uint8_t **jpeg, size_t *len);

/* The thumbnail vlmdb stores for an item, whichever path adds it (ingest,
 * the server's ADD): the picture as a person sees it (upright by its EXIF
 * orientation, transparent areas over white), longest side at most
 * VLM_THUMB_SIDE, JPEG quality VLM_THUMB_QUALITY.  vlm_image_thumbnail takes an image decoded with
 * VLM_ALPHA_WHITE (as vlm_clip_preprocess_image returns it);
 * vlm_image_thumbnail_bytes decodes encoded bytes itself. */
#define VLM_THUMB_SIDE 256
#define VLM_THUMB_QUALITY 85
int vlm_image_thumbnail(const vlm_image *img, uint8_t **jpeg, size_t *len);
int vlm_image_thumbnail_bytes(const void *data, size_t len, uint8_t **jpeg,
                              size_t *jpeg_len);

#endif
