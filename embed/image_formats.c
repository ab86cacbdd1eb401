/* image_formats.c - WebP (libwebp), GIF (giflib) and HEIC/AVIF (libheif)
 * decoding into PIL's modes (image.h).  The libraries are the ones Pillow
 * and pillow-heif use, so the pixels are theirs.
 *
 * Every decoder reads the canvas size first and refuses it against the
 * pixel cap before any pixel memory is allocated, by us or the library.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <gif_lib.h>
#include <libheif/heif.h>
#include <webp/decode.h>
#include <webp/demux.h>

#include "image.h"
#include "vlm_error.h"

/* ---- WebP ---------------------------------------------------------------- */

/* Pillow 9.4 (built with libwebp's animation API, as Debian's is) opens
 * every WebP through WebPAnimDecoder in MODE_RGBA and shows its first
 * frame: the canvas composed by libwebp (transparent black outside the
 * frame).  The mode is RGBA when WebPGetFeatures reports alpha, else RGB
 * (Pillow's "RGBX" raw mode, X dropped).  The EXIF orientation comes from
 * the first EXIF chunk. */
int vlm__decode_webp(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out) {
  WebPBitstreamFeatures f;
  VP8StatusCode st = WebPGetFeatures(data, len, &f);
  if (st == VP8_STATUS_NOT_ENOUGH_DATA)
    return vlm_seterr(VLM_ECORRUPT, "WebP: truncated header");
  if (st != VP8_STATUS_OK)
    return vlm_seterr(st == VP8_STATUS_UNSUPPORTED_FEATURE ? VLM_EUNSUPPORTED : VLM_ECORRUPT,
                      "WebP: bad header (libwebp status %d)", (int)st);
  int rc = vlm__image_check_dims((uint64_t)f.width, (uint64_t)f.height, max_pixels, "WebP");
  if (rc) return rc;
  WebPData wd = {data, len};
  WebPAnimDecoderOptions opts;
  if (!WebPAnimDecoderOptionsInit(&opts))
    return vlm_seterr(VLM_EUNSUPPORTED, "WebP: libwebp version mismatch");
  opts.color_mode = MODE_RGBA;
  opts.use_threads = 0;
  WebPAnimDecoder *dec = WebPAnimDecoderNew(&wd, &opts);
  if (!dec) return vlm_seterr(VLM_ECORRUPT, "WebP: cannot parse the file (corrupt or truncated)");
  WebPAnimInfo info;
  uint8_t *frame = NULL;
  int timestamp = 0;
  if (!WebPAnimDecoderGetInfo(dec, &info)) {
    rc = vlm_seterr(VLM_ECORRUPT, "WebP: cannot read the canvas");
    goto done;
  }
  /* the canvas libwebp composes: WebPGetFeatures gave its size too */
  if ((rc = vlm__image_check_dims(info.canvas_width, info.canvas_height, max_pixels, "WebP")))
    goto done;
  if (!WebPAnimDecoderGetNext(dec, &frame, &timestamp)) {
    rc = vlm_seterr(VLM_ECORRUPT, "WebP: cannot decode the first frame");
    goto done;
  }
  int w = (int)info.canvas_width, h = (int)info.canvas_height, C = f.has_alpha ? 4 : 3;
  out->pixels = malloc((size_t)w * h * C);
  if (!out->pixels) {
    rc = vlm_seterr(VLM_ENOMEM, "WebP: %dx%d", w, h);
    goto done;
  }
  if (C == 4) {
    memcpy(out->pixels, frame, (size_t)w * h * 4);
  } else {
    for (size_t i = 0; i < (size_t)w * h; i++) memcpy(out->pixels + 3 * i, frame + 4 * i, 3);
  }
  out->w = w;
  out->h = h;
  out->channels = C;
  out->mode = C == 4 ? VLM__MODE_RGBA : VLM__MODE_RGB;
  const WebPDemuxer *demux = WebPAnimDecoderGetDemuxer(dec);
  WebPChunkIterator it;
  if (demux && WebPDemuxGetChunk(demux, "EXIF", 1, &it)) {
    out->orientation = vlm__exif_orientation(it.chunk.bytes, it.chunk.size);
    WebPDemuxReleaseChunkIterator(&it);
  }
done:
  WebPAnimDecoderDelete(dec);
  return rc;
}

/* ---- GIF ----------------------------------------------------------------- */

/* Pillow 9.4's GifImagePlugin, first frame:
 * - the canvas is the logical screen, grown to hold the frame if it
 *   reaches past it;
 * - the palette is the frame's local one if it has one, else the global
 *   one; a palette that is the identity gray ramp (entry i = (i, i, i)) is
 *   no palette, and the image is then mode L with the indices as gray;
 * - the canvas starts as the transparent index where the graphic control
 *   extension names one, else index 0; the frame's pixels (all of them,
 *   transparent ones included) are written into its rectangle;
 * - the transparent index becomes "transparency" (tRNS here): alpha 0
 *   for P, a gray key for L.
 * Only the first frame is decoded (DGifSlurp would decode every frame). */

typedef struct {
  const uint8_t *data;
  size_t len, pos;
} gif_src;

static int gif_read(GifFileType *gif, GifByteType *buf, int n) {
  gif_src *s = gif->UserData;
  size_t left = s->len - s->pos, k = n < 0 ? 0 : (size_t)n;
  if (k > left) k = left;
  memcpy(buf, s->data + s->pos, k);
  s->pos += k;
  return (int)k;
}

static int gif_fail(int err, const char *what) {
  const char *msg = GifErrorString(err);
  if (err == D_GIF_ERR_NOT_ENOUGH_MEM) return vlm_seterr(VLM_ENOMEM, "GIF: %s", what);
  return vlm_seterr(VLM_ECORRUPT, "GIF: %s: %s", what, msg ? msg : "error");
}

/* A palette that is not the identity gray ramp (Pillow's _is_palette_needed). */
static int gif_palette_needed(const ColorMapObject *cm) {
  for (int i = 0; i < cm->ColorCount; i++)
    if (cm->Colors[i].Red != i || cm->Colors[i].Green != i || cm->Colors[i].Blue != i) return 1;
  return 0;
}

int vlm__decode_gif(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out) {
  gif_src src = {data, len, 0};
  int err = 0, rc = 0, transparent = -1;
  uint8_t *row = NULL;
  GifFileType *gif = DGifOpen(&src, gif_read, &err);
  if (!gif) return gif_fail(err, "header");
  for (;;) {
    GifRecordType type;
    if (DGifGetRecordType(gif, &type) == GIF_ERROR) {
      rc = gif_fail(gif->Error, "records");
      goto done;
    }
    if (type == TERMINATE_RECORD_TYPE) {
      rc = vlm_seterr(VLM_ECORRUPT, "GIF: no image in the file");
      goto done;
    }
    if (type == EXTENSION_RECORD_TYPE) {
      int code;
      GifByteType *ext;
      if (DGifGetExtension(gif, &code, &ext) == GIF_ERROR) {
        rc = gif_fail(gif->Error, "extension");
        goto done;
      }
      /* graphic control: the transparent index when its flag is set */
      if (code == GRAPHICS_EXT_FUNC_CODE && ext && ext[0] >= 4 && (ext[1] & 1))
        transparent = ext[4];
      while (ext) {
        if (DGifGetExtensionNext(gif, &ext) == GIF_ERROR) {
          rc = gif_fail(gif->Error, "extension");
          goto done;
        }
      }
      continue;
    }
    if (type == IMAGE_DESC_RECORD_TYPE) break;
  }
  if (DGifGetImageDesc(gif) == GIF_ERROR) {
    rc = gif_fail(gif->Error, "image descriptor");
    goto done;
  }
  int fx = gif->Image.Left, fy = gif->Image.Top, fw = gif->Image.Width, fh = gif->Image.Height;
  int W = gif->SWidth > fx + fw ? gif->SWidth : fx + fw;
  int H = gif->SHeight > fy + fh ? gif->SHeight : fy + fh;
  if ((rc = vlm__image_check_dims((uint64_t)W, (uint64_t)H, max_pixels, "GIF"))) goto done;
  if (fw < 1 || fh < 1) {
    rc = vlm_seterr(VLM_ECORRUPT, "GIF: empty first frame %dx%d", fw, fh);
    goto done;
  }
  const ColorMapObject *cm = gif->Image.ColorMap ? gif->Image.ColorMap : gif->SColorMap;
  int palette = cm && gif_palette_needed(cm);
  if (gif->Image.ColorMap && !palette) cm = NULL; /* a gray local palette hides the global one */
  out->pixels = malloc((size_t)W * H);
  row = malloc((size_t)fw);
  if (!out->pixels || !row) {
    rc = vlm_seterr(VLM_ENOMEM, "GIF: %dx%d", W, H);
    goto done;
  }
  memset(out->pixels, transparent >= 0 ? transparent : 0, (size_t)W * H);
  /* rows arrive in file order: four passes when interlaced */
  static const int start[] = {0, 4, 2, 1}, step[] = {8, 8, 4, 2};
  int passes = gif->Image.Interlace ? 4 : 1;
  for (int p = 0; p < passes; p++)
    for (int y = passes > 1 ? start[p] : 0; y < fh; y += passes > 1 ? step[p] : 1) {
      if (DGifGetLine(gif, row, fw) == GIF_ERROR) {
        rc = gif_fail(gif->Error, "image data");
        goto done;
      }
      memcpy(out->pixels + (size_t)(fy + y) * W + fx, row, (size_t)fw);
    }
  out->w = W;
  out->h = H;
  out->channels = 1;
  if (palette) {
    out->mode = VLM__MODE_P;
    out->palette_n = cm->ColorCount < 256 ? cm->ColorCount : 256;
    for (int i = 0; i < out->palette_n; i++) {
      out->palette[3 * i] = cm->Colors[i].Red;
      out->palette[3 * i + 1] = cm->Colors[i].Green;
      out->palette[3 * i + 2] = cm->Colors[i].Blue;
    }
    memset(out->trns_alpha, 255, sizeof out->trns_alpha);
    if (transparent >= 0) {
      out->has_trns = 1;
      out->trns_alpha[transparent] = 0;
    }
  } else {
    out->mode = VLM__MODE_L;
    if (transparent >= 0) {
      out->has_trns = 1;
      out->trns_key[0] = (uint16_t)transparent;
    }
  }
done:
  free(row);
  DGifCloseFile(gif, &err);
  return rc;
}

/* ---- HEIC / AVIF ----------------------------------------------------------- */

/* libheif decodes both (libde265 for HEVC, dav1d or libaom for AV1), as
 * pillow-heif does: the primary image, the container's transforms (irot,
 * imir, clap) applied, 8 bits per sample (higher depths scaled down by
 * libheif, pillow-heif's convert_hdr_to_8bit default), RGB, or RGBA when
 * the image has alpha.  Both the shown size and the coded one (ispe,
 * before a crop) are checked against the cap from the headers, and
 * libheif itself refuses sides longer than the cap allows. */

static int heif_fail(struct heif_error e, const char *what) {
  int code = VLM_ECORRUPT;
  if (e.subcode == heif_suberror_Security_limit_exceeded) /* under any error code */
    code = VLM_ETOOBIG;
  else if (e.code == heif_error_Unsupported_filetype || e.code == heif_error_Unsupported_feature ||
      e.code == heif_error_Plugin_loading_error ||
      (e.code == heif_error_Decoder_plugin_error && e.subcode == heif_suberror_Unsupported_codec))
    code = VLM_EUNSUPPORTED;
  else if (e.code == heif_error_Memory_allocation_error)
    code = VLM_ENOMEM;
  return vlm_seterr(code, "HEIF: %s: %s", what, e.message ? e.message : "error");
}

/* libheif registers its codecs in heif_init: once per process, before any
 * thread decodes (never undone: other users of libheif in the process may
 * hold it too). */
static pthread_once_t heif_once = PTHREAD_ONCE_INIT;
static const char *heif_av1_decoder; /* "aom" when libheif has it, else NULL */

/* AV1 decoding is exact (every conforming decoder gives the same pixels),
 * so the decoder is ours to choose: libheif 1.15's dav1d plugin leaks its
 * input buffer when dav1d rejects the data (found by fuzz_image), its aom
 * plugin does not. */
static void heif_start(void) {
  heif_init(NULL);
  const struct heif_decoder_descriptor *d[8];
  int n = heif_get_decoder_descriptors(heif_compression_AV1, d, 8);
  for (int i = 0; i < n; i++) {
    const char *id = heif_decoder_descriptor_get_id_name(d[i]);
    if (id && !strcmp(id, "aom")) heif_av1_decoder = "aom";
  }
}

int vlm__decode_heif(const uint8_t *data, size_t len, uint64_t max_pixels, vlm__decoded *out) {
  pthread_once(&heif_once, heif_start);
  enum heif_filetype_result ft = heif_check_filetype(data, len > 12 ? 12 : (int)len);
  if (ft == heif_filetype_no || ft == heif_filetype_yes_unsupported)
    return vlm_seterr(VLM_EUNSUPPORTED, "image: an ISO media file that is not HEIC or AVIF");
  int rc = 0;
  struct heif_context *ctx = heif_context_alloc();
  struct heif_image_handle *handle = NULL;
  struct heif_image *img = NULL;
  struct heif_decoding_options *opt = NULL;
  if (!ctx) return vlm_seterr(VLM_ENOMEM, "HEIF: decoder");
  /* libheif's own guard: no side longer than the cap could allow */
  uint64_t side = max_pixels < (1u << 30) ? max_pixels : (1u << 30);
  heif_context_set_maximum_image_size_limit(ctx, (int)side);
  heif_context_set_max_decoding_threads(ctx, 0); /* callers decode in parallel */
  struct heif_error e = heif_context_read_from_memory_without_copy(ctx, data, len, NULL);
  if (e.code) {
    rc = heif_fail(e, "file");
    goto done;
  }
  e = heif_context_get_primary_image_handle(ctx, &handle);
  if (e.code) {
    rc = heif_fail(e, "primary image");
    goto done;
  }
  /* the shown size, and the coded size before a crop (clap) shrinks it:
   * the decoder allocates the latter */
  int w = heif_image_handle_get_width(handle), h = heif_image_handle_get_height(handle);
  int cw = heif_image_handle_get_ispe_width(handle), ch = heif_image_handle_get_ispe_height(handle);
  if ((rc = vlm__image_check_dims(w < 0 ? 0 : (uint64_t)w, h < 0 ? 0 : (uint64_t)h, max_pixels,
                                  "HEIF")) ||
      (rc = vlm__image_check_dims(cw < 0 ? 0 : (uint64_t)cw, ch < 0 ? 0 : (uint64_t)ch,
                                  max_pixels, "HEIF")))
    goto done;
  int alpha = heif_image_handle_has_alpha_channel(handle);
  opt = heif_decoding_options_alloc();
  if (!opt) {
    rc = vlm_seterr(VLM_ENOMEM, "HEIF: options");
    goto done;
  }
  opt->convert_hdr_to_8bit = 1;
  int blen = len > (1 << 16) ? 1 << 16 : (int)len; /* the ftyp box is first */
  if (heif_av1_decoder && (heif_has_compatible_brand(data, blen, "avif") == 1 ||
                           heif_has_compatible_brand(data, blen, "avis") == 1))
    opt->decoder_id = heif_av1_decoder;
  e = heif_decode_image(handle, &img, heif_colorspace_RGB,
                        alpha ? heif_chroma_interleaved_RGBA : heif_chroma_interleaved_RGB, opt);
  if (e.code) {
    rc = heif_fail(e, "decode");
    goto done;
  }
  int C = alpha ? 4 : 3, stride = 0;
  int iw = heif_image_get_width(img, heif_channel_interleaved);
  int ih = heif_image_get_height(img, heif_channel_interleaved);
  const uint8_t *plane = heif_image_get_plane_readonly(img, heif_channel_interleaved, &stride);
  if (!plane || iw < 1 || ih < 1 || stride < iw * C ||
      heif_image_get_bits_per_pixel_range(img, heif_channel_interleaved) != 8) {
    rc = vlm_seterr(VLM_EUNSUPPORTED, "HEIF: decoder gave no 8-bit interleaved image");
    goto done;
  }
  if ((rc = vlm__image_check_dims((uint64_t)iw, (uint64_t)ih, max_pixels, "HEIF"))) goto done;
  out->pixels = malloc((size_t)iw * ih * C);
  if (!out->pixels) {
    rc = vlm_seterr(VLM_ENOMEM, "HEIF: %dx%d", iw, ih);
    goto done;
  }
  for (int y = 0; y < ih; y++)
    memcpy(out->pixels + (size_t)y * iw * C, plane + (size_t)y * stride, (size_t)iw * C);
  out->w = iw;
  out->h = ih;
  out->channels = C;
  out->mode = alpha ? VLM__MODE_RGBA : VLM__MODE_RGB;
  out->orientation = 1; /* libheif applied the transforms (image.h) */
done:
  heif_decoding_options_free(opt);
  heif_image_release(img);
  heif_image_handle_release(handle);
  heif_context_free(ctx);
  return rc;
}
