/* sqlvfs.c - page checksums for meta.sqlite.
 *
 * SQLite keeps no checksum of its pages, so a flipped bit in meta.sqlite
 * can turn into a silently wrong filter answer.  vlmdb opens meta.sqlite
 * through "vlmdb-cksum", a VFS shim over the default one: every page of the
 * database file ends in 8 reserved bytes (the header's reserve-bytes value,
 * set when the file is created) that hold XXH3-64 of the rest of the page,
 * little-endian.  The shim fills them in when a page is written to the
 * database file and checks them when one is read from it; a mismatch is
 * SQLITE_IOERR_DATA, which vlm__sql_err reports as a damaged file.
 *
 * Only the database file is touched, never the WAL: SQLite checksums each
 * WAL frame over the page as it hands it over, so the reserved bytes of a
 * page in the WAL must stay as they were.  In WAL mode the database file
 * is written by checkpoints only, which copy pages from the WAL: the shim
 * recomputes each page's checksum on the way in.  Pages still in the WAL
 * are covered by SQLite's own frame checksums when the WAL is recovered,
 * and are checked by the shim once checkpointed.
 *
 * A file whose header does not say 8 reserved bytes (made before vlmdb
 * kept checksums) passes through unchanged; the manifest records which
 * databases have them, so a damaged header cannot switch them off.
 */
#include "db_int.h"

#include <pthread.h>
#include <string.h>
#include <xxhash.h>

#define RESERVE 8

typedef struct {
  sqlite3_file base;
  int main_db; /* the database file (not a WAL, journal or temp file) */
  int on;      /* its header says RESERVE reserved bytes: pages checked */
} cfile;

#define REAL(f) ((sqlite3_file *)((cfile *)(f) + 1))

static sqlite3_vfs vfs;
static sqlite3_io_methods io;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int reg_rc = SQLITE_ERROR;

static int is_page(int n) {
  return n >= 512 && n <= 65536 && (n & (n - 1)) == 0;
}

static uint64_t sum(const void *page, int n) {
  return XXH3_64bits(page, (size_t)n - RESERVE);
}

static void put_le64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

/* The database header: "SQLite format 3\0", byte 20 = reserved bytes. */
static void saw_header(cfile *f, const unsigned char *buf, int n,
                       sqlite3_int64 off) {
  if (f->main_db && off == 0 && n >= 100 &&
      !memcmp(buf, "SQLite format 3", 16))
    f->on = buf[20] == RESERVE;
}

static int c_read(sqlite3_file *file, void *buf, int n, sqlite3_int64 off) {
  cfile *f = (cfile *)file;
  int rc = REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
  if (rc != SQLITE_OK)
    return rc;
  saw_header(f, buf, n, off);
  if (f->on && is_page(n) && off % n == 0) {
    const unsigned char *p = buf;
    if (get_le64(p + n - RESERVE) != sum(p, n)) {
      sqlite3_log(SQLITE_IOERR_DATA,
                  "meta.sqlite: page %lld fails its checksum",
                  (long long)(off / n + 1));
      return SQLITE_IOERR_DATA;
    }
  }
  return SQLITE_OK;
}

static int c_write(sqlite3_file *file, const void *buf, int n,
                   sqlite3_int64 off) {
  cfile *f = (cfile *)file;
  saw_header(f, buf, n, off);
  if (f->on && is_page(n) && off % n == 0) {
    /* The reserved bytes are ours: the pager leaves them alone, and a
     * database-file write is covered by no WAL frame checksum. */
    unsigned char *p = (unsigned char *)buf;
    put_le64(p + n - RESERVE, sum(p, n));
  }
  return REAL(f)->pMethods->xWrite(REAL(f), buf, n, off);
}

static int c_close(sqlite3_file *file) {
  return REAL(file)->pMethods->xClose(REAL(file));
}
static int c_truncate(sqlite3_file *file, sqlite3_int64 size) {
  return REAL(file)->pMethods->xTruncate(REAL(file), size);
}
static int c_sync(sqlite3_file *file, int flags) {
  return REAL(file)->pMethods->xSync(REAL(file), flags);
}
static int c_size(sqlite3_file *file, sqlite3_int64 *size) {
  return REAL(file)->pMethods->xFileSize(REAL(file), size);
}
static int c_lock(sqlite3_file *file, int l) {
  return REAL(file)->pMethods->xLock(REAL(file), l);
}
static int c_unlock(sqlite3_file *file, int l) {
  return REAL(file)->pMethods->xUnlock(REAL(file), l);
}
static int c_reserved(sqlite3_file *file, int *out) {
  return REAL(file)->pMethods->xCheckReservedLock(REAL(file), out);
}
static int c_control(sqlite3_file *file, int op, void *arg) {
  cfile *f = (cfile *)file;
  if (op == VLM__FCNTL_CKSUM) {
    *(int *)arg = f->on;
    return SQLITE_OK;
  }
  if (op == SQLITE_FCNTL_PRAGMA && f->on) {
    char **a = arg;
    /* A new page size would move the checksums: not on this file. */
    if (a[1] && !sqlite3_stricmp(a[1], "page_size") && a[2])
      return SQLITE_OK;
  }
  return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int c_sector(sqlite3_file *file) {
  return REAL(file)->pMethods->xSectorSize(REAL(file));
}
static int c_devchar(sqlite3_file *file) {
  return REAL(file)->pMethods->xDeviceCharacteristics(REAL(file));
}
static int c_shm_map(sqlite3_file *file, int pg, int sz, int ext,
                     void volatile **pp) {
  return REAL(file)->pMethods->xShmMap(REAL(file), pg, sz, ext, pp);
}
static int c_shm_lock(sqlite3_file *file, int off, int n, int flags) {
  return REAL(file)->pMethods->xShmLock(REAL(file), off, n, flags);
}
static void c_shm_barrier(sqlite3_file *file) {
  REAL(file)->pMethods->xShmBarrier(REAL(file));
}
static int c_shm_unmap(sqlite3_file *file, int del) {
  return REAL(file)->pMethods->xShmUnmap(REAL(file), del);
}
/* Memory-mapped reads would bypass the check: refuse them. */
static int c_fetch(sqlite3_file *file, sqlite3_int64 off, int n, void **pp) {
  (void)file, (void)off, (void)n;
  *pp = NULL;
  return SQLITE_OK;
}
static int c_unfetch(sqlite3_file *file, sqlite3_int64 off, void *p) {
  (void)file, (void)off, (void)p;
  return SQLITE_OK;
}

static int c_open(sqlite3_vfs *v, sqlite3_filename name, sqlite3_file *file,
                  int flags, int *out_flags) {
  sqlite3_vfs *real = v->pAppData;
  cfile *f = (cfile *)file;
  memset(f, 0, sizeof *f);
  int rc = real->xOpen(real, name, REAL(f), flags, out_flags);
  if (rc != SQLITE_OK) {
    file->pMethods = NULL;
    return rc;
  }
  f->main_db = (flags & SQLITE_OPEN_MAIN_DB) != 0;
  file->pMethods = &io;
  return SQLITE_OK;
}

static int c_delete(sqlite3_vfs *v, const char *p, int sync_dir) {
  sqlite3_vfs *r = v->pAppData;
  return r->xDelete(r, p, sync_dir);
}
static int c_access(sqlite3_vfs *v, const char *p, int flags, int *out) {
  sqlite3_vfs *r = v->pAppData;
  return r->xAccess(r, p, flags, out);
}
static int c_fullpath(sqlite3_vfs *v, const char *p, int n, char *out) {
  sqlite3_vfs *r = v->pAppData;
  return r->xFullPathname(r, p, n, out);
}
static void *c_dlopen(sqlite3_vfs *v, const char *p) {
  sqlite3_vfs *r = v->pAppData;
  return r->xDlOpen(r, p);
}
static void c_dlerror(sqlite3_vfs *v, int n, char *out) {
  sqlite3_vfs *r = v->pAppData;
  r->xDlError(r, n, out);
}
static void (*c_dlsym(sqlite3_vfs *v, void *h, const char *s))(void) {
  sqlite3_vfs *r = v->pAppData;
  return r->xDlSym(r, h, s);
}
static void c_dlclose(sqlite3_vfs *v, void *h) {
  sqlite3_vfs *r = v->pAppData;
  r->xDlClose(r, h);
}
static int c_random(sqlite3_vfs *v, int n, char *out) {
  sqlite3_vfs *r = v->pAppData;
  return r->xRandomness(r, n, out);
}
static int c_sleep(sqlite3_vfs *v, int us) {
  sqlite3_vfs *r = v->pAppData;
  return r->xSleep(r, us);
}
static int c_time(sqlite3_vfs *v, double *t) {
  sqlite3_vfs *r = v->pAppData;
  return r->xCurrentTime(r, t);
}
static int c_lasterr(sqlite3_vfs *v, int n, char *out) {
  sqlite3_vfs *r = v->pAppData;
  return r->xGetLastError(r, n, out);
}
static int c_time64(sqlite3_vfs *v, sqlite3_int64 *t) {
  sqlite3_vfs *r = v->pAppData;
  return r->xCurrentTimeInt64(r, t);
}

static void reg(void) {
  sqlite3_vfs *real = sqlite3_vfs_find(NULL);
  if (!real || real->iVersion < 2)
    return;
  io = (sqlite3_io_methods){
      .iVersion = 3, .xClose = c_close, .xRead = c_read, .xWrite = c_write,
      .xTruncate = c_truncate, .xSync = c_sync, .xFileSize = c_size,
      .xLock = c_lock, .xUnlock = c_unlock, .xCheckReservedLock = c_reserved,
      .xFileControl = c_control, .xSectorSize = c_sector,
      .xDeviceCharacteristics = c_devchar, .xShmMap = c_shm_map,
      .xShmLock = c_shm_lock, .xShmBarrier = c_shm_barrier,
      .xShmUnmap = c_shm_unmap, .xFetch = c_fetch, .xUnfetch = c_unfetch};
  vfs = (sqlite3_vfs){
      .iVersion = 2, .szOsFile = (int)sizeof(cfile) + real->szOsFile,
      .mxPathname = real->mxPathname, .zName = VLM__SQL_VFS,
      .pAppData = real, .xOpen = c_open, .xDelete = c_delete,
      .xAccess = c_access, .xFullPathname = c_fullpath, .xDlOpen = c_dlopen,
      .xDlError = c_dlerror, .xDlSym = c_dlsym, .xDlClose = c_dlclose,
      .xRandomness = c_random, .xSleep = c_sleep, .xCurrentTime = c_time,
      .xGetLastError = c_lasterr, .xCurrentTimeInt64 = c_time64};
  reg_rc = sqlite3_vfs_register(&vfs, 0);
}

const char *vlm__sql_vfs(void) {
  pthread_once(&once, reg);
  vlm__fts_cjk_auto(); /* every connection reads vlm_cjk tables */
  return reg_rc == SQLITE_OK ? VLM__SQL_VFS : NULL;
}

int vlm__sql_reserve(sqlite3 *db) {
  int n = RESERVE;
  return sqlite3_file_control(db, "main", SQLITE_FCNTL_RESERVE_BYTES, &n);
}

int vlm__sql_cksummed(sqlite3 *db) {
  int on = 0;
  return sqlite3_file_control(db, "main", VLM__FCNTL_CKSUM, &on) ==
             SQLITE_OK &&
         on;
}
