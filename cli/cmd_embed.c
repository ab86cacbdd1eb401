/* cmd_embed.c - `vlmdb embed` and `vlmdb tokenize`: CLIP vectors and token
 * ids of texts and images, one JSON value per line, for scripts and for
 * checking a model against another implementation. */
#include "opts.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char embed_usage[] =
    "usage: vlmdb embed [--model DIR] [--text T]... [--image PATH]... [--raw]\n"
    "                   [--threads N]\n"
    "\n"
    "Print the CLIP embedding of each text and image, one JSON object per\n"
    "line: texts first, in the order given, then images:\n"
    "  {\"kind\":\"text\",\"input\":\"...\",\"embedding\":[...]}\n"
    "  {\"kind\":\"image\",\"input\":\"PATH\",\"embedding\":[...]}\n"
    "Embeddings are L2-normalized unless --raw.\n"
    "\n"
    "  --model DIR     the model directory (default: $VLMDB_MODEL, else\n"
    "                  models/default)\n"
    "  --text T        a text to embed (repeatable)\n"
    "  --image PATH    an image file to embed (JPEG, PNG, WebP, GIF, TIFF,\n"
    "                  BMP, HEIC or AVIF; repeatable)\n"
    "  --raw           print the projection output, not normalized\n"
    "  --threads N     compute threads (default: all cores)\n"
    "  -h, --help      this help\n"
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

static void print_line(const char *kind, const char *input, const float *v,
                       int n) {
  printf("{\"kind\":\"%s\",\"input\":", kind);
  vlm_cli_json_string(stdout, input);
  fputs(",\"embedding\":", stdout);
  print_vector(v, n);
  fputs("}\n", stdout);
}

static int load(const char *cmd, const char *dir, int threads,
                vlm_clip **out) {
  vlm_clip_options opts = {.threads = threads};
  int rc = vlm_clip_load(dir, &opts, out);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  return 0;
}

int cmd_embed(int argc, char **argv) {
  const char *cmd = argv[0];
  const char *model = NULL;
  long threads = 0;
  unsigned flags = 0;
  int status = VLM_EXIT_RUNTIME;
  const char **texts = calloc((size_t)argc, sizeof *texts);
  const char **images = calloc((size_t)argc, sizeof *images);
  float *tv = NULL, *iv = NULL;
  vlm_clip *clip = NULL;
  int n_texts = 0, n_images = 0;
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
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'm': model = optarg; break;
    case 't': texts[n_texts++] = optarg; break;
    case 'i': images[n_images++] = optarg; break;
    case 'r': flags |= VLM_CLIP_RAW; break;
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
  if (n_texts + n_images == 0) {
    status = vlm_cli_usage_error(cmd, "nothing to embed: give --text or "
                                 "--image");
    goto done;
  }
  if (load(cmd, model ? model : vlm_cli_default_model(), (int)threads, &clip))
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
  for (int i = 0; i < n_texts; i++)
    print_line("text", texts[i], tv + (size_t)i * D, D);
  for (int i = 0; i < n_images; i++)
    print_line("image", images[i], iv + (size_t)i * D, D);
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
  if (load(cmd, model ? model : vlm_cli_default_model(), 1, &clip))
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
