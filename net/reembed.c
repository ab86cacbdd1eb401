/* reembed.c - VLM.REEMBED: move the served database to another model
 * while the server goes on answering.
 *
 * The staged rebuild is vlm_reembed_* (train/vlm_reembed.h), the one
 * `vlmdb reembed` runs, on a thread of its own that reads the served
 * database through the server's own handle.  The phases:
 *
 *   waiting    the command was taken; the thread starts at once;
 *   running    the thread loads the new model and stages every item,
 *              then catches up with the writes taken meanwhile (every
 *              write gives its item a new id: the items whose id is at
 *              least the next id of a pass's start, embedded again), pass
 *              after pass while a pass finds more than a batch of them;
 *              searches, reads and writes go to the old database and
 *              model;
 *   final      writes are refused (commands.c) and the ones already
 *              started finish (writes_pending, on the loop); then the last
 *              catch-up and the sweep of keys deleted meanwhile make the
 *              staged database the old one's items, embedded again;
 *   switching  the staging is whole: new worker jobs are held at launch
 *              (jobs.c), and once every job launched has come back
 *              (jobs_out == 0) the loop closes the old database, swaps the
 *              directories (vlm_db_exchange), opens the new one, puts the
 *              new model in place and launches the held jobs (a request
 *              checked against the old model is checked again first);
 *   cleaning   the thread removes the old database (now DIR.reembed);
 *   done / failed / aborted: writes are taken again.
 *
 * Killed anywhere, the database is the old one whole (before the
 * exchange; DIR.reembed stays for a rerun to resume) or the new one whole
 * (after it; `vlmdb serve` finishes the clean-up at its next start).
 *
 * Thread rules: phase, the counts and the message are under mu (the
 * thread, the loop, INFO); everything else is the loop's, except what
 * the thread owns between its start and its end (re, the new model until
 * it hands it over in the switching phase).
 */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "netint.h"
#include "vlm_error.h"
#include "vlm_reembed.h"

enum {
  PHASE_IDLE,
  PHASE_WAITING,
  PHASE_RUNNING,
  PHASE_FINAL,
  PHASE_SWITCHING,
  PHASE_CLEANING,
  PHASE_DONE,
  PHASE_FAILED,
  PHASE_ABORTED
};

static const char *phase_names[] = {"idle",     "waiting",  "running",
                                    "final",    "switching", "cleaning",
                                    "done",     "failed",   "aborted"};

struct vlm__reembed_state {
  pthread_mutex_t mu;
  pthread_cond_t cv;        /* the thread waits for the switch's outcome */
  int phase;
  int switch_rc;            /* loop -> thread: 1 switched, < 0 failed */
  int switch_done;
  int drained;              /* loop -> thread: final, no write in flight */
  long caught_up, swept;    /* items embedded again after the walk, keys
                               deleted from the staging by the sweep */
  char model_dir[PATH_MAX]; /* the new model's directory (absolute) */
  char from_model[80];
  char message[512];        /* why it failed, or how it ended */
  long items, done, embedded, resumed, failed;
  double started, finished; /* seconds, CLOCK_REALTIME */
  int batch, threads, allow_missing;
  atomic_int cancel;
  pthread_t thread;
  int thread_live;          /* loop: started, not yet joined */
  vlm_clip *clip;           /* the thread's new model, handed over at the
                               switch */
  vlm_server *srv;
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int phase_get(vlm__reembed_state *st) {
  pthread_mutex_lock(&st->mu);
  int p = st->phase;
  pthread_mutex_unlock(&st->mu);
  return p;
}

/* Set the phase (and the message, when fmt is not NULL). */
static void phase_set(vlm__reembed_state *st, int phase, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void phase_set(vlm__reembed_state *st, int phase, const char *fmt,
                      ...) {
  pthread_mutex_lock(&st->mu);
  st->phase = phase;
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->message, sizeof st->message, fmt, ap);
    va_end(ap);
  }
  if (phase >= PHASE_DONE)
    st->finished = now_s();
  pthread_mutex_unlock(&st->mu);
}

static int busy_phase(int p) {
  return p == PHASE_WAITING || p == PHASE_RUNNING || p == PHASE_FINAL ||
         p == PHASE_SWITCHING;
}

/* Writes are refused from the final catch-up to the switch. */
static int refusing_phase(int p) {
  return p == PHASE_FINAL || p == PHASE_SWITCHING;
}

int vlm__reembed_init(vlm_server *srv) {
  vlm__reembed_state *st = calloc(1, sizeof *st);
  if (!st)
    return vlm_seterr(VLM_ENOMEM, "server");
  pthread_mutex_init(&st->mu, NULL);
  pthread_cond_init(&st->cv, NULL);
  atomic_init(&st->cancel, 0);
  st->srv = srv;
  srv->reembed = st;
  return 0;
}

/* ---------------------------------------------------------------- thread */

static void on_item_error(void *arg, const char *key, const char *what,
                          const char *detail) {
  vlm__reembed_state *st = arg;
  vlm__server_log(st->srv, "reembed: key \"%s\": %s: %s", key, what, detail);
}

static void on_progress(void *arg, long done) {
  vlm__reembed_state *st = arg;
  pthread_mutex_lock(&st->mu);
  st->done = done;
  pthread_mutex_unlock(&st->mu);
}

static void on_note(void *arg, const char *line) {
  vlm__reembed_state *st = arg;
  vlm__server_log(st->srv, "reembed: %s", line);
}

static void *reembed_main(void *arg) {
  vlm__reembed_state *st = arg;
  vlm_server *srv = st->srv;
  vlm_reembed *re = NULL;
  vlm_clip *clip = NULL;
  vlm_reembed_options opts = {.batch = st->batch,
                              .threads = st->threads,
                              .allow_missing = st->allow_missing,
                              .on_item_error = on_item_error,
                              .on_progress = on_progress,
                              .on_note = on_note,
                              .arg = st,
                              .cancel = &st->cancel};
  vlm_db_info info;
  int rc = vlm_db_stat(srv->db, &info);
  if (rc < 0)
    goto fail;
  /* one compute thread a call, as the server's own model */
  vlm_clip_options copts = {.threads = 1};
  if (!strcmp(info.image_orientation, "apply"))
    copts.orientation = VLM_ORIENT_APPLY;
  else if (!strcmp(info.image_orientation, "ignore"))
    copts.orientation = VLM_ORIENT_IGNORE;
  else
    copts.orientation = VLM_ORIENT_MODEL;
  if ((rc = vlm_clip_load(st->model_dir, &copts, &clip)) < 0) {
    char why[400];
    snprintf(why, sizeof why, "%s", vlm_errmsg());
    rc = vlm_seterr(rc, "loading the model from %s: %s", st->model_dir, why);
    goto fail;
  }
  if ((rc = vlm_reembed_begin(srv->db_dir, srv->db, clip, st->model_dir,
                              &opts, &re)) < 0)
    goto fail;
  vlm_reembed_counts c;
  vlm_reembed_get_counts(re, &c);
  pthread_mutex_lock(&st->mu);
  st->items = c.items;
  pthread_mutex_unlock(&st->mu);
  rc = vlm_reembed_walk(re);
  vlm_reembed_get_counts(re, &c);
  pthread_mutex_lock(&st->mu);
  st->done = c.done + c.resumed;
  st->embedded = c.embedded;
  st->resumed = c.resumed;
  st->failed = c.failed;
  pthread_mutex_unlock(&st->mu);
  if (rc == VLM_EINTR)
    goto aborted;
  if (rc < 0)
    goto fail;
  if (c.failed && !st->allow_missing) {
    rc = vlm_seterr(VLM_ENOTFOUND, "%ld items could not be embedded again "
                    "(the log names them); the database stays as it was: "
                    "restore their files and run VLM.REEMBED again, or add "
                    "ALLOWMISSING", c.failed);
    goto fail;
  }
  /* Catch up with the writes taken during the walk, pass after pass,
   * while writes go on.  A pass that finds at most a batch ends it, and
   * so does one that finds no fewer than the pass before: writes come in
   * as fast as this thread embeds them, and more passes would only grow
   * (the last pass, with writes refused, is then about one pass long). */
  uint64_t mark = vlm_reembed_mark(re), next = 0;
  long changed = 0, deleted = 0, before = LONG_MAX;
  for (int pass = 0; pass < 8; pass++) {
    if ((rc = vlm_reembed_catch_up(re, mark, &next, &changed)) < 0)
      break;
    mark = next;
    pthread_mutex_lock(&st->mu);
    st->caught_up += changed;
    pthread_mutex_unlock(&st->mu);
    if (changed <= st->batch || changed >= before)
      break;
    before = changed;
  }
  if (rc == VLM_EINTR)
    goto aborted;
  if (rc < 0)
    goto fail;
  /* Final: writes refused; once the started ones are in, the last pass
   * and the sweep leave nothing to catch up. */
  pthread_mutex_lock(&st->mu);
  st->drained = 0;
  st->phase = PHASE_FINAL;
  pthread_mutex_unlock(&st->mu);
  vlm__server_log(srv, "reembed: %ld items embedded again after the walk; "
                  "writes are refused for the last catch-up and the switch",
                  st->caught_up);
  uv_async_send(&srv->async_reembed);
  pthread_mutex_lock(&st->mu);
  while (!st->drained && !atomic_load(&st->cancel))
    pthread_cond_wait(&st->cv, &st->mu);
  pthread_mutex_unlock(&st->mu);
  if (atomic_load(&st->cancel))
    goto aborted;
  if ((rc = vlm_reembed_catch_up(re, mark, &next, &changed)) < 0 ||
      (rc = vlm_reembed_sweep(re, &deleted)) < 0) {
    if (rc == VLM_EINTR)
      goto aborted;
    goto fail;
  }
  pthread_mutex_lock(&st->mu);
  st->caught_up += changed;
  st->swept = deleted;
  pthread_mutex_unlock(&st->mu);
  vlm_reembed_get_counts(re, &c);
  if (c.failed && !st->allow_missing) {
    rc = vlm_seterr(VLM_ENOTFOUND, "%ld items could not be embedded again "
                    "(the log names them); the database stays as it was: "
                    "restore their files and run VLM.REEMBED again, or add "
                    "ALLOWMISSING", c.failed);
    goto fail;
  }
  vlm_reembed_close_staged(re);
  /* the loop switches, between two jobs; a stop asked for before this
   * point is seen here, under mu (vlm__reembed_stop) */
  pthread_mutex_lock(&st->mu);
  if (atomic_load(&st->cancel)) {
    pthread_mutex_unlock(&st->mu);
    vlm_reembed_free(re);
    vlm_clip_free(clip);
    phase_set(st, PHASE_ABORTED, "stopped before the switch: the staged "
              "database is whole, VLM.REEMBED resumes it");
    return NULL;
  }
  st->clip = clip;
  clip = NULL;
  st->switch_done = 0;
  st->phase = PHASE_SWITCHING;
  pthread_mutex_unlock(&st->mu);
  uv_async_send(&srv->async_reembed);
  pthread_mutex_lock(&st->mu);
  while (!st->switch_done)
    pthread_cond_wait(&st->cv, &st->mu);
  int switched = st->switch_rc;
  pthread_mutex_unlock(&st->mu);
  vlm_reembed_free(re);
  re = NULL;
  if (switched < 0) {
    rc = switched;
    goto fail_quiet; /* the loop said why */
  }
  phase_set(st, PHASE_CLEANING, NULL);
  if ((rc = vlm_reembed_finish_switch(srv->db_dir, &opts, NULL)) < 0) {
    phase_set(st, PHASE_DONE, "switched; removing the old database failed "
              "(%s): the next start of vlmdb serve finishes it",
              vlm_errmsg());
    return NULL;
  }
  phase_set(st, PHASE_DONE, "switched to the model in %s", st->model_dir);
  return NULL;
aborted:
  vlm_reembed_free(re);
  vlm_clip_free(clip);
  phase_set(st, PHASE_ABORTED, "aborted before the switch: the database "
            "is as it was");
  vlm__server_log(srv, "reembed: aborted; writes are taken again");
  return NULL;
fail:
  phase_set(st, PHASE_FAILED, "%s: %s", vlm_strerror(rc), vlm_errmsg());
  vlm__server_log(srv, "reembed failed: %s: %s; writes are taken again",
                  vlm_strerror(rc), vlm_errmsg());
  vlm_reembed_free(re);
  vlm_clip_free(clip);
  return NULL;
fail_quiet:
  vlm_clip_free(clip);
  return NULL;
}

/* ---------------------------------------------------------------- switch */

/* The switch itself, on the loop with no job in the workers: 1 switched,
 * or an error code with the old database served again (or, when even
 * that cannot be opened, the server shutting down). */
static int do_switch(vlm_server *srv, vlm__reembed_state *st) {
  char staged[PATH_MAX + 16];
  vlm_reembed_staged_path(srv->db_dir, staged, sizeof staged);
  vlm_db *next = NULL;
  vlm_db_info info;
  vlm_db_close(srv->db);
  srv->db = NULL;
  int rc = vlm_db_exchange(srv->db_dir, staged);
  if (rc == 0) {
    if ((rc = vlm_db_open(srv->db_dir, NULL, &next)) == 0 &&
        (rc = vlm_db_stat(next, &info)) < 0) {
      vlm_db_close(next);
      next = NULL;
    }
    /* back to the old one, which then is whole at DIR again */
    if (rc < 0 && vlm_db_exchange(srv->db_dir, staged) < 0)
      vlm__server_log(srv, "reembed: cannot swap back: %s", vlm_errmsg());
  }
  if (rc < 0) {
    char why[400];
    snprintf(why, sizeof why, "%s: %s", vlm_strerror(rc), vlm_errmsg());
    if (vlm_db_open(srv->db_dir, NULL, &srv->db) < 0) {
      vlm__server_log(srv, "reembed: the switch failed (%s) and %s cannot "
                      "be opened again (%s): shutting down", why,
                      srv->db_dir, vlm_errmsg());
      vlm_server_stop(srv);
    }
    pthread_mutex_lock(&st->mu);
    vlm_clip_free(st->clip);
    st->clip = NULL;
    pthread_mutex_unlock(&st->mu);
    phase_set(st, PHASE_FAILED, "the switch failed: %s; the database is as "
              "it was", why);
    vlm__server_log(srv, "reembed: the switch failed: %s", why);
    return rc;
  }
  srv->db = next;
  vlm_clip_free(srv->clip);
  pthread_mutex_lock(&st->mu);
  srv->clip = st->clip;
  st->clip = NULL;
  pthread_mutex_unlock(&st->mu);
  srv->dim = info.dim;
  srv->image_size = vlm_clip_image_size(srv->clip);
  snprintf(srv->model_dir, sizeof srv->model_dir, "%s", st->model_dir);
  srv->model_gen++;
  vlm__server_log(srv, "reembed: switched to the model in %s (dimension "
                  "%d)", st->model_dir, info.dim);
  return 1;
}

void vlm__reembed_poll(vlm_server *srv) {
  vlm__reembed_state *st = srv->reembed;
  if (!st)
    return;
  int phase = phase_get(st);
  if (phase == PHASE_FINAL && srv->writes_pending == 0) {
    pthread_mutex_lock(&st->mu);
    if (!st->drained) {
      st->drained = 1;
      pthread_cond_signal(&st->cv);
    }
    pthread_mutex_unlock(&st->mu);
    return;
  }
  if (phase == PHASE_WAITING) {
    if (srv->shutting_down) {
      phase_set(st, PHASE_ABORTED, "the server shut down first");
      return;
    }
    phase_set(st, PHASE_RUNNING, NULL);
    if (pthread_create(&st->thread, NULL, reembed_main, st) != 0) {
      phase_set(st, PHASE_FAILED, "cannot start a thread");
      return;
    }
    st->thread_live = 1;
    vlm__server_log(srv, "reembed: started, to the model in %s; writes go "
                    "on until the last catch-up", st->model_dir);
    return;
  }
  if (phase == PHASE_SWITCHING && !srv->shutting_down) {
    if (!srv->hold_launches) {
      srv->hold_launches = 1; /* new jobs wait; the launched ones finish */
      vlm__server_log(srv, "reembed: switching once %d jobs are back",
                      srv->jobs_out);
    }
    if (srv->jobs_out > 0)
      return;
    int rc = do_switch(srv, st);
    srv->hold_launches = 0;
    pthread_mutex_lock(&st->mu);
    st->switch_rc = rc;
    st->switch_done = 1;
    if (rc == 1) /* never twice: the thread now removes the old one */
      st->phase = PHASE_CLEANING;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
    vlm__jobs_release_held(srv);
    return;
  }
  if (st->thread_live && phase >= PHASE_DONE) {
    pthread_join(st->thread, NULL);
    st->thread_live = 0;
  }
}

void vlm__reembed_stop(vlm_server *srv, int join) {
  vlm__reembed_state *st = srv->reembed;
  if (!st)
    return;
  atomic_store(&st->cancel, 1);
  if (phase_get(st) == PHASE_WAITING)
    phase_set(st, PHASE_ABORTED, "the server shut down first");
  if (!st->thread_live)
    return;
  /* a thread waiting for the drain or the switch is told it will not
   * happen */
  pthread_mutex_lock(&st->mu);
  pthread_cond_signal(&st->cv);
  if (st->phase == PHASE_SWITCHING && !st->switch_done) {
    st->switch_rc = vlm_seterr(VLM_EINTR, "the server shut down before the "
                               "switch");
    st->switch_done = 1;
    snprintf(st->message, sizeof st->message, "the server shut down before "
             "the switch: the staged database is whole, VLM.REEMBED resumes "
             "it");
    st->phase = PHASE_ABORTED;
    pthread_cond_signal(&st->cv);
  }
  pthread_mutex_unlock(&st->mu);
  if (srv->hold_launches) {
    srv->hold_launches = 0;
    vlm__jobs_release_held(srv);
  }
  if (!join)
    return;
  pthread_join(st->thread, NULL);
  st->thread_live = 0;
}

void vlm__reembed_free(vlm_server *srv) {
  vlm__reembed_state *st = srv->reembed;
  if (!st)
    return;
  vlm_clip_free(st->clip);
  pthread_cond_destroy(&st->cv);
  pthread_mutex_destroy(&st->mu);
  free(st);
  srv->reembed = NULL;
}

/* ---------------------------------------------------------------- command */

const char *vlm__reembed_refusing(vlm_server *srv, int writes) {
  vlm__reembed_state *st = srv->reembed;
  if (!st)
    return NULL;
  int p = phase_get(st);
  return (writes ? refusing_phase(p) : busy_phase(p)) ? st->model_dir : NULL;
}

static void reply_status(vlm_server *srv, vlm__buf *out) {
  vlm__reembed_state *st = srv->reembed;
  pthread_mutex_lock(&st->mu);
  double end = st->phase >= PHASE_DONE ? st->finished : now_s();
  vlm__reply_map(out, 11);
  vlm__reply_cstr(out, "state");
  vlm__reply_cstr(out, phase_names[st->phase]);
  vlm__reply_cstr(out, "model_dir");
  vlm__reply_cstr(out, st->model_dir);
  vlm__reply_cstr(out, "items");
  vlm__reply_int(out, st->items);
  vlm__reply_cstr(out, "done");
  vlm__reply_int(out, st->done);
  vlm__reply_cstr(out, "embedded");
  vlm__reply_int(out, st->embedded);
  vlm__reply_cstr(out, "resumed");
  vlm__reply_int(out, st->resumed);
  vlm__reply_cstr(out, "failed");
  vlm__reply_int(out, st->failed);
  vlm__reply_cstr(out, "caught_up");
  vlm__reply_int(out, st->caught_up);
  vlm__reply_cstr(out, "swept");
  vlm__reply_int(out, st->swept);
  vlm__reply_cstr(out, "elapsed_s");
  vlm__reply_double(out, st->started > 0 ? end - st->started : 0.0);
  vlm__reply_cstr(out, "message");
  vlm__reply_cstr(out, st->message);
  pthread_mutex_unlock(&st->mu);
}

/* Loop commands' arguments point into the request: not NUL-terminated. */
static int arg_eq(const vlm__resp_arg *a, const char *word) {
  return a->len == strlen(word) && !strncasecmp(a->ptr, word, a->len);
}

static void arg_copy(const vlm__resp_arg *a, char *out, size_t cap) {
  snprintf(out, cap, "%.*s", (int)(a->len < cap ? a->len : cap - 1), a->ptr);
}

int vlm__reembed_command(vlm__ctx *ctx) {
  vlm_server *srv = ctx->srv;
  vlm__reembed_state *st = srv->reembed;
  const vlm__resp_arg *a = ctx->argv;
  vlm__reembed_poll(srv); /* joins a thread that has ended */
  int phase = phase_get(st);
  if (ctx->argc == 2 && arg_eq(&a[1], "STATUS")) {
    reply_status(srv, ctx->out);
    return 0;
  }
  if (ctx->argc == 2 && arg_eq(&a[1], "ABORT")) {
    if (phase != PHASE_WAITING && phase != PHASE_RUNNING &&
        phase != PHASE_FINAL) {
      vlm__reply_error(ctx->out, "ERR", "no re-embedding to abort (state "
                       "%s)", phase_names[phase]);
      return -1;
    }
    if (phase == PHASE_WAITING)
      phase_set(st, PHASE_ABORTED, "aborted before it started");
    atomic_store(&st->cancel, 1);
    pthread_mutex_lock(&st->mu); /* a thread waiting for the drain */
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
    vlm__reply_status(ctx->out, "OK");
    return 0;
  }
  if (ctx->argc < 3 || !arg_eq(&a[1], "MODEL")) {
    vlm__reply_error(ctx->out, "ERR", "syntax: VLM.REEMBED MODEL dir [BATCH "
                     "n] [THREADS n] [ALLOWMISSING] | STATUS | ABORT");
    return -1;
  }
  long batch = 32, threads = 1;
  int allow_missing = 0;
  for (int i = 3; i < ctx->argc; i++) {
    int is_batch = arg_eq(&a[i], "BATCH");
    if ((is_batch || arg_eq(&a[i], "THREADS")) && i + 1 < ctx->argc) {
      char num[32], *end;
      arg_copy(&a[i + 1], num, sizeof num);
      long v = strtol(num, &end, 10);
      long max = is_batch ? VLM_REEMBED_MAX_BATCH : 256;
      if (*end || end == num || v < 1 || v > max) {
        vlm__reply_error(ctx->out, "ERR", "%s must be an integer from 1 to "
                         "%ld", is_batch ? "BATCH" : "THREADS", max);
        return -1;
      }
      *(is_batch ? &batch : &threads) = v;
      i++;
    } else if (arg_eq(&a[i], "ALLOWMISSING")) {
      allow_missing = 1;
    } else {
      vlm__reply_error(ctx->out, "ERR", "syntax error near '%.*s'",
                       (int)(a[i].len < 64 ? a[i].len : 64), a[i].ptr);
      return -1;
    }
  }
  if (busy_phase(phase) || phase == PHASE_CLEANING || st->thread_live) {
    vlm__reply_error(ctx->out, "ERR", "a re-embedding is already running "
                     "(state %s): see VLM.REEMBED STATUS",
                     phase_names[phase]);
    return -1;
  }
  if (vlm__repl_readonly(srv)) {
    vlm__reply_error(ctx->out, "READONLY", "a replica follows its primary's "
                     "model: re-embed the primary");
    return -1;
  }
  if (vlm_db_readonly(srv->db) || !srv->db_dir[0]) {
    vlm__reply_error(ctx->out, "ERR", "the database is served read-only "
                     "(--mmap): stop the server and run vlmdb reembed");
    return -1;
  }
  char model_arg[PATH_MAX], model_abs[PATH_MAX];
  arg_copy(&a[2], model_arg, sizeof model_arg);
  if (!realpath(model_arg, model_abs)) {
    vlm__reply_error(ctx->out, "ERR", "model directory %s: not found on the "
                     "server's machine", model_arg);
    return -1;
  }
  vlm_db_info info;
  int rc = vlm_db_stat(srv->db, &info);
  if (rc < 0) {
    vlm__reply_error(ctx->out, "ERR", "%s: %s", vlm_strerror(rc),
                     vlm_errmsg());
    return -1;
  }
  pthread_mutex_lock(&st->mu);
  snprintf(st->model_dir, sizeof st->model_dir, "%s", model_abs);
  snprintf(st->from_model, sizeof st->from_model, "%s", info.model_id);
  st->message[0] = '\0';
  st->items = (long)info.items;
  st->done = st->embedded = st->resumed = st->failed = 0;
  st->caught_up = st->swept = 0;
  st->started = now_s();
  st->finished = 0;
  st->batch = (int)batch;
  st->threads = (int)threads;
  st->allow_missing = allow_missing;
  st->switch_done = 0;
  st->phase = PHASE_WAITING;
  pthread_mutex_unlock(&st->mu);
  atomic_store(&st->cancel, 0);
  vlm__reembed_poll(srv); /* starts the thread */
  reply_status(srv, ctx->out);
  return 0;
}

void vlm__reembed_info(vlm_server *srv, vlm__buf *b) {
  vlm__reembed_state *st = srv->reembed;
  pthread_mutex_lock(&st->mu);
  double end = st->phase >= PHASE_DONE ? st->finished : now_s();
  vlm__buf_printf(b, "# Reembed\r\nreembed_state:%s\r\n"
                  "reembed_model_dir:%s\r\nreembed_items:%ld\r\n"
                  "reembed_done:%ld\r\nreembed_embedded:%ld\r\n"
                  "reembed_resumed:%ld\r\nreembed_failed:%ld\r\n"
                  "reembed_caught_up:%ld\r\nreembed_swept:%ld\r\n"
                  "reembed_elapsed_s:%.1f\r\nreembed_writes_refused:%d\r\n"
                  "reembed_message:%s\r\n\r\n",
                  phase_names[st->phase], st->model_dir, st->items, st->done,
                  st->embedded, st->resumed, st->failed, st->caught_up,
                  st->swept, st->started > 0 ? end - st->started : 0.0,
                  refusing_phase(st->phase), st->message);
  pthread_mutex_unlock(&st->mu);
}

void vlm__reembed_progress(vlm_server *srv, int *running, long *items,
                           long *done) {
  vlm__reembed_state *st = srv->reembed;
  pthread_mutex_lock(&st->mu);
  *running = busy_phase(st->phase);
  *items = st->items;
  *done = st->done;
  pthread_mutex_unlock(&st->mu);
}
