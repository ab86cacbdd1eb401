/* safetensors.c - map and validate a safetensors file. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vlm_error.h"

/* The reference implementation refuses headers above 100 MB; so do we,
 * which also bounds what a hostile length can make the JSON parser do. */
#define ST_MAX_HEADER (100u << 20)

static const struct {
  const char *name;
  int size;
} dtypes[VLM__DT_COUNT] = {
    [VLM__DT_F64] = {"F64", 8},   [VLM__DT_F32] = {"F32", 4},
    [VLM__DT_F16] = {"F16", 2},   [VLM__DT_BF16] = {"BF16", 2},
    [VLM__DT_I64] = {"I64", 8},   [VLM__DT_I32] = {"I32", 4},
    [VLM__DT_I16] = {"I16", 2},   [VLM__DT_I8] = {"I8", 1},
    [VLM__DT_U64] = {"U64", 8},   [VLM__DT_U32] = {"U32", 4},
    [VLM__DT_U16] = {"U16", 2},   [VLM__DT_U8] = {"U8", 1},
    [VLM__DT_BOOL] = {"BOOL", 1}, [VLM__DT_F8_E4M3] = {"F8_E4M3", 1},
    [VLM__DT_F8_E5M2] = {"F8_E5M2", 1},
};

int vlm__dtype_size(vlm__dtype dt) {
  return (unsigned)dt < VLM__DT_COUNT ? dtypes[dt].size : 0;
}

const char *vlm__dtype_name(vlm__dtype dt) {
  return (unsigned)dt < VLM__DT_COUNT ? dtypes[dt].name : "?";
}

static int dtype_parse(const char *s, vlm__dtype *out) {
  for (int i = 0; i < VLM__DT_COUNT; i++)
    if (!strcmp(s, dtypes[i].name)) {
      *out = (vlm__dtype)i;
      return 0;
    }
  return -1;
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const vlm__st_tensor *)a)->name,
                ((const vlm__st_tensor *)b)->name);
}

static int by_offset(const void *a, const void *b) {
  const vlm__st_tensor *x = *(const vlm__st_tensor *const *)a;
  const vlm__st_tensor *y = *(const vlm__st_tensor *const *)b;
  if (x->offset != y->offset)
    return x->offset < y->offset ? -1 : 1;
  return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Read one tensor entry of the header into t; data is the data region. */
static int parse_entry(const char *label, const char *name, json_t *v,
                       const uint8_t *data, uint64_t data_len,
                       vlm__st_tensor *t) {
  if (!json_is_object(v))
    return vlm_seterr(VLM_EFORMAT, "%s: tensor %s: entry is not an object",
                      label, name);
  json_t *jdt = json_object_get(v, "dtype");
  json_t *jshape = json_object_get(v, "shape");
  json_t *joff = json_object_get(v, "data_offsets");
  if (!json_is_string(jdt))
    return vlm_seterr(VLM_EFORMAT, "%s: tensor %s: missing or non-string dtype",
                      label, name);
  if (dtype_parse(json_string_value(jdt), &t->dtype))
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: tensor %s: unknown dtype '%.32s'",
                      label, name, json_string_value(jdt));
  if (!json_is_array(jshape))
    return vlm_seterr(VLM_EFORMAT, "%s: tensor %s: missing or non-array shape",
                      label, name);
  size_t ndim = json_array_size(jshape);
  if (ndim > VLM__ST_MAX_DIMS)
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: tensor %s: %zu dimensions (max %d)",
                      label, name, ndim, VLM__ST_MAX_DIMS);
  t->ndim = (int)ndim;
  /* Bound numel so numel * 8 cannot overflow. */
  const int64_t numel_max = INT64_C(1) << 58;
  int64_t numel = 1;
  for (size_t i = 0; i < ndim; i++) {
    json_t *d = json_array_get(jshape, i);
    if (!json_is_integer(d) || json_integer_value(d) < 0)
      return vlm_seterr(VLM_EFORMAT,
                        "%s: tensor %s: shape[%zu] is not a non-negative integer",
                        label, name, i);
    int64_t dim = json_integer_value(d);
    t->shape[i] = dim;
    if (dim != 0 && numel > numel_max / dim)
      return vlm_seterr(VLM_ECORRUPT, "%s: tensor %s: shape too large", label,
                        name);
    numel *= dim;
  }
  t->numel = numel;
  if (!json_is_array(joff) || json_array_size(joff) != 2 ||
      !json_is_integer(json_array_get(joff, 0)) ||
      !json_is_integer(json_array_get(joff, 1)))
    return vlm_seterr(VLM_EFORMAT,
                      "%s: tensor %s: data_offsets is not [begin, end]", label,
                      name);
  json_int_t begin = json_integer_value(json_array_get(joff, 0));
  json_int_t end = json_integer_value(json_array_get(joff, 1));
  if (begin < 0 || end < begin)
    return vlm_seterr(VLM_ECORRUPT,
                      "%s: tensor %s: data_offsets [%lld, %lld] are invalid",
                      label, name, (long long)begin, (long long)end);
  if ((uint64_t)end > data_len)
    return vlm_seterr(VLM_ECORRUPT,
                      "%s: tensor %s: data_offsets [%lld, %lld] past the end "
                      "of the data (%llu bytes; file truncated?)",
                      label, name, (long long)begin, (long long)end,
                      (unsigned long long)data_len);
  uint64_t want = (uint64_t)numel * (uint64_t)dtypes[t->dtype].size;
  if ((uint64_t)(end - begin) != want)
    return vlm_seterr(VLM_ECORRUPT,
                      "%s: tensor %s: %lld data bytes but shape and dtype %s "
                      "need %llu",
                      label, name, (long long)(end - begin),
                      dtypes[t->dtype].name, (unsigned long long)want);
  t->offset = (uint64_t)begin;
  t->nbytes = want;
  t->data = data + begin;
  return 0;
}

int vlm__st_parse(const void *buf, size_t len, const char *label,
                  vlm__safetensors **out) {
  int rc = 0;
  json_t *root = NULL;
  vlm__st_tensor **order = NULL;
  vlm__safetensors *st = NULL;
  const uint8_t *bytes = buf;
  *out = NULL;
  if (!label)
    label = "safetensors";
  if (len < 8)
    return vlm_seterr(VLM_ECORRUPT, "%s: file is %zu bytes, too short for a "
                      "safetensors header", label, len);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = hlen << 8 | bytes[i];
  if (hlen > len - 8)
    return vlm_seterr(VLM_ECORRUPT,
                      "%s: header length %llu runs past the end of the file "
                      "(%zu bytes)",
                      label, (unsigned long long)hlen, len);
  if (hlen > ST_MAX_HEADER)
    return vlm_seterr(VLM_ECORRUPT, "%s: header length %llu exceeds %u bytes",
                      label, (unsigned long long)hlen, ST_MAX_HEADER);
  const uint8_t *data = bytes + 8 + hlen;
  uint64_t data_len = len - 8 - hlen;

  json_error_t jerr;
  root = json_loadb((const char *)bytes + 8, (size_t)hlen,
                    JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: header JSON: %s (byte %d)", label,
                    jerr.text, jerr.position);
    goto fail;
  }
  if (!json_is_object(root)) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: header is not a JSON object", label);
    goto fail;
  }

  st = calloc(1, sizeof *st);
  if (!st)
    goto nomem;
  st->path = strdup(label);
  size_t n = 0, names_len = 0;
  const char *key;
  json_t *value;
  json_object_foreach(root, key, value) {
    if (!strcmp(key, "__metadata__"))
      continue;
    n++;
    names_len += strlen(key) + 1;
  }
  st->tensors = calloc(n ? n : 1, sizeof *st->tensors);
  st->names = malloc(names_len ? names_len : 1);
  order = malloc((n ? n : 1) * sizeof *order);
  if (!st->path || !st->tensors || !st->names || !order)
    goto nomem;

  char *name_at = st->names;
  size_t i = 0;
  json_object_foreach(root, key, value) {
    if (!strcmp(key, "__metadata__")) {
      if (!json_is_object(value)) {
        rc = vlm_seterr(VLM_EFORMAT, "%s: __metadata__ is not an object",
                        label);
        goto fail;
      }
      /* vlmdb reads one key (vlmdb.quantization); other keys and
       * non-string values are kept out, as the format allows only
       * strings there anyway. */
      json_t *q = json_object_get(value, "vlmdb.quantization");
      if (q && json_is_string(q) && !(st->quantization =
                                          strdup(json_string_value(q))))
        goto nomem;
      continue;
    }
    vlm__st_tensor *t = &st->tensors[i];
    size_t klen = strlen(key) + 1;
    memcpy(name_at, key, klen);
    t->name = name_at;
    name_at += klen;
    rc = parse_entry(label, t->name, value, data, data_len, t);
    if (rc)
      goto fail;
    order[i] = t;
    i++;
  }
  st->n_tensors = (int)n;

  /* No two tensors may share bytes: a writer that overlaps them is broken,
   * and a reader would silently alias weights. */
  qsort(order, n, sizeof *order, by_offset);
  for (size_t k = 1; k < n; k++) {
    const vlm__st_tensor *a = order[k - 1], *b = order[k];
    if (a->nbytes && b->nbytes && b->offset < a->offset + a->nbytes) {
      rc = vlm_seterr(VLM_ECORRUPT, "%s: tensors %s and %s overlap", label,
                      a->name, b->name);
      goto fail;
    }
  }
  qsort(st->tensors, n, sizeof *st->tensors, by_name);
  free(order);
  json_decref(root);
  *out = st;
  return 0;

nomem:
  rc = vlm_seterr(VLM_ENOMEM, "%s: out of memory reading the header", label);
fail:
  free(order);
  json_decref(root);
  vlm__st_close(st);
  return rc;
}

int vlm__st_open(const char *path, vlm__safetensors **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return vlm_seterr(errno == ENOENT ? VLM_ENOTFOUND : VLM_EIO, "%s: %s",
                      path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb)) {
    int e = errno;
    close(fd);
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(e));
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    return vlm_seterr(VLM_EIO, "%s: not a regular file", path);
  }
  size_t len = (size_t)sb.st_size;
  void *map = NULL;
  if (len > 0) {
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      int e = errno;
      close(fd);
      return vlm_seterr(VLM_EIO, "%s: mmap: %s", path, strerror(e));
    }
  }
  close(fd);
  static const uint8_t empty[1];
  vlm__safetensors *st;
  int rc = vlm__st_parse(map ? map : empty, len, path, &st);
  if (rc) {
    if (map)
      munmap(map, len);
    return rc;
  }
  st->map = map;
  st->map_len = len;
  *out = st;
  return 0;
}

const vlm__st_tensor *vlm__st_find(const vlm__safetensors *st,
                                   const char *name) {
  if (!st || !name)
    return NULL;
  vlm__st_tensor key = {.name = name};
  return bsearch(&key, st->tensors, (size_t)st->n_tensors,
                 sizeof *st->tensors, by_name);
}

void vlm__st_close(vlm__safetensors *st) {
  if (!st)
    return;
  if (st->map)
    munmap(st->map, st->map_len);
  free(st->tensors);
  free(st->names);
  free(st->path);
  free(st->quantization);
  free(st);
}
