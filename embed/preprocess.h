/* preprocess.h - image decoding and CLIP preprocessing (internal to embed/).
 *
 * Reproduces the reference pipeline: decode, convert as PIL does per mode,
 * resize the shorter side to `resize` with PIL's bicubic filter
 * (antialiased when shrinking), center crop crop x crop, scale to [0,1],
 * normalize with mean/std, CHW float32.
 */
#ifndef VLM_PREPROCESS_H
#define VLM_PREPROCESS_H

#include <stddef.h>
#include <stdint.h>

#include "vlm_clip.h"

typedef struct {
  int resize;           /* shortest edge after resize */
  int crop;             /* center crop side (= model image size) */
  float mean[3], std[3];
  vlm_alpha_mode alpha;
  uint64_t max_pixels;  /* 0 = default cap */
} vlm__preprocess_cfg;

/* CLIP's defaults for a given image size. */
void vlm__preprocess_defaults(vlm__preprocess_cfg *cfg, int image_size);

/* Decode JPEG/PNG bytes and preprocess into pixels[3 * crop * crop]. */
int vlm__preprocess(const vlm__preprocess_cfg *cfg, const void *data,
                    size_t len, float *pixels);

#endif
