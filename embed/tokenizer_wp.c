/* tokenizer_wp.c - Hugging Face's slow BertTokenizer (transformers
 * v4.44.2, models/bert/tokenization_bert.py) as Chinese-CLIP uses it.
 *
 * The reference, step by step:
 *   PreTrainedTokenizer.tokenize (hf_tok.c): lowercase outside the special
 *     tokens when do_lower_case, Trie split on the added tokens
 *   BertTokenizer._tokenize, per text chunk, BasicTokenizer.tokenize:
 *     _clean_text         drop U+0000, U+FFFD and category C* except
 *                         \t \n \r; \t \n \r and Zs -> " "
 *     _tokenize_chinese_chars  spaces around the _is_chinese_char ranges
 *     NFC                 utf8proc
 *     whitespace_tokenize str.strip().split() (Python's isspace)
 *     per word (unless in never_split = the config's never_split and the
 *                         special tokens): lower() and, unless strip_accents
 *                         is false, NFD minus category Mn; without lowercasing
 *                         only when strip_accents is true
 *     _run_split_on_punc  every ASCII 33-47, 58-64, 91-96, 123-126 or P*
 *                         character on its own
 *   then each word in the config's never_split as it is, the others through
 *   WordpieceTokenizer: more than 100 characters -> [UNK]; greedy longest
 *   match from the left, "##" continuations, any uncovered rest -> the
 *   whole word is [UNK]
 *   ids: added tokens' ids, else vocab.get(token, vocab[unk]); truncation
 *   to max_len - 2, then [CLS] ... [SEP]
 *
 * The longest match only tries substrings as long as the longest
 * vocabulary entry (no longer one can match), so a word costs O(length x
 * longest entry) lookups, not O(length^2).
 */
#include "tokenizer_wp.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "hf_tok.h"
#include "vlm_utf8.h"
#include "vlm_error.h"
#include "vlm_file.h"

#define WP_MAX_VOCAB_FILE ((size_t)64 << 20)
#define WP_MAX_INPUT_CHARS_PER_WORD 100

struct vlm__wp_tok {
  vlm__strmap *vocab;      /* BertTokenizer.vocab: line -> index (last wins) */
  size_t vocab_len;        /* len(self.vocab) */
  size_t max_piece_cp;     /* longest vocabulary entry, in code points */
  int do_lower_case, do_basic_tokenize, tokenize_chinese_chars;
  int strip_accents;       /* -1: None, 0: False, 1: True */
  char **never_split;      /* the config's never_split */
  size_t n_never_split;
  int32_t cls, sep, pad, unk;
  int vocab_size;          /* every id is below it */
  vlm__hf_tokens hf;
  vlm__hf_class klass;
};

/* ---- the vocabulary -------------------------------------------------- */

static int32_t wp_lookup(const void *ctx, const vlm__hf_tokens *t, const char *s, size_t len) {
  (void)t;
  const vlm__wp_tok *tok = ctx;
  return vlm__strmap_get(tok->vocab, s, len);
}

/* len(dict(self.vocab, **added_tokens_encoder)) */
static size_t wp_vocab_len(const void *ctx, const vlm__hf_tokens *t) {
  const vlm__wp_tok *tok = ctx;
  size_t n = tok->vocab_len;
  for (size_t i = 0; i < t->n_decoder; i++) {
    const vlm__hf_token *k = &t->decoder[i];
    if (vlm__strmap_get(t->encoder, k->content, k->len) == k->id &&
        vlm__strmap_get(tok->vocab, k->content, k->len) < 0)
      n++;
  }
  return n;
}

/* load_vocab: readlines() in text mode (universal newlines: \r\n, \r and
 * \n end a line), each line without its "\n", index = line number. */
static int load_vocab(vlm__wp_tok *tok, const char *path) {
  uint8_t *data = NULL;
  size_t len = 0;
  int rc = vlm_read_file(path, WP_MAX_VOCAB_FILE, &data, &len);
  if (rc != 0) return rc;
  uint32_t *cp = NULL;
  size_t ncp = 0;
  rc = vlm__utf8_decode((const char *)data, len, path, &cp, &ncp);
  free(cp);
  if (rc != 0) goto done;
  rc = vlm__strmap_new(len / 4 + 16, &tok->vocab);
  if (rc != 0) goto done;
  int32_t index = 0;
  size_t start = 0;
  for (size_t i = 0; i <= len; i++) {
    int at_end = i == len;
    if (!at_end && data[i] != '\n' && data[i] != '\r') continue;
    if (at_end && start == len) break; /* no last line without a newline */
    if (index == INT32_MAX) {
      rc = vlm_seterr(VLM_ETOOBIG, "%s: too many lines", path);
      goto done;
    }
    const char *line = (const char *)data + start;
    size_t line_len = i - start;
    rc = vlm__strmap_put(tok->vocab, line, line_len, index++);
    if (rc != 0) goto done;
    size_t cps = 0;
    for (size_t k = 0; k < line_len; k++) cps += ((unsigned char)line[k] & 0xC0) != 0x80;
    if (cps > tok->max_piece_cp) tok->max_piece_cp = cps;
    if (!at_end && data[i] == '\r' && i + 1 < len && data[i + 1] == '\n') i++;
    start = i + 1;
  }
  tok->vocab_len = vlm__strmap_count(tok->vocab);
  tok->vocab_size = index;
done:
  free(data);
  return rc;
}

static int json_bool(json_t *cfg, const char *key, int dflt) {
  json_t *v = cfg ? json_object_get(cfg, key) : NULL;
  if (!v || json_is_null(v)) return dflt;
  return json_is_true(v);
}

int vlm__wp_tok_load(const char *dir, vlm__wp_tok **out) {
  int rc = 0;
  *out = NULL;
  json_t *cfg = NULL;
  char *path = NULL;
  vlm__wp_tok *tok = calloc(1, sizeof *tok);
  if (!tok) return vlm_seterr(VLM_ENOMEM, "%s: tokenizer", dir);
  cfg = vlm__hf_load_json(dir, "tokenizer_config.json", &rc);
  if (rc != 0) goto fail;
  json_t *cls_name = cfg ? json_object_get(cfg, "tokenizer_class") : NULL;
  if (cls_name && !json_is_null(cls_name)) {
    const char *c = json_is_string(cls_name) ? json_string_value(cls_name) : "";
    if (strcmp(c, "BertTokenizer") != 0 && strcmp(c, "BertTokenizerFast") != 0) {
      rc = vlm_seterr(VLM_EUNSUPPORTED,
                      "%s/tokenizer_config.json: tokenizer_class \"%s\" is not BertTokenizer", dir, c);
      goto fail;
    }
  }
  path = vlm__hf_path(dir, "vocab.txt");
  if (!path) {
    rc = vlm_seterr(VLM_ENOMEM, "%s: tokenizer", dir);
    goto fail;
  }
  rc = load_vocab(tok, path);
  if (rc != 0) goto fail;

  tok->do_lower_case = json_bool(cfg, "do_lower_case", 1);
  tok->do_basic_tokenize = json_bool(cfg, "do_basic_tokenize", 1);
  tok->tokenize_chinese_chars = json_bool(cfg, "tokenize_chinese_chars", 1);
  json_t *sa = cfg ? json_object_get(cfg, "strip_accents") : NULL;
  tok->strip_accents = !sa || json_is_null(sa) ? -1 : json_is_true(sa);
  json_t *ns = cfg ? json_object_get(cfg, "never_split") : NULL;
  if (ns && !json_is_null(ns)) {
    if (!json_is_array(ns)) {
      rc = vlm_seterr(VLM_EFORMAT, "%s/tokenizer_config.json: never_split is not a list", dir);
      goto fail;
    }
    tok->never_split = calloc(json_array_size(ns) + 1, sizeof *tok->never_split);
    if (!tok->never_split) {
      rc = vlm_seterr(VLM_ENOMEM, "%s: tokenizer", dir);
      goto fail;
    }
    size_t i;
    json_t *v;
    json_array_foreach(ns, i, v) {
      if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
        rc = vlm_seterr(VLM_EFORMAT, "%s/tokenizer_config.json: never_split[%zu] is not a string",
                        dir, i);
        goto fail;
      }
      tok->never_split[tok->n_never_split] = strdup(json_string_value(v));
      if (!tok->never_split[tok->n_never_split++]) {
        rc = vlm_seterr(VLM_ENOMEM, "%s: tokenizer", dir);
        goto fail;
      }
    }
  }

  tok->klass.lookup = wp_lookup;
  tok->klass.vocab_len = wp_vocab_len;
  tok->klass.ctx = tok;
  tok->klass.defaults[VLM__HF_UNK] = "[UNK]";
  tok->klass.defaults[VLM__HF_SEP] = "[SEP]";
  tok->klass.defaults[VLM__HF_PAD] = "[PAD]";
  tok->klass.defaults[VLM__HF_CLS] = "[CLS]";
  tok->klass.defaults[VLM__HF_MASK] = "[MASK]";
  rc = vlm__hf_tokens_init(&tok->hf, dir, cfg, &tok->klass);
  if (rc != 0) goto fail;
  tok->unk = vlm__hf_special_id(&tok->hf, &tok->klass, VLM__HF_UNK);
  tok->cls = vlm__hf_special_id(&tok->hf, &tok->klass, VLM__HF_CLS);
  tok->sep = vlm__hf_special_id(&tok->hf, &tok->klass, VLM__HF_SEP);
  tok->pad = vlm__hf_special_id(&tok->hf, &tok->klass, VLM__HF_PAD);
  if (tok->cls < 0 || tok->sep < 0 || tok->unk < 0) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: BertTokenizer without %s token", dir,
                    tok->cls < 0 ? "a [CLS]" : tok->sep < 0 ? "a [SEP]" : "an [UNK]");
    goto fail;
  }
  for (size_t i = 0; i < tok->hf.n_decoder; i++)
    if (tok->hf.decoder[i].id >= tok->vocab_size) tok->vocab_size = tok->hf.decoder[i].id + 1;
  json_decref(cfg);
  free(path);
  *out = tok;
  return 0;
fail:
  json_decref(cfg);
  free(path);
  vlm__wp_tok_free(tok);
  return rc;
}

void vlm__wp_tok_free(vlm__wp_tok *tok) {
  if (!tok) return;
  vlm__strmap_free(tok->vocab);
  for (size_t i = 0; i < tok->n_never_split; i++) free(tok->never_split[i]);
  free(tok->never_split);
  vlm__hf_tokens_free(&tok->hf);
  free(tok);
}

int vlm__wp_tok_vocab_size(const vlm__wp_tok *tok) { return tok->vocab_size; }
int32_t vlm__wp_tok_cls(const vlm__wp_tok *tok) { return tok->cls; }
int32_t vlm__wp_tok_sep(const vlm__wp_tok *tok) { return tok->sep; }
int32_t vlm__wp_tok_pad(const vlm__wp_tok *tok) { return tok->pad; }

/* ---- character classes ------------------------------------------------ */

/* The code points Unicode 14.0 assigns: the reference outputs were made
 * with Python 3.11, whose unicodedata is 14.0, and BERT drops unassigned
 * (Cn) characters; utf8proc follows a newer Unicode (15.0 in Debian 12),
 * where e.g. CJK Extension H is assigned. */
static const struct { uint32_t lo, hi; } unicode14_assigned[] = {
#include "unicode14.inc"
};

/* unicodedata.category as Python 3.11 sees it. */
static utf8proc_category_t category(uint32_t c) {
  size_t lo = 0, hi = sizeof unicode14_assigned / sizeof *unicode14_assigned;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (c < unicode14_assigned[mid].lo) hi = mid;
    else if (c > unicode14_assigned[mid].hi) lo = mid + 1;
    else return utf8proc_category((utf8proc_int32_t)c);
  }
  return UTF8PROC_CATEGORY_CN;
}

static int is_bert_whitespace(uint32_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || category(c) == UTF8PROC_CATEGORY_ZS;
}

static int is_bert_control(uint32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return 0;
  switch (category(c)) {
  case UTF8PROC_CATEGORY_CN: /* unassigned */
  case UTF8PROC_CATEGORY_CC:
  case UTF8PROC_CATEGORY_CF:
  case UTF8PROC_CATEGORY_CS:
  case UTF8PROC_CATEGORY_CO:
    return 1;
  default:
    return 0;
  }
}

static int is_bert_punct(uint32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
      (c >= 123 && c <= 126))
    return 1;
  utf8proc_category_t k = category(c);
  return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}

static int is_chinese_char(uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* unicodedata.normalize("NFC" / "NFD", s) via utf8proc. */
static int normalize(const uint32_t *in, size_t n, int compose, uint32_t **out, size_t *m) {
  char *s = NULL;
  size_t len = 0;
  *out = NULL;
  *m = 0;
  int rc = vlm__utf8_encode(in, n, &s, &len);
  if (rc != 0) return rc;
  utf8proc_uint8_t *dst = NULL;
  utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &dst,
                                    UTF8PROC_STABLE | (compose ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE));
  free(s);
  if (r < 0) {
    free(dst);
    return vlm_seterr(r == UTF8PROC_ERROR_NOMEM ? VLM_ENOMEM : VLM_EFORMAT, "tokenize: %s",
                      utf8proc_errmsg(r));
  }
  rc = vlm__utf8_decode((const char *)dst, (size_t)r, "tokenize", out, m);
  free(dst);
  return rc;
}

/* ---- tokenize ---------------------------------------------------------- */

typedef struct {
  int32_t *id;
  size_t n, cap;
} id_list;

static int push_id(id_list *l, int32_t id) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    int32_t *a = realloc(l->id, cap * sizeof *a);
    if (!a) return vlm_seterr(VLM_ENOMEM, "tokenize: token list");
    l->id = a;
    l->cap = cap;
  }
  l->id[l->n++] = id;
  return 0;
}

/* convert_tokens_to_ids of one token string. */
static int32_t token_id(const vlm__wp_tok *tok, const char *s, size_t len) {
  int32_t id = vlm__strmap_get(tok->hf.encoder, s, len);
  if (id < 0) id = vlm__strmap_get(tok->vocab, s, len);
  return id >= 0 ? id : tok->unk;
}

static int in_list(char *const *list, size_t n, const char *s, size_t len) {
  for (size_t i = 0; i < n; i++)
    if (strlen(list[i]) == len && memcmp(list[i], s, len) == 0) return 1;
  return 0;
}

/* WordpieceTokenizer.tokenize of one word (no whitespace in it). */
static int wordpiece(const vlm__wp_tok *tok, const uint32_t *w, size_t n, id_list *out) {
  if (n > WP_MAX_INPUT_CHARS_PER_WORD) return push_id(out, tok->unk);
  char buf[4 * WP_MAX_INPUT_CHARS_PER_WORD + 3];
  size_t first = out->n;
  size_t start = 0;
  while (start < n) {
    size_t end = n;
    if (end - start > tok->max_piece_cp) end = start + tok->max_piece_cp;
    int32_t id = -1;
    while (start < end) {
      size_t len = 0;
      if (start > 0) {
        buf[0] = buf[1] = '#';
        len = 2;
      }
      for (size_t k = start; k < end; k++) len += vlm_utf8_put(buf + len, w[k]);
      id = vlm__strmap_get(tok->vocab, buf, len);
      if (id >= 0) {
        /* the string goes through convert_tokens_to_ids: an added token of
         * the same text takes precedence */
        id = token_id(tok, buf, len);
        break;
      }
      end--;
    }
    if (id < 0) { /* is_bad: the whole word is [UNK] */
      out->n = first;
      return push_id(out, tok->unk);
    }
    int rc = push_id(out, id);
    if (rc != 0) return rc;
    start = end;
  }
  return 0;
}

/* 1 if s is in the BasicTokenizer's never_split: the config's list and
 * the special tokens (tokenize() does not pass split_special_tokens on to
 * _tokenize, whose default keeps them). */
static int never_split(const vlm__wp_tok *tok, const char *s, size_t len) {
  return in_list(tok->never_split, tok->n_never_split, s, len) ||
         vlm__hf_is_special(&tok->hf, s, len);
}

/* A word that _run_split_on_punc keeps whole: BertTokenizer._tokenize
 * keeps it as it is when in the config's never_split, else WordPiece. */
static int whole_word(const vlm__wp_tok *tok, const uint32_t *w, size_t n, const char *s,
                      size_t len, id_list *out) {
  if (in_list(tok->never_split, tok->n_never_split, s, len)) return push_id(out, token_id(tok, s, len));
  return wordpiece(tok, w, n, out);
}

/* One word of whitespace_tokenize's output: lowercase / accents,
 * punctuation split, then never_split or WordPiece for each piece. */
static int basic_word(const vlm__wp_tok *tok, const uint32_t *w, size_t n, id_list *out) {
  int rc = 0;
  uint32_t *low = NULL, *nfd = NULL;
  char *buf = malloc(4 * n + 1);
  if (!buf) return vlm_seterr(VLM_ENOMEM, "tokenize: %zu code points", n);
  size_t len = 0;
  for (size_t k = 0; k < n; k++) len += vlm_utf8_put(buf + len, w[k]);
  if (never_split(tok, buf, len)) {
    rc = whole_word(tok, w, n, buf, len, out);
    goto done;
  }
  const uint32_t *t = w;
  size_t m = n;
  int strip = tok->do_lower_case ? tok->strip_accents != 0 : tok->strip_accents == 1;
  if (tok->do_lower_case) {
    low = malloc((2 * n + 1) * sizeof *low);
    if (!low) {
      rc = vlm_seterr(VLM_ENOMEM, "tokenize: %zu code points", n);
      goto done;
    }
    m = vlm__py_lower(w, n, low);
    t = low;
  }
  if (strip) {
    rc = normalize(t, m, 0, &nfd, &m);
    if (rc != 0) goto done;
    size_t k = 0;
    for (size_t i = 0; i < m; i++)
      if (category(nfd[i]) != UTF8PROC_CATEGORY_MN) nfd[k++] = nfd[i];
    m = k;
    t = nfd;
  }
  /* _run_split_on_punc (which keeps a never_split word whole), then
   * whitespace_tokenize of the joined pieces */
  if (m > n) {
    char *b = realloc(buf, 4 * m + 1);
    if (!b) {
      rc = vlm_seterr(VLM_ENOMEM, "tokenize: %zu code points", m);
      goto done;
    }
    buf = b;
  }
  len = 0;
  for (size_t k = 0; k < m; k++) len += vlm_utf8_put(buf + len, t[k]);
  if (m && never_split(tok, buf, len)) {
    rc = whole_word(tok, t, m, buf, len, out);
    goto done;
  }
  size_t i = 0;
  while (i < m && rc == 0) {
    if (vlm__py_isspace(t[i])) {
      i++;
      continue;
    }
    size_t j = i + 1;
    if (!is_bert_punct(t[i]))
      while (j < m && !is_bert_punct(t[j]) && !vlm__py_isspace(t[j])) j++;
    size_t plen = 0;
    for (size_t k = i; k < j; k++) plen += vlm_utf8_put(buf + plen, t[k]);
    if (in_list(tok->never_split, tok->n_never_split, buf, plen))
      rc = push_id(out, token_id(tok, buf, plen));
    else
      rc = wordpiece(tok, t + i, j - i, out);
    i = j;
  }
done:
  free(buf);
  free(low);
  free(nfd);
  return rc;
}

/* whitespace_tokenize, then each word through the basic tokenizer's
 * per-word steps (or straight to WordPiece), until out holds more than
 * stop ids. */
static int tokenize_words(const vlm__wp_tok *tok, const uint32_t *t, size_t m, id_list *out,
                          size_t stop) {
  size_t i = 0;
  while (i < m && out->n <= stop) {
    if (vlm__py_isspace(t[i])) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < m && !vlm__py_isspace(t[j])) j++;
    int rc = tok->do_basic_tokenize ? basic_word(tok, t + i, j - i, out)
                                    : wordpiece(tok, t + i, j - i, out);
    if (rc != 0) return rc;
    i = j;
  }
  return 0;
}

#define NFC_WINDOW 65536

/* BertTokenizer._tokenize of one text chunk, stopping once out holds more
 * than stop ids. */
static int tokenize_chunk(const vlm__wp_tok *tok, const uint32_t *c, size_t n, id_list *out,
                          size_t stop) {
  int rc = 0;
  uint32_t *a = NULL, *nfc = NULL;
  size_t m = 0;
  a = malloc((3 * n + 1) * sizeof *a);
  if (!a) {
    rc = vlm_seterr(VLM_ENOMEM, "tokenize: %zu code points", n);
    goto done;
  }
  if (tok->do_basic_tokenize) {
    for (size_t i = 0; i < n; i++) { /* _clean_text, _tokenize_chinese_chars */
      uint32_t ch = c[i];
      if (ch == 0 || ch == 0xFFFD || is_bert_control(ch)) continue;
      if (is_bert_whitespace(ch)) {
        a[m++] = ' ';
      } else if (tok->tokenize_chinese_chars && is_chinese_char(ch)) {
        a[m++] = ' ';
        a[m++] = ch;
        a[m++] = ' ';
      } else {
        a[m++] = ch;
      }
    }
    /* NFC window by window, cut before a space (a starter that composes
     * with nothing, so NFC(x + " " + y) = NFC(x) + " " + NFC(y)): a huge
     * text costs only the windows up to the last id kept */
    size_t w0 = 0;
    while (w0 < m && out->n <= stop) {
      size_t w1 = w0 + NFC_WINDOW < m ? w0 + NFC_WINDOW : m;
      while (w1 < m && a[w1] != ' ') w1++;
      size_t k = 0;
      rc = normalize(a + w0, w1 - w0, 1, &nfc, &k);
      if (rc == 0) rc = tokenize_words(tok, nfc, k, out, stop);
      free(nfc);
      nfc = NULL;
      if (rc != 0) goto done;
      w0 = w1;
    }
  } else {
    rc = tokenize_words(tok, c, n, out, stop);
  }
done:
  free(a);
  free(nfc);
  return rc;
}

int vlm__wp_tokenize(const vlm__wp_tok *tok, const char *text, int max_len,
                     int32_t *ids, int max_ids, int *n_ids) {
  int rc = 0;
  uint32_t *cp = NULL;
  size_t n = 0;
  vlm__hf_chunk *chunks = NULL;
  size_t n_chunks = 0;
  id_list l = {0};
  if (n_ids) *n_ids = 0;
  if (!tok || !text || !ids || !n_ids || max_len < 1 || max_ids < 1)
    return vlm_seterr(VLM_EINVAL, "tokenize: bad arguments");
  size_t limit = (size_t)(max_len < max_ids ? max_len : max_ids);
  if (limit <= 2)
    return vlm_seterr(VLM_EINVAL, "tokenize: %zu ids leave no room for the text", limit);
  size_t len = strlen(text);
  if (len > VLM__TOK_MAX_TEXT)
    return vlm_seterr(VLM_ETOOBIG, "tokenize: text of %zu bytes (at most %zu)", len,
                      VLM__TOK_MAX_TEXT);
  rc = vlm__utf8_decode(text, len, "tokenize", &cp, &n);
  if (rc != 0) return rc;
  /* BertTokenizer.do_lower_case reads basic_tokenizer.do_lower_case: with
   * do_basic_tokenize false there is no basic_tokenizer, hasattr() is
   * false, and tokenize() never lowercases */
  rc = vlm__hf_split(&tok->hf, cp, n, tok->do_basic_tokenize && tok->do_lower_case, &chunks,
                     &n_chunks);
  if (rc != 0) goto done;
  size_t want = limit - 2;
  size_t stop = tok->hf.truncation_left ? (size_t)-1 : want;
  for (size_t i = 0; i < n_chunks && l.n <= stop; i++) {
    if (chunks[i].added_id >= 0)
      rc = push_id(&l, chunks[i].added_id);
    else
      rc = tokenize_chunk(tok, chunks[i].cp, chunks[i].n, &l, stop);
    if (rc != 0) goto done;
  }
  size_t first = 0, count = l.n;
  if (count > want) {
    if (tok->hf.truncation_left) first = count - want;
    count = want;
  }
  ids[0] = tok->cls;
  if (count) memcpy(ids + 1, l.id + first, count * sizeof *ids);
  ids[1 + count] = tok->sep;
  *n_ids = (int)(count + 2);
done:
  vlm__hf_chunks_free(chunks, n_chunks);
  free(cp);
  free(l.id);
  return rc;
}
