/* planner.c - vector search: exact scans, the filtered-search planner and
 * merging modalities into one hit per key.
 *
 * A search pins one snapshot: it holds index_lock (read) throughout and
 * takes its LMDB transaction and (when it needs SQLite) its SQLite read
 * transaction under pub_lock, which the writer holds while committing, so
 * all three views show the same batches.  Every candidate is resolved
 * against the LMDB snapshot, so index entries of items deleted after the
 * last catch-up (or tombstones) never surface, and the pending tail (ids
 * >= upto, committed but not yet in FAISS) is scanned exactly.
 *
 * Filtered search: the filter's matching ids come from SQLite.  Few
 * matches (<= exact_limit) are scored exactly, which is both faster and
 * exact; otherwise FAISS searches with the matches as an ID-selector
 * bitmap and efSearch/nprobe widened by 1/selectivity, and if fewer than
 * k hits come back it widens again, then falls back to the exact scan.
 */
#include "db_int.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_EF 64
#define DEFAULT_NPROBE 16
#define MAX_EF 4096
#define EXACT_MIN 4096 /* filtered: always exact at or below this */
#define EXACT_FRACTION 20 /* ... or below 1/20 of the items */
#define SCAN_MIN_RANK 40  /* listed matches whose k-th is expected deeper
                             in the unfiltered ranking than this ... */
#define SCAN_FRACTION 4   /* ... and at most 1/4 of the items: one exact
                             pass over them from the index's vectors */
#define RANGE_FIRST_DEPTH 64 /* min_score over HNSW/IVF: the first depth */
#define RANGE_MIN_K 100 /* at or below, a k-NN scan (the same one pass over
                           Flat, a smaller result) serves a threshold */
#define RANGE_MAX_VECTORS (1 << 22) /* a Flat range search's result may be
                                       every vector: above this many, a
                                       k-NN scan of depth offset + k cut
                                       at the threshold instead */

/* ---- a bounded min-heap of candidates ---------------------------------- */

typedef struct {
  vlm__cand *c;
  int n, cap;
} heap;

/* a ranks below b: a lower score, or the same score and a newer id (ties
 * go to the oldest item, the order cand_desc sorts in, so a heap of any
 * capacity keeps a prefix of one ranking and pages stay consistent) */
static int cand_below(const vlm__cand *a, const vlm__cand *b) {
  return a->score < b->score || (a->score == b->score && a->id > b->id);
}

static void heap_push(heap *h, uint64_t id, float score, int mod) {
  vlm__cand x = {id, score, mod};
  if (!isfinite(score))
    return; /* a damaged stored vector (see vlm__vec_finite) never ranks */
  if (h->n == h->cap) {
    if (!cand_below(&h->c[0], &x))
      return;
    int i = 0; /* replace the root and sift down */
    for (;;) {
      int l = 2 * i + 1, r = l + 1, s = i;
      const vlm__cand *least = &x;
      if (l < h->n && cand_below(&h->c[l], least))
        s = l, least = &h->c[l];
      if (r < h->n && cand_below(&h->c[r], least))
        s = r;
      if (s == i)
        break;
      h->c[i] = h->c[s];
      i = s;
    }
    h->c[i] = x;
    assert(i == 0 || !cand_below(&x, &h->c[(i - 1) / 2]));
    return;
  }
  int i = h->n++;
  while (i > 0) {
    int p = (i - 1) / 2;
    if (!cand_below(&x, &h->c[p]))
      break;
    h->c[i] = h->c[p];
    i = p;
  }
  h->c[i] = x;
  /* a min-heap: the new entry ranks no lower than its parent */
  assert(i == 0 || !cand_below(&h->c[i], &h->c[(i - 1) / 2]));
}

static int cand_desc(const void *a, const void *b) {
  const vlm__cand *x = a, *y = b;
  if (x->score != y->score)
    return x->score < y->score ? 1 : -1;
  return x->id < y->id ? -1 : x->id > y->id;
}

static int cand_id_desc(const void *a, const void *b) {
  const vlm__cand *x = a, *y = b;
  if (x->id != y->id)
    return x->id < y->id ? -1 : 1;
  return x->score < y->score ? 1 : x->score > y->score ? -1 : 0;
}

/* ---- search context ---------------------------------------------------- */

typedef struct {
  vlm_db *db;
  vlm__reader *r;
  const float *q;
  int dim;
  const uint64_t *fids; /* filter matches, sorted; NULL = no filter */
  size_t nf;
  const uint8_t *allow; /* bitmap of fids */
  uint64_t allow_bits;
  float *scratch;
  const char *post;     /* filter matching too many items to list: test
                           the unfiltered ranking's candidates instead */
  int listed_post;      /* 0: broad listed matches may be post-filtered
                           against the bitmap; 1: that already failed */
  int scan;             /* index searches score every match exactly from
                           the index's own vectors (search_modality) */
} sctx;

#define POST_FALLBACK 1 /* post-filtering found too few: list the matches */

static float score_vec(sctx *s, const void *vec) {
  if (((uintptr_t)vec & 3) == 0)
    return vlm__dot(s->q, vec, s->dim);
  memcpy(s->scratch, vec, (size_t)s->dim * sizeof(float));
  return vlm__dot(s->q, s->scratch, s->dim);
}

/* Exact scores of modality m for live items with id >= lo (restricted to
 * the filter matches when there is a filter). */
static int exact_scan(sctx *s, int m, uint64_t lo, heap *h) {
  vlm__lmdb *lm = &s->db->lm;
  int rc;
  /* Dense matches: one sequential pass with the bitmap beats a B-tree
   * descent per id. */
  if (s->fids && s->nf * 8 < s->allow_bits) {
    size_t a = 0, b = s->nf;
    while (a < b) {
      size_t mid = (a + b) / 2;
      if (s->fids[mid] < lo)
        a = mid + 1;
      else
        b = mid;
    }
    for (size_t i = a; i < s->nf; i++) {
      uint32_t flags;
      const void *vec[VLM__NMOD];
      rc = vlm__vecs_get(lm, s->r->txn, s->fids[i], s->dim, &flags, vec);
      if (rc == VLM_ENOTFOUND)
        continue;
      if (rc)
        return rc;
      if (vec[m])
        heap_push(h, s->fids[i], score_vec(s, vec[m]), m);
    }
    return 0;
  }
  MDB_cursor *cur;
  MDB_val k = {sizeof lo, &lo}, v;
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(s->r->txn, lm->vecs, &cur))))
    return vlm__lmdb_err(rc, "vecs");
  for (rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
       rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    uint64_t id;
    uint32_t flags;
    const void *vec[VLM__NMOD];
    memcpy(&id, k.mv_data, 8);
    if (s->allow && (id >= s->allow_bits || !vlm__bit(s->allow, id)))
      continue;
    if (vlm__vecs_parse(&v, s->dim, &flags, vec) != 0) {
      mdb_cursor_close(cur);
      return VLM_ECORRUPT;
    }
    if (vec[m])
      heap_push(h, id, score_vec(s, vec[m]), m);
  }
  mdb_cursor_close(cur);
  return rc == MDB_NOTFOUND ? 0 : vlm__lmdb_err(rc, "vecs");
}

/* How index_search treats FAISS's ids. */
#define IX_RESOLVE 0 /* push the ids live in the snapshot */
#define IX_PROBE 1   /* push nothing; count the ids the filter allows */
#define IX_RAW 2     /* push every id: the caller's filter lookup (one
                        SQLite row per live id of the snapshot) resolves
                        them, so the LMDB lookup would be paid twice */

/* FAISS search of modality m; pushes hits as mode says.  *returned gets
 * how many ids FAISS gave back (live or not). */
static int index_search(sctx *s, int m, int kk, int ef, int nprobe,
                        int mode, heap *h, int *returned) {
  int probe = mode == IX_PROBE;
  vlm_db *db = s->db;
  vlm__vindex *vx = &db->vx[m];
  vlm_index_params p = {0};
  float *scores = malloc((size_t)kk * sizeof *scores);
  int64_t *ids = malloc((size_t)kk * sizeof *ids);
  int rc;
  *returned = 0;
  if (!scores || !ids) {
    rc = vlm_seterr(VLM_ENOMEM, "search");
    goto done;
  }
  p.ef_search = ef;
  p.nprobe = nprobe;
  if (probe) {
    /* unfiltered; *returned counts the hits that match the filter */
  } else if (s->allow && mode != IX_RAW) { /* (post-filtering walks the
                                             unfiltered ranking) */
    p.bitmap = s->allow;
    p.bitmap_bits = (int64_t)s->allow_bits;
    p.scan = s->scan;
  } else if (vx->ntomb > 0) {
    p.bitmap = vx->live;
    p.bitmap_bits = (int64_t)vx->upto;
  }
  /* One query: FAISS would still open an OpenMP team (and a visited table
   * per thread) for it, which costs more than the search on a busy
   * machine; searches run in parallel on the callers' threads instead.
   * The setting is per thread and restored. */
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  rc = vlm_index_search(vx->index, 1, s->q, kk, &p, scores, ids);
  omp_set_num_threads(threads);
  if (rc)
    goto done;
  for (int i = 0; i < kk; i++) {
    if (ids[i] < 0)
      continue;
    if (probe) {
      uint64_t id = (uint64_t)ids[i];
      *returned += id < s->allow_bits && vlm__bit(s->allow, id);
      continue;
    }
    (*returned)++;
    uint64_t id = (uint64_t)ids[i];
    if (mode == IX_RAW) {
      heap_push(h, id, scores[i], m);
      continue;
    }
    MDB_val key = {sizeof id, &id}, val;
    /* Resolve against the snapshot: skips items deleted since the index
     * side last caught up. */
    int g = vlm__mdb_get(s->r->txn, db->lm.vecs, &key, &val);
    if (g == MDB_NOTFOUND)
      continue;
    if (g) {
      rc = vlm__lmdb_err(g, "vecs");
      goto done;
    }
    heap_push(h, id, scores[i], m);
  }
  rc = 0;
done:
  free(scores);
  free(ids);
  return rc;
}

/* Evidence that a filtered FAISS search missed better matches: score an
 * evenly spaced sample of the matches exactly; a sampled item that beats
 * the k-th result and is not among the results proves the answer wrong
 * (a filter correlated with the vectors can keep a graph walk away from
 * every match).  Such items are added to h either way.  Returns 1 when
 * something was missed. */
#define SAMPLE_CHECK 256

static int sample_missed(sctx *s, int m, uint64_t upto, heap *h, int *err) {
  int missed = 0;
  size_t step = s->nf / SAMPLE_CHECK + 1;
  for (size_t i = 0; i < s->nf; i += step) {
    uint64_t id = s->fids[i];
    uint32_t flags;
    const void *vec[VLM__NMOD];
    if (id >= upto)
      continue; /* the pending tail was scanned exactly */
    int rc = vlm__vecs_get(&s->db->lm, s->r->txn, id, s->dim, &flags, vec);
    if (rc == VLM_ENOTFOUND || (rc == 0 && !vec[m]))
      continue;
    if (rc) {
      *err = rc;
      return 0;
    }
    float score = score_vec(s, vec[m]);
    if (!isfinite(score) || (h->n == h->cap && score <= h->c[0].score))
      continue;
    int present = 0;
    for (int j = 0; j < h->n && !present; j++)
      present = h->c[j].id == id;
    if (!present) {
      missed = 1;
      heap_push(h, id, score, m);
    }
  }
  return missed;
}

/* A filter matching more than the exact-scan limit (a large share of the
 * items): instead of listing every match, walk the unfiltered ranking and
 * keep the candidates the filter accepts (one indexed SQLite lookup
 * each).  Exact with respect to the index's ranking: every match scoring
 * above the k-th match found ranks above it, so it is among the
 * candidates.  Depth starts at 4k (enough when most items match) and
 * grows to what the share of matches seen so far calls for, up to
 * POST_MAX_DEPTH; when that finds fewer than k, or two rounds find none
 * (matches rare near the query: a filter correlated with the vectors),
 * the caller lists the matches and takes the bitmap path. */
#define POST_MAX_DEPTH 1024

static int post_filter_search(sctx *s, int m, int kk, int ef, int nprobe,
                              int64_t nitems, heap *h) {
  vlm__vindex *vx = &s->db->vx[m];
  int64_t total = vx->nlive + (int64_t)(s->allow_bits - vx->upto);
  int depth = kk * 4, rc = 0;
  /* With the matches listed (s->allow), a candidate is tested against
   * their bitmap, and the selectivity sets the first depth: 1.5 k /
   * selectivity candidates hold about 1.5 k matches when the matches are
   * spread like the rest. */
  int bits = !s->post;
  if (bits && s->nf > 0 && nitems > 0) {
    double d = 1.5 * kk * (double)nitems / (double)s->nf;
    if (d > depth)
      depth = d > POST_MAX_DEPTH ? POST_MAX_DEPTH : (int)d;
  }
  /* An exhaustive index (Flat) scores every vector whatever the depth: a
   * second round would be a second full pass.  Take the deepest ranking
   * at once; if even that holds fewer than k matches, the caller lists
   * them and makes one pass with the bitmap. */
  if (vx->nlive > 0 && vlm_index_is_exact(vx->index) &&
      depth < POST_MAX_DEPTH)
    depth = POST_MAX_DEPTH;
  heap c = {NULL, 0, 0};
  for (;;) {
    vlm__cand *p = realloc(c.c, (size_t)depth * sizeof *p);
    if (!p) {
      rc = vlm_seterr(VLM_ENOMEM, "search");
      break;
    }
    c.c = p;
    c.cap = depth;
    c.n = 0;
    /* ef (twice the search's effort) buys recall for the top k; the
     * depth-th candidate needs more than the 2 x depth that served before
     * (10% matches at efSearch 64: recall 0.97 where unfiltered gave
     * 0.9998).  The search's per-result effort times the depth, but at
     * most twice the old breadth: a large tuned effort already walks
     * deep, and would pay up to 15x for nothing. */
    int old_e = ef > 2 * depth ? ef : 2 * depth;
    double scaled = (double)ef / 2 * depth / kk;
    if (scaled > 2.0 * old_e)
      scaled = 2.0 * old_e;
    int returned = 0, e = scaled > old_e ? (int)scaled : old_e;
    if ((vx->nlive > 0 &&
         (rc = index_search(s, m, depth, e > MAX_EF ? MAX_EF : e, nprobe,
                            IX_RAW, &c, &returned))) ||
        (rc = exact_scan(s, m, vx->upto, &c)))
      break;
    qsort(c.c, (size_t)c.n, sizeof *c.c, cand_desc);
    h->n = 0;
    int found = 0;
    for (int i = 0; i < c.n && found < kk; i++) {
      int match;
      if (bits) /* (a bit set means live in the snapshot: SQLite's rows) */
        match = c.c[i].id < s->allow_bits && vlm__bit(s->allow, c.c[i].id);
      else if ((rc = vlm__filter_match(s->r, s->post, c.c[i].id, &match)))
        goto done;
      if (match) {
        heap_push(h, c.c[i].id, c.c[i].score, m);
        found++;
      }
    }
    /* Enough, or the candidates were every vector there is. */
    if (found == kk || (int64_t)depth >= total)
      break;
    if (depth >= POST_MAX_DEPTH || (found == 0 && depth >= 8 * kk)) {
      rc = POST_FALLBACK;
      break;
    }
    /* Deep enough for the share of matches seen so far, with margin;
     * x8 when none was seen. */
    double next = found > 0 ? 1.5 * kk * c.n / found : 8.0 * depth;
    if (next < 2.0 * depth)
      next = 2.0 * depth;
    depth = next > POST_MAX_DEPTH ? POST_MAX_DEPTH : (int)next;
  }
done:
  free(c.c);
  return rc;
}

/* A threshold search over a Flat index: FAISS's range search returns
 * every vector scoring at least min_score (one scan, like a k-NN search
 * over Flat, but without a k-deep heap); live ones that pass the filter
 * bitmap go into h, which keeps the best kk, and the pending tail is
 * scanned exactly.  Candidates below the threshold that the tail adds are
 * cut by the caller with the rest. */
static int range_search(sctx *s, int m, float min_score, heap *h) {
  vlm_db *db = s->db;
  vlm__vindex *vx = &db->vx[m];
  float *scores = NULL;
  int64_t *ids = NULL, n = 0;
  int rc;
  h->n = 0;
  if ((rc = vlm_index_range_search(vx->index, s->q, min_score, &scores, &ids,
                                   &n)))
    return rc;
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] < 0 || !(scores[i] >= min_score))
      continue;
    uint64_t id = (uint64_t)ids[i];
    if (s->allow && (id >= s->allow_bits || !vlm__bit(s->allow, id)))
      continue;
    if (vx->ntomb > 0 && (id >= vx->upto || !vlm__bit(vx->live, id)))
      continue;
    MDB_val key = {sizeof id, &id}, val;
    int g = vlm__mdb_get(s->r->txn, db->lm.vecs, &key, &val);
    if (g == MDB_NOTFOUND)
      continue; /* deleted since the index side caught up */
    if (g) {
      rc = vlm__lmdb_err(g, "vecs");
      goto done;
    }
    heap_push(h, id, scores[i], m);
  }
  rc = exact_scan(s, m, vx->upto, h);
done:
  free(scores);
  free(ids);
  return rc;
}

/* Top kk of modality m into h (capacity kk). */
static int search_modality(sctx *s, int m, int kk,
                           const vlm_search_options *o, int64_t nitems,
                           heap *h) {
  vlm_db *db = s->db;
  vlm__vindex *vx = &db->vx[m];
  int exact = o->exact || vx->upto == 0 || vlm_index_count(vx->index) == 0;
  s->scan = 0;
  /* Post-filtering needs a ranking to walk: the index's, or, for a
   * modality without vectors in it, the pending tail's alone.  An index
   * that cannot be searched yet (untrained) but has vectors needs the
   * list of matches for an exact scan. */
  if (s->post && (o->exact || (exact && vx->nlive > 0)))
    return POST_FALLBACK;
  /* The index side has seen every id below upto and found no vector of
   * this modality (a text-only or image-only database): only the tail it
   * has not seen yet can hold one, so scan just that, not every item. */
  if (!s->post && !o->exact && vx->upto > 0 && vx->nlive == 0) {
    h->n = 0;
    return exact_scan(s, m, vx->upto, h);
  }
  if (!exact && s->fids) {
    size_t limit = (size_t)(nitems / EXACT_FRACTION);
    if (limit < EXACT_MIN)
      limit = EXACT_MIN;
    exact = s->nf <= limit;
  }
  if (exact && !s->post) {
    h->n = 0;
    return exact_scan(s, m, 1, h);
  }
  if (o->use_min_score && !s->post && kk > RANGE_MIN_K &&
      vlm_index_can_range(vx->index) && vx->nlive <= RANGE_MAX_VECTORS)
    return range_search(s, m, o->min_score, h);
  /* A search that sets no effort gets the one tuned for this index's
   * data (tune.c), or the fixed defaults until it has been measured. */
  int nlist = vlm__factory_nlist(db->man.factory);
  int ef = o->ef_search > 0 ? o->ef_search
           : vx->tuned > 0 && nlist <= 0 ? vx->tuned
                                         : DEFAULT_EF;
  int nprobe = o->nprobe > 0 ? o->nprobe
               : vx->tuned > 0 && nlist > 0 ? vx->tuned
                                            : DEFAULT_NPROBE;
  if (ef < kk)
    ef = kk;
  if (s->post)
    return post_filter_search(s, m, kk, 2 * ef, nprobe, nitems, h);
  /* Flat with the bitmap is one exact pass over the matches: no probe of
   * the neighbourhood (itself a full pass), no widening, no sampling. */
  int exhaustive = vlm_index_is_exact(vx->index);
  /* Listed matches spread wide: the k-th lies about k / selectivity deep
   * in the unfiltered ranking, among vectors far from the query, which a
   * graph ranks poorly whatever the effort (10% of 200,000 clustered
   * vectors: recall 0.96-0.98 from efSearch 64 to 960).  Up to a quarter
   * of the items, an HNSW index scores every match exactly from its own
   * vectors instead, in one pass: the same as Flat with the bitmap. */
  if (!exhaustive && s->fids && nitems > 0 &&
      vlm_index_can_scan(vx->index) &&
      (double)kk * (double)nitems > SCAN_MIN_RANK * (double)s->nf &&
      s->nf * SCAN_FRACTION <= (size_t)nitems &&
      !VLM__FAULT("planner-scan")) /* (tests count, or turn it off) */
    exhaustive = s->scan = 1;
  /* Broad matches listed (a filter asked for again, a hybrid search):
   * post-filter the unfiltered ranking against their bitmap - one walk
   * over-fetching by the selectivity, no SQLite lookup per candidate -
   * and take the filtered walk below only when that finds fewer than k
   * (matches rare near the query). */
  if (s->fids && !exhaustive && !s->listed_post) {
    int rc = VLM__FAULT("planner-bits")
                 ? POST_FALLBACK
                 : post_filter_search(s, m, kk, 2 * ef, nprobe, nitems, h);
    if (rc != POST_FALLBACK)
      return rc;
    h->n = 0;
  }
  if (s->fids && !exhaustive) {
    double sel = nitems > 0 ? (double)s->nf / (double)nitems : 1.0;
    if (sel > 1)
      sel = 1;
    /* Probe the query's neighbourhood without the filter: the share of
     * matches there, not the global selectivity, decides how hard the
     * filtered graph walk will be.  A filter that (almost) excludes the
     * neighbourhood - anti-correlated with the vectors - keeps the walk
     * away from every match: score the matches exactly instead. */
    int nprobe_hits = 0, kprobe = kk * 4 < 64 ? 64 : kk * 4;
    if (kprobe > 1024)
      kprobe = 1024;
    int rc = index_search(s, m, kprobe, ef > kprobe ? ef : kprobe, nprobe,
                          IX_PROBE, h, &nprobe_hits);
    if (rc)
      return rc;
    double local = (double)nprobe_hits / kprobe;
    if (local * 4 < sel) {
      h->n = 0;
      return exact_scan(s, m, 1, h);
    }
    if (local < sel)
      sel = local;
    /* A filtered walk keeps fewer of the candidates it visits: FAISS's
     * queue of ef holds matches and others alike, so about ef x sel of it
     * are matches.  The same recall as the unfiltered search needs ef /
     * sel (capped as above); always at least twice the unfiltered
     * breadth. */
    double want = (double)ef / sel;
    if (want > 4.0 * kk / sel) /* at most twice the 2k / sel of before */
      want = 4.0 * kk / sel;
    ef *= 2;
    if (want > ef)
      ef = want > MAX_EF ? MAX_EF : (int)want;
    double np = nprobe / sel;
    nprobe = np > (nlist > 0 ? nlist : 1 << 20) ? (nlist > 0 ? nlist : nprobe)
                                                 : (int)np;
  }
  if (nlist > 0 && nprobe > nlist)
    nprobe = nlist;
  int64_t available = vx->nlive;
  if (s->fids && (int64_t)s->nf < available)
    available = (int64_t)s->nf;
  int want = kk < available ? kk : (int)available;
  int ask = kk;
  for (int attempt = 0; attempt < 4; attempt++) {
    int returned = 0, rc;
    h->n = 0;
    if ((rc = index_search(s, m, ask, ef, nprobe, IX_RESOLVE, h,
                           &returned)) ||
        (rc = exact_scan(s, m, vx->upto, h)))
      return rc;
    if (VLM__FAULT("planner-short")) /* as a walk that found too few */
      h->n = 0;
    if (h->n >= want) {
      if (!s->fids || exhaustive)
        return 0;
      int err = 0, missed = sample_missed(s, m, vx->upto, h, &err);
      if (err)
        return err;
      if (!missed && !VLM__FAULT("planner-missed"))
        return 0;
    }
    /* Fewer than wanted, or provably missing matches: widen and retry. */
    if (ef < MAX_EF)
      ef = ef * 4 > MAX_EF ? MAX_EF : ef * 4;
    nprobe *= 4;
    if (nlist > 0 && nprobe > nlist)
      nprobe = nlist;
    if (returned >= ask && ask < 4 * VLM_DB_MAX_K)
      ask *= 2; /* FAISS had more: dead entries took places */
  }
  /* Still short: the matches must be few or scattered; score them all. */
  h->n = 0;
  return exact_scan(s, m, 1, h);
}

/* Vector ranking: up to depth candidates, one per item, best first. */
static int vector_ranking(sctx *s, const vlm_search_options *o, int depth,
                          int64_t nitems, vlm__cand **out, int *nout,
                          int *full) {
  int mods[2], nm = 0, rc = 0;
  if (o->target == VLM_TARGET_ANY || o->target == VLM_TARGET_IMAGE)
    mods[nm++] = VLM__MOD_IMAGE;
  if (o->target == VLM_TARGET_ANY || o->target == VLM_TARGET_TEXT)
    mods[nm++] = VLM__MOD_TEXT;
  vlm__cand *all = malloc((size_t)depth * nm * sizeof *all);
  heap h = {malloc((size_t)depth * sizeof(vlm__cand)), 0, depth};
  int n = 0;
  if (!all || !h.c) {
    rc = vlm_seterr(VLM_ENOMEM, "search");
    goto fail;
  }
  for (int i = 0; i < nm; i++) {
    if ((rc = search_modality(s, mods[i], depth, o, nitems, &h)))
      goto fail;
    memcpy(all + n, h.c, (size_t)h.n * sizeof *all);
    n += h.n;
    *full |= h.n >= depth; /* a deeper search may find more */
  }
  /* One hit per item: the best of its modalities. */
  qsort(all, (size_t)n, sizeof *all, cand_id_desc);
  int w = 0;
  for (int i = 0; i < n; i++)
    if (w == 0 || all[w - 1].id != all[i].id)
      all[w++] = all[i];
  qsort(all, (size_t)w, sizeof *all, cand_desc);
  if (w > depth)
    w = depth;
  free(h.c);
  *out = all;
  *nout = w;
  return 0;
fail:
  free(all);
  free(h.c);
  return rc;
}

/* ---- snapshot ---------------------------------------------------------- */

/* A read-only handle beside a writer in another process: the published
 * state of this process says nothing, so the batch, next id and item count
 * come from the LMDB snapshot itself, and SQLite's snapshot (taken first:
 * the writer commits LMDB first, SQLite second) must show the same batch,
 * or both are taken again.  The index side (loaded at open) holds ids
 * below its upto; newer ones are the pending tail, scanned exactly, and
 * hits of items deleted since are resolved away against the snapshot. */
static int snapshot_follow(vlm_db *db, vlm__reader *r, int need_sql,
                           uint64_t *next_id, int64_t *nitems,
                           uint64_t *seq) {
  for (int attempt = 0;; attempt++) {
    uint64_t sseq = 0, lseq = 0, nid = 0;
    int rc = 0;
    if (need_sql && (rc = vlm__reader_sql_begin(r, &sseq, "search")))
      return rc;
    if (!(rc = vlm__reader_txn(db, r, "search"))) {
      MDB_stat st;
      int mrc;
      if (!(rc = vlm__lmdb_get_u64(&db->lm, r->txn, "seq", &lseq)) &&
          !(rc = vlm__lmdb_get_u64(&db->lm, r->txn, "next_id", &nid)) &&
          (mrc = vlm__mdb_stat(r->txn, db->lm.keys, &st)))
        rc = vlm__lmdb_err(mrc, "search");
      *nitems = rc ? 0 : (int64_t)st.ms_entries;
    }
    if (!rc && (!need_sql || sseq == lseq)) {
      *seq = lseq;
      *next_id = nid ? nid : 1;
      return 0;
    }
    if (r->txn)
      mdb_txn_reset(r->txn);
    if (need_sql)
      sqlite3_exec(r->sql, "ROLLBACK", NULL, NULL, NULL);
    if (rc)
      return rc;
    /* the writer is between its two commits: a moment */
    if (attempt >= 5000 || (attempt > 100 && !vlm__writer_alive(db->dir)))
      return vlm_seterr(VLM_ESTATE, "%s: meta.sqlite is at batch %llu and "
                        "the payload store at %llu, and no writer is "
                        "finishing it: run `vlmdb recover --db %s`",
                        db->dir, (unsigned long long)sseq,
                        (unsigned long long)lseq, db->dir);
    if (attempt > 20)
      usleep(1000);
  }
}

int vlm__snapshot_begin(vlm_db *db, vlm__reader *r, int need_sql,
                        uint64_t *next_id, int64_t *nitems, uint64_t *seq) {
  int rc = 0;
  if (db->follow)
    return snapshot_follow(db, r, need_sql, next_id, nitems, seq);
  pthread_rwlock_rdlock(&db->pub_lock);
  if ((rc = vlm__reader_txn(db, r, "search")))
    goto done;
  if (need_sql && (rc = vlm__reader_sql_begin(r, NULL, "search"))) {
    mdb_txn_reset(r->txn);
    goto done;
  }
  *next_id = db->pub_next_id;
  *nitems = db->pub_items;
  *seq = db->pub_seq;
done:
  pthread_rwlock_unlock(&db->pub_lock);
  return rc;
}

void vlm__snapshot_end(vlm__reader *r, int need_sql) {
  if (need_sql && r->sql && !sqlite3_get_autocommit(r->sql))
    sqlite3_exec(r->sql, "COMMIT", NULL, NULL, NULL);
  if (r->txn)
    mdb_txn_reset(r->txn);
}

/* ---- near-duplicates ----------------------------------------------------- */

/* Candidate i's image vector from the search's LMDB snapshot (none for
 * an id the snapshot no longer holds). */
typedef struct {
  vlm_db *db;
  MDB_txn *txn;
  const vlm__cand *c;
} snapshot_vecs;

static int snapshot_image_vec(void *arg, int i, const void **vec) {
  const snapshot_vecs *a = arg;
  uint32_t flags = 0;
  const void *v[VLM__NMOD] = {NULL, NULL};
  int rc = vlm__vecs_get(&a->db->lm, a->txn, a->c[i].id, a->db->man.dim,
                         &flags, v);
  if (rc && rc != VLM_ENOTFOUND)
    return rc;
  *vec = rc ? NULL : v[VLM__MOD_IMAGE];
  return 0;
}

/* Keep, best first, up to k of the n candidates whose image vector has
 * cosine < thr with every image vector kept before it; a folded one adds
 * to similar[] of the first kept one it matches (vlm__collapse_near).
 * Candidates without an image vector are kept as they are.  Compacts c;
 * returns the count kept or a negative error. */
static int collapse_near(vlm_db *db, MDB_txn *txn, vlm__cand *c, int n,
                         int k, float thr, int *similar) {
  int *keep = malloc(((size_t)(k < n ? k : n) + 1) * sizeof *keep);
  if (!keep)
    return vlm_seterr(VLM_ENOMEM, "search: collapse");
  snapshot_vecs a = {db, txn, c};
  int kept = vlm__collapse_near(n, db->man.dim, k, thr, snapshot_image_vec,
                                &a, keep, similar);
  for (int j = 0; j < kept; j++) /* keep[j] >= j: in place */
    c[j] = c[keep[j]];
  free(keep);
  return kept;
}

/* ---- the public search -------------------------------------------------- */

/* ---- one search, in four steps ------------------------------------------ */

/* A search's working state, from check to resolve; search_free frees it. */
typedef struct {
  vlm_search_options o;
  int dim, need_sql, depth;
  float *q, *scratch;     /* the normalized query (NULL: BM25 only) */
  uint64_t next_id, seq;  /* the snapshot */
  int64_t nitems;
  uint64_t *fids;         /* the filter's matches, sorted */
  size_t nf;
  int listed;             /* 0: too many to list, post-filter instead */
  uint8_t *allow;         /* bitmap of fids */
  vlm__cand *vr;          /* the vector ranking */
  int nvr;
  uint64_t *bm25;         /* the BM25 ranking (hybrid) */
  float *bm25_score;      /* its scores, when the rankings are wanted */
  int nbm;
  int rankings;           /* vlm_db_search_rankings: keep the BM25 scores */
  vlm__cand *fused;       /* hybrid: both fused */
  vlm__cand *final;       /* vr or fused */
  int nfinal;
  int *similar;           /* collapse: near-duplicates folded per result */
  int want;               /* offset + k: the results the page needs */
  int full;               /* the ranking stopped at depth: there may be
                             more below */
  int kept;               /* final[0 .. kept) passed threshold and groups */
  int max_depth;          /* how deep the ranking may grow (vlm_db_search) */
} search;

/* Forget a ranking (vlm_db_search ranks again, deeper). */
static void search_reset(search *s) {
  free(s->allow);
  free(s->vr);
  free(s->bm25);
  free(s->fused);
  s->allow = NULL;
  s->vr = s->fused = s->final = NULL;
  s->bm25 = NULL;
  s->nvr = s->nbm = s->nfinal = s->full = s->kept = 0;
}

static void search_free(search *s) {
  free(s->q);
  free(s->scratch);
  free(s->fids);
  free(s->allow);
  free(s->vr);
  free(s->bm25);
  free(s->bm25_score);
  free(s->fused);
  free(s->similar);
}

/* Validate the options and normalize the query; how deep to rank. */
static int search_check(vlm_db *db, const float *query,
                        const vlm_search_options *opts, search *s) {
  vlm_search_options *o = &s->o;
  int rc;
  if (opts)
    *o = *opts;
  if (o->offset < 0 || o->offset >= VLM_DB_MAX_K)
    return vlm_seterr(VLM_EINVAL, "search: offset=%d outside 0..%d",
                      o->offset, VLM_DB_MAX_K - 1);
  if (o->k == 0) /* a range search's bound is the most a search returns */
    o->k = o->use_min_score ? VLM_DB_MAX_K - o->offset : 10;
  if (o->k < 1 || o->k > VLM_DB_MAX_K)
    return vlm_seterr(VLM_EINVAL, "search: k=%d outside 1..%d", o->k,
                      VLM_DB_MAX_K);
  if (o->offset + o->k > VLM_DB_MAX_K)
    return vlm_seterr(VLM_EINVAL, "search: offset %d + k %d is past the "
                      "deepest result a search returns (%d)", o->offset,
                      o->k, VLM_DB_MAX_K);
  if (o->use_min_score && !isfinite(o->min_score))
    return vlm_seterr(VLM_EINVAL, "search: min_score must be a finite "
                      "number");
  if (o->use_min_score && o->hybrid_text)
    return vlm_seterr(VLM_EINVAL, "search: min_score is a cosine, and a "
                      "hybrid score is fused ranks: not both");
  if (o->group_by) {
    int f;
    for (f = 0; f < db->man.nfields; f++)
      if (!strcmp(db->man.fname[f], o->group_by))
        break;
    if (f == db->man.nfields)
      return vlm_seterr(VLM_EINVAL, "search: group_by '%.64s' is not a "
                        "declared field", o->group_by);
    if (o->group_per == 0)
      o->group_per = 1;
    if (o->group_per < 1 || o->group_per > VLM_DB_MAX_K)
      return vlm_seterr(VLM_EINVAL, "search: group_per=%d outside 1..%d",
                        o->group_per, VLM_DB_MAX_K);
    if (o->collapse > 0)
      return vlm_seterr(VLM_EINVAL, "search: group_by and collapse cannot "
                        "be combined");
  } else if (o->group_per != 0) {
    return vlm_seterr(VLM_EINVAL, "search: group_per needs group_by");
  }
  if (o->target != VLM_TARGET_ANY && o->target != VLM_TARGET_IMAGE &&
      o->target != VLM_TARGET_TEXT)
    return vlm_seterr(VLM_EINVAL, "search: bad target %d", (int)o->target);
  if (!query && !o->hybrid_text)
    return vlm_seterr(VLM_EINVAL, "search: no query vector and no text");
  if (o->hybrid_weight < 0 || o->hybrid_weight > 1 ||
      isnan(o->hybrid_weight))
    return vlm_seterr(VLM_EINVAL, "search: hybrid_weight must be in 0..1");
  if (!(o->collapse >= 0 && o->collapse <= 1))
    return vlm_seterr(VLM_EINVAL, "search: collapse must be in 0..1");
  if (o->filter && (rc = vlm__filter_lex(o->filter)))
    return rc;
  s->dim = db->man.dim;
  if (query) {
    if (!(s->q = malloc((size_t)s->dim * sizeof *s->q)) ||
        !(s->scratch = malloc((size_t)s->dim * sizeof *s->scratch)))
      return vlm_seterr(VLM_ENOMEM, "search");
    if ((rc = vlm__normalize(query, s->q, s->dim, "query")))
      return rc;
  }
  s->need_sql = o->filter || o->hybrid_text || o->group_by;
  if (s->need_sql && db->sql_behind)
    return vlm_seterr(VLM_ESTATE, "%s needs crash recovery before filters "
                      "or hybrid search (meta.sqlite lacks %llu batch(es)): "
                      "run `vlmdb recover --db %s`", db->dir,
                      (unsigned long long)db->sql_behind, db->dir);
  s->want = o->offset + o->k;
  s->depth = s->want;
  s->max_depth = s->want;
  if (o->hybrid_text && s->depth < 50)
    s->depth = s->max_depth = 50;
  if (o->collapse > 0) { /* room for the near-duplicates that fold away */
    int want = vlm_collapse_depth(s->want);
    if (want > s->depth)
      s->depth = want;
    s->max_depth = s->depth;
  }
  if (o->group_by) { /* groups that fill up skip candidates: look deeper,
                        and deeper again while the page is not full */
    int want = s->want < 16 ? 64 : s->want * 4;
    if (want < s->depth)
      want = s->depth;
    s->depth = want > VLM_DB_GROUP_DEPTH ? VLM_DB_GROUP_DEPTH : want;
    s->max_depth = VLM_DB_GROUP_DEPTH > s->depth ? VLM_DB_GROUP_DEPTH
                                                 : s->depth;
  }
  /* An approximate index without a range search: rank a little first and
   * deeper only while the last score still reaches the threshold. */
  if (o->use_min_score && !o->exact && !o->group_by &&
      !vlm_index_can_range(db->vx[VLM__MOD_IMAGE].index) &&
      s->depth > RANGE_FIRST_DEPTH)
    s->depth = RANGE_FIRST_DEPTH;
  return 0;
}

/* The filter's matches from the SQLite snapshot: up to the exact-scan
 * limit they are listed (and scored exactly); beyond it a vector search
 * post-filters the unfiltered ranking, unless it needs the list (hybrid,
 * exact). */
static int search_filter(vlm_db *db, vlm__reader *r, search *s) {
  s->listed = 1;
  if (!s->o.filter)
    return 0;
  size_t limit = (size_t)(s->nitems / EXACT_FRACTION);
  if (limit < EXACT_MIN)
    limit = EXACT_MIN;
  if (!s->q || s->o.hybrid_text || s->o.exact)
    limit = SIZE_MAX;
  return vlm__filter_ids(db, r, s->o.filter, s->seq, limit, &s->fids,
                         &s->nf, &s->listed);
}

/* The vector ranking (post-filtered, or over the listed matches), the
 * BM25 ranking, and their fusion into s->final. */
static int search_rank(vlm_db *db, vlm__reader *r, search *s) {
  const vlm_search_options *o = &s->o;
  int rc, fell_back = 0;
  if (s->q && !s->listed) {
    sctx c = {db, r, s->q, s->dim, NULL, 0, NULL, s->next_id, s->scratch,
              o->filter, 0, 0};
    rc = vector_ranking(&c, o, s->depth, s->nitems, &s->vr, &s->nvr,
                        &s->full);
    if (rc == POST_FALLBACK) { /* too few passed: list the matches after all */
      fell_back = 1; /* (post-filtering them again would fail alike) */
      free(s->vr);
      s->vr = NULL;
      s->nvr = 0;
      if ((rc = vlm__filter_ids(db, r, o->filter, s->seq, SIZE_MAX, &s->fids,
                                &s->nf, &s->listed)))
        return rc;
    } else if (rc) {
      return rc;
    }
  }
  if (o->filter && s->listed) {
    if (!(s->allow = calloc((size_t)(s->next_id >> 3) + 1, 1)))
      return vlm_seterr(VLM_ENOMEM, "search");
    for (size_t i = 0; i < s->nf; i++)
      if (s->fids[i] < s->next_id)
        s->allow[s->fids[i] >> 3] |= (uint8_t)(1u << (s->fids[i] & 7));
  }
  if (s->q && s->listed && !s->vr && (!o->filter || s->nf > 0)) {
    sctx c = {db, r, s->q, s->dim, o->filter ? s->fids : NULL, s->nf,
              s->allow, s->next_id, s->scratch, NULL, fell_back, 0};
    if ((rc = vector_ranking(&c, o, s->depth, s->nitems, &s->vr, &s->nvr,
                             &s->full)))
      return rc;
  }
  s->final = s->vr;
  s->nfinal = s->nvr;
  if (!o->hybrid_text)
    return 0;
  if ((rc = vlm__hybrid(db, r, o->hybrid_text, s->allow, s->next_id,
                        s->depth, &s->bm25,
                        s->rankings ? &s->bm25_score : NULL, &s->nbm)))
    return rc;
  s->full |= s->nbm >= s->depth;
  if (s->rankings)
    return 0; /* the caller fuses them */
  float w = o->hybrid_weight > 0 ? o->hybrid_weight : 0.5f;
  if (!(s->fused = malloc((size_t)(s->nvr + s->nbm + 1) * sizeof *s->fused)))
    return vlm_seterr(VLM_ENOMEM, "search");
  int nfu = vlm__fuse_rrf(s->vr, s->nvr, s->bm25, s->nbm, w, s->fused);
  if (nfu < 0)
    return vlm_seterr(VLM_ENOMEM, "search");
  qsort(s->fused, (size_t)nfu, sizeof *s->fused, cand_desc);
  s->final = s->fused;
  s->nfinal = nfu;
  return 0;
}

/* ---- threshold and groups ------------------------------------------------ */

/* A group's identity: the value's SQLite type, then its bytes. */
typedef struct {
  char *key;
  size_t len;
  int count;
} group_slot;

static uint64_t group_hash(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h;
}

/* Keep, best first, the candidates c[0 .. n) whose value of field has
 * been kept fewer than per times, until want are kept; compacts c and
 * sets *kept.  The values come from r's SQLite snapshot: an item without
 * the field (NULL, or no row) is in the NULL group. */
static int group_cut(vlm__reader *r, const char *field, int per,
                     vlm__cand *c, int n, int want, int *kept) {
  sqlite3_stmt *st = NULL;
  group_slot *slots = NULL;
  char sql[128], *buf = NULL;
  size_t cap = 16, bufcap = 0;
  int rc = 0, w = 0;
  while (cap < 2 * (size_t)n)
    cap <<= 1;
  snprintf(sql, sizeof sql, "SELECT \"%s\" FROM items WHERE id = ?1", field);
  if ((rc = sqlite3_prepare_v2(r->sql, sql, -1, &st, NULL)) != SQLITE_OK) {
    rc = vlm__sql_err(r->sql, rc, "search: group_by");
    goto done;
  }
  if (!(slots = calloc(cap, sizeof *slots))) {
    rc = vlm_seterr(VLM_ENOMEM, "search: group_by");
    goto done;
  }
  for (int i = 0; i < n && w < want; i++) {
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)c[i].id);
    int type = SQLITE_NULL, step = sqlite3_step(st);
    const void *val = NULL;
    size_t len = 0;
    char num[32];
    if (step == SQLITE_ROW)
      type = sqlite3_column_type(st, 0);
    else if (step != SQLITE_DONE) {
      rc = vlm__sql_err(r->sql, step, "search: group_by");
      goto done;
    }
    if (type == SQLITE_INTEGER) {
      len = (size_t)snprintf(num, sizeof num, "%lld",
                             (long long)sqlite3_column_int64(st, 0));
      val = num;
    } else if (type == SQLITE_FLOAT) {
      len = (size_t)snprintf(num, sizeof num, "%.17g",
                             sqlite3_column_double(st, 0));
      val = num;
    } else if (type != SQLITE_NULL) {
      val = sqlite3_column_blob(st, 0);
      len = (size_t)sqlite3_column_bytes(st, 0);
    }
    if (len + 1 > bufcap) {
      char *nb = realloc(buf, len + 1);
      if (!nb) {
        rc = vlm_seterr(VLM_ENOMEM, "search: group_by");
        goto done;
      }
      buf = nb;
      bufcap = len + 1;
    }
    buf[0] = (char)type;
    if (len)
      memcpy(buf + 1, val, len);
    len++;
    size_t h = (size_t)group_hash(buf, len) & (cap - 1);
    while (slots[h].key &&
           (slots[h].len != len || memcmp(slots[h].key, buf, len)))
      h = (h + 1) & (cap - 1);
    if (!slots[h].key) {
      if (!(slots[h].key = malloc(len))) {
        rc = vlm_seterr(VLM_ENOMEM, "search: group_by");
        goto done;
      }
      memcpy(slots[h].key, buf, len);
      slots[h].len = len;
    }
    if (slots[h].count < per) {
      slots[h].count++;
      c[w++] = c[i];
    }
  }
  *kept = w;
done:
  if (slots)
    for (size_t i = 0; i < cap; i++)
      free(slots[i].key);
  free(slots);
  free(buf);
  sqlite3_finalize(st);
  return rc;
}

/* The threshold, then the groups, over the ranking: s->kept.  *more = 1
 * when the page is not full and a deeper ranking could fill it: the
 * ranking stopped at its depth with every score still at or above the
 * threshold. */
static int search_cut(vlm__reader *r, search *s, int *more) {
  const vlm_search_options *o = &s->o;
  int n = s->nfinal, full = s->full, rc;
  *more = 0;
  if (o->use_min_score) {
    int i = 0;
    while (i < n && s->final[i].score >= o->min_score)
      i++;
    if (i < n)
      full = 0; /* crossed the threshold: nothing deeper reaches it */
    n = i;
  }
  if (o->group_by && n > 0 &&
      (rc = group_cut(r, o->group_by, o->group_per, s->final, n, s->want,
                      &n)))
    return rc;
  s->kept = n;
  *more = full && n < s->want && s->depth < s->max_depth;
  return 0;
}

/* Near-duplicates folded, the first k resolved to keys against the LMDB
 * snapshot (an id the snapshot no longer holds is left out). */
static int search_resolve(vlm_db *db, vlm__reader *r, search *s,
                          vlm_hit **out, int *nout) {
  const vlm_search_options *o = &s->o;
  int nfinal = s->nfinal, nhits = 0, rc;
  vlm_hit *hits = NULL;
  *out = NULL;
  *nout = 0;
  if (nfinal > s->kept) /* search_cut: threshold and groups */
    nfinal = s->kept;
  if (o->collapse > 0 && nfinal > 0) {
    if (!(s->similar = calloc((size_t)(nfinal < s->want ? nfinal : s->want),
                              sizeof *s->similar)))
      return vlm_seterr(VLM_ENOMEM, "search");
    int kept = collapse_near(db, r->txn, s->final, nfinal, s->want,
                             o->collapse, s->similar);
    if (kept < 0)
      return kept;
    nfinal = kept;
  }
  if (nfinal > s->want)
    nfinal = s->want;
  /* the page: results offset .. offset + k - 1 */
  int first = o->offset < nfinal ? o->offset : nfinal;
  nfinal -= first;
  if (nfinal > 0 && !(hits = calloc((size_t)nfinal, sizeof *hits)))
    return vlm_seterr(VLM_ENOMEM, "search");
  for (int j = 0; j < nfinal; j++) {
    int i = first + j;
    vlm__rec rec;
    rc = vlm__rec_get(&db->lm, r->txn, s->final[i].id, &rec);
    if (rc == VLM_ENOTFOUND)
      continue;
    vlm_hit *h = &hits[nhits];
    if (rc || !(h->key = strndup(rec.key, rec.key_len))) {
      vlm_hits_free(hits, nhits);
      return rc ? rc : vlm_seterr(VLM_ENOMEM, "search");
    }
    h->score = s->final[i].score;
    h->similar = s->similar ? s->similar[i] : 0;
    h->modality = s->final[i].mod == VLM__MOD_IMAGE ? VLM_TARGET_IMAGE
                                                    : VLM_TARGET_TEXT;
    nhits++;
  }
  *out = hits;
  *nout = nhits;
  return 0;
}

int vlm_db_search(vlm_db *db, const float *query,
                  const vlm_search_options *opts, vlm_hit **hits_out,
                  int *nhits_out) {
  search s;
  vlm__reader *r = NULL;
  int rc, locked = 0, snap = 0;
  if (!db || !hits_out || !nhits_out)
    return vlm_seterr(VLM_EINVAL, "search: NULL argument");
  *hits_out = NULL;
  *nhits_out = 0;
  memset(&s, 0, sizeof s);
  /* (the index first: search_check asks it whether it can range) */
  if ((rc = vlm__vindex_ensure(db)) ||
      (rc = search_check(db, query, opts, &s)) ||
      (rc = vlm__reader_get(db, s.need_sql, &r)))
    goto done;
  /* one snapshot of all three stores for the whole search */
  pthread_rwlock_rdlock(&db->index_lock);
  locked = 1;
  if ((rc = vlm__snapshot_begin(db, r, s.need_sql, &s.next_id, &s.nitems,
                                &s.seq)))
    goto done;
  snap = 1;
  if ((rc = search_filter(db, r, &s)))
    goto done;
  /* Rank; a threshold or groups that leave the page short rank again
   * deeper (x4, up to max_depth), while the ranking may hold more. */
  for (;;) {
    int more;
    if ((rc = search_rank(db, r, &s)) || (rc = search_cut(r, &s, &more)))
      goto done;
    if (!more)
      break;
    s.depth = s.depth > s.max_depth / 4 ? s.max_depth : s.depth * 4;
    search_reset(&s);
  }
  rc = search_resolve(db, r, &s, hits_out, nhits_out);
done:
  if (snap)
    vlm__snapshot_end(r, s.need_sql);
  if (locked)
    pthread_rwlock_unlock(&db->index_lock);
  if (r)
    vlm__reader_put(db, r);
  search_free(&s);
  return rc;
}

int vlm_db_count_where(vlm_db *db, const char *filter, int64_t *n) {
  vlm__reader *r = NULL;
  uint64_t next_id, seq, *ids = NULL;
  int64_t nitems;
  size_t nids = 0;
  int rc, complete;
  if (!db || !filter || !n)
    return vlm_seterr(VLM_EINVAL, "count: NULL argument");
  *n = 0;
  if ((rc = vlm__reader_get(db, 1, &r)))
    return rc;
  if ((rc = vlm__snapshot_begin(db, r, 1, &next_id, &nitems, &seq)) == 0) {
    rc = vlm__filter_ids(db, r, filter, seq, SIZE_MAX, &ids, &nids,
                         &complete);
    vlm__snapshot_end(r, 1);
  }
  vlm__reader_put(db, r);
  free(ids);
  if (rc == 0)
    *n = (int64_t)nids;
  return rc;
}

/* Resolve n candidates (ids, scores, modalities) to keys. */
static int resolve_list(vlm_db *db, vlm__reader *r, const vlm__cand *cands,
                        const uint64_t *ids, const float *scores, int n,
                        vlm_hit **out, int *nout) {
  vlm_hit *hits = calloc((size_t)n + 1, sizeof *hits);
  int nh = 0, rc;
  if (!hits)
    return vlm_seterr(VLM_ENOMEM, "search");
  for (int i = 0; i < n; i++) {
    vlm__rec rec;
    rc = vlm__rec_get(&db->lm, r->txn, cands ? cands[i].id : ids[i], &rec);
    if (rc == VLM_ENOTFOUND)
      continue;
    if (rc || !(hits[nh].key = strndup(rec.key, rec.key_len))) {
      vlm_hits_free(hits, nh);
      return rc ? rc : vlm_seterr(VLM_ENOMEM, "search");
    }
    hits[nh].score = cands ? cands[i].score : scores[i];
    hits[nh].modality = !cands || cands[i].mod == VLM__MOD_TEXT
                            ? VLM_TARGET_TEXT
                            : VLM_TARGET_IMAGE;
    nh++;
  }
  *out = hits;
  *nout = nh;
  return 0;
}

int vlm_db_search_rankings(vlm_db *db, const float *query,
                           const vlm_search_options *opts, vlm_hit **vec,
                           int *nvec, vlm_hit **text, int *ntext) {
  search s;
  vlm__reader *r = NULL;
  int rc, locked = 0, snap = 0;
  if (!db || !opts || !vec || !nvec || !text || !ntext)
    return vlm_seterr(VLM_EINVAL, "search: NULL argument");
  *vec = *text = NULL;
  *nvec = *ntext = 0;
  if (!opts->hybrid_text || opts->collapse > 0)
    return vlm_seterr(VLM_EINVAL, "search rankings: a hybrid search "
                      "without collapse");
  memset(&s, 0, sizeof s);
  s.rankings = 1;
  if ((rc = search_check(db, query, opts, &s)) ||
      (rc = vlm__reader_get(db, s.need_sql, &r)))
    goto done;
  pthread_rwlock_rdlock(&db->index_lock);
  locked = 1;
  if ((rc = vlm__snapshot_begin(db, r, s.need_sql, &s.next_id, &s.nitems,
                                &s.seq)))
    goto done;
  snap = 1;
  if ((rc = search_filter(db, r, &s)) || (rc = search_rank(db, r, &s)))
    goto done;
  if ((rc = resolve_list(db, r, s.vr, NULL, NULL,
                         s.nvr < s.depth ? s.nvr : s.depth, vec, nvec)) ||
      (rc = resolve_list(db, r, NULL, s.bm25, s.bm25_score, s.nbm, text,
                         ntext))) {
    vlm_hits_free(*vec, *nvec);
    *vec = NULL;
    *nvec = 0;
  }
done:
  if (snap)
    vlm__snapshot_end(r, s.need_sql);
  if (locked)
    pthread_rwlock_unlock(&db->index_lock);
  if (r)
    vlm__reader_put(db, r);
  search_free(&s);
  return rc;
}

void vlm_hits_free(vlm_hit *hits, int nhits) {
  if (!hits)
    return;
  for (int i = 0; i < nhits; i++)
    free(hits[i].key);
  free(hits);
}
