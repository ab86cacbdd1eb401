/* db.c - the database handle: create, open (with recovery), close, the
 * write protocol (put, delete), get, stat, verify.
 *
 * The write protocol (README "Data safety") in one paragraph: a batch is
 * staged in one LMDB write transaction (records, vectors, keys, the
 * batch's change list under its sequence number, and state.seq) and in
 * one SQLite transaction (rows, captions, vlm_state.seq = the same
 * number).  Then, under pub_lock, LMDB commits first - that is the commit
 * point - and SQLite commits second; the batch is published to readers
 * and the FAISS side catches up from LMDB afterwards.  On open, SQLite is
 * replayed from LMDB's log when its seq is behind, and every index loads
 * its checkpoint and catches up the same way.
 */
#include "db_int.h"
#include "vlm_utf8.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <dirent.h>
#include <unistd.h>

#define DEFAULT_MAX_PAYLOAD (16u << 20)

/* Set by tests only (db_int.h). */
void (*vlm__test_hook)(const char *where, vlm_db *db);
int (*vlm__test_fault)(const char *where);

void vlm__warn(vlm_db *db, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (db->warn)
    db->warn(db->warn_arg, msg);
  else
    fprintf(stderr, "vlmdb: warning: %s\n", msg);
}

/* ---- helpers ------------------------------------------------------------- */

static int check_key(const char *key) {
  if (!key || !*key)
    return vlm_seterr(VLM_EINVAL, "item key is empty");
  size_t n = strlen(key);
  if (n > VLM__MAX_KEY)
    return vlm_seterr(VLM_EINVAL, "key \"%.40s...\": %zu bytes, limit %d",
                      key, n, VLM__MAX_KEY);
  if (!vlm_utf8_valid(key, n))
    return vlm_seterr(VLM_EINVAL, "key is not valid UTF-8");
  return 0;
}

/* A shard refuses keys of slots it does not hold, so a key can never be
 * stored in two shards of a cluster; the message names the slot (the
 * server turns it into a redirection). */
static int check_slot(vlm_db *db, const char *key) {
  if (!db->man.nslot_ranges)
    return 0;
  int slot = vlm_key_slot(key, strlen(key));
  if (vlm__slot_mine(&db->man, slot))
    return 0;
  char held[128];
  vlm_slot_ranges_format(db->man.slot_ranges, db->man.nslot_ranges, held,
                         sizeof held);
  return vlm_seterr(VLM_EWRONGSHARD, "key \"%.200s\" hashes to slot %d, "
                    "which shard %d of %d (slots %s) does not hold", key,
                    slot, db->man.shard, db->man.nshards, held);
}

/* The command line of process pid as "vlmdb serve --db x" (arguments
 * joined by spaces, cut to cap), or "" if it cannot be read. */
static void process_command(pid_t pid, char *buf, size_t cap) {
  char path[64];
  buf[0] = '\0';
  snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return;
  ssize_t n = read(fd, buf, cap - 1);
  close(fd);
  if (n <= 0)
    return;
  buf[n] = '\0';
  for (ssize_t i = 0; i < n; i++)
    if (buf[i] == '\0')
      buf[i] = ' ';
  while (n > 0 && buf[n - 1] == ' ')
    buf[--n] = '\0';
  /* the program's own path says little: keep its last component */
  char *space = strchr(buf, ' ');
  char *slash = memrchr(buf, '/', space ? (size_t)(space - buf) : strlen(buf));
  if (slash)
    memmove(buf, slash + 1, strlen(slash + 1) + 1);
}

/* Who holds the lock, in words, for the busy error: the writer records
 * its pid in LOCK (gone only if it is being replaced this instant). */
static void lock_holder(int fd, char *buf, size_t cap) {
  char text[32] = {0};
  ssize_t n = pread(fd, text, sizeof text - 1, 0);
  long pid = n > 0 ? strtol(text, NULL, 10) : 0;
  char cmd[160];
  if (pid > 0 && kill((pid_t)pid, 0) == 0) {
    process_command((pid_t)pid, cmd, sizeof cmd);
    if (strlen(cmd) > 60)
      memcpy(cmd + 57, "...", 4);
    snprintf(buf, cap, "a writer (pid %ld%s%s)", pid, cmd[0] ? ": " : "",
             cmd);
  } else {
    snprintf(buf, cap, "another writer");
  }
}

/* One writer process at a time: flock on LOCK, where the writer writes its
 * pid so that a refusal can say who holds it.  Read-only processes take
 * no lock: LMDB and SQLite's WAL let them read beside the writer, and each
 * search pairs the two stores' snapshots itself (planner.c). */
static int lock_dir(const char *dir, int readonly, int *fd_out) {
  char path[PATH_MAX];
  *fd_out = -1;
  if (readonly)
    return 0;
  snprintf(path, sizeof path, "%s/LOCK", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    char who[256];
    if (e == EWOULDBLOCK)
      lock_holder(fd, who, sizeof who);
    close(fd);
    if (e == EWOULDBLOCK)
      return vlm_seterr(VLM_EBUSY, "%s: the database is open elsewhere, by "
                        "%s; one writer at a time: wait for it, or stop it "
                        "(read-only commands run beside it)", dir, who);
    return vlm_seterr(VLM_EIO, "%s: lock: %s", path, strerror(e));
  }
  char text[32];
  int n = snprintf(text, sizeof text, "%d\n", (int)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n) {
    /* only a refused open's message and readers' crash check use it */
  }
  *fd_out = fd;
  return 0;
}

struct vlm_db_lock {
  int fd;
};

int vlm_db_lock_writers(const char *dir, vlm_db_lock **out) {
  if (!dir || !out)
    return vlm_seterr(VLM_EINVAL, "lock: NULL argument");
  *out = NULL;
  vlm_db_lock *lk = malloc(sizeof *lk);
  if (!lk)
    return vlm_seterr(VLM_ENOMEM, "lock");
  int rc = lock_dir(dir, 0, &lk->fd);
  if (rc) {
    free(lk);
    return rc;
  }
  *out = lk;
  return 0;
}

void vlm_db_unlock_writers(vlm_db_lock *lock) {
  if (!lock)
    return;
  /* a pid left in LOCK would name this process as the holder later */
  if (ftruncate(lock->fd, 0) != 0) {
    /* only messages read it */
  }
  close(lock->fd);
  free(lock);
}

int vlm_db_exchange(const char *dir, const char *staged) {
  char pa[PATH_MAX], pb[PATH_MAX];
  if (!dir || !staged)
    return vlm_seterr(VLM_EINVAL, "exchange: NULL argument");
  vlm__parent_of(dir, pa, sizeof pa);
  vlm__parent_of(staged, pb, sizeof pb);
  struct stat sa, sb;
  if (stat(pa, &sa) != 0 || stat(pb, &sb) != 0 || sa.st_dev != sb.st_dev ||
      sa.st_ino != sb.st_ino)
    return vlm_seterr(VLM_EINVAL, "%s and %s are not in one directory", dir,
                      staged);
  if (renameat2(AT_FDCWD, dir, AT_FDCWD, staged, RENAME_EXCHANGE) != 0) {
    int e = errno;
    if (e == EINVAL || e == ENOSYS || e == ENOTSUP)
      return vlm_seterr(VLM_EINVAL, "exchanging %s and %s: the filesystem "
                        "cannot swap two directories atomically (%s)", dir,
                        staged, strerror(e));
    return vlm_seterr(e == ENOENT ? VLM_ENOTFOUND : VLM_EIO,
                      "exchanging %s and %s: %s", dir, staged, strerror(e));
  }
  return vlm__fsync_dir(pa);
}

int vlm__dir_unchanged(vlm_db *db) {
  struct stat st;
  if (!db->registered)
    return 0;
  if (stat(db->dir, &st) != 0 || st.st_dev != db->reg_dev ||
      st.st_ino != db->reg_ino)
    return vlm_seterr(VLM_ESTATE, "%s is no longer the database this handle "
                      "opened (another was switched in, e.g. by vlmdb "
                      "reembed): open it again", db->dir);
  return 0;
}

/* 1 if a writer process holds dir (its pid in LOCK is alive). */
int vlm__writer_alive(const char *dir) {
  char path[PATH_MAX], text[32] = {0};
  snprintf(path, sizeof path, "%s/LOCK", dir);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  ssize_t n = pread(fd, text, sizeof text - 1, 0);
  close(fd);
  long pid = n > 0 ? strtol(text, NULL, 10) : 0;
  return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* The databases this process has open.  LMDB must not have one
 * environment open twice in a process beside a writer (its locks are per
 * process: closing one copy drops the other's), so a writer and any
 * other handle of the same directory are refused here, where a second
 * process would be allowed. */
typedef struct open_db {
  dev_t dev;
  ino_t ino;
  pid_t pid; /* a child forked with handles open does not own them */
  int writers, readers;
  struct open_db *next;
} open_db;

static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;
static open_db *open_dbs;

static int open_register(vlm_db *db, const char *dir, int readonly) {
  struct stat st;
  if (stat(dir, &st) != 0)
    return vlm_seterr(VLM_ENOTFOUND, "%s: %s", dir, strerror(errno));
  int rc = 0;
  pthread_mutex_lock(&open_mu);
  open_db *e = open_dbs;
  while (e && (e->dev != st.st_dev || e->ino != st.st_ino ||
               e->pid != getpid()))
    e = e->next;
  if (e && (e->writers || !readonly)) {
    rc = vlm_seterr(VLM_EBUSY, "%s: the database is already open in this "
                    "process%s; use that handle", dir,
                    e->writers ? " for writing" : " (read-only)");
  } else if (!e && !(e = calloc(1, sizeof *e))) {
    rc = vlm_seterr(VLM_ENOMEM, "open");
  } else {
    if (!e->writers && !e->readers) {
      e->dev = st.st_dev;
      e->ino = st.st_ino;
      e->pid = getpid();
      e->next = open_dbs;
      open_dbs = e;
    }
    readonly ? e->readers++ : e->writers++;
    db->reg_dev = st.st_dev;
    db->reg_ino = st.st_ino;
    db->registered = 1;
  }
  pthread_mutex_unlock(&open_mu);
  return rc;
}

static void open_unregister(vlm_db *db) {
  if (!db->registered)
    return;
  pthread_mutex_lock(&open_mu);
  for (open_db **p = &open_dbs; *p; p = &(*p)->next) {
    open_db *e = *p;
    if (e->dev != db->reg_dev || e->ino != db->reg_ino ||
        e->pid != getpid())
      continue;
    db->readonly ? e->readers-- : e->writers--;
    if (!e->readers && !e->writers) {
      *p = e->next;
      free(e);
    }
    break;
  }
  pthread_mutex_unlock(&open_mu);
  db->registered = 0;
}

/* ---- create / open / close ---------------------------------------------- */

int vlm__dir_is_empty(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int empty = 1;
  if (!d)
    return -1;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      empty = 0;
  closedir(d);
  return empty;
}

/* The parent directory of path ("." for a bare name), trailing slashes
 * ignored. */
void vlm__parent_of(const char *path, char *out, size_t cap) {
  size_t n = strlen(path);
  while (n > 1 && path[n - 1] == '/')
    n--;
  size_t cut = n;
  while (cut > 0 && path[cut - 1] != '/')
    cut--;
  if (cut == 0) {
    snprintf(out, cap, ".");
    return;
  }
  while (cut > 1 && path[cut - 1] == '/')
    cut--;
  snprintf(out, cap, "%.*s", (int)cut, path);
}

/* dir's last component, trailing slashes ignored, into out. */
static void base_of(const char *path, char *out, size_t cap) {
  size_t n = strlen(path);
  while (n > 1 && path[n - 1] == '/')
    n--;
  size_t b = n;
  while (b > 0 && path[b - 1] != '/')
    b--;
  snprintf(out, cap, "%.*s", (int)(n - b), path + b);
}

/* PARENT/.NAME.creating-PID: where vlm_db_create builds dir. */
int vlm__creating_path(const char *dir, char *out, size_t cap) {
  char parent[PATH_MAX], base[NAME_MAX + 1];
  vlm__parent_of(dir, parent, sizeof parent);
  base_of(dir, base, sizeof base);
  if (!*base || !strcmp(base, ".") || !strcmp(base, "..") ||
      strlen(base) > NAME_MAX - 32)
    return vlm_seterr(VLM_EINVAL, "create: %s: not a usable directory name",
                      dir);
  if (snprintf(out, cap, "%s/.%s.creating-%ld", parent, base,
               (long)getpid()) >= (int)cap)
    return vlm_seterr(VLM_EINVAL, "create: %s: path too long", dir);
  return 0;
}

/* Remove .NAME.creating-PID siblings of dir left by creates that were
 * killed (their process is gone).  Two creates of one name at once in
 * live processes keep their own; the rename decides which one wins. */
void vlm__remove_stale_creating(const char *dir) {
  char parent[PATH_MAX], base[NAME_MAX + 1], prefix[NAME_MAX + 16];
  vlm__parent_of(dir, parent, sizeof parent);
  base_of(dir, base, sizeof base);
  int plen = snprintf(prefix, sizeof prefix, ".%s.creating-", base);
  DIR *d = opendir(parent);
  if (!d)
    return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, prefix, (size_t)plen))
      continue;
    char *end;
    long pid = strtol(e->d_name + plen, &end, 10);
    /* ours is stale too: this create has not made its own yet (a dead
     * process may have had our pid) */
    if (*end || pid <= 0 ||
        (pid != (long)getpid() &&
         !(kill((pid_t)pid, 0) != 0 && errno == ESRCH)))
      continue;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", parent, e->d_name) <
        (int)sizeof path)
      vlm__remove_created(path, 1);
  }
  closedir(d);
}

/* Empty a directory that vlm_db_create or vlm_db_backup was building
 * (its files, index files included, and payload.lmdb's), and with
 * rmdir_too remove it.  Only ever given a .NAME.creating-PID sibling. */
void vlm__remove_created(const char *dir, int rmdir_too) {
  char path[PATH_MAX];
  for (int pass = 0; pass < 2; pass++) {
    snprintf(path, sizeof path, pass ? "%s" : "%s/payload.lmdb", dir);
    DIR *d = opendir(path);
    struct dirent *e;
    if (!d)
      continue;
    while ((e = readdir(d)))
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
        unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
    if (!pass)
      rmdir(path);
  }
  if (rmdir_too)
    rmdir(dir);
}

/* The cluster part of a config into m: checked, ranges sorted. */
static int set_cluster(vlm__manifest *m, const vlm_db_config *config) {
  int n = config->nslot_ranges;
  if (n == 0)
    return 0;
  const char *d = config->cluster_digest;
  if (n < 0 || n > VLM_CLUSTER_MAX_RANGES || !config->slot_ranges)
    return vlm_seterr(VLM_EINVAL, "1..%d slot ranges",
                      VLM_CLUSTER_MAX_RANGES);
  if (!d || strlen(d) != 16 || strspn(d, "0123456789abcdef") != 16)
    return vlm_seterr(VLM_EINVAL, "a cluster digest is 16 "
                      "lower-case hex digits");
  if (config->nshards < 1 || config->nshards > VLM_CLUSTER_MAX_SHARDS ||
      config->shard < 0 || config->shard >= config->nshards)
    return vlm_seterr(VLM_EINVAL, "create: shard %d of %d", config->shard,
                      config->nshards);
  memcpy(m->slot_ranges, config->slot_ranges,
         (size_t)n * sizeof m->slot_ranges[0]);
  for (int i = 1; i < n; i++) /* insertion sort: n is small */
    for (int j = i; j > 0 && m->slot_ranges[j].first <
                                 m->slot_ranges[j - 1].first; j--) {
      vlm_slot_range t = m->slot_ranges[j];
      m->slot_ranges[j] = m->slot_ranges[j - 1];
      m->slot_ranges[j - 1] = t;
    }
  int merged = 0;
  for (int i = 0; i < n; i++) {
    const vlm_slot_range *r = &m->slot_ranges[i];
    if (r->first < 0 || r->last >= VLM_SLOTS || r->first > r->last ||
        (merged && r->first <= m->slot_ranges[merged - 1].last))
      return vlm_seterr(VLM_EINVAL, "slot range [%d, %d] is outside "
                        "0..%d, reversed, or overlaps another", r->first,
                        r->last, VLM_SLOTS - 1);
    if (merged && r->first == m->slot_ranges[merged - 1].last + 1)
      m->slot_ranges[merged - 1].last = r->last; /* adjacent: one range */
    else
      m->slot_ranges[merged++] = *r;
  }
  m->nslot_ranges = merged;
  m->shard = config->shard;
  m->nshards = config->nshards;
  strcpy(m->cluster_digest, d);
  return 0;
}

int vlm_db_create(const char *dir, const vlm_db_config *config,
                  vlm_db **out) {
  vlm__manifest m;
  vlm__lmdb lm;
  vlm_index *probe = NULL;
  char path[PATH_MAX];
  int rc;
  if (!dir || !config || !out)
    return vlm_seterr(VLM_EINVAL, "create: NULL argument");
  *out = NULL;
  memset(&m, 0, sizeof m);
  if (config->dim < 1 || config->dim > 65536)
    return vlm_seterr(VLM_EINVAL, "create: dimension %d outside 1..65536",
                      config->dim);
  if (!config->model_id || !*config->model_id ||
      strlen(config->model_id) >= sizeof m.model_id)
    return vlm_seterr(VLM_EINVAL, "create: a model id (1..%zu bytes) is "
                      "required", sizeof m.model_id - 1);
  const char *factory = config->index_factory ? config->index_factory
                                              : "HNSW32";
  if (strlen(factory) >= sizeof m.factory)
    return vlm_seterr(VLM_EINVAL, "create: factory string too long");
  if (config->model_dir && strlen(config->model_dir) >= sizeof m.model_dir)
    return vlm_seterr(VLM_EINVAL, "create: model_dir too long");
  const char *family = config->model_family ? config->model_family : "clip";
  const char *orient =
      config->image_orientation ? config->image_orientation : "model";
  if (strcmp(orient, "model") && strcmp(orient, "apply") &&
      strcmp(orient, "ignore"))
    return vlm_seterr(VLM_EINVAL, "create: image orientation '%.40s' is not "
                      "model, apply or ignore", orient);
  if (vlm__model_family_ok(family) != 0)
    return vlm_seterr(VLM_EINVAL, "create: model family '%.40s' is not 1..%zu "
                      "of [a-z0-9_]", family, sizeof m.model_family - 1);
  if (config->nfields < 0 || config->nfields > VLM__MAX_FIELDS ||
      (config->nfields && !config->fields))
    return vlm_seterr(VLM_EINVAL, "create: 0..%d fields", VLM__MAX_FIELDS);
  for (int i = 0; i < config->nfields; i++) {
    char why[160];
    const vlm_field *f = &config->fields[i];
    if (!f->name || vlm__field_name_ok(f->name, why, sizeof why) != 0)
      return vlm_seterr(VLM_EINVAL, "create: field %s",
                        f->name ? why : "without a name");
    if (f->type != VLM_FIELD_TEXT && f->type != VLM_FIELD_INT &&
        f->type != VLM_FIELD_REAL)
      return vlm_seterr(VLM_EINVAL, "create: field %s: bad type", f->name);
    for (int j = 0; j < i; j++)
      if (!strcasecmp(config->fields[j].name, f->name))
        return vlm_seterr(VLM_EINVAL, "create: field %s declared twice",
                          f->name);
    strcpy(m.fname[i], f->name);
    m.ftype[i] = f->type;
  }
  m.nfields = config->nfields;
  m.format_version = VLM__FORMAT_VERSION;
  m.sql_cksum = 1;
  m.dim = config->dim;
  strcpy(m.factory, factory);
  strcpy(m.model_id, config->model_id);
  if (config->model_dir)
    strcpy(m.model_dir, config->model_dir);
  strcpy(m.model_family, family);
  strcpy(m.image_orientation, orient);
  m.keep_images = config->keep_images != 0;
  if ((rc = set_cluster(&m, config)))
    return rc;
  if ((rc = vlm_index_create(factory, m.dim, VLM_METRIC_IP, &probe)))
    return vlm_seterr(VLM_EINVAL, "create: %s", vlm_errmsg());
  vlm_index_free(probe);

  /* Built beside dir under a temporary name, then renamed onto it: a
   * create killed part-way leaves no half-made database at dir, only a
   * .NAME.creating-PID sibling that the next create removes. */
  char tmp[PATH_MAX];
  if ((rc = vlm__creating_path(dir, tmp, sizeof tmp)))
    return rc;
  struct stat st;
  if (stat(dir, &st) == 0) {
    if (!S_ISDIR(st.st_mode))
      return vlm_seterr(VLM_EEXISTS, "%s: exists and is not a directory",
                        dir);
    int e = vlm__dir_is_empty(dir);
    if (e < 0)
      return vlm_seterr(VLM_EIO, "%s: %s", dir, strerror(errno));
    if (!e)
      return vlm_seterr(VLM_EEXISTS, "%s: exists and is not empty", dir);
  } else if (errno != ENOENT) {
    return vlm_seterr(VLM_EIO, "%s: %s", dir, strerror(errno));
  }
  vlm__remove_stale_creating(dir);
  if (mkdir(tmp, 0755) != 0)
    return vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s",
                      tmp, strerror(errno));
  snprintf(path, sizeof path, "%s/meta.sqlite", tmp);
  if ((rc = vlm__sql_create(path, &m)))
    goto fail;
  if ((rc = vlm__lmdb_open(&lm, tmp, 0, 1, 0)))
    goto fail;
  {
    MDB_txn *txn;
    int mrc = mdb_txn_begin(lm.env, NULL, 0, &txn);
    if (mrc) {
      rc = vlm__lmdb_err(mrc, dir);
    } else if ((rc = vlm__lmdb_put_u64(&lm, txn, "seq", 0)) ||
               (rc = vlm__lmdb_put_u64(&lm, txn, "next_id", 1))) {
      mdb_txn_abort(txn);
    } else if ((mrc = vlm__mdb_txn_commit(txn))) {
      rc = vlm__lmdb_err(mrc, dir);
    }
    vlm__lmdb_close(&lm);
    if (rc)
      goto fail;
  }
  if ((rc = vlm__manifest_write(tmp, &m)))
    goto fail;
  /* rename(2) replaces an empty directory; a non-empty one that appeared
   * meanwhile makes it fail, and that create loses. */
  if (rename(tmp, dir) != 0) {
    int e = errno;
    rc = e == EEXIST || e == ENOTEMPTY
             ? vlm_seterr(VLM_EEXISTS, "%s: exists and is not empty", dir)
             : vlm_seterr(e == ENOSPC ? VLM_ENOSPACE : VLM_EIO,
                          "%s: rename from %s: %s", dir, tmp, strerror(e));
    goto fail;
  }
  char parent[PATH_MAX];
  vlm__parent_of(dir, parent, sizeof parent);
  if ((rc = vlm__fsync_dir(parent)))
    return rc;
  if ((rc = vlm_db_open(dir, NULL, out)))
    return rc;
  return 0;
fail:
  vlm__remove_created(tmp, 1);
  return rc;
}

static void *bg_main(void *arg);
static void maybe_checkpoint(vlm_db *db);

static void db_free(vlm_db *db) {
  if (!db)
    return;
  open_unregister(db);
  while (db->pool) {
    vlm__reader *r = db->pool;
    db->pool = r->next;
    vlm__reader_free(r);
  }
  vlm__vindex_close(db);
  vlm__sql_close_writer(db);
  vlm__lmdb_close(&db->lm);
  if (db->lock_fd >= 0) {
    /* a pid left in LOCK would name this process as the holder later */
    if (!db->readonly && ftruncate(db->lock_fd, 0) != 0) {
      /* only a later refusal's message depends on it */
    }
    close(db->lock_fd);
  }
  pthread_mutex_destroy(&db->write_mu.mu);
  pthread_mutex_destroy(&db->index_mu.mu);
  pthread_mutex_destroy(&db->pool_mu);
  pthread_mutex_destroy(&db->lazy_mu);
  pthread_mutex_destroy(&db->bg_mu);
  pthread_cond_destroy(&db->bg_cv);
  pthread_rwlock_destroy(&db->pub_lock);
  pthread_rwlock_destroy(&db->index_lock);
  free(db->dir);
  free(db);
}

static int count_keys(vlm_db *db, int64_t *items) {
  MDB_txn *txn;
  MDB_stat st;
  int rc = VLM__STORE("lmdb-read", mdb_txn_begin(db->lm.env, NULL, MDB_RDONLY, &txn));
  if (rc)
    return vlm__lmdb_err(rc, db->dir);
  rc = vlm__mdb_stat(txn, db->lm.keys, &st);
  mdb_txn_abort(txn);
  if (rc)
    return vlm__lmdb_err(rc, db->dir);
  *items = (int64_t)st.ms_entries;
  return 0;
}

int vlm_db_open(const char *dir, const vlm_db_open_options *opts,
                vlm_db **out) {
  vlm_db_open_options o = {0};
  vlm_db *db = NULL;
  int rc;
  if (!dir || !out)
    return vlm_seterr(VLM_EINVAL, "open: NULL argument");
  *out = NULL;
  if (opts)
    o = *opts;
  if (!(db = calloc(1, sizeof *db)) || !(db->dir = strdup(dir))) {
    free(db);
    return vlm_seterr(VLM_ENOMEM, "open");
  }
  db->lock_fd = -1;
  db->log_pin = UINT64_MAX;
  db->repl_pin = UINT64_MAX;
  db->readonly = o.readonly;
  db->max_payload = o.max_payload ? o.max_payload : DEFAULT_MAX_PAYLOAD;
  db->warn = o.warn;
  db->warn_arg = o.warn_arg;
  db->async = o.async_index && !o.readonly;
  if (o.mmap_index && !o.readonly) {
    free(db->dir);
    free(db);
    return vlm_seterr(VLM_EINVAL, "open %s: a memory-mapped index needs a "
                      "read-only open", dir);
  }
  db->mmap_index = o.mmap_index;
  db->defer_index = o.defer_index & 3u;
  pthread_mutex_init(&db->write_mu.mu, NULL);
  pthread_mutex_init(&db->index_mu.mu, NULL);
  pthread_mutex_init(&db->pool_mu, NULL);
  pthread_mutex_init(&db->lazy_mu, NULL);
  pthread_mutex_init(&db->bg_mu, NULL);
  pthread_cond_init(&db->bg_cv, NULL);
  pthread_rwlock_init(&db->pub_lock, NULL);
  {
    /* Writer preference: a steady stream of searches must not starve the
     * index updates of the writer. */
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&db->index_lock, &a);
    pthread_rwlockattr_destroy(&a);
  }

  if ((rc = vlm__manifest_read(dir, &db->man)))
    goto fail;
  if (o.expect_model_id && strcmp(o.expect_model_id, db->man.model_id)) {
    rc = vlm_seterr(VLM_EMISMATCH,
                    "%s was made with model \"%s\", not \"%s\"; use that "
                    "model or another database",
                    dir, db->man.model_id, o.expect_model_id);
    goto fail;
  }
  if (o.expect_dim && o.expect_dim != db->man.dim) {
    rc = vlm_seterr(VLM_EMISMATCH,
                    "%s holds %d-dimensional vectors, not %d", dir,
                    db->man.dim, o.expect_dim);
    goto fail;
  }
  {
    struct statvfs sv;
    db->rofs = statvfs(dir, &sv) == 0 && (sv.f_flag & ST_RDONLY);
  }
  if (db->rofs && !db->readonly) {
    rc = vlm_seterr(VLM_EREADONLY,
                    "%s is on a read-only filesystem: it can only be read "
                    "(open it read-only: search, get, info, export, verify)",
                    dir);
    goto fail;
  }
  if ((rc = open_register(db, dir, db->readonly)) ||
      (rc = lock_dir(dir, db->readonly, &db->lock_fd)))
    goto fail;
  db->follow = db->readonly && !db->rofs;
  if ((rc = vlm__lmdb_open(&db->lm, dir,
                           db->rofs ? VLM__RO_MEDIA : db->readonly, 0,
                           o.map_size)))
    goto fail;

  /* Recovery: LMDB is the truth; bring SQLite up to LMDB's batch. */
  uint64_t lseq, next_id, sseq;
  int pairs = 0;
again:
  {
    MDB_txn *txn;
    int mrc = VLM__STORE("lmdb-read", mdb_txn_begin(db->lm.env, NULL, MDB_RDONLY, &txn));
    if (mrc) {
      rc = vlm__lmdb_err(mrc, dir);
      goto fail;
    }
    rc = vlm__lmdb_get_u64(&db->lm, txn, "seq", &lseq);
    if (!rc)
      rc = vlm__lmdb_get_u64(&db->lm, txn, "next_id", &next_id);
    mdb_txn_abort(txn);
    if (rc)
      goto fail;
    if (next_id == 0)
      next_id = 1;
  }
  char sql_path[PATH_MAX];
  struct stat sql_st;
  snprintf(sql_path, sizeof sql_path, "%s/meta.sqlite", dir);
  int sql_missing = stat(sql_path, &sql_st) != 0 && errno == ENOENT;
  if (!db->readonly) {
    /* LMDB is the truth: a meta.sqlite that is missing, damaged or from
     * another copy is rebuilt from its records, as a lost index is. */
    char why[600] = "";
    if (sql_missing) {
      snprintf(why, sizeof why, "is missing");
    } else if ((rc = vlm__sql_open_writer(db)) ||
               (rc = vlm__sql_get_seq(db->wsql, &sseq))) {
      if (rc != VLM_ECORRUPT)
        goto fail;
      snprintf(why, sizeof why, "cannot be read (%s)", vlm_errmsg());
    } else if (sseq > lseq) {
      snprintf(why, sizeof why, "is at batch %llu, ahead of the payload "
               "store's %llu (a copy from elsewhere?)",
               (unsigned long long)sseq, (unsigned long long)lseq);
    }
    if (why[0]) {
      if ((rc = vlm__sql_rebuild(db, lseq)))
        goto fail;
      vlm__warn(db, "%s: meta.sqlite %s; rebuilt it from the payload store "
                "at batch %llu%s", dir, why, (unsigned long long)lseq,
                sql_missing ? "" : " (the old file is meta.sqlite.damaged)");
      sseq = lseq;
    }
  } else {
    vlm__reader *r = NULL;
    if (sql_missing) {
      rc = vlm_seterr(VLM_ECORRUPT, "%s: meta.sqlite is missing; run `vlmdb "
                      "recover --db %s` to rebuild it from the payload store",
                      dir, dir);
      goto fail;
    }
    if ((rc = vlm__reader_get(db, 1, &r)))
      goto fail;
    rc = vlm__sql_get_seq(r->sql, &sseq);
    vlm__reader_put(db, r);
    if (rc)
      goto fail;
    /* A writer working beside us commits LMDB, then SQLite: between the
     * two (or after a batch landed between our two reads) the numbers
     * differ for a moment.  Read again until they agree; a gap that stays
     * with no writer alive is a crash's, handled below. */
    if (sseq != lseq && db->follow && pairs < 5000 &&
        (sseq > lseq || vlm__writer_alive(dir))) {
      if (++pairs > 20)
        usleep(1000);
      goto again;
    }
  }
  if (sseq > lseq) {
    rc = vlm_seterr(VLM_ECORRUPT,
                    "%s: meta.sqlite is at batch %llu but payload.lmdb only "
                    "at %llu (stores from different copies?)",
                    dir, (unsigned long long)sseq, (unsigned long long)lseq);
    goto fail;
  }
  if (sseq < lseq) {
    if (db->readonly) {
      /* Everything the payload store holds can still be read (a disk
       * that filled up must not keep its data hostage); what needs
       * meta.sqlite (filters, BM25, verify) waits for the replay. */
      db->sql_behind = lseq - sseq;
      vlm__warn(db, "%s needs crash recovery (meta.sqlite at batch %llu, "
                "payload at %llu): reading without filters or hybrid "
                "search; run `vlmdb recover --db %s` (or open it read-write "
                "once) to repair it", dir, (unsigned long long)sseq,
                (unsigned long long)lseq, dir);
    }
  }
  if (sseq < lseq && !db->readonly) {
    if ((rc = vlm__sql_replay(db, sseq, lseq)) == 0) {
      vlm__warn(db, "%s: recovered: replayed %llu batch(es) into "
                "meta.sqlite", dir, (unsigned long long)(lseq - sseq));
    } else if (rc == VLM_ECORRUPT) { /* the log no longer reaches back */
      char why[512];
      snprintf(why, sizeof why, "%s", vlm_errmsg());
      if ((rc = vlm__sql_rebuild(db, lseq)))
        goto fail;
      vlm__warn(db, "%s: meta.sqlite could not be replayed (%s); rebuilt it "
                "from the payload store at batch %llu", dir, why,
                (unsigned long long)lseq);
    } else {
      goto fail;
    }
  }
  db->pub_seq = lseq;
  db->pub_next_id = next_id;
  if ((rc = count_keys(db, &db->pub_items)))
    goto fail;
  if ((rc = vlm__vindex_open(db)))
    goto fail;
  for (int m = 0; m < VLM__NMOD; m++)
    db->pub_vecs[m] = db->vx[m].nlive;
  if (!db->readonly)
    vlm__vindex_remove_orphans(db);
  if (db->async) {
    if (pthread_create(&db->bg, NULL, bg_main, db) != 0) {
      rc = vlm_seterr(VLM_ENOMEM, "open: cannot start the index thread");
      goto fail;
    }
    db->bg_started = 1;
  }
  *out = db;
  return 0;
fail:
  db_free(db);
  return rc;
}

static void bg_stop(vlm_db *db) {
  if (!db->bg_started)
    return;
  pthread_mutex_lock(&db->bg_mu);
  db->bg_stop = 1;
  pthread_cond_signal(&db->bg_cv);
  pthread_mutex_unlock(&db->bg_mu);
  pthread_join(db->bg, NULL);
  db->bg_started = 0;
}

static void *bg_main(void *arg) {
  vlm_db *db = arg;
  pthread_mutex_lock(&db->bg_mu);
  for (;;) {
    while (!db->bg_work && !db->bg_stop)
      pthread_cond_wait(&db->bg_cv, &db->bg_mu);
    if (db->bg_stop)
      break;
    db->bg_work = 0;
    pthread_mutex_unlock(&db->bg_mu);
    int rc = vlm__vindex_catch_up(db);
    if (rc) {
      vlm__warn(db, "%s: background indexing: %s", db->dir, vlm_errmsg());
    } else {
      vlm__write_lock(db);
      if (!__atomic_load_n(&db->broken, __ATOMIC_ACQUIRE))
        maybe_checkpoint(db);
      vlm__write_unlock(db);
    }
    pthread_mutex_lock(&db->bg_mu);
  }
  pthread_mutex_unlock(&db->bg_mu);
  return NULL;
}

void vlm_db_close(vlm_db *db) {
  if (!db)
    return;
  bg_stop(db);
  if (!db->readonly && !__atomic_load_n(&db->broken, __ATOMIC_ACQUIRE)) {
    vlm__write_lock(db);
    if (vlm__vindex_checkpoint(db) != 0)
      vlm__warn(db, "%s: checkpoint at close: %s (the index will be caught "
                "up from the payload store on open)", db->dir, vlm_errmsg());
    vlm__write_unlock(db);
  }
  db_free(db);
}

/* ---- the write protocol --------------------------------------------------- */

/* Commit both stores and publish.  txn and the SQLite transaction hold the
 * whole batch.  LMDB commits first (the commit point); SQLite second. */
static int commit_error(vlm_db *db, int mrc, uint64_t bytes);

/* A replica's shipped batches first .. seq commit together
 * (vlm__commit_publish); a batch of this process is first == seq. */
int vlm__commit_publish(vlm_db *db, MDB_txn *txn, uint64_t first,
                        uint64_t seq, uint64_t next_id, int64_t d_items,
                        const int64_t d_vecs[VLM__NMOD], uint64_t bytes) {
  assert(vlm__write_held(db));
  assert(first == db->pub_seq + 1 && seq >= first); /* batch numbers go up
                                                      by one */
  int rc = 0;
  pthread_rwlock_wrlock(&db->pub_lock);
  int mrc;
  if (VLM__FAULT("lmdb-commit")) { /* as a failed write of the commit */
    mdb_txn_abort(txn);
    mrc = EIO;
  } else {
    mrc = vlm__mdb_txn_commit(txn);
  }
  if (mrc) {
    vlm__sql_rollback(db);
    pthread_rwlock_unlock(&db->pub_lock);
    return commit_error(db, mrc, bytes);
  }
  if ((rc = VLM__FAULT("sql-commit")
                ? vlm_seterr(VLM_EIO, "meta.sqlite: commit: disk I/O error")
                : vlm__sql_commit(db))) {
    /* LMDB holds the batch; bring SQLite to it by replay, which is what
     * the next open would do. */
    char why[512];
    snprintf(why, sizeof why, "%s", vlm_errmsg());
    vlm__sql_rollback(db);
    if (!VLM__FAULT("sql-replay") && vlm__sql_replay(db, first - 1, seq) == 0) {
      rc = 0;
    } else {
      __atomic_store_n(&db->broken, 1, __ATOMIC_RELEASE);
      rc = vlm_seterr(rc, "batch %llu is committed in payload.lmdb, but "
                      "meta.sqlite failed (%s); writes are refused until the "
                      "database is reopened, which repairs it",
                      (unsigned long long)seq, why);
    }
  }
  db->pub_seq = seq;
  db->pub_next_id = next_id;
  db->pub_items += d_items;
  for (int m = 0; m < VLM__NMOD; m++)
    db->pub_vecs[m] += d_vecs[m];
  pthread_rwlock_unlock(&db->pub_lock);
  return rc;
}

/* Checkpoint on our own once many vectors are newer than the index files,
 * so a reopen after a crash never has to re-add more than about this many.
 * Caller holds write_mu. */
#define AUTO_CHECKPOINT_ITEMS 200000

static void maybe_checkpoint(vlm_db *db) {
  assert(vlm__write_held(db));
  uint64_t oldest = UINT64_MAX;
  pthread_rwlock_rdlock(&db->index_lock);
  for (int m = 0; m < VLM__NMOD; m++) {
    if (!db->vx[m].upto)
      continue;
    /* a Flat index has no file: the live file is what the log brings
     * forward at open */
    uint64_t at = vlm__vindex_fileless(db, m) ? db->man.live_next
                                              : db->man.ckpt[m].upto;
    if (at < oldest)
      oldest = at;
  }
  uint64_t next = db->ix_next;
  pthread_rwlock_unlock(&db->index_lock);
  if (oldest == UINT64_MAX || next - oldest < AUTO_CHECKPOINT_ITEMS)
    return;
  if (vlm__vindex_checkpoint(db) != 0)
    vlm__warn(db, "%s: automatic checkpoint: %s", db->dir, vlm_errmsg());
}

void vlm__after_commit(vlm_db *db) {
  if (db->async) {
    pthread_mutex_lock(&db->bg_mu);
    db->bg_work = 1;
    pthread_cond_signal(&db->bg_cv);
    pthread_mutex_unlock(&db->bg_mu);
    return;
  }
  /* The batch is durable and visible (searches cover the pending tail
   * exactly); a failure here only delays indexing to the next batch. */
  if (vlm__vindex_catch_up(db) != 0)
    vlm__warn(db, "%s: indexing: %s", db->dir, vlm_errmsg());
  else
    maybe_checkpoint(db);
}

int vlm__writable(vlm_db *db) {
  if (db->readonly)
    return vlm_seterr(VLM_ESTATE, "%s is open read-only", db->dir);
  if (__atomic_load_n(&db->broken, __ATOMIC_ACQUIRE))
    return vlm_seterr(VLM_ESTATE, "%s: an earlier write failed half-way; "
                      "reopen the database to repair it", db->dir);
  return 0;
}

static int key_cmp(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static uint32_t vec_flags(const uint8_t *data, size_t len) {
  uint32_t f = 0;
  if (len >= 4)
    memcpy(&f, data, 4);
  return f & (VLM__HAS_IMAGE | VLM__HAS_TEXT);
}

/* The start of every batch (put, delete): the writer lock, the LMDB write
 * transaction with the next batch number and item id, then the SQLite
 * transaction.  What it opened is recorded in *txn, *locked and *sql_open
 * for the caller's cleanup, whether it succeeds or fails. */
/* Free space a batch of `bytes` of records may need before its commit
 * point: LMDB writes copies of the pages it touches (records, key index,
 * log) and SQLite's WAL the rows and full-text pages; both must fit, or a
 * full disk would fail SQLite after LMDB committed.  The margin is a
 * measured overestimate (test_full_disk_campaign). */
#define SPACE_SLACK ((uint64_t)256 << 10)
static uint64_t space_needed(uint64_t bytes) { return 3 * bytes + SPACE_SLACK; }

static uint64_t space_free(const char *dir) {
  struct statvfs sv;
  if (statvfs(dir, &sv) != 0)
    return UINT64_MAX; /* unknown: let the write find out */
  return (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
}

int vlm__space_check(vlm_db *db, const char *what, uint64_t bytes) {
  uint64_t need = space_needed(bytes), have = space_free(db->dir);
  if (have >= need)
    return 0;
  return vlm_seterr(VLM_ENOSPACE, "%s: the disk of %s is full: the batch "
                    "needs about %llu KiB free, %llu KiB are; nothing was "
                    "written", what, db->dir,
                    (unsigned long long)(need >> 10),
                    (unsigned long long)(have >> 10));
}

/* A failed LMDB commit on a disk without room is a full disk, whatever
 * errno the short write left (LMDB reports EIO for it). */
static int commit_error(vlm_db *db, int mrc, uint64_t bytes) {
  if (mrc == EIO && space_free(db->dir) < space_needed(bytes))
    return vlm_seterr(VLM_ENOSPACE, "commit: the disk of %s is full; "
                      "nothing was written", db->dir);
  return vlm__lmdb_err(mrc, "commit");
}

static int batch_begin(vlm_db *db, const char *what, MDB_txn **txn,
                       int *locked, int *sql_open, uint64_t *seq,
                       uint64_t *next_id) {
  vlm__write_lock(db);
  *locked = 1;
  int rc = vlm__writable(db);
  if (rc)
    return rc;
  int mrc = VLM__STORE("lmdb-begin", mdb_txn_begin(db->lm.env, NULL, 0, txn));
  if (mrc) {
    *txn = NULL;
    return vlm__lmdb_err(mrc, what);
  }
  if ((rc = vlm__lmdb_get_u64(&db->lm, *txn, "seq", seq)) ||
      (rc = vlm__lmdb_get_u64(&db->lm, *txn, "next_id", next_id)))
    return rc;
  if (*next_id == 0)
    *next_id = 1;
  (*seq)++;
  if ((rc = vlm__sql_begin(db)))
    return rc;
  *sql_open = 1;
  return 0;
}

/* ---- the batch engine: put, delete and mixed writes ------------------------ */

static char *dup_n(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

/* One batch being staged: what batch_begin opened (for batch_end's
 * cleanup), the changes for the log and SQLite, the counts to publish and
 * scratch space for one vector record. */
typedef struct {
  MDB_txn *txn;
  int locked, sql_open;
  uint64_t seq, next_id, bytes;
  vlm__change *ch;
  vlm__sql_change *rows;
  int nch;
  int64_t d_items, d_vecs[VLM__NMOD];
  float *vecs;   /* dim floats */
  uint8_t *vbuf; /* a vector record */
  void **own;    /* copies the batch's SQLite rows point into (updates) */
  int nown, cown;
} batch;

/* Keep p (malloc'd, may be NULL) until the batch ends. */
static int batch_keep(batch *b, void *p) {
  if (!p)
    return 0;
  if (b->nown == b->cown) {
    int cap = b->cown ? 2 * b->cown : 16;
    void **own = realloc(b->own, (size_t)cap * sizeof *own);
    if (!own) {
      free(p);
      return vlm_seterr(VLM_ENOMEM, "update");
    }
    b->own = own;
    b->cown = cap;
  }
  b->own[b->nown++] = p;
  return 0;
}

/* Check one item before anything is touched: key, vectors (normalized
 * into scratch only to check them: finite, of a normal length), thumbnail,
 * text limits and UTF-8, payload cap, declared field types.  *meta gets
 * the parsed metadata (or NULL); *bytes grows by what it will write. */
static int validate_item(vlm_db *db, const vlm_item *it, int update,
                         float *scratch, json_t **meta, uint64_t *bytes) {
  int dim = db->man.dim, rc;
  char what[600];
  if ((rc = check_key(it->key)))
    return rc;
  if (!it->image_vec && !it->text_vec && !update)
    return vlm_seterr(VLM_EINVAL, "key \"%s\": no image or text vector",
                      it->key);
  if (it->image_vec) {
    snprintf(what, sizeof what, "key \"%s\": image vector", it->key);
    if ((rc = vlm__normalize(it->image_vec, scratch, dim, what)))
      return rc;
  }
  if (it->text_vec) {
    snprintf(what, sizeof what, "key \"%s\": text vector", it->key);
    if ((rc = vlm__normalize(it->text_vec, scratch, dim, what)))
      return rc;
  }
  if (it->thumb_len && !it->thumb)
    return vlm_seterr(VLM_EINVAL, "key \"%s\": thumb_len without thumb",
                      it->key);
  if (it->image_len && !it->image)
    return vlm_seterr(VLM_EINVAL, "key \"%s\": image_len without image",
                      it->key);
  if (it->thumb && it->thumb_len &&
      (it->thumb_len < 3 || memcmp(it->thumb, "\xff\xd8\xff", 3)))
    return vlm_seterr(VLM_EFORMAT, "key \"%s\": thumbnail is not JPEG data",
                      it->key);
  const char *text[3] = {it->caption, it->source, it->meta_json};
  static const char *text_name[3] = {"caption", "source", "meta_json"};
  for (int t = 0; t < 3; t++) {
    size_t len = text[t] ? strlen(text[t]) : 0;
    if (len > VLM_DB_MAX_TEXT)
      return vlm_seterr(VLM_ETOOBIG, "key \"%s\": %s of %zu bytes exceeds the "
                        "limit of %u (VLM_DB_MAX_TEXT)", it->key, text_name[t],
                        len, VLM_DB_MAX_TEXT);
    /* verify holds every stored string to UTF-8: refuse here what it
     * would later call damage */
    if (t < 2 && text[t] && !vlm_utf8_valid(text[t], len))
      return vlm_seterr(VLM_EINVAL, "key \"%s\": %s is not valid UTF-8",
                        it->key, text_name[t]);
  }
  size_t payload = vlm__rec_size(strlen(it->key), it);
  *bytes += payload + (it->caption ? strlen(it->caption) : 0) +
            (it->meta_json ? strlen(it->meta_json) : 0);
  if (payload > db->max_payload || payload > UINT32_MAX)
    return vlm_seterr(VLM_ETOOBIG, "key \"%s\": payload of %zu bytes exceeds "
                      "the cap of %zu", it->key, payload, db->max_payload);
  return vlm__meta_check(&db->man, it->key, it->meta_json, meta);
}

/* Room for n changes; the writer lock, both transactions, the next batch
 * number.  On failure batch_end still cleans up. */
static int batch_open(vlm_db *db, batch *b, int n, const char *what) {
  memset(b, 0, sizeof *b);
  int dim = db->man.dim;
  b->vecs = malloc((size_t)dim * sizeof *b->vecs);
  b->vbuf = malloc(8 + (size_t)dim * 8);
  b->ch = malloc((size_t)n * sizeof *b->ch);
  b->rows = malloc((size_t)n * sizeof *b->rows);
  if (!b->vecs || !b->vbuf || !b->ch || !b->rows)
    return vlm_seterr(VLM_ENOMEM, "%s: batch of %d", what, n);
  return batch_begin(db, what, &b->txn, &b->locked, &b->sql_open, &b->seq,
                     &b->next_id);
}

static int lookup_id(vlm_db *db, MDB_txn *txn, const char *key, uint64_t *id) {
  MDB_val k = {strlen(key), (void *)key}, v;
  int rc = vlm__mdb_get(txn, db->lm.keys, &k, &v);
  if (rc == MDB_NOTFOUND)
    return VLM_ENOTFOUND;
  if (rc)
    return vlm__lmdb_err(rc, key);
  if (v.mv_size != 8)
    return vlm_seterr(VLM_ECORRUPT, "key \"%s\": bad id", key);
  memcpy(id, v.mv_data, 8);
  return 0;
}

/* lookup_id for a write: the item the key names must also name the key
 * back, so that a damaged key table cannot make a write replace or delete
 * another item's record. */
static int owned_id(vlm_db *db, MDB_txn *txn, const char *key, uint64_t *id) {
  int rc = lookup_id(db, txn, key, id);
  if (rc)
    return rc;
  vlm__rec rec;
  if ((rc = vlm__rec_get(&db->lm, txn, *id, &rec)))
    return rc == VLM_ENOTFOUND
               ? vlm_seterr(VLM_ECORRUPT, "key \"%s\": item %llu missing",
                            key, (unsigned long long)*id)
               : rc;
  if (rec.key_len != strlen(key) || memcmp(rec.key, key, rec.key_len) != 0)
    return vlm_seterr(VLM_ECORRUPT, "key \"%s\": the key table points to "
                      "item %llu, which holds another key: payload.lmdb is "
                      "damaged; " VLM__LMDB_DAMAGED_HINT, key,
                      (unsigned long long)*id);
  return 0;
}

/* Stage a put of a validated item (meta: its parsed metadata, borrowed
 * until the batch ends).  *changed: 0 when the key exists and the put is
 * not an upsert (nothing staged). */
static int stage_put(vlm_db *db, batch *b, const vlm_item *it,
                     const json_t *meta, int upsert, const uint64_t *at,
                     int *changed) {
  assert(vlm__write_held(db) && b->txn);
  int dim = db->man.dim, rc, mrc;
  size_t klen = strlen(it->key);
  MDB_val k = {klen, (void *)it->key}, v;
  uint64_t old_id = 0, id;
  *changed = 0;
  rc = owned_id(db, b->txn, it->key, &old_id);
  if (rc == 0 && !upsert)
    return 0;
  if (rc == VLM_ENOTFOUND)
    old_id = 0;
  else if (rc)
    return rc;
  if (at) {
    /* vlm_db_put_at: the caller's id, above every id given before */
    if (*at < b->next_id)
      return vlm_seterr(VLM_EINVAL, "key \"%s\": id %llu is below the "
                        "database's next id %llu", it->key,
                        (unsigned long long)*at,
                        (unsigned long long)b->next_id);
    b->next_id = *at;
  }
  id = b->next_id++;
  uint32_t vf = (it->image_vec ? VLM__HAS_IMAGE : 0) |
                (it->text_vec ? VLM__HAS_TEXT : 0);
  MDB_val ik = {sizeof id, &id};
  /* The vector record first (into vbuf), so the item record can be sealed
   * with a checksum over both before its reserved space is left (LMDB:
   * filled before the next put).  Vectors are normalized again here
   * rather than kept from validation: a batch-sized copy of every vector
   * cost more (fresh pages for tens of MB) than normalizing twice. */
  size_t vlen;
  if ((rc = vlm__vecs_encode(b->vbuf, it, dim, b->vecs, &vlen)))
    return rc;
  v.mv_size = vlm__rec_size(klen, it);
  if ((mrc = VLM__STORE("lmdb-write", vlm__mdb_put(b->txn, db->lm.items, &ik, &v, MDB_RESERVE))))
    return vlm__lmdb_err(mrc, it->key);
  vlm__rec_encode(v.mv_data, vf, b->seq, it->key, klen, it);
  vlm__rec_seal(v.mv_data, v.mv_size, b->vbuf, vlen);
  v.mv_size = vlen;
  v.mv_data = b->vbuf;
  if ((mrc = VLM__STORE("lmdb-write", vlm__mdb_put(b->txn, db->lm.vecs, &ik, &v, 0))))
    return vlm__lmdb_err(mrc, it->key);
  v.mv_size = 8;
  v.mv_data = &id;
  if ((mrc = VLM__STORE("lmdb-write", vlm__mdb_put(b->txn, db->lm.keys, &k, &v, 0))))
    return vlm__lmdb_err(mrc, it->key);
  if (old_id) {
    MDB_val ok = {sizeof old_id, &old_id}, ov;
    if ((mrc = vlm__mdb_get(b->txn, db->lm.vecs, &ok, &ov)) == 0) {
      uint32_t of = vec_flags(ov.mv_data, ov.mv_size);
      b->d_vecs[0] -= !!(of & VLM__HAS_IMAGE);
      b->d_vecs[1] -= !!(of & VLM__HAS_TEXT);
    }
    if (((mrc = VLM__STORE("lmdb-write", vlm__mdb_del(b->txn, db->lm.items, &ok, NULL))) &&
         mrc != MDB_NOTFOUND) ||
        ((mrc = VLM__STORE("lmdb-write", vlm__mdb_del(b->txn, db->lm.vecs, &ok, NULL))) &&
         mrc != MDB_NOTFOUND))
      return vlm__lmdb_err(mrc, it->key);
  } else {
    b->d_items++;
  }
  b->d_vecs[0] += !!it->image_vec;
  b->d_vecs[1] += !!it->text_vec;
  vlm__change c = {id, old_id};
  b->ch[b->nch] = c;
  b->rows[b->nch] = (vlm__sql_change){
      .c = c, .key = it->key, .key_len = klen, .meta = meta,
      .caption = it->caption,
      .caption_len = it->caption ? strlen(it->caption) : 0};
  b->nch++;
  *changed = 1;
  return 0;
}

/* Stage an update of a validated item: the fields it names (non-NULL)
 * replace the stored ones, the others are kept, and the merged item is
 * staged as an upsert.  The kept fields are copied out of the map first
 * (the writes that follow may move the pages they are on) and live until
 * the batch ends, since SQLite's rows point at them.  *meta: the item's
 * parsed metadata, set here from the stored one when it names none (the
 * caller frees it).  *changed 0 when the key does not exist. */
static int stage_update(vlm_db *db, batch *b, const vlm_item *it,
                        json_t **meta, int *changed) {
  assert(vlm__write_held(db) && b->txn);
  int dim = db->man.dim, rc;
  uint64_t id;
  *changed = 0;
  if ((rc = owned_id(db, b->txn, it->key, &id)))
    return rc == VLM_ENOTFOUND ? 0 : rc;
  vlm__rec rec;
  uint32_t vf;
  const void *vec[VLM__NMOD];
  if ((rc = vlm__rec_get(&db->lm, b->txn, id, &rec)) ||
      (rc = vlm__vecs_get(&db->lm, b->txn, id, dim, &vf, vec)))
    return rc;
  vlm_item m = *it;
  char *mj = NULL;
  if (!it->caption && (rec.flags & VLM__HAS_CAPTION) &&
      ((rc = batch_keep(b, (void *)(m.caption = dup_n(rec.caption,
                                                      rec.caption_len)))) ||
       !m.caption))
    return rc ? rc : vlm_seterr(VLM_ENOMEM, "update");
  if (!it->source && (rec.flags & VLM__HAS_SOURCE) &&
      ((rc = batch_keep(b, (void *)(m.source = dup_n(rec.source,
                                                     rec.source_len)))) ||
       !m.source))
    return rc ? rc : vlm_seterr(VLM_ENOMEM, "update");
  if (!it->thumb && (rec.flags & VLM__HAS_THUMB) && rec.thumb_len) {
    void *t = malloc(rec.thumb_len);
    if (!t || (rc = batch_keep(b, t)))
      return t ? rc : vlm_seterr(VLM_ENOMEM, "update");
    memcpy(t, rec.thumb, rec.thumb_len);
    m.thumb = t;
    m.thumb_len = rec.thumb_len;
  }
  if (!it->image && rec.image_len) {
    void *t = malloc(rec.image_len);
    if (!t || (rc = batch_keep(b, t)))
      return t ? rc : vlm_seterr(VLM_ENOMEM, "update");
    memcpy(t, rec.image, rec.image_len);
    m.image = t;
    m.image_len = rec.image_len;
  }
  const float **mv[VLM__NMOD] = {&m.image_vec, &m.text_vec};
  for (int i = 0; i < VLM__NMOD; i++) {
    if (*mv[i] || !vec[i])
      continue;
    float *c = malloc((size_t)dim * sizeof *c);
    if (!c || (rc = batch_keep(b, c)))
      return c ? rc : vlm_seterr(VLM_ENOMEM, "update");
    memcpy(c, vec[i], (size_t)dim * sizeof *c);
    *mv[i] = c;
  }
  if (!it->meta_json && rec.meta_len) {
    if (!(mj = dup_n(rec.meta, rec.meta_len)) || (rc = batch_keep(b, mj)))
      return mj ? rc : vlm_seterr(VLM_ENOMEM, "update");
    m.meta_json = mj;
    if ((rc = vlm__meta_check(&db->man, it->key, mj, meta)))
      return rc;
  }
  size_t payload = vlm__rec_size(strlen(m.key), &m);
  if (payload > db->max_payload || payload > UINT32_MAX)
    return vlm_seterr(VLM_ETOOBIG, "key \"%s\": the updated payload of %zu "
                      "bytes exceeds the cap of %zu", m.key, payload,
                      db->max_payload);
  return stage_put(db, b, &m, *meta, 1, NULL, changed);
}

/* Stage the delete of key; *changed 0 when it does not exist. */
static int stage_delete(vlm_db *db, batch *b, const char *key,
                        int *changed) {
  assert(vlm__write_held(db) && b->txn);
  MDB_val k = {strlen(key), (void *)key};
  uint64_t id;
  *changed = 0;
  int rc = owned_id(db, b->txn, key, &id), mrc;
  if (rc)
    return rc == VLM_ENOTFOUND ? 0 : rc;
  MDB_val ik = {sizeof id, &id}, iv;
  if ((mrc = vlm__mdb_get(b->txn, db->lm.vecs, &ik, &iv)) == 0) {
    uint32_t of = vec_flags(iv.mv_data, iv.mv_size);
    b->d_vecs[0] -= !!(of & VLM__HAS_IMAGE);
    b->d_vecs[1] -= !!(of & VLM__HAS_TEXT);
  }
  if ((mrc = VLM__STORE("lmdb-write", vlm__mdb_del(b->txn, db->lm.keys, &k, NULL))) ||
      ((mrc = VLM__STORE("lmdb-write", vlm__mdb_del(b->txn, db->lm.items, &ik, NULL))) &&
       mrc != MDB_NOTFOUND) ||
      ((mrc = VLM__STORE("lmdb-write", vlm__mdb_del(b->txn, db->lm.vecs, &ik, NULL))) &&
       mrc != MDB_NOTFOUND))
    return vlm__lmdb_err(mrc, key);
  b->d_items--;
  vlm__change c = {0, id};
  b->ch[b->nch] = c;
  b->rows[b->nch] = (vlm__sql_change){.c = c};
  b->nch++;
  *changed = 1;
  return 0;
}

/* The commit sequence every batch shares: SQLite's rows, the log entry,
 * the batch number, then commit_publish (LMDB, the commit point, then
 * SQLite) and the index catch-up.  A batch that changed nothing commits
 * nothing. */
static int batch_commit(vlm_db *db, batch *b) {
  assert(vlm__write_held(db));
  int rc, mrc;
  if (b->nch == 0)
    return 0;
  if ((rc = vlm__sql_apply(db, b->rows, (size_t)b->nch, 0)))
    return rc;
  MDB_val lk = {sizeof b->seq, &b->seq},
          lv = {(size_t)b->nch * sizeof *b->ch, b->ch};
  if ((mrc = VLM__STORE("lmdb-write", vlm__mdb_put(b->txn, db->lm.log, &lk, &lv, 0))))
    return vlm__lmdb_err(mrc, "log");
  if ((rc = vlm__lmdb_put_u64(&db->lm, b->txn, "seq", b->seq)) ||
      (rc = vlm__lmdb_put_u64(&db->lm, b->txn, "next_id", b->next_id)) ||
      (rc = vlm__sql_set_seq(db, b->seq)))
    return rc;
  rc = vlm__commit_publish(db, b->txn, b->seq, b->seq, b->next_id,
                           b->d_items, b->d_vecs, b->bytes);
  b->txn = NULL;
  b->sql_open = 0;
  if (rc == 0 || __atomic_load_n(&db->broken, __ATOMIC_ACQUIRE))
    vlm__after_commit(db);
  return rc;
}

static void batch_end(vlm_db *db, batch *b) {
  if (b->txn)
    mdb_txn_abort(b->txn);
  if (b->sql_open)
    vlm__sql_rollback(db);
  if (b->locked)
    vlm__write_unlock(db);
  free(b->vecs);
  free(b->vbuf);
  free(b->ch);
  free(b->rows);
  for (int i = 0; i < b->nown; i++)
    free(b->own[i]);
  free(b->own);
}

/* Validate ops, then stage and commit them as one batch; changed[i] (or
 * NULL) says whether op i changed anything and *nchanged (or NULL) how many
 * did.  unique_keys: refuse a key twice (put's contract). */
static int write_ops(vlm_db *db, const vlm_write_op *ops, int n,
                     int unique_keys, const uint64_t *ids, int *changed,
                     int *nchanged, const char *what) {
  json_t **metas = NULL;
  const char **order = NULL;
  float *scratch = NULL;
  batch b;
  int rc;
  int count = 0;
  memset(&b, 0, sizeof b);
  if (nchanged)
    *nchanged = 0;
  if (changed)
    for (int i = 0; i < n; i++)
      changed[i] = 0;
  if ((rc = vlm__writable(db)))
    return rc;
  if (n == 0)
    return 0;
  metas = calloc((size_t)n, sizeof *metas);
  order = malloc((size_t)n * sizeof *order);
  scratch = malloc((size_t)db->man.dim * sizeof *scratch);
  if (!metas || !order || !scratch) {
    rc = vlm_seterr(VLM_ENOMEM, "%s: batch of %d", what, n);
    goto done;
  }
  /* Everything is checked before a store is touched. */
  uint64_t bytes = 0;
  for (int i = 0; i < n; i++) {
    const vlm_write_op *op = &ops[i];
    if (op->kind != VLM_WRITE_ADD && op->kind != VLM_WRITE_UPSERT &&
        op->kind != VLM_WRITE_UPDATE && op->kind != VLM_WRITE_DELETE)
      rc = vlm_seterr(VLM_EINVAL, "%s: op %d: unknown kind %d", what, i,
                      (int)op->kind);
    else if (!(rc = check_key(op->item.key)) &&
             !(rc = check_slot(db, op->item.key)) &&
             op->kind != VLM_WRITE_DELETE)
      rc = validate_item(db, &op->item, op->kind == VLM_WRITE_UPDATE,
                         scratch, &metas[i], &bytes);
    if (rc)
      goto done;
    order[i] = op->item.key;
  }
  if (unique_keys) {
    qsort(order, (size_t)n, sizeof *order, key_cmp);
    for (int i = 1; i < n; i++)
      if (!strcmp(order[i], order[i - 1])) {
        rc = vlm_seterr(VLM_EINVAL, "key \"%s\" appears twice in the batch",
                        order[i]);
        goto done;
      }
  }
  if (bytes && (rc = vlm__space_check(db, what, bytes)))
    goto done;
  if ((rc = batch_open(db, &b, n, what)))
    goto done;
  b.bytes = bytes;
  for (int i = 0; i < n; i++) {
    const vlm_write_op *op = &ops[i];
    int ch = 0;
    rc = op->kind == VLM_WRITE_DELETE
             ? stage_delete(db, &b, op->item.key, &ch)
         : op->kind == VLM_WRITE_UPDATE
             ? stage_update(db, &b, &op->item, &metas[i], &ch)
             : stage_put(db, &b, &op->item, metas[i],
                         op->kind == VLM_WRITE_UPSERT, ids ? &ids[i] : NULL,
                         &ch);
    if (rc)
      goto done;
    if (changed)
      changed[i] = ch;
    count += ch;
  }
  if ((rc = batch_commit(db, &b)) == 0 && nchanged)
    *nchanged = count;
done:
  batch_end(db, &b);
  if (rc && changed)
    for (int i = 0; i < n; i++)
      changed[i] = 0;
  if (metas)
    for (int i = 0; i < n; i++)
      json_decref(metas[i]);
  free(metas);
  free(order);
  free(scratch);
  return rc;
}

int vlm_db_write(vlm_db *db, const vlm_write_op *ops, int n, int *changed) {
  if (!db || n < 0 || (n > 0 && !ops))
    return vlm_seterr(VLM_EINVAL, "write: bad arguments");
  return write_ops(db, ops, n, 0, NULL, changed, NULL, "write");
}

/* put and delete are write batches of one kind of op. */
int vlm_db_put(vlm_db *db, const vlm_item *items, int n, unsigned flags,
               int *written) {
  if (written)
    *written = 0;
  if (!db || (n > 0 && !items) || n < 0)
    return vlm_seterr(VLM_EINVAL, "put: bad arguments");
  vlm_write_op *ops = calloc((size_t)(n ? n : 1), sizeof *ops);
  if (!ops)
    return vlm_seterr(VLM_ENOMEM, "put: batch of %d", n);
  for (int i = 0; i < n; i++) {
    ops[i].kind = (flags & VLM_PUT_UPSERT) ? VLM_WRITE_UPSERT : VLM_WRITE_ADD;
    ops[i].item = items[i];
  }
  int rc = write_ops(db, ops, n, 1, NULL, NULL, written, "put");
  free(ops);
  return rc;
}

int vlm_db_put_at(vlm_db *db, const vlm_item *items, const uint64_t *ids,
                  int n, int *written) {
  if (written)
    *written = 0;
  if (!db || n < 0 || (n > 0 && (!items || !ids)))
    return vlm_seterr(VLM_EINVAL, "put: bad arguments");
  for (int i = 0; i < n; i++)
    if (ids[i] == 0 || ids[i] >= UINT64_MAX / 2 || (i && ids[i] <= ids[i - 1]))
      return vlm_seterr(VLM_EINVAL, "put: ids must be positive and "
                        "increase (id %llu at %d)",
                        (unsigned long long)ids[i], i);
  vlm_write_op *ops = calloc((size_t)(n ? n : 1), sizeof *ops);
  if (!ops)
    return vlm_seterr(VLM_ENOMEM, "put: batch of %d", n);
  for (int i = 0; i < n; i++) {
    ops[i].kind = VLM_WRITE_ADD;
    ops[i].item = items[i];
  }
  int rc = write_ops(db, ops, n, 1, ids, NULL, written, "put");
  free(ops);
  return rc;
}

int vlm_db_delete(vlm_db *db, const char *const *keys, int n, int *deleted) {
  if (deleted)
    *deleted = 0;
  if (!db || n < 0 || (n > 0 && !keys))
    return vlm_seterr(VLM_EINVAL, "delete: bad arguments");
  vlm_write_op *ops = calloc((size_t)(n ? n : 1), sizeof *ops);
  if (!ops)
    return vlm_seterr(VLM_ENOMEM, "delete");
  for (int i = 0; i < n; i++) {
    ops[i].kind = VLM_WRITE_DELETE;
    ops[i].item.key = keys[i];
  }
  int rc = write_ops(db, ops, n, 0, NULL, NULL, deleted, "delete");
  free(ops);
  return rc;
}

/* ---- reads ---------------------------------------------------------------- */

static int begin_read(vlm_db *db, vlm__reader **r) {
  int rc = vlm__reader_get(db, 0, r);
  if (rc)
    return rc;
  pthread_rwlock_rdlock(&db->pub_lock);
  rc = vlm__reader_txn(db, *r, "read");
  pthread_rwlock_unlock(&db->pub_lock);
  if (rc)
    vlm__reader_put(db, *r);
  return rc;
}

static void end_read(vlm_db *db, vlm__reader *r) {
  mdb_txn_reset(r->txn);
  vlm__reader_put(db, r);
}

int vlm_db_exists(vlm_db *db, const char *key) {
  vlm__reader *r;
  uint64_t id;
  if (!db || !key)
    return vlm_seterr(VLM_EINVAL, "exists: NULL argument");
  int rc = begin_read(db, &r);
  if (rc)
    return rc;
  rc = lookup_id(db, r->txn, key, &id);
  end_read(db, r);
  return rc == 0 ? 1 : rc == VLM_ENOTFOUND ? 0 : rc;
}

/* Build a caller-owned record of item id from txn. */
/* check: verify the record's checksum first (get does; the walk of
 * foreach leaves that to verify and salvage, so an export still reads
 * past a damaged record).  flags: VLM_GET_IMAGE copies the kept bytes. */
static int make_record(vlm_db *db, MDB_txn *txn, uint64_t id, int check,
                       unsigned flags, vlm_record **out) {
  vlm__rec rec;
  uint32_t vf;
  const void *vec[VLM__NMOD];
  int dim = db->man.dim, rc;
  vlm_record *r;
  *out = NULL;
  MDB_val ik = {sizeof id, &id}, rv, vv;
  int mrc = vlm__mdb_get(txn, db->lm.items, &ik, &rv);
  if (mrc)
    return mrc == MDB_NOTFOUND
               ? vlm_seterr(VLM_ECORRUPT, "item %llu: record missing",
                            (unsigned long long)id)
               : vlm__lmdb_err(mrc, "items");
  if ((rc = vlm__rec_decode(rv.mv_data, rv.mv_size, &rec)))
    return rc;
  mrc = vlm__mdb_get(txn, db->lm.vecs, &ik, &vv);
  if (mrc)
    return mrc == MDB_NOTFOUND
               ? vlm_seterr(VLM_ECORRUPT, "item %llu: vectors missing",
                            (unsigned long long)id)
               : vlm__lmdb_err(mrc, "vecs");
  if ((rc = vlm__vecs_parse(&vv, dim, &vf, vec)))
    return rc;
  if (check && vlm__rec_check(rv.mv_data, rv.mv_size, vv.mv_data, vv.mv_size))
    return vlm_seterr(VLM_ECORRUPT, "item %llu (key \"%.*s\"): checksum "
                      "mismatch, the record is damaged (vlmdb salvage copies "
                      "the sound ones)", (unsigned long long)id,
                      (int)(rec.key_len > 200 ? 200 : rec.key_len), rec.key);
  if (!(r = calloc(1, sizeof *r)))
    return vlm_seterr(VLM_ENOMEM, "record");
  r->dim = dim;
  r->id = id;
  int oom = !(r->key = dup_n(rec.key, rec.key_len));
  if (vec[0] && !oom && (oom = !(r->image_vec = malloc((size_t)dim * 4))) == 0)
    memcpy(r->image_vec, vec[0], (size_t)dim * 4);
  if (vec[1] && !oom && (oom = !(r->text_vec = malloc((size_t)dim * 4))) == 0)
    memcpy(r->text_vec, vec[1], (size_t)dim * 4);
  if ((rec.flags & VLM__HAS_CAPTION) && !oom)
    oom = !(r->caption = dup_n(rec.caption, rec.caption_len));
  if ((rec.flags & VLM__HAS_SOURCE) && !oom)
    oom = !(r->source = dup_n(rec.source, rec.source_len));
  if ((rec.flags & VLM__HAS_THUMB) && !oom &&
      (oom = !(r->thumb = malloc(rec.thumb_len))) == 0) {
    memcpy(r->thumb, rec.thumb, rec.thumb_len);
    r->thumb_len = rec.thumb_len;
  }
  r->image_len = rec.image_len;
  if ((flags & VLM_GET_IMAGE) && rec.image_len && !oom &&
      (oom = !(r->image = malloc(rec.image_len))) == 0)
    memcpy(r->image, rec.image, rec.image_len);
  if (!oom)
    oom = !(r->meta_json = rec.meta_len ? dup_n(rec.meta, rec.meta_len)
                                        : strdup("{}"));
  if (oom) {
    vlm_record_free(r);
    return vlm_seterr(VLM_ENOMEM, "record");
  }
  *out = r;
  return 0;
}

int vlm_db_get(vlm_db *db, const char *key, vlm_record **out) {
  return vlm_db_get2(db, key, 0, out);
}

int vlm_db_get2(vlm_db *db, const char *key, unsigned flags,
                vlm_record **out) {
  vlm__reader *r;
  uint64_t id;
  if (!db || !key || !out)
    return vlm_seterr(VLM_EINVAL, "get: NULL argument");
  *out = NULL;
  if (flags & ~VLM_GET_IMAGE)
    return vlm_seterr(VLM_EINVAL, "get: unknown flags 0x%x", flags);
  int rc = begin_read(db, &r);
  if (rc)
    return rc;
  rc = lookup_id(db, r->txn, key, &id);
  if (rc == VLM_ENOTFOUND)
    rc = vlm_seterr(VLM_ENOTFOUND, "key \"%s\" not found", key);
  else if (!rc)
    rc = make_record(db, r->txn, id, 1, flags, out);
  /* The record names its key and its checksum covers it: a damaged keys
   * tree that sends a key to another item's sound record is caught here */
  if (!rc && strcmp((*out)->key, key) != 0) {
    rc = vlm_seterr(VLM_ECORRUPT, "key \"%s\": the key table points to item "
                    "%llu, which holds key \"%.200s\": payload.lmdb is "
                    "damaged; " VLM__LMDB_DAMAGED_HINT, key,
                    (unsigned long long)id, (*out)->key);
    vlm_record_free(*out);
    *out = NULL;
  }
  end_read(db, r);
  return rc;
}

int vlm_db_get_image(vlm_db *db, const char *key, uint8_t **data,
                     size_t *len) {
  vlm__reader *r;
  uint64_t id;
  if (!db || !key || !data || !len)
    return vlm_seterr(VLM_EINVAL, "get image: NULL argument");
  *data = NULL;
  *len = 0;
  int rc = begin_read(db, &r);
  if (rc)
    return rc;
  rc = lookup_id(db, r->txn, key, &id);
  if (rc == VLM_ENOTFOUND)
    rc = vlm_seterr(VLM_ENOTFOUND, "key \"%s\" not found", key);
  if (rc)
    goto done;
  MDB_val ik = {sizeof id, &id}, rv, vv;
  vlm__rec rec;
  int mrc = vlm__mdb_get(r->txn, db->lm.items, &ik, &rv);
  if (!mrc)
    mrc = vlm__mdb_get(r->txn, db->lm.vecs, &ik, &vv);
  if (mrc) {
    rc = mrc == MDB_NOTFOUND
             ? vlm_seterr(VLM_ECORRUPT, "key \"%s\": item %llu missing", key,
                          (unsigned long long)id)
             : vlm__lmdb_err(mrc, key);
    goto done;
  }
  if ((rc = vlm__rec_decode(rv.mv_data, rv.mv_size, &rec)))
    goto done;
  if (rec.key_len != strlen(key) || memcmp(rec.key, key, rec.key_len) ||
      vlm__rec_check(rv.mv_data, rv.mv_size, vv.mv_data, vv.mv_size)) {
    rc = vlm_seterr(VLM_ECORRUPT, "key \"%s\" (item %llu): the record is "
                    "damaged; " VLM__LMDB_DAMAGED_HINT, key,
                    (unsigned long long)id);
    goto done;
  }
  if (rec.image_len) {
    if (!(*data = malloc(rec.image_len))) {
      rc = vlm_seterr(VLM_ENOMEM, "key \"%s\": image of %zu bytes", key,
                      rec.image_len);
      goto done;
    }
    memcpy(*data, rec.image, rec.image_len);
    *len = rec.image_len;
  }
done:
  end_read(db, r);
  return rc;
}

void vlm_record_free(vlm_record *rec) {
  if (!rec)
    return;
  free(rec->key);
  free(rec->image_vec);
  free(rec->text_vec);
  free(rec->caption);
  free(rec->source);
  free(rec->thumb);
  free(rec->meta_json);
  free(rec->image);
  free(rec);
}

int vlm_db_foreach(vlm_db *db, vlm_db_visit_fn fn, void *arg) {
  return vlm_db_foreach2(db, 0, fn, arg);
}

int vlm_db_foreach2(vlm_db *db, unsigned flags, vlm_db_visit_fn fn,
                    void *arg) {
  vlm__reader *r;
  MDB_cursor *cur = NULL;
  MDB_val k, v;
  if (!db || !fn)
    return vlm_seterr(VLM_EINVAL, "foreach: NULL argument");
  if (flags & ~VLM_GET_IMAGE)
    return vlm_seterr(VLM_EINVAL, "foreach: unknown flags 0x%x", flags);
  int rc = begin_read(db, &r);
  if (rc)
    return rc;
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(r->txn, db->lm.keys, &cur)))) {
    rc = vlm__lmdb_err(rc, "foreach");
    goto done;
  }
  int mrc;
  for (mrc = vlm__mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
       mrc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    uint64_t id;
    vlm_record *rec;
    memcpy(&id, v.mv_data, 8);
    if ((rc = make_record(db, r->txn, id, 0, flags, &rec)))
      goto done;
    rc = fn(rec, arg);
    vlm_record_free(rec);
    if (rc)
      goto done;
  }
  rc = mrc == MDB_NOTFOUND ? 0 : vlm__lmdb_err(mrc, "foreach");
done:
  if (cur)
    mdb_cursor_close(cur);
  end_read(db, r);
  return rc;
}

int vlm_db_scan(vlm_db *db, uint64_t cursor, int count, char ***keys, int *n,
                uint64_t *next) {
  if (!db || !keys || !n || !next || count < 1)
    return vlm_seterr(VLM_EINVAL, "scan: bad argument");
  *keys = NULL;
  *n = 0;
  *next = 0;
  char **out = calloc((size_t)count, sizeof *out);
  if (!out)
    return vlm_seterr(VLM_ENOMEM, "scan");
  vlm__reader *r;
  MDB_cursor *cur = NULL;
  int rc = begin_read(db, &r), got = 0;
  if (rc) {
    free(out);
    return rc;
  }
  if ((rc = VLM__STORE("lmdb-read", vlm__mdb_cursor_open(r->txn, db->lm.items, &cur)))) {
    rc = vlm__lmdb_err(rc, "scan");
    goto done;
  }
  MDB_val k = {sizeof cursor, &cursor}, v;
  int mrc;
  for (mrc = vlm__mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); mrc == 0;
       mrc = vlm__mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    uint64_t id;
    memcpy(&id, k.mv_data, 8);
    if (got == count) {
      *next = id;
      break;
    }
    vlm__rec rec;
    if ((rc = vlm__rec_decode(v.mv_data, v.mv_size, &rec)))
      goto done;
    if (!(out[got] = dup_n(rec.key, rec.key_len))) {
      rc = vlm_seterr(VLM_ENOMEM, "scan");
      goto done;
    }
    got++;
  }
  if (mrc != 0 && mrc != MDB_NOTFOUND)
    rc = vlm__lmdb_err(mrc, "scan");
done:
  if (cur)
    mdb_cursor_close(cur);
  end_read(db, r);
  if (rc) {
    vlm_db_keys_free(out, got);
    *next = 0;
    return rc;
  }
  *keys = out;
  *n = got;
  return 0;
}

void vlm_db_keys_free(char **keys, int n) {
  if (!keys)
    return;
  for (int i = 0; i < n; i++)
    free(keys[i]);
  free(keys);
}

static uint64_t file_bytes(const char *dir, const char *name) {
  char path[PATH_MAX];
  struct stat st;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

int vlm_db_stat(vlm_db *db, vlm_db_info *info) {
  if (!db || !info)
    return vlm_seterr(VLM_EINVAL, "stat: NULL argument");
  memset(info, 0, sizeof *info);
  int rc = vlm__vindex_ensure(db);
  if (rc)
    return rc;
  pthread_rwlock_rdlock(&db->index_lock);
  pthread_rwlock_rdlock(&db->pub_lock);
  info->items = db->pub_items;
  info->image_vectors = db->pub_vecs[0];
  info->text_vectors = db->pub_vecs[1];
  info->seq = db->pub_seq;
  info->next_id = db->pub_next_id;
  pthread_rwlock_unlock(&db->pub_lock);
  info->index_trained = 1;
  for (int m = 0; m < VLM__NMOD; m++) {
    vlm__vindex *vx = &db->vx[m];
    int64_t count = vlm_index_count(vx->index);
    info->index_vectors += count;
    info->tombstones += vx->ntomb;
    info->tuned_effort[m] = vx->tuned;
    info->tuned_at[m] = vx->tuned_n;
    info->tuned_recall[m] = vx->tuned_recall;
    info->tuned_queries[m] = vx->tuned_queries;
    int64_t pending = vx->nlive - (count - vx->ntomb);
    int64_t published = m == 0 ? info->image_vectors : info->text_vectors;
    pending += published - vx->nlive; /* not yet seen by the index side */
    info->pending_vectors += pending > 0 ? pending : 0;
    if (!vlm_index_is_trained(vx->index))
      info->index_trained = 0;
  }
  snprintf(info->index_factory, sizeof info->index_factory, "%s",
           db->man.factory);
  for (int m = 0; m < VLM__NMOD; m++)
    if (db->man.ckpt[m].file[0])
      info->disk_bytes += file_bytes(db->dir, db->man.ckpt[m].file);
  if (db->man.live_file[0])
    info->disk_bytes += file_bytes(db->dir, db->man.live_file);
  info->keep_images = db->man.keep_images;
  pthread_rwlock_unlock(&db->index_lock);
  info->dim = db->man.dim;
  snprintf(info->model_id, sizeof info->model_id, "%s", db->man.model_id);
  snprintf(info->model_dir, sizeof info->model_dir, "%s", db->man.model_dir);
  snprintf(info->model_family, sizeof info->model_family, "%s",
           db->man.model_family);
  snprintf(info->image_orientation, sizeof info->image_orientation, "%s",
           db->man.image_orientation);
  info->shard = db->man.nslot_ranges ? db->man.shard : -1;
  if (db->man.nslot_ranges) {
    info->nshards = db->man.nshards;
    snprintf(info->cluster_digest, sizeof info->cluster_digest, "%s",
             db->man.cluster_digest);
    info->nslot_ranges = db->man.nslot_ranges;
    memcpy(info->slot_ranges, db->man.slot_ranges,
           (size_t)db->man.nslot_ranges * sizeof info->slot_ranges[0]);
  }
  info->format_version = db->man.format_version;
  info->nfields = db->man.nfields;
  for (int i = 0; i < db->man.nfields; i++) {
    info->field_types[i] = db->man.ftype[i];
    snprintf(info->field_names[i], sizeof info->field_names[i], "%s",
             db->man.fname[i]);
  }
  static const char *files[] = {"meta.sqlite", "meta.sqlite-wal",
                                "payload.lmdb/data.mdb", "manifest.json"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    info->disk_bytes += file_bytes(db->dir, files[i]);
  return 0;
}

int vlm_db_checkpoint(vlm_db *db) {
  if (!db)
    return vlm_seterr(VLM_EINVAL, "checkpoint: NULL argument");
  int rc = vlm__writable(db);
  if (rc)
    return rc;
  vlm__write_lock(db);
  rc = vlm__vindex_checkpoint(db);
  vlm__write_unlock(db);
  return rc;
}

int vlm_db_rebuild_meta(vlm_db *db) {
  if (!db)
    return vlm_seterr(VLM_EINVAL, "rebuild meta: NULL argument");
  if (db->readonly)
    return vlm_seterr(VLM_ESTATE, "%s is open read-only", db->dir);
  vlm__write_lock(db);
  /* pooled readers hold connections to the file being replaced */
  pthread_mutex_lock(&db->pool_mu);
  while (db->pool) {
    vlm__reader *r = db->pool;
    db->pool = r->next;
    vlm__reader_free(r);
  }
  pthread_mutex_unlock(&db->pool_mu);
  /* A rebuild that fails half-way leaves meta.sqlite without the rows:
   * writes are refused until a reopen repairs it, as after a failed
   * commit. */
  int rc = vlm__sql_rebuild(db, db->pub_seq);
  __atomic_store_n(&db->broken, rc != 0, __ATOMIC_RELEASE);
  vlm__write_unlock(db);
  return rc;
}

int vlm_db_readonly(const vlm_db *db) { return db && db->readonly; }

int vlm_db_adopt_index(vlm_db *db, int modality, const char *path) {
  if (!db || !path || modality < 0 || modality >= VLM__NMOD)
    return vlm_seterr(VLM_EINVAL, "adopt index: bad argument");
  int rc = vlm__writable(db);
  if (rc)
    return rc;
  vlm__write_lock(db);
  rc = vlm__vindex_adopt(db, modality, path);
  vlm__write_unlock(db);
  return rc;
}

/* The manifest is rewritten whole (tmp, fsync, rename, fsync of the
 * directory), so a crash leaves either the old slots or the new.  The
 * write lock orders it with batches (whose keys check_slot tests against
 * db->man) and with checkpoints (which rewrite the manifest too). */
int vlm_db_set_slots(vlm_db *db, const char *digest,
                     const vlm_slot_range *ranges, int n) {
  if (!db || !digest || !ranges || n < 1)
    return vlm_seterr(VLM_EINVAL, "set slots: bad argument");
  int rc = vlm__writable(db);
  if (rc)
    return rc;
  vlm__write_lock(db);
  if (!db->man.nslot_ranges) {
    rc = vlm_seterr(VLM_EINVAL, "%s: not a shard of a cluster (made without "
                    "slot ranges)", db->dir);
    goto done;
  }
  vlm__manifest next = db->man;
  vlm_db_config cfg = {.cluster_digest = digest,
                       .shard = db->man.shard,
                       .nshards = db->man.nshards,
                       .slot_ranges = ranges,
                       .nslot_ranges = n};
  if ((rc = set_cluster(&next, &cfg)) ||
      (rc = vlm__manifest_write(db->dir, &next)))
    goto done;
  pthread_rwlock_wrlock(&db->index_lock);
  memcpy(db->man.slot_ranges, next.slot_ranges, sizeof next.slot_ranges);
  db->man.nslot_ranges = next.nslot_ranges;
  memcpy(db->man.cluster_digest, next.cluster_digest,
         sizeof next.cluster_digest);
  pthread_rwlock_unlock(&db->index_lock);
done:
  vlm__write_unlock(db);
  return rc;
}

int vlm_db_keeps_images(vlm_db *db) {
  if (!db)
    return 0;
  pthread_rwlock_rdlock(&db->index_lock);
  int on = db->man.keep_images;
  pthread_rwlock_unlock(&db->index_lock);
  return on;
}

int vlm_db_set_keep_images(vlm_db *db, int on) {
  if (!db)
    return vlm_seterr(VLM_EINVAL, "set keep images: NULL argument");
  int rc = vlm__writable(db);
  if (rc)
    return rc;
  vlm__write_lock(db);
  vlm__manifest next = db->man;
  next.keep_images = on != 0;
  if (next.keep_images != db->man.keep_images &&
      !(rc = vlm__manifest_write(db->dir, &next))) {
    pthread_rwlock_wrlock(&db->index_lock);
    db->man.keep_images = next.keep_images;
    pthread_rwlock_unlock(&db->index_lock);
  }
  vlm__write_unlock(db);
  return rc;
}

int vlm_db_reindex(vlm_db *db, const char *factory) {
  if (!db)
    return vlm_seterr(VLM_EINVAL, "reindex: NULL argument");
  int rc = vlm__writable(db);
  if (rc)
    return rc;
  vlm__write_lock(db);
  rc = vlm__vindex_reindex(db, factory);
  vlm__write_unlock(db);
  return rc;
}
