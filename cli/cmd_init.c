/* cmd_init.c - `vlmdb init`: create a database bound to a model. */
#include "opts.h"
#include "shard.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlmdb.h"

#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: vlmdb init --db DIR [--model DIR] [--index FACTORY]\n"
    "                  [--field NAME:TYPE]... [--exif apply|ignore]\n"
    "                  [--cluster FILE --shard I|auto] [--publish]\n"
    "                  [--keep-images]\n"
    "\n"
    "Create an empty database in DIR (created if missing; must be empty),\n"
    "bound to a model (CLIP, SigLIP or Chinese-CLIP): every vector it\n"
    "stores comes from that model.\n"
    "\n"
    "  --db DIR            the database directory\n"
    "  --model DIR         the model (default: $VLMDB_MODEL or models/default)\n"
    "  --index FACTORY     FAISS index kind: HNSW32 (default), Flat,\n"
    "                      IVF256,Flat, IVF1024,PQ64, IVF256,SQ8, ...\n"
    "  --field NAME:TYPE   a metadata field to index for filters; TYPE is\n"
    "                      text, int or real (repeat for several)\n"
    "  --exif apply|ignore turn photos upright by their EXIF orientation\n"
    "                      before embedding (apply) or embed the stored\n"
    "                      pixels (ignore); default: the model's own\n"
    "                      setting (SigLIP and Chinese-CLIP apply it, CLIP\n"
    "                      ignores it). Every command on the database then\n"
    "                      does the same.\n"
    "  --keep-images       the database keeps images: every ingest, and the\n"
    "                      server's ADD, UPSERT and UPDATE with an image,\n"
    "                      store the image file's bytes with the item, so\n"
    "                      `vlmdb reembed` and `train --db` need no files\n"
    "                      (`vlmdb config --keep-images on|off` changes it)\n"
    "  --cluster FILE      make the database shard I of the cluster map FILE\n"
    "  --shard I|auto      (cluster.json): it holds only the keys of the\n"
    "                      shard's hash slots; auto takes I from\n"
    "                      $SLURM_ARRAY_TASK_ID, $JOB_COMPLETION_INDEX or\n"
    "                      $VLMDB_SHARD, the first one set\n"
    "  --publish           build the database as DIR.tmp, for\n"
    "                      `vlmdb ingest --publish` to rename to DIR when it\n"
    "                      is complete; run again, it does nothing when DIR\n"
    "                      exists or DIR.tmp holds a database made with the\n"
    "                      same settings (a task that was killed resumes)\n"
    "  -h, --help          this help\n"
    "\n"
    "example:\n"
    "  vlmdb init --db photos.vlm --field category:text --field year:int\n";

#define MAX_FIELDS VLM_DB_MAX_FIELDS

/* 0 when the database in dir was made with config's settings (model,
 * dimension, index, fields, EXIF, kept images, cluster and shard); else
 * -1 and what
 * differs (or why it cannot be read) in why. */
static int same_settings(const char *cmd, const char *dir,
                         const vlm_db_config *config, char *why,
                         size_t cap) {
  vlm_db *db = NULL;
  vlm_db_info info;
  vlm_db_open_options o = {.readonly = 1};
  (void)cmd;
  if (vlm_db_open(dir, &o, &db) || vlm_db_stat(db, &info)) {
    snprintf(why, cap, "%s", vlm_errmsg());
    vlm_db_close(db);
    return -1;
  }
  vlm_db_close(db);
  const char *factory = config->index_factory ? config->index_factory
                                              : "HNSW32";
  int fields_same = info.nfields == config->nfields;
  for (int i = 0; fields_same && i < info.nfields; i++)
    fields_same = !strcmp(info.field_names[i], config->fields[i].name) &&
                  info.field_types[i] == config->fields[i].type;
  int want_shard = config->nslot_ranges ? config->shard : -1;
  if (strcmp(info.model_id, config->model_id))
    snprintf(why, cap, "another model");
  else if (info.dim != config->dim)
    snprintf(why, cap, "dimension %d", info.dim);
  else if (strcmp(info.index_factory, factory))
    snprintf(why, cap, "index %s", info.index_factory);
  else if (!fields_same)
    snprintf(why, cap, "other fields");
  else if (strcmp(info.image_orientation, config->image_orientation))
    snprintf(why, cap, "--exif %s", info.image_orientation);
  else if (!info.keep_images != !config->keep_images)
    snprintf(why, cap, "%s", info.keep_images ? "--keep-images"
                                              : "no --keep-images");
  else if (info.shard != want_shard ||
           (want_shard >= 0 &&
            strcmp(info.cluster_digest, config->cluster_digest)))
    snprintf(why, cap, "shard %d of cluster %s", info.shard,
             info.shard < 0 ? "(none)" : info.cluster_digest);
  else
    return 0;
  return -1;
}

int cmd_init(int argc, char **argv) {
  const char *cmd = "init", *db_dir = NULL, *model_dir = NULL,
             *factory = NULL, *exif = "model";
  vlm_field fields[MAX_FIELDS];
  int nfields = 0;
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"model", required_argument, NULL, 'm'},
      {"index", required_argument, NULL, 'i'},
      {"field", required_argument, NULL, 'f'},
      {"exif", required_argument, NULL, 'e'},
      {"cluster", required_argument, NULL, 'c'},
      {"shard", required_argument, NULL, 's'},
      {"publish", no_argument, NULL, 'p'},
      {"keep-images", no_argument, NULL, 'K'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *cluster_path = NULL, *shard_text = NULL;
  int publish = 0, keep_images = 0;
  vlm_cluster *cluster = NULL;
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': db_dir = optarg; break;
    case 'm': model_dir = optarg; break;
    case 'i': factory = optarg; break;
    case 'c': cluster_path = optarg; break;
    case 's': shard_text = optarg; break;
    case 'p': publish = 1; break;
    case 'K': keep_images = 1; break;
    case 'e':
      if (vlm_cli_orientation(optarg) < 0)
        return vlm_cli_usage_error(cmd, "--exif is apply, ignore or model");
      exif = optarg;
      break;
    case 'f':
      if (nfields == MAX_FIELDS)
        return vlm_cli_usage_error(cmd, "at most %d fields", MAX_FIELDS);
      if (vlm_field_parse(optarg, &fields[nfields]))
        return vlm_cli_usage_error(cmd, "--field %s: %s", optarg,
                                   vlm_errmsg());
      for (int i = 0; i < nfields; i++)
        if (!strcmp(fields[i].name, fields[nfields].name))
          return vlm_cli_usage_error(cmd, "field '%s' given twice",
                                     fields[i].name);
      nfields++;
      break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: fputs(usage, stderr); return VLM_EXIT_USAGE;
    }
  }
  if (!db_dir)
    return vlm_cli_usage_error(cmd, "--db DIR is required");
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  if (!cluster_path != !shard_text)
    return vlm_cli_usage_error(cmd, "--cluster FILE and --shard I go "
                               "together");
  if (!model_dir)
    model_dir = vlm_cli_default_model();
  int shard = -1;
  vlm_slot_range mine[VLM_CLUSTER_MAX_RANGES];
  int nmine = 0;
  if (cluster_path) {
    if (vlm_cli_cluster_load(cmd, cluster_path, &cluster))
      return VLM_EXIT_RUNTIME;
    if (vlm_cli_shard_choose(cmd, shard_text, cluster, &shard)) {
      vlm_cluster_free(cluster);
      return VLM_EXIT_USAGE;
    }
    nmine = cluster->shards[shard].nranges;
    memcpy(mine, cluster->shards[shard].ranges, (size_t)nmine * sizeof *mine);
  }
  char tmp_dir[PATH_MAX];
  const char *final_dir = db_dir;
  if (publish) {
    if (vlm_cli_publish_tmp(cmd, db_dir, tmp_dir, sizeof tmp_dir)) {
      vlm_cluster_free(cluster);
      return VLM_EXIT_USAGE;
    }
    if (vlm_cli_exists(db_dir)) {
      printf("%s is published already: nothing to do\n", db_dir);
      vlm_cluster_free(cluster);
      return VLM_EXIT_OK;
    }
    db_dir = tmp_dir;
  }

  /* The database records the model's absolute path so later commands find
   * it from any working directory. */
  char model_abs[PATH_MAX];
  if (!realpath(model_dir, model_abs)) {
    vlm_cli_error(cmd, "model directory %s: not found", model_dir);
    return VLM_EXIT_RUNTIME;
  }
  vlm_clip *clip = NULL;
  vlm_db *db = NULL;
  int status = VLM_EXIT_RUNTIME;
  char config_text[160];
  vlm_clip_options copts = {.orientation =
                                (vlm_orient_mode)vlm_cli_orientation(exif)};
  int rc = vlm_clip_load(model_abs, &copts, &clip);
  if (rc) {
    vlm_cli_error(cmd, "loading the model from %s: %s", model_abs,
                  vlm_errmsg());
    goto done;
  }
  vlm_db_config config = {.dim = vlm_clip_dim(clip),
                          .index_factory = factory,
                          .model_id = vlm_clip_model_id(clip),
                          .model_dir = model_abs,
                          .fields = fields,
                          .nfields = nfields,
                          .model_family = vlm_clip_family(clip),
                          .image_orientation = exif,
                          .cluster_digest = cluster ? cluster->digest : NULL,
                          .shard = shard,
                          .nshards = cluster ? cluster->nshards : 0,
                          .slot_ranges = mine,
                          .nslot_ranges = nmine,
                          .keep_images = keep_images};
  if (publish && vlm_cli_exists(db_dir)) {
    /* A rerun of a killed task: resume the database it began, if it is
     * the one this command would make. */
    if (same_settings(cmd, db_dir, &config, config_text,
                      sizeof config_text)) {
      vlm_cli_error(cmd, "%s holds a database made with other settings "
                    "(%s); remove it to start again", db_dir, config_text);
      goto done;
    }
    printf("%s exists with these settings: resuming it (publish as %s)\n",
           db_dir, final_dir);
    status = VLM_EXIT_OK;
    goto done;
  }
  rc = vlm_db_create(db_dir, &config, &db);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  printf("created %s: model %s (dimension %d), index %s", db_dir, model_abs,
         config.dim, factory ? factory : "HNSW32");
  for (int i = 0; i < nfields; i++)
    printf("%s%s:%s", i ? ", " : ", fields ", fields[i].name,
           fields[i].type == VLM_FIELD_TEXT  ? "text"
           : fields[i].type == VLM_FIELD_INT ? "int"
                                             : "real");
  if (cluster)
    printf(", shard %d of %d (%s)", shard, cluster->nshards, cluster_path);
  if (keep_images)
    printf(", keeps images");
  if (publish)
    printf(", published as %s by `vlmdb ingest --publish`", final_dir);
  printf("\n");
  status = VLM_EXIT_OK;
done:
  vlm_db_close(db);
  vlm_clip_free(clip);
  vlm_cluster_free(cluster);
  return status;
}
