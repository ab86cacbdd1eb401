/* cluster.c - SEARCH through a cluster of 1, 2 and 3 shards on this
 * machine, and the coordinator's overhead over one plain node of the same
 * data (issue #19).
 *
 *   build/bench/cluster [--n N] [--queries Q] [--clients C] [--rounds R]
 *                       [--seconds S] [--index Flat,HNSW32] [--dir TMPDIR]
 *                       [--keep]
 *
 * Run from the repository root (the 512-d model is made from
 * tests/fixtures/clip-tiny); needs build/vlmdb and build/bench/shard
 * (`make build bench`).  In one run:
 *
 * 1. Data (not timed): N clustered 512-d unit vectors (default 100,000)
 *    and Q queries (default 1,000) with their exact top-10, written by
 *    `build/bench/shard data` in clip-retrieval's layout, so the vectors
 *    are bench/shard's.  The databases are bound to a model of dimension
 *    512 that embeds nothing here: clip-tiny with its projections made
 *    512 wide (random F16 weights), as bench/shard.sh makes it.
 * 2. Build (not timed): per index (default Flat and HNSW32), one plain
 *    database with all N (`vlmdb init` + `vlmdb ingest --embeddings`) and
 *    the shard databases of 1, 2 and 3 shards (`vlmdb init --cluster MAP
 *    --shard I`, then the same ingest, which keeps the shard's rows); one
 *    map per shard count, even slot ranges, 127.0.0.1 on free ports.  Up
 *    to one build per core at a time; one index at a time, its databases
 *    removed after its tables (unless --keep), so the disk holds one
 *    index's seven databases (about 3 GB at the defaults).  FAISS and OpenBLAS are held to one
 *    thread throughout, builds and servers alike (OMP_NUM_THREADS=1, as
 *    bench/shard.sh does: on a shared 2-core machine their pools spin).
 * 3. Serve: one real `vlmdb serve` per node (`--cluster MAP --shard I`;
 *    the plain one without), all of one index's configurations up at once
 *    (idle ones cost nothing), `--no-http`, the default worker threads.
 *    Clients are hiredis connections, one thread each, one request at a
 *    time: SEARCH VECTOR <Q's float32 bytes> K 10 TARGET IMAGE, as
 *    bench/net sends it, each request to the next node in turn (any node
 *    of a cluster coordinates the search it receives).
 *    a. Answers: every query once per configuration (C clients; this
 *       also warms them up).  Flat: every cluster's top-10 keys, in
 *       order, must equal the plain database's (the run fails otherwise);
 *       recall@10 against the exact top-10 for every configuration (for
 *       HNSW, the cluster's against the plain node's).
 *    b. Speed: R rounds (default 3); in each, the configurations in turn
 *       (plain, 1, 2, 3 shards), each with 1 client and then C clients
 *       (default 8) for S seconds each (default 3), cycling through the
 *       queries.  Each round prints its figures and the 1-shard node
 *       against the plain one; the table gives the best of the R rounds
 *       of each figure (the highest QPS, the lowest p50 and p99).
 *    The coordinator's overhead is the plain node's QPS over the 1-shard
 *    node's (same data, same index, same process count), best against
 *    best, alternated within every round as bench/net alternates the
 *    library and the server.  Goal: at most 20% at one shard.  It is
 *    also given in the nodes' CPU time per query (user + system, from
 *    /proc/PID/stat over each figure, the lowest of the rounds): wall
 *    time on a shared 2-core machine swings with the other jobs, the CPU
 *    a query costs far less.
 *
 * Every table prints the load average (/proc/loadavg) before and after.
 * The work directory (a fresh one under --dir, default /tmp) is removed
 * at the end unless --keep; a failed run keeps it for its logs.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vlm_error.h"
#include "vlm_npy.h"
#include "vlm_slot.h"

#define D 512
#define K 10
#define MAX_SHARDS 3
#define MAX_INDEXES 4

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char g_work[PATH_MAX]; /* the work directory, named when a run fails */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench/cluster: ");
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  if (g_work[0])
    fprintf(stderr, " (logs kept in %s)", g_work);
  fputc('\n', stderr);
  exit(1);
}

static void *xmalloc(size_t n) {
  void *p = calloc(1, n ? n : 1);
  if (!p)
    die("out of memory (%zu bytes)", n);
  return p;
}

/* The 1-, 5- and 15-minute load averages. */
static const char *loadavg(void) {
  static char buf[64];
  buf[0] = '\0';
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fgets(buf, sizeof buf, f)) {
      char *p = buf;
      for (int spaces = 0; *p && spaces < 3; p++)
        spaces += *p == ' ';
      p[p > buf && p[-1] == ' ' ? -1 : 0] = '\0';
    }
    fclose(f);
  }
  return buf;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The p-quantile of v[n] (sorted in place). */
static double percentile(double *v, size_t n, double p) {
  if (n == 0)
    return NAN;
  qsort(v, n, sizeof *v, cmp_double);
  return v[(size_t)(p * (double)(n - 1) + 0.5)];
}

/* ---------------------------------------------------------- processes */

static char g_vlmdb[PATH_MAX], g_shard[PATH_MAX];

/* Run argv to completion, stdout to out_path and stderr to log (either
 * may be NULL: /dev/null); its exit status, or -1 if it was killed. */
static int run(const char *const *argv, const char *out_path, const char *log) {
  pid_t pid = fork();
  if (pid < 0)
    die("fork: %s", strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int out = open(out_path ? out_path : "/dev/null",
                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out >= 0)
      dup2(out, 1);
    if (err >= 0)
      dup2(err, 2);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      die("waitpid: %s", strerror(errno));
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* A port on 127.0.0.1 that nothing listens on now, not among taken[n]. */
static int free_port(const int *taken, int n) {
  for (int tries = 0; tries < 100; tries++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
      die("no free port: %s", strerror(errno));
    close(fd);
    int port = ntohs(sa.sin_port), dup = 0;
    for (int i = 0; i < n; i++)
      dup |= taken[i] == port;
    if (!dup)
      return port;
  }
  die("no free port after 100 tries");
  return 0;
}

/* A `vlmdb serve` node: started by start_node, stopped with SIGTERM. */
typedef struct {
  pid_t pid;
  int port;
} node;

/* Start `vlmdb serve --db db` (with --cluster map --shard shard --port
 * port where map is not NULL, else on a free port) and wait for its
 * "listening on host:port" line. */
static node start_node(const char *db, const char *map, int shard, int port,
                       const char *log) {
  char shard_s[16], port_s[16];
  snprintf(shard_s, sizeof shard_s, "%d", shard);
  snprintf(port_s, sizeof port_s, "%d", map ? port : 0);
  const char *argv[16] = {g_vlmdb, "serve", "--db", db, "--port", port_s,
                          "--no-http"};
  int argc = 7;
  if (map) {
    argv[argc++] = "--cluster";
    argv[argc++] = map;
    argv[argc++] = "--shard";
    argv[argc++] = shard_s;
    /* a busy machine must not turn a slow shard into -CLUSTERDOWN */
    argv[argc++] = "--cluster-timeout";
    argv[argc++] = "30000";
  }
  argv[argc] = NULL;
  int p[2];
  if (pipe(p) < 0)
    die("pipe: %s", strerror(errno));
  node nd = {fork(), 0};
  if (nd.pid < 0)
    die("fork: %s", strerror(errno));
  if (nd.pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(p[1], 1);
    int err = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (err >= 0)
      dup2(err, 2);
    close(p[0]);
    close(p[1]);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(p[1]);
  char line[256];
  size_t len = 0;
  while (len < sizeof line - 1) {
    struct pollfd pfd = {p[0], POLLIN, 0};
    if (poll(&pfd, 1, 120000) <= 0 || read(p[0], line + len, 1) != 1)
      break;
    if (line[len++] == '\n')
      break;
  }
  line[len] = '\0';
  close(p[0]);
  char *colon = strrchr(line, ':');
  if (!strstr(line, "listening on") || !colon)
    die("vlmdb serve --db %s did not start (see %s)", db, log);
  nd.port = atoi(colon + 1);
  return nd;
}

static void stop_node(node *nd) {
  if (nd->pid <= 0)
    return;
  kill(nd->pid, SIGTERM);
  int status;
  for (int i = 0; i < 3000; i++) {
    if (waitpid(nd->pid, &status, WNOHANG) == nd->pid) {
      nd->pid = 0;
      return;
    }
    usleep(10000);
  }
  kill(nd->pid, SIGKILL);
  waitpid(nd->pid, &status, 0);
  nd->pid = 0;
}

/* -------------------------------------------------------------- model */

static void copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  if (!in || !out)
    die("copy %s to %s: %s", from, to, strerror(errno));
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    if (fwrite(buf, 1, n, out) != n)
      die("write %s: %s", to, strerror(errno));
  fclose(in);
  if (fclose(out))
    die("write %s: %s", to, strerror(errno));
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* float to IEEE half, rounded to nearest even; magnitudes below half's
 * normal range become zero (random weights lose nothing by it). */
static uint16_t to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
  int exp = (int)((x >> 23) & 0xff) - 127 + 15;
  if (exp <= 0)
    return (uint16_t)sign;
  if (exp >= 31)
    return (uint16_t)(sign | 0x7c00);
  uint32_t h = sign | (uint32_t)exp << 10 | mant >> 13, rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
    h++;
  return (uint16_t)h;
}

typedef struct {
  const char *name;
  json_t *desc;
  json_int_t start, end;
} tensor;

static int cmp_tensor(const void *a, const void *b) {
  const tensor *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

/* dst: the model of src (a CLIP checkpoint in Hugging Face's layout)
 * with its text and visual projections 512 wide, random N(0, 0.05^2) F16
 * weights, and its config saying so: a model of dimension 512 that the
 * databases can be bound to (no vector is embedded here). */
static void make_model512(const char *src, const char *dst) {
  char a[PATH_MAX], b[PATH_MAX];
  mkdir(dst, 0755);
  static const char *const plain[] = {"merges.txt", "vocab.json",
                                      "preprocessor_config.json"};
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
    snprintf(a, sizeof a, "%s/%s", src, plain[i]);
    snprintf(b, sizeof b, "%s/%s", dst, plain[i]);
    copy_file(a, b);
  }
  snprintf(a, sizeof a, "%s/config.json", src);
  json_error_t jerr;
  json_t *cfg = json_load_file(a, 0, &jerr);
  if (!cfg)
    die("%s: %s (run from the repository root)", a, jerr.text);
  json_object_set_new(cfg, "projection_dim", json_integer(D));
  json_object_set_new(json_object_get(cfg, "text_config"), "projection_dim",
                      json_integer(D));
  json_object_set_new(json_object_get(cfg, "vision_config"), "projection_dim",
                      json_integer(D));
  snprintf(b, sizeof b, "%s/config.json", dst);
  if (json_dump_file(cfg, b, JSON_INDENT(2)))
    die("write %s", b);
  json_decref(cfg);

  snprintf(a, sizeof a, "%s/model.safetensors", src);
  FILE *f = fopen(a, "rb");
  struct stat st;
  if (!f || fstat(fileno(f), &st))
    die("%s: %s", a, strerror(errno));
  uint8_t *file = xmalloc((size_t)st.st_size);
  if (fread(file, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
    die("read %s", a);
  fclose(f);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = hlen << 8 | file[i];
  if (hlen > (uint64_t)st.st_size - 8)
    die("%s: bad header length", a);
  json_t *head = json_loadb((const char *)file + 8, (size_t)hlen, 0, &jerr);
  if (!head)
    die("%s: %s", a, jerr.text);
  const uint8_t *data = file + 8 + hlen;
  size_t nt = json_object_size(head), count = 0;
  tensor *ts = xmalloc(nt * sizeof *ts);
  const char *name;
  json_t *desc;
  json_object_foreach(head, name, desc) {
    if (!strcmp(name, "__metadata__"))
      continue;
    json_t *off = json_object_get(desc, "data_offsets");
    ts[count++] = (tensor){name, desc, json_integer_value(json_array_get(off, 0)),
                           json_integer_value(json_array_get(off, 1))};
  }
  qsort(ts, count, sizeof *ts, cmp_tensor);

  json_t *out = json_object();
  if (json_object_get(head, "__metadata__"))
    json_object_set(out, "__metadata__", json_object_get(head, "__metadata__"));
  uint8_t **blobs = xmalloc(count * sizeof *blobs);
  size_t *lens = xmalloc(count * sizeof *lens);
  json_int_t off = 0;
  uint64_t seed = 18;
  for (size_t i = 0; i < count; i++) {
    json_t *d = json_deep_copy(ts[i].desc);
    if (!strcmp(ts[i].name, "text_projection.weight") ||
        !strcmp(ts[i].name, "visual_projection.weight")) {
      json_int_t cols = json_integer_value(
          json_array_get(json_object_get(d, "shape"), 1));
      lens[i] = (size_t)(D * cols) * 2;
      blobs[i] = xmalloc(lens[i]);
      for (json_int_t j = 0; j < D * cols; j++) {
        double u = ((splitmix(&seed) >> 11) + 1) * (1.0 / 9007199254740993.0);
        double v = (splitmix(&seed) >> 11) * (1.0 / 9007199254740992.0);
        float w = (float)(0.05 * sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
        uint16_t h = to_half(w);
        blobs[i][2 * j] = (uint8_t)h;
        blobs[i][2 * j + 1] = (uint8_t)(h >> 8);
      }
      json_object_set_new(d, "shape", json_pack("[II]", (json_int_t)D, cols));
    } else {
      lens[i] = (size_t)(ts[i].end - ts[i].start);
      blobs[i] = xmalloc(lens[i]);
      memcpy(blobs[i], data + ts[i].start, lens[i]);
    }
    json_object_set_new(d, "data_offsets",
                        json_pack("[II]", off, off + (json_int_t)lens[i]));
    json_object_set_new(out, ts[i].name, d);
    off += (json_int_t)lens[i];
  }
  char *text = json_dumps(out, JSON_COMPACT);
  size_t tlen = strlen(text), padded = (tlen + 7) / 8 * 8;
  snprintf(b, sizeof b, "%s/model.safetensors", dst);
  FILE *g = fopen(b, "wb");
  if (!g)
    die("%s: %s", b, strerror(errno));
  uint8_t len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  fwrite(len8, 1, 8, g);
  fwrite(text, 1, tlen, g);
  for (size_t i = tlen; i < padded; i++)
    fputc(' ', g);
  for (size_t i = 0; i < count; i++) {
    fwrite(blobs[i], 1, lens[i], g);
    free(blobs[i]);
  }
  if (fclose(g))
    die("write %s: %s", b, strerror(errno));
  free(text);
  free(blobs);
  free(lens);
  free(ts);
  json_decref(out);
  json_decref(head);
  free(file);
}

/* -------------------------------------------------------------- build */

/* A configuration: the plain database (nshards 0) or a cluster of
 * nshards shards, for one index. */
typedef struct {
  const char *factory;
  int nshards;             /* 0: plain, no cluster */
  int nnodes;              /* 1 for plain */
  char name[32];           /* "plain", "1 shard", "2 shards" */
  char db[MAX_SHARDS][PATH_MAX];
  node nodes[MAX_SHARDS];
  int64_t *rows;           /* the check pass's top-10 rows, Q x K */
  int efforts[MAX_SHARDS]; /* each node's image_search_effort */
} config;

static char g_map[MAX_SHARDS + 1][PATH_MAX]; /* by shard count */
static int g_ports[MAX_SHARDS + 1][MAX_SHARDS];

/* One map per shard count: even slot ranges, one free port each. */
static void write_maps(const char *dir) {
  int taken[16], ntaken = 0;
  for (int n = 1; n <= MAX_SHARDS; n++) {
    snprintf(g_map[n], sizeof g_map[n], "%s/map-%d.json", dir, n);
    FILE *f = fopen(g_map[n], "w");
    if (!f)
      die("%s: %s", g_map[n], strerror(errno));
    fprintf(f, "{\"shards\": [");
    for (int s = 0; s < n; s++) {
      int port = free_port(taken, ntaken);
      g_ports[n][s] = taken[ntaken++] = port;
      fprintf(f, "%s\n  {\"id\": %d, \"slots\": [[%d, %d]], \"addresses\": "
              "[\"127.0.0.1:%d\"]}", s ? "," : "", s, s * VLM_SLOTS / n,
              (s + 1) * VLM_SLOTS / n - 1, port);
    }
    fprintf(f, "]}\n");
    if (fclose(f))
      die("%s: %s", g_map[n], strerror(errno));
  }
}

typedef struct {
  const char *db, *factory, *map;
  int shard;
  char log[PATH_MAX], json[PATH_MAX];
  double cost; /* for ordering: rows x (an HNSW row costs more) */
  pid_t pid;
} build_job;

/* init + ingest of one database, in a child: exits 0 or 1. */
static pid_t start_build(build_job *b, const char *model, const char *emb) {
  pid_t pid = fork();
  if (pid < 0)
    die("fork: %s", strerror(errno));
  if (pid > 0)
    return pid;
  char shard_s[16];
  snprintf(shard_s, sizeof shard_s, "%d", b->shard);
  const char *init[16] = {g_vlmdb, "init", "--db", b->db, "--model", model,
                          "--index", b->factory};
  if (b->map) {
    init[8] = "--cluster";
    init[9] = b->map;
    init[10] = "--shard";
    init[11] = shard_s;
  }
  const char *ingest[] = {g_vlmdb, "ingest", "--db", b->db, "--embeddings",
                          emb, "--json", "-q", NULL};
  _exit(run(init, NULL, b->log) || run(ingest, b->json, b->log) ? 1 : 0);
}

static int cmp_job(const void *a, const void *b) {
  const build_job *x = a, *y = b;
  return x->cost > y->cost ? -1 : x->cost < y->cost;
}

/* The items `vlmdb ingest --json` wrote. */
static long ingested(const build_job *b) {
  json_error_t jerr;
  json_t *j = json_load_file(b->json, 0, &jerr);
  if (!j)
    die("%s: %s", b->json, jerr.text);
  long n = (long)json_integer_value(json_object_get(j, "ingested"));
  json_decref(j);
  return n;
}

/* Build every database of every configuration, up to ncores at a time. */
static void build_all(config *cfgs, int ncfg, const char *dir,
                      const char *model, const char *emb, long n, int ncores) {
  build_job jobs[MAX_INDEXES * (1 + 1 + 2 + 3)];
  int nj = 0;
  for (int c = 0; c < ncfg; c++)
    for (int s = 0; s < cfgs[c].nnodes; s++) {
      build_job *b = &jobs[nj++];
      memset(b, 0, sizeof *b);
      b->db = cfgs[c].db[s];
      b->factory = cfgs[c].factory;
      b->map = cfgs[c].nshards ? g_map[cfgs[c].nshards] : NULL;
      b->shard = s;
      const char *base = strrchr(b->db, '/') + 1;
      snprintf(b->log, sizeof b->log, "%s/logs/build-%s-%s.log", dir,
               cfgs[c].factory, base);
      snprintf(b->json, sizeof b->json, "%s/logs/build-%s-%s.json", dir,
               cfgs[c].factory, base);
      b->cost = (double)n / (cfgs[c].nshards ? cfgs[c].nshards : 1) *
                (strncmp(b->factory, "HNSW", 4) ? 1 : 30);
    }
  qsort(jobs, (size_t)nj, sizeof *jobs, cmp_job);
  int next = 0, running = 0;
  while (next < nj || running) {
    while (next < nj && running < ncores) {
      jobs[next].pid = start_build(&jobs[next], model, emb);
      next++, running++;
    }
    int status;
    pid_t pid = wait(&status);
    if (pid < 0)
      die("wait: %s", strerror(errno));
    for (int i = 0; i < next; i++)
      if (jobs[i].pid == pid) {
        if (!WIFEXITED(status) || WEXITSTATUS(status))
          die("building %s failed (see %s)", jobs[i].db, jobs[i].log);
        running--;
      }
  }
  /* every configuration holds all N, each key once */
  for (int c = 0; c < ncfg; c++) {
    long total = 0;
    for (int i = 0; i < nj; i++)
      for (int s = 0; s < cfgs[c].nnodes; s++)
        if (jobs[i].db == cfgs[c].db[s])
          total += ingested(&jobs[i]);
    if (total != n)
      die("%s, %s: %ld items ingested, not %ld", cfgs[c].factory,
          cfgs[c].name, total, n);
  }
}

/* ------------------------------------------------------------ clients */

/* What the clients of one measurement share. */
typedef struct {
  const config *cfg;
  const float *queries;
  int nq;
  int64_t *rows;         /* check pass: Q x K rows out; NULL when timed */
  atomic_long next;      /* requests taken: query next % nq, node next % nnodes */
  double until;          /* timed: set by the main thread after the barrier */
  pthread_barrier_t ready;
} load_job;

typedef struct {
  load_job *j;
  double *lat;
  size_t n, cap;
} client;

static int64_t row_of_key(const redisReply *key) {
  if (key->type != REDIS_REPLY_STRING || key->len < 2 || key->str[0] != 'k')
    return -1;
  return strtoll(key->str + 1, NULL, 10);
}

static void *client_main(void *arg) {
  client *cl = arg;
  load_job *j = cl->j;
  const config *cfg = j->cfg;
  redisContext *conn[MAX_SHARDS];
  for (int s = 0; s < cfg->nnodes; s++) {
    conn[s] = redisConnect("127.0.0.1", cfg->nodes[s].port);
    if (!conn[s] || conn[s]->err)
      die("connect to port %d: %s", cfg->nodes[s].port,
          conn[s] ? conn[s]->errstr : "no memory");
  }
  pthread_barrier_wait(&j->ready);
  pthread_barrier_wait(&j->ready); /* the main thread set until */
  for (;;) {
    long i = atomic_fetch_add(&j->next, 1);
    if (j->rows ? i >= j->nq : now() >= j->until)
      break;
    int q = (int)(i % j->nq), s = (int)(i % cfg->nnodes);
    const char *argv[] = {"SEARCH", "VECTOR",
                          (const char *)(j->queries + (size_t)q * D),
                          "K", "10", "TARGET", "IMAGE"};
    size_t lens[] = {6, 6, D * sizeof(float), 1, 2, 6, 5};
    double t0 = now();
    redisReply *r = redisCommandArgv(conn[s], 7, argv, lens);
    double dt = now() - t0;
    if (!r)
      die("%s, node %d: %s", cfg->name, s, conn[s]->errstr);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != K)
      die("%s %s, node %d: SEARCH answered type %d, %zu elements: %s",
          cfg->factory, cfg->name, s, r->type, r->elements,
          r->str ? r->str : "");
    if (j->rows)
      for (int h = 0; h < K; h++) {
        const redisReply *hit = r->element[h];
        int64_t row = hit->type == REDIS_REPLY_ARRAY && hit->elements >= 2
                          ? row_of_key(hit->element[0])
                          : -1;
        if (row < 0)
          die("%s %s: hit %d of query %d is not [key, score, ...]",
              cfg->factory, cfg->name, h, q);
        j->rows[(size_t)q * K + h] = row;
      }
    freeReplyObject(r);
    if (cl->n == cl->cap) {
      cl->cap = cl->cap ? cl->cap * 2 : 4096;
      cl->lat = realloc(cl->lat, cl->cap * sizeof *cl->lat);
      if (!cl->lat)
        die("out of memory");
    }
    cl->lat[cl->n++] = dt;
  }
  for (int s = 0; s < cfg->nnodes; s++)
    redisFree(conn[s]);
  return NULL;
}

typedef struct {
  double qps, p50_ms, p99_ms;
  size_t requests;
  double cpu_us; /* the nodes' CPU time (user + system) per request */
} figure;

/* CPU seconds (user + system) process pid has used, from /proc. */
static double proc_cpu(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')'); /* the name may hold spaces */
  unsigned long ut = 0, st = 0;
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu "
                   "%lu", &ut, &st) != 2)
    return 0;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double config_cpu(const config *cfg) {
  double t = 0;
  for (int s = 0; s < cfg->nnodes; s++)
    t += proc_cpu(cfg->nodes[s].pid);
  return t;
}

/* nclients clients against cfg: every query once into rows (rows not
 * NULL), else for seconds.  Requests go to the nodes in turn. */
static figure load(const config *cfg, const float *queries, int nq,
                   int nclients, double seconds, int64_t *rows) {
  load_job j = {.cfg = cfg, .queries = queries, .nq = nq, .rows = rows};
  atomic_init(&j.next, 0);
  pthread_barrier_init(&j.ready, NULL, (unsigned)nclients + 1);
  client *cl = xmalloc((size_t)nclients * sizeof *cl);
  pthread_t *t = xmalloc((size_t)nclients * sizeof *t);
  for (int i = 0; i < nclients; i++) {
    cl[i].j = &j;
    if (pthread_create(&t[i], NULL, client_main, &cl[i]))
      die("pthread_create");
  }
  pthread_barrier_wait(&j.ready); /* all connected */
  double cpu0 = config_cpu(cfg);
  double t0 = now();
  j.until = t0 + seconds;
  pthread_barrier_wait(&j.ready);
  for (int i = 0; i < nclients; i++)
    pthread_join(t[i], NULL);
  double elapsed = now() - t0;
  double cpu = config_cpu(cfg) - cpu0;
  size_t total = 0, k = 0;
  for (int i = 0; i < nclients; i++)
    total += cl[i].n;
  double *all = xmalloc(total * sizeof *all);
  for (int i = 0; i < nclients; i++) {
    memcpy(all + k, cl[i].lat, cl[i].n * sizeof *all);
    k += cl[i].n;
    free(cl[i].lat);
  }
  figure f = {total / elapsed, percentile(all, total, 0.5) * 1e3,
              percentile(all, total, 0.99) * 1e3, total,
              total ? cpu / (double)total * 1e6 : 0};
  free(all);
  free(cl);
  free(t);
  pthread_barrier_destroy(&j.ready);
  return f;
}

/* ------------------------------------------------------------ serving */

static void start_config(config *cfg, const char *dir) {
  for (int s = 0; s < cfg->nnodes; s++) {
    char log[PATH_MAX];
    const char *base = strrchr(cfg->db[s], '/') + 1;
    snprintf(log, sizeof log, "%s/logs/serve-%s-%s.log", dir, cfg->factory,
             base);
    cfg->nodes[s] = start_node(cfg->db[s],
                               cfg->nshards ? g_map[cfg->nshards] : NULL, s,
                               cfg->nshards ? g_ports[cfg->nshards][s] : 0, log);
  }
  /* each node's efSearch (HNSW) as its database measured it */
  for (int s = 0; s < cfg->nnodes; s++) {
    redisContext *c = redisConnect("127.0.0.1", cfg->nodes[s].port);
    redisReply *r = c && !c->err ? redisCommand(c, "VLM.LOCAL INFO db") : NULL;
    const char *p = r && r->type == REDIS_REPLY_STRING
                        ? strstr(r->str, "image_search_effort:")
                        : NULL;
    cfg->efforts[s] = p ? atoi(p + strlen("image_search_effort:")) : -1;
    if (r)
      freeReplyObject(r);
    if (c)
      redisFree(c);
  }
}

static void stop_config(config *cfg) {
  for (int s = 0; s < cfg->nnodes; s++)
    stop_node(&cfg->nodes[s]);
}

/* recall@10 of rows[nq x K] against truth[nq x K]. */
static double recall(const int64_t *rows, const int64_t *truth, int nq) {
  long found = 0;
  for (int q = 0; q < nq; q++)
    for (int a = 0; a < K; a++)
      for (int b = 0; b < K; b++)
        found += rows[(size_t)q * K + a] == truth[(size_t)q * K + b];
  return (double)found / ((double)nq * K);
}

/* Queries whose top-10 rows differ, in order, between a and b. */
static int differing(const int64_t *a, const int64_t *b, int nq) {
  int n = 0;
  for (int q = 0; q < nq; q++)
    n += memcmp(a + (size_t)q * K, b + (size_t)q * K, K * sizeof *a) != 0;
  return n;
}

/* One index: serve its four configurations, check their answers, then
 * R rounds of speed.  Returns 0, or 1 when a Flat cluster's answers
 * differ from the plain database's. */
static int bench_index(config *cfgs, const char *dir, const float *queries,
                       const int64_t *truth, int nq, int clients, int rounds,
                       double seconds) {
  const char *factory = cfgs[0].factory;
  int exact = !strcmp(factory, "Flat"), failed = 0;
  for (int c = 0; c < 4; c++)
    start_config(&cfgs[c], dir);

  printf("\n## %s: answers (every query once, %d clients; load average "
         "before %s)\n\n", factory, clients, loadavg());
  printf("| %-10s | %5s | %-14s | %13s | %-36s |\n", "config", "nodes",
         "efSearch", "recall@10", "top-10 keys = plain's, in order");
  printf("|------------|-------|----------------|---------------|"
         "--------------------------------------|\n");
  for (int c = 0; c < 4; c++) {
    config *cfg = &cfgs[c];
    cfg->rows = xmalloc((size_t)nq * K * sizeof *cfg->rows);
    load(cfg, queries, nq, clients, 0, cfg->rows);
    char efforts[64] = "-", same[64];
    for (int s = 0; !exact && s < cfg->nnodes; s++)
      snprintf(efforts + (s ? strlen(efforts) : 0),
               sizeof efforts - (s ? strlen(efforts) : 0), "%s%d",
               s ? " / " : "", cfg->efforts[s]);
    if (c == 0) {
      snprintf(same, sizeof same, "(the reference)");
    } else {
      int diff = differing(cfg->rows, cfgs[0].rows, nq);
      snprintf(same, sizeof same, "%d of %d queries%s", nq - diff, nq,
               exact && diff ? ": FAILED" : "");
      failed |= exact && diff;
    }
    printf("| %-10s | %5d | %-14s | %13.4f | %-36s |\n", cfg->name,
           cfg->nnodes, efforts, recall(cfg->rows, truth, nq), same);
  }
  printf("\nrecall@10 against the exact top-10 (sgemm over all N); %s\n",
         exact ? "Flat is exact, so every cluster must answer the plain "
                 "database's keys (its merge is exact)"
               : "HNSW is approximate and each shard builds its own graph "
                 "and measures its own efSearch, so a cluster's keys "
                 "differ from the plain node's; compare their recall");
  printf("load average after: %s\n", loadavg());

  figure best[4][2];
  for (int c = 0; c < 4; c++)
    for (int m = 0; m < 2; m++)
      best[c][m] = (figure){0, INFINITY, INFINITY, 0, INFINITY};
  printf("\n## %s: speed, %d round%s; each figure %g s, SEARCH VECTOR ... "
         "K 10 TARGET IMAGE to the nodes in turn (load average before %s)\n\n",
         factory, rounds, rounds > 1 ? "s" : "", seconds, loadavg());
  for (int r = 0; r < rounds; r++) {
    figure f[4][2];
    for (int c = 0; c < 4; c++) {
      f[c][0] = load(&cfgs[c], queries, nq, 1, seconds, NULL);
      f[c][1] = load(&cfgs[c], queries, nq, clients, seconds, NULL);
      for (int m = 0; m < 2; m++) {
        figure *b = &best[c][m];
        if (f[c][m].qps > b->qps)
          b->qps = f[c][m].qps, b->requests = f[c][m].requests;
        b->p50_ms = fmin(b->p50_ms, f[c][m].p50_ms);
        b->p99_ms = fmin(b->p99_ms, f[c][m].p99_ms);
        b->cpu_us = fmin(b->cpu_us, f[c][m].cpu_us);
      }
    }
    printf("round %d:", r + 1);
    for (int c = 0; c < 4; c++)
      printf(" %s %.0f / %.0f QPS;", cfgs[c].name, f[c][0].qps, f[c][1].qps);
    printf(" 1 shard / plain %.1f%% / %.1f%% (1 / %d clients); load %s\n",
           100 * f[1][0].qps / f[0][0].qps, 100 * f[1][1].qps / f[0][1].qps,
           clients, loadavg());
  }
  char many[32];
  snprintf(many, sizeof many, "%d clients", clients);
  printf("\n| %-22s | %5s | %9s | %8s | %8s | %11s | %8s | %8s |\n",
         factory, "nodes", "1 client", "p50 ms", "p99 ms", many, "p50 ms",
         "p99 ms");
  printf("|------------------------|-------|-----------|----------|----------|"
         "-------------|----------|----------|\n");
  for (int c = 0; c < 4; c++) {
    char label[32], cq[32];
    snprintf(label, sizeof label, "%s%s", cfgs[c].name,
             c == 0 ? " (no cluster)" : "");
    snprintf(cq, sizeof cq, "%.0f QPS", best[c][1].qps);
    printf("| %-22s | %5d | %5.0f QPS | %8.2f | %8.2f | %11s | %8.2f | %8.2f "
           "|\n", label, cfgs[c].nnodes, best[c][0].qps, best[c][0].p50_ms,
           best[c][0].p99_ms, cq, best[c][1].p50_ms, best[c][1].p99_ms);
  }
  printf("\n(columns 3-5: 1 client; 6-8: %d clients; best of %d round%s per "
         "figure: the highest QPS, the lowest p50 and p99)\n", clients, rounds,
         rounds > 1 ? "s" : "");
  /* the time a query costs more on the 1-shard node: plain / 1-shard - 1 */
  for (int m = 0; m < 2; m++)
    printf("coordinator overhead at 1 shard, %d client%s: %.0f QPS against "
           "the plain node's %.0f: %+.1f%% time per query (goal <= 20%%); "
           "p50 %.2f ms against %.2f\n", m ? clients : 1,
           m && clients > 1 ? "s" : "", best[1][m].qps, best[0][m].qps,
           100 * (best[0][m].qps / best[1][m].qps - 1), best[1][m].p50_ms,
           best[0][m].p50_ms);
  /* the same in server CPU time per query, which other jobs on the
   * machine disturb far less than wall time (clock ticks: 10 ms each, so
   * a figure needs some thousand requests) */
  for (int m = 0; m < 2; m++)
    printf("coordinator overhead at 1 shard, %d client%s, in the node's CPU "
           "time per query: %.0f us against the plain node's %.0f: %+.1f%% "
           "(lowest of the rounds each)\n", m ? clients : 1,
           m && clients > 1 ? "s" : "", best[1][m].cpu_us, best[0][m].cpu_us,
           100 * (best[1][m].cpu_us / best[0][m].cpu_us - 1));
  printf("load average after: %s\n", loadavg());
  for (int c = 0; c < 4; c++) {
    stop_config(&cfgs[c]);
    free(cfgs[c].rows);
    cfgs[c].rows = NULL;
  }
  return failed;
}

/* ---------------------------------------------------------------- main */

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

static void usage(void) {
  fprintf(stderr,
          "usage: build/bench/cluster [--n N] [--queries Q] [--clients C] "
          "[--rounds R]\n"
          "                           [--seconds S] [--index Flat,HNSW32] "
          "[--dir TMPDIR] [--keep]\n");
  exit(2);
}

int main(int argc, char **argv) {
  long n = 100000;
  int nq = 1000, clients = 8, rounds = 3, keep = 0;
  double seconds = 3;
  const char *indexes = "Flat,HNSW32", *tmp = "/tmp";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--keep")) {
      keep = 1;
      continue;
    }
    if (!v)
      usage();
    if (!strcmp(a, "--n"))
      n = atol(v);
    else if (!strcmp(a, "--queries"))
      nq = atoi(v);
    else if (!strcmp(a, "--clients"))
      clients = atoi(v);
    else if (!strcmp(a, "--rounds"))
      rounds = atoi(v);
    else if (!strcmp(a, "--seconds"))
      seconds = atof(v);
    else if (!strcmp(a, "--index"))
      indexes = v;
    else if (!strcmp(a, "--dir"))
      tmp = v;
    else
      usage();
    i++;
  }
  if (n < 100 || nq < 1 || clients < 1 || clients > 256 || rounds < 1 ||
      seconds <= 0)
    usage();

  /* build/bench/cluster -> build/bench/shard and build/vlmdb */
  ssize_t len = readlink("/proc/self/exe", g_shard, sizeof g_shard - 16);
  if (len <= 0)
    die("readlink /proc/self/exe: %s", strerror(errno));
  g_shard[len] = '\0';
  strcpy(strrchr(g_shard, '/') + 1, "shard");
  snprintf(g_vlmdb, sizeof g_vlmdb, "%s", g_shard);
  *strrchr(g_vlmdb, '/') = '\0';
  char *slash = strrchr(g_vlmdb, '/');
  if (!slash)
    die("cannot find vlmdb beside %s", g_shard);
  strcpy(slash + 1, "vlmdb");
  if (access(g_vlmdb, X_OK) || access(g_shard, X_OK))
    die("build first: make build bench (%s, %s)", g_vlmdb, g_shard);

  /* FAISS and OpenBLAS on one thread, here and in every vlmdb started */
  setenv("OMP_NUM_THREADS", "1", 1);
  setenv("OPENBLAS_NUM_THREADS", "1", 1);
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);

  config cfgs[MAX_INDEXES][4];
  int nidx = 0;
  char *list = strdup(indexes);
  for (char *save, *f = strtok_r(list, ",", &save); f;
       f = strtok_r(NULL, ",", &save)) {
    if (nidx == MAX_INDEXES)
      die("--index: at most %d indexes", MAX_INDEXES);
    for (int c = 0; c < 4; c++) {
      config *cfg = &cfgs[nidx][c];
      memset(cfg, 0, sizeof *cfg);
      cfg->factory = f;
      cfg->nshards = c;
      cfg->nnodes = c ? c : 1;
      snprintf(cfg->name, sizeof cfg->name, c == 0 ? "plain" : "%d shard%s",
               c, c > 1 ? "s" : "");
    }
    nidx++;
  }
  if (!nidx)
    usage();

  snprintf(g_work, sizeof g_work, "%s/vlm_bench_cluster_XXXXXX", tmp);
  if (!mkdtemp(g_work))
    die("mkdtemp %s: %s", g_work, strerror(errno));
  char dir[PATH_MAX], path[PATH_MAX], data[PATH_MAX], model[PATH_MAX],
      emb[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", g_work);
  snprintf(path, sizeof path, "%s/logs", dir);
  mkdir(path, 0755);
  for (int x = 0; x < nidx; x++)
    for (int c = 0; c < 4; c++)
      for (int s = 0; s < cfgs[x][c].nnodes; s++) {
        if (c)
          snprintf(cfgs[x][c].db[s], PATH_MAX, "%s/%s-c%d-%d", dir,
                   cfgs[x][c].factory, c, s);
        else
          snprintf(cfgs[x][c].db[s], PATH_MAX, "%s/%s-plain", dir,
                   cfgs[x][c].factory);
      }

  long ncores = sysconf(_SC_NPROCESSORS_ONLN);
  char cpu[256], line[256];
  snprintf(cpu, sizeof cpu, "CPU model unknown");
  FILE *ci = fopen("/proc/cpuinfo", "r");
  while (ci && fgets(line, sizeof line, ci)) {
    char *colon = strchr(line, ':');
    if (!strncmp(line, "model name", 10) && colon) {
      snprintf(cpu, sizeof cpu, "%s", colon + 1 + (colon[1] == ' '));
      cpu[strcspn(cpu, "\n")] = '\0';
      break;
    }
  }
  if (ci)
    fclose(ci);
  const char *cpu_name = cpu;
  time_t t = time(NULL);
  char date[32];
  strftime(date, sizeof date, "%F %T", gmtime(&t));
  printf("bench/cluster: SEARCH through 1, 2 and 3 shards against one plain "
         "node; %s UTC\n", date);
  printf("machine: %ld cores, %s; load average %s\n", ncores, cpu_name,
         loadavg());
  printf("parameters: --n %ld (x %d-d) --queries %d --clients %d --rounds %d "
         "--seconds %g --index %s; OMP_NUM_THREADS=1; server worker threads: "
         "the default (%ld, the cores)\n", n, D, nq, clients, rounds, seconds,
         indexes, ncores);
  printf("work directory: %s\n", dir);

  /* 1. data */
  double t0 = now();
  snprintf(data, sizeof data, "%s/data", dir);
  char n_s[32], nq_s[32];
  snprintf(n_s, sizeof n_s, "%ld", n);
  snprintf(nq_s, sizeof nq_s, "%d", nq);
  snprintf(path, sizeof path, "%s/logs/data.log", dir);
  const char *gen[] = {g_shard, "data", "--n", n_s, "--nq", nq_s, "--out",
                       data, "--shards", "1", NULL};
  if (run(gen, NULL, path))
    die("build/bench/shard data failed (see %s)", path);
  snprintf(path, sizeof path, "%s/split", data);
  nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); /* not needed here */
  snprintf(path, sizeof path, "%s/queries.npy", data);
  vlm_npy *qf;
  if (vlm_npy_open(path, &qf))
    die("%s: %s", path, vlm_errmsg());
  float *queries = xmalloc((size_t)nq * D * sizeof(float));
  if (vlm_npy_read_rows(qf, 0, nq, queries))
    die("%s: %s", path, vlm_errmsg());
  vlm_npy_close(qf);
  int64_t *truth = xmalloc((size_t)nq * K * sizeof *truth);
  snprintf(path, sizeof path, "%s/truth.bin", data);
  FILE *tf = fopen(path, "rb");
  if (!tf || fread(truth, sizeof *truth, (size_t)nq * K, tf) != (size_t)nq * K)
    die("%s: %s", path, strerror(errno));
  fclose(tf);
  snprintf(model, sizeof model, "%s/model512", dir);
  make_model512("tests/fixtures/clip-tiny", model);
  printf("data: %ld vectors and %d queries with their exact top-10 "
         "(build/bench/shard data) in %.1f s\n", n, nq, now() - t0);

  /* 2. build and 3. measure, one index at a time (half the disk) */
  write_maps(dir);
  snprintf(emb, sizeof emb, "%s/emb", data);
  int failed = 0;
  for (int x = 0; x < nidx; x++) {
    t0 = now();
    build_all(cfgs[x], 4, dir, model, emb, n, ncores > 0 ? (int)ncores : 1);
    printf("\nbuild: 7 %s databases (plain, and 1 + 2 + 3 shards) in %.1f s, "
           "up to %ld at a time; load average %s\n", cfgs[x][0].factory,
           now() - t0, ncores, loadavg());
    failed |= bench_index(cfgs[x], dir, queries, truth, nq, clients, rounds,
                          seconds);
    for (int c = 0; !keep && c < 4; c++)
      for (int s = 0; s < cfgs[x][c].nnodes; s++)
        nftw(cfgs[x][c].db[s], rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  }
  free(queries);
  free(truth);
  free(list);
  if (failed)
    die("a Flat cluster answered other keys than the plain database");
  if (keep) {
    printf("kept %s\n", dir);
  } else {
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  }
  return 0;
}
