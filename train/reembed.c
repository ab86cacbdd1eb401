/* reembed.c - the staged rebuild behind `vlmdb reembed` and the server's
 * VLM.REEMBED (vlm_reembed.h has the contract and the crash-safety
 * argument). */
#include "vlm_reembed.h"

#include "vlm_error.h"
#include "vlm_file.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_FILE VLM_REEMBED_STATE_FILE

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

void vlm_reembed_staged_path(const char *dir, char *out, size_t cap) {
  char d[PATH_MAX];
  snprintf(d, sizeof d, "%s", dir);
  for (size_t n = strlen(d); n > 1 && d[n - 1] == '/';)
    d[--n] = '\0';
  snprintf(out, cap, "%s.reembed", d);
}

static void note(const vlm_reembed_options *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void note(const vlm_reembed_options *o, const char *fmt, ...) {
  if (!o || !o->on_note)
    return;
  char line[PATH_MAX + 256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  o->on_note(o->arg, line);
}

static void crash_point(const vlm_reembed_options *o, const char *point) {
  if (o && o->crash_point)
    o->crash_point(point);
}

/* ------------------------------------------------------------ the walk */

struct vlm_reembed {
  vlm_reembed_options opts;
  char dir[PATH_MAX], staged_dir[PATH_MAX + 16];
  vlm_db *old, *staged;
  vlm_clip *clip;
  int dim, batch_size, nthreads;
  long batches;
  size_t pixel_floats;
  /* one batch */
  vlm_record *rec[VLM_REEMBED_MAX_BATCH];
  uint8_t *image[VLM_REEMBED_MAX_BATCH]; /* kept bytes */
  size_t image_len[VLM_REEMBED_MAX_BATCH];
  int want_image[VLM_REEMBED_MAX_BATCH], want_text[VLM_REEMBED_MAX_BATCH];
  int failed_image[VLM_REEMBED_MAX_BATCH], failed_text[VLM_REEMBED_MAX_BATCH];
  const char *what[VLM_REEMBED_MAX_BATCH]; /* a failed image: why, in why[i] */
  char (*why)[320];
  int n;
  int next_prep;               /* the next item a preparing thread takes */
  pthread_mutex_t prep_mu;
  float *pixels, *image_out, *text_out;
  vlm_reembed_counts counts;
  unsigned put_flags;          /* catch-up passes replace staged keys */
  uint64_t mark;               /* the old database's next id at begin */
};

static void item_error(vlm_reembed *re, const char *key, const char *what,
                       const char *detail) {
  if (re->opts.on_item_error)
    re->opts.on_item_error(re->opts.arg, key, what, detail);
}

static void batch_clear(vlm_reembed *re) {
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
static void prepare_image(vlm_reembed *re, int i) {
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
  vlm_reembed *re = arg;
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

/* Embed and write the batch; 0 or an error code (the run must stop). */
static int batch_flush(vlm_reembed *re) {
  int dim = re->dim, m = 0, t = 0, rc;
  int slot[VLM_REEMBED_MAX_BATCH], text_slot[VLM_REEMBED_MAX_BATCH];
  const char *texts[VLM_REEMBED_MAX_BATCH];
  pthread_t th[64];
  int nth = re->nthreads < 64 ? re->nthreads : 64, started = 0;
  vlm_reembed_counts *c = &re->counts;
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
  char why[400];
  if (m && (rc = vlm_clip_encode_pixels(re->clip, re->pixels, m, 0,
                                        re->image_out))) {
    snprintf(why, sizeof why, "%s", vlm_errmsg());
    return vlm_seterr(rc, "encoding images: %s", why);
  }
  if (t && (rc = vlm_clip_encode_texts(re->clip, texts, t, 0, re->text_out))) {
    snprintf(why, sizeof why, "%s", vlm_errmsg());
    return vlm_seterr(rc, "encoding captions: %s", why);
  }
  vlm_item items[VLM_REEMBED_MAX_BATCH];
  int k = 0;
  for (int i = 0; i < re->n; i++) {
    vlm_record *r = re->rec[i];
    int bad = re->failed_image[i] || re->failed_text[i];
    c->done++;
    if (bad) {
      c->failed++;
      if (!re->opts.allow_missing)
        continue;
    }
    vlm_item *it = &items[k];
    memset(it, 0, sizeof *it);
    it->key = r->key;
    it->image_vec = slot[i] >= 0 ? re->image_out + (size_t)slot[i] * dim : NULL;
    it->text_vec =
        text_slot[i] >= 0 ? re->text_out + (size_t)text_slot[i] * dim : NULL;
    if (!it->image_vec && !it->text_vec) {
      c->dropped++;
      continue;
    }
    c->partial += bad;
    it->caption = r->caption;
    it->source = r->source;
    it->thumb = r->thumb;
    it->thumb_len = r->thumb_len;
    it->meta_json = r->meta_json;
    it->image = re->image[i];
    it->image_len = re->image_len[i];
    k++;
  }
  int written = 0;
  rc = k ? vlm_db_put(re->staged, items, k, re->put_flags, &written) : 0;
  if (rc)
    return rc;
  c->embedded += written;
  batch_clear(re);
  if (re->opts.on_progress)
    re->opts.on_progress(re->opts.arg, c->done + c->resumed);
  char name[32];
  snprintf(name, sizeof name, "batch:%ld", ++re->batches);
  crash_point(&re->opts, name);
  return 0;
}

/* Stage the old database's items whose id is >= from (0: all), in id
 * order.  resume: keys already staged are skipped (a rerun of a cut
 * walk), else they are replaced (a catch-up).  A key deleted between the
 * scan and its read is skipped (the sweep's).  *added: items batched. */
static int stage_from(vlm_reembed *re, uint64_t from, int resume,
                      long *added) {
  uint64_t cursor = from;
  int rc = 0;
  *added = 0;
  re->put_flags = resume ? 0 : VLM_PUT_UPSERT;
  do {
    if (re->opts.cancel && atomic_load(re->opts.cancel)) {
      rc = vlm_seterr(VLM_EINTR, "re-embedding stopped before the switch");
      break;
    }
    char **keys = NULL;
    int n = 0;
    uint64_t next = 0;
    if ((rc = vlm_db_scan(re->old, cursor, 256, &keys, &n, &next)))
      break;
    for (int i = 0; i < n && rc == 0; i++) {
      if (resume) {
        int have = vlm_db_exists(re->staged, keys[i]);
        if (have < 0) {
          rc = have;
          break;
        }
        if (have) {
          re->counts.resumed++;
          continue;
        }
      }
      int j = re->n;
      rc = vlm_db_get(re->old, keys[i], &re->rec[j]);
      if (rc == VLM_ENOTFOUND) {
        rc = 0;
        continue;
      }
      if (rc || (rc = vlm_db_get_image(re->old, keys[i], &re->image[j],
                                       &re->image_len[j]))) {
        vlm_record_free(re->rec[j]);
        re->rec[j] = NULL;
        break;
      }
      re->want_image[j] = re->rec[j]->image_vec != NULL;
      re->want_text[j] = re->rec[j]->text_vec != NULL;
      re->n++;
      (*added)++;
      if (re->n == re->batch_size && (rc = batch_flush(re)) == 0 &&
          re->opts.cancel && atomic_load(re->opts.cancel))
        rc = vlm_seterr(VLM_EINTR, "re-embedding stopped before the switch");
    }
    vlm_db_keys_free(keys, n);
    cursor = next;
  } while (!rc && cursor);
  if (!rc && re->n)
    rc = batch_flush(re);
  if (rc)
    batch_clear(re);
  re->put_flags = 0;
  return rc;
}

int vlm_reembed_walk(vlm_reembed *re) {
  long added;
  return stage_from(re, 0, 1, &added);
}

uint64_t vlm_reembed_mark(const vlm_reembed *re) { return re->mark; }

int vlm_reembed_catch_up(vlm_reembed *re, uint64_t from_id,
                         uint64_t *next_mark, long *changed) {
  vlm_db_info info;
  int rc = vlm_db_stat(re->old, &info);
  *changed = 0;
  if (rc)
    return rc;
  /* ids from here on are the next pass's: taken before this one reads */
  *next_mark = info.next_id;
  return stage_from(re, from_id, 0, changed);
}

int vlm_reembed_sweep(vlm_reembed *re, long *deleted) {
  uint64_t cursor = 0;
  int rc = 0;
  *deleted = 0;
  do {
    char **keys = NULL, *gone[256];
    int n = 0, ngone = 0, d = 0;
    uint64_t next = 0;
    if ((rc = vlm_db_scan(re->staged, cursor, 256, &keys, &n, &next)))
      break;
    for (int i = 0; i < n && !rc; i++) {
      int have = vlm_db_exists(re->old, keys[i]);
      if (have < 0)
        rc = have;
      else if (!have)
        gone[ngone++] = keys[i];
    }
    if (!rc && ngone &&
        !(rc = vlm_db_delete(re->staged, (const char *const *)gone, ngone,
                             &d)))
      *deleted += d;
    vlm_db_keys_free(keys, n);
    cursor = next;
  } while (!rc && cursor);
  return rc;
}

/* ------------------------------------------------------------ the steps */

int vlm_reembed_finish_switch(const char *dir,
                              const vlm_reembed_options *opts,
                              int *finished) {
  char path[PATH_MAX], staged[PATH_MAX + 16];
  if (finished)
    *finished = 0;
  snprintf(path, sizeof path, "%s/" STATE_FILE, dir);
  if (access(path, F_OK) != 0)
    return 0;
  vlm_reembed_staged_path(dir, staged, sizeof staged);
  if (remove_tree(staged) != 0)
    return vlm_seterr(VLM_EIO, "removing the old database %s: %s", staged,
                      strerror(errno));
  crash_point(opts, "cleaned");
  if (unlink(path) != 0 || fsync_path(dir) != 0)
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  note(opts, "%s: the switch is complete, the old database removed", dir);
  if (finished)
    *finished = 1;
  return 0;
}

/* Open the staged database to resume, or make it afresh. */
static int stage_open(vlm_reembed *re, const vlm_db_info *info,
                      const char *model_abs, const reembed_state *want) {
  const char *staged = re->staged_dir;
  reembed_state have;
  if (access(staged, F_OK) == 0) {
    int same = state_read(staged, &have) == 0 &&
               have.from_seq == want->from_seq &&
               !strcmp(have.from_model, want->from_model) &&
               !strcmp(have.to_model, want->to_model);
    if (same && vlm_db_open(staged, NULL, &re->staged) == 0) {
      note(&re->opts, "resuming %s", staged);
      return 0;
    }
    note(&re->opts, "%s was staged from another state of the database or "
         "for another model: starting again", staged);
    if (remove_tree(staged) != 0)
      return vlm_seterr(VLM_EIO, "removing %s: %s", staged, strerror(errno));
  }
  vlm_field fields[VLM_DB_MAX_FIELDS];
  for (int i = 0; i < info->nfields; i++) {
    fields[i].name = info->field_names[i];
    fields[i].type = info->field_types[i];
  }
  vlm_clip *clip = re->clip;
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
  int rc = vlm_db_create(staged, &config, &re->staged);
  if (rc)
    return rc;
  crash_point(&re->opts, "created");
  if (state_write(staged, want)) {
    rc = vlm_seterr(VLM_EIO, "writing %s/" STATE_FILE ": %s", staged,
                    strerror(errno));
    vlm_db_close(re->staged);
    re->staged = NULL;
    return rc;
  }
  return 0;
}

int vlm_reembed_begin(const char *dir, vlm_db *old, vlm_clip *clip,
                      const char *model_dir, const vlm_reembed_options *opts,
                      vlm_reembed **out) {
  *out = NULL;
  vlm_reembed_options defaults = {0};
  if (!opts)
    opts = &defaults;
  if (opts->batch < 0 || opts->batch > VLM_REEMBED_MAX_BATCH ||
      opts->threads < 0)
    return vlm_seterr(VLM_EINVAL, "reembed: batch must be 1 to %d",
                      VLM_REEMBED_MAX_BATCH);
  vlm_db_info info;
  int rc = vlm_db_stat(old, &info);
  if (rc)
    return rc;
  if (!strcmp(vlm_clip_model_id(clip), info.model_id))
    return vlm_seterr(VLM_EEXISTS, "%s already uses the model in %s", dir,
                      model_dir);
  vlm_reembed *re = calloc(1, sizeof *re);
  if (!re)
    return vlm_seterr(VLM_ENOMEM, "reembed");
  re->opts = *opts;
  snprintf(re->dir, sizeof re->dir, "%s", dir);
  vlm_reembed_staged_path(dir, re->staged_dir, sizeof re->staged_dir);
  re->old = old;
  re->clip = clip;
  re->batch_size = opts->batch ? opts->batch : 32;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  re->nthreads = opts->threads ? opts->threads : ncpu > 0 ? (int)ncpu : 1;
  re->counts.items = (long)info.items;
  pthread_mutex_init(&re->prep_mu, NULL);
  re->mark = info.next_id;
  reembed_state want = {.from_seq = info.seq};
  snprintf(want.from_model, sizeof want.from_model, "%s", info.model_id);
  snprintf(want.to_model, sizeof want.to_model, "%s",
           vlm_clip_model_id(clip));
  if ((rc = stage_open(re, &info, model_dir, &want)))
    goto fail;
  re->dim = vlm_clip_dim(clip);
  int side = vlm_clip_image_size(clip);
  re->pixel_floats = (size_t)3 * side * side;
  re->pixels = malloc((size_t)re->batch_size * re->pixel_floats * sizeof(float));
  re->image_out = malloc((size_t)re->batch_size * re->dim * sizeof(float));
  re->text_out = malloc((size_t)re->batch_size * re->dim * sizeof(float));
  re->why = malloc((size_t)re->batch_size * sizeof *re->why);
  if (!re->pixels || !re->image_out || !re->text_out || !re->why) {
    rc = vlm_seterr(VLM_ENOMEM, "reembed: batch buffers");
    goto fail;
  }
  *out = re;
  return 0;
fail:
  vlm_reembed_free(re);
  return rc;
}

void vlm_reembed_get_counts(const vlm_reembed *re, vlm_reembed_counts *out) {
  *out = re->counts;
}

void vlm_reembed_close_staged(vlm_reembed *re) {
  vlm_db_close(re->staged);
  re->staged = NULL;
}

void vlm_reembed_free(vlm_reembed *re) {
  if (!re)
    return;
  batch_clear(re);
  free(re->pixels);
  free(re->image_out);
  free(re->text_out);
  free(re->why);
  pthread_mutex_destroy(&re->prep_mu);
  vlm_db_close(re->staged);
  free(re);
}
