/* test_http.c - the HTTP/JSON API of `vlmdb serve`, as a real process on
 * loopback ports, driven by a raw-socket HTTP client written here (its
 * own response reader, separate from the server's writer), hiredis for
 * the RESP side, and Debian's promtool for the metrics.
 *
 * Oracles: the RESP answer to the same request on the same server (keys
 * and scores compared exactly); the model run in this process for the
 * embeddings; counts of the requests this test sent for the metrics; the
 * database's contents after a refused batch (nothing written).
 *
 * Servers are started with --port 0 (HTTP on a free port too) and stopped
 * with SIGTERM, which must end in a clean exit.  Sockets have timeouts,
 * so no test can hang.  $BUILD selects the server binary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlmdb.h"

#define MODEL_DIR "tests/fixtures/clip-tiny"
#define IO_TIMEOUT_S 30

static vlm_clip *g_clip;
static int g_dim;

/* ======================================================================
 * Servers
 * ==================================================================== */

typedef struct {
  pid_t pid;
  int port, http;
  char dir[64];
  char db[96];
  char log[96];
} server_t;

static server_t *g_live[4];

static void track(server_t *s, int on) {
  for (int i = 0; i < 4; i++)
    if (on ? !g_live[i] : g_live[i] == s) {
      g_live[i] = on ? s : NULL;
      return;
    }
}

static const char *build_dir(void) {
  const char *b = getenv("BUILD");
  return b && *b ? b : "build";
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    fclose(f);
    return NULL;
  }
  fclose(f);
  buf[n] = '\0';
  *len = (size_t)n;
  return buf;
}

static void print_log(const server_t *s) {
  size_t n;
  char *text = read_file(s->log, &n);
  if (text) {
    fprintf(stderr, "---- server log ----\n%s---- end ----\n", text);
    free(text);
  }
}

/* An empty Flat database with fields n:int and cat:text, made with the
 * test model and recording model_dir as its model's directory. */
static void make_db_model(server_t *s, const char *model_dir) {
  memset(s, 0, sizeof *s);
  snprintf(s->dir, sizeof s->dir, "/tmp/vlm_http_XXXXXX");
  assert_non_null(mkdtemp(s->dir));
  snprintf(s->db, sizeof s->db, "%s/db", s->dir);
  snprintf(s->log, sizeof s->log, "%s/server.log", s->dir);
  vlm_field fields[2] = {{"n", VLM_FIELD_INT}, {"cat", VLM_FIELD_TEXT}};
  vlm_db_config cfg = {0};
  cfg.dim = g_dim;
  cfg.index_factory = "Flat";
  cfg.model_id = vlm_clip_model_id(g_clip);
  cfg.model_dir = model_dir;
  cfg.fields = fields;
  cfg.nfields = 2;
  vlm_db *db = NULL;
  if (vlm_db_create(s->db, &cfg, &db) < 0)
    fail_msg("vlm_db_create: %s", vlm_errmsg());
  vlm_db_close(db);
  track(s, 1);
}

static void make_db(server_t *s) { make_db_model(s, MODEL_DIR); }

/* Serve s's database with --model model (NULL: none given, so the
 * server looks for the database's own model). */
static void start_server_model(server_t *s, const char *model,
                               const char *const *extra) {
  char bin[256];
  snprintf(bin, sizeof bin, "%s/vlmdb", build_dir());
  const char *argv[32];
  int n = 0;
  argv[n++] = "--db";
  argv[n++] = s->db;
  if (model) {
    argv[n++] = "--model";
    argv[n++] = model;
  }
  argv[n++] = "--port";
  argv[n++] = "0";
  for (int i = 0; extra && extra[i]; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  vlm_test_server ts;
  int rc = vlm_test_server_spawn(&ts, bin, argv, s->log, 60);
  if (rc != 0) {
    print_log(s);
    fail_msg("server did not start (status %d)", rc);
  }
  s->pid = ts.pid;
  s->port = ts.port;
  s->http = ts.http_port;
  if (s->http <= 0)
    fail_msg("the server printed no 'http on' line");
}

static void start_server(server_t *s, const char *const *extra) {
  start_server_model(s, MODEL_DIR, extra);
}

static void stop_server(server_t *s) {
  if (!s->pid)
    return;
  vlm_test_server ts = {s->pid, s->port, s->http};
  int status = vlm_test_server_stop(&ts, 60);
  s->pid = 0;
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    print_log(s);
    fail_msg("server did not exit cleanly (status %d)", status);
  }
}

static void server_done(server_t *s) {
  track(s, 0);
  vlm_test_rm_rf(s->dir);
}

/* ======================================================================
 * An HTTP client: requests written by hand, responses read by a reader
 * that trusts nothing (status line, headers, Content-Length body)
 * ==================================================================== */

typedef struct {
  int fd;
  char *buf;     /* bytes received and not yet consumed */
  size_t len, cap;
  int eof;
} hconn;

typedef struct {
  int status;
  char headers[8192];
  char *body;    /* NUL-terminated */
  size_t body_len;
  json_t *json;  /* the body parsed, when it is JSON */
} hresp;

static int tcp_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
    fail_msg("connect: %s", strerror(errno));
  struct timeval tv = {IO_TIMEOUT_S, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static hconn hopen(int port) {
  hconn c = {tcp_connect(port), NULL, 0, 0, 0};
  return c;
}

static void hclose(hconn *c) {
  close(c->fd);
  free(c->buf);
  c->buf = NULL;
}

static void send_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n <= 0)
      fail_msg("send: %s", strerror(errno));
    p += n;
    len -= (size_t)n;
  }
}

/* Read more bytes; 0 at EOF. */
static size_t hfill(hconn *c) {
  if (c->cap - c->len < 65536) {
    c->cap = c->cap ? c->cap * 2 : 131072;
    c->buf = realloc(c->buf, c->cap + 1);
  }
  ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
  if (n < 0)
    fail_msg("recv: %s", strerror(errno));
  if (n == 0)
    c->eof = 1;
  c->len += (size_t)n;
  return (size_t)n;
}

static void hresp_free(hresp *r) {
  free(r->body);
  json_decref(r->json);
  memset(r, 0, sizeof *r);
}

/* The next response on c (0), or -1 when the server closed first. */
static int hread(hconn *c, hresp *r) {
  memset(r, 0, sizeof *r);
  char *end;
  for (;;) {
    if (c->buf) {
      c->buf[c->len] = '\0';
      if ((end = strstr(c->buf, "\r\n\r\n")))
        break;
    }
    if (hfill(c) == 0)
      return -1;
  }
  size_t hlen = (size_t)(end - c->buf) + 4;
  if (hlen >= sizeof r->headers)
    fail_msg("response headers too long");
  memcpy(r->headers, c->buf, hlen);
  r->headers[hlen] = '\0';
  if (sscanf(r->headers, "HTTP/1.1 %d ", &r->status) != 1)
    fail_msg("bad status line: %.80s", r->headers);
  char *cl = strcasestr(r->headers, "\r\nContent-Length: ");
  if (!cl)
    fail_msg("no Content-Length: %s", r->headers);
  r->body_len = strtoul(cl + 18, NULL, 10);
  while (c->len < hlen + r->body_len)
    if (hfill(c) == 0)
      fail_msg("EOF inside a body");
  r->body = malloc(r->body_len + 1);
  memcpy(r->body, c->buf + hlen, r->body_len);
  r->body[r->body_len] = '\0';
  memmove(c->buf, c->buf + hlen + r->body_len, c->len - hlen - r->body_len);
  c->len -= hlen + r->body_len;
  if (strcasestr(r->headers, "Content-Type: application/json"))
    r->json = json_loadb(r->body, r->body_len, 0, NULL);
  if (r->status == 100) { /* interim: the real response follows */
    hresp_free(r);
    return hread(c, r);
  }
  return 0;
}

/* Write one request (extra: header lines with CRLF, or NULL). */
static void hsend(hconn *c, const char *method, const char *path,
                  const char *extra, const void *body, size_t len) {
  char *head = NULL, cl[64] = "";
  if (body)
    snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", len);
  int n = asprintf(&head, "%s %s HTTP/1.1\r\nHost: test\r\n%s%s\r\n",
                   method, path, extra ? extra : "", cl);
  if (n < 0)
    fail_msg("asprintf");
  send_all(c->fd, head, (size_t)n);
  free(head);
  if (body && len)
    send_all(c->fd, body, len);
}

static hresp hreq(hconn *c, const char *method, const char *path,
                  const char *extra, const void *body, size_t len) {
  hsend(c, method, path, extra, body, len);
  hresp r;
  if (hread(c, &r) < 0)
    fail_msg("%s %s: the server closed the connection", method, path);
  return r;
}

/* A JSON request; the response must have status want (and a JSON body
 * when want is not 0: any status). */
static hresp hjson(hconn *c, const char *method, const char *path,
                   int want, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static hresp hjson(hconn *c, const char *method, const char *path,
                   int want, const char *fmt, ...) {
  char *body = NULL;
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&body, fmt, ap) < 0)
      fail_msg("vasprintf");
    va_end(ap);
  }
  hresp r = hreq(c, method, path,
                 body ? "Content-Type: application/json\r\n" : NULL, body,
                 body ? strlen(body) : 0);
  free(body);
  if (want && r.status != want)
    fail_msg("%s %s: status %d, want %d: %s", method, path, r.status, want,
             r.body);
  if (!r.json && strstr(r.headers, "application/json"))
    fail_msg("%s %s: the body is not JSON: %s", method, path, r.body);
  return r;
}

/* The error object of a response: its code, and its field when want_field
 * is not NULL. */
static void expect_error(hresp *r, int status, const char *code,
                         const char *field) {
  if (r->status != status)
    fail_msg("status %d, want %d: %s", r->status, status, r->body);
  json_t *e = json_object_get(r->json, "error");
  if (!e)
    fail_msg("no error object: %s", r->body);
  const char *got = json_string_value(json_object_get(e, "code"));
  if (!got || strcmp(got, code))
    fail_msg("error code %s, want %s: %s", got ? got : "(none)", code,
             r->body);
  if (!json_is_string(json_object_get(e, "message")))
    fail_msg("no message: %s", r->body);
  if (field) {
    const char *f = json_string_value(json_object_get(e, "field"));
    if (!f || strcmp(f, field))
      fail_msg("error field %s, want %s: %s", f ? f : "(none)", field,
               r->body);
  }
}

/* After an error that closes: the server must close the connection. */
static void expect_closed(hconn *c) {
  while (!c->eof)
    if (hfill(c) == 0)
      break;
  assert_true(c->eof);
}

static char *base64(const void *data, size_t len) {
  static const char tab[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const unsigned char *p = data;
  char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
  for (size_t i = 0; i < len; i += 3) {
    unsigned v = (unsigned)p[i] << 16;
    if (i + 1 < len)
      v |= (unsigned)p[i + 1] << 8;
    if (i + 2 < len)
      v |= p[i + 2];
    *o++ = tab[v >> 18];
    *o++ = tab[(v >> 12) & 63];
    *o++ = i + 1 < len ? tab[(v >> 6) & 63] : '=';
    *o++ = i + 2 < len ? tab[v & 63] : '=';
  }
  *o = '\0';
  return out;
}

static char *fixture(const char *name, size_t *len) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", MODEL_DIR, name);
  char *data = read_file(path, len);
  if (!data)
    fail_msg("cannot read %s", path);
  return data;
}

/* ======================================================================
 * The items every test stores
 * ==================================================================== */

typedef struct {
  const char *key, *caption, *image;
  int n;
  const char *cat;
} item_spec;

static const item_spec items[] = {
    {"cat", "a photo of a cat", "photo_rgb.jpg", 1, "animal"},
    {"dog", "A Photo Of A DOG!!", "photo_prog.jpg", 2, "animal"},
    {"fox", "the quick brown fox jumps over the lazy dog", NULL, 3,
     "animal"},
    {"saturn", "Saturn, the ringed planet", "gray.jpg", 4, "space"},
    {"car", "a red sports car parked next to a yellow fire hydrant",
     "rgb.png", 5, "thing"},
    {"sun", "clip art of a smiling sun", "palette.png", 6, "space"},
    {"caf\xc3\xa9/1", "caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e", NULL,
     7, "food"},
};
#define NITEMS ((int)(sizeof items / sizeof items[0]))

/* The path of an item: its key percent-encoded. */
static void item_path(char *out, size_t cap, const char *key,
                      const char *suffix) {
  int n = snprintf(out, cap, "/v1/items/");
  for (const unsigned char *p = (const unsigned char *)key; *p; p++)
    n += snprintf(out + n, cap - (size_t)n,
                  (*p >= 'a' && *p <= 'z') ? "%c" : "%%%02X", *p);
  snprintf(out + n, cap - (size_t)n, "%s", suffix ? suffix : "");
}

static void put_items(hconn *c) {
  for (int i = 0; i < NITEMS; i++) {
    char path[256], *img64 = NULL;
    if (items[i].image) {
      size_t len;
      char *img = fixture(items[i].image, &len);
      img64 = base64(img, len);
      free(img);
    }
    item_path(path, sizeof path, items[i].key, NULL);
    hresp r = hjson(c, "PUT", path, 201,
                    "{\"text\":\"%s\",\"meta\":{\"n\":%d,\"cat\":\"%s\"},"
                    "\"source\":\"test:%d\"%s%s%s}",
                    items[i].caption, items[i].n, items[i].cat, i,
                    img64 ? ",\"image\":\"" : "", img64 ? img64 : "",
                    img64 ? "\"" : "");
    assert_string_equal(json_string_value(json_object_get(r.json, "result")),
                        "created");
    assert_string_equal(json_string_value(json_object_get(r.json, "key")),
                        items[i].key);
    hresp_free(&r);
    free(img64);
  }
}

static redisContext *hiredis(int port) {
  struct timeval tv = {IO_TIMEOUT_S, 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (!c || c->err)
    fail_msg("connect");
  redisSetTimeout(c, tv);
  return c;
}

/* ======================================================================
 * Routes
 * ==================================================================== */

static void test_routes(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  hconn c = hopen(s.http);

  hresp r = hjson(&c, "GET", "/healthz", 200, NULL);
  assert_string_equal(json_string_value(json_object_get(r.json, "status")),
                      "ok");
  hresp_free(&r);
  r = hjson(&c, "GET", "/readyz", 200, NULL);
  assert_string_equal(json_string_value(json_object_get(r.json, "status")),
                      "ready");
  hresp_free(&r);

  /* the OpenAPI document: JSON, 3.0, every route */
  r = hjson(&c, "GET", "/openapi.json", 200, NULL);
  assert_non_null(r.json);
  assert_string_equal(json_string_value(json_object_get(r.json, "openapi")),
                      "3.0.3");
  static const char *routes[] = {
      "/healthz", "/readyz", "/openapi.json", "/metrics", "/v1/info",
      "/v1/search", "/v1/items/{key}", "/v1/items/{key}/thumbnail",
      "/v1/items/{key}/image", "/v1/items/{key}/explain", "/v1/items:batch", "/v1/embed", "/v1/eval",
      "/v1/scan"};
  json_t *paths = json_object_get(r.json, "paths");
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if (!json_object_get(paths, routes[i]))
      fail_msg("openapi.json lacks %s", routes[i]);
  hresp_free(&r);

  put_items(&c);

  /* info: counts, model, index, declared fields */
  r = hjson(&c, "GET", "/v1/info", 200, NULL);
  assert_int_equal(json_integer_value(json_object_get(r.json, "items")),
                   NITEMS);
  assert_int_equal(json_integer_value(json_object_get(r.json, "dim")), g_dim);
  json_t *model = json_object_get(r.json, "model");
  assert_string_equal(json_string_value(json_object_get(model, "family")),
                      vlm_clip_family(g_clip));
  assert_string_equal(json_string_value(json_object_get(model, "id")),
                      vlm_clip_model_id(g_clip));
  json_t *index = json_object_get(r.json, "index");
  assert_string_equal(json_string_value(json_object_get(index, "kind")),
                      "Flat");
  assert_non_null(json_object_get(json_object_get(index, "effort"), "image"));
  json_t *fields = json_object_get(r.json, "fields");
  assert_int_equal(json_array_size(fields), 2);
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(fields, 0), "name")), "n");
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(fields, 0), "type")), "integer");
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(fields, 1), "type")), "string");
  hresp_free(&r);

  /* get: fields, meta as an object, vectors against the model here */
  char path[256];
  item_path(path, sizeof path, "caf\xc3\xa9/1", "?vectors=1");
  r = hjson(&c, "GET", path, 200, NULL);
  assert_string_equal(json_string_value(json_object_get(r.json, "key")),
                      "caf\xc3\xa9/1");
  assert_string_equal(json_string_value(json_object_get(r.json, "caption")),
                      items[6].caption);
  assert_string_equal(json_string_value(json_object_get(r.json, "source")),
                      "test:6");
  json_t *meta = json_object_get(r.json, "meta");
  assert_int_equal(json_integer_value(json_object_get(meta, "n")), 7);
  assert_true(json_is_null(json_object_get(r.json, "image_vec")));
  json_t *tv = json_object_get(r.json, "text_vec");
  assert_int_equal(json_array_size(tv), g_dim);
  float want[1024];
  const char *cap = items[6].caption;
  VLM_CHECK(vlm_clip_encode_texts(g_clip, &cap, 1, 0, want));
  for (int i = 0; i < g_dim; i++)
    if (fabs(json_number_value(json_array_get(tv, (size_t)i)) - want[i]) >
        1e-5)
      fail_msg("text_vec[%d] %g, want %g", i,
               json_number_value(json_array_get(tv, (size_t)i)),
               (double)want[i]);
  hresp_free(&r);

  /* thumbnails: JPEG for an item with an image, 404 without */
  item_path(path, sizeof path, "cat", "/thumbnail");
  r = hreq(&c, "GET", path, NULL, NULL, 0);
  assert_int_equal(r.status, 200);
  assert_non_null(strcasestr(r.headers, "Content-Type: image/jpeg"));
  assert_true(r.body_len > 100 && (unsigned char)r.body[0] == 0xff &&
              (unsigned char)r.body[1] == 0xd8);
  hresp_free(&r);
  item_path(path, sizeof path, "fox", "/thumbnail");
  r = hjson(&c, "GET", path, 0, NULL);
  expect_error(&r, 404, "not_found", NULL);
  hresp_free(&r);
  r = hjson(&c, "GET", "/v1/items/nosuch", 0, NULL);
  expect_error(&r, 404, "not_found", NULL);
  hresp_free(&r);

  /* writes: POST adds (409 when it exists), PUT replaces, PATCH updates */
  r = hjson(&c, "POST", "/v1/items/cat", 0, "{\"text\":\"another cat\"}");
  expect_error(&r, 409, "conflict", "key");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/items/new", 201, "{\"text\":\"a new thing\"}");
  assert_string_equal(json_string_value(json_object_get(r.json, "result")),
                      "created");
  hresp_free(&r);
  r = hjson(&c, "PUT", "/v1/items/new", 200,
            "{\"text\":\"a newer thing\",\"meta\":{\"n\":99}}");
  assert_string_equal(json_string_value(json_object_get(r.json, "result")),
                      "replaced");
  hresp_free(&r);
  r = hjson(&c, "PATCH", "/v1/items/new", 200,
            "{\"meta\":{\"n\":100,\"cat\":\"x\"}}");
  assert_string_equal(json_string_value(json_object_get(r.json, "result")),
                      "updated");
  hresp_free(&r);
  r = hjson(&c, "GET", "/v1/items/new", 200, NULL);
  assert_string_equal(json_string_value(json_object_get(r.json, "caption")),
                      "a newer thing");
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(r.json, "meta"), "n")), 100);
  hresp_free(&r);
  r = hjson(&c, "PATCH", "/v1/items/nosuch", 0, "{\"meta\":{}}");
  expect_error(&r, 404, "not_found", NULL);
  hresp_free(&r);
  r = hjson(&c, "DELETE", "/v1/items/new", 200, NULL);
  assert_int_equal(json_integer_value(json_object_get(r.json, "deleted")), 1);
  hresp_free(&r);
  r = hjson(&c, "DELETE", "/v1/items/new", 0, NULL);
  expect_error(&r, 404, "not_found", NULL);
  hresp_free(&r);

  /* scan: every key once, across pages */
  int seen = 0;
  char cursor[32] = "0";
  do {
    char q[96];
    snprintf(q, sizeof q, "/v1/scan?cursor=%s&count=3", cursor);
    r = hjson(&c, "GET", q, 200, NULL);
    seen += (int)json_array_size(json_object_get(r.json, "keys"));
    snprintf(cursor, sizeof cursor, "%s",
             json_string_value(json_object_get(r.json, "cursor")));
    hresp_free(&r);
  } while (strcmp(cursor, "0"));
  assert_int_equal(seen, NITEMS);

  /* search: GET by text, POST JSON by image, multipart, a raw image */
  r = hjson(&c, "GET", "/v1/search?text=a+photo+of+a+cat&k=3&fields=caption,n",
            200, NULL);
  json_t *hits = json_object_get(r.json, "hits");
  assert_int_equal(json_array_size(hits), 3);
  json_t *h0 = json_array_get(hits, 0);
  assert_string_equal(json_string_value(json_object_get(h0, "key")), "cat");
  json_t *hf = json_object_get(h0, "fields");
  assert_string_equal(json_string_value(json_object_get(hf, "caption")),
                      "a photo of a cat");
  assert_int_equal(json_integer_value(json_object_get(hf, "n")), 1);
  assert_string_equal(json_string_value(json_object_get(h0, "thumbnail")),
                      "/v1/items/cat/thumbnail");
  assert_true(json_is_number(json_object_get(r.json, "took_ms")));
  hresp_free(&r);
  /* a thumbnail URL only for the items that have one */
  r = hjson(&c, "GET", "/v1/search?text=fox&k=20&fields=", 200, NULL);
  hits = json_object_get(r.json, "hits");
  assert_int_equal(json_array_size(hits), NITEMS);
  for (size_t i = 0; i < json_array_size(hits); i++) {
    json_t *h = json_array_get(hits, i);
    const char *key = json_string_value(json_object_get(h, "key"));
    int with_image = 0;
    for (int j = 0; j < NITEMS; j++)
      if (!strcmp(items[j].key, key))
        with_image = items[j].image != NULL;
    json_t *th = json_object_get(h, "thumbnail");
    assert_int_equal(json_object_size(json_object_get(h, "fields")), 0);
    if (!with_image) {
      if (!json_is_null(th))
        fail_msg("%s has no image, thumbnail %s", key, json_string_value(th));
      continue;
    }
    char want_path[256];
    item_path(want_path, sizeof want_path, key, "/thumbnail");
    assert_string_equal(json_string_value(th), want_path);
    hresp t = hreq(&c, "GET", want_path, NULL, NULL, 0);
    assert_int_equal(t.status, 200);
    hresp_free(&t);
  }
  hresp_free(&r);

  size_t ilen;
  char *img = fixture("gray.jpg", &ilen);
  char *img64 = base64(img, ilen);
  r = hjson(&c, "POST", "/v1/search", 200,
            "{\"image\":\"%s\",\"k\":2,\"target\":\"image\"}", img64);
  h0 = json_array_get(json_object_get(r.json, "hits"), 0);
  assert_string_equal(json_string_value(json_object_get(h0, "key")),
                      "saturn");
  assert_true(json_number_value(json_object_get(h0, "score")) > 0.999);
  hf = json_object_get(h0, "fields");
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(hf, "meta"), "n")), 4);
  hresp_free(&r);

  const char *bnd = "xYzBoUnDaRy";
  size_t mcap = ilen + 1024;
  char *mp = malloc(mcap);
  int mn = snprintf(mp, mcap, "--%s\r\nContent-Disposition: form-data; "
                    "name=\"k\"\r\n\r\n1\r\n--%s\r\nContent-Disposition: "
                    "form-data; name=\"fields\"\r\n\r\ncaption,cat\r\n--%s\r\n"
                    "Content-Disposition: form-data; name=\"image\"; "
                    "filename=\"g.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n",
                    bnd, bnd, bnd);
  memcpy(mp + mn, img, ilen);
  mn += (int)ilen;
  mn += snprintf(mp + mn, mcap - (size_t)mn, "\r\n--%s--\r\n", bnd);
  char hdr[128];
  snprintf(hdr, sizeof hdr, "Content-Type: multipart/form-data; "
           "boundary=%s\r\n", bnd);
  r = hreq(&c, "POST", "/v1/search", hdr, mp, (size_t)mn);
  assert_int_equal(r.status, 200);
  hits = json_object_get(r.json, "hits");
  assert_int_equal(json_array_size(hits), 1);
  h0 = json_array_get(hits, 0);
  assert_string_equal(json_string_value(json_object_get(h0, "key")),
                      "saturn");
  assert_string_equal(json_string_value(json_object_get(json_object_get(
                          h0, "fields"), "cat")), "space");
  hresp_free(&r);
  free(mp);
  r = hreq(&c, "POST", "/v1/search?k=1&target=image",
           "Content-Type: image/jpeg\r\n", img, ilen);
  assert_int_equal(r.status, 200);
  h0 = json_array_get(json_object_get(r.json, "hits"), 0);
  assert_string_equal(json_string_value(json_object_get(h0, "key")),
                      "saturn");
  hresp_free(&r);

  /* embed: text and image against the model in this process */
  r = hjson(&c, "POST", "/v1/embed", 200, "{\"text\":\"a photo of a cat\"}");
  assert_int_equal(json_integer_value(json_object_get(r.json, "dim")), g_dim);
  json_t *vec = json_object_get(r.json, "vector");
  cap = "a photo of a cat";
  VLM_CHECK(vlm_clip_encode_texts(g_clip, &cap, 1, 0, want));
  for (int i = 0; i < g_dim; i++)
    assert_true(fabs(json_number_value(json_array_get(vec, (size_t)i)) -
                     want[i]) < 1e-5);
  hresp_free(&r);
  r = hreq(&c, "POST", "/v1/embed", "Content-Type: image/jpeg\r\n", img,
           ilen);
  assert_int_equal(r.status, 200);
  vec = json_object_get(r.json, "vector");
  const void *ip = img;
  VLM_CHECK(vlm_clip_encode_image_buffers(g_clip, &ip, &ilen, 1, 0, want));
  for (int i = 0; i < g_dim; i++)
    assert_true(fabs(json_number_value(json_array_get(vec, (size_t)i)) -
                     want[i]) < 1e-5);
  hresp_free(&r);
  free(img64);
  free(img);

  /* eval: recall per direction and the rank histogram */
  r = hjson(&c, "POST", "/v1/eval", 200,
            "{\"k\":[1,5],\"direction\":\"t2i\"}");
  json_t *t2i = json_object_get(r.json, "text_to_image");
  assert_non_null(t2i);
  assert_null(json_object_get(r.json, "image_to_text"));
  long long q = json_integer_value(json_object_get(t2i, "queries"));
  assert_int_equal(q, 5); /* the items with an image and a text */
  json_t *hist = json_object_get(t2i, "rank_histogram");
  json_t *counts = json_object_get(hist, "counts");
  assert_int_equal(json_array_size(json_object_get(hist, "le")) + 1,
                   json_array_size(counts));
  long long total = 0;
  for (size_t i = 0; i < json_array_size(counts); i++)
    total += json_integer_value(json_array_get(counts, i));
  assert_int_equal(total, q);
  /* recall@1 is the first bucket's share */
  assert_true(fabs(json_number_value(json_object_get(t2i, "recall@1")) -
                   (double)json_integer_value(json_array_get(counts, 0)) /
                       (double)q) < 1e-12);
  hresp_free(&r);

  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

/* ======================================================================
 * HTTP answers what RESP answers
 * ==================================================================== */

/* RESP2 SEARCH reply (key, score, field, value...) against the HTTP hits:
 * the same keys in the same order, the same float scores exactly. */
static void compare_search(redisReply *rr, hresp *hr, const char *what) {
  if (rr->type != REDIS_REPLY_ARRAY)
    fail_msg("%s: RESP: %s", what, rr->str ? rr->str : "not an array");
  json_t *hits = json_object_get(hr->json, "hits");
  if (hr->status != 200 || !hits)
    fail_msg("%s: HTTP %d: %s", what, hr->status, hr->body);
  if (json_array_size(hits) != rr->elements)
    fail_msg("%s: %zu hits over HTTP, %zu over RESP", what,
             json_array_size(hits), rr->elements);
  assert_true(rr->elements > 0);
  for (size_t i = 0; i < rr->elements; i++) {
    redisReply *e = rr->element[i];
    json_t *h = json_array_get(hits, i);
    const char *hk = json_string_value(json_object_get(h, "key"));
    if (strcmp(e->element[0]->str, hk))
      fail_msg("%s: hit %zu: %s over RESP, %s over HTTP", what, i,
               e->element[0]->str, hk);
    float rs = strtof(e->element[1]->str, NULL);
    float hs = (float)json_number_value(json_object_get(h, "score"));
    if (rs != hs)
      fail_msg("%s: hit %zu (%s): score %.9g over RESP, %.9g over HTTP",
               what, i, hk, (double)rs, (double)hs);
    for (size_t f = 2; f + 1 < e->elements; f += 2) {
      json_t *hv = json_object_get(json_object_get(h, "fields"),
                                   e->element[f]->str);
      redisReply *rv = e->element[f + 1];
      if (rv->type == REDIS_REPLY_NIL) {
        assert_true(json_is_null(hv));
      } else if (!strcmp(e->element[f]->str, "meta")) {
        json_t *m = json_loads(rv->str, 0, NULL);
        assert_true(json_equal(m, hv));
        json_decref(m);
      } else if (rv->type == REDIS_REPLY_INTEGER) {
        assert_int_equal(json_integer_value(hv), rv->integer);
      } else {
        assert_string_equal(json_string_value(hv), rv->str);
      }
    }
  }
}

static void test_same_as_resp(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  hconn c = hopen(s.http);
  put_items(&c);
  redisContext *rc = hiredis(s.port);

  /* text, with a filter and typed fields */
  redisReply *rr = redisCommand(rc, "SEARCH TEXT %s K 5 FILTER %s RETURN 4 "
                                "caption source meta n", "a red car",
                                "n >= 2");
  hresp hr = hjson(&c, "POST", "/v1/search", 200,
                   "{\"text\":\"a red car\",\"k\":5,\"filter\":\"n >= 2\","
                   "\"fields\":[\"caption\",\"source\",\"meta\",\"n\"]}");
  compare_search(rr, &hr, "text search");
  freeReplyObject(rr);
  hresp_free(&hr);

  /* by key, target text; by vector */
  rr = redisCommand(rc, "SEARCH KEY dog K 4 TARGET TEXT RETURN 1 caption");
  hr = hjson(&c, "GET", "/v1/search?key=dog&k=4&target=text&fields=caption",
             200, NULL);
  compare_search(rr, &hr, "key search");
  freeReplyObject(rr);
  hresp_free(&hr);
  float qv[1024];
  const char *qt = "space";
  VLM_CHECK(vlm_clip_encode_texts(g_clip, &qt, 1, 0, qv));
  char *vjson = malloc(16 * (size_t)g_dim + 64);
  int vn = sprintf(vjson, "{\"vector\":[");
  for (int i = 0; i < g_dim; i++)
    vn += sprintf(vjson + vn, "%s%.9g", i ? "," : "", (double)qv[i]);
  sprintf(vjson + vn, "],\"k\":6,\"exact\":true,\"fields\":[\"cat\"]}");
  rr = redisCommand(rc, "SEARCH VECTOR %b K 6 EXACT RETURN 1 cat", qv,
                    (size_t)g_dim * sizeof(float));
  hr = hjson(&c, "POST", "/v1/search", 200, "%s", vjson);
  compare_search(rr, &hr, "vector search");
  freeReplyObject(rr);
  hresp_free(&hr);
  free(vjson);

  /* by image, hybrid */
  size_t ilen;
  char *img = fixture("rgb.png", &ilen);
  char *img64 = base64(img, ilen);
  rr = redisCommand(rc, "SEARCH IMAGE %b K 3 RETURN 1 caption", img, ilen);
  hr = hjson(&c, "POST", "/v1/search", 200,
             "{\"image\":\"%s\",\"k\":3,\"fields\":[\"caption\"]}", img64);
  compare_search(rr, &hr, "image search");
  freeReplyObject(rr);
  hresp_free(&hr);
  rr = redisCommand(rc, "SEARCH TEXT %s K 4 HYBRID %s RETURN 0", "a planet",
                    "ringed");
  hr = hjson(&c, "POST", "/v1/search", 200,
             "{\"text\":\"a planet\",\"k\":4,\"hybrid\":\"ringed\","
             "\"fields\":[]}");
  compare_search(rr, &hr, "hybrid search");
  freeReplyObject(rr);
  hresp_free(&hr);
  /* hybrid with a weight, and the search effort (ef, nprobe) */
  rr = redisCommand(rc, "SEARCH TEXT %s K 5 HYBRID %s WEIGHT 0.25 EF 16 "
                    "NPROBE 2 RETURN 1 caption", "an animal", "photo");
  hr = hjson(&c, "POST", "/v1/search", 200,
             "{\"text\":\"an animal\",\"k\":5,\"hybrid\":\"photo\","
             "\"weight\":0.25,\"ef\":16,\"nprobe\":2,"
             "\"fields\":[\"caption\"]}");
  compare_search(rr, &hr, "weighted hybrid search with effort");
  freeReplyObject(rr);
  hresp_free(&hr);
  /* collapse: a second copy of the cat's image folds into one hit */
  {
    size_t clen;
    char *cimg = fixture("photo_rgb.jpg", &clen);
    char *c64 = base64(cimg, clen);
    hr = hjson(&c, "PUT", "/v1/items/cat2", 201,
               "{\"text\":\"the same cat again\",\"image\":\"%s\"}", c64);
    hresp_free(&hr);
    free(c64);
    free(cimg);
  }
  rr = redisCommand(rc, "SEARCH KEY cat K 4 TARGET IMAGE COLLAPSE 0.99 "
                    "RETURN 2 caption similar");
  hr = hjson(&c, "GET", "/v1/search?key=cat&k=4&target=image&collapse=0.99"
             "&fields=caption,similar", 200, NULL);
  compare_search(rr, &hr, "collapsed search");
  long long folded = 0;
  json_t *chits = json_object_get(hr.json, "hits");
  for (size_t i = 0; i < json_array_size(chits); i++) {
    json_t *h = json_array_get(chits, i);
    const char *hk = json_string_value(json_object_get(h, "key"));
    if (!strcmp(hk, "cat2"))
      fail_msg("collapsed search: cat2 not folded into cat");
    folded += json_integer_value(
        json_object_get(json_object_get(h, "fields"), "similar"));
  }
  assert_int_equal(folded, 1);
  freeReplyObject(rr);
  hresp_free(&hr);
  /* the query options: a score floor, a page, groups by a field */
  rr = redisCommand(rc, "SEARCH TEXT %s K 3 OFFSET 2 MINSCORE -0.5 "
                    "RETURN 1 caption", "an animal");
  hr = hjson(&c, "POST", "/v1/search", 200,
             "{\"text\":\"an animal\",\"k\":3,\"offset\":2,"
             "\"min_score\":-0.5,\"fields\":[\"caption\"]}");
  compare_search(rr, &hr, "paged search with a score floor");
  assert_int_equal(json_array_size(json_object_get(hr.json, "hits")), 3);
  freeReplyObject(rr);
  hresp_free(&hr);
  rr = redisCommand(rc, "SEARCH TEXT %s K 4 GROUPBY cat PER 1 RETURN 1 cat",
                    "an animal");
  hr = hjson(&c, "GET", "/v1/search?text=an%20animal&k=4&group_by=cat"
             "&per=1&fields=cat", 200, NULL);
  compare_search(rr, &hr, "grouped search");
  {
    json_t *gh = json_object_get(hr.json, "hits");
    for (size_t i = 0; i < json_array_size(gh); i++)
      for (size_t j = 0; j < i; j++) {
        json_t *a = json_object_get(
            json_object_get(json_array_get(gh, i), "fields"), "cat");
        json_t *b = json_object_get(
            json_object_get(json_array_get(gh, j), "fields"), "cat");
        if (a && b && json_equal(a, b))
          fail_msg("grouped search: two hits with one cat value");
      }
  }
  freeReplyObject(rr);
  hresp_free(&hr);
  hr = hjson(&c, "GET", "/v1/search?text=a&per=2", 400, NULL);
  expect_error(&hr, 400, "bad_request", "per");
  hresp_free(&hr);
  hr = hjson(&c, "DELETE", "/v1/items/cat2", 200, NULL);
  hresp_free(&hr);

  /* embed: the same floats */
  rr = redisCommand(rc, "EMBED IMAGE %b ARRAY", img, ilen);
  hr = hreq(&c, "POST", "/v1/embed", "Content-Type: image/png\r\n", img,
            ilen);
  assert_int_equal(hr.status, 200);
  json_t *vec = json_object_get(hr.json, "vector");
  assert_int_equal(rr->elements, json_array_size(vec));
  for (size_t i = 0; i < rr->elements; i++)
    assert_true(strtof(rr->element[i]->str, NULL) ==
                (float)json_number_value(json_array_get(vec, i)));
  freeReplyObject(rr);
  hresp_free(&hr);
  free(img);
  free(img64);

  /* get: the same fields */
  rr = redisCommand(rc, "GET car");
  hr = hjson(&c, "GET", "/v1/items/car", 200, NULL);
  assert_int_equal(rr->elements, 8);
  for (size_t i = 0; i < rr->elements; i += 2) {
    json_t *hv = json_object_get(hr.json, rr->element[i]->str);
    if (!strcmp(rr->element[i]->str, "meta")) {
      json_t *m = json_loads(rr->element[i + 1]->str, 0, NULL);
      assert_true(json_equal(m, hv));
      json_decref(m);
    } else {
      assert_string_equal(json_string_value(hv), rr->element[i + 1]->str);
    }
  }
  freeReplyObject(rr);
  hresp_free(&hr);

  /* eval: the same numbers */
  rr = redisCommand(rc, "VLM.EVAL K 1,2,5");
  hr = hjson(&c, "POST", "/v1/eval", 200, "{\"k\":[1,2,5]}");
  assert_int_equal(rr->type, REDIS_REPLY_ARRAY);
  for (size_t i = 0; i < rr->elements; i += 2) {
    const char *name = rr->element[i]->str;
    redisReply *rv = rr->element[i + 1];
    json_t *hv = json_object_get(hr.json, name);
    if (rv->type == REDIS_REPLY_INTEGER) {
      assert_int_equal(json_integer_value(hv), rv->integer);
      continue;
    }
    for (size_t j = 0; j < rv->elements; j += 2) {
      const char *m = rv->element[j]->str;
      redisReply *x = rv->element[j + 1];
      json_t *hx = json_object_get(hv, m);
      if (strstr(m, "_ms_per_query"))
        continue; /* timings of two runs */
      if (x->type == REDIS_REPLY_INTEGER)
        assert_int_equal(json_integer_value(hx), x->integer);
      else if (x->type == REDIS_REPLY_STRING)
        assert_true(strtod(x->str, NULL) == json_number_value(hx));
      else if (!strcmp(m, "rank_histogram")) {
        json_t *counts = json_object_get(hx, "counts");
        redisReply *rc2 = x->element[3];
        assert_int_equal(rc2->elements, json_array_size(counts));
        for (size_t k = 0; k < rc2->elements; k++)
          assert_int_equal(rc2->element[k]->integer,
                           json_integer_value(json_array_get(counts, k)));
      }
    }
  }
  freeReplyObject(rr);
  hresp_free(&hr);

  /* info: INFO's Db and Model sections, field for field (numbers as
   * numbers), and the server's stats beside them; saved first, so that
   * no checkpoint moves the index's counts between the two */
  rr = redisCommand(rc, "SAVE");
  freeReplyObject(rr);
  rr = redisCommand(rc, "INFO");
  hr = hjson(&c, "GET", "/v1/info", 200, NULL);
  assert_int_equal(rr->type, REDIS_REPLY_STRING);
  json_t *sections = json_object_get(hr.json, "sections");
  assert_true(json_is_object(json_object_get(sections, "stats")));
  assert_true(json_is_integer(json_object_get(json_object_get(sections,
                                                "stats"),
                                              "total_commands_processed")));
  int compared = 0;
  json_t *sec = NULL;
  for (char *line = strtok(rr->str, "\r\n"); line;
       line = strtok(NULL, "\r\n")) {
    if (line[0] == '#') {
      sec = !strcmp(line, "# Db") || !strcmp(line, "# Model")
                ? json_object_get(sections, !strcmp(line, "# Db") ? "db"
                                                                  : "model")
                : NULL;
      if (!strcmp(line, "# Db") || !strcmp(line, "# Model"))
        assert_non_null(sec);
      continue;
    }
    char *colon = strchr(line, ':');
    if (!sec || !colon)
      continue;
    *colon = '\0';
    json_t *hv = json_object_get(sec, line);
    const char *rv = colon + 1;
    char *end;
    double d = strtod(rv, &end);
    if (!hv)
      fail_msg("/v1/info: no %s", line);
    if (json_is_number(hv)) {
      if (*end || d != json_number_value(hv))
        fail_msg("/v1/info %s: %g over HTTP, %s over RESP", line,
                 json_number_value(hv), rv);
    } else if (strcmp(json_string_value(hv), rv)) {
      fail_msg("/v1/info %s: %s over HTTP, %s over RESP", line,
               json_string_value(hv), rv);
    }
    compared++;
  }
  assert_true(compared >= 15);
  assert_int_equal(json_integer_value(json_object_get(hr.json, "items")),
                   json_integer_value(json_object_get(
                       json_object_get(sections, "db"), "items")));
  freeReplyObject(rr);
  hresp_free(&hr);

  redisFree(rc);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

/* ======================================================================
 * Keep-alive and pipelining
 * ==================================================================== */

static void test_pipelining(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  hconn c = hopen(s.http);

  /* three requests in one write, answered in order, the GET after the
   * PUT it follows */
  const char *body = "{\"text\":\"pipelined\",\"meta\":{\"n\":42}}";
  char batch[1024];
  int n = snprintf(batch, sizeof batch,
                   "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                   "PUT /v1/items/p1 HTTP/1.1\r\nHost: t\r\nContent-Type: "
                   "application/json\r\nContent-Length: %zu\r\n\r\n%s"
                   "GET /v1/items/p1 HTTP/1.1\r\nHost: t\r\n\r\n",
                   strlen(body), body);
  send_all(c.fd, batch, (size_t)n);
  hresp r;
  assert_int_equal(hread(&c, &r), 0);
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "\"ok\""));
  hresp_free(&r);
  assert_int_equal(hread(&c, &r), 0);
  assert_int_equal(r.status, 201);
  hresp_free(&r);
  assert_int_equal(hread(&c, &r), 0);
  assert_int_equal(r.status, 200);
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(r.json, "meta"), "n")), 42);
  hresp_free(&r);

  /* 200 requests in one write: writes, reads and errors interleaved,
   * each answer in its place */
  enum { N = 200 };
  char *big = malloc((size_t)N * 256), *p = big;
  for (int i = 0; i < N; i++) {
    char b[96];
    switch (i % 4) {
    case 0:
      snprintf(b, sizeof b, "{\"text\":\"item %d\",\"meta\":{\"n\":%d}}", i,
               i);
      p += sprintf(p, "PUT /v1/items/k%d HTTP/1.1\r\nHost: t\r\n"
                   "Content-Length: %zu\r\n\r\n%s", i, strlen(b), b);
      break;
    case 1:
      p += sprintf(p, "GET /v1/items/k%d HTTP/1.1\r\nHost: t\r\n\r\n", i - 1);
      break;
    case 2:
      p += sprintf(p, "GET /v1/search?text=item+%d&k=0 HTTP/1.1\r\nHost: t"
                   "\r\n\r\n", i);
      break;
    default:
      p += sprintf(p, "DELETE /v1/items/k%d HTTP/1.1\r\nHost: t\r\n\r\n",
                   i - 3);
    }
  }
  send_all(c.fd, big, (size_t)(p - big));
  free(big);
  for (int i = 0; i < N; i++) {
    if (hread(&c, &r) < 0)
      fail_msg("response %d: connection closed", i);
    switch (i % 4) {
    case 0:
      if (r.status != 201)
        fail_msg("PUT %d: %d %s", i, r.status, r.body);
      break;
    case 1:
      assert_int_equal(r.status, 200);
      assert_int_equal(json_integer_value(json_object_get(
                           json_object_get(r.json, "meta"), "n")), i - 1);
      break;
    case 2:
      expect_error(&r, 400, "bad_request", "k");
      break;
    default:
      assert_int_equal(r.status, 200);
    }
    hresp_free(&r);
  }
  /* Connection: close is honoured after its response */
  hsend(&c, "GET", "/healthz", "Connection: close\r\n", NULL, 0);
  assert_int_equal(hread(&c, &r), 0);
  assert_int_equal(r.status, 200);
  assert_non_null(strcasestr(r.headers, "Connection: close"));
  hresp_free(&r);
  expect_closed(&c);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

/* ======================================================================
 * Limits, malformed input, authentication
 * ==================================================================== */

static void test_limits(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  const char *extra[] = {"--max-request-bytes", "4096", "--timeout", "1",
                         NULL};
  start_server(&s, extra);

  /* 413: a body over --max-request-bytes, then close */
  hconn c = hopen(s.http);
  char *big = malloc(5000);
  memset(big, 'a', 5000);
  hresp r = hreq(&c, "POST", "/v1/search", "Content-Type: application/json"
                 "\r\n", big, 5000);
  expect_error(&r, 413, "payload_too_large", NULL);
  hresp_free(&r);
  expect_closed(&c);
  hclose(&c);
  /* a chunked body over the limit too */
  c = hopen(s.http);
  const char *ch = "POST /v1/search HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:"
                   " chunked\r\n\r\n1000\r\n";
  send_all(c.fd, ch, strlen(ch));
  send_all(c.fd, big, 4096);
  send_all(c.fd, "\r\n1000\r\n", 8);
  send_all(c.fd, big, 4096);
  assert_int_equal(hread(&c, &r), 0);
  expect_error(&r, 413, "payload_too_large", NULL);
  hresp_free(&r);
  expect_closed(&c);
  hclose(&c);
  free(big);

  /* 414: a URL over 8 KiB */
  c = hopen(s.http);
  char *url = malloc(9000);
  memcpy(url, "/v1/search?text=", 16);
  memset(url + 16, 'x', 9000 - 17);
  url[8999] = '\0';
  r = hreq(&c, "GET", url, NULL, NULL, 0);
  expect_error(&r, 414, "uri_too_long", NULL);
  hresp_free(&r);
  expect_closed(&c);
  hclose(&c);
  free(url);

  /* 431: a header over the 64 KiB total, and 101 header fields */
  c = hopen(s.http);
  char *hdr = malloc(70 * 1024);
  int n = sprintf(hdr, "X-Big: ");
  memset(hdr + n, 'y', 70000);
  strcpy(hdr + n + 70000 - 20, "\r\n");
  r = hreq(&c, "GET", "/healthz", hdr, NULL, 0);
  expect_error(&r, 431, "header_fields_too_large", NULL);
  hresp_free(&r);
  expect_closed(&c);
  hclose(&c);
  n = 0;
  for (int i = 0; i < 101; i++)
    n += sprintf(hdr + n, "X-H%d: v\r\n", i);
  c = hopen(s.http);
  r = hreq(&c, "GET", "/healthz", hdr, NULL, 0);
  expect_error(&r, 431, "header_fields_too_large", NULL);
  hresp_free(&r);
  expect_closed(&c);
  hclose(&c);
  free(hdr);

  /* idle timeout: a keep-alive connection left alone is closed; one in
   * use stays */
  c = hopen(s.http);
  r = hjson(&c, "GET", "/healthz", 200, NULL);
  hresp_free(&r);
  struct timespec ts = {2, 500000000};
  nanosleep(&ts, NULL);
  expect_closed(&c);
  hclose(&c);

  stop_server(&s);
  server_done(&s);
}

static void test_malformed(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  hconn c = hopen(s.http);
  hresp r;

  /* errors that leave the connection open, each naming what is wrong */
  r = hjson(&c, "POST", "/v1/search", 0, "{\"text\": ");
  expect_error(&r, 400, "bad_request", "body");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "[1,2]");
  expect_error(&r, 400, "bad_request", "body");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"k\":3}");
  expect_error(&r, 400, "bad_request", "text");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"text\":\"a\",\"key\":\"b\"}");
  expect_error(&r, 400, "bad_request", NULL);
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"text\":\"a\",\"kk\":3}");
  expect_error(&r, 400, "bad_request", "kk");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"text\":\"a\",\"k\":\"3\"}");
  expect_error(&r, 400, "bad_request", "k");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"text\":\"a\",\"k\":0}");
  expect_error(&r, 400, "bad_request", "k");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"text\":\"a\",\"target\":\"x\"}");
  expect_error(&r, 400, "bad_request", "target");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"vector\":[1,2,3]}");
  expect_error(&r, 400, "bad_request", "vector");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"image\":\"!!notbase64!!\"}");
  expect_error(&r, 400, "bad_request", "image");
  hresp_free(&r);
  /* refused by the command itself: its message, the member named */
  r = hjson(&c, "POST", "/v1/search", 0,
            "{\"text\":\"a\",\"collapse\":2}");
  expect_error(&r, 400, "bad_request", "collapse");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0,
            "{\"text\":\"a\",\"fields\":[\"nosuch\"]}");
  expect_error(&r, 400, "bad_request", "fields");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"key\":\"missing\"}");
  expect_error(&r, 404, "not_found", NULL);
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0, "{\"image\":\"aGVsbG8=\"}");
  expect_error(&r, 400, "bad_request", "image");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/search", 0,
            "{\"text\":\"a\",\"filter\":\"n >>> 3 ((\"}");
  expect_error(&r, 400, "bad_request", NULL);
  hresp_free(&r);
  r = hjson(&c, "PUT", "/v1/items/x", 0, "{\"meta\":{\"n\":1}}");
  expect_error(&r, 400, "bad_request", "text");
  hresp_free(&r);
  r = hjson(&c, "PUT", "/v1/items/x", 0, "{\"text\":\"t\",\"meta\":[1]}");
  expect_error(&r, 400, "bad_request", "meta");
  hresp_free(&r);
  r = hjson(&c, "PUT", "/v1/items/x", 0, "{\"text\":\"t\",\"text_vec\":[1]}");
  expect_error(&r, 400, "bad_request", "text_vec");
  hresp_free(&r);
  r = hjson(&c, "PATCH", "/v1/items/x", 0, "{}");
  expect_error(&r, 400, "bad_request", NULL);
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/embed", 0, "{}");
  expect_error(&r, 400, "bad_request", "text");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/eval", 0, "{\"direction\":\"up\"}");
  expect_error(&r, 400, "bad_request", "direction");
  hresp_free(&r);
  r = hjson(&c, "GET", "/v1/scan?cursor=abc", 0, NULL);
  expect_error(&r, 400, "bad_request", "cursor");
  hresp_free(&r);
  r = hjson(&c, "GET", "/v1/nosuch", 0, NULL);
  expect_error(&r, 404, "not_found", NULL);
  hresp_free(&r);
  r = hjson(&c, "DELETE", "/v1/search", 0, NULL);
  expect_error(&r, 405, "method_not_allowed", NULL);
  hresp_free(&r);
  r = hreq(&c, "POST", "/v1/search", "Content-Type: text/csv\r\n", "a,b", 3);
  expect_error(&r, 415, "unsupported_media_type", NULL);
  hresp_free(&r);
  r = hjson(&c, "GET", "/v1/items/%zz", 0, NULL);
  expect_error(&r, 400, "bad_request", "key");
  hresp_free(&r);
  /* the connection still serves */
  r = hjson(&c, "GET", "/healthz", 200, NULL);
  hresp_free(&r);
  hclose(&c);

  /* a malformed frame: 400, then close */
  static const char *garbage[] = {
      "BLAH\r\n\r\n", "GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
      "GET /healthz HTTP/1.1\r\nContent-Length: x\r\n\r\n",
      "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS hello */
      "POST /v1/search HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"};
  for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
    c = hopen(s.http);
    send_all(c.fd, garbage[i], strlen(garbage[i]));
    if (hread(&c, &r) < 0)
      fail_msg("garbage %zu: closed without a response", i);
    expect_error(&r, 400, "bad_request", NULL);
    hresp_free(&r);
    expect_closed(&c);
    hclose(&c);
  }
  /* HEAD is not served (every response would need its body left off):
   * 405 with Allow and no body, then close */
  c = hopen(s.http);
  r = hreq(&c, "HEAD", "/healthz", NULL, NULL, 0);
  assert_int_equal(r.status, 405);
  assert_non_null(strcasestr(r.headers, "Allow: GET"));
  assert_int_equal(r.body_len, 0);
  hresp_free(&r);
  expect_closed(&c);
  hclose(&c);
  /* a client that leaves mid-request does not disturb the server */
  c = hopen(s.http);
  send_all(c.fd, "POST /v1/search HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
           51);
  hclose(&c);
  c = hopen(s.http);
  r = hjson(&c, "GET", "/readyz", 200, NULL);
  hresp_free(&r);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

static void test_auth(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  const char *extra[] = {"--requirepass", "s3cret", NULL};
  start_server(&s, extra);
  hconn c = hopen(s.http);
  hresp r = hjson(&c, "GET", "/healthz", 200, NULL);
  hresp_free(&r);
  r = hjson(&c, "GET", "/readyz", 200, NULL);
  hresp_free(&r);
  static const char *closed[] = {"/v1/info", "/metrics", "/openapi.json",
                                 "/v1/items/x", "/v1/scan"};
  for (size_t i = 0; i < sizeof closed / sizeof closed[0]; i++) {
    r = hreq(&c, "GET", closed[i], NULL, NULL, 0);
    expect_error(&r, 401, "unauthorized", NULL);
    assert_non_null(strcasestr(r.headers, "WWW-Authenticate: Bearer"));
    hresp_free(&r);
  }
  r = hreq(&c, "GET", "/v1/info", "Authorization: Bearer s3creT\r\n", NULL,
           0);
  expect_error(&r, 401, "unauthorized", NULL);
  hresp_free(&r);
  r = hreq(&c, "GET", "/v1/info", "Authorization: Basic czNjcmV0\r\n", NULL,
           0);
  expect_error(&r, 401, "unauthorized", NULL);
  hresp_free(&r);
  r = hreq(&c, "PUT", "/v1/items/a", "Authorization: Bearer s3cret\r\n",
           "{\"text\":\"hi\"}", 13);
  assert_int_equal(r.status, 201);
  hresp_free(&r);
  r = hreq(&c, "GET", "/v1/info", "Authorization: bearer s3cret\r\n", NULL,
           0);
  assert_int_equal(r.status, 200);
  assert_int_equal(json_integer_value(json_object_get(r.json, "items")), 1);
  hresp_free(&r);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

/* ======================================================================
 * Batch put: one durable batch, all or nothing
 * ==================================================================== */

static long long info_items(hconn *c) {
  hresp r = hjson(c, "GET", "/v1/info", 200, NULL);
  long long n = json_integer_value(json_object_get(r.json, "items"));
  hresp_free(&r);
  return n;
}

static void test_batch(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  hconn c = hopen(s.http);
  size_t ilen;
  char *img = fixture("palette.png", &ilen);
  char *img64 = base64(img, ilen);
  free(img);

  /* refused while checking: nothing written, the item and member named */
  hresp r = hjson(&c, "POST", "/v1/items:batch", 0,
                  "{\"items\":[{\"key\":\"b1\",\"text\":\"one\"},"
                  "{\"key\":\"b2\",\"text\":\"two\",\"meta\":7}]}");
  expect_error(&r, 400, "bad_request", "items[1].meta");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/items:batch", 0,
            "{\"items\":[{\"key\":\"b1\",\"text\":\"one\"},"
            "{\"text\":\"two\"}]}");
  expect_error(&r, 400, "bad_request", "items[1].key");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/items:batch", 0,
            "{\"items\":[{\"key\":\"b1\",\"text\":\"one\"},"
            "{\"key\":\"b2\",\"text\":\"two\",\"image_vec\":[1,2]}]}");
  expect_error(&r, 400, "bad_request", "items[1].image_vec");
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/items:batch", 0, "{\"items\":[]}");
  expect_error(&r, 400, "bad_request", "items");
  hresp_free(&r);
  /* refused by the database at EXEC (an image that does not decode, the
   * third of three): nothing written */
  r = hjson(&c, "POST", "/v1/items:batch", 0,
            "{\"items\":[{\"key\":\"b1\",\"text\":\"one\"},"
            "{\"key\":\"b2\",\"text\":\"two\",\"image\":\"%s\"},"
            "{\"key\":\"b3\",\"text\":\"three\",\"image\":\"aGVsbG8=\"}]}",
            img64);
  if (r.status != 400)
    fail_msg("a batch with a bad image: %d %s", r.status, r.body);
  hresp_free(&r);
  assert_int_equal(info_items(&c), 0);
  r = hjson(&c, "GET", "/v1/items/b1", 0, NULL);
  expect_error(&r, 404, "not_found", NULL);
  hresp_free(&r);

  /* accepted: all of it, in one batch */
  r = hjson(&c, "POST", "/v1/items:batch", 200,
            "{\"items\":[{\"key\":\"b1\",\"text\":\"one\"},"
            "{\"key\":\"b2\",\"text\":\"two\",\"image\":\"%s\","
            "\"meta\":{\"n\":2}},{\"key\":\"b3\",\"text\":\"three\"}]}",
            img64);
  json_t *res = json_object_get(r.json, "results");
  assert_int_equal(json_array_size(res), 3);
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(res, 1), "key")), "b2");
  hresp_free(&r);
  assert_int_equal(info_items(&c), 3);
  r = hjson(&c, "GET", "/v1/items/b2/thumbnail", 0, NULL);
  assert_int_equal(r.status, 200);
  hresp_free(&r);
  /* mode add: existing keys reported, new ones created */
  r = hjson(&c, "POST", "/v1/items:batch", 200,
            "{\"mode\":\"add\",\"items\":[{\"key\":\"b1\",\"text\":\"x\"},"
            "{\"key\":\"b4\",\"text\":\"four\"}]}");
  res = json_object_get(r.json, "results");
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(res, 0), "result")), "exists");
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(res, 1), "result")), "created");
  hresp_free(&r);
  assert_int_equal(info_items(&c), 4);
  free(img64);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

/* key keeps exactly want (len bytes; NULL: none) in the database at dir. */
static void expect_kept(const char *dir, const char *key, const void *want,
                        size_t len) {
  vlm_db_open_options o = {.readonly = 1};
  vlm_db *db = NULL;
  if (vlm_db_open(dir, &o, &db) < 0)
    fail_msg("open %s: %s", dir, vlm_errmsg());
  uint8_t *got = NULL;
  size_t n = 0;
  if (vlm_db_get_image(db, key, &got, &n) < 0)
    fail_msg("get image %s: %s", key, vlm_errmsg());
  if (n != (want ? len : 0))
    fail_msg("key %s keeps %zu bytes, want %zu", key, n, want ? len : 0);
  if (want && memcmp(got, want, len))
    fail_msg("key %s: the kept bytes differ from the image sent", key);
  free(got);
  vlm_db_close(db);
}

/* The item writes are ADD / UPSERT / UPDATE, so a database that keeps
 * images keeps the image bytes of each of them: a JSON body's base64
 * image, a raw image body, a batch's item, a PATCH's new image (replacing
 * the old bytes); an item without an image keeps none. */
static void test_item_writes_keep_images(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  vlm_db *db = NULL;
  if (vlm_db_open(s.db, NULL, &db) < 0 || vlm_db_set_keep_images(db, 1) < 0)
    fail_msg("keep images: %s", vlm_errmsg());
  vlm_db_close(db);
  start_server(&s, NULL);
  hconn c = hopen(s.http);
  size_t plen, glen;
  char *png = fixture("palette.png", &plen), *jpg = fixture("gray.jpg", &glen);
  char *png64 = base64(png, plen), *jpg64 = base64(jpg, glen);
  hresp r = hjson(&c, "PUT", "/v1/items/h1", 0,
                  "{\"text\": \"palette\", \"image\": \"%s\"}", png64);
  assert_true(r.status == 200 || r.status == 201);
  hresp_free(&r);
  r = hreq(&c, "PUT", "/v1/items/h2", "Content-Type: image/jpeg\r\n", jpg,
           glen);
  assert_true(r.status == 200 || r.status == 201);
  hresp_free(&r);
  r = hjson(&c, "POST", "/v1/items:batch", 200,
            "{\"items\":[{\"key\":\"b1\",\"image\":\"%s\"},"
            "{\"key\":\"b2\",\"text\":\"words only\"}]}", jpg64);
  hresp_free(&r);
  expect_kept(s.db, "h1", png, plen);
  expect_kept(s.db, "h2", jpg, glen);
  expect_kept(s.db, "b1", jpg, glen);
  expect_kept(s.db, "b2", NULL, 0);
  r = hjson(&c, "PATCH", "/v1/items/h1", 200, "{\"image\": \"%s\"}", jpg64);
  hresp_free(&r);
  expect_kept(s.db, "h1", jpg, glen);
  r = hjson(&c, "PATCH", "/v1/items/h1", 200, "{\"meta\": {\"n\": 4}}");
  hresp_free(&r);
  expect_kept(s.db, "h1", jpg, glen);
  /* fetched back: GET /v1/items/{key}/image and GET key WITHIMAGE give
   * the kept bytes as stored, typed by their magic */
  r = hjson(&c, "PUT", "/v1/items/h3", 0,
            "{\"text\": \"palette\", \"image\": \"%s\"}", png64);
  hresp_free(&r);
  const struct {
    const char *key, *ctype;
    const char *bytes;
    size_t len;
  } want[] = {{"h1", "image/jpeg", jpg, glen}, {"h3", "image/png", png, plen}};
  for (int i = 0; i < 2; i++) {
    char path[64];
    snprintf(path, sizeof path, "/v1/items/%s/image", want[i].key);
    r = hreq(&c, "GET", path, NULL, NULL, 0);
    char ct[64];
    snprintf(ct, sizeof ct, "Content-Type: %s\r\n", want[i].ctype);
    if (r.status != 200 || !strstr(r.headers, ct) ||
        r.body_len != want[i].len || memcmp(r.body, want[i].bytes, r.body_len))
      fail_msg("GET %s: %d, %zu bytes, headers %s", path, r.status,
               r.body_len, r.headers);
    hresp_free(&r);
  }
  r = hreq(&c, "GET", "/v1/items/b2/image", NULL, NULL, 0);
  expect_error(&r, 404, "not_found", NULL);
  assert_non_null(strstr(r.body, "keeps no image"));
  hresp_free(&r);
  r = hreq(&c, "GET", "/v1/items/nosuch/image", NULL, NULL, 0);
  expect_error(&r, 404, "not_found", NULL);
  assert_non_null(strstr(r.body, "no item"));
  hresp_free(&r);
  r = hreq(&c, "DELETE", "/v1/items/h1/image", NULL, NULL, 0);
  assert_int_equal(r.status, 405);
  hresp_free(&r);
  redisContext *rc = hiredis(s.port);
  redisReply *g = redisCommand(rc, "GET h3 WITHIMAGE");
  assert_non_null(g);
  const redisReply *img = NULL;
  for (size_t j = 0; g->type == REDIS_REPLY_ARRAY && j + 1 < g->elements;
       j += 2)
    if (!strcmp(g->element[j]->str, "image"))
      img = g->element[j + 1];
  if (!img || img->type != REDIS_REPLY_STRING || img->len != plen ||
      memcmp(img->str, png, plen))
    fail_msg("GET h3 WITHIMAGE: no image field with the kept bytes");
  freeReplyObject(g);
  g = redisCommand(rc, "GET b2 WITHIMAGE"); /* keeps none: nil */
  img = NULL;
  for (size_t j = 0; g->type == REDIS_REPLY_ARRAY && j + 1 < g->elements;
       j += 2)
    if (!strcmp(g->element[j]->str, "image"))
      img = g->element[j + 1];
  assert_non_null(img);
  assert_int_equal(img->type, REDIS_REPLY_NIL);
  freeReplyObject(g);
  redisFree(rc);
  free(png);
  free(jpg);
  free(png64);
  free(jpg64);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

/* ======================================================================
 * Metrics
 * ==================================================================== */

/* The value of one sample line ("name{labels} value"), or -1. */
static double metric(const char *text, const char *series) {
  size_t n = strlen(series);
  for (const char *p = text; (p = strstr(p, series)); p += n)
    if ((p == text || p[-1] == '\n') && p[n] == ' ')
      return strtod(p + n + 1, NULL);
  return -1;
}

static void test_metrics(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  hconn c = hopen(s.http);
  redisContext *rc = hiredis(s.port);

  /* the traffic: counted below */
  for (int i = 0; i < 2; i++) {
    hresp r = hjson(&c, "POST", "/v1/items/m", i ? 409 : 201,
                    "{\"text\":\"metric item\",\"meta\":{\"n\":1}}");
    hresp_free(&r);
  }
  redisReply *rr = redisCommand(rc, "ADD m2 TEXT %s", "another");
  assert_int_equal(rr->integer, 1);
  freeReplyObject(rr);
  for (int i = 0; i < 3; i++) {
    hresp r = hjson(&c, "GET", "/v1/search?text=metric", 200, NULL);
    hresp_free(&r);
  }
  hresp r = hjson(&c, "POST", "/v1/search", 400,
                  "{\"text\":\"x\",\"filter\":\"nosuchfield = 1\"}");
  hresp_free(&r);
  for (int i = 0; i < 2; i++) {
    rr = redisCommand(rc, "SEARCH TEXT %s", "metric");
    assert_int_equal(rr->type, REDIS_REPLY_ARRAY);
    freeReplyObject(rr);
  }
  /* one embed each way */
  r = hjson(&c, "POST", "/v1/embed", 200, "{\"text\":\"metric\"}");
  hresp_free(&r);
  rr = redisCommand(rc, "EMBED TEXT %s", "metric");
  assert_int_equal(rr->type, REDIS_REPLY_STRING);
  freeReplyObject(rr);
  rr = redisCommand(rc, "SAVE");
  freeReplyObject(rr);

  r = hreq(&c, "GET", "/metrics", NULL, NULL, 0);
  assert_int_equal(r.status, 200);
  assert_non_null(strcasestr(r.headers, "Content-Type: text/plain; "
                                        "version=0.0.4"));
  const char *t = r.body;
  /* HTTP: 2 ADD (one refused with 409, which is a reply :0, no error),
   * 4 SEARCH (one refused by the database); RESP: 1 ADD, 2 SEARCH */
  assert_int_equal(metric(t, "vlmdb_requests_total{command=\"add\","
                             "protocol=\"http\"}"), 2);
  assert_int_equal(metric(t, "vlmdb_requests_total{command=\"add\","
                             "protocol=\"resp\"}"), 1);
  assert_int_equal(metric(t, "vlmdb_requests_total{command=\"search\","
                             "protocol=\"http\"}"), 4);
  assert_int_equal(metric(t, "vlmdb_requests_total{command=\"search\","
                             "protocol=\"resp\"}"), 2);
  assert_int_equal(metric(t, "vlmdb_request_errors_total{command=\"search\","
                             "protocol=\"http\"}"), 1);
  assert_int_equal(metric(t, "vlmdb_request_errors_total{command=\"search\","
                             "protocol=\"resp\"}"), 0);
  assert_int_equal(metric(t, "vlmdb_request_duration_seconds_count{command="
                             "\"search\"}"), 6);
  assert_int_equal(metric(t, "vlmdb_request_duration_seconds_bucket{command="
                             "\"search\",le=\"+Inf\"}"), 6);
  assert_int_equal(metric(t, "vlmdb_request_duration_seconds_count{command="
                             "\"add\"}"), 3);
  assert_int_equal(metric(t, "vlmdb_requests_total{command=\"embed\","
                             "protocol=\"http\"}"), 1);
  assert_int_equal(metric(t, "vlmdb_requests_total{command=\"embed\","
                             "protocol=\"resp\"}"), 1);
  assert_int_equal(metric(t, "vlmdb_request_duration_seconds_count{command="
                             "\"embed\"}"), 2);
  /* texts embedded: 2 + 1 adds, 6 searches, 2 embeds, each once through a
   * batch */
  assert_int_equal(metric(t, "vlmdb_embed_batch_size_sum{modality=\"text\"}"),
                   11);
  assert_int_equal(metric(t, "vlmdb_embed_batch_size_sum{modality=\"image\"}"),
                   0);
  assert_true(metric(t, "vlmdb_embed_batch_size_count{modality=\"text\"}") >=
              1);
  assert_int_equal(metric(t, "vlmdb_embed_queue_depth{modality=\"text\"}"), 0);
  assert_int_equal(metric(t, "vlmdb_items_added_total"), 2);
  assert_int_equal(metric(t, "vlmdb_items"), 2);
  assert_int_equal(metric(t, "vlmdb_vectors{modality=\"text\"}"), 2);
  assert_int_equal(metric(t, "vlmdb_vectors{modality=\"image\"}"), 0);
  assert_int_equal(metric(t, "vlmdb_index_info{kind=\"Flat\",trained=\"1\"}"),
                   1);
  /* every text vector is in the index or its not-yet-indexed tail */
  assert_int_equal(metric(t, "vlmdb_index_vectors") +
                       metric(t, "vlmdb_index_pending_vectors"), 2);
  assert_true(metric(t, "vlmdb_index_tuned_effort{modality=\"text\"}") >= 0);
  assert_true(metric(t, "vlmdb_index_tuned_effort{modality=\"image\"}") >= 0);
  assert_int_equal(metric(t, "vlmdb_connections{protocol=\"http\"}"), 1);
  assert_int_equal(metric(t, "vlmdb_connections{protocol=\"resp\"}"), 1);
  assert_true(metric(t, "vlmdb_store_bytes{store=\"payload.lmdb\"}") > 0);
  assert_true(metric(t, "vlmdb_store_bytes{store=\"meta.sqlite\"}") > 0);
  assert_true(metric(t, "vlmdb_store_bytes{store=\"index\"}") > 0);
  double age = metric(t, "vlmdb_last_checkpoint_age_seconds");
  assert_true(age >= 0 && age < 60);
  assert_true(metric(t, "process_resident_memory_bytes") > 1e6);

  /* promtool's own check of the format and the names */
  char path[128];
  snprintf(path, sizeof path, "%s/metrics.txt", s.dir);
  FILE *f = fopen(path, "w");
  fwrite(r.body, 1, r.body_len, f);
  fclose(f);
  if (access("/usr/bin/promtool", X_OK) != 0) {
    fprintf(stderr, "SKIPPED: promtool check metrics (Debian's prometheus "
            "package is not installed)\n");
  } else {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    char out[4096];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    if (st != 0 || n > 0)
      fail_msg("promtool check metrics (status %d):\n%s", st, out);
  }
  hresp_free(&r);

  redisFree(rc);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

/* Saturation: a connection with 1024 requests in flight gets 429 for the
 * next ones (and stays usable); past --maxclients, 503 and close. */
static void test_saturation(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  const char *extra[] = {"--maxclients", "2", NULL};
  start_server(&s, extra);
  hconn c = hopen(s.http);
  /* writes of one connection run one at a time, so 3000 pipelined ones
   * pile up faster than they finish */
  enum { N = 3000 };
  const char *one = "DELETE /v1/items/none HTTP/1.1\r\n\r\n";
  size_t len = strlen(one);
  char *all = malloc(N * len);
  for (int i = 0; i < N; i++)
    memcpy(all + (size_t)i * len, one, len);
  send_all(c.fd, all, N * len);
  free(all);
  int n404 = 0, n429 = 0;
  for (int i = 0; i < N; i++) {
    hresp r;
    if (hread(&c, &r) < 0)
      fail_msg("response %d of %d: connection closed", i, N);
    if (r.status == 404)
      n404++;
    else if (r.status == 429)
      expect_error(&r, 429, "too_many_requests", NULL), n429++;
    else
      fail_msg("response %d: %d %s", i, r.status, r.body);
    hresp_free(&r);
  }
  fprintf(stderr, "  %d pipelined writes: %d answered, %d refused (429)\n",
          N, n404, n429);
  assert_true(n404 >= 1024);
  assert_true(n429 > 0);
  hresp r = hjson(&c, "GET", "/healthz", 200, NULL);
  hresp_free(&r);
  /* a second connection fits, a third does not */
  hconn c2 = hopen(s.http);
  r = hjson(&c2, "GET", "/healthz", 200, NULL);
  hresp_free(&r);
  hconn c3 = hopen(s.http);
  if (hread(&c3, &r) < 0)
    fail_msg("over maxclients: closed without a response");
  expect_error(&r, 503, "unavailable", NULL);
  hresp_free(&r);
  expect_closed(&c3);
  hclose(&c3);
  hclose(&c2);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

/* --no-http: RESP only; --http 0 picks a port. */
static void test_options(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  char bin[256];
  snprintf(bin, sizeof bin, "%s/vlmdb", build_dir());
  const char *argv[] = {"--db", s.db, "--model", MODEL_DIR, "--port", "0",
                        "--no-http", NULL};
  vlm_test_server ts;
  assert_int_equal(vlm_test_server_spawn(&ts, bin, argv, s.log, 60), 0);
  assert_int_equal(ts.http_port, 0);
  redisContext *rc = hiredis(ts.port); /* serving: signals are handled */
  redisReply *rr = redisCommand(rc, "PING");
  assert_string_equal(rr->str, "PONG");
  freeReplyObject(rr);
  redisFree(rc);
  assert_int_equal(vlm_test_server_stop(&ts, 60), 0);
  const char *extra[] = {"--http", "0", NULL};
  start_server(&s, extra);
  assert_true(s.http > 0 && s.http != s.port);
  hconn c = hopen(s.http);
  hresp r = hjson(&c, "GET", "/healthz", 200, NULL);
  hresp_free(&r);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

/* ======================================================================
 * Explaining a match: GET /v1/items/{key}/explain, against VLM.EXPLAIN
 * ==================================================================== */

/* A PNG's size from its signature and IHDR chunk; -1 when it is no PNG. */
static int png_size(const void *data, size_t len, int *w, int *h) {
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G',
                                       '\r', '\n', 0x1a, '\n'};
  const unsigned char *p = data;
  if (len < 24 || memcmp(p, sig, 8) || memcmp(p + 12, "IHDR", 4))
    return -1;
  *w = (int)((uint32_t)p[16] << 24 | (uint32_t)p[17] << 16 |
             (uint32_t)p[18] << 8 | p[19]);
  *h = (int)((uint32_t)p[20] << 24 | (uint32_t)p[21] << 16 |
             (uint32_t)p[22] << 8 | p[23]);
  return 0;
}

/* A response header's value (the first line named so), or fail. */
static void header_value(const hresp *r, const char *name, char *out,
                         size_t cap) {
  char line[96];
  snprintf(line, sizeof line, "\r\n%s: ", name);
  const char *v = strcasestr(r->headers, line);
  if (!v)
    fail_msg("no %s header: %s", name, r->headers);
  v += strlen(line);
  size_t n = strcspn(v, "\r");
  if (n >= cap)
    fail_msg("%s header too long", name);
  memcpy(out, v, n);
  out[n] = '\0';
}

/* VLM.EXPLAIN KEY key TEXT text [METHOD method] [SIDE side] over RESP2:
 * its map as a flat array (score, grid, map, png); the reply or NULL for
 * a missing key. */
static redisReply *resp_explain(redisContext *rc, const char *key,
                                const char *text, const char *method,
                                int side) {
  const char *argv[9] = {"VLM.EXPLAIN", "KEY", key, "TEXT", text};
  size_t lens[9];
  int n = 5;
  char sidebuf[16];
  if (method) {
    argv[n++] = "METHOD";
    argv[n++] = method;
  }
  if (side) {
    snprintf(sidebuf, sizeof sidebuf, "%d", side);
    argv[n++] = "SIDE";
    argv[n++] = sidebuf;
  }
  for (int i = 0; i < n; i++)
    lens[i] = strlen(argv[i]);
  redisReply *r = redisCommandArgv(rc, n, argv, lens);
  if (!r)
    fail_msg("VLM.EXPLAIN: %s", rc->errstr);
  if (r->type == REDIS_REPLY_NIL) {
    freeReplyObject(r);
    return NULL;
  }
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 8)
    fail_msg("VLM.EXPLAIN KEY %s: type %d: %s", key, r->type,
             r->type == REDIS_REPLY_ERROR ? r->str : "");
  return r;
}

/* A member of the flat RESP2 map. */
static const redisReply *resp_member(const redisReply *r, const char *name) {
  for (size_t i = 0; i + 1 < r->elements; i += 2)
    if (!strcmp(r->element[i]->str, name))
      return r->element[i + 1];
  fail_msg("VLM.EXPLAIN's reply has no %s", name);
  return NULL;
}

static void test_explain(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  start_server(&s, NULL);
  hconn c = hopen(s.http);
  put_items(&c);
  redisContext *rc = hiredis(s.port);
  /* auto: integrated gradients, for every family */
  const char *auto_method = "integrated";
  int has_cls = strcmp(vlm_clip_family(g_clip), "siglip") != 0;

  /* the route's PNG is VLM.EXPLAIN's, byte for byte, with its side, the
   * method that ran, and the same score and grid */
  static const struct {
    const char *key, *text, *query; /* the query string, as sent */
    const char *method;             /* for RESP (NULL: its default) */
    int side;                       /* 0: the default, 224 */
    const char *ran;                /* NULL: auto's */
  } cases[] = {
      {"car", "a red sports car", "?text=a+red+sports+car", NULL, 0, NULL},
      {"car", "a red sports car",
       "?text=a%20red%20sports%20car&method=GradCAM&side=100", "GRADCAM",
       100, "gradcam"},
      {"saturn", "Saturn, the ringed planet",
       "?side=64&method=token&text=Saturn%2C+the+ringed+planet", "token", 64,
       "token"},
      {"dog", "a dog", "?text=a+dog&method=auto", "AUTO", 0, NULL},
      {"dog", "a dog", "?text=a+dog&method=Integrated&side=32", "integrated",
       32, "integrated"},
      {"sun", "clip art of a smiling sun",
       "?text=clip+art+of+a+smiling+sun&method=relevance&side=1024",
       "relevance", 1024, "relevance"},
  };
  char path[512], got[64];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (cases[i].ran && !strcmp(cases[i].ran, "relevance") && !has_cls)
      continue; /* a SigLIP test model has no class token */
    item_path(path, sizeof path, cases[i].key, "/explain");
    strcat(path, cases[i].query);
    hresp r = hreq(&c, "GET", path, NULL, NULL, 0);
    if (r.status != 200)
      fail_msg("GET %s: %d %s", path, r.status, r.body);
    assert_non_null(strcasestr(r.headers, "\r\nContent-Type: image/png\r\n"));
    int w = 0, h = 0, side = cases[i].side ? cases[i].side : 224;
    if (png_size(r.body, r.body_len, &w, &h) < 0)
      fail_msg("GET %s: not a PNG (%zu bytes)", path, r.body_len);
    if (w != side || h != side)
      fail_msg("GET %s: %dx%d, want %dx%d", path, w, h, side, side);
    const char *ran = cases[i].ran ? cases[i].ran : auto_method;
    header_value(&r, "X-Vlmdb-Explain-Method", got, sizeof got);
    assert_string_equal(got, ran);
    redisReply *rr = resp_explain(rc, cases[i].key, cases[i].text,
                                  cases[i].method, cases[i].side);
    assert_non_null(rr);
    const redisReply *png = resp_member(rr, "png");
    if (png->len != r.body_len || memcmp(png->str, r.body, r.body_len))
      fail_msg("GET %s: %zu bytes, VLM.EXPLAIN's PNG %zu bytes, not the "
               "same", path, r.body_len, png->len);
    header_value(&r, "X-Vlmdb-Explain-Score", got, sizeof got);
    assert_string_equal(got, resp_member(rr, "score")->str);
    header_value(&r, "X-Vlmdb-Explain-Grid", got, sizeof got);
    assert_int_equal(strtoll(got, NULL, 10), resp_member(rr, "grid")->integer);
    freeReplyObject(rr);
    /* with the method named, RESP gives the same bytes as with auto */
    if (!cases[i].method) {
      rr = resp_explain(rc, cases[i].key, cases[i].text, auto_method, 0);
      png = resp_member(rr, "png");
      assert_true(png->len == r.body_len &&
                  !memcmp(png->str, r.body, r.body_len));
      freeReplyObject(rr);
    }
    hresp_free(&r);
  }

  /* at the thumbnail's side the overlay has the thumbnail's size (the
   * car's picture is square, so its thumbnail is too) */
  item_path(path, sizeof path, "car", "/thumbnail");
  hresp t = hreq(&c, "GET", path, NULL, NULL, 0);
  assert_int_equal(t.status, 200);
  vlm_image thumb = {0};
  VLM_CHECK(vlm_image_decode(t.body, t.body_len, NULL, &thumb));
  hresp_free(&t);
  assert_int_equal(thumb.w, thumb.h);
  snprintf(path, sizeof path, "/v1/items/car/explain?text=a+car&side=%d",
           thumb.w);
  hresp r = hreq(&c, "GET", path, NULL, NULL, 0);
  assert_int_equal(r.status, 200);
  int w = 0, h = 0;
  assert_int_equal(png_size(r.body, r.body_len, &w, &h), 0);
  if (w != thumb.w || h != thumb.h)
    fail_msg("explain %dx%d, thumbnail %dx%d", w, h, thumb.w, thumb.h);
  vlm_image_free(&thumb);
  hresp_free(&r);

  /* errors: JSON, naming the parameter; the connection goes on */
  static const struct {
    const char *path;
    int status;
    const char *code, *field, *says;
  } errors[] = {
      {"/v1/items/car/explain", 400, "bad_request", "text", "text is required"},
      {"/v1/items/car/explain?text=", 400, "bad_request", "text", NULL},
      {"/v1/items/car/explain?text=a+car&method=saliency", 400, "bad_request",
       "method", "auto, integrated, relevance, token or gradcam"},
      {"/v1/items/car/explain?text=a+car&side=8", 400, "bad_request", "side",
       NULL},
      {"/v1/items/car/explain?text=a+car&side=2000", 400, "bad_request",
       "side", NULL},
      {"/v1/items/car/explain?text=a+car&side=big", 400, "bad_request", "side",
       NULL},
      {"/v1/items/car/explain?text=a+car&k=3", 400, "bad_request", "k", NULL},
      {"/v1/items/nosuch/explain?text=a+car", 404, "not_found", NULL,
       "no item 'nosuch'"},
      {"/v1/items/fox/explain?text=a+fox", 404, "not_found", NULL,
       "item 'fox' has no thumbnail"},
      {"/v1/items/caf%C3%A9%2F1/explain?text=a+car", 404, "not_found", NULL,
       "item 'caf\xc3\xa9/1' has no thumbnail"},
      {"/v1/items/car/explanation?text=a+car", 404, "not_found", NULL, NULL},
  };
  for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
    r = hjson(&c, "GET", errors[i].path, 0, NULL);
    expect_error(&r, errors[i].status, errors[i].code, errors[i].field);
    const char *msg = json_string_value(
        json_object_get(json_object_get(r.json, "error"), "message"));
    if (errors[i].says && !strstr(msg, errors[i].says))
      fail_msg("GET %s: '%s' does not say '%s'", errors[i].path, msg,
               errors[i].says);
    hresp_free(&r);
  }
  r = hjson(&c, "POST", "/v1/items/car/explain?text=a+car", 0, "{}");
  expect_error(&r, 405, "method_not_allowed", NULL);
  hresp_free(&r);
  /* RESP answers the same cases as the route does */
  assert_null(resp_explain(rc, "nosuch", "a car", NULL, 0));
  redisReply *rr = redisCommand(rc, "VLM.EXPLAIN KEY fox TEXT %s", "a fox");
  assert_int_equal(rr->type, REDIS_REPLY_ERROR);
  assert_non_null(strstr(rr->str, "has no thumbnail"));
  freeReplyObject(rr);
  /* still answering on the same connection */
  r = hreq(&c, "GET", "/v1/items/car/explain?text=a+car&side=16", NULL, NULL,
           0);
  assert_int_equal(r.status, 200);
  hresp_free(&r);
  redisFree(rc);
  hclose(&c);
  stop_server(&s);
  server_done(&s);

  /* a server without a model (none in the database's directory, none by
   * default): the item has its thumbnail, the explanation is refused */
  static const char *none = "/nonexistent/vlmdb-test-model";
  make_db_model(&s, none);
  setenv("VLMDB_MODEL", none, 1);
  start_server_model(&s, NULL, NULL);
  unsetenv("VLMDB_MODEL");
  c = hopen(s.http);
  size_t ilen;
  char *img = fixture("rgb.png", &ilen);
  char *img64 = base64(img, ilen);
  float vec[1024];
  const void *ip = img;
  VLM_CHECK(vlm_clip_encode_image_buffers(g_clip, &ip, &ilen, 1, 0, vec));
  size_t cap = 64 + strlen(img64) + (size_t)g_dim * 24, used = 0;
  char *body = malloc(cap);
  used += (size_t)snprintf(body, cap, "{\"image\":\"%s\",\"image_vec\":[",
                           img64);
  for (int i = 0; i < g_dim; i++)
    used += (size_t)snprintf(body + used, cap - used, "%s%.9g", i ? "," : "",
                             (double)vec[i]);
  snprintf(body + used, cap - used, "]}");
  r = hjson(&c, "PUT", "/v1/items/car", 201, "%s", body);
  hresp_free(&r);
  free(body);
  free(img64);
  free(img);
  r = hreq(&c, "GET", "/v1/items/car/thumbnail", NULL, NULL, 0);
  assert_int_equal(r.status, 200);
  hresp_free(&r);
  r = hjson(&c, "GET", "/v1/items/car/explain?text=a+car", 0, NULL);
  expect_error(&r, 400, "bad_request", NULL);
  const char *msg = json_string_value(
      json_object_get(json_object_get(r.json, "error"), "message"));
  if (!strstr(msg, "needs a model"))
    fail_msg("without a model: %s", msg);
  hresp_free(&r);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

static int group_setup(void **state) {
  (void)state;
  signal(SIGPIPE, SIG_IGN);
  if (vlm_clip_load(MODEL_DIR, NULL, &g_clip) < 0) {
    fprintf(stderr, "cannot load %s: %s\n", MODEL_DIR, vlm_errmsg());
    return -1;
  }
  g_dim = vlm_clip_dim(g_clip);
  char bin[256];
  snprintf(bin, sizeof bin, "%s/vlmdb", build_dir());
  if (access(bin, X_OK) != 0) {
    fprintf(stderr, "%s is not built\n", bin);
    return -1;
  }
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  for (int i = 0; i < 4; i++)
    if (g_live[i]) {
      if (g_live[i]->pid) {
        kill(g_live[i]->pid, SIGKILL);
        waitpid(g_live[i]->pid, NULL, 0);
      }
      vlm_test_rm_rf(g_live[i]->dir);
    }
  vlm_clip_free(g_clip);
  return 0;
}

/* ======================================================================
 * The web console's files (net/console/): the bytes on disk, open without
 * the password (the page asks for it), with their security headers
 * ==================================================================== */

static void expect_asset(hconn *c, const char *path, const char *file,
                         const char *ctype) {
  size_t n;
  char *want = read_file(file, &n);
  if (!want)
    fail_msg("cannot read %s (run from the repository root)", file);
  hresp r = hreq(c, "GET", path, NULL, NULL, 0);
  if (r.status != 200)
    fail_msg("GET %s: status %d: %s", path, r.status, r.body);
  char line[128];
  snprintf(line, sizeof line, "\r\nContent-Type: %s\r\n", ctype);
  if (!strcasestr(r.headers, line))
    fail_msg("GET %s: want %s in\n%s", path, line + 2, r.headers);
  assert_non_null(strcasestr(r.headers, "\r\nContent-Security-Policy: "
                                        "default-src 'none'; script-src "
                                        "'self';"));
  assert_non_null(
      strcasestr(r.headers, "\r\nX-Content-Type-Options: nosniff"));
  assert_int_equal(r.body_len, n);
  assert_memory_equal(r.body, want, n);
  free(want);
  hresp_free(&r);
}

static void test_console(void **state) {
  (void)state;
  server_t s;
  make_db(&s);
  const char *extra[] = {"--requirepass", "s3cret", NULL};
  start_server(&s, extra);
  hconn c = hopen(s.http);
  /* open, on one kept-alive connection, without the password */
  expect_asset(&c, "/", "net/console/index.html", "text/html; charset=utf-8");
  expect_asset(&c, "/?q=cat", "net/console/index.html",
               "text/html; charset=utf-8");
  /* every file the page names is served */
  size_t n;
  char *html = read_file("net/console/index.html", &n);
  assert_non_null(html);
  int named = 0;
  for (const char *p = html; (p = strstr(p, "\"/console/")); p++) {
    char path[128];
    const char *end = strchr(p + 1, '"');
    assert_non_null(end);
    snprintf(path, sizeof path, "%.*s", (int)(end - p - 1), p + 1);
    const char *file = !strcmp(path, "/console/app.js") ? "net/console/app.js"
                       : !strcmp(path, "/console/app.css")
                           ? "net/console/app.css"
                           : NULL;
    if (!file)
      fail_msg("index.html names %s, which this test does not know", path);
    expect_asset(&c, path, file,
                 strstr(path, ".js") ? "text/javascript; charset=utf-8"
                                     : "text/css; charset=utf-8");
    named++;
  }
  free(html);
  assert_int_equal(named, 2);
  /* the API stays closed; other paths under /console/ are not open */
  hresp r = hreq(&c, "GET", "/v1/info", NULL, NULL, 0);
  expect_error(&r, 401, "unauthorized", NULL);
  hresp_free(&r);
  r = hreq(&c, "GET", "/console/", NULL, NULL, 0);
  expect_error(&r, 401, "unauthorized", NULL);
  hresp_free(&r);
  r = hreq(&c, "POST", "/", NULL, "x", 1);
  expect_error(&r, 401, "unauthorized", NULL);
  hresp_free(&r);
  /* with it: GET only, and no other file */
  r = hreq(&c, "POST", "/", "Authorization: Bearer s3cret\r\n", "x", 1);
  expect_error(&r, 405, "method_not_allowed", NULL);
  hresp_free(&r);
  r = hreq(&c, "GET", "/console/app.json", "Authorization: Bearer s3cret\r\n",
           NULL, 0);
  expect_error(&r, 404, "not_found", NULL);
  hresp_free(&r);
  r = hreq(&c, "GET", "/index.html", "Authorization: Bearer s3cret\r\n", NULL,
           0);
  expect_error(&r, 404, "not_found", NULL);
  hresp_free(&r);
  hclose(&c);
  stop_server(&s);
  server_done(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_routes),     cmocka_unit_test(test_same_as_resp),
      cmocka_unit_test(test_pipelining), cmocka_unit_test(test_limits),
      cmocka_unit_test(test_malformed),  cmocka_unit_test(test_auth),
      cmocka_unit_test(test_batch),      cmocka_unit_test(test_metrics),
      cmocka_unit_test(test_item_writes_keep_images),
      cmocka_unit_test(test_saturation), cmocka_unit_test(test_options),
      cmocka_unit_test(test_console),    cmocka_unit_test(test_explain),
  };
  const char *only = getenv("HTTP_TEST"); /* run one test by name */
  if (only && *only)
    cmocka_set_test_filter(only);
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
