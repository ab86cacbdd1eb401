/* api.c - the JSON API (/v1/...): requests become commands, replies JSON.
 *
 * Each route builds the argv RESP would send (SEARCH TEXT ... K 10 RETURN
 * 3 caption source meta, UPSERT key TEXT ... IMAGE ..., EMBED TEXT ...,
 * VLM.EVAL ..., VLM.EXPLAIN KEY key TEXT ...) and hands it to
 * vlm__dispatch_http, so the command's own checks, the worker pool, the
 * embedding batcher and the per-connection ordering are RESP's; a batch
 * put is MULTI ... EXEC's one durable batch.  When the job's turn comes
 * its RESP3 reply is turned into the response (render.c): the same
 * answer, in JSON (an explanation: its PNG).  Parameters come from a
 * JSON body, a query string, or multipart form fields; all three are read
 * through one parameter object (query and form values are strings and are
 * converted), so every route checks its parameters in one place and a bad
 * one is a 400 naming it.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "console.h"
#include "http.h"
#include "vlm_error.h"
#include "vlm_train.h"

#define MAX_ARGS 96
#define MAX_FIELDS 32

/* ======================================================================
 * Building an argv
 * ==================================================================== */

typedef struct {
  vlm__buf store;
  int argc;
  size_t off[MAX_ARGS], len[MAX_ARGS];
  vlm__resp_arg argv[MAX_ARGS];
} args;

static void args_init(args *a) {
  vlm__buf_init(&a->store, 0);
  a->argc = 0;
}

static void args_free(args *a) { vlm__buf_free(&a->store); }

static void args_add(args *a, const void *p, size_t n) {
  if (a->argc >= MAX_ARGS) {
    a->store.oom = 1;
    return;
  }
  a->off[a->argc] = a->store.len;
  a->len[a->argc] = n;
  vlm__buf_append(&a->store, p, n);
  a->argc++;
}

static void args_str(args *a, const char *s) { args_add(a, s, strlen(s)); }

static void args_fmt(args *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void args_fmt(args *a, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  args_str(a, tmp);
}

/* The argv, pointing into the store (valid until the next add). */
static vlm__resp_arg *args_argv(args *a) {
  for (int i = 0; i < a->argc; i++) {
    a->argv[i].ptr = a->store.data ? a->store.data + a->off[i] : "";
    a->argv[i].len = a->len[i];
    a->argv[i].off = 0;
  }
  return a->argv;
}

/* ======================================================================
 * One request's context and its errors
 * ==================================================================== */

typedef struct {
  vlm__conn *conn;
  const vlm__http_request *r;
  json_t *params;    /* the parameters, by name */
  int typed;         /* params from JSON (typed) or strings */
  const void *image; /* an image from a multipart part or a raw body */
  size_t image_len;
  unsigned char *decoded; /* base64 images decoded here (freed) */
  const char *prefix; /* of field names: "items[3]." in a batch */
  int failed;
} api_ctx;

static void fail(api_ctx *c, int status, const char *field, const char *fmt,
                 ...) __attribute__((format(printf, 4, 5)));
static void fail(api_ctx *c, int status, const char *field, const char *fmt,
                 ...) {
  char msg[512], full[128];
  const char *pre = c->prefix ? c->prefix : "";
  size_t n = (size_t)snprintf(msg, sizeof msg, "%s", pre);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + n, sizeof msg - n, fmt, ap);
  va_end(ap);
  if (field && *pre && strncmp(field, pre, strlen(pre))) {
    snprintf(full, sizeof full, "%s%s", pre, field);
    field = full;
  }
  if (!c->failed)
    vlm__http_error(vlm__conn_reply_buf(c->conn), status,
                    vlm__http_code(status), field, c->r->keep_alive, "%s",
                    msg);
  c->failed = 1;
}

static void respond_json(api_ctx *c, int status, const char *json) {
  vlm__http_respond(vlm__conn_reply_buf(c->conn), status, "application/json",
                    json, strlen(json), c->r->keep_alive, NULL);
}

static vlm__http_req *new_req(api_ctx *c, int route) {
  vlm__http_req *req = calloc(1, sizeof *req);
  if (!req) {
    fail(c, 500, NULL, "out of memory");
    return NULL;
  }
  req->route = route;
  req->keep_alive = c->r->keep_alive;
  req->start_ns = vlm__now_ns();
  return req;
}

static void dispatch(api_ctx *c, args *a, vlm__http_req *req) {
  if (a->store.oom) {
    vlm__http_req_free(req);
    fail(c, a->argc >= MAX_ARGS ? 400 : 500, NULL,
         a->argc >= MAX_ARGS ? "too many parameters" : "out of memory");
    return;
  }
  vlm__dispatch_http(c->conn, a->argc, args_argv(a), req);
}

/* ======================================================================
 * Parameters
 * ==================================================================== */

/* Decode a query string or urlencoded form into obj (string values). */
static int parse_form(json_t *obj, const char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    size_t end = i;
    while (end < len && s[end] != '&')
      end++;
    size_t eq = i;
    while (eq < end && s[eq] != '=')
      eq++;
    char *name = strndup(s + i, eq - i);
    char *value = strndup(s + (eq < end ? eq + 1 : end),
                          eq < end ? end - eq - 1 : 0);
    if (!name || !value) {
      free(name);
      free(value);
      return -1;
    }
    size_t nl = strlen(name), vl = strlen(value);
    for (size_t k = 0; k < nl; k++)
      if (name[k] == '+')
        name[k] = ' ';
    for (size_t k = 0; k < vl; k++)
      if (value[k] == '+')
        value[k] = ' ';
    int bad = vlm__http_url_decode(name, &nl) < 0 ||
              vlm__http_url_decode(value, &vl) < 0;
    if (!bad && nl > 0) {
      name[nl] = '\0';
      json_object_set_new(obj, name, json_stringn(value, vl));
    }
    free(name);
    free(value);
    if (bad)
      return -1;
    i = end + 1;
  }
  return 0;
}

static json_t *param(api_ctx *c, const char *name) {
  return json_object_get(c->params, name);
}

/* A string parameter: 1 and *s, 0 when absent, -1 after the error. */
static int get_str(api_ctx *c, const char *name, const char **s,
                   size_t *len) {
  json_t *v = param(c, name);
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_string(v)) {
    fail(c, 400, name, "%s must be a string", name);
    return -1;
  }
  *s = json_string_value(v);
  if (len)
    *len = json_string_length(v);
  if (memchr(*s, '\0', json_string_length(v))) {
    fail(c, 400, name, "%s contains a NUL character", name);
    return -1;
  }
  return 1;
}

static int get_int(api_ctx *c, const char *name, long long min, long long max,
                   long long *out) {
  json_t *v = param(c, name);
  if (!v || json_is_null(v))
    return 0;
  long long x;
  if (json_is_integer(v)) {
    x = json_integer_value(v);
  } else if (!c->typed && json_is_string(v)) {
    char *end;
    errno = 0;
    x = strtoll(json_string_value(v), &end, 10);
    if (*end || end == json_string_value(v) || errno)
      goto bad;
  } else {
    goto bad;
  }
  if (x < min || x > max)
    goto bad;
  *out = x;
  return 1;
bad:
  fail(c, 400, name, "%s must be an integer from %lld to %lld", name, min,
       max);
  return -1;
}

static int get_num(api_ctx *c, const char *name, double *out) {
  json_t *v = param(c, name);
  if (!v || json_is_null(v))
    return 0;
  if (json_is_number(v)) {
    *out = json_number_value(v);
    return 1;
  }
  if (!c->typed && json_is_string(v)) {
    char *end;
    *out = strtod(json_string_value(v), &end);
    if (!*end && end != json_string_value(v) && isfinite(*out))
      return 1;
  }
  fail(c, 400, name, "%s must be a number", name);
  return -1;
}

static int get_bool(api_ctx *c, const char *name, int *out) {
  json_t *v = param(c, name);
  if (!v || json_is_null(v))
    return 0;
  if (json_is_boolean(v)) {
    *out = json_is_true(v);
    return 1;
  }
  if (!c->typed && json_is_string(v)) {
    const char *s = json_string_value(v);
    if (!strcmp(s, "1") || !strcmp(s, "true") || !strcmp(s, "") ||
        !strcmp(s, "on")) {
      *out = 1;
      return 1;
    }
    if (!strcmp(s, "0") || !strcmp(s, "false") || !strcmp(s, "off")) {
      *out = 0;
      return 1;
    }
  }
  fail(c, 400, name, "%s must be true or false", name);
  return -1;
}

/* An image parameter: base64 text in JSON or a form field, or the file
 * part / raw body.  1 with the bytes, 0 absent, -1 after the error. */
static int get_image(api_ctx *c, const char *name, const void **img,
                     size_t *len) {
  const char *s;
  size_t n;
  int rc = get_str(c, name, &s, &n);
  if (rc <= 0) {
    if (rc == 0 && c->image) {
      *img = c->image;
      *len = c->image_len;
      return 1;
    }
    return rc;
  }
  free(c->decoded);
  c->decoded = vlm__base64_decode(s, n, len);
  if (!c->decoded) {
    fail(c, 400, name, "%s must be base64 (or a data: URL)", name);
    return -1;
  }
  *img = c->decoded;
  return 1;
}

/* A vector parameter as dim float32 bytes: a JSON array of numbers (or,
 * in a form, numbers separated by commas). */
static int get_vector(api_ctx *c, const char *name, args *a) {
  json_t *v = param(c, name);
  if (!v || json_is_null(v))
    return 0;
  int dim = c->conn->srv->dim;
  float *vec = malloc((size_t)dim * sizeof *vec);
  if (!vec) {
    fail(c, 500, NULL, "out of memory");
    return -1;
  }
  int n = 0, ok = 1;
  if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
      if (!json_is_number(x) || n >= dim) {
        ok = json_is_number(x);
        n += ok;
        if (!ok)
          break;
        continue;
      }
      vec[n++] = (float)json_number_value(x);
    }
  } else if (!c->typed && json_is_string(v)) {
    const char *s = json_string_value(v);
    while (*s && ok) {
      char *end;
      double d = strtod(s, &end);
      if (end == s) {
        ok = 0;
        break;
      }
      if (n < dim)
        vec[n] = (float)d;
      n++;
      s = end;
      while (*s == ',' || *s == ' ')
        s++;
    }
  } else {
    ok = 0;
  }
  if (!ok || n != dim) {
    free(vec);
    if (!ok)
      fail(c, 400, name, "%s must be an array of numbers", name);
    else
      fail(c, 400, name, "%s must have %d numbers (the database's "
           "dimension), got %d", name, dim, n);
    return -1;
  }
  args_add(a, vec, (size_t)dim * sizeof *vec);
  free(vec);
  return 1;
}

/* Refuse members not in the list (typos would otherwise be ignored). */
static int only(api_ctx *c, const char *const *names) {
  const char *key;
  json_t *v;
  json_object_foreach(c->params, key, v) {
    int known = 0;
    for (int i = 0; names[i]; i++)
      known |= !strcmp(key, names[i]);
    if (!known) {
      fail(c, 400, key, "unknown parameter '%s'", key);
      return -1;
    }
  }
  return 0;
}

/* ======================================================================
 * multipart/form-data: the file part "image", the rest as fields
 * ==================================================================== */

/* The value of attr="..." in a header line, into out. */
static int header_attr(const char *line, size_t n, const char *attr,
                       char *out, size_t cap) {
  size_t al = strlen(attr);
  for (size_t i = 0; i + al + 1 < n; i++) {
    if (strncasecmp(line + i, attr, al) || line[i + al] != '=' ||
        (i > 0 && line[i - 1] != ' ' && line[i - 1] != ';'))
      continue;
    const char *v = line + i + al + 1, *end = line + n;
    size_t len;
    if (*v == '"') {
      v++;
      const char *q = memchr(v, '"', (size_t)(end - v));
      if (!q)
        return -1;
      len = (size_t)(q - v);
    } else {
      const char *e = v;
      while (e < end && *e != ';' && *e != ' ')
        e++;
      len = (size_t)(e - v);
    }
    if (len >= cap)
      return -1;
    memcpy(out, v, len);
    out[len] = '\0';
    return 0;
  }
  return -1;
}

static int parse_multipart(api_ctx *c) {
  const vlm__http_request *r = c->r;
  char boundary[80] = "--";
  if (header_attr(r->content_type, strlen(r->content_type), "boundary",
                  boundary + 2, sizeof boundary - 2) < 0) {
    fail(c, 400, NULL, "multipart/form-data without a boundary");
    return -1;
  }
  size_t bl = strlen(boundary);
  const char *body = r->body, *end = r->body + r->body_len;
  const char *p = memmem(body, r->body_len, boundary, bl);
  while (p) {
    p += bl;
    if (end - p >= 2 && p[0] == '-' && p[1] == '-')
      return 0; /* the closing boundary */
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
      break;
    p += 2;
    const char *hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
    if (!hend)
      break;
    char name[64] = "";
    int has_name = 0;
    for (const char *line = p; line < hend;) {
      const char *eol = memmem(line, (size_t)(hend + 2 - line), "\r\n", 2);
      size_t n = (size_t)(eol - line);
      if (n > 20 && !strncasecmp(line, "content-disposition:", 20))
        has_name = header_attr(line, n, "name", name, sizeof name) == 0;
      line = eol + 2;
    }
    const char *data = hend + 4;
    char delim[84];
    snprintf(delim, sizeof delim, "\r\n%s", boundary);
    const char *next = memmem(data, (size_t)(end - data), delim, bl + 2);
    if (!next)
      break;
    if (!has_name) {
      fail(c, 400, NULL, "a multipart part has no name");
      return -1;
    }
    size_t dlen = (size_t)(next - data);
    if (!strcmp(name, "image")) {
      c->image = data;
      c->image_len = dlen;
    } else {
      json_object_set_new(c->params, name, json_stringn(data, dlen));
    }
    p = next + 2;
  }
  fail(c, 400, NULL, "malformed multipart/form-data body");
  return -1;
}

static int ctype_is(const vlm__http_request *r, const char *type) {
  size_t n = strlen(type);
  return !strncasecmp(r->content_type, type, n) &&
         (r->content_type[n] == '\0' || r->content_type[n] == ';' ||
          r->content_type[n] == ' ');
}

/* Gather the parameters: the query string, then the body (JSON, a form,
 * multipart, or raw image bytes). */
static int load_params(api_ctx *c, int body_allowed) {
  const vlm__http_request *r = c->r;
  c->params = json_object();
  if (!c->params) {
    fail(c, 500, NULL, "out of memory");
    return -1;
  }
  if (r->query && parse_form(c->params, r->query, r->query_len) < 0) {
    fail(c, 400, NULL, "malformed query string");
    return -1;
  }
  if (r->body_len == 0 || !body_allowed)
    return 0;
  /* curl -d '{...}' labels its JSON a form: a body that starts as an
   * object is read as one (no form field name starts with '{'). */
  size_t ws = 0;
  while (ws < r->body_len && (r->body[ws] == ' ' || r->body[ws] == '\n' ||
                              r->body[ws] == '\r' || r->body[ws] == '\t'))
    ws++;
  int looks_json = ws < r->body_len && r->body[ws] == '{';
  if (ctype_is(r, "application/json") || r->content_type[0] == '\0' ||
      (looks_json && ctype_is(r, "application/x-www-form-urlencoded"))) {
    json_error_t err;
    json_t *body = json_loadb(r->body, r->body_len, 0, &err);
    if (!body) {
      fail(c, 400, "body", "the body is not JSON: %s (line %d, column %d)",
           err.text, err.line, err.column);
      return -1;
    }
    if (!json_is_object(body)) {
      json_decref(body);
      fail(c, 400, "body", "the body must be a JSON object");
      return -1;
    }
    if (json_object_size(c->params) > 0) {
      json_decref(body);
      fail(c, 400, NULL, "parameters in both the query string and the "
           "JSON body");
      return -1;
    }
    json_decref(c->params);
    c->params = body;
    c->typed = 1;
    return 0;
  }
  if (ctype_is(r, "multipart/form-data"))
    return parse_multipart(c);
  if (ctype_is(r, "application/x-www-form-urlencoded")) {
    if (parse_form(c->params, r->body, r->body_len) < 0) {
      fail(c, 400, "body", "malformed form body");
      return -1;
    }
    return 0;
  }
  if (!strncasecmp(r->content_type, "image/", 6) ||
      ctype_is(r, "application/octet-stream")) {
    c->image = r->body;
    c->image_len = r->body_len;
    return 0;
  }
  fail(c, 415, NULL, "Content-Type %s: send application/json, "
       "multipart/form-data or an image", r->content_type);
  return -1;
}

/* ======================================================================
 * Routes
 * ==================================================================== */

static void route_search(api_ctx *c) {
  static const char *const names[] = {
      "text", "image", "key", "vector", "k", "filter", "target", "hybrid",
      "weight", "ef", "nprobe", "exact", "collapse", "min_score", "offset",
      "group_by", "per", "fields", NULL};
  args a;
  args_init(&a);
  if (only(c, names) < 0)
    goto done;
  args_str(&a, "SEARCH");
  const char *s;
  size_t n;
  const void *img;
  int kinds = 0, rc;
  if ((rc = get_str(c, "text", &s, &n)) > 0) {
    args_str(&a, "TEXT");
    args_add(&a, s, n);
    kinds++;
  }
  if (rc < 0 || (rc = get_image(c, "image", &img, &n)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "IMAGE");
    args_add(&a, img, n);
    kinds++;
  }
  if ((rc = get_str(c, "key", &s, &n)) > 0) {
    args_str(&a, "KEY");
    args_add(&a, s, n);
    kinds++;
  }
  if (rc < 0)
    goto done;
  if (param(c, "vector")) {
    args_str(&a, "VECTOR");
    if (get_vector(c, "vector", &a) < 0)
      goto done;
    kinds++;
  }
  if (kinds != 1) {
    fail(c, 400, kinds ? NULL : "text", "give exactly one of text, image, "
         "key and vector (got %d)", kinds);
    goto done;
  }
  long long v;
  double d;
  int b;
  if ((rc = get_int(c, "k", 1, VLM_DB_MAX_K, &v)) > 0) {
    args_str(&a, "K");
    args_fmt(&a, "%lld", v);
  }
  if (rc < 0 || (rc = get_str(c, "filter", &s, &n)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "FILTER");
    args_add(&a, s, n);
  }
  if ((rc = get_str(c, "target", &s, &n)) < 0)
    goto done;
  if (rc > 0) {
    if (strcasecmp(s, "any") && strcasecmp(s, "image") &&
        strcasecmp(s, "text")) {
      fail(c, 400, "target", "target must be any, image or text");
      goto done;
    }
    args_str(&a, "TARGET");
    args_str(&a, s);
  }
  if ((rc = get_str(c, "hybrid", &s, &n)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "HYBRID");
    args_add(&a, s, n);
  }
  if ((rc = get_num(c, "weight", &d)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "WEIGHT");
    args_fmt(&a, "%.17g", d);
  }
  if ((rc = get_int(c, "ef", 1, 1 << 20, &v)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "EF");
    args_fmt(&a, "%lld", v);
  }
  if ((rc = get_int(c, "nprobe", 1, 1 << 20, &v)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "NPROBE");
    args_fmt(&a, "%lld", v);
  }
  if ((rc = get_bool(c, "exact", &b)) < 0)
    goto done;
  if (rc > 0 && b)
    args_str(&a, "EXACT");
  if ((rc = get_num(c, "collapse", &d)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "COLLAPSE");
    args_fmt(&a, "%.17g", d);
  }
  if ((rc = get_num(c, "min_score", &d)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "MINSCORE");
    args_fmt(&a, "%.17g", d);
  }
  if ((rc = get_int(c, "offset", 0, VLM_DB_MAX_K, &v)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "OFFSET");
    args_fmt(&a, "%lld", v);
  }
  if ((rc = get_str(c, "group_by", &s, &n)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "GROUPBY");
    args_add(&a, s, n);
  }
  if ((rc = get_int(c, "per", 1, VLM_DB_MAX_K, &v)) < 0)
    goto done;
  if (rc > 0) {
    if (!param(c, "group_by")) {
      fail(c, 400, "per", "per is the number of hits per group_by value");
      goto done;
    }
    args_str(&a, "PER");
    args_fmt(&a, "%lld", v);
  }
  /* fields: a JSON array of names, or "caption,source" */
  const char *fields[MAX_FIELDS];
  size_t flens[MAX_FIELDS];
  int nf = 0;
  json_t *f = param(c, "fields");
  if (!f || json_is_null(f)) {
    fields[0] = "caption", fields[1] = "source", fields[2] = "meta";
    flens[0] = 7, flens[1] = 6, flens[2] = 4;
    nf = 3;
  } else if (json_is_array(f)) {
    size_t i;
    json_t *x;
    json_array_foreach(f, i, x) {
      if (!json_is_string(x) || nf == MAX_FIELDS) {
        fail(c, 400, "fields", "fields must be at most %d names",
             MAX_FIELDS);
        goto done;
      }
      fields[nf] = json_string_value(x);
      flens[nf++] = json_string_length(x);
    }
  } else if (!c->typed && json_is_string(f)) {
    const char *p = json_string_value(f);
    while (*p) {
      const char *e = strchr(p, ',');
      size_t len = e ? (size_t)(e - p) : strlen(p);
      if (len > 0) {
        if (nf == MAX_FIELDS) {
          fail(c, 400, "fields", "at most %d fields", MAX_FIELDS);
          goto done;
        }
        fields[nf] = p;
        flens[nf++] = len;
      }
      p += len + (e != NULL);
    }
  } else {
    fail(c, 400, "fields", "fields must be an array of field names");
    goto done;
  }
  /* has_thumb: whether the hit's thumbnail URL leads anywhere */
  int asked = 0;
  for (int i = 0; i < nf; i++)
    asked |= flens[i] == 9 && !memcmp(fields[i], "has_thumb", 9);
  if (!asked) {
    if (nf == MAX_FIELDS) {
      fail(c, 400, "fields", "at most %d fields", MAX_FIELDS - 1);
      goto done;
    }
    fields[nf] = "has_thumb";
    flens[nf++] = 9;
  }
  args_str(&a, "RETURN");
  args_fmt(&a, "%d", nf);
  for (int i = 0; i < nf; i++)
    args_add(&a, fields[i], flens[i]);
  vlm__http_req *req = new_req(c, VLM__API_SEARCH);
  if (req) {
    req->hide_has_thumb = !asked;
    dispatch(c, &a, req);
  }
done:
  args_free(&a);
}

/* The members of an item body as command arguments (after "CMD key"). */
static int item_args(api_ctx *c, args *a) {
  static const char *const names[] = {"key",   "text",      "image", "meta",
                                      "source", "image_vec", "text_vec",
                                      NULL};
  const char *key;
  json_t *v;
  json_object_foreach(c->params, key, v) {
    int known = 0;
    for (int i = 0; names[i]; i++)
      known |= !strcmp(key, names[i]);
    if (!known) {
      fail(c, 400, key, "unknown member '%s' (text, image, meta, source, "
           "image_vec, text_vec)", key);
      return -1;
    }
  }
  const char *s;
  size_t n;
  const void *img;
  int rc;
  if ((rc = get_str(c, "text", &s, &n)) > 0) {
    args_str(a, "TEXT");
    args_add(a, s, n);
  }
  if (rc < 0 || (rc = get_image(c, "image", &img, &n)) < 0)
    return -1;
  if (rc > 0) {
    args_str(a, "IMAGE");
    args_add(a, img, n);
  }
  json_t *meta = param(c, "meta");
  if (meta && !json_is_null(meta)) {
    if (!json_is_object(meta)) {
      fail(c, 400, "meta", "meta must be a JSON object");
      return -1;
    }
    char *text = json_dumps(meta, JSON_COMPACT);
    if (!text) {
      fail(c, 500, NULL, "out of memory");
      return -1;
    }
    args_str(a, "META");
    args_str(a, text);
    free(text);
  }
  if ((rc = get_str(c, "source", &s, &n)) > 0) {
    args_str(a, "SOURCE");
    args_add(a, s, n);
  }
  if (rc < 0)
    return -1;
  if (param(c, "image_vec")) {
    args_str(a, "IMAGEVEC");
    if (get_vector(c, "image_vec", a) < 0)
      return -1;
  }
  if (param(c, "text_vec")) {
    args_str(a, "TEXTVEC");
    if (get_vector(c, "text_vec", a) < 0)
      return -1;
  }
  return 0;
}

static int valid_key(api_ctx *c, const char *key, size_t len) {
  if (len == 0) {
    fail(c, 400, "key", "the key is empty");
    return 0;
  }
  if (memchr(key, '\0', len)) {
    fail(c, 400, "key", "the key contains a NUL character");
    return 0;
  }
  return 1;
}

static void route_item_write(api_ctx *c, const char *key, int route) {
  static const char *cmds[] = {[VLM__API_PUT] = "UPSERT",
                               [VLM__API_ADD] = "ADD",
                               [VLM__API_PATCH] = "UPDATE"};
  args a;
  args_init(&a);
  if (param(c, "key")) {
    fail(c, 400, "key", "the key is in the URL, not the body");
    goto done;
  }
  args_str(&a, cmds[route]);
  args_str(&a, key);
  if (item_args(c, &a) < 0)
    goto done;
  if (route != VLM__API_PATCH && !param(c, "text") && !param(c, "image") &&
      !c->image && !param(c, "text_vec") && !param(c, "image_vec")) {
    fail(c, 400, "text", "an item needs a vector: text, image, text_vec or "
         "image_vec");
    goto done;
  }
  if (a.argc == 2) {
    fail(c, 400, "text", route == VLM__API_PATCH
                             ? "nothing to change: give text, image, meta, "
                               "source, image_vec or text_vec"
                             : "an item needs a vector: text, image, "
                               "text_vec or image_vec");
    goto done;
  }
  vlm__http_req *req = new_req(c, route);
  if (!req || !(req->key = strdup(key))) {
    vlm__http_req_free(req);
    fail(c, 500, NULL, "out of memory");
    goto done;
  }
  dispatch(c, &a, req);
done:
  args_free(&a);
}

/* thumb: 1 the thumbnail, 2 the kept original image, 0 the item. */
static void route_item(api_ctx *c, const char *key, int thumb) {
  int m = c->r->method;
  args a;
  args_init(&a);
  if (thumb) {
    if (m != HTTP_GET) {
      fail(c, 405, NULL, "use GET for %s", thumb == 2 ? "an image"
                                                      : "a thumbnail");
      goto done;
    }
    args_str(&a, "GET");
    args_str(&a, key);
    args_str(&a, thumb == 2 ? "WITHIMAGE" : "WITHTHUMB");
  } else if (m == HTTP_GET) {
    int vectors = 0;
    if (get_bool(c, "vectors", &vectors) < 0)
      goto done;
    args_str(&a, "GET");
    args_str(&a, key);
    if (vectors)
      args_str(&a, "WITHVECTORS");
  } else if (m == HTTP_DELETE) {
    args_str(&a, "DEL");
    args_str(&a, key);
  } else if (m == HTTP_PUT || m == HTTP_POST || m == HTTP_PATCH) {
    if (load_params(c, 1) < 0)
      goto done;
    route_item_write(c, key, m == HTTP_PUT    ? VLM__API_PUT
                             : m == HTTP_POST ? VLM__API_ADD
                                              : VLM__API_PATCH);
    goto done;
  } else {
    fail(c, 405, NULL, "%s is not allowed here (GET, PUT, POST, PATCH, "
         "DELETE)", http_method_str(m));
    goto done;
  }
  vlm__http_req *req = new_req(c, thumb == 2        ? VLM__API_IMAGE
                                   : thumb         ? VLM__API_THUMB
                                   : m == HTTP_GET ? VLM__API_GET
                                                   : VLM__API_DELETE);
  if (!req || !(req->key = strdup(key))) {
    vlm__http_req_free(req);
    fail(c, 500, NULL, "out of memory");
    goto done;
  }
  if (m == HTTP_GET && !thumb)
    req->vectors = a.argc == 3;
  dispatch(c, &a, req);
done:
  args_free(&a);
}

/* GET /v1/items/{key}/explain?text=...&method=...&side=...: VLM.EXPLAIN
 * KEY key TEXT text METHOD m SIDE s, answered with its PNG (render.c).
 * "auto" is resolved here, as the explainer resolves it (integrated
 * gradients, for every family), so the
 * response can name the method that ran and the bytes are those of
 * VLM.EXPLAIN with METHOD AUTO.  Without a model it goes through as
 * AUTO and the command refuses it, in its own words. */
static void route_explain(api_ctx *c, const char *key) {
  static const char *const names[] = {"text", "method", "side", NULL};
  static const char *const canonical[] = {
      [VLM_EXPLAIN_GRADCAM] = "gradcam", [VLM_EXPLAIN_TOKEN] = "token",
      [VLM_EXPLAIN_RELEVANCE] = "relevance",
      [VLM_EXPLAIN_INTEGRATED] = "integrated", [VLM_EXPLAIN_AUTO] = "auto"};
  args a;
  args_init(&a);
  const char *text = NULL, *s;
  size_t text_len = 0;
  long long side = 224;
  int rc;
  vlm_explain_method method = VLM_EXPLAIN_AUTO;
  if (c->r->method != HTTP_GET) {
    fail(c, 405, NULL, "%s is not allowed on an explanation (use GET)",
         http_method_str((enum http_method)c->r->method));
    goto done;
  }
  if (only(c, names) < 0 || (rc = get_str(c, "text", &text, &text_len)) < 0)
    goto done;
  if (rc == 0 || text_len == 0) {
    fail(c, 400, "text", "text is required: the query whose match with "
         "the item's picture to explain");
    goto done;
  }
  if ((rc = get_str(c, "method", &s, NULL)) < 0)
    goto done;
  if (rc > 0 && vlm_explain_method_parse(s, &method)) {
    fail(c, 400, "method", "method must be auto, integrated, relevance, "
         "token or gradcam");
    goto done;
  }
  if (get_int(c, "side", 16, 1024, &side) < 0)
    goto done;
  const char *family = vlm_clip_family(c->conn->srv->clip);
  if (method == VLM_EXPLAIN_AUTO && family)
    method = VLM_EXPLAIN_INTEGRATED;
  args_str(&a, "VLM.EXPLAIN");
  args_str(&a, "KEY");
  args_str(&a, key);
  args_str(&a, "TEXT");
  args_add(&a, text, text_len);
  args_str(&a, "METHOD");
  args_str(&a, canonical[method]);
  args_str(&a, "SIDE");
  args_fmt(&a, "%lld", side);
  vlm__http_req *req = new_req(c, VLM__API_EXPLAIN);
  if (!req || !(req->key = strdup(key))) {
    vlm__http_req_free(req);
    fail(c, 500, NULL, "out of memory");
    goto done;
  }
  req->explain_method = canonical[method];
  dispatch(c, &a, req);
done:
  args_free(&a);
}

static void route_batch(api_ctx *c) {
  json_t *items = param(c, "items"), *mode = param(c, "mode");
  int add = 0;
  int n = 0;
  args *as = NULL;
  int *argcs = NULL;
  vlm__resp_arg **argvs = NULL;
  vlm__http_req *req = NULL;
  static const char *const names[] = {"items", "mode", NULL};
  if (only(c, names) < 0)
    return;
  if (mode && !json_is_null(mode)) {
    const char *s = json_string_value(mode);
    if (!s || (strcmp(s, "upsert") && strcmp(s, "add"))) {
      fail(c, 400, "mode", "mode must be \"upsert\" or \"add\"");
      return;
    }
    add = !strcmp(s, "add");
  }
  if (!json_is_array(items) || json_array_size(items) == 0) {
    fail(c, 400, "items", "items must be a non-empty array of items");
    return;
  }
  n = (int)json_array_size(items);
  if (n > 100000) {
    fail(c, 400, "items", "at most 100000 items in one batch");
    return;
  }
  as = calloc((size_t)n, sizeof *as);
  argcs = calloc((size_t)n, sizeof *argcs);
  argvs = calloc((size_t)n, sizeof *argvs);
  req = new_req(c, VLM__API_BATCH);
  if (!as || !argcs || !argvs || !req ||
      !(req->keys = calloc((size_t)n, sizeof *req->keys))) {
    fail(c, 500, NULL, "out of memory");
    goto done;
  }
  req->batch_add = add;
  json_t *saved = c->params;
  for (int i = 0; i < n && !c->failed; i++) {
    json_t *it = json_array_get(items, (size_t)i);
    char prefix[32];
    snprintf(prefix, sizeof prefix, "items[%d].", i);
    args_init(&as[i]);
    if (!json_is_object(it)) {
      char field[32];
      snprintf(field, sizeof field, "items[%d]", i);
      fail(c, 400, field, "items[%d] must be an object", i);
      break;
    }
    c->params = it;
    c->typed = 1;
    c->prefix = prefix;
    const char *key = json_string_value(json_object_get(it, "key"));
    if (!key || !*key) {
      fail(c, 400, "key", "key must be a non-empty string");
    } else if (!json_object_get(it, "text") &&
               !json_object_get(it, "image") &&
               !json_object_get(it, "text_vec") &&
               !json_object_get(it, "image_vec")) {
      fail(c, 400, "text", "an item needs a vector: text, image, text_vec "
           "or image_vec");
    } else {
      args_str(&as[i], add ? "ADD" : "UPSERT");
      args_str(&as[i], key);
      item_args(c, &as[i]);
      if (!c->failed && as[i].store.oom)
        fail(c, 500, NULL, "out of memory");
      if (!c->failed && !(req->keys[i] = strdup(key)))
        fail(c, 500, NULL, "out of memory");
      req->nkeys = i + 1;
    }
    c->prefix = NULL;
    argcs[i] = as[i].argc;
    argvs[i] = args_argv(&as[i]);
  }
  c->params = saved;
  if (c->failed)
    goto done;
  int bad;
  char why[512];
  int drc = vlm__dispatch_http_batch(c->conn, n, argcs, argvs, req, &bad,
                                     why, sizeof why);
  if (drc < 0) {
    char field[48];
    snprintf(field, sizeof field, "items[%d]", bad);
    if (drc == -2) /* a live move's fence: nothing written, send it again */
      fail(c, 503, field, "items[%d] (key '%s'): %s", bad, req->keys[bad],
           why);
    else if (bad >= 0)
      fail(c, 400, field, "items[%d] (key '%s'): %s", bad, req->keys[bad],
           why);
    else
      fail(c, 500, NULL, "%s", why);
    goto done;
  }
  req = NULL; /* the job has it */
done:
  for (int i = 0; as && i < n; i++)
    args_free(&as[i]);
  free(as);
  free(argcs);
  free(argvs);
  vlm__http_req_free(req);
}

static void route_embed(api_ctx *c) {
  static const char *const names[] = {"text", "image", NULL};
  args a;
  args_init(&a);
  const char *s;
  size_t n;
  const void *img;
  int rc, kinds = 0;
  if (only(c, names) < 0)
    goto done;
  args_str(&a, "EMBED");
  if ((rc = get_str(c, "text", &s, &n)) > 0) {
    args_str(&a, "TEXT");
    args_add(&a, s, n);
    kinds++;
  }
  if (rc < 0 || (rc = get_image(c, "image", &img, &n)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "IMAGE");
    args_add(&a, img, n);
    kinds++;
  }
  if (kinds != 1) {
    fail(c, 400, "text", "give exactly one of text and image");
    goto done;
  }
  args_str(&a, "ARRAY");
  vlm__http_req *req = new_req(c, VLM__API_EMBED);
  if (req)
    dispatch(c, &a, req);
done:
  args_free(&a);
}

static void route_eval(api_ctx *c) {
  static const char *const names[] = {"k",  "direction", "sample",
                                      "seed", "ef",      "nprobe",
                                      "exact_only", NULL};
  args a;
  args_init(&a);
  long long v;
  int rc, b;
  const char *s;
  if (only(c, names) < 0)
    goto done;
  args_str(&a, "VLM.EVAL");
  json_t *k = param(c, "k");
  if (k && !json_is_null(k)) {
    char list[256] = "";
    size_t used = 0;
    if (json_is_integer(k)) {
      snprintf(list, sizeof list, "%lld", (long long)json_integer_value(k));
    } else if (json_is_array(k) && json_array_size(k) > 0) {
      size_t i;
      json_t *x;
      json_array_foreach(k, i, x) {
        if (!json_is_integer(x) || used > sizeof list - 24) {
          fail(c, 400, "k", "k must be an integer or an array of integers");
          goto done;
        }
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%lld",
                                 i ? "," : "",
                                 (long long)json_integer_value(x));
      }
    } else if (!c->typed && json_is_string(k)) {
      snprintf(list, sizeof list, "%s", json_string_value(k));
    } else {
      fail(c, 400, "k", "k must be an integer or an array of integers");
      goto done;
    }
    args_str(&a, "K");
    args_str(&a, list);
  }
  if ((rc = get_str(c, "direction", &s, NULL)) < 0)
    goto done;
  if (rc > 0) {
    if (strcasecmp(s, "both") && strcasecmp(s, "t2i") &&
        strcasecmp(s, "i2t")) {
      fail(c, 400, "direction", "direction must be both, t2i or i2t");
      goto done;
    }
    args_str(&a, "DIRECTION");
    args_str(&a, s);
  }
  if ((rc = get_int(c, "sample", 1, 1 << 30, &v)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "SAMPLE");
    args_fmt(&a, "%lld", v);
  }
  if ((rc = get_int(c, "seed", 0, 1LL << 62, &v)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "SEED");
    args_fmt(&a, "%lld", v);
  }
  if ((rc = get_int(c, "ef", 1, 1 << 20, &v)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "EF");
    args_fmt(&a, "%lld", v);
  }
  if ((rc = get_int(c, "nprobe", 1, 1 << 20, &v)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "NPROBE");
    args_fmt(&a, "%lld", v);
  }
  if ((rc = get_bool(c, "exact_only", &b)) < 0)
    goto done;
  if (rc > 0 && b)
    args_str(&a, "EXACTONLY");
  vlm__http_req *req = new_req(c, VLM__API_EVAL);
  if (req)
    dispatch(c, &a, req);
done:
  args_free(&a);
}

static void route_scan(api_ctx *c) {
  static const char *const names[] = {"cursor", "count", "match", NULL};
  args a;
  args_init(&a);
  long long v;
  int rc;
  const char *s;
  if (only(c, names) < 0)
    goto done;
  args_str(&a, "SCAN");
  if ((rc = get_int(c, "cursor", 0, INT64_MAX, &v)) < 0)
    goto done;
  args_fmt(&a, "%lld", rc > 0 ? v : 0);
  if ((rc = get_int(c, "count", 1, 100000, &v)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "COUNT");
    args_fmt(&a, "%lld", v);
  }
  if ((rc = get_str(c, "match", &s, NULL)) < 0)
    goto done;
  if (rc > 0) {
    args_str(&a, "MATCH");
    args_str(&a, s);
  }
  vlm__http_req *req = new_req(c, VLM__API_SCAN);
  if (req)
    dispatch(c, &a, req);
done:
  args_free(&a);
}

static void route_command(api_ctx *c, const char *cmd, int route) {
  args a;
  args_init(&a);
  args_str(&a, cmd);
  vlm__http_req *req = new_req(c, route);
  if (req)
    dispatch(c, &a, req);
  args_free(&a);
}

/* ---- the router ---- */

static int path_is(const vlm__http_request *r, const char *p) {
  return !strcmp(r->path, p);
}

static int method_ok(api_ctx *c, int want1, int want2) {
  int m = c->r->method;
  if (m == want1 || m == want2)
    return 1;
  fail(c, 405, NULL, "%s is not allowed on %s (use %s%s%s)",
       http_method_str((enum http_method)m), c->r->path,
       http_method_str((enum http_method)want1), want2 != want1 ? " or " : "",
       want2 != want1 ? http_method_str((enum http_method)want2) : "");
  return 0;
}

void vlm__api_handle(vlm__conn *conn, const vlm__http_request *r) {
  api_ctx c = {.conn = conn, .r = r};
  vlm_server *srv = conn->srv;
  const char *p = r->path;
  if (path_is(r, "/healthz")) {
    if (method_ok(&c, HTTP_GET, HTTP_GET))
      respond_json(&c, 200, "{\"status\":\"ok\"}\n");
  } else if (path_is(r, "/readyz")) {
    if (method_ok(&c, HTTP_GET, HTTP_GET))
      respond_json(&c, srv->shutting_down ? 503 : 200,
                   srv->shutting_down ? "{\"status\":\"shutting_down\"}\n"
                                      : "{\"status\":\"ready\"}\n");
  } else if (path_is(r, "/openapi.json")) {
    if (method_ok(&c, HTTP_GET, HTTP_GET))
      vlm__http_respond(vlm__conn_reply_buf(conn), 200, "application/json",
                        vlm__openapi_json, vlm__openapi_json_len,
                        r->keep_alive, NULL);
  } else if (path_is(r, "/metrics")) {
    if (method_ok(&c, HTTP_GET, HTTP_GET))
      route_command(&c, "METRICS", VLM__API_METRICS);
  } else if (path_is(r, "/v1/info")) {
    if (method_ok(&c, HTTP_GET, HTTP_GET))
      route_command(&c, "INFO", VLM__API_INFO);
  } else if (path_is(r, "/v1/search")) {
    if (method_ok(&c, HTTP_GET, HTTP_POST) &&
        load_params(&c, r->method == HTTP_POST) == 0)
      route_search(&c);
  } else if (path_is(r, "/v1/items:batch")) {
    if (method_ok(&c, HTTP_POST, HTTP_POST) && load_params(&c, 1) == 0) {
      if (!c.typed)
        fail(&c, 400, "body", "a batch is a JSON body {\"items\": [...]}");
      else
        route_batch(&c);
    }
  } else if (path_is(r, "/v1/embed")) {
    if (method_ok(&c, HTTP_POST, HTTP_POST) && load_params(&c, 1) == 0)
      route_embed(&c);
  } else if (path_is(r, "/v1/eval")) {
    if (method_ok(&c, HTTP_POST, HTTP_GET) &&
        load_params(&c, r->method == HTTP_POST) == 0)
      route_eval(&c);
  } else if (path_is(r, "/v1/scan")) {
    if (method_ok(&c, HTTP_GET, HTTP_GET) && load_params(&c, 0) == 0)
      route_scan(&c);
  } else if (!strncmp(p, "/v1/items/", 10) && p[10]) {
    /* /v1/items/{key}, /v1/items/{key}/thumbnail, /v1/items/{key}/image
     * or /v1/items/{key}/explain; a '/' inside a key is sent as %2F */
    char key[VLM__HTTP_MAX_URL];
    const char *seg = p + 10, *slash = strchr(seg, '/');
    int thumb = slash && !strcmp(slash, "/thumbnail")
                    ? 1
                    : slash && !strcmp(slash, "/image") ? 2 : 0;
    int explain = slash && !strcmp(slash, "/explain");
    size_t n = slash ? (size_t)(slash - seg) : strlen(seg);
    if (slash && !thumb && !explain) {
      fail(&c, 404, NULL, "no route %s (a '/' in a key is written %%2F)", p);
    } else {
      memcpy(key, seg, n);
      if (vlm__http_url_decode(key, &n) < 0) {
        fail(&c, 400, "key", "bad percent-escape in the key");
      } else if (valid_key(&c, key, n)) {
        key[n] = '\0';
        if (r->method == HTTP_GET && load_params(&c, 0) < 0)
          ;
        else if (explain)
          route_explain(&c, key);
        else
          route_item(&c, key, thumb);
      }
    }
  } else if (vlm__console_asset(p, NULL, NULL, NULL) == 0) {
    const void *body;
    size_t len;
    const char *ctype;
    if (method_ok(&c, HTTP_GET, HTTP_GET) &&
        vlm__console_asset(p, &body, &len, &ctype) == 0)
      vlm__http_respond(vlm__conn_reply_buf(conn), 200, ctype, body, len,
                        r->keep_alive, vlm__console_headers);
  } else {
    fail(&c, 404, NULL, "no route %s %s (see /openapi.json)",
         http_method_str((enum http_method)r->method), p);
  }
  json_decref(c.params);
  free(c.decoded);
}
