/* json.c - reading the RESP3 replies the commands wrote, and writing JSON
 * (see http.h).  The replies come from this server's own writer, but the
 * reader still checks every length against the buffer. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

/* ======================================================================
 * RESP3 reader
 * ==================================================================== */

#define R3_MAX_DEPTH 16

/* The line at buf[*pos] up to CRLF: its start and length; -1 if none. */
static int r3_line(const char *buf, size_t len, size_t *pos,
                   const char **line, size_t *n) {
  const char *start = buf + *pos;
  const char *end = memchr(start, '\r', len - *pos);
  if (!end || (size_t)(end - buf) + 1 >= len || end[1] != '\n')
    return -1;
  *line = start;
  *n = (size_t)(end - start);
  *pos = (size_t)(end - buf) + 2;
  return 0;
}

static int r3_number(const char *s, size_t n, long long *out) {
  char tmp[32];
  if (n == 0 || n >= sizeof tmp)
    return -1;
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  char *end;
  *out = strtoll(tmp, &end, 10);
  return *end ? -1 : 0;
}

static int r3_read(const char *buf, size_t len, size_t *pos, vlm__r3 *v,
                   int depth) {
  memset(v, 0, sizeof *v);
  if (*pos >= len || depth > R3_MAX_DEPTH)
    return -1;
  v->type = buf[(*pos)++];
  const char *line;
  size_t n;
  if (r3_line(buf, len, pos, &line, &n) < 0)
    return -1;
  switch (v->type) {
  case '+':
  case '-':
  case ',':
    v->str = line;
    v->len = n;
    return 0;
  case ':':
    return r3_number(line, n, &v->integer);
  case '_':
    return 0;
  case '#':
    v->integer = n == 1 && line[0] == 't';
    return 0;
  case '$': {
    long long blen;
    if (r3_number(line, n, &blen) < 0)
      return -1;
    if (blen < 0) {
      v->type = '_';
      return 0;
    }
    if ((unsigned long long)blen > len - *pos ||
        len - *pos - (size_t)blen < 2)
      return -1;
    v->str = buf + *pos;
    v->len = (size_t)blen;
    *pos += (size_t)blen + 2;
    return 0;
  }
  case '*':
  case '%': {
    long long count;
    if (r3_number(line, n, &count) < 0)
      return -1;
    if (count < 0) {
      v->type = '_';
      return 0;
    }
    long long kids = v->type == '%' ? 2 * count : count;
    /* each element takes at least 3 bytes: no count beyond the buffer */
    if ((unsigned long long)kids > (len - *pos) / 3)
      return -1;
    v->n = (long)count;
    if (kids == 0)
      return 0;
    v->kids = calloc((size_t)kids, sizeof *v->kids);
    if (!v->kids)
      return -1;
    for (long long i = 0; i < kids; i++)
      if (r3_read(buf, len, pos, &v->kids[i], depth + 1) < 0) {
        v->n = (long)(v->type == '%' ? (i + 1) / 2 + 1 : i + 1);
        return -1;
      }
    return 0;
  }
  default:
    return -1;
  }
}

int vlm__r3_parse(const char *buf, size_t len, vlm__r3 *out) {
  size_t pos = 0;
  if (r3_read(buf, len, &pos, out, 0) < 0) {
    vlm__r3_free(out);
    return -1;
  }
  return 0;
}

static void r3_free_kids(vlm__r3 *v) {
  if (!v->kids)
    return;
  long kids = v->type == '%' ? 2 * v->n : v->n;
  for (long i = 0; i < kids; i++)
    r3_free_kids(&v->kids[i]);
  free(v->kids);
  v->kids = NULL;
}

void vlm__r3_free(vlm__r3 *v) {
  if (v)
    r3_free_kids(v);
}

int vlm__r3_is(const vlm__r3 *v, const char *s) {
  size_t n = strlen(s);
  return v && (v->type == '$' || v->type == '+') && v->len == n &&
         !memcmp(v->str, s, n);
}

const vlm__r3 *vlm__r3_get(const vlm__r3 *map, const char *key) {
  if (!map || map->type != '%')
    return NULL;
  for (long i = 0; i < map->n; i++)
    if (vlm__r3_is(&map->kids[2 * i], key))
      return &map->kids[2 * i + 1];
  return NULL;
}

/* ======================================================================
 * JSON writer
 * ==================================================================== */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  unsigned min;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf)
    len = 2, min = 0x80;
  else if (c >= 0xe0 && c <= 0xef)
    len = 3, min = 0x800;
  else if (c >= 0xf0 && c <= 0xf4)
    len = 4, min = 0x10000;
  else
    return 0;
  if (n < len)
    return 0;
  unsigned cp = c & (0x7f >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return len;
}

void vlm__json_str(vlm__buf *b, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)s;
  vlm__buf_reserve(b, len + 2);
  vlm__buf_append(b, "\"", 1);
  size_t run = 0; /* bytes copied as they are, pending */
  for (size_t i = 0; i < len;) {
    unsigned char c = p[i];
    size_t seq = c >= 0x20 && c != '"' && c != '\\' ? utf8_seq(p + i, len - i)
                                                   : 0;
    if (seq > 0) {
      i += seq;
      run += seq;
      continue;
    }
    vlm__buf_append(b, p + i - run, run);
    run = 0;
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\', esc[1] = (char)c;
      vlm__buf_append(b, esc, 2);
    } else if (c == '\n') {
      vlm__buf_append(b, "\\n", 2);
    } else if (c == '\r') {
      vlm__buf_append(b, "\\r", 2);
    } else if (c == '\t') {
      vlm__buf_append(b, "\\t", 2);
    } else if (c < 0x20) {
      memcpy(esc, "\\u00", 4);
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      vlm__buf_append(b, esc, 6);
    } else {
      vlm__buf_append(b, "\\ufffd", 6); /* not UTF-8 */
    }
    i++;
  }
  vlm__buf_append(b, p + len - run, run);
  vlm__buf_append(b, "\"", 1);
}

void vlm__json_cstr(vlm__buf *b, const char *s) {
  if (s)
    vlm__json_str(b, s, strlen(s));
  else
    vlm__buf_append(b, "null", 4);
}

void vlm__json_float(vlm__buf *b, float v) {
  if (!isfinite(v)) {
    vlm__buf_append(b, "null", 4);
    return;
  }
  char tmp[32];
  for (int prec = 6; prec <= 9; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, (double)v);
    if (strtof(tmp, NULL) == v)
      break;
  }
  vlm__buf_append(b, tmp, strlen(tmp));
}

void vlm__json_raw(vlm__buf *b, const char *json, size_t len) {
  json_error_t err;
  json_t *v = json_loadb(json, len, JSON_DECODE_ANY, &err);
  if (v)
    vlm__buf_append(b, json, len);
  else
    vlm__json_str(b, json, len);
  json_decref(v);
}

/* A RESP3 double's text as a JSON number: "inf", "-inf" and "nan" have
 * none. */
static void json_double_text(vlm__buf *b, const char *s, size_t n) {
  char tmp[64];
  if (n == 0 || n >= sizeof tmp) {
    vlm__buf_append(b, "null", 4);
    return;
  }
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  char *end;
  double d = strtod(tmp, &end);
  if (*end || !isfinite(d))
    vlm__buf_append(b, "null", 4);
  else
    vlm__buf_append(b, s, n);
}

void vlm__json_r3(vlm__buf *b, const vlm__r3 *v) {
  switch (v->type) {
  case '+':
  case '-':
  case '$':
    vlm__json_str(b, v->str, v->len);
    return;
  case ':':
    vlm__buf_printf(b, "%lld", v->integer);
    return;
  case ',':
    json_double_text(b, v->str, v->len);
    return;
  case '#':
    vlm__buf_append(b, v->integer ? "true" : "false", v->integer ? 4 : 5);
    return;
  case '*':
    vlm__buf_append(b, "[", 1);
    for (long i = 0; i < v->n; i++) {
      if (i)
        vlm__buf_append(b, ",", 1);
      vlm__json_r3(b, &v->kids[i]);
    }
    vlm__buf_append(b, "]", 1);
    return;
  case '%':
    vlm__buf_append(b, "{", 1);
    for (long i = 0; i < v->n; i++) {
      const vlm__r3 *k = &v->kids[2 * i];
      if (i)
        vlm__buf_append(b, ",", 1);
      if (k->type == '$' || k->type == '+')
        vlm__json_str(b, k->str, k->len);
      else
        vlm__buf_printf(b, "\"%lld\"", k->integer);
      vlm__buf_append(b, ":", 1);
      vlm__json_r3(b, &v->kids[2 * i + 1]);
    }
    vlm__buf_append(b, "}", 1);
    return;
  default:
    vlm__buf_append(b, "null", 4);
  }
}

/* ======================================================================
 * Base64
 * ==================================================================== */

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+' || c == '-')
    return 62;
  if (c == '/' || c == '_')
    return 63;
  return -1;
}

unsigned char *vlm__base64_decode(const char *s, size_t len,
                                  size_t *out_len) {
  /* a data: URL as a browser's FileReader gives it */
  if (len > 5 && !memcmp(s, "data:", 5)) {
    const char *comma = memchr(s, ',', len);
    if (!comma)
      return NULL;
    len -= (size_t)(comma + 1 - s);
    s = comma + 1;
  }
  unsigned char *out = malloc(len / 4 * 3 + 4);
  if (!out)
    return NULL;
  size_t n = 0;
  unsigned acc = 0;
  int bits = 0, pad = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
      continue;
    if (c == '=') {
      pad++;
      continue;
    }
    int v = b64_value(c);
    if (v < 0 || pad) {
      free(out);
      return NULL;
    }
    acc = (acc << 6) | (unsigned)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (unsigned char)(acc >> bits);
    }
  }
  if (bits >= 6 || pad > 2) { /* a lone sixth bit group is no byte */
    free(out);
    return NULL;
  }
  *out_len = n;
  return out;
}

void vlm__base64_encode(vlm__buf *b, const void *data, size_t len) {
  static const char tab[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const unsigned char *p = data;
  if (vlm__buf_reserve(b, (len + 2) / 3 * 4) < 0)
    return;
  char *o = b->data + b->len;
  size_t i = 0;
  for (; i + 2 < len; i += 3) {
    unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
    *o++ = tab[v >> 18];
    *o++ = tab[(v >> 12) & 63];
    *o++ = tab[(v >> 6) & 63];
    *o++ = tab[v & 63];
  }
  if (i < len) {
    unsigned v = (unsigned)p[i] << 16 | (i + 1 < len ? (unsigned)p[i + 1] << 8
                                                      : 0);
    *o++ = tab[v >> 18];
    *o++ = tab[(v >> 12) & 63];
    *o++ = i + 1 < len ? tab[(v >> 6) & 63] : '=';
    *o++ = '=';
  }
  b->len = (size_t)(o - b->data);
}
