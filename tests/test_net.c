/* test_net.c - `vlmdb serve` as a real process on a loopback port, driven
 * by real clients: hiredis, redis-cli, redis-py, raw sockets (the RESP
 * parser's own tests are in test_resp.c).
 *
 * Oracles: the server's embeddings against the model run
 * in this process; its searches against a brute-force scan of vectors this
 * process computed; RESP3 replies through a reader written here, separate
 * from the server's writer; memory against the server's own baseline RSS.
 *
 * Every server is started by start_server and stopped (SIGTERM, graceful)
 * by stop_server, which also checks it exited cleanly; sockets have receive
 * timeouts and waits have deadlines, so no test can hang.  $BUILD selects
 * the server binary (build/vlmdb, build-asan/vlmdb, build-tsan/vlmdb).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../net/resp.h"
#include "util/util.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_server.h"
#include "vlmdb.h"

#define MODEL_DIR "tests/fixtures/clip-tiny"
#define IO_TIMEOUT_S 30

static vlm_clip *g_clip;
static int g_dim;

/* ======================================================================
 * Small helpers
 * ==================================================================== */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Test data and timings only: no expected value depends on the sequence. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng(void) {
  return (uint32_t)(vlm_test_splitmix64(&rng_state) >> 32);
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    fclose(f);
    return NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static void rm_rf(const char *dir) { vlm_test_rm_rf(dir); }

static void normalize(float *v, int n) {
  double s = 0;
  for (int i = 0; i < n; i++)
    s += (double)v[i] * v[i];
  s = sqrt(s);
  for (int i = 0; i < n; i++)
    v[i] = (float)(v[i] / s);
}

static float dotf(const float *a, const float *b, int n) {
  double s = 0;
  for (int i = 0; i < n; i++)
    s += (double)a[i] * b[i];
  return (float)s;
}

/* ======================================================================
 * Server processes
 * ==================================================================== */

typedef struct {
  pid_t pid;
  int port;
  char dir[64];     /* temp dir: db/ and server.log */
  char db[96];
  char log[96];
} server_t;

/* Servers and dirs still up, for cleanup after a failed test. */
static server_t *g_live[8];

static void track(server_t *s, int on) {
  for (int i = 0; i < 8; i++)
    if (on ? !g_live[i] : g_live[i] == s) {
      g_live[i] = on ? s : NULL;
      return;
    }
}

static const char *build_dir(void) {
  const char *b = getenv("BUILD");
  return b && *b ? b : "build";
}

static void print_log(const server_t *s) {
  size_t n;
  char *text = read_file(s->log, &n);
  if (text) {
    text[n] = '\0';
    fprintf(stderr, "---- server log (%s) ----\n%s---- end ----\n", s->log,
            text);
    free(text);
  }
}

/* Make a temp dir with an empty database (fields n:int, cat:text) that
 * keeps images or not (vlm_db_config.keep_images). */
static void make_db_keep(server_t *s, int keep_images) {
  memset(s, 0, sizeof *s);
  snprintf(s->dir, sizeof s->dir, "/tmp/vlm_net_XXXXXX");
  assert_non_null(mkdtemp(s->dir));
  snprintf(s->db, sizeof s->db, "%s/db", s->dir);
  snprintf(s->log, sizeof s->log, "%s/server.log", s->dir);
  vlm_field fields[2] = {{"n", VLM_FIELD_INT}, {"cat", VLM_FIELD_TEXT}};
  vlm_db_config cfg = {0};
  cfg.dim = g_dim;
  cfg.index_factory = "Flat";
  cfg.model_id = vlm_clip_model_id(g_clip);
  cfg.model_dir = MODEL_DIR;
  cfg.fields = fields;
  cfg.nfields = 2;
  cfg.keep_images = keep_images;
  vlm_db *db = NULL;
  int rc = vlm_db_create(s->db, &cfg, &db);
  if (rc < 0)
    fail_msg("vlm_db_create: %s", vlm_errmsg());
  vlm_db_close(db);
  track(s, 1);
}

/* Make a temp dir with an empty database (fields n:int, cat:text). */
static void make_db(server_t *s) { make_db_keep(s, 0); }

static void server_done(server_t *s) {
  track(s, 0);
  rm_rf(s->dir);
}

/* Spawn `$BUILD/vlmdb serve --db ... --port 0 extra...` (the shared
 * harness, tests/util/server.c).  Returns 0, or the exit status if it
 * exited instead. */
static int spawn_server(server_t *s, const char *const *extra) {
  char bin[256];
  snprintf(bin, sizeof bin, "%s/vlmdb", build_dir());
  const char *argv[64];
  int n = 0;
  argv[n++] = "--db";
  argv[n++] = s->db;
  argv[n++] = "--model";
  argv[n++] = MODEL_DIR;
  argv[n++] = "--port";
  argv[n++] = "0";
  for (int i = 0; extra && extra[i]; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  vlm_test_server ts;
  int rc = vlm_test_server_spawn(&ts, bin, argv, s->log, 60);
  s->pid = rc == 0 ? ts.pid : 0;
  s->port = rc == 0 ? ts.port : 0;
  return rc;
}

static void start_server(server_t *s, const char *const *extra) {
  int rc = spawn_server(s, extra);
  if (rc != 0) {
    print_log(s);
    fail_msg("server did not start (status %d)", rc);
  }
}

/* SIGTERM and wait for a clean exit (status 0: graceful shutdown worked,
 * and under ASan, no leak). */
static void stop_server(server_t *s) {
  if (!s->pid)
    return;
  vlm_test_server ts = {s->pid, s->port, 0};
  int status = vlm_test_server_stop(&ts, 60);
  s->pid = 0;
  if (status == -1) {
    print_log(s);
    fail_msg("server did not stop within 60 s of SIGTERM");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    print_log(s);
    fail_msg("server exit: %s %d", WIFEXITED(status) ? "status" : "signal",
             WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
  }
}

static long rss_kb(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6))
      kb = strtol(line + 6, NULL, 10);
  fclose(f);
  return kb;
}

static void assert_alive(const server_t *s) {
  int status;
  if (waitpid(s->pid, &status, WNOHANG) != 0) {
    print_log(s);
    fail_msg("server died: %s %d", WIFEXITED(status) ? "status" : "signal",
             WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
  }
}

/* ======================================================================
 * Clients: hiredis, and raw sockets with an independent RESP3 reader
 * ==================================================================== */

static redisContext *hconnect(int port) {
  struct timeval tv = {IO_TIMEOUT_S, 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
  assert_non_null(c);
  if (c->err)
    fail_msg("connect: %s", c->errstr);
  redisSetTimeout(c, tv);
  return c;
}

static redisReply *hcmd(redisContext *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  if (!r)
    fail_msg("command '%s': %s", fmt, c->errstr);
  return r;
}

static redisReply *hcmdargv(redisContext *c, int argc, const char **argv,
                            const size_t *lens) {
  redisReply *r = redisCommandArgv(c, argc, argv, lens);
  if (!r)
    fail_msg("command '%s': %s", argv[0], c->errstr);
  return r;
}

static void expect_status(redisReply *r, const char *s) {
  if (r->type != REDIS_REPLY_STATUS || strcmp(r->str, s))
    fail_msg("expected +%s, got type %d '%s'", s, r->type,
             r->str ? r->str : "");
  freeReplyObject(r);
}

static void expect_int(redisReply *r, long long v) {
  if (r->type != REDIS_REPLY_INTEGER)
    fail_msg("expected :%lld, got type %d '%s'", v, r->type,
             r->str ? r->str : "");
  assert_int_equal(r->integer, v);
  freeReplyObject(r);
}

static void expect_error(redisReply *r, const char *prefix) {
  if (r->type != REDIS_REPLY_ERROR || strncmp(r->str, prefix, strlen(prefix)))
    fail_msg("expected error '%s...', got type %d '%s'", prefix, r->type,
             r->str ? r->str : "");
  freeReplyObject(r);
}

static void expect_ping(redisContext *c) { expect_status(hcmd(c, "PING"), "PONG"); }

static int tcp_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
    fail_msg("connect: %s", strerror(errno));
  struct timeval tv = {IO_TIMEOUT_S, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static int send_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Read until the peer closes (or the timeout); returns bytes read. */
static size_t read_to_eof(int fd, char *buf, size_t cap, int *closed) {
  size_t len = 0;
  *closed = 0;
  for (;;) {
    char tmp[65536];
    ssize_t n = recv(fd, tmp, sizeof tmp, 0);
    if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) {
      *closed = 1;
      break;
    }
    if (n < 0)
      break; /* timeout */
    size_t take = (size_t)n < cap - len ? (size_t)n : cap - len;
    memcpy(buf + len, tmp, take);
    len += take;
  }
  return len;
}

/* A RESP3 value, parsed here independently of net/resp.c. */
typedef struct r3 {
  char type;            /* + - : $ * % _ , # = ~ */
  long long integer;
  double dbl;
  char *str;            /* + - $ , = */
  size_t len;
  size_t n;             /* * % ~: elements (maps: 2n) */
  struct r3 **el;
} r3;

typedef struct {
  int fd;
  char buf[1 << 16];
  size_t len, pos;
  char *tap;        /* if set, a copy of every byte consumed */
  size_t tap_len;
} r3_conn;

static void r3_consume(r3_conn *c, const char *p, size_t n) {
  if (c->tap) {
    memcpy(c->tap + c->tap_len, p, n);
    c->tap_len += n;
  }
}

static void r3_free(r3 *v) {
  if (!v)
    return;
  for (size_t i = 0; i < v->n; i++)
    r3_free(v->el[i]);
  free(v->el);
  free(v->str);
  free(v);
}

static int r3_fill(r3_conn *c) {
  if (c->pos > 0) {
    memmove(c->buf, c->buf + c->pos, c->len - c->pos);
    c->len -= c->pos;
    c->pos = 0;
  }
  if (c->len == sizeof c->buf)
    return -1;
  ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
  if (n <= 0)
    return -1;
  c->len += (size_t)n;
  return 0;
}

static int r3_line(r3_conn *c, char *out, size_t cap) {
  for (;;) {
    char *nl = memchr(c->buf + c->pos, '\n', c->len - c->pos);
    if (nl) {
      size_t n = (size_t)(nl - (c->buf + c->pos));
      if (n == 0 || c->buf[c->pos + n - 1] != '\r' || n > cap)
        return -1;
      memcpy(out, c->buf + c->pos, n - 1);
      out[n - 1] = '\0';
      r3_consume(c, c->buf + c->pos, n + 1);
      c->pos += n + 1;
      return 0;
    }
    if (r3_fill(c) < 0)
      return -1;
  }
}

static int r3_bytes(r3_conn *c, char *out, size_t n) {
  size_t got = 0;
  while (got < n) {
    if (c->pos == c->len && r3_fill(c) < 0)
      return -1;
    size_t take = c->len - c->pos < n - got ? c->len - c->pos : n - got;
    memcpy(out + got, c->buf + c->pos, take);
    r3_consume(c, c->buf + c->pos, take);
    c->pos += take;
    got += take;
  }
  return 0;
}

static r3 *r3_read(r3_conn *c) {
  char line[1024];
  if (r3_line(c, line, sizeof line) < 0)
    return NULL;
  r3 *v = calloc(1, sizeof *v);
  v->type = line[0];
  const char *rest = line + 1;
  switch (v->type) {
  case '+':
  case '-':
    v->str = strdup(rest);
    v->len = strlen(rest);
    return v;
  case ':':
    v->integer = strtoll(rest, NULL, 10);
    return v;
  case ',':
    v->dbl = strtod(rest, NULL);
    v->str = strdup(rest);
    return v;
  case '_':
    return v;
  case '#':
    v->integer = rest[0] == 't';
    return v;
  case '$':
  case '=': {
    long long n = strtoll(rest, NULL, 10);
    if (n < 0) {
      v->type = '_';
      return v;
    }
    v->str = malloc((size_t)n + 2);
    v->len = (size_t)n;
    if (r3_bytes(c, v->str, (size_t)n + 2) < 0) {
      r3_free(v);
      return NULL;
    }
    v->str[n] = '\0';
    return v;
  }
  case '*':
  case '%':
  case '~': {
    long long n = strtoll(rest, NULL, 10);
    if (n < 0) {
      v->type = '_';
      return v;
    }
    v->n = (size_t)(v->type == '%' ? 2 * n : n);
    v->el = calloc(v->n ? v->n : 1, sizeof *v->el);
    for (size_t i = 0; i < v->n; i++)
      if (!(v->el[i] = r3_read(c))) {
        r3_free(v);
        return NULL;
      }
    return v;
  }
  }
  r3_free(v);
  return NULL;
}

/* Encode a command as a multibulk. */
#define encode_cmd vlm_test_resp_encode

static r3 *r3_cmd(r3_conn *c, int argc, const char **argv,
                  const size_t *lens) {
  size_t total = 64;
  for (int i = 0; i < argc; i++)
    total += (lens ? lens[i] : strlen(argv[i])) + 32;
  char *buf = malloc(total);
  size_t n = encode_cmd(buf, argc, argv, lens);
  assert_int_equal(send_all(c->fd, buf, n), 0);
  free(buf);
  r3 *v = r3_read(c);
  assert_non_null(v);
  return v;
}

/* The value of key in a RESP3 map, or NULL. */
static r3 *r3_get(r3 *map, const char *key) {
  if (map->type != '%')
    return NULL;
  for (size_t i = 0; i + 1 < map->n; i += 2)
    if (map->el[i]->str && !strcmp(map->el[i]->str, key))
      return map->el[i + 1];
  return NULL;
}

/* ======================================================================
 * Server tests
 * ==================================================================== */

typedef struct {
  const char *key;
  const char *caption;
  const char *image;   /* fixture file or NULL */
  int n;
  const char *cat;
} item_spec;

static const item_spec items[] = {
    {"cat", "a photo of a cat", "photo_rgb.jpg", 1, "animal"},
    {"dog", "A Photo Of A DOG!!", "photo_prog.jpg", 2, "animal"},
    {"fox", "the quick brown fox jumps over the lazy dog", NULL, 3, "animal"},
    {"saturn", "Saturn, the ringed planet", "gray.jpg", 4, "space"},
    {"car", "a red sports car parked next to a yellow fire hydrant", "rgb.png",
     5, "thing"},
    {"sun", "clip art of a smiling sun", "palette.png", 6, "space"},
    {"cafe", "café crème brûlée", NULL, 7, "food"},
    {"tokyo", "东京塔的夜景", "wide.png", 8, "place"},
};
#define NITEMS ((int)(sizeof items / sizeof items[0]))

static void text_vec(const char *text, float *out) {
  int rc = vlm_clip_encode_texts(g_clip, &text, 1, 0, out);
  if (rc < 0)
    fail_msg("encode '%s': %s", text, vlm_errmsg());
}

static char *fixture(const char *name, size_t *len) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", MODEL_DIR, name);
  char *data = read_file(path, len);
  if (!data)
    fail_msg("cannot read %s", path);
  return data;
}

static void image_vec(const char *name, float *out) {
  size_t len;
  char *data = fixture(name, &len);
  const void *p = data;
  int rc = vlm_clip_encode_image_buffers(g_clip, &p, &len, 1, 0, out);
  free(data);
  if (rc < 0)
    fail_msg("encode %s: %s", name, vlm_errmsg());
}

static void assert_vec_near(const float *got, const float *want, int n,
                            float tol, const char *what) {
  for (int i = 0; i < n; i++)
    if (fabsf(got[i] - want[i]) > tol)
      fail_msg("%s[%d]: got %.7g, want %.7g (tolerance %g)", what, i,
               (double)got[i], (double)want[i], (double)tol);
}

/* ADD every fixture item through the server (TEXT, IMAGE, META). */
static void add_items(redisContext *c) {
  for (int i = 0; i < NITEMS; i++) {
    char meta[128];
    snprintf(meta, sizeof meta, "{\"n\":%d,\"cat\":\"%s\"}", items[i].n,
             items[i].cat);
    const char *argv[10] = {"ADD", items[i].key, "TEXT", items[i].caption,
                            "META", meta};
    size_t lens[10] = {3, strlen(items[i].key), 4, strlen(items[i].caption),
                       4, strlen(meta)};
    int argc = 6;
    char *img = NULL;
    if (items[i].image) {
      img = fixture(items[i].image, &lens[7]);
      argv[6] = "IMAGE";
      lens[6] = 5;
      argv[7] = img;
      argc = 8;
    }
    expect_int(hcmdargv(c, argc, argv, lens), 1);
    free(img);
  }
}

/* The brute-force oracle: every item's best cosine over its vectors. */
typedef struct {
  const char *key;
  float score;
} scored;

static int by_score(const void *a, const void *b) {
  float x = ((const scored *)a)->score, y = ((const scored *)b)->score;
  return x < y ? 1 : x > y ? -1 : 0;
}

static int oracle(const float *q, int target, int max_n, scored *out) {
  int m = 0;
  float *v = malloc((size_t)g_dim * sizeof(float));
  for (int i = 0; i < NITEMS; i++) {
    if (items[i].n > max_n)
      continue;
    float best = -INFINITY;
    if (target != VLM_TARGET_IMAGE) {
      text_vec(items[i].caption, v);
      best = dotf(q, v, g_dim);
    }
    if (items[i].image && target != VLM_TARGET_TEXT) {
      image_vec(items[i].image, v);
      float s = dotf(q, v, g_dim);
      best = s > best ? s : best;
    }
    if (best == -INFINITY)
      continue;
    out[m].key = items[i].key;
    out[m].score = best;
    m++;
  }
  free(v);
  qsort(out, (size_t)m, sizeof *out, by_score);
  return m;
}

/* Compare a RESP2 SEARCH reply (array of [key, score, ...]) with the
 * oracle's top k; keys must match where scores are not near-ties. */
static void assert_search_matches(redisReply *r, const scored *want, int k) {
  if (r->type != REDIS_REPLY_ARRAY)
    fail_msg("SEARCH reply type %d '%s'", r->type, r->str ? r->str : "");
  assert_int_equal(r->elements, (size_t)k);
  for (int i = 0; i < k; i++) {
    redisReply *e = r->element[i];
    assert_int_equal(e->type, REDIS_REPLY_ARRAY);
    assert_true(e->elements >= 2);
    double score = strtod(e->element[1]->str, NULL);
    if (fabs(score - want[i].score) > 1e-4)
      fail_msg("hit %d: score %.6f (%s), oracle %.6f (%s)", i, score,
               e->element[0]->str, (double)want[i].score, want[i].key);
    int tie = (i > 0 && fabsf(want[i].score - want[i - 1].score) < 1e-4) ||
              (i + 1 < k && fabsf(want[i].score - want[i + 1].score) < 1e-4);
    if (!tie && strcmp(e->element[0]->str, want[i].key))
      fail_msg("hit %d: key %s, oracle %s", i, e->element[0]->str,
               want[i].key);
  }
}

/* A value of a RESP2 flat map by name, or NULL. */
static redisReply *flat_get(redisReply *map, const char *key) {
  for (size_t i = 0; i + 1 < map->elements; i += 2)
    if (map->element[i]->str && !strcmp(map->element[i]->str, key))
      return map->element[i + 1];
  return NULL;
}

/* EVAL against ranks computed here from in-process vectors: for each item
 * with a caption and an image, rank its partner among all candidates of
 * the other modality (ties count against it). */
static void check_eval(redisContext *c) {
  float *tv = malloc((size_t)NITEMS * g_dim * sizeof(float));
  float *iv = malloc((size_t)NITEMS * g_dim * sizeof(float));
  for (int i = 0; i < NITEMS; i++) {
    text_vec(items[i].caption, tv + (size_t)i * g_dim);
    if (items[i].image)
      image_vec(items[i].image, iv + (size_t)i * g_dim);
  }
  int ks[2] = {1, 3};
  double want[2][2] = {{0}}; /* [direction][k] */
  double want_prob[2] = {0}; /* CLIP's softmax of the partner, summed */
  double scale = exp((double)vlm_clip_logit_scale(g_clip));
  int npairs = 0;
  for (int dir = 0; dir < 2; dir++) {
    for (int q = 0; q < NITEMS; q++) {
      if (!items[q].image)
        continue;
      npairs += dir == 0;
      const float *qv = (dir == 0 ? tv : iv) + (size_t)q * g_dim;
      const float *cands = dir == 0 ? iv : tv;
      float self = dotf(qv, cands + (size_t)q * g_dim, g_dim);
      int rank = 1;
      double z = 0;
      for (int j = 0; j < NITEMS; j++) {
        if (dir == 0 && !items[j].image)
          continue;
        float other = dotf(qv, cands + (size_t)j * g_dim, g_dim);
        rank += j != q && other >= self;
        z += exp(scale * ((double)other - self));
      }
      want_prob[dir] += 1 / z;
      for (int k = 0; k < 2; k++)
        want[dir][k] += rank <= ks[k];
    }
  }
  redisReply *r = hcmd(c, "VLM.EVAL K 1 K 3");
  if (r->type != REDIS_REPLY_ARRAY)
    fail_msg("VLM.EVAL: type %d '%s'", r->type, r->str ? r->str : "");
  assert_int_equal(flat_get(r, "pairs")->integer, npairs);
  const char *names[2] = {"text_to_image", "image_to_text"};
  for (int dir = 0; dir < 2; dir++) {
    redisReply *d = flat_get(r, names[dir]);
    assert_non_null(d);
    assert_int_equal(flat_get(d, "queries")->integer, npairs);
    double prob = strtod(flat_get(d, "gt_probability")->str, NULL);
    if (fabs(prob - want_prob[dir] / npairs) > 1e-5)
      fail_msg("VLM.EVAL %s gt_probability: server %.7f, oracle %.7f",
               names[dir], prob, want_prob[dir] / npairs);
    for (int k = 0; k < 2; k++) {
      char key[32];
      snprintf(key, sizeof key, "recall@%d", ks[k]);
      double got = strtod(flat_get(d, key)->str, NULL);
      if (fabs(got - want[dir][k] / npairs) > 1e-9)
        fail_msg("VLM.EVAL %s %s: server %.6f, oracle %.6f", names[dir], key,
                 got, want[dir][k] / npairs);
      /* the shortest decimal that reads back: "0.25", not 0.25000...1 */
      char shortest[64];
      for (int prec = 1; prec <= 17; prec++) {
        snprintf(shortest, sizeof shortest, "%.*g", prec, got);
        if (strtod(shortest, NULL) == got)
          break;
      }
      assert_string_equal(flat_get(d, key)->str, shortest);
    }
  }
  /* the CLI's list form gives the same answer */
  redisReply *listed = hcmd(c, "VLM.EVAL K 1,3");
  assert_int_equal(listed->type, REDIS_REPLY_ARRAY);
  for (int dir = 0; dir < 2; dir++)
    for (int k = 0; k < 2; k++) {
      char key[32];
      snprintf(key, sizeof key, "recall@%d", ks[k]);
      assert_string_equal(flat_get(flat_get(listed, names[dir]), key)->str,
                          flat_get(flat_get(r, names[dir]), key)->str);
    }
  freeReplyObject(listed);
  freeReplyObject(r);
  expect_error(hcmd(c, "VLM.EVAL K 0"), "ERR K must be an integer");
  expect_error(hcmd(c, "VLM.EVAL K 1,,3"), "ERR K must be an integer");
  expect_error(hcmd(c, "VLM.EVAL K 1,"), "ERR K must be an integer");
  expect_error(hcmd(c, "VLM.EVAL DIRECTION up"), "ERR DIRECTION must be");
  /* Redis's Lua EVAL is not this command, and says what is */
  expect_error(hcmd(c, "EVAL %s 0", "return 1"), "ERR vlmdb runs no Lua");
  expect_error(hcmd(c, "EVAL K 1"), "ERR vlmdb runs no Lua");
  r = hcmd(c, "VLM.EVAL DIRECTION T2I EXACTONLY");
  assert_non_null(flat_get(r, "text_to_image"));
  assert_null(flat_get(r, "image_to_text"));
  freeReplyObject(r);
  free(tv);
  free(iv);
}

static void expect_shell(const char *cmdline, const char *want);
static char *run_shell(const char *cmdline);

/* COMMAND DOCS helpers: a field of a RESP2 map, and an "arguments" tree
 * rendered as Redis's docs write syntax lines ("[K k]", "(A | B)",
 * "name [name ...]"). */
static redisReply *map_get(redisReply *m, const char *key) {
  for (size_t i = 0; m && i + 1 < m->elements; i += 2)
    if (m->element[i]->str && !strcmp(m->element[i]->str, key))
      return m->element[i + 1];
  return NULL;
}

static void render_arg(redisReply *a, char *out, size_t cap, int top_alone) {
  redisReply *type = map_get(a, "type"), *name = map_get(a, "name"),
             *token = map_get(a, "token"), *flags = map_get(a, "flags"),
             *kids = map_get(a, "arguments");
  int optional = 0, multiple = 0;
  for (size_t i = 0; flags && i < flags->elements; i++) {
    optional |= !strcmp(flags->element[i]->str, "optional");
    multiple |= !strcmp(flags->element[i]->str, "multiple");
  }
  char body[1024] = "";
  size_t n = 0;
  if (!strcmp(type->str, "pure-token")) {
    n += (size_t)snprintf(body, sizeof body, "%s", token->str);
  } else if (!strcmp(type->str, "oneof") || !strcmp(type->str, "block")) {
    int oneof = !strcmp(type->str, "oneof");
    if (token)
      n += (size_t)snprintf(body + n, sizeof body - n, "%s ", token->str);
    for (size_t i = 0; i < kids->elements; i++) {
      char k[512];
      render_arg(kids->element[i], k, sizeof k, 0);
      n += (size_t)snprintf(body + n, sizeof body - n, "%s%s",
                            i ? (oneof ? " | " : " ") : "", k);
    }
    if (oneof && !optional && !top_alone) {
      char tmp[1024];
      snprintf(tmp, sizeof tmp, "(%s)", body);
      snprintf(body, sizeof body, "%s", tmp);
    }
  } else {
    n += (size_t)snprintf(body + n, sizeof body - n, "%s%s%s",
                          token ? token->str : "", token ? " " : "",
                          name->str);
    if (multiple)
      snprintf(body + n, sizeof body - n, " [%s ...]", name->str);
  }
  snprintf(out, cap, optional ? "[%s]" : "%s", body);
}

static void render_args(redisReply *args, char *out, size_t cap) {
  size_t n = 0;
  out[0] = '\0';
  for (size_t i = 0; i < args->elements; i++) {
    char a[1024];
    render_arg(args->element[i], a, sizeof a, args->elements == 1);
    n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? " " : "", a);
  }
}

static void test_connection_commands(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  expect_ping(c);
  redisReply *r = hcmd(c, "PING %s", "hi there");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  assert_string_equal(r->str, "hi there");
  freeReplyObject(r);
  r = hcmd(c, "ECHO %b", "a\0b\r\nc", (size_t)6);
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  assert_int_equal(r->len, 6);
  assert_memory_equal(r->str, "a\0b\r\nc", 6);
  freeReplyObject(r);

  /* Errors name the problem and leave the connection usable. */
  expect_error(hcmd(c, "NOSUCH a b"), "ERR unknown command 'NOSUCH', with "
                                      "args beginning with: 'a' 'b'");
  expect_error(hcmd(c, "ECHO"), "ERR wrong number of arguments for 'echo'");
  expect_error(hcmd(c, "ECHO a b"), "ERR wrong number of arguments for 'echo'");
  expect_error(hcmd(c, "PING a b"), "ERR wrong number of arguments for 'ping'");
  expect_error(hcmd(c, "SEARCH TEXT"), "ERR wrong number of arguments");
  expect_error(hcmd(c, "SEARCH SOUND x"), "ERR SEARCH: unknown query kind");
  expect_error(hcmd(c, "SEARCH TEXT x K 0"), "ERR K must be an integer");
  expect_error(hcmd(c, "SEARCH TEXT x K abc"), "ERR K must be an integer");
  expect_error(hcmd(c, "SEARCH TEXT x BOGUS"), "ERR syntax error near 'BOGUS'");
  expect_error(hcmd(c, "SEARCH TEXT x RETURN 1 nosuchfield"),
               "ERR unknown field 'nosuchfield'");
  expect_error(hcmd(c, "SEARCH VECTOR %b", "abc", (size_t)3),
               "ERR VECTOR must be 48 float32 values");
  expect_error(hcmd(c, "SEARCH KEY nokey"), "ERR no such key 'nokey'");
  expect_error(hcmd(c, "ADD k"), "ERR wrong number of arguments for 'add'");
  expect_error(hcmd(c, "ADD k META {}"), "ERR ADD needs a vector");
  expect_error(hcmd(c, "ADD k TEXTVEC abc"), "ERR TEXTVEC must be 48 float32");
  expect_error(hcmd(c, "EMBED SOUND x"), "ERR EMBED: unknown input kind");
  expect_error(hcmd(c, "GET k WITHNOTHING"), "ERR syntax error");
  expect_error(hcmd(c, "SELECT 1"), "ERR DB index is out of range");
  expect_error(hcmd(c, "AUTH secret"), "ERR AUTH <password> called without");
  expect_error(hcmd(c, "HELLO 4"), "NOPROTO");
  expect_error(hcmd(c, "HELLO x"), "ERR Protocol version is not an integer");
  expect_error(hcmd(c, "CLIENT BOGUS"), "ERR unknown subcommand");
  expect_error(hcmd(c, "CONFIG SET x y"), "ERR CONFIG SET is not supported");
  expect_ping(c);

  expect_status(hcmd(c, "SELECT 0"), "OK");
  expect_status(hcmd(c, "CLIENT SETNAME tester"), "OK");
  r = hcmd(c, "CLIENT GETNAME");
  assert_string_equal(r->str, "tester");
  freeReplyObject(r);
  expect_error(hcmd(c, "CLIENT SETNAME %s", "has space"),
               "ERR Client names cannot contain spaces");
  expect_status(hcmd(c, "CLIENT SETINFO LIB-NAME hiredis"), "OK");
  expect_status(hcmd(c, "CLIENT SETINFO LIB-VER 0.14"), "OK");
  r = hcmd(c, "CLIENT ID");
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  long long id = r->integer;
  freeReplyObject(r);
  r = hcmd(c, "CLIENT LIST");
  char want[64];
  snprintf(want, sizeof want, "id=%lld ", id);
  assert_non_null(strstr(r->str, want));
  assert_non_null(strstr(r->str, "name=tester"));
  assert_non_null(strstr(r->str, "lib-name=hiredis lib-ver=0.14"));
  freeReplyObject(r);

  /* COMMAND: every entry well formed, COUNT and DOCS agree with it. */
  r = hcmd(c, "COMMAND");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  size_t ncmd = r->elements;
  assert_true(ncmd >= 15);
  for (size_t i = 0; i < ncmd; i++) {
    redisReply *e = r->element[i];
    assert_int_equal(e->type, REDIS_REPLY_ARRAY);
    assert_int_equal(e->elements, 10);
    assert_int_equal(e->element[0]->type, REDIS_REPLY_STRING);
    assert_int_equal(e->element[1]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(e->element[2]->type, REDIS_REPLY_ARRAY);
  }
  freeReplyObject(r);
  expect_int(hcmd(c, "COMMAND COUNT"), (long long)ncmd);
  r = hcmd(c, "COMMAND DOCS");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 2 * ncmd);
  freeReplyObject(r);
  r = hcmd(c, "COMMAND DOCS search");
  assert_int_equal(r->elements, 2);
  assert_string_equal(r->element[0]->str, "search");
  freeReplyObject(r);
  /* every command's "arguments" tree, rendered back the way Redis's docs
   * write a syntax line, is its syntax line */
  r = hcmd(c, "COMMAND DOCS");
  for (size_t i = 0; i + 1 < r->elements; i += 2) {
    redisReply *d = r->element[i + 1];
    redisReply *syntax = map_get(d, "syntax"), *args = map_get(d, "arguments");
    assert_non_null(syntax);
    assert_non_null(args);
    char got[1024] = "";
    render_args(args, got, sizeof got);
    if (strcmp(got, syntax->str))
      fail_msg("%s: the arguments render as '%s', the syntax is '%s'",
               r->element[i]->str, got, syntax->str);
  }
  freeReplyObject(r);
  r = hcmd(c, "COMMAND INFO ping nosuch");
  assert_int_equal(r->elements, 2);
  assert_string_equal(r->element[0]->element[0]->str, "ping");
  assert_int_equal(r->element[0]->element[1]->integer, -1);
  assert_int_equal(r->element[1]->type, REDIS_REPLY_NIL);
  freeReplyObject(r);
  /* key positions (first, last, step), as cluster clients route by them */
  r = hcmd(c, "COMMAND INFO add upsert get del exists search");
  const long long pos[6][3] = {{1, 1, 1},  {1, 1, 1},  {1, 1, 1},
                               {1, -1, 1}, {1, -1, 1}, {0, 0, 0}};
  assert_int_equal(r->elements, 6);
  for (int i = 0; i < 6; i++)
    for (int k = 0; k < 3; k++)
      assert_int_equal(r->element[i]->element[3 + k]->integer, pos[i][k]);
  freeReplyObject(r);
  {
    /* and redis-py's own parser of COMMAND finds the keys */
    char cmdline[1024];
    snprintf(cmdline, sizeof cmdline,
             "/usr/bin/python3 -c 'import redis; "
             "from redis.commands.parser import CommandsParser; "
             "r = redis.Redis(port=%d); p = CommandsParser(r); "
             "print(p.get_keys(r, \"DEL\", \"a\", \"b\"), "
             "p.get_keys(r, \"ADD\", \"k1\", \"TEXT\", \"x\"), "
             "p.get_keys(r, \"SEARCH\", \"TEXT\", \"x\"))' 2>&1",
             s.port);
    expect_shell(cmdline, "['a', 'b'] ['k1'] None\n");
  }

  /* CONFIG GET as redis-benchmark asks it. */
  r = hcmd(c, "CONFIG GET save");
  assert_int_equal(r->elements, 2);
  assert_string_equal(r->element[0]->str, "save");
  freeReplyObject(r);
  r = hcmd(c, "CONFIG GET *");
  assert_true(r->elements >= 10);
  freeReplyObject(r);

  /* INFO: every section, with the port it really listens on. */
  r = hcmd(c, "INFO");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  const char *sections[] = {"# Server", "# Clients", "# Stats", "# Memory",
                            "# Db", "# Model", "connected_clients:1",
                            "items:0", "dim:48", "model_loaded:1",
                            "\r\nfamily:clip\r\n", "\r\nmodel_family:clip\r\n",
                            "\r\nlogit_bias:0\r\n"};
  for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
    if (!strstr(r->str, sections[i]))
      fail_msg("INFO lacks '%s':\n%s", sections[i], r->str);
  snprintf(want, sizeof want, "tcp_port:%d\r\n", s.port);
  assert_non_null(strstr(r->str, want));
  freeReplyObject(r);
  r = hcmd(c, "INFO clients");
  assert_non_null(strstr(r->str, "# Clients"));
  assert_null(strstr(r->str, "# Server"));
  freeReplyObject(r);

  /* HELLO 2: a map as a flat array. */
  r = hcmd(c, "HELLO 2");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 14);
  assert_string_equal(r->element[0]->str, "server");
  assert_string_equal(r->element[1]->str, "vlmdb");
  assert_string_equal(r->element[4]->str, "proto");
  assert_int_equal(r->element[5]->integer, 2);
  freeReplyObject(r);

  expect_status(hcmd(c, "QUIT"), "OK");
  r = redisCommand(c, "PING");
  assert_null(r); /* closed by the server */
  redisFree(c);
  stop_server(&s);
  server_done(&s);
}

static void test_write_read_search(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  add_items(c);
  expect_int(hcmd(c, "COUNT"), NITEMS);
  expect_int(hcmd(c, "DBSIZE"), NITEMS);
  /* ADD of an existing key is skipped; UPSERT replaces. */
  expect_int(hcmd(c, "ADD cat TEXT %s", "another cat"), 0);
  size_t catlen;
  char *catimg = fixture("photo_rgb.jpg", &catlen);
  expect_int(hcmd(c, "UPSERT cat TEXT %s IMAGE %b META %s", "a photo of a cat",
                  catimg, catlen, "{\"n\":1,\"cat\":\"animal\"}"), 1);
  free(catimg);
  expect_int(hcmd(c, "COUNT"), NITEMS);
  expect_int(hcmd(c, "EXISTS cat dog nokey"), 2);

  /* GET: the stored fields, and vectors equal to the model's in-process. */
  float *want = malloc((size_t)g_dim * sizeof(float));
  redisReply *r = hcmd(c, "GET dog WITHTHUMB WITHVECTORS");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 14);
  assert_string_equal(r->element[1]->str, "dog");
  assert_string_equal(r->element[3]->str, "A Photo Of A DOG!!");
  assert_int_equal(r->element[5]->type, REDIS_REPLY_NIL); /* no source */
  assert_non_null(strstr(r->element[7]->str, "\"cat\""));
  assert_string_equal(r->element[8]->str, "thumb");
  assert_true(r->element[9]->len > 100);
  assert_int_equal((unsigned char)r->element[9]->str[0], 0xFF); /* JPEG */
  assert_int_equal((unsigned char)r->element[9]->str[1], 0xD8);
  assert_int_equal(r->element[11]->len, (size_t)g_dim * 4);
  assert_int_equal(r->element[13]->len, (size_t)g_dim * 4);
  image_vec("photo_prog.jpg", want);
  assert_vec_near((const float *)r->element[11]->str, want, g_dim, 1e-5f,
                  "GET image_vec");
  text_vec("A Photo Of A DOG!!", want);
  assert_vec_near((const float *)r->element[13]->str, want, g_dim, 1e-5f,
                  "GET text_vec");
  freeReplyObject(r);

  /* ADD stores the thumbnail ingest stores: one function, one size; a
   * transparent PNG over white. */
  size_t rgbalen;
  char *rgba = fixture("rgba.png", &rgbalen);
  expect_int(hcmd(c, "ADD clear IMAGE %b", rgba, rgbalen), 1);
  uint8_t *thumb_want = NULL;
  size_t thumb_want_len = 0;
  assert_int_equal(vlm_image_thumbnail_bytes(rgba, rgbalen, &thumb_want,
                                             &thumb_want_len),
                   0);
  r = hcmd(c, "GET clear WITHTHUMB");
  assert_string_equal(r->element[8]->str, "thumb");
  assert_int_equal(r->element[9]->len, thumb_want_len);
  assert_memory_equal(r->element[9]->str, thumb_want, thumb_want_len);
  vlm_image timg = {0};
  assert_int_equal(vlm_image_decode(r->element[9]->str, r->element[9]->len,
                                    NULL, &timg),
                   0);
  assert_int_equal(timg.w, VLM_THUMB_SIDE); /* 257 x 129 -> 256 x 128 */
  assert_int_equal(timg.h, 128);
  vlm_image_free(&timg);
  freeReplyObject(r);
  free(thumb_want);
  free(rgba);
  expect_int(hcmd(c, "DEL clear"), 1);
  r = hcmd(c, "GET nokey");
  assert_int_equal(r->type, REDIS_REPLY_NIL);
  freeReplyObject(r);

  /* EMBED equals the model in this process. */
  r = hcmd(c, "EMBED TEXT %s", "a photo of a cat");
  assert_int_equal(r->len, (size_t)g_dim * 4);
  text_vec("a photo of a cat", want);
  assert_vec_near((const float *)r->str, want, g_dim, 1e-5f, "EMBED TEXT");
  freeReplyObject(r);
  size_t ilen;
  char *img = fixture("rgba.png", &ilen);
  r = hcmd(c, "EMBED IMAGE %b", img, ilen);
  assert_int_equal(r->len, (size_t)g_dim * 4);
  image_vec("rgba.png", want);
  assert_vec_near((const float *)r->str, want, g_dim, 1e-5f, "EMBED IMAGE");
  freeReplyObject(r);
  expect_error(hcmd(c, "EMBED IMAGE %b", "not an image", (size_t)12),
               "ERR cannot read the image");
  expect_error(hcmd(c, "EMBED TEXT %b", "\xff\xfe", (size_t)2),
               "ERR cannot embed the text");

  /* SEARCH against the brute-force oracle. */
  scored *o = malloc(NITEMS * sizeof *o);
  text_vec("a photo of a dog", want);
  int m = oracle(want, VLM_TARGET_ANY, 1000, o);
  r = hcmd(c, "SEARCH TEXT %s K 5", "a photo of a dog");
  assert_search_matches(r, o, 5);
  freeReplyObject(r);
  r = hcmd(c, "SEARCH TEXT %s K 100 EXACT", "a photo of a dog");
  assert_search_matches(r, o, m);
  freeReplyObject(r);
  r = hcmd(c, "SEARCH VECTOR %b K 3", want, (size_t)g_dim * 4);
  assert_search_matches(r, o, 3);
  freeReplyObject(r);
  /* Filter over a declared field, and target modality. */
  m = oracle(want, VLM_TARGET_TEXT, 4, o);
  r = hcmd(c, "SEARCH TEXT %s K 10 FILTER %s TARGET TEXT", "a photo of a dog",
           "n <= 4");
  assert_search_matches(r, o, m);
  freeReplyObject(r);
  image_vec("rgba.png", want);
  m = oracle(want, VLM_TARGET_IMAGE, 1000, o);
  r = hcmd(c, "SEARCH IMAGE %b K 4 TARGET IMAGE EF 64 NPROBE 4", img, ilen);
  assert_search_matches(r, o, 4);
  freeReplyObject(r);
  /* By stored key: the item's image vector is the query. */
  image_vec("gray.jpg", want);
  m = oracle(want, VLM_TARGET_ANY, 1000, o);
  r = hcmd(c, "SEARCH KEY saturn K 3");
  assert_search_matches(r, o, 3);
  assert_string_equal(r->element[0]->element[0]->str, "saturn");
  freeReplyObject(r);
  /* RETURN fields. */
  r = hcmd(c, "SEARCH KEY car K 1 RETURN 6 caption n cat modality meta thumb");
  assert_int_equal(r->elements, 1);
  redisReply *e = r->element[0];
  assert_int_equal(e->elements, 14);
  assert_string_equal(e->element[0]->str, "car");
  assert_string_equal(e->element[2]->str, "caption");
  assert_string_equal(e->element[3]->str, items[4].caption);
  assert_string_equal(e->element[4]->str, "n");
  assert_int_equal(e->element[5]->integer, 5);
  assert_string_equal(e->element[7]->str, "thing");
  assert_string_equal(e->element[9]->str, "image");
  assert_int_equal((unsigned char)e->element[13]->str[0], 0xFF);
  freeReplyObject(r);
  /* COLLAPSE folds near-identical images into the best hit; "similar"
   * says how many (the library's oracle test checks which). */
  r = hcmd(c, "SEARCH KEY saturn K %d RETURN 1 similar", NITEMS);
  size_t uncollapsed = r->elements;
  freeReplyObject(r);
  r = hcmd(c, "SEARCH KEY saturn K %d COLLAPSE 0.000001 RETURN 1 similar",
           NITEMS);
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_true(r->elements >= 1 && r->elements < uncollapsed);
  assert_string_equal(r->element[0]->element[0]->str, "saturn");
  long long folded = 0;
  for (size_t h = 0; h < r->elements; h++) {
    assert_string_equal(r->element[h]->element[2]->str, "similar");
    assert_int_equal(r->element[h]->element[3]->type, REDIS_REPLY_INTEGER);
    folded += r->element[h]->element[3]->integer;
  }
  assert_int_equal((long long)r->elements + folded, (long long)uncollapsed);
  freeReplyObject(r);
  expect_error(hcmd(c, "SEARCH KEY saturn COLLAPSE 0"),
               "ERR COLLAPSE is a cosine");
  expect_error(hcmd(c, "SEARCH KEY saturn COLLAPSE 1.5"), "ERR");
  /* MINSCORE: every hit at or above it (K then defaults to all); OFFSET:
   * a page of the same ranking; GROUPBY cat [PER n]: the naive grouping
   * of the oracle's ranking. */
  text_vec("a photo of a dog", want);
  m = oracle(want, VLM_TARGET_ANY, 1000, o);
  {
    int cut = -1;
    for (int i = 2; i < m - 1 && cut < 0; i++)
      if (o[i].score - o[i + 1].score > 1e-3f)
        cut = i;
    assert_true(cut > 0);
    char thr[32];
    snprintf(thr, sizeof thr, "%.6f", (o[cut].score + o[cut + 1].score) / 2);
    r = hcmd(c, "SEARCH TEXT %s MINSCORE %s", "a photo of a dog", thr);
    assert_search_matches(r, o, cut + 1);
    freeReplyObject(r);
    r = hcmd(c, "SEARCH TEXT %s MINSCORE %s K 2", "a photo of a dog", thr);
    assert_search_matches(r, o, 2);
    freeReplyObject(r);
    r = hcmd(c, "SEARCH TEXT %s MINSCORE %s OFFSET 1", "a photo of a dog",
             thr);
    assert_search_matches(r, o + 1, cut);
    freeReplyObject(r);
    r = hcmd(c, "SEARCH TEXT %s K 3 OFFSET 2 EXACT", "a photo of a dog");
    assert_search_matches(r, o + 2, 3);
    freeReplyObject(r);
    r = hcmd(c, "SEARCH TEXT %s K 3 OFFSET %d", "a photo of a dog", m - 1);
    assert_search_matches(r, o + m - 1, 1);
    freeReplyObject(r);
    for (int per = 1; per <= 2; per++) {
      scored g[NITEMS];
      int ng = 0;
      for (int i = 0; i < m; i++) {
        const char *cat = NULL;
        for (int j = 0; j < NITEMS; j++)
          if (!strcmp(items[j].key, o[i].key))
            cat = items[j].cat;
        int same = 0;
        for (int x = 0; x < ng; x++)
          for (int j = 0; j < NITEMS; j++)
            same += !strcmp(items[j].key, g[x].key) &&
                    !strcmp(items[j].cat, cat);
        if (same < per)
          g[ng++] = o[i];
      }
      assert_true(ng >= 5 && ng < m);
      r = hcmd(c, "SEARCH TEXT %s GROUPBY cat PER %d", "a photo of a dog",
               per);
      assert_search_matches(r, g, ng < 10 ? ng : 10);
      freeReplyObject(r);
    }
    r = hcmd(c, "SEARCH TEXT %s GROUPBY cat K 3", "a photo of a dog");
    assert_int_equal(r->elements, 3);
    freeReplyObject(r);
  }
  expect_error(hcmd(c, "SEARCH KEY saturn MINSCORE 2"),
               "ERR MINSCORE must be a number from -1 to 1");
  expect_error(hcmd(c, "SEARCH KEY saturn MINSCORE nan"),
               "ERR MINSCORE must be a number");
  expect_error(hcmd(c, "SEARCH KEY saturn OFFSET -1"),
               "ERR OFFSET must be an integer");
  expect_error(hcmd(c, "SEARCH KEY saturn OFFSET 9995 K 10"),
               "ERR OFFSET 9995 + K 10 is past the deepest result");
  expect_error(hcmd(c, "SEARCH KEY saturn GROUPBY nosuch"),
               "ERR GROUPBY 'nosuch' is not a declared field");
  expect_error(hcmd(c, "SEARCH KEY saturn GROUPBY cat PER 0"),
               "ERR PER must be an integer");
  expect_error(hcmd(c, "SEARCH KEY saturn GROUPBY cat COLLAPSE 0.5"),
               "ERR GROUPBY and COLLAPSE cannot be combined");
  expect_error(hcmd(c, "SEARCH TEXT x MINSCORE 0.2 HYBRID x"),
               "ERR MINSCORE is a cosine");
  expect_error(hcmd(c, "SEARCH KEY saturn PER 2"),
               "ERR syntax error near 'PER'");
  /* Hybrid fuses BM25 over captions: a well-formed ranking of k items. */
  r = hcmd(c, "SEARCH TEXT %s K 3 HYBRID %s WEIGHT 0.5", "planet",
           "ringed planet");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 3);
  freeReplyObject(r);
  expect_error(hcmd(c, "SEARCH TEXT x FILTER %s", "nosuchcol = 1"), "ERR");
  /* The model's own scores of the hits: CLIP's logit, and its softmax
   * over the hits returned, computed here from the scores. */
  r = hcmd(c, "SEARCH TEXT %s K 5 TARGET IMAGE RETURN 2 logit probability",
           "a photo of a cat");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 5);
  {
    double scale = exp((double)vlm_clip_logit_scale(g_clip)), z = 0;
    double top = strtod(r->element[0]->element[1]->str, NULL);
    for (size_t h = 0; h < r->elements; h++)
      z += exp(scale * (strtod(r->element[h]->element[1]->str, NULL) - top));
    for (size_t h = 0; h < r->elements; h++) {
      redisReply *hit = r->element[h];
      assert_int_equal(hit->elements, 6);
      assert_string_equal(hit->element[2]->str, "logit");
      assert_string_equal(hit->element[4]->str, "probability");
      double score = strtod(hit->element[1]->str, NULL);
      double logit = strtod(hit->element[3]->str, NULL);
      double prob = strtod(hit->element[5]->str, NULL);
      double want_prob = exp(scale * (score - top)) / z;
      if (fabs(logit - scale * score) > 1e-4 || fabs(prob - want_prob) > 1e-5)
        fail_msg("hit %zu: logit %.6f, probability %.6f; oracle %.6f, %.6f",
                 h, logit, prob, scale * score, want_prob);
    }
  }
  freeReplyObject(r);
  expect_error(hcmd(c, "SEARCH TEXT x HYBRID y RETURN 1 probability"),
               "ERR RETURN probability: a HYBRID score is not a cosine");
  expect_ping(c);
  check_eval(c);

  /* DEL, then the keys are gone from GET and SEARCH. */
  expect_int(hcmd(c, "DEL cat dog nokey"), 2);
  expect_int(hcmd(c, "COUNT"), NITEMS - 2);
  r = hcmd(c, "SEARCH TEXT %s K 100", "a photo of a cat");
  assert_int_equal(r->elements, (size_t)(NITEMS - 2));
  for (size_t i = 0; i < r->elements; i++) {
    assert_string_not_equal(r->element[i]->element[0]->str, "cat");
    assert_string_not_equal(r->element[i]->element[0]->str, "dog");
  }
  freeReplyObject(r);
  expect_status(hcmd(c, "SAVE"), "OK");
  /* Vectors given as bytes. */
  float *v = malloc((size_t)g_dim * sizeof(float));
  for (int i = 0; i < g_dim; i++)
    v[i] = (float)(rng() % 1000) / 1000.0f - 0.5f;
  normalize(v, g_dim);
  expect_int(hcmd(c, "ADD raw IMAGEVEC %b SOURCE %s", v, (size_t)g_dim * 4,
                  "file:///raw"), 1);
  r = hcmd(c, "SEARCH VECTOR %b K 1 RETURN 1 source", v, (size_t)g_dim * 4);
  assert_string_equal(r->element[0]->element[0]->str, "raw");
  assert_true(fabs(strtod(r->element[0]->element[1]->str, NULL) - 1.0) < 1e-4);
  assert_string_equal(r->element[0]->element[3]->str, "file:///raw");
  freeReplyObject(r);
  free(v);
  free(img);
  free(o);
  free(want);
  redisFree(c);
  stop_server(&s);

  /* The writes survived the graceful shutdown. */
  start_server(&s, NULL);
  c = hconnect(s.port);
  expect_int(hcmd(c, "COUNT"), NITEMS - 1);
  expect_int(hcmd(c, "EXISTS raw saturn cat"), 2);
  redisFree(c);
  stop_server(&s);
  server_done(&s);
}

/* BACKUP while the server serves: a pipelined write before it is in the
 * copy (ordered like a write), the copy opens, verifies and holds what the
 * server held; a second BACKUP to the same place is refused. */
static void test_backup_command(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  add_items(c);
  float *v = malloc((size_t)g_dim * sizeof(float));
  for (int i = 0; i < g_dim; i++)
    v[i] = (float)(rng() % 1000) / 1000.0f - 0.5f;
  normalize(v, g_dim);
  char dst[160];
  snprintf(dst, sizeof dst, "%s/copy", s.dir);
  redisAppendCommand(c, "UPSERT late IMAGEVEC %b", v, (size_t)g_dim * 4);
  redisAppendCommand(c, "BACKUP %s", dst);
  redisReply *r = NULL;
  assert_int_equal(redisGetReply(c, (void **)&r), REDIS_OK);
  expect_int(r, 1);
  assert_int_equal(redisGetReply(c, (void **)&r), REDIS_OK);
  if (r->type != REDIS_REPLY_ARRAY)
    fail_msg("BACKUP: reply type %d: %s", r->type, r->str ? r->str : "");
  assert_int_equal(r->elements, 8);
  assert_string_equal(r->element[2]->str, "items");
  assert_int_equal(r->element[3]->integer, NITEMS + 1);
  freeReplyObject(r);
  expect_error(hcmd(c, "BACKUP %s", dst), "ERR already exists");
  expect_error(hcmd(c, "BACKUP"), "ERR wrong number of arguments");
  /* read-only commands run beside the server: verify, search, and a
   * backup of their own */
  char cmd[1024], dst2[200];
  snprintf(dst2, sizeof dst2, "%s/copy2", s.dir);
  snprintf(cmd, sizeof cmd, "%s/vlmdb verify --db %s >/dev/null && "
           "%s/vlmdb search --db %s --model %s --text cat -k 1 --json | grep -c '\"key\"' && "
           "%s/vlmdb backup --db %s --out %s --json | grep -o '\"items\":"
           "[0-9]*'", build_dir(), s.db, build_dir(), s.db, MODEL_DIR,
           build_dir(), s.db, dst2);
  char want[64];
  snprintf(want, sizeof want, "1\n\"items\":%d\n", NITEMS + 1);
  expect_shell(cmd, want);
  redisFree(c);
  stop_server(&s);

  vlm_db_open_options o = {.readonly = 1};
  vlm_db *db = NULL;
  if (vlm_db_open(dst, &o, &db) != 0)
    fail_msg("the copy does not open: %s", vlm_errmsg());
  if (vlm_db_verify(db) != 0)
    fail_msg("the copy does not verify: %s", vlm_errmsg());
  vlm_db_info info;
  assert_int_equal(vlm_db_stat(db, &info), 0);
  assert_int_equal(info.items, NITEMS + 1);
  vlm_record *rec = NULL;
  assert_int_equal(vlm_db_get(db, "late", &rec), 0);
  for (int i = 0; i < g_dim; i++)
    assert_true(fabsf(rec->image_vec[i] - v[i]) < 1e-6f);
  vlm_record_free(rec);
  vlm_db_close(db);
  free(v);
  server_done(&s);
}

/* UPDATE and SETMETA change only what they name: the thumbnail and the
 * vectors of an image item survive a metadata change; a new TEXT gets
 * the model's vector for it, the image vector stays. */
static redisReply *get_field(redisContext *c, const char *key,
                             const char *field) {
  redisReply *r = hcmd(c, "GET %s WITHTHUMB WITHVECTORS", key);
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  for (size_t i = 0; i + 1 < r->elements; i += 2)
    if (!strcmp(r->element[i]->str, field)) {
      redisReply *v = r->element[i + 1];
      r->element[i + 1] = NULL; /* hand it over */
      freeReplyObject(r);
      return v;
    }
  fail_msg("GET %s has no %s", key, field);
  return NULL;
}

static void test_update_commands(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  size_t ilen;
  char *img = fixture("photo_rgb.jpg", &ilen);
  expect_int(hcmd(c, "ADD p IMAGE %b TEXT %s META %s", img, ilen,
                  "a photo of a cat", "{\"n\": 1, \"cat\": \"animal\"}"), 1);
  redisReply *thumb = get_field(c, "p", "thumb");
  redisReply *ivec = get_field(c, "p", "image_vec");
  redisReply *tvec = get_field(c, "p", "text_vec");
  expect_int(hcmd(c, "SETMETA p %s", "{\"n\": 2, \"cat\": \"pet\"}"), 1);
  redisReply *r = get_field(c, "p", "meta");
  assert_non_null(strstr(r->str, "\"pet\""));
  freeReplyObject(r);
  r = get_field(c, "p", "thumb");
  assert_int_equal(r->len, thumb->len);
  assert_memory_equal(r->str, thumb->str, r->len);
  freeReplyObject(r);
  r = get_field(c, "p", "image_vec");
  assert_memory_equal(r->str, ivec->str, r->len);
  freeReplyObject(r);
  r = get_field(c, "p", "caption");
  assert_string_equal(r->str, "a photo of a cat");
  freeReplyObject(r);
  r = hcmd(c, "SEARCH TEXT %s K 5 FILTER %s", "cat", "cat = 'pet' AND n = 2");
  assert_int_equal(r->elements, 1);
  freeReplyObject(r);
  /* a new caption: its text vector is the model's, the image's stays */
  expect_int(hcmd(c, "UPDATE p TEXT %s", "a sleeping dog"), 1);
  r = get_field(c, "p", "text_vec");
  redisReply *e = hcmd(c, "EMBED TEXT %s", "a sleeping dog");
  assert_int_equal(r->len, e->len);
  assert_vec_near((const float *)r->str, (const float *)e->str, g_dim, 1e-5f,
                  "UPDATE TEXT");
  assert_true(memcmp(r->str, tvec->str, r->len) != 0);
  freeReplyObject(e);
  freeReplyObject(r);
  r = get_field(c, "p", "image_vec");
  assert_memory_equal(r->str, ivec->str, r->len);
  freeReplyObject(r);
  expect_int(hcmd(c, "UPDATE nokey SOURCE %s", "x"), 0);
  expect_int(hcmd(c, "EXISTS nokey"), 0);
  expect_error(hcmd(c, "UPDATE p"), "ERR wrong number of arguments");
  expect_error(hcmd(c, "SETMETA p %s", "{bad"), "ERR");
  expect_error(hcmd(c, "SETMETA p %s", "{\"n\": \"two\"}"), "ERR");
  r = get_field(c, "p", "meta");
  assert_non_null(strstr(r->str, "\"pet\""));
  freeReplyObject(r);
  freeReplyObject(thumb);
  freeReplyObject(ivec);
  freeReplyObject(tvec);
  free(img);
  redisFree(c);
  stop_server(&s);
  server_done(&s);
}

/* Open s's database read-only (the server may be running or stopped). */
static vlm_db *open_ro_db(const server_t *s) {
  vlm_db_open_options o = {.readonly = 1};
  vlm_db *db = NULL;
  if (vlm_db_open(s->db, &o, &db) < 0)
    fail_msg("open %s: %s", s->db, vlm_errmsg());
  return db;
}

/* key keeps exactly want (len bytes; NULL: none) in db. */
static void expect_kept(vlm_db *db, const char *key, const void *want,
                        size_t len) {
  uint8_t *got = NULL;
  size_t n = 0;
  if (vlm_db_get_image(db, key, &got, &n) < 0)
    fail_msg("get image %s: %s", key, vlm_errmsg());
  if (n != (want ? len : 0))
    fail_msg("key %s keeps %zu bytes, want %zu", key, n, want ? len : 0);
  if (want && memcmp(got, want, len))
    fail_msg("key %s: the kept bytes differ from the image sent", key);
  free(got);
}

/* A JPEG followed by pad bytes (decoders stop at its end marker). */
static char *padded_jpeg(size_t pad, size_t *len) {
  size_t n;
  char *jpg = fixture("photo_rgb.jpg", &n);
  char *out = malloc(n + pad);
  assert_non_null(out);
  memcpy(out, jpg, n);
  uint64_t seed = pad;
  for (size_t i = 0; i < pad; i++)
    out[n + i] = (char)(vlm_test_splitmix64(&seed) >> 56);
  free(jpg);
  *len = n + pad;
  return out;
}

/* A database that keeps images keeps the bytes of every image its ADD,
 * UPSERT, UPDATE and MULTI/EXEC are sent, bit for bit (one of 3 MiB); an
 * image beyond the payload cap is refused with nothing written; an item
 * sent without an image keeps none; INFO db says keep_images:1.  A
 * database that does not keep images keeps none, and its UPDATE with a new
 * IMAGE removes the bytes an item kept (no longer its picture) while one
 * without an image leaves them.  The keeping database then moves to
 * another model with `vlmdb reembed` from the kept bytes alone: the new
 * image vectors are the new model's embeddings of the bytes that were
 * sent. */
static void test_add_keeps_images(void **state) {
  (void)state;
  server_t s, n;
  make_db_keep(&s, 1);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  size_t plen, glen, blen, hlen;
  char *photo = fixture("photo_rgb.jpg", &plen);
  char *gray = fixture("gray.jpg", &glen);
  char *big = padded_jpeg((size_t)3 << 20, &blen);
  char *huge = padded_jpeg((size_t)17 << 20, &hlen); /* over the 16 MiB cap */
  expect_int(hcmd(c, "ADD a IMAGE %b TEXT %s", photo, plen, "a photo"), 1);
  expect_int(hcmd(c, "ADD words TEXT %s", "only words"), 1);
  expect_int(hcmd(c, "ADD big IMAGE %b", big, blen), 1);
  expect_int(hcmd(c, "UPSERT u IMAGE %b SOURCE %s", gray, glen,
                  "/gone/gray.jpg"), 1);
  expect_status(hcmd(c, "MULTI"), "OK");
  expect_status(hcmd(c, "ADD m IMAGE %b", photo, plen), "QUEUED");
  expect_status(hcmd(c, "UPDATE u IMAGE %b", photo, plen), "QUEUED");
  redisReply *e = hcmd(c, "EXEC");
  assert_int_equal(e->type, REDIS_REPLY_ARRAY);
  freeReplyObject(e);
  redisReply *r = hcmd(c, "ADD huge IMAGE %b", huge, hlen);
  if (r->type != REDIS_REPLY_ERROR || !strstr(r->str, "exceeds the cap"))
    fail_msg("ADD of a 17 MiB image: type %d '%s'", r->type,
             r->str ? r->str : "");
  freeReplyObject(r);
  expect_int(hcmd(c, "EXISTS huge"), 0);
  /* an UPDATE without an image keeps the bytes */
  expect_int(hcmd(c, "UPDATE a TEXT %s", "a renamed photo"), 1);
  r = hcmd(c, "INFO db");
  assert_non_null(strstr(r->str, "keep_images:1\r\n"));
  freeReplyObject(r);
  vlm_db *db = open_ro_db(&s);
  expect_kept(db, "a", photo, plen);
  expect_kept(db, "words", NULL, 0);
  expect_kept(db, "big", big, blen);
  expect_kept(db, "u", photo, plen); /* the UPDATE's picture */
  expect_kept(db, "m", photo, plen);
  vlm_db_close(db);
  redisFree(c);
  stop_server(&s);

  /* a database that does not keep images */
  make_db_keep(&n, 0);
  vlm_db *w = NULL;
  if (vlm_db_open(n.db, NULL, &w) < 0)
    fail_msg("open: %s", vlm_errmsg());
  float v[64];
  image_vec("gray.jpg", v);
  vlm_item it = {.key = "old", .image_vec = v, .image = gray,
                 .image_len = glen};
  if (vlm_db_put(w, &it, 1, 0, NULL) < 0)
    fail_msg("put: %s", vlm_errmsg());
  vlm_db_close(w);
  start_server(&n, NULL);
  c = hconnect(n.port);
  expect_int(hcmd(c, "ADD p IMAGE %b", photo, plen), 1);
  expect_int(hcmd(c, "UPDATE old META %s", "{\"n\": 3}"), 1);
  db = open_ro_db(&n);
  expect_kept(db, "p", NULL, 0);
  expect_kept(db, "old", gray, glen);
  vlm_db_close(db);
  expect_int(hcmd(c, "UPDATE old IMAGE %b", photo, plen), 1);
  db = open_ro_db(&n);
  expect_kept(db, "old", NULL, 0);
  vlm_db_close(db);
  r = hcmd(c, "INFO db");
  assert_non_null(strstr(r->str, "keep_images:0\r\n"));
  freeReplyObject(r);
  redisFree(c);
  stop_server(&n);
  server_done(&n);

  /* reembed from the kept bytes: no item of s has an image file */
  char cmd[512];
  snprintf(cmd, sizeof cmd, "%s/vlmdb reembed --db %s --model "
           "models/default --quiet > %s/reembed.log 2>&1", build_dir(), s.db,
           s.dir);
  if (system(cmd) != 0) {
    char log[128];
    size_t ln;
    snprintf(log, sizeof log, "%s/reembed.log", s.dir);
    char *text = read_file(log, &ln);
    fail_msg("%s failed:\n%.*s", cmd, text ? (int)ln : 0, text ? text : "");
  }
  vlm_clip *nm = NULL;
  if (vlm_clip_load("models/default", NULL, &nm) < 0)
    fail_msg("models/default: %s", vlm_errmsg());
  int d = vlm_clip_dim(nm);
  db = open_ro_db(&s);
  const char *keys[3] = {"a", "big", "u"};
  const void *imgs[3] = {photo, big, photo};
  size_t lens[3] = {plen, blen, plen};
  float *want = malloc((size_t)d * sizeof *want);
  for (int i = 0; i < 3; i++) {
    vlm_record *rec = NULL;
    if (vlm_db_get(db, keys[i], &rec) < 0)
      fail_msg("get %s: %s", keys[i], vlm_errmsg());
    assert_int_equal(rec->dim, d);
    assert_non_null(rec->image_vec);
    if (vlm_clip_encode_image_buffers(nm, &imgs[i], &lens[i], 1, 0, want) < 0)
      fail_msg("encode: %s", vlm_errmsg());
    assert_vec_near(rec->image_vec, want, d, 1e-5f, keys[i]);
    vlm_record_free(rec);
    expect_kept(db, keys[i], imgs[i], lens[i]);
  }
  expect_kept(db, "words", NULL, 0);
  vlm_db_close(db);
  free(want);
  vlm_clip_free(nm);
  free(photo);
  free(gray);
  free(big);
  free(huge);
  server_done(&s);
}

/* MULTI / EXEC / DISCARD with Redis's replies, the writes of one EXEC
 * applied as one batch, all or nothing: hiredis for the edge cases,
 * redis-py's default (transactional) pipeline, and kill -9 while an EXEC
 * of 1,500 writes is in flight: after the restart all of them or none. */
static long long count_prefix(redisContext *c, const char *prefix, int n) {
  long long found = 0;
  for (int i = 0; i < n; i++) {
    redisReply *r = hcmd(c, "EXISTS %s%d", prefix, i);
    found += r->integer;
    freeReplyObject(r);
  }
  return found;
}

static void test_multi_exec(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  float *v = malloc((size_t)g_dim * sizeof(float));
  for (int i = 0; i < g_dim; i++)
    v[i] = (float)(rng() % 1000) / 1000.0f - 0.5f;
  normalize(v, g_dim);
  size_t vb = (size_t)g_dim * 4;

  /* in order, one reply per command */
  expect_status(hcmd(c, "MULTI"), "OK");
  expect_status(hcmd(c, "ADD a IMAGEVEC %b TEXT %s", v, vb, "first"), "QUEUED");
  expect_status(hcmd(c, "ADD a IMAGEVEC %b TEXT %s", v, vb, "second"),
                "QUEUED");
  expect_status(hcmd(c, "UPSERT b IMAGEVEC %b", v, vb), "QUEUED");
  expect_status(hcmd(c, "DEL b nokey"), "QUEUED");
  expect_status(hcmd(c, "UPSERT c IMAGEVEC %b TEXT %s", v, vb, "kept"),
                "QUEUED");
  redisReply *r = hcmd(c, "EXEC");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 5);
  const long long want[5] = {1, 0, 1, 1, 1};
  for (int i = 0; i < 5; i++)
    assert_int_equal(r->element[i]->integer, want[i]);
  freeReplyObject(r);
  expect_int(hcmd(c, "EXISTS a b c"), 2);
  r = hcmd(c, "GET a");
  assert_string_equal(r->element[3]->str, "first");
  freeReplyObject(r);

  /* Redis's errors */
  expect_error(hcmd(c, "EXEC"), "ERR EXEC without MULTI");
  expect_error(hcmd(c, "DISCARD"), "ERR DISCARD without MULTI");
  expect_status(hcmd(c, "MULTI"), "OK");
  expect_error(hcmd(c, "MULTI"), "ERR MULTI calls can not be nested");
  expect_status(hcmd(c, "ADD d IMAGEVEC %b", v, vb), "QUEUED");
  expect_status(hcmd(c, "DISCARD"), "OK");
  expect_int(hcmd(c, "EXISTS d"), 0);
  /* an error while queueing aborts the whole transaction */
  const char *bad[] = {"NOSUCHCOMMAND x", "ADD", "ADD e TEXTVEC short",
                       "GET a"};
  for (int b = 0; b < 4; b++) {
    expect_status(hcmd(c, "MULTI"), "OK");
    expect_status(hcmd(c, "ADD d IMAGEVEC %b", v, vb), "QUEUED");
    r = hcmd(c, bad[b]);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    expect_status(hcmd(c, "ADD e IMAGEVEC %b", v, vb), "QUEUED");
    expect_error(hcmd(c, "EXEC"), "EXECABORT Transaction discarded because "
                                  "of previous errors");
    expect_int(hcmd(c, "EXISTS d e"), 0);
  }
  /* the database refuses one write at EXEC: nothing of it is written */
  float *nan_vec = calloc((size_t)g_dim, sizeof(float)); /* zero length */
  expect_status(hcmd(c, "MULTI"), "OK");
  expect_status(hcmd(c, "ADD d IMAGEVEC %b", v, vb), "QUEUED");
  expect_status(hcmd(c, "DEL a"), "QUEUED");
  expect_status(hcmd(c, "ADD e IMAGEVEC %b", nan_vec, vb), "QUEUED");
  expect_error(hcmd(c, "EXEC"), "EXECABORT Transaction discarded, nothing "
                                "written");
  expect_int(hcmd(c, "EXISTS a d e"), 1);
  free(nan_vec);
  /* an empty transaction */
  expect_status(hcmd(c, "MULTI"), "OK");
  r = hcmd(c, "EXEC");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 0);
  freeReplyObject(r);
  /* a connection that leaves inside MULTI leaves nothing behind */
  redisContext *c2 = hconnect(s.port);
  expect_status(hcmd(c2, "MULTI"), "OK");
  expect_status(hcmd(c2, "ADD f IMAGEVEC %b", v, vb), "QUEUED");
  redisFree(c2);
  expect_int(hcmd(c, "EXISTS f"), 0);

  /* redis-py's default pipeline is a transaction */
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 -c 'import redis; r = redis.Redis(port=%d); "
           "p = r.pipeline(); p.execute_command(\"ADD\", \"py1\", \"TEXT\", "
           "\"x\", \"TEXTVEC\", bytes(%zu)); p.execute_command(\"DEL\", "
           "\"a\")\ntry:\n  print(p.execute())\nexcept Exception as e:\n"
           "  print(type(e).__name__)' 2>&1", s.port, vb);
  /* a zero vector is refused by the database: the whole batch is */
  expect_shell(cmd, "ExecAbortError\n");
  expect_int(hcmd(c, "EXISTS a py1"), 1);
  float vv[1024];
  for (int i = 0; i < g_dim; i++)
    vv[i] = v[i];
  char hex[8192];
  size_t hl = 0;
  for (size_t i = 0; i < vb; i++)
    hl += (size_t)snprintf(hex + hl, sizeof hex - hl, "%02x",
                           ((unsigned char *)vv)[i]);
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 -c 'import redis; r = redis.Redis(port=%d); "
           "v = bytes.fromhex(\"%s\"); p = r.pipeline(); "
           "p.execute_command(\"ADD\", \"py1\", \"IMAGEVEC\", v); "
           "p.execute_command(\"ADD\", \"py2\", \"IMAGEVEC\", v); "
           "p.execute_command(\"DEL\", \"a\"); print(p.execute())' 2>&1",
           s.port, hex);
  expect_shell(cmd, "[1, 1, 1]\n");
  expect_int(hcmd(c, "EXISTS a py1 py2"), 2);
  redisFree(c);
  /* a server that ran transactions shuts down cleanly, and what they
   * wrote is there after the restart */
  stop_server(&s);
  start_server(&s, NULL);
  c = hconnect(s.port);
  expect_int(hcmd(c, "EXISTS a b c d py1 py2"), 3); /* c, py1, py2 */
  redisFree(c);

  /* kill -9 with an EXEC of 1,500 writes in flight: all or nothing */
  int all = 0, none = 0;
  for (int trial = 0; trial < 8; trial++) {
    c = hconnect(s.port);
    char prefix[16];
    snprintf(prefix, sizeof prefix, "t%d-", trial);
    redisAppendCommand(c, "MULTI");
    for (int i = 0; i < 1500; i++)
      redisAppendCommand(c, "UPSERT %s%d IMAGEVEC %b", prefix, i, v, vb);
    redisAppendCommand(c, "EXEC");
    int done = 0;
    while (!done)
      assert_int_equal(redisBufferWrite(c, &done), REDIS_OK);
    sleep_ms((int)(rng() % 12));
    kill(s.pid, SIGKILL);
    int st;
    waitpid(s.pid, &st, 0);
    s.pid = 0;
    redisFree(c);
    start_server(&s, NULL);
    c = hconnect(s.port);
    long long n = count_prefix(c, prefix, 1500);
    if (n != 0 && n != 1500)
      fail_msg("trial %d: %lld of the transaction's 1,500 writes survived "
               "kill -9", trial, n);
    all += n == 1500;
    none += n == 0;
    redisFree(c);
  }
  print_message("kill -9 during EXEC: %d trials kept all 1,500 writes, %d "
                "none, none kept part\n", all, none);
  free(v);
  stop_server(&s);
  server_done(&s);
}

static void test_resp3(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  add_items(c);
  redisFree(c);
  r3_conn *rc = calloc(1, sizeof *rc);
  rc->fd = tcp_connect(s.port);
  const char *hello[] = {"HELLO", "3", "SETNAME", "r3"};
  r3 *v = r3_cmd(rc, 4, hello, NULL);
  assert_int_equal(v->type, '%');
  assert_string_equal(r3_get(v, "server")->str, "vlmdb");
  assert_int_equal(r3_get(v, "proto")->integer, 3);
  r3_free(v);
  const char *get[] = {"GET", "cat"};
  v = r3_cmd(rc, 2, get, NULL);
  assert_int_equal(v->type, '%');
  assert_string_equal(r3_get(v, "caption")->str, "a photo of a cat");
  assert_int_equal(r3_get(v, "source")->type, '_');
  r3_free(v);
  const char *getnone[] = {"GET", "nokey"};
  v = r3_cmd(rc, 2, getnone, NULL);
  assert_int_equal(v->type, '_');
  r3_free(v);

  /* SEARCH: a map of key -> {score (double), fields}. */
  float *want = malloc((size_t)g_dim * sizeof(float));
  scored o[NITEMS];
  text_vec("a photo of a cat", want);
  oracle(want, VLM_TARGET_ANY, 1000, o);
  const char *search[] = {"SEARCH", "TEXT", "a photo of a cat", "K", "3",
                          "RETURN", "2", "caption", "n"};
  v = r3_cmd(rc, 9, search, NULL);
  assert_int_equal(v->type, '%');
  assert_int_equal(v->n, 6);
  for (int i = 0; i < 3; i++) {
    r3 *hit = v->el[2 * i + 1];
    assert_int_equal(hit->type, '%');
    r3 *score = r3_get(hit, "score");
    assert_int_equal(score->type, ',');
    if (fabs(score->dbl - o[i].score) > 1e-4)
      fail_msg("hit %d: %s %.6f, oracle %s %.6f", i, v->el[2 * i]->str,
               score->dbl, o[i].key, (double)o[i].score);
    assert_int_equal(r3_get(hit, "n")->type, ':');
    assert_int_equal(r3_get(hit, "caption")->type, '$');
  }
  r3_free(v);

  /* EMBED: doubles by default in RESP3, bytes on request. */
  const char *embed[] = {"EMBED", "TEXT", "Saturn, the ringed planet"};
  v = r3_cmd(rc, 3, embed, NULL);
  assert_int_equal(v->type, '*');
  assert_int_equal(v->n, (size_t)g_dim);
  text_vec("Saturn, the ringed planet", want);
  for (int i = 0; i < g_dim; i++) {
    assert_int_equal(v->el[i]->type, ',');
    if (fabs(v->el[i]->dbl - want[i]) > 1e-5)
      fail_msg("EMBED[%d] %.7g, in-process %.7g", i, v->el[i]->dbl,
               (double)want[i]);
  }
  r3_free(v);
  const char *embedb[] = {"EMBED", "TEXT", "Saturn, the ringed planet",
                          "BYTES"};
  v = r3_cmd(rc, 4, embedb, NULL);
  assert_int_equal(v->type, '$');
  assert_int_equal(v->len, (size_t)g_dim * 4);
  assert_vec_near((const float *)v->str, want, g_dim, 1e-5f, "EMBED BYTES");
  r3_free(v);
  const char *cfg[] = {"CONFIG", "GET", "appendonly"};
  v = r3_cmd(rc, 3, cfg, NULL);
  assert_int_equal(v->type, '%');
  assert_string_equal(r3_get(v, "appendonly")->str, "no");
  r3_free(v);
  const char *bad[] = {"SEARCH", "TEXT"};
  v = r3_cmd(rc, 2, bad, NULL);
  assert_int_equal(v->type, '-');
  r3_free(v);
  /* Back to RESP2. */
  const char *hello2[] = {"HELLO", "2"};
  v = r3_cmd(rc, 2, hello2, NULL);
  assert_int_equal(v->type, '*');
  r3_free(v);
  v = r3_cmd(rc, 2, get, NULL);
  assert_int_equal(v->type, '*');
  assert_int_equal(v->n, 8);
  assert_int_equal(v->el[5]->type, '_'); /* $-1 read as null */
  r3_free(v);
  close(rc->fd);
  free(rc);
  free(want);
  stop_server(&s);
  server_done(&s);
}

static void test_auth(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  const char *pass[] = {"--requirepass", "s3cret pass", NULL};
  start_server(&s, pass);
  redisContext *c = hconnect(s.port);
  expect_error(hcmd(c, "PING"), "NOAUTH Authentication required.");
  expect_error(hcmd(c, "SEARCH TEXT x"), "NOAUTH");
  expect_error(hcmd(c, "COUNT"), "NOAUTH");
  expect_error(hcmd(c, "INFO"), "NOAUTH");
  expect_error(hcmd(c, "NOSUCH"), "ERR unknown command");
  expect_error(hcmd(c, "AUTH %s", "wrong"), "WRONGPASS");
  expect_error(hcmd(c, "AUTH %s", "s3cret pas"), "WRONGPASS");
  expect_error(hcmd(c, "AUTH %s", "s3cret passs"), "WRONGPASS");
  expect_error(hcmd(c, "AUTH %s", ""), "WRONGPASS");
  expect_error(hcmd(c, "AUTH other %s", "s3cret pass"), "WRONGPASS");
  expect_error(hcmd(c, "HELLO 3"), "NOAUTH HELLO must be called");
  expect_error(hcmd(c, "PING"), "NOAUTH");
  expect_status(hcmd(c, "AUTH %s", "s3cret pass"), "OK");
  expect_ping(c);
  expect_int(hcmd(c, "COUNT"), 0);
  redisFree(c);
  c = hconnect(s.port);
  expect_status(hcmd(c, "AUTH default %s", "s3cret pass"), "OK");
  expect_ping(c);
  redisReply *r = hcmd(c, "INFO stats");
  assert_non_null(strstr(r->str, "auth_failures:5"));
  freeReplyObject(r);
  redisFree(c);
  c = hconnect(s.port);
  expect_error(hcmd(c, "HELLO 2 AUTH default wrong"), "WRONGPASS");
  r = hcmd(c, "HELLO 2 AUTH default %s", "s3cret pass");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  freeReplyObject(r);
  expect_ping(c);
  redisFree(c);
  c = hconnect(s.port);
  expect_status(hcmd(c, "QUIT"), "OK");
  redisFree(c);
  stop_server(&s);

  /* Another address than loopback without a password: refused at start. */
  const char *open_bind[] = {"--bind", "0.0.0.0", NULL};
  int rc = spawn_server(&s, open_bind);
  assert_int_equal(rc, 1);
  size_t n;
  char *log = read_file(s.log, &n);
  assert_non_null(log);
  log[n] = '\0';
  if (!strstr(log, "refusing to listen on 0.0.0.0 without a password"))
    fail_msg("log: %s", log);
  free(log);
  const char *open_pass[] = {"--bind", "0.0.0.0", "--requirepass", "x", NULL};
  start_server(&s, open_pass);
  c = hconnect(s.port);
  expect_error(hcmd(c, "PING"), "NOAUTH");
  expect_status(hcmd(c, "AUTH x"), "OK");
  expect_ping(c);
  redisFree(c);
  stop_server(&s);
  server_done(&s);
}

/* 10,000 pipelined commands mixing loop commands with worker commands, so
 * replies finishing out of order must still come back in order. */
static void test_pipeline_10000(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  add_items(c);
  enum { N = 10000, NT = 7 };
  float *tv = malloc((size_t)NT * g_dim * sizeof(float));
  char texts[NT][32];
  for (int t = 0; t < NT; t++) {
    snprintf(texts[t], sizeof texts[t], "text number %d", t);
    text_vec(texts[t], tv + (size_t)t * g_dim);
  }
  for (int i = 0; i < N; i++) {
    const char *key = items[i % NITEMS].key;
    switch (i % 6) {
    case 0: redisAppendCommand(c, "PING"); break;
    case 1: redisAppendCommand(c, "ECHO e%d", i); break;
    case 2: redisAppendCommand(c, "EXISTS %s nokey %s", key, key); break;
    case 3: redisAppendCommand(c, "SEARCH KEY %s K 1 TARGET %s", key,
                               items[i % NITEMS].image ? "IMAGE" : "TEXT");
      break;
    case 4: redisAppendCommand(c, "EMBED TEXT %s", texts[i % NT]); break;
    case 5: redisAppendCommand(c, "NOSUCH %d", i); break;
    }
  }
  for (int i = 0; i < N; i++) {
    redisReply *r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK)
      fail_msg("reply %d: %s", i, c->errstr);
    const char *key = items[i % NITEMS].key;
    char want[32];
    switch (i % 6) {
    case 0:
      assert_int_equal(r->type, REDIS_REPLY_STATUS);
      assert_string_equal(r->str, "PONG");
      break;
    case 1:
      snprintf(want, sizeof want, "e%d", i);
      assert_string_equal(r->str, want);
      break;
    case 2:
      assert_int_equal(r->integer, 2);
      break;
    case 3:
      if (r->type != REDIS_REPLY_ARRAY || r->elements != 1)
        fail_msg("reply %d: SEARCH KEY %s: type %d", i, key, r->type);
      assert_string_equal(r->element[0]->element[0]->str, key);
      break;
    case 4:
      assert_int_equal(r->len, (size_t)g_dim * 4);
      assert_vec_near((const float *)r->str,
                      tv + (size_t)(i % NT) * g_dim, g_dim, 1e-5f, "EMBED");
      break;
    case 5:
      assert_int_equal(r->type, REDIS_REPLY_ERROR);
      snprintf(want, sizeof want, "'%d'", i);
      assert_non_null(strstr(r->str, want));
      break;
    }
    freeReplyObject(r);
  }
  expect_ping(c);
  free(tv);
  redisFree(c);
  stop_server(&s);
  server_done(&s);
}

/* Run a shell command line, capture its stdout. */
static char *run_shell(const char *cmdline) {
  FILE *p = popen(cmdline, "r");
  assert_non_null(p);
  size_t cap = 1 << 16, len = 0;
  char *out = malloc(cap);
  size_t n;
  while ((n = fread(out + len, 1, cap - len - 1, p)) > 0)
    len += n;
  out[len] = '\0';
  int status = pclose(p);
  if (status != 0)
    fail_msg("'%s' exited with %d; output: %s", cmdline, status, out);
  return out;
}

static void expect_shell(const char *cmdline, const char *want) {
  char *out = run_shell(cmdline);
  if (strcmp(out, want))
    fail_msg("%s\n  printed: '%s'\n  wanted:  '%s'", cmdline, out, want);
  free(out);
}

/* ---- the commands of one connection take effect in the order sent ---- */

static redisReply *next_reply(redisContext *c, const char *what, int round) {
  redisReply *r = NULL;
  if (redisGetReply(c, (void **)&r) != REDIS_OK)
    fail_msg("%s, round %d: %s", what, round, c->errstr);
  return r;
}

static void next_int(redisContext *c, long long want, const char *what,
                     int round) {
  redisReply *r = next_reply(c, what, round);
  if (r->type != REDIS_REPLY_INTEGER || r->integer != want)
    fail_msg("%s, round %d: reply type %d %lld '%s', wanted :%lld", what,
             round, r->type, r->integer, r->str ? r->str : "", want);
  freeReplyObject(r);
}

static void next_caption(redisContext *c, const char *want, const char *what,
                         int round) {
  redisReply *r = next_reply(c, what, round);
  redisReply *cap = r->type == REDIS_REPLY_ARRAY ? flat_get(r, "caption")
                                                 : NULL;
  if (!cap || !cap->str || strcmp(cap->str, want))
    fail_msg("%s, round %d: caption '%s' (reply type %d), wanted '%s'", what,
             round, cap && cap->str ? cap->str : "(none)", r->type, want);
  freeReplyObject(r);
}

/* One round of writes on keys named by prefix and round, each depending on
 * the one before: ADD a; DEL a; EXISTS a; UPSERT b first; UPSERT b second;
 * GET b; ADD b (exists). */
static void append_order_round(redisContext *c, const char *prefix, int i) {
  redisAppendCommand(c, "ADD %sa%d TEXT %s", prefix, i, "gone soon");
  redisAppendCommand(c, "DEL %sa%d", prefix, i);
  redisAppendCommand(c, "EXISTS %sa%d", prefix, i);
  redisAppendCommand(c, "UPSERT %sb%d TEXT first", prefix, i);
  redisAppendCommand(c, "UPSERT %sb%d TEXT second", prefix, i);
  redisAppendCommand(c, "GET %sb%d", prefix, i);
  redisAppendCommand(c, "ADD %sb%d TEXT third", prefix, i);
}

static void check_order_round(redisContext *c, int i) {
  next_int(c, 1, "ADD a", i);
  next_int(c, 1, "DEL a after ADD a", i);
  next_int(c, 0, "EXISTS a after DEL a", i);
  next_int(c, 1, "UPSERT b first", i);
  next_int(c, 1, "UPSERT b second", i);
  next_caption(c, "second", "GET b after UPSERT first, second", i);
  next_int(c, 0, "ADD b after UPSERT b", i);
}

/* What a pipeline left behind, read back one command at a time. */
static void check_order_left(redisContext *c, const char *prefix, int rounds) {
  for (int i = 0; i < rounds; i++) {
    redisAppendCommand(c, "EXISTS %sa%d", prefix, i);
    redisAppendCommand(c, "GET %sb%d", prefix, i);
    next_int(c, 0, "EXISTS a afterwards", i);
    next_caption(c, "second", "GET b afterwards", i);
  }
}

static void test_pipeline_order(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  enum { ROUNDS = 200, NCONN = 4, CONN_ROUNDS = 60 };

  /* One hiredis pipeline. */
  redisContext *c = hconnect(s.port);
  for (int i = 0; i < ROUNDS; i++)
    append_order_round(c, "h", i);
  for (int i = 0; i < ROUNDS; i++)
    check_order_round(c, i);
  check_order_left(c, "h", ROUNDS);
  expect_int(hcmd(c, "COUNT"), ROUNDS);

  /* redis-cli --pipe: the raw protocol from a file, as a bulk load does. */
  char path[600], cmdline[1400];
  snprintf(path, sizeof path, "%s/pipe.txt", s.dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  for (int i = 0; i < ROUNDS; i++) {
    char key[32];
    snprintf(key, sizeof key, "pa%d", i);
    const char *add[] = {"ADD", key, "TEXT", "gone soon"};
    const char *del[] = {"DEL", key};
    char buf[256];
    fwrite(buf, 1, encode_cmd(buf, 4, add, NULL), f);
    fwrite(buf, 1, encode_cmd(buf, 2, del, NULL), f);
    snprintf(key, sizeof key, "pb%d", i);
    const char *first[] = {"UPSERT", key, "TEXT", "first"};
    const char *second[] = {"UPSERT", key, "TEXT", "second"};
    fwrite(buf, 1, encode_cmd(buf, 4, first, NULL), f);
    fwrite(buf, 1, encode_cmd(buf, 4, second, NULL), f);
  }
  fclose(f);
  /* (--pipe gives up after 30 s without a reply by default: 800 durable
   * writes under ASan on a slow disk can take that long) */
  snprintf(cmdline, sizeof cmdline,
           "redis-cli -p %d --pipe --pipe-timeout 300 < %s 2>&1", s.port,
           path);
  char *out = run_shell(cmdline);
  char want[64];
  snprintf(want, sizeof want, "errors: 0, replies: %d", 4 * ROUNDS);
  if (!strstr(out, want))
    fail_msg("redis-cli --pipe printed '%s', wanted '%s'", out, want);
  free(out);
  check_order_left(c, "p", ROUNDS);
  expect_int(hcmd(c, "COUNT"), 2 * ROUNDS);

  /* Several connections at once, each pipelining its own keys, their
   * requests interleaved on the server. */
  redisContext *cs[NCONN];
  char prefix[NCONN][8];
  for (int k = 0; k < NCONN; k++) {
    cs[k] = hconnect(s.port);
    snprintf(prefix[k], sizeof prefix[k], "c%d", k);
  }
  for (int i = 0; i < CONN_ROUNDS; i++)
    for (int k = 0; k < NCONN; k++)
      append_order_round(cs[k], prefix[k], i);
  for (int k = 0; k < NCONN; k++) {
    int done = 0;
    while (!done) /* send everything before reading anything */
      assert_int_equal(redisBufferWrite(cs[k], &done), REDIS_OK);
  }
  for (int k = 0; k < NCONN; k++)
    for (int i = 0; i < CONN_ROUNDS; i++)
      check_order_round(cs[k], i);
  for (int k = 0; k < NCONN; k++) {
    check_order_left(cs[k], prefix[k], CONN_ROUNDS);
    redisFree(cs[k]);
  }
  expect_int(hcmd(c, "COUNT"), 2 * ROUNDS + NCONN * CONN_ROUNDS);
  expect_ping(c);
  redisFree(c);
  stop_server(&s);
  server_done(&s);
}

/* Reads that need no embedding run on the loop thread itself when the
 * workers are idle (INFO's inline_commands_processed counts them): the
 * same answers as through the workers, alone, pipelined, after a write of
 * the same connection, and never with --inline-max-us 0. */
static long info_field(redisContext *c, const char *section,
                       const char *name);

static void inline_round(redisContext *c, const char *const *texts, int nt,
                         scored *o) {
  float *q = malloc((size_t)g_dim * sizeof(float));
  for (int rep = 0; rep < 5; rep++)
    for (int t = 0; t < nt; t++) {
      text_vec(texts[t], q);
      oracle(q, VLM_TARGET_ANY, 1000, o);
      redisReply *r = hcmd(c, "SEARCH VECTOR %b K 4", q, (size_t)g_dim * 4);
      assert_search_matches(r, o, 4);
      freeReplyObject(r);
    }
  /* a pipeline: all but the last wait in the buffer, so go to workers */
  for (int t = 0; t < nt; t++) {
    text_vec(texts[t], q);
    redisAppendCommand(c, "SEARCH VECTOR %b K 4", q, (size_t)g_dim * 4);
  }
  for (int t = 0; t < nt; t++) {
    redisReply *r;
    assert_int_equal(redisGetReply(c, (void **)&r), REDIS_OK);
    text_vec(texts[t], q);
    oracle(q, VLM_TARGET_ANY, 1000, o);
    assert_search_matches(r, o, 4);
    freeReplyObject(r);
  }
  /* a write then a read of the same connection, sent together: the read
   * sees the write */
  for (int i = 0; i < g_dim; i++)
    q[i] = (float)((i * 7919) % 13) - 6.0f;
  redisAppendCommand(c, "UPSERT inl IMAGEVEC %b", q, (size_t)g_dim * 4);
  redisAppendCommand(c, "SEARCH VECTOR %b K 1", q, (size_t)g_dim * 4);
  redisReply *r;
  assert_int_equal(redisGetReply(c, (void **)&r), REDIS_OK);
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  freeReplyObject(r);
  assert_int_equal(redisGetReply(c, (void **)&r), REDIS_OK);
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, 1);
  assert_string_equal(r->element[0]->element[0]->str, "inl");
  freeReplyObject(r);
  expect_int(hcmd(c, "DEL inl"), 1);
  free(q);
}

static void test_inline_reads(void **state) {
  (void)state;
  static const char *const texts[] = {"a photo of a dog", "a red car",
                                      "flowers in a field"};
  const int nt = 3;
  scored *o = malloc(NITEMS * sizeof *o);
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  add_items(c);
  inline_round(c, texts, nt, o);
  /* 15 lone searches: the first is measured on a worker, the rest may
   * run inline (a contended moment sends some to the workers) */
  long n = info_field(c, "stats", "inline_commands_processed");
  if (n < 5)
    fail_msg("only %ld of 15 lone searches ran on the loop", n);
  redisFree(c);
  stop_server(&s);

  static const char *const off[] = {"--inline-max-us", "0", NULL};
  start_server(&s, off);
  c = hconnect(s.port);
  inline_round(c, texts, nt, o);
  assert_int_equal(info_field(c, "stats", "inline_commands_processed"), 0);
  redisFree(c);
  stop_server(&s);
  server_done(&s);
  free(o);
}

/* redis-cli's interactive mode on a pseudo-terminal: it fetches COMMAND
 * DOCS for its help at start, as a user at a terminal would see. */
static char *redis_cli_interactive(int port, const char *const *lines) {
  int fd;
  pid_t pid = forkpty(&fd, NULL, NULL, NULL);
  assert_true(pid >= 0);
  if (pid == 0) {
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    execlp("redis-cli", "redis-cli", "-p", p, (char *)NULL);
    _exit(127);
  }
  size_t cap = 1 << 20, len = 0;
  char *out = malloc(cap);
  int next = 0;
  double deadline = now_s() + 20, quiet_since = now_s();
  while (now_s() < deadline) {
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, 50) > 0) {
      ssize_t n = read(fd, out + len, cap - len - 1);
      if (n <= 0)
        break;
      /* linenoise asks where the cursor is: answer like a terminal. */
      for (ssize_t i = 0; i + 3 < n; i++)
        if (!memcmp(out + len + i, "\x1b[6n", 4) &&
            write(fd, "\x1b[1;1R", 6) != 6)
          break;
      len += (size_t)n;
      quiet_since = now_s();
    } else if (now_s() - quiet_since > 0.3) {
      const char *line = lines[next] ? lines[next] : "quit";
      if (write(fd, line, strlen(line)) < 0 || write(fd, "\r", 1) < 0)
        break;
      if (!lines[next])
        break;
      next++;
      quiet_since = now_s();
    }
  }
  out[len] = '\0';
  int status;
  for (int i = 0; i < 300 && waitpid(pid, &status, WNOHANG) == 0; i++)
    sleep_ms(10);
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  close(fd);
  return out;
}

static void test_redis_cli(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  char cmd[1024], want[256];
#define CLI(fmt, ...) (snprintf(cmd, sizeof cmd, "redis-cli -p %d " fmt, \
                                s.port, ##__VA_ARGS__), cmd)
  expect_shell(CLI("PING"), "PONG\n");
  expect_shell(CLI("ADD cat TEXT 'a photo of a cat' META '{\"n\":1,\"cat\":"
                   "\"animal\"}'"), "1\n");
  expect_shell(CLI("-x ADD car IMAGE < %s/rgb.png", MODEL_DIR), "1\n");
  expect_shell(CLI("COUNT"), "2\n");
  expect_shell(CLI("--no-raw COUNT"), "(integer) 2\n");
  char *out = run_shell(CLI("SEARCH TEXT 'a photo of a cat' K 1 RETURN 2 "
                            "caption n"));
  if (strncmp(out, "cat\n", 4) || !strstr(out, "\ncaption\na photo of a cat\n"
                                                "n\n1\n"))
    fail_msg("SEARCH printed '%s'", out);
  free(out);
  out = run_shell(CLI("-x SEARCH IMAGE < %s/rgb.png", MODEL_DIR));
  if (strncmp(out, "car\n", 4))
    fail_msg("SEARCH IMAGE printed '%s'", out);
  free(out);
  expect_shell(CLI("GET cat"), "key\ncat\ncaption\na photo of a cat\nsource"
                               "\n\nmeta\n{\"n\":1,\"cat\":\"animal\"}\n");
  expect_shell(CLI("NOSUCH thing"), "ERR unknown command 'NOSUCH', with args "
                                    "beginning with: 'thing' \n\n");
  expect_shell(CLI("ECHO"), "ERR wrong number of arguments for 'echo' "
                            "command\n\n");
  snprintf(want, sizeof want, "printf 'PING\\nECHO hi\\nDEL car\\nCOUNT\\n' | "
           "redis-cli -p %d", s.port);
  expect_shell(want, "PONG\nhi\n1\n1\n");
  out = run_shell(CLI("-3 HELLO 3"));
  if (!strstr(out, "proto 3\n"))
    fail_msg("HELLO 3 printed '%s'", out);
  free(out);
  out = run_shell(CLI("INFO server"));
  snprintf(want, sizeof want, "tcp_port:%d", s.port);
  if (!strstr(out, "vlmdb_version:") || !strstr(out, want))
    fail_msg("INFO printed '%s'", out);
  free(out);
  const char *lines[] = {"help search", "ping", "count", NULL};
  out = redis_cli_interactive(s.port, lines);
  if (!strstr(out, "k nearest items") || !strstr(out, "PONG") ||
      !strstr(out, "(integer) 1") || !strstr(out, "[K k]") ||
      !strstr(out, "[FILTER expr]"))
    fail_msg("interactive redis-cli printed '%s'", out);
  free(out);
  stop_server(&s);
  const char *pass[] = {"--requirepass", "pw", NULL};
  start_server(&s, pass);
  expect_shell(CLI("PING"), "NOAUTH Authentication required.\n\n");
  expect_shell(CLI("-a pw --no-auth-warning PING"), "PONG\n");
  expect_shell(CLI("-a pw --no-auth-warning -3 COUNT"), "1\n");
#undef CLI
  stop_server(&s);
  server_done(&s);
}

static long info_field(redisContext *c, const char *section,
                       const char *field) {
  redisReply *r = hcmd(c, "INFO %s", section);
  char *p = strstr(r->str, field);
  long v = p ? strtol(p + strlen(field) + 1, NULL, 10) : -1;
  freeReplyObject(r);
  return v;
}

/* ---- hostile input ---- */

/* Send raw bytes on a new connection, read until the server closes it,
 * and check what it answered. */
static void expect_raw_close(int port, const char *data, size_t len,
                             const char *want_prefix) {
  if (len == 0)
    len = strlen(data);
  int fd = tcp_connect(port);
  assert_int_equal(send_all(fd, data, len), 0);
  char buf[4096];
  int closed;
  size_t n = read_to_eof(fd, buf, sizeof buf - 1, &closed);
  buf[n] = '\0';
  close(fd);
  if (!closed || strncmp(buf, want_prefix, strlen(want_prefix)))
    fail_msg("sent '%.40s': got '%s' (closed %d), want '%s...' then close",
             data, buf, closed, want_prefix);
}

/* Read exactly len reply bytes. */
static void recv_exact(int fd, char *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = recv(fd, buf + got, len - got, 0);
    if (n <= 0)
      fail_msg("recv after %zu of %zu bytes: %s", got, len,
               n == 0 ? "closed" : strerror(errno));
    got += (size_t)n;
  }
}

/* What monitoring tools and client libraries read: INFO's used_memory,
 * blocked_clients and # Keyspace, redis-cli --stat, and every field of
 * CLIENT INFO / LIST that redis-py's client_info() indexes. */
static void test_client_tools(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  redisReply *r;
  for (int i = 0; i < 3; i++) {
    r = hcmd(c, "ADD k%d TEXT %s", i, "a cat on a sofa");
    freeReplyObject(r);
  }
  r = hcmd(c, "INFO");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  const char *must[] = {"\r\nused_memory:", "\r\nused_memory_human:",
                        "\r\nused_memory_peak:", "\r\nblocked_clients:0\r\n",
                        "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0",
                        "\r\nmaxmemory:0\r\n"};
  for (size_t i = 0; i < sizeof must / sizeof must[0]; i++)
    if (!strstr(r->str, must[i]))
      fail_msg("INFO lacks '%s':\n%s", must[i], r->str);
  long long used = atoll(strstr(r->str, "\r\nused_memory:") + 14);
  assert_true(used > 0);
  freeReplyObject(r);
  r = hcmd(c, "INFO keyspace");
  assert_string_equal(r->str, "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n");
  freeReplyObject(r);
  r = hcmd(c, "CLIENT INFO");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  const char *fields[] = {"id=",    " addr=", " laddr=",    " fd=",
                          " name=", " age=",  " idle=",     " flags=",
                          " db=0",  " sub=0", " psub=0",    " multi=-1",
                          " qbuf=", " qbuf-free=", " argv-mem=", " obl=",
                          " oll=",  " omem=", " tot-mem=",  " cmd=",
                          " user=", " resp=2"};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (!strstr(r->str, fields[i]))
      fail_msg("CLIENT INFO lacks '%s': %s", fields[i], r->str);
  freeReplyObject(r);
  redisFree(c);

  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 -c 'import redis; r = redis.Redis(port=%d); "
           "i = r.client_info(); l = r.client_list(); "
           "print(i[\"db\"], i[\"multi\"], i[\"tot-mem\"] >= 0, len(l), "
           "r.info(\"keyspace\")[\"db0\"][\"keys\"], "
           "r.info(\"memory\")[\"used_memory\"] > 0)' 2>&1", s.port);
  expect_shell(cmd, "0 -1 True 1 3 True\n");
  /* --stat prints a line a second: keys, memory, clients, blocked */
  snprintf(cmd, sizeof cmd, "timeout 2.5 stdbuf -o0 redis-cli -p %d --stat "
           "-i 1 2>&1; test $? = 124", s.port);
  char *out = run_shell(cmd);
  const char *line = strstr(out, "\n3 ");
  if (!strstr(out, "keys") || !line || !strstr(line, " 0 "))
    fail_msg("redis-cli --stat printed:\n%s", out);
  free(out);
  stop_server(&s);
  server_done(&s);
}

/* SCAN walks the item keys: a key that lives through the whole walk comes
 * back exactly once though items are added and deleted between calls;
 * MATCH agrees with a naive glob; redis-cli --scan and redis-py's
 * scan_iter walk it too; TYPE says "item" or "none". */
static void test_scan(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  enum { N = 300 };
  for (int i = 0; i < N; i++)
    freeReplyObject(hcmd(c, "ADD k:%d TEXT %s", i, "x"));
  int seen[N] = {0};
  unsigned long long cursor = 0;
  int calls = 0, added = 0;
  do {
    redisReply *r = hcmd(c, "SCAN %llu COUNT 7", cursor);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 2);
    cursor = strtoull(r->element[0]->str, NULL, 10);
    for (size_t i = 0; i < r->element[1]->elements; i++) {
      const char *k = r->element[1]->element[i]->str;
      if (!strncmp(k, "k:", 2))
        seen[atoi(k + 2)]++;
    }
    freeReplyObject(r);
    /* meanwhile: delete the multiples of 10 above 150, add new keys */
    if (calls == 5)
      for (int i = 160; i < N; i += 10)
        freeReplyObject(hcmd(c, "DEL k:%d", i));
    freeReplyObject(hcmd(c, "ADD new:%d TEXT %s", added++, "y"));
    assert_true(++calls < 1000);
  } while (cursor != 0);
  for (int i = 0; i < N; i++)
    if (!(i >= 160 && i % 10 == 0) && seen[i] != 1)
      fail_msg("k:%d came back %d times", i, seen[i]);
  /* MATCH, against fnmatch over the full key list */
  const char *patterns[] = {"k:1*", "k:?5", "k:[12]0", "new:*", "*:9", "zz*"};
  for (size_t p = 0; p < sizeof patterns / sizeof patterns[0]; p++) {
    int got = 0, want = 0;
    cursor = 0;
    do {
      redisReply *r = hcmd(c, "SCAN %llu MATCH %s COUNT 50", cursor,
                           patterns[p]);
      cursor = strtoull(r->element[0]->str, NULL, 10);
      for (size_t i = 0; i < r->element[1]->elements; i++) {
        assert_int_equal(fnmatch(patterns[p], r->element[1]->element[i]->str, 0),
                         0);
        got++;
      }
      freeReplyObject(r);
    } while (cursor != 0);
    redisReply *all = hcmd(c, "SCAN 0 COUNT 100000");
    assert_string_equal(all->element[0]->str, "0");
    for (size_t i = 0; i < all->element[1]->elements; i++)
      want += fnmatch(patterns[p], all->element[1]->element[i]->str, 0) == 0;
    freeReplyObject(all);
    if (got != want)
      fail_msg("SCAN MATCH %s: %d keys, a naive glob finds %d", patterns[p],
               got, want);
  }
  expect_error(hcmd(c, "SCAN -1"), "ERR invalid cursor");
  expect_error(hcmd(c, "SCAN x"), "ERR invalid cursor");
  expect_error(hcmd(c, "SCAN 0 COUNT 0"), "ERR COUNT must be");
  redisReply *r = hcmd(c, "SCAN 0 TYPE string COUNT 1000");
  assert_int_equal(r->element[1]->elements, 0);
  freeReplyObject(r);
  r = hcmd(c, "TYPE k:1");
  assert_string_equal(r->str, "item");
  freeReplyObject(r);
  r = hcmd(c, "TYPE nope");
  assert_string_equal(r->str, "none");
  freeReplyObject(r);
  long long total = 0;
  r = hcmd(c, "COUNT");
  total = r->integer;
  freeReplyObject(r);
  redisFree(c);
  char cmd[512], want[64];
  snprintf(cmd, sizeof cmd, "redis-cli -p %d --scan | wc -l", s.port);
  snprintf(want, sizeof want, "%lld\n", total);
  expect_shell(cmd, want);
  snprintf(cmd, sizeof cmd, "redis-cli -p %d --scan --pattern 'new:*' | wc -l",
           s.port);
  snprintf(want, sizeof want, "%d\n", added);
  expect_shell(cmd, want);
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 -c 'import redis; r = redis.Redis(port=%d); "
           "print(len(set(r.scan_iter(count=11))), r.type(\"k:2\"))' 2>&1",
           s.port);
  snprintf(want, sizeof want, "%lld b'item'\n", total);
  expect_shell(cmd, want);
  stop_server(&s);
  server_done(&s);
}

/* How far above its baseline the server's RSS may stay once a test's
 * connections are gone.  Plain builds: a few MiB of allocator caches and
 * fragmentation.  Under ASan and TSan the sanitizer's allocator keeps
 * freed memory in quarantine and its shadow pages stay mapped, so RSS
 * cannot come back the same way; there the bound still catches a leak per
 * connection or per request (10,000 of them), but not a small drift. */
static long rss_tolerance_kb(long plain_kb) {
  const char *b = build_dir();
  if (getenv("VLM_TSAN") || strstr(b, "asan") || strstr(b, "tsan"))
    return 64 * 1024;
  return plain_kb;
}

static long settle_rss(pid_t pid) {
  sleep_ms(2500); /* the server trims freed memory once a second */
  return rss_kb(pid);
}

static void test_hostile_input(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  const char *opts[] = {"--max-request-bytes", "8M", "--max-output-bytes",
                        "4M", NULL};
  start_server(&s, opts);
  redisContext *watch = hconnect(s.port);
  add_items(watch);
  /* Warm up every path once, then take the baseline. */
  char *big = malloc(8 << 20);
  memset(big, 'x', 8 << 20);
  redisReply *r = hcmd(watch, "ECHO %b", big, (size_t)(1 << 20));
  assert_int_equal(r->len, 1 << 20);
  freeReplyObject(r);
  freeReplyObject(hcmd(watch, "SEARCH TEXT %s K 3", "warm up"));
  long base = settle_rss(s.pid);

  /* Negative and huge lengths. */
  int fd = tcp_connect(s.port);
  const char *empty = "*-1\r\n*0\r\n*1\r\n$4\r\nPING\r\n";
  assert_int_equal(send_all(fd, empty, strlen(empty)), 0);
  char buf[256];
  recv_exact(fd, buf, 7);
  assert_memory_equal(buf, "+PONG\r\n", 7);
  close(fd);
  expect_raw_close(s.port, "*1\r\n$-5\r\n", 0,
                   "-ERR Protocol error: invalid bulk length");
  expect_raw_close(s.port, "*99999999999\r\n", 0,
                   "-ERR Protocol error: invalid multibulk length");
  expect_raw_close(s.port, "*-99999999999999999999\r\n", 0,
                   "-ERR Protocol error: invalid multibulk length");
  expect_raw_close(s.port, "*1234567890123456789012345678901234567890", 0,
                   "-ERR Protocol error: too big mbulk count string");
  expect_raw_close(s.port, "*1\r\n$2147483648\r\n", 0,
                   "-ERR Protocol error: invalid bulk length");
  expect_raw_close(s.port, "*1\r\n$9223372036854775807\r\n", 0,
                   "-ERR Protocol error: invalid bulk length");
  expect_raw_close(s.port, "*2\r\n$4\r\nECHO\r\n$8388609\r\n", 0,
                   "-ERR Protocol error: invalid bulk length");
  expect_ping(watch);

  /* A client that shuts down its sending side after its requests (as
   * `printf ... | nc -N` does) still gets every reply, then EOF. */
  fd = tcp_connect(s.port);
  const char *half = "EMBED TEXT half-closed\r\nPING\r\n";
  assert_int_equal(send_all(fd, half, strlen(half)), 0);
  shutdown(fd, SHUT_WR);
  {
    char got[1024], want[32];
    int closed;
    size_t n = read_to_eof(fd, got, sizeof got, &closed);
    int hl = snprintf(want, sizeof want, "$%d\r\n", g_dim * 4);
    if (!closed || n != (size_t)hl + (size_t)g_dim * 4 + 2 + 7 ||
        memcmp(got, want, (size_t)hl) || memcmp(got + n - 7, "+PONG\r\n", 7))
      fail_msg("half-closed client: %zu bytes, closed %d", n, closed);
  }
  close(fd);

  /* Binary garbage. */
  for (int i = 0; i < 200; i++) {
    char junk[4096];
    size_t jl = 1 + rng() % sizeof junk;
    for (size_t j = 0; j < jl; j++)
      junk[j] = (char)rng();
    if (i % 2)
      junk[0] = '*';
    fd = tcp_connect(s.port);
    send_all(fd, junk, jl);
    shutdown(fd, SHUT_WR);
    int closed;
    char sink[65536];
    read_to_eof(fd, sink, sizeof sink, &closed);
    assert_true(closed);
    close(fd);
  }
  expect_ping(watch);
  assert_alive(&s);

  /* Partial frames: split at every byte, the replies are the same as for
   * the frames sent whole. */
  char frames[2048];
  size_t flen = 0;
  const char *f1[] = {"PING"};
  const char *f2[] = {"ECHO", "bin\0ary\r\n"};
  size_t f2l[] = {4, 10};
  const char *f3[] = {"EXISTS", "cat", "nokey"};
  const char *f4[] = {"SEARCH", "KEY", "fox", "K", "2"};
  const char *f5[] = {"EMBED", "TEXT", "split"};
  flen += encode_cmd(frames + flen, 1, f1, NULL);
  flen += encode_cmd(frames + flen, 2, f2, f2l);
  flen += encode_cmd(frames + flen, 3, f3, NULL);
  flen += encode_cmd(frames + flen, 5, f4, NULL);
  flen += encode_cmd(frames + flen, 3, f5, NULL);
  memcpy(frames + flen, "ECHO \"in line\"\r\n", 16);
  flen += 16;
  fd = tcp_connect(s.port);
  assert_int_equal(send_all(fd, frames, flen), 0);
  r3_conn *rc = calloc(1, sizeof *rc);
  rc->fd = fd;
  char *oracle_reply = malloc(1 << 16);
  rc->tap = oracle_reply;
  for (int i = 0; i < 6; i++) {
    r3 *v = r3_read(rc);
    assert_non_null(v);
    assert_int_not_equal(v->type, '-');
    r3_free(v);
  }
  size_t rlen = rc->tap_len;
  assert_int_equal(rc->len, rc->pos); /* nothing more came */
  close(fd);
  char *got = malloc(rlen);
  fd = tcp_connect(s.port);
  for (size_t i = 0; i < flen; i++) {
    assert_int_equal(send_all(fd, frames + i, 1), 0);
    usleep(300);
  }
  recv_exact(fd, got, rlen);
  assert_memory_equal(got, oracle_reply, rlen);
  for (size_t cut = 1; cut < flen; cut++) {
    assert_int_equal(send_all(fd, frames, cut), 0);
    usleep(1000);
    assert_int_equal(send_all(fd, frames + cut, flen - cut), 0);
    recv_exact(fd, got, rlen);
    if (memcmp(got, oracle_reply, rlen))
      fail_msg("replies differ when the frames are cut at byte %zu", cut);
  }
  close(fd);
  free(got);
  free(oracle_reply);
  free(rc);
  expect_ping(watch);

  /* Disconnect mid-request and mid-reply. */
  for (int i = 0; i < 20; i++) {
    fd = tcp_connect(s.port);
    char head[64];
    int hl = sprintf(head, "*2\r\n$4\r\nECHO\r\n$%d\r\n", 4 << 20);
    send_all(fd, head, (size_t)hl);
    send_all(fd, big, (size_t)(1 + rng() % (2 << 20)));
    close(fd);
  }
  expect_ping(watch);
  for (int i = 0; i < 10; i++) {
    fd = tcp_connect(s.port);
    for (int j = 0; j < 8; j++) {
      char head[64];
      int hl = sprintf(head, "*2\r\n$4\r\nECHO\r\n$%d\r\n", 1 << 20);
      send_all(fd, head, (size_t)hl);
      send_all(fd, big, 1 << 20);
      send_all(fd, "\r\n", 2);
    }
    const char *q[] = {"SEARCH", "TEXT", "gone before the reply"};
    char req[128];
    size_t ql = encode_cmd(req, 3, q, NULL);
    for (int j = 0; j < 20; j++)
      send_all(fd, req, ql);
    char one[100];
    recv(fd, one, sizeof one, 0); /* some of the reply, then vanish */
    close(fd);
  }
  expect_ping(watch);
  assert_alive(&s);

  /* A slow reader: requests keep coming, replies are never read; past
   * --max-output-bytes the server disconnects it. */
  long slow_before = info_field(watch, "stats", "slow_reader_disconnects");
  fd = tcp_connect(s.port);
  struct timeval tv = {2, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int sent = 0, cut_off = 0;
  for (; sent < 400 && !cut_off; sent++) {
    char head[64];
    int hl = sprintf(head, "*2\r\n$4\r\nECHO\r\n$%d\r\n", 512 << 10);
    if (send_all(fd, head, (size_t)hl) < 0 ||
        send_all(fd, big, 512 << 10) < 0 || send_all(fd, "\r\n", 2) < 0)
      cut_off = 1;
    if (sent % 16 == 0)
      expect_ping(watch); /* the others are served meanwhile */
  }
  close(fd);
  if (!cut_off)
    fail_msg("a client that never reads was not disconnected after %d "
             "requests of 512 KiB", sent);
  assert_int_equal(info_field(watch, "stats", "slow_reader_disconnects"),
                   slow_before + 1);
  expect_ping(watch);
  assert_alive(&s);

  long after = settle_rss(s.pid);
  /* The transient peaks above were tens of MiB. */
  print_message("    RSS baseline %ld kB, after hostile input %ld kB\n", base,
                after);
  if (after > base + rss_tolerance_kb(12 * 1024))
    fail_msg("RSS %ld kB after hostile input, baseline %ld kB", after, base);
  free(big);
  redisFree(watch);
  stop_server(&s);
  server_done(&s);
}

static void raise_fd_limit(rlim_t want) {
  struct rlimit rl;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur >= want)
    return;
  rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur < want)
    fail_msg("RLIMIT_NOFILE hard limit %lu < %lu", (unsigned long)rl.rlim_max,
             (unsigned long)want);
}

static void test_many_connections(void **state) {
  (void)state;
  enum { NCONN = 1000, CYCLES = 10000 };
  raise_fd_limit(NCONN + 200); /* the server inherits it */
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *watch = hconnect(s.port);
  for (int i = 0; i < 50; i++)
    close(tcp_connect(s.port));
  long base = settle_rss(s.pid);
  int *fds = malloc(NCONN * sizeof *fds);
  for (int i = 0; i < NCONN; i++)
    fds[i] = tcp_connect(s.port);
  for (int i = 0; i < NCONN; i++)
    assert_int_equal(send_all(fds[i], "PING\r\n", 6), 0);
  for (int i = 0; i < NCONN; i++) {
    char buf[8];
    recv_exact(fds[i], buf, 7);
    assert_memory_equal(buf, "+PONG\r\n", 7);
  }
  expect_ping(watch);
  assert_int_equal(info_field(watch, "clients", "connected_clients"),
                   NCONN + 1);
  for (int i = 0; i < NCONN; i++)
    close(fds[i]);
  free(fds);
  for (int i = 0; i < CYCLES; i++) {
    int fd = tcp_connect(s.port);
    if (i % 2) {
      char buf[8];
      assert_int_equal(send_all(fd, "*1\r\n$4\r\nPING\r\n", 14), 0);
      recv_exact(fd, buf, 7);
    }
    close(fd);
    if (i % 1000 == 0)
      expect_ping(watch);
  }
  expect_ping(watch);
  long clients = 0;
  for (int i = 0; i < 500; i++) {
    clients = info_field(watch, "clients", "connected_clients");
    if (clients == 1)
      break;
    sleep_ms(10);
  }
  assert_int_equal(clients, 1);
  assert_true(info_field(watch, "stats", "total_connections_received") >=
              NCONN + CYCLES);
  long after = settle_rss(s.pid);
  print_message("    RSS baseline %ld kB, after %d connections %ld kB\n", base,
                NCONN + CYCLES, after);
  if (after > base + rss_tolerance_kb(8 * 1024))
    fail_msg("RSS %ld kB after the connections, baseline %ld kB", after, base);
  redisFree(watch);
  stop_server(&s);
  server_done(&s);
}

static void test_server_limits(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  const char *opts[] = {"--maxclients", "5", "--max-request-bytes", "65536",
                        "--timeout", "1", NULL};
  start_server(&s, opts);
  /* maxclients: the sixth connection is told and closed. */
  redisContext *c[5];
  for (int i = 0; i < 5; i++) {
    c[i] = hconnect(s.port);
    expect_ping(c[i]);
  }
  expect_raw_close(s.port, "PING\r\n", 0,
                   "-ERR max number of clients reached\r\n");
  redisFree(c[4]);
  for (int i = 0; i < 4; i++)
    redisFree(c[i]);
  /* Closed connections free their slots (the server sees the close a
   * moment later). */
  redisContext *h = NULL;
  for (int i = 0; i < 200 && !h; i++) {
    h = hconnect(s.port);
    redisReply *r = redisCommand(h, "PING");
    if (!r || r->type != REDIS_REPLY_STATUS) {
      redisFree(h);
      h = NULL;
      sleep_ms(10);
    }
    if (r)
      freeReplyObject(r);
  }
  assert_non_null(h);
  /* Request size. */
  char *big = malloc(70000);
  memset(big, 'y', 70000);
  redisReply *r = hcmd(h, "ECHO %b", big, (size_t)60000);
  assert_int_equal(r->len, 60000);
  freeReplyObject(r);
  redisFree(h);
  char head[64];
  int hl = sprintf(head, "*2\r\n$4\r\nECHO\r\n$%d\r\n", 65537);
  expect_raw_close(s.port, head, (size_t)hl,
                   "-ERR Protocol error: invalid bulk length");
  expect_raw_close(s.port, big, 70000,
                   "-ERR Protocol error: too big inline request");
  /* Idle timeout: an idle client is closed, a busy one is not. */
  int idle = tcp_connect(s.port);
  h = hconnect(s.port);
  double t0 = now_s();
  while (now_s() - t0 < 3.5) {
    expect_ping(h);
    sleep_ms(200);
  }
  int closed;
  char buf[16];
  struct timeval tv = {3, 0};
  setsockopt(idle, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  size_t n = read_to_eof(idle, buf, sizeof buf, &closed);
  assert_int_equal(n, 0);
  assert_true(closed);
  close(idle);
  assert_true(info_field(h, "stats", "idle_timeouts") >= 1);
  redisFree(h);
  free(big);
  stop_server(&s);
  server_done(&s);
}

/* SIGTERM with requests in flight: every request received is answered,
 * the writes are durable, the exit is clean. */
static void test_graceful_shutdown(void **state) {
  (void)state;
  enum { N = 300 };
  server_t s;
  make_db(&s);
  const char *opts[] = {"--threads", "1", NULL};
  start_server(&s, opts);
  redisContext *watch = hconnect(s.port);
  long before = info_field(watch, "stats", "total_commands_processed");
  int fd = tcp_connect(s.port);
  char *req = malloc(N * 128 + 64);
  size_t len = 0;
  for (int i = 0; i < N; i++) {
    char key[32], text[64];
    snprintf(key, sizeof key, "k%d", i);
    snprintf(text, sizeof text, "caption number %d", i);
    const char *argv[] = {"ADD", key, "TEXT", text};
    len += encode_cmd(req + len, 4, argv, NULL);
  }
  len += encode_cmd(req + len, 1, (const char *[]){"PING"}, NULL);
  assert_int_equal(send_all(fd, req, len), 0);
  /* Wait until the server has read them all (INFO counts itself). */
  for (int i = 0; i < 2000; i++) {
    if (info_field(watch, "stats", "total_commands_processed") >=
        before + N + 1 + i + 1)
      break;
    sleep_ms(5);
  }
  kill(s.pid, SIGTERM);
  r3_conn *rc = calloc(1, sizeof *rc);
  rc->fd = fd;
  for (int i = 0; i < N; i++) {
    r3 *v = r3_read(rc);
    if (!v)
      fail_msg("reply %d of %d missing after SIGTERM", i, N);
    if (v->type != ':' || v->integer != 1)
      fail_msg("reply %d: type %c '%s'", i, v->type, v->str ? v->str : "");
    r3_free(v);
  }
  r3 *v = r3_read(rc);
  assert_non_null(v);
  assert_int_equal(v->type, '+');
  r3_free(v);
  assert_null(r3_read(rc)); /* then the server closes */
  close(fd);
  free(rc);
  free(req);
  redisFree(watch);
  stop_server(&s); /* waits for exit status 0 */
  start_server(&s, NULL);
  watch = hconnect(s.port);
  expect_int(hcmd(watch, "COUNT"), N);
  redisFree(watch);
  stop_server(&s);
  server_done(&s);
}

/* Embeddings from many clients at once are batched, and every client gets
 * its own vector; with batching off there are no batches. */
static void run_batch_clients(int port, int nclients, int per_client,
                              const float *tv, const char (*texts)[32],
                              int ntexts) {
  int *fds = malloc((size_t)nclients * sizeof *fds);
  for (int cidx = 0; cidx < nclients; cidx++) {
    fds[cidx] = tcp_connect(port);
    char req[8192];
    size_t len = 0;
    for (int j = 0; j < per_client; j++) {
      const char *argv[] = {"EMBED", "TEXT", texts[(cidx + j) % ntexts],
                            "BYTES"};
      len += encode_cmd(req + len, 4, argv, NULL);
    }
    assert_int_equal(send_all(fds[cidx], req, len), 0);
  }
  for (int cidx = 0; cidx < nclients; cidx++) {
    r3_conn *rc = calloc(1, sizeof *rc);
    rc->fd = fds[cidx];
    for (int j = 0; j < per_client; j++) {
      r3 *v = r3_read(rc);
      assert_non_null(v);
      if (v->type != '$' || v->len != (size_t)g_dim * 4)
        fail_msg("client %d reply %d: type %c '%s'", cidx, j, v->type,
                 v->str ? v->str : "");
      assert_vec_near((const float *)v->str,
                      tv + (size_t)((cidx + j) % ntexts) * g_dim, g_dim,
                      1e-5f, "batched EMBED");
      r3_free(v);
    }
    close(fds[cidx]);
    free(rc);
  }
  free(fds);
}

static void test_batching(void **state) {
  (void)state;
  enum { NT = 13 };
  char texts[NT][32];
  float *tv = malloc((size_t)NT * g_dim * sizeof(float));
  for (int t = 0; t < NT; t++) {
    snprintf(texts[t], sizeof texts[t], "batched text %d", t);
    text_vec(texts[t], tv + (size_t)t * g_dim);
  }
  server_t s;
  make_db(&s);
  const char *on[] = {"--batch-window-us", "20000", "--threads", "2", NULL};
  start_server(&s, on);
  run_batch_clients(s.port, 8, 25, tv, texts, NT);
  redisContext *h = hconnect(s.port);
  long largest = info_field(h, "stats", "text_largest_batch");
  long batched = info_field(h, "stats", "text_embeds_batched");
  assert_int_equal(batched, 200);
  if (largest < 2)
    fail_msg("200 embeddings from 8 clients within a 20 ms window: largest "
             "batch %ld", largest);
  /* Images batch too. */
  size_t ilen;
  char *img = fixture("photo_rgb.jpg", &ilen);
  for (int i = 0; i < 16; i++)
    redisAppendCommand(h, "EMBED IMAGE %b", img, ilen);
  float *want = malloc((size_t)g_dim * sizeof(float));
  image_vec("photo_rgb.jpg", want);
  for (int i = 0; i < 16; i++) {
    redisReply *r;
    assert_int_equal(redisGetReply(h, (void **)&r), REDIS_OK);
    assert_int_equal(r->len, (size_t)g_dim * 4);
    assert_vec_near((const float *)r->str, want, g_dim, 1e-5f, "EMBED IMAGE");
    freeReplyObject(r);
  }
  assert_true(info_field(h, "stats", "image_largest_batch") >= 2);
  free(want);
  free(img);
  redisFree(h);
  stop_server(&s);
  const char *off[] = {"--batch-window-us", "0", NULL};
  start_server(&s, off);
  run_batch_clients(s.port, 8, 25, tv, texts, NT);
  h = hconnect(s.port);
  assert_int_equal(info_field(h, "stats", "text_embed_batches"), 0);
  redisFree(h);
  stop_server(&s);
  server_done(&s);
  free(tv);
}

/* ======================================================================
 * kill -9 under load: the server keeps every write it acknowledged
 * ==================================================================== */

enum { KC_CLIENTS = 4, KC_KEYS = 37, KC_TX_CLIENT = 1, KC_TX = 4 };

/* Client c's op j: key j % KC_KEYS; every fifth a DEL, else an UPSERT
 * whose meta says j.  Redoing an op is harmless, so a client restarts
 * from the op after its last acknowledged one. */
static int kc_is_del(int j) { return j % 5 == 4; }

static void kc_vec(int c, int j, float *v) {
  for (int k = 0; k < g_dim; k++)
    v[k] = 1.5f + sinf((float)(j * 13 + k * 7 + c));
}

/* A client process: ops from `first` until killed or an error, one line
 * "j" on out per acknowledged op; every 50th op one client also SAVEs. */
static void kc_client(int port, int c, int first, int out) {
  redisContext *h = redisConnect("127.0.0.1", port);
  if (!h || h->err)
    _exit(0);
  float *v = malloc(sizeof(float) * (size_t)g_dim);
  if (c == KC_TX_CLIENT) { /* its ops in transactions of KC_TX ops */
    for (int j = first;; j += KC_TX) {
      redisAppendCommand(h, "MULTI");
      for (int t = j; t < j + KC_TX; t++) {
        char key[32], meta[32];
        snprintf(key, sizeof key, "c%d-k%02d", c, t % KC_KEYS);
        if (kc_is_del(t)) {
          redisAppendCommand(h, "DEL %s", key);
        } else {
          kc_vec(c, t, v);
          snprintf(meta, sizeof meta, "{\"n\":%d}", t);
          redisAppendCommand(h, "UPSERT %s TEXTVEC %b META %s", key, v,
                             (size_t)g_dim * 4, meta);
        }
      }
      redisAppendCommand(h, "EXEC");
      for (int t = 0; t < KC_TX + 2; t++) {
        redisReply *r = NULL;
        if (redisGetReply(h, (void **)&r) != REDIS_OK || !r ||
            r->type == REDIS_REPLY_ERROR ||
            (t == KC_TX + 1 && r->type != REDIS_REPLY_ARRAY))
          _exit(0);
        freeReplyObject(r);
      }
      for (int t = j; t < j + KC_TX; t++) {
        char line[16];
        int n = snprintf(line, sizeof line, "%d\n", t);
        if (write(out, line, (size_t)n) != n)
          _exit(0);
      }
    }
  }
  for (int j = first;; j++) {
    char key[32], meta[32];
    snprintf(key, sizeof key, "c%d-k%02d", c, j % KC_KEYS);
    redisReply *r;
    if (kc_is_del(j)) {
      r = redisCommand(h, "DEL %s", key);
    } else {
      kc_vec(c, j, v);
      snprintf(meta, sizeof meta, "{\"n\":%d}", j);
      r = redisCommand(h, "UPSERT %s TEXTVEC %b META %s", key, v,
                       (size_t)g_dim * 4, meta);
    }
    if (!r || r->type == REDIS_REPLY_ERROR)
      _exit(0); /* the server is gone */
    freeReplyObject(r);
    char line[16];
    int n = snprintf(line, sizeof line, "%d\n", j);
    if (write(out, line, (size_t)n) != n)
      _exit(0);
    if (c == 0 && j % 50 == 49) {
      r = redisCommand(h, "SAVE");
      if (!r || r->type == REDIS_REPLY_ERROR)
        _exit(0);
      freeReplyObject(r);
    }
  }
}

/* The meta "n" a key should hold after client c's ops up to `upto`
 * (-1: absent; -2: never written). */
static int kc_expect(int key, int upto) {
  int last = -2;
  for (int j = key; j <= upto; j += KC_KEYS)
    last = kc_is_del(j) ? -1 : j;
  return last;
}

/* Four clients write while the server is killed at a random moment, again
 * and again; after each restart every key holds what its client's last
 * acknowledged op left, or what the one op in flight would have.
 * make test: 8 kills; make crash: VLM_SERVER_KILLS. */
static void test_kill9_under_load(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  const char *want_env = getenv("VLM_SERVER_KILLS");
  int want = want_env && atoi(want_env) > 0 ? atoi(want_env) : 8;
  int acked[KC_CLIENTS];
  for (int c = 0; c < KC_CLIENTS; c++)
    acked[c] = -1;
  uint64_t seed = (uint64_t)time(NULL), x = seed | 1;
  long checked = 0, ops = 0;
  float *v = malloc(sizeof(float) * (size_t)g_dim);
  for (int kill_no = 0; kill_no <= want; kill_no++) {
    start_server(&s, NULL);
    /* check what the last kill left */
    redisContext *h = hconnect(s.port);
    for (int c = 0; c < KC_CLIENTS; c++) {
      /* the transaction client: all of its EXEC in flight, or none */
      int tx = c == KC_TX_CLIENT, tx_all = 1, tx_none = 1;
      for (int key = 0; key < KC_KEYS; key++) {
        int a = kc_expect(key, acked[c]),
            b = kc_expect(key, acked[c] + (tx ? KC_TX : 1));
        char k[32];
        snprintf(k, sizeof k, "c%d-k%02d", c, key);
        redisReply *r = hcmd(h, "GET %s", k);
        int got = -1;
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= 8 &&
            r->element[7]->str)
          got = atoi(strstr(r->element[7]->str, ":") + 1);
        if (a == -2)
          a = -1;
        if (b == -2)
          b = -1;
        if (got != a && got != b)
          fail_msg("kill %d (seed %llu): %s holds %d, acknowledged %d "
                   "(in flight: %d)", kill_no, (unsigned long long)seed, k,
                   got, a, b);
        tx_none &= got == a;
        tx_all &= got == b;
        if (got >= 0) { /* and its vector is the one written */
          freeReplyObject(r);
          r = hcmd(h, "GET %s WITHVECTORS", k);
          kc_vec(c, got, v);
          normalize(v, g_dim);
          assert_int_equal(r->element[r->elements - 1]->len,
                           (size_t)g_dim * 4);
          assert_vec_near((const float *)r->element[r->elements - 1]->str,
                          v, g_dim, 1e-5f, k);
        }
        freeReplyObject(r);
        checked++;
      }
      if (tx && !tx_all && !tx_none)
        fail_msg("kill %d (seed %llu): part of a transaction survived",
                 kill_no, (unsigned long long)seed);
    }
    redisFree(h);
    if (kill_no == want)
      break;
    pid_t kid[KC_CLIENTS];
    int pipes[KC_CLIENTS];
    for (int c = 0; c < KC_CLIENTS; c++) {
      int pfd[2];
      assert_int_equal(pipe(pfd), 0);
      fflush(NULL);
      kid[c] = fork();
      assert_true(kid[c] >= 0);
      if (kid[c] == 0) {
        close(pfd[0]);
        kc_client(s.port, c, acked[c] + 1, pfd[1]);
      }
      close(pfd[1]);
      pipes[c] = pfd[0];
    }
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    sleep_ms(100 + (int)(x % 900));
    kill(s.pid, SIGKILL);
    waitpid(s.pid, NULL, 0);
    s.pid = 0;
    for (int c = 0; c < KC_CLIENTS; c++) {
      waitpid(kid[c], NULL, 0);
      char buf[1 << 16];
      size_t len = 0;
      ssize_t r;
      while ((r = read(pipes[c], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
      close(pipes[c]);
      buf[len] = '\0';
      for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        int j = atoi(line);
        assert_int_equal(j, acked[c] + 1);
        acked[c] = j;
        ops++;
      }
    }
  }
  print_message("server kill -9 under 4 clients (one writing in MULTI/EXEC "
                "transactions of %d): %d kills, %ld acknowledged ops, %ld "
                "keys checked, 0 lost, no transaction split\n", KC_TX, want,
                ops, checked);
  assert_true(ops > 0);
  free(v);
  stop_server(&s);
  server_done(&s);
}

/* ======================================================================
 * main
 * ==================================================================== */

/* ======================================================================
 * The library API in process, and every command's refusals
 * ==================================================================== */

/* vlm_server_create refuses what it cannot serve safely, each with its
 * code and a message naming the option; a server created and never run
 * frees cleanly; a server without a model answers the commands that need
 * one with an error that says so and everything else normally; stop from
 * another thread shuts it down (run returns 0) and it cannot run twice. */
typedef struct {
  vlm_server *srv;
  int rc;
} run_arg;

static void *server_thread(void *p) {
  run_arg *a = p;
  a->rc = vlm_server_run(a->srv);
  return NULL;
}

#define EXPECT_CREATE_ERR(code, words, db, clip, opts)                     \
  do {                                                                     \
    vlm_server *srv_ = NULL;                                               \
    int rc_ = vlm_server_create(db, clip, opts, &srv_);                    \
    if (rc_ != (code) || !strstr(vlm_errmsg(), words))                     \
      fail_msg("create: %d (%s): %s; expected %s, \"%s\"", rc_,            \
               vlm_errname(rc_), vlm_errmsg(), vlm_errname(code), words);  \
    assert_null(srv_);                                                     \
  } while (0)

static void test_server_api(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  vlm_db *db = NULL;
  VLM_CHECK(vlm_db_open(s.db, NULL, &db));
  vlm_server_options o = {0};
  char long_bind[80];
  memset(long_bind, '1', sizeof long_bind - 1);
  long_bind[sizeof long_bind - 1] = '\0';
  EXPECT_CREATE_ERR(VLM_EINVAL, "no database", NULL, g_clip, &o);
  o.bind = "0.0.0.0";
  EXPECT_CREATE_ERR(VLM_EINVAL, "without a password", db, g_clip, &o);
  o.bind = long_bind;
  EXPECT_CREATE_ERR(VLM_EINVAL, "too long", db, g_clip, &o);
  o.bind = "no-such-address";
  o.requirepass = "secret";
  EXPECT_CREATE_ERR(VLM_EINVAL, "bind address 'no-such-address'", db, g_clip,
                    &o);
  o.bind = NULL;
  o.requirepass = NULL;
  o.port = 70000;
  EXPECT_CREATE_ERR(VLM_EINVAL, "port 70000", db, g_clip, &o);
  o.port = 0;
  o.threads = -1;
  EXPECT_CREATE_ERR(VLM_EINVAL, "negative option", db, g_clip, &o);
  o.threads = 2;
  /* a database of another dimension than the model's */
  char other[128];
  snprintf(other, sizeof other, "%s/other", s.dir);
  vlm_db_config cfg = {.dim = g_dim + 1, .index_factory = "Flat",
                       .model_id = "m"};
  vlm_db *db2 = NULL;
  VLM_CHECK(vlm_db_create(other, &cfg, &db2));
  EXPECT_CREATE_ERR(VLM_EMISMATCH, "model dimension", db2, g_clip, &o);
  vlm_db_close(db2);
  /* a port in use; a server never run frees cleanly */
  vlm_server *first = NULL;
  VLM_CHECK(vlm_server_create(db, g_clip, &o, &first));
  o.port = vlm_server_port(first);
  assert_true(o.port > 0);
  EXPECT_CREATE_ERR(VLM_ENET, "listen on", db, g_clip, &o);
  vlm_server_free(first);
  vlm_server_free(NULL);

  /* no model; IPv6 loopback when the machine has it */
  o.port = 0;
  o.bind = "::1";
  vlm_server *srv = NULL;
  if (vlm_server_create(db, NULL, &o, &srv) != 0) {
    o.bind = NULL;
    VLM_CHECK(vlm_server_create(db, NULL, &o, &srv));
  }
  char logpath[128];
  snprintf(logpath, sizeof logpath, "%s/api.log", s.dir);
  run_arg ra = {srv, -1};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, server_thread, &ra), 0);
  struct timeval tv = {IO_TIMEOUT_S, 0};
  redisContext *c = redisConnectWithTimeout(o.bind ? "::1" : "127.0.0.1",
                                            vlm_server_port(srv), tv);
  assert_non_null(c);
  if (c->err)
    fail_msg("connect: %s", c->errstr);
  expect_error(hcmd(c, "EMBED TEXT %s", "a cat"), "ERR EMBED needs a model");
  expect_error(hcmd(c, "SEARCH TEXT %s", "a cat"),
               "ERR SEARCH TEXT needs a model");
  expect_error(hcmd(c, "ADD k IMAGE %b", "xx", (size_t)2),
               "ERR ADD with IMAGE and no IMAGEVEC needs a model");
  redisReply *r = hcmd(c, "INFO model");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  if (!strstr(r->str, "model_loaded:0"))
    fail_msg("INFO model without a model:\n%s", r->str);
  freeReplyObject(r);
  float *v = calloc((size_t)g_dim, sizeof(float));
  v[0] = 1;
  expect_int(hcmd(c, "ADD k IMAGEVEC %b", v, (size_t)g_dim * 4), 1);
  free(v);
  expect_int(hcmd(c, "EXISTS k"), 1);
  vlm_server_stop(srv);
  assert_int_equal(pthread_join(th, NULL), 0);
  redisFree(c);
  assert_int_equal(ra.rc, 0);
  assert_int_equal(vlm_server_run(srv), VLM_ESTATE);
  vlm_server_free(srv);
  assert_int_equal(vlm_db_exists(db, "k"), 1);
  vlm_db_close(db);
  server_done(&s);
}

/* Every command given arguments it must refuse: an error naming what is
 * wrong, the connection still usable after each, nothing written. */
/* ======================================================================
 * VLM.REEMBED: another model while serving
 * ==================================================================== */

#define REEMBED_MODEL "models/default"
#define REEMBED_N 240

static const char *reembed_images[] = {"gray.jpg",      "gray.png",
                                       "palette.png",   "photo_prog.jpg",
                                       "photo_rgb.jpg", "rgb.png",
                                       "rgba.png",      "small_upscale.png",
                                       "wide.png"};
#define REEMBED_NIMAGES 9

/* A database that keeps images, REEMBED_N items (image i % 9 and the
 * caption "caption number i"), written through the server. */
static void reembed_fill(redisContext *c) {
  char *img[REEMBED_NIMAGES];
  size_t len[REEMBED_NIMAGES];
  for (int i = 0; i < REEMBED_NIMAGES; i++)
    img[i] = fixture(reembed_images[i], &len[i]);
  for (int i = 0; i < REEMBED_N; i++) {
    char key[32], cap[64];
    snprintf(key, sizeof key, "k%d", i);
    snprintf(cap, sizeof cap, "caption number %d", i);
    redisAppendCommand(c, "ADD %s IMAGE %b TEXT %s", key,
                       img[i % REEMBED_NIMAGES], len[i % REEMBED_NIMAGES],
                       cap);
  }
  for (int i = 0; i < REEMBED_N; i++) {
    redisReply *r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK)
      fail_msg("ADD: %s", c->errstr);
    expect_int(r, 1);
  }
  for (int i = 0; i < REEMBED_NIMAGES; i++)
    free(img[i]);
}

/* VLM.REEMBED STATUS's state (RESP2: a flat array of pairs). */
static void reembed_status(redisContext *c, char *state, size_t cap,
                           long long *done) {
  redisReply *r = hcmd(c, "VLM.REEMBED STATUS");
  if (r->type != REDIS_REPLY_ARRAY)
    fail_msg("VLM.REEMBED STATUS: type %d '%s'", r->type,
             r->str ? r->str : "");
  state[0] = '\0';
  for (size_t i = 0; i + 1 < r->elements; i += 2) {
    const char *k = r->element[i]->str;
    if (!strcmp(k, "state"))
      snprintf(state, cap, "%s", r->element[i + 1]->str);
    if (!strcmp(k, "done") && done)
      *done = r->element[i + 1]->integer;
    if (!strcmp(k, "message") && r->element[i + 1]->str &&
        *r->element[i + 1]->str)
      print_message("reembed: %s\n", r->element[i + 1]->str);
  }
  freeReplyObject(r);
}

/* Wait (up to 300 s) for the re-embedding to leave waiting/running/
 * switching/cleaning; its final state into state. */
static void reembed_wait(redisContext *c, char *state, size_t cap) {
  for (int i = 0; i < 3000; i++) {
    reembed_status(c, state, cap, NULL);
    if (strcmp(state, "waiting") && strcmp(state, "running") &&
        strcmp(state, "final") && strcmp(state, "switching") &&
        strcmp(state, "cleaning"))
      return;
    usleep(100 * 1000);
  }
  fail_msg("the re-embedding did not end within 300 s (state %s)", state);
}

/* A search's reply as one string (keys and scores as the server wrote
 * them), to compare two answers exactly. */
static char *search_text(redisContext *c, const char *text) {
  redisReply *r = hcmd(c, "SEARCH TEXT %s K 5 TARGET TEXT", text);
  if (r->type != REDIS_REPLY_ARRAY)
    fail_msg("SEARCH: type %d '%s'", r->type, r->str ? r->str : "");
  char *out = calloc(1, 4096);
  for (size_t i = 0; i < r->elements; i++) {
    redisReply *hit = r->element[i];
    for (size_t j = 0; j < hit->elements && j < 2; j++)
      snprintf(out + strlen(out), 4096 - strlen(out), "%s ",
               hit->element[j]->str);
  }
  freeReplyObject(r);
  return out;
}

static void run_verify(const server_t *s) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "%s/vlmdb verify --db %s >> %s/verify.log 2>&1",
           build_dir(), s->db, s->dir);
  if (system(cmd) != 0) {
    char log[128];
    size_t n;
    snprintf(log, sizeof log, "%s/verify.log", s->dir);
    char *text = read_file(log, &n);
    fail_msg("%s failed:\n%.*s", cmd, text ? (int)n : 0, text ? text : "");
  }
}

static int dir_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* The served database's dimension and model id, read beside the server. */
static int served_dim(const server_t *s, char *model_id, size_t cap) {
  vlm_db *db = open_ro_db(s);
  vlm_db_info info;
  if (vlm_db_stat(db, &info) < 0)
    fail_msg("stat: %s", vlm_errmsg());
  if (model_id)
    snprintf(model_id, cap, "%s", info.model_id);
  vlm_db_close(db);
  return info.dim;
}

/* While VLM.REEMBED runs, searches answer from the old model exactly as
 * before, and writes are taken (RESP and MULTI/EXEC: new items, an
 * update, a delete) until the last catch-up, then refused until the
 * switch; after the switch the server answers with the new model (INFO
 * says so), every vector is the new model's own embedding of the kept
 * image and caption (within 1e-6), the items written during the run
 * included and the deleted one gone, searches rank as a brute force over
 * them, writes are taken, and the database verifies. */
#define REEMBED_LATE_MAX 4096
static void test_reembed_while_serving(void **state) {
  (void)state;
  server_t s;
  make_db_keep(&s, 1);
  start_server(&s, (const char *const[]){"--threads", "2", NULL});
  redisContext *c = hconnect(s.port);
  reembed_fill(c);
  char *img[REEMBED_NIMAGES];
  size_t ilen[REEMBED_NIMAGES];
  for (int i = 0; i < REEMBED_NIMAGES; i++)
    img[i] = fixture(reembed_images[i], &ilen[i]);

  redisReply *r = hcmd(c, "VLM.REEMBED MODEL %s BATCH 1", REEMBED_MODEL);
  if (r->type != REDIS_REPLY_ARRAY)
    fail_msg("VLM.REEMBED MODEL: type %d '%s'", r->type,
             r->str ? r->str : "");
  freeReplyObject(r);
  /* an update and a delete while it runs (the walk may have staged
   * either item already: the catch-up and the sweep must see them) */
  expect_int(hcmd(c, "UPSERT k3 IMAGE %b TEXT %s", img[3], ilen[3],
                  "changed caption three"), 1);
  expect_int(hcmd(c, "DEL k5"), 1);
  char *before = search_text(c, "caption number 7");
  char *before2 = search_text(c, "caption number 123");
  /* a second one is refused */
  r = hcmd(c, "VLM.REEMBED MODEL %s", REEMBED_MODEL);
  assert_int_equal(r->type, REDIS_REPLY_ERROR);
  assert_non_null(strstr(r->str, "already running"));
  freeReplyObject(r);
  char st[32];
  /* late items: image only (TARGET TEXT searches do not see them); per
   * late%d, whether its ADD, and its m-twin's EXEC, were acknowledged */
  static char acked[REEMBED_LATE_MAX], macked[REEMBED_LATE_MAX];
  int during = 0, late = 0, refused = 0;
  for (;;) {
    /* reads and writes, then the state: when it still runs after them,
     * no switch can have happened while they were answered */
    char *now = search_text(c, "caption number 7");
    char *now2 = search_text(c, "caption number 123");
    char key[32];
    int i = late++;
    assert_true(i < REEMBED_LATE_MAX);
    snprintf(key, sizeof key, "late%d", i);
    redisReply *add = hcmd(c, "ADD %s IMAGE %b", key,
                           img[i % REEMBED_NIMAGES],
                           ilen[i % REEMBED_NIMAGES]);
    redisReply *multi = hcmd(c, "MULTI");
    redisReply *madd = hcmd(c, "ADD m%s IMAGE %b", key,
                            img[(i + 1) % REEMBED_NIMAGES],
                            ilen[(i + 1) % REEMBED_NIMAGES]);
    redisReply *exec = hcmd(c, "EXEC");
    redisReply *info = hcmd(c, "INFO reembed");
    reembed_status(c, st, sizeof st, NULL);
    int busy = !strcmp(st, "running") || !strcmp(st, "waiting") ||
               !strcmp(st, "final") || !strcmp(st, "switching");
    acked[i] = add->type == REDIS_REPLY_INTEGER && add->integer == 1;
    macked[i] = exec->type == REDIS_REPLY_ARRAY;
    if (!acked[i]) { /* refused: only from the last catch-up on */
      if (add->type != REDIS_REPLY_ERROR || !strstr(add->str, "switching"))
        fail_msg("ADD during the reembed (%s): type %d '%s'", st, add->type,
                 add->str ? add->str : "");
      refused++;
    }
    if (busy) {
      assert_string_equal(now, before);
      assert_string_equal(now2, before2);
      if (!strstr(info->str, "reembed_state:"))
        fail_msg("INFO reembed: %s", info->str);
      during++;
    }
    free(now);
    free(now2);
    freeReplyObject(add);
    freeReplyObject(multi);
    freeReplyObject(madd);
    freeReplyObject(exec);
    freeReplyObject(info);
    if (!busy)
      break;
    usleep(20 * 1000);
  }
  int nacked = 0;
  for (int i = 0; i < late; i++)
    nacked += acked[i] + macked[i];
  print_message("%d rounds of reads and writes during the reembed: %d "
                "writes taken, %d refused (from the last catch-up to the "
                "switch)\n", during, nacked, refused);
  if (nacked < 2)
    fail_msg("no write was taken during the reembed: raise REEMBED_N");
  if (during < 1)
    fail_msg("the reembed ended (%s) before a search could run beside it: "
             "raise REEMBED_N", st);
  reembed_wait(c, st, sizeof st);
  if (strcmp(st, "done")) {
    print_log(&s);
    fail_msg("the reembed ended %s", st);
  }

  /* the new model, in INFO and in the database */
  vlm_clip *nm = NULL;
  if (vlm_clip_load(REEMBED_MODEL, NULL, &nm) < 0)
    fail_msg("%s: %s", REEMBED_MODEL, vlm_errmsg());
  int d = vlm_clip_dim(nm);
  r = hcmd(c, "INFO model");
  char want_line[128];
  snprintf(want_line, sizeof want_line, "model_id:%s\r\n",
           vlm_clip_model_id(nm));
  if (!strstr(r->str, want_line) || !strstr(r->str, "models/default"))
    fail_msg("INFO model after the switch: %s", r->str);
  freeReplyObject(r);
  char staged[128];
  snprintf(staged, sizeof staged, "%s.reembed", s.db);
  assert_false(dir_exists(staged));

  /* every vector: the new model's embedding of the kept image / caption */
  float *img_want = malloc((size_t)REEMBED_NIMAGES * d * sizeof(float));
  for (int i = 0; i < REEMBED_NIMAGES; i++) {
    size_t len;
    char *img = fixture(reembed_images[i], &len);
    const void *p = img;
    if (vlm_clip_encode_image_buffers(nm, &p, &len, 1, 0,
                                      img_want + (size_t)i * d) < 0)
      fail_msg("encode: %s", vlm_errmsg());
    free(img);
  }
  float *text_want = malloc((size_t)REEMBED_N * d * sizeof(float));
  for (int i = 0; i < REEMBED_N; i++) {
    char cap[64];
    snprintf(cap, sizeof cap, "caption number %d", i);
    const char *t = i == 3 ? "changed caption three" : cap;
    if (vlm_clip_encode_texts(nm, &t, 1, 0, text_want + (size_t)i * d) < 0)
      fail_msg("encode: %s", vlm_errmsg());
  }
  expect_int(hcmd(c, "EXISTS k5"), 0); /* deleted during the run */
  /* the writes taken during the run: the new model's vectors of their
   * kept bytes; the refused ones absent */
  for (int i = 0; i < late; i++)
    for (int m = 0; m < 2; m++) {
      r = hcmd(c, "GET %slate%d WITHVECTORS", m ? "m" : "", i);
      int was = m ? macked[i] : acked[i];
      if (!was) {
        assert_int_equal(r->type, REDIS_REPLY_NIL);
        freeReplyObject(r);
        continue;
      }
      if (r->type != REDIS_REPLY_ARRAY)
        fail_msg("GET %slate%d, acknowledged during the reembed: type %d",
                 m ? "m" : "", i, r->type);
      const float *iv = NULL;
      for (size_t j = 0; j + 1 < r->elements; j += 2)
        if (!strcmp(r->element[j]->str, "image_vec"))
          iv = (const float *)r->element[j + 1]->str;
      assert_non_null(iv);
      char what[48];
      snprintf(what, sizeof what, "%slate%d image_vec", m ? "m" : "", i);
      assert_vec_near(iv, img_want + (size_t)((i + m) % REEMBED_NIMAGES) * d,
                      d, 1e-6f, what);
      freeReplyObject(r);
    }
  for (int i = 0; i < REEMBED_N; i++) {
    if (i == 5)
      continue;
    r = hcmd(c, "GET k%d WITHVECTORS", i);
    if (r->type != REDIS_REPLY_ARRAY)
      fail_msg("GET k%d: type %d '%s'", i, r->type, r->str ? r->str : "");
    const float *iv = NULL, *tv = NULL;
    for (size_t j = 0; j + 1 < r->elements; j += 2) {
      redisReply *k = r->element[j], *v = r->element[j + 1];
      if (!strcmp(k->str, "image_vec")) {
        assert_int_equal(v->len, (size_t)d * 4);
        iv = (const float *)v->str;
      }
      if (!strcmp(k->str, "text_vec")) {
        assert_int_equal(v->len, (size_t)d * 4);
        tv = (const float *)v->str;
      }
    }
    assert_non_null(iv);
    assert_non_null(tv);
    char what[32];
    snprintf(what, sizeof what, "k%d image_vec", i);
    assert_vec_near(iv, img_want + (size_t)(i % REEMBED_NIMAGES) * d, d,
                    1e-6f, what);
    snprintf(what, sizeof what, "k%d text_vec", i);
    assert_vec_near(tv, text_want + (size_t)i * d, d, 1e-6f, what);
    freeReplyObject(r);
  }
  /* a search ranks as a brute force over those text vectors */
  float q[1024];
  const char *qt = "caption number 7";
  assert_true(d <= 1024);
  if (vlm_clip_encode_texts(nm, &qt, 1, 0, q) < 0)
    fail_msg("encode: %s", vlm_errmsg());
  r = hcmd(c, "SEARCH TEXT %s K 5 TARGET TEXT", qt);
  assert_int_equal(r->elements, 5);
  float prev = 2;
  for (size_t h = 0; h < r->elements; h++) {
    int i = atoi(r->element[h]->element[0]->str + 1);
    float dot = 0, best = -2;
    for (int j = 0; j < d; j++)
      dot += q[j] * text_want[(size_t)i * d + j];
    assert_true(i != 5);
    for (int o = 0; o < REEMBED_N; o++) { /* none better left out */
      if (o == 5)
        continue;
      float x = 0;
      for (int j = 0; j < d; j++)
        x += q[j] * text_want[(size_t)o * d + j];
      if (x > best && x < prev - 1e-6f)
        best = x;
    }
    float got = (float)atof(r->element[h]->element[1]->str);
    if (fabsf(got - dot) > 1e-5f || fabsf(got - best) > 1e-5f)
      fail_msg("hit %zu (%s): score %g, its cosine %g, the best left %g", h,
               r->element[h]->element[0]->str, (double)got, (double)dot,
               (double)best);
    prev = got;
  }
  freeReplyObject(r);
  /* writes are taken again, embedded by the new model */
  expect_int(hcmd(c, "ADD late TEXT %s", "a late write"), 1);
  r = hcmd(c, "EMBED TEXT %s", "a late write");
  assert_int_equal(r->len, (size_t)d * 4);
  freeReplyObject(r);
  redisFree(c);
  stop_server(&s);
  assert_int_equal(served_dim(&s, NULL, 0), d);
  run_verify(&s);
  free(img_want);
  free(text_want);
  free(before);
  free(before2);
  for (int i = 0; i < REEMBED_NIMAGES; i++)
    free(img[i]);
  vlm_clip_free(nm);
  server_done(&s);
}

/* The last catch-up refuses writes: a client that keeps 16 image ADDs in
 * flight for the whole run (BATCH large, so the catch-up passes end at
 * once and the last one embeds what came in during the one before) sees
 * them taken, then refused with the switching error, then taken again;
 * every acknowledged write is in the new database with the new model's
 * vector of its image, and no refused one is. */
#define FLOOD_MAX 20000
static void test_reembed_final_refuses_writes(void **state) {
  (void)state;
  server_t s;
  make_db_keep(&s, 1);
  start_server(&s, (const char *const[]){"--threads", "2", NULL});
  redisContext *c = hconnect(s.port), *w = hconnect(s.port);
  reembed_fill(c);
  char *img[REEMBED_NIMAGES];
  size_t ilen[REEMBED_NIMAGES];
  for (int i = 0; i < REEMBED_NIMAGES; i++)
    img[i] = fixture(reembed_images[i], &ilen[i]);
  redisReply *r = hcmd(c, "VLM.REEMBED MODEL %s BATCH 1024", REEMBED_MODEL);
  if (r->type != REDIS_REPLY_ARRAY)
    fail_msg("VLM.REEMBED MODEL: type %d '%s'", r->type,
             r->str ? r->str : "");
  freeReplyObject(r);
  /* 0: not sent, 1: taken, 2: refused */
  static char fate[FLOOD_MAX];
  memset(fate, 0, sizeof fate);
  enum { WINDOW = 16 };
  int sent = 0, got = 0, taken_before = 0, refused = 0, taken_after = 0;
  char st[32] = "running";
  for (;;) {
    while (sent - got < WINDOW) {
      assert_true(sent < FLOOD_MAX);
      redisAppendCommand(w, "ADD f%d IMAGE %b", sent,
                         img[sent % REEMBED_NIMAGES],
                         ilen[sent % REEMBED_NIMAGES]);
      sent++;
    }
    redisReply *a = NULL;
    if (redisGetReply(w, (void **)&a) != REDIS_OK)
      fail_msg("ADD: %s", w->errstr);
    int i = got++;
    if (a->type == REDIS_REPLY_INTEGER && a->integer == 1) {
      fate[i] = 1;
      if (refused)
        taken_after++;
      else
        taken_before++;
    } else if (a->type == REDIS_REPLY_ERROR && strstr(a->str, "switching")) {
      fate[i] = 2;
      if (taken_after)
        fail_msg("ADD f%d refused after a later one was taken: %s", i,
                 a->str);
      refused++;
      usleep(2000); /* refusals are quick: do not flood the switch */
    } else {
      fail_msg("ADD f%d during the reembed: type %d '%s'", i, a->type,
               a->str ? a->str : "");
    }
    freeReplyObject(a);
    if (got % WINDOW == 0) {
      reembed_status(c, st, sizeof st, NULL);
      if (strcmp(st, "running") && strcmp(st, "waiting") &&
          strcmp(st, "final") && strcmp(st, "switching") &&
          (taken_after >= WINDOW || strcmp(st, "cleaning")))
        break;
    }
  }
  while (got < sent) { /* the window's last replies */
    redisReply *a = NULL;
    if (redisGetReply(w, (void **)&a) != REDIS_OK)
      fail_msg("ADD: %s", w->errstr);
    fate[got++] = a->type == REDIS_REPLY_INTEGER ? 1 : 2;
    freeReplyObject(a);
  }
  print_message("%d ADDs during the reembed: %d taken before the last "
                "catch-up, %d refused, %d taken after the switch\n", sent,
                taken_before, refused, taken_after);
  reembed_wait(c, st, sizeof st);
  if (strcmp(st, "done")) {
    print_log(&s);
    fail_msg("the reembed ended %s", st);
  }
  assert_true(taken_before > 0);
  assert_true(refused > 0);
  vlm_clip *nm = NULL;
  if (vlm_clip_load(REEMBED_MODEL, NULL, &nm) < 0)
    fail_msg("%s: %s", REEMBED_MODEL, vlm_errmsg());
  int d = vlm_clip_dim(nm);
  float *want = malloc((size_t)REEMBED_NIMAGES * d * sizeof(float));
  for (int i = 0; i < REEMBED_NIMAGES; i++) {
    const void *p = img[i];
    if (vlm_clip_encode_image_buffers(nm, &p, &ilen[i], 1, 0,
                                      want + (size_t)i * d) < 0)
      fail_msg("encode: %s", vlm_errmsg());
  }
  for (int i = 0; i < sent; i++) {
    r = hcmd(c, "GET f%d WITHVECTORS", i);
    if (fate[i] != 1) {
      if (r->type != REDIS_REPLY_NIL)
        fail_msg("f%d was refused, yet GET answers type %d", i, r->type);
      freeReplyObject(r);
      continue;
    }
    if (r->type != REDIS_REPLY_ARRAY)
      fail_msg("GET f%d, acknowledged: type %d", i, r->type);
    const float *iv = NULL;
    for (size_t j = 0; j + 1 < r->elements; j += 2)
      if (!strcmp(r->element[j]->str, "image_vec"))
        iv = (const float *)r->element[j + 1]->str;
    assert_non_null(iv);
    char what[32];
    snprintf(what, sizeof what, "f%d image_vec", i);
    assert_vec_near(iv, want + (size_t)(i % REEMBED_NIMAGES) * d, d, 1e-6f,
                    what);
    freeReplyObject(r);
  }
  redisFree(w);
  redisFree(c);
  stop_server(&s);
  run_verify(&s);
  free(want);
  for (int i = 0; i < REEMBED_NIMAGES; i++)
    free(img[i]);
  vlm_clip_free(nm);
  server_done(&s);
}

static void kill9(server_t *s) {
  kill(s->pid, SIGKILL);
  waitpid(s->pid, NULL, 0);
  s->pid = 0;
}

/* kill -9 of the server in the middle of a reembed: the database is the
 * old one, whole (verify passes, searches answer as before), the staging
 * is kept; restarted, VLM.REEMBED resumes it and switches.  Killed again
 * around the switch's clean-up: the new database, whole, and the next
 * start removes what is left of the old one. */
static void test_reembed_server_killed(void **state) {
  (void)state;
  server_t s;
  make_db_keep(&s, 1);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  reembed_fill(c);
  char *before = search_text(c, "caption number 7");
  char old_id[80];
  int old_dim = served_dim(&s, old_id, sizeof old_id);
  redisReply *r = hcmd(c, "VLM.REEMBED MODEL %s BATCH 1", REEMBED_MODEL);
  freeReplyObject(r);
  char st[32];
  long long done = 0;
  for (int i = 0; i < 3000; i++) {
    reembed_status(c, st, sizeof st, &done);
    if (done >= 20 || (strcmp(st, "waiting") && strcmp(st, "running")))
      break;
    usleep(10 * 1000);
  }
  assert_string_equal(st, "running");
  redisFree(c);
  kill9(&s);
  char staged[128];
  snprintf(staged, sizeof staged, "%s.reembed", s.db);
  assert_true(dir_exists(staged));
  char id[80];
  assert_int_equal(served_dim(&s, id, sizeof id), old_dim);
  assert_string_equal(id, old_id);
  run_verify(&s);

  start_server(&s, NULL);
  c = hconnect(s.port);
  char *now = search_text(c, "caption number 7");
  assert_string_equal(now, before);
  free(now);
  reembed_status(c, st, sizeof st, NULL);
  assert_string_equal(st, "idle");
  r = hcmd(c, "VLM.REEMBED MODEL %s", REEMBED_MODEL);
  freeReplyObject(r);
  /* kill it as soon as the switch happened (cleaning or done) */
  for (int i = 0; i < 30000; i++) {
    reembed_status(c, st, sizeof st, NULL);
    if (strcmp(st, "waiting") && strcmp(st, "running") &&
        strcmp(st, "final") && strcmp(st, "switching"))
      break;
    usleep(1000);
  }
  print_message("killed in state %s\n", st);
  if (strcmp(st, "cleaning") && strcmp(st, "done"))
    fail_msg("the resumed reembed ended %s", st);
  redisFree(c);
  kill9(&s);
  assert_int_not_equal(served_dim(&s, NULL, 0), old_dim);
  run_verify(&s);
  /* finishes the clean-up, if it was cut (the later --model wins) */
  start_server(&s, (const char *const[]){"--model", REEMBED_MODEL, NULL});
  assert_false(dir_exists(staged));
  c = hconnect(s.port);
  r = hcmd(c, "INFO model");
  assert_non_null(strstr(r->str, "models/default"));
  freeReplyObject(r);
  expect_int(hcmd(c, "DBSIZE"), REEMBED_N);
  redisFree(c);
  stop_server(&s);
  run_verify(&s);
  free(before);
  server_done(&s);
}

static void test_command_refusals(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  redisContext *c = hconnect(s.port);
  size_t vb = (size_t)g_dim * 4;
  float *v = calloc((size_t)g_dim, sizeof(float));
  v[0] = 1;
  expect_int(hcmd(c, "ADD a IMAGEVEC %b TEXT %s META %s", v, vb, "a cat",
                  "{\"n\": 1, \"cat\": \"x\"}"), 1);
  float *inf = calloc((size_t)g_dim, sizeof(float));
  inf[1] = INFINITY;
  static const struct {
    const char *cmd;
    const char *want;
  } cases[] = {
      {"SEARCH KEY a TARGET SIDEWAYS", "ERR TARGET must be ANY, IMAGE or TEXT"},
      {"SEARCH KEY a RETURN 2 n", "ERR RETURN 2 needs 2 field names"},
      {"SEARCH KEY a RETURN x", "ERR RETURN count must be an integer"},
      {"SEARCH KEY a WEIGHT 0.5", "ERR WEIGHT needs HYBRID <text>"},
      {"SEARCH KEY a WEIGHT 2 HYBRID cat", "ERR WEIGHT must be a number"},
      {"SEARCH KEY a K 0", "ERR K must be an integer from 1"},
      {"SEARCH KEY a EF x", "ERR"},
      {"SEARCH KEY a COLLAPSE 0", "ERR COLLAPSE is a cosine in (0, 1]"},
      {"SEARCH KEY a BOGUS", "ERR syntax error"},
      {"SEARCH KEY nokey", "ERR"},
      {"SEARCH WHAT a", "ERR SEARCH: unknown query kind"},
      {"ADD b", "ERR"},
      {"ADD b TEXT x IMAGEVEC", "ERR syntax error"},
      {"ADD b COLOUR red", "ERR syntax error"},
      {"UPSERT b IMAGEVEC short", "ERR"},
      {"SETMETA a notjson", "ERR"},
      {"SCAN notanumber", "ERR invalid cursor"},
      {"SCAN 0 BOGUS x", "ERR syntax error"},
      {"SCAN 0 COUNT 0", "ERR"},
      {"EMBED TEXT cat SIDEWAYS", "ERR syntax error"},
      {"EMBED SOUND x", "ERR"},
      {"VLM.EVAL K 1,x", "ERR"},
      {"VLM.EVAL SAMPLE 0", "ERR SAMPLE must be an integer"},
      {"VLM.EVAL SEED -1", "ERR SEED must be an integer"},
      {"VLM.EVAL BOGUS", "ERR syntax error"},
      {"GET a WITHNOTHING", "ERR syntax error"},
      {"COMMAND BOGUS", "ERR unknown subcommand"},
      {"CLIENT SETNAME bad\nname", "ERR"},
      {"CLIENT NOSUCH", "ERR"},
      {"HELLO 3 SETNAME bad\tname", "ERR"},
      {"HELLO 3 BOGUS", "ERR syntax error"},
      {"AUTH a b c", "ERR syntax error"},
      {"CONFIG GET", "ERR"},
      {"INFO nosuchsection x", NULL}, /* an empty reply, not an error */
  };
  int wrong = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    /* split on spaces; a "\n" or "\t" stays inside its argument */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", cases[i].cmd);
    const char *argv[16];
    int argc = 0;
    for (char *tok = strtok(buf, " "); tok && argc < 16; tok = strtok(NULL, " "))
      argv[argc++] = tok;
    redisReply *r = hcmdargv(c, argc, argv, NULL);
    if (cases[i].want ? r->type != REDIS_REPLY_ERROR ||
                            strncmp(r->str, cases[i].want,
                                    strlen(cases[i].want))
                      : r->type == REDIS_REPLY_ERROR) {
      print_error("%s: %s, expected %s%s\n", cases[i].cmd,
                  r->type == REDIS_REPLY_ERROR ? r->str : "not an error",
                  cases[i].want ? "an error " : "no error",
                  cases[i].want ? cases[i].want : "");
      wrong++;
    }
    freeReplyObject(r);
    expect_ping(c);
  }
  assert_int_equal(wrong, 0);
  /* binary arguments: a NUL inside a key or text, a non-finite vector */
  expect_error(hcmd(c, "ADD %b IMAGEVEC %b", "x\0y", (size_t)3, v, vb),
               "ERR key contains a NUL byte");
  expect_error(hcmd(c, "SEARCH KEY a FILTER %b", "n\0=1", (size_t)4),
               "ERR FILTER contains a NUL byte");
  expect_error(hcmd(c, "ADD b IMAGEVEC %b", inf, vb),
               "ERR IMAGEVEC has a non-finite value at 1");
  expect_error(hcmd(c, "SEARCH KEY %s", ""), "ERR empty key");
  expect_error(hcmd(c, "ADD %s IMAGEVEC %b", "", v, vb), "ERR empty key");
  expect_error(hcmd(c, "SETMETA %s {}", ""), "ERR empty key");
  expect_error(hcmd(c, "BACKUP %s", ""), "ERR BACKUP: the directory is empty");
  /* the help and listing subcommands */
  redisReply *r = hcmd(c, "COMMAND HELP");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_true(r->elements > 2);
  freeReplyObject(r);
  r = hcmd(c, "CLIENT HELP");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_true(r->elements > 2);
  freeReplyObject(r);
  r = hcmd(c, "COMMAND LIST");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  int saw_search = 0;
  for (size_t i = 0; i < r->elements; i++)
    saw_search |= !strcmp(r->element[i]->str, "search");
  assert_true(saw_search);
  size_t ncmd = r->elements;
  freeReplyObject(r);
  r = hcmd(c, "COMMAND INFO");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, ncmd);
  freeReplyObject(r);
  /* EMBED ARRAY: the model's vector as numbers */
  r = hcmd(c, "EMBED TEXT %s ARRAY", "a cat");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_int_equal(r->elements, (size_t)g_dim);
  float want[1024];
  text_vec("a cat", want);
  for (int i = 0; i < g_dim; i++) {
    double got = strtod(r->element[i]->str, NULL); /* RESP2: as text */
    if (fabs(got - want[i]) > 1e-4)
      fail_msg("EMBED ARRAY [%d]: %g, model %g", i, got, want[i]);
  }
  freeReplyObject(r);
  /* nothing of the refused commands was written */
  expect_int(hcmd(c, "EXISTS a b x"), 1);
  free(v);
  free(inf);
  redisFree(c);
  stop_server(&s);
  server_done(&s);
}

static int group_setup(void **state) {
  (void)state;
  signal(SIGPIPE, SIG_IGN);
  if (vlm_clip_load(MODEL_DIR, NULL, &g_clip) < 0) {
    fprintf(stderr, "cannot load %s: %s\n", MODEL_DIR, vlm_errmsg());
    return -1;
  }
  g_dim = vlm_clip_dim(g_clip);
  char bin[256];
  snprintf(bin, sizeof bin, "%s/vlmdb", build_dir());
  if (access(bin, X_OK) != 0) {
    fprintf(stderr, "%s is not built\n", bin);
    return -1;
  }
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  for (int i = 0; i < 8; i++)
    if (g_live[i]) {
      if (g_live[i]->pid) {
        kill(g_live[i]->pid, SIGKILL);
        waitpid(g_live[i]->pid, NULL, 0);
      }
      rm_rf(g_live[i]->dir);
    }
  vlm_clip_free(g_clip);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_connection_commands),
      cmocka_unit_test(test_write_read_search),
      cmocka_unit_test(test_backup_command),
      cmocka_unit_test(test_multi_exec),
      cmocka_unit_test(test_update_commands),
      cmocka_unit_test(test_add_keeps_images),
      cmocka_unit_test(test_resp3),
      cmocka_unit_test(test_auth),
      cmocka_unit_test(test_pipeline_10000),
      cmocka_unit_test(test_pipeline_order),
      cmocka_unit_test(test_inline_reads),
      cmocka_unit_test(test_redis_cli),
      cmocka_unit_test(test_client_tools),
      cmocka_unit_test(test_scan),
      cmocka_unit_test(test_hostile_input),
      cmocka_unit_test(test_many_connections),
      cmocka_unit_test(test_server_limits),
      cmocka_unit_test(test_graceful_shutdown),
      cmocka_unit_test(test_batching),
      cmocka_unit_test(test_kill9_under_load),
      cmocka_unit_test(test_server_api),
      cmocka_unit_test(test_command_refusals),
      cmocka_unit_test(test_reembed_while_serving),
      cmocka_unit_test(test_reembed_final_refuses_writes),
      cmocka_unit_test(test_reembed_server_killed),
  };
  const char *only = getenv("NET_TEST"); /* run one test: NET_TEST=name */
  if (only && *only)
    cmocka_set_test_filter(only);
  return cmocka_run_group_tests_name("net", tests, group_setup,
                                     group_teardown);
}
