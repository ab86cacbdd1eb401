/* test_embed.c - the CLIP engine against the reference's outputs.
 *
 * Oracles: tests/fixtures/clip-tiny/reference.json (token ids and
 * embeddings computed by the reference implementation from the same F16
 * weights), naive double-precision kernels, SHA-256 test vectors, and the
 * two tensor layouts of one model checked against each other.  Corrupt
 * checkpoints are made by rewriting a copy of the fixture in a temp dir. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clip_int.h" /* white-box checks of the loaded model */
#include "util/util.h"
#include "util/files.h"
#include "kernels.h"
#include "model.h"
#include "safetensors.h"
#include "sha256.h"
#include "vlm_clip.h"
#include "vlm_cli.h"
#include "vlm_error.h"

#define FIX "tests/fixtures/clip-tiny"
#define HF_FILE FIX "/model.safetensors"
#define OC_FILE FIX "/open_clip_model.safetensors"

/* ---- fixture ------------------------------------------------------------- */

typedef struct {
  char *text;
  int32_t ids[80];
  int n_ids;
  float *embedding, *normalized;
} ref_text;

typedef struct {
  char file[64];
  float *pixels;
  float *embedding, *normalized;
} ref_image;

static struct {
  int n_texts, n_images, dim, side;
  ref_text texts[64];
  ref_image images[32];
  double logits[32][64];
  vlm_clip *hf, *oc; /* loaded once for the read-only tests */
} ref;

static float *json_floats(json_t *arr, int *n) {
  *n = (int)json_array_size(arr);
  float *v = malloc((size_t)*n * sizeof *v);
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

static int load_reference(void) {
  json_error_t err;
  json_t *root = json_load_file(FIX "/reference.json", 0, &err);
  if (!root) {
    fprintf(stderr, "reference.json: %s\n", err.text);
    return -1;
  }
  json_t *texts = json_object_get(root, "texts");
  json_t *images = json_object_get(root, "images");
  ref.n_texts = (int)json_array_size(texts);
  ref.n_images = (int)json_array_size(images);
  for (int i = 0; i < ref.n_texts; i++) {
    json_t *t = json_array_get(texts, (size_t)i);
    ref_text *r = &ref.texts[i];
    r->text = strdup(json_string_value(json_object_get(t, "text")));
    json_t *ids = json_object_get(t, "ids");
    r->n_ids = (int)json_array_size(ids);
    for (int k = 0; k < r->n_ids; k++)
      r->ids[k] = (int32_t)json_integer_value(json_array_get(ids, (size_t)k));
    r->embedding = json_floats(json_object_get(t, "embedding"), &ref.dim);
    r->normalized = json_floats(json_object_get(t, "normalized"), &ref.dim);
  }
  for (int i = 0; i < ref.n_images; i++) {
    json_t *im = json_array_get(images, (size_t)i);
    ref_image *r = &ref.images[i];
    snprintf(r->file, sizeof r->file, "%s",
             json_string_value(json_object_get(im, "file")));
    json_t *shape = json_object_get(im, "pixels_shape");
    ref.side = (int)json_integer_value(json_array_get(shape, 2));
    char path[256];
    snprintf(path, sizeof path, FIX "/%s.pixels.f32", r->file);
    r->pixels = read_pixels(path, (size_t)3 * ref.side * ref.side);
    if (!r->pixels) {
      fprintf(stderr, "%s: cannot read\n", path);
      return -1;
    }
    int d;
    r->embedding = json_floats(json_object_get(im, "embedding"), &d);
    r->normalized = json_floats(json_object_get(im, "normalized"), &d);
  }
  json_t *logits = json_object_get(root, "logits_per_image");
  for (int i = 0; i < ref.n_images; i++)
    for (int j = 0; j < ref.n_texts; j++)
      ref.logits[i][j] = json_number_value(
          json_array_get(json_array_get(logits, (size_t)i), (size_t)j));
  json_decref(root);
  return 0;
}

static int setup(void **state) {
  (void)state;
  if (load_reference())
    return -1;
  int rc = vlm_clip_load(FIX, NULL, &ref.hf);
  if (rc) {
    fprintf(stderr, "load %s: %s\n", FIX, vlm_errmsg());
    return -1;
  }
  rc = vlm__clip_load_weights(FIX, OC_FILE, NULL, &ref.oc);
  if (rc) {
    fprintf(stderr, "load %s: %s\n", OC_FILE, vlm_errmsg());
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  vlm_clip_free(ref.hf);
  vlm_clip_free(ref.oc);
  for (int i = 0; i < ref.n_texts; i++) {
    free(ref.texts[i].text);
    free(ref.texts[i].embedding);
    free(ref.texts[i].normalized);
  }
  for (int i = 0; i < ref.n_images; i++) {
    free(ref.images[i].pixels);
    free(ref.images[i].embedding);
    free(ref.images[i].normalized);
  }
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

/* Fails with both values printed unless got matches want within the
 * conformance bounds. */
static void expect_close(const char *what, const char *name, const float *got,
                         const float *want, int n, double min_cos,
                         double max_abs) {
  int at;
  double c = cosine(got, want, n), d = max_abs_diff(got, want, n, &at);
  if (!(c >= min_cos) || !(d <= max_abs)) {
    fail_msg("%s '%s': cosine %.9f (need >= %.6f), max |diff| %.3g at [%d] "
             "(got %.7g, reference %.7g; need <= %.1g)",
             what, name, c, min_cos, d, at, got[at], want[at], max_abs);
  }
}

static void rm_rf(const char *dir);
static char *make_tmpdir(void);

/* ---- conformance: towers from reference inputs ----------------------------- */

static void check_texts(vlm_clip *clip, const char *layout) {
  const int D = vlm_clip_dim(clip);
  assert_int_equal(D, ref.dim);
  float *raw = malloc((size_t)ref.n_texts * D * sizeof *raw);
  float *nrm = malloc((size_t)ref.n_texts * D * sizeof *nrm);
  const int32_t *ids[64];
  int n_ids[64];
  for (int i = 0; i < ref.n_texts; i++) {
    ids[i] = ref.texts[i].ids;
    n_ids[i] = ref.texts[i].n_ids;
  }
  assert_int_equal(vlm__clip_encode_tokens(clip, ids, n_ids, ref.n_texts,
                                           VLM_CLIP_RAW, raw), 0);
  assert_int_equal(
      vlm__clip_encode_tokens(clip, ids, n_ids, ref.n_texts, 0, nrm), 0);
  char what[64];
  for (int i = 0; i < ref.n_texts; i++) {
    snprintf(what, sizeof what, "%s text embedding", layout);
    expect_close(what, ref.texts[i].text, raw + (size_t)i * D,
                 ref.texts[i].embedding, D, 0.99999, 1e-4);
    snprintf(what, sizeof what, "%s text normalized", layout);
    expect_close(what, ref.texts[i].text, nrm + (size_t)i * D,
                 ref.texts[i].normalized, D, 0.99999, 1e-4);
  }
  free(raw);
  free(nrm);
}

static void check_images(vlm_clip *clip, const char *layout) {
  const int D = vlm_clip_dim(clip), S = vlm_clip_image_size(clip);
  assert_int_equal(S, ref.side);
  size_t per = (size_t)3 * S * S;
  float *pixels = malloc(ref.n_images * per * sizeof *pixels);
  for (int i = 0; i < ref.n_images; i++)
    memcpy(pixels + i * per, ref.images[i].pixels, per * sizeof *pixels);
  float *raw = malloc((size_t)ref.n_images * D * sizeof *raw);
  float *nrm = malloc((size_t)ref.n_images * D * sizeof *nrm);
  assert_int_equal(
      vlm_clip_encode_pixels(clip, pixels, ref.n_images, VLM_CLIP_RAW, raw),
      0);
  assert_int_equal(vlm_clip_encode_pixels(clip, pixels, ref.n_images, 0, nrm),
                   0);
  char what[64];
  for (int i = 0; i < ref.n_images; i++) {
    snprintf(what, sizeof what, "%s image embedding", layout);
    expect_close(what, ref.images[i].file, raw + (size_t)i * D,
                 ref.images[i].embedding, D, 0.99999, 1e-4);
    snprintf(what, sizeof what, "%s image normalized", layout);
    expect_close(what, ref.images[i].file, nrm + (size_t)i * D,
                 ref.images[i].normalized, D, 0.99999, 1e-4);
  }
  free(pixels);
  free(raw);
  free(nrm);
}

static void test_text_tower_hf(void **state) {
  (void)state;
  check_texts(ref.hf, "HF");
}

static void test_text_tower_original(void **state) {
  (void)state;
  check_texts(ref.oc, "open_clip");
}

static void test_vision_tower_hf(void **state) {
  (void)state;
  check_images(ref.hf, "HF");
}

static void test_vision_tower_original(void **state) {
  (void)state;
  check_images(ref.oc, "open_clip");
}

static void test_logits_per_image(void **state) {
  (void)state;
  vlm_clip *clip = ref.hf;
  const int D = vlm_clip_dim(clip);
  const vlm__clip_config *cfg = vlm__clip_get_config(clip);
  float *img = malloc((size_t)ref.n_images * D * sizeof *img);
  float *txt = malloc((size_t)ref.n_texts * D * sizeof *txt);
  const int32_t *ids[64];
  int n_ids[64];
  for (int i = 0; i < ref.n_texts; i++) {
    ids[i] = ref.texts[i].ids;
    n_ids[i] = ref.texts[i].n_ids;
  }
  assert_int_equal(
      vlm__clip_encode_tokens(clip, ids, n_ids, ref.n_texts, 0, txt), 0);
  for (int i = 0; i < ref.n_images; i++)
    assert_int_equal(
        vlm_clip_encode_pixels(clip, ref.images[i].pixels, 1, 0,
                               img + (size_t)i * D),
        0);
  double scale = exp((double)cfg->logit_scale);
  for (int i = 0; i < ref.n_images; i++)
    for (int j = 0; j < ref.n_texts; j++) {
      double dot = 0;
      for (int d = 0; d < D; d++)
        dot += (double)img[(size_t)i * D + d] * txt[(size_t)j * D + d];
      double got = scale * dot, want = ref.logits[i][j];
      if (fabs(got - want) > 1e-3)
        fail_msg("logits_per_image[%d][%d]: got %.6f, reference %.6f", i, j,
                 got, want);
    }
  free(img);
  free(txt);
}

/* One call over many inputs equals one call per input. */
static void test_batch_equals_single(void **state) {
  (void)state;
  vlm_clip *clip = ref.hf;
  const int D = vlm_clip_dim(clip);
  const int32_t *ids[64];
  int n_ids[64];
  for (int i = 0; i < ref.n_texts; i++) {
    ids[i] = ref.texts[i].ids;
    n_ids[i] = ref.texts[i].n_ids;
  }
  float *batch = malloc((size_t)ref.n_texts * D * sizeof *batch);
  float one[512];
  assert_int_equal(
      vlm__clip_encode_tokens(clip, ids, n_ids, ref.n_texts, 0, batch), 0);
  for (int i = 0; i < ref.n_texts; i++) {
    assert_int_equal(vlm__clip_encode_tokens(clip, &ids[i], &n_ids[i], 1, 0,
                                             one), 0);
    expect_close("batched vs single text", ref.texts[i].text, one,
                 batch + (size_t)i * D, D, 0.999999, 1e-5);
  }
  free(batch);
}

/* Batches bigger than one pass (about 1024 rows) are split and still
 * give every input its own vector. */
static void test_large_batches(void **state) {
  (void)state;
  vlm_clip *clip = ref.hf;
  const int D = vlm_clip_dim(clip), N = 150;
  const size_t per = (size_t)3 * ref.side * ref.side;
  float *pixels = malloc(N * per * sizeof *pixels);
  float *out = malloc((size_t)N * D * sizeof *out);
  for (int i = 0; i < N; i++)
    memcpy(pixels + i * per, ref.images[i % ref.n_images].pixels,
           per * sizeof *pixels);
  assert_int_equal(vlm_clip_encode_pixels(clip, pixels, N, 0, out), 0);
  for (int i = 0; i < N; i++)
    expect_close("image in a big batch", ref.images[i % ref.n_images].file,
                 out + (size_t)i * D, ref.images[i % ref.n_images].normalized,
                 D, 0.99999, 1e-4);
  const int32_t *ids[600];
  int n_ids[600];
  float *txt = malloc(600 * (size_t)D * sizeof *txt);
  for (int i = 0; i < 600; i++) {
    ids[i] = ref.texts[i % ref.n_texts].ids;
    n_ids[i] = ref.texts[i % ref.n_texts].n_ids;
  }
  assert_int_equal(vlm__clip_encode_tokens(clip, ids, n_ids, 600, 0, txt), 0);
  for (int i = 0; i < 600; i++)
    expect_close("text in a big batch", ref.texts[i % ref.n_texts].text,
                 txt + (size_t)i * D, ref.texts[i % ref.n_texts].normalized, D,
                 0.99999, 1e-4);
  free(txt);
  free(pixels);
  free(out);
}

/* Positions after the end token do not change the pooled vector
 * (causal attention), and a sequence is pooled at its first end token. */
static void test_text_pools_at_end_token(void **state) {
  (void)state;
  vlm_clip *clip = ref.hf;
  const int D = vlm_clip_dim(clip);
  const ref_text *t = &ref.texts[0];
  int32_t padded[77];
  memcpy(padded, t->ids, (size_t)t->n_ids * sizeof *padded);
  for (int i = t->n_ids; i < 77; i++)
    padded[i] = i % 2 ? 0 : 320; /* padding and junk after the end */
  const int32_t *p[2] = {t->ids, padded};
  int n[2] = {t->n_ids, 77};
  float out[2 * 512];
  assert_int_equal(vlm__clip_encode_tokens(clip, p, n, 2, VLM_CLIP_RAW, out),
                   0);
  expect_close("padded text", t->text, out + D, t->embedding, D, 0.99999,
               1e-4);
  /* Out of range ids and lengths are errors, not crashes. */
  int32_t bad[3] = {49406, 49408, 49407};
  const int32_t *pb = bad;
  int nb = 3;
  assert_int_equal(vlm__clip_encode_tokens(clip, &pb, &nb, 1, 0, out),
                   VLM_EINVAL);
  nb = 0;
  assert_int_equal(vlm__clip_encode_tokens(clip, &pb, &nb, 1, 0, out),
                   VLM_EINVAL);
  nb = 78;
  assert_int_equal(vlm__clip_encode_tokens(clip, &pb, &nb, 1, 0, out),
                   VLM_EINVAL);
}

/* The original layout's slices and transposes give exactly the tensors
 * of the Hugging Face layout (the fixture stores the same F16 weights). */
static void test_layouts_give_same_tensors(void **state) {
  (void)state;
  const vlm__clip_config *a = vlm__clip_get_config(ref.hf);
  const vlm__clip_config *b = vlm__clip_get_config(ref.oc);
  assert_memory_equal(a, b, sizeof *a);
  vlm__safetensors *st;
  assert_int_equal(vlm__st_open(HF_FILE, &st), 0);
  int checked = 0;
  float *want = NULL;
  for (int i = 0; i < st->n_tensors; i++) {
    const vlm__st_tensor *t = &st->tensors[i];
    int64_t na = -1, nb = -1;
    const float *x = vlm__clip_tensor(ref.hf, t->name, &na);
    const float *y = vlm__clip_tensor(ref.oc, t->name, &nb);
    if (!x || !y)
      fail_msg("tensor %s: HF %p, open_clip %p", t->name, (const void *)x,
               (const void *)y);
    assert_int_equal(na, t->numel);
    assert_int_equal(na, nb);
    /* Both equal the file's F16 values, widened. */
    assert_int_equal(t->dtype, VLM__DT_F16);
    want = realloc(want, (size_t)na * sizeof *want);
    vlm__f16_to_f32(want, t->data, (size_t)na);
    for (int64_t k = 0; k < na; k++)
      if (x[k] != want[k] || y[k] != want[k])
        fail_msg("tensor %s[%lld]: HF %.8g, open_clip %.8g, file %.8g",
                 t->name, (long long)k, x[k], y[k], want[k]);
    checked++;
  }
  free(want);
  vlm__st_close(st);
  /* vision: 3 embeddings, pre-LN (2), 16 per block, post-LN (2),
   * projection; text: 2 embeddings, 16 per block, final LN (2), projection;
   * logit_scale. */
  assert_int_equal(checked, (3 + 2 + 2 * 16 + 2 + 1) + (2 + 2 * 16 + 2 + 1) + 1);
  assert_null(vlm__clip_tensor(ref.hf, "no.such.tensor", NULL));
  assert_string_equal(vlm_clip_model_id(ref.hf), vlm_clip_model_id(ref.oc));
}

static void test_config_and_accessors(void **state) {
  (void)state;
  const vlm__clip_config *c = vlm__clip_get_config(ref.hf);
  assert_int_equal(c->vision_width, 128);
  assert_int_equal(c->vision_layers, 2);
  assert_int_equal(c->vision_heads, 2);
  assert_int_equal(c->vision_mlp, 512);
  assert_int_equal(c->image_size, 32);
  assert_int_equal(c->patch_size, 8);
  assert_int_equal(c->text_width, 64);
  assert_int_equal(c->text_heads, 4);
  assert_int_equal(c->text_layers, 2);
  assert_int_equal(c->context_length, 77);
  assert_int_equal(c->vocab_size, 49408);
  assert_int_equal(c->projection_dim, 48);
  assert_int_equal(c->text_act, VLM__ACT_QUICK_GELU);
  assert_int_equal(c->vision_act, VLM__ACT_QUICK_GELU);
  assert_true(fabsf(c->mean[0] - 0.48145466f) < 1e-7f);
  assert_true(fabsf(c->std[2] - 0.27577711f) < 1e-7f);
  assert_int_equal(vlm_clip_dim(ref.hf), 48);
  assert_int_equal(vlm_clip_image_size(ref.hf), 32);
  assert_int_equal(vlm_clip_context_length(ref.hf), 77);
  assert_int_equal(vlm_clip_dim(NULL), 0);
  vlm_clip_free(NULL);
}

/* ---- full path: text and image files through the public API ------------ */

static void test_tokenize_matches_reference(void **state) {
  (void)state;
  int32_t ids[80];
  for (int i = 0; i < ref.n_texts; i++) {
    int n = -1;
    int rc = vlm_clip_tokenize(ref.hf, ref.texts[i].text, ids, 80, &n);
    if (rc)
      fail_msg("tokenize '%s': %s", ref.texts[i].text, vlm_errmsg());
    if (n != ref.texts[i].n_ids ||
        memcmp(ids, ref.texts[i].ids, (size_t)n * sizeof *ids))
      fail_msg("tokenize '%s': %d ids (first %d), reference %d (first %d)",
               ref.texts[i].text, n, ids[0], ref.texts[i].n_ids,
               ref.texts[i].ids[0]);
  }
  int n = -1;
  assert_int_equal(vlm_clip_tokenize(ref.hf, "bad \xff utf8", ids, 80, &n),
                   VLM_EFORMAT);
}

static void test_text_full_path(void **state) {
  (void)state;
  for (int l = 0; l < 2; l++) {
    vlm_clip *clip = l ? ref.oc : ref.hf;
    const int D = vlm_clip_dim(clip);
    const char *texts[64];
    for (int i = 0; i < ref.n_texts; i++)
      texts[i] = ref.texts[i].text;
    float *raw = malloc((size_t)ref.n_texts * D * sizeof *raw);
    float *nrm = malloc((size_t)ref.n_texts * D * sizeof *nrm);
    assert_int_equal(
        vlm_clip_encode_texts(clip, texts, ref.n_texts, VLM_CLIP_RAW, raw), 0);
    assert_int_equal(vlm_clip_encode_texts(clip, texts, ref.n_texts, 0, nrm),
                     0);
    for (int i = 0; i < ref.n_texts; i++) {
      expect_close(l ? "open_clip text -> embedding" : "HF text -> embedding",
                   texts[i], raw + (size_t)i * D, ref.texts[i].embedding, D,
                   0.99999, 1e-4);
      expect_close("text -> normalized", texts[i], nrm + (size_t)i * D,
                   ref.texts[i].normalized, D, 0.99999, 1e-4);
    }
    /* Invalid UTF-8 in one text fails the call, naming the problem. */
    const char *bad[2] = {"fine", "bad \xc3\x28"};
    assert_int_equal(vlm_clip_encode_texts(clip, bad, 2, 0, nrm), VLM_EFORMAT);
    assert_non_null(strstr(vlm_errmsg(), "text 1"));
    free(raw);
    free(nrm);
  }
}

static void test_image_full_path(void **state) {
  (void)state;
  const int D = ref.dim, S = ref.side;
  const size_t per = (size_t)3 * S * S;
  float *px = malloc(per * sizeof *px);
  const char *paths[32];
  char path_buf[32][256];
  const void *bufs[32];
  size_t lens[32];
  for (int i = 0; i < ref.n_images; i++) {
    snprintf(path_buf[i], sizeof path_buf[i], FIX "/%s", ref.images[i].file);
    paths[i] = path_buf[i];
    int rc = vlm_clip_preprocess_file(ref.hf, paths[i], px);
    if (rc)
      fail_msg("%s: %s", paths[i], vlm_errmsg());
    int at;
    double d = max_abs_diff(px, ref.images[i].pixels, (int)per, &at);
    if (d > 0.02)
      fail_msg("%s: preprocessed value [%d] = %.6f, reference %.6f", paths[i],
               at, px[at], ref.images[i].pixels[at]);
    bufs[i] = vlm_test_slurp(paths[i], &lens[i]);
  }
  for (int l = 0; l < 2; l++) {
    vlm_clip *clip = l ? ref.oc : ref.hf;
    float *a = malloc((size_t)ref.n_images * D * sizeof *a);
    float *b = malloc((size_t)ref.n_images * D * sizeof *b);
    assert_int_equal(vlm_clip_encode_images(clip, paths, ref.n_images, 0, a),
                     0);
    assert_int_equal(vlm_clip_encode_image_buffers(clip, bufs, lens,
                                                   ref.n_images, 0, b), 0);
    assert_memory_equal(a, b, (size_t)ref.n_images * D * sizeof *a);
    for (int i = 0; i < ref.n_images; i++)
      expect_close(l ? "open_clip image file -> embedding"
                     : "HF image file -> embedding",
                   paths[i], a + (size_t)i * D, ref.images[i].normalized, D,
                   0.9999, 1.0);
    free(a);
    free(b);
  }
  for (int i = 0; i < ref.n_images; i++)
    free((void *)bufs[i]);
  free(px);
}

static void test_image_errors_name_the_input(void **state) {
  (void)state;
  const int D = ref.dim;
  char *dir = make_tmpdir();
  char trunc[512], text[512], missing[512];
  snprintf(trunc, sizeof trunc, "%s/trunc.jpg", dir);
  snprintf(text, sizeof text, "%s/notes.png", dir);
  snprintf(missing, sizeof missing, "%s/missing.jpg", dir);
  size_t len;
  uint8_t *jpg = vlm_test_slurp(FIX "/photo_rgb.jpg", &len);
  vlm_test_spit(trunc, jpg, len / 3);
  vlm_test_spit(text, "hello, world\n", 13);
  const char *paths[3] = {FIX "/rgb.png", NULL, FIX "/gray.jpg"};
  float out[3 * 512];
  const char *bad[3] = {trunc, text, missing};
  for (int k = 0; k < 3; k++) {
    paths[1] = bad[k];
    for (int i = 0; i < 3 * D; i++)
      out[i] = 7.0f;
    int rc = vlm_clip_encode_images(ref.hf, paths, 3, 0, out);
    if (rc == 0 || !strstr(vlm_errmsg(), bad[k]))
      fail_msg("encode with %s: %s '%s'", bad[k], vlm_errname(rc),
               vlm_errmsg());
    for (int i = 0; i < 3 * D; i++)
      assert_true(out[i] == 7.0f); /* nothing written */
  }
  const void *bufs[2] = {jpg, jpg};
  size_t lens[2] = {len, 10};
  int rc = vlm_clip_encode_image_buffers(ref.hf, bufs, lens, 2, 0, out);
  if (rc == 0 || !strstr(vlm_errmsg(), "image 1"))
    fail_msg("buffer 1 of 10 bytes: %s '%s'", vlm_errname(rc), vlm_errmsg());
  free(jpg);
  rm_rf(dir);
  free(dir);
}

/* ---- the CLI commands ---------------------------------------------------- */

/* Run a command in process with stdout captured; returns what it printed. */
static char *capture(int (*fn)(int, char **), int argc, char **argv,
                     int *status) {
  char path[] = "/tmp/vlm-embed-out-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  fflush(stdout);
  int saved = dup(1);
  dup2(fd, 1);
  *status = fn(argc, argv);
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  close(fd);
  size_t len;
  uint8_t *out = vlm_test_slurp(path, &len);
  unlink(path);
  out = realloc(out, len + 1);
  out[len] = '\0';
  return (char *)out;
}

static void test_cli_embed(void **state) {
  (void)state;
  const int D = ref.dim;
  char img0[256], img1[256];
  snprintf(img0, sizeof img0, FIX "/%s", ref.images[0].file);
  snprintf(img1, sizeof img1, FIX "/%s", ref.images[4].file);
  for (int raw = 0; raw <= 1; raw++) {
    char *argv[] = {"embed", "--model", FIX, "--image", img0, "--text",
                    ref.texts[0].text, "--image", img1, "--text",
                    ref.texts[6].text, "--threads", "2",
                    raw ? "--raw" : NULL, NULL};
    int status;
    char *out = capture(cmd_embed, raw ? 14 : 13, argv, &status);
    assert_int_equal(status, VLM_EXIT_OK);
    /* texts first in the order given, then images */
    const char *kinds[4] = {"text", "text", "image", "image"};
    const char *inputs[4] = {ref.texts[0].text, ref.texts[6].text, img0, img1};
    const float *want[4] = {
        raw ? ref.texts[0].embedding : ref.texts[0].normalized,
        raw ? ref.texts[6].embedding : ref.texts[6].normalized,
        raw ? ref.images[0].embedding : ref.images[0].normalized,
        raw ? ref.images[4].embedding : ref.images[4].normalized};
    char *line = out;
    for (int i = 0; i < 4; i++) {
      char *nl = strchr(line, '\n');
      assert_non_null(nl);
      *nl = '\0';
      json_error_t err;
      json_t *o = json_loads(line, 0, &err);
      if (!o)
        fail_msg("line %d is not JSON (%s): %s", i, err.text, line);
      assert_int_equal(json_object_size(o), 3);
      assert_string_equal(json_string_value(json_object_get(o, "kind")),
                          kinds[i]);
      assert_string_equal(json_string_value(json_object_get(o, "input")),
                          inputs[i]);
      int n;
      float *v = json_floats(json_object_get(o, "embedding"), &n);
      assert_int_equal(n, D);
      expect_close("vlmdb embed", inputs[i], v, want[i], D,
                   i < 2 ? 0.99999 : 0.9999, i < 2 ? 1e-4 : 1.0);
      free(v);
      json_decref(o);
      line = nl + 1;
    }
    assert_string_equal(line, "");
    free(out);
  }
  /* usage errors: 2; runtime errors: 1; --help: 0 with an example */
  int status;
  char *a1[] = {"embed", "--model", FIX, NULL};
  free(capture(cmd_embed, 3, a1, &status));
  assert_int_equal(status, VLM_EXIT_USAGE);
  char *a2[] = {"embed", "--model", FIX, "stray", NULL};
  free(capture(cmd_embed, 4, a2, &status));
  assert_int_equal(status, VLM_EXIT_USAGE);
  char *a3[] = {"embed", "--threads", "zero", "--text", "x", NULL};
  free(capture(cmd_embed, 5, a3, &status));
  assert_int_equal(status, VLM_EXIT_USAGE);
  char *a4[] = {"embed", "--model", "/nonexistent", "--text", "x", NULL};
  free(capture(cmd_embed, 5, a4, &status));
  assert_int_equal(status, VLM_EXIT_RUNTIME);
  char *a5[] = {"embed", "--model", FIX, "--image", "/nonexistent.png", NULL};
  char *out = capture(cmd_embed, 5, a5, &status);
  assert_int_equal(status, VLM_EXIT_RUNTIME);
  assert_string_equal(out, ""); /* nothing half-printed */
  free(out);
  char *a6[] = {"embed", "--help", NULL};
  out = capture(cmd_embed, 2, a6, &status);
  assert_int_equal(status, VLM_EXIT_OK);
  assert_non_null(strstr(out, "example"));
  free(out);
}

static void test_cli_tokenize(void **state) {
  (void)state;
  char *argv[] = {"tokenize", "--model", FIX, ref.texts[0].text,
                  ref.texts[8].text, ref.texts[2].text, NULL};
  int status;
  char *out = capture(cmd_tokenize, 6, argv, &status);
  assert_int_equal(status, VLM_EXIT_OK);
  const int which[3] = {0, 8, 2};
  char *line = out;
  for (int i = 0; i < 3; i++) {
    char *nl = strchr(line, '\n');
    assert_non_null(nl);
    *nl = '\0';
    json_t *arr = json_loads(line, 0, NULL);
    assert_true(json_is_array(arr));
    const ref_text *t = &ref.texts[which[i]];
    assert_int_equal(json_array_size(arr), t->n_ids);
    for (int k = 0; k < t->n_ids; k++)
      assert_int_equal(json_integer_value(json_array_get(arr, (size_t)k)),
                       t->ids[k]);
    json_decref(arr);
    line = nl + 1;
  }
  assert_string_equal(line, "");
  free(out);
  char *a1[] = {"tokenize", "--model", FIX, NULL};
  free(capture(cmd_tokenize, 3, a1, &status));
  assert_int_equal(status, VLM_EXIT_USAGE);
  char *a2[] = {"tokenize", "--help", NULL};
  out = capture(cmd_tokenize, 2, a2, &status);
  assert_int_equal(status, VLM_EXIT_OK);
  assert_non_null(strstr(out, "example"));
  free(out);
}

/* ---- temp dirs and checkpoint surgery ----------------------------------- */

static void rm_rf(const char *dir) { vlm_test_rm_rf(dir); }

static char *make_tmpdir(void) {
  char *t = strdup("/tmp/vlm-embed-XXXXXX");
  assert_non_null(mkdtemp(t));
  return t;
}

static void link_into(const char *dir, const char *name) {
  char src[512], dst[512], cwd[256];
  assert_non_null(getcwd(cwd, sizeof cwd));
  snprintf(src, sizeof src, "%s/" FIX "/%s", cwd, name);
  snprintf(dst, sizeof dst, "%s/%s", dir, name);
  assert_int_equal(symlink(src, dst), 0);
}

/* A dir with config, tokenizer and preprocessor linked from the fixture. */
static char *model_dir(int with_config) {
  char *dir = make_tmpdir();
  if (with_config)
    link_into(dir, "config.json");
  link_into(dir, "preprocessor_config.json");
  link_into(dir, "vocab.json");
  link_into(dir, "merges.txt");
  return dir;
}

/* Load dir/name and expect failure with code and every needle in the
 * message. */
static void expect_load_error(const char *dir, const char *name, int code,
                              const char *needle1, const char *needle2) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  vlm_clip *clip = NULL;
  int rc = vlm__clip_load_weights(dir, path, NULL, &clip);
  if (rc != code)
    fail_msg("%s: load returned %s (%s), expected %s", path, vlm_errname(rc),
             vlm_errmsg(), vlm_errname(code));
  assert_null(clip);
  if (needle1 && !strstr(vlm_errmsg(), needle1))
    fail_msg("error '%s' does not name '%s'", vlm_errmsg(), needle1);
  if (needle2 && !strstr(vlm_errmsg(), needle2))
    fail_msg("error '%s' does not name '%s'", vlm_errmsg(), needle2);
}

/* Deleting any single tensor from the header makes the load fail naming
 * it, in both layouts. */
static void delete_each(const char *fixture, const char *name) {
  char *dir = model_dir(1);
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  vlm_test_ckpt c;
  vlm_test_ckpt_read(fixture, &c);
  const char *key;
  json_t *v;
  void *tmp;
  int n = 0;
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
    if (rc == 0 || !strstr(vlm_errmsg(), victim) || !strstr(vlm_errmsg(), path))
      fail_msg("%s without %s: load returned %s: '%s'", name, victim,
               vlm_errname(rc), vlm_errmsg());
    assert_null(clip);
    json_object_set_new(c.header, victim, saved);
    n++;
  }
  assert_true(n > 50);
  json_decref(keys);
  vlm_test_ckpt_free(&c);
  rm_rf(dir);
  free(dir);
}

/* The exhaustive checkpoint edits are single-threaded and slow under
 * ThreadSanitizer (make tsan sets VLM_TSAN); the other runs cover them. */
static int skip_under_tsan(void) { return getenv("VLM_TSAN") != NULL; }

static void test_missing_tensor_hf(void **state) {
  (void)state;
  if (skip_under_tsan())
    skip();
  delete_each(HF_FILE, "model.safetensors");
}

static void test_missing_tensor_original(void **state) {
  (void)state;
  if (skip_under_tsan())
    skip();
  delete_each(OC_FILE, "open_clip_model.safetensors");
}

/* Changing any single tensor changes some output: nothing is loaded and
 * then ignored.  Each tensor's values are negated in a copy of the file. */
static void test_every_tensor_matters(void **state) {
  (void)state;
  if (skip_under_tsan())
    skip();
  char *dir = model_dir(1);
  char path[512];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  vlm_test_ckpt c;
  vlm_test_ckpt_read(HF_FILE, &c);
  const int D = ref.dim;
  /* Inputs: every reference text and one image. */
  const int32_t *ids[64];
  int n_ids[64];
  for (int i = 0; i < ref.n_texts; i++) {
    ids[i] = ref.texts[i].ids;
    n_ids[i] = ref.texts[i].n_ids;
  }
  float *txt = malloc((size_t)ref.n_texts * D * sizeof *txt);
  float img[512];
  const char *key;
  json_t *v;
  int n = 0;
  json_object_foreach(c.header, key, v) {
    if (!strcmp(key, "__metadata__"))
      continue;
    json_t *off = json_object_get(v, "data_offsets");
    size_t b = (size_t)json_integer_value(json_array_get(off, 0));
    size_t e = (size_t)json_integer_value(json_array_get(off, 1));
    uint8_t *orig = malloc(e - b);
    memcpy(orig, c.data + b, e - b);
    /* Flip the sign of every F16 value; for logit_scale that changes the
     * config, which the towers do not use, so check it directly. */
    for (size_t k = b + 1; k < e; k += 2)
      c.data[k] ^= 0x80;
    vlm_test_ckpt_write(&c, path);
    vlm_clip *clip = NULL;
    if (vlm__clip_load_weights(dir, path, NULL, &clip))
      fail_msg("%s: %s", key, vlm_errmsg());
    if (!strcmp(key, "logit_scale")) {
      float want = -vlm__clip_get_config(ref.hf)->logit_scale;
      assert_true(vlm__clip_get_config(clip)->logit_scale == want);
    } else if (strstr(key, "k_proj.bias")) {
      /* A key bias adds q·b to every score of a query alike, which softmax
       * cancels: no output can see it (test_layouts_give_same_tensors
       * checks its values).  The model id must still change. */
      assert_string_not_equal(vlm_clip_model_id(clip),
                              vlm_clip_model_id(ref.hf));
    } else {
      assert_int_equal(vlm__clip_encode_tokens(clip, ids, n_ids, ref.n_texts,
                                               VLM_CLIP_RAW, txt), 0);
      assert_int_equal(vlm_clip_encode_pixels(clip, ref.images[0].pixels, 1,
                                              VLM_CLIP_RAW, img), 0);
      double worst = 0;
      int at;
      for (int i = 0; i < ref.n_texts; i++) {
        double d = max_abs_diff(txt + (size_t)i * D, ref.texts[i].embedding,
                                D, &at);
        worst = d > worst ? d : worst;
      }
      double d = max_abs_diff(img, ref.images[0].embedding, D, &at);
      worst = d > worst ? d : worst;
      if (worst < 1e-3)
        fail_msg("negating %s changed no output (max diff %.3g)", key, worst);
      /* The model id sees the change too. */
      assert_string_not_equal(vlm_clip_model_id(clip),
                              vlm_clip_model_id(ref.hf));
    }
    vlm_clip_free(clip);
    memcpy(c.data + b, orig, e - b);
    free(orig);
    n++;
  }
  assert_true(n > 50);
  free(txt);
  vlm_test_ckpt_free(&c);
  rm_rf(dir);
  free(dir);
}

/* Header edits that must be refused with a clear error. */
typedef void (*corrupt_fn)(vlm_test_ckpt *c);

static json_t *entry(vlm_test_ckpt *c, const char *name) {
  json_t *e = json_object_get(c->header, name);
  assert_non_null(e);
  return e;
}

static void c_unknown_dtype(vlm_test_ckpt *c) {
  json_object_set_new(entry(c, "text_model.final_layer_norm.bias"), "dtype",
                      json_string("F17"));
}
static void c_int_dtype(vlm_test_ckpt *c) {
  json_t *e = entry(c, "text_model.final_layer_norm.bias");
  json_object_set_new(e, "dtype", json_string("I16"));
}
static void c_offsets_past_end(vlm_test_ckpt *c) {
  json_t *e = entry(c, "visual_projection.weight");
  json_t *off = json_object_get(e, "data_offsets");
  json_int_t end = json_integer_value(json_array_get(off, 1));
  json_array_set_new(off, 0, json_integer(end + 1000000));
  json_array_set_new(off, 1, json_integer(end + 1000000 + 48 * 128 * 2));
}
static void c_offsets_reversed(vlm_test_ckpt *c) {
  json_t *off = json_object_get(entry(c, "visual_projection.weight"),
                                "data_offsets");
  json_t *a = json_incref(json_array_get(off, 0));
  json_array_set(off, 0, json_array_get(off, 1));
  json_array_set_new(off, 1, a);
}
static void c_short_data(vlm_test_ckpt *c) {
  json_t *off = json_object_get(entry(c, "visual_projection.weight"),
                                "data_offsets");
  json_int_t end = json_integer_value(json_array_get(off, 1));
  json_array_set_new(off, 1, json_integer(end - 2));
}
static void c_overlap(vlm_test_ckpt *c) {
  /* Point k_proj of layer 0 at q_proj's bytes. */
  json_t *q = json_object_get(
      entry(c, "vision_model.encoder.layers.0.self_attn.q_proj.weight"),
      "data_offsets");
  json_object_set_new(
      entry(c, "vision_model.encoder.layers.0.self_attn.k_proj.weight"),
      "data_offsets", json_deep_copy(q));
}
static void c_shape_mismatch(vlm_test_ckpt *c) {
  /* Consistent bytes, but not the shape config.json describes. */
  json_t *shape = json_object_get(entry(c, "visual_projection.weight"),
                                  "shape");
  json_array_set_new(shape, 0, json_integer(128));
  json_array_set_new(shape, 1, json_integer(48));
}
static void c_negative_dim(vlm_test_ckpt *c) {
  json_t *shape = json_object_get(entry(c, "visual_projection.weight"),
                                  "shape");
  json_array_set_new(shape, 0, json_integer(-48));
}
static void c_shape_not_array(vlm_test_ckpt *c) {
  json_object_set_new(entry(c, "visual_projection.weight"), "shape",
                      json_string("48x128"));
}
static void c_entry_not_object(vlm_test_ckpt *c) {
  json_object_set_new(c->header, "visual_projection.weight", json_integer(3));
}

static void test_corrupt_header_fields(void **state) {
  (void)state;
  static const struct {
    const char *what;
    corrupt_fn fn;
    int code;
    const char *tensor;
  } cases[] = {
      {"unknown dtype", c_unknown_dtype, VLM_EUNSUPPORTED,
       "text_model.final_layer_norm.bias"},
      {"integer dtype", c_int_dtype, VLM_EUNSUPPORTED,
       "text_model.final_layer_norm.bias"},
      {"offsets past end", c_offsets_past_end, VLM_ECORRUPT,
       "visual_projection.weight"},
      {"offsets reversed", c_offsets_reversed, VLM_ECORRUPT,
       "visual_projection.weight"},
      {"short data", c_short_data, VLM_ECORRUPT, "visual_projection.weight"},
      {"overlap", c_overlap, VLM_ECORRUPT,
       "vision_model.encoder.layers.0.self_attn"},
      {"shape mismatch", c_shape_mismatch, VLM_EMISMATCH,
       "visual_projection.weight"},
      {"negative dim", c_negative_dim, VLM_EFORMAT,
       "visual_projection.weight"},
      {"shape not array", c_shape_not_array, VLM_EFORMAT,
       "visual_projection.weight"},
      {"entry not object", c_entry_not_object, VLM_EFORMAT,
       "visual_projection.weight"},
  };
  char *dir = model_dir(1);
  char path[512];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    vlm_test_ckpt c;
    vlm_test_ckpt_read(HF_FILE, &c);
    cases[i].fn(&c);
    vlm_test_ckpt_write(&c, path);
    vlm_test_ckpt_free(&c);
    vlm_clip *clip = NULL;
    int rc = vlm__clip_load_weights(dir, path, NULL, &clip);
    if (rc != cases[i].code || !strstr(vlm_errmsg(), cases[i].tensor) ||
        !strstr(vlm_errmsg(), path))
      fail_msg("%s: got %s '%s', expected %s naming %s and the file",
               cases[i].what, vlm_errname(rc), vlm_errmsg(),
               vlm_errname(cases[i].code), cases[i].tensor);
    assert_null(clip);
  }
  rm_rf(dir);
  free(dir);
}

/* Byte-level damage: header length, truncation, bad JSON. */
static void test_corrupt_file_bytes(void **state) {
  (void)state;
  char *dir = model_dir(1);
  char path[512];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  size_t len;
  uint8_t *orig = vlm_test_slurp(HF_FILE, &len);
  uint8_t *b = malloc(len);

  /* header length past the end of the file */
  memcpy(b, orig, len);
  b[5] = 0x10;
  vlm_test_spit(path, b, len);
  expect_load_error(dir, "model.safetensors", VLM_ECORRUPT, path,
                    "header length");
  /* file shorter than the length field */
  vlm_test_spit(path, orig, 5);
  expect_load_error(dir, "model.safetensors", VLM_ECORRUPT, path, "short");
  /* empty file */
  vlm_test_spit(path, orig, 0);
  expect_load_error(dir, "model.safetensors", VLM_ECORRUPT, path, NULL);
  /* truncated data: the last tensor runs past the end */
  vlm_test_spit(path, orig, len - 100);
  expect_load_error(dir, "model.safetensors", VLM_ECORRUPT, path,
                    "visual_projection.weight");
  /* header cut inside the JSON */
  memcpy(b, orig, len);
  b[8 + 100] = '\0';
  vlm_test_spit(path, b, len);
  expect_load_error(dir, "model.safetensors", VLM_EFORMAT, path, "JSON");
  /* header that is JSON but not an object */
  {
    const char *h = "[1, 2, 3]";
    uint8_t small[64] = {(uint8_t)strlen(h)};
    memcpy(small + 8, h, strlen(h));
    vlm_test_spit(path, small, 8 + strlen(h));
    expect_load_error(dir, "model.safetensors", VLM_EFORMAT, path, "object");
  }
  /* a valid safetensors file that is not a CLIP */
  {
    const char *h = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],"
                    "\"data_offsets\":[0,4]}}";
    uint8_t small[128] = {(uint8_t)strlen(h)};
    memcpy(small + 8, h, strlen(h));
    vlm_test_spit(path, small, 8 + strlen(h) + 4);
    expect_load_error(dir, "model.safetensors", VLM_EFORMAT, path, "CLIP");
  }
  /* no file at all */
  unlink(path);
  expect_load_error(dir, "model.safetensors", VLM_ENOTFOUND, path, NULL);
  vlm_clip *clip = NULL;
  assert_int_equal(vlm_clip_load(dir, NULL, &clip), VLM_ENOTFOUND);
  assert_null(clip);
  assert_int_equal(vlm_clip_load("/nonexistent/model", NULL, &clip),
                   VLM_ENOTFOUND);
  free(orig);
  free(b);
  rm_rf(dir);
  free(dir);
}

static void test_bad_config(void **state) {
  (void)state;
  char *dir = model_dir(0);
  link_into(dir, "model.safetensors");
  char path[512];
  /* The HF layout without config.json */
  expect_load_error(dir, "model.safetensors", VLM_ENOTFOUND, "config.json",
                    NULL);
  /* config.json that is not JSON */
  snprintf(path, sizeof path, "%s/config.json", dir);
  vlm_test_spit(path, "{\"text_config\": ", 16);
  expect_load_error(dir, "model.safetensors", VLM_EFORMAT, "config.json",
                    NULL);
  /* config.json whose geometry does not match the tensors */
  size_t len;
  uint8_t *cfg = vlm_test_slurp(FIX "/config.json", &len);
  json_t *root = json_loadb((const char *)cfg, len, 0, NULL);
  json_object_set_new(json_object_get(root, "vision_config"),
                      "intermediate_size", json_integer(500));
  json_dump_file(root, path, 0);
  expect_load_error(dir, "model.safetensors", VLM_EMISMATCH,
                    "vision_model.encoder.layers.0.mlp.fc1", "[512, 128]");
  /* heads that do not divide the width */
  json_object_set_new(json_object_get(root, "vision_config"),
                      "intermediate_size", json_integer(512));
  json_object_set_new(json_object_get(root, "text_config"),
                      "num_attention_heads", json_integer(3));
  json_dump_file(root, path, 0);
  expect_load_error(dir, "model.safetensors", VLM_EFORMAT,
                    "num_attention_heads", NULL);
  /* unknown activation */
  json_object_set_new(json_object_get(root, "text_config"),
                      "num_attention_heads", json_integer(4));
  json_object_set_new(json_object_get(root, "text_config"), "hidden_act",
                      json_string("swish"));
  json_dump_file(root, path, 0);
  expect_load_error(dir, "model.safetensors", VLM_EUNSUPPORTED, "hidden_act",
                    "swish");
  json_decref(root);
  free(cfg);
  /* preprocessor_config.json with a crop that is not the image size */
  unlink(path);
  link_into(dir, "config.json");
  snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
  unlink(path);
  vlm_test_spit(path, "{\"crop_size\": 64}", 17);
  expect_load_error(dir, "model.safetensors", VLM_EMISMATCH, "crop_size",
                    NULL);
  vlm_test_spit(path, "{\"image_std\": [1, 0, 1]}", 24);
  expect_load_error(dir, "model.safetensors", VLM_EFORMAT, "image_std", NULL);
  rm_rf(dir);
  free(dir);
}

/* Without config.json the original layout's geometry comes from its
 * shapes, as the reference's build_model does (heads = width / 64). */
static void test_original_layout_infers_geometry(void **state) {
  (void)state;
  char *dir = model_dir(0);
  link_into(dir, "open_clip_model.safetensors");
  vlm_clip *clip = NULL;
  assert_int_equal(vlm_clip_load(dir, NULL, &clip), 0);
  const vlm__clip_config *got = vlm__clip_get_config(clip);
  const vlm__clip_config *want = vlm__clip_get_config(ref.hf);
  assert_int_equal(got->vision_width, want->vision_width);
  assert_int_equal(got->vision_layers, want->vision_layers);
  assert_int_equal(got->vision_heads, 128 / 64);
  assert_int_equal(got->vision_mlp, want->vision_mlp);
  assert_int_equal(got->image_size, want->image_size);
  assert_int_equal(got->patch_size, want->patch_size);
  assert_int_equal(got->text_width, want->text_width);
  assert_int_equal(got->text_layers, want->text_layers);
  assert_int_equal(got->text_heads, 1); /* 64 / 64: this fixture uses 4 */
  assert_int_equal(got->text_mlp, want->text_mlp);
  assert_int_equal(got->vocab_size, want->vocab_size);
  assert_int_equal(got->context_length, want->context_length);
  assert_int_equal(got->projection_dim, want->projection_dim);
  /* The vision tower's inferred heads are right, so it matches. */
  check_images(clip, "open_clip, inferred geometry");
  vlm_clip_free(clip);

  /* open_clip_config.json supplies what shapes cannot: the text heads. */
  char path[512];
  snprintf(path, sizeof path, "%s/open_clip_config.json", dir);
  const char *oc = "{\"model_cfg\": {\"embed_dim\": 48, \"quick_gelu\": true,"
                   " \"vision_cfg\": {\"image_size\": 32, \"layers\": 2, "
                   "\"width\": 128, \"patch_size\": 8},"
                   " \"text_cfg\": {\"context_length\": 77, \"vocab_size\": "
                   "49408, \"width\": 64, \"heads\": 4, \"layers\": 2}}}";
  vlm_test_spit(path, oc, strlen(oc));
  assert_int_equal(vlm_clip_load(dir, NULL, &clip), 0);
  assert_int_equal(vlm__clip_get_config(clip)->text_heads, 4);
  check_texts(clip, "open_clip + open_clip_config.json");
  check_images(clip, "open_clip + open_clip_config.json");
  vlm_clip_free(clip);
  /* ... and a config that contradicts the shapes is refused. */
  const char *bad = "{\"model_cfg\": {\"embed_dim\": 64, \"quick_gelu\": true}}";
  vlm_test_spit(path, bad, strlen(bad));
  assert_int_equal(vlm_clip_load(dir, NULL, &clip), VLM_EMISMATCH);
  assert_non_null(strstr(vlm_errmsg(), "text_projection"));
  rm_rf(dir);
  free(dir);
}

/* F32 and BF16 files: the loader converts (or maps) them; F32 copies of
 * the F16 weights must give the same vectors and the same model id. */
static void test_f32_and_bf16_files(void **state) {
  (void)state;
  char *dir = model_dir(1);
  char path[512];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  vlm_test_ckpt_convert(HF_FILE, path, VLM_TEST_F32);
  vlm_clip *clip = NULL;
  assert_int_equal(vlm_clip_load(dir, NULL, &clip), 0);
  check_texts(clip, "F32 file");
  check_images(clip, "F32 file");
  /* F32 weights are used where they lie in the mapping, not copied. */
  for (int i = 0; i < clip->n_named; i++) {
    const uint8_t *p = (const uint8_t *)clip->named[i].data;
    const uint8_t *map = clip->st->map;
    if (!p || p < map || p >= map + clip->st->map_len)
      fail_msg("F32 tensor %s is not in the file mapping",
               clip->named[i].name);
  }
  assert_string_equal(vlm_clip_model_id(clip), vlm_clip_model_id(ref.hf));
  vlm_clip_free(clip);

  /* The original layout in F32: q, k, v are row blocks of the mapped
   * in_proj_weight, used in place. */
  char oc[512];
  snprintf(oc, sizeof oc, "%s/open_clip_model.safetensors", dir);
  vlm_test_ckpt_convert(OC_FILE, oc, VLM_TEST_F32);
  assert_int_equal(vlm__clip_load_weights(dir, oc, NULL, &clip), 0);
  check_texts(clip, "open_clip F32 file");
  check_images(clip, "open_clip F32 file");
  assert_string_equal(vlm_clip_model_id(clip), vlm_clip_model_id(ref.hf));
  vlm_clip_free(clip);

  vlm_test_ckpt_convert(HF_FILE, path, VLM_TEST_BF16);
  assert_int_equal(vlm_clip_load(dir, NULL, &clip), 0);
  /* BF16 rounding changes the weights; the tensors must be exactly the
   * truncation of the F16 ones. */
  int64_t n1, n2;
  const float *a = vlm__clip_tensor(clip, "visual_projection.weight", &n1);
  const float *b = vlm__clip_tensor(ref.hf, "visual_projection.weight", &n2);
  assert_int_equal(n1, n2);
  for (int64_t i = 0; i < n1; i++) {
    uint32_t bits;
    memcpy(&bits, &b[i], 4);
    bits &= 0xffff0000u;
    float want;
    memcpy(&want, &bits, 4);
    if (a[i] != want)
      fail_msg("BF16 element %lld: %g, expected %g", (long long)i, a[i], want);
  }
  assert_string_not_equal(vlm_clip_model_id(clip), vlm_clip_model_id(ref.hf));
  vlm_clip_free(clip);
  rm_rf(dir);
  free(dir);
}

static void test_model_id(void **state) {
  (void)state;
  const char *id = vlm_clip_model_id(ref.hf);
  assert_int_equal(strlen(id), 64);
  for (int i = 0; i < 64; i++)
    assert_non_null(strchr("0123456789abcdef", id[i]));
  /* Stable across loads. */
  vlm_clip *again = NULL;
  assert_int_equal(vlm_clip_load(FIX, NULL, &again), 0);
  assert_string_equal(vlm_clip_model_id(again), id);
  vlm_clip_free(again);
  /* Preprocessing that changes image vectors changes the id; the
   * reference's (drop alpha) is the default. */
  vlm_clip_options white = {.alpha = VLM_ALPHA_WHITE};
  vlm_clip_options drop = {.alpha = VLM_ALPHA_DROP};
  assert_int_equal(vlm_clip_load(FIX, &white, &again), 0);
  assert_string_not_equal(vlm_clip_model_id(again), id);
  vlm_clip_free(again);
  assert_int_equal(vlm_clip_load(FIX, &drop, &again), 0);
  assert_string_equal(vlm_clip_model_id(again), id);
  vlm_clip_free(again);
}

/* ---- concurrency ---------------------------------------------------------- */

typedef struct {
  vlm_clip *clip;
  float *txt, *img;
  int rc;
  const float *tensor; /* what vlm__clip_tensor gave this thread */
} worker_arg;

static void *encode_all(void *p) {
  worker_arg *a = p;
  const int32_t *ids[64];
  int n_ids[64];
  for (int i = 0; i < ref.n_texts; i++) {
    ids[i] = ref.texts[i].ids;
    n_ids[i] = ref.texts[i].n_ids;
  }
  const size_t per = (size_t)3 * ref.side * ref.side;
  float *pixels = malloc(ref.n_images * per * sizeof *pixels);
  for (int i = 0; i < ref.n_images; i++)
    memcpy(pixels + i * per, ref.images[i].pixels, per * sizeof *pixels);
  a->tensor = vlm__clip_tensor(a->clip, "vision_model.encoder.layers.1.mlp."
                               "fc1.weight", NULL);
  for (int round = 0; round < 3 && !a->rc; round++) {
    a->rc = vlm__clip_encode_tokens(a->clip, ids, n_ids, ref.n_texts, 0,
                                    a->txt);
    if (!a->rc)
      a->rc = vlm_clip_encode_pixels(a->clip, pixels, ref.n_images, 0, a->img);
  }
  free(pixels);
  return NULL;
}

static void test_concurrent_callers(void **state) {
  (void)state;
  for (int threads = 1; threads <= 2; threads++) {
    vlm_clip_options o = {.threads = threads};
    vlm_clip *clip = NULL;
    assert_int_equal(vlm_clip_load(FIX, &o, &clip), 0);
    const int D = vlm_clip_dim(clip);
    enum { NW = 4 };
    worker_arg args[NW + 1];
    for (int w = 0; w <= NW; w++) {
      args[w].clip = clip;
      args[w].rc = 0;
      args[w].txt = malloc((size_t)ref.n_texts * D * sizeof(float));
      args[w].img = malloc((size_t)ref.n_images * D * sizeof(float));
    }
    encode_all(&args[NW]); /* alone first */
    assert_int_equal(args[NW].rc, 0);
    pthread_t th[NW];
    for (int w = 0; w < NW; w++)
      assert_int_equal(pthread_create(&th[w], NULL, encode_all, &args[w]), 0);
    for (int w = 0; w < NW; w++)
      pthread_join(th[w], NULL);
    for (int w = 0; w < NW; w++) {
      assert_int_equal(args[w].rc, 0);
      assert_non_null(args[w].tensor);
      assert_ptr_equal(args[w].tensor, args[NW].tensor);
      assert_memory_equal(args[w].txt, args[NW].txt,
                          (size_t)ref.n_texts * D * sizeof(float));
      assert_memory_equal(args[w].img, args[NW].img,
                          (size_t)ref.n_images * D * sizeof(float));
    }
    for (int i = 0; i < ref.n_images; i++)
      expect_close("image", ref.images[i].file, args[NW].img + (size_t)i * D,
                   ref.images[i].normalized, D, 0.99999, 1e-4);
    for (int w = 0; w <= NW; w++) {
      free(args[w].txt);
      free(args[w].img);
    }
    vlm_clip_free(clip);
  }
}

/* ---- kernels against naive double-precision versions -------------------- */

static uint32_t rng_state = 12345;
static float frand(void) {
  rng_state = rng_state * 1664525u + 1013904223u;
  return (float)((rng_state >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static void test_kernel_exp_and_activations(void **state) {
  (void)state;
  enum { N = 4099 };
  float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
  for (int i = 0; i < N; i++)
    x[i] = -87.0f + 175.0f * (float)i / (N - 1);
  vlm__exp(y, x, N);
  for (int i = 0; i < N; i++) {
    double want = exp((double)x[i]);
    if (fabs(y[i] - want) > 4e-7 * want)
      fail_msg("exp(%.9g) = %.9g, want %.9g", x[i], y[i], want);
  }
  for (int i = 0; i < N; i++)
    x[i] = y[i] = -12.0f + 24.0f * (float)i / (N - 1);
  vlm__quick_gelu(y, N);
  for (int i = 0; i < N; i++) {
    double want = x[i] / (1.0 + exp(-1.702 * x[i]));
    if (fabs(y[i] - want) > 1e-6 * (1 + fabs(want)))
      fail_msg("quick_gelu(%.9g) = %.9g, want %.9g", x[i], y[i], want);
  }
  for (int i = 0; i < N; i++)
    y[i] = x[i];
  vlm__gelu(y, N);
  for (int i = 0; i < N; i++) {
    double want = 0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0)));
    if (fabs(y[i] - want) > 3e-7 * (1 + fabs(x[i])))
      fail_msg("gelu(%.9g) = %.9g, want %.9g", x[i], y[i], want);
  }
  for (int i = 0; i < N; i++)
    y[i] = x[i];
  vlm__gelu_tanh(y, N);
  for (int i = 0; i < N; i++) {
    double u = sqrt(2.0 / M_PI) * (x[i] + 0.044715 * pow(x[i], 3));
    double want = 0.5 * x[i] * (1.0 + tanh(u));
    if (fabs(y[i] - want) > 1e-6 * (1 + fabs(want)))
      fail_msg("gelu_tanh(%.9g) = %.9g, want %.9g", x[i], y[i], want);
  }
  /* far out, where exp saturates: x above, 0 below, never NaN */
  static const float far[] = {-1e30f, -1e4f, -100.0f, -60.0f,
                              60.0f,  100.0f, 1e4f,   1e30f};
  void (*const act[])(float *, size_t) = {vlm__quick_gelu, vlm__gelu,
                                          vlm__gelu_tanh};
  for (size_t a = 0; a < sizeof act / sizeof act[0]; a++)
    for (size_t i = 0; i < sizeof far / sizeof far[0]; i++) {
      float v = far[i];
      act[a](&v, 1);
      float want = far[i] > 0 ? far[i] : 0.0f;
      if (!(fabsf(v - want) <= 1e-6f * (1 + fabsf(want))))
        fail_msg("activation %zu at %g = %g, want %g", a, far[i], v, want);
    }
  free(x);
  free(y);
}

/* vlm__attention over T positions of head size hd against a
 * double-precision loop, causal and not; any range of queries gives the
 * same rows bit for bit. */
static void check_attention(int T, int HD) {
  float *q = malloc((size_t)T * 3 * HD * sizeof *q);
  float *o = malloc((size_t)T * HD * sizeof *o);
  float *part = malloc((size_t)T * HD * sizeof *part);
  float *scores = malloc(vlm__attention_scratch(T, HD) * sizeof *scores);
  double *s = malloc((size_t)T * sizeof *s);
  assert_non_null(q && o && part && scores && s);
  for (int i = 0; i < T * 3 * HD; i++)
    q[i] = 2.0f * frand();
  for (int causal = 0; causal <= 1; causal++) {
    vlm__attention(o, HD, q, q + HD, q + 2 * HD, 3 * HD, T, HD, causal, 0, T,
                   scores);
    /* ranges of queries give the same rows */
    for (int q0 = 0; q0 < T; q0 += 3) {
      int q1 = q0 + 1 + (q0 * 7) % 6;
      q1 = q1 < T ? q1 : T;
      vlm__attention(part, HD, q, q + HD, q + 2 * HD, 3 * HD, T, HD, causal,
                     q0, q1, scores);
      assert_memory_equal(part, o + (size_t)q0 * HD,
                          (size_t)(q1 - q0) * HD * sizeof *part);
    }
    for (int i = 0; i < T; i++) {
      int n = causal ? i + 1 : T;
      double mx = -1e300, sum = 0;
      for (int j = 0; j < n; j++) {
        s[j] = 0;
        for (int d = 0; d < HD; d++)
          s[j] += (double)q[i * 3 * HD + d] * q[j * 3 * HD + HD + d];
        s[j] /= sqrt((double)HD);
        mx = s[j] > mx ? s[j] : mx;
      }
      for (int j = 0; j < n; j++)
        sum += s[j] = exp(s[j] - mx);
      for (int d = 0; d < HD; d++) {
        double want = 0;
        for (int j = 0; j < n; j++)
          want += s[j] / sum * q[j * 3 * HD + 2 * HD + d];
        if (fabs(o[i * HD + d] - want) > 2e-6)
          fail_msg("attention(T=%d, hd=%d, causal=%d)[%d][%d] = %.9g, "
                   "want %.9g", T, HD, causal, i, d, o[i * HD + d], want);
      }
    }
  }
  free(q);
  free(o);
  free(part);
  free(scores);
  free(s);
}

static void test_kernel_layernorm_softmax_attention(void **state) {
  (void)state;
  enum { R = 5, C = 77 };
  float in[R * C], out[R * C], w[C], b[C];
  for (int i = 0; i < R * C; i++)
    in[i] = 3.0f * frand() + 0.5f;
  for (int i = 0; i < C; i++)
    w[i] = frand(), b[i] = frand();
  vlm__layernorm(out, C, in, C, w, b, R, C, 1e-5f);
  for (int r = 0; r < R; r++) {
    double m = 0, v = 0;
    for (int i = 0; i < C; i++)
      m += in[r * C + i];
    m /= C;
    for (int i = 0; i < C; i++)
      v += (in[r * C + i] - m) * (in[r * C + i] - m);
    v /= C;
    for (int i = 0; i < C; i++) {
      double want = (in[r * C + i] - m) / sqrt(v + 1e-5) * w[i] + b[i];
      if (fabs(out[r * C + i] - want) > 2e-6)
        fail_msg("layernorm[%d][%d] = %.9g, want %.9g", r, i,
                 out[r * C + i], want);
    }
  }
  /* attention, causal and not, against a double-precision loop, at
   * geometries that take every path of the kernel (key and value blocks
   * of 64 and of 16, a scalar tail, groups of 4 queries and fewer) */
  static const int geo[][2] = {{19, 24}, {77, 64}, {197, 80}, {5, 16}};
  for (size_t g = 0; g < sizeof geo / sizeof geo[0]; g++)
    check_attention(geo[g][0], geo[g][1]);
}

static void test_kernel_matmul(void **state) {
  (void)state;
  enum { M = 7, N = 37, K = 50 };
  float in[M * K], w[N * K], bias[N], out[M * N];
  for (int i = 0; i < M * K; i++)
    in[i] = frand();
  for (int i = 0; i < N * K; i++)
    w[i] = frand();
  for (int i = 0; i < N; i++)
    bias[i] = frand();
  for (int acc = 0; acc <= 1; acc++) {
    for (int i = 0; i < M * N; i++)
      out[i] = acc ? 1.0f : 12345.0f;
    vlm__matmul(out, N, in, K, w, K, bias, M, N, K, acc);
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) {
        double want = bias[n] + (acc ? 1.0 : 0.0);
        for (int k = 0; k < K; k++)
          want += (double)in[m * K + k] * w[n * K + k];
        if (fabs(out[m * N + n] - want) > 1e-5)
          fail_msg("matmul[%d][%d] = %.9g, want %.9g", m, n, out[m * N + n],
                   want);
      }
  }
}

/* Every F16 bit pattern widens to the value the format defines. */
static void test_kernel_f16_bf16(void **state) {
  (void)state;
  uint16_t *h = malloc(65536 * sizeof *h);
  float *f = malloc(65536 * sizeof *f);
  for (int i = 0; i < 65536; i++)
    h[i] = (uint16_t)i;
  vlm__f16_to_f32(f, h, 65536);
  for (int i = 0; i < 65536; i++) {
    int sign = i >> 15, e = (i >> 10) & 31, m = i & 1023;
    double want;
    if (e == 31)
      want = m ? NAN : INFINITY;
    else if (e == 0)
      want = ldexp(m, -24);
    else
      want = ldexp(1024 + m, e - 25);
    if (sign)
      want = -want;
    if (isnan(want) ? !isnan(f[i]) : f[i] != want)
      fail_msg("f16 0x%04x -> %.9g, want %.9g", i, f[i], want);
  }
  vlm__bf16_to_f32(f, h, 65536);
  for (int i = 0; i < 65536; i++) {
    uint32_t bits;
    memcpy(&bits, &f[i], 4);
    assert_int_equal(bits, (uint32_t)i << 16);
  }
  free(h);
  free(f);
}

void vlm__sha256_blocks_portable(uint32_t h[8], const uint8_t *p, size_t n);

static void test_sha256(void **state) {
  (void)state;
  static const struct {
    const char *msg;
    const char *hex;
  } v[] = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc",
       "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
  };
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    vlm__sha256 s;
    uint8_t d[32];
    char hex[65];
    vlm__sha256_init(&s);
    vlm__sha256_update(&s, v[i].msg, strlen(v[i].msg));
    vlm__sha256_final(&s, d, hex);
    assert_string_equal(hex, v[i].hex);
  }
  /* One million 'a's, fed in uneven pieces. */
  char *a = malloc(1000000);
  memset(a, 'a', 1000000);
  vlm__sha256 s;
  uint8_t d[32];
  char hex[65];
  vlm__sha256_init(&s);
  for (size_t off = 0, step = 1; off < 1000000; off += step, step = step * 3 % 1000 + 1)
    vlm__sha256_update(&s, a + off, off + step > 1000000 ? 1000000 - off : step);
  vlm__sha256_final(&s, d, hex);
  assert_string_equal(
      hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  /* The accelerated block function agrees with the portable one. */
  uint8_t *blocks = malloc(64 * 100);
  for (int i = 0; i < 6400; i++)
    blocks[i] = (uint8_t)(frand() * 127 + 128);
  vlm__sha256_init(&s);
  vlm__sha256_update(&s, blocks, 6400);
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  vlm__sha256_blocks_portable(h, blocks, 100);
  assert_memory_equal(h, s.h, sizeof h);
  free(blocks);
  free(a);
}

/* ---- safetensors parser and fuzz regressions ------------------------------ */

static void test_safetensors_parse(void **state) {
  (void)state;
  vlm__safetensors *st;
  assert_int_equal(vlm__st_open(OC_FILE, &st), 0);
  assert_int_equal(st->n_tensors, 62);
  const vlm__st_tensor *t = vlm__st_find(st, "visual.proj");
  assert_non_null(t);
  assert_int_equal(t->dtype, VLM__DT_F16);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 128);
  assert_int_equal(t->shape[1], 48);
  assert_int_equal(t->nbytes, 128 * 48 * 2);
  t = vlm__st_find(st, "logit_scale");
  assert_non_null(t);
  assert_int_equal(t->ndim, 0);
  assert_int_equal(t->numel, 1);
  assert_null(vlm__st_find(st, "__metadata__"));
  assert_null(vlm__st_find(st, "visual"));
  vlm__st_close(st);
  vlm__st_close(NULL);
  /* duplicate keys are refused */
  const char *dup = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                    "\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\","
                    "\"shape\":[1],\"data_offsets\":[0,4]}}";
  uint8_t buf[256] = {(uint8_t)strlen(dup)};
  memcpy(buf + 8, dup, strlen(dup));
  assert_int_equal(vlm__st_parse(buf, 8 + strlen(dup) + 4, "dup", &st),
                   VLM_EFORMAT);
  assert_null(st);
  /* a dimension product that overflows 64 bits */
  const char *big = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,"
                    "4294967296,16],\"data_offsets\":[0,4]}}";
  memset(buf, 0, sizeof buf);
  buf[0] = (uint8_t)strlen(big);
  memcpy(buf + 8, big, strlen(big));
  assert_int_equal(vlm__st_parse(buf, 8 + strlen(big) + 4, "big", &st),
                   VLM_ECORRUPT);
  assert_non_null(strstr(vlm_errmsg(), "a"));
}

/* Inputs the fuzzer found, kept so they stay fixed: each goes through
 * the same two stages as tests/fuzz/fuzz_safetensors.c (header parser,
 * then the loader beside a tiny config.json and without one). */
static const char fuzz_tiny_config[] =
    "{\"projection_dim\": 4,"
    " \"text_config\": {\"hidden_size\": 8, \"intermediate_size\": 16,"
    "  \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
    "  \"max_position_embeddings\": 4, \"vocab_size\": 10,"
    "  \"bos_token_id\": 8, \"eos_token_id\": 9},"
    " \"vision_config\": {\"hidden_size\": 8, \"intermediate_size\": 16,"
    "  \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
    "  \"image_size\": 4, \"patch_size\": 2}}";

static void test_fuzz_regressions(void **state) {
  (void)state;
  const char *dir = "tests/fixtures/crashes";
  char *with = make_tmpdir(), *without = make_tmpdir();
  char cfg[512];
  snprintf(cfg, sizeof cfg, "%s/config.json", with);
  vlm_test_spit(cfg, fuzz_tiny_config, strlen(fuzz_tiny_config));
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, "safetensors-", 12))
      continue;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    size_t len;
    uint8_t *b = vlm_test_slurp(path, &len);
    vlm__safetensors *st = NULL;
    int rc = vlm__st_parse(b, len, path, &st);
    if (rc == 0)
      for (int i = 0; i < st->n_tensors; i++)
        assert_true((const uint8_t *)st->tensors[i].data +
                        st->tensors[i].nbytes <= b + len);
    vlm__st_close(st);
    free(b);
    if (rc == 0) {
      const char *dirs[2] = {with, without};
      for (int k = 0; k < 2; k++) {
        vlm_clip *clip = NULL;
        rc = vlm__clip_load_weights(dirs[k], path, NULL, &clip);
        assert_int_not_equal(rc, 0); /* no tokenizer there */
        assert_null(clip);
      }
    }
    n++;
  }
  closedir(d);
  assert_true(n >= 1);
  print_message("replayed %d fuzz regression input(s)\n", n);
  unlink(cfg);
  rm_rf(with);
  rm_rf(without);
  free(with);
  free(without);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kernel_exp_and_activations),
      cmocka_unit_test(test_kernel_layernorm_softmax_attention),
      cmocka_unit_test(test_kernel_matmul),
      cmocka_unit_test(test_kernel_f16_bf16),
      cmocka_unit_test(test_sha256),
      cmocka_unit_test(test_safetensors_parse),
      cmocka_unit_test(test_fuzz_regressions),
      cmocka_unit_test(test_config_and_accessors),
      cmocka_unit_test(test_text_tower_hf),
      cmocka_unit_test(test_text_tower_original),
      cmocka_unit_test(test_vision_tower_hf),
      cmocka_unit_test(test_vision_tower_original),
      cmocka_unit_test(test_logits_per_image),
      cmocka_unit_test(test_batch_equals_single),
      cmocka_unit_test(test_large_batches),
      cmocka_unit_test(test_text_pools_at_end_token),
      cmocka_unit_test(test_tokenize_matches_reference),
      cmocka_unit_test(test_text_full_path),
      cmocka_unit_test(test_image_full_path),
      cmocka_unit_test(test_image_errors_name_the_input),
      cmocka_unit_test(test_cli_embed),
      cmocka_unit_test(test_cli_tokenize),
      cmocka_unit_test(test_layouts_give_same_tensors),
      cmocka_unit_test(test_model_id),
      cmocka_unit_test(test_f32_and_bf16_files),
      cmocka_unit_test(test_missing_tensor_hf),
      cmocka_unit_test(test_missing_tensor_original),
      cmocka_unit_test(test_every_tensor_matters),
      cmocka_unit_test(test_corrupt_header_fields),
      cmocka_unit_test(test_corrupt_file_bytes),
      cmocka_unit_test(test_bad_config),
      cmocka_unit_test(test_original_layout_infers_geometry),
      cmocka_unit_test(test_concurrent_callers),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
