/* salvage.c - vlm_db_salvage: copy what can still be trusted out of a
 * damaged database into a fresh one.
 *
 * It reads the source's payload store directly (read-only; meta.sqlite
 * and the index files are not needed, they are rebuilt from the records)
 * and only through the page-checking walker (lmdbwalk.c), never through
 * LMDB's cursors, which trust their pages: a damaged subtree is stepped
 * over and the records it held are counted as lost.  The items and vecs
 * trees are read side by side in id order; a record is kept when it
 * decodes, its checksum holds (records written before checksums: when its
 * contents are well-formed, as verify judges them), and the keys tree
 * still names it (when the keys tree is itself damaged, a record whose key
 * it no longer lists is kept: the record's own checksum vouches for it).
 * Everything it cannot save is reported by key or id.
 */
#include "db_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

enum { SALVAGE_BATCH = 256 };

typedef struct {
  vlm_item it[SALVAGE_BATCH];
  char *own[SALVAGE_BATCH][6]; /* key, caption, source, meta, thumb,
                                  kept original image */
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
    for (int k = 0; k < 6; k++)
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
  if (rec->image_len)
    own[5] = dup_n((const char *)rec->image, rec->image_len);
  if (!v || !own[0] || ((rec->flags & VLM__HAS_CAPTION) && !own[1]) ||
      ((rec->flags & VLM__HAS_SOURCE) && !own[2]) ||
      (rec->meta_len && !own[3]) || (rec->thumb_len && !own[4]) ||
      (rec->image_len && !own[5])) {
    for (int k = 0; k < 6; k++)
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
  it->image = own[5];
  it->image_len = rec->image_len;
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

/* The keys tree as (id, hash of the key) sorted by id: which key names
 * which id, without a second pass through a tree that may be damaged. */
typedef struct {
  uint64_t id, h;
} key_ref;

typedef struct {
  key_ref *v;
  size_t n, cap;
  int damaged; /* the keys tree had damaged places */
} key_map;

static int cmp_ref(const void *a, const void *b) {
  const key_ref *x = a, *y = b;
  return (x->id > y->id) - (x->id < y->id);
}

static int load_keys(vlm__lmdb *lm, MDB_txn *txn, key_map *km) {
  vlm__lwalk *w = NULL;
  int rc = vlm__lwalk_open(lm, txn, "keys", &w);
  if (rc)
    return rc;
  MDB_val k, v;
  while ((rc = vlm__lwalk_next(w, &k, &v, NULL)) == 0) {
    if (v.mv_size != 8)
      continue;
    if (km->n == km->cap) {
      size_t nc = km->cap ? 2 * km->cap : 1024;
      key_ref *nv = realloc(km->v, nc * sizeof *nv);
      if (!nv) {
        rc = vlm_seterr(VLM_ENOMEM, "salvage");
        break;
      }
      km->v = nv;
      km->cap = nc;
    }
    memcpy(&km->v[km->n].id, v.mv_data, 8);
    km->v[km->n++].h = XXH3_64bits(k.mv_data, k.mv_size);
  }
  km->damaged = vlm__lwalk_damaged(w)->count > 0;
  vlm__lwalk_close(w);
  if (rc < 0)
    return rc;
  qsort(km->v, km->n, sizeof *km->v, cmp_ref);
  return 0;
}

/* The vecs tree, stepped forward to id. */
typedef struct {
  vlm__lwalk *w;
  int started;
  uint64_t id; /* of the entry in v; UINT64_MAX past the end */
  MDB_val v;
} vec_cursor;

static int vec_seek(vec_cursor *vc, uint64_t id) {
  while (!vc->started || (vc->id != UINT64_MAX && vc->id < id)) {
    vc->started = 1;
    MDB_val k;
    int rc = vlm__lwalk_next(vc->w, &k, &vc->v, NULL);
    if (rc < 0)
      return rc;
    if (rc) {
      vc->id = UINT64_MAX;
      break;
    }
    memcpy(&vc->id, k.mv_data, 8); /* the walker checked: 8 bytes */
  }
  return 0;
}

/* Why a decoded record cannot be trusted, or NULL (vec gets its vectors). */
static const char *check_one(const key_map *km, vec_cursor *vc, uint64_t id,
                             const vlm__manifest *m, const MDB_val *v,
                             const vlm__rec *rec, const void *vec[VLM__NMOD]) {
  uint32_t vf = 0;
  if (vc->id != id || vlm__vecs_parse(&vc->v, m->dim, &vf, vec) != 0)
    return "its vectors are missing or damaged";
  if (vlm__rec_check(v->mv_data, v->mv_size, vc->v.mv_data, vc->v.mv_size))
    return "checksum mismatch";
  const char *why = vlm__rec_damage(m->dim, rec, vec);
  if (why)
    return why;
  key_ref want = {id, 0};
  const key_ref *got = bsearch(&want, km->v, km->n, sizeof *km->v, cmp_ref);
  if (!got)
    return km->damaged ? NULL : "its key does not name it";
  return got->h == XXH3_64bits(rec->key, rec->key_len)
             ? NULL : "its key does not name it";
}

int vlm_db_salvage(const char *src, const char *dst,
                   vlm_db_salvage_fn lost, void *arg,
                   vlm_db_salvage_result *res) {
  vlm__manifest m;
  vlm__lmdb lm;
  vlm_db *out = NULL;
  MDB_txn *txn = NULL;
  vlm__lwalk *items = NULL;
  vec_cursor vc = {NULL, 0, 0, {0, NULL}};
  key_map km = {NULL, 0, 0, 0};
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
                       .fields = fields, .nfields = m.nfields,
                       .model_family = m.model_family,
                       .image_orientation = m.image_orientation,
                       /* a salvaged shard stays the same shard */
                       .cluster_digest = m.cluster_digest,
                       .shard = m.shard,
                       .nshards = m.nshards,
                       .slot_ranges = m.slot_ranges,
                       .nslot_ranges = m.nslot_ranges,
                       .keep_images = m.keep_images};
  if ((rc = vlm_db_create(dst, &cfg, &out)))
    goto done;
  if (!(b = calloc(1, sizeof *b))) {
    rc = vlm_seterr(VLM_ENOMEM, "salvage");
    goto done;
  }
  int mrc = VLM__STORE("lmdb-read", mdb_txn_begin(lm.env, NULL, MDB_RDONLY, &txn));
  if (mrc) {
    rc = vlm__lmdb_err(mrc, "salvage");
    goto done;
  }
  if ((rc = load_keys(&lm, txn, &km)) ||
      (rc = vlm__lwalk_open(&lm, txn, "items", &items)) ||
      (rc = vlm__lwalk_open(&lm, txn, "vecs", &vc.w)))
    goto done;
  MDB_val k, v;
  while ((rc = vlm__lwalk_next(items, &k, &v, NULL)) == 0) {
    uint64_t id;
    memcpy(&id, k.mv_data, 8); /* the walker checked: 8 bytes */
    if ((rc = vec_seek(&vc, id)))
      goto done;
    res->records++;
    vlm__rec rec;
    const void *vec[VLM__NMOD] = {NULL, NULL};
    int key_ok = vlm__rec_decode(v.mv_data, v.mv_size, &rec) == 0;
    const char *why = key_ok ? check_one(&km, &vc, id, &m, &v, &rec, vec)
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
  }
  if (rc < 0)
    goto done;
  /* records in damaged stretches of the items tree: their ids are gone
   * with the pages, only their number is known */
  const vlm__lwalk_damage *dmg = vlm__lwalk_damaged(items);
  if (dmg->count) {
    int64_t missing = vlm__lwalk_missing(items);
    res->records += missing;
    res->lost += missing;
    if (lost) {
      char why[400];
      snprintf(why, sizeof why, "%lld record(s) in unreadable stretches of "
               "the payload store (%s)", (long long)missing, dmg->first);
      lost(arg, NULL, 0, why);
    }
  }
  rc = batch_flush(out, b, &res->saved);
done:
  if (b) {
    batch_clear(b);
    free(b);
  }
  vlm__lwalk_close(items);
  vlm__lwalk_close(vc.w);
  free(km.v);
  if (txn)
    mdb_txn_abort(txn);
  vlm__lmdb_close(&lm);
  vlm_db_close(out);
  return rc;
}
