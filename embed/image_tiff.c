/* image_tiff.c - TIFF decoding (libtiff) into the modes Pillow 9.4's
 * TiffImagePlugin opens them in (its OPEN_INFO table), first directory:
 *
 *   photometric          samples (bits)            mode    as Pillow's raw mode
 *   0 min-is-white       1 (1)                     1       1;I   (0 bit = white)
 *   0 min-is-white       1 (2, 4, 8)               L       L;2I, L;4I, L;I
 *   1 min-is-black       1 (1)                     1       1
 *   1 min-is-black       1 (2, 4, 8)               L       L;2, L;4 (scaled), L
 *   0 (II) / 1           1 (16)                    I;16    I;16 / I;16B
 *   1                    2 (8), extra unassoc.     LA      LA
 *   2 RGB / 6 JPEG YCbCr 3 (8, 16)                 RGB     RGB, RGB;16N (high byte)
 *   2 RGB                4+ (8, 16), extra 0       RGB     RGBX (X dropped)
 *   2 RGB                4+ (8, 16), extra 1       RGBA    RGBa (unpremultiplied)
 *   2 RGB                4+ (8, 16), extra 2/none  RGBA    RGBA
 *   3 palette            1 (1, 2, 4, 8)            P       P;1..P (colormap >> 8)
 *   5 separated          4+ (8), extra 0 / none    CMYK    CMYK, CMYKX
 *   5 separated (II)     4 (16)                    CMYK    CMYK;16N (high byte)
 *
 * Compression, fill order and tiles are libtiff's business (Pillow uses
 * libtiff for every compressed file and unpacks the same bytes);
 * planar-separate files are interleaved here.  Anything else (floats,
 * signed or 12/32-bit samples, palette + alpha, Lab, uncompressed YCbCr)
 * is VLM_EUNSUPPORTED, as Pillow refuses or converts them differently.
 *
 * Orientation: Pillow transposes the pixels by the Orientation tag when it
 * loads them; so does this decoder (see image.h), reporting 1.
 *
 * libtiff's errors and warnings go to handlers of this open only (libtiff
 * 4.5's TIFFOpenOptions), never to stderr; its allocations are capped.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tiffio.h>

#include "image.h"
#include "vlm_error.h"

typedef struct {
  const uint8_t *data;
  size_t len;
  toff_t pos;
  char msg[256];
} tiff_src;

static tmsize_t tiff_read(thandle_t h, void *buf, tmsize_t n) {
  tiff_src *s = h;
  if (n < 0 || s->pos >= s->len) return 0;
  size_t k = (size_t)n < s->len - s->pos ? (size_t)n : s->len - (size_t)s->pos;
  memcpy(buf, s->data + s->pos, k);
  s->pos += k;
  return (tmsize_t)k;
}

static tmsize_t tiff_write(thandle_t h, void *buf, tmsize_t n) {
  (void)h;
  (void)buf;
  (void)n;
  return -1;
}

static toff_t tiff_seek(thandle_t h, toff_t off, int whence) {
  tiff_src *s = h;
  uint64_t base = whence == SEEK_CUR ? s->pos : whence == SEEK_END ? s->len : 0;
  if (off > UINT64_MAX - base) return (toff_t)-1;
  s->pos = base + off;
  return s->pos;
}

static int tiff_close(thandle_t h) {
  (void)h;
  return 0;
}

static toff_t tiff_size(thandle_t h) { return ((tiff_src *)h)->len; }

static int tiff_map(thandle_t h, void **base, toff_t *size) {
  tiff_src *s = h;
  *base = (void *)(uintptr_t)s->data;
  *size = s->len;
  return 1;
}

static void tiff_unmap(thandle_t h, void *base, toff_t size) {
  (void)h;
  (void)base;
  (void)size;
}

/* The first error is kept for the message; warnings are dropped. */
static int tiff_error(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
  (void)tif;
  (void)module;
  tiff_src *s = user;
  if (!s->msg[0]) vsnprintf(s->msg, sizeof s->msg, fmt, ap);
  return 1;
}

static int tiff_warning(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
  (void)tif;
  (void)user;
  (void)module;
  (void)fmt;
  (void)ap;
  return 1;
}

/* MULDIV-free unpremultiply of Pillow's unpackRGBa: c * 255 / a, clipped;
 * a = 0 gives all zeros. */
static void unpremultiply_rgba(uint8_t *p) {
  unsigned a = p[3];
  if (a == 255) return;
  for (int c = 0; c < 3; c++) {
    unsigned v = a ? p[c] * 255u / a : 0;
    p[c] = v > 255 ? 255 : (uint8_t)v;
  }
}

typedef struct {
  int photo, bps, spp, extra, le; /* extra: the first extra sample's type, -1 none */
  vlm__image_mode mode;
} tiff_layout;

/* One row of interleaved samples (spp of bps bits, the file's bit order
 * already normalized by libtiff, 16-bit samples in host order) into a row
 * of the mode. */
static void tiff_unpack_row(const tiff_layout *L, const uint8_t *in, int w, uint8_t *out) {
  switch (L->mode) {
  case VLM__MODE_1:
    for (int x = 0; x < w; x++) {
      int bit = in[x >> 3] >> (7 - (x & 7)) & 1;
      out[x] = (bit ^ (L->photo == 0)) ? 255 : 0;
    }
    break;
  case VLM__MODE_P:
    for (int x = 0; x < w; x++) {
      int per = 8 / L->bps, shift = 8 - L->bps * (x % per + 1);
      out[x] = (uint8_t)(in[x / per] >> shift & ((1 << L->bps) - 1));
    }
    break;
  case VLM__MODE_L:
    for (int x = 0; x < w; x++) {
      int per = 8 / L->bps, shift = 8 - L->bps * (x % per + 1);
      int v = (in[x / per] >> shift & ((1 << L->bps) - 1)) * (255 / ((1 << L->bps) - 1));
      out[x] = (uint8_t)(L->photo == 0 ? 255 - v : v);
    }
    break;
  case VLM__MODE_I16:
    memcpy(out, in, (size_t)w * 2);
    break;
  default: { /* LA, RGB, RGBA, CMYK: the first channels, 16 bits to their high byte */
    int C = L->mode == VLM__MODE_LA ? 2 : L->mode == VLM__MODE_RGB ? 3 : 4;
    for (int x = 0; x < w; x++) { /* extra samples past C (RGBX's X) are skipped */
      for (int c = 0; c < C; c++) {
        size_t at = (size_t)x * L->spp + c;
        out[(size_t)x * C + c] =
            L->bps == 16 ? (uint8_t)(((const uint16_t *)(const void *)in)[at] >> 8) : in[at];
      }
      if (L->mode == VLM__MODE_RGBA && L->extra == 1) unpremultiply_rgba(out + (size_t)x * 4);
    }
    break;
  }
  }
}

/* Pillow's mode for the file's layout (the table above), or -1. */
static int tiff_mode(const tiff_layout *L) {
  int p = L->photo, b = L->bps, s = L->spp;
  if ((p == 0 || p == 1) && s == 1 && L->extra < 0) {
    if (b == 1) return VLM__MODE_1;
    if (b == 2 || b == 4 || b == 8) return VLM__MODE_L;
    if (b == 16 && (p == 1 || L->le)) return VLM__MODE_I16;
    return -1;
  }
  if (p == 1 && s == 2 && b == 8 && L->extra == 2) return VLM__MODE_LA;
  if (p == 2 && (b == 8 || b == 16)) {
    if (s == 3 && L->extra < 0) return VLM__MODE_RGB;
    if (s == 4 && L->extra < 0) return VLM__MODE_RGBA;
    if (s >= 4 && s <= (b == 8 ? 6 : 4) && L->extra >= 0)
      return L->extra == 0 ? VLM__MODE_RGB : VLM__MODE_RGBA;
    return -1;
  }
  if (p == 3 && s == 1 && L->extra < 0 && (b == 1 || b == 2 || b == 4 || b == 8))
    return VLM__MODE_P;
  if (p == 5 && b == 8 && ((s == 4 && L->extra < 0) || (s >= 5 && s <= 6 && L->extra == 0)))
    return VLM__MODE_CMYK;
  if (p == 5 && b == 16 && s == 4 && L->extra < 0 && L->le) return VLM__MODE_CMYK;
  return -1;
}

int vlm__decode_tiff(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out) {
  tiff_src src = {.data = data, .len = len};
  TIFFOpenOptions *oo = TIFFOpenOptionsAlloc();
  if (!oo) return vlm_seterr(VLM_ENOMEM, "TIFF: options");
  TIFFOpenOptionsSetErrorHandlerExtR(oo, tiff_error, &src);
  TIFFOpenOptionsSetWarningHandlerExtR(oo, tiff_warning, &src);
  /* no single allocation past what the largest capped image needs */
  uint64_t cap = max_pixels * 8 + (1u << 20);
  TIFFOpenOptionsSetMaxSingleMemAlloc(oo, (tmsize_t)(cap < (1ull << 40) ? cap : (1ull << 40)));
  TIFF *tif = TIFFClientOpenExt("TIFF", "rm", &src, tiff_read, tiff_write, tiff_seek, tiff_close,
                                tiff_size, tiff_map, tiff_unmap, oo);
  TIFFOpenOptionsFree(oo);
  if (!tif)
    return vlm_seterr(VLM_ECORRUPT, "TIFF: %s", src.msg[0] ? src.msg : "cannot read the header");
  int rc = 0;
  uint8_t *raw = NULL, *row = NULL;
  uint32_t w = 0, h = 0;
  uint16_t bps = 1, spp = 1, photo = 0, sf = 1, planar = 1, orient = 1, compression = 1;
  uint16_t n_extra = 0, *extra = NULL;
  if (!TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w) || !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h)) {
    rc = vlm_seterr(VLM_ECORRUPT, "TIFF: no image size");
    goto done;
  }
  if ((rc = vlm__image_check_dims(w, h, max_pixels, "TIFF"))) goto done;
  TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bps);
  TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &spp);
  TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &sf);
  TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &planar);
  TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
  if (!TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photo)) photo = 0; /* Pillow's default */
  if (!TIFFGetField(tif, TIFFTAG_ORIENTATION, &orient)) orient = 1;
  if (!TIFFGetField(tif, TIFFTAG_EXTRASAMPLES, &n_extra, &extra)) n_extra = 0;
  if (photo == PHOTOMETRIC_YCBCR && compression == COMPRESSION_JPEG && planar == 1) {
    /* JPEG-in-TIFF: libjpeg converts to RGB, as Pillow has it do */
    TIFFSetField(tif, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB);
    photo = PHOTOMETRIC_RGB;
  }
  tiff_layout L = {.photo = photo, .bps = bps, .spp = spp,
                   .extra = n_extra && extra ? extra[0] : -1, .le = !TIFFIsBigEndian(tif)};
  int mode = sf == SAMPLEFORMAT_UINT ? tiff_mode(&L) : -1;
  if (mode < 0) {
    rc = vlm_seterr(VLM_EUNSUPPORTED,
                    "TIFF: unsupported layout (photometric %u, %u samples of %u bits, "
                    "sample format %u, %u extra)", photo, spp, bps, sf, n_extra);
    goto done;
  }
  L.mode = (vlm__image_mode)mode;
  out->mode = L.mode;
  out->channels = L.mode == VLM__MODE_LA ? 2 : L.mode == VLM__MODE_RGB ? 3
                  : L.mode == VLM__MODE_RGBA || L.mode == VLM__MODE_CMYK ? 4 : 1;
  if (L.mode == VLM__MODE_P) {
    uint16_t *r, *g, *b;
    if (!TIFFGetField(tif, TIFFTAG_COLORMAP, &r, &g, &b)) {
      rc = vlm_seterr(VLM_ECORRUPT, "TIFF: palette image without a colormap");
      goto done;
    }
    out->palette_n = 1 << bps;
    for (int i = 0; i < out->palette_n; i++) {
      out->palette[3 * i] = (uint8_t)(r[i] >> 8);
      out->palette[3 * i + 1] = (uint8_t)(g[i] >> 8);
      out->palette[3 * i + 2] = (uint8_t)(b[i] >> 8);
    }
  }
  /* the rows of samples: interleaved, or one plane after another */
  int planes = planar == PLANARCONFIG_SEPARATE && spp > 1 ? spp : 1;
  if (planes > 1 && bps < 8) {
    rc = vlm_seterr(VLM_EUNSUPPORTED, "TIFF: separate planes of %u-bit samples", bps);
    goto done;
  }
  size_t bits = (size_t)bps * (planes > 1 ? 1 : spp);
  size_t rowbytes = ((size_t)w * bits + 7) / 8, rowlen = ((size_t)w * bps * spp + 7) / 8;
  size_t sb = vlm__mode_sample_bytes(L.mode);
  out->pixels = malloc((size_t)w * h * out->channels * sb);
  row = malloc(rowlen);
  if (!out->pixels || !row) {
    rc = vlm_seterr(VLM_ENOMEM, "TIFF: %ux%u", w, h);
    goto done;
  }
  int tiled = TIFFIsTiled(tif);
  if (!tiled && planes == 1) { /* the common case: row by row */
    if ((size_t)TIFFScanlineSize64(tif) != rowbytes) {
      rc = vlm_seterr(VLM_EUNSUPPORTED, "TIFF: unexpected scanline size %llu (want %zu)",
                      (unsigned long long)TIFFScanlineSize64(tif), rowbytes);
      goto done;
    }
    for (uint32_t y = 0; y < h; y++) {
      if (TIFFReadScanline(tif, row, y, 0) < 0) {
        rc = vlm_seterr(VLM_ECORRUPT, "TIFF: row %u: %s", y, src.msg[0] ? src.msg : "read failed");
        goto done;
      }
      tiff_unpack_row(&L, row, (int)w, out->pixels + (size_t)y * w * out->channels * sb);
    }
  } else {
    raw = malloc((size_t)planes * h * rowbytes);
    if (!raw) {
      rc = vlm_seterr(VLM_ENOMEM, "TIFF: %ux%u", w, h);
      goto done;
    }
    if (tiled) {
      uint32_t tw = 0, th = 0;
      TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw);
      TIFFGetField(tif, TIFFTAG_TILELENGTH, &th);
      tmsize_t tsize = TIFFTileSize(tif), trow = TIFFTileRowSize(tif);
      if (tw == 0 || th == 0 || tsize <= 0 || trow <= 0 || (uint64_t)trow * th > (uint64_t)tsize ||
          (tw * bits) % 8) {
        rc = vlm_seterr(VLM_ECORRUPT, "TIFF: bad tiles %ux%u", tw, th);
        goto done;
      }
      uint8_t *tile = malloc((size_t)tsize);
      if (!tile) {
        rc = vlm_seterr(VLM_ENOMEM, "TIFF: tile of %lld bytes", (long long)tsize);
        goto done;
      }
      for (int p = 0; p < planes && !rc; p++)
        for (uint32_t y0 = 0; y0 < h && !rc; y0 += th)
          for (uint32_t x0 = 0; x0 < w; x0 += tw) {
            if (TIFFReadTile(tif, tile, x0, y0, 0, (uint16_t)p) < 0) {
              rc = vlm_seterr(VLM_ECORRUPT, "TIFF: tile at %u,%u: %s", x0, y0,
                              src.msg[0] ? src.msg : "read failed");
              break;
            }
            size_t xoff = (size_t)x0 * bits / 8, n = (size_t)trow;
            if (n > rowbytes - xoff) n = rowbytes - xoff;
            for (uint32_t r = 0; r < th && y0 + r < h; r++)
              memcpy(raw + ((size_t)p * h + y0 + r) * rowbytes + xoff, tile + (size_t)r * trow, n);
          }
      free(tile);
      if (rc) goto done;
    } else {
      if ((size_t)TIFFScanlineSize64(tif) != rowbytes) {
        rc = vlm_seterr(VLM_EUNSUPPORTED, "TIFF: unexpected scanline size");
        goto done;
      }
      for (int p = 0; p < planes; p++)
        for (uint32_t y = 0; y < h; y++)
          if (TIFFReadScanline(tif, raw + ((size_t)p * h + y) * rowbytes, y, (uint16_t)p) < 0) {
            rc = vlm_seterr(VLM_ECORRUPT, "TIFF: row %u: %s", y,
                            src.msg[0] ? src.msg : "read failed");
            goto done;
          }
    }
    size_t ssz = bps / 8 ? bps / 8 : 1;
    for (uint32_t y = 0; y < h; y++) {
      const uint8_t *in = raw + (size_t)y * rowbytes;
      if (planes > 1) { /* interleave the planes' samples */
        for (uint32_t x = 0; x < w; x++)
          for (int p = 0; p < planes; p++)
            memcpy(row + ((size_t)x * planes + p) * ssz,
                   raw + ((size_t)p * h + y) * rowbytes + (size_t)x * ssz, ssz);
        in = row;
      }
      tiff_unpack_row(&L, in, (int)w, out->pixels + (size_t)y * w * out->channels * sb);
    }
  }
  out->w = (int)w;
  out->h = (int)h;
  out->orientation = orient >= 1 && orient <= 8 ? orient : 1;
  rc = vlm__decoded_apply_orientation(out); /* as Pillow's load does */
done:
  free(raw);
  free(row);
  TIFFClose(tif);
  return rc;
}
