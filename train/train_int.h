/* train_int.h - the trainer's private state, shared by train.c (setup,
 * loop, evaluation) and train_io.c (its files).  Internal to embed/. */
#ifndef VLM_TRAIN_INT_H
#define VLM_TRAIN_INT_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "tokenizer.h"
#include "train_data.h"
#include "train_model.h"
#include "train_text.h"
#include "vlm_train.h"

#define CKPT_FORMAT "vlmdb-train-checkpoint"
#define CKPT_VERSION 1
#define LN100 4.605170185988092f /* open_clip clamps logit_scale to ln 100 */

typedef struct {
  vlm_train_options o;
  vlm__clip_config cfg;
  vlm__tlayout *L;
  vlm__tpool *pool;
  vlm__tmodel_f32 *m;
  vlm__tokenizer *tok;          /* CLIP's BPE, or */
  struct vlm__spm_tok *spm;     /* SigLIP's SentencePiece, or */
  struct vlm__wp_tok *wp;       /* Chinese-CLIP's WordPiece */
  char tok_dir[4096];
  int text_max_len;             /* ids a text may take (Chinese-CLIP: the
                                   tokenizer's model_max_length when
                                   shorter than the context, as the engine) */
  vlm__tdata *train, *val;
  vlm__ttext *text;             /* text pairs, or NULL */
  int text_P;                   /* text pairs per step */
  vlm_train_item *train_items, *val_items; /* the split, when by fraction */
  const vlm_train_item *val_src;          /* items the val set indexes */
  int *val_src_index;                      /* val pair -> caller's index */
  /* optimizer over the trainable array (base or LoRA) */
  float *w, *g, *adam_m, *adam_v;
  uint8_t *decay;
  size_t ntrain;
  /* schedule */
  int spe;
  int64_t step, total_steps;
  int warmup;
  /* progress */
  double t_start, t_last_log;
  int64_t steps_this_call;
  int64_t metrics_last_step; /* step of metrics.csv's last row, or -1 */
  double loop_s; /* time in the training loop */
  double epoch_loss_sum;
  int epoch_loss_n;
  double last_epoch_loss;
  double epoch_tloss_sum, last_epoch_tloss; /* the text-pair loss */
  int epochs_done;
  vlm_train_recall recall;
  float *eval_img, *eval_txt;
  int eval_n;
  FILE *logfile;
  int blas_threads_before;
  char resumed_from[64];
} vlm__trainer;

double vlm__train_now(void); /* monotonic seconds */
/* Learning rate of step (0-based): linear warm-up, then cosine. */
float vlm__train_lr_at(const vlm__trainer *t, int64_t step);

/* files and directories */
int vlm__train_join_path(char *out, size_t cap, const char *dir,
                         const char *name);
int vlm__train_file_exists(const char *path);
int vlm__train_mkdir_p(const char *dir);

/* A Hugging Face CLIP config.json (parsed JSON / a file) over the HF
 * defaults. */
int vlm__train_parse_config(json_t *root, const char *path,
                            vlm__clip_config *c);
int vlm__train_load_config(const char *path, vlm__clip_config *c);

/* Checkpoint, export and training.json, in that order. */
int vlm__train_save_all(vlm__trainer *t);
/* A checkpoint's metadata (a new reference), and one of its strings. */
int vlm__train_read_checkpoint_meta(const char *path, json_t **meta);
const char *vlm__train_meta_get(json_t *meta, const char *key);
/* The saved hyperparameters replace t->o's, so the schedule continues. */
int vlm__train_apply_saved_options(vlm__trainer *t, json_t *opt,
                                   const char *path);
/* Weights, adapters and AdamW moments from the checkpoint file. */
int vlm__train_load_checkpoint(vlm__trainer *t, const char *path);

/* metrics.csv: drop rows past max_step (noting the last row kept in
 * t->metrics_last_step); append the last evaluation. */
int vlm__train_metrics_trim(vlm__trainer *t, int64_t max_step);
int vlm__train_metrics_append(vlm__trainer *t, double elapsed);

#endif
