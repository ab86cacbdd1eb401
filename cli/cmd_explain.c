/* cmd_explain.c - `vlmdb explain`: which regions of an item's picture
 * drive its score against a text, as a heat map PNG (vlm_train.h's
 * explainer, through the trainer's backward pass). */
#include "vlm_cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "opts.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_file.h"
#include "vlm_train.h"
#include "vlmdb.h"

static const char usage[] =
    "usage: vlmdb explain --db DIR --text Q (--key K | --image FILE)\n"
    "                     --out FILE.png [--method M] [--side PX] [--grid]\n"
    "                     [--thumb] [--model DIR] [--threads N]\n"
    "\n"
    "Draw a heat map over a picture of where the model looks when it scores\n"
    "the picture against a text: red regions raise the score most, blue\n"
    "ones not at all.  The map is computed on the vision transformer's\n"
    "patch grid from the score's gradient (see train/README.md) and laid\n"
    "over the picture as the model saw it (its centred square).  Prints\n"
    "the cosine score and the map's grid size; --grid also prints the map\n"
    "(rows of the grid, top first, summing to 1).\n"
    "\n"
    "  --db DIR        the database (its model; --image works without one\n"
    "                  when --model is given)\n"
    "  --text Q        the text\n"
    "  --key K         the stored item: its source file when it can be read,\n"
    "                  else its stored thumbnail\n"
    "  --image FILE    a picture file instead of a stored item\n"
    "  --out FILE.png  the heat map (written to a temporary file, then\n"
    "                  renamed)\n"
    "  --method M      auto (default: integrated), integrated (integrated\n"
    "                  gradients from the mean colour, Sundararajan et al.\n"
    "                  2017; 16 forward and backward passes), relevance\n"
    "                  (gradient x attention, Chefer et al. 2021; towers\n"
    "                  with a class token), token (gradient x activation\n"
    "                  per patch token) or gradcam (Grad-CAM's channel\n"
    "                  weights)\n"
    "  --side PX       the picture's side (default 448, 16..4096)\n"
    "  --grid          print the map's values\n"
    "  --thumb         use the stored thumbnail even when the source exists\n"
    "  --model DIR     the model, if not where the database says\n"
    "  --threads N     compute threads (default 1)\n"
    "  -h, --help      this help\n"
    "\n"
    "example:\n"
    "  vlmdb explain --db data/demo.vlmdb --key cat-01 --text \"a cat\" \\\n"
    "                --out cat.png\n";

static int write_file(const char *path, const uint8_t *data, size_t len) {
  char tmp[4200];
  if (snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid()) >=
      (int)sizeof tmp)
    return vlm_seterr(VLM_EINVAL, "%s: path too long", path);
  FILE *f = fopen(tmp, "wb");
  if (!f)
    return vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
  int bad = fwrite(data, 1, len, f) != len;
  bad |= fflush(f) || fsync(fileno(f));
  bad |= fclose(f);
  if (bad || rename(tmp, path)) {
    int e = errno;
    unlink(tmp);
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(e));
  }
  return 0;
}

int cmd_explain(int argc, char **argv) {
  const char *cmd = "explain";
  const char *db_dir = NULL, *out = NULL, *model_dir = NULL, *text = NULL,
             *key = NULL, *image = NULL;
  long side = 448, threads = 1;
  int print_grid = 0, use_thumb = 0;
  vlm_explain_method method = VLM_EXPLAIN_AUTO;
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"out", required_argument, NULL, 'o'},
      {"text", required_argument, NULL, 't'},
      {"key", required_argument, NULL, 'k'},
      {"image", required_argument, NULL, 'i'},
      {"method", required_argument, NULL, 'M'},
      {"side", required_argument, NULL, 's'},
      {"grid", no_argument, NULL, 'g'},
      {"thumb", no_argument, NULL, 'T'},
      {"model", required_argument, NULL, 'm'},
      {"threads", required_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': db_dir = optarg; break;
    case 'o': out = optarg; break;
    case 't': text = optarg; break;
    case 'k': key = optarg; break;
    case 'i': image = optarg; break;
    case 'M':
      if (vlm_explain_method_parse(optarg, &method))
        return vlm_cli_usage_error(cmd, "--method: %s", vlm_errmsg());
      break;
    case 's':
      if (vlm_cli_parse_long(cmd, "--side", optarg, 16, 4096, &side))
        return VLM_EXIT_USAGE;
      break;
    case 'g': print_grid = 1; break;
    case 'T': use_thumb = 1; break;
    case 'm': model_dir = optarg; break;
    case 'j':
      if (vlm_cli_parse_long(cmd, "--threads", optarg, 1, 256, &threads))
        return VLM_EXIT_USAGE;
      break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: return vlm_cli_getopt_failed(cmd);
    }
  }
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  if (!text || !out)
    return vlm_cli_usage_error(cmd, "--text and --out are required");
  if (!key == !image)
    return vlm_cli_usage_error(cmd, "give one of --key and --image");
  if (key && !db_dir)
    return vlm_cli_usage_error(cmd, "--key needs --db");
  if (!db_dir && !model_dir)
    return vlm_cli_usage_error(cmd, "give --db or --model");

  int status = VLM_EXIT_RUNTIME, rc = 0;
  vlm_db *db = NULL;
  vlm_clip *clip = NULL;
  vlm_record *rec = NULL;
  uint8_t *data = NULL;
  size_t len = 0;
  float *tv = NULL;
  vlm_explanation ex = {0};
  const char *what = image;
  if (db_dir) {
    if (vlm_cli_open_db(cmd, db_dir, 1, &db) ||
        vlm_cli_load_model(cmd, db, model_dir, (int)threads, &clip))
      goto done;
  } else {
    vlm_clip_options o = {.threads = (int)threads};
    if ((rc = vlm_clip_load(model_dir, &o, &clip)))
      goto fail;
  }
  if (key) {
    if ((rc = vlm_db_get(db, key, &rec)))
      goto fail;
    if (!use_thumb && rec->source && !strstr(rec->source, "://") &&
        vlm_read_file(rec->source, VLM_MAX_IMAGE_FILE, &data, &len) == 0) {
      what = rec->source;
    } else if (rec->thumb) {
      if (!(data = malloc(rec->thumb_len))) {
        rc = vlm_seterr(VLM_ENOMEM, "thumbnail");
        goto fail;
      }
      memcpy(data, rec->thumb, rec->thumb_len);
      len = rec->thumb_len;
      what = "the stored thumbnail";
    } else {
      rc = vlm_seterr(VLM_ENOTFOUND,
                      "%s: no thumbnail and no readable source file", key);
      goto fail;
    }
  } else if ((rc = vlm_read_file(image, VLM_MAX_IMAGE_FILE, &data, &len))) {
    goto fail;
  }
  if (!(tv = malloc(sizeof(float) * (size_t)vlm_clip_dim(clip)))) {
    rc = vlm_seterr(VLM_ENOMEM, "text vector");
    goto fail;
  }
  if ((rc = vlm_clip_encode_texts(clip, &text, 1, 0, tv)) ||
      (rc = vlm_explain_image(clip, data, len, tv, method, (int)side,
                              (int)threads, &ex)) ||
      (rc = write_file(out, ex.png, ex.png_len)))
    goto fail;
  printf("score %.4f, map %dx%d from %s -> %s\n", (double)ex.score, ex.grid,
         ex.grid, what, out);
  if (print_grid)
    for (int y = 0; y < ex.grid; y++)
      for (int x = 0; x < ex.grid; x++)
        printf("%.5f%c", (double)ex.map[y * ex.grid + x],
               x + 1 < ex.grid ? ' ' : '\n');
  status = VLM_EXIT_OK;
  goto done;
fail:
  vlm_cli_liberror(cmd, rc);
done:
  vlm_explanation_free(&ex);
  free(tv);
  free(data);
  vlm_record_free(rec);
  vlm_clip_free(clip);
  vlm_db_close(db);
  return status;
}
