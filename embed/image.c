/* image.c - JPEG (libjpeg-turbo) and PNG (libpng) decoding into PIL's
 * modes, the format sniffing that sends other formats to their decoders
 * (image_formats.c, image_tiff.c, image_bmp.c), RGB8 decoding and JPEG
 * thumbnails.
 *
 * Neither library may exit or print: libjpeg's error_exit and libpng's
 * error function longjmp back here, warnings are silenced.
 *
 * Corrupt data: PIL (without LOAD_TRUNCATED_IMAGES) refuses a truncated
 * file but accepts what libjpeg only warns about (stray bytes before a
 * marker, an entropy segment ending early, ...).  We do the same: running
 * out of input before the last row (libjpeg's JWRN_JPEG_EOF, a short PNG
 * read) is VLM_ECORRUPT; other libjpeg warnings are accepted, and so is a
 * file that ends after its last row (no JPEG EOI, no PNG IEND).  libpng's
 * errors (bad CRC on a critical chunk, bad zlib data, ...) are
 * VLM_ECORRUPT; its warnings are ignored.
 *
 * Limits: width * height above max_pixels is refused from the header,
 * before any pixel memory.  libjpeg's own work memory is capped at
 * 64 bytes per capped pixel, and a progressive JPEG may not have more than
 * 1000 scans (a known way to make a small file decode for minutes).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "image.h"
#include "preprocess.h"
#include "vlm_clip.h"
#include "vlm_error.h"

#define JPEG_MAX_SCANS 1000

void vlm__decoded_free(vlm__decoded *im) {
  if (!im) return;
  free(im->pixels);
  im->pixels = NULL;
}

int vlm__image_check_dims(uint64_t w, uint64_t h, uint64_t max_pixels, const char *fmt) {
  if (w == 0 || h == 0) return vlm_seterr(VLM_ECORRUPT, "%s: zero image size %llux%llu", fmt,
                                          (unsigned long long)w, (unsigned long long)h);
  if (w > INT32_MAX / 8 || h > INT32_MAX / 8 || w * h > max_pixels)
    return vlm_seterr(VLM_ETOOBIG, "%s: %llux%llu pixels exceeds the cap of %llu", fmt,
                      (unsigned long long)w, (unsigned long long)h,
                      (unsigned long long)max_pixels);
  return 0;
}

/* ---- JPEG -------------------------------------------------------------- */

typedef struct {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  int rc;         /* set before longjmp */
  int all_rows;   /* every scanline decoded: only the trailer may be missing */
  char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_error_exit(j_common_ptr cinfo) {
  jpeg_err *e = (jpeg_err *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->msg);
  if (!e->rc) {
    int code = cinfo->err->msg_code;
    if (code == JERR_OUT_OF_MEMORY || code == JERR_BAD_ALLOC_CHUNK) e->rc = VLM_ENOMEM;
    else if (code == JERR_NO_BACKING_STORE || code == JERR_IMAGE_TOO_BIG)
      e->rc = VLM_ETOOBIG; /* work-memory cap, or past libjpeg's 65500 px */
    else if (code == JERR_BAD_PRECISION || code == JERR_SOF_UNSUPPORTED ||
             code == JERR_CONVERSION_NOTIMPL || code == JERR_ARITH_NOTIMPL)
      e->rc = VLM_EUNSUPPORTED;
    else e->rc = VLM_ECORRUPT;
  }
  longjmp(e->jump, 1);
}

static void jpeg_emit_message(j_common_ptr cinfo, int level) {
  jpeg_err *e = (jpeg_err *)cinfo->err;
  /* level -1 is a warning; the data running out before the last row is
   * one we refuse (a missing EOI marker after it is accepted) */
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF && !e->all_rows) {
    snprintf(e->msg, sizeof e->msg, "truncated JPEG data");
    e->rc = VLM_ECORRUPT;
    longjmp(e->jump, 1);
  }
  if (level < 0) cinfo->err->num_warnings++;
}

static void jpeg_output_message(j_common_ptr cinfo) { (void)cinfo; }

static void jpeg_scan_limit(j_common_ptr cinfo) {
  j_decompress_ptr d = (j_decompress_ptr)cinfo;
  if (d->input_scan_number > JPEG_MAX_SCANS) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    snprintf(e->msg, sizeof e->msg, "more than %d progressive scans", JPEG_MAX_SCANS);
    e->rc = VLM_ECORRUPT;
    longjmp(e->jump, 1);
  }
}

static int decode_jpeg(const uint8_t *data, size_t len, uint64_t max_pixels,
                       vlm__decoded *out) {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_progress_mgr progress;
  jpeg_err err;
  /* volatile: modified between setjmp and longjmp */
  uint8_t *volatile pixels = NULL;
  memset(&err, 0, sizeof err);
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.emit_message = jpeg_emit_message;
  err.mgr.output_message = jpeg_output_message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    free(pixels);
    return vlm_seterr(err.rc ? err.rc : VLM_ECORRUPT, "JPEG: %s", err.msg);
  }
  jpeg_create_decompress(&cinfo);
  progress.progress_monitor = jpeg_scan_limit;
  cinfo.progress = &progress;
  cinfo.mem->max_memory_to_use = (long)(max_pixels < (1ull << 26) ? max_pixels * 64 : (1ull << 32));
  jpeg_mem_src(&cinfo, data, (unsigned long)len);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  /* Pillow reads the first APP1 segment that starts "Exif\0" */
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 5 && !memcmp(m->data, "Exif", 5)) {
      out->orientation = vlm__exif_orientation(m->data, m->data_length);
      break;
    }
  int rc = vlm__image_check_dims(cinfo.image_width, cinfo.image_height, max_pixels, "JPEG");
  if (rc) {
    jpeg_destroy_decompress(&cinfo);
    return rc;
  }
  switch (cinfo.num_components) {
  case 1:
    out->mode = VLM__MODE_L;
    cinfo.out_color_space = JCS_GRAYSCALE;
    break;
  case 3:
    out->mode = VLM__MODE_RGB;
    cinfo.out_color_space = JCS_RGB;
    break;
  case 4:
    out->mode = VLM__MODE_CMYK;
    cinfo.out_color_space = JCS_CMYK;
    break;
  default:
    jpeg_destroy_decompress(&cinfo);
    return vlm_seterr(VLM_EUNSUPPORTED, "JPEG: %d colour components", cinfo.num_components);
  }
  jpeg_start_decompress(&cinfo);
  int w = (int)cinfo.output_width, h = (int)cinfo.output_height, C = cinfo.output_components;
  pixels = malloc((size_t)w * h * C);
  if (!pixels) {
    jpeg_destroy_decompress(&cinfo);
    return vlm_seterr(VLM_ENOMEM, "JPEG: %dx%d", w, h);
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = pixels + (size_t)cinfo.output_scanline * w * C;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  err.all_rows = 1;
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (out->mode == VLM__MODE_CMYK) /* PIL reads 4-component JPEG as "CMYK;I" */
    for (size_t i = 0; i < (size_t)w * h * 4; i++) pixels[i] = (uint8_t)(255 - pixels[i]);
  out->w = w;
  out->h = h;
  out->channels = C;
  out->pixels = pixels;
  return 0;
}

/* ---- PNG --------------------------------------------------------------- */

typedef struct {
  const uint8_t *data;
  size_t len, pos;
  jmp_buf jump;
  int rc;
  char msg[200];
} png_ctx;

static void png_error_fn(png_structp png, png_const_charp msg) {
  png_ctx *c = png_get_error_ptr(png);
  if (!c->rc) {
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    c->rc = VLM_ECORRUPT;
  }
  longjmp(c->jump, 1);
}

static void png_warning_fn(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg;
}

static void png_read_fn(png_structp png, png_bytep out, size_t n) {
  png_ctx *c = png_get_io_ptr(png);
  if (n > c->len - c->pos) {
    snprintf(c->msg, sizeof c->msg, "truncated PNG data");
    c->rc = VLM_ECORRUPT;
    png_error(png, "truncated");
  }
  memcpy(out, c->data + c->pos, n);
  c->pos += n;
}

static int decode_png(const uint8_t *data, size_t len, uint64_t max_pixels,
                      vlm__decoded *out) {
  png_ctx ctx = {.data = data, .len = len};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_error_fn,
                                           png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  uint8_t *volatile pixels = NULL;
  png_bytep *volatile rows = NULL;
  if (!png || !info) {
    png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
    return vlm_seterr(VLM_ENOMEM, "PNG: decoder");
  }
  if (setjmp(ctx.jump)) {
    png_destroy_read_struct(&png, &info, NULL);
    free(pixels);
    free(rows);
    if (ctx.rc == VLM_ETOOBIG) return ctx.rc; /* message already set */
    return vlm_seterr(ctx.rc ? ctx.rc : VLM_ECORRUPT, "PNG: %s", ctx.msg);
  }
  png_set_read_fn(png, &ctx, png_read_fn);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  int rc = vlm__image_check_dims(w, h, max_pixels, "PNG");
  if (rc) {
    png_destroy_read_struct(&png, &info, NULL);
    return rc;
  }
  int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
  out->has_trns = 0;
  png_uint_32 exif_len = 0;
  png_bytep exif = NULL;
  if (png_get_eXIf_1(png, info, &exif_len, &exif)) /* only an eXIf before IDAT */
    out->orientation = vlm__exif_orientation(exif, exif_len);
  if (type == PNG_COLOR_TYPE_PALETTE) {
    png_colorp pal;
    int npal = 0;
    if (png_get_PLTE(png, info, &pal, &npal) && npal > 0) {
      for (int i = 0; i < npal && i < 256; i++) {
        out->palette[3 * i] = pal[i].red;
        out->palette[3 * i + 1] = pal[i].green;
        out->palette[3 * i + 2] = pal[i].blue;
      }
      out->palette_n = npal < 256 ? npal : 256;
    }
    png_bytep trans;
    int ntrans = 0;
    png_color_16p key;
    memset(out->trns_alpha, 255, sizeof out->trns_alpha);
    if (png_get_tRNS(png, info, &trans, &ntrans, &key) && ntrans > 0) {
      memcpy(out->trns_alpha, trans, (size_t)(ntrans < 256 ? ntrans : 256));
      out->has_trns = 1;
    }
    if (depth < 8) png_set_packing(png); /* one index per byte */
    out->mode = VLM__MODE_P;
    out->channels = 1;
  } else if (type == PNG_COLOR_TYPE_GRAY) {
    png_bytep trans;
    int ntrans = 0;
    png_color_16p key;
    if (depth <= 8 && png_get_tRNS(png, info, &trans, &ntrans, &key)) {
      out->has_trns = 1;
      out->trns_key[0] = (uint16_t)(key->gray * (255 / ((1 << depth) - 1)));
    }
    if (depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
      png_set_swap(png); /* PNG samples are big-endian; keep host order */
#endif
      out->mode = VLM__MODE_I16;
    } else {
      out->mode = depth == 1 ? VLM__MODE_1 : VLM__MODE_L;
    }
    out->channels = 1;
  } else if (type == PNG_COLOR_TYPE_GRAY_ALPHA) {
    if (depth == 16) png_set_strip_16(png);
    out->mode = VLM__MODE_LA;
    out->channels = 2;
  } else if (type == PNG_COLOR_TYPE_RGB) {
    png_bytep trans;
    int ntrans = 0;
    png_color_16p key;
    if (depth == 8 && png_get_tRNS(png, info, &trans, &ntrans, &key)) {
      out->has_trns = 1;
      out->trns_key[0] = key->red;
      out->trns_key[1] = key->green;
      out->trns_key[2] = key->blue;
    }
    if (depth == 16) png_set_strip_16(png);
    out->mode = VLM__MODE_RGB;
    out->channels = 3;
  } else if (type == PNG_COLOR_TYPE_RGB_ALPHA) {
    if (depth == 16) png_set_strip_16(png);
    out->mode = VLM__MODE_RGBA;
    out->channels = 4;
  } else {
    png_destroy_read_struct(&png, &info, NULL);
    return vlm_seterr(VLM_EUNSUPPORTED, "PNG: colour type %d", type);
  }
  /* the tRNS chunk stays out of the pixels: no png_set_tRNS_to_alpha */
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  size_t rowbytes = png_get_rowbytes(png, info);
  size_t want = (size_t)w * out->channels * vlm__mode_sample_bytes(out->mode);
  if (rowbytes != want) {
    png_destroy_read_struct(&png, &info, NULL);
    return vlm_seterr(VLM_EUNSUPPORTED, "PNG: unexpected row size %zu (want %zu)", rowbytes,
                      want);
  }
  pixels = malloc(rowbytes * h);
  rows = malloc(h * sizeof *rows);
  if (!pixels || !rows) {
    ctx.rc = VLM_ENOMEM;
    snprintf(ctx.msg, sizeof ctx.msg, "%ux%u pixels", (unsigned)w, (unsigned)h);
    longjmp(ctx.jump, 1);
  }
  for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + y * rowbytes;
  png_read_image(png, rows);
  /* the image data is complete; what follows (IEND, text) is not needed */
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  out->w = (int)w;
  out->h = (int)h;
  out->pixels = pixels;
  return 0;
}

/* ---- entry points ------------------------------------------------------ */

enum { FMT_NONE, FMT_GIF, FMT_WEBP, FMT_BMP, FMT_TIFF, FMT_HEIF, FMT_SVG };

/* The format from the first bytes, as Pillow's _accept functions (and
 * pillow-heif's, for an ISO-BMFF "ftyp" box) tell them apart. */
static int sniff(const uint8_t *p, size_t len) {
  if (len >= 6 && (!memcmp(p, "GIF87a", 6) || !memcmp(p, "GIF89a", 6))) return FMT_GIF;
  if (len >= 12 && !memcmp(p, "RIFF", 4) && !memcmp(p + 8, "WEBP", 4)) return FMT_WEBP;
  if (len >= 2 && p[0] == 'B' && p[1] == 'M') return FMT_BMP;
  if (len >= 4 && (!memcmp(p, "II*\0", 4) || !memcmp(p, "MM\0*", 4))) return FMT_TIFF;
  if (len >= 12 && !memcmp(p + 4, "ftyp", 4)) return FMT_HEIF;
  if (len >= 5 && !memcmp(p, "<?xml", 5)) return FMT_SVG;
  if (len >= 4 && !memcmp(p, "<svg", 4)) return FMT_SVG;
  return FMT_NONE;
}

int vlm__image_decode_native(const void *data, size_t len, uint64_t max_pixels,
                             vlm__decoded *out) {
  memset(out, 0, sizeof *out);
  out->orientation = 1;
  if (!data && len) return vlm_seterr(VLM_EINVAL, "image: NULL data");
  if (max_pixels == 0) max_pixels = VLM__DEFAULT_MAX_PIXELS;
  const uint8_t *p = data;
  if (len == 0) return vlm_seterr(VLM_EUNSUPPORTED, "image: empty input (0 bytes)");
  if (len >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF)
    return decode_jpeg(p, len, max_pixels, out);
  if (len >= 8 && !memcmp(p, "\x89PNG\r\n\x1a\n", 8)) return decode_png(p, len, max_pixels, out);
  int rc;
  switch (sniff(p, len)) {
  case FMT_GIF: rc = vlm__decode_gif(p, len, max_pixels, out); break;
  case FMT_WEBP: rc = vlm__decode_webp(p, len, max_pixels, out); break;
  case FMT_BMP: rc = vlm__decode_bmp(p, len, max_pixels, out); break;
  case FMT_TIFF: rc = vlm__decode_tiff(p, len, max_pixels, out); break;
  case FMT_HEIF: rc = vlm__decode_heif(p, len, max_pixels, out); break;
  case FMT_SVG:
    return vlm_seterr(VLM_EUNSUPPORTED, "image: SVG is not supported (draw it to PNG first)");
  default:
    return vlm_seterr(VLM_EUNSUPPORTED,
                      "image: not a JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC or AVIF file "
                      "(starts %02x %02x %02x %02x)",
                      p[0], len > 1 ? p[1] : 0, len > 2 ? p[2] : 0, len > 3 ? p[3] : 0);
  }
  if (rc) {
    vlm__decoded_free(out);
    memset(out, 0, sizeof *out);
  }
  return rc;
}

int vlm_image_decode(const void *data, size_t len, const vlm_clip_options *opts,
                     vlm_image *out) {
  vlm__decoded im;
  if (!out) return vlm_seterr(VLM_EINVAL, "image: NULL output");
  memset(out, 0, sizeof *out);
  int rc = vlm__image_decode_native(data, len, opts ? opts->max_pixels : 0, &im);
  if (rc) return rc;
  if ((!opts || opts->orientation != VLM_ORIENT_IGNORE) &&
      (rc = vlm__decoded_apply_orientation(&im)) != 0)
    goto done;
  if (opts && opts->alpha == VLM_ALPHA_WHITE && (rc = vlm__decoded_flatten_white(&im)) != 0)
    goto done;
  out->rgb = malloc((size_t)im.w * im.h * 3);
  if (!out->rgb) {
    rc = vlm_seterr(VLM_ENOMEM, "image: %dx%d", im.w, im.h);
    goto done;
  }
  vlm__decoded_to_rgb(&im, out->rgb);
  out->w = im.w;
  out->h = im.h;
done:
  vlm__decoded_free(&im);
  return rc;
}

void vlm_image_free(vlm_image *img) {
  if (!img) return;
  free(img->rgb);
  img->rgb = NULL;
  img->w = img->h = 0;
}

/* ---- thumbnails -------------------------------------------------------- */

/* Area-averaging (box) resize for thumbnails.
 *
 * Output pixel (x, y) is the mean of the input over the rectangle it
 * covers, [x * w / tw, (x + 1) * w / tw) x [y * h / th, ...), partial
 * pixels weighted by their covered fraction.  It reads each input sample
 * once or twice, which makes it several times cheaper than the bicubic
 * resample whose support grows with the scale (2 ms against 0.1 ms for a
 * 640x480 photo to 256x192), and for a reduction of 2x or more it
 * antialiases about as well.  The vertical pass runs first, over whole
 * rows with vector arithmetic; the horizontal pass then sees only the
 * th rows it produced.
 *
 * Fixed point: the weights of an output's taps are its exact integer
 * overlaps with the input pixels (in units of 1/tw or 1/th of an input
 * pixel) scaled to 1 << AREA_VBITS (vertically) or 1 << AREA_HBITS, each
 * the difference of two rounded running sums: none is negative, each is
 * within one unit of exact, and they sum to exactly one, so a flat image
 * stays flat.  Vertical sums (at most 255 << 22) fit 32-bit lanes and
 * keep 8 fraction bits in 16 (at most 255 << 8); horizontal sums of those
 * with 15-bit weights fit 32 bits.  The result is within about half a
 * level of the exact mean.
 *
 * Memory: the horizontal weights are kept, 2 bytes a tap (an input
 * column is a tap of one output, or two where it straddles a boundary);
 * the vertical ones are made row by row, so a very tall image needs no
 * table the size of its height. */
#define AREA_VBITS 22
#define AREA_HBITS 15

/* The taps of output o when in_size samples shrink to out_size: the
 * first input index (return value) and how many follow (*count); with
 * weights, their weights, summing to 1 << bits. */
static int area_taps(int in_size, int out_size, int o, int bits, int *count,
                     uint32_t *weights) {
  /* in units of 1/out_size input pixel: output o covers
   * [o * in_size, (o + 1) * in_size), input i covers
   * [i * out_size, (i + 1) * out_size) */
  int64_t lo = (int64_t)o * in_size, hi = lo + in_size;
  int i0 = (int)(lo / out_size), i1 = (int)((hi + out_size - 1) / out_size);
  *count = i1 - i0;
  if (weights) {
    int64_t prev = 0;
    for (int i = i0; i < i1; i++) {
      int64_t end = (int64_t)(i + 1) * out_size;
      int64_t covered = (end < hi ? end : hi) - lo; /* of in_size, so far */
      int64_t cum = ((covered << bits) + in_size / 2) / in_size;
      weights[i - i0] = (uint32_t)(cum - prev);
      prev = cum;
    }
  }
  return i0;
}

/* GCC/Clang vector extensions of 16 lanes, lowered to AVX-512, AVX2 or
 * SSE as the target allows.  Bytes widen in two steps: a direct 8 -> 32
 * bit conversion compiles to one insert per lane. */
#define AREA_VL 16
typedef uint8_t area_v8 __attribute__((vector_size(AREA_VL)));
typedef uint16_t area_v16 __attribute__((vector_size(AREA_VL * sizeof(uint16_t))));
typedef uint32_t area_v32 __attribute__((vector_size(AREA_VL * sizeof(uint32_t))));

/* acc[0, n) += row[0, n) * weight */
static void area_row_madd(uint32_t *acc, const uint8_t *row, size_t n, uint32_t weight) {
  size_t i = 0;
  for (; i + AREA_VL <= n; i += AREA_VL) {
    area_v8 p;
    area_v32 a;
    memcpy(&p, row + i, sizeof p);
    memcpy(&a, acc + i, sizeof a);
    a += __builtin_convertvector(__builtin_convertvector(p, area_v16), area_v32) * weight;
    memcpy(acc + i, &a, sizeof a);
  }
  for (; i < n; i++) acc[i] += row[i] * weight;
}

/* mid[0, n) = acc[0, n) with AREA_VBITS - 8 fraction bits dropped, rounded */
static void area_row_narrow(uint16_t *mid, const uint32_t *acc, size_t n) {
  const uint32_t half = 1u << (AREA_VBITS - 9);
  size_t i = 0;
  for (; i + AREA_VL <= n; i += AREA_VL) {
    area_v32 a;
    memcpy(&a, acc + i, sizeof a);
    area_v16 m = __builtin_convertvector((a + half) >> (AREA_VBITS - 8), area_v16);
    memcpy(mid + i, &m, sizeof m);
  }
  for (; i < n; i++) mid[i] = (uint16_t)((acc[i] + half) >> (AREA_VBITS - 8));
}

int vlm__image_area_resize(const vlm_image *src, int tw, int th, vlm_image *out) {
  memset(out, 0, sizeof *out);
  if (!src || !src->rgb || src->w < 1 || src->h < 1 || tw < 1 || th < 1 || tw > src->w ||
      th > src->h)
    return vlm_seterr(VLM_EINVAL, "area resize: %dx%d to %dx%d", src ? src->w : 0,
                      src ? src->h : 0, tw, th);
  int w = src->w, h = src->h, rc = 0;
  size_t rowlen = (size_t)w * 3;
  /* an output spans at most ceil(in / out) + 1 inputs; in all, every
   * input once plus one more per output boundary it straddles */
  int vtaps = (h + th - 1) / th + 1, htaps = (w + tw - 1) / tw + 1;
  int *hfirst = malloc((size_t)tw * sizeof *hfirst);
  int *hcount = malloc((size_t)tw * sizeof *hcount);
  uint16_t *hweight = malloc(((size_t)w + tw) * sizeof *hweight);
  uint32_t *vweight = malloc((size_t)(vtaps > htaps ? vtaps : htaps) * sizeof *vweight);
  uint32_t *acc = malloc(rowlen * sizeof *acc);
  uint16_t *mid = malloc(rowlen * sizeof *mid);
  out->rgb = malloc((size_t)tw * th * 3);
  if (!hfirst || !hcount || !hweight || !vweight || !acc || !mid || !out->rgb) {
    free(out->rgb);
    out->rgb = NULL;
    rc = vlm_seterr(VLM_ENOMEM, "area resize: %dx%d to %dx%d", w, h, tw, th);
    goto done;
  }
  size_t at = 0;
  for (int x = 0; x < tw; x++) {
    hfirst[x] = area_taps(w, tw, x, AREA_HBITS, &hcount[x], vweight);
    for (int k = 0; k < hcount[x]; k++) hweight[at + k] = (uint16_t)vweight[k];
    at += (size_t)hcount[x];
  }
  for (int y = 0; y < th; y++) {
    /* vertical: the output row at full width, 8 fraction bits */
    int n, first = area_taps(h, th, y, AREA_VBITS, &n, vweight);
    memset(acc, 0, rowlen * sizeof *acc);
    for (int k = 0; k < n; k++)
      if (vweight[k])
        area_row_madd(acc, src->rgb + (size_t)(first + k) * rowlen, rowlen, vweight[k]);
    area_row_narrow(mid, acc, rowlen);
    /* horizontal */
    uint8_t *o = out->rgb + (size_t)y * tw * 3;
    const uint16_t *hw = hweight;
    for (int x = 0; x < tw; x++, o += 3) {
      const uint16_t *in = mid + (size_t)hfirst[x] * 3;
      uint32_t r = 1u << (AREA_HBITS + 7), g = r, b = r;
      for (int k = 0; k < hcount[x]; k++, in += 3) {
        r += (uint32_t)in[0] * hw[k];
        g += (uint32_t)in[1] * hw[k];
        b += (uint32_t)in[2] * hw[k];
      }
      hw += hcount[x];
      o[0] = (uint8_t)(r >> (AREA_HBITS + 8));
      o[1] = (uint8_t)(g >> (AREA_HBITS + 8));
      o[2] = (uint8_t)(b >> (AREA_HBITS + 8));
    }
  }
  out->w = tw;
  out->h = th;
done:
  free(hfirst);
  free(hcount);
  free(hweight);
  free(vweight);
  free(acc);
  free(mid);
  return rc;
}

static void jpeg_encode_error_exit(j_common_ptr cinfo) {
  jpeg_err *e = (jpeg_err *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->msg);
  longjmp(e->jump, 1);
}

/* State of one encode, kept in memory so that the longjmp path sees it. */
typedef struct {
  struct jpeg_compress_struct cinfo;
  jpeg_err err;
  const vlm_image *src;
  int quality;
  unsigned char *buf;
  unsigned long size;
} jpeg_encoder;

/* Baseline JPEG of enc->src into enc->buf (malloc'd) / enc->size. */
static int encode_jpeg(jpeg_encoder *enc) {
  enc->cinfo.err = jpeg_std_error(&enc->err.mgr);
  enc->err.mgr.error_exit = jpeg_encode_error_exit;
  enc->err.mgr.output_message = jpeg_output_message;
  if (setjmp(enc->err.jump)) {
    jpeg_destroy_compress(&enc->cinfo);
    free(enc->buf);
    enc->buf = NULL;
    return vlm_seterr(VLM_ENOMEM, "thumbnail: JPEG encoder: %s", enc->err.msg);
  }
  jpeg_create_compress(&enc->cinfo);
  jpeg_mem_dest(&enc->cinfo, &enc->buf, &enc->size);
  enc->cinfo.image_width = (JDIMENSION)enc->src->w;
  enc->cinfo.image_height = (JDIMENSION)enc->src->h;
  enc->cinfo.input_components = 3;
  enc->cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&enc->cinfo);
  jpeg_set_quality(&enc->cinfo, enc->quality, TRUE);
  jpeg_start_compress(&enc->cinfo, TRUE);
  while (enc->cinfo.next_scanline < enc->cinfo.image_height) {
    JSAMPROW row = enc->src->rgb + (size_t)enc->cinfo.next_scanline * enc->src->w * 3;
    jpeg_write_scanlines(&enc->cinfo, &row, 1);
  }
  jpeg_finish_compress(&enc->cinfo);
  jpeg_destroy_compress(&enc->cinfo);
  return 0;
}

int vlm_image_thumbnail_jpeg(const vlm_image *img, int max_side, int quality,
                             uint8_t **jpeg, size_t *len) {
  if (!img || !img->rgb || img->w < 1 || img->h < 1 || max_side < 1 || !jpeg || !len)
    return vlm_seterr(VLM_EINVAL, "thumbnail: bad image or arguments");
  *jpeg = NULL;
  *len = 0;
  int w = img->w, h = img->h;
  /* the longest side becomes max_side (never upscaled), aspect kept */
  if (w > max_side || h > max_side) {
    if (w >= h) {
      h = (int)(((int64_t)h * max_side + w / 2) / w);
      w = max_side;
    } else {
      w = (int)(((int64_t)w * max_side + h / 2) / h);
      h = max_side;
    }
    if (w < 1) w = 1;
    if (h < 1) h = 1;
  }
  vlm_image small = {0};
  jpeg_encoder *enc = calloc(1, sizeof *enc);
  if (!enc) return vlm_seterr(VLM_ENOMEM, "thumbnail: encoder");
  enc->src = img;
  enc->quality = quality < 1 ? 1 : quality > 100 ? 100 : quality;
  int rc = 0;
  if (w != img->w || h != img->h) {
    if ((rc = vlm__image_area_resize(img, w, h, &small)) != 0) goto done;
    enc->src = &small;
  }
  if ((rc = encode_jpeg(enc)) != 0) goto done;
  *jpeg = enc->buf;
  *len = enc->size;
done:
  vlm_image_free(&small);
  free(enc);
  return rc;
}

int vlm_image_thumbnail(const vlm_image *img, uint8_t **jpeg, size_t *len) {
  return vlm_image_thumbnail_jpeg(img, VLM_THUMB_SIDE, VLM_THUMB_QUALITY, jpeg,
                                  len);
}

int vlm_image_thumbnail_bytes(const void *data, size_t len, uint8_t **jpeg,
                              size_t *jpeg_len) {
  vlm_clip_options opts = {.alpha = VLM_ALPHA_WHITE};
  vlm_image img = {0};
  int rc = vlm_image_decode(data, len, &opts, &img);
  if (rc == 0)
    rc = vlm_image_thumbnail(&img, jpeg, jpeg_len);
  vlm_image_free(&img);
  return rc;
}
