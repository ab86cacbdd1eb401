/* catalog.c - JSONL, CSV/TSV and directory catalogs for `vlmdb ingest`.
 *
 * Every format is turned into one JSON object per row and checked by one
 * function (row_from_object), so the rules for keys, types and vectors are
 * the same whatever the catalog's format.
 */
#include "catalog.h"
#include "catalog_emb.h"
#include "vlm_error.h"
#include "vlm_file.h"
#include "vlm_utf8.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_MAX_BYTES VLM_DB_MAX_KEY
#define DIR_MAX_DEPTH 64

/* ---------------------------------------------------------------- names */

static const char *const skip_names[VLM_SKIP_NREASONS] = {
    [VLM_SKIP_NONE] = "none",
    [VLM_SKIP_SYNTAX] = "bad-syntax",
    [VLM_SKIP_KEY] = "bad-key",
    [VLM_SKIP_TYPE] = "wrong-type",
    [VLM_SKIP_EMPTY] = "no-content",
    [VLM_SKIP_VECTOR] = "bad-vector",
    [VLM_SKIP_MISSING_FILE] = "missing-file",
    [VLM_SKIP_CORRUPT_IMAGE] = "corrupt-image",
    [VLM_SKIP_DUPLICATE] = "duplicate-key",
    [VLM_SKIP_EXISTS] = "exists",
    [VLM_SKIP_REJECTED] = "rejected",
    [VLM_SKIP_OTHER_SHARD] = "other-shard",
};

const char *vlm_skip_reason_name(vlm_skip_reason reason) {
  if ((int)reason < 0 || reason >= VLM_SKIP_NREASONS)
    return "unknown";
  return skip_names[reason];
}

/* ---------------------------------------------------------------- paths */

static int is_uri(const char *s) {
  const char *p = s;
  while (isalnum((unsigned char)*p) || *p == '+' || *p == '-' || *p == '.')
    p++;
  return p > s && !strncmp(p, "://", 3);
}

char *vlm_catalog_resolve_path(const char *base, const char *path) {
  char cwd[PATH_MAX];
  size_t need = strlen(path) + (base ? strlen(base) : 0) + 3;
  const char *prefix = NULL;
  if (path[0] != '/' && !(base && base[0] == '/')) {
    if (!getcwd(cwd, sizeof cwd))
      strcpy(cwd, "/");
    prefix = cwd;
    need += strlen(cwd);
  }
  char *joined = malloc(need);
  if (!joined)
    return NULL;
  joined[0] = '\0';
  if (path[0] != '/') {
    if (prefix) {
      strcat(joined, prefix);
      strcat(joined, "/");
    }
    if (base && *base) {
      strcat(joined, base);
      strcat(joined, "/");
    }
  }
  strcat(joined, path);

  /* Lexical normalization in place: drop "" and "." components, let ".."
   * remove the previous one (never above the root). */
  char *out = malloc(strlen(joined) + 2);
  if (!out) {
    free(joined);
    return NULL;
  }
  size_t olen = 0;
  char *save = NULL;
  for (char *comp = strtok_r(joined, "/", &save); comp;
       comp = strtok_r(NULL, "/", &save)) {
    if (!strcmp(comp, "."))
      continue;
    if (!strcmp(comp, "..")) {
      while (olen > 0 && out[olen - 1] != '/')
        olen--;
      if (olen > 0)
        olen--; /* the slash */
      continue;
    }
    out[olen++] = '/';
    size_t n = strlen(comp);
    memcpy(out + olen, comp, n);
    olen += n;
  }
  if (olen == 0)
    out[olen++] = '/';
  out[olen] = '\0';
  free(joined);
  return out;
}

/* --------------------------------------------------------------- base64 */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *vlm_base64_encode(const void *data, size_t len) {
  const uint8_t *in = data;
  char *out = malloc(4 * ((len + 2) / 3) + 1);
  if (!out)
    return NULL;
  size_t o = 0, i = 0;
  for (; i + 2 < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = b64_alphabet[v >> 18 & 63];
    out[o++] = b64_alphabet[v >> 12 & 63];
    out[o++] = b64_alphabet[v >> 6 & 63];
    out[o++] = b64_alphabet[v & 63];
  }
  if (i < len) {
    uint32_t v = (uint32_t)in[i] << 16;
    if (i + 1 < len)
      v |= (uint32_t)in[i + 1] << 8;
    out[o++] = b64_alphabet[v >> 18 & 63];
    out[o++] = b64_alphabet[v >> 12 & 63];
    out[o++] = i + 1 < len ? b64_alphabet[v >> 6 & 63] : '=';
    out[o++] = '=';
  }
  out[o] = '\0';
  return out;
}

static int b64_value(int c) {
  const char *p = c ? strchr(b64_alphabet, c) : NULL;
  return p ? (int)(p - b64_alphabet) : -1;
}

int vlm_base64_decode(const char *text, uint8_t **data, size_t *len) {
  size_t n = strlen(text);
  *data = NULL;
  *len = 0;
  if (n % 4)
    return vlm_seterr(VLM_EFORMAT, "base64 length %zu is not a multiple of 4",
                      n);
  uint8_t *out = malloc(n / 4 * 3 + 1);
  if (!out)
    return VLM_ENOMEM;
  size_t o = 0;
  for (size_t i = 0; i < n; i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; j++) {
      if (text[i + j] == '=' && i + 4 == n && j >= 2) {
        v[j] = 0;
        pad++;
        continue;
      }
      if (pad || (v[j] = b64_value((unsigned char)text[i + j])) < 0) {
        free(out);
        return vlm_seterr(VLM_EFORMAT, "bad base64 character at offset %zu",
                          i + j);
      }
    }
    uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 |
                 (uint32_t)v[2] << 6 | (uint32_t)v[3];
    out[o++] = (uint8_t)(w >> 16);
    if (pad < 2)
      out[o++] = (uint8_t)(w >> 8);
    if (pad < 1)
      out[o++] = (uint8_t)w;
  }
  *data = out;
  *len = o;
  return 0;
}

/* ------------------------------------------------------------- catalog */

typedef enum {
  COL_KEY,
  COL_IMAGE,
  COL_TEXT,
  COL_CAPTION,
  COL_SOURCE,
  COL_VECTOR,
  COL_IMAGE_VECTOR,
  COL_TEXT_VECTOR,
  COL_THUMBNAIL,
  COL_KEPT_IMAGE,
  COL_META
} column_kind;

static const char *const column_names[] = {
    [COL_KEY] = "key",
    [COL_IMAGE] = "image",
    [COL_TEXT] = "text",
    [COL_CAPTION] = "caption",
    [COL_SOURCE] = "source",
    [COL_VECTOR] = "vector",
    [COL_IMAGE_VECTOR] = "image_vector",
    [COL_TEXT_VECTOR] = "text_vector",
    [COL_THUMBNAIL] = "thumbnail",
    [COL_KEPT_IMAGE] = "kept_image",
};

typedef struct {
  column_kind kind;
  char *meta_name; /* COL_META: the field name after "meta." */
} csv_column;

/* The fields of one CSV record. */
typedef struct {
  char **v;
  int n, cap;
  char *buf; /* the field being read */
  size_t len, bufcap;
  int nul_field;  /* the first field holding a NUL byte, or -1 */
  long nul_line;  /* the line that NUL byte is on */
} csv_record;

struct vlm_catalog {
  vlm_catalog_format format;
  char *path;
  char *base; /* directory relative image paths are joined onto */
  FILE *f;
  long line;  /* lines consumed so far */
  vlm_field *fields;
  int nfields;
  int dim;
  /* CSV/TSV */
  char delim;
  csv_column *cols;
  int ncols;
  csv_record rec;
  /* EMBEDDINGS: the layout, and the vectors of the row being made */
  vlm__emb *emb;
  float *preset_image, *preset_text;
  int preset_dim;
  /* DIR: sorted relative paths of the images */
  char **entries;
  size_t nentries, entries_cap, next_entry;
};

static char *xstrdup(const char *s) { return s ? strdup(s) : NULL; }

int vlm_catalog_row_error(vlm_catalog_row *row, vlm_skip_reason reason,
                          const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(row->message, sizeof row->message, fmt, ap);
  va_end(ap);
  row->error = reason;
  return 1;
}

void vlm_catalog_row_clear(vlm_catalog_row *row) {
  if (!row)
    return;
  free(row->key);
  free(row->image);
  free(row->source);
  free(row->text);
  free(row->caption);
  free(row->meta_json);
  for (int i = 0; i < row->ntexts; i++)
    free(row->texts[i]);
  free(row->texts);
  free(row->image_vec);
  free(row->text_vec);
  free(row->thumb);
  free(row->kept);
  memset(row, 0, sizeof *row);
}

static const vlm_field *find_field(const vlm_catalog *cat, const char *name) {
  for (int i = 0; i < cat->nfields; i++)
    if (!strcmp(cat->fields[i].name, name))
      return &cat->fields[i];
  return NULL;
}

static const char *json_type_name(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "an array";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a number";
  case JSON_TRUE:
  case JSON_FALSE: return "a boolean";
  case JSON_NULL: return "null";
  }
  return "a value";
}

/* A member that must be a string (or absent/null).  Returns 0 and sets
 * *out (NULL when absent) or fills the row's error and returns 1. */
/* One string of "texts", kept unless empty. */
static int add_text(const json_t *v, const char *where, vlm_catalog_row *row) {
  if (!json_is_string(v))
    return vlm_catalog_row_error(row, VLM_SKIP_TYPE,
                                 "\"texts\"%s must be a string, not %s", where,
                                 json_type_name(v));
  const char *t = json_string_value(v);
  if (strlen(t) != json_string_length(v))
    return vlm_catalog_row_error(row, VLM_SKIP_TYPE,
                                 "\"texts\"%s contains a NUL byte", where);
  if (!*t)
    return 0;
  char **p = realloc(row->texts, sizeof *p * (size_t)(row->ntexts + 1));
  if (!p)
    return VLM_ENOMEM;
  row->texts = p;
  if (!(row->texts[row->ntexts] = strdup(t)))
    return VLM_ENOMEM;
  row->ntexts++;
  return 0;
}

/* "texts": other captions of the item, as an array of strings or as an
 * object of arrays or strings by language ({"de": "Eine Katze.", "fr":
 * ["Un chat.", "chat"]}).  Only the trainer reads them; the language
 * names are not interpreted. */
static int get_texts(const json_t *obj, vlm_catalog_row *row) {
  const json_t *texts = json_object_get(obj, "texts");
  if (!texts || json_is_null(texts))
    return 0;
  char where[96];
  int rc;
  if (json_is_array(texts)) {
    size_t i;
    const json_t *v;
    json_array_foreach(texts, i, v) {
      snprintf(where, sizeof where, "[%zu]", i);
      if ((rc = add_text(v, where, row)))
        return rc;
    }
    return 0;
  }
  if (!json_is_object(texts))
    return vlm_catalog_row_error(
        row, VLM_SKIP_TYPE, "\"texts\" must be an array or an object, not %s",
        json_type_name(texts));
  const char *lang;
  const json_t *v;
  json_object_foreach((json_t *)texts, lang, v) {
    if (json_is_array(v)) {
      size_t i;
      const json_t *e;
      json_array_foreach(v, i, e) {
        snprintf(where, sizeof where, ".%.64s[%zu]", lang, i);
        if ((rc = add_text(e, where, row)))
          return rc;
      }
    } else {
      snprintf(where, sizeof where, ".%.64s", lang);
      if ((rc = add_text(v, where, row)))
        return rc;
    }
  }
  return 0;
}

static int get_string(const json_t *obj, const char *name, const char **out,
                      vlm_catalog_row *row) {
  const json_t *v = json_object_get(obj, name);
  *out = NULL;
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_string(v))
    return vlm_catalog_row_error(row, VLM_SKIP_TYPE,
                                 "\"%s\" must be a string, not %s", name,
                                 json_type_name(v));
  *out = json_string_value(v);
  return 0;
}

/* A member that must be an array of dim numbers. */
static int get_vector(const vlm_catalog *cat, const json_t *obj,
                      const char *name, float **out, int *dim,
                      vlm_catalog_row *row) {
  const json_t *v = json_object_get(obj, name);
  *out = NULL;
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_array(v))
    return vlm_catalog_row_error(row, VLM_SKIP_VECTOR,
                                 "\"%s\" must be an array of numbers, not %s",
                                 name, json_type_name(v));
  size_t n = json_array_size(v);
  if (n == 0 || n > 65536)
    return vlm_catalog_row_error(row, VLM_SKIP_VECTOR, "\"%s\" has %zu numbers",
                                 name, n);
  if (cat->dim > 0 && (int)n != cat->dim)
    return vlm_catalog_row_error(
        row, VLM_SKIP_VECTOR,
        "\"%s\" has %zu numbers; the database's dimension "
        "is %d",
        name, n, cat->dim);
  if (*dim && (int)n != *dim)
    return vlm_catalog_row_error(row, VLM_SKIP_VECTOR,
                                 "\"%s\" has %zu numbers, the other vector %d",
                                 name, n, *dim);
  float *vec = malloc(n * sizeof *vec);
  if (!vec)
    return vlm_catalog_row_error(row, VLM_SKIP_VECTOR, "out of memory");
  for (size_t i = 0; i < n; i++) {
    const json_t *x = json_array_get(v, i);
    double d = json_number_value(x);
    if (!json_is_number(x) || !isfinite(d) || fabs(d) > 3.4e38) {
      free(vec);
      return vlm_catalog_row_error(
          row, VLM_SKIP_VECTOR, "\"%s\"[%zu] is not a finite number", name, i);
    }
    vec[i] = (float)d;
  }
  *out = vec;
  *dim = (int)n;
  return 0;
}

/* Declared fields must have their declared type (null is allowed). */
static int check_meta(const vlm_catalog *cat, const json_t *meta,
                      vlm_catalog_row *row) {
  const char *name;
  const json_t *v;
  json_object_foreach((json_t *)meta, name, v) {
    const vlm_field *f = find_field(cat, name);
    if (!f || json_is_null(v))
      continue;
    int ok = f->type == VLM_FIELD_TEXT   ? json_is_string(v)
             : f->type == VLM_FIELD_INT  ? json_is_integer(v)
                                         : json_is_number(v);
    if (!ok)
      return vlm_catalog_row_error(row, VLM_SKIP_TYPE,
                                   "meta.%s must be %s, not %s", name,
                                   f->type == VLM_FIELD_TEXT  ? "a string"
                                   : f->type == VLM_FIELD_INT ? "an integer"
                                                              : "a number",
                                   json_type_name(v));
  }
  return 0;
}

/* Check one row object and fill *row.  Returns 1 (row filled, maybe with
 * an error) or a negative code when memory runs out. */
static int row_from_object(vlm_catalog *cat, const json_t *obj,
                           vlm_catalog_row *row) {
  if (!json_is_object(obj))
    return vlm_catalog_row_error(row, VLM_SKIP_SYNTAX,
                                 "a row must be a JSON object, not %s",
                                 json_type_name(obj));
  const json_t *jkey = json_object_get(obj, "key");
  if (!jkey)
    return vlm_catalog_row_error(row, VLM_SKIP_KEY, "no \"key\"");
  if (!json_is_string(jkey))
    return vlm_catalog_row_error(row, VLM_SKIP_KEY,
                                 "\"key\" must be a string, not %s",
                                 json_type_name(jkey));
  const char *key = json_string_value(jkey);
  size_t keylen = json_string_length(jkey);
  if (keylen == 0)
    return vlm_catalog_row_error(row, VLM_SKIP_KEY, "empty \"key\"");
  if (strlen(key) != keylen)
    return vlm_catalog_row_error(row, VLM_SKIP_KEY,
                                 "\"key\" contains a NUL byte");
  free(row->key); /* a CSV row sets it early, for messages */
  row->key = strdup(key);
  if (!row->key)
    return VLM_ENOMEM;
  if (keylen > KEY_MAX_BYTES)
    return vlm_catalog_row_error(row, VLM_SKIP_KEY,
                                 "\"key\" is %zu bytes (at most %d)", keylen,
                                 KEY_MAX_BYTES);

  const char *image, *text, *caption, *source, *thumb, *kept;
  if (get_string(obj, "image", &image, row) ||
      get_string(obj, "text", &text, row) ||
      get_string(obj, "caption", &caption, row) ||
      get_string(obj, "source", &source, row) ||
      get_string(obj, "thumbnail", &thumb, row) ||
      get_string(obj, "kept_image", &kept, row))
    return 1;
  if (text && caption)
    return vlm_catalog_row_error(
        row, VLM_SKIP_TYPE,
        "both \"text\" (embedded) and \"caption\" (stored "
        "only) are given");
  if (image && !*image)
    image = NULL;

  const json_t *meta = json_object_get(obj, "meta");
  if (meta && !json_is_null(meta)) {
    if (!json_is_object(meta))
      return vlm_catalog_row_error(row, VLM_SKIP_TYPE,
                                   "\"meta\" must be an object, not %s",
                                   json_type_name(meta));
    if (check_meta(cat, meta, row))
      return 1;
    row->meta_json = json_dumps(meta, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!row->meta_json)
      return VLM_ENOMEM;
  }

  int trc = get_texts(obj, row);
  if (trc)
    return trc < 0 ? trc : 1;

  const json_t *w = json_object_get(obj, "weight");
  if (w && !json_is_null(w)) {
    double wv = json_is_number(w) ? json_number_value(w) : -1;
    if (!(wv > 0 && wv <= VLM_CATALOG_MAX_WEIGHT))
      return vlm_catalog_row_error(row, VLM_SKIP_TYPE,
                                   "\"weight\" must be a number in (0, %g]",
                                   (double)VLM_CATALOG_MAX_WEIGHT);
    row->weight = wv;
  }

  int dim = 0;
  float *any_vec = NULL;
  if (get_vector(cat, obj, "image_vector", &row->image_vec, &dim, row) ||
      get_vector(cat, obj, "text_vector", &row->text_vec, &dim, row) ||
      get_vector(cat, obj, "vector", &any_vec, &dim, row))
    return 1;
  if (cat->preset_image || cat->preset_text) {
    /* vectors that came from .npy files beside the row's object */
    row->image_vec = cat->preset_image;
    row->text_vec = cat->preset_text;
    cat->preset_image = cat->preset_text = NULL;
    dim = cat->preset_dim;
  }
  row->dim = dim;
  if (any_vec) {
    /* "vector" is the vector of the item's main modality: its image when
     * it has one, else its text, else (a bare vector) an image vector. */
    float **slot = image || !text ? &row->image_vec : &row->text_vec;
    if (*slot) {
      free(any_vec);
      return vlm_catalog_row_error(
          row, VLM_SKIP_VECTOR, "both \"vector\" and \"%s\" are given",
          slot == &row->image_vec ? "image_vector" : "text_vector");
    }
    *slot = any_vec;
  }

  if (thumb && *thumb) {
    if (vlm_base64_decode(thumb, &row->thumb, &row->thumb_len))
      return vlm_catalog_row_error(row, VLM_SKIP_TYPE, "\"thumbnail\": %s",
                                   vlm_errmsg());
  }
  if (kept && *kept) {
    /* no larger than an image file ingest would read */
    size_t n = strlen(kept);
    if (n / 4 * 3 > VLM_MAX_IMAGE_FILE + 3)
      return vlm_catalog_row_error(row, VLM_SKIP_TYPE, "\"kept_image\" is "
                                   "larger than %zu bytes",
                                   (size_t)VLM_MAX_IMAGE_FILE);
    if (vlm_base64_decode(kept, &row->kept, &row->kept_len))
      return vlm_catalog_row_error(row, VLM_SKIP_TYPE, "\"kept_image\": %s",
                                   vlm_errmsg());
    if (row->kept_len > VLM_MAX_IMAGE_FILE)
      return vlm_catalog_row_error(row, VLM_SKIP_TYPE, "\"kept_image\" is "
                                   "larger than %zu bytes",
                                   (size_t)VLM_MAX_IMAGE_FILE);
    if (row->kept_len == 0) {
      free(row->kept);
      row->kept = NULL;
    }
  }

  if (!image && !text && !row->image_vec && !row->text_vec && !row->kept)
    return vlm_catalog_row_error(row, VLM_SKIP_EMPTY,
                                 "no \"image\", \"text\", \"kept_image\" or "
                                 "vector to store");

  if (image) {
    row->image = is_uri(image) ? strdup(image)
                               : vlm_catalog_resolve_path(cat->base, image);
    if (!row->image)
      return VLM_ENOMEM;
  }
  if ((text && !(row->text = strdup(text))) ||
      ((text || caption) && !(row->caption = strdup(text ? text : caption))))
    return VLM_ENOMEM;
  const char *src = source ? source : row->image;
  if (src && !(row->source = strdup(src)))
    return VLM_ENOMEM;
  return 1;
}

/* ----------------------------------------------------------------- JSONL */

static int jsonl_next(vlm_catalog *cat, vlm_catalog_row *row) {
  char *line = NULL;
  size_t cap = 0;
  for (;;) {
    errno = 0;
    ssize_t n = getline(&line, &cap, cat->f);
    if (n < 0) {
      int failed = ferror(cat->f);
      free(line);
      if (failed)
        return vlm_seterr(VLM_EIO, "%s: read: %s", cat->path, strerror(errno));
      return 0;
    }
    cat->line++;
    char *s = line;
    if (cat->line == 1 && !strncmp(s, "\xef\xbb\xbf", 3))
      s += 3; /* byte order mark */
    size_t len = strlen(s);
    if ((size_t)n != (size_t)(s - line) + len) {
      row->line = cat->line;
      vlm_catalog_row_error(row, VLM_SKIP_SYNTAX,
                            "bad JSON: NUL byte at column %zu",
                            (size_t)(s - line) + len + 1);
      free(line);
      return 1;
    }
    while (len && isspace((unsigned char)s[len - 1]))
      s[--len] = '\0';
    while (isspace((unsigned char)*s))
      s++;
    if (!*s)
      continue;
    row->line = cat->line;
    json_error_t jerr;
    /* A member given twice would otherwise resolve silently to the last
     * one; the row is refused instead (nested objects, meta too). */
    json_t *obj = json_loads(s, JSON_REJECT_DUPLICATES, &jerr);
    int rc;
    const char *near;
    if (!obj && json_error_code(&jerr) == json_error_duplicate_key &&
        (near = strstr(jerr.text, "near '")) && strlen(near) > 7)
      rc = vlm_catalog_row_error(row, VLM_SKIP_SYNTAX,
                                 "bad JSON: duplicate member %.*s (column %d)",
                                 (int)strlen(near) - 7, near + 6, jerr.column);
    else if (!obj)
      rc = vlm_catalog_row_error(row, VLM_SKIP_SYNTAX,
                                 "bad JSON: %s (column %d)", jerr.text,
                                 jerr.column);
    else
      rc = row_from_object(cat, obj, row);
    json_decref(obj);
    free(line);
    return rc;
  }
}

static long jsonl_count(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  long rows = 0;
  int blank = 1, c;
  while ((c = getc_unlocked(f)) != EOF) {
    if (c == '\n') {
      rows += !blank;
      blank = 1;
    } else if (!isspace(c)) {
      blank = 0;
    }
  }
  rows += !blank;
  fclose(f);
  return rows;
}

/* ------------------------------------------------------------------ CSV */

static int rec_putc(csv_record *r, int c) {
  if (r->len + 1 >= r->bufcap) {
    size_t cap = r->bufcap ? r->bufcap * 2 : 256;
    char *p = realloc(r->buf, cap);
    if (!p)
      return VLM_ENOMEM;
    r->buf = p;
    r->bufcap = cap;
  }
  r->buf[r->len++] = (char)c;
  return 0;
}

static int rec_end_field(csv_record *r) {
  if (r->n == r->cap) {
    int cap = r->cap ? r->cap * 2 : 16;
    char **v = realloc(r->v, cap * sizeof *v);
    if (!v)
      return VLM_ENOMEM;
    r->v = v;
    r->cap = cap;
  }
  char *s = malloc(r->len + 1);
  if (!s)
    return VLM_ENOMEM;
  memcpy(s, r->buf, r->len);
  s[r->len] = '\0';
  r->v[r->n++] = s;
  r->len = 0;
  return 0;
}

static void rec_reset(csv_record *r) {
  for (int i = 0; i < r->n; i++)
    free(r->v[i]);
  r->n = 0;
  r->len = 0;
  r->nul_field = -1;
  r->nul_line = 0;
}

/* Append c to the field being read, noting where the first NUL byte is: a
 * cell is a C string from here on, and a NUL would cut it short. */
static int rec_add(csv_record *r, int c, long line) {
  if (c == '\0' && r->nul_field < 0) {
    r->nul_field = r->n;
    r->nul_line = line;
  }
  return rec_putc(r, c);
}

static void rec_free(csv_record *r) {
  rec_reset(r);
  free(r->v);
  free(r->buf);
  memset(r, 0, sizeof *r);
}

/* Read one RFC 4180 record from f into r.  *line counts newlines consumed;
 * *start gets the line the record starts on.  Returns 1 (a record; *bad is
 * set to a message if it is malformed), 0 at end of file, or a negative
 * code.  Quoted fields may hold the delimiter, "" for a quote, and
 * newlines; CRLF line ends are accepted. */
static int csv_read(FILE *f, char delim, long *line, csv_record *r,
                    long *start, const char **bad) {
  rec_reset(r);
  *bad = NULL;
  *start = *line + 1;
  int c = getc_unlocked(f);
  if (c == EOF)
    return ferror(f) ? vlm_seterr(VLM_EIO, "read: %s", strerror(errno)) : 0;
  for (;;) { /* one field per iteration; c is its first character */
    if (c == '"') {
      long quote_line = *line + 1;
      for (;;) {
        c = getc_unlocked(f);
        if (c == EOF) {
          *start = quote_line;
          *bad = "unterminated quoted field";
          return 1;
        }
        if (c == '"') {
          c = getc_unlocked(f);
          if (c != '"')
            break; /* closing quote; c is what follows it */
        }
        if (rec_add(r, c, *line + 1))
          return VLM_ENOMEM;
        if (c == '\n')
          (*line)++;
      }
      if (c == '\r') {
        int next = getc_unlocked(f);
        if (next != '\n' && next != EOF)
          ungetc(next, f);
        c = next == EOF ? EOF : '\n';
      }
      if (c != delim && c != '\n' && c != EOF) {
        *bad = "unexpected character after a closing quote";
        while (c != '\n' && c != EOF)
          c = getc_unlocked(f);
      }
    } else {
      while (c != delim && c != '\n' && c != EOF) {
        if (c == '\r') {
          int next = getc_unlocked(f);
          if (next == '\n' || next == EOF) {
            c = next == EOF ? EOF : '\n';
            break;
          }
          ungetc(next, f);
        }
        if (rec_add(r, c, *line + 1))
          return VLM_ENOMEM;
        c = getc_unlocked(f);
      }
    }
    if (rec_end_field(r))
      return VLM_ENOMEM;
    if (c == '\n') {
      (*line)++;
      return 1;
    }
    if (c == EOF)
      return 1;
    c = getc_unlocked(f); /* after the delimiter */
    if (c == EOF || c == '\n') { /* trailing empty field */
      if (rec_end_field(r))
        return VLM_ENOMEM;
      if (c == '\n')
        (*line)++;
      return 1;
    }
  }
}

static int rec_is_blank(const csv_record *r) {
  return r->n == 1 && r->v[0][0] == '\0';
}

static long csv_count(const char *path, char delim) {
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  csv_record r = {0};
  long line = 0, start, rows = 0;
  const char *bad;
  int rc;
  while ((rc = csv_read(f, delim, &line, &r, &start, &bad)) == 1)
    rows += !rec_is_blank(&r);
  rec_free(&r);
  fclose(f);
  if (rc < 0)
    return -1;
  return rows > 0 ? rows - 1 : 0; /* the header */
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n && isspace((unsigned char)s[n - 1]))
    s[--n] = '\0';
  return s;
}

static int csv_header(vlm_catalog *cat) {
  long start;
  const char *bad;
  int rc;
  do {
    rc = csv_read(cat->f, cat->delim, &cat->line, &cat->rec, &start, &bad);
  } while (rc == 1 && rec_is_blank(&cat->rec) && !bad);
  if (rc < 0)
    return vlm_seterr(rc, "%s: %s", cat->path, vlm_errmsg());
  if (rc == 0)
    return vlm_seterr(VLM_EFORMAT, "%s: empty file, no header row", cat->path);
  if (bad)
    return vlm_seterr(VLM_EFORMAT, "%s:%ld: header: %s", cat->path, start, bad);
  if (cat->rec.nul_field >= 0)
    return vlm_seterr(VLM_EFORMAT, "%s:%ld: header: column %d holds a NUL byte",
                      cat->path, cat->rec.nul_line, cat->rec.nul_field + 1);
  cat->cols = calloc(cat->rec.n, sizeof *cat->cols);
  if (!cat->cols)
    return VLM_ENOMEM;
  cat->ncols = cat->rec.n;
  int have_key = 0;
  for (int i = 0; i < cat->rec.n; i++) {
    char *name = trim(cat->rec.v[i]);
    if (i == 0 && !strncmp(name, "\xef\xbb\xbf", 3))
      name += 3;
    csv_column *col = &cat->cols[i];
    if (!strncmp(name, "meta.", 5) && name[5]) {
      col->kind = COL_META;
      if (!(col->meta_name = strdup(name + 5)))
        return VLM_ENOMEM;
    } else {
      int found = 0;
      for (int k = 0; k < COL_META; k++)
        if (!strcmp(name, column_names[k])) {
          col->kind = (column_kind)k;
          found = 1;
        }
      if (!found)
        return vlm_seterr(VLM_EFORMAT,
                          "%s:%ld: unknown column \"%s\" (columns: key, "
                          "image, text, caption, source, vector, "
                          "image_vector, text_vector, thumbnail, "
                          "kept_image, meta.NAME)",
                          cat->path, start, name);
    }
    for (int j = 0; j < i; j++)
      if (cat->cols[j].kind == col->kind &&
          (col->kind != COL_META ||
           !strcmp(cat->cols[j].meta_name, col->meta_name)))
        return vlm_seterr(VLM_EFORMAT, "%s:%ld: column \"%s\" appears twice",
                          cat->path, start, name);
    have_key |= col->kind == COL_KEY;
  }
  if (!have_key)
    return vlm_seterr(VLM_EFORMAT, "%s:%ld: no \"key\" column in the header",
                      cat->path, start);
  return 0;
}

/* A CSV cell holding a vector: a JSON array, brackets optional. */
static json_t *parse_vector_cell(const char *cell) {
  size_t n = strlen(cell);
  char *text = malloc(n + 3);
  if (!text)
    return NULL;
  const char *s = cell;
  while (isspace((unsigned char)*s))
    s++;
  if (*s == '[')
    strcpy(text, s);
  else
    sprintf(text, "[%s]", s);
  json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
  free(text);
  return v;
}

/* Build a row object from a CSV record, converting meta cells to their
 * declared types.  Returns the object, or NULL with row->error set. */
static json_t *csv_object(vlm_catalog *cat, vlm_catalog_row *row) {
  json_t *obj = json_object(), *meta = NULL;
  if (!obj)
    goto nomem;
  for (int i = 0; i < cat->ncols; i++) {
    const csv_column *col = &cat->cols[i];
    const char *cell = cat->rec.v[i];
    if (col->kind == COL_KEY && *cell && !row->key &&
        vlm_utf8_valid(cell, strlen(cell)) && !(row->key = strdup(cell)))
      goto nomem;
    if (!*cell && col->kind != COL_KEY)
      continue; /* an empty cell is an absent value */
    if (!vlm_utf8_valid(cell, strlen(cell))) {
      vlm_catalog_row_error(
          row, VLM_SKIP_SYNTAX, "column %d (%s%s) is not valid UTF-8", i + 1,
          col->kind == COL_META ? "meta." : "",
          col->kind == COL_META ? col->meta_name : column_names[col->kind]);
      goto fail;
    }
    json_t *v = NULL;
    if (col->kind == COL_VECTOR || col->kind == COL_IMAGE_VECTOR ||
        col->kind == COL_TEXT_VECTOR) {
      v = parse_vector_cell(cell);
      if (!v) {
        vlm_catalog_row_error(row, VLM_SKIP_VECTOR, "%s: not a list of numbers",
                              column_names[col->kind]);
        goto fail;
      }
    } else if (col->kind == COL_META) {
      const vlm_field *f = find_field(cat, col->meta_name);
      char *end;
      if (f && f->type == VLM_FIELD_INT) {
        errno = 0;
        long long x = strtoll(cell, &end, 10);
        if (errno || end == cell || *trim(end)) {
          vlm_catalog_row_error(row, VLM_SKIP_TYPE,
                                "meta.%s: \"%s\" is not an integer",
                                col->meta_name, cell);
          goto fail;
        }
        v = json_integer(x);
      } else if (f && f->type == VLM_FIELD_REAL) {
        double x = strtod(cell, &end);
        if (end == cell || *trim(end) || !isfinite(x)) {
          vlm_catalog_row_error(row, VLM_SKIP_TYPE,
                                "meta.%s: \"%s\" is not a number",
                                col->meta_name, cell);
          goto fail;
        }
        v = json_real(x);
      } else {
        v = json_string(cell);
      }
      if (!meta && (!(meta = json_object()) ||
                    json_object_set_new(obj, "meta", meta))) {
        json_decref(v);
        goto nomem;
      }
      if (!v || json_object_set_new(meta, col->meta_name, v))
        goto nomem;
      continue;
    } else {
      v = json_string(cell);
    }
    if (!v || json_object_set_new(obj, column_names[col->kind], v))
      goto nomem;
  }
  return obj;
nomem:
  vlm_catalog_row_error(row, VLM_SKIP_SYNTAX, "out of memory");
fail:
  json_decref(obj);
  return NULL;
}

static int csv_next(vlm_catalog *cat, vlm_catalog_row *row) {
  long start;
  const char *bad;
  int rc;
  do {
    rc = csv_read(cat->f, cat->delim, &cat->line, &cat->rec, &start, &bad);
  } while (rc == 1 && !bad && rec_is_blank(&cat->rec));
  if (rc <= 0)
    return rc < 0 ? vlm_seterr(rc, "%s: %s", cat->path, vlm_errmsg()) : 0;
  row->line = start;
  if (bad)
    return vlm_catalog_row_error(row, VLM_SKIP_SYNTAX, "%s", bad);
  if (cat->rec.n != cat->ncols)
    return vlm_catalog_row_error(row, VLM_SKIP_SYNTAX,
                                 "%d field%s, the header has %d", cat->rec.n,
                                 cat->rec.n == 1 ? "" : "s", cat->ncols);
  if (cat->rec.nul_field >= 0) {
    const csv_column *col = &cat->cols[cat->rec.nul_field];
    return vlm_catalog_row_error(
        row, VLM_SKIP_SYNTAX, "NUL byte in column %d (%s%s), line %ld",
        cat->rec.nul_field + 1, col->kind == COL_META ? "meta." : "",
        col->kind == COL_META ? col->meta_name : column_names[col->kind],
        cat->rec.nul_line);
  }
  json_t *obj = csv_object(cat, row);
  if (!obj)
    return 1;
  rc = row_from_object(cat, obj, row);
  json_decref(obj);
  return rc;
}

/* ------------------------------------------------------------ directory */

static int has_image_ext(const char *name) {
  const char *dot = strrchr(name, '.');
  return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") ||
                 !strcasecmp(dot, ".png"));
}

static int add_entry(vlm_catalog *cat, const char *rel) {
  if (cat->nentries == cat->entries_cap) {
    size_t cap = cat->entries_cap ? cat->entries_cap * 2 : 64;
    char **p = realloc(cat->entries, cap * sizeof *p);
    if (!p)
      return VLM_ENOMEM;
    cat->entries = p;
    cat->entries_cap = cap;
  }
  if (!(cat->entries[cat->nentries] = strdup(rel)))
    return VLM_ENOMEM;
  cat->nentries++;
  return 0;
}

/* Collect image files under root/rel, skipping hidden entries. */
static int walk_dir(vlm_catalog *cat, const char *rel, int depth) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s%s%s", cat->base, *rel ? "/" : "", rel);
  if (depth > DIR_MAX_DEPTH)
    return vlm_seterr(VLM_EINVAL, "%s: directories nested too deep", path);
  DIR *d = opendir(path);
  if (!d)
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    char child[PATH_MAX], full[PATH_MAX];
    snprintf(child, sizeof child, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
    snprintf(full, sizeof full, "%s/%s", cat->base, child);
    struct stat st;
    if (stat(full, &st))
      continue; /* a dangling link */
    if (S_ISDIR(st.st_mode))
      rc = walk_dir(cat, child, depth + 1);
    else if (S_ISREG(st.st_mode) && has_image_ext(e->d_name))
      rc = add_entry(cat, child);
    if (rc)
      break;
  }
  closedir(d);
  return rc;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The sidecar text of an image: NAME.jpg.txt or NAME.txt.  Returns 0 with
 * *text NULL when there is none, 1 when it holds a NUL byte, or a negative
 * code. */
static int read_sidecar(const char *image_path, char **text) {
  char path[PATH_MAX + 8];
  *text = NULL;
  snprintf(path, sizeof path, "%s.txt", image_path);
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(path, sizeof path, "%s", image_path);
    char *dot = strrchr(path, '.');
    char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash))
      return 0;
    strcpy(dot, ".txt");
    if (!(f = fopen(path, "rb")))
      return 0;
  }
  char *buf = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&buf, &len);
  if (!mem) {
    fclose(f);
    return VLM_ENOMEM;
  }
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    fwrite(chunk, 1, n, mem);
  fclose(f);
  fclose(mem);
  if (!buf)
    return VLM_ENOMEM;
  if (memchr(buf, '\0', len)) { /* it would cut the text short */
    free(buf);
    *text = NULL;
    return 1;
  }
  char *t = trim(buf);
  memmove(buf, t, strlen(t) + 1);
  *text = buf;
  return 0;
}

static int dir_next(vlm_catalog *cat, vlm_catalog_row *row) {
  if (cat->next_entry >= cat->nentries)
    return 0;
  const char *rel = cat->entries[cat->next_entry++];
  row->line = (long)cat->next_entry;
  json_t *obj = json_object();
  char *image = vlm_catalog_resolve_path(cat->base, rel);
  char *text = NULL;
  int rc = VLM_ENOMEM, sidecar = 0;
  if (!obj || !image || (sidecar = read_sidecar(image, &text)) < 0)
    goto done;
  if (!(row->key = strdup(rel)))
    goto done;
  if (sidecar == 1) {
    rc = vlm_catalog_row_error(row, VLM_SKIP_SYNTAX,
                               "sidecar text holds a NUL byte");
    goto done;
  }
  if (text && !vlm_utf8_valid(text, strlen(text))) {
    rc = vlm_catalog_row_error(row, VLM_SKIP_SYNTAX,
                               "sidecar text is not UTF-8");
    goto done;
  }
  if (text && !*text) {
    free(text);
    text = NULL;
  }
  if (!vlm_utf8_valid(rel, strlen(rel))) {
    rc = vlm_catalog_row_error(row, VLM_SKIP_KEY, "file name is not UTF-8");
    goto done;
  }
  free(row->key); /* row_from_object sets it again */
  row->key = NULL;
  if (json_object_set_new(obj, "key", json_string(rel)) ||
      json_object_set_new(obj, "image", json_string(image)) ||
      (text && json_object_set_new(obj, "text", json_string(text))))
    goto done;
  rc = row_from_object(cat, obj, row);
done:
  json_decref(obj);
  free(image);
  free(text);
  return rc;
}

/* ----------------------------------------------------------- EMBEDDINGS */

static int emb_next(vlm_catalog *cat, vlm_catalog_row *row) {
  json_t *obj;
  int rc = vlm__emb_next(cat->emb, row, &obj, &cat->preset_image,
                         &cat->preset_text, &cat->preset_dim);
  if (rc == 1 && obj)
    rc = row_from_object(cat, obj, row);
  json_decref(obj);
  /* not taken by the row (it was bad) */
  free(cat->preset_image);
  free(cat->preset_text);
  cat->preset_image = cat->preset_text = NULL;
  return rc;
}

/* ---------------------------------------------------------- open/close */

static vlm_catalog_format format_from_name(const char *path) {
  const char *dot = strrchr(path, '.');
  const char *slash = strrchr(path, '/');
  if (!dot || (slash && dot < slash))
    return VLM_CATALOG_AUTO;
  if (!strcasecmp(dot, ".jsonl") || !strcasecmp(dot, ".ndjson") ||
      !strcasecmp(dot, ".json"))
    return VLM_CATALOG_JSONL;
  if (!strcasecmp(dot, ".csv"))
    return VLM_CATALOG_CSV;
  if (!strcasecmp(dot, ".tsv") || !strcasecmp(dot, ".tab"))
    return VLM_CATALOG_TSV;
  return VLM_CATALOG_AUTO;
}

int vlm_catalog_open(const char *path, const vlm_catalog_options *opts,
                     vlm_catalog **out) {
  static const vlm_catalog_options defaults = {0};
  if (!opts)
    opts = &defaults;
  *out = NULL;
  struct stat st;
  if (stat(path, &st))
    return vlm_seterr(errno == ENOENT ? VLM_ENOTFOUND : VLM_EIO, "%s: %s",
                      path, strerror(errno));
  vlm_catalog *cat = calloc(1, sizeof *cat);
  if (!cat)
    return VLM_ENOMEM;
  int rc = VLM_ENOMEM;
  cat->format = opts->format;
  cat->dim = opts->dim;
  if (!(cat->path = strdup(path)))
    goto fail;
  if (opts->nfields > 0) {
    cat->fields = calloc(opts->nfields, sizeof *cat->fields);
    if (!cat->fields)
      goto fail;
    for (int i = 0; i < opts->nfields; i++) {
      cat->fields[i].type = opts->fields[i].type;
      if (!(cat->fields[i].name = xstrdup(opts->fields[i].name)))
        goto fail;
      cat->nfields = i + 1;
    }
  }
  if (S_ISDIR(st.st_mode) &&
      (cat->format == VLM_CATALOG_EMBEDDINGS ||
       (cat->format == VLM_CATALOG_AUTO && vlm__emb_is_layout(path)))) {
    cat->format = VLM_CATALOG_EMBEDDINGS;
    if ((rc = vlm__emb_open(path, cat->dim, &cat->emb)))
      goto fail;
    *out = cat;
    return 0;
  }
  if (cat->format == VLM_CATALOG_EMBEDDINGS) {
    rc = vlm_seterr(VLM_EINVAL, "%s is not a directory", path);
    goto fail;
  }
  if (S_ISDIR(st.st_mode)) {
    if (cat->format != VLM_CATALOG_AUTO && cat->format != VLM_CATALOG_DIR) {
      rc = vlm_seterr(VLM_EINVAL, "%s is a directory", path);
      goto fail;
    }
    cat->format = VLM_CATALOG_DIR;
    if (!(cat->base = vlm_catalog_resolve_path(NULL, path)))
      goto fail;
    if ((rc = walk_dir(cat, "", 0)))
      goto fail;
    qsort(cat->entries, cat->nentries, sizeof *cat->entries, cmp_str);
    *out = cat;
    return 0;
  }
  if (cat->format == VLM_CATALOG_DIR) {
    rc = vlm_seterr(VLM_EINVAL, "%s is not a directory", path);
    goto fail;
  }
  if (cat->format == VLM_CATALOG_AUTO)
    cat->format = format_from_name(path);
  if (cat->format == VLM_CATALOG_AUTO) {
    rc = vlm_seterr(VLM_EINVAL,
                    "%s: cannot tell the catalog format from the name "
                    "(.jsonl, .csv, .tsv or a directory); say --format",
                    path);
    goto fail;
  }
  if (opts->images_root) {
    cat->base = strdup(opts->images_root);
  } else {
    char *slash = strrchr(path, '/');
    cat->base = slash ? strndup(path, slash == path ? 1 : slash - path)
                      : strdup(".");
  }
  if (!cat->base)
    goto fail;
  if (!(cat->f = fopen(path, "r"))) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
    goto fail;
  }
  if (cat->format == VLM_CATALOG_CSV || cat->format == VLM_CATALOG_TSV) {
    cat->delim = cat->format == VLM_CATALOG_CSV ? ',' : '\t';
    if ((rc = csv_header(cat)))
      goto fail;
  }
  *out = cat;
  return 0;
fail:
  vlm_catalog_close(cat);
  return rc;
}

void vlm_catalog_close(vlm_catalog *cat) {
  if (!cat)
    return;
  if (cat->f)
    fclose(cat->f);
  for (int i = 0; i < cat->nfields; i++)
    free((char *)cat->fields[i].name);
  free(cat->fields);
  for (int i = 0; i < cat->ncols; i++)
    free(cat->cols[i].meta_name);
  free(cat->cols);
  rec_free(&cat->rec);
  for (size_t i = 0; i < cat->nentries; i++)
    free(cat->entries[i]);
  free(cat->entries);
  vlm__emb_close(cat->emb);
  free(cat->preset_image);
  free(cat->preset_text);
  free(cat->base);
  free(cat->path);
  free(cat);
}

vlm_catalog_format vlm_catalog_get_format(const vlm_catalog *cat) {
  return cat->format;
}

long vlm_catalog_count(vlm_catalog *cat) {
  switch (cat->format) {
  case VLM_CATALOG_JSONL: return jsonl_count(cat->path);
  case VLM_CATALOG_CSV:
  case VLM_CATALOG_TSV: return csv_count(cat->path, cat->delim);
  case VLM_CATALOG_DIR: return (long)cat->nentries;
  case VLM_CATALOG_EMBEDDINGS: return vlm__emb_count(cat->emb);
  default: return -1;
  }
}

int vlm_catalog_next(vlm_catalog *cat, vlm_catalog_row *row) {
  vlm_catalog_row_clear(row);
  switch (cat->format) {
  case VLM_CATALOG_JSONL: return jsonl_next(cat, row);
  case VLM_CATALOG_CSV:
  case VLM_CATALOG_TSV: return csv_next(cat, row);
  case VLM_CATALOG_DIR: return dir_next(cat, row);
  case VLM_CATALOG_EMBEDDINGS: return emb_next(cat, row);
  default: return vlm_seterr(VLM_EINVAL, "catalog format not set");
  }
}

/* --------------------------------------------------------------- export */

static json_t *vector_json(const float *v, int dim) {
  json_t *a = json_array();
  for (int i = 0; a && i < dim; i++)
    if (json_array_append_new(a, json_real(v[i]))) {
      json_decref(a);
      return NULL;
    }
  return a;
}

char *vlm_catalog_format_record(const vlm_record *rec, int with_vectors) {
  json_t *obj = json_object();
  char *line = NULL;
  if (!obj || json_object_set_new(obj, "key", json_string(rec->key)))
    goto done;
  /* "image"/"text" are re-read and re-embedded by ingest; "source" and
   * "caption" are only stored, for items that have no such vector. */
  if (rec->source &&
      json_object_set_new(obj, rec->image_vec ? "image" : "source",
                          json_string(rec->source)))
    goto done;
  if (rec->caption &&
      json_object_set_new(obj, rec->text_vec ? "text" : "caption",
                          json_string(rec->caption)))
    goto done;
  if (rec->meta_json) {
    json_t *meta = json_loads(rec->meta_json, 0, NULL);
    if (meta && json_is_object(meta) && json_object_size(meta) > 0) {
      if (json_object_set_new(obj, "meta", meta))
        goto done;
    } else {
      json_decref(meta);
    }
  }
  if (with_vectors) {
    if (rec->image_vec &&
        json_object_set_new(obj, "image_vector",
                            vector_json(rec->image_vec, rec->dim)))
      goto done;
    if (rec->text_vec &&
        json_object_set_new(obj, "text_vector",
                            vector_json(rec->text_vec, rec->dim)))
      goto done;
    if (rec->thumb && rec->thumb_len) {
      char *b64 = vlm_base64_encode(rec->thumb, rec->thumb_len);
      if (!b64 || json_object_set_new(obj, "thumbnail", json_string(b64))) {
        free(b64);
        goto done;
      }
      free(b64);
    }
  }
  /* The kept bytes go with or without the vectors: without them ingest
   * embeds the item's image from these bytes, so the image files need not
   * exist any more. */
  if (rec->image && rec->image_len) {
    char *b64 = vlm_base64_encode(rec->image, rec->image_len);
    if (!b64 || json_object_set_new(obj, "kept_image", json_string(b64))) {
      free(b64);
      goto done;
    }
    free(b64);
  }
  /* Nine significant digits give back the exact float. */
  line = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(9));
done:
  json_decref(obj);
  return line;
}
