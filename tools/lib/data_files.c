/* data_files.c - the split hash, IDX and gzip input, PNG headers and
 * grayscale PNG output for the catalog builders. */
#include "vlm_data.h"
#include "vlm_error.h"

#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* ---- split ----------------------------------------------------------- */

uint64_t vlm_data_fnv1a64(const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

int vlm_data_is_test(const char *key) {
  return vlm_data_fnv1a64(key, strlen(key)) % 10 == 0;
}

/* ---- IDX ------------------------------------------------------------- */

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int vlm_data_idx_parse(const uint8_t *buf, size_t len, vlm_data_idx *out) {
  memset(out, 0, sizeof *out);
  if (len < 4 || buf[0] != 0 || buf[1] != 0)
    return vlm_seterr(VLM_EFORMAT, "idx: bad magic");
  if (buf[2] != 0x08)
    return vlm_seterr(VLM_EUNSUPPORTED, "idx: element type 0x%02x (only 0x08)", buf[2]);
  int ndim = buf[3];
  if (ndim < 1 || ndim > 4)
    return vlm_seterr(VLM_EFORMAT, "idx: %d dimensions (1..4)", ndim);
  size_t header = 4 + 4 * (size_t)ndim;
  if (len < header)
    return vlm_seterr(VLM_ECORRUPT, "idx: %zu bytes, header needs %zu", len, header);
  size_t count = 1;
  for (int i = 0; i < ndim; i++) {
    out->dims[i] = be32(buf + 4 + 4 * i);
    if (out->dims[i] && count > SIZE_MAX / out->dims[i])
      return vlm_seterr(VLM_ECORRUPT, "idx: size overflows");
    count *= out->dims[i];
  }
  if (len - header != count)
    return vlm_seterr(VLM_ECORRUPT, "idx: %zu data bytes, header says %zu",
                      len - header, count);
  out->ndim = ndim;
  out->count = count;
  out->data = buf + header;
  return 0;
}

int vlm_data_read_gz(const char *path, size_t max_len, uint8_t **buf,
                     size_t *len) {
  *buf = NULL;
  *len = 0;
  /* gzread passes through files that are not gzip-compressed. */
  gzFile gz = gzopen(path, "rb");
  if (!gz) return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno ? errno : ENOMEM));
  /* Read at most max_len + 1 bytes: one more than allowed means too big. */
  size_t limit = max_len < SIZE_MAX ? max_len + 1 : max_len;
  size_t cap = limit < ((size_t)1 << 20) ? limit : (size_t)1 << 20, n = 0;
  uint8_t *data = malloc(cap ? cap : 1);
  int rc = 0;
  if (!data) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", path);
    goto fail;
  }
  for (;;) {
    if (n == cap) {
      if (cap >= limit) break;
      size_t grown_cap = cap > limit / 2 ? limit : cap * 2;
      uint8_t *grown = realloc(data, grown_cap);
      if (!grown) {
        rc = vlm_seterr(VLM_ENOMEM, "%s", path);
        goto fail;
      }
      data = grown;
      cap = grown_cap;
    }
    size_t want = cap - n > (1u << 30) ? (1u << 30) : cap - n;
    int got = gzread(gz, data + n, (unsigned)want);
    if (got < 0) {
      int zerr;
      const char *msg = gzerror(gz, &zerr);
      rc = vlm_seterr(VLM_ECORRUPT, "%s: %s", path, msg);
      goto fail;
    }
    if (got == 0) break;
    n += (size_t)got;
  }
  if (n > max_len) {
    rc = vlm_seterr(VLM_ETOOBIG, "%s: more than %zu bytes", path, max_len);
    goto fail;
  }
  /* A truncated gzip stream reads as a short file without error: check. */
  {
    int zerr;
    gzerror(gz, &zerr);
    if (zerr != Z_OK && zerr != Z_STREAM_END) {
      rc = vlm_seterr(VLM_ECORRUPT, "%s: truncated gzip stream", path);
      goto fail;
    }
  }
  gzclose(gz);
  *buf = data;
  *len = n;
  return 0;
fail:
  free(data);
  gzclose(gz);
  return rc;
}

/* ---- PNG ------------------------------------------------------------- */

int vlm_data_png_info_read(const char *path, vlm_data_png_info *out) {
  memset(out, 0, sizeof *out);
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  uint8_t head[33];
  FILE *f = fopen(path, "rb");
  if (!f) return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  size_t got = fread(head, 1, sizeof head, f);
  fclose(f);
  if (got < sizeof head || memcmp(head, sig, 8) || memcmp(head + 12, "IHDR", 4) ||
      be32(head + 8) != 13)
    return vlm_seterr(VLM_EFORMAT, "%s: not a PNG", path);
  out->width = be32(head + 16);
  out->height = be32(head + 20);
  out->bit_depth = head[24];
  out->color_type = head[25];
  out->interlace = head[28];
  if (!out->width || !out->height)
    return vlm_seterr(VLM_EFORMAT, "%s: PNG of %ux%u", path, out->width, out->height);
  return 0;
}

int vlm_data_png_pixels_read(const char *path, uint64_t max_pixels,
                             vlm_data_png_pixels *out) {
  memset(out, 0, sizeof *out);
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path))
    return vlm_seterr(VLM_EFORMAT, "%s: %s", path, image.message);
  uint64_t npix = (uint64_t)image.width * image.height;
  if (npix > max_pixels) {
    png_image_free(&image);
    return vlm_seterr(VLM_ETOOBIG, "%s: %ux%u pixels", path, image.width, image.height);
  }
  image.format = PNG_FORMAT_RGBA;
  size_t size = PNG_IMAGE_SIZE(image);
  uint8_t *px = malloc(size ? size : 1);
  if (!px) {
    png_image_free(&image);
    return vlm_seterr(VLM_ENOMEM, "%s: %zu bytes", path, size);
  }
  if (!png_image_finish_read(&image, NULL, px, 0, NULL)) {
    int rc = vlm_seterr(VLM_ECORRUPT, "%s: %s", path, image.message);
    png_image_free(&image);
    free(px);
    return rc;
  }
  /* Colour of pixel i composited over white, as 0xRRGGBB.  libpng's
   * RGBA output is not premultiplied. */
#define ON_WHITE(p, c) ((p)[c] * (p)[3] + 255 * (255 - (p)[3]) + 127) / 255
  unsigned w0 = (unsigned)(ON_WHITE(px, 0) << 16 | ON_WHITE(px, 1) << 8 | ON_WHITE(px, 2));
  int same_white = 1, same_raw = 1;
  uint64_t ntransparent = 0;
  double luma_transparent = 0;
  for (uint64_t i = 0; i < npix; i++) {
    const uint8_t *p = px + 4 * i;
    if (same_white) {
      unsigned w = (unsigned)(ON_WHITE(p, 0) << 16 | ON_WHITE(p, 1) << 8 | ON_WHITE(p, 2));
      same_white = w == w0;
    }
    if (same_raw) same_raw = p[0] == px[0] && p[1] == px[1] && p[2] == px[2];
    if (p[3] < 128) {
      ntransparent++;
      luma_transparent += 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    }
  }
#undef ON_WHITE
  out->blank_on_white = same_white;
  out->blank_no_alpha = same_raw;
  out->transparent = npix ? (double)ntransparent / (double)npix : 0;
  out->dark_background = ntransparent && luma_transparent / (double)ntransparent < 64;
  png_image_free(&image);
  free(px);
  return 0;
}

int vlm_data_png_write_gray(const char *path, const uint8_t *pixels, int w,
                            int h) {
  if (w <= 0 || h <= 0) return vlm_seterr(VLM_EINVAL, "%s: %dx%d", path, w, h);
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 16);
  if (!tmp) return vlm_seterr(VLM_ENOMEM, "%s", path);
  snprintf(tmp, plen + 16, "%s.tmp%d", path, (int)getpid());
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = (png_uint_32)w;
  image.height = (png_uint_32)h;
  image.format = PNG_FORMAT_GRAY;
  int rc = 0;
  if (!png_image_write_to_file(&image, tmp, 0, pixels, w, NULL)) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", tmp, image.message);
    unlink(tmp);
  } else if ((unlink(path) && errno != ENOENT) || rename(tmp, path)) {
    /* Unlink first: ext4 flushes data synchronously when a rename
     * replaces a file (auto_da_alloc), which makes rewriting 70,000 small
     * files take minutes instead of seconds. */
    rc = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
    unlink(tmp);
  }
  png_image_free(&image);
  free(tmp);
  return rc;
}
