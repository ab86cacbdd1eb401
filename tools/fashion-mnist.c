/* fashion-mnist - decode Debian's dataset-fashion-mnist into PNG files and
 * vlmdb catalogs.
 *
 *   fashion-mnist [--src DIR] [--out DIR] [--limit N]
 *
 * Reads SRC/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz and writes
 *   OUT/train/NNNNN.png, OUT/test/NNNNN.png   28x28 grayscale, as stored
 *   OUT/train.jsonl, OUT/test.jsonl           {"key":"train/00000",
 *       "image":"train/00000.png","text":"a photo of a t-shirt",
 *       "meta":{"label":0,"class":"T-shirt/top"}}  (image paths relative
 *       to the catalog)
 *   OUT/classes.jsonl   the 10 class captions for zero-shot checks, as a
 *       text-only catalog: {"key":"class/0","text":"a photo of a t-shirt",
 *       "meta":{"label":0,"class":"T-shirt/top"}}
 *   OUT/zeroshot.jsonl  the test images without captions plus the 10
 *       class captions, one database's worth: {"key":"test/00000","image":
 *       "test/00000.png","meta":{...}} and the classes.jsonl lines
 *   OUT/zeroshot-pairs.jsonl  {"image":"test/00000","text":"class/9"} for
 *       `vlmdb eval --pairs ... --direction i2t -k 1`: image->text
 *       Recall@1 over the 10 class captions is zero-shot accuracy
 *   OUT/stats.json      counts per split and class
 * --limit N keeps the first N images of each split (for quick tests).
 * Captions rotate over a few templates by image index; classes.jsonl
 * uses the first template.
 */
#include "vlm_data.h"
#include "vlm_error.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NCLASSES 10

/* Zalando's class names, and how a caption says them. */
static const char *const class_names[NCLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
static const char *const class_phrases[NCLASSES] = {
    "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
    "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot"};

static const char *const templates[] = {
    "a photo of %s",
    "a black and white photo of %s",
    "a product photo of %s",
    "a low resolution photo of %s",
    "a small grayscale picture of %s",
};
#define NTEMPLATES (int)(sizeof templates / sizeof templates[0])

static void fail(const char *what) {
  fprintf(stderr, "fashion-mnist: %s: %s\n", what, vlm_errmsg());
  exit(1);
}

static void ensure_dir(const char *path) {
  if (mkdir(path, 0755) && errno != EEXIST) {
    fprintf(stderr, "fashion-mnist: %s: %s\n", path, strerror(errno));
    exit(1);
  }
}

static char *path_join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *r = malloc(n);
  if (!r) exit(1);
  snprintf(r, n, "%s/%s", a, b);
  return r;
}

static FILE *open_tmp(const char *final, char **tmp) {
  size_t n = strlen(final) + 32;
  *tmp = malloc(n);
  if (!*tmp) exit(1);
  snprintf(*tmp, n, "%s.tmp%d", final, (int)getpid());
  FILE *f = fopen(*tmp, "w");
  if (!f) {
    fprintf(stderr, "fashion-mnist: %s: %s\n", *tmp, strerror(errno));
    exit(1);
  }
  return f;
}

static void commit_tmp(FILE *f, char *tmp, const char *final) {
  if (fflush(f) || fsync(fileno(f)) || fclose(f) || rename(tmp, final)) {
    fprintf(stderr, "fashion-mnist: %s: %s\n", final, strerror(errno));
    exit(1);
  }
  free(tmp);
}

static void write_line(FILE *f, json_t *obj) {
  char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!s || fprintf(f, "%s\n", s) < 0) {
    fprintf(stderr, "fashion-mnist: cannot write a catalog line\n");
    exit(1);
  }
  free(s);
}

static json_t *class_meta(int label) {
  json_t *meta = json_object();
  json_object_set_new(meta, "label", json_integer(label));
  json_object_set_new(meta, "class", json_string(class_names[label]));
  return meta;
}

/* A class caption as a text-only catalog line. */
static void write_class_line(FILE *f, int c) {
  char key[32], text[128];
  snprintf(key, sizeof key, "class/%d", c);
  snprintf(text, sizeof text, templates[0], class_phrases[c]);
  json_t *line = json_object();
  json_object_set_new(line, "key", json_string(key));
  json_object_set_new(line, "text", json_string(text));
  json_object_set_new(line, "meta", class_meta(c));
  write_line(f, line);
  json_decref(line);
}

/* One split: decode, write PNGs and the catalog; returns counts. */
static json_t *do_split(const char *src, const char *out, const char *src_prefix,
                        const char *split, long limit) {
  char name[128];
  snprintf(name, sizeof name, "%s-images-idx3-ubyte.gz", src_prefix);
  char *images_path = path_join(src, name);
  snprintf(name, sizeof name, "%s-labels-idx1-ubyte.gz", src_prefix);
  char *labels_path = path_join(src, name);
  uint8_t *ibuf, *lbuf;
  size_t ilen, llen;
  vlm_data_idx images, labels;
  if (vlm_data_read_gz(images_path, (size_t)1 << 30, &ibuf, &ilen)) fail("images");
  if (vlm_data_read_gz(labels_path, (size_t)1 << 24, &lbuf, &llen)) fail("labels");
  if (vlm_data_idx_parse(ibuf, ilen, &images)) fail(images_path);
  if (vlm_data_idx_parse(lbuf, llen, &labels)) fail(labels_path);
  if (images.ndim != 3 || labels.ndim != 1 || images.dims[0] != labels.dims[0]) {
    fprintf(stderr, "fashion-mnist: %s and %s do not match (%d dims, %u vs %u items)\n",
            images_path, labels_path, images.ndim, images.dims[0], labels.dims[0]);
    exit(1);
  }
  int h = (int)images.dims[1], w = (int)images.dims[2];
  long n = (long)images.dims[0];
  if (limit >= 0 && limit < n) n = limit;

  char *dir = path_join(out, split);
  ensure_dir(dir);
  snprintf(name, sizeof name, "%s.jsonl", split);
  char *catalog = path_join(out, name);
  char *tmp;
  FILE *f = open_tmp(catalog, &tmp);
  long per_class[NCLASSES] = {0};
  for (long i = 0; i < n; i++) {
    int label = labels.data[i];
    if (label >= NCLASSES) {
      fprintf(stderr, "fashion-mnist: %s: label %d at %ld\n", labels_path, label, i);
      exit(1);
    }
    per_class[label]++;
    char key[64], rel[80], png[4096], text[128];
    snprintf(key, sizeof key, "%s/%05ld", split, i);
    snprintf(rel, sizeof rel, "%s.png", key);
    snprintf(png, sizeof png, "%s/%s", out, rel);
    if (vlm_data_png_write_gray(png, images.data + (size_t)i * (size_t)(w * h), w, h))
      fail(png);
    snprintf(text, sizeof text, templates[i % NTEMPLATES], class_phrases[label]);
    json_t *line = json_object();
    json_object_set_new(line, "key", json_string(key));
    json_object_set_new(line, "image", json_string(rel));
    json_object_set_new(line, "text", json_string(text));
    json_object_set_new(line, "meta", class_meta(label));
    write_line(f, line);
    json_decref(line);
  }
  commit_tmp(f, tmp, catalog);

  if (!strcmp(split, "test")) {
    /* Image-only items and their true class, for zero-shot accuracy. */
    char *zs = path_join(out, "zeroshot.jsonl"), *pairs = path_join(out, "zeroshot-pairs.jsonl");
    char *tmp_zs, *tmp_pairs;
    FILE *fz = open_tmp(zs, &tmp_zs), *fp = open_tmp(pairs, &tmp_pairs);
    for (long i = 0; i < n; i++) {
      char key[64], rel[80], cls[32];
      snprintf(key, sizeof key, "%s/%05ld", split, i);
      snprintf(rel, sizeof rel, "%s.png", key);
      snprintf(cls, sizeof cls, "class/%d", labels.data[i]);
      json_t *line = json_object();
      json_object_set_new(line, "key", json_string(key));
      json_object_set_new(line, "image", json_string(rel));
      json_object_set_new(line, "meta", class_meta(labels.data[i]));
      write_line(fz, line);
      json_decref(line);
      json_t *pair = json_object();
      json_object_set_new(pair, "image", json_string(key));
      json_object_set_new(pair, "text", json_string(cls));
      write_line(fp, pair);
      json_decref(pair);
    }
    for (int c = 0; c < NCLASSES; c++) write_class_line(fz, c);
    commit_tmp(fz, tmp_zs, zs);
    commit_tmp(fp, tmp_pairs, pairs);
    free(zs);
    free(pairs);
  }

  json_t *counts = json_object();
  json_object_set_new(counts, "items", json_integer(n));
  json_object_set_new(counts, "width", json_integer(w));
  json_object_set_new(counts, "height", json_integer(h));
  json_t *pc = json_object();
  for (int c = 0; c < NCLASSES; c++)
    json_object_set_new(pc, class_names[c], json_integer(per_class[c]));
  json_object_set_new(counts, "per_class", pc);
  free(ibuf);
  free(lbuf);
  free(images_path);
  free(labels_path);
  free(dir);
  free(catalog);
  return counts;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: fashion-mnist [--src DIR] [--out DIR] [--limit N]\n"
          "Decode Fashion-MNIST (default /usr/share/datasets/fashion-mnist) into\n"
          "PNG files and catalogs under OUT (default data/fashion-mnist).\n");
}

int main(int argc, char **argv) {
  const char *src = "/usr/share/datasets/fashion-mnist";
  const char *out = "data/fashion-mnist";
  long limit = -1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--src") && i + 1 < argc) src = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--limit") && i + 1 < argc) limit = atol(argv[++i]);
    else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ensure_dir(out);
  json_t *stats = json_object();
  json_object_set_new(stats, "train", do_split(src, out, "train", "train", limit));
  json_object_set_new(stats, "test", do_split(src, out, "t10k", "test", limit));

  char *classes = path_join(out, "classes.jsonl");
  char *tmp;
  FILE *f = open_tmp(classes, &tmp);
  json_t *captions = json_array();
  for (int c = 0; c < NCLASSES; c++) {
    char text[128];
    snprintf(text, sizeof text, templates[0], class_phrases[c]);
    write_class_line(f, c);
    json_array_append_new(captions, json_string(text));
  }
  commit_tmp(f, tmp, classes);
  json_t *tpl = json_array();
  for (int t = 0; t < NTEMPLATES; t++) json_array_append_new(tpl, json_string(templates[t]));
  json_object_set_new(stats, "templates", tpl);
  json_object_set_new(stats, "class_captions", captions);

  char *stats_path = path_join(out, "stats.json");
  f = open_tmp(stats_path, &tmp);
  json_dumpf(stats, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  fputc('\n', f);
  commit_tmp(f, tmp, stats_path);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  fprintf(stderr, "fashion-mnist: %lld train + %lld test images, 10 classes; %.1fs -> %s/\n",
          (long long)json_integer_value(json_object_get(json_object_get(stats, "train"), "items")),
          (long long)json_integer_value(json_object_get(json_object_get(stats, "test"), "items")),
          (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, out);
  json_decref(stats);
  free(classes);
  free(stats_path);
  return 0;
}
