/* bench/train.c - training throughput of the CLIP trainer.
 *
 * For a geometry (default: models/default-config.json, the shipped
 * default model's) at batch 128, times whole training steps (forward of
 * both towers, loss, backward, gradient norm, AdamW) on random pixels and
 * random token sequences, with 1 and 2 compute threads, and prints
 * pairs/s and achieved GFLOPS (matmul FLOPs of the step / time) next to
 * the machine's single-call sgemm rate measured here with the same thread
 * count.
 *
 *   build/bench/train [CONFIG.json] [--batch N] [--steps N] [--tokens N]
 *
 * --tokens: mean caption length in tokens (default 24; lengths vary from
 * half to 1.5x, capped at the context length).
 */
#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "train_model.h"
#include "vlm_error.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rs = 88172645463325252ull;
static double urand(void) {
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return (double)(rs >> 11) / 9007199254740992.0;
}

static int geti(json_t *o, const char *k, int *v) {
  json_t *j = json_object_get(o, k);
  if (j)
    *v = (int)json_integer_value(j);
  return 0;
}

static int load_config(const char *path, vlm__clip_config *c) {
  vlm__config_defaults(c);
  json_error_t e;
  json_t *root = json_load_file(path, 0, &e);
  if (!root) {
    fprintf(stderr, "bench/train: %s:%d: %s\n", path, e.line, e.text);
    return -1;
  }
  json_t *t = json_object_get(root, "text_config");
  json_t *v = json_object_get(root, "vision_config");
  geti(root, "projection_dim", &c->projection_dim);
  geti(t, "hidden_size", &c->text_width);
  geti(t, "intermediate_size", &c->text_mlp);
  geti(t, "num_hidden_layers", &c->text_layers);
  geti(t, "num_attention_heads", &c->text_heads);
  geti(t, "max_position_embeddings", &c->context_length);
  geti(t, "vocab_size", &c->vocab_size);
  geti(v, "hidden_size", &c->vision_width);
  geti(v, "intermediate_size", &c->vision_mlp);
  geti(v, "num_hidden_layers", &c->vision_layers);
  geti(v, "num_attention_heads", &c->vision_heads);
  geti(v, "image_size", &c->image_size);
  geti(v, "patch_size", &c->patch_size);
  const char *act = json_string_value(json_object_get(t, "hidden_act"));
  c->text_act = !act || !strcmp(act, "quick_gelu") ? VLM__ACT_QUICK_GELU
                                                : VLM__ACT_GELU;
  act = json_string_value(json_object_get(v, "hidden_act"));
  c->vision_act = !act || !strcmp(act, "quick_gelu") ? VLM__ACT_QUICK_GELU
                                                  : VLM__ACT_GELU;
  json_decref(root);
  return 0;
}

/* The sgemm rate of this machine for the trainer's biggest matmul shape
 * (rows = B * vision tokens, a [C, 4C] weight), T threads in OpenBLAS. */
static double sgemm_gflops(int T, int M, int N, int K) {
  openblas_set_num_threads(T);
  float *a = malloc(sizeof(float) * (size_t)M * K);
  float *b = malloc(sizeof(float) * (size_t)N * K);
  float *c = malloc(sizeof(float) * (size_t)M * N);
  for (size_t i = 0; i < (size_t)M * K; i++)
    a[i] = (float)urand();
  for (size_t i = 0; i < (size_t)N * K; i++)
    b[i] = (float)urand();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K,
              0, c, N);
  int reps = 5;
  double t0 = now_s();
  for (int r = 0; r < reps; r++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b,
                K, 0, c, N);
  double dt = now_s() - t0;
  free(a);
  free(b);
  free(c);
  openblas_set_num_threads(1);
  return 2.0 * M * N * K * reps / dt / 1e9;
}

int main(int argc, char **argv) {
  const char *config = "models/default-config.json";
  int B = 128, steps = 5, mean_tokens = 24;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--batch") && i + 1 < argc)
      B = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
      steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--tokens") && i + 1 < argc)
      mean_tokens = atoi(argv[++i]);
    else
      config = argv[i];
  }
  vlm__clip_config cfg;
  if (load_config(config, &cfg))
    return 1;
  vlm__tlayout *L = NULL;
  if (vlm__tlayout_create(&cfg, 0, 0, &L)) {
    fprintf(stderr, "bench/train: %s\n", vlm_errmsg());
    return 1;
  }
  int S = cfg.image_size, ctx = cfg.context_length;
  size_t npix = (size_t)B * 3 * S * S;
  float *pixels = malloc(sizeof(float) * npix);
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)B * ctx);
  int *off = malloc(sizeof(int) * B), *len = malloc(sizeof(int) * B);
  for (size_t i = 0; i < npix; i++)
    pixels[i] = (float)(urand() * 4 - 2);
  int pos = 0;
  for (int b = 0; b < B; b++) {
    int l = (int)(mean_tokens * (0.5 + urand()));
    l = l < 3 ? 3 : l > ctx ? ctx : l;
    off[b] = pos;
    len[b] = l;
    ids[pos] = cfg.bos_id;
    for (int k = 1; k < l - 1; k++)
      ids[pos + k] = (int32_t)(urand() * 40000);
    ids[pos + l - 1] = cfg.eos_id;
    pos += l;
  }
  vlm__ttexts tx = {B, ids, off, len};
  double flops = vlm__tmodel_step_flops(L, B, pos);
  double mb = 0;
  for (int i = 0; i < L->nparams; i++)
    mb += L->params[i].numel * 2.0 / 1e6;
  printf("geometry %s: vision %dpx/%d, width %d x %d layers; text width %d "
         "x %d layers, context %d; projection %d\n",
         config, S, cfg.patch_size, cfg.vision_width, cfg.vision_layers,
         cfg.text_width, cfg.text_layers, ctx, cfg.projection_dim);
  printf("%zu parameters (%.1f MB in F16); batch %d, %d text tokens; "
         "%.1f GFLOP per step (matmuls)\n\n",
         L->total, mb, B, pos, flops / 1e9);
  printf("threads  step s  pairs/s  GFLOPS  sgemm GFLOPS  share\n");
  for (int T = 1; T <= 2; T++) {
    vlm__tpool *pool = NULL;
    vlm__tmodel_f32 *m = NULL;
    openblas_set_num_threads(1);
    if (vlm__tpool_create(T, &pool) ||
        vlm__tmodel_create_f32(L, pool, B, (int64_t)B * ctx, 1, &m)) {
      fprintf(stderr, "bench/train: %s\n", vlm_errmsg());
      return 1;
    }
    float *p = vlm__tmodel_params_f32(m);
    for (size_t i = 0; i < L->total; i++)
      p[i] = (float)((urand() - 0.5) * 0.04);
    for (int i = 0; i < L->nparams; i++)
      if (strstr(L->params[i].name, "norm") &&
          strstr(L->params[i].name, "weight"))
        for (size_t j = 0; j < L->params[i].numel; j++)
          p[L->params[i].offset + j] = 1;
    p[L->logit_scale] = 2.6592f;
    float *am = calloc(L->total, sizeof(float));
    float *av = calloc(L->total, sizeof(float));
    uint8_t *decay = calloc(L->total, 1);
    double best = 1e30;
    float loss = 0;
    for (int s = 0; s < steps + 1; s++) {
      double t0 = now_s();
      vlm__tmodel_zero_grads_f32(m);
      vlm__tmodel_images_f32(m, pixels, B, NULL);
      vlm__tmodel_texts_f32(m, &tx, NULL);
      loss = vlm__tmodel_loss_f32(m);
      vlm__tmodel_backward_f32(m);
      double norm = sqrt(vlm__tgrad_sumsq(pool, vlm__tmodel_grads_f32(m),
                                          L->total));
      vlm__tadamw h = {1e-4f, 0.9f, 0.98f, 1e-6f, 0.1f,
                       norm > 1 ? (float)(1 / norm) : 1, s + 1};
      vlm__tadamw_update(pool, &h, p, vlm__tmodel_grads_f32(m), am, av, decay,
                         L->total);
      double dt = now_s() - t0;
      if (s > 0 && dt < best) /* the first step warms caches and pages */
        best = dt;
    }
    double peak = sgemm_gflops(T, B * L->vision_tokens, 4 * cfg.vision_width,
                               cfg.vision_width);
    double achieved = flops / best / 1e9;
    printf("%7d  %6.3f  %7.1f  %6.1f  %12.1f  %4.0f%%   (loss %.3f)\n", T,
           best, B / best, achieved, peak, 100 * achieved / peak, loss);
    fflush(stdout);
    free(am);
    free(av);
    free(decay);
    vlm__tmodel_free_f32(m);
    vlm__tpool_free(pool);
  }
  free(pixels);
  free(ids);
  free(off);
  free(len);
  vlm__tlayout_free(L);
  return 0;
}
