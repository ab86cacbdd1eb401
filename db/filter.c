/* filter.c - user filter expressions, compiled by SQLite, safely.
 *
 * A filter is a SQL boolean expression over `key` and the declared fields.
 * It has to be placed inside a statement to be compiled; it goes into
 *     SELECT id FROM items WHERE (<expr>)
 * and five independent guards make sure it can do nothing but test rows:
 *  1. a lexical check: bounded length, quotes closed, parentheses balanced
 *     and never closing more than they open (so the expression cannot end
 *     the WHERE clause), no `;`, no comments (which could hide the closing
 *     parenthesis), no bound parameters, and none of the keywords that
 *     start a subquery or a statement (SELECT, VALUES, WITH, ATTACH,
 *     PRAGMA, INSERT, ...) outside quotes;
 *  2. sqlite3_prepare_v2 must consume the whole text (tail check) and yield
 *     a read-only statement with one column and no parameters;
 *  3. an authorizer (armed only while a filter is compiled and run) allows
 *     one SELECT, reads of items.key / items.id / the declared fields, and a
 *     whitelist of pure functions; everything else (other tables such as
 *     sqlite_master or the FTS tables, subqueries, PRAGMA, ATTACH, writes,
 *     load_extension, recursive CTEs) is denied with a reason;
 *  4. the connection is opened read-only with SQLITE_LIMIT_ATTACHED 0,
 *     defensive mode, untrusted schema and extension loading off;
 *  5. the statement never leaves this file: it is stepped for ids only.
 */
#include "db_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *allowed_functions[] = {
    "abs",     "coalesce", "ifnull",  "iif",      "instr",     "length",
    "like",    "glob",     "lower",   "upper",    "ltrim",     "rtrim",
    "trim",    "max",      "min",     "nullif",   "round",     "substr",
    "substring", "replace", "typeof", "unicode",  "likely",    "unlikely",
    "likelihood", "date",  "time",    "datetime", "julianday", "strftime",
    "unixepoch", "sign",   "octet_length", "vlm_key_slot",
};

static int deny(vlm__authctx *a, const char *fmt, const char *x,
                const char *y) {
  if (!a->why[0])
    snprintf(a->why, sizeof a->why, fmt, x ? x : "", y ? y : "");
  return SQLITE_DENY;
}

int vlm__authorizer(void *arg, int action, const char *a, const char *b,
                    const char *dbname, const char *trigger) {
  vlm__authctx *ctx = arg;
  (void)trigger;
  if (!ctx->armed)
    return SQLITE_OK;
  switch (action) {
  case SQLITE_SELECT:
    if (++ctx->nselect > 1)
      return deny(ctx, "subqueries are not allowed%s%s", NULL, NULL);
    return SQLITE_OK;
  case SQLITE_READ:
    if (dbname && strcmp(dbname, "main"))
      return deny(ctx, "reads from database \"%s\"%s are not allowed", dbname,
                  NULL);
    if (!a || strcmp(a, "items"))
      return deny(ctx, "table \"%s\"%s may not be read; only key and the "
                  "declared fields", a, NULL);
    if (!b || !*b || !strcasecmp(b, "id") || !strcasecmp(b, "key"))
      return SQLITE_OK; /* "" = the table is touched, no column read */
    for (int i = 0; i < ctx->man->nfields; i++)
      if (!strcasecmp(b, ctx->man->fname[i]))
        return SQLITE_OK;
    return deny(ctx, "column \"%s\"%s is not a declared field", b, NULL);
  case SQLITE_FUNCTION:
    for (size_t i = 0;
         i < sizeof allowed_functions / sizeof allowed_functions[0]; i++)
      if (b && !strcasecmp(b, allowed_functions[i]))
        return SQLITE_OK;
    return deny(ctx, "function %s()%s is not allowed in a filter", b, NULL);
  case SQLITE_PRAGMA:
    return deny(ctx, "PRAGMA %s%s is not allowed in a filter", a, NULL);
  case SQLITE_ATTACH:
  case SQLITE_DETACH:
    return deny(ctx, "ATTACH/DETACH%s%s is not allowed in a filter", NULL,
                NULL);
  case SQLITE_RECURSIVE:
    return deny(ctx, "recursive queries%s%s are not allowed", NULL, NULL);
  default:
    return deny(ctx, "only reading expressions are allowed in a filter "
                "(operation refused)%s%s", NULL, NULL);
  }
}

/* Guard 1: the expression must be a closed, balanced token sequence. */
int vlm__filter_lex(const char *expr) {
  size_t n = strlen(expr);
  int depth = 0, nonblank = 0;
  if (n > VLM__MAX_FILTER)
    return vlm_seterr(VLM_EFILTER, "filter is %zu bytes; the limit is %d", n,
                      VLM__MAX_FILTER);
  for (size_t i = 0; i < n; i++) {
    char c = expr[i];
    if (!isspace((unsigned char)c))
      nonblank = 1;
    if (c == '\'' || c == '"' || c == '`' || c == '[') {
      char close = c == '[' ? ']' : c;
      size_t j = i + 1;
      for (;;) {
        if (j >= n)
          return vlm_seterr(VLM_EFILTER,
                            "filter: unterminated quote starting at byte %zu",
                            i);
        if (expr[j] == close) {
          if (close != ']' && j + 1 < n && expr[j + 1] == close) {
            j += 2; /* doubled quote inside a literal */
            continue;
          }
          break;
        }
        j++;
      }
      i = j;
      continue;
    }
    if (isalpha((unsigned char)c) || c == '_') {
      size_t j = i;
      while (j < n && (isalnum((unsigned char)expr[j]) || expr[j] == '_'))
        j++;
      static const char *banned[] = {"select", "values", "with", "attach",
                                     "detach", "pragma", "insert", "update",
                                     "delete", "drop", "create", "alter",
                                     "vacuum", "reindex", "analyze"};
      for (size_t b = 0; b < sizeof banned / sizeof banned[0]; b++)
        if (j - i == strlen(banned[b]) &&
            !strncasecmp(expr + i, banned[b], j - i))
          return vlm_seterr(VLM_EFILTER,
                            "filter: %s is not allowed (an expression over "
                            "key and the declared fields only; no "
                            "subqueries or statements)",
                            banned[b]);
      i = j - 1;
      continue;
    }
    switch (c) {
    case '(':
      depth++;
      break;
    case ')':
      if (--depth < 0)
        return vlm_seterr(VLM_EFILTER,
                          "filter: unbalanced ')' at byte %zu", i);
      break;
    case ';':
      return vlm_seterr(VLM_EFILTER,
                        "filter: ';' is not allowed (one expression only)");
    case '-':
      if (i + 1 < n && expr[i + 1] == '-')
        return vlm_seterr(VLM_EFILTER, "filter: comments are not allowed");
      break;
    case '/':
      if (i + 1 < n && expr[i + 1] == '*')
        return vlm_seterr(VLM_EFILTER, "filter: comments are not allowed");
      break;
    case '?':
    case ':':
    case '@':
    case '$':
      return vlm_seterr(VLM_EFILTER,
                        "filter: parameters ('%c') are not allowed", c);
    default:
      break;
    }
  }
  if (!nonblank)
    return vlm_seterr(VLM_EFILTER, "filter is empty");
  if (depth != 0)
    return vlm_seterr(VLM_EFILTER, "filter: %d unclosed '('", depth);
  return 0;
}

/* The statement "SELECT id FROM items WHERE (expr)", or with one_id
 * "... WHERE id = ?1 AND (expr)". */
static int compile(vlm__reader *r, const char *expr, int one_id,
                   sqlite3_stmt **out) {
  size_t n = strlen(expr);
  char *sql = malloc(n + 64);
  const char *tail = NULL;
  sqlite3_stmt *st = NULL;
  int rc;
  *out = NULL;
  if (!sql)
    return vlm_seterr(VLM_ENOMEM, "filter");
  snprintf(sql, n + 64,
           one_id ? "SELECT id FROM items WHERE id = ?1 AND (%s)"
                  : "SELECT id FROM items WHERE (%s)",
           expr);
  r->auth.armed = 1;
  r->auth.nselect = 0;
  r->auth.why[0] = '\0';
  rc = sqlite3_prepare_v2(r->sql, sql, -1, &st, &tail);
  r->auth.armed = 0;
  if (rc != SQLITE_OK) {
    if (r->auth.why[0])
      rc = vlm_seterr(VLM_EFILTER, "filter refused: %s", r->auth.why);
    else
      rc = vlm_seterr(VLM_EFILTER, "filter: %s", sqlite3_errmsg(r->sql));
    goto fail;
  }
  while (tail && isspace((unsigned char)*tail))
    tail++;
  if (!st || (tail && *tail)) {
    rc = vlm_seterr(VLM_EFILTER, "filter: text after the expression");
    goto fail;
  }
  if (!sqlite3_stmt_readonly(st) || sqlite3_column_count(st) != 1 ||
      sqlite3_bind_parameter_count(st) != one_id) {
    rc = vlm_seterr(VLM_EFILTER, "filter: not a plain expression");
    goto fail;
  }
  free(sql);
  *out = st;
  return 0;
fail:
  sqlite3_finalize(st);
  free(sql);
  return rc;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int vlm__filter_ids(vlm_db *db, vlm__reader *r, const char *expr,
                    uint64_t seq, size_t limit, uint64_t **ids_out,
                    size_t *n_out, int *complete) {
  int rc;
  uint64_t *ids = NULL;
  size_t n = 0, cap = 0;
  *ids_out = NULL;
  *n_out = 0;
  *complete = 1;
  (void)db;
  if ((rc = vlm__filter_lex(expr)))
    return rc;
  if (r->filter && r->filter_text && !strcmp(r->filter_text, expr) &&
      r->broad_limit && r->broad_seq == seq && limit <= r->broad_limit &&
      VLM__FAULT("filter-broad-unlisted")) {
    *complete = 0; /* (tests and benchmarks: as before broad lists) */
    return 0;
  }
  if (r->filter && r->filter_text && !strcmp(r->filter_text, expr) &&
      r->broad_limit && r->broad_seq == seq && limit <= r->broad_limit) {
    /* The second search with this broad filter at this batch: list its
     * matches once and keep them (below), so that this search and the
     * next ones test candidates against a bitmap of them instead of
     * asking SQLite about each (one filter, many query vectors). */
    r->broad_limit = 0;
    limit = SIZE_MAX;
  }
  /* One compiled filter is kept per reader connection: the common case is
   * the same filter with many query vectors. */
  if (r->filter && r->filter_text && !strcmp(r->filter_text, expr) &&
      r->cache_valid && r->cache_seq == seq) {
    /* Same filter, no batch committed since: the matches are the same. */
    ids = malloc((r->cache_n ? r->cache_n : 1) * sizeof *ids);
    if (!ids)
      return vlm_seterr(VLM_ENOMEM, "filter results");
    if (r->cache_n)
      memcpy(ids, r->cache_ids, r->cache_n * sizeof *ids);
    *ids_out = ids;
    *n_out = r->cache_n;
    return 0;
  }
  if (!r->filter || !r->filter_text || strcmp(r->filter_text, expr)) {
    r->cache_valid = 0;
    r->broad_limit = 0;
    sqlite3_finalize(r->filter);
    sqlite3_finalize(r->filter_one);
    r->filter = r->filter_one = NULL;
    free(r->filter_text);
    r->filter_text = NULL;
    if ((rc = compile(r, expr, 0, &r->filter)))
      return rc;
    if (!(r->filter_text = strdup(expr)))
      return vlm_seterr(VLM_ENOMEM, "filter");
  }
  /* Armed while stepping too: a re-prepare after a schema change would
   * consult the authorizer again. */
  r->auth.armed = 1;
  r->auth.nselect = 0;
  r->auth.why[0] = '\0';
  int sorted = 1;
  while ((rc = sqlite3_step(r->filter)) == SQLITE_ROW) {
    if (n == limit) { /* more than limit: say so, keep no ids */
      r->broad_seq = seq;
      r->broad_limit = limit;
      *complete = 0;
      n = 0;
      rc = 0;
      goto done;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 1024;
      uint64_t *p = realloc(ids, cap * sizeof *ids);
      if (!p) {
        rc = vlm_seterr(VLM_ENOMEM, "filter results");
        goto done;
      }
      ids = p;
    }
    ids[n] = (uint64_t)sqlite3_column_int64(r->filter, 0);
    if (n && ids[n] < ids[n - 1])
      sorted = 0;
    n++;
  }
  if (rc != SQLITE_DONE) {
    rc = r->auth.why[0]
             ? vlm_seterr(VLM_EFILTER, "filter refused: %s", r->auth.why)
             : vlm_seterr(VLM_EFILTER, "filter: %s", sqlite3_errmsg(r->sql));
    goto done;
  }
  rc = 0;
  if (!sorted) {
    /* Rows come in index order; a bitmap pass sorts them in O(n + ids). */
    uint64_t maxid = 0;
    for (size_t i = 0; i < n; i++)
      if (ids[i] > maxid)
        maxid = ids[i];
    uint64_t *bits = calloc((size_t)(maxid >> 6) + 1, sizeof *bits);
    if (!bits) {
      qsort(ids, n, sizeof *ids, cmp_u64);
    } else {
      for (size_t i = 0; i < n; i++)
        bits[ids[i] >> 6] |= 1ull << (ids[i] & 63);
      size_t w = 0;
      for (uint64_t word = 0; word <= (maxid >> 6); word++)
        for (uint64_t b = bits[word]; b; b &= b - 1)
          ids[w++] = (word << 6) | (uint64_t)__builtin_ctzll(b);
      n = w; /* duplicates, if any, collapse */
      free(bits);
    }
  }
  /* Keep a copy for the next search with this filter. */
  free(r->cache_ids);
  r->cache_ids = malloc((n ? n : 1) * sizeof *ids);
  r->cache_valid = r->cache_ids != NULL;
  if (r->cache_valid) {
    if (n)
      memcpy(r->cache_ids, ids, n * sizeof *ids);
    r->cache_n = n;
    r->cache_seq = seq;
  }
  *ids_out = ids;
  *n_out = n;
  ids = NULL;
done:
  r->auth.armed = 0;
  sqlite3_reset(r->filter);
  free(ids);
  return rc;
}

int vlm__filter_match(vlm__reader *r, const char *expr, uint64_t id,
                      int *match) {
  int rc;
  *match = 0;
  if (!r->filter_text || strcmp(r->filter_text, expr))
    return vlm_seterr(VLM_ESTATE, "filter: not the reader's filter");
  if (!r->filter_one && (rc = compile(r, expr, 1, &r->filter_one)))
    return rc;
  r->auth.armed = 1;
  r->auth.nselect = 0;
  r->auth.why[0] = '\0';
  sqlite3_bind_int64(r->filter_one, 1, (sqlite3_int64)id);
  rc = sqlite3_step(r->filter_one);
  if (rc == SQLITE_ROW) {
    *match = (uint64_t)sqlite3_column_int64(r->filter_one, 0) == id;
    rc = 0;
  } else if (rc == SQLITE_DONE) {
    rc = 0;
  } else {
    rc = r->auth.why[0]
             ? vlm_seterr(VLM_EFILTER, "filter refused: %s", r->auth.why)
             : vlm_seterr(VLM_EFILTER, "filter: %s", sqlite3_errmsg(r->sql));
  }
  r->auth.armed = 0;
  sqlite3_reset(r->filter_one);
  return rc;
}
