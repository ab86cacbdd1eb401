/* fuzz_image.c - libFuzzer target: any bytes through the decoders of every
 * format (JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC, AVIF), the EXIF
 * orientation, CLIP preprocessing and thumbnailing.  Checks: no crash or
 * leak, only the documented error codes, finite pixels, both decode paths
 * agreeing, orientation changing only the geometry.  The pixel cap is
 * 4 Mpx so a claimed-huge image stays cheap.  Seeds: one small file of
 * each format and layout in corpus/fuzz_image. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "preprocess.h"
#include "vlm_clip.h"
#include "vlm_error.h"

#define CAP (1u << 22)

static int allowed(int rc) {
  return rc == 0 || rc == VLM_ECORRUPT || rc == VLM_EUNSUPPORTED || rc == VLM_ETOOBIG;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  vlm__preprocess_cfg cfg;
  vlm__preprocess_defaults(&cfg, 32);
  cfg.max_pixels = CAP;
  cfg.alpha = size % 2 ? VLM_ALPHA_WHITE : VLM_ALPHA_DROP;
  cfg.exif_transpose = size % 4 >= 2;
  static __thread float px[3 * 32 * 32];
  int rc = vlm__preprocess(&cfg, data, size, px);
  if (!allowed(rc)) abort();
  if (rc == 0)
    for (int i = 0; i < 3 * 32 * 32; i++)
      if (!isfinite(px[i]) || fabsf(px[i]) > 3.0f) abort();
  vlm_clip_options opts = {.max_pixels = CAP, .alpha = cfg.alpha};
  vlm_image img;
  int rc2 = vlm_image_decode(data, size, &opts, &img);
  /* both paths agree, except that preprocessing alone refuses an aspect
   * ratio whose resized long side would pass 2^24 pixels */
  if (rc2 == 0 && rc == VLM_ETOOBIG) {
    uint64_t lo = img.w < img.h ? img.w : img.h, hi = img.w < img.h ? img.h : img.w;
    if (hi * 32 <= (1ull << 24) * lo) abort();
    vlm_image_free(&img);
    return 0;
  }
  if ((rc == 0) != (rc2 == 0)) abort();
  if (rc2 == 0) { /* the stored pixels: the same picture, maybe turned */
    vlm_clip_options keep = opts;
    keep.orientation = VLM_ORIENT_IGNORE;
    vlm_image raw;
    if (vlm_image_decode(data, size, &keep, &raw) != 0) abort();
    if (!((raw.w == img.w && raw.h == img.h) || (raw.w == img.h && raw.h == img.w))) abort();
    vlm_image_free(&raw);
  }
  if (rc2 == 0) {
    if (img.w < 1 || img.h < 1 || !img.rgb) abort();
    if ((uint64_t)img.w * img.h <= 512 * 512) {
      uint8_t *jpeg = NULL;
      size_t len = 0;
      if (vlm_image_thumbnail_jpeg(&img, 64, 80, &jpeg, &len) != 0) abort();
      vlm_image back;
      if (vlm_image_decode(jpeg, len, NULL, &back) != 0) abort();
      if (back.w > 64 || back.h > 64) abort();
      vlm_image_free(&back);
      free(jpeg);
    }
    vlm_image_free(&img);
  }
  return 0;
}
