/* open.c - what a read-only open costs: wall time and memory, with the
 * live bitmaps a checkpoint saves (db/livebits.c) and without them (open
 * then reads every vector record, as before they existed), and what the
 * first search after it costs (a read-only handle reads the index files
 * then, db/vindex.c).
 *
 *   build/bench/open [--n ITEMS] [--dim DIM] [--factory F] [--rounds R]
 *                    [--db DIR] [--dir TMPDIR] [--keep]
 *
 * Builds ITEMS random unit image vectors (default 200,000 x 512, HNSW32)
 * into a fresh database under TMPDIR (or opens --db DIR, any closed
 * database), closes it (its checkpoint writes the index files and the
 * live file), then alternates R rounds (default 3) of: a child process
 * opens it read-only with the live file, another with the live file
 * hidden (renamed away for that open, so open walks the records; put
 * back after).  Each child reports the open's wall time, its resident
 * memory after the open less before (file pages of the payload store it
 * touched included: that is what the walk costs), the time of the first
 * search after the open (reading the index files included) and the peak
 * RSS after it.  Built against an older libvlm.a (before live files and
 * deferred index loads) the same program measures the old open: both of
 * its rows then walk.  The page cache is warm for both
 * (the first round reads the files for both).  The last line gives the
 * best of each and their ratios with the load average; run it on a quiet
 * machine for absolute numbers.
 */
#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vlm_error.h"
#include "vlmdb.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static double uniform(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0;
}

static void random_unit(float *v, int dim) {
  double s = 0;
  for (int i = 0; i < dim; i++) {
    v[i] = (float)(uniform() * 2 - 1);
    s += (double)v[i] * v[i];
  }
  s = sqrt(s);
  for (int i = 0; i < dim; i++)
    v[i] = (float)(v[i] / s);
}

static int rm_cb(const char *p, const struct stat *sb, int flag,
                 struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static void die(const char *what) {
  fprintf(stderr, "bench/open: %s: %s\n", what, vlm_errmsg());
  exit(1);
}

/* VmRSS or VmHWM of this process, in MiB. */
static double vm_mib(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  double kb = 0;
  size_t n = strlen(field);
  if (!f)
    return 0;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, field, n) && line[n] == ':')
      kb = atof(line + n + 1);
  fclose(f);
  return kb / 1024;
}

static void fill(const char *dir, int n, int dim, const char *factory) {
  vlm_db_config cfg = {0};
  vlm_db *db = NULL;
  cfg.dim = dim;
  cfg.index_factory = factory;
  cfg.model_id = "bench-open";
  if (vlm_db_create(dir, &cfg, &db) != 0)
    die("create");
  enum { B = 1000 };
  float *vecs = malloc((size_t)B * dim * sizeof(float));
  static char keys[B][24];
  vlm_item items[B];
  for (int base = 0; base < n; base += B) {
    int m = n - base < B ? n - base : B;
    memset(items, 0, sizeof items);
    for (int i = 0; i < m; i++) {
      random_unit(vecs + (size_t)i * dim, dim);
      snprintf(keys[i], sizeof keys[i], "%012d", base + i);
      items[i].key = keys[i];
      items[i].image_vec = vecs + (size_t)i * dim;
    }
    if (vlm_db_put(db, items, m, 0, NULL) != 0)
      die("put");
  }
  free(vecs);
  vlm_db_close(db); /* checkpoints: index files and the live file */
}

typedef struct {
  double open_ms, rss_mib, hwm_mib, search_ms;
  int ok;
} sample;

/* One read-only open in a child process. */
static sample measure(const char *dir, int dim) {
  int fd[2];
  sample s = {0};
  if (pipe(fd) != 0)
    return s;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    float *q = malloc((size_t)dim * sizeof(float));
    random_unit(q, dim);
    vlm_db_open_options o = {.readonly = 1};
    vlm_db *db = NULL;
    double rss0 = vm_mib("VmRSS"), t0 = now();
    if (vlm_db_open(dir, &o, &db) == 0) {
      s.open_ms = (now() - t0) * 1e3;
      s.rss_mib = vm_mib("VmRSS") - rss0;
      vlm_search_options so = {0};
      so.k = 10;
      so.target = VLM_TARGET_IMAGE;
      vlm_hit *hits = NULL;
      int nh = 0;
      t0 = now();
      if (vlm_db_search(db, q, &so, &hits, &nh) == 0) {
        s.search_ms = (now() - t0) * 1e3;
        vlm_hits_free(hits, nh);
        s.ok = 1;
      }
      s.hwm_mib = vm_mib("VmHWM");
      vlm_db_close(db);
    }
    if (!s.ok)
      fprintf(stderr, "bench/open: child: %s\n", vlm_errmsg());
    ssize_t w = write(fd[1], &s, sizeof s);
    _exit(w == (ssize_t)sizeof s ? 0 : 1);
  }
  close(fd[1]);
  if (pid < 0 || read(fd[0], &s, sizeof s) != (ssize_t)sizeof s)
    s.ok = 0;
  close(fd[0]);
  if (pid > 0)
    waitpid(pid, NULL, 0);
  return s;
}

/* The live file's name in dir ("" if none). */
static void live_file(const char *dir, char *out, size_t cap) {
  DIR *d = opendir(dir);
  struct dirent *e;
  out[0] = '\0';
  if (!d)
    return;
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, "live-", 5) && strstr(e->d_name, ".bits") &&
        !strstr(e->d_name, ".tmp"))
      snprintf(out, cap, "%s", e->d_name);
  closedir(d);
}

static double load1(void) {
  FILE *f = fopen("/proc/loadavg", "r");
  double l = -1;
  if (f) {
    if (fscanf(f, "%lf", &l) != 1)
      l = -1;
    fclose(f);
  }
  return l;
}

int main(int argc, char **argv) {
  int n = 200000, dim = 512, rounds = 3, keep = 0;
  const char *factory = "HNSW32", *tmpdir = "/tmp", *dbdir = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--n") && i + 1 < argc)
      n = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--dim") && i + 1 < argc)
      dim = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--factory") && i + 1 < argc)
      factory = argv[++i];
    else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
      rounds = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--db") && i + 1 < argc)
      dbdir = argv[++i];
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
      tmpdir = argv[++i];
    else if (!strcmp(argv[i], "--keep"))
      keep = 1;
    else {
      fprintf(stderr, "usage: open [--n ITEMS] [--dim DIM] [--factory F] "
                      "[--rounds R] [--db DIR] [--dir TMPDIR] [--keep]\n");
      return 2;
    }
  }
  char root[PATH_MAX] = "", dir[PATH_MAX];
  if (dbdir) {
    snprintf(dir, sizeof dir, "%s", dbdir);
  } else {
    snprintf(root, sizeof root, "%s/vlmdb-bench-open-XXXXXX", tmpdir);
    if (!mkdtemp(root)) {
      perror("mkdtemp");
      return 1;
    }
    snprintf(dir, sizeof dir, "%s/db", root);
    double t0 = now();
    fill(dir, n, dim, factory);
    printf("built %d x %d %s in %.1f s\n", n, dim, factory, now() - t0);
  }
  /* a read-write open and close first: a database from before live
   * files gets one at its close */
  {
    vlm_db *db = NULL;
    if (!dbdir) {
      /* (fill closed it already) */
    } else if (vlm_db_open(dir, NULL, &db) == 0) {
      vlm_db_close(db);
    } else {
      die("open");
    }
  }
  char name[256], path[PATH_MAX + 256], hidden[PATH_MAX + 300];
  live_file(dir, name, sizeof name);
  if (!name[0]) {
    fprintf(stderr, "bench/open: %s has no live file\n", dir);
    return 1;
  }
  snprintf(path, sizeof path, "%s/%s", dir, name);
  snprintf(hidden, sizeof hidden, "%s.hidden", path);
  printf("%-6s %-5s %10s %10s %14s %10s %6s\n", "round", "open", "ms",
         "rss MiB", "1st search ms", "peak MiB", "load");
  sample best[2] = {{1e30, 1e30, 1e30, 1e30, 0}, {1e30, 1e30, 1e30, 1e30, 0}};
  for (int r = 0; r < rounds; r++)
    for (int walk = 0; walk < 2; walk++) {
      if (walk && rename(path, hidden) != 0) {
        perror("rename");
        return 1;
      }
      sample s = measure(dir, dim);
      if (walk && rename(hidden, path) != 0) {
        perror("rename back");
        return 1;
      }
      if (!s.ok)
        return 1;
      printf("%-6d %-5s %10.1f %10.1f %14.1f %10.1f %6.2f\n", r + 1,
             walk ? "walk" : "live", s.open_ms, s.rss_mib, s.search_ms,
             s.hwm_mib, load1());
      sample *b = &best[walk];
      if (s.open_ms < b->open_ms)
        b->open_ms = s.open_ms;
      if (s.rss_mib < b->rss_mib)
        b->rss_mib = s.rss_mib;
      if (s.hwm_mib < b->hwm_mib)
        b->hwm_mib = s.hwm_mib;
      if (s.search_ms < b->search_ms)
        b->search_ms = s.search_ms;
    }
  printf("best open: live %.1f ms +%.1f MiB, walk %.1f ms +%.1f MiB "
         "(live/walk time %.3f, memory %.3f); open + 1st search: live %.0f ms, "
         "walk %.0f ms; load %.2f\n",
         best[0].open_ms, best[0].rss_mib, best[1].open_ms, best[1].rss_mib,
         best[0].open_ms / best[1].open_ms, best[0].rss_mib / best[1].rss_mib,
         best[0].open_ms + best[0].search_ms,
         best[1].open_ms + best[1].search_ms, load1());
  if (root[0] && !keep)
    nftw(root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  else if (root[0])
    printf("kept %s\n", dir);
  return 0;
}
