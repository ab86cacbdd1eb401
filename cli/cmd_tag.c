/* cmd_tag.c - `vlmdb tag`: fill a declared field of every item with an
 * image vector by zero-shot classification (CLIP's prompt ensembling). */
#include "vlm_cli.h"

#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opts.h"
#include "progress.h"
#include "tag.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_file.h"
#include "vlmdb.h"

static const char usage[] =
    "usage: vlmdb tag --db DIR --field F --labels FILE [--template T]...\n"
    "                 [--score-field F] [--min-score S] [--retag]\n"
    "                 [--batch N] [--model DIR] [--threads N] [--json]\n"
    "                 [--quiet]\n"
    "\n"
    "Label every item that has an image vector with the best of the labels\n"
    "(one a line in FILE; blank lines and lines starting with # are\n"
    "skipped) by the model's zero-shot classification: each label's text\n"
    "vector is the mean of its templates' normalized text vectors,\n"
    "normalized again (CLIP's prompt ensembling); the item takes the label\n"
    "whose vector is nearest its image vector.  The label goes into the\n"
    "declared text field F of the item's metadata, and the model's\n"
    "probability for it (a softmax over the labels for CLIP, SigLIP's\n"
    "sigmoid) into --score-field when given (a declared real field).\n"
    "Items are written in batches, each atomic and durable: killed, a rerun\n"
    "goes on where it stopped (items already tagged are skipped unless\n"
    "--retag) and gives what one run gives.\n"
    "\n"
    "  --db DIR          the database\n"
    "  --field F         the declared text field to fill\n"
    "  --labels FILE     the labels\n"
    "  --template T      a prompt with {} for the label (repeat; default\n"
    "                    \"a photo of a {}.\")\n"
    "  --score-field F   a declared real field for the label's probability\n"
    "  --min-score S     leave an item untagged when the probability is\n"
    "                    below S (0..1; default 0: always tag)\n"
    "  --retag           redo items that already have the field\n"
    "  --batch N         items per write (default 256)\n"
    "  --model DIR       the model, if not where the database says\n"
    "  --threads N       compute threads for the text encoder (0 = all)\n"
    "  --json            print the summary as JSON\n"
    "  -q, --quiet       no progress display\n"
    "  -h, --help        this help\n"
    "\n"
    "example:\n"
    "  vlmdb tag --db shop.vlmdb --field category --labels labels.txt \\\n"
    "            --template \"a photo of a {}.\" --score-field category_p\n";

int cmd_tag(int argc, char **argv) {
  const char *cmd = "tag";
  const char *db_dir = NULL, *model_dir = NULL, *labels = NULL;
  vlm_cli_tag_options o = {.batch = 256};
  const char *templates[VLM_CLI_TAG_MAX_TEMPLATES];
  int ntemplates = 0, json = 0;
  long threads = 0, batch = 256;
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"field", required_argument, NULL, 'f'},
      {"labels", required_argument, NULL, 'l'},
      {"template", required_argument, NULL, 't'},
      {"score-field", required_argument, NULL, 's'},
      {"min-score", required_argument, NULL, 'S'},
      {"retag", no_argument, NULL, 'r'},
      {"batch", required_argument, NULL, 'b'},
      {"model", required_argument, NULL, 'm'},
      {"threads", required_argument, NULL, 'j'},
      {"json", no_argument, NULL, 'J'},
      {"quiet", no_argument, NULL, 'q'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "qh", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': db_dir = optarg; break;
    case 'f': o.field = optarg; break;
    case 'l': labels = optarg; break;
    case 't':
      if (ntemplates == VLM_CLI_TAG_MAX_TEMPLATES)
        return vlm_cli_usage_error(cmd, "at most %d --template",
                                   VLM_CLI_TAG_MAX_TEMPLATES);
      templates[ntemplates++] = optarg;
      break;
    case 's': o.score_field = optarg; break;
    case 'S': {
      char *end;
      double v = strtod(optarg, &end);
      if (end == optarg || *end || !(v >= 0 && v <= 1))
        return vlm_cli_usage_error(cmd, "--min-score: '%s' is not a number "
                                        "in [0, 1]", optarg);
      o.min_score = v;
      break;
    }
    case 'r': o.retag = 1; break;
    case 'b':
      if (vlm_cli_parse_long(cmd, "--batch", optarg, 1, 100000, &batch))
        return VLM_EXIT_USAGE;
      break;
    case 'm': model_dir = optarg; break;
    case 'j':
      if (vlm_cli_parse_long(cmd, "--threads", optarg, 0, 256, &threads))
        return VLM_EXIT_USAGE;
      break;
    case 'J': json = 1; break;
    case 'q': o.quiet = 1; break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: return vlm_cli_getopt_failed(cmd);
    }
  }
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  if (!db_dir || !o.field || !labels)
    return vlm_cli_usage_error(cmd, "--db, --field and --labels are "
                                    "required");
  o.batch = (int)batch;
  o.templates = templates;
  o.ntemplates = ntemplates;

  int status = VLM_EXIT_RUNTIME, rc;
  vlm_db *db = NULL;
  vlm_clip *clip = NULL;
  vlm_cli_tag_result res = {0};
  if (vlm_cli_open_db(cmd, db_dir, 0, &db) ||
      vlm_cli_load_model(cmd, db, model_dir, (int)threads, &clip))
    goto done;
  if ((rc = vlm_cli_tag_read_labels(labels, &o))) {
    vlm_cli_liberror(cmd, rc);
    status = rc == VLM_EINVAL ? VLM_EXIT_USAGE : status;
    goto done;
  }
  if ((rc = vlm_cli_tag_run(db, clip, &o, &res))) {
    vlm_cli_liberror(cmd, rc);
    status = rc == VLM_EINVAL ? VLM_EXIT_USAGE : status;
    goto done;
  }
  if (json)
    printf("{\"tagged\": %ld, \"below_min_score\": %ld, \"already\": %ld, "
           "\"no_image_vector\": %ld, \"labels\": %d, \"seconds\": %.2f}\n",
           res.tagged, res.uncertain, res.already, res.no_vector, o.nlabels,
           res.seconds);
  else
    printf("tagged %ld items (%ld below --min-score left untagged, %ld "
           "already tagged, %ld without an image vector) with %d labels in "
           "%.1f s\n",
           res.tagged, res.uncertain, res.already, res.no_vector, o.nlabels,
           res.seconds);
  status = VLM_EXIT_OK;
done:
  vlm_cli_tag_options_free(&o);
  vlm_clip_free(clip);
  vlm_db_close(db);
  return status;
}
