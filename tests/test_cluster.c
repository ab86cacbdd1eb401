/* test_cluster.c - sharded builds: Redis Cluster's hash slots (against
 * slots a real redis-server computed), cluster maps, a database as one
 * shard (refusing other slots' keys, in the library and over the server),
 * `vlmdb init/ingest/split/cluster check` across shards against a single
 * database built from the same catalog, atomic publishing under kill -9,
 * `vlmdb cluster move` of a slot range killed at every step and resumed,
 * and embeddings as files: .npy against files NumPy wrote, and
 * clip-retrieval's layout written by `vlmdb embed` and read by ingest. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/files.h"
#include "util/util.h"
#include "vlm_cli.h"
#include "vlm_error.h"
#include "vlm_index.h"
#include "vlm_npy.h"
#include "vlm_slot.h"
#include "vlmdb.h"

#define MODEL "tests/fixtures/clip-tiny"
#define NPY "tests/fixtures/npy"
#define DIM 48 /* clip-tiny's */

/* ------------------------------------------------------------ helpers */

static pid_t running_child;

static int setup_tmpdir(void **state) {
  char *dir = strdup("/tmp/vlm_test_cluster.XXXXXX");
  assert_non_null(mkdtemp(dir));
  *state = dir;
  return 0;
}

static int teardown_tmpdir(void **state) {
  if (running_child > 0) {
    kill(running_child, SIGKILL);
    waitpid(running_child, NULL, 0);
    running_child = 0;
  }
  vlm_test_rm_rf(*state);
  free(*state);
  return 0;
}

static char *path_in(const char *dir, const char *name) {
  char *p = malloc(PATH_MAX);
  assert_non_null(p);
  snprintf(p, PATH_MAX, "%s/%s", dir, name);
  return p;
}

static void put_text(const char *dir, const char *name, const char *text) {
  char *p = path_in(dir, name);
  vlm_test_spit(p, text, strlen(text));
  free(p);
}

static char *slurp_text(const char *path) {
  size_t len;
  FILE *f = fopen(path, "rb");
  if (!f)
    return strdup("");
  fclose(f);
  uint8_t *d = vlm_test_slurp(path, &len);
  char *s = malloc(len + 1);
  memcpy(s, d, len);
  s[len] = '\0';
  free(d);
  return s;
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

/* `vlmdb args...` with stdout and stderr into dir/.stdout and .stderr;
 * env: NULL-terminated NAME=VALUE pairs set in the child (the shard
 * variables are cleared first, so the caller's environment never picks a
 * shard). */
static pid_t spawn_env(const char *dir, const char *const *env,
                       const char *const *args) {
  char *bin = vlmdb_path();
  char out[PATH_MAX], err[PATH_MAX];
  snprintf(out, sizeof out, "%s/.stdout", dir);
  snprintf(err, sizeof err, "%s/.stderr", dir);
  const char *argv[64] = {bin};
  int n = 1;
  for (; args[n - 1]; n++) {
    assert_true(n < 63);
    argv[n] = args[n - 1];
  }
  argv[n] = NULL;
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fi = open("/dev/null", O_RDONLY);
    if (fo < 0 || fe < 0 || fi < 0)
      _exit(127);
    dup2(fo, 1);
    dup2(fe, 2);
    dup2(fi, 0);
    unsetenv("SLURM_ARRAY_TASK_ID");
    unsetenv("JOB_COMPLETION_INDEX");
    unsetenv("VLMDB_SHARD");
    for (int i = 0; env && env[i]; i++)
      putenv((char *)env[i]);
    setenv("VLMDB_PROGRESS", "lines", 1);
    setenv("VLMDB_PROGRESS_INTERVAL", "0.02", 1);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  free(bin);
  return pid;
}

static int run_env(const char *dir, char **out, char **err,
                   const char *const *env, const char *const *args) {
  pid_t pid = spawn_env(dir, env, args);
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/.stdout", dir);
  char *o = slurp_text(path);
  snprintf(path, sizeof path, "%s/.stderr", dir);
  char *e = slurp_text(path);
  if (out)
    *out = o;
  else
    free(o);
  if (err)
    *err = e;
  else
    free(e);
  if (!WIFEXITED(st))
    fail_msg("vlmdb %s died with signal %d", args[0], WTERMSIG(st));
  return WEXITSTATUS(st);
}

#define RUN(dir, out, err, ...)                                             \
  run_env(dir, out, err, NULL, (const char *const[]){__VA_ARGS__, NULL})
#define RUN_ENV(dir, out, err, env, ...)                                    \
  run_env(dir, out, err, (const char *const[]){env, NULL},                 \
          (const char *const[]){__VA_ARGS__, NULL})

static char *run_ok(const char *dir, const char *const *args) {
  char *out, *err;
  int rc = run_env(dir, &out, &err, NULL, args);
  if (rc != 0) {
    print_error("vlmdb %s exited %d:\n%s\n", args[0], rc, err);
    free(out);
    free(err);
    fail();
  }
  free(err);
  return out;
}
#define RUN_OK(dir, ...) run_ok(dir, (const char *const[]){__VA_ARGS__, NULL})

static json_t *parse_json(const char *text) {
  json_error_t jerr;
  json_t *v = json_loads(text, 0, &jerr);
  if (!v)
    fail_msg("not JSON (%s): %s", jerr.text, text);
  return v;
}

static long json_int_at(json_t *o, const char *a, const char *b) {
  json_t *v = json_object_get(o, a);
  if (b)
    v = json_object_get(v, b);
  if (!json_is_integer(v))
    fail_msg("no integer %s%s%s", a, b ? "." : "", b ? b : "");
  return (long)json_integer_value(v);
}

static void assert_contains(const char *text, const char *want) {
  if (!strstr(text, want))
    fail_msg("expected \"%s\" in:\n%s", want, text);
}

static int exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void copy_file(const char *from, const char *to) {
  size_t len;
  uint8_t *d = vlm_test_slurp(from, &len);
  vlm_test_spit(to, d, len);
  free(d);
}

/* ------------------------------------------------------- hash slots */

/* Every key of tests/fixtures/keyslots.jsonl (hash tags, empty tags,
 * braces in every order, UTF-8, and 200 random keys of braces and
 * letters) has the slot redis-server 7.0.15's CLUSTER KEYSLOT gave it
 * (Debian 12's redis-server started with --cluster-enabled yes, one
 * CLUSTER KEYSLOT per key, when the fixture was made). */
static void test_key_slots_match_redis(void **state) {
  (void)state;
  assert_int_equal(vlm_crc16("123456789", 9), 0x31C3);
  assert_int_equal(vlm_key_slot("123456789", 9), 12739);
  assert_int_equal(vlm_key_slot("{user1000}.following", 20),
                   vlm_key_slot("{user1000}.followers", 20));
  assert_int_equal(vlm_key_slot("{user1000}.following", 20),
                   vlm_key_slot("user1000", 8));
  FILE *f = fopen("tests/fixtures/keyslots.jsonl", "r");
  assert_non_null(f);
  char line[1024];
  int n = 0, tagged = 0;
  while (fgets(line, sizeof line, f)) {
    json_t *o = parse_json(line);
    json_t *k = json_object_get(o, "key");
    const char *key = json_string_value(k);
    size_t len = json_string_length(k);
    int want = (int)json_integer_value(json_object_get(o, "slot"));
    int got = vlm_key_slot(key, len);
    if (got != want)
      fail_msg("key \"%s\": slot %d, redis says %d", key, got, want);
    tagged += strchr(key, '{') != NULL;
    n++;
    json_decref(o);
  }
  fclose(f);
  print_message("%d keys, %d with braces, all in Redis's slots\n", n, tagged);
  assert_true(n > 200 && tagged > 50);
}

/* --------------------------------------------------------- cluster maps */

static vlm_cluster *parse_map(const char *text) {
  vlm_cluster *c = NULL;
  int rc = vlm_cluster_parse(text, strlen(text), "map", NULL, NULL, &c);
  if (rc)
    fail_msg("%s: %s", text, vlm_errmsg());
  return c;
}

static void test_cluster_map_valid(void **state) {
  (void)state;
  vlm_cluster *c = parse_map(
      "{\"shards\": [{\"id\": 2, \"slots\": [[16000, 16383], [0, 99]]},"
      " {\"id\": 0, \"slots\": [[100, 8000], [8001, 9000]],"
      "  \"addresses\": [\"10.0.0.1:7878\", \"h:1\"]},"
      " {\"id\": 1, \"slots\": [[9001, 15999]]}]}");
  assert_int_equal(c->nshards, 3);
  assert_int_equal(c->shards[0].nranges, 1); /* adjacent ranges merged */
  assert_int_equal(c->shards[0].ranges[0].first, 100);
  assert_int_equal(c->shards[0].ranges[0].last, 9000);
  assert_int_equal(c->shards[0].naddresses, 2);
  assert_string_equal(c->shards[0].addresses[0], "10.0.0.1:7878");
  assert_int_equal(c->shards[2].nranges, 2); /* sorted */
  assert_int_equal(c->shards[2].ranges[0].first, 0);
  for (int s = 0; s < VLM_SLOTS; s++) {
    int want = s < 100 ? 2 : s <= 9000 ? 0 : s <= 15999 ? 1 : 2;
    if (c->owner[s] != want)
      fail_msg("slot %d: shard %d, want %d", s, c->owner[s], want);
  }
  assert_int_equal(vlm_cluster_shard_of(c, "123456789", 9), 1); /* 12739 */
  /* the digest is the slot assignment's: the same with other addresses,
   * ranges split or ordered otherwise; another when a slot moves */
  vlm_cluster *same = parse_map(
      "{\"shards\": [{\"id\": 0, \"slots\": [[100, 9000]]},"
      " {\"id\": 1, \"slots\": [[9001, 12000], [12001, 15999]],"
      "  \"addresses\": [\"x:9\"]},"
      " {\"id\": 2, \"slots\": [[0, 99], [16000, 16383]]}]}");
  assert_string_equal(c->digest, same->digest);
  vlm_cluster *moved = parse_map(
      "{\"shards\": [{\"id\": 0, \"slots\": [[100, 9001]]},"
      " {\"id\": 1, \"slots\": [[9002, 15999]]},"
      " {\"id\": 2, \"slots\": [[0, 99], [16000, 16383]]}]}");
  assert_string_not_equal(c->digest, moved->digest);
  assert_int_equal(strlen(c->digest), 16);
  vlm_cluster_free(c);
  vlm_cluster_free(same);
  vlm_cluster_free(moved);
}

static void count_problem(void *arg, const char *p) {
  (void)p;
  (*(int *)arg)++;
}

static void test_cluster_map_hostile(void **state) {
  (void)state;
  static const struct {
    const char *text, *want;
  } cases[] = {
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 8191]]},"
       " {\"id\": 1, \"slots\": [[8000, 16383]]}]}",
       "shard 1 range [8000, 16383] overlaps shard 0 range [0, 8191]"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 8191]]},"
       " {\"id\": 1, \"slots\": [[8200, 16383]]}]}",
       "slots 8192-8199 belong to no shard"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 100], [50, 16383]]}]}",
       "shard 0: ranges [0, 100] and [50, 16383] overlap"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 16384]]}]}",
       "range [0, 16384] is not within 0..16383"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[9, 3]]}]}",
       "range [9, 3] is not within"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[-1, 16383]]}]}",
       "range [-1, 16383]"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, \"16383\"]]}]}",
       "slots[0] is not a [first, last] pair"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 1.5e3]]}]}",
       "slots[0] is not a [first, last] pair"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383, 5]]}]}",
       "slots[0] is not a [first, last] pair"},
      {"{\"shards\": [{\"id\": 0, \"slots\": []}]}",
       "\"slots\" must be a non-empty array"},
      {"{\"shards\": [{\"id\": 1, \"slots\": [[0, 16383]]}]}",
       "needs an \"id\" in 0..0"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 8191]]},"
       " {\"id\": 0, \"slots\": [[8192, 16383]]}]}",
       "shard id 0 given twice"},
      {"{\"shards\": [{\"slots\": [[0, 16383]]}]}", "needs an \"id\""},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383]], \"weight\": 1}]}",
       "unknown member \"weight\""},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383]]}], \"x\": 1}",
       "unknown member \"x\""},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383]],"
       " \"addresses\": [\"nohost\"]}]}",
       "addresses[0] is not \"host:port\""},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383]],"
       " \"addresses\": [\"h:99999\"]}]}",
       "addresses[0] is not \"host:port\""},
      {"{\"shards\": []}", "non-empty \"shards\" array"},
      {"[1, 2]", "non-empty \"shards\" array"},
      {"{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383]]}]", "not valid JSON"},
      {"{\"shards\": [{\"id\": 0, \"id\": 0, \"slots\": [[0, 16383]]}]}",
       "not valid JSON"},
      {"", "not valid JSON"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    vlm_cluster *c = NULL;
    int rc = vlm_cluster_parse(cases[i].text, strlen(cases[i].text),
                               "cluster.json", NULL, NULL, &c);
    if (rc != VLM_EFORMAT || c)
      fail_msg("case %zu accepted (%d): %s", i, rc, cases[i].text);
    if (!strstr(vlm_errmsg(), cases[i].want))
      fail_msg("case %zu: \"%s\" lacks \"%s\"", i, vlm_errmsg(),
               cases[i].want);
    assert_int_equal(strncmp(vlm_errmsg(), "cluster.json: ", 14), 0);
  }
  /* every problem is reported, not just the first */
  const char *two = "{\"shards\": [{\"id\": 0, \"slots\": [[0, 8191]]},"
                    " {\"id\": 1, \"slots\": [[8000, 9000], [10000, 16383]]}]}";
  int count = 0;
  vlm_cluster *c = NULL;
  assert_int_equal(vlm_cluster_parse(two, strlen(two), "m", count_problem,
                                     &count, &c),
                   VLM_EFORMAT);
  assert_int_equal(count, 2); /* the overlap and the gap 9001-9999 */
  assert_contains(vlm_errmsg(), "and more problems");
  VLM_EXPECT_ERR(VLM_ENOTFOUND,
                 vlm_cluster_load("/nonexistent/cluster.json", NULL, NULL, &c));
  assert_contains(vlm_errmsg(), "/nonexistent/cluster.json");
}

static void test_shard_index(void **state) {
  (void)state;
  int s = -1;
  unsetenv("SLURM_ARRAY_TASK_ID");
  unsetenv("JOB_COMPLETION_INDEX");
  unsetenv("VLMDB_SHARD");
  VLM_CHECK(vlm_shard_index("3", 4, &s));
  assert_int_equal(s, 3);
  const char *bad[] = {"4", "-1", "x", "", " 1", "1 ", "+1", "0x1", "1e0",
                       "99999999999999999999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (vlm_shard_index(bad[i], 4, &s) != VLM_EINVAL)
      fail_msg("--shard '%s' accepted", bad[i]);
    assert_contains(vlm_errmsg(), "not a shard index in 0..3");
  }
  VLM_EXPECT_ERR(VLM_EINVAL, vlm_shard_index("auto", 4, &s));
  assert_contains(vlm_errmsg(), "none of SLURM_ARRAY_TASK_ID");
  setenv("VLMDB_SHARD", "1", 1);
  VLM_CHECK(vlm_shard_index("auto", 4, &s));
  assert_int_equal(s, 1);
  setenv("JOB_COMPLETION_INDEX", "2", 1);
  VLM_CHECK(vlm_shard_index("auto", 4, &s));
  assert_int_equal(s, 2);
  setenv("SLURM_ARRAY_TASK_ID", "0", 1);
  VLM_CHECK(vlm_shard_index("auto", 4, &s));
  assert_int_equal(s, 0);
  setenv("SLURM_ARRAY_TASK_ID", "7", 1);
  VLM_EXPECT_ERR(VLM_EINVAL, vlm_shard_index("auto", 4, &s));
  assert_contains(vlm_errmsg(), "SLURM_ARRAY_TASK_ID is '7'");
  setenv("SLURM_ARRAY_TASK_ID", "", 1); /* empty: the next one counts */
  VLM_CHECK(vlm_shard_index("auto", 4, &s));
  assert_int_equal(s, 2);
  unsetenv("SLURM_ARRAY_TASK_ID");
  unsetenv("JOB_COMPLETION_INDEX");
  unsetenv("VLMDB_SHARD");
}

/* ------------------------------------------------ the database as a shard */

static void unit_vector(float *v, uint64_t *seed) {
  double ss = 0;
  for (int i = 0; i < DIM; i++) {
    v[i] = (float)(vlm_test_uniform(seed) * 2 - 1);
    ss += (double)v[i] * v[i];
  }
  for (int i = 0; i < DIM; i++)
    v[i] = (float)(v[i] / sqrt(ss));
}

/* A key of a slot >= 8192 (high) or < 4096. */
static void key_on_side(char *buf, size_t cap, int high, int *n) {
  for (;; (*n)++) {
    snprintf(buf, cap, "key-%d", *n);
    int slot = vlm_key_slot(buf, strlen(buf));
    if (high ? slot >= 8192 : slot < 4096)
      return;
  }
}

static void test_db_refuses_other_slots(void **state) {
  const char *dir = *state;
  char *path = path_in(dir, "shard0");
  vlm_slot_range mine[2] = {{5000, 8191}, {0, 4095}}; /* unsorted */
  vlm_db_config cfg = {.dim = DIM, .model_id = "m", .index_factory = "Flat",
                       .cluster_digest = "0123456789abcdef", .shard = 0,
                       .nshards = 2, .slot_ranges = mine, .nslot_ranges = 2};
  vlm_db *db;
  VLM_CHECK(vlm_db_create(path, &cfg, &db));
  uint64_t seed = 1;
  float v[DIM];
  unit_vector(v, &seed);
  char mine_key[32], other_key[32];
  int n = 0;
  key_on_side(mine_key, sizeof mine_key, 0, &n);
  key_on_side(other_key, sizeof other_key, 1, &n);
  vlm_item items[2] = {{.key = mine_key, .image_vec = v},
                       {.key = other_key, .image_vec = v}};
  int written = -1;
  VLM_EXPECT_ERR(VLM_EWRONGSHARD, vlm_db_put(db, items, 2, 0, &written));
  assert_int_equal(written, 0);
  char want[128];
  snprintf(want, sizeof want, "key \"%s\" hashes to slot %d", other_key,
           vlm_key_slot(other_key, strlen(other_key)));
  assert_contains(vlm_errmsg(), want);
  assert_contains(vlm_errmsg(), "shard 0 of 2 (slots 0-4095,5000-8191)");
  assert_int_equal(vlm_db_exists(db, mine_key), 0); /* nothing written */
  VLM_CHECK(vlm_db_put(db, items, 1, 0, &written));
  assert_int_equal(written, 1);
  const char *del[] = {other_key};
  VLM_EXPECT_ERR(VLM_EWRONGSHARD, vlm_db_delete(db, del, 1, NULL));
  vlm_write_op up = {.kind = VLM_WRITE_UPDATE,
                     .item = {.key = other_key, .caption = "x"}};
  VLM_EXPECT_ERR(VLM_EWRONGSHARD, vlm_db_write(db, &up, 1, NULL));
  vlm_db_close(db);
  /* the manifest keeps it */
  VLM_CHECK(vlm_db_open(path, NULL, &db));
  vlm_db_info info;
  VLM_CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.shard, 0);
  assert_int_equal(info.nshards, 2);
  assert_string_equal(info.cluster_digest, "0123456789abcdef");
  assert_int_equal(info.nslot_ranges, 2);
  assert_int_equal(info.slot_ranges[0].first, 0);
  assert_int_equal(info.slot_ranges[0].last, 4095);
  assert_int_equal(info.slot_ranges[1].first, 5000);
  assert_int_equal(info.slot_ranges[1].last, 8191);
  VLM_EXPECT_ERR(VLM_EWRONGSHARD, vlm_db_put(db, &items[1], 1, 0, NULL));
  assert_int_equal(info.items, 1);
  vlm_db_close(db);
  /* a salvaged shard is the same shard */
  char *saved = path_in(dir, "salvaged");
  vlm_db_salvage_result sr;
  VLM_CHECK(vlm_db_salvage(path, saved, NULL, NULL, &sr));
  assert_int_equal(sr.saved, 1);
  VLM_CHECK(vlm_db_open(saved, NULL, &db));
  vlm_db_info si;
  VLM_CHECK(vlm_db_stat(db, &si));
  assert_int_equal(si.shard, 0);
  assert_string_equal(si.cluster_digest, info.cluster_digest);
  assert_int_equal(si.nslot_ranges, 2);
  assert_memory_equal(si.slot_ranges, info.slot_ranges,
                      2 * sizeof si.slot_ranges[0]);
  VLM_EXPECT_ERR(VLM_EWRONGSHARD, vlm_db_put(db, &items[1], 1, 0, NULL));
  vlm_db_close(db);
  free(saved);
  /* a database of no cluster takes every key and says so */
  char *plain = path_in(dir, "plain");
  vlm_db_config pc = {.dim = DIM, .model_id = "m", .index_factory = "Flat"};
  VLM_CHECK(vlm_db_create(plain, &pc, &db));
  VLM_CHECK(vlm_db_put(db, items, 2, 0, &written));
  assert_int_equal(written, 2);
  VLM_CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.shard, -1);
  vlm_db_close(db);
  /* adjacent ranges are one */
  char *adj = path_in(dir, "adjacent");
  vlm_slot_range two[2] = {{101, 16383}, {0, 100}};
  vlm_db_config ac = cfg;
  ac.slot_ranges = two;
  VLM_CHECK(vlm_db_create(adj, &ac, &db));
  VLM_CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.nslot_ranges, 1);
  assert_int_equal(info.slot_ranges[0].last, 16383);
  vlm_db_close(db);
  free(adj);
  /* bad cluster configs */
  char *bad = path_in(dir, "bad");
  vlm_slot_range overlap[2] = {{0, 100}, {100, 200}};
  vlm_db_config bc = cfg;
  bc.slot_ranges = overlap;
  VLM_EXPECT_ERR(VLM_EINVAL, vlm_db_create(bad, &bc, &db));
  bc = cfg;
  bc.shard = 2;
  VLM_EXPECT_ERR(VLM_EINVAL, vlm_db_create(bad, &bc, &db));
  bc = cfg;
  bc.cluster_digest = "xyz";
  VLM_EXPECT_ERR(VLM_EINVAL, vlm_db_create(bad, &bc, &db));
  assert_false(exists(bad));
  free(bad);
  free(plain);
  free(path);
}

/* ---------------------------------------------------------------- npy */

static float *read_npy(const char *path, int64_t *rows, int64_t *cols) {
  vlm_npy *n;
  VLM_CHECK(vlm_npy_open(path, &n));
  const vlm_npy_header *h = vlm_npy_info(n);
  *rows = h->rows;
  *cols = h->cols;
  float *v = malloc((size_t)(h->rows * h->cols + 1) * sizeof *v);
  VLM_CHECK(vlm_npy_read_rows(n, 0, h->rows, v));
  vlm_npy_close(n);
  return v;
}

static void assert_same_bytes(const char *a, const char *b) {
  size_t la, lb;
  uint8_t *x = vlm_test_slurp(a, &la), *y = vlm_test_slurp(b, &lb);
  if (la != lb || memcmp(x, y, la))
    fail_msg("%s (%zu bytes) differs from %s (%zu bytes)", a, la, b, lb);
  free(x);
  free(y);
}

static void test_npy_against_numpy(void **state) {
  const char *dir = *state;
  int64_t r, c, r2, c2;
  float *x = read_npy(NPY "/m.f32.npy", &r, &c);
  assert_int_equal(r, 5);
  assert_int_equal(c, 7);
  assert_true(x[2] == 65504.0f && x[3] == 65520.0f && signbit(x[1]));
  /* float16 widened: bit-equal to NumPy's astype(float32) */
  float *h = read_npy(NPY "/m.f16.npy", &r2, &c2);
  float *hw = read_npy(NPY "/m.f16as32.npy", &r, &c);
  assert_int_equal(r2 * c2, r * c);
  for (int i = 0; i < r * c; i++)
    if (memcmp(&h[i], &hw[i], sizeof(float)))
      fail_msg("value %d: %.9g read from float16, numpy says %.9g", i, h[i],
               hw[i]);
  /* format 2.0 */
  float *v2 = read_npy(NPY "/m.v2.npy", &r2, &c2);
  assert_memory_equal(v2, x, (size_t)(r * c) * sizeof(float));
  /* written: NumPy's own bytes, float32 and float16 (its rounding, ties
   * to even, overflow to infinity) */
  char *w32 = path_in(dir, "w32.npy"), *w16 = path_in(dir, "w16.npy");
  VLM_CHECK(vlm_npy_write(w32, x, 5, 7, VLM_NPY_F32));
  VLM_CHECK(vlm_npy_write(w16, x, 5, 7, VLM_NPY_F16));
  assert_same_bytes(w32, NPY "/m.f32.npy");
  assert_same_bytes(w16, NPY "/m.f16.npy");
  char *we = path_in(dir, "we.npy");
  VLM_CHECK(vlm_npy_write(we, x, 0, 7, VLM_NPY_F32));
  assert_same_bytes(we, NPY "/empty.npy");
  float *e = read_npy(we, &r2, &c2);
  assert_int_equal(r2, 0);
  assert_int_equal(c2, 7);
  free(e);
  free(we);
  free(w32);
  free(w16);
  free(x);
  free(h);
  free(hw);
  free(v2);
}

static void expect_npy_error(const char *path, int code, const char *want) {
  vlm_npy *n = NULL;
  int rc = vlm_npy_open(path, &n);
  if (rc != code)
    fail_msg("%s: %s (%d), want %s", path, vlm_errname(rc), rc,
             vlm_errname(code));
  assert_null(n);
  assert_contains(vlm_errmsg(), want);
  assert_contains(vlm_errmsg(), path);
}

static void mutate(const char *dir, const char *name, const char *from,
                   const char *old, const char *new_text, char *out) {
  size_t len;
  uint8_t *d = vlm_test_slurp(from, &len);
  snprintf(out, PATH_MAX, "%s/%s", dir, name);
  char *at = memmem(d, len, old, strlen(old));
  assert_non_null(at);
  assert_int_equal(strlen(old), strlen(new_text)); /* same header length */
  memcpy(at, new_text, strlen(new_text));
  vlm_test_spit(out, d, len);
  free(d);
}

static void test_npy_hostile(void **state) {
  const char *dir = *state;
  expect_npy_error(NPY "/fortran.npy", VLM_EUNSUPPORTED, "Fortran order");
  expect_npy_error(NPY "/f8.npy", VLM_EUNSUPPORTED, "dtype '<f8'");
  expect_npy_error(NPY "/be.npy", VLM_EUNSUPPORTED, "dtype '>f4'");
  expect_npy_error(NPY "/1d.npy", VLM_EUNSUPPORTED, "1 dimensions");
  expect_npy_error(NPY "/3d.npy", VLM_EUNSUPPORTED, "3 dimensions");
  char p[PATH_MAX];
  size_t len;
  uint8_t *d = vlm_test_slurp(NPY "/m.f32.npy", &len);
  snprintf(p, sizeof p, "%s/short.npy", dir);
  vlm_test_spit(p, d, len - 1);
  expect_npy_error(p, VLM_EFORMAT, "truncated");
  snprintf(p, sizeof p, "%s/long.npy", dir);
  uint8_t *longer = calloc(len + 4, 1);
  memcpy(longer, d, len);
  vlm_test_spit(p, longer, len + 4);
  expect_npy_error(p, VLM_EFORMAT, "4 bytes after the data");
  snprintf(p, sizeof p, "%s/header-only.npy", dir);
  vlm_test_spit(p, d, 60);
  expect_npy_error(p, VLM_EFORMAT, "truncated header");
  snprintf(p, sizeof p, "%s/tiny.npy", dir);
  vlm_test_spit(p, d, 5);
  expect_npy_error(p, VLM_EFORMAT, "not a .npy file");
  free(longer);
  free(d);
  mutate(dir, "magic.npy", NPY "/m.f32.npy", "NUMPY", "NUMPI", p);
  expect_npy_error(p, VLM_EFORMAT, "not a .npy file");
  mutate(dir, "ver.npy", NPY "/m.f32.npy", "NUMPY\x01", "NUMPY\x09", p);
  expect_npy_error(p, VLM_EUNSUPPORTED, "version 9.0");
  mutate(dir, "key.npy", NPY "/m.f32.npy", "'descr'", "'dtype'", p);
  expect_npy_error(p, VLM_EFORMAT, "header key 'dtype' unknown");
  mutate(dir, "twice.npy", NPY "/m.f32.npy", "'fortran_order': False",
         "'descr'        : '<f4'", p);
  expect_npy_error(p, VLM_EFORMAT, "given twice");
  mutate(dir, "neg.npy", NPY "/m.f32.npy", "(5, 7)", "(-5,7)", p);
  expect_npy_error(p, VLM_EFORMAT, "not the dict numpy writes");
  mutate(dir, "bool.npy", NPY "/m.f32.npy", "False", "Fals ", p);
  expect_npy_error(p, VLM_EFORMAT, "not the dict numpy writes");
  mutate(dir, "nl.npy", NPY "/m.f32.npy", " \n", "  ", p);
  expect_npy_error(p, VLM_EFORMAT, "does not end with a newline");
  mutate(dir, "missing.npy", NPY "/m.f32.npy", "'shape': (5, 7), ",
         "                 ", p);
  expect_npy_error(p, VLM_EFORMAT, "lacks 'shape'");
  /* a shape whose byte count overflows 64 bits */
  mutate(dir, "huge.npy", NPY "/m.f32.npy",
         "(5, 7), }                   ", "(99999999999, 9999999999), }", p);
  expect_npy_error(p, VLM_EFORMAT, "truncated");
  /* reading past the rows */
  vlm_npy *n;
  VLM_CHECK(vlm_npy_open(NPY "/m.f32.npy", &n));
  float row[7];
  VLM_EXPECT_ERR(VLM_EINVAL, vlm_npy_read_rows(n, 5, 1, row));
  VLM_CHECK(vlm_npy_read_rows(n, 4, 1, row));
  vlm_npy_close(n);
  expect_npy_error("/nonexistent.npy", VLM_ENOTFOUND, "nonexistent");
}

/* ---------------------------------------------- shards end to end (CLI) */

#define NROWS 240

static const char map3[] =
    "{\"shards\": [{\"id\": 0, \"slots\": [[0, 5000], [12000, 13000]]},"
    " {\"id\": 1, \"slots\": [[5001, 11999]], \"addresses\": [\"h1:7878\"]},"
    " {\"id\": 2, \"slots\": [[13001, 16383]]}]}";

/* A catalog of NROWS items with precomputed vectors (no model work), a
 * caption, a year, and for every fifth row an image path relative to the
 * catalog (for split to make absolute; the image gives the thumbnail). */
static void write_vector_catalog(const char *dir, const char *name) {
  char *p = path_in(dir, name);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  uint64_t seed = 18;
  for (int i = 0; i < NROWS; i++) {
    float iv[DIM], tv[DIM];
    unit_vector(iv, &seed);
    unit_vector(tv, &seed);
    fprintf(f, "{\"key\": \"%s%d\"", i % 7 ? "item" : "{tagged}item", i);
    if (i % 5 == 0)
      fprintf(f, ", \"image\": \"img/photo_rgb.jpg\"");
    fprintf(f, ", \"caption\": \"caption %d\", \"meta\": {\"year\": %d}, "
               "\"image_vector\": [", i, 1900 + i);
    for (int k = 0; k < DIM; k++)
      fprintf(f, "%s%.9g", k ? ", " : "", iv[k]);
    fprintf(f, "], \"text_vector\": [");
    for (int k = 0; k < DIM; k++)
      fprintf(f, "%s%.9g", k ? ", " : "", tv[k]);
    fprintf(f, "]}\n");
  }
  /* a bad row with a key (its shard reports it) and one without (every
   * shard does, and it fails none) */
  fprintf(f, "{\"key\": \"badrow\", \"caption\": \"nothing to store\"}\n"
             "{\"key\": 7}\n");
  fclose(f);
  free(p);
}

static void make_images(const char *dir) {
  char *img = path_in(dir, "img");
  mkdir(img, 0755);
  char *to = path_in(dir, "img/photo_rgb.jpg");
  copy_file(MODEL "/photo_rgb.jpg", to);
  free(to);
  free(img);
}

/* Every record of a equal to b's, vectors and kept image bytes bit for
 * bit; both must hold exactly the keys keys[0..n) (or all of b's when keys
 * is NULL). */
static void assert_records_equal(vlm_db *a, vlm_db *b, const char *key) {
  vlm_record *x, *y;
  VLM_CHECK(vlm_db_get2(a, key, VLM_GET_IMAGE, &x));
  VLM_CHECK(vlm_db_get2(b, key, VLM_GET_IMAGE, &y));
  assert_int_equal(x->image_len, y->image_len);
  if (x->image_len)
    assert_memory_equal(x->image, y->image, x->image_len);
  assert_string_equal(x->meta_json, y->meta_json);
  assert_true(!x->caption == !y->caption);
  if (x->caption)
    assert_string_equal(x->caption, y->caption);
  assert_true(!x->source == !y->source);
  if (x->source)
    assert_string_equal(x->source, y->source);
  assert_true(!x->image_vec == !y->image_vec && !x->text_vec == !y->text_vec);
  if (x->image_vec)
    assert_memory_equal(x->image_vec, y->image_vec, DIM * sizeof(float));
  if (x->text_vec)
    assert_memory_equal(x->text_vec, y->text_vec, DIM * sizeof(float));
  assert_int_equal(x->thumb_len, y->thumb_len);
  if (x->thumb_len)
    assert_memory_equal(x->thumb, y->thumb, x->thumb_len);
  vlm_record_free(x);
  vlm_record_free(y);
}

typedef struct {
  char **keys;
  int n;
} keylist;

static int collect_key(const vlm_record *rec, void *arg) {
  keylist *k = arg;
  k->keys = realloc(k->keys, (size_t)(k->n + 1) * sizeof *k->keys);
  k->keys[k->n++] = strdup(rec->key);
  return 0;
}

static keylist db_keys(vlm_db *db) {
  keylist k = {0};
  VLM_CHECK(vlm_db_foreach(db, collect_key, &k));
  return k;
}

static void keylist_free(keylist *k) {
  for (int i = 0; i < k->n; i++)
    free(k->keys[i]);
  free(k->keys);
}

static vlm_db *open_ro(const char *path) {
  vlm_db *db;
  vlm_db_open_options o = {.readonly = 1};
  VLM_CHECK(vlm_db_open(path, &o, &db));
  return db;
}

/* Three shards each read the whole catalog (skipping the others' rows),
 * three more are loaded from `vlmdb split`'s files: the union of each set
 * is the single database built from the catalog, every key once, in the
 * shard its slot names, every record and vector equal. */
static void test_shards_equal_single_database(void **state) {
  const char *dir = *state;
  make_images(dir);
  write_vector_catalog(dir, "catalog.jsonl");
  put_text(dir, "cluster.json", map3);
  char *catalog = path_in(dir, "catalog.jsonl");
  char *map = path_in(dir, "cluster.json");
  char *single = path_in(dir, "single");
  free(RUN_OK(dir, "init", "--db", single, "--model", MODEL, "--index", "Flat",
              "--field", "year:int"));
  free(RUN_OK(dir, "ingest", "--db", single, catalog, "-q"));
  vlm_cluster *cluster;
  VLM_CHECK(vlm_cluster_load(map, NULL, NULL, &cluster));

  /* shard 0 by --shard 0, 1 by VLMDB_SHARD, 2 by SLURM_ARRAY_TASK_ID */
  static const char *const env[3] = {NULL, "VLMDB_SHARD=1",
                                     "SLURM_ARRAY_TASK_ID=2"};
  char shard[3][PATH_MAX], split_shard[3][PATH_MAX];
  long total = 0, want_rows[3] = {0, 0, 0};
  int bad_shard = vlm_cluster_shard_of(cluster, "badrow", 6);
  for (int i = 0; i < NROWS; i++) {
    char key[32];
    snprintf(key, sizeof key, "%s%d", i % 7 ? "item" : "{tagged}item", i);
    want_rows[vlm_cluster_shard_of(cluster, key, strlen(key))]++;
  }
  for (int s = 0; s < 3; s++) {
    snprintf(shard[s], PATH_MAX, "%s/shard-%d", dir, s);
    char idx[8];
    snprintf(idx, sizeof idx, "%d", s);
    char *out, *err;
    assert_int_equal(RUN_ENV(dir, &out, NULL, env[s], "init", "--db",
                             shard[s], "--model", MODEL, "--index", "Flat",
                             "--field", "year:int", "--cluster", map,
                             "--shard", s == 0 ? "0" : "auto"),
                     0);
    free(out);
    assert_int_equal(RUN(dir, &out, &err, "ingest", "--db", shard[s],
                         catalog, "--json", "-q"),
                     0);
    json_t *sum = parse_json(out);
    long ingested = json_int_at(sum, "ingested", NULL);
    long other = json_int_at(sum, "skipped_by_reason", "other-shard");
    assert_int_equal(json_int_at(sum, "rows", NULL), NROWS + 2);
    assert_int_equal(ingested, want_rows[s]);
    assert_int_equal(other, NROWS - want_rows[s] + (bad_shard != s));
    assert_int_equal(json_int_at(sum, "skipped_by_reason", "no-content"),
                     bad_shard == s);
    assert_int_equal(json_int_at(sum, "skipped_by_reason", "bad-key"), 1);
    assert_int_equal(json_int_at(sum, "skipped", NULL),
                     NROWS + 2 - want_rows[s]);
    assert_true(!strstr(err, "badrow") == (bad_shard != s));
    assert_contains(err, ":242: bad-key");
    free(err);
    total += ingested;
    json_decref(sum);
    free(out);
    /* the text summary counts them too */
    assert_int_equal(RUN(dir, &out, NULL, "ingest", "--db", shard[s], catalog,
                         "-q"),
                     0);
    char want[64];
    snprintf(want, sizeof want, "other-shard %ld",
             NROWS - want_rows[s] + (bad_shard != s));
    assert_contains(out, want);
    free(out);
  }
  assert_int_equal(total, NROWS);
  print_message("rows per shard: %ld, %ld, %ld\n", want_rows[0], want_rows[1],
                want_rows[2]);
  assert_true(want_rows[0] > 0 && want_rows[1] > 0 && want_rows[2] > 0);

  /* split: one pass, shard-I.jsonl, image paths absolute */
  char *parts = path_in(dir, "parts");
  char *out = RUN_OK(dir, "split", "--cluster", map, "--catalog", catalog,
                     "--out", parts, "--json");
  json_t *sum = parse_json(out);
  free(out);
  assert_int_equal(json_int_at(sum, "rows", NULL), NROWS + 1);
  assert_int_equal(json_int_at(sum, "bad", NULL), 1); /* the keyless row */
  for (int s = 0; s < 3; s++)
    assert_int_equal(json_integer_value(json_array_get(
                         json_object_get(sum, "shards"), (size_t)s)),
                     want_rows[s] + (bad_shard == s));
  json_decref(sum);
  char *img = path_in(dir, "img/photo_rgb.jpg");
  char *abs = realpath(img, NULL);
  char quoted[PATH_MAX + 4];
  snprintf(quoted, sizeof quoted, "\"%s\"", abs);
  int abs_paths = 0;
  for (int s = 0; s < 3; s++) {
    char part[PATH_MAX];
    snprintf(part, sizeof part, "%s/shard-%d.jsonl", parts, s);
    char *text = slurp_text(part);
    long lines = 0;
    for (char *q = text; (q = strchr(q, '\n')); q++)
      lines++;
    assert_int_equal(lines, want_rows[s] + (bad_shard == s));
    assert_null(strstr(text, "\"img/photo_rgb.jpg\""));
    for (char *q = text; (q = strstr(q, quoted)); q++)
      abs_paths++;
    free(text);
    /* loaded from the split file, from elsewhere: the same shard */
    snprintf(split_shard[s], PATH_MAX, "%s/split-%d", dir, s);
    char idx[8];
    snprintf(idx, sizeof idx, "%d", s);
    free(RUN_OK(dir, "init", "--db", split_shard[s], "--model", MODEL,
                "--index", "Flat", "--field", "year:int", "--cluster", map,
                "--shard", idx));
    char *o2 = RUN_OK(dir, "ingest", "--db", split_shard[s], part, "--json",
                      "-q");
    json_t *js = parse_json(o2);
    assert_int_equal(json_int_at(js, "ingested", NULL), want_rows[s]);
    assert_int_equal(json_int_at(js, "skipped", NULL), bad_shard == s);
    json_decref(js);
    free(o2);
  }
  assert_int_equal(abs_paths, NROWS / 5); /* every image row's path */
  free(abs);
  free(img);

  /* every key once, in its slot's shard, equal to the single database */
  vlm_db *one = open_ro(single);
  keylist all = db_keys(one);
  assert_int_equal(all.n, NROWS);
  int seen = 0;
  for (int set = 0; set < 2; set++)
    for (int s = 0; s < 3; s++) {
      vlm_db *db = open_ro(set ? split_shard[s] : shard[s]);
      keylist k = db_keys(db);
      assert_int_equal(k.n, want_rows[s]);
      for (int i = 0; i < k.n; i++) {
        assert_int_equal(
            vlm_cluster_shard_of(cluster, k.keys[i], strlen(k.keys[i])), s);
        assert_records_equal(db, one, k.keys[i]);
        seen++;
      }
      keylist_free(&k);
      vlm_db_close(db);
    }
  assert_int_equal(seen, 2 * NROWS);
  /* a key in no shard would leave a hole: every single key is found */
  for (int i = 0; i < all.n; i++) {
    int s = vlm_cluster_shard_of(cluster, all.keys[i], strlen(all.keys[i]));
    vlm_db *db = open_ro(shard[s]);
    assert_int_equal(vlm_db_exists(db, all.keys[i]), 1);
    vlm_db_close(db);
  }
  keylist_free(&all);
  vlm_db_close(one);

  /* cluster check: fine, then each kind of problem, one line each */
  char *err;
  assert_int_equal(RUN(dir, &out, &err, "cluster", "check", map, shard[0],
                       shard[1], shard[2]),
                   0);
  char want[128];
  snprintf(want, sizeof want, "ok: 3 shard databases, %d items, 0 problems",
           NROWS);
  assert_contains(out, want);
  snprintf(want, sizeof want, "shard 1: %s: %ld items, slots 5001-11999",
           shard[1], want_rows[1]);
  assert_contains(out, want);
  assert_string_equal(err, "");
  free(out);
  free(err);
  assert_int_equal(RUN(dir, &out, &err, "cluster", "check", map, shard[0],
                       shard[2]),
                   1);
  assert_contains(err, "shard 1: no database given");
  assert_contains(out, "1 problem");
  free(out);
  free(err);
  assert_int_equal(RUN(dir, &out, &err, "cluster", "check", map, shard[0],
                       shard[1], shard[2], split_shard[1], single),
                   1);
  snprintf(want, sizeof want, "%s: shard 1 is also %s", split_shard[1],
           shard[1]);
  assert_contains(err, want);
  snprintf(want, sizeof want, "%s: not a shard", single);
  assert_contains(err, want);
  free(out);
  free(err);
  /* another index kind, and a shard of another map */
  char *hnsw = path_in(dir, "hnsw-2");
  free(RUN_OK(dir, "init", "--db", hnsw, "--model", MODEL, "--field",
              "year:int", "--cluster", map, "--shard", "2"));
  assert_int_equal(RUN(dir, &out, &err, "cluster", "check", map, shard[0],
                       shard[1], hnsw),
                   1);
  snprintf(want, sizeof want, "%s: index HNSW32, %s has Flat", hnsw, shard[0]);
  assert_contains(err, want);
  free(out);
  free(err);
  put_text(dir, "other.json",
           "{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383]]}]}");
  char *other_map = path_in(dir, "other.json");
  assert_int_equal(RUN(dir, &out, &err, "cluster", "check", other_map,
                       shard[0]),
                   1);
  assert_contains(err, "made for another cluster map");
  free(out);
  free(err);
  /* a broken map: every problem on its own line, exit 1 */
  put_text(dir, "broken.json",
           "{\"shards\": [{\"id\": 0, \"slots\": [[0, 8191]]},"
           " {\"id\": 1, \"slots\": [[8000, 9000], [10000, 16383]]}]}");
  char *broken = path_in(dir, "broken.json");
  assert_int_equal(RUN(dir, &out, &err, "cluster", "check", broken, shard[0]),
                   1);
  assert_contains(err, "overlaps shard 0 range [0, 8191] (from slot 8000)\n");
  assert_contains(err, "slots 9001-9999 belong to no shard");
  free(out);
  free(err);
  assert_int_equal(RUN(dir, &out, &err, "cluster", "check", "--json", map,
                       shard[0], shard[1], shard[2]),
                   0);
  json_t *cj = parse_json(out);
  assert_true(json_is_true(json_object_get(cj, "ok")));
  assert_int_equal(json_int_at(cj, "items", NULL), NROWS);
  json_decref(cj);
  free(out);
  free(err);
  /* init refuses a broken map (naming the range) and a bad shard */
  assert_int_equal(RUN(dir, NULL, &err, "init", "--db", hnsw, "--model",
                       MODEL, "--cluster", broken, "--shard", "0"),
                   1);
  assert_contains(err, "shard 1 range [8000, 9000] overlaps");
  free(err);
  assert_int_equal(RUN(dir, NULL, &err, "init", "--db", hnsw, "--model",
                       MODEL, "--cluster", map, "--shard", "3"),
                   2);
  assert_contains(err, "--shard '3' is not a shard index in 0..2");
  free(err);
  assert_int_equal(RUN(dir, NULL, &err, "init", "--db", hnsw, "--model",
                       MODEL, "--cluster", map, "--shard", "auto"),
                   2);
  assert_contains(err, "none of SLURM_ARRAY_TASK_ID");
  free(err);
  assert_int_equal(RUN_ENV(dir, NULL, &err, "JOB_COMPLETION_INDEX=x", "init",
                           "--db", hnsw, "--model", MODEL, "--cluster", map,
                           "--shard", "auto"),
                   2);
  assert_contains(err, "JOB_COMPLETION_INDEX is 'x'");
  free(err);
  assert_int_equal(RUN(dir, NULL, &err, "init", "--db", hnsw, "--model",
                       MODEL, "--shard", "1"),
                   2);
  free(err);
  /* info shows the shard */
  out = RUN_OK(dir, "info", "--db", shard[0]);
  assert_contains(out, "shard:          0 of 3, slots 0-5000,12000-13000");
  free(out);
  out = RUN_OK(dir, "info", "--db", shard[0], "--json");
  json_t *ij = parse_json(out);
  json_t *cl = json_object_get(ij, "cluster");
  assert_int_equal(json_int_at(cl, "shards", NULL), 3);
  assert_string_equal(json_string_value(json_object_get(cl, "digest")),
                      cluster->digest);
  json_decref(ij);
  free(out);
  free(other_map);
  free(broken);
  free(hnsw);
  free(parts);
  vlm_cluster_free(cluster);
  free(single);
  free(map);
  free(catalog);
}

/* The server refuses a write of another shard's key with the database's
 * error, and takes its own. */
static void test_server_refuses_other_slots(void **state) {
  const char *dir = *state;
  put_text(dir, "cluster.json",
           "{\"shards\": [{\"id\": 0, \"slots\": [[0, 8191]]},"
           " {\"id\": 1, \"slots\": [[8192, 16383]]}]}");
  char *map = path_in(dir, "cluster.json");
  char *db = path_in(dir, "s0");
  free(RUN_OK(dir, "init", "--db", db, "--model", MODEL, "--cluster", map,
              "--shard", "0"));
  char *bin = vlmdb_path();
  char *log = path_in(dir, "serve.log");
  vlm_test_server srv;
  const char *args[] = {"--db", db, "--port", "0", NULL};
  assert_int_equal(vlm_test_server_spawn(&srv, bin, args, log, 60), 0);
  running_child = srv.pid;
  redisContext *c = redisConnect("127.0.0.1", srv.port);
  assert_true(c && !c->err);
  uint64_t seed = 3;
  float v[DIM];
  unit_vector(v, &seed);
  char mine[32], other[32];
  int n = 0;
  key_on_side(mine, sizeof mine, 0, &n);
  key_on_side(other, sizeof other, 1, &n);
  redisReply *r = redisCommand(c, "ADD %s IMAGEVEC %b", other, v, sizeof v);
  assert_non_null(r);
  assert_int_equal(r->type, REDIS_REPLY_ERROR);
  assert_contains(r->str, "key belongs to another shard");
  char want[64];
  snprintf(want, sizeof want, "slot %d", vlm_key_slot(other, strlen(other)));
  assert_contains(r->str, want);
  freeReplyObject(r);
  r = redisCommand(c, "ADD %s IMAGEVEC %b", mine, v, sizeof v);
  assert_non_null(r);
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  assert_int_equal(r->integer, 1);
  freeReplyObject(r);
  redisFree(c);
  vlm_test_server_stop(&srv, 10);
  running_child = 0;
  free(log);
  free(bin);
  free(db);
  free(map);
}

/* ------------------------------------------------------ atomic publish */

#define NBIG 1000

static void write_image_catalog(const char *dir, int with_vectors) {
  static const char *const images[] = {"photo_rgb.jpg", "photo_prog.jpg",
                                       "rgb.png", "gray.jpg", "wide.png"};
  char *img = path_in(dir, "img");
  mkdir(img, 0755);
  free(img);
  for (int i = 0; i < 5; i++) {
    char from[PATH_MAX], to[PATH_MAX];
    snprintf(from, sizeof from, MODEL "/%s", images[i]);
    snprintf(to, sizeof to, "%s/img/%s", dir, images[i]);
    copy_file(from, to);
  }
  char *p = path_in(dir, "big.jsonl");
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  uint64_t seed = 5;
  for (int i = 0; i < NBIG; i++) {
    fprintf(f, "{\"key\": \"item%04d\", \"image\": \"img/%s\", \"%s\": "
               "\"caption number %d\", \"meta\": {\"n\": %d}",
            i, images[i % 5], with_vectors ? "caption" : "text", i, i);
    for (int m = 0; with_vectors && m < 2; m++) {
      float v[DIM];
      unit_vector(v, &seed);
      fprintf(f, ", \"%s\": [", m ? "text_vector" : "image_vector");
      for (int k = 0; k < DIM; k++)
        fprintf(f, "%s%.9g", k ? ", " : "", v[k]);
      fprintf(f, "]");
    }
    fprintf(f, "}\n");
  }
  fclose(f);
  free(p);
}

static int wait_progress_of(const char *dir, pid_t pid, const char *label,
                            long rows) {
  char path[PATH_MAX], tag[32];
  snprintf(path, sizeof path, "%s/.stderr", dir);
  size_t taglen = (size_t)snprintf(tag, sizeof tag, "%s: ", label);
  for (int tries = 0; tries < 6000; tries++) { /* 60 s at most */
    char *err = slurp_text(path);
    long best = -1;
    for (char *p = err; (p = strstr(p, tag)); p += taglen) {
      long done = strtol(p + taglen, NULL, 10);
      if (done > best)
        best = done;
    }
    free(err);
    if (best >= rows)
      return 1;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      running_child = 0;
      fail_msg("the %s ended (status %d) before %ld rows were reported",
               label, st, rows);
    }
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

static int wait_progress(const char *dir, pid_t pid, long rows) {
  return wait_progress_of(dir, pid, "ingest", rows);
}

/* A shard task killed with SIGKILL in the middle of its ingest leaves
 * only DIR.tmp; the same two commands run again resume it, publish DIR,
 * and the result equals a build that was never interrupted, record for
 * record, vector for vector and thumbnail for thumbnail.  Run a third
 * time, they do nothing.  The catalog carries its vectors (the pipeline
 * still reads every image for its thumbnail): the encoder's rounding
 * depends on how many rows one call takes, which a resumed run changes. */
static void test_publish_resumes_after_kill(void **state) {
  const char *dir = *state;
  write_image_catalog(dir, 1);
  put_text(dir, "cluster.json",
           "{\"shards\": [{\"id\": 0, \"slots\": [[0, 12000]]},"
           " {\"id\": 1, \"slots\": [[12001, 16383]]}]}");
  char *map = path_in(dir, "cluster.json");
  char *catalog = path_in(dir, "big.jsonl");
  char *clean = path_in(dir, "clean"), *killed = path_in(dir, "killed");
  char killed_tmp[PATH_MAX];
  snprintf(killed_tmp, sizeof killed_tmp, "%s.tmp", killed);
  const char *env = "SLURM_ARRAY_TASK_ID=0";
  for (int k = 0; k < 2; k++) {
    char *out;
    assert_int_equal(RUN_ENV(dir, &out, NULL, env, "init", "--db",
                             k ? killed : clean, "--model", MODEL, "--cluster",
                             map, "--shard", "auto", "--publish"),
                     0);
    assert_contains(out, "published as");
    free(out);
  }
  /* the same batches as the killed task's: the encoder's rounding depends
   * on how many rows it takes at once */
  assert_int_equal(RUN(dir, NULL, NULL, "ingest", "--db", clean, "--publish",
                       catalog, "-q", "--batch", "4", "--threads", "1"),
                   0);
  assert_true(exists(clean));
  char clean_tmp[PATH_MAX];
  snprintf(clean_tmp, sizeof clean_tmp, "%s.tmp", clean);
  assert_false(exists(clean_tmp));

  pid_t pid = spawn_env(dir, NULL,
                        (const char *const[]){"ingest", "--db", killed,
                                              "--publish", catalog, "--batch",
                                              "4", "--threads", "1", NULL});
  running_child = pid;
  assert_true(wait_progress(dir, pid, 40));
  kill(pid, SIGKILL);
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  running_child = 0;
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  assert_false(exists(killed)); /* nothing published */
  assert_true(exists(killed_tmp));

  /* the task again, both commands */
  char *out, *err;
  assert_int_equal(RUN_ENV(dir, &out, NULL, env, "init", "--db", killed,
                           "--model", MODEL, "--cluster", map, "--shard",
                           "auto", "--publish"),
                   0);
  assert_contains(out, "resuming it");
  free(out);
  assert_int_equal(RUN(dir, &out, &err, "ingest", "--db", killed,
                       "--publish", catalog, "--json", "-q"),
                   0);
  json_t *sum = parse_json(out);
  long exists_n = json_int_at(sum, "skipped_by_reason", "exists");
  long ingested = json_int_at(sum, "ingested", NULL);
  /* 40 rows read, about 3 in 4 of them this shard's */
  assert_true(exists_n >= 10);
  assert_true(ingested > 0);
  json_decref(sum);
  assert_contains(err, "published");
  free(out);
  free(err);
  assert_true(exists(killed));
  assert_false(exists(killed_tmp));

  vlm_db *a = open_ro(clean), *b = open_ro(killed);
  keylist ka = db_keys(a), kb = db_keys(b);
  assert_int_equal(ka.n, kb.n);
  assert_int_equal(ka.n, exists_n + ingested);
  assert_true(ka.n > NBIG / 4 && ka.n < NBIG);
  for (int i = 0; i < ka.n; i++) {
    assert_string_equal(ka.keys[i], kb.keys[i]);
    assert_records_equal(b, a, ka.keys[i]);
  }
  print_message("killed with %ld items stored; %d items after the rerun, "
                "each equal to the uninterrupted build\n", exists_n, ka.n);
  keylist_free(&ka);
  keylist_free(&kb);
  vlm_db_close(a);
  vlm_db_close(b);

  /* a third run: nothing to do, nothing touched */
  assert_int_equal(RUN_ENV(dir, &out, NULL, env, "init", "--db", killed,
                           "--model", MODEL, "--cluster", map, "--shard",
                           "auto", "--publish"),
                   0);
  assert_contains(out, "published already");
  free(out);
  assert_false(exists(killed_tmp));
  assert_int_equal(RUN(dir, NULL, &err, "ingest", "--db", killed, "--publish",
                       catalog),
                   0);
  assert_contains(err, "published already: nothing to do");
  free(err);
  /* a DIR.tmp made with other settings is not resumed */
  char *other = path_in(dir, "other");
  free(RUN_OK(dir, "init", "--db", other, "--model", MODEL, "--index", "Flat",
              "--publish"));
  assert_int_equal(RUN(dir, NULL, &err, "init", "--db", other, "--model",
                       MODEL, "--publish"),
                   1);
  assert_contains(err, "made with other settings (index Flat)");
  free(err);
  /* ingest --publish without its DIR.tmp */
  char *none = path_in(dir, "none");
  assert_int_equal(RUN(dir, NULL, &err, "ingest", "--db", none, "--publish",
                       catalog),
                   1);
  assert_contains(err, "none.tmp does not exist");
  free(err);
  free(none);
  free(other);
  free(clean);
  free(killed);
  free(catalog);
  free(map);
}

/* ------------------------------------------------- embeddings as files */

static void write_layout_npy(const char *dir, const char *name,
                             const float *v, int64_t rows, int64_t cols) {
  char *p = path_in(dir, name);
  VLM_CHECK(vlm_npy_write(p, v, rows, cols, VLM_NPY_F32));
  free(p);
}

/* `vlmdb embed --out` writes the layout, float16 or float32, one
 * partition per shard; ingest reads it back with the vectors as given
 * (equal to the model's within float16's rounding) and without the model. */
static void test_embed_files_round_trip(void **state) {
  const char *dir = *state;
  write_image_catalog(dir, 0);
  char *catalog = path_in(dir, "small.jsonl");
  put_text(dir, "small.jsonl",
           "{\"key\": \"a\", \"image\": \"img/photo_rgb.jpg\", \"text\": \"a "
           "street\", \"meta\": {\"n\": 1}}\n"
           "{\"key\": \"b\", \"image\": \"img/rgb.png\", \"caption\": \"bands\"}\n"
           "{\"key\": \"c\", \"text\": \"only text\"}\n"
           "{\"key\": \"d\", \"image\": \"img/missing.jpg\"}\n"
           "{\"key\": \"e\", \"image\": \"img/wide.png\", \"text\": \"wide\", "
           "\"source\": \"http://example.com/wide.png\"}\n"
           "{\"key\": 5}\n");
  /* the oracle: the same rows embedded by ingest */
  char *direct = path_in(dir, "direct");
  free(RUN_OK(dir, "init", "--db", direct, "--model", MODEL, "--index",
              "Flat"));
  char *err;
  assert_int_equal(RUN(dir, NULL, NULL, "ingest", "--db", direct, catalog,
                       "-q"),
                   0);
  for (int f16 = 0; f16 < 2; f16++) {
    char *emb = path_in(dir, f16 ? "emb16" : "emb32");
    char *out;
    assert_int_equal(RUN(dir, &out, &err, "embed", "--model", MODEL,
                         "--catalog", catalog, "--out", emb, "--dtype",
                         f16 ? "float16" : "float32", "--json", "--batch",
                         "2"),
                     0);
    json_t *sum = parse_json(out);
    assert_int_equal(json_int_at(sum, "rows", NULL), 4);
    assert_int_equal(json_int_at(sum, "images", NULL), 3);
    assert_int_equal(json_int_at(sum, "texts", NULL), 3);
    assert_int_equal(json_int_at(sum, "bad", NULL), 2);
    json_decref(sum);
    assert_contains(err, "small.jsonl:4: missing-file: key \"d\"");
    assert_contains(err, "small.jsonl:6: bad-key");
    free(out);
    free(err);
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/img_emb/img_emb_0.npy", emb);
    vlm_npy *n;
    VLM_CHECK(vlm_npy_open(p, &n));
    assert_int_equal(vlm_npy_info(n)->rows, 4);
    assert_int_equal(vlm_npy_info(n)->cols, DIM);
    assert_int_equal(vlm_npy_info(n)->dtype, f16 ? VLM_NPY_F16 : VLM_NPY_F32);
    vlm_npy_close(n);
    snprintf(p, sizeof p, "%s/metadata/metadata_0.jsonl", emb);
    char *meta = slurp_text(p);
    assert_contains(meta, "{\"key\":\"a\",\"image_path\":\"");
    assert_contains(meta, "\"caption\":\"a street\",\"meta\":{\"n\":1}}\n");
    assert_contains(meta, "\"source\":\"http://example.com/wide.png\"");
    free(meta);

    char *db = path_in(dir, f16 ? "from16" : "from32");
    free(RUN_OK(dir, "init", "--db", db, "--model", MODEL, "--index",
                "Flat"));
    assert_int_equal(RUN(dir, &out, NULL, "ingest", "--db", db,
                         f16 ? "--embeddings" : emb, f16 ? emb : "--json",
                         f16 ? "--json" : "-q", "-q"),
                     0);
    sum = parse_json(out);
    assert_int_equal(json_int_at(sum, "ingested", NULL), 4);
    assert_true(json_real_value(json_object_get(sum, "model_load_s")) == 0);
    json_decref(sum);
    free(out);
    vlm_db *a = open_ro(db), *b = open_ro(direct);
    const char *keys[] = {"a", "b", "c", "e"};
    double worst = 0;
    for (int k = 0; k < 4; k++) {
      vlm_record *x, *y;
      VLM_CHECK(vlm_db_get(a, keys[k], &x));
      VLM_CHECK(vlm_db_get(b, keys[k], &y));
      assert_true(!x->image_vec == !y->image_vec);
      assert_true(!x->text_vec == !y->text_vec);
      for (int m = 0; m < 2; m++) {
        const float *u = m ? x->text_vec : x->image_vec;
        const float *w = m ? y->text_vec : y->image_vec;
        for (int i = 0; u && i < DIM; i++)
          if (fabs(u[i] - w[i]) > worst)
            worst = fabs(u[i] - w[i]);
      }
      assert_string_equal(x->meta_json, y->meta_json);
      assert_true(!x->caption == !y->caption && !x->source == !y->source);
      if (y->caption)
        assert_string_equal(x->caption, y->caption);
      if (y->source)
        assert_string_equal(x->source, y->source);
      vlm_record_free(x);
      vlm_record_free(y);
    }
    print_message("%s: largest difference from ingest's own vectors %.3g\n",
                  f16 ? "float16" : "float32", worst);
    assert_true(worst < (f16 ? 2e-3 : 1e-5));
    vlm_db_close(a);
    vlm_db_close(b);
    free(db);
    free(emb);
  }
  /* a shard's partition is named as clip-retrieval names partitions */
  put_text(dir, "c12.json",
           "{\"shards\": [{\"id\": 0, \"slots\": [[0, 1000]]},"
           " {\"id\": 1, \"slots\": [[1001, 2000]]},"
           " {\"id\": 2, \"slots\": [[2001, 3000]]},"
           " {\"id\": 3, \"slots\": [[3001, 4000]]},"
           " {\"id\": 4, \"slots\": [[4001, 5000]]},"
           " {\"id\": 5, \"slots\": [[5001, 6000]]},"
           " {\"id\": 6, \"slots\": [[6001, 7000]]},"
           " {\"id\": 7, \"slots\": [[7001, 8000]]},"
           " {\"id\": 8, \"slots\": [[8001, 9000]]},"
           " {\"id\": 9, \"slots\": [[9001, 10000]]},"
           " {\"id\": 10, \"slots\": [[10001, 16383]]}]}");
  char *c12 = path_in(dir, "c12.json"), *embs = path_in(dir, "embs");
  long rows = 0;
  for (int s = 0; s < 11; s++) {
    char idx[8], *out;
    snprintf(idx, sizeof idx, "%d", s);
    assert_int_equal(RUN(dir, &out, NULL, "embed", "--model", MODEL,
                         "--catalog", catalog, "--out", embs, "--cluster",
                         c12, "--shard", idx, "--json"),
                     0);
    json_t *sum = parse_json(out);
    rows += json_int_at(sum, "rows", NULL);
    json_decref(sum);
    free(out);
  }
  assert_int_equal(rows, 4);
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/metadata/metadata_07.jsonl", embs);
  assert_true(exists(p));
  char *all = path_in(dir, "from-shards");
  free(RUN_OK(dir, "init", "--db", all, "--model", MODEL));
  char *out = RUN_OK(dir, "ingest", "--db", all, embs, "--json", "-q");
  json_t *sum = parse_json(out);
  assert_int_equal(json_int_at(sum, "ingested", NULL), 4);
  json_decref(sum);
  free(out);
  free(all);
  free(c12);
  free(embs);
  free(direct);
  free(catalog);
}

/* A hand-made layout: the rows of each partition are checked as a whole
 * (alignment, dtype, order, dimension, orphans: the ingest stops before
 * writing) and one by one (non-finite, not normalized, all zeros: the row
 * is skipped as bad-vector or no-content). */
static void test_embeddings_layout_hostile(void **state) {
  const char *dir = *state;
  char *db = path_in(dir, "db");
  free(RUN_OK(dir, "init", "--db", db, "--model", MODEL, "--index", "Flat"));
  char *lay = path_in(dir, "lay");
  char sub[PATH_MAX];
  mkdir(lay, 0755);
  static const char *const subs[] = {"img_emb", "text_emb", "metadata"};
  for (int i = 0; i < 3; i++) {
    snprintf(sub, sizeof sub, "%s/%s", lay, subs[i]);
    mkdir(sub, 0755);
  }
  float v[5 * DIM];
  uint64_t seed = 9;
  for (int r = 0; r < 5; r++)
    unit_vector(v + r * DIM, &seed);
  v[1 * DIM + 3] = NAN;                       /* row 1: not finite */
  for (int i = 0; i < DIM; i++)
    v[2 * DIM + i] *= 2;                      /* row 2: length 2 */
  memset(v + 3 * DIM, 0, DIM * sizeof(float)); /* row 3: absent */
  write_layout_npy(dir, "lay/img_emb/img_emb_0.npy", v, 5, DIM);
  put_text(dir, "lay/metadata/metadata_0.jsonl",
           "{\"key\": \"r0\", \"caption\": \"zero\", \"url\": \"http://x/0\","
           " \"width\": 64}\n"
           "{\"key\": \"r1\"}\n"
           "{\"key\": \"r2\"}\n"
           "{\"key\": \"r3\"}\n"
           "{\"image_path\": \"/data/r4.jpg\", \"caption\": \"four\"}\n");
  char *out, *err;
  assert_int_equal(RUN(dir, &out, &err, "ingest", "--db", db, lay, "--json",
                       "-q"),
                   0);
  json_t *sum = parse_json(out);
  assert_int_equal(json_int_at(sum, "ingested", NULL), 2);
  assert_int_equal(json_int_at(sum, "skipped_by_reason", "bad-vector"), 2);
  assert_int_equal(json_int_at(sum, "skipped_by_reason", "no-content"), 1);
  json_decref(sum);
  assert_contains(err, "img vector [3] is not finite (row 1 of "
                       "img_emb_0.npy)");
  assert_contains(err, "img vector has length 2, not 1");
  free(out);
  free(err);
  vlm_db *d = open_ro(db);
  vlm_record *rec;
  VLM_CHECK(vlm_db_get(d, "r0", &rec));
  assert_string_equal(rec->caption, "zero");
  assert_string_equal(rec->source, "http://x/0");
  assert_string_equal(rec->meta_json, "{\"width\":64}"); /* flattened */
  assert_memory_equal(rec->image_vec, v, DIM * sizeof(float));
  assert_null(rec->text_vec);
  vlm_record_free(rec);
  VLM_CHECK(vlm_db_get(d, "/data/r4.jpg", &rec)); /* image_path as key */
  assert_string_equal(rec->source, "/data/r4.jpg");
  vlm_record_free(rec);
  vlm_db_close(d);

  /* partition-wide problems: nothing is ingested, exit 1, named */
  static const struct {
    const char *file, *from, *want;
  } cases[] = {
      {"lay/text_emb/text_emb_0.npy", NPY "/f8.npy", "dtype '<f8'"},
      {"lay/text_emb/text_emb_0.npy", NPY "/fortran.npy", "Fortran order"},
      {"lay/text_emb/text_emb_0.npy", NPY "/m.f32.npy", "dimension 7"},
      {"lay/text_emb/text_emb_0.npy", NPY "/1d.npy", "1 dimensions"},
      {"lay/img_emb/img_emb_1.npy", NPY "/m.f32.npy",
       "no metadata/metadata_1.jsonl beside it"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *to = path_in(dir, cases[i].file);
    copy_file(cases[i].from, to);
    assert_int_equal(RUN(dir, &out, &err, "ingest", "--db", db, lay, "-q"),
                     1);
    assert_contains(err, cases[i].want);
    unlink(to);
    free(to);
    free(out);
    free(err);
  }
  /* a truncated .npy */
  char *img0 = path_in(dir, "lay/img_emb/img_emb_0.npy");
  size_t len;
  uint8_t *bytes = vlm_test_slurp(img0, &len);
  vlm_test_spit(img0, bytes, len - 3);
  assert_int_equal(RUN(dir, NULL, &err, "ingest", "--db", db, lay, "-q"), 1);
  assert_contains(err, "truncated");
  free(err);
  vlm_test_spit(img0, bytes, len);
  free(bytes);
  /* another dimension than the database's */
  float w[5 * 8] = {0};
  for (int r = 0; r < 5; r++)
    w[r * 8] = 1;
  write_layout_npy(dir, "lay/img_emb/img_emb_0.npy", w, 5, 8);
  assert_int_equal(RUN(dir, NULL, &err, "ingest", "--db", db, lay, "-q"), 1);
  assert_contains(err, "dimension 8");
  free(err);
  /* a metadata line more than the vectors */
  write_layout_npy(dir, "lay/img_emb/img_emb_0.npy", v, 5, DIM);
  put_text(dir, "lay/metadata/metadata_0.jsonl",
           "{\"key\": \"r0\"}\n{\"key\": \"r1\"}\n{\"key\": \"r2\"}\n"
           "{\"key\": \"r3\"}\n{\"key\": \"r4\"}\n{\"key\": \"r5\"}\n");
  assert_int_equal(RUN(dir, NULL, &err, "ingest", "--db", db, lay, "-q"), 1);
  assert_contains(err, "5 rows, but");
  assert_contains(err, "has 6 lines: the rows are not aligned");
  free(err);
  /* a bad metadata line is one bad row */
  put_text(dir, "lay/metadata/metadata_0.jsonl",
           "{\"key\": \"r0\"}\nnot json\n{\"key\": \"r2\"}\n[1]\n"
           "{\"key\": \"r4\"}\n");
  assert_int_equal(RUN(dir, &out, &err, "ingest", "--db", db, "--format",
                       "embeddings", lay, "--json", "-q"),
                   0);
  sum = parse_json(out);
  assert_int_equal(json_int_at(sum, "skipped_by_reason", "bad-syntax"), 2);
  json_decref(sum);
  assert_contains(err, "metadata_0.jsonl: not a JSON object");
  free(out);
  free(err);
  free(img0);
  free(lay);
  free(db);
}

/* ------------------------------------- one big index, memory-mapped */

/* n clustered vectors of dimension d (unit length): IVF lists of uneven
 * sizes, as real data gives. */
static float *clustered(int64_t n, int d, uint64_t seed) {
  float *x = malloc((size_t)n * d * sizeof *x);
  float centers[16][64];
  assert_non_null(x);
  assert_true(d <= 64);
  for (int c = 0; c < 16; c++)
    for (int j = 0; j < d; j++)
      centers[c][j] = (float)(vlm_test_uniform(&seed) * 2 - 1);
  for (int64_t i = 0; i < n; i++) {
    int c = (int)(vlm_test_splitmix64(&seed) % 16);
    double ss = 0;
    for (int j = 0; j < d; j++) {
      float v = centers[c][j] + (float)(vlm_test_uniform(&seed) - 0.5);
      x[i * d + j] = v;
      ss += (double)v * v;
    }
    for (int j = 0; j < d; j++)
      x[i * d + j] = (float)(x[i * d + j] / sqrt(ss));
  }
  return x;
}

static vlm_index *read_index(const char *path) {
  vlm_index *ix = NULL;
  int rc = vlm_index_read(path, &ix);
  if (rc)
    print_message("%s: %s\n", path, vlm_errmsg());
  assert_int_equal(rc, 0);
  return ix;
}

/* The layout's .npy files are read 1,024 rows at a time: a layout of two
 * partitions (2,500 rows with image and text vectors, then 700 with
 * images only) with bad rows at and across the block edges (1023 not
 * finite, 1024 of length 2, 2047 zero in both files, partition 1's first
 * row not finite) ingests every other row with its vectors bit for bit
 * and reports each bad row with its row number. */
static void test_embeddings_layout_blocks(void **state) {
  const char *dir = *state;
  char *db = path_in(dir, "db");
  free(RUN_OK(dir, "init", "--db", db, "--model", MODEL, "--index", "Flat"));
  char *lay = path_in(dir, "lay");
  char sub[PATH_MAX];
  mkdir(lay, 0755);
  static const char *const subs[] = {"img_emb", "text_emb", "metadata"};
  for (int i = 0; i < 3; i++) {
    snprintf(sub, sizeof sub, "%s/%s", lay, subs[i]);
    mkdir(sub, 0755);
  }
  enum { N0 = 2500, N1 = 700 };
  float *img = malloc((size_t)(N0 + N1) * DIM * sizeof *img);
  float *txt = malloc((size_t)N0 * DIM * sizeof *txt);
  assert_non_null(img);
  assert_non_null(txt);
  uint64_t seed = 77;
  for (int r = 0; r < N0 + N1; r++)
    unit_vector(img + (size_t)r * DIM, &seed);
  for (int r = 0; r < N0; r++)
    unit_vector(txt + (size_t)r * DIM, &seed);
  img[1023 * DIM + 5] = INFINITY;
  for (int i = 0; i < DIM; i++)
    img[1024 * DIM + i] *= 2;
  memset(img + 2047 * DIM, 0, DIM * sizeof(float));
  memset(txt + 2047 * DIM, 0, DIM * sizeof(float));
  img[(size_t)N0 * DIM] = NAN;
  write_layout_npy(dir, "lay/img_emb/img_emb_0.npy", img, N0, DIM);
  write_layout_npy(dir, "lay/text_emb/text_emb_0.npy", txt, N0, DIM);
  write_layout_npy(dir, "lay/img_emb/img_emb_1.npy", img + (size_t)N0 * DIM,
                   N1, DIM);
  for (int part = 0; part < 2; part++) {
    size_t cap = 64 * (size_t)N0, len = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    for (int r = 0; r < (part ? N1 : N0); r++)
      len += (size_t)snprintf(text + len, cap - len, "{\"key\": \"p%d-%d\"}\n",
                              part, r);
    snprintf(sub, sizeof sub, "lay/metadata/metadata_%d.jsonl", part);
    put_text(dir, sub, text);
    free(text);
  }
  char *out, *err;
  assert_int_equal(RUN(dir, &out, &err, "ingest", "--db", db, lay, "--json",
                       "-q"),
                   0);
  json_t *sum = parse_json(out);
  assert_int_equal(json_int_at(sum, "ingested", NULL), N0 + N1 - 4);
  assert_int_equal(json_int_at(sum, "skipped_by_reason", "bad-vector"), 3);
  assert_int_equal(json_int_at(sum, "skipped_by_reason", "no-content"), 1);
  json_decref(sum);
  assert_contains(err, "img vector [5] is not finite (row 1023 of "
                       "img_emb_0.npy)");
  assert_contains(err, "img vector has length 2, not 1");
  assert_contains(err, "img vector [0] is not finite (row 0 of "
                       "img_emb_1.npy)");
  free(out);
  free(err);
  vlm_db *d = open_ro(db);
  for (int r = 0; r < N0 + N1; r++) {
    int part = r >= N0, row = part ? r - N0 : r;
    char key[32];
    snprintf(key, sizeof key, "p%d-%d", part, row);
    vlm_record *rec = NULL;
    int rc = vlm_db_get(d, key, &rec);
    if (r == 1023 || r == 1024 || r == 2047 || r == N0) {
      assert_int_equal(rc, VLM_ENOTFOUND);
      continue;
    }
    VLM_CHECK(rc);
    assert_non_null(rec->image_vec);
    assert_memory_equal(rec->image_vec, img + (size_t)r * DIM,
                        DIM * sizeof(float));
    if (part) {
      assert_null(rec->text_vec);
    } else {
      assert_non_null(rec->text_vec);
      assert_memory_equal(rec->text_vec, txt + (size_t)r * DIM,
                          DIM * sizeof(float));
    }
    vlm_record_free(rec);
  }
  vlm_db_close(d);
  free(img);
  free(txt);
  free(lay);
  free(db);
}

/* Three parts, each a copy of one trained index holding a shard's
 * vectors under its own ids 0..n_i-1, merged with offsets into one index
 * whose lists are one file: it answers exactly as one index that was
 * given every vector under the global ids (nprobe = nlist: every list
 * scanned, so nothing approximate is left but the codes, which are the
 * same), in RAM after its files moved, and refuses what it cannot do. */
static void test_ivf_merge_equals_one_index(void **state) {
  const char *dir = *state;
  static const char *const factories[] = {"IVF16,Flat", "IVF16,PQ8x4",
                                          "IVF16,SQ8"};
  enum { D = 32, N = 12000, NTRAIN = 2000, NQ = 25, K = 10 };
  float *x = clustered(N, D, 1818);
  float *q = clustered(NQ, D, 99);
  int64_t *gids = malloc(N * sizeof *gids);
  assert_non_null(gids);
  for (int64_t i = 0; i < N; i++)
    gids[i] = i + 1; /* vlmdb's ids start at 1 */
  const int64_t cut[4] = {0, 3000, 3001, N}; /* part 1 holds one vector */
  for (size_t f = 0; f < sizeof factories / sizeof *factories; f++) {
    char trained[PATH_MAX], merged[PATH_MAX], lists[PATH_MAX];
    snprintf(trained, sizeof trained, "%s/trained-%zu.vlmidx", dir, f);
    snprintf(merged, sizeof merged, "%s/merged-%zu.vlmidx", dir, f);
    snprintf(lists, sizeof lists, "%s/merged-%zu.vlmidx.ivfdata", dir, f);
    vlm_index *t;
    VLM_CHECK(vlm_index_create(factories[f], D, VLM_METRIC_IP, &t));
    VLM_CHECK(vlm_index_train(t, NTRAIN, x));
    VLM_CHECK(vlm_index_write(t, trained));
    vlm_index_free(t);

    /* the oracle: one copy given everything under the global ids */
    vlm_index *one = read_index(trained);
    VLM_CHECK(vlm_index_add(one, N, x, gids));
    /* the parts: copies given their shard's vectors under local ids */
    vlm_index *parts[3];
    int64_t offsets[3];
    for (int p = 0; p < 3; p++) {
      int64_t n = cut[p + 1] - cut[p];
      parts[p] = read_index(trained);
      VLM_CHECK(vlm_index_add(parts[p], n, x + cut[p] * D, gids));
      offsets[p] = cut[p]; /* global = offset + local (1-based) */
    }
    /* parts from their files, mapped in place (as the CLI merges them) */
    for (int p = 0; p < 3; p++) {
      char part[PATH_MAX];
      snprintf(part, sizeof part, "%s/part-%zu-%d.vlmidx", dir, f, p);
      VLM_CHECK(vlm_index_write(parts[p], part));
      vlm_index_free(parts[p]);
      VLM_CHECK(vlm_index_read_mmap(part, &parts[p]));
      assert_true(vlm_index_is_ondisk(parts[p]));
      assert_int_equal(vlm_index_add(parts[p], 1, x, gids), VLM_EREADONLY);
      assert_int_equal(vlm_index_write(parts[p], trained), VLM_EUNSUPPORTED);
    }
    vlm_index *into = read_index(trained);
    VLM_CHECK(vlm_index_merge(into, parts, offsets, 3, lists));
    assert_true(vlm_index_is_ondisk(into));
    assert_int_equal(vlm_index_count(into), N);
    VLM_CHECK(vlm_index_write(into, merged));
    vlm_index_free(into);

    vlm_index_params all = {.nprobe = 16};
    float s1[NQ * K], s2[NQ * K];
    int64_t i1[NQ * K], i2[NQ * K];
    VLM_CHECK(vlm_index_search(one, NQ, q, K, &all, s1, i1));
    vlm_index *m = read_index(merged);
    assert_true(vlm_index_is_ondisk(m));
    assert_true(vlm_index_mapped_bytes(m) > 0);
    assert_int_equal(vlm_index_count(m), N);
    VLM_CHECK(vlm_index_search(m, NQ, q, K, &all, s2, i2));
    assert_memory_equal(i1, i2, sizeof i1);
    assert_memory_equal(s1, s2, sizeof s1);
    /* the ids are the global ones: the best hit of a stored vector of
     * part 2 is itself (Flat codes are exact) */
    if (f == 0) {
      float s;
      int64_t id;
      VLM_CHECK(vlm_index_search(m, 1, x + 5000 * D, 1, &all, &s, &id));
      assert_int_equal(id, 5001);
    }
    /* a filtered search (the dense bitmap over global ids) agrees too */
    uint8_t bitmap[(N + 1 + 7) / 8];
    memset(bitmap, 0, sizeof bitmap);
    for (int64_t id = 1; id <= N; id += 3)
      bitmap[id >> 3] |= (uint8_t)(1u << (id & 7));
    vlm_index_params filt = {.nprobe = 16, .bitmap = bitmap,
                             .bitmap_bits = N + 1};
    VLM_CHECK(vlm_index_search(one, NQ, q, K, &filt, s1, i1));
    VLM_CHECK(vlm_index_search(m, NQ, q, K, &filt, s2, i2));
    assert_memory_equal(i1, i2, sizeof i1);
    for (int i = 0; i < NQ * K; i++)
      assert_int_equal((i2[i] - 1) % 3, 0);
    /* read-only: no add, no remove */
    assert_int_equal(vlm_index_add(m, 1, x, gids), VLM_EREADONLY);
    assert_int_equal(vlm_index_remove(m, 1, gids, NULL), VLM_EREADONLY);
    assert_false(vlm_index_can_remove(m));
    vlm_index_free(m);

    /* the two files move together (the list file is found beside the
     * index, by name) */
    char moved[PATH_MAX], mlists[PATH_MAX], sub[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/moved-%zu", dir, f);
    assert_int_equal(mkdir(sub, 0755), 0);
    snprintf(moved, sizeof moved, "%s/merged-%zu.vlmidx", sub, f);
    snprintf(mlists, sizeof mlists, "%s/merged-%zu.vlmidx.ivfdata", sub, f);
    assert_int_equal(rename(merged, moved), 0);
    assert_int_equal(rename(lists, mlists), 0);
    m = read_index(moved);
    VLM_CHECK(vlm_index_search(m, NQ, q, K, &all, s2, i2));
    VLM_CHECK(vlm_index_search(one, NQ, q, K, &all, s1, i1));
    assert_memory_equal(i1, i2, sizeof i1);
    vlm_index_free(m);
    /* a list file cut short, or missing: refused, not mapped */
    assert_int_equal(truncate(mlists, 100), 0);
    vlm_index *bad = NULL;
    assert_int_equal(vlm_index_read(moved, &bad), VLM_ECORRUPT);
    assert_contains(vlm_errmsg(), "bytes, the index needs");
    assert_null(bad);
    unlink(mlists);
    assert_int_equal(vlm_index_read(moved, &bad), VLM_ECORRUPT);
    assert_contains(vlm_errmsg(), "No such file");

    /* a part trained on its own is not a copy of the trained index */
    vlm_index *other;
    VLM_CHECK(vlm_index_create(factories[f], D, VLM_METRIC_IP, &other));
    VLM_CHECK(vlm_index_train(other, NTRAIN, x + (N - NTRAIN) * D));
    VLM_CHECK(vlm_index_add(other, 10, x, gids));
    vlm_index *mixed[2] = {parts[0], other};
    into = read_index(trained);
    int64_t off2[2] = {0, 3000};
    assert_int_equal(vlm_index_merge(into, mixed, off2, 2, lists),
                     VLM_EMISMATCH);
    assert_contains(vlm_errmsg(), "part 1");
    vlm_index_free(into);
    vlm_index_free(other);
    /* an id pushed past INT64_MAX by its offset */
    into = read_index(trained);
    int64_t huge[1] = {INT64_MAX - 5};
    assert_int_equal(vlm_index_merge(into, parts + 2, huge, 1, lists),
                     VLM_EMISMATCH);
    assert_contains(vlm_errmsg(), "overflows");
    vlm_index_free(into);
    for (int p = 0; p < 3; p++)
      vlm_index_free(parts[p]);
    vlm_index_free(one);
    print_message("%s: merged index equals one index over all %d vectors\n",
                  factories[f], N);
  }
  /* HNSW graphs do not merge */
  vlm_index *h, *hp;
  VLM_CHECK(vlm_index_create("HNSW8", D, VLM_METRIC_IP, &h));
  VLM_CHECK(vlm_index_create("HNSW8", D, VLM_METRIC_IP, &hp));
  int64_t zero = 0;
  char lists[PATH_MAX];
  snprintf(lists, sizeof lists, "%s/h.ivfdata", dir);
  assert_int_equal(vlm_index_merge(h, &hp, &zero, 1, lists),
                   VLM_EUNSUPPORTED);
  vlm_index_free(h);
  vlm_index_free(hp);
  free(x);
  free(q);
  free(gids);
}

/* VmRSS of this process in KiB (/proc/self/status). */
static long rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  assert_non_null(f);
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
      break;
  fclose(f);
  return kib;
}

/* In a fresh child: how much the resident set grows when path is opened
 * and nq queries are searched with nprobe 1. */
static long rss_growth_kib(const char *path, int map, const float *q,
                           int nq) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    /* the parent's freed heap is still resident here, and a load could
     * reuse it unseen: give it back first */
    malloc_trim(0);
    long before = rss_kib();
    vlm_index *ix = NULL;
    long growth = -1;
    if ((map ? vlm_index_read_mmap(path, &ix) : vlm_index_read(path, &ix)) ==
        0) {
      vlm_index_params p = {.nprobe = 1};
      float s[10];
      int64_t id[10];
      for (int i = 0; i < nq; i++)
        if (vlm_index_search(ix, 1, q + (size_t)i * vlm_index_dim(ix), 10,
                             &p, s, id) != 0)
          _exit(2);
      growth = rss_kib() - before;
    }
    if (write(fds[1], &growth, sizeof growth) != sizeof growth)
      _exit(3);
    _exit(0);
  }
  close(fds[1]);
  long growth = -1;
  assert_int_equal(read(fds[0], &growth, sizeof growth), sizeof growth);
  close(fds[0]);
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  return growth;
}

/* The merged index opens with its lists mapped: a process that opens it
 * and searches grows by a small fraction of the list file, where opening
 * the same index stored whole grows by about its size (the oracle that
 * the measurement sees a load). */
static void test_mmap_open_keeps_rss_low(void **state) {
  const char *dir = *state;
  enum { D = 64, N = 200000, NLIST = 64, NQ = 4 };
  /* spread evenly (lists of about N / NLIST), so what a query touches is
   * about one list */
  float *x = malloc((size_t)N * D * sizeof *x);
  assert_non_null(x);
  uint64_t seed = 7;
  for (size_t i = 0; i < (size_t)N * D; i += D) {
    double ss = 0;
    for (int j = 0; j < D; j++) {
      x[i + j] = (float)(vlm_test_uniform(&seed) * 2 - 1);
      ss += (double)x[i + j] * x[i + j];
    }
    for (int j = 0; j < D; j++)
      x[i + j] = (float)(x[i + j] / sqrt(ss));
  }
  int64_t *ids = malloc(N * sizeof *ids);
  assert_non_null(ids);
  for (int64_t i = 0; i < N; i++)
    ids[i] = i + 1;
  char trained[PATH_MAX], whole[PATH_MAX], merged[PATH_MAX], lists[PATH_MAX];
  snprintf(trained, sizeof trained, "%s/t.vlmidx", dir);
  snprintf(whole, sizeof whole, "%s/whole.vlmidx", dir);
  snprintf(merged, sizeof merged, "%s/merged.vlmidx", dir);
  snprintf(lists, sizeof lists, "%s/merged.vlmidx.ivfdata", dir);
  vlm_index *t;
  char factory[32];
  snprintf(factory, sizeof factory, "IVF%d,Flat", NLIST);
  VLM_CHECK(vlm_index_create(factory, D, VLM_METRIC_IP, &t));
  VLM_CHECK(vlm_index_train(t, NLIST * 39, x));
  VLM_CHECK(vlm_index_write(t, trained));
  vlm_index *w = read_index(trained);
  VLM_CHECK(vlm_index_add(w, N, x, ids));
  VLM_CHECK(vlm_index_write(w, whole));
  vlm_index *parts[2] = {read_index(trained), read_index(trained)};
  VLM_CHECK(vlm_index_add(parts[0], N / 2, x, ids));
  VLM_CHECK(vlm_index_add(parts[1], N - N / 2, x + (size_t)(N / 2) * D, ids));
  int64_t off[2] = {0, N / 2};
  VLM_CHECK(vlm_index_merge(t, parts, off, 2, lists));
  VLM_CHECK(vlm_index_write(t, merged));
  vlm_index_free(t);
  vlm_index_free(w);
  vlm_index_free(parts[0]);
  vlm_index_free(parts[1]);
  free(ids);

  struct stat st;
  assert_int_equal(stat(lists, &st), 0);
  long lists_kib = (long)(st.st_size / 1024);
  long mapped = rss_growth_kib(merged, 0, x, NQ);
  long loaded = rss_growth_kib(whole, 0, x, NQ);
  long in_place = rss_growth_kib(whole, 1, x, NQ);
  print_message("list file %ld KiB; resident growth: merged and mapped %ld "
                "KiB, loaded whole %ld KiB, whole file mapped in place %ld "
                "KiB\n", lists_kib, mapped, loaded, in_place);
  assert_true(lists_kib > 30000);
  assert_true(loaded > lists_kib / 2);  /* the measurement sees a load */
  assert_true(mapped >= 0);
  assert_true(mapped < lists_kib / 4);  /* far below the index's size */
  assert_true(in_place >= 0 && in_place < lists_kib / 4);
  free(x);
}

/* ------------------------------------------- shards merged into one */

/* Three IVF shards of the vector catalog, their image and text vectors
 * added to copies of one trained index (`vlmdb index train/add/merge`),
 * and the shards merged with those indexes (`vlmdb merge`): the merged
 * database equals the single one built from the catalog (keys, records,
 * vectors bit for bit, metadata rows as filters see them), every item
 * under its shard's offset plus its own id, and its IVF indexes answer as
 * one index given every vector under those ids. */
static void test_merge_shards_equals_single(void **state) {
  const char *dir = *state;
  make_images(dir);
  write_vector_catalog(dir, "catalog.jsonl");
  put_text(dir, "cluster.json", map3);
  char *catalog = path_in(dir, "catalog.jsonl");
  char *map = path_in(dir, "cluster.json");
  char *single = path_in(dir, "single"), *merged = path_in(dir, "merged");
  const char *factory = "IVF4,Flat";
  free(RUN_OK(dir, "init", "--db", single, "--model", MODEL, "--index",
              factory, "--field", "year:int"));
  free(RUN_OK(dir, "ingest", "--db", single, catalog, "-q"));
  char shard[3][PATH_MAX];
  for (int s = 0; s < 3; s++) {
    char idx[8];
    snprintf(shard[s], PATH_MAX, "%s/shard-%d", dir, s);
    snprintf(idx, sizeof idx, "%d", s);
    free(RUN_OK(dir, "init", "--db", shard[s], "--model", MODEL, "--index",
                factory, "--field", "year:int", "--cluster", map, "--shard",
                idx));
    free(RUN_OK(dir, "ingest", "--db", shard[s], catalog, "-q"));
  }
  /* a shard with a replaced item: its id space has a hole */
  vlm_db *s1;
  VLM_CHECK(vlm_db_open(shard[1], NULL, &s1));
  keylist k1 = db_keys(s1);
  vlm_record *r;
  VLM_CHECK(vlm_db_get(s1, k1.keys[0], &r));
  vlm_item again = {.key = r->key, .image_vec = r->image_vec,
                    .text_vec = r->text_vec, .caption = r->caption,
                    .source = r->source, .thumb = r->thumb,
                    .thumb_len = r->thumb_len, .meta_json = r->meta_json};
  VLM_CHECK(vlm_db_put(s1, &again, 1, VLM_PUT_UPSERT, NULL));
  vlm_record_free(r);
  keylist_free(&k1);
  vlm_db_close(s1);

  /* one trained index per modality, a part per shard, merged */
  static const char *const mods[2] = {"image", "text"};
  char trained[2][PATH_MAX], out[2][PATH_MAX];
  for (int m = 0; m < 2; m++) {
    snprintf(trained[m], PATH_MAX, "%s/trained-%s.vlmidx", dir, mods[m]);
    snprintf(out[m], PATH_MAX, "%s/%s.vlmidx", dir, mods[m]);
    free(RUN_OK(dir, "index", "train", "--db", single, "--factory", factory,
                "--sample", "240", "--modality", mods[m], "--out",
                trained[m]));
    char part[3][PATH_MAX];
    for (int s = 0; s < 3; s++) {
      snprintf(part[s], PATH_MAX, "%s/part-%s-%d.vlmidx", dir, mods[m], s);
      char *o = RUN_OK(dir, "index", "add", "--db", shard[s], "--trained",
                       trained[m], "--out", part[s], "--modality", mods[m],
                       "--json");
      json_t *js = parse_json(o);
      assert_int_equal(json_int_at(js, "shard", NULL), s);
      json_decref(js);
      free(o);
    }
    /* parts given in any order: placed by their shard index */
    char *o = RUN_OK(dir, "index", "merge", "--trained", trained[m], "--out",
                     out[m], "--modality", mods[m], "--json", part[2],
                     part[0], part[1]);
    json_t *js = parse_json(o);
    assert_int_equal(json_int_at(js, "vectors", NULL), NROWS);
    json_decref(js);
    free(o);
    /* a part of the other modality, or twice the same shard: refused */
    char *err;
    char other[PATH_MAX];
    snprintf(other, sizeof other, "%s/part-image-0.vlmidx", dir);
    if (m == 1) {
      assert_int_equal(RUN(dir, NULL, &err, "index", "merge", "--trained",
                           trained[m], "--out", out[m], "--modality", "text",
                           other),
                       1);
      assert_contains(err, "holds image vectors, not text");
      free(err);
    } else {
      assert_int_equal(RUN(dir, NULL, &err, "index", "merge", "--trained",
                           trained[m], "--out", out[m], part[0], part[0]),
                       1);
      assert_contains(err, "shard 0 is given twice");
      free(err);
    }
  }
  /* the refused reruns left the merged indexes as they were */
  for (int m = 0; m < 2; m++) {
    vlm_index *ix = read_index(out[m]);
    assert_int_equal(vlm_index_count(ix), NROWS);
    vlm_index_free(ix);
  }

  /* the shards merged, given in any order */
  char *o = RUN_OK(dir, "merge", "--into", merged, "--image-index", out[0],
                   "--text-index", out[1], "--json", shard[2], shard[0],
                   shard[1]);
  json_t *sum = parse_json(o);
  free(o);
  assert_int_equal(json_int_at(sum, "items", NULL), NROWS);
  assert_int_equal(json_int_at(sum, "merged", NULL), NROWS);
  json_decref(sum);

  vlm_db *one = open_ro(single), *mdb = open_ro(merged);
  VLM_CHECK(vlm_db_verify(mdb));
  keylist all = db_keys(one), mk = db_keys(mdb);
  assert_int_equal(all.n, NROWS);
  assert_int_equal(mk.n, NROWS);
  for (int i = 0; i < all.n; i++) {
    assert_string_equal(all.keys[i], mk.keys[i]);
    assert_records_equal(mdb, one, all.keys[i]);
  }
  /* ids: the shard's offset (id spaces before it) plus its own */
  int64_t offset = 0;
  for (int s = 0; s < 3; s++) {
    vlm_db *sd = open_ro(shard[s]);
    vlm_db_info si;
    VLM_CHECK(vlm_db_stat(sd, &si));
    keylist k = db_keys(sd);
    for (int i = 0; i < k.n; i++) {
      vlm_record *a, *b;
      VLM_CHECK(vlm_db_get(sd, k.keys[i], &a));
      VLM_CHECK(vlm_db_get(mdb, k.keys[i], &b));
      assert_int_equal(b->id, (uint64_t)offset + a->id);
      vlm_record_free(a);
      vlm_record_free(b);
    }
    keylist_free(&k);
    offset += (int64_t)si.next_id - 1;
    vlm_db_close(sd);
  }
  vlm_db_info mi;
  VLM_CHECK(vlm_db_stat(mdb, &mi));
  assert_int_equal(mi.next_id, (uint64_t)offset + 1);
  assert_int_equal(mi.index_vectors, 2 * NROWS);
  assert_int_equal(mi.pending_vectors, 0);
  assert_string_equal(mi.index_factory, factory);

  /* the metadata rows: a filtered exact search agrees with the single
   * database's; and every list scanned (nprobe = nlist, Flat codes) the
   * merged index's answer is the exact one */
  uint64_t seed = 5;
  for (int q = 0; q < 10; q++) {
    float v[DIM];
    unit_vector(v, &seed);
    vlm_search_options fo = {.k = 20, .filter = "year % 3 = 0",
                             .exact = 1, .target = VLM_TARGET_TEXT};
    vlm_search_options io = {.k = 10, .nprobe = 4,
                             .target = q % 2 ? VLM_TARGET_TEXT
                                             : VLM_TARGET_IMAGE};
    vlm_search_options eo = io;
    eo.nprobe = 0;
    eo.exact = 1;
    vlm_hit *h1, *h2;
    int n1, n2;
    VLM_CHECK(vlm_db_search(one, v, &fo, &h1, &n1));
    VLM_CHECK(vlm_db_search(mdb, v, &fo, &h2, &n2));
    assert_int_equal(n1, 20);
    assert_int_equal(n1, n2);
    for (int i = 0; i < n1; i++) {
      assert_string_equal(h1[i].key, h2[i].key);
      assert_true(h1[i].score == h2[i].score);
    }
    vlm_hits_free(h1, n1);
    vlm_hits_free(h2, n2);
    VLM_CHECK(vlm_db_search(one, v, &eo, &h1, &n1));
    VLM_CHECK(vlm_db_search(mdb, v, &io, &h2, &n2));
    assert_int_equal(n1, n2);
    for (int i = 0; i < n1; i++) {
      assert_string_equal(h1[i].key, h2[i].key);
      assert_float_equal(h1[i].score, h2[i].score, 1e-6);
    }
    vlm_hits_free(h1, n1);
    vlm_hits_free(h2, n2);
  }
  vlm_db_close(mdb);

  /* the merged index in the database is the merge: one index given every
   * vector under the merged ids answers the same, id for id */
  vlm_db_open_options mo = {.readonly = 1, .mmap_index = 1};
  VLM_CHECK(vlm_db_open(merged, &mo, &mdb));
  VLM_CHECK(vlm_db_stat(mdb, &mi));
  assert_int_equal(mi.index_vectors, 2 * NROWS);
  vlm_db_close(mdb);
  vlm_db_open_options bad = {.mmap_index = 1};
  assert_int_equal(vlm_db_open(merged, &bad, &mdb), VLM_EINVAL);
  vlm_index *want, *got;
  VLM_CHECK(vlm_index_read(trained[0], &want));
  VLM_CHECK(vlm_index_read(out[0], &got));
  mdb = open_ro(merged);
  for (int i = 0; i < mk.n; i++) {
    vlm_record *rec;
    VLM_CHECK(vlm_db_get(mdb, mk.keys[i], &rec));
    int64_t id = (int64_t)rec->id;
    VLM_CHECK(vlm_index_add(want, 1, rec->image_vec, &id));
    vlm_record_free(rec);
  }
  vlm_db_close(mdb);
  seed = 77;
  for (int q = 0; q < 10; q++) {
    float v[DIM], s1[10], s2[10];
    int64_t i1[10], i2[10];
    unit_vector(v, &seed);
    vlm_index_params all4 = {.nprobe = 4}, one1 = {.nprobe = 1};
    VLM_CHECK(vlm_index_search(want, 1, v, 10, &all4, s1, i1));
    VLM_CHECK(vlm_index_search(got, 1, v, 10, &all4, s2, i2));
    assert_memory_equal(i1, i2, sizeof i1);
    VLM_CHECK(vlm_index_search(want, 1, v, 10, &one1, s1, i1));
    VLM_CHECK(vlm_index_search(got, 1, v, 10, &one1, s2, i2));
    assert_memory_equal(i1, i2, sizeof i1);
    assert_memory_equal(s1, s2, sizeof s1);
  }
  vlm_index_free(want);
  vlm_index_free(got);

  /* served memory-mapped, the merged database answers */
  {
    vlm_record *rec;
    vlm_db *sdb = open_ro(merged);
    VLM_CHECK(vlm_db_get(sdb, mk.keys[17], &rec));
    vlm_db_close(sdb);
    char *bin = vlmdb_path(), *log = path_in(dir, "serve.log");
    vlm_test_server srv;
    const char *args[] = {"--db", merged, "--port", "0", "--mmap", NULL};
    assert_int_equal(vlm_test_server_spawn(&srv, bin, args, log, 60), 0);
    running_child = srv.pid;
    redisContext *c = redisConnect("127.0.0.1", srv.port);
    assert_true(c && !c->err);
    redisReply *rep = redisCommand(c, "SEARCH VECTOR %b K 1 TARGET IMAGE "
                                   "NPROBE 4", rec->image_vec,
                                   DIM * sizeof(float));
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    redisReply *first = rep->element[0];
    assert_string_equal(first->type == REDIS_REPLY_ARRAY
                            ? first->element[0]->str
                            : first->str,
                        mk.keys[17]);
    freeReplyObject(rep);
    redisFree(c);
    assert_int_equal(vlm_test_server_stop(&srv, 20), 0);
    running_child = 0;
    vlm_record_free(rec);
    free(bin);
    free(log);
  }

  /* a writer of the merged database: new items stay in the exactly
   * searched tail (the mapped index takes no adds), deletions become
   * tombstones, and the database reopens and verifies */
  {
    vlm_db *w;
    VLM_CHECK(vlm_db_open(merged, NULL, &w));
    uint64_t sd = 991;
    float nv[DIM];
    unit_vector(nv, &sd);
    vlm_item it = {.key = "newcomer", .image_vec = nv, .meta_json =
                   "{\"year\": 2024}"};
    VLM_CHECK(vlm_db_put(w, &it, 1, 0, NULL));
    const char *gone = mk.keys[3];
    VLM_CHECK(vlm_db_delete(w, &gone, 1, NULL));
    vlm_search_options so = {.k = 1, .target = VLM_TARGET_IMAGE};
    vlm_hit *h;
    int nh;
    VLM_CHECK(vlm_db_search(w, nv, &so, &h, &nh));
    assert_int_equal(nh, 1);
    assert_string_equal(h[0].key, "newcomer");
    vlm_hits_free(h, nh);
    vlm_db_info wi;
    VLM_CHECK(vlm_db_stat(w, &wi));
    assert_int_equal(wi.pending_vectors, 1); /* the newcomer's image */
    VLM_CHECK(vlm_db_checkpoint(w));
    vlm_db_close(w);
    vlm_db *rd = open_ro(merged);
    VLM_CHECK(vlm_db_verify(rd));
    assert_int_equal(vlm_db_exists(rd, "newcomer"), 1);
    assert_int_equal(vlm_db_exists(rd, gone), 0);
    VLM_CHECK(vlm_db_search(rd, nv, &so, &h, &nh));
    assert_string_equal(h[0].key, "newcomer");
    vlm_hits_free(h, nh);
    vlm_db_close(rd);
  }

  /* an index of other ids, or other shards, is refused */
  char *err;
  char other[PATH_MAX];
  snprintf(other, sizeof other, "%s/other", dir);
  assert_int_equal(RUN(dir, NULL, &err, "merge", "--into", other,
                       "--image-index", out[0], shard[0], shard[1]),
                   1);
  assert_contains(err, "it was not merged from the shards");
  free(err);
  /* the database itself says what went wrong with unlike shards */
  char flat[PATH_MAX];
  snprintf(flat, sizeof flat, "%s/flat", dir);
  free(RUN_OK(dir, "init", "--db", flat, "--model", MODEL, "--index", "Flat",
              "--field", "year:int"));
  assert_int_equal(RUN(dir, NULL, &err, "merge", "--into", other, shard[0],
                       flat),
                   1);
  assert_contains(err, "differ in index kind");
  free(err);
  /* deferred indexing (what merge opens its database with before it
   * adopts an index): nothing enters FAISS, every item is searched
   * exactly; a later open without it builds the index */
  char deferred[PATH_MAX];
  snprintf(deferred, sizeof deferred, "%s/deferred", dir);
  free(RUN_OK(dir, "init", "--db", deferred, "--model", MODEL, "--index",
              factory, "--field", "year:int"));
  vlm_db *dd;
  vlm_db_open_options defer = {.defer_index = 3};
  VLM_CHECK(vlm_db_open(deferred, &defer, &dd));
  for (int i = 0; i < all.n; i++) {
    vlm_record *rec;
    VLM_CHECK(vlm_db_get(one, all.keys[i], &rec));
    vlm_item it = {.key = rec->key, .image_vec = rec->image_vec,
                   .text_vec = rec->text_vec, .caption = rec->caption,
                   .meta_json = rec->meta_json};
    VLM_CHECK(vlm_db_put(dd, &it, 1, 0, NULL));
    vlm_record_free(rec);
  }
  vlm_db_info di;
  VLM_CHECK(vlm_db_stat(dd, &di));
  assert_int_equal(di.index_vectors, 0);
  assert_int_equal(di.pending_vectors, 2 * NROWS);
  VLM_CHECK(vlm_db_checkpoint(dd));
  vlm_db_close(dd);
  VLM_CHECK(vlm_db_open(deferred, NULL, &dd));
  VLM_CHECK(vlm_db_stat(dd, &di));
  assert_int_equal(di.index_vectors, 2 * NROWS);
  assert_int_equal(di.pending_vectors, 0);
  vlm_db_close(dd);

  keylist_free(&all);
  keylist_free(&mk);
  vlm_db_close(one);
  free(catalog);
  free(map);
  free(single);
  free(merged);
}

/* `vlmdb merge` killed with SIGKILL part-way: the database it was
 * writing opens and verifies, holding a prefix of the items; the same
 * command again finishes, and the result equals an uninterrupted merge. */
static void test_merge_resumes_after_kill(void **state) {
  const char *dir = *state;
  make_images(dir);
  write_vector_catalog(dir, "catalog.jsonl");
  put_text(dir, "cluster.json", map3);
  char *catalog = path_in(dir, "catalog.jsonl");
  char *map = path_in(dir, "cluster.json");
  char shard[3][PATH_MAX];
  for (int s = 0; s < 3; s++) {
    char idx[8];
    snprintf(shard[s], PATH_MAX, "%s/shard-%d", dir, s);
    snprintf(idx, sizeof idx, "%d", s);
    free(RUN_OK(dir, "init", "--db", shard[s], "--model", MODEL, "--index",
                "HNSW8", "--field", "year:int", "--cluster", map, "--shard",
                idx));
    free(RUN_OK(dir, "ingest", "--db", shard[s], catalog, "-q"));
  }
  char *clean = path_in(dir, "clean"), *killed = path_in(dir, "killed");
  free(RUN_OK(dir, "merge", "--into", clean, shard[0], shard[1], shard[2]));
  /* its progress lines must not be taken for the killed run's */
  char *errfile = path_in(dir, ".stderr");
  unlink(errfile);
  free(errfile);
  pid_t pid = spawn_env(dir, NULL,
                        (const char *const[]){"merge", "--into", killed,
                                              "--batch", "2", shard[0],
                                              shard[1], shard[2], NULL});
  running_child = pid;
  assert_true(wait_progress_of(dir, pid, "merge", 60));
  kill(pid, SIGKILL);
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  running_child = 0;
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  /* a writer's open finishes crash recovery (the kill may have landed
   * between a batch's LMDB and SQLite commits, which a read-only open
   * reports and leaves) */
  vlm_db *db;
  VLM_CHECK(vlm_db_open(killed, NULL, &db));
  VLM_CHECK(vlm_db_verify(db));
  vlm_db_info info;
  VLM_CHECK(vlm_db_stat(db, &info));
  vlm_db_close(db);
  print_message("killed with %lld of %d items merged\n",
                (long long)info.items, NROWS);
  assert_true(info.items >= 60 && info.items < NROWS);

  char *o = RUN_OK(dir, "merge", "--into", killed, "--json", shard[0],
                   shard[1], shard[2]);
  json_t *sum = parse_json(o);
  free(o);
  assert_int_equal(json_int_at(sum, "items_before", NULL), info.items);
  assert_int_equal(json_int_at(sum, "already_there", NULL), info.items);
  assert_int_equal(json_int_at(sum, "items", NULL), NROWS);
  json_decref(sum);
  vlm_db *a = open_ro(clean), *b = open_ro(killed);
  VLM_CHECK(vlm_db_verify(b));
  keylist ka = db_keys(a), kb = db_keys(b);
  assert_int_equal(ka.n, NROWS);
  assert_int_equal(kb.n, NROWS);
  for (int i = 0; i < ka.n; i++) {
    assert_string_equal(ka.keys[i], kb.keys[i]);
    assert_records_equal(a, b, ka.keys[i]);
    vlm_record *x, *y;
    VLM_CHECK(vlm_db_get(a, ka.keys[i], &x));
    VLM_CHECK(vlm_db_get(b, ka.keys[i], &y));
    assert_int_equal(x->id, y->id);
    vlm_record_free(x);
    vlm_record_free(y);
  }
  keylist_free(&ka);
  keylist_free(&kb);
  vlm_db_close(a);
  vlm_db_close(b);
  /* a third run changes nothing */
  o = RUN_OK(dir, "merge", "--into", killed, "--json", shard[0], shard[1],
             shard[2]);
  sum = parse_json(o);
  free(o);
  assert_int_equal(json_int_at(sum, "merged", NULL), 0);
  json_decref(sum);
  free(clean);
  free(killed);
  free(catalog);
  free(map);
}

/* ------------------------------------------------------- slot moves */

/* Slots 2000-5000 go from shard 0 to shard 1 of map3. */
#define MOVE_FIRST 2000
#define MOVE_LAST 5000

static void build_shard(const char *dir, const char *db, const char *map,
                        const char *catalog, int shard) {
  char idx[8];
  snprintf(idx, sizeof idx, "%d", shard);
  free(RUN_OK(dir, "init", "--db", db, "--model", MODEL, "--field",
              "year:int", "--cluster", map, "--shard", idx));
  free(RUN_OK(dir, "ingest", "--db", db, catalog, "-q"));
}

/* After a move: the map at new_map gives the range to shard 1, `cluster
 * check` passes, both databases verify, and every key of the pristine
 * shards ref[0..1] is in the database its new owner names, only there,
 * its record and vectors bit for bit the same. */
static void assert_moved(const char *dir, const char *new_map,
                         char shard[3][PATH_MAX], char ref[2][PATH_MAX]) {
  vlm_cluster *m;
  VLM_CHECK(vlm_cluster_load(new_map, NULL, NULL, &m));
  for (int s = MOVE_FIRST; s <= MOVE_LAST; s++)
    assert_int_equal(m->owner[s], 1);
  assert_int_equal(m->owner[MOVE_FIRST - 1], 0);
  assert_int_equal(m->owner[12000], 0);
  free(RUN_OK(dir, "cluster", "check", new_map, shard[0], shard[1],
              shard[2]));
  vlm_db *now[2] = {open_ro(shard[0]), open_ro(shard[1])};
  VLM_CHECK(vlm_db_verify(now[0]));
  VLM_CHECK(vlm_db_verify(now[1]));
  long total = 0, moved = 0;
  for (int r = 0; r < 2; r++) {
    vlm_db *before = open_ro(ref[r]);
    keylist k = db_keys(before);
    for (int i = 0; i < k.n; i++) {
      int owner = vlm_cluster_shard_of(m, k.keys[i], strlen(k.keys[i]));
      assert_true(owner == 0 || owner == 1);
      assert_int_equal(vlm_db_exists(now[owner], k.keys[i]), 1);
      assert_int_equal(vlm_db_exists(now[1 - owner], k.keys[i]), 0);
      assert_records_equal(before, now[owner], k.keys[i]);
      moved += owner != r;
    }
    total += k.n;
    keylist_free(&k);
    vlm_db_close(before);
  }
  vlm_db_info a, b;
  VLM_CHECK(vlm_db_stat(now[0], &a));
  VLM_CHECK(vlm_db_stat(now[1], &b));
  assert_int_equal(a.items + b.items, total);
  assert_true(moved > 10); /* the range held items */
  assert_string_equal(a.cluster_digest, m->digest);
  assert_string_equal(b.cluster_digest, m->digest);
  vlm_db_close(now[0]);
  vlm_db_close(now[1]);
  vlm_cluster_free(m);
}

/* `vlmdb cluster move`: run whole, and killed (SIGKILL) after each step
 * and inside the copy and the delete, then run again: every key of the
 * range ends in the destination, once, bit for bit; the map, both
 * manifests and `cluster check` agree; a run after the end changes
 * nothing. */
static void test_cluster_move_resumes_after_kill(void **state) {
  const char *dir = *state;
  make_images(dir);
  write_vector_catalog(dir, "catalog.jsonl");
  put_text(dir, "cluster.json", map3);
  char *catalog = path_in(dir, "catalog.jsonl");
  char *map = path_in(dir, "cluster.json");
  char shard[3][PATH_MAX], ref[2][PATH_MAX];
  for (int s = 0; s < 2; s++) {
    snprintf(ref[s], PATH_MAX, "%s/ref-%d", dir, s);
    build_shard(dir, ref[s], map, catalog, s);
  }
  snprintf(shard[2], PATH_MAX, "%s/shard-2", dir);
  build_shard(dir, shard[2], map, catalog, 2);
  static const char *const kills[] = {NULL, "widen", "copy:2", "copy",
                                      "map", "delete:1", "delete", "narrow"};
  char slots[32];
  snprintf(slots, sizeof slots, "%d-%d", MOVE_FIRST, MOVE_LAST);
  for (size_t t = 0; t < sizeof kills / sizeof kills[0]; t++) {
    char name[64], *run_map;
    for (int s = 0; s < 2; s++) { /* fresh copies of the built shards */
      snprintf(shard[s], PATH_MAX, "%s/run%zu-%d", dir, t, s);
      vlm_db *db = open_ro(ref[s]);
      VLM_CHECK(vlm_db_backup(db, shard[s], NULL));
      vlm_db_close(db);
    }
    snprintf(name, sizeof name, "run%zu.json", t);
    put_text(dir, name, map3);
    run_map = path_in(dir, name);
    const char *const args[] = {"cluster", "move", "--map", run_map,
                                "--slots", slots, "--from", shard[0],
                                "--to", shard[1], "--batch", "4", NULL};
    if (kills[t]) {
      pid_t pid = vlm_test_spawn_crash(dir, cmd_cluster, args, kills[t],
                                       SIGKILL, &vlm_cli_crash_hook);
      assert_true(pid > 0);
      running_child = pid;
      int st;
      assert_int_equal(waitpid(pid, &st, 0), pid);
      running_child = 0;
      if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) {
        char *err = path_in(dir, ".stderr"), *text = slurp_text(err);
        fail_msg("killed at %s: exit %d, not SIGKILL:\n%s", kills[t],
                 WIFEXITED(st) ? WEXITSTATUS(st) : -1, text);
      }
      /* between the steps every key of the range is readable somewhere */
      vlm_db *src, *dst;
      VLM_CHECK(vlm_db_open(shard[0], NULL, &src));
      VLM_CHECK(vlm_db_open(shard[1], NULL, &dst));
      VLM_CHECK(vlm_db_verify(src));
      VLM_CHECK(vlm_db_verify(dst));
      vlm_db *before = open_ro(ref[0]);
      keylist k = db_keys(before);
      for (int i = 0; i < k.n; i++)
        assert_true(vlm_db_exists(src, k.keys[i]) == 1 ||
                    vlm_db_exists(dst, k.keys[i]) == 1);
      keylist_free(&k);
      vlm_db_close(before);
      vlm_db_close(src);
      vlm_db_close(dst);
    }
    char *o = run_ok(dir, args);
    print_message("%s: %s", kills[t] ? kills[t] : "whole", o);
    free(o);
    assert_moved(dir, run_map, shard, ref);
    /* once more: nothing left to do */
    const char *const again[] = {"cluster", "move", "--map", run_map,
                                 "--slots", slots, "--from", shard[0],
                                 "--to", shard[1], "--json", NULL};
    o = run_ok(dir, again);
    json_t *sum = parse_json(o);
    free(o);
    assert_int_equal(json_int_at(sum, "copied", NULL), 0);
    assert_int_equal(json_int_at(sum, "deleted", NULL), 0);
    json_decref(sum);
    assert_moved(dir, run_map, shard, ref);
    free(run_map);
  }
  free(catalog);
  free(map);
}

/* Kept image bytes travel through `vlmdb merge` and `vlmdb cluster move`.
 * Three shards that keep images (`init --keep-images`) are built from one
 * catalog of images (one a 3 MiB file) and text-only rows; the merged
 * database keeps images and holds every item's bytes as its shard did
 * (assert_records_equal compares them with memcmp; text-only items stay
 * without); a slot range moved from shard 0 to shard 1 arrives with its
 * bytes; with the image files deleted, both the merged database and the
 * destination shard move to another model from the kept bytes. */
#define KEPT_ROWS 60
static void test_kept_images_travel_by_merge_and_move(void **state) {
  const char *dir = *state;
  static const char *const pics[] = {"gray.jpg", "photo_rgb.jpg", "rgb.png",
                                     "wide.png", "palette.png"};
  char *img = path_in(dir, "img");
  mkdir(img, 0755);
  for (int i = 0; i < 5; i++) {
    char from[PATH_MAX], to[PATH_MAX];
    snprintf(from, sizeof from, MODEL "/%s", pics[i]);
    snprintf(to, sizeof to, "%s/%s", img, pics[i]);
    copy_file(from, to);
  }
  /* a large picture: a JPEG with 3 MiB after its end (decoders stop at
   * the end marker; the kept bytes are the whole file) */
  char *big = path_in(dir, "img/big.jpg");
  copy_file(MODEL "/photo_rgb.jpg", big);
  FILE *f = fopen(big, "ab");
  assert_non_null(f);
  uint64_t seed = 5;
  for (int i = 0; i < (3 << 20) / 8; i++) {
    uint64_t x = vlm_test_splitmix64(&seed);
    fwrite(&x, 8, 1, f);
  }
  fclose(f);
  free(big);
  char *cat = path_in(dir, "kept.jsonl");
  f = fopen(cat, "w");
  assert_non_null(f);
  for (int i = 0; i < KEPT_ROWS; i++) {
    if (i % 6 == 5)
      fprintf(f, "{\"key\": \"t%02d\", \"text\": \"words %d\"}\n", i, i);
    else
      fprintf(f, "{\"key\": \"k%02d\", \"image\": \"img/%s\", \"text\": "
              "\"picture %d\"}\n", i, i == 7 ? "big.jpg" : pics[i % 5], i);
  }
  fclose(f);
  put_text(dir, "cluster.json", map3);
  char *map = path_in(dir, "cluster.json");
  char shard[3][PATH_MAX], ref0[PATH_MAX];
  for (int s = 0; s < 3; s++) {
    char idx[8];
    snprintf(shard[s], PATH_MAX, "%s/shard-%d", dir, s);
    snprintf(idx, sizeof idx, "%d", s);
    free(RUN_OK(dir, "init", "--db", shard[s], "--model", MODEL, "--index",
                "Flat", "--cluster", map, "--shard", idx, "--keep-images"));
    free(RUN_OK(dir, "ingest", "--db", shard[s], cat, "-q"));
  }
  free(RUN_OK(dir, "cluster", "check", map, shard[0], shard[1], shard[2]));
  /* a shard that keeps no images among ones that do is a problem */
  free(RUN_OK(dir, "config", "--db", shard[2], "--keep-images", "off"));
  char *err;
  assert_int_equal(RUN(dir, NULL, &err, "cluster", "check", map, shard[0],
                       shard[1], shard[2]), 1);
  if (!strstr(err, "does not keep images"))
    fail_msg("cluster check:\n%s", err);
  free(err);
  free(RUN_OK(dir, "config", "--db", shard[2], "--keep-images", "on"));

  /* merge: every key's record and kept bytes as its shard holds them */
  char *merged = path_in(dir, "merged");
  free(RUN_OK(dir, "merge", "--into", merged, "--batch", "7", shard[0],
              shard[1], shard[2]));
  vlm_db *m = open_ro(merged);
  vlm_db_info info;
  VLM_CHECK(vlm_db_stat(m, &info));
  assert_int_equal(info.items, KEPT_ROWS);
  assert_int_equal(info.keep_images, 1);
  int with = 0, without = 0;
  for (int s = 0; s < 3; s++) {
    vlm_db *sh = open_ro(shard[s]);
    keylist k = db_keys(sh);
    for (int i = 0; i < k.n; i++) {
      assert_records_equal(sh, m, k.keys[i]);
      vlm_record *r;
      VLM_CHECK(vlm_db_get(m, k.keys[i], &r));
      if (k.keys[i][0] == 't')
        assert_int_equal(r->image_len, 0);
      else
        assert_true(r->image_len > 0);
      with += r->image_len > 0;
      without += r->image_len == 0;
      if (!strcmp(k.keys[i], "k07"))
        assert_true(r->image_len > (size_t)3 << 20);
      vlm_record_free(r);
    }
    keylist_free(&k);
    vlm_db_close(sh);
  }
  vlm_db_close(m);
  assert_int_equal(with, KEPT_ROWS - KEPT_ROWS / 6);
  assert_int_equal(without, KEPT_ROWS / 6);

  /* move: the range's items arrive with their bytes */
  snprintf(ref0, PATH_MAX, "%s/ref-0", dir);
  vlm_db *db = open_ro(shard[0]);
  VLM_CHECK(vlm_db_backup(db, ref0, NULL));
  vlm_db_close(db);
  char slots[32];
  snprintf(slots, sizeof slots, "%d-%d", MOVE_FIRST, MOVE_LAST);
  free(RUN_OK(dir, "cluster", "move", "--map", map, "--slots", slots,
              "--from", shard[0], "--to", shard[1], "--batch", "3"));
  vlm_cluster *cl;
  VLM_CHECK(vlm_cluster_load(map, NULL, NULL, &cl));
  vlm_db *before = open_ro(ref0), *dst = open_ro(shard[1]);
  keylist k = db_keys(before);
  int moved = 0, moved_with = 0;
  for (int i = 0; i < k.n; i++) {
    if (vlm_cluster_shard_of(cl, k.keys[i], strlen(k.keys[i])) != 1)
      continue;
    assert_records_equal(before, dst, k.keys[i]);
    vlm_record *r;
    VLM_CHECK(vlm_db_get(dst, k.keys[i], &r));
    moved_with += r->image_len > 0;
    vlm_record_free(r);
    moved++;
  }
  print_message("merged %d items (%d with kept bytes); moved %d (%d with)\n",
                KEPT_ROWS, with, moved, moved_with);
  assert_true(moved_with > 0);
  keylist_free(&k);
  vlm_cluster_free(cl);
  vlm_db_close(before);
  vlm_db_close(dst);

  /* the image files gone, both move to another model from the bytes */
  vlm_test_rm_rf(img);
  const char *const dbs[2] = {merged, shard[1]};
  for (int i = 0; i < 2; i++) {
    char *o = RUN_OK(dir, "reembed", "--db", dbs[i], "--model",
                     "models/default");
    assert_non_null(strstr(o, "switched: embedded"));
    free(o);
    free(RUN_OK(dir, "verify", "--db", dbs[i]));
  }
  vlm_db *after = open_ro(merged);
  VLM_CHECK(vlm_db_stat(after, &info));
  assert_int_equal(info.dim, 128);
  assert_int_equal(info.keep_images, 1);
  uint8_t *bytes;
  size_t len;
  VLM_CHECK(vlm_db_get_image(after, "k07", &bytes, &len));
  assert_true(len > (size_t)3 << 20);
  free(bytes);
  vlm_db_close(after);
  free(img);
  free(cat);
  free(map);
  free(merged);
}

/* RssAnon of process pid in KiB (/proc/PID/status): the memory a process
 * has made its own (a mapped file's pages are the page cache's). */
static long rss_anon_kib(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long kib = -1;
  assert_non_null(f);
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "RssAnon: %ld kB", &kib) == 1)
      break;
  fclose(f);
  return kib;
}

/* `vlmdb serve --mmap` of a database with a large IVF index: it answers,
 * refuses writes, and holds far less memory of its own than the same
 * server that loads the index (measured in /proc/PID/status of each). */
static void test_serve_mmap_keeps_rss_low(void **state) {
  const char *dir = *state;
  enum { N = 120000, CHUNK = 10000 };
  char *db_dir = path_in(dir, "big");
  free(RUN_OK(dir, "init", "--db", db_dir, "--model", MODEL, "--index",
              "IVF64,Flat"));
  vlm_db *db;
  VLM_CHECK(vlm_db_open(db_dir, NULL, &db));
  float *v = malloc((size_t)CHUNK * DIM * sizeof *v);
  vlm_item *items = calloc(CHUNK, sizeof *items);
  char (*keys)[16] = malloc((size_t)CHUNK * 16);
  assert_true(v && items && keys);
  uint64_t seed = 4242;
  float probe[DIM];
  for (int c = 0; c < N / CHUNK; c++) {
    for (int i = 0; i < CHUNK; i++) {
      unit_vector(v + (size_t)i * DIM, &seed);
      snprintf(keys[i], 16, "k%d", c * CHUNK + i);
      items[i] = (vlm_item){.key = keys[i], .image_vec = v + (size_t)i * DIM};
    }
    if (c == 3)
      memcpy(probe, v + 123 * DIM, sizeof probe); /* key k30123 */
    VLM_CHECK(vlm_db_put(db, items, CHUNK, 0, NULL));
  }
  VLM_CHECK(vlm_db_checkpoint(db));
  vlm_db_info info;
  VLM_CHECK(vlm_db_stat(db, &info));
  assert_int_equal(info.index_vectors, N);
  assert_int_equal(info.pending_vectors, 0);
  vlm_db_close(db);
  free(v);
  free(items);
  free(keys);

  char *bin = vlmdb_path();
  char *log = path_in(dir, "serve.log");
  long anon[2];
  for (int mapped = 0; mapped < 2; mapped++) {
    vlm_test_server srv;
    const char *args[] = {"--db", db_dir, "--port", "0", "--threads", "1",
                          mapped ? "--mmap" : "--quiet", NULL};
    int st = vlm_test_server_spawn(&srv, bin, args, log, 60);
    if (st != 0) {
      char *text = slurp_text(log);
      print_message("serve failed (%d):\n%s\n", st, text);
      free(text);
    }
    assert_int_equal(st, 0);
    running_child = srv.pid;
    redisContext *c = redisConnect("127.0.0.1", srv.port);
    assert_true(c && !c->err);
    redisReply *r = redisCommand(c, "SEARCH VECTOR %b K 3 TARGET IMAGE",
                                 probe, sizeof probe);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_true(r->elements >= 1);
    /* the first hit is the stored vector itself, wherever the reply
     * puts its key */
    redisReply *first = r->element[0];
    const char *key = first->type == REDIS_REPLY_ARRAY ? first->element[0]->str
                                                       : first->str;
    assert_string_equal(key, "k30123");
    freeReplyObject(r);
    r = redisCommand(c, "ADD knew IMAGEVEC %b", probe, sizeof probe);
    assert_non_null(r);
    if (mapped) {
      assert_int_equal(r->type, REDIS_REPLY_ERROR);
      assert_contains(r->str, "read-only");
    }
    freeReplyObject(r);
    anon[mapped] = rss_anon_kib(srv.pid);
    redisFree(c);
    assert_int_equal(vlm_test_server_stop(&srv, 20), 0);
    running_child = 0;
  }
  /* the index's lists: (48 floats + an id) per vector */
  long lists_kib = (long)N * (DIM * 4 + 8) / 1024;
  print_message("IVF lists %ld KiB; server RssAnon: index loaded %ld KiB, "
                "mapped %ld KiB\n", lists_kib, anon[0], anon[1]);
  /* what loading costs is the lists' size; mapped, most of it is not the
   * process's own (the rest of the RssAnon is the server's base: the
   * model, threads, allocator) */
  assert_true(anon[0] - anon[1] > lists_kib * 3 / 4);
  free(log);
  free(bin);
  free(db_dir);
}

/* `vlmdb index` and `vlmdb merge` given what they cannot use: a usage
 * error (exit 2) or a runtime error (exit 1) that names the problem. */
static void test_index_commands_hostile(void **state) {
  const char *dir = *state;
  make_images(dir);
  write_vector_catalog(dir, "catalog.jsonl");
  char *catalog = path_in(dir, "catalog.jsonl"), *db = path_in(dir, "db");
  char *trained = path_in(dir, "t.vlmidx"), *part = path_in(dir, "p.vlmidx");
  char *side = path_in(dir, "p.vlmidx.json"), *out = path_in(dir, "o.vlmidx");
  free(RUN_OK(dir, "init", "--db", db, "--model", MODEL, "--index", "Flat"));
  free(RUN_OK(dir, "ingest", "--db", db, catalog, "-q"));
  char *err;
#define EXPECT(code, text, ...)                                              \
  do {                                                                       \
    assert_int_equal(RUN(dir, NULL, &err, __VA_ARGS__), code);               \
    assert_contains(err, text);                                              \
    free(err);                                                               \
  } while (0)
  EXPECT(2, "train, add or merge", "index");
  EXPECT(2, "unknown subcommand frob", "index", "frob");
  EXPECT(2, "only IVF indexes merge", "index", "train", "--db", db,
         "--factory", "HNSW32", "--sample", "100", "--out", trained);
  EXPECT(2, "--modality sound", "index", "train", "--db", db, "--factory",
         "IVF4,Flat", "--sample", "100", "--modality", "sound", "--out",
         trained);
  EXPECT(2, "needs --db, --factory", "index", "train", "--db", db);
  /* 100 vectors cannot train 64 lists (39 each) */
  EXPECT(1, "needs at least 2496", "index", "train", "--db", db, "--factory",
         "IVF64,Flat", "--sample", "100", "--out", trained);
  EXPECT(1, "index factory \"IVFxyz\"", "index", "train", "--db", db, "--factory",
         "IVFxyz", "--sample", "100", "--out", trained);
  free(RUN_OK(dir, "index", "train", "--db", db, "--factory", "IVF4,Flat",
              "--sample", "200", "--out", trained));
  free(RUN_OK(dir, "index", "add", "--db", db, "--trained", trained, "--out",
              part));
  /* a part is not an empty trained index */
  EXPECT(1, "is not an empty trained index", "index", "add", "--db", db,
         "--trained", part, "--out", out);
  EXPECT(1, "not a vlmdb index file", "index", "add", "--db", db,
         "--trained", catalog, "--out", out);
  /* part descriptions: missing, not JSON, not one */
  unlink(side);
  EXPECT(1, "p.vlmidx.json", "index", "merge", "--trained", trained, "--out",
         out, part);
  put_text(dir, "p.vlmidx.json", "{not json");
  EXPECT(1, "p.vlmidx.json", "index", "merge", "--trained", trained, "--out",
         out, part);
  put_text(dir, "p.vlmidx.json", "{\"shard\": -1, \"id_space\": \"many\"}");
  EXPECT(1, "not a part description", "index", "merge", "--trained", trained,
         "--out", out, part);
  put_text(dir, "p.vlmidx.json",
           "{\"shard\": -1, \"id_space\": 240, \"modality\": \"image\"}");
  EXPECT(2, "merge needs --trained", "index", "merge", "--out", out, part);
  /* a part that is not a copy of the trained index */
  char *other = path_in(dir, "t2.vlmidx");
  free(RUN_OK(dir, "index", "train", "--db", db, "--factory", "IVF4,Flat",
              "--sample", "180", "--out", other));
  EXPECT(1, "trained on different centroids", "index", "merge", "--trained",
         other, "--out", out, part);
  free(RUN_OK(dir, "index", "merge", "--trained", trained, "--out", out,
              part));
  /* merge: no shards, a shard that is no database */
  EXPECT(2, "--into DB and one SHARD", "merge", "--into", out);
  EXPECT(1, "nothere", "merge", "--into", out, "nothere");
#undef EXPECT
  free(other);
  free(catalog);
  free(db);
  free(trained);
  free(part);
  free(side);
  free(out);
}

/* CRC-32C (Castagnoli), bitwise: the checksum of vlmdb's index files. */
static uint32_t crc32c_bits(const void *buf, size_t len) {
  const uint8_t *p = buf;
  uint32_t crc = ~0u;
  while (len--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++)
      crc = (crc >> 1) ^ (0x82F63B78u & -(crc & 1));
  }
  return ~crc;
}

/* A list size in an IVF file changed to one far past the file, with every
 * checksum made right again (what a hostile file can do): mapped, FAISS
 * would take the size as it is and a search would read past the mapping;
 * the read refuses it.  The untouched file maps and searches. */
static void test_mapped_lists_bounds_checked(void **state) {
  const char *dir = *state;
  enum { D = 32, N = 400 };
  float *x = clustered(N, D, 3);
  int64_t ids[N];
  for (int i = 0; i < N; i++)
    ids[i] = i + 1;
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/ivf.vlmidx", dir);
  vlm_index *ix;
  VLM_CHECK(vlm_index_create("IVF4,Flat", D, VLM_METRIC_IP, &ix));
  VLM_CHECK(vlm_index_train(ix, N, x));
  VLM_CHECK(vlm_index_add(ix, N, x, ids));
  VLM_CHECK(vlm_index_write(ix, path));
  vlm_index_free(ix);
  VLM_CHECK(vlm_index_read_mmap(path, &ix));
  float sc[5];
  int64_t id[5];
  vlm_index_params all = {.nprobe = 4};
  VLM_CHECK(vlm_index_search(ix, 1, x + 7 * D, 5, &all, sc, id));
  assert_int_equal(id[0], 8);
  vlm_index_free(ix);

  size_t len;
  uint8_t *f = vlm_test_slurp(path, &len);
  uint32_t factory_len;
  memcpy(&factory_len, f + 24, 4);
  size_t payload = 64 + factory_len;
  /* FAISS's array lists: "ilar", nlist, code_size, then the sizes as
   * "full" and a vector (its length, then one size_t per list) */
  uint8_t *il = memmem(f + payload, len - payload, "ilar", 4);
  assert_non_null(il);
  assert_memory_equal(il + 20, "full", 4);
  uint64_t nsizes, huge = (uint64_t)1 << 40;
  memcpy(&nsizes, il + 24, 8);
  assert_int_equal(nsizes, 4);
  memcpy(il + 32 + 8 * 2, &huge, 8); /* list 2 */
  uint32_t crc = crc32c_bits(f + payload, len - payload);
  memcpy(f + 40, &crc, 4);
  crc = crc32c_bits(f, 60);
  memcpy(f + 60, &crc, 4);
  vlm_test_spit(path, f, len);
  free(f);
  ix = NULL;
  assert_int_equal(vlm_index_read_mmap(path, &ix), VLM_ECORRUPT);
  assert_contains(vlm_errmsg(), "list 2 lies outside");
  assert_null(ix);
  free(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_key_slots_match_redis),
      cmocka_unit_test(test_cluster_map_valid),
      cmocka_unit_test(test_cluster_map_hostile),
      cmocka_unit_test(test_shard_index),
      cmocka_unit_test_setup_teardown(test_db_refuses_other_slots,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_npy_against_numpy, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_npy_hostile, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_shards_equal_single_database,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_server_refuses_other_slots,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_publish_resumes_after_kill,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_embed_files_round_trip,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_embeddings_layout_hostile,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_embeddings_layout_blocks,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_ivf_merge_equals_one_index,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_mmap_open_keeps_rss_low,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_mapped_lists_bounds_checked,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_merge_shards_equals_single,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_merge_resumes_after_kill,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_cluster_move_resumes_after_kill,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_kept_images_travel_by_merge_and_move,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_serve_mmap_keeps_rss_low,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_index_commands_hostile,
                                      setup_tmpdir, teardown_tmpdir),
  };
  /* VLM_TEST_ONLY=<substring>: only the tests whose names contain it */
  const char *only = getenv("VLM_TEST_ONLY");
  if (only && *only) {
    char pattern[128];
    snprintf(pattern, sizeof pattern, "*%s*", only);
    cmocka_set_test_filter(pattern);
  }
  if (getenv("VLM_TEST_FILTER")) /* one test while working on it */
    cmocka_set_test_filter(getenv("VLM_TEST_FILTER"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
