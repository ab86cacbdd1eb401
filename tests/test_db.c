/* test_db.c - the database: CRUD across the three stores, every search
 * target against a brute-force oracle, reopen, reindex, training, refusals,
 * bad input, full disk, filters (against a naive scan) and their
 * injection attempts, hybrid search, recovery, the kill -9 crash test and
 * concurrent readers with a writer.
 *
 * VLM_TEST_ONLY=<substring> runs only the tests whose names contain it;
 * under `make tsan` (VLM_TSAN=1) only the concurrency tests run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers/crash_model.h"
#include "util/util.h"
#include "vlm_error.h"
#include "vlm_eval.h"
#include "vlm_index.h"
#include "vlmdb.h"
#include <jansson.h>
#include <lmdb.h>

/* db/sqlvfs.c: meta.sqlite's page checksums.  A test that edits the file
 * on purpose goes through it, as vlmdb does, so that only what it meant to
 * change changes. */
const char *vlm__sql_vfs(void);

static int sql_open_rw(const char *path, sqlite3 **s) {
  return sqlite3_open_v2(path, s, SQLITE_OPEN_READWRITE, vlm__sql_vfs());
}

#define DIM 16

/* ------------------------------------------------------------ helpers */

#define CHECK VLM_CHECK
#define EXPECT_ERR VLM_EXPECT_ERR

static uint64_t rng_state = 1;

static uint64_t rng_next(void) { return vlm_test_splitmix64(&rng_state); }

static double rng_uniform(void) { return vlm_test_uniform(&rng_state); }

static void unit(float *x, int d) {
  double ss = 0;
  for (int i = 0; i < d; i++) {
    x[i] = (float)(rng_uniform() * 2 - 1);
    ss += (double)x[i] * x[i];
  }
  float inv = (float)(1.0 / sqrt(ss));
  for (int i = 0; i < d; i++)
    x[i] *= inv;
}

static void unit_normalize(float *x, int d) {
  double ss = 0;
  for (int i = 0; i < d; i++)
    ss += (double)x[i] * x[i];
  float inv = (float)(1.0 / sqrt(ss));
  for (int i = 0; i < d; i++)
    x[i] *= inv;
}

static float dot(const float *a, const float *b, int d) {
  double s = 0;
  for (int i = 0; i < d; i++)
    s += (double)a[i] * b[i];
  return (float)s;
}

static void rm_rf(const char *path) { vlm_test_rm_rf(path); }

typedef struct {
  char root[64]; /* mkdtemp dir */
  char dir[96];  /* the database inside it */
} tmp;

/* Temp dirs of the running test, removed by teardown even when the test
 * fails half-way (a failure longjmps out of the test function). */
static char live_roots[8][64];

static void tmp_make(tmp *t) {
  strcpy(t->root, "/tmp/vlmdb-test-XXXXXX");
  assert_non_null(mkdtemp(t->root));
  snprintf(t->dir, sizeof t->dir, "%s/db", t->root);
  for (int i = 0; i < 8; i++)
    if (!live_roots[i][0]) {
      strcpy(live_roots[i], t->root);
      break;
    }
}

static void tmp_free(tmp *t) {
  rm_rf(t->root);
  for (int i = 0; i < 8; i++)
    if (!strcmp(live_roots[i], t->root))
      live_roots[i][0] = '\0';
}

static int teardown_tmp(void **state) {
  (void)state;
  for (int i = 0; i < 8; i++)
    if (live_roots[i][0]) {
      umount2(live_roots[i], MNT_DETACH); /* no-op unless a mount is left */
      char mnt[96];
      snprintf(mnt, sizeof mnt, "%s/mnt", live_roots[i]);
      umount2(mnt, MNT_DETACH);
      rm_rf(live_roots[i]);
      live_roots[i][0] = '\0';
    }
  return 0;
}

static vlm_field fields3[] = {{"category", VLM_FIELD_TEXT},
                              {"year", VLM_FIELD_INT},
                              {"price", VLM_FIELD_REAL}};

static vlm_db *make_db(const char *dir, const char *factory, int dim) {
  vlm_db_config c = {0};
  vlm_db *db = NULL;
  c.dim = dim;
  c.index_factory = factory;
  c.model_id = "test-model";
  c.model_dir = "/nowhere";
  c.fields = fields3;
  c.nfields = 3;
  CHECK(vlm_db_create(dir, &c, &db));
  return db;
}

static int warnings;
static char last_warning[1024];

static void count_warning(void *arg, const char *msg) {
  (void)arg;
  warnings++;
  snprintf(last_warning, sizeof last_warning, "%s", msg);
}

static vlm_db *open_db(const char *dir) {
  vlm_db_open_options o = {0};
  vlm_db *db = NULL;
  o.warn = count_warning;
  CHECK(vlm_db_open(dir, &o, &db));
  return db;
}

/* A test corpus: n items with image and/or text vectors and metadata. */
typedef struct {
  int n, dim;
  char (*key)[32];
  float *img, *txt;   /* n * dim */
  int *has_img, *has_txt;
  char (*caption)[64];
  char (*meta)[128];
  char (*category)[16];
  int *year;
  double *price;
} corpus;

static const char *categories[] = {"animals", "plants", "cars", "food",
                                   "art"};
static const char *words[] = {"cat", "dog", "tree", "red", "car", "apple",
                              "river", "house"};

static void corpus_make(corpus *c, int n, int dim, uint64_t seed) {
  rng_state = seed;
  c->n = n;
  c->dim = dim;
  c->key = calloc((size_t)n, sizeof *c->key);
  c->img = calloc((size_t)n * dim, sizeof(float));
  c->txt = calloc((size_t)n * dim, sizeof(float));
  c->has_img = calloc((size_t)n, sizeof(int));
  c->has_txt = calloc((size_t)n, sizeof(int));
  c->caption = calloc((size_t)n, sizeof *c->caption);
  c->meta = calloc((size_t)n, sizeof *c->meta);
  c->category = calloc((size_t)n, sizeof *c->category);
  c->year = calloc((size_t)n, sizeof(int));
  c->price = calloc((size_t)n, sizeof(double));
  for (int i = 0; i < n; i++) {
    snprintf(c->key[i], sizeof c->key[i], "item-%05d", i);
    int kind = (int)(rng_next() % 4); /* 0 image, 1 text, 2-3 both */
    c->has_img[i] = kind != 1;
    c->has_txt[i] = kind != 0;
    unit(c->img + (size_t)i * dim, dim);
    unit(c->txt + (size_t)i * dim, dim);
    snprintf(c->caption[i], sizeof c->caption[i], "a %s and a %s",
             words[rng_next() % 8], words[rng_next() % 8]);
    snprintf(c->category[i], sizeof c->category[i], "%s",
             categories[rng_next() % 5]);
    c->year[i] = 1990 + (int)(rng_next() % 35);
    c->price[i] = (double)(rng_next() % 10000) / 100.0;
    snprintf(c->meta[i], sizeof c->meta[i],
             "{\"category\": \"%s\", \"year\": %d, \"price\": %.2f, "
             "\"extra\": [1, 2]}",
             c->category[i], c->year[i], c->price[i]);
  }
}

static void corpus_free(corpus *c) {
  free(c->key), free(c->img), free(c->txt), free(c->has_img);
  free(c->has_txt), free(c->caption), free(c->meta), free(c->category);
  free(c->year), free(c->price);
}

static vlm_item corpus_item(const corpus *c, int i) {
  vlm_item it = {0};
  it.key = c->key[i];
  it.image_vec = c->has_img[i] ? c->img + (size_t)i * c->dim : NULL;
  it.text_vec = c->has_txt[i] ? c->txt + (size_t)i * c->dim : NULL;
  it.caption = c->caption[i];
  it.meta_json = c->meta[i];
  return it;
}

static void corpus_put(vlm_db *db, const corpus *c, int from, int to,
                       int batch) {
  vlm_item *items = calloc((size_t)batch, sizeof *items);
  for (int i = from; i < to; i += batch) {
    int n = 0;
    for (int j = i; j < to && j < i + batch; j++)
      items[n++] = corpus_item(c, j);
    int written = -1;
    CHECK(vlm_db_put(db, items, n, 0, &written));
    assert_int_equal(written, n);
  }
  free(items);
}

/* Brute-force oracle: best score per item over the target modalities,
 * restricted to items i with alive[i] and allowed(i). */
typedef int (*pred_fn)(const corpus *c, int i);

typedef struct {
  int i;
  float score;
} scored;

/* Keep top[0..m) the best (at most 10) scores seen, best first; the new
 * count. */
static int top10_push(scored *top, int m, int i, float sc) {
  if (m == 10 && sc <= top[9].score)
    return m;
  int j = m < 10 ? m++ : 9;
  while (j > 0 && top[j - 1].score < sc) {
    top[j] = top[j - 1];
    j--;
  }
  top[j].i = i, top[j].score = sc;
  return m;
}

/* How many of top[0..m) are among the hits (keys: a letter, then i). */
static int top10_found(const scored *top, int m, const vlm_hit *hits,
                       int nh) {
  int found = 0;
  for (int a = 0; a < m; a++)
    for (int h = 0; h < nh; h++)
      if (atoi(hits[h].key + 1) == top[a].i) {
        found++;
        break;
      }
  return found;
}

static int scored_desc(const void *a, const void *b) {
  const scored *x = a, *y = b;
  return x->score < y->score ? 1 : x->score > y->score ? -1 : x->i - y->i;
}

static int oracle(const corpus *c, const int *alive, pred_fn pred,
                  const float *q, vlm_target target, scored *out) {
  int n = 0;
  for (int i = 0; i < c->n; i++) {
    if ((alive && !alive[i]) || (pred && !pred(c, i)))
      continue;
    float best = -INFINITY;
    if (c->has_img[i] && target != VLM_TARGET_TEXT)
      best = fmaxf(best, dot(q, c->img + (size_t)i * c->dim, c->dim));
    if (c->has_txt[i] && target != VLM_TARGET_IMAGE)
      best = fmaxf(best, dot(q, c->txt + (size_t)i * c->dim, c->dim));
    if (best == -INFINITY)
      continue;
    out[n].i = i;
    out[n++].score = best;
  }
  qsort(out, (size_t)n, sizeof *out, scored_desc);
  return n;
}

static int key_index(const char *key) {
  int i;
  if (sscanf(key, "item-%d", &i) != 1)
    return -1;
  return i;
}

/* Exact search must equal the oracle: same keys in the same order (ties
 * aside) and the same scores. */
static void expect_same_as_oracle(const corpus *c, const vlm_hit *hits,
                                  int nhits, const scored *want, int nwant,
                                  int k) {
  int expect = nwant < k ? nwant : k;
  if (nhits != expect)
    fail_msg("got %d hits, oracle has %d", nhits, expect);
  for (int r = 0; r < nhits; r++) {
    if (fabsf(hits[r].score - want[r].score) > 1e-4f)
      fail_msg("rank %d: score %f (key %s), oracle %f (key %s)", r,
               hits[r].score, hits[r].key, want[r].score,
               c->key[want[r].i]);
    if (strcmp(hits[r].key, c->key[want[r].i]) &&
        fabsf(want[r].score - (r + 1 < nwant ? want[r + 1].score : -9)) >
            1e-5f &&
        (r == 0 || fabsf(want[r].score - want[r - 1].score) > 1e-5f))
      fail_msg("rank %d: key %s, oracle %s (score %f)", r, hits[r].key,
               c->key[want[r].i], want[r].score);
  }
}

/* recall@k of hits against the oracle's top k */
static double recall_at(const corpus *c, const vlm_hit *hits, int nhits,
                        const scored *want, int nwant, int k) {
  int expect = nwant < k ? nwant : k, found = 0;
  if (expect == 0)
    return 1.0;
  for (int r = 0; r < expect; r++)
    for (int h = 0; h < nhits; h++)
      if (!strcmp(hits[h].key, c->key[want[r].i])) {
        found++;
        break;
      }
  return (double)found / expect;
}

/* ------------------------------------------------------------ CRUD */

static void test_put_get_exact_payload(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  float a[DIM], b[DIM];
  unit(a, DIM);
  unit(b, DIM);
  unsigned char thumb[300];
  thumb[0] = 0xff, thumb[1] = 0xd8, thumb[2] = 0xff;
  for (int i = 3; i < 300; i++)
    thumb[i] = (unsigned char)(i * 31);
  vlm_item items[3] = {{0}};
  items[0].key = "both";
  items[0].image_vec = a;
  items[0].text_vec = b;
  items[0].caption = "a red car on a bridge";
  items[0].source = "file:///photos/car.jpg";
  items[0].thumb = thumb;
  items[0].thumb_len = sizeof thumb;
  items[0].meta_json = "{\"category\": \"cars\", \"year\": 2007, "
                       "\"price\": 12.5, \"colour\": \"red\"}";
  items[1].key = "image-only";
  items[1].image_vec = b;
  items[2].key = "ключ-テキスト"; /* unicode key, text only */
  items[2].text_vec = a;
  items[2].caption = "";
  int written = -1;
  CHECK(vlm_db_put(db, items, 3, 0, &written));
  assert_int_equal(written, 3);

  vlm_record *r = NULL;
  CHECK(vlm_db_get(db, "both", &r));
  assert_string_equal(r->key, "both");
  assert_int_equal(r->dim, DIM);
  assert_memory_equal(r->image_vec, a, sizeof a);
  assert_memory_equal(r->text_vec, b, sizeof b);
  assert_string_equal(r->caption, "a red car on a bridge");
  assert_string_equal(r->source, "file:///photos/car.jpg");
  assert_int_equal(r->thumb_len, sizeof thumb);
  assert_memory_equal(r->thumb, thumb, sizeof thumb);
  assert_string_equal(r->meta_json, items[0].meta_json);
  vlm_record_free(r);

  CHECK(vlm_db_get(db, "image-only", &r));
  assert_memory_equal(r->image_vec, b, sizeof b);
  assert_null(r->text_vec);
  assert_null(r->caption);
  assert_null(r->source);
  assert_null(r->thumb);
  assert_string_equal(r->meta_json, "{}");
  vlm_record_free(r);

  CHECK(vlm_db_get(db, "ключ-テキスト", &r));
  assert_null(r->image_vec);
  assert_memory_equal(r->text_vec, a, sizeof a);
  assert_non_null(r->caption);
  assert_string_equal(r->caption, "");
  vlm_record_free(r);

  EXPECT_ERR(VLM_ENOTFOUND, vlm_db_get(db, "missing", &r));
  assert_null(r);
  assert_int_equal(vlm_db_exists(db, "both"), 1);
  assert_int_equal(vlm_db_exists(db, "missing"), 0);

  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.items, 3);
  assert_int_equal(info.image_vectors, 2);
  assert_int_equal(info.text_vectors, 2);
  assert_int_equal(info.index_vectors, 4);
  assert_int_equal(info.dim, DIM);
  assert_string_equal(info.index_factory, "Flat");
  assert_string_equal(info.model_id, "test-model");
  assert_int_equal(info.nfields, 3);
  assert_string_equal(info.field_names[1], "year");
  assert_int_equal(info.field_types[1], VLM_FIELD_INT);
  CHECK(vlm_db_verify(db));

  /* A non-unit vector is stored normalized. */
  float big[DIM];
  for (int i = 0; i < DIM; i++)
    big[i] = a[i] * 3.0f;
  vlm_item nu = {0};
  nu.key = "scaled";
  nu.image_vec = big;
  CHECK(vlm_db_put(db, &nu, 1, 0, NULL));
  CHECK(vlm_db_get(db, "scaled", &r));
  for (int i = 0; i < DIM; i++)
    assert_float_equal(r->image_vec[i], a[i], 1e-6);
  vlm_record_free(r);
  vlm_db_close(db);
  tmp_free(&t);
}

/* Kept image bytes (vlm_item.image): stored bit for bit under the
 * record's checksum, kept by an update that does not name them, replaced
 * by one that does, gone with the item, copied by salvage; a flipped byte
 * in them is caught.  Then the writer lock without an open, and the atomic
 * swap of two directories. */
static void test_kept_image_bytes_lock_and_exchange(void **state) {
  (void)state;
  int rc;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  float a[DIM];
  unit(a, DIM);
  size_t big = 300000; /* spans overflow pages */
  uint8_t *bytes = malloc(big);
  assert_non_null(bytes);
  for (size_t i = 0; i < big; i++)
    bytes[i] = (uint8_t)(rng_next() >> 56);
  vlm_item items[2] = {{0}};
  items[0].key = "kept";
  items[0].image_vec = a;
  items[0].caption = "a picture whose file may go";
  items[0].image = bytes;
  items[0].image_len = big;
  items[0].meta_json = "{\"category\": \"cars\"}";
  items[1].key = "plain";
  items[1].image_vec = a;
  CHECK(vlm_db_put(db, items, 2, 0, NULL));
  uint8_t *got = NULL;
  size_t len = 0;
  CHECK(vlm_db_get_image(db, "kept", &got, &len));
  assert_int_equal(len, big);
  assert_memory_equal(got, bytes, big);
  free(got);
  CHECK(vlm_db_get_image(db, "plain", &got, &len));
  assert_null(got);
  assert_int_equal(len, 0);
  EXPECT_ERR(VLM_ENOTFOUND, vlm_db_get_image(db, "absent", &got, &len));
  vlm_record *r = NULL;
  CHECK(vlm_db_get(db, "kept", &r));
  assert_int_equal(r->image_len, big);
  assert_string_equal(r->caption, "a picture whose file may go");
  vlm_record_free(r);
  /* image_len without image is refused, nothing written */
  vlm_item bad = {0};
  bad.key = "bad";
  bad.image_vec = a;
  bad.image_len = 3;
  EXPECT_ERR(VLM_EINVAL, vlm_db_put(db, &bad, 1, 0, NULL));
  /* an update naming other fields keeps the bytes */
  vlm_write_op op = {VLM_WRITE_UPDATE, {0}};
  op.item.key = "kept";
  op.item.caption = "a new caption";
  CHECK(vlm_db_write(db, &op, 1, NULL));
  CHECK(vlm_db_get_image(db, "kept", &got, &len));
  assert_int_equal(len, big);
  assert_memory_equal(got, bytes, big);
  free(got);
  /* one naming new bytes replaces them */
  op.item.caption = NULL;
  op.item.image = "\x01\x02\x03";
  op.item.image_len = 3;
  CHECK(vlm_db_write(db, &op, 1, NULL));
  CHECK(vlm_db_get_image(db, "kept", &got, &len));
  assert_int_equal(len, 3);
  assert_memory_equal(got, "\x01\x02\x03", 3);
  free(got);
  op.item.image = bytes;
  op.item.image_len = big;
  CHECK(vlm_db_write(db, &op, 1, NULL));
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);

  /* salvage copies them */
  char out[128];
  snprintf(out, sizeof out, "%s/salvaged", t.root);
  vlm_db_salvage_result res;
  CHECK(vlm_db_salvage(t.dir, out, NULL, NULL, &res));
  assert_int_equal(res.saved, 2);
  db = open_db(out);
  CHECK(vlm_db_get_image(db, "kept", &got, &len));
  assert_int_equal(len, big);
  assert_memory_equal(got, bytes, big);
  free(got);
  vlm_db_close(db);

  /* a flipped byte in the middle of the kept bytes fails the checksum */
  char data[160];
  snprintf(data, sizeof data, "%s/payload.lmdb/data.mdb", t.dir);
  size_t dlen = 0;
  FILE *f = fopen(data, "r+b");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  dlen = (size_t)ftell(f);
  uint8_t *whole = malloc(dlen);
  fseek(f, 0, SEEK_SET);
  assert_int_equal(fread(whole, 1, dlen, f), dlen);
  uint8_t *at = memmem(whole, dlen, bytes + big / 2, 64);
  assert_non_null(at);
  fseek(f, (long)(at - whole), SEEK_SET);
  fputc(at[0] ^ 0x10, f);
  fclose(f);
  free(whole);
  db = open_db(t.dir);
  EXPECT_ERR(VLM_ECORRUPT, vlm_db_get_image(db, "kept", &got, &len));
  EXPECT_ERR(VLM_ECORRUPT, vlm_db_verify(db));
  vlm_db_close(db);

  /* the writer lock: a writer's open is refused while it is held, a
   * reader's is not; held by an open writer, it cannot be taken */
  vlm_db_lock *lk = NULL;
  CHECK(vlm_db_lock_writers(out, &lk));
  vlm_db *w = NULL;
  EXPECT_ERR(VLM_EBUSY, vlm_db_open(out, NULL, &w));
  vlm_db_open_options ro = {.readonly = 1};
  CHECK(vlm_db_open(out, &ro, &w));
  assert_int_equal(vlm_db_exists(w, "kept"), 1);
  vlm_db_close(w);
  vlm_db_unlock_writers(lk);
  w = open_db(out);
  lk = NULL;
  EXPECT_ERR(VLM_EBUSY, vlm_db_lock_writers(out, &lk));
  assert_null(lk);
  vlm_db_close(w);
  vlm_db_unlock_writers(NULL);

  /* exchange swaps the two directories */
  char other[128];
  snprintf(other, sizeof other, "%s/other", t.root);
  db = make_db(other, "Flat", DIM * 2);
  vlm_db_close(db);
  /* a reader opened before the switch goes on reading the database it
   * opened (its files are open; a connection it would open by path later
   * is refused with VLM_ESTATE rather than mixing in the other's) */
  vlm_db *before = NULL;
  CHECK(vlm_db_open(out, &ro, &before));
  CHECK(vlm_db_exchange(out, other));
  vlm_search_options so = {.k = 2, .filter = "category = 'cars'"};
  vlm_hit *hits = NULL;
  int nhits = 0;
  rc = vlm_db_search(before, a, &so, &hits, &nhits);
  if (rc != VLM_ESTATE) {
    CHECK(rc);
    assert_int_equal(nhits, 1);
    assert_string_equal(hits[0].key, "kept");
  }
  vlm_hits_free(hits, nhits);
  vlm_db_close(before);
  db = open_db(out);
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.dim, DIM * 2);
  assert_int_equal(info.items, 0);
  vlm_db_close(db);
  db = open_db(other);
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.items, 2);
  vlm_db_close(db);
  char nowhere[128];
  snprintf(nowhere, sizeof nowhere, "%s/absent", t.root);
  EXPECT_ERR(VLM_ENOTFOUND, vlm_db_exchange(out, nowhere));
  free(bytes);
  tmp_free(&t);
}

static int visit_count(const vlm_record *rec, void *arg) {
  char *prev = arg;
  if (prev[0] && strcmp(prev, rec->key) >= 0)
    return -100; /* not in key order */
  snprintf(prev, 64, "%s", rec->key);
  return 0;
}

static int visit_stop(const vlm_record *rec, void *arg) {
  (void)rec;
  return ++*(int *)arg == 5 ? 42 : 0;
}

static void test_upsert_delete_reach_all_stores(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 300, DIM, 7);
  corpus_put(db, &c, 0, 300, 64);
  CHECK(vlm_db_verify(db));

  /* Put without UPSERT skips existing keys, leaving them untouched. */
  corpus c2;
  corpus_make(&c2, 300, DIM, 8); /* same keys, other content */
  vlm_item it = corpus_item(&c2, 5);
  int written = -1;
  CHECK(vlm_db_put(db, &it, 1, 0, &written));
  assert_int_equal(written, 0);
  vlm_record *r;
  CHECK(vlm_db_get(db, c.key[5], &r));
  assert_string_equal(r->meta_json, c.meta[5]);
  vlm_record_free(r);

  /* Upsert replaces the item in LMDB, SQLite (filter, FTS) and FAISS. */
  vlm_item up[2] = {corpus_item(&c2, 5), corpus_item(&c2, 6)};
  up[0].caption = "zebra crossing";
  up[0].meta_json = "{\"category\": \"upserted\", \"year\": 1}";
  up[1].image_vec = c2.img + 6 * DIM; /* make sure both have an image */
  CHECK(vlm_db_put(db, up, 2, VLM_PUT_UPSERT, &written));
  assert_int_equal(written, 2);
  CHECK(vlm_db_get(db, c.key[5], &r));
  assert_string_equal(r->meta_json, up[0].meta_json);
  assert_string_equal(r->caption, "zebra crossing");
  vlm_record_free(r);

  vlm_search_options o = {0};
  vlm_hit *hits;
  int nh;
  o.k = 10;
  o.filter = "category = 'upserted'";
  CHECK(vlm_db_search(db, c2.img + 5 * DIM, &o, &hits, &nh));
  assert_int_equal(nh, 1);
  assert_string_equal(hits[0].key, c.key[5]);
  vlm_hits_free(hits, nh);
  o.filter = NULL;
  o.target = VLM_TARGET_IMAGE;
  o.k = 1;
  o.ef_search = 200;
  CHECK(vlm_db_search(db, up[1].image_vec, &o, &hits, &nh));
  assert_int_equal(nh, 1);
  assert_string_equal(hits[0].key, c.key[6]);
  assert_float_equal(hits[0].score, 1.0, 1e-5);
  vlm_hits_free(hits, nh);
  /* The old vector of key 6 no longer leads to it (tombstoned in HNSW). */
  if (c.has_img[6]) {
    o.k = 300;
    o.exact = 0;
    CHECK(vlm_db_search(db, c.img + 6 * DIM, &o, &hits, &nh));
    for (int h = 0; h < nh; h++)
      if (!strcmp(hits[h].key, c.key[6]))
        assert_true(fabsf(hits[h].score -
                          dot(c.img + 6 * DIM, c2.img + 6 * DIM, DIM)) < 1e-4);
    vlm_hits_free(hits, nh);
  }
  o.k = 10;
  o.hybrid_text = "zebra";
  CHECK(vlm_db_search(db, NULL, &o, &hits, &nh));
  assert_int_equal(nh, 1);
  assert_string_equal(hits[0].key, c.key[5]);
  vlm_hits_free(hits, nh);
  o.hybrid_text = NULL;
  CHECK(vlm_db_verify(db));

  /* Delete: gone from get, filters, FTS and search. */
  const char *del[] = {c.key[5], c.key[7], "never-existed", c.key[7]};
  int deleted = -1;
  CHECK(vlm_db_delete(db, del, 4, &deleted));
  assert_int_equal(deleted, 2);
  assert_int_equal(vlm_db_exists(db, c.key[5]), 0);
  assert_int_equal(vlm_db_exists(db, c.key[7]), 0);
  o.filter = "category = 'upserted'";
  CHECK(vlm_db_search(db, c2.img + 5 * DIM, &o, &hits, &nh));
  assert_int_equal(nh, 0);
  vlm_hits_free(hits, nh);
  o.filter = NULL;
  o.k = 300;
  o.target = VLM_TARGET_ANY;
  CHECK(vlm_db_search(db, c.img + 7 * DIM, &o, &hits, &nh));
  assert_int_equal(nh, 298);
  for (int h = 0; h < nh; h++) {
    assert_string_not_equal(hits[h].key, c.key[5]);
    assert_string_not_equal(hits[h].key, c.key[7]);
  }
  vlm_hits_free(hits, nh);
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.items, 298);
  assert_true(info.tombstones > 0); /* HNSW cannot remove */
  CHECK(vlm_db_verify(db));

  char prev[64] = "";
  CHECK(vlm_db_foreach(db, visit_count, prev));
  int stops = 0;
  assert_int_equal(vlm_db_foreach(db, visit_stop, &stops), 42);
  assert_int_equal(stops, 5);

  /* Tombstones survive a reopen and a checkpoint compacts them. */
  vlm_db_close(db);
  db = open_db(t.dir);
  CHECK(vlm_db_verify(db));
  o.k = 300;
  CHECK(vlm_db_search(db, c.img + 7 * DIM, &o, &hits, &nh));
  assert_int_equal(nh, 298);
  vlm_hits_free(hits, nh);
  vlm_db_close(db);
  corpus_free(&c);
  corpus_free(&c2);
  tmp_free(&t);
}

/* ------------------------------------------------------------ search */

static void check_targets(vlm_db *db, const corpus *c, const int *alive,
                          int exact, double min_recall) {
  vlm_target targets[] = {VLM_TARGET_ANY, VLM_TARGET_IMAGE, VLM_TARGET_TEXT};
  scored *want = malloc((size_t)c->n * sizeof *want);
  float q[64];
  double recall_sum = 0;
  int nq = 0;
  for (int t = 0; t < 3; t++)
    for (int qi = 0; qi < 20; qi++) {
      unit(q, c->dim);
      vlm_search_options o = {0};
      o.k = 10;
      o.target = targets[t];
      o.exact = exact;
      o.ef_search = 128;
      o.nprobe = 64;
      vlm_hit *hits;
      int nh;
      CHECK(vlm_db_search(db, q, &o, &hits, &nh));
      int nw = oracle(c, alive, NULL, q, targets[t], want);
      /* one hit per key, modality consistent with the target */
      for (int a = 0; a < nh; a++) {
        for (int b = a + 1; b < nh; b++)
          assert_string_not_equal(hits[a].key, hits[b].key);
        if (targets[t] != VLM_TARGET_ANY)
          assert_int_equal(hits[a].modality, targets[t]);
        int i = key_index(hits[a].key);
        assert_true(i >= 0);
        const float *v = hits[a].modality == VLM_TARGET_IMAGE
                             ? c->img + (size_t)i * c->dim
                             : c->txt + (size_t)i * c->dim;
        assert_true(hits[a].modality == VLM_TARGET_IMAGE ? c->has_img[i]
                                                         : c->has_txt[i]);
        assert_float_equal(hits[a].score, dot(q, v, c->dim), 1e-4);
        if (a > 0)
          assert_true(hits[a].score <= hits[a - 1].score);
      }
      if (exact)
        expect_same_as_oracle(c, hits, nh, want, nw, 10);
      recall_sum += recall_at(c, hits, nh, want, nw, 10);
      nq++;
      vlm_hits_free(hits, nh);
    }
  free(want);
  double recall = recall_sum / nq;
  if (recall < min_recall)
    fail_msg("recall@10 %.3f below %.3f", recall, min_recall);
}

static void test_search_targets_exact_and_index(void **state) {
  (void)state;
  const char *factories[] = {"Flat", "HNSW32", "IVF8,Flat"};
  for (int f = 0; f < 3; f++) {
    tmp t;
    tmp_make(&t);
    vlm_db *db = make_db(t.dir, factories[f], DIM);
    corpus c;
    corpus_make(&c, 1500, DIM, 11 + f);
    corpus_put(db, &c, 0, 1500, 500);
    check_targets(db, &c, NULL, 1, 1.0);
    /* Flat and IVF with nprobe = nlist are exact too; HNSW nearly. */
    check_targets(db, &c, NULL, 0, f == 1 ? 0.95 : 1.0);
    vlm_db_close(db);
    corpus_free(&c);
    tmp_free(&t);
  }
}

/* Collapse: the exact ranking, then greedily one result per group of
 * images with cosine >= t (the oracle below), with the count folded into
 * each; items without an image are never folded.  Through a Flat index
 * and the exact scan alike, and vlm_collapse_near over the ranking's
 * vectors; bad thresholds are refused. */
static void test_collapse_near_duplicates(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  const int n = 600, nclusters = 30;
  corpus_make(&c, n, DIM, 77);
  float *centre = calloc((size_t)nclusters * DIM, sizeof *centre);
  for (int k = 0; k < nclusters; k++)
    unit(centre + (size_t)k * DIM, DIM);
  for (int i = 0; i < 8 * nclusters; i++) { /* 8 near-copies per centre */
    float *v = c.img + (size_t)i * DIM;
    for (int d = 0; d < DIM; d++)
      v[d] = centre[(size_t)(i % nclusters) * DIM + d] +
             0.02f * (float)(rng_uniform() - 0.5);
    unit_normalize(v, DIM);
  }
  corpus_put(db, &c, 0, n, 200);
  const float thr = 0.9f;
  scored *all = malloc(sizeof *all * (size_t)n);
  float q[DIM];
  for (int trial = 0; trial < 20; trial++) {
    if (trial % 2) { /* near a cluster */
      memcpy(q, centre + (size_t)(trial % nclusters) * DIM, sizeof q);
      q[trial % DIM] += 0.3f;
      unit_normalize(q, DIM);
    } else {
      unit(q, DIM);
    }
    vlm_target target = trial % 4 < 2 ? VLM_TARGET_ANY : VLM_TARGET_IMAGE;
    int k = trial % 3 == 0 ? 5 : 12;
    /* the oracle */
    int m = oracle(&c, NULL, NULL, q, target, all);
    int kept[64], similar[64], nk = 0;
    float kept_score[64];
    for (int j = 0; j < m && nk < k; j++) {
      int i = all[j].i, into = -1;
      if (c.has_img[i])
        for (int a = 0; a < nk && into < 0; a++)
          if (c.has_img[kept[a]] &&
              dot(c.img + (size_t)i * DIM, c.img + (size_t)kept[a] * DIM,
                  DIM) >= thr)
            into = a;
      if (into >= 0) {
        similar[into]++;
      } else {
        similar[nk] = 0;
        kept_score[nk] = all[j].score;
        kept[nk++] = i;
      }
    }
    int folded = 0;
    for (int a = 0; a < nk; a++)
      folded += similar[a];
    if (trial % 2)
      assert_true(folded > 0); /* a query near a cluster folds some */
    /* the walk a coordinator makes over vectors it was sent */
    const float **vecs = malloc(sizeof *vecs * (size_t)m);
    int keep[64], keep_similar[64];
    for (int j = 0; j < m; j++)
      vecs[j] = c.has_img[all[j].i] ? c.img + (size_t)all[j].i * DIM : NULL;
    assert_int_equal(vlm_collapse_near(vecs, m, DIM, k, thr, keep,
                                       keep_similar), nk);
    for (int a = 0; a < nk; a++) {
      assert_int_equal(all[keep[a]].i, kept[a]);
      assert_int_equal(keep_similar[a], similar[a]);
    }
    assert_int_equal(vlm_collapse_near(vecs, m, DIM, k, 0, keep,
                                       keep_similar), VLM_EINVAL);
    free(vecs);
    for (int exact = 0; exact < 2; exact++) {
      vlm_search_options o = {.k = k, .target = target, .exact = exact,
                              .collapse = thr};
      vlm_hit *hits = NULL;
      int nh = 0;
      CHECK(vlm_db_search(db, q, &o, &hits, &nh));
      assert_int_equal(nh, nk);
      for (int a = 0; a < nk; a++) {
        assert_string_equal(hits[a].key, c.key[kept[a]]);
        assert_int_equal(hits[a].similar, similar[a]);
        assert_float_equal(hits[a].score, kept_score[a], 1e-5);
      }
      vlm_hits_free(hits, nh);
    }
  }
  /* without collapse nothing is folded */
  vlm_search_options o = {.k = 10};
  vlm_hit *hits = NULL;
  int nh = 0;
  CHECK(vlm_db_search(db, centre, &o, &hits, &nh));
  int clustered = 0;
  for (int a = 0; a < nh; a++) {
    assert_int_equal(hits[a].similar, 0);
    clustered += key_index(hits[a].key) < 8 * nclusters &&
                 key_index(hits[a].key) % nclusters == 0;
  }
  assert_true(clustered > 1); /* the copies of centre 0 fill the top */
  vlm_hits_free(hits, nh);
  float bad[] = {-0.1f, 1.5f, NAN};
  for (int b = 0; b < 3; b++) {
    vlm_search_options ob = {.k = 10, .collapse = bad[b]};
    assert_int_equal(vlm_db_search(db, q, &ob, &hits, &nh), VLM_EINVAL);
  }
  free(all);
  free(centre);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* A database whose items first have text vectors only: searches over the
 * empty image modality return nothing (and must not scan every item), and
 * image vectors that arrive later are found at once, through the index
 * and the exact scan alike. */
static void test_one_modality_database(void **state) {
  (void)state;
  const char *factories[] = {"Flat", "HNSW32"};
  for (int f = 0; f < 2; f++) {
    tmp t;
    tmp_make(&t);
    vlm_db *db = make_db(t.dir, factories[f], DIM);
    corpus c;
    corpus_make(&c, 600, DIM, 91 + f);
    for (int i = 0; i < 400; i++) {
      c.has_txt[i] = 1;
      c.has_img[i] = 0;
    }
    for (int i = 400; i < 600; i++) {
      c.has_txt[i] = 0;
      c.has_img[i] = 1;
    }
    corpus_put(db, &c, 0, 400, 100);
    int alive[600] = {0};
    for (int i = 0; i < 400; i++)
      alive[i] = 1;
    float q[64];
    unit(q, DIM);
    vlm_search_options o = {.k = 10, .target = VLM_TARGET_IMAGE};
    vlm_hit *hits;
    int nh = -1;
    CHECK(vlm_db_search(db, q, &o, &hits, &nh));
    assert_int_equal(nh, 0);
    vlm_hits_free(hits, nh);
    check_targets(db, &c, alive, 1, 1.0);
    check_targets(db, &c, alive, 0, f == 1 ? 0.95 : 1.0);

    /* image-only items arrive: the image modality is no longer empty */
    corpus_put(db, &c, 400, 600, 50);
    for (int i = 400; i < 600; i++)
      alive[i] = 1;
    memcpy(q, c.img + (size_t)450 * DIM, sizeof(float) * DIM);
    CHECK(vlm_db_search(db, q, &o, &hits, &nh));
    assert_true(nh > 0);
    assert_string_equal(hits[0].key, c.key[450]);
    vlm_hits_free(hits, nh);
    check_targets(db, &c, alive, 1, 1.0);
    check_targets(db, &c, alive, 0, f == 1 ? 0.95 : 1.0);
    vlm_db_close(db);
    corpus_free(&c);
    tmp_free(&t);
  }
}

static void test_reopen_and_index_file_recovery(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 800, DIM, 21);
  corpus_put(db, &c, 0, 600, 100);
  CHECK(vlm_db_checkpoint(db));
  corpus_put(db, &c, 600, 800, 100); /* after the checkpoint */
  vlm_db_info before;
  CHECK(vlm_db_stat(db, &before));
  /* Simulate a crash: the last 200 items are not in the index file. */
  vlm_db_close(db);

  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 0);
  vlm_db_info after;
  CHECK(vlm_db_stat(db, &after));
  assert_int_equal(after.items, 800);
  assert_int_equal(after.index_vectors, before.index_vectors);
  CHECK(vlm_db_verify(db));
  check_targets(db, &c, NULL, 1, 1.0);
  check_targets(db, &c, NULL, 0, 0.95);
  vlm_db_close(db);

  /* Corrupt every index file: open rebuilds from LMDB with a warning. */
  char path[256];
  FILE *mf;
  snprintf(path, sizeof path, "%s/manifest.json", t.dir);
  assert_non_null(mf = fopen(path, "r"));
  char man[4096];
  size_t mlen = fread(man, 1, sizeof man - 1, mf);
  man[mlen] = '\0';
  fclose(mf);
  char *file = strstr(man, "image-");
  assert_non_null(file);
  char name[128];
  assert_int_equal(sscanf(file, "%127[^\"]", name), 1);
  snprintf(path, sizeof path, "%s/%s", t.dir, name);
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, "garbage!", 8, 100), 8);
  close(fd);
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 1);
  assert_non_null(strstr(last_warning, "rebuilding"));
  CHECK(vlm_db_verify(db));
  check_targets(db, &c, NULL, 0, 0.95);
  vlm_db_close(db);

  /* A missing index file too. */
  assert_non_null(mf = fopen(t.dir, "r")); /* dir exists */
  fclose(mf);
  snprintf(path, sizeof path, "%s/manifest.json", t.dir);
  assert_non_null(mf = fopen(path, "r"));
  mlen = fread(man, 1, sizeof man - 1, mf);
  man[mlen] = '\0';
  fclose(mf);
  assert_non_null(file = strstr(man, "image-"));
  assert_int_equal(sscanf(file, "%127[^\"]", name), 1);
  snprintf(path, sizeof path, "%s/%s", t.dir, name);
  assert_int_equal(unlink(path), 0);
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 1);
  CHECK(vlm_db_verify(db));
  check_targets(db, &c, NULL, 0, 0.95);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

static void test_reindex(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 1000, DIM, 31);
  corpus_put(db, &c, 0, 1000, 250);
  const char *del[] = {c.key[1], c.key[2], c.key[3]};
  CHECK(vlm_db_delete(db, del, 3, NULL));
  int alive[1000];
  for (int i = 0; i < 1000; i++)
    alive[i] = i < 1 || i > 3;
  EXPECT_ERR(VLM_EINVAL, vlm_db_reindex(db, "NoSuchIndex"));
  CHECK(vlm_db_reindex(db, "Flat"));
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_string_equal(info.index_factory, "Flat");
  assert_int_equal(info.tombstones, 0);
  assert_int_equal(info.index_vectors, info.image_vectors + info.text_vectors);
  check_targets(db, &c, alive, 0, 1.0); /* Flat: exact */
  CHECK(vlm_db_reindex(db, "IVF16,Flat"));
  check_targets(db, &c, alive, 0, 1.0); /* nprobe 64 >= 16 lists */
  vlm_db_close(db);
  db = open_db(t.dir);
  CHECK(vlm_db_stat(db, &info));
  assert_string_equal(info.index_factory, "IVF16,Flat");
  assert_int_equal(info.index_trained, 1);
  CHECK(vlm_db_verify(db));
  check_targets(db, &c, alive, 0, 1.0);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* Mean recall@10 (image target) of default searches, or ef_search ef,
 * over nq random queries, against the brute-force oracle. */
static double default_recall(vlm_db *db, const corpus *c, int ef, int nq,
                             uint64_t seed) {
  float *q = malloc((size_t)c->dim * sizeof *q);
  scored *want = malloc((size_t)c->n * sizeof *want);
  uint64_t saved = rng_state;
  rng_state = seed;
  double sum = 0;
  for (int j = 0; j < nq; j++) {
    unit(q, c->dim);
    int nw = oracle(c, NULL, NULL, q, VLM_TARGET_IMAGE, want);
    vlm_search_options o = {0};
    o.k = 10;
    o.target = VLM_TARGET_IMAGE;
    o.ef_search = ef;
    vlm_hit *hits;
    int nh;
    CHECK(vlm_db_search(db, q, &o, &hits, &nh));
    sum += recall_at(c, hits, nh, want, nw, 10);
    vlm_hits_free(hits, nh);
  }
  rng_state = saved;
  free(q);
  free(want);
  return sum / nq;
}

static double rng_gauss(void) {
  double u = rng_uniform(), v = rng_uniform();
  if (u < 1e-300)
    u = 1e-300;
  return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* x[dim]: a point of the cluster around centre (x = c + g, g ~ N(0,
 * noise^2 I / dim), normalised), as bench/search draws them. */
static void cluster_point(float *x, const float *centre, int dim,
                          double noise) {
  for (int j = 0; j < dim; j++)
    x[j] = centre[j] + (float)(noise / sqrt((double)dim) * rng_gauss());
  unit_normalize(x, dim);
}

/* The promise `info` makes holds on queries the index has never seen:
 * noise-dominated clusters (cos to the centre about 0.55, bench/search's
 * data, where leave-one-out tuning promised 0.997 and new queries got
 * 0.976-0.980), tuned as the index grows; then 1,000 new queries drawn
 * from the same clusters search with the default effort, and their
 * recall@10 against brute force is at least 0.99.  The recall the tuner
 * reports is the one it measured at the effort it chose. */
static void test_tuned_effort_held_out(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  const int dim = 64, n = 12000, nclusters = 120, nq = 1000;
  vlm_db *db = make_db(t.dir, "HNSW16", dim);
  corpus c;
  corpus_make(&c, n, dim, 91);
  float *centres = malloc((size_t)nclusters * dim * sizeof *centres);
  rng_state = 4242;
  for (int i = 0; i < nclusters; i++)
    unit(centres + (size_t)i * dim, dim);
  for (int i = 0; i < n; i++) {
    c.has_img[i] = 1, c.has_txt[i] = 0;
    cluster_point(c.img + (size_t)i * dim,
                  centres + (size_t)(rng_next() % nclusters) * dim, dim, 1.5);
  }
  corpus_put(db, &c, 0, n, 1000);
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  int ef = info.tuned_effort[0];
  assert_true(ef >= 16);
  assert_int_equal(info.tuned_at[0], 8000); /* measured at 1k, 2k, 4k, 8k */
  assert_int_equal(info.tuned_queries[0], 500);
  if (!(info.tuned_recall[0] >= 0.995 && info.tuned_recall[0] <= 1.0))
    fail_msg("tuned efSearch %d reports recall %.4f, below its 0.995 target",
             ef, info.tuned_recall[0]);

  float *q = malloc((size_t)dim * sizeof *q);
  scored *want = malloc((size_t)n * sizeof *want);
  double sum = 0, sum_half = 0;
  rng_state = 777;
  for (int j = 0; j < nq; j++) {
    cluster_point(q, centres + (size_t)(rng_next() % nclusters) * dim, dim,
                  1.5);
    int nw = oracle(&c, NULL, NULL, q, VLM_TARGET_IMAGE, want);
    for (int pass = 0; pass < 2; pass++) {
      vlm_search_options o = {0};
      o.k = 10;
      o.target = VLM_TARGET_IMAGE;
      o.ef_search = pass ? (ef / 2 < 10 ? 10 : ef / 2) : 0;
      vlm_hit *hits;
      int nh;
      CHECK(vlm_db_search(db, q, &o, &hits, &nh));
      double r = recall_at(&c, hits, nh, want, nw, 10);
      *(pass ? &sum_half : &sum) += r;
      vlm_hits_free(hits, nh);
    }
  }
  double r_def = sum / nq, r_half = sum_half / nq;
  print_message("HNSW16, %d x %d in %d noise-dominated clusters: tuned "
                "efSearch %d (measured %.4f on %d held-out queries); %d new "
                "queries: recall@10 %.4f at it, %.4f at efSearch %d\n",
                n, dim, nclusters, ef, info.tuned_recall[0],
                info.tuned_queries[0], nq, r_def, r_half,
                ef / 2 < 10 ? 10 : ef / 2);
  if (!(r_def >= 0.99))
    fail_msg("recall@10 %.4f on new queries at the tuned efSearch %d: the "
             "0.99 promise is broken", r_def, ef);
  vlm_db_close(db);
  free(q);
  free(want);
  free(centres);
  corpus_free(&c);
  tmp_free(&t);
}

/* The index measures the effort that reaches the recall target on its
 * own data (uniform random vectors: hard for a graph), searches use it
 * by default, it survives reopen, and a new kind of index is measured
 * again. */
static void test_tuned_effort(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  const int dim = 48, n = 4000;
  vlm_db *db = make_db(t.dir, "HNSW32", dim);
  corpus c;
  corpus_make(&c, n, dim, 77);
  for (int i = 0; i < n; i++)
    c.has_img[i] = 1, c.has_txt[i] = i % 4 == 0;
  vlm_db_info info;
  corpus_put(db, &c, 0, 1000, 500);
  CHECK(vlm_db_stat(db, &info));
  int first = info.tuned_effort[0];
  assert_true(first >= 16);
  assert_int_equal(info.tuned_at[0], 1000);
  corpus_put(db, &c, 1000, n, 500);
  CHECK(vlm_db_stat(db, &info));
  /* measured again at 2,000 and 4,000 vectors (each doubling) */
  assert_int_equal(info.tuned_at[0], 4000);
  int tuned = info.tuned_effort[0];
  double r_def = default_recall(db, &c, 0, 100, 901);
  double r16 = default_recall(db, &c, 16, 100, 901);
  double r_tuned = default_recall(db, &c, tuned, 100, 901);
  print_message("HNSW32 on %d uniform %d-d vectors: tuned efSearch %d "
                "(%d at 1,000); recall@10 default %.3f, ef %d %.3f, "
                "ef 16 %.3f\n",
                n, dim, tuned, first, r_def, tuned, r_tuned, r16);
  if (!(r_def >= 0.97))
    fail_msg("default recall@10 %.3f < 0.97 with tuned ef %d", r_def, tuned);
  /* the default is the tuned effort, not a fixed one */
  if (fabs(r_def - r_tuned) > 1e-9)
    fail_msg("default recall %.3f != recall at ef %d %.3f", r_def, tuned,
             r_tuned);
  vlm_db_close(db);

  /* Kept in the manifest: a reader has it without measuring. */
  vlm_db_open_options ro = {0};
  ro.readonly = 1;
  CHECK(vlm_db_open(t.dir, &ro, &db));
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.tuned_effort[0], tuned);
  assert_int_equal(info.tuned_at[0], 4000);
  vlm_db_close(db);

  /* Duplicates (the same caption on many items): the exact top 10 and
   * the index's pick different ids among equal scores, which is not a
   * loss; tuning must not climb to the largest efSearch over it. */
  {
    tmp t2;
    tmp_make(&t2);
    vlm_db *dd = make_db(t2.dir, "HNSW32", dim);
    corpus d;
    corpus_make(&d, 3000, dim, 78);
    for (int i = 0; i < 3000; i++) {
      d.has_img[i] = 1, d.has_txt[i] = 0;
      memcpy(d.img + (size_t)i * dim, d.img + (size_t)(i % 150) * dim,
             (size_t)dim * sizeof(float));
    }
    corpus_put(dd, &d, 0, 3000, 1000);
    vlm_db_info di;
    CHECK(vlm_db_stat(dd, &di));
    print_message("HNSW32 on 3000 vectors, 150 distinct: tuned efSearch %d\n",
                  di.tuned_effort[0]);
    assert_true(di.tuned_effort[0] >= 16 && di.tuned_effort[0] <= 256);
    vlm_db_close(dd);
    corpus_free(&d);
    tmp_free(&t2);
  }

  /* A new kind of index is measured at once: nprobe for IVF. */
  db = open_db(t.dir);
  CHECK(vlm_db_reindex(db, "IVF32,Flat"));
  CHECK(vlm_db_stat(db, &info));
  int nprobe = info.tuned_effort[0];
  r_def = default_recall(db, &c, 0, 100, 902);
  print_message("IVF32,Flat: tuned nprobe %d, default recall@10 %.3f\n",
                nprobe, r_def);
  assert_true(nprobe >= 1 && nprobe <= 32);
  if (!(r_def >= 0.97))
    fail_msg("IVF default recall@10 %.3f < 0.97 with nprobe %d", r_def,
             nprobe);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

static void test_training_threshold(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "IVF8,Flat", DIM); /* trains at 39 * 8 */
  corpus c;
  corpus_make(&c, 900, DIM, 41);
  for (int i = 0; i < 900; i++)
    c.has_img[i] = 1, c.has_txt[i] = i % 2; /* 900 images, 450 texts */
  corpus_put(db, &c, 0, 200, 50);
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.index_trained, 0);
  assert_int_equal(info.index_vectors, 0);
  assert_int_equal(info.pending_vectors, 300);
  int alive[900];
  for (int i = 0; i < 900; i++)
    alive[i] = i < 200;
  check_targets(db, &c, alive, 0, 1.0); /* exact while untrained */
  corpus_put(db, &c, 200, 400, 50);     /* images pass 312 */
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.index_vectors, 400); /* image index trained */
  assert_int_equal(info.index_trained, 0);   /* text (200) not yet */
  for (int i = 0; i < 900; i++)
    alive[i] = i < 400;
  check_targets(db, &c, alive, 0, 1.0);
  corpus_put(db, &c, 400, 900, 50);
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.index_trained, 1);
  assert_int_equal(info.index_vectors, 1350);
  assert_int_equal(info.pending_vectors, 0);
  CHECK(vlm_db_verify(db));
  check_targets(db, &c, NULL, 0, 1.0);
  vlm_db_close(db);
  db = open_db(t.dir);
  CHECK(vlm_db_verify(db));
  check_targets(db, &c, NULL, 0, 1.0);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ refusals */

static void rewrite_manifest(const char *dir, const char *from,
                             const char *to) {
  char path[256], buf[8192], out[8192];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  char *p = strstr(buf, from);
  assert_non_null(p);
  snprintf(out, sizeof out, "%.*s%s%s", (int)(p - buf), buf, to,
           p + strlen(from));
  f = fopen(path, "w");
  assert_non_null(f);
  fputs(out, f);
  fclose(f);
}

/* Vectors that a naive normalize would overflow or underflow: a tiny one
 * (its 1/length is infinite in float) is refused before the commit point,
 * so the database stays openable; huge and tiny-element ones that
 * have a proper unit form are stored finite and at unit length; a caption
 * at the text limit reads back everywhere, one byte over is refused. */
static void test_extreme_vectors_and_text_limit(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  float v[DIM] = {0};
  vlm_item it = {.key = "tiny", .image_vec = v, .caption = "tiny"};
  int written = 0;
  v[0] = 1e-40f; /* denormal: length below FLT_MIN */
  EXPECT_ERR(VLM_EINVAL, vlm_db_put(db, &it, 1, 0, &written));
  assert_non_null(strstr(vlm_errmsg(), "tiny"));
  v[0] = 0;
  EXPECT_ERR(VLM_EINVAL, vlm_db_put(db, &it, 1, 0, &written));
  v[0] = NAN;
  EXPECT_ERR(VLM_ENUMERIC, vlm_db_put(db, &it, 1, 0, &written));
  v[0] = INFINITY;
  EXPECT_ERR(VLM_ENUMERIC, vlm_db_put(db, &it, 1, 0, &written));
  /* accepted: huge (the sum of squares overflows a float), many small
   * normal elements (each square underflows a float), a mixed one */
  float huge[DIM], small[DIM], mixed[DIM];
  for (int i = 0; i < DIM; i++) {
    huge[i] = i % 2 ? 3e38f : -3e38f;
    small[i] = 2e-38f;
    mixed[i] = i == 3 ? 1e30f : 1e-30f;
  }
  vlm_item ok[3] = {{.key = "huge", .image_vec = huge},
                    {.key = "small", .image_vec = small},
                    {.key = "mixed", .text_vec = mixed}};
  CHECK(vlm_db_put(db, ok, 3, 0, &written));
  assert_int_equal(written, 3);
  vlm_db_close(db);
  CHECK(vlm_db_open(t.dir, NULL, &db)); /* opens: nothing poisoned it */
  const char *keys[3] = {"huge", "small", "mixed"};
  for (int k = 0; k < 3; k++) {
    vlm_record *rec;
    CHECK(vlm_db_get(db, keys[k], &rec));
    const float *x = rec->image_vec ? rec->image_vec : rec->text_vec;
    assert_non_null(x);
    double ss = 0;
    for (int i = 0; i < DIM; i++) {
      assert_true(isfinite(x[i]));
      ss += (double)x[i] * x[i];
    }
    if (fabs(ss - 1) > 1e-5)
      fail_msg("%s: stored length^2 %.9f", keys[k], ss);
    vlm_record_free(rec);
  }
  /* a search by the huge vector finds it first, exactly and by index */
  vlm_search_options o = {0};
  o.k = 1;
  vlm_hit *hits;
  int nh;
  for (int exact = 0; exact < 2; exact++) {
    o.exact = exact;
    CHECK(vlm_db_search(db, huge, &o, &hits, &nh));
    assert_int_equal(nh, 1);
    assert_string_equal(hits[0].key, "huge");
    vlm_hits_free(hits, nh);
  }

  /* the text limit */
  char *big = malloc(VLM_DB_MAX_TEXT + 2);
  memset(big, 'w', VLM_DB_MAX_TEXT + 1);
  memcpy(big, "zebra ", 6);
  big[VLM_DB_MAX_TEXT] = '\0';
  float u[DIM];
  unit(u, DIM);
  vlm_item full = {.key = "full", .image_vec = u, .caption = big};
  CHECK(vlm_db_put(db, &full, 1, 0, &written));
  big[VLM_DB_MAX_TEXT] = 'w';
  big[VLM_DB_MAX_TEXT + 1] = '\0';
  vlm_item over = {.key = "over", .image_vec = u, .caption = big};
  EXPECT_ERR(VLM_ETOOBIG, vlm_db_put(db, &over, 1, 0, &written));
  assert_non_null(strstr(vlm_errmsg(), "over"));
  vlm_record *rec;
  CHECK(vlm_db_get(db, "full", &rec));
  assert_int_equal(strlen(rec->caption), VLM_DB_MAX_TEXT);
  vlm_record_free(rec);
  CHECK(vlm_db_verify(db));
  o.exact = 0;
  o.hybrid_text = "zebra";
  CHECK(vlm_db_search(db, u, &o, &hits, &nh));
  assert_int_equal(nh, 1);
  assert_string_equal(hits[0].key, "full");
  vlm_hits_free(hits, nh);
  free(big);
  vlm_db_close(db);
  tmp_free(&t);
}

/* A truncated data.mdb (a bad copy, a full disk) is refused with a clear
 * error by every open, read-only or not, instead of faulting on the first
 * read past its end; the full file opens again. */
static void test_truncated_payload_refused(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 1500, DIM, 5);
  corpus_put(db, &c, 0, 1500, 500);
  vlm_db_close(db);
  char data[PATH_MAX], save[PATH_MAX];
  snprintf(data, sizeof data, "%s/payload.lmdb/data.mdb", t.dir);
  snprintf(save, sizeof save, "%s/data.mdb.full", t.dir);
  struct stat st;
  assert_int_equal(stat(data, &st), 0);
  char cmd[3 * PATH_MAX];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", data, save);
  assert_int_equal(system(cmd), 0);
  off_t cuts[] = {st.st_size / 2, st.st_size - 4096, 3 * 4096};
  for (int k = 0; k < 3; k++) {
    assert_int_equal(truncate(data, cuts[k]), 0);
    for (int ro = 0; ro < 2; ro++) {
      vlm_db_open_options o = {.readonly = ro};
      vlm_db *bad = NULL;
      int rc = vlm_db_open(t.dir, &o, &bad);
      if (rc == 0) {
        vlm_db_close(bad);
        fail_msg("truncated to %lld bytes: opened (%s)", (long long)cuts[k],
                 ro ? "read-only" : "read-write");
      }
      assert_int_equal(rc, VLM_ECORRUPT);
      assert_non_null(strstr(vlm_errmsg(), "is damaged"));
    }
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", save, data);
    assert_int_equal(system(cmd), 0);
  }
  db = open_db(t.dir);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ---- bit-flip trials: flip, run the check in a child, count ----------- */

static void flip_bit(const char *path, off_t at, int bit) {
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  unsigned char b;
  assert_int_equal(pread(fd, &b, 1, at), 1);
  b ^= (unsigned char)(1u << bit);
  assert_int_equal(pwrite(fd, &b, 1, at), 1);
  close(fd);
}

/* fork() for one trial; the child dies of a fault instead of reporting it
 * (cmocka's handlers would call it a failed test and run on), so the
 * parent can count it. */
static pid_t fork_trial(void) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* OpenMP's thread pool does not survive fork(): a child that rebuilds
     * an index must not wait for the parent's workers */
    omp_set_num_threads(1);
    signal(SIGSEGV, SIG_DFL);
    signal(SIGBUS, SIG_DFL);
    signal(SIGABRT, SIG_DFL);
    signal(SIGILL, SIG_DFL);
    signal(SIGFPE, SIG_DFL);
  }
  return pid;
}

typedef struct {
  int caught, same, silent, crashed;
} flip_tally;

/* The child exits 0 (caught), 1 (identical) or 2 (silently wrong). */
static void tally_trial(pid_t pid, int trial, off_t at, int bit,
                        flip_tally *n) {
  int ws;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  if (!WIFEXITED(ws)) {
    n->crashed++;
    print_message("trial %d: byte %lld bit %d: signal %d\n", trial,
                  (long long)at, bit, WTERMSIG(ws));
  } else if (WEXITSTATUS(ws) == 0) {
    n->caught++;
  } else if (WEXITSTATUS(ws) == 1) {
    n->same++;
  } else {
    n->silent++;
    print_message("trial %d: byte %lld bit %d: silently wrong\n", trial,
                  (long long)at, bit);
  }
}

/* Single bit flips anywhere in data.mdb: every trial ends in a clear error
 * (open or verify) or in data identical to what was written; never in
 * verify passing over a changed record, and never in a crash: verify
 * walks the trees page by page (db/lmdbwalk.c) before it reads through
 * LMDB, which trusts its pages.  Each trial runs in a child, so a crash
 * is counted and reported rather than taking the test down. */
static void test_bit_flips_are_caught(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 400, DIM, 23);
  corpus_put(db, &c, 0, 400, 100);
  vlm_db_close(db);
  char data[PATH_MAX], work[PATH_MAX + 8], cmd[4 * PATH_MAX];
  snprintf(data, sizeof data, "%s/payload.lmdb/data.mdb", t.dir);
  snprintf(work, sizeof work, "%s.orig", data);
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", data, work);
  assert_int_equal(system(cmd), 0);
  struct stat st;
  assert_int_equal(stat(data, &st), 0);
  flip_tally n = {0};
  rng_state = 4242;
  const int trials = 600;
  for (int trial = 0; trial < trials; trial++) {
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", work, data);
    assert_int_equal(system(cmd), 0);
    /* after the two meta pages: they are checked by LMDB itself */
    off_t at = 8192 + (off_t)(rng_next() % (uint64_t)(st.st_size - 8192));
    int bit = (int)(rng_next() % 8);
    flip_bit(data, at, bit);
    pid_t pid = fork_trial();
    if (pid == 0) {
      /* 0: caught, 1: identical, 2: silently wrong */
      vlm_db_open_options o = {.readonly = 1};
      vlm_db *d = NULL;
      if (vlm_db_open(t.dir, &o, &d) != 0)
        _exit(0);
      if (vlm_db_verify(d) != 0)
        _exit(0);
      for (int i = 0; i < c.n; i++) {
        vlm_record *rec = NULL;
        if (vlm_db_get(d, c.key[i], &rec) != 0)
          _exit(0); /* a clear error on read */
        int ok = rec->caption && !strcmp(rec->caption, c.caption[i]) &&
                 rec->meta_json && !strcmp(rec->meta_json, c.meta[i]) &&
                 !rec->image_vec == !c.has_img[i] &&
                 !rec->text_vec == !c.has_txt[i];
        float tmpv[DIM];
        if (ok && rec->image_vec) {
          memcpy(tmpv, c.img + (size_t)i * DIM, sizeof tmpv);
          unit_normalize(tmpv, DIM);
          for (int k = 0; k < DIM; k++)
            ok &= fabsf(tmpv[k] - rec->image_vec[k]) < 1e-6f;
        }
        vlm_record_free(rec);
        if (!ok)
          _exit(2);
      }
      _exit(1);
    }
    tally_trial(pid, trial, at, bit, &n);
  }
  print_message("%d bit flips in data.mdb: %d caught, %d harmless, %d "
                "silently wrong, %d crashed\n", trials,
                n.caught, n.same, n.silent, n.crashed);
  assert_int_equal(n.silent, 0);
  assert_int_equal(n.crashed, 0);
  assert_true(n.caught > 0);
  corpus_free(&c);
  tmp_free(&t);
}

/* The ordinary commands on a damaged data.mdb, with no verify first:
 * open (read-only and read-write), get of every key, a search of each
 * modality, a scan, a full walk (export), a delete and a put.  LMDB
 * trusts its pages, so a damaged tree page used to abort (mdb.c
 * assertions) or fault in any of them; every trial must now end in a
 * clear error or in the data as written, never in a crash, and get must
 * never return a changed record (its checksum). */
static int count_visit(const vlm_record *rec, void *arg) {
  (void)rec;
  (*(int *)arg)++;
  return 0;
}

static void test_bit_flips_in_ordinary_commands(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 400, DIM, 29);
  corpus_put(db, &c, 0, 400, 100);
  vlm_db_close(db);
  /* each trial starts from the whole database as written (a read-write
   * trial rebuilds meta.sqlite and the indexes, and deletes) */
  char data[PATH_MAX], work[PATH_MAX + 8], cmd[4 * PATH_MAX];
  snprintf(data, sizeof data, "%s/payload.lmdb/data.mdb", t.dir);
  snprintf(work, sizeof work, "%s.orig", t.dir);
  snprintf(cmd, sizeof cmd, "cp -a '%s' '%s'", t.dir, work);
  assert_int_equal(system(cmd), 0);
  struct stat st;
  assert_int_equal(stat(data, &st), 0);
  flip_tally n = {0};
  rng_state = 777;
  const int trials = 300;
  for (int trial = 0; trial < trials; trial++) {
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -a '%s' '%s'", t.dir, work,
             t.dir);
    assert_int_equal(system(cmd), 0);
    off_t at = 8192 + (off_t)(rng_next() % (uint64_t)(st.st_size - 8192));
    int bit = (int)(rng_next() % 8);
    /* a third of the trials damage a whole byte of a page header or node
     * table, where LMDB's own pointers live */
    if (trial % 3 == 0)
      at = (at & ~(off_t)4095) + (off_t)(rng_next() % 64);
    flip_bit(data, at, bit);
    pid_t pid = fork_trial();
    if (pid == 0) {
      int errors = 0, wrong = 0;
      vlm_db_open_options o = {.readonly = trial % 2};
      vlm_db *d = NULL;
      if (vlm_db_open(t.dir, &o, &d) != 0)
        _exit(0);
      for (int i = 0; i < c.n; i++) {
        vlm_record *rec = NULL;
        if (vlm_db_get(d, c.key[i], &rec) != 0) {
          errors++;
          continue;
        }
        int ok = rec->caption && !strcmp(rec->caption, c.caption[i]) &&
                 rec->meta_json && !strcmp(rec->meta_json, c.meta[i]);
        vlm_record_free(rec);
        wrong += !ok;
      }
      for (int q = 0; q < 4; q++) {
        vlm_search_options so = {0};
        so.k = 10;
        so.target = q % 2 ? VLM_TARGET_TEXT : VLM_TARGET_IMAGE;
        vlm_hit *hits = NULL;
        int nh = 0;
        if (vlm_db_search(d, c.img + (size_t)(q * 37) * DIM, &so, &hits,
                          &nh) != 0)
          errors++;
        else
          vlm_hits_free(hits, nh);
      }
      char **keys = NULL;
      int nk = 0;
      uint64_t next = 0;
      if (vlm_db_scan(d, 0, 50, &keys, &nk, &next) == 0)
        vlm_db_keys_free(keys, nk);
      else
        errors++;
      int visited = 0;
      errors += vlm_db_foreach(d, count_visit, &visited) != 0;
      if (!o.readonly) {
        const char *dk[1] = {c.key[trial % c.n]};
        int deleted = 0;
        errors += vlm_db_delete(d, dk, 1, &deleted) != 0;
      }
      vlm_db_close(d);
      _exit(wrong ? 2 : errors ? 0 : 1);
    }
    tally_trial(pid, trial, at, bit, &n);
  }
  print_message("%d bit flips in data.mdb, ordinary commands: %d caught, "
                "%d harmless, %d silently wrong, %d crashed\n", trials,
                n.caught, n.same, n.silent, n.crashed);
  assert_int_equal(n.silent, 0);
  assert_int_equal(n.crashed, 0);
  assert_true(n.caught > 0);
  corpus_free(&c);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
  assert_int_equal(system(cmd), 0);
  tmp_free(&t);
}

/* What the index side answers: approximate searches (efSearch 64) of
 * both modalities, keys and scores, as one string.  NULL on an error. */
static char *index_answers(vlm_db *db, const corpus *c) {
  size_t cap = 1 << 16, len = 0;
  char *out = malloc(cap);
  if (!out)
    return NULL;
  out[0] = '\0';
  for (int q = 0; q < 12; q++) {
    vlm_search_options o = {0};
    o.k = 10;
    o.ef_search = 64;
    o.target = q % 2 ? VLM_TARGET_TEXT : VLM_TARGET_IMAGE;
    vlm_hit *hits = NULL;
    int nh = 0;
    if (vlm_db_search(db, c->img + (size_t)(q * 31 % c->n) * DIM, &o, &hits,
                      &nh) != 0) {
      free(out);
      return NULL;
    }
    for (int h = 0; h < nh; h++)
      len += (size_t)snprintf(out + len, cap - len, "%s %.6f ", hits[h].key,
                              hits[h].score);
    len += (size_t)snprintf(out + len, cap - len, "| ");
    vlm_hits_free(hits, nh);
  }
  return out;
}

/* Bit flips and truncations in the index files, the live bitmaps and the
 * manifest: each ends in a clear error (the manifest, which carries its
 * own checksum), an index rebuilt from the payload store with a warning
 * (the index files carry a checksum the index shim checks), bitmaps read
 * from the vector records with a warning, or answers identical to the
 * sound files' - never a silently wrong answer or a crash.  Each trial
 * runs in a child. */
static int fault_warnings;
static void fault_warn(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
  fault_warnings++;
}

static void test_index_and_manifest_faults(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 600, DIM, 31);
  corpus_put(db, &c, 0, 600, 100);
  CHECK(vlm_db_checkpoint(db));
  vlm_db_close(db);
  db = open_db(t.dir);
  char *want = index_answers(db, &c);
  assert_non_null(want);
  vlm_db_close(db);
  /* the files: both index checkpoints, the live bitmaps and the
   * manifest */
  char files[4][PATH_MAX];
  int nfiles = 0;
  DIR *d = opendir(t.dir);
  struct dirent *e;
  while ((e = readdir(d)))
    if (strstr(e->d_name, ".faiss") || strstr(e->d_name, ".bits") ||
        !strcmp(e->d_name, "manifest.json"))
      snprintf(files[nfiles++], PATH_MAX, "%s/%s", t.dir, e->d_name);
  closedir(d);
  assert_int_equal(nfiles, 4);
  rng_state = 9191;
  for (int f = 0; f < nfiles; f++) {
    char orig[PATH_MAX + 8], cmd[3 * PATH_MAX];
    struct stat st;
    snprintf(orig, sizeof orig, "%s.orig", files[f]);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", files[f], orig);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(stat(files[f], &st), 0);
    flip_tally n = {0};
    const int trials = 60;
    for (int trial = 0; trial < trials; trial++) {
      snprintf(cmd, sizeof cmd, "cp '%s' '%s'", orig, files[f]);
      assert_int_equal(system(cmd), 0);
      off_t at = (off_t)(rng_next() % (uint64_t)st.st_size);
      int bit = (int)(rng_next() % 8);
      if (trial % 6 == 5) /* one trial in six truncates instead */
        assert_int_equal(truncate(files[f], at), 0);
      else
        flip_bit(files[f], at, bit);
      pid_t pid = fork_trial();
      if (pid == 0) {
        /* 0: caught, 1: identical, 2: silently wrong */
        vlm_db_open_options o = {.readonly = 1, .warn = fault_warn};
        vlm_db *dd = NULL;
        fault_warnings = 0;
        if (vlm_db_open(t.dir, &o, &dd) != 0)
          _exit(0);
        /* (a read-only open reads an index file at its first use) */
        if (vlm_db_verify(dd) != 0)
          _exit(0);
        char *got = index_answers(dd, &c);
        if (!got)
          _exit(0);
        int rebuilt = fault_warnings > 0;
        /* a fresh graph: held to the exact answers; a refused live
         * file leaves the graph as it was: the same answers */
        if (rebuilt && !strstr(files[f], ".bits"))
          _exit(0);
        _exit(strcmp(got, want) ? 2 : 1);
      }
      tally_trial(pid, trial, at, bit, &n);
    }
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", orig, files[f]);
    assert_int_equal(system(cmd), 0);
    print_message("%d bit flips and truncations in %s: %d caught, %d "
                  "harmless, %d silently wrong, %d crashed\n", trials,
                  strrchr(files[f], '/') + 1, n.caught, n.same, n.silent,
                  n.crashed);
    assert_int_equal(n.silent, 0);
    assert_int_equal(n.crashed, 0);
  }
  /* a rebuilt index answers as the exact search does (recall, not bits) */
  db = open_db(t.dir);
  check_targets(db, &c, NULL, 0, 0.95);
  vlm_db_close(db);
  free(want);
  corpus_free(&c);
  tmp_free(&t);
}

/* ---- the live bitmaps a checkpoint saves (db/livebits.c) --------------- */

static int live_walks; /* warnings that open read every vector record */
static int other_warnings;
static void live_warn(void *arg, const char *msg) {
  (void)arg;
  if (strstr(msg, "live bitmaps") && strstr(msg, "reading every vector"))
    live_walks++;
  else
    other_warnings++;
}

/* The live file the manifest of dir names, into name (cap bytes): 0, or
 * -1 when there is none. */
static int live_file_of(const char *dir, char *name, size_t cap) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  json_error_t je;
  json_t *root = json_load_file(path, 0, &je), *f;
  int rc = -1;
  if (root && (f = json_object_get(json_object_get(json_object_get(root,
                                                                   "index"),
                                                   "live"),
                                   "file")) &&
      json_is_string(f)) {
    snprintf(name, cap, "%s", json_string_value(f));
    rc = 0;
  }
  json_decref(root);
  return rc;
}

/* Open dir (read-write: a crashed writer's SQLite is replayed), expecting
 * the live file to be used (walk 0) or refused with a warning (walk 1);
 * verify (every vector record against the bitmaps and counts) and return
 * the stat and the index's answers. */
static char *open_answers(const char *dir, const corpus *c, int walk,
                          vlm_db_info *info) {
  vlm_db_open_options o = {.warn = live_warn};
  vlm_db *db = NULL;
  live_walks = other_warnings = 0;
  CHECK(vlm_db_open(dir, &o, &db));
  assert_int_equal(live_walks, walk);
  CHECK(vlm_db_verify(db));
  CHECK(vlm_db_stat(db, info));
  char *a = index_answers(db, c);
  assert_non_null(a);
  vlm_db_close(db);
  return a;
}

/* dir opened as it is (walk: expecting its live file refused) and a copy
 * of dir with the live file truncated (so open reads every vector
 * record) answer alike.  Both opens are read-write and close with a
 * checkpoint: dir moves on. */
static void same_as_walk(const tmp *t, const corpus *c, int walk) {
  char walkdir[160], name[128], path[PATH_MAX], cmd[512];
  snprintf(walkdir, sizeof walkdir, "%s/walk", t->root);
  rm_rf(walkdir);
  snprintf(cmd, sizeof cmd, "cp -a '%s' '%s'", t->dir, walkdir);
  assert_int_equal(system(cmd), 0);
  assert_int_equal(live_file_of(walkdir, name, sizeof name), 0);
  snprintf(path, sizeof path, "%s/%s", walkdir, name);
  if (access(path, F_OK) == 0)
    assert_int_equal(truncate(path, 10), 0);
  vlm_db_info a, b;
  char *got = open_answers(t->dir, c, walk, &a);
  char *want = open_answers(walkdir, c, 1, &b);
  assert_string_equal(got, want);
  assert_int_equal(a.items, b.items);
  assert_int_equal(a.image_vectors, b.image_vectors);
  assert_int_equal(a.text_vectors, b.text_vectors);
  assert_int_equal(a.index_vectors, b.index_vectors);
  free(got);
  free(want);
  rm_rf(walkdir);
}

/* A writer child: puts (new keys and replacements), deletes and
 * checkpoints on dir until killed. */
static void live_writer(const char *dir, const corpus *c, uint64_t seed) {
  vlm_db *db = NULL;
  if (vlm_db_open(dir, NULL, &db) != 0)
    _exit(3);
  rng_state = seed;
  for (int round = 0;; round++) {
    vlm_item items[16];
    int n = 0;
    for (int j = 0; j < 16; j++) {
      int i = (int)(rng_next() % (uint64_t)c->n);
      int dup = 0;
      for (int k = 0; k < n; k++)
        dup |= !strcmp(items[k].key, c->key[i]);
      if (!dup)
        items[n++] = corpus_item(c, i);
    }
    if (vlm_db_put(db, items, n, VLM_PUT_UPSERT, NULL) != 0)
      _exit(4);
    const char *del[4];
    for (int j = 0; j < 4; j++)
      del[j] = c->key[rng_next() % (uint64_t)c->n];
    if (vlm_db_delete(db, del, 4, NULL) != 0)
      _exit(5);
    if (round % 5 == 4 && vlm_db_checkpoint(db) != 0)
      _exit(6);
  }
}

/* Open reads the saved bitmaps and replays the batches after them instead
 * of every vector record; whatever it cannot trust (a writer killed
 * mid-write, a damaged, missing or stale file) it refuses with a warning
 * and walks the records as before.  Either way vlm_db_verify holds and
 * the answers are the walk's. */
static void test_live_bitmaps(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 900, DIM, 4242);
  corpus_put(db, &c, 0, 500, 100);
  const char *del[] = {c.key[3], c.key[40], c.key[41]};
  CHECK(vlm_db_delete(db, del, 3, NULL));
  CHECK(vlm_db_checkpoint(db));
  char name[128], old[PATH_MAX], path[PATH_MAX], cmd[3 * PATH_MAX];
  assert_int_equal(live_file_of(t.dir, name, sizeof name), 0);
  snprintf(path, sizeof path, "%s/%s", t.dir, name);
  snprintf(old, sizeof old, "%s/old.bits", t.root);
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", path, old);
  assert_int_equal(system(cmd), 0);
  /* after the checkpoint: new items, replacements, deletes on both sides
   * of it; a child writes them and dies without closing */
  vlm_db_close(db); /* (its checkpoint is the one above: nothing new) */
  pid_t pid = fork_trial();
  if (pid == 0) {
    vlm_db *w = NULL;
    if (vlm_db_open(t.dir, NULL, &w) != 0)
      _exit(3);
    vlm_item it[100];
    for (int i = 500; i < 600; i++)
      it[i - 500] = corpus_item(&c, i);
    const char *d2[] = {c.key[7], c.key[520], c.key[41]};
    if (vlm_db_put(w, it, 100, 0, NULL) ||
        vlm_db_put(w, it + 10, 20, VLM_PUT_UPSERT, NULL) || /* replaced */
        vlm_db_delete(w, d2, 3, NULL))
      _exit(4);
    _exit(0); /* no close: no checkpoint */
  }
  int ws;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  same_as_walk(&t, &c, 0);

  /* a damaged file (one bit of the bitmaps, a truncation) and a missing
   * one */
  assert_int_equal(live_file_of(t.dir, name, sizeof name), 0);
  snprintf(path, sizeof path, "%s/%s", t.dir, name);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_true(st.st_size > 64);
  flip_bit(path, 64 + (st.st_size - 64) / 3, 2);
  same_as_walk(&t, &c, 1);
  assert_int_equal(live_file_of(t.dir, name, sizeof name), 0);
  snprintf(path, sizeof path, "%s/%s", t.dir, name);
  assert_int_equal(truncate(path, 100), 0);
  same_as_walk(&t, &c, 1);
  assert_int_equal(live_file_of(t.dir, name, sizeof name), 0);
  snprintf(path, sizeof path, "%s/%s", t.dir, name);
  assert_int_equal(unlink(path), 0);
  same_as_walk(&t, &c, 1);

  /* stale: an older checkpoint's file under the current name (whole, its
   * checksums right, but another batch) */
  assert_int_equal(live_file_of(t.dir, name, sizeof name), 0);
  snprintf(path, sizeof path, "%s/%s", t.dir, name);
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", old, path);
  assert_int_equal(system(cmd), 0);
  same_as_walk(&t, &c, 1);
  /* the checkpoint at the close after a walk wrote a sound file again */
  same_as_walk(&t, &c, 0);

  /* kill -9 of a writer mid-write (puts, replacements, deletes,
   * checkpoints), then open: the live file and the batches after it give
   * the walk's bitmaps */
  for (int trial = 0; trial < 8; trial++) {
    pid = fork_trial();
    if (pid == 0)
      live_writer(t.dir, &c, 1000 + (uint64_t)trial);
    struct timespec ts = {0, (long)(20 + 37 * trial) * 1000000L};
    nanosleep(&ts, NULL);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFSIGNALED(ws));
    same_as_walk(&t, &c, 0);
  }
  unlink(old);
  corpus_free(&c);
  tmp_free(&t);
}

/* The file a manifest's checkpoint entry of modality mod names, into
 * name: 0, or -1 when there is none. */
static int ckpt_file_of(const char *dir, const char *mod, char *name,
                        size_t cap) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  json_error_t je;
  json_t *root = json_load_file(path, 0, &je), *f;
  int rc = -1;
  if (root && (f = json_object_get(json_object_get(json_object_get(root,
                                                                   "index"),
                                                   mod),
                                   "file")) &&
      json_is_string(f)) {
    snprintf(name, cap, "%s", json_string_value(f));
    rc = 0;
  }
  json_decref(root);
  return rc;
}

/* Threads that make the first searches of a read-only handle together:
 * each loads nothing or waits for the one that loads (vlm__vindex_ensure),
 * and all get the answers of one thread searching alone. */
typedef struct {
  vlm_db *db;
  const corpus *c;
  char *got; /* index_answers */
} lazy_job;

static void *lazy_searcher(void *arg) {
  lazy_job *j = arg;
  j->got = index_answers(j->db, j->c);
  return NULL;
}

/* A read-only open reads no index file: the first search does, from the
 * file held open since the open, with the ids deleted after the
 * checkpoint taken out and the tail added, even when a writer in another
 * process has meanwhile replaced (unlinked) that file, pruned the log and
 * written more.  Flat has no file (it is built from the vectors table at
 * the first search, as of the store then).  Flat answers as the exact
 * oracle does; HNSW keeps its recall and never returns a deleted item. */
static void test_lazy_index_load(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    tmp t;
    tmp_make(&t);
    vlm_db *db = make_db(t.dir, f ? "HNSW32" : "Flat", DIM);
    corpus c;
    corpus_make(&c, 900, DIM, 515 + (uint64_t)f);
    corpus_put(db, &c, 0, 600, 100);
    const char *d1[] = {c.key[5], c.key[6]};
    CHECK(vlm_db_delete(db, d1, 2, NULL));
    CHECK(vlm_db_checkpoint(db));
    vlm_db_close(db);
    /* after the checkpoint, left unindexed by a writer that dies */
    pid_t pid = fork_trial();
    if (pid == 0) {
      vlm_db *w = NULL;
      vlm_item it[100];
      for (int i = 600; i < 700; i++)
        it[i - 600] = corpus_item(&c, i);
      const char *d2[] = {c.key[7], c.key[650], c.key[300]};
      if (vlm_db_open(t.dir, NULL, &w) || vlm_db_put(w, it, 100, 0, NULL) ||
          vlm_db_delete(w, d2, 3, NULL))
        _exit(1);
      _exit(0);
    }
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    char img[128], path[PATH_MAX];
    assert_int_equal(ckpt_file_of(t.dir, "image", img, sizeof img), f ? 0 : -1);

    /* what the index side holds (vectors, tombstones, pending) is what a
     * writer's open, which loads the files at once, finds */
    vlm_db_open_options o = {.readonly = 1, .warn = count_warning};
    vlm_db *ro = NULL;
    vlm_db_info lazy;
    CHECK(vlm_db_open(t.dir, &o, &ro));
    CHECK(vlm_db_stat(ro, &lazy));
    vlm_db_close(ro);
    if (!f) /* Flat removes what later batches deleted */
      assert_int_equal(lazy.tombstones, 0);
    pid = fork_trial();
    if (pid == 0) {
      vlm_db *w = NULL;
      vlm_db_info eager;
      if (vlm_db_open(t.dir, NULL, &w) || vlm_db_stat(w, &eager))
        _exit(1);
      _exit(eager.index_vectors == lazy.index_vectors &&
                    eager.tombstones == lazy.tombstones &&
                    eager.pending_vectors == lazy.pending_vectors &&
                    eager.image_vectors == lazy.image_vectors &&
                    eager.text_vectors == lazy.text_vectors
                ? 0
                : 2); /* (no close: no checkpoint) */
    }
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    warnings = 0;
    CHECK(vlm_db_open(t.dir, &o, &ro));
    assert_int_equal(warnings, 0);
    /* a writer beside it replaces the checkpoint and writes more */
    pid = fork_trial();
    if (pid == 0) {
      vlm_db *w = NULL;
      vlm_item it[200];
      for (int i = 700; i < 900; i++)
        it[i - 700] = corpus_item(&c, i);
      const char *d3[] = {c.key[8], c.key[660], c.key[750], c.key[5]};
      if (vlm_db_open(t.dir, NULL, &w) || vlm_db_put(w, it, 200, 0, NULL) ||
          vlm_db_delete(w, d3, 4, NULL) || vlm_db_checkpoint(w))
        _exit(1);
      vlm_db_close(w);
      _exit(0);
    }
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    if (f) {
      snprintf(path, sizeof path, "%s/%s", t.dir, img);
      assert_int_equal(access(path, F_OK), -1); /* gone: read from the fd */
    }
    int alive[900];
    for (int i = 0; i < 900; i++)
      alive[i] = i != 5 && i != 6 && i != 7 && i != 8 && i != 300 &&
                 i != 650 && i != 660 && i != 750;
    check_targets(ro, &c, alive, 0, f ? 0.95 : 1.0);
    check_targets(ro, &c, alive, 1, 1.0);
    assert_int_equal(warnings, 0);
    CHECK(vlm_db_verify(ro));
    vlm_db_close(ro);
    /* four threads making a fresh handle's first searches at once answer
     * as one thread alone on another fresh handle */
    CHECK(vlm_db_open(t.dir, &o, &ro));
    char *alone = index_answers(ro, &c);
    assert_non_null(alone);
    vlm_db_close(ro);
    CHECK(vlm_db_open(t.dir, &o, &ro));
    lazy_job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
      jobs[i] = (lazy_job){ro, &c, NULL};
      assert_int_equal(pthread_create(&th[i], NULL, lazy_searcher, &jobs[i]),
                       0);
    }
    for (int i = 0; i < 4; i++) {
      assert_int_equal(pthread_join(th[i], NULL), 0);
      assert_non_null(jobs[i].got);
      assert_string_equal(jobs[i].got, alone);
      free(jobs[i].got);
    }
    free(alone);
    vlm_db_close(ro);
    corpus_free(&c);
    tmp_free(&t);
  }
}

/* What the SQLite side answers: filtered and hybrid searches, as one
 * string of keys per query.  NULL on an error. */
static char *sql_answers(vlm_db *db, const corpus *c) {
  static const char *filters[] = {
      "category = 'animals'", "category = 'cars' OR category = 'art'",
      "year > 2005", "price < 20", "year BETWEEN 1995 AND 2000 AND "
      "category != 'food'", "key >= 'item-00300'", "price * 2 > year - 1900"};
  static const char *texts[] = {"river", "cat house", "apple"};
  size_t cap = 1 << 16, len = 0;
  char *out = malloc(cap);
  if (!out)
    return NULL;
  out[0] = '\0';
  int nq = (int)(sizeof filters / sizeof *filters + sizeof texts / sizeof *texts);
  for (int q = 0; q < nq; q++) {
    vlm_search_options o = {0};
    o.k = 40;
    o.exact = 1;
    const float *v = c->img + (size_t)(q * 7 % c->n) * DIM;
    if (q < (int)(sizeof filters / sizeof *filters))
      o.filter = filters[q];
    else
      o.hybrid_text = texts[q - (int)(sizeof filters / sizeof *filters)];
    vlm_hit *hits = NULL;
    int nh = 0;
    if (vlm_db_search(db, v, &o, &hits, &nh) != 0) {
      free(out);
      return NULL;
    }
    for (int h = 0; h < nh; h++) {
      if (len + 40 > cap && !(out = realloc(out, cap *= 2)))
        return NULL;
      len += (size_t)snprintf(out + len, cap - len, "%s ", hits[h].key);
    }
    len += (size_t)snprintf(out + len, cap - len, "| ");
    vlm_hits_free(hits, nh);
  }
  return out;
}

/* A trial child over a damaged meta.sqlite: exits 0 (caught: an error or
 * verify failing), 1 (the same answers as before, verify passing) or 2
 * (silently wrong answers). */
static void sql_trial(const char *dir, const corpus *c, const char *want) {
  vlm_db_open_options o = {.readonly = 1};
  vlm_db *d = NULL;
  if (vlm_db_open(dir, &o, &d) != 0)
    _exit(0);
  char *got = sql_answers(d, c);
  if (!got)
    _exit(0);
  if (strcmp(got, want) != 0)
    _exit(2);
  _exit(vlm_db_verify(d) != 0 ? 0 : 1);
}

/* Single bit flips anywhere in meta.sqlite (its pages carry checksums,
 * db/sqlvfs.c): every trial ends in a clear error or in the same answers
 * to filtered and hybrid searches as before; never a silently wrong
 * filter answer.  Each trial runs in a child, as above. */
static void test_sql_bit_flips_are_caught(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 400, DIM, 29);
  corpus_put(db, &c, 0, 400, 100);
  char *want = sql_answers(db, &c);
  assert_non_null(want);
  vlm_db_close(db); /* the last connection checkpoints the WAL */
  char data[PATH_MAX], work[PATH_MAX + 8], wal[PATH_MAX + 8];
  char cmd[4 * PATH_MAX];
  snprintf(data, sizeof data, "%s/meta.sqlite", t.dir);
  snprintf(wal, sizeof wal, "%s-wal", data);
  struct stat st;
  assert_true(stat(wal, &st) != 0 || st.st_size == 0);
  unsigned char hdr[100];
  int fd = open(data, O_RDONLY);
  assert_true(fd >= 0);
  assert_int_equal(pread(fd, hdr, sizeof hdr, 0), (ssize_t)sizeof hdr);
  close(fd);
  assert_int_equal(hdr[20], 8); /* the reserved bytes of the checksums */
  snprintf(work, sizeof work, "%s.orig", data);
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", data, work);
  assert_int_equal(system(cmd), 0);
  assert_int_equal(stat(data, &st), 0);
  flip_tally n = {0};
  rng_state = 777;
  const int trials = 200;
  for (int trial = 0; trial < trials; trial++) {
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", work, data);
    assert_int_equal(system(cmd), 0);
    off_t at = (off_t)(rng_next() % (uint64_t)st.st_size);
    int bit = (int)(rng_next() % 8);
    flip_bit(data, at, bit);
    pid_t pid = fork_trial();
    if (pid == 0)
      sql_trial(t.dir, &c, want);
    tally_trial(pid, trial, at, bit, &n);
  }
  print_message("%d bit flips in meta.sqlite: %d caught, %d harmless, %d "
                "silently wrong, %d crashed\n", trials, n.caught, n.same,
                n.silent, n.crashed);
  assert_int_equal(n.silent, 0);
  assert_int_equal(n.crashed, 0);
  assert_true(n.caught > trials / 2);
  /* and truncations, at page boundaries and inside pages */
  flip_tally tr = {0};
  for (int trial = 0; trial < 30; trial++) {
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", work, data);
    assert_int_equal(system(cmd), 0);
    off_t at = (off_t)(rng_next() % (uint64_t)st.st_size);
    if (trial % 2)
      at -= at % 4096;
    assert_int_equal(truncate(data, at), 0);
    pid_t pid = fork_trial();
    if (pid == 0)
      sql_trial(t.dir, &c, want);
    tally_trial(pid, trial, at, -1, &tr);
  }
  print_message("30 truncations of meta.sqlite: %d caught, %d harmless, %d "
                "silently wrong, %d crashed\n", tr.caught, tr.same, tr.silent,
                tr.crashed);
  assert_int_equal(tr.silent, 0);
  assert_int_equal(tr.crashed, 0);
  /* the sound file answers as before */
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", work, data);
  assert_int_equal(system(cmd), 0);
  db = open_db(t.dir);
  char *again = sql_answers(db, &c);
  assert_non_null(again);
  assert_string_equal(again, want);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  free(again);
  free(want);
  corpus_free(&c);
  tmp_free(&t);
}

/* A value changed inside three records (still valid JSON, so only the
 * checksum can tell): verify names one, salvage copies the other 397 into
 * a new database that verifies and holds exactly what was written, and
 * lists the three it left behind by key. */
typedef struct {
  int n;
  char keys[8][32];
} lost_list;

static void on_lost(void *arg, const char *key, uint64_t id,
                    const char *why) {
  lost_list *l = arg;
  (void)id;
  assert_non_null(key);
  assert_non_null(strstr(why, "checksum"));
  if (l->n < 8)
    snprintf(l->keys[l->n], sizeof l->keys[0], "%s", key);
  l->n++;
}

static void test_checksums_and_salvage(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 400, DIM, 31);
  corpus_put(db, &c, 0, 400, 100);
  vlm_db_close(db);
  /* an undamaged database salvages whole */
  char out[PATH_MAX], data[PATH_MAX];
  snprintf(out, sizeof out, "%s-whole", t.dir);
  vlm_db_salvage_result res;
  lost_list l = {0};
  CHECK(vlm_db_salvage(t.dir, out, on_lost, &l, &res));
  assert_int_equal(res.records, 400);
  assert_int_equal(res.saved, 400);
  assert_int_equal(res.lost, 0);
  rm_rf(out);
  /* change one digit of the price inside three items' meta */
  snprintf(data, sizeof data, "%s/payload.lmdb/data.mdb", t.dir);
  FILE *f = fopen(data, "r+b");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  char *buf = malloc((size_t)size);
  fseek(f, 0, SEEK_SET);
  assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
  const int victims[3] = {10, 200, 333};
  for (int v = 0; v < 3; v++) {
    /* every copy: pages LMDB freed may still hold an older one */
    const char *m = c.meta[victims[v]];
    int copies = 0;
    for (char *at = buf; (at = memmem(at, (size_t)(buf + size - at), m,
                                      strlen(m)));
         at++, copies++) {
      char *digit = strstr(at, "\"price\": ") + 9;
      char was = *digit;
      *digit = was == '9' ? '8' : (char)(was + 1);
      fseek(f, (long)(digit - buf), SEEK_SET);
      fputc(*digit, f);
      *digit = was; /* so the search finds the next copy as written */
    }
    assert_true(copies > 0);
  }
  fclose(f);
  free(buf);
  db = open_db(t.dir);
  EXPECT_ERR(VLM_ECORRUPT, vlm_db_verify(db));
  assert_non_null(strstr(vlm_errmsg(), "checksum mismatch"));
  /* get refuses the damaged records, and only them */
  for (int i = 0; i < c.n; i++) {
    vlm_record *rec = NULL;
    int rc = vlm_db_get(db, c.key[i], &rec);
    if (i == 10 || i == 200 || i == 333) {
      assert_int_equal(rc, VLM_ECORRUPT);
      assert_non_null(strstr(vlm_errmsg(), "checksum mismatch"));
    } else {
      CHECK(rc);
      vlm_record_free(rec);
    }
  }
  vlm_db_close(db);
  snprintf(out, sizeof out, "%s-saved", t.dir);
  memset(&l, 0, sizeof l);
  CHECK(vlm_db_salvage(t.dir, out, on_lost, &l, &res));
  assert_int_equal(res.records, 400);
  assert_int_equal(res.saved, 397);
  assert_int_equal(res.lost, 3);
  assert_int_equal(l.n, 3);
  for (int v = 0; v < 3; v++)
    assert_string_equal(l.keys[v], c.key[victims[v]]);
  vlm_db *sdb = open_db(out);
  CHECK(vlm_db_verify(sdb));
  for (int i = 0; i < c.n; i++) {
    vlm_record *rec = NULL;
    int rc = vlm_db_get(sdb, c.key[i], &rec);
    if (i == 10 || i == 200 || i == 333) {
      assert_int_equal(rc, VLM_ENOTFOUND);
      continue;
    }
    CHECK(rc);
    assert_string_equal(rec->caption, c.caption[i]);
    assert_string_equal(rec->meta_json, c.meta[i]);
    assert_int_equal(!rec->image_vec, !c.has_img[i]);
    assert_int_equal(!rec->text_vec, !c.has_txt[i]);
    vlm_record_free(rec);
  }
  /* filters come back from the rebuilt metadata */
  vlm_search_options o = {.k = 400, .filter = "year >= 2000", .exact = 1};
  vlm_hit *hits = NULL;
  int nh = 0;
  CHECK(vlm_db_search(sdb, c.img, &o, &hits, &nh));
  int want = 0;
  for (int i = 0; i < c.n; i++)
    want += c.year[i] >= 2000 && i != 10 && i != 200 && i != 333;
  assert_int_equal(nh, want);
  vlm_hits_free(hits, nh);
  vlm_db_close(sdb);
  rm_rf(out);
  corpus_free(&c);
  tmp_free(&t);
}

/* A damaged tree page, not a damaged record: the first node offset of an
 * items leaf page points out of the page (LMDB
 * itself would read wherever it points).  verify names the page and the
 * next step; salvage steps over the page, counts what it held as lost and
 * copies every other record, exactly as written. */
typedef struct {
  int with_key, without_key;
  char why[512];
} lost_count;

static void on_lost_count(void *arg, const char *key, uint64_t id,
                          const char *why) {
  lost_count *l = arg;
  (void)id;
  if (key) {
    l->with_key++;
  } else {
    l->without_key++;
    snprintf(l->why, sizeof l->why, "%s", why);
  }
}

static void test_salvage_steps_over_a_damaged_page(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 400, DIM, 37);
  corpus_put(db, &c, 0, 400, 400); /* one batch: no freed page holds a copy */
  vlm_db_close(db);
  char data[PATH_MAX], out[PATH_MAX];
  snprintf(data, sizeof data, "%s/payload.lmdb/data.mdb", t.dir);
  FILE *f = fopen(data, "r+b");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  char *buf = malloc((size_t)size);
  fseek(f, 0, SEEK_SET);
  assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
  const int victim = 250;
  /* a record holds its key, then its caption: find the victim's record,
   * not its key in the keys tree or the same caption on another item */
  char needle[256];
  snprintf(needle, sizeof needle, "%s%s", c.key[victim], c.caption[victim]);
  char *at = memmem(buf, (size_t)size, needle, strlen(needle));
  assert_non_null(at);
  long page = (long)(at - buf) / 4096;
  unsigned char bad[2] = {0xfe, 0xff}; /* mp_ptrs[0] = 0xfffe */
  fseek(f, page * 4096 + 16, SEEK_SET);
  assert_int_equal(fwrite(bad, 1, 2, f), 2);
  fclose(f);
  free(buf);
  vlm_db_open_options ro = {.readonly = 1};
  CHECK(vlm_db_open(t.dir, &ro, &db));
  EXPECT_ERR(VLM_ECORRUPT, vlm_db_verify(db));
  char want[64];
  snprintf(want, sizeof want, "page %ld of the 'items' tree", page);
  assert_non_null(strstr(vlm_errmsg(), want));
  assert_non_null(strstr(vlm_errmsg(), "vlmdb salvage"));
  vlm_db_close(db);
  snprintf(out, sizeof out, "%s-saved", t.dir);
  vlm_db_salvage_result res;
  lost_count l = {0};
  CHECK(vlm_db_salvage(t.dir, out, on_lost_count, &l, &res));
  assert_int_equal(res.records, 400);
  assert_true(res.lost >= 1 && res.lost < 400);
  assert_int_equal(res.saved + res.lost, 400);
  assert_int_equal(l.with_key, 0);
  assert_int_equal(l.without_key, 1);
  assert_non_null(strstr(l.why, want));
  vlm_db *sdb = open_db(out);
  CHECK(vlm_db_verify(sdb));
  /* what is missing is the page's run of ids (keys are in id order); not
   * always the victim's: a page split leaves stale copies of the nodes it
   * moved in the old page's free space, and the search may find one */
  int found = 0, first_lost = -1, last_lost = -1;
  for (int i = 0; i < c.n; i++) {
    vlm_record *rec = NULL;
    int rc = vlm_db_get(sdb, c.key[i], &rec);
    if (rc == VLM_ENOTFOUND) {
      if (first_lost < 0)
        first_lost = i;
      last_lost = i;
      continue;
    }
    CHECK(rc);
    found++;
    assert_string_equal(rec->caption, c.caption[i]);
    assert_string_equal(rec->meta_json, c.meta[i]);
    assert_int_equal(!rec->image_vec, !c.has_img[i]);
    vlm_record_free(rec);
  }
  assert_int_equal(found, res.saved);
  assert_int_equal(last_lost - first_lost + 1, res.lost);
  vlm_db_close(sdb);
  rm_rf(out);
  corpus_free(&c);
  tmp_free(&t);
}

static void test_open_refusals(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, NULL, DIM);
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_string_equal(info.index_factory, "HNSW32");
  assert_int_equal(info.format_version, 1);
  /* In this process a second handle beside the writer is refused (LMDB
   * keeps one environment per process); another process's second writer
   * is refused naming the writer (its pid and command), and its reader is
   * welcome. */
  vlm_db *other = NULL;
  vlm_db_open_options ro = {.readonly = 1};
  EXPECT_ERR(VLM_EBUSY, vlm_db_open(t.dir, NULL, &other));
  assert_non_null(strstr(vlm_errmsg(), "already open in this process"));
  EXPECT_ERR(VLM_EBUSY, vlm_db_open(t.dir, &ro, &other));
  assert_non_null(strstr(vlm_errmsg(), "already open in this process"));
  {
    char who[64];
    snprintf(who, sizeof who, "by a writer (pid %d: test_db", (int)getpid());
    pid_t pid = fork_trial();
    if (pid == 0) {
      vlm_db *w = NULL, *r = NULL;
      if (vlm_db_open(t.dir, NULL, &w) != VLM_EBUSY ||
          !strstr(vlm_errmsg(), who) || strstr(vlm_errmsg(), "  "))
        _exit(1);
      if (vlm_db_open(t.dir, &ro, &r) != 0)
        _exit(2);
      vlm_db_close(r);
      _exit(0);
    }
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
      fail_msg("another process: status %d (1: the second writer was not "
               "refused by name, 2: the reader was refused)", ws);
  }
  vlm_db_close(db);
  /* Two readers in one process are fine; a writer beside them is not. */
  CHECK(vlm_db_open(t.dir, &ro, &other));
  vlm_db *other2 = NULL;
  CHECK(vlm_db_open(t.dir, &ro, &other2));
  EXPECT_ERR(VLM_EBUSY, vlm_db_open(t.dir, NULL, &db));
  vlm_db_close(other2);
  vlm_db_close(other);

  vlm_db_open_options o = {0};
  o.expect_model_id = "another-model";
  EXPECT_ERR(VLM_EMISMATCH, vlm_db_open(t.dir, &o, &db));
  assert_non_null(strstr(vlm_errmsg(), "test-model"));
  o.expect_model_id = "test-model";
  o.expect_dim = DIM * 2;
  EXPECT_ERR(VLM_EMISMATCH, vlm_db_open(t.dir, &o, &db));
  o.expect_dim = DIM;
  CHECK(vlm_db_open(t.dir, &o, &db));
  vlm_db_close(db);

  /* Creating over an existing database is refused. */
  vlm_db_config c = {0};
  c.dim = DIM;
  c.model_id = "m";
  EXPECT_ERR(VLM_EEXISTS, vlm_db_create(t.dir, &c, &db));

  rewrite_manifest(t.dir, "\"format_version\": 1", "\"format_version\": 99");
  EXPECT_ERR(VLM_EVERSION, vlm_db_open(t.dir, NULL, &db));
  assert_non_null(strstr(vlm_errmsg(), "99"));
  rewrite_manifest(t.dir, "\"format_version\": 99", "\"format_version\": 1");
  CHECK(vlm_db_open(t.dir, NULL, &db));
  vlm_db_close(db);

  /* Not a database: an empty directory, a file, a missing path, a
   * manifest that is not vlmdb's, and garbage. */
  char path[256];
  snprintf(path, sizeof path, "%s/empty", t.root);
  assert_int_equal(mkdir(path, 0755), 0);
  EXPECT_ERR(VLM_EFORMAT, vlm_db_open(path, NULL, &db));
  assert_non_null(strstr(vlm_errmsg(), "not a vlmdb database"));
  snprintf(path, sizeof path, "%s/db/meta.sqlite", t.root);
  EXPECT_ERR(VLM_EFORMAT, vlm_db_open(path, NULL, &db));
  snprintf(path, sizeof path, "%s/nothing-here", t.root);
  EXPECT_ERR(VLM_ENOTFOUND, vlm_db_open(path, NULL, &db));
  snprintf(path, sizeof path, "%s/empty/manifest.json", t.root);
  FILE *f = fopen(path, "w");
  fputs("{\"format\": \"something-else\", \"format_version\": 1}", f);
  fclose(f);
  snprintf(path, sizeof path, "%s/empty", t.root);
  EXPECT_ERR(VLM_EFORMAT, vlm_db_open(path, NULL, &db));
  snprintf(path, sizeof path, "%s/empty/manifest.json", t.root);
  f = fopen(path, "w");
  fputs("\x01\x02garbage", f);
  fclose(f);
  snprintf(path, sizeof path, "%s/empty", t.root);
  EXPECT_ERR(VLM_EFORMAT, vlm_db_open(path, NULL, &db));

  /* Bad configurations. */
  snprintf(path, sizeof path, "%s/new", t.root);
  c.dim = 0;
  EXPECT_ERR(VLM_EINVAL, vlm_db_create(path, &c, &db));
  c.dim = DIM;
  c.model_id = NULL;
  EXPECT_ERR(VLM_EINVAL, vlm_db_create(path, &c, &db));
  c.model_id = "m";
  c.index_factory = "Bogus42";
  EXPECT_ERR(VLM_EINVAL, vlm_db_create(path, &c, &db));
  c.index_factory = NULL;
  vlm_field bad[] = {{"key", VLM_FIELD_TEXT}};
  c.fields = bad;
  c.nfields = 1;
  EXPECT_ERR(VLM_EINVAL, vlm_db_create(path, &c, &db));
  vlm_field twice[] = {{"year", VLM_FIELD_INT}, {"YEAR", VLM_FIELD_INT}};
  c.fields = twice;
  c.nfields = 2;
  EXPECT_ERR(VLM_EINVAL, vlm_db_create(path, &c, &db));
  assert_int_equal(access(path, F_OK), -1); /* nothing left behind */

  vlm_field fp;
  CHECK(vlm_field_parse("category:text", &fp));
  assert_string_equal(fp.name, "category");
  assert_int_equal(fp.type, VLM_FIELD_TEXT);
  vlm_field fp2;
  CHECK(vlm_field_parse("year:int", &fp2));
  assert_string_equal(fp.name, "category"); /* still valid */
  assert_string_equal(fp2.name, "year");
  EXPECT_ERR(VLM_EINVAL, vlm_field_parse("year", &fp));
  EXPECT_ERR(VLM_EINVAL, vlm_field_parse("year:date", &fp));
  EXPECT_ERR(VLM_EINVAL, vlm_field_parse("1abc:int", &fp));
  EXPECT_ERR(VLM_EINVAL, vlm_field_parse("select:int", &fp));

  /* Read-only: searches work, writes are refused. */
  o.readonly = 1;
  o.expect_dim = 0;
  CHECK(vlm_db_open(t.dir, &o, &db));
  float v[DIM];
  unit(v, DIM);
  vlm_item it = {0};
  it.key = "x";
  it.image_vec = v;
  EXPECT_ERR(VLM_ESTATE, vlm_db_put(db, &it, 1, 0, NULL));
  EXPECT_ERR(VLM_ESTATE, vlm_db_checkpoint(db));
  vlm_hit *hits;
  int nh;
  vlm_search_options so = {0};
  so.k = 5;
  so.filter = "year > 3";
  CHECK(vlm_db_search(db, v, &so, &hits, &nh));
  assert_int_equal(nh, 0);
  vlm_hits_free(hits, nh);
  vlm_db_close(db);
  tmp_free(&t);
}

static void test_bad_input_fails_whole_batch(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  vlm_db_close(db);
  vlm_db_open_options oo = {0};
  oo.max_payload = 1000;
  CHECK(vlm_db_open(t.dir, &oo, &db));
  float good[DIM], nan_v[DIM], inf_v[DIM], zero[DIM] = {0};
  unit(good, DIM);
  memcpy(nan_v, good, sizeof good);
  memcpy(inf_v, good, sizeof good);
  nan_v[3] = NAN;
  inf_v[7] = INFINITY;
  vlm_item ok = {0};
  ok.key = "ok";
  ok.image_vec = good;
  char longkey[600];
  memset(longkey, 'k', sizeof longkey - 1);
  longkey[sizeof longkey - 1] = '\0';
  char bigcap[2000];
  memset(bigcap, 'c', sizeof bigcap - 1);
  bigcap[sizeof bigcap - 1] = '\0';
  struct {
    int err;
    vlm_item bad;
    const char *msg;
  } cases[] = {
      {VLM_ENUMERIC, {.key = "nan", .image_vec = nan_v}, "not finite"},
      {VLM_ENUMERIC, {.key = "inf", .text_vec = inf_v}, "not finite"},
      {VLM_EINVAL, {.key = "zero", .image_vec = zero}, "zero"},
      {VLM_EINVAL, {.key = "novec"}, "no image or text vector"},
      {VLM_EINVAL, {.key = "", .image_vec = good}, "empty"},
      {VLM_EINVAL, {.key = NULL, .image_vec = good}, "empty"},
      {VLM_EINVAL, {.key = longkey, .image_vec = good}, "limit"},
      {VLM_EINVAL, {.key = "bad\xff\xfeutf8", .image_vec = good}, "UTF-8"},
      /* verify calls such a stored record damaged (found by fuzz_put) */
      {VLM_EINVAL, {.key = "cap", .image_vec = good, .caption = "a\xeb"},
       "caption is not valid UTF-8"},
      {VLM_EINVAL, {.key = "src", .image_vec = good,
                    .source = "\xed\xa0\x80.png"}, "source is not valid UTF-8"},
      {VLM_ETOOBIG, {.key = "big", .image_vec = good, .caption = bigcap},
       "exceeds"},
      {VLM_EFORMAT, {.key = "json", .image_vec = good, .meta_json = "{bad"},
       "meta_json"},
      {VLM_EFORMAT, {.key = "arr", .image_vec = good, .meta_json = "[1]"},
       "not an object"},
      {VLM_EINVAL,
       {.key = "type", .image_vec = good, .meta_json = "{\"year\": \"x\"}"},
       "year"},
      {VLM_EINVAL,
       {.key = "type2", .image_vec = good,
        .meta_json = "{\"price\": \"cheap\"}"},
       "price"},
      {VLM_EFORMAT,
       {.key = "png", .image_vec = good, .thumb = "\x89PNG", .thumb_len = 4},
       "JPEG"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    vlm_item batch[2] = {ok, cases[i].bad};
    int written = -1;
    int rc = vlm_db_put(db, batch, 2, 0, &written);
    if (rc != cases[i].err || !strstr(vlm_errmsg(), cases[i].msg))
      fail_msg("case %zu: rc %s (%s), expected %s mentioning \"%s\"", i,
               vlm_errname(rc), vlm_errmsg(), vlm_errname(cases[i].err),
               cases[i].msg);
    assert_int_equal(written, 0);
    assert_int_equal(vlm_db_exists(db, "ok"), 0); /* nothing written */
  }
  /* Duplicate keys in one batch. */
  vlm_item dup[3] = {ok, ok, ok};
  dup[1].key = "other";
  EXPECT_ERR(VLM_EINVAL, vlm_db_put(db, dup, 3, 0, NULL));
  assert_non_null(strstr(vlm_errmsg(), "twice"));
  assert_int_equal(vlm_db_exists(db, "ok"), 0);
  /* Search input. */
  vlm_search_options o = {0};
  vlm_hit *hits;
  int nh;
  o.k = 0; /* 0 = default 10 */
  CHECK(vlm_db_search(db, good, &o, &hits, &nh));
  vlm_hits_free(hits, nh);
  o.k = 10001;
  EXPECT_ERR(VLM_EINVAL, vlm_db_search(db, good, &o, &hits, &nh));
  o.k = 5;
  EXPECT_ERR(VLM_ENUMERIC, vlm_db_search(db, nan_v, &o, &hits, &nh));
  EXPECT_ERR(VLM_EINVAL, vlm_db_search(db, NULL, &o, &hits, &nh));
  o.target = (vlm_target)7;
  EXPECT_ERR(VLM_EINVAL, vlm_db_search(db, good, &o, &hits, &nh));
  o.target = VLM_TARGET_ANY;
  o.hybrid_weight = 2;
  EXPECT_ERR(VLM_EINVAL, vlm_db_search(db, good, &o, &hits, &nh));
  /* After all that, the database is intact and writable. */
  CHECK(vlm_db_put(db, &ok, 1, 0, NULL));
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  tmp_free(&t);
}

/* Full disk: a tiny LMDB map.  Writes fail cleanly with VLM_ENOSPACE,
 * nothing acknowledged is lost, and the failed batch is absent. */
static void test_full_disk(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", 64);
  vlm_db_close(db);
  vlm_db_open_options o = {0};
  o.map_size = 1 << 20; /* 1 MiB */
  o.warn = count_warning;
  CHECK(vlm_db_open(t.dir, &o, &db));
  corpus c;
  corpus_make(&c, 2000, 64, 51);
  int acked = 0, rc = 0;
  vlm_item items[50];
  for (int b = 0; b < 40 && rc == 0; b++) {
    for (int j = 0; j < 50; j++)
      items[j] = corpus_item(&c, b * 50 + j);
    rc = vlm_db_put(db, items, 50, 0, NULL);
    if (rc == 0)
      acked += 50;
  }
  assert_int_equal(rc, VLM_ENOSPACE);
  assert_true(acked > 0);
  int failed_from = acked;
  /* A later smaller write may still fail; the handle stays usable. */
  vlm_hit *hits;
  int nh;
  vlm_search_options so = {0};
  so.k = 3;
  CHECK(vlm_db_search(db, c.img, &so, &hits, &nh));
  vlm_hits_free(hits, nh);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  db = open_db(t.dir);
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.items, acked);
  for (int i = 0; i < acked; i++)
    assert_int_equal(vlm_db_exists(db, c.key[i]), 1);
  for (int i = failed_from; i < failed_from + 50; i++)
    assert_int_equal(vlm_db_exists(db, c.key[i]), 0);
  CHECK(vlm_db_verify(db));
  /* With room again, writing resumes. */
  corpus_put(db, &c, failed_from, failed_from + 50, 50);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* Full disk for real, when this process may mount a small tmpfs: every
 * store (LMDB, SQLite WAL, index files, manifest) can meet ENOSPC.  The
 * write fails with a clear error, then the filesystem is grown (remount)
 * and the reopened database holds every acknowledged item. */
static void test_full_disk_tmpfs(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  char mnt[128];
  snprintf(mnt, sizeof mnt, "%s/mnt", t.root);
  assert_int_equal(mkdir(mnt, 0755), 0);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
    tmp_free(&t);
    skip(); /* not allowed to mount here: test_full_disk covers LMDB */
  }
  char dir[160];
  snprintf(dir, sizeof dir, "%s/db", mnt);
  vlm_db *db = make_db(dir, "Flat", 64);
  corpus c;
  corpus_make(&c, 8000, 64, 61);
  int acked = 0, rc = 0, b;
  vlm_item items[50];
  for (b = 0; b < 160 && rc == 0; b++) {
    for (int j = 0; j < 50; j++)
      items[j] = corpus_item(&c, b * 50 + j);
    rc = vlm_db_put(db, items, 50, 0, NULL);
    if (rc == 0)
      acked += 50;
  }
  if (rc != VLM_ENOSPACE)
    fail_msg("write on a full disk: %s: %s", vlm_errname(rc), vlm_errmsg());
  assert_true(acked > 0);
  if (!strstr(vlm_errmsg(), "space") && !strstr(vlm_errmsg(), "full"))
    fail_msg("unclear message: %s", vlm_errmsg());
  warnings = 0;
  vlm_db_close(db); /* its checkpoint may fail for lack of space */
  assert_int_equal(mount("tmpfs", mnt, "tmpfs", MS_REMOUNT, "size=64m"), 0);
  db = open_db(dir);
  CHECK(vlm_db_verify(db));
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  /* The failed batch is either absent or (if LMDB committed it before
   * SQLite hit the wall) complete; never partial. */
  if (info.items != acked && info.items != acked + 50)
    fail_msg("%lld items after a full disk, %d acknowledged",
             (long long)info.items, acked);
  for (int i = 0; i < acked; i++)
    assert_int_equal(vlm_db_exists(db, c.key[i]), 1);
  corpus_put(db, &c, (int)info.items, (int)info.items + 100, 50);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  umount2(mnt, MNT_DETACH);
  corpus_free(&c);
  tmp_free(&t);
}

/* A database on a read-only filesystem (a snapshot, a read-only volume):
 * a read-write open is refused with VLM_EREADONLY; a read-only open reads
 * everything, filters and BM25 included, and verifies; nothing on the
 * filesystem changes. */
static void test_read_only_filesystem(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  char mnt[128], dir[160];
  snprintf(mnt, sizeof mnt, "%s/mnt", t.root);
  assert_int_equal(mkdir(mnt, 0755), 0);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=16m") != 0) {
    tmp_free(&t);
    skip(); /* not allowed to mount here */
  }
  snprintf(dir, sizeof dir, "%s/db", mnt);
  vlm_db *db = make_db(dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 300, DIM, 71);
  corpus_put(db, &c, 0, 300, 100);
  char *want = sql_answers(db, &c);
  assert_non_null(want);
  vlm_db_close(db);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "ls -laR '%s' > '%s/before.txt'", dir, t.root);
  assert_int_equal(system(cmd), 0);
  assert_int_equal(mount("tmpfs", mnt, "tmpfs", MS_REMOUNT | MS_RDONLY, ""),
                   0);
  EXPECT_ERR(VLM_EREADONLY, vlm_db_open(dir, NULL, &db));
  assert_non_null(strstr(vlm_errmsg(), "read-only filesystem"));
  vlm_db_open_options o = {.readonly = 1};
  CHECK(vlm_db_open(dir, &o, &db));
  CHECK(vlm_db_verify(db));
  char *got = sql_answers(db, &c);
  assert_non_null(got);
  assert_string_equal(got, want);
  for (int i = 0; i < c.n; i += 7) {
    vlm_record *rec = NULL;
    CHECK(vlm_db_get(db, c.key[i], &rec));
    assert_string_equal(rec->caption, c.caption[i]);
    vlm_record_free(rec);
  }
  vlm_item it = corpus_item(&c, 0);
  assert_int_not_equal(vlm_db_put(db, &it, 1, VLM_PUT_UPSERT, NULL), 0);
  vlm_db_close(db);
  snprintf(cmd, sizeof cmd,
           "ls -laR '%s' > '%s/after.txt' && cmp -s '%s/before.txt' "
           "'%s/after.txt'", dir, t.root, t.root, t.root);
  assert_int_equal(system(cmd), 0);
  umount2(mnt, MNT_DETACH);
  free(want);
  free(got);
  corpus_free(&c);
  tmp_free(&t);
}

/* Full disks of many sizes, batches of several sizes: every failure is
 * VLM_ENOSPACE; what was acknowledged is there; the failed batch is whole
 * or absent; and the database opens read-only on the still-full disk so
 * its data can be read out. */
static void test_full_disk_campaign(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  char mnt[128];
  snprintf(mnt, sizeof mnt, "%s/mnt", t.root);
  assert_int_equal(mkdir(mnt, 0755), 0);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
    tmp_free(&t);
    skip();
  }
  umount2(mnt, MNT_DETACH);
  corpus c;
  corpus_make(&c, 12000, 64, 91);
  int bad_code = 0, bad_open = 0, trials = 0;
  for (int trial = 0; trial < 16; trial++) {
    char opt[64];
    snprintf(opt, sizeof opt, "size=%dk", 1024 + trial * 160);
    assert_int_equal(mount("tmpfs", mnt, "tmpfs", 0, opt), 0);
    char dir[160];
    snprintf(dir, sizeof dir, "%s/db", mnt);
    vlm_db_config cfg = {.dim = 64, .index_factory = "Flat",
                         .model_id = "test-model", .model_dir = "/nowhere"};
    vlm_db *db = NULL;
    int rc = vlm_db_create(dir, &cfg, &db);
    int acked = 0, batch = 10 + 37 * (trial % 5);
    vlm_item items[200];
    for (int b = 0; rc == 0 && acked + batch <= c.n; b++) {
      for (int j = 0; j < batch; j++)
        items[j] = corpus_item(&c, acked + j);
      rc = vlm_db_put(db, items, batch, 0, NULL);
      if (rc == 0)
        acked += batch;
    }
    trials++;
    if (rc != VLM_ENOSPACE) {
      print_error("trial %d (%s, batch %d): %s: %s\n", trial, opt, batch,
                  vlm_errname(rc), vlm_errmsg());
      bad_code++;
    }
    vlm_db_close(db);
    /* still full: read-only must open and read everything acknowledged */
    vlm_db_open_options ro = {.readonly = 1};
    vlm_db *rdb = NULL;
    rc = vlm_db_open(dir, &ro, &rdb);
    if (rc) {
      print_error("trial %d: read-only open on the full disk: %s: %s\n",
                  trial, vlm_errname(rc), vlm_errmsg());
      bad_open++;
    } else {
      for (int i = 0; i < acked; i++)
        assert_int_equal(vlm_db_exists(rdb, c.key[i]), 1);
      vlm_db_close(rdb);
    }
    assert_int_equal(mount("tmpfs", mnt, "tmpfs", MS_REMOUNT, "size=64m"), 0);
    db = open_db(dir);
    CHECK(vlm_db_verify(db));
    vlm_db_info info;
    CHECK(vlm_db_stat(db, &info));
    if (info.items != acked && info.items != acked + batch)
      fail_msg("trial %d: %lld items, %d acknowledged (batch %d)", trial,
               (long long)info.items, acked, batch);
    vlm_db_close(db);
    umount2(mnt, MNT_DETACH);
  }
  print_message("%d full-disk trials: %d wrong codes, %d read-only opens "
                "refused\n", trials, bad_code, bad_open);
  assert_int_equal(bad_code, 0);
  assert_int_equal(bad_open, 0);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ filters */

static int p_animals_recent(const corpus *c, int i) {
  return !strcmp(c->category[i], "animals") && c->year[i] >= 2005;
}
static int p_price_range(const corpus *c, int i) {
  return c->price[i] > 20 && c->price[i] <= 55.5;
}
static int p_keys(const corpus *c, int i) {
  return !strcmp(c->key[i], "item-00003") || !strcmp(c->key[i], "item-00010");
}
static int p_like(const corpus *c, int i) {
  return strstr(c->category[i], "an") != NULL;
}
static int p_or_not(const corpus *c, int i) {
  return !(c->year[i] < 2000) || !strcmp(c->category[i], "art");
}
static int p_lower_in(const corpus *c, int i) {
  return (!strcmp(c->category[i], "cars") || !strcmp(c->category[i], "food")) &&
         c->year[i] % 2 == 0;
}
static int p_none(const corpus *c, int i) {
  (void)c, (void)i;
  return 0;
}
static int p_all(const corpus *c, int i) {
  (void)c, (void)i;
  return 1;
}
static int p_quote(const corpus *c, int i) {
  return strcmp(c->category[i], "it's") == 0;
}

static struct {
  const char *expr;
  pred_fn pred;
} filter_cases[] = {
    {"category = 'animals' AND year >= 2005", p_animals_recent},
    {"price > 20 AND price <= 55.5", p_price_range},
    {"key IN ('item-00003', 'item-00010')", p_keys},
    {"category LIKE '%an%'", p_like},
    {"NOT (year < 2000) OR category = 'art'", p_or_not},
    {"upper(category) IN ('CARS', 'FOOD') AND year % 2 = 0", p_lower_in},
    {"year BETWEEN 3000 AND 4000", p_none},
    {"1", p_all},
    {"category = 'it''s'", p_quote},
};

static void test_filters_match_naive_scan(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 3000, DIM, 71);
  corpus_put(db, &c, 0, 3000, 1000);
  scored *want = malloc(3000 * sizeof *want);
  float q[DIM];
  for (size_t f = 0; f < sizeof filter_cases / sizeof filter_cases[0]; f++) {
    for (int qi = 0; qi < 5; qi++) {
      unit(q, DIM);
      vlm_search_options o = {0};
      vlm_hit *hits;
      int nh;
      o.filter = filter_cases[f].expr;
      /* exact, every match: the same set as the naive scan */
      o.k = 3000;
      o.exact = 1;
      CHECK(vlm_db_search(db, q, &o, &hits, &nh));
      int nw = oracle(&c, NULL, filter_cases[f].pred, q, VLM_TARGET_ANY, want);
      if (nh != nw)
        fail_msg("filter \"%s\": %d hits, naive scan %d", o.filter, nh, nw);
      expect_same_as_oracle(&c, hits, nh, want, nw, 3000);
      vlm_hits_free(hits, nh);
      /* through the planner (index or exact), top 10 */
      o.k = 10;
      o.exact = 0;
      CHECK(vlm_db_search(db, q, &o, &hits, &nh));
      double r = recall_at(&c, hits, nh, want, nw, 10);
      for (int h = 0; h < nh; h++)
        assert_true(filter_cases[f].pred(&c, key_index(hits[h].key)));
      if (r < 0.9)
        fail_msg("filter \"%s\": recall@10 %.2f", o.filter, r);
      vlm_hits_free(hits, nh);
    }
  }
  free(want);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* The planner's index path (more matches than the exact-scan limit):
 * recall@10 against a brute-force oracle for random and for correlated
 * (whole-cluster) filters, on clustered vectors. */
/* The planner's index path (more matches than the exact-scan limit):
 * recall@10 against a brute-force oracle for random and for correlated
 * (whole-cluster) filters, on clustered vectors.  (Very tight clusters in
 * few dimensions, added in several batches, defeat FAISS's HNSW itself -
 * unfiltered recall ~0.8 at any efSearch - so the clusters here have the
 * spread of real embeddings.) */
static void test_planner_filtered_recall(void **state) {
  (void)state;
  enum { N = 12000, NC = 20, PD = 32 };
  /* One OpenMP thread: FAISS builds the same graph on every run, so the
   * recall measured here does not depend on the machine's load. */
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", PD);
  float *x = malloc((size_t)N * PD * sizeof *x), centres[NC][PD];
  int *year = malloc(N * sizeof(int)), *cl = malloc(N * sizeof(int));
  char (*keys)[16] = malloc((size_t)N * sizeof *keys);
  char (*metas)[64] = malloc((size_t)N * sizeof *metas);
  rng_state = 4242;
  for (int c = 0; c < NC; c++)
    unit(centres[c], PD);
  for (int i = 0; i < N; i++) {
    float *v = x + (size_t)i * PD;
    cl[i] = (int)(rng_next() % NC);
    unit(v, PD);
    double ss = 0;
    for (int d = 0; d < PD; d++) {
      v[d] = centres[cl[i]][d] + 0.5f * v[d];
      ss += (double)v[d] * v[d];
    }
    for (int d = 0; d < PD; d++)
      v[d] /= (float)sqrt(ss);
    year[i] = (int)(rng_next() % 1000);
    snprintf(keys[i], sizeof keys[i], "p%d", i);
    snprintf(metas[i], sizeof metas[i], "{\"year\": %d, \"price\": %d}",
             year[i], cl[i]);
  }
  vlm_item *items = calloc(N, sizeof *items);
  for (int i = 0; i < N; i++) {
    items[i].key = keys[i];
    items[i].image_vec = x + (size_t)i * PD;
    items[i].meta_json = metas[i];
  }
  CHECK(vlm_db_put(db, items, N, 0, NULL));
  struct {
    const char *expr;
    int field; /* 0 year, 1 cluster */
    int limit;
  } cases[] = {{"year < 500", 0, 500},  {"year < 1000", 0, 1000},
               {"price < 10", 1, 10},   {"price < 19", 1, 19},
               {"price < 1", 1, 1},     {"year < 50", 0, 50}};
  for (size_t f = 0; f < sizeof cases / sizeof cases[0]; f++) {
    double found = 0, want = 0;
    for (int qi = 0; qi < 30; qi++) {
      float q[PD];
      const float *base = x + (size_t)(rng_next() % N) * PD;
      for (int d = 0; d < PD; d++)
        q[d] = base[d];
      scored top[10];
      int m = 0;
      for (int i = 0; i < N; i++) {
        int v = cases[f].field ? cl[i] : year[i];
        if (v >= cases[f].limit)
          continue;
        m = top10_push(top, m, i, dot(q, x + (size_t)i * PD, PD));
      }
      vlm_search_options o = {0};
      vlm_hit *hits;
      int nh;
      o.k = 10;
      o.filter = cases[f].expr;
      CHECK(vlm_db_search(db, q, &o, &hits, &nh));
      for (int h = 0; h < nh; h++) {
        int i = atoi(hits[h].key + 1);
        int v = cases[f].field ? cl[i] : year[i];
        if (v >= cases[f].limit)
          fail_msg("filter \"%s\" returned %s", cases[f].expr, hits[h].key);
      }
      want += m;
      found += top10_found(top, m, hits, nh);
      vlm_hits_free(hits, nh);
    }
    double recall = found / want;
    if (recall < 0.99)
      fail_msg("filter \"%s\": recall@10 %.3f below 0.99", cases[f].expr,
               recall);
  }
  vlm_db_close(db);
  omp_set_num_threads(threads);
  free(x), free(year), free(cl), free(keys), free(metas), free(items);
  tmp_free(&t);
}

/* Listed matches spread wide over an HNSW index (more than the exact-scan
 * limit, at most a quarter of the items, the k-th expected deep in the
 * unfiltered ranking) are scored exactly from the index's own vectors:
 * the hits are the brute force's, keys and scores, across deletes and a
 * tail not yet in the index; with the scan turned off (the fault point)
 * the same searches go through the graph. */
extern int (*vlm__test_fault)(const char *where);
static int scan_seen, scan_off;
static int scan_probe(const char *where) {
  if (strcmp(where, "planner-scan"))
    return 0;
  scan_seen++;
  return scan_off;
}

static void test_planner_scan(void **state) {
  (void)state;
  enum { N = 30000, NC = 300, PD = 16, NQ = 40 };
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW16", PD);
  float *x = malloc((size_t)N * PD * sizeof *x);
  float (*centres)[PD] = malloc(NC * sizeof *centres);
  int *year = malloc(N * sizeof(int)), *alive = malloc(N * sizeof(int));
  char (*keys)[16] = malloc((size_t)N * sizeof *keys);
  char (*metas)[32] = malloc((size_t)N * sizeof *metas);
  rng_state = 777;
  for (int c = 0; c < NC; c++)
    unit(centres[c], PD);
  for (int i = 0; i < N; i++) {
    float *v = x + (size_t)i * PD;
    int c = (int)(rng_next() % NC);
    unit(v, PD);
    for (int d = 0; d < PD; d++)
      v[d] = centres[c][d] + 0.3f * v[d];
    unit_normalize(v, PD);
    year[i] = (int)(rng_next() % 1000);
    alive[i] = 1;
    snprintf(keys[i], sizeof keys[i], "s%d", i);
    snprintf(metas[i], sizeof metas[i], "{\"year\": %d}", year[i]);
  }
  vlm_item *items = calloc(N, sizeof *items);
  for (int i = 0; i < N; i++) {
    items[i].key = keys[i];
    items[i].image_vec = x + (size_t)i * PD;
    items[i].meta_json = metas[i];
  }
  /* all but the last 500 checkpointed into the index; those 500 may stay
   * a tail the planner scans from LMDB */
  CHECK(vlm_db_put(db, items, N - 500, 0, NULL));
  CHECK(vlm_db_checkpoint(db));
  CHECK(vlm_db_put(db, items + N - 500, 500, 0, NULL));
  const char *dead[200];
  for (int i = 0; i < 200; i++) {
    dead[i] = keys[i * 7];
    alive[i * 7] = 0;
  }
  CHECK(vlm_db_delete(db, dead, 200, NULL));
  const char *expr = "year < 160"; /* 16%: about 4,800 matches */
  /* a broad filter's matches are listed at its second asking (the first
   * post-filters with a lookup per candidate): ask once beforehand */
  {
    vlm_search_options o = {0};
    vlm_hit *hits;
    int nh;
    o.k = 10;
    o.filter = expr;
    CHECK(vlm_db_search(db, x, &o, &hits, &nh));
    vlm_hits_free(hits, nh);
  }
  vlm__test_fault = scan_probe;
  double recall[2] = {0, 0};
  for (int off = 0; off < 2; off++) {
    scan_off = off;
    scan_seen = 0;
    double found = 0, want = 0;
    rng_state = 99;
    for (int qi = 0; qi < NQ; qi++) {
      float q[PD];
      unit(q, PD);
      for (int d = 0; d < PD; d++)
        q[d] += centres[rng_next() % NC][d];
      unit_normalize(q, PD);
      scored top[10];
      int m = 0;
      for (int i = 0; i < N; i++) {
        if (!alive[i] || year[i] >= 160)
          continue;
        m = top10_push(top, m, i, dot(q, x + (size_t)i * PD, PD));
      }
      vlm_search_options o = {0};
      vlm_hit *hits;
      int nh;
      o.k = 10;
      o.filter = expr;
      CHECK(vlm_db_search(db, q, &o, &hits, &nh));
      assert_int_equal(nh, m);
      for (int h = 0; h < nh; h++) {
        int i = atoi(hits[h].key + 1);
        if (!alive[i] || year[i] >= 160)
          fail_msg("hit %s: %s", hits[h].key,
                   alive[i] ? "not a match" : "deleted");
        if (!off && (i != top[h].i ||
                     fabsf(hits[h].score - top[h].score) > 1e-5f))
          fail_msg("query %d hit %d: %s %.6f, brute force s%d %.6f", qi, h,
                   hits[h].key, (double)hits[h].score, top[h].i,
                   (double)top[h].score);
      }
      want += m;
      found += top10_found(top, m, hits, nh);
      vlm_hits_free(hits, nh);
    }
    recall[off] = found / want;
    /* every search chose the scan (or, turned off, asked for it) */
    if (scan_seen != NQ)
      fail_msg("the scan was asked for by %d of %d searches", scan_seen, NQ);
  }
  vlm__test_fault = NULL;
  print_message("a 16%% filter over %d HNSW16 vectors: recall@10 %.4f "
                "scanned, %.4f through the graph\n", N, recall[0],
                recall[1]);
  assert_true(recall[0] == 1.0);
  vlm_db_close(db);
  omp_set_num_threads(threads);
  free(x), free(centres), free(year), free(alive), free(keys), free(metas);
  free(items);
  tmp_free(&t);
}

static int64_t sql_count(const char *dir, const char *sql) {
  char path[256];
  sqlite3 *s;
  sqlite3_stmt *st;
  snprintf(path, sizeof path, "%s/meta.sqlite", dir);
  assert_int_equal(sqlite3_open_v2(path, &s, SQLITE_OPEN_READONLY, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(s, sql, -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  int64_t n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(s);
  return n;
}

/* Filters matching more items than the exact-scan limit are answered by
 * post-filtering the unfiltered ranking (or, when matches are rare near
 * the query, by listing them): every hit must match and be live, and
 * recall must hold, across deletes, upserts, every target and a
 * not-yet-indexed tail. */
static int p_recent(const corpus *c, int i) { return c->year[i] >= 2000; }
static int p_not_art(const corpus *c, int i) {
  return strcmp(c->category[i], "art") != 0;
}

static void check_filtered(vlm_db *db, const corpus *c, const int *alive,
                           const char *expr, pred_fn pred, double min_recall) {
  vlm_target targets[] = {VLM_TARGET_ANY, VLM_TARGET_IMAGE, VLM_TARGET_TEXT};
  scored *want = malloc((size_t)c->n * sizeof *want);
  float q[64];
  double sum = 0;
  int nq = 0;
  for (int t = 0; t < 3; t++)
    for (int qi = 0; qi < 20; qi++) {
      unit(q, c->dim);
      vlm_search_options o = {0};
      o.k = 10;
      o.target = targets[t];
      o.filter = expr;
      vlm_hit *hits;
      int nh;
      CHECK(vlm_db_search(db, q, &o, &hits, &nh));
      int nw = oracle(c, alive, pred, q, targets[t], want);
      for (int a = 0; a < nh; a++) {
        int i = key_index(hits[a].key);
        assert_true(i >= 0);
        if (!alive[i] || !pred(c, i))
          fail_msg("\"%s\": hit %s is %s", expr, hits[a].key,
                   alive[i] ? "not a match" : "deleted");
        if (a > 0)
          assert_true(hits[a].score <= hits[a - 1].score);
      }
      if (nh != (nw < 10 ? nw : 10))
        fail_msg("\"%s\": %d hits, %d expected", expr, nh, nw < 10 ? nw : 10);
      sum += recall_at(c, hits, nh, want, nw, 10);
      nq++;
      vlm_hits_free(hits, nh);
    }
  free(want);
  if (sum / nq < min_recall)
    fail_msg("\"%s\": recall@10 %.3f below %.3f", expr, sum / nq, min_recall);
}

static void test_broad_filters(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  enum { N = 10000 }; /* the exact-scan limit is 4096 matches */
  /* HNSW, then Flat: an exhaustive index must give the exact answers */
  for (int f = 0; f < 2; f++) {
    char fdir[300];
    snprintf(fdir, sizeof fdir, "%s/%s", t.root, f ? "flat" : "hnsw");
    double min_recall = f ? 1.0 : 0.97;
    vlm_db *db = make_db(fdir, f ? "Flat" : "HNSW32", DIM);
    corpus c;
    corpus_make(&c, N, DIM, 91);
    int *alive = calloc(N, sizeof *alive);
    corpus_put(db, &c, 0, N - 300, 1000);
    for (int i = 0; i < N - 300; i++)
      alive[i] = 1;
    /* deletes and upserts (new vectors under old keys) */
    const char *del[400];
    for (int i = 0; i < 400; i++) {
      del[i] = c.key[i * 20];
      alive[i * 20] = 0;
    }
    CHECK(vlm_db_delete(db, del, 400, NULL));
    rng_state = 92;
    for (int i = 1; i < 3000; i += 10)
      unit(c.img + (size_t)i * DIM, DIM);
    vlm_item *items = calloc(300, sizeof *items);
    int n = 0;
    for (int i = 1; i < 3000; i += 10)
      items[n++] = corpus_item(&c, i);
    CHECK(vlm_db_put(db, items, n, VLM_PUT_UPSERT, NULL));
    check_filtered(db, &c, alive, "year >= 2000", p_recent, min_recall);
    check_filtered(db, &c, alive, "category <> 'art'", p_not_art, min_recall);
    check_filtered(db, &c, alive, "1", p_all, min_recall);
    vlm_db_close(db);

    /* A tail that the index has not caught up with yet. */
    vlm_db_open_options oo = {0};
    oo.async_index = 1;
    CHECK(vlm_db_open(fdir, &oo, &db));
    corpus_put(db, &c, N - 300, N, 100);
    for (int i = N - 300; i < N; i++)
      alive[i] = 1;
    check_filtered(db, &c, alive, "year >= 2000", p_recent, min_recall);
    vlm_db_close(db);
    free(items);
    free(alive);
    corpus_free(&c);
  }

  /* A broad filter whose matches all lie far from the query: no match
   * among thousands of unfiltered candidates, so the matches are listed
   * and searched with the bitmap (or scored exactly). */
  enum { M = 12000, NEAR = 5000, PD = 16 };
  for (int f = 0; f < 2; f++) {
    char dir2[300];
    snprintf(dir2, sizeof dir2, "%s/far-%s", t.root, f ? "flat" : "hnsw");
    vlm_db *db = make_db(dir2, f ? "Flat" : "HNSW32", PD);
    float *x = malloc((size_t)M * PD * sizeof *x), axis[PD], q[PD];
    char(*keys)[16] = malloc((size_t)M * sizeof *keys);
    char(*metas)[48] = malloc((size_t)M * sizeof *metas);
    vlm_item *far = calloc(M, sizeof *far);
    rng_state = 93;
    unit(axis, PD);
    for (int i = 0; i < M; i++) {
      float *v = x + (size_t)i * PD, sign = i < NEAR ? 1.0f : -1.0f;
      unit(v, PD);
      for (int d = 0; d < PD; d++)
        v[d] = sign * axis[d] + 0.4f * v[d];
      unit_normalize(v, PD);
      snprintf(keys[i], sizeof keys[i], "f%d", i);
      snprintf(metas[i], sizeof metas[i], "{\"year\": %d}", i < NEAR ? 1 : 2);
      far[i].key = keys[i];
      far[i].image_vec = v;
      far[i].meta_json = metas[i];
    }
    CHECK(vlm_db_put(db, far, M, 0, NULL));
    double found = 0;
    for (int qi = 0; qi < 20; qi++) {
      unit(q, PD);
      for (int d = 0; d < PD; d++)
        q[d] = axis[d] + 0.4f * q[d];
      unit_normalize(q, PD);
      scored top[10];
      int m = 0;
      for (int i = NEAR; i < M; i++) {
        m = top10_push(top, m, i, dot(q, x + (size_t)i * PD, PD));
      }
      vlm_search_options o = {0};
      o.k = 10;
      o.filter = "year = 2";
      vlm_hit *hits;
      int nh;
      CHECK(vlm_db_search(db, q, &o, &hits, &nh));
      assert_int_equal(nh, 10);
      for (int h = 0; h < nh; h++) {
        int i = atoi(hits[h].key + 1);
        if (i < NEAR)
          fail_msg("\"year = 2\" returned %s", hits[h].key);
      }
      found += top10_found(top, m, hits, nh);
      vlm_hits_free(hits, nh);
    }
    if (found / 200 < (f ? 1.0 : 0.99))
      fail_msg("far matches: recall@10 %.3f below %.2f", found / 200,
               f ? 1.0 : 0.99);
    vlm_db_close(db);
    free(x), free(keys), free(metas), free(far);
  }
  tmp_free(&t);
}

static void test_filter_injection_refused(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 200, DIM, 81);
  corpus_put(db, &c, 0, 200, 200);
  int64_t schema = sql_count(t.dir, "SELECT count(*) FROM sqlite_master");
  const char *attacks[] = {
      "1); DROP TABLE items; --",
      "1); DROP TABLE items",
      "1; DELETE FROM items",
      "1) OR (1",
      "1 -- ",
      "1 /* comment */",
      "key = 'a') UNION SELECT id FROM items WHERE (1",
      "key IN (SELECT name FROM sqlite_master)",
      "EXISTS (SELECT 1 FROM sqlite_master)",
      "key IN (SELECT key FROM items)",
      "(SELECT count(*) FROM captions) > 0",
      "key IN (SELECT caption FROM captions WHERE captions MATCH 'cat')",
      "(SELECT value FROM vlm_state) > 0",
      "load_extension('/tmp/evil.so') IS NULL",
      "ATTACH DATABASE '/tmp/x.db' AS x",
      "1 AND (ATTACH '/tmp/x.db' AS x)",
      "PRAGMA writable_schema = 1",
      "1 = (PRAGMA user_version)",
      "randomblob(1000000000) IS NULL",
      "zeroblob(1000000000) IS NULL",
      "sqlite_version() = 'x'",
      "key IN (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM "
      "c) SELECT x FROM c)",
      "no_such_column = 1",
      "items.rowid > 0 AND main.sqlite_master.name = 'x'",
      "category = ?",
      "category = :name",
      "category = 'unterminated",
      "((year > 1)",
      "",
      "   ",
      "year >",
      "fts5_source_id() IS NOT NULL",
      "printf('%.*c', 100000000, 'x') IS NOT NULL",
      "key MATCH 'x'",
  };
  for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++) {
    vlm_search_options o = {0};
    vlm_hit *hits = NULL;
    int nh = 0;
    o.k = 5;
    o.filter = attacks[i];
    int rc = vlm_db_search(db, c.img, &o, &hits, &nh);
    if (rc != VLM_EFILTER)
      fail_msg("filter \"%s\": %s (%s), expected VLM_EFILTER", attacks[i],
               vlm_errname(rc), rc ? vlm_errmsg() : "accepted");
    assert_true(strlen(vlm_errmsg()) > 10);
    assert_null(hits);
  }
  /* An over-long filter. */
  char *longf = malloc(10000);
  strcpy(longf, "year > 0");
  for (size_t n = strlen(longf); n < 9000; n = strlen(longf))
    strcat(longf, " AND year > 0");
  vlm_search_options o = {0};
  vlm_hit *hits = NULL;
  int nh = 0;
  o.k = 5;
  o.filter = longf;
  EXPECT_ERR(VLM_EFILTER, vlm_db_search(db, c.img, &o, &hits, &nh));
  free(longf);
  /* The database is unchanged and still answers filters. */
  assert_int_equal(sql_count(t.dir, "SELECT count(*) FROM sqlite_master"),
                   schema);
  assert_int_equal(sql_count(t.dir, "SELECT count(*) FROM items"), 200);
  CHECK(vlm_db_verify(db));
  o.filter = "category = 'animals'";
  CHECK(vlm_db_search(db, c.img, &o, &hits, &nh));
  assert_true(nh > 0);
  vlm_hits_free(hits, nh);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------ range, pages, groups */

/* A threshold halfway between two neighbouring oracle scores (so float
 * rounding at the boundary cannot decide a test); -2 if none is clear. */
static float gap_threshold(const scored *want, int nwant, int at) {
  for (int r = at; r + 1 < nwant && r < at + 20; r++)
    if (want[r].score - want[r + 1].score > 1e-4f)
      return (want[r].score + want[r + 1].score) / 2;
  return -2;
}

/* How many oracle results score at least s. */
static int count_at_least(const scored *want, int nwant, float s) {
  int n = 0;
  while (n < nwant && want[n].score >= s)
    n++;
  return n;
}

/* MINSCORE: every result scoring at least s and nothing below it, still
 * at most k of them.  Flat answers by FAISS range search (k = 0 or k >
 * 100), or its k-NN scan; IVF with nprobe >= nlist is exact too; HNSW
 * ranks deeper while the last score still reaches s (high recall).  With
 * a filter and a target alike, against the brute-force oracle. */
static void test_search_min_score(void **state) {
  (void)state;
  const char *factories[] = {"Flat", "HNSW32", "IVF8,Flat"};
  for (int f = 0; f < 3; f++) {
    tmp t;
    tmp_make(&t);
    vlm_db *db = make_db(t.dir, factories[f], DIM);
    corpus c;
    const int n = 2000;
    corpus_make(&c, n, DIM, 301 + f);
    corpus_put(db, &c, 0, n, 500);
    scored *want = malloc(sizeof *want * (size_t)n);
    for (int trial = 0; trial < 6; trial++) {
      float q[DIM];
      unit(q, DIM);
      vlm_target target = trial % 3 == 0   ? VLM_TARGET_ANY
                          : trial % 3 == 1 ? VLM_TARGET_IMAGE
                                           : VLM_TARGET_TEXT;
      pred_fn pred = trial >= 3 ? p_animals_recent : NULL;
      const char *filter =
          trial >= 3 ? "category = 'animals' AND year >= 2005" : NULL;
      int nwant = oracle(&c, NULL, pred, q, target, want);
      /* ~150 results unfiltered, ~10 filtered: past the first depth of
       * a growing search, and past the range-search cutoff */
      float s = gap_threshold(want, nwant, trial >= 3 ? 10 : 150);
      assert_true(s > -2);
      int above = count_at_least(want, nwant, s);
      int ks[] = {0, 20, 300};
      for (int e = 0; e < 2; e++)
        for (int ki = 0; ki < 3; ki++) {
          vlm_search_options o = {.k = ks[ki], .use_min_score = 1,
                                  .min_score = s, .target = target,
                                  .filter = filter, .exact = e};
          vlm_hit *hits = NULL;
          int nh = 0;
          CHECK(vlm_db_search(db, q, &o, &hits, &nh));
          int k = ks[ki] ? ks[ki] : VLM_DB_MAX_K;
          int expect = above < k ? above : k;
          for (int h = 0; h < nh; h++) {
            if (!(hits[h].score >= s))
              fail_msg("%s: hit %d scores %f below %f", factories[f], h,
                       hits[h].score, s);
            if (h && hits[h].score > hits[h - 1].score)
              fail_msg("%s: hits out of order at %d", factories[f], h);
          }
          if (e || f != 1) { /* exact answers */
            expect_same_as_oracle(&c, hits, nh, want, expect, k);
          } else {
            double rec = recall_at(&c, hits, nh, want, expect, k);
            assert_true(nh <= expect);
            if (rec < 0.9)
              fail_msg("HNSW min_score recall %.3f (%d of %d)", rec, nh,
                       expect);
          }
          vlm_hits_free(hits, nh);
        }
    }
    /* nothing reaches the threshold: an empty answer */
    float q[DIM];
    unit(q, DIM);
    vlm_search_options o = {.use_min_score = 1, .min_score = 1.5f};
    vlm_hit *hits = NULL;
    int nh = -1;
    CHECK(vlm_db_search(db, q, &o, &hits, &nh));
    assert_int_equal(nh, 0);
    vlm_hits_free(hits, nh);
    /* a threshold of -1 is every item with a vector of the target, up
     * to the bound */
    o.min_score = -1;
    o.k = 0;
    CHECK(vlm_db_search(db, q, &o, &hits, &nh));
    int nwant = oracle(&c, NULL, NULL, q, VLM_TARGET_ANY, want);
    if (f != 1)
      assert_int_equal(nh, nwant);
    else
      assert_true(nh >= nwant * 9 / 10);
    vlm_hits_free(hits, nh);
    /* refused: no finite threshold; a threshold on fused ranks */
    o.min_score = NAN;
    assert_int_equal(vlm_db_search(db, q, &o, &hits, &nh), VLM_EINVAL);
    o.min_score = 0.5f;
    o.hybrid_text = "river";
    assert_int_equal(vlm_db_search(db, q, &o, &hits, &nh), VLM_EINVAL);
    free(want);
    vlm_db_close(db);
    corpus_free(&c);
    tmp_free(&t);
  }
}

/* OFFSET: pages of k concatenated are the one search with k = offset +
 * k, ties in score ordered by item id (the oldest first), through the
 * Flat index and the exact scan alike, with a filter and a target. */
static void test_search_offset_pages(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  const int n = 1200, copies = 40;
  corpus_make(&c, n, DIM, 411);
  /* items 100.. 100 + copies: one image vector, so ties in score */
  for (int i = 100; i < 100 + copies; i++) {
    memcpy(c.img + (size_t)i * DIM, c.img + (size_t)100 * DIM,
           DIM * sizeof(float));
    c.has_img[i] = 1;
  }
  corpus_put(db, &c, 0, n, 300);
  float q[DIM];
  for (int trial = 0; trial < 6; trial++) {
    if (trial < 3)
      memcpy(q, c.img + (size_t)100 * DIM, sizeof q); /* the tied copies */
    else
      unit(q, DIM);
    vlm_search_options big = {.k = 90, .exact = trial % 2,
                              .target = trial == 2 ? VLM_TARGET_IMAGE
                                                   : VLM_TARGET_ANY,
                              .filter = trial == 4 ? "year >= 2000" : NULL};
    vlm_hit *all = NULL;
    int nall = 0;
    CHECK(vlm_db_search(db, q, &big, &all, &nall));
    assert_int_equal(nall, 90);
    if (trial < 3) { /* the copies tie at the top, oldest first */
      for (int h = 1; h < copies; h++) {
        assert_float_equal(all[h].score, all[0].score, 1e-6);
        assert_true(strcmp(all[h - 1].key, all[h].key) < 0);
      }
    }
    for (int page = 7; page <= 13; page += 6)
      for (int off = 0; off < 90; off += page) {
        vlm_search_options o = big;
        o.k = page;
        o.offset = off;
        vlm_hit *hits = NULL;
        int nh = 0;
        CHECK(vlm_db_search(db, q, &o, &hits, &nh));
        int expect = off + page <= 90 ? page : 90 - off;
        if (nh < expect)
          fail_msg("page at %d: %d hits, want %d", off, nh, expect);
        for (int h = 0; h < expect; h++)
          if (strcmp(hits[h].key, all[off + h].key) ||
              hits[h].score != all[off + h].score)
            fail_msg("trial %d page %d at %d: rank %d is %s (%f), the big "
                     "search's %s (%f)", trial, page, off, off + h,
                     hits[h].key, hits[h].score, all[off + h].key,
                     all[off + h].score);
        vlm_hits_free(hits, nh);
      }
    vlm_hits_free(all, nall);
  }
  /* past the end: an empty page; refused: negative, past the bound */
  vlm_search_options o = {.k = 10, .offset = n + 5, .exact = 1};
  vlm_hit *hits = NULL;
  int nh = -1;
  CHECK(vlm_db_search(db, q, &o, &hits, &nh));
  assert_int_equal(nh, 0);
  vlm_hits_free(hits, nh);
  o.offset = -1;
  assert_int_equal(vlm_db_search(db, q, &o, &hits, &nh), VLM_EINVAL);
  o.offset = VLM_DB_MAX_K - 5;
  assert_int_equal(vlm_db_search(db, q, &o, &hits, &nh), VLM_EINVAL);
  o.k = 5;
  CHECK(vlm_db_search(db, q, &o, &hits, &nh));
  vlm_hits_free(hits, nh);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* The naive grouping oracle: walk the exact ranking, keep an item while
 * its group (its value of the field; items without it share one) has
 * fewer than per kept. */
static int group_oracle(const scored *all, int nall, const char **group,
                        int per, int k, scored *out) {
  int n = 0;
  for (int r = 0; r < nall && n < k; r++) {
    int same = 0;
    for (int j = 0; j < n; j++)
      same += (group[out[j].i] == NULL && group[all[r].i] == NULL) ||
              (group[out[j].i] && group[all[r].i] &&
               !strcmp(group[out[j].i], group[all[r].i]));
    if (same < per)
      out[n++] = all[r];
  }
  return n;
}

/* GROUPBY: at most per results per value of a declared field (text or
 * integer), best first, items without the field in a group of their own;
 * against the naive grouping of the exact ranking, through the Flat index
 * and the exact scan, with OFFSET pages of it.  Errors for an undeclared
 * field, PER without GROUPBY, GROUPBY with COLLAPSE. */
static void test_search_group_by(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  const int n = 1500;
  corpus_make(&c, n, DIM, 523);
  const char **bycat = calloc((size_t)n, sizeof *bycat);
  const char **byyear = calloc((size_t)n, sizeof *byyear);
  char (*years)[8] = calloc((size_t)n, sizeof *years);
  for (int i = 0; i < n; i++) {
    if (i % 13 == 0) { /* neither category nor year */
      snprintf(c.meta[i], sizeof c.meta[i], "{\"price\": 1.5}");
      continue;
    }
    bycat[i] = c.category[i];
    snprintf(years[i], sizeof years[i], "%d", c.year[i]);
    byyear[i] = years[i];
  }
  corpus_put(db, &c, 0, n, 500);
  scored *all = malloc(sizeof *all * (size_t)n);
  scored *want = malloc(sizeof *want * (size_t)n);
  struct {
    const char *field;
    const char **group;
    int per, k, offset;
  } cases[] = {
      {"category", bycat, 1, 10, 0},  /* six groups: fewer than k */
      {"category", bycat, 3, 15, 0},
      {"category", bycat, 40, 200, 0},
      {"year", byyear, 2, 30, 0},
      {"year", byyear, 1, 20, 10},    /* a page of a grouped ranking */
      {"category", bycat, 4, 5, 10},
  };
  for (int trial = 0; trial < 4; trial++) {
    float q[DIM];
    unit(q, DIM);
    int nall = oracle(&c, NULL, NULL, q, VLM_TARGET_ANY, all);
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++)
      for (int e = 0; e < 2; e++) {
        vlm_search_options o = {.k = cases[ci].k, .offset = cases[ci].offset,
                                .group_by = cases[ci].field,
                                .group_per = cases[ci].per, .exact = e};
        int nwant = group_oracle(all, nall, cases[ci].group, cases[ci].per,
                                 cases[ci].offset + cases[ci].k, want);
        int from = cases[ci].offset < nwant ? cases[ci].offset : nwant;
        vlm_hit *hits = NULL;
        int nh = 0;
        CHECK(vlm_db_search(db, q, &o, &hits, &nh));
        expect_same_as_oracle(&c, hits, nh, want + from, nwant - from,
                              cases[ci].k);
        vlm_hits_free(hits, nh);
      }
  }
  float q[DIM];
  unit(q, DIM);
  vlm_hit *hits = NULL;
  int nh = 0;
  vlm_search_options o = {.k = 10, .group_by = "nosuch"};
  assert_int_equal(vlm_db_search(db, q, &o, &hits, &nh), VLM_EINVAL);
  o.group_by = "key";
  assert_int_equal(vlm_db_search(db, q, &o, &hits, &nh), VLM_EINVAL);
  o.group_by = NULL;
  o.group_per = 2;
  assert_int_equal(vlm_db_search(db, q, &o, &hits, &nh), VLM_EINVAL);
  o.group_by = "category";
  o.group_per = -1;
  assert_int_equal(vlm_db_search(db, q, &o, &hits, &nh), VLM_EINVAL);
  o.group_per = 1;
  o.collapse = 0.9f;
  assert_int_equal(vlm_db_search(db, q, &o, &hits, &nh), VLM_EINVAL);
  free(all);
  free(want);
  free(bycat);
  free(byyear);
  free(years);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ hybrid */

/* CJK text */

/* The vlm_cjk tokenizer's tokens of one caption, as FTS5 stored them
 * (fts5vocab's instances: term and position), against the list its rules
 * give by hand: CJK runs as overlapping bigrams with each character
 * colocated as a unigram, a lone character alone, the rest unicode61's
 * (folded case, diacritics removed, punctuation dropped). */
static void test_fts_cjk_tokens(void **state) {
  (void)state;
  sqlite3 *s;
  vlm__sql_vfs(); /* registers vlm_cjk for every later connection */
  assert_int_equal(sqlite3_open(":memory:", &s), SQLITE_OK);
  assert_int_equal(
      sqlite3_exec(s,
                   "CREATE VIRTUAL TABLE t USING fts5(c, tokenize='vlm_cjk "
                   "remove_diacritics 2');"
                   "CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance');"
                   "INSERT INTO t VALUES('东京塔的夜景 Tokyo café, "
                   "서울은 猫!東京タワー');",
                   NULL, NULL, NULL),
      SQLITE_OK);
  static const struct {
    const char *term;
    int pos;
  } want[] = {{"东", 0},    {"东京", 0},   {"京", 1},   {"京塔", 1},
              {"塔", 2},    {"塔的", 2},   {"的", 3},   {"的夜", 3},
              {"夜", 4},    {"夜景", 4},   {"景", 4},   {"tokyo", 5},
              {"cafe", 6},  {"서", 7},     {"서울", 7}, {"울", 8},
              {"울은", 8},  {"은", 8},     {"猫", 9},   {"東", 10},
              {"東京", 10}, {"京", 11},    {"京タ", 11}, {"タ", 12},
              {"タワ", 12}, {"ワ", 13},    {"ワー", 13}, {"ー", 13}};
  const size_t nwant = sizeof want / sizeof *want;
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(s, "SELECT term, offset FROM v ORDER "
                                      "BY offset, term", -1, &st, NULL),
                   SQLITE_OK);
  /* the expected list in the same order: by position, then term bytes */
  size_t got = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    const char *term = (const char *)sqlite3_column_text(st, 0);
    int pos = sqlite3_column_int(st, 1);
    int found = 0;
    for (size_t w = 0; w < nwant && !found; w++)
      found = want[w].pos == pos && !strcmp(want[w].term, term);
    if (!found)
      fail_msg("token '%s' at %d is not one the rules give", term, pos);
    got++;
  }
  sqlite3_finalize(st);
  if (got != nwant)
    fail_msg("%zu tokens, the rules give %zu", got, nwant);
  /* queries: a word inside the sentence, one character, not a bigram the
   * text lacks, unicode61's folding outside CJK */
  const struct {
    const char *match;
    int hits;
  } q[] = {{"\"夜景\"", 1},   {"\"塔的夜景\"", 1}, {"\"猫\"", 1},
           {"\"京夜\"", 0},   {"\"CAFE\"", 1},    {"\"서울\"", 1},
           {"\"タワー\"", 1}, {"\"夜东\"", 0}};
  for (size_t i = 0; i < sizeof q / sizeof *q; i++) {
    assert_int_equal(sqlite3_prepare_v2(s, "SELECT count(*) FROM t WHERE t "
                                        "MATCH ?1", -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, q[i].match, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    if (sqlite3_column_int(st, 0) != q[i].hits)
      fail_msg("MATCH %s: %d rows, want %d", q[i].match,
               sqlite3_column_int(st, 0), q[i].hits);
    sqlite3_finalize(st);
  }
  sqlite3_close(s);
}

/* Naive BM25 as FTS5 defines it (k1 1.2, b 0.75, IDF floored at 1e-6):
 * documents and the query as token lists, each query term a phrase of
 * one token; a document's length is its positions (colocated unigrams
 * take none). */
typedef struct {
  char tok[64][16];
  int colocated[64];
  int n, npos;
} toklist;

/* A caption of CJK runs separated by ASCII spaces, as vlm_cjk tokenizes
 * it for documents (with unigrams) or queries (without). */
static void cjk_tokens(const char *text, int document, toklist *t) {
  t->n = t->npos = 0;
  const char *p = text;
  while (*p) {
    while (*p == ' ')
      p++;
    const char *chars[32];
    int lens[32], nc = 0;
    while (*p && *p != ' ') {
      int l = (*p & 0xF0) == 0xF0 ? 4 : (*p & 0xE0) == 0xE0 ? 3 : 2;
      chars[nc] = p;
      lens[nc++] = l;
      p += l;
    }
    if (nc == 1) {
      snprintf(t->tok[t->n], 16, "%.*s", lens[0], chars[0]);
      t->colocated[t->n++] = 0;
      t->npos++;
      continue;
    }
    for (int i = 0; i + 1 < nc; i++) {
      snprintf(t->tok[t->n], 16, "%.*s%.*s", lens[i], chars[i], lens[i + 1],
               chars[i + 1]);
      t->colocated[t->n++] = 0;
      t->npos++;
      if (document) {
        snprintf(t->tok[t->n], 16, "%.*s", lens[i], chars[i]);
        t->colocated[t->n++] = 1;
      }
    }
    if (document && nc > 1) {
      snprintf(t->tok[t->n], 16, "%.*s", lens[nc - 1], chars[nc - 1]);
      t->colocated[t->n++] = 1;
    }
  }
}

static int tok_count(const toklist *t, const char *term) {
  int f = 0;
  for (int i = 0; i < t->n; i++)
    f += !strcmp(t->tok[i], term);
  return f;
}

static double bm25_naive(const toklist *docs, int ndocs, int d,
                         const toklist *query) {
  double total = 0, score = 0;
  for (int i = 0; i < ndocs; i++)
    total += docs[i].npos;
  double avgdl = total / ndocs;
  for (int qi = 0; qi < query->n; qi++) {
    int nq = 0;
    for (int i = 0; i < ndocs; i++)
      nq += tok_count(&docs[i], query->tok[qi]) > 0;
    double idf = log((ndocs - nq + 0.5) / (nq + 0.5));
    if (idf <= 0)
      idf = 1e-6;
    double f = tok_count(&docs[d], query->tok[qi]);
    score += idf * f * 2.2 /
             (f + 1.2 * (1 - 0.75 + 0.75 * docs[d].npos / avgdl));
  }
  return score;
}

/* Hybrid search over Chinese, Japanese and Korean captions: a word inside
 * a sentence matches (and one character alone), and the BM25 ranking is
 * the naive BM25 of the tokens vlm_cjk's rules give. */
static void test_hybrid_cjk(void **state) {
  (void)state;
  static const char *captions[] = {
      "东京塔的夜景非常美丽",     "一只黑猫在沙发上睡觉",
      "北京的夜景 和 东京的早晨", "夜景",
      "京都の古いお寺と紅葉",     "紅葉の季節に京都へ行く",
      "猫が窓辺で寝ている",       "서울의 밤거리 풍경",
      "부산 바다 와 서울 야경",   "공원 에서 노는 강아지",
      "小狗 在 公园 里 跑",       "桜と富士山の写真",
  };
  const int n = (int)(sizeof captions / sizeof *captions);
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  vlm_item items[16];
  char keys[16][16];
  float vecs[16][DIM];
  memset(items, 0, sizeof items);
  for (int i = 0; i < n; i++) {
    snprintf(keys[i], sizeof keys[i], "cjk-%02d", i);
    unit(vecs[i], DIM);
    items[i].key = keys[i];
    items[i].text_vec = vecs[i];
    items[i].caption = captions[i];
  }
  int written = 0;
  CHECK(vlm_db_put(db, items, n, 0, &written));
  assert_int_equal(written, n);
  toklist docs[16];
  for (int i = 0; i < n; i++)
    cjk_tokens(captions[i], 1, &docs[i]);
  struct {
    const char *query;
    int must; /* a caption that must be found (-1: none) */
  } qs[] = {{"夜景", 0},      {"东京", 2},  {"猫", 1},     {"紅葉", 4},
            {"京都の紅葉", 5}, {"밤거리", 7}, {"서울", 8},   {"강아지", 9},
            {"黑猫", 1},      {"公园", 10}, {"富士山", 11}, {"ロンドン", -1}};
  for (size_t qi = 0; qi < sizeof qs / sizeof *qs; qi++) {
    vlm_search_options o = {.k = 50, .hybrid_text = qs[qi].query};
    vlm_hit *hits = NULL;
    int nh = 0;
    CHECK(vlm_db_search(db, NULL, &o, &hits, &nh));
    toklist q;
    cjk_tokens(qs[qi].query, 0, &q);
    double score[16];
    int matching = 0;
    for (int d = 0; d < n; d++) {
      score[d] = bm25_naive(docs, n, d, &q);
      matching += score[d] > 0;
    }
    if (nh != matching)
      fail_msg("'%s': %d hits, %d captions share a token", qs[qi].query, nh,
               matching);
    int found = qs[qi].must < 0;
    for (int h = 0; h < nh; h++) {
      int d = -1;
      sscanf(hits[h].key, "cjk-%d", &d);
      assert_true(d >= 0 && d < n);
      found |= d == qs[qi].must;
      if (h > 0) {
        int p = -1;
        sscanf(hits[h - 1].key, "cjk-%d", &p);
        if (score[d] > score[p] + 1e-9)
          fail_msg("'%s': %s (BM25 %.6f) ranks below %s (%.6f)",
                   qs[qi].query, hits[h].key, score[d], hits[h - 1].key,
                   score[p]);
      }
    }
    if (!found)
      fail_msg("'%s' did not find '%s'", qs[qi].query,
               captions[qs[qi].must]);
    vlm_hits_free(hits, nh);
  }
  /* hostile query text: pieces of CJK characters, invalid bytes, quotes,
   * FTS5 syntax; every one a valid query (or none) */
  static const char *pieces[] = {"东", "京", "\xe4", "\xe4\xb8", "\x80", "a",
                                 "\"", " ", "*", "OR", "서", "\xff", "の",
                                 "NEAR(", "^", "ー", "\xf0\x9f\x98\x80"};
  rng_state = 77;
  for (int trial = 0; trial < 300; trial++) {
    char text[256] = "";
    int len = 1 + (int)(rng_next() % 24);
    for (int i = 0; i < len; i++)
      strcat(text, pieces[rng_next() % (sizeof pieces / sizeof *pieces)]);
    vlm_search_options o = {.k = 20, .hybrid_text = text};
    vlm_hit *hits = NULL;
    int nh = 0;
    int rc = vlm_db_search(db, NULL, &o, &hits, &nh);
    if (rc)
      fail_msg("hybrid text '%s': %s", text, vlm_errmsg());
    vlm_hits_free(hits, nh);
  }
  vlm_db_close(db);
  tmp_free(&t);
}

/* A database whose captions table predates vlm_cjk keeps unicode61 (a
 * CJK run is one token: a word inside it is not found, the whole run
 * is), until meta.sqlite is rebuilt from the payload store, which makes
 * the table with vlm_cjk. */
static void test_hybrid_cjk_old_tokenizer_kept(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  vlm_db_close(db);
  char path[256];
  snprintf(path, sizeof path, "%s/meta.sqlite", t.dir);
  sqlite3 *s;
  assert_int_equal(sql_open_rw(path, &s), SQLITE_OK);
  assert_int_equal(sqlite3_exec(s,
                                "DROP TABLE captions; CREATE VIRTUAL TABLE "
                                "captions USING fts5(caption, tokenize="
                                "'unicode61 remove_diacritics 2');",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(s);
  db = open_db(t.dir);
  float v[DIM];
  unit(v, DIM);
  vlm_item it = {.key = "tower", .text_vec = v,
                 .caption = "东京塔的夜景非常美丽"};
  int written = 0;
  CHECK(vlm_db_put(db, &it, 1, 0, &written));
  vlm_search_options o = {.k = 5, .hybrid_text = "夜景"};
  vlm_hit *hits = NULL;
  int nh = -1;
  CHECK(vlm_db_search(db, NULL, &o, &hits, &nh));
  assert_int_equal(nh, 0);
  vlm_hits_free(hits, nh);
  o.hybrid_text = "东京塔的夜景非常美丽";
  CHECK(vlm_db_search(db, NULL, &o, &hits, &nh));
  assert_int_equal(nh, 1);
  vlm_hits_free(hits, nh);
  CHECK(vlm_db_rebuild_meta(db));
  o.hybrid_text = "夜景";
  CHECK(vlm_db_search(db, NULL, &o, &hits, &nh));
  assert_int_equal(nh, 1);
  assert_string_equal(hits[0].key, "tower");
  vlm_hits_free(hits, nh);
  vlm_db_close(db);
  assert_int_equal(sql_open_rw(path, &s), SQLITE_OK);
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(s, "SELECT sql FROM sqlite_master "
                                      "WHERE name = 'captions'", -1, &st,
                                      NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_non_null(strstr((const char *)sqlite3_column_text(st, 0),
                         "tokenize='vlm_cjk"));
  sqlite3_finalize(st);
  sqlite3_close(s);
  tmp_free(&t);
}


/* db/hybrid.c's fusion; the struct is db_int.h's vlm__cand. */
typedef struct {
  uint64_t id;
  float score;
  int mod;
} vlm__cand;
int vlm__fuse_rrf(const vlm__cand *vr, int nvr, const uint64_t *bm25,
                  int nbm, float w, vlm__cand *out);

/* The fusion as it was before it was made linear: for each BM25 hit a
 * scan of the fused list from its start (the test's oracle). */
static int fuse_nested(const vlm__cand *vr, int nvr, const uint64_t *bm25,
                       int nbm, float w, vlm__cand *fused) {
  int nfu = 0;
  for (int i = 0; i < nvr; i++) {
    fused[nfu] = vr[i];
    fused[nfu++].score = (1 - w) / (60.0f + i + 1);
  }
  for (int i = 0; i < nbm; i++) {
    float add = w / (60.0f + i + 1);
    int j;
    for (j = 0; j < nfu; j++)
      if (fused[j].id == bm25[i])
        break;
    if (j < nfu) {
      fused[j].score += add;
    } else {
      fused[nfu].id = bm25[i];
      fused[nfu].score = add;
      fused[nfu++].mod = 1; /* VLM__MOD_TEXT */
    }
  }
  return nfu;
}

/* Linear fusion equals the nested loop entry for entry (ids, scores to
 * the bit, modalities, order) on random rankings: overlapping, disjoint,
 * empty, with ids that collide in the hash table's low bits, and at
 * k = 10,000. */
static void test_fuse_rrf_matches_nested(void **state) {
  (void)state;
  rng_state = 4242;
  static const int sizes[][2] = {{0, 0},   {0, 7},     {9, 0},       {1, 1},
                                 {50, 50}, {300, 40},  {40, 300},    {1000, 1000},
                                 {10000, 10000}};
  for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++)
    for (int variant = 0; variant < 3; variant++) {
      int nvr = sizes[t][0], nbm = sizes[t][1];
      vlm__cand *vr = calloc((size_t)nvr + 1, sizeof *vr);
      uint64_t *bm = calloc((size_t)nbm + 1, sizeof *bm);
      vlm__cand *a = calloc((size_t)(nvr + nbm) + 1, sizeof *a);
      vlm__cand *b = calloc((size_t)(nvr + nbm) + 1, sizeof *b);
      /* ids from a pool twice the larger ranking (variant 0), or
       * multiples of 2^32 (equal low bits, variant 1), or disjoint
       * (variant 2); each ranking has distinct ids */
      uint64_t pool = 2 * (uint64_t)(nvr > nbm ? nvr : nbm) + 2;
      uint64_t *perm = malloc((size_t)pool * sizeof *perm);
      for (uint64_t i = 0; i < pool; i++)
        perm[i] = i + 1;
      for (uint64_t i = pool - 1; i > 0; i--) {
        uint64_t j = rng_next() % (i + 1), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
      }
      for (int i = 0; i < nvr; i++) {
        uint64_t id = variant == 2 ? 2 * (uint64_t)i + 1 : perm[i];
        vr[i].id = variant == 1 ? id << 32 : id;
        vr[i].score = 1.0f - (float)i / (float)(nvr + 1);
        vr[i].mod = (int)(rng_next() % 2);
      }
      for (uint64_t i = pool - 1; i > 0; i--) {
        uint64_t j = rng_next() % (i + 1), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
      }
      for (int i = 0; i < nbm; i++) {
        uint64_t id = variant == 2 ? 2 * (uint64_t)i + 2 : perm[i];
        bm[i] = variant == 1 ? id << 32 : id;
      }
      float w = (float)rng_uniform();
      int na = vlm__fuse_rrf(vr, nvr, bm, nbm, w, a);
      int nb = fuse_nested(vr, nvr, bm, nbm, w, b);
      if (na != nb)
        fail_msg("%d x %d variant %d: %d entries, the nested loop %d", nvr,
                 nbm, variant, na, nb);
      for (int i = 0; i < na; i++)
        if (a[i].id != b[i].id || a[i].score != b[i].score ||
            a[i].mod != b[i].mod)
          fail_msg("%d x %d variant %d: entry %d is id %llu score %.9g mod "
                   "%d, the nested loop's id %llu score %.9g mod %d",
                   nvr, nbm, variant, i, (unsigned long long)a[i].id,
                   a[i].score, a[i].mod, (unsigned long long)b[i].id,
                   b[i].score, b[i].mod);
      free(perm);
      free(vr);
      free(bm);
      free(a);
      free(b);
    }
}

static void test_hybrid_rrf(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 400, DIM, 91);
  corpus_put(db, &c, 0, 400, 400);
  /* Oracle BM25 ranking straight from FTS5, as keys. */
  char path[256];
  sqlite3 *s;
  sqlite3_stmt *st;
  snprintf(path, sizeof path, "%s/meta.sqlite", t.dir);
  assert_int_equal(sqlite3_open_v2(path, &s, SQLITE_OPEN_READONLY, NULL),
                   SQLITE_OK);
  assert_int_equal(
      sqlite3_prepare_v2(s,
                         "SELECT items.key FROM captions JOIN items ON "
                         "items.id = captions.rowid WHERE captions MATCH "
                         "'\"river\" OR \"house\"' ORDER BY rank, "
                         "captions.rowid LIMIT 50",
                         -1, &st, NULL),
      SQLITE_OK);
  char bm25[50][32];
  int nb = 0;
  while (sqlite3_step(st) == SQLITE_ROW)
    snprintf(bm25[nb++], 32, "%s", sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  sqlite3_close(s);
  assert_true(nb >= 10);

  /* Pure BM25: the same order. */
  vlm_search_options o = {0};
  vlm_hit *hits;
  int nh;
  o.k = 10;
  o.hybrid_text = "River, house!";
  CHECK(vlm_db_search(db, NULL, &o, &hits, &nh));
  assert_int_equal(nh, 10);
  for (int i = 0; i < nh; i++)
    assert_string_equal(hits[i].key, bm25[i]);
  vlm_hits_free(hits, nh);

  /* Fused: recompute RRF from the exact vector ranking and BM25. */
  float q[DIM];
  unit(q, DIM);
  vlm_search_options vo = {0};
  vo.k = 50;
  vo.exact = 1;
  vlm_hit *vh;
  int nv;
  CHECK(vlm_db_search(db, q, &vo, &vh, &nv));
  float w = 0.3f;
  struct {
    char key[32];
    float s;
  } fused[100];
  int nf = 0;
  for (int i = 0; i < nv; i++) {
    snprintf(fused[nf].key, 32, "%s", vh[i].key);
    fused[nf++].s = (1 - w) / (60.0f + i + 1);
  }
  for (int i = 0; i < nb; i++) {
    int j;
    for (j = 0; j < nf; j++)
      if (!strcmp(fused[j].key, bm25[i]))
        break;
    if (j == nf) {
      snprintf(fused[nf].key, 32, "%s", bm25[i]);
      fused[nf++].s = 0;
    }
    fused[j].s += w / (60.0f + i + 1);
  }
  vlm_hits_free(vh, nv);
  o.k = 10;
  o.exact = 1;
  o.hybrid_weight = w;
  CHECK(vlm_db_search(db, q, &o, &hits, &nh));
  assert_int_equal(nh, 10);
  for (int i = 0; i < nh; i++) {
    int j;
    for (j = 0; j < nf; j++)
      if (!strcmp(fused[j].key, hits[i].key))
        break;
    assert_true(j < nf);
    assert_float_equal(hits[i].score, fused[j].s, 1e-6);
    /* no better-fused key was left out */
    for (int x = 0; x < nf; x++)
      if (fused[x].s > hits[nh - 1].score + 1e-6f) {
        int in = 0;
        for (int y = 0; y < nh; y++)
          in |= !strcmp(hits[y].key, fused[x].key);
        if (!in)
          fail_msg("key %s (fused %f) missing from the top 10", fused[x].key,
                   fused[x].s);
      }
  }
  vlm_hits_free(hits, nh);
  /* Hybrid with a filter keeps only matching items. */
  o.filter = "category = 'animals'";
  CHECK(vlm_db_search(db, q, &o, &hits, &nh));
  for (int i = 0; i < nh; i++)
    assert_string_equal(c.category[key_index(hits[i].key)], "animals");
  vlm_hits_free(hits, nh);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ recovery */

/* The crash point between LMDB's commit and SQLite's: the last batch is
 * in LMDB, not in SQLite.  Made by hand (undo the last batch in
 * meta.sqlite), reopening must replay it. */
static void test_recovery_replays_sqlite(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 300, DIM, 101);
  corpus_put(db, &c, 0, 200, 100);
  CHECK(vlm_db_checkpoint(db)); /* index file at batch 2 */
  vlm_db_close(db);
  /* A child writes batches 3 and 4 and dies without closing, as a crash
   * would leave it: the log still holds them (close would prune it). */
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    vlm_db *cdb;
    if (vlm_db_open(t.dir, NULL, &cdb) != 0)
      _exit(1);
    vlm_item items[100];
    for (int i = 0; i < 100; i++)
      items[i] = corpus_item(&c, 200 + i);
    const char *del[] = {c.key[0]};
    if (vlm_db_put(cdb, items, 100, 0, NULL) != 0 || /* batch 3 */
        vlm_db_delete(cdb, del, 1, NULL) != 0)      /* batch 4 */
      _exit(2);
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  char path[256];
  sqlite3 *s;
  snprintf(path, sizeof path, "%s/meta.sqlite", t.dir);
  assert_int_equal(sql_open_rw(path, &s), SQLITE_OK);
  assert_int_equal(
      sqlite3_exec(s,
                   "BEGIN; DELETE FROM items WHERE id > 200; "
                   "DELETE FROM captions WHERE rowid > 200; "
                   "INSERT INTO items(id, key) VALUES(1, 'item-00000'); "
                   "UPDATE vlm_state SET value = 2 WHERE name = 'seq'; COMMIT",
                   NULL, NULL, NULL),
      SQLITE_OK);
  sqlite3_close(s);
  /* read-only, it cannot replay: it opens for what the payload store
   * answers (get, plain search), warns naming the command that repairs
   * it, and refuses what needs meta.sqlite */
  vlm_db_open_options ro = {.readonly = 1, .warn = count_warning};
  vlm_db *rdb = NULL;
  warnings = 0;
  CHECK(vlm_db_open(t.dir, &ro, &rdb));
  assert_int_equal(warnings, 1);
  assert_non_null(strstr(last_warning, "run `vlmdb recover --db "));
  assert_int_equal(vlm_db_exists(rdb, c.key[250]), 1); /* batch 3 */
  assert_int_equal(vlm_db_exists(rdb, c.key[0]), 0);   /* batch 4 */
  {
    vlm_search_options so = {.k = 5};
    vlm_hit *h = NULL;
    int nhh = 0;
    CHECK(vlm_db_search(rdb, c.img, &so, &h, &nhh));
    assert_int_equal(nhh, 5);
    vlm_hits_free(h, nhh);
    so.filter = "year > 2000";
    EXPECT_ERR(VLM_ESTATE, vlm_db_search(rdb, c.img, &so, &h, &nhh));
    assert_non_null(strstr(vlm_errmsg(), "vlmdb recover --db"));
    EXPECT_ERR(VLM_ESTATE, vlm_db_verify(rdb));
  }
  vlm_db_close(rdb);
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 1);
  assert_non_null(strstr(last_warning, "replayed 2 batch"));
  CHECK(vlm_db_verify(db));
  vlm_search_options o = {0};
  vlm_hit *hits;
  int nh;
  o.k = 300;
  o.filter = "year >= 0";
  o.exact = 1;
  CHECK(vlm_db_search(db, c.img, &o, &hits, &nh));
  assert_int_equal(nh, 299);
  vlm_hits_free(hits, nh);
  vlm_db_close(db);

  /* meta.sqlite ahead of payload.lmdb cannot happen by this protocol: a
   * reader refuses it rather than guess, a writer rebuilds it from the
   * payload store, the truth. */
  assert_int_equal(sql_open_rw(path, &s), SQLITE_OK);
  assert_int_equal(sqlite3_exec(s, "UPDATE vlm_state SET value = 99 WHERE "
                                   "name = 'seq'",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(s);
  EXPECT_ERR(VLM_ECORRUPT, vlm_db_open(t.dir, &ro, &db));
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 1);
  assert_non_null(strstr(last_warning, "ahead of the payload store"));
  CHECK(vlm_db_verify(db));
  CHECK(vlm_db_search(db, c.img, &o, &hits, &nh));
  assert_int_equal(nh, 299);
  vlm_hits_free(hits, nh);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ batch staging */

/* SQLite stages a batch as all its item rows, then all its captions (see
 * vlm__sql_apply).  Batches that mix new items with upserts that change or
 * drop a caption, and delete batches, must leave meta.sqlite exactly as a
 * naive model says, both written live and replayed after a crash: every
 * row's fields and caption, the caption count, each word's MATCH against a
 * naive scan, and FTS5's own integrity check. */
#define MIX_KEYS 300
#define MIX_PUT 40
#define MIX_DEL 8

typedef struct {
  int alive[MIX_KEYS];
  char caption[MIX_KEYS][64]; /* "" = no caption */
  char category[MIX_KEYS][16];
  int year[MIX_KEYS];
} mix_model;

typedef struct {
  int slot[MIX_PUT];
  char caption[MIX_PUT][64];
  char category[MIX_PUT][16];
  int year[MIX_PUT];
  char meta[MIX_PUT][96];
  int del[MIX_DEL];
} mix_batch;

/* 40 distinct slots to put (stride 7 is coprime with 300), 8 more to
 * delete; a quarter of the puts have no caption. */
static void mix_plan(mix_batch *b) {
  int start = (int)(rng_next() % MIX_KEYS);
  for (int k = 0; k < MIX_PUT; k++) {
    b->slot[k] = (start + 7 * k) % MIX_KEYS;
    if (rng_next() % 4 == 0)
      b->caption[k][0] = '\0';
    else
      snprintf(b->caption[k], sizeof b->caption[k], "a %s and a %s",
               words[rng_next() % 8], words[rng_next() % 8]);
    const char *category = categories[rng_next() % 5];
    int year = 1990 + (int)(rng_next() % 35);
    snprintf(b->category[k], sizeof b->category[k], "%s", category);
    b->year[k] = year;
    snprintf(b->meta[k], sizeof b->meta[k],
             "{\"category\": \"%s\", \"year\": %d}", category, year);
  }
  for (int k = 0; k < MIX_DEL; k++)
    b->del[k] = (start + 7 * (MIX_PUT + k)) % MIX_KEYS;
}

/* One upsert batch and one delete batch; 0 or the failing call's code. */
static int mix_run(vlm_db *db, const corpus *c, const mix_batch *b) {
  vlm_item items[MIX_PUT];
  const char *del[MIX_DEL];
  for (int k = 0; k < MIX_PUT; k++) {
    items[k] = corpus_item(c, b->slot[k]);
    items[k].caption = b->caption[k][0] ? b->caption[k] : NULL;
    items[k].meta_json = b->meta[k];
  }
  for (int k = 0; k < MIX_DEL; k++)
    del[k] = c->key[b->del[k]];
  int rc = vlm_db_put(db, items, MIX_PUT, VLM_PUT_UPSERT, NULL);
  return rc ? rc : vlm_db_delete(db, del, MIX_DEL, NULL);
}

/* Apply b to the model; returns the number of batches it commits (the
 * delete commits none when none of its keys is live). */
static int mix_apply(mix_model *m, const mix_batch *b) {
  int deleted = 0;
  for (int k = 0; k < MIX_PUT; k++) {
    int i = b->slot[k];
    m->alive[i] = 1;
    strcpy(m->caption[i], b->caption[k]);
    strcpy(m->category[i], b->category[k]);
    m->year[i] = b->year[k];
  }
  for (int k = 0; k < MIX_DEL; k++) {
    deleted += m->alive[b->del[k]];
    m->alive[b->del[k]] = 0;
  }
  return 1 + (deleted > 0);
}

static int has_word(const char *caption, const char *word) {
  char buf[64];
  snprintf(buf, sizeof buf, "%s", caption);
  for (char *save = NULL, *w = strtok_r(buf, " ", &save); w;
       w = strtok_r(NULL, " ", &save))
    if (!strcmp(w, word))
      return 1;
  return 0;
}

static void mix_check(const char *dir, const mix_model *m) {
  char path[256];
  sqlite3 *s;
  sqlite3_stmt *st;
  snprintf(path, sizeof path, "%s/meta.sqlite", dir);
  assert_int_equal(sql_open_rw(path, &s), SQLITE_OK);
  sqlite3_busy_timeout(s, 10000);
  int nalive = 0, ncap = 0, nrows = 0, seen[MIX_KEYS] = {0};
  for (int i = 0; i < MIX_KEYS; i++) {
    nalive += m->alive[i];
    ncap += m->alive[i] && m->caption[i][0];
  }
  assert_int_equal(
      sqlite3_prepare_v2(s,
                         "SELECT items.key, items.category, items.year, "
                         "captions.caption FROM items LEFT JOIN captions ON "
                         "captions.rowid = items.id",
                         -1, &st, NULL),
      SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW) {
    const char *key = (const char *)sqlite3_column_text(st, 0);
    const char *cat = (const char *)sqlite3_column_text(st, 1);
    const char *cap = (const char *)sqlite3_column_text(st, 3);
    int i = key_index(key);
    if (i < 0 || i >= MIX_KEYS || seen[i] || !m->alive[i])
      fail_msg("row %s: unexpected (dead or repeated)", key);
    seen[i] = 1;
    nrows++;
    if (strcmp(cat ? cat : "", m->category[i]) ||
        sqlite3_column_int(st, 2) != m->year[i])
      fail_msg("row %s: category %s year %d, expected %s %d", key, cat,
               sqlite3_column_int(st, 2), m->category[i], m->year[i]);
    if (strcmp(cap ? cap : "", m->caption[i]))
      fail_msg("row %s: caption \"%s\", expected \"%s\"", key,
               cap ? cap : "(none)", m->caption[i]);
  }
  sqlite3_finalize(st);
  assert_int_equal(nrows, nalive);
  assert_int_equal(sqlite3_prepare_v2(s, "SELECT count(*) FROM captions", -1,
                                      &st, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_int_equal(sqlite3_column_int(st, 0), ncap);
  sqlite3_finalize(st);
  for (int w = 0; w < 8; w++) {
    int want = 0, got = 0;
    for (int i = 0; i < MIX_KEYS; i++)
      want += m->alive[i] && has_word(m->caption[i], words[w]);
    assert_int_equal(
        sqlite3_prepare_v2(s,
                           "SELECT items.key FROM captions JOIN items ON "
                           "items.id = captions.rowid WHERE captions MATCH ?1",
                           -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, words[w], -1, SQLITE_STATIC);
    while (sqlite3_step(st) == SQLITE_ROW) {
      int i = key_index((const char *)sqlite3_column_text(st, 0));
      if (i < 0 || i >= MIX_KEYS || !m->alive[i] ||
          !has_word(m->caption[i], words[w]))
        fail_msg("MATCH %s: %s does not have it (\"%s\")", words[w],
                 sqlite3_column_text(st, 0),
                 i >= 0 && i < MIX_KEYS ? m->caption[i] : "?");
      got++;
    }
    sqlite3_finalize(st);
    if (got != want)
      fail_msg("MATCH %s: %d items, naive scan %d", words[w], got, want);
  }
  char *err = NULL;
  if (sqlite3_exec(s, "INSERT INTO captions(captions) "
                      "VALUES('integrity-check')",
                   NULL, NULL, &err) != SQLITE_OK)
    fail_msg("FTS5 integrity-check: %s", err ? err : "?");
  sqlite3_close(s);
}

static void copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  char buf[65536];
  size_t n;
  assert_non_null(in);
  assert_non_null(out);
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    assert_int_equal(fwrite(buf, 1, n, out), n);
  fclose(in);
  assert_int_equal(fclose(out), 0);
}

static void test_mixed_batches_sqlite_matches_model(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, MIX_KEYS, DIM, 4242);
  static mix_model m;
  memset(&m, 0, sizeof m);
  corpus_put(db, &c, 0, 200, 50);
  for (int i = 0; i < 200; i++) {
    m.alive[i] = 1;
    strcpy(m.caption[i], c.caption[i]);
    strcpy(m.category[i], c.category[i]);
    m.year[i] = c.year[i];
  }
  static mix_batch b[6];
  rng_state = 99;
  for (int j = 0; j < 6; j++)
    mix_plan(&b[j]);
  /* Written live. */
  for (int j = 0; j < 3; j++) {
    CHECK(mix_run(db, &c, &b[j]));
    mix_apply(&m, &b[j]);
  }
  mix_check(t.dir, &m);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);

  /* Replayed: a child writes three more pairs of batches and dies without
   * closing; meta.sqlite is put back to before them, so the next open
   * replays them all from LMDB's log. */
  char path[256], bak[256], wal[256], shm[256];
  snprintf(path, sizeof path, "%s/meta.sqlite", t.dir);
  snprintf(bak, sizeof bak, "%s/meta.sqlite.bak", t.root);
  snprintf(wal, sizeof wal, "%s/meta.sqlite-wal", t.dir);
  snprintf(shm, sizeof shm, "%s/meta.sqlite-shm", t.dir);
  assert_int_equal(access(wal, F_OK), -1); /* close checkpointed it */
  copy_file(path, bak);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    vlm_db *cdb;
    if (vlm_db_open(t.dir, NULL, &cdb) != 0)
      _exit(1);
    for (int j = 3; j < 6; j++)
      if (mix_run(cdb, &c, &b[j]) != 0)
        _exit(2);
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  int nbatches = 0;
  for (int j = 3; j < 6; j++)
    nbatches += mix_apply(&m, &b[j]);
  char want[64];
  snprintf(want, sizeof want, "replayed %d batch", nbatches);
  copy_file(bak, path);
  unlink(wal);
  unlink(shm);
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 1);
  if (!strstr(last_warning, want))
    fail_msg("warning \"%s\", expected \"%s\"", last_warning, want);
  CHECK(vlm_db_verify(db));
  mix_check(t.dir, &m);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ mixed writes */

/* vlm_db_write: random batches of ADD, UPSERT and DELETE over a few keys,
 * repeats within a batch included, against a model applying the ops in
 * order; a batch with one bad op changes nothing; live, after a reopen and
 * after meta.sqlite is replayed from the log. */
enum { MW_KEYS = 24 };

typedef struct {
  int version[MW_KEYS]; /* -1 absent */
} mw_model;

static void mw_vec(int key, int version, float *v) {
  uint64_t keep = rng_state;
  rng_state = (uint64_t)key * 1000003u + (uint64_t)version * 7919u + 1;
  unit(v, DIM);
  rng_state = keep;
}

static void mw_check(vlm_db *db, const mw_model *m, const char *when) {
  int64_t present = 0;
  for (int k = 0; k < MW_KEYS; k++) {
    char key[16], cap[32];
    snprintf(key, sizeof key, "mw%d", k);
    vlm_record *r = NULL;
    int rc = vlm_db_get(db, key, &r);
    if (m->version[k] < 0) {
      if (rc != VLM_ENOTFOUND)
        fail_msg("%s: %s should be absent (%d)", when, key, rc);
      continue;
    }
    present++;
    if (rc)
      fail_msg("%s: %s missing: %s", when, key, vlm_errmsg());
    snprintf(cap, sizeof cap, "v%d", m->version[k]);
    if (!r->caption || strcmp(r->caption, cap))
      fail_msg("%s: %s is \"%s\", expected \"%s\"", when, key,
               r->caption ? r->caption : "(none)", cap);
    float want[DIM];
    mw_vec(k, m->version[k], want);
    for (int d = 0; d < DIM; d++)
      if (fabsf(r->image_vec[d] - want[d]) > 1e-6f)
        fail_msg("%s: %s: vector differs", when, key);
    vlm_record_free(r);
  }
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  if (info.items != present)
    fail_msg("%s: %lld items, expected %lld", when, (long long)info.items,
             (long long)present);
  /* meta.sqlite agrees: a filter over every row, and BM25 by caption */
  CHECK(vlm_db_verify(db));
}

/* Run nb random batches on db (NULL: the model only, drawing the same
 * batches) and the model; versions count up from *ver. */
static void mw_run(vlm_db *db, mw_model *m, int nb, int *ver) {
  vlm_write_op ops[12];
  float vecs[12][DIM];
  char keys[12][16], caps[12][32];
  int changed[12];
  for (int b = 0; b < nb; b++) {
    int n = 1 + (int)(rng_next() % 12);
    mw_model next = *m;
    int want[12];
    for (int i = 0; i < n; i++) {
      int k = (int)(rng_next() % MW_KEYS);
      int kind = (int)(rng_next() % 3);
      memset(&ops[i], 0, sizeof ops[i]);
      snprintf(keys[i], sizeof keys[i], "mw%d", k);
      ops[i].kind = (vlm_write_kind)kind;
      ops[i].item.key = keys[i];
      if (kind == VLM_WRITE_DELETE) {
        want[i] = next.version[k] >= 0;
        next.version[k] = -1;
        continue;
      }
      int v = (*ver)++;
      mw_vec(k, v, vecs[i]);
      snprintf(caps[i], sizeof caps[i], "v%d", v);
      ops[i].item.image_vec = vecs[i];
      ops[i].item.caption = caps[i];
      if (kind == VLM_WRITE_ADD && next.version[k] >= 0) {
        want[i] = 0;
      } else {
        want[i] = 1;
        next.version[k] = v;
      }
    }
    if (b % 7 == 3) { /* one bad op: nothing of the batch is written */
      int bad = (int)(rng_next() % (uint64_t)n);
      static float nan_vec[DIM];
      nan_vec[0] = NAN;
      ops[bad].kind = VLM_WRITE_UPSERT;
      ops[bad].item.image_vec = nan_vec;
      if (!db)
        continue;
      EXPECT_ERR(VLM_ENUMERIC, vlm_db_write(db, ops, n, changed));
      for (int i = 0; i < n; i++)
        assert_int_equal(changed[i], 0);
      continue;
    }
    if (!db) {
      *m = next;
      continue;
    }
    CHECK(vlm_db_write(db, ops, n, changed));
    for (int i = 0; i < n; i++)
      if (changed[i] != want[i])
        fail_msg("batch %d op %d (%s %s): changed %d, expected %d", b, i,
                 ops[i].kind == VLM_WRITE_DELETE ? "DELETE"
                 : ops[i].kind == VLM_WRITE_ADD  ? "ADD"
                                                 : "UPSERT",
                 keys[i], changed[i], want[i]);
    *m = next;
  }
}

static void test_write_mixed_batches(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  mw_model m;
  for (int k = 0; k < MW_KEYS; k++)
    m.version[k] = -1;
  int ver = 0;
  rng_state = 5150;
  mw_run(db, &m, 60, &ver);
  mw_check(db, &m, "live");
  vlm_db_close(db);
  db = open_db(t.dir);
  mw_check(db, &m, "reopened");
  vlm_db_close(db);

  /* replayed: a child writes more batches and dies without closing;
   * meta.sqlite is put back to before them, so the open replays them */
  char path[256], bak[256], side[256];
  snprintf(path, sizeof path, "%s/meta.sqlite", t.dir);
  snprintf(bak, sizeof bak, "%s/meta.sqlite.bak", t.root);
  copy_file(path, bak);
  uint64_t keep = rng_state;
  int keep_ver = ver;
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    vlm_db *cdb;
    if (vlm_db_open(t.dir, NULL, &cdb) != 0)
      _exit(1);
    mw_model cm = m;
    mw_run(cdb, &cm, 20, &ver);
    _exit(0);
  }
  int st;
  waitpid(pid, &st, 0);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  rng_state = keep; /* the same batches on the model */
  ver = keep_ver;
  mw_run(NULL, &m, 20, &ver);
  copy_file(bak, path);
  for (int i = 0; i < 2; i++) {
    snprintf(side, sizeof side, "%s%s", path, i ? "-shm" : "-wal");
    unlink(side);
  }
  warnings = 0;
  db = open_db(t.dir);
  assert_non_null(strstr(last_warning, "replayed"));
  mw_check(db, &m, "replayed");
  vlm_db_close(db);
  tmp_free(&t);
}

/* VLM_WRITE_UPDATE changes only what the item names: metadata alone
 * keeps the vectors, thumbnail, caption and source (filters and BM25 see
 * the change); a caption alone keeps the metadata; a missing key is
 * skipped; a bad field type refuses the batch. */
static int upd_count(vlm_db *db, const char *filter, const char *bm25,
                     const float *q) {
  vlm_search_options o = {0};
  o.k = 50;
  o.exact = 1;
  o.filter = filter;
  o.hybrid_text = bm25;
  vlm_hit *hits = NULL;
  int nh = 0;
  CHECK(vlm_db_search(db, bm25 ? NULL : q, &o, &hits, &nh));
  vlm_hits_free(hits, nh);
  return nh;
}

static void test_update_changes_only_what_it_names(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  float img[DIM], txt[DIM], txt2[DIM];
  rng_state = 808;
  unit(img, DIM);
  unit(txt, DIM);
  unit(txt2, DIM);
  static const unsigned char thumb[] = {0xff, 0xd8, 0xff, 0xe0, 1, 2, 3};
  vlm_item it = {.key = "car", .image_vec = img, .text_vec = txt,
                 .caption = "a red zebra car", .source = "file:///car.jpg",
                 .thumb = thumb, .thumb_len = sizeof thumb,
                 .meta_json = "{\"category\": \"cars\", \"year\": 2001}"};
  CHECK(vlm_db_put(db, &it, 1, 0, NULL));
  vlm_write_op op = {.kind = VLM_WRITE_UPDATE};
  int changed = -1;

  /* metadata alone */
  op.item = (vlm_item){.key = "car",
                       .meta_json = "{\"category\": \"art\", \"year\": 1999}"};
  CHECK(vlm_db_write(db, &op, 1, &changed));
  assert_int_equal(changed, 1);
  for (int pass = 0; pass < 2; pass++) {
    vlm_record *r = NULL;
    CHECK(vlm_db_get(db, "car", &r));
    assert_string_equal(r->caption, "a red zebra car");
    assert_string_equal(r->source, "file:///car.jpg");
    assert_int_equal(r->thumb_len, sizeof thumb);
    assert_memory_equal(r->thumb, thumb, sizeof thumb);
    assert_non_null(r->image_vec);
    assert_non_null(r->text_vec);
    assert_memory_equal(r->image_vec, img, sizeof img);
    assert_memory_equal(r->text_vec, txt, sizeof txt);
    assert_non_null(strstr(r->meta_json, "\"art\""));
    vlm_record_free(r);
    assert_int_equal(upd_count(db, "category = 'art' AND year = 1999", NULL,
                               img), 1);
    assert_int_equal(upd_count(db, "category = 'cars'", NULL, img), 0);
    assert_int_equal(upd_count(db, NULL, "zebra", NULL), 1);
    CHECK(vlm_db_verify(db));
    if (pass == 0) { /* and after a reopen */
      vlm_db_close(db);
      db = open_db(t.dir);
    }
  }
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.items, 1);
  assert_int_equal(info.image_vectors, 1);
  assert_int_equal(info.text_vectors, 1);

  /* a caption and a text vector; the metadata stays */
  op.item = (vlm_item){.key = "car", .caption = "a blue okapi",
                       .text_vec = txt2};
  CHECK(vlm_db_write(db, &op, 1, &changed));
  assert_int_equal(changed, 1);
  vlm_record *r = NULL;
  CHECK(vlm_db_get(db, "car", &r));
  assert_string_equal(r->caption, "a blue okapi");
  assert_memory_equal(r->image_vec, img, sizeof img);
  assert_memory_equal(r->text_vec, txt2, sizeof txt2);
  assert_non_null(strstr(r->meta_json, "\"art\""));
  vlm_record_free(r);
  assert_int_equal(upd_count(db, NULL, "okapi", NULL), 1);
  assert_int_equal(upd_count(db, NULL, "zebra", NULL), 0);
  assert_int_equal(upd_count(db, "year = 1999", NULL, img), 1);

  /* a missing key is skipped; a bad type refuses the whole batch */
  vlm_write_op two[2] = {
      {.kind = VLM_WRITE_UPDATE, .item = {.key = "nope", .caption = "x"}},
      {.kind = VLM_WRITE_UPDATE, .item = {.key = "car", .caption = "y"}}};
  int ch2[2];
  CHECK(vlm_db_write(db, two, 2, ch2));
  assert_int_equal(ch2[0], 0);
  assert_int_equal(ch2[1], 1);
  assert_int_equal(vlm_db_exists(db, "nope"), 0);
  two[1].item.meta_json = "{\"year\": \"not a number\"}";
  EXPECT_ERR(VLM_EINVAL, vlm_db_write(db, two, 2, ch2));
  CHECK(vlm_db_get(db, "car", &r));
  assert_string_equal(r->caption, "y");
  vlm_record_free(r);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  tmp_free(&t);
}

/* ------------------------------------------------------------ crash test */

static const char *build_dir(void) {
  const char *b = getenv("BUILD");
  return b && *b ? b : "build";
}

static int cm_check_state(vlm_db *db, const int *version, char *why,
                          size_t whylen) {
  vlm_db_info info;
  int present = 0;
  if (vlm_db_stat(db, &info) != 0) {
    snprintf(why, whylen, "stat: %s", vlm_errmsg());
    return -1;
  }
  for (int i = 0; i < CM_NKEYS; i++)
    present += version[i] >= 0;
  if (info.items != present) {
    snprintf(why, whylen, "%lld items, expected %d", (long long)info.items,
             present);
    return -1;
  }
  for (int i = 0; i < CM_NKEYS; i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i);
    vlm_record *r = NULL;
    int rc = vlm_db_get(db, key, &r);
    if (version[i] < 0) {
      if (rc != VLM_ENOTFOUND) {
        snprintf(why, whylen, "%s should be absent (%s)", key,
                 vlm_errname(rc));
        vlm_record_free(r);
        return -1;
      }
      continue;
    }
    if (rc != 0) {
      snprintf(why, whylen, "%s: %s", key, vlm_errmsg());
      return -1;
    }
    cm_item want;
    cm_make(&want, i, version[i]);
    int same =
        r->image_vec && !memcmp(r->image_vec, want.image, sizeof want.image) &&
        !!r->text_vec == !!want.item.text_vec &&
        (!r->text_vec || !memcmp(r->text_vec, want.text, sizeof want.text)) &&
        r->caption && !strcmp(r->caption, want.caption) &&
        !!r->source == !!want.item.source &&
        (!r->source || !strcmp(r->source, want.source)) &&
        r->thumb_len == want.item.thumb_len &&
        (!r->thumb_len || !memcmp(r->thumb, want.thumb, r->thumb_len)) &&
        !strcmp(r->meta_json, want.meta);
    vlm_record_free(r);
    if (!same) {
      snprintf(why, whylen, "%s: payload or vector differs from version %d",
               key, version[i]);
      return -1;
    }
  }
  return 0;
}

/* Check each backup BACKUPS/bk-<j> not checked before: it opens,
 * verifies and holds exactly the state after op j (it is then renamed
 * bk-<j>.ok).  scratch holds CM_NKEYS ints.  Returns how many. */
static int cm_check_backups(const char *backups, int *scratch,
                            uint64_t seed) {
  DIR *d = opendir(backups);
  struct dirent *e;
  int n = 0;
  assert_non_null(d);
  while ((e = readdir(d))) {
    int j;
    char tail;
    if (sscanf(e->d_name, "bk-%d%c", &j, &tail) != 1)
      continue;
    char path[512], ok[512], why[256] = "";
    snprintf(path, sizeof path, "%s/%s", backups, e->d_name);
    for (int i = 0; i < CM_NKEYS; i++)
      scratch[i] = -1;
    for (int k = 0; k <= j; k++)
      cm_apply(k, scratch);
    vlm_db *b = open_db(path);
    if (vlm_db_verify(b) != 0)
      fail_msg("backup %s (seed %llu) does not verify: %s", path,
               (unsigned long long)seed, vlm_errmsg());
    if (cm_check_state(b, scratch, why, sizeof why) != 0)
      fail_msg("backup %s (seed %llu) is not the state after op %d: %s",
               path, (unsigned long long)seed, j, why);
    vlm_db_close(b);
    snprintf(ok, sizeof ok, "%s.ok", path);
    assert_int_equal(rename(path, ok), 0);
    n++;
  }
  closedir(d);
  return n;
}

/* A backup killed part-way leaves only its .bk-<j>.creating-PID sibling
 * (never a bk-<j>): count and remove them. */
static int cm_sweep_backups(const char *backups) {
  DIR *d = opendir(backups);
  struct dirent *e;
  int n = 0;
  assert_non_null(d);
  while ((e = readdir(d))) {
    if (e->d_name[0] != '.' || !strstr(e->d_name, ".creating-"))
      continue;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", backups, e->d_name);
    rm_rf(path);
    n++;
  }
  closedir(d);
  return n;
}

static void test_crash_kill9_recovery(void **state) {
  (void)state;
  char helper[256];
  snprintf(helper, sizeof helper, "%s/helpers/crash_writer", build_dir());
  if (access(helper, X_OK) != 0)
    fail_msg("%s is not built (make builds it with the tests)", helper);
  tmp t;
  tmp_make(&t);
  vlm_db_config cfg = {0};
  vlm_field f[] = {{"category", VLM_FIELD_TEXT}, {"year", VLM_FIELD_INT}};
  cfg.dim = CM_DIM;
  cfg.index_factory = CM_FACTORY;
  cfg.model_id = "crash-model";
  cfg.fields = f;
  cfg.nfields = 2;
  vlm_db *db;
  CHECK(vlm_db_create(t.dir, &cfg, &db));
  vlm_db_close(db);
  int *acked_state = calloc(CM_NKEYS, sizeof(int));
  int *next_state = calloc(CM_NKEYS, sizeof(int));
  for (int i = 0; i < CM_NKEYS; i++)
    acked_state[i] = -1;
  int last_acked = -1, kills = 0, finished = 0, rounds = 0, unacked = 0;
  int ops_total = 0;
  rng_state = (uint64_t)time(NULL);
  uint64_t seed = rng_state;
  /* make test: 50 kills; make crash: VLM_CRASH_KILLS (1,000 or more) */
  const char *want_env = getenv("VLM_CRASH_KILLS");
  int want = want_env && atoi(want_env) > 0 ? atoi(want_env) : 50;
  int items_checked = 0;
  /* The writer backs the database up now and then (kills land in backups
   * too); every backup that reached its name must hold exactly the state
   * after the op it followed. */
  char backups[160];
  snprintf(backups, sizeof backups, "%s/backups", t.root);
  assert_int_equal(mkdir(backups, 0755), 0);
  int backups_checked = 0, backups_killed = 0;
  while (kills < want && rounds < 8 * want) {
    rounds++;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    char first[16];
    snprintf(first, sizeof first, "%d", last_acked + 1);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      dup2(pfd[1], 1);
      close(pfd[0]);
      close(pfd[1]);
      execl(helper, helper, t.dir, first, backups, (char *)NULL);
      _exit(127);
    }
    close(pfd[1]);
    /* Kill at a random moment: sometimes during open and recovery,
     * mostly during writes and checkpoints. */
    int delay_us = (int)(rng_next() % 4 == 0 ? rng_next() % 20000
                                             : rng_next() % 400000);
    usleep((useconds_t)delay_us);
    int killed = kill(pid, SIGKILL) == 0;
    int status;
    waitpid(pid, &status, 0);
    /* Read every acknowledgement the child wrote. */
    char buf[8192];
    size_t len = 0;
    ssize_t r;
    while ((r = read(pfd[0], buf + len, sizeof buf - 1 - len)) > 0)
      len += (size_t)r;
    close(pfd[0]);
    buf[len] = '\0';
    int done = strstr(buf, "done\n") != NULL;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
      if (!strcmp(line, "open") || !strcmp(line, "done") ||
          !strncmp(line, "backup ", 7))
        continue;
      int j = atoi(line);
      assert_int_equal(j, last_acked + 1);
      cm_apply(j, acked_state);
      last_acked = j;
      ops_total++;
    }
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      kills++;
    else if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
      fail_msg("writer exited with status %d (seed %llu)", status,
               (unsigned long long)seed);
    (void)killed;

    /* Reopen (recovery) and check: the state is that after the last
     * acknowledged op, or after the one more op that may have committed
     * unacknowledged - exactly, never a mixture. */
    vlm_db_open_options o = {0};
    o.warn = count_warning;
    CHECK(vlm_db_open(t.dir, &o, &db));
    int vr = vlm_db_verify(db);
    if (vr)
      fail_msg("after kill %d (seed %llu): stores disagree: %s", kills,
               (unsigned long long)seed, vlm_errmsg());
    char why_a[256] = "", why_b[256] = "";
    int which = 0;
    if (cm_check_state(db, acked_state, why_a, sizeof why_a) == 0) {
      which = 1;
    } else if (last_acked + 1 < CM_NOPS) {
      memcpy(next_state, acked_state, CM_NKEYS * sizeof(int));
      cm_apply(last_acked + 1, next_state);
      if (cm_check_state(db, next_state, why_b, sizeof why_b) == 0)
        which = 2;
    }
    if (!which)
      fail_msg("after kill %d at op %d (seed %llu): not the acknowledged "
               "state (%s) nor the next one (%s)",
               kills, last_acked, (unsigned long long)seed, why_a, why_b);
    unacked += which == 2;
    /* Search finds acknowledged items by their own vectors. */
    const int *st = which == 1 ? acked_state : next_state;
    for (int s = 0; s < 40; s++) {
      int i = (int)(rng_next() % CM_NKEYS);
      if (st[i] < 0)
        continue;
      cm_item it;
      cm_make(&it, i, st[i]);
      vlm_search_options so = {0};
      vlm_hit *hits;
      int nh, found = 0;
      so.k = 5;
      so.target = VLM_TARGET_IMAGE;
      so.ef_search = 256;
      CHECK(vlm_db_search(db, it.image, &so, &hits, &nh));
      for (int h = 0; h < nh; h++)
        found |= !strcmp(hits[h].key, it.key) && hits[h].score > 0.9999f;
      vlm_hits_free(hits, nh);
      if (!found)
        fail_msg("after kill %d: search does not find %s", kills, it.key);
    }
    for (int i = 0; i < CM_NKEYS; i++)
      items_checked += st[i] >= 0;
    vlm_db_close(db);
    backups_checked += cm_check_backups(backups, next_state, seed);
    backups_killed += cm_sweep_backups(backups);
    if (done) {
      finished++;
      /* Start over on a fresh database to collect more kills. */
      rm_rf(t.dir);
      CHECK(vlm_db_create(t.dir, &cfg, &db));
      vlm_db_close(db);
      for (int i = 0; i < CM_NKEYS; i++)
        acked_state[i] = -1;
      last_acked = -1;
      rm_rf(backups);
      assert_int_equal(mkdir(backups, 0755), 0);
    }
  }
  printf("[   INFO   ] crash test: %d kills, %d ops acknowledged, %d "
         "complete runs, %d kills after a commit before its ack, %d "
         "acknowledged items checked exactly after the kills, 0 lost; %d "
         "backups taken between the kills each opened, verified and held "
         "exactly its op's state, %d killed part-way left no name behind; "
         "seed %llu\n", kills, ops_total, finished, unacked, items_checked,
         backups_checked, backups_killed, (unsigned long long)seed);
  assert_true(kills >= want);
  free(acked_state);
  free(next_state);
  tmp_free(&t);
}

/* ------------------------------------------------------------ live readers */

/* A read-only process beside a writer that ingests (the crash model's
 * ops) and is killed -9 and restarted again and again.  The reader opens,
 * searches, verifies and closes in a loop; every filtered search must
 * answer exactly what one state of the model holds: the keys of category
 * c1 after some op j (the filter's ids come from SQLite, the scores from
 * LMDB: a search whose two snapshots were a batch apart would miss the
 * items that batch replaced). */
static uint64_t lr_key_hash(int i) { return cm_mix((uint64_t)i + 12345); }

static int lr_reader(const char *dir, double seconds, const uint64_t *hash,
                     const int *count, char *why, size_t whylen,
                     long *searches, long *opens, long *verifies,
                     long *waits) {
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  vlm_search_options o = {0};
  o.k = VLM_DB_MAX_K;
  o.exact = 1;
  o.filter = "category = 'c1'";
  float q[CM_DIM] = {1};
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((double)(t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >
        seconds)
      return 0;
    vlm_db_open_options ro = {.readonly = 1, .warn = count_warning};
    vlm_db *db = NULL;
    int rc = vlm_db_open(dir, &ro, &db);
    if (rc) {
      snprintf(why, whylen, "open: %s", vlm_errmsg());
      return -1;
    }
    (*opens)++;
    for (int k = 0; k < 5; k++) {
      vlm_hit *hits = NULL;
      int nh = 0;
      if ((rc = vlm_db_search(db, q, &o, &hits, &nh)) == VLM_ESTATE) {
        /* the writer died between its two commits and is not back yet:
         * a filter has to wait for the recovery its restart runs */
        (*waits)++;
        break;
      }
      if (rc) {
        snprintf(why, whylen, "search: %s", vlm_errmsg());
        vlm_db_close(db);
        return -1;
      }
      uint64_t h = 0;
      for (int i = 0; i < nh; i++)
        h += lr_key_hash(atoi(hits[i].key + 1));
      vlm_hits_free(hits, nh);
      int match = 0;
      for (int j = 0; j <= CM_NOPS && !match; j++)
        match = count[j] == nh && hash[j] == h;
      if (!match) {
        snprintf(why, whylen, "a filtered search gave %d keys that are no "
                 "state of the model", nh);
        vlm_db_close(db);
        return -1;
      }
      (*searches)++;
    }
    if (*opens % 4 == 0) {
      if ((rc = vlm_db_verify(db)) == VLM_ESTATE) {
        (*waits)++;
      } else if (rc) {
        snprintf(why, whylen, "verify: %s", vlm_errmsg());
        vlm_db_close(db);
        return -1;
      } else {
        (*verifies)++;
      }
    }
    vlm_db_close(db);
  }
}

static void test_readers_beside_a_live_writer(void **state) {
  (void)state;
  char helper[256];
  snprintf(helper, sizeof helper, "%s/helpers/crash_writer", build_dir());
  tmp t;
  tmp_make(&t);
  vlm_field f[] = {{"category", VLM_FIELD_TEXT}, {"year", VLM_FIELD_INT}};
  vlm_db_config cfg = {.dim = CM_DIM, .index_factory = CM_FACTORY,
                       .model_id = "crash-model", .fields = f, .nfields = 2};
  vlm_db *db;
  CHECK(vlm_db_create(t.dir, &cfg, &db));
  vlm_db_close(db);
  /* the model's c1 keys after each op j (j = 0: before any) */
  static uint64_t hash[CM_NOPS + 1];
  static int count[CM_NOPS + 1];
  int *version = malloc(CM_NKEYS * sizeof *version);
  for (int i = 0; i < CM_NKEYS; i++)
    version[i] = -1;
  for (int j = 0; j <= CM_NOPS; j++) {
    if (j > 0)
      cm_apply(j - 1, version);
    hash[j] = 0;
    count[j] = 0;
    for (int i = 0; i < CM_NKEYS; i++)
      if (version[i] >= 0 && i % 5 == 1) {
        hash[j] += lr_key_hash(i);
        count[j]++;
      }
  }
  free(version);
  /* the reader: its own process, for as long as the writer runs */
  int rp[2];
  assert_int_equal(pipe(rp), 0);
  pid_t reader = fork_trial();
  if (reader == 0) {
    close(rp[0]);
    char why[512] = "";
    long searches = 0, opens = 0, verifies = 0, waits = 0;
    int rc = lr_reader(t.dir, 12.0, hash, count, why, sizeof why, &searches,
                       &opens, &verifies, &waits);
    dprintf(rp[1], "%d %ld %ld %ld %ld %s\n", rc, searches, opens, verifies,
            waits, why);
    _exit(0);
  }
  close(rp[1]);
  /* the writer: killed at random moments, restarted after its last
   * acknowledged op, until the reader is done */
  int last_acked = -1, kills = 0;
  rng_state = (uint64_t)time(NULL);
  for (int round = 0;; round++) {
    int ws;
    if (waitpid(reader, &ws, WNOHANG) == reader)
      break;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    char first[16];
    snprintf(first, sizeof first, "%d", last_acked + 1 < CM_NOPS
                                            ? last_acked + 1 : 0);
    if (last_acked + 1 >= CM_NOPS)
      break; /* the whole model is written */
    pid_t w = fork();
    assert_true(w >= 0);
    if (w == 0) {
      dup2(pfd[1], 1);
      close(pfd[0]);
      close(pfd[1]);
      execl(helper, helper, t.dir, first, (char *)NULL);
      _exit(127);
    }
    close(pfd[1]);
    usleep((useconds_t)(rng_next() % 300000));
    if (kill(w, SIGKILL) == 0)
      kills++;
    waitpid(w, &ws, 0);
    char buf[8192];
    size_t len = 0;
    ssize_t r;
    while ((r = read(pfd[0], buf + len, sizeof buf - 1 - len)) > 0)
      len += (size_t)r;
    close(pfd[0]);
    buf[len] = '\0';
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
      if (strcmp(line, "open") && strcmp(line, "done") &&
          strncmp(line, "backup ", 7))
        last_acked = atoi(line);
  }
  int ws;
  waitpid(reader, &ws, 0);
  char out[1024] = "";
  ssize_t n = read(rp[0], out, sizeof out - 1);
  close(rp[0]);
  out[n > 0 ? n : 0] = '\0';
  int rc = -1;
  long searches = 0, opens = 0, verifies = 0, waits = 0;
  char why[512] = "";
  sscanf(out, "%d %ld %ld %ld %ld %511[^\n]", &rc, &searches, &opens,
         &verifies, &waits, why);
  if (rc != 0)
    fail_msg("reader beside the writer (%d kills, op %d): %s", kills,
             last_acked, why[0] ? why : out);
  print_message("a reader beside a writer killed %d times (%d ops): %ld "
                "opens, %ld filtered searches each exactly a state of the "
                "model, %ld verifies passed, %ld waits for a restart's "
                "recovery\n", kills, last_acked + 1, opens, searches,
                verifies, waits);
  assert_true(searches > 0 && kills > 0);
  tmp_free(&t);
}

/* ------------------------------------------------------------ concurrency */

#define CC_M 20      /* items per batch, all with the same vector */
#define CC_OPS 120   /* writer ops */
#define CC_READERS 4

typedef struct {
  vlm_db *db;
  float vec[CC_OPS][DIM];
  int ops_done;   /* written by the writer, read by readers (atomics) */
  int stop;
  int violations;
  int approximate; /* HNSW: an unfiltered search may miss a duplicate */
  long searches;
  char first_violation[256];
} cc_shared;

static void cc_vector(float *v, int b) {
  uint64_t save = rng_state;
  rng_state = 0xabcdef + (uint64_t)b * 7919;
  unit(v, DIM);
  rng_state = save;
}

static void *cc_writer(void *arg) {
  cc_shared *s = arg;
  char keys[CC_M][32];
  vlm_item items[CC_M];
  char meta[64];
  for (int b = 0; b < CC_OPS; b++) {
    int rc;
    if (b % 4 == 3) {
      /* delete a whole earlier batch in one op */
      const char *kp[CC_M];
      int victim = b - 3;
      for (int i = 0; i < CC_M; i++) {
        snprintf(keys[i], 32, "b%d-%d", victim, i);
        kp[i] = keys[i];
      }
      rc = vlm_db_delete(s->db, kp, CC_M, NULL);
    } else {
      snprintf(meta, sizeof meta, "{\"year\": %d}", b);
      for (int i = 0; i < CC_M; i++) {
        snprintf(keys[i], 32, "b%d-%d", b, i);
        memset(&items[i], 0, sizeof items[i]);
        items[i].key = keys[i];
        items[i].image_vec = s->vec[b];
        items[i].meta_json = meta;
        items[i].caption = "same caption for all";
      }
      rc = vlm_db_put(s->db, items, CC_M, 0, NULL);
    }
    if (rc) {
      __atomic_store_n(&s->violations, 1000, __ATOMIC_SEQ_CST);
      snprintf(s->first_violation, sizeof s->first_violation, "writer: %s",
               vlm_errmsg());
      break;
    }
    if (b % 25 == 24)
      vlm_db_checkpoint(s->db);
    __atomic_store_n(&s->ops_done, b + 1, __ATOMIC_SEQ_CST);
  }
  __atomic_store_n(&s->stop, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

static void cc_violation(cc_shared *s, const char *fmt, int a, int b, int c) {
  if (__atomic_fetch_add(&s->violations, 1, __ATOMIC_SEQ_CST) == 0)
    snprintf(s->first_violation, sizeof s->first_violation, fmt, a, b, c);
}

static void *cc_reader(void *arg) {
  cc_shared *s = arg;
  uint64_t r = (uint64_t)(uintptr_t)pthread_self();
  while (!__atomic_load_n(&s->stop, __ATOMIC_SEQ_CST)) {
    int done = __atomic_load_n(&s->ops_done, __ATOMIC_SEQ_CST);
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    int b = (int)((r >> 33) % (uint64_t)(done + 2));
    if (b >= CC_OPS || b % 4 == 3)
      continue;
    vlm_search_options o = {0};
    vlm_hit *hits;
    int nh, n = 0;
    char prefix[16];
    snprintf(prefix, sizeof prefix, "b%d-", b);
    /* Unfiltered: all CC_M copies of batch b's vector, or none (with an
     * approximate index: never more than CC_M). */
    o.k = 2 * CC_M;
    o.target = VLM_TARGET_IMAGE;
    if (vlm_db_search(s->db, s->vec[b], &o, &hits, &nh) != 0) {
      cc_violation(s, "search failed (batch %d)%.0d%.0d", b, 0, 0);
      continue;
    }
    for (int h = 0; h < nh; h++)
      n += !strncmp(hits[h].key, prefix, strlen(prefix)) &&
           hits[h].score > 0.9999f;
    vlm_hits_free(hits, nh);
    if (n != 0 && n != CC_M && !(s->approximate && n < CC_M))
      cc_violation(s, "search saw %d of the %d items of batch %d", n, CC_M,
                   b);
    /* Filtered (SQLite snapshot) and exact: the same rule. */
    char filter[32];
    snprintf(filter, sizeof filter, "year = %d", b);
    o.filter = filter;
    o.exact = (int)(r & 1);
    if (vlm_db_search(s->db, s->vec[b], &o, &hits, &nh) != 0) {
      cc_violation(s, "filtered search failed (batch %d)%.0d%.0d", b, 0, 0);
      continue;
    }
    if (nh != 0 && nh != CC_M)
      cc_violation(s, "filtered search saw %d of the %d items of batch %d",
                   nh, CC_M, b);
    vlm_hits_free(hits, nh);
    __atomic_fetch_add(&s->searches, 1, __ATOMIC_SEQ_CST);
  }
  return NULL;
}

static void run_concurrency(const char *factory, int async) {
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, factory, DIM);
  vlm_db_close(db);
  vlm_db_open_options o = {0};
  o.async_index = async;
  o.warn = count_warning;
  CHECK(vlm_db_open(t.dir, &o, &db));
  cc_shared *s = calloc(1, sizeof *s);
  s->db = db;
  s->approximate = strcmp(factory, "Flat") != 0;
  for (int b = 0; b < CC_OPS; b++)
    cc_vector(s->vec[b], b);
  pthread_t w, rd[CC_READERS];
  for (int i = 0; i < CC_READERS; i++)
    assert_int_equal(pthread_create(&rd[i], NULL, cc_reader, s), 0);
  assert_int_equal(pthread_create(&w, NULL, cc_writer, s), 0);
  pthread_join(w, NULL);
  for (int i = 0; i < CC_READERS; i++)
    pthread_join(rd[i], NULL);
  if (s->violations)
    fail_msg("%s%s: %d violations; first: %s", factory,
             async ? " (async)" : "", s->violations, s->first_violation);
  printf("[   INFO   ] %s%s: %ld consistent searches during %d writes\n",
         factory, async ? " async" : "", s->searches, CC_OPS);
  CHECK(vlm_db_checkpoint(db));
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  free(s);
  tmp_free(&t);
}

static void test_concurrency_readers_never_see_half_a_batch(void **state) {
  (void)state;
  run_concurrency("Flat", 0);
  run_concurrency("HNSW32", 0);
  run_concurrency("Flat", 1);
}

/* ------------------------------------------------------------ commit faults */

/* The branches of the commit sequence a healthy disk never takes, through
 * the test fault points: LMDB's commit fails (nothing of the batch, the
 * database goes on); SQLite's commit fails and the replay mends it (the
 * batch is acknowledged and whole); both fail (the batch is durable in
 * LMDB, the error says so, writes are refused until a reopen repairs). */
extern int (*vlm__test_fault)(const char *where);
static const char *fault_at[3];

static int fault_hits, fault_hits_at[3];

static int fault_here(const char *where) {
  for (int i = 0; i < 3; i++)
    if (fault_at[i] && !strcmp(fault_at[i], where)) {
      fault_hits++;
      fault_hits_at[i]++;
      return 1;
    }
  return 0;
}

static int cf_count(vlm_db *db, const char *filter) {
  vlm_search_options o = {.k = 100, .exact = 1, .filter = filter};
  vlm_hit *hits = NULL;
  int nh = 0;
  float q[DIM] = {1};
  CHECK(vlm_db_search(db, q, &o, &hits, &nh));
  vlm_hits_free(hits, nh);
  return nh;
}

static void test_commit_faults(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 40, DIM, 515);
  corpus_put(db, &c, 0, 10, 10);
  vlm__test_fault = fault_here;

  /* 1. LMDB's commit fails: an error, nothing of the batch anywhere */
  fault_at[0] = "lmdb-commit";
  vlm_item it = corpus_item(&c, 10);
  int rc = vlm_db_put(db, &it, 1, 0, NULL);
  assert_true(rc < 0);
  fault_at[0] = NULL;
  assert_int_equal(vlm_db_exists(db, c.key[10]), 0);
  CHECK(vlm_db_verify(db));
  CHECK(vlm_db_put(db, &it, 1, 0, NULL)); /* and the next batch commits */
  assert_int_equal(vlm_db_exists(db, c.key[10]), 1);

  /* 2. SQLite's commit fails, the replay mends it: acknowledged, whole */
  fault_at[0] = "sql-commit";
  it = corpus_item(&c, 11);
  CHECK(vlm_db_put(db, &it, 1, 0, NULL));
  fault_at[0] = NULL;
  CHECK(vlm_db_verify(db));
  char filter[64];
  snprintf(filter, sizeof filter, "key = '%s'", c.key[11]);
  assert_int_equal(cf_count(db, filter), 1);

  /* 3. both fail: durable in LMDB, the error says so, writes refused */
  fault_at[0] = "sql-commit";
  fault_at[1] = "sql-replay";
  it = corpus_item(&c, 12);
  rc = vlm_db_put(db, &it, 1, 0, NULL);
  fault_at[0] = fault_at[1] = NULL;
  assert_true(rc < 0);
  assert_non_null(strstr(vlm_errmsg(), "committed in payload.lmdb"));
  it = corpus_item(&c, 13);
  EXPECT_ERR(VLM_ESTATE, vlm_db_put(db, &it, 1, 0, NULL));
  vlm__test_fault = NULL;
  vlm_db_close(db);
  warnings = 0;
  db = open_db(t.dir); /* the replay the open runs repairs it */
  assert_non_null(strstr(last_warning, "replayed 1 batch"));
  assert_int_equal(vlm_db_exists(db, c.key[12]), 1);
  snprintf(filter, sizeof filter, "key = '%s'", c.key[12]);
  assert_int_equal(cf_count(db, filter), 1);
  CHECK(vlm_db_verify(db));
  CHECK(vlm_db_put(db, &it, 1, 0, NULL));
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* The filtered index walk's retries.  A hybrid search lists every match
 * of its filter, and over the exact-scan limit (here 4,800 of 6,000) the
 * vector side walks the index with the matches as a bitmap: a walk that
 * comes back short, and a sample check that finds a match the walk
 * missed, widen the search and retry, then score the matches exactly.
 * With every retry failing the answer must be the exact search's. */
static char *hits_keys(vlm_hit *hits, int nh) {
  char *out = calloc(1, (size_t)nh * 16 + 1);
  for (int h = 0; h < nh; h++) {
    strcat(out, hits[h].key);
    strcat(out, " ");
  }
  return out;
}

static void test_planner_retries(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 6000, DIM, 717);
  corpus_put(db, &c, 0, 6000, 1000);
  static const char *modes[] = {"planner-short", "planner-missed"};
  vlm__test_fault = fault_here;
  for (int q = 0; q < 5; q++) {
    const float *qv = c.img + (size_t)(q * 37) * DIM;
    vlm_search_options o = {.k = 20, .target = VLM_TARGET_IMAGE,
                            .filter = "category != 'art'",
                            .hybrid_text = "river house"};
    vlm_hit *hits = NULL;
    int nh = 0;
    o.exact = 1;
    CHECK(vlm_db_search(db, qv, &o, &hits, &nh));
    char *want = hits_keys(hits, nh);
    vlm_hits_free(hits, nh);
    o.exact = 0;
    for (int mode = 0; mode < 2; mode++) {
      fault_at[0] = modes[mode];
      /* the listed matches are post-filtered against their bitmap
       * first: have that find too few, so the filtered walk runs */
      fault_at[1] = "planner-bits";
      fault_hits_at[0] = 0;
      CHECK(vlm_db_search(db, qv, &o, &hits, &nh));
      char *got = hits_keys(hits, nh);
      vlm_hits_free(hits, nh);
      if (fault_hits_at[0] == 0)
        fail_msg("%s: the fault point was never reached", modes[mode]);
      if (strcmp(got, want))
        fail_msg("%s: query %d: %s\nexact: %s", modes[mode], q, got, want);
      free(got);
    }
    fault_at[0] = fault_at[1] = NULL;
    free(want);
  }
  vlm__test_fault = NULL;
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ store faults */

/* Every store call of a batch, failed in turn through the test fault
 * points (the Nth call of one point fails as an I/O error would, for N =
 * 1, 2, ... until the batch no longer reaches an Nth call): each failure
 * must be VLM_EIO, leave the database exactly as it was (the same keys,
 * payloads, rows and index entries; verify passes), and the same batch
 * must then commit whole.  This is the SQLite project's fault-injection
 * loop applied to LMDB staging and the SQLite rows of put, upsert,
 * update and delete. */
static const char *nth_point;
static int nth_want, nth_seen;

static int fault_nth(const char *where) {
  if (!nth_point || strcmp(where, nth_point))
    return 0;
  nth_seen++;
  return nth_want < 0 || nth_seen == nth_want; /* < 0: every call */
}

static void nth_arm(const char *point, int n) {
  nth_point = point;
  nth_want = n;
  nth_seen = 0;
  vlm__test_fault = fault_nth;
}

static void nth_disarm(void) {
  nth_point = NULL;
  vlm__test_fault = NULL;
}

static void sf_caption_is(vlm_db *db, const char *key, const char *want) {
  vlm_record *rec = NULL;
  CHECK(vlm_db_get(db, key, &rec));
  if (!rec->caption || strcmp(rec->caption, want))
    fail_msg("%s: caption \"%s\", expected \"%s\"", key,
             rec->caption ? rec->caption : "(none)", want);
  vlm_record_free(rec);
}

/* The database holds exactly items [0, 20) of c as written. */
static void sf_expect_untouched(vlm_db *db, const corpus *c,
                                const char *what) {
  CHECK(vlm_db_verify(db));
  for (int i = 0; i < 22; i++)
    if (vlm_db_exists(db, c->key[i]) != (i < 20))
      fail_msg("%s: %s %s", what, c->key[i],
               i < 20 ? "is gone" : "was written");
  for (int i = 1; i < 4; i++)
    sf_caption_is(db, c->key[i], c->caption[i]);
  assert_int_equal(cf_count(db, "category != ''"), 20);
}

static void test_store_faults_fail_whole_batches(void **state) {
  (void)state;
  static const char *points[] = {"lmdb-begin", "lmdb-write", "sql-write"};
  corpus c;
  corpus_make(&c, 22, DIM, 919);
  for (int p = 0; p < 3; p++) {
    tmp t;
    tmp_make(&t);
    vlm_db *db = make_db(t.dir, "Flat", DIM);
    corpus_put(db, &c, 0, 20, 20);
    /* a new key, a replaced key (another item's vectors), a delete and an
     * update of the caption alone */
    vlm_write_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].kind = VLM_WRITE_ADD;
    ops[0].item = corpus_item(&c, 20);
    ops[1].kind = VLM_WRITE_UPSERT;
    ops[1].item = corpus_item(&c, 21);
    ops[1].item.key = c.key[1];
    ops[1].item.caption = "replaced";
    ops[2].kind = VLM_WRITE_DELETE;
    ops[2].item.key = c.key[2];
    ops[3].kind = VLM_WRITE_UPDATE;
    ops[3].item.key = c.key[3];
    ops[3].item.caption = "updated";
    int failures = 0, rc;
    for (int n = 1;; n++) {
      int changed[4] = {-1, -1, -1, -1};
      nth_arm(points[p], n);
      rc = vlm_db_write(db, ops, 4, changed);
      int reached = nth_seen >= n;
      nth_disarm();
      if (!reached)
        break;
      failures++;
      if (rc != VLM_EIO)
        fail_msg("%s #%d: %d (%s): %s, expected VLM_EIO", points[p], n, rc,
                 vlm_errname(rc), vlm_errmsg());
      for (int i = 0; i < 4; i++)
        assert_int_equal(changed[i], 0);
      char what[64];
      snprintf(what, sizeof what, "after %s #%d", points[p], n);
      sf_expect_untouched(db, &c, what);
      assert_true(n < 200);
    }
    if (rc != 0)
      fail_msg("%s: the batch without faults: %s", points[p], vlm_errmsg());
    /* the batch reaches each point at least once (a begin, and many puts
     * and rows) */
    assert_true(failures >= (p == 0 ? 1 : 8));
    CHECK(vlm_db_verify(db));
    assert_int_equal(vlm_db_exists(db, c.key[20]), 1);
    assert_int_equal(vlm_db_exists(db, c.key[2]), 0);
    sf_caption_is(db, c.key[1], "replaced");
    sf_caption_is(db, c.key[3], "updated");
    vlm_db_close(db);
    tmp_free(&t);
  }
  corpus_free(&c);
}

/* Vectors that do not reach the in-memory index (an add fails): the batch
 * is durable and acknowledged, a warning says indexing is behind, searches
 * still find it (the pending tail is scanned exactly), and the next batch
 * catches the index up with every vector counted once.  The second call of
 * each catch-up fails too, so one modality's add succeeds and the other's
 * does not.  A reindex whose build fails keeps the old index. */
static void expect_index_matches_exact(vlm_db *db, const corpus *c) {
  for (int q = 0; q < 3; q++) {
    vlm_search_options o = {.k = 10};
    vlm_hit *hits = NULL, *want = NULL;
    int nh = 0, nw = 0;
    const float *qv = c->img + (size_t)q * DIM;
    CHECK(vlm_db_search(db, qv, &o, &hits, &nh));
    o.exact = 1;
    CHECK(vlm_db_search(db, qv, &o, &want, &nw));
    assert_int_equal(nh, nw);
    for (int h = 0; h < nh; h++)
      if (strcmp(hits[h].key, want[h].key))
        fail_msg("query %d rank %d: %s, exact search %s", q, h, hits[h].key,
                 want[h].key);
    vlm_hits_free(hits, nh);
    vlm_hits_free(want, nw);
  }
}

static void test_index_add_faults(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  corpus c;
  corpus_make(&c, 60, DIM, 929);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  vlm_db_close(db);
  db = open_db(t.dir);
  corpus_put(db, &c, 0, 20, 20);
  for (int n = 1; n <= 2; n++) {
    warnings = 0;
    nth_arm("index-add", n);
    int written = 0;
    vlm_item items[10];
    for (int i = 0; i < 10; i++)
      items[i] = corpus_item(&c, 20 + 20 * (n - 1) + i);
    CHECK(vlm_db_put(db, items, 10, 0, &written));
    assert_int_equal(written, 10);
    if (nth_seen < n)
      fail_msg("index-add #%d was never reached", n);
    nth_disarm();
    if (warnings == 0 || !strstr(last_warning, "indexing"))
      fail_msg("index-add #%d: no warning (last: %s)", n, last_warning);
    expect_index_matches_exact(db, &c);
    /* the next batch catches up: each vector once */
    for (int i = 0; i < 10; i++)
      items[i] = corpus_item(&c, 30 + 20 * (n - 1) + i);
    CHECK(vlm_db_put(db, items, 10, 0, &written));
    CHECK(vlm_db_verify(db));
    expect_index_matches_exact(db, &c);
  }
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.items, 60);
  /* a reindex whose build fails: VLM_EIO, the old index serves on */
  nth_arm("index-add", -1);
  EXPECT_ERR(VLM_EIO, vlm_db_reindex(db, "HNSW16"));
  nth_disarm();
  CHECK(vlm_db_stat(db, &info));
  if (strcmp(info.index_factory, "Flat"))
    fail_msg("index after a failed reindex: %s", info.index_factory);
  CHECK(vlm_db_verify(db));
  expect_index_matches_exact(db, &c);
  vlm_db_close(db);
  db = open_db(t.dir);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* The stores' upkeep failing half-way: the replay an open runs (the open
 * fails with VLM_EIO and the next open repairs), and rebuild_meta (it
 * fails, and nothing acknowledged before or after is lost). */
static void test_recovery_faults(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  corpus c;
  corpus_make(&c, 1200, DIM, 939);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus_put(db, &c, 0, 1100, 550);
  /* payload.lmdb one batch ahead of meta.sqlite, as after a crash */
  vlm__test_fault = fault_here;
  fault_at[0] = "sql-commit";
  fault_at[1] = "sql-replay";
  vlm_item it = corpus_item(&c, 1100);
  assert_true(vlm_db_put(db, &it, 1, 0, NULL) < 0);
  fault_at[0] = fault_at[1] = NULL;
  vlm__test_fault = NULL;
  vlm_db_close(db);
  vlm_db_open_options oo = {.warn = count_warning};
  db = NULL;
  nth_arm("sql-write", 1);
  int rc = vlm_db_open(t.dir, &oo, &db);
  nth_disarm();
  if (rc != VLM_EIO)
    fail_msg("open with a failing replay: %d (%s): %s", rc, vlm_errname(rc),
             vlm_errmsg());
  assert_null(db);
  warnings = 0;
  db = open_db(t.dir);
  assert_non_null(strstr(last_warning, "replayed 1 batch"));
  CHECK(vlm_db_verify(db));
  assert_int_equal(vlm_db_exists(db, c.key[1100]), 1);
  /* rebuild_meta fails on its first and on a later chunk of rows */
  for (int n = 1; n <= 600; n += 599) {
    nth_arm("sql-write", n);
    rc = vlm_db_rebuild_meta(db);
    nth_disarm();
    if (rc != VLM_EIO)
      fail_msg("rebuild with sql-write #%d: %d (%s): %s", n, rc,
               vlm_errname(rc), vlm_errmsg());
    /* writes wait for a repair; reads of the payload go on */
    it = corpus_item(&c, 1101);
    rc = vlm_db_put(db, &it, 1, 0, NULL);
    if (rc != VLM_ESTATE)
      fail_msg("a write after a failed rebuild: %d (%s): %s", rc,
               vlm_errname(rc), vlm_errmsg());
    assert_int_equal(vlm_db_exists(db, c.key[7]), 1);
    vlm_db_close(db);
    warnings = 0;
    db = open_db(t.dir);
    CHECK(vlm_db_verify(db));
    vlm_search_options o = {.k = 5000, .exact = 1, .filter = "year > 0"};
    vlm_hit *hits = NULL;
    int nh = 0;
    float q[DIM] = {1};
    CHECK(vlm_db_search(db, q, &o, &hits, &nh));
    vlm_hits_free(hits, nh);
    assert_int_equal(nh, 1101);
  }
  CHECK(vlm_db_rebuild_meta(db));
  CHECK(vlm_db_verify(db));
  it = corpus_item(&c, 1101);
  CHECK(vlm_db_put(db, &it, 1, 0, NULL));
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ API refusals */

/* Every public call given what a careless caller passes: NULL handles and
 * out-parameters, out-of-range sizes and a config vlmdb cannot honour.
 * Each is refused with VLM_EINVAL (or the code its contract names) and a
 * message saying which call and what, and nothing is created or changed. */
#define EXPECT_ERR_MSG(code, words, call)                                  \
  do {                                                                     \
    EXPECT_ERR(code, call);                                                \
    if (!strstr(vlm_errmsg(), words))                                      \
      fail_msg("%s: message \"%s\" does not say \"%s\"", #call,            \
               vlm_errmsg(), words);                                       \
  } while (0)

static void f_write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int visit_none(const vlm_record *rec, void *arg) {
  (void)rec;
  (void)arg;
  return 0;
}

static void test_api_refusals(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = NULL;
  vlm_db_config c = {.dim = DIM, .index_factory = "Flat",
                     .model_id = "test-model"};
  char big[700];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';

  /* create */
  EXPECT_ERR_MSG(VLM_EINVAL, "NULL argument", vlm_db_create(NULL, &c, &db));
  EXPECT_ERR_MSG(VLM_EINVAL, "NULL argument",
                 vlm_db_create(t.dir, NULL, &db));
  vlm_db_config bad = c;
  bad.index_factory = big;
  EXPECT_ERR_MSG(VLM_EINVAL, "factory string too long",
                 vlm_db_create(t.dir, &bad, &db));
  bad = c;
  bad.model_dir = big;
  EXPECT_ERR_MSG(VLM_EINVAL, "model_dir too long",
                 vlm_db_create(t.dir, &bad, &db));
  bad = c;
  bad.nfields = VLM_DB_MAX_FIELDS + 1;
  bad.fields = fields3;
  EXPECT_ERR_MSG(VLM_EINVAL, "fields", vlm_db_create(t.dir, &bad, &db));
  vlm_field odd[1] = {{"colour", (vlm_field_type)99}};
  bad = c;
  bad.fields = odd;
  bad.nfields = 1;
  EXPECT_ERR_MSG(VLM_EINVAL, "colour: bad type",
                 vlm_db_create(t.dir, &bad, &db));
  EXPECT_ERR(VLM_EINVAL, vlm_field_parse(NULL, odd));
  char file[PATH_MAX];
  snprintf(file, sizeof file, "%s/plain-file", t.root);
  FILE *f = fopen(file, "w");
  assert_non_null(f);
  fclose(f);
  EXPECT_ERR_MSG(VLM_EEXISTS, "not a directory", vlm_db_create(file, &c, &db));
  char full[PATH_MAX];
  snprintf(full, sizeof full, "%s/full", t.root);
  assert_int_equal(mkdir(full, 0755), 0);
  snprintf(file, sizeof file, "%s/something", full);
  f = fopen(file, "w");
  assert_non_null(f);
  fclose(f);
  EXPECT_ERR_MSG(VLM_EEXISTS, "not empty", vlm_db_create(full, &c, &db));
  /* a store failing during create leaves nothing behind */
  nth_arm("lmdb-write", 1);
  EXPECT_ERR(VLM_EIO, vlm_db_create(t.dir, &c, &db));
  nth_disarm();
  assert_null(db);
  struct stat st;
  assert_int_equal(stat(t.dir, &st), -1);
  DIR *d = opendir(t.root);
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d));)
    if (strstr(e->d_name, "creating"))
      fail_msg("a failed create left %s behind", e->d_name);
  closedir(d);

  /* every call on a NULL handle or with NULL out-parameters */
  CHECK(vlm_db_create(t.dir, &c, &db));
  float q[DIM] = {1};
  vlm_hit *hits = NULL;
  int n = 0;
  vlm_record *rec = NULL;
  char **keys = NULL;
  uint64_t next = 0;
  vlm_db_info info;
  vlm_search_options so = {.k = 1};
  vlm_item it = {.key = "k", .image_vec = q};
  const char *key = "k";
  vlm_write_op op = {.kind = VLM_WRITE_ADD, .item = it};
  EXPECT_ERR_MSG(VLM_EINVAL, "open: NULL argument", vlm_db_open(NULL, NULL, &db));
  EXPECT_ERR_MSG(VLM_EINVAL, "put", vlm_db_put(NULL, &it, 1, 0, NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "put", vlm_db_put(db, NULL, 1, 0, NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "delete", vlm_db_delete(NULL, &key, 1, NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "write", vlm_db_write(NULL, &op, 1, NULL));
  op.kind = (vlm_write_kind)7;
  EXPECT_ERR_MSG(VLM_EINVAL, "unknown kind 7", vlm_db_write(db, &op, 1, NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "exists", vlm_db_exists(NULL, "k"));
  EXPECT_ERR_MSG(VLM_EINVAL, "get", vlm_db_get(db, NULL, &rec));
  EXPECT_ERR_MSG(VLM_EINVAL, "search", vlm_db_search(NULL, q, &so, &hits, &n));
  EXPECT_ERR_MSG(VLM_EINVAL, "foreach", vlm_db_foreach(NULL, visit_none, NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "scan", vlm_db_scan(db, 0, 0, &keys, &n, &next));
  EXPECT_ERR_MSG(VLM_EINVAL, "stat", vlm_db_stat(NULL, &info));
  EXPECT_ERR_MSG(VLM_EINVAL, "verify", vlm_db_verify(NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "checkpoint", vlm_db_checkpoint(NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "rebuild meta", vlm_db_rebuild_meta(NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "reindex", vlm_db_reindex(NULL, "Flat"));
  EXPECT_ERR_MSG(VLM_EINVAL, "bad factory", vlm_db_reindex(db, NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "NoSuchIndex", vlm_db_reindex(db, "NoSuchIndex"));
  EXPECT_ERR_MSG(VLM_EINVAL, "backup", vlm_db_backup(NULL, t.root, NULL));
  EXPECT_ERR_MSG(VLM_EINVAL, "salvage", vlm_db_salvage(NULL, NULL, NULL,
                                                        NULL, NULL));
  vlm_eval_options eo = {0};
  vlm_eval_result er;
  int ks[2] = {1, VLM_DB_MAX_K + 1};
  eo.ks = ks;
  eo.nks = 2;
  EXPECT_ERR_MSG(VLM_EINVAL, "K = 10001", vlm_db_eval(db, &eo, &er));
  eo.nks = VLM_EVAL_MAX_KS + 1;
  EXPECT_ERR_MSG(VLM_EINVAL, "cut-offs", vlm_db_eval(db, &eo, &er));
  eo.nks = 1;
  eo.sample = -1;
  EXPECT_ERR_MSG(VLM_EINVAL, "negative sample", vlm_db_eval(db, &eo, &er));
  eo.sample = 0;
  EXPECT_ERR(VLM_ENOTFOUND, vlm_db_eval(db, &eo, &er)); /* nothing to pair */
  /* a backup onto something in the way; one of a broken database */
  EXPECT_ERR_MSG(VLM_EEXISTS, "not an empty directory",
                 vlm_db_backup(db, full, NULL));
  CHECK(vlm_db_put(db, &it, 1, 0, NULL));
  vlm__test_fault = fault_here;
  fault_at[0] = "sql-commit";
  fault_at[1] = "sql-replay";
  it.key = "k2";
  assert_true(vlm_db_put(db, &it, 1, 0, NULL) < 0);
  fault_at[0] = fault_at[1] = NULL;
  vlm__test_fault = NULL;
  vlm_db_close(db);
  /* read-only handles refuse what writes, and a backup of one that needs
   * crash recovery (its meta.sqlite is a batch behind) is refused */
  char dst[PATH_MAX];
  snprintf(dst, sizeof dst, "%s/copy", t.root);
  vlm_db_open_options ro = {.readonly = 1, .warn = count_warning};
  CHECK(vlm_db_open(t.dir, &ro, &db));
  EXPECT_ERR_MSG(VLM_ESTATE, "read-only", vlm_db_rebuild_meta(db));
  EXPECT_ERR_MSG(VLM_ESTATE, "read-only", vlm_db_reindex(db, "Flat"));
  EXPECT_ERR_MSG(VLM_ESTATE, "read-only", vlm_db_put(db, &it, 1, 0, NULL));
  EXPECT_ERR_MSG(VLM_ESTATE, "crash recovery", vlm_db_backup(db, dst, NULL));
  assert_int_equal(stat(dst, &st), -1);
  vlm_db_close(db);
  db = open_db(t.dir); /* repairs */
  CHECK(vlm_db_verify(db));
  assert_int_equal(vlm_db_exists(db, "k2"), 1);
  CHECK(vlm_db_backup(db, dst, NULL));
  vlm_db_close(db);
  tmp_free(&t);
}

/* A manifest.json edited by hand or by another program (no checksum, as
 * in databases made before manifests carried one): each field vlmdb
 * relies on, made wrong, is refused on open with VLM_EFORMAT (or the code
 * for what it means) naming the field; the original opens again. */
static void test_hostile_manifests(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 10, DIM, 949);
  corpus_put(db, &c, 0, 10, 10);
  vlm_db_close(db);
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/manifest.json", t.dir);
  json_error_t jerr;
  json_t *orig = json_load_file(path, 0, &jerr);
  assert_non_null(orig);
  static const struct {
    const char *json_path; /* member to change ("a.b": nested) */
    const char *value;     /* its new JSON value; NULL: removed */
    int code;
    const char *words;
  } cases[] = {
      {"checksum", "\"not-hex\"", VLM_ECORRUPT, "16 hex digits"},
      {"dim", "0", VLM_EFORMAT, "\"dim\""},
      {"dim", "\"16\"", VLM_EFORMAT, "\"dim\""},
      {"metric", "\"l2\"", VLM_EUNSUPPORTED, "metric"},
      {"index_factory", "7", VLM_EFORMAT, "index_factory"},
      {"model_id", NULL, VLM_EFORMAT, "model_id"},
      {"model_dir", "\"" /* 600 x */, VLM_EFORMAT, "model_dir\" too long"},
      {"fields", "{}", VLM_EFORMAT, "fields"},
      {"fields", "[{\"name\": \"bad name\", \"type\": \"text\"}]",
       VLM_EFORMAT, "field"},
      {"fields", "[{\"name\": \"colour\", \"type\": \"blob\"}]", VLM_EFORMAT,
       "colour: bad type"},
      {"fields", "[{\"type\": \"text\"}]", VLM_EFORMAT, "fields[].name"},
      {"sql_page_checksums", "\"yes\"", VLM_EFORMAT, "sql_page_checksums"},
      {"index.image", "{\"file\": \"../x.faiss\", \"seq\": 1, \"upto\": 1}",
       VLM_EFORMAT, "index checkpoint \"image\""},
      {"index.text", "{\"file\": \"t.faiss\", \"seq\": \"1\"}", VLM_EFORMAT,
       "index checkpoint \"text\""},
      {"format_version", "2", VLM_EVERSION, "format version 2"},
      {"format_version", NULL, VLM_EFORMAT, "format_version"},
      {"format", "\"other\"", VLM_EFORMAT, "not a vlmdb manifest"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    json_t *m = json_deep_copy(orig);
    if (strcmp(cases[i].json_path, "checksum"))
      json_object_del(m, "checksum");
    json_t *parent = m;
    char name[64];
    snprintf(name, sizeof name, "%s", cases[i].json_path);
    char *dot = strchr(name, '.');
    const char *leaf = name;
    if (dot) {
      *dot = '\0';
      parent = json_object_get(m, name);
      leaf = dot + 1;
    }
    assert_non_null(parent);
    if (!cases[i].value) {
      json_object_del(parent, leaf);
    } else if (!strcmp(cases[i].value, "\"")) {
      char longs[600];
      memset(longs, 'x', sizeof longs - 1);
      longs[sizeof longs - 1] = '\0';
      json_object_set_new(parent, leaf, json_string(longs));
    } else {
      json_t *v = json_loads(cases[i].value, JSON_DECODE_ANY, &jerr);
      assert_non_null(v);
      json_object_set_new(parent, leaf, v);
    }
    assert_int_equal(json_dump_file(m, path, JSON_INDENT(2)), 0);
    json_decref(m);
    vlm_db_open_options o = {.readonly = (int)(i % 2)};
    db = NULL;
    int rc = vlm_db_open(t.dir, &o, &db);
    if (rc != cases[i].code || !strstr(vlm_errmsg(), cases[i].words))
      fail_msg("%s = %s: %d (%s): %s; expected %s and \"%s\"",
               cases[i].json_path, cases[i].value ? cases[i].value : "absent",
               rc, vlm_errname(rc), vlm_errmsg(), vlm_errname(cases[i].code),
               cases[i].words);
    assert_null(db);
  }
  /* not an object at all */
  f_write_text(path, "[1, 2, 3]\n");
  EXPECT_ERR(VLM_EFORMAT, vlm_db_open(t.dir, NULL, &db));
  assert_non_null(strstr(vlm_errmsg(), "not a JSON object"));
  /* the original, without its checksum, opens and holds everything */
  json_object_del(orig, "checksum");
  assert_int_equal(json_dump_file(orig, path, JSON_INDENT(2)), 0);
  json_decref(orig);
  db = open_db(t.dir);
  CHECK(vlm_db_verify(db));
  for (int i = 0; i < 10; i++)
    assert_int_equal(vlm_db_exists(db, c.key[i]), 1);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ edges */

/* The stores' error codes translated at the module boundary: each LMDB
 * and SQLite result vlmdb can meet maps to the VLM_E* code its callers
 * act on (a full disk to VLM_ENOSPACE, damage to VLM_ECORRUPT, contention
 * to VLM_EBUSY, ...), with the store's own words in the message. */
int vlm__lmdb_err(int rc, const char *what);
int vlm__sql_err(sqlite3 *db, int rc, const char *what);

static void test_store_error_codes(void **state) {
  (void)state;
  static const struct {
    int store, want;
  } lmdb[] = {
      {MDB_MAP_FULL, VLM_ENOSPACE}, {ENOSPC, VLM_ENOSPACE},
      {EDQUOT, VLM_ENOSPACE},       {MDB_NOTFOUND, VLM_ENOTFOUND},
      {MDB_CORRUPTED, VLM_ECORRUPT}, {MDB_PAGE_NOTFOUND, VLM_ECORRUPT},
      {MDB_INVALID, VLM_ECORRUPT},  {MDB_VERSION_MISMATCH, VLM_EVERSION},
      {MDB_READERS_FULL, VLM_EBUSY}, {EBUSY, VLM_EBUSY},
      {EAGAIN, VLM_EBUSY},          {ENOMEM, VLM_ENOMEM},
      {EIO, VLM_EIO},               {MDB_KEYEXIST, VLM_ESTORE},
  };
  for (size_t i = 0; i < sizeof lmdb / sizeof lmdb[0]; i++) {
    int got = vlm__lmdb_err(lmdb[i].store, "thing");
    if (got != lmdb[i].want || !strstr(vlm_errmsg(), "thing") ||
        !strstr(vlm_errmsg(), mdb_strerror(lmdb[i].store)))
      fail_msg("LMDB %d (%s): %s, \"%s\"; expected %s",
               lmdb[i].store, mdb_strerror(lmdb[i].store), vlm_errname(got),
               vlm_errmsg(), vlm_errname(lmdb[i].want));
  }
  static const struct {
    int store, want;
  } sql[] = {
      {SQLITE_FULL, VLM_ENOSPACE},  {SQLITE_NOTADB, VLM_ECORRUPT},
      {SQLITE_BUSY, VLM_EBUSY},     {SQLITE_LOCKED, VLM_EBUSY},
      {SQLITE_NOMEM, VLM_ENOMEM},   {SQLITE_IOERR_WRITE, VLM_EIO},
      {SQLITE_CANTOPEN, VLM_EIO},   {SQLITE_AUTH, VLM_EFILTER},
      {SQLITE_CONSTRAINT, VLM_ESTORE}, {SQLITE_CORRUPT, VLM_ECORRUPT},
  };
  for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++) {
    int got = vlm__sql_err(NULL, sql[i].store, "thing");
    if (got != sql[i].want || !strstr(vlm_errmsg(), "thing"))
      fail_msg("SQLite %d (%s): %s, \"%s\"; expected %s", sql[i].store,
               sqlite3_errstr(sql[i].store), vlm_errname(got), vlm_errmsg(),
               vlm_errname(sql[i].want));
  }
  /* damage names the way out */
  vlm__sql_err(NULL, SQLITE_CORRUPT, "meta.sqlite");
  assert_non_null(strstr(vlm_errmsg(), "vlmdb recover"));
}

/* meta.sqlite's checksum VFS passes what it does not check straight to
 * the real VFS: time, randomness, sleeping and extension loading behave as
 * without it. */
static void test_sql_vfs_passes_through(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/plain.sqlite", t.root);
  sqlite3 *s = NULL;
  assert_int_equal(sqlite3_open_v2(path, &s,
                                   SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                   vlm__sql_vfs()),
                   SQLITE_OK);
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(s, "SELECT unixepoch('now'), "
                                      "julianday('now')", -1, &st, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  long long secs = sqlite3_column_int64(st, 0);
  double jd = sqlite3_column_double(st, 1);
  sqlite3_finalize(st);
  long long now = (long long)time(NULL);
  if (llabs(secs - now) > 5)
    fail_msg("time through the VFS: %lld, the clock %lld", secs, now);
  assert_true(fabs((jd - 2440587.5) * 86400.0 - (double)now) < 5);
  sqlite3_vfs *v = sqlite3_vfs_find(vlm__sql_vfs());
  assert_non_null(v);
  char r1[16] = {0}, r2[16] = {0};
  v->xRandomness(v, sizeof r1, r1);
  v->xRandomness(v, sizeof r2, r2);
  assert_true(memcmp(r1, r2, sizeof r1) != 0);
  assert_true(v->xSleep(v, 1000) >= 0);
  double t1 = 0;
  assert_int_equal(v->xCurrentTime(v, &t1), SQLITE_OK);
  assert_true(fabs((t1 - 2440587.5) * 86400.0 - (double)now) < 5);
  void *h = v->xDlOpen(v, "/nonexistent/libnothing.so");
  assert_null(h);
  char msg[256] = {0};
  v->xDlError(v, sizeof msg - 1, msg);
  if (!strstr(msg, "libnothing"))
    fail_msg("dlerror through the VFS: \"%s\"", msg);
  h = v->xDlOpen(v, NULL); /* the program itself */
  assert_non_null(h);
  assert_non_null(v->xDlSym(v, h, "sqlite3_libversion"));
  v->xDlClose(v, h);
  /* memory-mapped reads are refused (they would bypass the check): with
   * mmap asked for, pages still come through xRead, whole */
  assert_int_equal(sqlite3_exec(s, "PRAGMA mmap_size = 1048576; "
                                "CREATE TABLE t(x); "
                                "INSERT INTO t VALUES (42), (43);",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(s, "SELECT sum(x) FROM t", -1, &st,
                                      NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_int_equal(sqlite3_column_int(st, 0), 85);
  sqlite3_finalize(st);
  /* the file methods it does not check: the lock and sector size */
  sqlite3_file *fp = NULL;
  assert_int_equal(sqlite3_file_control(s, "main", SQLITE_FCNTL_FILE_POINTER,
                                        &fp),
                   SQLITE_OK);
  int reserved = -1;
  assert_int_equal(fp->pMethods->xCheckReservedLock(fp, &reserved), SQLITE_OK);
  assert_int_equal(reserved, 0);
  assert_true(fp->pMethods->xSectorSize(fp) > 0);
  sqlite3_close(s);
  tmp_free(&t);
}

/* verify compares each meta.sqlite row with its record field by field:
 * a row edited behind vlmdb's back is named, with the field that differs;
 * rebuild_meta mends it. */
static void test_verify_names_the_differing_field(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 12, DIM, 959);
  corpus_put(db, &c, 0, 12, 12);
  vlm_db_close(db);
  char sqlpath[PATH_MAX];
  snprintf(sqlpath, sizeof sqlpath, "%s/meta.sqlite", t.dir);
  static const struct {
    const char *sql, *words;
  } edits[] = {
      {"UPDATE items SET year = year + 1 WHERE key = 'item-00003'", "year"},
      {"UPDATE items SET price = price + 0.5 WHERE key = 'item-00004'",
       "price"},
      {"UPDATE items SET category = 'zzz' WHERE key = 'item-00005'",
       "category"},
      {"UPDATE items SET category = NULL WHERE key = 'item-00006'",
       "category"},
      {"UPDATE captions SET caption = 'not it' WHERE rowid = "
       "(SELECT id FROM items WHERE key = 'item-00007')",
       "caption"},
      {"DELETE FROM captions WHERE rowid = "
       "(SELECT id FROM items WHERE key = 'item-00008')",
       "caption rows"},
      {"INSERT INTO items(id, key) VALUES (999999, 'ghost')", "ghost"},
      {"UPDATE items SET key = 'other' WHERE key = 'item-00009'", "other"},
  };
  for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
    sqlite3 *s;
    assert_int_equal(sql_open_rw(sqlpath, &s), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(s, edits[i].sql, NULL, NULL, &err) != SQLITE_OK)
      fail_msg("%s: %s", edits[i].sql, err);
    assert_int_equal(sqlite3_changes(s), 1);
    sqlite3_close(s);
    db = open_db(t.dir);
    int rc = vlm_db_verify(db);
    if (rc != VLM_ECORRUPT || !strstr(vlm_errmsg(), edits[i].words))
      fail_msg("%s: verify %d (%s): %s", edits[i].sql, rc, vlm_errname(rc),
               vlm_errmsg());
    CHECK(vlm_db_rebuild_meta(db));
    CHECK(vlm_db_verify(db));
    vlm_db_close(db);
  }
  corpus_free(&c);
  tmp_free(&t);
}

/* meta.sqlite restored from an older copy after the log was pruned: the
 * batches it misses can no longer be replayed, so the open rebuilds it
 * from the payload store (with a warning saying so) and nothing is lost. */
static void test_old_meta_is_rebuilt(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 40, DIM, 969);
  corpus_put(db, &c, 0, 10, 10);
  vlm_db_close(db);
  char cmd[4 * PATH_MAX];
  snprintf(cmd, sizeof cmd, "cp '%s/meta.sqlite' '%s/old.sqlite'", t.dir,
           t.root);
  assert_int_equal(system(cmd), 0);
  db = open_db(t.dir);
  corpus_put(db, &c, 10, 40, 10);
  CHECK(vlm_db_checkpoint(db)); /* prunes the log */
  vlm_db_close(db);
  snprintf(cmd, sizeof cmd,
           "rm -f '%s'/meta.sqlite-wal '%s'/meta.sqlite-shm && "
           "cp '%s/old.sqlite' '%s/meta.sqlite'",
           t.dir, t.dir, t.root, t.dir);
  assert_int_equal(system(cmd), 0);
  warnings = 0;
  db = open_db(t.dir);
  if (!strstr(last_warning, "could not be replayed") ||
      !strstr(last_warning, "rebuilt it"))
    fail_msg("open of a database with an old meta.sqlite: \"%s\"",
             last_warning);
  CHECK(vlm_db_verify(db));
  vlm_search_options o = {.k = 100, .exact = 1, .filter = "year > 0"};
  vlm_hit *hits = NULL;
  int nh = 0;
  float q[DIM] = {1};
  CHECK(vlm_db_search(db, q, &o, &hits, &nh));
  vlm_hits_free(hits, nh);
  assert_int_equal(nh, 40);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* Paths and payloads at their limits: database names create cannot use,
 * relative names, a thumbnail length without its bytes, an update that
 * would push an item past the payload cap, a second backup while one is
 * under way (VLM_EBUSY), and close of NULL. */
extern void (*vlm__test_hook)(const char *where, vlm_db *db);
static int nested_backup_rc;
static char nested_backup_dst[PATH_MAX];

static void backup_again(const char *where, vlm_db *db) {
  if (!strcmp(where, "backup-pinned"))
    nested_backup_rc = vlm_db_backup(db, nested_backup_dst, NULL);
}

static void test_path_and_payload_limits(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db_config cfg = {.dim = DIM, .index_factory = "Flat",
                       .model_id = "test-model"};
  vlm_db *db = NULL;
  EXPECT_ERR(VLM_EINVAL, vlm_db_create("/", &cfg, &db));
  assert_non_null(strstr(vlm_errmsg(), "not a usable directory name"));
  char deep[PATH_MAX + 64];
  memset(deep, 'd', sizeof deep - 1);
  deep[0] = '/';
  deep[sizeof deep - 1] = '\0';
  char longname[400];
  snprintf(longname, sizeof longname, "%s/%.240s", t.root, deep + 1);
  EXPECT_ERR(VLM_EINVAL, vlm_db_create(longname, &cfg, &db));
  assert_non_null(strstr(vlm_errmsg(), "not a usable directory name"));
  strcpy(deep + PATH_MAX - 8, "/x"); /* a long parent */
  EXPECT_ERR(VLM_EINVAL, vlm_db_create(deep, &cfg, &db));
  assert_true(strncmp(vlm_errmsg(), "create: /ddd", 12) == 0); /* (the path
                                                          fills the message) */
  char missing[PATH_MAX];
  snprintf(missing, sizeof missing, "%s/none", t.root);
  EXPECT_ERR(VLM_ENOTFOUND, vlm_db_open(missing, NULL, &db));
  /* a relative name, with trailing slashes */
  char cwd[PATH_MAX];
  assert_non_null(getcwd(cwd, sizeof cwd));
  assert_int_equal(chdir(t.root), 0);
  int rc = vlm_db_create("rel.vlmdb//", &cfg, &db);
  assert_int_equal(chdir(cwd), 0);
  if (rc)
    fail_msg("create of a relative name: %s", vlm_errmsg());
  vlm_db_close(db);
  vlm_db_close(NULL);
  snprintf(missing, sizeof missing, "%s/rel.vlmdb", t.root);
  vlm_db_open_options o = {.max_payload = 4096, .warn = count_warning};
  CHECK(vlm_db_open(missing, &o, &db));
  float v[DIM] = {1};
  vlm_item it = {.key = "k", .image_vec = v, .thumb_len = 10};
  EXPECT_ERR(VLM_EINVAL, vlm_db_put(db, &it, 1, 0, NULL));
  assert_non_null(strstr(vlm_errmsg(), "thumb_len without thumb"));
  it.thumb_len = 0;
  char caption[3000];
  memset(caption, 'c', sizeof caption - 1);
  caption[sizeof caption - 1] = '\0';
  it.caption = caption;
  CHECK(vlm_db_put(db, &it, 1, 0, NULL));
  vlm_write_op op = {.kind = VLM_WRITE_UPDATE};
  op.item.key = "k";
  op.item.source = caption; /* 3 KB more: over the 4 KB cap */
  EXPECT_ERR(VLM_ETOOBIG, vlm_db_write(db, &op, 1, NULL));
  assert_non_null(strstr(vlm_errmsg(), "updated payload"));
  sf_caption_is(db, "k", caption);
  /* one backup at a time */
  char dst[PATH_MAX];
  snprintf(dst, sizeof dst, "%s/b1", t.root);
  snprintf(nested_backup_dst, sizeof nested_backup_dst, "%s/b2", t.root);
  nested_backup_rc = 1;
  vlm__test_hook = backup_again;
  rc = vlm_db_backup(db, dst, NULL);
  vlm__test_hook = NULL;
  CHECK(rc);
  assert_int_equal(nested_backup_rc, VLM_EBUSY);
  vlm_db_close(db);
  tmp_free(&t);
}

/* An index checkpoint the manifest names but that cannot serve (a batch
 * number ahead of the stores, a file of another dimension, a batch the
 * log no longer holds): the open says why in a warning and rebuilds that
 * index from the payload store; searches then match the exact scan. */
static void set_ckpt(const char *dir, const char *mod, const char *member,
                     json_t *value) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  json_error_t jerr;
  json_t *m = json_load_file(path, 0, &jerr);
  assert_non_null(m);
  json_object_del(m, "checksum");
  json_t *c = json_object_get(json_object_get(m, "index"), mod);
  assert_non_null(c);
  json_object_set_new(c, member, value);
  assert_int_equal(json_dump_file(m, path, JSON_INDENT(2)), 0);
  json_decref(m);
}

static void test_checkpoint_mismatches(void **state) {
  (void)state;
  tmp t, t2;
  tmp_make(&t);
  tmp_make(&t2);
  corpus c;
  corpus_make(&c, 30, DIM, 979);
  /* HNSW: a Flat index has no checkpoint file (built from the vectors) */
  vlm_db *other = make_db(t2.dir, "HNSW32", DIM / 2);
  corpus c2;
  corpus_make(&c2, 4, DIM / 2, 980);
  corpus_put(other, &c2, 0, 4, 4);
  corpus_free(&c2);
  vlm_db_close(other);
  vlm_db_info info;
  for (int trial = 0; trial < 3; trial++) {
    vlm_db *db = make_db(t.dir, "HNSW32", DIM);
    corpus_put(db, &c, 0, 10, 10);
    CHECK(vlm_db_checkpoint(db));
    corpus_put(db, &c, 10, 30, 10);
    CHECK(vlm_db_checkpoint(db)); /* the log now starts after batch 3 */
    CHECK(vlm_db_stat(db, &info));
    vlm_db_close(db);
    const char *want;
    if (trial == 0) {
      set_ckpt(t.dir, "image", "seq", json_integer(999));
      want = "is ahead of the stores";
    } else if (trial == 1) {
      /* an index file of the other database (half the dimension) */
      char cmd[4 * PATH_MAX];
      snprintf(cmd, sizeof cmd, "cp \"$(ls '%s'/image-*.faiss | head -1)\" "
               "'%s/image-other.faiss'", t2.dir, t.dir);
      assert_int_equal(system(cmd), 0);
      set_ckpt(t.dir, "image", "file", json_string("image-other.faiss"));
      want = "does not match the manifest";
    } else {
      set_ckpt(t.dir, "image", "seq", json_integer(1));
      want = "is missing from the log";
    }
    warnings = 0;
    db = open_db(t.dir);
    if (!warnings || !strstr(last_warning, want))
      fail_msg("trial %d: the warning \"%s\" does not say \"%s\"", trial,
               warnings ? last_warning : "(none)", want);
    CHECK(vlm_db_verify(db));
    expect_index_matches_exact(db, &c);
    vlm_db_close(db);
    rm_rf(t.dir);
  }
  corpus_free(&c);
  tmp_free(&t2);
  tmp_free(&t);
}

/* A Flat index is the vectors LMDB already holds: a checkpoint writes no
 * file for it (the manifest names none, the directory holds no .faiss),
 * and a writer's open and a read-only handle's first search build it from
 * the vectors table, answering as the exact scan, without a warning.  A
 * database written before this, with a Flat checkpoint file, still opens
 * from that file (no warning, no rebuild) and its next checkpoint drops
 * the file. */
static int faiss_files(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));)
    n += strstr(e->d_name, ".faiss") != NULL;
  if (d)
    closedir(d);
  return n;
}

static void test_flat_index_has_no_file(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  corpus c;
  corpus_make(&c, 120, DIM, 4242);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus_put(db, &c, 0, 80, 40);
  CHECK(vlm_db_checkpoint(db));
  char name[128];
  assert_int_equal(ckpt_file_of(t.dir, "image", name, sizeof name), -1);
  assert_int_equal(ckpt_file_of(t.dir, "text", name, sizeof name), -1);
  assert_int_equal(faiss_files(t.dir), 0);
  vlm_db_close(db);
  assert_int_equal(faiss_files(t.dir), 0);
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 0);
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.pending_vectors, 0);
  expect_index_matches_exact(db, &c);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  vlm_db_open_options ro = {.readonly = 1, .warn = count_warning};
  CHECK(vlm_db_open(t.dir, &ro, &db));
  expect_index_matches_exact(db, &c);
  assert_int_equal(warnings, 0);
  vlm_db_close(db);

  /* The old layout: a Flat file holding items 1..80 (ids are given in
   * put order from 1), named by the manifest at the last batch. */
  vlm_index *ix = NULL;
  CHECK(vlm_index_create("Flat", DIM, VLM_METRIC_IP, &ix));
  for (int i = 0; i < 80; i++)
    if (c.has_img[i]) {
      int64_t id = i + 1;
      CHECK(vlm_index_add(ix, 1, c.img + (size_t)i * DIM, &id));
    }
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/image-2-old.faiss", t.dir);
  CHECK(vlm_index_write(ix, path));
  vlm_index_free(ix);
  {
    snprintf(path, sizeof path, "%s/manifest.json", t.dir);
    json_error_t jerr;
    json_t *m = json_load_file(path, 0, &jerr);
    assert_non_null(m);
    json_object_del(m, "checksum");
    json_t *ixs = json_object_get(m, "index");
    assert_non_null(ixs);
    assert_null(json_object_get(ixs, "image"));
    json_object_set_new(ixs, "image",
                        json_pack("{s:s, s:i, s:i}", "file",
                                  "image-2-old.faiss", "seq", 2, "upto", 81));
    assert_int_equal(json_dump_file(m, path, JSON_INDENT(2)), 0);
    json_decref(m);
  }
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 0); /* loaded, not rebuilt */
  assert_int_equal(ckpt_file_of(t.dir, "image", name, sizeof name), 0);
  assert_string_equal(name, "image-2-old.faiss");
  corpus_put(db, &c, 80, 120, 40);
  const char *gone[] = {c.key[3], c.key[90]};
  CHECK(vlm_db_delete(db, gone, 2, NULL));
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.tombstones, 0);
  CHECK(vlm_db_verify(db));
  CHECK(vlm_db_checkpoint(db)); /* drops the file */
  assert_int_equal(ckpt_file_of(t.dir, "image", name, sizeof name), -1);
  assert_int_equal(faiss_files(t.dir), 0);
  vlm_db_close(db);
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 0);
  int alive[120];
  for (int i = 0; i < 120; i++)
    alive[i] = i != 3 && i != 90;
  check_targets(db, &c, alive, 0, 1.0);
  check_targets(db, &c, alive, 1, 1.0);
  CHECK(vlm_db_verify(db));
  /* to HNSW (a file) and back (none): the manifest keeps the factory */
  CHECK(vlm_db_reindex(db, "HNSW32"));
  assert_int_equal(ckpt_file_of(t.dir, "image", name, sizeof name), 0);
  CHECK(vlm_db_reindex(db, "Flat"));
  assert_int_equal(ckpt_file_of(t.dir, "image", name, sizeof name), -1);
  vlm_db_close(db);
  assert_int_equal(faiss_files(t.dir), 0);
  db = open_db(t.dir);
  CHECK(vlm_db_stat(db, &info));
  assert_string_equal(info.index_factory, "Flat");
  check_targets(db, &c, alive, 0, 1.0);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* Every read of the payload store failing in turn ("lmdb-read": the Nth
 * read transaction or table cursor an operation opens, N = 1, 2, ...):
 * each operation either fails with VLM_EIO or, where the read was an
 * optional one (tuning, a checkpoint's pruning), succeeds with the same
 * answer; either way the same call afterwards gives the answer it gave
 * before, and the database still verifies. */
enum {
  RF_EXACT, RF_INDEX, RF_FILTER, RF_HYBRID, RF_COLLAPSE, RF_GET, RF_SCAN,
  RF_FOREACH, RF_VERIFY, RF_EVAL, RF_CHECKPOINT, RF_BACKUP, RF_REINDEX,
  RF_REBUILD, RF_REOPEN, RF_REINDEX_HNSW, RF_N
};
static const char *rf_name[RF_N] = {
    "exact search", "index search", "filtered search", "hybrid search",
    "collapsed search", "get", "scan", "foreach", "verify", "eval",
    "checkpoint", "backup", "reindex", "rebuild_meta", "reopen",
    "reindex to HNSW"};

static int rf_count(const vlm_record *rec, void *arg) {
  (void)rec;
  (*(int *)arg)++;
  return 0;
}

/* Run op on *db; its answer as text in out. */
static int rf_run(int op, vlm_db **db, const corpus *c, const tmp *t,
                  int round, char *out, size_t cap) {
  vlm_search_options o = {.k = 8};
  vlm_hit *hits = NULL;
  int nh = 0, rc = 0;
  out[0] = '\0';
  switch (op) {
  case RF_EXACT: o.exact = 1; break;
  case RF_FILTER: o.filter = "year > 2000"; break;
  case RF_HYBRID: o.hybrid_text = "cat tree"; break;
  case RF_COLLAPSE: o.collapse = 0.3f; break;
  default: break;
  }
  if (op <= RF_COLLAPSE) {
    rc = vlm_db_search(*db, c->img + DIM, &o, &hits, &nh);
    for (int h = 0; !rc && h < nh; h++)
      snprintf(out + strlen(out), cap - strlen(out), "%s+%d ", hits[h].key,
               hits[h].similar);
    vlm_hits_free(hits, nh);
    return rc;
  }
  switch (op) {
  case RF_GET: {
    vlm_record *rec = NULL;
    if (!(rc = vlm_db_get(*db, c->key[5], &rec)))
      snprintf(out, cap, "%s", rec->caption);
    vlm_record_free(rec);
    return rc;
  }
  case RF_SCAN: {
    char **keys = NULL;
    int n = 0;
    uint64_t next = 0;
    if (!(rc = vlm_db_scan(*db, 0, 7, &keys, &n, &next)))
      snprintf(out, cap, "%d %s next %llu", n, n ? keys[0] : "",
               (unsigned long long)next);
    vlm_db_keys_free(keys, n);
    return rc;
  }
  case RF_FOREACH: {
    int n = 0;
    if (!(rc = vlm_db_foreach(*db, rf_count, &n)))
      snprintf(out, cap, "%d", n);
    return rc;
  }
  case RF_VERIFY:
    return vlm_db_verify(*db);
  case RF_EVAL: {
    vlm_eval_options eo = {0};
    vlm_eval_result er;
    if (!(rc = vlm_db_eval(*db, &eo, &er)))
      snprintf(out, cap, "%lld %.4f", (long long)er.pairs,
               er.t2i.at[0].recall);
    return rc;
  }
  case RF_CHECKPOINT: {
    vlm_item it = corpus_item(c, 200 + round % 400);
    if ((rc = vlm_db_put(*db, &it, 1, 0, NULL)))
      return rc;
    return vlm_db_checkpoint(*db);
  }
  case RF_BACKUP: {
    char dst[PATH_MAX];
    snprintf(dst, sizeof dst, "%s/backup-%d", t->root, round);
    vlm_db_backup_info bi;
    if (!(rc = vlm_db_backup(*db, dst, &bi)))
      snprintf(out, cap, "%lld", (long long)bi.items);
    struct stat st;
    if (rc && stat(dst, &st) == 0)
      fail_msg("a failed backup left %s", dst);
    return rc;
  }
  case RF_REINDEX:
    return vlm_db_reindex(*db, "Flat");
  case RF_REBUILD:
    return vlm_db_rebuild_meta(*db);
  case RF_REINDEX_HNSW:
    return vlm_db_reindex(*db, "HNSW16");
  case RF_REOPEN: {
    vlm_db_close(*db);
    *db = NULL;
    vlm_db_open_options oo = {.warn = count_warning};
    rc = vlm_db_open(t->dir, &oo, db);
    return rc;
  }
  }
  return 0;
}

static void test_read_faults(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  corpus c;
  corpus_make(&c, 600, DIM, 989);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  vlm_db_close(db);
  db = open_db(t.dir); /* warnings counted, not printed */
  corpus_put(db, &c, 0, 200, 100);
  char want[2048], got[2048], again[2048];
  int round = 0, faults = 0;
  for (int op = 0; op < RF_N; op++) {
    CHECK(rf_run(op, &db, &c, &t, round++, want, sizeof want));
    /* every one of the first reads, then every doubling (eval reads once
     * per query) */
    for (int n = 1;; n = n < 8 ? n + 1 : 2 * n) {
      nth_arm("lmdb-read", n);
      int rc = rf_run(op, &db, &c, &t, round++, got, sizeof got);
      int reached = nth_seen >= n;
      nth_disarm();
      if (!db) { /* a reopen that failed: open again without faults */
        if (rc != VLM_EIO)
          fail_msg("reopen #%d: %d (%s): %s", n, rc, vlm_errname(rc),
                   vlm_errmsg());
        db = open_db(t.dir);
      }
      if (!reached) {
        if (rc)
          fail_msg("%s: %s", rf_name[op], vlm_errmsg());
        break;
      }
      faults++;
      if (rc != 0 && rc != VLM_EIO)
        fail_msg("%s with lmdb-read #%d: %d (%s): %s", rf_name[op], n, rc,
                 vlm_errname(rc), vlm_errmsg());
      if (rc == 0 && strcmp(got, want))
        fail_msg("%s survived lmdb-read #%d with another answer:\n%s\n%s",
                 rf_name[op], n, got, want);
      CHECK(rf_run(op, &db, &c, &t, round++, again, sizeof again));
      if (strcmp(again, want))
        fail_msg("%s after lmdb-read #%d:\n%s\nbefore:\n%s", rf_name[op], n,
                 again, want);
      CHECK(vlm_db_verify(db));
      if (n >= 100000)
        fail_msg("%s: still reaching lmdb-read #%d", rf_name[op], n);
    }
  }
  print_message("%d read faults over %d operations\n", faults, RF_N);
  assert_true(faults >= RF_N);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* Declared fields given every kind of JSON value their type allows: an
 * int field takes integers, booleans (0/1) and integral reals, a text
 * field takes strings and keeps any other value as its JSON text, a real
 * field takes any number.  Filters see exactly those SQL values, and
 * verify compares each row with its record. */
static void test_field_values_of_every_json_type(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  static const struct {
    const char *meta, *filter;
  } items[] = {
      {"{\"year\": true, \"category\": 5, \"price\": 3}",
       "year = 1 AND category = '5' AND price = 3.0"},
      {"{\"year\": false, \"category\": [\"a\", 1], \"price\": 2.5}",
       "year = 0 AND category = '[\"a\",1]' AND price = 2.5"},
      {"{\"year\": 1999.0, \"category\": {\"x\": null}}",
       "year = 1999 AND category = '{\"x\":null}' AND price IS NULL"},
      {"{\"year\": null, \"category\": \"plain\", \"price\": -0.25}",
       "year IS NULL AND category = 'plain' AND price = -0.25"},
  };
  int n = (int)(sizeof items / sizeof items[0]);
  float v[DIM] = {1};
  char key[8][16];
  vlm_item it[8];
  for (int i = 0; i < n; i++) {
    snprintf(key[i], sizeof key[i], "k%d", i);
    it[i] = (vlm_item){.key = key[i], .image_vec = v, .meta_json = items[i].meta};
  }
  CHECK(vlm_db_put(db, it, n, 0, NULL));
  for (int i = 0; i < n; i++) {
    vlm_search_options o = {.k = 10, .exact = 1, .filter = items[i].filter};
    vlm_hit *hits = NULL;
    int nh = 0;
    CHECK(vlm_db_search(db, v, &o, &hits, &nh));
    if (nh != 1 || strcmp(hits[0].key, key[i]))
      fail_msg("%s: %d hits (%s), expected %s", items[i].filter, nh,
               nh ? hits[0].key : "-", key[i]);
    vlm_hits_free(hits, nh);
  }
  CHECK(vlm_db_verify(db));
  /* and what an int field refuses */
  it[0].meta_json = "{\"year\": 1999.5}";
  EXPECT_ERR(VLM_EINVAL, vlm_db_put(db, it, 1, VLM_PUT_UPSERT, NULL));
  assert_non_null(strstr(vlm_errmsg(), "\"year\" must be an integer"));
  it[0].meta_json = "{\"price\": \"cheap\"}";
  EXPECT_ERR(VLM_EINVAL, vlm_db_put(db, it, 1, VLM_PUT_UPSERT, NULL));
  assert_non_null(strstr(vlm_errmsg(), "\"price\" must be a number"));
  vlm_db_close(db);
  tmp_free(&t);
}

/* vlm_field_parse: "name:type" for each type, and the specs it refuses. */
static void test_field_specs(void **state) {
  (void)state;
  vlm_field f;
  CHECK(vlm_field_parse("price:real", &f));
  assert_string_equal(f.name, "price");
  assert_int_equal(f.type, VLM_FIELD_REAL);
  CHECK(vlm_field_parse("n:int", &f));
  assert_int_equal(f.type, VLM_FIELD_INT);
  char longname[100];
  memset(longname, 'a', 70);
  strcpy(longname + 70, ":int");
  static const char *bad[] = {"bad name:text", "x:blob", "notype", ":int",
                              "caf\xc3\xa9:text"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    if (vlm_field_parse(bad[i], &f) != VLM_EINVAL)
      fail_msg("field spec \"%s\" was accepted", bad[i]);
  EXPECT_ERR(VLM_EINVAL, vlm_field_parse(longname, &f));
  /* a name refused by create too */
  tmp t;
  tmp_make(&t);
  vlm_field odd[1] = {{"no-dash", VLM_FIELD_TEXT}};
  vlm_db_config c = {.dim = DIM, .index_factory = "Flat", .model_id = "m",
                     .fields = odd, .nfields = 1};
  vlm_db *db = NULL;
  EXPECT_ERR(VLM_EINVAL, vlm_db_create(t.dir, &c, &db));
  assert_non_null(strstr(vlm_errmsg(), "letters, digits"));
  odd[0].name = longname;
  longname[70] = '\0';
  EXPECT_ERR(VLM_EINVAL, vlm_db_create(t.dir, &c, &db));
  assert_non_null(strstr(vlm_errmsg(), "1..63 characters"));
  tmp_free(&t);
}

/* A hybrid query with no words (only punctuation) has nothing for BM25
 * to rank: the answer is the vector ranking. */
static void test_hybrid_without_words(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 50, DIM, 999);
  corpus_put(db, &c, 0, 50, 50);
  vlm_search_options o = {.k = 10};
  vlm_hit *a = NULL, *b = NULL;
  int na = 0, nb = 0;
  CHECK(vlm_db_search(db, c.img, &o, &a, &na));
  o.hybrid_text = "?! -- ...";
  CHECK(vlm_db_search(db, c.img, &o, &b, &nb));
  assert_int_equal(na, nb);
  for (int i = 0; i < na; i++)
    assert_string_equal(a[i].key, b[i].key);
  vlm_hits_free(a, na);
  vlm_hits_free(b, nb);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* Pairs files with what a hand-written one gets wrong: each refused with
 * its line; salvage refuses what is not a database. */
static void test_pairs_and_salvage_refusals(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_eval_pair *pairs = NULL;
  int np = 0;
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/none.jsonl", t.root);
  EXPECT_ERR(VLM_ENOTFOUND, vlm_eval_pairs_load(path, &pairs, &np));
  static const struct {
    const char *text, *words;
  } cases[] = {
      {"{\"image\": \"a\", \"text\": \"b\"}\n{\"image\": \"a\",\n",
       ":2: bad JSON"},
      {"{\"image\": \"a\", \"text\": [\"b\", 3]}\n", "\"text\"[1] is not a"},
      {"{\"image\": 1, \"text\": \"b\"}\n", ":1:"},
  };
  snprintf(path, sizeof path, "%s/pairs.jsonl", t.root);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    f_write_text(path, cases[i].text);
    EXPECT_ERR(VLM_EFORMAT, vlm_eval_pairs_load(path, &pairs, &np));
    if (!strstr(vlm_errmsg(), cases[i].words))
      fail_msg("pairs %zu: \"%s\" does not say \"%s\"", i, vlm_errmsg(),
               cases[i].words);
  }
  f_write_text(path, "\n{\"image\": \"a\", \"text\": [\"b\", \"c\"]}\n");
  CHECK(vlm_eval_pairs_load(path, &pairs, &np));
  assert_int_equal(np, 2);
  vlm_eval_pairs_free(pairs, np);
  vlm_db_salvage_result res;
  char dst[PATH_MAX];
  snprintf(dst, sizeof dst, "%s/saved", t.root);
  EXPECT_ERR(VLM_EINVAL, vlm_db_salvage(t.root, dst, NULL, NULL, NULL));
  EXPECT_ERR(VLM_EFORMAT, vlm_db_salvage(t.root, dst, NULL, NULL, &res));
  struct stat st;
  assert_int_equal(stat(dst, &st), -1);
  tmp_free(&t);
}

/* Records written before records carried checksums (the checksum flag
 * clear) are judged by their contents: a test makes such records by
 * clearing the flag, then damages one part of each.  The index side
 * leaves a non-finite stored vector out (with a warning), searches never
 * rank it, get still reads an old record whole, and salvage leaves each
 * damaged record behind saying what is wrong with it. */
typedef enum { OLD_PLAIN, OLD_NAN, OLD_LONG, OLD_CAPTION, OLD_SOURCE,
               OLD_META, OLD_THUMB } old_damage;

static void make_old_record(const char *dir, const char *key, old_damage d) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/payload.lmdb", dir);
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi keys, items, vecs;
  assert_int_equal(mdb_env_create(&env), 0);
  mdb_env_set_maxdbs(env, 8);
  mdb_env_set_mapsize(env, 64ull << 30);
  assert_int_equal(mdb_env_open(env, path, 0, 0644), 0);
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "keys", 0, &keys), 0);
  assert_int_equal(mdb_dbi_open(txn, "items", MDB_INTEGERKEY, &items), 0);
  assert_int_equal(mdb_dbi_open(txn, "vecs", MDB_INTEGERKEY, &vecs), 0);
  MDB_val k = {strlen(key), (void *)key}, v;
  assert_int_equal(mdb_get(txn, keys, &k, &v), 0);
  uint64_t id;
  memcpy(&id, v.mv_data, 8);
  MDB_val ik = {8, &id};
  assert_int_equal(mdb_get(txn, items, &ik, &v), 0);
  uint8_t *rec = malloc(v.mv_size);
  size_t len = v.mv_size;
  memcpy(rec, v.mv_data, len);
  uint32_t hdr[10];
  memcpy(hdr, rec, sizeof hdr);
  hdr[1] &= ~0x20u; /* no checksum */
  hdr[9] = 0;
  memcpy(rec, hdr, sizeof hdr);
  uint8_t *caption = rec + 40 + hdr[4], *source = caption + hdr[5],
          *meta = source + hdr[6], *thumb = meta + hdr[7];
  switch (d) {
  case OLD_CAPTION: caption[0] = 0xff; break;
  case OLD_SOURCE: source[0] = 0xff; break;
  case OLD_META: meta[0] = '['; break;
  case OLD_THUMB: thumb[0] = 'J'; break;
  default: break;
  }
  v.mv_size = len;
  v.mv_data = rec;
  assert_int_equal(mdb_put(txn, items, &ik, &v, 0), 0);
  free(rec);
  if (d == OLD_NAN || d == OLD_LONG) {
    assert_int_equal(mdb_get(txn, vecs, &ik, &v), 0);
    float *vec = malloc(v.mv_size);
    size_t vlen = v.mv_size;
    memcpy(vec, v.mv_data, vlen);
    if (d == OLD_NAN)
      vec[2] = NAN; /* the first vector's first value */
    else
      for (int i = 2; i < 2 + DIM; i++)
        vec[i] *= 2;
    v.mv_size = vlen;
    v.mv_data = vec;
    assert_int_equal(mdb_put(txn, vecs, &ik, &v, 0), 0);
    free(vec);
  }
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
}

static char all_warnings[4096];

static void keep_warnings(void *arg, const char *msg) {
  (void)arg;
  size_t n = strlen(all_warnings);
  snprintf(all_warnings + n, sizeof all_warnings - n, "%s\n", msg);
}

static char lost_why[8][64];
static int nlost;

static void note_lost(void *arg, const char *key, uint64_t id,
                      const char *why) {
  (void)arg;
  (void)id;
  if (nlost < 8)
    snprintf(lost_why[nlost++], sizeof lost_why[0], "%s: %s", key ? key : "?",
             why);
}

static void test_records_without_checksums(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  corpus c;
  corpus_make(&c, 20, DIM, 1009);
  for (int i = 0; i < 20; i++)
    c.has_img[i] = 1;
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  static const uint8_t jpeg[8] = {0xff, 0xd8, 0xff, 0xe0, 0, 0, 0xff, 0xd9};
  vlm_item items[20];
  for (int i = 0; i < 20; i++) {
    items[i] = corpus_item(&c, i);
    items[i].source = "file.jpg";
    items[i].thumb = jpeg;
    items[i].thumb_len = sizeof jpeg;
  }
  CHECK(vlm_db_put(db, items, 10, 0, NULL));
  CHECK(vlm_db_checkpoint(db));
  CHECK(vlm_db_put(db, items + 10, 10, 0, NULL)); /* after the checkpoint */
  vlm_db_close(db);
  static const struct {
    int item;
    old_damage d;
    const char *why;
  } old[] = {
      {2, OLD_PLAIN, NULL},
      {3, OLD_LONG, "not of unit length"},
      {11, OLD_NAN, "not finite"},
      {12, OLD_CAPTION, "caption is not UTF-8"},
      {13, OLD_SOURCE, "source is not UTF-8"},
      {14, OLD_META, "meta is not a JSON object"},
      {15, OLD_THUMB, "thumbnail is not JPEG data"},
  };
  int nold = (int)(sizeof old / sizeof old[0]);
  for (int i = 0; i < nold; i++)
    make_old_record(t.dir, c.key[old[i].item], old[i].d);
  /* the index files gone: the open rebuilds them from the records */
  char cmd[2 * PATH_MAX];
  snprintf(cmd, sizeof cmd, "rm -f '%s'/*.faiss", t.dir);
  assert_int_equal(system(cmd), 0);
  all_warnings[0] = '\0';
  vlm_db_open_options oo = {.warn = keep_warnings};
  db = NULL;
  CHECK(vlm_db_open(t.dir, &oo, &db));
  if (!strstr(all_warnings, "vector is not finite; left"))
    fail_msg("no warning for the non-finite vector: \"%s\"", all_warnings);
  /* never ranked, by the index or the exact scan */
  for (int exact = 0; exact < 2; exact++) {
    vlm_search_options o = {.k = 20, .exact = exact,
                            .target = VLM_TARGET_IMAGE};
    vlm_hit *hits = NULL;
    int nh = 0;
    CHECK(vlm_db_search(db, c.img + 11 * DIM, &o, &hits, &nh));
    for (int h = 0; h < nh; h++)
      if (!strcmp(hits[h].key, c.key[11]))
        fail_msg("%s search ranked the non-finite vector",
                 exact ? "exact" : "index");
    assert_int_equal(nh, 19);
    vlm_hits_free(hits, nh);
  }
  /* an old record without damage reads whole; verify names damage */
  sf_caption_is(db, c.key[2], c.caption[2]);
  EXPECT_ERR(VLM_ECORRUPT, vlm_db_verify(db));
  vlm_db_close(db);
  /* salvage leaves each damaged record behind, saying why */
  char dst[PATH_MAX];
  snprintf(dst, sizeof dst, "%s/saved", t.root);
  vlm_db_salvage_result res;
  nlost = 0;
  CHECK(vlm_db_salvage(t.dir, dst, note_lost, NULL, &res));
  assert_int_equal(res.records, 20);
  assert_int_equal(res.saved, 20 - (nold - 1));
  assert_int_equal(res.lost, nold - 1);
  for (int i = 1; i < nold; i++) {
    int found = 0;
    for (int j = 0; j < nlost; j++)
      found |= strstr(lost_why[j], c.key[old[i].item]) &&
               strstr(lost_why[j], old[i].why);
    if (!found)
      fail_msg("salvage did not report %s (%s)", c.key[old[i].item],
               old[i].why);
  }
  /* the damaged item can still be deleted from the original */
  db = open_db(t.dir);
  const char *gone = c.key[11];
  int deleted = 0;
  CHECK(vlm_db_delete(db, &gone, 1, &deleted));
  assert_int_equal(deleted, 1);
  vlm_db_close(db);
  db = open_db(dst);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* Files vlmdb writes itself failing ("file-write": an index checkpoint,
 * the manifest, a backup's copies of the payload store, meta.sqlite and
 * the index files, each write in turn): a checkpoint fails with VLM_EIO
 * and the previous one stays in force, a backup fails with VLM_EIO and
 * leaves nothing at or beside its destination, a close whose checkpoint
 * fails warns, and every reopen finds every item. */
static void expect_no_creating(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d));)
    if (strstr(e->d_name, "creating"))
      fail_msg("%s/%s was left behind", dir, e->d_name);
  closedir(d);
}

static void test_file_write_faults(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  corpus c;
  corpus_make(&c, 200, DIM, 1019);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  vlm_db_close(db);
  db = open_db(t.dir);
  corpus_put(db, &c, 0, 50, 50);
  CHECK(vlm_db_checkpoint(db));
  int next = 50, faults = 0;
  for (int op = 0; op < 2; op++) {
    for (int n = 1;; n++) {
      char dst[PATH_MAX];
      snprintf(dst, sizeof dst, "%s/copy-%d-%d", t.root, op, n);
      if (op == 0)
        corpus_put(db, &c, next, next + 5, 5), next += 5;
      nth_arm("file-write", n);
      int rc = op == 0 ? vlm_db_checkpoint(db) : vlm_db_backup(db, dst, NULL);
      int reached = nth_seen >= n;
      nth_disarm();
      if (!reached) {
        if (rc)
          fail_msg("%s: %s", op ? "backup" : "checkpoint", vlm_errmsg());
        break;
      }
      faults++;
      if (rc != VLM_EIO)
        fail_msg("%s with file-write #%d: %d (%s): %s",
                 op ? "backup" : "checkpoint", n, rc, vlm_errname(rc),
                 vlm_errmsg());
      struct stat st;
      if (op == 1 && stat(dst, &st) == 0)
        fail_msg("a failed backup left %s", dst);
      expect_no_creating(t.root);
      CHECK(vlm_db_verify(db));
      expect_index_matches_exact(db, &c);
      assert_true(n < 50);
    }
  }
  assert_true(faults >= 4);
  /* a close whose checkpoint fails: a warning, and the next open catches
   * the index up from the payload store */
  corpus_put(db, &c, next, next + 5, 5);
  next += 5;
  nth_arm("file-write", -1);
  warnings = 0;
  vlm_db_close(db);
  nth_disarm();
  if (!warnings || !strstr(last_warning, "checkpoint at close"))
    fail_msg("close with a failing checkpoint: \"%s\"", last_warning);
  db = open_db(t.dir);
  CHECK(vlm_db_verify(db));
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.items, next);
  expect_index_matches_exact(db, &c);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* A create killed part-way leaves a .NAME.creating-PID sibling; the next
 * create of NAME removes it once its process is gone, and keeps a live
 * process's (that create may still win the rename). */
static void test_stale_creating_siblings(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  pid_t dead = fork();
  assert_true(dead >= 0);
  if (dead == 0)
    _exit(0);
  assert_int_equal(waitpid(dead, NULL, 0), dead);
  char stale[PATH_MAX], live[PATH_MAX], file[PATH_MAX + 16];
  snprintf(stale, sizeof stale, "%s/.db.creating-%d", t.root, (int)dead);
  snprintf(live, sizeof live, "%s/.db.creating-1", t.root); /* init lives */
  assert_int_equal(mkdir(stale, 0755), 0);
  assert_int_equal(mkdir(live, 0755), 0);
  snprintf(file, sizeof file, "%s/meta.sqlite", stale);
  f_write_text(file, "half made");
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  struct stat st;
  if (stat(stale, &st) == 0)
    fail_msg("%s (a dead process's) is still there", stale);
  assert_int_equal(stat(live, &st), 0);
  assert_int_equal(rmdir(live), 0);
  CHECK(vlm_db_verify(db));
  vlm_db_close(db);
  tmp_free(&t);
}

/* meta.sqlite without its batch number (its state row deleted): a
 * read-only open names the damage; a writer's open rebuilds it from the
 * payload store, with a warning, and nothing is lost. */
static void test_meta_without_sequence_number(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "Flat", DIM);
  corpus c;
  corpus_make(&c, 20, DIM, 1029);
  corpus_put(db, &c, 0, 20, 10);
  vlm_db_close(db);
  char sqlpath[PATH_MAX];
  snprintf(sqlpath, sizeof sqlpath, "%s/meta.sqlite", t.dir);
  sqlite3 *s;
  assert_int_equal(sql_open_rw(sqlpath, &s), SQLITE_OK);
  /* (a new page size would move the page checksums: the VFS keeps it) */
  sqlite3_stmt *st;
  int before = -1, after = -2;
  assert_int_equal(sqlite3_prepare_v2(s, "PRAGMA page_size", -1, &st, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  before = sqlite3_column_int(st, 0);
  sqlite3_reset(st);
  sqlite3_exec(s, "PRAGMA page_size = 65536; VACUUM", NULL, NULL, NULL);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  after = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  assert_int_equal(after, before);
  assert_int_equal(sqlite3_exec(s, "DELETE FROM vlm_state WHERE name = 'seq'",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(s);
  vlm_db_open_options ro = {.readonly = 1};
  db = NULL;
  int rc = vlm_db_open(t.dir, &ro, &db);
  if (rc != VLM_ECORRUPT || !strstr(vlm_errmsg(), "no sequence number"))
    fail_msg("read-only open: %d (%s): %s", rc, vlm_errname(rc),
             vlm_errmsg());
  warnings = 0;
  db = open_db(t.dir);
  if (!warnings || !strstr(last_warning, "meta.sqlite"))
    fail_msg("writer open: no warning (%s)", last_warning);
  CHECK(vlm_db_verify(db));
  assert_int_equal(cf_count(db, "year > 0"), 20);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* A payload store that is not what the manifest promises: missing, an
 * LMDB file without vlmdb's tables, a batch number of the wrong size: each
 * open is refused with VLM_ECORRUPT saying what is wrong.  A batch number
 * behind meta.sqlite's makes a writer rebuild meta.sqlite from the
 * records.  A log entry of the wrong size that
 * the open needs for its replay makes it rebuild meta.sqlite from the
 * records instead, with a warning, nothing lost. */
static void raw_state_put(const char *dir, const char *table,
                          const void *key, size_t klen, const void *val,
                          size_t vlen, int del) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/payload.lmdb", dir);
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  assert_int_equal(mdb_env_create(&env), 0);
  mdb_env_set_maxdbs(env, 8);
  mdb_env_set_mapsize(env, 64ull << 30);
  assert_int_equal(mdb_env_open(env, path, 0, 0644), 0);
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, table,
                                strcmp(table, "log") ? 0 : MDB_INTEGERKEY,
                                &dbi),
                   0);
  MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
  assert_int_equal(del ? mdb_del(txn, dbi, &k, NULL)
                       : mdb_put(txn, dbi, &k, &v, 0),
                   0);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
}

static void expect_open_corrupt(const char *dir, const char *words) {
  vlm_db *db = NULL;
  vlm_db_open_options o = {.warn = count_warning};
  int rc = vlm_db_open(dir, &o, &db);
  if (rc != VLM_ECORRUPT || !strstr(vlm_errmsg(), words))
    fail_msg("open: %d (%s): %s; expected VLM_ECORRUPT \"%s\"", rc,
             vlm_errname(rc), vlm_errmsg(), words);
  assert_null(db);
}

static void test_damaged_payload_store(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  corpus c;
  corpus_make(&c, 20, DIM, 1039);
  char cmd[4 * PATH_MAX];
  for (int trial = 0; trial < 5; trial++) {
    rm_rf(t.dir);
    vlm_db *db = make_db(t.dir, "Flat", DIM);
    corpus_put(db, &c, 0, 10, 10);
    if (trial == 4) { /* payload.lmdb a batch ahead, as after a crash */
      vlm__test_fault = fault_here;
      fault_at[0] = "sql-commit";
      fault_at[1] = "sql-replay";
      vlm_item it = corpus_item(&c, 10);
      assert_true(vlm_db_put(db, &it, 1, 0, NULL) < 0);
      fault_at[0] = fault_at[1] = NULL;
      vlm__test_fault = NULL;
    }
    vlm_db_close(db);
    uint32_t four = 7;
    uint64_t seq = 2;
    switch (trial) {
    case 0:
      snprintf(cmd, sizeof cmd, "rm -rf '%s/payload.lmdb'", t.dir);
      assert_int_equal(system(cmd), 0);
      expect_open_corrupt(t.dir, "missing");
      break;
    case 1: { /* an LMDB environment without vlmdb's tables */
      snprintf(cmd, sizeof cmd, "rm -rf '%s/payload.lmdb' && mkdir '%s/"
               "payload.lmdb'", t.dir, t.dir);
      assert_int_equal(system(cmd), 0);
      char path[PATH_MAX];
      snprintf(path, sizeof path, "%s/payload.lmdb", t.dir);
      MDB_env *env;
      assert_int_equal(mdb_env_create(&env), 0);
      assert_int_equal(mdb_env_open(env, path, 0, 0644), 0);
      mdb_env_close(env);
      expect_open_corrupt(t.dir, "lmdb tables missing");
      break;
    }
    case 2:
      raw_state_put(t.dir, "state", "seq", 3, &four, sizeof four, 0);
      expect_open_corrupt(t.dir, "lmdb state seq: bad size");
      break;
    case 3: { /* no batch number: 0, behind meta.sqlite's */
      raw_state_put(t.dir, "state", "seq", 3, NULL, 0, 1);
      /* a writer trusts the payload store and rebuilds meta.sqlite (a
       * reader would refuse it, after 5 s of waiting for a writer that
       * might be between its two commits) */
      all_warnings[0] = '\0';
      vlm_db_open_options wo = {.warn = keep_warnings};
      db = NULL;
      CHECK(vlm_db_open(t.dir, &wo, &db));
      if (!strstr(all_warnings, "ahead of the payload store"))
        fail_msg("writer open: \"%s\"", all_warnings);
      CHECK(vlm_db_verify(db));
      assert_int_equal(cf_count(db, "year > 0"), 10);
      vlm_db_close(db);
      break;
    }
    case 4: { /* the replay's log entry cut short */
      char bad[5] = {0};
      raw_state_put(t.dir, "log", &seq, sizeof seq, bad, sizeof bad, 0);
      all_warnings[0] = '\0';
      vlm_db_open_options wo = {.warn = keep_warnings};
      db = NULL;
      CHECK(vlm_db_open(t.dir, &wo, &db));
      if (!strstr(all_warnings, "could not be replayed") ||
          !strstr(all_warnings, "bad size"))
        fail_msg("open with a damaged log entry: \"%s\"", all_warnings);
      CHECK(vlm_db_verify(db));
      assert_int_equal(cf_count(db, "year > 0"), 11);
      vlm_db_close(db);
      break;
    }
    }
  }
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ meta rebuild */

/* Filters and BM25 against a naive scan of the corpus: what meta.sqlite
 * serves must be what the records say. */
static void rb_check(vlm_db *db, const corpus *c, const int *alive,
                     const char *what) {
  CHECK(vlm_db_verify(db));
  vlm_search_options o = {0};
  vlm_hit *hits;
  int nh;
  char filter[64];
  for (int k = 0; k < 5; k++) {
    snprintf(filter, sizeof filter, "category = '%s' AND year >= 2000",
             categories[k]);
    o.k = c->n;
    o.exact = 1;
    o.filter = filter;
    CHECK(vlm_db_search(db, c->img, &o, &hits, &nh));
    int want = 0;
    for (int i = 0; i < c->n; i++)
      want += alive[i] && !strcmp(c->category[i], categories[k]) &&
              c->year[i] >= 2000;
    if (nh != want)
      fail_msg("%s: filter %s: %d hits, a scan of the records says %d", what,
               filter, nh, want);
    for (int h = 0; h < nh; h++) {
      int i = atoi(hits[h].key + 5);
      if (!alive[i] || strcmp(c->category[i], categories[k]) ||
          c->year[i] < 2000)
        fail_msg("%s: filter %s matched %s", what, filter, hits[h].key);
    }
    vlm_hits_free(hits, nh);
  }
  memset(&o, 0, sizeof o);
  o.k = c->n;
  o.hybrid_text = "river";
  CHECK(vlm_db_search(db, NULL, &o, &hits, &nh));
  int want = 0;
  for (int i = 0; i < c->n; i++)
    want += alive[i] && strstr(c->caption[i], "river") != NULL;
  if (nh != want)
    fail_msg("%s: BM25 \"river\": %d hits, a scan says %d", what, nh, want);
  vlm_hits_free(hits, nh);
}

static void test_meta_rebuilt_from_payload(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  corpus c;
  corpus_make(&c, 300, DIM, 777);
  corpus_put(db, &c, 0, 300, 60);
  int alive[300];
  for (int i = 0; i < 300; i++)
    alive[i] = 1;
  for (int i = 0; i < 300; i += 15) {
    const char *k[1] = {c.key[i]};
    CHECK(vlm_db_delete(db, k, 1, NULL));
    alive[i] = 0;
  }
  rb_check(db, &c, alive, "as written");
  vlm_db_close(db);
  char path[256], side[256], later[256];
  snprintf(path, sizeof path, "%s/meta.sqlite", t.dir);
  snprintf(later, sizeof later, "%s/meta.sqlite.later", t.root);

  /* 1. missing: a reader is told what to run, a writer rebuilds it */
  unlink(path);
  for (int i = 0; i < 2; i++) {
    snprintf(side, sizeof side, "%s%s", path, i ? "-shm" : "-wal");
    unlink(side);
  }
  vlm_db_open_options ro = {.readonly = 1, .warn = count_warning};
  EXPECT_ERR(VLM_ECORRUPT, vlm_db_open(t.dir, &ro, &db));
  assert_non_null(strstr(vlm_errmsg(), "vlmdb recover"));
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 1);
  assert_non_null(strstr(last_warning, "is missing; rebuilt it"));
  rb_check(db, &c, alive, "rebuilt after it went missing");
  /* one more write on the rebuilt file, kept for step 3 */
  const char *k10[1] = {c.key[10]};
  CHECK(vlm_db_delete(db, k10, 1, NULL));
  alive[10] = 0;
  vlm_db_close(db);
  copy_file(path, later);

  /* 2. garbage where the file was */
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  for (int i = 0; i < 8192; i++)
    fputc((int)(rng_next() & 0xff), f);
  fclose(f);
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 1);
  assert_non_null(strstr(last_warning, "cannot be read"));
  snprintf(side, sizeof side, "%s.damaged", path);
  assert_int_equal(access(side, F_OK), 0);
  rb_check(db, &c, alive, "rebuilt over garbage");
  vlm_db_close(db);

  /* 3. a copy from a later state than the payload store's: put back the
   * file that saw one more batch, onto a payload store one batch behind */
  {
    tmp t2;
    tmp_make(&t2);
    vlm_db *d2 = make_db(t2.dir, "HNSW32", DIM);
    corpus_put(d2, &c, 0, 300, 60);
    vlm_db_close(d2);
    char p2[256];
    snprintf(p2, sizeof p2, "%s/meta.sqlite", t2.dir);
    copy_file(later, p2); /* batch 26 onto a payload store at batch 5 */
    warnings = 0;
    d2 = open_db(t2.dir);
    assert_int_equal(warnings, 1);
    assert_non_null(strstr(last_warning, "ahead of the payload store"));
    int all[300];
    for (int i = 0; i < 300; i++)
      all[i] = 1;
    rb_check(d2, &c, all, "rebuilt over another copy's file");
    vlm_db_close(d2);
    tmp_free(&t2);
  }

  /* 4. damage found only later (a page the open does not read): verify
   * names it, vlm_db_rebuild_meta mends it */
  db = open_db(t.dir);
  CHECK(vlm_db_checkpoint(db));
  vlm_db_close(db);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_true(st.st_size > 4 * 4096);
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  unsigned char byte;
  off_t at = st.st_size - 4096 + 100; /* the last page */
  assert_int_equal(pread(fd, &byte, 1, at), 1);
  byte ^= 0x10;
  assert_int_equal(pwrite(fd, &byte, 1, at), 1);
  close(fd);
  db = open_db(t.dir);
  EXPECT_ERR(VLM_ECORRUPT, vlm_db_verify(db));
  CHECK(vlm_db_rebuild_meta(db));
  rb_check(db, &c, alive, "rebuilt after damage found by verify");
  vlm_db_close(db);
  db = open_db(t.dir);
  rb_check(db, &c, alive, "rebuilt, reopened");
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* ------------------------------------------------------------ backup */

/* The writes of the backup test, in order: round j upserts k<j>-0..3 and,
 * from round 2, k<j-2>-1 again with a new caption and vector, then from
 * round 3 deletes k<j-3>-0.  Each write is one batch, so the database's
 * batch number counts the writes done, and the expected contents after s
 * batches are the first s writes replayed. */
enum { BK_ROUNDS = 90, BK_KEYS = 4 * BK_ROUNDS };

typedef struct {
  int del;            /* a delete of key[0] */
  int n;
  char key[5][24];
  char caption[5][24];
  uint64_t seed[5];   /* the vector of key[i] */
} bk_op;

static bk_op bk_ops[2 * BK_ROUNDS];
static int bk_nops;

/* The vector of a seed (splitmix64 of its own, so that the writer thread
 * and the checker never share a generator). */
static void bk_vec(uint64_t seed, float *v) {
  uint64_t st = seed * 0x9E3779B97F4A7C15ull + 7;
  double ss = 0;
  for (int i = 0; i < DIM; i++) {
    uint64_t z = (st += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    v[i] = (float)((double)(z >> 11) / 9007199254740992.0 * 2 - 1);
    ss += (double)v[i] * v[i];
  }
  float inv = (float)(1.0 / sqrt(ss));
  for (int i = 0; i < DIM; i++)
    v[i] *= inv;
}

static void bk_make_ops(void) {
  bk_nops = 0;
  for (int j = 0; j < BK_ROUNDS; j++) {
    bk_op *o = &bk_ops[bk_nops++];
    memset(o, 0, sizeof *o);
    for (int i = 0; i < 4; i++) {
      snprintf(o->key[o->n], 24, "k%d-%d", j, i);
      snprintf(o->caption[o->n], 24, "c%d-%d", j, i);
      o->seed[o->n++] = (uint64_t)j * 16 + (uint64_t)i + 1;
    }
    if (j >= 2) {
      snprintf(o->key[o->n], 24, "k%d-1", j - 2);
      snprintf(o->caption[o->n], 24, "u%d", j);
      o->seed[o->n++] = 100000 + (uint64_t)j;
    }
    if (j >= 3) {
      bk_op *d = &bk_ops[bk_nops++];
      memset(d, 0, sizeof *d);
      d->del = 1;
      d->n = 1;
      snprintf(d->key[0], 24, "k%d-0", j - 3);
    }
  }
}

/* The expected item of key after the first s writes: 1 and its caption
 * and vector seed, or 0 when absent. */
static int bk_expect(int s, const char *key, const char **caption,
                     uint64_t *seed) {
  int found = 0;
  for (int w = 0; w < s; w++)
    for (int i = 0; i < bk_ops[w].n; i++)
      if (!strcmp(bk_ops[w].key[i], key)) {
        found = !bk_ops[w].del;
        *caption = bk_ops[w].caption[i];
        *seed = bk_ops[w].seed[i];
      }
  return found;
}

typedef struct {
  vlm_db *db;
  int acked; /* writes acknowledged (atomic) */
  int failed;
  char why[256];
} bk_writer;

static void *bk_write(void *arg) {
  bk_writer *w = arg;
  float vec[5][DIM];
  for (int k = 0; k < bk_nops; k++) {
    const bk_op *o = &bk_ops[k];
    int rc, done = 0;
    if (o->del) {
      const char *keys[1] = {o->key[0]};
      rc = vlm_db_delete(w->db, keys, 1, &done);
    } else {
      vlm_item it[5];
      memset(it, 0, sizeof it);
      for (int i = 0; i < o->n; i++) {
        bk_vec(o->seed[i], vec[i]);
        it[i].key = o->key[i];
        it[i].caption = o->caption[i];
        it[i].image_vec = vec[i];
      }
      rc = vlm_db_put(w->db, it, o->n, VLM_PUT_UPSERT, &done);
    }
    /* checkpoints move the index files and prune the log under the
     * backups' feet */
    if (!rc && k % 7 == 6)
      rc = vlm_db_checkpoint(w->db);
    if (rc) {
      w->failed = 1;
      snprintf(w->why, sizeof w->why, "write %d: %s", k, vlm_errmsg());
      break;
    }
    __atomic_store_n(&w->acked, k + 1, __ATOMIC_RELEASE);
    usleep(500);
  }
  return NULL;
}

/* Open the copy at dir: it must verify and hold exactly the first s
 * writes, s = its batch number, lo <= s <= hi. */
static void bk_check_copy(const char *dir, int lo, int hi) {
  vlm_db *c = open_db(dir);
  vlm_db_info info;
  CHECK(vlm_db_verify(c));
  CHECK(vlm_db_stat(c, &info));
  int s = (int)info.seq;
  if (s < lo || s > hi)
    fail_msg("%s: batch %d outside the writes acknowledged around the "
             "backup, %d..%d", dir, s, lo, hi);
  int64_t expect_items = 0;
  float want[DIM];
  for (int j = 0; j < BK_ROUNDS; j++)
    for (int i = 0; i < 4; i++) {
      char key[24];
      const char *cap = NULL;
      uint64_t seed = 0;
      snprintf(key, sizeof key, "k%d-%d", j, i);
      int present = bk_expect(s, key, &cap, &seed);
      vlm_record *r = NULL;
      int rc = vlm_db_get(c, key, &r);
      if (!present) {
        if (rc != VLM_ENOTFOUND)
          fail_msg("%s at batch %d: %s should be absent (get = %d)", dir, s,
                   key, rc);
        continue;
      }
      expect_items++;
      if (rc != 0)
        fail_msg("%s at batch %d: %s missing: %s", dir, s, key,
                 vlm_errmsg());
      if (!r->caption || strcmp(r->caption, cap))
        fail_msg("%s at batch %d: %s has caption \"%s\", expected \"%s\"",
                 dir, s, key, r->caption ? r->caption : "(none)", cap);
      bk_vec(seed, want);
      assert_non_null(r->image_vec);
      for (int d = 0; d < DIM; d++)
        if (fabsf(r->image_vec[d] - want[d]) > 1e-6f)
          fail_msg("%s: %s: vector element %d is %g, expected %g", dir, key,
                   d, r->image_vec[d], want[d]);
      vlm_record_free(r);
    }
  if (info.items != expect_items)
    fail_msg("%s at batch %d: %lld items, expected %lld", dir, s,
             (long long)info.items, (long long)expect_items);
  /* the index side found them too: the nearest item of a stored vector
   * is itself */
  const char *cap;
  uint64_t seed;
  for (int j = 0; j < BK_ROUNDS && s > 0; j += 7) {
    char key[24];
    snprintf(key, sizeof key, "k%d-2", j);
    if (!bk_expect(s, key, &cap, &seed))
      continue;
    bk_vec(seed, want);
    vlm_search_options so = {0};
    so.k = 1;
    vlm_hit *hits = NULL;
    int nh = 0;
    CHECK(vlm_db_search(c, want, &so, &hits, &nh));
    if (nh != 1 || strcmp(hits[0].key, key))
      fail_msg("%s: nearest to %s's vector is %s", dir, key,
               nh ? hits[0].key : "nothing");
    vlm_hits_free(hits, nh);
  }
  vlm_db_close(c);
}

/* Widen the window between a backup's starting point and its copies:
 * the writer goes on meanwhile, checkpoints included (which prune the log
 * the copy replays, but for the backup's pin). */
extern void (*vlm__test_hook)(const char *where, vlm_db *db);
static bk_writer *bk_hook_writer;

static void bk_hook(const char *where, vlm_db *db) {
  (void)db;
  if (strcmp(where, "backup-pinned") || !bk_hook_writer)
    return;
  int until = __atomic_load_n(&bk_hook_writer->acked, __ATOMIC_ACQUIRE) + 12;
  for (int i = 0; i < 400 && !bk_hook_writer->failed &&
                  __atomic_load_n(&bk_hook_writer->acked, __ATOMIC_ACQUIRE) <
                      until && __atomic_load_n(&bk_hook_writer->acked,
                                               __ATOMIC_ACQUIRE) < bk_nops;
       i++)
    usleep(1000);
}

static void test_backup_during_writes(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  bk_make_ops();
  vlm_db *db = make_db(t.dir, "HNSW32", DIM);
  bk_writer w = {.db = db};
  bk_hook_writer = &w;
  vlm__test_hook = bk_hook;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, bk_write, &w), 0);
  enum { NBK = 8 };
  int lo[NBK + 1], hi[NBK + 1], nbk = 0; /* + the finished database's */
  char dst[NBK + 1][128];
  rng_state = 4242;
  while (nbk < NBK && __atomic_load_n(&w.acked, __ATOMIC_ACQUIRE) < bk_nops &&
         !w.failed) {
    usleep((useconds_t)(rng_next() % 15000));
    snprintf(dst[nbk], sizeof dst[nbk], "%s/backup-%d", t.root, nbk);
    lo[nbk] = __atomic_load_n(&w.acked, __ATOMIC_ACQUIRE);
    vlm_db_backup_info info;
    CHECK(vlm_db_backup(db, dst[nbk], &info));
    hi[nbk] = __atomic_load_n(&w.acked, __ATOMIC_ACQUIRE) + 1; /* in flight */
    if ((int)info.seq < lo[nbk] || (int)info.seq > hi[nbk])
      fail_msg("backup %d reports batch %llu outside %d..%d", nbk,
               (unsigned long long)info.seq, lo[nbk], hi[nbk]);
    nbk++;
  }
  pthread_join(th, NULL);
  vlm__test_hook = NULL;
  bk_hook_writer = NULL;
  if (w.failed)
    fail_msg("writer: %s", w.why);
  /* one more of the finished database, and the refusals */
  snprintf(dst[nbk], sizeof dst[nbk], "%s/backup-%d", t.root, nbk);
  vlm_db_backup_info info;
  CHECK(vlm_db_backup(db, dst[nbk], &info));
  lo[nbk] = hi[nbk] = bk_nops;
  assert_int_equal((int)info.seq, bk_nops);
  nbk++;
  EXPECT_ERR(VLM_EEXISTS, vlm_db_backup(db, dst[0], NULL));
  vlm_db_close(db);
  int distinct = 0;
  for (int i = 0; i < nbk; i++) {
    bk_check_copy(dst[i], lo[i], hi[i]);
    distinct += i == 0 || lo[i] != lo[i - 1];
  }
  /* nothing left beside the copies */
  char cmd[256];
  snprintf(cmd, sizeof cmd, "ls -a %s | grep -c creating", t.root);
  FILE *f = popen(cmd, "r");
  int left = -1;
  assert_int_equal(fscanf(f, "%d", &left), 1);
  pclose(f);
  assert_int_equal(left, 0);
  printf("[   INFO   ] %d backups during %d writes (%d at distinct points) "
         "opened, verified and held exactly their prefix\n", nbk, bk_nops,
         distinct);
  tmp_free(&t);
}

/* ------------------------------------------------------------ replication */

/* A digest of everything a database holds, item by item in key order:
 * key, id, caption, source, metadata, thumbnail and both vectors, bit
 * for bit, so two databases with equal digests hold the same items under
 * the same ids. */
typedef struct {
  uint64_t h;
  int64_t n;
} rp_digest;

static void rp_mix(rp_digest *d, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    d->h = (d->h ^ b[i]) * 1099511628211ull;
  d->h = (d->h ^ n) * 1099511628211ull;
}

static int rp_visit(const vlm_record *r, void *arg) {
  rp_digest *d = arg;
  const char *text[4] = {r->key, r->caption, r->source, r->meta_json};
  for (int i = 0; i < 4; i++)
    rp_mix(d, text[i] ? text[i] : "", text[i] ? strlen(text[i]) + 1 : 0);
  rp_mix(d, &r->id, sizeof r->id);
  rp_mix(d, r->thumb, r->thumb ? r->thumb_len : 0);
  rp_mix(d, r->image_vec, r->image_vec ? (size_t)r->dim * 4 : 0);
  rp_mix(d, r->text_vec, r->text_vec ? (size_t)r->dim * 4 : 0);
  d->n++;
  return 0;
}

static void rp_same(vlm_db *p, vlm_db *r, const char *when) {
  rp_digest dp = {14695981039346656037ull, 0}, dr = dp;
  CHECK(vlm_db_foreach(p, rp_visit, &dp));
  CHECK(vlm_db_foreach(r, rp_visit, &dr));
  vlm_db_info ip, ir;
  CHECK(vlm_db_stat(p, &ip));
  CHECK(vlm_db_stat(r, &ir));
  if (dp.h != dr.h || dp.n != dr.n || ip.seq != ir.seq ||
      ip.items != ir.items || ip.image_vectors != ir.image_vectors ||
      ip.text_vectors != ir.text_vectors || ip.next_id != ir.next_id)
    fail_msg("%s: primary at batch %llu (%lld items, digest %016llx, next "
             "id %llu), replica at %llu (%lld items, digest %016llx, next "
             "id %llu)", when, (unsigned long long)ip.seq,
             (long long)ip.items, (unsigned long long)dp.h,
             (unsigned long long)ip.next_id, (unsigned long long)ir.seq,
             (long long)ir.items, (unsigned long long)dr.h,
             (unsigned long long)ir.next_id);
  CHECK(vlm_db_verify(r));
  /* the index side: a stored vector's nearest item is the same on both */
  vlm_search_options so = {0};
  so.k = 5;
  float q[DIM];
  unit(q, DIM);
  vlm_hit *hp = NULL, *hr = NULL;
  int np = 0, nr = 0;
  CHECK(vlm_db_search(p, q, &so, &hp, &np));
  CHECK(vlm_db_search(r, q, &so, &hr, &nr));
  assert_int_equal(np, nr);
  for (int i = 0; i < np; i++)
    if (strcmp(hp[i].key, hr[i].key) || hp[i].score != hr[i].score)
      fail_msg("%s: hit %d: %s %g on the primary, %s %g on the replica",
               when, i, hp[i].key, hp[i].score, hr[i].key, hr[i].score);
  vlm_hits_free(hp, np);
  vlm_hits_free(hr, nr);
}

/* Buffers shipped marked partial. */
static int rp_partial;

/* Ship everything the replica lacks, max_bytes at a time; the number of
 * buffers it took. */
static int rp_ship(vlm_db *p, vlm_db *r, size_t max_bytes) {
  int nbuf = 0;
  for (;;) {
    vlm_db_info ir;
    CHECK(vlm_db_stat(r, &ir));
    void *buf = NULL;
    size_t len = 0;
    uint64_t last, head, first, seq;
    CHECK(vlm_db_changes(p, ir.seq, max_bytes, &buf, &len, &last, &head));
    unsigned flags;
    CHECK(vlm_db_changes_info(buf, len, &first, NULL, NULL, &flags));
    rp_partial += (flags & VLM_CHANGES_PARTIAL) != 0;
    assert_true(last < head || !(flags & VLM_CHANGES_PARTIAL));
    assert_int_equal(first, ir.seq + 1);
    CHECK(vlm_db_apply_changes(r, buf, len, &seq));
    assert_int_equal(seq, last);
    free(buf);
    nbuf++;
    if (last == head)
      return nbuf;
  }
}

/* A replica seeded from a backup and fed the primary's batches (mixed
 * writes: adds, upserts, deletes, a key written twice in one batch, items
 * replaced again before they were shipped) holds exactly the primary's
 * items, ids and vectors at every step, and its stores agree; a buffer
 * applied twice or out of order is refused with nothing written; the log
 * is kept for a replica while it is held, and a replica behind a pruned
 * log is told to seed again; a reopened replica resumes at its batch. */
static void test_replica_applies_shipped_batches(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  char rdir[160];
  snprintf(rdir, sizeof rdir, "%s/replica", t.root);
  vlm_db *p = make_db(t.dir, "Flat", DIM);
  mw_model m;
  for (int k = 0; k < MW_KEYS; k++)
    m.version[k] = -1;
  int ver = 0, nbuf = 0;
  rng_state = 9091;
  mw_run(p, &m, 10, &ver);
  CHECK(vlm_db_backup(p, rdir, NULL));
  vlm_db *r = open_db(rdir);
  rp_same(p, r, "seeded");
  for (int round = 0; round < 6; round++) {
    mw_run(p, &m, 12, &ver);
    /* small buffers too: each ends where no shipped item is left gone */
    nbuf += rp_ship(p, r, round % 2 ? 700 : 0);
    char when[32];
    snprintf(when, sizeof when, "round %d", round);
    rp_same(p, r, when);
    mw_check(r, &m, when);
  }
  /* nothing new: an empty buffer that says where the primary is */
  vlm_db_info ip, ir;
  CHECK(vlm_db_stat(p, &ip));
  void *buf = NULL;
  size_t len = 0;
  uint64_t last = 0, head = 0, seq = 0;
  CHECK(vlm_db_changes(p, ip.seq, 0, &buf, &len, &last, &head));
  assert_int_equal(last, ip.seq);
  assert_int_equal(head, ip.seq);
  CHECK(vlm_db_apply_changes(r, buf, len, &seq));
  assert_int_equal(seq, ip.seq);
  free(buf);
  /* a buffer the replica already holds part of is refused */
  CHECK(vlm_db_changes(p, ip.seq - 3, 0, &buf, &len, &last, &head));
  EXPECT_ERR(VLM_ESTATE, vlm_db_apply_changes(r, buf, len, NULL));
  ((uint8_t *)buf)[len / 2] ^= 0x40; /* and a damaged one */
  int rc = vlm_db_apply_changes(r, buf, len, NULL);
  assert_true(rc == VLM_ECORRUPT || rc == VLM_EFORMAT || rc == VLM_ESTATE);
  free(buf);
  EXPECT_ERR(VLM_EFORMAT, vlm_db_apply_changes(r, "nonsense", 8, NULL));
  rp_same(p, r, "after the refusals");
  /* a replica ahead of the primary holds another history */
  EXPECT_ERR(VLM_ESTATE,
             vlm_db_changes(p, ip.seq + 5, 0, &buf, &len, &last, &head));
  /* the log is kept while a replica is held at its batch ... */
  CHECK(vlm_db_stat(r, &ir));
  vlm_db_retain_log(p, ir.seq);
  mw_run(p, &m, 6, &ver);
  CHECK(vlm_db_checkpoint(p));
  nbuf += rp_ship(p, r, 0);
  rp_same(p, r, "after a checkpoint held for the replica");
  /* the same batch has the same log digest on both sides, the last entry
   * outlives a checkpoint, and another batch under the same number has
   * another digest (the replica's history check) */
  CHECK(vlm_db_stat(r, &ir));
  CHECK(vlm_db_checkpoint(r));
  CHECK(vlm_db_checkpoint(p));
  uint64_t dp = 0, dr = 1;
  int np = -1, nr = -2;
  CHECK(vlm_db_log_digest(p, ir.seq, &dp, &np));
  CHECK(vlm_db_log_digest(r, ir.seq, &dr, &nr));
  assert_true(dp == dr && np == nr);
  EXPECT_ERR(VLM_ENOTFOUND, vlm_db_log_digest(r, ir.seq - 1, &dr, &nr));
  /* one item each, from the same next id: the same log entry, another
   * item */
  float lv[DIM];
  unit(lv, DIM);
  vlm_item local = {.key = "written-on-the-replica", .image_vec = lv};
  CHECK(vlm_db_put(r, &local, 1, 0, NULL));
  local.key = "written-on-the-primary";
  CHECK(vlm_db_put(p, &local, 1, 0, NULL));
  CHECK(vlm_db_log_digest(p, ir.seq + 1, &dp, &np));
  CHECK(vlm_db_log_digest(r, ir.seq + 1, &dr, &nr));
  assert_int_equal(np, 1);
  assert_int_equal(nr, 1);
  assert_true(dp != dr);
  /* ... and pruned without the hold: seed again */
  CHECK(vlm_db_stat(r, &ir));
  vlm_db_retain_log(p, UINT64_MAX);
  mw_run(p, &m, 6, &ver);
  CHECK(vlm_db_checkpoint(p));
  EXPECT_ERR(VLM_ENOTFOUND,
             vlm_db_changes(p, ir.seq, 0, &buf, &len, &last, &head));
  /* a reopened replica is at the batch it applied last */
  vlm_db_close(r);
  r = open_db(rdir);
  vlm_db_info ir2;
  CHECK(vlm_db_stat(r, &ir2));
  assert_int_equal(ir2.seq, ir.seq);
  CHECK(vlm_db_verify(r));
  vlm_db_close(r);
  vlm_db_close(p);
  printf("[   INFO   ] %d buffers shipped %llu batches; replica equal to "
         "its primary after each round\n", nbuf,
         (unsigned long long)ir.seq);
  tmp_free(&t);
}

/* Kept image bytes travel, and a database records whether it keeps
 * images: the setting is made at create, survives a reopen, changes
 * durably (vlm_db_set_keep_images, refused read-only) and is copied by
 * backup and salvage; vlm_db_get2 / vlm_db_foreach2 hand out the bytes of
 * the same read as the record; an update with an empty image removes
 * them; a backup and a replica fed by log shipping hold every item's bytes
 * bit for bit (one of 2 MiB among them), and an item without them stays
 * without. */
static uint8_t *kt_bytes(size_t n, uint64_t seed) {
  uint8_t *b = malloc(n);
  assert_non_null(b);
  for (size_t i = 0; i < n; i++)
    b[i] = (uint8_t)(vlm_test_splitmix64(&seed) >> 56);
  return b;
}

/* key holds exactly want (n bytes; NULL: none), by get_image and get2. */
static void kt_expect(vlm_db *db, const char *key, const uint8_t *want,
                      size_t n) {
  uint8_t *got = NULL;
  size_t len = 1;
  CHECK(vlm_db_get_image(db, key, &got, &len));
  if (len != (want ? n : 0))
    fail_msg("key \"%s\": %zu kept bytes, want %zu", key, len,
             want ? n : 0);
  if (want)
    assert_memory_equal(got, want, n);
  else
    assert_null(got);
  free(got);
  vlm_record *r = NULL;
  CHECK(vlm_db_get2(db, key, VLM_GET_IMAGE, &r));
  assert_int_equal(r->image_len, want ? n : 0);
  if (want)
    assert_memory_equal(r->image, want, n);
  else
    assert_null(r->image);
  vlm_record_free(r);
}

typedef struct {
  int seen, with;
  const uint8_t *big;
  size_t big_len;
} kt_walk;

static int kt_visit(const vlm_record *rec, void *arg) {
  kt_walk *w = arg;
  w->seen++;
  /* the size always; the bytes only when asked for */
  assert_int_equal(rec->image_len > 0, strcmp(rec->key, "none") != 0);
  assert_true(!rec->image || rec->image_len > 0);
  if (rec->image) {
    w->with++;
    if (!strcmp(rec->key, "big")) {
      assert_int_equal(rec->image_len, w->big_len);
      assert_memory_equal(rec->image, w->big, w->big_len);
    }
  }
  return 0;
}

static void test_kept_images_setting_and_travel(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  char man[160], copy[160], rdir[160], salv[160];
  snprintf(man, sizeof man, "%s/manifest.json", t.dir);
  snprintf(copy, sizeof copy, "%s/backup", t.root);
  snprintf(rdir, sizeof rdir, "%s/replica", t.root);
  snprintf(salv, sizeof salv, "%s/salvaged", t.root);
  vlm_db_config c = {0};
  c.dim = DIM;
  c.index_factory = "Flat";
  c.model_id = "test-model";
  c.keep_images = 1;
  vlm_db *db = NULL;
  CHECK(vlm_db_create(t.dir, &c, &db));
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.keep_images, 1);
  assert_int_equal(vlm_db_keeps_images(db), 1);
  vlm_db_close(db);
  json_t *m = json_load_file(man, 0, NULL);
  assert_true(json_is_true(json_object_get(m, "keep_images")));
  json_decref(m);
  /* off, durably; a read-only handle cannot change it */
  db = open_db(t.dir);
  assert_int_equal(vlm_db_keeps_images(db), 1);
  CHECK(vlm_db_set_keep_images(db, 0));
  assert_int_equal(vlm_db_keeps_images(db), 0);
  vlm_db_close(db);
  m = json_load_file(man, 0, NULL);
  assert_null(json_object_get(m, "keep_images"));
  json_decref(m);
  vlm_db_open_options ro = {.readonly = 1};
  CHECK(vlm_db_open(t.dir, &ro, &db));
  assert_int_equal(vlm_db_keeps_images(db), 0);
  EXPECT_ERR(VLM_ESTATE, vlm_db_set_keep_images(db, 1));
  vlm_db_close(db);
  db = open_db(t.dir);
  assert_int_equal(vlm_db_keeps_images(db), 0);
  CHECK(vlm_db_set_keep_images(db, 1));
  CHECK(vlm_db_set_keep_images(db, 1)); /* again: nothing to do */
  vlm_db_close(db);
  db = open_db(t.dir);
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.keep_images, 1);

  /* items with bytes (one of 2 MiB) and one without */
  size_t big_len = (size_t)2 << 20, small_len = 5000;
  uint8_t *big = kt_bytes(big_len, 1), *small = kt_bytes(small_len, 2);
  float a[DIM], b[DIM];
  unit(a, DIM);
  unit(b, DIM);
  vlm_item items[3] = {{0}};
  items[0] = (vlm_item){.key = "big", .image_vec = a, .caption = "big one",
                        .image = big, .image_len = big_len};
  items[1] = (vlm_item){.key = "small", .image_vec = b, .text_vec = a,
                        .image = small, .image_len = small_len};
  items[2] = (vlm_item){.key = "none", .image_vec = b, .caption = "no bytes"};
  CHECK(vlm_db_put(db, items, 3, 0, NULL));
  kt_expect(db, "big", big, big_len);
  kt_expect(db, "small", small, small_len);
  kt_expect(db, "none", NULL, 0);
  vlm_record *r = NULL;
  CHECK(vlm_db_get(db, "big", &r)); /* without the flag: the size only */
  assert_int_equal(r->image_len, big_len);
  assert_null(r->image);
  vlm_record_free(r);
  EXPECT_ERR(VLM_EINVAL, vlm_db_get2(db, "big", 0x80, &r));
  EXPECT_ERR(VLM_ENOTFOUND, vlm_db_get2(db, "absent", VLM_GET_IMAGE, &r));
  kt_walk w = {0, 0, big, big_len};
  CHECK(vlm_db_foreach2(db, VLM_GET_IMAGE, kt_visit, &w));
  assert_int_equal(w.seen, 3);
  assert_int_equal(w.with, 2);
  w = (kt_walk){0, 0, big, big_len};
  CHECK(vlm_db_foreach(db, kt_visit, &w)); /* no bytes without the flag */
  assert_int_equal(w.with, 0);

  /* an update with an empty image removes the bytes (a new picture not
   * to be kept); one without an image keeps them; "none" stays without */
  vlm_write_op op = {VLM_WRITE_UPDATE, {0}};
  op.item.key = "small";
  op.item.image = "";
  op.item.image_len = 0;
  CHECK(vlm_db_write(db, &op, 1, NULL));
  kt_expect(db, "small", NULL, 0);
  op.item.key = "none";
  CHECK(vlm_db_write(db, &op, 1, NULL));
  kt_expect(db, "none", NULL, 0);
  op.item = (vlm_item){.key = "small", .image = small,
                       .image_len = small_len};
  CHECK(vlm_db_write(db, &op, 1, NULL));
  op.item = (vlm_item){.key = "small", .caption = "renamed"};
  CHECK(vlm_db_write(db, &op, 1, NULL));
  kt_expect(db, "small", small, small_len);
  CHECK(vlm_db_verify(db));

  /* a backup holds the bytes and the setting; a replica seeded from it
   * gets later items' bytes by log shipping */
  CHECK(vlm_db_backup(db, copy, NULL));
  CHECK(vlm_db_backup(db, rdir, NULL));
  vlm_db *rep = open_db(rdir);
  size_t later_len = 700000;
  uint8_t *later = kt_bytes(later_len, 3);
  vlm_item more[2] = {{0}};
  more[0] = (vlm_item){.key = "later", .image_vec = a, .image = later,
                       .image_len = later_len};
  more[1] = (vlm_item){.key = "later-none", .text_vec = b};
  CHECK(vlm_db_put(db, more, 2, 0, NULL));
  op.item = (vlm_item){.key = "big", .caption = "big, renamed"};
  CHECK(vlm_db_write(db, &op, 1, NULL));
  rp_ship(db, rep, 0);
  rp_same(db, rep, "kept bytes shipped");
  kt_expect(rep, "big", big, big_len);
  kt_expect(rep, "small", small, small_len);
  kt_expect(rep, "later", later, later_len);
  kt_expect(rep, "none", NULL, 0);
  kt_expect(rep, "later-none", NULL, 0);
  CHECK(vlm_db_stat(rep, &info));
  assert_int_equal(info.keep_images, 1);
  vlm_db_close(rep);
  vlm_db_close(db);
  vlm_db *bk = open_db(copy);
  kt_expect(bk, "big", big, big_len);
  kt_expect(bk, "small", small, small_len);
  kt_expect(bk, "none", NULL, 0);
  CHECK(vlm_db_stat(bk, &info));
  assert_int_equal(info.keep_images, 1);
  CHECK(vlm_db_verify(bk));
  vlm_db_close(bk);

  /* salvage keeps the setting as well as the bytes */
  vlm_db_salvage_result res;
  CHECK(vlm_db_salvage(t.dir, salv, NULL, NULL, &res));
  assert_int_equal(res.saved, 5);
  db = open_db(salv);
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.keep_images, 1);
  kt_expect(db, "later", later, later_len);
  kt_expect(db, "later-none", NULL, 0);
  vlm_db_close(db);
  free(big);
  free(small);
  free(later);
  tmp_free(&t);
}

/* A key written in every batch keeps a gone item open up to the
 * primary's last batch: buffers end anyway at 16 times their size, marked
 * partial, and the replica's stores agree after each; the last buffer is
 * whole and the replica equal to its primary. */
static void test_replica_hot_key_partial_buffers(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  char rdir[160];
  snprintf(rdir, sizeof rdir, "%s/replica", t.root);
  vlm_db *p = make_db(t.dir, "Flat", DIM);
  CHECK(vlm_db_backup(p, rdir, NULL));
  vlm_db *r = open_db(rdir);
  float v[DIM];
  rng_state = 31337;
  for (int i = 0; i < 240; i++) {
    char key[16], cap[32];
    snprintf(key, sizeof key, "n%d", i);
    snprintf(cap, sizeof cap, "hot %d", i);
    vlm_write_op ops[2];
    memset(ops, 0, sizeof ops);
    unit(v, DIM);
    ops[0].kind = VLM_WRITE_UPSERT;
    ops[0].item.key = "hot";
    ops[0].item.caption = cap;
    ops[0].item.image_vec = v;
    ops[1].kind = VLM_WRITE_ADD;
    ops[1].item.key = key;
    ops[1].item.caption = cap;
    ops[1].item.image_vec = v;
    CHECK(vlm_db_write(p, ops, 2, NULL));
  }
  int nbuf = 0, partial = 0;
  unsigned flags = 0;
  for (;;) {
    vlm_db_info ir;
    CHECK(vlm_db_stat(r, &ir));
    void *buf = NULL;
    size_t len = 0;
    uint64_t last, head;
    CHECK(vlm_db_changes(p, ir.seq, 600, &buf, &len, &last, &head));
    CHECK(vlm_db_changes_info(buf, len, NULL, NULL, NULL, &flags));
    CHECK(vlm_db_apply_changes(r, buf, len, NULL));
    free(buf);
    nbuf++;
    partial += (flags & VLM_CHANGES_PARTIAL) != 0;
    CHECK(vlm_db_verify(r));
    if (last == head)
      break;
  }
  assert_int_equal(flags & VLM_CHANGES_PARTIAL, 0);
  if (partial == 0 || partial != nbuf - 1)
    fail_msg("%d of %d buffers partial: expected all but the last", partial,
             nbuf);
  rp_same(p, r, "after the hot key");
  vlm_db_close(r);
  vlm_db_close(p);
  printf("[   INFO   ] a key upserted in each of 240 batches: %d buffers, "
         "%d partial, then equal\n", nbuf, partial);
  tmp_free(&t);
}

/* Every store call of applying a buffer, failed in turn (the Nth call of
 * a fault point, N = 1, 2, ... until the apply no longer reaches it): each
 * failure is VLM_EIO and leaves the replica exactly as it was (its batch,
 * every item, verify), and the buffer then applies whole.  A failed
 * SQLite commit after LMDB's is repaired by the replay, as for a local
 * batch. */
static void test_replica_apply_faults(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  char rdir[160];
  snprintf(rdir, sizeof rdir, "%s/replica", t.root);
  vlm_db *p = make_db(t.dir, "Flat", DIM);
  mw_model m;
  for (int k = 0; k < MW_KEYS; k++)
    m.version[k] = -1;
  int ver = 0, failures = 0;
  rng_state = 7117;
  mw_run(p, &m, 6, &ver);
  CHECK(vlm_db_backup(p, rdir, NULL));
  vlm_db *r = open_db(rdir);
  static const char *points[] = {"lmdb-begin", "lmdb-write", "sql-write",
                                 "lmdb-commit", "sql-commit"};
  for (size_t pt = 0; pt < sizeof points / sizeof points[0]; pt++) {
    mw_run(p, &m, 5, &ver);
    vlm_db_info before;
    CHECK(vlm_db_stat(r, &before));
    rp_digest d0 = {14695981039346656037ull, 0};
    CHECK(vlm_db_foreach(r, rp_visit, &d0));
    void *buf = NULL;
    size_t len = 0;
    uint64_t last, head;
    CHECK(vlm_db_changes(p, before.seq, 0, &buf, &len, &last, &head));
    assert_int_equal(last, head);
    for (int n = 1;; n++) {
      nth_arm(points[pt], n);
      int rc = vlm_db_apply_changes(r, buf, len, NULL);
      int reached = nth_seen >= n;
      nth_disarm();
      if (!reached || (rc == 0 && !strcmp(points[pt], "sql-commit"))) {
        CHECK(rc); /* sql-commit: committed in LMDB, SQLite replayed */
        break;
      }
      if (rc != VLM_EIO)
        fail_msg("%s #%d: %d (%s), expected VLM_EIO", points[pt], n, rc,
                 vlm_errmsg());
      failures++;
      vlm_db_info now;
      CHECK(vlm_db_stat(r, &now));
      rp_digest d1 = {14695981039346656037ull, 0};
      CHECK(vlm_db_foreach(r, rp_visit, &d1));
      if (now.seq != before.seq || d1.h != d0.h || now.items != before.items)
        fail_msg("%s #%d failed but changed the replica (batch %llu -> "
                 "%llu)", points[pt], n, (unsigned long long)before.seq,
                 (unsigned long long)now.seq);
      CHECK(vlm_db_verify(r));
    }
    free(buf);
    rp_same(p, r, points[pt]);
  }
  vlm_db_close(r);
  vlm_db_close(p);
  printf("[   INFO   ] %d store calls of applying buffers failed in turn: "
         "each VLM_EIO with the replica unchanged\n", failures);
  tmp_free(&t);
}

/* ------------------------------------------------------------ main */

/* ------------------------------------ adopted merged IVF indexes (lists) */

/* How many files of dir end in suffix (and start with prefix, if given). */
static int count_files(const char *dir, const char *prefix,
                       const char *suffix) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  assert_non_null(d);
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name), sl = strlen(suffix);
    if (len >= sl && !strcmp(e->d_name + len - sl, suffix) &&
        (!prefix || !strncmp(e->d_name, prefix, strlen(prefix))))
      n++;
  }
  closedir(d);
  return n;
}

/* Make modality m's index of db (IVF8,Flat) a merged one, the way
 * `vlmdb index train/add/merge` and `vlmdb merge` do: trained on the
 * modality's stored vectors, filled by two parts under the items' ids,
 * merged into root/merged-M.vlmidx with its list file beside it, and
 * adopted. */
static void adopt_merged(vlm_db *db, const corpus *c, const char *root,
                         int m) {
  float *x = malloc((size_t)c->n * c->dim * sizeof *x);
  int64_t *ids = malloc((size_t)c->n * sizeof *ids);
  int64_t n = 0;
  for (int i = 0; i < c->n; i++) {
    vlm_record *r;
    if (vlm_db_get(db, c->key[i], &r) != 0)
      continue;
    const float *v = m == 0 ? r->image_vec : r->text_vec;
    if (v) {
      memcpy(x + (size_t)n * c->dim, v, (size_t)c->dim * sizeof *x);
      ids[n++] = (int64_t)r->id;
    }
    vlm_record_free(r);
  }
  char trained[PATH_MAX], out[PATH_MAX], lists[PATH_MAX];
  snprintf(trained, sizeof trained, "%s/trained-%d.vlmidx", root, m);
  snprintf(out, sizeof out, "%s/merged-%d.vlmidx", root, m);
  snprintf(lists, sizeof lists, "%s.ivfdata", out);
  vlm_index *tr, *into, *part[2];
  CHECK(vlm_index_create("IVF8,Flat", c->dim, VLM_METRIC_IP, &tr));
  CHECK(vlm_index_train(tr, n, x));
  CHECK(vlm_index_write(tr, trained));
  vlm_index_free(tr);
  CHECK(vlm_index_read(trained, &into));
  for (int p = 0; p < 2; p++) {
    int64_t from = p ? n / 2 : 0, to = p ? n : n / 2;
    CHECK(vlm_index_read(trained, &part[p]));
    CHECK(vlm_index_add(part[p], to - from, x + (size_t)from * c->dim,
                        ids + from));
  }
  const int64_t offsets[2] = {0, 0};
  CHECK(vlm_index_merge(into, part, offsets, 2, lists));
  CHECK(vlm_index_write(into, out));
  for (int p = 0; p < 2; p++)
    vlm_index_free(part[p]);
  vlm_index_free(into);
  CHECK(vlm_db_adopt_index(db, m, out));
  free(x);
  free(ids);
}

/* A database whose two indexes are adopted merged IVF indexes. */
static vlm_db *make_adopted(const tmp *t, corpus *c) {
  vlm_db *db = make_db(t->dir, "IVF8,Flat", DIM);
  corpus_make(c, 900, DIM, 707);
  corpus_put(db, c, 0, c->n, 300);
  for (int m = 0; m < 2; m++)
    adopt_merged(db, c, t->root, m);
  vlm_db_info info;
  CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.pending_vectors, 0);
  assert_int_equal(count_files(t->dir, NULL, ".ivfdata"), 2);
  return db;
}

/* The same answers, key for key and bit for bit, from two handles:
 * approximate searches (nprobe 1 and 3 of 8 lists) of each target. */
static void expect_same_searches(vlm_db *a, vlm_db *b, uint64_t seed) {
  vlm_target targets[] = {VLM_TARGET_ANY, VLM_TARGET_IMAGE, VLM_TARGET_TEXT};
  uint64_t saved = rng_state;
  rng_state = seed;
  for (int q = 0; q < 30; q++) {
    float v[DIM];
    unit(v, DIM);
    vlm_search_options o = {.k = 10, .target = targets[q % 3],
                            .nprobe = q % 2 ? 1 : 3};
    vlm_hit *ha, *hb;
    int na, nb;
    CHECK(vlm_db_search(a, v, &o, &ha, &na));
    CHECK(vlm_db_search(b, v, &o, &hb, &nb));
    assert_int_equal(na, nb);
    for (int i = 0; i < na; i++) {
      if (strcmp(ha[i].key, hb[i].key) || ha[i].score != hb[i].score)
        fail_msg("query %d, rank %d: %s %.9g vs %s %.9g", q, i, ha[i].key,
                 (double)ha[i].score, hb[i].key, (double)hb[i].score);
    }
    vlm_hits_free(ha, na);
    vlm_hits_free(hb, nb);
  }
  rng_state = saved;
}

/* A backup of a database with adopted merged indexes carries their list
 * files: it opens without rebuilding anything (no warning), maps its
 * lists as the source does, and answers every approximate search bit for
 * bit as the source does, opened as a writer, read-only or read-only
 * with mmap_index; a backup taken from a read-only handle too. */
static void test_backup_of_adopted_index(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  corpus c;
  vlm_db *db = make_adopted(&t, &c);
  /* a few writes after the adoption: the tail and a tombstone */
  CHECK(vlm_db_delete(db, (const char *[]){c.key[5]}, 1, NULL));
  vlm_item extra = corpus_item(&c, 6);
  extra.key = "extra";
  CHECK(vlm_db_put(db, &extra, 1, 0, NULL));
  vlm_db_open_options opts[3] = {
      {.warn = count_warning},
      {.readonly = 1, .warn = count_warning},
      {.readonly = 1, .mmap_index = 1, .warn = count_warning}};
  char dst[3][128];
  for (int b = 0; b < 3; b++) {
    /* from the writer, a read-only handle, a mapped read-only handle */
    snprintf(dst[b], sizeof dst[b], "%s/backup-%d", t.root, b);
    if (b > 0) {
      vlm_db_close(db);
      warnings = 0;
      CHECK(vlm_db_open(t.dir, &opts[b], &db));
      assert_int_equal(warnings, 0);
    }
    vlm_db_backup_info bi;
    warnings = 0;
    CHECK(vlm_db_backup(db, dst[b], &bi));
    if (warnings)
      fail_msg("backup %d: %s", b, last_warning);
    assert_int_equal(count_files(dst[b], NULL, ".ivfdata"), 2);
    for (int o = 0; o < 3; o++) {
      vlm_db *copy;
      warnings = 0;
      CHECK(vlm_db_open(dst[b], &opts[o], &copy));
      vlm_db_info ci, si;
      CHECK(vlm_db_stat(copy, &ci));
      CHECK(vlm_db_stat(db, &si));
      if (warnings)
        fail_msg("backup %d, open %d: %s", b, o, last_warning);
      assert_true(ci.index_vectors > 0);
      assert_int_equal(ci.index_vectors, si.index_vectors);
      assert_int_equal(ci.pending_vectors, si.pending_vectors);
      assert_int_equal(ci.items, si.items);
      expect_same_searches(db, copy, 99 + (uint64_t)o);
      CHECK(vlm_db_verify(copy));
      vlm_db_close(copy);
    }
  }
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

/* List files no checkpoint in force names are removed: a stray one at
 * the next writer open (the one in force stays, also when the manifest
 * predates recording it), the old one after adopting another merged
 * index, and every one after reindexing away from them; a read-only
 * handle that mapped a removed file keeps answering; the database
 * verifies and searches right throughout. */
static void test_orphan_list_files_removed(void **state) {
  (void)state;
  tmp t;
  tmp_make(&t);
  corpus c;
  vlm_db *db = make_adopted(&t, &c);
  vlm_db_close(db);
  char junk[PATH_MAX], mine[PATH_MAX], path[PATH_MAX];
  snprintf(junk, sizeof junk, "%s/image-lists-junk.ivfdata", t.dir);
  snprintf(mine, sizeof mine, "%s/mine.ivfdata", t.dir);
  for (int round = 0; round < 2; round++) {
    if (round == 1) {
      /* a manifest written before the list file was recorded in it */
      snprintf(path, sizeof path, "%s/manifest.json", t.dir);
      json_error_t je;
      json_t *root = json_load_file(path, 0, &je);
      assert_non_null(root);
      json_t *ix = json_object_get(root, "index");
      int had = 0;
      for (int m = 0; m < 2; m++)
        had += json_object_del(json_object_get(
                   ix, m ? "text" : "image"), "lists") == 0;
      assert_int_equal(had, 2);
      json_object_del(root, "checksum");
      assert_int_equal(json_dump_file(root, path, JSON_INDENT(2)), 0);
      json_decref(root);
    }
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("junk", f);
    fclose(f);
    f = fopen(mine, "w"); /* not of vlmdb's naming: left alone */
    assert_non_null(f);
    fclose(f);
    vlm_db_open_options ro = {.readonly = 1, .warn = count_warning};
    CHECK(vlm_db_open(t.dir, &ro, &db));
    vlm_db_close(db);
    assert_int_equal(access(junk, F_OK), 0); /* readers remove nothing */
    warnings = 0;
    db = open_db(t.dir);
    assert_int_equal(warnings, 0);
    assert_int_equal(access(junk, F_OK), -1);
    assert_int_equal(access(mine, F_OK), 0);
    assert_int_equal(count_files(t.dir, NULL, ".ivfdata"), 3);
    CHECK(vlm_db_verify(db));
    check_targets(db, &c, NULL, 0, 1.0);
    vlm_db_close(db);
    if (round == 1) {
      /* the checkpoint at close recorded the list files again */
      snprintf(path, sizeof path, "%s/manifest.json", t.dir);
      json_error_t je;
      json_t *root = json_load_file(path, 0, &je);
      assert_non_null(root);
      json_t *im = json_object_get(json_object_get(root, "index"), "image");
      const char *lists = json_string_value(json_object_get(im, "lists"));
      assert_non_null(lists);
      snprintf(path, sizeof path, "%s/%s", t.dir, lists);
      assert_int_equal(access(path, F_OK), 0);
      json_decref(root);
    }
  }
  /* adopting another merged index: the list file it replaced goes.  The
   * merge is made again to the same name, whose first file the database
   * linked in: it writes a new file rather than rewrite that one */
  struct stat before, after;
  snprintf(path, sizeof path, "%s/merged-0.vlmidx.ivfdata", t.root);
  assert_int_equal(stat(path, &before), 0);
  db = open_db(t.dir);
  adopt_merged(db, &c, t.root, 0);
  assert_int_equal(stat(path, &after), 0);
  assert_true(before.st_ino != after.st_ino);
  assert_int_equal(count_files(t.dir, "image-lists-", ".ivfdata"), 1);
  assert_int_equal(count_files(t.dir, "text-lists-", ".ivfdata"), 1);
  CHECK(vlm_db_verify(db));
  /* reindexing away: no list file is left, while a reader process that
   * mapped them keeps answering as before */
  int ready[2], go[2];
  assert_int_equal(pipe(ready), 0);
  assert_int_equal(pipe(go), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    vlm_db *r;
    vlm_db_open_options mo = {.readonly = 1, .mmap_index = 1,
                              .warn = count_warning};
    vlm_hit *h[2][6];
    int nh[2][6];
    char byte = 'r';
    if (vlm_db_open(t.dir, &mo, &r) != 0)
      _exit(2);
    for (int pass = 0; pass < 2; pass++) {
      if (pass == 1 && (write(ready[1], &byte, 1) != 1 ||
                        read(go[0], &byte, 1) != 1))
        _exit(3);
      rng_state = 17;
      for (int q = 0; q < 6; q++) {
        float v[DIM];
        unit(v, DIM);
        vlm_search_options o = {.k = 10, .nprobe = 2,
                                .target = (vlm_target)(q % 3)};
        if (vlm_db_search(r, v, &o, &h[pass][q], &nh[pass][q]) != 0 ||
            nh[pass][q] != 10)
          _exit(4);
      }
    }
    for (int q = 0; q < 6; q++)
      for (int i = 0; i < 10; i++)
        if (strcmp(h[0][q][i].key, h[1][q][i].key) ||
            h[0][q][i].score != h[1][q][i].score)
          _exit(5);
    _exit(0);
  }
  char byte;
  assert_int_equal(read(ready[0], &byte, 1), 1);
  CHECK(vlm_db_reindex(db, "IVF8,Flat"));
  assert_int_equal(count_files(t.dir, NULL, ".ivfdata"), 1); /* mine */
  assert_int_equal(write(go[1], &byte, 1), 1);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  for (int i = 0; i < 2; i++)
    close(ready[i]), close(go[i]);
  CHECK(vlm_db_verify(db));
  check_targets(db, &c, NULL, 0, 1.0);
  vlm_db_close(db);
  warnings = 0;
  db = open_db(t.dir);
  assert_int_equal(warnings, 0);
  assert_int_equal(count_files(t.dir, NULL, ".ivfdata"), 1);
  CHECK(vlm_db_verify(db));
  check_targets(db, &c, NULL, 0, 1.0);
  vlm_db_close(db);
  corpus_free(&c);
  tmp_free(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_put_get_exact_payload, teardown_tmp),
      cmocka_unit_test_teardown(test_kept_image_bytes_lock_and_exchange,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_upsert_delete_reach_all_stores, teardown_tmp),
      cmocka_unit_test_teardown(test_one_modality_database, teardown_tmp),
      cmocka_unit_test_teardown(test_search_targets_exact_and_index, teardown_tmp),
      cmocka_unit_test_teardown(test_collapse_near_duplicates, teardown_tmp),
      cmocka_unit_test_teardown(test_search_min_score, teardown_tmp),
      cmocka_unit_test_teardown(test_search_offset_pages, teardown_tmp),
      cmocka_unit_test_teardown(test_search_group_by, teardown_tmp),
      cmocka_unit_test_teardown(test_truncated_payload_refused, teardown_tmp),
      cmocka_unit_test_teardown(test_full_disk_campaign, teardown_tmp),
      cmocka_unit_test_teardown(test_bit_flips_are_caught, teardown_tmp),
      cmocka_unit_test_teardown(test_bit_flips_in_ordinary_commands,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_sql_bit_flips_are_caught, teardown_tmp),
      cmocka_unit_test_teardown(test_index_and_manifest_faults, teardown_tmp),
      cmocka_unit_test_teardown(test_live_bitmaps, teardown_tmp),
      cmocka_unit_test_teardown(test_lazy_index_load, teardown_tmp),
      cmocka_unit_test_teardown(test_flat_index_has_no_file, teardown_tmp),
      cmocka_unit_test_teardown(test_read_only_filesystem, teardown_tmp),
      cmocka_unit_test_teardown(test_checksums_and_salvage, teardown_tmp),
      cmocka_unit_test_teardown(test_salvage_steps_over_a_damaged_page,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_reopen_and_index_file_recovery, teardown_tmp),
      cmocka_unit_test_teardown(test_reindex, teardown_tmp),
      cmocka_unit_test_teardown(test_tuned_effort, teardown_tmp),
      cmocka_unit_test_teardown(test_tuned_effort_held_out, teardown_tmp),
      cmocka_unit_test_teardown(test_training_threshold, teardown_tmp),
      cmocka_unit_test_teardown(test_open_refusals, teardown_tmp),
      cmocka_unit_test_teardown(test_bad_input_fails_whole_batch, teardown_tmp),
      cmocka_unit_test_teardown(test_full_disk, teardown_tmp),
      cmocka_unit_test_teardown(test_full_disk_tmpfs, teardown_tmp),
      cmocka_unit_test_teardown(test_filters_match_naive_scan, teardown_tmp),
      cmocka_unit_test_teardown(test_planner_filtered_recall, teardown_tmp),
      cmocka_unit_test_teardown(test_planner_scan, teardown_tmp),
      cmocka_unit_test_teardown(test_broad_filters, teardown_tmp),
      cmocka_unit_test_teardown(test_filter_injection_refused, teardown_tmp),
      cmocka_unit_test_teardown(test_hybrid_rrf, teardown_tmp),
      cmocka_unit_test(test_fuse_rrf_matches_nested),
      cmocka_unit_test_teardown(test_fts_cjk_tokens, teardown_tmp),
      cmocka_unit_test_teardown(test_hybrid_cjk, teardown_tmp),
      cmocka_unit_test_teardown(test_hybrid_cjk_old_tokenizer_kept,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_extreme_vectors_and_text_limit,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_recovery_replays_sqlite, teardown_tmp),
      cmocka_unit_test_teardown(test_mixed_batches_sqlite_matches_model, teardown_tmp),
      cmocka_unit_test_teardown(test_write_mixed_batches, teardown_tmp),
      cmocka_unit_test_teardown(test_update_changes_only_what_it_names,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_crash_kill9_recovery, teardown_tmp),
      cmocka_unit_test_teardown(test_concurrency_readers_never_see_half_a_batch, teardown_tmp),
      cmocka_unit_test_teardown(test_readers_beside_a_live_writer, teardown_tmp),
      cmocka_unit_test_teardown(test_backup_during_writes, teardown_tmp),
      cmocka_unit_test_teardown(test_replica_applies_shipped_batches,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_replica_hot_key_partial_buffers,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_kept_images_setting_and_travel,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_replica_apply_faults, teardown_tmp),
      cmocka_unit_test_teardown(test_backup_of_adopted_index, teardown_tmp),
      cmocka_unit_test_teardown(test_orphan_list_files_removed, teardown_tmp),
      cmocka_unit_test_teardown(test_meta_rebuilt_from_payload, teardown_tmp),
      cmocka_unit_test_teardown(test_commit_faults, teardown_tmp),
      cmocka_unit_test_teardown(test_planner_retries, teardown_tmp),
      cmocka_unit_test_teardown(test_store_faults_fail_whole_batches,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_index_add_faults, teardown_tmp),
      cmocka_unit_test_teardown(test_recovery_faults, teardown_tmp),
      cmocka_unit_test_teardown(test_api_refusals, teardown_tmp),
      cmocka_unit_test_teardown(test_hostile_manifests, teardown_tmp),
      cmocka_unit_test_teardown(test_store_error_codes, teardown_tmp),
      cmocka_unit_test_teardown(test_sql_vfs_passes_through, teardown_tmp),
      cmocka_unit_test_teardown(test_verify_names_the_differing_field,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_old_meta_is_rebuilt, teardown_tmp),
      cmocka_unit_test_teardown(test_path_and_payload_limits, teardown_tmp),
      cmocka_unit_test_teardown(test_checkpoint_mismatches, teardown_tmp),
      cmocka_unit_test_teardown(test_read_faults, teardown_tmp),
      cmocka_unit_test_teardown(test_field_values_of_every_json_type,
                                teardown_tmp),
      cmocka_unit_test_teardown(test_field_specs, teardown_tmp),
      cmocka_unit_test_teardown(test_hybrid_without_words, teardown_tmp),
      cmocka_unit_test_teardown(test_pairs_and_salvage_refusals, teardown_tmp),
      cmocka_unit_test_teardown(test_records_without_checksums, teardown_tmp),
      cmocka_unit_test_teardown(test_file_write_faults, teardown_tmp),
      cmocka_unit_test_teardown(test_stale_creating_siblings, teardown_tmp),
      cmocka_unit_test_teardown(test_damaged_payload_store, teardown_tmp),
      cmocka_unit_test_teardown(test_meta_without_sequence_number,
                                teardown_tmp),
  };
  const char *only = getenv("VLM_TEST_ONLY");
  if ((!only || !*only) && getenv("VLM_TSAN"))
    only = "concurrency";
  if (only && *only) {
    char pattern[128];
    snprintf(pattern, sizeof pattern, "*%s*", only);
    cmocka_set_test_filter(pattern);
  }
  /* VLM_TEST_FILTER=test_tuned* runs the matching tests only */
  if (getenv("VLM_TEST_FILTER"))
    cmocka_set_test_filter(getenv("VLM_TEST_FILTER"));
  return cmocka_run_group_tests_name("db", tests, NULL, NULL);
}
