/* cmd_embed.c - `vlmdb embed` and `vlmdb tokenize`: CLIP vectors and token
 * ids of texts and images, one JSON value per line, for scripts and for
 * checking a model against another implementation. */
#include "opts.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char embed_usage[] =
    "usage: vlmdb embed [--model DIR] [--text T]... [--image PATH]... [--raw]\n"
    "                   [--threads N] [--json] [--exif apply|ignore]\n"
    "\n"
    "Print the embedding of each text and image, one JSON object per\n"
    "line: texts first, in the order given, then images:\n"
    "  {\"kind\":\"text\",\"input\":\"...\",\"embedding\":[...]}\n"
    "  {\"kind\":\"image\",\"input\":\"PATH\",\"embedding\":[...]}\n"
    "Embeddings are L2-normalized unless --raw.\n"
    "\n"
    "With --json, one JSON object instead: \"model\" (dir, family: clip,\n"
    "siglip or chinese_clip, model_id, dim, image_size, context_length,\n"
    "logit_scale, logit_bias), \"embeddings\" (the objects above) and, when\n"
    "texts and images are both given, the model's own scores of every pair:\n"
    "\"logits_per_image\" [image][text] (exp(logit_scale) * cosine +\n"
    "logit_bias) and \"probs_per_image\" (SigLIP: sigmoid of each logit;\n"
    "CLIP, Chinese-CLIP: softmax over the texts).  --json without texts or\n"
    "images describes the model alone.\n"
    "\n"
    "  --model DIR     the model directory (default: $VLMDB_MODEL, else\n"
    "                  models/default)\n"
    "  --text T        a text to embed (repeatable)\n"
    "  --image PATH    an image file to embed (JPEG, PNG, WebP, GIF, TIFF,\n"
    "                  BMP, HEIC or AVIF; repeatable)\n"
    "  --raw           print the projection output, not normalized\n"
    "  --exif MODE     apply or ignore photos' EXIF orientation (default:\n"
    "                  model, the model's own setting)\n"
    "  --threads N     compute threads (default: all cores)\n"
    "  --json          one JSON object with the model and the scores\n"
    "  -h, --help      this help\n"
    "\n"
    "vlmdb embed --catalog CATALOG --out DIR ... writes a catalog's vectors\n"
    "as files in clip-retrieval's layout instead: see\n"
    "`vlmdb embed --catalog x --help`.\n"
    "\n"
    "example:\n"
    "  vlmdb embed --model models/clip-vit-base-patch32 \\\n"
    "      --text \"a photo of a cat\" --image cat.jpg\n";

static const char tokenize_usage[] =
    "usage: vlmdb tokenize [--model DIR] TEXT...\n"
    "\n"
    "Print the CLIP token ids of each text as one JSON array per line, with\n"
    "the start and end tokens, truncated to the model's context length.\n"
    "\n"
    "  --model DIR     the model directory (default: $VLMDB_MODEL, else\n"
    "                  models/default)\n"
    "  -h, --help      this help\n"
    "\n"
    "example:\n"
    "  vlmdb tokenize --model models/clip-vit-base-patch32 \"a photo of a cat\"\n"
    "  [49406,320,1125,539,320,2368,49407]\n";

static void print_vector(const float *v, int n) {
  putchar('[');
  for (int i = 0; i < n; i++)
    printf(i ? ",%.9g" : "%.9g", (double)v[i]);
  putchar(']');
}

static void print_object(const char *kind, const char *input, const float *v,
                         int n) {
  printf("{\"kind\":\"%s\",\"input\":", kind);
  vlm_cli_json_string(stdout, input);
  fputs(",\"embedding\":", stdout);
  print_vector(v, n);
  fputs("}", stdout);
}

static void print_model(const vlm_clip *clip, const char *dir) {
  fputs("\"model\":{\"dir\":", stdout);
  vlm_cli_json_string(stdout, dir);
  printf(",\"family\":\"%s\",\"model_id\":\"%s\",\"dim\":%d,"
         "\"image_size\":%d,\"context_length\":%d,\"logit_scale\":%.9g,"
         "\"logit_bias\":%.9g}",
         vlm_clip_family(clip), vlm_clip_model_id(clip), vlm_clip_dim(clip),
         vlm_clip_image_size(clip), vlm_clip_context_length(clip),
         (double)vlm_clip_logit_scale(clip),
         (double)vlm_clip_logit_bias(clip));
}

static void normalize(float *v, int n) {
  double ss = 0;
  for (int i = 0; i < n; i++)
    ss += (double)v[i] * v[i];
  float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
  for (int i = 0; i < n; i++)
    v[i] *= inv;
}

/* The model's own scores of every (image, text) pair, as the reference
 * models' forward returns them: logits_per_image[i][t] from the cosines of
 * the normalized vectors, probs_per_image by the family's rule
 * (vlm_clip_probabilities: one image's row over the texts). */
static int print_scores(const vlm_clip *clip, const float *tv, int n_texts,
                        const float *iv, int n_images, int D) {
  float *t = malloc(((size_t)n_texts * D + (size_t)n_images * D +
                     2 * (size_t)n_texts) * sizeof *t);
  if (!t)
    return VLM_ENOMEM;
  float *im = t + (size_t)n_texts * D, *cos = im + (size_t)n_images * D,
        *probs = cos + n_texts;
  memcpy(t, tv, (size_t)n_texts * D * sizeof *t);
  memcpy(im, iv, (size_t)n_images * D * sizeof *im);
  for (int i = 0; i < n_texts; i++)
    normalize(t + (size_t)i * D, D);
  for (int i = 0; i < n_images; i++)
    normalize(im + (size_t)i * D, D);
  int rc = 0;
  for (int pass = 0; pass < 2 && !rc; pass++) {
    fputs(pass ? ",\"probs_per_image\":[" : ",\"logits_per_image\":[",
          stdout);
    for (int i = 0; i < n_images && !rc; i++) {
      for (int j = 0; j < n_texts; j++) {
        double dot = 0;
        for (int d = 0; d < D; d++)
          dot += (double)im[(size_t)i * D + d] * t[(size_t)j * D + d];
        cos[j] = (float)dot;
      }
      if (pass == 0)
        for (int j = 0; j < n_texts; j++)
          probs[j] = vlm_clip_logit(clip, cos[j]);
      else
        rc = vlm_clip_probabilities(clip, cos, n_texts, probs);
      fputs(i ? ",[" : "[", stdout);
      for (int j = 0; j < n_texts; j++)
        printf(j ? ",%.9g" : "%.9g", (double)probs[j]);
      fputs("]", stdout);
    }
    fputs("]", stdout);
  }
  free(t);
  return rc;
}

static int load(const char *cmd, const char *dir, int threads, int orient,
                vlm_clip **out) {
  vlm_clip_options opts = {.threads = threads,
                           .orientation = (vlm_orient_mode)orient};
  int rc = vlm_clip_load(dir, &opts, out);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  return 0;
}

int cmd_embed(int argc, char **argv) {
  for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
    if (!strcmp(argv[i], "--catalog") || !strncmp(argv[i], "--catalog=", 10))
      return cmd_embed_files(argc, argv);
  const char *cmd = argv[0];
  const char *model = NULL;
  long threads = 0;
  unsigned flags = 0;
  int status = VLM_EXIT_RUNTIME;
  const char **texts = calloc((size_t)argc, sizeof *texts);
  const char **images = calloc((size_t)argc, sizeof *images);
  float *tv = NULL, *iv = NULL;
  vlm_clip *clip = NULL;
  int n_texts = 0, n_images = 0, as_json = 0, orient = VLM_ORIENT_MODEL;
  if (!texts || !images) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }
  static const struct option longopts[] = {
      {"model", required_argument, NULL, 'm'},
      {"text", required_argument, NULL, 't'},
      {"image", required_argument, NULL, 'i'},
      {"raw", no_argument, NULL, 'r'},
      {"threads", required_argument, NULL, 'j'},
      {"json", no_argument, NULL, 'J'},
      {"exif", required_argument, NULL, 'e'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'm': model = optarg; break;
    case 'J': as_json = 1; break;
    case 't': texts[n_texts++] = optarg; break;
    case 'i': images[n_images++] = optarg; break;
    case 'r': flags |= VLM_CLIP_RAW; break;
    case 'e':
      if ((orient = vlm_cli_orientation(optarg)) < 0) {
        status = vlm_cli_usage_error(cmd, "--exif is apply, ignore or model");
        goto done;
      }
      break;
    case 'j':
      if (vlm_cli_parse_long(cmd, "--threads", optarg, 1, 64, &threads)) {
        status = VLM_EXIT_USAGE;
        goto done;
      }
      break;
    case 'h':
      fputs(embed_usage, stdout);
      status = VLM_EXIT_OK;
      goto done;
    default:
      status = vlm_cli_getopt_failed(cmd);
      goto done;
    }
  }
  if (optind < argc) {
    status = vlm_cli_usage_error(cmd, "unexpected argument '%s' (texts go "
                                 "after --text, images after --image)",
                                 argv[optind]);
    goto done;
  }
  if (n_texts + n_images == 0 && !as_json) {
    status = vlm_cli_usage_error(cmd, "nothing to embed: give --text or "
                                 "--image");
    goto done;
  }
  const char *dir = model ? model : vlm_cli_default_model();
  if (load(cmd, dir, (int)threads, orient, &clip))
    goto done;
  const int D = vlm_clip_dim(clip);
  tv = malloc(((size_t)n_texts * D + 1) * sizeof *tv);
  iv = malloc(((size_t)n_images * D + 1) * sizeof *iv);
  if (!tv || !iv) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }
  int rc;
  if (n_texts && (rc = vlm_clip_encode_texts(clip, texts, n_texts, flags, tv))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  if (n_images &&
      (rc = vlm_clip_encode_images(clip, images, n_images, flags, iv))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  if (as_json) {
    fputs("{", stdout);
    print_model(clip, dir);
    fputs(",\"embeddings\":[", stdout);
  }
  for (int i = 0; i < n_texts + n_images; i++) {
    int is_text = i < n_texts;
    if (as_json && i)
      fputs(",", stdout);
    print_object(is_text ? "text" : "image",
                 is_text ? texts[i] : images[i - n_texts],
                 is_text ? tv + (size_t)i * D : iv + (size_t)(i - n_texts) * D,
                 D);
    if (!as_json)
      fputs("\n", stdout);
  }
  if (as_json) {
    fputs("]", stdout);
    if (n_texts && n_images &&
        (rc = print_scores(clip, tv, n_texts, iv, n_images, D))) {
      fputs("}\n", stdout);
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    fputs("}\n", stdout);
  }
  status = fflush(stdout) == 0 ? VLM_EXIT_OK : VLM_EXIT_RUNTIME;
done:
  vlm_clip_free(clip);
  free(tv);
  free(iv);
  free(texts);
  free(images);
  return status;
}

int cmd_tokenize(int argc, char **argv) {
  const char *cmd = argv[0];
  const char *model = NULL;
  static const struct option longopts[] = {
      {"model", required_argument, NULL, 'm'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'm': model = optarg; break;
    case 'h': fputs(tokenize_usage, stdout); return VLM_EXIT_OK;
    default: return vlm_cli_getopt_failed(cmd);
    }
  }
  if (optind >= argc)
    return vlm_cli_usage_error(cmd, "no text given");
  vlm_clip *clip = NULL;
  if (load(cmd, model ? model : vlm_cli_default_model(), 1, VLM_ORIENT_MODEL,
           &clip))
    return VLM_EXIT_RUNTIME;
  int ctx = vlm_clip_context_length(clip), status = VLM_EXIT_OK;
  int32_t *ids = malloc((size_t)ctx * sizeof *ids);
  if (!ids) {
    vlm_cli_error(cmd, "out of memory");
    status = VLM_EXIT_RUNTIME;
  }
  for (int a = optind; a < argc && status == VLM_EXIT_OK; a++) {
    int n = 0, rc = vlm_clip_tokenize(clip, argv[a], ids, ctx, &n);
    if (rc) {
      vlm_cli_liberror(cmd, rc);
      status = VLM_EXIT_RUNTIME;
      break;
    }
    putchar('[');
    for (int i = 0; i < n; i++)
      printf(i ? ",%d" : "%d", (int)ids[i]);
    fputs("]\n", stdout);
  }
  if (fflush(stdout) != 0)
    status = VLM_EXIT_RUNTIME;
  free(ids);
  vlm_clip_free(clip);
  return status;
}
