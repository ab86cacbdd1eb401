/* vlm_index.h - a vector index, a thin C wrapper over the FAISS C API.
 *
 * All vlmdb code reaches FAISS through this header (and this module calls
 * only faiss_* C API functions).  A vlm_index is not safe for a write
 * (train, add, remove) concurrent with anything else; concurrent searches
 * are safe.  The caller (db/) guards it with a rwlock.
 */
#ifndef VLM_INDEX_H
#define VLM_INDEX_H

#include <stddef.h>
#include <stdint.h>

typedef struct vlm_index vlm_index;

typedef enum {
  VLM_METRIC_IP = 0, /* inner product (cosine over unit vectors) */
  VLM_METRIC_L2 = 1
} vlm_metric;

/* Create an empty index from a FAISS factory string ("Flat", "HNSW32",
 * "IVF64,Flat", "IVF256,PQ32", "IVF1024,SQ8", ...).  The index accepts
 * caller-chosen 64-bit ids (wrapped in an IDMap where the kind needs it). */
int vlm_index_create(const char *factory, int dim, vlm_metric metric,
                     vlm_index **out);
void vlm_index_free(vlm_index *index); /* accepts NULL */

int vlm_index_dim(const vlm_index *index);
int64_t vlm_index_count(const vlm_index *index);
const char *vlm_index_factory(const vlm_index *index);
vlm_metric vlm_index_metric(const vlm_index *index);

/* 1 when the index must be trained before vectors can be added. */
int vlm_index_is_trained(const vlm_index *index);
/* Minimum number of training vectors this kind wants (e.g. 39 * nlist for
 * IVF, 2^nbits * 39 for PQ); 0 when no training is needed. */
int64_t vlm_index_train_size(const vlm_index *index);
int vlm_index_train(vlm_index *index, int64_t n, const float *x);

int vlm_index_add(vlm_index *index, int64_t n, const float *x,
                  const int64_t *ids);
/* Remove ids; *removed (may be NULL) gets how many were present. */
int vlm_index_remove(vlm_index *index, int64_t n, const int64_t *ids,
                     int64_t *removed);

/* Per-query parameters; zero fields keep the index's defaults. */
typedef struct {
  int ef_search;          /* HNSW */
  int nprobe;             /* IVF */
  const uint8_t *bitmap;  /* optional ID selector: id i allowed iff bit
                             (bitmap[i >> 3] >> (i & 7)) & 1 */
  int64_t bitmap_bits;    /* ids >= bitmap_bits are not allowed */
} vlm_index_params;

/* k nearest neighbours of nq queries.  scores[nq * k] are similarities
 * for IP and squared distances for L2; ids[nq * k] is -1 where fewer than
 * k results exist.  Safe to call from many threads at once. */
int vlm_index_search(const vlm_index *index, int64_t nq, const float *queries,
                     int k, const vlm_index_params *params, float *scores,
                     int64_t *ids);

/* Persist to / load from a file (FAISS's own format).  write goes to
 * path + ".tmp", fsyncs, then renames, so a crash leaves the old file. */
int vlm_index_write(const vlm_index *index, const char *path);
int vlm_index_read(const char *path, vlm_index **out);

#endif
