/* cmd_merge.c - `vlmdb merge --into DB SHARD...`: shard databases
 * combined into one, every item under its global id (merge.h), in
 * batches that are as crash-safe as any put: a merge killed part-way
 * leaves DB openable with a prefix of the items, and the same command run
 * again skips what is there and finishes.  The merged database indexes
 * its items itself (an HNSW graph is rebuilt: FAISS cannot merge graphs);
 * --image-index / --text-index hand it the IVF index `vlmdb index merge`
 * made from the same shards instead. */
#include "merge.h"
#include "opts.h"
#include "progress.h"
#include "vlm_cli.h"
#include "vlm_error.h"
#include "vlmdb.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char merge_usage[] =
    "usage: vlmdb merge --into DB [--image-index FILE] [--text-index FILE]\n"
    "                   [--batch N] [--json] SHARD...\n"
    "\n"
    "Combine shard databases into DB (created if missing): every record,\n"
    "its vectors bit for bit, its kept image bytes and its metadata rows,\n"
    "under its global id: the shard's own id plus the shard's offset, the\n"
    "id spaces of the shards before it (ordered by the shard index their\n"
    "manifests record, else as given).  The shards must agree on model,\n"
    "dimension, index kind and fields; DB keeps images (`vlmdb init\n"
    "--keep-images`) when a shard does.  Each batch commits like any put\n"
    "(at most 64 MiB of kept image bytes), so a merge killed\n"
    "part-way leaves DB openable, and the same command run again finishes\n"
    "it (items already in DB are skipped).  DB builds its own index of the\n"
    "kind the shards have (an HNSW graph is rebuilt); --image-index and\n"
    "--text-index give it instead the IVF index `vlmdb index merge` made\n"
    "from the same shards (the file and its FILE.ivfdata are copied in and\n"
    "served memory-mapped: `vlmdb serve --mmap`).\n"
    "\n"
    "  --into DB            the merged database\n"
    "  --image-index FILE   a merged IVF index of the shards' image vectors\n"
    "  --text-index FILE    the same for text vectors\n"
    "  --batch N            items per batch (default 1000; fewer when\n"
    "                       their kept image bytes reach 64 MiB)\n"
    "  --json               print the summary as JSON\n"
    "\n"
    "example:\n"
    "  vlmdb merge --into photos.vlm shards/shard-*\n";

/* A batch also ends once the kept image bytes it holds reach this, so a
 * merge of items that keep large images holds a bounded amount of them. */
#define MERGE_BATCH_IMAGE_BYTES ((size_t)64 << 20)

typedef struct {
  vlm_db *into;
  int64_t offset;
  int batch, n;
  size_t image_bytes; /* kept bytes in the batch */
  vlm_record **recs;
  vlm_item *items;
  uint64_t *ids;
  long written, seen;
  vlm_progress progress;
} merger;

static int flush_batch(merger *mg) {
  for (int i = 0; i < mg->n; i++) {
    vlm_record *r = mg->recs[i];
    mg->items[i] = (vlm_item){.key = r->key,
                              .image_vec = r->image_vec,
                              .text_vec = r->text_vec,
                              .caption = r->caption,
                              .source = r->source,
                              .thumb = r->thumb,
                              .thumb_len = r->thumb_len,
                              .meta_json = r->meta_json,
                              .image = r->image,
                              .image_len = r->image ? r->image_len : 0};
  }
  int written = 0;
  int rc = vlm_db_put_at(mg->into, mg->items, mg->ids, mg->n, &written);
  mg->written += written;
  if (rc == 0)
    vlm_progress_update(&mg->progress, mg->seen);
  for (int i = 0; i < mg->n; i++)
    vlm_record_free(mg->recs[i]);
  mg->n = 0;
  mg->image_bytes = 0;
  return rc;
}

/* vlm_cli_walk_ids frees the record it hands over: keep a copy. */
static vlm_record *copy_record(const vlm_record *r) {
  vlm_record *c = calloc(1, sizeof *c);
  size_t vb = (size_t)r->dim * sizeof(float);
  if (!c)
    return NULL;
  *c = *r;
  c->key = strdup(r->key);
  c->caption = r->caption ? strdup(r->caption) : NULL;
  c->source = r->source ? strdup(r->source) : NULL;
  c->meta_json = r->meta_json ? strdup(r->meta_json) : NULL;
  c->image_vec = r->image_vec ? malloc(vb) : NULL;
  c->text_vec = r->text_vec ? malloc(vb) : NULL;
  c->thumb = r->thumb ? malloc(r->thumb_len ? r->thumb_len : 1) : NULL;
  c->image = r->image ? malloc(r->image_len ? r->image_len : 1) : NULL;
  if (!c->key || (r->caption && !c->caption) || (r->source && !c->source) ||
      (r->meta_json && !c->meta_json) || (r->image_vec && !c->image_vec) ||
      (r->text_vec && !c->text_vec) || (r->thumb && !c->thumb) ||
      (r->image && !c->image)) {
    vlm_record_free(c);
    return NULL;
  }
  if (c->image_vec)
    memcpy(c->image_vec, r->image_vec, vb);
  if (c->text_vec)
    memcpy(c->text_vec, r->text_vec, vb);
  if (c->thumb)
    memcpy(c->thumb, r->thumb, r->thumb_len);
  if (c->image)
    memcpy(c->image, r->image, r->image_len);
  return c;
}

static int take_one(const vlm_record *rec, void *arg) {
  merger *mg = arg;
  vlm_record *c = copy_record(rec);
  if (!c)
    return vlm_seterr(VLM_ENOMEM, "merge: record \"%s\"", rec->key);
  mg->recs[mg->n] = c;
  mg->ids[mg->n++] = (uint64_t)mg->offset + rec->id;
  mg->seen++;
  mg->image_bytes += c->image ? c->image_len : 0;
  return mg->n == mg->batch || mg->image_bytes >= MERGE_BATCH_IMAGE_BYTES
             ? flush_batch(mg)
             : 0;
}

static int same_fields(const vlm_db_info *a, const vlm_db_info *b) {
  if (a->nfields != b->nfields)
    return 0;
  for (int i = 0; i < a->nfields; i++)
    if (a->field_types[i] != b->field_types[i] ||
        strcmp(a->field_names[i], b->field_names[i]))
      return 0;
  return 1;
}

/* What must agree between shards, and between them and DB: NULL or what
 * differs. */
static const char *differs(const vlm_db_info *a, const vlm_db_info *b) {
  if (a->dim != b->dim)
    return "dimension";
  if (strcmp(a->model_id, b->model_id))
    return "model";
  if (strcmp(a->index_factory, b->index_factory))
    return "index kind";
  if (!same_fields(a, b))
    return "declared fields";
  return NULL;
}

int cmd_merge(int argc, char **argv) {
  const char *cmd = "merge", *into = NULL, *image_index = NULL,
             *text_index = NULL;
  long batch = 1000;
  int as_json = 0, c;
  static const struct option longopts[] = {
      {"into", required_argument, NULL, 'i'},
      {"image-index", required_argument, NULL, 'I'},
      {"text-index", required_argument, NULL, 'T'},
      {"batch", required_argument, NULL, 'b'},
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'i': into = optarg; break;
    case 'I': image_index = optarg; break;
    case 'T': text_index = optarg; break;
    case 'j': as_json = 1; break;
    case 'b':
      if (vlm_cli_parse_long(cmd, "--batch", optarg, 1, 100000, &batch))
        return VLM_EXIT_USAGE;
      break;
    case 'h': fputs(merge_usage, stdout); return VLM_EXIT_OK;
    default: return vlm_cli_getopt_failed(cmd);
    }
  }
  int n = argc - optind;
  char **dirs = argv + optind;
  if (!into || n < 1)
    return vlm_cli_usage_error(cmd, "--into DB and one SHARD or more are "
                               "required");
  vlm_db **shards = calloc((size_t)n, sizeof *shards);
  vlm_db_info *info = calloc((size_t)n, sizeof *info);
  int *shard = calloc((size_t)n, sizeof *shard), *order = calloc((size_t)n, sizeof *order);
  uint64_t *space = calloc((size_t)n, sizeof *space);
  int64_t *offsets = calloc((size_t)n, sizeof *offsets);
  merger mg = {.batch = (int)batch};
  mg.recs = calloc((size_t)batch, sizeof *mg.recs);
  mg.items = calloc((size_t)batch, sizeof *mg.items);
  mg.ids = calloc((size_t)batch, sizeof *mg.ids);
  int rc = VLM_EXIT_RUNTIME, err;
  double t0 = vlm_now();
  if (!shards || !info || !shard || !order || !space || !offsets ||
      !mg.recs || !mg.items || !mg.ids) {
    vlm_cli_error(cmd, "out of memory");
    goto out;
  }
  for (int i = 0; i < n; i++) {
    if (vlm_cli_open_db(cmd, dirs[i], 1, &shards[i]))
      goto out;
    if ((err = vlm_db_stat(shards[i], &info[i]))) {
      vlm_cli_liberror(cmd, err);
      goto out;
    }
    const char *what = i ? differs(&info[0], &info[i]) : NULL;
    if (what) {
      vlm_cli_error(cmd, "%s and %s differ in %s", dirs[0], dirs[i], what);
      goto out;
    }
    shard[i] = info[i].shard;
    space[i] = info[i].next_id - 1;
  }
  char why[256];
  if (vlm_cli_shard_offsets(n, shard, space, order, offsets, why,
                            sizeof why)) {
    vlm_cli_error(cmd, "%s", why);
    goto out;
  }

  /* DB: created from the shards' configuration (holding every slot; it
   * keeps images when a shard does), or the same DB a killed merge left */
  struct stat st;
  int keep_images = 0;
  for (int i = 0; i < n; i++)
    keep_images |= info[i].keep_images;
  if (stat(into, &st) != 0) {
    vlm_field fields[VLM_DB_MAX_FIELDS];
    for (int i = 0; i < info[0].nfields; i++)
      fields[i] = (vlm_field){info[0].field_names[i], info[0].field_types[i]};
    vlm_db_config cfg = {
        .dim = info[0].dim, .index_factory = info[0].index_factory,
        .model_id = info[0].model_id,
        .model_dir = info[0].model_dir[0] ? info[0].model_dir : NULL,
        .fields = fields, .nfields = info[0].nfields,
        .model_family = info[0].model_family,
        .image_orientation = info[0].image_orientation,
        .keep_images = keep_images};
    if ((err = vlm_db_create(into, &cfg, &mg.into))) {
      vlm_cli_liberror(cmd, err);
      goto out;
    }
    vlm_db_close(mg.into);
    mg.into = NULL;
  }
  /* A modality that takes a merged index builds none of its own first
   * (at LAION's size that would be the whole index in memory). */
  vlm_db_open_options oo = {.defer_index = (image_index ? 1u : 0u) |
                                           (text_index ? 2u : 0u)};
  if ((err = vlm_db_open(into, &oo, &mg.into))) {
    vlm_cli_liberror(cmd, err);
    goto out;
  }
  vlm_db_info dinfo;
  if ((err = vlm_db_stat(mg.into, &dinfo))) {
    vlm_cli_liberror(cmd, err);
    goto out;
  }
  const char *what = differs(&info[0], &dinfo);
  if (what || dinfo.nshards) {
    vlm_cli_error(cmd, "%s %s", into, what ? "differs from the shards in"
                                           : "is itself a shard");
    if (what)
      fprintf(stderr, "  (%s)\n", what);
    goto out;
  }
  long before = (long)dinfo.items, total = 0;
  for (int i = 0; i < n; i++)
    total += (long)info[i].items;
  vlm_progress_init(&mg.progress, stderr, "merge", total);
  for (int k = 0; k < n; k++) {
    int i = order[k];
    mg.offset = offsets[i];
    if ((err = vlm_cli_walk_ids(shards[i], VLM_GET_IMAGE, take_one, &mg)) ||
        (mg.n && (err = flush_batch(&mg)))) {
      vlm_cli_liberror(cmd, err);
      goto out;
    }
  }
  vlm_progress_finish(&mg.progress);
  const char *modality[2] = {"image", "text"};
  const char *adopt[2] = {image_index, text_index};
  for (int m = 0; m < 2; m++)
    if (adopt[m] && (err = vlm_db_adopt_index(mg.into, m, adopt[m]))) {
      vlm_cli_liberror(cmd, err);
      goto out;
    }
  if ((err = vlm_db_checkpoint(mg.into)) ||
      (err = vlm_db_stat(mg.into, &dinfo))) {
    vlm_cli_liberror(cmd, err);
    goto out;
  }
  double elapsed = vlm_now() - t0;
  if (as_json) {
    json_t *o = json_object(), *arr = json_array();
    json_object_set_new(o, "into", json_string(into));
    json_object_set_new(o, "items", json_integer(dinfo.items));
    json_object_set_new(o, "merged", json_integer(mg.written));
    json_object_set_new(o, "already_there", json_integer(mg.seen - mg.written));
    json_object_set_new(o, "items_before", json_integer(before));
    for (int k = 0; k < n; k++) {
      json_t *p = json_object();
      json_object_set_new(p, "db", json_string(dirs[order[k]]));
      json_object_set_new(p, "shard", json_integer(shard[order[k]]));
      json_object_set_new(p, "offset", json_integer(offsets[order[k]]));
      json_object_set_new(p, "items", json_integer(info[order[k]].items));
      json_array_append_new(arr, p);
    }
    json_object_set_new(o, "shards", arr);
    for (int m = 0; m < 2; m++)
      if (adopt[m])
        json_object_set_new(o, m ? "text_index" : "image_index",
                            json_string(adopt[m]));
    json_object_set_new(o, "elapsed_s", json_real(elapsed));
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (s)
      printf("%s\n", s);
    free(s);
    json_decref(o);
  } else {
    printf("merged %d shards into %s: %lld items (%ld new, %ld already "
           "there) in %.1f s\n", n, into, (long long)dinfo.items, mg.written,
           mg.seen - mg.written, elapsed);
    for (int m = 0; m < 2; m++)
      if (adopt[m])
        printf("%s index: %s, memory-mapped\n", modality[m], adopt[m]);
  }
  rc = VLM_EXIT_OK;
out:
  for (int i = 0; i < mg.n; i++)
    vlm_record_free(mg.recs[i]);
  vlm_db_close(mg.into);
  if (shards)
    for (int i = 0; i < n; i++)
      vlm_db_close(shards[i]);
  free(shards);
  free(info);
  free(shard);
  free(order);
  free(space);
  free(offsets);
  free(mg.recs);
  free(mg.items);
  free(mg.ids);
  return rc;
}
