/* cmd_reembed.c - `vlmdb reembed`: move a database to another model.
 *
 * The new vectors are staged in a whole database of their own, DIR.reembed
 * (made with the new model, the old one's index kind, fields, EXIF setting
 * and shard), filled item by item from the old one in item-id order: the
 * same key, caption, source, thumbnail, metadata and kept image bytes,
 * with an image vector embedded again from the kept bytes (else the source
 * file) and a text vector from the caption, for each vector the item had.
 * When every item is in, one renameat2(RENAME_EXCHANGE) swaps DIR and
 * DIR.reembed (vlm_db_exchange): the switch.  The old database is then
 * removed.
 *
 * Crash safety.  DIR is only read until the switch, so a run killed before
 * it leaves DIR as it was.  DIR.reembed/reembed.json (written after the
 * staged database is created) names the batch and model of DIR it was built
 * from and the model it is built with; a rerun resumes a staged database
 * that matches (its puts are durable batches; keys already in it are
 * skipped) and starts again from scratch otherwise (DIR changed
 * meanwhile, another model).  After the exchange that file is inside DIR:
 * it says the switch happened, and a rerun finishes the clean-up (removes
 * the old database, now DIR.reembed, then the file).
 *
 * Writers are kept out from the first step to the switch: the run holds
 * DIR's writer lock (vlm_db_lock_writers), so a writer gets VLM_EBUSY
 * naming `vlmdb reembed`; read-only commands (search, get, eval, a
 * read-only server) keep answering from the old model until the switch.
 */
#include "opts.h"
#include "progress.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_file.h"
#include "vlmdb.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_FILE "reembed.json"
#define MAX_BATCH 1024

static const char usage[] =
    "usage: vlmdb reembed --db DIR --model DIR [--batch N] [--threads N]\n"
    "                     [--allow-missing] [--json] [--quiet]\n"
    "\n"
    "Move the database to another model: embed every item again with the\n"
    "new model (its image from the bytes `ingest --keep-images` kept, else\n"
    "from its source file; its text from its caption), build the new\n"
    "vectors and index in DIR.reembed beside the database, and switch the\n"
    "two atomically at the end.  Until the switch, read-only commands\n"
    "(search, eval, get) keep answering from the old model; writers are\n"
    "refused.  Killed at any point, run the same command again: it resumes\n"
    "(or finishes the switch); DIR itself changes only at the switch.  The\n"
    "new model may have another dimension or family.\n"
    "\n"
    "  --db DIR            the database\n"
    "  --model DIR         the new model\n"
    "  --batch N           items per batch and transaction (default 32)\n"
    "  --threads N         compute threads (default: all cores)\n"
    "  --allow-missing     switch even if some items could not be embedded\n"
    "                      again (image gone, nothing kept): such an item\n"
    "                      keeps its payload and whatever vector could be\n"
    "                      made; one left with none is dropped.  Without\n"
    "                      it they are listed, nothing is switched, and a\n"
    "                      rerun (after restoring the files) resumes\n"
    "  --json              print the summary as JSON\n"
    "  -q, --quiet         no progress display\n"
    "  -h, --help          this help\n"
    "\n"
    "Exit status: 0 switched (or nothing to do), 1 failed or items could not\n"
    "be embedded again (not switched), 2 bad flags.\n"
    "\n"
    "example:\n"
    "  vlmdb reembed --db photos.vlm --model models/products-lora8\n";

/* The crash tests' points (vlm_cli_crash_point): "created", "batch:N"
 * after the N-th batch, "walked", "switched", "cleaned". */
static void kill_point(const char *point) {
  static long batches;
  char name[32];
  if (!strcmp(point, "batch")) {
    snprintf(name, sizeof name, "batch:%ld", ++batches);
    point = name;
  }
  vlm_cli_crash_point(point);
}

/* ------------------------------------------------------------ files */

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path) != 0 && errno != ENOENT ? -1 : 0;
}

/* Remove dir and everything in it; 0 or -1 with errno. */
static int remove_tree(const char *dir) {
  if (nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
    return -1;
  return 0;
}

static int fsync_path(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

typedef struct {
  uint64_t from_seq;
  char from_model[80];
  char to_model[80];
} reembed_state;

/* Write dir/reembed.json durably (temporary file, fsync, rename, fsync of
 * dir). */
static int state_write(const char *dir, const reembed_state *s) {
  char path[PATH_MAX], tmp[PATH_MAX + 8];
  snprintf(path, sizeof path, "%s/" STATE_FILE, dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  json_t *o = json_pack("{s:s, s:I, s:s, s:s}", "what",
                        "vlmdb reembed staging", "from_seq",
                        (json_int_t)s->from_seq, "from_model", s->from_model,
                        "to_model", s->to_model);
  int rc = -1;
  if (o && json_dump_file(o, tmp, JSON_COMPACT) == 0 && fsync_path(tmp) == 0 &&
      rename(tmp, path) == 0 && fsync_path(dir) == 0)
    rc = 0;
  json_decref(o);
  return rc;
}

/* 0 and *s from dir/reembed.json, -1 when it is missing or unreadable. */
static int state_read(const char *dir, reembed_state *s) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/" STATE_FILE, dir);
  json_t *o = json_load_file(path, 0, NULL);
  json_int_t seq;
  const char *from, *to;
  int rc = -1;
  if (o && json_unpack(o, "{s:I, s:s, s:s}", "from_seq", &seq, "from_model",
                       &from, "to_model", &to) == 0 &&
      seq >= 0 && strlen(from) < sizeof s->from_model &&
      strlen(to) < sizeof s->to_model) {
    s->from_seq = (uint64_t)seq;
    snprintf(s->from_model, sizeof s->from_model, "%s", from);
    snprintf(s->to_model, sizeof s->to_model, "%s", to);
    rc = 0;
  }
  json_decref(o);
  return rc;
}

/* ------------------------------------------------------------ the walk */

typedef struct {
  const char *cmd;
  vlm_db *old, *staged;
  vlm_clip *clip;
  int dim, batch_size, allow_missing, nthreads;
  size_t pixel_floats;
  /* one batch */
  vlm_record *rec[MAX_BATCH];
  uint8_t *image[MAX_BATCH]; /* kept bytes */
  size_t image_len[MAX_BATCH];
  int want_image[MAX_BATCH], want_text[MAX_BATCH];
  int failed_image[MAX_BATCH], failed_text[MAX_BATCH];
  const char *what[MAX_BATCH]; /* a failed image: why, in why[i] */
  char (*why)[320];
  int n;
  int next_prep;               /* the next item a preparing thread takes */
  pthread_mutex_t prep_mu;
  float *pixels, *image_out, *text_out;
  /* counts */
  long done, embedded, resumed, failed, dropped, partial;
  vlm_progress progress;
} reembed;

static void item_error(reembed *re, const char *key, const char *what,
                       const char *detail) {
  vlm_progress_finish(&re->progress);
  fprintf(stderr, "vlmdb %s: key \"%s\": %s: %s\n", re->cmd, key, what,
          detail);
}

static void batch_clear(reembed *re) {
  for (int i = 0; i < re->n; i++) {
    vlm_record_free(re->rec[i]);
    free(re->image[i]);
    re->rec[i] = NULL;
    re->image[i] = NULL;
  }
  re->n = 0;
}

/* Read and preprocess item i's image into pixel slot i (the kept bytes,
 * else its source file); on failure failed_image[i], what[i], why[i]. */
static void prepare_image(reembed *re, int i) {
  vlm_record *r = re->rec[i];
  uint8_t *data = re->image[i], *file = NULL;
  size_t len = re->image_len[i];
  if (!data) {
    if (!r->source || vlm_read_file(r->source, VLM_MAX_IMAGE_FILE, &file,
                                    &len)) {
      re->failed_image[i] = 1;
      re->what[i] = "missing-image";
      snprintf(re->why[i], sizeof re->why[i], "%s",
               r->source ? vlm_errmsg() : "no source and no kept image bytes");
      return;
    }
    data = file;
  }
  if (vlm_clip_preprocess(re->clip, data, len,
                          re->pixels + (size_t)i * re->pixel_floats)) {
    re->failed_image[i] = 1;
    re->what[i] = "corrupt-image";
    snprintf(re->why[i], sizeof re->why[i], "%s", vlm_errmsg());
  }
  free(file);
}

/* Decoding is most of the work for a small model: the batch's images are
 * prepared by nthreads threads, each taking the next item. */
static void *prepare_main(void *arg) {
  reembed *re = arg;
  for (;;) {
    pthread_mutex_lock(&re->prep_mu);
    int i = re->next_prep;
    while (i < re->n && !re->want_image[i])
      i++;
    re->next_prep = i + 1;
    pthread_mutex_unlock(&re->prep_mu);
    if (i >= re->n)
      return NULL;
    prepare_image(re, i);
  }
}

/* Embed and write the batch; 0, or -1 when the run must stop. */
static int batch_flush(reembed *re) {
  int dim = re->dim, m = 0, t = 0;
  int slot[MAX_BATCH], text_slot[MAX_BATCH];
  const char *texts[MAX_BATCH];
  pthread_t th[64];
  int nth = re->nthreads < 64 ? re->nthreads : 64, started = 0;
  for (int i = 0; i < re->n; i++)
    re->failed_image[i] = re->failed_text[i] = 0;
  re->next_prep = 0;
  for (; started < nth - 1; started++)
    if (pthread_create(&th[started], NULL, prepare_main, re))
      break;
  prepare_main(re);
  for (int k = 0; k < started; k++)
    pthread_join(th[k], NULL);
  for (int i = 0; i < re->n; i++) {
    vlm_record *r = re->rec[i];
    slot[i] = text_slot[i] = -1;
    if (re->want_image[i]) {
      if (re->failed_image[i]) {
        item_error(re, r->key, re->what[i], re->why[i]);
      } else {
        /* close the gaps failed images left, in item order */
        if (m != i)
          memmove(re->pixels + (size_t)m * re->pixel_floats,
                  re->pixels + (size_t)i * re->pixel_floats,
                  re->pixel_floats * sizeof(float));
        slot[i] = m++;
      }
    }
    if (re->want_text[i]) {
      if (!r->caption) {
        item_error(re, r->key, "no-caption",
                   "a text vector but no caption to embed it from");
        re->failed_text[i] = 1;
      } else {
        texts[t] = r->caption;
        text_slot[i] = t++;
      }
    }
  }
  if (m && vlm_clip_encode_pixels(re->clip, re->pixels, m, 0, re->image_out)) {
    vlm_cli_error(re->cmd, "encoding images: %s", vlm_errmsg());
    return -1;
  }
  if (t && vlm_clip_encode_texts(re->clip, texts, t, 0, re->text_out)) {
    vlm_cli_error(re->cmd, "encoding captions: %s", vlm_errmsg());
    return -1;
  }
  vlm_item items[MAX_BATCH];
  int k = 0;
  for (int i = 0; i < re->n; i++) {
    vlm_record *r = re->rec[i];
    int bad = re->failed_image[i] || re->failed_text[i];
    re->done++;
    if (bad) {
      re->failed++;
      if (!re->allow_missing)
        continue;
    }
    vlm_item *it = &items[k];
    memset(it, 0, sizeof *it);
    it->key = r->key;
    it->image_vec = slot[i] >= 0 ? re->image_out + (size_t)slot[i] * dim : NULL;
    it->text_vec =
        text_slot[i] >= 0 ? re->text_out + (size_t)text_slot[i] * dim : NULL;
    if (!it->image_vec && !it->text_vec) {
      re->dropped++;
      continue;
    }
    re->partial += bad;
    it->caption = r->caption;
    it->source = r->source;
    it->thumb = r->thumb;
    it->thumb_len = r->thumb_len;
    it->meta_json = r->meta_json;
    it->image = re->image[i];
    it->image_len = re->image_len[i];
    k++;
  }
  int written = 0, rc = k ? vlm_db_put(re->staged, items, k, 0, &written) : 0;
  if (rc) {
    vlm_progress_finish(&re->progress);
    vlm_cli_liberror(re->cmd, rc);
    return -1;
  }
  re->embedded += written;
  batch_clear(re);
  vlm_progress_update(&re->progress, re->done + re->resumed);
  kill_point("batch");
  return 0;
}

/* Every item of the old database, in id order, into the staged one. */
static int walk(reembed *re) {
  uint64_t cursor = 0;
  do {
    char **keys = NULL;
    int n = 0;
    uint64_t next = 0;
    int rc = vlm_db_scan(re->old, cursor, 256, &keys, &n, &next);
    if (rc) {
      vlm_cli_liberror(re->cmd, rc);
      return -1;
    }
    for (int i = 0; i < n && rc == 0; i++) {
      int have = vlm_db_exists(re->staged, keys[i]);
      if (have < 0) {
        rc = have;
        break;
      }
      if (have) {
        re->resumed++;
        continue;
      }
      int j = re->n;
      if ((rc = vlm_db_get(re->old, keys[i], &re->rec[j])) ||
          (rc = vlm_db_get_image(re->old, keys[i], &re->image[j],
                                 &re->image_len[j])))
        break;
      re->want_image[j] = re->rec[j]->image_vec != NULL;
      re->want_text[j] = re->rec[j]->text_vec != NULL;
      re->n++;
      if (re->n == re->batch_size && batch_flush(re)) {
        vlm_db_keys_free(keys, n);
        return -1;
      }
    }
    vlm_db_keys_free(keys, n);
    if (rc) {
      vlm_cli_liberror(re->cmd, rc);
      return -1;
    }
    cursor = next;
  } while (cursor);
  return re->n ? batch_flush(re) : 0;
}

/* ------------------------------------------------------------ the steps */

/* A switch happened (DIR holds reembed.json) but its clean-up did not
 * finish: remove the old database and then the file.  0 or -1. */
static int finish_switch(const char *cmd, const char *dir,
                         const char *staged) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/" STATE_FILE, dir);
  if (access(path, F_OK) != 0)
    return 0;
  if (remove_tree(staged) != 0) {
    vlm_cli_error(cmd, "removing the old database %s: %s", staged,
                  strerror(errno));
    return -1;
  }
  kill_point("cleaned");
  if (unlink(path) != 0 || fsync_path(dir) != 0) {
    vlm_cli_error(cmd, "%s: %s", path, strerror(errno));
    return -1;
  }
  fprintf(stderr, "vlmdb %s: %s: the switch is complete, the old database "
          "removed\n", cmd, dir);
  return 0;
}

/* Open the staged database to resume, or make it afresh; 0 or -1. */
static int stage_open(const char *cmd, const char *staged,
                      const vlm_db_info *info, vlm_clip *clip,
                      const char *model_abs, const reembed_state *want,
                      vlm_db **out) {
  reembed_state have;
  if (access(staged, F_OK) == 0) {
    int same = state_read(staged, &have) == 0 &&
               have.from_seq == want->from_seq &&
               !strcmp(have.from_model, want->from_model) &&
               !strcmp(have.to_model, want->to_model);
    if (same && vlm_db_open(staged, NULL, out) == 0) {
      fprintf(stderr, "vlmdb %s: resuming %s\n", cmd, staged);
      return 0;
    }
    fprintf(stderr, "vlmdb %s: %s was staged from another state of the "
            "database or for another model: starting again\n", cmd, staged);
    if (remove_tree(staged) != 0) {
      vlm_cli_error(cmd, "removing %s: %s", staged, strerror(errno));
      return -1;
    }
  }
  vlm_field fields[VLM_DB_MAX_FIELDS];
  for (int i = 0; i < info->nfields; i++) {
    fields[i].name = info->field_names[i];
    fields[i].type = info->field_types[i];
  }
  vlm_db_config config = {.dim = vlm_clip_dim(clip),
                          .index_factory = info->index_factory,
                          .model_id = vlm_clip_model_id(clip),
                          .model_dir = model_abs,
                          .fields = fields,
                          .nfields = info->nfields,
                          .model_family = vlm_clip_family(clip),
                          .image_orientation = info->image_orientation,
                          .cluster_digest = info->cluster_digest,
                          .shard = info->shard,
                          .nshards = info->nshards,
                          .slot_ranges = info->slot_ranges,
                          .nslot_ranges = info->nslot_ranges,
                          .keep_images = info->keep_images};
  int rc = vlm_db_create(staged, &config, out);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  kill_point("created");
  if (state_write(staged, want)) {
    vlm_cli_error(cmd, "writing %s/" STATE_FILE ": %s", staged,
                  strerror(errno));
    vlm_db_close(*out);
    *out = NULL;
    return -1;
  }
  return 0;
}

static void print_summary(const reembed *re, const char *status,
                          double elapsed, int as_json) {
  if (as_json) {
    json_t *o = json_pack(
        "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "status", status, "items",
        (json_int_t)(re->done + re->resumed), "embedded",
        (json_int_t)re->embedded, "resumed", (json_int_t)re->resumed,
        "failed", (json_int_t)re->failed, "partial", (json_int_t)re->partial,
        "dropped", (json_int_t)re->dropped, "elapsed_s", elapsed);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    if (s)
      printf("%s\n", s);
    free(s);
    json_decref(o);
    return;
  }
  printf("%s: embedded %ld items again in %.1f s", status, re->embedded,
         elapsed);
  if (re->resumed)
    printf(" (%ld done by an earlier run)", re->resumed);
  if (re->failed)
    printf("; %ld could not be embedded again (%ld kept with fewer vectors, "
           "%ld dropped)", re->failed, re->partial, re->dropped);
  printf("\n");
}

int cmd_reembed(int argc, char **argv) {
  const char *cmd = "reembed", *db_arg = NULL, *model_dir = NULL;
  long batch = 32, threads = 0;
  int as_json = 0, quiet = 0, allow_missing = 0;
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"model", required_argument, NULL, 'm'},
      {"batch", required_argument, NULL, 'b'},
      {"threads", required_argument, NULL, 't'},
      {"allow-missing", no_argument, NULL, 'a'},
      {"json", no_argument, NULL, 'j'},
      {"quiet", no_argument, NULL, 'q'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "qh", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': db_arg = optarg; break;
    case 'm': model_dir = optarg; break;
    case 'b':
      if (vlm_cli_parse_long(cmd, "--batch", optarg, 1, MAX_BATCH, &batch))
        return VLM_EXIT_USAGE;
      break;
    case 't':
      if (vlm_cli_parse_long(cmd, "--threads", optarg, 1, 256, &threads))
        return VLM_EXIT_USAGE;
      break;
    case 'a': allow_missing = 1; break;
    case 'j': as_json = 1; break;
    case 'q': quiet = 1; break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: return vlm_cli_getopt_failed(cmd);
    }
  }
  if (!db_arg || !model_dir)
    return vlm_cli_usage_error(cmd, "--db DIR and --model DIR are required");
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  char dir[PATH_MAX], staged[PATH_MAX + 16], model_abs[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", db_arg);
  for (size_t n = strlen(dir); n > 1 && dir[n - 1] == '/';)
    dir[--n] = '\0';
  snprintf(staged, sizeof staged, "%s.reembed", dir);
  if (!realpath(model_dir, model_abs)) {
    vlm_cli_error(cmd, "model directory %s: not found", model_dir);
    return VLM_EXIT_RUNTIME;
  }

  char manifest[PATH_MAX + 16];
  snprintf(manifest, sizeof manifest, "%s/manifest.json", dir);
  if (access(manifest, F_OK) != 0) {
    vlm_cli_error(cmd, "%s is not a vlmdb database (no manifest.json)", dir);
    return VLM_EXIT_RUNTIME;
  }
  int status = VLM_EXIT_RUNTIME;
  vlm_db_lock *lock = NULL;
  reembed re;
  memset(&re, 0, sizeof re);
  re.cmd = cmd;
  re.batch_size = (int)batch;
  re.allow_missing = allow_missing;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  re.nthreads = threads ? (int)threads : ncpu > 0 ? (int)ncpu : 1;
  pthread_mutex_init(&re.prep_mu, NULL);
  const char *outcome = "failed";
  vlm_db_info info;
  int rc = vlm_db_lock_writers(dir, &lock);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    if (rc == VLM_EBUSY)
      fprintf(stderr, "vlmdb %s: re-embedding needs the database to itself "
              "for writing; stop the writer (a server can serve it "
              "read-only meanwhile)\n", cmd);
    goto done;
  }
  if (finish_switch(cmd, dir, staged))
    goto done;
  vlm_db_open_options ro = {.readonly = 1};
  if ((rc = vlm_db_open(dir, &ro, &re.old)) ||
      (rc = vlm_db_stat(re.old, &info))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  vlm_clip_options copts = vlm_cli_db_model_options(&info, (int)threads);
  if ((rc = vlm_clip_load(model_abs, &copts, &re.clip))) {
    vlm_cli_error(cmd, "loading the model from %s: %s", model_abs,
                  vlm_errmsg());
    goto done;
  }
  if (!strcmp(vlm_clip_model_id(re.clip), info.model_id)) {
    printf("%s already uses the model in %s: nothing to do\n", dir,
           model_abs);
    status = VLM_EXIT_OK;
    goto done;
  }
  reembed_state want = {.from_seq = info.seq};
  snprintf(want.from_model, sizeof want.from_model, "%s", info.model_id);
  snprintf(want.to_model, sizeof want.to_model, "%s",
           vlm_clip_model_id(re.clip));
  if (stage_open(cmd, staged, &info, re.clip, model_abs, &want, &re.staged))
    goto done;
  re.dim = vlm_clip_dim(re.clip);
  int side = vlm_clip_image_size(re.clip);
  re.pixel_floats = (size_t)3 * side * side;
  re.pixels = malloc((size_t)re.batch_size * re.pixel_floats * sizeof(float));
  re.image_out = malloc((size_t)re.batch_size * re.dim * sizeof(float));
  re.text_out = malloc((size_t)re.batch_size * re.dim * sizeof(float));
  re.why = malloc((size_t)re.batch_size * sizeof *re.why);
  if (!re.pixels || !re.image_out || !re.text_out || !re.why) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }
  vlm_progress_init(&re.progress, stderr, cmd, (long)info.items);
  re.progress.quiet |= quiet;
  if (walk(&re))
    goto done;
  vlm_progress_finish(&re.progress);
  if (re.failed && !allow_missing) {
    outcome = "not switched";
    print_summary(&re, outcome, vlm_progress_elapsed(&re.progress), as_json);
    vlm_cli_error(cmd, "%ld items could not be embedded again (listed "
                  "above); %s stays as it was and %s is kept: restore their "
                  "files and run again, or pass --allow-missing", re.failed,
                  dir, staged);
    goto done;
  }
  kill_point("walked");
  /* Both handles closed first: the staged database checkpointed whole, and
   * no handle left to write by a path that is about to change. */
  vlm_db_close(re.staged);
  re.staged = NULL;
  vlm_db_close(re.old);
  re.old = NULL;
  if ((rc = vlm_db_exchange(dir, staged))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  kill_point("switched");
  /* The lock stays with the old database (now staged): writers may use the
   * new one from here on. */
  vlm_db_unlock_writers(lock);
  lock = NULL;
  if (finish_switch(cmd, dir, staged))
    goto done;
  outcome = "switched";
  print_summary(&re, outcome, vlm_progress_elapsed(&re.progress), as_json);
  if (!as_json)
    printf("%s now uses the model in %s (dimension %d)\n", dir, model_abs,
           re.dim);
  status = VLM_EXIT_OK;
done:
  batch_clear(&re);
  free(re.pixels);
  free(re.image_out);
  free(re.text_out);
  free(re.why);
  pthread_mutex_destroy(&re.prep_mu);
  vlm_db_close(re.staged);
  vlm_db_close(re.old);
  vlm_clip_free(re.clip);
  vlm_db_unlock_writers(lock);
  return status;
}
