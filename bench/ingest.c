/* ingest.c - items/s into all three stores (LMDB, SQLite, FAISS) for
 * precomputed vectors with small payloads.
 *
 *   build/bench/ingest [-n ITEMS] [-d DIM] [-b BATCH[,BATCH...]]
 *                      [-f FACTORY[,FACTORY...]] [--async] [--dir TMPDIR]
 *
 * For each factory and batch size: a fresh database, N items (key, one
 * image vector, a caption, two declared fields and one undeclared), timed
 * from the first put to the last acknowledgement ("ack": durable in LMDB
 * and SQLite, searchable), and then to the index having every vector
 * ("indexed", vlm_db_checkpoint included).  Vectors are generated before
 * the clock starts.  items/cpu-s divides by the process's CPU time up to
 * the last ack (what one core sustains when the machine is not shared).
 */
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "vlm_error.h"
#include "vlmdb.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU seconds of this process (all threads): on a shared, busy machine
 * wall-clock rates understate what the code does per core. */
static double cpu_now(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next_u64(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static int rm_cb(const char *p, const struct stat *sb, int flag,
                 struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static void usage(void) {
  fprintf(stderr, "usage: ingest [-n ITEMS] [-d DIM] [-b B1,B2,...] "
                  "[-f F1,F2,...] [--async] [--dir TMPDIR]\n");
  exit(2);
}

int main(int argc, char **argv) {
  int n = 100000, dim = 512, async = 0;
  const char *batches = "100,1000,10000", *factories = "Flat,HNSW32";
  const char *tmpdir = "/tmp";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-n") && i + 1 < argc)
      n = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-d") && i + 1 < argc)
      dim = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-b") && i + 1 < argc)
      batches = argv[++i];
    else if (!strcmp(argv[i], "-f") && i + 1 < argc)
      factories = argv[++i];
    else if (!strcmp(argv[i], "--async"))
      async = 1;
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      tmpdir = argv[++i];
    else
      usage();
  }
  if (n < 1 || dim < 1)
    usage();
  float *vecs = malloc((size_t)n * dim * sizeof *vecs);
  char (*keys)[24] = malloc((size_t)n * sizeof *keys);
  char (*caps)[64] = malloc((size_t)n * sizeof *caps);
  char (*metas)[96] = malloc((size_t)n * sizeof *metas);
  if (!vecs || !keys || !caps || !metas) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  static const char *words[] = {"cat", "dog", "red", "car", "tree", "sky",
                                "blue", "house", "river", "man"};
  for (int i = 0; i < n; i++) {
    float *v = vecs + (size_t)i * dim;
    double ss = 0;
    for (int d = 0; d < dim; d++) {
      v[d] = (float)((double)(next_u64() >> 11) / 9007199254740992.0 - 0.5);
      ss += (double)v[d] * v[d];
    }
    float inv = (float)(1.0 / sqrt(ss));
    for (int d = 0; d < dim; d++)
      v[d] *= inv;
    snprintf(keys[i], sizeof keys[i], "img/%08d.jpg", i);
    snprintf(caps[i], sizeof caps[i], "a %s %s near a %s",
             words[next_u64() % 10], words[next_u64() % 10],
             words[next_u64() % 10]);
    snprintf(metas[i], sizeof metas[i],
             "{\"category\": \"c%d\", \"year\": %d, \"license\": \"cc-by\"}",
             (int)(next_u64() % 20), 1990 + (int)(next_u64() % 35));
  }
  vlm_field fields[] = {{"category", VLM_FIELD_TEXT}, {"year", VLM_FIELD_INT}};
  printf("ingest: %d items, dim %d, payload ~%zu bytes/item + vector, "
         "%s indexing\n",
         n, dim, strlen(caps[0]) + strlen(metas[0]) + strlen(keys[0]),
         async ? "background" : "synchronous");
  printf("%-10s %7s %12s %12s %14s %10s\n", "factory", "batch",
         "ack items/s", "indexed/s", "items/cpu-s", "MB on disk");
  char *fl = strdup(factories);
  for (char *f = strtok(fl, ","); f; f = strtok(NULL, ",")) {
    char *bl = strdup(batches);
    char *bsave = NULL;
    for (char *b = strtok_r(bl, ",", &bsave); b;
         b = strtok_r(NULL, ",", &bsave)) {
      int batch = atoi(b);
      if (batch < 1)
        usage();
      char root[256], dir[300];
      snprintf(root, sizeof root, "%s/vlmdb-bench-XXXXXX", tmpdir);
      if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
      }
      snprintf(dir, sizeof dir, "%s/db", root);
      vlm_db_config cfg = {0};
      cfg.dim = dim;
      cfg.index_factory = f;
      cfg.model_id = "bench";
      cfg.fields = fields;
      cfg.nfields = 2;
      vlm_db *db;
      if (vlm_db_create(dir, &cfg, &db) != 0) {
        fprintf(stderr, "create: %s\n", vlm_errmsg());
        return 1;
      }
      vlm_db_close(db);
      vlm_db_open_options o = {0};
      o.async_index = async;
      if (vlm_db_open(dir, &o, &db) != 0) {
        fprintf(stderr, "open: %s\n", vlm_errmsg());
        return 1;
      }
      vlm_item *items = calloc((size_t)batch, sizeof *items);
      double t0 = now(), c0 = cpu_now();
      for (int i = 0; i < n; i += batch) {
        int m = 0;
        for (int j = i; j < n && j < i + batch; j++, m++) {
          items[m].key = keys[j];
          items[m].image_vec = vecs + (size_t)j * dim;
          items[m].caption = caps[j];
          items[m].meta_json = metas[j];
        }
        if (vlm_db_put(db, items, m, 0, NULL) != 0) {
          fprintf(stderr, "put: %s\n", vlm_errmsg());
          return 1;
        }
      }
      double t1 = now(), c1 = cpu_now();
      if (vlm_db_checkpoint(db) != 0) {
        fprintf(stderr, "checkpoint: %s\n", vlm_errmsg());
        return 1;
      }
      double t2 = now();
      vlm_db_info info;
      vlm_db_stat(db, &info);
      printf("%-10s %7d %12.0f %12.0f %14.0f %10.1f\n", f, batch,
             n / (t1 - t0), n / (t2 - t0), n / (c1 - c0),
             info.disk_bytes / 1e6);
      fflush(stdout);
      vlm_db_close(db);
      free(items);
      nftw(root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    }
    free(bl);
  }
  free(fl);
  free(vecs);
  free(keys);
  free(caps);
  free(metas);
  return 0;
}
