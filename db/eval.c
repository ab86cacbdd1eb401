/* eval.c - Recall@K evaluation of a database (see vlm_eval.h for the
 * metric and the rank rule). */
#include "vlm_eval.h"
#include "vlm_error.h"

#include <cblas.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------- metrics */

int64_t vlm_eval_rank(const float *scores, int64_t nc, const int64_t *gt,
                      int ngt) {
  float best = scores[gt[0]];
  for (int i = 1; i < ngt; i++)
    if (scores[gt[i]] > best)
      best = scores[gt[i]];
  /* Everything scoring >= best is ahead, except the ground truth itself. */
  int64_t ahead = 0;
  for (int64_t c = 0; c < nc; c++)
    ahead += scores[c] >= best;
  for (int i = 0; i < ngt; i++)
    ahead -= scores[gt[i]] >= best;
  return 1 + ahead;
}

const int vlm_eval_rank_bounds[VLM_EVAL_RANK_BUCKETS - 1] = {
    1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000};

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

void vlm_eval_summarize(const int64_t *ranks, int64_t n, const int *ks,
                        int nks, double *recall, double *median_rank,
                        double *mean_rank) {
  int64_t *sorted = malloc((size_t)n * sizeof *sorted);
  double sum = 0;
  for (int i = 0; i < nks; i++)
    recall[i] = 0;
  for (int64_t q = 0; q < n; q++) {
    sum += (double)ranks[q];
    for (int i = 0; i < nks; i++)
      recall[i] += ranks[q] <= ks[i];
  }
  for (int i = 0; i < nks; i++)
    recall[i] /= (double)n;
  *mean_rank = sum / (double)n;
  if (sorted) {
    memcpy(sorted, ranks, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_i64);
    *median_rank = n % 2 ? (double)sorted[n / 2]
                         : ((double)sorted[n / 2 - 1] + (double)sorted[n / 2]) / 2;
    free(sorted);
  } else {
    *median_rank = -1;
  }
}

double vlm_eval_overlap(const char *const *approx, int napprox,
                        const char *const *exact, int nexact, int k) {
  int ne = nexact < k ? nexact : k;
  int na = napprox < k ? napprox : k;
  if (ne <= 0)
    return 1.0;
  int common = 0;
  for (int i = 0; i < na; i++)
    for (int j = 0; j < ne; j++)
      if (!strcmp(approx[i], exact[j])) {
        common++;
        break;
      }
  return (double)common / ne;
}

/* ----------------------------------------------------------- pairs file */

void vlm_eval_pairs_free(vlm_eval_pair *pairs, int npairs) {
  (void)npairs; /* the strings live in the same allocation */
  free(pairs);
}

typedef struct {
  char *image;
  char *text;
} pair_strings;

int vlm_eval_pairs_load(const char *path, vlm_eval_pair **pairs,
                        int *npairs) {
  *pairs = NULL;
  *npairs = 0;
  FILE *f = fopen(path, "r");
  if (!f)
    return vlm_seterr(errno == ENOENT ? VLM_ENOTFOUND : VLM_EIO, "%s: %s",
                      path, strerror(errno));
  pair_strings *list = NULL;
  size_t n = 0, cap = 0, bytes = 0;
  char *line = NULL;
  size_t linecap = 0;
  long lineno = 0;
  int rc = 0;
  json_t *obj = NULL;
  while (getline(&line, &linecap, f) >= 0) {
    lineno++;
    char *s = line + strspn(line, " \t\r\n");
    if (!*s)
      continue;
    json_error_t jerr;
    obj = json_loads(s, JSON_REJECT_DUPLICATES, &jerr); /* no last-one-wins */
    if (!obj) {
      rc = vlm_seterr(VLM_EFORMAT, "%s:%ld: bad JSON: %s", path, lineno,
                      jerr.text);
      goto done;
    }
    json_t *img = json_object_get(obj, "image");
    json_t *txt = json_object_get(obj, "text");
    if (!json_is_string(img) || !(json_is_string(txt) || json_is_array(txt))) {
      rc = vlm_seterr(VLM_EFORMAT,
                      "%s:%ld: expected {\"image\": KEY, \"text\": KEY or "
                      "[KEY, ...]}",
                      path, lineno);
      goto done;
    }
    size_t ntext = json_is_array(txt) ? json_array_size(txt) : 1;
    for (size_t i = 0; i < ntext; i++) {
      json_t *t = json_is_array(txt) ? json_array_get(txt, i) : txt;
      if (!json_is_string(t)) {
        rc = vlm_seterr(VLM_EFORMAT, "%s:%ld: \"text\"[%zu] is not a string",
                        path, lineno, i);
        goto done;
      }
      if (n == cap) {
        cap = cap ? cap * 2 : 64;
        pair_strings *p = realloc(list, cap * sizeof *p);
        if (!p) {
          rc = VLM_ENOMEM;
          goto done;
        }
        list = p;
      }
      list[n].image = strdup(json_string_value(img));
      list[n].text = strdup(json_string_value(t));
      n++;
      if (!list[n - 1].image || !list[n - 1].text) {
        rc = VLM_ENOMEM;
        goto done;
      }
      bytes += strlen(list[n - 1].image) + strlen(list[n - 1].text) + 2;
    }
    json_decref(obj);
    obj = NULL;
  }
  if (ferror(f)) {
    rc = vlm_seterr(VLM_EIO, "%s: read error", path);
    goto done;
  }
  if (n > (size_t)INT32_MAX) {
    rc = vlm_seterr(VLM_ETOOBIG, "%s: too many pairs", path);
    goto done;
  }
  /* One allocation: the pair array, then the strings. */
  vlm_eval_pair *out = malloc(n * sizeof *out + bytes + 1);
  if (!out) {
    rc = VLM_ENOMEM;
    goto done;
  }
  char *strings = (char *)(out + n);
  for (size_t i = 0; i < n; i++) {
    size_t a = strlen(list[i].image) + 1, b = strlen(list[i].text) + 1;
    memcpy(strings, list[i].image, a);
    out[i].image_key = strings;
    strings += a;
    memcpy(strings, list[i].text, b);
    out[i].text_key = strings;
    strings += b;
  }
  *pairs = out;
  *npairs = (int)n;
done:
  json_decref(obj);
  for (size_t i = 0; i < n; i++) {
    free(list[i].image);
    free(list[i].text);
  }
  free(list);
  free(line);
  fclose(f);
  return rc;
}

/* ------------------------------------------------------------ database */

/* The stored vectors of one modality, and their keys sorted for lookup. */
typedef struct {
  char **keys;
  float *vecs;      /* n * dim */
  int64_t n, cap;
  int dim;
  int64_t *by_key;  /* indices sorted by key */
} vec_set;

typedef struct {
  vec_set images, texts;
  int failed;
} collect_ctx;

static int vec_set_add(vec_set *s, const char *key, const float *v) {
  if (s->n == s->cap) {
    int64_t cap = s->cap ? s->cap * 2 : 1024;
    char **keys = realloc(s->keys, (size_t)cap * sizeof *keys);
    if (!keys)
      return VLM_ENOMEM;
    s->keys = keys;
    float *vecs = realloc(s->vecs, (size_t)cap * s->dim * sizeof *vecs);
    if (!vecs)
      return VLM_ENOMEM;
    s->vecs = vecs;
    s->cap = cap;
  }
  if (!(s->keys[s->n] = strdup(key)))
    return VLM_ENOMEM;
  memcpy(s->vecs + s->n * s->dim, v, (size_t)s->dim * sizeof *v);
  s->n++;
  return 0;
}

static void vec_set_free(vec_set *s) {
  for (int64_t i = 0; i < s->n; i++)
    free(s->keys[i]);
  free(s->keys);
  free(s->vecs);
  free(s->by_key);
}

static int collect_record(const vlm_record *rec, void *arg) {
  collect_ctx *cx = arg;
  int rc = 0;
  if (rec->image_vec)
    rc = vec_set_add(&cx->images, rec->key, rec->image_vec);
  if (!rc && rec->text_vec)
    rc = vec_set_add(&cx->texts, rec->key, rec->text_vec);
  return rc;
}

static int cmp_by_key(const void *a, const void *b, void *set) {
  const vec_set *s = set;
  return strcmp(s->keys[*(const int64_t *)a], s->keys[*(const int64_t *)b]);
}

static int vec_set_index(vec_set *s) {
  s->by_key = malloc((size_t)(s->n ? s->n : 1) * sizeof *s->by_key);
  if (!s->by_key)
    return VLM_ENOMEM;
  for (int64_t i = 0; i < s->n; i++)
    s->by_key[i] = i;
  qsort_r(s->by_key, (size_t)s->n, sizeof *s->by_key, cmp_by_key, s);
  return 0;
}

/* Index of key in s, or -1. */
static int64_t vec_set_find(const vec_set *s, const char *key) {
  int64_t lo = 0, hi = s->n - 1;
  while (lo <= hi) {
    int64_t mid = lo + (hi - lo) / 2;
    int c = strcmp(s->keys[s->by_key[mid]], key);
    if (c == 0)
      return s->by_key[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return -1;
}

/* A resolved pair: image index in images, text index in texts. */
typedef struct {
  int64_t a, b; /* query side, candidate side */
} idx_pair;

static int cmp_idx_pair(const void *x, const void *y) {
  const idx_pair *p = x, *q = y;
  if (p->a != q->a)
    return p->a < q->a ? -1 : 1;
  return (p->b > q->b) - (p->b < q->b);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int contains(const int64_t *list, int n, int64_t x) {
  for (int i = 0; i < n; i++)
    if (list[i] == x)
      return 1;
  return 0;
}

/* One direction: queries from qset, candidates cset, pairs (a = query
 * index, b = candidate index) sorted and unique. */
static int eval_direction(vlm_db *db, const vec_set *qset, const vec_set *cset,
                          idx_pair *pairs, int64_t npairs, vlm_target target,
                          const vlm_eval_options *opts, const int *ks, int nks,
                          vlm_eval_direction *out) {
  int rc = 0;
  int dim = qset->dim;
  int maxk = 0;
  for (int i = 0; i < nks; i++)
    if (ks[i] > maxk)
      maxk = ks[i];
  qsort(pairs, (size_t)npairs, sizeof *pairs, cmp_idx_pair);
  /* Group: query q_i with its ground truth gt[start[i] .. start[i + 1]). */
  int64_t nq = 0;
  for (int64_t i = 0; i < npairs; i++)
    nq += i == 0 || pairs[i].a != pairs[i - 1].a;
  int64_t *start = malloc((size_t)(nq + 1) * sizeof *start);
  int64_t *gt = malloc((size_t)(npairs ? npairs : 1) * sizeof *gt);
  int64_t *order = malloc((size_t)(nq ? nq : 1) * sizeof *order);
  int64_t *ranks = malloc((size_t)(nq ? nq : 1) * sizeof *ranks);
  float *qbuf = NULL, *scores = NULL, *probs = NULL;
  double *idx_recall = calloc((size_t)nks, sizeof *idx_recall);
  double *ovl = calloc((size_t)nks, sizeof *ovl);
  if (!start || !gt || !order || !ranks || !idx_recall || !ovl) {
    rc = VLM_ENOMEM;
    goto done;
  }
  nq = 0;
  for (int64_t i = 0; i < npairs; i++) {
    if (i == 0 || pairs[i].a != pairs[i - 1].a)
      start[nq++] = i;
    gt[i] = pairs[i].b;
  }
  start[nq] = npairs;
  for (int64_t i = 0; i < nq; i++)
    order[i] = i;
  int64_t nrun = nq;
  if (opts->sample > 0 && opts->sample < nq) {
    uint64_t state = opts->seed;
    for (int64_t i = 0; i < opts->sample; i++) {
      int64_t j = i + (int64_t)(splitmix64(&state) % (uint64_t)(nq - i));
      int64_t t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
    nrun = opts->sample;
  }
  memset(out, 0, sizeof *out);
  out->queries = nrun;
  out->candidates = cset->n;
  out->nks = nks;
  out->gt_probability = -1;
  if (opts->probabilities && cset->n > INT32_MAX) {
    rc = vlm_seterr(VLM_EINVAL, "eval: the model's probabilities over %lld "
                    "candidates (at most %d)", (long long)cset->n, INT32_MAX);
    goto done;
  }
  if (opts->probabilities &&
      !(probs = malloc((size_t)(cset->n ? cset->n : 1) * sizeof *probs))) {
    rc = VLM_ENOMEM;
    goto done;
  }
  double prob_sum = 0;

  /* Exact ranks: a block of queries against every candidate at once. */
  int64_t block = cset->n > 0 ? (int64_t)(16 << 20) / cset->n : 256;
  if (block > 256)
    block = 256;
  if (block < 1)
    block = 1;
  qbuf = malloc((size_t)block * dim * sizeof *qbuf);
  scores = malloc((size_t)block * (size_t)(cset->n ? cset->n : 1) *
                  sizeof *scores);
  if (!qbuf || !scores) {
    rc = VLM_ENOMEM;
    goto done;
  }
  for (int64_t q0 = 0; q0 < nrun; q0 += block) {
    int64_t nb = nrun - q0 < block ? nrun - q0 : block;
    for (int64_t i = 0; i < nb; i++) {
      int64_t qi = pairs[start[order[q0 + i]]].a;
      memcpy(qbuf + i * dim, qset->vecs + qi * dim, (size_t)dim * sizeof(float));
    }
    /* scores[nb, nc] = qbuf[nb, dim] . candidates[nc, dim]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb,
                (int)cset->n, dim, 1.0f, qbuf, dim, cset->vecs, dim, 0.0f,
                scores, (int)cset->n);
    for (int64_t i = 0; i < nb; i++) {
      int64_t g = order[q0 + i];
      const float *row = scores + i * cset->n;
      const int64_t *G = gt + start[g];
      int ngt = (int)(start[g + 1] - start[g]);
      ranks[q0 + i] = vlm_eval_rank(row, cset->n, G, ngt);
      if (!probs)
        continue;
      if ((rc = opts->probabilities(opts->probabilities_arg, row,
                                    (int)cset->n, probs)) < 0)
        goto done;
      float best = probs[G[0]];
      for (int j = 1; j < ngt; j++)
        best = probs[G[j]] > best ? probs[G[j]] : best;
      prob_sum += best;
    }
  }
  if (probs)
    out->gt_probability = nrun ? prob_sum / (double)nrun : 0;
  double recall[VLM_EVAL_MAX_KS];
  vlm_eval_summarize(ranks, nrun, ks, nks, recall, &out->median_rank,
                     &out->mean_rank);
  memset(out->rank_hist, 0, sizeof out->rank_hist);
  for (int64_t q = 0; q < nrun; q++) {
    int b = 0;
    while (b < VLM_EVAL_RANK_BUCKETS - 1 && ranks[q] > vlm_eval_rank_bounds[b])
      b++;
    out->rank_hist[b]++;
  }
  for (int i = 0; i < nks; i++) {
    out->at[i].k = ks[i];
    out->at[i].recall = recall[i];
    out->at[i].recall_index = -1;
    out->at[i].index_recall = -1;
  }
  if (opts->skip_index)
    goto done;

  /* The index against exact search, one query at a time as users run. */
  double t_index = 0, t_exact = 0;
  for (int64_t r = 0; r < nrun; r++) {
    int64_t g = order[r];
    const float *qv = qset->vecs + pairs[start[g]].a * dim;
    vlm_search_options so = {.k = maxk, .target = target,
                             .ef_search = opts->ef_search,
                             .nprobe = opts->nprobe};
    vlm_hit *ann = NULL, *ex = NULL;
    int nann = 0, nex = 0;
    double t0 = now_ms();
    rc = vlm_db_search(db, qv, &so, &ann, &nann);
    double t1 = now_ms();
    if (rc)
      goto done;
    so.exact = 1;
    rc = vlm_db_search(db, qv, &so, &ex, &nex);
    double t2 = now_ms();
    if (rc) {
      vlm_hits_free(ann, nann);
      goto done;
    }
    t_index += t1 - t0;
    t_exact += t2 - t1;
    const char **akeys = malloc((size_t)(nann + nex + 1) * sizeof *akeys);
    if (!akeys) {
      vlm_hits_free(ann, nann);
      vlm_hits_free(ex, nex);
      rc = VLM_ENOMEM;
      goto done;
    }
    const char **ekeys = akeys + nann;
    for (int i = 0; i < nann; i++)
      akeys[i] = ann[i].key;
    for (int i = 0; i < nex; i++)
      ekeys[i] = ex[i].key;
    /* Rank of the first ground-truth hit in the ANN list. */
    int first_hit = INT32_MAX;
    for (int i = 0; i < nann && first_hit == INT32_MAX; i++) {
      int64_t ci = vec_set_find(cset, ann[i].key);
      if (ci >= 0 && contains(gt + start[g], (int)(start[g + 1] - start[g]), ci))
        first_hit = i + 1;
    }
    for (int i = 0; i < nks; i++) {
      idx_recall[i] += first_hit <= ks[i];
      ovl[i] += vlm_eval_overlap(akeys, nann, ekeys, nex, ks[i]);
    }
    free(akeys);
    vlm_hits_free(ann, nann);
    vlm_hits_free(ex, nex);
  }
  for (int i = 0; i < nks; i++) {
    out->at[i].recall_index = nrun ? idx_recall[i] / (double)nrun : 0;
    out->at[i].index_recall = nrun ? ovl[i] / (double)nrun : 0;
  }
  out->index_ms_per_query = nrun ? t_index / (double)nrun : 0;
  out->exact_ms_per_query = nrun ? t_exact / (double)nrun : 0;
done:
  free(start);
  free(gt);
  free(order);
  free(ranks);
  free(qbuf);
  free(scores);
  free(probs);
  free(idx_recall);
  free(ovl);
  return rc;
}

int vlm_db_eval(vlm_db *db, const vlm_eval_options *opts,
                vlm_eval_result *out) {
  static const int default_ks[] = {1, 5, 10};
  const int *ks = opts->ks ? opts->ks : default_ks;
  int nks = opts->ks ? opts->nks : 3;
  memset(out, 0, sizeof *out);
  if (nks < 1 || nks > VLM_EVAL_MAX_KS)
    return vlm_seterr(VLM_EINVAL, "eval: 1 to %d cut-offs, not %d",
                      VLM_EVAL_MAX_KS, nks);
  for (int i = 0; i < nks; i++)
    if (ks[i] < 1 || ks[i] > VLM_DB_MAX_K)
      return vlm_seterr(VLM_EINVAL, "eval: K = %d is not in 1..%d", ks[i],
                        VLM_DB_MAX_K);
  if (opts->sample < 0)
    return vlm_seterr(VLM_EINVAL, "eval: negative sample size");
  unsigned dirs = opts->directions ? opts->directions
                                   : VLM_EVAL_T2I | VLM_EVAL_I2T;
  vlm_db_info info;
  int rc = vlm_db_stat(db, &info);
  if (rc)
    return rc;
  collect_ctx cx = {.images = {.dim = info.dim}, .texts = {.dim = info.dim}};
  idx_pair *pairs = NULL;
  int64_t npairs = 0;
  if ((rc = vlm_db_foreach(db, collect_record, &cx)) ||
      (rc = vec_set_index(&cx.images)) || (rc = vec_set_index(&cx.texts)))
    goto done;
  /* Resolve the pairs to (image index, text index). */
  int64_t cap = opts->pairs ? opts->npairs : cx.images.n;
  pairs = malloc((size_t)(cap ? cap : 1) * sizeof *pairs);
  if (!pairs) {
    rc = VLM_ENOMEM;
    goto done;
  }
  if (opts->pairs) {
    for (int i = 0; i < opts->npairs; i++) {
      int64_t a = vec_set_find(&cx.images, opts->pairs[i].image_key);
      int64_t b = vec_set_find(&cx.texts, opts->pairs[i].text_key);
      if (a < 0 || b < 0) {
        out->skipped_pairs++;
        continue;
      }
      pairs[npairs].a = a;
      pairs[npairs++].b = b;
    }
  } else {
    for (int64_t i = 0; i < cx.images.n; i++) {
      int64_t b = vec_set_find(&cx.texts, cx.images.keys[i]);
      if (b >= 0) {
        pairs[npairs].a = i;
        pairs[npairs++].b = b;
      }
    }
  }
  /* Drop repeated pairs: a ground truth is a set. */
  qsort(pairs, (size_t)npairs, sizeof *pairs, cmp_idx_pair);
  int64_t u = 0;
  for (int64_t i = 0; i < npairs; i++)
    if (u == 0 || cmp_idx_pair(&pairs[i], &pairs[u - 1]))
      pairs[u++] = pairs[i];
  npairs = u;
  out->pairs = npairs;
  if (npairs == 0) {
    rc = vlm_seterr(VLM_ENOTFOUND,
                    opts->pairs ? "eval: no pair names an image and a text "
                                  "that are stored"
                                : "eval: no item has both an image and a "
                                  "text vector");
    goto done;
  }
  out->directions = dirs;
  if (dirs & VLM_EVAL_I2T) {
    rc = eval_direction(db, &cx.images, &cx.texts, pairs, npairs,
                        VLM_TARGET_TEXT, opts, ks, nks, &out->i2t);
    if (rc)
      goto done;
  }
  if (dirs & VLM_EVAL_T2I) {
    for (int64_t i = 0; i < npairs; i++) {
      int64_t t = pairs[i].a;
      pairs[i].a = pairs[i].b;
      pairs[i].b = t;
    }
    rc = eval_direction(db, &cx.texts, &cx.images, pairs, npairs,
                        VLM_TARGET_IMAGE, opts, ks, nks, &out->t2i);
  }
done:
  free(pairs);
  vec_set_free(&cx.images);
  vec_set_free(&cx.texts);
  return rc;
}
