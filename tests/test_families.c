/* test_families.c - the SigLIP and Chinese-CLIP towers against the
 * reference's outputs.
 *
 * Oracles: tests/fixtures/siglip-tiny and tests/fixtures/chinese-clip-tiny
 * (random F16 weights with token ids, pixel tensors, embeddings, logits
 * and probabilities computed by transformers v4.44.2's SiglipModel and
 * ChineseCLIPModel; see each README).  Every test runs once per fixture;
 * checkpoints are edited in copies in a temp dir. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clip_int.h" /* white-box checks of the loaded model */
#include "image.h"
#include "kernels.h"
#include "model.h"
#include "preprocess.h"
#include "sha256.h"
#include "train_model.h"
#include "util/util.h"
#include "util/files.h"
#include "vlm_clip.h"
#include "vlm_error.h"

/* ---- fixtures ------------------------------------------------------------- */

#define MAX_TEXTS 64
#define MAX_IMAGES 16

typedef struct {
  char *text;
  int has_nul; /* U+0000 inside: a C string cannot carry the whole text */
  int32_t ids[512]; /* what the model sees: SigLIP's padded input_ids */
  int n_ids;
  float *embedding, *normalized;
} ref_text;

typedef struct {
  char file[64];
  float *pixels;
  int decoded_w, decoded_h;
  char decoded_sha256[65];
  float *embedding, *normalized;
} ref_image;

typedef struct {
  const char *dir;
  vlm__family family;
  int n_texts, n_images, dim, side;
  ref_text texts[MAX_TEXTS];
  ref_image images[MAX_IMAGES];
  double logits[MAX_IMAGES][MAX_TEXTS];
  double probs[MAX_IMAGES][MAX_TEXTS]; /* SigLIP only */
  double logit_scale, logit_bias;
  vlm_clip *clip;  /* default load: F16 panels where the CPU has them */
  vlm_clip *sgemm; /* VLMDB_CLIP_PANELS=0 */
} fixture;

static fixture siglip = {.dir = "tests/fixtures/siglip-tiny",
                         .family = VLM__FAMILY_SIGLIP};
static fixture cnclip = {.dir = "tests/fixtures/chinese-clip-tiny",
                         .family = VLM__FAMILY_CHINESE_CLIP};

static float *json_floats(json_t *arr, int *n) {
  *n = (int)json_array_size(arr);
  float *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
  for (int i = 0; i < *n; i++)
    v[i] = (float)json_number_value(json_array_get(arr, (size_t)i));
  return v;
}

static float *read_pixels(const char *path, size_t n) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  float *v = malloc(n * sizeof *v);
  size_t got = fread(v, sizeof *v, n, f);
  fclose(f);
  if (got != n) {
    free(v);
    return NULL;
  }
  return v;
}

static int load_fixture(fixture *fx) {
  char path[512];
  json_error_t err;
  snprintf(path, sizeof path, "%s/reference.json", fx->dir);
  /* a text with U+0000 in it checks the tokenizer's cleaning */
  json_t *root = json_load_file(path, JSON_ALLOW_NUL, &err);
  if (!root) {
    fprintf(stderr, "%s: %s\n", path, err.text);
    return -1;
  }
  json_t *texts = json_object_get(root, "texts");
  json_t *images = json_object_get(root, "images");
  fx->n_texts = (int)json_array_size(texts);
  fx->n_images = (int)json_array_size(images);
  if (fx->n_texts > MAX_TEXTS || fx->n_images > MAX_IMAGES) {
    json_decref(root);
    return -1;
  }
  const char *ids_key =
      fx->family == VLM__FAMILY_SIGLIP ? "input_ids" : "ids";
  for (int i = 0; i < fx->n_texts; i++) {
    json_t *t = json_array_get(texts, (size_t)i);
    ref_text *r = &fx->texts[i];
    json_t *jt = json_object_get(t, "text");
    r->text = strdup(json_string_value(jt));
    r->has_nul = strlen(r->text) != json_string_length(jt);
    json_t *ids = json_object_get(t, ids_key);
    r->n_ids = (int)json_array_size(ids);
    for (int k = 0; k < r->n_ids && k < 512; k++)
      r->ids[k] = (int32_t)json_integer_value(json_array_get(ids, (size_t)k));
    r->embedding = json_floats(json_object_get(t, "embedding"), &fx->dim);
    r->normalized = json_floats(json_object_get(t, "normalized"), &fx->dim);
  }
  for (int i = 0; i < fx->n_images; i++) {
    json_t *im = json_array_get(images, (size_t)i);
    ref_image *r = &fx->images[i];
    snprintf(r->file, sizeof r->file, "%s",
             json_string_value(json_object_get(im, "file")));
    json_t *shape = json_object_get(im, "pixels_shape");
    fx->side = (int)json_integer_value(json_array_get(shape, 2));
    json_t *ds = json_object_get(im, "decoded_size");
    r->decoded_w = (int)json_integer_value(json_array_get(ds, 0));
    r->decoded_h = (int)json_integer_value(json_array_get(ds, 1));
    snprintf(r->decoded_sha256, sizeof r->decoded_sha256, "%s",
             json_string_value(json_object_get(im, "decoded_rgb_sha256")));
    snprintf(path, sizeof path, "%s/%s.pixels.f32", fx->dir, r->file);
    r->pixels = read_pixels(path, (size_t)3 * fx->side * fx->side);
    if (!r->pixels) {
      fprintf(stderr, "%s: cannot read\n", path);
      json_decref(root);
      return -1;
    }
    int d;
    r->embedding = json_floats(json_object_get(im, "embedding"), &d);
    r->normalized = json_floats(json_object_get(im, "normalized"), &d);
  }
  json_t *logits = json_object_get(root, "logits_per_image");
  json_t *probs = json_object_get(root, "probs_per_image");
  for (int i = 0; i < fx->n_images; i++)
    for (int j = 0; j < fx->n_texts; j++) {
      fx->logits[i][j] = json_number_value(
          json_array_get(json_array_get(logits, (size_t)i), (size_t)j));
      if (probs)
        fx->probs[i][j] = json_number_value(
            json_array_get(json_array_get(probs, (size_t)i), (size_t)j));
    }
  fx->logit_scale = json_number_value(json_object_get(root, "logit_scale"));
  fx->logit_bias = json_number_value(json_object_get(root, "logit_bias"));
  json_decref(root);
  return 0;
}

static int load_models(fixture *fx) {
  if (load_fixture(fx))
    return -1;
  if (vlm_clip_load(fx->dir, NULL, &fx->clip)) {
    fprintf(stderr, "load %s: %s\n", fx->dir, vlm_errmsg());
    return -1;
  }
  setenv("VLMDB_CLIP_PANELS", "0", 1);
  int rc = vlm_clip_load(fx->dir, NULL, &fx->sgemm);
  unsetenv("VLMDB_CLIP_PANELS");
  if (rc) {
    fprintf(stderr, "load %s (sgemm): %s\n", fx->dir, vlm_errmsg());
    return -1;
  }
  return 0;
}

static void free_fixture(fixture *fx) {
  vlm_clip_free(fx->clip);
  vlm_clip_free(fx->sgemm);
  for (int i = 0; i < fx->n_texts; i++) {
    free(fx->texts[i].text);
    free(fx->texts[i].embedding);
    free(fx->texts[i].normalized);
  }
  for (int i = 0; i < fx->n_images; i++) {
    free(fx->images[i].pixels);
    free(fx->images[i].embedding);
    free(fx->images[i].normalized);
  }
}

static int setup(void **state) {
  (void)state;
  return load_models(&siglip) || load_models(&cnclip) ? -1 : 0;
}

static int teardown(void **state) {
  (void)state;
  free_fixture(&siglip);
  free_fixture(&cnclip);
  return 0;
}

/* ---- comparisons ----------------------------------------------------------- */

static double cosine(const float *a, const float *b, int n) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < n; i++) {
    ab += (double)a[i] * b[i];
    aa += (double)a[i] * a[i];
    bb += (double)b[i] * b[i];
  }
  return ab / sqrt(aa * bb);
}

static double max_abs_diff(const float *a, const float *b, int n, int *at) {
  double m = 0;
  *at = 0;
  for (int i = 0; i < n; i++)
    if (fabs((double)a[i] - b[i]) > m) {
      m = fabs((double)a[i] - b[i]);
      *at = i;
    }
  return m;
}

/* The worst cosine and difference seen since the last report. */
static double worst_cos = 1, worst_abs = 0;

static void report(const char *what, int n) {
  printf("    %s: %d vectors, min cosine %.9f, max |diff| %.2e\n", what, n,
         worst_cos, worst_abs);
  worst_cos = 1;
  worst_abs = 0;
}

/* Fails with both values printed unless got matches want within the
 * conformance bounds (cosine >= 0.99999, max |diff| <= 1e-4). */
static void expect_close(const char *what, const char *name, const float *got,
                         const float *want, int n) {
  int at;
  double c = cosine(got, want, n), d = max_abs_diff(got, want, n, &at);
  worst_cos = c < worst_cos ? c : worst_cos;
  worst_abs = d > worst_abs ? d : worst_abs;
  if (!(c >= 0.99999) || !(d <= 1e-4))
    fail_msg("%s '%s': cosine %.9f (need >= 0.99999), max |diff| %.3g at "
             "[%d] (got %.7g, reference %.7g; need <= 1e-4)",
             what, name, c, d, at, got[at], want[at]);
}

/* ---- temp dirs and checkpoints --------------------------------------------- */

static char *make_tmpdir(void) {
  char *t = strdup("/tmp/vlm-families-XXXXXX");
  assert_non_null(mkdtemp(t));
  return t;
}

static void link_into(const fixture *fx, const char *dir, const char *name) {
  char src[768], dst[512], cwd[256];
  assert_non_null(getcwd(cwd, sizeof cwd));
  snprintf(src, sizeof src, "%s/%s/%s", cwd, fx->dir, name);
  snprintf(dst, sizeof dst, "%s/%s", dir, name);
  assert_int_equal(symlink(src, dst), 0);
}

static void write_text(const char *dir, const char *name, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  vlm_test_spit(path, text, strlen(text));
}

static void ckpt_path(const fixture *fx, char *path, size_t cap) {
  snprintf(path, cap, "%s/model.safetensors", fx->dir);
}

/* A model dir with the fixture's configs linked (config.json only when
 * with_config). */
static char *model_dir(const fixture *fx, int with_config) {
  char *dir = make_tmpdir();
  if (with_config)
    link_into(fx, dir, "config.json");
  link_into(fx, dir, "preprocessor_config.json");
  /* the family's tokenizer files */
  const char *tok[] = {"spiece.model", "vocab.txt", "tokenizer_config.json",
                       "special_tokens_map.json"};
  for (size_t i = 0; i < sizeof tok / sizeof *tok; i++) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", fx->dir, tok[i]);
    if (access(p, F_OK) == 0)
      link_into(fx, dir, tok[i]);
  }
  return dir;
}

/* ---- conformance: towers from reference inputs ----------------------------- */

static void encode_ref_texts(const fixture *fx, vlm_clip *clip, unsigned flags,
                             float *out) {
  const int32_t *ids[MAX_TEXTS];
  int n_ids[MAX_TEXTS];
  for (int i = 0; i < fx->n_texts; i++) {
    ids[i] = fx->texts[i].ids;
    n_ids[i] = fx->texts[i].n_ids;
  }
  VLM_CHECK(vlm__clip_encode_tokens(clip, ids, n_ids, fx->n_texts, flags,
                                    out));
}

static void check_texts(const fixture *fx, vlm_clip *clip, const char *how) {
  const int D = vlm_clip_dim(clip);
  assert_int_equal(D, fx->dim);
  float *raw = malloc((size_t)fx->n_texts * D * sizeof *raw);
  float *nrm = malloc((size_t)fx->n_texts * D * sizeof *nrm);
  encode_ref_texts(fx, clip, VLM_CLIP_RAW, raw);
  encode_ref_texts(fx, clip, 0, nrm);
  char what[96];
  for (int i = 0; i < fx->n_texts; i++) {
    snprintf(what, sizeof what, "%s %s text embedding", fx->dir, how);
    expect_close(what, fx->texts[i].text, raw + (size_t)i * D,
                 fx->texts[i].embedding, D);
    snprintf(what, sizeof what, "%s %s text normalized", fx->dir, how);
    expect_close(what, fx->texts[i].text, nrm + (size_t)i * D,
                 fx->texts[i].normalized, D);
  }
  snprintf(what, sizeof what, "%s %s texts (raw and normalized)", fx->dir,
           how);
  report(what, fx->n_texts);
  /* One at a time gives the batch's vectors (sequences are packed row
   * after row; nothing leaks between them). */
  float one[1024];
  assert_true(D <= 1024);
  for (int i = 0; i < fx->n_texts; i++) {
    const int32_t *ids = fx->texts[i].ids;
    int n = fx->texts[i].n_ids;
    VLM_CHECK(vlm__clip_encode_tokens(clip, &ids, &n, 1, VLM_CLIP_RAW, one));
    snprintf(what, sizeof what, "%s %s single text", fx->dir, how);
    expect_close(what, fx->texts[i].text, one, raw + (size_t)i * D, D);
  }
  worst_cos = 1;
  worst_abs = 0;
  free(raw);
  free(nrm);
}

static void encode_ref_images(const fixture *fx, vlm_clip *clip,
                              unsigned flags, float *out) {
  size_t per = (size_t)3 * fx->side * fx->side;
  float *pixels = malloc(fx->n_images * per * sizeof *pixels);
  for (int i = 0; i < fx->n_images; i++)
    memcpy(pixels + i * per, fx->images[i].pixels, per * sizeof *pixels);
  VLM_CHECK(vlm_clip_encode_pixels(clip, pixels, fx->n_images, flags, out));
  free(pixels);
}

static void check_images(const fixture *fx, vlm_clip *clip, const char *how) {
  const int D = vlm_clip_dim(clip);
  assert_int_equal(vlm_clip_image_size(clip), fx->side);
  float *raw = malloc((size_t)fx->n_images * D * sizeof *raw);
  float *nrm = malloc((size_t)fx->n_images * D * sizeof *nrm);
  encode_ref_images(fx, clip, VLM_CLIP_RAW, raw);
  encode_ref_images(fx, clip, 0, nrm);
  char what[96];
  for (int i = 0; i < fx->n_images; i++) {
    snprintf(what, sizeof what, "%s %s image embedding", fx->dir, how);
    expect_close(what, fx->images[i].file, raw + (size_t)i * D,
                 fx->images[i].embedding, D);
    snprintf(what, sizeof what, "%s %s image normalized", fx->dir, how);
    expect_close(what, fx->images[i].file, nrm + (size_t)i * D,
                 fx->images[i].normalized, D);
  }
  snprintf(what, sizeof what, "%s %s images (raw and normalized)", fx->dir,
           how);
  report(what, fx->n_images);
  free(raw);
  free(nrm);
}

static void test_text_tower(void **state) {
  fixture *fx = *state;
  if (vlm__panels_supported())
    assert_non_null(fx->clip->panels); /* F16: the panel path */
  assert_null(fx->sgemm->panels);
  check_texts(fx, fx->clip, "default");
  check_texts(fx, fx->sgemm, "sgemm");
}

static void test_vision_tower(void **state) {
  fixture *fx = *state;
  check_images(fx, fx->clip, "default");
  check_images(fx, fx->sgemm, "sgemm");
}

/* Logits and probabilities from our normalized vectors, through the
 * public helpers: SigLIP's sigmoid(exp(scale) cos + bias) per pair,
 * Chinese-CLIP's softmax over the texts. */
static void test_logits_and_probabilities(void **state) {
  fixture *fx = *state;
  vlm_clip *clip = fx->clip;
  const int D = fx->dim, NT = fx->n_texts, NI = fx->n_images;
  assert_true(vlm_clip_logit_scale(clip) == (float)fx->logit_scale);
  assert_true(vlm_clip_logit_bias(clip) == (float)fx->logit_bias);
  if (fx->family != VLM__FAMILY_SIGLIP)
    assert_true(vlm_clip_logit_bias(clip) == 0.0f);
  float *t = malloc((size_t)NT * D * sizeof *t);
  float *im = malloc((size_t)NI * D * sizeof *im);
  encode_ref_texts(fx, clip, 0, t);
  encode_ref_images(fx, clip, 0, im);
  float cos[MAX_TEXTS], probs[MAX_TEXTS];
  double worst_logit = 0, worst_prob = 0;
  for (int i = 0; i < NI; i++) {
    for (int j = 0; j < NT; j++) {
      double c = 0;
      for (int k = 0; k < D; k++)
        c += (double)im[(size_t)i * D + k] * t[(size_t)j * D + k];
      cos[j] = (float)c;
      double d = fabs(vlm_clip_logit(clip, cos[j]) - fx->logits[i][j]);
      worst_logit = d > worst_logit ? d : worst_logit;
    }
    VLM_CHECK(vlm_clip_probabilities(clip, cos, NT, probs));
    /* the reference's probabilities: SigLIP's own; Chinese-CLIP's softmax
     * of its logits over the texts */
    double mx = fx->logits[i][0], sum = 0;
    for (int j = 1; j < NT; j++)
      mx = fx->logits[i][j] > mx ? fx->logits[i][j] : mx;
    for (int j = 0; j < NT; j++)
      sum += exp(fx->logits[i][j] - mx);
    for (int j = 0; j < NT; j++) {
      double want = fx->family == VLM__FAMILY_SIGLIP
                        ? fx->probs[i][j]
                        : exp(fx->logits[i][j] - mx) / sum;
      double d = fabs(probs[j] - want);
      worst_prob = d > worst_prob ? d : worst_prob;
    }
  }
  printf("    %s: logits max |diff| %.2e, probabilities %.2e\n", fx->dir,
         worst_logit, worst_prob);
  if (!(worst_logit < 1e-3) || !(worst_prob < 1e-4))
    fail_msg("%s: logits max |diff| %.3g (need < 1e-3), probabilities %.3g "
             "(need < 1e-4)", fx->dir, worst_logit, worst_prob);
  VLM_EXPECT_ERR(VLM_EINVAL, vlm_clip_probabilities(clip, NULL, 3, probs));
  free(t);
  free(im);
}

/* ---- preprocessing ----------------------------------------------------------- */

/* Each image file through the model's pipeline gives the reference pixels
 * bit for bit.  exif_rot6.jpg needs the EXIF orientation, which image.c
 * does not decode yet (preprocess.c's apply_exif_orientation is the call
 * site): it is checked by test_exif_pipeline with the rotation done here. */
static void test_pixels_from_files(void **state) {
  fixture *fx = *state;
  const size_t per = (size_t)3 * fx->side * fx->side;
  float *px = malloc(per * sizeof *px), *px2 = malloc(per * sizeof *px2);
  char path[512];
  int checked = 0;
  for (int i = 0; i < fx->n_images; i++) {
    const ref_image *r = &fx->images[i];
    snprintf(path, sizeof path, "%s/%s", fx->dir, r->file);
    VLM_CHECK(vlm_clip_preprocess_file(fx->clip, path, px));
    for (size_t k = 0; k < per; k++)
      if (memcmp(&px[k], &r->pixels[k], sizeof *px))
        fail_msg("%s: pixel %zu is %.9g, reference %.9g", path, k, px[k],
                 r->pixels[k]);
    /* the same pixels from the one-decode path, whose picture for the
     * thumbnail keeps transparency over white (the model's pipeline drops
     * alpha on a copy) */
    size_t len;
    uint8_t *data = vlm_test_slurp(path, &len);
    vlm_image img, white;
    VLM_CHECK(vlm_clip_preprocess_image(fx->clip, data, len, px2, &img));
    assert_memory_equal(px2, r->pixels, per * sizeof *px2);
    vlm_clip_options wo = {.alpha = VLM_ALPHA_WHITE};
    VLM_CHECK(vlm_image_decode(data, len, &wo, &white));
    assert_int_equal(img.w, white.w);
    assert_int_equal(img.h, white.h);
    assert_memory_equal(img.rgb, white.rgb, (size_t)img.w * img.h * 3);
    vlm_image_free(&img);
    vlm_image_free(&white);
    free(data);
    checked++;
  }
  assert_int_equal(checked, fx->n_images);
  free(px);
  free(px2);
}

/* exif_rot6.jpg: stored landscape with EXIF orientation 6 (rotate 90°
 * clockwise to view).  The decoder reads orientation 6; rotated here as
 * ImageOps.exif_transpose does, the picture must be the reference's RGB
 * image (its SHA-256) and what vlm__decoded_apply_orientation makes of it,
 * and the rest of the pipeline must then give the reference pixels bit for
 * bit (test_pixels_from_files runs the whole path from the file). */
static void test_exif_pipeline(void **state) {
  fixture *fx = *state;
  const ref_image *r = NULL;
  for (int i = 0; i < fx->n_images; i++)
    if (!strcmp(fx->images[i].file, "exif_rot6.jpg"))
      r = &fx->images[i];
  assert_non_null(r);
  assert_int_equal(fx->clip->pp.exif_transpose, 1);
  char path[512];
  snprintf(path, sizeof path, "%s/exif_rot6.jpg", fx->dir);
  size_t len;
  uint8_t *data = vlm_test_slurp(path, &len);
  vlm__decoded im;
  VLM_CHECK(vlm__image_decode_native(data, len, 0, &im));
  free(data);
  assert_int_equal(im.mode, VLM__MODE_RGB);
  assert_int_equal(im.orientation, 6);
  vlm__decoded lib = im;
  lib.pixels = malloc((size_t)im.w * im.h * 3);
  memcpy(lib.pixels, im.pixels, (size_t)im.w * im.h * 3);
  VLM_CHECK(vlm__decoded_apply_orientation(&lib));
  assert_int_equal(lib.orientation, 1);
  /* stored W x H, viewed H x W */
  assert_int_equal(im.w, r->decoded_h);
  assert_int_equal(im.h, r->decoded_w);
  const int W = im.w, H = im.h;
  uint8_t *rot = malloc((size_t)W * H * 3);
  for (int y = 0; y < W; y++)     /* output rows: W of them */
    for (int x = 0; x < H; x++)   /* output columns: H */
      memcpy(rot + ((size_t)y * H + x) * 3,
             im.pixels + ((size_t)(H - 1 - x) * W + y) * 3, 3);
  free(im.pixels);
  im.pixels = rot;
  im.w = H;
  im.h = W;
  vlm__sha256 s;
  char hex[65];
  uint8_t digest[32];
  vlm__sha256_init(&s);
  vlm__sha256_update(&s, im.pixels, (size_t)im.w * im.h * 3);
  vlm__sha256_final(&s, digest, hex);
  assert_string_equal(hex, r->decoded_sha256);
  assert_int_equal(lib.w, im.w);
  assert_int_equal(lib.h, im.h);
  assert_memory_equal(lib.pixels, im.pixels, (size_t)im.w * im.h * 3);
  vlm__decoded_free(&lib);
  vlm__preprocess_cfg pp = fx->clip->pp;
  pp.exif_transpose = 0; /* done above */
  const size_t per = (size_t)3 * fx->side * fx->side;
  float *px = malloc(per * sizeof *px);
  VLM_CHECK(vlm__preprocess_decoded(&pp, &im, px));
  assert_memory_equal(px, r->pixels, per * sizeof *px);
  vlm__decoded_free(&im);
  free(px);
}

/* The preprocessing the family's image processor does by default, and
 * what preprocessor_config.json changes. */
static void test_preprocess_config(void **state) {
  fixture *fx = *state;
  const vlm__preprocess_cfg *pp = &fx->clip->pp;
  assert_int_equal(pp->rgb_first, 1);
  assert_int_equal(pp->crop_floor, 1);
  assert_int_equal(pp->center_crop, 0); /* both fixtures squash */
  assert_int_equal(pp->resize_w, fx->side);
  assert_int_equal(pp->resize_h, fx->side);
  assert_true(pp->rescale == 1.0 / 255);
  if (fx->family == VLM__FAMILY_SIGLIP)
    for (int c = 0; c < 3; c++)
      assert_true(pp->mean[c] == 0.5f && pp->std[c] == 0.5f);

  /* A CLIP-style processor: shortest edge, then a center crop whose
   * offsets transformers floors.  SigLIP's processor has no crop, so
   * there this size cannot give the model's fixed input. */
  char *dir = model_dir(fx, 1);
  char path[512], src[768], dst[512], cwd[256];
  assert_non_null(getcwd(cwd, sizeof cwd));
  snprintf(src, sizeof src, "%s/%s/model.safetensors", cwd, fx->dir);
  snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
  assert_int_equal(symlink(src, dst), 0);
  snprintf(dst, sizeof dst, "%s/preprocessor_config.json", dir);
  unlink(dst);
  const int S = fx->side;
  char json[512];
  snprintf(json, sizeof json,
           "{\"do_center_crop\": true, \"crop_size\": {\"height\": %d, "
           "\"width\": %d}, \"size\": {\"shortest_edge\": %d}, "
           "\"image_mean\": [0.25, 0.5, 0.75], \"image_std\": [0.5, 0.25, "
           "0.125], \"rescale_factor\": 0.00392156862745098, "
           "\"resample\": 3}", S, S, S);
  write_text(dir, "preprocessor_config.json", json);
  vlm_clip *clip = NULL;
  const size_t per = (size_t)3 * S * S;
  float *got = malloc(per * sizeof *got), *want = malloc(per * sizeof *want);
  if (fx->family == VLM__FAMILY_SIGLIP) {
    VLM_EXPECT_ERR(VLM_EUNSUPPORTED, vlm_clip_load(dir, NULL, &clip));
    assert_non_null(strstr(vlm_errmsg(), "shortest_edge"));
    /* its crop keys are not read: a crop_size the model cannot take and
     * do_center_crop change nothing */
    snprintf(json, sizeof json,
             "{\"do_center_crop\": true, \"crop_size\": 999, \"size\": "
             "{\"height\": %d, \"width\": %d}, \"image_mean\": [0.5, 0.5, "
             "0.5], \"image_std\": [0.5, 0.5, 0.5]}", S, S);
    unlink(dst);
    write_text(dir, "preprocessor_config.json", json);
    VLM_CHECK(vlm_clip_load(dir, NULL, &clip));
    assert_string_equal(vlm_clip_model_id(clip), vlm_clip_model_id(fx->clip));
    snprintf(path, sizeof path, "%s/%s", fx->dir, fx->images[0].file);
    VLM_CHECK(vlm_clip_preprocess_file(clip, path, got));
    assert_memory_equal(got, fx->images[0].pixels, per * sizeof *got);
    vlm_clip_free(clip);
    /* a size that is not the model's */
    snprintf(json, sizeof json, "{\"size\": {\"height\": %d, \"width\": "
             "%d}}", S, 2 * S);
    unlink(dst);
    write_text(dir, "preprocessor_config.json", json);
    VLM_EXPECT_ERR(VLM_EMISMATCH, vlm_clip_load(dir, NULL, &clip));
    goto done;
  }
  /* rgba.png (257 x 129) resizes to 63 x 32: the crop starts at column
   * 15 (torchvision's rounding would say 16).  The oracle is the resize
   * and crop helpers, each checked against Pillow in test_image. */
  VLM_CHECK(vlm_clip_load(dir, NULL, &clip));
  assert_string_not_equal(vlm_clip_model_id(clip), vlm_clip_model_id(fx->clip));
  snprintf(path, sizeof path, "%s/rgba.png", fx->dir);
  VLM_CHECK(vlm_clip_preprocess_file(clip, path, got));
  size_t len;
  uint8_t *data = vlm_test_slurp(path, &len);
  vlm__decoded im;
  VLM_CHECK(vlm__image_decode_native(data, len, 0, &im));
  free(data);
  vlm_image rgb = {.w = im.w, .h = im.h,
                   .rgb = malloc((size_t)im.w * im.h * 3)};
  vlm__decoded_to_rgb(&im, rgb.rgb); /* convert("RGB") first: alpha dropped */
  vlm__decoded_free(&im);
  vlm_image resized, cropped;
  int dw = (int)((double)S * rgb.w / rgb.h);
  assert_int_equal(dw, 63);
  VLM_CHECK(vlm__image_resize(&rgb, dw, S, &resized));
  VLM_CHECK(vlm__image_crop(&resized, (dw - S) / 2, 0, S, S, &cropped));
  vlm__preprocess_cfg want_pp;
  vlm__preprocess_defaults(&want_pp, S);
  const float mean[3] = {0.25f, 0.5f, 0.75f}, stdv[3] = {0.5f, 0.25f, 0.125f};
  memcpy(want_pp.mean, mean, sizeof mean);
  memcpy(want_pp.std, stdv, sizeof stdv);
  vlm__preprocess_normalize(&want_pp, cropped.rgb, want);
  assert_memory_equal(got, want, per * sizeof *got);
  vlm_image_free(&rgb);
  vlm_image_free(&resized);
  vlm_image_free(&cropped);
  vlm_clip_free(clip);
done:
  free(got);
  free(want);
  vlm_test_rm_rf(dir);
  free(dir);
}

/* ---- weights ------------------------------------------------------------------ */

/* Every tensor of the file is bound: vlm__clip_tensor returns each under
 * its own name with the file's values, whatever the path (panels or
 * sgemm) the towers use. */
static void test_every_tensor_bound(void **state) {
  fixture *fx = *state;
  char path[512];
  ckpt_path(fx, path, sizeof path);
  vlm__safetensors *st;
  VLM_CHECK(vlm__st_open(path, &st));
  int checked = 0;
  for (int i = 0; i < st->n_tensors; i++) {
    const vlm__st_tensor *t = &st->tensors[i];
    assert_int_equal(t->dtype, VLM__DT_F16);
    float *want = malloc((size_t)t->numel * sizeof *want);
    vlm__f16_to_f32(want, t->data, (size_t)t->numel);
    for (int m = 0; m < 2; m++) {
      int64_t n = -1;
      const float *got = vlm__clip_tensor(m ? fx->sgemm : fx->clip, t->name, &n);
      if (!got)
        fail_msg("%s: tensor %s is not bound", fx->dir, t->name);
      assert_int_equal(n, t->numel);
      for (int64_t k = 0; k < n; k++)
        if (got[k] != want[k])
          fail_msg("%s: %s[%lld] = %g, file %g", fx->dir, t->name,
                   (long long)k, got[k], want[k]);
    }
    free(want);
    checked++;
  }
  /* the named table holds exactly the file's tensors */
  assert_int_equal(fx->clip->n_named, checked);
  assert_int_equal(checked, fx->family == VLM__FAMILY_SIGLIP ? 88 : 79);
  vlm__st_close(st);
}

/* Deleting any single tensor from the header makes the load fail naming
 * the tensor and the file. */
static void test_every_tensor_deleted(void **state) {
  fixture *fx = *state;
  char *dir = model_dir(fx, 1);
  char src[512], path[512];
  ckpt_path(fx, src, sizeof src);
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  vlm_test_ckpt c;
  vlm_test_ckpt_read(src, &c);
  const char *key;
  json_t *v;
  void *tmp;
  json_t *keys = json_array();
  json_object_foreach_safe(c.header, tmp, key, v) {
    if (strcmp(key, "__metadata__"))
      json_array_append_new(keys, json_string(key));
  }
  for (size_t i = 0; i < json_array_size(keys); i++) {
    const char *victim = json_string_value(json_array_get(keys, i));
    json_t *saved = json_incref(json_object_get(c.header, victim));
    json_object_del(c.header, victim);
    vlm_test_ckpt_write(&c, path);
    vlm_clip *clip = NULL;
    int rc = vlm__clip_load_weights(dir, path, NULL, &clip);
    if (rc != VLM_ENOTFOUND || !strstr(vlm_errmsg(), victim) ||
        !strstr(vlm_errmsg(), path))
      fail_msg("%s without %s: load returned %s: '%s'", fx->dir, victim,
               vlm_errname(rc), vlm_errmsg());
    assert_null(clip);
    json_object_set_new(c.header, victim, saved);
  }
  assert_int_equal(json_array_size(keys),
                   fx->family == VLM__FAMILY_SIGLIP ? 88 : 79);
  json_decref(keys);
  vlm_test_ckpt_free(&c);
  vlm_test_rm_rf(dir);
  free(dir);
}

/* Changing any single tensor changes an output: nothing is loaded and
 * then ignored.  Each tensor is negated in a copy of the file. */
static void test_every_tensor_perturbed(void **state) {
  fixture *fx = *state;
  char *dir = model_dir(fx, 1);
  char src[512], path[512];
  ckpt_path(fx, src, sizeof src);
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  vlm_test_ckpt c;
  vlm_test_ckpt_read(src, &c);
  const int D = fx->dim, NT = fx->n_texts;
  float *txt = malloc((size_t)NT * D * sizeof *txt);
  float *img = malloc((size_t)D * sizeof *img);
  const char *key;
  json_t *v;
  int n = 0;
  json_object_foreach(c.header, key, v) {
    if (!strcmp(key, "__metadata__"))
      continue;
    json_t *off = json_object_get(v, "data_offsets");
    size_t b = (size_t)json_integer_value(json_array_get(off, 0));
    size_t e = (size_t)json_integer_value(json_array_get(off, 1));
    for (size_t k = b + 1; k < e; k += 2) /* the sign of every F16 value */
      c.data[k] ^= 0x80;
    vlm_test_ckpt_write(&c, path);
    vlm_clip *clip = NULL;
    if (vlm__clip_load_weights(dir, path, NULL, &clip))
      fail_msg("%s: %s", key, vlm_errmsg());
    if (!strcmp(key, "logit_scale")) {
      assert_true(vlm_clip_logit_scale(clip) == -(float)fx->logit_scale);
    } else if (!strcmp(key, "logit_bias")) {
      assert_true(vlm_clip_logit_bias(clip) == -(float)fx->logit_bias);
    } else if (strstr(key, "k_proj.bias") || strstr(key, "self.key.bias")) {
      /* A key bias adds q·b to every score of a query alike, which softmax
       * cancels: no output can see it (test_every_tensor_bound checks its
       * values).  The model id must still change. */
      assert_string_not_equal(vlm_clip_model_id(clip),
                              vlm_clip_model_id(fx->clip));
    } else {
      encode_ref_texts(fx, clip, VLM_CLIP_RAW, txt);
      VLM_CHECK(vlm_clip_encode_pixels(clip, fx->images[0].pixels, 1,
                                       VLM_CLIP_RAW, img));
      double worst = 0;
      int at;
      for (int i = 0; i < NT; i++) {
        double d = max_abs_diff(txt + (size_t)i * D, fx->texts[i].embedding,
                                D, &at);
        worst = d > worst ? d : worst;
      }
      double d = max_abs_diff(img, fx->images[0].embedding, D, &at);
      worst = d > worst ? d : worst;
      if (worst < 1e-3)
        fail_msg("%s: negating %s changed no output (max diff %.3g)", fx->dir,
                 key, worst);
      assert_string_not_equal(vlm_clip_model_id(clip),
                              vlm_clip_model_id(fx->clip));
    }
    vlm_clip_free(clip);
    for (size_t k = b + 1; k < e; k += 2)
      c.data[k] ^= 0x80;
    n++;
  }
  assert_int_equal(n, fx->family == VLM__FAMILY_SIGLIP ? 88 : 79);
  free(txt);
  free(img);
  vlm_test_ckpt_free(&c);
  vlm_test_rm_rf(dir);
  free(dir);
}

static void test_f32_and_bf16_files(void **state) {
  fixture *fx = *state;
  char *dir = model_dir(fx, 1);
  char src[512], path[512];
  ckpt_path(fx, src, sizeof src);
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  /* F32: the reference's values exactly; used in place, through sgemm */
  vlm_test_ckpt_convert(src, path, VLM_TEST_F32);
  vlm_clip *clip = NULL;
  VLM_CHECK(vlm_clip_load(dir, NULL, &clip));
  assert_null(clip->panels);
  check_texts(fx, clip, "F32 file");
  check_images(fx, clip, "F32 file");
  assert_string_equal(vlm_clip_model_id(clip), vlm_clip_model_id(fx->clip));
  vlm_clip_free(clip);

  /* BF16 (panels of bfloat16 where the CPU has them) against an F32 file
   * of the same values (sgemm) */
  const int D = fx->dim, NT = fx->n_texts, NI = fx->n_images;
  float *t32 = malloc((size_t)NT * D * sizeof *t32);
  float *i32 = malloc((size_t)NI * D * sizeof *i32);
  float *t16 = malloc((size_t)NT * D * sizeof *t16);
  float *i16 = malloc((size_t)NI * D * sizeof *i16);
  vlm_test_ckpt_convert(src, path, VLM_TEST_F32_OF_BF16);
  VLM_CHECK(vlm_clip_load(dir, NULL, &clip));
  encode_ref_texts(fx, clip, VLM_CLIP_RAW, t32);
  encode_ref_images(fx, clip, VLM_CLIP_RAW, i32);
  char id32[65];
  snprintf(id32, sizeof id32, "%s", vlm_clip_model_id(clip));
  vlm_clip_free(clip);
  vlm_test_ckpt_convert(src, path, VLM_TEST_BF16);
  VLM_CHECK(vlm_clip_load(dir, NULL, &clip));
  if (vlm__panels_supported()) {
    assert_non_null(clip->panels);
    assert_int_equal(clip->panels_bf16, 1);
  }
  encode_ref_texts(fx, clip, VLM_CLIP_RAW, t16);
  encode_ref_images(fx, clip, VLM_CLIP_RAW, i16);
  assert_string_equal(vlm_clip_model_id(clip), id32);
  assert_string_not_equal(id32, vlm_clip_model_id(fx->clip));
  vlm_clip_free(clip);
  for (int i = 0; i < NT; i++)
    expect_close("BF16 file vs its F32 values, text", fx->texts[i].text,
                 t16 + (size_t)i * D, t32 + (size_t)i * D, D);
  for (int i = 0; i < NI; i++)
    expect_close("BF16 file vs its F32 values, image", fx->images[i].file,
                 i16 + (size_t)i * D, i32 + (size_t)i * D, D);
  /* and BF16 rounding moved the vectors: the comparison is not vacuous */
  int at;
  assert_true(max_abs_diff(t32, fx->texts[0].embedding, D, &at) > 1e-5);
  free(t32);
  free(i32);
  free(t16);
  free(i16);
  vlm_test_rm_rf(dir);
  free(dir);
}

/* ---- other geometries ----------------------------------------------------------- */

/* tests/fixtures/families-geometry: checkpoints of other shapes than the
 * conformance fixtures (widths 32..96 including ones that are not
 * multiples of 16, 1 to 6 heads, patches of 2 to 8 pixels, text and vision
 * depths that differ, gelu_new, F32, F16 and BF16 files) with embeddings
 * from the conformance fixtures' numpy checkers (gen.py there).  Each is
 * checked on the default path and on sgemm. */
static void check_geometry(const char *dir, int sgemm) {
  char path[512];
  snprintf(path, sizeof path, "%s/ref.json", dir);
  json_error_t err;
  json_t *r = json_load_file(path, 0, &err);
  if (!r)
    fail_msg("%s: %s", path, err.text);
  if (sgemm)
    setenv("VLMDB_CLIP_PANELS", "0", 1);
  vlm_clip *clip = NULL;
  int rc = vlm__clip_load_towers(dir, NULL, &clip);
  unsetenv("VLMDB_CLIP_PANELS");
  if (rc)
    fail_msg("%s: %s", dir, vlm_errmsg());
  const int D = vlm_clip_dim(clip), S = vlm_clip_image_size(clip);
  assert_int_equal(S, json_integer_value(json_object_get(r, "side")));
  float *out = malloc((size_t)D * sizeof *out);
  char what[160];
  json_t *texts = json_object_get(r, "texts");
  for (size_t i = 0; i < json_array_size(texts); i++) {
    json_t *t = json_array_get(texts, i), *ids = json_object_get(t, "ids");
    int n = (int)json_array_size(ids);
    int32_t *v = malloc((size_t)n * sizeof *v);
    for (int k = 0; k < n; k++)
      v[k] = (int32_t)json_integer_value(json_array_get(ids, (size_t)k));
    const int32_t *pv = v;
    VLM_CHECK(vlm__clip_encode_tokens(clip, &pv, &n, 1, VLM_CLIP_RAW, out));
    int dn;
    float *want = json_floats(json_object_get(t, "embedding"), &dn);
    assert_int_equal(dn, D);
    snprintf(what, sizeof what, "%s%s text", dir, sgemm ? " (sgemm)" : "");
    snprintf(path, sizeof path, "%zu", i);
    expect_close(what, path, out, want, D);
    free(want);
    free(v);
  }
  json_t *images = json_object_get(r, "images");
  const size_t per = (size_t)3 * S * S;
  for (size_t i = 0; i < json_array_size(images); i++) {
    json_t *im = json_array_get(images, i);
    snprintf(path, sizeof path, "%s/%s", dir,
             json_string_value(json_object_get(im, "file")));
    float *px = read_pixels(path, per);
    assert_non_null(px);
    VLM_CHECK(vlm_clip_encode_pixels(clip, px, 1, VLM_CLIP_RAW, out));
    int dn;
    float *want = json_floats(json_object_get(im, "embedding"), &dn);
    assert_int_equal(dn, D);
    snprintf(what, sizeof what, "%s%s image", dir, sgemm ? " (sgemm)" : "");
    expect_close(what, path, out, want, D);
    free(want);
    free(px);
  }
  snprintf(what, sizeof what, "%s%s texts and images", dir,
           sgemm ? " (sgemm)" : "");
  report(what, (int)(json_array_size(texts) + json_array_size(images)));
  free(out);
  vlm_clip_free(clip);
  json_decref(r);
}

static void test_other_geometries(void **state) {
  (void)state;
  static const char *dirs[] = {"sigA", "sigB", "sigC", "ccA", "ccB", "ccC"};
  char dir[256];
  for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
    for (int sgemm = 0; sgemm < 2; sgemm++) {
      snprintf(dir, sizeof dir, "tests/fixtures/families-geometry/%s",
               dirs[i]);
      check_geometry(dir, sgemm);
    }
}

/* ---- configs ------------------------------------------------------------------ */

/* Geometry from a config.json text (parsed over CLIP's defaults, as
 * vlm_clip_load does). */
static int parse_config(const char *text, vlm__clip_config *c) {
  json_error_t err;
  json_t *root = json_loads(text, 0, &err);
  assert_non_null(root);
  vlm__config_defaults(c);
  int rc = vlm__config_parse_hf(root, "config.json", c);
  json_decref(root);
  return rc;
}

/* The built-in defaults are transformers v4.44.2's. */
static void test_sparse_config_defaults(void **state) {
  (void)state;
  vlm__clip_config c;
  VLM_CHECK(parse_config("{\"model_type\": \"siglip\"}", &c));
  assert_int_equal(c.family, VLM__FAMILY_SIGLIP);
  assert_int_equal(c.vocab_size, 32000);
  assert_int_equal(c.text_width, 768);
  assert_int_equal(c.text_mlp, 3072);
  assert_int_equal(c.text_layers, 12);
  assert_int_equal(c.text_heads, 12);
  assert_int_equal(c.context_length, 64);
  assert_int_equal(c.text_act, VLM__ACT_GELU_TANH);
  assert_true(c.text_eps == 1e-6f);
  assert_int_equal(c.vision_width, 768);
  assert_int_equal(c.vision_mlp, 3072);
  assert_int_equal(c.vision_layers, 12);
  assert_int_equal(c.vision_heads, 12);
  assert_int_equal(c.image_size, 224);
  assert_int_equal(c.patch_size, 16);
  assert_int_equal(c.vision_act, VLM__ACT_GELU_TANH);
  assert_true(c.vision_eps == 1e-6f);
  assert_int_equal(c.projection_dim, 768);
  assert_int_equal(c.bos_id, -1);

  /* the architectures name the family when model_type is absent */
  VLM_CHECK(parse_config("{\"architectures\": [\"ChineseCLIPModel\"]}", &c));
  assert_int_equal(c.family, VLM__FAMILY_CHINESE_CLIP);
  assert_int_equal(c.vocab_size, 30522);
  assert_int_equal(c.text_width, 768);
  assert_int_equal(c.text_mlp, 3072);
  assert_int_equal(c.text_layers, 12);
  assert_int_equal(c.text_heads, 12);
  assert_int_equal(c.context_length, 512);
  assert_int_equal(c.type_vocab_size, 2);
  assert_int_equal(c.text_act, VLM__ACT_GELU);
  assert_true(c.text_eps == 1e-12f);
  assert_int_equal(c.vision_width, 768);
  assert_int_equal(c.vision_mlp, 3072);
  assert_int_equal(c.vision_layers, 12);
  assert_int_equal(c.vision_heads, 12);
  assert_int_equal(c.image_size, 224);
  assert_int_equal(c.patch_size, 32);
  assert_int_equal(c.vision_act, VLM__ACT_QUICK_GELU);
  assert_true(c.vision_eps == 1e-5f);
  assert_int_equal(c.projection_dim, 512);
  assert_true(c.logit_scale == 2.6592f);

  /* SigLIP states no projection: the width is the dimension */
  VLM_CHECK(parse_config("{\"model_type\": \"siglip\", \"text_config\": "
                         "{\"hidden_size\": 1152}, \"vision_config\": "
                         "{\"hidden_size\": 1152, \"hidden_act\": "
                         "\"gelu_new\"}}", &c));
  assert_int_equal(c.projection_dim, 1152);
  /* a CLIP config is read as before */
  VLM_CHECK(parse_config("{\"model_type\": \"clip\", \"text_config\": {}, "
                         "\"vision_config\": {\"hidden_act\": \"gelu\"}}", &c));
  assert_int_equal(c.family, VLM__FAMILY_CLIP);
  assert_int_equal(c.vision_act, VLM__ACT_GELU);
  assert_int_equal(c.eos_id, 49407);

  /* refused, with the field named */
  static const struct {
    const char *json, *needle;
    int code;
  } bad[] = {
      {"{\"model_type\": \"siglip2\"}", "siglip2", VLM_EUNSUPPORTED},
      {"{\"model_type\": 7}", "model_type", VLM_EFORMAT},
      {"{\"model_type\": \"siglip\", \"text_config\": {\"hidden_size\": 512}}",
       "hidden_size", VLM_EFORMAT},
      {"{\"model_type\": \"siglip\", \"vision_config\": {\"vision_use_head\": "
       "false}}", "vision_use_head", VLM_EUNSUPPORTED},
      {"{\"model_type\": \"siglip\", \"vision_config\": {\"hidden_act\": "
       "\"relu\"}}", "hidden_act", VLM_EUNSUPPORTED},
      {"{\"model_type\": \"chinese_clip\", \"text_config\": "
       "{\"position_embedding_type\": \"relative_key\"}}",
       "position_embedding_type", VLM_EUNSUPPORTED},
      {"{\"model_type\": \"chinese_clip\", \"text_config\": "
       "{\"type_vocab_size\": 0}}", "type_vocab_size", VLM_EFORMAT},
      {"{\"model_type\": \"chinese_clip\", \"vision_config\": "
       "{\"num_channels\": 1}}", "num_channels", VLM_EUNSUPPORTED},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = parse_config(bad[i].json, &c);
    if (rc != bad[i].code || !strstr(vlm_errmsg(), bad[i].needle))
      fail_msg("%s: %s '%s', expected %s naming %s", bad[i].json,
               vlm_errname(rc), vlm_errmsg(), vlm_errname(bad[i].code),
               bad[i].needle);
  }
}

/* The fixture's sparse config.json, and the same with every default
 * written out, load the same model; a stated value removed falls back to
 * the default, which the checkpoint's shapes then refuse. */
static void test_sparse_config_loads(void **state) {
  fixture *fx = *state;
  char *dir = model_dir(fx, 0);
  char src[768], dst[512], cwd[256];
  assert_non_null(getcwd(cwd, sizeof cwd));
  snprintf(src, sizeof src, "%s/%s/model.safetensors", cwd, fx->dir);
  snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
  assert_int_equal(symlink(src, dst), 0);
  snprintf(src, sizeof src, "%s/config.json", fx->dir);
  json_error_t err;
  json_t *cfg = json_load_file(src, 0, &err);
  assert_non_null(cfg);
  json_t *text = json_object_get(cfg, "text_config");
  json_t *vision = json_object_get(cfg, "vision_config");
  if (fx->family == VLM__FAMILY_SIGLIP) {
    json_object_set_new(text, "max_position_embeddings", json_integer(64));
    json_object_set_new(text, "hidden_act", json_string("gelu_pytorch_tanh"));
    json_object_set_new(text, "layer_norm_eps", json_real(1e-6));
    json_object_set_new(vision, "hidden_act", json_string("gelu_pytorch_tanh"));
    json_object_set_new(vision, "layer_norm_eps", json_real(1e-6));
    json_object_set_new(vision, "num_channels", json_integer(3));
  } else {
    json_object_set_new(text, "hidden_act", json_string("gelu"));
    json_object_set_new(text, "layer_norm_eps", json_real(1e-12));
    json_object_set_new(text, "type_vocab_size", json_integer(2));
    json_object_set_new(text, "position_embedding_type",
                        json_string("absolute"));
    json_object_set_new(vision, "hidden_act", json_string("quick_gelu"));
    json_object_set_new(vision, "layer_norm_eps", json_real(1e-5));
  }
  snprintf(dst, sizeof dst, "%s/config.json", dir);
  assert_int_equal(json_dump_file(cfg, dst, JSON_INDENT(2)), 0);
  vlm_clip *clip = NULL;
  VLM_CHECK(vlm_clip_load(dir, NULL, &clip));
  assert_string_equal(vlm_clip_model_id(clip), vlm_clip_model_id(fx->clip));
  vlm_clip_free(clip);
  /* model_type removed: the architectures still say which family */
  json_object_del(cfg, "model_type");
  assert_int_equal(json_dump_file(cfg, dst, JSON_INDENT(2)), 0);
  VLM_CHECK(vlm_clip_load(dir, NULL, &clip));
  assert_string_equal(vlm_clip_model_id(clip), vlm_clip_model_id(fx->clip));
  vlm_clip_free(clip);
  /* a stated geometry removed: the default (patch 16 or 32) does not fit
   * the checkpoint's patch embedding */
  json_object_del(vision, "patch_size");
  assert_int_equal(json_dump_file(cfg, dst, JSON_INDENT(2)), 0);
  int rc = vlm_clip_load(dir, NULL, &clip);
  if (rc == 0 || !strstr(vlm_errmsg(), "vision_model.embeddings"))
    fail_msg("%s without patch_size: %s '%s'", fx->dir, vlm_errname(rc),
             vlm_errmsg());
  json_decref(cfg);
  vlm_test_rm_rf(dir);
  free(dir);
}

/* ---- the public surface ------------------------------------------------------- */

/* Text to vector through the family's own tokenizer, as a user's query
 * goes: vlm_clip_tokenize gives the ids the reference model saw (SigLIP:
 * padded to its positions), and vlm_clip_encode_texts the reference
 * embeddings, for every reference text that a C string can carry. */
static void test_texts_end_to_end(void **state) {
  fixture *fx = *state;
  vlm_clip *models[2] = {fx->clip, fx->sgemm};
  const char *how[2] = {"panels", "sgemm"};
  const int D = fx->dim;
  const char *texts[MAX_TEXTS];
  int idx[MAX_TEXTS], n = 0;
  for (int i = 0; i < fx->n_texts; i++)
    if (!fx->texts[i].has_nul) {
      idx[n] = i;
      texts[n++] = fx->texts[i].text;
    }
  assert_true(n >= fx->n_texts - 1);
  for (int m = 0; m < 2; m++) {
    vlm_clip *clip = models[m];
    for (int j = 0; j < n; j++) {
      const ref_text *r = &fx->texts[idx[j]];
      int32_t ids[512];
      int nid = 0;
      VLM_CHECK(vlm_clip_tokenize(clip, r->text, ids, 512, &nid));
      assert_int_equal(nid, r->n_ids);
      assert_memory_equal(ids, r->ids, (size_t)nid * sizeof *ids);
    }
    float *raw = malloc((size_t)n * D * sizeof *raw);
    float *nrm = malloc((size_t)n * D * sizeof *nrm);
    assert_non_null(raw);
    assert_non_null(nrm);
    VLM_CHECK(vlm_clip_encode_texts(clip, texts, n, VLM_CLIP_RAW, raw));
    VLM_CHECK(vlm_clip_encode_texts(clip, texts, n, 0, nrm));
    char what[96];
    snprintf(what, sizeof what, "%s %s texts end to end", fx->dir, how[m]);
    for (int j = 0; j < n; j++) {
      const ref_text *r = &fx->texts[idx[j]];
      expect_close(what, r->text, raw + (size_t)j * D, r->embedding, D);
      expect_close(what, r->text, nrm + (size_t)j * D, r->normalized, D);
    }
    report(what, n);
    worst_cos = 1;
    worst_abs = 0;
    free(raw);
    free(nrm);
  }
  /* bad input is an error, not a crash */
  int32_t ids[64];
  int nid = 7;
  VLM_EXPECT_ERR(VLM_EFORMAT, vlm_clip_tokenize(fx->clip, "caf\xc3", ids,
                                                64, &nid));
  assert_int_equal(nid, 0);
  if (fx->family == VLM__FAMILY_SIGLIP)
    VLM_EXPECT_ERR(VLM_EINVAL,
                   vlm_clip_tokenize(fx->clip, "a cat", ids, 63, &nid));
}

static void test_accessors_and_errors(void **state) {
  fixture *fx = *state;
  vlm_clip *clip = fx->clip;
  assert_string_equal(vlm_clip_family(clip),
                      fx->family == VLM__FAMILY_SIGLIP ? "siglip"
                                                       : "chinese_clip");
  assert_null(vlm_clip_family(NULL));
  assert_int_equal(vlm_clip_dim(clip), fx->dim);
  assert_int_equal(vlm_clip_image_size(clip), fx->side);
  assert_int_equal(vlm_clip_context_length(clip), 64);
  float out[1024];
  /* ids the model cannot take */
  const int32_t *p = fx->texts[0].ids;
  int len = fx->texts[0].n_ids;
  int short_len = fx->family == VLM__FAMILY_SIGLIP ? 63 : 0;
  VLM_EXPECT_ERR(VLM_EINVAL,
                 vlm__clip_encode_tokens(clip, &p, &short_len, 1, 0, out));
  int long_len = 65;
  int32_t many[65] = {0};
  const int32_t *pm = many;
  VLM_EXPECT_ERR(VLM_EINVAL,
                 vlm__clip_encode_tokens(clip, &pm, &long_len, 1, 0, out));
  int32_t bad[64];
  memcpy(bad, p, (size_t)len * sizeof *bad);
  bad[len - 1] = vlm__clip_get_config(clip)->vocab_size;
  const int32_t *pb = bad;
  VLM_EXPECT_ERR(VLM_EINVAL,
                 vlm__clip_encode_tokens(clip, &pb, &len, 1, 0, out));
  /* the family's own score */
  float c[3] = {0.2f, -0.1f, 0.05f}, probs[3];
  VLM_CHECK(vlm_clip_probabilities(clip, c, 3, probs));
  double sum = 0;
  for (int i = 0; i < 3; i++) {
    double l = exp(fx->logit_scale) * c[i] + fx->logit_bias;
    if (fx->family == VLM__FAMILY_SIGLIP)
      assert_true(fabs(probs[i] - 1 / (1 + exp(-l))) < 1e-6);
    sum += probs[i];
  }
  if (fx->family != VLM__FAMILY_SIGLIP)
    assert_true(fabs(sum - 1) < 1e-6);
  /* models of different families never share an id */
  assert_string_not_equal(vlm_clip_model_id(siglip.clip),
                          vlm_clip_model_id(cnclip.clip));
  /* the trainer lays these towers out (tests/test_train.c trains them) */
  vlm__tlayout *L = NULL;
  VLM_CHECK(vlm__tlayout_create(vlm__clip_get_config(clip), 0, 1, &L));
  assert_non_null(L);
  vlm__tlayout_free(L);
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define BOTH(fn) cmocka_unit_test_prestate(fn, &siglip), \
                 cmocka_unit_test_prestate(fn, &cnclip)
      BOTH(test_text_tower),
      BOTH(test_vision_tower),
      BOTH(test_logits_and_probabilities),
      BOTH(test_pixels_from_files),
      BOTH(test_exif_pipeline),
      BOTH(test_preprocess_config),
      BOTH(test_every_tensor_bound),
      BOTH(test_every_tensor_deleted),
      BOTH(test_every_tensor_perturbed),
      BOTH(test_f32_and_bf16_files),
      cmocka_unit_test(test_other_geometries),
      cmocka_unit_test(test_sparse_config_defaults),
      BOTH(test_sparse_config_loads),
      BOTH(test_texts_end_to_end),
      BOTH(test_accessors_and_errors),
#undef BOTH
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
