/* shard.c - the data and the search half of bench/shard.sh (issue #18's
 * benchmark: a sharded build through Slurm against one process, the IVF
 * merge, and the merged index memory-mapped against the same in RAM).
 *
 *   build/bench/shard data --n N --nq NQ --out DIR [--shards 4] [--seed S]
 *   build/bench/shard search --mode mmap|ram --dir DIR --index FILE
 *                     --trained FILE --nprobe P[,P...] SHARD:OFFSET...
 *
 * data: N 512-d unit vectors around N / 100 random unit centres (as
 * bench/search.c draws them: cos(x, centre) ~ 0.55), written as
 * clip-retrieval's layout, DIR/emb/img_emb/img_emb_0.npy (float32) and
 * DIR/emb/metadata/metadata_0.jsonl ({"key": "k00000042"}: row 42), which
 * `vlmdb ingest` reads without a model; the same rows split by shard
 * into DIR/split/shard-S/ (the shards' slots in equal ranges); NQ queries drawn the same way,
 * DIR/queries.npy; and their exact top-10 rows (inner product over all N,
 * OpenBLAS sgemm block by block while the rows are written),
 * DIR/truth.bin (NQ x 10 int64).
 *
 * search: the global id of every vector (shard offset + local id, from a
 * walk of each shard database, which is then closed), then the index:
 * mmap, FILE as `vlmdb index merge` wrote it (its lists mapped from
 * FILE.ivfdata, whose cached pages are dropped first with
 * posix_fadvise(DONTNEED) so the first pass reads from disk); ram, the
 * same index in memory: the trained file read and every vector added
 * under its global id in id order, which gives the lists the merge made
 * (same centroids, code book, codes, ids and order).  Then the NQ
 * queries one per call on one thread, a pass per nprobe (the first pass
 * twice: cold, then warm), recall@10 against truth.bin, and the
 * process's resident memory (anonymous and file-backed, from
 * /proc/self/status) after loading and after the searches.  A digest of
 * every result id lets the script check that both modes answer alike.
 */
#include <cblas.h>
#include <fcntl.h>
#include <malloc.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vlm_error.h"
#include "vlm_index.h"
#include "vlm_npy.h"
#include "vlm_slot.h"
#include "vlmdb.h"

#define D 512
#define K 10
#define NOISE 1.5f /* |x - c| before normalising: cos(x, c) ~ 0.55 */
#define BLOCK 8192 /* rows generated, written and scored at a time */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "shard: %s: %s\n", what, vlm_errmsg());
  exit(1);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "shard: out of memory (%zu bytes)\n", n);
    exit(1);
  }
  return p;
}

/* ----------------------------------------------------------------- data */

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Fill x[n] with N(0, sigma^2) samples (Box-Muller, both outputs). */
static void normals(float *x, int64_t n, float sigma, uint64_t *s) {
  for (int64_t i = 0; i < n; i += 2) {
    double u = ((splitmix(s) >> 11) + 1) * (1.0 / 9007199254740993.0);
    double v = (splitmix(s) >> 11) * (1.0 / 9007199254740992.0);
    double r = sqrt(-2.0 * log(u)) * sigma;
    x[i] = (float)(r * cos(6.283185307179586 * v));
    if (i + 1 < n) x[i + 1] = (float)(r * sin(6.283185307179586 * v));
  }
}

static void normalize(float *x) {
  double s = 0;
  for (int j = 0; j < D; j++) s += (double)x[j] * x[j];
  float inv = (float)(1.0 / sqrt(s));
  for (int j = 0; j < D; j++) x[j] *= inv;
}

/* x[n * D]: points around the centres c[ncentres * D]. */
static void clustered(float *x, int64_t n, const float *c, int ncentres,
                      uint64_t *s) {
  for (int64_t i = 0; i < n; i++) {
    float *xi = x + i * D;
    const float *ci = c + (splitmix(s) % (uint64_t)ncentres) * D;
    normals(xi, D, NOISE / sqrtf((float)D), s);
    for (int j = 0; j < D; j++) xi[j] += ci[j];
    normalize(xi);
  }
}

/* Keep the k best (ids[K], sc[K] sorted descending) with a candidate. */
static void topk_push(int64_t *ids, float *sc, float s, int64_t id) {
  if (s <= sc[K - 1]) return;
  int r = K - 1;
  while (r > 0 && s > sc[r - 1]) {
    sc[r] = sc[r - 1];
    ids[r] = ids[r - 1];
    r--;
  }
  sc[r] = s;
  ids[r] = id;
}

static void mkdirs(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s", dir);
  for (char *p = path + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    mkdir(path, 0755);
    *p = '/';
  }
  mkdir(path, 0755);
}

/* The same rows split by shard: DIR/split/shard-S/ in the same layout,
 * shard S holding the slots [S * 16384 / nshards, (S + 1) * 16384 /
 * nshards) (bench/shard.sh's cluster.json), as `vlmdb split` cuts a
 * catalog: each task then reads only its own rows. */
typedef struct {
  vlm_npy_writer *w;
  FILE *meta;
  char meta_path[4096];
} split_out;

static void split_open(split_out *so, const char *out, int shard) {
  char path[4096];
  snprintf(path, sizeof path, "%s/split/shard-%d/img_emb", out, shard);
  mkdirs(path);
  snprintf(path, sizeof path, "%s/split/shard-%d/metadata", out, shard);
  mkdirs(path);
  snprintf(path, sizeof path, "%s/split/shard-%d/img_emb/img_emb_0.npy", out, shard);
  if (vlm_npy_writer_open(path, D, VLM_NPY_F32, &so->w)) die(path);
  snprintf(so->meta_path, sizeof so->meta_path,
           "%s/split/shard-%d/metadata/metadata_0.jsonl", out, shard);
  snprintf(path, sizeof path, "%s.tmp", so->meta_path);
  if (!(so->meta = fopen(path, "w"))) {
    perror(path);
    exit(1);
  }
}

static void split_close(split_out *so) {
  char path[4096];
  snprintf(path, sizeof path, "%s.tmp", so->meta_path);
  if (vlm_npy_writer_finish(so->w) || fclose(so->meta) ||
      rename(path, so->meta_path)) {
    perror(so->meta_path);
    exit(1);
  }
}

static int cmd_data(int64_t n, int nq, const char *out, uint64_t seed,
                    int nshards) {
  char path[4096];
  int ncentres = (int)(n / 100 > 0 ? n / 100 : 1);
  uint64_t s = seed;
  float *centres = xmalloc((size_t)ncentres * D * sizeof(float));
  for (int i = 0; i < ncentres; i++) {
    normals(centres + (size_t)i * D, D, 1.0f, &s);
    normalize(centres + (size_t)i * D);
  }
  float *q = xmalloc((size_t)nq * D * sizeof(float));
  uint64_t qs = seed ^ 0x5155455259ull; /* queries: a stream of their own */
  clustered(q, nq, centres, ncentres, &qs);
  snprintf(path, sizeof path, "%s/queries.npy", out);
  mkdirs(out);
  if (vlm_npy_write(path, q, nq, D, VLM_NPY_F32)) die(path);

  snprintf(path, sizeof path, "%s/emb/img_emb", out);
  mkdirs(path);
  snprintf(path, sizeof path, "%s/emb/metadata", out);
  mkdirs(path);
  snprintf(path, sizeof path, "%s/emb/img_emb/img_emb_0.npy", out);
  vlm_npy_writer *w;
  if (vlm_npy_writer_open(path, D, VLM_NPY_F32, &w)) die(path);
  snprintf(path, sizeof path, "%s/emb/metadata/metadata_0.jsonl.tmp", out);
  FILE *meta = fopen(path, "w");
  if (!meta) {
    perror(path);
    return 1;
  }

  split_out *split = xmalloc((size_t)nshards * sizeof *split);
  for (int i = 0; i < nshards; i++) split_open(&split[i], out, i);

  int64_t *top = xmalloc((size_t)nq * K * sizeof(int64_t));
  float *topsc = xmalloc((size_t)nq * K * sizeof(float));
  for (int i = 0; i < nq * K; i++) top[i] = -1, topsc[i] = -INFINITY;
  float *x = xmalloc((size_t)BLOCK * D * sizeof(float));
  float *sc = xmalloc((size_t)nq * BLOCK * sizeof(float));
  for (int64_t first = 0; first < n; first += BLOCK) {
    int b = (int)(n - first < BLOCK ? n - first : BLOCK);
    clustered(x, b, centres, ncentres, &s);
    if (vlm_npy_writer_append(w, x, b)) die("img_emb_0.npy");
    for (int i = 0; i < b; i++) {
      char key[32];
      int len = snprintf(key, sizeof key, "k%08lld", (long long)(first + i));
      int shard = (int)((int64_t)vlm_key_slot(key, (size_t)len) * nshards / VLM_SLOTS);
      fprintf(meta, "{\"key\": \"%s\"}\n", key);
      fprintf(split[shard].meta, "{\"key\": \"%s\"}\n", key);
      if (vlm_npy_writer_append(split[shard].w, x + (size_t)i * D, 1)) die("split");
    }
    /* sc[nq x b] = q[nq x D] . x[b x D]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, b, D, 1.0f, q,
                D, x, D, 0.0f, sc, b);
    for (int i = 0; i < nq; i++)
      for (int j = 0; j < b; j++)
        topk_push(top + (size_t)i * K, topsc + (size_t)i * K,
                  sc[(size_t)i * b + j], first + j);
  }
  if (vlm_npy_writer_finish(w)) die("img_emb_0.npy");
  for (int i = 0; i < nshards; i++) split_close(&split[i]);
  free(split);
  if (fclose(meta)) {
    perror("metadata_0.jsonl");
    return 1;
  }
  char final[4096];
  snprintf(final, sizeof final, "%s/emb/metadata/metadata_0.jsonl", out);
  if (rename(path, final)) {
    perror(final);
    return 1;
  }
  snprintf(path, sizeof path, "%s/truth.bin", out);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(top, sizeof(int64_t), (size_t)nq * K, f) != (size_t)nq * K ||
      fclose(f)) {
    perror(path);
    return 1;
  }
  free(centres), free(q), free(top), free(topsc), free(x), free(sc);
  return 0;
}

/* --------------------------------------------------------------- search */

typedef struct {
  int64_t *row_of;   /* global id -> row, -1 where none */
  int64_t nids;      /* ids 0 .. nids-1 */
  int64_t offset;    /* the shard being walked */
} id_map;

static int64_t parse_row(const char *key) {
  return key[0] == 'k' ? strtoll(key + 1, NULL, 10) : -1;
}

static int visit(const vlm_record *rec, void *arg) {
  id_map *m = arg;
  int64_t id = m->offset + (int64_t)rec->id;
  if (id >= m->nids) {
    int64_t grow = id * 2 + 1024;
    m->row_of = realloc(m->row_of, (size_t)grow * sizeof(int64_t));
    if (!m->row_of) return -1;
    for (int64_t i = m->nids; i < grow; i++) m->row_of[i] = -1;
    m->nids = grow;
  }
  m->row_of[id] = parse_row(rec->key);
  return 0;
}

typedef struct {
  long anon_kb, file_kb;
} rss;

static rss rss_now(void) {
  rss r = {0, 0};
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  while (f && fgets(line, sizeof line, f)) {
    sscanf(line, "RssAnon: %ld", &r.anon_kb);
    sscanf(line, "RssFile: %ld", &r.file_kb);
  }
  if (f) fclose(f);
  return r;
}

/* One pass of every query: queries/s, recall@10, and the ids' digest. */
static void pass(const vlm_index *ix, const float *q, int nq,
                 const int64_t *truth, const id_map *m, int nprobe,
                 double *qps, double *recall, uint64_t *digest) {
  float sc[K];
  int64_t ids[K];
  vlm_index_params p = {.nprobe = nprobe};
  int64_t found = 0;
  uint64_t h = 1469598103934665603ull;
  double t0 = now();
  for (int i = 0; i < nq; i++) {
    if (vlm_index_search(ix, 1, q + (size_t)i * D, K, &p, sc, ids))
      die("search");
    for (int a = 0; a < K; a++) {
      int64_t row = ids[a] >= 0 && ids[a] < m->nids ? m->row_of[ids[a]] : -1;
      h = (h ^ (uint64_t)ids[a]) * 1099511628211ull;
      for (int b = 0; b < K; b++)
        if (row >= 0 && row == truth[(size_t)i * K + b]) found++;
    }
  }
  *qps = nq / (now() - t0);
  *recall = (double)found / ((double)nq * K);
  *digest = h;
}

static int cmd_search(const char *mode, const char *dir, const char *index,
                      const char *trained, const char *nprobes, int nshards,
                      char **shards) {
  char path[4096];
  int ram = !strcmp(mode, "ram");
  if (!ram && strcmp(mode, "mmap")) {
    fprintf(stderr, "shard: --mode is mmap or ram\n");
    return 2;
  }
  id_map m = {0};
  for (int s = 0; s < nshards; s++) {
    char *colon = strrchr(shards[s], ':');
    if (!colon) {
      fprintf(stderr, "shard: %s: not SHARD:OFFSET\n", shards[s]);
      return 2;
    }
    *colon = 0;
    m.offset = strtoll(colon + 1, NULL, 10);
    vlm_db_open_options o = {.readonly = 1};
    vlm_db *db;
    if (vlm_db_open(shards[s], &o, &db)) die(shards[s]);
    if (vlm_db_foreach(db, visit, &m)) die(shards[s]);
    vlm_db_close(db);
  }

  snprintf(path, sizeof path, "%s/queries.npy", dir);
  vlm_npy *qf;
  if (vlm_npy_open(path, &qf)) die(path);
  int nq = (int)vlm_npy_info(qf)->rows;
  float *q = xmalloc((size_t)nq * D * sizeof(float));
  if (vlm_npy_read_rows(qf, 0, nq, q)) die(path);
  vlm_npy_close(qf);
  int64_t *truth = xmalloc((size_t)nq * K * sizeof(int64_t));
  snprintf(path, sizeof path, "%s/truth.bin", dir);
  FILE *tf = fopen(path, "rb");
  if (!tf || fread(truth, sizeof(int64_t), (size_t)nq * K, tf) != (size_t)nq * K) {
    perror(path);
    return 1;
  }
  fclose(tf);

  malloc_trim(0); /* what the walk of the shards freed */
  rss before = rss_now();
  double t0 = now();
  vlm_index *ix;
  if (!ram) {
    snprintf(path, sizeof path, "%s.ivfdata", index);
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
      fdatasync(fd);
      posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      close(fd);
    }
    if (vlm_index_read(index, &ix)) die(index);
  } else {
    /* the same lists in memory: every vector under its global id, in id
     * order, added to the trained index */
    if (vlm_index_read(trained, &ix)) die(trained);
    snprintf(path, sizeof path, "%s/emb/img_emb/img_emb_0.npy", dir);
    vlm_npy *xf;
    if (vlm_npy_open(path, &xf)) die(path);
    float *x = xmalloc((size_t)BLOCK * D * sizeof(float));
    int64_t ids[BLOCK];
    int nb = 0;
    for (int64_t id = 0; id <= m.nids; id++) {
      if (nb == BLOCK || (id == m.nids && nb)) {
        if (vlm_index_add(ix, nb, x, ids)) die("add");
        nb = 0;
      }
      if (id == m.nids || m.row_of[id] < 0) continue;
      if (vlm_npy_read_rows(xf, m.row_of[id], 1, x + (size_t)nb * D)) die(path);
      ids[nb++] = id;
    }
    free(x);
    vlm_npy_close(xf);
  }
  double load_s = now() - t0;
  malloc_trim(0); /* the add buffer above is not the index's memory */
  rss loaded = rss_now();
  printf("%-5s load %.2f s, %lld vectors, lists %s; own memory after load: "
         "anon %+.1f MiB, file %+.1f MiB\n",
         mode, load_s, (long long)vlm_index_count(ix),
         vlm_index_is_ondisk(ix) ? "mapped" : "in RAM",
         (loaded.anon_kb - before.anon_kb) / 1024.0,
         (loaded.file_kb - before.file_kb) / 1024.0);

  int first = 1;
  for (const char *p = nprobes; *p;) {
    int nprobe = atoi(p);
    for (int rep = 0; rep < (first ? 2 : 1); rep++) {
      double qps, recall;
      uint64_t digest;
      pass(ix, q, nq, truth, &m, nprobe, &qps, &recall, &digest);
      rss r = rss_now();
      printf("ROW %s %s %d %.1f %.4f %.1f %.1f %016llx\n", mode,
             first && rep == 0 ? "cold" : "warm", nprobe, qps, recall,
             (r.anon_kb - before.anon_kb) / 1024.0,
             (r.file_kb - before.file_kb) / 1024.0,
             (unsigned long long)digest);
    }
    first = 0;
    const char *comma = strchr(p, ',');
    if (!comma) break;
    p = comma + 1;
  }
  vlm_index_free(ix);
  free(m.row_of), free(q), free(truth);
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: shard data --n N --nq NQ --out DIR [--shards 4] [--seed S]\n"
          "       shard search --mode mmap|ram --dir DIR --index FILE "
          "--trained FILE --nprobe P[,P...] SHARD:OFFSET...\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  int64_t n = 0;
  int nq = 1000, nshards = 4;
  uint64_t seed = 18;
  const char *out = NULL, *mode = NULL, *index = NULL, *trained = NULL;
  const char *nprobes = "16,64";
  int i = 2;
  for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (!strcmp(argv[i - 1], "--n")) n = atoll(v);
    else if (!strcmp(argv[i - 1], "--nq")) nq = atoi(v);
    else if (!strcmp(argv[i - 1], "--shards")) nshards = atoi(v);
    else if (!strcmp(argv[i - 1], "--seed")) seed = strtoull(v, NULL, 10);
    else if (!strcmp(argv[i - 1], "--out") || !strcmp(argv[i - 1], "--dir")) out = v;
    else if (!strcmp(argv[i - 1], "--mode")) mode = v;
    else if (!strcmp(argv[i - 1], "--index")) index = v;
    else if (!strcmp(argv[i - 1], "--trained")) trained = v;
    else if (!strcmp(argv[i - 1], "--nprobe")) nprobes = v;
    else usage();
  }
  if (!strcmp(argv[1], "data")) {
    if (n < 1 || nq < 1 || nshards < 1 || nshards > VLM_SLOTS || !out || i != argc)
      usage();
    return cmd_data(n, nq, out, seed, nshards);
  }
  if (!strcmp(argv[1], "search")) {
    if (!mode || !out || !index || !trained || i == argc) usage();
    return cmd_search(mode, out, index, trained, nprobes, argc - i, argv + i);
  }
  usage();
  return 2;
}
