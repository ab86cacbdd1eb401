/* meta.c - the SQLite layer: declared fields as indexed columns, FTS5 over
 * captions, the last applied batch, and read-only reader connections.
 *
 * meta.sqlite:
 *   items(id INTEGER PRIMARY KEY, key TEXT UNIQUE, <declared fields>)
 *   captions  FTS5(caption), rowid = item id
 *   vlm_state(name, value): "seq" = last LMDB batch applied here, written
 *             in the same transaction as the batch's rows
 * WAL with synchronous=FULL: a COMMIT is durable when it returns.
 */
#include "db_int.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int vlm__sql_err(sqlite3 *db, int rc, const char *what) {
  int code;
  if (db && (rc & 0xff) == (sqlite3_extended_errcode(db) & 0xff))
    rc = sqlite3_extended_errcode(db);
  if (rc == SQLITE_IOERR_DATA || (rc & 0xff) == SQLITE_CORRUPT ||
      (rc & 0xff) == SQLITE_NOTADB)
    return vlm_seterr(VLM_ECORRUPT,
                      "%s: meta.sqlite is damaged (%s); every record is "
                      "also in the payload store: `vlmdb recover --db DIR` "
                      "rebuilds it from there (or restore a backup)",
                      what, rc == SQLITE_IOERR_DATA
                                ? "a page fails its checksum"
                                : db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  switch (rc & 0xff) {
  case SQLITE_FULL:
    code = VLM_ENOSPACE;
    break;
  case SQLITE_CORRUPT:
  case SQLITE_NOTADB:
    code = VLM_ECORRUPT;
    break;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    code = VLM_EBUSY;
    break;
  case SQLITE_NOMEM:
    code = VLM_ENOMEM;
    break;
  case SQLITE_IOERR:
  case SQLITE_CANTOPEN:
    code = VLM_EIO;
    break;
  case SQLITE_AUTH:
    code = VLM_EFILTER;
    break;
  default:
    code = VLM_ESTORE;
  }
  return vlm_seterr(code, "%s: sqlite: %s", what,
                    db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}


/* vlm_key_slot(text): the key's Redis Cluster hash slot; NULL for NULL. */
static void sql_key_slot(sqlite3_context *c, int argc, sqlite3_value **v) {
  (void)argc;
  const unsigned char *key = sqlite3_value_text(v[0]);
  if (!key) {
    sqlite3_result_null(c);
    return;
  }
  sqlite3_result_int(c, vlm_key_slot((const char *)key,
                                     (size_t)sqlite3_value_bytes(v[0])));
}

static const char *sql_type(vlm_field_type t) {
  switch (t) {
  case VLM_FIELD_INT: return "INTEGER";
  case VLM_FIELD_REAL: return "REAL";
  default: return "TEXT";
  }
}

static int exec(sqlite3 *db, const char *sql) {
  char *msg = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK) {
    int err = vlm__sql_err(db, rc, sql);
    sqlite3_free(msg);
    return err;
  }
  return 0;
}

static int set_pragmas(sqlite3 *db) {
  sqlite3_busy_timeout(db, 10000);
  int rc = exec(db, "PRAGMA journal_mode=WAL");
  if (!rc)
    rc = exec(db, "PRAGMA synchronous=FULL");
  return rc;
}

int vlm__sql_check_cksum(sqlite3 *db, const vlm__manifest *m,
                         const char *path) {
  if (m->sql_cksum && !vlm__sql_cksummed(db))
    return vlm_seterr(VLM_ECORRUPT,
                      "%s: meta.sqlite is damaged (its header no longer "
                      "says its pages carry checksums); `vlmdb salvage` "
                      "copies every record into a fresh database",
                      path);
  return 0;
}

int vlm__sql_create(const char *path, const vlm__manifest *m) {
  sqlite3 *db = NULL;
  char *sql = NULL;
  const char *vfs = vlm__sql_vfs();
  if (m->sql_cksum && !vfs)
    return vlm_seterr(VLM_ESTORE, "%s: cannot register SQLite's %s VFS",
                      path, VLM__SQL_VFS);
  int rc = sqlite3_open_v2(path, &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs);
  if (rc != SQLITE_OK) {
    rc = vlm__sql_err(db, rc, path);
    goto done;
  }
  /* before anything is written: room for the page checksums */
  if (m->sql_cksum && (rc = vlm__sql_reserve(db)) != SQLITE_OK) {
    rc = vlm__sql_err(db, rc, "meta.sqlite reserve bytes");
    goto done;
  }
  if ((rc = set_pragmas(db)))
    goto done;
  size_t cap = 512 + (size_t)m->nfields * 200;
  sql = malloc(cap);
  if (!sql) {
    rc = vlm_seterr(VLM_ENOMEM, "schema");
    goto done;
  }
  size_t off = (size_t)snprintf(sql, cap,
                                "BEGIN;\nCREATE TABLE items(id INTEGER "
                                "PRIMARY KEY, key TEXT NOT NULL UNIQUE");
  for (int i = 0; i < m->nfields; i++)
    off += (size_t)snprintf(sql + off, cap - off, ", \"%s\" %s", m->fname[i],
                            sql_type(m->ftype[i]));
  off += (size_t)snprintf(sql + off, cap - off, ");\n");
  for (int i = 0; i < m->nfields; i++)
    off += (size_t)snprintf(sql + off, cap - off,
                            "CREATE INDEX \"items_%s\" ON items(\"%s\");\n",
                            m->fname[i], m->fname[i]);
  snprintf(sql + off, cap - off,
           "CREATE VIRTUAL TABLE captions USING fts5(caption, "
           "tokenize='" VLM__FTS_CJK " remove_diacritics 2');\n"
           "CREATE TABLE vlm_state(name TEXT PRIMARY KEY, value INTEGER);\n"
           "INSERT INTO vlm_state VALUES('seq', 0), ('format_version', %d);\n"
           "COMMIT;",
           VLM__FORMAT_VERSION);
  rc = exec(db, sql);
done:
  free(sql);
  sqlite3_close(db);
  return rc;
}

int vlm__sql_get_seq(sqlite3 *sql, uint64_t *seq) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(
      sql, "SELECT value FROM vlm_state WHERE name='seq'", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return vlm__sql_err(sql, rc, "meta.sqlite");
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *seq = (uint64_t)sqlite3_column_int64(st, 0);
    rc = 0;
  } else {
    rc = rc == SQLITE_DONE
             ? vlm_seterr(VLM_ECORRUPT, "meta.sqlite: no sequence number")
             : vlm__sql_err(sql, rc, "meta.sqlite");
  }
  sqlite3_finalize(st);
  return rc;
}

int vlm__sql_count(sqlite3 *sql, const char *table, int64_t *out) {
  char q[128];
  sqlite3_stmt *st = NULL;
  snprintf(q, sizeof q, "SELECT count(*) FROM %s", table);
  int rc = sqlite3_prepare_v2(sql, q, -1, &st, NULL);
  if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    *out = sqlite3_column_int64(st, 0);
    rc = 0;
  } else {
    rc = vlm__sql_err(sql, rc, table);
  }
  sqlite3_finalize(st);
  return rc;
}

int vlm__sql_open_writer(vlm_db *db) {
  char path[PATH_MAX];
  char *sql = NULL;
  int rc;
  snprintf(path, sizeof path, "%s/meta.sqlite", db->dir);
  /* Used only under write_mu: no SQLite mutexes needed. */
  rc = sqlite3_open_v2(path, &db->wsql,
                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                       vlm__sql_vfs());
  if (rc != SQLITE_OK) {
    rc = vlm__sql_err(db->wsql, rc, path);
    goto done;
  }
  if ((rc = set_pragmas(db->wsql)) ||
      (rc = exec(db->wsql, "PRAGMA cache_size = -65536")))
    goto done;
  const vlm__manifest *m = &db->man;
  size_t cap = 256 + (size_t)m->nfields * 80;
  if (!(sql = malloc(cap))) {
    rc = vlm_seterr(VLM_ENOMEM, "statements");
    goto done;
  }
  size_t off = (size_t)snprintf(sql, cap, "INSERT OR REPLACE INTO items(id, key");
  for (int i = 0; i < m->nfields; i++)
    off += (size_t)snprintf(sql + off, cap - off, ", \"%s\"", m->fname[i]);
  off += (size_t)snprintf(sql + off, cap - off, ") VALUES(?, ?");
  for (int i = 0; i < m->nfields; i++)
    off += (size_t)snprintf(sql + off, cap - off, ", ?");
  snprintf(sql + off, cap - off, ")");
  struct {
    sqlite3_stmt **st;
    const char *sql;
  } stmts[] = {
      {&db->st_ins, sql},
      {&db->st_del, "DELETE FROM items WHERE id = ?"},
      {&db->st_fts_ins, "INSERT INTO captions(rowid, caption) VALUES(?, ?)"},
      {&db->st_fts_del, "DELETE FROM captions WHERE rowid = ?"},
      {&db->st_seq, "UPDATE vlm_state SET value = ? WHERE name = 'seq'"},
  };
  for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
    rc = sqlite3_prepare_v3(db->wsql, stmts[i].sql, -1,
                            SQLITE_PREPARE_PERSISTENT, stmts[i].st, NULL);
    if (rc != SQLITE_OK) {
      rc = vlm__sql_err(db->wsql, rc, path);
      goto done;
    }
  }
  rc = vlm__sql_check_cksum(db->wsql, m, path);
done:
  free(sql);
  return rc;
}

void vlm__sql_close_writer(vlm_db *db) {
  sqlite3_stmt **all[] = {&db->st_ins, &db->st_del, &db->st_fts_ins,
                          &db->st_fts_del, &db->st_seq};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    sqlite3_finalize(*all[i]);
    *all[i] = NULL;
  }
  if (db->wsql)
    sqlite3_close(db->wsql);
  db->wsql = NULL;
}

int vlm__sql_begin(vlm_db *db) { return exec(db->wsql, "BEGIN IMMEDIATE"); }

int vlm__sql_commit(vlm_db *db) { return exec(db->wsql, "COMMIT"); }

void vlm__sql_rollback(vlm_db *db) {
  if (db->wsql && !sqlite3_get_autocommit(db->wsql))
    sqlite3_exec(db->wsql, "ROLLBACK", NULL, NULL, NULL);
}

static int step_done(vlm_db *db, sqlite3_stmt *st, const char *what) {
  int rc = VLM__FAULT("sql-write") ? SQLITE_IOERR : sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (rc != SQLITE_DONE)
    return vlm__sql_err(db->wsql, rc, what);
  return 0;
}

static int bind_field(sqlite3_stmt *st, int col, vlm_field_type t,
                      const json_t *v) {
  if (!v || json_is_null(v))
    return sqlite3_bind_null(st, col);
  switch (t) {
  case VLM_FIELD_INT:
    if (json_is_integer(v))
      return sqlite3_bind_int64(st, col, json_integer_value(v));
    if (json_is_boolean(v))
      return sqlite3_bind_int64(st, col, json_is_true(v));
    return sqlite3_bind_int64(st, col, (sqlite3_int64)json_number_value(v));
  case VLM_FIELD_REAL:
    return sqlite3_bind_double(st, col, json_number_value(v));
  case VLM_FIELD_TEXT:
  default:
    if (json_is_string(v))
      return sqlite3_bind_text(st, col, json_string_value(v),
                               (int)json_string_length(v), SQLITE_STATIC);
    {
      char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
      if (!s)
        return SQLITE_NOMEM;
      return sqlite3_bind_text(st, col, s, -1, free);
    }
  }
}

static int delete_row(vlm_db *db, uint64_t id) {
  sqlite3_bind_int64(db->st_del, 1, (sqlite3_int64)id);
  return step_done(db, db->st_del, "delete item row");
}

static int insert_row(vlm_db *db, const vlm__sql_change *x) {
  sqlite3_stmt *st = db->st_ins;
  sqlite3_bind_int64(st, 1, (sqlite3_int64)x->c.new_id);
  sqlite3_bind_text(st, 2, x->key, (int)x->key_len, SQLITE_STATIC);
  for (int i = 0; i < db->man.nfields; i++) {
    const json_t *v =
        x->meta ? json_object_get(x->meta, db->man.fname[i]) : NULL;
    if (bind_field(st, 3 + i, db->man.ftype[i], v) != SQLITE_OK) {
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      return vlm_seterr(VLM_ENOMEM, "bind field %s", db->man.fname[i]);
    }
  }
  return step_done(db, st, "insert item row");
}

static int delete_caption(vlm_db *db, uint64_t id) {
  sqlite3_bind_int64(db->st_fts_del, 1, (sqlite3_int64)id);
  return step_done(db, db->st_fts_del, "delete caption row");
}

static int insert_caption(vlm_db *db, const vlm__sql_change *x) {
  sqlite3_bind_int64(db->st_fts_ins, 1, (sqlite3_int64)x->c.new_id);
  sqlite3_bind_text(db->st_fts_ins, 2, x->caption, (int)x->caption_len,
                    SQLITE_STATIC);
  return step_done(db, db->st_fts_ins, "insert caption row");
}

/* All item rows first, then all captions.  Order matters for speed: a
 * statement that opens a statement savepoint (INSERT OR REPLACE does)
 * makes SQLite call xSavepoint on every virtual table already written in
 * the transaction, and FTS5 answers by flushing its pending terms into a
 * new segment.  Interleaved, that was one FTS5 segment (and merge work)
 * per item; this way the captions of a batch go out as one segment at
 * COMMIT. */
int vlm__sql_apply(vlm_db *db, const vlm__sql_change *ch, size_t n,
                   int replay) {
  int rc;
  for (size_t i = 0; i < n; i++) {
    const vlm__sql_change *x = &ch[i];
    if (x->c.old_id && (rc = delete_row(db, x->c.old_id)))
      return rc;
    if (replay && x->c.new_id && (rc = delete_row(db, x->c.new_id)))
      return rc;
    if (x->c.new_id && (rc = insert_row(db, x)))
      return rc;
  }
  for (size_t i = 0; i < n; i++) {
    const vlm__sql_change *x = &ch[i];
    if (x->c.old_id && (rc = delete_caption(db, x->c.old_id)))
      return rc;
    if (replay && x->c.new_id && (rc = delete_caption(db, x->c.new_id)))
      return rc;
    if (x->c.new_id && x->caption && x->caption_len &&
        (rc = insert_caption(db, x)))
      return rc;
  }
  return 0;
}

int vlm__sql_set_seq(vlm_db *db, uint64_t seq) {
  sqlite3_bind_int64(db->st_seq, 1, (sqlite3_int64)seq);
  return step_done(db, db->st_seq, "set sequence");
}

/* x's row and caption from item record rec (pointers into the map, valid
 * for the read transaction); its metadata parsed, freed by free_rows. */
static void row_from_rec(vlm__sql_change *x, const vlm__rec *rec) {
  x->key = rec->key;
  x->key_len = rec->key_len;
  if (rec->flags & VLM__HAS_CAPTION) {
    x->caption = rec->caption;
    x->caption_len = rec->caption_len;
  }
  if (rec->meta_len) {
    json_error_t jerr;
    x->meta = json_loadb(rec->meta, rec->meta_len, 0, &jerr);
  }
}

static void drop_metas(vlm__sql_change *rows, size_t n) {
  for (size_t i = 0; rows && i < n; i++)
    json_decref((json_t *)rows[i].meta);
}

static void free_rows(vlm__sql_change *rows, size_t n) {
  drop_metas(rows, n);
  free(rows);
}

/* Stage batches from_seq+1 .. to_seq of txn's log in the open SQLite
 * transaction: each change's replaced id is deleted and its new item, if
 * it is still live in txn, is (re)inserted from its LMDB record.
 * Idempotent.  The replay at open and a replica's batches use it. */
int vlm__sql_stage_log(vlm_db *db, MDB_txn *txn, uint64_t from_seq,
                       uint64_t to_seq) {
  vlm__change *ch = NULL;
  vlm__sql_change *rows = NULL;
  size_t nch = 0, nrows = 0;
  int rc = 0;
  for (uint64_t seq = from_seq + 1; seq <= to_seq; seq++) {
    rc = vlm__log_get(&db->lm, txn, seq, &ch, &nch);
    if (rc == VLM_ENOTFOUND) {
      rc = vlm_seterr(VLM_ECORRUPT,
                      "%s: batch %llu is missing from the log; cannot bring "
                      "meta.sqlite up to date",
                      db->dir, (unsigned long long)seq);
      goto done;
    }
    if (rc)
      goto done;
    if (!(rows = calloc(nch ? nch : 1, sizeof *rows))) {
      rc = vlm_seterr(VLM_ENOMEM, "replay of batch %llu",
                      (unsigned long long)seq);
      goto done;
    }
    nrows = nch;
    for (size_t i = 0; i < nch; i++) {
      vlm__sql_change *x = &rows[i];
      vlm__rec rec;
      x->c = ch[i];
      if (!x->c.new_id)
        continue;
      rc = vlm__rec_get(&db->lm, txn, x->c.new_id, &rec);
      if (rc == VLM_ENOTFOUND) {
        x->c.new_id = 0; /* replaced or deleted by a later batch */
        rc = 0;
        continue;
      }
      if (rc)
        goto done;
      row_from_rec(x, &rec);
    }
    if ((rc = vlm__sql_apply(db, rows, nrows, 1)))
      goto done;
    free_rows(rows, nrows);
    rows = NULL;
    nrows = 0;
    free(ch);
    ch = NULL;
  }
done:
  free_rows(rows, nrows);
  free(ch);
  return rc;
}

/* Bring SQLite from batch from_seq to to_seq using LMDB's log, in one
 * SQLite transaction. */
int vlm__sql_replay(vlm_db *db, uint64_t from_seq, uint64_t to_seq) {
  MDB_txn *txn = NULL;
  int rc = VLM__STORE("lmdb-read", mdb_txn_begin(db->lm.env, NULL, MDB_RDONLY, &txn));
  if (rc)
    return vlm__lmdb_err(rc, "replay");
  if ((rc = vlm__sql_begin(db)))
    goto done;
  if ((rc = vlm__sql_stage_log(db, txn, from_seq, to_seq)) ||
      (rc = vlm__sql_set_seq(db, to_seq)))
    goto done;
  rc = vlm__sql_commit(db);
done:
  if (rc)
    vlm__sql_rollback(db);
  mdb_txn_abort(txn);
  return rc;
}

/* Rebuild meta.sqlite from the payload store's records, LMDB being the
 * truth: the old file (and its WAL) is kept as meta.sqlite.damaged, a
 * fresh one is created with the manifest's schema, every live record
 * gets its row and caption row in one transaction, and its batch number
 * becomes seq.  Leaves the writer connection open on the new file. */
enum { REBUILD_CHUNK = 512 };

int vlm__sql_rebuild(vlm_db *db, uint64_t seq) {
  static const char *side[] = {"", "-wal", "-shm"};
  char path[PATH_MAX], from[PATH_MAX], to[PATH_MAX];
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  vlm__sql_change *rows = NULL;
  size_t n = 0;
  int rc;
  vlm__sql_close_writer(db);
  snprintf(path, sizeof path, "%s/meta.sqlite", db->dir);
  for (int i = 0; i < 3; i++) {
    snprintf(from, sizeof from, "%s%s", path, side[i]);
    snprintf(to, sizeof to, "%s.damaged%s", path, side[i]);
    unlink(to);
    if (rename(from, to) != 0 && errno != ENOENT)
      return vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO,
                        "rebuilding meta.sqlite: %s: %s", from,
                        strerror(errno));
  }
  if ((rc = vlm__sql_create(path, &db->man)) ||
      (rc = vlm__sql_open_writer(db)))
    return rc;
  if ((rc = VLM__STORE("lmdb-read", mdb_txn_begin(db->lm.env, NULL, MDB_RDONLY, &txn))))
    return vlm__lmdb_err(rc, "rebuilding meta.sqlite");
  if (!(rows = calloc(REBUILD_CHUNK, sizeof *rows))) {
    rc = vlm_seterr(VLM_ENOMEM, "rebuilding meta.sqlite");
    goto done;
  }
  if ((rc = vlm__sql_begin(db)))
    goto done;
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(txn, db->lm.items, &cur)))) {
    rc = vlm__lmdb_err(rc, "rebuilding meta.sqlite");
    goto done;
  }
  MDB_val k, v;
  int mrc;
  for (mrc = vlm__mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
       mrc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    vlm__sql_change *x = &rows[n];
    vlm__rec rec;
    uint64_t id;
    if (k.mv_size != 8) {
      rc = vlm_seterr(VLM_ECORRUPT, "rebuilding meta.sqlite: an item id of "
                      "%zu bytes", k.mv_size);
      goto done;
    }
    memcpy(&id, k.mv_data, 8);
    if ((rc = vlm__rec_decode(v.mv_data, v.mv_size, &rec)))
      goto done;
    memset(x, 0, sizeof *x);
    x->c.new_id = id;
    row_from_rec(x, &rec);
    if (++n == REBUILD_CHUNK) {
      rc = vlm__sql_apply(db, rows, n, 0);
      drop_metas(rows, n);
      n = 0;
      if (rc)
        goto done;
    }
  }
  if (mrc != MDB_NOTFOUND) {
    rc = vlm__lmdb_err(mrc, "rebuilding meta.sqlite");
    goto done;
  }
  if ((n && (rc = vlm__sql_apply(db, rows, n, 0))) ||
      (rc = vlm__sql_set_seq(db, seq)) || (rc = vlm__sql_commit(db)))
    goto done;
done:
  free_rows(rows, n);
  if (cur)
    mdb_cursor_close(cur);
  if (rc)
    vlm__sql_rollback(db);
  mdb_txn_abort(txn);
  return rc;
}

/* "file:PATH?QUERY" with PATH percent-encoded (RFC 3986 unreserved
 * characters and '/' kept). */
static char *file_uri(const char *path, const char *query) {
  size_t n = strlen(path);
  char *u = malloc(5 + 3 * n + 1 + strlen(query) + 1), *o = u;
  if (!u)
    return NULL;
  o += sprintf(o, "file:");
  for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
    if (isalnum(*p) || strchr("-._~/", *p))
      *o++ = (char)*p;
    else
      o += sprintf(o, "%%%02X", *p);
  }
  sprintf(o, "?%s", query);
  return u;
}

/* Open r's read-only connection, hardened for running user filters. */
int vlm__reader_sql(vlm_db *db, vlm__reader *r) {
  char path[PATH_MAX];
  if (r->sql)
    return 0;
  snprintf(path, sizeof path, "%s/meta.sqlite", db->dir);
  /* Opened by path, perhaps long after the handle: not another database's
   * file (checked before and after, as a switch is one atomic rename). */
  int rc = vlm__dir_unchanged(db);
  if (rc)
    return rc;
  if (db->rofs) {
    /* A WAL database on a read-only filesystem opens only as immutable
     * (no -shm can be made); nothing can change it there. */
    char *uri = file_uri(path, "immutable=1");
    if (!uri)
      return vlm_seterr(VLM_ENOMEM, "%s", path);
    rc = sqlite3_open_v2(uri, &r->sql,
                         SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX |
                             SQLITE_OPEN_URI,
                         vlm__sql_vfs());
    free(uri);
  } else {
    rc = sqlite3_open_v2(path, &r->sql,
                         SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                         vlm__sql_vfs());
  }
  if (rc != SQLITE_OK) {
    rc = vlm__sql_err(r->sql, rc, path);
    sqlite3_close(r->sql);
    r->sql = NULL;
    return rc;
  }
  if ((rc = vlm__dir_unchanged(db))) {
    sqlite3_close(r->sql);
    r->sql = NULL;
    return rc;
  }
  sqlite3_busy_timeout(r->sql, 10000);
  sqlite3_db_config(r->sql, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, NULL);
  sqlite3_db_config(r->sql, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
  sqlite3_db_config(r->sql, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
  sqlite3_limit(r->sql, SQLITE_LIMIT_ATTACHED, 0);
  sqlite3_limit(r->sql, SQLITE_LIMIT_SQL_LENGTH, VLM__MAX_FILTER + 1024);
  sqlite3_limit(r->sql, SQLITE_LIMIT_EXPR_DEPTH, 200);
  /* A row holds the key, a caption and fields taken from meta_json, each
   * at most VLM_DB_MAX_TEXT (put enforces it): room for all of them. */
  sqlite3_limit(r->sql, SQLITE_LIMIT_LENGTH, 3 * VLM_DB_MAX_TEXT + 65536);
  r->auth.man = &db->man;
  sqlite3_set_authorizer(r->sql, vlm__authorizer, &r->auth);
  /* vlm_key_slot(key): a cluster node hides the items of slots it holds
   * but does not serve (a live move under way) with a filter on it */
  sqlite3_create_function(r->sql, "vlm_key_slot", 1,
                          SQLITE_UTF8 | SQLITE_DETERMINISTIC |
                              SQLITE_INNOCUOUS,
                          NULL, sql_key_slot, NULL, NULL);
  rc = sqlite3_prepare_v3(r->sql,
                          "SELECT value FROM vlm_state WHERE name = 'seq'", -1,
                          SQLITE_PREPARE_PERSISTENT, &r->pin, NULL);
  if (rc != SQLITE_OK)
    rc = vlm__sql_err(r->sql, rc, path);
  else
    rc = vlm__sql_check_cksum(r->sql, &db->man, path);
  if (rc) {
    sqlite3_finalize(r->pin);
    r->pin = NULL;
    sqlite3_close(r->sql);
    r->sql = NULL;
    return rc;
  }
  return 0;
}

/* ---- reader pool --------------------------------------------------------- */

void vlm__reader_free(vlm__reader *r) {
  if (!r)
    return;
  if (r->txn)
    mdb_txn_abort(r->txn);
  sqlite3_finalize(r->filter);
  sqlite3_finalize(r->filter_one);
  sqlite3_finalize(r->pin);
  if (r->sql)
    sqlite3_close(r->sql);
  free(r->filter_text);
  free(r->cache_ids);
  free(r);
}

int vlm__reader_get(vlm_db *db, int need_sql, vlm__reader **out) {
  vlm__reader *r;
  pthread_mutex_lock(&db->pool_mu);
  r = db->pool;
  if (r)
    db->pool = r->next;
  pthread_mutex_unlock(&db->pool_mu);
  if (!r && !(r = calloc(1, sizeof *r)))
    return vlm_seterr(VLM_ENOMEM, "reader");
  r->next = NULL;
  if (need_sql) {
    int rc = vlm__reader_sql(db, r);
    if (rc) {
      vlm__reader_put(db, r);
      return rc;
    }
  }
  *out = r;
  return 0;
}

int vlm__reader_txn(vlm_db *db, vlm__reader *r, const char *what) {
  int mrc = VLM__STORE("lmdb-read",
                       r->txn ? mdb_txn_renew(r->txn)
                              : mdb_txn_begin(db->lm.env, NULL, MDB_RDONLY,
                                              &r->txn));
  if (!mrc)
    return 0;
  if (r->txn)
    mdb_txn_abort(r->txn);
  r->txn = NULL;
  return vlm__lmdb_err(mrc, what);
}

int vlm__reader_sql_begin(vlm__reader *r, uint64_t *seq, const char *what) {
  int s = sqlite3_exec(r->sql, "BEGIN", NULL, NULL, NULL);
  if (s == SQLITE_OK) {
    s = sqlite3_step(r->pin);
    if (s == SQLITE_ROW && seq)
      *seq = (uint64_t)sqlite3_column_int64(r->pin, 0);
    sqlite3_reset(r->pin);
    s = (s == SQLITE_ROW || s == SQLITE_DONE) ? SQLITE_OK : s;
  }
  if (s == SQLITE_OK)
    return 0;
  int rc = vlm__sql_err(r->sql, s, what);
  sqlite3_exec(r->sql, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

void vlm__reader_put(vlm_db *db, vlm__reader *r) {
  pthread_mutex_lock(&db->pool_mu);
  r->next = db->pool;
  db->pool = r;
  pthread_mutex_unlock(&db->pool_mu);
}
