/* preprocess.c - CLIP image preprocessing with PIL's arithmetic.
 *
 * The reference is torchvision's Compose([Resize(n, BICUBIC),
 * CenterCrop(n), convert("RGB"), ToTensor(), Normalize(mean, std)]) over
 * a PIL image.  The uint8 image before ToTensor is reproduced bit for bit:
 *
 * - Resize: shorter side -> n, longer -> int(n * long / short).  Pillow
 *   resizes in the image's own mode: "P" and "1" always with NEAREST (an
 *   affine scale that samples pixel centres), "LA"/"RGBA" premultiplied
 *   ("La"/"RGBa") and converted back, "I;16" in double precision, all
 *   8-bit modes with the two-pass fixed-point bicubic below.  A resize to
 *   the same size is a copy.
 * - Bicubic (Pillow's Resample.c): a = -0.5, support 2 scaled by the
 *   downscale factor (antialiasing), taps normalized to sum 1 in double,
 *   then rounded to 22-bit fixed point; each pass accumulates from 1 << 21,
 *   shifts right by 22 and clips to 0..255.  Horizontal pass first, over
 *   only the rows the vertical pass reads; a pass whose size does not
 *   change is skipped.
 * - CenterCrop: top = int(round((h - n) / 2.0)) with Python's round half
 *   to even.  Only the crop window is computed: each output pixel of
 *   Pillow's resampler depends only on its own coordinates, so a window is
 *   identical to resizing fully and cropping.
 * - convert("RGB"): L replicated, LA/RGBA alpha dropped, P through the
 *   palette, 1 as 0/255, I;16 clipped to 255, CMYK as Pillow's cmyk2rgb.
 * - ToTensor/Normalize in float32: (v / 255 - mean) / std.
 * - With exif_transpose, ImageOps.exif_transpose first (image_exif.c).
 *
 * Where Pillow versions differ we follow Pillow 10 and later: 16-bit gray
 * PNGs open as "I;16" (Pillow 9 used "I"; the results differ only when the
 * first pass overshoots below 0, which "I;16" clips), and palette indices
 * past the palette are black (Pillow 9: a gray ramp).  Either way a 16-bit
 * gray image converts to RGB by clipping at 255, so most of them come out
 * nearly white, exactly as in the reference.
 *
 * Sizes: resize >= crop is required (CLIP's configs always have it).  A
 * resized side past 2^24 pixels (aspect ratios beyond 75000:1 at 224) is
 * VLM_ETOOBIG.
 *
 * Hugging Face's pipelines (SigLIP, Chinese-CLIP; cfg->rgb_first) differ:
 * transformers.image_utils.load_image applies the EXIF orientation and
 * converts to RGB before the image processor sees the image, so the resize
 * runs on RGB (alpha dropped, palette expanded first); the processor's
 * size may be {"height", "width"} (a straight resize, aspect not kept);
 * its center_crop floors the offsets; rescale is float32(v * factor) with
 * the product in double (for 1/255 the same float as v / 255.0f for every
 * v, checked exhaustively), normalize (x - mean) / std in float32.
 */
#include "preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "vlm_error.h"

#define PRECISION_BITS (32 - 8 - 2)

/* Longest side the resize step may produce (a 1 x 100000 image resized to
 * 224 would be 22.4 Mpx long; only its crop is computed, but the NEAREST
 * positions are accumulated along it). */
#define MAX_RESIZED_SIDE (1 << 24)

void vlm__preprocess_defaults(vlm__preprocess_cfg *cfg, int image_size) {
  static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  memset(cfg, 0, sizeof *cfg);
  cfg->resize = image_size;
  cfg->do_resize = 1;
  cfg->center_crop = 1;
  cfg->crop = image_size;
  cfg->rescale = 1.0 / 255;
  memcpy(cfg->mean, mean, sizeof mean);
  memcpy(cfg->std, std, sizeof std);
  cfg->alpha = VLM_ALPHA_DROP;
  cfg->max_pixels = 0;
}

/* ---- bicubic coefficients -------------------------------------------- */

static double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

typedef struct {
  int ksize;    /* taps per output sample (a stride; trailing taps are 0) */
  int *first;   /* [out] first input index */
  int *count;   /* [out] number of taps */
  double *k;    /* [out * ksize] normalized weights */
  int32_t *kfix; /* the same in fixed point */
} coeffs;

static void coeffs_free(coeffs *c) {
  free(c->first);
  free(c->count);
  free(c->k);
  free(c->kfix);
  memset(c, 0, sizeof *c);
}

/* Taps for output samples [out0, out0 + n) of resizing in_size samples to
 * out_size over the box [0, in_size), as Pillow's precompute_coeffs +
 * normalize_coeffs_8bpc (each output's taps depend only on its index, so
 * a window needs memory for the window only).  Entry i is output out0+i. */
static int coeffs_compute(int in_size, int out_size, int out0, int n, coeffs *c) {
  float in0 = 0.0f, in1 = (float)in_size;
  double scale = (double)(in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 2.0 * filterscale;
  int ksize = (int)ceil(support) * 2 + 1;
  memset(c, 0, sizeof *c);
  c->ksize = ksize;
  c->first = malloc((size_t)n * sizeof *c->first);
  c->count = malloc((size_t)n * sizeof *c->count);
  c->k = calloc((size_t)n * (size_t)ksize, sizeof *c->k);
  c->kfix = calloc((size_t)n * (size_t)ksize, sizeof *c->kfix);
  if (!c->first || !c->count || !c->k || !c->kfix) {
    coeffs_free(c);
    return vlm_seterr(VLM_ENOMEM, "resize: %d taps x %d", ksize, n);
  }
  for (int i = 0; i < n; i++) {
    int xx = out0 + i;
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double *k = &c->k[(size_t)i * ksize];
    for (int x = 0; x < xmax; x++) {
      double w = bicubic((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; x++)
      if (ww != 0.0) k[x] /= ww;
    c->first[i] = xmin;
    c->count[i] = xmax;
  }
  for (size_t i = 0; i < (size_t)n * ksize; i++) {
    double v = c->k[i];
    c->kfix[i] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                       : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
  }
  return 0;
}

static inline uint8_t clip8_fixed(int32_t ss) {
  int32_t v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

static inline int round_up(double f) {
  return (int)(f >= 0.0 ? f + 0.5F : f - 0.5F);
}

/* Pillow stores an I;16 resample result byte by byte, each clipped. */
static inline uint16_t store_i16(int v) {
  int lo = v % 256, hi = v >> 8;
  lo = lo < 0 ? 0 : lo > 255 ? 255 : lo;
  hi = hi < 0 ? 0 : hi > 255 ? 255 : hi;
  return (uint16_t)(hi << 8 | lo);
}

/* ---- two-pass resample over an output window ------------------------- */

/* One output pixel of the horizontal pass: n taps over C interleaved
 * channels, each channel accumulated from 1 << 21 as Pillow does.  Scalar
 * accumulators per channel count keep the sums in registers. */
static void taps_u8(const uint8_t *in, const int32_t *k, int n, int C, uint8_t *out) {
  const int32_t half = 1 << (PRECISION_BITS - 1);
  int32_t s0 = half, s1 = half, s2 = half, s3 = half;
  switch (C) {
  case 1:
    for (int x = 0; x < n; x++) s0 += in[x] * k[x];
    out[0] = clip8_fixed(s0);
    break;
  case 2:
    for (int x = 0; x < n; x++) {
      s0 += in[2 * x] * k[x];
      s1 += in[2 * x + 1] * k[x];
    }
    out[0] = clip8_fixed(s0);
    out[1] = clip8_fixed(s1);
    break;
  case 3:
    for (int x = 0; x < n; x++) {
      s0 += in[3 * x] * k[x];
      s1 += in[3 * x + 1] * k[x];
      s2 += in[3 * x + 2] * k[x];
    }
    out[0] = clip8_fixed(s0);
    out[1] = clip8_fixed(s1);
    out[2] = clip8_fixed(s2);
    break;
  default:
    for (int x = 0; x < n; x++) {
      s0 += in[4 * x] * k[x];
      s1 += in[4 * x + 1] * k[x];
      s2 += in[4 * x + 2] * k[x];
      s3 += in[4 * x + 3] * k[x];
    }
    out[0] = clip8_fixed(s0);
    out[1] = clip8_fixed(s1);
    out[2] = clip8_fixed(s2);
    out[3] = clip8_fixed(s3);
    break;
  }
}

/* dst (cw x ch x C) = window [x0, x0+cw) x [y0, y0+ch) of src (w x h x C)
 * resized to dw x dh.  8-bit samples, or 16-bit when i16. */
static int resample(const void *src, int w, int h, int C, int i16, int dw,
                    int dh, int x0, int y0, int cw, int ch, void *dst) {
  int rc = 0;
  coeffs hc = {0}, vc = {0};
  void *tmp = NULL;
  int need_h = dw != w, need_v = dh != h;
  size_t sb = i16 ? 2 : 1;
  /* the input rows the window's vertical taps read */
  int row0 = y0, row1 = y0 + ch;
  if (need_v) {
    if ((rc = coeffs_compute(h, dh, y0, ch, &vc)) != 0) goto done;
    row0 = vc.first[0];
    row1 = vc.first[ch - 1] + vc.count[ch - 1];
  }
  /* horizontal pass: rows [row0, row1) -> tmp (cw x (row1 - row0)) */
  const void *vin;
  int vin_row0; /* input row held by vin's first row */
  size_t vin_stride;
  if (need_h) {
    if ((rc = coeffs_compute(w, dw, x0, cw, &hc)) != 0) goto done;
    tmp = malloc((size_t)cw * (size_t)(row1 - row0) * C * sb);
    if (!tmp) {
      rc = vlm_seterr(VLM_ENOMEM, "resize: %dx%d", cw, row1 - row0);
      goto done;
    }
    for (int y = row0; y < row1; y++) {
      for (int xx = 0; xx < cw; xx++) {
        int xmin = hc.first[xx], n = hc.count[xx];
        size_t out_at = ((size_t)(y - row0) * cw + xx) * C;
        if (!i16) {
          const uint8_t *in = (const uint8_t *)src + ((size_t)y * w + xmin) * C;
          const int32_t *k = &hc.kfix[(size_t)xx * hc.ksize];
          taps_u8(in, k, n, C, (uint8_t *)tmp + out_at);
        } else {
          const uint16_t *in = (const uint16_t *)src + ((size_t)y * w + xmin);
          const double *k = &hc.k[(size_t)xx * hc.ksize];
          double ss = 0.0;
          for (int x = 0; x < n; x++) ss += in[x] * k[x];
          ((uint16_t *)tmp)[out_at] = store_i16(round_up(ss));
        }
      }
    }
    vin = tmp;
    vin_row0 = row0;
    vin_stride = (size_t)cw * C;
  } else {
    vin = (const uint8_t *)src + (size_t)x0 * C * sb; /* columns x0.. of src */
    vin_row0 = 0;
    vin_stride = (size_t)w * C;
  }
  /* vertical pass, 8-bit: whole output rows accumulated tap by tap (the
   * same sums in the same order as Pillow's per-pixel loop) */
  if (need_v && !i16) {
    size_t rowlen = (size_t)cw * C;
    int32_t *acc = malloc(rowlen * sizeof *acc);
    if (!acc) {
      rc = vlm_seterr(VLM_ENOMEM, "resize: row of %d", cw);
      goto done;
    }
    for (int yy = 0; yy < ch; yy++) {
      int ymin = vc.first[yy], n = vc.count[yy];
      const int32_t *k = &vc.kfix[(size_t)yy * vc.ksize];
      for (size_t i = 0; i < rowlen; i++) acc[i] = 1 << (PRECISION_BITS - 1);
      for (int y = 0; y < n; y++) {
        const uint8_t *row = (const uint8_t *)vin + (size_t)(ymin + y - vin_row0) * vin_stride;
        int32_t kk = k[y];
        for (size_t i = 0; i < rowlen; i++) acc[i] += row[i] * kk;
      }
      uint8_t *o = (uint8_t *)dst + (size_t)yy * rowlen;
      for (size_t i = 0; i < rowlen; i++) o[i] = clip8_fixed(acc[i]);
    }
    free(acc);
    goto done;
  }
  /* vertical pass for I;16, or a copy of the window's rows */
  for (int yy = 0; yy < ch; yy++) {
    int oy = y0 + yy;
    for (int xx = 0; xx < cw; xx++) {
      size_t out_at = ((size_t)yy * cw + xx) * C;
      if (!need_v) {
        size_t in_at = (size_t)(oy - vin_row0) * vin_stride + (size_t)xx * C;
        memcpy((uint8_t *)dst + out_at * sb, (const uint8_t *)vin + in_at * sb, C * sb);
        continue;
      }
      int ymin = vc.first[yy], n = vc.count[yy];
      if (!i16) {
        const int32_t *k = &vc.kfix[(size_t)yy * vc.ksize];
        for (int c = 0; c < C; c++) {
          int32_t ss = 1 << (PRECISION_BITS - 1);
          for (int y = 0; y < n; y++) {
            size_t in_at = (size_t)(ymin + y - vin_row0) * vin_stride + (size_t)xx * C + c;
            ss += ((const uint8_t *)vin)[in_at] * k[y];
          }
          ((uint8_t *)dst)[out_at + c] = clip8_fixed(ss);
        }
      } else {
        const double *k = &vc.k[(size_t)yy * vc.ksize];
        double ss = 0.0;
        for (int y = 0; y < n; y++) {
          size_t in_at = (size_t)(ymin + y - vin_row0) * vin_stride + (size_t)xx;
          ss += ((const uint16_t *)vin)[in_at] * k[y];
        }
        ((uint16_t *)dst)[out_at] = store_i16(round_up(ss));
      }
    }
  }
done:
  coeffs_free(&hc);
  coeffs_free(&vc);
  free(tmp);
  return rc;
}

/* Pillow's NEAREST resize: an affine scale sampling at accumulated
 * (double) pixel-centre positions, COORD() truncating.  The sum is
 * accumulated from output 0 as Pillow does, so that the window's positions
 * carry the same rounding. */
static void nearest_table(int in_size, int out_size, int out0, int n, int *tab) {
  double a = (double)((float)in_size - 0.0f) / out_size;
  double pos = 0.0 + a * 0.5;
  for (int x = 0; x < out0 + n; x++) {
    if (x >= out0) {
      int v = pos < 0.0 ? -1 : (int)pos;
      tab[x - out0] = v < 0 ? 0 : v >= in_size ? in_size - 1 : v; /* in range for a scale */
    }
    pos += a;
  }
}

static int resample_nearest(const uint8_t *src, int w, int h, int C, int dw,
                            int dh, int x0, int y0, int cw, int ch,
                            uint8_t *dst) {
  int *xt = malloc((size_t)cw * sizeof *xt), *yt = malloc((size_t)ch * sizeof *yt);
  if (!xt || !yt) {
    free(xt);
    free(yt);
    return vlm_seterr(VLM_ENOMEM, "resize: nearest tables");
  }
  nearest_table(w, dw, x0, cw, xt);
  nearest_table(h, dh, y0, ch, yt);
  for (int yy = 0; yy < ch; yy++)
    for (int xx = 0; xx < cw; xx++)
      memcpy(dst + ((size_t)yy * cw + xx) * C, src + ((size_t)yt[yy] * w + xt[xx]) * C, C);
  free(xt);
  free(yt);
  return 0;
}

/* MULDIV255 of Pillow: a * b / 255 rounded. */
static inline uint8_t muldiv255(unsigned a, unsigned b) {
  unsigned t = a * b + 128;
  return (uint8_t)(((t >> 8) + t) >> 8);
}

/* RGBA -> RGBa (Pillow's rgbA2rgba), LA -> La likewise. */
static void premultiply(uint8_t *px, size_t n, int C) {
  for (size_t i = 0; i < n; i++, px += C) {
    unsigned a = px[C - 1];
    for (int c = 0; c < C - 1; c++) px[c] = muldiv255(px[c], a);
  }
}

/* RGBa -> RGBA (Pillow's rgba2rgbA): integer division, clipped. */
static void unpremultiply(uint8_t *px, size_t n, int C) {
  for (size_t i = 0; i < n; i++, px += C) {
    unsigned a = px[C - 1];
    if (a == 255 || a == 0) continue;
    for (int c = 0; c < C - 1; c++) {
      unsigned v = 255u * px[c] / a;
      px[c] = v > 255 ? 255 : (uint8_t)v;
    }
  }
}

int vlm__mode_sample_bytes(vlm__image_mode mode) { return mode == VLM__MODE_I16 ? 2 : 1; }

int vlm__decoded_resize_window(const vlm__decoded *src, int dw, int dh, int x0,
                               int y0, int cw, int ch, vlm__decoded *dst) {
  int rc = 0;
  uint8_t *pre = NULL;
  if (dw < 1 || dh < 1 || x0 < 0 || y0 < 0 || cw < 1 || ch < 1 || x0 + cw > dw ||
      y0 + ch > dh)
    return vlm_seterr(VLM_EINVAL, "resize: bad window %dx%d+%d+%d of %dx%d", cw, ch, x0,
                      y0, dw, dh);
  int C = src->channels, sb = vlm__mode_sample_bytes(src->mode);
  *dst = *src;
  dst->pixels = NULL;
  dst->w = cw;
  dst->h = ch;
  dst->pixels = malloc((size_t)cw * ch * C * sb);
  if (!dst->pixels) return vlm_seterr(VLM_ENOMEM, "resize: %dx%d", cw, ch);

  if (dw == src->w && dh == src->h) { /* Pillow: same size is a copy */
    for (int y = 0; y < ch; y++)
      memcpy(dst->pixels + (size_t)y * cw * C * sb,
             src->pixels + ((size_t)(y0 + y) * src->w + x0) * C * sb, (size_t)cw * C * sb);
    return 0;
  }
  switch (src->mode) {
  case VLM__MODE_P:
  case VLM__MODE_1:
    rc = resample_nearest(src->pixels, src->w, src->h, C, dw, dh, x0, y0, cw, ch,
                          dst->pixels);
    break;
  case VLM__MODE_LA:
  case VLM__MODE_RGBA: {
    size_t n = (size_t)src->w * src->h;
    pre = malloc(n * C);
    if (!pre) {
      rc = vlm_seterr(VLM_ENOMEM, "resize: premultiplied copy %dx%d", src->w, src->h);
      break;
    }
    memcpy(pre, src->pixels, n * C);
    premultiply(pre, n, C);
    rc = resample(pre, src->w, src->h, C, 0, dw, dh, x0, y0, cw, ch, dst->pixels);
    if (rc == 0) unpremultiply(dst->pixels, (size_t)cw * ch, C);
    break;
  }
  default:
    rc = resample(src->pixels, src->w, src->h, C, src->mode == VLM__MODE_I16, dw, dh, x0,
                  y0, cw, ch, dst->pixels);
    break;
  }
  free(pre);
  if (rc) {
    free(dst->pixels);
    dst->pixels = NULL;
  }
  return rc;
}

/* ---- mode conversions ------------------------------------------------ */

void vlm__decoded_to_rgb(const vlm__decoded *im, uint8_t *rgb) {
  size_t n = (size_t)im->w * im->h;
  const uint8_t *p = im->pixels;
  for (size_t i = 0; i < n; i++, rgb += 3) {
    switch (im->mode) {
    case VLM__MODE_L:
    case VLM__MODE_1:
      rgb[0] = rgb[1] = rgb[2] = p[i];
      break;
    case VLM__MODE_LA:
      rgb[0] = rgb[1] = rgb[2] = p[2 * i];
      break;
    case VLM__MODE_RGB:
      memcpy(rgb, p + 3 * i, 3);
      break;
    case VLM__MODE_RGBA:
      memcpy(rgb, p + 4 * i, 3);
      break;
    case VLM__MODE_P: {
      unsigned idx = p[i];
      if ((int)idx < im->palette_n) memcpy(rgb, im->palette + 3 * idx, 3);
      else rgb[0] = rgb[1] = rgb[2] = 0;
      break;
    }
    case VLM__MODE_I16: {
      uint16_t v = ((const uint16_t *)(const void *)p)[i];
      rgb[0] = rgb[1] = rgb[2] = v > 255 ? 255 : (uint8_t)v;
      break;
    }
    case VLM__MODE_CMYK: { /* Pillow's cmyk2rgb */
      const uint8_t *q = p + 4 * i;
      int nk = 255 - q[3];
      for (int c = 0; c < 3; c++) {
        int v = nk - muldiv255(q[c], (unsigned)nk);
        rgb[c] = v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
      }
      break;
    }
    }
  }
}

static inline uint8_t over_white(unsigned c, unsigned a) {
  return (uint8_t)((c * a + 255u * (255u - a) + 127u) / 255u);
}

/* VLM_ALPHA_WHITE: composite straight alpha onto white, c' = round((c a +
 * 255 (255 - a)) / 255).  LA and RGBA lose their alpha channel (L, RGB);
 * a palette with tRNS becomes RGB; an 8-bit L/RGB tRNS key colour becomes
 * white.  Images without transparency are unchanged. */
int vlm__decoded_flatten_white(vlm__decoded *im) {
  size_t n = (size_t)im->w * im->h;
  uint8_t *p = im->pixels;
  switch (im->mode) {
  case VLM__MODE_LA:
  case VLM__MODE_RGBA: {
    int C = im->channels;
    for (size_t i = 0; i < n; i++)
      for (int c = 0; c < C - 1; c++)
        p[i * (C - 1) + c] = over_white(p[i * C + c], p[i * C + C - 1]);
    im->channels = C - 1;
    im->mode = im->mode == VLM__MODE_LA ? VLM__MODE_L : VLM__MODE_RGB;
    break;
  }
  case VLM__MODE_P: {
    if (!im->has_trns) break;
    uint8_t *rgb = malloc(n * 3);
    if (!rgb) return vlm_seterr(VLM_ENOMEM, "alpha: %dx%d", im->w, im->h);
    for (size_t i = 0; i < n; i++) {
      unsigned idx = p[i], a = im->trns_alpha[idx];
      for (int c = 0; c < 3; c++) {
        unsigned v = (int)idx < im->palette_n ? im->palette[3 * idx + c] : 0;
        rgb[3 * i + c] = over_white(v, a);
      }
    }
    free(im->pixels);
    im->pixels = rgb;
    im->mode = VLM__MODE_RGB;
    im->channels = 3;
    break;
  }
  case VLM__MODE_L:
  case VLM__MODE_1:
    if (!im->has_trns) break;
    for (size_t i = 0; i < n; i++)
      if (p[i] == im->trns_key[0]) p[i] = 255;
    break;
  case VLM__MODE_RGB:
    if (!im->has_trns) break;
    for (size_t i = 0; i < n; i++)
      if (p[3 * i] == im->trns_key[0] && p[3 * i + 1] == im->trns_key[1] &&
          p[3 * i + 2] == im->trns_key[2])
        p[3 * i] = p[3 * i + 1] = p[3 * i + 2] = 255;
    break;
  default:
    break;
  }
  im->has_trns = 0;
  return 0;
}

/* ---- the pipeline ----------------------------------------------------- */

/* Python's int(round(d / 2.0)) for d >= 0: halves go to the even side. */
static int center_offset(int d) {
  int q = d / 2;
  if ((d & 1) && (q & 1)) q++;
  return q;
}

void vlm__preprocess_normalize(const vlm__preprocess_cfg *cfg, const uint8_t *rgb,
                               float *pixels) {
  int S = cfg->crop;
  size_t plane = (size_t)S * S;
  /* float32(v * factor), the product in double, as transformers' rescale;
   * for 1/255 it equals ToTensor's v / 255.0f for all 256 values. */
  double factor = cfg->rescale > 0 ? cfg->rescale : 1.0 / 255;
  for (size_t i = 0; i < plane; i++)
    for (int c = 0; c < 3; c++) {
      float v = (float)(rgb[3 * i + c] * factor);
      pixels[c * plane + i] = (v - cfg->mean[c]) / cfg->std[c];
    }
}

/* convert("RGB") of im into out (its own pixels; free with
 * vlm__decoded_free).  im is left as it is: a caller may still want its
 * alpha (the thumbnail of vlm_clip_preprocess_image goes onto white). */
static int convert_to_rgb(const vlm__decoded *im, vlm__decoded *out) {
  *out = *im;
  out->pixels = malloc((size_t)im->w * im->h * 3);
  if (!out->pixels)
    return vlm_seterr(VLM_ENOMEM, "preprocess: %dx%d", im->w, im->h);
  vlm__decoded_to_rgb(im, out->pixels);
  out->mode = VLM__MODE_RGB;
  out->channels = 3;
  out->has_trns = 0;
  return 0;
}

int vlm__preprocess_decoded(const vlm__preprocess_cfg *cfg, vlm__decoded *im,
                            float *pixels) {
  int rc = 0;
  vlm__decoded win = {0}, conv = {0};
  uint8_t *rgb = NULL;
  int n = cfg->resize, S = cfg->crop;
  int shortest = cfg->do_resize && cfg->resize_w <= 0;
  if (S < 1 || (shortest && (n < 1 || (cfg->center_crop && S > n))) ||
      (cfg->do_resize && !shortest && cfg->resize_h < 1))
    return vlm_seterr(VLM_EINVAL, "preprocess: resize %d / crop %d not supported", n, S);
  if (cfg->exif_transpose && (rc = vlm__decoded_apply_orientation(im)) != 0) return rc;
  if (cfg->alpha == VLM_ALPHA_WHITE && (rc = vlm__decoded_flatten_white(im)) != 0) return rc;
  const vlm__decoded *src = im;
  if (cfg->rgb_first && im->mode != VLM__MODE_RGB) {
    if ((rc = convert_to_rgb(im, &conv)) != 0) return rc;
    src = &conv;
  }
  int w = im->w, h = im->h, dw = w, dh = h;
  if (shortest) {
    /* torchvision Resize(n) (and transformers' shortest_edge): shorter side
     * -> n, longer -> int(n * long / short) */
    double d_long = w <= h ? (double)((int64_t)n * h) / w : (double)((int64_t)n * w) / h;
    if (d_long > MAX_RESIZED_SIDE) {
      rc = vlm_seterr(VLM_ETOOBIG, "preprocess: %dx%d: aspect ratio too extreme (%.0f px long)",
                      w, h, d_long);
      goto done;
    }
    if (w <= h) {
      dw = n;
      dh = (int)d_long;
    } else {
      dh = n;
      dw = (int)d_long;
    }
  } else if (cfg->do_resize) {
    dw = cfg->resize_w;
    dh = cfg->resize_h;
  }
  int x0 = 0, y0 = 0;
  if (cfg->center_crop) {
    if (dw < S || dh < S) {
      rc = vlm_seterr(VLM_EINVAL, "preprocess: a %dx%d image is smaller than the %dx%d crop",
                      dw, dh, S, S);
      goto done;
    }
    x0 = cfg->crop_floor ? (dw - S) / 2 : center_offset(dw - S);
    y0 = cfg->crop_floor ? (dh - S) / 2 : center_offset(dh - S);
  } else if (dw != S || dh != S) {
    rc = vlm_seterr(VLM_EINVAL, "preprocess: a %dx%d image without resize or crop does not "
                    "fit the model's %dx%d input", dw, dh, S, S);
    goto done;
  }
  if ((rc = vlm__decoded_resize_window(src, dw, dh, x0, y0, S, S, &win)) != 0) goto done;
  rgb = malloc((size_t)S * S * 3);
  if (!rgb) {
    rc = vlm_seterr(VLM_ENOMEM, "preprocess: %dx%d", S, S);
    goto done;
  }
  vlm__decoded_to_rgb(&win, rgb);
  vlm__preprocess_normalize(cfg, rgb, pixels);
done:
  free(win.pixels);
  free(conv.pixels);
  free(rgb);
  return rc;
}

int vlm__preprocess(const vlm__preprocess_cfg *cfg, const void *data, size_t len,
                    float *pixels) {
  vlm__decoded im;
  if (!cfg || !data || !pixels) return vlm_seterr(VLM_EINVAL, "preprocess: NULL argument");
  int rc = vlm__image_decode_native(data, len, cfg->max_pixels, &im);
  if (rc) return rc;
  rc = vlm__preprocess_decoded(cfg, &im, pixels);
  vlm__decoded_free(&im);
  return rc;
}

/* ---- RGB8 helpers for thumbnails and training augmentation ----------- */

int vlm__image_resize(const vlm_image *src, int w, int h, vlm_image *out) {
  memset(out, 0, sizeof *out);
  if (!src || !src->rgb || src->w < 1 || src->h < 1 || w < 1 || h < 1)
    return vlm_seterr(VLM_EINVAL, "resize: bad image or size %dx%d", w, h);
  vlm__decoded in = {.w = src->w, .h = src->h, .mode = VLM__MODE_RGB, .channels = 3,
                     .pixels = src->rgb};
  vlm__decoded res;
  int rc = vlm__decoded_resize_window(&in, w, h, 0, 0, w, h, &res);
  if (rc) return rc;
  out->w = w;
  out->h = h;
  out->rgb = res.pixels;
  return 0;
}

int vlm__image_crop(const vlm_image *src, int x, int y, int w, int h, vlm_image *out) {
  memset(out, 0, sizeof *out);
  if (!src || !src->rgb || x < 0 || y < 0 || w < 1 || h < 1 || x + w > src->w ||
      y + h > src->h)
    return vlm_seterr(VLM_EINVAL, "crop: %dx%d+%d+%d outside the image", w, h, x, y);
  out->rgb = malloc((size_t)w * h * 3);
  if (!out->rgb) return vlm_seterr(VLM_ENOMEM, "crop: %dx%d", w, h);
  for (int r = 0; r < h; r++)
    memcpy(out->rgb + (size_t)r * w * 3, src->rgb + ((size_t)(y + r) * src->w + x) * 3,
           (size_t)w * 3);
  out->w = w;
  out->h = h;
  return 0;
}
