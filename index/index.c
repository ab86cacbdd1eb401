/* index.c - vlm_index over the FAISS C API (see vlm_index.h).
 *
 * Only faiss_* C API functions are called here, with upstream's names and
 * signatures, so the same code runs over index/faiss_c_api.cpp (Debian's
 * FAISS 1.7.3) and over a real libfaiss_c >= 1.7.4 (FAISS_PREFIX).
 */
#include "vlm_index.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "faiss_c_ext.h"
#include "vlm_error.h"

/* ---------------------------------------------------------------- types */

typedef enum {
  KIND_FLAT,  /* IDMap over IndexFlat */
  KIND_HNSW,  /* IDMap over IndexHNSW*: no remove */
  KIND_IVF,   /* IndexIVF*: native ids */
  KIND_OTHER  /* IDMap over anything else the factory builds */
} index_kind;

struct vlm_index {
  FaissIndex *faiss;
  char *factory;      /* as the caller gave it, without our "IDMap," */
  int dim;
  vlm_metric metric;
  index_kind kind;
  int64_t train_size;
  uint64_t mapped_bytes; /* size of the mapped list file; 0: in RAM */
  int64_t huge_ntotal;   /* ntotal when huge pages were last asked for */
};

/* FAISS's own default efSearch (HNSW::efSearch); index.c never changes
 * the index's, so this is what a search without ef_search gets. */
#define HNSW_DEFAULT_EF 16
#define HNSW_EF_CONSTRUCTION 128
/* FAISS k-means wants >= 39 training points per centroid. */
#define MIN_POINTS_PER_CENTROID 39
#define MAX_FACTORY_LEN 1024

/* --------------------------------------------------------------- errors */

/* FAISS messages read "Error in <signature> at <file>:<line>: <what>";
 * the signature and source path say nothing to a vlmdb user. */
static const char *faiss_what(void) {
  const char *msg = faiss_get_last_error();
  if (msg == NULL) return "unknown FAISS error";
  if (strncmp(msg, "Error in ", 9) == 0) {
    const char *at = strstr(msg, " at ");
    const char *colon = at ? strstr(at + 4, ": ") : NULL;
    if (colon) return colon + 2;
  }
  return msg;
}

static int faiss_fail(int err, const char *what) {
  return vlm_seterr(err, "%s: %s", what, faiss_what());
}

static int check_finite(const char *what, int64_t n, int dim, const float *x) {
  for (int64_t i = 0; i < n * dim; i++)
    if (!isfinite(x[i]))
      return vlm_seterr(VLM_ENUMERIC, "%s: vector %lld component %d is %s",
                        what, (long long)(i / dim), (int)(i % dim),
                        isnan(x[i]) ? "NaN" : "infinite");
  return 0;
}

/* -------------------------------------------------------------- factory */

/* Training floor for an IVF with nlist lists, optionally PQ-coded:
 * the coarse k-means and the PQ's 2^nbits-centroid k-means each want
 * MIN_POINTS_PER_CENTROID points per centroid. */
static int64_t pq_train_size(const char *factory) {
  const char *pq = strstr(factory, "PQ");
  if (pq == NULL) return 0;
  const char *p = pq + 2;
  while (*p >= '0' && *p <= '9') p++;
  int nbits = 8;
  if (*p == 'x') nbits = atoi(p + 1);
  if (nbits < 1 || nbits > 16) nbits = 8;
  return (int64_t)MIN_POINTS_PER_CENTROID << nbits;
}

static void classify(vlm_index *index) {
  FaissIndexIVF *ivf = faiss_IndexIVF_cast(index->faiss);
  int64_t pq = pq_train_size(index->factory);
  if (ivf != NULL) {
    int64_t coarse = (int64_t)faiss_IndexIVF_nlist(ivf) * MIN_POINTS_PER_CENTROID;
    index->kind = KIND_IVF;
    index->train_size = coarse > pq ? coarse : pq;
    return;
  }
  const char *f = index->factory;
  if (strncmp(f, "IDMap2,", 7) == 0) f += 7;
  else if (strncmp(f, "IDMap,", 6) == 0) f += 6;
  if (strstr(f, "HNSW") != NULL) index->kind = KIND_HNSW;
  else if (strcmp(f, "Flat") == 0) index->kind = KIND_FLAT;
  else index->kind = KIND_OTHER;
  if (faiss_Index_is_trained(index->faiss)) index->train_size = 0;
  else index->train_size = pq > 0 ? pq : 1000; /* e.g. SQ: a small sample */
}

static int make_index(const char *factory, int dim, vlm_metric metric,
                      FaissIndex *faiss, vlm_index **out) {
  vlm_index *index = calloc(1, sizeof *index);
  char *copy = strdup(factory);
  if (index == NULL || copy == NULL) {
    free(index);
    free(copy);
    faiss_Index_free(faiss);
    return vlm_seterr(VLM_ENOMEM, "index: out of memory");
  }
  index->faiss = faiss;
  index->factory = copy;
  index->dim = dim;
  index->metric = metric;
  classify(index);
  *out = index;
  return 0;
}

/* The description handed to faiss_index_factory: the caller's string
 * with "np" after every PQ component ("PQ64" -> "PQ64np").  FAISS's
 * factory turns on polysemous training for PQ by default, which only
 * pays off for polysemous (Hamming-filtered) search that vlmdb never
 * does, and costs minutes (41 s for IVF32,PQ8 on 10k 32-d vectors versus
 * 0.7 s without).  out has room for MAX_FACTORY_LEN * 2 + 16 bytes. */
static void faiss_description(const char *factory, char *out) {
  const char *p = factory;
  char *o = out;
  while (*p) {
    int component_start = p == factory || p[-1] == ',';
    if (component_start && p[0] == 'P' && p[1] == 'Q' &&
        p[2] >= '0' && p[2] <= '9') {
      const char *q = p + 2;
      while (*q >= '0' && *q <= '9') q++;
      if (*q == 'x' && q[1] >= '0' && q[1] <= '9') {
        q++;
        while (*q >= '0' && *q <= '9') q++;
      }
      memcpy(o, p, (size_t)(q - p));
      o += q - p;
      if (*q == ',' || *q == '\0') {
        memcpy(o, "np", 2);
        o += 2;
      }
      p = q;
      continue;
    }
    *o++ = *p++;
  }
  *o = '\0';
}

int vlm_index_create(const char *factory, int dim, vlm_metric metric,
                     vlm_index **out) {
  FaissIndex *faiss = NULL;
  char desc[MAX_FACTORY_LEN * 2 + 16];
  char wrapped[sizeof desc + 8];
  *out = NULL;
  if (factory == NULL || factory[0] == '\0' ||
      strlen(factory) > MAX_FACTORY_LEN)
    return vlm_seterr(VLM_EINVAL, "index: empty or overlong factory string");
  if (dim <= 0)
    return vlm_seterr(VLM_EINVAL, "index \"%s\": dimension %d must be > 0",
                      factory, dim);
  if (metric != VLM_METRIC_IP && metric != VLM_METRIC_L2)
    return vlm_seterr(VLM_EINVAL, "index \"%s\": unknown metric %d", factory,
                      (int)metric);
  FaissMetricType fm = metric == VLM_METRIC_IP ? METRIC_INNER_PRODUCT
                                               : METRIC_L2;

  /* 1.7.3's factory leaks the coarse quantizer when the PQ part throws,
   * so refuse this common mistake before FAISS sees it. */
  for (const char *pq = strstr(factory, "PQ"); pq; pq = strstr(pq + 2, "PQ")) {
    int m = atoi(pq + 2);
    if ((pq == factory || pq[-1] == ',') && m > 0 && dim % m != 0)
      return vlm_seterr(VLM_EINVAL, "index \"%s\": dimension %d is not a "
                        "multiple of the %d PQ sub-quantizers", factory, dim,
                        m);
  }
  faiss_description(factory, desc);
  if (faiss_index_factory(&faiss, dim, desc, fm) != 0)
    return vlm_seterr(VLM_EINVAL, "index factory \"%s\": %s", factory,
                      faiss_what());
  /* Anything that is neither an IVF nor already an IDMap gets one, so
   * every kind takes caller ids. */
  if (faiss_IndexIVF_cast(faiss) == NULL &&
      faiss_IndexIDMap_cast(faiss) == NULL) {
    faiss_Index_free(faiss);
    faiss = NULL;
    snprintf(wrapped, sizeof wrapped, "IDMap,%s", desc);
    if (faiss_index_factory(&faiss, dim, wrapped, fm) != 0)
      return faiss_fail(VLM_EINVAL, wrapped);
  }
  /* FAISS builds HNSW graphs with efConstruction 40, which on hard data
   * (clustered 512-d, 200k vectors) caps recall@10 at 0.91 even at
   * efSearch 256; 128 gives 0.999 there for about the same build time
   * with the SIMD flat store (faiss_c_api.cpp). */
  if (strstr(factory, "HNSW") != NULL) {
    FaissParameterSpace *ps = NULL;
    int rc = faiss_ParameterSpace_new(&ps);
    if (rc == 0)
      rc = faiss_ParameterSpace_set_index_parameter(
          ps, faiss, "efConstruction", HNSW_EF_CONSTRUCTION);
    faiss_ParameterSpace_free(ps);
    if (rc != 0) {
      faiss_Index_free(faiss);
      return faiss_fail(VLM_EINVAL, factory);
    }
  }
  return make_index(factory, dim, metric, faiss, out);
}

void vlm_index_free(vlm_index *index) {
  if (index == NULL) return;
  faiss_Index_free(index->faiss);
  free(index->factory);
  free(index);
}

/* -------------------------------------------------------------- getters */

int vlm_index_dim(const vlm_index *index) { return index->dim; }

int64_t vlm_index_count(const vlm_index *index) {
  return faiss_Index_ntotal(index->faiss);
}

const char *vlm_index_factory(const vlm_index *index) {
  return index->factory;
}

vlm_metric vlm_index_metric(const vlm_index *index) { return index->metric; }

int vlm_index_is_trained(const vlm_index *index) {
  return faiss_Index_is_trained(index->faiss) ? 1 : 0;
}

int64_t vlm_index_train_size(const vlm_index *index) {
  return vlm_index_is_trained(index) ? 0 : index->train_size;
}

int vlm_index_can_remove(const vlm_index *index) {
  return index->kind != KIND_HNSW && !vlm_faiss_ivf_is_ondisk(index->faiss);
}

int vlm_index_is_ondisk(const vlm_index *index) {
  return vlm_faiss_ivf_is_ondisk(index->faiss) != 0;
}

uint64_t vlm_index_mapped_bytes(const vlm_index *index) {
  return index->mapped_bytes;
}

int vlm_index_ids_outside(const vlm_index *index, const uint8_t *bitmap,
                          int64_t nbits, int64_t *outside, int64_t *first) {
  if (index->kind != KIND_IVF)
    return vlm_seterr(VLM_EUNSUPPORTED, "index \"%s\": not an IVF index",
                      index->factory);
  if (vlm_faiss_ivf_ids_outside(index->faiss, bitmap, nbits, outside,
                                first) != 0)
    return vlm_seterr(VLM_ENOMEM, "index: %s", vlm_faiss_ondisk_last_error());
  return 0;
}

const char *vlm_index_lists_path(const vlm_index *index) {
  return vlm_faiss_ivf_is_ondisk(index->faiss) == 1
             ? vlm_faiss_ivf_ondisk_filename(index->faiss)
             : NULL;
}

int vlm_index_set_lists_path(vlm_index *index, const char *path) {
  if (vlm_faiss_ivf_is_ondisk(index->faiss) != 1 || path == NULL)
    return vlm_seterr(VLM_EINVAL, "index \"%s\": no list file to rename",
                      index->factory);
  if (vlm_faiss_ivf_set_ondisk_filename(index->faiss, path) != 0)
    return vlm_seterr(VLM_ENOMEM, "index: %s", vlm_faiss_ondisk_last_error());
  return 0;
}

/* ---------------------------------------------------------------- merge */

int vlm_index_merge(vlm_index *into, vlm_index *const *parts,
                    const int64_t *id_offsets, int nparts,
                    const char *lists_path) {
  if (into->kind != KIND_IVF)
    return vlm_seterr(VLM_EUNSUPPORTED, "index \"%s\": only IVF indexes "
                      "merge (FAISS cannot merge HNSW graphs)", into->factory);
  if (nparts < 1 || parts == NULL || id_offsets == NULL || lists_path == NULL)
    return vlm_seterr(VLM_EINVAL, "index merge: no parts");
  const FaissIndex **fp = malloc((size_t)nparts * sizeof *fp);
  if (fp == NULL) return vlm_seterr(VLM_ENOMEM, "index merge");
  for (int i = 0; i < nparts; i++) {
    if (parts[i]->dim != into->dim || parts[i]->metric != into->metric ||
        strcmp(parts[i]->factory, into->factory) != 0) {
      free(fp);
      return vlm_seterr(VLM_EMISMATCH, "index merge: part %d is \"%s\" "
                        "(dim %d), the index \"%s\" (dim %d)", i,
                        parts[i]->factory, parts[i]->dim, into->factory,
                        into->dim);
    }
    fp[i] = parts[i]->faiss;
  }
  int rc = vlm_faiss_ivf_merge_ondisk(into->faiss, fp, id_offsets, nparts,
                                      lists_path);
  free(fp);
  if (rc != 0)
    return vlm_seterr(VLM_EMISMATCH, "index merge into %s: %s", lists_path,
                      vlm_faiss_ondisk_last_error());
  return 0;
}

int vlm_index_is_exact(const vlm_index *index) {
  return index->kind == KIND_FLAT;
}

int vlm_index_can_scan(const vlm_index *index) {
#ifdef VLM_FAISS_REAL_CAPI
  (void)index;
  return 0;
#else
  /* HNSW over plain float vectors only ("HNSW32", "HNSW32,Flat"): a
   * quantized store (HNSW32_SQ8, _PQ16) is left to the graph walk */
  const char *f = index->factory;
  if (index->kind != KIND_HNSW) return 0;
  if (strncmp(f, "IDMap2,", 7) == 0) f += 7;
  else if (strncmp(f, "IDMap,", 6) == 0) f += 6;
  if (strncmp(f, "HNSW", 4) != 0) return 0;
  for (f += 4; *f >= '0' && *f <= '9'; f++) {
  }
  return *f == '\0' || strcmp(f, ",Flat") == 0;
#endif
}

/* --------------------------------------------------------------- writes */

int vlm_index_train(vlm_index *index, int64_t n, const float *x) {
  if (vlm_index_is_trained(index)) return 0;
  if (n < index->train_size || x == NULL)
    return vlm_seterr(VLM_EINVAL,
                      "index \"%s\": training needs at least %lld vectors, "
                      "got %lld", index->factory,
                      (long long)index->train_size, (long long)n);
  int err = check_finite("index train", n, index->dim, x);
  if (err) return err;
  if (faiss_Index_train(index->faiss, n, x) != 0)
    return faiss_fail(VLM_EINDEX, "index train");
  return 0;
}

int vlm_index_add(vlm_index *index, int64_t n, const float *x,
                  const int64_t *ids) {
  if (n < 0 || (n > 0 && (x == NULL || ids == NULL)))
    return vlm_seterr(VLM_EINVAL, "index add: bad arguments (n %lld)",
                      (long long)n);
  if (n == 0) return 0;
  if (vlm_faiss_ivf_is_ondisk(index->faiss))
    return vlm_seterr(VLM_EREADONLY, "index \"%s\": its inverted lists "
                      "are mapped read-only from disk", index->factory);
  if (!vlm_index_is_trained(index))
    return vlm_seterr(VLM_ESTATE, "index \"%s\": add before training",
                      index->factory);
  for (int64_t i = 0; i < n; i++)
    if (ids[i] < 0)
      return vlm_seterr(VLM_EINVAL, "index add: id %lld at %lld is negative",
                        (long long)ids[i], (long long)i);
  int err = check_finite("index add", n, index->dim, x);
  if (err) return err;
  if (faiss_Index_add_with_ids(index->faiss, n, x, ids) != 0)
    return faiss_fail(VLM_EINDEX, "index add");
  /* A grown array is new memory: back it with huge pages again each time
   * the index has doubled (amortized, as the arrays' own growth). */
  int64_t total = faiss_Index_ntotal(index->faiss);
  if (total >= 2 * index->huge_ntotal) {
    (void)vlm_faiss_hugepages(index->faiss);
    index->huge_ntotal = total;
  }
  return 0;
}

int vlm_index_reserve(vlm_index *index, int64_t n) {
  if (n <= 0 || index->kind != KIND_FLAT)
    return 0;
  if (vlm_faiss_flat_reserve(index->faiss, n) != 0)
    return vlm_seterr(VLM_ENOMEM, "index reserve: %lld vectors: %s",
                      (long long)n, vlm_faiss_ondisk_last_error());
  return 0;
}

int vlm_index_remove(vlm_index *index, int64_t n, const int64_t *ids,
                     int64_t *removed) {
  FaissIDSelectorBatch *sel = NULL;
  size_t count = 0;
  int err = 0;
  if (removed) *removed = 0;
  if (n < 0 || (n > 0 && ids == NULL))
    return vlm_seterr(VLM_EINVAL, "index remove: bad arguments (n %lld)",
                      (long long)n);
  if (vlm_faiss_ivf_is_ondisk(index->faiss))
    return vlm_seterr(VLM_EREADONLY, "index \"%s\": its inverted lists "
                      "are mapped read-only from disk", index->factory);
  if (!vlm_index_can_remove(index))
    return vlm_seterr(VLM_EUNSUPPORTED,
                      "index \"%s\": HNSW cannot remove vectors; use a "
                      "tombstone bitmap and rebuild", index->factory);
  if (n == 0) return 0;
  if (faiss_IDSelectorBatch_new(&sel, (size_t)n, ids) != 0)
    return faiss_fail(VLM_ENOMEM, "index remove");
  if (faiss_Index_remove_ids(index->faiss, (const FaissIDSelector *)sel,
                             &count) != 0)
    err = faiss_fail(VLM_EUNSUPPORTED, "index remove");
  faiss_IDSelector_free((FaissIDSelector *)sel);
  if (err == 0 && removed) *removed = (int64_t)count;
  return err;
}

/* --------------------------------------------------------------- search */

/* Parameters for one search call, in the SearchParameters subclass the
 * kind requires (IndexIVF and IndexHNSW refuse any other type). */
static int make_params(const vlm_index *index, const vlm_index_params *p,
                       FaissIDSelector *sel, FaissSearchParameters **out) {
  static const vlm_index_params none;
  int rc;
  if (p == NULL) p = &none;
  if (index->kind == KIND_IVF) {
    FaissIndexIVF *ivf = faiss_IndexIVF_cast(index->faiss);
    size_t nprobe = p->nprobe > 0 ? (size_t)p->nprobe : faiss_IndexIVF_nprobe(ivf);
    FaissSearchParametersIVF *sp = NULL;
    rc = faiss_SearchParametersIVF_new_with(&sp, sel, nprobe, 0);
    *out = (FaissSearchParameters *)sp;
  } else if (index->kind == KIND_HNSW) {
    int ef = p->ef_search > 0 ? p->ef_search : HNSW_DEFAULT_EF;
    FaissSearchParametersHNSW *sp = NULL;
#ifndef VLM_FAISS_REAL_CAPI
    if (p->scan && sel != NULL)
      rc = vlm_faiss_SearchParametersHNSW_new_scan(&sp, sel);
    else if (p->has_hidden)
      rc = vlm_faiss_SearchParametersHNSW_new_hiding(&sp, sel, ef,
                                                     p->hidden_id);
    else
#endif
      rc = faiss_SearchParametersHNSW_new_with(&sp, sel, ef);
    *out = (FaissSearchParameters *)sp;
  } else {
    rc = faiss_SearchParameters_new(out, sel);
  }
  return rc == 0 ? 0 : faiss_fail(VLM_ENOMEM, "index search parameters");
}

/* Does this search need a SearchParameters object at all?  HNSW always
 * gets one, so its efSearch is ours (HNSW_DEFAULT_EF) and never what a
 * concurrent search or another program left in the index. */
static int needs_params(const vlm_index *index, const vlm_index_params *p) {
  if (index->kind == KIND_HNSW) return 1;
  if (p == NULL) return 0;
  if (p->bitmap != NULL) return 1;
  if (index->kind == KIND_IVF && p->nprobe > 0) return 1;
  return 0;
}

int vlm_index_search(const vlm_index *index, int64_t nq, const float *queries,
                     int k, const vlm_index_params *params, float *scores,
                     int64_t *ids) {
  FaissIDSelectorBitmap *sel = NULL;
  FaissSearchParameters *sp = NULL;
  uint8_t *masked = NULL;
  int err = 0, rc;

  if (k < 1) return vlm_seterr(VLM_EINVAL, "index search: k %d < 1", k);
  if (nq < 0 || (nq > 0 && (queries == NULL || scores == NULL || ids == NULL)))
    return vlm_seterr(VLM_EINVAL, "index search: bad arguments");
  if (params && (params->ef_search < 0 || params->nprobe < 0 ||
                 params->bitmap_bits < 0))
    return vlm_seterr(VLM_EINVAL, "index search: negative parameter");
  if (nq == 0) return 0;
  if (!vlm_index_is_trained(index))
    return vlm_seterr(VLM_ESTATE, "index \"%s\": search before training",
                      index->factory);
  err = check_finite("index search", nq, index->dim, queries);
  if (err) return err;

  if (!needs_params(index, params)) {
    rc = faiss_Index_search(index->faiss, nq, queries, k, scores, ids);
    if (rc != 0) return faiss_fail(VLM_EINDEX, "index search");
    goto pad;
  }

  if (params != NULL && params->bitmap != NULL) {
    size_t nbytes = (size_t)((params->bitmap_bits + 7) / 8);
    const uint8_t *bitmap = params->bitmap;
    int tail = (int)(params->bitmap_bits & 7);
    /* FAISS's bitmap has byte granularity; ids in [bitmap_bits,
     * 8 * nbytes) must stay out, so mask a last byte with stray bits. */
    if (tail != 0 && (bitmap[nbytes - 1] >> tail) != 0) {
      masked = malloc(nbytes);
      if (masked == NULL) return vlm_seterr(VLM_ENOMEM, "index search");
      memcpy(masked, bitmap, nbytes);
      masked[nbytes - 1] &= (uint8_t)((1u << tail) - 1);
      bitmap = masked;
    }
    if (faiss_IDSelectorBitmap_new(&sel, nbytes, bitmap) != 0) {
      err = faiss_fail(VLM_ENOMEM, "index search selector");
      goto done;
    }
  }
  err = make_params(index, params, (FaissIDSelector *)sel, &sp);
  if (err) goto done;
  rc = faiss_Index_search_with_params(index->faiss, nq, queries, k, sp,
                                      scores, ids);
  if (rc != 0) {
    /* Flat, HNSW and IVF take these parameters; other kinds may want a
     * SearchParameters subclass of their own (IndexPQ) or none (LSH). */
    err = faiss_fail(index->kind == KIND_OTHER ? VLM_EUNSUPPORTED : VLM_EINDEX,
                     "index search");
    goto done;
  }

pad:
  /* FAISS pads missing results with label -1 but its score filler varies
   * by index type (±FLT_MAX, ±inf); make it one documented value. */
  for (int64_t i = 0; i < nq * k; i++)
    if (ids[i] < 0)
      scores[i] = index->metric == VLM_METRIC_IP ? -FLT_MAX : FLT_MAX;
done:
  faiss_SearchParameters_free(sp);
  if (sel) faiss_IDSelectorBitmap_free(sel);
  free(masked);
  return err;
}

/* --------------------------------------------------------- range search */

int vlm_index_can_range(const vlm_index *index) {
  return index != NULL && index->kind == KIND_FLAT;
}

int vlm_index_range_search(const vlm_index *index, const float *query,
                           float min_score, float **scores, int64_t **ids,
                           int64_t *n) {
  FaissRangeSearchResult *res = NULL;
  size_t *lims;
  idx_t *labels;
  float *dist;
  int err = 0;
  if (scores == NULL || ids == NULL || n == NULL || query == NULL)
    return vlm_seterr(VLM_EINVAL, "index range search: bad arguments");
  *scores = NULL;
  *ids = NULL;
  *n = 0;
  if (!vlm_index_can_range(index))
    return vlm_seterr(VLM_EUNSUPPORTED, "index \"%s\": no exact range "
                      "search (flat indexes only)", index->factory);
  if (!isfinite(min_score))
    return vlm_seterr(VLM_ENUMERIC, "index range search: threshold not finite");
  err = check_finite("index range search", 1, index->dim, query);
  if (err) return err;
  if (faiss_RangeSearchResult_new(&res, 1) != 0)
    return faiss_fail(VLM_ENOMEM, "index range search");
  /* FAISS keeps inner products strictly above the radius (distances
   * strictly below it for L2): step one float past the threshold so a
   * score equal to it is kept, and let the caller compare exactly. */
  float radius = index->metric == VLM_METRIC_IP ? nextafterf(min_score, -INFINITY)
                                                : nextafterf(min_score, INFINITY);
  if (faiss_Index_range_search(index->faiss, 1, query, radius, res) != 0) {
    err = faiss_fail(VLM_EINDEX, "index range search");
    goto done;
  }
  faiss_RangeSearchResult_lims(res, &lims);
  faiss_RangeSearchResult_labels(res, &labels, &dist);
  size_t count = lims[1] - lims[0];
  if (count > 0) {
    *scores = malloc(count * sizeof **scores);
    *ids = malloc(count * sizeof **ids);
    if (*scores == NULL || *ids == NULL) {
      free(*scores);
      free(*ids);
      *scores = NULL;
      *ids = NULL;
      err = vlm_seterr(VLM_ENOMEM, "index range search");
      goto done;
    }
    memcpy(*scores, dist + lims[0], count * sizeof **scores);
    for (size_t i = 0; i < count; i++) (*ids)[i] = (int64_t)labels[lims[0] + i];
  }
  *n = (int64_t)count;
done:
  faiss_RangeSearchResult_free(res);
  return err;
}

/* ---------------------------------------------------------------- files */

/* CRC-32C (Castagnoli), reflected, as in iSCSI/ext4: hardware instruction
 * where the compiler targets SSE4.2, a table otherwise. */
#if defined(__SSE4_2__) && defined(__x86_64__)
#include <nmmintrin.h>
static uint32_t crc32c(uint32_t crc, const void *buf, size_t len) {
  const uint8_t *p = buf;
  uint64_t c = ~crc;
  for (; len >= 8; p += 8, len -= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
  }
  uint32_t c32 = (uint32_t)c;
  for (; len > 0; p++, len--) c32 = _mm_crc32_u8(c32, *p);
  return ~c32;
}
#else
static uint32_t crc32c(uint32_t crc, const void *buf, size_t len) {
  static uint32_t table[256];
  static int ready; /* benign race: every thread writes the same table */
  if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int j = 0; j < 8; j++) c = (c >> 1) ^ (0x82F63B78u & -(c & 1));
      table[i] = c;
    }
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
  }
  const uint8_t *p = buf;
  crc = ~crc;
  while (len--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}
#endif

#define FILE_MAGIC "VLMIDX1\n"
#define FILE_VERSION 1u
#define HEADER_SIZE 64
/* The IVF's inverted lists live in a file of their own beside this one
 * (FAISS's OnDiskInvertedLists), mapped read-only at load. */
#define FILE_FLAG_ONDISK 1u
/* C++ faiss::IO_FLAG_READ_ONLY | IO_FLAG_SKIP_IVF_DATA (index_io.h): read
 * an on-disk lists header without mapping its file. */
#define IO_FLAGS_ONDISK_HEADER (2 | 8)

/* The fixed header, stored little-endian (this code assumes a
 * little-endian host, as FAISS's own format does). */
typedef struct {
  char magic[8];
  uint32_t version;
  uint32_t header_size;
  int32_t dim;
  int32_t metric;
  uint32_t factory_len;
  uint32_t factory_crc;
  uint64_t payload_len;
  uint32_t payload_crc;
  uint32_t flags;        /* FILE_FLAG_*; 0 in files before them */
  uint8_t reserved[12];
  uint32_t header_crc;   /* CRC-32C of the 60 bytes before it */
} file_header;

_Static_assert(sizeof(file_header) == HEADER_SIZE, "header layout");

/* A stdio stream over a file descriptor that checksums and counts what
 * passes through, so FAISS can write/read its payload with
 * faiss_write_index/faiss_read_index(FILE *) while we verify it. */
typedef struct {
  int fd;
  uint64_t bytes;
  uint64_t limit;   /* read side: never hand FAISS more than this */
  uint32_t crc;
  int error;        /* errno of the first failed read/write */
} crc_stream;

static ssize_t crc_stream_write(void *cookie, const char *buf, size_t len) {
  crc_stream *s = cookie;
  size_t done = 0;
  while (done < len) {
    ssize_t w = write(s->fd, buf + done, len - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      s->error = errno;
      break;
    }
    done += (size_t)w;
  }
  s->crc = crc32c(s->crc, buf, done);
  s->bytes += done;
  return done == len ? (ssize_t)len : -1;
}

static ssize_t crc_stream_read(void *cookie, char *buf, size_t len) {
  crc_stream *s = cookie;
  if (len > s->limit - s->bytes) len = (size_t)(s->limit - s->bytes);
  for (;;) {
    ssize_t r = read(s->fd, buf, len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      s->error = errno;
      return -1;
    }
    s->crc = crc32c(s->crc, buf, (size_t)r);
    s->bytes += (uint64_t)r;
    return r;
  }
}

static int write_all(int fd, const void *buf, size_t len, off_t off) {
  const char *p = buf;
  while (len > 0) {
    ssize_t w = pwrite(fd, p, len, off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    off += w;
    len -= (size_t)w;
  }
  return 0;
}

static int io_err(int e) { return e == ENOSPC || e == EDQUOT ? VLM_ENOSPACE : VLM_EIO; }

static int fsync_parent_dir(const char *path) {
  char *dir = strdup(path);
  if (dir == NULL) return -1;
  char *slash = strrchr(dir, '/');
  const char *name = dir;
  if (slash == dir) dir[1] = '\0';
  else if (slash) *slash = '\0';
  else name = ".";
  int fd = open(name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int rc = fd < 0 ? -1 : fsync(fd);
  int saved = errno;
  if (fd >= 0) close(fd);
  free(dir);
  errno = saved;
  return rc;
}

int vlm_index_write(const vlm_index *index, const char *path) {
  file_header h;
  crc_stream s = {.fd = -1};
  FILE *fp = NULL;
  char *tmp = NULL;
  int err = 0;
  size_t flen = strlen(index->factory);
  cookie_io_functions_t io = {.write = crc_stream_write};

  if (vlm_faiss_ivf_is_ondisk(index->faiss) == 2)
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: an index whose lists are "
                      "mapped from its own file cannot be written elsewhere",
                      path);
  tmp = malloc(strlen(path) + 5);
  if (tmp == NULL) return vlm_seterr(VLM_ENOMEM, "%s: out of memory", path);
  sprintf(tmp, "%s.tmp", path);
  s.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (s.fd < 0) {
    err = vlm_seterr(io_err(errno), "%s: %s", tmp, strerror(errno));
    goto fail;
  }
  /* The header goes in last, once the payload length and CRC are known. */
  if (write_all(s.fd, index->factory, flen, HEADER_SIZE) != 0 ||
      lseek(s.fd, HEADER_SIZE + (off_t)flen, SEEK_SET) < 0) {
    err = vlm_seterr(io_err(errno), "%s: %s", tmp, strerror(errno));
    goto fail;
  }
  fp = fopencookie(&s, "w", io);
  if (fp == NULL) {
    err = vlm_seterr(VLM_ENOMEM, "%s: fopencookie failed", tmp);
    goto fail;
  }
  if (faiss_write_index(index->faiss, fp) != 0) {
    err = s.error ? vlm_seterr(io_err(s.error), "%s: %s", tmp, strerror(s.error))
                  : faiss_fail(VLM_EINDEX, tmp);
    goto fail;
  }
  int rc = fclose(fp);
  fp = NULL;
  if (rc != 0 || s.error) {
    int e = s.error ? s.error : EIO;
    err = vlm_seterr(io_err(e), "%s: %s", tmp, strerror(e));
    goto fail;
  }

  memset(&h, 0, sizeof h);
  memcpy(h.magic, FILE_MAGIC, 8);
  h.version = FILE_VERSION;
  h.header_size = HEADER_SIZE;
  h.dim = index->dim;
  h.metric = index->metric;
  h.factory_len = (uint32_t)flen;
  h.factory_crc = crc32c(0, index->factory, flen);
  h.payload_len = s.bytes;
  h.payload_crc = s.crc;
  h.flags = vlm_faiss_ivf_is_ondisk(index->faiss) == 1 ? FILE_FLAG_ONDISK : 0;
  h.header_crc = crc32c(0, &h, offsetof(file_header, header_crc));
  if (write_all(s.fd, &h, sizeof h, 0) != 0 || fsync(s.fd) != 0) {
    err = vlm_seterr(io_err(errno), "%s: %s", tmp, strerror(errno));
    goto fail;
  }
  rc = close(s.fd);
  s.fd = -1;
  if (rc != 0) {
    err = vlm_seterr(io_err(errno), "%s: close: %s", tmp, strerror(errno));
    goto fail;
  }
  if (rename(tmp, path) != 0) {
    err = vlm_seterr(io_err(errno), "rename %s -> %s: %s", tmp, path,
                     strerror(errno));
    goto fail;
  }
  free(tmp);
  if (fsync_parent_dir(path) != 0)
    return vlm_seterr(VLM_EIO, "%s: fsync of directory: %s", path,
                      strerror(errno));
  return 0;

fail:
  if (fp) fclose(fp);
  if (s.fd >= 0) close(s.fd);
  unlink(tmp);
  free(tmp);
  return err;
}

static int read_exact(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t r = read(fd, p, len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) return 1; /* short file */
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

/* fd is positioned at the payload; leaves it there. */
static int verify_payload(int fd, const char *path, const file_header *h) {
  struct stat st;
  off_t start = HEADER_SIZE + (off_t)h->factory_len;
  if (fstat(fd, &st) != 0)
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  if ((uint64_t)st.st_size != (uint64_t)start + h->payload_len)
    return vlm_seterr(VLM_ECORRUPT, "%s: file is %lld bytes, header says "
                      "%llu", path, (long long)st.st_size,
                      (unsigned long long)start + h->payload_len);
  size_t cap = 1 << 20;
  char *buf = malloc(cap);
  if (buf == NULL) return vlm_seterr(VLM_ENOMEM, "%s: out of memory", path);
  uint32_t crc = 0;
  uint64_t left = h->payload_len;
  off_t off = start;
  int err = 0;
  while (left > 0) {
    size_t want = left < cap ? (size_t)left : cap;
    ssize_t r = pread(fd, buf, want, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      err = r < 0 ? vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno))
                  : vlm_seterr(VLM_ECORRUPT, "%s: truncated", path);
      break;
    }
    crc = crc32c(crc, buf, (size_t)r);
    left -= (uint64_t)r;
    off += r;
  }
  free(buf);
  if (err == 0 && crc != h->payload_crc)
    err = vlm_seterr(VLM_ECORRUPT, "%s: payload checksum mismatch", path);
  return err;
}

int vlm_index_file_is_ondisk(const char *path, int *ondisk) {
  file_header h;
  *ondisk = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return vlm_seterr(errno == ENOENT ? VLM_ENOTFOUND : VLM_EIO, "%s: %s",
                      path, strerror(errno));
  int rc = read_exact(fd, &h, sizeof h), err = 0;
  if (rc < 0)
    err = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  else if (rc > 0 || memcmp(h.magic, FILE_MAGIC, 8) != 0)
    err = vlm_seterr(VLM_EFORMAT, "%s: not a vlmdb index file", path);
  else if (h.header_crc != crc32c(0, &h, offsetof(file_header, header_crc)))
    err = vlm_seterr(VLM_ECORRUPT, "%s: header checksum mismatch", path);
  else if (h.version != FILE_VERSION || h.header_size != HEADER_SIZE)
    err = vlm_seterr(VLM_EVERSION, "%s: index format version %u, this "
                     "vlmdb reads %u", path, h.version, FILE_VERSION);
  else
    *ondisk = (h.flags & FILE_FLAG_ONDISK) != 0;
  close(fd);
  return err;
}

static int read_file(const char *path, int map_lists, vlm_index **out);

int vlm_index_read(const char *path, vlm_index **out) {
  return read_file(path, 0, out);
}

int vlm_index_read_mmap(const char *path, vlm_index **out) {
  return read_file(path, 1, out);
}

/* C++ faiss::IO_FLAG_MMAP (index_io.h: IO_FLAG_SKIP_IVF_DATA | 0x646f0000,
 * the "od" of OnDiskInvertedLists' fourcc "ilod"): an ordinary IVF file's
 * lists are mapped from the file in place.  The C API's FAISS_IO_FLAG_MMAP
 * is 1, which C++ reads as no flag at all (everything loaded into RAM). */
#define IO_FLAG_MMAP_CXX 0x646f0008

/* The payload of fd (at start) read by FAISS from a real FILE * (the
 * mapping hook needs its descriptor and offsets), its lists mapped. */
static int read_mapped(int fd, off_t start, const char *path,
                       FaissIndex **faiss) {
  int fd2 = dup(fd);
  FILE *fp = fd2 < 0 ? NULL : fdopen(fd2, "r");
  if (fp == NULL) {
    int e = errno;
    if (fd2 >= 0) close(fd2);
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(e));
  }
  int err = 0;
  if (fseeko(fp, start, SEEK_SET) != 0)
    err = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  else if (faiss_read_index(fp, IO_FLAG_MMAP_CXX, faiss) != 0)
    err = faiss_fail(VLM_ECORRUPT, path);
  fclose(fp);
  return err;
}

static int read_file(const char *path, int map_lists, vlm_index **out) {
  file_header h;
  crc_stream s = {.fd = -1};
  FILE *fp = NULL;
  FaissIndex *faiss = NULL;
  char *factory = NULL;
  int err = 0, rc;
  cookie_io_functions_t io = {.read = crc_stream_read};

  *out = NULL;
  s.fd = open(path, O_RDONLY | O_CLOEXEC);
  if (s.fd < 0)
    return vlm_seterr(errno == ENOENT ? VLM_ENOTFOUND : VLM_EIO, "%s: %s",
                      path, strerror(errno));
  rc = read_exact(s.fd, &h, sizeof h);
  if (rc < 0) {
    err = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
    goto fail;
  }
  if (rc > 0 || memcmp(h.magic, FILE_MAGIC, 8) != 0) {
    err = vlm_seterr(VLM_EFORMAT, "%s: not a vlmdb index file", path);
    goto fail;
  }
  if (h.header_crc != crc32c(0, &h, offsetof(file_header, header_crc))) {
    err = vlm_seterr(VLM_ECORRUPT, "%s: header checksum mismatch", path);
    goto fail;
  }
  if (h.version != FILE_VERSION || h.header_size != HEADER_SIZE) {
    err = vlm_seterr(VLM_EVERSION, "%s: index format version %u, this "
                     "vlmdb reads %u", path, h.version, FILE_VERSION);
    goto fail;
  }
  if (h.factory_len == 0 || h.factory_len > MAX_FACTORY_LEN || h.dim <= 0 ||
      (h.flags & ~FILE_FLAG_ONDISK) != 0 ||
      (h.metric != VLM_METRIC_IP && h.metric != VLM_METRIC_L2)) {
    err = vlm_seterr(VLM_ECORRUPT, "%s: bad header fields", path);
    goto fail;
  }
  factory = calloc(1, h.factory_len + 1);
  if (factory == NULL) {
    err = vlm_seterr(VLM_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  rc = read_exact(s.fd, factory, h.factory_len);
  if (rc != 0 || crc32c(0, factory, h.factory_len) != h.factory_crc ||
      strlen(factory) != h.factory_len) {
    err = rc < 0 ? vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno))
                 : vlm_seterr(VLM_ECORRUPT, "%s: bad factory string", path);
    goto fail;
  }

  /* Verify length and CRC before FAISS sees a byte: 1.7.3's read_index
   * leaks what it built so far when it throws on a truncated file, and a
   * flipped size field can make it allocate without bound.  (It streams
   * the file through a 1 MiB buffer: nothing is held.) */
  err = verify_payload(s.fd, path, &h);
  if (err) goto fail;

  if (map_lists && !(h.flags & FILE_FLAG_ONDISK)) {
    err = read_mapped(s.fd, HEADER_SIZE + (off_t)h.factory_len, path, &faiss);
    if (err) goto fail;
    close(s.fd);
    s.fd = -1;
    if (faiss_Index_d(faiss) != h.dim ||
        (int)faiss_Index_metric_type(faiss) !=
            (h.metric == VLM_METRIC_IP ? METRIC_INNER_PRODUCT : METRIC_L2)) {
      err = vlm_seterr(VLM_ECORRUPT, "%s: FAISS index (dim %d) disagrees "
                       "with header (dim %d)", path, faiss_Index_d(faiss),
                       h.dim);
      goto fail;
    }
    if (vlm_faiss_ivf_check_mapped(faiss) != 0) {
      err = vlm_seterr(VLM_ECORRUPT, "%s: %s", path,
                       vlm_faiss_ondisk_last_error());
      goto fail;
    }
    struct stat st;
    uint64_t mapped = 0;
    if (vlm_faiss_ivf_is_ondisk(faiss) && stat(path, &st) == 0)
      mapped = (uint64_t)st.st_size;
    err = make_index(factory, h.dim, (vlm_metric)h.metric, faiss, out);
    if (err == 0) (*out)->mapped_bytes = mapped;
    free(factory);
    return err;
  }

  s.limit = h.payload_len;
  fp = fopencookie(&s, "r", io);
  if (fp == NULL) {
    err = vlm_seterr(VLM_ENOMEM, "%s: fopencookie failed", path);
    goto fail;
  }
  if (faiss_read_index(fp, h.flags & FILE_FLAG_ONDISK ? IO_FLAGS_ONDISK_HEADER
                                                     : 0,
                       &faiss) != 0) {
    err = s.error ? vlm_seterr(VLM_EIO, "%s: %s", path, strerror(s.error))
                  : faiss_fail(VLM_ECORRUPT, path);
    goto fail;
  }
  /* Everything up to payload_len must have been FAISS's: drain what stdio
   * has not handed over yet so the CRC covers the whole payload. */
  int64_t extra = 0;
  while (fgetc(fp) != EOF) extra++;
  if (s.error) {
    err = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(s.error));
    goto fail;
  }
  if (extra != 0 || s.bytes != h.payload_len || s.crc != h.payload_crc) {
    err = vlm_seterr(VLM_ECORRUPT, "%s: payload checksum or length mismatch "
                     "(%llu of %llu bytes)", path, (unsigned long long)s.bytes,
                     (unsigned long long)h.payload_len);
    goto fail;
  }
  if (faiss_Index_d(faiss) != h.dim ||
      (int)faiss_Index_metric_type(faiss) !=
          (h.metric == VLM_METRIC_IP ? METRIC_INNER_PRODUCT : METRIC_L2)) {
    err = vlm_seterr(VLM_ECORRUPT, "%s: FAISS index (dim %d) disagrees with "
                     "header (dim %d)", path, faiss_Index_d(faiss), h.dim);
    goto fail;
  }
  fclose(fp);
  fp = NULL;
  close(s.fd);
  s.fd = -1;
  uint64_t mapped = 0;
  if (h.flags & FILE_FLAG_ONDISK) {
    /* The list file can be far larger than memory: it is mapped, never
     * read here (its size and every list's bounds are checked). */
    if (vlm_faiss_ivf_is_ondisk(faiss) != 1) {
      err = vlm_seterr(VLM_ECORRUPT, "%s: flagged on-disk, but its lists "
                       "are not", path);
      goto fail;
    }
    char *dir = strdup(path);
    if (dir == NULL) {
      err = vlm_seterr(VLM_ENOMEM, "%s: out of memory", path);
      goto fail;
    }
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    else strcpy(dir, ".");
    rc = vlm_faiss_ivf_map_ondisk(faiss, dir, &mapped);
    free(dir);
    if (rc != 0) {
      err = vlm_seterr(VLM_ECORRUPT, "%s: inverted-list file: %s", path,
                       vlm_faiss_ondisk_last_error());
      goto fail;
    }
  }
  if (!(h.flags & FILE_FLAG_ONDISK)) (void)vlm_faiss_hugepages(faiss);
  err = make_index(factory, h.dim, (vlm_metric)h.metric, faiss, out);
  if (err == 0) {
    (*out)->mapped_bytes = mapped;
    (*out)->huge_ntotal = faiss_Index_ntotal(faiss);
  }
  free(factory);
  return err;

fail:
  if (fp) fclose(fp);
  if (s.fd >= 0) close(s.fd);
  if (faiss) faiss_Index_free(faiss);
  free(factory);
  return err;
}
