/* verify.c - vlm_db_verify: do the three stores agree?
 *
 * Walks one pinned snapshot of LMDB and SQLite (and the index side, held
 * still by index_lock) and reports the first disagreement.  Used by the
 * crash test after every recovery and available to `vlmdb info`.
 */
#include "db_int.h"
#include "vlm_utf8.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t popcount_below(const uint8_t *bm, uint64_t n) {
  int64_t c = 0;
  for (uint64_t i = 0; i < n; i++)
    c += vlm__bit(bm, i);
  return c;
}

/* What is wrong with a decoded record that has no checksum to say so
 * (written before records carried one), or NULL: text that is not UTF-8,
 * meta that is not a JSON object, a thumbnail that is not JPEG, a vector
 * that is not finite and of unit length. */
const char *vlm__rec_damage(int dim, const vlm__rec *rec,
                            const void *const vec[VLM__NMOD]) {
  if (!vlm_utf8_valid(rec->key, rec->key_len))
    return "key is not UTF-8";
  if (rec->caption_len && !vlm_utf8_valid(rec->caption, rec->caption_len))
    return "caption is not UTF-8";
  if (rec->source_len && !vlm_utf8_valid(rec->source, rec->source_len))
    return "source is not UTF-8";
  if (rec->meta_len) {
    json_t *m = json_loadb(rec->meta, rec->meta_len, JSON_REJECT_DUPLICATES,
                           NULL);
    int ok = json_is_object(m);
    json_decref(m);
    if (!ok)
      return "meta is not a JSON object";
  }
  if (rec->thumb_len &&
      (rec->thumb_len < 3 || memcmp(rec->thumb, "\xff\xd8\xff", 3)))
    return "thumbnail is not JPEG data";
  for (int m = 0; m < VLM__NMOD; m++) {
    if (!vec[m])
      continue;
    double n2 = 0;
    for (int i = 0; i < dim; i++) {
      float x;
      memcpy(&x, (const char *)vec[m] + (size_t)i * 4, 4);
      if (!isfinite(x))
        return "a vector is not finite";
      n2 += (double)x * x;
    }
    if (fabs(n2 - 1) > 1e-3)
      return "a vector is not of unit length";
  }
  return NULL;
}

static int check_lmdb(vlm_db *db, MDB_txn *txn, int64_t nitems,
                      int64_t nvec[VLM__NMOD], int64_t *ncaptions) {
  MDB_stat sk, si, sv;
  MDB_cursor *cur = NULL;
  MDB_val k, v;
  int rc;
  if ((rc = vlm__mdb_stat(txn, db->lm.keys, &sk)) ||
      (rc = vlm__mdb_stat(txn, db->lm.items, &si)) ||
      (rc = vlm__mdb_stat(txn, db->lm.vecs, &sv)))
    return vlm__lmdb_err(rc, "verify");
  if (sk.ms_entries != si.ms_entries || si.ms_entries != sv.ms_entries ||
      (int64_t)sk.ms_entries != nitems)
    return vlm_seterr(VLM_ECORRUPT,
                      "payload.lmdb: %zu keys, %zu items, %zu vector "
                      "records, %lld published",
                      sk.ms_entries, si.ms_entries, sv.ms_entries,
                      (long long)nitems);
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(txn, db->lm.items, &cur))))
    return vlm__lmdb_err(rc, "verify");
  for (rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    uint64_t id, kid;
    vlm__rec rec;
    uint32_t vf;
    const void *vec[VLM__NMOD];
    memcpy(&id, k.mv_data, 8);
    if (vlm__rec_decode(v.mv_data, v.mv_size, &rec) != 0)
      goto bad;
    MDB_val kk = {rec.key_len, (void *)rec.key}, kv;
    if (vlm__mdb_get(txn, db->lm.keys, &kk, &kv) != 0 || kv.mv_size != 8)
      goto bad;
    memcpy(&kid, kv.mv_data, 8);
    if (kid != id)
      goto bad;
    MDB_val ik = {8, &id}, vv;
    if (vlm__mdb_get(txn, db->lm.vecs, &ik, &vv) != 0 ||
        vlm__vecs_parse(&vv, db->man.dim, &vf, vec) != 0 ||
        (vf & (VLM__HAS_IMAGE | VLM__HAS_TEXT)) !=
            (rec.flags & (VLM__HAS_IMAGE | VLM__HAS_TEXT)))
      goto bad;
    {
      const char *why = NULL;
      if (vlm__rec_check(v.mv_data, v.mv_size, vv.mv_data, vv.mv_size))
        why = "checksum mismatch";
      else
        why = vlm__rec_damage(db->man.dim, &rec, vec);
      if (why) {
        mdb_cursor_close(cur);
        return vlm_seterr(VLM_ECORRUPT, "payload.lmdb: item %llu (key "
                          "\"%.*s\") is damaged: %s", (unsigned long long)id,
                          (int)(rec.key_len > 200 ? 200 : rec.key_len),
                          rec.key, why);
      }
    }
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

/* The first column of a row (id, key, the declared fields, the caption)
 * that is not what the payload record says it should be, or NULL.  The
 * expected values follow vlm__sql_apply's conversions. */
static const char *row_differs(vlm_db *db, sqlite3_stmt *st,
                               const vlm__rec *rec) {
  json_t *meta = rec->meta_len ? json_loadb(rec->meta, rec->meta_len, 0, NULL)
                               : NULL;
  const char *bad = NULL;
  for (int i = 0; i < db->man.nfields && !bad; i++) {
    int col = 2 + i;
    const json_t *v = meta ? json_object_get(meta, db->man.fname[i]) : NULL;
    int type = sqlite3_column_type(st, col);
    if (!v || json_is_null(v)) {
      if (type != SQLITE_NULL)
        bad = db->man.fname[i];
      continue;
    }
    switch (db->man.ftype[i]) {
    case VLM_FIELD_INT: {
      sqlite3_int64 want = json_is_integer(v)   ? json_integer_value(v)
                           : json_is_boolean(v) ? json_is_true(v)
                               : (sqlite3_int64)json_number_value(v);
      if (type != SQLITE_INTEGER || sqlite3_column_int64(st, col) != want)
        bad = db->man.fname[i];
      break;
    }
    case VLM_FIELD_REAL:
      if ((type != SQLITE_FLOAT && type != SQLITE_INTEGER) ||
          sqlite3_column_double(st, col) != json_number_value(v))
        bad = db->man.fname[i];
      break;
    default: {
      char *dump = json_is_string(v) ? NULL
                                     : json_dumps(v, JSON_COMPACT |
                                                         JSON_ENCODE_ANY);
      const char *want = dump ? dump : json_string_value(v);
      size_t wlen = dump ? strlen(dump) : json_string_length(v);
      if (type != SQLITE_TEXT || !want ||
          (size_t)sqlite3_column_bytes(st, col) != wlen ||
          memcmp(sqlite3_column_text(st, col), want, wlen))
        bad = db->man.fname[i];
      free(dump);
    }
    }
  }
  json_decref(meta);
  if (bad)
    return bad;
  int cc = 2 + db->man.nfields;
  int has = (rec->flags & VLM__HAS_CAPTION) && rec->caption_len;
  if (sqlite3_column_type(st, cc) == SQLITE_NULL)
    return has ? "caption" : NULL;
  if (!has || (size_t)sqlite3_column_bytes(st, cc) != rec->caption_len ||
      memcmp(sqlite3_column_text(st, cc), rec->caption, rec->caption_len))
    return "caption";
  return NULL;
}

static int check_sql(vlm_db *db, vlm__reader *r, uint64_t lseq,
                     int64_t nitems, int64_t ncaptions) {
  sqlite3_stmt *st = NULL;
  uint64_t sseq;
  int64_t nrows = 0, nfts = 0;
  int rc;
  if ((rc = vlm__sql_get_seq(r->sql, &sseq)))
    return rc;
  /* Every page of every table and index, each read through the page
   * checksums (sqlvfs.c), and SQLite's own structural checks. */
  rc = sqlite3_prepare_v2(r->sql, "PRAGMA quick_check", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return vlm__sql_err(r->sql, rc, "verify: quick_check");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *msg = (const char *)sqlite3_column_text(st, 0);
    if (!msg || strcmp(msg, "ok")) {
      rc = vlm_seterr(VLM_ECORRUPT, "meta.sqlite is damaged (%s); "
                      "`vlmdb salvage` copies every record into a fresh "
                      "database", msg ? msg : "quick_check failed");
      sqlite3_finalize(st);
      return rc;
    }
  }
  if (rc != SQLITE_DONE) {
    rc = vlm__sql_err(r->sql, rc, "verify: quick_check");
    sqlite3_finalize(st);
    return rc;
  }
  sqlite3_finalize(st);
  st = NULL;
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
  char sql[256 + VLM__MAX_FIELDS * 80];
  size_t off = (size_t)snprintf(sql, sizeof sql, "SELECT id, key");
  for (int i = 0; i < db->man.nfields; i++)
    off += (size_t)snprintf(sql + off, sizeof sql - off, ", \"%s\"",
                            db->man.fname[i]);
  snprintf(sql + off, sizeof sql - off,
           ", (SELECT caption FROM captions WHERE rowid = items.id) "
           "FROM items ORDER BY id");
  rc = sqlite3_prepare_v2(r->sql, sql, -1, &st, NULL);
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
    const char *what = row_differs(db, st, &rec);
    if (what) {
      rc = vlm_seterr(VLM_ECORRUPT, "meta.sqlite row %llu (key \"%s\"): %s "
                      "differs from the payload record",
                      (unsigned long long)id, key, what);
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
  int rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(txn, db->lm.vecs, &cur));
  if (rc)
    return vlm__lmdb_err(rc, "verify");
  for (rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
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

static int verify_once(vlm_db *db);

/* A writer that commits twice while a walk starts (beside it in this
 * process or another) rewrites the snapshot's meta page under it: the
 * walk says so (VLM_EBUSY), and verify takes a fresh snapshot. */
int vlm_db_verify(vlm_db *db) {
  int rc;
  for (int attempt = 0;; attempt++)
    if ((rc = verify_once(db)) != VLM_EBUSY || attempt == 20)
      return rc;
}

static int verify_once(vlm_db *db) {
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
  int rc = vlm__vindex_ensure(db); /* (the index files are checked too) */
  if (rc || (rc = vlm__reader_get(db, 1, &r)))
    return rc;
  pthread_rwlock_rdlock(&db->index_lock);
  if ((rc = vlm__snapshot_begin(db, r, 1, &next_id, &nitems, &pseq)))
    goto done;
  uint64_t lseq;
  /* the trees page by page first: what follows reads through LMDB, which
   * trusts its pages */
  if (!(rc = vlm__lmdb_check(&db->lm, r->txn)) &&
      !(rc = vlm__lmdb_get_u64(&db->lm, r->txn, "seq", &lseq)) &&
      !(rc = check_lmdb(db, r->txn, nitems, nvec, &ncaptions)) &&
      !(rc = check_sql(db, r, lseq, nitems, ncaptions)))
    rc = check_index(db, r->txn, lseq, nvec);
  vlm__snapshot_end(r, 1);
done:
  pthread_rwlock_unlock(&db->index_lock);
  vlm__reader_put(db, r);
  return rc;
}
