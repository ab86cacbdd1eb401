/* image_exif.c - the EXIF orientation: reading it from an EXIF block and
 * turning decoded pixels upright as Pillow's ImageOps.exif_transpose does.
 *
 * Reading follows Pillow's Exif.load: an optional "Exif\0\0" prefix, a
 * TIFF header ("II*\0" or "MM\0*"), IFD0 at the header's offset, entries
 * read until the block ends (a truncated IFD keeps the entries before the
 * cut, as Pillow's loader does with a warning), a later entry of a tag
 * replacing an earlier one.  Pillow's value is an int only for one SHORT,
 * LONG, SSHORT or SLONG; anything else (a BYTE, a count of two, a value
 * outside 2..8) transposes nothing, so it reads as 1 here.
 */
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "vlm_error.h"

#define TAG_ORIENTATION 0x0112

static uint32_t rd16(const uint8_t *p, int le) {
  return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)p[0] << 8 | p[1];
}

static uint32_t rd32(const uint8_t *p, int le) {
  return le ? rd16(p, 1) | rd16(p + 2, 1) << 16 : rd16(p, 0) << 16 | rd16(p + 2, 0);
}

int vlm__exif_orientation(const uint8_t *exif, size_t len) {
  if (!exif) return 1;
  if (len >= 6 && !memcmp(exif, "Exif\0\0", 6)) {
    exif += 6;
    len -= 6;
  }
  if (len < 8) return 1;
  int le;
  if (!memcmp(exif, "II*\0", 4)) le = 1;
  else if (!memcmp(exif, "MM\0*", 4)) le = 0;
  else return 1;
  uint32_t ifd = rd32(exif + 4, le);
  if (ifd > len || len - ifd < 2) return 1;
  uint32_t n = rd16(exif + ifd, le);
  int orientation = 1;
  const uint8_t *e = exif + ifd + 2;
  for (uint32_t i = 0; i < n && (size_t)(e + 12 - exif) <= len; i++, e += 12) {
    if (rd16(e, le) != TAG_ORIENTATION) continue;
    uint32_t type = rd16(e + 2, le), count = rd32(e + 4, le);
    int64_t v = -1;
    if (count == 1) {
      if (type == 3) v = rd16(e + 8, le);                    /* SHORT */
      else if (type == 8) v = (int16_t)rd16(e + 8, le);      /* SSHORT */
      else if (type == 4) v = rd32(e + 8, le);               /* LONG */
      else if (type == 9) v = (int32_t)rd32(e + 8, le);      /* SLONG */
    }
    orientation = v >= 1 && v <= 8 ? (int)v : 1;
  }
  return orientation;
}

/* ---- exif_transpose ------------------------------------------------------ */

int vlm__decoded_apply_orientation(vlm__decoded *im) {
  int o = im->orientation;
  if (o < 2 || o > 8 || !im->pixels) {
    im->orientation = 1;
    return 0;
  }
  int w = im->w, h = im->h;
  size_t px = (size_t)im->channels * vlm__mode_sample_bytes(im->mode);
  int swap = o >= 5; /* TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90 */
  int ow = swap ? h : w, oh = swap ? w : h;
  uint8_t *dst = malloc((size_t)w * h * px);
  if (!dst) return vlm_seterr(VLM_ENOMEM, "orientation: %dx%d", w, h);
  const uint8_t *src = im->pixels;
  for (int y = 0; y < oh; y++) {
    uint8_t *out = dst + (size_t)y * ow * px;
    for (int x = 0; x < ow; x++, out += px) {
      /* the source pixel (sx, sy) of output pixel (x, y) */
      int sx, sy;
      switch (o) {
      case 2: sx = w - 1 - x; sy = y; break;         /* FLIP_LEFT_RIGHT */
      case 3: sx = w - 1 - x; sy = h - 1 - y; break; /* ROTATE_180 */
      case 4: sx = x; sy = h - 1 - y; break;         /* FLIP_TOP_BOTTOM */
      case 5: sx = y; sy = x; break;                 /* TRANSPOSE */
      case 6: sx = y; sy = h - 1 - x; break;         /* ROTATE_270 (90 clockwise) */
      case 7: sx = w - 1 - y; sy = h - 1 - x; break; /* TRANSVERSE */
      default: sx = w - 1 - y; sy = x; break;        /* 8: ROTATE_90 (counter-clockwise) */
      }
      memcpy(out, src + ((size_t)sy * w + sx) * px, px);
    }
  }
  free(im->pixels);
  im->pixels = dst;
  im->w = ow;
  im->h = oh;
  im->orientation = 1;
  return 0;
}
