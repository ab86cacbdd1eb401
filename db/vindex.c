/* vindex.c - the FAISS side of a database: one index per modality (image,
 * text), kept in step with LMDB.
 *
 * LMDB holds every vector; an index is a derived structure.  For each
 * modality the index side keeps:
 *   upto    items with id < upto have been through the index (added when
 *           live); items with id >= upto are the "pending tail" that
 *           searches scan exactly from LMDB.  Item ids only grow, so a
 *           watermark is enough.  An untrained IVF/PQ index has upto 0.
 *   live    a bitmap of live item ids having this modality, used as the
 *           ID selector when the index holds tombstones;
 *   ntomb   vectors of deleted or replaced items still in an index that
 *           cannot remove ids (HNSW); searches skip them, checkpoint
 *           compacts when they pass a fifth of the index.
 * ix_seq is the last batch applied to the index side; catch_up applies
 * batches (ix_seq, published] from LMDB's log and vectors table.  A
 * checkpoint writes each index to <modality>-<seq>-<nonce>.faiss and then
 * points the manifest at it atomically; open loads it and catches up.
 *
 * A Flat index is the vectors themselves, which LMDB already holds: it has
 * no file (its checkpoint entry stays empty) and open builds it from the
 * vectors table, which costs about what reading the same bytes from a
 * file did, without a second copy on disk or a rewrite of every vector at
 * each checkpoint.  A read-only handle builds it at its first use.  A Flat
 * file of an older database is still loaded; its next checkpoint drops it.
 */
#include "db_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *mod_name[VLM__NMOD] = {"image", "text"};

#define ADD_CHUNK 4096

int vlm__factory_nlist(const char *factory) {
  const char *p = strstr(factory, "IVF");
  if (!p)
    return 0;
  return atoi(p + 3);
}

static int grow_bits(vlm_db *db, uint64_t nbits) {
  size_t need = (size_t)(nbits >> 3) + 1;
  if (need <= db->live_bytes)
    return 0;
  size_t cap = db->live_bytes ? db->live_bytes : 4096;
  while (cap < need)
    cap *= 2;
  for (int m = 0; m < VLM__NMOD; m++) {
    uint8_t *p = realloc(db->vx[m].live, cap);
    if (!p)
      return vlm_seterr(VLM_ENOMEM, "live bitmap");
    memset(p + db->live_bytes, 0, cap - db->live_bytes);
    db->vx[m].live = p;
  }
  db->live_bytes = cap;
  return 0;
}

/* Put a freshly built index (covering ids below upto, no tombstones) in
 * place of modality m's and return the old one for the caller to free
 * outside the lock.  Caller holds index_lock for writing. */
static vlm_index *swap_index(vlm_db *db, int m, vlm_index *fresh,
                             uint64_t upto) {
  vlm__vindex *vx = &db->vx[m];
  vlm_index *old = vx->index;
  vx->index = fresh;
  vx->upto = upto;
  vx->ntomb = 0;
  vx->removable = -1;
  return old;
}

static void set_bit(uint8_t *bm, uint64_t i) { bm[i >> 3] |= (uint8_t)(1u << (i & 7)); }
static void clear_bit(uint8_t *bm, uint64_t i) { bm[i >> 3] &= (uint8_t)~(1u << (i & 7)); }

static int txn_state(vlm_db *db, MDB_txn *txn, uint64_t *seq, uint64_t *next) {
  int rc = vlm__lmdb_get_u64(&db->lm, txn, "seq", seq);
  if (!rc)
    rc = vlm__lmdb_get_u64(&db->lm, txn, "next_id", next);
  if (!rc && *next == 0)
    *next = 1;
  return rc;
}

/* A read transaction at the published state. */
static int begin_published(vlm_db *db, MDB_txn **txn) {
  pthread_rwlock_rdlock(&db->pub_lock);
  int rc = VLM__STORE("lmdb-read", mdb_txn_begin(db->lm.env, NULL, MDB_RDONLY, txn));
  pthread_rwlock_unlock(&db->pub_lock);
  return rc ? vlm__lmdb_err(rc, "index read") : 0;
}

/* A stored vector that is not finite (written by a build whose normalize
 * could overflow) stays out of the index: FAISS refuses it, and one bad
 * record must not keep the database from opening.  It stays live (get,
 * export and delete see it); searches never rank it. */
static void skip_bad(vlm_db *db, int m, uint64_t id) {
  db->bad_vecs++;
  vlm__warn(db, "%s: item id %llu: stored %s vector is not finite; left "
            "out of the index (delete or re-put the item to repair it)",
            db->dir, (unsigned long long)id, mod_name[m]);
}

/* Modality m's index takes no vectors: mapped read-only from a merged
 * list file, or deferred by the opener (vlm_db_open_options.defer_index:
 * `vlmdb merge` before it adopts a merged index).  Its items past upto
 * stay the pending tail, searched exactly. */
/* The factory makes an exact Flat index (index.c's KIND_FLAT): one that
 * is built from the vectors table instead of saved to a file. */
static int factory_is_flat(const char *factory) {
  if (!strncmp(factory, "IDMap2,", 7))
    factory += 7;
  else if (!strncmp(factory, "IDMap,", 6))
    factory += 6;
  return !strcmp(factory, "Flat");
}

int vlm__vindex_fileless(const vlm_db *db, int m) {
  const vlm_index *ix = db->vx[m].index;
  return ix ? vlm_index_is_exact(ix) && !vlm_index_is_ondisk(ix)
            : factory_is_flat(db->man.factory);
}

static int frozen(vlm_db *db, int m) {
  return ((db->defer_index >> m) & 1u) ||
         (db->vx[m].index && vlm_index_is_ondisk(db->vx[m].index));
}

/* Add the live vectors of modality m with id in [from, tnext) to ix, in
 * chunks of ADD_CHUNK. */
static int add_range(vlm_db *db, MDB_txn *txn, int m, vlm_index *ix,
                     uint64_t from, uint64_t tnext) {
  int dim = db->man.dim, rc;
  MDB_cursor *cur = NULL;
  float *buf = malloc((size_t)ADD_CHUNK * dim * sizeof(float));
  int64_t *ids = malloc(ADD_CHUNK * sizeof *ids), n = 0;
  MDB_val k = {sizeof from, &from}, v;
  if (!buf || !ids) {
    rc = vlm_seterr(VLM_ENOMEM, "index add");
    goto done;
  }
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(txn, db->lm.vecs, &cur)))) {
    rc = vlm__lmdb_err(rc, "vecs");
    goto done;
  }
  for (rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
       rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    uint64_t id;
    uint32_t flags;
    const void *vec[VLM__NMOD];
    memcpy(&id, k.mv_data, 8);
    if (id >= tnext)
      break;
    if ((rc = vlm__vecs_parse(&v, dim, &flags, vec)))
      goto done;
    if (!vec[m])
      continue;
    if (!vlm__vec_finite(vec[m], dim)) {
      skip_bad(db, m, id);
      continue;
    }
    memcpy(buf + (size_t)n * dim, vec[m], (size_t)dim * 4);
    ids[n++] = (int64_t)id;
    if (n == ADD_CHUNK) {
      if ((rc = VLM__INDEX_ADD(ix, n, buf, ids)))
        goto done;
      n = 0;
    }
  }
  if (rc && rc != MDB_NOTFOUND) {
    rc = vlm__lmdb_err(rc, "vecs");
    goto done;
  }
  rc = n ? VLM__INDEX_ADD(ix, n, buf, ids) : 0;
done:
  if (cur)
    mdb_cursor_close(cur);
  free(buf);
  free(ids);
  return rc;
}

/* Build a fresh index of modality m from txn: trained from a sample when
 * the kind needs it and enough vectors exist (else left untrained, with
 * *upto 0: searches stay exact), then holding every live vector. */
static int build_index(vlm_db *db, MDB_txn *txn, const char *factory, int m,
                       uint64_t tnext, int64_t nlive, vlm_index **out,
                       uint64_t *upto) {
  vlm_index *ix = NULL;
  MDB_cursor *cur = NULL;
  float *buf = NULL;
  int dim = db->man.dim, rc;
  uint64_t first = 1;
  MDB_val k = {sizeof first, &first}, v;
  *out = NULL;
  *upto = 0;
  if ((rc = vlm_index_create(factory, dim, VLM_METRIC_IP, &ix)))
    return rc;
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(txn, db->lm.vecs, &cur)))) {
    rc = vlm__lmdb_err(rc, "vecs");
    goto fail;
  }
  if (!vlm_index_is_trained(ix)) {
    int64_t need = vlm_index_train_size(ix);
    if (need < 1)
      need = 1;
    if (nlive < need) {
      *out = ix; /* not enough vectors yet: exact search meanwhile */
      mdb_cursor_close(cur);
      return 0;
    }
    int64_t ntrain = nlive < 2 * need ? nlive : 2 * need;
    int64_t stride = nlive / ntrain, seen = 0, got = 0;
    if (!(buf = malloc((size_t)ntrain * dim * sizeof(float)))) {
      rc = vlm_seterr(VLM_ENOMEM, "training sample");
      goto fail;
    }
    for (rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
         rc == 0 && got < ntrain; rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      uint32_t flags;
      const void *vec[VLM__NMOD];
      if ((rc = vlm__vecs_parse(&v, dim, &flags, vec)))
        goto fail;
      if (!vec[m] || !vlm__vec_finite(vec[m], dim))
        continue;
      if (seen++ % stride == 0)
        memcpy(buf + (size_t)got++ * dim, vec[m], (size_t)dim * 4);
    }
    if (rc && rc != MDB_NOTFOUND) {
      rc = vlm__lmdb_err(rc, "vecs");
      goto fail;
    }
    if ((rc = vlm_index_train(ix, got, buf)))
      goto fail;
    free(buf);
    buf = NULL;
  }
  mdb_cursor_close(cur);
  cur = NULL;
  /* a Flat index takes every live vector: room for them at once (at
   * 200,000 x 512 growing it chunk by chunk was most of the build) */
  if ((rc = vlm_index_reserve(ix, nlive)))
    goto fail;
  if ((rc = add_range(db, txn, m, ix, 1, tnext)))
    goto fail;
  *out = ix;
  *upto = tnext;
  return 0;
fail:
  free(buf);
  if (cur)
    mdb_cursor_close(cur);
  vlm_index_free(ix);
  return rc;
}

/* Remove ids from index m, or count them as tombstones when the index
 * cannot remove (HNSW) or removal fails: a tombstone is always safe, since
 * searches resolve every hit against LMDB. */
static void drop_ids(vlm__vindex *vx, const int64_t *ids, int64_t n) {
  if (n == 0)
    return;
  if (vx->removable != 0) {
    int64_t removed = 0;
    int rc = vlm_index_remove(vx->index, n, ids, &removed);
    if (rc == 0) {
      vx->removable = 1; /* ids the index did not hold need no tombstone */
      return;
    }
    vx->removable = 0;
  }
  vx->ntomb += n;
}

typedef struct {
  int64_t *ids;
  size_t n, cap;
} idvec;

static int idvec_push(idvec *v, int64_t id) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 256;
    int64_t *p = realloc(v->ids, cap * sizeof *p);
    if (!p)
      return vlm_seterr(VLM_ENOMEM, "id list");
    v->ids = p;
    v->cap = cap;
  }
  v->ids[v->n++] = id;
  return 0;
}

/* Apply batches (ix_seq, T] to the index side.  Caller holds index_mu. */
static int catch_up_locked(vlm_db *db) {
  assert(vlm__index_held(db));
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  vlm__change *ch = NULL;
  size_t nch;
  idvec drops[VLM__NMOD] = {{0}}, olds = {0};
  float *buf = NULL;
  int64_t *ids = NULL;
  uint64_t tseq, tnext;
  int dim = db->man.dim, rc;
  if ((rc = begin_published(db, &txn)))
    return rc;
  if ((rc = txn_state(db, txn, &tseq, &tnext)))
    goto done;
  if (tseq == db->ix_seq && tnext == db->ix_next)
    goto done;
  /* Replaced and deleted ids of the new batches. */
  for (uint64_t s = db->ix_seq + 1; s <= tseq; s++) {
    rc = vlm__log_get(&db->lm, txn, s, &ch, &nch);
    if (rc == VLM_ENOTFOUND) {
      rc = vlm_seterr(VLM_ECORRUPT, "batch %llu missing from the log",
                      (unsigned long long)s);
      goto done;
    }
    if (rc)
      goto done;
    for (size_t i = 0; i < nch; i++)
      if (ch[i].old_id && (rc = idvec_push(&olds, (int64_t)ch[i].old_id)))
        goto done;
    free(ch);
    ch = NULL;
  }
  pthread_rwlock_wrlock(&db->index_lock);
  rc = grow_bits(db, tnext);
  if (!rc) {
    for (size_t i = 0; i < olds.n && !rc; i++) {
      uint64_t id = (uint64_t)olds.ids[i];
      if (id >= db->ix_next)
        continue; /* born and gone within these batches */
      for (int m = 0; m < VLM__NMOD && !rc; m++) {
        vlm__vindex *vx = &db->vx[m];
        if (!vlm__bit(vx->live, id))
          continue;
        clear_bit(vx->live, id);
        vx->nlive--;
        if (id < vx->upto)
          rc = idvec_push(&drops[m], (int64_t)id);
      }
    }
    for (int m = 0; m < VLM__NMOD && !rc; m++)
      drop_ids(&db->vx[m], drops[m].ids, (int64_t)drops[m].n);
  }
  pthread_rwlock_unlock(&db->index_lock);
  if (rc)
    goto done;

  /* New items, in chunks so searches are not held off for long. */
  buf = malloc((size_t)ADD_CHUNK * VLM__NMOD * dim * sizeof(float));
  ids = malloc((size_t)ADD_CHUNK * VLM__NMOD * sizeof *ids);
  if (!buf || !ids) {
    rc = vlm_seterr(VLM_ENOMEM, "index catch-up");
    goto done;
  }
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(txn, db->lm.vecs, &cur)))) {
    rc = vlm__lmdb_err(rc, "vecs");
    goto done;
  }
  uint64_t start = db->ix_next;
  MDB_val k = {sizeof start, &start}, v;
  int mrc = vlm__mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  for (;;) {
    int64_t n[VLM__NMOD] = {0, 0};
    uint64_t chunk_ids[ADD_CHUNK];
    uint32_t chunk_flags[ADD_CHUNK];
    int nchunk = 0;
    uint64_t id = 0;
    for (; mrc == 0 && nchunk < ADD_CHUNK;
         mrc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      uint32_t flags;
      const void *vec[VLM__NMOD];
      memcpy(&id, k.mv_data, 8);
      if (id >= tnext) {
        mrc = MDB_NOTFOUND;
        break;
      }
      if ((rc = vlm__vecs_parse(&v, dim, &flags, vec)))
        goto done;
      chunk_ids[nchunk] = id;
      chunk_flags[nchunk++] = flags;
      for (int m = 0; m < VLM__NMOD; m++) {
        /* id < upto: added by an earlier catch-up whose other modality
         * failed (ix_next did not move) */
        if (!vec[m] || !vlm_index_is_trained(db->vx[m].index) ||
            db->vx[m].upto == 0 || id < db->vx[m].upto ||
            frozen(db, m))
          continue;
        if (!vlm__vec_finite(vec[m], dim)) {
          skip_bad(db, m, id);
          continue;
        }
        int64_t j = m * ADD_CHUNK + n[m]++;
        memcpy(buf + (size_t)j * dim, vec[m], (size_t)dim * 4);
        ids[j] = (int64_t)id;
      }
    }
    if (mrc && mrc != MDB_NOTFOUND) {
      rc = vlm__lmdb_err(mrc, "vecs");
      goto done;
    }
    uint64_t upto = mrc == MDB_NOTFOUND ? tnext : id + 1;
    pthread_rwlock_wrlock(&db->index_lock);
    /* (a chunk retried after a failed add is counted once) */
    for (int i = 0; i < nchunk; i++)
      for (int m = 0; m < VLM__NMOD; m++)
        if ((chunk_flags[i] & (m == 0 ? VLM__HAS_IMAGE : VLM__HAS_TEXT)) &&
            !vlm__bit(db->vx[m].live, chunk_ids[i])) {
          set_bit(db->vx[m].live, chunk_ids[i]);
          db->vx[m].nlive++;
        }
    for (int m = 0; m < VLM__NMOD && !rc; m++) {
      vlm__vindex *vx = &db->vx[m];
      /* A mapped index takes no adds: its upto stays, and what came
       * after is the pending tail, searched exactly. */
      if (vx->upto == 0 || !vlm_index_is_trained(vx->index) || frozen(db, m))
        continue;
      if (n[m])
        rc = VLM__INDEX_ADD(vx->index, n[m], buf + (size_t)m * ADD_CHUNK * dim,
                           ids + m * ADD_CHUNK);
      if (!rc)
        vx->upto = upto;
    }
    if (!rc && mrc == MDB_NOTFOUND) {
      db->ix_seq = tseq;
      db->ix_next = tnext;
    }
    pthread_rwlock_unlock(&db->index_lock);
    if (rc || mrc == MDB_NOTFOUND)
      break;
  }
  if (rc)
    goto done;
  /* Train an index that has just reached enough vectors.  The build reads
   * txn (state tseq, which the index side now matches) outside the lock. */
  for (int m = 0; m < VLM__NMOD; m++) {
    vlm__vindex *vx = &db->vx[m];
    if (vx->upto != 0 || vlm_index_is_trained(vx->index) || frozen(db, m))
      continue;
    int64_t need = vlm_index_train_size(vx->index);
    if (vx->nlive < (need < 1 ? 1 : need))
      continue;
    vlm_index *fresh = NULL;
    uint64_t upto = 0;
    if ((rc = build_index(db, txn, db->man.factory, m, tnext, vx->nlive,
                          &fresh, &upto)))
      goto done;
    pthread_rwlock_wrlock(&db->index_lock);
    vlm_index *old = swap_index(db, m, fresh, upto);
    pthread_rwlock_unlock(&db->index_lock);
    vlm_index_free(old);
  }
done:
  if (cur)
    mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  free(ch);
  free(olds.ids);
  for (int m = 0; m < VLM__NMOD; m++)
    free(drops[m].ids);
  free(buf);
  free(ids);
  return rc;
}

int vlm__vindex_catch_up(vlm_db *db) {
  vlm__index_lock(db);
  int rc = catch_up_locked(db);
  /* A failed tuning keeps the previous effort; it is retried next time. */
  for (int m = 0; m < VLM__NMOD && !rc; m++)
    if (vlm__vindex_tune(db, m, 0) != 0)
      vlm__warn(db, "%s: tuning the %s index: %s", db->dir, mod_name[m],
                vlm_errmsg());
  vlm__index_unlock(db);
  return rc;
}

/* Load modality m's checkpoint and bring it to the state of txn, or
 * return non-zero (with the reason in why) to have it rebuilt. */
static int load_checkpoint(vlm_db *db, MDB_txn *txn, int m, uint64_t tseq,
                           uint64_t tnext, char *why, size_t whylen) {
  const vlm__ckpt *c = &db->man.ckpt[m];
  vlm__vindex *vx = &db->vx[m];
  char path[PATH_MAX];
  vlm_index *ix = NULL;
  vlm__change *ch = NULL;
  size_t nch;
  idvec drops = {0};
  snprintf(path, sizeof path, "%s/%s", db->dir, c->file);
  if (c->seq > tseq || c->upto > tnext) {
    snprintf(why, whylen, "%s is ahead of the stores", c->file);
    return -1;
  }
  if ((db->mmap_index ? vlm_index_read_mmap(path, &ix)
                      : vlm_index_read(path, &ix)) != 0) {
    snprintf(why, whylen, "%s: %s", c->file, vlm_errmsg());
    return -1;
  }
  if (vlm_index_dim(ix) != db->man.dim ||
      vlm_index_metric(ix) != VLM_METRIC_IP || !vlm_index_is_trained(ix)) {
    snprintf(why, whylen, "%s does not match the manifest", c->file);
    goto fail;
  }
  for (uint64_t s = c->seq + 1; s <= tseq; s++) {
    if (vlm__log_get(&db->lm, txn, s, &ch, &nch) != 0) {
      snprintf(why, whylen, "batch %llu is missing from the log",
               (unsigned long long)s);
      goto fail;
    }
    for (size_t i = 0; i < nch; i++)
      if (ch[i].old_id && ch[i].old_id < c->upto &&
          idvec_push(&drops, (int64_t)ch[i].old_id) != 0) {
        snprintf(why, whylen, "out of memory");
        goto fail;
      }
    free(ch);
    ch = NULL;
  }
  vx->index = ix;
  vx->removable = -1;
  vx->ntomb = 0;
  /* The checkpoint may hold vectors of items deleted after it: remove
   * them where the index can, else they become tombstones below. */
  if (drops.n) {
    int64_t removed = 0;
    if (vlm_index_remove(ix, (int64_t)drops.n, drops.ids, &removed) == 0)
      vx->removable = 1;
    else
      vx->removable = 0;
  }
  free(drops.ids);
  vx->upto = c->upto;
  vx->tuned = c->tuned;
  vx->tuned_n = c->tuned_n;
  vx->tuned_recall = c->tuned_recall;
  vx->tuned_queries = c->tuned_queries;
  return 0;
fail:
  free(ch);
  free(drops.ids);
  vlm_index_free(ix);
  return -1;
}

/* Add the live vectors of modality m with id in [vx->upto, tnext). */
static int add_tail(vlm_db *db, MDB_txn *txn, int m, uint64_t tnext) {
  vlm__vindex *vx = &db->vx[m];
  if (frozen(db, m))
    return 0; /* the tail stays the pending tail */
  int rc = add_range(db, txn, m, vx->index, vx->upto, tnext);
  if (!rc)
    vx->upto = tnext;
  return rc;
}

/* A read-only open defers reading modality m's checkpoint to its first
 * use: check it can serve txn's state (tseq, tnext), hold the file open
 * and note the ids of the checkpoint that later batches replaced or
 * deleted; the pending tail [upto, tnext) waits too.  -1 with the reason
 * in why as load_checkpoint. */
static int defer_checkpoint(vlm_db *db, MDB_txn *txn, int m, uint64_t tseq,
                            uint64_t tnext, char *why, size_t whylen) {
  const vlm__ckpt *c = &db->man.ckpt[m];
  vlm__vindex *vx = &db->vx[m];
  char path[PATH_MAX];
  vlm__change *ch = NULL;
  size_t nch;
  idvec drops = {0};
  if (c->seq > tseq || c->upto > tnext) {
    snprintf(why, whylen, "%s is ahead of the stores", c->file);
    return -1;
  }
  snprintf(path, sizeof path, "%s/%s", db->dir, c->file);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, whylen, "%s: %s", c->file, strerror(errno));
    return -1;
  }
  for (uint64_t s = c->seq + 1; s <= tseq; s++) {
    if (vlm__log_get(&db->lm, txn, s, &ch, &nch) != 0) {
      snprintf(why, whylen, "batch %llu is missing from the log",
               (unsigned long long)s);
      goto fail;
    }
    for (size_t i = 0; i < nch; i++)
      if (ch[i].old_id && ch[i].old_id < c->upto &&
          idvec_push(&drops, (int64_t)ch[i].old_id) != 0) {
        snprintf(why, whylen, "out of memory");
        goto fail;
      }
    free(ch);
    ch = NULL;
  }
  vx->index = NULL;
  vx->lazy = 1;
  vx->lazy_fd = fd;
  vx->lazy_drops = drops.ids;
  vx->lazy_ndrops = drops.n;
  vx->upto = c->upto;
  vx->removable = -1;
  vx->ntomb = 0;
  vx->tuned = c->tuned;
  vx->tuned_n = c->tuned_n;
  vx->tuned_recall = c->tuned_recall;
  vx->tuned_queries = c->tuned_queries;
  db->lazy = 1;
  return 0;
fail:
  free(ch);
  free(drops.ids);
  close(fd);
  return -1;
}

/* Load a deferred index (read-only handle, lazy_mu held): the file held
 * open since open, less the ids noted then, plus the tail up to open's id
 * bound read from the store as it is now (an item deleted since is simply
 * not added; every hit is resolved against the search's snapshot
 * anyway).  A file that cannot serve is rebuilt from the store, with the
 * warning open would have given. */
static int load_deferred(vlm_db *db, int m) {
  vlm__vindex *vx = &db->vx[m];
  MDB_txn *txn = NULL;
  vlm_index *ix = NULL;
  uint64_t upto = vx->upto;
  char path[PATH_MAX], why[PATH_MAX + 128];
  int rc = VLM__STORE("lmdb-read",
                      mdb_txn_begin(db->lm.env, NULL, MDB_RDONLY, &txn));
  if (rc)
    return vlm__lmdb_err(rc, "load index");
  /* The file by its name while it is still the one held open (an index
   * whose lists are in a file of their own finds that file beside it),
   * else (a writer's checkpoint replaced it) the one held open. */
  struct stat held, named;
  snprintf(path, sizeof path, "%s/%s", db->dir, db->man.ckpt[m].file);
  if (vx->lazy_fd >= 0 &&
      (fstat(vx->lazy_fd, &held) != 0 || stat(path, &named) != 0 ||
       held.st_dev != named.st_dev || held.st_ino != named.st_ino))
    snprintf(path, sizeof path, "/proc/self/fd/%d", vx->lazy_fd);
  why[0] = '\0';
  if (vx->lazy_fd < 0) {
    /* a Flat index: no file, built from the vectors table (below) */
  } else if (vlm_index_read(path, &ix) != 0) {
    snprintf(why, sizeof why, "%s: %s", db->man.ckpt[m].file, vlm_errmsg());
  } else if (vlm_index_dim(ix) != db->man.dim ||
             vlm_index_metric(ix) != VLM_METRIC_IP ||
             !vlm_index_is_trained(ix)) {
    snprintf(why, sizeof why, "%s does not match the manifest",
             db->man.ckpt[m].file);
    vlm_index_free(ix);
    ix = NULL;
  }
  int removable = -1;
  if (ix) {
    if (vx->lazy_ndrops) {
      int64_t removed = 0;
      removable = vlm_index_remove(ix, (int64_t)vx->lazy_ndrops,
                                   vx->lazy_drops, &removed) == 0;
    }
    if (!vlm_index_is_ondisk(ix) && !((db->defer_index >> m) & 1u)) {
      /* (a mapped or deferred one takes no tail: it stays pending) */
      rc = add_range(db, txn, m, ix, upto, db->ix_next);
      upto = db->ix_next;
    }
  } else {
    if (vx->lazy_fd >= 0)
      vlm__warn(db, "%s: %s index: %s; rebuilding it from the payload "
                "store", db->dir, mod_name[m], why);
    removable = -1;
    rc = build_index(db, txn, db->man.factory, m, db->ix_next, vx->nlive,
                     &ix, &upto);
  }
  mdb_txn_abort(txn);
  if (rc) {
    vlm_index_free(ix);
    return rc;
  }
  pthread_rwlock_wrlock(&db->index_lock);
  vx->index = ix;
  vx->upto = upto;
  vx->removable = removable;
  /* everything in the index but the live items below upto (as open) */
  int64_t live_below = 0;
  if (upto && vlm_index_is_ondisk(ix)) {
    for (uint64_t id = 0; id < upto; id++)
      live_below += vlm__bit(vx->live, id);
  } else if (upto) {
    live_below = vx->nlive;
  }
  vx->ntomb = vlm_index_count(ix) - live_below;
  if (vx->ntomb < 0)
    vx->ntomb = 0;
  if (vx->ntomb > 0 && vx->removable < 0)
    vx->removable = 0;
  vx->lazy = 0;
  pthread_rwlock_unlock(&db->index_lock);
  if (vx->lazy_fd >= 0)
    close(vx->lazy_fd);
  vx->lazy_fd = -1;
  free(vx->lazy_drops);
  vx->lazy_drops = NULL;
  vx->lazy_ndrops = 0;
  return 0;
}

int vlm__vindex_ensure(vlm_db *db) {
  if (!__atomic_load_n(&db->lazy, __ATOMIC_ACQUIRE))
    return 0;
  int rc = 0;
  pthread_mutex_lock(&db->lazy_mu);
  for (int m = 0; m < VLM__NMOD && !rc; m++)
    if (db->vx[m].lazy)
      rc = load_deferred(db, m);
  if (!rc)
    __atomic_store_n(&db->lazy, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&db->lazy_mu);
  return rc;
}

/* The live bitmaps at txn's state (tseq, tnext) from the manifest's
 * live file and the log's batches after it (livebits.c); -1 with the
 * reason in why when they cannot be had that way (the caller then walks
 * the vectors).  The bitmaps must be grown to tnext. */
static int load_live(vlm_db *db, MDB_txn *txn, uint64_t tseq, uint64_t tnext,
                     char *why, size_t whylen) {
  const vlm__manifest *man = &db->man;
  char path[PATH_MAX];
  uint8_t *bits[VLM__NMOD] = {db->vx[0].live, db->vx[1].live};
  int64_t nlive[VLM__NMOD];
  vlm__change *ch = NULL;
  size_t nch;
  if (man->live_seq > tseq || man->live_next > tnext) {
    snprintf(why, whylen, "ahead of the payload store");
    return -1;
  }
  snprintf(path, sizeof path, "%s/%s", db->dir, man->live_file);
  if (vlm__live_read(path, man->live_seq, man->live_next, bits,
                     db->live_bytes, nlive, why, whylen) != 0)
    return -1;
  for (uint64_t s = man->live_seq + 1; s <= tseq; s++) {
    int rc = vlm__log_get(&db->lm, txn, s, &ch, &nch);
    if (rc) {
      snprintf(why, whylen, "batch %llu: %s", (unsigned long long)s,
               rc == VLM_ENOTFOUND ? "missing from the log" : vlm_errmsg());
      return -1;
    }
    for (size_t i = 0; i < nch; i++) {
      uint64_t gone = ch[i].old_id, born = ch[i].new_id;
      for (int m = 0; m < VLM__NMOD && gone; m++)
        if (gone < tnext && vlm__bit(bits[m], gone)) {
          clear_bit(bits[m], gone);
          nlive[m]--;
        }
      if (!born)
        continue;
      if (born < man->live_next || born >= tnext) {
        snprintf(why, whylen, "batch %llu adds id %llu outside [%llu, %llu)",
                 (unsigned long long)s, (unsigned long long)born,
                 (unsigned long long)man->live_next,
                 (unsigned long long)tnext);
        free(ch);
        return -1;
      }
      /* Read at txn's state: an id deleted by a later batch is gone
       * already, and that batch's clear finds nothing to clear. */
      uint32_t flags;
      const void *vec[VLM__NMOD];
      rc = vlm__vecs_get(&db->lm, txn, born, db->man.dim, &flags, vec);
      if (rc == VLM_ENOTFOUND)
        continue;
      if (rc) {
        snprintf(why, whylen, "id %llu: %s", (unsigned long long)born,
                 vlm_errmsg());
        free(ch);
        return -1;
      }
      for (int m = 0; m < VLM__NMOD; m++)
        if (vec[m] && !vlm__bit(bits[m], born)) {
          set_bit(bits[m], born);
          nlive[m]++;
        }
    }
    free(ch);
    ch = NULL;
  }
  for (int m = 0; m < VLM__NMOD; m++)
    db->vx[m].nlive = nlive[m];
  return 0;
}

static int vindex_open_once(vlm_db *db, int may_rebuild);

/* A read-only process beside a writer can read a manifest whose index
 * file the writer's next checkpoint has just replaced (or whose log it has
 * pruned): read the manifest again and retry before rebuilding from the
 * payload store. */
int vlm__vindex_open(vlm_db *db) {
  for (int attempt = 0;; attempt++) {
    int last = !db->follow || attempt >= 3;
    int rc = vindex_open_once(db, last);
    if (rc != VLM_EBUSY || last)
      return rc;
    vlm__vindex_close(db);
    for (int m = 0; m < VLM__NMOD; m++)
      db->vx[m].nlive = 0;
    vlm__manifest fresh;
    if (vlm__manifest_read(db->dir, &fresh) == 0) {
      memcpy(db->man.ckpt, fresh.ckpt, sizeof fresh.ckpt);
      memcpy(db->man.live_file, fresh.live_file, sizeof fresh.live_file);
      db->man.live_seq = fresh.live_seq;
      db->man.live_next = fresh.live_next;
    }
  }
}

static int vindex_open_once(vlm_db *db, int may_rebuild) {
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  uint64_t tseq, tnext;
  int dim = db->man.dim, rc;
  if ((rc = VLM__STORE("lmdb-read", mdb_txn_begin(db->lm.env, NULL, MDB_RDONLY, &txn))))
    return vlm__lmdb_err(rc, "open index");
  if ((rc = txn_state(db, txn, &tseq, &tnext)))
    goto done;
  if ((rc = grow_bits(db, tnext)))
    goto done;
  /* Live bitmaps: from the last checkpoint's file and the batches since
   * when it agrees with the manifest and the log, else from the vectors
   * table. */
  if (db->man.live_file[0]) {
    char why[PATH_MAX + 128];
    if (load_live(db, txn, tseq, tnext, why, sizeof why) == 0)
      goto have_live;
    if (!may_rebuild) { /* a writer beside us may have replaced it */
      rc = VLM_EBUSY;
      goto done;
    }
    vlm__warn(db, "%s: live bitmaps %s: %s; reading every vector record "
              "instead", db->dir, db->man.live_file, why);
    db->live_refused = 1;
    for (int m = 0; m < VLM__NMOD; m++) {
      memset(db->vx[m].live, 0, db->live_bytes);
      db->vx[m].nlive = 0;
    }
  }
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(txn, db->lm.vecs, &cur)))) {
    rc = vlm__lmdb_err(rc, "vecs");
    goto done;
  }
  MDB_val k, v;
  for (rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    uint64_t id;
    uint32_t flags;
    const void *vec[VLM__NMOD];
    memcpy(&id, k.mv_data, 8);
    if (id >= tnext) {
      rc = vlm_seterr(VLM_ECORRUPT, "item id %llu beyond next_id %llu",
                      (unsigned long long)id, (unsigned long long)tnext);
      goto done;
    }
    if ((rc = vlm__vecs_parse(&v, dim, &flags, vec)))
      goto done;
    for (int m = 0; m < VLM__NMOD; m++)
      if (vec[m]) {
        set_bit(db->vx[m].live, id);
        db->vx[m].nlive++;
      }
  }
  if (rc != MDB_NOTFOUND) {
    rc = vlm__lmdb_err(rc, "vecs");
    goto done;
  }
  mdb_cursor_close(cur);
  cur = NULL;
have_live:
  for (int m = 0; m < VLM__NMOD; m++) {
    vlm__vindex *vx = &db->vx[m];
    char why[PATH_MAX + 128];
    int loaded = 0;
    if (db->man.ckpt[m].file[0]) {
      /* a read-only handle reads the file at its first search (a mapped
       * one costs little at open: it maps it now) */
      if ((db->readonly && !db->mmap_index
               ? defer_checkpoint(db, txn, m, tseq, tnext, why, sizeof why)
               : load_checkpoint(db, txn, m, tseq, tnext, why,
                                 sizeof why)) == 0) {
        loaded = 1;
      } else if (!may_rebuild) {
        rc = VLM_EBUSY; /* read the manifest again first */
        goto done;
      } else {
        vlm__warn(db, "%s: %s index: %s; rebuilding it from the payload "
                  "store", db->dir, mod_name[m], why);
      }
    }
    if (!db->man.ckpt[m].file[0] && db->readonly && !db->mmap_index &&
        !(db->defer_index & (1u << m)) && vlm__vindex_fileless(db, m)) {
      /* a Flat index: built from the vectors at its first use, as a
       * file would be read then (load_deferred) */
      vx->index = NULL;
      vx->lazy = 1;
      vx->lazy_fd = -1;
      vx->lazy_drops = NULL;
      vx->lazy_ndrops = 0;
      vx->upto = 0;
      vx->removable = -1;
      vx->ntomb = 0;
      db->lazy = 1;
      continue;
    }
    if (loaded && vx->lazy)
      continue;
    if (loaded) {
      if ((rc = add_tail(db, txn, m, tnext)))
        goto done;
    } else if (db->defer_index & (1u << m)) {
      /* an empty index, left so: the items are the pending tail */
      if ((rc = vlm_index_create(db->man.factory, db->man.dim, VLM_METRIC_IP,
                                 &vx->index)))
        goto done;
      vx->upto = 0;
      vx->removable = -1;
    } else {
      vlm_index *ix = NULL;
      uint64_t upto = 0;
      if ((rc = build_index(db, txn, db->man.factory, m, tnext, vx->nlive,
                            &ix, &upto)))
        goto done;
      vx->index = ix;
      vx->upto = upto;
      vx->removable = -1;
    }
    /* Everything in the index but the live items below upto (all of
     * nlive, unless a mapped index left a tail it cannot take). */
    int64_t live_below = 0;
    if (vx->upto && vlm_index_is_ondisk(vx->index)) {
      for (uint64_t id = 0; id < vx->upto; id++)
        live_below += vlm__bit(vx->live, id);
    } else if (vx->upto) {
      live_below = vx->nlive;
    }
    vx->ntomb = vlm_index_count(vx->index) - live_below;
    if (vx->ntomb < 0)
      vx->ntomb = 0;
    if (vx->ntomb > 0 && vx->removable < 0)
      vx->removable = 0;
    /* Enough vectors now for an index that still waits for training. */
    if (vx->upto == 0 && !vlm_index_is_trained(vx->index) && !frozen(db, m)) {
      int64_t need = vlm_index_train_size(vx->index);
      if (vx->nlive >= (need < 1 ? 1 : need)) {
        vlm_index *ix = NULL;
        uint64_t upto = 0;
        if ((rc = build_index(db, txn, db->man.factory, m, tnext, vx->nlive,
                              &ix, &upto)))
          goto done;
        vlm_index_free(vx->index);
        vx->index = ix;
        vx->upto = upto;
      }
    }
  }
  db->ix_seq = tseq;
  db->ix_next = tnext;
  rc = 0;
done:
  if (cur)
    mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  /* An index rebuilt here, or checkpointed before tuning existed, has no
   * tuned effort; a writer measures it now (a reader searches with the
   * defaults rather than pay for it on every open). */
  if (!rc && !db->readonly) {
    vlm__index_lock(db); /* nothing else runs yet; tune's contract */
    for (int m = 0; m < VLM__NMOD; m++)
      if (vlm__vindex_tune(db, m, 0) != 0)
        vlm__warn(db, "%s: tuning the %s index: %s", db->dir, mod_name[m],
                  vlm_errmsg());
    vlm__index_unlock(db);
  }
  return rc;
}

void vlm__vindex_close(vlm_db *db) {
  for (int m = 0; m < VLM__NMOD; m++) {
    if (db->vx[m].lazy) {
      if (db->vx[m].lazy_fd >= 0)
        close(db->vx[m].lazy_fd);
      free(db->vx[m].lazy_drops);
      db->vx[m].lazy_drops = NULL;
      db->vx[m].lazy_ndrops = 0;
      db->vx[m].lazy = 0;
    }
    vlm_index_free(db->vx[m].index);
    free(db->vx[m].live);
    db->vx[m].index = NULL;
    db->vx[m].live = NULL;
  }
  db->live_bytes = 0;
}

static void nonce(char *out, size_t cap) {
  static unsigned counter;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(out, cap, "%08lx%04x",
           (unsigned long)(ts.tv_nsec ^ (ts.tv_sec << 20) ^ getpid()),
           __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED) & 0xffff);
}

/* The base name of an index's list file ("" without one). */
static void lists_base(const vlm_index *ix, char *out, size_t cap) {
  const char *p = ix ? vlm_index_lists_path(ix) : NULL;
  const char *slash = p ? strrchr(p, '/') : NULL;
  snprintf(out, cap, "%s", slash ? slash + 1 : p ? p : "");
}

int vlm__vindex_ckpt_lists(vlm_db *db, int m, const vlm__ckpt *c,
                           const char *path, char *out, size_t cap) {
  char own[PATH_MAX];
  int ondisk = 0, rc = -1;
  out[0] = '\0';
  if (!c->file[0])
    return 0;
  if (c->lists[0]) {
    snprintf(out, cap, "%s", c->lists);
    return 0;
  }
  if (!path) {
    snprintf(own, sizeof own, "%s/%s", db->dir, c->file);
    path = own;
  }
  if (vlm_index_file_is_ondisk(path, &ondisk) != 0)
    return -1;
  if (!ondisk)
    return 0;
  /* a manifest from before the list file was recorded: the name is in
   * the index file's FAISS part, which only loading it reads; the index
   * this handle loaded from that file knows it */
  pthread_rwlock_rdlock(&db->index_lock);
  if (db->vx[m].index && !strcmp(db->man.ckpt[m].file, c->file)) {
    lists_base(db->vx[m].index, out, cap);
    rc = out[0] ? 0 : -1;
  }
  pthread_rwlock_unlock(&db->index_lock);
  return rc;
}

/* A list file's name as adopt gives them: <modality>-lists-*.ivfdata.
 * (Other .ivfdata files, a user's merge output put here, are not ours.) */
static int lists_name(const char *name) {
  size_t n = strlen(name);
  if (n <= 8 || strcmp(name + n - 8, ".ivfdata"))
    return 0;
  for (int m = 0; m < VLM__NMOD; m++) {
    size_t k = strlen(mod_name[m]);
    if (!strncmp(name, mod_name[m], k) && !strncmp(name + k, "-lists-", 7))
      return 1;
  }
  return 0;
}

/* Remove index files the manifest does not name (left by a crash between
 * writing a checkpoint and switching the manifest to it), and list files
 * no checkpoint in force names (an adopted index replaced by reindex or
 * another adoption, a crash between linking one in and the switch).  A
 * list file goes only when the list file of every checkpoint in force is
 * known: an index of an older manifest that this handle could not load
 * keeps them all until a checkpoint records its name.  A read-only
 * process that mapped a removed list file keeps its pages (the file lives
 * until it is unmapped). */
void vlm__vindex_remove_orphans(vlm_db *db) {
  char keep[VLM__NMOD][sizeof db->man.ckpt[0].lists];
  int lists_known = 1;
  for (int m = 0; m < VLM__NMOD; m++)
    if (vlm__vindex_ckpt_lists(db, m, &db->man.ckpt[m], NULL, keep[m],
                               sizeof keep[m]) != 0)
      lists_known = 0;
  DIR *d = opendir(db->dir);
  struct dirent *e;
  if (!d)
    return;
  while ((e = readdir(d))) {
    size_t n = strlen(e->d_name);
    int ours = (n > 6 && !strcmp(e->d_name + n - 6, ".faiss")) ||
               (n > 10 && !strcmp(e->d_name + n - 10, ".faiss.tmp")) ||
               (!strncmp(e->d_name, "live-", 5) &&
                ((n > 5 && !strcmp(e->d_name + n - 5, ".bits")) ||
                 (n > 9 && !strcmp(e->d_name + n - 9, ".bits.tmp")))) ||
               !strcmp(e->d_name, "manifest.json.tmp") ||
               (lists_known && lists_name(e->d_name));
    if (!ours)
      continue;
    int named = !strcmp(e->d_name, db->man.live_file);
    for (int m = 0; m < VLM__NMOD; m++)
      if (!strcmp(e->d_name, db->man.ckpt[m].file) ||
          !strcmp(e->d_name, keep[m]))
        named = 1;
    if (!named && unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT)
      vlm__warn(db, "%s/%s: cannot remove: %s", db->dir, e->d_name,
                strerror(errno));
  }
  closedir(d);
}

/* Write every index that changed, switch the manifest to the new files,
 * drop the old ones and prune the log.  Caller holds write_mu. */
static int checkpoint_locked(vlm_db *db, int force) {
  assert(vlm__write_held(db) && vlm__index_held(db));
  vlm__manifest next = db->man;
  MDB_txn *txn = NULL;
  int rc = 0, changed = 0;
  for (int m = 0; m < VLM__NMOD; m++) {
    vlm__vindex *vx = &db->vx[m];
    vlm__ckpt *c = &next.ckpt[m];
    if (vx->upto == 0 || !vlm_index_is_trained(vx->index) ||
        vlm__vindex_fileless(db, m)) {
      if (c->file[0])
        changed = 1;
      memset(c, 0, sizeof *c); /* rebuilt from LMDB on open */
      continue;
    }
    char lists[sizeof c->lists];
    lists_base(vx->index, lists, sizeof lists);
    /* an index that is not the one the file holds (the file named a
     * list file open could not map, and the index was rebuilt) is
     * written again */
    int stale = c->lists[0] && strcmp(c->lists, lists);
    if (!force && !stale && c->file[0] && c->seq == db->ix_seq &&
        c->upto == vx->upto) {
      if (strcmp(c->lists, lists)) {
        /* the index loaded from this file at open: a manifest from
         * before the list file was recorded gets its name */
        strcpy(c->lists, lists);
        changed = 1;
      }
      if (c->tuned != vx->tuned || c->tuned_n != vx->tuned_n) {
        c->tuned = vx->tuned;
        c->tuned_n = vx->tuned_n;
        c->tuned_recall = vx->tuned_recall;
        c->tuned_queries = vx->tuned_queries;
        changed = 1;
      }
      continue;
    }
    c->tuned = vx->tuned;
    c->tuned_n = vx->tuned_n;
    c->tuned_recall = vx->tuned_recall;
    c->tuned_queries = vx->tuned_queries;
    char n[32], path[PATH_MAX];
    nonce(n, sizeof n);
    snprintf(c->file, sizeof c->file, "%s-%llu-%s.faiss", mod_name[m],
             (unsigned long long)db->ix_seq, n);
    snprintf(path, sizeof path, "%s/%s", db->dir, c->file);
    /* Exclusive, although writing only reads the index: the index module
     * lends an HNSW index a search's efSearch for the duration of that
     * search, so a concurrent write could save the borrowed value. */
    pthread_rwlock_wrlock(&db->index_lock);
    rc = VLM__FAULT("file-write")
             ? vlm_seterr(VLM_EIO, "%s: write: I/O error (test fault)", path)
             : vlm_index_write(vx->index, path);
    c->seq = db->ix_seq;
    c->upto = vx->upto;
    strcpy(c->lists, lists);
    pthread_rwlock_unlock(&db->index_lock);
    if (rc)
      goto fail;
    changed = 1;
  }
  /* A live file behind the index side (every index untrained, so no
   * index file changed) would outlive the log it needs, and one open
   * refused would be refused at every open: write it again. */
  /* A forced checkpoint (reindex: a new factory) writes the manifest even
   * when no index file changed (a Flat index has none). */
  if (!changed && (force || !db->man.live_file[0] || db->live_refused ||
                   db->man.live_seq != db->ix_seq ||
                   db->man.live_next != db->ix_next))
    changed = 1;
  if (changed) {
    /* The live bitmaps as they stand at ix_seq (index_mu keeps the
     * index side still), so the next open need not read every vector. */
    char n[32], path[PATH_MAX];
    nonce(n, sizeof n);
    snprintf(next.live_file, sizeof next.live_file, "live-%llu-%s.bits",
             (unsigned long long)db->ix_seq, n);
    snprintf(path, sizeof path, "%s/%s", db->dir, next.live_file);
    next.live_seq = db->ix_seq;
    next.live_next = db->ix_next;
    uint8_t *const bits[VLM__NMOD] = {db->vx[0].live, db->vx[1].live};
    if ((rc = VLM__FAULT("file-write")
                  ? vlm_seterr(VLM_EIO, "%s: write: I/O error (test fault)",
                               path)
                  : vlm__live_write(path, next.live_seq, next.live_next,
                                    bits)))
      goto fail;
    if ((rc = vlm__fsync_dir(db->dir)) ||
        (rc = vlm__manifest_write(db->dir, &next)))
      goto fail;
    /* Only the checkpoint entries change; searches read the rest of the
     * manifest without locks, stat reads these under index_lock. */
    pthread_rwlock_wrlock(&db->index_lock);
    memcpy(db->man.ckpt, next.ckpt, sizeof next.ckpt);
    memcpy(db->man.live_file, next.live_file, sizeof next.live_file);
    db->man.live_seq = next.live_seq;
    db->man.live_next = next.live_next;
    db->live_refused = 0;
    pthread_rwlock_unlock(&db->index_lock);
    vlm__vindex_remove_orphans(db);
  }
  /* Prune log entries every store has: SQLite is at pub_seq, and each
   * checkpointed index at its seq; an index without a checkpoint is
   * rebuilt from the vectors, which needs no log. */
  /* The last entry always stays: a replica's history check compares it
   * with its primary's (repl.c, vlm_db_log_digest). */
  uint64_t keep_after = db->pub_seq ? db->pub_seq - 1 : 0;
  if (db->log_pin < keep_after) /* a backup replays from there */
    keep_after = db->log_pin;
  uint64_t repl_pin = __atomic_load_n(&db->repl_pin, __ATOMIC_ACQUIRE);
  if (repl_pin < keep_after) /* replicas still read from there */
    keep_after = repl_pin;
  for (int m = 0; m < VLM__NMOD; m++)
    if (db->man.ckpt[m].file[0] && db->man.ckpt[m].seq < keep_after)
      keep_after = db->man.ckpt[m].seq;
  /* and the live file brings its bitmaps forward by the log (an index
   * without a file, Flat, no longer holds the pruning back to it) */
  if (db->man.live_file[0] && db->man.live_seq < keep_after)
    keep_after = db->man.live_seq;
  if ((rc = VLM__STORE("lmdb-begin", mdb_txn_begin(db->lm.env, NULL, 0, &txn))))
    return vlm__lmdb_err(rc, "prune log");
  MDB_cursor *cur;
  MDB_val k, v;
  int pruned = 0;
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(txn, db->lm.log, &cur))) == 0) {
    while ((rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
      uint64_t s;
      memcpy(&s, k.mv_data, 8);
      if (s > keep_after)
        break;
      if ((rc = vlm__mdb_cursor_del(cur, 0)))
        break;
      pruned++;
    }
    mdb_cursor_close(cur);
  }
  if (rc && rc != MDB_NOTFOUND) {
    mdb_txn_abort(txn);
    return vlm__lmdb_err(rc, "prune log");
  }
  if (!pruned) {
    mdb_txn_abort(txn);
    return 0;
  }
  rc = vlm__mdb_txn_commit(txn);
  return rc ? vlm__lmdb_err(rc, "prune log") : 0;
fail:
  for (int m = 0; m < VLM__NMOD; m++)
    if (next.ckpt[m].file[0] && strcmp(next.ckpt[m].file, db->man.ckpt[m].file)) {
      char path[PATH_MAX];
      snprintf(path, sizeof path, "%s/%s", db->dir, next.ckpt[m].file);
      unlink(path);
    }
  if (next.live_file[0] && strcmp(next.live_file, db->man.live_file)) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", db->dir, next.live_file);
    unlink(path);
  }
  return rc;
}

/* Rebuild index m (compaction or a new factory) from the published state;
 * the caller holds write_mu and index_mu, so nothing is published
 * meanwhile and the index side is at txn's state after catch-up. */
static int rebuild(vlm_db *db, int m, const char *factory, vlm_index **out,
                   uint64_t *upto) {
  MDB_txn *txn = NULL;
  uint64_t tseq, tnext;
  int rc = begin_published(db, &txn);
  if (rc)
    return rc;
  if (!(rc = txn_state(db, txn, &tseq, &tnext)))
    rc = build_index(db, txn, factory, m, tnext, db->vx[m].nlive, out, upto);
  mdb_txn_abort(txn);
  return rc;
}

int vlm__vindex_checkpoint(vlm_db *db) {
  vlm__index_lock(db);
  int rc = catch_up_locked(db), force = 0;
  for (int m = 0; m < VLM__NMOD && !rc; m++) {
    vlm__vindex *vx = &db->vx[m];
    int64_t count = vlm_index_count(vx->index);
    if (vx->ntomb == 0 || vx->ntomb * 5 < count)
      continue;
    vlm_index *fresh = NULL;
    uint64_t upto = 0;
    if ((rc = rebuild(db, m, db->man.factory, &fresh, &upto)))
      break;
    pthread_rwlock_wrlock(&db->index_lock);
    vlm_index *old = swap_index(db, m, fresh, upto);
    pthread_rwlock_unlock(&db->index_lock);
    vlm_index_free(old);
    force = 1;
  }
  if (!rc)
    rc = checkpoint_locked(db, force);
  vlm__index_unlock(db);
  return rc;
}

/* Link src to dst, or copy it when they are on different filesystems. */
static int link_or_copy(const char *src, const char *dst) {
  if (link(src, dst) == 0)
    return 0;
  if (errno != EXDEV && errno != EPERM && errno != EMLINK)
    return vlm_seterr(VLM_EIO, "link %s -> %s: %s", src, dst,
                      strerror(errno));
  int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = 0;
  if (in < 0 ||
      (out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", in < 0 ? src : dst, strerror(errno));
    goto done;
  }
  for (;;) {
    ssize_t n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
    if (n == 0)
      break;
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO,
                      "copy %s -> %s: %s", src, dst, strerror(errno));
      goto done;
    }
  }
  if (fsync(out) != 0)
    rc = vlm_seterr(VLM_EIO, "%s: fsync: %s", dst, strerror(errno));
done:
  if (in >= 0)
    close(in);
  if (out >= 0)
    close(out);
  if (rc)
    unlink(dst);
  return rc;
}

int vlm__vindex_adopt(vlm_db *db, int m, const char *path) {
  vlm__vindex *vx = &db->vx[m];
  vlm_index *ix = NULL;
  char dst[PATH_MAX], name[64], n[32];
  int rc, linked = 0;
  vlm__index_lock(db);
  if ((rc = catch_up_locked(db)))
    goto done;
  if ((rc = vlm_index_read(path, &ix)))
    goto done;
  if (!vlm_index_lists_path(ix)) {
    rc = vlm_seterr(VLM_EINVAL, "%s: not a merged index (its inverted lists "
                    "are not a file of their own: vlmdb index merge)", path);
    goto done;
  }
  if (vlm_index_dim(ix) != db->man.dim ||
      vlm_index_metric(ix) != VLM_METRIC_IP ||
      strcmp(vlm_index_factory(ix), db->man.factory) != 0) {
    rc = vlm_seterr(VLM_EMISMATCH, "%s is a %s index of dimension %d; the "
                    "database's is %s of %d", path, vlm_index_factory(ix),
                    vlm_index_dim(ix), db->man.factory, db->man.dim);
    goto done;
  }
  int64_t outside = 0, first = -1;
  if ((rc = vlm_index_ids_outside(ix, vx->live, (int64_t)db->ix_next,
                                  &outside, &first)))
    goto done;
  if (vlm_index_count(ix) != vx->nlive || outside != 0) {
    rc = vlm_seterr(VLM_EMISMATCH, "%s holds %lld %s vectors (%lld of them "
                    "under ids that are not live %s items of the database, "
                    "the first %lld), the database has %lld: it was not "
                    "merged from the shards this database was", path,
                    (long long)vlm_index_count(ix), mod_name[m],
                    (long long)outside, mod_name[m], (long long)first,
                    (long long)vx->nlive);
    goto done;
  }
  nonce(n, sizeof n);
  snprintf(name, sizeof name, "%s-lists-%s.ivfdata", mod_name[m], n);
  snprintf(dst, sizeof dst, "%s/%s", db->dir, name);
  if ((rc = link_or_copy(vlm_index_lists_path(ix), dst)))
    goto done;
  linked = 1;
  if ((rc = vlm__fsync_dir(db->dir)) ||
      (rc = vlm_index_set_lists_path(ix, dst)))
    goto done;
  pthread_rwlock_wrlock(&db->index_lock);
  vlm_index *old = swap_index(db, m, ix, db->ix_next);
  vx->removable = 0;
  vx->tuned = 0;
  vx->tuned_n = 0;
  pthread_rwlock_unlock(&db->index_lock);
  ix = old; /* freed below */
  linked = 0; /* the index in force names it now */
  if (vlm__vindex_tune(db, m, 1) != 0)
    vlm__warn(db, "%s: tuning the %s index: %s", db->dir, mod_name[m],
              vlm_errmsg());
  rc = checkpoint_locked(db, 1);
done:
  if (linked)
    unlink(dst);
  vlm__index_unlock(db);
  vlm_index_free(ix);
  return rc;
}

int vlm__vindex_reindex(vlm_db *db, const char *factory) {
  vlm_index *probe = NULL, *fresh[VLM__NMOD] = {NULL, NULL};
  uint64_t upto[VLM__NMOD] = {0, 0};
  int rc;
  if (!factory || !*factory || strlen(factory) >= sizeof db->man.factory)
    return vlm_seterr(VLM_EINVAL, "reindex: bad factory string");
  if ((rc = vlm_index_create(factory, db->man.dim, VLM_METRIC_IP, &probe)))
    return vlm_seterr(VLM_EINVAL, "reindex: factory \"%s\": %s", factory,
                      vlm_errmsg());
  vlm_index_free(probe);
  vlm__index_lock(db);
  if ((rc = catch_up_locked(db)))
    goto done;
  for (int m = 0; m < VLM__NMOD; m++)
    if ((rc = rebuild(db, m, factory, &fresh[m], &upto[m])))
      goto done;
  pthread_rwlock_wrlock(&db->index_lock);
  for (int m = 0; m < VLM__NMOD; m++) {
    fresh[m] = swap_index(db, m, fresh[m], upto[m]); /* the old: freed below */
    db->vx[m].tuned = 0; /* another kind of index: tuned below */
    db->vx[m].tuned_n = 0;
    db->vx[m].tuned_recall = 0;
    db->vx[m].tuned_queries = 0;
  }
  strcpy(db->man.factory, factory);
  pthread_rwlock_unlock(&db->index_lock);
  for (int m = 0; m < VLM__NMOD; m++)
    if (vlm__vindex_tune(db, m, 1) != 0)
      vlm__warn(db, "%s: tuning the %s index: %s", db->dir, mod_name[m],
                vlm_errmsg());
  /* The manifest switches factory and files in one atomic rename.  If it
   * fails, the old manifest (old factory, old files) stays in force on
   * disk and the next checkpoint or close writes the new one. */
  rc = checkpoint_locked(db, 1);
done:
  vlm__index_unlock(db);
  for (int m = 0; m < VLM__NMOD; m++)
    vlm_index_free(fresh[m]);
  return rc;
}
