/* test_image.c - image decoding and CLIP preprocessing against the
 * reference.
 *
 * Oracles: the reference's preprocessed tensors in tests/fixtures/clip-tiny
 * (*.pixels.f32, pixel sums in reference.json), and for every PIL mode the
 * decoder meets (CMYK/YCCK JPEG, 16-bit, LA, palettes, 1/2/4-bit, tRNS,
 * interlaced, odd centre offsets, upscaling) the uint8 RGB crop Pillow
 * produces, in tests/fixtures/images (made by tools/make_image_fixtures.py).
 * The other formats likewise (WebP, GIF, TIFF, BMP: Pillow 9.4 reads them;
 * HEIC/AVIF: heif-convert's decode is the oracle), and EXIF orientation
 * against Pillow's exif_transpose.
 * The alpha-onto-white option is checked against an RGB image composited by
 * the test itself; corrupt inputs against the error codes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <png.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "image.h"
#include "preprocess.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_file.h"

#define FIX "tests/fixtures/"

static uint8_t *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return NULL;
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static json_t *load_json(const char *path) {
  json_error_t err;
  json_t *j = json_load_file(path, 0, &err);
  if (!j) fprintf(stderr, "%s:%d: %s\n", path, err.line, err.text);
  return j;
}

/* ---- the reference tensors ------------------------------------------- */

static void test_reference_tensors(void **state) {
  (void)state;
  json_t *ref = load_json(FIX "clip-tiny/reference.json");
  assert_non_null(ref);
  json_t *images = json_object_get(ref, "images");
  assert_true(json_array_size(images) >= 9);
  vlm__preprocess_cfg cfg;
  vlm__preprocess_defaults(&cfg, 32);
  double worst = 0;
  size_t i;
  json_t *im;
  json_array_foreach(images, i, im) {
    const char *file = json_string_value(json_object_get(im, "file"));
    char path[256];
    snprintf(path, sizeof path, FIX "clip-tiny/%s", file);
    size_t len, rlen;
    uint8_t *data = read_all(path, &len);
    assert_non_null(data);
    strcat(path, ".pixels.f32");
    float *want = (float *)(void *)read_all(path, &rlen);
    assert_non_null(want);
    assert_int_equal(rlen, 3 * 32 * 32 * sizeof(float));
    float got[3 * 32 * 32];
    int rc = vlm__preprocess(&cfg, data, len, got);
    if (rc) fprintf(stderr, "%s: %s\n", file, vlm_errmsg());
    assert_int_equal(rc, 0);
    double maxdiff = 0, sum = 0, abs_sum = 0;
    for (int k = 0; k < 3 * 32 * 32; k++) {
      maxdiff = fmax(maxdiff, fabs((double)got[k] - want[k]));
      sum += got[k];
      abs_sum += fabs(got[k]);
    }
    double ref_sum = json_real_value(json_object_get(im, "pixels_sum"));
    double ref_abs = json_real_value(json_object_get(im, "pixels_abs_sum"));
    print_message("%-18s max |diff| %.3g  sum %.6f (ref %.6f)\n", file, maxdiff, sum, ref_sum);
    assert_true(maxdiff <= 0.02);
    assert_true(fabs(sum - ref_sum) <= 1e-3 * fmax(1.0, fabs(ref_sum)));
    assert_true(fabs(abs_sum - ref_abs) <= 1e-3 * ref_abs);
    json_t *first = json_object_get(im, "pixels_first16");
    for (size_t k = 0; k < json_array_size(first); k++)
      assert_true(fabs(got[k] - json_real_value(json_array_get(first, k))) <= 0.02);
    worst = fmax(worst, maxdiff);
    free(data);
    free(want);
  }
  print_message("worst max |diff| over the reference images: %.3g\n", worst);
  json_decref(ref);
}

/* ---- every PIL mode against Pillow's uint8 output --------------------- */

/* ToTensor + Normalize as torch computes it, in float32. */
static float normalize(const vlm__preprocess_cfg *cfg, int c, uint8_t v) {
  float x = (float)v / 255.0f;
  return (x - cfg->mean[c]) / cfg->std[c];
}

static void test_pil_modes(void **state) {
  (void)state;
  json_t *man = load_json(FIX "images/manifest.json");
  assert_non_null(man);
  int checked = 0, bad = 0;
  size_t i;
  json_t *e;
  json_array_foreach(man, i, e) {
    const char *file = json_string_value(json_object_get(e, "file"));
    if (!file || !json_object_get(e, "size")) continue; /* upright / decoded: below */
    int n = (int)json_integer_value(json_object_get(e, "size"));
    int transpose = json_is_true(json_object_get(e, "exif_transpose"));
    char path[256];
    size_t len, rlen;
    snprintf(path, sizeof path, FIX "images/%s", file);
    uint8_t *data = read_all(path, &len);
    if (transpose)
      snprintf(path, sizeof path, FIX "images/%s", json_string_value(json_object_get(e, "rgb")));
    else
      snprintf(path, sizeof path, FIX "images/%s.n%d.rgb", file, n);
    uint8_t *want = read_all(path, &rlen);
    assert_non_null(data);
    assert_non_null(want);
    assert_int_equal(rlen, (size_t)n * n * 3);
    vlm__preprocess_cfg cfg;
    vlm__preprocess_defaults(&cfg, n);
    cfg.exif_transpose = transpose;
    float *got = malloc(sizeof(float) * 3 * n * n);
    int rc = vlm__preprocess(&cfg, data, len, got);
    if (rc) fprintf(stderr, "%s: %s\n", file, vlm_errmsg());
    assert_int_equal(rc, 0);
    int mism = 0;
    double maxdiff = 0;
    for (int p = 0; p < n * n; p++)
      for (int c = 0; c < 3; c++) {
        float w = normalize(&cfg, c, want[3 * p + c]);
        float g = got[c * n * n + p];
        maxdiff = fmax(maxdiff, fabs((double)g - w));
        if (g != w && mism++ < 3)
          fprintf(stderr, "%s n=%d pixel (%d,%d) ch %d: got %.6f want %.6f (PIL %u)\n", file,
                  n, p % n, p / n, c, g, w, want[3 * p + c]);
      }
    print_message("%-24s %-5s n=%-3d%s max |diff| %.3g\n", file,
                  transpose ? "" : json_string_value(json_object_get(e, "pil_mode")), n,
                  transpose ? " exif_transpose" : "", maxdiff);
    bad += mism != 0;
    checked++;
    free(data);
    free(want);
    free(got);
  }
  json_decref(man);
  assert_true(checked >= 106);
  assert_int_equal(bad, 0);
}

/* vlm__image_resize is Pillow's RGB bicubic resize, bit for bit. */
static void test_rgb_resize_helper(void **state) {
  (void)state;
  json_t *man = load_json(FIX "images/manifest.json");
  assert_non_null(man);
  int checked = 0;
  size_t i;
  json_t *e;
  json_array_foreach(man, i, e) {
    const char *src = json_string_value(json_object_get(e, "resize_of"));
    if (!src) continue;
    int w = (int)json_integer_value(json_array_get(json_object_get(e, "size"), 0));
    int h = (int)json_integer_value(json_array_get(json_object_get(e, "size"), 1));
    char path[256];
    size_t len, rlen;
    snprintf(path, sizeof path, FIX "%s", src);
    uint8_t *data = read_all(path, &len);
    snprintf(path, sizeof path, FIX "images/%s", json_string_value(json_object_get(e, "rgb")));
    uint8_t *want = read_all(path, &rlen);
    assert_non_null(data);
    assert_non_null(want);
    vlm_image img, out;
    assert_int_equal(vlm_image_decode(data, len, NULL, &img), 0);
    assert_int_equal(vlm__image_resize(&img, w, h, &out), 0);
    assert_int_equal(rlen, (size_t)w * h * 3);
    size_t diff = 0;
    for (size_t k = 0; k < rlen; k++) diff += out.rgb[k] != want[k];
    if (diff) fprintf(stderr, "%s -> %dx%d: %zu bytes differ\n", src, w, h, diff);
    assert_int_equal(diff, 0);
    vlm_image_free(&img);
    vlm_image_free(&out);
    free(data);
    free(want);
    checked++;
  }
  json_decref(man);
  assert_true(checked >= 4);
  /* crop helper */
  vlm_image img = {.w = 4, .h = 3}, out;
  uint8_t px[4 * 3 * 3];
  for (int k = 0; k < 36; k++) px[k] = (uint8_t)k;
  img.rgb = px;
  assert_int_equal(vlm__image_crop(&img, 1, 1, 2, 2, &out), 0);
  uint8_t want[12] = {15, 16, 17, 18, 19, 20, 27, 28, 29, 30, 31, 32};
  assert_memory_equal(out.rgb, want, 12);
  vlm_image_free(&out);
  assert_int_equal(vlm__image_crop(&img, 3, 0, 2, 1, &out), VLM_EINVAL);
}

/* ---- alpha onto white ------------------------------------------------- */

/* Write a w x h PNG (color type RGB or RGBA) into memory with libpng. */
typedef struct {
  uint8_t *buf;
  size_t len, cap;
} membuf;

static void mem_write(png_structp png, png_bytep data, size_t n) {
  membuf *m = png_get_io_ptr(png);
  if (m->len + n > m->cap) {
    m->cap = (m->len + n) * 2;
    m->buf = realloc(m->buf, m->cap);
  }
  memcpy(m->buf + m->len, data, n);
  m->len += n;
}
static void mem_flush(png_structp png) { (void)png; }

static membuf write_png(const uint8_t *px, int w, int h, int channels) {
  membuf m = {0};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(png, &m, mem_write, mem_flush);
  int type = channels == 4 ? PNG_COLOR_TYPE_RGB_ALPHA
             : channels == 3 ? PNG_COLOR_TYPE_RGB
             : channels == 2 ? PNG_COLOR_TYPE_GRAY_ALPHA
                             : PNG_COLOR_TYPE_GRAY;
  png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < h; y++) png_write_row(png, px + (size_t)y * w * channels);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return m;
}

static void test_alpha_onto_white(void **state) {
  (void)state;
  size_t len;
  uint8_t *data = read_all(FIX "clip-tiny/rgba.png", &len);
  assert_non_null(data);
  vlm__decoded raw;
  assert_int_equal(vlm__image_decode_native(data, len, 0, &raw), 0);
  assert_int_equal(raw.mode, VLM__MODE_RGBA);
  int w = raw.w, h = raw.h, transparent = 0;
  /* the oracle: composite in double precision, rounded */
  uint8_t *flat = malloc((size_t)w * h * 3);
  for (int p = 0; p < w * h; p++) {
    double a = raw.pixels[4 * p + 3] / 255.0;
    transparent += raw.pixels[4 * p + 3] < 255;
    for (int c = 0; c < 3; c++)
      flat[3 * p + c] = (uint8_t)lround(raw.pixels[4 * p + c] * a + 255.0 * (1 - a));
  }
  assert_true(transparent > 0); /* the fixture has transparency to test */
  vlm_clip_options opts = {.alpha = VLM_ALPHA_WHITE};
  vlm_image white, drop;
  assert_int_equal(vlm_image_decode(data, len, &opts, &white), 0);
  assert_int_equal(vlm_image_decode(data, len, NULL, &drop), 0);
  assert_int_equal(white.w, w);
  assert_memory_equal(white.rgb, flat, (size_t)w * h * 3);
  for (int p = 0; p < w * h; p++) /* DROP: alpha ignored */
    assert_memory_equal(drop.rgb + 3 * p, raw.pixels + 4 * p, 3);

  /* preprocessing with WHITE == preprocessing the composited RGB image */
  membuf rgbpng = write_png(flat, w, h, 3);
  vlm__preprocess_cfg cfg;
  vlm__preprocess_defaults(&cfg, 32);
  float a[3 * 32 * 32], b[3 * 32 * 32], c[3 * 32 * 32];
  assert_int_equal(vlm__preprocess(&cfg, rgbpng.buf, rgbpng.len, a), 0);
  cfg.alpha = VLM_ALPHA_WHITE;
  assert_int_equal(vlm__preprocess(&cfg, data, len, b), 0);
  assert_memory_equal(a, b, sizeof a);
  cfg.alpha = VLM_ALPHA_DROP;
  assert_int_equal(vlm__preprocess(&cfg, data, len, c), 0);
  assert_memory_not_equal(b, c, sizeof b);

  /* gray + alpha becomes gray over white */
  uint8_t la[2 * 3 * 2] = {0, 0, 100, 128, 200, 255, 50, 10, 255, 0, 7, 77};
  membuf lapng = write_png(la, 3, 2, 2);
  vlm_image lw;
  assert_int_equal(vlm_image_decode(lapng.buf, lapng.len, &opts, &lw), 0);
  for (int p = 0; p < 6; p++) {
    double al = la[2 * p + 1] / 255.0;
    uint8_t want = (uint8_t)lround(la[2 * p] * al + 255.0 * (1 - al));
    assert_int_equal(lw.rgb[3 * p], want);
    assert_int_equal(lw.rgb[3 * p + 2], want);
  }
  vlm_image_free(&lw);
  free(lapng.buf);
  free(rgbpng.buf);
  vlm_image_free(&white);
  vlm_image_free(&drop);
  vlm__decoded_free(&raw);
  free(flat);
  free(data);
}

/* ---- decoded pixels and orientation --------------------------------------- */

/* Whole decoded images: the upright picture (Pillow's exif_transpose +
 * convert("RGB"); for a TIFF, what Pillow's load gives) against
 * vlm_image_decode, and HEIC/AVIF against heif-convert's decode (libheif's
 * own), RGBA included. */
static void test_upright_and_decoded(void **state) {
  (void)state;
  json_t *man = load_json(FIX "images/manifest.json");
  assert_non_null(man);
  int upright = 0, decoded = 0, turned = 0;
  size_t i;
  json_t *e;
  json_array_foreach(man, i, e) {
    const char *file = json_string_value(json_object_get(e, "file"));
    const char *up = json_string_value(json_object_get(e, "upright"));
    const char *dec = json_string_value(json_object_get(e, "decoded"));
    if (!file || (!up && !dec)) continue;
    int w = (int)json_integer_value(json_object_get(e, "w"));
    int h = (int)json_integer_value(json_object_get(e, "h"));
    int C = (int)json_integer_value(json_object_get(e, "channels"));
    char path[256];
    size_t len, rlen;
    snprintf(path, sizeof path, FIX "images/%s", file);
    uint8_t *data = read_all(path, &len);
    snprintf(path, sizeof path, FIX "images/%s", up ? up : dec);
    uint8_t *want = read_all(path, &rlen);
    assert_non_null(data);
    assert_non_null(want);
    assert_int_equal(rlen, (size_t)w * h * C);
    const uint8_t *got;
    int gw, gh;
    vlm_image img = {0};
    vlm__decoded im = {0};
    if (up) {
      assert_int_equal(vlm_image_decode(data, len, NULL, &img), 0);
      got = img.rgb, gw = img.w, gh = img.h;
      /* the stored pixels when asked: turned back for orientations 5-8 */
      vlm_clip_options keep = {.orientation = VLM_ORIENT_IGNORE};
      vlm_image raw;
      assert_int_equal(vlm_image_decode(data, len, &keep, &raw), 0);
      assert_int_equal(vlm__image_decode_native(data, len, 0, &im), 0);
      if (strstr(file, ".tif")) { /* upright on load, nothing left to apply */
        assert_int_equal(im.orientation, 1);
        assert_int_equal(raw.w, gw);
      } else {
        turned += im.orientation >= 5;
        assert_int_equal(raw.w, im.orientation >= 5 ? gh : gw);
      }
      vlm_image_free(&raw);
      upright++;
    } else {
      assert_int_equal(vlm__image_decode_native(data, len, 0, &im), 0);
      assert_int_equal(im.channels, C);
      got = im.pixels, gw = im.w, gh = im.h;
      decoded++;
    }
    assert_int_equal(gw, w);
    assert_int_equal(gh, h);
    size_t diff = 0;
    for (size_t k = 0; k < rlen; k++) diff += got[k] != want[k];
    print_message("%-22s %dx%d x%d: %zu of %zu bytes differ from %s\n", file, w, h, C, diff, rlen,
                  up ? "Pillow's upright image" : "heif-convert");
    assert_int_equal(diff, 0);
    vlm_image_free(&img);
    vlm__decoded_free(&im);
    free(data);
    free(want);
  }
  json_decref(man);
  assert_true(upright >= 12);
  assert_true(decoded >= 3);
  assert_true(turned >= 5); /* 5-8 of the JPEGs, the WebP (6) and the PNG (8) */
}

/* Every mode is turned like RGB (whose eight orientations the Pillow
 * fixtures check): the same permutation of pixels, 16-bit samples and
 * palettes kept. */
static void test_orientation_modes(void **state) {
  (void)state;
  const int w = 7, h = 4;
  static const vlm__image_mode modes[] = {VLM__MODE_L, VLM__MODE_LA, VLM__MODE_RGBA,
                                          VLM__MODE_CMYK, VLM__MODE_P, VLM__MODE_I16};
  static const int channels[] = {1, 2, 4, 4, 1, 1};
  for (int o = 1; o <= 9; o++) {
    /* the oracle: an RGB image whose pixel holds its own coordinates */
    vlm__decoded ref = {.w = w, .h = h, .mode = VLM__MODE_RGB, .channels = 3, .orientation = o};
    ref.pixels = malloc((size_t)w * h * 3);
    for (int k = 0; k < w * h; k++) {
      ref.pixels[3 * k] = (uint8_t)(k % w);
      ref.pixels[3 * k + 1] = (uint8_t)(k / w);
      ref.pixels[3 * k + 2] = 0;
    }
    assert_int_equal(vlm__decoded_apply_orientation(&ref), 0);
    assert_int_equal(ref.orientation, 1);
    int swap = o >= 5 && o <= 8;
    assert_int_equal(ref.w, swap ? h : w);
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
      int C = channels[m], sb = modes[m] == VLM__MODE_I16 ? 2 : 1;
      size_t px = (size_t)C * sb;
      vlm__decoded im = {.w = w, .h = h, .mode = modes[m], .channels = C, .orientation = o};
      im.pixels = malloc((size_t)w * h * px);
      for (size_t k = 0; k < (size_t)w * h * px; k++) im.pixels[k] = (uint8_t)(k / px * 3 + k % px);
      im.palette_n = 9;
      im.palette[5] = 77;
      assert_int_equal(vlm__decoded_apply_orientation(&im), 0);
      assert_int_equal(im.w, ref.w);
      assert_int_equal(im.h, ref.h);
      assert_int_equal(im.palette_n, 9);
      assert_int_equal(im.palette[5], 77);
      for (int k = 0; k < im.w * im.h; k++) {
        size_t src = (size_t)ref.pixels[3 * k + 1] * w + ref.pixels[3 * k];
        for (size_t b = 0; b < px; b++)
          assert_int_equal(im.pixels[k * px + b], (uint8_t)(src * 3 + b));
      }
      vlm__decoded_free(&im);
    }
    vlm__decoded_free(&ref);
  }
}

/* An EXIF block in both byte orders, with and without the APP1 prefix;
 * the value types Pillow reads as an int, and the ones it does not. */
static size_t exif_block(uint8_t *b, int le, int prefix, uint16_t type, uint32_t count,
                         uint32_t value, int entries) {
  size_t n = 0;
  if (prefix) {
    memcpy(b, "Exif\0\0", 6);
    n = 6;
  }
  uint8_t *t = b + n;
#define W16(p, v) (le ? ((p)[0] = (uint8_t)(v), (p)[1] = (uint8_t)((v) >> 8)) \
                      : ((p)[1] = (uint8_t)(v), (p)[0] = (uint8_t)((v) >> 8)))
#define W32(p, v) (le ? (W16(p, (v) & 0xFFFF), W16((p) + 2, (v) >> 16)) \
                      : (W16((p) + 2, (v) & 0xFFFF), W16(p, (v) >> 16)))
  memcpy(t, le ? "II*\0" : "MM\0*", 4);
  W32(t + 4, 8u);
  W16(t + 8, (unsigned)entries);
  uint8_t *e = t + 10;
  for (int i = 0; i < entries; i++, e += 12) {
    /* a decoy tag first, then orientation */
    W16(e, i == entries - 1 ? 0x0112u : 0x010Fu);
    W16(e + 2, type);
    W32(e + 4, count);
    memset(e + 8, 0, 4);
    if (type == 3 || type == 8) W16(e + 8, value);
    else if (type == 1) e[8] = (uint8_t)value;
    else W32(e + 8, value);
  }
  W32(e, 0u);
#undef W16
#undef W32
  return n + 10 + 12 * (size_t)entries + 4;
}

static void test_exif_parser(void **state) {
  (void)state;
  uint8_t b[256];
  for (int le = 0; le < 2; le++)
    for (int prefix = 0; prefix < 2; prefix++)
      for (uint32_t v = 0; v <= 10; v++) {
        size_t n = exif_block(b, le, prefix, 3, 1, v, 2);
        assert_int_equal(vlm__exif_orientation(b, n), v >= 1 && v <= 8 ? (int)v : 1);
        n = exif_block(b, le, prefix, 4, 1, v, 1); /* LONG */
        assert_int_equal(vlm__exif_orientation(b, n), v >= 1 && v <= 8 ? (int)v : 1);
      }
  size_t n = exif_block(b, 1, 1, 1, 1, 6, 1); /* BYTE: Pillow gives bytes, no turn */
  assert_int_equal(vlm__exif_orientation(b, n), 1);
  n = exif_block(b, 0, 0, 3, 2, 6, 1); /* two values: a tuple, no turn */
  assert_int_equal(vlm__exif_orientation(b, n), 1);
  n = exif_block(b, 1, 0, 8, 1, 6, 1); /* SSHORT */
  assert_int_equal(vlm__exif_orientation(b, n), 6);
  n = exif_block(b, 1, 0, 3, 1, 7, 3);
  /* cut inside the IFD: the entries before the cut count, none after */
  assert_int_equal(vlm__exif_orientation(b, n), 7);
  assert_int_equal(vlm__exif_orientation(b, n - 5), 1);
  for (size_t k = 0; k < n; k++) /* every prefix of the block: no overread (ASan) */
    {
      uint8_t *copy = malloc(k ? k : 1);
      memcpy(copy, b, k);
      int o = vlm__exif_orientation(copy, k);
      assert_true(o >= 1 && o <= 8);
      free(copy);
    }
  /* IFD offset past the end, bad header, NULL */
  n = exif_block(b, 1, 0, 3, 1, 6, 1);
  b[4] = 0xF0;
  assert_int_equal(vlm__exif_orientation(b, n), 1);
  memcpy(b, "XX*\0", 4);
  assert_int_equal(vlm__exif_orientation(b, n), 1);
  assert_int_equal(vlm__exif_orientation(NULL, 10), 1);
}

static void test_exif_model_setting(void **state);

/* ---- bad input ----------------------------------------------------------- */

static int decode_and_preprocess(const uint8_t *p, size_t n, uint64_t cap) {
  vlm__preprocess_cfg cfg;
  vlm__preprocess_defaults(&cfg, 32);
  cfg.max_pixels = cap;
  float px[3 * 32 * 32];
  int rc = vlm__preprocess(&cfg, p, n, px);
  vlm_image img;
  vlm_clip_options opts = {.max_pixels = cap};
  int rc2 = vlm_image_decode(p, n, &opts, &img);
  int extreme = 0; /* preprocessing alone refuses a resized side past 2^24 */
  if (rc2 == 0) {
    uint64_t lo = img.w < img.h ? img.w : img.h, hi = img.w < img.h ? img.h : img.w;
    extreme = hi * 32 > (1ull << 24) * lo;
    vlm_image_free(&img);
  }
  if (extreme && rc == VLM_ETOOBIG) return rc;
  if ((rc == 0) != (rc2 == 0)) return -999; /* both paths must agree */
  return rc;
}

static void truncations(const char *path, int *failures, int *successes) {
  size_t len;
  uint8_t *data = read_all(path, &len);
  assert_non_null(data);
  size_t step = len > 4000 ? len / 1500 : 1;
  for (size_t n = 0; n < len; n += step) {
    uint8_t *copy = malloc(n ? n : 1); /* exact size: ASan sees any overread */
    memcpy(copy, data, n);
    int rc = decode_and_preprocess(copy, n, 0);
    if (rc == 0) {
      (*successes)++;
      /* only the trailer (JPEG EOI, PNG IEND) may be missing */
      if (n + 16 < len) fprintf(stderr, "%s truncated to %zu of %zu decoded\n", path, n, len);
      assert_true(n + 16 >= len);
    } else {
      (*failures)++;
      if (!(rc == VLM_ECORRUPT || rc == VLM_EUNSUPPORTED))
        fprintf(stderr, "%s truncated to %zu: rc %d %s\n", path, n, rc, vlm_errmsg());
      assert_true(rc == VLM_ECORRUPT || rc == VLM_EUNSUPPORTED);
      assert_true(strlen(vlm_errmsg()) > 0);
    }
    free(copy);
  }
  free(data);
}

/* A model's preprocessor_config.json records how it flattens alpha
 * ("vlmdb_alpha"); VLM_ALPHA_MODEL follows it, an explicit mode wins. */
static void write_model_copy_key(const char *dir, const char *key, const char *value_json);

static void write_model_copy(const char *dir, const char *alpha_json) {
  write_model_copy_key(dir, "vlmdb_alpha", alpha_json);
}

/* The clip-tiny model linked into dir, its preprocessor_config.json with
 * key set to value_json (NULL: left out). */
static void write_model_copy_key(const char *dir, const char *key, const char *value_json) {
  static const char *links[] = {"config.json", "model.safetensors",
                                "vocab.json", "merges.txt"};
  char src[1024], dst[1024];
  char cwd[512];
  assert_non_null(getcwd(cwd, sizeof cwd));
  for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
    snprintf(src, sizeof src, "%s/tests/fixtures/clip-tiny/%s", cwd, links[i]);
    snprintf(dst, sizeof dst, "%s/%s", dir, links[i]);
    unlink(dst);
    assert_int_equal(symlink(src, dst), 0);
  }
  json_error_t err;
  json_t *pp = json_load_file("tests/fixtures/clip-tiny/preprocessor_config.json", 0, &err);
  assert_non_null(pp);
  if (value_json)
    json_object_set_new(pp, key, json_loads(value_json, JSON_DECODE_ANY, &err));
  snprintf(dst, sizeof dst, "%s/preprocessor_config.json", dir);
  assert_int_equal(json_dump_file(pp, dst, 0), 0);
  json_decref(pp);
}

static void test_model_alpha_record(void **state) {
  (void)state;
  size_t len;
  uint8_t *data = read_all("tests/fixtures/clip-tiny/rgba.png", &len);
  vlm__preprocess_cfg cfg;
  vlm__preprocess_defaults(&cfg, 32);
  float drop[3 * 32 * 32], white[3 * 32 * 32], got[3 * 32 * 32];
  cfg.alpha = VLM_ALPHA_DROP;
  assert_int_equal(vlm__preprocess(&cfg, data, len, drop), 0);
  cfg.alpha = VLM_ALPHA_WHITE;
  assert_int_equal(vlm__preprocess(&cfg, data, len, white), 0);
  assert_memory_not_equal(drop, white, sizeof drop);

  char dir[] = "/tmp/vlm_alpha_XXXXXX";
  assert_non_null(mkdtemp(dir));
  vlm_clip *clip = NULL;

  /* no record: the reference behaviour */
  assert_int_equal(vlm_clip_load("tests/fixtures/clip-tiny", NULL, &clip), 0);
  assert_int_equal(vlm_clip_preprocess(clip, data, len, got), 0);
  assert_memory_equal(got, drop, sizeof got);
  vlm_clip_free(clip);

  /* "white": followed by default, overridden by an explicit mode */
  write_model_copy(dir, "\"white\"");
  assert_int_equal(vlm_clip_load(dir, NULL, &clip), 0);
  assert_int_equal(vlm_clip_preprocess(clip, data, len, got), 0);
  assert_memory_equal(got, white, sizeof got);
  vlm_clip_free(clip);
  vlm_clip_options drop_opts = {.alpha = VLM_ALPHA_DROP};
  assert_int_equal(vlm_clip_load(dir, &drop_opts, &clip), 0);
  assert_int_equal(vlm_clip_preprocess(clip, data, len, got), 0);
  assert_memory_equal(got, drop, sizeof got);
  vlm_clip_free(clip);

  /* anything else is refused, naming the key */
  write_model_copy(dir, "\"grey\"");
  clip = NULL;
  assert_int_equal(vlm_clip_load(dir, NULL, &clip), VLM_EFORMAT);
  assert_null(clip);
  assert_non_null(strstr(vlm_errmsg(), "vlmdb_alpha"));

  static const char *names[] = {"config.json", "model.safetensors", "vocab.json",
                                "merges.txt", "preprocessor_config.json"};
  char path[1024];
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    unlink(path);
  }
  rmdir(dir);
  free(data);
}

static void remove_model_copy(const char *dir) {
  static const char *names[] = {"config.json", "model.safetensors", "vocab.json",
                                "merges.txt", "preprocessor_config.json"};
  char path[1024];
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    unlink(path);
  }
  rmdir(dir);
}

/* The model's setting: "vlmdb_exif_transpose" in preprocessor_config.json,
 * overridden by vlm_clip_options.orientation; the model id changes only
 * when it is on; vlm_clip_preprocess_image's image is upright either way. */
static void test_exif_model_setting(void **state) {
  (void)state;
  size_t len;
  uint8_t *data = read_all(FIX "images/exif_o6.jpg", &len);
  assert_non_null(data);
  vlm__preprocess_cfg cfg;
  vlm__preprocess_defaults(&cfg, 32);
  float stored[3 * 32 * 32], upright[3 * 32 * 32], got[3 * 32 * 32];
  assert_int_equal(vlm__preprocess(&cfg, data, len, stored), 0);
  cfg.exif_transpose = 1;
  assert_int_equal(vlm__preprocess(&cfg, data, len, upright), 0);
  assert_memory_not_equal(stored, upright, sizeof stored);
  vlm_image want;
  assert_int_equal(vlm_image_decode(data, len, NULL, &want), 0);
  assert_int_equal(want.w, 32); /* 48x32 stored, 32x48 upright */

  char dir[] = "/tmp/vlm_exif_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char id_default[65], id_on[65];
  struct {
    const char *json;         /* the model's record */
    vlm_orient_mode opt;      /* the caller's override */
    const float *expect;
  } cases[] = {{NULL, VLM_ORIENT_MODEL, stored},     {"false", VLM_ORIENT_MODEL, stored},
               {"true", VLM_ORIENT_MODEL, upright},  {"true", VLM_ORIENT_IGNORE, stored},
               {NULL, VLM_ORIENT_APPLY, upright},    {"false", VLM_ORIENT_APPLY, upright}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    write_model_copy_key(dir, "vlmdb_exif_transpose", cases[i].json);
    vlm_clip_options opts = {.orientation = cases[i].opt};
    vlm_clip *clip = NULL;
    assert_int_equal(vlm_clip_load(dir, &opts, &clip), 0);
    assert_int_equal(vlm_clip_preprocess(clip, data, len, got), 0);
    assert_memory_equal(got, cases[i].expect, sizeof got);
    vlm_image img;
    assert_int_equal(vlm_clip_preprocess_image(clip, data, len, got, &img), 0);
    assert_memory_equal(got, cases[i].expect, sizeof got);
    /* the thumbnail's image is upright whatever the model does */
    assert_int_equal(img.w, want.w);
    assert_int_equal(img.h, want.h);
    assert_memory_equal(img.rgb, want.rgb, (size_t)want.w * want.h * 3);
    vlm_image_free(&img);
    if (i == 0) memcpy(id_default, vlm_clip_model_id(clip), 65);
    if (i == 2) memcpy(id_on, vlm_clip_model_id(clip), 65);
    if (i == 1) assert_string_equal(vlm_clip_model_id(clip), id_default);
    if (i == 4) assert_string_equal(vlm_clip_model_id(clip), id_on);
    vlm_clip_free(clip);
  }
  assert_string_not_equal(id_default, id_on);
  /* the thumbnail of the bytes: upright too */
  uint8_t *jpeg = NULL;
  size_t jlen = 0;
  vlm_image back;
  assert_int_equal(vlm_image_thumbnail_bytes(data, len, &jpeg, &jlen), 0);
  assert_int_equal(vlm_image_decode(jpeg, jlen, NULL, &back), 0);
  assert_int_equal(back.w, 32);
  assert_int_equal(back.h, 48);
  vlm_image_free(&back);
  free(jpeg);
  /* anything but a boolean is refused, naming the key */
  write_model_copy_key(dir, "vlmdb_exif_transpose", "\"yes\"");
  vlm_clip *clip = NULL;
  assert_int_equal(vlm_clip_load(dir, NULL, &clip), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), "vlmdb_exif_transpose"));
  remove_model_copy(dir);
  vlm_image_free(&want);
  free(data);
}

static void test_truncated_files(void **state) {
  (void)state;
  const char *files[] = {FIX "clip-tiny/photo_rgb.jpg", FIX "clip-tiny/photo_prog.jpg",
                         FIX "clip-tiny/gray.jpg",      FIX "clip-tiny/rgba.png",
                         FIX "clip-tiny/palette.png",   FIX "images/interlaced.png",
                         FIX "images/gray16.png",       FIX "images/cmyk.jpg"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    int fail = 0, ok = 0;
    truncations(files[i], &fail, &ok);
    print_message("%-32s truncated: %d rejected, %d accepted (trailer only)\n", files[i], fail, ok);
    assert_true(fail > 0);
  }
}

/* The other formats cut short: an error, or (only without the last bytes
 * after the image data) the image. */
static void test_truncated_formats(void **state) {
  (void)state;
  const char *files[] = {FIX "images/webp_lossy.webp",  FIX "images/webp_anim.webp",
                         FIX "images/gif_interlaced.gif", FIX "images/gif_trns.gif",
                         FIX "images/tiff_lzw.tif",     FIX "images/tiff_tiled.tif",
                         FIX "images/tiff_planar.tif",  FIX "images/tiff_jpeg.tif",
                         FIX "images/bmp_24.bmp",       FIX "images/bmp_rle8.bmp",
                         FIX "images/bmp_rle4.bmp",     FIX "images/bmp_os2.bmp",
                         FIX "images/heif_rgb.heic",    FIX "images/avif_alpha.avif"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    int fail = 0, ok = 0;
    truncations(files[i], &fail, &ok);
    print_message("%-32s truncated: %d rejected, %d accepted (trailer only)\n", files[i], fail, ok);
    assert_true(fail > 0);
  }
}

static uint32_t rng_state = 12345;
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 17;
  rng_state ^= rng_state << 5;
  return rng_state;
}

/* Random bytes, and real files with random bytes flipped: never a crash,
 * only the documented codes. */
static void test_garbage_and_bit_flips(void **state) {
  (void)state;
  for (int t = 0; t < 300; t++) {
    size_t n = rnd() % 600;
    uint8_t *buf = malloc(n + 8);
    for (size_t k = 0; k < n + 8; k++) buf[k] = (uint8_t)rnd();
    /* random bytes after each format's signature */
    static const char *magic[] = {"\x89PNG\r\n\x1a\n", "\xff\xd8\xff", "GIF89a", "BM", "II*\0",
                                  "MM\0*", "RIFF\0\0\0\0WEBPVP8X", "\0\0\0\x18" "ftypavif"};
    static const size_t magic_len[] = {8, 3, 6, 2, 4, 4, 16, 12};
    int m = t % 9;
    if (m < 8) memcpy(buf, magic[m], magic_len[m]);
    int rc = decode_and_preprocess(buf, n + 8, 0);
    assert_true(rc == VLM_ECORRUPT || rc == VLM_EUNSUPPORTED || rc == VLM_ETOOBIG);
    free(buf);
  }
  const char *files[] = {FIX "clip-tiny/photo_rgb.jpg", FIX "clip-tiny/rgba.png",
                         FIX "clip-tiny/photo_prog.jpg", FIX "images/pal_trns.png",
                         FIX "images/webp_lossy.webp",  FIX "images/webp_anim.webp",
                         FIX "images/gif_trns.gif",     FIX "images/tiff_lzw.tif",
                         FIX "images/tiff_tiled.tif",   FIX "images/tiff_pal4.tif",
                         FIX "images/bmp_rle4.bmp",     FIX "images/bmp_32_alpha.bmp",
                         FIX "images/exif_o6.jpg",      FIX "images/heif_rgb.heic",
                         FIX "images/avif_alpha.avif"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    size_t len;
    uint8_t *data = read_all(files[i], &len);
    for (int t = 0; t < 60; t++) {
      uint8_t *copy = malloc(len);
      memcpy(copy, data, len);
      for (int f = 0; f < 1 + t % 8; f++) copy[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
      int rc = decode_and_preprocess(copy, len, 1 << 22);
      if (!(rc == 0 || rc == VLM_ECORRUPT || rc == VLM_EUNSUPPORTED || rc == VLM_ETOOBIG))
        fprintf(stderr, "%s flipped: rc %d %s\n", files[i], rc, vlm_errmsg());
      assert_true(rc == 0 || rc == VLM_ECORRUPT || rc == VLM_EUNSUPPORTED || rc == VLM_ETOOBIG);
      free(copy);
    }
    free(data);
  }
}

static void test_unsupported_and_empty(void **state) {
  (void)state;
  struct {
    const char *bytes;
    size_t len;
    const char *word;
    int rc;
  } cases[] = {
      /* a known format cut short: corrupt, the message naming it */
      {"GIF89a\x01\x00\x01\x00\x00\x00\x00", 13, "GIF", VLM_ECORRUPT},
      {"RIFF\x10\x00\x00\x00WEBPVP8 ", 16, "WebP", VLM_ECORRUPT},
      {"BM\x36\x00\x00\x00", 6, "BMP", VLM_ECORRUPT},
      {"II*\0\x08\0\0\0", 8, "TIFF", VLM_ECORRUPT},
      {"\0\0\0\x18" "ftypheic\0\0\0\0mif1heic", 24, "HEIF", VLM_ECORRUPT},
      /* variants and formats we do not read */
      {"BM\x36\x00\x00\x00\0\0\0\0\x36\0\0\0\x20\0\0\0", 18, "header size 32",
       VLM_EUNSUPPORTED},
      {"\0\0\0\x18" "ftypisom\0\0\0\0isomiso2", 24, "not HEIC or AVIF", VLM_EUNSUPPORTED},
      {"<svg xmlns='http://www.w3.org/2000/svg'/>", 41, "SVG", VLM_EUNSUPPORTED},
      {"hello world", 11, "not a JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC or AVIF",
       VLM_EUNSUPPORTED},
      {"\xff\xd8", 2, "not a JPEG", VLM_EUNSUPPORTED},
      {"", 0, "empty", VLM_EUNSUPPORTED},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    vlm__decoded im;
    int rc = vlm__image_decode_native(cases[i].bytes, cases[i].len, 0, &im);
    if (rc != cases[i].rc) fprintf(stderr, "case %zu: rc %d: %s\n", i, rc, vlm_errmsg());
    assert_int_equal(rc, cases[i].rc);
    assert_null(im.pixels);
    if (!strstr(vlm_errmsg(), cases[i].word)) fprintf(stderr, "msg: %s\n", vlm_errmsg());
    assert_non_null(strstr(vlm_errmsg(), cases[i].word));
  }
  vlm_image img;
  assert_int_equal(vlm_image_decode(NULL, 0, NULL, &img), VLM_EUNSUPPORTED);
  vlm_image_free(&img); /* zeroed on failure: safe */
  vlm_image_free(NULL);
  vlm__decoded_free(NULL);
}

static void be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* Headers that claim huge or zero sizes are refused before allocation
 * (an allocation of these sizes would fail with ENOMEM, not ETOOBIG). */
static void test_pixel_cap(void **state) {
  (void)state;
  /* PNG: patch IHDR of a real file, fix the CRC */
  size_t len;
  uint8_t *png = read_all(FIX "clip-tiny/rgb.png", &len);
  assert_non_null(png);
  uint32_t dims[][2] = {{100000, 100000}, {2000000000u, 1}, {1, 2000000000u}, {0, 10}};
  int want[] = {VLM_ETOOBIG, VLM_ETOOBIG, VLM_ETOOBIG, VLM_ECORRUPT};
  for (size_t i = 0; i < 4; i++) {
    be32(png + 16, dims[i][0]);
    be32(png + 20, dims[i][1]);
    uLong crc = crc32(0, png + 12, 17);
    be32(png + 29, (uint32_t)crc);
    vlm__decoded im;
    int rc = vlm__image_decode_native(png, len, 0, &im);
    if (rc != want[i]) fprintf(stderr, "PNG %ux%u: rc %d %s\n", dims[i][0], dims[i][1], rc, vlm_errmsg());
    assert_int_equal(rc, want[i]);
  }
  /* a configurable cap: 300x300 = 90000 pixels */
  be32(png + 16, 300);
  be32(png + 20, 300);
  be32(png + 29, (uint32_t)crc32(0, png + 12, 17));
  vlm__decoded im;
  assert_int_equal(vlm__image_decode_native(png, len, 89999, &im), VLM_ETOOBIG);
  assert_non_null(strstr(vlm_errmsg(), "300x300"));
  assert_int_equal(vlm__image_decode_native(png, len, 90000, &im), 0);
  vlm__decoded_free(&im);
  free(png);

  /* JPEG: patch the SOF0 dimensions */
  uint8_t *jpg = read_all(FIX "clip-tiny/photo_rgb.jpg", &len);
  assert_non_null(jpg);
  size_t sof = 0;
  for (size_t k = 2; k + 9 < len; k++)
    if (jpg[k] == 0xFF && (jpg[k + 1] == 0xC0 || jpg[k + 1] == 0xC2)) {
      sof = k;
      break;
    }
  assert_true(sof > 0);
  jpg[sof + 5] = 0xFD; /* height 65000 */
  jpg[sof + 6] = 0xE8;
  jpg[sof + 7] = 0xFD; /* width 65000 */
  jpg[sof + 8] = 0xE8;
  assert_int_equal(vlm__image_decode_native(jpg, len, 0, &im), VLM_ETOOBIG);
  assert_non_null(strstr(vlm_errmsg(), "65000x65000"));
  jpg[sof + 6] = 0xFF; /* 65535: past libjpeg's own limit */
  assert_int_equal(vlm__image_decode_native(jpg, len, 0, &im), VLM_ETOOBIG);
  /* a cap between the real size and the claimed one */
  jpg[sof + 5] = 0x01; /* 480 -> 0x1E0 kept low byte: height 0x01E0 */
  jpg[sof + 6] = 0xE0;
  jpg[sof + 7] = 0x02; /* width 640 */
  jpg[sof + 8] = 0x80;
  assert_int_equal(vlm__image_decode_native(jpg, len, 640 * 480 - 1, &im), VLM_ETOOBIG);
  assert_int_equal(vlm__image_decode_native(jpg, len, 640 * 480, &im), 0);
  vlm__decoded_free(&im);
  jpg[sof + 5] = 0;
  jpg[sof + 6] = 0;
  int rc = vlm__image_decode_native(jpg, len, 0, &im);
  assert_true(rc == VLM_ECORRUPT || rc == VLM_EUNSUPPORTED);
  free(jpg);
}

static size_t find_bytes(const uint8_t *hay, size_t n, const void *needle, size_t m) {
  for (size_t k = 0; k + m <= n; k++)
    if (!memcmp(hay + k, needle, m)) return k;
  return (size_t)-1;
}

/* Every new format: a cap one pixel below the image refuses it, the exact
 * cap decodes it; a header claiming a gigantic canvas is VLM_ETOOBIG
 * before any allocation (an allocation would fail with VLM_ENOMEM). */
static void test_pixel_cap_formats(void **state) {
  (void)state;
  const char *files[] = {"webp_lossy.webp", "webp_anim.webp",   "gif_offset_trns.gif",
                         "gif_pal.gif",     "tiff_orient6.tif", "tiff_tiled.tif",
                         "tiff_g4.tif",     "bmp_rle4.bmp",     "bmp_24_topdown.bmp",
                         "bmp_os2.bmp",     "heif_rgb.heic",    "avif_alpha.avif"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char path[256];
    snprintf(path, sizeof path, FIX "images/%s", files[i]);
    size_t len;
    uint8_t *data = read_all(path, &len);
    assert_non_null(data);
    vlm__decoded im;
    assert_int_equal(vlm__image_decode_native(data, len, 0, &im), 0);
    uint64_t px = (uint64_t)im.w * im.h;
    vlm__decoded_free(&im);
    int rc = vlm__image_decode_native(data, len, px - 1, &im);
    if (rc != VLM_ETOOBIG) fprintf(stderr, "%s: rc %d %s\n", files[i], rc, vlm_errmsg());
    assert_int_equal(rc, VLM_ETOOBIG);
    assert_null(im.pixels);
    assert_int_equal(vlm__image_decode_native(data, len, px, &im), 0);
    vlm__decoded_free(&im);
    free(data);
  }
  struct {
    const char *file, *needle; /* patch the bytes after needle (or at offset) */
    size_t needle_len, at;
    const uint8_t patch[8];
    size_t patch_len;
    const char *word;
  } claims[] = {
      /* GIF logical screen 60000 x 60000 */
      {"gif_pal.gif", NULL, 0, 6, {0x60, 0xEA, 0x60, 0xEA}, 4, "60000x60000"},
      /* animated WebP canvas (VP8X, 24-bit sides - 1) 16384 x 16384 */
      {"webp_anim.webp", "VP8X", 4, 12, {0xFF, 0x3F, 0x00, 0xFF, 0x3F, 0x00}, 6, "16384x16384"},
      /* BMP 100000 x 100000 */
      {"bmp_24.bmp", NULL, 0, 18, {0xA0, 0x86, 0x01, 0, 0xA0, 0x86, 0x01, 0}, 8, "100000x100000"},
      /* TIFF ImageWidth (LONG) 100000, then ImageLength */
      {"tiff_rgb16.tif", "\x00\x01\x04\x00\x01\x00\x00\x00", 8, 8, {0xFF, 0xFF, 0xFF, 0x7F}, 4,
       "2147483647x26"},
      /* HEIC ispe 100000 x 100000 */
      {"heif_rgb.heic", "ispe", 4, 8, {0, 0x01, 0x86, 0xA0, 0, 0x01, 0x86, 0xA0}, 8, "HEIF"},
      {"avif_alpha.avif", "ispe", 4, 8, {0, 0x01, 0x86, 0xA0, 0, 0x01, 0x86, 0xA0}, 8, "HEIF"},
  };
  for (size_t i = 0; i < sizeof claims / sizeof *claims; i++) {
    char path[256];
    snprintf(path, sizeof path, FIX "images/%s", claims[i].file);
    size_t len;
    uint8_t *data = read_all(path, &len);
    assert_non_null(data);
    size_t at = claims[i].at, from = 0, k;
    if (claims[i].needle) { /* every occurrence (HEIF has an ispe per item) */
      int seen = 0;
      while ((k = find_bytes(data + from, len - from, claims[i].needle, claims[i].needle_len)) !=
             (size_t)-1) {
        assert_true(from + k + at + claims[i].patch_len <= len);
        memcpy(data + from + k + at, claims[i].patch, claims[i].patch_len);
        from += k + claims[i].needle_len;
        seen++;
      }
      assert_true(seen > 0);
    } else {
      assert_true(at + claims[i].patch_len <= len);
      memcpy(data + at, claims[i].patch, claims[i].patch_len);
    }
    vlm__decoded im;
    int rc = vlm__image_decode_native(data, len, 0, &im);
    if (rc != VLM_ETOOBIG || !strstr(vlm_errmsg(), claims[i].word))
      fprintf(stderr, "%s claim %zu: rc %d %s\n", claims[i].file, i, rc, vlm_errmsg());
    assert_int_equal(rc, VLM_ETOOBIG);
    assert_non_null(strstr(vlm_errmsg(), claims[i].word));
    free(data);
  }
}

/* RLE deltas as the BMP specification has them (two bytes: right, up;
 * Pillow 9.4 reads four, so its output is not the oracle here): a 4x2
 * RLE8 image, bottom row [5 0 0 0] by an encoded run and a delta of
 * (1 right, 1 up), top row [0 0 7 7] after it; then the same stream cut
 * before it fills the image. */
static void test_bmp_rle_delta(void **state) {
  (void)state;
  uint8_t f[14 + 40 + 8 + 10] = {'B', 'M'};
  f[10] = 14 + 40 + 8; /* pixel data offset */
  f[14] = 40;
  f[18] = 4;  /* width */
  f[22] = 2;  /* height, bottom-up */
  f[26] = 1;  /* planes */
  f[28] = 8;  /* bits */
  f[30] = 1;  /* RLE8 */
  f[46] = 2;  /* two colours */
  const uint8_t pal[8] = {10, 20, 30, 0, 40, 50, 60, 0};
  memcpy(f + 54, pal, 8);
  const uint8_t rle[10] = {1, 5, 0, 2, 1, 1, 2, 7, 0, 1};
  memcpy(f + 62, rle, 10);
  vlm__decoded im;
  assert_int_equal(vlm__image_decode_native(f, sizeof f, 0, &im), 0);
  assert_int_equal(im.mode, VLM__MODE_P);
  const uint8_t want[8] = {0, 0, 7, 7, 5, 0, 0, 0};
  assert_memory_equal(im.pixels, want, 8);
  vlm__decoded_free(&im);
  /* without the last run the image is short of data */
  f[62 + 6] = 0;
  f[62 + 7] = 1; /* end of bitmap at once: filled up to the delta's target only */
  assert_int_equal(vlm__image_decode_native(f, sizeof f - 2, 0, &im), VLM_ECORRUPT);
  assert_non_null(strstr(vlm_errmsg(), "BMP"));
}

/* Extreme aspect ratios: a 1-pixel-high strip is resized to 224 x 22.4 M
 * in the reference; only the crop is computed here, and past 16 M pixels
 * along the resized side it is refused. */
static void test_extreme_aspect(void **state) {
  (void)state;
  int w = 60000;
  uint8_t *row = malloc((size_t)w * 3);
  for (int x = 0; x < w * 3; x++) row[x] = 77;
  membuf png = write_png(row, w, 1, 3);
  vlm__preprocess_cfg cfg;
  vlm__preprocess_defaults(&cfg, 224);
  float *px = malloc(sizeof(float) * 3 * 224 * 224);
  assert_int_equal(vlm__preprocess(&cfg, png.buf, png.len, px), 0);
  for (int c = 0; c < 3; c++) /* a constant image stays constant */
    for (int p = 0; p < 224 * 224; p++) assert_true(px[c * 224 * 224 + p] == normalize(&cfg, c, 77));
  free(png.buf);
  free(row);
  w = 100000; /* 224 * 100000 > 2^24 */
  row = malloc((size_t)w * 3);
  memset(row, 9, (size_t)w * 3);
  png = write_png(row, 1, w, 3);
  assert_int_equal(vlm__preprocess(&cfg, png.buf, png.len, px), VLM_ETOOBIG);
  assert_non_null(strstr(vlm_errmsg(), "aspect"));
  free(png.buf);
  free(row);
  free(px);
}

/* ---- thumbnails ----------------------------------------------------------- */

static void test_thumbnail(void **state) {
  (void)state;
  const char *files[] = {FIX "clip-tiny/photo_rgb.jpg", FIX "clip-tiny/photo_prog.jpg",
                         FIX "clip-tiny/wide.png", FIX "clip-tiny/small_upscale.png"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    size_t len;
    uint8_t *data = read_all(files[i], &len);
    vlm_image img, back;
    assert_int_equal(vlm_image_decode(data, len, NULL, &img), 0);
    uint8_t *jpeg = NULL;
    size_t jlen = 0;
    assert_int_equal(vlm_image_thumbnail_jpeg(&img, 256, 95, &jpeg, &jlen), 0);
    assert_true(jlen > 100);
    assert_int_equal(vlm_image_decode(jpeg, jlen, NULL, &back), 0);
    int longest = img.w > img.h ? img.w : img.h;
    int exp_long = longest > 256 ? 256 : longest;
    assert_int_equal(back.w > back.h ? back.w : back.h, exp_long);
    /* aspect kept to within rounding of one pixel */
    double want_short = (double)(img.w < img.h ? img.w : img.h) * exp_long / longest;
    int got_short = back.w < back.h ? back.w : back.h;
    assert_true(fabs(got_short - want_short) <= 1.0);
    assert_true((img.w >= img.h) == (back.w >= back.h));
    /* the same picture: compare with the area resize it is made with
     * (the JPEG's loss only).  The fixtures are noise-like and thumbnails
     * are 4:2:0, so PSNR is modest (24-30 dB); another fixture photo
     * scores 12 dB, this one shifted 3 px 15 dB. */
    vlm_image small;
    if (back.w == img.w && back.h == img.h) {
      small.w = img.w;
      small.h = img.h;
      small.rgb = malloc((size_t)img.w * img.h * 3);
      memcpy(small.rgb, img.rgb, (size_t)img.w * img.h * 3);
    } else {
      assert_int_equal(vlm__image_area_resize(&img, back.w, back.h, &small), 0);
    }
    double se = 0;
    for (size_t k = 0; k < (size_t)back.w * back.h * 3; k++) {
      double d = (double)back.rgb[k] - small.rgb[k];
      se += d * d;
    }
    double psnr = 10 * log10(255.0 * 255.0 / (se / ((double)back.w * back.h * 3) + 1e-9));
    print_message("%-30s %dx%d -> %dx%d, %zu bytes, PSNR %.1f dB\n", files[i], img.w, img.h,
                  back.w, back.h, jlen, psnr);
    assert_true(psnr > 20);
    vlm_image_free(&small);
    vlm_image_free(&back);
    vlm_image_free(&img);
    free(jpeg);
    free(data);
  }
  vlm_image none = {0};
  uint8_t *j;
  size_t jl;
  assert_int_equal(vlm_image_thumbnail_jpeg(&none, 256, 85, &j, &jl), VLM_EINVAL);
}

/* The exact area average, in double: output (x, y) is the mean of the
 * input over [x * w / tw, (x + 1) * w / tw) x [y * h / th, ...), partial
 * pixels weighted by the fraction covered. */
static double area_overlap(int i, int o, int in, int out) {
  double a = (double)i, b = a + 1, lo = (double)o * in / out, hi = (double)(o + 1) * in / out;
  double l = a > lo ? a : lo, r = b < hi ? b : hi;
  return r > l ? r - l : 0;
}

static void area_oracle(const vlm_image *src, int tw, int th, double *out) {
  for (int y = 0; y < th; y++)
    for (int x = 0; x < tw; x++) {
      /* a margin of a pixel around the span: pixels outside weigh 0 */
      int y0 = (int)floor((double)y * src->h / th) - 1, y1 = (int)ceil((double)(y + 1) * src->h / th) + 1;
      int x0 = (int)floor((double)x * src->w / tw) - 1, x1 = (int)ceil((double)(x + 1) * src->w / tw) + 1;
      double sum[3] = {0, 0, 0}, wsum = 0;
      for (int sy = y0 < 0 ? 0 : y0; sy < y1 && sy < src->h; sy++) {
        double wy = area_overlap(sy, y, src->h, th);
        for (int sx = x0 < 0 ? 0 : x0; sx < x1 && sx < src->w; sx++) {
          double wx = area_overlap(sx, x, src->w, tw);
          for (int c = 0; c < 3; c++)
            sum[c] += wx * wy * src->rgb[((size_t)sy * src->w + sx) * 3 + c];
          wsum += wx * wy;
        }
      }
      for (int c = 0; c < 3; c++) out[((size_t)y * tw + x) * 3 + c] = sum[c] / wsum;
    }
}

static uint32_t test_rng = 12345;
static uint8_t rnd8(void) {
  test_rng = test_rng * 1103515245u + 12345u;
  return (uint8_t)(test_rng >> 16);
}

/* vlm__image_area_resize against the exact average: within one level
 * everywhere (fixed point), exact on a flat image, for odd sizes, whole
 * and fractional factors, one-pixel-wide strips and no-op sizes. */
static void test_area_resize(void **state) {
  (void)state;
  static const int cases[][4] = {
      {640, 480, 256, 192}, {333, 517, 165, 256}, {17, 23, 7, 9},   {100, 1, 26, 1},
      {1, 100, 1, 3},       {9, 9, 1, 1},         {5, 7, 5, 7},     {257, 3, 256, 3},
      {31, 29, 8, 8},       {1000, 3, 256, 1},    {512, 512, 256, 256}, {300, 200, 299, 199},
      /* extreme aspect: long rows of taps, rounding that must not add up */
      {65535, 1, 256, 1},   {1, 300001, 1, 256},  {2, 65521, 1, 255}};
  for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
    int w = cases[t][0], h = cases[t][1], tw = cases[t][2], th = cases[t][3];
    vlm_image src = {.w = w, .h = h, .rgb = malloc((size_t)w * h * 3)}, out;
    /* noise on odd rows, a gradient on even ones: both extremes of what a
     * box filter meets */
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w * 3; x++)
        src.rgb[(size_t)y * w * 3 + x] = (y & 1) ? rnd8() : (uint8_t)(x * 255 / (w * 3));
    double *want = malloc((size_t)tw * th * 3 * sizeof *want);
    area_oracle(&src, tw, th, want);
    assert_int_equal(vlm__image_area_resize(&src, tw, th, &out), 0);
    assert_int_equal(out.w, tw);
    assert_int_equal(out.h, th);
    double worst = 0;
    for (size_t k = 0; k < (size_t)tw * th * 3; k++) {
      double d = fabs(out.rgb[k] - want[k]);
      if (d > worst) worst = d;
    }
    print_message("%dx%d -> %dx%d: at most %.3f from the exact mean\n", w, h, tw, th, worst);
    assert_true(worst <= 0.51);
    vlm_image_free(&out);
    /* a flat image stays exactly flat */
    memset(src.rgb, 201, (size_t)w * h * 3);
    assert_int_equal(vlm__image_area_resize(&src, tw, th, &out), 0);
    for (size_t k = 0; k < (size_t)tw * th * 3; k++)
      if (out.rgb[k] != 201) {
        fprintf(stderr, "%dx%d -> %dx%d: flat 201 gave %d at %zu\n", w, h, tw, th,
                out.rgb[k], k);
        fail();
      }
    vlm_image_free(&out);
    /* an upscale or an empty size is refused */
    assert_int_equal(vlm__image_area_resize(&src, w + 1, th, &out), VLM_EINVAL);
    assert_int_equal(vlm__image_area_resize(&src, tw, 0, &out), VLM_EINVAL);
    assert_null(out.rgb);
    free(want);
    free(src.rgb);
  }
}

/* vlm_clip_preprocess_image, for every mode the decoder meets: the
 * model's pixels are those of vlm_clip_preprocess (bit for bit), the image
 * is vlm_image_decode's RGB composited onto white (byte for byte: RGB
 * images hand over the decoded buffer, the others are converted), and its
 * thumbnail has the geometry vlm_image_thumbnail_jpeg promises. */
static void test_preprocess_image_modes(void **state) {
  (void)state;
  static const char *files[] = {
      FIX "images/cmyk.jpg",      FIX "images/ycck.jpg",      FIX "images/gray_prog.jpg",
      FIX "images/s422.jpg",      FIX "images/la.png",        FIX "images/la16.png",
      FIX "images/rgba_wide.png", FIX "images/pal_trns.png",  FIX "images/pal1.png",
      FIX "images/gray16.png",    FIX "images/gray_trns.png", FIX "images/rgb_trns.png",
      FIX "images/rgb16.png",     FIX "images/interlaced.png", FIX "images/big.jpg",
      FIX "clip-tiny/photo_rgb.jpg", FIX "clip-tiny/wide.png", FIX "clip-tiny/small_upscale.png",
      FIX "images/webp_alpha.webp", FIX "images/webp_anim.webp", FIX "images/gif_offset_trns.gif",
      FIX "images/gif_gray.gif",    FIX "images/tiff_rgba16_assoc.tif", FIX "images/tiff_orient6.tif",
      FIX "images/tiff_gray16b.tif", FIX "images/tiff_cmyk.tif", FIX "images/bmp_1.bmp",
      FIX "images/bmp_32_alpha.bmp", FIX "images/bmp_rle4.bmp", FIX "images/exif_o7.jpg",
      FIX "images/heif_rgb.heic",   FIX "images/avif_alpha.avif"};
  vlm_clip *clip = NULL;
  assert_int_equal(vlm_clip_load("tests/fixtures/clip-tiny", NULL, &clip), 0);
  float want[3 * 32 * 32], got[3 * 32 * 32];
  vlm_clip_options white = {.alpha = VLM_ALPHA_WHITE};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    size_t len;
    uint8_t *data = read_all(files[i], &len);
    assert_non_null(data);
    vlm_image img, ref;
    assert_int_equal(vlm_clip_preprocess(clip, data, len, want), 0);
    assert_int_equal(vlm_clip_preprocess_image(clip, data, len, got, &img), 0);
    assert_memory_equal(got, want, sizeof got);
    assert_int_equal(vlm_image_decode(data, len, &white, &ref), 0);
    assert_int_equal(img.w, ref.w);
    assert_int_equal(img.h, ref.h);
    assert_memory_equal(img.rgb, ref.rgb, (size_t)ref.w * ref.h * 3);
    uint8_t *jpeg = NULL;
    size_t jlen = 0;
    vlm_image back;
    assert_int_equal(vlm_image_thumbnail_jpeg(&img, 256, 85, &jpeg, &jlen), 0);
    assert_int_equal(vlm_image_decode(jpeg, jlen, NULL, &back), 0);
    int longest = img.w > img.h ? img.w : img.h;
    assert_int_equal(back.w > back.h ? back.w : back.h, longest > 256 ? 256 : longest);
    print_message("%-32s %dx%d -> thumbnail %dx%d, %zu bytes\n", files[i], img.w, img.h,
                  back.w, back.h, jlen);
    vlm_image_free(&back);
    vlm_image_free(&ref);
    vlm_image_free(&img);
    free(jpeg);
    free(data);
  }
  /* a corrupt image: an error, and *img zeroed */
  uint8_t junk[64] = {0xFF, 0xD8, 0xFF, 0xE0};
  vlm_image img = {.w = 7, .h = 7};
  assert_int_not_equal(vlm_clip_preprocess_image(clip, junk, sizeof junk, got, &img), 0);
  assert_null(img.rgb);
  assert_int_equal(img.w, 0);
  vlm_clip_free(clip);
}

/* Thumbnail geometry for odd and tiny sizes: the longest side is
 * min(longest, max_side), the other side the aspect rounded (at least 1),
 * the orientation kept, and the JPEG's pixels close to the area average
 * of a smooth picture. */
static void test_thumbnail_sizes(void **state) {
  (void)state;
  static const int sizes[][2] = {{1, 1},     {1, 1000},  {1000, 1}, {2, 513},  {257, 255},
                                 {256, 256}, {255, 600}, {600, 255}, {3, 3},   {511, 1},
                                 {1023, 767}, {17, 4000}};
  for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
    int w = sizes[t][0], h = sizes[t][1];
    vlm_image img = {.w = w, .h = h, .rgb = malloc((size_t)w * h * 3)}, back, area;
    /* smooth, at most 2.5 levels a pixel: survives 4:2:0 JPEG well */
    int gw = w > 64 ? w : 64, gh = h > 64 ? h : 64;
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++) {
        uint8_t *p = img.rgb + ((size_t)y * w + x) * 3;
        p[0] = (uint8_t)(40 + 160 * x / gw);
        p[1] = (uint8_t)(40 + 160 * y / gh);
        p[2] = 128;
      }
    uint8_t *jpeg = NULL;
    size_t jlen = 0;
    assert_int_equal(vlm_image_thumbnail_jpeg(&img, 256, 90, &jpeg, &jlen), 0);
    assert_int_equal(vlm_image_decode(jpeg, jlen, NULL, &back), 0);
    int longest = w > h ? w : h, shortest = w < h ? w : h;
    int want_long = longest > 256 ? 256 : longest;
    int want_short = (int)(((int64_t)shortest * want_long + longest / 2) / longest);
    if (want_short < 1) want_short = 1;
    int got_long = back.w > back.h ? back.w : back.h, got_short = back.w > back.h ? back.h : back.w;
    if (w == h) got_short = back.h;
    assert_int_equal(got_long, want_long);
    assert_int_equal(got_short, want_short);
    assert_true((w >= h) == (back.w >= back.h));
    /* against the area average (the JPEG's loss only) */
    if (back.w < w || back.h < h) {
      assert_int_equal(vlm__image_area_resize(&img, back.w, back.h, &area), 0);
    } else {
      area.w = w;
      area.h = h;
      area.rgb = malloc((size_t)w * h * 3);
      memcpy(area.rgb, img.rgb, (size_t)w * h * 3);
    }
    double worst = 0, se = 0;
    size_t n = (size_t)back.w * back.h * 3;
    for (size_t k = 0; k < n; k++) {
      double d = fabs((double)back.rgb[k] - area.rgb[k]);
      se += d * d;
      if (d > worst) worst = d;
    }
    double rms = sqrt(se / (double)n);
    print_message("%dx%d -> %dx%d: RMS %.2f from the area average, worst %.0f\n", w, h,
                  back.w, back.h, rms, worst);
    assert_true(rms <= 3);
    vlm_image_free(&area);
    vlm_image_free(&back);
    vlm_image_free(&img);
    free(jpeg);
  }
}

/* ---- threads and regressions ---------------------------------------------- */

typedef struct {
  const uint8_t *data;
  size_t len;
  const float *expect;
  int bad;
} thread_arg;

static void *preprocess_thread(void *p) {
  thread_arg *a = p;
  vlm__preprocess_cfg cfg;
  vlm__preprocess_defaults(&cfg, 32);
  float px[3 * 32 * 32];
  for (int r = 0; r < 20; r++)
    if (vlm__preprocess(&cfg, a->data, a->len, px) != 0 || memcmp(px, a->expect, sizeof px))
      a->bad++;
  return NULL;
}

static void test_concurrent_preprocess(void **state) {
  (void)state;
  const char *files[] = {FIX "clip-tiny/photo_rgb.jpg", FIX "clip-tiny/rgba.png",
                         FIX "clip-tiny/palette.png",   FIX "clip-tiny/photo_prog.jpg",
                         FIX "images/webp_anim.webp",   FIX "images/gif_trns.gif",
                         FIX "images/tiff_jpeg.tif",    FIX "images/bmp_rle8.bmp",
                         FIX "images/heif_rgb.heic",    FIX "images/avif_alpha.avif"};
  enum { N = 10 };
  uint8_t *data[N];
  size_t len[N];
  float expect[N][3 * 32 * 32];
  vlm__preprocess_cfg cfg;
  vlm__preprocess_defaults(&cfg, 32);
  pthread_t th[2 * N];
  thread_arg args[2 * N];
  for (int i = 0; i < N; i++) {
    data[i] = read_all(files[i], &len[i]);
    assert_int_equal(vlm__preprocess(&cfg, data[i], len[i], expect[i]), 0);
  }
  for (int t = 0; t < 2 * N; t++) {
    args[t] = (thread_arg){data[t % N], len[t % N], expect[t % N], 0};
    pthread_create(&th[t], NULL, preprocess_thread, &args[t]);
  }
  int bad = 0;
  for (int t = 0; t < 2 * N; t++) {
    pthread_join(th[t], NULL);
    bad += args[t].bad;
  }
  for (int i = 0; i < N; i++) free(data[i]);
  assert_int_equal(bad, 0);
}

/* A FIFO, a directory or a device given as an image file is refused at
 * once, as a missing file is; before, opening the FIFO waited forever for
 * a writer.  The calls run in a child with an alarm so that a hang fails
 * the test instead of stopping the suite. */
static void test_non_regular_files(void **state) {
  (void)state;
  char dir[] = "/tmp/vlm_image_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char fifo[64], sub[64], missing[64];
  snprintf(fifo, sizeof fifo, "%s/pipe.jpg", dir);
  snprintf(sub, sizeof sub, "%s/dir.jpg", dir);
  snprintf(missing, sizeof missing, "%s/nope.jpg", dir);
  assert_int_equal(mkfifo(fifo, 0600), 0);
  assert_int_equal(mkdir(sub, 0700), 0);
  vlm_clip *clip = NULL;
  assert_int_equal(vlm_clip_load("tests/fixtures/clip-tiny", NULL, &clip), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    alarm(20);
    static float pixels[3 * 32 * 32], want[3 * 32 * 32];
    const char *bad[] = {fifo, sub, "/dev/null", missing};
    const char *kind[] = {"FIFO", "directory", "device", "No such file"};
    for (int i = 0; i < 4; i++) {
      int rc = vlm_clip_preprocess_file(clip, bad[i], pixels);
      if (rc != VLM_ENOTFOUND || !strstr(vlm_errmsg(), kind[i])) {
        fprintf(stderr, "%s: rc %d '%s', wanted VLM_ENOTFOUND, '%s'\n",
                bad[i], rc, vlm_errmsg(), kind[i]);
        _exit(1);
      }
      uint8_t *data = (uint8_t *)1;
      size_t len = 1;
      rc = vlm_read_file(bad[i], 1u << 20, &data, &len);
      if (rc != VLM_ENOTFOUND || data || len) {
        fprintf(stderr, "vlm_read_file %s: rc %d\n", bad[i], rc);
        _exit(1);
      }
    }
    /* A regular file still reads whole and preprocesses as its bytes do. */
    size_t len;
    uint8_t *data = read_all(FIX "clip-tiny/photo_rgb.jpg", &len), *got;
    size_t got_len;
    if (vlm_read_file(FIX "clip-tiny/photo_rgb.jpg", 1u << 20, &got,
                             &got_len) ||
        got_len != len || memcmp(got, data, len) ||
        vlm_read_file(FIX "clip-tiny/photo_rgb.jpg", len - 1, &got,
                             &got_len) != VLM_ETOOBIG ||
        vlm_clip_preprocess_file(clip, FIX "clip-tiny/photo_rgb.jpg",
                                 pixels) ||
        vlm_clip_preprocess(clip, data, len, want) ||
        memcmp(pixels, want, sizeof want)) {
      fprintf(stderr, "regular file: %s\n", vlm_errmsg());
      _exit(1);
    }
    _exit(0);
  }
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("non-regular image files: child %s %d",
             WIFEXITED(st) ? "exited" : "died of signal",
             WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
  vlm_clip_free(clip);
  unlink(fifo);
  rmdir(sub);
  rmdir(dir);
}

static void test_fuzz_regressions(void **state) {
  (void)state;
  DIR *d = opendir(FIX "crashes");
  if (!d) return;
  struct dirent *e;
  int seen = 0;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, "image-", 6) != 0) continue;
    char path[512];
    snprintf(path, sizeof path, FIX "crashes/%s", e->d_name);
    size_t len;
    uint8_t *data = read_all(path, &len);
    assert_non_null(data);
    int rc = decode_and_preprocess(data, len, 1 << 22);
    assert_true(rc == 0 || rc == VLM_ECORRUPT || rc == VLM_EUNSUPPORTED || rc == VLM_ETOOBIG);
    free(data);
    seen++;
  }
  closedir(d);
  print_message("replayed %d image regression inputs\n", seen);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_tensors),
      cmocka_unit_test(test_pil_modes),
      cmocka_unit_test(test_rgb_resize_helper),
      cmocka_unit_test(test_alpha_onto_white),
      cmocka_unit_test(test_upright_and_decoded),
      cmocka_unit_test(test_orientation_modes),
      cmocka_unit_test(test_exif_parser),
      cmocka_unit_test(test_exif_model_setting),
      cmocka_unit_test(test_model_alpha_record),
      cmocka_unit_test(test_truncated_files),
      cmocka_unit_test(test_truncated_formats),
      cmocka_unit_test(test_pixel_cap_formats),
      cmocka_unit_test(test_bmp_rle_delta),
      cmocka_unit_test(test_garbage_and_bit_flips),
      cmocka_unit_test(test_unsupported_and_empty),
      cmocka_unit_test(test_pixel_cap),
      cmocka_unit_test(test_extreme_aspect),
      cmocka_unit_test(test_thumbnail),
      cmocka_unit_test(test_area_resize),
      cmocka_unit_test(test_preprocess_image_modes),
      cmocka_unit_test(test_thumbnail_sizes),
      cmocka_unit_test(test_concurrent_preprocess),
      cmocka_unit_test(test_non_regular_files),
      cmocka_unit_test(test_fuzz_regressions),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
