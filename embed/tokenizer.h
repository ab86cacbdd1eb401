/* tokenizer.h - CLIP's byte-level BPE tokenizer (internal to embed/).
 *
 * Matches the reference tokenizer: HTML-unescape, whitespace collapse,
 * lower-case, the reference pre-tokenizer pattern (Unicode letter and
 * number classes via utf8proc), byte-to-unicode mapping, BPE with </w>
 * word ends, start and end tokens, truncation keeping the end token last.
 * A loaded tokenizer is read-only and safe to share between threads.
 */
#ifndef VLM_TOKENIZER_H
#define VLM_TOKENIZER_H

#include <stdint.h>

typedef struct vlm__tokenizer vlm__tokenizer;

/* Load from a Hugging Face vocab.json and merges.txt. */
int vlm__tokenizer_load(const char *vocab_json, const char *merges_txt,
                        vlm__tokenizer **out);
/* Load CLIP's original gzipped merges list (bpe_simple_vocab_16e6.txt.gz);
 * the vocabulary is derived from it as the reference does. */
int vlm__tokenizer_load_bpe_gz(const char *bpe_gz, vlm__tokenizer **out);
void vlm__tokenizer_free(vlm__tokenizer *tok); /* accepts NULL */

int32_t vlm__tokenizer_bos(const vlm__tokenizer *tok); /* <|startoftext|> */
int32_t vlm__tokenizer_eos(const vlm__tokenizer *tok); /* <|endoftext|> */
int vlm__tokenizer_vocab_size(const vlm__tokenizer *tok);
/* Id of a vocabulary entry given as its byte-encoded string (as in
 * vocab.json, e.g. "hello</w>"), or -1 if there is none. */
int32_t vlm__tokenizer_lookup(const vlm__tokenizer *tok, const char *piece);

/* Tokenize UTF-8 text into at most min(context_length, max_ids) ids,
 * bos first and eos last (eos kept when truncating).  Invalid UTF-8 gives
 * VLM_EFORMAT with the byte offset in vlm_errmsg(). */
int vlm__tokenize(const vlm__tokenizer *tok, const char *text,
                  int context_length, int32_t *ids, int max_ids, int *n_ids);

#endif
