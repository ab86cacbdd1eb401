/* safetensors_write.c - the safetensors writer (see safetensors_write.h).
 *
 * Layout: 8-byte little-endian header length, the JSON header padded with
 * spaces to a multiple of 8, then the tensors back to back in the order
 * given.  Little-endian hosts only (as the reader).
 */
#include "safetensors_write.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vlm_error.h"

uint16_t vlm__f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu, man = x & 0x7fffffu;
  if (exp == 0xff) /* inf, or NaN kept quiet */
    return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0));
  int e = (int)exp - 127 + 15;
  if (e >= 0x1f)
    return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) { /* subnormal half (or zero) */
    if (e < -10)
      return (uint16_t)sign;
    man |= 0x800000u;
    int shift = 14 - e;
    uint32_t half = man >> shift, rem = man & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1)))
      half++;
    return (uint16_t)(sign | half);
  }
  uint32_t half = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1)))
    half++; /* a carry into the exponent is the correct rounding */
  return (uint16_t)(sign | half);
}

typedef struct {
  char *s;
  size_t len, cap;
  int fail;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->fail)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = (b->cap ? b->cap * 2 : 4096) + n;
    char *p = realloc(b->s, cap);
    if (!p) {
      b->fail = 1;
      return;
    }
    b->s = p;
    b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s) {
  sb_add(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[8];
    if (*p == '"' || *p == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*p;
      sb_add(b, esc, 2);
    } else if (*p < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      sb_str(b, esc);
    } else {
      sb_add(b, (const char *)p, 1);
    }
  }
  sb_add(b, "\"", 1);
}

static int write_all(FILE *f, const void *p, size_t n) {
  return fwrite(p, 1, n, f) == n ? 0 : -1;
}

int vlm__safetensors_write(const char *path, const vlm__stw_tensor *t, int n,
                           int f16, const char *const *meta) {
  sbuf h = {0};
  char *tmp = NULL;
  FILE *f = NULL;
  int rc = 0;
  uint64_t offset = 0;
  size_t esize = f16 ? 2 : 4;
  sb_str(&h, "{");
  if (meta && meta[0]) {
    sb_str(&h, "\"__metadata__\":{");
    for (int i = 0; meta[i] && meta[i + 1]; i += 2) {
      if (i)
        sb_str(&h, ",");
      sb_json_string(&h, meta[i]);
      sb_str(&h, ":");
      sb_json_string(&h, meta[i + 1]);
    }
    sb_str(&h, "}");
  }
  for (int i = 0; i < n; i++) {
    if (strpbrk(t[i].name, "\"\\") || !t[i].name[0] || t[i].ndim < 0 ||
        t[i].ndim > 8) {
      rc = vlm_seterr(VLM_EINVAL, "%s: bad tensor name or rank '%s'", path,
                      t[i].name);
      goto done;
    }
    uint64_t numel = 1;
    char num[64];
    if (i || (meta && meta[0]))
      sb_str(&h, ",");
    sb_json_string(&h, t[i].name);
    sb_str(&h, f16 ? ":{\"dtype\":\"F16\",\"shape\":[" :
                     ":{\"dtype\":\"F32\",\"shape\":[");
    for (int d = 0; d < t[i].ndim; d++) {
      snprintf(num, sizeof num, "%s%lld", d ? "," : "",
               (long long)t[i].shape[d]);
      sb_str(&h, num);
      numel *= (uint64_t)t[i].shape[d];
    }
    snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}",
             (unsigned long long)offset,
             (unsigned long long)(offset + numel * esize));
    sb_str(&h, num);
    offset += numel * esize;
  }
  sb_str(&h, "}");
  while (!h.fail && h.len % 8)
    sb_str(&h, " ");
  if (h.fail) {
    rc = vlm_seterr(VLM_ENOMEM, "%s: header", path);
    goto done;
  }
  size_t plen = strlen(path) + 5;
  tmp = malloc(plen);
  if (!tmp) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", path);
    goto done;
  }
  snprintf(tmp, plen, "%s.tmp", path);
  f = fopen(tmp, "wb");
  if (!f) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
    goto done;
  }
  uint8_t len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
  int bad = write_all(f, len8, 8) || write_all(f, h.s, h.len);
  uint16_t chunk[4096];
  for (int i = 0; i < n && !bad; i++) {
    size_t numel = 1;
    for (int d = 0; d < t[i].ndim; d++)
      numel *= (size_t)t[i].shape[d];
    if (!f16) {
      bad = write_all(f, t[i].data, numel * 4);
      continue;
    }
    for (size_t j = 0; j < numel && !bad; j += 4096) {
      size_t m = numel - j < 4096 ? numel - j : 4096;
      for (size_t k = 0; k < m; k++)
        chunk[k] = vlm__f32_to_f16(t[i].data[j + k]);
      bad = write_all(f, chunk, m * 2);
    }
  }
  if (bad || fflush(f) || fsync(fileno(f))) {
    int e = errno;
    rc = vlm_seterr(e == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s", tmp,
                    strerror(e));
    goto done;
  }
  if (fclose(f)) {
    f = NULL;
    rc = vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
    goto done;
  }
  f = NULL;
  if (rename(tmp, path)) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
    goto done;
  }
done:
  if (f)
    fclose(f);
  if (rc && tmp)
    unlink(tmp);
  free(tmp);
  free(h.s);
  return rc;
}
