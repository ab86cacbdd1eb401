/* train_text.h - the trainer's text pairs: two texts that mean the same
 * (a word and its definition, a caption and its translation), tokenized up
 * front, drawn into batches for the text tower's own contrastive loss
 * (internal to train/).
 *
 * Determinism: the pairs of step s are drawn from (seed, s) alone, so a
 * resumed run draws what the uninterrupted one would have.
 */
#ifndef VLM_TRAIN_TEXT_H
#define VLM_TRAIN_TEXT_H

#include <stdint.h>

#include "tokenizer.h"
#include "train_data.h"
#include "vlm_train.h"

typedef struct vlm__ttext vlm__ttext;

/* Tokenize n pairs with cfg's tokenizer (as vlm__tdata_open does captions,
 * in cfg->threads threads).  A pair with a side that tokenizes to nothing
 * or outside the vocabulary, or whose sides are the same ids, or whose
 * weight is negative or not finite, is skipped and reported on cfg->log
 * (the first ten); it is an error (VLM_EINVAL) only if none is left. */
int vlm__ttext_open(const vlm__tdata_cfg *cfg, const vlm__tokenizer *tok,
                    const vlm_train_text_pair *pairs, int n,
                    vlm__ttext **out);
void vlm__ttext_free(vlm__ttext *d); /* accepts NULL */

int vlm__ttext_count(const vlm__ttext *d);   /* usable pairs */
int vlm__ttext_skipped(const vlm__ttext *d);
/* SHA-256 (hex) over the usable pairs in order: both texts and, when not
 * 1, the weight. */
const char *vlm__ttext_digest(const vlm__ttext *d);

/* The P pairs of step: drawn with probability proportional to their
 * weights, without two equal texts in the batch (a text of one pair that
 * is a text of another would be its own negative) unless the set has too
 * few distinct ones.  Writes 2P texts, the P anchors then their P
 * paraphrases in the same order: ids of text t at ids[off[t] ..
 * off[t] + len[t]) (ids holds 2P x context_length), and the usable pairs'
 * indices into pair[P].  P <= vlm__ttext_count(d). */
void vlm__ttext_batch(const vlm__ttext *d, int P, int64_t step, int32_t *ids,
                      int *off, int *len, int *pair);

/* The ids of side (0: a, 1: b) of usable pair i. */
void vlm__ttext_tokens(const vlm__ttext *d, int i, int side,
                       const int32_t **ids, int *len);

#endif
