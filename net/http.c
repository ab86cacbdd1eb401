/* http.c - HTTP/1.1 connections on the server's loop (see http.h).
 *
 * Parsing is Debian's libhttp-parser (Node's parser before llhttp): it
 * frames requests (Content-Length, chunked bodies, keep-alive rules) and
 * this file gathers each request's URL, the few headers the API reads,
 * and its body, within limits checked as the bytes arrive: URL length
 * (414), header count and bytes (431), body bytes (--max-request-bytes,
 * 413).  A request over a limit or a frame the parser refuses gets its
 * error response, in order after the responses owed, and the connection
 * closes after it: like RESP's protocol errors, the stream cannot be
 * trusted any further.  Every other failure (bad JSON, a missing field,
 * an unknown route) is a response on a connection that stays open.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "console.h"
#include "http.h"
#include "vlm_error.h"

enum { HDR_NONE, HDR_FIELD, HDR_VALUE };

struct vlm__http_conn {
  http_parser parser;
  vlm__conn *conn;
  /* the request being received */
  vlm__buf url, body;
  char name[32];            /* the current header's name (truncated) */
  size_t name_len;
  vlm__buf value;           /* its value */
  int hstate;
  int nheaders;
  size_t header_bytes;
  char content_type[128];
  char auth[512];
  int auth_bad;             /* Authorization longer than auth[] */
  int expect_continue;
  int fail_status;          /* a limit was passed: 413, 414, 431 */
  char fail_msg[160];
  int stop;                 /* paused after a request that closes */
  /* After an error that closes: the response goes out, then our side is
   * shut down and what the client still sends is read and dropped until
   * it closes (or LINGER_MS pass), so its unread request bytes do not
   * reset the connection and destroy the response before it is read. */
  int linger, shut_sent;
  uint64_t linger_ms;
  uv_shutdown_t shut;
};

#define LINGER_MS 2000

static const http_parser_settings *settings(void);

static const char *reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 409: return "Conflict";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 503: return "Service Unavailable";
  default: return "Unknown";
  }
}

const char *vlm__http_code(int status) {
  switch (status) {
  case 400: return "bad_request";
  case 401: return "unauthorized";
  case 404: return "not_found";
  case 405: return "method_not_allowed";
  case 409: return "conflict";
  case 413: return "payload_too_large";
  case 414: return "uri_too_long";
  case 415: return "unsupported_media_type";
  case 429: return "too_many_requests";
  case 431: return "header_fields_too_large";
  case 503: return "unavailable";
  default: return "internal";
  }
}

void vlm__http_respond(vlm__buf *out, int status, const char *ctype,
                       const void *body, size_t len, int keep_alive,
                       const char *extra) {
  vlm__buf_printf(out, "HTTP/1.1 %d %s\r\n", status, reason(status));
  if (ctype)
    vlm__buf_printf(out, "Content-Type: %s\r\n", ctype);
  vlm__buf_printf(out, "Content-Length: %zu\r\n%s%s\r\n", len,
                  keep_alive ? "" : "Connection: close\r\n",
                  extra ? extra : "");
  vlm__buf_append(out, body, len);
}

void vlm__http_error(vlm__buf *out, int status, const char *code,
                     const char *field, int keep_alive, const char *fmt,
                     ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  vlm__buf body;
  vlm__buf_init(&body, 0);
  vlm__buf_printf(&body, "{\"error\":{\"code\":\"%s\",\"message\":", code);
  vlm__json_cstr(&body, msg);
  if (field) {
    vlm__buf_append(&body, ",\"field\":", 9);
    vlm__json_cstr(&body, field);
  }
  vlm__buf_append(&body, "}}\n", 3);
  const char *extra = status == 401 ? "WWW-Authenticate: Bearer realm=\"vlmdb\""
                                      "\r\n"
                      : status == 429 || status == 503 ? "Retry-After: 1\r\n"
                                                       : NULL;
  if (body.oom)
    out->oom = 1;
  else
    vlm__http_respond(out, status, "application/json", body.data, body.len,
                      keep_alive, extra);
  vlm__buf_free(&body);
}

void vlm__http_req_free(vlm__http_req *req) {
  if (!req)
    return;
  for (int i = 0; i < req->nkeys; i++)
    free(req->keys[i]);
  free(req->keys);
  free(req->key);
  free(req);
}

/* ======================================================================
 * Connections
 * ==================================================================== */

int vlm__http_conn_init(vlm__conn *conn) {
  vlm__http_conn *h = calloc(1, sizeof *h);
  if (!h)
    return VLM_ENOMEM;
  http_parser_init(&h->parser, HTTP_REQUEST);
  h->parser.data = h;
  h->conn = conn;
  vlm__buf_init(&h->url, 0);
  vlm__buf_init(&h->body, 0);
  vlm__buf_init(&h->value, 0);
  conn->http = h;
  conn->resp3 = 1;  /* the commands' replies are read back as RESP3 */
  conn->out.resp3 = 1;
  conn->authed = 1; /* HTTP checks its bearer token per request */
  return 0;
}

void vlm__http_conn_free(vlm__conn *conn) {
  vlm__http_conn *h = conn->http;
  if (!h)
    return;
  vlm__buf_free(&h->url);
  vlm__buf_free(&h->body);
  vlm__buf_free(&h->value);
  free(h);
  conn->http = NULL;
}

static int limit(vlm__http_conn *h, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int limit(vlm__http_conn *h, int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(h->fail_msg, sizeof h->fail_msg, fmt, ap);
  va_end(ap);
  h->fail_status = status;
  return -1;
}

/* ---- parser callbacks ---- */

static int on_message_begin(http_parser *p) {
  vlm__http_conn *h = p->data;
  h->url.len = h->body.len = h->value.len = 0;
  h->name_len = 0;
  h->hstate = HDR_NONE;
  h->nheaders = 0;
  h->header_bytes = 0;
  h->content_type[0] = h->auth[0] = '\0';
  h->auth_bad = h->expect_continue = 0;
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  vlm__http_conn *h = p->data;
  if (h->url.len + len > VLM__HTTP_MAX_URL)
    return limit(h, 414, "the URL is longer than %d bytes",
                 VLM__HTTP_MAX_URL);
  vlm__buf_append(&h->url, at, len);
  return 0;
}

static void header_done(vlm__http_conn *h) {
  if (h->hstate != HDR_VALUE)
    return;
  size_t n = h->value.len;
  const char *v = n ? h->value.data : "";
  if (h->name_len == 12 && !strncasecmp(h->name, "content-type", 12)) {
    snprintf(h->content_type, sizeof h->content_type, "%.*s", (int)n, v);
  } else if (h->name_len == 13 && !strncasecmp(h->name, "authorization",
                                                13)) {
    if (n >= sizeof h->auth)
      h->auth_bad = 1;
    else
      snprintf(h->auth, sizeof h->auth, "%.*s", (int)n, v);
  } else if (h->name_len == 6 && !strncasecmp(h->name, "expect", 6)) {
    h->expect_continue = n == 12 && !strncasecmp(v, "100-continue", 12);
  }
  h->value.len = 0;
  h->name_len = 0;
}

static int header_bytes(vlm__http_conn *h, size_t len) {
  h->header_bytes += len;
  if (h->header_bytes > VLM__HTTP_MAX_HEADER_BYTES)
    return limit(h, 431, "the headers are longer than %d bytes",
                 VLM__HTTP_MAX_HEADER_BYTES);
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  vlm__http_conn *h = p->data;
  if (header_bytes(h, len) < 0)
    return -1;
  if (h->hstate != HDR_FIELD) {
    header_done(h);
    if (++h->nheaders > VLM__HTTP_MAX_HEADERS)
      return limit(h, 431, "more than %d header fields",
                   VLM__HTTP_MAX_HEADERS);
    h->hstate = HDR_FIELD;
  }
  size_t room = sizeof h->name - h->name_len;
  size_t n = len < room ? len : room;
  memcpy(h->name + h->name_len, at, n);
  h->name_len += n;
  if (len > n)
    h->name_len = sizeof h->name; /* too long for any name we read */
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  vlm__http_conn *h = p->data;
  if (header_bytes(h, len) < 0)
    return -1;
  h->hstate = HDR_VALUE;
  vlm__buf_append(&h->value, at, len);
  return 0;
}

static int on_headers_complete(http_parser *p) {
  vlm__http_conn *h = p->data;
  vlm_server *srv = h->conn->srv;
  header_done(h);
  h->hstate = HDR_NONE;
  if (!(p->flags & F_CHUNKED) && p->content_length != (uint64_t)-1 &&
      p->content_length > srv->max_request) {
    limit(h, 413, "the body (%llu bytes) is over the %zu byte limit",
          (unsigned long long)p->content_length, srv->max_request);
    return -1;
  }
  /* A client that waits for "100 Continue" before its body gets it, when
   * it can go out now without overtaking a response owed. */
  if (h->expect_continue && h->conn->njobs == 0)
    vlm__buf_append(&h->conn->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  vlm__http_conn *h = p->data;
  vlm_server *srv = h->conn->srv;
  if (h->body.len + len > srv->max_request)
    return limit(h, 413, "the body is over the %zu byte limit",
                 srv->max_request);
  vlm__buf_append(&h->body, at, len);
  return 0;
}

int vlm__http_url_decode(char *s, size_t *len) {
  size_t o = 0;
  for (size_t i = 0; i < *len; i++) {
    if (s[i] != '%') {
      s[o++] = s[i];
      continue;
    }
    if (i + 2 >= *len)
      return -1;
    char hx[3] = {s[i + 1], s[i + 2], 0};
    char *end;
    long v = strtol(hx, &end, 16);
    if (*end || !hx[0] || !hx[1])
      return -1;
    s[o++] = (char)v;
    i += 2;
  }
  *len = o;
  return 0;
}

static int on_message_complete(http_parser *p) {
  vlm__http_conn *h = p->data;
  vlm__conn *conn = h->conn;
  vlm_server *srv = conn->srv;
  int keep_alive = http_should_keep_alive(p) && !srv->shutting_down;
  srv->stats.http_requests++;
  srv->stats.commands++;
  conn->last_ms = uv_now(&srv->loop);
  if (h->url.oom || h->body.oom || h->value.oom) {
    vlm__http_error(vlm__conn_reply_buf(conn), 500, "internal", NULL, 0,
                    "out of memory for the request");
    keep_alive = 0;
    goto next;
  }
  vlm__buf_append(&h->url, "", 1); /* NUL-terminate */
  vlm__http_request r = {0};
  r.method = p->method;
  r.path = h->url.data;
  r.keep_alive = keep_alive;
  char *q = strchr(r.path, '?');
  char *hash = strchr(r.path, '#');
  if (hash)
    *hash = '\0';
  if (q) {
    *q = '\0';
    r.query = q + 1;
    r.query_len = strlen(r.query);
  }
  r.path_len = strlen(r.path);
  r.body = h->body.len ? h->body.data : "";
  r.body_len = h->body.len;
  r.content_type = h->content_type;

  /* Authentication: the same secret as AUTH, as a bearer token, compared
   * in constant time; the health checks stay open for probes, and the
   * console's static files for browsers (the page then asks for the
   * password and sends it with every API request). */
  int open_route = r.method == HTTP_GET && (!strcmp(r.path, "/healthz") ||
                                            !strcmp(r.path, "/readyz") ||
                                            !vlm__console_asset(r.path, NULL,
                                                                NULL, NULL));
  if (srv->password && !open_route) {
    const char *tok = NULL;
    if (!h->auth_bad && !strncasecmp(h->auth, "Bearer ", 7)) {
      tok = h->auth + 7;
      while (*tok == ' ')
        tok++;
    }
    if (!tok || !vlm__secret_equal(tok, strlen(tok), srv->password,
                                   srv->password_len)) {
      if (tok)
        srv->stats.auth_failures++;
      vlm__http_error(vlm__conn_reply_buf(conn), 401, "unauthorized", NULL,
                      keep_alive, tok ? "wrong bearer token"
                                      : "this server needs 'Authorization: "
                                        "Bearer <password>'");
      goto next;
    }
  }
  /* HEAD would need every response without its body: not served */
  if (r.method == HTTP_HEAD) {
    vlm__http_respond(vlm__conn_reply_buf(conn), 405, NULL, NULL, 0, 0,
                      "Allow: GET, POST, PUT, PATCH, DELETE\r\n");
    keep_alive = 0;
    goto next;
  }
  /* Saturated: as many requests in flight as a RESP client may have. */
  if (conn->njobs >= srv->max_pipeline) {
    vlm__http_error(vlm__conn_reply_buf(conn), 429, "too_many_requests",
                    NULL, keep_alive, "%d requests of this connection are "
                    "in flight; wait for their responses", conn->njobs);
    goto next;
  }
  vlm__api_handle(conn, &r);
next:
  if (!keep_alive) {
    /* no more requests: answer what was asked, then close */
    vlm__conn_quit(conn);
    h->stop = 1;
    http_parser_pause(p, 1);
  }
  return 0;
}

static const http_parser_settings *settings(void) {
  static const http_parser_settings s = {
      .on_message_begin = on_message_begin,
      .on_url = on_url,
      .on_header_field = on_header_field,
      .on_header_value = on_header_value,
      .on_headers_complete = on_headers_complete,
      .on_body = on_body,
      .on_message_complete = on_message_complete,
  };
  return &s;
}

void vlm__http_read(vlm__conn *conn, const char *data, size_t len) {
  vlm__http_conn *h = conn->http;
  if (h->stop || conn->quit)
    return;
  size_t used = http_parser_execute(&h->parser, settings(), data, len);
  enum http_errno err = HTTP_PARSER_ERRNO(&h->parser);
  if (err == HPE_OK || err == HPE_PAUSED) {
    (void)used;
    return;
  }
  /* A limit passed, or a frame the parser refused: the error response,
   * then close. */
  vlm_server *srv = conn->srv;
  srv->stats.protocol_errors++;
  int status = h->fail_status ? h->fail_status : 400;
  if (err == HPE_HEADER_OVERFLOW) {
    status = 431;
    snprintf(h->fail_msg, sizeof h->fail_msg, "the headers are too long");
  }
  if (status == 400)
    snprintf(h->fail_msg, sizeof h->fail_msg, "malformed HTTP request: %s",
             http_errno_description(err));
  vlm__server_log(srv, "client %llu (%s): HTTP %d: %s",
                  (unsigned long long)conn->id, conn->addr, status,
                  h->fail_msg);
  vlm__http_error(vlm__conn_reply_buf(conn), status, vlm__http_code(status),
                  NULL, 0, "%s", h->fail_msg);
  h->stop = 1;
  h->linger = 1;
  h->linger_ms = uv_now(&srv->loop);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)req;
  (void)status; /* a failure shows as a read error, which closes */
}

int vlm__http_flushed(vlm__conn *conn) {
  vlm__http_conn *h = conn->http;
  if (!h->linger || h->shut_sent)
    return 0;
  h->shut_sent = 1;
  if (uv_shutdown(&h->shut, (uv_stream_t *)&conn->tcp, on_shutdown) < 0)
    return -1;
  return 0;
}

int vlm__http_linger_over(vlm__conn *conn, uint64_t now_ms) {
  vlm__http_conn *h = conn->http;
  return h && h->linger && now_ms - h->linger_ms > LINGER_MS;
}

void vlm__http_render(vlm__conn *conn, vlm__job *job) {
  if (!job->http) { /* a response written in full */
    vlm__buf_append(&conn->out, job->reply.data, job->reply.len);
    return;
  }
  vlm__api_render(conn, job, &conn->out);
}
