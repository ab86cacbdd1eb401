/* hf_tok.c - the parts of Hugging Face's slow tokenizers (transformers
 * v4.44.2, tokenization_utils.py / tokenization_utils_base.py) that
 * SiglipTokenizer, GemmaTokenizer and BertTokenizer share.  See hf_tok.h.
 *
 * Python semantics reproduced here:
 *   str.isspace, str.strip     vlm__py_isspace
 *   str.lower                  utf8proc's simple mapping, U+0130 -> i + U+0307
 *                              (the one unconditional SpecialCasing entry),
 *                              final sigma only for whole strings
 *   re.sub("(specials)|(.+?)") lowercase one character at a time, the
 *                              specials (first listed wins) copied as they
 *                              are, '\n' (which '.' does not match) kept
 *   Trie.split                 a line-by-line port, quirks included
 */
#include "hf_tok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "vlm_error.h"
#include "vlm_file.h"
#include "vlm_utf8.h"

/* ---- UTF-8 ----------------------------------------------------------- */

int vlm__utf8_decode(const char *s, size_t len, const char *what,
                     uint32_t **out, size_t *n) {
  *out = NULL;
  *n = 0;
  uint32_t *cp = malloc((len + 1) * sizeof *cp);
  if (!cp) return vlm_seterr(VLM_ENOMEM, "%s: %zu bytes of text", what, len);
  size_t m = 0;
  for (size_t i = 0; i < len;) {
    size_t k = vlm_utf8_next(s + i, len - i, &cp[m]);
    if (!k) {
      free(cp);
      return vlm_seterr(VLM_EFORMAT, "%s: invalid UTF-8 at byte %zu (0x%02x)", what, i,
                        (unsigned char)s[i]);
    }
    m++;
    i += k;
  }
  *out = cp;
  *n = m;
  return 0;
}

int vlm__utf8_encode(const uint32_t *cp, size_t n, char **out, size_t *len) {
  char *s = malloc(4 * n + 1);
  *out = NULL;
  *len = 0;
  if (!s) return vlm_seterr(VLM_ENOMEM, "tokenizer: %zu code points", n);
  size_t m = 0;
  for (size_t i = 0; i < n; i++) m += vlm_utf8_put(s + m, cp[i]);
  s[m] = 0;
  *out = s;
  *len = m;
  return 0;
}

/* ---- Python str semantics ------------------------------------------- */

/* Python's str.isspace: bidirectional class WS, B or S, or category Zs. */
int vlm__py_isspace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 ||
         c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

size_t vlm__py_lower_char(uint32_t c, uint32_t out[2]) {
  if (c == 0x130) { /* SpecialCasing: I WITH DOT ABOVE -> i + COMBINING DOT */
    out[0] = 0x69;
    out[1] = 0x307;
    return 2;
  }
  out[0] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
  return 1;
}

/* Unicode Cased: Lu, Ll, Lt, or any character with a case mapping. */
static int is_cased(uint32_t c) {
  utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
  if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT)
    return 1;
  return utf8proc_tolower((utf8proc_int32_t)c) != (utf8proc_int32_t)c ||
         utf8proc_toupper((utf8proc_int32_t)c) != (utf8proc_int32_t)c;
}

/* Unicode Case_Ignorable: Mn, Me, Cf, Lm, Sk, and the Word_Break classes
 * MidLetter, MidNumLet and Single_Quote. */
static int is_case_ignorable(uint32_t c) {
  switch (utf8proc_category((utf8proc_int32_t)c)) {
  case UTF8PROC_CATEGORY_MN:
  case UTF8PROC_CATEGORY_ME:
  case UTF8PROC_CATEGORY_CF:
  case UTF8PROC_CATEGORY_LM:
  case UTF8PROC_CATEGORY_SK:
    return 1;
  default:
    break;
  }
  switch (c) {
  case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F:
  case 0x5F4: case 0x2018: case 0x2019: case 0x2024: case 0x2027:
  case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07: case 0xFF0E: case 0xFF1A:
    return 1;
  default:
    return 0;
  }
}

size_t vlm__py_lower(const uint32_t *in, size_t n, uint32_t *out) {
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t c = in[i];
    if (c == 0x3A3) { /* Final_Sigma, as CPython's handle_capital_sigma */
      size_t j = i;
      int final_sigma = 0;
      while (j > 0) {
        uint32_t prev = in[--j];
        if (!is_case_ignorable(prev)) {
          final_sigma = is_cased(prev);
          break;
        }
      }
      if (final_sigma) {
        for (j = i + 1; j < n && is_case_ignorable(in[j]); j++) {}
        final_sigma = j == n || !is_cased(in[j]);
      }
      out[m++] = final_sigma ? 0x3C2 : 0x3C3;
    } else {
      m += vlm__py_lower_char(c, out + m);
    }
  }
  return m;
}

/* ---- string -> id map ----------------------------------------------- */

typedef struct {
  char *key; /* NULL = empty slot */
  size_t len;
  int32_t id;
} strmap_slot;

struct vlm__strmap {
  strmap_slot *slots;
  size_t cap, count;
};

static uint64_t hash_bytes(const char *s, size_t len) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h ^ (h >> 29);
}

int vlm__strmap_new(size_t expected, vlm__strmap **out) {
  vlm__strmap *m = calloc(1, sizeof *m);
  size_t cap = 64;
  while (cap < expected * 2) cap <<= 1;
  if (m) m->slots = calloc(cap, sizeof *m->slots);
  if (!m || !m->slots) {
    free(m);
    *out = NULL;
    return vlm_seterr(VLM_ENOMEM, "tokenizer: string map");
  }
  m->cap = cap;
  *out = m;
  return 0;
}

void vlm__strmap_free(vlm__strmap *m) {
  if (!m) return;
  for (size_t i = 0; i < m->cap; i++) free(m->slots[i].key);
  free(m->slots);
  free(m);
}

static strmap_slot *strmap_find(const vlm__strmap *m, const char *key, size_t len) {
  size_t i = hash_bytes(key, len) & (m->cap - 1);
  for (;;) {
    strmap_slot *s = &m->slots[i];
    if (!s->key || (s->len == len && memcmp(s->key, key, len) == 0)) return s;
    i = (i + 1) & (m->cap - 1);
  }
}

int vlm__strmap_put(vlm__strmap *m, const char *key, size_t len, int32_t id) {
  if ((m->count + 1) * 2 > m->cap) {
    strmap_slot *bigger = calloc(m->cap * 2, sizeof *bigger);
    if (!bigger) return vlm_seterr(VLM_ENOMEM, "tokenizer: string map");
    strmap_slot *old = m->slots;
    size_t old_cap = m->cap;
    m->slots = bigger;
    m->cap *= 2;
    for (size_t i = 0; i < old_cap; i++)
      if (old[i].key) *strmap_find(m, old[i].key, old[i].len) = old[i];
    free(old);
  }
  strmap_slot *s = strmap_find(m, key, len);
  if (!s->key) {
    s->key = malloc(len + 1);
    if (!s->key) return vlm_seterr(VLM_ENOMEM, "tokenizer: string map");
    memcpy(s->key, key, len);
    s->key[len] = 0;
    s->len = len;
    m->count++;
  }
  s->id = id;
  return 0;
}

int32_t vlm__strmap_get(const vlm__strmap *m, const char *key, size_t len) {
  const strmap_slot *s = strmap_find(m, key, len);
  return s->key ? s->id : -1;
}

size_t vlm__strmap_count(const vlm__strmap *m) { return m->count; }

/* ---- files ------------------------------------------------------------ */

char *vlm__hf_path(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *p = malloc(a + b + 2);
  if (!p) return NULL;
  memcpy(p, dir, a);
  p[a] = '/';
  memcpy(p + a + 1, name, b + 1);
  return p;
}

json_t *vlm__hf_load_json(const char *dir, const char *name, int *rc) {
  *rc = 0;
  char *path = vlm__hf_path(dir, name);
  if (!path) {
    *rc = vlm_seterr(VLM_ENOMEM, "%s/%s", dir, name);
    return NULL;
  }
  uint8_t *data = NULL;
  size_t len = 0;
  json_t *root = NULL;
  /* tokenizer.json of a 256k vocabulary is about 34 MB */
  int r = vlm_read_file(path, (size_t)128 << 20, &data, &len);
  if (r == VLM_ENOTFOUND) {
    vlm_clearerr();
    goto done;
  }
  if (r != 0) {
    *rc = r;
    goto done;
  }
  json_error_t jerr;
  root = json_loadb((const char *)data, len, 0, &jerr);
  if (!root) {
    *rc = vlm_seterr(VLM_EFORMAT, "%s:%d: %s", path, jerr.line, jerr.text);
  } else if (!json_is_object(root)) {
    json_decref(root);
    root = NULL;
    *rc = vlm_seterr(VLM_EFORMAT, "%s: not a JSON object", path);
  }
done:
  free(data);
  free(path);
  return root;
}

/* ---- added tokens ----------------------------------------------------- */

typedef struct vlm__hf_trie_node {
  uint32_t cp;
  int32_t child, sibling; /* -1: none */
  int term;
} trie_node;

static void token_clear(vlm__hf_token *k) {
  free(k->content);
  free(k->cp);
  memset(k, 0, sizeof *k);
}

/* Fill k's content from a UTF-8 string (flags untouched). */
static int token_set_content(vlm__hf_token *k, const char *s, size_t len, const char *what) {
  free(k->content);
  free(k->cp);
  k->content = NULL;
  k->cp = NULL;
  int rc = vlm__utf8_decode(s, len, what, &k->cp, &k->ncp);
  if (rc != 0) return rc;
  if (k->ncp > VLM__TOK_MAX_ADDED)
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: token of %zu characters (at most %d)", what,
                      k->ncp, VLM__TOK_MAX_ADDED);
  k->content = malloc(len + 1);
  if (!k->content) return vlm_seterr(VLM_ENOMEM, "%s", what);
  memcpy(k->content, s, len);
  k->content[len] = 0;
  k->len = len;
  return 0;
}

static int token_copy(vlm__hf_token *dst, const vlm__hf_token *src, const char *what) {
  vlm__hf_token t = *src;
  t.content = NULL;
  t.cp = NULL;
  int rc = token_set_content(&t, src->content, src->len, what);
  if (rc != 0) {
    token_clear(&t);
    return rc;
  }
  *dst = t;
  return 0;
}

static int json_flag(json_t *o, const char *key, int dflt) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) return dflt;
  return json_is_true(v);
}

/* AddedToken(**dict): content, single_word / lstrip / rstrip False,
 * special False, normalized `not special`; force_special as the callers
 * that set value["special"] = True first. */
static int token_from_json(json_t *o, int force_special, vlm__hf_token *k, const char *what) {
  memset(k, 0, sizeof *k);
  json_t *c = json_object_get(o, "content");
  if (!json_is_string(c))
    return vlm_seterr(VLM_EFORMAT, "%s: added token without a \"content\" string", what);
  int rc = token_set_content(k, json_string_value(c), json_string_length(c), what);
  if (rc != 0) {
    token_clear(k);
    return rc;
  }
  k->special = force_special ? 1 : (unsigned char)json_flag(o, "special", 0);
  k->single_word = (unsigned char)json_flag(o, "single_word", 0);
  k->lstrip = (unsigned char)json_flag(o, "lstrip", 0);
  k->rstrip = (unsigned char)json_flag(o, "rstrip", 0);
  k->normalized = (unsigned char)json_flag(o, "normalized", !k->special);
  return 0;
}

static vlm__hf_token *decoder_find(const vlm__hf_tokens *t, int32_t id) {
  if (!t->decoder_index) return NULL;
  int32_t i = vlm__strmap_get(t->decoder_index, (const char *)&id, sizeof id);
  return i >= 0 ? &t->decoder[i] : NULL;
}

const vlm__hf_token *vlm__hf_added(const vlm__hf_tokens *t, int32_t id) {
  return decoder_find(t, id);
}

/* decoder[id] = k (k's strings taken over; a Python dict keeps the
 * position of an existing key). */
static int decoder_set(vlm__hf_tokens *t, int32_t id, vlm__hf_token *k) {
  vlm__hf_token *old = decoder_find(t, id);
  k->id = id;
  if (old) {
    token_clear(old);
    *old = *k;
    return 0;
  }
  if (t->n_decoder == t->cap_decoder) {
    size_t cap = t->cap_decoder ? t->cap_decoder * 2 : 16;
    vlm__hf_token *d = realloc(t->decoder, cap * sizeof *d);
    if (!d) return vlm_seterr(VLM_ENOMEM, "tokenizer: added tokens");
    t->decoder = d;
    t->cap_decoder = cap;
  }
  if (!t->decoder_index && vlm__strmap_new(64, &t->decoder_index) != 0) return VLM_ENOMEM;
  int rc = vlm__strmap_put(t->decoder_index, (const char *)&id, sizeof id, (int32_t)t->n_decoder);
  if (rc != 0) return rc;
  t->decoder[t->n_decoder++] = *k;
  return 0;
}

/* Parse an added_tokens_decoder object {"id": {...}, ...}. */
static int parse_decoder(vlm__hf_tokens *t, json_t *obj, const char *what) {
  const char *key;
  json_t *val;
  json_object_foreach(obj, key, val) {
    char *end;
    long id = strtol(key, &end, 10);
    if (*key == 0 || *end != 0 || id < 0 || id > INT32_MAX - 1)
      return vlm_seterr(VLM_EFORMAT, "%s: added_tokens_decoder key \"%s\" is not an id", what, key);
    if (!json_is_object(val))
      return vlm_seterr(VLM_EFORMAT, "%s: added_tokens_decoder[%s] is not an object", what, key);
    vlm__hf_token k;
    int rc = token_from_json(val, 0, &k, what);
    if (rc == 0) rc = decoder_set(t, (int32_t)id, &k);
    if (rc != 0) {
      token_clear(&k);
      return rc;
    }
  }
  return 0;
}

/* tokenizer.json: the "added_tokens" list of {"id", "content", flags}. */
static int parse_tokenizer_json_added(vlm__hf_tokens *t, json_t *root, const char *what) {
  json_t *list = json_object_get(root, "added_tokens");
  if (!list) return 0;
  if (!json_is_array(list)) return vlm_seterr(VLM_EFORMAT, "%s: added_tokens is not a list", what);
  size_t i;
  json_t *val;
  json_array_foreach(list, i, val) {
    json_t *id = json_is_object(val) ? json_object_get(val, "id") : NULL;
    if (!json_is_integer(id) || json_integer_value(id) < 0 ||
        json_integer_value(id) > INT32_MAX - 1)
      return vlm_seterr(VLM_EFORMAT, "%s: added_tokens[%zu] has no valid id", what, i);
    vlm__hf_token k;
    int rc = token_from_json(val, 0, &k, what);
    if (rc == 0) rc = decoder_set(t, (int32_t)json_integer_value(id), &k);
    if (rc != 0) {
      token_clear(&k);
      return rc;
    }
  }
  return 0;
}

static const char *const special_keys[VLM__HF_NSPECIAL] = {
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"};

/* One special-token value of a config: string, AddedToken dict, null. */
static int special_from_json(json_t *v, int force_special, vlm__hf_special *s, const char *what) {
  token_clear(&s->tok);
  s->set = 0;
  s->is_added = 0;
  if (!v || json_is_null(v)) return 0;
  if (json_is_string(v)) {
    int rc = token_set_content(&s->tok, json_string_value(v), json_string_length(v), what);
    if (rc != 0) return rc;
    s->set = 1;
    return 0;
  }
  if (json_is_object(v)) {
    int rc = token_from_json(v, force_special, &s->tok, what);
    if (rc != 0) return rc;
    s->set = s->is_added = 1;
    return 0;
  }
  return vlm_seterr(VLM_EFORMAT, "%s: a special token is neither a string nor an object", what);
}

/* Append a string to additional_special_tokens unless present. */
static int additional_add(vlm__hf_special **extra, size_t *n_extra, const vlm__hf_special *s,
                          const char *what) {
  for (size_t i = 0; i < *n_extra; i++)
    if (strcmp((*extra)[i].tok.content, s->tok.content) == 0) return 0;
  vlm__hf_special *e = realloc(*extra, (*n_extra + 1) * sizeof *e);
  if (!e) return vlm_seterr(VLM_ENOMEM, "%s", what);
  *extra = e;
  memset(&e[*n_extra], 0, sizeof e[*n_extra]);
  e[*n_extra].set = 1;
  e[*n_extra].is_added = s->is_added;
  int rc = token_copy(&e[*n_extra].tok, &s->tok, what);
  if (rc != 0) return rc;
  (*n_extra)++;
  return 0;
}

static int parse_additional(json_t *list, int force_special,
                            vlm__hf_special **extra, size_t *n_extra, const char *what) {
  if (!list || json_is_null(list)) return 0;
  if (!json_is_array(list))
    return vlm_seterr(VLM_EFORMAT, "%s: additional_special_tokens is not a list", what);
  size_t i;
  json_t *v;
  json_array_foreach(list, i, v) {
    vlm__hf_special s = {0};
    int rc = special_from_json(v, force_special, &s, what);
    if (rc == 0 && s.set) rc = additional_add(extra, n_extra, &s, what);
    token_clear(&s.tok);
    if (rc != 0) return rc;
  }
  return 0;
}

/* ---- the Trie ---------------------------------------------------------- */

static int trie_add(vlm__hf_tokens *t, const uint32_t *cp, size_t n) {
  if (n == 0) return 0;
  if (t->n_trie == 0) {
    t->trie = malloc(16 * sizeof *t->trie);
    if (!t->trie) return vlm_seterr(VLM_ENOMEM, "tokenizer: trie");
    t->cap_trie = 16;
    t->trie[0] = (trie_node){0, -1, -1, 0};
    t->n_trie = 1;
  }
  int32_t node = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t c = t->trie[node].child;
    while (c >= 0 && t->trie[c].cp != cp[i]) c = t->trie[c].sibling;
    if (c < 0) {
      if (t->n_trie == t->cap_trie) {
        trie_node *g = realloc(t->trie, 2 * t->cap_trie * sizeof *g);
        if (!g) return vlm_seterr(VLM_ENOMEM, "tokenizer: trie");
        t->trie = g;
        t->cap_trie *= 2;
      }
      c = (int32_t)t->n_trie++;
      t->trie[c] = (trie_node){cp[i], -1, t->trie[node].child, 0};
      t->trie[node].child = c;
    }
    node = c;
  }
  t->trie[node].term = 1;
  return 0;
}

static int32_t trie_child(const vlm__hf_tokens *t, int32_t node, uint32_t cp) {
  int32_t c = t->trie[node].child;
  while (c >= 0 && t->trie[c].cp != cp) c = t->trie[c].sibling;
  return c;
}

/* ---- loading ------------------------------------------------------------ */

static int all_special_add(vlm__hf_tokens *t, const char *s) {
  if (!s || !*s) return 0; /* special_tokens_map_extended skips empty values */
  for (size_t i = 0; i < t->n_all_special; i++)
    if (strcmp(t->all_special[i], s) == 0) return 0;
  t->all_special[t->n_all_special++] = s;
  return 0;
}

/* _add_tokens(all special tokens not yet in the encoder, special=True). */
static int add_special_tokens(vlm__hf_tokens *t, const vlm__hf_class *cls,
                              vlm__hf_special *spec, vlm__hf_special *extra,
                              size_t n_extra, const char *what) {
  int rc = 0;
  /* all_special_tokens_extended: attribute order, then additional ones,
   * deduplicated by string */
  size_t n = 0;
  vlm__hf_special **order = malloc((VLM__HF_NSPECIAL + n_extra + 1) * sizeof *order);
  if (!order) return vlm_seterr(VLM_ENOMEM, "%s", what);
  for (int k = 0; k < VLM__HF_NSPECIAL + (int)n_extra; k++) {
    vlm__hf_special *s = k < VLM__HF_NSPECIAL ? &spec[k] : &extra[k - VLM__HF_NSPECIAL];
    if (!s->set || (!s->is_added && s->tok.len == 0)) continue;
    int seen = 0;
    for (size_t j = 0; j < n && !seen; j++) seen = strcmp(order[j]->tok.content, s->tok.content) == 0;
    if (!seen) order[n++] = s;
  }
  size_t base_len = 0;
  int have_base = 0;
  int32_t added = 0;
  for (size_t j = 0; j < n; j++) {
    vlm__hf_special *s = order[j];
    if (s->tok.len == 0) continue;
    vlm__hf_token k;
    if (!s->is_added) {
      if (vlm__strmap_get(t->encoder, s->tok.content, s->tok.len) >= 0) continue;
      rc = token_copy(&k, &s->tok, what);
      if (rc != 0) goto done;
      k.lstrip = k.rstrip = k.single_word = k.normalized = 0;
      k.special = 1;
    } else {
      rc = token_copy(&k, &s->tok, what);
      if (rc != 0) goto done;
      k.special = 1;
    }
    int32_t id = vlm__strmap_get(t->encoder, k.content, k.len);
    if (id < 0) id = cls->lookup(cls->ctx, t, k.content, k.len);
    if (id < 0) {
      if (!have_base) { /* new_idx = len(current_vocab), once */
        base_len = cls->vocab_len(cls->ctx, t);
        have_base = 1;
      }
      id = (int32_t)(base_len + (size_t)added++);
    }
    rc = vlm__strmap_put(t->encoder, k.content, k.len, id);
    if (rc == 0) rc = decoder_set(t, id, &k);
    if (rc != 0) {
      token_clear(&k);
      goto done;
    }
  }
done:
  free(order);
  return rc;
}

int vlm__hf_tokens_init(vlm__hf_tokens *t, const char *dir, json_t *cfg,
                        const vlm__hf_class *cls) {
  int rc = 0;
  memset(t, 0, sizeof *t);
  vlm__hf_special spec[VLM__HF_NSPECIAL];
  memset(spec, 0, sizeof spec);
  vlm__hf_special *extra = NULL;
  size_t n_extra = 0;
  json_t *stm = NULL, *atj = NULL, *tkj = NULL;
  char *cfg_path = vlm__hf_path(dir, "tokenizer_config.json");
  char *stm_path = vlm__hf_path(dir, "special_tokens_map.json");
  char *atj_path = vlm__hf_path(dir, "added_tokens.json");
  char *tkj_path = vlm__hf_path(dir, "tokenizer.json");
  if (!cfg_path || !stm_path || !atj_path || !tkj_path) {
    rc = vlm_seterr(VLM_ENOMEM, "%s: tokenizer", dir);
    goto done;
  }
  rc = vlm__strmap_new(64, &t->encoder);
  if (rc != 0) goto done;

  /* the class __init__'s defaults, then the config's values (an explicit
   * null unsets) */
  for (int k = 0; k < VLM__HF_NSPECIAL; k++) {
    json_t *v = cfg ? json_object_get(cfg, special_keys[k]) : NULL;
    if (v) { /* a string, or an AddedToken dict (with "__type" or not) */
      rc = special_from_json(v, 0, &spec[k], cfg_path);
    } else if (cls->defaults[k]) {
      rc = token_set_content(&spec[k].tok, cls->defaults[k], strlen(cls->defaults[k]), cfg_path);
      spec[k].set = rc == 0;
    }
    if (rc != 0) goto done;
  }
  if (cfg) {
    rc = parse_additional(json_object_get(cfg, "additional_special_tokens"), 0, &extra,
                          &n_extra, cfg_path);
    if (rc != 0) goto done;
    t->split_special_tokens = json_is_true(json_object_get(cfg, "split_special_tokens"));
    json_t *side = json_object_get(cfg, "truncation_side");
    if (side && !json_is_null(side)) {
      if (json_is_string(side) && strcmp(json_string_value(side), "left") == 0)
        t->truncation_left = 1;
      else if (!json_is_string(side) || strcmp(json_string_value(side), "right") != 0) {
        rc = vlm_seterr(VLM_EFORMAT, "%s: truncation_side is neither \"right\" nor \"left\"",
                        cfg_path);
        goto done;
      }
    }
  }

  /* the added tokens: added_tokens_decoder when the config has it, else
   * special_tokens_map.json, added_tokens.json, tokenizer.json */
  json_t *dec = cfg ? json_object_get(cfg, "added_tokens_decoder") : NULL;
  vlm__strmap *added_map = NULL; /* content -> decoder id, for the specials */
  if (dec && !json_is_null(dec)) {
    if (!json_is_object(dec)) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: added_tokens_decoder is not an object", cfg_path);
      goto done;
    }
    rc = parse_decoder(t, dec, cfg_path);
    if (rc != 0) goto done;
  } else {
    stm = vlm__hf_load_json(dir, "special_tokens_map.json", &rc);
    if (rc != 0) goto done;
    if (stm) {
      for (int k = 0; k < VLM__HF_NSPECIAL; k++) {
        json_t *v = json_object_get(stm, special_keys[k]);
        if (!v) continue;
        rc = special_from_json(v, 1, &spec[k], stm_path);
        if (rc != 0) goto done;
      }
      json_t *list = json_object_get(stm, "additional_special_tokens");
      if (json_is_array(list)) {
        rc = parse_additional(list, 1, &extra, &n_extra, stm_path);
        if (rc != 0) goto done;
      }
    }
    atj = vlm__hf_load_json(dir, "added_tokens.json", &rc);
    if (rc != 0) goto done;
    if (atj) {
      const char *key;
      json_t *val;
      json_object_foreach(atj, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) > INT32_MAX - 1) {
          rc = vlm_seterr(VLM_EFORMAT, "%s: \"%s\" has no valid id", atj_path, key);
          goto done;
        }
        int special = 0;
        for (int k = 0; k < VLM__HF_NSPECIAL; k++)
          if (spec[k].set && strcmp(spec[k].tok.content, key) == 0) special = 1;
        for (size_t k = 0; k < n_extra; k++)
          if (strcmp(extra[k].tok.content, key) == 0) special = 1;
        vlm__hf_token k = {0};
        rc = token_set_content(&k, key, strlen(key), atj_path);
        k.special = (unsigned char)special;
        k.normalized = (unsigned char)!special;
        if (rc == 0) rc = decoder_set(t, (int32_t)json_integer_value(val), &k);
        if (rc != 0) {
          token_clear(&k);
          goto done;
        }
      }
    }
    tkj = vlm__hf_load_json(dir, "tokenizer.json", &rc);
    if (rc != 0) goto done;
    if (tkj) {
      rc = parse_tokenizer_json_added(t, tkj, tkj_path);
      if (rc != 0) goto done;
    }
  }
  rc = vlm__strmap_new(t->n_decoder + 1, &added_map);
  if (rc != 0) goto done;
  for (size_t i = 0; i < t->n_decoder && rc == 0; i++)
    rc = vlm__strmap_put(added_map, t->decoder[i].content, t->decoder[i].len, (int32_t)i);
  /* special tokens named by an added token take its flags */
  for (int k = 0; k < VLM__HF_NSPECIAL && rc == 0; k++) {
    if (!spec[k].set || t->n_decoder == 0) continue;
    int32_t i = vlm__strmap_get(added_map, spec[k].tok.content, spec[k].tok.len);
    if (i < 0) continue;
    token_clear(&spec[k].tok);
    rc = token_copy(&spec[k].tok, &t->decoder[i], cfg_path);
    spec[k].is_added = 1;
  }
  vlm__strmap_free(added_map);
  if (rc != 0) goto done;
  /* the class wraps the remaining strings */
  for (int k = 0; k < VLM__HF_NSPECIAL; k++)
      if (spec[k].set && !spec[k].is_added && (cls->wrap_mask & (1u << k))) {
        spec[k].is_added = 1;
        spec[k].tok.lstrip = (unsigned char)cls->wrap_lstrip;
        spec[k].tok.rstrip = (unsigned char)cls->wrap_rstrip;
        spec[k].tok.normalized = 0;
        spec[k].tok.special = 1;
      }

  /* PreTrainedTokenizer.__init__: the encoder from the decoder, then the
   * special tokens added */
  for (size_t i = 0; i < t->n_decoder && rc == 0; i++)
    rc = vlm__strmap_put(t->encoder, t->decoder[i].content, t->decoder[i].len, t->decoder[i].id);
  if (rc == 0) rc = add_special_tokens(t, cls, spec, extra, n_extra, cfg_path);
  if (rc != 0) goto done;

  /* the special strings */
  for (int k = 0; k < VLM__HF_NSPECIAL; k++) {
    if (!spec[k].set) continue;
    t->special[k] = spec[k].tok.content;
    spec[k].tok.content = NULL;
  }
  if (n_extra) {
    t->additional = calloc(n_extra, sizeof *t->additional);
    if (!t->additional) {
      rc = vlm_seterr(VLM_ENOMEM, "%s", cfg_path);
      goto done;
    }
    for (size_t k = 0; k < n_extra; k++) {
      t->additional[k] = extra[k].tok.content;
      extra[k].tok.content = NULL;
    }
    t->n_additional = n_extra;
  }
  t->all_special = malloc((VLM__HF_NSPECIAL + n_extra + 1) * sizeof *t->all_special);
  if (!t->all_special) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", cfg_path);
    goto done;
  }
  for (int k = 0; k < VLM__HF_NSPECIAL; k++) all_special_add(t, t->special[k]);
  for (size_t k = 0; k < n_extra; k++) all_special_add(t, t->additional[k]);

  /* the patterns kept out of lowercasing */
  size_t np = t->n_all_special + t->n_decoder;
  t->protect = calloc(np + 1, sizeof *t->protect);
  t->protect_len = calloc(np + 1, sizeof *t->protect_len);
  if (!t->protect || !t->protect_len) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", cfg_path);
    goto done;
  }
  for (size_t k = 0; k < t->n_all_special + t->n_decoder; k++) {
    const char *s;
    if (k < t->n_all_special) {
      s = t->all_special[k];
    } else {
      const vlm__hf_token *d = &t->decoder[k - t->n_all_special];
      if (d->special || !d->normalized) continue;
      s = d->content;
    }
    rc = vlm__utf8_decode(s, strlen(s), cfg_path, &t->protect[t->n_protect],
                          &t->protect_len[t->n_protect]);
    if (rc != 0) goto done;
    if (t->protect_len[t->n_protect] == 0) {
      free(t->protect[t->n_protect]);
      t->protect[t->n_protect] = NULL;
      continue;
    }
    t->n_protect++;
  }

  /* the Trie of the added tokens */
  for (size_t i = 0; i < t->n_decoder && rc == 0; i++)
    rc = trie_add(t, t->decoder[i].cp, t->decoder[i].ncp);

done:
  for (int k = 0; k < VLM__HF_NSPECIAL; k++) token_clear(&spec[k].tok);
  for (size_t k = 0; k < n_extra; k++) token_clear(&extra[k].tok);
  free(extra);
  json_decref(stm);
  json_decref(atj);
  json_decref(tkj);
  free(cfg_path);
  free(stm_path);
  free(atj_path);
  free(tkj_path);
  if (rc != 0) vlm__hf_tokens_free(t);
  return rc;
}

void vlm__hf_tokens_free(vlm__hf_tokens *t) {
  if (!t) return;
  for (size_t i = 0; i < t->n_decoder; i++) token_clear(&t->decoder[i]);
  free(t->decoder);
  vlm__strmap_free(t->decoder_index);
  vlm__strmap_free(t->encoder);
  for (int k = 0; k < VLM__HF_NSPECIAL; k++) free(t->special[k]);
  for (size_t k = 0; k < t->n_additional; k++) free(t->additional[k]);
  free(t->additional);
  free(t->all_special);
  for (size_t k = 0; k < t->n_protect; k++) free(t->protect[k]);
  free(t->protect);
  free(t->protect_len);
  free(t->trie);
  memset(t, 0, sizeof *t);
}

int32_t vlm__hf_special_id(const vlm__hf_tokens *t, const vlm__hf_class *cls, int which) {
  const char *s = t->special[which];
  if (!s) return -1;
  int32_t id = vlm__strmap_get(t->encoder, s, strlen(s));
  if (id < 0) id = cls->lookup(cls->ctx, t, s, strlen(s));
  return id;
}

int vlm__hf_is_special(const vlm__hf_tokens *t, const char *s, size_t len) {
  for (size_t i = 0; i < t->n_all_special; i++)
    if (strlen(t->all_special[i]) == len && memcmp(t->all_special[i], s, len) == 0) return 1;
  return 0;
}

/* ---- tokenize: lowercase, split, strip --------------------------------- */

/* re.sub(r"(p1|p2|...)|(.+?)", lambda m: m[1] or m[2].lower(), text) */
static size_t lower_outside(const vlm__hf_tokens *t, const uint32_t *in, size_t n, uint32_t *out) {
  size_t m = 0;
  for (size_t i = 0; i < n;) {
    size_t k;
    for (k = 0; k < t->n_protect; k++) {
      size_t L = t->protect_len[k];
      if (L <= n - i && memcmp(in + i, t->protect[k], L * sizeof *in) == 0) break;
    }
    if (k < t->n_protect) {
      memcpy(out + m, in + i, t->protect_len[k] * sizeof *in);
      m += t->protect_len[k];
      i += t->protect_len[k];
    } else if (in[i] == '\n') {
      out[m++] = in[i++];
    } else {
      m += vlm__py_lower_char(in[i++], out + m);
    }
  }
  return m;
}

typedef struct {
  size_t *v;
  size_t n, cap;
} size_vec;

static int size_push(size_vec *a, size_t x) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 16;
    size_t *v = realloc(a->v, cap * sizeof *v);
    if (!v) return vlm_seterr(VLM_ENOMEM, "tokenizer: split");
    a->v = v;
    a->cap = cap;
  }
  a->v[a->n++] = x;
  return 0;
}

#define REMOVED ((size_t)1 << (sizeof(size_t) * 8 - 1))

/* Trie.split: the offsets at which text is cut, a port of the reference
 * (the earliest state that can finish a match wins, with its longest
 * match; `skip` jumps past it). */
static int trie_offsets(const vlm__hf_tokens *t, const uint32_t *text, size_t n, size_vec *offsets) {
  int rc = 0;
  size_vec st_start = {0}, st_node = {0};
  size_t skip = 0;
  if ((rc = size_push(offsets, 0)) != 0) return rc;
  for (size_t current = 0; current < n; current++) {
    if (skip && current < skip) continue;
    uint32_t c = text[current];
    int reset = 0;
    size_t keep = 0; /* states kept (those not removed), compacted in place */
    for (size_t si = 0; si < st_start.n; si++) {
      size_t start = st_start.v[si];
      int32_t node = (int32_t)st_node.v[si];
      if (t->trie[node].term) {
        size_t end = 0;
        for (size_t li = 0; li < st_start.n; li++) {
          size_t lookstart = st_start.v[li];
          int32_t lnode = (int32_t)(st_node.v[li] & ~REMOVED);
          size_t la;
          if (lookstart > start) break;
          if (lookstart < start) {
            la = current + 1;
            end = current + 1;
          } else {
            la = current;
            end = current;
          }
          int has_next = la < n;
          uint32_t next = has_next ? text[la] : 0;
          if (t->trie[lnode].term) {
            start = lookstart;
            end = la;
            skip = la;
          }
          for (;;) {
            int32_t child = has_next ? trie_child(t, lnode, next) : -1;
            if (child < 0) break;
            lnode = child;
            la++;
            if (t->trie[lnode].term) {
              start = lookstart;
              end = la;
              skip = la;
            }
            if (la == n) break;
            next = text[la];
          }
        }
        if ((rc = size_push(offsets, start)) != 0 || (rc = size_push(offsets, end)) != 0)
          goto done;
        reset = 1;
        break;
      }
      int32_t child = trie_child(t, node, c);
      if (child >= 0) {
        st_node.v[si] = (size_t)child;
        st_start.v[keep] = st_start.v[si];
        st_node.v[keep] = st_node.v[si];
        keep++;
      } else {
        /* to_remove: kept in place until the loop ends (a later lookahead
         * in this same step still sees it, with its old node) */
        st_start.v[keep] = st_start.v[si];
        st_node.v[keep] = st_node.v[si] | REMOVED;
        keep++;
      }
    }
    if (reset) {
      st_start.n = st_node.n = 0;
    } else {
      size_t w = 0;
      for (size_t si = 0; si < keep; si++) {
        if (st_node.v[si] & REMOVED) continue;
        st_start.v[w] = st_start.v[si];
        st_node.v[w] = st_node.v[si];
        w++;
      }
      st_start.n = st_node.n = w;
    }
    if (current >= skip) {
      int32_t child = trie_child(t, 0, c);
      if (child >= 0) {
        if ((rc = size_push(&st_start, current)) != 0 || (rc = size_push(&st_node, (size_t)child)) != 0)
          goto done;
      }
    }
  }
  for (size_t si = 0; si < st_start.n; si++) {
    if (t->trie[st_node.v[si]].term) {
      if ((rc = size_push(offsets, st_start.v[si])) != 0 || (rc = size_push(offsets, n)) != 0)
        goto done;
      break;
    }
  }
  rc = size_push(offsets, n);
done:
  free(st_start.v);
  free(st_node.v);
  return rc;
}

void vlm__hf_chunks_free(vlm__hf_chunk *chunks, size_t n) {
  if (!chunks) return;
  for (size_t i = 0; i < n; i++) free(chunks[i].cp);
  free(chunks);
}

static int chunk_set(vlm__hf_chunk *c, const uint32_t *p, size_t n) {
  c->cp = malloc((n + 1) * sizeof *p);
  if (!c->cp) return vlm_seterr(VLM_ENOMEM, "tokenizer: split");
  if (n) memcpy(c->cp, p, n * sizeof *p);
  c->n = n;
  return 0;
}

static int32_t chunk_added_id(const vlm__hf_tokens *t, const vlm__hf_chunk *c) {
  if (c->n == 0 || c->n > VLM__TOK_MAX_ADDED) return -1;
  char buf[4 * VLM__TOK_MAX_ADDED + 1];
  size_t len = 0;
  for (size_t i = 0; i < c->n; i++) len += vlm_utf8_put(buf + len, c->cp[i]);
  return vlm__strmap_get(t->encoder, buf, len);
}

int vlm__hf_split(const vlm__hf_tokens *t, const uint32_t *text, size_t n,
                  int do_lower_case, vlm__hf_chunk **chunks_out, size_t *n_out) {
  int rc = 0;
  *chunks_out = NULL;
  *n_out = 0;
  uint32_t *low = NULL;
  size_vec off = {0};
  vlm__hf_chunk *ch = NULL;
  size_t nch = 0;
  if (do_lower_case) {
    low = malloc((2 * n + 1) * sizeof *low);
    if (!low) return vlm_seterr(VLM_ENOMEM, "tokenizer: %zu code points", n);
    n = lower_outside(t, text, n, low);
    text = low;
  }
  if (t->split_special_tokens || t->n_trie == 0) {
    rc = size_push(&off, 0);
    if (rc == 0) rc = size_push(&off, n);
  } else {
    rc = trie_offsets(t, text, n, &off);
  }
  if (rc != 0) goto done;
  /* cut_text */
  ch = calloc(off.n + 1, sizeof *ch);
  if (!ch) {
    rc = vlm_seterr(VLM_ENOMEM, "tokenizer: split");
    goto done;
  }
  size_t start = 0;
  for (size_t i = 0; i < off.n; i++) {
    size_t end = off.v[i];
    if (start >= end) continue; /* start > end: the reference logs and skips */
    rc = chunk_set(&ch[nch], text + start, end - start);
    if (rc != 0) goto done;
    nch++;
    start = end;
  }
  if (!t->split_special_tokens)
    for (size_t i = 0; i < nch; i++) ch[i].added_id = chunk_added_id(t, &ch[i]);
  else
    for (size_t i = 0; i < nch; i++) ch[i].added_id = -1;
  /* lstrip / rstrip / single_word of the added tokens */
  for (size_t i = 0; i < nch && !t->split_special_tokens; i++) {
    ch[i].added_id = chunk_added_id(t, &ch[i]); /* its text now */
    if (ch[i].added_id < 0) continue;
    const vlm__hf_token *k = decoder_find(t, ch[i].added_id);
    if (!k) continue;
    vlm__hf_chunk *left = i > 0 ? &ch[i - 1] : NULL, *right = i + 1 < nch ? &ch[i + 1] : NULL;
    /* the reference tests single_word on left / right as they were before
     * its own stripping (it keeps the old strings), and merges into the
     * stripped ones */
    int has_left = left && left->n, has_right = right && right->n;
    uint32_t left_last = has_left ? left->cp[left->n - 1] : 0;
    uint32_t right_first = has_right ? right->cp[0] : 0;
    if (k->rstrip && has_right) {
      size_t a = 0;
      while (a < right->n && vlm__py_isspace(right->cp[a])) a++;
      memmove(right->cp, right->cp + a, (right->n - a) * sizeof *right->cp);
      right->n -= a;
    }
    if (k->lstrip && has_left) {
      while (left->n && vlm__py_isspace(left->cp[left->n - 1])) left->n--;
    }
    if (k->single_word && has_left && left_last != ' ') {
      uint32_t *g = realloc(left->cp, (left->n + ch[i].n + 1) * sizeof *g);
      if (!g) {
        rc = vlm_seterr(VLM_ENOMEM, "tokenizer: split");
        goto done;
      }
      memcpy(g + left->n, ch[i].cp, ch[i].n * sizeof *g);
      left->cp = g;
      left->n += ch[i].n;
      ch[i].n = 0;
    } else if (k->single_word && has_right && right_first != ' ') {
      uint32_t *g = malloc((right->n + ch[i].n + 1) * sizeof *g);
      if (!g) {
        rc = vlm_seterr(VLM_ENOMEM, "tokenizer: split");
        goto done;
      }
      memcpy(g, ch[i].cp, ch[i].n * sizeof *g);
      memcpy(g + ch[i].n, right->cp, right->n * sizeof *g);
      free(right->cp);
      right->cp = g;
      right->n += ch[i].n;
      ch[i].n = 0;
    }
  }
  /* a chunk is an added token when its final text is one (the reference
   * tests `token in no_split_token` again) */
  size_t w = 0;
  for (size_t i = 0; i < nch; i++) {
    if (ch[i].n == 0) {
      free(ch[i].cp);
      continue;
    }
    ch[w] = ch[i];
    ch[w].added_id = t->split_special_tokens ? -1 : chunk_added_id(t, &ch[w]);
    w++;
  }
  nch = w;
  *chunks_out = ch;
  *n_out = nch;
  ch = NULL;
  nch = 0;
done:
  vlm__hf_chunks_free(ch, nch);
  free(off.v);
  free(low);
  return rc;
}
