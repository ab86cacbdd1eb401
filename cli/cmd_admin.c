/* cmd_admin.c - the small database commands: info, get, delete, export,
 * update, config, reindex, verify, recover, salvage, backup. */
#include "catalog.h"
#include "opts.h"
#include "progress.h"
#include "vlm_cli.h"
#include "vlm_error.h"
#include "vlmdb.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Parse the flags every admin command shares (--db, --json, --help) and
 * its own; returns -1 to go on, else the exit status. */
typedef struct {
  const char *cmd;
  const char *usage;
  const char *db_dir;
  int as_json;
  int vectors;          /* get, export: --vectors */
  const char *thumb;    /* get: --thumb FILE */
  const char *image;    /* get: --image FILE */
  const char *output;   /* export: -o FILE; salvage: --out DIR */
  const char *factory;  /* reindex: --index */
  int text;             /* reindex: --text */
  int no_images;        /* export: --no-images */
  const char *keep;     /* config: --keep-images on|off */
  const char *meta;     /* update: --meta JSON */
  const char *source;   /* update: --source URI */
  int first_arg;        /* argv index of the first positional argument */
} admin_args;

enum { OPT_VECTORS = 1, OPT_THUMB = 2, OPT_OUTPUT = 4, OPT_INDEX = 8,
       OPT_ARGS = 16, /* takes positional arguments (keys) */
       OPT_UPDATE = 32, /* --meta, --source */
       OPT_TEXT = 64, /* reindex: --text */
       OPT_NO_IMAGES = 128, /* export: --no-images */
       OPT_KEEP = 256 /* config: --keep-images */ };

static int parse_admin(int argc, char **argv, unsigned allowed,
                       admin_args *a) {
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"json", no_argument, NULL, 'j'},
      {"vectors", no_argument, NULL, 'v'},
      {"thumb", required_argument, NULL, 't'},
      {"image", required_argument, NULL, 'I'},
      {"output", required_argument, NULL, 'o'},
      {"out", required_argument, NULL, 'o'},
      {"index", required_argument, NULL, 'i'},
      {"meta", required_argument, NULL, 'm'},
      {"source", required_argument, NULL, 's'},
      {"text", no_argument, NULL, 'T'},
      {"no-images", no_argument, NULL, 'N'},
      {"keep-images", required_argument, NULL, 'K'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, allowed & OPT_OUTPUT ? "o:h" : "h",
                          longopts, NULL)) != -1) {
    unsigned need = c == 'v'   ? OPT_VECTORS
                    : c == 't' || c == 'I' ? OPT_THUMB
                    : c == 'o' ? OPT_OUTPUT
                    : c == 'i' ? OPT_INDEX
                    : c == 'm' || c == 's' ? OPT_UPDATE
                    : c == 'T' ? OPT_TEXT
                    : c == 'N' ? OPT_NO_IMAGES
                    : c == 'K' ? OPT_KEEP
                               : 0;
    if (need && !(allowed & need))
      return vlm_cli_usage_error(a->cmd, "that flag is not for this command");
    switch (c) {
    case 'd': a->db_dir = optarg; break;
    case 'j': a->as_json = 1; break;
    case 'v': a->vectors = 1; break;
    case 't': a->thumb = optarg; break;
    case 'I': a->image = optarg; break;
    case 'o': a->output = optarg; break;
    case 'i': a->factory = optarg; break;
    case 'm': a->meta = optarg; break;
    case 's': a->source = optarg; break;
    case 'T': a->text = 1; break;
    case 'N': a->no_images = 1; break;
    case 'K': a->keep = optarg; break;
    case 'h': fputs(a->usage, stdout); return VLM_EXIT_OK;
    default: fputs(a->usage, stderr); return VLM_EXIT_USAGE;
    }
  }
  if (!a->db_dir)
    return vlm_cli_usage_error(a->cmd, "--db DIR is required");
  if (!(allowed & OPT_ARGS) && optind < argc)
    return vlm_cli_usage_error(a->cmd, "unexpected argument '%s'",
                               argv[optind]);
  a->first_arg = optind;
  return -1;
}

static void print_json_line(json_t *o) {
  char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
  if (s)
    printf("%s\n", s);
  free(s);
  json_decref(o);
}

static const char *type_name(vlm_field_type t) {
  return t == VLM_FIELD_TEXT ? "text" : t == VLM_FIELD_INT ? "int" : "real";
}

/* ---------------------------------------------------------------- info */

static const char info_usage[] =
    "usage: vlmdb info --db DIR [--json]\n"
    "\n"
    "Show a database's counts and configuration: items, vectors of each\n"
    "kind, the index, the model, declared fields and size on disk.\n"
    "\n"
    "example:\n"
    "  vlmdb info --db photos.vlm\n";

int cmd_info(int argc, char **argv) {
  admin_args a = {.cmd = "info", .usage = info_usage};
  int rc = parse_admin(argc, argv, 0, &a);
  if (rc >= 0)
    return rc;
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, 1, &db))
    return VLM_EXIT_RUNTIME;
  vlm_db_info info;
  rc = vlm_db_stat(db, &info);
  vlm_db_close(db);
  if (rc) {
    vlm_cli_liberror(a.cmd, rc);
    return VLM_EXIT_RUNTIME;
  }
  if (a.as_json) {
    json_t *o = json_object(), *fields = json_array();
    for (int i = 0; i < info.nfields; i++) {
      json_t *f = json_object();
      json_object_set_new(f, "name", json_string(info.field_names[i]));
      json_object_set_new(f, "type",
                          json_string(type_name(info.field_types[i])));
      json_array_append_new(fields, f);
    }
    json_object_set_new(o, "items", json_integer(info.items));
    json_object_set_new(o, "image_vectors", json_integer(info.image_vectors));
    json_object_set_new(o, "text_vectors", json_integer(info.text_vectors));
    json_object_set_new(o, "index_vectors", json_integer(info.index_vectors));
    json_object_set_new(o, "pending_vectors",
                        json_integer(info.pending_vectors));
    json_object_set_new(o, "index", json_string(info.index_factory));
    json_object_set_new(o, "index_trained", json_boolean(info.index_trained));
    json_t *tuned = json_object();
    json_object_set_new(tuned, "image", json_integer(info.tuned_effort[0]));
    json_object_set_new(tuned, "text", json_integer(info.tuned_effort[1]));
    json_object_set_new(o, "tuned_effort", tuned);
    json_t *measured = json_object();
    for (int m = 0; m < 2; m++) {
      json_t *r = json_object();
      json_object_set_new(r, "recall_at_10", json_real(info.tuned_recall[m]));
      json_object_set_new(r, "queries", json_integer(info.tuned_queries[m]));
      json_object_set_new(measured, m ? "text" : "image", r);
    }
    json_object_set_new(o, "tuned_measured", measured);
    json_object_set_new(o, "dim", json_integer(info.dim));
    json_object_set_new(o, "model_id", json_string(info.model_id));
    json_object_set_new(o, "model_dir", json_string(info.model_dir));
    json_object_set_new(o, "model_family", json_string(info.model_family));
    json_object_set_new(o, "image_orientation",
                        json_string(info.image_orientation));
    json_object_set_new(o, "keep_images", json_boolean(info.keep_images));
    json_object_set_new(o, "format_version",
                        json_integer(info.format_version));
    json_object_set_new(o, "fields", fields);
    json_object_set_new(o, "disk_bytes", json_integer((json_int_t)info.disk_bytes));
    if (info.shard >= 0) {
      json_t *c = json_object(), *slots = json_array();
      for (int i = 0; i < info.nslot_ranges; i++)
        json_array_append_new(slots, json_pack("[ii]",
                                               info.slot_ranges[i].first,
                                               info.slot_ranges[i].last));
      json_object_set_new(c, "digest", json_string(info.cluster_digest));
      json_object_set_new(c, "shard", json_integer(info.shard));
      json_object_set_new(c, "shards", json_integer(info.nshards));
      json_object_set_new(c, "slots", slots);
      json_object_set_new(o, "cluster", c);
    } else {
      json_object_set_new(o, "cluster", json_null());
    }
    print_json_line(o);
    return VLM_EXIT_OK;
  }
  printf("database:       %s\n", a.db_dir);
  printf("items:          %lld\n", (long long)info.items);
  printf("image vectors:  %lld\n", (long long)info.image_vectors);
  printf("text vectors:   %lld\n", (long long)info.text_vectors);
  printf("index:          %s (%lld vectors%s%s)\n", info.index_factory,
         (long long)info.index_vectors,
         info.index_trained ? "" : ", not trained yet: searches are exact",
         info.pending_vectors ? ", some pending" : "");
  if (info.tuned_effort[0] || info.tuned_effort[1]) {
    const char *what = strstr(info.index_factory, "HNSW") ? "efSearch" : "nprobe";
    printf("search effort:  %s", what);
    for (int m = 0; m < 2; m++) {
      const char *name = m ? "text" : "image";
      if (info.tuned_effort[m])
        printf("%s %s %d, measured recall@10 %.3f on %d held-out queries",
               m ? ";" : "", name, info.tuned_effort[m],
               info.tuned_recall[m], info.tuned_queries[m]);
      else
        printf("%s %s default", m ? ";" : "", name);
    }
    printf("\n");
  }
  printf("dimension:      %d\n", info.dim);
  printf("model:          %s\n", info.model_dir[0] ? info.model_dir : "?");
  printf("model id:       %s\n", info.model_id);
  printf("model family:   %s\n", info.model_family);
  printf("EXIF:           %s\n",
         !strcmp(info.image_orientation, "apply")
             ? "photos turned upright (--exif apply)"
         : !strcmp(info.image_orientation, "ignore")
             ? "orientation ignored (--exif ignore)"
             : "as the model says");
  printf("kept images:    %s\n",
         info.keep_images ? "yes, every image written is kept (--keep-images)"
                          : "no (only `ingest --keep-images` keeps them)");
  printf("fields:        ");
  if (info.nfields == 0)
    printf(" (none)");
  for (int i = 0; i < info.nfields && i < 64; i++)
    printf("%s %s:%s", i ? "," : "", info.field_names[i],
           type_name(info.field_types[i]));
  printf("\n");
  printf("disk:           %.1f MiB\n", (double)info.disk_bytes / (1 << 20));
  printf("format version: %d\n", info.format_version);
  if (info.shard >= 0) {
    char held[4096];
    vlm_slot_ranges_format(info.slot_ranges, info.nslot_ranges, held,
                           sizeof held);
    printf("shard:          %d of %d, slots %s (cluster %s)\n", info.shard,
           info.nshards, held, info.cluster_digest);
  }
  return VLM_EXIT_OK;
}

/* ----------------------------------------------------------------- get */

static const char get_usage[] =
    "usage: vlmdb get --db DIR KEY [--json] [--vectors] [--thumb FILE]\n"
    "                 [--image FILE]\n"
    "\n"
    "Print one item: caption, source, metadata, which vectors it has and\n"
    "its thumbnail's size.  --thumb FILE writes the JPEG thumbnail;\n"
    "--image FILE the original image bytes `ingest --keep-images` kept;\n"
    "--vectors adds the vectors to the JSON output.\n"
    "\n"
    "example:\n"
    "  vlmdb get --db photos.vlm p1 --thumb p1-thumb.jpg\n";

static json_t *vector_array(const float *v, int dim) {
  json_t *a = json_array();
  for (int i = 0; i < dim; i++)
    json_array_append_new(a, json_real(v[i]));
  return a;
}

int cmd_get(int argc, char **argv) {
  admin_args a = {.cmd = "get", .usage = get_usage};
  int rc = parse_admin(argc, argv, OPT_VECTORS | OPT_THUMB | OPT_ARGS, &a);
  if (rc >= 0)
    return rc;
  if (a.first_arg + 1 != argc)
    return vlm_cli_usage_error(a.cmd, "give exactly one KEY");
  const char *key = argv[a.first_arg];
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, 1, &db))
    return VLM_EXIT_RUNTIME;
  vlm_record *rec = NULL;
  int status = VLM_EXIT_RUNTIME;
  rc = vlm_db_get(db, key, &rec);
  if (rc) {
    vlm_cli_liberror(a.cmd, rc);
    goto done;
  }
  if (a.thumb) {
    if (!rec->thumb) {
      vlm_cli_error(a.cmd, "item \"%s\" has no thumbnail", key);
      goto done;
    }
    FILE *f = fopen(a.thumb, "wb");
    if (!f || fwrite(rec->thumb, 1, rec->thumb_len, f) != rec->thumb_len) {
      vlm_cli_error(a.cmd, "writing %s failed", a.thumb);
      if (f)
        fclose(f);
      goto done;
    }
    if (fclose(f)) {
      vlm_cli_error(a.cmd, "writing %s failed", a.thumb);
      goto done;
    }
  }
  if (a.image) {
    uint8_t *bytes = NULL;
    size_t len = 0;
    if ((rc = vlm_db_get_image(db, key, &bytes, &len))) {
      vlm_cli_liberror(a.cmd, rc);
      goto done;
    }
    if (!bytes) {
      vlm_cli_error(a.cmd, "item \"%s\" keeps no image bytes (ingest "
                    "--keep-images keeps them)", key);
      goto done;
    }
    FILE *f = fopen(a.image, "wb");
    int ok = f && fwrite(bytes, 1, len, f) == len;
    free(bytes);
    if ((f && fclose(f)) || !ok) {
      vlm_cli_error(a.cmd, "writing %s failed", a.image);
      goto done;
    }
  }
  json_t *meta = json_loads(rec->meta_json ? rec->meta_json : "{}", 0, NULL);
  if (a.as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "key", json_string(rec->key));
    json_object_set_new(o, "caption",
                        rec->caption ? json_string(rec->caption) : json_null());
    json_object_set_new(o, "source",
                        rec->source ? json_string(rec->source) : json_null());
    json_object_set_new(o, "meta", meta ? meta : json_object());
    json_object_set_new(o, "dim", json_integer(rec->dim));
    json_object_set_new(o, "image_vector",
                        !rec->image_vec ? json_null()
                        : a.vectors     ? vector_array(rec->image_vec, rec->dim)
                                        : json_true());
    json_object_set_new(o, "text_vector",
                        !rec->text_vec ? json_null()
                        : a.vectors    ? vector_array(rec->text_vec, rec->dim)
                                       : json_true());
    json_object_set_new(o, "thumb_bytes", json_integer((json_int_t)rec->thumb_len));
    json_object_set_new(o, "image_bytes", json_integer((json_int_t)rec->image_len));
    print_json_line(o);
  } else {
    char *meta_text = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    json_decref(meta);
    printf("key:      %s\n", rec->key);
    printf("caption:  %s\n", rec->caption ? rec->caption : "-");
    printf("source:   %s\n", rec->source ? rec->source : "-");
    printf("meta:     %s\n", meta_text ? meta_text : "{}");
    printf("vectors:  %s%s%s (dimension %d)\n",
           rec->image_vec ? "image" : "",
           rec->image_vec && rec->text_vec ? ", " : "",
           rec->text_vec ? "text" : "", rec->dim);
    if (rec->thumb)
      printf("thumb:    %zu bytes JPEG\n", rec->thumb_len);
    else
      printf("thumb:    -\n");
    if (rec->image_len)
      printf("image:    %zu bytes kept\n", rec->image_len);
    free(meta_text);
  }
  status = VLM_EXIT_OK;
done:
  vlm_record_free(rec);
  vlm_db_close(db);
  return status;
}

/* -------------------------------------------------------------- delete */

static const char delete_usage[] =
    "usage: vlmdb delete --db DIR KEY... [--json]\n"
    "\n"
    "Delete items by key from every store (keys that do not exist are\n"
    "ignored) and print how many existed.\n"
    "\n"
    "example:\n"
    "  vlmdb delete --db photos.vlm p1 p2\n";

int cmd_delete(int argc, char **argv) {
  admin_args a = {.cmd = "delete", .usage = delete_usage};
  int rc = parse_admin(argc, argv, OPT_ARGS, &a);
  if (rc >= 0)
    return rc;
  int n = argc - a.first_arg;
  if (n < 1)
    return vlm_cli_usage_error(a.cmd, "give the KEYs to delete");
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, 0, &db))
    return VLM_EXIT_RUNTIME;
  int deleted = 0;
  rc = vlm_db_delete(db, (const char *const *)argv + a.first_arg, n, &deleted);
  vlm_db_close(db);
  if (rc) {
    vlm_cli_liberror(a.cmd, rc);
    return VLM_EXIT_RUNTIME;
  }
  if (a.as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "requested", json_integer(n));
    json_object_set_new(o, "deleted", json_integer(deleted));
    print_json_line(o);
  } else {
    printf("deleted %d of %d key%s\n", deleted, n, n == 1 ? "" : "s");
  }
  return VLM_EXIT_OK;
}

/* -------------------------------------------------------------- export */

static const char update_usage[] =
    "usage: vlmdb update --db DIR KEY [--meta JSON] [--source URI] [--json]\n"
    "\n"
    "Change what is named of an existing item and keep everything else\n"
    "(vectors, thumbnail, caption): --meta replaces its whole metadata\n"
    "object (declared fields are checked and re-indexed for filters),\n"
    "--source its source.  One durable batch.  Exit status 1 when KEY does\n"
    "not exist.  (The server's UPDATE and SETMETA do the same, and UPDATE\n"
    "can also change the caption or image, embedding them again.)\n"
    "\n"
    "example:\n"
    "  vlmdb update --db photos.vlm p1 --meta '{\"category\": \"bikes\", "
    "\"year\": 2020}'\n";

int cmd_update(int argc, char **argv) {
  admin_args a = {.cmd = "update", .usage = update_usage};
  int rc = parse_admin(argc, argv, OPT_ARGS | OPT_UPDATE, &a);
  if (rc >= 0)
    return rc;
  if (argc - a.first_arg != 1)
    return vlm_cli_usage_error(a.cmd, "give one KEY to update");
  if (!a.meta && !a.source)
    return vlm_cli_usage_error(a.cmd, "nothing to change: give --meta JSON "
                               "or --source URI");
  const char *key = argv[a.first_arg];
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, 0, &db))
    return VLM_EXIT_RUNTIME;
  vlm_write_op op = {.kind = VLM_WRITE_UPDATE,
                     .item = {.key = key, .meta_json = a.meta,
                              .source = a.source}};
  int changed = 0;
  rc = vlm_db_write(db, &op, 1, &changed);
  vlm_db_close(db);
  if (rc) {
    vlm_cli_liberror(a.cmd, rc);
    return VLM_EXIT_RUNTIME;
  }
  if (a.as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "key", json_string(key));
    json_object_set_new(o, "updated", json_boolean(changed));
    print_json_line(o);
  } else if (changed) {
    printf("updated %s\n", key);
  }
  if (!changed) {
    fprintf(stderr, "vlmdb %s: no item with key \"%s\"\n", a.cmd, key);
    return VLM_EXIT_RUNTIME;
  }
  return VLM_EXIT_OK;
}

static const char export_usage[] =
    "usage: vlmdb export --db DIR [--vectors] [--no-images] [-o FILE]\n"
    "\n"
    "Write every item as a JSONL catalog that `vlmdb ingest` reads back:\n"
    "key, image (the stored source path), text (the caption), meta, and\n"
    "the image bytes the item keeps (`ingest --keep-images`) as kept_image\n"
    "(base64): ingest keeps them again and embeds the image from them, so\n"
    "the image files need not exist.  With --vectors each line also\n"
    "carries image_vector, text_vector and the thumbnail (base64), so\n"
    "ingest rebuilds the items without their image files and without\n"
    "running the model.\n"
    "\n"
    "  --vectors           the vectors and thumbnails too\n"
    "  --no-images         leave the kept image bytes out (ingest then\n"
    "                      reads the image files, which must exist)\n"
    "  -o, --output FILE   write there instead of stdout\n"
    "\n"
    "example:\n"
    "  vlmdb export --db photos.vlm --vectors -o photos-export.jsonl\n"
    "  vlmdb init --db copy.vlm && vlmdb ingest --db copy.vlm "
    "photos-export.jsonl\n";

typedef struct {
  FILE *out;
  int vectors;
  long n;
  long lossy; /* items whose vectors the line cannot rebuild */
  long kept;  /* items written with their kept image bytes */
} export_ctx;

static int export_one(const vlm_record *rec, void *arg) {
  export_ctx *x = arg;
  char *line = vlm_catalog_format_record(rec, x->vectors);
  if (!line)
    return vlm_seterr(VLM_ENOMEM, "formatting key \"%s\"", rec->key);
  x->kept += rec->image != NULL;
  int bad = fputs(line, x->out) < 0 || fputc('\n', x->out) == EOF;
  free(line);
  if (bad)
    return vlm_seterr(VLM_EIO, "writing the export failed");
  x->n++;
  if (!x->vectors && ((rec->image_vec && !rec->source && !rec->image) ||
                      (rec->text_vec && !rec->caption)))
    x->lossy++;
  return 0;
}

int cmd_export(int argc, char **argv) {
  admin_args a = {.cmd = "export", .usage = export_usage};
  int rc = parse_admin(argc, argv, OPT_VECTORS | OPT_OUTPUT | OPT_NO_IMAGES,
                       &a);
  if (rc >= 0)
    return rc;
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, 1, &db))
    return VLM_EXIT_RUNTIME;
  export_ctx x = {.out = stdout, .vectors = a.vectors};
  if (a.output && !(x.out = fopen(a.output, "w"))) {
    vlm_cli_error(a.cmd, "%s: cannot create", a.output);
    vlm_db_close(db);
    return VLM_EXIT_RUNTIME;
  }
  rc = vlm_db_foreach2(db, a.no_images ? 0u : VLM_GET_IMAGE, export_one,
                       &x);
  vlm_db_close(db);
  int close_failed = x.out != stdout ? fclose(x.out) : fflush(stdout);
  if (rc) {
    vlm_cli_liberror(a.cmd, rc);
    return VLM_EXIT_RUNTIME;
  }
  if (close_failed) {
    vlm_cli_error(a.cmd, "writing the export failed");
    return VLM_EXIT_RUNTIME;
  }
  if (x.kept)
    fprintf(stderr, "vlmdb %s: %ld items, %ld with their kept image bytes\n",
            a.cmd, x.n, x.kept);
  else
    fprintf(stderr, "vlmdb %s: %ld items\n", a.cmd, x.n);
  if (x.lossy)
    fprintf(stderr,
            "vlmdb %s: warning: %ld items have a vector without the source "
            "or caption it came from; only --vectors exports them whole\n",
            a.cmd, x.lossy);
  return VLM_EXIT_OK;
}

/* -------------------------------------------------------------- config */

static const char config_usage[] =
    "usage: vlmdb config --db DIR [--keep-images on|off] [--json]\n"
    "\n"
    "Show the settings of a database that can change after `vlmdb init`,\n"
    "or change them (needs the writer lock: stop a `vlmdb serve` first).\n"
    "\n"
    "  --keep-images on|off  whether the database keeps images: on, every\n"
    "                        ingest and the server's ADD, UPSERT and UPDATE\n"
    "                        with an image store the image's bytes with the\n"
    "                        item (as `ingest --keep-images`), so `vlmdb\n"
    "                        reembed` and `train --db` need no files.  Items\n"
    "                        stored already keep what they hold\n"
    "  --json                print the settings as JSON\n"
    "\n"
    "example:\n"
    "  vlmdb config --db photos.vlm --keep-images on\n";

int cmd_config(int argc, char **argv) {
  admin_args a = {.cmd = "config", .usage = config_usage};
  int rc = parse_admin(argc, argv, OPT_KEEP, &a);
  if (rc >= 0)
    return rc;
  int on = -1;
  if (a.keep) {
    if (!strcmp(a.keep, "on") || !strcmp(a.keep, "yes") ||
        !strcmp(a.keep, "true") || !strcmp(a.keep, "1"))
      on = 1;
    else if (!strcmp(a.keep, "off") || !strcmp(a.keep, "no") ||
             !strcmp(a.keep, "false") || !strcmp(a.keep, "0"))
      on = 0;
    else
      return vlm_cli_usage_error(a.cmd, "--keep-images is on or off, not "
                                 "'%s'", a.keep);
  }
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, on < 0, &db))
    return VLM_EXIT_RUNTIME;
  int was = vlm_db_keeps_images(db);
  if (on >= 0 && (rc = vlm_db_set_keep_images(db, on))) {
    vlm_db_close(db);
    vlm_cli_liberror(a.cmd, rc);
    return VLM_EXIT_RUNTIME;
  }
  int now = vlm_db_keeps_images(db);
  vlm_db_close(db);
  if (a.as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "keep_images", json_boolean(now));
    json_object_set_new(o, "changed", json_boolean(now != was));
    print_json_line(o);
  } else {
    printf("keep images: %s%s\n", now ? "on" : "off",
           on < 0 || now == was ? "" : was ? " (was on)" : " (was off)");
  }
  return VLM_EXIT_OK;
}

/* ------------------------------------------------------------- reindex */

static const char reindex_usage[] =
    "usage: vlmdb reindex --db DIR (--index FACTORY | --text) [--json]\n"
    "\n"
    "--index: rebuild the vector index with another FAISS kind (HNSW32,\n"
    "Flat, IVF1024,Flat, IVF1024,PQ64, ...), training it from the stored\n"
    "vectors when it needs training.\n"
    "--text: rebuild meta.sqlite (metadata rows and the captions' full-text\n"
    "index) from the payload store, with this version's caption tokenizer\n"
    "(vlm_cjk: CJK text as character bigrams); a database made before it\n"
    "keeps unicode61 until then.\n"
    "\n"
    "examples:\n"
    "  vlmdb reindex --db photos.vlm --index IVF256,SQ8\n"
    "  vlmdb reindex --db photos.vlm --text\n";

int cmd_reindex(int argc, char **argv) {
  admin_args a = {.cmd = "reindex", .usage = reindex_usage};
  int rc = parse_admin(argc, argv, OPT_INDEX | OPT_TEXT, &a);
  if (rc >= 0)
    return rc;
  if (!a.factory == !a.text)
    return vlm_cli_usage_error(a.cmd, "give --index FACTORY or --text");
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, 0, &db))
    return VLM_EXIT_RUNTIME;
  double t0 = vlm_now();
  rc = a.text ? vlm_db_rebuild_meta(db) : vlm_db_reindex(db, a.factory);
  double elapsed = vlm_now() - t0;
  vlm_db_info info;
  if (!rc)
    rc = vlm_db_stat(db, &info);
  vlm_db_close(db);
  if (rc) {
    vlm_cli_liberror(a.cmd, rc);
    return VLM_EXIT_RUNTIME;
  }
  if (a.text && a.as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "text", json_string("vlm_cjk"));
    json_object_set_new(o, "items", json_integer(info.items));
    json_object_set_new(o, "elapsed_s", json_real(elapsed));
    print_json_line(o);
  } else if (a.text) {
    printf("rebuilt the metadata and caption index (vlm_cjk): %lld items "
           "in %.1f s\n", (long long)info.items, elapsed);
  } else if (a.as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "index", json_string(info.index_factory));
    json_object_set_new(o, "index_vectors", json_integer(info.index_vectors));
    json_object_set_new(o, "elapsed_s", json_real(elapsed));
    print_json_line(o);
  } else {
    printf("reindexed with %s: %lld vectors in %.1f s\n", info.index_factory,
           (long long)info.index_vectors, elapsed);
  }
  return VLM_EXIT_OK;
}

/* -------------------------------------------------------------- verify */

static const char verify_usage[] =
    "usage: vlmdb verify --db DIR [--json]\n"
    "\n"
    "Check that the database's stores agree: every payload record has its\n"
    "metadata and full-text rows (same id and key), the counts match, and\n"
    "the vector index covers every live vector.  Opens the database read-\n"
    "only, so it runs beside a server or an ingest.  Exit status 0 when it\n"
    "is whole, 1 with the first disagreement named otherwise.\n"
    "\n"
    "example:\n"
    "  vlmdb verify --db photos.vlm\n";

int cmd_verify(int argc, char **argv) {
  admin_args a = {.cmd = "verify", .usage = verify_usage};
  int rc = parse_admin(argc, argv, 0, &a);
  if (rc >= 0)
    return rc;
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, 1, &db))
    return VLM_EXIT_RUNTIME;
  vlm_db_info info;
  rc = vlm_db_verify(db);
  int src = rc ? rc : vlm_db_stat(db, &info);
  if (rc || src) {
    vlm_cli_liberror(a.cmd, rc ? rc : src);
    vlm_db_close(db);
    return VLM_EXIT_RUNTIME;
  }
  vlm_db_close(db);
  if (a.as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "items", json_integer(info.items));
    json_object_set_new(o, "image_vectors", json_integer(info.image_vectors));
    json_object_set_new(o, "text_vectors", json_integer(info.text_vectors));
    print_json_line(o);
  } else {
    printf("ok: %lld items, %lld image and %lld text vectors; the stores "
           "agree\n", (long long)info.items, (long long)info.image_vectors,
           (long long)info.text_vectors);
  }
  return VLM_EXIT_OK;
}

/* ------------------------------------------------------------- recover */

static const char recover_usage[] =
    "usage: vlmdb recover --db DIR\n"
    "\n"
    "Finish the crash recovery a database needs after its writer was killed,\n"
    "and mend what the payload store (the truth) can mend: open it read-\n"
    "write (which replays committed batches the metadata store had not\n"
    "applied yet, rebuilds a missing or unreadable meta.sqlite and a damaged\n"
    "index file), verify it, and when verify finds damage rebuild\n"
    "meta.sqlite from the payload store and verify again.\n"
    "Read-only commands (search, info, get, export, eval) refuse a database\n"
    "in that state and name this command.  Nothing acknowledged is lost.\n"
    "Needs the writer's lock: stop a running server first.\n"
    "\n"
    "example:\n"
    "  vlmdb recover --db photos.vlm\n";

int cmd_recover(int argc, char **argv) {
  admin_args a = {.cmd = "recover", .usage = recover_usage};
  int rc = parse_admin(argc, argv, 0, &a);
  if (rc >= 0)
    return rc;
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, 0, &db))
    return VLM_EXIT_RUNTIME;
  vlm_db_info info;
  int rebuilt = 0;
  /* the open replayed what was missing; damage found now in meta.sqlite
   * is mended from the payload store, which is the truth */
  if ((rc = vlm_db_verify(db)) != 0) {
    fprintf(stderr, "vlmdb %s: %s; rebuilding meta.sqlite from the payload "
            "store\n", a.cmd, vlm_errmsg());
    if ((rc = vlm_db_rebuild_meta(db)) == 0 && (rc = vlm_db_verify(db)))
      fprintf(stderr, "vlmdb %s: still damaged after the rebuild: the "
              "payload store or the index is damaged; run `vlmdb salvage`\n",
              a.cmd);
    rebuilt = 1;
  }
  if (!rc)
    rc = vlm_db_stat(db, &info);
  vlm_db_close(db);
  if (rc) {
    vlm_cli_liberror(a.cmd, rc);
    return VLM_EXIT_RUNTIME;
  }
  printf("%s: consistent at batch %llu, %lld items%s\n", a.db_dir,
         (unsigned long long)info.seq, (long long)info.items,
         rebuilt ? " (meta.sqlite rebuilt; the old file is "
                   "meta.sqlite.damaged)" : "");
  return VLM_EXIT_OK;
}

/* ------------------------------------------------------------- salvage */

static const char salvage_usage[] =
    "usage: vlmdb salvage --db DIR --out NEWDIR [--json]\n"
    "\n"
    "Copy every record of a damaged database that can still be trusted into\n"
    "a new database: records that decode, pass their checksum and are still\n"
    "named by their key.  Reads only DIR's payload store, read-only;\n"
    "NEWDIR gets DIR's model, index kind and fields, and its metadata and\n"
    "index are rebuilt from the records.  Each record left behind is listed\n"
    "on stderr with its key (or id) and why.  Exit status 0 when everything\n"
    "was saved, 1 when something was left behind or the copy failed.\n"
    "\n"
    "example:\n"
    "  vlmdb verify --db photos.vlm || vlmdb salvage --db photos.vlm --out "
    "photos-saved.vlm\n";

static void salvage_lost(void *arg, const char *key, uint64_t id,
                         const char *why) {
  const char *cmd = arg;
  if (key)
    fprintf(stderr, "vlmdb %s: lost key \"%s\" (item %llu): %s\n", cmd, key,
            (unsigned long long)id, why);
  else
    fprintf(stderr, "vlmdb %s: lost item %llu: %s\n", cmd,
            (unsigned long long)id, why);
}

int cmd_salvage(int argc, char **argv) {
  admin_args a = {.cmd = "salvage", .usage = salvage_usage};
  int rc = parse_admin(argc, argv, OPT_OUTPUT, &a);
  if (rc >= 0)
    return rc;
  if (!a.output)
    return vlm_cli_usage_error(a.cmd, "--out NEWDIR is required");
  vlm_db_salvage_result res;
  rc = vlm_db_salvage(a.db_dir, a.output, salvage_lost, (void *)a.cmd, &res);
  if (rc) {
    vlm_cli_liberror(a.cmd, rc);
    return VLM_EXIT_RUNTIME;
  }
  if (a.as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "records", json_integer(res.records));
    json_object_set_new(o, "saved", json_integer(res.saved));
    json_object_set_new(o, "lost", json_integer(res.lost));
    print_json_line(o);
  } else {
    printf("saved %lld of %lld records into %s; %lld left behind\n",
           (long long)res.saved, (long long)res.records, a.output,
           (long long)res.lost);
  }
  return res.lost ? VLM_EXIT_RUNTIME : VLM_EXIT_OK;
}

/* -------------------------------------------------------------- backup */

static const char backup_usage[] =
    "usage: vlmdb backup --db DIR --out NEWDIR [--json]\n"
    "\n"
    "Write a consistent copy of a database to NEWDIR (absent or empty): the\n"
    "payload store's compacting copy, meta.sqlite through SQLite's backup\n"
    "API and the index files, brought to one batch number and checked by\n"
    "opening the copy.  NEWDIR appears whole or not at all.  A restore is\n"
    "opening the copy (or moving it back in place).  It opens DIR read-\n"
    "only, so it runs beside a server or an ingest; the server's own\n"
    "BACKUP command (redis-cli -p PORT BACKUP /path/to/NEWDIR) copies with\n"
    "less work, holding its checkpoints back meanwhile.\n"
    "\n"
    "example:\n"
    "  vlmdb backup --db photos.vlm --out /backups/photos-2026-12-07.vlm\n";

int cmd_backup(int argc, char **argv) {
  admin_args a = {.cmd = "backup", .usage = backup_usage};
  int rc = parse_admin(argc, argv, OPT_OUTPUT, &a);
  if (rc >= 0)
    return rc;
  if (!a.output)
    return vlm_cli_usage_error(a.cmd, "--out NEWDIR is required");
  vlm_db *db;
  if (vlm_cli_open_db(a.cmd, a.db_dir, 1, &db))
    return VLM_EXIT_RUNTIME;
  vlm_db_backup_info info;
  rc = vlm_db_backup(db, a.output, &info);
  vlm_db_close(db);
  if (rc) {
    vlm_cli_liberror(a.cmd, rc);
    return VLM_EXIT_RUNTIME;
  }
  if (a.as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "out", json_string(a.output));
    json_object_set_new(o, "seq", json_integer((json_int_t)info.seq));
    json_object_set_new(o, "items", json_integer(info.items));
    json_object_set_new(o, "bytes", json_integer((json_int_t)info.bytes));
    json_object_set_new(o, "seconds", json_real(info.seconds));
    print_json_line(o);
  } else {
    printf("backed up %lld items (batch %llu, %.1f MB) to %s in %.2f s\n",
           (long long)info.items, (unsigned long long)info.seq,
           (double)info.bytes / 1e6, a.output, info.seconds);
  }
  return VLM_EXIT_OK;
}
