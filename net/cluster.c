/* cluster.c - serving one shard of a cluster map as a Redis Cluster node.
 *
 * A node serves shard I of a cluster map (common/vlm_slot.h): the
 * client-facing part of the Redis Cluster protocol (CLUSTER SLOTS, SHARDS,
 * NODES, MYID, INFO, KEYSLOT, -MOVED redirections, INFO's cluster
 * section), so cluster clients route keyed commands themselves, and the
 * fan-out that coordinated commands (SEARCH, COUNT, INFO keyspace) use to
 * ask every other shard.  There is no gossip: the map is the truth, and
 * every node is given the same one.
 *
 * Node ids are 40 hex digits derived from the shard's address alone,
 * XXH3-128 of "vlmdb-node " + address followed by the first 8 hex digits
 * of XXH3-64 (seed 1) of the same bytes, so every node computes the same id
 * for a shard and a restart keeps it.
 *
 * Fan-out runs on the loop thread with hiredis's libuv adapter: one
 * persistent connection per other shard (opened on first use, reopened
 * after an error), requests pipelined on it, a timer per fan-out.  A shard
 * that does not answer in time has its connection dropped, which fails
 * every request waiting on it; the next fan-out reconnects.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libuv.h>
#include <xxhash.h>

#include "netint.h"
#include "vlm_error.h"

#define DEFAULT_TIMEOUT_MS 2000

typedef struct {
  vlm_server *srv;
  int shard;
  char addr[VLM_CLUSTER_ADDRESS_MAX + 1];
  char host[VLM_CLUSTER_ADDRESS_MAX + 1];
  int port;
  char id[41];
  redisAsyncContext *ac;  /* NULL: not connected */
  /* The shard's read replicas: its map entry's later addresses (listed
   * after it in CLUSTER SLOTS, SHARDS and NODES; never asked by fan-out) */
  int nreplicas;
  struct {
    char host[VLM_CLUSTER_ADDRESS_MAX + 1];
    int port;
    char id[41];
  } replicas[VLM_CLUSTER_MAX_ADDRESSES - 1];
} shard_node;

typedef struct fanout fanout;

typedef struct {
  fanout *f;
  int shard;
} fanout_slot;

struct fanout {
  vlm_server *srv;
  vlm__job *job;
  vlm__fanout_done done;
  int nshards;
  int target;       /* the one shard asked, or -1: every other shard */
  int pending;      /* callbacks hiredis still owes (plus holds) */
  int unanswered;   /* shards with neither reply nor error */
  int finished;     /* done has run */
  uv_timer_t timer;
  redisReply **replies;
  char **errors;
  fanout_slot *slots;
  fanout *prev, *next; /* in flight */
};

struct vlm__cluster_state {
  const vlm_cluster *map;
  vlm_cluster *owned;     /* the map CLUSTER RELOAD read (else borrowed) */
  char *path;             /* the map's file, for CLUSTER RELOAD */
  int shard;
  int timeout_ms;
  shard_node *nodes;      /* one per shard */
  fanout *inflight;
  int stopping;
  /* The slots the database holds (its manifest), which may be more than
   * the map gives while a live move is under way: the items of the others
   * are hidden from searches. */
  int nheld;
  vlm_slot_range held[VLM_CLUSTER_MAX_RANGES];
  char held_digest[17];
  /* What every coordinated request would otherwise work out again from
   * 16,384 slots: the map's owners text (vlm__cluster_owners) and whether
   * any held slot is hidden under the map, as of generation gen (bumped
   * when the map or the held slots change; 0: not worked out). */
  unsigned gen, owners_gen, hidden_gen;
  char *owners_text;
  int any_hidden;
  /* Live move fence: writes to fence_first..fence_last answer -TRYAGAIN;
   * fence_old counts the writes started before it that have not finished
   * (fence_seq: the last write number started before it). */
  int fenced, fence_first, fence_last;
  uint64_t fence_seq, fence_token, fence_count;
  long fence_old;
};

/* ======================================================================
 * Addresses and ids
 * ==================================================================== */

int vlm__split_address(const char *addr, char *host, size_t cap,
                       int *port) {
  const char *colon = strrchr(addr, ':');
  if (!colon || colon == addr)
    return -1;
  const char *h = addr, *hend = colon;
  if (*h == '[') {
    if (hend[-1] != ']')
      return -1;
    h++;
    hend--;
  }
  size_t n = (size_t)(hend - h);
  if (n == 0 || n >= cap)
    return -1;
  memcpy(host, h, n);
  host[n] = '\0';
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (*end || end == colon + 1 || p < 1 || p > 65535)
    return -1;
  *port = (int)p;
  return 0;
}

static void node_id(const char *addr, char out[41]) {
  char buf[VLM_CLUSTER_ADDRESS_MAX + 16];
  int n = snprintf(buf, sizeof buf, "vlmdb-node %s", addr);
  XXH128_hash_t h = XXH3_128bits(buf, (size_t)n);
  XXH64_hash_t t = XXH3_64bits_withSeed(buf, (size_t)n, 1);
  snprintf(out, 41, "%016llx%016llx%08llx", (unsigned long long)h.high64,
           (unsigned long long)h.low64, (unsigned long long)(t >> 32));
}

/* A shard's addresses after the first are its replicas; one that is not
 * host:port is left out (the map loader checks only its length). */
static void set_replicas(shard_node *n, const vlm_cluster_shard *sh) {
  n->nreplicas = 0;
  for (int a = 1; a < sh->naddresses && a < VLM_CLUSTER_MAX_ADDRESSES; a++) {
    int r = n->nreplicas;
    if (vlm__split_address(sh->addresses[a], n->replicas[r].host,
                      sizeof n->replicas[r].host, &n->replicas[r].port) < 0)
      continue;
    node_id(sh->addresses[a], n->replicas[r].id);
    n->nreplicas++;
  }
}

/* Read the slots the database holds into the cluster state. */
static int refresh_held(vlm_server *srv) {
  vlm__cluster_state *cs = srv->cluster;
  vlm_db_info info;
  int rc = vlm_db_stat(srv->db, &info);
  if (rc < 0)
    return rc;
  cs->nheld = info.shard >= 0 ? info.nslot_ranges : 0;
  cs->gen++;
  memcpy(cs->held, info.slot_ranges, (size_t)cs->nheld * sizeof cs->held[0]);
  snprintf(cs->held_digest, sizeof cs->held_digest, "%s",
           info.cluster_digest);
  return 0;
}

int vlm__cluster_init(vlm_server *srv, const vlm_cluster *map,
                      const char *path, int shard, int timeout_ms) {
  if (shard < 0 || shard >= map->nshards)
    return vlm_seterr(VLM_EINVAL, "shard %d is not in the cluster map (0..%d)",
                      shard, map->nshards - 1);
  vlm__cluster_state *cs = calloc(1, sizeof *cs);
  if (!cs || !(cs->nodes = calloc((size_t)map->nshards, sizeof *cs->nodes))) {
    free(cs);
    return vlm_seterr(VLM_ENOMEM, "cluster");
  }
  cs->map = map;
  cs->gen = 1;
  if (path && !(cs->path = strdup(path))) {
    free(cs->nodes);
    free(cs);
    return vlm_seterr(VLM_ENOMEM, "cluster");
  }
  cs->shard = shard;
  cs->timeout_ms = timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS;
  for (int s = 0; s < map->nshards; s++) {
    shard_node *n = &cs->nodes[s];
    n->srv = srv;
    n->shard = s;
    if (map->shards[s].naddresses < 1) {
      free(cs->path);
      free(cs->nodes);
      free(cs);
      return vlm_seterr(VLM_EINVAL, "cluster map: shard %d has no address "
                        "(\"addresses\": [\"host:port\"]); a served cluster "
                        "needs one for every shard", s);
    }
    snprintf(n->addr, sizeof n->addr, "%s", map->shards[s].addresses[0]);
    if (vlm__split_address(n->addr, n->host, sizeof n->host, &n->port) < 0) {
      vlm_seterr(VLM_EINVAL, "cluster map: shard %d's address '%s' is not "
                 "host:port", s, n->addr);
      free(cs->path);
      free(cs->nodes);
      free(cs);
      return VLM_EINVAL;
    }
    node_id(n->addr, n->id);
    set_replicas(n, &map->shards[s]);
  }
  srv->cluster = cs;
  cs->fence_token = vlm__now_ns() ^ ((uint64_t)getpid() << 40);
  int rc = refresh_held(srv);
  if (rc < 0) {
    vlm__cluster_free(srv);
    return rc;
  }
  return 0;
}

int vlm__cluster_nshards(const vlm_server *srv) {
  return srv->cluster ? srv->cluster->map->nshards : 1;
}

int vlm__cluster_myshard(const vlm_server *srv) {
  return srv->cluster ? srv->cluster->shard : 0;
}

int vlm__cluster_owns(const vlm_server *srv, int slot) {
  const vlm__cluster_state *cs = srv->cluster;
  return !cs || cs->map->owner[slot] == cs->shard;
}

void vlm__cluster_reply_moved(vlm__buf *out, const vlm_server *srv, int slot) {
  const vlm__cluster_state *cs = srv->cluster;
  const shard_node *n = &cs->nodes[cs->map->owner[slot]];
  if (strchr(n->host, ':'))
    vlm__reply_error(out, "MOVED", "%d [%s]:%d", slot, n->host, n->port);
  else
    vlm__reply_error(out, "MOVED", "%d %s:%d", slot, n->host, n->port);
}

/* ======================================================================
 * CLUSTER subcommands and INFO
 * ==================================================================== */

static int arg_is(const vlm__resp_arg *a, const char *word) {
  size_t n = strlen(word);
  return a->len == n && strncasecmp(a->ptr, word, n) == 0;
}

static void reply_addr(vlm__buf *out, const char *host, int port,
                       const char *id) {
  vlm__reply_array(out, 4);
  vlm__reply_cstr(out, host);
  vlm__reply_int(out, port);
  vlm__reply_cstr(out, id);
  vlm__reply_array(out, 0); /* Redis 7: hostname and other metadata */
}

/* The primary, then its replicas (Redis's order in CLUSTER SLOTS). */
static void reply_node(vlm__buf *out, const shard_node *n) {
  reply_addr(out, n->host, n->port, n->id);
  for (int r = 0; r < n->nreplicas; r++)
    reply_addr(out, n->replicas[r].host, n->replicas[r].port,
               n->replicas[r].id);
}

static void cluster_slots(vlm__buf *out, const vlm__cluster_state *cs) {
  const vlm_cluster *map = cs->map;
  long n = 0;
  for (int s = 0; s < map->nshards; s++)
    n += map->shards[s].nranges;
  vlm__reply_array(out, n);
  for (int s = 0; s < map->nshards; s++)
    for (int r = 0; r < map->shards[s].nranges; r++) {
      vlm__reply_array(out, 3 + cs->nodes[s].nreplicas);
      vlm__reply_int(out, map->shards[s].ranges[r].first);
      vlm__reply_int(out, map->shards[s].ranges[r].last);
      reply_node(out, &cs->nodes[s]);
    }
}

static void cluster_shards(vlm__buf *out, const vlm__cluster_state *cs) {
  const vlm_cluster *map = cs->map;
  vlm__reply_array(out, map->nshards);
  for (int s = 0; s < map->nshards; s++) {
    const vlm_cluster_shard *sh = &map->shards[s];
    const shard_node *n = &cs->nodes[s];
    vlm__reply_map(out, 2);
    vlm__reply_cstr(out, "slots");
    vlm__reply_array(out, 2L * sh->nranges);
    for (int r = 0; r < sh->nranges; r++) {
      vlm__reply_int(out, sh->ranges[r].first);
      vlm__reply_int(out, sh->ranges[r].last);
    }
    vlm__reply_cstr(out, "nodes");
    vlm__reply_array(out, 1 + n->nreplicas);
    for (int r = -1; r < n->nreplicas; r++) {
      const char *id = r < 0 ? n->id : n->replicas[r].id;
      const char *host = r < 0 ? n->host : n->replicas[r].host;
      vlm__reply_map(out, 7);
      vlm__reply_cstr(out, "id");
      vlm__reply_cstr(out, id);
      vlm__reply_cstr(out, "port");
      vlm__reply_int(out, r < 0 ? n->port : n->replicas[r].port);
      vlm__reply_cstr(out, "ip");
      vlm__reply_cstr(out, host);
      vlm__reply_cstr(out, "endpoint");
      vlm__reply_cstr(out, host);
      vlm__reply_cstr(out, "role");
      vlm__reply_cstr(out, r < 0 ? "master" : "replica");
      vlm__reply_cstr(out, "replication-offset");
      vlm__reply_int(out, 0);
      vlm__reply_cstr(out, "health");
      vlm__reply_cstr(out, "online");
    }
  }
}

/* Which of its shard's addresses this node is: -1 the primary (the first),
 * else the replica's index.  The map names nodes by address and a node
 * knows the port it listens on: an address of the shard with that port is
 * this node when it is the only one, or when its host is the bound one
 * (several nodes of a shard on one port means several hosts).  Nothing
 * matching: the primary, as before replicas were listed. */
static int self_replica(const vlm__cluster_state *cs) {
  const shard_node *n = &cs->nodes[cs->shard];
  const vlm_server *srv = n->srv;
  int same_port = 0, only = -1, by_host = -2;
  for (int r = -1; r < n->nreplicas; r++) {
    const char *host = r < 0 ? n->host : n->replicas[r].host;
    if ((r < 0 ? n->port : n->replicas[r].port) != srv->port)
      continue;
    same_port++;
    only = r;
    if (by_host == -2 && !strcmp(host, srv->bind))
      by_host = r;
  }
  if (same_port == 1)
    return only;
  return by_host != -2 ? by_host : -1;
}

static const char *self_id(const vlm__cluster_state *cs) {
  int r = self_replica(cs);
  const shard_node *n = &cs->nodes[cs->shard];
  return r < 0 ? n->id : n->replicas[r].id;
}

static void cluster_nodes(vlm__buf *out, const vlm__cluster_state *cs) {
  const vlm_cluster *map = cs->map;
  vlm__buf b;
  vlm__buf_init(&b, 0);
  int me = self_replica(cs);
  for (int s = 0; s < map->nshards; s++) {
    const shard_node *n = &cs->nodes[s];
    char ranges[4096];
    vlm__buf_printf(&b, "%s %s%s%s:%d@0 %s - 0 0 1 connected", n->id,
                    strchr(n->host, ':') ? "[" : "", n->host,
                    strchr(n->host, ':') ? "]" : "", n->port,
                    s == cs->shard && me < 0 ? "myself,master" : "master");
    for (int r = 0; r < map->shards[s].nranges; r++) {
      const vlm_slot_range *sr = &map->shards[s].ranges[r];
      if (sr->first == sr->last)
        snprintf(ranges, sizeof ranges, " %d", sr->first);
      else
        snprintf(ranges, sizeof ranges, " %d-%d", sr->first, sr->last);
      vlm__buf_printf(&b, "%s", ranges);
    }
    vlm__buf_printf(&b, "\n");
    for (int r = 0; r < n->nreplicas; r++) {
      const char *h = n->replicas[r].host;
      vlm__buf_printf(&b, "%s %s%s%s:%d@0 %s %s 0 0 1 connected\n",
                      n->replicas[r].id, strchr(h, ':') ? "[" : "", h,
                      strchr(h, ':') ? "]" : "", n->replicas[r].port,
                      s == cs->shard && me == r ? "myself,slave" : "slave",
                      n->id);
    }
  }
  if (b.oom)
    vlm__reply_error(out, "ERR", "out of memory");
  else
    vlm__reply_bulk(out, b.data, b.len);
  vlm__buf_free(&b);
}

static void cluster_info_text(vlm__buf *b, const vlm__cluster_state *cs) {
  int n = cs->map->nshards;
  vlm__buf_printf(b, "cluster_state:ok\r\ncluster_slots_assigned:%d\r\n"
                  "cluster_slots_ok:%d\r\ncluster_slots_pfail:0\r\n"
                  "cluster_slots_fail:0\r\ncluster_known_nodes:%d\r\n"
                  "cluster_size:%d\r\ncluster_current_epoch:1\r\n"
                  "cluster_my_epoch:1\r\ncluster_stats_messages_sent:0\r\n"
                  "cluster_stats_messages_received:0\r\n"
                  "total_cluster_links_buffer_limit_exceeded:0\r\n"
                  "cluster_map_digest:%s\r\ncluster_shard:%d\r\n",
                  VLM_SLOTS, VLM_SLOTS, n, n, cs->map->digest, cs->shard);
}

void vlm__cluster_info(vlm_server *srv, vlm__buf *b) {
  vlm__cluster_state *cs = srv->cluster;
  if (!cs) {
    vlm__buf_printf(b, "# Cluster\r\ncluster_enabled:0\r\n\r\n");
    return;
  }
  vlm__buf_printf(b, "# Cluster\r\ncluster_enabled:1\r\ncluster_shard:%d\r\n"
                  "cluster_shards:%d\r\ncluster_map_digest:%s\r\n"
                  "cluster_timeout_ms:%d\r\n\r\n", cs->shard,
                  cs->map->nshards, cs->map->digest, cs->timeout_ms);
}

/* Drop a node's connection now (defined with the connections below). */
static void node_drop(shard_node *n);

/* CLUSTER RELOAD: read the map's file again.  Addresses may change (a
 * shard served from another host), and so may the slot assignment, once
 * `vlmdb cluster move` has moved the slots' items: the new map must give
 * this node's shard exactly the slots its database holds (a node whose
 * shard gained or lost slots is restarted on the moved database; the
 * others reload).  So a node never answers for slots its database does
 * not hold, and no coordinated search counts an item twice.  A shard
 * whose address changed is reconnected (requests waiting on its old
 * address fail). */
static int cluster_reload(vlm__ctx *ctx) {
  vlm__cluster_state *cs = ctx->srv->cluster;
  vlm__buf *out = ctx->out;
  vlm_cluster *m = NULL;
  if (!cs->path) {
    vlm__reply_error(out, "ERR", "CLUSTER RELOAD: the map was not read from "
                     "a file");
    return -1;
  }
  if (vlm_cluster_load(cs->path, NULL, NULL, &m) < 0) {
    vlm__reply_error(out, "ERR", "CLUSTER RELOAD: %s (the served map is "
                     "unchanged)", vlm_errmsg());
    return -1;
  }
  if (m->nshards != cs->map->nshards) {
    vlm__reply_error(out, "ERR", "CLUSTER RELOAD: %s has %d shards, the "
                     "served map %d; the served map is unchanged", cs->path,
                     m->nshards, cs->map->nshards);
    vlm_cluster_free(m);
    return -1;
  }
  if (strcmp(m->digest, cs->map->digest)) {
    vlm_db_info info;
    const vlm_cluster_shard *mine = &m->shards[cs->shard];
    int rc = vlm_db_stat(ctx->srv->db, &info);
    /* exactly the map's slots, or more while a live move is under way
     * (vlm_cluster_held_ok: the database's marked digest says so) */
    if (rc == 0 && info.shard >= 0 &&
        vlm_cluster_held_ok(m, cs->shard, info.slot_ranges,
                            info.nslot_ranges, info.cluster_digest) < 0) {
      char held[256], given[256];
      vlm_slot_ranges_format(info.slot_ranges, info.nslot_ranges, held,
                             sizeof held);
      vlm_slot_ranges_format(mine->ranges, mine->nranges, given,
                             sizeof given);
      vlm__reply_error(out, "ERR", "CLUSTER RELOAD: %s assigns the slots "
                       "differently and gives shard %d slots %s, but its "
                       "database holds %s: move the items first "
                       "(vlmdb cluster move) and restart this node on them; "
                       "the served map is unchanged", cs->path, cs->shard,
                       given, held);
      vlm_cluster_free(m);
      return -1;
    }
    if (rc) {
      vlm__reply_error(out, "ERR", "CLUSTER RELOAD: %s; the served map is "
                       "unchanged", vlm_errmsg());
      vlm_cluster_free(m);
      return -1;
    }
    vlm__server_log(ctx->srv, "cluster: %s assigns the slots anew (digest "
                    "%s, was %s)", cs->path, m->digest, cs->map->digest);
  }
  shard_node *fresh = calloc((size_t)m->nshards, sizeof *fresh);
  if (!fresh) {
    vlm_cluster_free(m);
    vlm__reply_error(out, "ERR", "out of memory");
    return -1;
  }
  for (int s = 0; s < m->nshards; s++) {
    shard_node *n = &fresh[s];
    if (m->shards[s].naddresses < 1 ||
        vlm__split_address(m->shards[s].addresses[0], n->host, sizeof n->host,
                      &n->port) < 0) {
      vlm__reply_error(out, "ERR", "CLUSTER RELOAD: %s: shard %d needs an "
                       "address \"host:port\"; the served map is "
                       "unchanged", cs->path, s);
      free(fresh);
      vlm_cluster_free(m);
      return -1;
    }
    snprintf(n->addr, sizeof n->addr, "%s", m->shards[s].addresses[0]);
  }
  int changed = 0;
  for (int s = 0; s < m->nshards; s++)
    set_replicas(&cs->nodes[s], &m->shards[s]);
  for (int s = 0; s < m->nshards; s++) {
    shard_node *n = &cs->nodes[s];
    if (!strcmp(n->addr, fresh[s].addr))
      continue;
    vlm__server_log(ctx->srv, "cluster: shard %d moved from %s to %s", s,
                    n->addr, fresh[s].addr);
    node_drop(n);
    memcpy(n->addr, fresh[s].addr, sizeof n->addr);
    memcpy(n->host, fresh[s].host, sizeof n->host);
    n->port = fresh[s].port;
    node_id(n->addr, n->id);
    changed++;
  }
  free(fresh);
  vlm_cluster_free(cs->owned);
  cs->owned = m;
  cs->map = m;
  cs->gen++;
  /* a fenced range the map now gives another shard: its writes go there
   * (-MOVED), the fence is done */
  if (cs->fenced && m->owner[cs->fence_first] != cs->shard) {
    vlm__server_log(ctx->srv, "cluster: slots %d-%d now served by shard %d; "
                    "fence lifted", cs->fence_first, cs->fence_last,
                    m->owner[cs->fence_first]);
    cs->fenced = 0;
  }
  refresh_held(ctx->srv);
  vlm__reply_int(out, changed);
  return 0;
}

int vlm__cluster_command(vlm__ctx *ctx) {
  vlm__cluster_state *cs = ctx->srv->cluster;
  vlm__buf *out = ctx->out;
  const vlm__resp_arg *sub = &ctx->argv[1];
  if (arg_is(sub, "KEYSLOT")) {
    /* answered with or without cluster mode: the hash is the same */
    if (ctx->argc != 3)
      goto arity;
    vlm__reply_int(out, vlm_key_slot(ctx->argv[2].ptr, ctx->argv[2].len));
    return 0;
  }
  if (arg_is(sub, "HELP") && ctx->argc == 2) {
    static const char *help[] = {
        "CLUSTER <subcommand> [<arg> ...]. Subcommands are:",
        "SLOTS", "SHARDS", "NODES", "MYID", "INFO", "KEYSLOT <key>",
        "RELOAD: read the cluster map's file again (addresses, and slots "
        "moved with vlmdb cluster move)",
        "HELP"};
    vlm__reply_array(out, sizeof help / sizeof help[0]);
    for (size_t i = 0; i < sizeof help / sizeof help[0]; i++)
      vlm__reply_status(out, help[i]);
    return 0;
  }
  if (!cs) {
    vlm__reply_error(out, "ERR", "This instance has cluster support "
                     "disabled (serve it with --cluster cluster.json)");
    return -1;
  }
  if (ctx->argc != 2)
    goto arity;
  if (arg_is(sub, "SLOTS")) {
    cluster_slots(out, cs);
  } else if (arg_is(sub, "SHARDS")) {
    cluster_shards(out, cs);
  } else if (arg_is(sub, "NODES")) {
    cluster_nodes(out, cs);
  } else if (arg_is(sub, "RELOAD")) {
    return cluster_reload(ctx);
  } else if (arg_is(sub, "MYID")) {
    vlm__reply_cstr(out, self_id(cs));
  } else if (arg_is(sub, "INFO")) {
    vlm__buf b;
    vlm__buf_init(&b, 0);
    cluster_info_text(&b, cs);
    if (b.oom)
      vlm__reply_error(out, "ERR", "out of memory");
    else
      vlm__reply_bulk(out, b.data, b.len);
    vlm__buf_free(&b);
  } else {
    goto unknown;
  }
  return 0;
arity:
  if (!arg_is(sub, "KEYSLOT") && !arg_is(sub, "SLOTS") &&
      !arg_is(sub, "SHARDS") && !arg_is(sub, "NODES") &&
      !arg_is(sub, "MYID") && !arg_is(sub, "INFO") && !arg_is(sub, "RELOAD"))
    goto unknown;
  vlm__reply_error(out, "ERR", "wrong number of arguments for 'cluster|%.*s'"
                   " command", (int)(sub->len < 32 ? sub->len : 32),
                   sub->ptr);
  return -1;
unknown:
  vlm__reply_error(out, "ERR", "unknown subcommand '%.*s'. Try CLUSTER HELP.",
                   (int)(sub->len < 64 ? sub->len : 64), sub->ptr);
  return -1;
}

/* ======================================================================
 * Replies: copies the fan-out keeps after hiredis frees its own
 * ==================================================================== */

static void reply_free(redisReply *r) {
  if (!r)
    return;
  for (size_t i = 0; i < r->elements; i++)
    reply_free(r->element[i]);
  free(r->element);
  free(r->str);
  free(r);
}

void vlm__cluster_reply_free(redisReply *r) { reply_free(r); }

static redisReply *reply_copy(const redisReply *r) {
  redisReply *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->type = r->type;
  c->integer = r->integer;
  if (r->str) {
    if (!(c->str = malloc(r->len + 1)))
      goto fail;
    memcpy(c->str, r->str, r->len);
    c->str[r->len] = '\0';
    c->len = r->len;
  }
  if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
    if (!(c->element = calloc(r->elements, sizeof *c->element)))
      goto fail;
    c->elements = r->elements;
    for (size_t i = 0; i < r->elements; i++)
      if (!(c->element[i] = reply_copy(r->element[i])))
        goto fail;
  }
  return c;
fail:
  reply_free(c);
  return NULL;
}

redisReply *vlm__cluster_parse_reply(const char *data, size_t len) {
  redisReader *rd = redisReaderCreate();
  void *r = NULL;
  redisReply *out = NULL;
  if (!rd)
    return NULL;
  rd->maxbuf = 0;
  if (redisReaderFeed(rd, data, len) == REDIS_OK &&
      redisReaderGetReply(rd, &r) == REDIS_OK && r) {
    out = reply_copy(r);
    freeReplyObject(r);
  }
  redisReaderFree(rd);
  return out;
}

/* ======================================================================
 * Connections to the other shards
 * ==================================================================== */

static void on_connect(const redisAsyncContext *ac, int status) {
  shard_node *n = ac->data;
  if (status != REDIS_OK && n && n->ac == ac) {
    vlm__server_log(n->srv, "cluster: cannot connect to shard %d at %s: %s",
                    n->shard, n->addr, ac->errstr);
    n->ac = NULL; /* hiredis frees it after this call */
  }
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  shard_node *n = ac->data;
  (void)status;
  if (n && n->ac == ac)
    n->ac = NULL;
}

/* hiredis 0.14's libuv adapter ignores a poll error status, and libuv
 * reports a socket error (a refused connect, a reset) only that way, after
 * stopping the poll: the request would then wait for its timeout though
 * the shard is known to be down.  So the adapter's handle and cleanup are
 * kept, but its poll callback is this one, which lets hiredis find the
 * error itself (a connect's SO_ERROR, a read's errno) and fail at once. */
static void poll_cb(uv_poll_t *handle, int status, int events) {
  redisLibuvEvents *p = handle->data;
  if (status != 0) {
    if (p->context && !(p->context->c.flags & REDIS_CONNECTED))
      redisAsyncHandleWrite(p->context); /* completes the connect: error */
    else if (p->context)
      redisAsyncHandleRead(p->context);
    return;
  }
  if (p->context && (events & UV_READABLE))
    redisAsyncHandleRead(p->context);
  if (p->context && (events & UV_WRITABLE))
    redisAsyncHandleWrite(p->context);
}

static void poll_update(redisLibuvEvents *p) {
  if (p->events)
    uv_poll_start(&p->handle, p->events, poll_cb);
  else
    uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d) {
  redisLibuvEvents *p = d;
  p->events |= UV_READABLE;
  poll_update(p);
}

static void ev_del_read(void *d) {
  redisLibuvEvents *p = d;
  p->events &= ~UV_READABLE;
  poll_update(p);
}

static void ev_add_write(void *d) {
  redisLibuvEvents *p = d;
  p->events |= UV_WRITABLE;
  poll_update(p);
}

static void ev_del_write(void *d) {
  redisLibuvEvents *p = d;
  p->events &= ~UV_WRITABLE;
  poll_update(p);
}

int vlm__redis_attach(vlm_server *srv, redisAsyncContext *ac) {
  if (redisLibuvAttach(ac, &srv->loop) != REDIS_OK)
    return -1;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  return 0;
}

static redisAsyncContext *node_connect(vlm_server *srv, shard_node *n) {
  if (n->ac)
    return n->ac;
  redisAsyncContext *ac = redisAsyncConnect(n->host, n->port);
  if (!ac)
    return NULL;
  if (ac->err) {
    vlm__server_log(srv, "cluster: cannot connect to shard %d at %s: %s",
                    n->shard, n->addr, ac->errstr);
    redisAsyncFree(ac);
    return NULL;
  }
  if (vlm__redis_attach(srv, ac) < 0) {
    redisAsyncFree(ac);
    return NULL;
  }
  ac->data = n;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  n->ac = ac;
  /* Every node of a cluster shares its password (as Redis Cluster's
   * masterauth); the AUTH reply is not awaited: the commands queue
   * behind it on the same connection. */
  if (srv->password)
    redisAsyncCommand(ac, NULL, NULL, "AUTH %b", srv->password,
                      srv->password_len);
  return ac;
}

/* Drop a node's connection now: every request waiting on it is called
 * back with no reply. */
static void node_drop(shard_node *n) {
  redisAsyncContext *ac = n->ac;
  if (!ac)
    return;
  n->ac = NULL;
  ac->data = NULL;
  redisAsyncFree(ac);
}

/* ======================================================================
 * Fan-out
 * ==================================================================== */

static void fanout_closed(uv_handle_t *h) {
  fanout *f = h->data;
  for (int s = 0; s < f->nshards; s++) {
    reply_free(f->replies[s]);
    free(f->errors[s]);
  }
  free(f->replies);
  free(f->errors);
  free(f->slots);
  free(f);
}

/* Free once finished and no callback is owed. */
static void fanout_release(fanout *f) {
  if (f->finished && f->pending == 0)
    uv_close((uv_handle_t *)&f->timer, fanout_closed);
}

static void fanout_finish(fanout *f) {
  if (f->finished)
    return;
  f->finished = 1;
  uv_timer_stop(&f->timer);
  vlm__cluster_state *cs = f->srv->cluster;
  if (f->prev)
    f->prev->next = f->next;
  else
    cs->inflight = f->next;
  if (f->next)
    f->next->prev = f->prev;
  f->job->reply.len = 0;
  f->done(f->job, f->replies, (const char **)f->errors);
  for (int s = 0; s < f->nshards; s++) {
    reply_free(f->replies[s]);
    f->replies[s] = NULL;
  }
  vlm__job_complete(f->job);
  f->job = NULL;
}

static void set_error(fanout *f, int s, const char *fmt, const char *arg) {
  if (f->errors[s])
    return;
  char msg[512];
  snprintf(msg, sizeof msg, fmt, arg);
  f->errors[s] = strdup(msg);
  if (!f->errors[s])
    f->errors[s] = strdup("out of memory");
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv) {
  fanout_slot *slot = priv;
  fanout *f = slot->f;
  int s = slot->shard;
  f->pending--;
  if (!f->finished && !f->replies[s] && !f->errors[s]) {
    const shard_node *n = &f->srv->cluster->nodes[s];
    if (!r) {
      char what[600];
      snprintf(what, sizeof what, "shard %d (%s) did not answer: %s", s,
               n->addr, ac && ac->errstr[0] ? ac->errstr : "connection lost");
      set_error(f, s, "%s", what);
    } else if (!(f->replies[s] = reply_copy(r))) {
      set_error(f, s, "%s", "out of memory");
    }
    if (--f->unanswered == 0)
      fanout_finish(f);
  }
  fanout_release(f);
}

static void on_timeout(uv_timer_t *t) {
  fanout *f = t->data;
  vlm__cluster_state *cs = f->srv->cluster;
  f->pending++; /* hold: dropping connections calls back into on_reply */
  for (int s = 0; s < f->nshards; s++) {
    if (s == cs->shard || (f->target >= 0 && s != f->target) ||
        f->replies[s] || f->errors[s])
      continue;
    char what[600];
    snprintf(what, sizeof what, "shard %d (%s) did not answer within %d ms",
             s, cs->nodes[s].addr, cs->timeout_ms);
    set_error(f, s, "%s", what);
    f->unanswered--;
    vlm__server_log(f->srv, "cluster: %s; reconnecting", what);
    node_drop(&cs->nodes[s]);
  }
  fanout_finish(f);
  f->pending--;
  fanout_release(f);
}

static int fanout_start(vlm__job *job, int target, int argc,
                        const char **argv, const size_t *lens,
                        vlm__fanout_done done) {
  vlm_server *srv = job->srv;
  vlm__cluster_state *cs = srv->cluster;
  int n = cs->map->nshards;
  fanout *f = calloc(1, sizeof *f);
  if (!f || !(f->replies = calloc((size_t)n, sizeof *f->replies)) ||
      !(f->errors = calloc((size_t)n, sizeof *f->errors)) ||
      !(f->slots = calloc((size_t)n, sizeof *f->slots))) {
    if (f) {
      free(f->replies);
      free(f->errors);
      free(f->slots);
      free(f);
    }
    job->reply.len = 0;
    vlm__reply_error(&job->reply, "ERR", "out of memory");
    return -1;
  }
  f->srv = srv;
  f->job = job;
  f->done = done;
  f->nshards = n;
  f->target = target;
  uv_timer_init(&srv->loop, &f->timer);
  f->timer.data = f;
  f->next = cs->inflight;
  if (cs->inflight)
    cs->inflight->prev = f;
  cs->inflight = f;
  f->pending = 1; /* hold while sending */
  for (int s = 0; s < n; s++) {
    if (s == cs->shard || (target >= 0 && s != target))
      continue;
    f->slots[s].f = f;
    f->slots[s].shard = s;
    f->unanswered++;
    redisAsyncContext *ac = cs->stopping ? NULL
                                         : node_connect(srv, &cs->nodes[s]);
    if (ac && redisAsyncCommandArgv(ac, on_reply, &f->slots[s], argc, argv,
                                    lens) == REDIS_OK) {
      f->pending++;
    } else {
      char what[600];
      snprintf(what, sizeof what, "shard %d (%s) did not answer: %s", s,
               cs->nodes[s].addr,
               cs->stopping ? "shutting down" : "cannot connect");
      set_error(f, s, "%s", what);
      f->unanswered--;
    }
  }
  if (f->unanswered == 0)
    fanout_finish(f);
  else
    uv_timer_start(&f->timer, on_timeout, (uint64_t)cs->timeout_ms, 0);
  f->pending--;
  fanout_release(f);
  return 0;
}

int vlm__cluster_fanout(vlm__job *job, int argc, const char **argv,
                        const size_t *lens, vlm__fanout_done done) {
  return fanout_start(job, -1, argc, argv, lens, done);
}

int vlm__cluster_ask(vlm__job *job, int shard, int argc, const char **argv,
                     const size_t *lens, vlm__fanout_done done) {
  return fanout_start(job, shard, argc, argv, lens, done);
}

int vlm__cluster_owner(const vlm_server *srv, int slot) {
  return srv->cluster ? srv->cluster->map->owner[slot] : 0;
}

void vlm__cluster_stop(vlm_server *srv) {
  vlm__cluster_state *cs = srv->cluster;
  if (!cs)
    return;
  cs->stopping = 1;
  for (int s = 0; s < cs->map->nshards; s++)
    node_drop(&cs->nodes[s]);
  /* Dropping fails the requests in flight; a fan-out with nothing sent
   * (all of it failed already) finished at once. */
  while (cs->inflight)
    on_timeout(&cs->inflight->timer);
}

void vlm__cluster_free(vlm_server *srv) {
  vlm__cluster_state *cs = srv->cluster;
  if (!cs)
    return;
  vlm_cluster_free(cs->owned);
  free(cs->path);
  free(cs->nodes);
  free(cs->owners_text);
  free(cs);
  srv->cluster = NULL;
}

/* ======================================================================
 * Live moves: hidden slots, the write fence, VLM.MIGRATE
 * ==================================================================== */

/* The map's owners text, "a-b:s,..." (built once per generation; NULL:
 * out of memory). */
static const char *owners_text(vlm__cluster_state *cs) {
  if (cs->owners_gen != cs->gen || !cs->owners_text) {
    vlm__buf b;
    vlm__buf_init(&b, 0);
    for (int s = 0; s < VLM_SLOTS;) {
      int e = s;
      while (e + 1 < VLM_SLOTS && cs->map->owner[e + 1] == cs->map->owner[s])
        e++;
      vlm__buf_printf(&b, "%s%d-%d:%d", s ? "," : "", s, e,
                      cs->map->owner[s]);
      s = e + 1;
    }
    vlm__buf_append(&b, "", 1);
    if (b.oom) {
      vlm__buf_free(&b);
      return NULL;
    }
    free(cs->owners_text);
    cs->owners_text = b.data; /* the buffer's own allocation */
    cs->owners_gen = cs->gen;
  }
  return cs->owners_text;
}

char *vlm__cluster_owners(const vlm_server *srv) {
  const char *t = owners_text(srv->cluster);
  return t ? strdup(t) : NULL;
}

/* Does the map hide any slot the database holds (a live move)? */
static int any_hidden(vlm__cluster_state *cs) {
  if (cs->hidden_gen != cs->gen) {
    cs->any_hidden = 0;
    for (int r = 0; r < cs->nheld && !cs->any_hidden; r++)
      for (int s = cs->held[r].first; s <= cs->held[r].last; s++)
        if (cs->map->owner[s] != cs->shard) {
          cs->any_hidden = 1;
          break;
        }
    cs->hidden_gen = cs->gen;
  }
  return cs->any_hidden;
}

/* given[slot] = 1 for the slots owners gives shard. */
static int parse_owners(const char *owners, int shard, unsigned char *given) {
  const char *p = owners;
  while (*p) {
    char *end;
    long a = strtol(p, &end, 10), b, s;
    if (end == p || *end != '-')
      return -1;
    p = end + 1;
    b = strtol(p, &end, 10);
    if (end == p || *end != ':')
      return -1;
    p = end + 1;
    s = strtol(p, &end, 10);
    if (end == p || (*end && *end != ',') || a < 0 || b < a ||
        b >= VLM_SLOTS || s < 0)
      return -1;
    if (s == shard)
      memset(given + a, 1, (size_t)(b - a + 1));
    p = *end ? end + 1 : end;
  }
  return 0;
}

int vlm__cluster_search_filter(const vlm_server *srv, const char *owners,
                               const char *user, char **out, char *why,
                               size_t whycap) {
  vlm__cluster_state *cs = srv->cluster;
  *out = NULL;
  if (!cs || cs->nheld == 0)
    return 0;
  /* the coordinator's map is this node's (the common case) */
  const char *mine = owners ? owners_text(cs) : NULL;
  if (owners && mine && !strcmp(owners, mine))
    owners = NULL;
  if (!owners && !any_hidden(cs))
    return 0;
  unsigned char *given = calloc(VLM_SLOTS, 1);
  if (!given) {
    snprintf(why, whycap, "out of memory");
    return -1;
  }
  if (owners) {
    if (parse_owners(owners, cs->shard, given) < 0) {
      snprintf(why, whycap, "OWNERS: not a slot map (a-b:shard,...)");
      free(given);
      return -1;
    }
  } else {
    for (int s = 0; s < VLM_SLOTS; s++)
      given[s] = cs->map->owner[s] == cs->shard;
  }
  vlm__buf b;
  vlm__buf_init(&b, 0);
  int nhidden = 0;
  for (int r = 0; r < cs->nheld; r++)
    for (int s = cs->held[r].first; s <= cs->held[r].last; s++) {
      if (given[s])
        continue;
      int e = s;
      while (e + 1 <= cs->held[r].last && !given[e + 1])
        e++;
      vlm__buf_printf(&b, "%svlm_key_slot(key) BETWEEN %d AND %d",
                      nhidden++ ? " OR " : "", s, e);
      s = e;
    }
  free(given);
  if (nhidden == 0) {
    vlm__buf_free(&b);
    return 0;
  }
  vlm__buf f;
  vlm__buf_init(&f, 0);
  if (user)
    vlm__buf_printf(&f, "(%s) AND ", user);
  vlm__buf_printf(&f, "NOT (%.*s)", (int)b.len, b.data);
  vlm__buf_append(&f, "", 1);
  vlm__buf_free(&b);
  if (f.oom) {
    vlm__buf_free(&f);
    snprintf(why, whycap, "out of memory");
    return -1;
  }
  *out = f.data;
  return 0;
}

int vlm__cluster_hidden_slots(const vlm_server *srv, uint8_t **out) {
  vlm__cluster_state *cs = srv->cluster;
  *out = NULL;
  if (!cs || !any_hidden(cs))
    return 0;
  uint8_t *bits = NULL;
  for (int r = 0; r < cs->nheld; r++)
    for (int s = cs->held[r].first; s <= cs->held[r].last; s++) {
      if (cs->map->owner[s] == cs->shard)
        continue;
      if (!bits && !(bits = calloc(VLM_SLOTS / 8, 1)))
        return -1;
      bits[s >> 3] |= (uint8_t)(1u << (s & 7));
    }
  *out = bits;
  return 0;
}

int vlm__cluster_fenced(const vlm_server *srv, int slot) {
  const vlm__cluster_state *cs = srv->cluster;
  return cs && cs->fenced && slot >= cs->fence_first &&
         slot <= cs->fence_last;
}

void vlm__cluster_write_started(vlm_server *srv, vlm__job *job) {
  job->write_seq = ++srv->write_seq;
  srv->writes_inflight++;
}

void vlm__cluster_write_finished(vlm_server *srv, vlm__job *job) {
  vlm__cluster_state *cs = srv->cluster;
  srv->writes_inflight--;
  if (cs && cs->fenced && cs->fence_old > 0 && job->write_seq <= cs->fence_seq)
    cs->fence_old--;
  job->write_seq = 0;
}

/* "a-b,c" into ranges (at most VLM_CLUSTER_MAX_RANGES): n, or -1. */
static int parse_ranges(const char *text, vlm_slot_range *ranges) {
  int n = 0;
  const char *p = text;
  while (*p) {
    char *end;
    long a = strtol(p, &end, 10), b = a;
    if (end == p)
      return -1;
    if (*end == '-') {
      p = end + 1;
      b = strtol(p, &end, 10);
      if (end == p)
        return -1;
    }
    if ((*end && *end != ',') || a < 0 || b < a || b >= VLM_SLOTS ||
        n == VLM_CLUSTER_MAX_RANGES)
      return -1;
    ranges[n++] = (vlm_slot_range){(int)a, (int)b};
    p = *end ? end + 1 : end;
  }
  return n;
}

/* VLM.MIGRATE, the steps of a live move that change this node's state,
 * sent by `vlmdb cluster move --live` (cli/cmd_cluster_move.c):
 *   STATE                 [shard, held digest, held slots, map digest]
 *   SETSLOTS digest a-b,..  the database's slots (vlm_db_set_slots),
 *                         refused unless the node may still serve it
 *                         under its map (vlm_cluster_held_ok)
 *   FENCE first last      writes to the range answer -TRYAGAIN from now
 *                         on; answers the fence's token
 *   STATUS                [fenced, first, last, token, writes started
 *                         before the fence still running]
 *   UNFENCE               lift it (also lifted by the CLUSTER RELOAD that
 *                         gives the range away, and by a restart)
 * They run on the loop: SETSLOTS waits for a manifest's fsync, rarely. */
int vlm__migrate_command(vlm__ctx *ctx) {
  vlm_server *srv = ctx->srv;
  vlm__cluster_state *cs = srv->cluster;
  vlm__buf *out = ctx->out;
  const vlm__resp_arg *sub = &ctx->argv[1];
  char text[4096];
  if (!cs) {
    vlm__reply_error(out, "ERR", "VLM.MIGRATE: not a cluster node");
    return -1;
  }
  if (arg_is(sub, "STATE") && ctx->argc == 2) {
    vlm_slot_ranges_format(cs->held, cs->nheld, text, sizeof text);
    vlm__reply_array(out, 4);
    vlm__reply_int(out, cs->shard);
    vlm__reply_cstr(out, cs->held_digest);
    vlm__reply_cstr(out, text);
    vlm__reply_cstr(out, cs->map->digest);
    return 0;
  }
  if (arg_is(sub, "SETSLOTS") && ctx->argc == 4) {
    vlm_slot_range ranges[VLM_CLUSTER_MAX_RANGES];
    const vlm__resp_arg *d = &ctx->argv[2], *r = &ctx->argv[3];
    int n = r->len < sizeof text ? (memcpy(text, r->ptr, r->len),
                                    text[r->len] = '\0',
                                    parse_ranges(text, ranges))
                                 : -1;
    char digest[17];
    if (n <= 0 || d->len != 16) {
      vlm__reply_error(out, "ERR", "VLM.MIGRATE SETSLOTS digest a-b,...");
      return -1;
    }
    memcpy(digest, d->ptr, 16);
    digest[16] = '\0';
    if (vlm_cluster_held_ok(cs->map, cs->shard, ranges, n, digest) < 0) {
      vlm__reply_error(out, "ERR", "VLM.MIGRATE SETSLOTS: shard %d could not "
                       "be served with slots %s under its map (digest %s)",
                       cs->shard, text, cs->map->digest);
      return -1;
    }
    int rc = vlm_db_set_slots(srv->db, digest, ranges, n);
    if (rc == 0)
      rc = refresh_held(srv);
    if (rc < 0) {
      vlm__reply_error(out, "ERR", "VLM.MIGRATE SETSLOTS: %s", vlm_errmsg());
      return -1;
    }
    vlm__server_log(srv, "cluster: the database now holds slots %s (digest "
                    "%s)", text, digest);
    vlm__reply_status(out, "OK");
    return 0;
  }
  if (arg_is(sub, "FENCE") && ctx->argc == 4) {
    long a, b;
    char *end;
    int la = (int)(ctx->argv[2].len < 16 ? ctx->argv[2].len : 15);
    int lb = (int)(ctx->argv[3].len < 16 ? ctx->argv[3].len : 15);
    char ta[16], tb[16];
    memcpy(ta, ctx->argv[2].ptr, (size_t)la);
    ta[la] = '\0';
    memcpy(tb, ctx->argv[3].ptr, (size_t)lb);
    tb[lb] = '\0';
    a = strtol(ta, &end, 10);
    int bad = *end || end == ta;
    b = strtol(tb, &end, 10);
    bad |= *end || end == tb || a < 0 || b < a || b >= VLM_SLOTS;
    if (bad) {
      vlm__reply_error(out, "ERR", "VLM.MIGRATE FENCE first last");
      return -1;
    }
    for (long s = a; s <= b; s++)
      if (cs->map->owner[s] != cs->shard) {
        vlm__reply_error(out, "ERR", "VLM.MIGRATE FENCE: slot %ld is not "
                         "served here", s);
        return -1;
      }
    if (!cs->fenced || cs->fence_first != a || cs->fence_last != b) {
      cs->fenced = 1;
      cs->fence_first = (int)a;
      cs->fence_last = (int)b;
      cs->fence_seq = srv->write_seq;
      cs->fence_old = srv->writes_inflight;
      cs->fence_count++;
      vlm__server_log(srv, "cluster: writes to slots %ld-%ld held back "
                      "(-TRYAGAIN) for a live move", a, b);
    }
    snprintf(text, sizeof text, "%016llx-%llu",
             (unsigned long long)cs->fence_token,
             (unsigned long long)cs->fence_count);
    vlm__reply_cstr(out, text);
    return 0;
  }
  if (arg_is(sub, "STATUS") && ctx->argc == 2) {
    snprintf(text, sizeof text, "%016llx-%llu",
             (unsigned long long)cs->fence_token,
             (unsigned long long)cs->fence_count);
    vlm__reply_array(out, 5);
    vlm__reply_int(out, cs->fenced);
    vlm__reply_int(out, cs->fenced ? cs->fence_first : -1);
    vlm__reply_int(out, cs->fenced ? cs->fence_last : -1);
    vlm__reply_cstr(out, cs->fenced ? text : "");
    vlm__reply_int(out, cs->fenced ? cs->fence_old : 0);
    return 0;
  }
  if (arg_is(sub, "UNFENCE") && ctx->argc == 2) {
    if (cs->fenced)
      vlm__server_log(srv, "cluster: writes to slots %d-%d accepted again",
                      cs->fence_first, cs->fence_last);
    cs->fenced = 0;
    vlm__reply_status(out, "OK");
    return 0;
  }
  vlm__reply_error(out, "ERR", "VLM.MIGRATE STATE | SETSLOTS digest ranges | "
                   "FENCE first last | STATUS | UNFENCE");
  return -1;
}
