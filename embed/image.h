/* image.h - decoding images into the pixel modes PIL would open them in
 * (internal to embed/).
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
 *   WebP without / with alpha         RGB / RGBA      RGB / RGBA (animated:
 *                                                     the first frame as
 *                                                     libwebp composes it)
 *   GIF, first frame                  P, or L when    P / L; the transparent
 *                                     the palette is  index as tRNS
 *                                     a gray ramp
 *   TIFF 1-bit gray                   VLM__MODE_1     1
 *   TIFF 2/4/8-bit gray               VLM__MODE_L     L (min-is-white inverted)
 *   TIFF 16-bit gray                  VLM__MODE_I16   I;16 / I;16B
 *   TIFF gray+alpha, RGB(X), RGBA     LA, RGB, RGBA   (16 bits: high bytes;
 *                                                     associated alpha
 *                                                     unpremultiplied)
 *   TIFF palette 1/2/4/8 bits         VLM__MODE_P     P (colormap high bytes)
 *   TIFF CMYK 8 bits (16: II only)    VLM__MODE_CMYK  CMYK (16 bits: high bytes)
 *   BMP 1/4/8 bits                    P, or 1 / L     as BmpImagePlugin: a
 *                                     when the        black/white or gray
 *                                     palette is gray ramp palette is dropped
 *   BMP 16/24/32 bits                 RGB / RGBA      RGB (RGBA when its
 *                                                     bitfields have alpha)
 *   HEIC / AVIF (libheif)             RGB / RGBA      as pillow-heif: 8 bits
 *
 * The format is sniffed from the bytes, never from a file name.  No gamma
 * or colour profile is applied (PIL applies none when opening).  tRNS is
 * recorded for the alpha-onto-white option.
 *
 * Orientation.  `orientation` is the EXIF orientation (1..8) the pixels
 * still need to be shown upright; 1 when there is none.  It is read from a
 * JPEG's APP1 Exif segment, a PNG eXIf chunk before the image data and a
 * WebP EXIF chunk; decoding never applies it (Pillow does not), and
 * vlm__decoded_apply_orientation does what ImageOps.exif_transpose does.
 * Two formats are upright already, and report 1:
 *   - TIFF: Pillow transposes a TIFF by its Orientation tag (274, the same
 *     tag EXIF uses) when it loads the pixels, and Pillow >= 10.1 then
 *     drops the tag so that exif_transpose does not turn it twice; the
 *     decoder does the same.  (Pillow 9.4 turned it twice and, since
 *     torchvision reads the size before the load, stretched orientations
 *     5-8: we follow the fixed behaviour.)
 *   - HEIC / AVIF: libheif applies the container's irot / imir transforms,
 *     as pillow-heif lets it, and pillow-heif then sets the EXIF
 *     orientation to 1 so it is not applied again; so do we.
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
  int orientation;   /* EXIF orientation still to apply, 1..8 (1 = none) */
} vlm__decoded;

/* Decode JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC or AVIF bytes.  Width *
 * height above max_pixels (0 = the default) is VLM_ETOOBIG, checked from
 * the header before any pixel memory is allocated.  Errors, their messages
 * naming the format: VLM_EUNSUPPORTED (no format we read, or a variant the
 * decoders reject), VLM_ECORRUPT (truncated or corrupt data), VLM_ETOOBIG,
 * VLM_ENOMEM, VLM_EINVAL.  Thread safe. */
int vlm__image_decode_native(const void *data, size_t len, uint64_t max_pixels,
                             vlm__decoded *out);
void vlm__decoded_free(vlm__decoded *im); /* accepts NULL and zeroed */

/* Bytes per sample of a mode (2 for I16, else 1). */
int vlm__mode_sample_bytes(vlm__image_mode mode);

/* Turn im upright by im->orientation as Pillow's ImageOps.exif_transpose
 * does (2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE,
 * 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90: a permutation of the pixels,
 * in any mode), then set im->orientation to 1.  Orientation 1 (or a value
 * outside 1..8) leaves the pixels alone.  0 or VLM_ENOMEM (im unchanged). */
int vlm__decoded_apply_orientation(vlm__decoded *im);

/* The EXIF orientation (tag 0x0112 of IFD0) of a TIFF-structured EXIF
 * block, with or without the "Exif\0\0" prefix of a JPEG APP1 segment:
 * 1..8, or 1 when the block has none or cannot be read (Pillow then
 * transposes nothing either).  Never reads outside [exif, exif + len). */
int vlm__exif_orientation(const uint8_t *exif, size_t len);

/* ---- the decoders, one per format (image.c, image_formats.c,
 * image_tiff.c, image_bmp.c); each fills *out (zeroed by the caller) and
 * sets an error message naming its format ---- */

/* VLM_ETOOBIG / VLM_ECORRUPT for a size the cap refuses or a zero side,
 * the message naming fmt. */
int vlm__image_check_dims(uint64_t w, uint64_t h, uint64_t max_pixels, const char *fmt);
int vlm__decode_webp(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out);
int vlm__decode_gif(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out);
int vlm__decode_tiff(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out);
int vlm__decode_bmp(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out);
int vlm__decode_heif(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out);


#endif
