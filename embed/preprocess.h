/* preprocess.h - image decoding and preprocessing (internal to embed/).
 *
 * Reproduces two reference pipelines:
 * - OpenAI CLIP's (torchvision over PIL; the CLIP family): decode, resize
 *   the shorter side to `resize` with PIL's bicubic filter (antialiased
 *   when shrinking) in the mode PIL opened the image in, center crop
 *   crop x crop (offsets rounded half to even), convert to RGB, scale to
 *   [0,1], normalize with mean/std, CHW float32.
 * - Hugging Face's (transformers.image_utils.load_image and the family's
 *   image processor; SigLIP, Chinese-CLIP): decode, EXIF orientation,
 *   convert("RGB"), bicubic resize (straight to resize_w x resize_h, or
 *   the shorter side to `resize`), center crop if asked (offsets floored,
 *   as transformers' center_crop), rescale, normalize.
 * The steps are switched by the fields below, read from
 * preprocessor_config.json over the family's defaults.
 */
#ifndef VLM_PREPROCESS_H
#define VLM_PREPROCESS_H

#include <stddef.h>
#include <stdint.h>

#include "vlm_clip.h"

typedef struct {
  int resize;           /* shortest edge after resize (resize_w = 0) */
  int resize_w, resize_h; /* > 0: resize straight to this, aspect not kept
                           (size {"height", "width"} of HF processors) */
  int do_resize;        /* 0: no resize (do_resize false) */
  int center_crop;      /* 0: no crop (do_center_crop false) */
  int crop;             /* center crop side (= model image size) */
  int crop_floor;       /* crop offsets floored (transformers), else
                           rounded half to even (torchvision) */
  int rgb_first;        /* convert("RGB") before resizing (HF pipelines),
                           else resize in the decoded mode (torchvision) */
  double rescale;       /* rescale_factor: float32(v * rescale in double) */
  float mean[3], std[3];
  vlm_alpha_mode alpha;
  uint64_t max_pixels;  /* 0 = default cap */
  int exif_transpose;   /* 1: turn the image upright by its EXIF
                           orientation right after decoding (Hugging Face
                           pipelines); 0 (default): ignore it, as the CLIP
                           reference does */
} vlm__preprocess_cfg;

/* CLIP's defaults for a given image size: shortest edge + center crop to
 * image_size, rescale 1/255, CLIP's mean and std, no EXIF. */
void vlm__preprocess_defaults(vlm__preprocess_cfg *cfg, int image_size);

/* Decode image bytes (image.h) and preprocess into pixels[3 * crop * crop]. */
int vlm__preprocess(const vlm__preprocess_cfg *cfg, const void *data,
                    size_t len, float *pixels);

/* ---- additive internal helpers (preprocess.c, image.c) ---- */

#include "image.h"

/* The same pipeline on an already decoded image (which it may modify:
 * exif_transpose turns it upright and the alpha-onto-white option
 * flattens it, in place; convert-first works on a copy).  With a crop,
 * the resized image must cover it (VLM_EINVAL otherwise, as when no resize
 * and no crop leave the image at another size than crop x crop). */
int vlm__preprocess_decoded(const vlm__preprocess_cfg *cfg, vlm__decoded *im,
                            float *pixels);

/* ToTensor + Normalize of a crop x crop RGB8 image into CHW floats. */
void vlm__preprocess_normalize(const vlm__preprocess_cfg *cfg,
                               const uint8_t *rgb, float *pixels);

/* Pillow's Image.resize((dw, dh), BICUBIC) in the image's own mode
 * (NEAREST for P and 1, premultiplied for LA and RGBA), restricted to the
 * output window [x0, x0+cw) x [y0, y0+ch): bit-identical to resizing fully
 * and then cropping.  dst gets its own pixels (free with
 * vlm__decoded_free); palette and tRNS are copied. */
int vlm__decoded_resize_window(const vlm__decoded *src, int dw, int dh, int x0,
                               int y0, int cw, int ch, vlm__decoded *dst);

/* Pillow's convert("RGB") of the whole image into rgb[w * h * 3]. */
void vlm__decoded_to_rgb(const vlm__decoded *im, uint8_t *rgb);

/* Composite onto white (VLM_ALPHA_WHITE), in place. */
int vlm__decoded_flatten_white(vlm__decoded *im);

/* Resize an RGB8 image to w x h exactly as Pillow's
 * Image.resize((w, h), BICUBIC) on an "RGB" image (antialiased when
 * shrinking).  For training augmentation (RandomResizedCrop = crop, then
 * this) and thumbnails.  *out is malloc'd; free with vlm_image_free. */
int vlm__image_resize(const vlm_image *src, int w, int h, vlm_image *out);

/* Area-averaging (box) resize of an RGB8 image to w x h, w <= src->w and
 * h <= src->h: each output pixel is the mean of the input rectangle it
 * covers (partial pixels weighted by coverage), in fixed point to within
 * one level of the exact mean; a flat image stays flat.  Much cheaper than
 * the bicubic resize for large reductions; for thumbnails.  *out is
 * malloc'd; free with vlm_image_free.  VLM_EINVAL for an upscale. */
int vlm__image_area_resize(const vlm_image *src, int w, int h, vlm_image *out);

/* PIL's img.crop((x, y, x + w, y + h)) inside the image; *out malloc'd. */
int vlm__image_crop(const vlm_image *src, int x, int y, int w, int h,
                    vlm_image *out);

#endif
