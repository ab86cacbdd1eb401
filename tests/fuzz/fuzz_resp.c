/* fuzz_resp.c - libFuzzer target for the RESP request parser.
 *
 * The input is fed twice: whole, and in chunks whose sizes come from the
 * input's own bytes (the way a socket splits a stream).  Both runs must
 * give the same requests and the same error, each argument must lie inside
 * the buffer, and the parser must never hold more than its limits allow.
 * Every argument also goes through the reply writer (bulk, error, inline
 * echo), whose output is checked for framing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../net/resp.h"

#define MAX_REQ 64

typedef struct {
  int n, err;
  int argc[MAX_REQ];
  uint64_t digest[MAX_REQ];
} outcome;

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}

static void check_writer(const vlm__resp_arg *argv, int argc) {
  vlm__buf b;
  vlm__buf_init(&b, argc & 1);
  vlm__reply_array(&b, argc);
  for (int i = 0; i < argc; i++)
    vlm__reply_bulk(&b, argv[i].ptr, argv[i].len);
  size_t before = b.len;
  if (argc > 0)
    vlm__reply_error(&b, "ERR", "unknown command '%.*s'", (int)argv[0].len,
                     argv[0].ptr);
  /* An error reply is one line: no CR or LF before its end. */
  for (size_t i = before; i + 2 < b.len; i++)
    if (b.data[i] == '\r' || b.data[i] == '\n')
      abort();
  if (!b.oom && (b.len < 2 || memcmp(b.data + b.len - 2, "\r\n", 2)))
    abort();
  vlm__buf_free(&b);
}

/* Parse data[0, len) delivered in chunks of the given sizes (cycled). */
static void run(const uint8_t *data, size_t len, const uint8_t *sizes,
                size_t nsizes, outcome *out) {
  vlm__resp_limits lim = {4096, 64, 1024, 16384};
  vlm__resp_parser p;
  vlm__resp_parser_init(&p, &lim);
  char *buf = malloc(len + 1);
  size_t have = 0, start = 0, k = 0;
  memset(out, 0, sizeof *out);
  while (have < len || k == 0) {
    size_t step = nsizes ? 1 + sizes[k % nsizes] % 32 : len;
    k++;
    if (step > len - have)
      step = len - have;
    memcpy(buf + have, data + have, step);
    have += step;
    for (;;) {
      size_t used = 0;
      int rc = vlm__resp_parse(&p, buf + start, have - start, &used);
      if (rc == VLM__RESP_MORE) {
        /* Whatever is pending must be within the limits. */
        if (p.argc > lim.max_args || p.total > lim.max_request)
          abort();
        break;
      }
      if (rc < 0) {
        out->err = rc;
        goto done;
      }
      if (used == 0 || used > have - start)
        abort();
      if (p.argc > lim.max_args)
        abort();
      uint64_t h = 14695981039346656037ull;
      size_t total = 0;
      for (int i = 0; i < p.argc; i++) {
        const char *a = p.argv[i].ptr;
        if (a < buf + start || a + p.argv[i].len > buf + start + used)
          abort();
        if (p.argv[i].len > lim.max_bulk)
          abort();
        total += p.argv[i].len;
        h = fnv(h, &p.argv[i].len, sizeof p.argv[i].len);
        h = fnv(h, a, p.argv[i].len);
      }
      if (total > lim.max_request && buf[start] == '*')
        abort();
      check_writer(p.argv, p.argc);
      if (p.argc > 0 && out->n < MAX_REQ) {
        out->argc[out->n] = p.argc;
        out->digest[out->n] = h;
        out->n++;
      }
      start += used;
    }
    if (have == len)
      break;
  }
done:
  free(buf);
  vlm__resp_parser_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The first bytes pick the chunk sizes; the rest is the stream. */
  size_t nsizes = size > 0 ? data[0] % 8 : 0;
  if (size < 1 + nsizes)
    return 0;
  const uint8_t *sizes = data + 1;
  const uint8_t *stream = data + 1 + nsizes;
  size_t len = size - 1 - nsizes;
  outcome whole, split;
  run(stream, len, NULL, 0, &whole);
  run(stream, len, sizes, nsizes, &split);
  /* A request cut across chunks must parse the same, except that an
   * inline line is refused by length as soon as it passes the limit. */
  if (whole.err != split.err || whole.n != split.n)
    abort();
  for (int i = 0; i < whole.n; i++)
    if (whole.argc[i] != split.argc[i] || whole.digest[i] != split.digest[i])
      abort();
  return 0;
}
