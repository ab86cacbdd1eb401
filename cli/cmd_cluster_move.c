/* cmd_cluster_move.c - `vlmdb cluster move`: the items of a slot range
 * moved from one shard database to another, and the cluster map rewritten
 * to match, crash-safe and resumable.
 *
 * The order of the steps is what makes a kill -9 at any instant harmless
 * (each step is durable before the next starts, and each is idempotent):
 *
 *   1. widen:  the destination's manifest takes the new map's slots and
 *              digest (vlm_db_set_slots), so it accepts the range's keys;
 *   2. copy:   the range's items are upserted into the destination in
 *              durable batches, each item as the source holds it (record,
 *              kept image bytes and vectors bit for bit; one already there
 *              identical is left alone, so a rerun rewrites nothing);
 *   3. map:    the new cluster.json is written (beside, fsynced, renamed,
 *              directory fsynced): from here on the destination owns the
 *              range;
 *   4. delete: the range's items are deleted from the source in durable
 *              batches (the source still holds the range, so the deletes
 *              are ordinary writes);
 *   5. narrow: the source's manifest takes the new map's slots and digest.
 *
 * Until step 3 the source has every item of the range; from step 2's end
 * the destination has them too; the map names the owner.  A rerun reads
 * which steps are done from the databases and the map themselves: when the
 * map already gives the range to the destination, the copy is over and is
 * not repeated (so a rerun can never copy a stale source item over a newer
 * one); otherwise steps 1-3 are redone, each a no-op where done.
 *
 * A node serves its database only while the database's slots are the ones
 * its map gives it (serve and CLUSTER RELOAD check it), so a database left
 * between steps 1 and 5 is not served by a node of either map, and no
 * coordinated search sees the range's items in two shards.
 *
 * Crash points (vlm_cli_crash_point, for the kill tests): after each STEP
 * (widen, copy, map, delete, narrow), and "copy:N" / "delete:N" after the
 * Nth batch of copy or delete.
 *
 * --live does the same steps between the two serving nodes (move_live,
 * below): each node changes its own database (VLM.MIGRATE, VLM.RESTORE,
 * VLM.LOCAL DEL), a fence (-TRYAGAIN) holds the range's writes on the
 * source for the last copy, and every node reloads the new map before the
 * source deletes the range.  The databases stay servable at every step
 * (a database holding more slots than its map gives carries a marked
 * digest: vlm_cluster_held_ok), and a rerun goes on from what the map and
 * the nodes' states say (cli/README.md, "Moving slots while the nodes
 * serve"). */
#include "opts.h"
#include "progress.h"
#include "shard.h"
#include "vlm_cli.h"
#include "vlm_error.h"
#include "vlm_file.h"
#include "vlmdb.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char move_usage[] =
    "usage: vlmdb cluster move --map CLUSTER.json --slots A-B --from DIR\n"
    "                          --to DIR [--out NEW.json] [--batch N] [--json]\n"
    "       vlmdb cluster move --live --map CLUSTER.json --slots A-B --from I\n"
    "                          --to J [--password P] [--grace MS] [--batch N]\n"
    "\n"
    "Move the items of slots A..B from the shard database DIR (--from), whose\n"
    "shard the map gives them, to the shard database --to, and write the map\n"
    "that gives them to --to's shard (to --out, else over --map).  Steps:\n"
    "widen --to's slots, copy the items, write the map, delete the items\n"
    "from --from, narrow --from's slots; each is durable before the next.\n"
    "Killed at any point, the same command run again finishes the move:\n"
    "every item ends in --to, once.  Both databases must not be served or\n"
    "written while it runs (it takes their writer locks): stop the two\n"
    "nodes, move, start them with the new map, and send CLUSTER RELOAD to\n"
    "the other nodes.\n"
    "\n"
    "  --map FILE      the cluster map the databases were built for (or the\n"
    "                  new one, when a killed move already wrote it there)\n"
    "  --slots A-B     the slot range to move (A-B inclusive, or one slot)\n"
    "  --from DIR      the shard database that holds the range\n"
    "  --to DIR        the shard database that takes it\n"
    "  --out FILE      where the new map goes (default: over --map)\n"
    "  --batch N       items per durable batch (default 1000)\n"
    "  --json          print the summary as JSON\n"
    "  --live          move between the serving nodes of shards I (--from)\n"
    "                  and J (--to), at their addresses in the map: they\n"
    "                  copy the items while serving, writes to the range\n"
    "                  answer -TRYAGAIN for the last copy, then every node\n"
    "                  reloads the new map (cli/README.md, \"Moving slots\n"
    "                  while the nodes serve\"); a rerun finishes a killed one\n"
    "  --password P    the nodes' --requirepass (default $VLMDB_PASSWORD)\n"
    "  --grace MS      with --live, how long searches begun on the old map\n"
    "                  get before the source deletes the range (200)\n"
    "  -h, --help      this help\n"
    "\n"
    "example:\n"
    "  vlmdb cluster move --map cluster.json --slots 8000-8191 \\\n"
    "                     --from out/shard-0 --to out/shard-1\n";

typedef struct {
  const char *cmd;
  vlm_db *src, *dst;
  int first, last; /* the slot range */
  int batch;
  long copied, identical, deleted, batches;
  vlm_progress progress;
} mover;

/* A crash point: "step" at a step's end (batch 0), else "step:batch". */
static void maybe_die(const char *step, long batch) {
  char point[48];
  if (batch)
    snprintf(point, sizeof point, "%s:%ld", step, batch);
  else
    snprintf(point, sizeof point, "%s", step);
  vlm_cli_crash_point(point);
}

static int parse_slots(const char *s, int *first, int *last) {
  char *end;
  long a = strtol(s, &end, 10), b = a;
  if (end == s)
    return -1;
  if (*end == '-') {
    const char *p = end + 1;
    b = strtol(p, &end, 10);
    if (end == p)
      return -1;
  }
  if (*end || a < 0 || b < a || b >= VLM_SLOTS)
    return -1;
  *first = (int)a;
  *last = (int)b;
  return 0;
}

static int in_range(const mover *mv, const char *key) {
  int slot = vlm_key_slot(key, strlen(key));
  return slot >= mv->first && slot <= mv->last;
}

/* The shard's slot ranges with [first, last] added (add) or taken out,
 * sorted and merged, into out (capacity VLM_CLUSTER_MAX_RANGES + 1). */
static int ranges_edit(const vlm_slot_range *in, int n, int first, int last,
                       int add, vlm_slot_range *out) {
  static unsigned char held[VLM_SLOTS];
  memset(held, 0, sizeof held);
  for (int i = 0; i < n; i++)
    memset(held + in[i].first, 1, (size_t)(in[i].last - in[i].first + 1));
  memset(held + first, add ? 1 : 0, (size_t)(last - first + 1));
  int m = 0;
  for (int s = 0; s < VLM_SLOTS; s++) {
    if (!held[s])
      continue;
    if (m && out[m - 1].last == s - 1) {
      out[m - 1].last = s;
    } else {
      if (m == VLM_CLUSTER_MAX_RANGES)
        return -1;
      out[m++] = (vlm_slot_range){s, s};
    }
  }
  return m;
}

static int ranges_equal(const vlm_slot_range *a, int na,
                        const vlm_slot_range *b, int nb) {
  return na == nb && !memcmp(a, b, (size_t)na * sizeof *a);
}

static int same_bytes(const void *a, const void *b, size_t n) {
  return (!a && !b) || (a && b && !memcmp(a, b, n));
}

static int same_text(const char *a, const char *b) {
  return (!a && !b) || (a && b && !strcmp(a, b));
}

/* Bit for bit the same item (its id aside); both read with their kept
 * image bytes. */
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

/* A batch also ends once the kept image bytes it holds reach this. */
#define MOVE_BATCH_IMAGE_BYTES ((size_t)64 << 20)

/* Every key of the range the source holds, in scan order. */
typedef struct {
  char **keys;
  long n, cap;
} keyset;

static void keyset_free(keyset *ks) {
  for (long i = 0; i < ks->n; i++)
    free(ks->keys[i]);
  free(ks->keys);
  memset(ks, 0, sizeof *ks);
}

static int range_keys(mover *mv, keyset *ks) {
  uint64_t cursor = 0;
  do {
    char **keys;
    int n, rc;
    uint64_t next;
    if ((rc = vlm_db_scan(mv->src, cursor, 4096, &keys, &n, &next)))
      return rc;
    for (int i = 0; i < n; i++) {
      if (!in_range(mv, keys[i]))
        continue;
      if (ks->n == ks->cap) {
        long cap = ks->cap ? ks->cap * 2 : 1024;
        char **k = realloc(ks->keys, (size_t)cap * sizeof *k);
        if (!k) {
          vlm_db_keys_free(keys, n);
          return vlm_seterr(VLM_ENOMEM, "move: key list");
        }
        ks->keys = k;
        ks->cap = cap;
      }
      if (!(ks->keys[ks->n] = strdup(keys[i]))) {
        vlm_db_keys_free(keys, n);
        return vlm_seterr(VLM_ENOMEM, "move: key list");
      }
      ks->n++;
    }
    vlm_db_keys_free(keys, n);
    cursor = next;
  } while (cursor);
  return 0;
}

/* Step 2: upsert each item of the range the destination lacks (or holds
 * otherwise) in durable batches of mv->batch. */
static int copy_items(mover *mv, const keyset *ks) {
  vlm_record **recs = calloc((size_t)mv->batch, sizeof *recs);
  vlm_item *items = calloc((size_t)mv->batch, sizeof *items);
  int n = 0, rc = 0;
  size_t image_bytes = 0;
  if (!recs || !items) {
    rc = vlm_seterr(VLM_ENOMEM, "move: batch");
    goto done;
  }
  for (long i = 0; i <= ks->n && rc == 0; i++) {
    if (i < ks->n) {
      vlm_record *r = NULL, *have = NULL;
      if ((rc = vlm_db_get2(mv->src, ks->keys[i], VLM_GET_IMAGE, &r)))
        break;
      int got = vlm_db_get2(mv->dst, ks->keys[i], VLM_GET_IMAGE, &have);
      if (got && got != VLM_ENOTFOUND) {
        vlm_record_free(r);
        rc = got;
        break;
      }
      int same = got == 0 && records_equal(r, have);
      vlm_record_free(have);
      if (same) {
        mv->identical++;
        vlm_record_free(r);
        continue;
      }
      recs[n] = r;
      items[n] = (vlm_item){.key = r->key,
                            .image_vec = r->image_vec,
                            .text_vec = r->text_vec,
                            .caption = r->caption,
                            .source = r->source,
                            .thumb = r->thumb,
                            .thumb_len = r->thumb_len,
                            .meta_json = r->meta_json,
                            .image = r->image,
                            .image_len = r->image ? r->image_len : 0};
      image_bytes += r->image ? r->image_len : 0;
      n++;
    }
    if (n == mv->batch || (n > 0 && image_bytes >= MOVE_BATCH_IMAGE_BYTES) ||
        (i == ks->n && n > 0)) {
      int written = 0;
      rc = vlm_db_put(mv->dst, items, n, VLM_PUT_UPSERT, &written);
      for (int j = 0; j < n; j++)
        vlm_record_free(recs[j]);
      n = 0;
      image_bytes = 0;
      if (rc)
        break;
      mv->copied += written;
      mv->batches++;
      vlm_progress_update(&mv->progress, mv->copied + mv->identical);
      maybe_die("copy", mv->batches);
    }
  }
done:
  for (int j = 0; j < n; j++)
    vlm_record_free(recs[j]);
  free(recs);
  free(items);
  return rc;
}

/* Step 4: delete the range's items from the source, mv->batch a batch. */
static int delete_items(mover *mv, const keyset *ks) {
  long batches = 0;
  for (long i = 0; i < ks->n; i += mv->batch) {
    int n = ks->n - i < mv->batch ? (int)(ks->n - i) : mv->batch, deleted = 0;
    int rc = vlm_db_delete(mv->src, (const char *const *)ks->keys + i, n,
                           &deleted);
    if (rc)
      return rc;
    mv->deleted += deleted;
    vlm_progress_update(&mv->progress, mv->deleted);
    maybe_die("delete", ++batches);
  }
  return 0;
}

/* The map text of path with the slots of shards a and b replaced by
 * the given ranges (everything else kept as written), or NULL. */
static char *map_rewrite(const char *cmd, const char *path, int a,
                         const vlm_slot_range *ra, int na, int b,
                         const vlm_slot_range *rb, int nb) {
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  json_t *shards = json_object_get(root, "shards");
  char *text = NULL;
  if (!json_is_array(shards)) {
    vlm_cli_error(cmd, "%s: %s", path, root ? "no \"shards\"" : jerr.text);
    goto done;
  }
  size_t i;
  json_t *sh;
  json_array_foreach(shards, i, sh) {
    json_int_t id = json_integer_value(json_object_get(sh, "id"));
    const vlm_slot_range *r = id == a ? ra : id == b ? rb : NULL;
    int n = id == a ? na : nb;
    if (!r)
      continue;
    json_t *slots = json_array();
    for (int k = 0; k < n; k++)
      json_array_append_new(slots, json_pack("[ii]", r[k].first, r[k].last));
    json_object_set_new(sh, "slots", slots);
  }
  text = json_dumps(root, JSON_PRESERVE_ORDER | JSON_INDENT(2));
  if (!text)
    vlm_cli_error(cmd, "out of memory");
done:
  json_decref(root);
  return text;
}

/* Write text to path atomically and durably: path.tmp, fsync, rename,
 * fsync of the directory.  0, or -1 (printed). */
static int write_durably(const char *cmd, const char *path,
                         const char *text) {
  char tmp[PATH_MAX], dir[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
    vlm_cli_error(cmd, "%s: path too long", path);
    return -1;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  size_t len = strlen(text);
  if (fd < 0 || vlm_write_all(fd, text, len) || write(fd, "\n", 1) != 1 ||
      fsync(fd)) {
    vlm_cli_error(cmd, "%s: %s", tmp, strerror(errno));
    if (fd >= 0)
      close(fd);
    unlink(tmp);
    return -1;
  }
  close(fd);
  if (rename(tmp, path)) {
    vlm_cli_error(cmd, "rename %s: %s", tmp, strerror(errno));
    unlink(tmp);
    return -1;
  }
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash)
    strcpy(dir, ".");
  else if (slash == dir)
    dir[1] = '\0';
  else
    *slash = '\0';
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int bad = dfd < 0 || fsync(dfd);
  if (dfd >= 0)
    close(dfd);
  if (bad) {
    vlm_cli_error(cmd, "fsync %s: %s", dir, strerror(errno));
    return -1;
  }
  return 0;
}

/* 1 when every slot of [first, last] belongs to shard in map. */
static int owns_range(const vlm_cluster *map, int shard, int first,
                      int last) {
  for (int s = first; s <= last; s++)
    if (map->owner[s] != shard)
      return 0;
  return 1;
}

/* ======================================================================
 * --live: the same move between two serving nodes
 * ==================================================================== */

typedef struct {
  redisContext *c;
  int shard;
  char addr[VLM_CLUSTER_ADDRESS_MAX + 1];
} live_node;

typedef struct {
  char *key;
  long long id;
} keyid;

typedef struct {
  keyid *v;
  long n;
} keyids;

static void keyids_free(keyids *k) {
  for (long i = 0; i < k->n; i++)
    free(k->v[i].key);
  free(k->v);
  k->v = NULL;
  k->n = 0;
}

static int keyid_cmp(const void *a, const void *b) {
  return strcmp(((const keyid *)a)->key, ((const keyid *)b)->key);
}

static const keyid *keyids_find(const keyids *k, const char *key) {
  keyid probe = {(char *)key, 0};
  return k->n ? bsearch(&probe, k->v, (size_t)k->n, sizeof *k->v, keyid_cmp)
              : NULL;
}

/* A reply of n's, or NULL with the error printed (connection lost, an
 * error reply). */
static redisReply *live_check(const char *cmd, live_node *n, redisReply *r) {
  if (!r) {
    vlm_cli_error(cmd, "shard %d (%s): %s", n->shard, n->addr,
                  n->c->errstr[0] ? n->c->errstr : "no reply");
    return NULL;
  }
  if (r->type == REDIS_REPLY_ERROR) {
    vlm_cli_error(cmd, "shard %d (%s): %s", n->shard, n->addr, r->str);
    freeReplyObject(r);
    return NULL;
  }
  return r;
}

static redisReply *live_argv(const char *cmd, live_node *n, int argc,
                             const char **argv, const size_t *lens) {
  return live_check(cmd, n, redisCommandArgv(n->c, argc, argv, lens));
}

static redisReply *live_cmd(const char *cmd, live_node *n, const char *fmt,
                            ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(n->c, fmt, ap);
  va_end(ap);
  return live_check(cmd, n, r);
}

static int live_connect(const char *cmd, const vlm_cluster *map, int shard,
                        const char *password, live_node *n) {
  char host[VLM_CLUSTER_ADDRESS_MAX + 1];
  n->shard = shard;
  if (map->shards[shard].naddresses < 1) {
    vlm_cli_error(cmd, "the map gives shard %d no address", shard);
    return -1;
  }
  snprintf(n->addr, sizeof n->addr, "%s", map->shards[shard].addresses[0]);
  const char *colon = strrchr(n->addr, ':');
  if (!colon || colon == n->addr) {
    vlm_cli_error(cmd, "shard %d's address '%s' is not host:port", shard,
                  n->addr);
    return -1;
  }
  const char *h = n->addr;
  size_t hl = (size_t)(colon - h);
  if (*h == '[' && hl >= 2) {
    h++;
    hl -= 2;
  }
  snprintf(host, sizeof host, "%.*s", (int)hl, h);
  struct timeval tv = {10, 0};
  n->c = redisConnectWithTimeout(host, atoi(colon + 1), tv);
  if (!n->c || n->c->err) {
    vlm_cli_error(cmd, "shard %d (%s): %s", shard, n->addr,
                  n->c ? n->c->errstr : "out of memory");
    return -1;
  }
  struct timeval op = {120, 0};
  redisSetTimeout(n->c, op);
  if (password) {
    redisReply *r = live_cmd(cmd, n, "AUTH %s", password);
    if (!r)
      return -1;
    freeReplyObject(r);
  }
  return 0;
}

/* A node's database: its shard, held slots and digest (VLM.MIGRATE
 * STATE), and the digest of the map it serves. */
typedef struct {
  int shard, nheld;
  vlm_slot_range held[VLM_CLUSTER_MAX_RANGES];
  char digest[17], map_digest[17];
} live_state;

static int live_get_state(const char *cmd, live_node *n, live_state *st) {
  redisReply *r = live_cmd(cmd, n, "VLM.MIGRATE STATE");
  if (!r)
    return -1;
  int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 4;
  if (ok) {
    st->shard = (int)r->element[0]->integer;
    snprintf(st->digest, sizeof st->digest, "%s",
             r->element[1]->str ? r->element[1]->str : "");
    snprintf(st->map_digest, sizeof st->map_digest, "%s",
             r->element[3]->str ? r->element[3]->str : "");
    st->nheld = 0;
    const char *p = r->element[2]->str ? r->element[2]->str : "";
    while (*p && st->nheld < VLM_CLUSTER_MAX_RANGES) {
      int first, last;
      char *end;
      first = last = (int)strtol(p, &end, 10);
      if (*end == '-')
        last = (int)strtol(end + 1, &end, 10);
      st->held[st->nheld++] = (vlm_slot_range){first, last};
      p = *end == ',' ? end + 1 : end;
    }
  }
  freeReplyObject(r);
  if (!ok)
    vlm_cli_error(cmd, "shard %d (%s): VLM.MIGRATE STATE: unexpected reply",
                  n->shard, n->addr);
  return ok ? 0 : -1;
}

static int live_setslots(const char *cmd, live_node *n, const char *digest,
                         const vlm_slot_range *r, int nr) {
  char text[4096];
  vlm_slot_ranges_format(r, nr, text, sizeof text);
  redisReply *rep = live_cmd(cmd, n, "VLM.MIGRATE SETSLOTS %s %s", digest,
                             text);
  if (!rep)
    return -1;
  freeReplyObject(rep);
  return 0;
}

/* The range's keys on n with their item ids, sorted by key. */
static int live_keys(const char *cmd, live_node *n, const mover *mv,
                     keyids *out) {
  redisReply *r = live_cmd(cmd, n, "VLM.RANGEKEYS %d %d", mv->first,
                           mv->last);
  if (!r)
    return -1;
  long cnt = (long)r->elements / 2;
  out->n = 0;
  out->v = calloc((size_t)cnt + 1, sizeof *out->v);
  for (long i = 0; out->v && i < cnt; i++) {
    out->v[i].key = strdup(r->element[2 * i]->str);
    out->v[i].id = r->element[2 * i + 1]->integer;
    out->n++;
    if (!out->v[i].key) {
      out->n--;
      break;
    }
  }
  freeReplyObject(r);
  if (!out->v || out->n != cnt) {
    keyids_free(out);
    vlm_cli_error(cmd, "out of memory");
    return -1;
  }
  qsort(out->v, (size_t)out->n, sizeof *out->v, keyid_cmp);
  return 0;
}

/* Copy from src to dst the keys of now not in done with the same id
 * (a write gives an item a new id), mv->batch a request; done becomes
 * now. */
static int live_copy(const char *cmd, mover *mv, live_node *src,
                     live_node *dst, keyids *now, keyids *done) {
  const char **argv = malloc(((size_t)mv->batch + 1) * sizeof *argv);
  size_t *lens = malloc(((size_t)mv->batch + 1) * sizeof *lens);
  int rc = -1;
  if (!argv || !lens) {
    vlm_cli_error(cmd, "out of memory");
    goto out;
  }
  long i = 0;
  while (i < now->n) {
    int n = 0;
    argv[n] = "VLM.DUMP";
    lens[n++] = 8;
    for (; i < now->n && n <= mv->batch; i++) {
      const keyid *had = keyids_find(done, now->v[i].key);
      if (had && had->id == now->v[i].id) {
        mv->identical++;
        continue;
      }
      argv[n] = now->v[i].key;
      lens[n++] = strlen(now->v[i].key);
    }
    if (n == 1)
      break;
    redisReply *d = live_argv(cmd, src, n, argv, lens);
    if (!d)
      goto out;
    int m = 0;
    argv[m] = "VLM.RESTORE";
    lens[m++] = 11;
    for (size_t e = 0; e < d->elements; e++)
      if (d->element[e]->type == REDIS_REPLY_STRING) {
        argv[m] = d->element[e]->str;
        lens[m++] = d->element[e]->len;
      }
    if (m > 1) {
      redisReply *w = live_argv(cmd, dst, m, argv, lens);
      if (!w) {
        freeReplyObject(d);
        goto out;
      }
      mv->copied += w->integer;
      freeReplyObject(w);
    }
    freeReplyObject(d);
    mv->batches++;
    maybe_die("copy", mv->batches);
  }
  keyids_free(done);
  *done = *now;
  now->v = NULL;
  now->n = 0;
  rc = 0;
out:
  free(argv);
  free(lens);
  return rc;
}

/* Delete keys[0..n) on node (VLM.LOCAL: whether or not its map gives it
 * their slots), mv->batch a request; *deleted += how many were there. */
static int live_delete(const char *cmd, const mover *mv, live_node *n,
                       const keyid *keys, long nkeys, long *deleted,
                       const char *step) {
  const char **argv = malloc(((size_t)mv->batch + 2) * sizeof *argv);
  long batches = 0;
  if (!argv) {
    vlm_cli_error(cmd, "out of memory");
    return -1;
  }
  for (long i = 0; i < nkeys;) {
    int m = 0;
    argv[m++] = "VLM.LOCAL";
    argv[m++] = "DEL";
    for (; i < nkeys && m < mv->batch + 2; i++)
      argv[m++] = keys[i].key;
    redisReply *r = live_argv(cmd, n, m, argv, NULL);
    if (!r) {
      free(argv);
      return -1;
    }
    *deleted += r->integer;
    freeReplyObject(r);
    if (step)
      maybe_die(step, ++batches);
  }
  free(argv);
  return 0;
}

static int same_ranges(const live_state *st, const vlm_slot_range *r, int n) {
  return ranges_equal(st->held, st->nheld, r, n);
}

/* Wait until the writes the source admitted before its fence are done;
 * the fence's token into token. */
static int live_fence(const char *cmd, mover *mv, live_node *src,
                      char *token, size_t cap) {
  redisReply *r = live_cmd(cmd, src, "VLM.MIGRATE FENCE %d %d", mv->first,
                           mv->last);
  if (!r)
    return -1;
  snprintf(token, cap, "%s", r->str ? r->str : "");
  freeReplyObject(r);
  for (int tries = 0; tries < 30000; tries++) {
    if (!(r = live_cmd(cmd, src, "VLM.MIGRATE STATUS")))
      return -1;
    long long old = r->elements == 5 ? r->element[4]->integer : -1;
    int same = r->elements == 5 && r->element[3]->str &&
               !strcmp(r->element[3]->str, token);
    freeReplyObject(r);
    if (!same) {
      vlm_cli_error(cmd, "shard %d (%s) lost its fence (restarted?): run "
                    "the move again", src->shard, src->addr);
      return -1;
    }
    if (old == 0)
      return 0;
    usleep(1000);
  }
  vlm_cli_error(cmd, "shard %d (%s): writes begun before the fence did not "
                "finish in 30 s", src->shard, src->addr);
  return -1;
}

static int live_reload(const char *cmd, live_node *n) {
  redisReply *r = live_cmd(cmd, n, "CLUSTER RELOAD");
  if (!r)
    return -1;
  freeReplyObject(r);
  return 0;
}

/* The live move: see cli/README.md "Moving slots while the nodes serve". */
static int move_live(const char *cmd, mover *mv, const char *map_path,
                     const char *out_path, const char *from, const char *to,
                     const char *password, int grace_ms, int as_json) {
  int status = VLM_EXIT_RUNTIME;
  vlm_cluster *map = NULL;
  vlm_cluster_shard *next = NULL;
  live_node A = {0}, B = {0};
  live_state sa, sb;
  keyids done = {0}, now = {0}, there = {0}, extra = {0};
  char *text = NULL, token[64];
  long deleted_dst = 0;
  if (vlm_cli_cluster_load(cmd, map_path, &map))
    goto done;
  int a, b;
  if (vlm_shard_index(from, map->nshards, &a) ||
      vlm_shard_index(to, map->nshards, &b)) {
    vlm_cli_error(cmd, "with --live, --from and --to are shard indices of "
                  "%s (0..%d): %s", map_path, map->nshards - 1, vlm_errmsg());
    goto done;
  }
  if (a == b) {
    vlm_cli_error(cmd, "--from and --to are both shard %d", a);
    goto done;
  }
  int map_done;
  if (owns_range(map, a, mv->first, mv->last)) {
    map_done = 0;
  } else if (owns_range(map, b, mv->first, mv->last)) {
    map_done = 1;
  } else {
    vlm_cli_error(cmd, "%s: slots %d-%d are not all shard %d's", map_path,
                  mv->first, mv->last, a);
    goto done;
  }
  /* the map after the move (before it, when map_done) */
  if (!(next = calloc((size_t)map->nshards, sizeof *next))) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }
  for (int s = 0; s < map->nshards; s++) {
    next[s].id = s;
    next[s].nranges = map->shards[s].nranges;
    memcpy(next[s].ranges, map->shards[s].ranges, sizeof next[s].ranges);
  }
  vlm_slot_range wide_a[VLM_CLUSTER_MAX_RANGES + 1],
      wide_b[VLM_CLUSTER_MAX_RANGES + 1], tmp[VLM_CLUSTER_MAX_RANGES + 1];
  int na = ranges_edit(map->shards[a].ranges, map->shards[a].nranges,
                       mv->first, mv->last, 0, tmp);
  if (na <= 0) {
    vlm_cli_error(cmd, na == 0 ? "moving the range leaves shard %d no slot"
                               : "shard %d would hold too many ranges", a);
    goto done;
  }
  next[a].nranges = na;
  memcpy(next[a].ranges, tmp, (size_t)na * sizeof tmp[0]);
  int nb = ranges_edit(map->shards[b].ranges, map->shards[b].nranges,
                       mv->first, mv->last, 1, tmp);
  if (nb <= 0) {
    vlm_cli_error(cmd, "shard %d would hold too many ranges", b);
    goto done;
  }
  next[b].nranges = nb;
  memcpy(next[b].ranges, tmp, (size_t)nb * sizeof tmp[0]);
  int nwa = ranges_edit(next[a].ranges, next[a].nranges, mv->first, mv->last,
                        1, wide_a);
  int nwb = nb;
  memcpy(wide_b, next[b].ranges, (size_t)nb * sizeof wide_b[0]);
  char digest[17], mark[17];
  vlm_cluster_digest(next, map->nshards, digest);
  vlm_cluster_move_mark(digest, mark);
  if (live_connect(cmd, map, a, password, &A) ||
      live_connect(cmd, map, b, password, &B) ||
      live_get_state(cmd, &A, &sa) || live_get_state(cmd, &B, &sb))
    goto done;
  if (sa.shard != a || sb.shard != b) {
    vlm_cli_error(cmd, "the nodes at %s and %s serve shards %d and %d, not "
                  "%d and %d", A.addr, B.addr, sa.shard, sb.shard, a, b);
    goto done;
  }
  if (!map_done) {
    const vlm_cluster_shard *old_a = &map->shards[a], *old_b = &map->shards[b];
    if (strcmp(sa.map_digest, map->digest) ||
        strcmp(sb.map_digest, map->digest)) {
      vlm_cli_error(cmd, "the nodes do not serve %s (digest %s): send them "
                    "CLUSTER RELOAD first", map_path, map->digest);
      goto done;
    }
    if (!same_ranges(&sa, old_a->ranges, old_a->nranges) ||
        !(same_ranges(&sb, old_b->ranges, old_b->nranges) ||
          (same_ranges(&sb, wide_b, nwb) && !strcmp(sb.digest, mark)))) {
      vlm_cli_error(cmd, "shards %d and %d do not hold the slots %s gives "
                    "them, before or during a live move of %d-%d", a, b,
                    map_path, mv->first, mv->last);
      goto done;
    }
    /* 1. widen the destination (its map does not give it the range: the
     * node hides the items that arrive) */
    if (!same_ranges(&sb, wide_b, nwb) &&
        live_setslots(cmd, &B, mark, wide_b, nwb))
      goto done;
    maybe_die("widen", 0);
    /* 2. copy, twice while writes go on, then with the range fenced */
    for (int round = 0; round < 2; round++)
      if (live_keys(cmd, &A, mv, &now) ||
          live_copy(cmd, mv, &A, &B, &now, &done))
        goto done;
    maybe_die("copy", 0);
    if (live_fence(cmd, mv, &A, token, sizeof token))
      goto done;
    maybe_die("fence", 0);
    /* the source's manifest marks the move, so that it may still hold
     * the range once the map gives it away */
    if (strcmp(sa.digest, mark) &&
        live_setslots(cmd, &A, mark, old_a->ranges, old_a->nranges))
      goto done;
    if (live_keys(cmd, &A, mv, &now) ||
        live_copy(cmd, mv, &A, &B, &now, &done) ||
        live_keys(cmd, &B, mv, &there))
      goto done;
    /* items deleted on the source since they were copied */
    if (!(extra.v = calloc((size_t)there.n + 1, sizeof *extra.v))) {
      vlm_cli_error(cmd, "out of memory");
      goto done;
    }
    for (long i = 0; i < there.n; i++)
      if (!keyids_find(&done, there.v[i].key))
        extra.v[extra.n++].key = there.v[i].key;
    if (live_delete(cmd, mv, &B, extra.v, extra.n, &deleted_dst, NULL))
      goto done;
    /* still fenced: no write reached the source since */
    redisReply *r = live_cmd(cmd, &A, "VLM.MIGRATE STATUS");
    int held = r && r->elements == 5 && r->element[3]->str &&
               !strcmp(r->element[3]->str, token);
    if (r)
      freeReplyObject(r);
    if (!held) {
      vlm_cli_error(cmd, "shard %d (%s) lost its fence (restarted?): run "
                    "the move again", a, A.addr);
      goto done;
    }
    /* 3. the map: from here on the destination owns the range */
    if (!(text = map_rewrite(cmd, map_path, a, next[a].ranges,
                             next[a].nranges, b, next[b].ranges,
                             next[b].nranges)) ||
        write_durably(cmd, out_path, text))
      goto done;
  } else if (!((same_ranges(&sb, map->shards[b].ranges,
                            map->shards[b].nranges)) &&
               (same_ranges(&sa, map->shards[a].ranges,
                            map->shards[a].nranges) ||
                (nwa > 0 && same_ranges(&sa, wide_a, nwa))))) {
    vlm_cli_error(cmd, "shards %d and %d do not hold the slots %s gives "
                  "them, during or after a live move of %d-%d", a, b,
                  map_path, mv->first, mv->last);
    goto done;
  }
  maybe_die("map", 0);
  /* 4. every node serves the new map: the destination first, then the
   * source (which lifts its fence: the range's writes now go on to the
   * destination), then the others */
  if (live_reload(cmd, &B) || live_reload(cmd, &A))
    goto done;
  for (int s = 0; s < map->nshards; s++) {
    if (s == a || s == b)
      continue;
    live_node o = {0};
    if (live_connect(cmd, map, s, password, &o) || live_reload(cmd, &o))
      fprintf(stderr, "vlmdb cluster move: warning: shard %d did not "
              "reload the map; send it CLUSTER RELOAD (until then it sends "
              "the range's keys to shard %d, which sends them on)\n", s, a);
    if (o.c)
      redisFree(o.c);
  }
  maybe_die("reload", 0);
  /* searches a node began on the old map finish against the source */
  usleep((useconds_t)grace_ms * 1000);
  /* 5. the destination's clean digest; the source's items deleted, its
   * slots narrowed */
  if (live_get_state(cmd, &A, &sa) || live_get_state(cmd, &B, &sb))
    goto done;
  if (strcmp(sb.digest, digest) &&
      live_setslots(cmd, &B, digest, next[b].ranges, next[b].nranges))
    goto done;
  if (!same_ranges(&sa, next[a].ranges, next[a].nranges)) {
    if (live_keys(cmd, &A, mv, &now) ||
        live_delete(cmd, mv, &A, now.v, now.n, &mv->deleted, "delete"))
      goto done;
    maybe_die("delete", 0);
    if (live_setslots(cmd, &A, digest, next[a].ranges, next[a].nranges))
      goto done;
  }
  maybe_die("narrow", 0);
  if (as_json)
    printf("{\"slots\": [%d, %d], \"from\": %d, \"to\": %d, \"live\": true, "
           "\"copied\": %ld, \"already_there\": %ld, \"deleted\": %ld, "
           "\"digest\": \"%s\"}\n", mv->first, mv->last, a, b, mv->copied,
           mv->identical, mv->deleted, digest);
  else
    printf("moved slots %d-%d live from shard %d (%s) to shard %d (%s): %ld "
           "copied, %ld already there, %ld deleted; map %s (digest %s)\n",
           mv->first, mv->last, a, A.addr, b, B.addr, mv->copied,
           mv->identical, mv->deleted, out_path, digest);
  status = VLM_EXIT_OK;
done:
  free(extra.v); /* its keys are there's */
  keyids_free(&there);
  keyids_free(&now);
  keyids_free(&done);
  free(text);
  free(next);
  if (A.c)
    redisFree(A.c);
  if (B.c)
    redisFree(B.c);
  vlm_cluster_free(map);
  return status;
}

int cmd_cluster_move(int argc, char **argv) {
  const char *cmd = "cluster move", *map_path = NULL, *slots = NULL,
             *from = NULL, *to = NULL, *out_path = NULL;
  const char *password = getenv("VLMDB_PASSWORD");
  int as_json = 0, live = 0;
  long batch = 1000, grace_ms = 200;
  static const struct option longopts[] = {
      {"map", required_argument, NULL, 'm'},
      {"slots", required_argument, NULL, 's'},
      {"from", required_argument, NULL, 'f'},
      {"to", required_argument, NULL, 't'},
      {"out", required_argument, NULL, 'o'},
      {"batch", required_argument, NULL, 'b'},
      {"json", no_argument, NULL, 'j'},
      {"live", no_argument, NULL, 'l'},
      {"password", required_argument, NULL, 'p'},
      {"grace", required_argument, NULL, 'g'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  char *end;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'm': map_path = optarg; break;
    case 's': slots = optarg; break;
    case 'f': from = optarg; break;
    case 't': to = optarg; break;
    case 'o': out_path = optarg; break;
    case 'j': as_json = 1; break;
    case 'l': live = 1; break;
    case 'p': password = optarg; break;
    case 'g':
      grace_ms = strtol(optarg, &end, 10);
      if (*end || end == optarg || grace_ms < 0 || grace_ms > 60000)
        return vlm_cli_usage_error(cmd, "--grace is 0..60000 ms");
      break;
    case 'b':
      batch = strtol(optarg, &end, 10);
      if (*end || end == optarg || batch < 1 || batch > 100000)
        return vlm_cli_usage_error(cmd, "--batch is 1..100000");
      break;
    case 'h': fputs(move_usage, stdout); return VLM_EXIT_OK;
    default: return vlm_cli_getopt_failed(cmd);
    }
  }
  if (!map_path || !slots || !from || !to)
    return vlm_cli_usage_error(cmd, "--map, --slots, --from and --to are "
                               "required");
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  mover mv = {.cmd = cmd, .batch = (int)batch};
  if (parse_slots(slots, &mv.first, &mv.last))
    return vlm_cli_usage_error(cmd, "--slots is A-B (0 <= A <= B <= %d) or "
                               "one slot", VLM_SLOTS - 1);
  if (!out_path)
    out_path = map_path;
  if (live)
    return move_live(cmd, &mv, map_path, out_path, from, to,
                     password && *password ? password : NULL, (int)grace_ms,
                     as_json);

  int status = VLM_EXIT_RUNTIME, rc;
  vlm_cluster *map = NULL, *written = NULL;
  vlm_cluster_shard *next = NULL;
  keyset ks = {0};
  char *text = NULL;
  vlm_db_info si, di;
  if (vlm_cli_cluster_load(cmd, map_path, &map))
    goto done;
  if (vlm_cli_open_db(cmd, from, 0, &mv.src) ||
      vlm_cli_open_db(cmd, to, 0, &mv.dst))
    goto done;
  if ((rc = vlm_db_stat(mv.src, &si)) || (rc = vlm_db_stat(mv.dst, &di))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  if (si.shard < 0 || di.shard < 0) {
    vlm_cli_error(cmd, "%s is not a shard database (made without --cluster)",
                  si.shard < 0 ? from : to);
    goto done;
  }
  if (si.nshards != map->nshards || di.nshards != map->nshards) {
    vlm_cli_error(cmd, "%s has %d shards; %s and %s are shards of %d and %d",
                  map_path, map->nshards, from, to, si.nshards, di.nshards);
    goto done;
  }
  if (si.shard == di.shard) {
    vlm_cli_error(cmd, "%s and %s are both shard %d", from, to, si.shard);
    goto done;
  }
  int a = si.shard, b = di.shard;
  /* The map as it was, or as a killed run already rewrote it. */
  int map_done, out_ok = 0;
  if (owns_range(map, a, mv.first, mv.last)) {
    map_done = 0;
  } else if (owns_range(map, b, mv.first, mv.last)) {
    map_done = 1;
  } else {
    vlm_cli_error(cmd, "%s: slots %d-%d are not all shard %d's (%s)",
                  map_path, mv.first, mv.last, a, from);
    goto done;
  }
  /* The new map: the range taken from a and given to b. */
  if (!(next = calloc((size_t)map->nshards, sizeof *next))) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }
  for (int s = 0; s < map->nshards; s++) {
    next[s].id = s;
    next[s].nranges = map->shards[s].nranges;
    memcpy(next[s].ranges, map->shards[s].ranges, sizeof next[s].ranges);
  }
  vlm_slot_range tmp[VLM_CLUSTER_MAX_RANGES];
  int na = ranges_edit(map->shards[a].ranges, map->shards[a].nranges,
                       mv.first, mv.last, 0, tmp);
  if (na > 0) {
    next[a].nranges = na;
    memcpy(next[a].ranges, tmp, (size_t)na * sizeof tmp[0]);
  }
  int nb = ranges_edit(map->shards[b].ranges, map->shards[b].nranges,
                       mv.first, mv.last, 1, tmp);
  if (na == 0) {
    vlm_cli_error(cmd, "moving %d-%d leaves shard %d no slot; a shard holds "
                  "at least one", mv.first, mv.last, a);
    goto done;
  }
  if (na < 0 || nb < 0) {
    vlm_cli_error(cmd, "a shard would hold more than %d slot ranges",
                  VLM_CLUSTER_MAX_RANGES);
    goto done;
  }
  next[b].nranges = nb;
  memcpy(next[b].ranges, tmp, (size_t)nb * sizeof tmp[0]);
  char digest[17];
  vlm_cluster_digest(next, map->nshards, digest);
  /* --out elsewhere: written already when it holds the new map */
  if (strcmp(out_path, map_path) &&
      !vlm_cluster_load(out_path, NULL, NULL, &written))
    out_ok = !strcmp(written->digest, digest);
  map_done |= out_ok;
  /* Each database holds its slots of the old map or of the new one (a
   * killed run stops between the two); anything else is not this move. */
  const vlm_cluster_shard *old_a = map_done ? NULL : &map->shards[a],
                          *old_b = map_done ? NULL : &map->shards[b];
  int src_new = ranges_equal(si.slot_ranges, si.nslot_ranges, next[a].ranges,
                             next[a].nranges) &&
                !strcmp(si.cluster_digest, digest);
  int src_old = old_a && ranges_equal(si.slot_ranges, si.nslot_ranges,
                                      old_a->ranges, old_a->nranges);
  int dst_new = ranges_equal(di.slot_ranges, di.nslot_ranges, next[b].ranges,
                             next[b].nranges) &&
                !strcmp(di.cluster_digest, digest);
  int dst_old = old_b && ranges_equal(di.slot_ranges, di.nslot_ranges,
                                      old_b->ranges, old_b->nranges);
  if (map_done) {
    /* the map was written after the widening; the source may be narrowed
     * or still hold the range (it gave it up only at the end) */
    vlm_slot_range wide[VLM_CLUSTER_MAX_RANGES + 1];
    int nw = ranges_edit(next[a].ranges, next[a].nranges, mv.first, mv.last,
                         1, wide);
    src_old = nw > 0 && ranges_equal(si.slot_ranges, si.nslot_ranges, wide,
                                     nw);
  }
  if (!(src_new || src_old) || !(dst_new || dst_old) ||
      (map_done && !dst_new)) {
    char held_s[256], held_d[256];
    vlm_slot_ranges_format(si.slot_ranges, si.nslot_ranges, held_s,
                           sizeof held_s);
    vlm_slot_ranges_format(di.slot_ranges, di.nslot_ranges, held_d,
                           sizeof held_d);
    vlm_cli_error(cmd, "%s (slots %s) and %s (slots %s) do not hold the "
                  "slots %s gives shards %d and %d, before or after moving "
                  "%d-%d", from, held_s, to, held_d, map_path, a, b,
                  mv.first, mv.last);
    goto done;
  }

  /* 1. widen */
  if (!dst_new && (rc = vlm_db_set_slots(mv.dst, digest, next[b].ranges,
                                         next[b].nranges))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  maybe_die("widen", 0);
  if ((rc = range_keys(&mv, &ks))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  /* 2. copy, 3. map: only while the map still gives the range to the
   * source; once written, the destination's items are the truth */
  if (!map_done) {
    vlm_progress_init(&mv.progress, stderr, "move: copy", ks.n);
    rc = copy_items(&mv, &ks);
    vlm_progress_finish(&mv.progress);
    if (rc) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    maybe_die("copy", 0);
  }
  if (!map_done) {
    if (!(text = map_rewrite(cmd, map_path, a, next[a].ranges,
                             next[a].nranges, b, next[b].ranges,
                             next[b].nranges)))
      goto done;
    vlm_cluster *check = NULL;
    if (vlm_cluster_parse(text, strlen(text), out_path, NULL, NULL, &check) ||
        strcmp(check->digest, digest)) {
      vlm_cli_error(cmd, "the rewritten map is not the one meant (%s)",
                    check ? "another digest" : vlm_errmsg());
      vlm_cluster_free(check);
      goto done;
    }
    vlm_cluster_free(check);
    if (write_durably(cmd, out_path, text))
      goto done;
  }
  maybe_die("map", 0);
  /* 4. delete, 5. narrow */
  if (!src_new) {
    vlm_progress_init(&mv.progress, stderr, "move: delete", ks.n);
    rc = delete_items(&mv, &ks);
    vlm_progress_finish(&mv.progress);
    if (rc) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    maybe_die("delete", 0);
    if ((rc = vlm_db_set_slots(mv.src, digest, next[a].ranges,
                               next[a].nranges))) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
  }
  maybe_die("narrow", 0);
  if ((rc = vlm_db_stat(mv.dst, &di))) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  if (as_json) {
    printf("{\"slots\": [%d, %d], \"from\": %d, \"to\": %d, \"keys\": %ld, "
           "\"copied\": %ld, \"already_there\": %ld, \"deleted\": %ld, "
           "\"digest\": \"%s\"}\n", mv.first, mv.last, a, b, ks.n, mv.copied,
           mv.identical, mv.deleted, digest);
  } else {
    printf("moved slots %d-%d from shard %d (%s) to shard %d (%s): %ld "
           "copied, %ld already there, %ld deleted; map %s (digest %s)\n",
           mv.first, mv.last, a, from, b, to, mv.copied, mv.identical,
           mv.deleted, out_path, digest);
  }
  status = VLM_EXIT_OK;
done:
  keyset_free(&ks);
  free(text);
  free(next);
  vlm_cluster_free(written);
  vlm_cluster_free(map);
  vlm_db_close(mv.src);
  vlm_db_close(mv.dst);
  return status;
}
