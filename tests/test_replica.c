/* test_replica.c - read replicas by log shipping, with real processes on
 * 127.0.0.1: a primary `vlmdb serve` and replicas started with
 * --replica-of (each seeded over the network from the primary's online
 * backup).  Writes on the primary appear on a replica in order (a MULTI
 * batch's keys together, a counter never going back) and end up identical
 * (every key's GET reply, ids and vectors included); a replica refuses
 * writes; INFO replication on both sides; a replica killed -9 while it
 * applies resumes after restart with no batch lost or applied twice (the
 * same items and batch number as the primary, `vlmdb verify` clean); the
 * primary killed -9: after REPLICAOF NO ONE every batch the replica had
 * reported applied is there and it takes writes; roles survive restarts
 * without --replica-of (REPLICAOF's file); CLUSTER SLOTS lists a shard's
 * replicas after it, and a replica served with the map answers CLUSTER
 * MYID and NODES as itself; tools/haproxy/vlmdb.cfg in front of two
 * replicas keeps answering when one is killed (skipped, with the reason,
 * when haproxy is not installed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"
#include "vlm_slot.h"
#include "vlmdb.h"

#define MODEL "tests/fixtures/clip-tiny"
#define DIM 48 /* clip-tiny's */

static struct {
  char dir[PATH_MAX];
  char *bin;
  char pdb[PATH_MAX], rdb[2][PATH_MAX];
  int pport, rport[2];
  vlm_test_server primary, replica[2];
  int nkeys;      /* k0 .. k<nkeys-1> written by the tests */
} G;

/* ------------------------------------------------------------ helpers */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
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

/* `vlmdb args...` must exit 0; its output (malloc'd). */
static char *vlmdb_ok(const char *args) {
  char cmdline[4 * PATH_MAX];
  snprintf(cmdline, sizeof cmdline, "'%s' %s 2>&1", G.bin, args);
  fflush(NULL);
  FILE *p = popen(cmdline, "r");
  assert_non_null(p);
  size_t cap = 1 << 16, len = 0, n;
  char *out = malloc(cap);
  while ((n = fread(out + len, 1, cap - len - 1, p)) > 0)
    len += n;
  out[len] = '\0';
  int st = pclose(p);
  if (!WIFEXITED(st) || WEXITSTATUS(st))
    fail_msg("vlmdb %s failed:\n%s", args, out);
  return out;
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
  if (!c || c->err)
    fail_msg("connect to %d: %s", port, c ? c->errstr : "out of memory");
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

static void expect_ok(redisReply *r, const char *what) {
  if (r->type == REDIS_REPLY_ERROR)
    fail_msg("%s: %s", what, r->str);
  freeReplyObject(r);
}

/* A field of INFO section as an integer (-1 if absent). */
static long long info_field(redisContext *c, const char *section,
                            const char *field) {
  redisReply *r = cmd(c, "INFO %s", section);
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  char pat[128];
  snprintf(pat, sizeof pat, "\n%s:", field);
  const char *p = strstr(r->str, pat);
  long long v = p ? atoll(p + strlen(pat)) : -1;
  freeReplyObject(r);
  return v;
}

static void info_text(redisContext *c, const char *section, char *out,
                      size_t cap) {
  redisReply *r = cmd(c, "INFO %s", section);
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  snprintf(out, cap, "%s", r->str);
  freeReplyObject(r);
}

/* Deterministic vectors per (key, version). */
static void vec_of(int key, int version, float *v) {
  uint64_t s = (uint64_t)key * 1000003u + (uint64_t)version * 7919u + 11;
  double ss = 0;
  for (int i = 0; i < DIM; i++) {
    v[i] = (float)(vlm_test_uniform(&s) * 2 - 1);
    ss += (double)v[i] * v[i];
  }
  for (int i = 0; i < DIM; i++)
    v[i] = (float)(v[i] / sqrt(ss));
}

/* kind key caption with image and text vectors (no embedding). */
static redisReply *write_item(redisContext *c, const char *kind,
                              const char *key, int id, int version) {
  float v[DIM];
  vec_of(id, version, v);
  char cap[64];
  snprintf(cap, sizeof cap, "item %d version %d", id, version);
  const char *argv[8] = {kind, key, "TEXT", cap, "IMAGEVEC", (char *)v,
                         "TEXTVEC", (char *)v};
  size_t lens[8] = {strlen(kind), strlen(key), 4, strlen(cap), 8,
                    sizeof v, 7, sizeof v};
  redisReply *r = redisCommandArgv(c, 8, argv, lens);
  if (!r)
    fail_msg("%s %s: no reply: %s", kind, key, c->errstr);
  return r;
}

/* backlog: --repl-backlog's value, or NULL for the default */
static void start_primary(const char *backlog) {
  char port[16], log[PATH_MAX];
  snprintf(port, sizeof port, "%d", G.pport);
  snprintf(log, sizeof log, "%s/primary.log", G.dir);
  const char *args[] = {"--db", G.pdb, "--port", port, "--no-http",
                        "--threads", "2", backlog ? "--repl-backlog" : NULL,
                        backlog, NULL};
  assert_int_equal(vlm_test_server_spawn(&G.primary, G.bin, args, log, 60),
                   0);
}

static void start_replica(int k) {
  char port[16], of[64], log[PATH_MAX];
  snprintf(port, sizeof port, "%d", G.rport[k]);
  snprintf(of, sizeof of, "127.0.0.1:%d", G.pport);
  snprintf(log, sizeof log, "%s/replica%d.log", G.dir, k);
  const char *args[] = {"--db", G.rdb[k], "--port", port, "--no-http",
                        "--threads", "2", "--replica-of", of, NULL};
  int rc = vlm_test_server_spawn(&G.replica[k], G.bin, args, log, 120);
  if (rc != 0) {
    char out[8192] = "";
    FILE *f = fopen(log, "r");
    if (f) {
      size_t n = fread(out, 1, sizeof out - 1, f);
      out[n] = '\0';
      fclose(f);
    }
    fail_msg("replica %d did not start (%d):\n%s", k, rc, out);
  }
}

/* Replica k's server stopped and started again without --replica-of:
 * what it follows now comes from its database (REPLICAOF's file). */
static void restart_plain(int k) {
  vlm_test_server_stop(&G.replica[k], 30);
  char port[16], log[PATH_MAX];
  snprintf(port, sizeof port, "%d", G.rport[k]);
  snprintf(log, sizeof log, "%s/replica%d.log", G.dir, k);
  const char *args[] = {"--db", G.rdb[k], "--port", port, "--no-http",
                        "--threads", "2", NULL};
  assert_int_equal(vlm_test_server_spawn(&G.replica[k], G.bin, args, log, 120),
                   0);
}

/* Wait until replica k has applied batch seq (its reported offset),
 * with master_port (when > 0) its primary's and its link up since (a
 * successful VLM.SYNC); it may restart meanwhile (seeding again), so each
 * poll connects anew. */
static void wait_following(int k, int master_port, long long seq,
                           double timeout_s) {
  double deadline = now_s() + timeout_s;
  long long at = -1;
  while (now_s() < deadline) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", G.rport[k], tv);
    redisReply *r = NULL;
    if (c && !c->err) {
      redisSetTimeout(c, tv);
      r = redisCommand(c, "INFO replication");
    }
    if (r && r->type == REDIS_REPLY_STRING) {
      const char *p = strstr(r->str, "\nslave_repl_offset:");
      at = p ? atoll(p + 19) : -1;
      const char *mp = strstr(r->str, "\nmaster_port:");
      if (master_port > 0 &&
          (!mp || atoi(mp + 13) != master_port ||
           !strstr(r->str, "master_link_status:up")))
        at = -1;
    }
    if (r)
      freeReplyObject(r);
    if (c)
      redisFree(c);
    if (at >= seq)
      break;
    sleep_ms(20);
  }
  if (at < seq)
    fail_msg("replica %d at batch %lld after %.0f s, primary at %lld", k, at,
             timeout_s, seq);
}

static void wait_applied(int k, long long seq, double timeout_s) {
  wait_following(k, 0, seq, timeout_s);
}

static long long primary_seq(void) {
  redisContext *c = connect_port(G.pport);
  long long s = info_field(c, "replication", "master_repl_offset");
  redisFree(c);
  return s;
}

/* Two replies are the same, recursively. */
static int same_reply(const redisReply *a, const redisReply *b) {
  if (a->type != b->type || a->integer != b->integer || a->len != b->len ||
      a->elements != b->elements)
    return 0;
  if (a->len && memcmp(a->str, b->str, a->len))
    return 0;
  for (size_t i = 0; i < a->elements; i++)
    if (!same_reply(a->element[i], b->element[i]))
      return 0;
  return 1;
}

/* Every key of the server at port a reads the same on the one at b (GET
 * with its vectors), and both hold the same number of keys. */
static void expect_same_ports(int pa, int pb) {
  int k = pb;
  redisContext *p = connect_port(pa), *r = connect_port(pb);
  long long np = 0, checked = 0;
  redisReply *a = cmd(p, "DBSIZE"), *b = cmd(r, "DBSIZE");
  np = a->integer;
  if (a->integer != b->integer)
    fail_msg("port %d holds %lld keys, port %d %lld", k, b->integer, pa,
             a->integer);
  freeReplyObject(a);
  freeReplyObject(b);
  char cursor[32] = "0";
  do {
    redisReply *s = cmd(p, "SCAN %s COUNT 200", cursor);
    assert_int_equal(s->type, REDIS_REPLY_ARRAY);
    snprintf(cursor, sizeof cursor, "%s", s->element[0]->str);
    redisReply *keys = s->element[1];
    for (size_t i = 0; i < keys->elements; i++) {
      const char *key = keys->element[i]->str;
      a = cmd(p, "GET %s WITHVECTORS", key);
      b = cmd(r, "GET %s WITHVECTORS", key);
      if (!same_reply(a, b))
        fail_msg("port %d: %s reads differently (types %d, %d)", k, key,
                 a->type, b->type);
      freeReplyObject(a);
      freeReplyObject(b);
      checked++;
    }
    freeReplyObject(s);
  } while (strcmp(cursor, "0"));
  assert_int_equal(checked, np);
  redisFree(p);
  redisFree(r);
}

/* Replica k holds what the primary does. */
static void expect_same(int k) { expect_same_ports(G.pport, G.rport[k]); }

/* A child process writing ADD k<from> .. k<to-1> to the primary, one
 * batch each, in order; dies with the test. */
static pid_t spawn_writer(int from, int to) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid)
    return pid;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct timeval tv = {10, 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", G.pport, tv);
  if (!c || c->err)
    _exit(2);
  for (int i = from; i < to; i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i);
    float v[DIM];
    vec_of(i, 0, v);
    char cap[64];
    snprintf(cap, sizeof cap, "item %d version 0", i);
    const char *argv[8] = {"ADD", key, "TEXT", cap, "IMAGEVEC", (char *)v,
                           "TEXTVEC", (char *)v};
    size_t lens[8] = {3, strlen(key), 4, strlen(cap), 8, sizeof v, 7,
                      sizeof v};
    redisReply *r = redisCommandArgv(c, 8, argv, lens);
    if (!r || r->type != REDIS_REPLY_INTEGER || r->integer != 1)
      _exit(3);
    freeReplyObject(r);
  }
  _exit(0);
}

static int wait_child(pid_t pid) {
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------ setup */

static int group_setup(void **state) {
  (void)state;
  snprintf(G.dir, sizeof G.dir, "/tmp/vlmdb-replica-XXXXXX");
  assert_non_null(mkdtemp(G.dir));
  G.bin = vlmdb_path();
  char root[PATH_MAX]; /* a copy: G's fields are written from it */
  snprintf(root, sizeof root, "%s", G.dir);
  snprintf(G.pdb, sizeof G.pdb, "%s/primary", root);
  for (int k = 0; k < 2; k++)
    snprintf(G.rdb[k], sizeof G.rdb[k], "%s/replica%d", root, k);
  char args[2 * PATH_MAX];
  snprintf(args, sizeof args, "init --db %s --model %s --index Flat "
           "--field n:int", G.pdb, MODEL);
  free(vlmdb_ok(args));
  G.pport = free_port();
  G.rport[0] = free_port();
  G.rport[1] = free_port();
  start_primary(NULL);
  /* something to seed: 20 items before any replica exists */
  redisContext *c = connect_port(G.pport);
  for (int i = 0; i < 20; i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i);
    expect_ok(write_item(c, "ADD", key, i, 0), "ADD");
  }
  G.nkeys = 20;
  redisFree(c);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  vlm_test_server_stop(&G.replica[0], 20);
  vlm_test_server_stop(&G.replica[1], 20);
  vlm_test_server_stop(&G.primary, 20);
  vlm_test_rm_rf(G.dir);
  free(G.bin);
  return 0;
}

/* ------------------------------------------------------------ tests */

/* Seeded over the network; then batches of every kind, each visible on
 * the replica only with the whole batch and in order; at the end the
 * same keys, ids and vectors; writes refused; INFO on both sides. */
static void test_writes_appear_in_order(void **state) {
  (void)state;
  start_replica(0);
  redisContext *p = connect_port(G.pport), *r = connect_port(G.rport[0]);
  long long last_seen = -1, polls = 0;
  for (int i = 0; i < 120; i++) {
    /* one batch: a new key and the counter that names it */
    char key[32];
    snprintf(key, sizeof key, "m%d", i);
    expect_ok(cmd(p, "MULTI"), "MULTI");
    freeReplyObject(write_item(p, "ADD", key, 1000 + i, 0));
    freeReplyObject(write_item(p, "UPSERT", "counter", 5000, i));
    redisReply *e = cmd(p, "EXEC");
    assert_int_equal(e->type, REDIS_REPLY_ARRAY);
    freeReplyObject(e);
    /* other kinds: upserts over earlier keys, deletes, metadata */
    if (i % 3 == 0) {
      snprintf(key, sizeof key, "k%d", i % 20);
      expect_ok(write_item(p, "UPSERT", key, i % 20, i + 1), "UPSERT");
    }
    if (i % 7 == 6) {
      snprintf(key, sizeof key, "m%d", i - 6);
      expect_ok(cmd(p, "DEL %s", key), "DEL");
    }
    if (i % 5 == 0)
      expect_ok(cmd(p, "SETMETA k%d {\"n\":%d}", i % 20, i), "SETMETA");
    /* the replica, meanwhile: the counter never goes back, and the key of
     * its batch is there with it */
    redisReply *g = cmd(r, "GET counter");
    if (g->type == REDIS_REPLY_ARRAY) {
      const char *caption = NULL;
      for (size_t f = 0; f + 1 < g->elements; f += 2)
        if (!strcmp(g->element[f]->str, "caption"))
          caption = g->element[f + 1]->str;
      assert_non_null(caption);
      int v = -1;
      assert_int_equal(sscanf(caption, "item 5000 version %d", &v), 1);
      if (v < last_seen)
        fail_msg("the replica's counter went back from %lld to %d",
                 last_seen, v);
      last_seen = v;
      if (v % 7 != 0) { /* (m<v> of v % 7 == 0 is deleted later) */
        redisReply *x = cmd(r, "EXISTS m%d", v);
        if (x->integer != 1)
          fail_msg("the replica shows counter %d without m%d, written in "
                   "the same batch", v, v);
        freeReplyObject(x);
      }
      polls++;
    }
    freeReplyObject(g);
  }
  /* writes are refused on a replica */
  redisReply *w = write_item(r, "ADD", "nope", 1, 1);
  if (w->type != REDIS_REPLY_ERROR || strncmp(w->str, "READONLY", 8))
    fail_msg("ADD on a replica: %s", w->str ? w->str : "(not an error)");
  freeReplyObject(w);
  w = cmd(r, "DEL k1");
  assert_int_equal(w->type, REDIS_REPLY_ERROR);
  freeReplyObject(w);
  long long seq = primary_seq();
  wait_applied(0, seq, 30);
  expect_same(0);
  /* INFO replication, as Redis words it */
  char text[4096];
  info_text(r, "replication", text, sizeof text);
  if (!strstr(text, "role:slave") || !strstr(text, "master_link_status:up") ||
      !strstr(text, "slave_read_only:1"))
    fail_msg("replica's INFO replication:\n%s", text);
  assert_int_equal(info_field(r, "replication", "master_repl_offset"), seq);
  assert_int_equal(info_field(r, "replication", "replica_lag_batches"), 0);
  /* the primary hears of the last batch with the replica's next request
   * (at once, or POLL_MS later when caught up): wait for it */
  char want[128];
  snprintf(want, sizeof want, "port=%d,state=online,offset=%lld", G.rport[0],
           seq);
  double until = now_s() + 10;
  do
    info_text(p, "replication", text, sizeof text);
  while (!strstr(text, want) && now_s() < until && (sleep_ms(10), 1));
  if (!strstr(text, "role:master") || !strstr(text, want))
    fail_msg("primary's INFO replication lacks '%s':\n%s", want, text);
  printf("[   INFO   ] %lld batches replicated; the counter read %lld times "
         "on the replica, never going back\n", seq, polls);
  redisFree(p);
  redisFree(r);
}

/* kill -9 the replica while it applies a stream of batches, restart it:
 * it resumes from its own batch number; nothing lost, nothing twice. */
static void test_replica_kill9_resumes(void **state) {
  (void)state;
  int kills = 0;
  for (int round = 0; round < 3; round++) {
    long long before = primary_seq();
    pid_t w = spawn_writer(G.nkeys, G.nkeys + 150);
    G.nkeys += 150;
    /* let it apply some of the stream, then kill it */
    wait_applied(0, before + 10 + 20 * round, 30);
    kill(G.replica[0].pid, SIGKILL);
    waitpid(G.replica[0].pid, NULL, 0);
    G.replica[0].pid = 0;
    kills++;
    start_replica(0);
    assert_int_equal(wait_child(w), 0);
    wait_applied(0, primary_seq(), 60);
    expect_same(0);
  }
  /* the replica's stores agree with each other too */
  assert_int_equal(vlm_test_server_stop(&G.replica[0], 20), 0);
  char args[PATH_MAX + 32];
  snprintf(args, sizeof args, "verify --db %s", G.rdb[0]);
  free(vlmdb_ok(args));
  start_replica(0);
  wait_applied(0, primary_seq(), 30);
  expect_same(0);
  printf("[   INFO   ] %d kills of the replica mid-stream: each restart "
         "resumed, %d keys equal to the primary's\n", kills, G.nkeys);
}

/* A replica further behind than the primary keeps its log for (here
 * --repl-backlog 20) is answered -RESEED, seeds itself again from a new
 * backup and follows from there. */
static void test_replica_too_far_behind_reseeds(void **state) {
  (void)state;
  assert_int_equal(vlm_test_server_stop(&G.replica[0], 20), 0);
  assert_int_equal(vlm_test_server_stop(&G.primary, 20), 0);
  start_primary("20");
  pid_t w = spawn_writer(G.nkeys, G.nkeys + 60);
  G.nkeys += 60;
  assert_int_equal(wait_child(w), 0);
  /* a checkpoint prunes the log the replica would need */
  redisContext *p = connect_port(G.pport);
  expect_ok(cmd(p, "SAVE"), "SAVE");
  redisFree(p);
  start_replica(0);
  wait_applied(0, primary_seq(), 90);
  expect_same(0);
  char log[PATH_MAX], line[512];
  snprintf(log, sizeof log, "%s/replica0.log", G.dir);
  FILE *f = fopen(log, "r");
  assert_non_null(f);
  int reseeded = 0;
  while (fgets(line, sizeof line, f))
    reseeded += strstr(line, "seeding again") != NULL;
  fclose(f);
  if (!reseeded)
    fail_msg("the replica caught up without seeding again: was the log "
             "not pruned?");
  /* the old copy was a seeded replica (its REPLICA file): removed */
  char cmdline[PATH_MAX + 64];
  snprintf(cmdline, sizeof cmdline, "ls -d %s.stale-* 2>/dev/null | wc -l",
           G.rdb[0]);
  FILE *ls = popen(cmdline, "r");
  int stale = -1;
  assert_int_equal(fscanf(ls, "%d", &stale), 1);
  pclose(ls);
  assert_int_equal(stale, 0);
  snprintf(log, sizeof log, "%s/REPLICA", G.rdb[0]);
  assert_int_equal(access(log, F_OK), 0);
  printf("[   INFO   ] 60 batches behind a backlog of 20: seeded again and "
         "caught up\n");
}

/* An image file's bytes (malloc'd), padded with pad bytes after its end
 * (decoders stop at the end marker; a large picture). */
static char *read_image(const char *name, size_t pad, size_t *len) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, MODEL "/%s", name);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  size_t n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc(n + pad);
  assert_non_null(b);
  assert_int_equal(fread(b, 1, n, f), n);
  fclose(f);
  uint64_t seed = 77;
  for (size_t i = 0; i < pad; i++)
    b[n + i] = (char)(vlm_test_splitmix64(&seed) >> 56);
  *len = n + pad;
  return b;
}

/* key keeps exactly want (len bytes; NULL: none) in the database at dir
 * (opened read-only beside its server). */
static void expect_kept(const char *dir, const char *key, const void *want,
                        size_t len) {
  vlm_db_open_options o = {.readonly = 1};
  vlm_db *db = NULL;
  if (vlm_db_open(dir, &o, &db) < 0)
    fail_msg("open %s: %s", dir, vlm_errmsg());
  uint8_t *got = NULL;
  size_t n = 0;
  if (vlm_db_get_image(db, key, &got, &n) < 0)
    fail_msg("%s: get image %s: %s", dir, key, vlm_errmsg());
  if (n != (want ? len : 0))
    fail_msg("%s: key %s keeps %zu bytes, want %zu", dir, key, n,
             want ? len : 0);
  if (want && memcmp(got, want, len))
    fail_msg("%s: key %s: the kept bytes differ from the image sent", dir,
             key);
  free(got);
  vlm_db_close(db);
}

/* A primary that keeps images (`init --keep-images`) and a replica of it:
 * images sent before the replica was seeded and after (one of 3 MiB)
 * reach it with their bytes, bit for bit; an item without an image keeps
 * none; the replica says keep_images:1 (the setting came with the seed);
 * stopped, the replica's database moves to another model from the kept
 * bytes alone. */
static void test_replica_gets_kept_images(void **state) {
  (void)state;
  char pdb[PATH_MAX], rdb[PATH_MAX], args[3 * PATH_MAX], plog[PATH_MAX],
      rlog[PATH_MAX], port[16], rport[16], of[64];
  snprintf(pdb, sizeof pdb, "%s/kept-primary", G.dir);
  snprintf(rdb, sizeof rdb, "%s/kept-replica", G.dir);
  snprintf(plog, sizeof plog, "%s/kept-primary.log", G.dir);
  snprintf(rlog, sizeof rlog, "%s/kept-replica.log", G.dir);
  snprintf(args, sizeof args, "init --db %s --model %s --index Flat "
           "--keep-images", pdb, MODEL);
  free(vlmdb_ok(args));
  int pp = free_port(), rp = free_port();
  snprintf(port, sizeof port, "%d", pp);
  snprintf(rport, sizeof rport, "%d", rp);
  snprintf(of, sizeof of, "127.0.0.1:%d", pp);
  vlm_test_server prim, rep;
  const char *pargs[] = {"--db", pdb, "--port", port, "--no-http",
                         "--threads", "2", NULL};
  assert_int_equal(vlm_test_server_spawn(&prim, G.bin, pargs, plog, 60), 0);
  size_t plen, glen, blen;
  char *photo = read_image("photo_rgb.jpg", 0, &plen);
  char *gray = read_image("gray.jpg", 0, &glen);
  char *big = read_image("photo_rgb.jpg", (size_t)3 << 20, &blen);
  redisContext *c = connect_port(pp);
  expect_ok(cmd(c, "ADD before IMAGE %b TEXT %s", photo, plen, "a photo"),
            "ADD");
  expect_ok(cmd(c, "ADD words TEXT %s", "only words"), "ADD");
  const char *rargs[] = {"--db", rdb, "--port", rport, "--no-http",
                         "--threads", "2", "--replica-of", of, NULL};
  assert_int_equal(vlm_test_server_spawn(&rep, G.bin, rargs, rlog, 120), 0);
  expect_ok(cmd(c, "ADD big IMAGE %b", big, blen), "ADD");
  expect_ok(cmd(c, "UPSERT after IMAGE %b TEXT %s", gray, glen, "gray"),
            "UPSERT");
  long long seq = info_field(c, "replication", "master_repl_offset");
  redisFree(c);
  double deadline = now_s() + 60;
  long long at = -1;
  redisContext *r = connect_port(rp);
  while (now_s() < deadline &&
         (at = info_field(r, "replication", "slave_repl_offset")) < seq)
    sleep_ms(20);
  if (at < seq)
    fail_msg("the replica reached batch %lld of %lld", at, seq);
  assert_int_equal(info_field(r, "db", "keep_images"), 1);
  redisFree(r);
  expect_kept(rdb, "before", photo, plen);
  expect_kept(rdb, "big", big, blen);
  expect_kept(rdb, "after", gray, glen);
  expect_kept(rdb, "words", NULL, 0);
  assert_int_equal(vlm_test_server_stop(&rep, 20), 0);
  assert_int_equal(vlm_test_server_stop(&prim, 20), 0);
  snprintf(args, sizeof args, "reembed --db %s --model models/default "
           "--quiet", rdb);
  char *out = vlmdb_ok(args);
  if (!strstr(out, "switched: embedded 4 items again"))
    fail_msg("reembed of the replica's database:\n%s", out);
  free(out);
  expect_kept(rdb, "big", big, blen);
  free(photo);
  free(gray);
  free(big);
}

/* A cluster map's later addresses of a shard are its replicas. */
static void test_cluster_slots_lists_replicas(void **state) {
  (void)state;
  char map[PATH_MAX], db[PATH_MAX], args[3 * PATH_MAX], log[PATH_MAX];
  int port = free_port(), rport = free_port();
  snprintf(map, sizeof map, "%s/cluster.json", G.dir);
  snprintf(db, sizeof db, "%s/node", G.dir);
  FILE *f = fopen(map, "w");
  assert_non_null(f);
  fprintf(f, "{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383]], "
          "\"addresses\": [\"127.0.0.1:%d\", \"127.0.0.1:%d\"]}]}\n", port,
          rport);
  fclose(f);
  snprintf(args, sizeof args, "init --db %s --model %s --index Flat", db,
           MODEL);
  free(vlmdb_ok(args));
  snprintf(log, sizeof log, "%s/node.log", G.dir);
  const char *sargs[] = {"--db", db, "--cluster", map, "--no-http",
                         "--threads", "1", NULL};
  vlm_test_server node;
  assert_int_equal(vlm_test_server_spawn(&node, G.bin, sargs, log, 60), 0);
  redisContext *c = connect_port(port);
  redisReply *r = cmd(c, "CLUSTER SLOTS");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 1);
  redisReply *range = r->element[0];
  assert_int_equal(range->elements, 4); /* first, last, primary, replica */
  assert_int_equal(range->element[2]->element[1]->integer, port);
  assert_int_equal(range->element[3]->element[1]->integer, rport);
  assert_string_not_equal(range->element[2]->element[2]->str,
                          range->element[3]->element[2]->str);
  char pid[41], rid[41];
  snprintf(pid, sizeof pid, "%s", range->element[2]->element[2]->str);
  snprintf(rid, sizeof rid, "%s", range->element[3]->element[2]->str);
  freeReplyObject(r);
  r = cmd(c, "CLUSTER NODES");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  if (!strstr(r->str, " slave ") || !strstr(r->str, "myself,master"))
    fail_msg("CLUSTER NODES on the primary:\n%s", r->str);
  freeReplyObject(r);
  r = cmd(c, "CLUSTER MYID");
  assert_string_equal(r->str, pid);
  freeReplyObject(r);

  /* the replica, served with the same map on its own port, is itself */
  char rdb[PATH_MAX], rp[16], of[64];
  snprintf(rdb, sizeof rdb, "%s/node-replica", G.dir);
  snprintf(rp, sizeof rp, "%d", rport);
  snprintf(of, sizeof of, "127.0.0.1:%d", port);
  snprintf(log, sizeof log, "%s/node-replica.log", G.dir);
  const char *rargs[] = {"--db", rdb, "--cluster", map, "--port", rp,
                         "--replica-of", of, "--no-http", "--threads", "1",
                         NULL};
  vlm_test_server rep;
  assert_int_equal(vlm_test_server_spawn(&rep, G.bin, rargs, log, 60), 0);
  redisContext *rc = connect_port(rport);
  r = cmd(rc, "CLUSTER MYID");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  assert_string_equal(r->str, rid);
  freeReplyObject(r);
  r = cmd(rc, "CLUSTER NODES");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  char mine[128];
  snprintf(mine, sizeof mine, "%s 127.0.0.1:%d@0 myself,slave %s", rid,
           rport, pid);
  if (!strstr(r->str, mine) || strstr(r->str, "myself,master"))
    fail_msg("CLUSTER NODES on the replica lacks '%s':\n%s", mine, r->str);
  freeReplyObject(r);
  /* a write of its own slots goes to the primary, as in Redis Cluster;
   * a read is answered here */
  r = cmd(rc, "DEL somekey");
  char moved[64];
  snprintf(moved, sizeof moved, "MOVED %d 127.0.0.1:%d",
           vlm_key_slot("somekey", 7), port);
  if (r->type != REDIS_REPLY_ERROR || strcmp(r->str, moved))
    fail_msg("DEL on the replica: %s (want %s)", r->str ? r->str : "?", moved);
  freeReplyObject(r);
  r = cmd(rc, "EXISTS somekey");
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  freeReplyObject(r);
  redisFree(rc);
  vlm_test_server_stop(&rep, 20);
  redisFree(c);
  vlm_test_server_stop(&node, 20);
}

/* HAProxy with tools/haproxy/vlmdb.cfg in front of two replicas: reads
 * keep being answered when one replica is killed. */
static void test_haproxy_fails_over_between_replicas(void **state) {
  (void)state;
  const char *hap = access("/usr/sbin/haproxy", X_OK) == 0 ? "/usr/sbin/haproxy"
                    : access("/usr/bin/haproxy", X_OK) == 0 ? "/usr/bin/haproxy"
                                                            : NULL;
  if (!hap) {
    printf("[  SKIPPED ] haproxy is not installed (Debian package haproxy; "
           "tools/deps.sh installs it): the HAProxy failover test did not "
           "run\n");
    skip();
  }
  start_replica(1);
  wait_applied(1, primary_seq(), 60);
  int hport = free_port();
  char listen[64], r1[64], r2[64], pr[64], cfg[PATH_MAX], log[PATH_MAX];
  snprintf(listen, sizeof listen, "127.0.0.1:%d", hport);
  snprintf(r1, sizeof r1, "127.0.0.1:%d", G.rport[0]);
  snprintf(r2, sizeof r2, "127.0.0.1:%d", G.rport[1]);
  snprintf(pr, sizeof pr, "127.0.0.1:%d", G.pport);
  char *cwd = getcwd(NULL, 0);
  snprintf(cfg, sizeof cfg, "%s/tools/haproxy/vlmdb.cfg", cwd);
  free(cwd);
  snprintf(log, sizeof log, "%s/haproxy.log", G.dir);
  fflush(NULL);
  pid_t hp = fork();
  assert_true(hp >= 0);
  if (hp == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setenv("VLMDB_LISTEN", listen, 1);
    setenv("VLMDB_REPLICA1", r1, 1);
    setenv("VLMDB_REPLICA2", r2, 1);
    setenv("VLMDB_PRIMARY", pr, 1);
    FILE *l = freopen(log, "w", stderr);
    (void)l;
    execl(hap, hap, "-db", "-f", cfg, (char *)NULL);
    _exit(127);
  }
  /* both replicas answer through it */
  double deadline = now_s() + 20;
  int seen[2] = {0, 0}, ok = 0;
  while (now_s() < deadline && !(seen[0] && seen[1])) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", hport, tv);
    if (c && !c->err) {
      redisSetTimeout(c, tv);
      redisReply *g = redisCommand(c, "GET k1");
      if (g && g->type == REDIS_REPLY_ARRAY) {
        long long p = info_field(c, "server", "tcp_port");
        seen[0] |= p == G.rport[0];
        seen[1] |= p == G.rport[1];
        assert_true(p != G.pport); /* the primary is only a backup */
      }
      if (g)
        freeReplyObject(g);
    }
    if (c)
      redisFree(c);
    sleep_ms(50);
  }
  if (!seen[0] || !seen[1])
    fail_msg("through haproxy: replica 1 %s, replica 2 %s",
             seen[0] ? "answered" : "never answered",
             seen[1] ? "answered" : "never answered");
  /* kill one: every later connection is answered by the other */
  kill(G.replica[0].pid, SIGKILL);
  waitpid(G.replica[0].pid, NULL, 0);
  G.replica[0].pid = 0;
  double killed = now_s();
  int failed = 0;
  for (int i = 0; i < 60; i++) {
    /* the first ones may wait for HAProxy's retry turn-around (1 s) */
    struct timeval tv = {10, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", hport, tv);
    redisReply *g = NULL;
    if (c && !c->err) {
      redisSetTimeout(c, tv);
      g = redisCommand(c, "GET k1");
    }
    if (g && g->type == REDIS_REPLY_ARRAY) {
      ok++;
      assert_int_equal(info_field(c, "server", "tcp_port"), G.rport[1]);
    } else {
      failed++;
    }
    if (g)
      freeReplyObject(g);
    if (c)
      redisFree(c);
    sleep_ms(50);
  }
  kill(hp, SIGTERM);
  waitpid(hp, NULL, 0);
  if (ok < 60) {
    FILE *l = fopen(log, "r"); /* HAProxy's own account of what it did */
    char line[512];
    while (l && fgets(line, sizeof line, l))
      printf("haproxy: %s", line);
    if (l)
      fclose(l);
    fail_msg("after replica 1 was killed: %d of 60 connections answered", ok);
  }
  printf("[   INFO   ] haproxy: both replicas in rotation; after one was "
         "killed %d of 60 connections in %.1f s answered by the other\n", ok,
         now_s() - killed);
  (void)failed;
  start_replica(0);
  wait_applied(0, primary_seq(), 60);
}

/* kill -9 the primary mid-stream: promoted by hand, the replica holds
 * every batch it had reported applied (and the ones before), and writes. */
static void test_primary_kill9_promote(void **state) {
  (void)state;
  for (int i = 0; i < 2; i++) /* the HAProxy test starts replica 2 and
                               * restarts replica 1: it may have been
                               * skipped or failed before it did */
    if (!G.replica[i].pid) {
      start_replica(i);
      wait_applied(i, primary_seq(), 60);
    }
  long long base = primary_seq();
  int from = G.nkeys;
  pid_t w = spawn_writer(from, from + 400);
  redisContext *r = connect_port(G.rport[0]);
  long long acked = 0;
  double deadline = now_s() + 60;
  while (now_s() < deadline) {
    acked = info_field(r, "replication", "slave_repl_offset");
    if (acked >= base + 40)
      break;
    sleep_ms(5);
  }
  /* replica 0 falls behind replica 1 (paused), then the primary dies */
  kill(G.replica[0].pid, SIGSTOP);
  redisContext *r1 = connect_port(G.rport[1]);
  deadline = now_s() + 60;
  while (now_s() < deadline &&
         info_field(r1, "replication", "slave_repl_offset") < acked + 30)
    sleep_ms(5);
  kill(G.primary.pid, SIGKILL);
  waitpid(G.primary.pid, NULL, 0);
  G.primary.pid = 0;
  kill(G.replica[0].pid, SIGCONT);
  wait_child(w); /* it fails once the primary is gone */
  /* what the replica reported last before the promotion */
  long long reported = info_field(r, "replication", "slave_repl_offset");
  assert_true(reported >= acked);
  expect_ok(cmd(r, "REPLICAOF NO ONE"), "REPLICAOF NO ONE");
  char text[4096];
  info_text(r, "replication", text, sizeof text);
  if (!strstr(text, "role:master"))
    fail_msg("after REPLICAOF NO ONE:\n%s", text);
  /* batch base + j wrote k<from + j - 1> */
  int present = 0;
  for (long long b = base + 1; b <= reported; b++) {
    redisReply *x = cmd(r, "EXISTS k%lld", from + (b - base) - 1);
    if (x->integer != 1)
      fail_msg("batch %lld (k%lld) was reported applied (offset %lld) but "
               "is missing after promotion", b, from + (b - base) - 1,
               reported);
    freeReplyObject(x);
    present++;
  }
  /* and the promoted replica takes writes */
  redisReply *a = write_item(r, "ADD", "after-promotion", 9999, 0);
  assert_int_equal(a->type, REDIS_REPLY_INTEGER);
  assert_int_equal(a->integer, 1);
  freeReplyObject(a);
  /* The other replica applied batches of the old primary that the
   * promoted one lacks; the promoted one writes as many of its own, so both
   * stand at the same batch number with different batches: sent REPLICAOF
   * the new primary, the other replica is told so by the history check
   * (VLM.SYNC's digest) and seeds itself again. */
  long long at1 = info_field(r1, "replication", "slave_repl_offset");
  long long seq0 = info_field(r, "replication", "master_repl_offset");
  assert_true(at1 > seq0);
  for (long long i = 0; seq0 < at1; i++, seq0++) {
    char key[32];
    snprintf(key, sizeof key, "new-%lld", i);
    expect_ok(write_item(r, "ADD", key, 20000 + (int)i, 0), "ADD");
  }
  assert_int_equal(info_field(r, "replication", "master_repl_offset"), at1);
  expect_ok(cmd(r1, "REPLICAOF 127.0.0.1 %d", G.rport[0]), "REPLICAOF");
  redisFree(r1);
  wait_following(1, G.rport[0], seq0, 90);
  expect_same_ports(G.rport[0], G.rport[1]);
  char log[PATH_MAX], line[512];
  snprintf(log, sizeof log, "%s/replica1.log", G.dir);
  FILE *f = fopen(log, "r");
  assert_non_null(f);
  int differ = 0;
  while (fgets(line, sizeof line, f))
    differ += strstr(line, "histories differ") != NULL;
  fclose(f);
  assert_true(differ > 0);
  printf("[   INFO   ] primary killed at replica offset %lld: all %d "
         "batches reported applied present after promotion; the other "
         "replica, at %lld on the old history, seeded again from the new "
         "primary\n", reported, present, at1);
  redisFree(r);

  /* The roles survive restarts without --replica-of: the promoted one
   * (started with --replica-of the dead primary) comes back a primary,
   * the one sent REPLICAOF comes back following it, refusing writes and
   * applying what the new primary writes meanwhile. */
  restart_plain(0);
  restart_plain(1);
  r = connect_port(G.rport[0]);
  info_text(r, "replication", text, sizeof text);
  if (!strstr(text, "role:master"))
    fail_msg("the promoted replica after a restart:\n%s", text);
  expect_ok(write_item(r, "ADD", "after-restart", 30000, 0), "ADD");
  long long seq = info_field(r, "replication", "master_repl_offset");
  wait_following(1, G.rport[0], seq, 90);
  r1 = connect_port(G.rport[1]);
  redisReply *ro = write_item(r1, "ADD", "on-replica", 30001, 0);
  assert_int_equal(ro->type, REDIS_REPLY_ERROR);
  assert_true(strncmp(ro->str, "READONLY", 8) == 0);
  freeReplyObject(ro);
  redisReply *x = cmd(r1, "EXISTS after-restart");
  assert_int_equal(x->integer, 1);
  freeReplyObject(x);
  /* promoted by hand, it stays a primary after its restart */
  expect_ok(cmd(r1, "REPLICAOF NO ONE"), "REPLICAOF NO ONE");
  redisFree(r1);
  restart_plain(1);
  r1 = connect_port(G.rport[1]);
  info_text(r1, "replication", text, sizeof text);
  if (!strstr(text, "role:master"))
    fail_msg("replica 1 after REPLICAOF NO ONE and a restart:\n%s", text);
  expect_ok(write_item(r1, "ADD", "own-write", 30002, 0), "ADD");
  redisFree(r1);
  redisFree(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_writes_appear_in_order),
      cmocka_unit_test(test_replica_kill9_resumes),
      cmocka_unit_test(test_replica_too_far_behind_reseeds),
      cmocka_unit_test(test_cluster_slots_lists_replicas),
      cmocka_unit_test(test_replica_gets_kept_images),
      cmocka_unit_test(test_haproxy_fails_over_between_replicas),
      cmocka_unit_test(test_primary_kill9_promote),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
