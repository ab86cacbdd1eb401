/* catalog_emb.c - clip-retrieval's embeddings layout, read and written. */
#include "catalog_emb.h"

#include "vlm_error.h"
#include "vlm_npy.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* How far from 1 a stored vector's length may be: clip-retrieval writes
 * normalized vectors as float16, whose rounding moves the length by about
 * 2^-11; anything further is not a normalized embedding. */
#define NORM_TOLERANCE 0.01

/* Rows of one .npy read ahead in blocks: one pread per ROWS_AHEAD rows
 * instead of one per row. */
#define ROWS_AHEAD 1024
typedef struct {
  float *v;          /* n rows from row first, dim floats each */
  long first, n;
} rowbuf;

typedef struct {
  char *name;        /* the suffix: "0", "03" */
  char *meta_path;
  vlm_npy *img, *txt;
  rowbuf img_ahead, txt_ahead;
  long rows;
} partition;

struct vlm__emb {
  char *dir;
  partition *parts;
  int nparts, cur;
  FILE *meta;        /* the current partition's metadata */
  long row;          /* rows of it read */
  int dim;
  long total;
};

/* ------------------------------------------------------------- reading */

static int suffix_of(const char *name, const char *prefix, const char *ext,
                     char *out, size_t cap) {
  size_t p = strlen(prefix), e = strlen(ext), n = strlen(name);
  if (n <= p + e || strncmp(name, prefix, p) || strcmp(name + n - e, ext))
    return -1;
  size_t len = n - p - e;
  if (len >= cap)
    return -1;
  for (size_t i = 0; i < len; i++)
    if (!isdigit((unsigned char)name[p + i]))
      return -1;
  memcpy(out, name + p, len);
  out[len] = '\0';
  return 0;
}

static int part_cmp(const void *a, const void *b) {
  const partition *x = a, *y = b;
  /* by number, then by text ("3" before "03" never both exist in one run) */
  size_t lx = strlen(x->name), ly = strlen(y->name);
  const char *px = x->name, *py = y->name;
  while (*px == '0' && lx > 1)
    px++, lx--;
  while (*py == '0' && ly > 1)
    py++, ly--;
  if (lx != ly)
    return lx < ly ? -1 : 1;
  int c = strcmp(px, py);
  return c ? c : strcmp(x->name, y->name);
}

int vlm__emb_is_layout(const char *dir) {
  char path[PATH_MAX], suffix[32];
  snprintf(path, sizeof path, "%s/metadata", dir);
  DIR *d = opendir(path);
  if (!d)
    return 0;
  struct dirent *e;
  int found = 0;
  while (!found && (e = readdir(d)))
    found = !suffix_of(e->d_name, "metadata_", ".jsonl", suffix,
                       sizeof suffix);
  closedir(d);
  return found;
}

static long count_lines(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  long n = 0;
  int c, last = '\n';
  while ((c = getc_unlocked(f)) != EOF) {
    if (c == '\n')
      n++;
    last = c;
  }
  if (last != '\n')
    n++; /* a last line without its newline */
  fclose(f);
  return n;
}

/* Every .npy in sub/ must belong to a partition. */
static int check_orphans(vlm__emb *e, const char *sub, const char *prefix) {
  char path[PATH_MAX], suffix[32];
  snprintf(path, sizeof path, "%s/%s", e->dir, sub);
  DIR *d = opendir(path);
  if (!d)
    return 0;
  struct dirent *de;
  int rc = 0;
  while (!rc && (de = readdir(d))) {
    if (suffix_of(de->d_name, prefix, ".npy", suffix, sizeof suffix))
      continue;
    int found = 0;
    for (int i = 0; i < e->nparts && !found; i++)
      found = !strcmp(e->parts[i].name, suffix);
    if (!found)
      rc = vlm_seterr(VLM_EFORMAT, "%s/%s/%s: no metadata/metadata_%s.jsonl "
                      "beside it (an interrupted write?)", e->dir, sub,
                      de->d_name, suffix);
  }
  closedir(d);
  return rc;
}

static int open_npy(vlm__emb *e, partition *p, const char *sub,
                    const char *prefix, vlm_npy **out) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s/%s%s.npy", e->dir, sub, prefix, p->name);
  if (access(path, F_OK) != 0)
    return 0;
  int rc = vlm_npy_open(path, out);
  if (rc)
    return rc;
  const vlm_npy_header *h = vlm_npy_info(*out);
  if (h->rows != p->rows)
    return vlm_seterr(VLM_EFORMAT, "%s: %lld rows, but %s has %ld lines: "
                      "the rows are not aligned", path, (long long)h->rows,
                      p->meta_path, p->rows);
  if (h->cols < 1 || h->cols > 65536 || (e->dim && h->cols != e->dim))
    return vlm_seterr(VLM_EFORMAT, "%s: dimension %lld, %s %d", path,
                      (long long)h->cols,
                      e->dim ? "the database's (or the other files') is"
                             : "outside 1..65536:",
                      e->dim);
  e->dim = (int)h->cols;
  return 0;
}

int vlm__emb_open(const char *dir, int dim, vlm__emb **out) {
  *out = NULL;
  vlm__emb *e = calloc(1, sizeof *e);
  if (!e || !(e->dir = strdup(dir))) {
    free(e);
    return vlm_seterr(VLM_ENOMEM, "%s", dir);
  }
  e->dim = dim;
  int rc = 0;
  char path[PATH_MAX], suffix[32];
  snprintf(path, sizeof path, "%s/metadata", dir);
  DIR *d = opendir(path);
  if (!d) {
    rc = vlm_seterr(VLM_ENOTFOUND, "%s: %s", path, strerror(errno));
    goto fail;
  }
  struct dirent *de;
  int cap = 0;
  while ((de = readdir(d))) {
    if (suffix_of(de->d_name, "metadata_", ".jsonl", suffix, sizeof suffix))
      continue;
    if (e->nparts == cap) {
      cap = cap ? 2 * cap : 16;
      partition *p = realloc(e->parts, (size_t)cap * sizeof *p);
      if (!p) {
        closedir(d);
        rc = vlm_seterr(VLM_ENOMEM, "%s", dir);
        goto fail;
      }
      e->parts = p;
    }
    partition *p = &e->parts[e->nparts];
    memset(p, 0, sizeof *p);
    snprintf(path, sizeof path, "%s/metadata/%s", dir, de->d_name);
    p->name = strdup(suffix);
    p->meta_path = strdup(path);
    e->nparts++;
    if (!p->name || !p->meta_path) {
      closedir(d);
      rc = vlm_seterr(VLM_ENOMEM, "%s", dir);
      goto fail;
    }
  }
  closedir(d);
  if (e->nparts == 0) {
    rc = vlm_seterr(VLM_EFORMAT, "%s/metadata: no metadata_*.jsonl", dir);
    goto fail;
  }
  qsort(e->parts, (size_t)e->nparts, sizeof *e->parts, part_cmp);
  for (int i = 0; i < e->nparts; i++) {
    partition *p = &e->parts[i];
    if ((p->rows = count_lines(p->meta_path)) < 0) {
      rc = vlm_seterr(VLM_EIO, "%s: %s", p->meta_path, strerror(errno));
      goto fail;
    }
    if ((rc = open_npy(e, p, "img_emb", "img_emb_", &p->img)) ||
        (rc = open_npy(e, p, "text_emb", "text_emb_", &p->txt)))
      goto fail;
    e->total += p->rows;
  }
  if ((rc = check_orphans(e, "img_emb", "img_emb_")) ||
      (rc = check_orphans(e, "text_emb", "text_emb_")))
    goto fail;
  *out = e;
  return 0;
fail:
  vlm__emb_close(e);
  return rc;
}

void vlm__emb_close(vlm__emb *e) {
  if (!e)
    return;
  for (int i = 0; i < e->nparts; i++) {
    free(e->parts[i].name);
    free(e->parts[i].meta_path);
    vlm_npy_close(e->parts[i].img);
    vlm_npy_close(e->parts[i].txt);
    free(e->parts[i].img_ahead.v);
    free(e->parts[i].txt_ahead.v);
  }
  if (e->meta)
    fclose(e->meta);
  free(e->parts);
  free(e->dir);
  free(e);
}

long vlm__emb_count(const vlm__emb *e) { return e->total; }

/* Row r of npy into a new vector; *vec NULL for a row of zeros.  1 with
 * the row's error set when it is not a finite unit vector. */
static int read_vector(vlm__emb *e, vlm_npy *npy, rowbuf *ahead,
                       const char *what, vlm_catalog_row *row, float **vec) {
  *vec = NULL;
  if (!npy)
    return 0;
  int dim = e->dim;
  if (e->row < ahead->first || e->row >= ahead->first + ahead->n) {
    long rows = vlm_npy_info(npy)->rows, n = rows - e->row;
    if (n > ROWS_AHEAD)
      n = ROWS_AHEAD;
    if (!ahead->v &&
        !(ahead->v = malloc((size_t)ROWS_AHEAD * dim * sizeof(float))))
      return vlm_seterr(VLM_ENOMEM, "%s", e->dir);
    ahead->n = 0;
    int rc = vlm_npy_read_rows(npy, e->row, n, ahead->v);
    if (rc)
      return rc;
    ahead->first = e->row, ahead->n = n;
  }
  const float *x = ahead->v + (size_t)(e->row - ahead->first) * dim;
  /* Finite, all zero, squared length: branch-free over 16 lanes so the
   * compiler vectorizes it (a float sum is exact enough for the 1%
   * tolerance below; vlm_db_put checks and normalizes again in full). */
  float acc[16] = {0};
  int finite = 1, zero = 1;
  int i = 0;
  for (; i + 16 <= dim; i += 16)
    for (int j = 0; j < 16; j++) {
      float a = x[i + j];
      finite &= fabsf(a) <= FLT_MAX;
      zero &= a == 0;
      acc[j] += a * a;
    }
  for (; i < dim; i++) {
    finite &= fabsf(x[i]) <= FLT_MAX;
    zero &= x[i] == 0;
    acc[0] += x[i] * x[i];
  }
  if (!finite) {
    for (i = 0; i < dim && isfinite(x[i]); i++)
      ;
    return vlm_catalog_row_error(row, VLM_SKIP_VECTOR,
                                 "%s vector [%d] is not finite "
                                 "(row %ld of %s_emb_%s.npy)",
                                 what, i, e->row, what,
                                 e->parts[e->cur].name);
  }
  if (zero)
    return 0;
  double ss = 0;
  for (int j = 0; j < 16; j++)
    ss += acc[j];
  double norm = sqrt(ss);
  if (!(fabs(norm - 1) <= NORM_TOLERANCE)) {
    return vlm_catalog_row_error(row, VLM_SKIP_VECTOR,
                                 "%s vector has length %.4g, not "
                                 "1: not a normalized embedding (row %ld of "
                                 "%s_emb_%s.npy)",
                                 what, norm, e->row, what,
                                 e->parts[e->cur].name);
  }
  float *v = malloc((size_t)dim * sizeof *v);
  if (!v)
    return vlm_seterr(VLM_ENOMEM, "%s", e->dir);
  memcpy(v, x, (size_t)dim * sizeof *v);
  *vec = v;
  return 0;
}

static const char *const reserved[] = {"key", "caption", "image_path",
                                       "source", "url", "meta"};

/* The catalog row object of one metadata object. */
static int map_metadata(const json_t *in, vlm_catalog_row *row,
                        json_t **out) {
  const json_t *key = json_object_get(in, "key");
  const json_t *path = json_object_get(in, "image_path");
  if (!key || json_is_null(key))
    key = path;
  if (!json_is_string(key))
    return vlm_catalog_row_error(row, VLM_SKIP_KEY,
                                 "no \"key\" or \"image_path\" "
                                 "string");
  json_t *o = json_object();
  if (!o)
    return VLM_ENOMEM;
  json_object_set(o, "key", (json_t *)key);
  const json_t *caption = json_object_get(in, "caption");
  if (caption && !json_is_null(caption))
    json_object_set(o, "caption", (json_t *)caption);
  const json_t *source = json_object_get(in, "source");
  if (!source || json_is_null(source))
    source = path;
  if (!source || json_is_null(source))
    source = json_object_get(in, "url");
  if (source && !json_is_null(source))
    json_object_set(o, "source", (json_t *)source);
  const json_t *meta = json_object_get(in, "meta");
  if (meta) {
    json_object_set(o, "meta", (json_t *)meta);
  } else {
    json_t *m = json_object();
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)in, name, v) {
      size_t r = 0;
      while (r < sizeof reserved / sizeof reserved[0] &&
             strcmp(name, reserved[r]))
        r++;
      if (r == sizeof reserved / sizeof reserved[0] && !json_is_null(v))
        json_object_set(m, name, v);
    }
    if (json_object_size(m))
      json_object_set_new(o, "meta", m);
    else
      json_decref(m);
  }
  *out = o;
  return 0;
}

int vlm__emb_next(vlm__emb *e, vlm_catalog_row *row, json_t **obj,
                  float **image_vec, float **text_vec, int *dim) {
  *obj = NULL;
  *image_vec = *text_vec = NULL;
  *dim = e->dim;
  for (;;) {
    if (e->cur >= e->nparts)
      return 0;
    partition *p = &e->parts[e->cur];
    if (!e->meta) {
      if (!(e->meta = fopen(p->meta_path, "r")))
        return vlm_seterr(VLM_EIO, "%s: %s", p->meta_path, strerror(errno));
      e->row = 0;
    }
    if (e->row < p->rows)
      break;
    fclose(e->meta);
    e->meta = NULL;
    free(p->img_ahead.v);
    free(p->txt_ahead.v);
    memset(&p->img_ahead, 0, sizeof p->img_ahead);
    memset(&p->txt_ahead, 0, sizeof p->txt_ahead);
    e->cur++;
  }
  partition *p = &e->parts[e->cur];
  char *line = NULL;
  size_t cap = 0;
  errno = 0;
  ssize_t n = getline(&line, &cap, e->meta);
  if (n < 0) {
    free(line);
    return vlm_seterr(VLM_EIO, "%s: %s", p->meta_path,
                      errno ? strerror(errno) : "shorter than when opened");
  }
  row->line = e->row + 1;
  int rc = 0;
  if ((size_t)n != strlen(line)) {
    rc = vlm_catalog_row_error(row, VLM_SKIP_SYNTAX,
                               "metadata_%s.jsonl: NUL byte in "
                               "the line",
                               p->name);
  } else {
    json_error_t jerr;
    json_t *in = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(in))
      rc = vlm_catalog_row_error(row, VLM_SKIP_SYNTAX, "metadata_%s.jsonl: %s",
                                 p->name, in ? "not a JSON object" : jerr.text);
    else
      rc = map_metadata(in, row, obj);
    json_decref(in);
  }
  if (!rc && !(rc = read_vector(e, p->img, &p->img_ahead, "img", row,
                                image_vec)))
    rc = read_vector(e, p->txt, &p->txt_ahead, "text", row, text_vec);
  if (!rc && !*image_vec && !*text_vec)
    rc = vlm_catalog_row_error(row, VLM_SKIP_EMPTY,
                               "no image or text vector (rows of "
                               "zeros)");
  e->row++;
  free(line);
  if (rc) {
    json_decref(*obj);
    *obj = NULL;
    free(*image_vec);
    free(*text_vec);
    *image_vec = *text_vec = NULL;
    return rc < 0 ? rc : 1;
  }
  return 1;
}

/* ------------------------------------------------------------- writing */

struct vlm__emb_writer {
  vlm_npy_writer *img, *txt;
  FILE *meta;
  char meta_tmp[PATH_MAX], meta_path[PATH_MAX];
  char img_path[PATH_MAX], txt_path[PATH_MAX];
  float *zeros;
  int dim;
  long images, texts;
};

static int make_dir(const char *path) {
  if (mkdir(path, 0755) != 0 && errno != EEXIST)
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  return 0;
}

int vlm__emb_writer_open(const char *dir, const char *name, int dim, int f16,
                         vlm__emb_writer **out) {
  *out = NULL;
  char path[PATH_MAX];
  int rc;
  static const char *const subs[] = {"", "/img_emb", "/text_emb",
                                     "/metadata"};
  for (int i = 0; i < 4; i++) {
    snprintf(path, sizeof path, "%s%s", dir, subs[i]);
    if ((rc = make_dir(path)))
      return rc;
  }
  vlm__emb_writer *w = calloc(1, sizeof *w);
  if (!w || !(w->zeros = calloc((size_t)dim, sizeof *w->zeros))) {
    free(w);
    return vlm_seterr(VLM_ENOMEM, "%s", dir);
  }
  w->dim = dim;
  snprintf(w->img_path, sizeof w->img_path, "%s/img_emb/img_emb_%s.npy", dir,
           name);
  snprintf(w->txt_path, sizeof w->txt_path, "%s/text_emb/text_emb_%s.npy",
           dir, name);
  snprintf(w->meta_path, sizeof w->meta_path,
           "%s/metadata/metadata_%s.jsonl", dir, name);
  snprintf(w->meta_tmp, sizeof w->meta_tmp, "%s.tmp", w->meta_path);
  vlm_npy_dtype dt = f16 ? VLM_NPY_F16 : VLM_NPY_F32;
  if ((rc = vlm_npy_writer_open(w->img_path, dim, dt, &w->img)) ||
      (rc = vlm_npy_writer_open(w->txt_path, dim, dt, &w->txt))) {
    vlm__emb_writer_abort(w);
    return rc;
  }
  if (!(w->meta = fopen(w->meta_tmp, "w"))) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", w->meta_tmp, strerror(errno));
    vlm__emb_writer_abort(w);
    return rc;
  }
  /* a partition written again replaces the old one: its files go first,
   * so no reader pairs old vectors with new metadata */
  unlink(w->meta_path);
  unlink(w->img_path);
  unlink(w->txt_path);
  *out = w;
  return 0;
}

int vlm__emb_writer_add(vlm__emb_writer *w, const float *image_vec,
                        const float *text_vec, json_t *meta) {
  int rc;
  if ((rc = vlm_npy_writer_append(w->img, image_vec ? image_vec : w->zeros,
                                  1)) ||
      (rc = vlm_npy_writer_append(w->txt, text_vec ? text_vec : w->zeros, 1)))
    return rc;
  w->images += image_vec != NULL;
  w->texts += text_vec != NULL;
  char *line = json_dumps(meta, JSON_COMPACT | JSON_PRESERVE_ORDER |
                                    JSON_REAL_PRECISION(17));
  if (!line)
    return vlm_seterr(VLM_ENOMEM, "%s", w->meta_tmp);
  rc = fprintf(w->meta, "%s\n", line) < 0
           ? vlm_seterr(VLM_EIO, "%s: %s", w->meta_tmp, strerror(errno))
           : 0;
  free(line);
  return rc;
}

int vlm__emb_writer_finish(vlm__emb_writer *w) {
  int rc = 0;
  /* a kind no row has is left out, as clip-retrieval leaves out what it
   * did not compute (an empty partition keeps both, of zero rows) */
  int any = w->images || w->texts;
  if (w->images || !any)
    rc = vlm_npy_writer_finish(w->img);
  else
    vlm_npy_writer_abort(w->img);
  w->img = NULL;
  if (!rc && (w->texts || !any))
    rc = vlm_npy_writer_finish(w->txt);
  else
    vlm_npy_writer_abort(w->txt);
  w->txt = NULL;
  if (!rc && (fflush(w->meta) != 0 || fsync(fileno(w->meta)) != 0))
    rc = vlm_seterr(VLM_EIO, "%s: %s", w->meta_tmp, strerror(errno));
  if (fclose(w->meta) != 0 && !rc)
    rc = vlm_seterr(VLM_EIO, "%s: %s", w->meta_tmp, strerror(errno));
  w->meta = NULL;
  if (!rc && rename(w->meta_tmp, w->meta_path) != 0)
    rc = vlm_seterr(VLM_EIO, "%s: %s", w->meta_path, strerror(errno));
  if (rc) {
    unlink(w->img_path);
    unlink(w->txt_path);
  }
  vlm__emb_writer_abort(w);
  return rc;
}

void vlm__emb_writer_abort(vlm__emb_writer *w) {
  if (!w)
    return;
  vlm_npy_writer_abort(w->img);
  vlm_npy_writer_abort(w->txt);
  if (w->meta) {
    fclose(w->meta);
    unlink(w->meta_tmp);
  }
  free(w->zeros);
  free(w);
}
