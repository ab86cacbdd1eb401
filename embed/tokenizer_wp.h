/* tokenizer_wp.h - BERT's WordPiece tokenizer as Chinese-CLIP uses it
 * (internal to embed/): Hugging Face's slow BertTokenizer, i.e.
 * BasicTokenizer (text cleaning, CJK characters split, lowercasing and
 * accent stripping as tokenizer_config.json says, punctuation split) and
 * WordpieceTokenizer (greedy longest match with "##" continuations, [UNK]
 * for words it cannot cover or longer than 100 characters), [CLS] first
 * and [SEP] last.  A loaded tokenizer is read-only and thread safe.
 */
#ifndef VLM_TOKENIZER_WP_H
#define VLM_TOKENIZER_WP_H

#include <stdint.h>

typedef struct vlm__wp_tok vlm__wp_tok;

/* Load from a model directory: vocab.txt, with tokenizer_config.json and
 * special_tokens_map.json when present.  Errors name the file. */
int vlm__wp_tok_load(const char *dir, vlm__wp_tok **out);
void vlm__wp_tok_free(vlm__wp_tok *tok); /* accepts NULL */

/* Every id the tokenizer gives is below vocab_size (vocab.txt's lines and
 * any special token added beyond them). */
int vlm__wp_tok_vocab_size(const vlm__wp_tok *tok);
int32_t vlm__wp_tok_cls(const vlm__wp_tok *tok);
int32_t vlm__wp_tok_sep(const vlm__wp_tok *tok);
int32_t vlm__wp_tok_pad(const vlm__wp_tok *tok);

/* Tokenize UTF-8 text as tokenizer(text, truncation=True,
 * max_length=max_len) does: [CLS] ids [SEP], at most min(max_len,
 * max_ids) ids, [SEP] kept last.  Invalid UTF-8 gives VLM_EFORMAT; text
 * over 4 MiB VLM_ETOOBIG; a limit under 3 VLM_EINVAL. */
int vlm__wp_tokenize(const vlm__wp_tok *tok, const char *text, int max_len,
                     int32_t *ids, int max_ids, int *n_ids);

#endif
