/* cmd_sheet.c - `vlmdb sheet`: a contact sheet of search results, one row
 * of stored thumbnails per text query, written as a PNG. */
#include "vlm_cli.h"

#include <errno.h>
#include <getopt.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "opts.h"
#include "preprocess.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlmdb.h"

static const char usage[] =
    "usage: vlmdb sheet --db DIR --out FILE.png --text Q [--text Q ...]\n"
    "                   [-k N] [--cell PX] [--collapse T] [--filter EXPR]\n"
    "                   [--target image|text|any] [--model DIR]\n"
    "\n"
    "Search the database for each --text query and draw the results' stored\n"
    "thumbnails as a PNG contact sheet: one row per query, best result on\n"
    "the left, each thumbnail fitted into a white square cell (reduced,\n"
    "never enlarged).  Results\n"
    "without a thumbnail are left as an empty grey cell.  Prints one line\n"
    "per row: the query and the keys shown.\n"
    "\n"
    "  --db DIR            the database\n"
    "  --out FILE.png      the picture (written to a temporary file, then\n"
    "                      renamed)\n"
    "  --text Q            a query (repeat for more rows, at most 64)\n"
    "  -k, --k N           results per row (default 8, at most 64)\n"
    "  --cell PX           cell side in pixels (default 96, 16..512)\n"
    "  --collapse T        one result per group of near-identical images\n"
    "  --filter EXPR       SQL condition, as for `vlmdb search`\n"
    "  --target T          image (default), text or any\n"
    "  --model DIR         the model, if not where the database says\n"
    "  -h, --help          this help\n"
    "\n"
    "example:\n"
    "  vlmdb sheet --db data/demo.vlmdb --out sheet.png -k 6 \\\n"
    "              --text \"a furry pet\" --text \"something to drink\"\n";

enum { MAX_QUERIES = 64, GAP = 4 };

typedef struct {
  int w, h;
  uint8_t *rgb;
} canvas;

static void fill(canvas *c, int x0, int y0, int w, int h, uint8_t v) {
  for (int y = y0; y < y0 + h && y < c->h; y++)
    memset(c->rgb + ((size_t)y * c->w + x0) * 3, v, (size_t)w * 3);
}

/* Fit a decoded thumbnail into the cell at (x0, y0), centred, on white. */
static int draw_cell(canvas *c, int x0, int y0, int cell, const uint8_t *jpeg,
                     size_t len) {
  vlm_clip_options o = {.alpha = VLM_ALPHA_WHITE};
  vlm_image img = {0}, small = {0};
  int rc = vlm_image_decode(jpeg, len, &o, &img);
  if (rc)
    return rc;
  int w = img.w, h = img.h;
  if (w > cell || h > cell) { /* reduced to fit; a smaller one is centred */
    if (w >= h) {
      h = (int)(((int64_t)h * cell + w / 2) / w);
      w = cell;
    } else {
      w = (int)(((int64_t)w * cell + h / 2) / h);
      h = cell;
    }
    if (w < 1)
      w = 1;
    if (h < 1)
      h = 1;
    rc = vlm__image_area_resize(&img, w, h, &small);
  } else {
    small = img;
    img = (vlm_image){0};
  }
  if (rc == 0) {
    fill(c, x0, y0, cell, cell, 0xff);
    int ox = x0 + (cell - w) / 2, oy = y0 + (cell - h) / 2;
    for (int y = 0; y < h; y++)
      memcpy(c->rgb + ((size_t)(oy + y) * c->w + ox) * 3,
             small.rgb + (size_t)y * w * 3, (size_t)w * 3);
  }
  vlm_image_free(&small);
  vlm_image_free(&img);
  return rc;
}

static int write_png(const char *path, const canvas *c) {
  char tmp[4200];
  if (snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid()) >=
      (int)sizeof tmp)
    return vlm_seterr(VLM_EINVAL, "%s: path too long", path);
  FILE *f = fopen(tmp, "wb");
  if (!f)
    return vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info) {
    png_destroy_write_struct(&png, &info);
    fclose(f);
    unlink(tmp);
    return vlm_seterr(VLM_ENOMEM, "PNG encoder");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    fclose(f);
    unlink(tmp);
    return vlm_seterr(VLM_EIO, "%s: cannot write the PNG", tmp);
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)c->w, (png_uint_32)c->h, 8,
               PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < c->h; y++)
    png_write_row(png, c->rgb + (size_t)y * c->w * 3);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  int bad = fflush(f) || fsync(fileno(f));
  bad |= fclose(f);
  if (bad || rename(tmp, path)) {
    int e = errno;
    unlink(tmp);
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(e));
  }
  return 0;
}

int cmd_sheet(int argc, char **argv) {
  const char *cmd = "sheet";
  const char *db_dir = NULL, *out = NULL, *model_dir = NULL;
  const char *queries[MAX_QUERIES];
  int nq = 0;
  long k = 8, cell = 96;
  vlm_search_options sopts = {.target = VLM_TARGET_IMAGE};
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"out", required_argument, NULL, 'o'},
      {"text", required_argument, NULL, 't'},
      {"k", required_argument, NULL, 'k'},
      {"cell", required_argument, NULL, 'c'},
      {"collapse", required_argument, NULL, 'C'},
      {"filter", required_argument, NULL, 'f'},
      {"target", required_argument, NULL, 'T'},
      {"model", required_argument, NULL, 'm'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "k:h", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': db_dir = optarg; break;
    case 'o': out = optarg; break;
    case 't':
      if (nq == MAX_QUERIES)
        return vlm_cli_usage_error(cmd, "at most %d --text", MAX_QUERIES);
      queries[nq++] = optarg;
      break;
    case 'k':
      if (vlm_cli_parse_long(cmd, "-k", optarg, 1, 64, &k))
        return VLM_EXIT_USAGE;
      break;
    case 'c':
      if (vlm_cli_parse_long(cmd, "--cell", optarg, 16, 512, &cell))
        return VLM_EXIT_USAGE;
      break;
    case 'C':
      if (vlm_cli_parse_collapse(cmd, optarg, &sopts.collapse))
        return VLM_EXIT_USAGE;
      break;
    case 'f': sopts.filter = optarg; break;
    case 'T':
      if (vlm_cli_parse_target(cmd, optarg, &sopts.target))
        return VLM_EXIT_USAGE;
      break;
    case 'm': model_dir = optarg; break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: fputs(usage, stderr); return VLM_EXIT_USAGE;
    }
  }
  if (!db_dir || !out || !nq)
    return vlm_cli_usage_error(cmd, "--db DIR, --out FILE.png and at least "
                                    "one --text are required");
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  sopts.k = (int)k;

  int status = VLM_EXIT_RUNTIME, rc;
  vlm_db *db = NULL;
  vlm_clip *clip = NULL;
  float *qv = NULL;
  canvas cv = {GAP + (int)k * ((int)cell + GAP), GAP + nq * ((int)cell + GAP),
               NULL};
  cv.rgb = malloc((size_t)cv.w * cv.h * 3);
  if (!cv.rgb) {
    vlm_cli_liberror(cmd, vlm_seterr(VLM_ENOMEM, "contact sheet"));
    return status;
  }
  fill(&cv, 0, 0, cv.w, cv.h, 0xd8);
  if (vlm_cli_open_db(cmd, db_dir, 1, &db) ||
      vlm_cli_load_model(cmd, db, model_dir, 0, &clip))
    goto done;
  vlm_db_info info;
  if ((rc = vlm_db_stat(db, &info)) ||
      !(qv = malloc((size_t)info.dim * sizeof *qv))) {
    vlm_cli_liberror(cmd, rc ? rc : vlm_seterr(VLM_ENOMEM, "query"));
    goto done;
  }
  for (int q = 0; q < nq; q++) {
    vlm_hit *hits = NULL;
    int nh = 0;
    if ((rc = vlm_clip_encode_texts(clip, &queries[q], 1, 0, qv)) ||
        (rc = vlm_db_search(db, qv, &sopts, &hits, &nh))) {
      vlm_cli_liberror(cmd, rc);
      status = rc == VLM_EFILTER ? VLM_EXIT_USAGE : status;
      goto done;
    }
    printf("%s:", queries[q]);
    int y0 = GAP + q * ((int)cell + GAP);
    for (int h = 0; h < nh; h++) {
      int x0 = GAP + h * ((int)cell + GAP);
      vlm_record *rec = NULL;
      rc = vlm_db_get(db, hits[h].key, &rec);
      if (!(rc == 0 && rec->thumb &&
            draw_cell(&cv, x0, y0, (int)cell, rec->thumb, rec->thumb_len) ==
                0))
        fill(&cv, x0, y0, (int)cell, (int)cell, 0xb0); /* no picture */
      printf(" %s", hits[h].key);
      if (hits[h].similar)
        printf(" (+%d)", hits[h].similar);
      vlm_record_free(rec);
    }
    putchar('\n');
    vlm_hits_free(hits, nh);
  }
  if ((rc = write_png(out, &cv))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  status = VLM_EXIT_OK;
done:
  free(cv.rgb);
  free(qv);
  vlm_clip_free(clip);
  vlm_db_close(db);
  return status;
}
