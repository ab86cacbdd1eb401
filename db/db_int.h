/* db_int.h - private declarations of the db module (vlm__ prefix).
 *
 * Layers, one file each:
 *   manifest.c  manifest.json: read, validate, write atomically, checksum
 *   fields.c    declared fields: parsing specs, checking metadata JSON
 *   payload.c   LMDB: items, vectors, the change log (the source of truth);
 *               record and vector record encoding, checksums
 *   lmdbwalk.c  LMDB's trees read page by page, every page checked
 *   meta.c      SQLite: the metadata table, FTS5, replay, rebuild, and the
 *               reader pool
 *   sqlvfs.c    page checksums for meta.sqlite (a VFS shim)
 *   filter.c    filter expressions: lexical check, authorizer, compile
 *   vindex.c    the FAISS side: live bitmaps, catch-up, rebuild, checkpoint
 *   tune.c      measuring each index's search effort on its own vectors
 *   vector.c    dot product, overflow-safe normalization
 *   planner.c   search: snapshots, exact scans, filtered planning, merging
 *               modalities, near-duplicate collapse
 *   hybrid.c    BM25 over captions and reciprocal rank fusion
 *   fts_cjk.c   the vlm_cjk FTS5 tokenizer: CJK text as character bigrams
 *   db.c        open/create/close, the batch engine (put, delete, write:
 *               the write protocol), get, scan, stat
 *   verify.c    every record, row and index entry checked against the others
 *   salvage.c   copying the sound records out of a damaged database
 *   backup.c    online backup: a consistent copy while the database is written
 *   repl.c      log shipping: a primary's batches out, a replica's in
 *   eval.c      Recall@K over the stored pairs
 *
 * Locks, always taken in this order (see README "Data safety"):
 *   write_mu  > index_mu > index_lock > pub_lock > pool_mu
 * Readers take index_lock (read) then pub_lock (read) briefly to pin their
 * LMDB and SQLite snapshots; the writer holds pub_lock (write) only while it
 * commits LMDB and SQLite and publishes the new sequence number.
 */
#ifndef VLM_DB_INT_H
#define VLM_DB_INT_H

#include <assert.h>
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <jansson.h>

#include "vlm_error.h"
#include "vlm_index.h"
#include "vlm_slot.h"
#include "vlmdb.h"

#define VLM__FORMAT_VERSION 1
#define VLM__MAX_FIELDS VLM_DB_MAX_FIELDS
#define VLM__MAX_KEY VLM_DB_MAX_KEY
#define VLM__MAX_FILTER 4096
#define VLM__NMOD 2 /* modalities: 0 image, 1 text */
#define VLM__MOD_IMAGE 0
#define VLM__MOD_TEXT 1

/* Item flags, stored in LMDB records. */
#define VLM__HAS_IMAGE 0x1u
#define VLM__HAS_TEXT 0x2u
#define VLM__HAS_CAPTION 0x4u
#define VLM__HAS_SOURCE 0x8u
#define VLM__HAS_THUMB 0x10u
#define VLM__HAS_CKSUM 0x20u /* item record carries its checksum */
#define VLM__HAS_ORIGINAL 0x40u /* item record ends with the original image
                                   bytes and their u32 length */

/* ---- manifest ---------------------------------------------------------- */

typedef struct {
  char file[96];   /* index file name inside the directory, "" if none */
  char lists[96];  /* the list file it names (an adopted merged IVF index,
                      <modality>-lists-<nonce>.ivfdata), "" if none or not
                      recorded (manifests before it: vlm__vindex_ckpt_lists) */
  uint64_t seq;    /* last batch whose changes the file holds */
  uint64_t upto;   /* items with id < upto are in it (when live) */
  int tuned;       /* the index's tuned search effort, 0 if none */
  int64_t tuned_n; /* ... measured at this many vectors */
  double tuned_recall; /* ... and the recall@10 measured at it */
  int tuned_queries;   /* ... over this many held-out queries */
} vlm__ckpt;

typedef struct {
  int format_version;
  int dim;
  char factory[128];
  char model_id[80];
  char model_dir[512];
  char image_orientation[8]; /* "model", "apply", "ignore" */
  char model_family[32]; /* vlm_clip_family of the model ("clip" when the
                            manifest predates the families) */
  int nfields;
  vlm_field_type ftype[VLM__MAX_FIELDS];
  char fname[VLM__MAX_FIELDS][VLM_DB_FIELD_NAME];
  vlm__ckpt ckpt[VLM__NMOD];
  int sql_cksum;   /* meta.sqlite's pages carry checksums (sqlvfs.c) */
  char live_file[96]; /* the live bitmaps saved at a checkpoint
                         (livebits.c), "" if none */
  uint64_t live_seq;  /* ... the batch they stand at */
  uint64_t live_next; /* ... and the id bound (ids below it) */
  /* A shard of a cluster (nslot_ranges > 0): the map's digest, this
   * shard's index among nshards, and the slot ranges it holds (sorted,
   * disjoint).  Writes of keys of other slots are refused. */
  char cluster_digest[17];
  int shard, nshards;
  int nslot_ranges;
  vlm_slot_range slot_ranges[VLM_CLUSTER_MAX_RANGES];
  int keep_images; /* writers that embed images keep their bytes
                      (vlm_db_config.keep_images) */
} vlm__manifest;

/* 1 when the database holds slot (always, for a database of no cluster). */
int vlm__slot_mine(const vlm__manifest *m, int slot);

int vlm__manifest_read(const char *dir, vlm__manifest *m);

/* The live bitmaps on disk (livebits.c).  write saves bits[m] (ids below
 * next; higher bits are left out) as standing at batch seq, to path
 * atomically (.tmp, fsync, rename; the caller fsyncs the directory).
 * read fills bits[m] (cap bytes each, zeroed beyond) and nlive[m] from
 * path and returns 0 only when the file is whole and stands at exactly
 * seq and next; else -1 with the reason in why. */
int vlm__live_write(const char *path, uint64_t seq, uint64_t next,
                    uint8_t *const bits[VLM__NMOD]);
int vlm__live_read(const char *path, uint64_t seq, uint64_t next,
                   uint8_t *const bits[VLM__NMOD], size_t cap,
                   int64_t nlive[VLM__NMOD], char *why, size_t whylen);
/* 0 when name is a model family a manifest may record: 1..31 bytes of
 * [a-z0-9_]; -1 otherwise. */
int vlm__model_family_ok(const char *name);
int vlm__manifest_write(const char *dir, const vlm__manifest *m);
int vlm__fsync_dir(const char *dir);

/* ---- fields ------------------------------------------------------------ */

int vlm__field_name_ok(const char *name, char *why, size_t whylen);
/* Parse an item's meta_json (may be NULL): *obj gets a new reference to
 * the object (NULL when meta_json is NULL); checks declared field types. */
int vlm__meta_check(const vlm__manifest *m, const char *key,
                    const char *meta_json, json_t **obj);

/* ---- LMDB (payload.c) -------------------------------------------------- */

typedef struct {
  MDB_env *env;
  MDB_dbi keys;  /* key -> u64 item id */
  MDB_dbi items; /* id (integer key) -> record header + payload */
  MDB_dbi vecs;  /* id (integer key) -> u32 flags, u32 dim, vectors */
  MDB_dbi log;   /* seq (integer key) -> changes of that batch */
  MDB_dbi state; /* "seq", "next_id" -> u64 */
} vlm__lmdb;

/* One change of a batch: an item written (new_id) replacing old_id, or a
 * delete (new_id 0). */
typedef struct {
  uint64_t new_id;
  uint64_t old_id;
} vlm__change;

/* A decoded item record (pointers into LMDB's map, valid for the txn). */
typedef struct {
  uint32_t flags;
  uint64_t seq;
  const char *key; size_t key_len;
  const char *caption; size_t caption_len;
  const char *source; size_t source_len;
  const char *meta; size_t meta_len;
  const uint8_t *thumb; size_t thumb_len;
  const uint8_t *image; size_t image_len; /* kept original, or NULL / 0 */
} vlm__rec;

int vlm__lmdb_err(int rc, const char *what);
int vlm__lmdb_open(vlm__lmdb *lm, const char *dir, int readonly, int create,
                   uint64_t map_size);
void vlm__lmdb_close(vlm__lmdb *lm);
int vlm__lmdb_get_u64(vlm__lmdb *lm, MDB_txn *txn, const char *name,
                      uint64_t *out);
int vlm__lmdb_put_u64(vlm__lmdb *lm, MDB_txn *txn, const char *name,
                      uint64_t v);
size_t vlm__rec_size(size_t key_len, const vlm_item *it);
void vlm__rec_encode(void *dst, uint32_t flags, uint64_t seq, const char *key,
                     size_t key_len, const vlm_item *it);
int vlm__rec_decode(const void *data, size_t len, vlm__rec *out);
/* Checksums: seal sets VLM__HAS_CKSUM and the checksum of an encoded item
 * record together with its vector record (the bytes stored in vecs);
 * check verifies it (0 for records written without one) or returns
 * VLM_ECORRUPT. */
void vlm__rec_seal(void *rec, size_t len, const void *vecs, size_t vlen);
int vlm__rec_check(const void *rec, size_t len, const void *vecs,
                   size_t vlen);
/* 32 bits that tell an item record's contents apart: its checksum, or
 * (a record written without one) XXH32 of its bytes. */
uint32_t vlm__rec_digest32(const void *rec, size_t len);
/* What is wrong with a decoded record's contents (text not UTF-8, meta
 * not a JSON object, thumbnail not JPEG, a vector not finite or not of
 * unit length), or NULL (verify.c). */
const char *vlm__rec_damage(int dim, const vlm__rec *rec,
                            const void *const vec[VLM__NMOD]);
int vlm__rec_get(vlm__lmdb *lm, MDB_txn *txn, uint64_t id, vlm__rec *out);
/* Vectors of item id: *flags gets HAS_IMAGE/HAS_TEXT; vec[m] point into
 * the map (possibly unaligned) or NULL.  VLM_ENOTFOUND if absent. */
int vlm__vecs_get(vlm__lmdb *lm, MDB_txn *txn, uint64_t id, int dim,
                  uint32_t *flags, const void *vec[VLM__NMOD]);
int vlm__vecs_parse(const MDB_val *v, int dim, uint32_t *flags,
                    const void *vec[VLM__NMOD]);
/* Encode it's vector record (u32 flags, u32 dim, the image then the text
 * vector, each normalized through scratch) into dst (room for 8 + 2 *
 * dim * 4 bytes); *len gets its size.  0 or the normalization's error. */
int vlm__vecs_encode(uint8_t *dst, const vlm_item *it, int dim,
                     float *scratch, size_t *len);
int vlm__log_get(vlm__lmdb *lm, MDB_txn *txn, uint64_t seq,
                 vlm__change **changes, size_t *n);

/* ---- LMDB calls a damaged page cannot crash (lmdbguard.c) ------------- */

/* Every call that reads pages goes through these: LMDB's assertion
 * failures and faults inside the call come back as MDB_CORRUPTED (which
 * vlm__lmdb_err words with what LMDB tripped on), and values reaching past
 * the pages in use are refused.  vlm__mdb_guard_env arms an environment
 * (its assertion hook and the process's SIGSEGV/SIGBUS handler, which
 * passes faults outside LMDB on to the handler before it). */
void vlm__mdb_guard_env(MDB_env *env);
const char *vlm__mdb_damage(void); /* the calling thread's last, or "" */
int vlm__mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data);
int vlm__mdb_cursor_get(MDB_cursor *c, MDB_val *key, MDB_val *data,
                        MDB_cursor_op op);
int vlm__mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data,
                 unsigned flags);
int vlm__mdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data);
int vlm__mdb_cursor_del(MDB_cursor *c, unsigned flags);
int vlm__mdb_cursor_open(MDB_txn *txn, MDB_dbi dbi, MDB_cursor **c);
int vlm__mdb_dbi_open(MDB_txn *txn, const char *name, unsigned flags,
                      MDB_dbi *dbi);
int vlm__mdb_stat(MDB_txn *txn, MDB_dbi dbi, MDB_stat *st);
/* Frees txn whether it succeeds or fails, as mdb_txn_commit. */
int vlm__mdb_txn_commit(MDB_txn *txn);

/* ---- LMDB trees read page by page (lmdbwalk.c) ------------------------ */

/* The next step a user takes when the payload store is damaged. */
#define VLM__LMDB_DAMAGED_HINT                                               \
  "restore a backup, or run `vlmdb salvage --db DB --out DIR` to copy "    \
  "every sound record into a fresh database"

typedef struct {
  uint64_t count;  /* damaged places met */
  char first[256]; /* the first, with its page */
} vlm__lwalk_damage;

typedef struct vlm__lwalk vlm__lwalk;

/* A walk of one tree ("keys", "items", "vecs", "log", "state"; NULL: the
 * main tree) of txn's snapshot.  Entries come in key order; damaged
 * subtrees are stepped over and counted. */
int vlm__lwalk_open(vlm__lmdb *lm, MDB_txn *txn, const char *name,
                    vlm__lwalk **out);
/* 0 and the next entry (valid until the next call), 1 at the end, <0 on
 * an I/O or memory error. */
int vlm__lwalk_next(vlm__lwalk *w, MDB_val *key, MDB_val *val,
                    unsigned *node_flags);
const vlm__lwalk_damage *vlm__lwalk_damaged(const vlm__lwalk *w);
/* After the end: entries the tree records that the walk did not reach. */
int64_t vlm__lwalk_missing(const vlm__lwalk *w);
void vlm__lwalk_close(vlm__lwalk *w);
/* Every tree checked page by page: 0 or VLM_ECORRUPT naming the page. */
int vlm__lmdb_check(vlm__lmdb *lm, MDB_txn *txn);

/* ---- SQLite (meta.c) --------------------------------------------------- */

typedef struct vlm__authctx {
  int armed;           /* 1 while a filter is being compiled */
  int nselect;
  const vlm__manifest *man;
  char why[256];       /* first reason for a denial */
} vlm__authctx;

typedef struct vlm__reader {
  MDB_txn *txn;          /* reset between uses (MDB_NOTLS) */
  sqlite3 *sql;          /* read-only connection, lazily opened */
  sqlite3_stmt *pin;     /* pins the snapshot inside BEGIN */
  vlm__authctx auth;
  char *filter_text;     /* last filter compiled on this connection */
  sqlite3_stmt *filter;
  sqlite3_stmt *filter_one; /* the same filter on one id (?1), or NULL */
  uint64_t *cache_ids;   /* its matches at batch cache_seq */
  size_t cache_n;
  uint64_t cache_seq;
  int cache_valid;
  uint64_t broad_seq;    /* at batch broad_seq it matched more than */
  size_t broad_limit;    /* broad_limit items (0: not known) */
  struct vlm__reader *next;
} vlm__reader;

/* vlm__lmdb_open's readonly argument for a database on a read-only
 * filesystem (no lock files can be made; nothing can change). */
#define VLM__RO_MEDIA 2

int vlm__sql_err(sqlite3 *db, int rc, const char *what);

/* sqlvfs.c: meta.sqlite is opened through this VFS, which checks a
 * checksum in the last 8 bytes of every page of a file made with them. */
#define VLM__SQL_VFS "vlmdb-cksum"
#define VLM__FCNTL_CKSUM 0x766c6d01 /* int: its pages are checked */
const char *vlm__sql_vfs(void);     /* registers it once; NULL if it can't */
int vlm__sql_reserve(sqlite3 *db);  /* a new file: make room for them */
int vlm__sql_cksummed(sqlite3 *db); /* db's file carries them (after a read) */

/* fts_cjk.c: the FTS5 tokenizer new databases' captions use: unicode61,
 * but CJK runs as character bigrams.  vlm__fts_cjk_auto registers it for
 * every later connection of the process (vlm__sql_vfs calls it). */
#define VLM__FTS_CJK "vlm_cjk"
void vlm__fts_cjk_auto(void);
int vlm__fts_cjk_register(sqlite3 *db);
int vlm__cjk_char(uint32_t cp);   /* Han, Hiragana, Katakana or Hangul */
/* The code point at s[i] (n bytes in all) into *cp, and its length in
 * bytes; an invalid byte is U+FFFD of length 1. */
int vlm__utf8_next(const char *s, int n, int i, uint32_t *cp);
/* After db's first read: the manifest's promise of checksums holds. */
int vlm__sql_check_cksum(sqlite3 *db, const vlm__manifest *m,
                         const char *path);
int vlm__sql_create(const char *path, const vlm__manifest *m);
int vlm__sql_open_writer(vlm_db *db);
void vlm__sql_close_writer(vlm_db *db);
int vlm__sql_get_seq(sqlite3 *sql, uint64_t *seq);
int vlm__sql_begin(vlm_db *db);
/* One change of a batch as SQLite stages it: for a write (c.new_id != 0)
 * the new item's key, metadata (may be NULL) and caption (NULL or length
 * 0: none); pointers are borrowed for the call. */
typedef struct {
  vlm__change c;
  const char *key;
  size_t key_len;
  const json_t *meta;
  const char *caption;
  size_t caption_len;
} vlm__sql_change;

/* Stage n changes of one batch in the open SQLite transaction: replaced
 * and deleted ids lose their rows (with replay, new ids too, so that a
 * replay is idempotent), new items get theirs. */
int vlm__sql_apply(vlm_db *db, const vlm__sql_change *ch, size_t n,
                   int replay);
int vlm__sql_set_seq(vlm_db *db, uint64_t seq);
int vlm__sql_commit(vlm_db *db);
void vlm__sql_rollback(vlm_db *db);
int vlm__sql_replay(vlm_db *db, uint64_t from_seq, uint64_t to_seq);
/* Stage batches from_seq+1 .. to_seq of txn's log (LMDB's view inside
 * txn, which may be the batch's own write transaction) in the open
 * SQLite transaction, as the replay does. */
int vlm__sql_stage_log(vlm_db *db, MDB_txn *txn, uint64_t from_seq,
                       uint64_t to_seq);
/* Rebuild meta.sqlite from every live record of the payload store at
 * batch seq (the old file is kept as meta.sqlite.damaged); the writer
 * connection is left open on the new file. */
int vlm__sql_rebuild(vlm_db *db, uint64_t seq);
int vlm__sql_count(sqlite3 *sql, const char *table, int64_t *out);
int vlm__reader_sql(vlm_db *db, vlm__reader *r);

/* ---- filters (filter.c) ------------------------------------------------ */

int vlm__filter_lex(const char *expr);
int vlm__authorizer(void *arg, int action, const char *a, const char *b,
                    const char *dbname, const char *trigger);
/* Run the filter on r's snapshot: ids (sorted ascending) of matches.
 * With more than limit matches, stop early and report *complete = 0
 * (no ids); SIZE_MAX = no limit.  The matches are kept per reader until
 * the next batch, and returned whatever limit says; a filter that
 * stopped early is listed in full the next time it is asked for at the
 * same batch (and so kept). */
int vlm__filter_ids(vlm_db *db, vlm__reader *r, const char *expr,
                    uint64_t seq, size_t limit, uint64_t **ids, size_t *n,
                    int *complete);
/* Does item id match expr (the filter last given to vlm__filter_ids on
 * this reader)?  *match 0 for an id with no row. */
int vlm__filter_match(vlm__reader *r, const char *expr, uint64_t id,
                      int *match);

/* ---- FAISS side (vindex.c) --------------------------------------------- */

typedef struct {
  vlm_index *index;
  uint64_t upto;       /* items with id < upto went through the index */
  int removable;       /* 1 remove_ids works, 0 tombstones, -1 unknown */
  int64_t ntomb;       /* dead vectors still in the index */
  int64_t nlive;       /* live vectors of this modality (index side) */
  uint8_t *live;       /* bit per item id: live and has this modality */
  int tuned;           /* efSearch/nprobe meeting the recall target on a
                          sample (tune.c); 0 = not tuned yet */
  int64_t tuned_n;     /* nlive when tuned */
  double tuned_recall; /* recall@10 measured at tuned (held-out queries) */
  int tuned_queries;   /* how many queries measured it */
  /* A read-only handle loads a checkpointed index at its first use
   * (vlm__vindex_ensure), not at open: until then index is NULL, upto is
   * the checkpoint's, lazy_fd holds the file open (a writer's next
   * checkpoint may unlink it) and lazy_drops the ids of the checkpoint
   * replaced or deleted by the batches up to open's. */
  int lazy;
  int lazy_fd;
  int64_t *lazy_drops;
  size_t lazy_ndrops;
} vlm__vindex;

int vlm__vindex_open(vlm_db *db);
/* Load the indexes a read-only open left for their first use; call it
 * before taking index_lock to use vx[].index, upto or ntomb.  Cheap once
 * done. */
int vlm__vindex_ensure(vlm_db *db);
/* 1 when modality m's index is an exact Flat one, which has no checkpoint
 * file: it is built from the vectors table at open (vindex.c). */
int vlm__vindex_fileless(const vlm_db *db, int m);
void vlm__vindex_close(vlm_db *db);
int vlm__vindex_catch_up(vlm_db *db);
int vlm__vindex_checkpoint(vlm_db *db);
int vlm__vindex_reindex(vlm_db *db, const char *factory);
/* vlm_db_adopt_index; the caller holds write_mu. */
int vlm__vindex_adopt(vlm_db *db, int m, const char *path);
int vlm__factory_nlist(const char *factory);
void vlm__vindex_remove_orphans(vlm_db *db);
/* The list file checkpoint c of modality m names, into out[cap] ("" when
 * its index has none): the manifest's record, else (a manifest written
 * before it was recorded) the index file's header says whether there is
 * one and the index this handle loaded from that file gives its name.
 * path: the index file to read the header of (NULL: c->file in db->dir).
 * -1 when it cannot be told without reading the whole index file. */
int vlm__vindex_ckpt_lists(vlm_db *db, int m, const vlm__ckpt *c,
                           const char *path, char *out, size_t cap);

static inline int vlm__bit(const uint8_t *bm, uint64_t i) {
  return (bm[i >> 3] >> (i & 7)) & 1;
}

/* Measure and set vx[m].tuned when the index has doubled since it was
 * last tuned (or always, with force).  Caller holds index_mu. */
int vlm__vindex_tune(vlm_db *db, int m, int force);

/* ---- search (planner.c, hybrid.c) -------------------------------------- */

typedef struct {
  uint64_t id;
  float score;
  int mod;
} vlm__cand;

/* Pin r's LMDB (and, with need_sql, SQLite) snapshot at the published
 * state; *next_id and *nitems describe it.  Undo with snapshot_end. */
int vlm__snapshot_begin(vlm_db *db, vlm__reader *r, int need_sql,
                        uint64_t *next_id, int64_t *nitems, uint64_t *seq);
void vlm__snapshot_end(vlm__reader *r, int need_sql);
/* vector.c */
float vlm__dot(const float *a, const void *b_unaligned, int dim);
/* Normalize in to unit length into out (may equal in): VLM_ENUMERIC for a
 * non-finite element, VLM_EINVAL when the length is not a normal float
 * (zero or denormal scale).  Never overflows; out is always finite. */
int vlm__normalize(const float *in, float *out, int dim, const char *what);
/* 1 if all dim floats at vec (possibly unaligned) are finite.  Stored
 * vectors failing it (written by builds before normalize was overflow-safe)
 * are left out of the indexes and never rank; delete still removes them. */
int vlm__vec_finite(const void *vec_unaligned, int dim);
/* collapse.c: the greedy near-duplicate walk.  image_vec(arg, i, &vec)
 * gives candidate i's image vector (dim floats, any alignment; valid
 * until the next call) or NULL, 0, or a negative error that ends the
 * walk.  Walking candidates 0 .. n - 1 best first, one whose vector has
 * cosine >= thr with a vector kept before it is folded into the first
 * such kept candidate (its similar[] grows); the rest, those without a
 * finite image vector too, are kept: keep[] gets their indices, best
 * first, until k are kept.  keep and similar have room for min(n, k).
 * Returns the count kept or a negative error (image_vec's, VLM_ENOMEM);
 * vlm_collapse_near is its form over an array of vectors. */
typedef int (*vlm__image_vec_fn)(void *arg, int i, const void **vec);
int vlm__collapse_near(int n, int dim, int k, float thr,
                       vlm__image_vec_fn image_vec, void *arg, int *keep,
                       int *similar);
/* Reciprocal rank fusion of a vector ranking and a BM25 ranking into out
 * (room for nvr + nbm), unsorted; the number of entries, or -1 out of
 * memory (hybrid.c). */
int vlm__fuse_rrf(const vlm__cand *vr, int nvr, const uint64_t *bm25,
                  int nbm, float w, vlm__cand *out);
/* scores (may be NULL): each id's BM25 score, higher is better. */
int vlm__hybrid(vlm_db *db, vlm__reader *r, const char *text,
                const uint8_t *allow, uint64_t allow_bits, int depth,
                uint64_t **ids, float **scores, int *n);

/* ---- the handle -------------------------------------------------------- */

/* A mutex that knows its holder, so that a function that needs it can
 * assert its caller holds it (write_mu, index_mu). */
typedef struct {
  pthread_mutex_t mu;
  pthread_t owner;
  int held;
} vlm__owned_mu;

static inline void vlm__owned_lock(vlm__owned_mu *m) {
  pthread_mutex_lock(&m->mu);
  m->owner = pthread_self();
  m->held = 1;
}
static inline int vlm__owned_held(const vlm__owned_mu *m) {
  return m->held && pthread_equal(m->owner, pthread_self());
}
static inline void vlm__owned_unlock(vlm__owned_mu *m) {
  assert(vlm__owned_held(m));
  m->held = 0;
  pthread_mutex_unlock(&m->mu);
}

struct vlm_db {
  char *dir;
  int readonly;
  int lock_fd;
  size_t max_payload;
  vlm_db_warn_fn warn;
  void *warn_arg;
  vlm__manifest man;
  vlm__lmdb lm;

  /* writer (write_mu) */
  vlm__owned_mu write_mu;
  sqlite3 *wsql;
  sqlite3_stmt *st_ins, *st_del, *st_fts_ins, *st_fts_del, *st_seq;
  int broken;                 /* SQLite fell behind LMDB: reopen */
  int rofs;                   /* on a read-only filesystem (opened read-only) */
  uint64_t sql_behind;        /* read-only open: batches meta.sqlite lacks
                                 (filters, BM25 and verify refuse) */
  uint64_t log_pin;           /* a backup under way replays the log after
                                 this batch into its copy: checkpoints keep
                                 it (UINT64_MAX: none) */
  int backing_up;             /* one backup at a time */
  uint64_t repl_pin;          /* replicas still need the log after this
                                 batch (vlm_db_retain_log; atomic):
                                 checkpoints keep it (UINT64_MAX: none) */
  int follow;                 /* read-only beside a possible writer: each
                                 search pairs LMDB's and SQLite's snapshots
                                 and reads its batch from them (planner.c) */
  int registered;             /* in this process's list of open databases */
  dev_t reg_dev;
  ino_t reg_ino;

  /* published state (pub_lock) */
  pthread_rwlock_t pub_lock;
  uint64_t pub_seq, pub_next_id;
  int64_t pub_items, pub_vecs[VLM__NMOD];

  /* FAISS side (index_mu for changes, index_lock for use) */
  vlm__owned_mu index_mu;
  pthread_rwlock_t index_lock;
  uint64_t ix_seq;            /* last batch applied to the index side */
  uint64_t ix_next;           /* live bitmaps cover ids < ix_next */
  size_t live_bytes;
  int lazy;                   /* some vx[].lazy (atomic; lazy_mu) */
  pthread_mutex_t lazy_mu;
  int live_refused;           /* open could not use the manifest's live
                                 file: the next checkpoint writes one */
  vlm__vindex vx[VLM__NMOD];
  int64_t bad_vecs;           /* stored non-finite vectors left out */

  /* optional background indexing */
  int async;
  int mmap_index;             /* vlm_db_open_options.mmap_index */
  unsigned defer_index;       /* vlm_db_open_options.defer_index */
  pthread_t bg;
  int bg_started, bg_stop, bg_work;
  pthread_mutex_t bg_mu;
  pthread_cond_t bg_cv;

  /* reader pool */
  pthread_mutex_t pool_mu;
  vlm__reader *pool;
};

#define vlm__write_lock(db) vlm__owned_lock(&(db)->write_mu)
#define vlm__write_unlock(db) vlm__owned_unlock(&(db)->write_mu)
#define vlm__write_held(db) vlm__owned_held(&(db)->write_mu)
#define vlm__index_lock(db) vlm__owned_lock(&(db)->index_mu)
#define vlm__index_unlock(db) vlm__owned_unlock(&(db)->index_mu)
#define vlm__index_held(db) vlm__owned_held(&(db)->index_mu)

void vlm__warn(vlm_db *db, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int vlm__reader_get(vlm_db *db, int need_sql, vlm__reader **out);
void vlm__reader_put(vlm_db *db, vlm__reader *r);
/* Begin (or renew) r's LMDB read transaction; on failure r->txn is gone. */
int vlm__reader_txn(vlm_db *db, vlm__reader *r, const char *what);
/* BEGIN on r's SQLite connection and pin its snapshot by reading the batch
 * it holds (into *seq, may be NULL); rolled back on failure. */
int vlm__reader_sql_begin(vlm__reader *r, uint64_t *seq, const char *what);
void vlm__reader_free(vlm__reader *r);

/* The write protocol's steps (db.c), shared with a replica's batches
 * (repl.c).  writable: 0, or VLM_ESTATE for a read-only or broken
 * handle.  space_check: VLM_ENOSPACE when the disk lacks the room a batch
 * of `bytes` may need.  commit_publish (caller holds write_mu; txn and the
 * SQLite transaction hold batches first .. seq, first = the published
 * batch + 1): commit LMDB (the commit point), then SQLite, then publish;
 * txn is gone after it.  after_commit: the index catch-up of a committed
 * batch. */
int vlm__writable(vlm_db *db);
int vlm__space_check(vlm_db *db, const char *what, uint64_t bytes);
int vlm__commit_publish(vlm_db *db, MDB_txn *txn, uint64_t first,
                        uint64_t seq, uint64_t next_id, int64_t d_items,
                        const int64_t d_vecs[VLM__NMOD], uint64_t bytes);
void vlm__after_commit(vlm_db *db);

/* 0 while db->dir still names the directory db was opened in; else
 * VLM_ESTATE: another database was switched in there (`vlmdb reembed`,
 * vlm_db_exchange) or it was moved, and files this handle opens by path
 * from now on would belong to another database. */
int vlm__dir_unchanged(vlm_db *db);

/* 1 if a writer process holds dir (the pid it wrote in LOCK is alive). */
int vlm__writer_alive(const char *dir);

/* Test hook: when set (only tests set it), called at named points of
 * the library where a test wants to widen a race window ("backup-pinned":
 * a backup has pinned its starting point and released the writers). */
extern void (*vlm__test_hook)(const char *where, vlm_db *db);
/* Test fault points: when set (only tests set it), asked at named points
 * of the write protocol and the planner whether to fail there as the real
 * fault would ("lmdb-commit", "sql-commit", "sql-replay"; "planner-short":
 * a filtered walk found too few, "planner-missed": the sample check found
 * a better match it missed), so that every branch runs in `make test`
 * without a broken disk or unlucky data.  The store calls of a batch and
 * of the stores' upkeep fail through VLM__STORE / VLM__SQL_STEP as an I/O
 * error would: "lmdb-begin" (a write transaction), "lmdb-read" (a read
 * transaction or a cursor over a table), "lmdb-write" (every put and
 * delete a batch stages in LMDB), "sql-write" (every SQLite
 * statement that writes rows: batches, replay, rebuild), "index-add"
 * (vectors added to an in-memory index), "file-write" (the files vlmdb
 * writes itself: manifests, index checkpoints, backup copies). */
extern int (*vlm__test_fault)(const char *where);
#define VLM__FAULT(where) (vlm__test_fault && vlm__test_fault(where))
/* call, or EIO (an LMDB or errno code) when the fault point where fires. */
#define VLM__STORE(where, call) (VLM__FAULT(where) ? EIO : (call))
/* write(2), or -1 with errno EIO when the fault point where fires. */
#define VLM__WRITE(where, fd, buf, n)                                      \
  (VLM__FAULT(where) ? (errno = EIO, (ssize_t)-1) : write(fd, buf, n))
/* vlm_index_add, or VLM_EIO with its message when "index-add" fires. */
#define VLM__INDEX_ADD(ix, n, vecs, ids)                                   \
  (VLM__FAULT("index-add")                                                 \
       ? vlm_seterr(VLM_EIO, "index add: I/O error (test fault)")          \
       : vlm_index_add(ix, n, vecs, ids))

/* Building a database beside its final name (db.c): PARENT/.NAME.creating-
 * PID, emptied and removed on failure, renamed onto NAME when whole. */
int vlm__dir_is_empty(const char *dir);
void vlm__parent_of(const char *path, char *out, size_t cap);
int vlm__creating_path(const char *dir, char *out, size_t cap);
void vlm__remove_stale_creating(const char *dir);
void vlm__remove_created(const char *dir, int rmdir_too);

#endif
