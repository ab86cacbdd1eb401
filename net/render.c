/* render.c - a finished API job's RESP3 reply as its HTTP response (see
 * http.h): search hits with their fields and thumbnail URLs, items with
 * their meta as JSON and vectors as numbers, INFO's text as an object,
 * an explanation as its PNG with the method and score in headers, and
 * the command's errors as JSON errors with the status they deserve
 * (400 for what the request got wrong, naming the member, 404, 409, 500
 * and 503 for the server's own failures). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "vlm_error.h"

/* Which JSON member a command's error is about, from its first word
 * ("K must be ...", "VECTOR must be ..."). */
static const char *error_field(const char *msg) {
  static const struct {
    const char *word, *field;
  } map[] = {{"K ", "k"},           {"FILTER", "filter"},
             {"TARGET", "target"},  {"HYBRID", "hybrid"},
             {"WEIGHT", "weight"},  {"EF ", "ef"},
             {"NPROBE", "nprobe"},  {"COLLAPSE", "collapse"},
             {"VECTOR", "vector"},  {"IMAGEVEC", "image_vec"},
             {"TEXTVEC", "text_vec"}, {"META", "meta"},
             {"TEXT", "text"},      {"SOURCE", "source"},
             {"unknown field", "fields"}, {"SAMPLE", "sample"},
             {"SEED", "seed"},      {"DIRECTION", "direction"},
             {"invalid cursor", "cursor"}, {"COUNT", "count"},
             {"cannot read the image", "image"},
             {"cannot embed the image", "image"},
             {"cannot embed the text", "text"},
             {"filter", "filter"},  {"no such key", "key"}};
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    if (!strncmp(msg, map[i].word, strlen(map[i].word)))
      return map[i].field;
  return NULL;
}

/* The media type of image bytes by their first bytes (what the decoder
 * would read them as); application/octet-stream when none fits. */
static const char *image_type(const char *p, size_t n) {
  const unsigned char *b = (const unsigned char *)p;
  if (n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
    return "image/jpeg";
  if (n >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8))
    return "image/png";
  if (n >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4))
    return "image/webp";
  if (n >= 6 && (!memcmp(b, "GIF87a", 6) || !memcmp(b, "GIF89a", 6)))
    return "image/gif";
  if (n >= 4 && (!memcmp(b, "II*\0", 4) || !memcmp(b, "MM\0*", 4)))
    return "image/tiff";
  if (n >= 2 && b[0] == 'B' && b[1] == 'M')
    return "image/bmp";
  if (n >= 12 && !memcmp(b + 4, "ftyp", 4))
    return !memcmp(b + 8, "avif", 4) || !memcmp(b + 8, "avis", 4)
               ? "image/avif"
               : "image/heic";
  return "application/octet-stream";
}

/* An error reply: 400 for what the request got wrong, 500/503 for the
 * server's own failures (storage, memory, a busy resource). */
static void render_error(vlm__buf *out, const vlm__r3 *v, int keep_alive) {
  char msg[600];
  size_t n = v->len;
  const char *s = v->str;
  if (n > 4 && !memcmp(s, "ERR ", 4))
    s += 4, n -= 4;
  else if (n > 10 && !memcmp(s, "EXECABORT ", 10))
    s += 10, n -= 10;
  snprintf(msg, sizeof msg, "%.*s", (int)n, s);
  int status = 400;
  static const int server_side[] = {VLM_ENOMEM, VLM_EIO,      VLM_ECORRUPT,
                                    VLM_ENOSPACE, VLM_ESTORE, VLM_EINDEX,
                                    VLM_EBUSY,  VLM_EREADONLY};
  static const char discarded[] = "Transaction discarded, nothing written: ";
  const char *m = msg;
  if (!strncmp(m, discarded, sizeof discarded - 1))
    m += sizeof discarded - 1;
  for (size_t i = 0; i < sizeof server_side / sizeof server_side[0]; i++) {
    const char *e = vlm_strerror(server_side[i]);
    if (!strncmp(m, e, strlen(e)))
      status = server_side[i] == VLM_EBUSY || server_side[i] == VLM_EREADONLY
                   ? 503
                   : 500;
  }
  if (!strncmp(m, "out of memory", 13))
    status = 500;
  if (!strncmp(msg, "TRYAGAIN ", 9)) /* a live move's fence: 503 and
                                        Retry-After, nothing written */
    status = 503;
  if (!strncmp(msg, "no such key", 11))
    status = 404;
  vlm__http_error(out, status, vlm__http_code(status),
                  status == 400 ? error_field(m) : NULL, keep_alive, "%s",
                  msg);
}

static void url_escape(vlm__buf *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' ||
        ch == '~') {
      vlm__buf_append(b, s, 1);
    } else {
      char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
      vlm__buf_append(b, e, 3);
    }
  }
}

/* A field's value: meta as the JSON it is, a thumbnail as base64. */
static void field_value(vlm__buf *b, const vlm__r3 *name, const vlm__r3 *v) {
  if (vlm__r3_is(name, "meta") && v->type == '$')
    vlm__json_raw(b, v->str, v->len);
  else if (vlm__r3_is(name, "thumb") && v->type == '$') {
    vlm__buf_append(b, "\"", 1);
    vlm__base64_encode(b, v->str, v->len);
    vlm__buf_append(b, "\"", 1);
  } else
    vlm__json_r3(b, v);
}

static void render_search(vlm__buf *body, const vlm__r3 *v,
                          const vlm__http_req *req) {
  vlm__buf_append(body, "{\"hits\":[", 9);
  for (long h = 0; v->type == '%' && h < v->n; h++) {
    const vlm__r3 *key = &v->kids[2 * h], *m = &v->kids[2 * h + 1];
    char tmp[VLM__HTTP_MAX_URL];
    snprintf(tmp, sizeof tmp, "%.*s", (int)key->len, key->str);
    vlm__buf_append(body, h ? ",{\"key\":" : "{\"key\":", h ? 8 : 7);
    vlm__json_str(body, key->str, key->len);
    vlm__buf_append(body, ",\"score\":", 9);
    const vlm__r3 *score = vlm__r3_get(m, "score");
    if (score)
      vlm__json_r3(body, score);
    else
      vlm__buf_append(body, "null", 4);
    vlm__buf_append(body, ",\"fields\":{", 11);
    int first = 1;
    for (long f = 0; m->type == '%' && f < m->n; f++) {
      const vlm__r3 *name = &m->kids[2 * f];
      if (vlm__r3_is(name, "score") ||
          (req->hide_has_thumb && vlm__r3_is(name, "has_thumb")))
        continue;
      if (!first)
        vlm__buf_append(body, ",", 1);
      first = 0;
      vlm__json_r3(body, name);
      vlm__buf_append(body, ":", 1);
      field_value(body, name, &m->kids[2 * f + 1]);
    }
    const vlm__r3 *has = vlm__r3_get(m, "has_thumb");
    if (has && has->type == '#' && !has->integer) {
      vlm__buf_append(body, "},\"thumbnail\":null}", 19);
    } else {
      vlm__buf_append(body, "},\"thumbnail\":\"/v1/items/", 25);
      url_escape(body, tmp);
      vlm__buf_append(body, "/thumbnail\"}", 12);
    }
  }
  vlm__buf_printf(body, "],\"took_ms\":%.3f}\n",
                  (double)(vlm__now_ns() - req->start_ns) * 1e-6);
}

/* A float32 vector sent as bytes, as a JSON array. */
static void render_vector(vlm__buf *body, const vlm__r3 *v) {
  if (v->type != '$') {
    vlm__buf_append(body, "null", 4);
    return;
  }
  vlm__buf_append(body, "[", 1);
  for (size_t i = 0; i + 4 <= v->len; i += 4) {
    float f;
    memcpy(&f, v->str + i, 4);
    if (i)
      vlm__buf_append(body, ",", 1);
    vlm__json_float(body, f);
  }
  vlm__buf_append(body, "]", 1);
}

static void render_item(vlm__buf *body, const vlm__r3 *v) {
  vlm__buf_append(body, "{", 1);
  for (long i = 0; i < v->n; i++) {
    const vlm__r3 *name = &v->kids[2 * i], *val = &v->kids[2 * i + 1];
    if (i)
      vlm__buf_append(body, ",", 1);
    vlm__json_r3(body, name);
    vlm__buf_append(body, ":", 1);
    if (vlm__r3_is(name, "image_vec") || vlm__r3_is(name, "text_vec"))
      render_vector(body, val);
    else
      field_value(body, name, val);
  }
  vlm__buf_append(body, "}\n", 2);
}

/* INFO's text as JSON: each section an object (numbers as numbers), and
 * up front what the console needs: items, dim, model, index, fields. */
static void info_value(vlm__buf *b, const char *s, size_t n) {
  char tmp[64];
  if (n > 0 && n < sizeof tmp) {
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    char *end;
    double d = strtod(tmp, &end);
    if (!*end && isfinite(d) && (tmp[0] == '-' || (tmp[0] >= '0' &&
                                                   tmp[0] <= '9'))) {
      vlm__buf_append(b, s, n);
      return;
    }
  }
  vlm__json_str(b, s, n);
}

/* The value of "name:" in INFO text, or NULL. */
static const char *info_get(const char *text, size_t len, const char *name,
                            size_t *n) {
  size_t nl = strlen(name);
  for (const char *p = text; p < text + len;) {
    const char *eol = memchr(p, '\r', (size_t)(text + len - p));
    if (!eol)
      eol = text + len;
    if ((size_t)(eol - p) > nl && !memcmp(p, name, nl) && p[nl] == ':') {
      *n = (size_t)(eol - p) - nl - 1;
      return p + nl + 1;
    }
    p = eol + 2;
  }
  return NULL;
}

static void info_member(vlm__buf *b, const char *text, size_t len,
                        const char *key, const char *name, int first) {
  size_t n;
  const char *v = info_get(text, len, name, &n);
  vlm__buf_printf(b, "%s\"%s\":", first ? "" : ",", key);
  if (v)
    info_value(b, v, n);
  else
    vlm__buf_append(b, "null", 4);
}

static void render_info(vlm__buf *b, const vlm__r3 *v) {
  const char *t = v->str;
  size_t len = v->len, n;
  vlm__buf_append(b, "{", 1);
  info_member(b, t, len, "items", "items", 1);
  info_member(b, t, len, "dim", "dim", 0);
  vlm__buf_append(b, ",\"model\":{", 10);
  info_member(b, t, len, "family", "family", 1);
  info_member(b, t, len, "id", "model_id", 0);
  info_member(b, t, len, "loaded", "model_loaded", 0);
  info_member(b, t, len, "image_size", "image_size", 0);
  info_member(b, t, len, "context_length", "context_length", 0);
  info_member(b, t, len, "logit_scale", "logit_scale", 0);
  info_member(b, t, len, "logit_bias", "logit_bias", 0);
  vlm__buf_append(b, "},\"index\":{", 11);
  info_member(b, t, len, "kind", "index_factory", 1);
  vlm__buf_append(b, ",\"effort\":{", 11);
  info_member(b, t, len, "image", "tuned_effort_image", 1);
  info_member(b, t, len, "text", "tuned_effort_text", 0);
  vlm__buf_append(b, "}", 1);
  info_member(b, t, len, "vectors", "index_vectors", 0);
  info_member(b, t, len, "pending_vectors", "pending_vectors", 0);
  info_member(b, t, len, "trained", "index_trained", 0);
  vlm__buf_append(b, "},\"fields\":[", 12);
  const char *f = info_get(t, len, "fields", &n);
  for (size_t i = 0, first = 1; f && i < n;) {
    size_t e = i;
    while (e < n && f[e] != ',')
      e++;
    const char *colon = memchr(f + i, ':', e - i);
    if (colon) {
      const char *type = colon + 1;
      size_t tl = (size_t)(f + e - type);
      vlm__buf_append(b, first ? "{\"name\":" : ",{\"name\":",
                      first ? 8 : 9);
      vlm__json_str(b, f + i, (size_t)(colon - f - i));
      vlm__buf_printf(b, ",\"type\":\"%s\"}",
                      tl == 3 && !memcmp(type, "int", 3)    ? "integer"
                      : tl == 4 && !memcmp(type, "real", 4) ? "number"
                                                            : "string");
      first = 0;
    }
    i = e + 1;
  }
  vlm__buf_append(b, "],\"sections\":{", 14);
  /* then every section as INFO writes it */
  const char *sec = NULL;
  for (const char *p = t; p < t + len;) {
    const char *eol = memchr(p, '\r', (size_t)(t + len - p));
    if (!eol)
      eol = t + len;
    size_t ll = (size_t)(eol - p);
    if (ll > 2 && p[0] == '#') {
      if (sec)
        vlm__buf_append(b, "}", 1);
      if (sec)
        vlm__buf_append(b, ",", 1);
      sec = p + 2;
      char name[32];
      size_t nn = ll - 2 < sizeof name - 1 ? ll - 2 : sizeof name - 1;
      for (size_t i = 0; i < nn; i++)
        name[i] = (char)(sec[i] >= 'A' && sec[i] <= 'Z' ? sec[i] + 32
                                                         : sec[i]);
      vlm__json_str(b, name, nn);
      vlm__buf_append(b, ":{", 2);
      sec = p;
    } else if (ll > 0 && sec) {
      const char *colon = memchr(p, ':', ll);
      if (colon) {
        if (b->data[b->len - 1] != '{')
          vlm__buf_append(b, ",", 1);
        vlm__json_str(b, p, (size_t)(colon - p));
        vlm__buf_append(b, ":", 1);
        info_value(b, colon + 1, (size_t)(eol - colon - 1));
      }
    }
    p = eol + 2;
  }
  if (sec)
    vlm__buf_append(b, "}", 1);
  vlm__buf_append(b, "}}\n", 3);
}

/* Whether a reply's text ends with s. */
static int ends_with(const vlm__r3 *v, const char *s) {
  size_t n = strlen(s);
  return v->len >= n && !memcmp(v->str + v->len - n, s, n);
}

void vlm__api_render(vlm__conn *conn, vlm__job *job, vlm__buf *out) {
  vlm__http_req *req = job->http;
  int ka = req->keep_alive;
  vlm__r3 v;
  if (vlm__r3_parse(job->reply.data, job->reply.len, &v) < 0) {
    vlm__http_error(out, 500, "internal", NULL, ka, "unreadable reply");
    return;
  }
  vlm__buf body;
  vlm__buf_init(&body, 0);
  int status = 200;
  const char *ctype = "application/json";
  if (v.type == '-' && req->route == VLM__API_EXPLAIN &&
      ends_with(&v, "the item has no thumbnail")) {
    /* as /thumbnail answers it: there is no picture to explain */
    vlm__http_error(out, 404, "not_found", NULL, ka, "item '%s' has no "
                    "thumbnail to explain (it was stored without an image)",
                    req->key);
    goto done;
  }
  if (v.type == '-') {
    render_error(out, &v, ka);
    goto done;
  }
  switch (req->route) {
  case VLM__API_SEARCH:
    render_search(&body, &v, req);
    break;
  case VLM__API_GET:
    if (v.type != '%') {
      vlm__http_error(out, 404, "not_found", NULL, ka, "no item '%s'",
                      req->key);
      goto done;
    }
    render_item(&body, &v);
    break;
  case VLM__API_THUMB: {
    const vlm__r3 *t = vlm__r3_get(&v, "thumb");
    if (!t || t->type != '$') {
      vlm__http_error(out, 404, "not_found", NULL, ka, v.type == '%'
                      ? "item '%s' has no thumbnail" : "no item '%s'",
                      req->key);
      goto done;
    }
    vlm__http_respond(out, 200, "image/jpeg", t->str, t->len, ka,
                      "Cache-Control: no-cache\r\n");
    goto done;
  }
  case VLM__API_IMAGE: {
    /* the kept original bytes, as stored; the type from their magic */
    const vlm__r3 *t = vlm__r3_get(&v, "image");
    if (!t || t->type != '$') {
      vlm__http_error(out, 404, "not_found", NULL, ka, v.type == '%'
                      ? "item '%s' keeps no image (init --keep-images, or "
                        "vlmdb config --keep-images, before it was written)"
                      : "no item '%s'",
                      req->key);
      goto done;
    }
    vlm__http_respond(out, 200, image_type(t->str, t->len), t->str, t->len,
                      ka, "Cache-Control: no-cache\r\n");
    goto done;
  }
  case VLM__API_EXPLAIN: {
    /* VLM.EXPLAIN's map; null for a missing key */
    const vlm__r3 *png = vlm__r3_get(&v, "png");
    const vlm__r3 *score = vlm__r3_get(&v, "score");
    const vlm__r3 *grid = vlm__r3_get(&v, "grid");
    if (v.type != '%') {
      vlm__http_error(out, 404, "not_found", NULL, ka, "no item '%s'",
                      req->key);
      goto done;
    }
    if (!png || png->type != '$' || !score || score->type != ',' || !grid ||
        grid->type != ':') {
      vlm__http_error(out, 500, "internal", NULL, ka, "unexpected reply");
      goto done;
    }
    char extra[256];
    snprintf(extra, sizeof extra,
             "Cache-Control: no-cache\r\n"
             "X-Vlmdb-Explain-Method: %s\r\n"
             "X-Vlmdb-Explain-Score: %.*s\r\n"
             "X-Vlmdb-Explain-Grid: %lld\r\n",
             req->explain_method ? req->explain_method : "auto",
             (int)(score->len < 40 ? score->len : 40), score->str,
             grid->integer);
    vlm__http_respond(out, 200, "image/png", png->str, png->len, ka, extra);
    goto done;
  }
  case VLM__API_PUT:
  case VLM__API_ADD:
  case VLM__API_PATCH: {
    int created = req->route == VLM__API_ADD ||
                  (req->route == VLM__API_PUT &&
                   !vlm__job_upsert_existed(job));
    if (v.integer == 0) {
      if (req->route == VLM__API_ADD)
        vlm__http_error(out, 409, "conflict", "key", ka,
                        "item '%s' exists (PUT replaces it)", req->key);
      else
        vlm__http_error(out, 404, "not_found", NULL, ka, "no item '%s'",
                        req->key);
      goto done;
    }
    status = created ? 201 : 200;
    vlm__buf_append(&body, "{\"key\":", 7);
    vlm__json_cstr(&body, req->key);
    vlm__buf_printf(&body, ",\"result\":\"%s\"}\n",
                    req->route == VLM__API_PATCH ? "updated"
                    : created                    ? "created"
                                                 : "replaced");
    break;
  }
  case VLM__API_DELETE:
    if (v.integer == 0) {
      vlm__http_error(out, 404, "not_found", NULL, ka, "no item '%s'",
                      req->key);
      goto done;
    }
    vlm__buf_printf(&body, "{\"deleted\":%lld}\n", v.integer);
    break;
  case VLM__API_BATCH:
    vlm__buf_append(&body, "{\"results\":[", 12);
    for (long i = 0; v.type == '*' && i < v.n && i < req->nkeys; i++) {
      vlm__buf_append(&body, i ? ",{\"key\":" : "{\"key\":", i ? 8 : 7);
      vlm__json_cstr(&body, req->keys[i]);
      vlm__buf_printf(&body, ",\"result\":\"%s\"}",
                      !req->batch_add     ? "upserted"
                      : v.kids[i].integer ? "created"
                                          : "exists");
    }
    vlm__buf_append(&body, "]}\n", 3);
    break;
  case VLM__API_EMBED:
    vlm__buf_append(&body, "{\"vector\":", 10);
    vlm__json_r3(&body, &v);
    vlm__buf_printf(&body, ",\"dim\":%ld}\n", v.n);
    break;
  case VLM__API_SCAN:
    if (v.type != '*' || v.n != 2) {
      vlm__http_error(out, 500, "internal", NULL, ka, "unexpected reply");
      goto done;
    }
    vlm__buf_append(&body, "{\"cursor\":", 10);
    vlm__json_r3(&body, &v.kids[0]);
    vlm__buf_append(&body, ",\"keys\":", 8);
    vlm__json_r3(&body, &v.kids[1]);
    vlm__buf_append(&body, "}\n", 2);
    break;
  case VLM__API_INFO:
    render_info(&body, &v);
    break;
  case VLM__API_METRICS:
    ctype = "text/plain; version=0.0.4; charset=utf-8";
    vlm__buf_append(&body, v.str, v.len);
    break;
  default: /* EVAL: the reply as it is */
    vlm__json_r3(&body, &v);
    vlm__buf_append(&body, "\n", 1);
  }
  if (body.oom)
    vlm__http_error(out, 500, "internal", NULL, ka, "out of memory");
  else
    vlm__http_respond(out, status, ctype, body.data, body.len, ka, NULL);
done:
  (void)conn;
  vlm__buf_free(&body);
  vlm__r3_free(&v);
}
