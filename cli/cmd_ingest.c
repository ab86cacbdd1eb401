/* cmd_ingest.c - `vlmdb ingest`: bulk-load a catalog.
 *
 * A pipeline in four stages, so image ingest runs at the speed of the
 * embedding engine rather than at the sum of all steps:
 *
 *   reader (this thread)   reads and checks rows, drops duplicates and
 *                          keys already stored, fills batches in order
 *   decode workers (N)     read, decode and preprocess images, make the
 *                          JPEG thumbnails (one item at a time, any batch)
 *   embedder (1)           encodes a batch's pixels and texts, split in
 *                          one slice per core, each slice encoded by a
 *                          single-threaded call (see embed_batch)
 *   writer (1)             reports bad rows in catalog order, writes the
 *                          batch with one vlm_db_put, updates progress
 *
 * Batches live in a ring of NSLOTS slots and move through the stages in
 * catalog order; one mutex and one condition variable guard the ring (the
 * work per hand-off is milliseconds, so contention does not matter).  A
 * batch is acknowledged when vlm_db_put returns: SIGINT stops the run after
 * the batch being written, and a re-run skips every acknowledged key.
 */
#include "catalog.h"
#include "opts.h"
#include "progress.h"
#include "shard.h"
#include "vlm_cli.h"
#include "tag.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_file.h"
#include "vlmdb.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NSLOTS 4
#define ROWS_PER_GOOD 8 /* a batch holds at most batch * 8 rows in all */
#define MAX_BATCH 4096
#define EMB_BATCH 4096 /* the default for precomputed vectors (--embeddings) */
#define MAX_THREADS 256

static const char usage[] =
    "usage: vlmdb ingest --db DIR (CATALOG | --embeddings DIR)\n"
    "                    [--images-root DIR] [--batch N]\n"
    "                    [--threads N] [--upsert] [--strict] [--format F]\n"
    "                    [--keep-images]\n"
    "                    [--model DIR] [--json] [--quiet] [--publish]\n"
    "                    [--tag-field F --tag-labels FILE [--tag-template T]...\n"
    "                     [--tag-score-field F] [--tag-min-score S]]\n"
    "\n"
    "Embed and store every row of CATALOG: a JSONL file (.jsonl), a CSV or\n"
    "TSV file with a header (.csv, .tsv), or a directory of images (key =\n"
    "relative path, text from a NAME.txt sidecar).  Image paths are relative\n"
    "to the catalog's directory unless --images-root says otherwise.\n"
    "Keys already in the database are skipped (so an interrupted ingest\n"
    "resumes where it stopped); bad rows are reported with their line and\n"
    "skipped.  A summary goes to stdout, progress and problems to stderr.\n"
    "\n"
    "  --db DIR            the database (made by `vlmdb init`)\n"
    "  --images-root DIR   base directory of relative image paths\n"
    "  --batch N           items per batch and transaction (default 32;\n"
    "                      4096 for --embeddings: nothing to embed)\n"
    "  --threads N         image decoding threads (default: all cores)\n"
    "  --upsert            replace keys that exist instead of skipping them\n"
    "  --keep-images       also store each image file's bytes in the\n"
    "                      database, so `vlmdb reembed` (and `train --db`)\n"
    "                      work without the files (costs their size on\n"
    "                      disk); the default on a database that keeps\n"
    "                      images (`vlmdb init --keep-images`).  A row's\n"
    "                      \"kept_image\" (an export's) is always kept\n"
    "  --strict            stop at the first bad row and exit with 1\n"
    "  --format F          jsonl, csv, tsv, dir or embeddings (default: from\n"
    "                      the name; a directory holding metadata/ is\n"
    "                      embeddings)\n"
    "  --embeddings DIR    the catalog is DIR in clip-retrieval's layout\n"
    "                      (img_emb/, text_emb/, metadata/), as `vlmdb embed\n"
    "                      --out` writes it: the vectors are stored as given\n"
    "  --model DIR         the model, if not where the database says\n"
    "  --json              print the summary as JSON\n"
    "  -q, --quiet         no progress display\n"
    "  --publish           build in DIR.tmp (made by `vlmdb init --db DIR\n"
    "                      --publish`) and rename it to DIR when the run\n"
    "                      ends with status 0; nothing to do when DIR exists\n"
    "  --tag-field F ...   then tag the items not tagged yet as `vlmdb tag`\n"
    "                      --field F --labels FILE [--template T]...\n"
    "                      [--score-field F] [--min-score S] does (its\n"
    "                      summary goes to stderr)\n"
    "  -h, --help          this help\n"
    "\n"
    "Exit status: 0, or 1 when rows failed and none is stored (by this run\n"
    "or an earlier one), the run was interrupted or failed, or --strict met\n"
    "a bad row; 2 for bad flags.\n"
    "\n"
    "example:\n"
    "  vlmdb ingest --db photos.vlm photos.jsonl --batch 64\n"
    "  (photos.jsonl: {\"key\": \"p1\", \"image\": \"img/p1.jpg\", \"text\": \"a red "
    "bike\",\n"
    "                 \"meta\": {\"category\": \"bikes\", \"year\": 2019}})\n";

/* ------------------------------------------------------------- state */

typedef struct {
  vlm_catalog_row row;   /* row.error set: skipped (and why) */
  int embed_image;       /* decode, preprocess, encode the image */
  int embed_text;        /* encode the text */
  int make_thumb;        /* decode the image for a thumbnail */
  int pixel_slot;        /* where its pixels go in the batch */
  const float *image_vec;/* the vectors to store */
  const float *text_vec;
  uint8_t *thumb;        /* made by a worker (else row.thumb is used) */
  size_t thumb_len;
  uint8_t *image_bytes;  /* the image file, with --keep-images */
  size_t image_len;
} ingest_item;

typedef enum {
  SLOT_FREE,
  SLOT_FILLING,   /* the reader is adding rows */
  SLOT_PREPARING, /* workers are decoding its images */
  SLOT_PREPARED,  /* waiting for the embedder */
  SLOT_EMBEDDED   /* waiting for the writer */
} slot_state;

typedef struct {
  slot_state state;
  long seq;
  ingest_item *items;
  int n;
  int ngood;       /* rows without an error when filled */
  int npixels;     /* pixel slots in use */
  int *prep;       /* indices of items the workers must prepare */
  int nprep, next_claim, nprepared;
  float *pixels;   /* batch_size * 3 * S * S */
  float *image_out;/* batch_size * dim */
  float *text_out;
  const char **texts; /* max_rows: the texts to encode, and their items */
  int *text_item;
} batch;

typedef struct {
  char **keys;
  long *lines;
  size_t cap, n;
} keyset;

typedef struct {
  /* configuration, fixed while the pipeline runs */
  const char *cmd;
  const char *catalog_path;
  int catalog_is_dir;
  vlm_db *db;
  const char *model_dir;
  vlm_clip *clip;         /* loaded when the first row needs it */
  int dim;
  size_t pixel_floats;    /* 3 * S * S */
  int batch_size, max_rows, nworkers;
  int nencoders;          /* concurrent single-threaded encode calls */
  unsigned put_flags;
  int strict;
  int keep_images;        /* store the image files' bytes too */
  uint8_t *slot_mine;     /* a shard: 1 for each hash slot it holds */

  pthread_mutex_t mu;
  pthread_cond_t cv;
  batch slots[NSLOTS];
  long next_fill, next_embed, next_write; /* batch sequence numbers */
  int reading_done;       /* no more batches will be filled */
  int writer_done;
  int stop;               /* everyone: leave now */
  int failed;             /* a fatal error ended the run */
  int strict_stopped;

  /* results; written by the writer (and the reader before it starts) */
  long rows_done, ingested;
  long keyless;           /* a shard's bad rows without a key */
  long skipped[VLM_SKIP_NREASONS];
  double model_load_s;    /* time spent loading the model, inside elapsed */
  vlm_progress progress;
  pthread_mutex_t report_mu;
  keyset seen;
} ingest;

/* Set by the signal handler, read by every stage: a lock-free atomic is
 * both async-signal-safe and race-free across threads. */
static atomic_int interrupted;

static void on_interrupt(int sig) {
  (void)sig;
  interrupted = 1;
}

/* ------------------------------------------------------------ key set */

static uint64_t hash_key(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* 1 and *line if key was seen, 0 after adding it, negative on error. */
static int keyset_add(keyset *ks, const char *key, long line, long *prev) {
  if (ks->n * 2 >= ks->cap) {
    size_t cap = ks->cap ? ks->cap * 2 : 1024;
    char **keys = calloc(cap, sizeof *keys);
    long *lines = calloc(cap, sizeof *lines);
    if (!keys || !lines) {
      free(keys);
      free(lines);
      return VLM_ENOMEM;
    }
    for (size_t i = 0; i < ks->cap; i++) {
      if (!ks->keys[i])
        continue;
      size_t j = hash_key(ks->keys[i]) & (cap - 1);
      while (keys[j])
        j = (j + 1) & (cap - 1);
      keys[j] = ks->keys[i];
      lines[j] = ks->lines[i];
    }
    free(ks->keys);
    free(ks->lines);
    ks->keys = keys;
    ks->lines = lines;
    ks->cap = cap;
  }
  size_t j = hash_key(key) & (ks->cap - 1);
  for (; ks->keys[j]; j = (j + 1) & (ks->cap - 1))
    if (!strcmp(ks->keys[j], key)) {
      *prev = ks->lines[j];
      return 1;
    }
  if (!(ks->keys[j] = strdup(key)))
    return VLM_ENOMEM;
  ks->lines[j] = line;
  ks->n++;
  return 0;
}

static void keyset_free(keyset *ks) {
  for (size_t i = 0; i < ks->cap; i++)
    free(ks->keys[i]);
  free(ks->keys);
  free(ks->lines);
}

/* ---------------------------------------------------------- reporting */

static void set_item_error(ingest_item *it, vlm_skip_reason reason,
                           const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_item_error(ingest_item *it, vlm_skip_reason reason,
                           const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(it->row.message, sizeof it->row.message, fmt, ap);
  va_end(ap);
  it->row.error = reason;
}

/* Print a skipped row: "CATALOG:LINE: REASON: key "K": message". */
static void report_row(ingest *ing, const vlm_catalog_row *row) {
  pthread_mutex_lock(&ing->report_mu);
  vlm_progress_finish(&ing->progress);
  if (ing->catalog_is_dir)
    fprintf(stderr, "vlmdb %s: %s/%s: %s: %s\n", ing->cmd, ing->catalog_path,
            row->key ? row->key : "?", vlm_skip_reason_name(row->error),
            row->message);
  else if (row->key)
    fprintf(stderr, "vlmdb %s: %s:%ld: %s: key \"%s\": %s\n", ing->cmd,
            ing->catalog_path, row->line, vlm_skip_reason_name(row->error),
            row->key, row->message);
  else
    fprintf(stderr, "vlmdb %s: %s:%ld: %s: %s\n", ing->cmd, ing->catalog_path,
            row->line, vlm_skip_reason_name(row->error), row->message);
  pthread_mutex_unlock(&ing->report_mu);
}

static void report_fatal(ingest *ing, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void report_fatal(ingest *ing, const char *fmt, ...) {
  va_list ap;
  pthread_mutex_lock(&ing->report_mu);
  vlm_progress_finish(&ing->progress);
  fprintf(stderr, "vlmdb %s: ", ing->cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  pthread_mutex_unlock(&ing->report_mu);
}

/* ------------------------------------------------------ decode worker */

static void prepare_item(ingest *ing, batch *b, ingest_item *it) {
  uint8_t *data = NULL;
  size_t len = 0;
  /* A row's kept bytes are its image: the file is not read. */
  if (it->row.kept) {
    data = it->row.kept;
    len = it->row.kept_len;
    it->row.kept = NULL;
    it->row.kept_len = 0;
    it->image_bytes = data; /* kept whatever becomes of the decode */
    it->image_len = len;
  }
  /* Regular files only: a FIFO, directory or device is refused like a
   * missing file, without waiting on it (vlm_file.h). */
  else if (vlm_read_file(it->row.image, VLM_MAX_IMAGE_FILE, &data, &len)) {
    /* With a precomputed vector the image only gives a thumbnail. */
    if (it->embed_image)
      set_item_error(it, VLM_SKIP_MISSING_FILE, "%s", vlm_errmsg());
    return;
  }
  vlm_image img = {0};
  const char *what = it->row.image ? it->row.image : "its \"kept_image\"";
  if (it->embed_image) {
    /* One decode gives the model's pixels and the thumbnail's image. */
    float *pixels = b->pixels + it->pixel_slot * ing->pixel_floats;
    int rc = it->make_thumb
                 ? vlm_clip_preprocess_image(ing->clip, data, len, pixels, &img)
                 : vlm_clip_preprocess(ing->clip, data, len, pixels);
    if (rc) {
      set_item_error(it, VLM_SKIP_CORRUPT_IMAGE, "%s: %s", what,
                     vlm_errmsg());
      goto done;
    }
  }
  if (it->make_thumb) {
    int rc = img.rgb ? vlm_image_thumbnail(&img, &it->thumb, &it->thumb_len)
                     : vlm_image_thumbnail_bytes(data, len, &it->thumb, &it->thumb_len);
    if (rc && it->embed_image)
      set_item_error(it, VLM_SKIP_CORRUPT_IMAGE, "%s: thumbnail: %s",
                     what, vlm_errmsg());
  }
done:
  vlm_image_free(&img);
  if (it->image_bytes) {
    /* the row's own kept bytes: clear_batch frees them */
  } else if (ing->keep_images && !it->row.error) {
    it->image_bytes = data; /* written with the item */
    it->image_len = len;
  } else {
    free(data);
  }
}

/* Decode workers run at a lower priority than the encoder: a batch is
 * done when its slowest slice is (embed_batch), so a decode thread taking
 * a slice's core delays the whole batch, while decoding needs only a few
 * percent of the CPU for a real model (and all of it, uncontended, when
 * the encoder is idle).  On Linux a thread's nice value is its own. */
#define WORKER_NICE 10

static void *worker_main(void *arg) {
  ingest *ing = arg;
  errno = 0;
  int nice_now = getpriority(PRIO_PROCESS, 0);
  if (errno == 0)
    setpriority(PRIO_PROCESS, (id_t)gettid(), nice_now + WORKER_NICE);
  pthread_mutex_lock(&ing->mu);
  while (!ing->stop) {
    batch *b = NULL;
    for (long s = ing->next_embed; s < ing->next_fill && !b; s++) {
      batch *c = &ing->slots[s % NSLOTS];
      if (c->state == SLOT_PREPARING && c->next_claim < c->nprep)
        b = c;
    }
    if (!b) {
      pthread_cond_wait(&ing->cv, &ing->mu);
      continue;
    }
    ingest_item *it = &b->items[b->prep[b->next_claim++]];
    pthread_mutex_unlock(&ing->mu);
    prepare_item(ing, b, it);
    pthread_mutex_lock(&ing->mu);
    if (++b->nprepared == b->nprep) {
      b->state = SLOT_PREPARED;
      pthread_cond_broadcast(&ing->cv);
    }
  }
  pthread_mutex_unlock(&ing->mu);
  return NULL;
}

/* ------------------------------------------------------------ embedder */

/* Encoding a batch data-parallel: the batch's images (and texts) are cut
 * into one slice per core and each slice is encoded by a single-threaded
 * call on its own thread (the model is loaded with one thread per call).
 * For a small model this is cheaper than one call splitting every layer
 * over the cores, which waits for its slowest thread a few dozen times
 * per image; for a large one it is as fast; and a core taken by another
 * process (or by a decode worker) delays only its own slice.  Slices are
 * equal, so they end together; the batch is the one wait. */
typedef struct {
  const vlm_clip *clip;
  const float *pixels;    /* images: n inputs of pixel_floats, or */
  const char **texts;     /* texts: n of them */
  int n;
  float *out;             /* n * dim */
  int rc;
} encode_slice;

static void *encode_slice_main(void *arg) {
  encode_slice *sl = arg;
  sl->rc = sl->pixels
               ? vlm_clip_encode_pixels(sl->clip, sl->pixels, sl->n, 0, sl->out)
               : vlm_clip_encode_texts(sl->clip, sl->texts, sl->n, 0, sl->out);
  return NULL;
}

/* Encode n inputs (pixels, or texts) into out[n * dim] in up to
 * ing->nencoders slices; 0, or the first slice's error.  A failed slice
 * leaves its outputs undefined; the caller retries one input at a time. */
static int encode_sliced(ingest *ing, const float *pixels, const char **texts,
                         int n, float *out) {
  encode_slice sl[MAX_THREADS];
  pthread_t th[MAX_THREADS];
  int started[MAX_THREADS];
  int k = n < ing->nencoders ? n : ing->nencoders;
  if (k < 1)
    return 0;
  int per = (n + k - 1) / k;
  k = (n + per - 1) / per;
  for (int i = 0; i < k; i++) {
    int first = i * per, m = n - first < per ? n - first : per;
    sl[i] = (encode_slice){.clip = ing->clip,
                           .pixels = pixels ? pixels + (size_t)first *
                                                           ing->pixel_floats
                                            : NULL,
                           .texts = pixels ? NULL : texts + first,
                           .n = m,
                           .out = out + (size_t)first * ing->dim};
    /* slice 0 runs here; so does any slice whose thread cannot start */
    started[i] = i > 0 && !pthread_create(&th[i], NULL, encode_slice_main,
                                          &sl[i]);
  }
  encode_slice_main(&sl[0]);
  for (int i = 1; i < k; i++) {
    if (started[i])
      pthread_join(th[i], NULL);
    else
      encode_slice_main(&sl[i]);
  }
  for (int i = 0; i < k; i++)
    if (sl[i].rc)
      return sl[i].rc;
  return 0;
}

static void embed_batch(ingest *ing, batch *b) {
  int dim = ing->dim;
  /* Images: close the gaps left by failed decodes, encode in one go. */
  int m = 0;
  for (int i = 0; i < b->n; i++) {
    ingest_item *it = &b->items[i];
    if (!it->embed_image || it->row.error)
      continue;
    if (it->pixel_slot != m)
      memmove(b->pixels + m * ing->pixel_floats,
              b->pixels + it->pixel_slot * ing->pixel_floats,
              ing->pixel_floats * sizeof(float));
    it->pixel_slot = m++;
  }
  if (m > 0 && encode_sliced(ing, b->pixels, NULL, m, b->image_out)) {
    /* Find the culprit one image at a time. */
    for (int i = 0; i < b->n; i++) {
      ingest_item *it = &b->items[i];
      if (it->embed_image && !it->row.error &&
          vlm_clip_encode_pixels(ing->clip,
                                 b->pixels + it->pixel_slot * ing->pixel_floats,
                                 1, 0, b->image_out + it->pixel_slot * dim))
        set_item_error(it, VLM_SKIP_CORRUPT_IMAGE, "encoding: %s",
                       vlm_errmsg());
    }
  }
  /* Texts: likewise. */
  const char **texts = b->texts;
  int *text_item = b->text_item;
  int t = 0;
  for (int i = 0; i < b->n; i++) {
    ingest_item *it = &b->items[i];
    if (it->embed_text && !it->row.error) {
      texts[t] = it->row.text;
      text_item[t++] = i;
    }
  }
  if (t > 0 && encode_sliced(ing, NULL, texts, t, b->text_out)) {
    for (int j = 0; j < t; j++)
      if (vlm_clip_encode_texts(ing->clip, &texts[j], 1, 0,
                                b->text_out + j * dim))
        set_item_error(&b->items[text_item[j]], VLM_SKIP_REJECTED,
                       "encoding the text: %s", vlm_errmsg());
  }
  for (int j = 0; j < t; j++)
    b->items[text_item[j]].text_vec = b->text_out + j * dim;
  for (int i = 0; i < b->n; i++) {
    ingest_item *it = &b->items[i];
    if (it->embed_image)
      it->image_vec = b->image_out + it->pixel_slot * dim;
    else
      it->image_vec = it->row.image_vec;
    if (!it->embed_text)
      it->text_vec = it->row.text_vec;
  }
}

static void *embedder_main(void *arg) {
  ingest *ing = arg;
  pthread_mutex_lock(&ing->mu);
  for (;;) {
    batch *b = &ing->slots[ing->next_embed % NSLOTS];
    while (!ing->stop &&
           !(b->state == SLOT_PREPARED && b->seq == ing->next_embed) &&
           !(ing->reading_done && ing->next_embed == ing->next_fill))
      pthread_cond_wait(&ing->cv, &ing->mu);
    if (ing->stop || (ing->reading_done && ing->next_embed == ing->next_fill))
      break;
    pthread_mutex_unlock(&ing->mu);
    embed_batch(ing, b);
    pthread_mutex_lock(&ing->mu);
    b->state = SLOT_EMBEDDED;
    ing->next_embed++;
    pthread_cond_broadcast(&ing->cv);
  }
  pthread_mutex_unlock(&ing->mu);
  return NULL;
}

/* -------------------------------------------------------------- writer */

/* Errors that concern one item (it is skipped) rather than the database
 * (the run stops). */
static int is_item_error(int rc) {
  return rc == VLM_EINVAL || rc == VLM_EFORMAT || rc == VLM_ENUMERIC ||
         rc == VLM_ETOOBIG || rc == VLM_EMISMATCH || rc == VLM_EEXISTS;
}

static void to_db_item(const ingest_item *it, vlm_item *out) {
  memset(out, 0, sizeof *out);
  out->key = it->row.key;
  out->image_vec = it->image_vec;
  out->text_vec = it->text_vec;
  out->caption = it->row.caption;
  out->source = it->row.source;
  out->thumb = it->thumb ? it->thumb : it->row.thumb;
  out->thumb_len = it->thumb ? it->thumb_len : it->row.thumb_len;
  out->meta_json = it->row.meta_json;
  out->image = it->image_bytes;
  out->image_len = it->image_len;
}

/* Write one batch; returns 0, or -1 when the run must stop. */
static int write_batch(ingest *ing, batch *b) {
  /* With --strict the first bad row ends the run: the good rows before it
   * are written, nothing after it is looked at. */
  int stop_at = -1;
  for (int i = 0; i < b->n && stop_at < 0; i++) {
    const vlm_catalog_row *row = &b->items[i].row;
    if (row->error == VLM_SKIP_NONE)
      continue;
    if (row->error != VLM_SKIP_EXISTS && row->error != VLM_SKIP_OTHER_SHARD) {
      if (!row->key && ing->slot_mine)
        ing->keyless++; /* every shard reports it: it is none's */
      report_row(ing, row);
      if (ing->strict)
        stop_at = i;
    }
    ing->skipped[row->error]++;
  }
  int end = b->n;
  if (stop_at >= 0) {
    ing->strict_stopped = 1;
    end = stop_at;
  }
  vlm_item *items = malloc((size_t)b->n * sizeof *items);
  int *which = malloc((size_t)b->n * sizeof *which);
  int m = 0, status = 0;
  if (!items || !which) {
    report_fatal(ing, "out of memory");
    status = -1;
    goto done;
  }
  for (int i = 0; i < end; i++)
    if (b->items[i].row.error == VLM_SKIP_NONE) {
      to_db_item(&b->items[i], &items[m]);
      which[m++] = i;
    }
  if (m == 0)
    goto done;
  int written = 0;
  int rc = vlm_db_put(ing->db, items, m, ing->put_flags, &written);
  if (rc == 0) {
    ing->ingested += written;
    ing->skipped[VLM_SKIP_EXISTS] += m - written; /* stored meanwhile */
  } else if (is_item_error(rc)) {
    /* The batch failed as a whole: find the items at fault. */
    for (int j = 0; j < m; j++) {
      rc = vlm_db_put(ing->db, &items[j], 1, ing->put_flags, &written);
      if (rc == 0) {
        ing->ingested += written;
        ing->skipped[VLM_SKIP_EXISTS] += 1 - written;
      } else if (is_item_error(rc)) {
        ingest_item *it = &b->items[which[j]];
        /* the library's message may already name the key */
        const char *msg = vlm_errmsg();
        char prefix[600];
        snprintf(prefix, sizeof prefix, "key \"%s\": ", items[j].key);
        if (!strncmp(msg, prefix, strlen(prefix)))
          msg += strlen(prefix);
        set_item_error(it, VLM_SKIP_REJECTED, "%s", msg);
        report_row(ing, &it->row);
        ing->skipped[VLM_SKIP_REJECTED]++;
        if (ing->strict) {
          ing->strict_stopped = 1;
          status = -1;
          goto done;
        }
      } else {
        report_fatal(ing, "writing key \"%s\": %s: %s", items[j].key,
                     vlm_strerror(rc), vlm_errmsg());
        status = -1;
        goto done;
      }
    }
  } else {
    report_fatal(ing, "writing a batch (rows from line %ld): %s: %s",
                 b->items[0].row.line, vlm_strerror(rc), vlm_errmsg());
    status = -1;
  }
done:
  free(items);
  free(which);
  return ing->strict_stopped ? -1 : status;
}

static void clear_batch(batch *b) {
  for (int i = 0; i < b->n; i++) {
    vlm_catalog_row_clear(&b->items[i].row);
    free(b->items[i].thumb);
    free(b->items[i].image_bytes);
  }
  memset(b->items, 0, (size_t)b->n * sizeof *b->items);
  b->n = b->ngood = b->npixels = 0;
  b->nprep = b->next_claim = b->nprepared = 0;
}

static void *writer_main(void *arg) {
  ingest *ing = arg;
  pthread_mutex_lock(&ing->mu);
  for (;;) {
    batch *b = &ing->slots[ing->next_write % NSLOTS];
    while (!ing->stop && !interrupted &&
           !(b->state == SLOT_EMBEDDED && b->seq == ing->next_write) &&
           !(ing->reading_done && ing->next_write == ing->next_fill)) {
      /* Wake up now and then to notice Ctrl-C. */
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_nsec += 100 * 1000 * 1000;
      if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
      }
      pthread_cond_timedwait(&ing->cv, &ing->mu, &until);
    }
    if (ing->stop || interrupted ||
        (ing->reading_done && ing->next_write == ing->next_fill))
      break;
    pthread_mutex_unlock(&ing->mu);
    int rc = write_batch(ing, b);
    if (!rc || ing->strict_stopped) { /* a failed batch is not progress */
      ing->rows_done += b->n;
      pthread_mutex_lock(&ing->report_mu);
      vlm_progress_update(&ing->progress, ing->rows_done);
      pthread_mutex_unlock(&ing->report_mu);
    }
    /* The rows are freed by the reader when it takes the slot again
     * (start_batch): the writer is the pipeline's slowest stage, and
     * memory is best freed by the thread that allocated it. */
    pthread_mutex_lock(&ing->mu);
    b->state = SLOT_FREE;
    ing->next_write++;
    if (rc) {
      ing->failed = !ing->strict_stopped;
      break;
    }
    pthread_cond_broadcast(&ing->cv);
  }
  /* Whatever is still in the pipeline is dropped: it was not
   * acknowledged, and a re-run picks it up. */
  if (interrupted || ing->failed || ing->strict_stopped)
    ing->stop = 1;
  ing->writer_done = 1;
  pthread_cond_broadcast(&ing->cv);
  pthread_mutex_unlock(&ing->mu);
  return NULL;
}

/* -------------------------------------------------------------- reader */

/* Wait for the next free slot and start filling it; NULL when stopping. */
static batch *start_batch(ingest *ing) {
  pthread_mutex_lock(&ing->mu);
  batch *b = &ing->slots[ing->next_fill % NSLOTS];
  while (!ing->stop && b->state != SLOT_FREE)
    pthread_cond_wait(&ing->cv, &ing->mu);
  if (ing->stop) {
    pthread_mutex_unlock(&ing->mu);
    return NULL;
  }
  b->state = SLOT_FILLING;
  b->seq = ing->next_fill++;
  pthread_mutex_unlock(&ing->mu);
  clear_batch(b); /* the rows of its last use (writer_main) */
  return b;
}

static void publish_batch(ingest *ing, batch *b) {
  b->nprep = 0;
  for (int i = 0; i < b->n; i++) {
    ingest_item *it = &b->items[i];
    if (!it->row.error && (it->embed_image || it->make_thumb))
      b->prep[b->nprep++] = i;
  }
  pthread_mutex_lock(&ing->mu);
  b->state = b->nprep ? SLOT_PREPARING : SLOT_PREPARED;
  pthread_cond_broadcast(&ing->cv);
  pthread_mutex_unlock(&ing->mu);
}

/* Decide what a good row needs; 0, or -1 when the run must stop. */
static int classify_row(ingest *ing, batch *b, ingest_item *it) {
  vlm_catalog_row *row = &it->row;
  long first_line;
  if (ing->slot_mine) {
    /* Every task of a sharded build reads the same catalog: rows of the
     * other shards are counted, not reported. */
    int slot = vlm_key_slot(row->key, strlen(row->key));
    if (!ing->slot_mine[slot]) {
      set_item_error(it, VLM_SKIP_OTHER_SHARD, "slot %d", slot);
      return 0;
    }
  }
  int rc = keyset_add(&ing->seen, row->key, row->line, &first_line);
  if (rc < 0) {
    report_fatal(ing, "out of memory");
    return -1;
  }
  if (rc == 1) {
    set_item_error(it, VLM_SKIP_DUPLICATE, "the key is also on %s %ld",
                   ing->catalog_is_dir ? "entry" : "line", first_line);
    return 0;
  }
  if (!(ing->put_flags & VLM_PUT_UPSERT)) {
    rc = vlm_db_exists(ing->db, row->key);
    if (rc < 0) {
      report_fatal(ing, "looking up key \"%s\": %s", row->key, vlm_errmsg());
      return -1;
    }
    if (rc == 1) {
      set_item_error(it, VLM_SKIP_EXISTS, "already stored");
      return 0;
    }
  }
  int local = row->image && row->image[0] == '/';
  if (row->image && !row->image_vec && !local && !row->kept) {
    set_item_error(it, VLM_SKIP_MISSING_FILE,
                   "%s: only local files can be read", row->image);
    return 0;
  }
  /* Kept bytes (an export's "kept_image") stand in for the file. */
  it->embed_image = (row->image || row->kept) && !row->image_vec;
  it->embed_text = row->text && !row->text_vec;
  it->make_thumb = (local || row->kept) && !row->thumb;
  if (row->kept && !it->embed_image && !it->make_thumb) {
    it->image_bytes = row->kept; /* stored as they are */
    it->image_len = row->kept_len;
    row->kept = NULL;
    row->kept_len = 0;
  }
  if ((it->embed_image || it->embed_text) && !ing->clip) {
    double t0 = vlm_now();
    /* one thread per call: embed_batch runs a call per core */
    if (vlm_cli_load_model(ing->cmd, ing->db, ing->model_dir, 1, &ing->clip))
      return -1;
    ing->model_load_s = vlm_now() - t0;
    ing->pixel_floats =
        (size_t)3 * vlm_clip_image_size(ing->clip) * vlm_clip_image_size(ing->clip);
  }
  if (it->embed_image) {
    if (!b->pixels) {
      b->pixels = malloc((size_t)ing->batch_size * ing->pixel_floats *
                         sizeof(float));
      if (!b->pixels) {
        report_fatal(ing, "out of memory for a batch of pixels");
        return -1;
      }
    }
    it->pixel_slot = b->npixels++;
  }
  b->ngood++;
  return 0;
}

/* Read the catalog into batches until it ends, the run stops or Ctrl-C.
 * Returns 0 or -1 (a fatal error, already reported). */
static int read_catalog(ingest *ing, vlm_catalog *cat) {
  batch *b = NULL;
  int status = 0;
  while (!interrupted) {
    if (!b && !(b = start_batch(ing)))
      break;
    ingest_item *it = &b->items[b->n];
    memset(it, 0, sizeof *it);
    int rc = vlm_catalog_next(cat, &it->row);
    if (rc <= 0)
      vlm_catalog_row_clear(&it->row);
    if (rc < 0) {
      report_fatal(ing, "reading %s: %s", ing->catalog_path, vlm_errmsg());
      status = -1;
      break;
    }
    if (rc == 0)
      break;
    b->n++;
    if (it->row.error && it->row.key && ing->slot_mine &&
        !ing->slot_mine[vlm_key_slot(it->row.key, strlen(it->row.key))]) {
      /* a bad row of another shard is that shard's to report */
      set_item_error(it, VLM_SKIP_OTHER_SHARD, "bad row of another shard");
    }
    if (!it->row.error && classify_row(ing, b, it)) {
      status = -1;
      break;
    }
    if (b->ngood == ing->batch_size || b->n == ing->max_rows) {
      publish_batch(ing, b);
      b = NULL;
    }
  }
  if (b && b->n > 0 && status == 0 && !interrupted) {
    publish_batch(ing, b);
  } else if (b) {
    /* Not published: give the slot back. */
    clear_batch(b);
    pthread_mutex_lock(&ing->mu);
    b->state = SLOT_FREE;
    ing->next_fill--;
    pthread_mutex_unlock(&ing->mu);
  }
  pthread_mutex_lock(&ing->mu);
  ing->reading_done = 1;
  if (status)
    ing->failed = 1;
  pthread_cond_broadcast(&ing->cv);
  pthread_mutex_unlock(&ing->mu);
  return status;
}

/* ------------------------------------------------------------- summary */

static void print_summary(ingest *ing, double elapsed, int as_json) {
  long skipped = 0;
  for (int r = 1; r < VLM_SKIP_NREASONS; r++)
    skipped += ing->skipped[r];
  double rate = elapsed > 0 ? (double)ing->ingested / elapsed : 0;
  const char *status = ing->failed           ? "failed"
                       : ing->strict_stopped ? "stopped"
                       : interrupted         ? "interrupted"
                                             : "done";
  if (as_json) {
    json_t *o = json_object(), *by = json_object();
    for (int r = 1; r < VLM_SKIP_NREASONS; r++)
      json_object_set_new(by, vlm_skip_reason_name(r),
                          json_integer(ing->skipped[r]));
    json_object_set_new(o, "status", json_string(status));
    json_object_set_new(o, "rows", json_integer(ing->rows_done));
    json_object_set_new(o, "ingested", json_integer(ing->ingested));
    json_object_set_new(o, "skipped", json_integer(skipped));
    json_object_set_new(o, "skipped_by_reason", by);
    json_object_set_new(o, "elapsed_s", json_real(elapsed));
    json_object_set_new(o, "items_per_s", json_real(rate));
    json_object_set_new(o, "model_load_s", json_real(ing->model_load_s));
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    if (s)
      printf("%s\n", s);
    free(s);
    json_decref(o);
    return;
  }
  printf("%s: ingested %ld of %ld rows in %.1f s (%.1f items/s)",
         status, ing->ingested, ing->rows_done, elapsed, rate);
  if (skipped) {
    printf("; skipped %ld:", skipped);
    int first = 1;
    for (int r = 1; r < VLM_SKIP_NREASONS; r++)
      if (ing->skipped[r]) {
        printf("%s %s %ld", first ? "" : ",", vlm_skip_reason_name(r),
               ing->skipped[r]);
        first = 0;
      }
  }
  printf("\n");
}

/* ---------------------------------------------------------------- main */

static int parse_format(const char *s, vlm_catalog_format *out) {
  static const struct {
    const char *name;
    vlm_catalog_format format;
  } formats[] = {{"jsonl", VLM_CATALOG_JSONL},
                 {"csv", VLM_CATALOG_CSV},
                 {"tsv", VLM_CATALOG_TSV},
                 {"dir", VLM_CATALOG_DIR},
                 {"embeddings", VLM_CATALOG_EMBEDDINGS}};
  for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
    if (!strcmp(s, formats[i].name)) {
      *out = formats[i].format;
      return 0;
    }
  return -1;
}

static int setup_slots(ingest *ing) {
  for (int s = 0; s < NSLOTS; s++) {
    batch *b = &ing->slots[s];
    b->items = calloc((size_t)ing->max_rows, sizeof *b->items);
    b->prep = calloc((size_t)ing->max_rows, sizeof *b->prep);
    b->image_out = malloc((size_t)ing->batch_size * ing->dim * sizeof(float));
    b->text_out = malloc((size_t)ing->batch_size * ing->dim * sizeof(float));
    b->texts = calloc((size_t)ing->max_rows, sizeof *b->texts);
    b->text_item = calloc((size_t)ing->max_rows, sizeof *b->text_item);
    if (!b->items || !b->prep || !b->image_out || !b->text_out || !b->texts ||
        !b->text_item)
      return -1;
  }
  return 0;
}

static void free_slots(ingest *ing) {
  for (int s = 0; s < NSLOTS; s++) {
    batch *b = &ing->slots[s];
    if (b->items)
      clear_batch(b);
    free(b->items);
    free(b->prep);
    free(b->pixels);
    free(b->image_out);
    free(b->text_out);
    free(b->texts);
    free(b->text_item);
  }
}

int cmd_ingest(int argc, char **argv) {
  const char *cmd = "ingest", *db_dir = NULL, *images_root = NULL;
  ingest ing;
  memset(&ing, 0, sizeof ing);
  ing.cmd = cmd;
  long batch_size = 32, threads = sysconf(_SC_NPROCESSORS_ONLN);
  int batch_given = 0;
  int as_json = 0, quiet = 0, publish = 0;
  const char *embeddings = NULL;
  char tmp_dir[PATH_MAX];
  const char *final_dir = NULL;
  vlm_catalog_format format = VLM_CATALOG_AUTO;
  vlm_cli_tag_options tag = {0};
  const char *tag_labels = NULL, *templates[VLM_CLI_TAG_MAX_TEMPLATES];
  int ntemplates = 0;
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"images-root", required_argument, NULL, 'r'},
      {"batch", required_argument, NULL, 'b'},
      {"threads", required_argument, NULL, 't'},
      {"upsert", no_argument, NULL, 'u'},
      {"keep-images", no_argument, NULL, 'K'},
      {"strict", no_argument, NULL, 's'},
      {"format", required_argument, NULL, 'f'},
      {"model", required_argument, NULL, 'm'},
      {"json", no_argument, NULL, 'j'},
      {"quiet", no_argument, NULL, 'q'},
      {"publish", no_argument, NULL, 'P'},
      {"embeddings", required_argument, NULL, 'E'},
      {"tag-field", required_argument, NULL, 'F'},
      {"tag-labels", required_argument, NULL, 'L'},
      {"tag-template", required_argument, NULL, 'T'},
      {"tag-score-field", required_argument, NULL, 'S'},
      {"tag-min-score", required_argument, NULL, 'M'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "qh", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': db_dir = optarg; break;
    case 'r': images_root = optarg; break;
    case 'b':
      batch_given = 1;
      if (vlm_cli_parse_long(cmd, "--batch", optarg, 1, MAX_BATCH,
                             &batch_size))
        return VLM_EXIT_USAGE;
      break;
    case 't':
      if (vlm_cli_parse_long(cmd, "--threads", optarg, 1, MAX_THREADS,
                             &threads))
        return VLM_EXIT_USAGE;
      break;
    case 'u': ing.put_flags |= VLM_PUT_UPSERT; break;
    case 'K': ing.keep_images = 1; break;
    case 's': ing.strict = 1; break;
    case 'f':
      if (parse_format(optarg, &format))
        return vlm_cli_usage_error(cmd, "--format is jsonl, csv, tsv or dir");
      break;
    case 'm': ing.model_dir = optarg; break;
    case 'j': as_json = 1; break;
    case 'q': quiet = 1; break;
    case 'P': publish = 1; break;
    case 'E':
      embeddings = optarg;
      format = VLM_CATALOG_EMBEDDINGS;
      break;
    case 'F': tag.field = optarg; break;
    case 'L': tag_labels = optarg; break;
    case 'T':
      if (ntemplates == VLM_CLI_TAG_MAX_TEMPLATES)
        return vlm_cli_usage_error(cmd, "at most %d --tag-template",
                                   VLM_CLI_TAG_MAX_TEMPLATES);
      templates[ntemplates++] = optarg;
      break;
    case 'S': tag.score_field = optarg; break;
    case 'M': {
      char *end;
      tag.min_score = strtod(optarg, &end);
      if (end == optarg || *end || !(tag.min_score >= 0 && tag.min_score <= 1))
        return vlm_cli_usage_error(cmd, "--tag-min-score: '%s' is not a "
                                        "number in [0, 1]", optarg);
      break;
    }
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: fputs(usage, stderr); return VLM_EXIT_USAGE;
    }
  }
  if (!db_dir)
    return vlm_cli_usage_error(cmd, "--db DIR is required");
  if (optind + !embeddings != argc)
    return vlm_cli_usage_error(cmd, embeddings ? "--embeddings DIR is the "
                               "catalog: give no other" : "give exactly one "
                               "CATALOG");
  if (publish) {
    /* DIR.tmp is the database; DIR appears when it is complete. */
    if (vlm_cli_publish_tmp(cmd, db_dir, tmp_dir, sizeof tmp_dir))
      return VLM_EXIT_USAGE;
    int have_dir = vlm_cli_exists(db_dir), have_tmp = vlm_cli_exists(tmp_dir);
    if (have_dir && have_tmp) {
      vlm_cli_error(cmd, "both %s and %s exist: remove the one that is not "
                    "wanted", db_dir, tmp_dir);
      return VLM_EXIT_RUNTIME;
    }
    if (have_dir) {
      fprintf(stderr, "vlmdb %s: %s is published already: nothing to do\n",
              cmd, db_dir);
      return VLM_EXIT_OK;
    }
    if (!have_tmp) {
      vlm_cli_error(cmd, "%s does not exist: make it with `vlmdb init --db "
                    "%s --publish ...` first", tmp_dir, db_dir);
      return VLM_EXIT_RUNTIME;
    }
    final_dir = db_dir;
    db_dir = tmp_dir;
  }
  if (!tag.field != !tag_labels)
    return vlm_cli_usage_error(cmd, "--tag-field and --tag-labels go "
                                    "together");
  if (tag_labels) {
    int trc = vlm_cli_tag_read_labels(tag_labels, &tag);
    if (trc) {
      vlm_cli_tag_options_free(&tag);
      return vlm_cli_usage_error(cmd, "%s", vlm_errmsg());
    }
    tag.templates = templates;
    tag.ntemplates = ntemplates;
    tag.quiet = quiet;
  }
  if (threads < 1)
    threads = 1;
  ing.catalog_path = embeddings ? embeddings : argv[optind];
  ing.batch_size = (int)batch_size;
  ing.max_rows = (int)batch_size * ROWS_PER_GOOD;
  ing.nworkers = (int)threads;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  ing.nencoders = ncpu < 1 ? 1 : ncpu > MAX_THREADS ? MAX_THREADS : (int)ncpu;

  int status = VLM_EXIT_RUNTIME;
  vlm_catalog *cat = NULL;
  pthread_t workers[MAX_THREADS], embedder, writer;
  int nstarted = 0, embedder_started = 0, writer_started = 0;
  struct sigaction old_int, old_term;
  int handlers_set = 0;
  pthread_mutex_init(&ing.mu, NULL);
  pthread_cond_init(&ing.cv, NULL);
  pthread_mutex_init(&ing.report_mu, NULL);

  if (vlm_cli_open_db(cmd, db_dir, 0, &ing.db))
    goto done;
  vlm_db_info info;
  int rc = vlm_db_stat(ing.db, &info);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  ing.dim = info.dim;
  if (info.keep_images) {
    ing.keep_images = 1;
  } else if (ing.keep_images && !quiet) {
    fprintf(stderr, "vlmdb %s: note: this run keeps its images, but %s does "
            "not keep images for other writes (the server's ADD): `vlmdb "
            "config --db %s --keep-images on` makes it\n", cmd,
            final_dir ? final_dir : db_dir, final_dir ? final_dir : db_dir);
  }
  if (info.shard >= 0) {
    if (!(ing.slot_mine = calloc(VLM_SLOTS, 1))) {
      vlm_cli_error(cmd, "out of memory");
      goto done;
    }
    for (int r = 0; r < info.nslot_ranges; r++)
      memset(ing.slot_mine + info.slot_ranges[r].first, 1,
             (size_t)(info.slot_ranges[r].last - info.slot_ranges[r].first +
                      1));
  }
  vlm_field fields[64];
  for (int i = 0; i < info.nfields; i++) {
    fields[i].name = info.field_names[i];
    fields[i].type = info.field_types[i];
  }
  vlm_catalog_options copts = {.format = format,
                               .images_root = images_root,
                               .fields = fields,
                               .nfields = info.nfields,
                               .dim = info.dim};
  rc = vlm_catalog_open(ing.catalog_path, &copts, &cat);
  if (rc) {
    vlm_cli_error(cmd, "%s", vlm_errmsg());
    goto done;
  }
  ing.catalog_is_dir = vlm_catalog_get_format(cat) == VLM_CATALOG_DIR;
  if (!batch_given && vlm_catalog_get_format(cat) == VLM_CATALOG_EMBEDDINGS) {
    /* Nothing to embed, and each batch costs a durable commit (fsyncs):
     * bench/ingest, 50,000 items, load 2.7: 3,889 items/s in batches of
     * 32, 62,555 in batches of 4,096. */
    ing.batch_size = EMB_BATCH;
    ing.max_rows = EMB_BATCH * ROWS_PER_GOOD;
  }
  if (setup_slots(&ing)) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }

  interrupted = 0;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_interrupt;
  sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C kills at once */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  handlers_set = 1;

  vlm_progress_init(&ing.progress, stderr, cmd, vlm_catalog_count(cat));
  ing.progress.quiet |= quiet;

  for (; nstarted < ing.nworkers; nstarted++)
    if (pthread_create(&workers[nstarted], NULL, worker_main, &ing))
      break;
  embedder_started = !pthread_create(&embedder, NULL, embedder_main, &ing);
  writer_started = !pthread_create(&writer, NULL, writer_main, &ing);
  if (nstarted == 0 || !embedder_started || !writer_started) {
    vlm_cli_error(cmd, "cannot start threads");
    ing.failed = 1;
  } else {
    read_catalog(&ing, cat);
  }

  /* Wait for the writer to drain the pipeline (or to stop it). */
  pthread_mutex_lock(&ing.mu);
  while (writer_started && !ing.writer_done)
    pthread_cond_wait(&ing.cv, &ing.mu);
  ing.stop = 1;
  pthread_cond_broadcast(&ing.cv);
  pthread_mutex_unlock(&ing.mu);
  for (int i = 0; i < nstarted; i++)
    pthread_join(workers[i], NULL);
  if (embedder_started)
    pthread_join(embedder, NULL);
  if (writer_started)
    pthread_join(writer, NULL);

  double elapsed = vlm_progress_elapsed(&ing.progress);
  vlm_progress_finish(&ing.progress);
  print_summary(&ing, elapsed, as_json);
  fflush(stdout);
  if (interrupted)
    vlm_cli_error(cmd, "interrupted; everything acknowledged is stored, "
                       "run the same command again to resume");
  if (ing.strict_stopped)
    vlm_cli_error(cmd, "stopped at the first bad row (--strict); the rows "
                       "before it are stored, none after it");
  long errors = 0;
  for (int r = 1; r < VLM_SKIP_NREASONS; r++)
    if (r != VLM_SKIP_EXISTS && r != VLM_SKIP_OTHER_SHARD)
      errors += ing.skipped[r];
  /* "Nothing could be ingested": no row is stored now, neither by this
   * run nor by an earlier one, and some failed.  A shard's failures are
   * its own rows' (a row without a key is every shard's to report, and
   * a shard may hold no row of the catalog). */
  errors -= ing.keyless;
  if (ing.failed || ing.strict_stopped || interrupted ||
      (ing.ingested + ing.skipped[VLM_SKIP_EXISTS] == 0 && errors > 0))
    status = VLM_EXIT_RUNTIME;
  else
    status = VLM_EXIT_OK;
  if (status == VLM_EXIT_OK && tag.field) {
    vlm_cli_tag_result tres;
    if ((!ing.clip && vlm_cli_load_model(cmd, ing.db, ing.model_dir, 0,
                                         &ing.clip)) ||
        (rc = vlm_cli_tag_run(ing.db, ing.clip, &tag, &tres))) {
      if (ing.clip)
        vlm_cli_liberror(cmd, rc);
      status = VLM_EXIT_RUNTIME;
    } else {
      fprintf(stderr, "tag: %ld items tagged, %ld below --tag-min-score, "
                      "%ld already tagged\n",
              tres.tagged, tres.uncertain, tres.already);
    }
  }
  if (status == VLM_EXIT_OK && final_dir) {
    /* closed (checkpointed) first: the renamed directory is whole */
    vlm_db_close(ing.db);
    ing.db = NULL;
    if (vlm_cli_publish(cmd, db_dir, final_dir))
      status = VLM_EXIT_RUNTIME;
    else
      fprintf(stderr, "vlmdb %s: published %s\n", cmd, final_dir);
  }
done:
  vlm_cli_tag_options_free(&tag);
  if (handlers_set) {
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
  }
  vlm_catalog_close(cat);
  free_slots(&ing);
  keyset_free(&ing.seen);
  free(ing.slot_mine);
  vlm_clip_free(ing.clip);
  vlm_db_close(ing.db);
  pthread_mutex_destroy(&ing.mu);
  pthread_cond_destroy(&ing.cv);
  pthread_mutex_destroy(&ing.report_mu);
  return status;
}
