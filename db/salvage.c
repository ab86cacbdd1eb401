/* salvage.c - vlm_db_salvage: copy what can still be trusted out of a
 * damaged database into a fresh one.
 *
 * It reads the source's payload store directly (read-only; meta.sqlite
 * and the index files are not needed, they are rebuilt from the records),
 * walks the items by id and keeps a record only when it decodes, its
 * checksum holds (records written before checksums: when its contents are
 * well-formed, as verify judges them), and its key still names it.  A
 * damaged stretch of the tree is skipped by seeking past the id that
 * failed.  Everything it cannot save is reported by key or id.
 */
#include "db_int.h"

#include <stdlib.h>
#include <string.h>

enum { SALVAGE_BATCH = 256 };

typedef struct {
  vlm_item it[SALVAGE_BATCH];
  char *own[SALVAGE_BATCH][5]; /* key, caption, source, meta, thumb */
  float *vec[SALVAGE_BATCH];   /* image then text, 2 * dim floats */
  int n;
} salvage_batch;

static char *dup_n(const char *p, size_t n) {
  char *s = malloc(n + 1);
  if (s) {
    memcpy(s, p, n);
    s[n] = 0;
  }
  return s;
}

static void batch_clear(salvage_batch *b) {
  for (int i = 0; i < b->n; i++) {
    for (int k = 0; k < 5; k++)
      free(b->own[i][k]);
    free(b->vec[i]);
  }
  b->n = 0;
}

static int batch_flush(vlm_db *out, salvage_batch *b, int64_t *saved) {
  if (!b->n)
    return 0;
  int written = 0;
  int rc = vlm_db_put(out, b->it, b->n, 0, &written);
  if (!rc)
    *saved += written;
  batch_clear(b);
  return rc;
}

/* Stage one decoded, checked record; 0 or VLM_ENOMEM. */
static int stage(salvage_batch *b, const vlm__rec *rec,
                 const void *const vec[VLM__NMOD], int dim) {
  int i = b->n;
  char **own = b->own[i];
  memset(own, 0, sizeof b->own[i]);
  float *v = malloc(sizeof(float) * 2 * (size_t)dim);
  own[0] = dup_n(rec->key, rec->key_len);
  if (rec->flags & VLM__HAS_CAPTION)
    own[1] = dup_n(rec->caption, rec->caption_len);
  if (rec->flags & VLM__HAS_SOURCE)
    own[2] = dup_n(rec->source, rec->source_len);
  if (rec->meta_len)
    own[3] = dup_n(rec->meta, rec->meta_len);
  if (rec->thumb_len)
    own[4] = dup_n((const char *)rec->thumb, rec->thumb_len);
  if (!v || !own[0] || ((rec->flags & VLM__HAS_CAPTION) && !own[1]) ||
      ((rec->flags & VLM__HAS_SOURCE) && !own[2]) ||
      (rec->meta_len && !own[3]) || (rec->thumb_len && !own[4])) {
    for (int k = 0; k < 5; k++)
      free(own[k]);
    free(v);
    return vlm_seterr(VLM_ENOMEM, "salvage");
  }
  vlm_item *it = &b->it[i];
  memset(it, 0, sizeof *it);
  it->key = own[0];
  it->caption = own[1];
  it->source = own[2];
  it->meta_json = own[3];
  it->thumb = own[4];
  it->thumb_len = rec->thumb_len;
  for (int m = 0; m < VLM__NMOD; m++)
    if (vec[m]) {
      memcpy(v + (size_t)m * dim, vec[m], sizeof(float) * (size_t)dim);
      if (m == VLM__MOD_IMAGE)
        it->image_vec = v;
      else
        it->text_vec = v + dim;
    }
  b->vec[i] = v;
  b->n++;
  return 0;
}

/* Why a decoded record cannot be trusted, or NULL (vec gets its vectors). */
static const char *check_one(vlm__lmdb *lm, MDB_txn *txn, uint64_t id,
                             const vlm__manifest *m, const MDB_val *v,
                             const vlm__rec *rec, const void *vec[VLM__NMOD]) {
  uint32_t vf = 0;
  MDB_val vk = {8, &id}, vv;
  if (mdb_get(txn, lm->vecs, &vk, &vv) != 0 ||
      vlm__vecs_parse(&vv, m->dim, &vf, vec) != 0)
    return "its vectors are missing or damaged";
  if (vlm__rec_check(v->mv_data, v->mv_size, vv.mv_data, vv.mv_size) != 0)
    return "checksum mismatch";
  const char *why = vlm__rec_damage(m->dim, rec, vec);
  if (why)
    return why;
  MDB_val kk = {rec->key_len, (void *)rec->key}, kv;
  uint64_t kid = 0;
  if (mdb_get(txn, lm->keys, &kk, &kv) != 0 || kv.mv_size != 8)
    return "its key does not name it";
  memcpy(&kid, kv.mv_data, 8);
  return kid == id ? NULL : "its key does not name it";
}

int vlm_db_salvage(const char *src, const char *dst,
                   vlm_db_salvage_fn lost, void *arg,
                   vlm_db_salvage_result *res) {
  vlm__manifest m;
  vlm__lmdb lm;
  vlm_db *out = NULL;
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  salvage_batch *b = NULL;
  int rc;
  if (!src || !dst || !res)
    return vlm_seterr(VLM_EINVAL, "salvage: NULL argument");
  memset(res, 0, sizeof *res);
  if ((rc = vlm__manifest_read(src, &m)))
    return rc;
  if ((rc = vlm__lmdb_open(&lm, src, 1, 0, 0)))
    return rc;
  vlm_field fields[VLM__MAX_FIELDS];
  for (int i = 0; i < m.nfields; i++)
    fields[i] = (vlm_field){m.fname[i], m.ftype[i]};
  vlm_db_config cfg = {.dim = m.dim, .index_factory = m.factory,
                       .model_id = m.model_id,
                       .model_dir = m.model_dir[0] ? m.model_dir : NULL,
                       .fields = fields, .nfields = m.nfields};
  if ((rc = vlm_db_create(dst, &cfg, &out)))
    goto done;
  if (!(b = calloc(1, sizeof *b))) {
    rc = vlm_seterr(VLM_ENOMEM, "salvage");
    goto done;
  }
  int mrc = mdb_txn_begin(lm.env, NULL, MDB_RDONLY, &txn);
  if (!mrc)
    mrc = mdb_cursor_open(txn, lm.items, &cur);
  if (mrc) {
    rc = vlm__lmdb_err(mrc, "salvage");
    goto done;
  }
  uint64_t next = 0;
  MDB_val k = {sizeof next, &next}, v;
  mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  while (mrc != MDB_NOTFOUND) {
    uint64_t id = next;
    if (mrc == 0 && k.mv_size == 8)
      memcpy(&id, k.mv_data, 8);
    if (mrc != 0 || k.mv_size != 8) {
      /* a damaged page: report and seek past it */
      res->lost++;
      if (lost)
        lost(arg, NULL, id, "unreadable stretch of the payload store");
      next = id + 1;
      if (next == 0)
        break;
      k.mv_size = sizeof next;
      k.mv_data = &next;
      mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
      if (mrc == 0 && k.mv_size == 8) {
        uint64_t got;
        memcpy(&got, k.mv_data, 8);
        if (got < next) /* the tree walked backwards: give up here */
          break;
      }
      continue;
    }
    res->records++;
    vlm__rec rec;
    const char *why = NULL;
    const void *vec[VLM__NMOD] = {NULL, NULL};
    int key_ok = vlm__rec_decode(v.mv_data, v.mv_size, &rec) == 0;
    why = key_ok ? check_one(&lm, txn, id, &m, &v, &rec, vec)
                 : "the record does not decode";
    if (why) {
      res->lost++;
      if (lost) {
        char key[520];
        int ok = key_ok && rec.key_len < sizeof key;
        if (ok)
          snprintf(key, sizeof key, "%.*s", (int)rec.key_len, rec.key);
        lost(arg, ok ? key : NULL, id, why);
      }
    } else {
      if ((rc = stage(b, &rec, vec, m.dim)))
        goto done;
      if (b->n == SALVAGE_BATCH && (rc = batch_flush(out, b, &res->saved)))
        goto done;
    }
    mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    next = id + 1;
  }
  rc = batch_flush(out, b, &res->saved);
done:
  if (b) {
    batch_clear(b);
    free(b);
  }
  if (cur)
    mdb_cursor_close(cur);
  if (txn)
    mdb_txn_abort(txn);
  vlm__lmdb_close(&lm);
  vlm_db_close(out);
  return rc;
}
