/* vlm_slot.c - Redis Cluster's hash slots and vlmdb's cluster maps. */
#include "vlm_slot.h"

#include "vlm_error.h"
#include "vlm_file.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* ------------------------------------------------------------- slots */

/* Bitwise CRC16-XMODEM: keys are short, and a table would only matter to
 * a bulk split, which is bound by reading the catalog. */
uint16_t vlm_crc16(const void *data, size_t len) {
  const uint8_t *p = data;
  uint16_t crc = 0;
  for (size_t i = 0; i < len; i++) {
    crc ^= (uint16_t)(p[i] << 8);
    for (int b = 0; b < 8; b++)
      crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021)
                           : (uint16_t)(crc << 1);
  }
  return crc;
}

int vlm_key_slot(const char *key, size_t len) {
  /* Redis Cluster's keyHashSlot: the first '{', then the first '}' after
   * it; a non-empty tag between them is hashed instead of the key. */
  const char *open = memchr(key, '{', len);
  if (open) {
    size_t start = (size_t)(open - key) + 1;
    const char *close = memchr(key + start, '}', len - start);
    if (close && close > key + start)
      return vlm_crc16(key + start, (size_t)(close - key) - start) &
             (VLM_SLOTS - 1);
  }
  return vlm_crc16(key, len) & (VLM_SLOTS - 1);
}

/* ------------------------------------------------------------ ranges */

void vlm_slot_ranges_format(const vlm_slot_range *ranges, int n, char *buf,
                            size_t cap) {
  size_t used = 0;
  if (!cap)
    return;
  buf[0] = '\0';
  for (int i = 0; i < n && used < cap; i++) {
    int w = ranges[i].first == ranges[i].last
                ? snprintf(buf + used, cap - used, "%s%d", i ? "," : "",
                           ranges[i].first)
                : snprintf(buf + used, cap - used, "%s%d-%d", i ? "," : "",
                           ranges[i].first, ranges[i].last);
    if (w < 0)
      break;
    used += (size_t)w;
  }
}

void vlm_cluster_digest(const vlm_cluster_shard *shards, int nshards,
                        char out[17]) {
  XXH3_state_t *st = XXH3_createState();
  uint64_t h = 0;
  if (st && XXH3_64bits_reset(st) == XXH_OK) {
    for (int s = 0; s < nshards; s++) {
      char buf[64];
      int w = snprintf(buf, sizeof buf, "%d:", shards[s].id);
      XXH3_64bits_update(st, buf, (size_t)w);
      for (int r = 0; r < shards[s].nranges; r++) {
        w = snprintf(buf, sizeof buf, "%s%d-%d", r ? "," : "",
                     shards[s].ranges[r].first, shards[s].ranges[r].last);
        XXH3_64bits_update(st, buf, (size_t)w);
      }
      XXH3_64bits_update(st, ";", 1);
    }
    h = XXH3_64bits_digest(st);
  }
  XXH3_freeState(st);
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static int range_cmp(const void *a, const void *b) {
  const vlm_slot_range *x = a, *y = b;
  return (x->first > y->first) - (x->first < y->first);
}

/* ------------------------------------------------------------ parsing */

typedef struct {
  const char *name;
  vlm_cluster_problem_fn fn;
  void *arg;
  int count;
  char first[768];
} problems;

static void problem(problems *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void problem(problems *p, const char *fmt, ...) {
  char msg[640];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char line[768];
  snprintf(line, sizeof line, "%s: %s", p->name, msg);
  if (p->count++ == 0)
    snprintf(p->first, sizeof p->first, "%s", line);
  if (p->fn)
    p->fn(p->arg, line);
}

static int get_int(const json_t *v, long min, long max, long *out) {
  if (!json_is_integer(v))
    return -1;
  json_int_t x = json_integer_value(v);
  if (x < min || x > max)
    return -1;
  *out = (long)x;
  return 0;
}

static void free_shards(vlm_cluster_shard *shards, int n) {
  for (int s = 0; shards && s < n; s++) {
    for (int a = 0; a < shards[s].naddresses; a++)
      free(shards[s].addresses[a]);
    free(shards[s].addresses);
  }
  free(shards);
}

void vlm_cluster_free(vlm_cluster *cluster) {
  if (!cluster)
    return;
  free_shards(cluster->shards, cluster->nshards);
  free(cluster);
}

/* One shard object into sh (its id already checked); problems reported.
 * Returns -1 only when out of memory. */
static int parse_shard(problems *p, const json_t *obj, long id,
                       vlm_cluster_shard *sh) {
  const char *member;
  json_t *value;
  json_object_foreach((json_t *)obj, member, value) {
    if (strcmp(member, "id") && strcmp(member, "slots") &&
        strcmp(member, "addresses"))
      problem(p, "shard %ld: unknown member \"%s\" (id, slots, addresses)",
              id, member);
  }
  sh->id = (int)id;
  const json_t *slots = json_object_get(obj, "slots");
  if (!json_is_array(slots) || json_array_size(slots) == 0) {
    problem(p, "shard %ld: \"slots\" must be a non-empty array of [first, "
            "last] ranges", id);
  } else if (json_array_size(slots) > VLM_CLUSTER_MAX_RANGES) {
    problem(p, "shard %ld: %zu slot ranges (at most %d)", id,
            json_array_size(slots), VLM_CLUSTER_MAX_RANGES);
  } else {
    for (size_t r = 0; r < json_array_size(slots); r++) {
      const json_t *rg = json_array_get(slots, r);
      long a, b;
      if (!json_is_array(rg) || json_array_size(rg) != 2 ||
          get_int(json_array_get(rg, 0), LONG_MIN, LONG_MAX, &a) ||
          get_int(json_array_get(rg, 1), LONG_MIN, LONG_MAX, &b)) {
        problem(p, "shard %ld: slots[%zu] is not a [first, last] pair of "
                "integers", id, r);
        continue;
      }
      if (a < 0 || b >= VLM_SLOTS || a > b) {
        problem(p, "shard %ld: range [%ld, %ld] is not within 0..%d with "
                "first <= last", id, a, b, VLM_SLOTS - 1);
        continue;
      }
      sh->ranges[sh->nranges].first = (int)a;
      sh->ranges[sh->nranges].last = (int)b;
      sh->nranges++;
    }
  }
  const json_t *addrs = json_object_get(obj, "addresses");
  if (addrs) {
    if (!json_is_array(addrs) ||
        json_array_size(addrs) > VLM_CLUSTER_MAX_ADDRESSES) {
      problem(p, "shard %ld: \"addresses\" must be an array of at most %d "
              "\"host:port\" strings", id, VLM_CLUSTER_MAX_ADDRESSES);
      return 0;
    }
    size_t n = json_array_size(addrs);
    sh->addresses = calloc(n ? n : 1, sizeof *sh->addresses);
    if (!sh->addresses)
      return -1;
    for (size_t a = 0; a < n; a++) {
      const json_t *v = json_array_get(addrs, a);
      const char *s = json_string_value(v);
      const char *colon = s ? strrchr(s, ':') : NULL;
      char *end;
      long port = colon ? strtol(colon + 1, &end, 10) : 0;
      if (!s || json_string_length(v) != strlen(s) || !colon || colon == s ||
          !colon[1] || *end || port < 1 || port > 65535 ||
          strlen(s) > VLM_CLUSTER_ADDRESS_MAX) {
        problem(p, "shard %ld: addresses[%zu] is not \"host:port\"", id, a);
        continue;
      }
      if (!(sh->addresses[sh->naddresses] = strdup(s)))
        return -1;
      sh->naddresses++;
    }
  }
  return 0;
}

/* Sort and merge a shard's ranges; overlaps within the shard reported. */
static void normalize_ranges(problems *p, vlm_cluster_shard *sh) {
  qsort(sh->ranges, (size_t)sh->nranges, sizeof sh->ranges[0], range_cmp);
  int n = 0;
  for (int r = 0; r < sh->nranges; r++) {
    if (n && sh->ranges[r].first <= sh->ranges[n - 1].last) {
      problem(p, "shard %d: ranges [%d, %d] and [%d, %d] overlap", sh->id,
              sh->ranges[n - 1].first, sh->ranges[n - 1].last,
              sh->ranges[r].first, sh->ranges[r].last);
      if (sh->ranges[r].last > sh->ranges[n - 1].last)
        sh->ranges[n - 1].last = sh->ranges[r].last;
    } else if (n && sh->ranges[r].first == sh->ranges[n - 1].last + 1) {
      sh->ranges[n - 1].last = sh->ranges[r].last; /* adjacent: one range */
    } else {
      sh->ranges[n++] = sh->ranges[r];
    }
  }
  sh->nranges = n;
}

static const vlm_slot_range *range_holding(const vlm_cluster_shard *sh,
                                           int slot) {
  for (int r = 0; r < sh->nranges; r++)
    if (sh->ranges[r].first <= slot && slot <= sh->ranges[r].last)
      return &sh->ranges[r];
  return NULL;
}

int vlm_cluster_parse(const char *text, size_t len, const char *name,
                      vlm_cluster_problem_fn fn, void *arg,
                      vlm_cluster **out) {
  problems p = {.name = name ? name : "cluster map", .fn = fn, .arg = arg};
  vlm_cluster *c = NULL;
  json_error_t jerr;
  int rc = 0;
  *out = NULL;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    problem(&p, "line %d: not valid JSON: %s", jerr.line, jerr.text);
    goto done;
  }
  const json_t *shards = json_object_get(root, "shards");
  if (!json_is_object(root) || !json_is_array(shards) ||
      json_array_size(shards) == 0) {
    problem(&p, "not an object with a non-empty \"shards\" array");
    goto done;
  }
  const char *member;
  json_t *value;
  json_object_foreach(root, member, value) {
    if (strcmp(member, "shards"))
      problem(&p, "unknown member \"%s\" (shards)", member);
  }
  size_t n = json_array_size(shards);
  if (n > VLM_CLUSTER_MAX_SHARDS) {
    problem(&p, "%zu shards (at most %d)", n, VLM_CLUSTER_MAX_SHARDS);
    goto done;
  }
  if (!(c = calloc(1, sizeof *c)) ||
      !(c->shards = calloc(n, sizeof *c->shards))) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", p.name);
    goto done;
  }
  c->nshards = (int)n;
  for (size_t i = 0; i < n; i++)
    c->shards[i].id = -1;
  for (size_t i = 0; i < n; i++) {
    const json_t *obj = json_array_get(shards, i);
    long id;
    if (!json_is_object(obj) ||
        get_int(json_object_get(obj, "id"), 0, (long)n - 1, &id)) {
      problem(&p, "shards[%zu]: needs an \"id\" in 0..%zu (ids are 0..N-1, "
              "one per shard)", i, n - 1);
      continue;
    }
    if (c->shards[id].id >= 0) {
      problem(&p, "shards[%zu]: shard id %ld given twice", i, id);
      continue;
    }
    if (parse_shard(&p, obj, id, &c->shards[id])) {
      rc = vlm_seterr(VLM_ENOMEM, "%s", p.name);
      goto done;
    }
  }
  for (size_t i = 0; i < n; i++)
    if (c->shards[i].id < 0) {
      problem(&p, "shard id %zu is missing (ids are 0..%zu)", i, n - 1);
      c->shards[i].id = (int)i;
    }
  for (int s = 0; s < c->nshards; s++)
    normalize_ranges(&p, &c->shards[s]);
  /* Every slot once: overlaps between shards name both ranges. */
  static const uint16_t none = 0xffff;
  for (int i = 0; i < VLM_SLOTS; i++)
    c->owner[i] = none;
  for (int s = 0; s < c->nshards; s++) {
    const vlm_cluster_shard *sh = &c->shards[s];
    for (int r = 0; r < sh->nranges; r++) {
      int reported = -1;
      for (int slot = sh->ranges[r].first; slot <= sh->ranges[r].last;
           slot++) {
        if (c->owner[slot] == none) {
          c->owner[slot] = (uint16_t)s;
          continue;
        }
        int other = c->owner[slot];
        if (other == reported)
          continue;
        reported = other;
        const vlm_slot_range *o = range_holding(&c->shards[other], slot);
        problem(&p, "shard %d range [%d, %d] overlaps shard %d range [%d, "
                "%d] (from slot %d)", s, sh->ranges[r].first,
                sh->ranges[r].last, other, o ? o->first : slot,
                o ? o->last : slot, slot);
      }
    }
  }
  for (int slot = 0; slot < VLM_SLOTS; slot++) {
    if (c->owner[slot] != none)
      continue;
    int end = slot;
    while (end + 1 < VLM_SLOTS && c->owner[end + 1] == none)
      end++;
    problem(&p, "slots %d-%d belong to no shard (the ranges must cover "
            "0-%d)", slot, end, VLM_SLOTS - 1);
    slot = end;
  }
  vlm_cluster_digest(c->shards, c->nshards, c->digest);
done:
  json_decref(root);
  if (!rc && p.count)
    rc = vlm_seterr(VLM_EFORMAT, "%s%s", p.first,
                    p.count > 1 ? " (and more problems)" : "");
  if (rc) {
    vlm_cluster_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

int vlm_cluster_load(const char *path, vlm_cluster_problem_fn fn, void *arg,
                     vlm_cluster **out) {
  uint8_t *data;
  size_t len;
  *out = NULL;
  int rc = vlm_read_file(path, (size_t)64 << 20, &data, &len);
  if (rc)
    return rc;
  rc = vlm_cluster_parse((const char *)data, len, path, fn, arg, out);
  free(data);
  return rc;
}

int vlm_cluster_shard_of(const vlm_cluster *cluster, const char *key,
                         size_t len) {
  return cluster->owner[vlm_key_slot(key, len)];
}

/* ------------------------------------------------------- shard index */

int vlm_shard_index(const char *text, int nshards, int *out) {
  static const char *const vars[] = {"SLURM_ARRAY_TASK_ID",
                                     "JOB_COMPLETION_INDEX", "VLMDB_SHARD"};
  const char *from = NULL, *value = text;
  if (!text)
    return vlm_seterr(VLM_EINVAL, "no shard index given");
  if (!strcmp(text, "auto")) {
    value = NULL;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0] && !value; i++)
      if ((value = getenv(vars[i])) && *value)
        from = vars[i];
      else
        value = NULL;
    if (!value)
      return vlm_seterr(VLM_EINVAL, "--shard auto: none of "
                        "SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX and "
                        "VLMDB_SHARD is set");
  }
  char *end;
  errno = 0;
  long v = strtol(value, &end, 10);
  if (*value < '0' || *value > '9' || *end || errno || v < 0 ||
      v >= nshards) {
    if (from)
      return vlm_seterr(VLM_EINVAL, "--shard auto: %s is '%.40s', not a "
                        "shard index in 0..%d", from, value, nshards - 1);
    return vlm_seterr(VLM_EINVAL, "--shard '%.40s' is not a shard index in "
                      "0..%d (or auto)", value, nshards - 1);
  }
  *out = (int)v;
  return 0;
}

/* ------------------------------------------------------- live moves */

void vlm_cluster_move_mark(const char *digest, char out[17]) {
  char buf[64];
  int n = snprintf(buf, sizeof buf, "vlmdb-live-move %s", digest);
  snprintf(out, 17, "%016llx",
           (unsigned long long)XXH3_64bits(buf, (size_t)n));
}

/* The digest of map's assignment with every slot set in extra given to
 * shard; -1 when a shard would then hold too many ranges. */
static int digest_with(const vlm_cluster *map, int shard,
                       const unsigned char *extra, char out[17]) {
  vlm_cluster_shard *sh = calloc((size_t)map->nshards, sizeof *sh);
  int rc = 0;
  if (!sh)
    return -1;
  for (int s = 0; s < map->nshards; s++)
    sh[s].id = s;
  for (int slot = 0; slot < VLM_SLOTS && rc == 0; slot++) {
    vlm_cluster_shard *o = &sh[extra[slot] ? shard : map->owner[slot]];
    if (o->nranges && o->ranges[o->nranges - 1].last == slot - 1)
      o->ranges[o->nranges - 1].last = slot;
    else if (o->nranges == VLM_CLUSTER_MAX_RANGES)
      rc = -1;
    else
      o->ranges[o->nranges++] = (vlm_slot_range){slot, slot};
  }
  if (rc == 0)
    vlm_cluster_digest(sh, map->nshards, out);
  free(sh);
  return rc;
}

int vlm_cluster_held_ok(const vlm_cluster *map, int shard,
                        const vlm_slot_range *held, int nheld,
                        const char *held_digest) {
  static _Thread_local unsigned char extra[VLM_SLOTS];
  int nextra = 0;
  memset(extra, 0, sizeof extra);
  for (int r = 0; r < nheld; r++)
    for (int s = held[r].first; s <= held[r].last; s++)
      if (map->owner[s] != shard) {
        extra[s] = 1;
        nextra++;
      }
  int held_slots = 0, given = 0;
  for (int r = 0; r < nheld; r++)
    held_slots += held[r].last - held[r].first + 1;
  for (int s = 0; s < VLM_SLOTS; s++)
    given += map->owner[s] == shard;
  if (held_slots - nextra != given)
    return -1; /* a slot the map gives is not held */
  if (nextra == 0)
    return 0;
  char mark[17], with[17];
  vlm_cluster_move_mark(map->digest, mark);
  if (held_digest && !strcmp(held_digest, mark))
    return 1; /* the source, the map switched, the range not yet deleted */
  if (held_digest && digest_with(map, shard, extra, with) == 0) {
    vlm_cluster_move_mark(with, mark);
    if (!strcmp(held_digest, mark))
      return 1; /* the destination, widened, the map not yet switched */
  }
  return -1;
}
