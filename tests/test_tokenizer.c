/* test_tokenizer.c - CLIP's BPE tokenizer against the reference.
 *
 * Oracles: tests/fixtures/clip-tiny/reference.json (ids from the original
 * CLIP tokenizer) and tests/fixtures/tokenizer/cases.json (ids from the
 * reference algorithm run by tools/clip_tokenizer_ref.py with Python's
 * html and regex modules, for Unicode classes, entities, case mapping,
 * whitespace and truncation cases).  The vocabulary derived from the
 * original gzipped merges list is compared with vocab.json entry by entry.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer.h"
#include "vlm_error.h"

#define FIX "tests/fixtures/"
#define VOCAB FIX "clip-tiny/vocab.json"
#define MERGES FIX "clip-tiny/merges.txt"
#define BPE_GZ FIX "bpe_simple_vocab_16e6.txt.gz"

static vlm__tokenizer *tok_json, *tok_gz;

static int setup(void **state) {
  (void)state;
  if (vlm__tokenizer_load(VOCAB, MERGES, &tok_json) != 0) {
    fprintf(stderr, "load vocab.json: %s\n", vlm_errmsg());
    return -1;
  }
  if (vlm__tokenizer_load_bpe_gz(BPE_GZ, &tok_gz) != 0) {
    fprintf(stderr, "load bpe gz: %s\n", vlm_errmsg());
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  vlm__tokenizer_free(tok_json);
  vlm__tokenizer_free(tok_gz);
  return 0;
}

/* Compare our ids for text with the expected JSON array; print both. */
static int ids_match(const vlm__tokenizer *tok, const char *text,
                     const json_t *expect, int ctx) {
  int32_t ids[512];
  int n = -1;
  int rc = vlm__tokenize(tok, text, ctx, ids, 512, &n);
  int ok = rc == 0 && (size_t)n == json_array_size(expect);
  for (int i = 0; ok && i < n; i++)
    ok = ids[i] == json_integer_value(json_array_get(expect, (size_t)i));
  if (!ok) {
    fprintf(stderr, "text %s\n  rc %d (%s)\n  got     ", text, rc, rc ? vlm_errmsg() : "");
    for (int i = 0; i < n; i++) fprintf(stderr, "%d ", ids[i]);
    fprintf(stderr, "\n  expect  ");
    for (size_t i = 0; i < json_array_size(expect); i++)
      fprintf(stderr, "%lld ", (long long)json_integer_value(json_array_get(expect, i)));
    fprintf(stderr, "\n");
  }
  return ok;
}

static json_t *load_json(const char *path) {
  json_error_t err;
  json_t *j = json_load_file(path, 0, &err);
  if (!j) fprintf(stderr, "%s:%d: %s\n", path, err.line, err.text);
  return j;
}

static void test_reference_texts(void **state) {
  (void)state;
  json_t *ref = load_json(FIX "clip-tiny/reference.json");
  assert_non_null(ref);
  json_t *texts = json_object_get(ref, "texts");
  assert_true(json_array_size(texts) >= 20);
  int bad = 0;
  size_t i;
  json_t *t;
  json_array_foreach(texts, i, t) {
    const char *text = json_string_value(json_object_get(t, "text"));
    json_t *ids = json_object_get(t, "ids");
    bad += !ids_match(tok_json, text, ids, 77);
    bad += !ids_match(tok_gz, text, ids, 77);
  }
  json_decref(ref);
  assert_int_equal(bad, 0);
}

static void test_reference_algorithm_cases(void **state) {
  (void)state;
  json_t *cases = load_json(FIX "tokenizer/cases.json");
  assert_non_null(cases);
  assert_true(json_array_size(cases) >= 20);
  int bad = 0;
  size_t i;
  json_t *c;
  json_array_foreach(cases, i, c) {
    const char *text = json_string_value(json_object_get(c, "text"));
    bad += !ids_match(tok_json, text, json_object_get(c, "ids"), 77);
  }
  json_decref(cases);
  assert_int_equal(bad, 0);
}

/* The vocabulary the reference derives from the gz list is vocab.json. */
static void test_gz_vocabulary_equals_vocab_json(void **state) {
  (void)state;
  json_t *vocab = load_json(VOCAB);
  assert_non_null(vocab);
  assert_int_equal(json_object_size(vocab), 49408);
  const char *key;
  json_t *val;
  int bad = 0;
  json_object_foreach(vocab, key, val) {
    int32_t want = (int32_t)json_integer_value(val);
    int32_t a = vlm__tokenizer_lookup(tok_gz, key), b = vlm__tokenizer_lookup(tok_json, key);
    if (a != want || b != want) {
      if (bad++ < 5) fprintf(stderr, "\"%s\": vocab.json %d, gz %d, json %d\n", key, want, a, b);
    }
  }
  json_decref(vocab);
  assert_int_equal(bad, 0);
  assert_int_equal(vlm__tokenizer_vocab_size(tok_gz), 49408);
  assert_int_equal(vlm__tokenizer_vocab_size(tok_json), 49408);
  assert_int_equal(vlm__tokenizer_bos(tok_gz), 49406);
  assert_int_equal(vlm__tokenizer_eos(tok_gz), 49407);
  assert_int_equal(vlm__tokenizer_bos(tok_json), 49406);
  assert_int_equal(vlm__tokenizer_eos(tok_json), 49407);
  assert_int_equal(vlm__tokenizer_lookup(tok_gz, "no-such-piece</w>"), -1);
}

/* Each digit is its own pre-token: "2024" gives the ids of 2, 0, 2, 4
 * (each with </w>), looked up independently in the vocabulary. */
static void test_digits_are_separate(void **state) {
  (void)state;
  int32_t ids[16];
  int n;
  assert_int_equal(vlm__tokenize(tok_json, "2024", 77, ids, 16, &n), 0);
  assert_int_equal(n, 6);
  const char *want[] = {"2</w>", "0</w>", "2</w>", "4</w>"};
  for (int i = 0; i < 4; i++) assert_int_equal(ids[1 + i], vlm__tokenizer_lookup(tok_json, want[i]));
  /* Arabic-Indic digits are \p{N} too: one pre-token each */
  assert_int_equal(vlm__tokenize(tok_json, "\xd9\xa3\xd9\xa4", 77, ids, 16, &n), 0);
  int32_t one[16];
  int n1;
  assert_int_equal(vlm__tokenize(tok_json, "\xd9\xa3", 77, one, 16, &n1), 0);
  assert_true(n > n1);
  assert_int_equal(ids[1], one[1]);
}

static void test_empty_and_blank(void **state) {
  (void)state;
  int32_t ids[8];
  int n;
  const char *blank[] = {"", " ", "\t\n  \r", "\xc2\xa0\xe3\x80\x80", "&#32;"};
  for (size_t i = 0; i < sizeof blank / sizeof *blank; i++) {
    assert_int_equal(vlm__tokenize(tok_json, blank[i], 77, ids, 8, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 49406);
    assert_int_equal(ids[1], 49407);
  }
}

/* Truncation keeps bos first and eos last; the kept ids are a prefix of
 * the untruncated ones. */
static void test_truncation(void **state) {
  (void)state;
  char text[4096] = "";
  for (int i = 0; i < 200; i++) strcat(text, i % 3 ? "cat " : "photograph ");
  int32_t full[512], ids[512];
  int nfull, n;
  assert_int_equal(vlm__tokenize(tok_json, text, 500, full, 512, &nfull), 0);
  assert_int_equal(nfull, 202);
  assert_int_equal(full[nfull - 1], 49407);
  int limits[][2] = {{77, 512}, {77, 10}, {5, 512}, {2, 512}, {1, 512}, {77, 1}};
  for (size_t k = 0; k < sizeof limits / sizeof *limits; k++) {
    int ctx = limits[k][0], max_ids = limits[k][1];
    int lim = ctx < max_ids ? ctx : max_ids;
    memset(ids, 0x7f, sizeof ids);
    assert_int_equal(vlm__tokenize(tok_json, text, ctx, ids, max_ids, &n), 0);
    assert_int_equal(n, lim);
    assert_int_equal(ids[n - 1], 49407);
    if (lim >= 2) {
      assert_int_equal(ids[0], 49406);
      for (int i = 1; i < n - 1; i++) assert_int_equal(ids[i], full[i]);
    }
    assert_int_equal(ids[n], 0x7f7f7f7f); /* nothing written past the limit */
  }
  /* exactly at the limit: nothing dropped */
  assert_int_equal(vlm__tokenize(tok_json, text, 202, ids, 512, &n), 0);
  assert_int_equal(n, 202);
  assert_memory_equal(ids, full, 202 * sizeof *ids);
}

/* Invalid UTF-8 is VLM_EFORMAT naming the byte offset. */
static void test_invalid_utf8(void **state) {
  (void)state;
  struct {
    const char *text;
    int offset;
  } bad[] = {
      {"ab\xc0\x80", 2},             /* overlong NUL */
      {"\xc1\xbf", 0},               /* overlong */
      {"x\xe0\x80\xaf", 1},          /* overlong 3-byte */
      {"xy\xf0\x80\x80\xaf", 2},     /* overlong 4-byte */
      {"\xed\xa0\x80", 0},           /* surrogate U+D800 */
      {"ok \xed\xbf\xbf", 3},        /* surrogate U+DFFF */
      {"\xf4\x90\x80\x80", 0},       /* past U+10FFFF */
      {"abc\xe2\x82", 3},            /* truncated at the end */
      {"abc\xe2\x82z", 3},           /* truncated in the middle */
      {"\x80", 0},                   /* lone continuation */
      {"caf\xc3\xa9\xbf", 5},        /* stray continuation after a valid one */
      {"\xf5\x80\x80\x80", 0},       /* invalid lead */
      {"\xfe", 0}, {"\xff", 0},
      {"<|endoftext|>\xc3", 13},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int32_t ids[8];
    int n = 99;
    int rc = vlm__tokenize(tok_json, bad[i].text, 77, ids, 8, &n);
    char want[64];
    snprintf(want, sizeof want, "byte %d ", bad[i].offset);
    if (rc != VLM_EFORMAT || !strstr(vlm_errmsg(), want))
      fprintf(stderr, "case %zu: rc %d msg \"%s\", want \"%s\"\n", i, rc, vlm_errmsg(), want);
    assert_int_equal(rc, VLM_EFORMAT);
    assert_non_null(strstr(vlm_errmsg(), want));
    assert_int_equal(n, 0);
  }
  /* valid edge cases are accepted */
  const char *good[] = {"\xf4\x8f\xbf\xbf", "\xef\xbf\xbf", "\xee\x80\x80", "\xc2\x80"};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
    int32_t ids[16];
    int n;
    assert_int_equal(vlm__tokenize(tok_json, good[i], 77, ids, 16, &n), 0);
  }
}

static void test_bad_arguments_and_files(void **state) {
  (void)state;
  int32_t ids[4];
  int n;
  assert_int_equal(vlm__tokenize(tok_json, NULL, 77, ids, 4, &n), VLM_EINVAL);
  assert_int_equal(vlm__tokenize(tok_json, "a", 0, ids, 4, &n), VLM_EINVAL);
  assert_int_equal(vlm__tokenize(tok_json, "a", 77, ids, 0, &n), VLM_EINVAL);
  vlm__tokenizer *t = (vlm__tokenizer *)1;
  assert_int_equal(vlm__tokenizer_load("/nonexistent/vocab.json", MERGES, &t), VLM_EFORMAT);
  assert_null(t);
  assert_int_equal(vlm__tokenizer_load(VOCAB, "/nonexistent/merges.txt", &t), VLM_ENOTFOUND);
  assert_non_null(strstr(vlm_errmsg(), "/nonexistent/merges.txt"));
  assert_int_equal(vlm__tokenizer_load_bpe_gz("/nonexistent/bpe.txt.gz", &t), VLM_ENOTFOUND);
  /* the merges file given where vocab.json is expected: not JSON */
  assert_int_equal(vlm__tokenizer_load(MERGES, MERGES, &t), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), MERGES));
  /* a vocabulary without the merged pieces: names the merge line */
  char dir[] = "/tmp/vlm_tok_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char vpath[64], mpath[64];
  snprintf(vpath, sizeof vpath, "%s/vocab.json", dir);
  snprintf(mpath, sizeof mpath, "%s/merges.txt", dir);
  FILE *f = fopen(vpath, "w");
  assert_non_null(f);
  fputs("{\"a\": 0}", f);
  fclose(f);
  f = fopen(mpath, "w");
  assert_non_null(f);
  fputs("#version: 0.2\na b\n", f);
  fclose(f);
  assert_int_equal(vlm__tokenizer_load(vpath, mpath, &t), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), "vocab"));
  f = fopen(vpath, "w");
  fputs("{\"a\": \"zero\"}", f);
  fclose(f);
  assert_int_equal(vlm__tokenizer_load(vpath, mpath, &t), VLM_EFORMAT);
  assert_non_null(strstr(vlm_errmsg(), "\"a\""));
  remove(vpath);
  remove(mpath);
  rmdir(dir);
  vlm__tokenizer_free(NULL);
}

/* Many threads share one tokenizer; each must get the single-threaded ids. */
typedef struct {
  json_t *texts;
  int32_t (*expect)[77];
  int *expect_n;
  int bad;
} thread_arg;

static void *tokenize_thread(void *p) {
  thread_arg *a = p;
  for (int round = 0; round < 20; round++) {
    size_t i;
    json_t *t;
    json_array_foreach(a->texts, i, t) {
      int32_t ids[77];
      int n;
      const char *text = json_string_value(json_object_get(t, "text"));
      if (vlm__tokenize(tok_json, text, 77, ids, 77, &n) != 0 || n != a->expect_n[i] ||
          memcmp(ids, a->expect[i], (size_t)n * sizeof *ids) != 0)
        a->bad++;
    }
  }
  return NULL;
}

static void test_concurrent_tokenize(void **state) {
  (void)state;
  json_t *cases = load_json(FIX "tokenizer/cases.json");
  assert_non_null(cases);
  size_t nt = json_array_size(cases);
  int32_t(*expect)[77] = calloc(nt, sizeof *expect);
  int *expect_n = calloc(nt, sizeof *expect_n);
  for (size_t i = 0; i < nt; i++) {
    const char *text = json_string_value(json_object_get(json_array_get(cases, i), "text"));
    assert_int_equal(vlm__tokenize(tok_json, text, 77, expect[i], 77, &expect_n[i]), 0);
  }
  enum { NTHREADS = 8 };
  pthread_t th[NTHREADS];
  thread_arg args[NTHREADS];
  for (int k = 0; k < NTHREADS; k++) {
    args[k] = (thread_arg){cases, expect, expect_n, 0};
    assert_int_equal(pthread_create(&th[k], NULL, tokenize_thread, &args[k]), 0);
  }
  int bad = 0;
  for (int k = 0; k < NTHREADS; k++) {
    pthread_join(th[k], NULL);
    bad += args[k].bad;
  }
  free(expect);
  free(expect_n);
  json_decref(cases);
  assert_int_equal(bad, 0);
}

/* Inputs the fuzzer once crashed or hung on: tokenizing them must return. */
static void test_fuzz_regressions(void **state) {
  (void)state;
  DIR *d = opendir(FIX "crashes");
  if (!d) return; /* none recorded */
  struct dirent *e;
  int seen = 0;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, "tokenizer-", 10) != 0) continue;
    char path[512];
    snprintf(path, sizeof path, FIX "crashes/%s", e->d_name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    buf[n] = 0;
    int32_t ids[77];
    int nid;
    int rc = vlm__tokenize(tok_json, buf, 77, ids, 77, &nid);
    assert_true(rc == 0 || rc == VLM_EFORMAT);
    if (rc == 0) {
      assert_int_equal(ids[0], 49406);
      assert_int_equal(ids[nid - 1], 49407);
    }
    free(buf);
    seen++;
  }
  closedir(d);
  print_message("replayed %d tokenizer regression inputs\n", seen);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_texts),
      cmocka_unit_test(test_reference_algorithm_cases),
      cmocka_unit_test(test_gz_vocabulary_equals_vocab_json),
      cmocka_unit_test(test_digits_are_separate),
      cmocka_unit_test(test_empty_and_blank),
      cmocka_unit_test(test_truncation),
      cmocka_unit_test(test_invalid_utf8),
      cmocka_unit_test(test_bad_arguments_and_files),
      cmocka_unit_test(test_concurrent_tokenize),
      cmocka_unit_test(test_fuzz_regressions),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
