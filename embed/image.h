/* image.h - decoding JPEG and PNG into the pixel modes PIL would open them
 * in (internal to embed/).
 *
 * The reference pipeline resizes an image in the mode PIL opened it in and
 * converts to RGB only after cropping, so decoding keeps that mode:
 *
 *   file                              mode            PIL mode
 *   JPEG, 1 component                 VLM__MODE_L     L
 *   JPEG, 3 components                VLM__MODE_RGB   RGB
 *   JPEG, 4 components (CMYK/YCCK)    VLM__MODE_CMYK  CMYK, stored inverted
 *                                                     as PIL's "CMYK;I" does
 *   PNG gray 1 bit                    VLM__MODE_1     1 (0 or 255)
 *   PNG gray 2/4/8 bits               VLM__MODE_L     L (scaled to 0..255)
 *   PNG gray 16 bits                  VLM__MODE_I16   I;16
 *   PNG gray+alpha 8/16 bits          VLM__MODE_LA    LA (16 bits: high bytes;
 *                                                     PIL's RGBA from LA;16B
 *                                                     resamples identically)
 *   PNG RGB 8/16 bits                 VLM__MODE_RGB   RGB (16 bits: high bytes)
 *   PNG RGBA 8/16 bits                VLM__MODE_RGBA  RGBA (16 bits: high bytes)
 *   PNG palette 1/2/4/8 bits          VLM__MODE_P     P (indices + palette)
 *
 * No gamma, colour profile or EXIF orientation is applied (PIL applies
 * none when opening).  tRNS is recorded for the alpha-onto-white option.
 */
#ifndef VLM_IMAGE_H
#define VLM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  VLM__MODE_L = 0,
  VLM__MODE_LA,
  VLM__MODE_RGB,
  VLM__MODE_RGBA,
  VLM__MODE_CMYK,
  VLM__MODE_P,
  VLM__MODE_1,
  VLM__MODE_I16
} vlm__image_mode;

/* Default cap on decoded width * height (a decompression-bomb guard). */
#define VLM__DEFAULT_MAX_PIXELS (64ull * 1024 * 1024)

typedef struct {
  int w, h;
  vlm__image_mode mode;
  int channels;      /* samples per pixel: L 1, LA 2, RGB 3, RGBA/CMYK 4,
                        P 1, 1 1, I16 1 */
  uint8_t *pixels;   /* w * h * channels bytes, row-major; for I16 the
                        samples are uint16_t in host order */
  /* P only: the palette (entries past palette_n are black, as Pillow) */
  uint8_t palette[256 * 3];
  int palette_n;
  /* tRNS: for P, alpha per index; for L/RGB (8-bit), the transparent key */
  int has_trns;
  uint8_t trns_alpha[256];
  uint16_t trns_key[3];
} vlm__decoded;

/* Decode JPEG or PNG bytes.  Width * height above max_pixels (0 = the
 * default) is VLM_ETOOBIG, checked from the header before any pixel memory
 * is allocated.  Errors: VLM_EUNSUPPORTED (not JPEG/PNG, or a variant the
 * decoders reject), VLM_ECORRUPT (truncated or corrupt data), VLM_ETOOBIG,
 * VLM_ENOMEM, VLM_EINVAL.  Thread safe. */
int vlm__image_decode_native(const void *data, size_t len, uint64_t max_pixels,
                             vlm__decoded *out);
void vlm__decoded_free(vlm__decoded *im); /* accepts NULL and zeroed */

/* Bytes per sample of a mode (2 for I16, else 1). */
int vlm__mode_sample_bytes(vlm__image_mode mode);


#endif
