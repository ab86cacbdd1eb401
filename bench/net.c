/* net.c - `vlmdb serve` under load, with a real redis-server as the anchor.
 *
 *   build/bench/net [--n ITEMS] [--dim DIM] [--threads T] [--seconds S]
 *                   [--model DIR] [--skip ping,vector,text,http] [--dir TMPDIR]
 *                   [--vec-db DIR]   (reuse a database of image vectors)
 *                   [--rounds R] [--queries Q] [--keep]
 *
 * 1. PING: redis-benchmark -t ping (PING_INLINE and PING_MBULK), 50
 *    clients, without and with pipelining (-P 16), against redis-server and
 *    vlmdb serve started on spare loopback ports in the same run,
 *    alternating, best of three each.  Goal: vlmdb >= 90% of redis-server.
 * 2. Vector search: ITEMS clustered unit vectors of DIM (default 100,000 x
 *    512; clusters of about 100 drawn as bench/search draws them, so the
 *    database tunes a moderate efSearch) in an HNSW32 database (or --vec-db DIR, any database with image
 *    vectors); the same k=10 queries through the library in process
 *    (vlm_db_search) and through the server (hiredis clients sending SEARCH
 *    VECTOR with the raw float32 bytes, T worker threads), with one query
 *    in flight and with two (two threads / two clients, each waiting for
 *    its answer), plus the server's throughput with 4 clients each keeping
 *    8 requests in flight.  The two sides alternate for R rounds (default
 *    3) of Q queries per figure (default 10,000); each round prints both
 *    sides and their ratio, the last line the best of each side with the
 *    load average.  Goal: the server >= 90% of the library.  Beside them,
 *    the transport alone: the same client sending each query's bytes to a
 *    real redis-server (SET q <bytes>), whose time added to the library's
 *    gives the ceiling any server could reach; the server / ceiling ratio
 *    is what the server itself costs.  The items
 *    have image vectors only and the queries say TARGET IMAGE, so both
 *    sides measure the HNSW index alone.
 * 3. Text search end to end (embedding + search): 50 clients, each one
 *    request at a time, SEARCH TEXT ... K 10 against a database bound to
 *    the model (ITEMS random image vectors of the model's dimension; TARGET
 *    IMAGE: text-to-image retrieval), for
 *    S seconds; QPS, p50 and p99 latency; meanwhile one more client sends
 *    PING every 2 ms and reports its p99 (the loop must stay responsive).
 *    Run with dynamic batching on (default window) and off.
 * 4. HTTP beside RESP, same server, same run: 50 clients one request at a
 *    time for S seconds each, text search (SEARCH TEXT ... K 10 TARGET
 *    IMAGE RETURN 1 has_thumb against GET /v1/search?text=...&k=10&target=
 *    image&fields=, which runs that same command) and embedding (EMBED TEXT ... ARRAY
 *    against POST /v1/embed); QPS, p50, p99 and HTTP's overhead.  Goal:
 *    HTTP within 15% of RESP.  The HTTP client is a keep-alive raw socket.
 *
 * Every server is a real `vlmdb serve` process (the binary beside this
 * one's directory: build/vlmdb), stopped with SIGTERM.  Numbers go to
 * stdout; run it niced on a shared machine and read them as such.
 */
#include <errno.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlmdb.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench/net: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static double rng_normal(void) {
  /* Box-Muller over xorshift. */
  double u[2];
  for (int i = 0; i < 2; i++) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    u[i] = ((rng_state >> 11) + 0.5) / 9007199254740992.0;
  }
  return sqrt(-2 * log(u[0])) * cos(2 * M_PI * u[1]);
}

static void random_unit(float *v, int dim) {
  double s = 0;
  for (int i = 0; i < dim; i++) {
    v[i] = (float)rng_normal();
    s += (double)v[i] * v[i];
  }
  s = sqrt(s);
  for (int i = 0; i < dim; i++)
    v[i] = (float)(v[i] / s);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double percentile(double *v, size_t n, double p) {
  if (n == 0)
    return NAN;
  qsort(v, n, sizeof *v, cmp_double);
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i];
}

/* ---- processes ---- */

static char g_vlmdb[PATH_MAX];

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
    die("no free port: %s", strerror(errno));
  close(fd);
  return ntohs(sa.sin_port);
}

/* Start a child with stdout to a pipe (returned in *out_fd, or closed). */
static pid_t spawn(const char *const *argv, int *out_fd, const char *log) {
  int p[2];
  if (pipe(p) < 0)
    die("pipe");
  pid_t pid = fork();
  if (pid < 0)
    die("fork");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(p[1], 1);
    FILE *f = fopen(log ? log : "/dev/null", "a");
    if (f)
      dup2(fileno(f), 2);
    close(p[0]);
    close(p[1]);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(p[1]);
  if (out_fd)
    *out_fd = p[0];
  else
    close(p[0]);
  return pid;
}

static void stop(pid_t pid) {
  kill(pid, SIGTERM);
  int status;
  for (int i = 0; i < 3000; i++) {
    if (waitpid(pid, &status, WNOHANG) == pid)
      return;
    usleep(10000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
}

typedef struct {
  pid_t pid;
  int port;
  int http_port; /* vlmdb: from its "http on" line */
} server;

static server start_vlmdb(const char *db, const char *model,
                          const char *const *extra, const char *log) {
  const char *argv[32] = {g_vlmdb, "serve", "--db", db, "--port", "0"};
  int n = 6;
  if (model) {
    argv[n++] = "--model";
    argv[n++] = model;
  }
  for (int i = 0; extra && extra[i]; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  int fd;
  server s = {spawn(argv, &fd, log), 0, 0};
  char line[256];
  size_t len = 0;
  while (len < sizeof line - 1) {
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, 60000) <= 0 || read(fd, line + len, 1) != 1)
      break;
    if (line[len++] == '\n')
      break;
  }
  line[len] = '\0';
  char line2[256];
  size_t len2 = 0;
  while (len2 < sizeof line2 - 1) { /* written with the first */
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, 0) <= 0 || read(fd, line2 + len2, 1) != 1)
      break;
    if (line2[len2++] == '\n')
      break;
  }
  line2[len2] = '\0';
  close(fd);
  char *colon = strrchr(line, ':');
  if (!strstr(line, "listening on") || !colon)
    die("vlmdb serve did not start (see %s)", log);
  s.port = atoi(colon + 1);
  char *colon2 = strrchr(line2, ':');
  s.http_port = strstr(line2, "http on") && colon2 ? atoi(colon2 + 1) : 0;
  return s;
}

static server start_redis(void) {
  server s = {0, free_port(), 0};
  char port[16];
  snprintf(port, sizeof port, "%d", s.port);
  const char *argv[] = {"redis-server", "--port", port, "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", NULL};
  s.pid = spawn(argv, NULL, NULL);
  for (int i = 0; i < 500; i++) {
    redisContext *c = redisConnect("127.0.0.1", s.port);
    if (c && !c->err) {
      redisReply *r = redisCommand(c, "PING");
      int ok = r && r->type == REDIS_REPLY_STATUS;
      if (r)
        freeReplyObject(r);
      redisFree(c);
      if (ok)
        return s;
    } else if (c) {
      redisFree(c);
    }
    usleep(10000);
  }
  die("redis-server did not start on port %d", s.port);
  return s;
}

/* ======================================================================
 * 1. PING with redis-benchmark
 * ==================================================================== */

/* rps of PING_INLINE and PING_MBULK from redis-benchmark --csv. */
static void redis_benchmark_ping(int port, int pipeline, int requests,
                                 double rps[2]) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "redis-benchmark -h 127.0.0.1 -p %d -c 50 -n %d "
           "-P %d -t ping --csv 2>/dev/null", port, requests, pipeline);
  FILE *p = popen(cmd, "r");
  if (!p)
    die("redis-benchmark");
  char line[512];
  rps[0] = rps[1] = 0;
  while (fgets(line, sizeof line, p)) {
    double v;
    if (sscanf(line, "\"PING_INLINE\",\"%lf\"", &v) == 1)
      rps[0] = v;
    else if (sscanf(line, "\"PING_MBULK\",\"%lf\"", &v) == 1)
      rps[1] = v;
  }
  if (pclose(p) != 0 || rps[0] == 0 || rps[1] == 0)
    die("redis-benchmark against port %d failed", port);
}

static void bench_ping(const char *dir) {
  char db[PATH_MAX], log[PATH_MAX];
  snprintf(db, sizeof db, "%s/ping.db", dir);
  snprintf(log, sizeof log, "%s/ping.log", dir);
  vlm_db_config cfg = {0};
  cfg.dim = 8;
  cfg.index_factory = "Flat";
  cfg.model_id = "bench-no-model";
  vlm_db *h;
  if (vlm_db_create(db, &cfg, &h) < 0)
    die("create %s: %s", db, vlm_errmsg());
  vlm_db_close(h);
  server redis = start_redis();
  server vlm = start_vlmdb(db, NULL, NULL, log);
  printf("\n== PING, 50 clients (redis-benchmark; best of 3, alternating)\n");
  printf("%-22s %14s %14s %8s\n", "", "redis-server", "vlmdb serve",
         "ratio");
  const int pipelines[2] = {1, 16};
  for (int pi = 0; pi < 2; pi++) {
    int n = pipelines[pi] == 1 ? 200000 : 2000000;
    double best_r[2] = {0, 0}, best_v[2] = {0, 0};
    for (int round = 0; round < 3; round++) {
      double r[2], v[2];
      redis_benchmark_ping(redis.port, pipelines[pi], n, r);
      redis_benchmark_ping(vlm.port, pipelines[pi], n, v);
      for (int t = 0; t < 2; t++) {
        best_r[t] = r[t] > best_r[t] ? r[t] : best_r[t];
        best_v[t] = v[t] > best_v[t] ? v[t] : best_v[t];
      }
    }
    const char *names[2] = {"PING_INLINE", "PING_MBULK"};
    for (int t = 0; t < 2; t++)
      printf("%-11s -P %-2d     %14.0f %14.0f %7.1f%%\n", names[t],
             pipelines[pi], best_r[t], best_v[t],
             100.0 * best_v[t] / best_r[t]);
  }
  stop(vlm.pid);
  stop(redis.pid);
}

/* ======================================================================
 * 2. Vector search: in process vs through the server
 * ==================================================================== */

typedef struct {
  vlm_db *db;
  const float *queries;
  int nq, dim, k;
  int next; /* shared cursor */
  pthread_mutex_t mu;
  double *lat;
  int port, depth;
  int floor; /* send SET q <the query's bytes> (to redis-server) instead */
} vec_job;

static int take(vec_job *j, int n) {
  pthread_mutex_lock(&j->mu);
  int i = j->next;
  j->next += n;
  pthread_mutex_unlock(&j->mu);
  return i;
}

static void *inproc_worker(void *arg) {
  vec_job *j = arg;
  vlm_search_options o = {0};
  o.k = j->k;
  o.target = VLM_TARGET_IMAGE;
  for (;;) {
    int i = take(j, 1);
    if (i >= j->nq)
      break;
    vlm_hit *hits;
    int nh;
    double t0 = now();
    if (vlm_db_search(j->db, j->queries + (size_t)i * j->dim, &o, &hits,
                      &nh) < 0)
      die("search: %s", vlm_errmsg());
    j->lat[i] = now() - t0;
    if (nh != j->k)
      die("search gave %d hits", nh);
    vlm_hits_free(hits, nh);
  }
  return NULL;
}

static void *server_worker(void *arg) {
  vec_job *j = arg;
  redisContext *c = redisConnect("127.0.0.1", j->port);
  if (!c || c->err)
    die("connect");
  char kbuf[16];
  snprintf(kbuf, sizeof kbuf, "%d", j->k);
  for (;;) {
    int i = take(j, j->depth);
    if (i >= j->nq)
      break;
    int n = i + j->depth <= j->nq ? j->depth : j->nq - i;
    double t0 = now();
    for (int q = 0; q < n; q++) {
      const char *vec =
          (const char *)(j->queries + (size_t)(i + q) * j->dim);
      size_t vlen = (size_t)j->dim * sizeof(float);
      const char *argv[] = {"SEARCH", "VECTOR", vec, "K", kbuf, "TARGET",
                            "IMAGE"};
      size_t lens[] = {6, 6, vlen, 1, strlen(kbuf), 6, 5};
      const char *set[] = {"SET", "q", vec};
      size_t setl[] = {3, 1, vlen};
      if (j->floor)
        redisAppendCommandArgv(c, 3, set, setl);
      else
        redisAppendCommandArgv(c, 7, argv, lens);
    }
    for (int q = 0; q < n; q++) {
      redisReply *r;
      if (redisGetReply(c, (void **)&r) != REDIS_OK)
        die("reply: %s", c->errstr);
      if (j->floor ? r->type != REDIS_REPLY_STATUS
                   : r->type != REDIS_REPLY_ARRAY || (int)r->elements != j->k)
        die("SEARCH reply type %d: %s", r->type, r->str ? r->str : "");
      j->lat[i + q] = (now() - t0) / n;
      freeReplyObject(r);
    }
  }
  redisFree(c);
  return NULL;
}

static double run_vec(vec_job *j, int nthreads, void *(*fn)(void *)) {
  j->next = 0;
  pthread_t *t = calloc((size_t)nthreads, sizeof *t);
  double t0 = now();
  for (int i = 0; i < nthreads; i++)
    pthread_create(&t[i], NULL, fn, j);
  for (int i = 0; i < nthreads; i++)
    pthread_join(t[i], NULL);
  double dt = now() - t0;
  free(t);
  return j->nq / dt;
}

/* v[dim]: a point of a random cluster among ncentres (centres[ncentres *
 * dim]): centre + N(0, 1.5^2 I / dim), normalised, as bench/search draws
 * them (cos to the centre about 0.55). */
static void clustered_unit(float *v, int dim, const float *centres,
                           int ncentres) {
  const float *c = centres + (size_t)(rng_state % (uint64_t)ncentres) * dim;
  double s = 0, sd = 1.5 / sqrt((double)dim);
  for (int i = 0; i < dim; i++) {
    v[i] = c[i] + (float)(sd * rng_normal());
    s += (double)v[i] * v[i];
  }
  s = sqrt(s);
  for (int i = 0; i < dim; i++)
    v[i] = (float)(v[i] / s);
}

static float *g_centres;
static int g_ncentres;

static void make_centres(int n, int dim) {
  rng_state = 0x9E3779B97F4A7C15ull; /* the same centres every run */
  g_ncentres = n / 100 > 0 ? n / 100 : 1;
  g_centres = malloc((size_t)g_ncentres * dim * sizeof(float));
  for (int i = 0; i < g_ncentres; i++)
    random_unit(g_centres + (size_t)i * dim, dim);
}

static void fill_db(const char *path, int n, int dim, const char *factory,
                    const char *model_id, int clustered) {
  vlm_db_config cfg = {0};
  cfg.dim = dim;
  cfg.index_factory = factory;
  cfg.model_id = model_id;
  vlm_db *db;
  if (vlm_db_create(path, &cfg, &db) < 0)
    die("create %s: %s", path, vlm_errmsg());
  enum { B = 1000 };
  float *vecs = malloc((size_t)B * dim * sizeof(float));
  vlm_item *items = calloc(B, sizeof *items);
  char (*keys)[16] = malloc(B * sizeof *keys);
  double t0 = now();
  for (int base = 0; base < n; base += B) {
    int m = n - base < B ? n - base : B;
    for (int i = 0; i < m; i++) {
      if (clustered)
        clustered_unit(vecs + (size_t)i * dim, dim, g_centres, g_ncentres);
      else
        random_unit(vecs + (size_t)i * dim, dim);
      snprintf(keys[i], sizeof keys[i], "%012d", base + i);
      items[i].key = keys[i];
      items[i].image_vec = vecs + (size_t)i * dim;
    }
    if (vlm_db_put(db, items, m, 0, NULL) < 0)
      die("put: %s", vlm_errmsg());
  }
  if (vlm_db_checkpoint(db) < 0)
    die("checkpoint: %s", vlm_errmsg());
  vlm_db_close(db);
  fprintf(stderr, "  (%s: %d x %d %s built in %.1f s)\n", path, n, dim,
          factory, now() - t0);
  free(vecs);
  free(items);
  free(keys);
}

static void loadavg(char *out, size_t cap) {
  FILE *f = fopen("/proc/loadavg", "r");
  out[0] = '\0';
  if (f) {
    if (fgets(out, (int)cap, f))
      out[strcspn(out, " ")] = '\0'; /* the 1-minute figure */
    fclose(f);
  }
}

/* One side's rates in one round: one query in flight, two, and (server
 * only) 4 clients x 8 pipelined. */
typedef struct {
  double c1, c2, piped, p50_us;
} vec_rates;

/* One and two in flight (and, piped, 4 clients x 8) through fn: the
 * library in process, or the server on j->port; after a warm-up. */
static vec_rates drive(vec_job *j, int nq, int piped, void *(*fn)(void *)) {
  vec_rates r = {0};
  j->depth = 1;
  j->nq = nq / 4;
  run_vec(j, 2, fn); /* warm up */
  j->nq = nq;
  r.c1 = run_vec(j, 1, fn);
  r.p50_us = percentile(j->lat, (size_t)j->nq, 0.5) * 1e6;
  r.c2 = run_vec(j, 2, fn);
  if (piped) {
    j->depth = 8;
    r.piped = run_vec(j, 4, fn);
  }
  return r;
}

static vec_rates measure_library(vec_job *j, const char *db, int nq) {
  if (vlm_db_open(db, NULL, &j->db) < 0)
    die("open: %s", vlm_errmsg());
  vec_rates r = drive(j, nq, 0, inproc_worker);
  vlm_db_close(j->db);
  j->db = NULL;
  return r;
}

static vec_rates measure_server(vec_job *j, const char *db, const char *log,
                                int threads, int nq) {
  char tbuf[16];
  snprintf(tbuf, sizeof tbuf, "%d", threads);
  const char *extra[] = {"--threads", tbuf, NULL};
  /* the database names no model: serve it without one (the default
   * model found beside the binary would be refused as not its own) */
  setenv("VLMDB_MODEL", "/nonexistent/vlmdb-bench-no-model", 1);
  server s = start_vlmdb(db, NULL, extra, log);
  unsetenv("VLMDB_MODEL");
  j->port = s.port;
  vec_rates r = drive(j, nq, 1, server_worker);
  stop(s.pid);
  return r;
}

/* The transport alone: the same client sending each query's bytes to a
 * real redis-server (SET q <bytes>, answered +OK), one and two in
 * flight.  What a request costs the client, the kernel and a server loop
 * that does almost nothing: the library's time plus this is the best any
 * server could answer these searches in. */
static vec_rates measure_floor(vec_job *j, int nq) {
  server s = start_redis();
  j->port = s.port;
  j->floor = 1;
  vec_rates r = drive(j, nq, 0, server_worker);
  j->floor = 0;
  stop(s.pid);
  return r;
}

/* Requests per second when each costs a library search and a trip. */
static double ceiling(double lib_qps, double floor_qps) {
  return 1 / (1 / lib_qps + 1 / floor_qps);
}

/* The library (vlm_db_search in this process) and the server (SEARCH
 * VECTOR over TCP to `vlmdb serve`) on the same database and queries,
 * alternating, ROUNDS times; each round's rates and their ratio are
 * printed, then the best of each side. */
static void bench_vector(const char *dir, int n, int dim, int threads,
                         const char *reuse, int rounds, int nq) {
  char db[PATH_MAX], log[PATH_MAX];
  snprintf(db, sizeof db, "%s/vec.db", dir);
  snprintf(log, sizeof log, "%s/vec.log", dir);
  if (reuse) {
    vlm_db *h;
    vlm_db_info info;
    vlm_db_open_options ro = {0};
    ro.readonly = 1;
    if (vlm_db_open(reuse, &ro, &h) < 0 || vlm_db_stat(h, &info) < 0)
      die("%s: %s", reuse, vlm_errmsg());
    vlm_db_close(h);
    n = (int)info.items;
    dim = info.dim;
    snprintf(db, sizeof db, "%s", reuse);
    make_centres(n, dim); /* the same seed: the centres it was built with */
  } else {
    make_centres(n, dim);
    fill_db(db, n, dim, "HNSW32", "bench-no-model", 1);
  }
  vec_job j = {0};
  j.dim = dim;
  j.k = 10;
  pthread_mutex_init(&j.mu, NULL);
  float *q = malloc((size_t)nq * dim * sizeof(float));
  for (int i = 0; i < nq; i++)
    clustered_unit(q + (size_t)i * dim, dim, g_centres, g_ncentres);
  j.queries = q;
  j.lat = calloc((size_t)nq, sizeof *j.lat);

  char la0[32], la1[32];
  loadavg(la0, sizeof la0);
  printf("\n== Vector search, k=10, HNSW32, %d x %d, server worker threads "
         "%d, %d queries per figure, load %s\n", n, dim, threads, nq, la0);
  printf("%-6s %-22s %10s %10s %10s %14s\n", "round", "", "1 in flight",
         "2 in flight", "4 x 8 piped", "p50 alone");
  vec_rates best_lib = {0}, best_srv = {0};
  double best_ceil[2] = {0, 0};
  for (int r = 0; r < rounds; r++) {
    vec_rates lib = measure_library(&j, db, nq);
    vec_rates srv = measure_server(&j, db, log, threads, nq);
    vec_rates flo = measure_floor(&j, nq);
    double c1 = ceiling(lib.c1, flo.c1), c2 = ceiling(lib.c2, flo.c2);
    printf("%-6d %-22s %10.0f %10.0f %10s %11.0f us\n", r + 1,
           "library (vlm_db_search)", lib.c1, lib.c2, "", lib.p50_us);
    printf("%-6s %-22s %10.0f %10.0f %10.0f %11.0f us\n", "",
           "server (SEARCH VECTOR)", srv.c1, srv.c2, srv.piped, srv.p50_us);
    printf("%-6s %-22s %10.0f %10.0f %10s %11.0f us\n", "",
           "redis-server SET query", flo.c1, flo.c2, "", flo.p50_us);
    printf("%-6s %-22s %10.0f %10.0f\n", "", "ceiling: library + trip",
           c1, c2);
    printf("%-6s %-22s %9.1f%% %9.1f%%\n", "", "server / library",
           100 * srv.c1 / lib.c1, 100 * srv.c2 / lib.c2);
    printf("%-6s %-22s %9.1f%% %9.1f%%   (the ceiling is %.1f%% / %.1f%% of "
           "the library)\n", "", "server / ceiling", 100 * srv.c1 / c1,
           100 * srv.c2 / c2, 100 * c1 / lib.c1, 100 * c2 / lib.c2);
    if (srv.c1 / c1 > best_ceil[0]) best_ceil[0] = srv.c1 / c1;
    if (srv.c2 / c2 > best_ceil[1]) best_ceil[1] = srv.c2 / c2;
    if (lib.c1 > best_lib.c1) best_lib.c1 = lib.c1;
    if (lib.c2 > best_lib.c2) best_lib.c2 = lib.c2;
    if (srv.c1 > best_srv.c1) best_srv.c1 = srv.c1;
    if (srv.c2 > best_srv.c2) best_srv.c2 = srv.c2;
    if (srv.piped > best_srv.piped) best_srv.piped = srv.piped;
  }
  loadavg(la1, sizeof la1);
  printf("best of %d: library %.0f / %.0f QPS, server %.0f / %.0f QPS (1 / 2 "
         "in flight): server at %.1f%% / %.1f%% of the library (goal >= "
         "90%%); load %s -> %s\n", rounds, best_lib.c1, best_lib.c2,
         best_srv.c1, best_srv.c2, 100 * best_srv.c1 / best_lib.c1,
         100 * best_srv.c2 / best_lib.c2, la0, la1);
  printf("best server / ceiling (library + a redis-server trip of the same "
         "bytes): %.1f%% / %.1f%%\n", 100 * best_ceil[0], 100 * best_ceil[1]);
  free(q);
  free(j.lat);
  free(g_centres);
  g_centres = NULL;
  pthread_mutex_destroy(&j.mu);
}

/* ======================================================================
 * 3. Text search end to end, and PING while it runs
 * ==================================================================== */

typedef struct {
  int port;
  double until;
  double *lat;
  size_t n, cap;
  int id;
  int ping_every_us;  /* > 0: the PING prober */
} text_client;

static const char *const phrases[] = {
    "a photo of a cat", "a red sports car", "a dog on the beach",
    "clip art of a smiling sun", "the ringed planet saturn",
    "a bowl of fruit on a table", "a city street at night",
    "two people riding bicycles", "a mountain lake at sunrise",
    "a plate of pasta"};

static void *text_worker(void *arg) {
  text_client *tc = arg;
  redisContext *c = redisConnect("127.0.0.1", tc->port);
  if (!c || c->err)
    die("connect");
  unsigned i = (unsigned)tc->id * 7919u;
  while (now() < tc->until) {
    double t0 = now();
    redisReply *r;
    if (tc->ping_every_us) {
      r = redisCommand(c, "PING");
    } else {
      char text[96];
      snprintf(text, sizeof text, "%s %u",
               phrases[i % (sizeof phrases / sizeof phrases[0])], i % 1000);
      r = redisCommand(c, "SEARCH TEXT %s K 10 TARGET IMAGE", text);
    }
    if (!r || r->type == REDIS_REPLY_ERROR)
      die("text client: %s", r ? r->str : c->errstr);
    freeReplyObject(r);
    double dt = now() - t0;
    if (tc->n == tc->cap) {
      tc->cap = tc->cap ? tc->cap * 2 : 4096;
      tc->lat = realloc(tc->lat, tc->cap * sizeof *tc->lat);
    }
    tc->lat[tc->n++] = dt;
    i++;
    if (tc->ping_every_us)
      usleep((useconds_t)tc->ping_every_us);
  }
  redisFree(c);
  return NULL;
}

static void text_run(const char *db, const char *model, const char *dir,
                     double seconds, int threads, int batch_us) {
  char log[PATH_MAX], tbuf[16], bbuf[16];
  snprintf(log, sizeof log, "%s/text.log", dir);
  snprintf(tbuf, sizeof tbuf, "%d", threads);
  snprintf(bbuf, sizeof bbuf, "%d", batch_us);
  const char *extra[] = {"--threads", tbuf, "--batch-window-us", bbuf, NULL};
  server s = start_vlmdb(db, model, extra, log);
  enum { NC = 50 };
  text_client tc[NC + 1];
  pthread_t t[NC + 1];
  double until = now() + seconds;
  for (int i = 0; i <= NC; i++) {
    memset(&tc[i], 0, sizeof tc[i]);
    tc[i].port = s.port;
    tc[i].until = until;
    tc[i].id = i;
    tc[i].ping_every_us = i == NC ? 2000 : 0;
    pthread_create(&t[i], NULL, text_worker, &tc[i]);
  }
  for (int i = 0; i <= NC; i++)
    pthread_join(t[i], NULL);
  size_t total = 0;
  for (int i = 0; i < NC; i++)
    total += tc[i].n;
  double *all = malloc(total * sizeof *all);
  size_t k = 0;
  for (int i = 0; i < NC; i++) {
    memcpy(all + k, tc[i].lat, tc[i].n * sizeof *all);
    k += tc[i].n;
    free(tc[i].lat);
  }
  redisContext *c = redisConnect("127.0.0.1", s.port);
  redisReply *r = redisCommand(c, "INFO stats");
  long long batches = 0, items = 0, largest = 0;
  if (r && r->str) {
    char *p;
    if ((p = strstr(r->str, "text_embed_batches:")))
      batches = atoll(p + 19);
    if ((p = strstr(r->str, "text_embeds_batched:")))
      items = atoll(p + 20);
    if ((p = strstr(r->str, "text_largest_batch:")))
      largest = atoll(p + 19);
  }
  if (r)
    freeReplyObject(r);
  redisFree(c);
  stop(s.pid);
  double p50 = percentile(all, total, 0.5) * 1e3;
  double p99 = percentile(all, total, 0.99) * 1e3;
  double ping99 = percentile(tc[NC].lat, tc[NC].n, 0.99) * 1e3;
  char batch[64];
  if (batch_us > 0)
    snprintf(batch, sizeof batch, "window %d us: mean %.1f, max %lld",
             batch_us, batches ? (double)items / batches : 0.0, largest);
  else
    snprintf(batch, sizeof batch, "off");
  printf("%-40s %8.0f %9.2f %9.2f %10.3f\n", batch, total / seconds, p50, p99,
         ping99);
  free(all);
  free(tc[NC].lat);
}

static void bench_text(const char *dir, const char *model, int n,
                       double seconds, int threads) {
  vlm_clip *clip;
  if (vlm_clip_load(model, NULL, &clip) < 0)
    die("model %s: %s", model, vlm_errmsg());
  char db[PATH_MAX];
  snprintf(db, sizeof db, "%s/text.db", dir);
  fill_db(db, n, vlm_clip_dim(clip), "HNSW32", vlm_clip_model_id(clip), 0);
  printf("\n== Text search end to end (embed + search), k=10, HNSW32, %d "
         "items,\n   model %s, 50 clients one request at a time, %.0f s, %d "
         "worker threads\n", n, model, seconds, threads);
  printf("%-40s %8s %9s %9s %10s\n", "batching", "QPS", "p50 ms", "p99 ms",
         "PING p99 ms");
  vlm_clip_free(clip);
  text_run(db, model, dir, seconds, threads, 1000);
  text_run(db, model, dir, seconds, threads, 0);
}

/* ======================================================================
 * 4. HTTP beside RESP
 * ==================================================================== */

typedef struct {
  int port, http;     /* http: use the HTTP port */
  int embed;          /* EMBED instead of SEARCH */
  double until;
  double *lat;
  size_t n, cap;
  int id;
} proto_client;

/* One HTTP request on a keep-alive socket, the response read whole
 * (status line, Content-Length, body); its status. */
static int http_call(int fd, const char *req, size_t len, char *buf,
                     size_t cap) {
  size_t off = 0;
  while (off < len) {
    ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
    if (w <= 0)
      die("http send: %s", strerror(errno));
    off += (size_t)w;
  }
  size_t got = 0, need = 0;
  char *body = NULL;
  for (;;) {
    ssize_t r = recv(fd, buf + got, cap - 1 - got, 0);
    if (r <= 0)
      die("http recv: %s", r ? strerror(errno) : "closed");
    got += (size_t)r;
    buf[got] = '\0';
    if (!body && (body = strstr(buf, "\r\n\r\n"))) {
      char *cl = strcasestr(buf, "Content-Length: ");
      if (!cl)
        die("http: no Content-Length");
      need = (size_t)(body + 4 - buf) + strtoul(cl + 16, NULL, 10);
      if (need >= cap)
        die("http: response too large");
    }
    if (body && got >= need)
      break;
  }
  return atoi(buf + 9);
}

static int tcp_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
    die("connect: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void *proto_worker(void *arg) {
  proto_client *pc = arg;
  redisContext *c = NULL;
  int fd = -1;
  char *buf = malloc(1 << 20);
  if (pc->http)
    fd = tcp_open(pc->port);
  else if (!(c = redisConnect("127.0.0.1", pc->port)) || c->err)
    die("connect");
  unsigned i = (unsigned)pc->id * 7919u;
  while (now() < pc->until) {
    char text[96], req[512];
    snprintf(text, sizeof text, "%s %u",
             phrases[i % (sizeof phrases / sizeof phrases[0])], i % 1000);
    double t0 = now();
    if (pc->http) {
      int n;
      if (pc->embed) {
        char body[160];
        int bl = snprintf(body, sizeof body, "{\"text\":\"%s\"}", text);
        n = snprintf(req, sizeof req, "POST /v1/embed HTTP/1.1\r\nHost: b"
                     "\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n%s", bl, body);
      } else {
        for (char *p = text; *p; p++)
          if (*p == ' ')
            *p = '+';
        n = snprintf(req, sizeof req, "GET /v1/search?text=%s&k=10&target="
                     "image&fields= HTTP/1.1\r\nHost: b\r\n\r\n", text);
      }
      int st = http_call(fd, req, (size_t)n, buf, 1 << 20);
      if (st != 200)
        die("HTTP status %d: %.200s", st, buf);
    } else {
      redisReply *r = pc->embed
                          ? redisCommand(c, "EMBED TEXT %s ARRAY", text)
                          : redisCommand(c, "SEARCH TEXT %s K 10 TARGET IMAGE "
                                         "RETURN 1 has_thumb", text);
      if (!r || r->type == REDIS_REPLY_ERROR)
        die("RESP: %s", r ? r->str : c->errstr);
      freeReplyObject(r);
    }
    double dt = now() - t0;
    if (pc->n == pc->cap) {
      pc->cap = pc->cap ? pc->cap * 2 : 4096;
      pc->lat = realloc(pc->lat, pc->cap * sizeof *pc->lat);
    }
    pc->lat[pc->n++] = dt;
    i++;
  }
  if (c)
    redisFree(c);
  if (fd >= 0)
    close(fd);
  free(buf);
  return NULL;
}

/* QPS, p50 and p99 (ms) of one protocol and request kind. */
static void proto_run(const server *s, int http, int embed, double seconds,
                      double *qps, double *p50, double *p99) {
  enum { NC = 50 };
  proto_client pc[NC];
  pthread_t t[NC];
  double until = now() + seconds;
  for (int i = 0; i < NC; i++) {
    memset(&pc[i], 0, sizeof pc[i]);
    pc[i].port = http ? s->http_port : s->port;
    pc[i].http = http;
    pc[i].embed = embed;
    pc[i].until = until;
    pc[i].id = i;
    pthread_create(&t[i], NULL, proto_worker, &pc[i]);
  }
  for (int i = 0; i < NC; i++)
    pthread_join(t[i], NULL);
  size_t total = 0, k = 0;
  for (int i = 0; i < NC; i++)
    total += pc[i].n;
  double *all = malloc(total * sizeof *all);
  for (int i = 0; i < NC; i++) {
    memcpy(all + k, pc[i].lat, pc[i].n * sizeof *all);
    k += pc[i].n;
    free(pc[i].lat);
  }
  *qps = total / seconds;
  *p50 = percentile(all, total, 0.5) * 1e3;
  *p99 = percentile(all, total, 0.99) * 1e3;
  free(all);
}

static void bench_http(const char *dir, const char *model, int n,
                       double seconds, int threads) {
  vlm_clip *clip;
  if (vlm_clip_load(model, NULL, &clip) < 0)
    die("model %s: %s", model, vlm_errmsg());
  char db[PATH_MAX], log[PATH_MAX], tbuf[16];
  snprintf(db, sizeof db, "%s/http.db", dir);
  snprintf(log, sizeof log, "%s/http.log", dir);
  fill_db(db, n, vlm_clip_dim(clip), "HNSW32", vlm_clip_model_id(clip), 0);
  vlm_clip_free(clip);
  snprintf(tbuf, sizeof tbuf, "%d", threads);
  const char *extra[] = {"--threads", tbuf, NULL};
  server s = start_vlmdb(db, model, extra, log);
  if (!s.http_port)
    die("the server has no HTTP port");
  printf("\n== HTTP beside RESP, same server: 50 clients one request at a "
         "time, %.0f s each,\n   %d items, HNSW32, model %s, %d worker "
         "threads\n", seconds, n, model, threads);
  printf("%-44s %8s %9s %9s\n", "", "QPS", "p50 ms", "p99 ms");
  static const char *names[2][2] = {
      {"RESP  SEARCH TEXT ... K 10 TARGET IMAGE", "HTTP  GET /v1/search"},
      {"RESP  EMBED TEXT ... ARRAY", "HTTP  POST /v1/embed"}};
  for (int embed = 0; embed < 2; embed++) {
    double q[2], p50[2], p99[2];
    for (int http = 0; http < 2; http++) {
      proto_run(&s, http, embed, 1, &q[http], &p50[http], &p99[http]);
      proto_run(&s, http, embed, seconds, &q[http], &p50[http], &p99[http]);
      printf("%-44s %8.0f %9.2f %9.2f\n", names[embed][http], q[http],
             p50[http], p99[http]);
    }
    printf("HTTP overhead (%s): %.1f%% in throughput\n",
           embed ? "embed" : "search", 100.0 * (q[0] / q[1] - 1));
  }
  stop(s.pid);
}

/* ====================================================================== */

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

int main(int argc, char **argv) {
  int n = 100000, dim = 512, threads = 0;
  double seconds = 5;
  const char *model = "tests/fixtures/clip-tiny", *skip = "", *tmp = "/tmp";
  const char *vec_db = NULL;
  int rounds = 3, queries = 10000, keep = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--n") && v)
      n = atoi(v), i++;
    else if (!strcmp(a, "--dim") && v)
      dim = atoi(v), i++;
    else if (!strcmp(a, "--threads") && v)
      threads = atoi(v), i++;
    else if (!strcmp(a, "--seconds") && v)
      seconds = atof(v), i++;
    else if (!strcmp(a, "--model") && v)
      model = v, i++;
    else if (!strcmp(a, "--skip") && v)
      skip = v, i++;
    else if (!strcmp(a, "--dir") && v)
      tmp = v, i++;
    else if (!strcmp(a, "--vec-db") && v)
      vec_db = v, i++;
    else if (!strcmp(a, "--keep"))
      keep = 1;
    else if (!strcmp(a, "--rounds") && v)
      rounds = atoi(v), i++;
    else if (!strcmp(a, "--queries") && v)
      queries = atoi(v), i++;
    else
      die("usage: %s [--n ITEMS] [--dim DIM] [--threads T] [--seconds S] "
          "[--model DIR] [--skip ping,vector,text,http] [--dir TMPDIR] "
          "[--vec-db DIR] [--rounds R] [--queries Q] [--keep]", argv[0]);
  }
  if (threads <= 0) {
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    threads = c > 0 ? (int)c : 2;
  }
  /* build/bench/net -> build/vlmdb */
  ssize_t len = readlink("/proc/self/exe", g_vlmdb, sizeof g_vlmdb - 1);
  if (len <= 0)
    die("readlink");
  g_vlmdb[len] = '\0';
  char *slash = strrchr(g_vlmdb, '/');
  *slash = '\0';
  slash = strrchr(g_vlmdb, '/');
  if (!slash)
    die("cannot find vlmdb beside %s", g_vlmdb);
  strcpy(slash + 1, "vlmdb");
  if (access(g_vlmdb, X_OK) != 0)
    die("%s is not built (make build/vlmdb)", g_vlmdb);
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);

  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/vlm_bench_net_XXXXXX", tmp);
  if (!mkdtemp(dir))
    die("mkdtemp: %s", strerror(errno));
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  printf("vlmdb serve benchmark: %ld online CPUs; worker threads %d\n", cores,
         threads);
  if (!strstr(skip, "ping"))
    bench_ping(dir);
  if (!strstr(skip, "vector"))
    bench_vector(dir, n, dim, threads, vec_db, rounds < 1 ? 1 : rounds,
                 queries < 100 ? 100 : queries);
  if (!strstr(skip, "text"))
    bench_text(dir, model, n, seconds, threads);
  if (!strstr(skip, "http"))
    bench_http(dir, model, n, seconds, threads);
  if (keep)
    printf("kept %s (its vec.db can be passed to --vec-db)\n", dir);
  else
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}
