/* ingest.c - items/s into all three stores (LMDB, SQLite, FAISS) for
 * precomputed vectors with small payloads.
 *
 *   build/bench/ingest [-n ITEMS] [-d DIM] [-b BATCH[,BATCH...]]
 *                      [-f FACTORY[,FACTORY...]] [--async] [--dir TMPDIR]
 *                      [--keep] [--cli VLMDB]
 *
 * For each factory and batch size: a fresh database, N items (key, one
 * image vector, a caption, two declared fields and one undeclared), timed
 * from the first put to the last acknowledgement ("ack": durable in LMDB
 * and SQLite, searchable), and then to the index having every vector
 * ("indexed", vlm_db_checkpoint included).  Vectors are generated before
 * the clock starts.  items/cpu-s divides by the process's CPU time up to
 * the last ack (what one core sustains when the machine is not shared).
 * --keep leaves each database in place (its path is printed) so its
 * stores can be measured (du, mdb_stat), and the layout of --cli; the bytes of each store are
 * printed either way.
 *
 * --cli VLMDB also times the command line on the same items: they are
 * written once in clip-retrieval's layout (img_emb/img_emb_0.npy and
 * metadata/metadata_0.jsonl, the items' key, caption and meta), and after
 * each library run `VLMDB ingest --db NEW --embeddings LAYOUT --batch B
 * --quiet` (B capped at the command's 4,096) fills a fresh database of
 * the same configuration, timed from its start to its exit (process start
 * and the final checkpoint at close included).  The line gives its rate
 * and its ratio to the library's rate of that run.
 */
#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vlm_error.h"
#include "vlm_npy.h"
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
                  "[-f F1,F2,...] [--async] [--dir TMPDIR] [--keep]\n"
                  "              [--cli VLMDB]\n");
  exit(2);
}

/* Bytes of the regular files under PATH (a file or a directory). */
static long long tree_bytes_total;
static int sum_cb(const char *p, const struct stat *sb, int flag,
                  struct FTW *ftw) {
  (void)p, (void)ftw;
  if (flag == FTW_F)
    tree_bytes_total += sb->st_size;
  return 0;
}
static long long tree_bytes(const char *path) {
  tree_bytes_total = 0;
  nftw(path, sum_cb, 16, FTW_PHYS);
  return tree_bytes_total;
}

/* One line: the bytes of each store and per item, against the raw
 * vectors (n x dim x 4). */
static void print_stores(const char *dir, int n, int dim) {
  char p[512];
  long long raw = (long long)n * dim * 4;
  snprintf(p, sizeof p, "%s/payload.lmdb", dir);
  long long lmdb = tree_bytes(p);
  long long all = tree_bytes(dir);
  long long sql = 0, idx = 0, live = 0;
  snprintf(p, sizeof p, "%s/meta.sqlite", dir);
  sql += tree_bytes(p);
  snprintf(p, sizeof p, "%s/meta.sqlite-wal", dir);
  sql += tree_bytes(p);
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d));) {
    size_t l = strlen(e->d_name);
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (l > 6 && !strcmp(e->d_name + l - 6, ".faiss"))
      idx += tree_bytes(p);
    else if (l > 5 && !strcmp(e->d_name + l - 5, ".bits"))
      live += tree_bytes(p);
  }
  if (d)
    closedir(d);
  printf("  stores: payload.lmdb %.1f MB (%.0f B/item), meta.sqlite+wal "
         "%.1f MB (%.0f B/item), index %.1f MB, live bits %.3f MB, "
         "all %.1f MB = %.2fx raw vectors\n",
         lmdb / 1e6, (double)lmdb / n, sql / 1e6, (double)sql / n,
         idx / 1e6, live / 1e6, all / 1e6, (double)all / raw);
}

/* The items in clip-retrieval's layout under dir, for --cli. */
static int write_layout(const char *dir, int n, int dim, const float *vecs,
                        char (*keys)[24], char (*caps)[64],
                        char (*metas)[96]) {
  char p[512];
  snprintf(p, sizeof p, "%s/img_emb", dir);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/metadata", dir);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/img_emb/img_emb_0.npy", dir);
  if (vlm_npy_write(p, vecs, n, dim, VLM_NPY_F32) != 0) {
    fprintf(stderr, "%s: %s\n", p, vlm_errmsg());
    return -1;
  }
  snprintf(p, sizeof p, "%s/metadata/metadata_0.jsonl", dir);
  FILE *f = fopen(p, "w");
  if (!f)
    return -1;
  for (int i = 0; i < n; i++)
    fprintf(f, "{\"key\": \"%s\", \"caption\": \"%s\", \"meta\": %s}\n",
            keys[i], caps[i], metas[i]);
  return fclose(f);
}

/* CPU seconds of the children waited for so far. */
static double cpu_children(void) {
  struct rusage ru;
  getrusage(RUSAGE_CHILDREN, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* Run argv to its exit; its wall seconds, or -1 when it failed. */
static double run_timed(char *const argv[]) {
  double t0 = now();
  pid_t pid = fork();
  if (pid == 0) {
    execv(argv[0], argv);
    perror(argv[0]);
    _exit(127);
  }
  int st;
  if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
      WEXITSTATUS(st) != 0)
    return -1;
  return now() - t0;
}

int main(int argc, char **argv) {
  int n = 100000, dim = 512, async = 0, keep = 0;
  const char *cli = NULL;
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
    else if (!strcmp(argv[i], "--keep"))
      keep = 1;
    else if (!strcmp(argv[i], "--cli") && i + 1 < argc)
      cli = argv[++i];
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
  char layout[300] = "";
  if (cli) {
    snprintf(layout, sizeof layout, "%s/vlmdb-bench-layout-XXXXXX", tmpdir);
    if (!mkdtemp(layout) ||
        write_layout(layout, n, dim, vecs, keys, caps, metas) != 0) {
      fprintf(stderr, "writing the layout failed\n");
      return 1;
    }
  }
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
      vlm_db_close(db);
      print_stores(dir, n, dim);
      if (keep)
        printf("  kept: %s\n", dir);
      fflush(stdout);
      free(items);
      if (!keep)
        nftw(root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
      if (cli) {
        char croot[256], cdir[300], bstr[16];
        snprintf(croot, sizeof croot, "%s/vlmdb-bench-XXXXXX", tmpdir);
        if (!mkdtemp(croot))
          return 1;
        snprintf(cdir, sizeof cdir, "%s/db", croot);
        if (vlm_db_create(cdir, &cfg, &db) != 0) {
          fprintf(stderr, "create: %s\n", vlm_errmsg());
          return 1;
        }
        vlm_db_close(db);
        snprintf(bstr, sizeof bstr, "%d", batch > 4096 ? 4096 : batch);
        char *const args[] = {(char *)cli, "ingest", "--db", cdir,
                              "--embeddings", layout, "--batch", bstr,
                              "--quiet", NULL};
        double cc0 = cpu_children();
        double secs = run_timed(args);
        double ccpu = cpu_children() - cc0;
        if (secs < 0) {
          fprintf(stderr, "%s ingest failed\n", cli);
          return 1;
        }
        printf("  cli: vlmdb ingest --embeddings (.npy + metadata JSONL), "
               "batch %s: %.0f items/s = %.2fx the library's ack rate, "
               "%.2fx its indexed rate; %.0f items/cpu-s = %.2fx the "
               "library's\n",
               bstr, n / secs, (n / secs) / (n / (t1 - t0)),
               (n / secs) / (n / (t2 - t0)), n / ccpu,
               (n / ccpu) / (n / (c1 - c0)));
        fflush(stdout);
        nftw(croot, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
      }
    }
    free(bl);
  }
  free(fl);
  if (cli && keep)
    printf("  kept: %s\n", layout);
  else if (cli)
    nftw(layout, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  free(vecs);
  free(keys);
  free(caps);
  free(metas);
  return 0;
}
