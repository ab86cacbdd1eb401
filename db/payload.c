/* payload.c - the LMDB layer: the source of truth.
 *
 * payload.lmdb/ holds five named databases:
 *   keys   user key -> u64 item id
 *   items  id -> record: header, key, caption, source, meta JSON, thumbnail
 *          and, with VLM__HAS_ORIGINAL, the original image bytes followed
 *          by their u32 length (the header has no spare word for it)
 *   vecs   id -> u32 flags, u32 dim, the image then the text vector
 *   log    batch seq -> the changes of that batch (new id, replaced id),
 *          kept until SQLite and every index checkpoint have them
 *   state  "seq" (last committed batch), "next_id" (next item id)
 * Item ids are never reused, so an id names one version of one item.
 */
#include "db_int.h"

#define XXH_STATIC_LINKING_ONLY /* XXH32_state_t on the stack */
#include <xxhash.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define REC_MAGIC 0x314d4c56u /* "VLM1" */
#define REC_HDR 40
#define REC_CKSUM_AT 36 /* hdr[9]: the checksum (vlm__rec_seal) */

int vlm__lmdb_err(int rc, const char *what) {
  int code;
  switch (rc) {
  case MDB_MAP_FULL:
  case ENOSPC:
  case EDQUOT:
    code = VLM_ENOSPACE;
    break;
  case MDB_NOTFOUND:
    code = VLM_ENOTFOUND;
    break;
  case MDB_CORRUPTED:
  case MDB_PAGE_NOTFOUND:
  case MDB_INVALID:
  case MDB_BAD_TXN:
    code = VLM_ECORRUPT;
    break;
  case MDB_VERSION_MISMATCH:
    code = VLM_EVERSION;
    break;
  case MDB_READERS_FULL:
  case EBUSY:
  case EAGAIN:
    code = VLM_EBUSY;
    break;
  case ENOMEM:
    code = VLM_ENOMEM;
    break;
  case EIO:
    code = VLM_EIO;
    break;
  default:
    code = VLM_ESTORE;
  }
  if (rc == MDB_CORRUPTED && vlm__mdb_damage()[0])
    return vlm_seterr(code, "%s: payload.lmdb is damaged (%s); "
                      VLM__LMDB_DAMAGED_HINT, what, vlm__mdb_damage());
  return vlm_seterr(code, "%s: lmdb: %s", what, mdb_strerror(rc));
}

int vlm__lmdb_open(vlm__lmdb *lm, const char *dir, int readonly, int create,
                   uint64_t map_size) {
  char path[PATH_MAX];
  MDB_txn *txn = NULL;
  int rc;
  memset(lm, 0, sizeof *lm);
  snprintf(path, sizeof path, "%s/payload.lmdb", dir);
  if (create && mkdir(path, 0755) != 0 && errno != EEXIST)
    return vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s",
                      path, strerror(errno));
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
    return vlm_seterr(VLM_ECORRUPT, "%s: missing", path);
  if ((rc = mdb_env_create(&lm->env)))
    return vlm__lmdb_err(rc, path);
  vlm__mdb_guard_env(lm->env);
  mdb_env_set_maxdbs(lm->env, 8);
  mdb_env_set_maxreaders(lm->env, 1022);
  if ((rc = mdb_env_set_mapsize(lm->env, map_size ? map_size
                                                  : (64ull << 30))))
    goto fail;
  /* MDB_NOTLS: read transactions belong to the reader pool, not to a
   * thread.  Default sync: a commit is durable when it returns. */
  unsigned flags = MDB_NOTLS | (readonly ? MDB_RDONLY : 0);
  /* On a read-only filesystem nobody can write, and lock.mdb cannot be
   * made: LMDB's reader table is not needed. */
  if (readonly == VLM__RO_MEDIA)
    flags |= MDB_NOLOCK;
  if ((rc = mdb_env_open(lm->env, path, flags, 0644)))
    goto fail;
  /* A data file shorter than the pages its meta page says are in use
   * (truncated by a bad copy or a full disk) would fault (SIGBUS) on
   * the first read past its end: refuse it before any transaction. */
  {
    MDB_envinfo ei;
    MDB_stat es;
    struct stat fs;
    char data[PATH_MAX + 16];
    snprintf(data, sizeof data, "%s/data.mdb", path);
    if (mdb_env_info(lm->env, &ei) == 0 && mdb_env_stat(lm->env, &es) == 0 &&
        stat(data, &fs) == 0 &&
        (uint64_t)fs.st_size <
            ((uint64_t)ei.me_last_pgno + 1) * (uint64_t)es.ms_psize) {
      mdb_env_close(lm->env);
      lm->env = NULL;
      return vlm_seterr(
          VLM_ECORRUPT,
          "%s is damaged: it is %lld bytes but its pages reach %llu "
          "(truncated?); restore the database from a backup",
          data, (long long)fs.st_size,
          (unsigned long long)(((uint64_t)ei.me_last_pgno + 1) *
                               (uint64_t)es.ms_psize));
    }
  }
  if ((rc = mdb_txn_begin(lm->env, NULL, readonly ? MDB_RDONLY : 0, &txn)))
    goto fail;
  unsigned cf = create ? MDB_CREATE : 0;
  if ((rc = vlm__mdb_dbi_open(txn, "keys", cf, &lm->keys)) ||
      (rc = vlm__mdb_dbi_open(txn, "items", cf | MDB_INTEGERKEY, &lm->items)) ||
      (rc = vlm__mdb_dbi_open(txn, "vecs", cf | MDB_INTEGERKEY, &lm->vecs)) ||
      (rc = vlm__mdb_dbi_open(txn, "log", cf | MDB_INTEGERKEY, &lm->log)) ||
      (rc = vlm__mdb_dbi_open(txn, "state", cf, &lm->state)))
    goto fail;
  if ((rc = vlm__mdb_txn_commit(txn))) {
    txn = NULL;
    goto fail;
  }
  return 0;
fail:
  if (txn)
    mdb_txn_abort(txn);
  {
    int err = rc == MDB_NOTFOUND
                  ? vlm_seterr(VLM_ECORRUPT, "%s: lmdb tables missing", path)
                  : vlm__lmdb_err(rc, path);
    mdb_env_close(lm->env);
    lm->env = NULL;
    return err;
  }
}

void vlm__lmdb_close(vlm__lmdb *lm) {
  if (lm->env)
    mdb_env_close(lm->env);
  lm->env = NULL;
}

int vlm__lmdb_get_u64(vlm__lmdb *lm, MDB_txn *txn, const char *name,
                      uint64_t *out) {
  MDB_val k = {strlen(name), (void *)name}, v;
  int rc = vlm__mdb_get(txn, lm->state, &k, &v);
  if (rc == MDB_NOTFOUND) {
    *out = 0;
    return 0;
  }
  if (rc)
    return vlm__lmdb_err(rc, name);
  if (v.mv_size != 8)
    return vlm_seterr(VLM_ECORRUPT, "lmdb state %s: bad size", name);
  memcpy(out, v.mv_data, 8);
  return 0;
}

int vlm__lmdb_put_u64(vlm__lmdb *lm, MDB_txn *txn, const char *name,
                      uint64_t value) {
  MDB_val k = {strlen(name), (void *)name}, v = {8, &value};
  int rc = VLM__STORE("lmdb-write", vlm__mdb_put(txn, lm->state, &k, &v, 0));
  return rc ? vlm__lmdb_err(rc, name) : 0;
}

static size_t slen(const char *s) { return s ? strlen(s) : 0; }

size_t vlm__rec_size(size_t key_len, const vlm_item *it) {
  return REC_HDR + key_len + slen(it->caption) + slen(it->source) +
         slen(it->meta_json) + (it->thumb ? it->thumb_len : 0) +
         (it->image && it->image_len ? it->image_len + 4 : 0);
}

static uint8_t *put_bytes(uint8_t *p, const void *src, size_t n) {
  if (n)
    memcpy(p, src, n);
  return p + n;
}

void vlm__rec_encode(void *dst, uint32_t flags, uint64_t seq, const char *key,
                     size_t key_len, const vlm_item *it) {
  uint32_t hdr[10];
  uint8_t *p = dst;
  if (it->caption)
    flags |= VLM__HAS_CAPTION;
  if (it->source)
    flags |= VLM__HAS_SOURCE;
  if (it->thumb && it->thumb_len)
    flags |= VLM__HAS_THUMB;
  if (it->image && it->image_len)
    flags |= VLM__HAS_ORIGINAL;
  hdr[0] = REC_MAGIC;
  hdr[1] = flags;
  memcpy(&hdr[2], &seq, 8);
  hdr[4] = (uint32_t)key_len;
  hdr[5] = (uint32_t)slen(it->caption);
  hdr[6] = (uint32_t)slen(it->source);
  hdr[7] = (uint32_t)slen(it->meta_json);
  hdr[8] = (uint32_t)((flags & VLM__HAS_THUMB) ? it->thumb_len : 0);
  hdr[9] = 0;
  p = put_bytes(p, hdr, sizeof hdr);
  p = put_bytes(p, key, key_len);
  p = put_bytes(p, it->caption, hdr[5]);
  p = put_bytes(p, it->source, hdr[6]);
  p = put_bytes(p, it->meta_json, hdr[7]);
  p = put_bytes(p, it->thumb, hdr[8]);
  if (flags & VLM__HAS_ORIGINAL) {
    uint32_t n = (uint32_t)it->image_len;
    p = put_bytes(p, it->image, it->image_len);
    put_bytes(p, &n, 4);
  }
}

/* The record's checksum: XXH32 of the item record (its checksum word
 * zero) followed by the item's vector record. */
static uint32_t rec_digest(const void *rec, size_t len, const void *vecs,
                           size_t vlen) {
  XXH32_state_t st;
  uint32_t zero = 0;
  XXH32_reset(&st, 0x766c6d64u);
  XXH32_update(&st, rec, REC_CKSUM_AT);
  XXH32_update(&st, &zero, 4);
  XXH32_update(&st, (const uint8_t *)rec + REC_CKSUM_AT + 4,
               len - REC_CKSUM_AT - 4);
  if (vlen)
    XXH32_update(&st, vecs, vlen);
  return XXH32_digest(&st);
}

void vlm__rec_seal(void *rec, size_t len, const void *vecs, size_t vlen) {
  uint32_t flags;
  memcpy(&flags, (uint8_t *)rec + 4, 4);
  flags |= VLM__HAS_CKSUM;
  memcpy((uint8_t *)rec + 4, &flags, 4);
  uint32_t d = rec_digest(rec, len, vecs, vlen);
  memcpy((uint8_t *)rec + REC_CKSUM_AT, &d, 4);
}

int vlm__rec_check(const void *rec, size_t len, const void *vecs,
                   size_t vlen) {
  if (len < REC_HDR)
    return vlm_seterr(VLM_ECORRUPT, "item record too short");
  uint32_t flags, want;
  memcpy(&flags, (const uint8_t *)rec + 4, 4);
  if (!(flags & VLM__HAS_CKSUM))
    return 0; /* written before records carried checksums */
  memcpy(&want, (const uint8_t *)rec + REC_CKSUM_AT, 4);
  if (rec_digest(rec, len, vecs, vlen) != want)
    return vlm_seterr(VLM_ECORRUPT, "checksum mismatch");
  return 0;
}

uint32_t vlm__rec_digest32(const void *rec, size_t len) {
  uint32_t flags = 0, d;
  if (len >= REC_HDR)
    memcpy(&flags, (const uint8_t *)rec + 4, 4);
  if (!(flags & VLM__HAS_CKSUM))
    return XXH32(rec, len, 0);
  memcpy(&d, (const uint8_t *)rec + REC_CKSUM_AT, 4);
  return d;
}

int vlm__rec_decode(const void *data, size_t len, vlm__rec *out) {
  uint32_t hdr[10];
  if (len < REC_HDR)
    return vlm_seterr(VLM_ECORRUPT, "item record too short");
  memcpy(hdr, data, sizeof hdr);
  if (hdr[0] != REC_MAGIC)
    return vlm_seterr(VLM_ECORRUPT, "item record: bad magic");
  uint64_t total = REC_HDR + (uint64_t)hdr[4] + hdr[5] + hdr[6] + hdr[7] +
                   hdr[8];
  uint32_t image_len = 0;
  if (hdr[1] & VLM__HAS_ORIGINAL) {
    if (len < total + 4)
      return vlm_seterr(VLM_ECORRUPT, "item record: bad length");
    memcpy(&image_len, (const uint8_t *)data + len - 4, 4);
    total += (uint64_t)image_len + 4;
  }
  if (total != len)
    return vlm_seterr(VLM_ECORRUPT, "item record: bad length");
  const char *p = (const char *)data + REC_HDR;
  out->flags = hdr[1];
  memcpy(&out->seq, &hdr[2], 8);
  out->key = p, out->key_len = hdr[4], p += hdr[4];
  out->caption = p, out->caption_len = hdr[5], p += hdr[5];
  out->source = p, out->source_len = hdr[6], p += hdr[6];
  out->meta = p, out->meta_len = hdr[7], p += hdr[7];
  out->thumb = (const uint8_t *)p, out->thumb_len = hdr[8], p += hdr[8];
  out->image = image_len ? (const uint8_t *)p : NULL;
  out->image_len = image_len;
  return 0;
}

int vlm__rec_get(vlm__lmdb *lm, MDB_txn *txn, uint64_t id, vlm__rec *out) {
  MDB_val k = {sizeof id, &id}, v;
  int rc = vlm__mdb_get(txn, lm->items, &k, &v);
  if (rc == MDB_NOTFOUND)
    return VLM_ENOTFOUND;
  if (rc)
    return vlm__lmdb_err(rc, "items");
  return vlm__rec_decode(v.mv_data, v.mv_size, out);
}

int vlm__vecs_encode(uint8_t *dst, const vlm_item *it, int dim,
                     float *scratch, size_t *len) {
  uint32_t hdr[2] = {(it->image_vec ? VLM__HAS_IMAGE : 0) |
                         (it->text_vec ? VLM__HAS_TEXT : 0),
                     (uint32_t)dim};
  uint8_t *p = dst;
  memcpy(p, hdr, 8);
  p += 8;
  const float *in[2] = {it->image_vec, it->text_vec};
  for (int m = 0; m < 2; m++) {
    if (!in[m])
      continue;
    int rc = vlm__normalize(in[m], scratch, dim, it->key);
    if (rc)
      return rc;
    memcpy(p, scratch, (size_t)dim * 4);
    p += (size_t)dim * 4;
  }
  *len = (size_t)(p - dst);
  return 0;
}

int vlm__vecs_parse(const MDB_val *v, int dim, uint32_t *flags,
                    const void *vec[VLM__NMOD]) {
  uint32_t hdr[2];
  if (v->mv_size < 8)
    return vlm_seterr(VLM_ECORRUPT, "vector record too short");
  memcpy(hdr, v->mv_data, 8);
  int nv = !!(hdr[0] & VLM__HAS_IMAGE) + !!(hdr[0] & VLM__HAS_TEXT);
  if ((int)hdr[1] != dim || v->mv_size != 8 + (size_t)nv * dim * 4)
    return vlm_seterr(VLM_ECORRUPT, "vector record: bad size");
  const char *p = (const char *)v->mv_data + 8;
  *flags = hdr[0];
  vec[0] = vec[1] = NULL;
  if (hdr[0] & VLM__HAS_IMAGE) {
    vec[VLM__MOD_IMAGE] = p;
    p += (size_t)dim * 4;
  }
  if (hdr[0] & VLM__HAS_TEXT)
    vec[VLM__MOD_TEXT] = p;
  return 0;
}

int vlm__vecs_get(vlm__lmdb *lm, MDB_txn *txn, uint64_t id, int dim,
                  uint32_t *flags, const void *vec[VLM__NMOD]) {
  MDB_val k = {sizeof id, &id}, v;
  int rc = vlm__mdb_get(txn, lm->vecs, &k, &v);
  if (rc == MDB_NOTFOUND)
    return VLM_ENOTFOUND;
  if (rc)
    return vlm__lmdb_err(rc, "vecs");
  return vlm__vecs_parse(&v, dim, flags, vec);
}

int vlm__log_get(vlm__lmdb *lm, MDB_txn *txn, uint64_t seq,
                 vlm__change **changes, size_t *n) {
  MDB_val k = {sizeof seq, &seq}, v;
  *changes = NULL;
  *n = 0;
  int rc = vlm__mdb_get(txn, lm->log, &k, &v);
  if (rc == MDB_NOTFOUND)
    return VLM_ENOTFOUND;
  if (rc)
    return vlm__lmdb_err(rc, "log");
  if (v.mv_size % sizeof(vlm__change))
    return vlm_seterr(VLM_ECORRUPT, "log entry %llu: bad size",
                      (unsigned long long)seq);
  *n = v.mv_size / sizeof(vlm__change);
  *changes = malloc(v.mv_size ? v.mv_size : 1);
  if (!*changes)
    return vlm_seterr(VLM_ENOMEM, "log entry");
  memcpy(*changes, v.mv_data, v.mv_size);
  return 0;
}
