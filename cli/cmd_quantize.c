/* cmd_quantize.c - `vlmdb quantize`: write an int8 or bf16 copy of a model
 * (vlm_clip_quantize) and measure it against the exact model before
 * keeping it.
 *
 * The gate is the cosine between each input's quantized and exact
 * embedding: built-in texts and synthetic images always, and the images
 * of a catalog when --catalog is given (issue 20's gate: the conformance
 * inputs and catalog images); the catalog's texts are measured and shown
 * beside them.  The lowest gated cosine must reach 0.999 (int8) or 0.9999
 * (bf16); otherwise the written directory is removed and the command
 * fails, unless --force keeps it. */
#include "catalog.h"
#include "opts.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "usage: vlmdb quantize --model IN --out OUT --int8|--bf16\n"
    "                      [--catalog FILE] [--limit N] [--min-cos C]\n"
    "                      [--smooth A] [--no-mixed] [--force]\n"
    "                      [--threads N] [--json]\n"
    "\n"
    "Write a copy of the model in IN to the new directory OUT whose\n"
    "transformer-block Linear weights (attention q/k/v/out, MLP fc1/fc2,\n"
    "both towers) are int8 with one F32 scale per output channel\n"
    "(\"NAME\" I8 + \"NAME_scale\" F32) or bfloat16, everything else as IN\n"
    "stores it, in a standard safetensors file whose __metadata__ holds\n"
    "\"vlmdb.quantization\": \"int8\" | \"bf16\"; config, tokenizer and\n"
    "preprocessor files are copied.  Loading OUT runs int8 compute\n"
    "(vpdpbusd, activations quantized per token) or bf16 compute\n"
    "(vdpbf16ps), and gives another model id than IN: a database made with\n"
    "one refuses the other.\n"
    "\n"
    "int8 smoothing (SmoothQuant), with --smooth A: calibration inputs\n"
    "(built-in sentences and synthetic images other than the gate's, and\n"
    "with --catalog up to 256 rows after the gate's first N) run through IN\n"
    "in bf16 compute; each block Linear's input channel k gets s[k] =\n"
    "max|x[k]|^A / max|w[:,k]|^(1-A), its weight column is multiplied by\n"
    "s[k] before it is quantized (\"NAME_smooth\" F32 beside the scales)\n"
    "and int8 compute divides the input by s: channels large in every\n"
    "token (activation outliers) no longer take the row's 255 steps from\n"
    "the rest.  It helps models with such channels, and costs a little\n"
    "on models without them: compare both with the gate.\n"
    "\n"
    "int8 mixed precision: when a tower's calibration inputs (above, not\n"
    "the gate's) reach a lower cosine than the gate asks, its first blocks\n"
    "keep BF16 weights and compute (the fewest that reach it, found by\n"
    "bisection; each try writes OUT again); --no-mixed turns this off.\n"
    "\n"
    "Quality gate: every input is embedded by IN (exact) and OUT; the\n"
    "lowest cosine between the two must be >= 0.999 (int8) or >= 0.9999\n"
    "(bf16) on the built-in texts, the synthetic images and, with\n"
    "--catalog, the images of the catalog's first N rows.  Their texts are\n"
    "measured and shown too (min, mean, how many fall below the gate) but\n"
    "not gated: one short caption can sit just under it while retrieval\n"
    "does not change.  If the gate fails, OUT is removed and the command\n"
    "exits 1 (--force keeps it).\n"
    "\n"
    "  --model IN      the exact model directory (default: $VLMDB_MODEL,\n"
    "                  else models/default)\n"
    "  --out OUT       the directory to write (must not exist, or be empty)\n"
    "  --int8          int8 weights and compute\n"
    "  --bf16          bfloat16 weights and compute\n"
    "  --catalog FILE  also measure on a catalog's images and texts (JSONL,\n"
    "                  CSV/TSV or a directory, as ingest reads them)\n"
    "  --limit N       catalog rows to use (default 1000)\n"
    "  --min-cos C     the gate (default 0.999 int8, 0.9999 bf16)\n"
    "  --smooth A      int8 with smoothing of strength A, 0 < A < 1\n"
    "                  (SmoothQuant's usual value is 0.5)\n"
    "  --no-mixed      int8 everywhere, even where it misses the gate on\n"
    "                  the calibration inputs\n"
    "  --force         keep OUT even when the gate fails\n"
    "  --threads N     compute threads (default: all cores)\n"
    "  --json          print the measurements as one JSON object\n"
    "  -h, --help      this help\n"
    "\n"
    "example:\n"
    "  vlmdb quantize --model models/default --out models/default-int8 \\\n"
    "      --int8 --catalog data/demo/catalog.jsonl\n";

/* Captions of everyday scenes, and short and long edge cases. */
static const char *const builtin_texts[] = {
    "a photo of a cat",
    "a photo of a dog playing in the snow",
    "a red car parked next to a brick wall",
    "two people riding bicycles along the beach at sunset",
    "a bowl of fruit on a wooden table",
    "an aerial view of a city at night",
    "a black and white drawing of a house",
    "a close-up of a yellow flower with a bee",
    "a child holding a blue balloon",
    "mountains reflected in a calm lake",
    "a plate of spaghetti with tomato sauce",
    "a smiling emoji",
    "an old man reading a newspaper on a park bench",
    "a sailboat on the open sea under a cloudy sky",
    "a cartoon of a green frog",
    "the word STOP on a red octagonal sign",
    "x",
    "a diagram of the solar system with the planets labelled in order from "
    "the sun, drawn in coloured pencil on white paper, for a school project",
    "1 2 3 4 5 6 7 8 9 10",
    "a kitchen with white cabinets and a stainless steel fridge",
};
#define N_BUILTIN_TEXTS (int)(sizeof builtin_texts / sizeof *builtin_texts)
#define N_SYNTH_IMAGES 12

/* Calibration sentences for int8 smoothing: none of the gate's. */
static const char *const calib_texts[] = {
    "a brown horse standing in a green field",
    "a laptop and a cup of coffee on a desk",
    "children playing football in a park",
    "a snowy mountain village at dawn",
    "a plate of sushi",
    "an orange cat sleeping on a sofa",
    "a train crossing a bridge over a river",
    "the logo of a bank, blue on white",
    "a woman in a yellow raincoat with an umbrella",
    "three apples",
    "a map of europe",
    "a crowded street market in the evening with lanterns",
    "OK",
    "a pencil sketch of a bird on a branch",
    "a bathroom with a white bathtub and green tiles",
    "fireworks over a harbour",
};
#define N_CALIB_TEXTS (int)(sizeof calib_texts / sizeof *calib_texts)
#define N_CALIB_IMAGES 24 /* synthetic, after the gate's 12 */
#define CALIB_CATALOG_ROWS 256

/* Synthetic image i as normalized CHW pixels (values in roughly the range
 * preprocessing gives): gradients, stripes, checkers, blobs and noise. */
static void synth_image(float *px, int S, int i) {
  uint64_t s = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < S; y++)
      for (int x = 0; x < S; x++) {
        double u = (double)x / S, v = (double)y / S, val;
        switch (i % 6) {
        case 0: val = u * (c + 1) / 3.0 + v * (2 - c) / 3.0; break;
        case 1: val = 0.5 + 0.5 * sin((u * (4 + i) + c) * 6.283); break;
        case 2: val = (((x / (4 + i)) + (y / (4 + i))) % 2) ? 0.9 : 0.1; break;
        case 3: {
          double dx = u - 0.3 - 0.05 * c, dy = v - 0.6;
          val = exp(-(dx * dx + dy * dy) * (20 + i));
          break;
        }
        case 4:
          s = s * 6364136223846793005ull + 1442695040888963407ull;
          val = (double)(s >> 11) / 9007199254740992.0;
          break;
        default: val = (c == i % 3) ? 0.8 * v : 0.2 * u; break;
        }
        px[((size_t)c * S + y) * S + x] = (float)((val - 0.45) / 0.27);
      }
}

static double cosine(const float *a, const float *b, int n) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < n; i++) {
    ab += (double)a[i] * b[i];
    aa += (double)a[i] * a[i];
    bb += (double)b[i] * b[i];
  }
  return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : (aa == bb ? 1 : 0);
}

typedef struct {
  const char *what;
  int n, below; /* below: inputs under the gate */
  double min, sum, gate;
} gate_row;

static void gate_add(gate_row *g, const float *exact, const float *quant,
                     int n, int D) {
  for (int i = 0; i < n; i++) {
    double c = cosine(exact + (size_t)i * D, quant + (size_t)i * D, D);
    if (g->n == 0 || !(c >= g->min))
      g->min = c;
    g->below += !(c >= g->gate);
    g->sum += c;
    g->n++;
  }
}

/* Texts through both models, in batches. */
static int gate_texts(gate_row *g, vlm_clip *exact, vlm_clip *quant,
                      const char *const *texts, int n, float *a, float *b) {
  const int D = vlm_clip_dim(exact);
  for (int i = 0; i < n; i += 16) {
    int m = n - i < 16 ? n - i : 16, rc;
    if ((rc = vlm_clip_encode_texts(exact, texts + i, m, VLM_CLIP_RAW, a)) ||
        (rc = vlm_clip_encode_texts(quant, texts + i, m, VLM_CLIP_RAW, b)))
      return rc;
    gate_add(g, a, b, m, D);
  }
  return 0;
}

static int gate_pixels(gate_row *g, vlm_clip *exact, vlm_clip *quant,
                       const float *px, int n, float *a, float *b) {
  int rc;
  if ((rc = vlm_clip_encode_pixels(exact, px, n, VLM_CLIP_RAW, a)) ||
      (rc = vlm_clip_encode_pixels(quant, px, n, VLM_CLIP_RAW, b)))
    return rc;
  gate_add(g, a, b, n, vlm_clip_dim(exact));
  return 0;
}

/* The first limit rows of a catalog: images (those that decode) and texts. */
static int gate_catalog(const char *cmd, const char *path, long limit,
                        gate_row *gi, gate_row *gt, vlm_clip *exact,
                        vlm_clip *quant, float *a, float *b) {
  vlm_catalog *cat = NULL;
  int rc = vlm_catalog_open(path, NULL, &cat);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  const int S = vlm_clip_image_size(exact);
  const size_t per = (size_t)3 * S * S;
  float *px = malloc(16 * per * sizeof *px);
  char *texts[16];
  int n_px = 0, n_txt = 0, status = 0;
  long rows = 0, bad = 0;
  vlm_catalog_row row = {0};
  if (!px) {
    vlm_cli_error(cmd, "out of memory");
    vlm_catalog_close(cat);
    return -1;
  }
  for (;;) {
    int more = rows < limit ? vlm_catalog_next(cat, &row) : 0;
    if (more < 0) {
      vlm_cli_liberror(cmd, more);
      status = -1;
      break;
    }
    if (more && !row.error) {
      rows++;
      if (row.image && !strstr(row.image, "://")) {
        if (vlm_clip_preprocess_file(exact, row.image, px + n_px * per))
          bad++;
        else
          n_px++;
      }
      if (row.text && (texts[n_txt] = strdup(row.text)))
        n_txt++;
    }
    if (n_px == 16 || (!more && n_px)) {
      if ((rc = gate_pixels(gi, exact, quant, px, n_px, a, b))) {
        vlm_cli_liberror(cmd, rc);
        status = -1;
        break;
      }
      n_px = 0;
    }
    if (n_txt == 16 || (!more && n_txt)) {
      rc = gate_texts(gt, exact, quant, (const char *const *)texts, n_txt, a,
                      b);
      for (int i = 0; i < n_txt; i++)
        free(texts[i]);
      n_txt = 0;
      if (rc) {
        vlm_cli_liberror(cmd, rc);
        status = -1;
        break;
      }
    }
    if (!more)
      break;
  }
  for (int i = 0; i < n_txt; i++)
    free(texts[i]);
  if (bad)
    fprintf(stderr, "vlmdb %s: %ld catalog images did not decode (skipped)\n",
            cmd, bad);
  vlm_catalog_row_clear(&row);
  vlm_catalog_close(cat);
  free(px);
  return status;
}

/* Calibration inputs from a catalog: up to CALIB_CATALOG_ROWS rows after
 * its first skip rows (the gate's), images preprocessed by clip, texts
 * copied.  Appends to px (grown) and texts; -1 after an error. */
static int calib_catalog(const char *cmd, const char *path, long skip,
                         vlm_clip *clip, float **px, int *npx, char ***texts,
                         int *ntexts) {
  vlm_catalog *cat = NULL;
  int rc = vlm_catalog_open(path, NULL, &cat);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  const int S = vlm_clip_image_size(clip);
  const size_t per = (size_t)3 * S * S;
  vlm_catalog_row row = {0};
  long rows = 0;
  int status = 0;
  while (rows < skip + CALIB_CATALOG_ROWS) {
    int more = vlm_catalog_next(cat, &row);
    if (more < 0) {
      vlm_cli_liberror(cmd, more);
      status = -1;
      break;
    }
    if (!more)
      break;
    if (row.error || rows++ < skip)
      continue;
    if (row.image && !strstr(row.image, "://")) {
      float *p = realloc(*px, (size_t)(*npx + 1) * per * sizeof *p);
      if (!p) {
        vlm_cli_error(cmd, "out of memory");
        status = -1;
        break;
      }
      *px = p;
      if (vlm_clip_preprocess_file(clip, row.image, p + (size_t)*npx * per) ==
          0)
        (*npx)++;
    }
    if (row.text) {
      char **t = realloc(*texts, (size_t)(*ntexts + 1) * sizeof *t);
      if (!t) {
        vlm_cli_error(cmd, "out of memory");
        status = -1;
        break;
      }
      *texts = t;
      if ((t[*ntexts] = strdup(row.text)))
        (*ntexts)++;
    }
  }
  vlm_catalog_row_clear(&row);
  vlm_catalog_close(cat);
  return status;
}

/* The lowest cosine between the exact and the quantized embedding of the
 * calibration texts (tower 0) or images (tower 1). */
static int calib_min_cos(vlm_clip *exact, vlm_clip *quant,
                         const vlm_quant_calib *cal, int tower, float *a,
                         float *b, double gate, double *lowest) {
  gate_row g = {"calibration", 0, 0, 0, 0, gate};
  const int S = vlm_clip_image_size(exact);
  const size_t per = (size_t)3 * S * S;
  int rc = 0;
  if (tower == 0)
    rc = gate_texts(&g, exact, quant, cal->texts, cal->ntexts, a, b);
  for (int i = 0; tower == 1 && !rc && i < cal->nimages; i += 16)
    rc = gate_pixels(&g, exact, quant, cal->pixels + (size_t)i * per,
                     cal->nimages - i < 16 ? cal->nimages - i : 16, a, b);
  *lowest = g.n ? g.min : 1;
  return rc;
}

/* OUT must be new or empty; *created says whether this run made it. */
static int prepare_out(const char *cmd, const char *out, int *created) {
  *created = 0;
  DIR *d = opendir(out);
  if (!d) {
    if (errno != ENOENT) {
      vlm_cli_error(cmd, "%s: %s", out, strerror(errno));
      return -1;
    }
    if (mkdir(out, 0755)) {
      vlm_cli_error(cmd, "%s: %s", out, strerror(errno));
      return -1;
    }
    *created = 1;
    return 0;
  }
  struct dirent *e;
  int empty = 1;
  while (empty && (e = readdir(d)))
    empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
  closedir(d);
  if (!empty) {
    vlm_cli_error(cmd, "%s exists and is not empty; give a new directory",
                  out);
    return -1;
  }
  return 0;
}

/* Remove what quantize wrote into out (plain files), and out if made. */
static void remove_out(const char *out, int created) {
  DIR *d = opendir(out);
  if (!d)
    return;
  struct dirent *e;
  char p[PATH_MAX];
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    snprintf(p, sizeof p, "%s/%s", out, e->d_name);
    unlink(p);
  }
  closedir(d);
  if (created)
    rmdir(out);
}

static void print_row_text(const gate_row *g, const char *source,
                           int gated) {
  if (g->n)
    printf("  %-7s %5d %-10s min %.6f  mean %.6f  %d below%s\n", g->what,
           g->n, source, g->min, g->sum / g->n, g->below,
           gated ? "" : "  (not gated)");
}

static void print_row_json(const gate_row *g, const char *key, int *first) {
  if (!g->n)
    return;
  printf("%s\"%s\":{\"n\":%d,\"min_cos\":%.9f,\"mean_cos\":%.9f,"
         "\"below\":%d}",
         *first ? "" : ",", key, g->n, g->min, g->sum / g->n, g->below);
  *first = 0;
}

int cmd_quantize(int argc, char **argv) {
  const char *cmd = argv[0];
  const char *model = NULL, *out = NULL, *catalog = NULL;
  long threads = 0, limit = 1000;
  double min_cos = NAN; /* the mode's gate unless given */
  int mode = 0, force = 0, as_json = 0, created = 0, written = 0;
  int smooth = 0, mixed_ok = 1;
  double alpha = 0.5;
  float *cal_px = NULL;
  char **cal_texts = NULL;
  int cal_npx = 0, cal_ntexts = 0;
  int status = VLM_EXIT_RUNTIME;
  vlm_clip *exact = NULL, *quant = NULL;
  float *a = NULL, *b = NULL, *px = NULL;
  static const struct option longopts[] = {
      {"model", required_argument, NULL, 'm'},
      {"out", required_argument, NULL, 'o'},
      {"int8", no_argument, NULL, '8'},
      {"bf16", no_argument, NULL, 'b'},
      {"catalog", required_argument, NULL, 'c'},
      {"limit", required_argument, NULL, 'n'},
      {"min-cos", required_argument, NULL, 'g'},
      {"force", no_argument, NULL, 'f'},
      {"threads", required_argument, NULL, 'j'},
      {"json", no_argument, NULL, 'J'},
      {"smooth", required_argument, NULL, 'a'},
      {"no-mixed", no_argument, NULL, 'M'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'm': model = optarg; break;
    case 'o': out = optarg; break;
    case 'c': catalog = optarg; break;
    case 'f': force = 1; break;
    case 'J': as_json = 1; break;
    case '8':
    case 'b':
      if (mode && mode != (c == '8' ? VLM_COMPUTE_INT8 : VLM_COMPUTE_BF16))
        return vlm_cli_usage_error(cmd, "give one of --int8 and --bf16");
      mode = c == '8' ? VLM_COMPUTE_INT8 : VLM_COMPUTE_BF16;
      break;
    case 'n':
      if (vlm_cli_parse_long(cmd, "--limit", optarg, 0, 10000000, &limit))
        return VLM_EXIT_USAGE;
      break;
    case 'j':
      if (vlm_cli_parse_long(cmd, "--threads", optarg, 1, 64, &threads))
        return VLM_EXIT_USAGE;
      break;
    case 'g': {
      char *end;
      errno = 0;
      min_cos = strtod(optarg, &end);
      if (errno || end == optarg || *end || !(min_cos >= -1 && min_cos <= 1))
        return vlm_cli_usage_error(cmd, "--min-cos is a cosine in [-1, 1]");
      break;
    }
    case 'a': {
      char *end;
      errno = 0;
      alpha = strtod(optarg, &end);
      if (errno || end == optarg || *end || !(alpha > 0 && alpha < 1))
        return vlm_cli_usage_error(cmd, "--smooth is a number in (0, 1)");
      smooth = 1;
      break;
    }
    case 'M': mixed_ok = 0; break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: return vlm_cli_getopt_failed(cmd);
    }
  }
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  if (!mode)
    return vlm_cli_usage_error(cmd, "give --int8 or --bf16");
  if (smooth && mode != VLM_COMPUTE_INT8)
    return vlm_cli_usage_error(cmd, "--smooth is for --int8");
  if (!out)
    return vlm_cli_usage_error(cmd, "give --out DIR");
  if (isnan(min_cos))
    min_cos = mode == VLM_COMPUTE_INT8 ? 0.999 : 0.9999;
  const char *in = model ? model : vlm_cli_default_model();
  const char *mode_name = mode == VLM_COMPUTE_INT8 ? "int8" : "bf16";

  if (prepare_out(cmd, out, &created))
    return VLM_EXIT_RUNTIME;
  /* The two models, each with its compute mode stated (an environment
   * override must not make the comparison moot). */
  vlm_clip_options eo = {.threads = (int)threads, .compute = VLM_COMPUTE_EXACT};
  vlm_clip_options qo = {.threads = (int)threads,
                         .compute = (vlm_compute_mode)mode};
  int rc = vlm_clip_load(in, &eo, &exact);
  written = 1;
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  const int D = vlm_clip_dim(exact), S = vlm_clip_image_size(exact);
  const size_t per = (size_t)3 * S * S;
  vlm_quant_calib cal = {0};
  vlm_quant_mixed mixed = {{0, 0}, {0, 0}};
  const int int8 = mode == VLM_COMPUTE_INT8;
  if (int8) { /* calibration inputs: smoothing, and the mixed search */
    if (!(cal_px = malloc(N_CALIB_IMAGES * per * sizeof *cal_px)) ||
        !(cal_texts = malloc(N_CALIB_TEXTS * sizeof *cal_texts))) {
      vlm_cli_error(cmd, "out of memory");
      goto done;
    }
    for (int i = 0; i < N_CALIB_IMAGES; i++)
      synth_image(cal_px + i * per, S, N_SYNTH_IMAGES + i);
    cal_npx = N_CALIB_IMAGES;
    for (int i = 0; i < N_CALIB_TEXTS; i++)
      if (!(cal_texts[cal_ntexts++] = strdup(calib_texts[i]))) {
        cal_ntexts--;
        vlm_cli_error(cmd, "out of memory");
        goto done;
      }
    if (catalog && calib_catalog(cmd, catalog, limit, exact, &cal_px,
                                 &cal_npx, &cal_texts, &cal_ntexts))
      goto done;
    cal = (vlm_quant_calib){(const char *const *)cal_texts, cal_ntexts,
                            cal_px, cal_npx, (float)alpha, (int)threads};
  }
  a = malloc((size_t)16 * D * sizeof *a);
  b = malloc((size_t)16 * D * sizeof *b);
  if (!a || !b) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }
  rc = vlm_clip_quantize_ex(in, out, (vlm_compute_mode)mode,
                            smooth ? &cal : NULL, NULL);
  if (rc || (rc = vlm_clip_load(out, &qo, &quant))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  /* Mixed precision: a tower whose calibration inputs miss the gate gets
   * its first j blocks in bf16, the fewest that reach it (binary search;
   * each try writes OUT again and loads it).  The gate's own inputs are
   * not used, so the gate below still tests a model it did not shape. */
  double cal_min[2] = {1, 1};
  for (int t = 0; int8 && mixed_ok && t < 2 && !rc; t++) {
    rc = calib_min_cos(exact, quant, &cal, t, a, b, min_cos, &cal_min[t]);
    if (rc || cal_min[t] >= min_cos)
      continue;
    int lo = 1, hi = vlm_clip_layers(exact, t), best = hi;
    while (lo <= hi && !rc) {
      int mid = (lo + hi) / 2;
      double c = 0;
      mixed.bf16_to[t] = mid;
      vlm_clip_free(quant);
      quant = NULL;
      if ((rc = vlm_clip_quantize_ex(in, out, (vlm_compute_mode)mode,
                                     smooth ? &cal : NULL, &mixed)) ||
          (rc = vlm_clip_load(out, &qo, &quant)) ||
          (rc = calib_min_cos(exact, quant, &cal, t, a, b, min_cos, &c)))
        break;
      if (c >= min_cos) {
        best = mid;
        hi = mid - 1;
      } else {
        lo = mid + 1;
      }
    }
    mixed.bf16_to[t] = best;
  }
  if (!rc && (mixed.bf16_to[0] || mixed.bf16_to[1])) {
    vlm_clip_free(quant);
    quant = NULL;
    rc = vlm_clip_quantize_ex(in, out, (vlm_compute_mode)mode,
                              smooth ? &cal : NULL, &mixed);
    if (!rc)
      rc = vlm_clip_load(out, &qo, &quant);
  }
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  px = malloc(N_SYNTH_IMAGES * per * sizeof *px);
  if (!px) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }
  gate_row rows[4] = {{"texts", 0, 0, 0, 0, min_cos},
                      {"images", 0, 0, 0, 0, min_cos},
                      {"images", 0, 0, 0, 0, min_cos},
                      {"texts", 0, 0, 0, 0, min_cos}};
  if ((rc = gate_texts(&rows[0], exact, quant, builtin_texts, N_BUILTIN_TEXTS,
                       a, b))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  for (int i = 0; i < N_SYNTH_IMAGES; i++)
    synth_image(px + i * per, S, i);
  for (int i = 0; i < N_SYNTH_IMAGES && !rc; i += 6)
    rc = gate_pixels(&rows[1], exact, quant, px + i * per, 6, a, b);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  if (catalog && gate_catalog(cmd, catalog, limit, &rows[2], &rows[3], exact,
                              quant, a, b))
    goto done;
  /* catalog texts are measured and shown, not gated (see usage) */
  double lowest = 1;
  for (int i = 0; i < 3; i++)
    if (rows[i].n && !(rows[i].min >= lowest))
      lowest = rows[i].min;
  const int pass = lowest >= min_cos;
  if (as_json) {
    printf("{\"mode\":\"%s\",\"model\":", mode_name);
    vlm_cli_json_string(stdout, in);
    fputs(",\"out\":", stdout);
    vlm_cli_json_string(stdout, out);
    if (smooth)
      printf(",\"smoothing\":{\"alpha\":%.6g,\"calibration_texts\":%d,"
             "\"calibration_images\":%d}", alpha, cal_ntexts, cal_npx);
    if (int8)
      printf(",\"bf16_blocks\":{\"text\":%d,\"image\":%d}",
             mixed.bf16_to[0], mixed.bf16_to[1]);
    printf(",\"model_id\":\"%s\",\"exact_model_id\":\"%s\",\"gate\":%.6g,"
           "\"min_cos\":%.9f,\"pass\":%s,\"kept\":%s,\"measured\":{",
           vlm_clip_model_id(quant), vlm_clip_model_id(exact), min_cos,
           lowest, pass ? "true" : "false", pass || force ? "true" : "false");
    int first = 1;
    print_row_json(&rows[0], "builtin_texts", &first);
    print_row_json(&rows[1], "synthetic_images", &first);
    print_row_json(&rows[2], "catalog_images", &first);
    print_row_json(&rows[3], "catalog_texts", &first);
    fputs("}}\n", stdout);
  } else {
    printf("%s %s -> %s\n", mode_name, in, out);
    if (smooth)
      printf("smoothing: alpha %.3g, calibrated on %d texts and %d images "
             "(none of the gate's)\n", alpha, cal_ntexts, cal_npx);
    for (int t = 0; t < 2; t++)
      if (mixed.bf16_to[t])
        printf("mixed precision: %s blocks 1-%d of %d in bf16 (all in "
               "int8, its calibration inputs reached cosine %.6f < %.8g)\n",
               t ? "image" : "text", mixed.bf16_to[t],
               vlm_clip_layers(exact, t), cal_min[t], min_cos);
    printf("cosine to the exact embedding (gate: min >= %.8g):\n", min_cos);
    print_row_text(&rows[0], "built-in", 1);
    print_row_text(&rows[1], "synthetic", 1);
    print_row_text(&rows[2], "catalog", 1);
    print_row_text(&rows[3], "catalog", 0);
    printf("%s: lowest cosine %.6f %s %.8g; model id %.16s...\n",
           pass ? "PASS" : "FAIL", lowest, pass ? ">=" : "<", min_cos,
           vlm_clip_model_id(quant));
  }
  fflush(stdout);
  if (!pass && !force) {
    vlm_cli_error(cmd, "quality gate failed (lowest cosine %.6f < %.8g): %s "
                  "removed; --force keeps it", lowest, min_cos, out);
    goto done;
  }
  if (!pass)
    vlm_cli_error(cmd, "WARNING: quality gate failed (lowest cosine %.6f < "
                  "%.8g); kept because of --force", lowest, min_cos);
  status = VLM_EXIT_OK;
done:
  vlm_clip_free(exact);
  vlm_clip_free(quant);
  if (status != VLM_EXIT_OK && written)
    remove_out(out, created);
  free(a);
  free(b);
  free(px);
  free(cal_px);
  for (int i = 0; i < cal_ntexts; i++)
    free(cal_texts[i]);
  free(cal_texts);
  return status;
}
