/* backup.c - vlm_db_backup: a consistent copy of a database while it is
 * served and written.
 *
 * The three stores are copied each with its own tool, from three moments
 * that the write protocol makes safe to combine:
 *
 *   1. Under write_mu (no batch is being committed, so nothing moves) the
 *      backup notes the index checkpoints the manifest names (batch I) and
 *      opens their files, begins a read transaction on meta.sqlite (batch
 *      S >= I), and pins the payload store's change log after min(I, S)
 *      so that no checkpoint prunes what the copy will need.  Writers wait
 *      for this moment only.
 *   2. Then, with writers running again: LMDB's compacting copy of the
 *      payload store (mdb_env_copy2; its own snapshot, batch L >= S),
 *      SQLite's backup API from the pinned read transaction (batch S), and
 *      the index files from their open descriptors (batch I; a checkpoint
 *      that replaces them meanwhile only unlinks them), with the list
 *      file of an adopted merged IVF index (opened in step 1 too).
 *   3. The copy is opened as a writer, which is the crash recovery every
 *      open runs: LMDB is the truth, meta.sqlite replays batches S+1..L
 *      from the copied log and the indexes catch up from I to L; a
 *      checkpoint then writes the indexes at L.  Every store of the copy
 *      is now at batch L, and it is renamed into place.
 *
 * The copy is built in a .NAME.creating-PID sibling of dst (as vlm_db_create
 * builds a database), so dst is either absent or a whole database.
 *
 * From a read-only handle beside a writer in another process the pin
 * cannot hold that writer's checkpoints back: if one prunes the log the
 * copy would replay, the copy's open rebuilds meta.sqlite and the index
 * from its payload store instead - slower, and the same result.
 */
#include "db_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int errno_code(int e) { return e == ENOSPC ? VLM_ENOSPACE : VLM_EIO; }

/* Copy what fd holds to path (created), fsync'd. */
static int copy_fd(int fd, const char *path) {
  char buf[1 << 16];
  int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0)
    return vlm_seterr(errno_code(errno), "backup: %s: %s", path,
                      strerror(errno));
  off_t off = 0;
  int rc = 0;
  for (;;) {
    ssize_t n = pread(fd, buf, sizeof buf, off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      rc = vlm_seterr(VLM_EIO, "backup: reading an index file: %s",
                      strerror(errno));
      break;
    }
    if (n == 0)
      break;
    for (ssize_t w = 0; w < n;) {
      ssize_t k = VLM__WRITE("file-write", out, buf + w, (size_t)(n - w));
      if (k < 0 && errno == EINTR)
        continue;
      if (k < 0) {
        rc = vlm_seterr(errno_code(errno), "backup: %s: %s", path,
                        strerror(errno));
        goto done;
      }
      w += k;
    }
    off += n;
  }
  if (!rc && fsync(out) != 0)
    rc = vlm_seterr(errno_code(errno), "backup: fsync %s: %s", path,
                    strerror(errno));
done:
  close(out);
  return rc;
}

static int fsync_path(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return vlm_seterr(VLM_EIO, "backup: %s: %s", path, strerror(errno));
  int rc = fsync(fd) == 0 ? 0
                          : vlm_seterr(errno_code(errno), "backup: fsync %s: "
                                       "%s", path, strerror(errno));
  close(fd);
  return rc;
}

static uint64_t tree_bytes(const char *dir) {
  static const char *sub[] = {"", "/payload.lmdb"};
  uint64_t total = 0;
  for (int i = 0; i < 2; i++) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s%s", dir, sub[i]);
    DIR *d = opendir(path);
    struct dirent *e;
    struct stat st;
    if (!d)
      continue;
    while ((e = readdir(d)))
      if (fstatat(dirfd(d), e->d_name, &st, 0) == 0 && S_ISREG(st.st_mode))
        total += (uint64_t)st.st_size;
    closedir(d);
  }
  return total;
}

/* SQLite's backup API from the read transaction pinned on src. */
static int copy_sql(sqlite3 *src, const char *path) {
  sqlite3 *dst = NULL;
  int rc = sqlite3_open_v2(path, &dst,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                               SQLITE_OPEN_NOMUTEX,
                           vlm__sql_vfs());
  if (rc != SQLITE_OK) {
    rc = vlm__sql_err(dst, rc, "backup: meta.sqlite");
    goto done;
  }
  sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
  if (!b) {
    rc = vlm__sql_err(dst, sqlite3_errcode(dst), "backup: meta.sqlite");
    goto done;
  }
  /* One step: the whole file from the source's open read transaction
   * (a step at a time would restart when the writer commits). */
  int s = VLM__FAULT("file-write") ? SQLITE_IOERR : sqlite3_backup_step(b, -1);
  int f = sqlite3_backup_finish(b);
  if (s != SQLITE_DONE)
    rc = vlm__sql_err(dst, s == SQLITE_OK ? SQLITE_ERROR : s,
                      "backup: meta.sqlite");
  else if (f != SQLITE_OK)
    rc = vlm__sql_err(dst, f, "backup: meta.sqlite");
  else
    rc = 0;
done:
  if (sqlite3_close(dst) != SQLITE_OK && !rc)
    rc = vlm_seterr(VLM_EIO, "backup: closing meta.sqlite");
  return rc;
}

static void quiet(void *arg, const char *msg) {
  (void)arg;
  (void)msg; /* the copy's own recovery is expected, not news */
}

/* Open the copy as a writer (recovery brings meta.sqlite and the indexes
 * to the payload store's batch), checkpoint the indexes there, close. */
static int finish_copy(const char *tmp, vlm_db_backup_info *info) {
  vlm_db *c = NULL;
  vlm_db_open_options o = {0};
  o.warn = quiet;
  int rc = vlm_db_open(tmp, &o, &c);
  if (rc)
    return vlm_seterr(rc, "backup: the copy does not open: %s",
                      vlm_errmsg());
  if ((rc = vlm_db_checkpoint(c)) == 0) {
    info->seq = c->pub_seq;
    info->items = c->pub_items;
  }
  vlm_db_close(c);
  return rc;
}

int vlm_db_backup(vlm_db *db, const char *dst, vlm_db_backup_info *info) {
  vlm_db_backup_info local;
  struct timespec t0, t1;
  char tmp[PATH_MAX], path[PATH_MAX];
  int fds[VLM__NMOD] = {-1, -1}, lfds[VLM__NMOD] = {-1, -1};
  vlm__ckpt ck[VLM__NMOD];
  char lists[VLM__NMOD][sizeof ck[0].lists];
  vlm__reader *r = NULL;
  int rc = 0, made = 0, pinned = 0;
  if (!db || !dst)
    return vlm_seterr(VLM_EINVAL, "backup: NULL argument");
  if (!info)
    info = &local;
  memset(info, 0, sizeof *info);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (db->sql_behind)
    return vlm_seterr(VLM_ESTATE, "backup: %s needs crash recovery first: "
                      "run `vlmdb recover --db %s`", db->dir, db->dir);
  if ((rc = vlm__creating_path(dst, tmp, sizeof tmp)))
    return rc;
  struct stat st;
  if (stat(dst, &st) == 0) {
    int e = S_ISDIR(st.st_mode) ? vlm__dir_is_empty(dst) : 0;
    if (e <= 0)
      return vlm_seterr(VLM_EEXISTS, "backup: %s exists and is not an empty "
                        "directory", dst);
  } else if (errno != ENOENT) {
    return vlm_seterr(VLM_EIO, "backup: %s: %s", dst, strerror(errno));
  }

  vlm__write_lock(db);
  if (db->backing_up) {
    vlm__write_unlock(db);
    return vlm_seterr(VLM_EBUSY, "backup: %s: another backup is under way",
                      db->dir);
  }
  db->backing_up = 1;
  /* 1. the starting point: index checkpoints, meta.sqlite's snapshot, the
   * log pinned after the older of the two */
  uint64_t pin = UINT64_MAX, sseq = 0;
  for (int attempt = 0;; attempt++) {
    /* a read-only handle beside a writer in another process: the files
     * the manifest names now (a checkpoint there may replace one between
     * reading the manifest and opening it: read it again) */
    vlm__manifest now;
    if (db->follow && (rc = vlm__manifest_read(db->dir, &now)) == 0) {
      memcpy(ck, now.ckpt, sizeof ck);
    } else if (!rc) {
      pthread_rwlock_rdlock(&db->index_lock);
      memcpy(ck, db->man.ckpt, sizeof ck);
      pthread_rwlock_unlock(&db->index_lock);
    }
    int vanished = 0;
    for (int m = 0; m < VLM__NMOD && !rc; m++) {
      lists[m][0] = '\0';
      if (!ck[m].file[0])
        continue;
      snprintf(path, sizeof path, "%s/%s", db->dir, ck[m].file);
      if ((fds[m] = open(path, O_RDONLY | O_CLOEXEC)) >= 0) {
        /* the list file the index file names, held open at the same
         * moment (a checkpoint meanwhile may remove it) */
        char held[64];
        snprintf(held, sizeof held, "/proc/self/fd/%d", fds[m]);
        if (vlm__vindex_ckpt_lists(db, m, &ck[m], held, lists[m],
                                   sizeof lists[m]) != 0) {
          vlm__warn(db, "%s: backup: the list file of the %s index is not "
                    "recorded in this older manifest (a writer's next "
                    "checkpoint records it): the copy rebuilds that index "
                    "from its payload store", db->dir, m ? "text" : "image");
          lists[m][0] = '\0';
        }
        if (!lists[m][0])
          continue;
        snprintf(path, sizeof path, "%s/%s", db->dir, lists[m]);
        if ((lfds[m] = open(path, O_RDONLY | O_CLOEXEC)) >= 0)
          continue;
        if (errno == ENOENT && !db->follow) {
          /* this handle's open rebuilt that index already */
          vlm__warn(db, "%s: backup: %s is missing: the copy rebuilds the "
                    "%s index from its payload store", db->dir, lists[m],
                    m ? "text" : "image");
          lists[m][0] = '\0';
          continue;
        }
      }
      if (errno == ENOENT && db->follow && attempt < 5)
        vanished = 1;
      else
        rc = vlm_seterr(VLM_EIO, "backup: %s: %s", path, strerror(errno));
    }
    if (rc || !vanished)
      break;
    for (int m = 0; m < VLM__NMOD; m++) {
      if (fds[m] >= 0)
        close(fds[m]);
      if (lfds[m] >= 0)
        close(lfds[m]);
      fds[m] = lfds[m] = -1;
    }
  }
  for (int m = 0; m < VLM__NMOD && !rc; m++)
    if (ck[m].file[0] && ck[m].seq < pin)
      pin = ck[m].seq;
  if (!rc)
    rc = vlm__reader_get(db, 1, &r);
  if (!rc)
    rc = vlm__reader_sql_begin(r, &sseq, "backup: meta.sqlite");
  if (!rc) {
    if (sseq < pin)
      pin = sseq;
    db->log_pin = pin;
    pinned = 1;
  }
  vlm__write_unlock(db);
  if (rc)
    goto done;
  if (vlm__test_hook)
    vlm__test_hook("backup-pinned", db);

  /* 2. the copies, writers running */
  vlm__remove_stale_creating(dst);
  if (mkdir(tmp, 0755) != 0) {
    rc = vlm_seterr(errno_code(errno), "backup: %s: %s", tmp,
                    strerror(errno));
    goto done;
  }
  made = 1;
  snprintf(path, sizeof path, "%s/payload.lmdb", tmp);
  if (mkdir(path, 0755) != 0) {
    rc = vlm_seterr(errno_code(errno), "backup: %s: %s", path,
                    strerror(errno));
    goto done;
  }
  int mrc = VLM__STORE("file-write",
                       mdb_env_copy2(db->lm.env, path, MDB_CP_COMPACT));
  if (mrc) {
    rc = mrc == ENOSPC ? vlm_seterr(VLM_ENOSPACE, "backup: %s: %s", path,
                                    strerror(mrc))
                       : vlm__lmdb_err(mrc, "backup: payload.lmdb");
    goto done;
  }
  snprintf(path, sizeof path, "%s/payload.lmdb/data.mdb", tmp);
  if ((rc = fsync_path(path)))
    goto done;
  snprintf(path, sizeof path, "%s/meta.sqlite", tmp);
  if ((rc = copy_sql(r->sql, path)))
    goto done;
  sqlite3_exec(r->sql, "COMMIT", NULL, NULL, NULL);
  vlm__reader_put(db, r);
  r = NULL;
  for (int m = 0; m < VLM__NMOD; m++) {
    if (fds[m] < 0)
      continue;
    snprintf(path, sizeof path, "%s/%s", tmp, ck[m].file);
    if ((rc = copy_fd(fds[m], path)))
      goto done;
    if (lfds[m] < 0)
      continue;
    /* copied, not linked: the database's list file may share its inode
     * with the `vlmdb index merge` output it was linked from, which a
     * merge run again to the same name rewrites in place */
    snprintf(path, sizeof path, "%s/%s", tmp, lists[m]);
    if ((rc = copy_fd(lfds[m], path)))
      goto done;
  }
  vlm__manifest copy = db->man;
  memcpy(copy.ckpt, ck, sizeof ck);
  for (int m = 0; m < VLM__NMOD; m++)
    strcpy(copy.ckpt[m].lists, lists[m]); /* what was copied */
  copy.live_file[0] = '\0'; /* not copied: the copy's first checkpoint
                               writes its own */
  if ((rc = vlm__manifest_write(tmp, &copy)))
    goto done;
  vlm__write_lock(db);
  db->log_pin = UINT64_MAX;
  pinned = 0;
  vlm__write_unlock(db);

  /* 3. one batch number everywhere, then into place */
  if ((rc = finish_copy(tmp, info)))
    goto done;
  snprintf(path, sizeof path, "%s/LOCK", tmp);
  unlink(path); /* made by the check's open; a fresh one comes with use */
  if ((rc = vlm__fsync_dir(tmp)))
    goto done;
  if (rename(tmp, dst) != 0) {
    int e = errno;
    rc = e == EEXIST || e == ENOTEMPTY
             ? vlm_seterr(VLM_EEXISTS, "backup: %s exists and is not empty",
                          dst)
             : vlm_seterr(errno_code(e), "backup: %s: rename from %s: %s",
                          dst, tmp, strerror(e));
    goto done;
  }
  made = 0;
  vlm__parent_of(dst, path, sizeof path);
  rc = vlm__fsync_dir(path);
  info->bytes = tree_bytes(dst);
done:
  if (r) {
    if (!sqlite3_get_autocommit(r->sql))
      sqlite3_exec(r->sql, "ROLLBACK", NULL, NULL, NULL);
    vlm__reader_put(db, r);
  }
  for (int m = 0; m < VLM__NMOD; m++) {
    if (fds[m] >= 0)
      close(fds[m]);
    if (lfds[m] >= 0)
      close(lfds[m]);
  }
  if (made)
    vlm__remove_created(tmp, 1);
  vlm__write_lock(db);
  if (pinned)
    db->log_pin = UINT64_MAX;
  db->backing_up = 0;
  vlm__write_unlock(db);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  info->seconds =
      (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  return rc;
}
