/* fuzz_put.c - libFuzzer target for the write path's validation: every
 * item vlm_db_put accepts must read back as given and leave a database
 * that verifies; every batch it refuses must leave nothing behind.
 *
 * The input is a batch of up to four items: the first byte picks how many
 * and which vectors they carry, the rest is split at NUL bytes into each
 * item's key, caption, meta JSON and raw float32 bytes of its vectors (any
 * bits: NaN, infinities, denormals, zeros).  After each input the items
 * are deleted again, so the database stays small and verify stays cheap;
 * every 256 inputs it is closed and reopened.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vlm_error.h"
#include "vlmdb.h"

enum { DIM = 8, MAXN = 4 };

static vlm_db *g_db;
static char g_dir[64];
static long g_runs;

static void die(const char *what) {
  fprintf(stderr, "fuzz_put: %s: %s\n", what, vlm_errmsg());
  abort();
}

static void open_db(void) {
  vlm_db_open_options o = {0};
  if (vlm_db_open(g_dir, &o, &g_db) != 0)
    die("the database no longer opens");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  snprintf(g_dir, sizeof g_dir, "%s/vlm_fuzz_put_XXXXXX",
           access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  if (!mkdtemp(g_dir))
    abort();
  char db[96];
  snprintf(db, sizeof db, "%s/db", g_dir);
  snprintf(g_dir, sizeof g_dir, "%s", db);
  vlm_field f[] = {{"category", VLM_FIELD_TEXT}, {"year", VLM_FIELD_INT},
                   {"price", VLM_FIELD_REAL}};
  vlm_db_config cfg = {.dim = DIM, .index_factory = "Flat",
                       .model_id = "fuzz", .fields = f, .nfields = 3};
  if (vlm_db_create(g_dir, &cfg, &g_db) != 0)
    die("create");
  return 0;
}

/* The next NUL-terminated piece of the input, or "" past its end. */
static const char *piece(const char **p, const char *end) {
  if (*p >= end)
    return "";
  const char *s = *p;
  const char *z = memchr(s, 0, (size_t)(end - s));
  *p = z ? z + 1 : end;
  return s;
}

static int unit_and_finite(const float *v) {
  double ss = 0;
  for (int i = 0; i < DIM; i++) {
    if (!isfinite(v[i]))
      return 0;
    ss += (double)v[i] * v[i];
  }
  return fabs(sqrt(ss) - 1) < 1e-4;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  /* a private copy that ends in NUL, so every piece is a C string */
  char *buf = malloc(size + 1);
  memcpy(buf, data + 1, size - 1);
  buf[size - 1] = 0;
  const char *p = buf, *end = buf + size - 1;
  int n = 1 + (data[0] & 3);
  vlm_item it[MAXN];
  float vec[MAXN][2][DIM];
  memset(it, 0, sizeof it);
  memset(vec, 0, sizeof vec);
  for (int i = 0; i < n; i++) {
    it[i].key = piece(&p, end);
    const char *cap = piece(&p, end);
    const char *meta = piece(&p, end);
    it[i].caption = *cap ? cap : NULL;
    it[i].meta_json = *meta ? meta : NULL;
    /* vector bytes: 2 * DIM floats from what follows, not split at NUL */
    size_t want = sizeof vec[i], have = (size_t)(end - p);
    size_t take = have < want ? have : want;
    memcpy(vec[i], p, take);
    p += take;
    if (data[0] & (4 << (i & 1)))
      it[i].image_vec = vec[i][0];
    if (data[0] & (16 << (i & 1)) || !it[i].image_vec)
      it[i].text_vec = vec[i][1];
  }
  int written = 0;
  int rc = vlm_db_put(g_db, it, n, (data[0] & 64) ? VLM_PUT_UPSERT : 0,
                      &written);
  if (rc) {
    if (!vlm_errmsg()[0])
      abort(); /* a refusal always says why */
    for (int i = 0; i < n; i++) { /* and leaves nothing behind */
      vlm_record *r = NULL;
      if (*it[i].key && vlm_db_get(g_db, it[i].key, &r) != VLM_ENOTFOUND)
        die("a refused batch left an item");
    }
  } else {
    if (written != n)
      abort(); /* keys are unique within a batch and absent before it */
    for (int i = 0; i < n; i++) {
      vlm_record *r = NULL;
      if (vlm_db_get(g_db, it[i].key, &r) != 0)
        die("an accepted item does not read back");
      if (strcmp(r->key, it[i].key) ||
          !r->caption != !it[i].caption ||
          (r->caption && strcmp(r->caption, it[i].caption)) ||
          !r->image_vec != !it[i].image_vec ||
          !r->text_vec != !it[i].text_vec ||
          (r->image_vec && !unit_and_finite(r->image_vec)) ||
          (r->text_vec && !unit_and_finite(r->text_vec)))
        abort(); /* stored other than given */
      vlm_record_free(r);
    }
    if (vlm_db_verify(g_db) != 0)
      die("an accepted batch fails verify");
    const char *keys[MAXN];
    for (int i = 0; i < n; i++)
      keys[i] = it[i].key;
    int deleted = 0;
    if (vlm_db_delete(g_db, keys, n, &deleted) != 0 || deleted != n)
      die("delete");
  }
  if (++g_runs % 256 == 0) {
    vlm_db_close(g_db);
    open_db();
    if (vlm_db_verify(g_db) != 0)
      die("verify after reopening");
  }
  free(buf);
  return 0;
}
