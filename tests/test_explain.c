/* test_explain.c - match explanations and zero-shot tagging.
 *
 * The gradient that Grad-CAM weights (the score's, at the input of the
 * vision tower's last block) against central finite differences in double
 * precision (CLIP and SigLIP towers); a tiny CLIP trained here on pictures
 * of one coloured square on a plain ground puts most of the map's mass on
 * the square's patches for its colour's caption; the PNG overlay; and the
 * refusals. */
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "train_model.h"
#include "util/files.h"
#include "util/util.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_train.h"
#include "vlmdb.h"

static uint64_t rng = 0x5eed5eedull;

static double urand(void) { return vlm_test_uniform(&rng); }

static double nrand(void) {
  double u = urand() + 1e-12, v = urand();
  return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

/* ---- the gradient against finite differences -------------------------- */

static void tiny_vision(vlm__clip_config *c, int siglip) {
  if (siglip)
    vlm__config_family_defaults(c, VLM__FAMILY_SIGLIP);
  else
    vlm__config_defaults(c);
  c->vision_width = 8;
  c->vision_layers = 2;
  c->vision_heads = 2;
  c->vision_mlp = 12;
  c->image_size = 12;
  c->patch_size = 4;
  c->vision_act = siglip ? VLM__ACT_GELU_TANH : VLM__ACT_GELU;
  c->text_width = siglip ? 8 : 6; /* SigLIP: one width */
  c->text_layers = 1;
  c->text_heads = 2;
  c->text_mlp = 10;
  c->vocab_size = 11;
  c->context_length = 5;
  if (!siglip) {
    c->bos_id = 9;
    c->eos_id = 10;
  }
  c->projection_dim = siglip ? 8 : 5;
}

/* s = sum_b <emb_b, q> of B pictures. */
static double score_of(vlm__tmodel_f64 *m, const double *pixels, int B,
                       const double *q, int D) {
  double emb[16], s = 0;
  vlm__tmodel_images_f64(m, pixels, B, emb);
  for (int i = 0; i < B * D; i++)
    s += emb[i] * q[i % D];
  return s;
}

/* What `integrated` weights: the gradient at the patch convolution's
 * output, along random pixel directions u against central differences
 * (d s(x + h u) / dh = <conv(u), grad>, the convolution being linear), and
 * integrated gradients' completeness: the patches' shares sum to s(x) -
 * s(0), within the midpoint rule's error. */
static void patch_gradient_case(vlm__tmodel_f64 *m, const vlm__tlayout *L,
                                const double *pixels, const double *q,
                                int siglip) {
  enum { B = 2, DIRS = 6, STEPS = 64 };
  const vlm__clip_config *cfg = &L->cfg;
  int S = cfg->image_size, D = cfg->projection_dim;
  size_t npx = (size_t)B * 3 * S * S;
  size_t n = (size_t)B * (L->vision_tokens - L->vision_cls) *
             cfg->vision_width;
  double *g = malloc(sizeof(double) * n), *cu = malloc(sizeof(double) * n),
         *u = malloc(sizeof(double) * npx), *xp = malloc(sizeof(double) * npx);
  double worst = 0;
  for (int dir = 0; dir < DIRS; dir++) {
    for (size_t i = 0; i < npx; i++)
      u[i] = nrand();
    vlm__tmodel_images_f64(m, u, B, NULL);
    vlm__tmodel_image_patch_grad_f64(m, q, NULL, cu);
    vlm__tmodel_images_f64(m, pixels, B, NULL);
    vlm__tmodel_image_patch_grad_f64(m, q, g, NULL);
    double an = 0, h = 1e-5;
    for (size_t i = 0; i < n; i++)
      an += cu[i] * g[i];
    for (size_t i = 0; i < npx; i++)
      xp[i] = pixels[i] + h * u[i];
    double sp = score_of(m, xp, B, q, D);
    for (size_t i = 0; i < npx; i++)
      xp[i] = pixels[i] - h * u[i];
    double sm = score_of(m, xp, B, q, D);
    double num = (sp - sm) / (2 * h);
    assert_true(fabs(an) > 1e-6);
    worst = fmax(worst, fabs(num - an) / fmax(fabs(num), fabs(an)));
  }
  print_message("%s: d score / d patch embedding along %d directions, "
                "worst relative error %.2e\n",
                siglip ? "SigLIP" : "CLIP", DIRS, worst);
  assert_true(worst <= 1e-6);
  /* completeness: sum over patches of <conv(x), mean grad on the path> */
  vlm__tmodel_images_f64(m, pixels, B, NULL);
  vlm__tmodel_image_patch_grad_f64(m, q, NULL, cu);
  double ig = 0;
  for (int k = 0; k < STEPS; k++) {
    for (size_t i = 0; i < npx; i++)
      xp[i] = (k + 0.5) / STEPS * pixels[i];
    vlm__tmodel_images_f64(m, xp, B, NULL);
    vlm__tmodel_image_patch_grad_f64(m, q, g, NULL);
    for (size_t i = 0; i < n; i++)
      ig += cu[i] * g[i] / STEPS;
  }
  memset(xp, 0, sizeof(double) * npx);
  double want = score_of(m, pixels, B, q, D) - score_of(m, xp, B, q, D);
  print_message("%s: integrated gradients sum %.6f, s(x) - s(0) %.6f\n",
                siglip ? "SigLIP" : "CLIP", ig, want);
  assert_true(fabs(want) > 1e-3);
  assert_true(fabs(ig - want) <= 0.02 * fabs(want));
  const double *wg = vlm__tmodel_grads_f64(m); /* no weight gradient */
  for (size_t i = 0; i < L->total; i++)
    assert_true(wg[i] == 0.0);
  free(g);
  free(cu);
  free(u);
  free(xp);
}

static void gradient_case(int siglip) {
  vlm__clip_config cfg;
  tiny_vision(&cfg, siglip);
  vlm__tlayout *L;
  assert_int_equal(vlm__tlayout_create(&cfg, 0, 0, &L), 0);
  enum { B = 2 };
  vlm__tmodel_f64 *m;
  assert_int_equal(vlm__tmodel_create_f64(L, NULL, B, 16, 1, &m), 0);
  double *p = vlm__tmodel_params_f64(m);
  for (size_t i = 0; i < L->total; i++)
    p[i] = nrand() * 0.5;
  for (int i = 0; i < L->nparams; i++)
    if (strstr(L->params[i].name, "norm") &&
        strstr(L->params[i].name, "weight"))
      for (size_t j = 0; j < L->params[i].numel; j++)
        p[L->params[i].offset + j] += 1;
  int S = cfg.image_size, D = cfg.projection_dim;
  size_t npx = (size_t)B * 3 * S * S;
  double *pixels = malloc(sizeof(double) * npx);
  for (size_t i = 0; i < npx; i++)
    pixels[i] = nrand();
  double q[8], qn = 0;
  for (int d = 0; d < D; d++) {
    q[d] = nrand();
    qn += q[d] * q[d];
  }
  for (int d = 0; d < D; d++)
    q[d] /= sqrt(qn);
  vlm__tmodel_images_f64(m, pixels, B, NULL);
  size_t n = (size_t)B * L->vision_tokens * cfg.vision_width;
  double *x = malloc(sizeof(double) * n), *g = malloc(sizeof(double) * n);
  memcpy(x, vlm__tmodel_image_block_input_f64(m, 0), sizeof(double) * n);
  vlm__tmodel_image_block_grad_f64(m, q, g, NULL);
  /* no weight gradient was touched */
  const double *wg = vlm__tmodel_grads_f64(m);
  for (size_t i = 0; i < L->total; i++)
    assert_true(wg[i] == 0.0);
  double s0 = vlm__tmodel_image_score_from_block_f64(m, x, 0, q);
  assert_true(isfinite(s0) && fabs(s0) <= B + 1e-9);
  double h = 1e-5, num2 = 0, an2 = 0, diff2 = 0;
  for (size_t i = 0; i < n; i++) {
    double save = x[i];
    x[i] = save + h;
    double sp = vlm__tmodel_image_score_from_block_f64(m, x, 0, q);
    x[i] = save - h;
    double sm = vlm__tmodel_image_score_from_block_f64(m, x, 0, q);
    x[i] = save;
    double num = (sp - sm) / (2 * h);
    num2 += num * num;
    an2 += g[i] * g[i];
    diff2 += (num - g[i]) * (num - g[i]);
  }
  double rel = sqrt(diff2) / sqrt(fmax(num2, an2));
  print_message("%s: d score / d last block input, %zu values, relative "
                "error %.2e (|grad| %.3e)\n",
                siglip ? "SigLIP" : "CLIP", n, rel, sqrt(an2));
  assert_true(an2 > 1e-6);
  assert_true(rel <= 1e-6);
  patch_gradient_case(m, L, pixels, q, siglip);
  free(x);
  free(g);
  free(pixels);
  vlm__tmodel_free_f64(m);
  vlm__tlayout_free(L);
}

static void test_gradient_clip(void **state) {
  (void)state;
  gradient_case(0);
}

static void test_gradient_siglip(void **state) {
  (void)state;
  gradient_case(1);
}

/* ---- a tiny CLIP that knows where the coloured square is ---------------- */

#define NCOLOURS 4
#define NTRAIN_PER 48
/* and NTRAIN_PER plain grounds, "a plain picture": without them one
 * colour can be learnt as the absence of the others, and its caption's
 * map then honestly points at the ground */
#define NTRAIN ((NCOLOURS + 1) * NTRAIN_PER)
#define SIDE 32  /* picture side = the model's image size */
#define PATCH 4  /* an 8 x 8 grid */
#define SQ 10    /* the square's side */

static const char *const colour_names[NCOLOURS] = {"red", "green", "blue",
                                                   "yellow"};
static const uint8_t colour_rgb[NCOLOURS][3] = {
    {220, 30, 30}, {30, 170, 40}, {30, 60, 220}, {230, 210, 30}};

typedef struct {
  char dir[256];
  char model[300];
  char keys[NTRAIN][32], paths[NTRAIN][300], texts[NTRAIN][48];
  vlm_train_item items[NTRAIN];
  int trained;
} world;

static world *W;

/* A SIDE x SIDE PNG: a plain ground of a random, slightly tinted light grey
 * (so that the picture's mean colour does not name the square's) and one
 * SQ x SQ square of a colour at (x0, y0), none for colour NCOLOURS. */
static void write_square(const char *path, int colour, int x0, int y0) {
  uint8_t px[SIDE * SIDE * 3], ground[3];
  int level = 110 + (int)(urand() * 130);
  for (int c = 0; c < 3; c++)
    ground[c] = (uint8_t)(level - 12 + (int)(urand() * 25));
  for (int y = 0; y < SIDE; y++)
    for (int x = 0; x < SIDE; x++) {
      int in = colour < NCOLOURS && x >= x0 && x < x0 + SQ && y >= y0 &&
               y < y0 + SQ;
      for (int c = 0; c < 3; c++)
        px[(y * SIDE + x) * 3 + c] = in ? colour_rgb[colour][c] : ground[c];
    }
  png_image img;
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = SIDE;
  img.height = SIDE;
  img.format = PNG_FORMAT_RGB;
  assert_true(png_image_write_to_file(&img, path, 0, px, 0, NULL));
}

static const char world_config[] =
    "{\"projection_dim\": 32, \"logit_scale_init_value\": 2.6592,\n"
    " \"text_config\": {\"vocab_size\": 49408, \"hidden_size\": 32,\n"
    "   \"intermediate_size\": 64, \"num_hidden_layers\": 1,\n"
    "   \"num_attention_heads\": 2, \"max_position_embeddings\": 8,\n"
    "   \"hidden_act\": \"quick_gelu\", \"layer_norm_eps\": 1e-5},\n"
    " \"vision_config\": {\"hidden_size\": 32, \"intermediate_size\": 64,\n"
    "   \"num_hidden_layers\": 2, \"num_attention_heads\": 2,\n"
    "   \"image_size\": 32, \"patch_size\": 4, \"hidden_act\": \"gelu\",\n"
    "   \"layer_norm_eps\": 1e-5}}\n";

static int world_setup(void **state) {
  (void)state;
  W = calloc(1, sizeof *W);
  if (!W)
    return -1;
  strcpy(W->dir, "/tmp/vlm_explain_XXXXXX");
  if (!mkdtemp(W->dir))
    return -1;
  rng = 0x2468aceull;
  for (int c = 0; c <= NCOLOURS; c++)
    for (int j = 0; j < NTRAIN_PER; j++) {
      int i = c * NTRAIN_PER + j;
      int x0 = (int)(urand() * (SIDE - SQ + 1)),
          y0 = (int)(urand() * (SIDE - SQ + 1));
      char key[32], dir[256], file[300];
      snprintf(key, sizeof key, "%s-%02d",
               c < NCOLOURS ? colour_names[c] : "plain", j);
      memcpy(dir, W->dir, sizeof dir);
      snprintf(file, sizeof file, "%.255s/%s.png", dir, key);
      memcpy(W->keys[i], key, sizeof key);
      memcpy(W->paths[i], file, sizeof file);
      if (c < NCOLOURS)
        snprintf(W->texts[i], sizeof W->texts[i], "a %s square",
                 colour_names[c]);
      else
        snprintf(W->texts[i], sizeof W->texts[i], "a plain picture");
      write_square(W->paths[i], c, x0, y0);
      W->items[i] = (vlm_train_item){
          .key = W->keys[i], .image = W->paths[i], .text = W->texts[i]};
    }
  return 0;
}

static int world_teardown(void **state) {
  (void)state;
  if (W) {
    vlm_test_rm_rf(W->dir);
    free(W);
    W = NULL;
  }
  return 0;
}

/* Train the tiny CLIP once (the later tests use it). */
static void train_world(void) {
  if (W->trained)
    return;
  char config[300];
  snprintf(config, sizeof config, "%.255s/config.json", W->dir);
  FILE *f = fopen(config, "w");
  assert_non_null(f);
  fputs(world_config, f);
  fclose(f);
  char model[300];
  snprintf(model, sizeof model, "%.255s/model", W->dir);
  memcpy(W->model, model, sizeof model);
  vlm_train_options o;
  vlm_train_options_default(&o);
  o.items = W->items;
  o.n_items = NTRAIN;
  o.out_dir = W->model;
  o.config_path = config;
  o.tokenizer_dir = "tests/fixtures/clip-tiny";
  o.batch = 32;
  o.max_steps = 800;
  o.lr = 2e-3f;
  o.warmup_steps = 20;
  o.weight_decay = 0.01f;
  o.no_augment = 1;
  o.jitter = 0;
  o.threads = 2;
  o.loader_threads = 1;
  o.seed = 11;
  o.f16 = 0;
  vlm_train_result res;
  int rc = vlm_train_run(&o, &res);
  if (rc)
    print_error("train: %s\n", vlm_errmsg());
  assert_int_equal(rc, 0);
  print_message("tiny CLIP: %lld steps, loss %.4f, %.0f pairs/s\n",
                (long long)res.steps, res.loss, res.pairs_per_s);
  vlm_train_result_free(&res);
  W->trained = 1;
}

/* Whether the patch (gx, gy) shows part of the square at (x0, y0). */
static int on_square(int gx, int gy, int x0, int y0) {
  int px0 = gx * PATCH, py0 = gy * PATCH;
  return px0 < x0 + SQ && px0 + PATCH > x0 && py0 < y0 + SQ &&
         py0 + PATCH > y0;
}

/* Whether the map's hottest patch shows part of the square. */
static int peak_on_square(const float *map, int grid, int x0, int y0) {
  int best = 0;
  for (int i = 1; i < grid * grid; i++)
    if (map[i] > map[best])
      best = i;
  return map[best] > 0 && on_square(best % grid, best / grid, x0, y0);
}

/* The share of the map on the patches the square touches. */
static double square_mass(const float *map, int grid, int x0, int y0) {
  double in = 0, all = 0;
  for (int gy = 0; gy < grid; gy++)
    for (int gx = 0; gx < grid; gx++) {
      int px0 = gx * PATCH, py0 = gy * PATCH;
      int touches = px0 < x0 + SQ && px0 + PATCH > x0 && py0 < y0 + SQ &&
                    py0 + PATCH > y0;
      all += map[gy * grid + gx];
      if (touches)
        in += map[gy * grid + gx];
    }
  return all > 0 ? in / all : 0;
}

static void test_square_mass(void **state) {
  (void)state;
  train_world();
  vlm_clip *clip = NULL;
  int rc = vlm_clip_load(W->model, NULL, &clip);
  if (rc)
    print_error("load: %s\n", vlm_errmsg());
  assert_int_equal(rc, 0);
  int D = vlm_clip_dim(clip);
  float tv[NCOLOURS][32];
  assert_int_equal(D, 32);
  const char *caps[NCOLOURS];
  char capbuf[NCOLOURS][32];
  for (int c = 0; c < NCOLOURS; c++) {
    snprintf(capbuf[c], sizeof capbuf[c], "a %s square", colour_names[c]);
    caps[c] = capbuf[c];
  }
  assert_int_equal(vlm_clip_encode_texts(clip, caps, NCOLOURS, 0, &tv[0][0]),
                   0);
  vlm_explainer *ex = NULL;
  assert_int_equal(vlm_explainer_create(clip, 2, &ex), 0);
  int grid = vlm_explainer_grid(ex);
  assert_int_equal(grid, SIDE / PATCH);
  /* fresh pictures at new places: the mass on the square, every method */
  enum { NTEST = 32, NMETHODS = VLM_EXPLAIN_INTEGRATED + 1 };
  double sum[NMETHODS] = {0}, worst[NMETHODS] = {1, 1, 1, 1};
  int peaks[NMETHODS] = {0};
  int right = 0;
  char path[300];
  snprintf(path, sizeof path, "%.255s/probe.png", W->dir);
  float pixels[3 * SIDE * SIDE], map[64], img[32];
  rng = 0x13579bdfull;
  for (int t = 0; t < NTEST; t++) {
    int c = t % NCOLOURS;
    int x0 = (int)(urand() * (SIDE - SQ + 1)),
        y0 = (int)(urand() * (SIDE - SQ + 1));
    write_square(path, c, x0, y0);
    assert_int_equal(vlm_clip_preprocess_file(clip, path, pixels), 0);
    /* the explainer's score is the engine's cosine */
    assert_int_equal(vlm_clip_encode_pixels(clip, pixels, 1, 0, img), 0);
    double best = -2;
    int arg = -1;
    for (int k = 0; k < NCOLOURS; k++) {
      double s = 0;
      for (int d = 0; d < D; d++)
        s += (double)img[d] * tv[k][d];
      if (s > best) {
        best = s;
        arg = k;
      }
    }
    right += arg == c;
    for (int method = 0; method < NMETHODS; method++) {
      float score = 0;
      assert_int_equal(vlm_explainer_map(ex, pixels, tv[c], method, map,
                                         &score),
                       0);
      double engine = 0;
      for (int d = 0; d < D; d++)
        engine += (double)img[d] * tv[c][d];
      assert_true(fabs(score - engine) < 1e-4);
      double mass = square_mass(map, grid, x0, y0);
      sum[method] += mass;
      peaks[method] += peak_on_square(map, grid, x0, y0);
      worst[method] = fmin(worst[method], mass);
    }
  }
  print_message("coloured squares: colour right %d/%d; map mass on the "
                "square's patches, mean (worst): Grad-CAM %.3f (%.3f), token "
                "gradient x activation %.3f (%.3f), relevance %.3f (%.3f), "
                "integrated gradients %.3f (%.3f)\n",
                right, NTEST, sum[0] / NTEST, worst[0], sum[1] / NTEST,
                worst[1], sum[2] / NTEST, worst[2], sum[3] / NTEST, worst[3]);
  print_message("hottest patch on the square: Grad-CAM %d/%d, token %d/%d, "
                "relevance %d/%d, integrated gradients %d/%d\n",
                peaks[0], NTEST, peaks[1], NTEST, peaks[2], NTEST, peaks[3],
                NTEST);
  assert_true(right >= NTEST * 9 / 10);
  /* integrated gradients, the default.  Over six training seeds it put
   * 0.93 to 0.98 of the mass on the square (the issue asks 0.8; chance,
   * a flat map, is 0.14 to 0.25; worst picture 0.69 to 0.90) and its
   * hottest patch on the square in every picture.  Relevance put 0.79 to
   * 1.00, with worst pictures down to 0.06 */
  assert_true(sum[VLM_EXPLAIN_INTEGRATED] / NTEST >= 0.8);
  assert_true(peaks[VLM_EXPLAIN_INTEGRATED] >= NTEST * 15 / 16);
  assert_true(sum[VLM_EXPLAIN_RELEVANCE] / NTEST >= 0.7);
  assert_true(peaks[VLM_EXPLAIN_RELEVANCE] >= NTEST * 2 / 3);
  vlm_explainer_free(ex);
  vlm_clip_free(clip);
}

/* The overlay: a PNG of the asked size whose hottest colour sits on the
 * square and whose coldest is far from it. */
static void test_png_overlay(void **state) {
  (void)state;
  int grid = 8;
  float map[64] = {0};
  map[2 * grid + 5] = 1; /* row 2, column 5 */
  vlm_image img = {SIDE * 2, SIDE, malloc(SIDE * 2 * SIDE * 3)};
  memset(img.rgb, 200, SIDE * 2 * SIDE * 3);
  uint8_t *png = NULL;
  size_t len = 0;
  assert_int_equal(vlm_explain_png(&img, 0, map, grid, 64, &png, &len), 0);
  vlm_image out = {0};
  assert_int_equal(vlm_image_decode(png, len, NULL, &out), 0);
  assert_int_equal(out.w, 64);
  assert_int_equal(out.h, 64);
  /* the centre of patch (2, 5) is at (5.5, 2.5) * 8 px */
  const uint8_t *hot = out.rgb + ((size_t)20 * 64 + 44) * 3;
  const uint8_t *cold = out.rgb + ((size_t)60 * 64 + 4) * 3;
  print_message("overlay: hot (%d, %d, %d), cold (%d, %d, %d)\n", hot[0],
                hot[1], hot[2], cold[0], cold[1], cold[2]);
  assert_true(hot[0] > hot[2] + 50);
  assert_true(cold[2] > cold[0] + 50);
  vlm_image_free(&out);
  free(png);
  /* refusals */
  assert_int_equal(vlm_explain_png(&img, 0, map, grid, 8, &png, &len),
                   VLM_EINVAL);
  assert_int_equal(vlm_explain_png(NULL, 0, map, grid, 64, &png, &len),
                   VLM_EINVAL);
  assert_int_equal(vlm_explain_png(&img, 0, NULL, grid, 64, &png, &len),
                   VLM_EINVAL);
  free(img.rgb);
}

/* Every family's tower maps (the conformance fixtures: random weights, so
 * only the form is checked, and that the score is the engine's cosine);
 * relevance needs a class token, which SigLIP has not; auto is integrated
 * gradients, bit for bit. */
static void test_families(void **state) {
  (void)state;
  static const char *const dirs[] = {"tests/fixtures/clip-tiny",
                                     "tests/fixtures/siglip-tiny",
                                     "tests/fixtures/chinese-clip-tiny"};
  for (int f = 0; f < 3; f++) {
    vlm_clip *clip = NULL;
    VLM_CHECK(vlm_clip_load(dirs[f], NULL, &clip));
    int S = vlm_clip_image_size(clip), D = vlm_clip_dim(clip);
    char path[256];
    snprintf(path, sizeof path, "%s/photo_rgb.jpg", dirs[f]);
    float *pixels = malloc(sizeof(float) * 3 * (size_t)S * S);
    float *img = malloc(sizeof(float) * (size_t)D);
    float *q = malloc(sizeof(float) * (size_t)D);
    VLM_CHECK(vlm_clip_preprocess_file(clip, path, pixels));
    VLM_CHECK(vlm_clip_encode_pixels(clip, pixels, 1, 0, img));
    const char *text = "a street";
    VLM_CHECK(vlm_clip_encode_texts(clip, &text, 1, 0, q));
    double want = 0;
    for (int d = 0; d < D; d++)
      want += (double)img[d] * q[d];
    vlm_explainer *ex = NULL;
    VLM_CHECK(vlm_explainer_create(clip, 1, &ex));
    int g = vlm_explainer_grid(ex);
    float *map = malloc(sizeof(float) * (size_t)g * g);
    float *ig = malloc(sizeof(float) * (size_t)g * g);
    int siglip = !strcmp(vlm_clip_family(clip), "siglip");
    for (int m = 0; m <= VLM_EXPLAIN_AUTO; m++) {
      float score = 0;
      int rc = vlm_explainer_map(ex, pixels, q, m, map, &score);
      if (siglip && m == VLM_EXPLAIN_RELEVANCE) {
        assert_int_equal(rc, VLM_EUNSUPPORTED);
        continue;
      }
      VLM_CHECK(rc);
      if (fabs(score - want) > 1e-4)
        fail_msg("%s method %d: score %.6f, engine %.6f", dirs[f], m,
                 (double)score, want);
      double total = 0;
      for (int i = 0; i < g * g; i++) {
        assert_true(map[i] >= 0);
        total += map[i];
      }
      assert_true(total == 0 || fabs(total - 1) < 1e-4);
      if (m == VLM_EXPLAIN_INTEGRATED)
        memcpy(ig, map, sizeof(float) * (size_t)g * g);
      if (m == VLM_EXPLAIN_AUTO)
        assert_memory_equal(ig, map, sizeof(float) * (size_t)g * g);
    }
    print_message("%s: %s, %d x %d grid\n", dirs[f], vlm_clip_family(clip),
                  g, g);
    free(map);
    free(ig);
    free(pixels);
    free(img);
    free(q);
    vlm_explainer_free(ex);
    vlm_clip_free(clip);
  }
}

static void test_refusals(void **state) {
  (void)state;
  vlm_clip *clip = NULL;
  assert_int_equal(vlm_clip_load("tests/fixtures/clip-tiny", NULL, &clip), 0);
  vlm_explainer *ex = NULL;
  assert_int_equal(vlm_explainer_create(NULL, 1, &ex), VLM_EINVAL);
  assert_int_equal(vlm_explainer_create(clip, 1, &ex), 0);
  int S = vlm_clip_image_size(clip), D = vlm_clip_dim(clip);
  int g = vlm_explainer_grid(ex);
  float *pixels = calloc((size_t)3 * S * S, sizeof(float));
  float *q = calloc((size_t)D, sizeof(float));
  float *map = calloc((size_t)g * g, sizeof(float));
  q[0] = 1;
  assert_int_equal(vlm_explainer_map(ex, NULL, q, 0, map, NULL), VLM_EINVAL);
  assert_int_equal(vlm_explainer_map(ex, pixels, q, 7, map, NULL),
                   VLM_EINVAL);
  assert_int_equal(vlm_explainer_map(ex, pixels, q, -1, map, NULL),
                   VLM_EINVAL);
  assert_int_equal(vlm_explainer_map(ex, pixels, q, 0, map, NULL), 0);
  double total = 0;
  for (int i = 0; i < g * g; i++) {
    assert_true(map[i] >= 0);
    total += map[i];
  }
  assert_true(total == 0 || fabs(total - 1) < 1e-5);
  pixels[0] = NAN;
  assert_int_equal(vlm_explainer_map(ex, pixels, q, 0, map, NULL),
                   VLM_ENUMERIC);
  free(pixels);
  free(q);
  free(map);
  vlm_explainer_free(ex);
  vlm_explainer_free(NULL);
  vlm_clip_free(clip);
}


/* ---- the command line, the server, and zero-shot tagging ---------------- */

#define NTAG 240 /* items of the tagging database */

/* A database of the tiny model with NTAG fresh squares (colour i % 4) and
 * one text-only item, fields colour:text and colour_p:real. */
static void make_tag_db(const char *name, char *db, size_t cap) {
  snprintf(db, cap, "%.255s/%s", W->dir, name);
  char catalog[320];
  snprintf(catalog, sizeof catalog, "%.255s/squares.jsonl", W->dir);
  if (access(catalog, F_OK) != 0) {
    FILE *f = fopen(catalog, "w");
    assert_non_null(f);
    rng = 0xfeedull;
    for (int i = 0; i < NTAG; i++) {
      char path[320];
      snprintf(path, sizeof path, "%.255s/tag-%03d.png", W->dir, i);
      write_square(path, i % NCOLOURS, (int)(urand() * (SIDE - SQ + 1)),
                   (int)(urand() * (SIDE - SQ + 1)));
      fprintf(f, "{\"key\":\"sq%03d\",\"image\":\"%s\",\"meta\":{\"truth\":"
                 "\"%s\"}}\n",
              i, path, colour_names[i % NCOLOURS]);
    }
    fprintf(f, "{\"key\":\"words\",\"text\":\"a red square\"}\n");
    fclose(f);
  }
  char *init[] = {"init", "--db", db, "--model", W->model, "--field",
                  "colour:text", "--field", "colour_p:real", "--index",
                  "Flat", NULL};
  assert_int_equal(cmd_init(11, init), 0);
  char *ingest[] = {"ingest", "--db", db, catalog, "--quiet", NULL};
  assert_int_equal(cmd_ingest(5, ingest), 0);
}

static void labels_file(char *path, size_t cap) {
  snprintf(path, cap, "%.255s/labels.txt", W->dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("# the colours\nred\n\ngreen\n blue \nyellow\n", f);
  fclose(f);
}

/* key -> metadata JSON of every item */
static char **all_meta(const char *db_dir) {
  vlm_db *db = NULL;
  VLM_CHECK(vlm_db_open(db_dir, NULL, &db));
  char **meta = calloc(NTAG + 1, sizeof *meta);
  for (int i = 0; i <= NTAG; i++) {
    char key[16];
    if (i < NTAG)
      snprintf(key, sizeof key, "sq%03d", i);
    else
      snprintf(key, sizeof key, "words");
    vlm_record *rec = NULL;
    VLM_CHECK(vlm_db_get(db, key, &rec));
    meta[i] = strdup(rec->meta_json);
    vlm_record_free(rec);
  }
  vlm_db_close(db);
  return meta;
}

static void free_meta(char **m) {
  for (int i = 0; i <= NTAG; i++)
    free(m[i]);
  free(m);
}

static char *vlmdb_bin(void) {
  const char *build = getenv("BUILD");
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/vlmdb", build && *build ? build : "build");
  char *abs = realpath(path, NULL);
  if (!abs)
    fail_msg("%s not found: build it first", path);
  return abs;
}

/* The squares tagged by colour, right; a kill -9 in the middle of a run
 * and a rerun leave what one run leaves; --min-score; refusals. */
static void test_tag(void **state) {
  (void)state;
  train_world();
  char db1[300], db2[300], labels[300];
  make_tag_db("tag1.vlmdb", db1, sizeof db1);
  make_tag_db("tag2.vlmdb", db2, sizeof db2);
  labels_file(labels, sizeof labels);
  char *run[] = {"tag", "--db", db1, "--field", "colour", "--labels", labels,
                 "--template", "a {} square", "--score-field", "colour_p",
                 NULL};
  assert_int_equal(cmd_tag(11, run), 0);
  char **one = all_meta(db1);
  int right = 0;
  for (int i = 0; i < NTAG; i++) {
    json_t *m = json_loads(one[i], 0, NULL);
    assert_non_null(m);
    const char *got = json_string_value(json_object_get(m, "colour"));
    double p = json_real_value(json_object_get(m, "colour_p"));
    assert_non_null(got);
    assert_true(p > 0.25 && p <= 1); /* the best of 4 */
    right += !strcmp(got, json_string_value(json_object_get(m, "truth")));
    json_decref(m);
  }
  assert_string_equal(one[NTAG], "{}"); /* no image vector: untouched */
  print_message("tag: %d/%d squares labelled with their colour\n", right,
                NTAG);
  assert_true(right >= NTAG * 9 / 10);
  /* filters work on the new field */
  {
    vlm_db *db = NULL;
    VLM_CHECK(vlm_db_open(db1, NULL, &db));
    vlm_record *rec = NULL;
    VLM_CHECK(vlm_db_get(db, "sq000", &rec));
    vlm_search_options so = {.k = NTAG, .filter = "colour = 'red'",
                             .target = VLM_TARGET_IMAGE};
    vlm_hit *hits = NULL;
    int nh = 0;
    VLM_CHECK(vlm_db_search(db, rec->image_vec, &so, &hits, &nh));
    int reds = 0;
    for (int i = 0; i < NTAG; i++)
      reds += strstr(one[i], "\"colour\":\"red\"") != NULL;
    assert_int_equal(nh, reds);
    vlm_hits_free(hits, nh);
    vlm_record_free(rec);
    vlm_db_close(db);
  }

  /* kill -9 after a few one-item batches, then run again */
  char err[320];
  snprintf(err, sizeof err, "%.255s/tag.stderr", W->dir);
  char *bin = vlmdb_bin();
  vlm_test_spit(err, "", 0); /* there before the child writes to it */
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fe = open(err, O_WRONLY | O_APPEND);
    int fo = open("/dev/null", O_WRONLY);
    if (fe < 0 || fo < 0)
      _exit(127);
    dup2(fe, 2);
    dup2(fo, 1);
    setenv("VLMDB_PROGRESS", "lines", 1);
    setenv("VLMDB_PROGRESS_INTERVAL", "0.01", 1);
    execl(bin, bin, "tag", "--db", db2, "--field", "colour", "--labels",
          labels, "--template", "a {} square", "--score-field", "colour_p",
          "--batch", "1", (char *)NULL);
    _exit(127);
  }
  free(bin);
  long best = -1;
  for (int tries = 0; tries < 3000 && best < 20; tries++) {
    size_t len = 0;
    uint8_t *raw = vlm_test_slurp(err, &len);
    char *text = malloc(len + 1); /* the file's bytes, NUL-terminated */
    assert_non_null(text);
    memcpy(text, raw, len);
    text[len] = '\0';
    free(raw);
    for (char *q = text; (q = strstr(q, "tag: ")); q += 5) {
      long done = strtol(q + 5, NULL, 10);
      best = done > best ? done : best;
    }
    free(text);
    if (best < 20) {
      struct timespec ts = {0, 2 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
  kill(pid, SIGKILL);
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  if (!WIFSIGNALED(st))
    fail_msg("the tag run ended (status %d) before the kill", st);
  char **part = all_meta(db2);
  int done = 0;
  for (int i = 0; i < NTAG; i++)
    done += strcmp(part[i], one[i]) == 0;
  print_message("tag: killed after %ld reported, %d/%d items tagged\n", best,
                done, NTAG);
  assert_true(done >= 20 && done < NTAG);
  free_meta(part);
  char *rerun[] = {"tag", "--db", db2, "--field", "colour", "--labels",
                   labels, "--template", "a {} square", "--score-field",
                   "colour_p", NULL};
  assert_int_equal(cmd_tag(11, rerun), 0);
  char **two = all_meta(db2);
  for (int i = 0; i <= NTAG; i++)
    assert_string_equal(two[i], one[i]);
  free_meta(two);

  /* ingest --tag-field does the same at ingest */
  {
    char db3[300], catalog[320];
    snprintf(db3, sizeof db3, "%.255s/tag3.vlmdb", W->dir);
    snprintf(catalog, sizeof catalog, "%.255s/squares.jsonl", W->dir);
    char *init[] = {"init", "--db", db3, "--model", W->model, "--field",
                    "colour:text", "--field", "colour_p:real", "--index",
                    "Flat", NULL};
    assert_int_equal(cmd_init(11, init), 0);
    char *ingest[] = {"ingest", "--db", db3, catalog, "--quiet",
                      "--tag-field", "colour", "--tag-labels", labels,
                      "--tag-template", "a {} square", "--tag-score-field",
                      "colour_p", NULL};
    assert_int_equal(cmd_ingest(13, ingest), 0);
    char **three = all_meta(db3);
    for (int i = 0; i <= NTAG; i++)
      assert_string_equal(three[i], one[i]);
    free_meta(three);
  }

  /* --retag with --min-score 1: every label goes (nothing is that sure) */
  char *strict[] = {"tag", "--db", db2, "--field", "colour", "--labels",
                    labels, "--template", "a {} square", "--score-field",
                    "colour_p", "--retag", "--min-score", "1", NULL};
  assert_int_equal(cmd_tag(14, strict), 0);
  char **none = all_meta(db2);
  for (int i = 0; i < NTAG; i++)
    assert_null(strstr(none[i], "colour"));
  free_meta(none);

  /* refusals: an undeclared field, a score field of the wrong type, no
   * labels, a template without {} */
  char empty[300];
  snprintf(empty, sizeof empty, "%.255s/empty.txt", W->dir);
  vlm_test_spit(empty, "# nothing\n\n", 11);
  char *bad1[] = {"tag", "--db", db1, "--field", "nope", "--labels", labels,
                  NULL};
  assert_int_equal(cmd_tag(7, bad1), 2);
  char *bad2[] = {"tag", "--db", db1, "--field", "colour", "--labels",
                  labels, "--score-field", "colour", NULL};
  assert_int_equal(cmd_tag(9, bad2), 2);
  char *bad3[] = {"tag", "--db", db1, "--field", "colour", "--labels", empty,
                  NULL};
  assert_int_equal(cmd_tag(7, bad3), 2);
  char *bad4[] = {"tag", "--db", db1, "--field", "colour", "--labels",
                  labels, "--template", "no slot", "--retag", NULL};
  assert_int_equal(cmd_tag(10, bad4), 2);
  char *bad5[] = {"tag", "--db", db1, "--field", "colour", "--labels",
                  labels, "--min-score", "2", NULL};
  assert_int_equal(cmd_tag(9, bad5), 2);
  /* and nothing changed */
  char **after = all_meta(db1);
  for (int i = 0; i <= NTAG; i++)
    assert_string_equal(after[i], one[i]);
  free_meta(after);
  free_meta(one);
}

/* vlmdb explain writes a PNG that decodes; VLM.EXPLAIN answers what the
 * library computes from the stored thumbnail. */
static void test_cli_and_server(void **state) {
  (void)state;
  train_world();
  char db[300], out[320];
  snprintf(db, sizeof db, "%.255s/tag1.vlmdb", W->dir);
  if (access(db, F_OK) != 0)
    make_tag_db("tag1.vlmdb", db, sizeof db);
  snprintf(out, sizeof out, "%.255s/map.png", W->dir);
  char *cli[] = {"explain", "--db", db, "--key", "sq000", "--text",
                 "a red square", "--out", out, "--side", "96", NULL};
  assert_int_equal(cmd_explain(11, cli), 0);
  size_t len = 0;
  uint8_t *png = vlm_test_slurp(out, &len);
  vlm_image img = {0};
  VLM_CHECK(vlm_image_decode(png, len, NULL, &img));
  assert_int_equal(img.w, 96);
  assert_int_equal(img.h, 96);
  vlm_image_free(&img);
  free(png);
  if (getenv("VLM_EXPLAIN_EXAMPLE")) { /* docs/explain-example.png */
    char *ex[] = {"explain", "--db", db, "--key", "sq000", "--text",
                  "a red square", "--out", getenv("VLM_EXPLAIN_EXAMPLE"),
                  "--side", "256", "--grid", NULL};
    assert_int_equal(cmd_explain(12, ex), 0);
  }
  char *bad[] = {"explain", "--db", db, "--key", "sq000", "--text", "x",
                 "--out", out, "--method", "nope", NULL};
  assert_int_equal(cmd_explain(11, bad), 2);
  char *missing[] = {"explain", "--db", db, "--key", "absent", "--text", "x",
                     "--out", out, NULL};
  assert_int_equal(cmd_explain(9, missing), 1);

  /* the library on the stored thumbnail */
  vlm_clip *clip = NULL;
  VLM_CHECK(vlm_clip_load(W->model, NULL, &clip));
  float tv[32];
  const char *text = "a red square";
  VLM_CHECK(vlm_clip_encode_texts(clip, &text, 1, 0, tv));
  vlm_db *vdb = NULL;
  VLM_CHECK(vlm_db_open(db, NULL, &vdb));
  vlm_record *rec = NULL;
  VLM_CHECK(vlm_db_get(vdb, "sq000", &rec));
  vlm_explanation want;
  VLM_CHECK(vlm_explain_image(clip, rec->thumb, rec->thumb_len, tv,
                              VLM_EXPLAIN_AUTO, 224, 1, &want));
  vlm_record_free(rec);
  vlm_db_close(vdb);

  char *bin = vlmdb_bin(), log[320];
  snprintf(log, sizeof log, "%.255s/serve.log", W->dir);
  vlm_test_server srv;
  const char *args[] = {"--db", db, "--port", "0", "--threads", "2", NULL};
  assert_int_equal(vlm_test_server_spawn(&srv, bin, args, log, 60), 0);
  free(bin);
  redisContext *c = redisConnect("127.0.0.1", srv.port);
  assert_true(c && !c->err);
  redisReply *r = redisCommand(c, "VLM.EXPLAIN TEXT %s KEY %s", text,
                               "sq000");
  assert_non_null(r);
  if (r->type == REDIS_REPLY_ERROR)
    fail_msg("VLM.EXPLAIN: %s", r->str);
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 8);
  assert_string_equal(r->element[0]->str, "score");
  assert_true(fabs(atof(r->element[1]->str) - want.score) < 1e-5);
  assert_string_equal(r->element[2]->str, "grid");
  assert_int_equal(r->element[3]->integer, want.grid);
  assert_string_equal(r->element[4]->str, "map");
  assert_int_equal(r->element[5]->len, sizeof(float) * want.grid * want.grid);
  assert_memory_equal(r->element[5]->str, want.map, r->element[5]->len);
  assert_string_equal(r->element[6]->str, "png");
  assert_int_equal(r->element[7]->len, want.png_len);
  assert_memory_equal(r->element[7]->str, want.png, want.png_len);
  freeReplyObject(r);
  /* errors and a missing key */
  r = redisCommand(c, "VLM.EXPLAIN TEXT %s KEY %s", text, "absent");
  assert_int_equal(r->type, REDIS_REPLY_NIL);
  freeReplyObject(r);
  r = redisCommand(c, "VLM.EXPLAIN TEXT %s KEY %s METHOD %s", text, "sq000",
                   "nope");
  assert_int_equal(r->type, REDIS_REPLY_ERROR);
  freeReplyObject(r);
  r = redisCommand(c, "VLM.EXPLAIN KEY %s SIDE %s", "sq000", "64");
  assert_int_equal(r->type, REDIS_REPLY_ERROR);
  freeReplyObject(r);
  r = redisCommand(c, "VLM.EXPLAIN TEXT %s IMAGE %b", text, "garbage",
                   (size_t)7);
  assert_int_equal(r->type, REDIS_REPLY_ERROR);
  print_message("VLM.EXPLAIN on bad image bytes: %s\n", r->str);
  freeReplyObject(r);
  r = redisCommand(c, "PING");
  assert_int_equal(r->type, REDIS_REPLY_STATUS);
  freeReplyObject(r);
  redisFree(c);
  vlm_test_server_stop(&srv, 10);
  vlm_explanation_free(&want);
  vlm_clip_free(clip);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gradient_clip),
      cmocka_unit_test(test_gradient_siglip),
      cmocka_unit_test(test_png_overlay),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_families),
      cmocka_unit_test(test_square_mass),
      cmocka_unit_test(test_tag),
      cmocka_unit_test(test_cli_and_server),
  };
  return cmocka_run_group_tests(tests, world_setup, world_teardown);
}
