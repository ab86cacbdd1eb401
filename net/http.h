/* http.h - the HTTP/1.1 side of the server, private to net/:
 *
 *   http.c     connections: the parser (Debian's libhttp-parser), limits,
 *              authentication, keep-alive, response framing
 *   api.c      the JSON API (/v1/...): each request becomes the argv of
 *              the command RESP would run (SEARCH, GET, UPSERT, EMBED,
 *              VLM.EVAL, VLM.EXPLAIN, ...), through the same dispatch,
 *              workers and batcher
 *   render.c   its RESP3 reply becomes the JSON response
 *   json.c     a RESP3 reply reader and a JSON writer
 *   metrics.c  counters and histograms; GET /metrics
 *
 * An HTTP connection is a vlm__conn with conn->http set: the same reply
 * list keeps responses in request order (pipelining), the same execution
 * gate orders its writes, the same idle timeout and output cap apply.
 * Every request puts exactly one entry on the reply list: a job (whose
 * RESP3 reply api.c renders when its turn comes) or a response written
 * in full at once.  All of it runs on the loop thread, except the
 * commands' exec on the workers, as for RESP.
 */
#ifndef VLM_NET_HTTP_H
#define VLM_NET_HTTP_H

#include <http_parser.h>

#include "netint.h"

/* Limits on one request besides --max-request-bytes (the body). */
#define VLM__HTTP_MAX_URL 8192
#define VLM__HTTP_MAX_HEADERS 100
#define VLM__HTTP_MAX_HEADER_BYTES (64 * 1024)

/* A request as received (http.c hands it to api.c). */
typedef struct {
  int method;               /* http_parser's HTTP_GET, HTTP_POST, ... */
  char *path;               /* percent-encoded, NUL-terminated */
  size_t path_len;
  char *query;              /* after '?', or NULL */
  size_t query_len;
  const char *body;
  size_t body_len;
  const char *content_type; /* "" when absent */
  int keep_alive;
} vlm__http_request;

/* What a command job needs to become a response (owned by the job). */
enum {
  VLM__API_SEARCH = 1, VLM__API_GET, VLM__API_THUMB, VLM__API_PUT,
  VLM__API_ADD, VLM__API_PATCH, VLM__API_DELETE, VLM__API_BATCH,
  VLM__API_EMBED, VLM__API_EVAL, VLM__API_SCAN, VLM__API_INFO,
  VLM__API_METRICS, VLM__API_EXPLAIN, VLM__API_IMAGE
};

struct vlm__http_req {
  int route;                /* VLM__API_* */
  int keep_alive;
  int vectors;              /* GET ?vectors=1 */
  int hide_has_thumb;       /* search: has_thumb was added, not asked for */
  int batch_add;            /* batch mode "add" */
  int nkeys;                /* batch: keys[] */
  char **keys;
  char *key;                /* the item, for messages and URLs */
  const char *explain_method; /* the method explain runs ("relevance",
                                 ...; static) */
  uint64_t start_ns;
};

void vlm__http_req_free(vlm__http_req *req); /* accepts NULL */

/* ---- http.c ---- */

/* Make conn an HTTP connection; 0 or VLM_ENOMEM. */
int vlm__http_conn_init(vlm__conn *conn);
void vlm__http_conn_free(vlm__conn *conn);
/* Parse and handle what arrived (loop thread). */
void vlm__http_read(vlm__conn *conn, const char *data, size_t len);
/* Everything owed has been written: after an error that closes, shut
 * down the sending side (0, or -1: close now). */
int vlm__http_flushed(vlm__conn *conn);
/* A connection lingering after such an error for long enough: close it. */
int vlm__http_linger_over(vlm__conn *conn, uint64_t now_ms);
/* Append the response of a finished job (its turn has come). */
void vlm__http_render(vlm__conn *conn, vlm__job *job);

/* Frame a response into out.  ctype NULL: no body; extra: header lines,
 * each ending in CRLF, or NULL. */
void vlm__http_respond(vlm__buf *out, int status, const char *ctype,
                       const void *body, size_t len, int keep_alive,
                       const char *extra);
/* Percent-decode s[0, *len) in place ("+" stays "+"); 0, or -1 for a bad
 * escape. */
int vlm__http_url_decode(char *s, size_t *len);
/* A JSON error response: {"error":{"code":code,"message":...}} (and
 * "field" when field is not NULL). */
void vlm__http_error(vlm__buf *out, int status, const char *code,
                     const char *field, int keep_alive, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The status code's code word for the error object ("bad_request", ...). */
const char *vlm__http_code(int status);

/* ---- api.c ---- */

/* Route one request: a response now, or a command job. */
void vlm__api_handle(vlm__conn *conn, const vlm__http_request *r);
/* The response for a job's RESP3 reply (render.c). */
void vlm__api_render(vlm__conn *conn, vlm__job *job, vlm__buf *out);

/* ---- json.c ---- */

/* One RESP3 value, parsed from a reply the server wrote. */
typedef struct vlm__r3 {
  char type;                /* '+', '-', ':', ',', '_', '#', '$', '*', '%' */
  const char *str;          /* strings, errors, a double's text (not
                               NUL-terminated: len) */
  size_t len;
  long long integer;        /* ':' and '#' */
  long n;                   /* '*': n elements; '%': n pairs (2n kids) */
  struct vlm__r3 *kids;
} vlm__r3;

/* Parse one value from buf (pointing into it); 0, or -1 for a reply that
 * is not well formed RESP3 (or nests deeper than 16). */
int vlm__r3_parse(const char *buf, size_t len, vlm__r3 *out);
void vlm__r3_free(vlm__r3 *v);
/* A map's value for key, or NULL. */
const vlm__r3 *vlm__r3_get(const vlm__r3 *map, const char *key);
int vlm__r3_is(const vlm__r3 *v, const char *s);

/* JSON: a string (invalid UTF-8 bytes become U+FFFD), a RESP3 value
 * (maps become objects, doubles numbers, inf and nan null), a float32 as
 * its shortest decimal. */
void vlm__json_str(vlm__buf *b, const char *s, size_t len);
void vlm__json_cstr(vlm__buf *b, const char *s); /* NULL -> null */
void vlm__json_r3(vlm__buf *b, const vlm__r3 *v);
void vlm__json_float(vlm__buf *b, float v);
/* Append text that is already JSON when jansson accepts it, else it as a
 * string. */
void vlm__json_raw(vlm__buf *b, const char *json, size_t len);

/* Base64 (RFC 4648, padding optional, whitespace ignored): decoded bytes
 * (malloc'd) or NULL when the text is not base64. */
unsigned char *vlm__base64_decode(const char *s, size_t len, size_t *out_len);
void vlm__base64_encode(vlm__buf *b, const void *data, size_t len);

/* ---- metrics.c ---- */

enum { VLM__PROTO_RESP = 0, VLM__PROTO_HTTP = 1 };

int vlm__metrics_init(vlm_server *srv);
void vlm__metrics_free(vlm_server *srv);
/* A request for cmd arrived over proto (any thread). */
void vlm__metrics_request(vlm_server *srv, const vlm__command *cmd,
                          int proto);
/* Its reply was an error. */
void vlm__metrics_error(vlm_server *srv, const vlm__command *cmd, int proto);
/* A job finished after seconds. */
void vlm__metrics_latency(vlm_server *srv, const vlm__command *cmd,
                          double seconds);
void vlm__metrics_batch(vlm_server *srv, int modality, int n);
void vlm__metrics_items_added(vlm_server *srv, long long n);
/* The METRICS pseudo-command /metrics runs (proc on the loop, exec on a
 * worker, reply: one bulk string of Prometheus text). */
extern const vlm__command vlm__metrics_command;

/* The embedded OpenAPI document (net/openapi.json). */
extern const char vlm__openapi_json[];
extern const unsigned vlm__openapi_json_len;

#endif
