/* tokenizer_spm.h - the SentencePiece tokenizers of the SigLIP family
 * (internal to embed/): Hugging Face's SiglipTokenizer (spiece.model;
 * SigLIP) and GemmaTokenizer (tokenizer.model; SigLIP 2), on Debian's
 * libsentencepiece behind a small C++ shim, so piece ids match the
 * reference library by construction.  The text rules around it (SigLIP's
 * lowercasing and punctuation removal, special-token splitting, the
 * leading-piece handling) are the reference tokenizer's, in C.
 * A loaded tokenizer is read-only and safe to share between threads.
 */
#ifndef VLM_TOKENIZER_SPM_H
#define VLM_TOKENIZER_SPM_H

#include <stdint.h>

typedef struct vlm__spm_tok vlm__spm_tok;

/* Load from a model directory: spiece.model (SiglipTokenizer) or
 * tokenizer.model (GemmaTokenizer), with tokenizer_config.json and
 * special_tokens_map.json when present.  Errors name the file. */
int vlm__spm_tok_load(const char *dir, vlm__spm_tok **out);
void vlm__spm_tok_free(vlm__spm_tok *tok); /* accepts NULL */

/* Every id the tokenizer gives is below vocab_size (the model's pieces
 * and any added token beyond them). */
int vlm__spm_tok_vocab_size(const vlm__spm_tok *tok);
int32_t vlm__spm_tok_pad(const vlm__spm_tok *tok); /* id the text is padded with; -1: none */
int32_t vlm__spm_tok_eos(const vlm__spm_tok *tok); /* -1: none (Gemma only) */

/* Tokenize UTF-8 text as the reference tokenizer does with
 * truncation=True, max_length=max_len, no padding: at most
 * min(max_len, max_ids) ids.  Invalid UTF-8 gives VLM_EFORMAT; text over
 * 4 MiB VLM_ETOOBIG; a limit that leaves no room after the special ids
 * (SigLIP: < 2) VLM_EINVAL. */
int vlm__spm_tokenize(const vlm__spm_tok *tok, const char *text, int max_len,
                      int32_t *ids, int max_ids, int *n_ids);

#endif
