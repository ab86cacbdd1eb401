/* commands.c - the command table and its handlers.
 *
 * One table of {name, proc, exec, arity, flags}.  vlm__dispatch looks a
 * request up, checks its arity and the client's authentication in one
 * place, then runs proc on the loop; commands with an exec (everything
 * that touches the database or the model) continue on a worker.  Replies
 * use RESP3 types (maps, doubles) for clients that said HELLO 3 and the
 * RESP2 equivalents otherwise; resp.c maps them.
 */
#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <jansson.h>
#include <malloc.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include <hiredis/hiredis.h>

#include "netint.h"
#include "vlm_error.h"
#include "vlm_eval.h"
#include "vlm_train.h"

#define VLM_SERVER_VERSION "0.1.0"

/* ======================================================================
 * Argument helpers
 * ==================================================================== */

static int arg_is(const vlm__resp_arg *a, const char *word) {
  size_t n = strlen(word);
  return a->len == n && strncasecmp(a->ptr, word, n) == 0;
}

/* Copy an argument into a C string for messages: at most 64 bytes, and
 * bytes that are not printable shown as '?'. */
static const char *arg_show(const vlm__resp_arg *a, char *buf, size_t cap) {
  size_t n = a->len < cap - 1 ? a->len : cap - 1;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)a->ptr[i];
    buf[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
  }
  buf[n] = '\0';
  return buf;
}

/* A whole argument as a decimal integer; -1 if it is not one. */
static int parse_long(const vlm__resp_arg *a, long *out) {
  char tmp[32];
  if (a->len == 0 || a->len >= sizeof tmp)
    return -1;
  memcpy(tmp, a->ptr, a->len);
  tmp[a->len] = '\0';
  char *end;
  errno = 0;
  long v = strtol(tmp, &end, 10);
  if (*end != '\0' || errno)
    return -1;
  *out = v;
  return 0;
}

static int arg_long(vlm__ctx *ctx, const vlm__resp_arg *a, long min, long max,
                    const char *what, long *out) {
  long v;
  if (parse_long(a, &v) < 0 || v < min || v > max)
    goto bad;
  *out = v;
  return 0;
bad:
  vlm__reply_error(ctx->out, "ERR", "%s must be an integer from %ld to %ld",
                   what, min, max);
  return -1;
}

static int arg_double(vlm__ctx *ctx, const vlm__resp_arg *a, double min,
                      double max, const char *what, double *out) {
  char tmp[64];
  if (a->len == 0 || a->len >= sizeof tmp)
    goto bad;
  memcpy(tmp, a->ptr, a->len);
  tmp[a->len] = '\0';
  char *end;
  double v = strtod(tmp, &end);
  if (*end != '\0' || !(v >= min && v <= max))
    goto bad;
  *out = v;
  return 0;
bad:
  vlm__reply_error(ctx->out, "ERR", "%s must be a number from %g to %g", what,
                   min, max);
  return -1;
}

/* Worker-command arguments are NUL-terminated copies; a NUL inside would
 * silently cut a key or text short, so it is refused. */
static int arg_cstr(vlm__ctx *ctx, const vlm__resp_arg *a, const char *what) {
  if (memchr(a->ptr, '\0', a->len)) {
    vlm__reply_error(ctx->out, "ERR", "%s contains a NUL byte", what);
    return -1;
  }
  return 0;
}

/* The state a command's proc hands to its exec: zeroed, owned by the job
 * (freed with free_fn).  NULL, with the error replied, when out of memory. */
static void *job_state(vlm__ctx *ctx, size_t size, void (*free_fn)(void *)) {
  void *st = calloc(1, size);
  if (!st) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return NULL;
  }
  ctx->job->state = st;
  ctx->job->state_free = free_fn;
  return st;
}

/* The search-effort options SEARCH and VLM.EVAL share: EF ef, NPROBE n
 * at argv[*i] (with its value after it).  1 when it took one (*i moves to
 * the value), 0 when argv[*i] is not one of them, -1 after an error. */
static int arg_effort(vlm__ctx *ctx, int *i, int *ef, int *nprobe) {
  const vlm__resp_arg *a = &ctx->argv[*i];
  int is_ef = arg_is(a, "EF"), is_np = arg_is(a, "NPROBE");
  long v;
  if ((!is_ef && !is_np) || *i + 1 >= ctx->argc)
    return 0;
  if (arg_long(ctx, &ctx->argv[++*i], 1, 1 << 20, is_ef ? "EF" : "NPROBE",
               &v) < 0)
    return -1;
  *(is_ef ? ef : nprobe) = (int)v;
  return 1;
}

static int syntax_error(vlm__ctx *ctx, const vlm__resp_arg *a) {
  char tmp[64];
  vlm__reply_error(ctx->out, "ERR", "syntax error near '%s'",
                   arg_show(a, tmp, sizeof tmp));
  return -1;
}

static int need_model(vlm__ctx *ctx, const char *what) {
  if (ctx->srv->clip)
    return 0;
  vlm__reply_error(ctx->out, "ERR", "%s needs a model: start vlmdb serve "
                   "with --model", what);
  return -1;
}

/* vlm_db and vlm_clip errors as "-ERR <kind>: <detail>". */
static void reply_liberr(vlm__buf *out, int rc) {
  const char *detail = vlm_errmsg();
  if (detail && *detail && strcmp(detail, vlm_strerror(rc)))
    vlm__reply_error(out, "ERR", "%s: %s", vlm_strerror(rc), detail);
  else
    vlm__reply_error(out, "ERR", "%s", vlm_strerror(rc));
}

/* A vector argument: exactly dim little-endian float32 values, finite.
 * Copied out because wire bytes carry no alignment. */
static int arg_vector(vlm__ctx *ctx, const vlm__resp_arg *a, const char *what,
                      float **out) {
  size_t dim = (size_t)ctx->srv->dim;
  if (a->len != dim * sizeof(float)) {
    vlm__reply_error(ctx->out, "ERR", "%s must be %zu float32 values (%zu "
                     "bytes), got %zu bytes", what, dim, dim * sizeof(float),
                     a->len);
    return -1;
  }
  float *v = malloc(a->len);
  if (!v) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  memcpy(v, a->ptr, a->len);
  for (size_t i = 0; i < dim; i++)
    if (!isfinite(v[i])) {
      free(v);
      vlm__reply_error(ctx->out, "ERR", "%s has a non-finite value at %zu",
                       what, i);
      return -1;
    }
  *out = v;
  return 0;
}

static void reply_vector(vlm__buf *out, const float *v, int dim, int as_array) {
  if (!as_array) {
    vlm__reply_bulk(out, v, (size_t)dim * sizeof(float));
    return;
  }
  vlm__reply_array(out, dim);
  for (int i = 0; i < dim; i++)
    vlm__reply_float(out, v[i]);
}

/* ======================================================================
 * Connection commands (answered on the loop)
 * ==================================================================== */

static int cmd_ping(vlm__ctx *ctx) {
  if (ctx->argc > 2) {
    vlm__reply_error(ctx->out, "ERR", "wrong number of arguments for 'ping' "
                     "command");
    return -1;
  }
  if (ctx->argc == 2)
    vlm__reply_bulk(ctx->out, ctx->argv[1].ptr, ctx->argv[1].len);
  else
    vlm__reply_status(ctx->out, "PONG");
  return 0;
}

static int cmd_echo(vlm__ctx *ctx) {
  vlm__reply_bulk(ctx->out, ctx->argv[1].ptr, ctx->argv[1].len);
  return 0;
}

static int cmd_quit(vlm__ctx *ctx) {
  vlm__reply_status(ctx->out, "OK");
  vlm__conn_quit(ctx->conn);
  return 0;
}

/* Compare in time that depends only on the secret's length, never on how
 * much of a guess is right. */
int vlm__secret_equal(const char *guess, size_t glen, const char *secret,
                      size_t slen) {
  volatile unsigned char diff = glen != slen;
  for (size_t i = 0; i < slen; i++) {
    unsigned char g = glen ? (unsigned char)guess[i % glen] : 0;
    diff |= (unsigned char)(g ^ (unsigned char)secret[i]);
  }
  return diff == 0;
}

/* Check a user and password; 0 and the client authenticated, or -1 after
 * the error reply. */
static int check_auth(vlm__ctx *ctx, const vlm__resp_arg *user,
                      const vlm__resp_arg *pass) {
  vlm_server *srv = ctx->srv;
  if (!srv->password) {
    vlm__reply_error(ctx->out, "ERR", "AUTH <password> called without any "
                     "password configured for the default user. Are you sure"
                     " your configuration is correct?");
    return -1;
  }
  int ok = vlm__secret_equal(pass->ptr, pass->len, srv->password,
                        srv->password_len);
  if (user && !arg_is(user, "default"))
    ok = 0;
  if (!ok) {
    srv->stats.auth_failures++;
    vlm__reply_error(ctx->out, "WRONGPASS", "invalid username-password pair"
                     " or user is disabled.");
    return -1;
  }
  ctx->conn->authed = 1;
  return 0;
}

static int cmd_auth(vlm__ctx *ctx) {
  if (ctx->argc > 3) {
    vlm__reply_error(ctx->out, "ERR", "syntax error");
    return -1;
  }
  const vlm__resp_arg *user = ctx->argc == 3 ? &ctx->argv[1] : NULL;
  if (check_auth(ctx, user, &ctx->argv[ctx->argc - 1]) < 0)
    return -1;
  vlm__reply_status(ctx->out, "OK");
  return 0;
}

static int valid_client_name(const vlm__resp_arg *a) {
  for (size_t i = 0; i < a->len; i++)
    if (a->ptr[i] < '!' || a->ptr[i] > '~')
      return 0;
  return 1;
}

static void set_name(char *dst, size_t cap, const vlm__resp_arg *a) {
  size_t n = a->len < cap - 1 ? a->len : cap - 1;
  memcpy(dst, a->ptr, n);
  dst[n] = '\0';
}

static int cmd_hello(vlm__ctx *ctx) {
  vlm__conn *conn = ctx->conn;
  int proto = conn->resp3 ? 3 : 2;
  int i = 1;
  if (ctx->argc >= 2) {
    long v;
    if (parse_long(&ctx->argv[1], &v) < 0) {
      vlm__reply_error(ctx->out, "ERR", "Protocol version is not an integer "
                       "or out of range");
      return -1;
    }
    if (v != 2 && v != 3) {
      vlm__reply_error(ctx->out, "NOPROTO", "unsupported protocol version");
      return -1;
    }
    proto = (int)v;
    i = 2;
  }
  const vlm__resp_arg *user = NULL, *pass = NULL, *name = NULL;
  for (; i < ctx->argc; i++) {
    if (arg_is(&ctx->argv[i], "AUTH") && i + 2 < ctx->argc) {
      user = &ctx->argv[i + 1];
      pass = &ctx->argv[i + 2];
      i += 2;
    } else if (arg_is(&ctx->argv[i], "SETNAME") && i + 1 < ctx->argc) {
      name = &ctx->argv[++i];
    } else {
      return syntax_error(ctx, &ctx->argv[i]);
    }
  }
  if (pass && check_auth(ctx, user, pass) < 0)
    return -1;
  if (!conn->authed) {
    vlm__reply_error(ctx->out, "NOAUTH", "HELLO must be called with the "
                     "client already authenticated, otherwise the HELLO "
                     "<proto> AUTH <user> <pass> option can be used to "
                     "authenticate the client and select the RESP protocol "
                     "version at the same time");
    return -1;
  }
  if (name) {
    if (!valid_client_name(name)) {
      vlm__reply_error(ctx->out, "ERR", "Client names cannot contain spaces, "
                       "newlines or special characters.");
      return -1;
    }
    set_name(conn->name, sizeof conn->name, name);
  }
  conn->resp3 = proto == 3;
  ctx->out->resp3 = conn->resp3;
  if (ctx->out != &conn->out)
    conn->out.resp3 = conn->resp3;
  vlm__buf *out = ctx->out;
  vlm__reply_map(out, 7);
  vlm__reply_cstr(out, "server");
  vlm__reply_cstr(out, "vlmdb");
  vlm__reply_cstr(out, "version");
  vlm__reply_cstr(out, VLM_SERVER_VERSION);
  vlm__reply_cstr(out, "proto");
  vlm__reply_int(out, proto);
  vlm__reply_cstr(out, "id");
  vlm__reply_int(out, (long long)conn->id);
  vlm__reply_cstr(out, "mode");
  vlm__reply_cstr(out, "standalone");
  vlm__reply_cstr(out, "role");
  vlm__reply_cstr(out, "master");
  vlm__reply_cstr(out, "modules");
  vlm__reply_array(out, 0);
  return 0;
}

static int cmd_select(vlm__ctx *ctx) {
  if (!arg_is(&ctx->argv[1], "0")) {
    vlm__reply_error(ctx->out, "ERR", "DB index is out of range");
    return -1;
  }
  vlm__reply_status(ctx->out, "OK");
  return 0;
}

/* One CLIENT LIST / CLIENT INFO line: every field Redis always sends (a
 * client library may index any of them: redis-py's client_info() reads
 * db, sub, psub, multi, qbuf-free, argv-mem, obl, oll, omem, tot-mem),
 * with values that hold for vlmdb (one database, no pub/sub; multi: the
 * commands queued in MULTI, -1 outside one), then vlmdb's own (jobs,
 * obuf). */
static void client_line(vlm__buf *b, const vlm__conn *c, uint64_t now) {
  uv_os_fd_t fd = -1;
  if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) != 0)
    fd = -1;
  size_t qbuf = c->qlen - c->qpos, obuf = c->out.len + c->wlen;
  vlm__buf_printf(b, "id=%llu addr=%s laddr=%s:%d fd=%d name=%s age=%llu "
                  "idle=%llu flags=%s db=0 sub=0 psub=0 ssub=0 multi=%d "
                  "qbuf=%zu qbuf-free=%zu argv-mem=0 multi-mem=0 rbs=%zu "
                  "rbp=%zu obl=0 oll=0 omem=%zu tot-mem=%zu events=r "
                  "cmd=%s user=default redir=-1 resp=%d lib-name=%s "
                  "lib-ver=%s jobs=%d obuf=%zu\n",
                  (unsigned long long)c->id, c->addr, c->srv->bind,
                  c->srv->port, (int)fd, c->name,
                  (unsigned long long)((now - c->created_ms) / 1000),
                  (unsigned long long)((now - c->last_ms) / 1000),
                  c->multi ? "x" : "N", c->multi ? c->multi_n : -1, qbuf,
                  c->qcap - c->qlen, c->qcap, c->qlen, obuf,
                  c->qcap + c->out.cap + c->wlen, c->last_cmd,
                  c->resp3 ? 3 : 2, c->lib_name, c->lib_ver, c->njobs, obuf);
}

static int cmd_client(vlm__ctx *ctx) {
  vlm__conn *conn = ctx->conn;
  const vlm__resp_arg *sub = &ctx->argv[1];
  char tmp[64];
  if (arg_is(sub, "SETNAME") && ctx->argc == 3) {
    if (!valid_client_name(&ctx->argv[2])) {
      vlm__reply_error(ctx->out, "ERR", "Client names cannot contain spaces, "
                       "newlines or special characters.");
      return -1;
    }
    set_name(conn->name, sizeof conn->name, &ctx->argv[2]);
    vlm__reply_status(ctx->out, "OK");
  } else if (arg_is(sub, "GETNAME") && ctx->argc == 2) {
    if (conn->name[0])
      vlm__reply_cstr(ctx->out, conn->name);
    else
      vlm__reply_null(ctx->out);
  } else if (arg_is(sub, "SETINFO") && ctx->argc == 4) {
    const vlm__resp_arg *what = &ctx->argv[2], *val = &ctx->argv[3];
    if (!valid_client_name(val)) {
      vlm__reply_error(ctx->out, "ERR", "%s cannot contain spaces, newlines "
                       "or special characters.", arg_show(what, tmp,
                                                          sizeof tmp));
      return -1;
    }
    if (arg_is(what, "LIB-NAME"))
      set_name(conn->lib_name, sizeof conn->lib_name, val);
    else if (arg_is(what, "LIB-VER"))
      set_name(conn->lib_ver, sizeof conn->lib_ver, val);
    else {
      vlm__reply_error(ctx->out, "ERR", "Unrecognized option '%s'",
                       arg_show(what, tmp, sizeof tmp));
      return -1;
    }
    vlm__reply_status(ctx->out, "OK");
  } else if (arg_is(sub, "ID") && ctx->argc == 2) {
    vlm__reply_int(ctx->out, (long long)conn->id);
  } else if (arg_is(sub, "INFO") && ctx->argc == 2) {
    vlm__buf line;
    vlm__buf_init(&line, 0);
    client_line(&line, conn, uv_now(&ctx->srv->loop));
    vlm__reply_bulk(ctx->out, line.data, line.len);
    vlm__buf_free(&line);
  } else if (arg_is(sub, "LIST") && ctx->argc == 2) {
    vlm__buf list;
    vlm__buf_init(&list, 0);
    uint64_t now = uv_now(&ctx->srv->loop);
    for (vlm__conn *c = ctx->srv->conns; c; c = c->next)
      if (!c->closing)
        client_line(&list, c, now);
    vlm__reply_bulk(ctx->out, list.data, list.len);
    vlm__buf_free(&list);
  } else if (arg_is(sub, "HELP")) {
    static const char *help[] = {
        "CLIENT <subcommand> [<arg> ...]. Subcommands are:",
        "SETNAME <name>", "GETNAME", "SETINFO LIB-NAME|LIB-VER <value>", "ID",
        "INFO", "LIST", "HELP"};
    vlm__reply_array(ctx->out, sizeof help / sizeof help[0]);
    for (size_t i = 0; i < sizeof help / sizeof help[0]; i++)
      vlm__reply_status(ctx->out, help[i]);
  } else {
    vlm__reply_error(ctx->out, "ERR", "unknown subcommand or wrong number of "
                     "arguments for '%s'. Try CLIENT HELP.",
                     arg_show(sub, tmp, sizeof tmp));
    return -1;
  }
  return 0;
}

/* CONFIG GET answers what clients probe for (redis-benchmark asks for
 * "save" and "appendonly"); the settings are the command-line flags. */
static int cmd_config(vlm__ctx *ctx) {
  vlm_server *srv = ctx->srv;
  char tmp[64];
  if (!arg_is(&ctx->argv[1], "GET") || ctx->argc < 3) {
    vlm__reply_error(ctx->out, "ERR", "CONFIG %s is not supported: the "
                     "settings are vlmdb serve's flags",
                     arg_show(&ctx->argv[1], tmp, sizeof tmp));
    return -1;
  }
  char values[10][32];
  const char *names[10] = {"save", "appendonly", "port", "bind",
                           "maxclients", "timeout", "databases",
                           "worker-threads", "max-request-bytes",
                           "batch-window-us"};
  snprintf(values[0], 32, "%s", "");
  snprintf(values[1], 32, "%s", "no");
  snprintf(values[2], 32, "%d", srv->port);
  snprintf(values[3], 32, "%s", srv->bind);
  snprintf(values[4], 32, "%d", srv->maxclients);
  snprintf(values[5], 32, "%d", srv->timeout_s);
  snprintf(values[6], 32, "%d", 1);
  snprintf(values[7], 32, "%d", srv->threads);
  snprintf(values[8], 32, "%zu", srv->max_request);
  snprintf(values[9], 32, "%d", srv->batch_window_us);
  int match[10] = {0}, n = 0;
  for (int a = 2; a < ctx->argc; a++) {
    char pat[128];
    size_t len = ctx->argv[a].len < sizeof pat - 1 ? ctx->argv[a].len
                                                   : sizeof pat - 1;
    memcpy(pat, ctx->argv[a].ptr, len);
    pat[len] = '\0';
    for (int i = 0; i < 10; i++)
      if (!match[i] && fnmatch(pat, names[i], FNM_CASEFOLD) == 0) {
        match[i] = 1;
        n++;
      }
  }
  vlm__reply_map(ctx->out, n);
  for (int i = 0; i < 10; i++)
    if (match[i]) {
      vlm__reply_cstr(ctx->out, names[i]);
      vlm__reply_cstr(ctx->out, values[i]);
    }
  return 0;
}

/* ======================================================================
 * COMMAND: introspection, in Redis 7's reply format
 * ==================================================================== */

static const vlm__command *lookup(const char *name, size_t len);
static const vlm__command *table_at(size_t i);
static size_t table_size(void);

static void lower_name(const vlm__command *cmd, char *buf, size_t cap) {
  size_t i = 0;
  for (; cmd->name[i] && i < cap - 1; i++)
    buf[i] = (char)tolower((unsigned char)cmd->name[i]);
  buf[i] = '\0';
}

/* Where a command's keys are, as COMMAND reports them (first, last, step;
 * last -1 = to the end), so that cluster-aware clients can route keyed
 * commands.  Commands not listed take no key (SEARCH KEY k names an item
 * to search by, which may live on any shard). */
static void key_positions(const char *name, int *first, int *last,
                          int *step) {
  static const struct {
    const char *name;
    int first, last, step;
  } keyed[] = {{"ADD", 1, 1, 1},     {"UPSERT", 1, 1, 1},
               {"UPDATE", 1, 1, 1},  {"SETMETA", 1, 1, 1},
               {"GET", 1, 1, 1},     {"DEL", 1, -1, 1},
               {"EXISTS", 1, -1, 1}, {"TYPE", 1, 1, 1}};
  for (size_t i = 0; i < sizeof keyed / sizeof keyed[0]; i++)
    if (!strcmp(keyed[i].name, name)) {
      *first = keyed[i].first;
      *last = keyed[i].last;
      *step = keyed[i].step;
      return;
    }
  *first = *last = *step = 0;
}

static void reply_command_info(vlm__buf *out, const vlm__command *cmd) {
  char name[32];
  lower_name(cmd, name, sizeof name);
  vlm__reply_array(out, 10);
  vlm__reply_cstr(out, name);
  vlm__reply_int(out, cmd->arity);
  int nflags = 1 + !!(cmd->flags & VLM__CMD_NOAUTH) +
               !!(cmd->flags & VLM__CMD_ADMIN) + !cmd->exec;
  vlm__reply_array(out, nflags);
  vlm__reply_status(out, (cmd->flags & VLM__CMD_WRITE) ? "write" : "readonly");
  if (cmd->flags & VLM__CMD_NOAUTH)
    vlm__reply_status(out, "no_auth");
  if (cmd->flags & VLM__CMD_ADMIN)
    vlm__reply_status(out, "admin");
  if (!cmd->exec)
    vlm__reply_status(out, "fast");
  int first = 0, last = 0, step = 0;
  key_positions(cmd->name, &first, &last, &step);
  vlm__reply_int(out, first);
  vlm__reply_int(out, last);
  vlm__reply_int(out, step);
  vlm__reply_array(out, 0); /* ACL categories */
  vlm__reply_array(out, 0); /* tips */
  vlm__reply_array(out, 0); /* key specs */
  vlm__reply_array(out, 0); /* subcommands */
}

static void reply_command_docs(vlm__buf *out, const vlm__command *cmd) {
  char name[32];
  lower_name(cmd, name, sizeof name);
  vlm__reply_cstr(out, name);
  vlm__reply_map(out, 5);
  vlm__reply_cstr(out, "summary");
  vlm__reply_cstr(out, cmd->summary);
  vlm__reply_cstr(out, "since");
  vlm__reply_cstr(out, VLM_SERVER_VERSION);
  vlm__reply_cstr(out, "group");
  vlm__reply_cstr(out, cmd->group);
  vlm__reply_cstr(out, "syntax");
  vlm__reply_cstr(out, cmd->syntax);
  vlm__reply_cstr(out, "arguments");
  vlm__reply_doc_args(out, cmd->syntax);
}

static int cmd_command(vlm__ctx *ctx) {
  vlm__buf *out = ctx->out;
  size_t n = table_size();
  char tmp[64];
  if (ctx->argc == 1) {
    vlm__reply_array(out, (long)n);
    for (size_t i = 0; i < n; i++)
      reply_command_info(out, table_at(i));
    return 0;
  }
  const vlm__resp_arg *sub = &ctx->argv[1];
  if (arg_is(sub, "COUNT") && ctx->argc == 2) {
    vlm__reply_int(out, (long long)n);
  } else if (arg_is(sub, "LIST") && ctx->argc == 2) {
    vlm__reply_array(out, (long)n);
    for (size_t i = 0; i < n; i++) {
      char name[32];
      lower_name(table_at(i), name, sizeof name);
      vlm__reply_cstr(out, name);
    }
  } else if (arg_is(sub, "INFO")) {
    if (ctx->argc == 2) {
      vlm__reply_array(out, (long)n);
      for (size_t i = 0; i < n; i++)
        reply_command_info(out, table_at(i));
      return 0;
    }
    vlm__reply_array(out, ctx->argc - 2);
    for (int a = 2; a < ctx->argc; a++) {
      const vlm__command *cmd = lookup(ctx->argv[a].ptr, ctx->argv[a].len);
      if (cmd)
        reply_command_info(out, cmd);
      else
        vlm__reply_null(out);
    }
  } else if (arg_is(sub, "DOCS")) {
    if (ctx->argc == 2) {
      vlm__reply_map(out, (long)n);
      for (size_t i = 0; i < n; i++)
        reply_command_docs(out, table_at(i));
      return 0;
    }
    int found = 0;
    for (int a = 2; a < ctx->argc; a++)
      found += lookup(ctx->argv[a].ptr, ctx->argv[a].len) != NULL;
    vlm__reply_map(out, found);
    for (int a = 2; a < ctx->argc; a++) {
      const vlm__command *cmd = lookup(ctx->argv[a].ptr, ctx->argv[a].len);
      if (cmd)
        reply_command_docs(out, cmd);
    }
  } else if (arg_is(sub, "HELP")) {
    static const char *help[] = {
        "COMMAND <subcommand> [<arg> ...]. Subcommands are:",
        "(no subcommand): every command's details", "COUNT", "LIST",
        "INFO [<command-name> ...]", "DOCS [<command-name> ...]", "HELP"};
    vlm__reply_array(out, sizeof help / sizeof help[0]);
    for (size_t i = 0; i < sizeof help / sizeof help[0]; i++)
      vlm__reply_status(out, help[i]);
  } else {
    vlm__reply_error(out, "ERR", "unknown subcommand or wrong number of "
                     "arguments for '%s'. Try COMMAND HELP.",
                     arg_show(sub, tmp, sizeof tmp));
    return -1;
  }
  return 0;
}

/* How a node counts its items in a cluster.  During a live move a node
 * holds items of slots it does not serve (copies on their way in, or left
 * behind after the switch); a count leaves them out, so the cluster's sum
 * counts each key once: hide is the filter of the items it serves
 * (vlm__cluster_search_filter; NULL: all it holds), under owners when a
 * coordinator sent its map (VLM.LOCAL DBSIZE OWNERS map), else its own.
 * A coordinator sends the map it counted by (coord_owners) to the
 * others.  Taken on the loop thread, where CLUSTER RELOAD changes the
 * map; counted on a worker. */
typedef struct {
  char *hide, *coord_owners;
} count_view;

static int count_view_take(vlm__ctx *ctx, const char *owners, int coordinating,
                           count_view *v) {
  vlm_server *srv = ctx->srv;
  char why[160];
  if (!srv->cluster)
    return 0;
  if (vlm__cluster_search_filter(srv, owners, NULL, &v->hide, why,
                                 sizeof why) < 0) {
    vlm__reply_error(ctx->out, "ERR", "%s", why);
    return -1;
  }
  if (coordinating && !(v->coord_owners = vlm__cluster_owners(srv))) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  return 0;
}

static void count_view_free(count_view *v) {
  free(v->hide);
  free(v->coord_owners);
}

/* The items this node answers for: all (the database's count), or those
 * its view's filter keeps. */
static int count_served(vlm__job *job, const count_view *v, long long all,
                        long long *items) {
  *items = all;
  if (!v->hide)
    return 0;
  int64_t n;
  int rc = vlm_db_count_where(job->srv->db, v->hide, &n);
  if (rc == 0)
    *items = (long long)n;
  return rc;
}

static int dbsize_fanout(vlm__job *job, const count_view *v,
                         vlm__fanout_done done) {
  const char *argv[4] = {"VLM.LOCAL", "DBSIZE", "OWNERS", v->coord_owners};
  size_t lens[4] = {9, 6, 6, v->coord_owners ? strlen(v->coord_owners) : 0};
  return vlm__cluster_fanout(job, v->coord_owners ? 4 : 2, argv, lens,
                             done) == 0;
}

/* ======================================================================
 * INFO: loop sections in proc, database and model sections on a worker
 * ==================================================================== */

typedef struct {
  vlm__buf text;
  int db, model, keyspace, replication;
  long long items;  /* this shard's, for a summed keyspace line */
  count_view view;
} info_state;

static void info_state_free(void *p) {
  info_state *st = p;
  if (st) {
    vlm__buf_free(&st->text);
    count_view_free(&st->view);
  }
  free(st);
}

static void human_bytes(char *buf, size_t cap, double bytes) {
  const char *units[] = {"B", "K", "M", "G", "T"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    u++;
  }
  snprintf(buf, cap, "%.2f%s", bytes, units[u]);
}

static int cmd_info_proc(vlm__ctx *ctx) {
  vlm_server *srv = ctx->srv;
  enum { NSECTIONS = 10 };
  static const char *names[NSECTIONS] = {"server", "clients", "stats",
                                         "memory", "db",      "model",
                                         "keyspace", "cluster",
                                         "replication", "reembed"};
  int want[NSECTIONS] = {0}, any = 0;
  for (int a = 1; a < ctx->argc; a++) {
    const vlm__resp_arg *s = &ctx->argv[a];
    if (arg_is(s, "all") || arg_is(s, "everything") || arg_is(s, "default")) {
      for (int i = 0; i < NSECTIONS; i++)
        want[i] = 1;
    }
    for (int i = 0; i < NSECTIONS; i++)
      if (arg_is(s, names[i]))
        want[i] = 1;
    any = 1;
  }
  if (!any)
    for (int i = 0; i < NSECTIONS; i++)
      want[i] = 1;
  info_state *st = job_state(ctx, sizeof *st, info_state_free);
  if (!st)
    return -1;
  st->db = want[4];
  st->model = want[5];
  st->keyspace = want[6];
  st->replication = want[8];
  if (st->keyspace &&
      count_view_take(ctx, NULL, ctx->srv->cluster && !ctx->job->local,
                      &st->view) < 0)
    return -1;
  vlm__buf *b = &st->text;
  uint64_t now = uv_now(&srv->loop);
  if (want[0])
    vlm__buf_printf(b, "# Server\r\nvlmdb_version:%s\r\nprocess_id:%d\r\n"
                    "tcp_port:%d\r\nbind:%s\r\nuptime_in_seconds:%llu\r\n"
                    "multiplexing_api:libuv %s\r\nworker_threads:%d\r\n"
                    "batch_window_us:%d\r\nbatch_max:%d\r\n"
                    "max_request_bytes:%zu\r\nmax_output_bytes:%zu\r\n"
                    "timeout:%d\r\nrequirepass:%s\r\n\r\n",
                    VLM_SERVER_VERSION, (int)getpid(), srv->port, srv->bind,
                    (unsigned long long)((now - srv->start_ms) / 1000),
                    uv_version_string(), srv->threads, srv->batch_window_us,
                    srv->batch_max, srv->max_request, srv->max_output,
                    srv->timeout_s, srv->password ? "yes" : "no");
  size_t qbufs = 0, obufs = 0;
  int busy = 0, jobs = 0;
  for (vlm__conn *c = srv->conns; c; c = c->next) {
    qbufs += c->qcap;
    obufs += c->out.cap + c->wlen;
    busy += c->njobs > 0;
    jobs += c->njobs;
  }
  if (want[1])
    vlm__buf_printf(b, "# Clients\r\nconnected_clients:%d\r\nmaxclients:%d\r\n"
                    "blocked_clients:0\r\n"
                    "clients_waiting_for_workers:%d\r\nrequests_in_flight:%d"
                    "\r\n\r\n", srv->nconns, srv->maxclients, busy, jobs);
  if (want[2]) {
    const vlm__stats *s = &srv->stats;
    const vlm__batcher *bt = &srv->batcher;
    long long tb = atomic_load(&bt->batches[VLM__TEXT]);
    long long ti = atomic_load(&bt->items[VLM__TEXT]);
    long long ib = atomic_load(&bt->batches[VLM__IMAGE]);
    long long ii = atomic_load(&bt->items[VLM__IMAGE]);
    vlm__buf_printf(
        b, "# Stats\r\ntotal_connections_received:%llu\r\n"
        "total_commands_processed:%llu\r\nrejected_connections:%llu\r\n"
        "total_net_input_bytes:%llu\r\ntotal_net_output_bytes:%llu\r\n"
        "protocol_errors:%llu\r\nslow_reader_disconnects:%llu\r\n"
        "idle_timeouts:%llu\r\nauth_failures:%llu\r\n"
        "text_embed_batches:%lld\r\ntext_embeds_batched:%lld\r\n"
        "text_largest_batch:%lld\r\nimage_embed_batches:%lld\r\n"
        "image_embeds_batched:%lld\r\nimage_largest_batch:%lld\r\n"
        "inline_commands_processed:%llu\r\n\r\n",
        (unsigned long long)s->connections, (unsigned long long)s->commands,
        (unsigned long long)s->rejected, (unsigned long long)s->net_in,
        (unsigned long long)s->net_out,
        (unsigned long long)s->protocol_errors,
        (unsigned long long)s->slow_readers, (unsigned long long)s->timeouts,
        (unsigned long long)s->auth_failures, tb, ti,
        (long long)atomic_load(&bt->largest[VLM__TEXT]), ib, ii,
        (long long)atomic_load(&bt->largest[VLM__IMAGE]),
        (unsigned long long)srv->inline_jobs);
  }
  if (want[3]) {
    long rss = vlm__proc_status_kb("VmRSS"), hwm = vlm__proc_status_kb("VmHWM");
    /* used_memory, as Redis means it: bytes the allocator has handed out
     * (heap chunks in use plus mmap'd blocks); the index and the stores'
     * memory maps are in the RSS figures, not here. */
    struct mallinfo2 mi = mallinfo2();
    size_t used = mi.uordblks + mi.hblkhd;
    if (used == 0) /* an allocator that keeps no such count (sanitizers) */
      used = (size_t)(rss > 0 ? rss : 0) * 1024;
    static _Atomic size_t used_peak;
    size_t peak = atomic_load(&used_peak);
    while (used > peak && !atomic_compare_exchange_weak(&used_peak, &peak, used))
      ;
    if (used > peak)
      peak = used;
    char h1[32], h2[32], h3[32], h4[32];
    human_bytes(h1, sizeof h1, (double)used);
    human_bytes(h2, sizeof h2, (double)peak);
    human_bytes(h3, sizeof h3, (double)rss * 1024);
    human_bytes(h4, sizeof h4, (double)hwm * 1024);
    vlm__buf_printf(b, "# Memory\r\nused_memory:%zu\r\nused_memory_human:%s"
                    "\r\nused_memory_peak:%zu\r\nused_memory_peak_human:%s"
                    "\r\nused_memory_rss:%ld\r\n"
                    "used_memory_rss_human:%s\r\nused_memory_peak_rss:%ld\r\n"
                    "used_memory_peak_rss_human:%s\r\nmaxmemory:0\r\n"
                    "maxmemory_human:0B\r\nmem_fragmentation_ratio:%.2f\r\n"
                    "mem_allocator:glibc\r\n"
                    "client_input_buffers:%zu\r\nclient_output_buffers:%zu"
                    "\r\n\r\n", used, h1, peak, h2, rss * 1024, h3, hwm * 1024,
                    h4, used ? (double)rss * 1024 / (double)used : 0.0, qbufs,
                    obufs);
  }
  if (want[7])
    vlm__cluster_info(srv, b);
  if (want[9])
    vlm__reembed_info(srv, b);
  if (b->oom) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  return 0;
}

static void info_finish(vlm__job *job, const long long *others,
                        int answered);
static int info_after(vlm__job *job);

static void cmd_info_exec(vlm__job *job) {
  vlm_server *srv = job->srv;
  info_state *st = job->state;
  vlm__buf *b = &st->text;
  vlm_db_info info;
  if (st->db || st->keyspace || st->replication) {
    int rc = vlm_db_stat(srv->db, &info);
    if (rc < 0) {
      reply_liberr(&job->reply, rc);
      return;
    }
  }
  if (st->db) {
    vlm__buf_printf(b, "# Db\r\nitems:%lld\r\nimage_vectors:%lld\r\n"
                    "text_vectors:%lld\r\nindex_vectors:%lld\r\ndim:%d\r\n"
                    "index_factory:%s\r\nformat_version:%d\r\n"
                    "disk_bytes:%llu\r\nfields:",
                    (long long)info.items, (long long)info.image_vectors,
                    (long long)info.text_vectors,
                    (long long)info.index_vectors, info.dim,
                    info.index_factory, info.format_version,
                    (unsigned long long)info.disk_bytes);
    static const char *types[] = {"text", "int", "real"};
    for (int i = 0; i < info.nfields; i++)
      vlm__buf_printf(b, "%s%s:%s", i ? "," : "", info.field_names[i],
                      (unsigned)info.field_types[i] < 3
                          ? types[info.field_types[i]]
                          : "?");
    vlm__buf_printf(b, "\r\nmodel_id:%s\r\nmodel_family:%s\r\n"
                    "pending_vectors:%lld\r\ntombstones:%lld\r\n"
                    "index_trained:%d\r\ntuned_effort_image:%d\r\n"
                    "tuned_effort_text:%d\r\n",
                    info.model_id, info.model_family,
                    (long long)info.pending_vectors,
                    (long long)info.tombstones, info.index_trained,
                    info.tuned_effort[0], info.tuned_effort[1]);
    /* the default search effort and the recall measured at it (0: not
     * measured yet) */
    for (int m = 0; m < 2; m++)
      vlm__buf_printf(b, "%s_search_effort:%d\r\n%s_measured_recall:%.4f\r\n"
                      "%s_measured_queries:%d\r\n", m ? "text" : "image",
                      info.tuned_effort[m], m ? "text" : "image",
                      info.tuned_recall[m], m ? "text" : "image",
                      info.tuned_queries[m]);
    /* 1: ADD, UPSERT and UPDATE keep the bytes of the image they carry */
    vlm__buf_printf(b, "keep_images:%d\r\n\r\n", info.keep_images);
  }
  if (st->model) {
    if (srv->clip)
      vlm__buf_printf(b, "# Model\r\nmodel_loaded:1\r\nmodel_id:%s\r\n"
                      "model_dir:%s\r\nfamily:%s\r\ndim:%d\r\n"
                      "image_size:%d\r\ncontext_length:%d\r\n"
                      "logit_scale:%.9g\r\nlogit_bias:%.9g\r\n\r\n",
                      vlm_clip_model_id(srv->clip), srv->model_dir,
                      vlm_clip_family(srv->clip), vlm_clip_dim(srv->clip),
                      vlm_clip_image_size(srv->clip),
                      vlm_clip_context_length(srv->clip),
                      (double)vlm_clip_logit_scale(srv->clip),
                      (double)vlm_clip_logit_bias(srv->clip));
    else
      vlm__buf_printf(b, "# Model\r\nmodel_loaded:0\r\n\r\n");
  }
  if (st->replication)
    vlm__repl_info(srv, b, info.seq);
  if (st->keyspace) {
    if (count_served(job, &st->view, info.items, &st->items) < 0)
      st->items = info.items; /* INFO answers: what it holds */
    if (srv->cluster && !job->local) {
      job->after = info_after; /* the whole cluster's keys */
      return;
    }
  }
  info_finish(job, NULL, 0);
}

/* The keyspace section (with the items of the cluster's other shards when
 * counts holds them) and the reply. */
static void info_finish(vlm__job *job, const long long *others,
                        int answered) {
  info_state *st = job->state;
  vlm__buf *b = &st->text;
  /* Redis's one line per database, which redis-cli --stat and monitoring
   * tools read for the key count; vlmdb keys never expire.  A cluster
   * node counts the shards that answered (INFO never fails for a shard
   * down: cluster clients read it to connect). */
  if (st->keyspace)
    vlm__buf_printf(b, "# Keyspace\r\ndb0:keys=%lld,expires=0,avg_ttl=0\r\n",
                    st->items + (others ? *others : 0));
  if (st->keyspace && others)
    vlm__buf_printf(b, "cluster_shards:%d\r\ncluster_shards_answered:%d\r\n",
                    vlm__cluster_nshards(job->srv), answered);
  if (st->keyspace)
    vlm__buf_printf(b, "\r\n");
  size_t len = b->len >= 2 ? b->len - 2 : b->len; /* no trailing blank line */
  if (b->oom)
    vlm__reply_error(&job->reply, "ERR", "out of memory");
  else
    vlm__reply_bulk(&job->reply, b->data, len);
}

/* The sum of the integer replies of the other shards, or -1 after
 * replying -CLUSTERDOWN (or the shard's error). */
static int sum_replies(vlm__job *job, redisReply **replies,
                       const char **errors, long long *sum) {
  int n = job->srv->cluster ? vlm__cluster_nshards(job->srv) : 0;
  *sum = 0;
  for (int s = 0; s < n; s++) {
    if (errors[s]) {
      vlm__reply_error(&job->reply, "CLUSTERDOWN", "%s", errors[s]);
      return -1;
    }
    if (!replies[s])
      continue;
    if (replies[s]->type != REDIS_REPLY_INTEGER) {
      vlm__reply_error(&job->reply, "ERR", "shard %d answered: %.200s", s,
                       replies[s]->type == REDIS_REPLY_ERROR
                           ? replies[s]->str : "not an integer");
      return -1;
    }
    *sum += replies[s]->integer;
  }
  return 0;
}

static void info_done(vlm__job *job, redisReply **replies,
                      const char **errors) {
  long long others = 0;
  int n = vlm__cluster_nshards(job->srv), answered = 0;
  for (int s = 0; s < n; s++)
    if (s == vlm__cluster_myshard(job->srv) ||
        (replies[s] && replies[s]->type == REDIS_REPLY_INTEGER)) {
      answered++;
      others += replies[s] ? replies[s]->integer : 0;
    }
  (void)errors;
  info_finish(job, &others, answered);
}

static int info_after(vlm__job *job) {
  info_state *st = job->state;
  return dbsize_fanout(job, &st->view, info_done);
}

/* ======================================================================
 * SEARCH
 * ==================================================================== */

enum { Q_TEXT, Q_IMAGE, Q_KEY, Q_VECTOR };
enum { F_CAPTION = -1, F_SOURCE = -2, F_META = -3, F_THUMB = -4,
       F_MODALITY = -5, F_SIMILAR = -6, F_LOGIT = -7, F_PROBABILITY = -8,
       F_HAS_THUMB = -9, F_IMAGE_VEC = -10 };
#define MAX_RETURN 32

typedef struct {
  int qtype;
  const char *key;         /* Q_KEY */
  float *vec;              /* Q_VECTOR */
  vlm_search_options opts;
  int nfields;
  int fields[MAX_RETURN];  /* F_* or a declared field's index */
  const char *field_names[MAX_RETURN];
  /* Coordinated across a cluster's shards (not VLM.LOCAL): this shard's
   * hits as RESP2 (without probability, computed over the merged hits),
   * and the query vector the other shards are sent. */
  int coordinated, allow_partial;
  int remote_key;          /* Q_KEY of another shard's key: its vector is
                              fetched first (then st->vec, Q_VECTOR) */
  int rankings;            /* VLM.LOCAL ... RANKINGS: a hybrid search's
                              two rankings, unfused, for a coordinator */
  vlm__buf local;
  float *qvec;
  int page_offset;         /* coordinated OFFSET: merged hits skipped */
  /* Coordinated GROUPBY: the group field's place among the fields the
   * shards return (it is asked for when RETURN does not name it, then
   * hidden: group_hidden is its index in fields, else -1), how many hits
   * a page keeps (OFFSET + K) and at most group_per of a value. */
  int group_at, group_hidden, group_keep, group_per;
  /* Coordinated COLLAPSE: the threshold (the shards rank uncollapsed),
   * the image vectors' place among the fields the shards return (always
   * asked for, always hidden: vec_hidden is its index in fields, else
   * -1), and how many hits the folding keeps (OFFSET + K). */
  float collapse;
  int vec_at, vec_hidden, collapse_keep;
  /* Cluster: the client's filter (sent on to the other shards), and the
   * one this node searches with, hiding the items of slots it holds but
   * does not serve (a live move under way: vlm__cluster_search_filter);
   * owners: VLM.LOCAL's OWNERS, the coordinator's map; coord_owners:
   * this node's map as it coordinates, taken when its own part's filter
   * is, so that a CLUSTER RELOAD before the fan-out cannot give the
   * other shards another map than the one its own part hid by. */
  const char *user_filter, *owners;
  char *hide_filter, *coord_owners;
} search_state;

static void search_state_free(void *p) {
  search_state *st = p;
  if (st) {
    free(st->hide_filter);
    free(st->coord_owners);
    free(st->vec);
    free(st->qvec);
    vlm__buf_free(&st->local);
  }
  free(st);
}

static int resolve_field(vlm__ctx *ctx, const vlm__resp_arg *a, int *field,
                         const char **name) {
  static const struct {
    const char *name;
    int id;
  } builtin[] = {{"caption", F_CAPTION}, {"source", F_SOURCE},
                 {"meta", F_META},       {"thumb", F_THUMB},
                 {"modality", F_MODALITY}, {"similar", F_SIMILAR},
                 {"logit", F_LOGIT},     {"probability", F_PROBABILITY},
                 {"has_thumb", F_HAS_THUMB}};
  for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
    if (arg_is(a, builtin[i].name)) {
      *field = builtin[i].id;
      *name = builtin[i].name;
      return 0;
    }
  /* the hit's image vector (float32 bytes, or nil), which a coordinator
   * folds near-duplicates with: VLM.LOCAL only ("vlm_" names cannot be
   * declared fields) */
  if (ctx->job->local && arg_is(a, "vlm_image_vec")) {
    *field = F_IMAGE_VEC;
    *name = "vlm_image_vec";
    return 0;
  }
  vlm_server *srv = ctx->srv;
  for (int i = 0; i < srv->nfields; i++)
    if (a->len == strlen(srv->field_names[i]) &&
        !memcmp(a->ptr, srv->field_names[i], a->len)) {
      *field = i;
      *name = srv->field_names[i];
      return 0;
    }
  char tmp[64];
  vlm__reply_error(ctx->out, "ERR", "unknown field '%s' in RETURN (caption, "
                   "source, meta, thumb, has_thumb, modality, similar, "
                   "logit, probability or a declared field)",
                   arg_show(a, tmp, sizeof tmp));
  return -1;
}

static int cmd_search_proc(vlm__ctx *ctx) {
  vlm__job *job = ctx->job;
  search_state *st = calloc(1, sizeof *st);
  if (!st) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  job->state = st;
  job->state_free = search_state_free;
  st->opts.k = 10;
  st->opts.target = VLM_TARGET_ANY;
  const vlm__resp_arg *kind = &ctx->argv[1], *q = &ctx->argv[2];
  if (arg_is(kind, "TEXT"))
    st->qtype = Q_TEXT;
  else if (arg_is(kind, "IMAGE"))
    st->qtype = Q_IMAGE;
  else if (arg_is(kind, "KEY"))
    st->qtype = Q_KEY;
  else if (arg_is(kind, "VECTOR"))
    st->qtype = Q_VECTOR;
  else {
    char tmp[64];
    vlm__reply_error(ctx->out, "ERR", "SEARCH: unknown query kind '%s' (TEXT,"
                     " IMAGE, KEY or VECTOR)", arg_show(kind, tmp, sizeof tmp));
    return -1;
  }
  int k_given = 0;
  for (int i = 3; i < ctx->argc; i++) {
    const vlm__resp_arg *a = &ctx->argv[i];
    int has = i + 1 < ctx->argc, e;
    long v;
    double d;
    if (arg_is(a, "K") && has) {
      if (arg_long(ctx, &ctx->argv[++i], 1, VLM_DB_MAX_K, "K", &v) < 0)
        return -1;
      st->opts.k = (int)v;
      k_given = 1;
    } else if (arg_is(a, "FILTER") && has) {
      if (arg_cstr(ctx, &ctx->argv[++i], "FILTER") < 0)
        return -1;
      st->opts.filter = ctx->argv[i].ptr;
    } else if (arg_is(a, "OWNERS") && has && job->local) {
      if (arg_cstr(ctx, &ctx->argv[++i], "OWNERS") < 0)
        return -1;
      st->owners = ctx->argv[i].ptr;
    } else if (arg_is(a, "TARGET") && has) {
      const vlm__resp_arg *t = &ctx->argv[++i];
      if (arg_is(t, "ANY"))
        st->opts.target = VLM_TARGET_ANY;
      else if (arg_is(t, "IMAGE"))
        st->opts.target = VLM_TARGET_IMAGE;
      else if (arg_is(t, "TEXT"))
        st->opts.target = VLM_TARGET_TEXT;
      else {
        vlm__reply_error(ctx->out, "ERR", "TARGET must be ANY, IMAGE or TEXT");
        return -1;
      }
    } else if (arg_is(a, "HYBRID") && has) {
      if (arg_cstr(ctx, &ctx->argv[++i], "HYBRID") < 0)
        return -1;
      st->opts.hybrid_text = ctx->argv[i].ptr;
    } else if (arg_is(a, "WEIGHT") && has) {
      if (arg_double(ctx, &ctx->argv[++i], 0, 1, "WEIGHT", &d) < 0)
        return -1;
      st->opts.hybrid_weight = (float)d;
    } else if ((e = arg_effort(ctx, &i, &st->opts.ef_search,
                               &st->opts.nprobe))) {
      if (e < 0)
        return -1;
    } else if (arg_is(a, "EXACT")) {
      st->opts.exact = 1;
    } else if (arg_is(a, "ALLOWPARTIAL")) {
      st->allow_partial = 1;
    } else if (arg_is(a, "RANKINGS") && job->local) {
      st->rankings = 1;
    } else if (arg_is(a, "COLLAPSE") && has) {
      if (arg_double(ctx, &ctx->argv[++i], 0, 1, "COLLAPSE", &d) < 0)
        return -1;
      if (d <= 0) {
        vlm__reply_error(ctx->out, "ERR", "COLLAPSE is a cosine in (0, 1]");
        return -1;
      }
      st->opts.collapse = (float)d;
    } else if (arg_is(a, "MINSCORE") && has) {
      if (arg_double(ctx, &ctx->argv[++i], -1, 1, "MINSCORE", &d) < 0)
        return -1;
      st->opts.use_min_score = 1;
      st->opts.min_score = (float)d;
    } else if (arg_is(a, "OFFSET") && has) {
      if (arg_long(ctx, &ctx->argv[++i], 0, VLM_DB_MAX_K - 1, "OFFSET",
                   &v) < 0)
        return -1;
      st->opts.offset = (int)v;
    } else if (arg_is(a, "GROUPBY") && has) {
      const vlm__resp_arg *g = &ctx->argv[++i];
      int known = 0;
      for (int f = 0; f < ctx->srv->nfields && !known; f++)
        if (g->len == strlen(ctx->srv->field_names[f]) &&
            !memcmp(g->ptr, ctx->srv->field_names[f], g->len)) {
          known = 1;
          st->opts.group_by = ctx->srv->field_names[f];
        }
      if (!known) {
        char tmp[64];
        vlm__reply_error(ctx->out, "ERR", "GROUPBY '%s' is not a declared "
                         "field", arg_show(g, tmp, sizeof tmp));
        return -1;
      }
      if (i + 2 < ctx->argc && arg_is(&ctx->argv[i + 1], "PER")) {
        i++;
        if (arg_long(ctx, &ctx->argv[++i], 1, VLM_DB_MAX_K, "PER", &v) < 0)
          return -1;
        st->opts.group_per = (int)v;
      }
    } else if (arg_is(a, "RETURN") && has) {
      if (arg_long(ctx, &ctx->argv[++i], 0, MAX_RETURN, "RETURN count",
                   &v) < 0)
        return -1;
      if (i + v >= ctx->argc) {
        vlm__reply_error(ctx->out, "ERR", "RETURN %ld needs %ld field names",
                         v, v);
        return -1;
      }
      for (long f = 0; f < v; f++) {
        if (resolve_field(ctx, &ctx->argv[++i], &st->fields[st->nfields],
                          &st->field_names[st->nfields]) < 0)
          return -1;
        st->nfields++;
      }
    } else {
      return syntax_error(ctx, a);
    }
  }
  if (st->opts.hybrid_weight > 0 && !st->opts.hybrid_text) {
    vlm__reply_error(ctx->out, "ERR", "WEIGHT needs HYBRID <text>");
    return -1;
  }
  /* MINSCORE without K: every result above it, up to the deepest page */
  if (st->opts.use_min_score && !k_given)
    st->opts.k = VLM_DB_MAX_K - st->opts.offset;
  if (st->opts.offset + st->opts.k > VLM_DB_MAX_K) {
    vlm__reply_error(ctx->out, "ERR", "OFFSET %d + K %d is past the deepest "
                     "result a search returns (%d)", st->opts.offset,
                     st->opts.k, VLM_DB_MAX_K);
    return -1;
  }
  if (st->opts.use_min_score && st->opts.hybrid_text) {
    vlm__reply_error(ctx->out, "ERR", "MINSCORE is a cosine and a HYBRID "
                     "score is fused ranks: not both");
    return -1;
  }
  if (st->opts.group_by && st->opts.collapse > 0) {
    vlm__reply_error(ctx->out, "ERR", "GROUPBY and COLLAPSE cannot be "
                     "combined");
    return -1;
  }
  st->coordinated = ctx->srv->cluster && !job->local;
  st->group_hidden = st->vec_hidden = -1;
  st->user_filter = st->opts.filter;
  if (ctx->srv->cluster) {
    /* every shard answers for the slots the coordinator's map gives it,
     * so a key held by two shards during a live move counts once */
    char why[160];
    if (vlm__cluster_search_filter(ctx->srv, st->owners, st->opts.filter,
                                   &st->hide_filter, why, sizeof why) < 0) {
      vlm__reply_error(ctx->out, "ERR", "%s", why);
      return -1;
    }
    if (st->hide_filter)
      st->opts.filter = st->hide_filter;
    if (st->coordinated && !(st->coord_owners = vlm__cluster_owners(ctx->srv))) {
      vlm__reply_error(ctx->out, "ERR", "out of memory");
      return -1;
    }
  }
  if (st->coordinated && st->opts.collapse > 0) {
    /* Exact: one database folds the best vlm_collapse_depth(OFFSET + K)
     * candidates of its ranking (cut at MINSCORE) and nothing deeper.
     * Every shard ranks its top that many, uncollapsed, with their image
     * vectors; each of the database's candidates is among its own
     * shard's top that many, so the merge's top that many are the
     * database's candidates, and the node folds them with the same walk
     * (vlm_collapse_near), keeps OFFSET + K and skips OFFSET.  HYBRID:
     * both rankings to that depth, fused, then folded, as one database
     * does (as close to its answer as HYBRID is). */
    if (st->nfields == MAX_RETURN) {
      vlm__reply_error(ctx->out, "ERR", "RETURN at most %d fields with "
                       "COLLAPSE on a cluster", MAX_RETURN - 1);
      return -1;
    }
    int at = 0;
    for (int f = 0; f < st->nfields; f++)
      at += st->fields[f] != F_PROBABILITY;
    st->fields[st->nfields] = F_IMAGE_VEC;
    st->field_names[st->nfields] = "vlm_image_vec";
    st->vec_at = at;
    st->vec_hidden = st->nfields++;
    st->collapse = st->opts.collapse;
    st->collapse_keep = st->opts.offset + st->opts.k;
    st->page_offset = st->opts.offset;
    st->opts.collapse = 0;
    st->opts.offset = 0;
    st->opts.k = vlm_collapse_depth(st->collapse_keep);
  }
  /* A group limit applied by each shard is not the cluster's (a hit a
   * shard kept can lose its place to another shard's hits of its group):
   * refused until the coordinator groups again.  A page is exact: every
   * shard (this one included) ranks its top OFFSET + K, the coordinator
   * merges them and skips OFFSET (MINSCORE is each shard's floor, so the
   * merged ranking is exact too). */
  if (st->coordinated && st->opts.group_by) {
    /* Exact when every shard ranks its top (OFFSET + K) x PER under its
     * own group limit: a hit it leaves out is below that many of its
     * hits in at least OFFSET + K groups, and each such group keeps its
     * best hit in the merge, so the cluster's page leaves it out too. */
    if (st->opts.hybrid_text) {
      vlm__reply_error(ctx->out, "ERR", "SEARCH GROUPBY with HYBRID is not "
                       "coordinated across a cluster's shards");
      return -1;
    }
    int per = st->opts.group_per > 0 ? st->opts.group_per : 1;
    long depth = (long)(st->opts.offset + st->opts.k) * per;
    if (depth > VLM_DB_MAX_K) {
      vlm__reply_error(ctx->out, "ERR", "GROUPBY on a cluster ranks (OFFSET "
                       "+ K) x PER = %ld hits on every shard, more than %d",
                       depth, VLM_DB_MAX_K);
      return -1;
    }
    int field = -1, at = 0;
    for (int f = 0; f < st->nfields && field < 0; f++) {
      if (st->fields[f] >= 0 &&
          !strcmp(ctx->srv->field_names[st->fields[f]], st->opts.group_by))
        field = f;
      else if (st->fields[f] != F_PROBABILITY)
        at++;
    }
    if (field < 0) {
      if (st->nfields == MAX_RETURN) {
        vlm__reply_error(ctx->out, "ERR", "RETURN at most %d fields with "
                         "GROUPBY on a cluster", MAX_RETURN - 1);
        return -1;
      }
      for (int f = 0; f < ctx->srv->nfields; f++)
        if (!strcmp(ctx->srv->field_names[f], st->opts.group_by))
          st->fields[st->nfields] = f;
      st->field_names[st->nfields] = st->opts.group_by;
      st->group_hidden = st->nfields++;
    }
    st->group_at = at;
    st->group_per = per;
    st->group_keep = st->opts.offset + st->opts.k;
    st->opts.k = (int)depth - st->opts.offset; /* + OFFSET below */
  }
  if (st->coordinated && st->opts.offset > 0) {
    st->page_offset = st->opts.offset;
    st->opts.k += st->opts.offset;
    st->opts.offset = 0;
  }
  if (st->rankings && (!st->opts.hybrid_text || st->opts.collapse > 0)) {
    vlm__reply_error(ctx->out, "ERR", "RANKINGS needs HYBRID and no "
                     "COLLAPSE");
    return -1;
  }
  /* logit and probability are the model's own score of a cosine, so they
   * need the model, and a hybrid score (fused ranks) is no cosine. */
  for (int f = 0; f < st->nfields; f++) {
    if (st->fields[f] != F_LOGIT && st->fields[f] != F_PROBABILITY)
      continue;
    if (need_model(ctx, "RETURN logit/probability") < 0)
      return -1;
    if (st->opts.hybrid_text) {
      vlm__reply_error(ctx->out, "ERR", "RETURN %s: a HYBRID score is not a "
                       "cosine", st->field_names[f]);
      return -1;
    }
  }
  switch (st->qtype) {
  case Q_TEXT:
    if (need_model(ctx, "SEARCH TEXT") < 0 || arg_cstr(ctx, q, "text") < 0)
      return -1;
    job->embed_text = q->ptr;
    break;
  case Q_IMAGE:
    if (need_model(ctx, "SEARCH IMAGE") < 0)
      return -1;
    job->embed_image = q->ptr;
    job->embed_image_len = q->len;
    break;
  case Q_KEY:
    if (q->len == 0 || arg_cstr(ctx, q, "key") < 0) {
      if (q->len == 0)
        vlm__reply_error(ctx->out, "ERR", "empty key");
      return -1;
    }
    st->key = q->ptr;
    st->remote_key = st->coordinated &&
                     !vlm__cluster_owns(ctx->srv, vlm_key_slot(q->ptr, q->len));
    break;
  case Q_VECTOR:
    if (arg_vector(ctx, q, "VECTOR", &st->vec) < 0)
      return -1;
    break;
  }
  return 0;
}

static const char *modality_name(vlm_target t) {
  return t == VLM_TARGET_IMAGE ? "image" : t == VLM_TARGET_TEXT ? "text"
                                                                : "any";
}

static void reply_json_value(vlm__buf *out, json_t *v) {
  if (!v || json_is_null(v)) {
    vlm__reply_null(out);
  } else if (json_is_integer(v)) {
    vlm__reply_int(out, (long long)json_integer_value(v));
  } else if (json_is_real(v)) {
    vlm__reply_double(out, json_real_value(v));
  } else if (json_is_string(v)) {
    vlm__reply_bulk(out, json_string_value(v), json_string_length(v));
  } else if (json_is_boolean(v)) {
    vlm__reply_bool(out, json_is_true(v));
  } else {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    vlm__reply_cstr(out, s);
    free(s);
  }
}

static void reply_field(vlm__buf *out, int field, const vlm_hit *hit,
                        const vlm_record *rec, json_t *meta,
                        const char *name, const vlm_clip *clip, float prob) {
  switch (field) {
  case F_LOGIT:
    vlm__reply_float(out, vlm_clip_logit(clip, hit->score));
    return;
  case F_PROBABILITY:
    vlm__reply_float(out, prob);
    return;
  case F_MODALITY:
    vlm__reply_cstr(out, modality_name(hit->modality));
    return;
  case F_SIMILAR:
    vlm__reply_int(out, hit->similar);
    return;
  case F_CAPTION:
    vlm__reply_cstr(out, rec ? rec->caption : NULL);
    return;
  case F_SOURCE:
    vlm__reply_cstr(out, rec ? rec->source : NULL);
    return;
  case F_META:
    vlm__reply_cstr(out, rec ? rec->meta_json : NULL);
    return;
  case F_HAS_THUMB:
    vlm__reply_bool(out, rec && rec->thumb);
    return;
  case F_THUMB:
    if (rec && rec->thumb)
      vlm__reply_bulk(out, rec->thumb, rec->thumb_len);
    else
      vlm__reply_null(out);
    return;
  case F_IMAGE_VEC:
    if (rec && rec->image_vec)
      vlm__reply_bulk(out, rec->image_vec,
                      (size_t)rec->dim * sizeof *rec->image_vec);
    else
      vlm__reply_null(out);
    return;
  default:
    reply_json_value(out, meta ? json_object_get(meta, name) : NULL);
  }
}

/* The hits with their RETURN fields (without probability when
 * no_prob: a coordinator computes it over the merged hits). */
static void write_hits(vlm__buf *out, vlm_server *srv,
                       const search_state *st, const vlm_hit *hits,
                       int nhits, const float *probs, int no_prob) {
  int need_rec = 0, nfields = 0;
  for (int f = 0; f < st->nfields; f++) {
    need_rec |= st->fields[f] >= F_THUMB || st->fields[f] == F_HAS_THUMB ||
                st->fields[f] == F_IMAGE_VEC;
    nfields += !(no_prob && st->fields[f] == F_PROBABILITY);
  }
  if (out->resp3)
    vlm__reply_map(out, nhits);
  else
    vlm__reply_array(out, nhits);
  for (int h = 0; h < nhits; h++) {
    vlm_record *rec = NULL;
    json_t *meta = NULL;
    if (need_rec && vlm_db_get(srv->db, hits[h].key, &rec) == 0) {
      for (int f = 0; f < st->nfields; f++)
        if (st->fields[f] >= 0 && !meta && rec->meta_json)
          meta = json_loads(rec->meta_json, 0, NULL);
    }
    if (out->resp3) {
      vlm__reply_cstr(out, hits[h].key);
      vlm__reply_map(out, 1 + nfields);
    } else {
      vlm__reply_array(out, 2 + 2 * nfields);
      vlm__reply_cstr(out, hits[h].key);
    }
    if (out->resp3)
      vlm__reply_cstr(out, "score");
    vlm__reply_float(out, hits[h].score);
    for (int f = 0; f < st->nfields; f++) {
      if (no_prob && st->fields[f] == F_PROBABILITY)
        continue;
      vlm__reply_cstr(out, st->field_names[f]);
      reply_field(out, st->fields[f], &hits[h], rec, meta,
                  st->field_names[f], srv->clip, probs ? probs[h] : 0.0f);
    }
    json_decref(meta);
    vlm_record_free(rec);
  }
}

static int search_after(vlm__job *job);
static void search_done(vlm__job *job, redisReply **replies,
                        const char **errors);
static int key_after(vlm__job *job);

/* Keep the query vector for the other shards (exec of a coordinated
 * search); -1 with the error replied. */
static int save_query(vlm__job *job, const float *query) {
  search_state *st = job->state;
  size_t bytes = (size_t)job->srv->dim * sizeof *st->qvec;
  if (st->local.oom || (query && !(st->qvec = malloc(bytes)))) {
    vlm__reply_error(&job->reply, "ERR", "out of memory");
    return -1;
  }
  if (query)
    memcpy(st->qvec, query, bytes);
  return 0;
}

static void cmd_search_exec(vlm__job *job) {
  vlm_server *srv = job->srv;
  search_state *st = job->state;
  vlm__buf *out = &job->reply;
  const float *query = NULL;
  vlm_record *keyrec = NULL;
  vlm_hit *hits = NULL;
  float *probs = NULL;
  int nhits = 0, rc;
  switch (st->qtype) {
  case Q_TEXT:
    query = job->text_vec;
    break;
  case Q_IMAGE:
    query = job->image_vec;
    break;
  case Q_VECTOR:
    query = st->vec;
    break;
  case Q_KEY:
    if (st->remote_key) { /* the key's shard has its vector */
      job->after = key_after;
      return;
    }
    rc = vlm_db_get(srv->db, st->key, &keyrec);
    if (rc == VLM_ENOTFOUND) {
      vlm__reply_error(out, "ERR", "no such key '%.200s'", st->key);
      return;
    }
    if (rc < 0) {
      reply_liberr(out, rc);
      return;
    }
    query = keyrec->image_vec ? keyrec->image_vec : keyrec->text_vec;
    if (!query) {
      vlm__reply_error(out, "ERR", "key '%.200s' has no vector", st->key);
      goto done;
    }
    break;
  }
  if (st->rankings || (st->coordinated && st->opts.hybrid_text)) {
    /* the two rankings a hybrid search fuses, left for the coordinator
     * to fuse with the other shards' */
    vlm_hit *text = NULL;
    int ntext = 0;
    rc = vlm_db_search_rankings(srv->db, query, &st->opts, &hits, &nhits,
                                &text, &ntext);
    if (rc < 0) {
      reply_liberr(out, rc);
      goto done;
    }
    vlm__buf *to = out;
    if (st->coordinated) {
      vlm__buf_init(&st->local, 0);
      to = &st->local;
    }
    vlm__reply_array(to, 2);
    write_hits(to, srv, st, hits, nhits, NULL, 1);
    write_hits(to, srv, st, text, ntext, NULL, 1);
    vlm_hits_free(text, ntext);
    if (st->coordinated && save_query(job, query) == 0)
      job->after = search_after;
    goto done;
  }
  rc = vlm_db_search(srv->db, query, &st->opts, &hits, &nhits);
  if (rc < 0) {
    reply_liberr(out, rc);
    goto done;
  }
  if (st->coordinated) {
    /* this shard's part, as the others answer theirs */
    vlm__buf_init(&st->local, 0);
    write_hits(&st->local, srv, st, hits, nhits, NULL, 1);
    if (save_query(job, query) == 0)
      job->after = search_after;
    goto done;
  }
  int need_prob = 0;
  for (int f = 0; f < st->nfields; f++)
    need_prob |= st->fields[f] == F_PROBABILITY;
  /* The family's probabilities of the hits (vlm_clip_probabilities):
   * SigLIP scores each hit on its own, CLIP shares a softmax over the hits
   * returned, as its zero-shot classification does over its labels. */
  if (need_prob && nhits > 0) {
    probs = malloc((size_t)nhits * 2 * sizeof *probs);
    if (!probs) {
      vlm__reply_error(out, "ERR", "out of memory");
      goto done;
    }
    for (int h = 0; h < nhits; h++)
      probs[nhits + h] = hits[h].score;
    if ((rc = vlm_clip_probabilities(srv->clip, probs + nhits, nhits,
                                     probs)) < 0) {
      reply_liberr(out, rc);
      goto done;
    }
  }
  write_hits(out, srv, st, hits, nhits, probs, 0);
done:
  free(probs);
  vlm_hits_free(hits, nhits);
  vlm_record_free(keyrec);
}

/* ======================================================================
 * SEARCH across a cluster: this shard's hits (from exec) and every other
 * shard's (VLM.LOCAL SEARCH VECTOR ..., same options), merged by score
 * ==================================================================== */

static int search_after(vlm__job *job) {
  search_state *st = job->state;
  vlm_server *srv = job->srv;
  enum { MAXARGS = 34 + MAX_RETURN }; /* 26 for the options, the fields */
  const char *argv[MAXARGS];
  size_t lens[MAXARGS];
  char kbuf[16], efbuf[16], npbuf[16], nbuf[16];
  int argc = 0, nfields = 0;
#define ARG(s, n) (argv[argc] = (s), lens[argc] = (n), argc++)
#define CARG(s) ARG((s), strlen(s))
  CARG("VLM.LOCAL");
  CARG("SEARCH");
  CARG("VECTOR");
  ARG((const char *)st->qvec, (size_t)srv->dim * sizeof(float));
  snprintf(kbuf, sizeof kbuf, "%d", st->opts.k);
  CARG("K");
  CARG(kbuf);
  if (st->user_filter) {
    CARG("FILTER");
    CARG(st->user_filter);
  }
  CARG("TARGET");
  CARG(st->opts.target == VLM_TARGET_IMAGE ? "IMAGE"
       : st->opts.target == VLM_TARGET_TEXT ? "TEXT" : "ANY");
  if (st->opts.ef_search) {
    snprintf(efbuf, sizeof efbuf, "%d", st->opts.ef_search);
    CARG("EF");
    CARG(efbuf);
  }
  if (st->opts.nprobe) {
    snprintf(npbuf, sizeof npbuf, "%d", st->opts.nprobe);
    CARG("NPROBE");
    CARG(npbuf);
  }
  if (st->opts.exact)
    CARG("EXACT");
  char perbuf[16];
  if (st->opts.group_by) { /* each shard's top (OFFSET + K) x PER */
    snprintf(perbuf, sizeof perbuf, "%d", st->group_per);
    CARG("GROUPBY");
    CARG(st->opts.group_by);
    CARG("PER");
    CARG(perbuf);
  }
  char msbuf[32];
  if (st->opts.use_min_score) { /* each shard's floor: the merged top K */
    snprintf(msbuf, sizeof msbuf, "%.9g", (double)st->opts.min_score);
    CARG("MINSCORE");
    CARG(msbuf);
  }
  char wbuf[32];
  if (st->opts.hybrid_text) {
    CARG("HYBRID");
    CARG(st->opts.hybrid_text);
    if (st->opts.hybrid_weight > 0) {
      snprintf(wbuf, sizeof wbuf, "%.9g", (double)st->opts.hybrid_weight);
      CARG("WEIGHT");
      CARG(wbuf);
    }
    CARG("RANKINGS");
  }
  for (int f = 0; f < st->nfields; f++)
    nfields += st->fields[f] != F_PROBABILITY;
  if (nfields > 0) {
    snprintf(nbuf, sizeof nbuf, "%d", nfields);
    CARG("RETURN");
    CARG(nbuf);
    for (int f = 0; f < st->nfields; f++)
      if (st->fields[f] != F_PROBABILITY)
        CARG(st->field_names[f]);
  }
  /* the map this node's own part hid by: each shard answers for its
   * slots of it */
  if (st->coord_owners) {
    CARG("OWNERS");
    CARG(st->coord_owners);
  }
#undef CARG
#undef ARG
  return vlm__cluster_fanout(job, argc, argv, lens, search_done) == 0;
}

/* SEARCH KEY k of another shard's key: GET k WITHVECTORS from its shard,
 * then the search goes on as SEARCH VECTOR with k's image vector (else
 * its text vector), as on k's own shard. */
static int key_resume(vlm__job *job) {
  vlm__job_resubmit(job);
  return 1;
}

static void key_done(vlm__job *job, redisReply **replies,
                     const char **errors) {
  search_state *st = job->state;
  vlm__buf *out = &job->reply;
  int owner = vlm__cluster_owner(job->srv,
                                 vlm_key_slot(st->key, strlen(st->key)));
  const redisReply *r = replies[owner];
  size_t bytes = (size_t)job->srv->dim * sizeof(float);
  if (!r) {
    vlm__reply_error(out, "CLUSTERDOWN", "%s (it holds key '%.200s')",
                     errors[owner], st->key);
    return;
  }
  if (r->type == REDIS_REPLY_NIL) {
    vlm__reply_error(out, "ERR", "no such key '%.200s'", st->key);
    return;
  }
  if (r->type != REDIS_REPLY_ARRAY) {
    vlm__reply_error(out, "ERR", "shard %d answered GET with %.200s", owner,
                     r->type == REDIS_REPLY_ERROR ? r->str : "no item");
    return;
  }
  const redisReply *vec = NULL;
  for (int want = 0; want < 2 && !vec; want++)
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
      const redisReply *name = r->element[i], *v = r->element[i + 1];
      if (name->type == REDIS_REPLY_STRING &&
          !strcmp(name->str, want ? "text_vec" : "image_vec") &&
          v->type == REDIS_REPLY_STRING && v->len == bytes)
        vec = v;
    }
  if (!vec) {
    vlm__reply_error(out, "ERR", "key '%.200s' has no vector", st->key);
    return;
  }
  if (!(st->vec = malloc(bytes))) {
    vlm__reply_error(out, "ERR", "out of memory");
    return;
  }
  memcpy(st->vec, vec->str, bytes);
  st->qtype = Q_VECTOR;
  st->remote_key = 0;
  job->after = key_resume; /* back to the workers once posted */
}

static int key_after(vlm__job *job) {
  search_state *st = job->state;
  vlm_server *srv = job->srv;
  const char *argv[] = {"VLM.LOCAL", "GET", st->key, "WITHVECTORS"};
  size_t lens[] = {9, 3, strlen(st->key), 11};
  int owner = vlm__cluster_owner(srv, vlm_key_slot(st->key, lens[2]));
  return vlm__cluster_ask(job, owner, 4, argv, lens, key_done) == 0;
}

typedef struct {
  const redisReply *hit; /* [key, score, field, value, ...] */
  float score;
  int similar;           /* coordinated COLLAPSE: near-duplicates folded */
} merged_hit;

static int merged_cmp(const void *a, const void *b) {
  const merged_hit *x = a, *y = b;
  if (x->score != y->score)
    return x->score > y->score ? -1 : 1;
  return strcmp(x->hit->element[0]->str, y->hit->element[0]->str);
}

typedef struct {
  const char *key;
  const redisReply *hit;
  int from_text;
} keyed_hit;

static int keyed_cmp(const void *a, const void *b) {
  const keyed_hit *x = a, *y = b;
  int c = strcmp(x->key, y->key);
  return c ? c : x->from_text - y->from_text;
}

/* Fuse the merged vector ranking vec[0..nv) and BM25 ranking
 * text[0..nt) (vlm_fuse_rrf) into vec[0..*n): each fused hit with its
 * entry (fields) from the vector ranking, else the BM25 one, and its
 * fused score.  vec has room for nv + nt.  -1 out of memory. */
static int fuse_rankings(merged_hit *vec, int nv, merged_hit *text, int nt,
                         float weight, int k, int *n) {
  vlm_hit *vh = calloc((size_t)(nv + nt) + 1, sizeof *vh), *fused = NULL;
  keyed_hit *idx = malloc(((size_t)(nv + nt) + 1) * sizeof *idx);
  int nf = 0, rc = -1;
  if (!vh || !idx)
    goto done;
  for (int i = 0; i < nv + nt; i++) {
    const merged_hit *m = i < nv ? &vec[i] : &text[i - nv];
    vh[i].key = m->hit->element[0]->str;
    vh[i].score = m->score;
    vh[i].modality = i < nv ? VLM_TARGET_IMAGE : VLM_TARGET_TEXT;
    idx[i].key = vh[i].key;
    idx[i].hit = m->hit;
    idx[i].from_text = i >= nv;
  }
  qsort(idx, (size_t)(nv + nt), sizeof *idx, keyed_cmp);
  if (vlm_fuse_rrf(vh, nv, vh + nv, nt, weight, k, &fused, &nf) < 0)
    goto done;
  for (int i = 0; i < nf; i++) {
    keyed_hit want = {fused[i].key, NULL, 0};
    const keyed_hit *at = bsearch(&want, idx, (size_t)(nv + nt), sizeof *idx,
                                  keyed_cmp);
    if (!at) /* not in the vector ranking: its BM25 entry */
      at = (want.from_text = 1, bsearch(&want, idx, (size_t)(nv + nt),
                                        sizeof *idx, keyed_cmp));
    vec[i].hit = at->hit;
    vec[i].score = fused[i].score;
  }
  *n = nf;
  rc = 0;
done:
  vlm_hits_free(fused, nf);
  free(vh);
  free(idx);
  return rc;
}

/* A hit as a shard wrote it in RESP2: an array of 2 + 2 * nfields with a
 * key and a score. */
static int hit_ok(const redisReply *h, int nfields) {
  return h->type == REDIS_REPLY_ARRAY &&
         h->elements == (size_t)(2 + 2 * nfields) &&
         h->element[0]->type == REDIS_REPLY_STRING &&
         h->element[1]->type == REDIS_REPLY_STRING;
}

/* A field value from a shard's RESP2 reply in the client's protocol:
 * the numbers RESP2 sends as strings (logit, declared real fields) are
 * doubles again for RESP3. */
static void reply_forwarded(vlm__buf *out, const vlm_server *srv, int field,
                            const redisReply *v) {
  int real = field == F_LOGIT ||
             (field >= 0 && srv->field_types[field] == VLM_FIELD_REAL);
  switch (v->type) {
  case REDIS_REPLY_INTEGER:
    vlm__reply_int(out, v->integer);
    return;
  case REDIS_REPLY_NIL:
    vlm__reply_null(out);
    return;
  case REDIS_REPLY_STRING:
    if (real && out->resp3) {
      char *end;
      double d = strtod(v->str, &end);
      if (*v->str && !*end) {
        vlm__reply_double(out, d);
        return;
      }
    }
    vlm__reply_bulk(out, v->str, v->len);
    return;
  default:
    vlm__reply_null(out);
  }
}

static void search_done(vlm__job *job, redisReply **replies,
                        const char **errors) {
  search_state *st = job->state;
  vlm_server *srv = job->srv;
  vlm__buf *out = &job->reply;
  int nshards = vlm__cluster_nshards(srv), me = vlm__cluster_myshard(srv);
  int nfields = 0, answered = 0, total_hits = 0;
  int hybrid = st->opts.hybrid_text != NULL, nlists = hybrid ? 2 : 1;
  merged_hit *merged = NULL;
  float *scores = NULL, *probs = NULL;
  const float **vecs = NULL;
  int *keep = NULL, *similar = NULL;
  redisReply *local = vlm__cluster_parse_reply(st->local.data, st->local.len);
  if (!local) {
    vlm__reply_error(out, "ERR", "out of memory");
    return;
  }
  for (int f = 0; f < st->nfields; f++)
    nfields += st->fields[f] != F_PROBABILITY;
  const char *first_error = NULL;
  for (int s = 0; s < nshards; s++) {
    const redisReply *r = s == me ? local : replies[s];
    if (!r) {
      if (!first_error)
        first_error = errors[s];
      continue;
    }
    if (r->type == REDIS_REPLY_ERROR) {
      /* a shard that refuses what this one accepted: not a partial
       * answer but a broken cluster (different fields, version) */
      vlm__reply_error(out, "ERR", "shard %d answered: %.300s", s, r->str);
      goto done;
    }
    /* hybrid: [vector ranking, BM25 ranking], else the hits */
    int ok = r->type == REDIS_REPLY_ARRAY && (!hybrid || r->elements == 2);
    for (int l = 0; ok && l < nlists; l++) {
      const redisReply *list = hybrid ? r->element[l] : r;
      ok = list->type == REDIS_REPLY_ARRAY;
      for (size_t h = 0; ok && h < list->elements; h++)
        ok = hit_ok(list->element[h], nfields);
      total_hits += ok ? (int)list->elements : 0;
    }
    if (!ok) {
      vlm__reply_error(out, "ERR", "shard %d answered SEARCH with a reply "
                       "that is not a list of hits", s);
      goto done;
    }
    answered++;
  }
  if (first_error && !st->allow_partial) {
    vlm__reply_error(out, "CLUSTERDOWN", "%s (SEARCH ... ALLOWPARTIAL "
                     "answers from the shards that are up)", first_error);
    goto done;
  }
  merged = malloc(((size_t)total_hits + 1) * sizeof *merged);
  if (!merged) {
    vlm__reply_error(out, "ERR", "out of memory");
    goto done;
  }
  int n = 0, nl[2] = {0, 0};
  for (int l = 0; l < nlists; l++) {
    merged_hit *list = merged + nl[0];
    for (int s = 0; s < nshards; s++) {
      const redisReply *r = s == me ? local : replies[s];
      if (r && hybrid)
        r = r->element[l];
      for (size_t h = 0; r && h < r->elements; h++) {
        list[nl[l]].hit = r->element[h];
        list[nl[l]].score = strtof(r->element[h]->element[1]->str, NULL);
        list[nl[l]].similar = 0;
        nl[l]++;
      }
    }
    qsort(list, (size_t)nl[l], sizeof *list, merged_cmp);
  }
  n = nl[0];
  if (hybrid) {
    /* each ranking as deep as one database ranks it, then fused as one
     * database fuses its own (all of the fused list when it is folded
     * next, as one database folds its whole fused list) */
    int depth = st->opts.k > 50 ? st->opts.k : 50;
    int nv = nl[0] < depth ? nl[0] : depth, nt = nl[1] < depth ? nl[1] : depth;
    int fuse_k = st->collapse > 0 ? (nv + nt > 0 ? nv + nt : 1) : st->opts.k;
    if (fuse_rankings(merged, nv, merged + nl[0], nt, st->opts.hybrid_weight,
                      fuse_k, &n) < 0) {
      vlm__reply_error(out, "ERR", "out of memory");
      goto done;
    }
  } else if (st->collapse > 0 && n > st->opts.k) {
    n = st->opts.k; /* one database's candidates: its best depth */
  }
  if (st->collapse > 0 && n > 0) { /* near-duplicates across the shards */
    size_t bytes = (size_t)srv->dim * sizeof(float);
    vecs = malloc((size_t)n * sizeof *vecs);
    keep = malloc((size_t)n * sizeof *keep);
    similar = malloc((size_t)n * sizeof *similar);
    if (!vecs || !keep || !similar) {
      vlm__reply_error(out, "ERR", "out of memory");
      goto done;
    }
    for (int h = 0; h < n; h++) {
      const redisReply *v = merged[h].hit->element[3 + 2 * st->vec_at];
      vecs[h] = v->type == REDIS_REPLY_STRING && v->len == bytes
                    ? (const float *)v->str
                    : NULL;
    }
    int kept = vlm_collapse_near(vecs, n, srv->dim, st->collapse_keep,
                                 st->collapse, keep, similar);
    if (kept < 0) {
      reply_liberr(out, kept);
      goto done;
    }
    for (int j = 0; j < kept; j++) { /* keep[j] >= j: in place */
      merged[j] = merged[keep[j]];
      merged[j].similar = similar[j];
    }
    n = kept;
  }
  if (st->opts.group_by) { /* the cluster's groups, best first */
    int kept = 0;
    for (int h = 0; h < n && kept < st->group_keep; h++) {
      const redisReply *v = merged[h].hit->element[3 + 2 * st->group_at];
      int same = 0;
      for (int e = 0; e < kept && same < st->group_per; e++) {
        const redisReply *w = merged[e].hit->element[3 + 2 * st->group_at];
        same += v->type == w->type &&
                (v->type == REDIS_REPLY_INTEGER
                     ? v->integer == w->integer
                     : v->type != REDIS_REPLY_STRING ||
                           (v->len == w->len &&
                            !memcmp(v->str, w->str, v->len)));
      }
      if (same < st->group_per)
        merged[kept++] = merged[h];
    }
    n = kept;
  }
  if (n > st->opts.k)
    n = st->opts.k;
  if (st->collapse > 0 && n > st->collapse_keep)
    n = st->collapse_keep;
  if (st->page_offset > 0) { /* the page: after OFFSET merged hits */
    int skip = st->page_offset < n ? st->page_offset : n;
    memmove(merged, merged + skip, (size_t)(n - skip) * sizeof *merged);
    n -= skip;
  }
  int need_prob = 0;
  for (int f = 0; f < st->nfields; f++)
    need_prob |= st->fields[f] == F_PROBABILITY;
  if (need_prob && n > 0) {
    scores = malloc((size_t)n * sizeof *scores);
    probs = malloc((size_t)n * sizeof *probs);
    if (!scores || !probs) {
      vlm__reply_error(out, "ERR", "out of memory");
      goto done;
    }
    for (int h = 0; h < n; h++)
      scores[h] = merged[h].score;
    int rc = vlm_clip_probabilities(srv->clip, scores, n, probs);
    if (rc < 0) {
      reply_liberr(out, rc);
      goto done;
    }
  }
  if (st->allow_partial) {
    /* the coverage, then the hits */
    vlm__reply_map(out, 4);
    vlm__reply_cstr(out, "shards");
    vlm__reply_int(out, nshards);
    vlm__reply_cstr(out, "shards_answered");
    vlm__reply_int(out, answered);
    vlm__reply_cstr(out, "missing");
    vlm__reply_array(out, nshards - answered);
    for (int s = 0; s < nshards; s++)
      if (s != me && !replies[s])
        vlm__reply_cstr(out, errors[s]);
    vlm__reply_cstr(out, "results");
  }
  if (out->resp3)
    vlm__reply_map(out, n);
  else
    vlm__reply_array(out, n);
  int shown = st->nfields - (st->group_hidden >= 0) - (st->vec_hidden >= 0);
  for (int h = 0; h < n; h++) {
    const redisReply *hit = merged[h].hit;
    if (out->resp3) {
      vlm__reply_bulk(out, hit->element[0]->str, hit->element[0]->len);
      vlm__reply_map(out, 1 + shown);
      vlm__reply_cstr(out, "score");
    } else {
      vlm__reply_array(out, 2 + 2 * shown);
      vlm__reply_bulk(out, hit->element[0]->str, hit->element[0]->len);
    }
    vlm__reply_float(out, merged[h].score);
    int j = 0;
    for (int f = 0; f < st->nfields; f++) {
      if (f == st->group_hidden || f == st->vec_hidden) {
        j++; /* asked of the shards for grouping or folding */
        continue;
      }
      vlm__reply_cstr(out, st->field_names[f]);
      if (st->fields[f] == F_PROBABILITY) {
        vlm__reply_float(out, probs[h]);
        continue;
      }
      if (st->fields[f] == F_SIMILAR && st->collapse > 0) {
        vlm__reply_int(out, merged[h].similar); /* folded here */
        j++;
        continue;
      }
      reply_forwarded(out, srv, st->fields[f], hit->element[3 + 2 * j]);
      j++;
    }
  }
  if (out->oom) {
    out->len = 0;
    out->oom = 0;
    vlm__reply_error(out, "ERR", "out of memory");
  }
done:
  free(merged);
  free(scores);
  free(probs);
  free(vecs);
  free(keep);
  free(similar);
  vlm__cluster_reply_free(local);
}

/* ======================================================================
 * ADD / UPSERT, DEL, GET, EXISTS
 * ==================================================================== */

typedef struct {
  vlm_item item;
  vlm_write_kind kind; /* ADD, UPSERT or UPDATE */
  const void *image;
  size_t image_len;
  float *image_vec, *text_vec;  /* given as bytes */
  int existed;                  /* HTTP UPSERT: the key was there before */
} add_state;

static void add_state_free(void *p) {
  add_state *st = p;
  if (st) {
    free(st->image_vec);
    free(st->text_vec);
  }
  free(st);
}

static int cmd_add_proc(vlm__ctx *ctx) {
  vlm__job *job = ctx->job;
  add_state *st = calloc(1, sizeof *st);
  if (!st) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  job->state = st;
  job->state_free = add_state_free;
  st->kind = arg_is(&ctx->argv[0], "UPSERT")   ? VLM_WRITE_UPSERT
             : arg_is(&ctx->argv[0], "UPDATE") ? VLM_WRITE_UPDATE
                                               : VLM_WRITE_ADD;
  const vlm__resp_arg *key = &ctx->argv[1];
  if (key->len == 0) {
    vlm__reply_error(ctx->out, "ERR", "empty key");
    return -1;
  }
  if (arg_cstr(ctx, key, "key") < 0)
    return -1;
  st->item.key = key->ptr;
  for (int i = 2; i < ctx->argc; i++) {
    const vlm__resp_arg *a = &ctx->argv[i];
    if (i + 1 >= ctx->argc)
      return syntax_error(ctx, a);
    const vlm__resp_arg *v = &ctx->argv[++i];
    if (arg_is(a, "TEXT")) {
      if (arg_cstr(ctx, v, "TEXT") < 0)
        return -1;
      st->item.caption = v->ptr;
    } else if (arg_is(a, "IMAGE")) {
      st->image = v->ptr;
      st->image_len = v->len;
    } else if (arg_is(a, "META")) {
      if (arg_cstr(ctx, v, "META") < 0)
        return -1;
      st->item.meta_json = v->ptr;
    } else if (arg_is(a, "SOURCE")) {
      if (arg_cstr(ctx, v, "SOURCE") < 0)
        return -1;
      st->item.source = v->ptr;
    } else if (arg_is(a, "IMAGEVEC")) {
      free(st->image_vec);
      st->image_vec = NULL;
      if (arg_vector(ctx, v, "IMAGEVEC", &st->image_vec) < 0)
        return -1;
    } else if (arg_is(a, "TEXTVEC")) {
      free(st->text_vec);
      st->text_vec = NULL;
      if (arg_vector(ctx, v, "TEXTVEC", &st->text_vec) < 0)
        return -1;
    } else {
      return syntax_error(ctx, a);
    }
  }
  /* Vectors not given are computed from the text and the image. */
  if (st->item.caption && !st->text_vec && ctx->srv->clip)
    job->embed_text = st->item.caption;
  if (st->image && !st->image_vec) {
    if (need_model(ctx, "ADD with IMAGE and no IMAGEVEC") < 0)
      return -1;
    job->embed_image = st->image;
    job->embed_image_len = st->image_len;
  }
  if (!st->text_vec && !st->image_vec && !job->embed_text &&
      !job->embed_image && st->kind != VLM_WRITE_UPDATE) {
    vlm__reply_error(ctx->out, "ERR", "%s needs a vector: TEXT or IMAGE "
                     "(with a model loaded), TEXTVEC or IMAGEVEC",
                     st->kind == VLM_WRITE_UPSERT ? "UPSERT" : "ADD");
    return -1;
  }
  return 0;
}

/* SETMETA key json: UPDATE key META json. */
static int cmd_setmeta_proc(vlm__ctx *ctx) {
  add_state *st = job_state(ctx, sizeof *st, add_state_free);
  if (!st)
    return -1;
  st->kind = VLM_WRITE_UPDATE;
  if (ctx->argv[1].len == 0) {
    vlm__reply_error(ctx->out, "ERR", "empty key");
    return -1;
  }
  if (arg_cstr(ctx, &ctx->argv[1], "key") < 0 ||
      arg_cstr(ctx, &ctx->argv[2], "META") < 0)
    return -1;
  st->item.key = ctx->argv[1].ptr;
  st->item.meta_json = ctx->argv[2].ptr;
  return 0;
}

/* The item an ADD/UPSERT job writes, its vectors given or embedded, with
 * the thumbnail made from its image (*thumb, malloc'd, or NULL).  0, or
 * -1 with *why set (the image cannot be read).
 *
 * A database that keeps images (vlm_db_keeps_images) keeps the image's
 * bytes with the item, as `ingest --keep-images` keeps a file's.  One
 * that does not keeps none; an UPDATE with a new IMAGE there removes the
 * bytes the item kept, which are no longer its picture (a later reembed
 * would embed the old one). */
static int add_item(vlm__job *job, vlm_item *item, uint8_t **thumb,
                    char *why, size_t whylen) {
  add_state *st = job->state;
  size_t thumb_len = 0;
  *thumb = NULL;
  if (st->image && vlm_image_thumbnail_bytes(st->image, st->image_len, thumb,
                                             &thumb_len) < 0) {
    snprintf(why, whylen, "cannot read the image: %s", vlm_errmsg());
    return -1;
  }
  *item = st->item;
  item->image_vec = st->image_vec ? st->image_vec : job->image_vec;
  item->text_vec = st->text_vec ? st->text_vec : job->text_vec;
  item->thumb = *thumb;
  item->thumb_len = thumb_len;
  if (st->image && vlm_db_keeps_images(job->srv->db)) {
    item->image = st->image;
    item->image_len = st->image_len;
  } else if (st->image && st->kind == VLM_WRITE_UPDATE) {
    item->image = st->image;
    item->image_len = 0;
  }
  return 0;
}

static void cmd_add_exec(vlm__job *job) {
  add_state *st = job->state;
  uint8_t *thumb = NULL;
  vlm_item item;
  char why[512];
  if (add_item(job, &item, &thumb, why, sizeof why) < 0) {
    vlm__reply_error(&job->reply, "ERR", "%s", why);
    return;
  }
  int written = 0;
  vlm_write_op op = {.kind = st->kind, .item = item};
  /* HTTP answers "created" or "replaced"; this connection's writes are
   * ordered, so only another client's write could slip in between. */
  if (job->http && st->kind == VLM_WRITE_UPSERT)
    st->existed = vlm_db_exists(job->srv->db, item.key) == 1;
  int rc = vlm_db_write(job->srv->db, &op, 1, &written);
  if (rc >= 0 && written && st->kind != VLM_WRITE_UPDATE)
    vlm__metrics_items_added(job->srv, written);
  if (rc < 0)
    reply_liberr(&job->reply, rc);
  else
    vlm__reply_int(&job->reply, written);
  free(thumb);
}

static int cmd_keys_proc(vlm__ctx *ctx) {
  for (int i = 1; i < ctx->argc; i++)
    if (arg_cstr(ctx, &ctx->argv[i], "key") < 0)
      return -1;
  return 0;
}

static void cmd_del_exec(vlm__job *job) {
  int n = job->argc - 1;
  const char **keys = malloc((size_t)n * sizeof *keys);
  if (!keys) {
    vlm__reply_error(&job->reply, "ERR", "out of memory");
    return;
  }
  for (int i = 0; i < n; i++)
    keys[i] = job->argv[i + 1].ptr;
  int deleted = 0;
  int rc = vlm_db_delete(job->srv->db, keys, n, &deleted);
  if (rc < 0)
    reply_liberr(&job->reply, rc);
  else
    vlm__reply_int(&job->reply, deleted);
  free(keys);
}

static void cmd_exists_exec(vlm__job *job) {
  long long n = 0;
  for (int i = 1; i < job->argc; i++) {
    int rc = vlm_db_exists(job->srv->db, job->argv[i].ptr);
    if (rc < 0) {
      reply_liberr(&job->reply, rc);
      return;
    }
    n += rc;
  }
  vlm__reply_int(&job->reply, n);
}

/* SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]: the item keys.
 * The cursor is an item id (items are walked in id order, so a walk
 * survives writes: vlm_db_scan); COUNT is how many items one call looks
 * at (10 by default); MATCH is a glob as Redis's (fnmatch, with no
 * special slashes or dots); every key is of TYPE "item". */
#define SCAN_MAX_COUNT 100000

typedef struct {
  uint64_t cursor;
  int count;
  int type_ok;   /* TYPE absent or "item" */
  int match_arg; /* argv index of the pattern, 0 = none */
  uint8_t *hidden; /* cluster: slots held, not served (live move) */
} scan_state;

static int slot_bit(const uint8_t *bits, const char *key) {
  int slot = vlm_key_slot(key, strlen(key));
  return bits[slot >> 3] >> (slot & 7) & 1;
}

static void scan_state_free(void *p) {
  scan_state *st = p;
  if (st)
    free(st->hidden);
  free(st);
}

static int cmd_scan_proc(vlm__ctx *ctx) {
  scan_state *st = job_state(ctx, sizeof *st, scan_state_free);
  if (!st)
    return -1;
  st->count = 10;
  st->type_ok = 1;
  const vlm__resp_arg *c = &ctx->argv[1];
  char tmp[32], *end;
  if (c->len == 0 || c->len >= sizeof tmp || c->ptr[0] < '0' ||
      c->ptr[0] > '9')
    goto bad_cursor;
  memcpy(tmp, c->ptr, c->len);
  tmp[c->len] = '\0';
  errno = 0;
  st->cursor = strtoull(tmp, &end, 10);
  if (*end || errno)
    goto bad_cursor;
  for (int i = 2; i < ctx->argc; i++) {
    const vlm__resp_arg *a = &ctx->argv[i];
    int has = i + 1 < ctx->argc;
    long v;
    if (arg_is(a, "MATCH") && has) {
      if (arg_cstr(ctx, &ctx->argv[++i], "pattern") < 0)
        return -1;
      st->match_arg = i;
    } else if (arg_is(a, "COUNT") && has) {
      if (arg_long(ctx, &ctx->argv[++i], 1, SCAN_MAX_COUNT, "COUNT", &v) < 0)
        return -1;
      st->count = (int)v;
    } else if (arg_is(a, "TYPE") && has) {
      st->type_ok = arg_is(&ctx->argv[++i], "item");
    } else {
      return syntax_error(ctx, a);
    }
  }
  /* a node walks the keys it serves: not the copies a live move left
   * (or is bringing) in slots it holds but does not serve */
  if (ctx->srv->cluster &&
      vlm__cluster_hidden_slots(ctx->srv, &st->hidden) < 0) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  return 0;
bad_cursor:
  vlm__reply_error(ctx->out, "ERR", "invalid cursor");
  return -1;
}

static void cmd_scan_exec(vlm__job *job) {
  scan_state *st = job->state;
  char **keys = NULL;
  int n = 0;
  uint64_t next = 0;
  int rc = vlm_db_scan(job->srv->db, st->cursor, st->count, &keys, &n, &next);
  if (rc < 0) {
    reply_liberr(&job->reply, rc);
    return;
  }
  const char *pattern = st->match_arg ? job->argv[st->match_arg].ptr : NULL;
  int shown = 0;
  for (int i = 0; i < n; i++)
    if (st->type_ok && (!pattern || fnmatch(pattern, keys[i], 0) == 0) &&
        !(st->hidden && slot_bit(st->hidden, keys[i])))
      keys[shown++] = keys[i];
    else
      free(keys[i]);
  char cur[24];
  snprintf(cur, sizeof cur, "%llu", (unsigned long long)next);
  vlm__reply_array(&job->reply, 2);
  vlm__reply_cstr(&job->reply, cur);
  vlm__reply_array(&job->reply, shown);
  for (int i = 0; i < shown; i++)
    vlm__reply_cstr(&job->reply, keys[i]);
  vlm_db_keys_free(keys, shown);
}

/* TYPE key: "item" for a stored key, "none" otherwise. */
static void cmd_type_exec(vlm__job *job) {
  int rc = vlm_db_exists(job->srv->db, job->argv[1].ptr);
  if (rc < 0)
    reply_liberr(&job->reply, rc);
  else
    vlm__reply_status(&job->reply, rc ? "item" : "none");
}

typedef struct {
  int thumb, vectors, image;
} get_state;

static int cmd_get_proc(vlm__ctx *ctx) {
  if (arg_cstr(ctx, &ctx->argv[1], "key") < 0)
    return -1;
  get_state *st = job_state(ctx, sizeof *st, free);
  if (!st)
    return -1;
  for (int i = 2; i < ctx->argc; i++) {
    if (arg_is(&ctx->argv[i], "WITHTHUMB"))
      st->thumb = 1;
    else if (arg_is(&ctx->argv[i], "WITHVECTORS"))
      st->vectors = 1;
    else if (arg_is(&ctx->argv[i], "WITHIMAGE"))
      st->image = 1;
    else
      return syntax_error(ctx, &ctx->argv[i]);
  }
  return 0;
}

static void cmd_get_exec(vlm__job *job) {
  get_state *st = job->state;
  vlm__buf *out = &job->reply;
  vlm_record *rec = NULL;
  int rc = vlm_db_get(job->srv->db, job->argv[1].ptr, &rec);
  if (rc == VLM_ENOTFOUND) {
    vlm__reply_null(out);
    return;
  }
  if (rc < 0) {
    reply_liberr(out, rc);
    return;
  }
  /* the kept original bytes (--keep-images), read apart from the record */
  uint8_t *img = NULL;
  size_t img_len = 0;
  if (st->image &&
      (rc = vlm_db_get_image(job->srv->db, job->argv[1].ptr, &img,
                             &img_len)) < 0) {
    vlm_record_free(rec);
    if (rc == VLM_ENOTFOUND) /* deleted between the two reads */
      vlm__reply_null(out);
    else
      reply_liberr(out, rc);
    return;
  }
  vlm__reply_map(out, 4 + st->thumb + 2 * st->vectors + st->image);
  vlm__reply_cstr(out, "key");
  vlm__reply_cstr(out, rec->key);
  vlm__reply_cstr(out, "caption");
  vlm__reply_cstr(out, rec->caption);
  vlm__reply_cstr(out, "source");
  vlm__reply_cstr(out, rec->source);
  vlm__reply_cstr(out, "meta");
  vlm__reply_cstr(out, rec->meta_json);
  if (st->thumb) {
    vlm__reply_cstr(out, "thumb");
    if (rec->thumb)
      vlm__reply_bulk(out, rec->thumb, rec->thumb_len);
    else
      vlm__reply_null(out);
  }
  if (st->vectors) {
    vlm__reply_cstr(out, "image_vec");
    if (rec->image_vec)
      vlm__reply_bulk(out, rec->image_vec, (size_t)rec->dim * sizeof(float));
    else
      vlm__reply_null(out);
    vlm__reply_cstr(out, "text_vec");
    if (rec->text_vec)
      vlm__reply_bulk(out, rec->text_vec, (size_t)rec->dim * sizeof(float));
    else
      vlm__reply_null(out);
  }
  if (st->image) {
    vlm__reply_cstr(out, "image");
    if (img)
      vlm__reply_bulk(out, img, img_len);
    else
      vlm__reply_null(out);
  }
  free(img);
  vlm_record_free(rec);
}

/* ======================================================================
 * EMBED, COUNT, SAVE, BACKUP
 * ==================================================================== */

typedef struct {
  int image, as_array;
} embed_state;

static int cmd_embed_proc(vlm__ctx *ctx) {
  vlm__job *job = ctx->job;
  embed_state *st = calloc(1, sizeof *st);
  if (!st) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  job->state = st;
  job->state_free = free;
  st->as_array = ctx->conn->resp3;
  for (int i = 3; i < ctx->argc; i++) {
    if (arg_is(&ctx->argv[i], "BYTES"))
      st->as_array = 0;
    else if (arg_is(&ctx->argv[i], "ARRAY"))
      st->as_array = 1;
    else
      return syntax_error(ctx, &ctx->argv[i]);
  }
  if (need_model(ctx, "EMBED") < 0)
    return -1;
  const vlm__resp_arg *kind = &ctx->argv[1], *data = &ctx->argv[2];
  if (arg_is(kind, "TEXT")) {
    if (arg_cstr(ctx, data, "text") < 0)
      return -1;
    job->embed_text = data->ptr;
  } else if (arg_is(kind, "IMAGE")) {
    st->image = 1;
    job->embed_image = data->ptr;
    job->embed_image_len = data->len;
  } else {
    char tmp[64];
    vlm__reply_error(ctx->out, "ERR", "EMBED: unknown input kind '%s' (TEXT "
                     "or IMAGE)", arg_show(kind, tmp, sizeof tmp));
    return -1;
  }
  return 0;
}

static void cmd_embed_exec(vlm__job *job) {
  embed_state *st = job->state;
  reply_vector(&job->reply, st->image ? job->image_vec : job->text_vec,
               job->srv->dim, st->as_array);
}

static int cmd_ok(vlm__ctx *ctx) {
  vlm__reply_status(ctx->out, "OK");
  return 0;
}

/* Never run: vlm__dispatch unwraps VLM.LOCAL. */
static int cmd_local(vlm__ctx *ctx) {
  vlm__reply_error(ctx->out, "ERR", "VLM.LOCAL needs a command");
  return -1;
}

static int cmd_noargs_proc(vlm__ctx *ctx) {
  (void)ctx;
  return 0;
}

typedef struct {
  long long items;
  count_view view;
} count_state;

static void count_state_free(void *p) {
  count_state *st = p;
  if (st)
    count_view_free(&st->view);
  free(st);
}

/* COUNT, DBSIZE; VLM.LOCAL DBSIZE [OWNERS map] (a coordinator's count). */
static int cmd_count_proc(vlm__ctx *ctx) {
  vlm__job *job = ctx->job;
  const char *owners = NULL;
  if (ctx->argc == 3 && job->local && arg_is(&ctx->argv[1], "OWNERS")) {
    if (arg_cstr(ctx, &ctx->argv[2], "OWNERS") < 0)
      return -1;
    owners = ctx->argv[2].ptr;
  } else if (ctx->argc != 1) {
    vlm__reply_error(ctx->out, "ERR", "wrong number of arguments for '%s' "
                     "command", !strcmp(job->cmd->name, "COUNT") ? "count"
                                                                 : "dbsize");
    return -1;
  }
  count_state *st = job_state(ctx, sizeof *st, count_state_free);
  if (!st)
    return -1;
  return count_view_take(ctx, owners,
                         ctx->srv->cluster && !job->local &&
                             !strcmp(job->cmd->name, "COUNT"),
                         &st->view);
}

static void count_done(vlm__job *job, redisReply **replies,
                       const char **errors) {
  count_state *st = job->state;
  long long others;
  if (sum_replies(job, replies, errors, &others) == 0)
    vlm__reply_int(&job->reply, st->items + others);
}

static int count_after(vlm__job *job) {
  count_state *st = job->state;
  return dbsize_fanout(job, &st->view, count_done);
}

/* COUNT is the cluster's (summed over the shards); DBSIZE is this node's,
 * as in Redis Cluster, where clients sum it over the nodes themselves. */
static void cmd_count_exec(vlm__job *job) {
  count_state *st = job->state;
  vlm_db_info info;
  int rc = vlm_db_stat(job->srv->db, &info);
  if (rc == 0)
    rc = count_served(job, &st->view, info.items, &st->items);
  if (rc < 0) {
    reply_liberr(&job->reply, rc);
    return;
  }
  if (st->view.coord_owners) { /* a coordinated COUNT: the cluster's */
    job->after = count_after;
    return;
  }
  vlm__reply_int(&job->reply, st->items);
}

static void cmd_save_exec(vlm__job *job) {
  int rc = vlm_db_checkpoint(job->srv->db);
  if (rc < 0)
    reply_liberr(&job->reply, rc);
  else
    vlm__reply_status(&job->reply, "OK");
}

/* BACKUP dir: vlm_db_backup on a worker, while the others serve and the
 * writes go on.  Ordered like a write on its connection, so a pipeline's
 * earlier writes are in the copy. */
typedef struct {
  char *dir;
} backup_state;

static void backup_state_free(void *p) {
  backup_state *st = p;
  free(st->dir);
  free(st);
}

static int cmd_backup_proc(vlm__ctx *ctx) {
  const vlm__resp_arg *dir = &ctx->argv[1];
  if (arg_cstr(ctx, dir, "the backup directory") < 0)
    return -1;
  if (dir->len == 0) {
    vlm__reply_error(ctx->out, "ERR", "BACKUP: the directory is empty");
    return -1;
  }
  backup_state *st = job_state(ctx, sizeof *st, backup_state_free);
  if (!st)
    return -1;
  if (!(st->dir = strndup(dir->ptr, dir->len))) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  return 0;
}

static void cmd_backup_exec(vlm__job *job) {
  backup_state *st = job->state;
  vlm_db_backup_info info;
  int rc = vlm_db_backup(job->srv->db, st->dir, &info);
  if (rc < 0) {
    reply_liberr(&job->reply, rc);
    return;
  }
  vlm__reply_map(&job->reply, 4);
  vlm__reply_cstr(&job->reply, "batch");
  vlm__reply_int(&job->reply, (long long)info.seq);
  vlm__reply_cstr(&job->reply, "items");
  vlm__reply_int(&job->reply, info.items);
  vlm__reply_cstr(&job->reply, "bytes");
  vlm__reply_int(&job->reply, (long long)info.bytes);
  vlm__reply_cstr(&job->reply, "seconds");
  vlm__reply_double(&job->reply, info.seconds);
}

/* ======================================================================
 * MULTI / EXEC / DISCARD: a transaction is one durable batch
 *
 * While a connection is in MULTI, every command is looked up and its
 * arguments checked as usual (proc runs), then queued instead of started,
 * and answered +QUEUED.  Only writes can be queued (ADD, UPSERT, UPDATE,
 * SETMETA, DEL): at EXEC they become one vlm_db_write batch, applied in
 * order, all or
 * nothing, acknowledged together - the guarantee Redis's MULTI does not
 * give (it applies what it can).  A command refused while queueing
 * (unknown, wrong arity, bad arguments, or not a write) makes EXEC answer
 * -EXECABORT and run nothing, as Redis does; so does a batch the database
 * refuses at EXEC (a vector that does not normalize, a text over the
 * limit, an image that does not decode): nothing of it is written.
 * ==================================================================== */

/* A job for cmd with its arguments checked (proc run), or NULL after the
 * error reply went to out (bad arguments, out of memory); out NULL: the
 * connection's next reply place, taken only then (a place taken for a
 * job that goes to the workers would be an empty reply slot). */
static vlm__job *job_prepare(vlm__conn *conn, const vlm__command *cmd,
                             int argc, const vlm__resp_arg *argv,
                             vlm__buf *out, int local) {
  vlm__job *job = vlm__job_new(conn, cmd, argc, argv);
  if (!job) {
    vlm__reply_error(out ? out : vlm__conn_reply_buf(conn), "ERR",
                     "out of memory");
    return NULL;
  }
  job->local = local;
  vlm__ctx ctx = {conn->srv, conn, job, argc, job->argv, &job->reply};
  if (cmd->proc(&ctx) < 0) { /* answered in order, no worker needed */
    if (!out)
      out = vlm__conn_reply_buf(conn);
    vlm__buf_append(out, job->reply.data, job->reply.len);
    vlm__job_free(job);
    return NULL;
  }
  return job;
}

int vlm__job_prepare_again(vlm__job *job) {
  job->model_gen = job->srv->model_gen;
  if (job->failed)
    return -1;
  if (job->state_free)
    job->state_free(job->state);
  job->state = NULL;
  job->state_free = NULL;
  job->embed_text = NULL;
  job->embed_image = NULL;
  job->embed_image_len = 0;
  job->reply.len = 0;
  for (int i = 0; i < job->argc; i++)
    job->argv[i].off = 0;
  vlm__ctx ctx = {job->srv, job->conn, job, job->argc, job->argv,
                  &job->reply};
  if (job->cmd->proc(&ctx) < 0) {
    job->failed = 1;
    return -1;
  }
  return 0;
}

#define MULTI_MAX 100000 /* queued commands per transaction */

static int cmd_multi(vlm__ctx *ctx) {
  vlm__conn *conn = ctx->conn;
  if (conn->multi) {
    vlm__reply_error(ctx->out, "ERR", "MULTI calls can not be nested");
    return -1;
  }
  conn->multi = 1;
  conn->multi_dirty = 0;
  vlm__reply_status(ctx->out, "OK");
  return 0;
}

static void multi_reset(vlm__conn *conn) {
  vlm__job_free_list(conn->multi_head);
  conn->multi_head = conn->multi_tail = NULL;
  conn->multi = conn->multi_dirty = conn->multi_n = 0;
}

static int cmd_discard(vlm__ctx *ctx) {
  if (!ctx->conn->multi) {
    vlm__reply_error(ctx->out, "ERR", "DISCARD without MULTI");
    return -1;
  }
  multi_reset(ctx->conn);
  vlm__reply_status(ctx->out, "OK");
  return 0;
}

/* Queue one command of a transaction (dispatch, loop thread). */
static void multi_queue(vlm__conn *conn, const vlm__command *cmd, int argc,
                        const vlm__resp_arg *argv) {
  vlm__buf *out = vlm__conn_reply_buf(conn);
  if (!(cmd->flags & VLM__CMD_WRITE) || !cmd->exec) {
    char name[32];
    lower_name(cmd, name, sizeof name);
    vlm__reply_error(out, "ERR", "'%s' cannot be queued: a vlmdb transaction "
                     "holds writes (ADD, UPSERT, UPDATE, SETMETA, DEL), applied as one batch "
                     "at EXEC", name);
    conn->multi_dirty = 1;
    return;
  }
  if (conn->multi_n >= MULTI_MAX) {
    vlm__reply_error(out, "ERR", "a transaction holds at most %d commands",
                     MULTI_MAX);
    conn->multi_dirty = 1;
    return;
  }
  vlm__job *job = job_prepare(conn, cmd, argc, argv, out, 0);
  if (!job) {
    conn->multi_dirty = 1;
    return;
  }
  job->multi_next = NULL;
  if (conn->multi_tail)
    conn->multi_tail->multi_next = job;
  else
    conn->multi_head = job;
  conn->multi_tail = job;
  conn->multi_n++;
  vlm__reply_status(out, "QUEUED");
}

typedef struct {
  vlm__job *head; /* the queued jobs, in order */
  int n;
} exec_state;

static void exec_state_free(void *p) {
  exec_state *st = p;
  vlm__job_free_list(st->head);
  free(st);
}

static int cmd_exec_proc(vlm__ctx *ctx) {
  vlm__conn *conn = ctx->conn;
  if (!conn->multi) {
    vlm__reply_error(ctx->out, "ERR", "EXEC without MULTI");
    return -1;
  }
  if (conn->multi_dirty) {
    multi_reset(conn);
    vlm__reply_error(ctx->out, "EXECABORT", "Transaction discarded because "
                     "of previous errors.");
    return -1;
  }
  exec_state *st = job_state(ctx, sizeof *st, exec_state_free);
  if (!st)
    return -1;
  st->head = conn->multi_head;
  st->n = conn->multi_n;
  conn->multi_head = conn->multi_tail = NULL;
  conn->multi = conn->multi_n = 0;
  return 0;
}

/* The text of an error reply ("-ERR text\r\n" -> "text"). */
static void reply_text(const vlm__buf *b, char *out, size_t cap) {
  const char *p = b->len > 1 ? b->data + 1 : "";
  size_t n = b->len > 3 ? b->len - 3 : 0;
  if (n > 4 && !memcmp(p, "ERR ", 4))
    p += 4, n -= 4;
  snprintf(out, cap, "%.*s", (int)n, p);
}

static void cmd_exec_exec(vlm__job *job) {
  exec_state *st = job->state;
  vlm_write_op *ops = NULL;
  uint8_t **thumbs = NULL;
  int *changed = NULL, nops = 0, rc;
  char why[600];
  /* the inputs of every queued write, embedded before the batch */
  for (vlm__job *q = st->head; q; q = q->multi_next) {
    if (vlm__job_embed_now(q) < 0) {
      char text[512];
      reply_text(&q->reply, text, sizeof text);
      vlm__reply_error(&job->reply, "EXECABORT", "Transaction discarded, "
                       "nothing written: %s %s: %s", q->cmd->name,
                       q->argv[1].ptr, text);
      return;
    }
    nops += arg_is(&q->argv[0], "DEL") ? q->argc - 1 : 1;
  }
  ops = calloc((size_t)nops + 1, sizeof *ops);
  thumbs = calloc((size_t)st->n + 1, sizeof *thumbs);
  changed = calloc((size_t)nops + 1, sizeof *changed);
  if (!ops || !thumbs || !changed) {
    vlm__reply_error(&job->reply, "EXECABORT", "Transaction discarded, "
                     "nothing written: out of memory");
    goto done;
  }
  int o = 0, j = 0;
  for (vlm__job *q = st->head; q; q = q->multi_next, j++) {
    if (arg_is(&q->argv[0], "DEL")) {
      for (int i = 1; i < q->argc; i++) {
        ops[o].kind = VLM_WRITE_DELETE;
        ops[o++].item.key = q->argv[i].ptr;
      }
      continue;
    }
    add_state *as = q->state;
    if (add_item(q, &ops[o].item, &thumbs[j], why, sizeof why) < 0) {
      vlm__reply_error(&job->reply, "EXECABORT", "Transaction discarded, "
                       "nothing written: %s %s: %s", q->cmd->name,
                       q->argv[1].ptr, why);
      goto done;
    }
    ops[o++].kind = as->kind;
  }
  if ((rc = vlm_db_write(job->srv->db, ops, nops, changed)) < 0) {
    const char *detail = vlm_errmsg();
    vlm__reply_error(&job->reply, "EXECABORT", "Transaction discarded, "
                     "nothing written: %s%s%s", vlm_strerror(rc),
                     detail && *detail ? ": " : "", detail ? detail : "");
    goto done;
  }
  long long added = 0;
  for (int i = 0; i < nops; i++)
    added += changed[i] && (ops[i].kind == VLM_WRITE_ADD ||
                            ops[i].kind == VLM_WRITE_UPSERT);
  vlm__metrics_items_added(job->srv, added);
  vlm__reply_array(&job->reply, st->n);
  o = 0;
  for (vlm__job *q = st->head; q; q = q->multi_next) {
    long long n = 0;
    int k = arg_is(&q->argv[0], "DEL") ? q->argc - 1 : 1;
    for (int i = 0; i < k; i++)
      n += changed[o++];
    vlm__reply_int(&job->reply, n);
  }
done:
  for (int i = 0; thumbs && i < st->n; i++)
    free(thumbs[i]);
  free(thumbs);
  free(ops);
  free(changed);
}

/* ======================================================================
 * EVAL: cross-modal Recall@K over the stored pairs (vlm_db_eval)
 * ==================================================================== */

typedef struct {
  vlm_eval_options opts;
  int ks[VLM_EVAL_MAX_KS];
} eval_state;

/* EVAL: Redis's Lua scripting, which vlmdb does not have. */
static int cmd_lua_eval(vlm__ctx *ctx) {
  vlm__reply_error(ctx->out, "ERR", "vlmdb runs no Lua scripts; the "
                   "Recall@K evaluation is VLM.EVAL");
  return -1;
}

static int cmd_eval_proc(vlm__ctx *ctx) {
  eval_state *st = job_state(ctx, sizeof *st, free);
  if (!st)
    return -1;
  int nks = 0;
  for (int i = 1; i < ctx->argc; i++) {
    const vlm__resp_arg *a = &ctx->argv[i];
    int has = i + 1 < ctx->argc, e;
    long v;
    if (arg_is(a, "K") && has) {
      /* K 10, or a list as the CLI takes it: K 1,5,10 */
      const vlm__resp_arg *list = &ctx->argv[++i];
      size_t at = 0;
      do {
        size_t end = at;
        while (end < list->len && list->ptr[end] != ',')
          end++;
        vlm__resp_arg one = {.ptr = list->ptr + at, .len = end - at};
        if (nks == VLM_EVAL_MAX_KS) {
          vlm__reply_error(ctx->out, "ERR", "at most %d K values",
                           VLM_EVAL_MAX_KS);
          return -1;
        }
        if (arg_long(ctx, &one, 1, VLM_DB_MAX_K, "K", &v) < 0)
          return -1;
        st->ks[nks++] = (int)v;
        at = end + 1;
      } while (at <= list->len);
    } else if (arg_is(a, "DIRECTION") && has) {
      const vlm__resp_arg *d = &ctx->argv[++i];
      if (arg_is(d, "T2I"))
        st->opts.directions = VLM_EVAL_T2I;
      else if (arg_is(d, "I2T"))
        st->opts.directions = VLM_EVAL_I2T;
      else if (arg_is(d, "BOTH"))
        st->opts.directions = VLM_EVAL_T2I | VLM_EVAL_I2T;
      else {
        vlm__reply_error(ctx->out, "ERR", "DIRECTION must be T2I, I2T or "
                         "BOTH");
        return -1;
      }
    } else if (arg_is(a, "SAMPLE") && has) {
      if (arg_long(ctx, &ctx->argv[++i], 1, 1 << 30, "SAMPLE", &v) < 0)
        return -1;
      st->opts.sample = (int)v;
    } else if (arg_is(a, "SEED") && has) {
      if (arg_long(ctx, &ctx->argv[++i], 0, 1L << 62, "SEED", &v) < 0)
        return -1;
      st->opts.seed = (uint64_t)v;
    } else if ((e = arg_effort(ctx, &i, &st->opts.ef_search,
                               &st->opts.nprobe))) {
      if (e < 0)
        return -1;
    } else if (arg_is(a, "EXACTONLY")) {
      st->opts.skip_index = 1;
    } else {
      return syntax_error(ctx, a);
    }
  }
  if (nks > 0) {
    st->opts.ks = st->ks;
    st->opts.nks = nks;
  }
  return 0;
}

static void reply_eval_direction(vlm__buf *out, const vlm_eval_direction *d,
                                 int skip_index) {
  /* queries, candidates, the K entries, median, mean, the timings, the
   * ground-truth probability when the model scored it */
  int with_prob = d->gt_probability >= 0;
  vlm__reply_map(out, 2 + d->nks * (skip_index ? 1 : 3) + 2 +
                          (skip_index ? 1 : 2) + with_prob + 1);
  vlm__reply_cstr(out, "queries");
  vlm__reply_int(out, d->queries);
  vlm__reply_cstr(out, "candidates");
  vlm__reply_int(out, d->candidates);
  char name[48];
  for (int i = 0; i < d->nks; i++) {
    snprintf(name, sizeof name, "recall@%d", d->at[i].k);
    vlm__reply_cstr(out, name);
    vlm__reply_double(out, d->at[i].recall);
    if (skip_index)
      continue;
    snprintf(name, sizeof name, "recall_index@%d", d->at[i].k);
    vlm__reply_cstr(out, name);
    vlm__reply_double(out, d->at[i].recall_index);
    snprintf(name, sizeof name, "index_recall@%d", d->at[i].k);
    vlm__reply_cstr(out, name);
    vlm__reply_double(out, d->at[i].index_recall);
  }
  vlm__reply_cstr(out, "median_rank");
  vlm__reply_double(out, d->median_rank);
  vlm__reply_cstr(out, "mean_rank");
  vlm__reply_double(out, d->mean_rank);
  vlm__reply_cstr(out, "exact_ms_per_query");
  vlm__reply_double(out, d->exact_ms_per_query);
  if (!skip_index) {
    vlm__reply_cstr(out, "index_ms_per_query");
    vlm__reply_double(out, d->index_ms_per_query);
  }
  if (with_prob) {
    vlm__reply_cstr(out, "gt_probability");
    vlm__reply_double(out, d->gt_probability);
  }
  /* the exact ranks of the ground truth, bucketed: le[i] is bucket i's
   * upper bound; counts has one more bucket, the ranks above the last */
  vlm__reply_cstr(out, "rank_histogram");
  vlm__reply_map(out, 2);
  vlm__reply_cstr(out, "le");
  vlm__reply_array(out, VLM_EVAL_RANK_BUCKETS - 1);
  for (int i = 0; i < VLM_EVAL_RANK_BUCKETS - 1; i++)
    vlm__reply_int(out, vlm_eval_rank_bounds[i]);
  vlm__reply_cstr(out, "counts");
  vlm__reply_array(out, VLM_EVAL_RANK_BUCKETS);
  for (int i = 0; i < VLM_EVAL_RANK_BUCKETS; i++)
    vlm__reply_int(out, d->rank_hist[i]);
}

static int model_probabilities(void *clip, const float *cosines, int n,
                               float *probs) {
  return vlm_clip_probabilities(clip, cosines, n, probs);
}

static void cmd_eval_exec(vlm__job *job) {
  eval_state *st = job->state;
  vlm_eval_result res;
  if (job->srv->clip) { /* the model's own score of the ground truth */
    st->opts.probabilities = model_probabilities;
    st->opts.probabilities_arg = job->srv->clip;
  }
  int rc = vlm_db_eval(job->srv->db, &st->opts, &res);
  if (rc < 0) {
    reply_liberr(&job->reply, rc);
    return;
  }
  vlm__buf *out = &job->reply;
  int t2i = !!(res.directions & VLM_EVAL_T2I);
  int i2t = !!(res.directions & VLM_EVAL_I2T);
  vlm__reply_map(out, 2 + t2i + i2t);
  vlm__reply_cstr(out, "pairs");
  vlm__reply_int(out, res.pairs);
  vlm__reply_cstr(out, "skipped_pairs");
  vlm__reply_int(out, res.skipped_pairs);
  if (t2i) {
    vlm__reply_cstr(out, "text_to_image");
    reply_eval_direction(out, &res.t2i, st->opts.skip_index);
  }
  if (i2t) {
    vlm__reply_cstr(out, "image_to_text");
    reply_eval_direction(out, &res.i2t, st->opts.skip_index);
  }
}

/* ======================================================================
 * VLM.EXPLAIN
 * ==================================================================== */

typedef struct {
  const char *key;          /* KEY k, or */
  const void *image;        /* IMAGE bytes (in job->argv) */
  size_t image_len;
  vlm_explain_method method;
  long side;
} explain_state;

static int cmd_explain_proc(vlm__ctx *ctx) {
  vlm__job *job = ctx->job;
  explain_state *st = job_state(ctx, sizeof *st, free);
  if (!st)
    return -1;
  st->method = VLM_EXPLAIN_AUTO;
  st->side = 224;
  if (need_model(ctx, "VLM.EXPLAIN") < 0)
    return -1;
  int have_text = 0;
  for (int i = 1; i < ctx->argc; i++) {
    const vlm__resp_arg *a = &ctx->argv[i];
    int last = i + 1 >= ctx->argc;
    if (arg_is(a, "TEXT") && !last) {
      if (arg_cstr(ctx, &ctx->argv[++i], "text") < 0)
        return -1;
      job->embed_text = ctx->argv[i].ptr;
      have_text = 1;
    } else if (arg_is(a, "KEY") && !last) {
      if (arg_cstr(ctx, &ctx->argv[++i], "key") < 0)
        return -1;
      st->key = ctx->argv[i].ptr;
      st->image = NULL;
    } else if (arg_is(a, "IMAGE") && !last) {
      st->image = ctx->argv[++i].ptr;
      st->image_len = ctx->argv[i].len;
      st->key = NULL;
    } else if (arg_is(a, "METHOD") && !last) {
      char name[32];
      const vlm__resp_arg *m = &ctx->argv[++i];
      if (m->len >= sizeof name ||
          (memcpy(name, m->ptr, m->len), name[m->len] = '\0',
           vlm_explain_method_parse(name, &st->method))) {
        char tmp[64];
        vlm__reply_error(ctx->out, "ERR", "VLM.EXPLAIN: unknown METHOD '%s' "
                         "(AUTO, INTEGRATED, RELEVANCE, TOKEN or GRADCAM)",
                         arg_show(m, tmp, sizeof tmp));
        return -1;
      }
    } else if (arg_is(a, "SIDE") && !last) {
      if (arg_long(ctx, &ctx->argv[++i], 16, 1024, "SIDE", &st->side) < 0)
        return -1;
    } else {
      return syntax_error(ctx, a);
    }
  }
  if (!have_text || (!st->key && !st->image)) {
    vlm__reply_error(ctx->out, "ERR", "VLM.EXPLAIN needs TEXT text and KEY "
                     "key or IMAGE bytes");
    return -1;
  }
  return 0;
}

/* The map of the stored thumbnail (KEY) or the given image: score, grid
 * side, the map as float32 bytes (grid x grid, row-major, top row first,
 * summing to 1) and the heat map PNG.  The arguments come in any order
 * (VLM.EXPLAIN TEXT t KEY k as well); the syntax line starts with the
 * alternatives so that COMMAND DOCS lists them as separate arguments. */
static void cmd_explain_exec(vlm__job *job) {
  explain_state *st = job->state;
  vlm__buf *out = &job->reply;
  vlm_record *rec = NULL;
  const void *data = st->image;
  size_t len = st->image_len;
  if (st->key) {
    int rc = vlm_db_get(job->srv->db, st->key, &rec);
    if (rc == VLM_ENOTFOUND) {
      vlm__reply_null(out);
      return;
    }
    if (rc < 0) {
      reply_liberr(out, rc);
      return;
    }
    if (!rec->thumb) {
      vlm_record_free(rec);
      vlm__reply_error(out, "ERR", "VLM.EXPLAIN: the item has no thumbnail");
      return;
    }
    data = rec->thumb;
    len = rec->thumb_len;
  }
  vlm_explanation ex;
  int rc = vlm_explain_image(job->srv->clip, data, len, job->text_vec,
                             st->method, (int)st->side, 1, &ex);
  vlm_record_free(rec);
  if (rc < 0) {
    reply_liberr(out, rc);
    return;
  }
  vlm__reply_map(out, 4);
  vlm__reply_cstr(out, "score");
  vlm__reply_double(out, ex.score);
  vlm__reply_cstr(out, "grid");
  vlm__reply_int(out, ex.grid);
  vlm__reply_cstr(out, "map");
  vlm__reply_bulk(out, ex.map, sizeof(float) * (size_t)ex.grid * ex.grid);
  vlm__reply_cstr(out, "png");
  vlm__reply_bulk(out, ex.png, ex.png_len);
  vlm_explanation_free(&ex);
}

/* ======================================================================
 * The table
 * ==================================================================== */

#define NOAUTH VLM__CMD_NOAUTH
#define WRITE VLM__CMD_WRITE
#define ADMIN VLM__CMD_ADMIN
#define TX VLM__CMD_TX

static const vlm__command commands[] = {
    {"PING", cmd_ping, NULL, -1, 0, "connection", "[message]",
     "Answer PONG, or the message."},
    {"ECHO", cmd_echo, NULL, 2, 0, "connection", "message",
     "Answer the message."},
    {"AUTH", cmd_auth, NULL, -2, NOAUTH, "connection", "[username] password",
     "Authenticate the connection (--requirepass)."},
    {"HELLO", cmd_hello, NULL, -1, NOAUTH, "connection",
     "[protover] [AUTH username password] [SETNAME clientname]",
     "Choose RESP2 or RESP3, optionally authenticating; answer server facts."},
    {"QUIT", cmd_quit, NULL, -1, NOAUTH | TX, "connection", "",
     "Close the connection after the replies owed."},
    {"SELECT", cmd_select, NULL, 2, 0, "connection", "index",
     "Accepted for client libraries: vlmdb has one database."},
    {"CLIENT", cmd_client, NULL, -2, 0, "connection",
     "SETNAME name | GETNAME | SETINFO attribute value | ID | INFO | LIST",
     "Name and inspect connections (SETINFO: LIB-NAME or LIB-VER)."},
    {"COMMAND", cmd_command, NULL, -1, 0, "server",
     "[COUNT | LIST | INFO | DOCS] [name [name ...]]",
     "Describe the commands."},
    {"CONFIG", cmd_config, NULL, -2, 0, "server", "GET pattern [pattern ...]",
     "Read the server's settings."},
    {"INFO", cmd_info_proc, cmd_info_exec, -1, 0, "server",
     "[section [section ...]]",
     "Server, client, statistics, memory, database and model facts."},
    {"CLUSTER", vlm__cluster_command, NULL, -2, 0, "cluster",
     "SLOTS | SHARDS | NODES | MYID | INFO | KEYSLOT key | RELOAD | HELP",
     "The cluster map as Redis Cluster clients read it."},
    {"READONLY", cmd_ok, NULL, 1, 0, "cluster", "",
     "Accepted (every node serves reads)."},
    {"READWRITE", cmd_ok, NULL, 1, 0, "cluster", "", "Accepted."},
    {"ASKING", cmd_ok, NULL, 1, 0, "cluster", "",
     "Accepted (slots do not migrate while served)."},
    {"REPLICAOF", vlm__repl_replicaof, NULL, 3, ADMIN, "server",
     "host port | NO ONE",
     "Follow a primary as a read replica (its batches are applied as they "
     "commit; writes answer -READONLY), or NO ONE: stop following and "
     "take writes (promotion by hand)."},
    {"SLAVEOF", vlm__repl_replicaof, NULL, 3, ADMIN, "server",
     "host port | NO ONE", "The old name of REPLICAOF."},
    {"VLM.SYNC", vlm__repl_sync_proc, vlm__repl_sync_exec, -3, 0,
     "server", "after port [digest items]",
     "For replicas: the batches after batch `after` (a binary buffer); "
     "-RESEED when the log no longer holds them."},
    {"VLM.SEED", vlm__repl_seed_proc, vlm__repl_seed_exec, -3, 0, "server",
     "BEGIN port | READ token file offset | END token",
     "For replicas: an online backup handed out file by file."},
    {"VLM.MIGRATE", vlm__migrate_command, NULL, -2, ADMIN, "cluster",
     "STATE | SETSLOTS digest ranges | FENCE first last | STATUS | UNFENCE",
     "For `vlmdb cluster move --live`: this node's side of a live move."},
    {"VLM.RANGEKEYS", vlm__rangekeys_proc, vlm__rangekeys_exec, 3, ADMIN,
     "cluster", "first last",
     "For live moves: the keys of slots first..last held here, each with "
     "its item id."},
    {"VLM.DUMP", vlm__dump_proc, vlm__dump_exec, -2, ADMIN, "cluster",
     "key [key ...]",
     "For live moves: each item whole (a binary record), or nil."},
    {"VLM.RESTORE", vlm__restore_proc, vlm__restore_exec, -2, WRITE,
     "cluster", "record [record ...]",
     "For live moves: write VLM.DUMP records bit for bit (upserts; one "
     "already identical is left alone); answers how many were written."},
    {"VLM.LOCAL", cmd_local, NULL, -2, 0, "cluster",
     "command [arg [arg ...]]",
     "Run a command on this shard alone (what a coordinator sends)."},
    {"SEARCH", cmd_search_proc, cmd_search_exec, -3, 0, "search",
     "(TEXT text | IMAGE bytes | KEY key | VECTOR float32-bytes) [K k] "
     "[FILTER expr] [TARGET (ANY | IMAGE | TEXT)] [HYBRID text [WEIGHT w]] "
     "[EF ef] [NPROBE nprobe] [EXACT] [COLLAPSE cosine] "
     "[MINSCORE cosine] [OFFSET offset] [GROUPBY field [PER n]] "
     "[RETURN n field [field ...]]",
     "k nearest items (results offset .. offset+k-1; with MINSCORE only "
     "those scoring at least it, K then defaulting to all up to 10000; "
     "with GROUPBY at most n per value of the field): key, score and the "
     "fields asked for."},
    {"ADD", cmd_add_proc, cmd_add_exec, -4, WRITE, "write",
     "key [TEXT text] [IMAGE bytes] [META json] [SOURCE uri] "
     "[IMAGEVEC float32-bytes] [TEXTVEC float32-bytes]",
     "Add an item (skipped, reply 0, if the key exists)."},
    {"UPSERT", cmd_add_proc, cmd_add_exec, -4, WRITE, "write",
     "key [TEXT text] [IMAGE bytes] [META json] [SOURCE uri] "
     "[IMAGEVEC float32-bytes] [TEXTVEC float32-bytes]",
     "Add or replace an item."},
    {"UPDATE", cmd_add_proc, cmd_add_exec, -3, WRITE, "write",
     "key [TEXT text] [IMAGE bytes] [META json] [SOURCE uri] "
     "[IMAGEVEC float32-bytes] [TEXTVEC float32-bytes]",
     "Change only what is named of an existing item (reply 0 if the key "
     "does not exist); TEXT and IMAGE are embedded again unless their "
     "vector is given."},
    {"SETMETA", cmd_setmeta_proc, cmd_add_exec, 3, WRITE, "write",
     "key json", "Replace an existing item's metadata, keeping the rest "
     "(UPDATE key META json)."},
    {"DEL", cmd_keys_proc, cmd_del_exec, -2, WRITE, "write", "key [key ...]",
     "Delete items; answer how many existed."},
    {"GET", cmd_get_proc, cmd_get_exec, -2, 0, "read",
     "key [WITHTHUMB] [WITHVECTORS] [WITHIMAGE]",
     "An item's caption, source, metadata (and thumbnail, vectors, the "
     "original image bytes kept with it)."},
    {"EXISTS", cmd_keys_proc, cmd_exists_exec, -2, 0, "read", "key [key ...]",
     "How many of the keys exist."},
    {"SCAN", cmd_scan_proc, cmd_scan_exec, -2, 0, "read",
     "cursor [MATCH pattern] [COUNT count] [TYPE item]",
     "Walk the item keys: a cursor to continue from (0 at the end) and "
     "keys."},
    {"TYPE", cmd_keys_proc, cmd_type_exec, 2, 0, "read", "key",
     "\"item\" for a stored key, \"none\" otherwise."},
    {"EMBED", cmd_embed_proc, cmd_embed_exec, -3, 0, "embed",
     "(TEXT text | IMAGE bytes) [BYTES | ARRAY]",
     "The model's normalized vector: float32 bytes (RESP3: doubles)."},
    {"COUNT", cmd_count_proc, cmd_count_exec, -1, 0, "admin", "",
     "Number of items."},
    {"DBSIZE", cmd_count_proc, cmd_count_exec, -1, 0, "admin", "",
     "Number of items (as COUNT)."},
    {"MULTI", cmd_multi, NULL, 1, TX, "transactions", "",
     "Start a transaction: the writes that follow (ADD, UPSERT, DEL) are "
     "queued and applied by EXEC as one batch."},
    {"EXEC", cmd_exec_proc, cmd_exec_exec, 1, WRITE | TX, "transactions", "",
     "Apply the queued writes as one durable batch, all or nothing: one "
     "reply per command, or EXECABORT and nothing written."},
    {"DISCARD", cmd_discard, NULL, 1, TX, "transactions", "",
     "Drop the queued writes and leave the transaction."},
    {"SAVE", cmd_noargs_proc, cmd_save_exec, 1, ADMIN, "admin", "",
     "Checkpoint the vector index now."},
    {"BACKUP", cmd_backup_proc, cmd_backup_exec, 2, ADMIN, "admin",
     "directory",
     "Write a consistent copy of the database to a new directory (on the "
     "server's machine) while serving: batch, items, bytes, seconds."},
    {"VLM.EXPLAIN", cmd_explain_proc, cmd_explain_exec, -5, 0, "embed",
     "(KEY key | IMAGE bytes) TEXT text [METHOD (AUTO | RELEVANCE | TOKEN "
     "| GRADCAM)] [SIDE px]",
     "Where the picture matches the text: score, grid, map (float32 "
     "bytes, grid x grid, summing to 1) and a heat map PNG."},
    {"VLM.EVAL", cmd_eval_proc, cmd_eval_exec, -1, ADMIN, "admin",
     "[K k-list] [DIRECTION (T2I | I2T | BOTH)] [SAMPLE n [SEED s]] [EF ef] "
     "[NPROBE nprobe] [EXACTONLY]",
     "Cross-modal Recall@K over the items that have both vectors."},
    {"VLM.REEMBED", vlm__reembed_command, NULL, -2, ADMIN, "admin",
     "(MODEL dir | STATUS | ABORT) [BATCH n] [THREADS n] [ALLOWMISSING]",
     "Move the database to another model while serving (writes are "
     "refused until the atomic switch); STATUS, ABORT."},
    /* Redis's EVAL runs a Lua script; client libraries and cluster
     * clients treat it so (script, numkeys, keys), so the name is not
     * reused: it answers what to call instead. */
    {"EVAL", cmd_lua_eval, NULL, -1, 0, "scripting",
     "script numkeys [key [key ...]] [arg [arg ...]]",
     "Not supported (no Lua): Recall@K is VLM.EVAL."},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

static const vlm__command *table_at(size_t i) { return &commands[i]; }

int vlm__command_count(void) { return (int)NCOMMANDS; }

const vlm__command *vlm__command_at(int i) { return &commands[i]; }

int vlm__command_index(const vlm__command *cmd) {
  return cmd >= commands && cmd < commands + NCOMMANDS
             ? (int)(cmd - commands)
             : -1;
}
static size_t table_size(void) { return NCOMMANDS; }

static const vlm__command *lookup(const char *name, size_t len) {
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (strlen(commands[i].name) == len &&
        strncasecmp(commands[i].name, name, len) == 0)
      return &commands[i];
  return NULL;
}

/* ======================================================================
 * Dispatch: the one place that checks arity and authentication
 * ==================================================================== */

static void reply_unknown(vlm__buf *out, int argc, const vlm__resp_arg *argv) {
  char name[130], args[160] = "", tmp[130];
  arg_show(&argv[0], name, sizeof name);
  size_t used = 0;
  for (int i = 1; i < argc && used < 128; i++) {
    int n = snprintf(args + used, sizeof args - used, "'%s' ",
                     arg_show(&argv[i], tmp, sizeof tmp));
    if (n < 0 || (size_t)n >= sizeof args - used)
      break;
    used += (size_t)n;
  }
  vlm__reply_error(out, "ERR", "unknown command '%s', with args beginning "
                   "with: %s", name, args);
}

/* Redis Cluster's answer for a slot being migrated: the client retries. */
static void reply_tryagain(vlm__buf *out, int slot) {
  vlm__reply_error(out, "TRYAGAIN", "slot %d is moving to another shard; "
                   "retry in a moment", slot);
}

/* In cluster mode, a keyed command with a key of a slot another shard
 * holds is answered -MOVED (Redis Cluster's redirection).  1 when it
 * was. */
static int cluster_redirect(vlm__conn *conn, const vlm__command *cmd,
                            int argc, const vlm__resp_arg *argv) {
  vlm_server *srv = conn->srv;
  int first, last, step;
  key_positions(cmd->name, &first, &last, &step);
  if (first <= 0)
    return 0;
  if (last < 0)
    last = argc + last;
  for (int i = first; i <= last && i < argc; i += step) {
    int slot = vlm_key_slot(argv[i].ptr, argv[i].len);
    /* a replica sends writes of its own slots to its shard's primary, as
     * a Redis Cluster replica does (its reads it answers) */
    if (!vlm__cluster_owns(srv, slot) ||
        ((cmd->flags & VLM__CMD_WRITE) && vlm__repl_readonly(srv))) {
      vlm__cluster_reply_moved(vlm__conn_reply_buf(conn), srv, slot);
      return 1;
    }
    if ((cmd->flags & VLM__CMD_WRITE) && vlm__cluster_fenced(srv, slot)) {
      reply_tryagain(vlm__conn_reply_buf(conn), slot);
      return 1;
    }
  }
  return 0;
}

/* EXEC of a transaction that writes a key of a fenced slot (fenced since
 * the write was queued): -TRYAGAIN, the transaction discarded.  1 when. */
static int exec_fenced(vlm__conn *conn) {
  for (vlm__job *q = conn->multi_head; q; q = q->multi_next) {
    int first, last, step;
    if (!q->cmd || !(q->cmd->flags & VLM__CMD_WRITE))
      continue;
    key_positions(q->cmd->name, &first, &last, &step);
    if (first <= 0)
      continue;
    if (last < 0)
      last = q->argc + last;
    for (int i = first; i <= last && i < q->argc; i += step) {
      int slot = vlm_key_slot(q->argv[i].ptr, q->argv[i].len);
      if (vlm__cluster_fenced(conn->srv, slot)) {
        reply_tryagain(vlm__conn_reply_buf(conn), slot);
        return 1;
      }
    }
  }
  return 0;
}

/* A replica's data comes from its primary only: client writes are
 * answered -READONLY (as a Redis replica does).  1 when it was. */
static int refuse_on_replica(vlm_server *srv, const vlm__command *cmd,
                             vlm__buf *out) {
  if (!(cmd->flags & VLM__CMD_WRITE) || (cmd->flags & VLM__CMD_TX) ||
      !vlm__repl_readonly(srv))
    return 0;
  vlm__reply_error(out, "READONLY", "You can't write against a read only "
                   "replica.");
  return 1;
}

/* While VLM.REEMBED stages the new model, writes are refused (the
 * staging is made from one state of the database); so is becoming a
 * replica.  EXEC ends its transaction, as a refused write would have
 * made it abort. */
static int refuse_during_reembed(vlm_server *srv, vlm__conn *conn,
                                 const vlm__command *cmd, vlm__buf *out) {
  int replicaof = cmd->proc == vlm__repl_replicaof;
  if (!(cmd->flags & VLM__CMD_WRITE) && !replicaof)
    return 0;
  const char *model = vlm__reembed_refusing(srv, !replicaof);
  if (!model)
    return 0;
  if (cmd->flags & VLM__CMD_TX) {
    if (!conn || !conn->multi)
      return 0; /* EXEC without MULTI: its own error */
    multi_reset(conn);
    vlm__reply_error(out, "EXECABORT", "Transaction discarded, nothing "
                     "written: %s: the database is switching to the model "
                     "in %s; writes are refused until it has (VLM.REEMBED "
                     "STATUS)", vlm_strerror(VLM_EBUSY), model);
    return 1;
  }
  vlm__reply_error(out, "ERR", "%s: the database is %s the model in %s; "
                   "%s until it switches (VLM.REEMBED STATUS)",
                   vlm_strerror(VLM_EBUSY),
                   replicaof ? "being re-embedded with" : "switching to",
                   model,
                   replicaof ? "REPLICAOF is refused" : "writes are refused");
  return 1;
}

void vlm__dispatch(vlm__conn *conn, int argc, const vlm__resp_arg *argv) {
  vlm_server *srv = conn->srv;
  const vlm__command *cmd = lookup(argv[0].ptr, argv[0].len);
  int local = 0;
  if (cmd && cmd->proc == cmd_local && argc >= 2) {
    /* VLM.LOCAL command ...: this shard's own answer, for a coordinator */
    local = 1;
    argc--;
    argv++;
    cmd = lookup(argv[0].ptr, argv[0].len);
    if (cmd && cmd->proc == cmd_local)
      cmd = NULL;
  }
  if (!cmd) {
    reply_unknown(vlm__conn_reply_buf(conn), argc, argv);
    conn->multi_dirty = conn->multi; /* EXEC will abort */
    return;
  }
  snprintf(conn->last_cmd, sizeof conn->last_cmd, "%s", cmd->name);
  if ((cmd->arity > 0 && argc != cmd->arity) ||
      (cmd->arity < 0 && argc < -cmd->arity)) {
    char name[32];
    lower_name(cmd, name, sizeof name);
    vlm__reply_error(vlm__conn_reply_buf(conn), "ERR", "wrong number of "
                     "arguments for '%s' command", name);
    conn->multi_dirty = conn->multi;
    return;
  }
  if (!conn->authed && !(cmd->flags & VLM__CMD_NOAUTH)) {
    vlm__reply_error(vlm__conn_reply_buf(conn), "NOAUTH",
                     "Authentication required.");
    conn->multi_dirty = conn->multi;
    return;
  }
  if (srv->cluster && !local && cluster_redirect(conn, cmd, argc, argv)) {
    conn->multi_dirty = conn->multi;
    return;
  }
  if (srv->cluster && conn->multi && cmd->proc == cmd_exec_proc &&
      exec_fenced(conn)) {
    multi_reset(conn);
    return;
  }
  if (refuse_on_replica(srv, cmd, vlm__conn_reply_buf(conn))) {
    conn->multi_dirty = conn->multi;
    return;
  }
  if (refuse_during_reembed(srv, conn, cmd, vlm__conn_reply_buf(conn))) {
    conn->multi_dirty = conn->multi;
    return;
  }
  if (conn->multi && !(cmd->flags & VLM__CMD_TX)) {
    multi_queue(conn, cmd, argc, argv);
    return;
  }
  vlm__metrics_request(srv, cmd, VLM__PROTO_RESP);
  vlm__ctx ctx = {srv, conn, NULL, argc, argv, NULL};
  if (!cmd->exec) {
    ctx.out = vlm__conn_reply_buf(conn);
    if (cmd->proc(&ctx) < 0)
      vlm__metrics_error(srv, cmd, VLM__PROTO_RESP);
    return;
  }
  vlm__job *job = job_prepare(conn, cmd, argc, argv, NULL, local);
  if (!job) {
    vlm__metrics_error(srv, cmd, VLM__PROTO_RESP);
    return;
  }
  vlm__conn_push_job(conn, job);
  vlm__job_start(job);
}

/* ======================================================================
 * HTTP: the same commands, one job per request
 * ==================================================================== */

/* A job that is its own (error or inline) reply, already complete. */
static void http_push_done(vlm__conn *conn, vlm__job *job) {
  job->done = 1;
  vlm__conn_push_job(conn, job);
}

/* A write of a key of a fenced slot (a live move switching it): 1, the
 * TRYAGAIN error in out. */
static int http_fenced(vlm_server *srv, const vlm__command *cmd, int argc,
                       const vlm__resp_arg *argv, vlm__buf *out) {
  int first, last, step;
  if (!srv->cluster || !(cmd->flags & VLM__CMD_WRITE))
    return 0;
  key_positions(cmd->name, &first, &last, &step);
  if (first <= 0)
    return 0;
  if (last < 0)
    last = argc + last;
  for (int i = first; i <= last && i < argc; i += step) {
    int slot = vlm_key_slot(argv[i].ptr, argv[i].len);
    if (vlm__cluster_fenced(srv, slot)) {
      reply_tryagain(out, slot);
      return 1;
    }
  }
  return 0;
}

static void http_dispatch_cmd(vlm__conn *conn, const vlm__command *cmd,
                              int argc, const vlm__resp_arg *argv,
                              vlm__http_req *req) {
  vlm_server *srv = conn->srv;
  vlm__job *job = vlm__job_new(conn, cmd, argc, argv);
  if (!job) {
    vlm__http_error(vlm__conn_reply_buf(conn), 500, "internal", NULL,
                    req->keep_alive, "out of memory");
    vlm__http_req_free(req);
    return;
  }
  job->http = req;
  if (cmd != &vlm__metrics_command)
    vlm__metrics_request(srv, cmd, VLM__PROTO_HTTP);
  vlm__ctx ctx = {srv, conn, job, argc, job->argv, &job->reply};
  if ((cmd->arity > 0 && argc != cmd->arity) ||
      (cmd->arity < 0 && argc < -cmd->arity)) {
    vlm__reply_error(&job->reply, "ERR", "wrong number of arguments");
    http_push_done(conn, job);
    return;
  }
  if (refuse_on_replica(srv, cmd, &job->reply) ||
      http_fenced(srv, cmd, argc, argv, &job->reply) ||
      refuse_during_reembed(srv, NULL, cmd, &job->reply) ||
      cmd->proc(&ctx) < 0 || !cmd->exec) {
    http_push_done(conn, job);
    return;
  }
  vlm__conn_push_job(conn, job);
  vlm__job_start(job);
}

void vlm__dispatch_http(vlm__conn *conn, int argc, const vlm__resp_arg *argv,
                        vlm__http_req *req) {
  const vlm__command *cmd = lookup(argv[0].ptr, argv[0].len);
  if (!cmd && arg_is(&argv[0], vlm__metrics_command.name))
    cmd = &vlm__metrics_command;
  if (!cmd) { /* api.c names only commands of the table */
    vlm__http_error(vlm__conn_reply_buf(conn), 500, "internal", NULL,
                    req->keep_alive, "no command %.*s", (int)argv[0].len,
                    argv[0].ptr);
    vlm__http_req_free(req);
    return;
  }
  http_dispatch_cmd(conn, cmd, argc, argv, req);
}

int vlm__dispatch_http_batch(vlm__conn *conn, int n, const int *argcs,
                             vlm__resp_arg *const *argvs, vlm__http_req *req,
                             int *bad, char *why, size_t whycap) {
  vlm__job *head = NULL, *tail = NULL;
  const vlm__command *exec = lookup("EXEC", 4);
  *bad = -1;
  for (int i = 0; i < n; i++) {
    const vlm__command *cmd = lookup(argvs[i][0].ptr, argvs[i][0].len);
    vlm__job *q = cmd ? vlm__job_new(conn, cmd, argcs[i], argvs[i]) : NULL;
    if (!q) {
      snprintf(why, whycap, "out of memory");
      goto fail;
    }
    vlm__ctx ctx = {conn->srv, conn, q, argcs[i], q->argv, &q->reply};
    if (http_fenced(conn->srv, cmd, argcs[i], argvs[i], &q->reply)) {
      reply_text(&q->reply, why, whycap);
      vlm__job_free(q);
      *bad = i;
      vlm__job_free_list(head);
      return -2;
    }
    if (refuse_on_replica(conn->srv, cmd, &q->reply) ||
        refuse_during_reembed(conn->srv, NULL, cmd, &q->reply)) {
      reply_text(&q->reply, why, whycap);
      vlm__job_free(q);
      *bad = i;
      goto fail;
    }
    if (argcs[i] < -cmd->arity || cmd->proc(&ctx) < 0) {
      reply_text(&q->reply, why, whycap);
      if (argcs[i] < -cmd->arity)
        snprintf(why, whycap, "no vector: text, image, text_vec or "
                 "image_vec");
      vlm__job_free(q);
      *bad = i;
      goto fail;
    }
    q->multi_next = NULL;
    if (tail)
      tail->multi_next = q;
    else
      head = q;
    tail = q;
  }
  vlm__job *job = vlm__job_new(conn, exec, 0, NULL);
  exec_state *st = job ? calloc(1, sizeof *st) : NULL;
  if (!st) {
    vlm__job_free(job);
    snprintf(why, whycap, "out of memory");
    goto fail;
  }
  st->head = head;
  st->n = n;
  job->state = st;
  job->state_free = exec_state_free;
  job->http = req;
  vlm__metrics_request(conn->srv, exec, VLM__PROTO_HTTP);
  vlm__conn_push_job(conn, job);
  vlm__job_start(job);
  return 0;
fail:
  vlm__job_free_list(head);
  return -1;
}

int vlm__job_upsert_existed(const vlm__job *job) {
  const add_state *st = job->state;
  return job->cmd && job->cmd->exec == cmd_add_exec && st ? st->existed : 0;
}
