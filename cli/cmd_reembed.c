/* cmd_reembed.c - `vlmdb reembed`: move a database to another model.
 *
 * The staged rebuild, its state file and its crash safety are
 * vlm_reembed_* (train/vlm_reembed.h), which the server's VLM.REEMBED
 * runs as well; this command adds the writer lock, the switch and the
 * report.
 *
 * Writers are kept out from the first step to the switch: the run holds
 * DIR's writer lock (vlm_db_lock_writers), so a writer gets VLM_EBUSY
 * naming `vlmdb reembed`; read-only commands (search, get, eval, a
 * read-only server) keep answering from the old model until the switch.
 * A server that writes holds the lock itself: it re-embeds in place
 * (VLM.REEMBED), and this command says so.
 */
#include "opts.h"
#include "progress.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_reembed.h"
#include "vlmdb.h"

#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
static void kill_point(const char *point) { vlm_cli_crash_point(point); }

typedef struct {
  const char *cmd;
  vlm_progress progress;
} run_ctx;

static void on_item_error(void *arg, const char *key, const char *what,
                          const char *detail) {
  run_ctx *rc = arg;
  vlm_progress_finish(&rc->progress);
  fprintf(stderr, "vlmdb %s: key \"%s\": %s: %s\n", rc->cmd, key, what,
          detail);
}

static void on_progress(void *arg, long done) {
  run_ctx *rc = arg;
  vlm_progress_update(&rc->progress, done);
}

static void on_note(void *arg, const char *line) {
  run_ctx *rc = arg;
  fprintf(stderr, "vlmdb %s: %s\n", rc->cmd, line);
}

static void print_summary(const vlm_reembed_counts *c, const char *status,
                          double elapsed, int as_json) {
  if (as_json) {
    json_t *o = json_pack(
        "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "status", status, "items",
        (json_int_t)(c->done + c->resumed), "embedded",
        (json_int_t)c->embedded, "resumed", (json_int_t)c->resumed,
        "failed", (json_int_t)c->failed, "partial", (json_int_t)c->partial,
        "dropped", (json_int_t)c->dropped, "elapsed_s", elapsed);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    if (s)
      printf("%s\n", s);
    free(s);
    json_decref(o);
    return;
  }
  printf("%s: embedded %ld items again in %.1f s", status, c->embedded,
         elapsed);
  if (c->resumed)
    printf(" (%ld done by an earlier run)", c->resumed);
  if (c->failed)
    printf("; %ld could not be embedded again (%ld kept with fewer vectors, "
           "%ld dropped)", c->failed, c->partial, c->dropped);
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
      if (vlm_cli_parse_long(cmd, "--batch", optarg, 1, VLM_REEMBED_MAX_BATCH,
                             &batch))
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
  vlm_reembed_staged_path(dir, staged, sizeof staged);
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
  vlm_db *old = NULL;
  vlm_clip *clip = NULL;
  vlm_reembed *re = NULL;
  vlm_reembed_counts counts = {0};
  run_ctx ctx = {.cmd = cmd};
  vlm_reembed_options ropts = {.batch = (int)batch,
                               .threads = (int)threads,
                               .allow_missing = allow_missing,
                               .on_item_error = on_item_error,
                               .on_progress = on_progress,
                               .on_note = on_note,
                               .crash_point = kill_point,
                               .arg = &ctx};
  vlm_db_info info;
  int rc = vlm_db_lock_writers(dir, &lock);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    if (rc == VLM_EBUSY)
      fprintf(stderr, "vlmdb %s: re-embedding needs the database to itself "
              "for writing; if `vlmdb serve` holds it, have the server do "
              "it while it serves: redis-cli -p PORT VLM.REEMBED MODEL %s "
              "(then VLM.REEMBED STATUS); otherwise stop the writer\n", cmd,
              model_abs);
    goto done;
  }
  if ((rc = vlm_reembed_finish_switch(dir, &ropts, NULL))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  vlm_db_open_options ro = {.readonly = 1};
  if ((rc = vlm_db_open(dir, &ro, &old)) || (rc = vlm_db_stat(old, &info))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  vlm_clip_options copts = vlm_cli_db_model_options(&info, (int)threads);
  if ((rc = vlm_clip_load(model_abs, &copts, &clip))) {
    vlm_cli_error(cmd, "loading the model from %s: %s", model_abs,
                  vlm_errmsg());
    goto done;
  }
  vlm_progress_init(&ctx.progress, stderr, cmd, (long)info.items);
  ctx.progress.quiet |= quiet;
  rc = vlm_reembed_begin(dir, old, clip, model_abs, &ropts, &re);
  if (rc == VLM_EEXISTS) {
    printf("%s already uses the model in %s: nothing to do\n", dir,
           model_abs);
    status = VLM_EXIT_OK;
    goto done;
  }
  if (rc || (rc = vlm_reembed_walk(re))) {
    vlm_progress_finish(&ctx.progress);
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  vlm_progress_finish(&ctx.progress);
  vlm_reembed_get_counts(re, &counts);
  double elapsed = vlm_progress_elapsed(&ctx.progress);
  if (counts.failed && !allow_missing) {
    print_summary(&counts, "not switched", elapsed, as_json);
    vlm_cli_error(cmd, "%ld items could not be embedded again (listed "
                  "above); %s stays as it was and %s is kept: restore their "
                  "files and run again, or pass --allow-missing",
                  counts.failed, dir, staged);
    goto done;
  }
  kill_point("walked");
  /* Both handles closed first: the staged database checkpointed whole, and
   * no handle left to write by a path that is about to change. */
  vlm_reembed_close_staged(re);
  vlm_db_close(old);
  old = NULL;
  if ((rc = vlm_db_exchange(dir, staged))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  kill_point("switched");
  /* The lock stays with the old database (now staged): writers may use the
   * new one from here on. */
  vlm_db_unlock_writers(lock);
  lock = NULL;
  if ((rc = vlm_reembed_finish_switch(dir, &ropts, NULL))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  print_summary(&counts, "switched", elapsed, as_json);
  if (!as_json)
    printf("%s now uses the model in %s (dimension %d)\n", dir, model_abs,
           vlm_clip_dim(clip));
  status = VLM_EXIT_OK;
done:
  vlm_reembed_free(re);
  vlm_db_close(old);
  vlm_clip_free(clip);
  vlm_db_unlock_writers(lock);
  return status;
}
