/* vlm_npy.c - reading and writing .npy matrices of float32 / float16. */
#include "vlm_npy.h"

#include "vlm_error.h"
#include "vlm_file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

/* ----------------------------------------------------------- halves */

static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else { /* subnormal: normalize */
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while (!(mant & 0x400));
      bits = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* Round to nearest, ties to even, as NumPy's float32 -> float16. */
static uint16_t float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  uint32_t exp = (x >> 23) & 0xff, mant = x & 0x7fffff;
  if (exp == 0xff) /* inf, NaN (kept quiet) */
    return sign | 0x7c00 | (mant ? 0x200 | (mant >> 13) : 0);
  int e = (int)exp - 127 + 15;
  if (e >= 31)
    return sign | 0x7c00;
  if (e <= 0) { /* subnormal half, or zero */
    if (e < -10)
      return sign;
    mant |= 0x800000;
    int shift = 14 - e;
    uint32_t half = mant >> shift, rest = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1)))
      half++;
    return sign | (uint16_t)half;
  }
  uint32_t half = (uint32_t)e << 10 | mant >> 13, rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1)))
    half++; /* may carry into the exponent, up to infinity: right */
  return sign | (uint16_t)half;
}

void vlm_npy_to_f32(float *dst, const void *src, vlm_npy_dtype dtype,
                    size_t n) {
  const uint8_t *p = src;
  if (dtype == VLM_NPY_F32) {
    for (size_t i = 0; i < n; i++) {
      uint32_t b = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                   (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
      memcpy(&dst[i], &b, sizeof b);
    }
  } else {
    for (size_t i = 0; i < n; i++)
      dst[i] = half_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
  }
}

/* ----------------------------------------------------------- header */

typedef struct {
  const char *p, *end;
} cursor;

static void skip_space(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
    c->p++;
}

static int eat(cursor *c, char ch) {
  skip_space(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return 1;
  }
  return 0;
}

/* A Python string literal in single or double quotes, no escapes (none
 * of the keys or descrs vlmdb reads have any). */
static int string_lit(cursor *c, char *out, size_t cap) {
  skip_space(c);
  if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
    return -1;
  char q = *c->p++;
  size_t n = 0;
  while (c->p < c->end && *c->p != q) {
    if (*c->p == '\\' || (unsigned char)*c->p < 0x20 || n + 1 >= cap)
      return -1;
    out[n++] = *c->p++;
  }
  if (c->p >= c->end)
    return -1;
  c->p++;
  out[n] = '\0';
  return 0;
}

static int int_lit(cursor *c, int64_t *out) {
  skip_space(c);
  int64_t v = 0;
  const char *start = c->p;
  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
    if (v > (INT64_MAX - 9) / 10)
      return -1;
    v = v * 10 + (*c->p++ - '0');
  }
  if (c->p == start)
    return -1;
  if (c->p < c->end && *c->p == 'L') /* Python 2 longs */
    c->p++;
  *out = v;
  return 0;
}

static int word(cursor *c, const char *w) {
  skip_space(c);
  size_t n = strlen(w);
  if ((size_t)(c->end - c->p) >= n && !memcmp(c->p, w, n)) {
    c->p += n;
    return 1;
  }
  return 0;
}

int vlm_npy_parse_header(const uint8_t *buf, size_t avail,
                         uint64_t file_size, const char *name,
                         vlm_npy_header *out) {
  const char *who = name ? name : "npy";
  memset(out, 0, sizeof *out);
  if (avail > file_size)
    avail = (size_t)file_size;
  if (avail < 10 || memcmp(buf, magic, sizeof magic))
    return vlm_seterr(VLM_EFORMAT, "%s: not a .npy file (no \\x93NUMPY "
                      "magic)", who);
  int major = buf[6], minor = buf[7];
  size_t hlen, start;
  if (major == 1 && minor == 0) {
    hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    start = 10;
  } else if ((major == 2 || major == 3) && minor == 0) {
    if (avail < 12)
      return vlm_seterr(VLM_EFORMAT, "%s: truncated header", who);
    hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 |
           (size_t)buf[11] << 24;
    start = 12;
  } else {
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: .npy version %d.%d (vlmdb "
                      "reads 1.0, 2.0 and 3.0)", who, major, minor);
  }
  if (hlen > VLM_NPY_MAX_HEADER)
    return vlm_seterr(VLM_EFORMAT, "%s: header of %zu bytes (at most %d)",
                      who, hlen, VLM_NPY_MAX_HEADER);
  if (start + hlen > avail)
    return vlm_seterr(VLM_EFORMAT, "%s: truncated header (%zu bytes "
                      "announced, %zu there)", who, hlen, avail - start);
  const char *h = (const char *)buf + start;
  if (hlen == 0 || h[hlen - 1] != '\n')
    return vlm_seterr(VLM_EFORMAT, "%s: the header does not end with a "
                      "newline", who);
  cursor c = {h, h + hlen - 1};
  /* trailing padding: spaces only */
  while (c.end > c.p && c.end[-1] == ' ')
    c.end--;
  char key[32], descr[32];
  int have_descr = 0, have_order = 0, have_shape = 0, fortran = 0, ndim = 0;
  int64_t shape[2] = {0, 0};
  if (!eat(&c, '{'))
    goto bad;
  while (!eat(&c, '}')) {
    if (string_lit(&c, key, sizeof key) || !eat(&c, ':'))
      goto bad;
    if (!strcmp(key, "descr") && !have_descr) {
      if (string_lit(&c, descr, sizeof descr))
        goto bad;
      have_descr = 1;
    } else if (!strcmp(key, "fortran_order") && !have_order) {
      if (word(&c, "False"))
        fortran = 0;
      else if (word(&c, "True"))
        fortran = 1;
      else
        goto bad;
      have_order = 1;
    } else if (!strcmp(key, "shape") && !have_shape) {
      if (!eat(&c, '('))
        goto bad;
      while (!eat(&c, ')')) {
        int64_t d;
        if (int_lit(&c, &d))
          goto bad;
        if (ndim < 2)
          shape[ndim] = d;
        if (++ndim > 32)
          goto bad;
        if (!eat(&c, ',')) {
          if (!eat(&c, ')'))
            goto bad;
          break;
        }
      }
      have_shape = 1;
    } else {
      return vlm_seterr(VLM_EFORMAT, "%s: header key '%s' unknown or given "
                        "twice", who, key);
    }
    if (!eat(&c, ',')) {
      if (!eat(&c, '}'))
        goto bad;
      break;
    }
  }
  skip_space(&c);
  if (c.p != c.end)
    goto bad;
  if (!have_descr || !have_order || !have_shape)
    return vlm_seterr(VLM_EFORMAT, "%s: the header lacks %s", who,
                      !have_descr ? "'descr'" : !have_order ? "'fortran_order'"
                                                            : "'shape'");
  if (!strcmp(descr, "<f4"))
    out->dtype = VLM_NPY_F32;
  else if (!strcmp(descr, "<f2"))
    out->dtype = VLM_NPY_F16;
  else
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: dtype '%s' (vlmdb reads "
                      "little-endian float32 '<f4' and float16 '<f2')", who,
                      descr);
  if (fortran)
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: Fortran order (vlmdb reads C "
                      "order: save np.ascontiguousarray(x))", who);
  if (ndim != 2)
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: %d dimensions (vlmdb reads a "
                      "rows x dimension matrix)", who, ndim);
  out->rows = shape[0];
  out->cols = shape[1];
  out->data_offset = start + hlen;
  /* rows * cols * size without overflow, and exactly the rest of the file */
  uint64_t rest = file_size - out->data_offset;
  uint64_t r = (uint64_t)out->rows, k = (uint64_t)out->cols,
           size = (uint64_t)out->dtype;
  int overflow = k && r > UINT64_MAX / k / size;
  uint64_t need = overflow ? 0 : r * k * size;
  if (overflow || need > rest)
    return vlm_seterr(VLM_EFORMAT, "%s: truncated: shape (%lld, %lld) needs "
                      "%s%llu bytes of data, the file has %llu", who,
                      (long long)out->rows, (long long)out->cols,
                      overflow ? "more than " : "",
                      (unsigned long long)(overflow ? UINT64_MAX : need),
                      (unsigned long long)rest);
  if (need < rest)
    return vlm_seterr(VLM_EFORMAT, "%s: %llu bytes after the data that shape "
                      "(%lld, %lld) holds", who,
                      (unsigned long long)(rest - need), (long long)out->rows,
                      (long long)out->cols);
  return 0;
bad:
  return vlm_seterr(VLM_EFORMAT, "%s: header is not the dict numpy writes "
                    "(near byte %ld)", who,
                    (long)(c.p - (const char *)buf));
}

/* ------------------------------------------------------------ reading */

struct vlm_npy {
  int fd;
  char *path;
  vlm_npy_header h;
  uint8_t *scratch;
  size_t scratch_cap;
};

int vlm_npy_open(const char *path, vlm_npy **out) {
  *out = NULL;
  vlm_npy *n = calloc(1, sizeof *n);
  uint8_t *buf = malloc(12 + VLM_NPY_MAX_HEADER);
  int rc = 0;
  if (n)
    n->fd = -1;
  if (!n || !buf || !(n->path = strdup(path))) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", path);
    goto fail;
  }
  n->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  struct stat st;
  if (n->fd < 0 || fstat(n->fd, &st) != 0) {
    rc = vlm_seterr(errno == ENOENT ? VLM_ENOTFOUND : VLM_EIO, "%s: %s",
                    path, strerror(errno));
    goto fail;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = vlm_seterr(VLM_ENOTFOUND, "%s: not a regular file", path);
    goto fail;
  }
  size_t want = 12 + VLM_NPY_MAX_HEADER, got = 0;
  while (got < want) {
    ssize_t r = pread(n->fd, buf + got, want - got, (off_t)got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      rc = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
      goto fail;
    }
    if (r == 0)
      break;
    got += (size_t)r;
  }
  if ((rc = vlm_npy_parse_header(buf, got, (uint64_t)st.st_size, path,
                                 &n->h)))
    goto fail;
  free(buf);
  *out = n;
  return 0;
fail:
  free(buf);
  vlm_npy_close(n);
  return rc;
}

const vlm_npy_header *vlm_npy_info(const vlm_npy *npy) { return &npy->h; }

int vlm_npy_read_rows(vlm_npy *npy, int64_t first, int64_t n, float *out) {
  if (first < 0 || n < 0 || first > npy->h.rows || n > npy->h.rows - first)
    return vlm_seterr(VLM_EINVAL, "%s: rows %lld..%lld of %lld", npy->path,
                      (long long)first, (long long)(first + n),
                      (long long)npy->h.rows);
  size_t row_bytes = (size_t)npy->h.cols * npy->h.dtype;
  size_t bytes = (size_t)n * row_bytes;
  if (bytes > npy->scratch_cap) {
    uint8_t *s = realloc(npy->scratch, bytes);
    if (!s)
      return vlm_seterr(VLM_ENOMEM, "%s: %zu bytes", npy->path, bytes);
    npy->scratch = s;
    npy->scratch_cap = bytes;
  }
  off_t at = (off_t)(npy->h.data_offset + (size_t)first * row_bytes);
  size_t got = 0;
  while (got < bytes) {
    ssize_t r = pread(npy->fd, npy->scratch + got, bytes - got,
                      at + (off_t)got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return vlm_seterr(VLM_EIO, "%s: %s", npy->path,
                        r < 0 ? strerror(errno) : "shorter than its header "
                                                  "says (changed while read)");
    got += (size_t)r;
  }
  vlm_npy_to_f32(out, npy->scratch, npy->h.dtype,
                 (size_t)n * (size_t)npy->h.cols);
  return 0;
}

void vlm_npy_close(vlm_npy *npy) {
  if (!npy)
    return;
  if (npy->fd >= 0)
    close(npy->fd);
  free(npy->scratch);
  free(npy->path);
  free(npy);
}

/* ------------------------------------------------------------ writing */

/* The header numpy 1.24 writes for a 2-D float32/float16 array: the dict
 * with room for the first dimension to grow to 21 digits, padded to 128
 * bytes in all (so a file written as a stream can have its row count
 * filled in at the end, and equals numpy's own bytes). */
#define HEADER_BYTES 128

static int format_header(char *header, int64_t rows, int64_t cols,
                         vlm_npy_dtype dtype) {
  char dict[HEADER_BYTES];
  int n = snprintf(dict, sizeof dict,
                   "{'descr': '%s', 'fortran_order': False, 'shape': (%lld, "
                   "%lld), }",
                   dtype == VLM_NPY_F32 ? "<f4" : "<f2", (long long)rows,
                   (long long)cols);
  if (n < 0 || 10 + n + 1 > HEADER_BYTES)
    return -1;
  memset(header, ' ', HEADER_BYTES);
  memcpy(header, magic, sizeof magic);
  header[6] = 1;
  header[7] = 0;
  header[8] = (char)(HEADER_BYTES - 10);
  header[9] = 0;
  memcpy(header + 10, dict, (size_t)n);
  header[HEADER_BYTES - 1] = '\n';
  return 0;
}

struct vlm_npy_writer {
  int fd;
  char *path, *tmp;
  int64_t rows, cols;
  vlm_npy_dtype dtype;
  uint8_t chunk[16384];
};

static int writer_io(vlm_npy_writer *w) {
  return vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s",
                    w->tmp, strerror(errno));
}

int vlm_npy_writer_open(const char *path, int64_t cols, vlm_npy_dtype dtype,
                        vlm_npy_writer **out) {
  *out = NULL;
  if (cols < 0 || cols > (int64_t)1 << 40 ||
      (dtype != VLM_NPY_F32 && dtype != VLM_NPY_F16))
    return vlm_seterr(VLM_EINVAL, "%s: bad arguments", path);
  vlm_npy_writer *w = calloc(1, sizeof *w);
  size_t n = strlen(path);
  if (w)
    w->fd = -1;
  if (!w || !(w->path = strdup(path)) || !(w->tmp = malloc(n + 5))) {
    vlm_npy_writer_abort(w);
    return vlm_seterr(VLM_ENOMEM, "%s", path);
  }
  snprintf(w->tmp, n + 5, "%s.tmp", path);
  w->cols = cols;
  w->dtype = dtype;
  char header[HEADER_BYTES];
  format_header(header, 0, cols, dtype);
  w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w->fd < 0 || vlm_write_all(w->fd, header, sizeof header)) {
    int rc = writer_io(w);
    vlm_npy_writer_abort(w);
    return rc;
  }
  *out = w;
  return 0;
}

int vlm_npy_writer_append(vlm_npy_writer *w, const float *data, int64_t rows) {
  size_t total = (size_t)rows * (size_t)w->cols, done = 0;
  size_t per = sizeof w->chunk / (size_t)w->dtype;
  while (done < total) {
    size_t k = total - done < per ? total - done : per;
    for (size_t i = 0; i < k; i++) {
      float f = data[done + i];
      if (w->dtype == VLM_NPY_F32) {
        uint32_t b;
        memcpy(&b, &f, sizeof b);
        w->chunk[4 * i] = (uint8_t)b;
        w->chunk[4 * i + 1] = (uint8_t)(b >> 8);
        w->chunk[4 * i + 2] = (uint8_t)(b >> 16);
        w->chunk[4 * i + 3] = (uint8_t)(b >> 24);
      } else {
        uint16_t hv = float_to_half(f);
        w->chunk[2 * i] = (uint8_t)hv;
        w->chunk[2 * i + 1] = (uint8_t)(hv >> 8);
      }
    }
    if (vlm_write_all(w->fd, w->chunk, k * (size_t)w->dtype))
      return writer_io(w);
    done += k;
  }
  w->rows += rows;
  return 0;
}

int vlm_npy_writer_finish(vlm_npy_writer *w) {
  char header[HEADER_BYTES];
  int rc = 0;
  if (format_header(header, w->rows, w->cols, w->dtype) ||
      pwrite(w->fd, header, sizeof header, 0) != (ssize_t)sizeof header ||
      fsync(w->fd) != 0) {
    rc = writer_io(w);
  } else {
    int e = close(w->fd);
    w->fd = -1;
    if (e != 0 || rename(w->tmp, w->path) != 0)
      rc = writer_io(w);
  }
  if (rc) {
    vlm_npy_writer_abort(w);
    return rc;
  }
  free(w->path);
  free(w->tmp);
  free(w);
  return 0;
}

void vlm_npy_writer_abort(vlm_npy_writer *w) {
  if (!w)
    return;
  if (w->fd >= 0)
    close(w->fd);
  if (w->tmp)
    unlink(w->tmp);
  free(w->path);
  free(w->tmp);
  free(w);
}

int vlm_npy_write(const char *path, const float *data, int64_t rows,
                  int64_t cols, vlm_npy_dtype dtype) {
  vlm_npy_writer *w;
  if (rows < 0 || (rows && cols && !data))
    return vlm_seterr(VLM_EINVAL, "%s: bad arguments", path);
  int rc = vlm_npy_writer_open(path, cols, dtype, &w);
  if (rc)
    return rc;
  if ((rc = vlm_npy_writer_append(w, data, rows))) {
    vlm_npy_writer_abort(w);
    return rc;
  }
  return vlm_npy_writer_finish(w);
}
