/* vlm_reembed.h - move a database to another model: the staged rebuild
 * that `vlmdb reembed` and the server's VLM.REEMBED both run.
 *
 * The new vectors are staged in a whole database of their own, DIR.reembed
 * (made with the new model, the old one's index kind, fields, EXIF
 * setting, shard and keep-images setting), filled item by item from the
 * old one in item-id order: the same key, caption, source, thumbnail,
 * metadata and kept image bytes, with an image vector embedded again from
 * the kept bytes (else the source file) and a text vector from the
 * caption, for each vector the item had.  The caller then closes every
 * handle of both, swaps DIR and DIR.reembed (vlm_db_exchange: the switch)
 * and calls vlm_reembed_finish_switch, which removes the old database.
 *
 * Crash safety.  DIR is only read until the switch.  DIR.reembed/
 * VLM_REEMBED_STATE_FILE (written after the staged database is created)
 * names the batch and model of DIR it was built from and the model it is
 * built with; vlm_reembed_begin resumes a staged database that matches
 * (its puts are durable batches; keys already in it are skipped) and
 * starts again from scratch otherwise (DIR changed meanwhile, another
 * model).  After the exchange that file is inside DIR: it says the switch
 * happened, and vlm_reembed_finish_switch finishes the clean-up (removes
 * the old database, now DIR.reembed, then the file).
 *
 * The caller keeps DIR from changing between begin and the switch (the
 * CLI holds the writer lock), or catches up with its changes before it
 * (the server: vlm_reembed_catch_up and vlm_reembed_sweep with its writes
 * stopped for the last pass).
 *
 * Errors: 0 or a negative VLM_E* code with vlm_errmsg() set.
 */
#ifndef VLM_REEMBED_H
#define VLM_REEMBED_H

#include <stdatomic.h>
#include <stddef.h>

#include "vlm_clip.h"
#include "vlmdb.h"

#define VLM_REEMBED_STATE_FILE "reembed.json"
#define VLM_REEMBED_MAX_BATCH 1024

typedef struct vlm_reembed vlm_reembed;

/* Zero means "default" for every field.  The callbacks run on the thread
 * that calls vlm_reembed_walk (on_note also in begin and finish_switch). */
typedef struct {
  int batch;          /* items per batch and transaction (1 ..
                         VLM_REEMBED_MAX_BATCH; 0 = 32) */
  int threads;        /* image decoding threads (0 = online CPUs) */
  int allow_missing;  /* an item that cannot be embedded again (image
                         gone, nothing kept) keeps its payload and the
                         vectors that could be made (dropped when none);
                         without it such items are left out, and the
                         caller must not switch */
  /* An item that could not be embedded again: what ("missing-image",
   * "corrupt-image", "no-caption") and why. */
  void (*on_item_error)(void *arg, const char *key, const char *what,
                        const char *detail);
  /* After each batch: items done so far (resumed ones included). */
  void (*on_progress)(void *arg, long done);
  /* A line worth telling the user ("resuming DIR.reembed", ...). */
  void (*on_note)(void *arg, const char *line);
  /* The kill tests' points: "created", "batch:N" after the N-th batch,
   * and (finish_switch) "cleaned".  NULL outside the tests. */
  void (*crash_point)(const char *point);
  void *arg;
  /* Set (any thread) to stop the walk after the current batch:
   * vlm_reembed_walk then returns VLM_EINTR. */
  const atomic_int *cancel;
} vlm_reembed_options;

typedef struct {
  long items;      /* items of the old database (at begin) */
  long done;       /* walked by this run */
  long embedded;   /* written to the staged database by this run */
  long resumed;    /* already staged by an earlier run */
  long failed;     /* could not be embedded again */
  long partial;    /* of those, written with fewer vectors */
  long dropped;    /* of those, left out: no vector could be made */
} vlm_reembed_counts;

/* dir's staged database's path: dir (trailing slashes removed) +
 * ".reembed", into out (cap bytes). */
void vlm_reembed_staged_path(const char *dir, char *out, size_t cap);

/* A switch of dir happened (dir holds VLM_REEMBED_STATE_FILE) but its
 * clean-up did not finish: remove the old database (dir's staged path)
 * and then the file.  *finished (may be NULL) is 1 when there was one to
 * finish.  0, or VLM_EIO. */
int vlm_reembed_finish_switch(const char *dir,
                              const vlm_reembed_options *opts, int *finished);

/* Start (or resume) staging dir's items for clip's model (its directory:
 * model_dir, recorded in the staged manifest).  old is a handle of dir
 * (read-only or not; only read), borrowed until vlm_reembed_free; clip
 * too.  VLM_EEXISTS when dir already uses clip's model (nothing to do).
 * Then vlm_reembed_walk. */
int vlm_reembed_begin(const char *dir, vlm_db *old, vlm_clip *clip,
                      const char *model_dir, const vlm_reembed_options *opts,
                      vlm_reembed **out);

/* Embed every item of the old database not yet staged, in id order, into
 * the staged one.  Items that cannot be embedded again are counted and
 * reported (on_item_error), not errors.  0, VLM_EINTR when cancelled, or
 * the error that stopped it (the staged database stays for a rerun). */
int vlm_reembed_walk(vlm_reembed *re);

/* Writes while it runs (the server's VLM.REEMBED takes them): every write
 * gives the item a new id, so what changed since a moment is the items
 * whose id is at least the old database's next id of that moment.
 * vlm_reembed_mark: that id when begin ran (the walk's moment).
 * vlm_reembed_catch_up: embed again every item of the old database with
 * an id >= from_id into the staged one (replacing what is there);
 * *next_mark gets the next id taken before it read, for the next pass,
 * *changed how many it embedded.  vlm_reembed_sweep: delete from the
 * staged database the keys the old one no longer has.  With the old
 * database's writes stopped, one catch-up from the last mark and a sweep
 * make the staged database the old one's items, embedded again. */
uint64_t vlm_reembed_mark(const vlm_reembed *re);
int vlm_reembed_catch_up(vlm_reembed *re, uint64_t from_id,
                         uint64_t *next_mark, long *changed);
int vlm_reembed_sweep(vlm_reembed *re, long *deleted);

void vlm_reembed_get_counts(const vlm_reembed *re, vlm_reembed_counts *out);

/* Close the staged database (checkpointed whole): before the exchange. */
void vlm_reembed_close_staged(vlm_reembed *re);

/* Free; closes the staged database if still open.  Accepts NULL. */
void vlm_reembed_free(vlm_reembed *re);

#endif
