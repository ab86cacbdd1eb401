/* cmd_embed_files.c - `vlmdb embed --catalog FILE --out DIR`: a catalog's
 * vectors written as files in clip-retrieval's layout (catalog_emb.h),
 * for autofaiss and clip-retrieval's tools, or for `vlmdb ingest DIR`
 * on another machine. */
#include "catalog.h"
#include "catalog_emb.h"
#include "opts.h"
#include "shard.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: vlmdb embed --catalog CATALOG --out DIR [--model DIR]\n"
    "                   [--cluster FILE --shard I|auto] [--dtype float16|float32]\n"
    "                   [--batch N] [--threads N] [--images-root DIR]\n"
    "                   [--format F] [--exif apply|ignore] [--json]\n"
    "\n"
    "Embed every row of CATALOG (as `vlmdb ingest` reads it) and write the\n"
    "vectors in clip-retrieval's layout: DIR/img_emb/img_emb_I.npy,\n"
    "DIR/text_emb/text_emb_I.npy and DIR/metadata/metadata_I.jsonl, row n\n"
    "of each belonging together (a row of zeros: the item has no such\n"
    "vector).  I is the shard (zero-padded to the digits of the shard count,\n"
    "as clip-retrieval numbers partitions), or 0.  With --cluster only the\n"
    "rows of that shard's hash slots are embedded, so every task of an array\n"
    "job reads the same catalog.  `vlmdb ingest --db DB DIR` loads the\n"
    "result without the model.\n"
    "\n"
    "  --catalog CATALOG   the rows to embed\n"
    "  --out DIR           the layout's root (created if missing)\n"
    "  --model DIR         the model (default: $VLMDB_MODEL or models/default)\n"
    "  --cluster FILE      a cluster map, with --shard I|auto (see init)\n"
    "  --dtype T           float16 (clip-retrieval's, the default) or float32\n"
    "  --batch N           rows per encoder call (default 32)\n"
    "  --threads N         compute threads (default: all cores)\n"
    "  --images-root DIR   base directory of relative image paths\n"
    "  --format F          jsonl, csv, tsv or dir (default: from the name)\n"
    "  --exif MODE         apply or ignore photos' EXIF orientation\n"
    "  --json              print the summary as JSON\n"
    "  -h, --help          this help\n"
    "\n"
    "example:\n"
    "  vlmdb embed --catalog photos.jsonl --out emb --cluster cluster.json \\\n"
    "      --shard auto\n";

typedef struct {
  const char *cmd;
  vlm_clip *clip;
  vlm__emb_writer *out;
  int dim, batch;
  size_t pixel_floats;
  vlm_catalog_row *rows; /* the batch */
  int n;
  float *pixels, *image_out, *text_out;
  long written, images, texts, bad, other_shard;
  long keyless;          /* with a cluster: bad rows without a key */
} embedder;

static void report(embedder *e, const char *catalog,
                   const vlm_catalog_row *row, const char *why) {
  vlm_cli_error(e->cmd, "%s:%ld: %s%s%s%s: %s", catalog, row->line,
                vlm_skip_reason_name(row->error ? row->error
                                                : VLM_SKIP_CORRUPT_IMAGE),
                row->key ? ": key \"" : "", row->key ? row->key : "",
                row->key ? "\"" : "", why);
  e->bad++;
}

/* Embed and write the rows of the batch. */
static int flush_batch(embedder *e, const char *catalog) {
  int npix = 0, ntext = 0, rc = 0;
  int *pix_slot = calloc((size_t)e->n + 1, sizeof *pix_slot);
  int *text_slot = calloc((size_t)e->n + 1, sizeof *text_slot);
  const char **texts = calloc((size_t)e->n + 1, sizeof *texts);
  if (!pix_slot || !text_slot || !texts) {
    rc = vlm_seterr(VLM_ENOMEM, "a batch");
    goto done;
  }
  for (int i = 0; i < e->n; i++) {
    vlm_catalog_row *row = &e->rows[i];
    pix_slot[i] = text_slot[i] = -1;
    if (row->kept && !row->image_vec) {
      /* an export's kept bytes are the item's image: no file to read */
      if (vlm_clip_preprocess(e->clip, row->kept, row->kept_len,
                              e->pixels + (size_t)npix * e->pixel_floats)) {
        row->error = VLM_SKIP_CORRUPT_IMAGE;
        report(e, catalog, row, vlm_errmsg());
        continue;
      }
      pix_slot[i] = npix++;
    } else if (row->image && !row->image_vec) {
      if (row->image[0] != '/') {
        row->error = VLM_SKIP_MISSING_FILE;
        report(e, catalog, row, "only local files can be read");
        continue;
      }
      if (access(row->image, R_OK) != 0) {
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "%s: %s", row->image, strerror(errno));
        row->error = VLM_SKIP_MISSING_FILE;
        report(e, catalog, row, why);
        continue;
      }
      if (vlm_clip_preprocess_file(e->clip, row->image,
                                   e->pixels + (size_t)npix * e->pixel_floats)) {
        row->error = VLM_SKIP_CORRUPT_IMAGE;
        report(e, catalog, row, vlm_errmsg());
        continue;
      }
      pix_slot[i] = npix++;
    }
    if (row->text && !row->text_vec) {
      text_slot[i] = ntext;
      texts[ntext++] = row->text;
    }
  }
  if (npix && (rc = vlm_clip_encode_pixels(e->clip, e->pixels, npix, 0,
                                           e->image_out)))
    goto done;
  if (ntext && (rc = vlm_clip_encode_texts(e->clip, texts, ntext, 0,
                                           e->text_out)))
    goto done;
  for (int i = 0; i < e->n; i++) {
    vlm_catalog_row *row = &e->rows[i];
    if (row->error)
      continue;
    const float *iv = pix_slot[i] >= 0
                          ? e->image_out + (size_t)pix_slot[i] * e->dim
                          : row->image_vec;
    const float *tv = text_slot[i] >= 0
                          ? e->text_out + (size_t)text_slot[i] * e->dim
                          : row->text_vec;
    json_t *m = json_object();
    json_object_set_new(m, "key", json_string(row->key));
    if (row->image)
      json_object_set_new(m, "image_path", json_string(row->image));
    if (row->caption)
      json_object_set_new(m, "caption", json_string(row->caption));
    if (row->source && (!row->image || strcmp(row->source, row->image)))
      json_object_set_new(m, "source", json_string(row->source));
    if (row->meta_json)
      json_object_set_new(m, "meta", json_loads(row->meta_json, 0, NULL));
    rc = vlm__emb_writer_add(e->out, iv, tv, m);
    json_decref(m);
    if (rc)
      goto done;
    e->written++;
    e->images += iv != NULL;
    e->texts += tv != NULL;
  }
done:
  for (int i = 0; i < e->n; i++)
    vlm_catalog_row_clear(&e->rows[i]);
  e->n = 0;
  free(pix_slot);
  free(text_slot);
  free(texts);
  return rc;
}

static int parse_format(const char *s, vlm_catalog_format *out) {
  static const char *const names[] = {"jsonl", "csv", "tsv", "dir"};
  static const vlm_catalog_format formats[] = {
      VLM_CATALOG_JSONL, VLM_CATALOG_CSV, VLM_CATALOG_TSV, VLM_CATALOG_DIR};
  for (int i = 0; i < 4; i++)
    if (!strcmp(s, names[i])) {
      *out = formats[i];
      return 0;
    }
  return -1;
}

int cmd_embed_files(int argc, char **argv) {
  const char *cmd = "embed", *catalog = NULL, *out_dir = NULL, *model = NULL,
             *cluster_path = NULL, *shard_text = NULL, *images_root = NULL;
  long threads = 0, batch = 32;
  int f16 = 1, as_json = 0, orient = VLM_ORIENT_MODEL;
  vlm_catalog_format format = VLM_CATALOG_AUTO;
  static const struct option longopts[] = {
      {"catalog", required_argument, NULL, 'C'},
      {"out", required_argument, NULL, 'o'},
      {"model", required_argument, NULL, 'm'},
      {"cluster", required_argument, NULL, 'c'},
      {"shard", required_argument, NULL, 's'},
      {"dtype", required_argument, NULL, 'd'},
      {"batch", required_argument, NULL, 'b'},
      {"threads", required_argument, NULL, 't'},
      {"images-root", required_argument, NULL, 'r'},
      {"format", required_argument, NULL, 'f'},
      {"exif", required_argument, NULL, 'e'},
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'C': catalog = optarg; break;
    case 'o': out_dir = optarg; break;
    case 'm': model = optarg; break;
    case 'c': cluster_path = optarg; break;
    case 's': shard_text = optarg; break;
    case 'r': images_root = optarg; break;
    case 'j': as_json = 1; break;
    case 'd':
      if (!strcmp(optarg, "float16"))
        f16 = 1;
      else if (!strcmp(optarg, "float32"))
        f16 = 0;
      else
        return vlm_cli_usage_error(cmd, "--dtype is float16 or float32");
      break;
    case 'b':
      if (vlm_cli_parse_long(cmd, "--batch", optarg, 1, 4096, &batch))
        return VLM_EXIT_USAGE;
      break;
    case 't':
      if (vlm_cli_parse_long(cmd, "--threads", optarg, 1, 256, &threads))
        return VLM_EXIT_USAGE;
      break;
    case 'f':
      if (parse_format(optarg, &format))
        return vlm_cli_usage_error(cmd, "--format is jsonl, csv, tsv or dir");
      break;
    case 'e':
      if ((orient = vlm_cli_orientation(optarg)) < 0)
        return vlm_cli_usage_error(cmd, "--exif is apply, ignore or model");
      break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: return vlm_cli_getopt_failed(cmd);
    }
  }
  if (!catalog || !out_dir)
    return vlm_cli_usage_error(cmd, "--catalog and --out go together");
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  if (!cluster_path != !shard_text)
    return vlm_cli_usage_error(cmd, "--cluster FILE and --shard I go "
                               "together");

  int status = VLM_EXIT_RUNTIME, rc;
  vlm_cluster *cluster = NULL;
  vlm_catalog *cat = NULL;
  embedder e = {.cmd = cmd, .batch = (int)batch};
  int shard = -1;
  char name[32] = "0";
  if (cluster_path) {
    if (vlm_cli_cluster_load(cmd, cluster_path, &cluster))
      goto done;
    if (vlm_cli_shard_choose(cmd, shard_text, cluster, &shard)) {
      status = VLM_EXIT_USAGE;
      goto done;
    }
    /* clip-retrieval: the partition number zero-padded to
     * int(log10(partition count)) + 1 digits */
    int digits = (int)log10((double)cluster->nshards) + 1;
    snprintf(name, sizeof name, "%0*d", digits, shard);
  }
  const char *dir = model ? model : vlm_cli_default_model();
  vlm_clip_options copts = {.threads = (int)threads,
                            .orientation = (vlm_orient_mode)orient};
  if ((rc = vlm_clip_load(dir, &copts, &e.clip))) {
    vlm_cli_error(cmd, "loading the model from %s: %s", dir, vlm_errmsg());
    goto done;
  }
  e.dim = vlm_clip_dim(e.clip);
  int S = vlm_clip_image_size(e.clip);
  e.pixel_floats = (size_t)3 * S * S;
  e.rows = calloc((size_t)batch, sizeof *e.rows);
  e.pixels = malloc((size_t)batch * e.pixel_floats * sizeof(float));
  e.image_out = malloc((size_t)batch * e.dim * sizeof(float));
  e.text_out = malloc((size_t)batch * e.dim * sizeof(float));
  if (!e.rows || !e.pixels || !e.image_out || !e.text_out) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }
  vlm_catalog_options catopts = {
      .format = format, .images_root = images_root, .dim = e.dim};
  if (vlm_catalog_open(catalog, &catopts, &cat)) {
    vlm_cli_error(cmd, "%s", vlm_errmsg());
    goto done;
  }
  if ((rc = vlm__emb_writer_open(out_dir, name, e.dim, f16, &e.out))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  for (;;) {
    vlm_catalog_row *row = &e.rows[e.n];
    rc = vlm_catalog_next(cat, row);
    if (rc < 0) {
      vlm_cli_error(cmd, "reading %s: %s", catalog, vlm_errmsg());
      goto done;
    }
    if (rc == 0)
      break;
    if (row->key && cluster &&
        vlm_cluster_shard_of(cluster, row->key, strlen(row->key)) != shard) {
      e.other_shard++;
      vlm_catalog_row_clear(row);
      continue;
    }
    if (row->error) {
      e.keyless += cluster && !row->key;
      report(&e, catalog, row, row->message);
      vlm_catalog_row_clear(row);
      continue;
    }
    if (++e.n == e.batch && (rc = flush_batch(&e, catalog))) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
  }
  if (e.n && (rc = flush_batch(&e, catalog))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  rc = vlm__emb_writer_finish(e.out);
  e.out = NULL;
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  if (as_json) {
    json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "out", out_dir,
                          "partition", name, "rows", (json_int_t)e.written,
                          "images", (json_int_t)e.images, "texts",
                          (json_int_t)e.texts, "bad", (json_int_t)e.bad,
                          "other_shard", (json_int_t)e.other_shard);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (text)
      printf("%s\n", text);
    free(text);
    json_decref(o);
  } else {
    printf("embedded %ld rows into %s (partition %s): %ld image vectors, %ld "
           "text vectors; skipped %ld bad rows, %ld of other shards\n",
           e.written, out_dir, name, e.images, e.texts, e.bad, e.other_shard);
  }
  /* exit 1 when rows failed and none was written, as ingest */
  status = e.bad > e.keyless && !e.written ? VLM_EXIT_RUNTIME : VLM_EXIT_OK;
done:
  vlm__emb_writer_abort(e.out);
  for (int i = 0; e.rows && i < e.batch; i++)
    vlm_catalog_row_clear(&e.rows[i]);
  free(e.rows);
  free(e.pixels);
  free(e.image_out);
  free(e.text_out);
  vlm_catalog_close(cat);
  vlm_clip_free(e.clip);
  vlm_cluster_free(cluster);
  return status;
}
