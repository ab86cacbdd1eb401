/* hf_tok.h - what Hugging Face's slow tokenizers share (internal to
 * embed/): the tokenizer_config.json / special_tokens_map.json reading of
 * PreTrainedTokenizerBase._from_pretrained, the added and special tokens
 * of PreTrainedTokenizer.__init__ / _add_tokens, and the steps of
 * PreTrainedTokenizer.tokenize before a model's own _tokenize (lowercasing
 * outside special tokens, the added-token Trie split, lstrip / rstrip /
 * single_word), all as transformers v4.44.2 does them, on code points with
 * Python's str semantics.  The SentencePiece (tokenizer_spm.c) and
 * WordPiece (tokenizer_wp.c) tokenizers build on it.
 *
 * Everything here is read-only after vlm__hf_tokens_init returns, so one
 * loaded set may be used by many threads at once.
 */
#ifndef VLM_HF_TOK_H
#define VLM_HF_TOK_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* The longest text the tokenizers accept (bytes); longer gives
 * VLM_ETOOBIG.  It bounds the time and memory of one call (SentencePiece
 * encodes a whole chunk at once, about 0.2 s per MiB here). */
#define VLM__TOK_MAX_TEXT ((size_t)4 << 20)

/* The longest added or special token accepted in a configuration, in code
 * points: it bounds the Trie split's work per character. */
#define VLM__TOK_MAX_ADDED 256

/* ---- Python text helpers -------------------------------------------- */

/* Strict UTF-8 to code points (*out malloc'd, caller frees).  Invalid
 * UTF-8 gives VLM_EFORMAT naming `what` and the byte offset. */
int vlm__utf8_decode(const char *s, size_t len, const char *what,
                     uint32_t **out, size_t *n);
/* Code points to UTF-8 (*out malloc'd, NUL-terminated). */
int vlm__utf8_encode(const uint32_t *cp, size_t n, char **out, size_t *len);

int vlm__py_isspace(uint32_t c); /* str.isspace */
/* str.lower() of the one-character string c: 1 or 2 code points. */
size_t vlm__py_lower_char(uint32_t c, uint32_t out[2]);
/* str.lower() of a whole string (final sigma included); out holds 2n. */
size_t vlm__py_lower(const uint32_t *in, size_t n, uint32_t *out);

/* ---- string -> id map ----------------------------------------------- */

typedef struct vlm__strmap vlm__strmap;
int vlm__strmap_new(size_t expected, vlm__strmap **out);
void vlm__strmap_free(vlm__strmap *m);
/* Insert or overwrite (later keys win, as a Python dict built in order). */
int vlm__strmap_put(vlm__strmap *m, const char *key, size_t len, int32_t id);
int32_t vlm__strmap_get(const vlm__strmap *m, const char *key, size_t len); /* -1: absent */
size_t vlm__strmap_count(const vlm__strmap *m);

/* ---- added and special tokens --------------------------------------- */

typedef struct {
  char *content;   /* UTF-8, NUL-terminated */
  size_t len;      /* bytes */
  uint32_t *cp;    /* the same as code points */
  size_t ncp;
  int32_t id;
  unsigned char lstrip, rstrip, single_word, normalized, special;
} vlm__hf_token;

/* The special-token attributes, in SPECIAL_TOKENS_ATTRIBUTES order. */
enum { VLM__HF_BOS, VLM__HF_EOS, VLM__HF_UNK, VLM__HF_SEP, VLM__HF_PAD,
       VLM__HF_CLS, VLM__HF_MASK, VLM__HF_NSPECIAL };

/* A special token as the tokenizer class's __init__ receives it: unset,
 * a plain string, or an AddedToken (with its flags). */
typedef struct {
  int set, is_added;
  vlm__hf_token tok; /* content always; flags when is_added */
} vlm__hf_special;

struct vlm__hf_tokens;

/* How the concrete class looks up its own vocabulary: the id of a string
 * in get_vocab() without the added tokens (-1 if absent), and
 * len(get_vocab()) (for the ids _add_tokens gives new tokens). */
typedef struct {
  int32_t (*lookup)(const void *ctx, const struct vlm__hf_tokens *t,
                    const char *s, size_t len);
  size_t (*vocab_len)(const void *ctx, const struct vlm__hf_tokens *t);
  const void *ctx;
  /* The special attributes (1 << VLM__HF_EOS, ...) that the class
   * __init__ wraps, when given as plain strings, into AddedToken(lstrip=L,
   * rstrip=R, normalized=False, special=True): SiglipTokenizer eos, unk,
   * pad (L = R = 1), GemmaTokenizer bos, eos, unk, pad (L = R = 0);
   * BertTokenizer keeps strings (mask 0). */
  unsigned wrap_mask;
  int wrap_lstrip, wrap_rstrip;
  /* the class's default for each special attribute (NULL: none) */
  const char *defaults[VLM__HF_NSPECIAL];
} vlm__hf_class;

typedef struct vlm__hf_tokens {
  /* _added_tokens_decoder, in insertion order, one entry per id */
  vlm__hf_token *decoder;
  size_t n_decoder, cap_decoder;
  vlm__strmap *decoder_index; /* id (4 bytes) -> position in decoder */
  vlm__strmap *encoder; /* _added_tokens_encoder: content -> id */
  /* the special attributes after loading (content strings, or NULL) */
  char *special[VLM__HF_NSPECIAL];
  char **additional; /* additional_special_tokens */
  size_t n_additional;
  /* all_special_tokens, in order (pointers into special[] / additional[]) */
  const char **all_special;
  size_t n_all_special;
  /* the patterns PreTrainedTokenizer.tokenize keeps out of lowercasing:
   * all_special_tokens, then non-special normalized added tokens */
  uint32_t **protect;
  size_t *protect_len, n_protect;
  /* the added-token Trie (children as first-child / next-sibling lists) */
  struct vlm__hf_trie_node *trie;
  size_t n_trie, cap_trie;
  int split_special_tokens;
  int truncation_left; /* truncation_side "left" */
} vlm__hf_tokens;

/* Read tokenizer_config.json (cfg, may be NULL when the file is absent)
 * and, as the reference does when it has no added_tokens_decoder,
 * special_tokens_map.json, added_tokens.json and tokenizer.json's
 * added_tokens from dir; then add the special tokens as
 * PreTrainedTokenizer.__init__ does.  Errors name the file. */
int vlm__hf_tokens_init(vlm__hf_tokens *t, const char *dir, json_t *cfg,
                        const vlm__hf_class *cls);
void vlm__hf_tokens_free(vlm__hf_tokens *t);

/* Id of a special attribute's token (its added-token id, else the
 * vocabulary's), or -1 when unset. */
int32_t vlm__hf_special_id(const vlm__hf_tokens *t, const vlm__hf_class *cls, int which);
/* The added token with this id, or NULL. */
const vlm__hf_token *vlm__hf_added(const vlm__hf_tokens *t, int32_t id);
/* 1 if s is one of all_special_tokens. */
int vlm__hf_is_special(const vlm__hf_tokens *t, const char *s, size_t len);

/* A chunk of text after the split: special (an added token: its id) or
 * text for the class's _tokenize. */
typedef struct {
  uint32_t *cp;
  size_t n;
  int32_t added_id; /* >= 0: an added token */
} vlm__hf_chunk;

/* PreTrainedTokenizer.tokenize up to _tokenize: lowercase when
 * do_lower_case (outside the protected patterns), split on added tokens,
 * apply their lstrip / rstrip / single_word.  Empty chunks are dropped.
 * *chunks is malloc'd with each chunk's cp; free with
 * vlm__hf_chunks_free. */
int vlm__hf_split(const vlm__hf_tokens *t, const uint32_t *text, size_t n,
                  int do_lower_case, vlm__hf_chunk **chunks, size_t *n_chunks);
void vlm__hf_chunks_free(vlm__hf_chunk *chunks, size_t n);

/* Read a JSON file of dir (NULL with *rc = 0 when absent). */
json_t *vlm__hf_load_json(const char *dir, const char *name, int *rc);
/* dir + "/" + name, malloc'd (NULL on ENOMEM). */
char *vlm__hf_path(const char *dir, const char *name);

#endif
