/* vlmdb.h - the vlmdb database: items with CLIP vectors, payloads and
 * typed metadata, in one directory, answering filtered k-NN queries.
 *
 * A database directory holds meta.sqlite (metadata, filters, FTS5),
 * payload.lmdb/ (payloads and vectors: the source of truth), the FAISS
 * index file (a checkpoint of LMDB's vectors) and manifest.json.
 *
 * Threads: one handle may be shared by many threads.  Searches and gets
 * run concurrently; writes (put, delete, checkpoint, reindex) are
 * serialized internally and a search never sees half a batch.
 * Every function returns 0 or a negative VLM_E* code and on failure sets
 * vlm_errmsg() with the key, file or expression at fault.
 */
#ifndef VLMDB_H
#define VLMDB_H

#include <stddef.h>
#include <stdint.h>

#include "vlm_slot.h"

typedef struct vlm_db vlm_db;

typedef enum {
  VLM_FIELD_TEXT = 0,
  VLM_FIELD_INT = 1,
  VLM_FIELD_REAL = 2
} vlm_field_type;

typedef struct {
  const char *name;    /* [A-Za-z_][A-Za-z0-9_]*, not a reserved name */
  vlm_field_type type;
} vlm_field;

/* Parse "name:type" (type text|int|real) into *out.  out->name points to
 * thread-local storage that stays valid for the next 63 calls on the
 * calling thread (enough for every field of a database; vlm_db_create
 * copies the names).  VLM_EINVAL with a message on a bad spec. */
int vlm_field_parse(const char *spec, vlm_field *out);

typedef struct {
  int dim;                   /* vector dimension, required */
  const char *index_factory; /* NULL = "HNSW32" */
  const char *model_id;      /* vlm_clip_model_id of the model, required */
  const char *model_dir;     /* where the model was loaded from (recorded
                                for information; may be NULL) */
  const vlm_field *fields;   /* declared metadata fields */
  int nfields;
  /* Fields added later; zero keeps the default. */
  const char *model_family;  /* vlm_clip_family of the model: 1..31 of
                                [a-z0-9_]; NULL = "clip" */
  const char *image_orientation; /* the EXIF orientation of photos:
                                "apply" (turn them upright first),
                                "ignore" (the stored pixels), or NULL /
                                "model" (the model's own setting); every
                                model load for the database must use it
                                (it enters the model id when it applies) */
  /* A shard of a cluster (vlm_slot.h), when nslot_ranges > 0: the
   * database then holds only keys of these slots, and every write of a key
   * of another slot fails with VLM_EWRONGSHARD naming the key and its
   * slot.  The ranges need not be sorted but must be disjoint, within
   * 0..VLM_SLOTS-1, at most VLM_CLUSTER_MAX_RANGES. */
  const char *cluster_digest; /* the map's digest (vlm_cluster.digest) */
  int shard, nshards;         /* this shard's index among nshards */
  const vlm_slot_range *slot_ranges;
  int nslot_ranges;
  int keep_images;            /* 1 = the database keeps images: the writers
                                that take an image to embed (vlmdb ingest,
                                the server's ADD, UPSERT and UPDATE with
                                IMAGE, the HTTP item writes) store its bytes
                                with the item (vlm_item.image), as
                                `ingest --keep-images` does.  Recorded in
                                the manifest; vlm_db_set_keep_images
                                changes it.  Put itself stores the bytes it
                                is given either way. */
} vlm_db_config;

/* Receives warnings of open (an index file rebuilt from LMDB, recovery
 * replayed batches).  Called on the opening thread. */
typedef void (*vlm_db_warn_fn)(void *arg, const char *msg);

typedef struct {
  int readonly;              /* open for reading only */
  const char *expect_model_id; /* if non-NULL, refuse (VLM_EMISMATCH) a
                                  database made with another model */
  uint64_t map_size;         /* LMDB map size; 0 = default (64 GiB) */
  size_t max_payload;        /* cap on one item's payload bytes; 0 = 16 MiB */
  /* Fields added later; zero keeps the default. */
  int expect_dim;            /* if non-zero, refuse (VLM_EMISMATCH) a
                                database of another dimension */
  vlm_db_warn_fn warn;       /* NULL = print warnings to stderr as
                                "vlmdb: warning: ..." */
  void *warn_arg;
  int async_index;           /* 1 = put returns once LMDB and SQLite are
                                committed; a background thread adds the
                                vectors to FAISS (searches cover the
                                not-yet-indexed tail exactly meanwhile) */
  int mmap_index;            /* 1 = map an IVF index's inverted lists
                                from its file instead of loading them
                                (vlm_index_read_mmap): resident memory
                                stays far below the index's size.  Only
                                with readonly (VLM_EINVAL otherwise).  An
                                index `vlmdb merge` gave the database
                                (lists in a file of their own) is always
                                mapped. */
  unsigned defer_index;      /* bit 0 image, bit 1 text: this handle adds
                                none of that modality's vectors to its
                                FAISS index (nor trains or builds it);
                                they are searched exactly as the pending
                                tail.  For `vlmdb merge`, whose database
                                takes a merged index afterwards
                                (vlm_db_adopt_index) instead of building
                                one in memory.  A later open without it
                                indexes them. */
} vlm_db_open_options;

/* Create a new database in dir (created if missing, must be empty). */
int vlm_db_create(const char *dir, const vlm_db_config *config,
                  vlm_db **out);
/* Open an existing database, recovering from a crash if needed (see the
 * README's data-safety section).  opts may be NULL. */
int vlm_db_open(const char *dir, const vlm_db_open_options *opts,
                vlm_db **out);
/* Checkpoint (unless readonly) and close.  Accepts NULL. */
void vlm_db_close(vlm_db *db);
/* 1 when db was opened read-only (writes fail with VLM_ESTATE). */
int vlm_db_readonly(const vlm_db *db);

/* The most bytes of one item's caption, source and meta_json, each: put
 * refuses a longer one (VLM_ETOOBIG, naming the key and the field), and
 * every reader accepts values up to it.  The whole payload is further
 * capped by vlm_db_open_options.max_payload. */
#define VLM_DB_MAX_TEXT (1u << 20)

/* The most results one search (k) or one eval cut-off (K) may ask for. */
#define VLM_DB_MAX_K 10000

/* A key is 1..VLM_DB_MAX_KEY bytes of UTF-8; a database declares at most
 * VLM_DB_MAX_FIELDS fields, each named in fewer than VLM_DB_FIELD_NAME
 * bytes. */
#define VLM_DB_MAX_KEY 511
#define VLM_DB_MAX_FIELDS 64
#define VLM_DB_FIELD_NAME 64

/* One item to write.  At least one vector is required. */
typedef struct {
  const char *key;         /* unique, non-empty UTF-8, at most
                              VLM_DB_MAX_KEY bytes */
  const float *image_vec;  /* dim floats or NULL */
  const float *text_vec;   /* dim floats or NULL */
  const char *caption;     /* text of the item, indexed by FTS5; may be NULL;
                              at most VLM_DB_MAX_TEXT bytes */
  const char *source;      /* source URI or path; may be NULL; at most
                              VLM_DB_MAX_TEXT bytes */
  const void *thumb;       /* JPEG thumbnail bytes; may be NULL */
  size_t thumb_len;
  const char *meta_json;   /* JSON object or NULL: declared fields become
                              SQLite columns, all of it stays in the
                              payload; at most VLM_DB_MAX_TEXT bytes */
  /* Fields added later; zero keeps the default. */
  const void *image;       /* the original image file's bytes, kept so the
                              item can be embedded again by another model
                              without the file (`ingest --keep-images`,
                              `vlmdb reembed`); may be NULL.  Stored as
                              given (not checked as an image); counts
                              towards max_payload.  A record holding them
                              cannot be read by vlmdb builds from before
                              this field.  In an update (VLM_WRITE_UPDATE)
                              NULL keeps the stored bytes and a non-NULL
                              image with image_len 0 removes them (a new
                              picture whose bytes are not to be kept). */
  size_t image_len;
} vlm_item;

/* put flags */
#define VLM_PUT_UPSERT 1u    /* replace an existing key (else it is skipped) */

/* Write a batch atomically and durably: when put returns 0, every item is
 * committed in all stores and survives kill -9 or power loss.  A key that
 * already exists is skipped (or replaced with VLM_PUT_UPSERT).  Items
 * that fail validation (bad key, NaN vector, payload too big, duplicate key
 * within the batch, wrong meta type) fail the whole batch with an error
 * naming the key, and nothing is written.  *written (may be NULL) gets the
 * number of items inserted or replaced. */
int vlm_db_put(vlm_db *db, const vlm_item *items, int n, unsigned flags,
               int *written);

/* Put for `vlmdb merge`: insert items under the given ids (positive,
 * increasing, each at or above the database's next id; the next id then
 * follows the last), so the merged database's ids are the dense global
 * ids its merged index holds.  Items whose key exists are skipped, as by
 * put without VLM_PUT_UPSERT (a rerun of a killed merge passes the same
 * items again); an id below the next id fails the batch with VLM_EINVAL.
 * Atomic and durable like put. */
int vlm_db_put_at(vlm_db *db, const vlm_item *items, const uint64_t *ids,
                  int n, int *written);

/* Delete keys (missing keys are ignored); *deleted (may be NULL) gets how
 * many existed.  Atomic and durable like put. */
int vlm_db_delete(vlm_db *db, const char *const *keys, int n, int *deleted);

/* Puts and deletes in one batch (the server's MULTI/EXEC): applied in
 * order, so a later op sees the earlier ones (ADD k, DELETE k leaves no k;
 * a key may appear many times), and atomic and durable like put: every op
 * is validated first and any refusal fails the whole batch, nothing
 * written; once acknowledged, all of it survives a crash, and a crash
 * before leaves none of it.  changed (may be NULL) gets n flags: op i
 * added, replaced or deleted an item (0: an ADD of an existing key, a
 * DELETE of a missing one); all 0 on failure. */
typedef enum {
  VLM_WRITE_ADD = 0,    /* insert item; skipped if its key exists */
  VLM_WRITE_UPSERT = 1, /* insert or replace item */
  VLM_WRITE_DELETE = 2, /* delete item.key; the rest of item is ignored */
  VLM_WRITE_UPDATE = 3  /* change only what item names (non-NULL caption,
                           source, meta_json, thumb, vectors) of an
                           existing key, keeping the rest; skipped if the
                           key does not exist.  A new meta_json replaces
                           the whole metadata object. */
} vlm_write_kind;
typedef struct {
  vlm_write_kind kind;
  vlm_item item;
} vlm_write_op;
int vlm_db_write(vlm_db *db, const vlm_write_op *ops, int n, int *changed);

/* 1 if key exists, 0 if not, negative on error. */
int vlm_db_exists(vlm_db *db, const char *key);

/* A stored item, owned by the caller: free with vlm_record_free. */
typedef struct {
  char *key;
  int dim;
  float *image_vec;   /* NULL if absent */
  float *text_vec;    /* NULL if absent */
  char *caption;      /* NULL if absent */
  char *source;       /* NULL if absent */
  uint8_t *thumb;     /* NULL if absent */
  size_t thumb_len;
  char *meta_json;    /* the item's metadata object, "{}" if none */
  uint64_t id;        /* its internal id (FAISS id; never reused) */
  size_t image_len;   /* bytes of its kept original image, 0 if none (not
                         copied into the record: vlm_db_get_image) */
  /* Fields added later. */
  uint8_t *image;     /* the kept bytes themselves (image_len of them) when
                         asked for with VLM_GET_IMAGE, else NULL */
} vlm_record;

/* Get an item by key; VLM_ENOTFOUND if absent, VLM_ECORRUPT if its record
 * fails its checksum. */
int vlm_db_get(vlm_db *db, const char *key, vlm_record **out);
void vlm_record_free(vlm_record *rec); /* accepts NULL */

/* What vlm_db_get2 and vlm_db_foreach2 copy beyond vlm_db_get's record. */
#define VLM_GET_IMAGE 1u /* the kept image bytes, into vlm_record.image */

/* vlm_db_get with flags: one read of the record, so the kept bytes are
 * those of the same version of the item as the rest (for the commands
 * that copy items whole: merge, cluster move).  Errors as vlm_db_get;
 * VLM_ENOMEM when the bytes do not fit in memory. */
int vlm_db_get2(vlm_db *db, const char *key, unsigned flags,
                vlm_record **out);

/* The original image bytes kept with key's item (vlm_item.image) into
 * *data (malloc'd: free() it) and *len; both NULL / 0 when the item keeps
 * none.  VLM_ENOTFOUND if the key is absent, VLM_ECORRUPT if the record
 * fails its checksum. */
int vlm_db_get_image(vlm_db *db, const char *key, uint8_t **data,
                     size_t *len);

typedef enum {
  VLM_TARGET_ANY = 0,   /* match image and text vectors (best per key) */
  VLM_TARGET_IMAGE = 1,
  VLM_TARGET_TEXT = 2
} vlm_target;

typedef struct {
  int k;                  /* results wanted, 1..VLM_DB_MAX_K */
  const char *filter;     /* SQL boolean expression over declared fields and
                             `key`, or NULL */
  vlm_target target;
  int ef_search;          /* 0 = default */
  int nprobe;             /* 0 = default */
  int exact;              /* 1 = brute force over LMDB vectors (an oracle) */
  const char *hybrid_text;/* if non-NULL, fuse BM25 over captions for this
                             query text with the vector ranking (RRF) */
  float hybrid_weight;    /* weight of BM25 in the fusion, 0..1; 0 = 0.5 */
  float collapse;         /* 0 = off; else in (0, 1]: a result whose image
                             vector has cosine >= collapse with a better
                             result's is folded into it (near-duplicates
                             take one slot); results without an image
                             vector are never folded */
  /* Fields added later; zero keeps the default. */
  int offset;             /* pagination: skip the first offset results of
                             the ranking and return the next k (results
                             offset .. offset+k-1 of a search with k =
                             offset + k; ties in score are broken by item
                             id, oldest first, so pages are stable).
                             0 .. VLM_DB_MAX_K - k */
  int use_min_score;      /* 1 = range search: only results scoring at
                             least min_score, still at most k of them
                             (k = 0 then means VLM_DB_MAX_K - offset).
                             Vector (cosine) scores only: refused with
                             hybrid_text */
  float min_score;        /* the threshold, a finite cosine */
  const char *group_by;   /* a declared field, or NULL: at most group_per
                             results per distinct value of it, best first
                             (diverse pages); items without the field (a
                             NULL value) form one group of their own.
                             Looks at the best VLM_DB_GROUP_DEPTH
                             candidates at most.  Not with collapse */
  int group_per;          /* results per group, 1..VLM_DB_MAX_K; 0 = 1 */
} vlm_search_options;

/* How deep a grouped search looks into the ranking for enough groups. */
#define VLM_DB_GROUP_DEPTH 10000

typedef struct {
  char *key;
  float score;            /* cosine similarity, or fused score in hybrid */
  vlm_target modality;    /* which vector matched (IMAGE or TEXT) */
  int similar;            /* with collapse: results folded into this one */
} vlm_hit;

/* Search by vector (may be NULL only for a pure BM25 query with
 * hybrid_text set).  *hits is malloc'd, sorted by descending score, one
 * hit per key; free with vlm_hits_free. */
int vlm_db_search(vlm_db *db, const float *query,
                  const vlm_search_options *opts, vlm_hit **hits,
                  int *nhits);
void vlm_hits_free(vlm_hit *hits, int nhits); /* accepts NULL */

/* How many items match filter (a SEARCH filter: SQL over the declared
 * fields, vlm_key_slot(key), ...), in one snapshot.  Lists the matches:
 * O(matches) time and memory. */
int vlm_db_count_where(vlm_db *db, const char *filter, int64_t *n);

/* The two rankings a hybrid search (opts->hybrid_text set, no collapse)
 * fuses, before fusion, for a coordinator that fuses the rankings of
 * several shards itself: *vec the vector ranking (cosines, as deep as
 * the search ranks: max(k, 50)), *text the BM25 ranking of captions
 * (scores: -bm25, higher is better; only comparable within one database),
 * both with the filter applied.  Free each with vlm_hits_free. */
int vlm_db_search_rankings(vlm_db *db, const float *query,
                           const vlm_search_options *opts, vlm_hit **vec,
                           int *nvec, vlm_hit **text, int *ntext);

/* Reciprocal rank fusion of a vector ranking and a BM25 ranking by key,
 * exactly as a hybrid vlm_db_search fuses its own (weight: of BM25, 0 =
 * 0.5): the best k, by fused score, ties by key.  *out as from
 * vlm_db_search (modality: the vector ranking's, else TEXT). */
int vlm_fuse_rrf(const vlm_hit *vec, int nvec, const vlm_hit *text,
                 int ntext, float weight, int k, vlm_hit **out, int *nout);

/* How many candidates of its ranking a search with collapse folds for a
 * page of want = offset + k results: want x 8, at least 100, at most
 * VLM_DB_MAX_K.  Candidates deeper than that are never looked at, so a
 * coordinator that asks every shard for this many uncollapsed candidates
 * and merges them by score holds the database's own candidates. */
int vlm_collapse_depth(int want);

/* Fold near-duplicates exactly as a search with collapse folds its
 * ranking, for a coordinator that ranks several shards' candidates
 * itself.  image_vecs[0 .. n) are the candidates' image vectors, best
 * candidate first (dim floats each, as stored; NULL for a candidate
 * without one, which is never folded and folds nothing, as is one with a
 * non-finite element).  Walking best first, a candidate whose vector has
 * cosine >= threshold (0 < threshold <= 1) with a kept candidate's is
 * folded into the first such one; the others are kept, until k are.
 * keep[0 .. r) gets the kept candidates' indices, best first, and
 * similar[0 .. r) how many were folded into each; both need room for
 * min(n, k).  Returns r, VLM_EINVAL or VLM_ENOMEM. */
int vlm_collapse_near(const float *const *image_vecs, int n, int dim, int k,
                      float threshold, int *keep, int *similar);

typedef struct {
  int64_t items;          /* keys */
  int64_t image_vectors;
  int64_t text_vectors;
  int64_t index_vectors;  /* vectors in the FAISS index */
  int dim;
  char index_factory[128];
  char model_id[80];
  char model_dir[512];
  int format_version;
  int nfields;
  vlm_field_type field_types[VLM_DB_MAX_FIELDS];
  char field_names[VLM_DB_MAX_FIELDS][VLM_DB_FIELD_NAME];
  uint64_t disk_bytes;
  /* Fields added later. */
  uint64_t seq;           /* last committed batch */
  int64_t pending_vectors;/* committed vectors not yet in FAISS (searched
                             exactly) */
  int64_t tombstones;     /* deleted vectors still in FAISS (skipped) */
  int index_trained;      /* 0 while an IVF/PQ index waits for enough
                             vectors (searches are exact meanwhile) */
  int tuned_effort[2];    /* image, text index: the efSearch (HNSW) or
                             nprobe (IVF) searches use by default, the
                             least to reach recall@10 >= 0.995 on held-out
                             queries (db/README.md, "Search effort"); 0 =
                             not measured yet (defaults 64 / 16) */
  int64_t tuned_at[2];    /* vectors in the index when it was measured */
  char model_family[32];  /* the model's family as recorded at create
                             (vlm_clip_family: "clip", "siglip",
                             "chinese_clip"); "clip" for databases made
                             before families were recorded */
  char image_orientation[8]; /* "model", "apply" or "ignore", as
                                vlm_db_config.image_orientation */
  double tuned_recall[2];  /* recall@10 measured at tuned_effort */
  int tuned_queries[2];    /* ... on this many held-out queries */
  int shard;              /* this shard's index, or -1: not a shard */
  int nshards;            /* shards in its cluster (0: not a shard) */
  char cluster_digest[17];/* its cluster map's digest ("" if none) */
  int nslot_ranges;       /* the slots it holds, sorted and disjoint */
  vlm_slot_range slot_ranges[VLM_CLUSTER_MAX_RANGES];
  uint64_t next_id;       /* the id the next item gets (ids < it are
                             taken or were: 1 .. next_id-1) */
  int keep_images;        /* vlm_db_config.keep_images, as recorded now */
} vlm_db_info;

int vlm_db_stat(vlm_db *db, vlm_db_info *info);

/* Check that the three stores agree: every LMDB item has its SQLite row
 * (same id and key) and FTS row, counts match, and the FAISS side covers
 * every live vector.  0, or VLM_ECORRUPT naming the first disagreement. */
int vlm_db_verify(vlm_db *db);

/* Salvage: copy every record of the database in src that decodes, passes
 * its checksum (or, written before checksums, is well-formed) and is still
 * named by its key into a new database dst (created, with src's model,
 * index kind and fields; meta.sqlite and the index are rebuilt from the
 * records).  Reads only src's payload store, read-only.  lost (may be
 * NULL) is called for each record left behind, with its key when that is
 * readable (else NULL), its id and why. */
typedef void (*vlm_db_salvage_fn)(void *arg, const char *key, uint64_t id,
                                  const char *why);
typedef struct {
  int64_t records;  /* item records found */
  int64_t saved;    /* copied into dst */
  int64_t lost;     /* left behind (reported through lost) */
} vlm_db_salvage_result;
int vlm_db_salvage(const char *src, const char *dst, vlm_db_salvage_fn lost,
                   void *arg, vlm_db_salvage_result *res);

/* Online backup: write a consistent copy of db to dst while db is served
 * and written (from any thread; writers wait only while the starting point
 * is pinned, not for the copy).  dst must be absent or an empty directory;
 * the copy is built beside it and renamed into place, so dst ends up a
 * whole database or absent.  The copy holds every batch acknowledged before
 * the call and possibly some acknowledged during it, never part of one:
 * payload store, meta.sqlite and index files all at one batch number, with
 * its manifest.  It opens as any database does (a restore is opening or
 * moving it).  One backup of a handle at a time (VLM_EBUSY); VLM_EEXISTS
 * when dst is in the way; VLM_ENOSPACE when its disk fills (nothing is
 * left behind).  info may be NULL. */
typedef struct {
  uint64_t seq;     /* the batch number of the copy */
  int64_t items;    /* items in it */
  uint64_t bytes;   /* its size on disk */
  double seconds;
} vlm_db_backup_info;
int vlm_db_backup(vlm_db *db, const char *dst, vlm_db_backup_info *info);

/* ---- Replication by log shipping (repl.c; db/README.md "Replication") ----
 *
 * A replica is a copy of a primary (seeded from its online backup) that
 * applies the primary's batches in order, under the same batch numbers,
 * item ids, records and vectors, so its log and its stores stay equal to
 * the primary's at some batch.
 *
 * vlm_db_changes (primary, any handle, any thread): the batches after
 * `after` as one self-contained buffer for vlm_db_apply_changes: their
 * log entries and the records and vectors of the items they wrote that
 * are still live (an item a later batch already replaced or deleted is
 * shipped as gone; the buffer then reaches at least that later batch, so
 * applying it never shows a state the primary did not have).  About
 * max_bytes of records (0 = 4 MiB) and at most 1024 batches, more only
 * to reach such a later batch, and never more than 16 times those: a
 * buffer that stops there with gone items whose later batch it lacks is
 * marked VLM_CHANGES_PARTIAL (a key written in every batch does that to
 * a replica far behind): applied, it may lack those items until a later
 * buffer without the mark is applied.  *out is malloc'd (*len bytes; the caller
 * frees it); *last gets the last batch in it (after when there is
 * nothing new: the buffer then only says the primary's batch), *head the
 * primary's last committed batch.  VLM_ENOTFOUND when the log no longer
 * holds batch after + 1 (pruned: the replica must be seeded again),
 * VLM_ESTATE when after is beyond the primary's last batch (the replica
 * has batches the primary lacks: another history). */
int vlm_db_changes(vlm_db *db, uint64_t after, size_t max_bytes, void **out,
                   size_t *len, uint64_t *last, uint64_t *head);

/* What vlm_db_changes' buffer says about itself without applying it:
 * its first and last batch (first = last + 1 when it holds none), the
 * primary's last batch when it was made, and its flags.  Each output may
 * be NULL.  VLM_EFORMAT for a buffer that is not one. */
#define VLM_CHANGES_PARTIAL 1u
int vlm_db_changes_info(const void *buf, size_t len, uint64_t *first,
                        uint64_t *last, uint64_t *head, unsigned *flags);

/* Replica: apply a buffer of vlm_db_changes to db, whose last batch must
 * be the one before its first (VLM_ESTATE otherwise: nothing written).
 * Its batches commit together through the write protocol (LMDB, the
 * commit point, then SQLite; one transaction each), every batch under
 * its own number with its own log entry, records checked against their
 * checksums first (VLM_ECORRUPT: nothing written); so the batch number a
 * replica reports is exactly what it holds, durably, and a restart
 * resumes after it.  *seq (may be NULL) gets db's last batch after it. */
int vlm_db_apply_changes(vlm_db *db, const void *buf, size_t len,
                         uint64_t *seq);

/* A digest of batch seq: XXH3-64 of its log entry and of the checksums
 * of its items still live, *items of them; VLM_ENOTFOUND when the log no
 * longer holds it (the last batch's entry always stays).  A replica sends
 * its last batch's with each request and the primary computes its own:
 * the same number of live items with another digest is another batch
 * under the same number (a replica that went on after its primary's
 * crash, or a promoted one), which seeding again resolves.  (A later
 * batch may have replaced some of the items on one side only: then the
 * counts differ and nothing can be told.) */
int vlm_db_log_digest(vlm_db *db, uint64_t seq, uint64_t *digest,
                      int *items);

/* Primary: checkpoints keep the log entries after batch `after` (those
 * a replica still has to read); UINT64_MAX drops the hold.  The caller
 * bounds how far back it holds (a replica too far behind is seeded
 * again).  Any thread. */
void vlm_db_retain_log(vlm_db *db, uint64_t after);

/* Rebuild meta.sqlite (the metadata rows filters read and the caption
 * rows BM25 reads) from the payload store's records, which are the truth;
 * the old file is kept as meta.sqlite.damaged.  A read-write open does it
 * by itself when meta.sqlite is missing, unreadable or from another copy;
 * this is for damage found later (vlmdb recover runs it when verify
 * fails).  Read-write handles only; no other thread may use db during the
 * call. */
int vlm_db_rebuild_meta(vlm_db *db);

/* Make the IVF index in path (made by vlm_index_merge: inverted lists in
 * path's list file) the index of modality (0 image, 1 text): for `vlmdb
 * merge`, whose items carry the global ids the merged index holds.  It
 * must be of the database's factory and dimension and hold exactly as
 * many vectors as the modality has live items, all of them in it (each
 * id is checked).  The list file is linked (or copied) into the database
 * directory, the index checkpointed over it; the index is mapped
 * read-only from then on: later puts stay in the exactly searched tail,
 * `vlmdb reindex` brings everything back into a RAM index.  VLM_EMISMATCH
 * when it does not fit, VLM_EINVAL for a path that is not such an index.
 * A backup copies the list file; it is removed once no checkpoint in
 * force names it (after a reindex or another adoption). */
int vlm_db_adopt_index(vlm_db *db, int modality, const char *path);

/* Replacing a database with one built beside it (`vlmdb reembed`).
 *
 * vlm_db_lock_writers takes dir's writer lock without opening the
 * database: while it is held, every read-write open of dir, in any
 * process, fails with VLM_EBUSY naming this process; read-only opens work
 * as beside any writer.  VLM_EBUSY when a writer holds it already.  The
 * lock stays with the directory it was taken in, also after a rename. */
typedef struct vlm_db_lock vlm_db_lock;
int vlm_db_lock_writers(const char *dir, vlm_db_lock **out);
void vlm_db_unlock_writers(vlm_db_lock *lock); /* accepts NULL */

/* Swap the directories dir and staged in one atomic step (renameat2 with
 * RENAME_EXCHANGE; their parent directory is then fsync'd): afterwards dir
 * names what staged named and the other way round, and after a crash one
 * of the two states is on disk, never a mix.  Both must be directories in
 * the same parent.  Close every handle of both first (a handle writes by
 * path).  VLM_EINVAL when the filesystem cannot exchange (NFS, some FUSE
 * filesystems): nothing moved. */
int vlm_db_exchange(const char *dir, const char *staged);

/* Write the FAISS index file now (it records the last change it holds). */
int vlm_db_checkpoint(vlm_db *db);

/* Change the slots a shard holds, and the digest of the cluster map it
 * belongs to (for `vlmdb cluster move`, which moves a slot range's items
 * from one shard to another).  ranges are checked as vlm_db_config's
 * (disjoint, within 0..VLM_SLOTS-1, 1..VLM_CLUSTER_MAX_RANGES of them;
 * sorted and merged here); digest is 16 lower-case hex digits.  The shard
 * index and count stay.  Atomic and durable: the manifest is replaced
 * (written beside, fsynced, renamed, directory fsynced), so a crash
 * leaves the old slots or the new, never a mix.  Writes after it are
 * checked against the new slots; keys already stored are not looked at
 * (moving them is the caller's job).  Writer only (VLM_ESTATE read-only);
 * VLM_EINVAL for a database that is not a shard or bad ranges; VLM_EIO /
 * VLM_ENOSPACE from the manifest write (the old slots then stay). */
int vlm_db_set_slots(vlm_db *db, const char *digest,
                     const vlm_slot_range *ranges, int n);

/* Rebuild the index with another factory string, training it from the
 * stored vectors when needed; the manifest is updated atomically. */
int vlm_db_reindex(vlm_db *db, const char *factory);

/* Visit every item in key order (for export and eval).  A non-zero return
 * from fn stops the walk and is returned. */
typedef int (*vlm_db_visit_fn)(const vlm_record *rec, void *arg);
int vlm_db_foreach(vlm_db *db, vlm_db_visit_fn fn, void *arg);
/* vlm_db_foreach with vlm_db_get2's flags (export: VLM_GET_IMAGE). */
int vlm_db_foreach2(vlm_db *db, unsigned flags, vlm_db_visit_fn fn,
                    void *arg);

/* Whether the database keeps images (vlm_db_config.keep_images): 1 or 0.
 * Any thread. */
int vlm_db_keeps_images(vlm_db *db);

/* Record whether the database keeps images from now on (`vlmdb config
 * --keep-images on|off`).  Atomic and durable like vlm_db_set_slots (the
 * manifest is replaced).  Items already stored keep what they hold: off
 * removes no kept bytes, on adds none.  Writer only (VLM_ESTATE
 * read-only); VLM_EIO / VLM_ENOSPACE from the manifest write (the old
 * setting then stays).  A replica seeded before the change keeps the
 * setting it was seeded with (the manifest is not log-shipped). */
int vlm_db_set_keep_images(vlm_db *db, int on);

/* One step of a walk over the keys of the live items, in item-id order,
 * for SCAN: up to count keys of the items whose id is >= cursor (0 = from
 * the start), into *keys (malloc'd, *n of them; free with vlm_db_keys_free)
 * and the cursor to continue from into *next (0 when the walk is done).
 * Over a whole walk an item that lives throughout is returned exactly once;
 * one added or deleted meanwhile may or may not be (as Redis's SCAN). */
int vlm_db_scan(vlm_db *db, uint64_t cursor, int count, char ***keys, int *n,
                uint64_t *next);
void vlm_db_keys_free(char **keys, int n); /* accepts NULL */

#endif
