/* test_cli.c - the command-line tool: catalog readers (JSONL, CSV/TSV,
 * directories), progress text, the eval metric, and (with the database and
 * the conformance model) the `vlmdb` binary end to end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog.h"
#include "progress.h"
#include "vlm_error.h"
#include "vlm_eval.h"

/* ------------------------------------------------------------ helpers */

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void rm_rf(const char *dir) {
  nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static char *make_tmpdir(void) {
  char *dir = strdup("/tmp/vlm_test_cli.XXXXXX");
  assert_non_null(mkdtemp(dir));
  return dir;
}

static void write_file(const char *dir, const char *name, const char *text) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  /* create parent directories */
  for (char *p = path + strlen(dir) + 1; (p = strchr(p, '/')); p++) {
    *p = '\0';
    mkdir(path, 0755);
    *p = '/';
  }
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* Read every row of a catalog; returns the count. */
#define MAX_ROWS 32
static int read_all(const char *path, const vlm_catalog_options *opts,
                    vlm_catalog_row *rows) {
  vlm_catalog *cat;
  int rc = vlm_catalog_open(path, opts, &cat);
  if (rc)
    fail_msg("open %s: %s", path, vlm_errmsg());
  int n = 0;
  while (n < MAX_ROWS && (rc = vlm_catalog_next(cat, &rows[n])) == 1)
    n++;
  assert_int_equal(rc, n == MAX_ROWS ? 1 : 0);
  long counted = vlm_catalog_count(cat);
  assert_int_equal(counted, n);
  vlm_catalog_close(cat);
  return n;
}

static void clear_rows(vlm_catalog_row *rows, int n) {
  for (int i = 0; i < n; i++)
    vlm_catalog_row_clear(&rows[i]);
}

static void assert_path_is(const char *got, const char *dir, const char *rel) {
  char want[PATH_MAX];
  snprintf(want, sizeof want, "%s/%s", dir, rel);
  assert_non_null(got);
  assert_string_equal(got, want);
}

/* ------------------------------------------------------------- JSONL */

static void test_jsonl_rows_and_errors(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  write_file(dir, "cat.jsonl",
             "{\"key\": \"a\", \"image\": \"img/a.jpg\", \"text\": \"a cat\", "
             "\"meta\": {\"category\": \"animals\", \"year\": 2005, \"x\": [1]}}\n"
             "\n"
             "{\"key\": \"\\u732b/ねこ é\", \"text\": \"unicode key\"}\n"
             "{\"key\": \"bad\", \"text\": \"unterminated\"\n"
             "   \t\n"
             "{\"key\": \"wt\", \"text\": 5}\n"
             "{\"key\": \"yr\", \"text\": \"t\", \"meta\": {\"year\": \"2005\"}}\n"
             "{\"text\": \"no key\"}\n"
             "{\"key\": \"empty\"}\n"
             "[1, 2]\n"
             "{\"key\": \"v\", \"vector\": [1, 0, 0.5]}\n"
             "{\"key\": \"vt\", \"text\": \"hi\", \"vector\": [1, 2, 3]}\n"
             "{\"key\": \"vd\", \"vector\": [1, 2]}\n"
             "{\"key\": \"abs\", \"image\": \"/data/../x/./y.png\", "
             "\"caption\": \"stored only\", \"meta\": {\"price\": 3}}\n"
             "{\"key\": \"both\", \"text\": \"t\", \"caption\": \"c\"}\n");
  vlm_field fields[] = {{"category", VLM_FIELD_TEXT},
                        {"year", VLM_FIELD_INT},
                        {"price", VLM_FIELD_REAL}};
  vlm_catalog_options opts = {.fields = fields, .nfields = 3, .dim = 3};
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/cat.jsonl", dir);
  vlm_catalog_row rows[MAX_ROWS] = {{0}};
  int n = read_all(path, &opts, rows);
  assert_int_equal(n, 13);

  assert_int_equal(rows[0].error, VLM_SKIP_NONE);
  assert_int_equal(rows[0].line, 1);
  assert_string_equal(rows[0].key, "a");
  assert_path_is(rows[0].image, dir, "img/a.jpg");
  assert_string_equal(rows[0].source, rows[0].image);
  assert_string_equal(rows[0].text, "a cat");
  assert_string_equal(rows[0].caption, "a cat");
  json_t *meta = json_loads(rows[0].meta_json, 0, NULL);
  assert_non_null(meta);
  assert_string_equal(json_string_value(json_object_get(meta, "category")),
                      "animals");
  assert_int_equal(json_integer_value(json_object_get(meta, "year")), 2005);
  json_decref(meta);

  assert_int_equal(rows[1].error, VLM_SKIP_NONE);
  assert_int_equal(rows[1].line, 3);
  assert_string_equal(rows[1].key, "\xe7\x8c\xab/ねこ é");
  assert_null(rows[1].image);

  assert_int_equal(rows[2].line, 4);
  assert_int_equal(rows[2].error, VLM_SKIP_SYNTAX);
  assert_non_null(strstr(rows[2].message, "bad JSON"));

  assert_int_equal(rows[3].line, 6);
  assert_int_equal(rows[3].error, VLM_SKIP_TYPE);
  assert_non_null(strstr(rows[3].message, "\"text\" must be a string"));

  assert_int_equal(rows[4].line, 7);
  assert_int_equal(rows[4].error, VLM_SKIP_TYPE);
  assert_non_null(strstr(rows[4].message, "meta.year must be an integer"));

  assert_int_equal(rows[5].line, 8);
  assert_int_equal(rows[5].error, VLM_SKIP_KEY);

  assert_int_equal(rows[6].line, 9);
  assert_int_equal(rows[6].error, VLM_SKIP_EMPTY);
  assert_int_equal(rows[7].line, 10);
  assert_int_equal(rows[7].error, VLM_SKIP_SYNTAX);

  /* "vector" goes to the image without an image or text ... */
  assert_int_equal(rows[8].error, VLM_SKIP_NONE);
  assert_non_null(rows[8].image_vec);
  assert_null(rows[8].text_vec);
  assert_true(rows[8].image_vec[2] == 0.5f);
  /* ... and to the text of a text-only item */
  assert_int_equal(rows[9].error, VLM_SKIP_NONE);
  assert_null(rows[9].image_vec);
  assert_non_null(rows[9].text_vec);
  assert_true(rows[9].text_vec[1] == 2.0f);

  assert_int_equal(rows[10].line, 13);
  assert_int_equal(rows[10].error, VLM_SKIP_VECTOR);
  assert_non_null(strstr(rows[10].message, "dimension is 3"));

  assert_int_equal(rows[11].error, VLM_SKIP_NONE);
  assert_string_equal(rows[11].image, "/x/y.png");
  assert_null(rows[11].text);
  assert_string_equal(rows[11].caption, "stored only");

  assert_int_equal(rows[12].error, VLM_SKIP_TYPE);
  clear_rows(rows, n);

  /* --images-root replaces the catalog's directory as the base. */
  opts.images_root = "/srv/images";
  n = read_all(path, &opts, rows);
  assert_string_equal(rows[0].image, "/srv/images/img/a.jpg");
  clear_rows(rows, n);
  rm_rf(dir);
  free(dir);
}

/* --------------------------------------------------------------- CSV */

static void test_csv_quoting_and_line_numbers(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  write_file(dir, "cat.csv",
             "key,image,text,meta.category,meta.year,meta.price\r\n"
             "k1,a.jpg,\"a dog, a cat\",animals,2001,1.5\r\n"
             "k2,,\"she said \"\"hi\"\"\",,,\r\n"
             "\"k3\",b.png,\"two\nlines\nof text\",\"x,y\",2003,\n"
             "\n"
             "k4,c.jpg,plain,misc,not-a-year,2\n"
             "k5,d.jpg,too,many,fields,1,2\n"
             "k6,e.jpg,\"bad \"quote,z,1,1\n"
             "\"k7 \xf0\x9f\x90\x88\",f.jpg,\"\",\"\",2007,0.25\n"
             "k8,g.jpg,\"never closed,x,1,1\n"
             "k9,h.jpg,lost,x,1,1\n");
  vlm_field fields[] = {{"year", VLM_FIELD_INT}, {"price", VLM_FIELD_REAL}};
  vlm_catalog_options opts = {.fields = fields, .nfields = 2};
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/cat.csv", dir);
  vlm_catalog_row rows[MAX_ROWS] = {{0}};
  int n = read_all(path, &opts, rows);
  assert_int_equal(n, 8);

  assert_int_equal(rows[0].error, VLM_SKIP_NONE);
  assert_int_equal(rows[0].line, 2);
  assert_string_equal(rows[0].text, "a dog, a cat");
  json_t *meta = json_loads(rows[0].meta_json, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(meta, "category")),
                      "animals");
  assert_true(json_is_integer(json_object_get(meta, "year")));
  assert_int_equal(json_integer_value(json_object_get(meta, "year")), 2001);
  assert_true(json_real_value(json_object_get(meta, "price")) == 1.5);
  json_decref(meta);

  assert_int_equal(rows[1].line, 3);
  assert_string_equal(rows[1].text, "she said \"hi\"");
  assert_null(rows[1].image);
  assert_null(rows[1].meta_json);

  assert_int_equal(rows[2].line, 4);
  assert_string_equal(rows[2].key, "k3");
  assert_string_equal(rows[2].text, "two\nlines\nof text");
  meta = json_loads(rows[2].meta_json, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(meta, "category")),
                      "x,y");
  json_decref(meta);

  /* The quoted newlines count: k4 starts on line 8 (a blank line 7). */
  assert_int_equal(rows[3].line, 8);
  assert_int_equal(rows[3].error, VLM_SKIP_TYPE);
  assert_non_null(strstr(rows[3].message, "meta.year"));
  assert_non_null(strstr(rows[3].message, "not an integer"));

  assert_int_equal(rows[4].line, 9);
  assert_int_equal(rows[4].error, VLM_SKIP_SYNTAX);
  assert_non_null(strstr(rows[4].message, "7 fields, the header has 6"));

  assert_int_equal(rows[5].line, 10);
  assert_int_equal(rows[5].error, VLM_SKIP_SYNTAX);
  assert_non_null(strstr(rows[5].message, "after a closing quote"));

  assert_int_equal(rows[6].line, 11);
  assert_int_equal(rows[6].error, VLM_SKIP_NONE);
  assert_string_equal(rows[6].key, "k7 \xf0\x9f\x90\x88");
  assert_null(rows[6].text); /* "" is an absent value */

  /* An unterminated quote swallows the rest of the file: one bad row that
   * names the line the quote opened on. */
  assert_int_equal(rows[7].line, 12);
  assert_int_equal(rows[7].error, VLM_SKIP_SYNTAX);
  assert_non_null(strstr(rows[7].message, "unterminated"));
  clear_rows(rows, n);
  rm_rf(dir);
  free(dir);
}

static void test_tsv_and_vectors(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  write_file(dir, "cat.tsv",
             "key\ttext\tvector\tmeta.note\n"
             "t1\thello, world\t[0.25, -1, 3e2]\tcomma, inside\n"
             "t2\tbye\t1 2\tx\n"
             "t3\t\"quoted\ttab\"\t0.5,0.5,0.5\t\n");
  vlm_catalog_options opts = {.dim = 3};
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/cat.tsv", dir);
  vlm_catalog_row rows[MAX_ROWS] = {{0}};
  int n = read_all(path, &opts, rows);
  assert_int_equal(n, 3);
  assert_int_equal(rows[0].error, VLM_SKIP_NONE);
  assert_string_equal(rows[0].text, "hello, world");
  assert_non_null(rows[0].text_vec);
  assert_true(rows[0].text_vec[0] == 0.25f && rows[0].text_vec[1] == -1.0f &&
              rows[0].text_vec[2] == 300.0f);
  assert_int_equal(rows[1].error, VLM_SKIP_VECTOR);
  assert_int_equal(rows[1].line, 3);
  assert_int_equal(rows[2].error, VLM_SKIP_NONE);
  assert_string_equal(rows[2].text, "quoted\ttab");
  assert_true(rows[2].text_vec[2] == 0.5f);
  clear_rows(rows, n);
  rm_rf(dir);
  free(dir);
}

static void test_csv_bad_headers(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  char path[PATH_MAX];
  vlm_catalog *cat = NULL;
  write_file(dir, "a.csv", "key,imgae\nk,x.jpg\n");
  snprintf(path, sizeof path, "%s/a.csv", dir);
  assert_int_equal(vlm_catalog_open(path, NULL, &cat), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), "unknown column \"imgae\""));
  assert_null(cat);
  write_file(dir, "b.csv", "image,text\nx.jpg,t\n");
  snprintf(path, sizeof path, "%s/b.csv", dir);
  assert_int_equal(vlm_catalog_open(path, NULL, &cat), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), "no \"key\" column"));
  write_file(dir, "c.csv", "key,text,text\n");
  snprintf(path, sizeof path, "%s/c.csv", dir);
  assert_int_equal(vlm_catalog_open(path, NULL, &cat), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), "twice"));
  write_file(dir, "d.txt", "key\n");
  snprintf(path, sizeof path, "%s/d.txt", dir);
  assert_int_equal(vlm_catalog_open(path, NULL, &cat), VLM_EINVAL);
  snprintf(path, sizeof path, "%s/missing.jsonl", dir);
  assert_int_equal(vlm_catalog_open(path, NULL, &cat), VLM_ENOTFOUND);
  rm_rf(dir);
  free(dir);
}

/* --------------------------------------------------------- directory */

static void test_directory_catalog(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  write_file(dir, "b.jpg", "not really a jpeg");
  write_file(dir, "b.txt", "  caption of b\n");
  write_file(dir, "sub/a.PNG", "x");
  write_file(dir, "sub/a.PNG.txt", "caption of a");
  write_file(dir, "sub/c.jpeg", "x");
  write_file(dir, "sub/notes.md", "not an image");
  write_file(dir, ".hidden.jpg", "x");
  write_file(dir, "\xc3\xa9t\xc3\xa9.jpg", "x"); /* été.jpg */
  vlm_catalog_row rows[MAX_ROWS] = {{0}};
  int n = read_all(dir, NULL, rows);
  assert_int_equal(n, 4);
  /* key order: bytes */
  assert_string_equal(rows[0].key, "b.jpg");
  assert_string_equal(rows[0].text, "caption of b");
  assert_path_is(rows[0].image, dir, "b.jpg");
  assert_string_equal(rows[1].key, "sub/a.PNG");
  assert_string_equal(rows[1].text, "caption of a");
  assert_string_equal(rows[2].key, "sub/c.jpeg");
  assert_null(rows[2].text);
  assert_string_equal(rows[3].key, "\xc3\xa9t\xc3\xa9.jpg");
  for (int i = 0; i < n; i++) {
    assert_int_equal(rows[i].error, VLM_SKIP_NONE);
    assert_int_equal(rows[i].line, i + 1);
  }
  clear_rows(rows, n);
  rm_rf(dir);
  free(dir);
}

/* ------------------------------------------------- export round trip */

static void test_base64_rfc4648_vectors(void **state) {
  (void)state;
  const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  const char *coded[] = {"",     "Zg==",     "Zm8=",    "Zm9v",
                         "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
  for (int i = 0; i < 7; i++) {
    char *e = vlm_base64_encode(plain[i], strlen(plain[i]));
    assert_string_equal(e, coded[i]);
    free(e);
    uint8_t *d;
    size_t len;
    assert_int_equal(vlm_base64_decode(coded[i], &d, &len), 0);
    assert_int_equal(len, strlen(plain[i]));
    assert_memory_equal(d, plain[i], len);
    free(d);
  }
  uint8_t *d;
  size_t len;
  assert_int_equal(vlm_base64_decode("Zm9", &d, &len), VLM_EFORMAT);
  assert_int_equal(vlm_base64_decode("Zm!v", &d, &len), VLM_EFORMAT);
  assert_int_equal(vlm_base64_decode("Z=9v", &d, &len), VLM_EFORMAT);
}

static void test_export_line_reads_back(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  float image_vec[4] = {0.1f, -0.2f, 1.0f / 3.0f, 1e-30f};
  float text_vec[4] = {3.4e38f, -1.17549435e-38f, 0.0f, 0.7f};
  uint8_t thumb[5] = {0xff, 0xd8, 0x00, 0x7f, 0xd9};
  vlm_record rec = {.key = "k\"ey\n\xe2\x9c\x93",
                    .dim = 4,
                    .image_vec = image_vec,
                    .text_vec = text_vec,
                    .caption = "a \"caption\"",
                    .source = "/images/a b.jpg",
                    .thumb = thumb,
                    .thumb_len = sizeof thumb,
                    .meta_json = "{\"year\":2001,\"tags\":\"x\"}"};
  char *line = vlm_catalog_format_record(&rec, 1);
  assert_non_null(line);
  vlm_record bare = {.key = "bare", .dim = 4, .image_vec = image_vec,
                     .caption = "stored only", .meta_json = "{}"};
  char *line2 = vlm_catalog_format_record(&bare, 0);
  assert_non_null(line2);
  assert_string_equal(line2, "{\"key\":\"bare\",\"caption\":\"stored only\"}");
  char *text;
  size_t tlen;
  FILE *mem = open_memstream(&text, &tlen);
  fprintf(mem, "%s\n%s\n", line, line2);
  fclose(mem);
  write_file(dir, "export.jsonl", text);
  free(text);
  free(line);
  free(line2);

  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/export.jsonl", dir);
  vlm_catalog_options opts = {.dim = 4};
  vlm_catalog_row rows[MAX_ROWS] = {{0}};
  int n = read_all(path, &opts, rows);
  assert_int_equal(n, 2);
  assert_int_equal(rows[0].error, VLM_SKIP_NONE);
  assert_string_equal(rows[0].key, rec.key);
  assert_string_equal(rows[0].image, rec.source);
  assert_string_equal(rows[0].source, rec.source);
  assert_string_equal(rows[0].text, rec.caption);
  for (int i = 0; i < 4; i++) {
    if (rows[0].image_vec[i] != image_vec[i] ||
        rows[0].text_vec[i] != text_vec[i])
      fail_msg("vector %d: image %.9g vs %.9g, text %.9g vs %.9g", i,
               rows[0].image_vec[i], image_vec[i], rows[0].text_vec[i],
               text_vec[i]);
  }
  assert_int_equal(rows[0].thumb_len, sizeof thumb);
  assert_memory_equal(rows[0].thumb, thumb, sizeof thumb);
  json_t *a = json_loads(rows[0].meta_json, 0, NULL);
  json_t *b = json_loads(rec.meta_json, 0, NULL);
  assert_true(json_equal(a, b));
  json_decref(a);
  json_decref(b);
  /* a stored-only caption without vectors is not a row ingest can use */
  assert_int_equal(rows[1].error, VLM_SKIP_EMPTY);
  clear_rows(rows, n);
  rm_rf(dir);
  free(dir);
}

static void test_resolve_path(void **state) {
  (void)state;
  struct {
    const char *base, *path, *want;
  } cases[] = {
      {"/a/b", "c.jpg", "/a/b/c.jpg"},
      {"/a/b", "../c.jpg", "/a/c.jpg"},
      {"/a/b", "./x/../../../../c.jpg", "/c.jpg"},
      {"/a/b", "/abs//p/./q.png", "/abs/p/q.png"},
      {"/", "x", "/x"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *got = vlm_catalog_resolve_path(cases[i].base, cases[i].path);
    if (strcmp(got, cases[i].want))
      fail_msg("resolve(%s, %s) = %s, want %s", cases[i].base, cases[i].path,
               got, cases[i].want);
    free(got);
  }
  char cwd[PATH_MAX], want[PATH_MAX + 16];
  assert_non_null(getcwd(cwd, sizeof cwd));
  snprintf(want, sizeof want, "%s/rel/x.jpg", strcmp(cwd, "/") ? cwd : "");
  char *got = vlm_catalog_resolve_path("rel", "x.jpg");
  assert_string_equal(got, want);
  free(got);
}

/* ----------------------------------------------------------- progress */

static void test_progress_text(void **state) {
  (void)state;
  char buf[256];
  vlm_progress_format(buf, sizeof buf, 250, 1000, 5.0, 10);
  assert_string_equal(buf, "[##........] 250/1000   25%  50.0 items/s  ETA 0:15");
  vlm_progress_format(buf, sizeof buf, 1000, 1000, 10.0, 4);
  assert_string_equal(buf, "[####] 1000/1000  100%  100.0 items/s  ETA 0:00");
  vlm_progress_format(buf, sizeof buf, 0, 10, 0.0, 0);
  assert_string_equal(buf, "0/10    0%  0.0 items/s  ETA ?");
  vlm_progress_format(buf, sizeof buf, 42, -1, 2.0, 10);
  assert_string_equal(buf, "42  21.0 items/s");
  vlm_format_duration(buf, sizeof buf, 3725.2);
  assert_string_equal(buf, "1:02:05");
}

/* -------------------------------------------------------------- eval */

/* A hand-computed example: 3 text queries over 4 images, and 4 image
 * queries over 5 captions (image 0 has two captions, COCO style). */
static void test_eval_metric_by_hand(void **state) {
  (void)state;
  /* t2i scores[query][image] */
  const float t2i[3][4] = {
      {0.9f, 0.1f, 0.2f, 0.3f},  /* gt 0: rank 1 */
      {0.5f, 0.5f, 0.4f, 0.5f},  /* gt 1: ties with 0 and 3 -> rank 3 */
      {0.1f, 0.6f, 0.2f, 0.7f},  /* gt 2: 1 and 3 above -> rank 3 */
  };
  const int64_t gt_t2i[3] = {0, 1, 2};
  int64_t ranks[4];
  for (int q = 0; q < 3; q++)
    ranks[q] = vlm_eval_rank(t2i[q], 4, &gt_t2i[q], 1);
  assert_int_equal(ranks[0], 1);
  assert_int_equal(ranks[1], 3);
  assert_int_equal(ranks[2], 3);
  int ks[3] = {1, 2, 3};
  double recall[3], median, mean;
  vlm_eval_summarize(ranks, 3, ks, 3, recall, &median, &mean);
  assert_float_equal(recall[0], 1.0 / 3, 1e-12);
  assert_float_equal(recall[1], 1.0 / 3, 1e-12);
  assert_float_equal(recall[2], 1.0, 1e-12);
  assert_float_equal(median, 3.0, 1e-12);
  assert_float_equal(mean, 7.0 / 3, 1e-12);

  /* i2t: captions 0 and 1 belong to image 0, 2 to image 1, 3 to image 2,
   * 4 to image 3. */
  const float i2t[4][5] = {
      {0.2f, 0.8f, 0.9f, 0.1f, 0.0f}, /* best own = 0.8 (cap 1); cap 2 above:
                                         rank 2 */
      {0.3f, 0.3f, 0.3f, 0.3f, 0.3f}, /* all tied: 4 others -> rank 5 */
      {0.7f, 0.6f, 0.5f, 0.9f, 0.8f}, /* own 0.9 on top -> rank 1 */
      {0.9f, 0.1f, 0.2f, 0.3f, 0.4f}, /* own 0.4; 0.9 above -> rank 2 */
  };
  const int64_t gt0[2] = {0, 1}, gt1[1] = {2}, gt2[1] = {3}, gt3[1] = {4};
  const int64_t *gts[4] = {gt0, gt1, gt2, gt3};
  const int ngt[4] = {2, 1, 1, 1};
  for (int q = 0; q < 4; q++)
    ranks[q] = vlm_eval_rank(i2t[q], 5, gts[q], ngt[q]);
  assert_int_equal(ranks[0], 2);
  assert_int_equal(ranks[1], 5);
  assert_int_equal(ranks[2], 1);
  assert_int_equal(ranks[3], 2);
  /* two captions tied with each other and nothing else count once */
  const float tied_own[3] = {0.5f, 0.5f, 0.1f};
  assert_int_equal(vlm_eval_rank(tied_own, 3, gt0, 2), 1);

  int ks2[3] = {1, 2, 5};
  vlm_eval_summarize(ranks, 4, ks2, 3, recall, &median, &mean);
  assert_float_equal(recall[0], 0.25, 1e-12);
  assert_float_equal(recall[1], 0.75, 1e-12);
  assert_float_equal(recall[2], 1.0, 1e-12);
  assert_float_equal(median, 2.0, 1e-12); /* (2 + 2) / 2 */
  assert_float_equal(mean, 2.5, 1e-12);

  const char *approx[] = {"a", "b", "c", "d"};
  const char *exact[] = {"a", "c", "e", "b"};
  assert_float_equal(vlm_eval_overlap(approx, 4, exact, 4, 1), 1.0, 1e-12);
  assert_float_equal(vlm_eval_overlap(approx, 4, exact, 4, 2), 0.5, 1e-12);
  assert_float_equal(vlm_eval_overlap(approx, 4, exact, 4, 3), 2.0 / 3,
                     1e-12);
  assert_float_equal(vlm_eval_overlap(approx, 2, exact, 4, 4), 0.5, 1e-12);
  assert_float_equal(vlm_eval_overlap(approx, 4, exact, 0, 4), 1.0, 1e-12);
}

static void test_eval_pairs_file(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  write_file(dir, "pairs.jsonl",
             "{\"image\": \"img1\", \"text\": \"img1#0\"}\n\n"
             "{\"image\": \"img2\", \"text\": [\"img2#0\", \"img2#1\"]}\n");
  write_file(dir, "bad.jsonl", "{\"image\": \"img1\", \"text\": \"a\"}\n"
                               "{\"image\": 3, \"text\": \"b\"}\n");
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/pairs.jsonl", dir);
  vlm_eval_pair *pairs;
  int n;
  assert_int_equal(vlm_eval_pairs_load(path, &pairs, &n), 0);
  assert_int_equal(n, 3);
  assert_string_equal(pairs[0].image_key, "img1");
  assert_string_equal(pairs[0].text_key, "img1#0");
  assert_string_equal(pairs[2].image_key, "img2");
  assert_string_equal(pairs[2].text_key, "img2#1");
  vlm_eval_pairs_free(pairs, n);
  snprintf(path, sizeof path, "%s/bad.jsonl", dir);
  assert_int_equal(vlm_eval_pairs_load(path, &pairs, &n), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), "bad.jsonl:2:"));
  rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_jsonl_rows_and_errors),
      cmocka_unit_test(test_csv_quoting_and_line_numbers),
      cmocka_unit_test(test_tsv_and_vectors),
      cmocka_unit_test(test_csv_bad_headers),
      cmocka_unit_test(test_directory_catalog),
      cmocka_unit_test(test_base64_rfc4648_vectors),
      cmocka_unit_test(test_export_line_reads_back),
      cmocka_unit_test(test_resolve_path),
      cmocka_unit_test(test_progress_text),
      cmocka_unit_test(test_eval_metric_by_hand),
      cmocka_unit_test(test_eval_pairs_file),
  };
  return cmocka_run_group_tests_name("cli", tests, NULL, NULL);
}
