/* bench/embed.c - speed of the towers at the ViT-B/32 and SigLIP
 * B/16-224 geometries.
 *
 * Writes a random-weight checkpoint of each geometry in the Hugging Face
 * layout (F16 by default) to a temp dir, loads it, and prints a table:
 * images/s at batch 1 and 16, ms for a 7-token and a 77-token text (CLIP)
 * or for a text (SigLIP, which always runs its 64 positions), with 1 and 2
 * threads; each cell is the min and median of several runs.  The anchor
 * rows, measured once for both, are the machine's sgemm rate at the
 * shapes the vision tower uses (one thread; two threads each on half the
 * columns, as the engine splits them), so the tables can be read against
 * what the hardware gives and against each other.
 *
 * OpenBLAS 0.3.21 does not recognise recent AMD cores and falls back to
 * its AVX2 (Haswell) kernels even where AVX-512 is available; its
 * SkylakeX kernels are about twice as fast there.  The kernel is chosen
 * when the library loads, so when the CPU has AVX-512 and
 * OPENBLAS_CORETYPE is unset this program re-executes itself with
 * OPENBLAS_CORETYPE=SkylakeX (pass --no-coretype to measure the default).
 *
 * The towers multiply by weights packed at load into F16/BF16 panels with
 * their own AVX-512 kernel (embed/kernels.c) when the checkpoint is F16 or
 * BF16; --no-panels measures the sgemm path instead (F32 weights, as an
 * F32 checkpoint or a CPU without AVX-512 runs).  The second anchor row is
 * that kernel's rate at the same shape.
 *
 * --keep DIR writes the checkpoints to DIR/vit-b32 and DIR/siglip-b16
 * and keeps them (a later run reuses them).
 * --model DIR measures an existing model instead (e.g. models/default);
 * --geometry vit-b32|siglip-b16 measures one geometry only.  SigLIP's
 * text cell runs 64 token ids through the tower (vlm__clip_encode_tokens)
 * so it needs no tokenizer file.
 *
 * Each geometry runs in every compute mode of --compute (default
 * exact,bf16,int8: vlm_clip_options.compute, embed/quant.h), each with
 * its table, then one table side by side whose ratios are one thread's
 * CPU time per image (batch 16) and per 7-token text of the exact path
 * over the mode's, from the same run: readable on a busy machine.
 *
 * usage: build/bench/embed [--f32] [--reps N] [--no-coretype] [--no-panels]
 *                          [--keep DIR] [--model DIR] [--geometry NAME]
 *                          [--compute exact,bf16,int8]
 */
#include <cblas.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"
#include "model.h"
#include "vlm_clip.h"
#include "vlm_error.h"

/* A geometry the benchmark writes a checkpoint of. */
typedef struct {
  const char *name, *slug;
  int siglip; /* SiglipModel layout (no class token, MAP head, text head) */
  int WV, LV, HV, FV, IMG, PATCH; /* vision width, layers, heads, MLP, px */
  int WT, LT, HT, FT, VOCAB, CTX; /* text */
  int D;                          /* output dimension */
} geometry;

static const geometry geometries[] = {
    {"ViT-B/32", "vit-b32", 0, 768, 12, 12, 3072, 224, 32,
     512, 12, 8, 2048, 49408, 77, 512},
    /* google/siglip-base-patch16-224 */
    {"SigLIP B/16-224", "siglip-b16", 1, 768, 12, 12, 3072, 224, 16,
     768, 12, 12, 3072, 32000, 64, 768},
};
#define NGEOMETRIES (int)(sizeof geometries / sizeof geometries[0])

/* GFLOP of one image through the vision tower: T tokens through L blocks
 * (2*T*(4*C^2 + 2*C*F) each, attention 4*T^2*C), the patch embedding,
 * and CLIP's projection of the class token or SigLIP's pooling head (its
 * keys and values over every token).  ViT-B/32: 8.49 + 0.09 + 0.23 = 8.82. */
static double vision_gflop(const geometry *g) {
  double G = g->IMG / g->PATCH, T = G * G + (g->siglip ? 0 : 1), C = g->WV,
         F = g->FV;
  double f = g->LV * (2 * T * (4 * C * C + 2 * C * F) + 4 * T * T * C) +
             2 * G * G * C * 3.0 * g->PATCH * g->PATCH;
  f += g->siglip ? 2 * T * C * 2 * C + 2 * (2 * C * C + 2 * C * F)
                 : 2 * C * g->D;
  return f * 1e-9;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* CPU time of the process: with one compute thread, the time the work
 * took when it ran, whatever else the machine was doing. */
static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float urand(void) { /* uniform in [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static uint16_t to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int e = (int)((x >> 23) & 0xff) - 127 + 15;
  uint32_t m = x & 0x7fffff;
  if (e <= 0)
    return (uint16_t)sign; /* tiny values flush to zero; fine for noise */
  if (e >= 31)
    return (uint16_t)(sign | 0x7bff);
  uint32_t h = sign | (uint32_t)e << 10 | m >> 13;
  uint32_t rest = m & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
    h++;
  return (uint16_t)h;
}

/* ---- checkpoint writer ------------------------------------------------- */

typedef struct {
  json_t *header;
  FILE *data;
  uint64_t offset;
  int f32;
} writer;

/* kind: 0 noise * scale, 1 ones (LN weight), 2 zeros (bias) */
static void put(writer *w, const char *name, int kind, float scale, int ndim,
                const int64_t *shape) {
  int64_t n = 1;
  json_t *js = json_array();
  for (int i = 0; i < ndim; i++) {
    n *= shape[i];
    json_array_append_new(js, json_integer(shape[i]));
  }
  size_t es = w->f32 ? 4 : 2;
  json_t *e = json_object();
  json_object_set_new(e, "dtype", json_string(w->f32 ? "F32" : "F16"));
  json_object_set_new(e, "shape", js);
  json_t *off = json_array();
  json_array_append_new(off, json_integer((json_int_t)w->offset));
  json_array_append_new(off, json_integer((json_int_t)(w->offset + n * es)));
  json_object_set_new(e, "data_offsets", off);
  json_object_set_new(w->header, name, e);
  enum { CHUNK = 1 << 16 };
  static uint8_t buf[CHUNK * 4];
  for (int64_t i = 0; i < n;) {
    int64_t m = n - i < CHUNK ? n - i : CHUNK;
    for (int64_t k = 0; k < m; k++) {
      float v = kind == 0 ? urand() * scale : kind == 1 ? 1.0f + 0.1f * urand()
                                                        : 0.02f * urand();
      if (w->f32) {
        memcpy(buf + 4 * k, &v, 4);
      } else {
        uint16_t h = to_half(v);
        memcpy(buf + 2 * k, &h, 2);
      }
    }
    fwrite(buf, es, (size_t)m, w->data);
    i += m;
  }
  w->offset += (uint64_t)n * es;
}

#define S(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
               (const int64_t[]){__VA_ARGS__}

static void put_blocks(writer *w, const char *tower, int layers, int C,
                       int F) {
  char n[160];
  const float sc = 1.0f / sqrtf((float)C), sf = 1.0f / sqrtf((float)F);
  for (int l = 0; l < layers; l++) {
#define N(x) (snprintf(n, sizeof n, "%s.encoder.layers.%d.%s", tower, l, x), n)
    put(w, N("layer_norm1.weight"), 1, 0, S(C));
    put(w, N("layer_norm1.bias"), 2, 0, S(C));
    put(w, N("self_attn.q_proj.weight"), 0, sc, S(C, C));
    put(w, N("self_attn.q_proj.bias"), 2, 0, S(C));
    put(w, N("self_attn.k_proj.weight"), 0, sc, S(C, C));
    put(w, N("self_attn.k_proj.bias"), 2, 0, S(C));
    put(w, N("self_attn.v_proj.weight"), 0, sc, S(C, C));
    put(w, N("self_attn.v_proj.bias"), 2, 0, S(C));
    put(w, N("self_attn.out_proj.weight"), 0, sc, S(C, C));
    put(w, N("self_attn.out_proj.bias"), 2, 0, S(C));
    put(w, N("layer_norm2.weight"), 1, 0, S(C));
    put(w, N("layer_norm2.bias"), 2, 0, S(C));
    put(w, N("mlp.fc1.weight"), 0, sc, S(F, C));
    put(w, N("mlp.fc1.bias"), 2, 0, S(F));
    put(w, N("mlp.fc2.weight"), 0, sf, S(C, F));
    put(w, N("mlp.fc2.bias"), 2, 0, S(C));
#undef N
  }
}

/* SiglipModel's own tensors: patch bias, no class token or pre-LN, the
 * attention-pooling head, text_model.head, logit_bias. */
static void put_siglip(writer *w, const geometry *g) {
  const int WV = g->WV, WT = g->WT, FV = g->FV, G = g->IMG / g->PATCH;
  put(w, "logit_scale", 1, 0, 0, NULL);
  put(w, "logit_bias", 2, 0, 0, NULL);
  put(w, "vision_model.embeddings.patch_embedding.weight", 0, 0.02f,
      S(WV, 3, g->PATCH, g->PATCH));
  put(w, "vision_model.embeddings.patch_embedding.bias", 2, 0, S(WV));
  put(w, "vision_model.embeddings.position_embedding.weight", 0, 0.02f,
      S(G * G, WV));
  put_blocks(w, "vision_model", g->LV, WV, FV);
  put(w, "vision_model.post_layernorm.weight", 1, 0, S(WV));
  put(w, "vision_model.post_layernorm.bias", 2, 0, S(WV));
  put(w, "vision_model.head.probe", 0, 0.02f, S(1, 1, WV));
  put(w, "vision_model.head.attention.in_proj_weight", 0,
      1.0f / sqrtf((float)WV), S(3 * WV, WV));
  put(w, "vision_model.head.attention.in_proj_bias", 2, 0, S(3 * WV));
  put(w, "vision_model.head.attention.out_proj.weight", 0,
      1.0f / sqrtf((float)WV), S(WV, WV));
  put(w, "vision_model.head.attention.out_proj.bias", 2, 0, S(WV));
  put(w, "vision_model.head.layernorm.weight", 1, 0, S(WV));
  put(w, "vision_model.head.layernorm.bias", 2, 0, S(WV));
  put(w, "vision_model.head.mlp.fc1.weight", 0, 1.0f / sqrtf((float)WV),
      S(FV, WV));
  put(w, "vision_model.head.mlp.fc1.bias", 2, 0, S(FV));
  put(w, "vision_model.head.mlp.fc2.weight", 0, 1.0f / sqrtf((float)FV),
      S(WV, FV));
  put(w, "vision_model.head.mlp.fc2.bias", 2, 0, S(WV));
  put(w, "text_model.embeddings.token_embedding.weight", 0, 0.02f,
      S(g->VOCAB, WT));
  put(w, "text_model.embeddings.position_embedding.weight", 0, 0.01f,
      S(g->CTX, WT));
  put_blocks(w, "text_model", g->LT, WT, g->FT);
  put(w, "text_model.final_layer_norm.weight", 1, 0, S(WT));
  put(w, "text_model.final_layer_norm.bias", 2, 0, S(WT));
  put(w, "text_model.head.weight", 0, 1.0f / sqrtf((float)WT), S(g->D, WT));
  put(w, "text_model.head.bias", 2, 0, S(g->D));
}

static void put_clip(writer *w, const geometry *g) {
  const int WV = g->WV, WT = g->WT, G = g->IMG / g->PATCH;
  put(w, "logit_scale", 1, 0, 0, NULL);
  put(w, "vision_model.embeddings.class_embedding", 0, 0.02f, S(WV));
  put(w, "vision_model.embeddings.patch_embedding.weight", 0, 0.02f,
      S(WV, 3, g->PATCH, g->PATCH));
  put(w, "vision_model.embeddings.position_embedding.weight", 0, 0.02f,
      S(G * G + 1, WV));
  put(w, "vision_model.pre_layrnorm.weight", 1, 0, S(WV));
  put(w, "vision_model.pre_layrnorm.bias", 2, 0, S(WV));
  put_blocks(w, "vision_model", g->LV, WV, g->FV);
  put(w, "vision_model.post_layernorm.weight", 1, 0, S(WV));
  put(w, "vision_model.post_layernorm.bias", 2, 0, S(WV));
  put(w, "visual_projection.weight", 0, 0.03f, S(g->D, WV));
  put(w, "text_model.embeddings.token_embedding.weight", 0, 0.02f,
      S(g->VOCAB, WT));
  put(w, "text_model.embeddings.position_embedding.weight", 0, 0.01f,
      S(g->CTX, WT));
  put_blocks(w, "text_model", g->LT, WT, g->FT);
  put(w, "text_model.final_layer_norm.weight", 1, 0, S(WT));
  put(w, "text_model.final_layer_norm.bias", 2, 0, S(WT));
  put(w, "text_projection.weight", 0, 0.04f, S(g->D, WT));
}

static int write_model(const char *dir, const geometry *g, int f32) {
  char path[PATH_MAX], tmp[PATH_MAX];
  writer w = {json_object(), NULL, 0, f32};
  snprintf(tmp, sizeof tmp, "%s/data.bin", dir);
  w.data = fopen(tmp, "wb");
  if (!w.data)
    return -1;
  if (g->siglip)
    put_siglip(&w, g);
  else
    put_clip(&w, g);
  fclose(w.data);

  /* header, padded to 8 bytes as the reference writer does */
  char *h = json_dumps(w.header, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(w.header);
  size_t hlen = strlen(h), padded = (hlen + 7) & ~(size_t)7;
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  FILE *out = fopen(path, "wb"), *in = fopen(tmp, "rb");
  if (!out || !in)
    return -1;
  uint8_t len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  fwrite(len8, 1, 8, out);
  fwrite(h, 1, hlen, out);
  for (size_t i = hlen; i < padded; i++)
    fputc(' ', out);
  free(h);
  static uint8_t buf[1 << 20];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, in)) > 0)
    fwrite(buf, 1, got, out);
  fclose(in);
  fclose(out);
  unlink(tmp);

  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *cfg = fopen(path, "w");
  if (!cfg)
    return -1;
  if (g->siglip) {
    /* as sparse as the published config: the rest are transformers'
     * defaults (64 text positions, gelu_pytorch_tanh, eps 1e-6) */
    fprintf(cfg,
            "{\"architectures\": [\"SiglipModel\"], \"model_type\": \"siglip\",\n"
            " \"text_config\": {\"hidden_size\": %d, \"intermediate_size\": %d,"
            " \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
            " \"vocab_size\": %d, \"model_type\": \"siglip_text_model\"},\n"
            " \"vision_config\": {\"hidden_size\": %d, \"intermediate_size\": %d,"
            " \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
            " \"image_size\": %d, \"patch_size\": %d,"
            " \"model_type\": \"siglip_vision_model\"}}\n",
            g->WT, g->FT, g->LT, g->HT, g->VOCAB, g->WV, g->FV, g->LV, g->HV,
            g->IMG, g->PATCH);
    fclose(cfg);
    return 0; /* its tokenizer is not needed: texts run as token ids */
  }
  const int WV = g->WV, LV = g->LV, HV = g->HV, FV = g->FV, IMG = g->IMG,
            PATCH = g->PATCH, WT = g->WT, LT = g->LT, HT = g->HT, FT = g->FT,
            VOCAB = g->VOCAB, CTX = g->CTX, D = g->D;
  fprintf(cfg,
          "{\"projection_dim\": %d,\n"
          " \"text_config\": {\"hidden_size\": %d, \"intermediate_size\": %d,"
          " \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
          " \"max_position_embeddings\": %d, \"vocab_size\": %d,"
          " \"hidden_act\": \"quick_gelu\"},\n"
          " \"vision_config\": {\"hidden_size\": %d, \"intermediate_size\": %d,"
          " \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
          " \"image_size\": %d, \"patch_size\": %d,"
          " \"hidden_act\": \"quick_gelu\"}}\n",
          D, WT, FT, LT, HT, CTX, VOCAB, WV, FV, LV, HV, IMG, PATCH);
  fclose(cfg);
  /* The tokenizer files are the standard CLIP ones from the fixtures. */
  static const char *tok[2] = {"vocab.json", "merges.txt"};
  for (int i = 0; i < 2; i++) {
    char src[PATH_MAX], abs[PATH_MAX];
    snprintf(src, sizeof src, "tests/fixtures/clip-tiny/%s", tok[i]);
    if (!realpath(src, abs)) {
      fprintf(stderr, "bench: %s not found (run from the repo root)\n", src);
      return -1;
    }
    snprintf(path, sizeof path, "%s/%s", dir, tok[i]);
    if (symlink(abs, path))
      return -1;
  }
  return 0;
}

/* ---- measurement --------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct {
  double min, median;
} stat2;

static stat2 summarize(double *t, int n) {
  qsort(t, (size_t)n, sizeof *t, cmp_double);
  stat2 s = {t[0], n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2])};
  return s;
}

typedef struct {
  int M, N, K, reps;
  const float *a, *b;
  float *c;
  int col0, cols;
} gemm_job;

static void *gemm_thread(void *p) {
  gemm_job *j = p;
  for (int r = 0; r < j->reps; r++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->M, j->cols, j->K,
                1.0f, j->a, j->K, j->b + (size_t)j->col0 * j->K, j->K, 0.0f,
                j->c + j->col0, j->N);
  return NULL;
}

/* GFLOPS of out[M,N] = a[M,K] · b[N,K]ᵀ on `threads` threads splitting N,
 * each calling single-threaded sgemm (as the towers do). */
static stat2 sgemm_gflops(int M, int N, int K, int threads, int reps) {
  float *a = malloc((size_t)M * K * 4), *b = malloc((size_t)N * K * 4),
        *c = malloc((size_t)M * N * 4);
  for (size_t i = 0; i < (size_t)M * K; i++)
    a[i] = urand();
  for (size_t i = 0; i < (size_t)N * K; i++)
    b[i] = urand();
  double t[64];
  for (int r = 0; r < reps; r++) {
    gemm_job jobs[2];
    pthread_t th[2];
    double t0 = now();
    for (int k = 0; k < threads; k++) {
      int c0 = N * k / threads, c1 = N * (k + 1) / threads;
      jobs[k] = (gemm_job){M, N, K, 4, a, b, c, c0, c1 - c0};
      if (k)
        pthread_create(&th[k], NULL, gemm_thread, &jobs[k]);
    }
    gemm_thread(&jobs[0]);
    for (int k = 1; k < threads; k++)
      pthread_join(th[k], NULL);
    double dt = (now() - t0) / 4;
    t[r] = 2.0 * M * N * K / dt * 1e-9;
  }
  free(a);
  free(b);
  free(c);
  stat2 s = summarize(t, reps);
  /* For a rate the best is the max: report (max, median). */
  return (stat2){t[reps - 1], s.median};
}

typedef struct {
  int M, N, K, reps, n0, n1;
  const float *a;
  const uint16_t *panels;
  float *c;
} panel_job;

static void *panel_thread(void *p) {
  panel_job *j = p;
  for (int r = 0; r < j->reps; r++)
    vlm__matmul_panels(j->c, j->N, j->a, j->K, j->panels, 0, NULL, j->M,
                       j->n0, j->n1, j->K, 0, NULL);
  return NULL;
}

/* The same product through the packed-F16 panel kernel. */
static stat2 panel_gflops(int M, int N, int K, int threads, int reps) {
  float *a = malloc((size_t)M * K * 4), *c = malloc((size_t)M * N * 4);
  uint16_t *w = malloc((size_t)N * K * 2), *p = malloc((size_t)N * K * 2);
  const uint16_t **rows = malloc((size_t)N * sizeof *rows);
  for (size_t i = 0; i < (size_t)M * K; i++)
    a[i] = urand();
  for (size_t i = 0; i < (size_t)N * K; i++)
    w[i] = to_half(urand());
  for (int n = 0; n < N; n++)
    rows[n] = w + (size_t)n * K;
  vlm__panel_pack(p, rows, N, K);
  double t[64];
  for (int r = 0; r < reps; r++) {
    panel_job jobs[2];
    pthread_t th[2];
    double t0 = now();
    int np = N / VLM__PANEL;
    for (int k = 0; k < threads; k++) {
      jobs[k] = (panel_job){M, N, K, 4, np * k / threads * VLM__PANEL,
                            np * (k + 1) / threads * VLM__PANEL, a, p, c};
      if (k)
        pthread_create(&th[k], NULL, panel_thread, &jobs[k]);
    }
    panel_thread(&jobs[0]);
    for (int k = 1; k < threads; k++)
      pthread_join(th[k], NULL);
    t[r] = 2.0 * M * N * K / ((now() - t0) / 4) * 1e-9;
  }
  free(a);
  free(c);
  free(w);
  free(p);
  free(rows);
  stat2 s = summarize(t, reps);
  return (stat2){t[reps - 1], s.median};
}

/* Two callers sharing one model, each encoding batches of 16. */
typedef struct {
  const vlm_clip *clip;
  const float *pixels;
  float *out;
  int batches;
} caller_job;

static void *caller_thread(void *p) {
  caller_job *j = p;
  for (int b = 0; b < j->batches; b++)
    vlm_clip_encode_pixels(j->clip, j->pixels, 16, 0, j->out);
  return NULL;
}

/* The anchors: the machine's rates for the 800x3072x768 product. */
typedef struct {
  stat2 rate[2]; /* 1 and 2 threads: the one the towers' matmuls use */
  const char *name;
} anchor;

/* The SigLIP checkpoint the benchmark writes has no tokenizer (its text
 * cell runs token ids): its towers load alone. */
static int load(const char *dir, const geometry *g, const vlm_clip_options *o,
                vlm_clip **out) {
  return g && g->siglip ? vlm__clip_load_towers(dir, o, out)
                        : vlm_clip_load(dir, o, out);
}

/* Measure the model in dir and print its table.  g: the geometry the
 * benchmark wrote there (NULL: a model given with --model). */
/* One mode's numbers for the summary across compute modes. */
typedef struct {
  double b1_ips, b16_ips[2], text7_ms, cpu_b16_ms, cpu_text_ms;
} summary;

static int measure(const char *dir, const geometry *g, int reps,
                   const anchor *an, vlm_compute_mode mode, summary *sum) {
  vlm_clip *probe_clip = NULL;
  vlm_clip_options po = {.compute = mode};
  if (load(dir, g, &po, &probe_clip)) {
    fprintf(stderr, "bench: load: %s\n", vlm_errmsg());
    return 1;
  }
  const int S = vlm_clip_image_size(probe_clip), D = vlm_clip_dim(probe_clip),
            ctx = vlm_clip_context_length(probe_clip);
  const int siglip = !strcmp(vlm_clip_family(probe_clip), "siglip");
  printf("\n%s: %s, %d px, %d text positions, dimension %d, %s compute\n",
         g ? g->name : dir, vlm_clip_family(probe_clip), S, ctx, D,
         vlm_clip_compute(probe_clip));
  vlm_clip_free(probe_clip);
  const size_t per = (size_t)3 * S * S;
  float *pixels = malloc(16 * per * sizeof *pixels);
  for (size_t i = 0; i < 16 * per; i++)
    pixels[i] = 1.5f * urand();
  float *out = malloc(16 * (size_t)D * sizeof *out);
  char long_text[1024] = "";
  for (int i = 0; i < 100; i++)
    strcat(long_text, "word ");
  const char *short_text = "a photo of a cat"; /* 7 tokens */
  /* SigLIP runs every position whatever the text: one text of 64 ids
   * (a few words, then the pad id, as its tokenizer pads) */
  int32_t sig_ids[1024];
  const int32_t *sig_rows[1] = {sig_ids};
  int sig_n = ctx < 1024 ? ctx : 1024;
  for (int i = 0; i < sig_n; i++)
    sig_ids[i] = i < 7 ? 100 + 37 * i : 1;

  stat2 cell[4][2];
  double cpu_ms[4] = {0, 0, 0, 0};
  double load_s[2] = {0, 0};
  for (int th = 1; th <= 2; th++) {
    vlm_clip_options o = {.threads = th, .compute = mode};
    vlm_clip *clip = NULL;
    double t0 = now();
    if (load(dir, g, &o, &clip)) {
      fprintf(stderr, "bench: load: %s\n", vlm_errmsg());
      return 1;
    }
    load_s[th - 1] = now() - t0;
    if (!siglip) {
      int32_t ids[80];
      int n_ids = 0;
      vlm_clip_tokenize(clip, short_text, ids, 80, &n_ids);
      if (n_ids != 7)
        fprintf(stderr, "bench: short text has %d tokens\n", n_ids);
    }
    double t[64];
    /* warm-up: page in the weights */
    vlm_clip_encode_pixels(clip, pixels, 1, 0, out);
    const char *lt = long_text;
    if (siglip)
      vlm__clip_encode_tokens(clip, sig_rows, &sig_n, 1, 0, out);
    else
      vlm_clip_encode_texts(clip, &lt, 1, 0, out);
    for (int k = 0; k < 4; k++) {
      if (siglip && k == 3) { /* one text cell: every text is 64 positions */
        cell[3][th - 1] = cell[2][th - 1];
        cpu_ms[3] = cpu_ms[2];
        continue;
      }
      for (int r = 0; r < reps; r++) {
        double a = now(), ca = cpu_now();
        int rc = 0;
        switch (k) {
        case 0: rc = vlm_clip_encode_pixels(clip, pixels, 1, 0, out); break;
        case 1: rc = vlm_clip_encode_pixels(clip, pixels, 16, 0, out); break;
        case 2:
          rc = siglip ? vlm__clip_encode_tokens(clip, sig_rows, &sig_n, 1, 0,
                                                out)
                      : vlm_clip_encode_texts(clip, &short_text, 1, 0, out);
          break;
        default: rc = vlm_clip_encode_texts(clip, &lt, 1, 0, out); break;
        }
        if (rc) {
          fprintf(stderr, "bench: encode: %s\n", vlm_errmsg());
          return 1;
        }
        double per = k == 1 ? 16.0 : 1.0;
        t[r] = (now() - a) * 1e3 / per;
        double c = (cpu_now() - ca) * 1e3 / per;
        if (th == 1 && (r == 0 || c < cpu_ms[k]))
          cpu_ms[k] = c;
      }
      cell[k][th - 1] = summarize(t, reps);
    }
    vlm_clip_free(clip);
  }
  /* Concurrent callers: two threads on one model loaded with threads=1
   * (each call single-threaded, as a server's workers would run it). */
  double conc[64];
  {
    vlm_clip_options o = {.threads = 1, .compute = mode};
    vlm_clip *clip = NULL;
    if (load(dir, g, &o, &clip)) {
      fprintf(stderr, "bench: load: %s\n", vlm_errmsg());
      return 1;
    }
    float *out2 = malloc(16 * (size_t)D * sizeof *out2);
    for (int r = 0; r < reps; r++) {
      caller_job a = {clip, pixels, out, 1}, b = {clip, pixels, out2, 1};
      pthread_t th;
      double t1 = now();
      pthread_create(&th, NULL, caller_thread, &b);
      caller_thread(&a);
      pthread_join(th, NULL);
      conc[r] = 32.0 / (now() - t1);
    }
    free(out2);
    vlm_clip_free(clip);
  }
  stat2 cs = summarize(conc, reps);

  /* images/s from ms per image: the best rate is 1000 / min ms. */
  printf("%-34s %14s %14s\n", "", "1 thread", "2 threads");
  printf("%-34s %6.1f / %5.1f %6.1f / %5.1f\n", "images/s, batch 1 (best/med)",
         1e3 / cell[0][0].min, 1e3 / cell[0][0].median, 1e3 / cell[0][1].min,
         1e3 / cell[0][1].median);
  printf("%-34s %6.1f / %5.1f %6.1f / %5.1f\n",
         "images/s, batch 16 (best/med)", 1e3 / cell[1][0].min,
         1e3 / cell[1][0].median, 1e3 / cell[1][1].min,
         1e3 / cell[1][1].median);
  printf("%-34s %6s   %5s %6.1f / %5.1f\n",
         "images/s, 2 callers x 1 thread, b16", "", "", conc[reps - 1],
         cs.median);
  printf("%-34s %6.1f / %5.1f %6.1f / %5.1f\n", "ms per image, batch 1",
         cell[0][0].min, cell[0][0].median, cell[0][1].min, cell[0][1].median);
  if (siglip) {
    char label[48];
    snprintf(label, sizeof label, "ms, text (%d positions)", sig_n);
    printf("%-34s %6.2f / %5.2f %6.2f / %5.2f\n", label, cell[2][0].min,
           cell[2][0].median, cell[2][1].min, cell[2][1].median);
  } else {
    printf("%-34s %6.2f / %5.2f %6.2f / %5.2f\n", "ms, 7-token text",
           cell[2][0].min, cell[2][0].median, cell[2][1].min,
           cell[2][1].median);
    printf("%-34s %6.2f / %5.2f %6.2f / %5.2f\n", "ms, 77-token text",
           cell[3][0].min, cell[3][0].median, cell[3][1].min,
           cell[3][1].median);
  }
  printf("%-34s %6.2f %16.2f\n", "load s (convert, pack)", load_s[0],
         load_s[1]);
  if (siglip)
    printf("%-34s %6.1f / %5.1f / %5.2f ms\n",
           "1 thread CPU time, min (b1/b16/text)", cpu_ms[0], cpu_ms[1],
           cpu_ms[2]);
  else
    printf("%-34s %6.1f / %5.1f / %5.2f / %5.2f ms\n",
           "1 thread CPU time, min (b1/b16/7t/77t)", cpu_ms[0], cpu_ms[1],
           cpu_ms[2], cpu_ms[3]);
  if (g) { /* the FLOP count is the written geometry's */
    double gflop = vision_gflop(g);
    printf("vision at batch 16 (best) runs at %.0f%% (1 thread) and %.0f%% "
           "(2 threads) of the best %s rate (%.2f GFLOP per image)\n",
           100.0 * gflop / (cell[1][0].min * 1e-3) / an->rate[0].min,
           100.0 * gflop / (cell[1][1].min * 1e-3) / an->rate[1].min,
           an->name, gflop);
  }
  sum->b1_ips = 1e3 / cell[0][0].min;
  sum->b16_ips[0] = 1e3 / cell[1][0].min;
  sum->b16_ips[1] = 1e3 / cell[1][1].min;
  sum->text7_ms = cell[2][0].min;
  sum->cpu_b16_ms = cpu_ms[1];
  sum->cpu_text_ms = cpu_ms[2];
  free(pixels);
  free(out);
  return 0;
}

static const vlm_compute_mode modes[3] = {VLM_COMPUTE_EXACT, VLM_COMPUTE_BF16,
                                          VLM_COMPUTE_INT8};
static const char *const mode_names[3] = {"exact", "bf16", "int8"};

/* Every compute mode asked for, then one table of them side by side: the
 * ratios are of one thread's CPU time (what the work cost, whatever else
 * the machine ran) to the exact path's in the same run. */
static int measure_modes(const char *dir, const geometry *g, int reps,
                         const anchor *an, unsigned mode_mask) {
  summary sums[3];
  int status = 0;
  for (int m = 0; m < 3 && !status; m++)
    if (mode_mask & (1u << m))
      status = measure(dir, g, reps, an, modes[m], &sums[m]);
  if (status || (mode_mask & (mode_mask - 1)) == 0)
    return status;
  printf("\n%s, compute modes side by side (best of %d; x: exact CPU time "
         "over this one's, 1 thread)\n", g ? g->name : dir, reps);
  printf("%-7s %10s %10s %10s %9s %9s %8s %8s\n", "compute", "img/s b1",
         "img/s b16", "b16 2th", "ms 7-tok", "CPU ms/im", "x image", "x text");
  for (int m = 0; m < 3; m++) {
    if (!(mode_mask & (1u << m)))
      continue;
    const summary *s = &sums[m];
    printf("%-7s %10.1f %10.1f %10.1f %9.2f %9.2f", mode_names[m], s->b1_ips,
           s->b16_ips[0], s->b16_ips[1], s->text7_ms, s->cpu_b16_ms);
    if (mode_mask & 1u)
      printf(" %8.2f %8.2f", sums[0].cpu_b16_ms / s->cpu_b16_ms,
             sums[0].cpu_text_ms / s->cpu_text_ms);
    printf("\n");
  }
  return 0;
}

int main(int argc, char **argv) {
  int f32 = 0, reps = 7, coretype = 1, panels = 1;
  const char *keep = NULL, *model = NULL, *only = NULL;
  unsigned mode_mask = 7; /* exact, bf16, int8 */
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--f32"))
      f32 = 1;
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--no-coretype"))
      coretype = 0;
    else if (!strcmp(argv[i], "--no-panels"))
      panels = 0;
    else if (!strcmp(argv[i], "--keep") && i + 1 < argc)
      keep = argv[++i];
    else if (!strcmp(argv[i], "--model") && i + 1 < argc)
      model = argv[++i];
    else if (!strcmp(argv[i], "--geometry") && i + 1 < argc)
      only = argv[++i];
    else if (!strcmp(argv[i], "--compute") && i + 1 < argc) {
      const char *list = argv[++i];
      mode_mask = 0;
      for (int m = 0; m < 3; m++)
        if (strstr(list, mode_names[m]))
          mode_mask |= 1u << m;
      if (!mode_mask) {
        fprintf(stderr, "bench: --compute is a list of exact, bf16, int8\n");
        return 2;
      }
    } else {
      fprintf(stderr, "usage: %s [--f32] [--reps N] [--no-coretype] "
              "[--no-panels] [--keep DIR] [--model DIR] "
              "[--geometry vit-b32|siglip-b16] [--compute exact,bf16,int8]\n",
              argv[0]);
      return 2;
    }
  }
  int known = !only;
  for (int i = 0; i < NGEOMETRIES && only; i++)
    known |= !strcmp(only, geometries[i].slug);
  if (!known) {
    fprintf(stderr, "bench: --geometry is vit-b32 or siglip-b16\n");
    return 2;
  }
  if (reps < 3)
    reps = 3;
  if (reps > 64)
    reps = 64;
  const char *core = openblas_get_corename();
  if (coretype && !getenv("OPENBLAS_CORETYPE") &&
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      core && (!strcmp(core, "Haswell") || !strcmp(core, "Zen"))) {
    setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
    execv("/proc/self/exe", argv);
    perror("bench: re-exec"); /* carry on with the default kernels */
  }
  openblas_set_num_threads(1);
  if (!panels)
    setenv("VLMDB_CLIP_PANELS", "0", 1);

  char root[PATH_MAX];
  if (model) {
    snprintf(root, sizeof root, "%s", model);
    printf("vlmdb embed benchmark: the model in %s\n", root);
  } else {
    if (keep) {
      snprintf(root, sizeof root, "%s", keep);
      mkdir(root, 0755);
    } else {
      snprintf(root, sizeof root, "/tmp/vlm-bench-embed-XXXXXX");
      if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
      }
    }
    printf("vlmdb embed benchmark: random %s weights in %s\n",
           f32 ? "F32" : "F16", root);
  }
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  printf("OpenBLAS %s core, %ld CPUs online, %d runs per cell "
         "(min / median); matmuls: %s\n\n", openblas_get_corename(), ncpu,
         reps, panels && vlm__panels_supported() && !f32
                   ? "F16 panels (AVX-512 kernel)" : "OpenBLAS sgemm on F32");

  stat2 g1 = sgemm_gflops(800, 3072, 768, 1, reps);
  stat2 g2 = sgemm_gflops(800, 3072, 768, 2, reps);
  printf("%-34s %14s %14s\n", "", "1 thread", "2 threads");
  printf("%-34s %6.0f / %5.0f %6.0f / %5.0f\n",
         "sgemm 800x3072x768 GFLOPS (max/med)", g1.min, g1.median, g2.min,
         g2.median);
  anchor an = {{g1, g2}, "sgemm"};
  if (vlm__panels_supported()) {
    stat2 p1 = panel_gflops(800, 3072, 768, 1, reps);
    stat2 p2 = panel_gflops(800, 3072, 768, 2, reps);
    if (panels && !f32)
      an = (anchor){{p1, p2}, "panel kernel"};
    printf("%-34s %6.0f / %5.0f %6.0f / %5.0f\n",
           "panels 800x3072x768 GFLOPS", p1.min, p1.median, p2.min,
           p2.median);
  }

  if (model)
    return measure_modes(root, NULL, reps, &an, mode_mask);
  int status = 0;
  for (int i = 0; i < NGEOMETRIES && !status; i++) {
    const geometry *g = &geometries[i];
    if (only && strcmp(only, g->slug))
      continue;
    char dir[PATH_MAX + 16], probe[PATH_MAX + 48];
    snprintf(dir, sizeof dir, "%s/%s", root, g->slug);
    mkdir(dir, 0755);
    snprintf(probe, sizeof probe, "%s/model.safetensors", dir);
    double t0 = now();
    if (access(probe, R_OK) != 0) {
      if (write_model(dir, g, f32)) {
        fprintf(stderr, "bench: cannot write the checkpoint in %s\n", dir);
        return 1;
      }
      printf("\n(%s checkpoint written in %.1f s)", g->name, now() - t0);
    }
    status = measure_modes(dir, g, reps, &an, mode_mask);
    if (!keep) { /* only the temporary model this run wrote */
      static const char *files[] = {"model.safetensors", "config.json",
                                    "vocab.json", "merges.txt"};
      for (int f = 0; f < 4; f++) {
        snprintf(probe, sizeof probe, "%s/%s", dir, files[f]);
        unlink(probe);
      }
      rmdir(dir);
    }
  }
  if (!keep)
    rmdir(root);
  return status;
}
