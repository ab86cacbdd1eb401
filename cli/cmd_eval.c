/* cmd_eval.c - `vlmdb eval`: cross-modal Recall@K of a database (the
 * metric lives in db/eval.c, so the server can run it too). */
#include "opts.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_eval.h"
#include "vlmdb.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: vlmdb eval --db DIR [--pairs FILE] [-k 1,5,10]\n"
    "                  [--direction t2i,i2t] [--sample N] [--seed S]\n"
    "                  [--ef N] [--nprobe N] [--no-index] [--model DIR]\n"
    "                  [--json]\n"
    "\n"
    "Measure cross-modal retrieval: each text's own image is its ground\n"
    "truth (text->image, t2i) and each image's texts are its ground truth\n"
    "(image->text, i2t).  Without --pairs every item with both an image and\n"
    "a text is paired with itself.  Reports Recall@K for each K, median and\n"
    "mean rank (exact scores over every stored vector; ties count against\n"
    "the ground truth), and how much the ANN index loses: Recall@K through\n"
    "the index and the index's top K against exact search, with the time\n"
    "per query of each.  With the database's model at hand (the directory\n"
    "it recorded, or --model DIR), also the model's own confidence: the mean\n"
    "probability its family's score gives each query's ground truth\n"
    "(SigLIP: the sigmoid of the pair's logit; CLIP, Chinese-CLIP: the\n"
    "softmax over every candidate).\n"
    "\n"
    "  --db DIR            the database\n"
    "  --pairs FILE        JSONL ground truth, one object a line:\n"
    "                      {\"image\": \"IMAGE_KEY\", \"text\": \"TEXT_KEY\"} or\n"
    "                      {\"image\": \"IMAGE_KEY\", \"text\": [\"KEY\", ...]}\n"
    "                      (an image with several captions: a hit when any\n"
    "                      of them is in the top K)\n"
    "  -k, --k LIST        cut-offs (default 1,5,10)\n"
    "  --direction LIST    t2i, i2t or both (default t2i,i2t)\n"
    "  --sample N          evaluate N random queries per direction\n"
    "  --seed S            seed of the sample (default 1)\n"
    "  --ef N, --nprobe N  index search parameters\n"
    "  --no-index          exact ranks only (skip the per-query searches)\n"
    "  --model DIR         the model for the probabilities (default: the\n"
    "                      one the database recorded; without one they are\n"
    "                      left out)\n"
    "  --json              one JSON object instead of the report\n"
    "  -h, --help          this help\n"
    "\n"
    "example:\n"
    "  vlmdb eval --db coco.vlm --pairs coco-pairs.jsonl -k 1,5,10 "
    "--sample 1000\n";

static int parse_ks(const char *text, int *ks, int *nks) {
  char *copy = strdup(text), *save = NULL;
  int n = 0, rc = 0;
  if (!copy)
    return -1;
  for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    char *end;
    long k = strtol(t, &end, 10);
    if (end == t || *end || k < 1 || k > VLM_DB_MAX_K || n == VLM_EVAL_MAX_KS) {
      rc = -1;
      break;
    }
    ks[n++] = (int)k;
  }
  free(copy);
  *nks = n;
  return rc || n == 0 ? -1 : 0;
}

static int parse_directions(const char *text, unsigned *dirs) {
  char *copy = strdup(text), *save = NULL;
  int rc = 0;
  *dirs = 0;
  if (!copy)
    return -1;
  for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (!strcmp(t, "t2i"))
      *dirs |= VLM_EVAL_T2I;
    else if (!strcmp(t, "i2t"))
      *dirs |= VLM_EVAL_I2T;
    else
      rc = -1;
  }
  free(copy);
  return rc || !*dirs ? -1 : 0;
}

static json_t *by_k(const vlm_eval_direction *d, int which) {
  json_t *o = json_object();
  for (int i = 0; i < d->nks; i++) {
    char name[16];
    snprintf(name, sizeof name, "%d", d->at[i].k);
    double v = which == 0   ? d->at[i].recall
               : which == 1 ? d->at[i].recall_index
                            : d->at[i].index_recall;
    json_object_set_new(o, name, v < 0 ? json_null() : json_real(v));
  }
  return o;
}

static int model_probabilities(void *clip, const float *cosines, int n,
                               float *probs) {
  return vlm_clip_probabilities(clip, cosines, n, probs);
}

static json_t *direction_json(const vlm_eval_direction *d, int with_index) {
  json_t *o = json_object();
  json_object_set_new(o, "queries", json_integer(d->queries));
  json_object_set_new(o, "candidates", json_integer(d->candidates));
  json_object_set_new(o, "recall", by_k(d, 0));
  json_object_set_new(o, "recall_index", with_index ? by_k(d, 1) : json_null());
  json_object_set_new(o, "index_recall", with_index ? by_k(d, 2) : json_null());
  json_object_set_new(o, "median_rank", json_real(d->median_rank));
  json_object_set_new(o, "mean_rank", json_real(d->mean_rank));
  json_object_set_new(o, "index_ms_per_query",
                      with_index ? json_real(d->index_ms_per_query)
                                 : json_null());
  json_object_set_new(o, "exact_ms_per_query",
                      with_index ? json_real(d->exact_ms_per_query)
                                 : json_null());
  json_object_set_new(o, "gt_probability",
                      d->gt_probability < 0 ? json_null()
                                            : json_real(d->gt_probability));
  return o;
}

static void print_direction(const char *title, const char *cands,
                            const vlm_eval_direction *d, int with_index) {
  printf("%s: %lld queries over %lld %s\n", title, (long long)d->queries,
         (long long)d->candidates, cands);
  printf("  %-18s", "K");
  for (int i = 0; i < d->nks; i++)
    printf("  %6d", d->at[i].k);
  printf("\n  %-18s", "Recall@K");
  for (int i = 0; i < d->nks; i++)
    printf("  %6.4f", d->at[i].recall);
  if (with_index) {
    printf("\n  %-18s", "Recall@K (index)");
    for (int i = 0; i < d->nks; i++)
      printf("  %6.4f", d->at[i].recall_index);
    printf("\n  %-18s", "index vs exact");
    for (int i = 0; i < d->nks; i++)
      printf("  %6.4f", d->at[i].index_recall);
  }
  printf("\n  median rank %.1f, mean rank %.1f\n", d->median_rank,
         d->mean_rank);
  if (d->gt_probability >= 0)
    printf("  ground-truth probability (the model's own score), mean %.4f\n",
           d->gt_probability);
  if (with_index)
    printf("  time per query: index %.3f ms, exact %.3f ms\n",
           d->index_ms_per_query, d->exact_ms_per_query);
}

int cmd_eval(int argc, char **argv) {
  const char *cmd = "eval", *db_dir = NULL, *pairs_path = NULL,
             *model_dir = NULL;
  int ks[VLM_EVAL_MAX_KS] = {1, 5, 10}, nks = 3, as_json = 0;
  long sample = 0, seed = 1, ef = 0, nprobe = 0;
  vlm_eval_options opts = {0};
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"pairs", required_argument, NULL, 'p'},
      {"k", required_argument, NULL, 'k'},
      {"direction", required_argument, NULL, 'D'},
      {"sample", required_argument, NULL, 's'},
      {"seed", required_argument, NULL, 'S'},
      {"ef", required_argument, NULL, 'e'},
      {"nprobe", required_argument, NULL, 'n'},
      {"no-index", no_argument, NULL, 'N'},
      {"model", required_argument, NULL, 'm'},
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "k:h", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': db_dir = optarg; break;
    case 'p': pairs_path = optarg; break;
    case 'k':
      if (parse_ks(optarg, ks, &nks))
        return vlm_cli_usage_error(cmd, "-k wants up to %d cut-offs from 1 to "
                                        "%d, like 1,5,10",
                                   VLM_EVAL_MAX_KS, VLM_DB_MAX_K);
      break;
    case 'D':
      if (parse_directions(optarg, &opts.directions))
        return vlm_cli_usage_error(cmd, "--direction is t2i, i2t or t2i,i2t");
      break;
    case 's':
      if (vlm_cli_parse_long(cmd, "--sample", optarg, 1, 1L << 30, &sample))
        return VLM_EXIT_USAGE;
      break;
    case 'S':
      if (vlm_cli_parse_long(cmd, "--seed", optarg, 0, 1L << 62, &seed))
        return VLM_EXIT_USAGE;
      break;
    case 'e':
      if (vlm_cli_parse_long(cmd, "--ef", optarg, 1, 1 << 20, &ef))
        return VLM_EXIT_USAGE;
      break;
    case 'n':
      if (vlm_cli_parse_long(cmd, "--nprobe", optarg, 1, 1 << 20, &nprobe))
        return VLM_EXIT_USAGE;
      break;
    case 'N': opts.skip_index = 1; break;
    case 'm': model_dir = optarg; break;
    case 'j': as_json = 1; break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: fputs(usage, stderr); return VLM_EXIT_USAGE;
    }
  }
  if (!db_dir)
    return vlm_cli_usage_error(cmd, "--db DIR is required");
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  opts.ks = ks;
  opts.nks = nks;
  opts.sample = (int)sample;
  opts.seed = (uint64_t)seed;
  opts.ef_search = (int)ef;
  opts.nprobe = (int)nprobe;

  int status = VLM_EXIT_RUNTIME;
  vlm_db *db = NULL;
  vlm_clip *clip = NULL;
  vlm_eval_pair *pairs = NULL;
  int npairs = 0;
  if (pairs_path) {
    int rc = vlm_eval_pairs_load(pairs_path, &pairs, &npairs);
    if (rc) {
      vlm_cli_error(cmd, "%s", vlm_errmsg());
      return VLM_EXIT_RUNTIME;
    }
    opts.pairs = pairs;
    opts.npairs = npairs;
  }
  if (vlm_cli_open_db(cmd, db_dir, 1, &db))
    goto done;
  /* The model only scores (the ranks need none): one named with --model
   * must load, the recorded one is used when it is still there. */
  vlm_db_info info;
  if (model_dir) {
    if (vlm_cli_load_model(cmd, db, model_dir, 1, &clip))
      goto done;
  } else if (vlm_db_stat(db, &info) == 0 && info.model_dir[0] &&
             access(info.model_dir, R_OK) == 0) {
    vlm_clip_options copts = vlm_cli_db_model_options(&info, 1);
    if (vlm_clip_load(info.model_dir, &copts, &clip) == 0 &&
        strcmp(vlm_clip_model_id(clip), info.model_id)) {
      vlm_clip_free(clip);
      clip = NULL;
    }
    if (!clip)
      fprintf(stderr, "vlmdb eval: note: the model in %s is not loadable or "
              "not the database's: its probabilities are left out\n",
              info.model_dir);
  }
  if (clip) {
    opts.probabilities = model_probabilities;
    opts.probabilities_arg = clip;
  }
  vlm_eval_result res;
  int rc = vlm_db_eval(db, &opts, &res);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  int with_index = !opts.skip_index;
  if (as_json) {
    json_t *o = json_object(), *jks = json_array();
    for (int i = 0; i < nks; i++)
      json_array_append_new(jks, json_integer(ks[i]));
    json_object_set_new(o, "pairs", json_integer(res.pairs));
    json_object_set_new(o, "skipped_pairs", json_integer(res.skipped_pairs));
    json_object_set_new(o, "k", jks);
    json_object_set_new(o, "sample", json_integer(sample));
    json_object_set_new(o, "t2i", res.directions & VLM_EVAL_T2I
                                      ? direction_json(&res.t2i, with_index)
                                      : json_null());
    json_object_set_new(o, "i2t", res.directions & VLM_EVAL_I2T
                                      ? direction_json(&res.i2t, with_index)
                                      : json_null());
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10));
    if (s)
      printf("%s\n", s);
    free(s);
    json_decref(o);
  } else {
    printf("pairs: %lld", (long long)res.pairs);
    if (res.skipped_pairs)
      printf(" (%lld skipped: a key or vector is not stored)",
             (long long)res.skipped_pairs);
    printf("\n");
    if (res.directions & VLM_EVAL_T2I)
      print_direction("text->image", "images", &res.t2i, with_index);
    if (res.directions & VLM_EVAL_I2T)
      print_direction("image->text", "texts", &res.i2t, with_index);
  }
  status = VLM_EXIT_OK;
done:
  vlm_db_close(db);
  vlm_clip_free(clip);
  vlm_eval_pairs_free(pairs, npairs);
  return status;
}
