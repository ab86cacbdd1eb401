/* train_data.h - the trainer's data: image-text pairs read, decoded,
 * tokenized and checked up front, then augmented into batches by loader
 * threads running ahead of the compute (internal to embed/).
 *
 * Determinism: the order of the pairs in epoch e is a permutation drawn
 * from (seed, e); the augmentation of a pair from (seed, e, pair).  No
 * generator state is carried from batch to batch, so the batch of any
 * step can be rebuilt from scratch (that is what makes resuming exact),
 * and it does not matter which loader thread builds it.
 */
#ifndef VLM_TRAIN_DATA_H
#define VLM_TRAIN_DATA_H

#include <stdint.h>
#include <stdio.h>

#include "model.h"
#include "tokenizer.h"
#include "vlm_train.h"

typedef struct {
  int image_size;
  float mean[3], std[3];
  /* The family's image processor for evaluation (as vlm_clip_load's
   * defaults: SigLIP resizes straight to image_size, Chinese-CLIP and
   * SigLIP apply the EXIF orientation and convert to RGB first) */
  vlm__family family;
  int eval;              /* 1: preprocess exactly as inference does (no
                            augmentation), keep the pixels */
  int augment;           /* training: random resized crop + jitter */
  float crop_scale_min, jitter;
  int hflip;
  float alt_text_share;  /* training: share of draws captioned by one of
                            an item's alt_texts (vlm_train_options) */
  int alpha_white;       /* composite transparent images onto white
                            (VLM_ALPHA_WHITE) instead of dropping alpha */
  int64_t cache_bytes;   /* decoded images kept in memory up to this */
  int threads;           /* decoding threads while opening */
  int loader_threads;    /* threads building batches during training */
  uint64_t seed;
  int context_length;
  int vocab_size;        /* token ids must be below it */
  /* The family's tokenizer when it is not CLIP's (the tok argument of
   * vlm__tdata_open is then NULL): SigLIP's SentencePiece, every text
   * padded to context_length with pad_id as its processor does, or
   * Chinese-CLIP's WordPiece ([CLS] ... [SEP], unpadded). */
  const struct vlm__spm_tok *spm;
  const struct vlm__wp_tok *wp;
  int32_t pad_id;
  int wp_max_len;        /* WordPiece texts' limit (0 = context_length) */
  FILE *log;             /* skipped pairs are reported here */
} vlm__tdata_cfg;

/* The data's random streams: the state of the stream keyed by (seed, a,
 * b, salt), and a draw in [0, 1) from a state. */
uint64_t vlm__tdata_stream(uint64_t seed, uint64_t a, uint64_t b,
                           uint64_t salt);
double vlm__tdata_uniform(uint64_t *state);

typedef struct vlm__tdata vlm__tdata;

/* Read, decode and tokenize n pairs (in cfg->threads threads).  A pair
 * whose image cannot be read or decoded, or whose text is empty (no ids
 * but the tokenizer's special ones), is skipped and reported; it is an
 * error only if none is left.  The tokenizer (tok, or cfg->spm / cfg->wp)
 * is only used during the call. */
int vlm__tdata_open(const vlm__tdata_cfg *cfg, const vlm_train_item *items,
                    int n, const vlm__tokenizer *tok, vlm__tdata **out);
void vlm__tdata_free(vlm__tdata *d); /* stops the loader; accepts NULL */

/* Tokenize text as the pairs' captions are (the family's tokenizer, at
 * most context_length ids, SigLIP's padded to it): 0 with *ids malloc'd
 * (*n of them), or -1 with why set (an empty text, an id outside the
 * vocabulary).  empty_ids: the number of ids "" gives, from
 * vlm__tdata_empty_ids (an error code, or 0). */
int vlm__tdata_empty_ids(const vlm__tdata_cfg *cfg, const vlm__tokenizer *tok,
                         int *empty_ids);
int vlm__tdata_text_ids(const vlm__tdata_cfg *cfg, const vlm__tokenizer *tok,
                        int empty_ids, const char *text, int32_t **ids,
                        int *n, char *why, size_t why_size);

int vlm__tdata_count(const vlm__tdata *d);   /* usable pairs */
/* Pairs drawn per training epoch: the sum of the items' weights, rounded
 * (the count when every weight is 1). */
int vlm__tdata_draws(const vlm__tdata *d);
int vlm__tdata_skipped(const vlm__tdata *d);
/* Index into the items given to open of usable pair i. */
int vlm__tdata_item(const vlm__tdata *d, int i);
/* SHA-256 (hex) over the usable pairs in order: key, text, image bytes,
 * and (only for pairs that have some) the usable alt_texts. */
const char *vlm__tdata_digest(const vlm__tdata *d);
/* Token ids of pair i as the family's tokenizer gives them (CLIP: bos
 * first and eos last; SigLIP: padded to context_length; BERT: [CLS]
 * first). */
void vlm__tdata_tokens(const vlm__tdata *d, int i, const int32_t **ids,
                       int *len);
/* Token ids of the caption a draw (an entry of a batch's pairs) has in
 * epoch `epoch` of training: its text, or with probability
 * cfg->alt_text_share one of its usable alt_texts (uniformly), drawn from
 * (seed, epoch, pair, r) for the pair's r-th draw of the epoch. */
void vlm__tdata_train_tokens(const vlm__tdata *d, int draw, int64_t epoch,
                             const int32_t **ids, int *len);
/* Number of usable alt_texts of pair i (those that tokenize to at least
 * one token within the vocabulary). */
int vlm__tdata_alt_count(const vlm__tdata *d, int i);
/* Eval mode: the preprocessed pixels [3,S,S] of pair i. */
const float *vlm__tdata_pixels(const vlm__tdata *d, int i);

/* Training batches: step s of epoch s / steps_per_epoch holds pairs
 * list[(s % steps_per_epoch) * batch + b] of that epoch's list of draws
 * (every pair once, shuffled, when all weights are 1; else pair i
 * floor(w) times and once more with probability frac(w)).  Loader threads build batches
 * first_step .. end_step-1 ahead of the consumer.  */
int vlm__tdata_start(vlm__tdata *d, int batch, int64_t first_step,
                     int64_t end_step);
int vlm__tdata_steps_per_epoch(const vlm__tdata *d);
/* Wait for the batch of step (steps are consumed in order) and get its
 * pixels [batch,3,S,S] and draws [batch]: pair draw % count, for the
 * (draw / count)-th time that epoch (0 unless a weight is above 1).
 * Valid until release. */
int vlm__tdata_next(vlm__tdata *d, int64_t step, const float **pixels,
                    const int **pairs);
void vlm__tdata_release(vlm__tdata *d, int64_t step);

/* Build one batch directly, without the loader (tests, benchmarks). */
void vlm__tdata_build(const vlm__tdata *d, int batch, int64_t step,
                      float *pixels, int *pairs);

#endif
