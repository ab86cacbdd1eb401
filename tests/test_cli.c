/* test_cli.c - the command-line tool: catalog readers (JSONL, CSV/TSV,
 * directories), progress text, the eval metric, and (with the database and
 * the conformance model) the `vlmdb` binary end to end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>
#include "catalog.h"
#include "util/util.h"
#include "image.h"
#include "progress.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_file.h"
#include "vlm_eval.h"

/* ------------------------------------------------------------ helpers */

/* db/sqlvfs.c: the VFS vlmdb opens meta.sqlite through (page checksums). */
const char *vlm__sql_vfs(void);

static void rm_rf(const char *dir) { vlm_test_rm_rf(dir); }

static char *make_tmpdir(void) {
  char *dir = strdup("/tmp/vlm_test_cli.XXXXXX");
  assert_non_null(mkdtemp(dir));
  return dir;
}

/* Each test that writes files gets a fresh directory, removed afterwards
 * even when the test fails. */
static pid_t running_child; /* a vlmdb still running, killed on teardown */

static int setup_tmpdir(void **state) {
  *state = make_tmpdir();
  return 0;
}

static int teardown_tmpdir(void **state) {
  if (running_child > 0) {
    kill(running_child, SIGKILL);
    waitpid(running_child, NULL, 0);
    running_child = 0;
  }
  rm_rf(*state);
  free(*state);
  return 0;
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

/* Like write_file, for contents with NUL bytes. */
static void write_bytes(const char *dir, const char *name, const char *data,
                        size_t len) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
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
  const char *dir = *state;
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
}

/* --------------------------------------------------------------- CSV */

/* "texts": other captions, as an array or by language; empty ones are
 * dropped, anything but strings makes the row bad. */
static void test_jsonl_texts(void **state) {
  const char *dir = *state;
  write_file(dir, "texts.jsonl",
             "{\"key\": \"a\", \"text\": \"a cat\", \"texts\": [\"eine Katze\", "
             "\"\", \"un chat\"]}\n"
             "{\"key\": \"b\", \"text\": \"a dog\", \"texts\": {\"de\": \"ein "
             "Hund\", \"ja\": [\"\\u72ac\", \"\\u3044\\u306c\"], \"fr\": []}}\n"
             "{\"key\": \"c\", \"text\": \"x\", \"texts\": {\"de\": 3}}\n"
             "{\"key\": \"d\", \"text\": \"x\", \"texts\": \"not a list\"}\n"
             "{\"key\": \"e\", \"text\": \"x\", \"texts\": [\"a\\u0000b\"]}\n"
             "{\"key\": \"f\", \"text\": \"no others\", \"texts\": null}\n");
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/texts.jsonl", dir);
  vlm_catalog_row rows[MAX_ROWS] = {{0}};
  int n = read_all(path, NULL, rows);
  assert_int_equal(n, 6);
  assert_int_equal(rows[0].error, VLM_SKIP_NONE);
  assert_int_equal(rows[0].ntexts, 2);
  assert_string_equal(rows[0].texts[0], "eine Katze");
  assert_string_equal(rows[0].texts[1], "un chat");
  assert_int_equal(rows[1].error, VLM_SKIP_NONE);
  assert_int_equal(rows[1].ntexts, 3);
  assert_string_equal(rows[1].texts[0], "ein Hund");
  assert_string_equal(rows[1].texts[1], "\xe7\x8a\xac");
  assert_string_equal(rows[1].texts[2], "\xe3\x81\x84\xe3\x81\xac");
  assert_int_equal(rows[2].error, VLM_SKIP_TYPE);
  assert_non_null(strstr(rows[2].message, "\"texts\".de must be a string"));
  assert_int_equal(rows[3].error, VLM_SKIP_TYPE);
  assert_int_not_equal(rows[4].error, VLM_SKIP_NONE); /* a NUL: refused */
  assert_int_equal(rows[5].error, VLM_SKIP_NONE);
  assert_int_equal(rows[5].ntexts, 0);
  clear_rows(rows, n);
}

/* "weight": a positive number up to VLM_CATALOG_MAX_WEIGHT, 0 when absent;
 * anything else skips the row with the reason. */
static void test_jsonl_weight(void **state) {
  const char *dir = *state;
  write_file(dir, "w.jsonl",
             "{\"key\": \"a\", \"text\": \"x\", \"weight\": 0.25}\n"
             "{\"key\": \"b\", \"text\": \"x\"}\n"
             "{\"key\": \"c\", \"text\": \"x\", \"weight\": 3}\n"
             "{\"key\": \"d\", \"text\": \"x\", \"weight\": -1}\n"
             "{\"key\": \"e\", \"text\": \"x\", \"weight\": \"2\"}\n"
             "{\"key\": \"f\", \"text\": \"x\", \"weight\": 0}\n"
             "{\"key\": \"g\", \"text\": \"x\", \"weight\": 1e9}\n"
             "{\"key\": \"h\", \"text\": \"x\", \"weight\": null}\n");
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/w.jsonl", dir);
  vlm_catalog_row rows[MAX_ROWS] = {{0}};
  int n = read_all(path, NULL, rows);
  assert_int_equal(n, 8);
  assert_int_equal(rows[0].error, VLM_SKIP_NONE);
  assert_true(rows[0].weight == 0.25);
  assert_int_equal(rows[1].error, VLM_SKIP_NONE);
  assert_true(rows[1].weight == 0);
  assert_true(rows[2].weight == 3);
  for (int i = 3; i < 7; i++) {
    assert_int_equal(rows[i].error, VLM_SKIP_TYPE);
    assert_non_null(strstr(rows[i].message, "\"weight\" must be"));
  }
  assert_int_equal(rows[7].error, VLM_SKIP_NONE);
  assert_true(rows[7].weight == 0);
  clear_rows(rows, n);
}

static void test_csv_quoting_and_line_numbers(void **state) {
  const char *dir = *state;
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
}

static void test_tsv_and_vectors(void **state) {
  const char *dir = *state;
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
}

static void test_csv_bad_headers(void **state) {
  const char *dir = *state;
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
}

/* A NUL byte would cut a C string short, so every reader refuses the row
 * (the JSONL reader always did; CSV cells and sidecar texts were silently
 * truncated), and a JSON member given twice is refused rather than
 * resolved to the last one. */
static void test_nul_bytes_and_duplicate_members(void **state) {
  const char *dir = *state;
  static const char jsonl[] =
      "{\"key\": \"n1\", \"text\": \"cut\0here\"}\n"
      "{\"key\": \"d1\", \"text\": \"first\", \"text\": \"second\"}\n"
      "{\"key\": \"d2\", \"text\": \"t\", \"meta\": {\"year\": 1, \"year\": 2}}\n"
      "{\"key\": \"ok\", \"text\": \"fine\", \"meta\": {\"a\": {\"b\": 1}, \"b\": 2}}\n";
  write_bytes(dir, "nul.jsonl", jsonl, sizeof jsonl - 1);
  static const char csv[] = "key,text,meta.note\n"
                            "c1,cut\0here,x\n"
                            "c2,fine,\"two\nlines\0\"\n"
                            "c3,fine,y\n";
  write_bytes(dir, "nul.csv", csv, sizeof csv - 1);
  static const char header[] = "key,te\0xt\nh1,x\n";
  write_bytes(dir, "header.csv", header, sizeof header - 1);
  write_file(dir, "pics/a.jpg", "x");
  write_bytes(dir, "pics/a.txt", "cap\0tion", 8);
  write_file(dir, "pics/b.jpg", "x");
  write_file(dir, "pics/b.txt", "caption");

  char path[PATH_MAX];
  vlm_catalog_row rows[MAX_ROWS] = {{0}};
  snprintf(path, sizeof path, "%s/nul.jsonl", dir);
  int n = read_all(path, NULL, rows);
  assert_int_equal(n, 4);
  assert_int_equal(rows[0].error, VLM_SKIP_SYNTAX);
  assert_int_equal(rows[0].line, 1);
  assert_non_null(strstr(rows[0].message, "NUL byte at column 27"));
  assert_int_equal(rows[1].error, VLM_SKIP_SYNTAX);
  assert_int_equal(rows[1].line, 2);
  assert_non_null(strstr(rows[1].message, "duplicate member \"text\""));
  assert_int_equal(rows[2].error, VLM_SKIP_SYNTAX);
  assert_int_equal(rows[2].line, 3);
  assert_non_null(strstr(rows[2].message, "duplicate member \"year\""));
  /* The same name in different objects is no duplicate. */
  assert_int_equal(rows[3].error, VLM_SKIP_NONE);
  clear_rows(rows, n);

  snprintf(path, sizeof path, "%s/nul.csv", dir);
  n = read_all(path, NULL, rows);
  assert_int_equal(n, 3);
  assert_int_equal(rows[0].error, VLM_SKIP_SYNTAX);
  assert_int_equal(rows[0].line, 2);
  assert_non_null(strstr(rows[0].message, "NUL byte in column 2 (text), line 2"));
  assert_int_equal(rows[1].error, VLM_SKIP_SYNTAX);
  assert_int_equal(rows[1].line, 3);
  assert_non_null(
      strstr(rows[1].message, "NUL byte in column 3 (meta.note), line 4"));
  assert_int_equal(rows[2].error, VLM_SKIP_NONE);
  assert_int_equal(rows[2].line, 5);
  assert_string_equal(rows[2].text, "fine");
  clear_rows(rows, n);

  vlm_catalog *cat = NULL;
  snprintf(path, sizeof path, "%s/header.csv", dir);
  assert_int_equal(vlm_catalog_open(path, NULL, &cat), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), "header.csv:1: header: column 2 holds a NUL"));

  snprintf(path, sizeof path, "%s/pics", dir);
  n = read_all(path, NULL, rows);
  assert_int_equal(n, 2);
  assert_string_equal(rows[0].key, "a.jpg");
  assert_int_equal(rows[0].error, VLM_SKIP_SYNTAX);
  assert_non_null(strstr(rows[0].message, "sidecar text holds a NUL byte"));
  assert_int_equal(rows[1].error, VLM_SKIP_NONE);
  assert_string_equal(rows[1].text, "caption");
  clear_rows(rows, n);
}

/* --------------------------------------------------------- directory */

static void test_directory_catalog(void **state) {
  const char *dir = *state;
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
  const char *dir = *state;
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
  assert_string_equal(buf, "[##........] 250/1000   25%  50.0 rows/s  ETA 0:15");
  vlm_progress_format(buf, sizeof buf, 1000, 1000, 10.0, 4);
  assert_string_equal(buf, "[####] 1000/1000  100%  100.0 rows/s  ETA 0:00");
  vlm_progress_format(buf, sizeof buf, 0, 10, 0.0, 0);
  assert_string_equal(buf, "0/10    0%  0.0 rows/s  ETA ?");
  vlm_progress_format(buf, sizeof buf, 42, -1, 2.0, 10);
  assert_string_equal(buf, "42  21.0 rows/s");
  vlm_format_duration(buf, sizeof buf, 3725.2);
  assert_string_equal(buf, "1:02:05");
}

/* The bar redraws in place; line mode prints whole lines, rate limited. */
static void test_progress_modes(void **state) {
  (void)state;
  char *text;
  size_t len;
  vlm_progress p;
  struct timespec pause = {0, 120 * 1000 * 1000};

  setenv("VLMDB_PROGRESS", "bar", 1);
  FILE *mem = open_memstream(&text, &len);
  vlm_progress_init(&p, mem, "ingest", 100);
  vlm_progress_update(&p, 10); /* too soon after init: nothing */
  nanosleep(&pause, NULL);
  vlm_progress_update(&p, 50);
  vlm_progress_finish(&p);
  fclose(mem);
  if (!strstr(text, "\ringest: [############............] 50/100   50%") ||
      !strstr(text, "ETA ") || !strstr(text, "\033[K") ||
      strstr(text, "10/100") || !strstr(text, "\r\033[K"))
    fail_msg("bar output: '%s'", text);
  assert_null(strchr(text, '\n'));
  free(text);

  setenv("VLMDB_PROGRESS", "lines", 1);
  setenv("VLMDB_PROGRESS_INTERVAL", "0.1", 1);
  mem = open_memstream(&text, &len);
  vlm_progress_init(&p, mem, "ingest", -1);
  vlm_progress_update(&p, 3);
  nanosleep(&pause, NULL);
  vlm_progress_update(&p, 7);
  vlm_progress_update(&p, 8); /* within the interval: dropped */
  vlm_progress_finish(&p);
  fclose(mem);
  if (strncmp(text, "ingest: 7  ", 11) || strstr(text, "ingest: 8") ||
      strchr(text, '\r') || text[len - 1] != '\n')
    fail_msg("line output: '%s'", text);
  free(text);

  setenv("VLMDB_PROGRESS", "off", 1);
  mem = open_memstream(&text, &len);
  vlm_progress_init(&p, mem, "ingest", 10);
  nanosleep(&pause, NULL);
  vlm_progress_update(&p, 5);
  vlm_progress_finish(&p);
  fclose(mem);
  assert_int_equal(len, 0);
  free(text);
  unsetenv("VLMDB_PROGRESS");
  unsetenv("VLMDB_PROGRESS_INTERVAL");
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
  const char *dir = *state;
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
  write_file(dir, "dup.jsonl",
             "{\"image\": \"img1\", \"text\": \"a\", \"text\": \"b\"}\n");
  snprintf(path, sizeof path, "%s/dup.jsonl", dir);
  assert_int_equal(vlm_eval_pairs_load(path, &pairs, &n), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), "dup.jsonl:1: bad JSON: duplicate"));
}

/* ------------------------------------------------- the vlmdb binary */


#define MODEL "tests/fixtures/clip-tiny"

static const char *fixture_images[] = {
    "gray.jpg", "gray.png",  "palette.png",      "photo_prog.jpg", "photo_rgb.jpg",
    "rgb.png",  "rgba.png",  "small_upscale.png", "wide.png"};
#define NFIXTURES 9

static char *vlmdb_path(void) {
  const char *build = getenv("BUILD");
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/vlmdb", build && *build ? build : "build");
  char *abs = realpath(path, NULL);
  if (!abs)
    fail_msg("%s not found: build it first (make %s)", path, path);
  return abs;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return strdup("");
  char *buf = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&buf, &len);
  char chunk[8192];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    fwrite(chunk, 1, n, mem);
  fclose(mem);
  fclose(f);
  return buf;
}

/* A whole binary file and its length; NULL if it cannot be read. */
static char *slurp_len(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  char *buf = NULL;
  *len = 0;
  FILE *mem = open_memstream(&buf, len);
  char chunk[8192];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    fwrite(chunk, 1, n, mem);
  fclose(mem);
  fclose(f);
  return buf;
}

/* Start `vlmdb args...` with stdout and stderr going to files in dir. */
static pid_t spawn_vlmdb(const char *dir, const char *const *args) {
  char *bin = vlmdb_path();
  char out[PATH_MAX], err[PATH_MAX];
  snprintf(out, sizeof out, "%s/.stdout", dir);
  snprintf(err, sizeof err, "%s/.stderr", dir);
  const char *argv[64] = {bin};
  int n = 1;
  for (; args[n - 1]; n++) {
    assert_true(n < 63);
    argv[n] = args[n - 1];
  }
  argv[n] = NULL;
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fi = open("/dev/null", O_RDONLY);
    if (fo < 0 || fe < 0 || fi < 0)
      _exit(127);
    dup2(fo, 1);
    dup2(fe, 2);
    dup2(fi, 0);
    setenv("VLMDB_PROGRESS", "lines", 1);
    setenv("VLMDB_PROGRESS_INTERVAL", "0.02", 1);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  free(bin);
  return pid;
}

/* Run `vlmdb args...`; returns the exit status, *out and *err (may be
 * NULL) get what it printed. */
static int run_vlmdb(const char *dir, char **out, char **err,
                     const char *const *args) {
  pid_t pid = spawn_vlmdb(dir, args);
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/.stdout", dir);
  char *o = slurp(path);
  snprintf(path, sizeof path, "%s/.stderr", dir);
  char *e = slurp(path);
  if (out)
    *out = o;
  else
    free(o);
  if (err)
    *err = e;
  else
    free(e);
  if (!WIFEXITED(st))
    fail_msg("vlmdb %s died with signal %d", args[0], WTERMSIG(st));
  return WEXITSTATUS(st);
}

#define RUN(dir, out, err, ...)                                             \
  run_vlmdb(dir, out, err, (const char *const[]){__VA_ARGS__, NULL})

/* Run and insist on exit status 0, printing stderr otherwise. */
static char *run_ok(const char *dir, const char *const *args) {
  char *out, *err;
  int rc = run_vlmdb(dir, &out, &err, args);
  if (rc != 0) {
    print_error("vlmdb %s exited %d:\n%s\n", args[0], rc, err);
    free(out);
    free(err);
    fail();
  }
  free(err);
  return out;
}
#define RUN_OK(dir, ...) run_ok(dir, (const char *const[]){__VA_ARGS__, NULL})

/* init killed at any moment: the database directory either does not exist
 * (and a second init makes it) or is a whole database; the temporary
 * sibling a killed init leaves is removed by the next one. */
static void test_init_killed_anywhere(void **state) {
  const char *dir = *state;
  char db[PATH_MAX];
  snprintf(db, sizeof db, "%s/probe", dir);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  free(RUN_OK(dir, "init", "--db", db, "--model", "tests/fixtures/clip-tiny"));
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double dt = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  int absent = 0, whole = 0;
  const int trials = 24;
  /* The kills spread over 1.2 times one init's time.  On a loaded machine
   * a spawned init can take longer than the one measured, so until both
   * outcomes were seen, up to 16 more trials wait longer each time (or
   * kill at once, if none was killed early). */
  double late = dt * 1.2;
  for (int t = 0; t < trials || ((!absent || !whole) && t < trials + 16);
       t++) {
    snprintf(db, sizeof db, "%s/db-%d", dir, t);
    const char *args[] = {"init", "--db", db, "--model",
                          "tests/fixtures/clip-tiny", NULL};
    pid_t pid = spawn_vlmdb(dir, args);
    double wait = t < trials ? dt * 1.2 * t / trials
                  : !whole   ? (late *= 1.5)
                             : 0.0;
    usleep((useconds_t)(wait * 1e6));
    kill(pid, SIGKILL);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    struct stat sb;
    if (stat(db, &sb) == 0) {
      char man[PATH_MAX];
      snprintf(man, sizeof man, "%s/manifest.json", db);
      if (stat(man, &sb) != 0)
        fail_msg("trial %d: %s exists without a manifest", t, db);
      free(RUN_OK(dir, "info", "--db", db));
      whole++;
    } else {
      free(RUN_OK(dir, "init", "--db", db, "--model",
                  "tests/fixtures/clip-tiny"));
      absent++;
    }
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    char prefix[64];
    snprintf(prefix, sizeof prefix, ".db-%d.creating-", t);
    while ((e = readdir(d)))
      if (!strncmp(e->d_name, prefix, strlen(prefix)))
        fail_msg("trial %d: %s left behind", t, e->d_name);
    closedir(d);
  }
  print_message("init killed %d times: %d before it finished, %d after\n",
                absent + whole, absent, whole);
  assert_true(absent > 0 && whole > 0);
}

static json_t *parse_json(const char *text) {
  json_error_t jerr;
  json_t *v = json_loads(text, 0, &jerr);
  if (!v)
    fail_msg("not JSON (%s): %s", jerr.text, text);
  return v;
}

static void copy_file(const char *from, const char *to) {
  char *data;
  FILE *in = fopen(from, "rb");
  assert_non_null(in);
  fseek(in, 0, SEEK_END);
  long n = ftell(in);
  fseek(in, 0, SEEK_SET);
  data = malloc((size_t)n);
  assert_int_equal(fread(data, 1, (size_t)n, in), (size_t)n);
  fclose(in);
  FILE *out = fopen(to, "wb");
  assert_non_null(out);
  assert_int_equal(fwrite(data, 1, (size_t)n, out), (size_t)n);
  fclose(out);
  free(data);
}

/* tmp/img/<fixture images> and tmp/img/corrupt.jpg */
static void make_images(const char *dir) {
  char path[PATH_MAX], src[PATH_MAX];
  snprintf(path, sizeof path, "%s/img", dir);
  mkdir(path, 0755);
  for (int i = 0; i < NFIXTURES; i++) {
    snprintf(src, sizeof src, MODEL "/%s", fixture_images[i]);
    snprintf(path, sizeof path, "%s/img/%s", dir, fixture_images[i]);
    copy_file(src, path);
  }
  write_file(dir, "img/corrupt.jpg", "\xff\xd8\xff\xe0 this is not a JPEG");
}

static void db_path(char *buf, size_t size, const char *dir, const char *name) {
  snprintf(buf, size, "%s/%s", dir, name);
}

static const char main_catalog[] =
    "{\"key\": \"gray\", \"image\": \"img/gray.jpg\", \"text\": \"a gray "
    "square\", \"meta\": {\"category\": \"plain\", \"year\": 2001}}\n"
    "{\"key\": \"photo\", \"image\": \"img/photo_rgb.jpg\", \"text\": \"a "
    "colourful photo, with commas\", \"meta\": {\"category\": \"photo\", "
    "\"year\": 2010}}\n"
    "{\"key\": \"progressive\", \"image\": \"img/photo_prog.jpg\", \"text\": "
    "\"a progressive photo\", \"meta\": {\"category\": \"photo\", \"year\": "
    "2011}}\n"
    "{\"key\": \"rgb\", \"image\": \"img/rgb.png\", \"text\": \"red green "
    "blue\", \"meta\": {\"category\": \"plain\", \"year\": 2003}}\n"
    "{\"key\": \"rgba\", \"image\": \"img/rgba.png\", \"text\": "
    "\"transparent\", \"meta\": {\"category\": \"alpha\", \"year\": 2004}}\n"
    "{\"key\": \"palette\", \"image\": \"img/palette.png\", \"text\": \"few "
    "colours\", \"meta\": {\"category\": \"plain\", \"year\": 2005}}\n"
    "{\"key\": \"wide\", \"image\": \"img/wide.png\", \"text\": \"a wide "
    "banner\", \"meta\": {\"category\": \"photo\", \"year\": 2012}}\n"
    "{\"key\": \"\xe3\x81\xad\xe3\x81\x93/\xe7\x8c\xab \xe2\x9c\x93\", "
    "\"image\": \"img/small_upscale.png\", \"text\": \"tiny image, unicode "
    "key\", \"meta\": {\"category\": \"plain\", \"year\": 2006}}\n"
    "{\"key\": \"gray-png\", \"image\": \"img/gray.png\", \"text\": \"gray "
    "png\"}\n"
    "{\"key\": \"text-only\", \"text\": \"just words\", \"meta\": "
    "{\"category\": \"words\"}}\n"
    "{\"key\": \"missing\", \"image\": \"img/nope.jpg\", \"text\": \"x\"}\n"
    "{\"key\": \"corrupt\", \"image\": \"img/corrupt.jpg\", \"text\": \"x\"}\n"
    "{\"key\": \"gray\", \"image\": \"img/gray.png\", \"text\": \"again\"}\n"
    "{\"key\": \"badyear\", \"image\": \"img/gray.jpg\", \"meta\": {\"year\": "
    "\"old\"}}\n"
    "this line is not JSON\n";
#define MAIN_GOOD 10
static const char *main_keys[MAIN_GOOD] = {
    "gray", "photo", "progressive", "rgb", "rgba", "palette", "wide",
    "\xe3\x81\xad\xe3\x81\x93/\xe7\x8c\xab \xe2\x9c\x93", "gray-png",
    "text-only"};

/* init a database with the conformance model and two fields */
static void init_db(const char *dir, const char *name) {
  char db[PATH_MAX];
  db_path(db, sizeof db, dir, name);
  free(RUN_OK(dir, "init", "--db", db, "--model", MODEL, "--field",
              "category:text", "--field", "year:int"));
}

static long json_int(json_t *o, const char *name) {
  json_t *v = json_object_get(o, name);
  if (!json_is_integer(v))
    fail_msg("\"%s\" is not an integer", name);
  return (long)json_integer_value(v);
}

/* key -> {image_vector, text_vector, ...} from `export --vectors` */
static json_t *export_map(const char *dir, const char *db) {
  char *out = RUN_OK(dir, "export", "--db", db, "--vectors");
  json_t *map = json_object();
  char *save = NULL;
  for (char *line = strtok_r(out, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save)) {
    json_t *o = parse_json(line);
    const char *key = json_string_value(json_object_get(o, "key"));
    assert_non_null(key);
    assert_null(json_object_get(map, key)); /* no key twice */
    json_object_set_new(map, key, o);
  }
  free(out);
  return map;
}

static double dot_json(json_t *a, json_t *b) {
  assert_int_equal(json_array_size(a), json_array_size(b));
  double s = 0;
  for (size_t i = 0; i < json_array_size(a); i++)
    s += json_number_value(json_array_get(a, i)) *
         json_number_value(json_array_get(b, i));
  return s;
}

/* Oracle for one eval direction with self pairs: naive ranks from the
 * exported vectors (ties against the ground truth). */
static void oracle_eval(json_t *map, const char *qfield, const char *cfield,
                        const int *ks, int nks, double *recall,
                        double *mean_rank, long *nqueries) {
  const char *qkey, *ckey;
  json_t *q, *c;
  long nq = 0;
  double rank_sum = 0;
  for (int i = 0; i < nks; i++)
    recall[i] = 0;
  json_object_foreach(map, qkey, q) {
    json_t *qv = json_object_get(q, qfield);
    json_t *own = json_object_get(q, cfield);
    if (!qv || !own)
      continue;
    double best = dot_json(qv, own);
    long rank = 1;
    json_object_foreach(map, ckey, c) {
      json_t *cv = json_object_get(c, cfield);
      if (cv && strcmp(ckey, qkey) && dot_json(qv, cv) >= best)
        rank++;
    }
    nq++;
    rank_sum += (double)rank;
    for (int i = 0; i < nks; i++)
      recall[i] += rank <= ks[i];
  }
  for (int i = 0; i < nks; i++)
    recall[i] /= (double)nq;
  *mean_rank = rank_sum / (double)nq;
  *nqueries = nq;
}

/* Oracle for eval's gt_probability with self pairs, from the exported
 * vectors: each query's logits exp(logit_scale) * cosine + logit_bias to
 * every candidate, the probability of its own partner by the family's
 * rule (sigmoid: that pair alone; else a softmax over the candidates),
 * averaged over the queries. */
static double oracle_gt_probability(json_t *map, const char *qfield,
                                    const char *cfield, double logit_scale,
                                    double logit_bias, int sigmoid) {
  const char *qkey, *ckey;
  json_t *q, *c;
  double sum = 0, scale = exp(logit_scale);
  long nq = 0;
  json_object_foreach(map, qkey, q) {
    json_t *qv = json_object_get(q, qfield);
    json_t *own = json_object_get(q, cfield);
    if (!qv || !own)
      continue;
    double mine = scale * dot_json(qv, own) + logit_bias, p;
    if (sigmoid) {
      p = 1 / (1 + exp(-mine));
    } else {
      double z = 0;
      json_object_foreach(map, ckey, c) {
        json_t *cv = json_object_get(c, cfield);
        if (cv)
          z += exp(scale * dot_json(qv, cv) + logit_bias - mine);
      }
      p = 1 / z;
    }
    sum += p;
    nq++;
  }
  return sum / (double)nq;
}

/* Display columns of a UTF-8 prefix (CJK wide, the rest one column). */
static int columns(const char *s, size_t bytes) {
  int w = 0;
  for (size_t i = 0; i < bytes;) {
    unsigned char c = (unsigned char)s[i];
    uint32_t cp = c;
    int n = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (n == 2)
      cp = (c & 0x1f) << 6 | (s[i + 1] & 0x3f);
    else if (n == 3)
      cp = (c & 0x0f) << 12 | (s[i + 1] & 0x3f) << 6 | (s[i + 2] & 0x3f);
    w += (cp >= 0x1100 && cp <= 0x115f) || (cp >= 0x2e80 && cp <= 0xa4cf) ||
                 (cp >= 0xac00 && cp <= 0xd7a3) || (cp >= 0xff00 && cp <= 0xff60)
             ? 2
             : 1;
    i += (size_t)n;
  }
  return w;
}

/* The two databases export exactly the same items. */
static void assert_same_export(const char *dir, const char *a_db,
                               const char *b_db) {
  json_t *a = export_map(dir, a_db), *b = export_map(dir, b_db);
  assert_true(json_equal(a, b));
  json_decref(a);
  json_decref(b);
}

static void test_e2e_ingest_search_eval(void **state) {
  const char *dir = *state;
  char db[PATH_MAX], catalog[PATH_MAX];
  make_images(dir);
  write_file(dir, "catalog.jsonl", main_catalog);
  db_path(db, sizeof db, dir, "db");
  db_path(catalog, sizeof catalog, dir, "catalog.jsonl");
  init_db(dir, "db");

  /* ingest: ten good rows, five bad ones reported with their lines */
  char *out, *err;
  int rc = RUN(dir, &out, &err, "ingest", "--db", db, catalog, "--json");
  if (rc != 0)
    fail_msg("ingest exited %d: %s", rc, err);
  json_t *sum = parse_json(out);
  assert_int_equal(json_int(sum, "ingested"), MAIN_GOOD);
  assert_int_equal(json_int(sum, "rows"), 15);
  assert_int_equal(json_int(sum, "skipped"), 5);
  json_t *by = json_object_get(sum, "skipped_by_reason");
  assert_int_equal(json_int(by, "missing-file"), 1);
  assert_int_equal(json_int(by, "corrupt-image"), 1);
  assert_int_equal(json_int(by, "duplicate-key"), 1);
  assert_int_equal(json_int(by, "wrong-type"), 1);
  assert_int_equal(json_int(by, "bad-syntax"), 1);
  assert_int_equal(json_int(by, "exists"), 0);
  assert_string_equal(json_string_value(json_object_get(sum, "status")),
                      "done");
  json_decref(sum);
  const char *want_lines[] = {
      "catalog.jsonl:11: missing-file: key \"missing\"",
      "catalog.jsonl:12: corrupt-image: key \"corrupt\"",
      "catalog.jsonl:13: duplicate-key: key \"gray\": the key is also on line 1",
      "catalog.jsonl:14: wrong-type: key \"badyear\": meta.year",
      "catalog.jsonl:15: bad-syntax: bad JSON"};
  for (int i = 0; i < 5; i++)
    if (!strstr(err, want_lines[i]))
      fail_msg("stderr lacks '%s':\n%s", want_lines[i], err);
  free(out);
  free(err);

  /* a second run skips everything: nothing new, exit 0 */
  out = RUN_OK(dir, "ingest", "--db", db, catalog, "--json");
  sum = parse_json(out);
  assert_int_equal(json_int(sum, "ingested"), 0);
  assert_int_equal(json_int(json_object_get(sum, "skipped_by_reason"), "exists"),
                   MAIN_GOOD);
  json_decref(sum);
  free(out);

  out = RUN_OK(dir, "info", "--db", db, "--json");
  json_t *info = parse_json(out);
  assert_int_equal(json_int(info, "items"), MAIN_GOOD);
  assert_int_equal(json_int(info, "image_vectors"), MAIN_GOOD - 1);
  assert_int_equal(json_int(info, "text_vectors"), MAIN_GOOD);
  assert_int_equal(json_int(info, "dim"), 48);
  assert_string_equal(json_string_value(json_object_get(info, "model_family")),
                      "clip");
  json_decref(info);
  free(out);

  /* verify: whole; recover: nothing to do, says where it stands */
  out = RUN_OK(dir, "verify", "--db", db);
  assert_true(!strncmp(out, "ok: ", 4));
  free(out);
  out = RUN_OK(dir, "verify", "--db", db, "--json");
  json_t *vj = parse_json(out);
  assert_true(json_is_true(json_object_get(vj, "ok")));
  assert_int_equal(json_int(vj, "items"), MAIN_GOOD);
  json_decref(vj);
  free(out);
  out = RUN_OK(dir, "recover", "--db", db);
  assert_non_null(strstr(out, "consistent at batch"));
  free(out);

  /* backup: a copy that exports exactly as the original; the same place
   * twice is refused */
  char copy[PATH_MAX];
  snprintf(copy, sizeof copy, "%s/copy.vlm", dir);
  out = RUN_OK(dir, "backup", "--db", db, "--out", copy, "--json");
  json_t *bj = parse_json(out);
  assert_int_equal(json_int(bj, "items"), MAIN_GOOD);
  json_decref(bj);
  free(out);
  free(RUN_OK(dir, "verify", "--db", copy));
  assert_same_export(dir, db, copy);
  char *bout = NULL, *berr = NULL;
  assert_int_equal(RUN(dir, &bout, &berr, "backup", "--db", db, "--out", copy),
                   1);
  assert_non_null(strstr(berr, "exists"));
  free(bout);
  free(berr);
  /* the copy loses meta.sqlite: readers name recover, which rebuilds it */
  char side[PATH_MAX + 16];
  for (int i = 0; i < 3; i++) {
    snprintf(side, sizeof side, "%s/meta.sqlite%s", copy,
             i == 0 ? "" : i == 1 ? "-wal" : "-shm");
    unlink(side);
  }
  assert_int_equal(RUN(dir, &bout, &berr, "info", "--db", copy), 1);
  assert_non_null(strstr(berr, "vlmdb recover"));
  free(bout);
  free(berr);
  out = RUN_OK(dir, "recover", "--db", copy);
  assert_non_null(strstr(out, "consistent at batch"));
  free(out);
  free(RUN_OK(dir, "verify", "--db", copy));
  assert_same_export(dir, db, copy);

  json_t *map = export_map(dir, db);
  assert_int_equal(json_object_size(map), MAIN_GOOD);
  for (int i = 0; i < MAIN_GOOD; i++)
    assert_non_null(json_object_get(map, main_keys[i]));

  /* search by a stored image: itself first, scores as the dot products of
   * the exported vectors, in descending order */
  out = RUN_OK(dir, "search", "--db", db, "--key", "photo", "--target",
               "image", "-k", "20", "--json");
  json_t *res = parse_json(out);
  json_t *hits = json_object_get(res, "results");
  assert_int_equal(json_array_size(hits), MAIN_GOOD - 1);
  json_t *qv = json_object_get(json_object_get(map, "photo"), "image_vector");
  double prev = 2;
  for (size_t i = 0; i < json_array_size(hits); i++) {
    json_t *h = json_array_get(hits, i);
    const char *key = json_string_value(json_object_get(h, "key"));
    double score = json_number_value(json_object_get(h, "score"));
    double want =
        dot_json(qv, json_object_get(json_object_get(map, key), "image_vector"));
    if (fabs(score - want) > 1e-4)
      fail_msg("hit %zu %s: score %.6f, dot product %.6f", i, key, score, want);
    assert_true(score <= prev + 1e-6);
    prev = score;
    assert_int_equal(json_int(h, "rank"), (long)i + 1);
    assert_string_equal(json_string_value(json_object_get(h, "match")),
                        "image");
  }
  assert_string_equal(
      json_string_value(json_object_get(json_array_get(hits, 0), "key")),
      "photo");
  json_decref(res);
  free(out);

  /* --offset: a page of that ranking, ranked from offset + 1;
   * --min-score: exactly the hits at or above it; --group-by: the first
   * hit of each category in the ranking (a naive grouping) */
  {
    out = RUN_OK(dir, "search", "--db", db, "--key", "photo", "--target",
                 "image", "-k", "20", "--json");
    json_t *full = parse_json(out);
    free(out);
    json_t *all = json_object_get(full, "results");
    size_t nall = json_array_size(all);
    assert_true(nall >= 6);
#define HIT_KEY(arr, i) \
  json_string_value(json_object_get(json_array_get(arr, i), "key"))
#define HIT_SCORE(arr, i) \
  json_number_value(json_object_get(json_array_get(arr, i), "score"))
    out = RUN_OK(dir, "search", "--db", db, "--key", "photo", "--target",
                 "image", "-k", "3", "--offset", "2", "--json");
    res = parse_json(out);
    hits = json_object_get(res, "results");
    assert_int_equal(json_array_size(hits), 3);
    for (size_t i = 0; i < 3; i++) {
      assert_string_equal(HIT_KEY(hits, i), HIT_KEY(all, i + 2));
      assert_int_equal(json_int(json_array_get(hits, i), "rank"),
                       (long)i + 3);
    }
    json_decref(res);
    free(out);
    size_t cut = 0;
    for (size_t i = 1; i + 1 < nall && !cut; i++)
      if (HIT_SCORE(all, i) - HIT_SCORE(all, i + 1) > 1e-3)
        cut = i + 1;
    assert_true(cut > 0);
    char thr[32];
    snprintf(thr, sizeof thr, "%.6f",
             (HIT_SCORE(all, cut - 1) + HIT_SCORE(all, cut)) / 2);
    out = RUN_OK(dir, "search", "--db", db, "--key", "photo", "--target",
                 "image", "--min-score", thr, "--json");
    res = parse_json(out);
    hits = json_object_get(res, "results");
    if (json_array_size(hits) != cut)
      fail_msg("--min-score %s: %zu hits, want %zu", thr,
               json_array_size(hits), cut);
    for (size_t i = 0; i < cut; i++)
      assert_string_equal(HIT_KEY(hits, i), HIT_KEY(all, i));
    json_decref(res);
    free(out);
    out = RUN_OK(dir, "search", "--db", db, "--key", "photo", "--target",
                 "image", "-k", "20", "--group-by", "category", "--json");
    res = parse_json(out);
    hits = json_object_get(res, "results");
    size_t ng = 0;
    for (size_t i = 0; i < nall; i++) {
      json_t *cat = json_object_get(
          json_object_get(json_array_get(all, i), "meta"), "category");
      int seen = 0;
      for (size_t j = 0; j < i && !seen; j++)
        seen = json_equal(cat, json_object_get(json_object_get(
                                   json_array_get(all, j), "meta"),
                               "category"));
      if (seen)
        continue;
      if (ng >= json_array_size(hits))
        fail_msg("--group-by category: %zu hits, the first of category "
                 "%zu is %s", json_array_size(hits), ng, HIT_KEY(all, i));
      assert_string_equal(HIT_KEY(hits, ng), HIT_KEY(all, i));
      ng++;
    }
    assert_int_equal(json_array_size(hits), ng);
    assert_true(ng >= 2 && ng < nall);
    json_decref(res);
    free(out);
#undef HIT_KEY
#undef HIT_SCORE
    json_decref(full);
    const char *bad[][4] = {{"--per", "2", NULL, NULL},
                            {"--group-by", "nosuch", NULL, NULL},
                            {"--min-score", "2", NULL, NULL},
                            {"--offset", "9999", "-k", "5"},
                            {"--group-by", "category", "--collapse", "0.9"}};
    for (int b = 0; b < 5; b++) {
      char *berr2 = NULL;
      int brc = RUN(dir, NULL, &berr2, "search", "--db", db, "--key", "photo",
                    bad[b][0], bad[b][1], bad[b][2], bad[b][3]);
      if (brc != 2)
        fail_msg("search %s %s: exit %d, want 2: %s", bad[b][0], bad[b][1],
                 brc, berr2);
      free(berr2);
    }
  }

  /* filters: exactly the matching items when k covers them */
  struct {
    const char *filter;
    const char *keys[4];
  } filters[] = {
      {"category = 'photo'", {"photo", "progressive", "wide"}},
      {"year >= 2005 AND category = 'plain'",
       {"palette", "\xe3\x81\xad\xe3\x81\x93/\xe7\x8c\xab \xe2\x9c\x93"}},
  };
  for (int f = 0; f < 2; f++) {
    out = RUN_OK(dir, "search", "--db", db, "--text", "a photo", "-k", "10",
                 "--filter", filters[f].filter, "--json");
    res = parse_json(out);
    hits = json_object_get(res, "results");
    size_t nwant = 0;
    while (nwant < 4 && filters[f].keys[nwant])
      nwant++;
    if (json_array_size(hits) != nwant)
      fail_msg("filter %s: %zu hits, want %zu: %s", filters[f].filter,
               json_array_size(hits), nwant, out);
    for (size_t i = 0; i < nwant; i++) {
      const char *key = json_string_value(json_object_get(json_array_get(hits, i), "key"));
      int found = 0;
      for (size_t j = 0; j < nwant; j++)
        found |= !strcmp(key, filters[f].keys[j]);
      if (!found)
        fail_msg("filter %s: unexpected hit %s", filters[f].filter, key);
    }
    json_decref(res);
    free(out);
  }
  /* a forbidden filter is the user's mistake: exit 2 */
  assert_int_equal(RUN(dir, NULL, NULL, "search", "--db", db, "--text", "x",
                       "--filter", "1); DROP TABLE items; --"),
                   2);

  /* the contact sheet: one line and one row of cells per query, the
   * picture's size from -k and --cell, thumbnails drawn into the cells */
  {
    char png[PATH_MAX];
    snprintf(png, sizeof png, "%s/sheet.png", dir);
    out = RUN_OK(dir, "sheet", "--db", db, "--out", png, "-k", "3", "--cell",
                 "32", "--text", "tiny image", "--text", "a photo");
    assert_true(!strncmp(out, "tiny image: ", 12));
    assert_non_null(strstr(out, "\na photo: "));
    free(out);
    uint8_t *data;
    size_t len;
    assert_int_equal(vlm_read_file(png, 1 << 24, &data, &len), 0);
    vlm_clip_options po = {0};
    vlm_image im = {0};
    assert_int_equal(vlm_image_decode(data, len, &po, &im), 0);
    free(data);
    assert_int_equal(im.w, 4 + 3 * 36);
    assert_int_equal(im.h, 4 + 2 * 36);
    int drawn = 0; /* cells that are neither background nor "no picture" */
    for (int r = 0; r < 2; r++)
      for (int k = 0; k < 3; k++) {
        int x0 = 4 + k * 36, y0 = 4 + r * 36, odd = 0;
        for (int y = y0; y < y0 + 32; y++)
          for (int x = x0; x < x0 + 32; x++) {
            const uint8_t *p = im.rgb + ((size_t)y * im.w + x) * 3;
            odd |= !(p[0] == p[1] && p[1] == p[2] &&
                     (p[0] == 0xb0 || p[0] == 0xd8));
          }
        drawn += odd;
      }
    assert_true(drawn >= 4);
    vlm_image_free(&im);
    assert_int_equal(RUN(dir, NULL, NULL, "sheet", "--db", db, "--text", "x"),
                     2);
  }

  /* the table: a header, one line per hit, columns aligned */
  out = RUN_OK(dir, "search", "--db", db, "--text", "tiny image", "-k", "10",
               "--fields", "category,year");
  char *save = NULL;
  int lines = 0, match_col = -1;
  for (char *line = strtok_r(out, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save), lines++) {
    const char *m = lines == 0 ? strstr(line, "match")
                               : strstr(line, "  image  ") ? strstr(line, "  image  ") + 2
                                                            : strstr(line, "  text  ") + 2;
    assert_non_null(m);
    int col = columns(line, (size_t)(m - line));
    if (lines == 0) {
      assert_true(!strncmp(line, "rank", 4));
      assert_non_null(strstr(line, "caption"));
      assert_non_null(strstr(line, "category"));
      match_col = col;
    } else if (col != match_col) {
      fail_msg("line %d: 'match' column at %d, header at %d:\n%s", lines, col,
               match_col, line);
    }
  }
  assert_int_equal(lines, 1 + MAIN_GOOD);
  free(out);

  /* eval against a naive computation over the exported vectors; the
   * model's probabilities with its logit scale as embed --json reports it */
  out = RUN_OK(dir, "embed", "--json", "--model", MODEL);
  json_t *described = parse_json(out);
  json_t *model = json_object_get(described, "model");
  assert_string_equal(json_string_value(json_object_get(model, "family")),
                      "clip");
  double logit_scale = json_number_value(json_object_get(model, "logit_scale"));
  assert_true(logit_scale > 0);
  assert_true(json_number_value(json_object_get(model, "logit_bias")) == 0);
  json_decref(described);
  free(out);
  out = RUN_OK(dir, "eval", "--db", db, "-k", "1,2,5", "--json");
  res = parse_json(out);
  assert_int_equal(json_int(res, "pairs"), MAIN_GOOD - 1);
  const int ks[3] = {1, 2, 5};
  const char *dirs[2] = {"t2i", "i2t"};
  for (int d = 0; d < 2; d++) {
    json_t *jd = json_object_get(res, dirs[d]);
    assert_non_null(jd);
    double recall[3], mean_rank;
    long nq;
    oracle_eval(map, d == 0 ? "text_vector" : "image_vector",
                d == 0 ? "image_vector" : "text_vector", ks, 3, recall,
                &mean_rank, &nq);
    assert_int_equal(json_int(jd, "queries"), nq);
    assert_int_equal(json_int(jd, "candidates"),
                     d == 0 ? MAIN_GOOD - 1 : MAIN_GOOD);
    for (int i = 0; i < 3; i++) {
      char name[8];
      snprintf(name, sizeof name, "%d", ks[i]);
      double got = json_number_value(
          json_object_get(json_object_get(jd, "recall"), name));
      if (fabs(got - recall[i]) > 1e-8)
        fail_msg("%s R@%d: eval %.6f, oracle %.6f", dirs[d], ks[i], got,
                 recall[i]);
      json_t *ir = json_object_get(json_object_get(jd, "index_recall"), name);
      assert_true(json_is_number(ir));
      assert_true(json_number_value(ir) >= 0 && json_number_value(ir) <= 1);
      assert_true(json_is_number(
          json_object_get(json_object_get(jd, "recall_index"), name)));
    }
    double got_mean = json_number_value(json_object_get(jd, "mean_rank"));
    if (fabs(got_mean - mean_rank) > 1e-8)
      fail_msg("%s mean rank: eval %.6f, oracle %.6f", dirs[d], got_mean,
               mean_rank);
    assert_true(json_number_value(json_object_get(jd, "median_rank")) >= 1);
    assert_true(json_number_value(json_object_get(jd, "index_ms_per_query")) >= 0);
    assert_true(json_number_value(json_object_get(jd, "exact_ms_per_query")) >= 0);
    double gt_prob = json_number_value(json_object_get(jd, "gt_probability"));
    double want_prob = oracle_gt_probability(
        map, d == 0 ? "text_vector" : "image_vector",
        d == 0 ? "image_vector" : "text_vector", logit_scale, 0, 0);
    if (fabs(gt_prob - want_prob) > 1e-5)
      fail_msg("%s ground-truth probability: eval %.7f, oracle %.7f", dirs[d],
               gt_prob, want_prob);
  }
  json_decref(res);
  free(out);
  /* the human report names its parts */
  out = RUN_OK(dir, "eval", "--db", db);
  assert_non_null(strstr(out, "text->image"));
  assert_non_null(strstr(out, "image->text"));
  assert_non_null(strstr(out, "Recall@K"));
  assert_non_null(strstr(out, "median rank"));
  free(out);

  /* pairs file, COCO style: "gray" with two captions, one of them the
   * text-only item */
  write_file(dir, "pairs.jsonl",
             "{\"image\": \"gray\", \"text\": [\"gray\", \"text-only\"]}\n"
             "{\"image\": \"photo\", \"text\": \"photo\"}\n"
             "{\"image\": \"nope\", \"text\": \"photo\"}\n");
  char pairs[PATH_MAX];
  db_path(pairs, sizeof pairs, dir, "pairs.jsonl");
  out = RUN_OK(dir, "eval", "--db", db, "--pairs", pairs, "--json", "-k",
               "1,10");
  res = parse_json(out);
  assert_int_equal(json_int(res, "pairs"), 3);
  assert_int_equal(json_int(res, "skipped_pairs"), 1);
  assert_int_equal(json_int(json_object_get(res, "i2t"), "queries"), 2);
  assert_int_equal(json_int(json_object_get(res, "t2i"), "queries"), 3);
  /* 10 >= every candidate count: everything is a hit at 10 */
  assert_true(json_number_value(json_object_get(
                  json_object_get(json_object_get(res, "i2t"), "recall"),
                  "10")) == 1.0);
  json_decref(res);
  free(out);

  /* get, --thumb, delete */
  char thumb[PATH_MAX];
  db_path(thumb, sizeof thumb, dir, "thumb.jpg");
  out = RUN_OK(dir, "get", "--db", db, "photo", "--json", "--thumb", thumb);
  res = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(res, "caption")),
                      "a colourful photo, with commas");
  assert_int_equal(json_int(json_object_get(res, "meta"), "year"), 2010);
  long thumb_bytes = json_int(res, "thumb_bytes");
  assert_true(thumb_bytes > 100);
  struct stat st;
  assert_int_equal(stat(thumb, &st), 0);
  assert_int_equal(st.st_size, thumb_bytes);
  char *jpeg = slurp(thumb);
  assert_true((unsigned char)jpeg[0] == 0xff && (unsigned char)jpeg[1] == 0xd8);
  free(jpeg);
  json_decref(res);
  free(out);
  /* thumbnails of a large photo, a wide banner and a transparent PNG:
   * the longest side at most 256, the aspect kept, and (area averaging
   * keeps the mean) the source's mean colour over white within a couple
   * of levels */
  static const struct {
    const char *key, *file;
  } thumbs[] = {{"photo", "photo_rgb.jpg"}, {"wide", "wide.png"}, {"rgba", "rgba.png"}};
  for (size_t t = 0; t < sizeof thumbs / sizeof thumbs[0]; t++) {
    free(RUN_OK(dir, "get", "--db", db, thumbs[t].key, "--thumb", thumb));
    size_t src_len, th_len;
    char src_path[PATH_MAX];
    snprintf(src_path, sizeof src_path, "tests/fixtures/clip-tiny/%s", thumbs[t].file);
    char *src_bytes = slurp_len(src_path, &src_len);
    char *th_bytes = slurp_len(thumb, &th_len);
    assert_non_null(src_bytes);
    assert_non_null(th_bytes);
    vlm_clip_options white = {.alpha = VLM_ALPHA_WHITE};
    vlm_image src, small;
    assert_int_equal(vlm_image_decode(src_bytes, src_len, &white, &src), 0);
    assert_int_equal(vlm_image_decode(th_bytes, th_len, NULL, &small), 0);
    int longest = src.w > src.h ? src.w : src.h;
    int want_long = longest > 256 ? 256 : longest;
    assert_int_equal(small.w > small.h ? small.w : small.h, want_long);
    double want_short = (double)(src.w < src.h ? src.w : src.h) * want_long / longest;
    assert_true(fabs((small.w < small.h ? small.w : small.h) - want_short) <= 1.0);
    for (int c = 0; c < 3; c++) {
      double m_src = 0, m_small = 0;
      for (size_t k = 0; k < (size_t)src.w * src.h; k++) m_src += src.rgb[k * 3 + c];
      for (size_t k = 0; k < (size_t)small.w * small.h; k++) m_small += small.rgb[k * 3 + c];
      m_src /= (double)src.w * src.h;
      m_small /= (double)small.w * small.h;
      print_message("thumbnail of %s: %dx%d -> %dx%d, channel %d mean %.2f (source %.2f)\n",
                    thumbs[t].key, src.w, src.h, small.w, small.h, c, m_small, m_src);
      assert_true(fabs(m_small - m_src) < 2.5);
    }
    vlm_image_free(&src);
    vlm_image_free(&small);
    free(src_bytes);
    free(th_bytes);
  }
  assert_int_equal(RUN(dir, NULL, NULL, "get", "--db", db, "no-such-key"), 1);
  /* update: the metadata changes, the thumbnail, caption and vectors do
   * not; a missing key is an error */
  out = RUN_OK(dir, "update", "--db", db, "photo", "--meta",
               "{\"category\": \"pictures\", \"year\": 2024}", "--json");
  res = parse_json(out);
  assert_true(json_is_true(json_object_get(res, "updated")));
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "get", "--db", db, "photo", "--json", "--vectors");
  res = parse_json(out);
  assert_int_equal(json_int(json_object_get(res, "meta"), "year"), 2024);
  assert_string_equal(json_string_value(json_object_get(res, "caption")),
                      "a colourful photo, with commas");
  assert_int_equal(json_int(res, "thumb_bytes"), thumb_bytes);
  assert_true(json_equal(json_object_get(res, "image_vector"),
                         json_object_get(json_object_get(map, "photo"),
                                         "image_vector")));
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "search", "--db", db, "--key", "photo", "--filter",
               "year = 2024", "--json");
  res = parse_json(out);
  assert_int_equal(json_array_size(json_object_get(res, "results")), 1);
  json_decref(res);
  free(out);
  assert_int_equal(RUN(dir, NULL, NULL, "update", "--db", db, "no-such-key",
                       "--source", "x"), 1);
  assert_int_equal(RUN(dir, NULL, NULL, "update", "--db", db, "photo"), 2);
  out = RUN_OK(dir, "delete", "--db", db, "rgb", "no-such-key", "--json");
  res = parse_json(out);
  assert_int_equal(json_int(res, "deleted"), 1);
  assert_int_equal(json_int(res, "requested"), 2);
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "info", "--db", db, "--json");
  info = parse_json(out);
  assert_int_equal(json_int(info, "items"), MAIN_GOOD - 1);
  json_decref(info);
  free(out);

  json_decref(map);
}

/* The keys of a search's JSON results, in order, as one string. */
static char *result_keys(const char *json_text) {
  json_t *res = parse_json(json_text);
  json_t *hits = json_object_get(res, "results");
  char *buf = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&buf, &len);
  for (size_t i = 0; i < json_array_size(hits); i++)
    fprintf(mem, "%s|",
            json_string_value(json_object_get(json_array_get(hits, i), "key")));
  fclose(mem);
  json_decref(res);
  return buf;
}

/* search by image file, --exact, --ef, --hybrid; eval --direction and
 * --sample; reindex; --upsert */
static void test_e2e_search_options_reindex_upsert(void **state) {
  const char *dir = *state;
  char db[PATH_MAX], catalog[PATH_MAX], image[PATH_MAX];
  make_images(dir);
  write_file(dir, "catalog.jsonl", main_catalog);
  db_path(db, sizeof db, dir, "db");
  db_path(catalog, sizeof catalog, dir, "catalog.jsonl");
  db_path(image, sizeof image, dir, "img/photo_prog.jpg");
  init_db(dir, "db");
  assert_int_equal(RUN(dir, NULL, NULL, "ingest", "--db", db, catalog), 0);

  /* an image file finds its own item first, at cosine 1 */
  char *out = RUN_OK(dir, "search", "--db", db, "--image", image, "--target",
                     "image", "-k", "3", "--json");
  json_t *res = parse_json(out);
  json_t *top = json_array_get(json_object_get(res, "results"), 0);
  assert_string_equal(json_string_value(json_object_get(top, "key")),
                      "progressive");
  assert_true(fabs(json_number_value(json_object_get(top, "score")) - 1.0) <
              1e-4);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(res, "query"), "image")),
      image);
  json_decref(res);
  free(out);

  /* the index and brute force agree on a database this small */
  char *ann = RUN_OK(dir, "search", "--db", db, "--text", "a wide banner",
                     "-k", "10", "--ef", "64", "--json");
  char *exact = RUN_OK(dir, "search", "--db", db, "--text", "a wide banner",
                       "-k", "10", "--exact", "--json");
  char *ka = result_keys(ann), *ke = result_keys(exact);
  assert_string_equal(ka, ke);
  free(ka);
  free(ke);
  free(ann);
  free(exact);

  /* hybrid: BM25 over captions fused in; the caption with both words
   * ranks first, and the output says it was hybrid */
  out = RUN_OK(dir, "search", "--db", db, "--text", "wide banner", "--hybrid",
               "-k", "5", "--json");
  res = parse_json(out);
  assert_true(json_is_true(json_object_get(res, "hybrid")));
  top = json_array_get(json_object_get(res, "results"), 0);
  assert_string_equal(json_string_value(json_object_get(top, "key")), "wide");
  json_decref(res);
  free(out);
  assert_int_equal(RUN(dir, NULL, NULL, "search", "--db", db, "--key", "wide",
                       "--hybrid"),
                   2);

  /* eval: one direction, a sample */
  out = RUN_OK(dir, "eval", "--db", db, "--direction", "t2i", "--sample", "4",
               "--json");
  res = parse_json(out);
  assert_true(json_is_null(json_object_get(res, "i2t")));
  assert_int_equal(json_int(json_object_get(res, "t2i"), "queries"), 4);
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "eval", "--db", db, "--no-index", "--json");
  res = parse_json(out);
  assert_true(json_is_null(json_object_get(json_object_get(res, "i2t"),
                                           "index_recall")));
  json_decref(res);
  free(out);

  /* reindex with another kind: same answers from the new index */
  char *before = RUN_OK(dir, "search", "--db", db, "--key", "gray", "-k",
                        "10", "--json");
  out = RUN_OK(dir, "reindex", "--db", db, "--index", "Flat", "--json");
  res = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(res, "index")), "Flat");
  assert_int_equal(json_int(res, "index_vectors"), 2 * MAIN_GOOD - 1);
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "info", "--db", db, "--json");
  res = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(res, "index")), "Flat");
  json_decref(res);
  free(out);
  char *after = RUN_OK(dir, "search", "--db", db, "--key", "gray", "-k", "10",
                       "--json");
  char *kb = result_keys(before), *kf = result_keys(after);
  assert_string_equal(kb, kf);
  free(kb);
  free(kf);
  free(before);
  free(after);
  /* reindex --text: meta.sqlite rebuilt from the payload store, the same
   * filtered answers after it; --index and --text are one or the other */
  before = RUN_OK(dir, "search", "--db", db, "--key", "gray", "-k", "10",
                  "--filter", "year >= 2000", "--json");
  out = RUN_OK(dir, "reindex", "--db", db, "--text", "--json");
  res = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(res, "text")),
                      "vlm_cjk");
  assert_int_equal(json_int(res, "items"), MAIN_GOOD);
  json_decref(res);
  free(out);
  after = RUN_OK(dir, "search", "--db", db, "--key", "gray", "-k", "10",
                 "--filter", "year >= 2000", "--json");
  kb = result_keys(before);
  kf = result_keys(after);
  assert_string_equal(kb, kf);
  free(kb);
  free(kf);
  free(before);
  free(after);
  free(RUN_OK(dir, "verify", "--db", db));
  assert_int_equal(RUN(dir, NULL, NULL, "reindex", "--db", db), 2);
  assert_int_equal(RUN(dir, NULL, NULL, "reindex", "--db", db, "--text",
                       "--index", "Flat"),
                   2);

  /* a changed row: skipped without --upsert, replaced with it */
  write_file(dir, "change.jsonl",
             "{\"key\": \"photo\", \"image\": \"img/rgb.png\", \"text\": "
             "\"replaced\", \"meta\": {\"category\": \"new\", \"year\": 2024}}\n");
  char change[PATH_MAX];
  db_path(change, sizeof change, dir, "change.jsonl");
  out = RUN_OK(dir, "ingest", "--db", db, change, "--json");
  res = parse_json(out);
  assert_int_equal(json_int(res, "ingested"), 0);
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "get", "--db", db, "photo", "--json");
  res = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(res, "caption")),
                      "a colourful photo, with commas");
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "ingest", "--db", db, change, "--upsert", "--json");
  res = parse_json(out);
  assert_int_equal(json_int(res, "ingested"), 1);
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "get", "--db", db, "photo", "--json");
  res = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(res, "caption")),
                      "replaced");
  assert_int_equal(json_int(json_object_get(res, "meta"), "year"), 2024);
  json_decref(res);
  free(out);
  /* the replaced vectors are searched: its new image is rgb.png's */
  out = RUN_OK(dir, "search", "--db", db, "--key", "rgb", "--target", "image",
               "-k", "2", "--json");
  res = parse_json(out);
  json_t *hits = json_object_get(res, "results");
  int found = 0;
  for (size_t i = 0; i < json_array_size(hits); i++)
    found |= !strcmp(json_string_value(json_object_get(json_array_get(hits, i),
                                                       "key")),
                     "photo");
  assert_true(found);
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "info", "--db", db, "--json");
  res = parse_json(out);
  assert_int_equal(json_int(res, "items"), MAIN_GOOD);
  json_decref(res);
  free(out);
}

/* export -> ingest into a new database gives the same items: with
 * --vectors exactly, without them by re-embedding the same files */
static void test_e2e_export_roundtrip(void **state) {
  const char *dir = *state;
  char db[PATH_MAX], catalog[PATH_MAX], exp[PATH_MAX];
  make_images(dir);
  write_file(dir, "catalog.jsonl", main_catalog);
  db_path(db, sizeof db, dir, "db");
  db_path(catalog, sizeof catalog, dir, "catalog.jsonl");
  init_db(dir, "db");
  assert_int_equal(RUN(dir, NULL, NULL, "ingest", "--db", db, catalog), 0);
  json_t *orig = export_map(dir, db);

  for (int with_vectors = 1; with_vectors >= 0; with_vectors--) {
    const char *name = with_vectors ? "copy-v" : "copy";
    char copy[PATH_MAX];
    db_path(copy, sizeof copy, dir, name);
    db_path(exp, sizeof exp, dir, with_vectors ? "exp-v.jsonl" : "exp.jsonl");
    if (with_vectors)
      free(RUN_OK(dir, "export", "--db", db, "--vectors", "-o", exp));
    else
      free(RUN_OK(dir, "export", "--db", db, "-o", exp));
    init_db(dir, name);
    char *out = RUN_OK(dir, "ingest", "--db", copy, exp, "--json");
    json_t *sum = parse_json(out);
    assert_int_equal(json_int(sum, "ingested"), MAIN_GOOD);
    assert_int_equal(json_int(sum, "skipped"), 0);
    json_decref(sum);
    free(out);
    json_t *again = export_map(dir, copy);
    assert_int_equal(json_object_size(again), MAIN_GOOD);
    const char *key;
    json_t *a;
    json_object_foreach(orig, key, a) {
      json_t *b = json_object_get(again, key);
      assert_non_null(b);
      if (with_vectors) {
        if (!json_equal(a, b)) {
          char *sa = json_dumps(a, JSON_COMPACT), *sb = json_dumps(b, JSON_COMPACT);
          fail_msg("key %s differs:\n%.300s\n%.300s", key, sa, sb);
        }
        continue;
      }
      /* re-embedded: the same up to float rounding */
      const char *fields[] = {"image", "text", "meta", "thumbnail"};
      for (int f = 0; f < 4; f++)
        if (!json_equal(json_object_get(a, fields[f]) ? json_object_get(a, fields[f]) : json_null(),
                        json_object_get(b, fields[f]) ? json_object_get(b, fields[f]) : json_null()))
          fail_msg("key %s: \"%s\" differs", key, fields[f]);
      const char *vecs[] = {"image_vector", "text_vector"};
      for (int v = 0; v < 2; v++) {
        json_t *va = json_object_get(a, vecs[v]), *vb = json_object_get(b, vecs[v]);
        assert_int_equal(!va, !vb);
        for (size_t i = 0; va && i < json_array_size(va); i++) {
          double x = json_number_value(json_array_get(va, i));
          double y = json_number_value(json_array_get(vb, i));
          if (fabs(x - y) > 1e-5)
            fail_msg("key %s %s[%zu]: %.7f vs %.7f", key, vecs[v], i, x, y);
        }
      }
    }
    json_decref(again);
  }
  json_decref(orig);
}

/* A catalog of n rows cycling over the fixture images. */
static void write_big_catalog(const char *dir, int n) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/big.jsonl", dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  for (int i = 0; i < n; i++)
    fprintf(f,
            "{\"key\": \"item%04d\", \"image\": \"img/%s\", \"text\": "
            "\"caption number %d\", \"meta\": {\"year\": %d}}\n",
            i, fixture_images[i % NFIXTURES], i, 1900 + i % 120);
  fclose(f);
}

/* Wait until the child's progress lines show at least `rows` done. */
static int wait_progress(const char *dir, pid_t pid, long rows) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/.stderr", dir);
  for (int tries = 0; tries < 6000; tries++) { /* 60 s at most */
    char *err = slurp(path);
    long best = -1;
    for (char *p = err; (p = strstr(p, "ingest: ")); p += 8) {
      long done = strtol(p + 8, NULL, 10);
      if (done > best)
        best = done;
    }
    free(err);
    if (best >= rows)
      return 1;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      running_child = 0;
      fail_msg("the ingest ended (status %d) before %ld rows were reported",
               st, rows);
    }
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

static void check_complete(const char *dir, const char *db, int n) {
  char *out = RUN_OK(dir, "info", "--db", db, "--json");
  json_t *info = parse_json(out);
  assert_int_equal(json_int(info, "items"), n);
  assert_int_equal(json_int(info, "image_vectors"), n);
  assert_int_equal(json_int(info, "text_vectors"), n);
  json_decref(info);
  free(out);
  json_t *map = export_map(dir, db); /* fails on a key seen twice */
  assert_int_equal(json_object_size(map), n);
  for (int i = 0; i < n; i++) {
    char key[32];
    snprintf(key, sizeof key, "item%04d", i);
    json_t *o = json_object_get(map, key);
    if (!o)
      fail_msg("%s is missing", key);
    char want[64];
    snprintf(want, sizeof want, "caption number %d", i);
    assert_string_equal(json_string_value(json_object_get(o, "text")), want);
    assert_non_null(json_object_get(o, "image_vector"));
  }
  json_decref(map);
}

/* kill -9 in the middle of an ingest, run it again: all rows, once */
static void test_e2e_resume_after_sigkill(void **state) {
  const int n = 600;
  const char *dir = *state;
  char db[PATH_MAX], catalog[PATH_MAX];
  make_images(dir);
  write_big_catalog(dir, n);
  db_path(db, sizeof db, dir, "db");
  db_path(catalog, sizeof catalog, dir, "big.jsonl");
  init_db(dir, "db");
  pid_t pid = spawn_vlmdb(dir, (const char *const[]){"ingest", "--db", db,
                                                      catalog, "--batch", "4",
                                                      "--threads", "1", NULL});
  running_child = pid;
  assert_true(wait_progress(dir, pid, 40));
  kill(pid, SIGKILL);
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  running_child = 0;
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

  char *out = RUN_OK(dir, "ingest", "--db", db, catalog, "--json");
  json_t *sum = parse_json(out);
  long ingested = json_int(sum, "ingested");
  long exists = json_int(json_object_get(sum, "skipped_by_reason"), "exists");
  if (ingested + exists != n || exists < 40 || ingested == 0)
    fail_msg("after the kill: %ld ingested + %ld already there, want %d with "
             "at least 40 from the first run",
             ingested, exists, n);
  json_decref(sum);
  free(out);
  check_complete(dir, db, n);
}

/* ------------------------------------------------------------ reembed */

#define NEW_MODEL "models/default"

/* Two `export --vectors` maps hold the same items: the same members
 * (payload, thumbnail) and vectors equal within tol per element (0:
 * bit for bit, as nine digits give back the exact float). */
static void assert_same_items(json_t *a, json_t *b, double tol) {
  assert_int_equal(json_object_size(a), json_object_size(b));
  const char *key;
  json_t *x;
  double worst = 0;
  json_object_foreach(a, key, x) {
    json_t *y = json_object_get(b, key);
    if (!y)
      fail_msg("key \"%s\" is missing", key);
    const char *member;
    json_t *v;
    json_object_foreach(x, member, v) {
      json_t *w = json_object_get(y, member);
      if (!w)
        fail_msg("key \"%s\": \"%s\" is missing", key, member);
      if (strcmp(member, "image_vector") && strcmp(member, "text_vector")) {
        if (!json_equal(v, w))
          fail_msg("key \"%s\": \"%s\" differs", key, member);
        continue;
      }
      assert_int_equal(json_array_size(v), json_array_size(w));
      for (size_t i = 0; i < json_array_size(v); i++) {
        double d = fabs(json_number_value(json_array_get(v, i)) -
                        json_number_value(json_array_get(w, i)));
        if (d > worst)
          worst = d;
        if (d > tol)
          fail_msg("key \"%s\": %s[%zu] %.9g vs %.9g (tolerance %g)", key,
                   member, i, json_number_value(json_array_get(v, i)),
                   json_number_value(json_array_get(w, i)), tol);
      }
    }
    assert_int_equal(json_object_size(x), json_object_size(y));
  }
  print_message("same items (%zu), vectors within %.3g\n",
                json_object_size(a), worst);
}

static int path_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static int db_dim(const char *dir, const char *db) {
  char *out = RUN_OK(dir, "info", "--db", db, "--json");
  json_t *info = parse_json(out);
  int dim = (int)json_int(info, "dim");
  json_decref(info);
  free(out);
  return dim;
}

/* Keys of a search's results, as "k1 k2 ...". */
static char *search_keys(const char *dir, const char *db, const char *text) {
  char *out = RUN_OK(dir, "search", "--db", db, "--text", text, "-k", "5",
                     "--json");
  char *keys = result_keys(out);
  free(out);
  return keys;
}

/* reembed to a model of another dimension gives what a fresh ingest with
 * that model gives (the engine groups a batch's products differently, so
 * within 1e-6, 1-2 ulp); with --keep-images it works with the files gone,
 * and the kept bytes are the files' own. */
static void test_e2e_reembed_new_model(void **state) {
  const char *dir = *state;
  char a[PATH_MAX], fresh[PATH_MAX], staged[PATH_MAX + 16], cat[PATH_MAX];
  make_images(dir);
  write_file(dir, "main.jsonl", main_catalog);
  db_path(cat, sizeof cat, dir, "main.jsonl");
  db_path(a, sizeof a, dir, "a");
  db_path(fresh, sizeof fresh, dir, "fresh");
  snprintf(staged, sizeof staged, "%s.reembed", a);
  free(RUN_OK(dir, "init", "--db", a, "--model", MODEL, "--index", "Flat",
              "--field", "category:text", "--field", "year:int"));
  free(RUN_OK(dir, "ingest", "--db", a, cat, "--keep-images"));
  free(RUN_OK(dir, "init", "--db", fresh, "--model", NEW_MODEL, "--index",
              "Flat", "--field", "category:text", "--field", "year:int"));
  /* it keeps the files' bytes too, so its export carries them as the
   * reembedded database's does, and they are compared as well */
  free(RUN_OK(dir, "ingest", "--db", fresh, cat, "--keep-images"));
  json_t *before = export_map(dir, a);

  char *out = RUN_OK(dir, "reembed", "--db", a, "--model", NEW_MODEL);
  assert_non_null(strstr(out, "switched: embedded 10 items again"));
  free(out);
  assert_false(path_exists(staged));
  assert_int_equal(db_dim(dir, a), 128);
  json_t *after = export_map(dir, a), *want = export_map(dir, fresh);
  assert_same_items(after, want, 1e-6);
  free(RUN_OK(dir, "verify", "--db", a));
  char *ka = search_keys(dir, a, "a gray square");
  char *kf = search_keys(dir, fresh, "a gray square");
  assert_string_equal(ka, kf);
  free(ka);
  free(kf);
  /* nothing to do the second time */
  out = RUN_OK(dir, "reembed", "--db", a, "--model", NEW_MODEL);
  assert_non_null(strstr(out, "nothing to do"));
  free(out);

  /* the kept bytes are the file's */
  char got[PATH_MAX], src[PATH_MAX];
  db_path(got, sizeof got, dir, "gray-kept.jpg");
  db_path(src, sizeof src, dir, "img/gray.jpg");
  free(RUN_OK(dir, "get", "--db", a, "gray", "--image", got));
  size_t n1, n2;
  char *b1 = slurp_len(got, &n1), *b2 = slurp_len(src, &n2);
  assert_non_null(b1);
  assert_non_null(b2);
  assert_int_equal(n1, n2);
  assert_memory_equal(b1, b2, n1);
  free(b1);
  free(b2);
  out = RUN_OK(dir, "get", "--db", a, "text-only", "--json");
  json_t *o = parse_json(out);
  assert_int_equal(json_int(o, "image_bytes"), 0);
  json_decref(o);
  free(out);

  /* back to the first model with every image file gone */
  char img[PATH_MAX];
  db_path(img, sizeof img, dir, "img");
  rm_rf(img);
  free(RUN_OK(dir, "reembed", "--db", a, "--model", MODEL));
  assert_int_equal(db_dim(dir, a), 48);
  json_t *back = export_map(dir, a);
  assert_same_items(back, before, 1e-6);
  free(RUN_OK(dir, "verify", "--db", a));
  json_decref(before);
  json_decref(after);
  json_decref(want);
  json_decref(back);
}

/* An image whose file is gone and whose bytes were not kept: listed, the
 * rest goes on, nothing is switched (the database answers as before); the
 * file back, a rerun resumes and switches.  --allow-missing switches with
 * the item's text vector only. */
static void test_e2e_reembed_missing_image(void **state) {
  const char *dir = *state;
  char b[PATH_MAX], c[PATH_MAX], staged[PATH_MAX + 16], cat[PATH_MAX];
  char gray[PATH_MAX], src[PATH_MAX];
  make_images(dir);
  write_file(dir, "main.jsonl", main_catalog);
  db_path(cat, sizeof cat, dir, "main.jsonl");
  db_path(b, sizeof b, dir, "b");
  db_path(c, sizeof c, dir, "c");
  db_path(gray, sizeof gray, dir, "img/gray.jpg");
  snprintf(src, sizeof src, MODEL "/gray.jpg");
  snprintf(staged, sizeof staged, "%s.reembed", b);
  for (int i = 0; i < 2; i++) {
    const char *db = i ? c : b;
    free(RUN_OK(dir, "init", "--db", db, "--model", MODEL, "--index", "Flat",
                "--field", "category:text", "--field", "year:int"));
    free(RUN_OK(dir, "ingest", "--db", db, cat));
  }
  json_t *before = export_map(dir, b);
  char *keys_before = search_keys(dir, b, "a gray square");
  unlink(gray);
  char *out, *err;
  int rc = RUN(dir, &out, &err, "reembed", "--db", b, "--model", NEW_MODEL,
               "--batch", "3");
  assert_int_equal(rc, 1);
  assert_non_null(strstr(err, "key \"gray\": missing-image:"));
  assert_non_null(strstr(out, "not switched: embedded 9 items again"));
  assert_non_null(strstr(out, "1 could not be embedded again"));
  free(out);
  free(err);
  assert_true(path_exists(staged));
  assert_int_equal(db_dim(dir, b), 48);
  json_t *still = export_map(dir, b);
  assert_same_items(still, before, 0);
  char *keys_now = search_keys(dir, b, "a gray square");
  assert_string_equal(keys_now, keys_before);
  free(keys_now);

  copy_file(src, gray);
  rc = RUN(dir, &out, &err, "reembed", "--db", b, "--model", NEW_MODEL,
           "--json");
  assert_int_equal(rc, 0);
  assert_non_null(strstr(err, "resuming"));
  json_t *sum = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(sum, "status")),
                      "switched");
  assert_int_equal(json_int(sum, "embedded"), 1);
  assert_int_equal(json_int(sum, "resumed"), 9);
  json_decref(sum);
  free(out);
  free(err);
  assert_false(path_exists(staged));
  assert_int_equal(db_dim(dir, b), 128);
  free(RUN_OK(dir, "verify", "--db", b));

  unlink(gray);
  out = RUN_OK(dir, "reembed", "--db", c, "--model", NEW_MODEL,
               "--allow-missing");
  assert_non_null(strstr(out, "1 could not be embedded again (1 kept with "
                              "fewer vectors, 0 dropped)"));
  free(out);
  out = RUN_OK(dir, "get", "--db", c, "gray", "--json");
  json_t *o = parse_json(out);
  assert_true(json_is_null(json_object_get(o, "image_vector")));
  assert_true(json_is_true(json_object_get(o, "text_vector")));
  json_decref(o);
  free(out);
  free(RUN_OK(dir, "verify", "--db", c));
  free(keys_before);
  json_decref(before);
  json_decref(still);
}

/* kill -9 at each step of a reembed: before the switch the database is
 * as it was (and answers); a rerun ends in the same database as a run
 * never killed, bit for bit.  And while one runs, searches answer from
 * the old model and writers are refused. */
static void test_e2e_reembed_killed_anywhere(void **state) {
  const char *dir = *state;
  const int n = 22;
  char orig[PATH_MAX], ref[PATH_MAX], cat[PATH_MAX];
  make_images(dir);
  write_big_catalog(dir, n);
  db_path(cat, sizeof cat, dir, "big.jsonl");
  db_path(orig, sizeof orig, dir, "orig");
  db_path(ref, sizeof ref, dir, "ref");
  free(RUN_OK(dir, "init", "--db", orig, "--model", MODEL, "--index", "Flat",
              "--field", "year:int"));
  free(RUN_OK(dir, "ingest", "--db", orig, cat, "--keep-images"));
  json_t *old = export_map(dir, orig);
  char *old_keys = search_keys(dir, orig, "caption number 7");
  free(RUN_OK(dir, "backup", "--db", orig, "--out", ref));
  free(RUN_OK(dir, "reembed", "--db", ref, "--model", NEW_MODEL, "--batch",
              "4", "--threads", "1"));
  json_t *want = export_map(dir, ref);
  char *want_keys = search_keys(dir, ref, "caption number 7");

  /* switched: the exchange happened (the old database is then at
   * DB.reembed until the clean-up removes it, and DB/reembed.json says a
   * clean-up is due) */
  static const struct {
    const char *point;
    int switched, staged_left;
  } points[] = {{"created", 0, 1}, {"batch:1", 0, 1}, {"batch:4", 0, 1},
                {"walked", 0, 1},  {"switched", 1, 1}, {"cleaned", 1, 0}};
  for (size_t p = 0; p < sizeof points / sizeof points[0]; p++) {
    char db[PATH_MAX], staged[PATH_MAX + 16];
    snprintf(db, sizeof db, "%s/t%zu", dir, p);
    snprintf(staged, sizeof staged, "%s.reembed", db);
    free(RUN_OK(dir, "backup", "--db", orig, "--out", db));
    pid_t pid = vlm_test_spawn_crash(dir, cmd_reembed, (const char *const[]){
        "reembed", "--db", db, "--model", NEW_MODEL, "--batch", "4",
        "--threads", "1", "--quiet", NULL}, points[p].point, SIGKILL,
        &vlm_cli_crash_hook);
    assert_true(pid > 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
      fail_msg("%s: not killed (status %d)", points[p].point, st);
    assert_int_equal(path_exists(staged), points[p].staged_left);
    char note[PATH_MAX + 16];
    snprintf(note, sizeof note, "%s/reembed.json", db);
    assert_int_equal(path_exists(note), points[p].switched);
    if (!points[p].switched) {
      /* the old state, whole and answering */
      assert_int_equal(db_dim(dir, db), 48);
      json_t *now = export_map(dir, db);
      assert_same_items(now, old, 0);
      json_decref(now);
      char *keys = search_keys(dir, db, "caption number 7");
      assert_string_equal(keys, old_keys);
      free(keys);
      free(RUN_OK(dir, "verify", "--db", db));
    } else {
      assert_int_equal(db_dim(dir, db), 128);
    }
    free(RUN_OK(dir, "reembed", "--db", db, "--model", NEW_MODEL, "--batch",
                "4", "--threads", "1"));
    assert_false(path_exists(staged));
    json_t *now = export_map(dir, db);
    assert_same_items(now, want, 0);
    json_decref(now);
    char *keys = search_keys(dir, db, "caption number 7");
    assert_string_equal(keys, want_keys);
    free(keys);
    free(RUN_OK(dir, "verify", "--db", db));
  }

  /* stopped half-way: reads answer from the old model, a writer is told
   * who holds the database; continued, it switches */
  char db[PATH_MAX];
  db_path(db, sizeof db, dir, "live");
  free(RUN_OK(dir, "backup", "--db", orig, "--out", db));
  pid_t pid = vlm_test_spawn_crash(dir, cmd_reembed, (const char *const[]){
      "reembed", "--db", db, "--model", NEW_MODEL, "--batch", "4",
      "--threads", "1", "--quiet", NULL}, "batch:2", SIGSTOP,
      &vlm_cli_crash_hook);
  assert_true(pid > 0);
  running_child = pid;
  int st;
  assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
  assert_true(WIFSTOPPED(st));
  char *keys = search_keys(dir, db, "caption number 7");
  assert_string_equal(keys, old_keys);
  free(keys);
  assert_int_equal(db_dim(dir, db), 48);
  char *out, *err;
  int rc = RUN(dir, &out, &err, "ingest", "--db", db, cat, "--upsert");
  assert_int_equal(rc, 1);
  /* the writer is named by its pid (and command line: this test's own
   * program here, which runs reembed in a child of its own) */
  char holder[32];
  snprintf(holder, sizeof holder, "pid %d", (int)pid);
  if (!strstr(err, holder))
    fail_msg("the refusal does not name the reembed (%s):\n%s", holder, err);
  free(out);
  free(err);
  kill(pid, SIGCONT);
  assert_int_equal(waitpid(pid, &st, 0), pid);
  running_child = 0;
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  json_t *now = export_map(dir, db);
  assert_same_items(now, want, 0);
  json_decref(now);
  free(old_keys);
  free(want_keys);
  json_decref(old);
  json_decref(want);
}

/* "kept_image" (an item's kept image bytes, base64) is written for a
 * record read with its bytes and read back bit for bit from JSONL and from
 * a CSV column (empty: absent), is content enough for a row on its own,
 * and split passes it on from a CSV catalog. */
static void test_kept_image_member_reads_back(void **state) {
  const char *dir = *state;
  uint8_t bytes[300];
  for (int i = 0; i < 300; i++)
    bytes[i] = (uint8_t)(i * 37 + 11); /* every kind of byte, NULs too */
  vlm_record rec = {.key = "k", .dim = 4, .meta_json = "{}",
                    .image = bytes, .image_len = sizeof bytes};
  char *line = vlm_catalog_format_record(&rec, 0);
  assert_non_null(line);
  assert_non_null(strstr(line, "\"kept_image\":\""));
  rec.image = NULL; /* the size alone (vlm_db_get) writes nothing */
  char *line2 = vlm_catalog_format_record(&rec, 1);
  assert_null(strstr(line2, "kept_image"));
  char *b64 = vlm_base64_encode(bytes, sizeof bytes);
  char text[2048];
  snprintf(text, sizeof text, "%s\n%s\n", line, line2);
  write_file(dir, "k.jsonl", text);
  snprintf(text, sizeof text, "key,kept_image,text\nc1,%s,t\nc2,,t\n", b64);
  write_file(dir, "k.csv", text);
  free(line);
  free(line2);
  char path[PATH_MAX];
  vlm_catalog_options opts = {.dim = 4};
  vlm_catalog_row rows[MAX_ROWS] = {{0}};
  snprintf(path, sizeof path, "%s/k.jsonl", dir);
  int n = read_all(path, &opts, rows);
  assert_int_equal(n, 2);
  assert_int_equal(rows[0].error, VLM_SKIP_NONE); /* the bytes are content */
  assert_int_equal(rows[0].kept_len, sizeof bytes);
  assert_memory_equal(rows[0].kept, bytes, sizeof bytes);
  assert_null(rows[0].image);
  assert_int_equal(rows[1].error, VLM_SKIP_EMPTY);
  clear_rows(rows, n);
  snprintf(path, sizeof path, "%s/k.csv", dir);
  n = read_all(path, &opts, rows);
  assert_int_equal(n, 2);
  assert_int_equal(rows[0].error, VLM_SKIP_NONE);
  assert_int_equal(rows[0].kept_len, sizeof bytes);
  assert_memory_equal(rows[0].kept, bytes, sizeof bytes);
  assert_int_equal(rows[1].error, VLM_SKIP_NONE);
  assert_null(rows[1].kept);
  clear_rows(rows, n);
  /* split writes the CSV row as JSONL with its bytes */
  char cluster[PATH_MAX], out[PATH_MAX];
  write_file(dir, "cluster.json",
             "{\"shards\": [{\"id\": 0, \"slots\": [[0, 16383]]}]}\n");
  snprintf(cluster, sizeof cluster, "%s/cluster.json", dir);
  snprintf(out, sizeof out, "%s/split", dir);
  free(RUN_OK(dir, "split", "--cluster", cluster, "--catalog", path, "--out",
              out));
  snprintf(path, sizeof path, "%s/split/shard-0.jsonl", dir);
  n = read_all(path, &opts, rows);
  assert_int_equal(n, 2);
  assert_int_equal(rows[0].kept_len, sizeof bytes);
  assert_memory_equal(rows[0].kept, bytes, sizeof bytes);
  assert_null(rows[1].kept);
  clear_rows(rows, n);
  free(b64);
}

/* The bytes key keeps in db, as `get --image` writes them (NULL, *len 0:
 * none). */
static char *kept_of(const char *dir, const char *db, const char *key,
                     size_t *len) {
  char *out = RUN_OK(dir, "get", "--db", db, key, "--json");
  json_t *o = parse_json(out);
  long n = json_int(o, "image_bytes");
  json_decref(o);
  free(out);
  *len = 0;
  if (n == 0)
    return NULL;
  char path[PATH_MAX];
  db_path(path, sizeof path, dir, "kept.bin");
  free(RUN_OK(dir, "get", "--db", db, key, "--image", path));
  char *b = slurp_len(path, len);
  assert_non_null(b);
  assert_int_equal((long)*len, n);
  unlink(path);
  return b;
}

/* Every key of a keeps in b exactly the bytes it keeps in a (memcmp), and
 * keys without kept bytes in a have none in b; the number of keys with
 * bytes. */
static int assert_same_kept(const char *dir, const char *a, const char *b,
                            const char *const *keys, int n) {
  int with = 0;
  for (int i = 0; i < n; i++) {
    size_t la, lb;
    char *ba = kept_of(dir, a, keys[i], &la), *bb = kept_of(dir, b, keys[i],
                                                            &lb);
    if (la != lb)
      fail_msg("key \"%s\": %zu kept bytes in %s, %zu in %s", keys[i], la, a,
               lb, b);
    if (la && memcmp(ba, bb, la))
      fail_msg("key \"%s\": the kept bytes differ", keys[i]);
    with += la > 0;
    free(ba);
    free(bb);
  }
  return with;
}

/* Kept image bytes travel through export and ingest, and backup.  A
 * database made with `init --keep-images` keeps every ingested file
 * without the flag; export writes each item's bytes as "kept_image" (not
 * with --no-images); an ingest of the export, into a database that does
 * not keep images, keeps them bit for bit (items without stay without),
 * from the --vectors export exactly the same items, from the plain one the
 * same items embedded again from the bytes with the image files gone; a
 * backup holds them and the setting; all three reembed to another model
 * without the files.  `config` turns the setting off and on (the next
 * ingest follows it); hostile "kept_image" cells are refused by row, as
 * is an image past the payload cap on a database that keeps images. */
static void test_e2e_kept_images_travel_by_export(void **state) {
  const char *dir = *state;
  char a[PATH_MAX], b[PATH_MAX], c[PATH_MAX], cat[PATH_MAX], img[PATH_MAX];
  char expv[PATH_MAX], expp[PATH_MAX], expn[PATH_MAX];
  make_images(dir);
  write_file(dir, "main.jsonl", main_catalog);
  db_path(cat, sizeof cat, dir, "main.jsonl");
  db_path(img, sizeof img, dir, "img");
  db_path(a, sizeof a, dir, "a");
  db_path(b, sizeof b, dir, "b");
  db_path(c, sizeof c, dir, "c");
  db_path(expv, sizeof expv, dir, "exp-v.jsonl");
  db_path(expp, sizeof expp, dir, "exp.jsonl");
  db_path(expn, sizeof expn, dir, "exp-n.jsonl");
  char *out = RUN_OK(dir, "init", "--db", a, "--model", MODEL, "--index",
                     "Flat", "--field", "category:text", "--field",
                     "year:int", "--keep-images");
  assert_non_null(strstr(out, "keeps images"));
  free(out);
  out = RUN_OK(dir, "info", "--db", a, "--json");
  json_t *o = parse_json(out);
  assert_true(json_is_true(json_object_get(o, "keep_images")));
  json_decref(o);
  free(out);
  RUN(dir, NULL, NULL, "ingest", "--db", a, cat); /* bad rows: exit 0 */
  /* the files' own bytes, without --keep-images */
  size_t n1, n2;
  char src[PATH_MAX];
  db_path(src, sizeof src, dir, "img/photo_rgb.jpg");
  char *got = kept_of(dir, a, "photo", &n1), *file = slurp_len(src, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(got, file, n1);
  free(got);
  free(file);
  assert_null(kept_of(dir, a, "text-only", &n1));

  free(RUN_OK(dir, "export", "--db", a, "--vectors", "-o", expv));
  free(RUN_OK(dir, "export", "--db", a, "-o", expp));
  free(RUN_OK(dir, "export", "--db", a, "--no-images", "-o", expn));
  char *text = slurp(expn);
  assert_null(strstr(text, "kept_image"));
  free(text);
  text = slurp(expp);
  int lines = 0, with = 0;
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save), lines++)
    with += strstr(line, "\"kept_image\"") != NULL;
  free(text);
  assert_int_equal(lines, MAIN_GOOD);
  assert_int_equal(with, MAIN_GOOD - 1); /* all but text-only */

  /* the --vectors export: the same items, bytes and all */
  free(RUN_OK(dir, "init", "--db", b, "--model", MODEL, "--index", "Flat",
              "--field", "category:text", "--field", "year:int"));
  free(RUN_OK(dir, "ingest", "--db", b, expv));
  assert_same_export(dir, a, b);
  assert_int_equal(assert_same_kept(dir, a, b, main_keys, MAIN_GOOD),
                   MAIN_GOOD - 1);

  /* the plain export with every image file gone: embedded again from
   * the kept bytes, the same items up to float rounding */
  rm_rf(img);
  free(RUN_OK(dir, "init", "--db", c, "--model", MODEL, "--index", "Flat",
              "--field", "category:text", "--field", "year:int"));
  out = RUN_OK(dir, "ingest", "--db", c, expp, "--json");
  json_t *sum = parse_json(out);
  assert_int_equal(json_int(sum, "ingested"), MAIN_GOOD);
  assert_int_equal(json_int(sum, "skipped"), 0);
  json_decref(sum);
  free(out);
  json_t *ma = export_map(dir, a), *mc = export_map(dir, c);
  assert_same_items(mc, ma, 1e-6);
  json_decref(mc);
  assert_int_equal(assert_same_kept(dir, a, c, main_keys, MAIN_GOOD),
                   MAIN_GOOD - 1);
  /* `embed --catalog` embeds the kept bytes too (the files are gone) */
  char emb[PATH_MAX];
  db_path(emb, sizeof emb, dir, "emb");
  out = RUN_OK(dir, "embed", "--catalog", expp, "--out", emb, "--model",
               MODEL);
  if (!strstr(out, "embedded 10 rows") || !strstr(out, ": 9 image vectors"))
    fail_msg("embed --catalog of the export:\n%s", out);
  free(out);
  /* so does a backup (a restore is opening it) */
  char bk[PATH_MAX];
  db_path(bk, sizeof bk, dir, "a-backup");
  free(RUN_OK(dir, "backup", "--db", a, "--out", bk));
  assert_int_equal(assert_same_kept(dir, a, bk, main_keys, MAIN_GOOD),
                   MAIN_GOOD - 1);
  out = RUN_OK(dir, "info", "--db", bk, "--json");
  o = parse_json(out);
  assert_true(json_is_true(json_object_get(o, "keep_images")));
  json_decref(o);
  free(out);
  /* all three copies move to another model without the files */
  for (int i = 0; i < 3; i++) {
    const char *db = i == 2 ? bk : i ? c : b;
    out = RUN_OK(dir, "reembed", "--db", db, "--model", NEW_MODEL);
    assert_non_null(strstr(out, "switched: embedded 10 items again"));
    free(out);
    assert_int_equal(db_dim(dir, db), 128);
    free(RUN_OK(dir, "verify", "--db", db));
    assert_int_equal(assert_same_kept(dir, a, db, main_keys, MAIN_GOOD),
                     MAIN_GOOD - 1);
  }
  /* an export of the export's import is the first export (bytes and all) */
  json_t *mb = export_map(dir, b);
  const char *key;
  json_t *x;
  json_object_foreach(ma, key, x) {
    json_t *k1 = json_object_get(x, "kept_image");
    json_t *k2 = json_object_get(json_object_get(mb, key), "kept_image");
    assert_int_equal(!k1, !k2);
    if (k1 && !json_equal(k1, k2))
      fail_msg("key \"%s\": kept_image differs after the reembed", key);
  }
  json_decref(ma);
  json_decref(mb);

  /* the setting: off, and the next ingest keeps nothing; the flag keeps
   * that run's files and says the database does not */
  make_images(dir);
  out = RUN_OK(dir, "config", "--db", a, "--keep-images", "off");
  assert_non_null(strstr(out, "keep images: off (was on)"));
  free(out);
  write_file(dir, "more.jsonl",
             "{\"key\": \"more1\", \"image\": \"img/gray.jpg\", \"text\": "
             "\"x\"}\n");
  write_file(dir, "more2.jsonl",
             "{\"key\": \"more2\", \"image\": \"img/gray.jpg\", \"text\": "
             "\"x\"}\n");
  char more[PATH_MAX], more2[PATH_MAX], *err;
  db_path(more, sizeof more, dir, "more.jsonl");
  db_path(more2, sizeof more2, dir, "more2.jsonl");
  free(RUN_OK(dir, "ingest", "--db", a, more));
  assert_null(kept_of(dir, a, "more1", &n1));
  assert_int_equal(RUN(dir, NULL, &err, "ingest", "--db", a, more2,
                       "--keep-images"), 0);
  assert_non_null(strstr(err, "does not keep images for other writes"));
  free(err);
  free(kept_of(dir, a, "more2", &n1));
  assert_true(n1 > 0);
  out = RUN_OK(dir, "config", "--db", a, "--json");
  o = parse_json(out);
  assert_true(json_is_false(json_object_get(o, "keep_images")));
  json_decref(o);
  free(out);
  out = RUN_OK(dir, "config", "--db", a, "--keep-images", "on");
  assert_non_null(strstr(out, "keep images: on (was off)"));
  free(out);
  assert_int_equal(RUN(dir, NULL, NULL, "config", "--db", a,
                       "--keep-images", "maybe"), 2);

  /* hostile kept_image cells: not base64, or bytes that are no image for
   * a row that must embed them, are refused by row; bytes beside a given
   * vector are stored as they are (they are the item's data) */
  char vec[2048] = "[";
  for (int i = 0; i < 48; i++)
    snprintf(vec + strlen(vec), sizeof vec - strlen(vec), "%s%d",
             i ? "," : "", i == 0);
  strcat(vec, "]");
  char rows[4096];
  snprintf(rows, sizeof rows,
           "{\"key\": \"h1\", \"kept_image\": \"@@not base64@@\"}\n"
           "{\"key\": \"h2\", \"kept_image\": \"bm90IGFuIGltYWdl\"}\n"
           "{\"key\": \"h3\", \"kept_image\": 5}\n"
           "{\"key\": \"h4\", \"kept_image\": \"bm90IGFuIGltYWdl\", "
           "\"image_vector\": %s}\n", vec);
  write_file(dir, "hostile.jsonl", rows);
  char hostile[PATH_MAX];
  db_path(hostile, sizeof hostile, dir, "hostile.jsonl");
  assert_int_equal(RUN(dir, &out, &err, "ingest", "--db", a, hostile,
                       "--json"), 0);
  sum = parse_json(out);
  assert_int_equal(json_int(sum, "ingested"), 1);
  json_t *by = json_object_get(sum, "skipped_by_reason");
  assert_int_equal(json_int(by, "wrong-type"), 2);
  assert_int_equal(json_int(by, "corrupt-image"), 1);
  json_decref(sum);
  if (!strstr(err, "\"kept_image\""))
    fail_msg("no word of kept_image in:\n%s", err);
  free(out);
  free(err);
  got = kept_of(dir, a, "h4", &n1);
  assert_int_equal(n1, 12);
  assert_memory_equal(got, "not an image", 12);
  free(got);

  /* an image past the payload cap (16 MiB) on a database that keeps
   * images: the row is refused, not stored without its bytes */
  char hugef[PATH_MAX];
  db_path(src, sizeof src, dir, "img/gray.jpg");
  db_path(hugef, sizeof hugef, dir, "img/huge.jpg");
  copy_file(src, hugef);
  FILE *hf = fopen(hugef, "ab");
  assert_non_null(hf);
  char *pad = calloc(1, (size_t)17 << 20);
  assert_non_null(pad);
  assert_int_equal(fwrite(pad, 1, (size_t)17 << 20, hf), (size_t)17 << 20);
  fclose(hf);
  free(pad);
  write_file(dir, "huge.jsonl",
             "{\"key\": \"huge\", \"image\": \"img/huge.jpg\"}\n");
  db_path(hostile, sizeof hostile, dir, "huge.jsonl");
  assert_int_equal(RUN(dir, NULL, &err, "ingest", "--db", a, hostile), 1);
  if (!strstr(err, "rejected") || !strstr(err, "exceeds the cap"))
    fail_msg("ingest of a 17 MiB image:\n%s", err);
  free(err);
  assert_int_equal(RUN(dir, NULL, NULL, "get", "--db", a, "huge"), 1);
}

/* The loop on a database's own pairs, with its image files gone: train
 * --db (a few LoRA steps; a split held out by key, written as eval pairs
 * and not trained on), eval on the split, reembed with the new model,
 * eval again. */
static void test_e2e_train_db_loop(void **state) {
  const char *dir = *state;
  const int n = 40;
  char db[PATH_MAX], cat[PATH_MAX], out_dir[PATH_MAX], pairs[PATH_MAX];
  char img[PATH_MAX];
  make_images(dir);
  write_big_catalog(dir, n);
  db_path(cat, sizeof cat, dir, "big.jsonl");
  db_path(db, sizeof db, dir, "db");
  db_path(out_dir, sizeof out_dir, dir, "tuned");
  db_path(pairs, sizeof pairs, dir, "tuned/heldout-pairs.jsonl");
  db_path(img, sizeof img, dir, "img");
  free(RUN_OK(dir, "init", "--db", db, "--model", MODEL, "--index", "Flat"));
  free(RUN_OK(dir, "ingest", "--db", db, cat, "--keep-images"));
  rm_rf(img);
  char *out, *err;
  int rc = RUN(dir, &out, &err, "train", "--db", db, "--init", MODEL,
               "--lora", "4", "--max-steps", "3", "--batch", "8",
               "--val-fraction", "0.25", "--threads", "1", "--out", out_dir);
  if (rc)
    fail_msg("train --db exited %d: %s", rc, err);
  /* the held-out keys: distinct keys of the database, not trained on */
  char *text = slurp(pairs);
  int nheld = 0;
  json_t *held = json_object();
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save)) {
    json_t *o = parse_json(line);
    const char *key = json_string_value(json_object_get(o, "image"));
    assert_non_null(key);
    assert_string_equal(key, json_string_value(json_object_get(o, "text")));
    assert_true(!strncmp(key, "item00", 6) && atoi(key + 4) < n);
    assert_null(json_object_get(held, key));
    json_object_set_new(held, key, json_true());
    json_decref(o);
    nheld++;
  }
  free(text);
  json_decref(held);
  if (nheld < 3 || nheld > 20)
    fail_msg("%d of %d pairs held out at 0.25", nheld, n);
  char want[64];
  snprintf(want, sizeof want, "on %d pairs", n - nheld);
  if (!strstr(out, want))
    fail_msg("want \"%s\" in: %s", want, out);
  snprintf(want, sizeof want, "held-out %d pairs", nheld);
  assert_non_null(strstr(out, want));
  free(out);
  free(err);
  /* the copies of the kept images are gone with the run */
  char scratch[PATH_MAX];
  db_path(scratch, sizeof scratch, dir, "tuned/db-images");
  assert_false(path_exists(scratch));

  for (int step = 0; step < 2; step++) {
    if (step == 1)
      free(RUN_OK(dir, "reembed", "--db", db, "--model", out_dir));
    out = RUN_OK(dir, "eval", "--db", db, "--pairs", pairs, "--json");
    json_t *ev = parse_json(out);
    assert_int_equal(json_int(ev, "pairs"), nheld);
    json_decref(ev);
    free(out);
  }
  /* from a model that composites transparent images onto white (as the
   * database embeds them), the tuned model does too */
  char tuned2[PATH_MAX], pre[PATH_MAX];
  db_path(tuned2, sizeof tuned2, dir, "tuned-default");
  db_path(pre, sizeof pre, dir, "tuned-default/preprocessor_config.json");
  free(RUN_OK(dir, "train", "--db", db, "--init", NEW_MODEL, "--lora", "2",
              "--max-steps", "1", "--batch", "4", "--threads", "1", "--out",
              tuned2));
  json_t *pc = json_load_file(pre, 0, NULL);
  assert_non_null(pc);
  assert_string_equal(json_string_value(json_object_get(pc, "vlmdb_alpha")),
                      "white");
  json_decref(pc);
  out = RUN_OK(dir, "info", "--db", db, "--json");
  json_t *info = parse_json(out);
  char tuned_abs[PATH_MAX];
  assert_non_null(realpath(out_dir, tuned_abs));
  assert_string_equal(json_string_value(json_object_get(info, "model_dir")),
                      tuned_abs);
  json_decref(info);
  free(out);
}

/* Ctrl-C: the run stops after the batch being written, says so, exits 1;
 * the next run completes it */
static void test_e2e_sigint_stops_cleanly(void **state) {
  const int n = 600;
  const char *dir = *state;
  char db[PATH_MAX], catalog[PATH_MAX];
  make_images(dir);
  write_big_catalog(dir, n);
  db_path(db, sizeof db, dir, "db");
  db_path(catalog, sizeof catalog, dir, "big.jsonl");
  init_db(dir, "db");
  pid_t pid = spawn_vlmdb(dir, (const char *const[]){"ingest", "--db", db,
                                                      catalog, "--batch", "4",
                                                      "--threads", "1",
                                                      "--json", NULL});
  running_child = pid;
  assert_true(wait_progress(dir, pid, 40));
  kill(pid, SIGINT);
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  running_child = 0;
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 1);
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/.stdout", dir);
  char *out = slurp(path);
  json_t *sum = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(sum, "status")),
                      "interrupted");
  long first = json_int(sum, "ingested");
  assert_true(first >= 40 && first < n);
  json_decref(sum);
  free(out);

  out = RUN_OK(dir, "ingest", "--db", db, catalog, "--json");
  sum = parse_json(out);
  assert_int_equal(json_int(sum, "ingested"), n - first);
  assert_int_equal(json_int(json_object_get(sum, "skipped_by_reason"), "exists"),
                   first);
  json_decref(sum);
  free(out);
  check_complete(dir, db, n);
}

/* CSV with quoting, TSV and a directory through the binary; --strict and
 * the exit status when nothing could be ingested */
static void test_e2e_csv_tsv_dir_and_exit_status(void **state) {
  const char *dir = *state;
  char db[PATH_MAX], path[PATH_MAX];
  make_images(dir);
  db_path(db, sizeof db, dir, "db");
  init_db(dir, "db");
  write_file(dir, "c.csv",
             "key,image,text,meta.category,meta.year\n"
             "c1,img/gray.jpg,\"a \"\"quoted\"\", comma, text\",plain,2001\n"
             "c2,img/rgb.png,\"two\nlines\",photo,2002\n"
             "c3,img/nope.png,x,plain,2003\n"
             "c4,img/wide.png,x,plain,not-a-year\n");
  db_path(path, sizeof path, dir, "c.csv");
  char *out, *err;
  int rc = RUN(dir, &out, &err, "ingest", "--db", db, path);
  assert_int_equal(rc, 0);
  assert_non_null(strstr(out, "ingested 2 of 4 rows"));
  if (!strstr(err, "c.csv:5: missing-file: key \"c3\"") ||
      !strstr(err, "c.csv:6: wrong-type: key \"c4\""))
    fail_msg("stderr:\n%s", err);
  free(out);
  free(err);
  out = RUN_OK(dir, "get", "--db", db, "c1", "--json");
  json_t *rec = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(rec, "caption")),
                      "a \"quoted\", comma, text");
  json_decref(rec);
  free(out);
  out = RUN_OK(dir, "get", "--db", db, "c2", "--json");
  rec = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(rec, "caption")),
                      "two\nlines");
  assert_int_equal(json_int(json_object_get(rec, "meta"), "year"), 2002);
  json_decref(rec);
  free(out);

  write_file(dir, "t.tsv", "key\ttext\tmeta.category\nt1\ttab, separated\twords\n");
  db_path(path, sizeof path, dir, "t.tsv");
  free(RUN_OK(dir, "ingest", "--db", db, path));

  /* a directory: keys are relative paths, sidecars give the text */
  write_file(dir, "img/wide.txt", "a very wide picture\n");
  db_path(path, sizeof path, dir, "img");
  rc = RUN(dir, &out, &err, "ingest", "--db", db, path, "--json");
  assert_int_equal(rc, 0);
  json_t *sum = parse_json(out);
  assert_int_equal(json_int(sum, "ingested"), NFIXTURES);
  assert_int_equal(json_int(json_object_get(sum, "skipped_by_reason"),
                            "corrupt-image"),
                   1);
  json_decref(sum);
  free(out);
  free(err);
  out = RUN_OK(dir, "get", "--db", db, "wide.png", "--json");
  rec = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(rec, "caption")),
                      "a very wide picture");
  json_decref(rec);
  free(out);

  /* --strict: stop at the first bad row, exit 1; the rows before it (in
   * the same batch too) are stored, none after it, and only it counts */
  write_file(dir, "s.jsonl", "{\"key\": \"s1\", \"text\": \"fine\"}\n"
                             "{\"key\": \"s2\", \"text\": 7}\n"
                             "{\"key\": \"s3\", \"text\": \"after\"}\n"
                             "{\"key\": \"s4\", \"text\": 8}\n");
  db_path(path, sizeof path, dir, "s.jsonl");
  assert_int_equal(RUN(dir, &out, NULL, "ingest", "--db", db, path, "--strict",
                       "--json"),
                   1);
  json_t *strict_sum = parse_json(out);
  assert_int_equal(json_int(strict_sum, "ingested"), 1);
  assert_int_equal(json_int(strict_sum, "skipped"), 1);
  json_decref(strict_sum);
  free(out);
  assert_int_equal(RUN(dir, NULL, NULL, "get", "--db", db, "s1"), 0);
  assert_int_equal(RUN(dir, NULL, NULL, "get", "--db", db, "s3"), 1);
  /* a row the database rejects is reported with its key once */
  {
    char zeros[48 * 3 + 64] = "{\"key\": \"z\", \"text_vector\": [0";
    for (int i = 1; i < 48; i++)
      strcat(zeros, ",0");
    strcat(zeros, "]}\n");
    write_file(dir, "z.jsonl", zeros);
    db_path(path, sizeof path, dir, "z.jsonl");
    char *err;
    assert_int_equal(RUN(dir, NULL, &err, "ingest", "--db", db, path), 1);
    if (!strstr(err, "rejected: key \"z\": ") ||
        strstr(err, "key \"z\": key \"z\""))
      fail_msg("rejected row reported as:\n%s", err);
    free(err);
  }
  /* nothing could be ingested: exit 1; without --strict one good row is
   * enough for 0 */
  write_file(dir, "bad.jsonl", "{\"key\": \"b1\"}\nnot json\n");
  db_path(path, sizeof path, dir, "bad.jsonl");
  assert_int_equal(RUN(dir, NULL, NULL, "ingest", "--db", db, path), 1);
  db_path(path, sizeof path, dir, "s.jsonl");
  assert_int_equal(RUN(dir, NULL, NULL, "ingest", "--db", db, path), 0);
}

/* An image path that is a FIFO, a directory or a device is a bad row like
 * a missing file: the ingest finishes, stores the good rows around it and
 * reports it.  Before, opening the FIFO blocked the batch forever (and
 * SIGTERM did not end it), so a hang is caught here with a deadline. */
static void test_e2e_non_regular_image_files(void **state) {
  const char *dir = *state;
  char db[PATH_MAX], path[PATH_MAX];
  make_images(dir);
  db_path(db, sizeof db, dir, "db");
  init_db(dir, "db");
  db_path(path, sizeof path, dir, "img/pipe.jpg");
  assert_int_equal(mkfifo(path, 0600), 0);
  db_path(path, sizeof path, dir, "img/folder.jpg");
  assert_int_equal(mkdir(path, 0700), 0);
  write_file(dir, "odd.jsonl",
             "{\"key\": \"ok1\", \"image\": \"img/gray.jpg\", \"text\": \"a\"}\n"
             "{\"key\": \"fifo\", \"image\": \"img/pipe.jpg\", \"text\": \"b\"}\n"
             "{\"key\": \"dir\", \"image\": \"img/folder.jpg\"}\n"
             "{\"key\": \"dev\", \"image\": \"/dev/null\"}\n"
             "{\"key\": \"ok2\", \"image\": \"img/rgb.png\"}\n");
  db_path(path, sizeof path, dir, "odd.jsonl");
  const char *args[] = {"ingest", "--db", db, path, NULL};
  pid_t pid = spawn_vlmdb(dir, args);
  int st = 0;
  pid_t got = 0;
  for (int i = 0; i < 1200 && got == 0; i++) { /* 60 s */
    got = waitpid(pid, &st, WNOHANG);
    if (got == 0)
      usleep(50000);
  }
  if (got == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    fail_msg("vlmdb ingest still running after 60 s (a FIFO image path)");
  }
  snprintf(path, sizeof path, "%s/.stdout", dir);
  char *out = slurp(path);
  snprintf(path, sizeof path, "%s/.stderr", dir);
  char *err = slurp(path);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 ||
      !strstr(out, "ingested 2 of 5 rows") ||
      !strstr(err, "odd.jsonl:2: missing-file: key \"fifo\"") ||
      !strstr(err, "FIFO") ||
      !strstr(err, "odd.jsonl:3: missing-file: key \"dir\"") ||
      !strstr(err, "odd.jsonl:4: missing-file: key \"dev\""))
    fail_msg("ingest status %d\nstdout:\n%s\nstderr:\n%s", st, out, err);
  free(out);
  free(err);
  free(RUN_OK(dir, "get", "--db", db, "ok1", "--json"));
  free(RUN_OK(dir, "get", "--db", db, "ok2", "--json"));
  out = RUN_OK(dir, "info", "--db", db, "--json");
  json_t *info = parse_json(out);
  assert_int_equal(json_int(info, "items"), 2);
  json_decref(info);
  free(out);
}

static void test_e2e_help_and_usage_errors(void **state) {
  const char *dir = *state;
  const char *cmds[] = {"init", "ingest", "search", "eval", "info",
                        "get",  "delete", "export", "reindex"};
  for (int i = 0; i < 9; i++) {
    char *out;
    assert_int_equal(RUN(dir, &out, NULL, cmds[i], "--help"), 0);
    if (!strstr(out, "usage: vlmdb") || !strstr(out, "example"))
      fail_msg("%s --help:\n%s", cmds[i], out);
    free(out);
    assert_int_equal(RUN(dir, NULL, NULL, cmds[i], "--no-such-flag"), 2);
    /* no --db */
    assert_int_equal(RUN(dir, NULL, NULL, cmds[i]), 2);
  }
  assert_int_equal(RUN(dir, NULL, NULL, "search", "--db", dir, "-k", "0",
                       "--text", "x"),
                   2);
  assert_int_equal(RUN(dir, NULL, NULL, "eval", "--db", dir, "-k", "1,x"), 2);
  /* not a database: a runtime error */
  assert_int_equal(RUN(dir, NULL, NULL, "info", "--db", dir), 1);
  /* a flag without its value: one message saying so, then the hint */
  char *err;
  assert_int_equal(RUN(dir, NULL, &err, "embed", "--text"), 2);
  if (!strstr(err, "requires an argument") || strstr(err, "unknown option"))
    fail_msg("embed --text:\n%s", err);
  free(err);
}

/* `vlmdb serve --db db --port 0` on the shared harness (tests/util),
 * its stderr in dir/serve.log; the child is killed on teardown if the test
 * fails. */
static void start_serve(const char *dir, const char *db,
                        vlm_test_server *srv) {
  char *bin = vlmdb_path();
  char log[PATH_MAX];
  snprintf(log, sizeof log, "%s/serve.log", dir);
  int rc = vlm_test_server_spawn(
      srv, bin, (const char *const[]){"--db", db, "--port", "0", NULL}, log,
      60);
  free(bin);
  if (rc != 0) {
    char *err = slurp(log);
    fail_msg("serve exited before listening (%d):\n%s", rc, err);
  }
  running_child = srv->pid;
  assert_true(srv->port > 0);
}

/* SIGTERM: a clean exit with status 0. */
static void stop_serve(vlm_test_server *srv) {
  int st = vlm_test_server_stop(srv, 60);
  running_child = 0;
  assert_true(st != -1 && WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

/* `serve` without --model loads the model the database was made with, as
 * every other command does; a --model that is another model is refused,
 * naming both directories. */
static void test_e2e_serve_uses_recorded_model(void **state) {
  const char *dir = *state;
  char db[PATH_MAX], path[PATH_MAX];
  make_images(dir);
  init_db(dir, "db");
  db_path(db, sizeof db, dir, "db");
  snprintf(path, sizeof path, "%s/cat.jsonl", dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("{\"key\": \"gray\", \"image\": \"img/gray.jpg\", \"text\": \"a gray "
        "square\"}\n", f);
  fclose(f);
  free(RUN_OK(dir, "ingest", "--db", db, path));

  vlm_test_server srv;
  start_serve(dir, db, &srv);
  int port = srv.port;
  redisContext *c = redisConnect("127.0.0.1", port);
  assert_non_null(c);
  assert_int_equal(c->err, 0);
  redisReply *r = redisCommand(c, "SEARCH TEXT %s K 1", "a gray square");
  assert_non_null(r);
  if (r->type == REDIS_REPLY_ERROR)
    fail_msg("SEARCH TEXT: %s", r->str);
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_true(r->elements >= 1);
  freeReplyObject(r);
  r = redisCommand(c, "INFO model");
  assert_non_null(strstr(r->str, "\r\nfamily:clip\r\n"));
  freeReplyObject(r);
  redisFree(c);
  stop_serve(&srv);

  /* Another model given explicitly: refused, both directories named. */
  char *err;
  assert_int_equal(RUN(dir, NULL, &err, "serve", "--db", db, "--port", "0",
                       "--model", "models/default"),
                   1);
  if (!strstr(err, "models/default") || !strstr(err, "clip-tiny"))
    fail_msg("the refusal names neither directory:\n%s", err);
  free(err);
}

/* ------------------------------------- SigLIP and Chinese-CLIP databases */

/* The fixtures' images in a family database: all of reference.json's,
 * exif_rot6.jpg (whose EXIF orientation the family's pipeline applies)
 * included. */
#define FAMILY_ITEMS 10

typedef struct {
  const char *model;  /* the conformance fixture */
  const char *family; /* vlm_clip_family */
  int sigmoid;        /* SigLIP's probabilities; else a softmax */
  json_t *ref;        /* its reference.json */
} family_case;

static json_t *ref_image(const family_case *fc, int i) {
  return json_array_get(json_object_get(fc->ref, "images"), (size_t)i);
}

static json_t *ref_text(const family_case *fc, int i) {
  return json_array_get(json_object_get(fc->ref, "texts"), (size_t)i);
}

/* The reference's logit of image i and text t (its full forward pass). */
static double ref_logit(const family_case *fc, int i, int t) {
  return json_number_value(json_array_get(
      json_array_get(json_object_get(fc->ref, "logits_per_image"), (size_t)i),
      (size_t)t));
}

/* The family's probability of pair (i, t) from the reference's logits:
 * SigLIP's sigmoid, or the softmax over the database's texts (over_images
 * 0: image i's row) or images (over_images 1: text t's column). */
static double ref_probability(const family_case *fc, int i, int t,
                              int over_images) {
  double mine = ref_logit(fc, i, t);
  if (fc->sigmoid)
    return 1 / (1 + exp(-mine));
  double z = 0;
  for (int j = 0; j < FAMILY_ITEMS; j++)
    z += exp((over_images ? ref_logit(fc, j, t) : ref_logit(fc, i, j)) - mine);
  return 1 / z;
}

static double json_cosine(json_t *a, json_t *b, double *max_diff) {
  double ab = 0, aa = 0, bb = 0;
  *max_diff = 0;
  for (size_t d = 0; d < json_array_size(a); d++) {
    double x = json_number_value(json_array_get(a, d));
    double y = json_number_value(json_array_get(b, d));
    ab += x * y;
    aa += x * x;
    bb += y * y;
    *max_diff = fabs(x - y) > *max_diff ? fabs(x - y) : *max_diff;
  }
  return ab / sqrt(aa * bb);
}

/* Each item's stored image or text vector ("image" / "text") against
 * the reference's normalized one: cosine >= min_cos, no component off by
 * more than 1e-4. */
static void check_stored_vectors(const family_case *fc, json_t *map,
                                 const char *which, double min_cos) {
  char field[16];
  snprintf(field, sizeof field, "%s_vector", which);
  double worst_cos = 1, worst_diff = 0;
  for (int i = 0; i < FAMILY_ITEMS; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", i);
    json_t *ref = strcmp(which, "image") ? ref_text(fc, i) : ref_image(fc, i);
    double diff, c = json_cosine(
        json_object_get(json_object_get(map, key), field),
        json_object_get(ref, "normalized"), &diff);
    worst_cos = c < worst_cos ? c : worst_cos;
    worst_diff = diff > worst_diff ? diff : worst_diff;
  }
  print_message("%s: stored %s vectors against the reference: worst "
                "cosine %.9f, max difference %.2e\n", fc->family, which,
                worst_cos, worst_diff);
  assert_true(worst_cos >= min_cos && worst_diff <= 1e-4);
}

/* A database bound to a SigLIP or Chinese-CLIP model: created, ingested
 * (images and captions embedded by ingest with the family's image
 * processor and tokenizer), described, searched by text (English,
 * Chinese, Japanese), key, image, filter and vector, evaluated with the
 * family's own score and served.
 * Oracles: the reference's embeddings and logits (transformers' forward
 * pass) and dot products of the exported vectors. */
static void check_family_database(const char *dir, family_case *fc) {
  char path[PATH_MAX], db[PATH_MAX], catalog[PATH_MAX];
  snprintf(path, sizeof path, "%s/reference.json", fc->model);
  json_error_t jerr;
  fc->ref = json_load_file(path, JSON_ALLOW_NUL, &jerr);
  if (!fc->ref)
    fail_msg("%s: %s", path, jerr.text);
  snprintf(path, sizeof path, "%s/img", dir);
  mkdir(path, 0755);
  db_path(catalog, sizeof catalog, dir, "catalog.jsonl");
  FILE *cat = fopen(catalog, "w");
  assert_non_null(cat);
  for (int i = 0; i < FAMILY_ITEMS; i++) {
    const char *file =
        json_string_value(json_object_get(ref_image(fc, i), "file"));
    char src[PATH_MAX];
    snprintf(src, sizeof src, "%s/%s", fc->model, file);
    snprintf(path, sizeof path, "%s/img/%s", dir, file);
    copy_file(src, path);
    json_t *row = json_object();
    char key[16];
    snprintf(key, sizeof key, "k%d", i);
    json_object_set_new(row, "key", json_string(key));
    snprintf(path, sizeof path, "img/%s", file);
    json_object_set_new(row, "image", json_string(path));
    json_object_set(row, "text", json_object_get(ref_text(fc, i), "text"));
    json_t *meta = json_object();
    json_object_set_new(meta, "category", json_string(i % 2 ? "odd" : "even"));
    json_object_set_new(row, "meta", meta);
    char *line = json_dumps(row, JSON_COMPACT | JSON_REAL_PRECISION(9));
    fprintf(cat, "%s\n", line);
    free(line);
    json_decref(row);
  }
  fclose(cat);

  /* init records the family; info shows it */
  db_path(db, sizeof db, dir, "db");
  free(RUN_OK(dir, "init", "--db", db, "--model", fc->model, "--field",
              "category:text"));
  char *out = RUN_OK(dir, "ingest", "--db", db, catalog, "--json");
  json_t *sum = parse_json(out);
  assert_int_equal(json_int(sum, "ingested"), FAMILY_ITEMS);
  json_decref(sum);
  free(out);
  out = RUN_OK(dir, "info", "--db", db, "--json");
  json_t *info = parse_json(out);
  assert_string_equal(json_string_value(json_object_get(info, "model_family")),
                      fc->family);
  assert_int_equal(json_int(info, "image_vectors"), FAMILY_ITEMS);
  assert_int_equal(json_int(info, "text_vectors"), FAMILY_ITEMS);
  json_decref(info);
  free(out);
  out = RUN_OK(dir, "info", "--db", db);
  char want[256];
  snprintf(want, sizeof want, "\nmodel family:   %s\n", fc->family);
  if (!strstr(out, want))
    fail_msg("info lacks '%s':\n%s", want + 1, out);
  free(out);

  /* embed --json: the family and the checkpoint's logit scale and bias */
  out = RUN_OK(dir, "embed", "--json", "--model", fc->model);
  json_t *described = parse_json(out);
  json_t *model = json_object_get(described, "model");
  assert_string_equal(json_string_value(json_object_get(model, "family")),
                      fc->family);
  double logit_scale = json_number_value(json_object_get(model, "logit_scale"));
  double logit_bias = json_number_value(json_object_get(model, "logit_bias"));
  assert_true(logit_scale == json_number_value(
                                 json_object_get(fc->ref, "logit_scale")));
  assert_true(logit_bias == json_number_value(
                                json_object_get(fc->ref, "logit_bias")));
  json_decref(described);
  free(out);

  /* the stored vectors are the reference's: ingest preprocesses images as
   * the family's image processor does and tokenizes captions as its
   * reference tokenizer does */
  json_t *map = export_map(dir, db);
  check_stored_vectors(fc, map, "image", 0.9999);
  check_stored_vectors(fc, map, "text", 0.99999);

  /* search by a stored image: itself first, the scores the exported
   * vectors' dot products; by an image file: its own item; a filter */
  out = RUN_OK(dir, "search", "--db", db, "--key", "k3", "--target", "image",
               "-k", "20", "--json");
  json_t *res = parse_json(out);
  json_t *hits = json_object_get(res, "results");
  assert_int_equal(json_array_size(hits), FAMILY_ITEMS);
  assert_string_equal(
      json_string_value(json_object_get(json_array_get(hits, 0), "key")), "k3");
  json_t *qv = json_object_get(json_object_get(map, "k3"), "image_vector");
  for (size_t i = 0; i < json_array_size(hits); i++) {
    json_t *h = json_array_get(hits, i);
    const char *key = json_string_value(json_object_get(h, "key"));
    double score = json_number_value(json_object_get(h, "score"));
    double dot = dot_json(
        qv, json_object_get(json_object_get(map, key), "image_vector"));
    if (fabs(score - dot) > 1e-4)
      fail_msg("hit %zu %s: score %.6f, dot product %.6f", i, key, score, dot);
  }
  json_decref(res);
  free(out);
  const char *file5 =
      json_string_value(json_object_get(ref_image(fc, 5), "file"));
  snprintf(path, sizeof path, "%s/img/%s", dir, file5);
  out = RUN_OK(dir, "search", "--db", db, "--image", path, "--target", "image",
               "-k", "1", "--json");
  res = parse_json(out);
  json_t *top = json_array_get(json_object_get(res, "results"), 0);
  assert_string_equal(json_string_value(json_object_get(top, "key")), "k5");
  assert_true(json_number_value(json_object_get(top, "score")) >= 0.9999);
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "search", "--db", db, "--key", "k2", "--target", "image",
               "--filter", "category = 'odd'", "-k", "20", "--json");
  res = parse_json(out);
  hits = json_object_get(res, "results");
  assert_int_equal(json_array_size(hits), FAMILY_ITEMS / 2);
  for (size_t i = 0; i < json_array_size(hits); i++) {
    const char *key =
        json_string_value(json_object_get(json_array_get(hits, i), "key"));
    assert_true(atoi(key + 1) % 2 == 1);
  }
  json_decref(res);
  free(out);
  /* text queries in English, Chinese and Japanese: every hit's score is
   * the reference's vector of the query text against the stored image
   * vector (the query went through the family's tokenizer and text tower
   * exactly as transformers' did) */
  const char *langs[3] = {"English", "Chinese", "Japanese"};
  for (int l = 0; l < 3; l++) {
    json_t *texts = json_object_get(fc->ref, "texts"), *q = NULL;
    for (size_t t = 0; t < json_array_size(texts) && !q; t++) {
      const char *s = json_string_value(json_object_get(json_array_get(texts, t), "text"));
      int ascii = 1, kana = 0, han = 0;
      for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        ascii &= *p < 0x80;
        /* UTF-8 of U+3040..U+30FF: E3 81 80 .. E3 83 BF */
        kana |= p[0] == 0xE3 && p[1] >= 0x81 && p[1] <= 0x83;
        /* U+4E00..U+9FFF: E4 B8 80 .. E9 BF BF */
        han |= p[0] >= 0xE4 && p[0] <= 0xE9;
      }
      if ((l == 0 && ascii && strlen(s) > 8) || (l == 1 && han && !kana) ||
          (l == 2 && kana))
        q = json_array_get(texts, t);
    }
    assert_non_null(q);
    const char *qtext = json_string_value(json_object_get(q, "text"));
    out = RUN_OK(dir, "search", "--db", db, "--text", qtext, "--target",
                 "image", "-k", "20", "--json");
    res = parse_json(out);
    hits = json_object_get(res, "results");
    assert_int_equal(json_array_size(hits), FAMILY_ITEMS);
    double worst = 0;
    for (size_t i = 0; i < json_array_size(hits); i++) {
      json_t *h = json_array_get(hits, i);
      const char *key = json_string_value(json_object_get(h, "key"));
      double score = json_number_value(json_object_get(h, "score"));
      double dot = dot_json(
          json_object_get(q, "normalized"),
          json_object_get(json_object_get(map, key), "image_vector"));
      worst = fabs(score - dot) > worst ? fabs(score - dot) : worst;
    }
    print_message("%s: %s text query \"%s\": %zu hits, scores within "
                  "%.2e of the reference's\n", fc->family, langs[l], qtext,
                  json_array_size(hits), worst);
    assert_true(worst <= 1e-4);
    json_decref(res);
    free(out);
  }

  /* eval: ranks from the exported vectors, the ground-truth probability
   * from the reference's own logits */
  out = RUN_OK(dir, "eval", "--db", db, "-k", "1,3", "--json");
  res = parse_json(out);
  const int ks[2] = {1, 3};
  const char *dirs[2] = {"t2i", "i2t"};
  double gt_probs[2];
  for (int d = 0; d < 2; d++) {
    json_t *jd = json_object_get(res, dirs[d]);
    double recall[2], mean_rank;
    long nq;
    oracle_eval(map, d == 0 ? "text_vector" : "image_vector",
                d == 0 ? "image_vector" : "text_vector", ks, 2, recall,
                &mean_rank, &nq);
    assert_int_equal(json_int(jd, "queries"), FAMILY_ITEMS);
    for (int i = 0; i < 2; i++) {
      char name[8];
      snprintf(name, sizeof name, "%d", ks[i]);
      double got = json_number_value(
          json_object_get(json_object_get(jd, "recall"), name));
      if (fabs(got - recall[i]) > 1e-8)
        fail_msg("%s R@%d: eval %.6f, oracle %.6f", dirs[d], ks[i], got,
                 recall[i]);
    }
    double want_prob = 0;
    for (int i = 0; i < FAMILY_ITEMS; i++)
      want_prob += ref_probability(fc, i, i, d == 0);
    want_prob /= FAMILY_ITEMS;
    gt_probs[d] = json_number_value(json_object_get(jd, "gt_probability"));
    print_message("%s %s ground-truth probability: eval %.7f, reference "
                  "%.7f\n", fc->family, dirs[d], gt_probs[d], want_prob);
    if (fabs(gt_probs[d] - want_prob) > 1e-4)
      fail_msg("%s %s ground-truth probability: eval %.7f, reference %.7f",
               fc->family, dirs[d], gt_probs[d], want_prob);
  }
  json_decref(res);
  free(out);

  /* served: INFO names the family; SEARCH by key, vector and image bytes;
   * the hits' logits and probabilities are the reference's */
  vlm_test_server srv;
  start_serve(dir, db, &srv);
  int port = srv.port;
  redisContext *c = redisConnect("127.0.0.1", port);
  assert_non_null(c);
  assert_int_equal(c->err, 0);
  redisReply *r = redisCommand(c, "INFO model");
  snprintf(want, sizeof want, "\r\nfamily:%s\r\n", fc->family);
  if (!strstr(r->str, want))
    fail_msg("INFO model lacks family:%s:\n%s", fc->family, r->str);
  freeReplyObject(r);
  r = redisCommand(c, "INFO db");
  snprintf(want, sizeof want, "\r\nmodel_family:%s\r\n", fc->family);
  assert_non_null(strstr(r->str, want));
  freeReplyObject(r);
  r = redisCommand(c, "SEARCH KEY k3 TARGET TEXT K 20 RETURN 2 logit "
                      "probability");
  if (r->type != REDIS_REPLY_ARRAY)
    fail_msg("SEARCH KEY: %s", r->str ? r->str : "?");
  assert_int_equal(r->elements, FAMILY_ITEMS);
  double worst_logit = 0, worst_prob = 0;
  for (size_t h = 0; h < r->elements; h++) {
    redisReply *e = r->element[h];
    assert_int_equal(e->elements, 6);
    int t = atoi(e->element[0]->str + 1);
    double logit = strtod(e->element[3]->str, NULL);
    double prob = strtod(e->element[5]->str, NULL);
    double dl = fabs(logit - ref_logit(fc, 3, t));
    double dp = fabs(prob - ref_probability(fc, 3, t, 0));
    worst_logit = dl > worst_logit ? dl : worst_logit;
    worst_prob = dp > worst_prob ? dp : worst_prob;
  }
  print_message("%s SEARCH RETURN logit probability against the reference: "
                "max differences %.2e, %.2e\n", fc->family, worst_logit,
                worst_prob);
  assert_true(worst_logit <= 1e-3 && worst_prob <= 1e-4);
  freeReplyObject(r);
  float vec[1024];
  json_t *nv = json_object_get(ref_image(fc, 4), "normalized");
  assert_true(json_array_size(nv) <= 1024);
  for (size_t d = 0; d < json_array_size(nv); d++)
    vec[d] = (float)json_number_value(json_array_get(nv, d));
  r = redisCommand(c, "SEARCH VECTOR %b TARGET IMAGE K 1", vec,
                   json_array_size(nv) * sizeof(float));
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_string_equal(r->element[0]->element[0]->str, "k4");
  assert_true(strtod(r->element[0]->element[1]->str, NULL) >= 0.9999);
  freeReplyObject(r);
  size_t len;
  snprintf(path, sizeof path, "%s/img/%s", dir, file5);
  char *bytes = slurp_len(path, &len);
  r = redisCommand(c, "SEARCH IMAGE %b TARGET IMAGE K 1", bytes, len);
  free(bytes);
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_string_equal(r->element[0]->element[0]->str, "k5");
  freeReplyObject(r);
  r = redisCommand(c, "SEARCH KEY k3 HYBRID x RETURN 1 logit");
  assert_int_equal(r->type, REDIS_REPLY_ERROR);
  assert_non_null(strstr(r->str, "not a cosine"));
  freeReplyObject(r);
  r = redisCommand(c, "VLM.EVAL EXACTONLY");
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  for (size_t i = 0; i + 1 < r->elements; i += 2) {
    int d = !strcmp(r->element[i]->str, "text_to_image")   ? 0
            : !strcmp(r->element[i]->str, "image_to_text") ? 1
                                                           : -1;
    if (d < 0)
      continue;
    redisReply *m = r->element[i + 1];
    double got = -1;
    for (size_t j = 0; j + 1 < m->elements; j += 2)
      if (!strcmp(m->element[j]->str, "gt_probability"))
        got = strtod(m->element[j + 1]->str, NULL);
    if (fabs(got - gt_probs[d]) > 1e-6)
      fail_msg("VLM.EVAL %s gt_probability %.7f, eval %.7f",
               r->element[i]->str, got, gt_probs[d]);
  }
  freeReplyObject(r);
  redisFree(c);
  stop_serve(&srv);
  json_decref(map);
  json_decref(fc->ref);
}

static void test_e2e_siglip_database(void **state) {
  family_case fc = {"tests/fixtures/siglip-tiny", "siglip", 1, NULL};
  check_family_database(*state, &fc);
}

static void test_e2e_chinese_clip_database(void **state) {
  family_case fc = {"tests/fixtures/chinese-clip-tiny", "chinese_clip", 0,
                    NULL};
  check_family_database(*state, &fc);
}

/* The EXIF orientation is a database setting: `init --exif ignore` on a
 * SigLIP model (whose pipeline applies it) stores exif_rot6.jpg as its
 * stored pixels embed (what `embed --exif ignore` gives), not as the
 * reference's upright picture; every later command follows the record
 * (search by the same file finds it at cosine 1); `--exif apply` on a CLIP
 * model turns it upright (the upright vector of the SigLIP default); info
 * shows the setting; a bad value is a usage error. */
static void test_exif_setting_per_database(void **state) {
  const char *dir = *state;
  const char *model = "tests/fixtures/siglip-tiny";
  char img[PATH_MAX], catalog[PATH_MAX], db[PATH_MAX], db2[PATH_MAX];
  snprintf(img, sizeof img, "%s/exif_rot6.jpg", dir);
  copy_file("tests/fixtures/siglip-tiny/exif_rot6.jpg", img);
  db_path(catalog, sizeof catalog, dir, "exif.jsonl");
  FILE *f = fopen(catalog, "w");
  assert_non_null(f);
  fprintf(f, "{\"key\": \"rot\", \"image\": \"exif_rot6.jpg\"}\n");
  fclose(f);
  /* the two ways to embed the file, from the command line */
  char *out = RUN_OK(dir, "embed", "--model", model, "--image", img,
                     "--exif", "ignore");
  json_t *stored_px = parse_json(out);
  free(out);
  out = RUN_OK(dir, "embed", "--model", model, "--image", img);
  json_t *upright = parse_json(out);
  free(out);
  double diff, c = json_cosine(json_object_get(stored_px, "embedding"),
                               json_object_get(upright, "embedding"), &diff);
  print_message("exif_rot6.jpg: stored pixels against upright: cosine "
                "%.4f\n", c);
  assert_true(c < 0.99);

  db_path(db, sizeof db, dir, "ignore.vlmdb");
  free(RUN_OK(dir, "init", "--db", db, "--model", model, "--exif", "ignore"));
  free(RUN_OK(dir, "ingest", "--db", db, catalog));
  out = RUN_OK(dir, "info", "--db", db, "--json");
  json_t *info = parse_json(out);
  assert_string_equal(
      json_string_value(json_object_get(info, "image_orientation")), "ignore");
  json_decref(info);
  free(out);
  json_t *map = export_map(dir, db);
  c = json_cosine(json_object_get(json_object_get(map, "rot"), "image_vector"),
                  json_object_get(stored_px, "embedding"), &diff);
  assert_true(c >= 0.99999 && diff <= 1e-4);
  json_decref(map);
  out = RUN_OK(dir, "search", "--db", db, "--image", img, "--target", "image",
               "-k", "1", "--json");
  json_t *res = parse_json(out);
  json_t *top = json_array_get(json_object_get(res, "results"), 0);
  assert_string_equal(json_string_value(json_object_get(top, "key")), "rot");
  assert_true(json_number_value(json_object_get(top, "score")) >= 0.9999);
  json_decref(res);
  free(out);

  /* the model's own setting by default: upright */
  db_path(db2, sizeof db2, dir, "model.vlmdb");
  free(RUN_OK(dir, "init", "--db", db2, "--model", model));
  free(RUN_OK(dir, "ingest", "--db", db2, catalog));
  out = RUN_OK(dir, "info", "--db", db2);
  assert_non_null(strstr(out, "\nEXIF:           as the model says\n"));
  free(out);
  map = export_map(dir, db2);
  c = json_cosine(json_object_get(json_object_get(map, "rot"), "image_vector"),
                  json_object_get(upright, "embedding"), &diff);
  assert_true(c >= 0.99999 && diff <= 1e-4);
  json_decref(map);

  /* a CLIP model ignores EXIF unless the database says apply; the model
   * id then differs, and the database's commands still load it */
  char db3[PATH_MAX];
  db_path(db3, sizeof db3, dir, "clip-apply.vlmdb");
  free(RUN_OK(dir, "init", "--db", db3, "--model", "tests/fixtures/clip-tiny",
              "--exif", "apply"));
  free(RUN_OK(dir, "ingest", "--db", db3, catalog));
  out = RUN_OK(dir, "search", "--db", db3, "--image", img, "--target",
               "image", "-k", "1", "--json");
  res = parse_json(out);
  top = json_array_get(json_object_get(res, "results"), 0);
  assert_string_equal(json_string_value(json_object_get(top, "key")), "rot");
  assert_true(json_number_value(json_object_get(top, "score")) >= 0.9999);
  json_decref(res);
  free(out);
  out = RUN_OK(dir, "embed", "--model", "tests/fixtures/clip-tiny", "--image",
               img, "--exif", "apply");
  json_t *clip_up = parse_json(out);
  free(out);
  map = export_map(dir, db3);
  c = json_cosine(json_object_get(json_object_get(map, "rot"), "image_vector"),
                  json_object_get(clip_up, "embedding"), &diff);
  assert_true(c >= 0.99999 && diff <= 1e-4);
  json_decref(map);
  json_decref(clip_up);

  char *err = NULL;
  char db4[PATH_MAX];
  db_path(db4, sizeof db4, dir, "bad.vlmdb");
  assert_int_equal(RUN(dir, NULL, &err, "init", "--db", db4, "--model", model,
                       "--exif", "sideways"),
                   2 /* usage */);
  assert_non_null(strstr(err, "--exif"));
  free(err);
  json_decref(stored_px);
  json_decref(upright);
}

/* vlmdb verify finds stores that disagree and says which; exit 1. */
static void test_verify_finds_disagreement(void **state) {
  const char *dir = *state;
  char db[PATH_MAX], cat[PATH_MAX], sql[PATH_MAX];
  snprintf(db, sizeof db, "%s/v.vlmdb", dir);
  snprintf(cat, sizeof cat, "%s/v.jsonl", dir);
  snprintf(sql, sizeof sql, "%s/meta.sqlite", db);
  FILE *f = fopen(cat, "w");
  assert_non_null(f);
  for (int i = 0; i < 20; i++)
    fprintf(f, "{\"key\": \"t%02d\", \"text\": \"caption number %d\"}\n", i, i);
  fclose(f);
  free(RUN_OK(dir, "init", "--db", db, "--model", "tests/fixtures/clip-tiny",
              "--index", "Flat"));
  free(RUN_OK(dir, "ingest", "--db", db, "--quiet", cat));
  free(RUN_OK(dir, "verify", "--db", db));
  sqlite3 *s;
  assert_int_equal(
      sqlite3_open_v2(sql, &s, SQLITE_OPEN_READWRITE, vlm__sql_vfs()),
      SQLITE_OK);
  assert_int_equal(sqlite3_exec(s, "DELETE FROM items WHERE key = 't07'",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(s);
  char *out, *err;
  assert_int_equal(RUN(dir, &out, &err, "verify", "--db", db), 1);
  assert_non_null(strstr(err, "vlmdb verify: "));
  free(out);
  free(err);
}

/* ingest onto a disk that fills up: exit 1 with a clear message, the
 * summary counts exactly what is stored, no progress line counts the
 * failed batch, and the database opens read-only on the full disk. */
static void test_ingest_full_disk(void **state) {
  const char *dir = *state;
  char mnt[PATH_MAX], db[PATH_MAX], cat[PATH_MAX];
  snprintf(mnt, sizeof mnt, "%s/mnt", dir);
  assert_int_equal(mkdir(mnt, 0755), 0);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=1536k") != 0)
    skip(); /* not allowed to mount here */
  snprintf(db, sizeof db, "%s/db", mnt);
  snprintf(cat, sizeof cat, "%s/full.jsonl", dir);
  FILE *f = fopen(cat, "w");
  assert_non_null(f);
  char pad[3001];
  memset(pad, 'x', sizeof pad - 1);
  pad[sizeof pad - 1] = 0;
  for (int i = 0; i < 1500; i++)
    fprintf(f, "{\"key\": \"k%04d\", \"text\": \"caption %d\", \"meta\": "
            "{\"pad\": \"%s\"}}\n", i, i, pad);
  fclose(f);
  free(RUN_OK(dir, "init", "--db", db, "--model", "tests/fixtures/clip-tiny",
              "--index", "Flat"));
  char *out, *err;
  int rc = RUN(dir, &out, &err, "ingest", "--db", db, "--json", cat);
  assert_int_equal(rc, 1);
  if (!strstr(err, "full"))
    fail_msg("unclear message:\n%s", err);
  json_t *sum = parse_json(out);
  long ingested = json_int(sum, "ingested");
  assert_true(ingested > 0 && ingested < 1500);
  json_decref(sum);
  /* progress lines ("ingest: N rows ...") never pass what was stored */
  for (const char *p = strstr(err, "ingest: "); p; p = strstr(p + 1, "ingest: ")) {
    long n;
    if (sscanf(p, "ingest: %ld", &n) == 1 && n > ingested)
      fail_msg("a progress line counts %ld rows, %ld stored:\n%s", n,
               ingested, err);
  }
  free(out);
  free(err);
  out = RUN_OK(dir, "info", "--db", db, "--json"); /* still full */
  json_t *info = parse_json(out);
  assert_int_equal(json_int(info, "items"), ingested);
  json_decref(info);
  free(out);
  umount2(mnt, MNT_DETACH);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_jsonl_rows_and_errors, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_jsonl_texts, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_jsonl_weight, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_init_killed_anywhere, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_verify_finds_disagreement,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_ingest_full_disk, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_csv_quoting_and_line_numbers, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_tsv_and_vectors, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_csv_bad_headers, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_nul_bytes_and_duplicate_members,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_directory_catalog, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test(test_base64_rfc4648_vectors),
      cmocka_unit_test_setup_teardown(test_export_line_reads_back, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_kept_image_member_reads_back,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test(test_resolve_path),
      cmocka_unit_test(test_progress_text),
      cmocka_unit_test(test_progress_modes),
      cmocka_unit_test(test_eval_metric_by_hand),
      cmocka_unit_test_setup_teardown(test_eval_pairs_file, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_help_and_usage_errors, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_ingest_search_eval, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_search_options_reindex_upsert,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_export_roundtrip, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_non_regular_image_files, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_csv_tsv_dir_and_exit_status, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_reembed_new_model, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_reembed_missing_image,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_reembed_killed_anywhere,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_kept_images_travel_by_export,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_train_db_loop, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_resume_after_sigkill, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_serve_uses_recorded_model,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_siglip_database, setup_tmpdir,
                                      teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_exif_setting_per_database,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_chinese_clip_database,
                                      setup_tmpdir, teardown_tmpdir),
      cmocka_unit_test_setup_teardown(test_e2e_sigint_stops_cleanly, setup_tmpdir,
                                      teardown_tmpdir),
  };
  /* VLM_TEST_FILTER=test_e2e_reembed* runs the matching tests only */
  if (getenv("VLM_TEST_FILTER"))
    cmocka_set_test_filter(getenv("VLM_TEST_FILTER"));
  if (getenv("VLM_TEST_FILTER")) /* one test while working on it */
    cmocka_set_test_filter(getenv("VLM_TEST_FILTER"));
  return cmocka_run_group_tests_name("cli", tests, NULL, NULL);
}
