/* migrate.c - the item transfer of a live slot move.
 *
 * `vlmdb cluster move --live` (cli/cmd_cluster_move.c) drives two serving
 * nodes: it lists the range's keys on the source (VLM.RANGEKEYS), reads
 * items whole there (VLM.DUMP) and writes them on the destination
 * (VLM.RESTORE).  An item travels as one binary record holding everything
 * the database stores of it, so the copy is bit for bit what `cluster
 * move` copies between two databases on disk: key, vectors, caption,
 * source, metadata, thumbnail and kept image bytes.
 *
 * Record (native byte order: the nodes of a cluster run one build):
 *   "VLR1", u32 dim, u32 flags (bit i: part i present), then each
 *   present part in this order: key, image_vec, text_vec, caption, source,
 *   meta_json, thumb, image; strings and bytes as u64 length + bytes,
 *   vectors as dim float32.  The key is always present.
 */
#include <stdlib.h>
#include <string.h>

#include "netint.h"
#include "vlm_error.h"

enum {
  P_KEY = 1u << 0,
  P_IMAGE_VEC = 1u << 1,
  P_TEXT_VEC = 1u << 2,
  P_CAPTION = 1u << 3,
  P_SOURCE = 1u << 4,
  P_META = 1u << 5,
  P_THUMB = 1u << 6,
  P_IMAGE = 1u << 7
};

static const char record_magic[4] = {'V', 'L', 'R', '1'};

static void put_bytes(vlm__buf *b, const void *p, size_t n) {
  uint64_t len = n;
  vlm__buf_append(b, &len, sizeof len);
  vlm__buf_append(b, p, n);
}

static void record_encode(vlm__buf *b, const vlm_record *r) {
  uint32_t dim = (uint32_t)r->dim, flags = P_KEY;
  flags |= r->image_vec ? P_IMAGE_VEC : 0;
  flags |= r->text_vec ? P_TEXT_VEC : 0;
  flags |= r->caption ? P_CAPTION : 0;
  flags |= r->source ? P_SOURCE : 0;
  flags |= r->meta_json ? P_META : 0;
  flags |= r->thumb ? P_THUMB : 0;
  flags |= r->image ? P_IMAGE : 0;
  size_t vbytes = (size_t)dim * sizeof(float);
  vlm__buf_append(b, record_magic, sizeof record_magic);
  vlm__buf_append(b, &dim, sizeof dim);
  vlm__buf_append(b, &flags, sizeof flags);
  put_bytes(b, r->key, strlen(r->key));
  if (r->image_vec)
    vlm__buf_append(b, r->image_vec, vbytes);
  if (r->text_vec)
    vlm__buf_append(b, r->text_vec, vbytes);
  if (r->caption)
    put_bytes(b, r->caption, strlen(r->caption));
  if (r->source)
    put_bytes(b, r->source, strlen(r->source));
  if (r->meta_json)
    put_bytes(b, r->meta_json, strlen(r->meta_json));
  if (r->thumb)
    put_bytes(b, r->thumb, r->thumb_len);
  if (r->image)
    put_bytes(b, r->image, r->image_len);
}

typedef struct {
  const unsigned char *p, *end;
} reader;

static int take(reader *rd, void *out, size_t n) {
  if ((size_t)(rd->end - rd->p) < n)
    return -1;
  memcpy(out, rd->p, n);
  rd->p += n;
  return 0;
}

/* A copy of the next length-prefixed part, NUL-terminated (*len: its
 * length); NULL when the record ends early or memory runs out. */
static void *take_bytes(reader *rd, size_t *len) {
  uint64_t n;
  if (take(rd, &n, sizeof n) < 0 || n > (uint64_t)(rd->end - rd->p))
    return NULL;
  char *c = malloc((size_t)n + 1);
  if (!c)
    return NULL;
  memcpy(c, rd->p, (size_t)n);
  c[n] = '\0';
  rd->p += n;
  if (len)
    *len = (size_t)n;
  return c;
}

static float *take_vec(reader *rd, int dim) {
  size_t n = (size_t)dim * sizeof(float);
  float *v = malloc(n ? n : 1);
  if (v && take(rd, v, n) < 0) {
    free(v);
    return NULL;
  }
  return v;
}

/* Decode one record of len bytes, of vectors of dim floats: 0 with *out
 * (free with vlm_record_free), or VLM_EFORMAT / VLM_ENOMEM. */
static int record_decode(const void *data, size_t len, int dim,
                         vlm_record **out) {
  reader rd = {data, (const unsigned char *)data + len};
  char magic[4];
  uint32_t rdim, flags;
  vlm_record *r = calloc(1, sizeof *r);
  if (!r)
    return vlm_seterr(VLM_ENOMEM, "VLM.RESTORE: record");
  if (take(&rd, magic, 4) < 0 || memcmp(magic, record_magic, 4) ||
      take(&rd, &rdim, sizeof rdim) < 0 ||
      take(&rd, &flags, sizeof flags) < 0 || !(flags & P_KEY))
    goto bad;
  if ((int)rdim != dim) {
    vlm_record_free(r);
    return vlm_seterr(VLM_EFORMAT, "VLM.RESTORE: a record of dimension %u "
                      "for a database of dimension %d", rdim, dim);
  }
  r->dim = dim;
  if (!(r->key = take_bytes(&rd, NULL)))
    goto bad;
  if ((flags & P_IMAGE_VEC) && !(r->image_vec = take_vec(&rd, dim)))
    goto bad;
  if ((flags & P_TEXT_VEC) && !(r->text_vec = take_vec(&rd, dim)))
    goto bad;
  if ((flags & P_CAPTION) && !(r->caption = take_bytes(&rd, NULL)))
    goto bad;
  if ((flags & P_SOURCE) && !(r->source = take_bytes(&rd, NULL)))
    goto bad;
  if ((flags & P_META) && !(r->meta_json = take_bytes(&rd, NULL)))
    goto bad;
  if ((flags & P_THUMB) && !(r->thumb = take_bytes(&rd, &r->thumb_len)))
    goto bad;
  if ((flags & P_IMAGE) && !(r->image = take_bytes(&rd, &r->image_len)))
    goto bad;
  if (rd.p != rd.end)
    goto bad;
  *out = r;
  return 0;
bad:
  vlm_record_free(r);
  return vlm_seterr(VLM_EFORMAT, "VLM.RESTORE: not a VLM.DUMP record");
}

static int same_bytes(const void *a, const void *b, size_t n) {
  return (!a && !b) || (a && b && !memcmp(a, b, n));
}

static int same_text(const char *a, const char *b) {
  return (!a && !b) || (a && b && !strcmp(a, b));
}

/* Bit for bit the same item, its id aside (both read with the image). */
static int records_equal(const vlm_record *a, const vlm_record *b) {
  size_t vb = (size_t)a->dim * sizeof(float);
  return a->dim == b->dim && same_bytes(a->image_vec, b->image_vec, vb) &&
         same_bytes(a->text_vec, b->text_vec, vb) &&
         same_text(a->caption, b->caption) &&
         same_text(a->source, b->source) &&
         same_text(a->meta_json, b->meta_json) &&
         a->thumb_len == b->thumb_len &&
         same_bytes(a->thumb, b->thumb, a->thumb_len) &&
         a->image_len == b->image_len &&
         same_bytes(a->image, b->image, a->image_len);
}

static int parse_slot(const vlm__resp_arg *a, int *out) {
  char buf[16];
  if (a->len == 0 || a->len >= sizeof buf)
    return -1;
  memcpy(buf, a->ptr, a->len);
  buf[a->len] = '\0';
  char *end;
  long v = strtol(buf, &end, 10);
  if (*end || v < 0 || v >= VLM_SLOTS)
    return -1;
  *out = (int)v;
  return 0;
}

static void reply_liberr(vlm__buf *out, int rc) {
  vlm__reply_error(out, "ERR", "%s", vlm_errmsg()[0] ? vlm_errmsg()
                                                     : vlm_strerror(rc));
}

/* ---- VLM.RANGEKEYS first last ---- */

typedef struct {
  int first, last;
} range_state;

int vlm__rangekeys_proc(vlm__ctx *ctx) {
  range_state *st = calloc(1, sizeof *st);
  if (!st) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  ctx->job->state = st;
  ctx->job->state_free = free;
  if (parse_slot(&ctx->argv[1], &st->first) < 0 ||
      parse_slot(&ctx->argv[2], &st->last) < 0 || st->last < st->first) {
    vlm__reply_error(ctx->out, "ERR", "VLM.RANGEKEYS first last: slots "
                     "0..%d, first <= last", VLM_SLOTS - 1);
    return -1;
  }
  return 0;
}

/* [key, id, key, id, ...]: every item of the range, its id telling one
 * version from the next (a write gives an item a new id). */
void vlm__rangekeys_exec(vlm__job *job) {
  range_state *st = job->state;
  vlm__buf items;
  long n = 0;
  uint64_t cursor = 0;
  int rc = 0;
  vlm__buf_init(&items, job->reply.resp3);
  do {
    char **keys;
    int nk;
    uint64_t next;
    if ((rc = vlm_db_scan(job->srv->db, cursor, 4096, &keys, &nk, &next)))
      break;
    for (int i = 0; i < nk && rc == 0; i++) {
      int slot = vlm_key_slot(keys[i], strlen(keys[i]));
      if (slot < st->first || slot > st->last)
        continue;
      vlm_record *r = NULL;
      int got = vlm_db_get(job->srv->db, keys[i], &r);
      if (got == VLM_ENOTFOUND)
        continue; /* deleted since the scan read it */
      if (got) {
        rc = got;
        break;
      }
      vlm__reply_cstr(&items, keys[i]);
      vlm__reply_int(&items, (long long)r->id);
      vlm_record_free(r);
      n++;
    }
    vlm_db_keys_free(keys, nk);
    cursor = next;
  } while (cursor && rc == 0);
  if (rc < 0 || items.oom) {
    if (rc < 0)
      reply_liberr(&job->reply, rc);
    else
      vlm__reply_error(&job->reply, "ERR", "out of memory");
  } else {
    vlm__reply_array(&job->reply, 2 * n);
    vlm__buf_append(&job->reply, items.data, items.len);
  }
  vlm__buf_free(&items);
}

/* ---- VLM.DUMP key [key ...] ---- */

int vlm__dump_proc(vlm__ctx *ctx) {
  for (int i = 1; i < ctx->argc; i++)
    if (ctx->argv[i].len == 0 || memchr(ctx->argv[i].ptr, 0,
                                        ctx->argv[i].len)) {
      vlm__reply_error(ctx->out, "ERR", "VLM.DUMP: a key is 1 or more bytes "
                       "without NUL");
      return -1;
    }
  return 0;
}

void vlm__dump_exec(vlm__job *job) {
  vlm__buf items, rec;
  vlm__buf_init(&items, job->reply.resp3);
  vlm__buf_init(&rec, 0);
  int rc = 0;
  for (int i = 1; i < job->argc && rc == 0; i++) {
    vlm_record *r = NULL;
    rc = vlm_db_get2(job->srv->db, job->argv[i].ptr, VLM_GET_IMAGE, &r);
    if (rc == VLM_ENOTFOUND) {
      rc = 0;
      vlm__reply_null(&items);
      continue;
    }
    if (rc)
      break;
    rec.len = 0;
    record_encode(&rec, r);
    vlm_record_free(r);
    vlm__reply_bulk(&items, rec.data, rec.len);
  }
  if (rc < 0) {
    reply_liberr(&job->reply, rc);
  } else if (items.oom || rec.oom) {
    vlm__reply_error(&job->reply, "ERR", "out of memory");
  } else {
    vlm__reply_array(&job->reply, job->argc - 1);
    vlm__buf_append(&job->reply, items.data, items.len);
  }
  vlm__buf_free(&items);
  vlm__buf_free(&rec);
}

/* ---- VLM.RESTORE record [record ...] ---- */

int vlm__restore_proc(vlm__ctx *ctx) {
  (void)ctx;
  return 0;
}

/* One durable upsert batch of the records that differ from what the
 * database holds (so a copy repeated after a crash writes nothing). */
void vlm__restore_exec(vlm__job *job) {
  int n = job->argc - 1, nput = 0, written = 0, rc = 0;
  vlm_record **recs = calloc((size_t)n, sizeof *recs);
  vlm_item *items = calloc((size_t)n, sizeof *items);
  if (!recs || !items) {
    vlm__reply_error(&job->reply, "ERR", "out of memory");
    goto done;
  }
  for (int i = 0; i < n && rc == 0; i++) {
    vlm_record *r = NULL, *have = NULL;
    if ((rc = record_decode(job->argv[i + 1].ptr, job->argv[i + 1].len,
                            job->srv->dim, &r)))
      break;
    recs[i] = r;
    int got = vlm_db_get2(job->srv->db, r->key, VLM_GET_IMAGE, &have);
    if (got && got != VLM_ENOTFOUND) {
      rc = got;
      break;
    }
    int same = got == 0 && records_equal(r, have);
    vlm_record_free(have);
    if (same)
      continue;
    items[nput++] = (vlm_item){.key = r->key,
                               .image_vec = r->image_vec,
                               .text_vec = r->text_vec,
                               .caption = r->caption,
                               .source = r->source,
                               .thumb = r->thumb,
                               .thumb_len = r->thumb_len,
                               .meta_json = r->meta_json,
                               .image = r->image,
                               .image_len = r->image ? r->image_len : 0};
  }
  if (rc == 0 && nput > 0)
    rc = vlm_db_put(job->srv->db, items, nput, VLM_PUT_UPSERT, &written);
  if (rc < 0)
    reply_liberr(&job->reply, rc);
  else
    vlm__reply_int(&job->reply, written);
done:
  for (int i = 0; recs && i < n; i++)
    vlm_record_free(recs[i]);
  free(recs);
  free(items);
}
