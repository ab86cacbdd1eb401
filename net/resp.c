/* resp.c - RESP request parser and reply writer (see resp.h). */
#include "resp.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm_error.h"

/* ======================================================================
 * Parser
 * ==================================================================== */

/* A "*N" or "$N" header line never needs more than this many bytes; a
 * longer line is garbage, so it is refused before it can fill memory. */
#define HEADER_MAX 32

void vlm__resp_parser_init(vlm__resp_parser *p, const vlm__resp_limits *lim) {
  memset(p, 0, sizeof *p);
  p->lim = *lim;
  vlm__resp_parser_reset(p);
}

void vlm__resp_parser_free(vlm__resp_parser *p) {
  if (!p)
    return;
  free(p->argv);
  p->argv = NULL;
  p->argc = p->argcap = 0;
}

void vlm__resp_parser_reset(vlm__resp_parser *p) {
  p->kind = 0;
  p->pos = 0;
  p->nargs = -1;
  p->bulk_len = -1;
  p->total = 0;
  p->argc = 0;
}

static int fail(vlm__resp_parser *p, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(vlm__resp_parser *p, int err, const char *fmt, ...) {
  va_list ap;
  int n = snprintf(p->err, sizeof p->err, "Protocol error: ");
  va_start(ap, fmt);
  vsnprintf(p->err + n, sizeof p->err - (size_t)n, fmt, ap);
  va_end(ap);
  vlm__resp_parser_reset(p);
  return vlm_seterr(err, "%s", p->err);
}

static int push_arg(vlm__resp_parser *p, size_t off, size_t len) {
  if (p->argc >= p->lim.max_args)
    return fail(p, VLM_ETOOBIG, "too many arguments (limit %d)",
                p->lim.max_args);
  if (p->argc == p->argcap) {
    int cap = p->argcap ? p->argcap * 2 : 8;
    if (cap > p->lim.max_args)
      cap = p->lim.max_args;
    vlm__resp_arg *argv = realloc(p->argv, (size_t)cap * sizeof *argv);
    if (!argv)
      return fail(p, VLM_ENOMEM, "out of memory");
    p->argv = argv;
    p->argcap = cap;
  }
  p->argv[p->argc].off = off;
  p->argv[p->argc].len = len;
  p->argv[p->argc].ptr = NULL;
  p->argc++;
  return 0;
}

/* Strict decimal: optional '-', 1..18 digits, nothing else. */
static int parse_len(const char *s, size_t n, long long *out) {
  int neg = 0;
  if (n > 0 && s[0] == '-') {
    neg = 1;
    s++;
    n--;
  }
  if (n == 0 || n > 18)
    return -1;
  long long v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    v = v * 10 + (s[i] - '0');
  }
  *out = neg ? -v : v;
  return 0;
}

/* Find the CRLF ending the header line that starts at buf[start] (its type
 * byte).  1 and *end (offset of '\r') when found, 0 when more input is
 * needed, -1 when the line is too long or not CRLF-terminated. */
static int header_line(const char *buf, size_t len, size_t start,
                       size_t *end) {
  size_t limit = start + HEADER_MAX;
  for (size_t i = start + 1; i < len && i < limit; i++) {
    if (buf[i] == '\r') {
      if (i + 1 == len)
        return 0;
      if (buf[i + 1] != '\n')
        return -1;
      *end = i;
      return 1;
    }
  }
  return len >= limit ? -1 : 0;
}

static int finish(vlm__resp_parser *p, char *buf, size_t used,
                  size_t *usedp) {
  for (int i = 0; i < p->argc; i++)
    p->argv[i].ptr = buf + p->argv[i].off;
  *usedp = used;
  int argc = p->argc;
  vlm__resp_parser_reset(p);
  p->argc = argc; /* stays valid until the next call */
  return VLM__RESP_DONE;
}

static int parse_multibulk(vlm__resp_parser *p, char *buf, size_t len,
                           size_t *used) {
  size_t end;
  if (p->nargs < 0) {
    int r = header_line(buf, len, 0, &end);
    if (r == 0)
      return VLM__RESP_MORE;
    long long n;
    if (r < 0)
      return fail(p, VLM_EFORMAT, "too big mbulk count string");
    if (parse_len(buf + 1, end - 1, &n) < 0)
      return fail(p, VLM_EFORMAT, "invalid multibulk length");
    if (n > p->lim.max_args)
      return fail(p, VLM_ETOOBIG, "invalid multibulk length (%lld arguments,"
                  " limit %d)", n, p->lim.max_args);
    p->pos = end + 2;
    if (n <= 0) /* "*0" and "*-1": an empty request, as Redis treats them */
      return finish(p, buf, p->pos, used);
    p->nargs = (long)n;
    p->bulk_len = -1;
  }
  while (p->argc < p->nargs) {
    if (p->bulk_len < 0) {
      if (p->pos >= len)
        return VLM__RESP_MORE;
      if (buf[p->pos] != '$') {
        unsigned char c = (unsigned char)buf[p->pos];
        if (c >= 0x20 && c < 0x7f)
          return fail(p, VLM_EFORMAT, "expected '$', got '%c'", c);
        return fail(p, VLM_EFORMAT, "expected '$', got byte 0x%02x", c);
      }
      int r = header_line(buf, len, p->pos, &end);
      if (r == 0)
        return VLM__RESP_MORE;
      if (r < 0)
        return fail(p, VLM_EFORMAT, "too big bulk count string");
      long long n;
      if (parse_len(buf + p->pos + 1, end - p->pos - 1, &n) < 0 || n < 0)
        return fail(p, VLM_EFORMAT, "invalid bulk length");
      if ((unsigned long long)n > p->lim.max_bulk)
        return fail(p, VLM_ETOOBIG, "invalid bulk length (%lld bytes, limit"
                    " %zu)", n, p->lim.max_bulk);
      if ((unsigned long long)n > p->lim.max_request - p->total)
        return fail(p, VLM_ETOOBIG, "request larger than %zu bytes",
                    p->lim.max_request);
      p->bulk_len = (long)n;
      p->pos = end + 2;
    }
    size_t blen = (size_t)p->bulk_len;
    if (len - p->pos < blen + 2)
      return VLM__RESP_MORE;
    if (buf[p->pos + blen] != '\r' || buf[p->pos + blen + 1] != '\n')
      return fail(p, VLM_EFORMAT, "bulk string not terminated by CRLF");
    int rc = push_arg(p, p->pos, blen);
    if (rc < 0)
      return rc;
    p->total += blen;
    p->pos += blen + 2;
    p->bulk_len = -1;
  }
  return finish(p, buf, p->pos, used);
}

static int is_sep(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\0' ||
         c == '\v' || c == '\f';
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Split one inline line (n bytes, no newline) into arguments the way
 * redis-cli's sdssplitargs does, decoding quotes in place: an argument's
 * decoded bytes never outgrow its raw bytes, so each is written over its
 * own source from its first byte on. */
static int split_inline(vlm__resp_parser *p, char *line, size_t n) {
  size_t r = 0;
  for (;;) {
    while (r < n && is_sep(line[r]))
      r++;
    if (r == n)
      return 0;
    size_t start = r, w = r;
    int dq = 0, sq = 0;
    for (;;) {
      if (dq) {
        if (r == n)
          return fail(p, VLM_EFORMAT, "unbalanced quotes in request");
        if (line[r] == '\\' && r + 3 < n && line[r + 1] == 'x' &&
            hexval(line[r + 2]) >= 0 && hexval(line[r + 3]) >= 0) {
          line[w++] = (char)(hexval(line[r + 2]) * 16 + hexval(line[r + 3]));
          r += 4;
        } else if (line[r] == '\\' && r + 1 < n) {
          char c = line[r + 1];
          switch (c) {
          case 'n': c = '\n'; break;
          case 'r': c = '\r'; break;
          case 't': c = '\t'; break;
          case 'b': c = '\b'; break;
          case 'a': c = '\a'; break;
          default: break;
          }
          line[w++] = c;
          r += 2;
        } else if (line[r] == '"') {
          if (r + 1 < n && !is_sep(line[r + 1]))
            return fail(p, VLM_EFORMAT, "unbalanced quotes in request");
          r++;
          break;
        } else {
          line[w++] = line[r++];
        }
      } else if (sq) {
        if (r == n)
          return fail(p, VLM_EFORMAT, "unbalanced quotes in request");
        if (line[r] == '\\' && r + 1 < n && line[r + 1] == '\'') {
          line[w++] = '\'';
          r += 2;
        } else if (line[r] == '\'') {
          if (r + 1 < n && !is_sep(line[r + 1]))
            return fail(p, VLM_EFORMAT, "unbalanced quotes in request");
          r++;
          break;
        } else {
          line[w++] = line[r++];
        }
      } else {
        if (r == n || is_sep(line[r]))
          break;
        if (line[r] == '"') {
          dq = 1;
          r++;
        } else if (line[r] == '\'') {
          sq = 1;
          r++;
        } else {
          line[w++] = line[r++];
        }
      }
    }
    int rc = push_arg(p, start, w - start);
    if (rc < 0)
      return rc;
  }
}

static int parse_inline(vlm__resp_parser *p, char *buf, size_t len,
                        size_t *used) {
  /* p->pos: bytes already known to hold no newline. */
  char *nl = p->pos < len ? memchr(buf + p->pos, '\n', len - p->pos) : NULL;
  if (!nl) {
    p->pos = len;
    if (len > p->lim.max_inline)
      return fail(p, VLM_ETOOBIG, "too big inline request");
    return VLM__RESP_MORE;
  }
  size_t n = (size_t)(nl - buf);
  if (n > p->lim.max_inline)
    return fail(p, VLM_ETOOBIG, "too big inline request");
  size_t linelen = (n > 0 && buf[n - 1] == '\r') ? n - 1 : n;
  int rc = split_inline(p, buf, linelen);
  if (rc < 0)
    return rc;
  return finish(p, buf, n + 1, used);
}

int vlm__resp_parse(vlm__resp_parser *p, char *buf, size_t len, size_t *used) {
  *used = 0;
  if (p->kind == 0) {
    p->argc = 0;
    if (p->argcap > 256) { /* give back what a huge request took */
      free(p->argv);
      p->argv = NULL;
      p->argcap = 0;
    }
    if (len == 0)
      return VLM__RESP_MORE;
    p->kind = buf[0] == '*' ? '*' : 'i';
  }
  if (p->kind == '*')
    return parse_multibulk(p, buf, len, used);
  return parse_inline(p, buf, len, used);
}

size_t vlm__resp_want(const vlm__resp_parser *p, size_t have) {
  if (p->kind != '*' || p->bulk_len < 0)
    return 0;
  size_t need = p->pos + (size_t)p->bulk_len + 2;
  return need > have ? need - have : 0;
}

/* ======================================================================
 * Writer
 * ==================================================================== */

void vlm__buf_init(vlm__buf *b, int resp3) {
  memset(b, 0, sizeof *b);
  b->resp3 = resp3;
}

void vlm__buf_free(vlm__buf *b) {
  if (!b)
    return;
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
  b->oom = 0;
}

int vlm__buf_reserve(vlm__buf *b, size_t n) {
  if (b->oom)
    return VLM_ENOMEM;
  if (b->cap - b->len >= n)
    return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < n) {
    if (cap > SIZE_MAX / 2) {
      b->oom = 1;
      return VLM_ENOMEM;
    }
    cap *= 2;
  }
  char *data = realloc(b->data, cap);
  if (!data) {
    b->oom = 1;
    return VLM_ENOMEM;
  }
  b->data = data;
  b->cap = cap;
  return 0;
}

void vlm__buf_append(vlm__buf *b, const void *data, size_t n) {
  if (n == 0 || vlm__buf_reserve(b, n) < 0)
    return;
  memcpy(b->data + b->len, data, n);
  b->len += n;
}

static void buf_vprintf(vlm__buf *b, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  char small[256];
  int n = vsnprintf(small, sizeof small, fmt, ap2);
  va_end(ap2);
  if (n < 0)
    return;
  if ((size_t)n < sizeof small) {
    vlm__buf_append(b, small, (size_t)n);
    return;
  }
  if (vlm__buf_reserve(b, (size_t)n + 1) < 0)
    return;
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
}

void vlm__buf_printf(vlm__buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  buf_vprintf(b, fmt, ap);
  va_end(ap);
}

/* "<type><n>\r\n" without printf: the header of almost every reply. */
static void header(vlm__buf *b, char type, long long n) {
  char tmp[32];
  char *end = tmp + sizeof tmp, *s = end;
  unsigned long long u = n < 0 ? 0ULL - (unsigned long long)n
                               : (unsigned long long)n;
  *--s = '\n';
  *--s = '\r';
  do {
    *--s = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (n < 0)
    *--s = '-';
  *--s = type;
  vlm__buf_append(b, s, (size_t)(end - s));
}

void vlm__reply_status(vlm__buf *b, const char *s) {
  size_t n = strlen(s);
  if (vlm__buf_reserve(b, n + 3) < 0)
    return;
  b->data[b->len++] = '+';
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len++] = '\r';
  b->data[b->len++] = '\n';
}

void vlm__reply_error(vlm__buf *b, const char *code, const char *fmt, ...) {
  size_t start = b->len;
  vlm__buf_append(b, "-", 1);
  vlm__buf_append(b, code, strlen(code));
  vlm__buf_append(b, " ", 1);
  size_t msg = b->len;
  va_list ap;
  va_start(ap, fmt);
  buf_vprintf(b, fmt, ap);
  va_end(ap);
  if (b->oom)
    return;
  for (size_t i = msg; i < b->len; i++)
    if (b->data[i] == '\r' || b->data[i] == '\n')
      b->data[i] = ' ';
  (void)start;
  vlm__buf_append(b, "\r\n", 2);
}

void vlm__reply_int(vlm__buf *b, long long v) { header(b, ':', v); }

void vlm__reply_bulk(vlm__buf *b, const void *data, size_t len) {
  header(b, '$', (long long)len);
  if (vlm__buf_reserve(b, len + 2) < 0)
    return;
  if (len)
    memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len++] = '\r';
  b->data[b->len++] = '\n';
}

void vlm__reply_cstr(vlm__buf *b, const char *s) {
  if (!s)
    vlm__reply_null(b);
  else
    vlm__reply_bulk(b, s, strlen(s));
}

void vlm__reply_null(vlm__buf *b) {
  if (b->resp3)
    vlm__buf_append(b, "_\r\n", 3);
  else
    vlm__buf_append(b, "$-1\r\n", 5);
}

void vlm__reply_array(vlm__buf *b, long n) { header(b, '*', n); }

void vlm__reply_map(vlm__buf *b, long n) {
  if (b->resp3)
    header(b, '%', n);
  else
    header(b, '*', 2 * (long long)n);
}

void vlm__reply_double(vlm__buf *b, double v) {
  char tmp[64];
  if (isnan(v))
    snprintf(tmp, sizeof tmp, "nan");
  else if (isinf(v))
    snprintf(tmp, sizeof tmp, v > 0 ? "inf" : "-inf");
  else /* the shortest decimal that reads back as v: 0.456, not
          * 0.45614035087719296 */
    for (int prec = 1; prec <= 17; prec++) {
      snprintf(tmp, sizeof tmp, "%.*g", prec, v);
      if (strtod(tmp, NULL) == v)
        break;
    }
  if (b->resp3)
    vlm__buf_printf(b, ",%s\r\n", tmp);
  else
    vlm__reply_bulk(b, tmp, strlen(tmp));
}

/* A float32 score: the shortest decimal that reads back as the same
 * float, so "0.8125" rather than "0.81250000000000000". */
void vlm__reply_float(vlm__buf *b, float v) {
  if (!isfinite(v)) {
    vlm__reply_double(b, v);
    return;
  }
  char tmp[32];
  for (int prec = 6; prec <= 9; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, (double)v);
    if (strtof(tmp, NULL) == v)
      break;
  }
  if (b->resp3)
    vlm__buf_printf(b, ",%s\r\n", tmp);
  else
    vlm__reply_bulk(b, tmp, strlen(tmp));
}

void vlm__reply_bool(vlm__buf *b, int v) {
  if (b->resp3)
    vlm__buf_append(b, v ? "#t\r\n" : "#f\r\n", 4);
  else
    vlm__reply_int(b, v ? 1 : 0);
}
