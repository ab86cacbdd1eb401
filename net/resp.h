/* resp.h - the Redis serialization protocol (RESP2 and RESP3): an
 * incremental request parser and a reply writer.  Internal to net/.
 *
 * Parser.  A request is a multibulk ("*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n")
 * or an inline line ("ECHO hi\r\n", split on spaces, with "..." and '...'
 * quoting as redis-cli and telnet users write it).  The caller keeps the
 * unconsumed input in one contiguous buffer and calls vlm__resp_parse with
 * the buffer starting at the first byte of the request being parsed:
 *
 *   VLM__RESP_MORE   the request is incomplete; call again with the same
 *                    bytes plus more (the parser remembers how far it got,
 *                    so a request split at every byte costs O(n) overall)
 *   VLM__RESP_DONE   *used bytes form one request; p->argc and p->argv
 *                    describe its arguments, pointing into buf (inline
 *                    quoting is decoded in place, hence the non-const buf).
 *                    argc may be 0 (empty line, "*0"): ignore it.  The
 *                    next call starts the next request.
 *   < 0              protocol error (VLM_EFORMAT) or a limit exceeded
 *                    (VLM_ETOOBIG); p->err holds a Redis-style message
 *                    ("Protocol error: invalid bulk length").  The stream
 *                    cannot be resynchronized: reply and close.
 *
 * Memory: the parser owns only its argument array, which grows with the
 * arguments that actually arrive (an announced count is never trusted)
 * and shrinks back after a large request.  No length read from the wire is
 * used before it is checked against the limits.
 *
 * Writer.  Replies are appended to a vlm__buf.  Types that RESP2 lacks are
 * mapped as Redis maps them: a map becomes a flat array of 2n elements, a
 * double a bulk string, null "$-1".  A failed allocation sets buf->oom and
 * turns later appends into no-ops; the connection is then closed.
 * vlm__reply_error is the only function that writes an error reply.
 */
#ifndef VLM_NET_RESP_H
#define VLM_NET_RESP_H

#include <stddef.h>
#include <stdint.h>

enum { VLM__RESP_MORE = 0, VLM__RESP_DONE = 1 };

typedef struct {
  size_t max_bulk;    /* bytes of one argument */
  int max_args;       /* arguments of one request */
  size_t max_inline;  /* bytes of one inline request line */
  size_t max_request; /* bytes of all arguments of one request */
} vlm__resp_limits;

typedef struct {
  const char *ptr;  /* valid after VLM__RESP_DONE, into the caller's buf */
  size_t len;
  size_t off;       /* offset from the request start (parser internal) */
} vlm__resp_arg;

typedef struct {
  vlm__resp_limits lim;
  /* State of the request being parsed; offsets count from its first byte. */
  int kind;         /* 0 not started, '*' multibulk, 'i' inline */
  size_t pos;       /* bytes scanned and accepted so far */
  long nargs;       /* multibulk: arguments announced */
  long bulk_len;    /* multibulk: length of the pending bulk, -1 = header */
  size_t total;     /* bytes of arguments so far */
  int argc, argcap;
  vlm__resp_arg *argv;
  char err[128];
} vlm__resp_parser;

/* Defaults for the limits: 512 MiB bulk like Redis is far more than any
 * vlmdb request needs, so the server passes its own. */
void vlm__resp_parser_init(vlm__resp_parser *p, const vlm__resp_limits *lim);
void vlm__resp_parser_free(vlm__resp_parser *p);
/* Forget a partial request (after an error, or to reuse the parser). */
void vlm__resp_parser_reset(vlm__resp_parser *p);
int vlm__resp_parse(vlm__resp_parser *p, char *buf, size_t len, size_t *used);
/* How many more bytes the pending request needs at least (a bulk being
 * read), or 0 when unknown; the caller sizes its buffer with it. */
size_t vlm__resp_want(const vlm__resp_parser *p, size_t have);

/* ---- reply writer ---- */

typedef struct {
  char *data;
  size_t len, cap;
  int resp3;        /* protocol of the client the reply is for */
  int oom;          /* an append failed: the buffer is incomplete */
} vlm__buf;

void vlm__buf_init(vlm__buf *b, int resp3);
void vlm__buf_free(vlm__buf *b);   /* accepts NULL; leaves b empty */
/* Make room for n more bytes; 0 or VLM_ENOMEM (and b->oom). */
int vlm__buf_reserve(vlm__buf *b, size_t n);
void vlm__buf_append(vlm__buf *b, const void *data, size_t n);
/* printf into the buffer, raw (no framing). */
void vlm__buf_printf(vlm__buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void vlm__reply_status(vlm__buf *b, const char *s);  /* +s */
/* -CODE message: code is "ERR", "NOAUTH", "WRONGPASS", "NOPROTO"...;
 * CR and LF in the message become spaces so the reply stays one line. */
void vlm__reply_error(vlm__buf *b, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void vlm__reply_int(vlm__buf *b, long long v);
void vlm__reply_bulk(vlm__buf *b, const void *data, size_t len);
void vlm__reply_cstr(vlm__buf *b, const char *s);   /* bulk; NULL -> null */
void vlm__reply_null(vlm__buf *b);
void vlm__reply_array(vlm__buf *b, long n);
void vlm__reply_map(vlm__buf *b, long n);          /* n key-value pairs */
void vlm__reply_double(vlm__buf *b, double v);
void vlm__reply_float(vlm__buf *b, float v);        /* shortest form */
void vlm__reply_bool(vlm__buf *b, int v);          /* RESP2: integer 0/1 */

#endif
