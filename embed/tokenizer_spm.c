/* tokenizer_spm.c - Hugging Face's SiglipTokenizer and GemmaTokenizer
 * (transformers v4.44.2, slow classes) over libsentencepiece (spm_shim.h).
 *
 * SiglipTokenizer (spiece.model), step by step:
 *   load: the model with NormalizerSpec.add_dummy_prefix forced off
 *         (get_spm_processor's MergeFrom; appending the field to the
 *         serialized proto is the same merge)
 *   tokenize(text): "\u2581" + text with every U+2581 replaced by " ";
 *         PreTrainedTokenizer.tokenize (hf_tok.c: lowercase outside the
 *         special tokens when do_lower_case, Trie split on added tokens,
 *         their lstrip / rstrip); each text chunk through _tokenize:
 *         canonicalize_text (drop string.punctuation, re.sub(r"\s+", " "),
 *         strip), then encode(unk_token + chunk) minus its first
 *         len(encode(unk_token)) pieces; then a leading lone "\u2581"
 *         before a special token is dropped (token strings compared)
 *   ids: added tokens' ids, else PieceToId; truncation to max_len - 1
 *         (right, or left with truncation_side "left"), then </s> unless
 *         the last id already is </s>
 *
 * GemmaTokenizer (tokenizer.model): the model as it is (Gemma's has no
 * dummy prefix), no lowercasing (the class has no do_lower_case, so the
 * base class never lowercases, whatever the config says), the same split
 * on added tokens, encode(chunk) per chunk; ids framed as
 * build_inputs_with_special_tokens does: [<bos>] if add_bos_token (default
 * true), [<eos>] if add_eos_token (default false), content truncated to
 * max_len minus those.
 *
 * Which class: tokenizer_config.json's "tokenizer_class" (a "Fast" suffix
 * ignored), else spiece.model -> Siglip, tokenizer.model -> Gemma.
 */
#include "tokenizer_spm.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_tok.h"
#include "vlm_utf8.h"
#include "spm_shim.h"
#include "vlm_error.h"
#include "vlm_file.h"

/* A real Gemma tokenizer.model is about 4 MB. */
#define SPM_MAX_MODEL_FILE ((size_t)64 << 20)

struct vlm__spm_tok {
  vlm__spm *sp;
  int gemma;
  int do_lower_case;       /* Siglip */
  int add_bos, add_eos;    /* Gemma */
  size_t unk_len;          /* Siglip: len(encode(unk_token)) */
  char *unk_prefix;        /* Siglip: str(unk_token) */
  int32_t bos, eos, pad;
  int vocab_size;
  vlm__hf_tokens hf;
  vlm__hf_class cls;
};

/* ---- the vocabulary as the reference's get_vocab() sees it ------------ */

static int32_t spm_lookup(const void *ctx, const vlm__hf_tokens *t, const char *s, size_t len) {
  const vlm__spm *sp = ctx;
  int32_t id = vlm__spm_piece_to_id(sp, s, len);
  size_t plen = 0;
  const char *p = vlm__spm_id_to_piece(sp, id, &plen);
  if (!p || plen != len || memcmp(p, s, len) != 0) return -1; /* the unknown id */
  /* {convert_ids_to_tokens(i): i}: an added token at id i hides the piece */
  return vlm__hf_added(t, id) ? -1 : id;
}

static size_t spm_vocab_len(const void *ctx, const vlm__hf_tokens *t) {
  const vlm__spm *sp = ctx;
  int n = vlm__spm_piece_size(sp);
  vlm__strmap *m = NULL;
  if (vlm__strmap_new((size_t)n + t->n_decoder, &m) != 0) return (size_t)n;
  for (int i = 0; i < n; i++) {
    size_t len = 0;
    const char *p = vlm__spm_id_to_piece(sp, i, &len);
    const vlm__hf_token *added = vlm__hf_added(t, i);
    if (added) {
      p = added->content;
      len = added->len;
    }
    if (p) vlm__strmap_put(m, p, len, i);
  }
  for (size_t k = 0; k < t->n_decoder; k++)
    vlm__strmap_put(m, t->decoder[k].content, t->decoder[k].len, t->decoder[k].id);
  size_t count = vlm__strmap_count(m);
  vlm__strmap_free(m);
  return count;
}

/* ---- loading --------------------------------------------------------- */

static int file_exists(const char *dir, const char *name) {
  char *p = vlm__hf_path(dir, name);
  if (!p) return 0;
  FILE *f = fopen(p, "rb");
  free(p);
  if (!f) return 0;
  fclose(f);
  return 1;
}

static int json_bool(json_t *cfg, const char *key, int dflt) {
  json_t *v = cfg ? json_object_get(cfg, key) : NULL;
  if (!v || json_is_null(v)) return dflt;
  return json_is_true(v);
}

/* Encode a whole UTF-8 string into pieces (the shim's arrays). */
static int spm_pieces(const vlm__spm *sp, const char *s, size_t len, char **bytes, size_t **off,
                      size_t *n) {
  char err[256];
  if (vlm__spm_encode(sp, s, len, bytes, off, n, err, sizeof err) != 0)
    return vlm_seterr(VLM_ENOMEM, "sentencepiece encode: %s", err);
  return 0;
}

int vlm__spm_tok_load(const char *dir, vlm__spm_tok **out) {
  int rc = 0;
  *out = NULL;
  json_t *cfg = NULL;
  uint8_t *model = NULL;
  size_t model_len = 0;
  char *path = NULL;
  vlm__spm_tok *tok = calloc(1, sizeof *tok);
  if (!tok) return vlm_seterr(VLM_ENOMEM, "%s: tokenizer", dir);

  cfg = vlm__hf_load_json(dir, "tokenizer_config.json", &rc);
  if (rc != 0) goto fail;
  json_t *cls_name = cfg ? json_object_get(cfg, "tokenizer_class") : NULL;
  if (cls_name && json_is_string(cls_name)) {
    const char *c = json_string_value(cls_name);
    if (strcmp(c, "SiglipTokenizer") == 0 || strcmp(c, "SiglipTokenizerFast") == 0) {
      tok->gemma = 0;
    } else if (strcmp(c, "GemmaTokenizer") == 0 || strcmp(c, "GemmaTokenizerFast") == 0) {
      tok->gemma = 1;
    } else {
      rc = vlm_seterr(VLM_EUNSUPPORTED,
                      "%s/tokenizer_config.json: tokenizer_class \"%s\" is not a SentencePiece "
                      "tokenizer vlmdb knows (SiglipTokenizer, GemmaTokenizer)", dir, c);
      goto fail;
    }
  } else if (cls_name && !json_is_null(cls_name)) {
    rc = vlm_seterr(VLM_EFORMAT, "%s/tokenizer_config.json: tokenizer_class is not a string", dir);
    goto fail;
  } else if (file_exists(dir, "spiece.model")) {
    tok->gemma = 0;
  } else if (file_exists(dir, "tokenizer.model")) {
    tok->gemma = 1;
  } else {
    rc = vlm_seterr(VLM_ENOTFOUND, "%s: no spiece.model or tokenizer.model", dir);
    goto fail;
  }

  /* the model; SiglipTokenizer turns add_dummy_prefix off by merging a
   * NormalizerSpec (ModelProto field 3) holding add_dummy_prefix (its
   * field 3) = false */
  path = vlm__hf_path(dir, tok->gemma ? "tokenizer.model" : "spiece.model");
  if (!path) {
    rc = vlm_seterr(VLM_ENOMEM, "%s: tokenizer", dir);
    goto fail;
  }
  rc = vlm_read_file(path, SPM_MAX_MODEL_FILE, &model, &model_len);
  if (rc != 0) goto fail;
  if (!tok->gemma) {
    uint8_t *m = realloc(model, model_len + 5);
    if (!m) {
      rc = vlm_seterr(VLM_ENOMEM, "%s", path);
      goto fail;
    }
    model = m;
    memcpy(model + model_len, "\x1a\x02\x18\x00", 4);
    model_len += 4;
  }
  char err[256];
  if (vlm__spm_load(model, model_len, &tok->sp, err, sizeof err) != 0) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: not a SentencePiece model: %s", path, err);
    goto fail;
  }

  tok->cls.lookup = spm_lookup;
  tok->cls.vocab_len = spm_vocab_len;
  tok->cls.ctx = tok->sp;
  if (tok->gemma) {
    tok->cls.defaults[VLM__HF_BOS] = "<bos>";
    tok->cls.defaults[VLM__HF_EOS] = "<eos>";
    tok->cls.defaults[VLM__HF_UNK] = "<unk>";
    tok->cls.defaults[VLM__HF_PAD] = "<pad>";
    tok->cls.wrap_mask = 1u << VLM__HF_BOS | 1u << VLM__HF_EOS | 1u << VLM__HF_UNK | 1u << VLM__HF_PAD;
  } else {
    tok->cls.defaults[VLM__HF_EOS] = "</s>";
    tok->cls.defaults[VLM__HF_UNK] = "<unk>";
    tok->cls.defaults[VLM__HF_PAD] = "</s>";
    tok->cls.wrap_mask = 1u << VLM__HF_EOS | 1u << VLM__HF_UNK | 1u << VLM__HF_PAD;
    tok->cls.wrap_lstrip = tok->cls.wrap_rstrip = 1;
  }
  rc = vlm__hf_tokens_init(&tok->hf, dir, cfg, &tok->cls);
  if (rc != 0) goto fail;

  tok->bos = vlm__hf_special_id(&tok->hf, &tok->cls, VLM__HF_BOS);
  tok->eos = vlm__hf_special_id(&tok->hf, &tok->cls, VLM__HF_EOS);
  tok->pad = vlm__hf_special_id(&tok->hf, &tok->cls, VLM__HF_PAD);
  tok->vocab_size = vlm__spm_piece_size(tok->sp);
  for (size_t i = 0; i < tok->hf.n_decoder; i++)
    if (tok->hf.decoder[i].id >= tok->vocab_size) tok->vocab_size = tok->hf.decoder[i].id + 1;
  if (tok->gemma) {
    tok->add_bos = json_bool(cfg, "add_bos_token", 1);
    tok->add_eos = json_bool(cfg, "add_eos_token", 0);
    if ((tok->add_bos && tok->bos < 0) || (tok->add_eos && tok->eos < 0)) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: add_%s_token without a %s token", dir,
                      tok->add_bos && tok->bos < 0 ? "bos" : "eos",
                      tok->add_bos && tok->bos < 0 ? "bos" : "eos");
      goto fail;
    }
  } else {
    tok->do_lower_case = json_bool(cfg, "do_lower_case", 1);
    if (tok->eos < 0) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: SiglipTokenizer without an eos token", dir);
      goto fail;
    }
    /* str(self.unk_token): "None" when unset, as Python prints it */
    const char *unk = tok->hf.special[VLM__HF_UNK] ? tok->hf.special[VLM__HF_UNK] : "None";
    tok->unk_prefix = strdup(unk);
    if (!tok->unk_prefix) {
      rc = vlm_seterr(VLM_ENOMEM, "%s: tokenizer", dir);
      goto fail;
    }
    char *bytes = NULL;
    size_t *off = NULL, n = 0;
    rc = spm_pieces(tok->sp, unk, strlen(unk), &bytes, &off, &n);
    free(bytes);
    free(off);
    if (rc != 0) goto fail;
    tok->unk_len = n;
  }
  json_decref(cfg);
  free(model);
  free(path);
  *out = tok;
  return 0;
fail:
  json_decref(cfg);
  free(model);
  free(path);
  vlm__spm_tok_free(tok);
  return rc;
}

void vlm__spm_tok_free(vlm__spm_tok *tok) {
  if (!tok) return;
  vlm__hf_tokens_free(&tok->hf);
  vlm__spm_free(tok->sp);
  free(tok->unk_prefix);
  free(tok);
}

int vlm__spm_tok_vocab_size(const vlm__spm_tok *tok) { return tok->vocab_size; }
int32_t vlm__spm_tok_pad(const vlm__spm_tok *tok) { return tok->pad; }
int32_t vlm__spm_tok_eos(const vlm__spm_tok *tok) { return tok->eos; }

/* ---- tokenize ---------------------------------------------------------- */

typedef struct {
  int32_t *id;
  unsigned char *lone_underline, *special; /* for the leading-piece rule */
  size_t n, cap;
} tok_list;

static int list_push(tok_list *l, int32_t id, int lone_underline, int special) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    int32_t *a = realloc(l->id, cap * sizeof *a);
    if (a) l->id = a;
    unsigned char *b = realloc(l->lone_underline, cap);
    if (b) l->lone_underline = b;
    unsigned char *c = realloc(l->special, cap);
    if (c) l->special = c;
    if (!a || !b || !c) return vlm_seterr(VLM_ENOMEM, "tokenize: token list");
    l->cap = cap;
  }
  l->id[l->n] = id;
  l->lone_underline[l->n] = (unsigned char)lone_underline;
  l->special[l->n] = (unsigned char)special;
  l->n++;
  return 0;
}

static int is_ascii_punct(uint32_t c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
         (c >= 123 && c <= 126);
}

/* canonicalize_text: drop string.punctuation, \s+ -> " ", strip(); into
 * UTF-8 after prefix.  Returns the byte length. */
static size_t canonicalize(const uint32_t *cp, size_t n, const char *prefix, char *out) {
  size_t m = strlen(prefix);
  memcpy(out, prefix, m);
  size_t body = m;
  int pending_space = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t c = cp[i];
    if (c < 128 && is_ascii_punct(c)) continue;
    if (vlm__py_isspace(c)) {
      pending_space = 1;
      continue;
    }
    if (pending_space && m > body) out[m++] = ' ';
    pending_space = 0;
    m += vlm_utf8_put(out + m, c);
  }
  out[m] = 0;
  return m;
}

static int encode_chunk(const vlm__spm_tok *tok, const vlm__hf_chunk *c, tok_list *l) {
  int rc = 0;
  char *buf = NULL, *bytes = NULL;
  size_t *off = NULL, n = 0, len, drop = 0;
  buf = malloc(4 * c->n + (tok->unk_prefix ? strlen(tok->unk_prefix) : 0) + 1);
  if (!buf) return vlm_seterr(VLM_ENOMEM, "tokenize: %zu code points", c->n);
  if (tok->gemma) {
    len = 0;
    for (size_t i = 0; i < c->n; i++) len += vlm_utf8_put(buf + len, c->cp[i]);
  } else {
    len = canonicalize(c->cp, c->n, tok->unk_prefix, buf);
  }
  rc = spm_pieces(tok->sp, buf, len, &bytes, &off, &n);
  if (rc != 0) goto done;
  if (!tok->gemma && n >= tok->unk_len) drop = tok->unk_len;
  for (size_t i = drop; i < n && rc == 0; i++) {
    const char *p = bytes + off[i];
    size_t plen = off[i + 1] - off[i];
    int32_t id = vlm__strmap_get(tok->hf.encoder, p, plen);
    if (id < 0) id = vlm__spm_piece_to_id(tok->sp, p, plen);
    rc = list_push(l, id, plen == 3 && memcmp(p, "\xe2\x96\x81", 3) == 0,
                   vlm__hf_is_special(&tok->hf, p, plen));
  }
done:
  free(buf);
  free(bytes);
  free(off);
  return rc;
}

int vlm__spm_tokenize(const vlm__spm_tok *tok, const char *text, int max_len,
                      int32_t *ids, int max_ids, int *n_ids) {
  int rc = 0;
  uint32_t *cp = NULL;
  size_t n = 0;
  vlm__hf_chunk *chunks = NULL;
  size_t n_chunks = 0;
  tok_list l = {0};
  if (n_ids) *n_ids = 0;
  if (!tok || !text || !ids || !n_ids || max_len < 1 || max_ids < 1)
    return vlm_seterr(VLM_EINVAL, "tokenize: bad arguments");
  size_t limit = (size_t)(max_len < max_ids ? max_len : max_ids);
  size_t n_special = tok->gemma ? (size_t)(tok->add_bos + tok->add_eos) : 1;
  if (limit <= n_special)
    return vlm_seterr(VLM_EINVAL, "tokenize: %zu ids leave no room for the text", limit);
  size_t len = strlen(text);
  if (len > VLM__TOK_MAX_TEXT)
    return vlm_seterr(VLM_ETOOBIG, "tokenize: text of %zu bytes (at most %zu)", len,
                      VLM__TOK_MAX_TEXT);
  rc = vlm__utf8_decode(text, len, "tokenize", &cp, &n);
  if (rc != 0) return rc;
  if (!tok->gemma) {
    /* SiglipTokenizer.tokenize: "\u2581" + text.replace("\u2581", " ") */
    uint32_t *p = malloc((n + 1) * sizeof *p);
    if (!p) {
      rc = vlm_seterr(VLM_ENOMEM, "tokenize: %zu code points", n);
      goto done;
    }
    p[0] = 0x2581;
    for (size_t i = 0; i < n; i++) p[i + 1] = cp[i] == 0x2581 ? ' ' : cp[i];
    free(cp);
    cp = p;
    n++;
  }
  rc = vlm__hf_split(&tok->hf, cp, n, tok->do_lower_case, &chunks, &n_chunks);
  if (rc != 0) goto done;

  /* Ids in order; with right truncation only the first limit - n_special
   * count, so stop once there are more than that (+1 for the leading-piece
   * rule). */
  size_t want = limit - n_special;
  for (size_t i = 0; i < n_chunks; i++) {
    if (!tok->hf.truncation_left && l.n > want + 1) break;
    if (chunks[i].added_id >= 0) {
      char buf[4 * VLM__TOK_MAX_ADDED + 1];
      size_t blen = 0;
      for (size_t k = 0; k < chunks[i].n; k++) blen += vlm_utf8_put(buf + blen, chunks[i].cp[k]);
      rc = list_push(&l, chunks[i].added_id, blen == 3 && memcmp(buf, "\xe2\x96\x81", 3) == 0,
                     vlm__hf_is_special(&tok->hf, buf, blen));
    } else {
      rc = encode_chunk(tok, &chunks[i], &l);
    }
    if (rc != 0) goto done;
  }
  size_t first = 0, count = l.n;
  if (!tok->gemma && count > 1 && l.lone_underline[0] && l.special[1]) {
    first = 1;
    count--;
  }
  /* truncate_sequences: remove total - limit ids, only when there are
   * more than that many (always so here, as limit > n_special) */
  if (count + n_special > limit) {
    size_t remove = count + n_special - limit;
    if (tok->hf.truncation_left) first += remove;
    count -= remove;
  }
  size_t m = 0;
  if (tok->gemma && tok->add_bos) ids[m++] = tok->bos;
  if (count) memcpy(ids + m, l.id + first, count * sizeof *ids);
  m += count;
  if (tok->gemma) {
    if (tok->add_eos) ids[m++] = tok->eos;
  } else if (!(m > 0 && ids[m - 1] == tok->eos)) {
    ids[m++] = tok->eos;
  }
  *n_ids = (int)m;
done:
  vlm__hf_chunks_free(chunks, n_chunks);
  free(cp);
  free(l.id);
  free(l.lone_underline);
  free(l.special);
  return rc;
}
