/* cmd_init.c - `vlmdb init`: create a database bound to a model. */
#include "opts.h"
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
    "  -h, --help          this help\n"
    "\n"
    "example:\n"
    "  vlmdb init --db photos.vlm --field category:text --field year:int\n";

#define MAX_FIELDS VLM_DB_MAX_FIELDS

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
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': db_dir = optarg; break;
    case 'm': model_dir = optarg; break;
    case 'i': factory = optarg; break;
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
  if (!model_dir)
    model_dir = vlm_cli_default_model();

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
                          .image_orientation = exif};
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
  printf("\n");
  status = VLM_EXIT_OK;
done:
  vlm_db_close(db);
  vlm_clip_free(clip);
  return status;
}
