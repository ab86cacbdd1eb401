/* crash_model.h - the deterministic workload of the crash test, shared by
 * the writer child (tests/helpers/crash_writer.c) and the checker
 * (tests/test_db.c).
 *
 * Op j (0 <= j < CM_NOPS) is a delete when j % 8 == 7, else a put:
 *   put number p = j - j / 8 inserts keys k<p*50> .. k<p*50+49> at
 *   version 0 and, when p % 5 == 4, replaces (upserts) the first 10 keys of
 *   put p - 5 with version p;
 *   a delete removes the last 10 keys of put (j - j / 8) - 7.
 * Every op is idempotent, so a child restarted at an op that did commit
 * before it was killed leaves the same state.  An item's content is a
 * pure function of (key number, version).
 */
#ifndef CRASH_MODEL_H
#define CRASH_MODEL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "vlmdb.h"

#define CM_DIM 16
#define CM_BATCH 50
#define CM_NOPS 228 /* 200 puts (10,000 keys) and 28 deletes */
#define CM_NKEYS 10000
#define CM_FACTORY "HNSW32"

static inline int cm_is_delete(int j) { return j % 8 == 7; }
static inline int cm_put_number(int j) { return j - j / 8; }

static inline uint64_t cm_mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* A unit vector that depends on (i, v, salt). */
static inline void cm_vector(float *x, int i, int v, int salt) {
  uint64_t s = cm_mix(((uint64_t)i << 24) ^ ((uint64_t)v << 4) ^ (uint64_t)salt);
  double ss = 0;
  for (int d = 0; d < CM_DIM; d++) {
    s = cm_mix(s);
    x[d] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
    ss += (double)x[d] * x[d];
  }
  float inv = (float)(1.0 / sqrt(ss));
  for (int d = 0; d < CM_DIM; d++)
    x[d] *= inv;
}

typedef struct {
  char key[32];
  float image[CM_DIM];
  float text[CM_DIM];
  char caption[96];
  char source[48];
  unsigned char thumb[64];
  char meta[128];
  vlm_item item;
} cm_item;

static inline void cm_make(cm_item *c, int i, int v) {
  memset(c, 0, sizeof *c);
  snprintf(c->key, sizeof c->key, "k%d", i);
  cm_vector(c->image, i, v, 1);
  c->item.key = c->key;
  c->item.image_vec = c->image;
  if (i % 3 != 0) {
    cm_vector(c->text, i, v, 2);
    c->item.text_vec = c->text;
  }
  snprintf(c->caption, sizeof c->caption, "item %d version %d word%d", i, v,
           i % 17);
  c->item.caption = c->caption;
  if (i % 2 == 0) {
    snprintf(c->source, sizeof c->source, "file:///data/%d.jpg", i);
    c->item.source = c->source;
  }
  if (i % 4 != 1) {
    size_t n = 3 + (size_t)(i % 40);
    c->thumb[0] = 0xff, c->thumb[1] = 0xd8, c->thumb[2] = 0xff;
    for (size_t j = 3; j < n; j++)
      c->thumb[j] = (unsigned char)(i + j * 7);
    c->item.thumb = c->thumb;
    c->item.thumb_len = n;
  }
  snprintf(c->meta, sizeof c->meta,
           "{\"category\": \"c%d\", \"year\": %d, \"v\": %d}", i % 5,
           2000 + i % 25, v);
  c->item.meta_json = c->meta;
}

/* Apply op j to a model state: version[i] = -1 when key i is absent. */
static inline void cm_apply(int j, int *version) {
  int p = cm_put_number(j);
  if (cm_is_delete(j)) {
    int t = p - 7;
    if (t >= 0)
      for (int i = t * CM_BATCH + 40; i < t * CM_BATCH + CM_BATCH; i++)
        version[i] = -1;
    return;
  }
  for (int i = p * CM_BATCH; i < p * CM_BATCH + CM_BATCH; i++)
    version[i] = 0;
  if (p % 5 == 4 && p >= 5)
    for (int i = (p - 5) * CM_BATCH; i < (p - 5) * CM_BATCH + 10; i++)
      version[i] = p;
}

#endif
