/* vlm_index.h - a vector index, a thin C wrapper over the FAISS C API.
 *
 * All vlmdb code reaches FAISS through this header (and this module calls
 * only faiss_* C API functions).  A vlm_index is not safe for a write
 * (train, add, remove) concurrent with anything else; concurrent searches
 * are safe.  The caller (db/) guards it with a rwlock.
 *
 * Every function returning int returns 0 or a negative VLM_E* code and
 * sets vlm_errmsg() (FAISS's own message is included where FAISS failed).
 * A failed call leaves the index as it was, except that a failed add or
 * remove inside FAISS may have applied part of the batch (FAISS gives no
 * transaction): db/ treats the index as a checkpoint and rebuilds it.
 *
 * What each kind supports (the factory string picks the kind):
 *
 *   kind          factory examples        ids        remove  bitmap  tuning
 *   flat          "Flat"                  IDMap      yes     yes     -
 *   hnsw          "HNSW32", "HNSW32,SQ8"  IDMap      NO      yes     ef_search
 *   ivf           "IVF64,Flat",           native     yes     yes     nprobe
 *                 "IVF256,PQ32", "IVF1024,SQ8"
 *   other         "SQ8", "PQ16", "LSH"    IDMap      yes*    some*   -
 *
 *   (* checked on 1.7.3: SQ8 and PQ16 remove; a bitmap works on SQ8 but
 *   not on PQ16 or LSH, where vlm_index_search returns VLM_EUNSUPPORTED
 *   whenever a bitmap is given.  db/ should stick to the first three.)
 *
 * - ids: flat/hnsw/other are wrapped as "IDMap,<factory>" so they accept
 *   caller ids; IVF stores ids itself.  Ids must be >= 0 (-1 marks "no
 *   result").  FAISS does not check uniqueness: adding an id twice stores
 *   two vectors under it, so remove before re-adding (upsert).
 * - remove: HNSW cannot remove vectors (FAISS's graph has no delete);
 *   vlm_index_remove returns VLM_EUNSUPPORTED without touching the index.
 *   For HNSW, keep a tombstone set, pass the live ids as the search bitmap
 *   and rebuild the index to compact.  vlm_index_can_remove() tells which.
 *   Removal is O(ntotal) per call for every kind (one batch per call).
 * - bitmap: an ID selector over the caller's ids, applied inside the FAISS
 *   search (not a post-filter), so k results come back whenever k allowed
 *   vectors are reachable.  For HNSW a very selective bitmap can make the
 *   graph walk return fewer than k (ids -1): widen ef_search and retry.
 *   For IVF only the nprobe probed lists are scanned.
 * - tuning: ef_search (HNSW, default 16, FAISS's) and nprobe (IVF, default
 *   the index's nprobe, 1 unless the factory string set it) apply to one
 *   call only, so searches with different parameters may run concurrently.
 *   Over Debian's FAISS 1.7.3 (which ignores the per-call value for its
 *   queue size) the shim runs one-query HNSW searches itself, with the
 *   call's ef_search and a visited table kept per thread, so they all run
 *   in parallel whatever their ef_search; multi-query calls go to FAISS
 *   with efSearch set on the index for their duration: those with the
 *   same ef_search run in parallel, ones with different values take
 *   turns.  A real libfaiss_c >= 1.7.4 needs none of that.
 * - PQ: "PQ{m}" is built as FAISS's "PQ{m}np" (no polysemous training,
 *   which costs minutes and serves only polysemous search, unused here).
 *   PQ codes are lossy: recall@10 of IVF..,PQ.. plateaus well below 1.
 * - threads: FAISS uses OpenMP inside add, train and multi-query search.
 *   On a machine shared with other work, run with OMP_WAIT_POLICY=passive
 *   (libgomp's default spin-waiting made PQ training 14x slower here).
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
/* Train on n vectors.  A no-op returning 0 when the index is already
 * trained.  VLM_EINVAL when n < vlm_index_train_size() (FAISS's k-means
 * quality floor, which it would otherwise only warn about on stderr). */
int vlm_index_train(vlm_index *index, int64_t n, const float *x);

/* 1 when vlm_index_remove can remove from this index, 0 when it returns
 * VLM_EUNSUPPORTED (HNSW kinds). */
int vlm_index_can_remove(const vlm_index *index);

/* 1 when a search is exhaustive (Flat: every stored vector scored, any
 * effort setting ignored, a bitmap only skips ids), 0 otherwise. */
int vlm_index_is_exact(const vlm_index *index);

/* 1 when a search with a bitmap can score every allowed vector exactly
 * from the index's own flat store (vlm_index_params.scan: HNSW over float
 * vectors, "HNSW32" or "HNSW32,Flat", with Debian's FAISS), 0 otherwise. */
int vlm_index_can_scan(const vlm_index *index);

/* Add n vectors x[n * dim] under ids[n] (each >= 0).  VLM_ESTATE before
 * training, VLM_ENUMERIC if a component is NaN or Inf (nothing added). */
int vlm_index_add(vlm_index *index, int64_t n, const float *x,
                  const int64_t *ids);
/* Make room for n more vectors in a Flat index, so that adding them in
 * chunks does not regrow its storage each time (a no-op for other kinds).
 * VLM_ENOMEM when the room cannot be had (nothing changed). */
int vlm_index_reserve(vlm_index *index, int64_t n);
/* Remove ids; *removed (may be NULL) gets how many vectors were removed
 * (ids not present are ignored).  VLM_EUNSUPPORTED for HNSW kinds. */
int vlm_index_remove(vlm_index *index, int64_t n, const int64_t *ids,
                     int64_t *removed);

/* Per-query parameters; zero fields keep the index's defaults. */
typedef struct {
  int ef_search;          /* HNSW */
  int nprobe;             /* IVF */
  const uint8_t *bitmap;  /* optional ID selector: id i allowed iff bit
                             (bitmap[i >> 3] >> (i & 7)) & 1 */
  int64_t bitmap_bits;    /* ids >= bitmap_bits are not allowed */
  int has_hidden;         /* HNSW, one-query calls: search as if the vector
                             of hidden_id were not in the graph (the walk
                             neither visits nor returns it).  db/tune.c
                             measures recall with stored vectors as
                             held-out queries this way.  Ignored over a
                             real libfaiss_c, by multi-query calls and
                             by other kinds. */
  int64_t hidden_id;
  int scan;               /* HNSW with a bitmap, where vlm_index_can_scan:
                             one exact pass over the vectors the bitmap
                             allows instead of the graph walk (ef_search
                             ignored) */
} vlm_index_params;

/* k nearest neighbours of nq queries[nq * dim], best first.  scores[nq *
 * k] are similarities for IP and squared distances for L2; ids[nq * k] is
 * -1 (and its score -FLT_MAX for IP, FLT_MAX for L2) where fewer than k
 * results exist.  params may be NULL.  VLM_ESTATE before training,
 * VLM_ENUMERIC for a NaN/Inf query, VLM_EINVAL for k < 1.  Safe to call
 * from many threads at once.  FAISS parallelises over the nq queries with
 * OpenMP; callers searching from many threads should set OMP_NUM_THREADS
 * (or omp_set_num_threads) so the two do not oversubscribe. */
int vlm_index_search(const vlm_index *index, int64_t nq, const float *queries,
                     int k, const vlm_index_params *params, float *scores,
                     int64_t *ids);

/* Range search of one query: every vector whose score is at least
 * min_score (IP; L2: whose squared distance is at most min_score), into
 * *scores and *ids (malloc'd, *n of them, unordered; both NULL when *n is
 * 0; free with free()).  Only the flat kind answers it exactly, by one
 * scan (FAISS range_search); the others return VLM_EUNSUPPORTED
 * (vlm_index_can_range says which): HNSW's and IVF's range searches are
 * approximate in ways a k-NN search with a growing k states better.  The
 * result holds every match, so its size is bounded only by the index's:
 * callers cap it by the index size they allow.  VLM_ENUMERIC for a
 * NaN/Inf query or threshold. */
int vlm_index_can_range(const vlm_index *index);
int vlm_index_range_search(const vlm_index *index, const float *query,
                           float min_score, float **scores, int64_t **ids,
                           int64_t *n);
/* Merge IVF parts into one index whose inverted lists live in one file,
 * lists_path, the LAION way (a new file: one already of that name is
 * unlinked, not rewritten, so a database that adopted it and holds a hard
 * link to it keeps its contents): into is an empty, trained index and
 * every part a copy of it (same factory, centroids and code book:
 * vlm_index_read of one trained file, then adds), its ids moved up by
 * id_offsets[i] (ids must stay unique across parts; the caller
 * picks offsets that keep them so).  FAISS's
 * OnDiskInvertedLists::merge_from copies list by list; into then holds
 * every part's vectors and can be searched and written.  Write into to a
 * path in the directory of lists_path: vlm_index_read finds the list file
 * by its base name beside the index file.  VLM_EUNSUPPORTED for kinds
 * other than IVF, VLM_EMISMATCH for parts trained otherwise (or a part
 * that is itself a merge), VLM_EIO-ish failures as VLM_EMISMATCH with
 * FAISS's reason.  The parts are not changed. */
int vlm_index_merge(vlm_index *into, vlm_index *const *parts,
                    const int64_t *id_offsets, int nparts,
                    const char *lists_path);

/* 1 when the index's inverted lists are mapped from disk, a merged list
 * file or (vlm_index_read_mmap) its own file (read-only:
 * add and remove return VLM_EREADONLY, can_remove says 0). */
int vlm_index_is_ondisk(const vlm_index *index);
/* Size of the list file vlm_index_read mapped (0 when in RAM). */
uint64_t vlm_index_mapped_bytes(const vlm_index *index);
/* The list file of an index with one (NULL otherwise): where it was
 * mapped from, or the name set_lists_path gave.  set_lists_path renames
 * it for the next vlm_index_write (only the base name is kept there); the
 * caller moves or links the file itself.  VLM_EINVAL without one. */
const char *vlm_index_lists_path(const vlm_index *index);
/* How many of an IVF index's vectors have an id whose bit is not set in
 * bitmap[nbits] (or that appears twice), and the first such id (-1 when
 * none); reads every list's ids.  VLM_EUNSUPPORTED for other kinds. */
int vlm_index_ids_outside(const vlm_index *index, const uint8_t *bitmap,
                          int64_t nbits, int64_t *outside, int64_t *first);
int vlm_index_set_lists_path(vlm_index *index, const char *path);

/* Persist to / load from a file.  The file is a 64-byte vlmdb header
 * (magic "VLMIDX1\n", format version, dim, metric, factory string length,
 * FAISS payload length and CRC-32C, header CRC-32C), the factory string,
 * then the index in FAISS's own format (faiss_write_index).  write goes to
 * path + ".tmp", fsyncs it, renames it over path and fsyncs the directory,
 * so a crash leaves either the old or the new file, never a mix.
 * An index with on-disk lists (vlm_index_merge) writes only its header
 * part (coarse quantizer, code book, list offsets; flag bit 0 in the
 * header) and names the list file; read maps that file read-only from the
 * index file's directory, checking its size and every list's bounds but
 * not reading it (it is where an 800 GB index lives; the small index file
 * keeps its full CRC check), so opening costs no memory for the lists:
 * pages come in as searches touch them and the kernel may drop them.
 * read returns VLM_EIO (cannot open/read; VLM_ENOTFOUND if missing),
 * VLM_EFORMAT (not a vlmdb index file), VLM_EVERSION (newer format),
 * VLM_ECORRUPT (checksum or length mismatch, FAISS refused the payload);
 * on any of these db/ rebuilds the index from its vectors.  write returns
 * VLM_EIO or VLM_ENOSPACE and leaves path untouched. */
int vlm_index_write(const vlm_index *index, const char *path);
/* Whether the index file at path names a list file of its own (header
 * flag bit 0), from its 64-byte header alone (its checksum checked): 0
 * with *ondisk set, or read's errors. */
int vlm_index_file_is_ondisk(const char *path, int *ondisk);
int vlm_index_read(const char *path, vlm_index **out);
/* read, with an ordinary IVF file's inverted lists mapped in place
 * (read-only) instead of loaded: FAISS's C++ IO_FLAG_MMAP, 0x646f0008 (the
 * C API's FAISS_IO_FLAG_MMAP, 1, loads everything).  The file's CRC is
 * still checked first, streaming.  The index then refuses add and remove
 * (VLM_EREADONLY) and write (VLM_EUNSUPPORTED); it can be a part of
 * vlm_index_merge, which is how a merge of large parts stays out of RAM.
 * Other kinds (and on-disk merged files) read as with vlm_index_read. */
int vlm_index_read_mmap(const char *path, vlm_index **out);

#endif
