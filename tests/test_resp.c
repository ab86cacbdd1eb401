/* test_resp.c - the RESP parser and writer of the server (net/resp.c), as
 * units: requests split at every byte and at random points parse as when
 * fed whole and as the argument lists the test encoded; limits and
 * garbage; the writer's framing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../net/resp.h"
#include "util/util.h"

#define encode_cmd vlm_test_resp_encode

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng(void) {
  return (uint32_t)(vlm_test_splitmix64(&rng_state) >> 32);
}


typedef struct {
  int argc;
  const char *argv[8];
  size_t lens[8];  /* 0 = strlen, unless the arg is "" */
} cmd_spec;

static vlm__resp_limits parser_limits(void) {
  vlm__resp_limits lim = {1 << 20, 1000, 4096, 4 << 20};
  return lim;
}

/* Parse data fed in chunks ending at the given cut points (plus the end),
 * the way a socket delivers it, into a list of argument lists. */
typedef struct {
  int n;
  int argc[64];
  char *args[64][16];
  size_t lens[64][16];
  int err;
  char errmsg[128];
} parsed;

static void parsed_free(parsed *p) {
  for (int i = 0; i < p->n; i++)
    for (int j = 0; j < p->argc[i]; j++)
      free(p->args[i][j]);
}

static void parse_chunks(const char *data, size_t len, const size_t *cuts,
                         int ncuts, const vlm__resp_limits *lim, parsed *out) {
  memset(out, 0, sizeof *out);
  vlm__resp_parser p;
  vlm__resp_parser_init(&p, lim);
  char *buf = malloc(len + 1);
  size_t have = 0, start = 0;
  for (int c = 0; c <= ncuts; c++) {
    size_t upto = c < ncuts ? cuts[c] : len;
    memcpy(buf + have, data + have, upto - have);
    have = upto;
    for (;;) {
      size_t used;
      int rc = vlm__resp_parse(&p, buf + start, have - start, &used);
      if (rc == VLM__RESP_MORE)
        break;
      if (rc < 0) {
        out->err = rc;
        snprintf(out->errmsg, sizeof out->errmsg, "%s", p.err);
        goto done;
      }
      start += used;
      if (p.argc == 0)
        continue;
      int k = out->n++;
      out->argc[k] = p.argc;
      for (int i = 0; i < p.argc; i++) {
        out->args[k][i] = malloc(p.argv[i].len + 1);
        memcpy(out->args[k][i], p.argv[i].ptr, p.argv[i].len);
        out->args[k][i][p.argv[i].len] = '\0';
        out->lens[k][i] = p.argv[i].len;
      }
    }
  }
done:
  free(buf);
  vlm__resp_parser_free(&p);
}

static void assert_parsed_equal(const parsed *a, const parsed *b,
                                const char *what) {
  if (a->n != b->n || a->err != b->err)
    fail_msg("%s: %d requests (err %d) vs %d (err %d)", what, a->n, a->err,
             b->n, b->err);
  for (int i = 0; i < a->n; i++) {
    assert_int_equal(a->argc[i], b->argc[i]);
    for (int j = 0; j < a->argc[i]; j++) {
      assert_int_equal(a->lens[i][j], b->lens[i][j]);
      assert_memory_equal(a->args[i][j], b->args[i][j], a->lens[i][j]);
    }
  }
}

static void test_resp_split_at_every_byte(void **state) {
  (void)state;
  /* Requests with the argument lists they must parse to. */
  static const char *const specs[][6] = {
      {"PING", NULL},
      {"ECHO", "hello world", NULL},
      {"SEARCH", "TEXT", "a red car", "K", "5", NULL},
      {"ECHO", "", NULL},
      {"SET", "k\r\nv", "binary\r\n\r\n", NULL},
  };
  char data[4096];
  size_t len = 0;
  int nspecs = (int)(sizeof specs / sizeof specs[0]);
  for (int s = 0; s < nspecs; s++) {
    int argc = 0;
    while (specs[s][argc])
      argc++;
    len += encode_cmd(data + len, argc, (const char **)specs[s], NULL);
  }
  /* Inline forms, with redis-cli quoting. */
  const char *inl = "PING\r\n  ECHO   \"quoted \\\"x\\\" \\x41\\n\" 'it s'\n"
                    "\r\nECHO 'a\\'b'\r\n*0\r\n*-1\r\n";
  memcpy(data + len, inl, strlen(inl));
  len += strlen(inl);

  vlm__resp_limits lim = parser_limits();
  parsed whole, split;
  parse_chunks(data, len, NULL, 0, &lim, &whole);
  /* The oracle: what the requests were made of. */
  assert_int_equal(whole.err, 0);
  assert_int_equal(whole.n, nspecs + 3);
  for (int s = 0; s < nspecs; s++)
    for (int i = 0; specs[s][i]; i++) {
      assert_int_equal(whole.lens[s][i], strlen(specs[s][i]));
      assert_memory_equal(whole.args[s][i], specs[s][i], whole.lens[s][i]);
    }
  assert_int_equal(whole.argc[nspecs], 1);
  assert_int_equal(whole.argc[nspecs + 1], 3);
  assert_string_equal(whole.args[nspecs + 1][1], "quoted \"x\" A\n");
  assert_string_equal(whole.args[nspecs + 1][2], "it s");
  assert_int_equal(whole.argc[nspecs + 2], 2);
  assert_string_equal(whole.args[nspecs + 2][0], "ECHO");
  assert_string_equal(whole.args[nspecs + 2][1], "a'b");

  /* One cut at every position, then every byte on its own. */
  for (size_t cut = 1; cut < len; cut++) {
    parse_chunks(data, len, &cut, 1, &lim, &split);
    char what[64];
    snprintf(what, sizeof what, "cut at %zu", cut);
    assert_parsed_equal(&whole, &split, what);
    parsed_free(&split);
  }
  size_t *cuts = malloc(len * sizeof *cuts);
  for (size_t i = 0; i < len; i++)
    cuts[i] = i + 1;
  parse_chunks(data, len, cuts, (int)len - 1, &lim, &split);
  assert_parsed_equal(&whole, &split, "byte by byte");
  parsed_free(&split);
  free(cuts);
  parsed_free(&whole);
}

/* Random binary argument lists encoded as multibulk come back exactly,
 * whole and split at random points. */
static void test_resp_random_roundtrip(void **state) {
  (void)state;
  vlm__resp_limits lim = parser_limits();
  for (int round = 0; round < 200; round++) {
    char data[8192];
    size_t len = 0;
    int nreq = 1 + (int)(rng() % 5);
    parsed expect = {0};
    for (int r = 0; r < nreq; r++) {
      int argc = 1 + (int)(rng() % 6);
      const char *argv[8];
      size_t lens[8];
      char bytes[8][64];
      for (int i = 0; i < argc; i++) {
        lens[i] = rng() % 40;
        for (size_t j = 0; j < lens[i]; j++)
          bytes[i][j] = (char)rng();
        argv[i] = bytes[i];
        expect.args[r][i] = malloc(lens[i] + 1);
        memcpy(expect.args[r][i], bytes[i], lens[i]);
        expect.lens[r][i] = lens[i];
      }
      expect.argc[r] = argc;
      len += encode_cmd(data + len, argc, argv, lens);
    }
    expect.n = nreq;
    size_t cuts[4];
    int ncuts = (int)(rng() % 4);
    size_t last = 0;
    for (int c = 0; c < ncuts; c++) {
      cuts[c] = last + rng() % (len - last);
      last = cuts[c];
    }
    parsed got;
    parse_chunks(data, len, cuts, ncuts, &lim, &got);
    assert_parsed_equal(&expect, &got, "random roundtrip");
    parsed_free(&got);
    parsed_free(&expect);
  }
}

/* Each hostile input is refused as soon as its header is read, before any
 * of the announced bytes would have to be buffered. */
static void test_resp_limits_and_garbage(void **state) {
  (void)state;
  vlm__resp_limits lim = parser_limits();
  static const struct {
    const char *in;
    int rc;
    const char *msg;
  } cases[] = {
      {"*99999999999\r\n", VLM_ETOOBIG, "invalid multibulk length"},
      {"*1001\r\n", VLM_ETOOBIG, "invalid multibulk length"},
      {"*1x\r\n", VLM_EFORMAT, "invalid multibulk length"},
      {"*\r\n", VLM_EFORMAT, "invalid multibulk length"},
      {"*1234567890123456789012345678901234567890\r\n", VLM_EFORMAT,
       "too big mbulk"},
      {"*12345678901234567890\r\n", VLM_EFORMAT, "invalid multibulk length"},
      {"*1\r\n$-1\r\n", VLM_EFORMAT, "invalid bulk length"},
      {"*1\r\n$-9999999999\r\n", VLM_EFORMAT, "invalid bulk length"},
      {"*1\r\n$1048577\r\n", VLM_ETOOBIG, "invalid bulk length"},
      {"*1\r\n$99999999999999999\r\n", VLM_ETOOBIG, "invalid bulk length"},
      {"*1\r\n$999999999999999999999\r\n", VLM_EFORMAT, "invalid bulk length"},
      {"*2\r\n$3\r\nabc\r\n:5\r\n", VLM_EFORMAT, "expected '$', got ':'"},
      {"*1\r\n$3\r\nabcXY", VLM_EFORMAT, "not terminated by CRLF"},
      {"*1\r\n\x01", VLM_EFORMAT, "expected '$', got byte 0x01"},
      {"*1\n...............................", VLM_EFORMAT, "too big mbulk"},
      {"ECHO \"abc\n", VLM_EFORMAT, "unbalanced quotes"},
      {"ECHO \"abc\"x\n", VLM_EFORMAT, "unbalanced quotes"},
      {"ECHO 'abc\n", VLM_EFORMAT, "unbalanced quotes"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    parsed got;
    parse_chunks(cases[i].in, strlen(cases[i].in), NULL, 0, &lim, &got);
    if (got.err != cases[i].rc || !strstr(got.errmsg, cases[i].msg))
      fail_msg("case %zu '%s': got %d '%s', want %d '%s'", i, cases[i].in,
               got.err, got.errmsg, cases[i].rc, cases[i].msg);
    parsed_free(&got);
  }
  /* A bulk over the whole-request limit, with many args each under the
   * bulk limit. */
  vlm__resp_limits small = {100, 1000, 4096, 250};
  char big[1024];
  size_t n = (size_t)sprintf(big, "*4\r\n");
  for (int i = 0; i < 3; i++)
    n += (size_t)sprintf(big + n, "$90\r\n%090d\r\n", i);
  parsed got;
  parse_chunks(big, n, NULL, 0, &small, &got);
  assert_int_equal(got.err, VLM_ETOOBIG);
  assert_non_null(strstr(got.errmsg, "request larger than 250"));
  parsed_free(&got);
  /* An inline line longer than the limit without a newline: refused once
   * it passes the limit, whatever comes next. */
  char *line = malloc(5000);
  memset(line, 'a', 5000);
  parse_chunks(line, 5000, NULL, 0, &lim, &got);
  assert_int_equal(got.err, VLM_ETOOBIG);
  parsed_free(&got);
  free(line);
  /* Random garbage never crashes and never yields more than it holds. */
  for (int round = 0; round < 2000; round++) {
    char junk[256];
    size_t jl = rng() % sizeof junk;
    for (size_t j = 0; j < jl; j++)
      junk[j] = (char)(rng() % 4 == 0 ? "*$\r\n0123456789-"[rng() % 16]
                                      : (char)rng());
    parse_chunks(junk, jl, NULL, 0, &lim, &got);
    for (int r = 0; r < got.n; r++)
      for (int a = 0; a < got.argc[r]; a++)
        assert_true(got.lens[r][a] <= jl);
    parsed_free(&got);
  }
}

static void test_resp_writer(void **state) {
  (void)state;
  for (int resp3 = 0; resp3 <= 1; resp3++) {
    vlm__buf b;
    vlm__buf_init(&b, resp3);
    vlm__reply_status(&b, "OK");
    vlm__reply_error(&b, "ERR", "bad\r\nthing %d", 7);
    vlm__reply_int(&b, -42);
    vlm__reply_bulk(&b, "a\0b", 3);
    vlm__reply_null(&b);
    vlm__reply_map(&b, 1);
    vlm__reply_cstr(&b, "k");
    vlm__reply_double(&b, 0.5);
    vlm__reply_float(&b, 0.1f);
    vlm__reply_bool(&b, 1);
    vlm__reply_array(&b, 0);
    static const char want3[] =
        "+OK\r\n-ERR bad  thing 7\r\n:-42\r\n$3\r\na\0b\r\n_\r\n"
        "%1\r\n$1\r\nk\r\n,0.5\r\n,0.1\r\n#t\r\n*0\r\n";
    static const char want2[] =
        "+OK\r\n-ERR bad  thing 7\r\n:-42\r\n$3\r\na\0b\r\n$-1\r\n"
        "*2\r\n$1\r\nk\r\n$3\r\n0.5\r\n$3\r\n0.1\r\n:1\r\n*0\r\n";
    const char *want = resp3 ? want3 : want2;
    size_t wlen = resp3 ? sizeof want3 - 1 : sizeof want2 - 1;
    if (b.len != wlen || memcmp(b.data, want, wlen)) {
      fwrite(b.data, 1, b.len, stderr);
      fail_msg("resp%d writer: %zu bytes, want %zu", resp3 ? 3 : 2, b.len,
               wlen);
    }
    vlm__buf_free(&b);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resp_split_at_every_byte),
      cmocka_unit_test(test_resp_random_roundtrip),
      cmocka_unit_test(test_resp_limits_and_garbage),
      cmocka_unit_test(test_resp_writer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
