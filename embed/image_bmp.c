/* image_bmp.c - Windows BMP decoding as Pillow 9.4's BmpImagePlugin reads
 * it (no Debian library keeps the palette modes Pillow resizes in):
 *
 * - headers: OS/2 v1 (12 bytes), Windows v3 (40), OS/2 v2 (64), v4 (108),
 *   v5 (124); a negative height (its top byte 0xFF) is a top-down image,
 *   otherwise rows are stored bottom-up;
 * - 1/4/8 bits: mode P with the palette (BGR + pad, `colors` entries, or
 *   2^bits when 0), except a 2-colour black/white palette (mode 1) and a
 *   palette that is the gray ramp 0, 1, 2, ... (mode L);
 * - 16 bits: RGB from 5-5-5 (or 5-6-5 bitfields), each field scaled to
 *   8 bits with integer division (Pillow's BGR;15 / BGR;16 unpackers);
 *   24 bits: BGR; 32 bits: BGRX, or with bitfields the byte-aligned mask
 *   layouts Pillow knows (BGRX, XBGR, ABGR, RGBA, BGRA), RGBA when the
 *   layout has an alpha byte;
 * - RLE8 / RLE4 as Pillow's BmpRleDecoder runs them (encoded and absolute
 *   runs, end of line, delta, end of bitmap; a run past the row's end is
 *   cut, absolute runs are not), into mode P or L;
 * - the pixel data starts at the file header's offset; rows are padded to
 *   4 bytes; data that ends before the last row is VLM_ECORRUPT (Pillow
 *   refuses a truncated file), as is an RLE stream that stops early.
 */
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "vlm_error.h"

static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const uint8_t *p) { return le16(p) | le16(p + 2) << 16; }

enum { BI_RGB = 0, BI_RLE8 = 1, BI_RLE4 = 2, BI_BITFIELDS = 3 };

/* Pillow's BmpRleDecoder into idx[w * h] (row 0 = the first stored row);
 * 0 when it filled the image, else VLM_ECORRUPT. */
static int bmp_rle(const uint8_t *data, size_t len, size_t pos, int rle4, uint32_t w, uint32_t h,
                   uint8_t *idx) {
  size_t n = (size_t)w * h, have = 0; /* logical length of Pillow's `data` */
  uint32_t x = 0;
#define PUT(v)                                                                                   \
  do {                                                                                           \
    if (have < n) idx[have] = (uint8_t)(v);                                                      \
    have++;                                                                                      \
  } while (0)
  memset(idx, 0, n);
  while (have < n) {
    if (pos + 2 > len) break;
    uint32_t count = data[pos], byte = data[pos + 1];
    pos += 2;
    if (count) { /* encoded run, cut at the row's end */
      if (x + count > w) count = w > x ? w - x : 0;
      for (uint32_t i = 0; i < count; i++)
        PUT(rle4 ? (i % 2 ? byte & 15 : byte >> 4) : byte);
      x += count;
    } else if (byte == 0) { /* end of line */
      while (have % w) PUT(0);
      x = 0;
    } else if (byte == 1) { /* end of bitmap */
      break;
    } else if (byte == 2) { /* delta */
      if (pos + 2 > len) break;
      size_t skip = data[pos] + (size_t)data[pos + 1] * w;
      pos += 2;
      if (have < n) memset(idx + have, 0, skip < n - have ? skip : n - have);
      have += skip;
      x = (uint32_t)(have % w);
    } else { /* absolute run */
      size_t want = rle4 ? byte / 2 : byte, got = len - pos < want ? len - pos : want;
      for (size_t i = 0; i < got; i++) {
        if (rle4) {
          PUT(data[pos + i] >> 4);
          PUT(data[pos + i] & 15);
        } else {
          PUT(data[pos + i]);
        }
      }
      pos += got;
      if (got < want) break;
      x += byte;
      if (pos % 2) pos++; /* word alignment, in file offsets as Pillow's tell() */
    }
  }
#undef PUT
  return have >= n ? 0 : vlm_seterr(VLM_ECORRUPT, "BMP: RLE data ends early");
}

int vlm__decode_bmp(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out) {
  if (len < 18) return vlm_seterr(VLM_ECORRUPT, "BMP: truncated header");
  size_t offset = le32(data + 10), hsize = le32(data + 14);
  if (hsize != 12 && hsize != 40 && hsize != 64 && hsize != 108 && hsize != 124)
    return vlm_seterr(VLM_EUNSUPPORTED, "BMP: unsupported header size %zu", hsize);
  if (len < 14 + hsize) return vlm_seterr(VLM_ECORRUPT, "BMP: truncated header");
  const uint8_t *hd = data + 18; /* the header after its size field */
  uint32_t w, h, bits, compression = BI_RGB, colors = 0;
  int topdown = 0, pad = 4;
  uint32_t mask[4] = {0, 0, 0, 0};
  size_t pos = 14 + hsize; /* where the palette (or 40-byte header masks) follow */
  if (hsize == 12) {
    w = le16(hd);
    h = le16(hd + 2);
    bits = le16(hd + 6);
    pad = 3;
  } else {
    topdown = hd[7] == 0xFF;
    w = le32(hd);
    h = topdown ? (uint32_t)(0u - le32(hd + 4)) : le32(hd + 4);
    bits = le16(hd + 10);
    compression = le32(hd + 12);
    colors = le32(hd + 28);
    if (compression == BI_BITFIELDS) {
      if (hsize >= 56) {
        for (int i = 0; i < 4; i++) mask[i] = le32(hd + 36 + 4 * i);
      } else { /* three masks after a 40-byte header; no alpha */
        if (len < pos + 12) return vlm_seterr(VLM_ECORRUPT, "BMP: truncated bitfields");
        for (int i = 0; i < 3; i++) mask[i] = le32(data + pos + 4 * i);
        pos += 12;
      }
    }
  }
  int rc = vlm__image_check_dims(w, h, max_pixels, "BMP");
  if (rc) return rc;
  if (!colors) colors = bits < 32 ? 1u << bits : 0;
  if (offset == 14 + hsize && bits <= 8) offset += 4 * (size_t)colors;
  if (bits != 1 && bits != 4 && bits != 8 && bits != 16 && bits != 24 && bits != 32)
    return vlm_seterr(VLM_EUNSUPPORTED, "BMP: unsupported pixel depth %u", bits);
  /* the layout of a direct-colour pixel: byte per channel (R, G, B, A;
   * -1 absent) for 24/32 bits, or 5-5-5 / 5-6-5 for 16 */
  int byte_of[4] = {2, 1, 0, -1}, g6 = 0, rgba = 0;
  if (compression == BI_BITFIELDS) {
    static const uint32_t m32[][4] = {{0xFF0000, 0xFF00, 0xFF, 0},
                                      {0xFF000000, 0xFF0000, 0xFF00, 0},
                                      {0xFF000000, 0xFF0000, 0xFF00, 0xFF},
                                      {0xFF, 0xFF00, 0xFF0000, 0xFF000000},
                                      {0xFF0000, 0xFF00, 0xFF, 0xFF000000},
                                      {0, 0, 0, 0}};
    int known = 0;
    if (bits == 32) {
      for (size_t i = 0; i < sizeof m32 / sizeof m32[0]; i++)
        if (!memcmp(mask, m32[i], sizeof mask)) known = 1;
      if (known && !mask[0]) { /* all zero: Pillow reads BGRA */
        mask[0] = 0xFF0000;
        mask[1] = 0xFF00;
        mask[2] = 0xFF;
        mask[3] = 0xFF000000;
      }
      for (int c = 0; c < 4 && known; c++) {
        byte_of[c] = -1;
        for (int b = 0; b < 4; b++)
          if (mask[c] == 0xFFu << (8 * b)) byte_of[c] = b;
      }
      rgba = known && mask[3];
    } else if (bits == 24) {
      known = mask[0] == 0xFF0000 && mask[1] == 0xFF00 && mask[2] == 0xFF;
    } else if (bits == 16) {
      g6 = mask[0] == 0xF800 && mask[1] == 0x7E0 && mask[2] == 0x1F;
      known = g6 || (mask[0] == 0x7C00 && mask[1] == 0x3E0 && mask[2] == 0x1F);
    }
    if (!known) return vlm_seterr(VLM_EUNSUPPORTED, "BMP: unsupported bitfields layout");
  } else if (compression == BI_RLE8 || compression == BI_RLE4) {
    if (bits > 8) return vlm_seterr(VLM_EUNSUPPORTED, "BMP: RLE of %u-bit pixels", bits);
  } else if (compression != BI_RGB) {
    return vlm_seterr(VLM_EUNSUPPORTED, "BMP: unsupported compression %u", compression);
  }
  /* palette: mode P, or 1 / L for the black-white and gray-ramp ones */
  if (bits <= 8) {
    if (colors == 0 || colors > 256)
      return vlm_seterr(VLM_EUNSUPPORTED, "BMP: palette of %u colours", colors);
    size_t avail = len > pos ? (len - pos) / pad : 0;
    int n = (int)(colors < avail ? colors : avail), gray = n == (int)colors;
    for (int i = 0; i < n; i++) {
      const uint8_t *q = data + pos + (size_t)i * pad; /* B, G, R */
      int want = colors == 2 ? i * 255 : i;
      if (q[0] != want || q[1] != want || q[2] != want) gray = 0;
      out->palette[3 * i] = q[2];
      out->palette[3 * i + 1] = q[1];
      out->palette[3 * i + 2] = q[0];
    }
    out->palette_n = n;
    out->mode = !gray ? VLM__MODE_P : colors == 2 && bits == 1 ? VLM__MODE_1 : VLM__MODE_L;
    if (gray && colors == 2 && bits != 1) out->mode = VLM__MODE_P; /* same pixels, see README */
    out->channels = 1;
  } else {
    out->mode = rgba ? VLM__MODE_RGBA : VLM__MODE_RGB;
    out->channels = rgba ? 4 : 3;
  }
  int C = out->channels;
  out->pixels = malloc((size_t)w * h * C);
  if (!out->pixels) return vlm_seterr(VLM_ENOMEM, "BMP: %ux%u", w, h);
  if (offset > len) return vlm_seterr(VLM_ECORRUPT, "BMP: pixel data offset %zu past the end", offset);
  if (compression == BI_RLE8 || compression == BI_RLE4) {
    uint8_t *idx = malloc((size_t)w * h);
    if (!idx) return vlm_seterr(VLM_ENOMEM, "BMP: %ux%u", w, h);
    rc = bmp_rle(data, len, offset, compression == BI_RLE4, w, h, idx);
    for (uint32_t y = 0; y < h && !rc; y++) /* rows bottom-up unless top-down */
      memcpy(out->pixels + (size_t)(topdown ? y : h - 1 - y) * w, idx + (size_t)y * w, w);
    free(idx);
    if (!rc && out->mode == VLM__MODE_1)
      rc = vlm_seterr(VLM_EUNSUPPORTED, "BMP: RLE with a black/white palette");
  } else {
    size_t stride = (((size_t)w * bits + 31) >> 3) & ~(size_t)3;
    if ((len - offset) / stride < h)
      return vlm_seterr(VLM_ECORRUPT, "BMP: truncated pixel data (%zu of %zu bytes)", len - offset,
                        stride * h);
    for (uint32_t y = 0; y < h; y++) {
      const uint8_t *in = data + offset + (size_t)y * stride;
      uint8_t *o = out->pixels + (size_t)(topdown ? y : h - 1 - y) * w * C;
      for (uint32_t x = 0; x < w; x++, o += C) {
        if (bits <= 8) {
          int per = 8 / bits, shift = 8 - (int)bits * (int)(x % per + 1);
          unsigned v = in[x / per] >> shift & ((1u << bits) - 1);
          o[0] = (uint8_t)(out->mode == VLM__MODE_1 ? (v ? 255 : 0) : v);
        } else if (bits == 16) {
          unsigned v = le16(in + 2 * x);
          if (g6) {
            o[0] = (uint8_t)((v >> 11 & 31) * 255 / 31);
            o[1] = (uint8_t)((v >> 5 & 63) * 255 / 63);
          } else {
            o[0] = (uint8_t)((v >> 10 & 31) * 255 / 31);
            o[1] = (uint8_t)((v >> 5 & 31) * 255 / 31);
          }
          o[2] = (uint8_t)((v & 31) * 255 / 31);
        } else {
          const uint8_t *p = in + (size_t)x * (bits / 8);
          for (int c = 0; c < C; c++) o[c] = p[byte_of[c]];
        }
      }
    }
  }
  if (!rc) {
    out->w = (int)w;
    out->h = (int)h;
  }
  return rc;
}
