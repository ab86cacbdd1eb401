/* vlm_train.h - contrastive training and fine-tuning of CLIP, SigLIP and
 * Chinese-CLIP models.
 *
 * vlm_train_run trains a model on image-text pairs with its family's loss
 * (CLIP and Chinese-CLIP: the symmetric contrastive loss; SigLIP and
 * fixed-resolution SigLIP 2: the sigmoid loss with logit_bias, as
 * transformers' SiglipModel) and writes it to out_dir in the standard
 * Hugging Face layout of its family, which vlm_clip_load (and anything
 * else that loads the family) reads:
 *
 *   config.json, model.safetensors (F16 or F32), the tokenizer files
 *   (vocab.json + merges.txt; spiece.model or tokenizer.model; vocab.txt;
 *   with tokenizer_config.json and special_tokens_map.json when the
 *   source has them),
 *   preprocessor_config.json, training.json (command, seed, data digest,
 *   steps, final metrics), metrics.csv (one row per evaluation),
 *   train.log (the progress lines), checkpoint/ (the resumable state:
 *   weights, AdamW moments and step, in F32), and with LoRA and
 *   save_adapters, adapter_model.safetensors + adapter_config.json (PEFT
 *   names).
 *
 * The model starts from a checkpoint (init_dir: any model vlm_clip_load
 * reads) or from scratch (config_path: a Hugging Face config.json of a
 * CLIPModel, SiglipModel or ChineseCLIPModel; weights initialised as the
 * family's Hugging Face _init_weights does, SigLIP's logit_scale and
 * logit_bias as the SigLIP paper's log 10 and -10).  AdamW with
 * decoupled weight decay (none on norms, biases, token/position/class
 * embeddings, logit_scale; the patch embedding, a convolution, is
 * decayed like the other matrices), linear warm-up
 * then cosine decay, gradient clipping by global norm; logit_scale is
 * clamped to [0, ln 100] after each step as open_clip does.  With
 * lora_rank > 0, low-rank adapters (B zero-initialised, scaled by
 * alpha / rank) on every attention and MLP projection of both towers'
 * encoder layers (q/k/v/out_proj, fc1, fc2; BERT's query/key/value and
 * its three dense layers) are trained and the base weights are frozen;
 * the exported model has the adapters merged in.  SigLIP's attention-
 * pooling head gets no adapter.
 *
 * Determinism: for a given seed, data and thread count the run is
 * bit-for-bit reproducible, and a run resumed from a checkpoint continues
 * exactly as the uninterrupted run would have (the data order and every
 * augmentation are functions of the seed, epoch and item, not of any
 * saved generator state).
 *
 * Errors: VLM_EINVAL (bad options), VLM_EIO / VLM_ENOTFOUND (files),
 * VLM_EUNSUPPORTED (what cannot be trained: context_length other than a
 * SigLIP model's own, a SentencePiece tokenizer without a pad token),
 * VLM_EFORMAT (bad config.json), VLM_EMISMATCH (resume with another
 * geometry or data set), VLM_ENUMERIC (the loss diverged), VLM_ENOMEM,
 * VLM_EINTR (stopped through opts->stop: the state was checkpointed
 * first).  vlm_errmsg() names the file, item or option at fault.
 */
#ifndef VLM_TRAIN_H
#define VLM_TRAIN_H

#include <stdint.h>
#include <stdio.h>

/* One image-text pair.  Strings are borrowed for the duration of the
 * call. */
typedef struct {
  const char *key;   /* identity: the held-out split and the data digest
                        use it */
  const char *image; /* path of a JPEG or PNG file */
  const char *text;  /* caption; held-out evaluation always uses it */
  const char *const *alt_texts; /* other captions of the same image
                                   (translations, paraphrases), or NULL */
  int n_alt_texts;
  double weight;     /* expected draws per epoch (0 = 1): an item of weight
                        0.25 is drawn in a quarter of the epochs, one of
                        weight 2 twice per epoch */
  double silhouette; /* share of its draws shown as a silhouette: gray,
                        negated (light on dark) and blurred to 28 x 28, as
                        a scanned product photo; 0 = never.  Teaches
                        shapes where colour and background do not help */
} vlm_train_item;

/* Two texts that mean the same: a word and its definition, a name and
 * its translation, a caption and its paraphrase.  Strings are borrowed for
 * the duration of the call. */
typedef struct {
  const char *a, *b;
  double weight;     /* relative chance of being drawn (0 = 1) */
} vlm_train_text_pair;

typedef struct {
  /* data */
  const vlm_train_item *items;     /* training pairs */
  int n_items;
  const vlm_train_item *val_items; /* held-out pairs, or NULL */
  int n_val;
  double val_fraction;  /* without val_items: hold out this share of items,
                           chosen by a hash of the key (0 = no evaluation) */
  /* Text pairs: each step also draws text_batch of them (by weight,
   * no text twice in a batch) and adds text_weight x the contrastive loss
   * between their two sides, on the text tower alone (in-batch negatives,
   * CLIP's symmetric loss whatever the family, at the model's current
   * temperature, which only the image-text loss trains).  They teach the
   * text tower what no caption says: "a furry pet" is near "cat". */
  const vlm_train_text_pair *text_pairs;
  int n_text_pairs;
  int text_batch;            /* 0 = batch / 2; at most batch / 2 */
  int text_rounds;           /* batches of text_batch pairs per step, each
                                with its own negatives, their mean loss
                                weighted text_weight; 0 = 1.  Texts cost
                                little next to images: rounds buy the
                                text tower more pairs per step */
  float text_weight;         /* 1 */
  /* model */
  const char *out_dir;       /* created if missing */
  const char *init_dir;      /* start from this model, or NULL */
  const char *config_path;   /* geometry for a model from scratch */
  const char *tokenizer_dir; /* the family's tokenizer files (vocab.json +
                                merges.txt, spiece.model or
                                tokenizer.model, vocab.txt); NULL =
                                init_dir's, or resuming out_dir's */
  /* schedule and optimizer (0 / negative = the default noted) */
  int epochs;                /* 10 */
  int batch;                 /* 128 (clamped to the training set size) */
  int64_t max_steps;         /* 0 = epochs x steps per epoch */
  float lr;                  /* 5e-4 from scratch, 1e-5 fine-tuning,
                                1e-4 LoRA */
  float min_lr;              /* cosine floor, 0 */
  int warmup_steps;          /* -1 = 10% of the steps, at most 2000 */
  float weight_decay;        /* 0.1 */
  float beta1, beta2, adam_eps; /* 0.9, 0.98, 1e-6 */
  float grad_clip;           /* global norm, 1.0; negative = off */
  uint64_t seed;
  int threads;               /* compute threads; 0 = all cores */
  int loader_threads;        /* image decoding threads; 0 = 1 */
  /* LoRA */
  int lora_rank;             /* 0 = full training */
  float lora_alpha;          /* 0 = 2 x rank */
  int save_adapters;         /* also write the adapters alone */
  /* augmentation (training images only) */
  int no_augment;            /* just resize and center-crop */
  float crop_scale_min;      /* random resized crop area, 0.5 */
  float jitter;              /* colour jitter strength, 0.2 */
  int hflip;                 /* random horizontal flips (off: images may
                                contain text) */
  int alpha_white;           /* transparent images composited onto white
                                (load the model with VLM_ALPHA_WHITE
                                then); default: alpha dropped, as the
                                reference preprocessing does */
  int cache_mb;              /* decoded images kept in memory, 4096 */
  int context_length;        /* text positions of the model trained; 0 =
                                the initial model's or the config's.  Larger
                                than the initial model's: its position
                                embeddings are kept and the new rows start
                                as copies of its last one.  SigLIP: only
                                its own (VLM_EUNSUPPORTED) */
  float alt_text_share;      /* each time a pair with alt_texts is drawn,
                                it is captioned by one of them (chosen
                                uniformly) with this probability, else by
                                text; 0.5; a function of (seed, epoch,
                                item) like every augmentation */
  /* checkpoints */
  int checkpoint_every;      /* steps; 0 = each epoch end */
  int resume;                /* continue from out_dir/checkpoint */
  int64_t stop_after;        /* stop (with a checkpoint) after this step */
  int f16;                   /* model.safetensors in F16 (else F32) */
  volatile int *stop;        /* set non-zero to checkpoint and stop */
  /* reporting */
  FILE *log;                 /* progress lines; NULL = silent */
  double log_every_s;        /* 10 */
  const char *command;       /* recorded in training.json */
} vlm_train_options;

/* Recall@K of a held-out evaluation. */
typedef struct {
  int n;                            /* pairs evaluated */
  double i2t[3], t2i[3];            /* Recall@1, @5, @10 */
  double i2t_median, t2i_median;    /* median rank (1 = best) */
} vlm_train_recall;

typedef struct {
  int64_t steps;          /* optimizer steps done in all */
  int epochs;             /* completed epochs */
  double loss;            /* mean loss of the last epoch (or of the steps
                             since the last epoch end) */
  int n_train, n_skipped; /* pairs used; pairs skipped (bad image/text) */
  char data_digest[65];   /* SHA-256 of the training pairs */
  vlm_train_recall recall; /* the last evaluation (n = 0 if none) */
  /* The last evaluation's L2-normalized embeddings, [recall.n x dim],
   * in held-out order (malloc'd; NULL if none), and the held-out items'
   * indices into val_items (or into items with val_fraction). */
  int dim;
  float *image_emb, *text_emb;
  int *eval_index;
  double pairs_per_s;     /* training throughput of this call */
  int n_text_pairs, n_text_skipped; /* text pairs used and skipped */
  double text_loss;       /* mean text-pair loss of the last epoch (0
                             without text pairs) */

} vlm_train_result;

/* Defaults as documented above; the caller then sets data and out_dir. */
void vlm_train_options_default(vlm_train_options *opts);

/* Train.  res may be NULL; otherwise free it with vlm_train_result_free,
 * also after a failure. */
int vlm_train_run(const vlm_train_options *opts, vlm_train_result *res);
void vlm_train_result_free(vlm_train_result *res); /* accepts zeroed */

/* ---- explaining a match ------------------------------------------------
 *
 * Which regions of an image drive its score against a text: Grad-CAM
 * (Selvaraju et al., ICCV 2017) on the vision transformer's token grid, as
 * pytorch-grad-cam applies it to ViTs.  The score is the cosine s = <v, q>
 * of the image's normalized embedding v and a normalized text vector q.
 * A = the input of the vision tower's last block (its patch rows, the
 * class row left out), G = ds/dA through the trainer's hand-written
 * backward pass (the same code that trains, float; tests check the double
 * build against finite differences).  Then, per patch i:
 *   VLM_EXPLAIN_GRADCAM: w_c = mean_i G_ic, map_i = ReLU(sum_c w_c A_ic)
 *   VLM_EXPLAIN_TOKEN:   map_i = ReLU(sum_c G_ic A_ic)   (gradient x
 *                        activation per token, each token its own weights)
 * normalized to sum 1 (all zero when nothing is positive).  The last
 * block's input, not its output: CLIP pools the class row of the output,
 * so the output's patch rows have no gradient at all. */
#include "vlm_clip.h"

typedef struct vlm_explainer vlm_explainer;

typedef enum {
  VLM_EXPLAIN_GRADCAM = 0,
  VLM_EXPLAIN_TOKEN = 1,
  VLM_EXPLAIN_RELEVANCE = 2,
  VLM_EXPLAIN_INTEGRATED = 3,
  VLM_EXPLAIN_AUTO = 4 /* integrated, for every family */
} vlm_explain_method;

/* A copy of clip's vision tower in the trainer's layout (F32; the default
 * model's takes about 12 MB) with activations for one image.  clip is only
 * read during the call.  threads: compute threads (0 = 1).  One thread at
 * a time may use an explainer.  Errors: VLM_ENOMEM, VLM_EUNSUPPORTED (a
 * vision tower without layers), VLM_EMISMATCH (a tensor of another
 * size). */
int vlm_explainer_create(const vlm_clip *clip, int threads,
                         vlm_explainer **out);
void vlm_explainer_free(vlm_explainer *ex); /* accepts NULL */
/* The grid side g: maps hold g x g values, row-major, top row first. */
int vlm_explainer_grid(const vlm_explainer *ex);
/* The map of pixels[3*S*S] (vlm_clip_preprocess's output) for the
 * normalized text vector text_vec[dim] into map[g*g]; *score (may be NULL)
 * gets the cosine.  VLM_EINVAL for a NULL argument or an unknown method,
 * VLM_ENUMERIC for a non-finite result. */
int vlm_explainer_map(vlm_explainer *ex, const float *pixels,
                      const float *text_vec, vlm_explain_method method,
                      float *map, float *score);

/* The picture as the model saw it (img cut to its centred square, or
 * squashed to a square when squash is set, as SigLIP's processor does),
 * resized to side x side, with map[grid*grid] upsampled bilinearly,
 * coloured (blue low, red high, scaled to the map's maximum) and blended
 * at half strength over it, as a PNG into *png (malloc'd; free()).
 * side 16..4096.  VLM_EINVAL for bad arguments. */
int vlm_explain_png(const vlm_image *img, int squash, const float *map,
                    int grid, int side, uint8_t **png, size_t *len);

/* Everything at once, for the command line and the server: decode and
 * preprocess the encoded image data[len] as clip does, map it for
 * text_vec, and draw the PNG (side x side).  The result owns its
 * buffers: free with vlm_explanation_free (accepts zeroed). */
typedef struct {
  int grid;      /* the map is grid x grid, row-major, top row first */
  float *map;    /* sums to 1 (or all 0) */
  float score;   /* the cosine of the image and the text */
  uint8_t *png;
  size_t png_len;
} vlm_explanation;
int vlm_explain_image(const vlm_clip *clip, const void *data, size_t len,
                      const float *text_vec, vlm_explain_method method,
                      int side, int threads, vlm_explanation *out);
void vlm_explanation_free(vlm_explanation *e);
/* "auto", "gradcam", "token" or "relevance" (any case); VLM_EINVAL
 * otherwise. */
int vlm_explain_method_parse(const char *name, vlm_explain_method *out);

#endif
