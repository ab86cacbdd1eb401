/* ingest-images.c - images/s through `vlmdb ingest` against the raw rate of
 * vlm_clip_encode_images on the same images and model.
 *
 *   build/bench/ingest-images [--model DIR] [--n 1000] [--batch 32]
 *                             [--vlmdb build/vlmdb] [--keep]
 *
 * Writes n JPEGs of varied sizes (320x240 to 1024x768, smooth gradients
 * with noise and blocks, quality 90) and a JSONL catalog into a temporary
 * directory, then measures:
 *   raw     vlm_clip_encode_images over the files in batches of --batch
 *           (decode + preprocess + encode, every core), twice;
 *   ingest  `vlmdb ingest --batch N` into a fresh database: its own clock
 *           (reading the catalog to the last acknowledged batch, model
 *           load included), the same without the model load (the raw
 *           rate does not include it either), and the wall clock of the
 *           whole process.
 * Both sides use every core (the model's default thread count, and
 * ingest's default decode workers) on the same files, model and batch.
 * The ingest does more than the raw call: a JPEG thumbnail per image
 * (from the same decode, longest side 256 px), the catalog, and the
 * three-store write; the pipeline overlaps them with the encoder.  CPU
 * time per image is printed for both (getrusage): on a shared machine the
 * rates swing with the other load, the CPU time much less, and their
 * ratio says how much extra work the ingest does.
 * Target: ingest >= 90% of the raw rate.
 */
#include "vlm_clip.h"
#include "vlm_error.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <jpeglib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds (user + system) of this process or of its waited-for
 * children: on a shared machine the rates swing with the load, the core
 * time per image much less. */
static double cpu_s(int who) {
  struct rusage ru;
  getrusage(who, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 11);
}

/* A photo-like test image: two gradients, a few flat blocks, noise. */
static int write_jpeg(const char *path, int w, int h) {
  uint8_t *rgb = malloc((size_t)w * h * 3);
  if (!rgb)
    return -1;
  int c0[3] = {(int)(rnd() % 256), (int)(rnd() % 256), (int)(rnd() % 256)};
  int c1[3] = {(int)(rnd() % 256), (int)(rnd() % 256), (int)(rnd() % 256)};
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int c = 0; c < 3; c++) {
        int v = (c0[c] * (w - x) + c1[c] * x) / w / 2 +
                (c1[c] * (h - y) + c0[c] * y) / h / 2 + (int)(rnd() % 17) - 8;
        rgb[((size_t)y * w + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
      }
  for (int b = 0; b < 6; b++) {
    int bw = w / 5, bh = h / 5, bx = (int)(rnd() % (uint32_t)(w - bw)),
        by = (int)(rnd() % (uint32_t)(h - bh));
    uint8_t col[3] = {(uint8_t)rnd(), (uint8_t)rnd(), (uint8_t)rnd()};
    for (int y = by; y < by + bh; y++)
      for (int x = bx; x < bx + bw; x++)
        memcpy(rgb + ((size_t)y * w + x) * 3, col, 3);
  }
  FILE *f = fopen(path, "wb");
  if (!f) {
    free(rgb);
    return -1;
  }
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, f);
  cinfo.image_width = (JDIMENSION)w;
  cinfo.image_height = (JDIMENSION)h;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 90, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = rgb + (size_t)cinfo.next_scanline * w * 3;
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  fclose(f);
  free(rgb);
  return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* Run a command with stdout to out_path; returns its exit status. */
static int run(const char *const *argv, const char *out_path) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
      _exit(127);
    dup2(fd, 1);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  int st;
  if (waitpid(pid, &st, 0) != pid)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static double raw_rate(vlm_clip *clip, char **paths, int n, int batch,
                       float *out, double *cpu_ms_per_image) {
  double t0 = now_s(), c0 = cpu_s(RUSAGE_SELF);
  for (int i = 0; i < n; i += batch) {
    int m = n - i < batch ? n - i : batch;
    if (vlm_clip_encode_images(clip, (const char *const *)paths + i, m, 0,
                               out)) {
      fprintf(stderr, "encode: %s\n", vlm_errmsg());
      exit(1);
    }
  }
  double wall = now_s() - t0;
  if (cpu_ms_per_image)
    *cpu_ms_per_image = (cpu_s(RUSAGE_SELF) - c0) * 1e3 / n;
  return n / wall;
}

int main(int argc, char **argv) {
  const char *model = getenv("VLMDB_MODEL");
  const char *vlmdb = "build/vlmdb";
  int n = 1000, batch = 32, keep = 0;
  if (!model || !*model)
    model = "models/default";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--model") && i + 1 < argc)
      model = argv[++i];
    else if (!strcmp(argv[i], "--n") && i + 1 < argc)
      n = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
      batch = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--vlmdb") && i + 1 < argc)
      vlmdb = argv[++i];
    else if (!strcmp(argv[i], "--keep"))
      keep = 1;
    else {
      fprintf(stderr, "usage: %s [--model DIR] [--n 1000] [--batch 32] "
                      "[--vlmdb build/vlmdb] [--keep]\n",
              argv[0]);
      return 2;
    }
  }
  if (n < 1 || batch < 1)
    return 2;
  char model_abs[PATH_MAX], vlmdb_abs[PATH_MAX];
  if (!realpath(model, model_abs) || !realpath(vlmdb, vlmdb_abs)) {
    fprintf(stderr, "model %s or binary %s not found (use --model DIR, "
                    "--vlmdb PATH)\n",
            model, vlmdb);
    return 1;
  }
  vlm_clip *clip;
  if (vlm_clip_load(model_abs, NULL, &clip)) {
    fprintf(stderr, "loading %s: %s\n", model_abs, vlm_errmsg());
    return 1;
  }
  char dir[] = "/tmp/vlm_bench_ingest.XXXXXX";
  if (!mkdtemp(dir))
    return 1;

  /* the images and the catalog (not timed) */
  static const int sizes[][2] = {{320, 240}, {480, 360}, {640, 480},
                                 {800, 600}, {1024, 768}, {500, 375},
                                 {375, 500}, {640, 427}};
  char **paths = calloc((size_t)n, sizeof *paths);
  char catalog[PATH_MAX];
  snprintf(catalog, sizeof catalog, "%s/catalog.jsonl", dir);
  FILE *cat = fopen(catalog, "w");
  double bytes = 0;
  for (int i = 0; i < n; i++) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/img%05d.jpg", dir, i);
    const int *wh = sizes[i % (int)(sizeof sizes / sizeof sizes[0])];
    if (write_jpeg(path, wh[0], wh[1])) {
      fprintf(stderr, "writing %s failed\n", path);
      return 1;
    }
    struct stat st;
    stat(path, &st);
    bytes += (double)st.st_size;
    paths[i] = strdup(path);
    fprintf(cat, "{\"key\": \"img%05d\", \"image\": \"img%05d.jpg\"}\n", i, i);
  }
  fclose(cat);

  int dim = vlm_clip_dim(clip);
  float *out = malloc((size_t)batch * dim * sizeof *out);
  printf("model: %s (dimension %d, input %d px)\n", model_abs, dim,
         vlm_clip_image_size(clip));
  printf("images: %d JPEGs, 320x240 to 1024x768, %.1f KiB on average; "
         "batch %d; %ld cores\n",
         n, bytes / n / 1024, batch, sysconf(_SC_NPROCESSORS_ONLN));
  raw_rate(clip, paths, batch < n ? batch : n, batch, out, NULL); /* warm up */
  double cpu_raw1, cpu_raw2, cpu_ingest;
  double raw1 = raw_rate(clip, paths, n, batch, out, &cpu_raw1);
  printf("raw vlm_clip_encode_images:  %8.1f images/s (%.2f ms of CPU per "
         "image)\n", raw1, cpu_raw1);
  fflush(stdout);

  char db[PATH_MAX], out_path[PATH_MAX], batch_s[16];
  snprintf(db, sizeof db, "%s/db", dir);
  snprintf(out_path, sizeof out_path, "%s/out.txt", dir);
  snprintf(batch_s, sizeof batch_s, "%d", batch);
  const char *init_argv[] = {vlmdb_abs, "init", "--db", db, "--model",
                             model_abs, NULL};
  if (run(init_argv, out_path)) {
    fprintf(stderr, "vlmdb init failed\n");
    return 1;
  }
  const char *ingest_argv[] = {vlmdb_abs, "ingest", "--db", db, catalog,
                               "--batch", batch_s, "--json", "--quiet", NULL};
  double t0 = now_s(), c0 = cpu_s(RUSAGE_CHILDREN);
  int rc = run(ingest_argv, out_path);
  double wall = now_s() - t0;
  cpu_ingest = (cpu_s(RUSAGE_CHILDREN) - c0) * 1e3 / n;
  FILE *f = fopen(out_path, "r");
  json_t *sum = f ? json_loadf(f, 0, NULL) : NULL;
  if (f)
    fclose(f);
  if (rc || !sum) {
    fprintf(stderr, "vlmdb ingest failed (status %d)\n", rc);
    return 1;
  }
  long ingested = (long)json_integer_value(json_object_get(sum, "ingested"));
  double pipeline = json_real_value(json_object_get(sum, "items_per_s"));
  double elapsed = json_real_value(json_object_get(sum, "elapsed_s"));
  double load = json_real_value(json_object_get(sum, "model_load_s"));
  json_decref(sum);
  double steady = ingested / (elapsed - load);
  printf("vlmdb ingest:                %8.1f images/s (%ld ingested in %.1f s, "
         "of which %.1f s loading the model: %.1f images/s without it; "
         "wall clock with process start: %.1f images/s)\n",
         pipeline, ingested, elapsed, load, steady, ingested / wall);
  printf("                             %.2f ms of CPU per image, the whole "
         "process\n", cpu_ingest);
  fflush(stdout);

  double raw2 = raw_rate(clip, paths, n, batch, out, &cpu_raw2);
  printf("raw vlm_clip_encode_images:  %8.1f images/s (again; %.2f ms of CPU "
         "per image)\n", raw2, cpu_raw2);
  double raw = (raw1 + raw2) / 2;
  printf("ingest / raw: %.1f%% (target >= 90%%); without the model load "
         "(which raw does not time): %.1f%%; raw / ingest CPU per image: "
         "%.1f%%\n",
         100.0 * pipeline / raw, 100.0 * steady / raw,
         100.0 * (cpu_raw1 + cpu_raw2) / 2 / cpu_ingest);

  for (int i = 0; i < n; i++)
    free(paths[i]);
  free(paths);
  free(out);
  vlm_clip_free(clip);
  if (keep)
    printf("kept %s\n", dir);
  else
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return ingested == n ? 0 : 1;
}
