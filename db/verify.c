/* verify.c - vlm_db_verify: do the three stores agree?
 *
 * Walks one pinned snapshot of LMDB and SQLite (and the index side, held
 * still by index_lock) and reports the first disagreement.  Used by the
 * crash test after every recovery and available to `vlmdb info`.
 */
#include "db_int.h"

#include <stdlib.h>
#include <string.h>

static int64_t popcount_below(const uint8_t *bm, uint64_t n) {
  int64_t c = 0;
  for (uint64_t i = 0; i < n; i++)
    c += vlm__bit(bm, i);
  return c;
}

static int check_lmdb(vlm_db *db, MDB_txn *txn, int64_t nitems,
                      int64_t nvec[VLM__NMOD], int64_t *ncaptions) {
  MDB_stat sk, si, sv;
  MDB_cursor *cur = NULL;
  MDB_val k, v;
  int rc;
  if ((rc = mdb_stat(txn, db->lm.keys, &sk)) ||
      (rc = mdb_stat(txn, db->lm.items, &si)) ||
      (rc = mdb_stat(txn, db->lm.vecs, &sv)))
    return vlm__lmdb_err(rc, "verify");
  if (sk.ms_entries != si.ms_entries || si.ms_entries != sv.ms_entries ||
      (int64_t)sk.ms_entries != nitems)
    return vlm_seterr(VLM_ECORRUPT,
                      "payload.lmdb: %zu keys, %zu items, %zu vector "
                      "records, %lld published",
                      sk.ms_entries, si.ms_entries, sv.ms_entries,
                      (long long)nitems);
  if ((rc = mdb_cursor_open(txn, db->lm.items, &cur)))
    return vlm__lmdb_err(rc, "verify");
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    uint64_t id, kid;
    vlm__rec rec;
    uint32_t vf;
    const void *vec[VLM__NMOD];
    memcpy(&id, k.mv_data, 8);
    if (vlm__rec_decode(v.mv_data, v.mv_size, &rec) != 0)
      goto bad;
    MDB_val kk = {rec.key_len, (void *)rec.key}, kv;
    if (mdb_get(txn, db->lm.keys, &kk, &kv) != 0 || kv.mv_size != 8)
      goto bad;
    memcpy(&kid, kv.mv_data, 8);
    if (kid != id)
      goto bad;
    if (vlm__vecs_get(&db->lm, txn, id, db->man.dim, &vf, vec) != 0 ||
        (vf & (VLM__HAS_IMAGE | VLM__HAS_TEXT)) !=
            (rec.flags & (VLM__HAS_IMAGE | VLM__HAS_TEXT)))
      goto bad;
    for (int m = 0; m < VLM__NMOD; m++)
      nvec[m] += vec[m] != NULL;
    if ((rec.flags & VLM__HAS_CAPTION) && rec.caption_len)
      (*ncaptions)++;
    continue;
  bad:
    mdb_cursor_close(cur);
    return vlm_seterr(VLM_ECORRUPT, "payload.lmdb: item %llu is incomplete "
                      "or its key does not point to it",
                      (unsigned long long)id);
  }
  mdb_cursor_close(cur);
  return rc == MDB_NOTFOUND ? 0 : vlm__lmdb_err(rc, "verify");
}

static int check_sql(vlm_db *db, vlm__reader *r, uint64_t lseq,
                     int64_t nitems, int64_t ncaptions) {
  sqlite3_stmt *st = NULL;
  uint64_t sseq;
  int64_t nrows = 0, nfts = 0;
  int rc;
  if ((rc = vlm__sql_get_seq(r->sql, &sseq)))
    return rc;
  if (sseq != lseq)
    return vlm_seterr(VLM_ECORRUPT, "meta.sqlite at batch %llu, payload.lmdb "
                      "at %llu", (unsigned long long)sseq,
                      (unsigned long long)lseq);
  if ((rc = vlm__sql_count(r->sql, "captions", &nfts)))
    return rc;
  if (nfts != ncaptions)
    return vlm_seterr(VLM_ECORRUPT, "meta.sqlite: %lld caption rows, "
                      "payload.lmdb: %lld captions", (long long)nfts,
                      (long long)ncaptions);
  rc = sqlite3_prepare_v2(r->sql, "SELECT id, key FROM items ORDER BY id",
                          -1, &st, NULL);
  if (rc != SQLITE_OK)
    return vlm__sql_err(r->sql, rc, "verify");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    uint64_t id = (uint64_t)sqlite3_column_int64(st, 0);
    const char *key = (const char *)sqlite3_column_text(st, 1);
    int klen = sqlite3_column_bytes(st, 1);
    vlm__rec rec;
    nrows++;
    if (vlm__rec_get(&db->lm, r->txn, id, &rec) != 0 || !key ||
        rec.key_len != (size_t)klen || memcmp(rec.key, key, rec.key_len)) {
      rc = vlm_seterr(VLM_ECORRUPT, "meta.sqlite row %llu (key \"%s\") has "
                      "no matching payload item", (unsigned long long)id,
                      key ? key : "");
      sqlite3_finalize(st);
      return rc;
    }
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE)
    return vlm__sql_err(r->sql, rc, "verify");
  if (nrows != nitems)
    return vlm_seterr(VLM_ECORRUPT, "meta.sqlite: %lld rows, payload.lmdb: "
                      "%lld items", (long long)nrows, (long long)nitems);
  return 0;
}

static int check_index(vlm_db *db, MDB_txn *txn, uint64_t lseq,
                       const int64_t nvec[VLM__NMOD]) {
  if (db->ix_seq != lseq)
    return 0; /* background indexing still behind: nothing to compare */
  for (int m = 0; m < VLM__NMOD; m++) {
    vlm__vindex *vx = &db->vx[m];
    if (vx->nlive != nvec[m])
      return vlm_seterr(VLM_ECORRUPT, "index side counts %lld live %s "
                        "vectors, payload.lmdb %lld", (long long)vx->nlive,
                        m ? "text" : "image", (long long)nvec[m]);
    if (vx->upto == 0)
      continue;
    int64_t in_index = vlm_index_count(vx->index) - vx->ntomb;
    int64_t below = popcount_below(vx->live, vx->upto);
    if (in_index != below)
      return vlm_seterr(VLM_ECORRUPT, "%s index holds %lld live vectors, "
                        "%lld expected", m ? "text" : "image",
                        (long long)in_index, (long long)below);
  }
  /* Every live bit names a stored vector of that modality. */
  MDB_cursor *cur;
  MDB_val k, v;
  int rc = mdb_cursor_open(txn, db->lm.vecs, &cur);
  if (rc)
    return vlm__lmdb_err(rc, "verify");
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    uint64_t id;
    uint32_t vf;
    const void *vec[VLM__NMOD];
    memcpy(&id, k.mv_data, 8);
    if (vlm__vecs_parse(&v, db->man.dim, &vf, vec) != 0)
      break;
    for (int m = 0; m < VLM__NMOD; m++)
      if (vec[m]) {
        if (id >= db->ix_next || !vlm__bit(db->vx[m].live, id)) {
          mdb_cursor_close(cur);
          return vlm_seterr(VLM_ECORRUPT, "item %llu missing from the %s "
                            "index side", (unsigned long long)id,
                            m ? "text" : "image");
        }
      }
  }
  mdb_cursor_close(cur);
  return 0;
}

int vlm_db_verify(vlm_db *db) {
  vlm__reader *r = NULL;
  uint64_t next_id, pseq;
  int64_t nitems, nvec[VLM__NMOD] = {0, 0}, ncaptions = 0;
  if (!db)
    return vlm_seterr(VLM_EINVAL, "verify: NULL argument");
  if (db->sql_behind)
    return vlm_seterr(VLM_ESTATE, "%s needs crash recovery before it can be "
                      "verified (meta.sqlite lacks %llu batch(es)): run "
                      "`vlmdb recover --db %s`", db->dir,
                      (unsigned long long)db->sql_behind, db->dir);
  int rc = vlm__reader_get(db, 1, &r);
  if (rc)
    return rc;
  pthread_rwlock_rdlock(&db->index_lock);
  if ((rc = vlm__snapshot_begin(db, r, 1, &next_id, &nitems, &pseq)))
    goto done;
  uint64_t lseq;
  if (!(rc = vlm__lmdb_get_u64(&db->lm, r->txn, "seq", &lseq)) &&
      !(rc = check_lmdb(db, r->txn, nitems, nvec, &ncaptions)) &&
      !(rc = check_sql(db, r, lseq, nitems, ncaptions)))
    rc = check_index(db, r->txn, lseq, nvec);
  vlm__snapshot_end(r, 1);
done:
  pthread_rwlock_unlock(&db->index_lock);
  vlm__reader_put(db, r);
  return rc;
}
