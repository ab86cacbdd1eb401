/* train_text.c - text pairs for the text tower's own contrastive loss:
 * read and tokenized once, drawn by weight into batches of distinct
 * texts. */
#include "train_text.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"
#include "vlm_error.h"

typedef struct {
  int item;                /* index into the caller's pairs */
  int64_t off[2];          /* into ids */
  int len[2];
  uint64_t hash[2];        /* of the ids, for distinct batches */
} tpair;

struct vlm__ttext {
  uint64_t seed;
  int context_length;
  tpair *pairs;
  int n, skipped;
  int32_t *ids;
  double *cum;             /* cumulative weights, cum[n - 1] the total */
  char digest[65];
};

static uint64_t ids_hash(const int32_t *ids, int n) { /* FNV-1a 64 */
  uint64_t h = 0xcbf29ce484222325ull;
  const unsigned char *p = (const unsigned char *)ids;
  for (size_t i = 0; i < sizeof(int32_t) * (size_t)n; i++)
    h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

typedef struct {
  const vlm__tdata_cfg *cfg;
  const vlm__tokenizer *tok;
  const vlm_train_text_pair *pairs;
  int n, empty_ids;
  atomic_int next;
  int32_t **ids; /* [2n], malloc'd each, NULL when bad */
  int *len;      /* [2n] */
  char (*why)[256];
} prep;

static void prep_one(prep *c, int i) {
  const vlm_train_text_pair *p = &c->pairs[i];
  if (!(p->weight >= 0) || !isfinite(p->weight)) {
    snprintf(c->why[i], sizeof c->why[i], "weight %g", p->weight);
    return;
  }
  for (int s = 0; s < 2; s++) {
    const char *text = s ? p->b : p->a;
    if (!text) {
      snprintf(c->why[i], sizeof c->why[i], "no text %c", s ? 'b' : 'a');
      return;
    }
    char why[200];
    if (vlm__tdata_text_ids(c->cfg, c->tok, c->empty_ids, text,
                            &c->ids[2 * i + s], &c->len[2 * i + s], why,
                            sizeof why)) {
      snprintf(c->why[i], sizeof c->why[i], "%c: %s", s ? 'b' : 'a', why);
      return;
    }
  }
  if (c->len[2 * i] == c->len[2 * i + 1] &&
      !memcmp(c->ids[2 * i], c->ids[2 * i + 1],
              sizeof(int32_t) * (size_t)c->len[2 * i]))
    snprintf(c->why[i], sizeof c->why[i], "both texts are the same");
}

static void *prep_main(void *arg) {
  prep *c = arg;
  for (int i; (i = atomic_fetch_add(&c->next, 1)) < c->n;)
    prep_one(c, i);
  return NULL;
}

int vlm__ttext_open(const vlm__tdata_cfg *cfg, const vlm__tokenizer *tok,
                    const vlm_train_text_pair *pairs, int n,
                    vlm__ttext **out) {
  *out = NULL;
  if (n <= 0)
    return vlm_seterr(VLM_EINVAL, "no text pairs");
  int rc = 0;
  vlm__ttext *d = calloc(1, sizeof *d);
  prep c = {.cfg = cfg, .tok = tok, .pairs = pairs, .n = n};
  c.ids = calloc((size_t)n * 2, sizeof *c.ids);
  c.len = calloc((size_t)n * 2, sizeof *c.len);
  c.why = calloc((size_t)n, sizeof *c.why);
  int T = cfg->threads < 1 ? 1 : cfg->threads;
  pthread_t *th = calloc((size_t)T, sizeof *th);
  if (!d || !c.ids || !c.len || !c.why || !th) {
    rc = vlm_seterr(VLM_ENOMEM, "text pairs: %d", n);
    goto done;
  }
  d->seed = cfg->seed;
  d->context_length = cfg->context_length;
  if ((rc = vlm__tdata_empty_ids(cfg, tok, &c.empty_ids)))
    goto done;
  atomic_init(&c.next, 0);
  int started = 0;
  for (; started < T - 1; started++)
    if (pthread_create(&th[started], NULL, prep_main, &c))
      break;
  prep_main(&c);
  for (int t = 0; t < started; t++)
    pthread_join(th[t], NULL);
  /* keep the good pairs, in order; digest them */
  int64_t total = 0;
  for (int i = 0; i < n; i++)
    if (!c.why[i][0])
      total += c.len[2 * i] + c.len[2 * i + 1];
  d->pairs = calloc((size_t)n, sizeof *d->pairs);
  d->ids = malloc(sizeof(int32_t) * (size_t)(total ? total : 1));
  d->cum = malloc(sizeof(double) * (size_t)n);
  if (!d->pairs || !d->ids || !d->cum) {
    rc = vlm_seterr(VLM_ENOMEM, "text pairs: %d", n);
    goto done;
  }
  vlm__sha256 sh;
  vlm__sha256_init(&sh);
  int64_t pos = 0;
  double wsum = 0;
  for (int i = 0; i < n; i++) {
    const vlm_train_text_pair *p = &pairs[i];
    if (c.why[i][0]) {
      if (cfg->log && d->skipped < 10)
        fprintf(cfg->log, "vlmdb train: skipping text pair %d: %s\n", i + 1,
                c.why[i]);
      d->skipped++;
      continue;
    }
    double w = p->weight > 0 ? p->weight : p->weight == 0 ? 1 : 0;
    tpair *t = &d->pairs[d->n];
    t->item = i;
    for (int s = 0; s < 2; s++) {
      t->off[s] = pos;
      t->len[s] = c.len[2 * i + s];
      memcpy(d->ids + pos, c.ids[2 * i + s], sizeof(int32_t) * t->len[s]);
      t->hash[s] = ids_hash(d->ids + pos, t->len[s]);
      pos += t->len[s];
    }
    wsum += w;
    d->cum[d->n] = wsum;
    d->n++;
    vlm__sha256_update(&sh, p->a, strlen(p->a) + 1);
    vlm__sha256_update(&sh, p->b, strlen(p->b) + 1);
    if (w != 1) {
      vlm__sha256_update(&sh, "weight", 7);
      vlm__sha256_update(&sh, &w, sizeof w);
    }
  }
  uint8_t raw[32];
  vlm__sha256_final(&sh, raw, d->digest);
  if (cfg->log && d->skipped > 10)
    fprintf(cfg->log, "vlmdb train: %d text pairs skipped in all\n",
            d->skipped);
  if (d->n == 0 || !(wsum > 0))
    rc = vlm_seterr(VLM_EINVAL, "no usable text pairs (%d skipped)",
                    d->skipped);
done:
  if (c.ids)
    for (int i = 0; i < 2 * n; i++)
      free(c.ids[i]);
  free(c.ids);
  free(c.len);
  free(c.why);
  free(th);
  if (rc) {
    vlm__ttext_free(d);
    return rc;
  }
  *out = d;
  return 0;
}

void vlm__ttext_free(vlm__ttext *d) {
  if (!d)
    return;
  free(d->pairs);
  free(d->ids);
  free(d->cum);
  free(d);
}

int vlm__ttext_count(const vlm__ttext *d) { return d->n; }
int vlm__ttext_skipped(const vlm__ttext *d) { return d->skipped; }
const char *vlm__ttext_digest(const vlm__ttext *d) { return d->digest; }

void vlm__ttext_tokens(const vlm__ttext *d, int i, int side,
                       const int32_t **ids, int *len) {
  *ids = d->ids + d->pairs[i].off[side];
  *len = d->pairs[i].len[side];
}

/* The pair whose cumulative weight interval holds u * total. */
static int draw(const vlm__ttext *d, double u) {
  double x = u * d->cum[d->n - 1];
  int lo = 0, hi = d->n - 1;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    if (d->cum[mid] > x)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

void vlm__ttext_batch(const vlm__ttext *d, int P, int64_t step, int32_t *ids,
                      int *off, int *len, int *pair) {
  uint64_t rs = vlm__tdata_stream(d->seed, (uint64_t)step, 0x7e47, 0x7e47);
  uint64_t *seen = malloc(sizeof(uint64_t) * 2 * (size_t)P);
  int *chosen = pair;
  int got = 0;
  /* a bounded number of tries for distinct texts, then anything: a set
   * of few distinct texts still trains */
  for (int64_t tries = 0; got < P; tries++) {
    int i = draw(d, vlm__tdata_uniform(&rs));
    int clash = 0;
    if (seen && tries < 64 * (int64_t)P)
      for (int k = 0; k < 2 * got && !clash; k++)
        clash = seen[k] == d->pairs[i].hash[0] ||
                seen[k] == d->pairs[i].hash[1];
    if (clash)
      continue;
    if (seen) {
      seen[2 * got] = d->pairs[i].hash[0];
      seen[2 * got + 1] = d->pairs[i].hash[1];
    }
    chosen[got++] = i;
  }
  int pos = 0;
  for (int s = 0; s < 2; s++)
    for (int b = 0; b < P; b++) {
      const tpair *t = &d->pairs[chosen[b]];
      memcpy(ids + pos, d->ids + t->off[s], sizeof(int32_t) * t->len[s]);
      off[s * P + b] = pos;
      len[s * P + b] = t->len[s];
      pos += t->len[s];
    }
  free(seen);
}
