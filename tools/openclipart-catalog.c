/* openclipart-catalog - build vlmdb's clip-art catalog from Debian's
 * openclipart-png and openclipart-svg packages.
 *
 *   openclipart-catalog [--png-root DIR] [--svg-root DIR] [--out DIR]
 *                       [--max-family N] [--no-pixel-check] [--dump]
 *
 * Writes OUT/catalog.jsonl (every item), OUT/train.jsonl, OUT/test.jsonl
 * (the split: FNV-1a 64 of the key mod 10 == 0 is test) and OUT/stats.json,
 * one JSON object a line:
 *   {"key":"animals/mammals/dolphin","image":"/usr/share/openclipart/png/
 *    animals/mammals/dolphin.png","text":"dolphin. ...","meta":{"category":
 *    "animals","subcategory":"mammals","author":"...","keywords":"a, b",
 *    "width":W,"height":H}}
 * See tools/DATA.md for the rules (deduplication, licences, captions).
 * --dump also prints, per item, the raw metadata next to the caption (TSV)
 * on stdout, for checking the cleaning rules.
 */
#include "vlm_data.h"
#include "vlm_error.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BOILERPLATE_TITLES 10       /* files sharing a title */
#define BOILERPLATE_DESCRIPTIONS 20 /* files sharing a description */
#define MAX_PIXELS (24u * 1000 * 1000) /* larger renders are left out */
#define MIN_SIDE 8                     /* smaller ones too */
#define MAX_FAMILY 25 /* items whose captions differ only in digits */

typedef struct {
  char *rel;    /* path under the PNG root, with ".png" */
  char *real;   /* realpath of the file (symlinks resolved) */
  int is_link;
} png_entry;

typedef struct {
  png_entry *v;
  size_t n, cap;
} entry_list;

static void die(const char *what) {
  fprintf(stderr, "openclipart-catalog: %s: %s\n", what, vlm_errmsg());
  exit(1);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "openclipart-catalog: out of memory\n");
    exit(1);
  }
  return p;
}

static char *xstrdup(const char *s) {
  char *r = xmalloc(strlen(s) + 1);
  strcpy(r, s);
  return r;
}

static char *join_path(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *r = xmalloc(n);
  snprintf(r, n, "%s/%s", a, b);
  return r;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && !strcmp(s + n - m, suffix);
}

/* Collect every *.png (file or symlink) under root/rel, recursively. */
static void scan(const char *root, const char *rel, entry_list *out) {
  char *dir = rel[0] ? join_path(root, rel) : xstrdup(root);
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, "openclipart-catalog: %s: %s\n", dir, strerror(errno));
    exit(1);
  }
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char *sub = rel[0] ? join_path(rel, e->d_name) : xstrdup(e->d_name);
    char *full = join_path(root, sub);
    struct stat lst, st;
    if (lstat(full, &lst) || stat(full, &st)) {
      fprintf(stderr, "openclipart-catalog: skipping %s: %s\n", full, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
      if (!S_ISLNK(lst.st_mode)) scan(root, sub, out);   /* no symlink loops */
    } else if (S_ISREG(st.st_mode) && ends_with(sub, ".png")) {
      char real[PATH_MAX];
      if (!realpath(full, real)) {
        fprintf(stderr, "openclipart-catalog: skipping %s: %s\n", full, strerror(errno));
      } else {
        if (out->n == out->cap) {
          out->cap = out->cap ? out->cap * 2 : 1024;
          out->v = realloc(out->v, out->cap * sizeof *out->v);
          if (!out->v) exit(1);
        }
        out->v[out->n++] = (png_entry){sub, xstrdup(real), S_ISLNK(lst.st_mode)};
        sub = NULL;
      }
    }
    free(sub);
    free(full);
  }
  closedir(d);
  free(dir);
}

/* Order: by real file, the entry that is the real file first, then by
 * relative path, so each group's primary comes first and output is
 * independent of readdir order. */
static int cmp_entry(const void *a, const void *b) {
  const png_entry *x = a, *y = b;
  int c = strcmp(x->real, y->real);
  if (c) return c;
  if (x->is_link != y->is_link) return x->is_link - y->is_link;
  return strcmp(x->rel, y->rel);
}

typedef struct {
  char *key;              /* rel without ".png" */
  char *image;            /* absolute path of the PNG */
  char *svg;              /* path of the matching SVG or NULL */
  int naliases;
  vlm_data_svg_meta meta;
  vlm_data_png_info info;
  long long bytes;
  int excluded;           /* reason index, 0 = kept */
  char *path;             /* copy of key split in place: */
  const char *category;   /* first directory ("" at the top) */
  const char *subcategory;/* second directory or NULL */
  vlm_data_caption cap;   /* built for items not excluded before step 3 */
} item;

enum {
  KEEP = 0,
  EX_NO_SVG,
  EX_SVG_UNREADABLE,
  EX_PNG_UNREADABLE,
  EX_LICENCE,
  EX_TOO_LARGE,
  EX_TOO_SMALL,
  EX_BLANK,
  EX_SERIES,
  EX_BAD_NAME,
  EX_COUNT
};
static const char *const excluded_names[EX_COUNT] = {
    "kept", "no_svg", "svg_unreadable", "png_unreadable", "licence_not_public_domain",
    "over_24_megapixels", "side_under_8px", "blank_image",
    "near_duplicate_series", "name_not_utf8"};

static int cmp_item(const void *a, const void *b) {
  return strcmp(((const item *)a)->key, ((const item *)b)->key);
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Public domain, or no licence stated (the package's copyright file
 * dedicates every image to the public domain). */
static int licence_ok(const char *licence) {
  if (!licence || !*licence) return 1;
  char low[256];
  size_t i = 0;
  for (; licence[i] && i < sizeof low - 1; i++)
    low[i] = (char)(licence[i] >= 'A' && licence[i] <= 'Z' ? licence[i] + 32 : licence[i]);
  low[i] = 0;
  return strstr(low, "publicdomain") || strstr(low, "/zero/");
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static FILE *open_tmp(const char *out_dir, const char *name, char **tmp_path) {
  size_t n = strlen(out_dir) + strlen(name) + 32;
  *tmp_path = xmalloc(n);
  snprintf(*tmp_path, n, "%s/.%s.tmp%d", out_dir, name, (int)getpid());
  FILE *f = fopen(*tmp_path, "w");
  if (!f) {
    fprintf(stderr, "openclipart-catalog: %s: %s\n", *tmp_path, strerror(errno));
    exit(1);
  }
  return f;
}

static void commit_tmp(FILE *f, char *tmp_path, const char *out_dir, const char *name) {
  char *final = join_path(out_dir, name);
  if (fflush(f) || fsync(fileno(f)) || fclose(f) || rename(tmp_path, final)) {
    fprintf(stderr, "openclipart-catalog: %s: %s\n", final, strerror(errno));
    exit(1);
  }
  free(final);
  free(tmp_path);
}

typedef struct {
  char *family;     /* caption, lower case, digit runs as '#' */
  uint64_t hash;    /* FNV-1a of the key: the order within a family */
  size_t index;
} family_entry;

static char *family_of(const char *caption) {
  char *f = xmalloc(strlen(caption) + 1);
  size_t o = 0;
  for (const char *p = caption; *p; p++) {
    if (*p >= '0' && *p <= '9') {
      if (o == 0 || f[o - 1] != '#') f[o++] = '#';
    } else {
      f[o++] = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    }
  }
  f[o] = 0;
  return f;
}

static int cmp_family(const void *a, const void *b) {
  const family_entry *x = a, *y = b;
  int c = strcmp(x->family, y->family);
  if (c) return c;
  if (x->hash != y->hash) return x->hash < y->hash ? -1 : 1;
  return x->index < y->index ? -1 : x->index > y->index;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: openclipart-catalog [--png-root DIR] [--svg-root DIR] [--out DIR]\n"
          "                           [--max-family N] [--no-pixel-check] [--dump]\n"
          "Build catalog.jsonl, train.jsonl, test.jsonl and stats.json from\n"
          "openclipart's PNG and SVG trees (defaults: /usr/share/openclipart/png,\n"
          "/usr/share/openclipart/svg, data/openclipart).\n");
}

int main(int argc, char **argv) {
  const char *png_root_arg = "/usr/share/openclipart/png";
  const char *svg_root = "/usr/share/openclipart/svg";
  const char *out_dir = "data/openclipart";
  int pixel_check = 1, dump = 0, max_family = MAX_FAMILY;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--png-root") && i + 1 < argc) png_root_arg = argv[++i];
    else if (!strcmp(argv[i], "--svg-root") && i + 1 < argc) svg_root = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) out_dir = argv[++i];
    else if (!strcmp(argv[i], "--no-pixel-check")) pixel_check = 0;
    else if (!strcmp(argv[i], "--max-family") && i + 1 < argc) max_family = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--dump")) dump = 1;
    else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  char png_root[PATH_MAX];
  if (!realpath(png_root_arg, png_root)) {
    fprintf(stderr, "openclipart-catalog: %s: %s (install openclipart-png)\n",
            png_root_arg, strerror(errno));
    return 1;
  }
  if (mkdir(out_dir, 0755) && errno != EEXIST) {
    fprintf(stderr, "openclipart-catalog: %s: %s\n", out_dir, strerror(errno));
    return 1;
  }
  double t0 = now_s();

  /* 1. Every PNG path, grouped by the file it resolves to. */
  entry_list entries = {0};
  scan(png_root, "", &entries);
  qsort(entries.v, entries.n, sizeof *entries.v, cmp_entry);
  size_t root_len = strlen(png_root);
  item *items = calloc(entries.n ? entries.n : 1, sizeof *items);
  if (!items) return 1;
  size_t nitems = 0, nlinks = 0;
  for (size_t i = 0; i < entries.n;) {
    size_t j = i;
    while (j < entries.n && !strcmp(entries.v[j].real, entries.v[i].real)) j++;
    /* The primary: the real file itself when it lies under the root. */
    const png_entry *primary = &entries.v[i];
    const char *real = primary->real;
    for (size_t k = i; k < j; k++) {
      const char *r = entries.v[k].real;
      if (!strncmp(r, png_root, root_len) && r[root_len] == '/' &&
          !strcmp(r + root_len + 1, entries.v[k].rel)) {
        primary = &entries.v[k];
        break;
      }
    }
    item *it = &items[nitems++];
    size_t klen = strlen(primary->rel) - 4;
    it->key = xmalloc(klen + 1);
    memcpy(it->key, primary->rel, klen);
    it->key[klen] = 0;
    it->image = xstrdup(real);
    it->naliases = (int)(j - i - 1);
    nlinks += (size_t)(j - i) - 1;
    /* The SVG beside the primary, else beside any alias. */
    for (int pass = 0; pass < 2 && !it->svg; pass++)
      for (size_t k = i; k < j && !it->svg; k++) {
        if ((pass == 0) != (&entries.v[k] == primary)) continue;
        size_t n = strlen(entries.v[k].rel);
        char *svg_rel = xmalloc(n + 1);
        memcpy(svg_rel, entries.v[k].rel, n - 4);
        strcpy(svg_rel + n - 4, ".svg");
        char *svg = join_path(svg_root, svg_rel);
        free(svg_rel);
        if (file_exists(svg)) it->svg = svg;
        else free(svg);
      }
    i = j;
  }
  qsort(items, nitems, sizeof *items, cmp_item);

  /* 2. Metadata and image headers; count boilerplate. */
  vlm_data_boilerplate *bp;
  if (vlm_data_boilerplate_new(BOILERPLATE_TITLES, BOILERPLATE_DESCRIPTIONS, &bp)) die("boilerplate");
  int npixels_checked = 0, n_transparent = 0, n_dark_bg = 0, n_blank_no_alpha = 0;
  for (size_t i = 0; i < nitems; i++) {
    item *it = &items[i];
    struct stat st;
    json_t *key_json = json_string(it->key);   /* NULL if not UTF-8 */
    if (!key_json) {
      it->excluded = EX_BAD_NAME;
      continue;
    }
    json_decref(key_json);
    if (!it->svg) {
      it->excluded = EX_NO_SVG;
      continue;
    }
    if (vlm_data_svg_meta_read(it->svg, &it->meta)) {
      fprintf(stderr, "openclipart-catalog: %s\n", vlm_errmsg());
      it->excluded = EX_SVG_UNREADABLE;
      continue;
    }
    if (vlm_data_png_info_read(it->image, &it->info)) {
      fprintf(stderr, "openclipart-catalog: %s\n", vlm_errmsg());
      it->excluded = EX_PNG_UNREADABLE;
      continue;
    }
    if (stat(it->image, &st) == 0) it->bytes = (long long)st.st_size;
    if (!licence_ok(it->meta.license)) {
      it->excluded = EX_LICENCE;
      continue;
    }
    uint64_t npix = (uint64_t)it->info.width * it->info.height;
    if (npix > MAX_PIXELS) {
      it->excluded = EX_TOO_LARGE;
      continue;
    }
    if (it->info.width < MIN_SIDE || it->info.height < MIN_SIDE) {
      it->excluded = EX_TOO_SMALL;
      continue;
    }
    if (pixel_check) {
      vlm_data_png_pixels px;
      npixels_checked++;
      if (vlm_data_png_pixels_read(it->image, MAX_PIXELS, &px)) {
        fprintf(stderr, "openclipart-catalog: %s\n", vlm_errmsg());
        it->excluded = EX_PNG_UNREADABLE;
        continue;
      }
      if (px.blank_on_white) {
        it->excluded = EX_BLANK;
        continue;
      }
      n_transparent += px.transparent > 0.01;
      n_dark_bg += px.transparent > 0.01 && px.dark_background;
      n_blank_no_alpha += px.blank_no_alpha;
    }
    if (vlm_data_boilerplate_add(bp, &it->meta)) die("boilerplate");
  }
  double t_parse = now_s() - t0;

  /* 3. Captions. */
  for (size_t i = 0; i < nitems; i++) {
    item *it = &items[i];
    if (it->excluded) continue;
    /* category/subcategory/.../stem */
    it->path = xstrdup(it->key);
    char *slash = strchr(it->path, '/');
    it->category = slash ? it->path : "";
    const char *stem = strrchr(it->key, '/') ? strrchr(it->key, '/') + 1 : it->key;
    if (slash) {
      *slash = 0;
      char *rest = slash + 1;
      char *slash2 = strchr(rest, '/');
      if (slash2) {
        *slash2 = 0;
        it->subcategory = rest;
      }
    }
    char fallback[256];
    snprintf(fallback, sizeof fallback, "%s%s%s", it->category, it->subcategory ? " " : "",
             it->subcategory ? it->subcategory : "");
    for (char *p = fallback; *p; p++)
      if (*p == '_') *p = ' ';
    if (vlm_data_caption_build(&it->meta, stem, fallback, bp, &it->cap)) die(it->key);
  }

  /* 4. Generated series ("star 63pt05step", "star 57pt23step", ... 1375
   * of them): at most max_family items whose captions are the same up to
   * digits, the ones with the smallest key hash, so the rest of the
   * collection is not drowned and captions stay tellable apart. */
  size_t nfam = 0;
  family_entry *fam = calloc(nitems ? nitems : 1, sizeof *fam);
  if (!fam) return 1;
  for (size_t i = 0; i < nitems; i++) {
    if (items[i].excluded) continue;
    fam[nfam].family = family_of(items[i].cap.text);
    fam[nfam].hash = vlm_data_fnv1a64(items[i].key, strlen(items[i].key));
    fam[nfam].index = i;
    nfam++;
  }
  qsort(fam, nfam, sizeof *fam, cmp_family);
  for (size_t i = 0, run = 0; i < nfam; i++) {
    run = (i > 0 && !strcmp(fam[i].family, fam[i - 1].family)) ? run + 1 : 0;
    if (max_family > 0 && run >= (size_t)max_family) items[fam[i].index].excluded = EX_SERIES;
  }
  for (size_t i = 0; i < nfam; i++) free(fam[i].family);
  free(fam);

  /* 5. Output. */
  char *tmp_all, *tmp_train, *tmp_test;
  FILE *f_all = open_tmp(out_dir, "catalog.jsonl", &tmp_all);
  FILE *f_train = open_tmp(out_dir, "train.jsonl", &tmp_train);
  FILE *f_test = open_tmp(out_dir, "test.jsonl", &tmp_test);
  long long excluded_count[EX_COUNT] = {0};
  long long n_src[4] = {0}, n_usable = 0, n_desc = 0, n_kw = 0, n_author = 0;
  long long n_train = 0, n_test = 0, caption_bytes = 0, caption_max = 0;
  long long n_test_usable = 0;
  uint32_t max_w = 0, max_h = 0, min_side = UINT32_MAX;
  long long max_bytes = 0, total_bytes = 0, n_large = 0, n_small = 0;
  const char *max_bytes_key = "", *max_px_key = "";
  unsigned long long max_px = 0;
  json_t *per_category = json_object();
  for (size_t i = 0; i < nitems; i++) {
    item *it = &items[i];
    excluded_count[it->excluded]++;
    if (it->excluded) continue;
    const char *category = it->category, *subcategory = it->subcategory;
    const vlm_data_caption cap = it->cap;

    json_t *meta = json_object();
    if (*category) json_object_set_new(meta, "category", json_string(category));
    if (subcategory) json_object_set_new(meta, "subcategory", json_string(subcategory));
    if (cap.author) json_object_set_new(meta, "author", json_string(cap.author));
    if (cap.nkeywords) {
      size_t n = 0;
      for (int k = 0; k < cap.nkeywords; k++) n += strlen(cap.keywords[k]) + 2;
      char *kw = xmalloc(n + 1);
      kw[0] = 0;
      for (int k = 0; k < cap.nkeywords; k++) {
        if (k) strcat(kw, ", ");
        strcat(kw, cap.keywords[k]);
      }
      json_object_set_new(meta, "keywords", json_string(kw));
      free(kw);
    }
    json_object_set_new(meta, "width", json_integer(it->info.width));
    json_object_set_new(meta, "height", json_integer(it->info.height));
    json_t *line = json_object();
    json_object_set_new(line, "key", json_string(it->key));
    json_object_set_new(line, "image", json_string(it->image));
    json_object_set_new(line, "text", json_string(cap.text));
    json_object_set_new(line, "meta", meta);
    char *s = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s) {
      fprintf(stderr, "openclipart-catalog: %s: cannot encode as JSON\n", it->key);
      return 1;
    }
    int is_test = vlm_data_is_test(it->key);
    fprintf(f_all, "%s\n", s);
    fprintf(is_test ? f_test : f_train, "%s\n", s);
    free(s);
    json_decref(line);

    if (dump)
      printf("%s\t%s\t%s\t%s\t%s\n", it->key, it->meta.title ? it->meta.title : "",
             it->meta.description ? it->meta.description : "",
             it->meta.creator ? it->meta.creator : "", cap.text);

    n_train += !is_test;
    n_test += is_test;
    n_src[cap.name_source]++;
    n_usable += cap.usable;
    n_test_usable += cap.usable && is_test;
    n_desc += cap.description != NULL;
    n_kw += cap.nkeywords > 0;
    n_author += cap.author != NULL;
    long long clen = (long long)strlen(cap.text);
    caption_bytes += clen;
    if (clen > caption_max) caption_max = clen;
    json_t *cc = json_object_get(per_category, *category ? category : "(root)");
    json_object_set_new(per_category, *category ? category : "(root)",
                        json_integer((cc ? json_integer_value(cc) : 0) + 1));
    if (it->info.width > max_w) max_w = it->info.width;
    if (it->info.height > max_h) max_h = it->info.height;
    uint32_t side = it->info.width < it->info.height ? it->info.width : it->info.height;
    if (side < min_side) min_side = side;
    unsigned long long px = (unsigned long long)it->info.width * it->info.height;
    if (px > max_px) max_px = px, max_px_key = it->key;
    if (it->bytes > max_bytes) max_bytes = it->bytes, max_bytes_key = it->key;
    total_bytes += it->bytes;
    n_large += it->info.width > 2048 || it->info.height > 2048 || it->bytes > (1 << 20);
    n_small += side < 32;
  }
  commit_tmp(f_all, tmp_all, out_dir, "catalog.jsonl");
  commit_tmp(f_train, tmp_train, out_dir, "train.jsonl");
  commit_tmp(f_test, tmp_test, out_dir, "test.jsonl");
  double t_total = now_s() - t0;

  /* 4. Statistics. */
  long long kept = excluded_count[KEEP];
  json_t *ex = json_object();
  for (int r = 1; r < EX_COUNT; r++)
    json_object_set_new(ex, excluded_names[r], json_integer(excluded_count[r]));
  json_t *names = json_object();
  json_object_set_new(names, "title", json_integer(n_src[VLM_DATA_NAME_TITLE]));
  json_object_set_new(names, "svg_title", json_integer(n_src[VLM_DATA_NAME_SVG_TITLE]));
  json_object_set_new(names, "file_name", json_integer(n_src[VLM_DATA_NAME_STEM]));
  json_object_set_new(names, "none", json_integer(n_src[VLM_DATA_NAME_NONE]));
  json_t *images = json_object();
  json_object_set_new(images, "max_width", json_integer(max_w));
  json_object_set_new(images, "max_height", json_integer(max_h));
  json_object_set_new(images, "largest_pixels_key", json_string(max_px_key));
  json_object_set_new(images, "largest_pixels", json_integer((json_int_t)max_px));
  json_object_set_new(images, "min_side", json_integer(kept ? min_side : 0));
  json_object_set_new(images, "largest_file_key", json_string(max_bytes_key));
  json_object_set_new(images, "largest_file_bytes", json_integer(max_bytes));
  json_object_set_new(images, "total_bytes", json_integer(total_bytes));
  json_object_set_new(images, "over_2048px_or_1MiB", json_integer(n_large));
  json_object_set_new(images, "side_under_32px", json_integer(n_small));
  json_t *stats = json_object();
  json_object_set_new(stats, "png_paths", json_integer((json_int_t)entries.n));
  json_object_set_new(stats, "png_symlinks_merged", json_integer((json_int_t)nlinks));
  json_object_set_new(stats, "unique_pngs", json_integer((json_int_t)nitems));
  json_object_set_new(stats, "excluded", ex);
  json_object_set_new(stats, "items", json_integer(kept));
  json_object_set_new(stats, "train", json_integer(n_train));
  json_object_set_new(stats, "test", json_integer(n_test));
  json_object_set_new(stats, "usable_caption", json_integer(n_usable));
  json_object_set_new(stats, "usable_caption_test", json_integer(n_test_usable));
  json_object_set_new(stats, "name_from", names);
  json_object_set_new(stats, "with_description", json_integer(n_desc));
  json_object_set_new(stats, "with_keywords", json_integer(n_kw));
  json_object_set_new(stats, "with_author", json_integer(n_author));
  json_object_set_new(stats, "caption_mean_bytes",
                      json_real(kept ? (double)caption_bytes / (double)kept : 0));
  json_object_set_new(stats, "caption_max_bytes", json_integer(caption_max));
  json_object_set_new(stats, "per_category", per_category);
  json_object_set_new(stats, "images", images);
  json_t *pixels = json_object();
  json_object_set_new(pixels, "checked", json_integer(npixels_checked));
  json_object_set_new(pixels, "with_transparency", json_integer(n_transparent));
  json_object_set_new(pixels, "transparent_pixels_dark", json_integer(n_dark_bg));
  json_object_set_new(pixels, "blank_when_alpha_dropped", json_integer(n_blank_no_alpha));
  json_object_set_new(stats, "pixels", pixels);
  json_object_set_new(stats, "max_family", json_integer(max_family));
  json_object_set_new(stats, "split", json_string("test iff FNV-1a-64(key) % 10 == 0"));
  char *tmp_stats;
  FILE *f_stats = open_tmp(out_dir, "stats.json", &tmp_stats);
  json_dumpf(stats, f_stats, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  fputc('\n', f_stats);
  commit_tmp(f_stats, tmp_stats, out_dir, "stats.json");
  json_decref(stats);

  fprintf(stderr,
          "openclipart-catalog: %zu PNG paths, %zu unique images; %lld items "
          "(%lld train, %lld test), %lld with a usable caption; excluded:",
          entries.n, nitems, kept, n_train, n_test, n_usable);
  for (int r = 1; r < EX_COUNT; r++)
    if (excluded_count[r]) fprintf(stderr, " %s %lld", excluded_names[r], excluded_count[r]);
  fprintf(stderr, "; %.2fs (metadata and pixels %.2fs) -> %s/\n", t_total, t_parse, out_dir);

  vlm_data_boilerplate_free(bp);
  for (size_t i = 0; i < nitems; i++) {
    free(items[i].key);
    free(items[i].image);
    free(items[i].svg);
    vlm_data_svg_meta_free(&items[i].meta);
    vlm_data_caption_free(&items[i].cap);
    free(items[i].path);
  }
  free(items);
  for (size_t i = 0; i < entries.n; i++) {
    free(entries.v[i].rel);
    free(entries.v[i].real);
  }
  free(entries.v);
  return 0;
}
