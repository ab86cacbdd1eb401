/* crash_writer.c - the writer child of the crash test.
 *
 *   crash_writer DIR FIRST_OP [BACKUPS]
 *
 * Opens the database DIR and runs ops FIRST_OP .. CM_NOPS-1 of the crash
 * model (crash_model.h), writing "<op>\n" to stdout (a pipe) after each op
 * is acknowledged, i.e. after vlm_db_put / vlm_db_delete returned 0.  It
 * checkpoints every 16 ops and reindexes every 24 (to Flat, then back to
 * CM_FACTORY) so kills also land in checkpoints and index rebuilds.  With
 * BACKUPS, after every op j with j % 20 == 10 it backs the database up to
 * BACKUPS/bk-<j> (vlm_db_backup; skipped when that exists) and writes
 * "backup <j>\n": the copy must hold exactly the state after op j.  The parent
 * kills it with SIGKILL at random moments.  Exit status 0 after "done".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crash_model.h"
#include "vlm_error.h"
#include "vlmdb.h"

static void say(const char *s) {
  size_t n = strlen(s), off = 0;
  while (off < n) {
    ssize_t w = write(1, s + off, n - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      exit(3);
    off += (size_t)w;
  }
}

static void quiet(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: crash_writer DIR FIRST_OP [BACKUPS]\n");
    return 2;
  }
  vlm_db_open_options o = {0};
  o.warn = quiet;
  vlm_db *db;
  int rc = vlm_db_open(argv[1], &o, &db);
  if (rc) {
    fprintf(stderr, "crash_writer: open: %s\n", vlm_errmsg());
    return 1;
  }
  say("open\n");
  static cm_item items[CM_BATCH + 10];
  vlm_item batch[CM_BATCH + 10];
  for (int j = atoi(argv[2]); j < CM_NOPS; j++) {
    int p = cm_put_number(j);
    if (cm_is_delete(j)) {
      char keys[10][32];
      const char *kp[10];
      int t = p - 7, n = 0;
      for (int i = t * CM_BATCH + 40; t >= 0 && i < (t + 1) * CM_BATCH; i++) {
        snprintf(keys[n], sizeof keys[n], "k%d", i);
        kp[n] = keys[n];
        n++;
      }
      rc = vlm_db_delete(db, kp, n, NULL);
    } else {
      int n = 0;
      for (int i = p * CM_BATCH; i < (p + 1) * CM_BATCH; i++) {
        cm_make(&items[n], i, 0);
        batch[n] = items[n].item;
        n++;
      }
      if (p % 5 == 4 && p >= 5)
        for (int i = (p - 5) * CM_BATCH; i < (p - 5) * CM_BATCH + 10; i++) {
          cm_make(&items[n], i, p);
          batch[n] = items[n].item;
          n++;
        }
      rc = vlm_db_put(db, batch, n, VLM_PUT_UPSERT, NULL);
    }
    if (rc) {
      fprintf(stderr, "crash_writer: op %d: %s\n", j, vlm_errmsg());
      return 1;
    }
    char line[32];
    snprintf(line, sizeof line, "%d\n", j);
    say(line);
    if (argc == 4 && j % 20 == 10) {
      char dst[4096];
      snprintf(dst, sizeof dst, "%s/bk-%d", argv[3], j);
      if (access(dst, F_OK) != 0) {
        if ((rc = vlm_db_backup(db, dst, NULL))) {
          fprintf(stderr, "crash_writer: backup: %s\n", vlm_errmsg());
          return 1;
        }
        snprintf(line, sizeof line, "backup %d\n", j);
        say(line);
      }
    }
    if (j % 16 == 15 && (rc = vlm_db_checkpoint(db))) {
      fprintf(stderr, "crash_writer: checkpoint: %s\n", vlm_errmsg());
      return 1;
    }
    /* Kills land in reindexing too: to a flat index and back. */
    if (j % 24 == 23 &&
        (rc = vlm_db_reindex(db, j % 48 == 23 ? "Flat" : CM_FACTORY))) {
      fprintf(stderr, "crash_writer: reindex: %s\n", vlm_errmsg());
      return 1;
    }
  }
  vlm_db_close(db);
  say("done\n");
  return 0;
}
