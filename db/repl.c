/* repl.c - log shipping: a primary's batches out, a replica's in.
 *
 * A replica is seeded from the primary's online backup, so it starts as
 * the primary was at some batch L, with the same item ids.  From there the
 * primary's log says what each later batch did ((new_id, old_id) pairs),
 * and its payload store holds the records and vectors of the items that
 * are still live.  vlm_db_changes packs batches after L into one buffer;
 * vlm_db_apply_changes writes them into the replica through the write
 * protocol: one LMDB transaction (records, vectors, keys, one log entry per
 * batch, seq, next_id; the commit point), then one SQLite transaction
 * staged from that LMDB view, then publish and the index catch-up.  The
 * replica's seq is therefore the primary's batch number it holds, written
 * in the same transaction as the batches: a restart resumes after it, and
 * no batch is lost or applied twice.
 *
 * A batch whose item a later batch already replaced or deleted (before it
 * was shipped) cannot be shipped as it was: its record is gone.  It is
 * shipped as "gone", and the buffer then reaches at least the batch that
 * removed it, so that the replica, which commits the whole buffer at once,
 * only ever shows states the primary had.  Item ids grow with the batches,
 * so an old id at or above the first id the buffer writes was written in
 * the buffer (and is gone): counting those against the gone ids tells
 * where the buffer may end.  A key written in every batch (a counter)
 * would keep that count above zero up to the primary's last batch, so a
 * buffer that reaches 16 times its size with gone items still open ends
 * anyway, marked partial (VLM_CHANGES_PARTIAL): until a buffer without
 * the mark is applied, the replica may lack items the primary held at its
 * batch (those a later batch replaced).
 *
 * The buffer (host byte order, as the stores themselves):
 *   header  "VLMREPL1" | u32 dim | u32 nbatches | u64 first | u64 last |
 *           u64 head | u64 next_id | u32 flags | u32 0
 *   batch   u64 seq | u32 nch | u32 nrec | nch x (u64 new_id, u64 old_id)
 *           | nrec records, in the order of the changes they belong to
 *   record  u64 id | u32 rec_len | u32 vec_len | item record | vector
 *           record (the bytes of payload.lmdb's items and vecs tables)
 */
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "db_int.h"

#define MAGIC "VLMREPL1"
#define HDR_BYTES 56
#define DEFAULT_MAX_BYTES ((size_t)4 << 20)
#define MAX_BATCHES 1024
#define HARD_FACTOR 16 /* a buffer ends there even with gone items open */

/* ---- a growing buffer ----------------------------------------------------- */

typedef struct {
  uint8_t *data;
  size_t len, cap;
} obuf;

static int obuf_put(obuf *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n)
      cap *= 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d)
      return vlm_seterr(VLM_ENOMEM, "changes: a buffer of %zu bytes", cap);
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

static int obuf_u32(obuf *b, uint32_t v) { return obuf_put(b, &v, 4); }
static int obuf_u64(obuf *b, uint64_t v) { return obuf_put(b, &v, 8); }

/* ---- the history check ---------------------------------------------------- */

int vlm_db_log_digest(vlm_db *db, uint64_t seq, uint64_t *digest,
                      int *items) {
  vlm__reader *r = NULL;
  if (!db || !digest || !items)
    return vlm_seterr(VLM_EINVAL, "log digest: NULL argument");
  int rc = vlm__reader_get(db, 0, &r);
  if (rc)
    return rc;
  pthread_rwlock_rdlock(&db->pub_lock);
  rc = vlm__reader_txn(db, r, "log digest");
  pthread_rwlock_unlock(&db->pub_lock);
  if (rc) {
    vlm__reader_put(db, r);
    return rc;
  }
  MDB_val k = {sizeof seq, &seq}, v;
  int mrc = vlm__mdb_get(r->txn, db->lm.log, &k, &v);
  if (mrc == MDB_NOTFOUND)
    rc = VLM_ENOTFOUND;
  else if (mrc)
    rc = vlm__lmdb_err(mrc, "log digest");
  else if (v.mv_size % sizeof(vlm__change))
    rc = vlm_seterr(VLM_ECORRUPT, "log entry %llu: bad size",
                    (unsigned long long)seq);
  if (rc == 0) {
    /* the entry's changes, then the checksum of each of its items still
     * live: the ids alone would be the same for two different batches
     * that wrote as many items from the same next id */
    XXH3_state_t *xs = XXH3_createState();
    if (!xs) {
      rc = vlm_seterr(VLM_ENOMEM, "log digest");
      goto done;
    }
    XXH3_64bits_reset_withSeed(xs, seq);
    XXH3_64bits_update(xs, v.mv_data, v.mv_size);
    size_t n = v.mv_size / sizeof(vlm__change);
    const uint8_t *p = v.mv_data;
    *items = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
      vlm__change c;
      memcpy(&c, p + i * sizeof c, sizeof c);
      if (!c.new_id)
        continue;
      MDB_val ik = {sizeof c.new_id, &c.new_id}, iv;
      mrc = vlm__mdb_get(r->txn, db->lm.items, &ik, &iv);
      if (mrc == MDB_NOTFOUND)
        continue;
      if (mrc) {
        rc = vlm__lmdb_err(mrc, "log digest");
        break;
      }
      uint32_t d = vlm__rec_digest32(iv.mv_data, iv.mv_size);
      XXH3_64bits_update(xs, &c.new_id, sizeof c.new_id);
      XXH3_64bits_update(xs, &d, sizeof d);
      (*items)++;
    }
    *digest = XXH3_64bits_digest(xs);
    XXH3_freeState(xs);
  }
done:
  mdb_txn_reset(r->txn);
  vlm__reader_put(db, r);
  return rc;
}

/* ---- the primary's side --------------------------------------------------- */

void vlm_db_retain_log(vlm_db *db, uint64_t after) {
  if (db)
    __atomic_store_n(&db->repl_pin, after, __ATOMIC_RELEASE);
}

/* Append item id's record and vector record, or nothing when the item is
 * gone (*present 0). */
static int put_record(vlm_db *db, MDB_txn *txn, obuf *b, uint64_t id,
                      int *present) {
  MDB_val k = {sizeof id, &id}, rv, vv;
  int mrc = vlm__mdb_get(txn, db->lm.items, &k, &rv);
  *present = 0;
  if (mrc == MDB_NOTFOUND)
    return 0;
  if (mrc)
    return vlm__lmdb_err(mrc, "changes: items");
  if ((mrc = vlm__mdb_get(txn, db->lm.vecs, &k, &vv)))
    return mrc == MDB_NOTFOUND
               ? vlm_seterr(VLM_ECORRUPT, "changes: item %llu has no "
                            "vector record", (unsigned long long)id)
               : vlm__lmdb_err(mrc, "changes: vecs");
  if (rv.mv_size > UINT32_MAX || vv.mv_size > UINT32_MAX)
    return vlm_seterr(VLM_ECORRUPT, "changes: item %llu: record too big",
                      (unsigned long long)id);
  int rc;
  if ((rc = obuf_u64(b, id)) || (rc = obuf_u32(b, (uint32_t)rv.mv_size)) ||
      (rc = obuf_u32(b, (uint32_t)vv.mv_size)) ||
      (rc = obuf_put(b, rv.mv_data, rv.mv_size)) ||
      (rc = obuf_put(b, vv.mv_data, vv.mv_size)))
    return rc;
  *present = 1;
  return 0;
}

int vlm_db_changes(vlm_db *db, uint64_t after, size_t max_bytes, void **out,
                   size_t *len, uint64_t *last, uint64_t *head) {
  vlm__reader *r = NULL;
  vlm__change *ch = NULL;
  obuf b = {0};
  uint64_t lseq = 0, next_id = 0, seq = after, first_new = 0, max_new = 0;
  int64_t pending = 0; /* gone items whose removal the buffer lacks */
  uint32_t nb = 0;
  int rc;
  if (!db || !out || !len)
    return vlm_seterr(VLM_EINVAL, "changes: NULL argument");
  *out = NULL;
  *len = 0;
  if (!max_bytes)
    max_bytes = DEFAULT_MAX_BYTES;
  if ((rc = vlm__reader_get(db, 0, &r)))
    return rc;
  pthread_rwlock_rdlock(&db->pub_lock);
  rc = vlm__reader_txn(db, r, "changes");
  pthread_rwlock_unlock(&db->pub_lock);
  if (rc) {
    vlm__reader_put(db, r);
    return rc;
  }
  if ((rc = vlm__lmdb_get_u64(&db->lm, r->txn, "seq", &lseq)) ||
      (rc = vlm__lmdb_get_u64(&db->lm, r->txn, "next_id", &next_id)))
    goto done;
  if (after > lseq) {
    rc = vlm_seterr(VLM_ESTATE, "%s: a replica at batch %llu is ahead of "
                    "this database (batch %llu): it holds another history; "
                    "seed it again", db->dir, (unsigned long long)after,
                    (unsigned long long)lseq);
    goto done;
  }
  uint8_t hdr[HDR_BYTES] = {0};
  if ((rc = obuf_put(&b, hdr, sizeof hdr)))
    goto done;
  for (seq = after + 1; seq <= lseq; seq++) {
    size_t nch = 0;
    rc = vlm__log_get(&db->lm, r->txn, seq, &ch, &nch);
    if (rc == VLM_ENOTFOUND) {
      rc = vlm_seterr(VLM_ENOTFOUND, "%s: batch %llu is no longer in the "
                      "log (a checkpoint pruned it; this database is at "
                      "batch %llu): the replica must be seeded again",
                      db->dir, (unsigned long long)seq,
                      (unsigned long long)lseq);
      goto done;
    }
    if (rc)
      goto done;
    size_t at = b.len;
    if ((rc = obuf_u64(&b, seq)) || (rc = obuf_u32(&b, (uint32_t)nch)) ||
        (rc = obuf_u32(&b, 0)) ||
        (rc = obuf_put(&b, ch, nch * sizeof *ch)))
      goto done;
    uint32_t nrec = 0;
    for (size_t i = 0; i < nch; i++) {
      if (ch[i].old_id && first_new && ch[i].old_id >= first_new)
        pending--; /* written in this buffer, so shipped as gone */
      if (!ch[i].new_id)
        continue;
      if (!first_new)
        first_new = ch[i].new_id;
      if (ch[i].new_id > max_new)
        max_new = ch[i].new_id;
      int present;
      if ((rc = put_record(db, r->txn, &b, ch[i].new_id, &present)))
        goto done;
      nrec += (uint32_t)present;
      pending += !present;
    }
    memcpy(b.data + at + 12, &nrec, 4);
    free(ch);
    ch = NULL;
    nb++;
    if ((pending == 0 && (b.len >= max_bytes || nb >= MAX_BATCHES)) ||
        b.len >= HARD_FACTOR * max_bytes || nb >= HARD_FACTOR * MAX_BATCHES) {
      seq++;
      break;
    }
  }
  seq--; /* the last batch in the buffer */
  uint32_t flags = pending > 0 ? VLM_CHANGES_PARTIAL : 0;
  if (pending != 0 && seq == lseq) { /* ids that do not grow with batches */
    rc = vlm_seterr(VLM_ECORRUPT, "%s: the log after batch %llu names "
                    "items that no batch up to %llu wrote or removed",
                    db->dir, (unsigned long long)after,
                    (unsigned long long)lseq);
    goto done;
  }
  {
    uint32_t dim = (uint32_t)db->man.dim;
    uint64_t first = after + 1;
    uint64_t nid = seq == lseq ? next_id : max_new + 1;
    memcpy(b.data, MAGIC, 8);
    memcpy(b.data + 8, &dim, 4);
    memcpy(b.data + 12, &nb, 4);
    memcpy(b.data + 16, &first, 8);
    memcpy(b.data + 24, &seq, 8);
    memcpy(b.data + 32, &lseq, 8);
    memcpy(b.data + 40, &nid, 8);
    memcpy(b.data + 48, &flags, 4);
  }
  *out = b.data;
  *len = b.len;
  b.data = NULL;
  if (last)
    *last = seq;
  if (head)
    *head = lseq;
done:
  free(ch);
  free(b.data);
  mdb_txn_reset(r->txn);
  vlm__reader_put(db, r);
  return rc;
}

/* ---- reading a buffer ----------------------------------------------------- */

typedef struct {
  const uint8_t *p, *end;
} rbuf;

static int take(rbuf *in, void *dst, size_t n) {
  if ((size_t)(in->end - in->p) < n)
    return -1;
  if (dst)
    memcpy(dst, in->p, n);
  in->p += n;
  return 0;
}

typedef struct {
  uint32_t dim, nbatches;
  uint64_t first, last, head, next_id;
  uint32_t flags;
} header;

static int read_header(const void *buf, size_t len, header *h) {
  if (!buf || len < HDR_BYTES || memcmp(buf, MAGIC, 8))
    return vlm_seterr(VLM_EFORMAT, "changes: not a buffer of vlm_db_changes");
  const uint8_t *p = buf;
  memcpy(&h->dim, p + 8, 4);
  memcpy(&h->nbatches, p + 12, 4);
  memcpy(&h->first, p + 16, 8);
  memcpy(&h->last, p + 24, 8);
  memcpy(&h->head, p + 32, 8);
  memcpy(&h->next_id, p + 40, 8);
  memcpy(&h->flags, p + 48, 4);
  if (h->first == 0 || h->last + 1 < h->first ||
      h->last - h->first + 1 != h->nbatches || h->last > h->head)
    return vlm_seterr(VLM_EFORMAT, "changes: inconsistent header (batches "
                      "%llu..%llu, %u of them, head %llu)",
                      (unsigned long long)h->first,
                      (unsigned long long)h->last, h->nbatches,
                      (unsigned long long)h->head);
  return 0;
}

int vlm_db_changes_info(const void *buf, size_t len, uint64_t *first,
                        uint64_t *last, uint64_t *head, unsigned *flags) {
  header h;
  int rc = read_header(buf, len, &h);
  if (rc)
    return rc;
  if (first)
    *first = h.first;
  if (last)
    *last = h.last;
  if (head)
    *head = h.head;
  if (flags)
    *flags = h.flags;
  return 0;
}

/* One shipped record, pointing into the buffer. */
typedef struct {
  uint64_t id;
  const uint8_t *rec, *vec;
  uint32_t rec_len, vec_len;
} shipped;

static int next_record(rbuf *in, shipped *s) {
  if (take(in, &s->id, 8) || take(in, &s->rec_len, 4) ||
      take(in, &s->vec_len, 4))
    return -1;
  s->rec = in->p;
  if (take(in, NULL, s->rec_len))
    return -1;
  s->vec = in->p;
  return take(in, NULL, s->vec_len);
}

/* Check the whole buffer before anything is written: its structure,
 * batch numbers in sequence, every record against its checksum, its key,
 * and its vectors' dimension. */
static int check_buffer(vlm_db *db, const header *h, const uint8_t *buf,
                        size_t len) {
  rbuf in = {buf + HDR_BYTES, buf + len};
  for (uint64_t want = h->first; want <= h->last; want++) {
    uint64_t seq;
    uint32_t nch, nrec, present = 0;
    if (take(&in, &seq, 8) || take(&in, &nch, 4) || take(&in, &nrec, 4))
      goto truncated;
    if (seq != want)
      return vlm_seterr(VLM_EFORMAT, "changes: batch %llu where %llu was "
                        "due", (unsigned long long)seq,
                        (unsigned long long)want);
    const uint8_t *chp = in.p;
    if ((uint64_t)nch * sizeof(vlm__change) > (uint64_t)(in.end - in.p) ||
        take(&in, NULL, (size_t)nch * sizeof(vlm__change)))
      goto truncated;
    for (uint32_t i = 0; i < nch; i++) {
      vlm__change c;
      memcpy(&c, chp + (size_t)i * sizeof c, sizeof c);
      if (!c.new_id && !c.old_id)
        return vlm_seterr(VLM_EFORMAT, "changes: batch %llu: an empty "
                          "change", (unsigned long long)seq);
      if (!c.new_id || present == nrec)
        continue;
      const uint8_t *save = in.p;
      shipped s;
      if (next_record(&in, &s))
        goto truncated;
      if (s.id != c.new_id) { /* c's item is gone: s belongs further on */
        in.p = save;
        continue;
      }
      present++;
      vlm__rec rec;
      MDB_val vv = {s.vec_len, (void *)s.vec};
      uint32_t vf;
      const void *vec[VLM__NMOD];
      int rc;
      if ((rc = vlm__rec_check(s.rec, s.rec_len, s.vec, s.vec_len)) ||
          (rc = vlm__rec_decode(s.rec, s.rec_len, &rec)) ||
          (rc = vlm__vecs_parse(&vv, db->man.dim, &vf, vec)))
        return vlm_seterr(VLM_ECORRUPT, "changes: batch %llu, item %llu: "
                          "%s", (unsigned long long)seq,
                          (unsigned long long)s.id, vlm_errmsg());
      if (rec.key_len == 0 || rec.key_len > VLM__MAX_KEY)
        return vlm_seterr(VLM_ECORRUPT, "changes: batch %llu, item %llu: "
                          "bad key", (unsigned long long)seq,
                          (unsigned long long)s.id);
    }
    if (present != nrec)
      return vlm_seterr(VLM_EFORMAT, "changes: batch %llu: %u of its %u "
                        "records belong to no change",
                        (unsigned long long)seq, nrec - present, nrec);
  }
  if (in.p != in.end)
    return vlm_seterr(VLM_EFORMAT, "changes: %zu bytes after the last "
                      "batch", (size_t)(in.end - in.p));
  return 0;
truncated:
  return vlm_seterr(VLM_EFORMAT, "changes: the buffer is cut short");
}

/* ---- the replica's side --------------------------------------------------- */

/* Stage in txn the removal of item id (replaced or deleted by a shipped
 * change): its key (when the key still names it), record and vectors. */
static int stage_remove(vlm_db *db, MDB_txn *txn, uint64_t id,
                        int64_t *d_items, int64_t d_vecs[VLM__NMOD]) {
  vlm__rec rec;
  int rc = vlm__rec_get(&db->lm, txn, id, &rec), mrc;
  if (rc == VLM_ENOTFOUND)
    return 0; /* a gone item of this buffer: never written here */
  if (rc)
    return rc;
  MDB_val k = {rec.key_len, (void *)rec.key}, v;
  MDB_val ik = {sizeof id, &id}, iv;
  if ((mrc = vlm__mdb_get(txn, db->lm.keys, &k, &v)) == 0 &&
      v.mv_size == 8 && memcmp(v.mv_data, &id, 8) == 0) {
    /* rec.key points into the map, which the delete may change: the key
     * is copied first */
    char key[VLM__MAX_KEY + 1];
    size_t klen = rec.key_len < sizeof key ? rec.key_len : sizeof key - 1;
    memcpy(key, rec.key, klen);
    MDB_val kc = {klen, key};
    if ((mrc = VLM__STORE("lmdb-write", vlm__mdb_del(txn, db->lm.keys, &kc, NULL))))
      return vlm__lmdb_err(mrc, "replica: keys");
  } else if (mrc && mrc != MDB_NOTFOUND) {
    return vlm__lmdb_err(mrc, "replica: keys");
  }
  if ((mrc = vlm__mdb_get(txn, db->lm.vecs, &ik, &iv)) == 0) {
    uint32_t vf;
    const void *vec[VLM__NMOD];
    if (vlm__vecs_parse(&iv, db->man.dim, &vf, vec) == 0) {
      d_vecs[0] -= !!(vf & VLM__HAS_IMAGE);
      d_vecs[1] -= !!(vf & VLM__HAS_TEXT);
    }
  }
  if (((mrc = VLM__STORE("lmdb-write", vlm__mdb_del(txn, db->lm.items, &ik, NULL))) &&
       mrc != MDB_NOTFOUND) ||
      ((mrc = VLM__STORE("lmdb-write", vlm__mdb_del(txn, db->lm.vecs, &ik, NULL))) &&
       mrc != MDB_NOTFOUND))
    return vlm__lmdb_err(mrc, "replica: remove");
  (*d_items)--;
  return 0;
}

/* Stage in txn a shipped item: its record, vectors and key. */
static int stage_item(vlm_db *db, MDB_txn *txn, uint64_t seq,
                      const shipped *s, int64_t *d_items,
                      int64_t d_vecs[VLM__NMOD]) {
  vlm__rec rec;
  int rc = vlm__rec_decode(s->rec, s->rec_len, &rec), mrc;
  if (rc)
    return rc;
  uint64_t id = s->id;
  MDB_val k = {rec.key_len, (void *)rec.key}, v;
  MDB_val ik = {sizeof id, &id};
  if ((mrc = vlm__mdb_get(txn, db->lm.keys, &k, &v)) == 0)
    return vlm_seterr(VLM_ESTATE, "%s: batch %llu writes key \"%.*s\" as "
                      "item %llu, but here the key is still another item's: "
                      "this replica and its primary have different "
                      "histories; seed it again", db->dir,
                      (unsigned long long)seq, (int)rec.key_len, rec.key,
                      (unsigned long long)id);
  if (mrc != MDB_NOTFOUND)
    return vlm__lmdb_err(mrc, "replica: keys");
  if (vlm__mdb_get(txn, db->lm.items, &ik, &v) == 0)
    return vlm_seterr(VLM_ESTATE, "%s: batch %llu writes item %llu, which "
                      "exists here: this replica and its primary have "
                      "different histories; seed it again", db->dir,
                      (unsigned long long)seq, (unsigned long long)id);
  MDB_val rv = {s->rec_len, (void *)s->rec}, vv = {s->vec_len, (void *)s->vec};
  v.mv_size = 8;
  v.mv_data = &id;
  if ((mrc = VLM__STORE("lmdb-write", vlm__mdb_put(txn, db->lm.items, &ik, &rv, 0))) ||
      (mrc = VLM__STORE("lmdb-write", vlm__mdb_put(txn, db->lm.vecs, &ik, &vv, 0))) ||
      (mrc = VLM__STORE("lmdb-write", vlm__mdb_put(txn, db->lm.keys, &k, &v, 0))))
    return vlm__lmdb_err(mrc, "replica: item");
  uint32_t vf;
  const void *vec[VLM__NMOD];
  if ((rc = vlm__vecs_parse(&vv, db->man.dim, &vf, vec)))
    return rc;
  d_vecs[0] += !!(vf & VLM__HAS_IMAGE);
  d_vecs[1] += !!(vf & VLM__HAS_TEXT);
  (*d_items)++;
  return 0;
}

int vlm_db_apply_changes(vlm_db *db, const void *buf, size_t len,
                         uint64_t *seq_out) {
  header h;
  MDB_txn *txn = NULL;
  int locked = 0, sql_open = 0, rc, mrc;
  int64_t d_items = 0, d_vecs[VLM__NMOD] = {0, 0};
  uint64_t seq = 0, next_id = 0, max_new = 0;
  if (!db)
    return vlm_seterr(VLM_EINVAL, "apply changes: NULL database");
  if ((rc = read_header(buf, len, &h)))
    return rc;
  if (h.dim != (uint32_t)db->man.dim)
    return vlm_seterr(VLM_EMISMATCH, "changes: vectors of %u dimensions, "
                      "%s holds %d", h.dim, db->dir, db->man.dim);
  if ((rc = check_buffer(db, &h, buf, len)))
    return rc;
  vlm__write_lock(db);
  locked = 1;
  if ((rc = vlm__writable(db)))
    goto done;
  if (h.nbatches == 0) {
    seq = db->pub_seq;
    goto done;
  }
  if (h.first != db->pub_seq + 1) {
    rc = vlm_seterr(VLM_ESTATE, "%s is at batch %llu; the changes start at "
                    "batch %llu", db->dir, (unsigned long long)db->pub_seq,
                    (unsigned long long)h.first);
    goto done;
  }
  if ((rc = vlm__space_check(db, "replica", len)))
    goto done;
  if ((mrc = VLM__STORE("lmdb-begin", mdb_txn_begin(db->lm.env, NULL, 0, &txn)))) {
    txn = NULL;
    rc = vlm__lmdb_err(mrc, "replica");
    goto done;
  }
  if ((rc = vlm__lmdb_get_u64(&db->lm, txn, "seq", &seq)) ||
      (rc = vlm__lmdb_get_u64(&db->lm, txn, "next_id", &next_id)))
    goto done;
  assert(seq == db->pub_seq);
  if ((rc = vlm__sql_begin(db)))
    goto done;
  sql_open = 1;
  rbuf in = {(const uint8_t *)buf + HDR_BYTES, (const uint8_t *)buf + len};
  for (uint64_t b = 0; b < h.nbatches; b++) {
    uint32_t nch = 0, nrec = 0, present = 0;
    take(&in, &seq, 8); /* all checked by check_buffer */
    take(&in, &nch, 4);
    take(&in, &nrec, 4);
    const uint8_t *chp = in.p;
    take(&in, NULL, (size_t)nch * sizeof(vlm__change));
    for (uint32_t i = 0; i < nch; i++) {
      vlm__change c;
      memcpy(&c, chp + (size_t)i * sizeof c, sizeof c);
      if (c.old_id &&
          (rc = stage_remove(db, txn, c.old_id, &d_items, d_vecs)))
        goto done;
      if (!c.new_id)
        continue;
      if (c.new_id > max_new)
        max_new = c.new_id;
      if (present == nrec)
        continue;
      const uint8_t *save = in.p;
      shipped s;
      next_record(&in, &s);
      if (s.id != c.new_id) {
        in.p = save;
        continue;
      }
      present++;
      if ((rc = stage_item(db, txn, seq, &s, &d_items, d_vecs)))
        goto done;
    }
    MDB_val lk = {sizeof seq, &seq},
            lv = {(size_t)nch * sizeof(vlm__change), (void *)chp};
    if ((mrc = VLM__STORE("lmdb-write", vlm__mdb_put(txn, db->lm.log, &lk, &lv, 0)))) {
      rc = vlm__lmdb_err(mrc, "replica: log");
      goto done;
    }
  }
  assert(seq == h.last);
  if (max_new + 1 > next_id)
    next_id = max_new + 1;
  if (h.next_id > next_id)
    next_id = h.next_id;
  if ((rc = vlm__lmdb_put_u64(&db->lm, txn, "seq", seq)) ||
      (rc = vlm__lmdb_put_u64(&db->lm, txn, "next_id", next_id)) ||
      (rc = vlm__sql_stage_log(db, txn, h.first - 1, h.last)) ||
      (rc = vlm__sql_set_seq(db, seq)))
    goto done;
  rc = vlm__commit_publish(db, txn, h.first, h.last, next_id, d_items, d_vecs,
                           len);
  txn = NULL;
  sql_open = 0;
  if (rc == 0 || __atomic_load_n(&db->broken, __ATOMIC_ACQUIRE))
    vlm__after_commit(db);
done:
  if (txn)
    mdb_txn_abort(txn);
  if (sql_open)
    vlm__sql_rollback(db);
  if (rc == 0 && seq_out)
    *seq_out = seq;
  if (locked)
    vlm__write_unlock(db);
  return rc;
}
