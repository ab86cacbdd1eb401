/* test_cluster_serve.c - shards served as a Redis Cluster: three
 * `vlmdb serve --cluster` processes on 127.0.0.1 over shard databases
 * built from one catalog, next to a plain server over one database built
 * from the same catalog (the oracle).  Hash slots against a real
 * `redis-server --cluster-enabled yes`; CLUSTER SLOTS/SHARDS/NODES/MYID/
 * INFO against the map; -MOVED; redis-cli -c and redis-py's RedisCluster
 * routing ADD/GET/DEL themselves; SEARCH coordinated by any node equal to
 * the single database's (Flat: keys, scores and fields exactly), COLLAPSE
 * folding near-copies that lie on different shards as the single database
 * does, HYBRID fused from the shards' rankings, COUNT and INFO keyspace
 * summed; CLUSTER
 * RELOAD of a shard's new address; a stopped shard (timeout) and a killed
 * one (refused at once): -CLUSTERDOWN, ALLOWPARTIAL's coverage, recovery. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "util/files.h"
#include "util/util.h"
#include "vlm_error.h"
#include "vlm_slot.h"

#define MODEL "tests/fixtures/clip-tiny"
#define DIM 48 /* clip-tiny's */
#define NROWS 300
#define NSHARDS 3
#define TIMEOUT_MS 600

static struct {
  char dir[PATH_MAX];
  char map[PATH_MAX];
  char single_db[PATH_MAX];
  char shard_db[NSHARDS][PATH_MAX];
  char *bin;
  int ports[NSHARDS];
  vlm_test_server node[NSHARDS];
  vlm_test_server single;
  vlm_cluster *cluster;
} G;

/* ------------------------------------------------------------ helpers */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void unit_vector(float *v, uint64_t *seed) {
  double ss = 0;
  for (int i = 0; i < DIM; i++) {
    v[i] = (float)(vlm_test_uniform(seed) * 2 - 1);
    ss += (double)v[i] * v[i];
  }
  for (int i = 0; i < DIM; i++)
    v[i] = (float)(v[i] / sqrt(ss));
}

static char *vlmdb_path(void) {
  const char *build = getenv("BUILD");
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/vlmdb", build && *build ? build : "build");
  char *abs = realpath(path, NULL);
  if (!abs)
    fail_msg("%s not found: build it first (make %s)", path, path);
  return abs;
}

/* Run a shell command line; its stdout (malloc'd).  exit status in *rc. */
static char *run_shell(const char *cmdline, int *rc) {
  fflush(NULL);
  FILE *p = popen(cmdline, "r");
  assert_non_null(p);
  size_t cap = 1 << 16, len = 0;
  char *out = malloc(cap);
  size_t n;
  while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
    len += n;
    if (len + 1 >= cap)
      out = realloc(out, cap *= 2);
  }
  out[len] = '\0';
  int st = pclose(p);
  if (rc)
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

/* `vlmdb args...`, which must exit 0. */
static void vlmdb_ok(const char *args) {
  char cmd[4 * PATH_MAX];
  snprintf(cmd, sizeof cmd, "env -u VLMDB_SHARD -u SLURM_ARRAY_TASK_ID "
           "-u JOB_COMPLETION_INDEX '%s' %s 2>&1", G.bin, args);
  int rc;
  char *out = run_shell(cmd, &rc);
  if (rc != 0)
    fail_msg("vlmdb %s exited %d:\n%s", args, rc, out);
  free(out);
}

/* A free loopback port, or the test fails. */
static int free_port(void) {
  int port = vlm_test_free_port();
  assert_true(port > 0);
  return port;
}

static redisContext *connect_port(int port) {
  struct timeval tv = {10, 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
  assert_true(c && !c->err);
  redisSetTimeout(c, tv);
  return c;
}

static redisReply *cmd(redisContext *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  if (!r)
    fail_msg("no reply: %s", c->errstr);
  return r;
}

static redisReply *cmd_argv(redisContext *c, int argc, const char **argv,
                            const size_t *lens) {
  redisReply *r = redisCommandArgv(c, argc, argv, lens);
  if (!r)
    fail_msg("no reply: %s", c->errstr);
  return r;
}

static void expect_error(redisReply *r, const char *want) {
  if (r->type != REDIS_REPLY_ERROR || !strstr(r->str, want))
    fail_msg("expected an error with '%s', got type %d '%s'", want, r->type,
             r->str ? r->str : "");
  freeReplyObject(r);
}

static void expect_status(redisReply *r, const char *want) {
  if (r->type != REDIS_REPLY_STATUS || strcmp(r->str, want))
    fail_msg("expected +%s, got type %d '%s'", want, r->type,
             r->str ? r->str : "");
  freeReplyObject(r);
}

static void start_node_window(int s, const char *window_us) {
  char log[PATH_MAX], timeout[16];
  snprintf(log, sizeof log, "%s/node%d.log", G.dir, s);
  snprintf(timeout, sizeof timeout, "%d", TIMEOUT_MS);
  const char *args[] = {"--db", G.shard_db[s], "--cluster", G.map,
                        "--threads", "2", "--cluster-timeout", timeout,
                        /* the HTTP port, RESP + 1 by default, may be taken
                         * (the RESP ports are picked free, not their
                         * neighbours): the kernel picks one */
                        "--http", "0",
                        "--batch-window-us", window_us, NULL};
  assert_int_equal(vlm_test_server_spawn(&G.node[s], G.bin, args, log, 60),
                   0);
  assert_int_equal(G.node[s].port, G.ports[s]);
}

static void start_node(int s) { start_node_window(s, "1000"); }

/* The shard holding key. */
static int owner(const char *key) {
  return vlm_cluster_shard_of(G.cluster, key, strlen(key));
}

/* A key "prefix-N" held by shard s. */
static void key_of_shard(char *buf, size_t cap, const char *prefix, int s) {
  for (int n = 0;; n++) {
    snprintf(buf, cap, "%s-%d", prefix, n);
    if (owner(buf) == s)
      return;
  }
}

/* ---------------------------------------------------------- fixture */

/* NROWS items with precomputed vectors: every fourth has no image vector,
 * every ninth no text vector; a caption and a year to filter on. */
static void write_catalog(const char *path) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  uint64_t seed = 1919;
  for (int i = 0; i < NROWS; i++) {
    float iv[DIM], tv[DIM];
    unit_vector(iv, &seed);
    unit_vector(tv, &seed);
    fprintf(f, "{\"key\": \"%s%d\", \"caption\": \"photo %d of a %s\", "
            "\"meta\": {\"year\": %d}", i % 5 ? "item" : "{group}item", i, i,
            i % 3 ? "red car" : "small boat", 1950 + i % 100);
    if (i % 4) {
      fprintf(f, ", \"image_vector\": [");
      for (int k = 0; k < DIM; k++)
        fprintf(f, "%s%.9g", k ? ", " : "", iv[k]);
      fprintf(f, "]");
    }
    if (i % 9) {
      fprintf(f, ", \"text_vector\": [");
      for (int k = 0; k < DIM; k++)
        fprintf(f, "%s%.9g", k ? ", " : "", tv[k]);
      fprintf(f, "]");
    }
    fprintf(f, "}\n");
  }
  fclose(f);
}

/* The map with G.ports as the addresses; shard 0 ends its first range
 * at split (5000: the map the shards were built for). */
static void write_map(int split) {
  char json[1024];
  snprintf(json, sizeof json,
           "{\"shards\": ["
           "{\"id\": 0, \"slots\": [[0, %d], [12000, 13000]], "
           "\"addresses\": [\"127.0.0.1:%d\"]},"
           " {\"id\": 1, \"slots\": [[%d, 11999]], "
           "\"addresses\": [\"127.0.0.1:%d\"]},"
           " {\"id\": 2, \"slots\": [[13001, 16383]], "
           "\"addresses\": [\"127.0.0.1:%d\"]}]}",
           split, G.ports[0], split + 1, G.ports[1], G.ports[2]);
  vlm_test_spit(G.map, json, strlen(json));
}

static int group_setup(void **state) {
  (void)state;
  char tmpl[] = "/tmp/vlm_test_cluster_serve.XXXXXX";
  assert_non_null(mkdtemp(tmpl));
  snprintf(G.dir, sizeof G.dir, "%s", tmpl);
  G.bin = vlmdb_path();
  char catalog[PATH_MAX], args[4 * PATH_MAX];
  snprintf(catalog, sizeof catalog, "%s/catalog.jsonl", G.dir);
  write_catalog(catalog);
  for (int s = 0; s < NSHARDS; s++)
    G.ports[s] = free_port();
  snprintf(G.map, sizeof G.map, "%s/cluster.json", tmpl);
  write_map(5000);
  VLM_CHECK(vlm_cluster_load(G.map, NULL, NULL, &G.cluster));

  snprintf(G.single_db, sizeof G.single_db, "%s/single", tmpl);
  snprintf(args, sizeof args, "init --db %s --model %s --index Flat "
           "--field year:int", G.single_db, MODEL);
  vlmdb_ok(args);
  snprintf(args, sizeof args, "ingest --db %s %s -q", G.single_db, catalog);
  vlmdb_ok(args);
  for (int s = 0; s < NSHARDS; s++) {
    snprintf(G.shard_db[s], PATH_MAX, "%s/shard-%d", tmpl, s);
    snprintf(args, sizeof args, "init --db %s --model %s --index Flat "
             "--field year:int --cluster %s --shard %d", G.shard_db[s],
             MODEL, G.map, s);
    vlmdb_ok(args);
    snprintf(args, sizeof args, "ingest --db %s %s -q", G.shard_db[s],
             catalog);
    vlmdb_ok(args);
  }
  for (int s = 0; s < NSHARDS; s++)
    start_node(s);
  char log[PATH_MAX];
  snprintf(log, sizeof log, "%s/single.log", G.dir);
  const char *sargs[] = {"--db", G.single_db, "--port", "0", "--threads",
                         "2", NULL};
  assert_int_equal(vlm_test_server_spawn(&G.single, G.bin, sargs, log, 60),
                   0);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  for (int s = 0; s < NSHARDS; s++) {
    if (G.node[s].pid > 0)
      kill(G.node[s].pid, SIGCONT);
    vlm_test_server_stop(&G.node[s], 10);
  }
  vlm_test_server_stop(&G.single, 10);
  /* the servers' own reports (a sanitizer build's, or a crash) */
  int bad = 0;
  for (int s = 0; s <= NSHARDS; s++) {
    char log[PATH_MAX];
    if (s < NSHARDS)
      snprintf(log, sizeof log, "%s/node%d.log", G.dir, s);
    else
      snprintf(log, sizeof log, "%s/single.log", G.dir);
    size_t len = 0;
    char *text = (char *)vlm_test_slurp(log, &len);
    if (!text)
      continue;
    text = realloc(text, len + 1);
    text[len] = '\0';
    if (strstr(text, "Sanitizer") || strstr(text, "runtime error")) {
      print_error("%s:\n%s\n", log, text);
      bad = 1;
    }
    free(text);
  }
  vlm_cluster_free(G.cluster);
  vlm_test_rm_rf(G.dir);
  free(G.bin);
  return bad ? -1 : 0;
}

/* ------------------------------------------------- hash slots: oracle */

static void test_keyslot_matches_redis_server(void **state) {
  (void)state;
  char dir[PATH_MAX], conf[PATH_MAX], portstr[16];
  snprintf(dir, sizeof dir, "%s/redis", G.dir);
  mkdir(dir, 0755);
  snprintf(conf, sizeof conf, "%s/nodes.conf", dir);
  int port = free_port(), bus = free_port();
  char busstr[16];
  snprintf(portstr, sizeof portstr, "%d", port);
  snprintf(busstr, sizeof busstr, "%d", bus); /* not port + 10000 */
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fd = open("/dev/null", O_WRONLY);
    dup2(fd, 1);
    dup2(fd, 2);
    execlp("redis-server", "redis-server", "--port", portstr, "--bind",
           "127.0.0.1", "--cluster-enabled", "yes", "--cluster-port", busstr,
           "--cluster-config-file",
           conf, "--dir", dir, "--save", "", "--appendonly", "no",
           (char *)NULL);
    _exit(127);
  }
  redisContext *rs = NULL;
  for (double t0 = now_s(); now_s() - t0 < 10;) {
    rs = redisConnect("127.0.0.1", port);
    redisReply *pong = rs && !rs->err ? redisCommand(rs, "PING") : NULL;
    int up = pong && pong->type == REDIS_REPLY_STATUS;
    if (pong)
      freeReplyObject(pong);
    if (up)
      break;
    redisFree(rs);
    rs = NULL;
    usleep(20000);
  }
  if (!rs) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("redis-server did not start on port %d", port);
  }
  redisReply *r = cmd(rs, "INFO cluster");
  assert_non_null(strstr(r->str, "cluster_enabled:1"));
  freeReplyObject(r);
  redisContext *v = connect_port(G.ports[1]);
  uint64_t seed = 77;
  int n = 0, tagged = 0;
  for (int i = 0; i < 600; i++) {
    char key[64];
    size_t len;
    switch (i % 8) {
    case 0: len = (size_t)snprintf(key, sizeof key, "key:%d", i); break;
    case 1: len = (size_t)snprintf(key, sizeof key, "{user%d}.x", i); break;
    case 2: len = (size_t)snprintf(key, sizeof key, "a{%d}b{c}", i); break;
    case 3: len = (size_t)snprintf(key, sizeof key, "{}x%d", i); break;
    case 4: len = (size_t)snprintf(key, sizeof key, "{x%d", i); break;
    case 5: len = (size_t)snprintf(key, sizeof key, "x}%d{y}", i); break;
    case 6: len = (size_t)snprintf(key, sizeof key, "{{a%d}}", i); break;
    default: /* binary, NUL bytes and braces included */
      len = 1 + vlm_test_splitmix64(&seed) % 40;
      for (size_t k = 0; k < len; k++) {
        uint64_t b = vlm_test_splitmix64(&seed) % 260;
        key[k] = b >= 256 ? (b & 1 ? '{' : '}') : (char)b;
      }
    }
    tagged += memchr(key, '{', len) != NULL;
    redisReply *a = cmd(rs, "CLUSTER KEYSLOT %b", key, len);
    redisReply *b = cmd(v, "CLUSTER KEYSLOT %b", key, len);
    assert_int_equal(a->type, REDIS_REPLY_INTEGER);
    assert_int_equal(b->type, REDIS_REPLY_INTEGER);
    if (a->integer != b->integer)
      fail_msg("key %d (%zu bytes): vlmdb slot %lld, redis-server %lld", i,
               len, b->integer, a->integer);
    assert_int_equal(b->integer, vlm_key_slot(key, len));
    freeReplyObject(a);
    freeReplyObject(b);
    n++;
  }
  print_message("%d keys (%d with a brace) in redis-server's slots\n", n,
                tagged);
  redisFree(v);
  redisFree(rs);
  kill(pid, SIGTERM);
  waitpid(pid, NULL, 0);
}

/* --------------------------------------------------- topology commands */

/* The documented node id: XXH3-128 of "vlmdb-node " + address, then the
 * high 8 hex digits of XXH3-64 (seed 1) of it. */
static void expected_id(int s, char out[41]) {
  char buf[128];
  int n = snprintf(buf, sizeof buf, "vlmdb-node 127.0.0.1:%d", G.ports[s]);
  XXH128_hash_t h = XXH3_128bits(buf, (size_t)n);
  XXH64_hash_t t = XXH3_64bits_withSeed(buf, (size_t)n, 1);
  snprintf(out, 41, "%016llx%016llx%08llx", (unsigned long long)h.high64,
           (unsigned long long)h.low64, (unsigned long long)(t >> 32));
}

static void test_topology(void **state) {
  (void)state;
  char ids[NSHARDS][41];
  for (int s = 0; s < NSHARDS; s++)
    expected_id(s, ids[s]);
  for (int s = 0; s < NSHARDS; s++) {
    redisContext *c = connect_port(G.ports[s]);
    redisReply *r = cmd(c, "CLUSTER MYID");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_int_equal(r->len, 40);
    assert_string_equal(r->str, ids[s]);
    freeReplyObject(r);

    /* SLOTS: every slot once, each range on its shard's address and id */
    r = cmd(c, "CLUSTER SLOTS");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    static unsigned char seen[VLM_SLOTS];
    memset(seen, 0, sizeof seen);
    assert_int_equal(r->elements, 4); /* shard 0 holds two ranges */
    for (size_t i = 0; i < r->elements; i++) {
      redisReply *e = r->element[i];
      assert_int_equal(e->elements, 3);
      long long first = e->element[0]->integer, last = e->element[1]->integer;
      int sh = G.cluster->owner[first];
      for (long long k = first; k <= last; k++) {
        assert_int_equal(G.cluster->owner[k], sh);
        assert_int_equal(seen[k], 0);
        seen[k] = 1;
      }
      redisReply *node = e->element[2];
      assert_string_equal(node->element[0]->str, "127.0.0.1");
      assert_int_equal(node->element[1]->integer, G.ports[sh]);
      assert_string_equal(node->element[2]->str, ids[sh]);
    }
    for (int k = 0; k < VLM_SLOTS; k++)
      assert_int_equal(seen[k], 1);
    freeReplyObject(r);

    r = cmd(c, "CLUSTER SHARDS");
    assert_int_equal(r->elements, NSHARDS);
    for (int sh = 0; sh < NSHARDS; sh++) {
      redisReply *m = r->element[sh]; /* slots, [...], nodes, [...] */
      assert_string_equal(m->element[0]->str, "slots");
      assert_int_equal(m->element[1]->elements,
                       2 * G.cluster->shards[sh].nranges);
      assert_int_equal(m->element[1]->element[0]->integer,
                       G.cluster->shards[sh].ranges[0].first);
      redisReply *nd = m->element[3]->element[0];
      assert_string_equal(nd->element[0]->str, "id");
      assert_string_equal(nd->element[1]->str, ids[sh]);
      assert_int_equal(nd->element[3]->integer, G.ports[sh]);
    }
    freeReplyObject(r);

    r = cmd(c, "CLUSTER NODES");
    char want[128];
    snprintf(want, sizeof want, "%s 127.0.0.1:%d@0 myself,master", ids[s],
             G.ports[s]);
    assert_non_null(strstr(r->str, want));
    freeReplyObject(r);
    r = cmd(c, "CLUSTER INFO");
    assert_non_null(strstr(r->str, "cluster_state:ok\r\n"));
    assert_non_null(strstr(r->str, "cluster_known_nodes:3\r\n"));
    assert_non_null(strstr(r->str, "cluster_slots_assigned:16384\r\n"));
    freeReplyObject(r);
    r = cmd(c, "INFO");
    assert_non_null(strstr(r->str, "# Cluster\r\ncluster_enabled:1\r\n"));
    freeReplyObject(r);
    expect_status(cmd(c, "READONLY"), "OK");
    expect_status(cmd(c, "READWRITE"), "OK");
    expect_status(cmd(c, "ASKING"), "OK");
    expect_error(cmd(c, "CLUSTER FORGET x"), "unknown subcommand");
    expect_error(cmd(c, "CLUSTER SLOTS x"), "wrong number of arguments");
    expect_error(cmd(c, "CLUSTER KEYSLOT"), "wrong number of arguments");
    redisFree(c);
  }

  /* redis-cli's own cluster checker agrees */
  char cmdline[256];
  snprintf(cmdline, sizeof cmdline, "redis-cli --cluster check "
           "127.0.0.1:%d 2>&1", G.ports[1]);
  int rc;
  char *out = run_shell(cmdline, &rc);
  char keys[64];
  snprintf(keys, sizeof keys, "[OK] %d keys in 3 masters.",
           NROWS - (NROWS + 35) / 36);
  if (rc != 0 || !strstr(out, "[OK] All nodes agree about slots") ||
      !strstr(out, "[OK] All 16384 slots covered.") || !strstr(out, keys))
    fail_msg("redis-cli --cluster check: exit %d\n%s", rc, out);
  free(out);

  /* a plain server: not a cluster node, but the same hash */
  redisContext *c = connect_port(G.single.port);
  expect_error(cmd(c, "CLUSTER SLOTS"), "cluster support disabled");
  redisReply *r = cmd(c, "INFO cluster");
  assert_non_null(strstr(r->str, "cluster_enabled:0"));
  freeReplyObject(r);
  r = cmd(c, "CLUSTER KEYSLOT {user1000}.following");
  assert_int_equal(r->integer, vlm_key_slot("user1000", 8));
  freeReplyObject(r);
  redisFree(c);

  /* an id belongs to the address: a restarted node keeps it */
  vlm_test_server_stop(&G.node[2], 10);
  start_node(2);
  c = connect_port(G.ports[2]);
  r = cmd(c, "CLUSTER MYID");
  assert_string_equal(r->str, ids[2]);
  freeReplyObject(r);
  redisFree(c);
}

/* Starting a node the map or the database does not agree with. */
static void test_serve_refuses_mismatch(void **state) {
  (void)state;
  char cmdline[4 * PATH_MAX];
  int rc;
  /* a database of shard 0 served as shard 1 */
  char db[PATH_MAX];
  snprintf(db, sizeof db, "%s/mismatch", G.dir);
  snprintf(cmdline, sizeof cmdline, "init --db %s --model %s --cluster %s "
           "--shard 0", db, MODEL, G.map);
  vlmdb_ok(cmdline);
  snprintf(cmdline, sizeof cmdline, "'%s' serve --db %s --cluster %s "
           "--shard 1 --port 0 2>&1", G.bin, db, G.map);
  char *out = run_shell(cmdline, &rc);
  assert_int_not_equal(rc, 0);
  if (!strstr(out, "is shard 0"))
    fail_msg("serving shard 0 as shard 1: %s", out);
  free(out);
  /* a map without addresses cannot be served */
  char bare[PATH_MAX];
  snprintf(bare, sizeof bare, "%s/bare.json", G.dir);
  const char *json = "{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383]]}]}";
  vlm_test_spit(bare, json, strlen(json));
  snprintf(db, sizeof db, "%s/plain", G.dir);
  snprintf(cmdline, sizeof cmdline, "init --db %s --model %s", db, MODEL);
  vlmdb_ok(cmdline);
  snprintf(cmdline, sizeof cmdline, "'%s' serve --db %s --cluster %s "
           "--port 0 2>&1", G.bin, db, bare);
  out = run_shell(cmdline, &rc);
  assert_int_not_equal(rc, 0);
  assert_non_null(strstr(out, "shard 0 has no address"));
  free(out);
  /* --shard without a map */
  snprintf(cmdline, sizeof cmdline, "'%s' serve --db %s --shard 0 2>&1",
           G.bin, G.single_db);
  out = run_shell(cmdline, &rc);
  assert_int_not_equal(rc, 0);
  assert_non_null(strstr(out, "--shard needs --cluster"));
  free(out);
}

/* ---------------------------------------------- redirection and clients */

static void test_moved(void **state) {
  (void)state;
  redisContext *c = connect_port(G.ports[0]);
  char mine[32], other[32], want[64];
  key_of_shard(mine, sizeof mine, "moved", 0);
  key_of_shard(other, sizeof other, "moved", 1);
  int slot = vlm_key_slot(other, strlen(other));
  snprintf(want, sizeof want, "MOVED %d 127.0.0.1:%d", slot, G.ports[1]);
  float v[DIM];
  uint64_t seed = 5;
  unit_vector(v, &seed);
  expect_error(cmd(c, "GET %s", other), want);
  expect_error(cmd(c, "ADD %s IMAGEVEC %b", other, v, sizeof v), want);
  expect_error(cmd(c, "UPSERT %s IMAGEVEC %b", other, v, sizeof v), want);
  expect_error(cmd(c, "SETMETA %s {}", other), want);
  expect_error(cmd(c, "DEL %s %s", mine, other), want);
  expect_error(cmd(c, "EXISTS %s", other), want);
  expect_error(cmd(c, "TYPE %s", other), want);
  /* nothing of it was written */
  redisContext *c1 = connect_port(G.ports[1]);
  redisReply *r = cmd(c1, "EXISTS %s", other);
  assert_int_equal(r->integer, 0);
  freeReplyObject(r);
  redisFree(c1);
  /* in a transaction: refused while queueing, so EXEC aborts */
  expect_status(cmd(c, "MULTI"), "OK");
  expect_status(cmd(c, "ADD %s IMAGEVEC %b", mine, v, sizeof v), "QUEUED");
  expect_error(cmd(c, "ADD %s IMAGEVEC %b", other, v, sizeof v), want);
  expect_error(cmd(c, "EXEC"), "EXECABORT");
  r = cmd(c, "EXISTS %s", mine);
  assert_int_equal(r->integer, 0);
  freeReplyObject(r);
  /* this node's keys are served here */
  r = cmd(c, "ADD %s IMAGEVEC %b", mine, v, sizeof v);
  assert_int_equal(r->integer, 1);
  freeReplyObject(r);
  r = cmd(c, "DEL %s", mine);
  assert_int_equal(r->integer, 1);
  freeReplyObject(r);
  /* VLM.LOCAL is this shard's own answer, never redirected */
  r = cmd(c, "VLM.LOCAL EXISTS %s", other);
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  assert_int_equal(r->integer, 0);
  freeReplyObject(r);
  expect_error(cmd(c, "VLM.LOCAL VLM.LOCAL PING"), "unknown command");
  expect_error(cmd(c, "VLM.LOCAL"), "wrong number of arguments");
  redisFree(c);
}

/* Where key is: 1 if shard s holds it (asked with VLM.LOCAL). */
static int shard_has(int s, const char *key) {
  redisContext *c = connect_port(G.ports[s]);
  redisReply *r = cmd(c, "VLM.LOCAL EXISTS %s", key);
  int has = (int)r->integer;
  freeReplyObject(r);
  redisFree(c);
  return has;
}

static void test_redis_cli_cluster_mode(void **state) {
  (void)state;
  int per_shard[NSHARDS] = {0};
  for (int i = 0; i < 12; i++) {
    char key[32], cmdline[512];
    snprintf(key, sizeof key, "cli-%d", i);
    per_shard[owner(key)]++;
    /* always through node 0: the others are reached by -MOVED */
    snprintf(cmdline, sizeof cmdline, "redis-cli -c -p %d ADD %s TEXT "
             "'a note number %d' META '{\"year\": %d}'", G.ports[0], key, i,
             2000 + i);
    int rc;
    char *out = run_shell(cmdline, &rc);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "1\n");
    free(out);
    for (int s = 0; s < NSHARDS; s++)
      assert_int_equal(shard_has(s, key), s == owner(key));
    snprintf(cmdline, sizeof cmdline, "redis-cli -c -p %d GET %s",
             G.ports[0], key);
    out = run_shell(cmdline, &rc);
    char want[64];
    snprintf(want, sizeof want, "a note number %d\n", i);
    assert_non_null(strstr(out, want));
    free(out);
    snprintf(cmdline, sizeof cmdline, "redis-cli -c -p %d DEL %s",
             G.ports[0], key);
    out = run_shell(cmdline, &rc);
    assert_string_equal(out, "1\n");
    free(out);
    assert_int_equal(shard_has(owner(key), key), 0);
  }
  for (int s = 0; s < NSHARDS; s++)
    assert_true(per_shard[s] > 0);
}

static void test_redis_py_cluster(void **state) {
  (void)state;
  char script[PATH_MAX], cmdline[2 * PATH_MAX];
  snprintf(script, sizeof script, "%s/rc.py", G.dir);
  const char *py =
      "import sys\n"
      "from redis.cluster import RedisCluster\n"
      "rc = RedisCluster(host='127.0.0.1', port=int(sys.argv[1]))\n"
      "nodes = sorted(n.port for n in rc.get_primaries())\n"
      "print('primaries', *nodes)\n"
      "keys = ['py-%d' % i for i in range(30)]\n"
      "added = sum(rc.execute_command('ADD', k, 'TEXT', 'caption of ' + k)\n"
      "            for k in keys)\n"
      "got = sum(rc.execute_command('GET', k)[3] == ('caption of ' + k)"
      ".encode()\n"
      "          for k in keys)\n"
      "gone = sum(rc.execute_command('DEL', k) for k in keys[::2])\n"
      "left = sum(rc.execute_command('EXISTS', k) for k in keys)\n"
      "print('added', added, 'got', got, 'deleted', gone, 'left', left)\n"
      "hits = rc.execute_command('SEARCH', 'TEXT', 'caption of py-3', 'K', "
      "'3', target_nodes=RedisCluster.RANDOM)\n"
      "print('hits', len(hits))\n"
      "hits = rc.execute_command('SEARCH', 'KEY', 'py-5', 'K', '2', "
      "target_nodes=RedisCluster.RANDOM)\n"
      "print('key hits', len(hits), hits[0][0].decode())\n";
  vlm_test_spit(script, py, strlen(py));
  snprintf(cmdline, sizeof cmdline, "/usr/bin/python3 %s %d 2>&1", script,
           G.ports[2]);
  int rc;
  char *out = run_shell(cmdline, &rc);
  int sorted[NSHARDS] = {G.ports[0], G.ports[1], G.ports[2]};
  for (int i = 0; i < NSHARDS; i++)
    for (int j = i + 1; j < NSHARDS; j++)
      if (sorted[j] < sorted[i]) {
        int t = sorted[i];
        sorted[i] = sorted[j];
        sorted[j] = t;
      }
  char want[256];
  snprintf(want, sizeof want, "primaries %d %d %d\nadded 30 got 30 "
           "deleted 15 left 15\nhits 3\nkey hits 2 py-5\n", sorted[0],
           sorted[1], sorted[2]);
  if (rc != 0 || strcmp(out, want))
    fail_msg("redis-py RedisCluster: exit %d, printed:\n%s\nwanted:\n%s", rc,
             out, want);
  free(out);
  /* each key on its own shard only */
  for (int i = 0; i < 30; i++) {
    char key[16];
    snprintf(key, sizeof key, "py-%d", i);
    for (int s = 0; s < NSHARDS; s++)
      assert_int_equal(shard_has(s, key), s == owner(key) && i % 2);
    if (i % 2) { /* leave the shards as the catalog made them */
      redisContext *c = connect_port(G.ports[owner(key)]);
      redisReply *r = cmd(c, "DEL %s", key);
      assert_int_equal(r->integer, 1);
      freeReplyObject(r);
      redisFree(c);
    }
  }
}

/* ----------------------------------------- coordinated SEARCH vs oracle */

/* Two SEARCH replies (RESP2) equal: the same hits in the same order,
 * scores to the digit, the same fields. */
static void assert_same_hits(redisReply *got, redisReply *want,
                             const char *what) {
  if (want->type == REDIS_REPLY_ERROR || got->type == REDIS_REPLY_ERROR)
    fail_msg("%s: cluster '%s', single '%s'", what,
             got->type == REDIS_REPLY_ERROR ? got->str : "(hits)",
             want->type == REDIS_REPLY_ERROR ? want->str : "(hits)");
  assert_int_equal(got->type, REDIS_REPLY_ARRAY);
  if (got->elements != want->elements)
    fail_msg("%s: %zu hits, the single database %zu", what, got->elements,
             want->elements);
  for (size_t h = 0; h < want->elements; h++) {
    redisReply *g = got->element[h], *w = want->element[h];
    assert_int_equal(g->elements, w->elements);
    for (size_t f = 0; f < w->elements; f++) {
      redisReply *a = g->element[f], *b = w->element[f];
      if (a->type != b->type ||
          (a->type == REDIS_REPLY_STRING &&
           (a->len != b->len || memcmp(a->str, b->str, a->len))) ||
          (a->type == REDIS_REPLY_INTEGER && a->integer != b->integer))
        fail_msg("%s: hit %zu element %zu: cluster '%s', single '%s'", what,
                 h, f, a->str ? a->str : "(int/nil)",
                 b->str ? b->str : "(int/nil)");
    }
  }
}

/* One entry of a ranking, for the test's own fusion. */
typedef struct {
  const char *key;
  float score;
  const redisReply *hit;
} entry;

static int entry_desc(const void *a, const void *b) {
  const entry *x = a, *y = b;
  if (x->score != y->score)
    return x->score > y->score ? -1 : 1;
  return strcmp(x->key, y->key);
}

typedef struct {
  const char *key;
  float score;
} fused;

static int fused_desc(const void *a, const void *b) {
  const fused *x = a, *y = b;
  if (x->score != y->score)
    return x->score > y->score ? -1 : 1;
  return strcmp(x->key, y->key);
}

/* A coordinated HYBRID search against the fusion computed here from the
 * shards' own rankings (VLM.LOCAL ... RANKINGS): each ranking merged by
 * score to depth max(k, 50), then reciprocal rank fusion with constant
 * 60 (an item's first place in the vector ranking, each place in BM25);
 * and its overlap with the single database's hybrid results (BM25 scores
 * are each shard's own, so only close to one database's). */
static void check_hybrid(redisContext **nodes, redisContext *single,
                         const float *v, int k, const char *text, float w) {
  char wbuf[32];
  snprintf(wbuf, sizeof wbuf, "%g", (double)(w > 0 ? w : 0.5f));
  redisReply *parts[NSHARDS];
  entry *lists[2];
  int nl[2] = {0, 0};
  lists[0] = calloc(2 * NROWS, sizeof(entry));
  lists[1] = calloc(2 * NROWS, sizeof(entry));
  for (int s = 0; s < NSHARDS; s++) {
    parts[s] = cmd(nodes[s], "VLM.LOCAL SEARCH VECTOR %b K %d HYBRID %s "
                   "WEIGHT %s RANKINGS RETURN 1 caption", v, DIM * 4, k,
                   text, wbuf);
    assert_int_equal(parts[s]->type, REDIS_REPLY_ARRAY);
    assert_int_equal(parts[s]->elements, 2);
    for (int l = 0; l < 2; l++) {
      redisReply *list = parts[s]->element[l];
      for (size_t h = 0; h < list->elements; h++) {
        entry *e = &lists[l][nl[l]++];
        e->key = list->element[h]->element[0]->str;
        e->score = strtof(list->element[h]->element[1]->str, NULL);
        e->hit = list->element[h];
      }
    }
  }
  int depth = k > 50 ? k : 50;
  for (int l = 0; l < 2; l++) {
    qsort(lists[l], (size_t)nl[l], sizeof(entry), entry_desc);
    if (nl[l] > depth)
      nl[l] = depth;
  }
  assert_true(nl[1] > 0); /* the words are in captions */
  float wt = w > 0 ? w : 0.5f;
  fused *f = calloc((size_t)(nl[0] + nl[1]), sizeof *f);
  int nf = 0;
  for (int i = 0; i < nl[0] + nl[1]; i++) {
    int vec = i < nl[0];
    const char *key = vec ? lists[0][i].key : lists[1][i - nl[0]].key;
    float add = vec ? (1 - wt) / (60.0f + i + 1)
                    : wt / (60.0f + (i - nl[0]) + 1);
    int at = -1;
    for (int j = 0; j < nf; j++)
      if (!strcmp(f[j].key, key))
        at = j;
    if (at >= 0 && !vec) {
      f[at].score += add;
      continue;
    }
    if (at >= 0) /* a key twice in the vector ranking: its first place */
      continue;
    f[nf].key = key;
    f[nf++].score = add;
  }
  qsort(f, (size_t)nf, sizeof *f, fused_desc);
  if (nf > k)
    nf = k;
  redisReply *got = cmd(nodes[1], "SEARCH VECTOR %b K %d HYBRID %s WEIGHT "
                        "%s RETURN 1 caption", v, DIM * 4, k, text, wbuf);
  assert_int_equal(got->type, REDIS_REPLY_ARRAY);
  if ((int)got->elements != nf)
    fail_msg("HYBRID '%s' k %d: %zu hits, the shards' rankings fuse to %d",
             text, k, got->elements, nf);
  for (int i = 0; i < nf; i++) {
    redisReply *h = got->element[i];
    if (strcmp(h->element[0]->str, f[i].key))
      fail_msg("HYBRID '%s' k %d: hit %d is %s, the fusion's %s", text, k,
               i, h->element[0]->str, f[i].key);
    assert_float_equal(strtof(h->element[1]->str, NULL), f[i].score, 1e-7);
    assert_string_equal(h->element[2]->str, "caption");
    assert_int_equal(h->element[3]->type, REDIS_REPLY_STRING);
  }
  redisReply *one = cmd(single, "SEARCH VECTOR %b K %d HYBRID %s WEIGHT %s",
                        v, DIM * 4, k, text, wbuf);
  int common = 0;
  for (size_t i = 0; i < one->elements; i++)
    for (size_t j = 0; j < got->elements; j++)
      common += !strcmp(one->element[i]->element[0]->str,
                        got->element[j]->element[0]->str);
  print_message("HYBRID '%s' k %d w %s: %d hits as fused from the shards' "
                "rankings; %d of the single database's %zu (BM25 ties are "
                "broken by key here, by insertion there)\n", text, k, wbuf,
                nf, common, one->elements);
  freeReplyObject(one);

  /* the rankings whole: the vector one is the single database's, the
   * BM25 one matches the same captions */
  redisReply *all = cmd(single, "VLM.LOCAL SEARCH VECTOR %b K %d HYBRID %s "
                        "RANKINGS", v, DIM * 4, NROWS, text);
  int n[2] = {0, 0};
  for (int s = 0; s < NSHARDS; s++) {
    freeReplyObject(parts[s]);
    parts[s] = cmd(nodes[s], "VLM.LOCAL SEARCH VECTOR %b K %d HYBRID %s "
                   "RANKINGS", v, DIM * 4, NROWS, text);
    for (int l = 0; l < 2; l++) {
      redisReply *list = parts[s]->element[l];
      for (size_t h = 0; h < list->elements; h++) {
        entry *e = &lists[l][n[l]++];
        e->key = list->element[h]->element[0]->str;
        e->score = strtof(list->element[h]->element[1]->str, NULL);
      }
    }
  }
  qsort(lists[0], (size_t)n[0], sizeof(entry), entry_desc);
  assert_int_equal(n[0], all->element[0]->elements);
  for (int i = 0; i < n[0]; i++) {
    redisReply *h = all->element[0]->element[i];
    assert_string_equal(lists[0][i].key, h->element[0]->str);
    assert_true(lists[0][i].score == strtof(h->element[1]->str, NULL));
  }
  assert_int_equal(n[1], all->element[1]->elements);
  for (size_t i = 0; i < all->element[1]->elements; i++) {
    int found = 0;
    for (int j = 0; j < n[1] && !found; j++)
      found = !strcmp(lists[1][j].key,
                      all->element[1]->element[i]->element[0]->str);
    assert_true(found);
  }
  freeReplyObject(all);
  freeReplyObject(got);
  for (int s = 0; s < NSHARDS; s++)
    freeReplyObject(parts[s]);
  free(lists[0]);
  free(lists[1]);
  free(f);
}

static void test_search_equals_single_database(void **state) {
  (void)state;
  redisContext *nodes[NSHARDS];
  for (int s = 0; s < NSHARDS; s++)
    nodes[s] = connect_port(G.ports[s]);
  redisContext *single = connect_port(G.single.port);
  float v0[DIM];
  static const char *const variants[][10] = {
      {"K", "10", NULL},
      {"K", "25", "FILTER", "year >= 2000", NULL},
      {"K", "5", "TARGET", "IMAGE", "RETURN", "1", "caption", NULL},
      {"K", "7", "TARGET", "TEXT", "RETURN", "2", "year", "modality", NULL},
      {"K", "300", "EXACT", NULL},
      {"K", "12", "FILTER", "key LIKE '{group}%'", "RETURN", "1", "meta",
       NULL},
      {"K", "40", "MINSCORE", "0.05", NULL},
      {"MINSCORE", "0.2", "FILTER", "year >= 2000", NULL},
      {"K", "6", "OFFSET", "9", "RETURN", "1", "caption", NULL},
      {"K", "20", "OFFSET", "30", "FILTER", "year >= 2000", NULL},
      {"K", "60", "GROUPBY", "year", NULL},
      {"K", "70", "GROUPBY", "year", "PER", "2", "RETURN", "1", "caption",
       NULL},
      {"K", "25", "OFFSET", "40", "GROUPBY", "year", "RETURN", "1", "year",
       NULL},
  };
  enum { NVARIANTS = sizeof variants / sizeof variants[0] };
  uint64_t seed = 4242;
  int compared = 0;
  for (int q = 0; q < 39; q++) {
    float v[DIM];
    unit_vector(v, &seed);
    const char *const *opt = variants[q % NVARIANTS];
    const char *argv[16] = {"SEARCH", "VECTOR", (const char *)v};
    size_t lens[16] = {6, 6, sizeof v};
    int argc = 3;
    for (; opt[argc - 3]; argc++) {
      argv[argc] = opt[argc - 3];
      lens[argc] = strlen(opt[argc - 3]);
    }
    redisReply *want = cmd_argv(single, argc, argv, lens);
    redisReply *got = cmd_argv(nodes[q % NSHARDS], argc, argv, lens);
    char what[64];
    snprintf(what, sizeof what, "query %d (variant %d)", q, q % NVARIANTS);
    assert_same_hits(got, want, what);
    compared += (int)want->elements;
    freeReplyObject(want);
    freeReplyObject(got);
  }
  print_message("39 vector searches: %d hits equal to the single "
                "database's\n", compared);

  /* TEXT queries embed on the node that receives them */
  redisReply *want = cmd(single, "SEARCH TEXT %s K 8 RETURN 3 caption year "
                         "logit", "a small boat");
  redisReply *got = cmd(nodes[1], "SEARCH TEXT %s K 8 RETURN 3 caption year "
                        "logit", "a small boat");
  assert_same_hits(got, want, "SEARCH TEXT");
  freeReplyObject(want);
  freeReplyObject(got);
  /* KEY queries on every node: the others fetch the key's vector from
   * its shard */
  char key[16] = "item17";
  want = cmd(single, "SEARCH KEY %s K 6 RETURN 1 caption", key);
  for (int s = 0; s < NSHARDS; s++) {
    got = cmd(nodes[s], "SEARCH KEY %s K 6 RETURN 1 caption", key);
    assert_same_hits(got, want, s == owner(key) ? "SEARCH KEY, its node"
                                                : "SEARCH KEY, another node");
    freeReplyObject(got);
  }
  freeReplyObject(want);
  want = cmd(single, "SEARCH KEY %s K 4 TARGET TEXT", "item4"); /* no image */
  got = cmd(nodes[(owner("item4") + 1) % NSHARDS], "SEARCH KEY %s K 4 TARGET "
            "TEXT", "item4");
  assert_same_hits(got, want, "SEARCH KEY of a text-only item");
  freeReplyObject(want);
  freeReplyObject(got);
  for (int s = 0; s < NSHARDS; s++) {
    char nokey[32];
    key_of_shard(nokey, sizeof nokey, "absent", (s + 1) % NSHARDS);
    expect_error(cmd(nodes[s], "SEARCH KEY %s", nokey), "no such key");
  }

  /* errors are the single database's */
  want = cmd(single, "SEARCH TEXT x FILTER %s", "nosuchfield > 1");
  got = cmd(nodes[0], "SEARCH TEXT x FILTER %s", "nosuchfield > 1");
  assert_int_equal(want->type, REDIS_REPLY_ERROR);
  assert_int_equal(got->type, REDIS_REPLY_ERROR);
  assert_string_equal(got->str, want->str);
  freeReplyObject(want);
  freeReplyObject(got);
  /* COLLAPSE: test_collapse_equals_single_database */
  want = cmd(single, "SEARCH TEXT x COLLAPSE 0.9");
  got = cmd(nodes[0], "SEARCH TEXT x COLLAPSE 0.9");
  assert_same_hits(got, want, "SEARCH TEXT x COLLAPSE 0.9");
  freeReplyObject(want);
  freeReplyObject(got);
  /* a page through the cluster is the single database's page, also
   * past the end */
  static const char *const pages[] = {
      "SEARCH TEXT %s K 4 OFFSET 3 RETURN 1 year",
      "SEARCH TEXT %s K 10 OFFSET 295 EXACT"};
  for (int p = 0; p < 2; p++) {
    want = cmd(single, pages[p], "a small boat");
    got = cmd(nodes[p % NSHARDS], pages[p], "a small boat");
    assert_same_hits(got, want, pages[p]);
    freeReplyObject(want);
    freeReplyObject(got);
  }
  /* the group field asked of the shards for grouping is not shown when
   * RETURN did not name it */
  got = cmd(nodes[2], "SEARCH TEXT %s K 12 GROUPBY year RETURN 1 caption",
            "a small boat");
  assert_int_equal(got->type, REDIS_REPLY_ARRAY);
  assert_int_equal(got->elements, 12);
  for (size_t i = 0; i < got->elements; i++) {
    assert_int_equal(got->element[i]->elements, 4); /* key score caption */
    assert_string_equal(got->element[i]->element[2]->str, "caption");
  }
  freeReplyObject(got);
  /* a hybrid page is the cluster's own fused ranking, sliced (its BM25
   * differs from one database's: each shard has its term statistics) */
  want = cmd(nodes[0], "SEARCH TEXT %s K 15 HYBRID boat", "a small boat");
  got = cmd(nodes[1], "SEARCH TEXT %s K 10 OFFSET 5 HYBRID boat",
            "a small boat");
  assert_int_equal(want->type, REDIS_REPLY_ARRAY);
  assert_int_equal(got->type, REDIS_REPLY_ARRAY);
  assert_int_equal(got->elements + 5, want->elements);
  for (size_t i = 0; i < got->elements; i++)
    assert_string_equal(got->element[i]->element[0]->str,
                        want->element[i + 5]->element[0]->str);
  freeReplyObject(want);
  freeReplyObject(got);
  expect_error(cmd(nodes[0], "SEARCH TEXT x GROUPBY year HYBRID boat"),
               "not coordinated");
  expect_error(cmd(nodes[0], "SEARCH TEXT x K 100 GROUPBY year PER 200"),
               "more than");
  expect_error(cmd(nodes[0], "SEARCH TEXT x RANKINGS"), "syntax error");
  expect_error(cmd(nodes[0], "VLM.LOCAL SEARCH TEXT x RANKINGS"),
               "RANKINGS needs HYBRID");

  /* HYBRID whose words no caption has: the vector side alone, fused */
  unit_vector(v0, &seed);
  want = cmd(single, "SEARCH VECTOR %b K 15 HYBRID %s RETURN 2 caption "
             "modality", v0, sizeof v0, "zebra quartz");
  got = cmd(nodes[2], "SEARCH VECTOR %b K 15 HYBRID %s RETURN 2 caption "
            "modality", v0, sizeof v0, "zebra quartz");
  assert_same_hits(got, want, "HYBRID, no BM25 match");
  freeReplyObject(want);
  freeReplyObject(got);
  for (int q = 0; q < 6; q++) {
    unit_vector(v0, &seed);
    check_hybrid(nodes, single, v0, q % 2 ? 8 : 60,
                 q % 3 == 0 ? "small boat" : q % 3 == 1 ? "red car 17"
                                                        : "photo boat",
                 q % 2 ? 0.3f : 0);
  }

  /* RESP3 and RESP2 as redis-cli prints them, probability included (a
   * softmax over the merged hits) */
  for (int proto = 2; proto <= 3; proto++) {
    char a[512], b[512];
    const char *q = "SEARCH TEXT 'photo of a red car' K 6 RETURN 4 caption "
                    "year logit probability";
    snprintf(a, sizeof a, "redis-cli -%d -p %d %s", proto, G.single.port, q);
    snprintf(b, sizeof b, "redis-cli -%d -p %d %s", proto, G.ports[2], q);
    char *oa = run_shell(a, NULL), *ob = run_shell(b, NULL);
    if (strcmp(oa, ob))
      fail_msg("RESP%d: single\n%s\ncluster\n%s", proto, oa, ob);
    assert_non_null(strstr(oa, "probability"));
    free(oa);
    free(ob);
  }

  /* COUNT and INFO keyspace: the cluster's; DBSIZE: the node's */
  redisReply *n = cmd(single, "COUNT");
  long long total = n->integer, sum = 0;
  freeReplyObject(n);
  /* rows with neither vector (i % 36 == 0) are not ingested */
  assert_int_equal(total, NROWS - (NROWS + 35) / 36);
  for (int s = 0; s < NSHARDS; s++) {
    n = cmd(nodes[s], "COUNT");
    assert_int_equal(n->integer, total);
    freeReplyObject(n);
    n = cmd(nodes[s], "DBSIZE");
    assert_true(n->integer > 0 && n->integer < total);
    sum += n->integer;
    freeReplyObject(n);
    n = cmd(nodes[s], "INFO keyspace");
    char line[64];
    snprintf(line, sizeof line, "db0:keys=%lld,", total);
    assert_non_null(strstr(n->str, line));
    assert_non_null(strstr(n->str, "cluster_shards_answered:3"));
    freeReplyObject(n);
  }
  assert_int_equal(sum, total);
  for (int s = 0; s < NSHARDS; s++)
    redisFree(nodes[s]);
  redisFree(single);
}

/* ------------------------------------ coordinated COLLAPSE vs oracle */

#define NFAMILIES 8
#define FAMILY 4     /* near-copies of one picture, on different shards */
#define NTEXTONLY 6  /* near the families' pictures, with no picture */
#define NADDED (NFAMILIES * FAMILY + NTEXTONLY)

static float dot_f(const float *a, const float *b) {
  float s = 0;
  for (int i = 0; i < DIM; i++)
    s += a[i] * b[i];
  return s;
}

/* v = the unit vector along base + spread x a random unit vector */
static void near_vector(float *v, const float *base, float spread,
                        uint64_t *seed) {
  float n[DIM];
  unit_vector(n, seed);
  double ss = 0;
  for (int i = 0; i < DIM; i++) {
    v[i] = base[i] + spread * n[i];
    ss += (double)v[i] * v[i];
  }
  for (int i = 0; i < DIM; i++)
    v[i] = (float)(v[i] / sqrt(ss));
}

/* ADD key to its shard's node and to the single database alike. */
static void add_everywhere(redisContext **nodes, redisContext *single,
                           const char *key, const char *text,
                           const float *iv, const float *tv, int year) {
  char meta[64];
  snprintf(meta, sizeof meta, "{\"year\": %d}", year);
  const char *argv[10] = {"ADD", key, "TEXT", text, "META", meta};
  size_t lens[10] = {3, strlen(key), 4, strlen(text), 4, strlen(meta)};
  int argc = 6;
  if (iv) {
    argv[argc] = "IMAGEVEC", lens[argc++] = 8;
    argv[argc] = (const char *)iv, lens[argc++] = DIM * sizeof(float);
  }
  argv[argc] = "TEXTVEC", lens[argc++] = 7;
  argv[argc] = (const char *)tv, lens[argc++] = DIM * sizeof(float);
  for (int i = 0; i < 2; i++) {
    redisReply *r = cmd_argv(i ? single : nodes[owner(key)], argc, argv,
                             lens);
    if (r->type != REDIS_REPLY_INTEGER || r->integer != 1)
      fail_msg("ADD %s: type %d '%s'", key, r->type, r->str ? r->str : "");
    freeReplyObject(r);
  }
}

/* key's image vector from the single database into v: 1, or 0 if it has
 * none. */
static int image_vec_of(redisContext *single, const char *key, float *v) {
  redisReply *r = cmd(single, "GET %s WITHVECTORS", key);
  int found = 0;
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  for (size_t i = 0; i + 1 < r->elements; i += 2)
    if (!strcmp(r->element[i]->str, "image_vec") &&
        r->element[i + 1]->type == REDIS_REPLY_STRING) {
      assert_int_equal(r->element[i + 1]->len, DIM * sizeof(float));
      memcpy(v, r->element[i + 1]->str, DIM * sizeof(float));
      found = 1;
    }
  freeReplyObject(r);
  return found;
}

/* HYBRID with COLLAPSE against this test's own folding: the cluster's
 * fused ranking to the depth one database folds (K = that depth, no
 * COLLAPSE), walked greedily here with the items' image vectors.  Where
 * the walk keeps k within that depth the answer is exactly it (keys,
 * scores, folded counts); otherwise its kept keys begin the answer. */
static void check_hybrid_collapse(redisContext **nodes, redisContext *single,
                                  const float *v, int k, const char *text,
                                  float thr) {
  int depth = k < 13 ? 100 : k * 8;
  char tbuf[32];
  snprintf(tbuf, sizeof tbuf, "%g", (double)thr);
  redisReply *full = cmd(nodes[0], "SEARCH VECTOR %b K %d HYBRID %s",
                         v, DIM * sizeof(float), depth, text);
  redisReply *got = cmd(nodes[2], "SEARCH VECTOR %b K %d HYBRID %s "
                        "COLLAPSE %s RETURN 1 similar", v,
                        DIM * sizeof(float), k, text, tbuf);
  assert_int_equal(full->type, REDIS_REPLY_ARRAY);
  if (got->type != REDIS_REPLY_ARRAY)
    fail_msg("HYBRID '%s' COLLAPSE %s: %s", text, tbuf, got->str);
  float (*kv)[DIM] = calloc((size_t)k, sizeof *kv);
  int *has = calloc((size_t)k, sizeof *has);
  int *similar = calloc((size_t)k, sizeof *similar);
  const redisReply **kept = calloc((size_t)k, sizeof *kept);
  int nk = 0, folded = 0;
  for (size_t i = 0; i < full->elements && nk < k; i++) {
    float iv[DIM];
    int with = image_vec_of(single, full->element[i]->element[0]->str, iv);
    int into = -1;
    for (int j = 0; with && j < nk && into < 0; j++)
      if (has[j] && dot_f(kv[j], iv) >= thr)
        into = j;
    if (into >= 0) {
      similar[into]++;
      folded++;
      continue;
    }
    has[nk] = with;
    if (with)
      memcpy(kv[nk], iv, sizeof iv);
    kept[nk++] = full->element[i];
  }
  if (nk == k)
    assert_int_equal(got->elements, nk);
  else
    assert_true((int)got->elements >= nk);
  for (int j = 0; j < nk; j++) {
    const redisReply *h = got->element[j];
    if (strcmp(h->element[0]->str, kept[j]->element[0]->str))
      fail_msg("HYBRID '%s' COLLAPSE %s: hit %d is %s, the folding's %s",
               text, tbuf, j, h->element[0]->str, kept[j]->element[0]->str);
    assert_string_equal(h->element[1]->str, kept[j]->element[1]->str);
    if (nk == k)
      assert_int_equal(h->element[3]->integer, similar[j]);
  }
  print_message("HYBRID '%s' K %d COLLAPSE %s: %zu hits, %d folded, as "
                "folded here from the cluster's fused ranking\n", text, k,
                tbuf, got->elements, folded);
  freeReplyObject(full);
  freeReplyObject(got);
  free(kv);
  free(has);
  free(similar);
  free(kept);
}

/* SEARCH ... COLLAPSE through any node equals the single database's:
 * near-copies of one picture lie on different shards (and fold into the
 * best of them there), items without a picture are kept as they are; for
 * thresholds from 0.1 to 1, pages, filters, targets, MINSCORE and a
 * HYBRID without BM25 matches, including searches that fold so much that
 * the page stays short (the depth one database looks at bounds it). */
static void test_collapse_equals_single_database(void **state) {
  (void)state;
  redisContext *nodes[NSHARDS];
  for (int s = 0; s < NSHARDS; s++)
    nodes[s] = connect_port(G.ports[s]);
  redisContext *single = connect_port(G.single.port);
  static char keys[NADDED][32];
  float base[NFAMILIES][DIM];
  uint64_t seed = 5151;
  static const float spread[FAMILY] = {0.15f, 0.3f, 0.45f, 0.7f};
  int nkeys = 0;
  for (int f = 0; f < NFAMILIES; f++) {
    unit_vector(base[f], &seed);
    int shards_used = 0;
    for (int m = 0; m < FAMILY; m++) {
      char prefix[32], text[64];
      float iv[DIM], tv[DIM];
      int s = (f + m) % NSHARDS;
      snprintf(prefix, sizeof prefix, "dup%d.%d", f, m);
      key_of_shard(keys[nkeys], sizeof keys[0], prefix, s);
      shards_used |= 1 << s;
      near_vector(iv, base[f], spread[m], &seed);
      unit_vector(tv, &seed);
      snprintf(text, sizeof text, "near copy %d of picture %d, a small "
               "boat", m, f);
      add_everywhere(nodes, single, keys[nkeys++], text, iv, tv,
                     1990 + 5 * m + f);
    }
    assert_int_equal(shards_used, (1 << NSHARDS) - 1);
  }
  for (int t = 0; t < NTEXTONLY; t++) {
    float tv[DIM];
    char prefix[32];
    snprintf(prefix, sizeof prefix, "textonly%d", t);
    key_of_shard(keys[nkeys], sizeof keys[0], prefix, t % NSHARDS);
    near_vector(tv, base[t % NFAMILIES], 0.6f, &seed);
    add_everywhere(nodes, single, keys[nkeys++], "a note without a picture",
                   NULL, tv, 2000 + t);
  }
  assert_int_equal(nkeys, NADDED);

  static const char *const variants[][14] = {
      {"K", "5", "COLLAPSE", "0.9", "RETURN", "1", "similar", NULL},
      {"K", "10", "COLLAPSE", "0.8", "RETURN", "2", "similar", "caption",
       NULL},
      {"K", "3", "COLLAPSE", "0.95", "TARGET", "IMAGE", "RETURN", "1",
       "similar", NULL},
      /* folds most of the ranking: fewer than K within its depth */
      {"K", "20", "COLLAPSE", "0.1", "TARGET", "IMAGE", "RETURN", "1",
       "similar", NULL},
      {"K", "12", "COLLAPSE", "0.5", "FILTER", "year >= 2000", "RETURN", "2",
       "similar", "year", NULL},
      {"K", "6", "OFFSET", "4", "COLLAPSE", "0.8", "RETURN", "2", "modality",
       "similar", NULL},
      {"K", "15", "COLLAPSE", "0.85", "MINSCORE", "0.1", "RETURN", "1",
       "similar", NULL},
      {"K", "8", "COLLAPSE", "0.9", "HYBRID", "zebra quartz", "RETURN", "1",
       "similar", NULL},
      {"K", "4", "COLLAPSE", "0.8", "RETURN", "3", "similar", "logit",
       "probability", NULL},
      {"K", "30", "COLLAPSE", "0.3", "EXACT", "TARGET", "IMAGE", "RETURN",
       "1", "similar", NULL},
      {"K", "9", "OFFSET", "3", "COLLAPSE", "0.2", "TARGET", "IMAGE",
       "FILTER", "year < 2030", NULL},
      {"COLLAPSE", "1", NULL},
  };
  enum { NVARIANTS = sizeof variants / sizeof variants[0] };
  int compared = 0, folded = 0, short_pages = 0, cross = 0;
  for (int q = 0; q < 3 * NVARIANTS; q++) {
    /* near three families' pictures */
    float v[DIM], sum[DIM];
    for (int i = 0; i < DIM; i++)
      sum[i] = base[q % NFAMILIES][i] + base[(q + 3) % NFAMILIES][i] +
               base[(q + 5) % NFAMILIES][i];
    near_vector(v, sum, 0.5f, &seed);
    const char *const *opt = variants[q % NVARIANTS];
    const char *argv[20] = {"SEARCH", "VECTOR", (const char *)v};
    size_t lens[20] = {6, 6, sizeof v};
    int argc = 3, k = 10;
    for (; opt[argc - 3]; argc++) {
      argv[argc] = opt[argc - 3];
      lens[argc] = strlen(opt[argc - 3]);
      if (argc > 3 && !strcmp(opt[argc - 4], "K"))
        k = atoi(opt[argc - 3]);
    }
    redisReply *want = cmd_argv(single, argc, argv, lens);
    redisReply *got = cmd_argv(nodes[q % NSHARDS], argc, argv, lens);
    char what[64];
    snprintf(what, sizeof what, "COLLAPSE query %d (variant %d)", q,
             q % NVARIANTS);
    assert_same_hits(got, want, what);
    compared += (int)want->elements;
    short_pages += (int)want->elements < k;
    for (size_t h = 0; h < want->elements; h++) {
      const redisReply *hit = want->element[h];
      for (size_t f = 2; f + 1 < hit->elements; f += 2)
        if (!strcmp(hit->element[f]->str, "similar"))
          folded += (int)hit->element[f + 1]->integer;
    }
    freeReplyObject(want);
    freeReplyObject(got);
  }
  /* a query at one family's picture: its near-copies on the other shards
   * fold into the best one */
  for (int f = 0; f < NFAMILIES; f++) {
    redisReply *want = cmd(single, "SEARCH VECTOR %b K 3 TARGET IMAGE "
                           "COLLAPSE 0.8 RETURN 1 similar", base[f],
                           sizeof base[f]);
    redisReply *got = cmd(nodes[f % NSHARDS], "SEARCH VECTOR %b K 3 TARGET "
                          "IMAGE COLLAPSE 0.8 RETURN 1 similar", base[f],
                          sizeof base[f]);
    assert_same_hits(got, want, "COLLAPSE at a family's picture");
    assert_true(got->elements >= 1);
    /* (FAMILY - 1 copies fold at most; one shard holds two of them) */
    cross += got->element[0]->element[3]->integer >= 2;
    compared += (int)want->elements;
    freeReplyObject(want);
    freeReplyObject(got);
  }
  print_message("%d COLLAPSE searches: %d hits equal to the single "
                "database's, %d near-duplicates folded, %d pages short of "
                "K; %d of %d families folded across shards\n",
                3 * NVARIANTS + NFAMILIES, compared, folded, short_pages,
                cross, NFAMILIES);
  assert_true(folded > 0);
  assert_true(short_pages > 0);
  assert_true(cross > NFAMILIES / 2);

  /* TEXT and KEY queries, on a node that does not hold the key */
  redisReply *want = cmd(single, "SEARCH TEXT %s K 7 COLLAPSE 0.6 RETURN 2 "
                         "similar caption", "a small boat");
  redisReply *got = cmd(nodes[1], "SEARCH TEXT %s K 7 COLLAPSE 0.6 RETURN 2 "
                        "similar caption", "a small boat");
  assert_same_hits(got, want, "SEARCH TEXT ... COLLAPSE");
  freeReplyObject(want);
  freeReplyObject(got);
  want = cmd(single, "SEARCH KEY %s K 5 COLLAPSE 0.85 RETURN 1 similar",
             keys[1]);
  got = cmd(nodes[(owner(keys[1]) + 1) % NSHARDS], "SEARCH KEY %s K 5 "
            "COLLAPSE 0.85 RETURN 1 similar", keys[1]);
  assert_same_hits(got, want, "SEARCH KEY ... COLLAPSE, another node");
  freeReplyObject(want);
  freeReplyObject(got);

  /* HYBRID with words: the cluster's fused ranking folded as one
   * database folds its own */
  for (int q = 0; q < 4; q++) {
    float v[DIM];
    near_vector(v, base[q], 0.5f, &seed);
    check_hybrid_collapse(nodes, single, v, q % 2 ? 6 : 20,
                          q < 2 ? "small boat" : "picture copy",
                          q % 2 ? 0.8f : 0.4f);
  }

  /* as on one database: not with GROUPBY; the image vectors the shards
   * send are VLM.LOCAL's alone */
  expect_error(cmd(nodes[0], "SEARCH TEXT x GROUPBY year COLLAPSE 0.9"),
               "GROUPBY and COLLAPSE cannot be combined");
  expect_error(cmd(nodes[0], "SEARCH TEXT x RETURN 1 vlm_image_vec"),
               "unknown field 'vlm_image_vec'");
  got = cmd(nodes[0], "VLM.LOCAL SEARCH VECTOR %b K 3 TARGET IMAGE RETURN 1 "
            "vlm_image_vec", base[0], sizeof base[0]);
  assert_int_equal(got->type, REDIS_REPLY_ARRAY);
  assert_int_equal(got->elements, 3);
  for (size_t h = 0; h < got->elements; h++) {
    float iv[DIM];
    const redisReply *hit = got->element[h];
    assert_int_equal(hit->elements, 4);
    assert_true(image_vec_of(single, hit->element[0]->str, iv));
    assert_int_equal(hit->element[3]->len, sizeof iv);
    assert_memory_equal(hit->element[3]->str, iv, sizeof iv);
  }
  freeReplyObject(got);

  for (int i = 0; i < NADDED; i++) {
    redisReply *r = cmd(nodes[owner(keys[i])], "DEL %s", keys[i]);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    r = cmd(single, "DEL %s", keys[i]);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
  }
  for (int s = 0; s < NSHARDS; s++)
    redisFree(nodes[s]);
  redisFree(single);
}

/* ------------------------------------------------------ a shard down */

/* The single database's top k among the keys the shards other than
 * down hold: what ALLOWPARTIAL must answer. */
static void expect_partial(redisReply *got, redisContext *single,
                           const float *v, int k, int down) {
  redisReply *all = cmd(single, "SEARCH VECTOR %b K %d", v, DIM * 4, NROWS);
  assert_int_equal(got->type, REDIS_REPLY_ARRAY);
  assert_int_equal(got->elements, 8); /* the map as RESP2 pairs */
  assert_string_equal(got->element[0]->str, "shards");
  assert_int_equal(got->element[1]->integer, NSHARDS);
  assert_string_equal(got->element[2]->str, "shards_answered");
  assert_int_equal(got->element[3]->integer, NSHARDS - (down >= 0));
  assert_string_equal(got->element[4]->str, "missing");
  assert_int_equal(got->element[5]->elements, down >= 0);
  if (down >= 0) {
    char name[32];
    snprintf(name, sizeof name, "shard %d (127.0.0.1:%d)", down,
             G.ports[down]);
    assert_non_null(strstr(got->element[5]->element[0]->str, name));
  }
  assert_string_equal(got->element[6]->str, "results");
  redisReply *hits = got->element[7];
  size_t j = 0;
  for (size_t i = 0; i < all->elements && j < (size_t)k; i++) {
    const char *key = all->element[i]->element[0]->str;
    if (owner(key) == down)
      continue;
    assert_true(j < hits->elements);
    assert_string_equal(hits->element[j]->element[0]->str, key);
    assert_string_equal(hits->element[j]->element[1]->str,
                        all->element[i]->element[1]->str);
    j++;
  }
  assert_int_equal(hits->elements, j);
  freeReplyObject(all);
}

/* One HTTP/1.1 request to 127.0.0.1:port with a JSON body (may be
 * NULL); the response's status, its body's start in body. */
static int http_status(int port, const char *method, const char *path,
                       const char *json, char *body, size_t cap) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
    fail_msg("connect to the HTTP port %d: %s", port, strerror(errno));
  char head[512];
  size_t n = json ? strlen(json) : 0;
  int h = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: x\r\n"
                   "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n", method, path, n);
  assert_int_equal(write(fd, head, (size_t)h), h);
  if (n)
    assert_int_equal(write(fd, json, n), (ssize_t)n);
  char buf[8192];
  size_t len = 0;
  ssize_t got;
  while (len < sizeof buf - 1 &&
         (got = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
    len += (size_t)got;
  buf[len] = '\0';
  close(fd);
  int status = 0;
  if (sscanf(buf, "HTTP/1.1 %d", &status) != 1)
    fail_msg("%s %s: no HTTP status in '%.200s'", method, path, buf);
  const char *b = strstr(buf, "\r\n\r\n");
  snprintf(body, cap, "%s", b ? b + 4 : "");
  return status;
}

/* VLM.MIGRATE FENCE (what a live move raises for its last copy): a write
 * of a key of the range answers "try again" and writes nothing, whichever
 * way it comes (RESP, MULTI/EXEC, an HTTP write, an HTTP batch holding it
 * with other keys); other keys' writes and reads go on; UNFENCE lifts
 * it. */
static void test_fence_refuses_writes(void **state) {
  (void)state;
  const int s = 0;
  char in[64], out[64], path[128], json[4096], body[1024];
  key_of_shard(in, sizeof in, "fenced", s);
  int slot = vlm_key_slot(in, strlen(in));
  for (int n = 0;; n++) { /* a key of the shard outside the fence */
    snprintf(out, sizeof out, "open-%d", n);
    if (owner(out) == s && vlm_key_slot(out, strlen(out)) != slot)
      break;
  }
  float v[DIM];
  uint64_t seed = 77;
  unit_vector(v, &seed);
  int at = snprintf(json, sizeof json, "{\"image_vec\":[");
  for (int d = 0; d < DIM; d++)
    at += snprintf(json + at, sizeof json - at, "%s%.6f", d ? "," : "",
                   (double)v[d]);
  snprintf(json + at, sizeof json - at, "]}");
  char *vecjson = strdup(json + strlen("{\"image_vec\":"));
  vecjson[strlen(vecjson) - 1] = '\0'; /* the array alone */

  redisContext *c = connect_port(G.ports[s]);
  redisReply *r = cmd(c, "VLM.MIGRATE FENCE %d %d", slot, slot);
  if (r->type == REDIS_REPLY_ERROR)
    fail_msg("FENCE: %s", r->str);
  freeReplyObject(r);

  expect_error(cmd(c, "ADD %s IMAGEVEC %b", in, v, sizeof v), "TRYAGAIN");
  expect_error(cmd(c, "DEL %s", in), "TRYAGAIN");
  expect_status(cmd(c, "MULTI"), "OK");
  r = cmd(c, "ADD %s IMAGEVEC %b", in, v, sizeof v); /* refused queued */
  int queued_refused = r->type == REDIS_REPLY_ERROR &&
                       strstr(r->str, "TRYAGAIN");
  freeReplyObject(r);
  r = cmd(c, "EXEC");
  if (!queued_refused &&
      !(r->type == REDIS_REPLY_ERROR && strstr(r->str, "TRYAGAIN")))
    fail_msg("MULTI/ADD/EXEC of a fenced key: EXEC answered type %d '%s'",
             r->type, r->str ? r->str : "");
  freeReplyObject(r);

  int port = G.node[s].http_port;
  assert_true(port > 0);
  snprintf(path, sizeof path, "/v1/items/%s", in);
  int st = http_status(port, "PUT", path, json, body, sizeof body);
  if (st != 503)
    fail_msg("HTTP PUT of a fenced key: %d %s", st, body);
  snprintf(json, sizeof json,
           "{\"items\":[{\"key\":\"%s\",\"image_vec\":%s},"
           "{\"key\":\"%s\",\"image_vec\":%s}]}", out, vecjson, in, vecjson);
  st = http_status(port, "POST", "/v1/items:batch", json, body, sizeof body);
  if (st != 503 || !strstr(body, "items[1]"))
    fail_msg("an HTTP batch with a fenced key: %d %s", st, body);
  r = cmd(c, "EXISTS %s %s", in, out); /* reads answer; nothing written */
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  assert_int_equal(r->integer, 0);
  freeReplyObject(r);
  r = cmd(c, "ADD %s IMAGEVEC %b", out, v, sizeof v); /* other slots write */
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  freeReplyObject(r);

  expect_status(cmd(c, "VLM.MIGRATE UNFENCE"), "OK");
  st = http_status(port, "POST", "/v1/items:batch", json, body, sizeof body);
  if (st != 200)
    fail_msg("the HTTP batch after UNFENCE: %d %s", st, body);
  r = cmd(c, "DEL %s %s", in, out);
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  assert_int_equal(r->integer, 2);
  freeReplyObject(r);
  free(vecjson);
  redisFree(c);
}

static void test_shard_down(void **state) {
  (void)state;
  redisContext *c = connect_port(G.ports[0]);
  redisContext *single = connect_port(G.single.port);
  float v[DIM];
  uint64_t seed = 99;
  unit_vector(v, &seed);

  /* all up: ALLOWPARTIAL reports full coverage */
  redisReply *r = cmd(c, "SEARCH VECTOR %b K 10 ALLOWPARTIAL", v, sizeof v);
  expect_partial(r, single, v, 10, -1);
  freeReplyObject(r);

  /* shard 2 stopped: it does not answer within the timeout */
  kill(G.node[2].pid, SIGSTOP);
  double t0 = now_s();
  r = cmd(c, "SEARCH VECTOR %b K 10", v, sizeof v);
  double waited = now_s() - t0;
  char name[64];
  snprintf(name, sizeof name, "CLUSTERDOWN shard 2 (127.0.0.1:%d) did not "
           "answer within %d ms", G.ports[2], TIMEOUT_MS);
  expect_error(r, name);
  print_message("a stopped shard: -CLUSTERDOWN after %.3f s (timeout %d "
                "ms)\n", waited, TIMEOUT_MS);
  assert_true(waited >= TIMEOUT_MS / 1000.0 * 0.9 && waited < 5);
  r = cmd(c, "SEARCH VECTOR %b K 10 ALLOWPARTIAL", v, sizeof v);
  expect_partial(r, single, v, 10, 2);
  freeReplyObject(r);
  expect_error(cmd(c, "COUNT"), "CLUSTERDOWN");
  char key2[32];
  key_of_shard(key2, sizeof key2, "item", 2);
  expect_error(cmd(c, "SEARCH KEY %s", key2), "CLUSTERDOWN");
  /* INFO answers (cluster clients read it to connect), with what it has */
  r = cmd(c, "INFO keyspace");
  assert_non_null(strstr(r->str, "cluster_shards:3\r\n"
                                 "cluster_shards_answered:2"));
  freeReplyObject(r);
  r = cmd(c, "INFO");
  assert_non_null(strstr(r->str, "cluster_enabled:1"));
  freeReplyObject(r);
  /* local commands do not wait for it */
  r = cmd(c, "DBSIZE");
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  freeReplyObject(r);
  /* back: the node reconnects */
  kill(G.node[2].pid, SIGCONT);
  r = cmd(c, "SEARCH VECTOR %b K 10 ALLOWPARTIAL", v, sizeof v);
  expect_partial(r, single, v, 10, -1);
  freeReplyObject(r);

  /* shard 1 killed: refused at once, not after the timeout */
  kill(G.node[1].pid, SIGKILL);
  waitpid(G.node[1].pid, NULL, 0);
  G.node[1].pid = 0;
  t0 = now_s();
  r = cmd(c, "SEARCH VECTOR %b K 10", v, sizeof v);
  waited = now_s() - t0;
  snprintf(name, sizeof name, "CLUSTERDOWN shard 1 (127.0.0.1:%d)",
           G.ports[1]);
  expect_error(r, name);
  print_message("a killed shard: -CLUSTERDOWN after %.3f s\n", waited);
  assert_true(waited < TIMEOUT_MS / 1000.0 * 0.8);
  r = cmd(c, "SEARCH VECTOR %b K 20 ALLOWPARTIAL", v, sizeof v);
  expect_partial(r, single, v, 20, 1);
  freeReplyObject(r);
  /* restarted: served again */
  start_node(1);
  r = cmd(c, "SEARCH VECTOR %b K 20", v, sizeof v);
  redisReply *want = cmd(single, "SEARCH VECTOR %b K 20", v, sizeof v);
  assert_same_hits(r, want, "after restart");
  freeReplyObject(r);
  freeReplyObject(want);

  /* SIGTERM while a search waits on a stopped shard: answered, exit 0 */
  kill(G.node[2].pid, SIGSTOP);
  redisAppendCommand(c, "SEARCH VECTOR %b K 10", v, sizeof v);
  redisBufferWrite(c, &(int){0});
  usleep(100000);
  t0 = now_s();
  kill(G.node[0].pid, SIGTERM);
  void *reply = NULL;
  assert_int_equal(redisGetReply(c, &reply), REDIS_OK);
  expect_error(reply, "CLUSTERDOWN");
  int st = vlm_test_server_stop(&G.node[0], 10);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  print_message("SIGTERM with a search waiting on a stopped shard: exit 0 "
                "after %.3f s\n", now_s() - t0);
  kill(G.node[2].pid, SIGCONT);

  /* SIGTERM after a client sent a TEXT search and left, while its
   * embedding waits in a 2 s batch window: the search and its fan-out
   * still run, the server exits 0, nothing is left behind (the sanitizer
   * build's leak check reads the log) */
  start_node_window(0, "2000000");
  redisFree(c);
  c = connect_port(G.ports[0]);
  redisAppendCommand(c, "SEARCH TEXT %s K 3", "a red car");
  redisBufferWrite(c, &(int){0});
  usleep(200000);
  redisFree(c);
  usleep(100000);
  t0 = now_s();
  st = vlm_test_server_stop(&G.node[0], 20);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  print_message("SIGTERM with an orphaned search in the batcher: exit 0 "
                "after %.3f s\n", now_s() - t0);
  start_node(0);
  redisFree(single);
}

/* ------------------------------------------------------ CLUSTER RELOAD */

static void test_reload(void **state) {
  (void)state;
  redisContext *c = connect_port(G.ports[0]);
  redisContext *single = connect_port(G.single.port);
  redisReply *r = cmd(c, "CLUSTER RELOAD");
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  assert_int_equal(r->integer, 0); /* nothing changed */
  freeReplyObject(r);
  /* another slot assignment: refused, the served map kept */
  write_map(4000);
  expect_error(cmd(c, "CLUSTER RELOAD"), "assigns the slots differently");
  const char *bad = "{\"shards\": [";
  vlm_test_spit(G.map, bad, strlen(bad));
  expect_error(cmd(c, "CLUSTER RELOAD"), "the served map is unchanged");
  write_map(5000);
  char key[32], want[64];
  key_of_shard(key, sizeof key, "reload", 2);
  int slot = vlm_key_slot(key, strlen(key));

  /* shard 2 moves to another port: the others learn it on RELOAD */
  vlm_test_server_stop(&G.node[2], 10);
  int old_port = G.ports[2];
  do
    G.ports[2] = free_port();
  while (G.ports[2] == old_port);
  write_map(5000);
  start_node(2);
  float v[DIM];
  uint64_t seed = 31;
  unit_vector(v, &seed);
  snprintf(want, sizeof want, "CLUSTERDOWN shard 2 (127.0.0.1:%d)",
           old_port);
  expect_error(cmd(c, "SEARCH VECTOR %b", v, sizeof v), want);
  snprintf(want, sizeof want, "MOVED %d 127.0.0.1:%d", slot, old_port);
  expect_error(cmd(c, "GET %s", key), want);
  for (int s = 0; s < 2; s++) {
    redisContext *n = connect_port(G.ports[s]);
    r = cmd(n, "CLUSTER RELOAD");
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    redisFree(n);
  }
  snprintf(want, sizeof want, "MOVED %d 127.0.0.1:%d", slot, G.ports[2]);
  expect_error(cmd(c, "GET %s", key), want);
  char id[41];
  expected_id(2, id);
  r = cmd(c, "CLUSTER SLOTS");
  int seen = 0;
  for (size_t i = 0; i < r->elements; i++) {
    redisReply *node = r->element[i]->element[2];
    if (G.cluster->owner[r->element[i]->element[0]->integer] != 2)
      continue;
    assert_int_equal(node->element[1]->integer, G.ports[2]);
    assert_string_equal(node->element[2]->str, id);
    seen++;
  }
  assert_int_equal(seen, 1);
  freeReplyObject(r);
  r = cmd(c, "SEARCH VECTOR %b K 10", v, sizeof v);
  redisReply *w = cmd(single, "SEARCH VECTOR %b K 10", v, sizeof v);
  assert_same_hits(r, w, "after CLUSTER RELOAD");
  freeReplyObject(r);
  freeReplyObject(w);
  redisFree(c);
  redisFree(single);
}

/* ------------------------------------------- a slot range moved, served */

/* Slots 12000-13000 move from shard 0 to shard 1 with `vlmdb cluster
 * move` while those two nodes are stopped; they start again on the new
 * map, node 2 still serves the old one until CLUSTER RELOAD.  Keyed
 * commands end at the new owner either way, and every search through
 * any node equals the single database's, over all NROWS items: none
 * lost, none counted twice. */
static void test_move_then_reload(void **state) {
  (void)state;
  char key[32] = "", want[128], args[4 * PATH_MAX], old_map[PATH_MAX];
  for (int i = 0; i < NROWS && !key[0]; i++) {
    snprintf(key, sizeof key, "%s%d", i % 5 ? "item" : "{group}item", i);
    int slot = vlm_key_slot(key, strlen(key));
    if (slot < 12000 || slot > 13000)
      key[0] = '\0';
  }
  assert_true(key[0]);
  int slot = vlm_key_slot(key, strlen(key));
  size_t len;
  uint8_t *text = vlm_test_slurp(G.map, &len);
  snprintf(old_map, sizeof old_map, "%s/old.json", G.dir);
  vlm_test_spit(old_map, text, len);
  free(text);
  for (int s = 0; s < 2; s++)
    vlm_test_server_stop(&G.node[s], 10);
  snprintf(args, sizeof args, "cluster move --map %s --slots 12000-13000 "
           "--from %s --to %s", G.map, G.shard_db[0], G.shard_db[1]);
  vlmdb_ok(args);
  /* the moved database is not served under the old map */
  int rc;
  snprintf(args, sizeof args, "'%s' serve --db %s --cluster %s --port 0 "
           "2>&1", G.bin, G.shard_db[0], old_map);
  char *out = run_shell(args, &rc);
  assert_int_not_equal(rc, 0);
  if (!strstr(out, "cluster move"))
    fail_msg("shard 0 served under the old map: %s", out);
  free(out);
  for (int s = 0; s < 2; s++)
    start_node(s);
  redisContext *c[NSHARDS], *single = connect_port(G.single.port);
  for (int s = 0; s < NSHARDS; s++)
    c[s] = connect_port(G.ports[s]);
  /* node 2, on the old map, sends the key to shard 0, which sends it on */
  snprintf(want, sizeof want, "MOVED %d 127.0.0.1:%d", slot, G.ports[0]);
  expect_error(cmd(c[2], "GET %s", key), want);
  snprintf(want, sizeof want, "MOVED %d 127.0.0.1:%d", slot, G.ports[1]);
  expect_error(cmd(c[0], "GET %s", key), want);
  redisReply *r = cmd(c[2], "CLUSTER RELOAD");
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  freeReplyObject(r);
  expect_error(cmd(c[2], "GET %s", key), want);
  r = cmd(c[1], "GET %s", key);
  redisReply *w = cmd(single, "GET %s", key);
  assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
  assert_int_equal(r->type, w->type);
  assert_int_equal(r->elements, w->elements);
  freeReplyObject(r);
  freeReplyObject(w);
  /* a node whose database does not hold what a map gives it keeps its
   * map: shard 0 offered the old one back */
  uint8_t *new_text = vlm_test_slurp(G.map, &len);
  size_t old_len;
  text = vlm_test_slurp(old_map, &old_len);
  vlm_test_spit(G.map, text, old_len);
  free(text);
  expect_error(cmd(c[0], "CLUSTER RELOAD"), "its database holds 0-5000");
  vlm_test_spit(G.map, new_text, len);
  free(new_text);
  r = cmd(c[0], "CLUSTER RELOAD");
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  freeReplyObject(r);
  /* every item once, through any node */
  float v[DIM];
  uint64_t seed = 47;
  unit_vector(v, &seed);
  w = cmd(single, "SEARCH VECTOR %b K %d", v, sizeof v, NROWS);
  for (int s = 0; s < NSHARDS; s++) {
    r = cmd(c[s], "SEARCH VECTOR %b K %d", v, sizeof v, NROWS);
    snprintf(want, sizeof want, "all items through node %d after the move",
             s);
    assert_same_hits(r, w, want);
    freeReplyObject(r);
  }
  freeReplyObject(w);
  vlm_cluster_free(G.cluster);
  VLM_CHECK(vlm_cluster_load(G.map, NULL, NULL, &G.cluster));
  for (int s = 0; s < NSHARDS; s++)
    redisFree(c[s]);
  redisFree(single);
}

/* ------------------------------------------------ live moves (--live) */

#define LIVE_KEYS 40
#define LIVE_FIRST 12000
#define LIVE_LAST 13000

static char live_keys[LIVE_KEYS][32];

/* LIVE_KEYS keys for the writer, half of them in the moved range. */
static void pick_live_keys(void) {
  int in = 0, out = 0;
  for (int n = 0; in + out < LIVE_KEYS; n++) {
    char k[32];
    snprintf(k, sizeof k, "live-%d", n);
    int slot = vlm_key_slot(k, strlen(k));
    int mine = slot >= LIVE_FIRST && slot <= LIVE_LAST;
    if (mine && in < LIVE_KEYS / 2)
      snprintf(live_keys[in++ + out], 32, "%s", k);
    else if (!mine && out < LIVE_KEYS / 2)
      snprintf(live_keys[in + out++], 32, "%s", k);
  }
}

/* A cluster client's command: follows -MOVED, retries -TRYAGAIN (as
 * redis-cli -c and the cluster libraries do).  NULL on a lost
 * connection.  For the writer child: no cmocka here. */
static redisReply *cluster_argv(redisContext **conns, int argc,
                                const char **argv, const size_t *lens) {
  int port = G.ports[owner(argv[1])];
  for (int tries = 0; tries < 5000; tries++) {
    int s = 0;
    while (s < NSHARDS && G.ports[s] != port)
      s++;
    if (s == NSHARDS)
      return NULL;
    if (!conns[s]) {
      struct timeval tv = {10, 0};
      conns[s] = redisConnectWithTimeout("127.0.0.1", port, tv);
      if (!conns[s] || conns[s]->err)
        return NULL;
      redisSetTimeout(conns[s], tv);
    }
    redisReply *r = redisCommandArgv(conns[s], argc, argv, lens);
    if (!r)
      return NULL;
    if (r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "MOVED ", 6)) {
      const char *colon = strrchr(r->str, ':');
      port = colon ? atoi(colon + 1) : port;
      freeReplyObject(r);
      continue;
    }
    if (r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "TRYAGAIN", 8)) {
      freeReplyObject(r);
      usleep(2000);
      continue;
    }
    return r;
  }
  return NULL;
}

/* The writer: ADD, UPSERT and DEL of the live keys through the cluster
 * and the same on the single database, until stop exists; every answer
 * must be the single database's (an integer: a lost or doubled write
 * shows).  Exit status 0, or what went wrong. */
static int live_writer(const char *stop) {
  redisContext *conns[NSHARDS] = {0};
  struct timeval tv = {10, 0};
  redisContext *single = redisConnectWithTimeout("127.0.0.1", G.single.port,
                                                 tv);
  if (!single || single->err)
    return 10;
  uint64_t seed = 4242;
  for (long op = 0; access(stop, F_OK) != 0; op++) {
    const char *key = live_keys[(int)(vlm_test_uniform(&seed) * LIVE_KEYS)];
    float v[DIM];
    unit_vector(v, &seed);
    int kind = (int)(vlm_test_uniform(&seed) * 3);
    const char *argv[4] = {kind == 0 ? "ADD" : kind == 1 ? "UPSERT" : "DEL",
                           key, "IMAGEVEC", (const char *)v};
    size_t lens[4] = {strlen(argv[0]), strlen(key), 8, sizeof v};
    int argc = kind == 2 ? 2 : 4;
    redisReply *a = cluster_argv(conns, argc, argv, lens);
    redisReply *b = redisCommandArgv(single, argc, argv, lens);
    if (!a || !b)
      return 11;
    int same = a->type == REDIS_REPLY_INTEGER &&
               b->type == REDIS_REPLY_INTEGER && a->integer == b->integer;
    if (!same)
      fprintf(stderr, "writer: %s %s: cluster %s/%lld, single %lld\n",
              argv[0], key, a->str ? a->str : "", a->integer, b->integer);
    freeReplyObject(a);
    freeReplyObject(b);
    if (!same)
      return 12;
  }
  for (int s = 0; s < NSHARDS; s++)
    if (conns[s])
      redisFree(conns[s]);
  redisFree(single);
  return 0;
}

static int str_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A coordinated search through node c during a move: no key twice, and
 * every item the writer does not touch (nstable of them) there. */
static void check_search_during_move(redisContext *c, long nstable) {
  float v[DIM];
  uint64_t seed = 99;
  unit_vector(v, &seed);
  redisReply *r = cmd(c, "SEARCH VECTOR %b K 10000", v, sizeof v);
  if (r->type != REDIS_REPLY_ARRAY)
    fail_msg("SEARCH during the move: %s", r->str ? r->str : "?");
  char **keys = calloc(r->elements + 1, sizeof *keys);
  long stable = 0;
  for (size_t h = 0; h < r->elements; h++) {
    keys[h] = r->element[h]->element[0]->str;
    stable += strncmp(keys[h], "live-", 5) != 0;
  }
  qsort(keys, r->elements, sizeof *keys, str_cmp);
  for (size_t h = 1; h < r->elements; h++)
    if (!strcmp(keys[h], keys[h - 1]))
      fail_msg("SEARCH during the move: %s twice", keys[h]);
  if (stable != nstable)
    fail_msg("SEARCH during the move: %ld of the %ld items not written "
             "meanwhile", stable, nstable);
  free(keys);
  freeReplyObject(r);
}

/* While a live move is stopped anywhere (copies on their way in, the
 * switch made or not, the old copies not yet dropped): COUNT through
 * every node, the nodes' DBSIZE summed and SCAN over every node each
 * count every key once, as the single database does (no writer runs). */
static void check_counts_during_move(const char *when) {
  redisContext *single = connect_port(G.single.port);
  redisReply *r = cmd(single, "DBSIZE");
  long long n = r->integer;
  freeReplyObject(r);
  redisFree(single);
  long long dbsize = 0;
  size_t nkeys = 0, cap = 1024;
  char **keys = malloc(cap * sizeof *keys);
  for (int s = 0; s < NSHARDS; s++) {
    redisContext *c = connect_port(G.ports[s]);
    r = cmd(c, "COUNT");
    if (r->type != REDIS_REPLY_INTEGER || r->integer != n)
      fail_msg("%s: COUNT on node %d says %lld, the single database holds "
               "%lld", when, s, r->type == REDIS_REPLY_INTEGER
                                  ? r->integer : -1, n);
    freeReplyObject(r);
    r = cmd(c, "DBSIZE");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    dbsize += r->integer;
    freeReplyObject(r);
    char cursor[32] = "0";
    do {
      r = cmd(c, "SCAN %s COUNT 1000", cursor);
      assert_int_equal(r->type, REDIS_REPLY_ARRAY);
      snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
      for (size_t i = 0; i < r->element[1]->elements; i++) {
        if (nkeys == cap)
          keys = realloc(keys, (cap *= 2) * sizeof *keys);
        keys[nkeys++] = strdup(r->element[1]->element[i]->str);
      }
      freeReplyObject(r);
    } while (strcmp(cursor, "0"));
    redisFree(c);
  }
  if (dbsize != n)
    fail_msg("%s: the nodes' DBSIZE sum to %lld, the single database holds "
             "%lld", when, dbsize, n);
  qsort(keys, nkeys, sizeof *keys, str_cmp);
  for (size_t i = 1; i < nkeys; i++)
    if (!strcmp(keys[i], keys[i - 1]))
      fail_msg("%s: SCAN over the nodes gives %s twice", when, keys[i]);
  if ((long long)nkeys != n)
    fail_msg("%s: SCAN over the nodes gives %zu keys, the single database "
             "holds %lld", when, nkeys, n);
  for (size_t i = 0; i < nkeys; i++)
    free(keys[i]);
  free(keys);
}

/* Start `vlmdb cluster move --live ...` in the background. */
static pid_t spawn_move(int from, int to, int batch) {
  char log[PATH_MAX], fs[8], ts[8], bs[8], slots[32];
  snprintf(log, sizeof log, "%s/move.log", G.dir);
  snprintf(fs, sizeof fs, "%d", from);
  snprintf(ts, sizeof ts, "%d", to);
  snprintf(bs, sizeof bs, "%d", batch);
  snprintf(slots, sizeof slots, "%d-%d", LIVE_FIRST, LIVE_LAST);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execl(G.bin, G.bin, "cluster", "move", "--live", "--map", G.map,
          "--slots", slots, "--from", fs, "--to", ts, "--batch", bs,
          "--grace", "50", (char *)NULL);
    _exit(127);
  }
  return pid;
}

static int wait_move(pid_t pid) {
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

static void print_move_log(void) {
  char log[PATH_MAX];
  snprintf(log, sizeof log, "%s/move.log", G.dir);
  size_t len = 0;
  char *text = (char *)vlm_test_slurp(log, &len);
  if (text) {
    print_message("%.*s", (int)len, text);
    free(text);
  }
  unlink(log);
}

/* After a move: every node's coordinated search is the single database's
 * (each item once, the same scores and fields), the nodes' DBSIZEs add up
 * to its, every item of the range is on its new owner (to) bit for bit as
 * the single database holds it, and the old owner redirects there. */
static void check_after_move(int from, int to) {
  redisContext *c[NSHARDS], *single = connect_port(G.single.port);
  for (int s = 0; s < NSHARDS; s++)
    c[s] = connect_port(G.ports[s]);
  vlm_cluster_free(G.cluster);
  VLM_CHECK(vlm_cluster_load(G.map, NULL, NULL, &G.cluster));
  float v[DIM];
  uint64_t seed = 123;
  unit_vector(v, &seed);
  redisReply *w = cmd(single, "SEARCH VECTOR %b K 10000", v, sizeof v);
  for (int s = 0; s < NSHARDS; s++) {
    char what[64];
    redisReply *r = cmd(c[s], "SEARCH VECTOR %b K 10000", v, sizeof v);
    snprintf(what, sizeof what, "through node %d after the live move", s);
    assert_same_hits(r, w, what);
    freeReplyObject(r);
  }
  long long total = 0;
  for (int s = 0; s < NSHARDS; s++) {
    redisReply *r = cmd(c[s], "DBSIZE");
    total += r->integer;
    freeReplyObject(r);
  }
  redisReply *r = cmd(single, "DBSIZE");
  assert_int_equal(total, r->integer);
  freeReplyObject(r);
  int moved = 0;
  for (size_t h = 0; h < w->elements; h++) {
    const char *key = w->element[h]->element[0]->str;
    int slot = vlm_key_slot(key, strlen(key));
    if (slot < LIVE_FIRST || slot > LIVE_LAST)
      continue;
    assert_int_equal(owner(key), to);
    redisReply *a = cmd(c[to], "VLM.DUMP %s", key);
    redisReply *b = cmd(single, "VLM.DUMP %s", key);
    assert_int_equal(a->type, REDIS_REPLY_ARRAY);
    assert_int_equal(a->element[0]->type, REDIS_REPLY_STRING);
    if (a->element[0]->len != b->element[0]->len ||
        memcmp(a->element[0]->str, b->element[0]->str, a->element[0]->len))
      fail_msg("%s on shard %d is not the single database's item", key, to);
    freeReplyObject(a);
    freeReplyObject(b);
    a = cmd(c[from], "VLM.LOCAL EXISTS %s", key);
    assert_int_equal(a->integer, 0);
    freeReplyObject(a);
    if (!moved++) {
      char want[64];
      snprintf(want, sizeof want, "MOVED %d 127.0.0.1:%d", slot,
               G.ports[to]);
      expect_error(cmd(c[from], "GET %s", key), want);
      expect_error(cmd(c[3 - from - to], "GET %s", key), want);
    }
  }
  assert_true(moved > 0);
  freeReplyObject(w);
  for (int s = 0; s < NSHARDS; s++)
    redisFree(c[s]);
  redisFree(single);
}

/* Slots 12000-13000 moved from shard 1 to shard 0 while both serve, a
 * client writing keys of the range and others (following -MOVED and
 * -TRYAGAIN) and another searching: no write lost or doubled (every
 * answer is the single database's), no search with a key twice or
 * without an item that lives throughout; afterwards the cluster is the
 * single database.  Then moved back, the move command killed -9 midway
 * and run again; and once more with the destination node killed -9. */
static void test_live_move(void **state) {
  (void)state;
  pick_live_keys();
  /* the range's shard (1 after test_move_then_reload, else 0) */
  int from = G.cluster->owner[LIVE_FIRST], to = from == 0 ? 1 : 0;
  redisContext *single = connect_port(G.single.port), *c[NSHARDS];
  for (int s = 0; s < NSHARDS; s++)
    c[s] = connect_port(G.ports[s]);
  redisReply *r = cmd(single, "DBSIZE");
  long nstable = (long)r->integer;
  freeReplyObject(r);
  for (int k = 0; k < LIVE_KEYS; k++) { /* none of them yet */
    r = cmd(single, "EXISTS %s", live_keys[k]);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
  }
  char stop[PATH_MAX];
  snprintf(stop, sizeof stop, "%s/stop-writer", G.dir);
  unlink(stop);
  fflush(NULL);
  pid_t writer = fork();
  assert_true(writer >= 0);
  if (writer == 0)
    _exit(live_writer(stop));
  usleep(100000);
  pid_t mover = spawn_move(from, to, 4);
  int searches = 0, st;
  double t0 = now_s();
  while (waitpid(mover, &st, WNOHANG) == 0) {
    check_search_during_move(c[searches % NSHARDS], nstable);
    searches++;
    if (now_s() - t0 > 120)
      fail_msg("the live move did not finish in 120 s");
  }
  usleep(100000); /* writes after the switch */
  vlm_test_spit(stop, "", 0);
  int wst;
  assert_int_equal(waitpid(writer, &wst, 0), writer);
  print_move_log();
  print_message("live move with a writer: %d searches during it, %.2f s\n",
                searches, now_s() - t0);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0)
    fail_msg("the writer saw the cluster differ from the single database "
             "(exit %d)", WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
  for (int s = 0; s < NSHARDS; s++)
    redisFree(c[s]);
  redisFree(single);
  check_after_move(from, to);

  /* back, the move command stopped three times on its way (counts
   * checked), killed -9 midway, run again */
  pid_t pid = spawn_move(to, from, 1);
  for (int i = 0; i < 3; i++) {
    char when[64];
    usleep(15000);
    kill(pid, SIGSTOP);
    snprintf(when, sizeof when, "move stopped after %d ms", 15 * (i + 1));
    check_counts_during_move(when);
    kill(pid, SIGCONT);
  }
  kill(pid, SIGKILL);
  int rc = wait_move(pid);
  print_message("move command killed (status %d); again\n", rc);
  check_counts_during_move("move command killed");
  pid = spawn_move(to, from, 1);
  rc = wait_move(pid);
  print_move_log();
  assert_int_equal(rc, 0);
  check_after_move(to, from);

  /* and over again, the destination node killed -9 midway */
  pid = spawn_move(from, to, 1);
  usleep(40000);
  kill(G.node[to].pid, SIGKILL);
  rc = wait_move(pid);
  print_message("node %d killed during the move (move status %d)\n", to,
                rc);
  vlm_test_server_stop(&G.node[to], 5);
  start_node(to); /* serves its widened database under the map it has */
  pid = spawn_move(from, to, 1);
  rc = wait_move(pid);
  print_move_log();
  assert_int_equal(rc, 0);
  check_after_move(from, to);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_keyslot_matches_redis_server),
      cmocka_unit_test(test_topology),
      cmocka_unit_test(test_serve_refuses_mismatch),
      cmocka_unit_test(test_moved),
      cmocka_unit_test(test_redis_cli_cluster_mode),
      cmocka_unit_test(test_redis_py_cluster),
      cmocka_unit_test(test_search_equals_single_database),
      cmocka_unit_test(test_collapse_equals_single_database),
      cmocka_unit_test(test_reload),
      cmocka_unit_test(test_move_then_reload),
      cmocka_unit_test(test_live_move),
      cmocka_unit_test(test_fence_refuses_writes),
      cmocka_unit_test(test_shard_down),
  };
  const char *only = getenv("VLM_TEST_FILTER");
  if (only && *only)
    cmocka_set_test_filter(only);
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
