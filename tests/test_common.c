/* test_common.c - the error list and its messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>

#include "vlm_error.h"

static void test_every_code_has_a_distinct_message(void **state) {
  (void)state;
  int codes[] = {
#define X(name, code, msg) VLM_E##name,
      VLM_ERRNO_MAP(X)
#undef X
  };
  size_t n = sizeof codes / sizeof codes[0];
  for (size_t i = 0; i < n; i++) {
    assert_true(codes[i] < 0);
    assert_string_not_equal(vlm_strerror(codes[i]), "unknown error");
    for (size_t j = i + 1; j < n; j++) {
      assert_int_not_equal(codes[i], codes[j]);
      assert_string_not_equal(vlm_strerror(codes[i]), vlm_strerror(codes[j]));
    }
  }
  assert_string_equal(vlm_strerror(0), "success");
  assert_string_equal(vlm_strerror(-9999), "unknown error");
  assert_string_equal(vlm_errname(VLM_EIO), "VLM_EIO");
}

static void test_seterr_returns_code_and_keeps_detail(void **state) {
  (void)state;
  int rc = vlm_seterr(VLM_EFORMAT, "%s:%d: bad json", "catalog.jsonl", 17);
  assert_int_equal(rc, VLM_EFORMAT);
  assert_string_equal(vlm_errmsg(), "catalog.jsonl:17: bad json");
  vlm_seterr(VLM_ENOMEM, NULL);
  assert_string_equal(vlm_errmsg(), "out of memory");
  vlm_clearerr();
  assert_string_equal(vlm_errmsg(), "");
}

/* Context added to the message a callee left: the detail is read while
 * the new one is written. */
static void test_seterr_wraps_its_own_detail(void **state) {
  (void)state;
  vlm_seterr(VLM_EINVAL, "index \"%s\": could not parse index string %s",
             "Foo", "Foo");
  vlm_seterr(VLM_EINVAL, "create: %s", vlm_errmsg());
  assert_string_equal(vlm_errmsg(),
                      "create: index \"Foo\": could not parse index string Foo");
  vlm_seterr(VLM_EFORMAT, "key \"%s\"", "v9");
  vlm_seterr(VLM_EFORMAT, "%s: %s: line %d", "catalog.jsonl", vlm_errmsg(), 3);
  assert_string_equal(vlm_errmsg(), "catalog.jsonl: key \"v9\": line 3");
  /* a message that fills the buffer is cut, never overrun */
  char big[2000];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  vlm_seterr(VLM_EIO, "%s", big);
  vlm_seterr(VLM_EIO, "outer: %s", vlm_errmsg());
  assert_int_equal(strncmp(vlm_errmsg(), "outer: xxxx", 11), 0);
  assert_true(strlen(vlm_errmsg()) < 1024);
}

static void *other_thread(void *arg) {
  (void)arg;
  vlm_seterr(VLM_EIO, "other thread");
  return NULL;
}

static void test_detail_is_per_thread(void **state) {
  (void)state;
  vlm_seterr(VLM_EINVAL, "main thread");
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
  pthread_join(t, NULL);
  assert_string_equal(vlm_errmsg(), "main thread");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_code_has_a_distinct_message),
      cmocka_unit_test(test_seterr_returns_code_and_keeps_detail),
      cmocka_unit_test(test_seterr_wraps_its_own_detail),
      cmocka_unit_test(test_detail_is_per_thread),
  };
  return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}
