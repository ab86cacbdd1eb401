/* replica.c - read replicas by log shipping.
 *
 * Primary side: VLM.SYNC after port answers with the batches after a
 * replica's batch number (vlm_db_changes' buffer, one bulk string) and
 * records what the replica has applied, so that checkpoints keep the log
 * it still needs (bounded by repl_backlog batches: a replica further
 * behind is answered -RESEED and seeds itself again).  VLM.SEED BEGIN /
 * READ / END hands out an online backup (vlm_db_backup) file by file, in
 * bounded chunks, for a replica's first copy.
 *
 * Replica side, on the loop thread: one hiredis connection to the
 * primary (the libuv adapter, as cluster.c's), a VLM.SYNC request at a
 * time; a buffer with batches goes to the worker pool, which applies it
 * through vlm_db_apply_changes (one durable batch per buffer, the
 * primary's batch numbers); the next request leaves when it is applied,
 * at once while the primary is ahead, else after POLL_MS.  So the batch
 * number a replica reports (INFO replication's slave_repl_offset, and the
 * `after` of its next request) is always one it holds durably.  Writes
 * from clients are refused with -READONLY while the server follows a
 * primary; REPLICAOF NO ONE stops following (promotion by hand).
 *
 * Thread rules: everything in vlm__repl_state is guarded by mu; the
 * hiredis context, the timer and the async handle belong to the loop.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "netint.h"
#include "vlm_error.h"
#include "vlm_file.h"

#define POLL_MS 10          /* a caught-up replica asks again after this */
#define RETRY_MS 500        /* after a failed connection or request */
#define HOLD_MS 60000       /* a replica silent this long no longer holds
                               the log */
#define MAX_PEERS 64
#define MAX_SEEDS 8
#define SEED_CHUNK ((size_t)4 << 20)
#define SEED_MAX_FILES 256
#define SEED_IDLE_MS (30 * 60 * 1000) /* an abandoned seed is removed */
#define DEFAULT_BACKLOG 1000000

typedef struct {
  char ip[64];
  int port;          /* the replica's own listening port */
  uint64_t ack;      /* the batch it holds (its last request's `after`) */
  uint64_t seen_ms;
  int seeding;
} peer;

typedef struct {
  uint64_t token;    /* 0: free */
  char ip[64];       /* the replica seeding itself, as a peer */
  int port;
  char dir[PATH_MAX];
  uint64_t seq;
  int nfiles;
  char names[SEED_MAX_FILES][128];
  uint64_t sizes[SEED_MAX_FILES];
  uint64_t used_ms;
} seed;

typedef struct {
  vlm__task task;
  vlm_server *srv;
  uint64_t gen;
  void *buf;
  size_t len;
  int rc;
  uint64_t seq;
  unsigned flags;      /* the buffer's (VLM_CHANGES_PARTIAL) */
  int has_digest;      /* the log digest of the batch it reached */
  uint64_t digest;
  int items;
  char err[512];
} apply_task;

struct vlm__repl_state {
  pthread_mutex_t mu;
  /* primary side */
  peer peers[MAX_PEERS];
  int npeers;
  uint64_t backlog;
  uint64_t head;        /* this database's last batch, as last seen */
  seed seeds[MAX_SEEDS];
  uint64_t next_token;
  /* replica side */
  int replica;          /* following a primary: client writes refused */
  char host[256];
  int port;
  uint64_t gen;         /* bumped when the primary changes */
  uint64_t applied;     /* the last batch applied (durable) */
  int has_digest;       /* ... and its digest (vlm_db_log_digest) */
  uint64_t digest;
  int items;
  uint64_t phead;       /* the primary's last batch, as last heard */
  uint64_t last_io_ms;
  uint64_t applied_total; /* batches applied since start */
  int link_up, busy, syncs;
  int partial;          /* the last buffer applied was partial: items may
                           lack until a whole one is (INFO's
                           master_sync_in_progress) */
  int reseed;           /* the primary asks for a new seed: run returns */
  char error[512];
  /* loop-only */
  int started, stopping;
  redisAsyncContext *ac;
  uv_timer_t timer;
  uv_async_t async;
  apply_task *task;     /* on the pool, or done and not yet taken */
};

/* ======================================================================
 * The persisted role (VLM_REPLICAOF_FILE)
 * ==================================================================== */

static int fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0) {
    int e = errno;
    if (fd >= 0)
      close(fd);
    return vlm_seterr(VLM_EIO, "fsync %s: %s", dir, strerror(e));
  }
  close(fd);
  return 0;
}

/* Keep the role: addr ("host:port") written to a temporary file, synced
 * and renamed over VLM_REPLICAOF_FILE, or (addr NULL) the file removed;
 * the directory synced either way.  No database directory (a server on
 * a database opened by its caller without one): nothing to keep. */
static int persist_role(const vlm_server *srv, const char *addr) {
  if (!srv->db_dir[0])
    return 0;
  char path[PATH_MAX], tmp[PATH_MAX + 8];
  snprintf(path, sizeof path, "%s/%s", srv->db_dir, VLM_REPLICAOF_FILE);
  if (!addr) {
    if (unlink(path) != 0 && errno != ENOENT)
      return vlm_seterr(VLM_EIO, "remove %s: %s", path, strerror(errno));
    return fsync_dir(srv->db_dir);
  }
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  char line[320];
  int n = snprintf(line, sizeof line, "%s\n", addr);
  if (fd < 0 || vlm_write_all(fd, line, (size_t)n) != 0 || fsync(fd) != 0) {
    int e = errno;
    if (fd >= 0)
      close(fd);
    unlink(tmp);
    return vlm_seterr(VLM_EIO, "write %s: %s", tmp, strerror(e));
  }
  close(fd);
  if (rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return vlm_seterr(VLM_EIO, "rename %s: %s", tmp, strerror(e));
  }
  return fsync_dir(srv->db_dir);
}

int vlm_replica_role_read(const char *dir, char *addr, size_t cap) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", dir, VLM_REPLICAOF_FILE);
  uint8_t *data;
  size_t len;
  int rc = vlm_read_file(path, 1024, &data, &len);
  if (rc == VLM_ENOTFOUND) {
    vlm_clearerr();
    return 0;
  }
  if (rc < 0)
    return rc;
  while (len && (data[len - 1] == '\n' || data[len - 1] == '\r'))
    data[--len] = '\0';
  char host[256];
  int port;
  if (len == 0 || len >= cap || memchr(data, '\n', len) ||
      vlm__split_address((const char *)data, host, sizeof host, &port) < 0) {
    free(data);
    return vlm_seterr(VLM_ECORRUPT, "%s: not host:port (it names the primary "
                      "this replica follows; remove it to serve as a "
                      "primary)", path);
  }
  memcpy(addr, data, len + 1);
  free(data);
  return 1;
}

/* ======================================================================
 * Setup and teardown
 * ==================================================================== */

int vlm__repl_init(vlm_server *srv, const char *replica_of,
                   uint64_t backlog) {
  vlm__repl_state *rs = calloc(1, sizeof *rs);
  if (!rs)
    return vlm_seterr(VLM_ENOMEM, "replication");
  pthread_mutex_init(&rs->mu, NULL);
  rs->backlog = backlog ? backlog : DEFAULT_BACKLOG;
  rs->next_token = 1;
  if (replica_of && *replica_of) {
    if (vlm__split_address(replica_of, rs->host, sizeof rs->host, &rs->port) <
        0) {
      pthread_mutex_destroy(&rs->mu);
      free(rs);
      return vlm_seterr(VLM_EINVAL, "replica of '%s': not host:port",
                        replica_of);
    }
    rs->replica = 1;
  }
  srv->repl = rs;
  if (rs->replica) /* a restart follows the same primary */
    return persist_role(srv, replica_of);
  return 0;
}

static void rm_tree(const char *path) {
  DIR *d = opendir(path);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
        continue;
      char p[PATH_MAX];
      snprintf(p, sizeof p, "%s/%s", path, e->d_name);
      struct stat st;
      if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
        rm_tree(p);
      else
        unlink(p);
    }
    closedir(d);
  }
  rmdir(path);
}

void vlm__repl_free(vlm_server *srv) {
  vlm__repl_state *rs = srv->repl;
  if (!rs)
    return;
  for (int i = 0; i < MAX_SEEDS; i++)
    if (rs->seeds[i].token)
      rm_tree(rs->seeds[i].dir);
  if (rs->task) {
    free(rs->task->buf);
    free(rs->task);
  }
  pthread_mutex_destroy(&rs->mu);
  free(rs);
  srv->repl = NULL;
}

int vlm__repl_readonly(const vlm_server *srv) {
  return srv->repl && srv->repl->replica;
}

int vlm_server_reseed_needed(const vlm_server *srv, char *primary,
                             size_t cap) {
  if (!srv || !srv->repl || !srv->repl->reseed)
    return 0;
  if (primary && cap)
    snprintf(primary, cap, strchr(srv->repl->host, ':') ? "[%s]:%d" : "%s:%d",
             srv->repl->host, srv->repl->port);
  return 1;
}

/* The primary no longer serves what this replica needs, or they hold
 * different histories: stop serving, so that the caller seeds again. */
static void ask_reseed(vlm_server *srv, const char *why) {
  vlm__repl_state *rs = srv->repl;
  vlm__server_log(srv, "replication: %s:%d: %s; seeding again", rs->host,
                  rs->port, why);
  pthread_mutex_lock(&rs->mu);
  rs->reseed = 1;
  pthread_mutex_unlock(&rs->mu);
  vlm_server_stop(srv);
}

/* ======================================================================
 * The primary side: VLM.SYNC and the log it keeps for replicas
 * ==================================================================== */

/* Hold the log for every replica heard from lately, no further back than
 * backlog batches.  Caller holds mu. */
static void update_hold(vlm_server *srv, uint64_t now) {
  vlm__repl_state *rs = srv->repl;
  uint64_t hold = UINT64_MAX;
  for (int i = 0; i < rs->npeers; i++)
    if (now - rs->peers[i].seen_ms < HOLD_MS && rs->peers[i].ack < hold)
      hold = rs->peers[i].ack;
  if (hold != UINT64_MAX && rs->head > rs->backlog &&
      hold < rs->head - rs->backlog)
    hold = rs->head - rs->backlog;
  /* the entry of the replica's own batch too: its history check */
  vlm_db_retain_log(srv->db, hold == UINT64_MAX ? hold : hold ? hold - 1 : 0);
}

/* Note what the replica at ip:port holds.  Caller holds mu. */
static void note_peer(vlm__repl_state *rs, const char *ip, int port,
                      uint64_t ack, int seeding, uint64_t now) {
  int slot = -1, oldest = 0;
  for (int i = 0; i < rs->npeers; i++) {
    if (!strcmp(rs->peers[i].ip, ip) && rs->peers[i].port == port) {
      slot = i;
      break;
    }
    if (rs->peers[i].seen_ms < rs->peers[oldest].seen_ms)
      oldest = i;
  }
  if (slot < 0)
    slot = rs->npeers < MAX_PEERS ? rs->npeers++ : oldest;
  peer *p = &rs->peers[slot];
  snprintf(p->ip, sizeof p->ip, "%s", ip);
  p->port = port;
  p->ack = ack;
  p->seen_ms = now;
  p->seeding = seeding;
}

typedef struct {
  uint64_t after;
  long port;
  int has_digest;
  uint64_t digest;     /* vlm_db_log_digest of the replica's batch after */
  uint64_t items;      /* ... over this many live items */
  char ip[64];
} sync_state;

/* The address of a connection without its port. */
static void conn_ip(const vlm__conn *conn, char *ip, size_t cap) {
  const char *a = conn->addr, *colon = strrchr(a, ':');
  size_t n = colon ? (size_t)(colon - a) : strlen(a);
  if (n >= 2 && a[0] == '[' && a[n - 1] == ']') {
    a++;
    n -= 2;
  }
  if (n >= cap)
    n = cap - 1;
  memcpy(ip, a, n);
  ip[n] = '\0';
}

static int parse_u64(const vlm__resp_arg *a, uint64_t *out) {
  char tmp[32];
  if (a->len == 0 || a->len >= sizeof tmp)
    return -1;
  memcpy(tmp, a->ptr, a->len);
  tmp[a->len] = '\0';
  char *end;
  errno = 0;
  unsigned long long v = strtoull(tmp, &end, 10);
  if (*end || errno || tmp[0] == '-')
    return -1;
  *out = v;
  return 0;
}

static void *new_state(vlm__ctx *ctx, size_t size) {
  void *st = calloc(1, size);
  if (!st) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return NULL;
  }
  ctx->job->state = st;
  ctx->job->state_free = free;
  return st;
}

/* VLM.SYNC after port [digest items] */
int vlm__repl_sync_proc(vlm__ctx *ctx) {
  uint64_t after, port, digest = 0, items = 0;
  if ((ctx->argc != 3 && ctx->argc != 5) ||
      parse_u64(&ctx->argv[1], &after) < 0 ||
      parse_u64(&ctx->argv[2], &port) < 0 || port > 65535 ||
      (ctx->argc == 5 && (parse_u64(&ctx->argv[3], &digest) < 0 ||
                          parse_u64(&ctx->argv[4], &items) < 0))) {
    vlm__reply_error(ctx->out, "ERR", "VLM.SYNC after port [digest items]: "
                     "a batch number, a port (0..65535), and that batch's "
                     "digest and live items (vlm_db_log_digest)");
    return -1;
  }
  sync_state *st = new_state(ctx, sizeof *st);
  if (!st)
    return -1;
  st->after = after;
  st->port = (long)port;
  st->has_digest = ctx->argc == 5;
  st->digest = digest;
  st->items = items;
  conn_ip(ctx->conn, st->ip, sizeof st->ip);
  return 0;
}

void vlm__repl_sync_exec(vlm__job *job) {
  vlm_server *srv = job->srv;
  vlm__repl_state *rs = srv->repl;
  sync_state *st = job->state;
  void *buf = NULL;
  size_t len = 0;
  uint64_t last = 0, head = 0, mine;
  int mine_items;
  /* the same batch number must be the same batch */
  if (st->has_digest && st->after &&
      vlm_db_log_digest(srv->db, st->after, &mine, &mine_items) == 0 &&
      (uint64_t)mine_items == st->items && mine != st->digest) {
    vlm__reply_error(&job->reply, "RESEED", "batch %llu here is not the "
                     "replica's batch %llu: the histories differ (a replica "
                     "that went on without this primary); seed it again",
                     (unsigned long long)st->after,
                     (unsigned long long)st->after);
    return;
  }
  int rc = vlm_db_changes(srv->db, st->after, 0, &buf, &len, &last, &head);
  if (rc == VLM_ENOTFOUND || rc == VLM_ESTATE) {
    vlm__reply_error(&job->reply, "RESEED", "%s", vlm_errmsg());
    return;
  }
  if (rc < 0) {
    vlm__reply_error(&job->reply, "ERR", "%s: %s", vlm_strerror(rc),
                     vlm_errmsg());
    return;
  }
  vlm__reply_bulk(&job->reply, buf, len);
  free(buf);
  uint64_t now = vlm__now_ms();
  pthread_mutex_lock(&rs->mu);
  rs->head = head;
  note_peer(rs, st->ip, (int)st->port, st->after, 0, now);
  update_hold(srv, now);
  pthread_mutex_unlock(&rs->mu);
}

/* ======================================================================
 * The primary side: VLM.SEED, an online backup handed out in chunks
 * ==================================================================== */

typedef struct {
  int op;             /* 0 BEGIN, 1 READ, 2 END */
  uint64_t token, offset;
  long port;
  char name[128];
  char ip[64];
} seed_state;

int vlm__repl_seed_proc(vlm__ctx *ctx) {
  const vlm__resp_arg *sub = &ctx->argv[1];
  seed_state *st = new_state(ctx, sizeof *st);
  if (!st)
    return -1;
  conn_ip(ctx->conn, st->ip, sizeof st->ip);
  uint64_t v;
  if (sub->len == 5 && !strncasecmp(sub->ptr, "BEGIN", 5) &&
      ctx->argc == 3 && parse_u64(&ctx->argv[2], &v) == 0 && v <= 65535) {
    st->op = 0;
    st->port = (long)v;
    return 0;
  }
  if (sub->len == 4 && !strncasecmp(sub->ptr, "READ", 4) && ctx->argc == 5 &&
      parse_u64(&ctx->argv[2], &st->token) == 0 &&
      ctx->argv[3].len < sizeof st->name &&
      parse_u64(&ctx->argv[4], &st->offset) == 0) {
    st->op = 1;
    memcpy(st->name, ctx->argv[3].ptr, ctx->argv[3].len);
    return 0;
  }
  if (sub->len == 3 && !strncasecmp(sub->ptr, "END", 3) && ctx->argc == 3 &&
      parse_u64(&ctx->argv[2], &st->token) == 0) {
    st->op = 2;
    return 0;
  }
  vlm__reply_error(ctx->out, "ERR", "VLM.SEED BEGIN port | READ token file "
                   "offset | END token");
  return -1;
}

/* List the regular files of a backup (one level of folders: payload.lmdb/)
 * into s.  0 or -1 (too many, or a name too long). */
static int list_files(seed *s, const char *dir, const char *prefix) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s%s%s", dir, *prefix ? "/" : "", prefix);
  DIR *d = opendir(path);
  if (!d)
    return -1;
  struct dirent *e;
  int rc = 0;
  while (rc == 0 && (e = readdir(d))) {
    size_t nl = strlen(e->d_name);
    if (e->d_name[0] == '.' || !strcmp(e->d_name, "lock.mdb") ||
        !strcmp(e->d_name, "LOCK") ||
        (nl > 4 && !strcmp(e->d_name + nl - 4, "-shm")))
      continue; /* locks and SQLite's shared memory are made at open */
    char name[256], p[PATH_MAX];
    snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "/" : "",
             e->d_name);
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    if (lstat(p, &st) != 0)
      continue;
    if (S_ISDIR(st.st_mode) && !*prefix) {
      rc = list_files(s, dir, name);
    } else if (S_ISREG(st.st_mode)) {
      if (s->nfiles == SEED_MAX_FILES || strlen(name) >= sizeof s->names[0])
        rc = -1;
      else {
        snprintf(s->names[s->nfiles], sizeof s->names[0], "%s", name);
        s->sizes[s->nfiles++] = (uint64_t)st.st_size;
      }
    }
  }
  closedir(d);
  return rc;
}

static seed *find_seed(vlm__repl_state *rs, uint64_t token) {
  for (int i = 0; i < MAX_SEEDS; i++)
    if (token && rs->seeds[i].token == token)
      return &rs->seeds[i];
  return NULL;
}

static void seed_begin(vlm__job *job, seed_state *st) {
  vlm_server *srv = job->srv;
  vlm__repl_state *rs = srv->repl;
  char dir[PATH_MAX];
  uint64_t now = vlm__now_ms(), token;
  /* abandoned seeds first */
  pthread_mutex_lock(&rs->mu);
  for (int i = 0; i < MAX_SEEDS; i++)
    if (rs->seeds[i].token && now - rs->seeds[i].used_ms > SEED_IDLE_MS) {
      rm_tree(rs->seeds[i].dir);
      rs->seeds[i].token = 0;
    }
  token = rs->next_token++;
  pthread_mutex_unlock(&rs->mu);
  /* beside the database (same filesystem), never inside it */
  char base[PATH_MAX];
  snprintf(base, sizeof base, "%s", srv->db_dir[0] ? srv->db_dir : "/tmp/vlmdb");
  for (size_t n = strlen(base); n > 1 && base[n - 1] == '/'; n--)
    base[n - 1] = '\0';
  snprintf(dir, sizeof dir, "%s.seed-%d-%llu", base, (int)getpid(),
           (unsigned long long)token);
  rm_tree(dir);
  vlm_db_backup_info info;
  int rc = vlm_db_backup(srv->db, dir, &info);
  if (rc < 0) {
    vlm__reply_error(&job->reply, "ERR", "VLM.SEED: backup: %s",
                     vlm_errmsg());
    return;
  }
  seed *s = calloc(1, sizeof *s);
  if (!s) {
    rm_tree(dir);
    vlm__reply_error(&job->reply, "ERR", "out of memory");
    return;
  }
  snprintf(s->dir, sizeof s->dir, "%s", dir);
  snprintf(s->ip, sizeof s->ip, "%s", st->ip);
  s->port = (int)st->port;
  s->seq = info.seq;
  s->token = token;
  s->used_ms = now;
  if (list_files(s, dir, "") < 0) {
    rm_tree(dir);
    free(s);
    vlm__reply_error(&job->reply, "ERR", "VLM.SEED: cannot list %s", dir);
    return;
  }
  pthread_mutex_lock(&rs->mu);
  int slot = -1;
  for (int i = 0; i < MAX_SEEDS && slot < 0; i++)
    if (!rs->seeds[i].token)
      slot = i;
  if (slot >= 0) {
    rs->seeds[slot] = *s;
    /* the log after the copy's batch is kept while the replica seeds */
    note_peer(rs, st->ip, (int)st->port, info.seq, 1, now);
    update_hold(srv, now);
  }
  pthread_mutex_unlock(&rs->mu);
  if (slot < 0) {
    rm_tree(dir);
    free(s);
    vlm__reply_error(&job->reply, "BUSY", "VLM.SEED: %d seeds are under way",
                     MAX_SEEDS);
    return;
  }
  vlm__reply_array(&job->reply, 3);
  vlm__reply_int(&job->reply, (long long)token);
  vlm__reply_int(&job->reply, (long long)info.seq);
  vlm__reply_array(&job->reply, 2L * s->nfiles);
  for (int i = 0; i < s->nfiles; i++) {
    vlm__reply_cstr(&job->reply, s->names[i]);
    vlm__reply_int(&job->reply, (long long)s->sizes[i]);
  }
  free(s);
}

static void seed_read(vlm__job *job, seed_state *st) {
  vlm__repl_state *rs = job->srv->repl;
  char path[PATH_MAX];
  uint64_t size = 0;
  int found = 0;
  pthread_mutex_lock(&rs->mu);
  seed *s = find_seed(rs, st->token);
  if (s)
    for (int i = 0; i < s->nfiles; i++)
      if (!strcmp(s->names[i], st->name)) {
        snprintf(path, sizeof path, "%s/%s", s->dir, s->names[i]);
        size = s->sizes[i];
        found = 1;
        s->used_ms = vlm__now_ms();
      }
  pthread_mutex_unlock(&rs->mu);
  if (!found) {
    vlm__reply_error(&job->reply, "ERR", "VLM.SEED READ: no file %s in seed "
                     "%llu", st->name, (unsigned long long)st->token);
    return;
  }
  size_t n = st->offset >= size ? 0
             : size - st->offset < SEED_CHUNK ? (size_t)(size - st->offset)
                                              : SEED_CHUNK;
  char *buf = malloc(n ? n : 1);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t got = 0;
  while (buf && fd >= 0 && (size_t)got < n) {
    ssize_t r = pread(fd, buf + got, n - (size_t)got,
                      (off_t)(st->offset + (uint64_t)got));
    if (r <= 0)
      break;
    got += r;
  }
  if (fd >= 0)
    close(fd);
  if (!buf || (size_t)got != n)
    vlm__reply_error(&job->reply, "ERR", "VLM.SEED READ: %s: %s", st->name,
                     buf ? strerror(errno) : "out of memory");
  else
    vlm__reply_bulk(&job->reply, buf, n);
  free(buf);
}

void vlm__repl_seed_exec(vlm__job *job) {
  seed_state *st = job->state;
  vlm__repl_state *rs = job->srv->repl;
  if (st->op == 0) {
    seed_begin(job, st);
  } else if (st->op == 1) {
    seed_read(job, st);
  } else {
    char dir[PATH_MAX] = "";
    pthread_mutex_lock(&rs->mu);
    seed *s = find_seed(rs, st->token);
    if (s) {
      snprintf(dir, sizeof dir, "%s", s->dir);
      s->token = 0;
      /* copied: the replica's first VLM.SYNC (from the same address,
       * when it gave its port) takes over this hold */
      for (int i = 0; i < rs->npeers; i++)
        if (rs->peers[i].seeding && rs->peers[i].port == s->port &&
            !strcmp(rs->peers[i].ip, s->ip)) {
          rs->peers[i].seeding = 0;
          rs->peers[i].seen_ms = vlm__now_ms();
        }
    }
    pthread_mutex_unlock(&rs->mu);
    if (dir[0])
      rm_tree(dir);
    vlm__reply_int(&job->reply, dir[0] != 0);
  }
}

/* ======================================================================
 * The replica side: following a primary
 * ==================================================================== */

static void send_sync(vlm_server *srv);

static void set_error(vlm__repl_state *rs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_error(vlm__repl_state *rs, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pthread_mutex_lock(&rs->mu);
  vsnprintf(rs->error, sizeof rs->error, fmt, ap);
  pthread_mutex_unlock(&rs->mu);
  va_end(ap);
}

static void on_timer(uv_timer_t *t) { send_sync(t->data); }

static void again_in(vlm_server *srv, uint64_t ms) {
  vlm__repl_state *rs = srv->repl;
  if (!rs->stopping && rs->replica)
    uv_timer_start(&rs->timer, on_timer, ms, 0);
}

static void drop_link(vlm__repl_state *rs) {
  redisAsyncContext *ac = rs->ac;
  pthread_mutex_lock(&rs->mu);
  rs->link_up = 0;
  pthread_mutex_unlock(&rs->mu);
  if (!ac)
    return;
  rs->ac = NULL;
  ac->data = NULL;
  redisAsyncFree(ac); /* pending callbacks run now, with no reply */
}

static void on_connect(const redisAsyncContext *ac, int status) {
  vlm_server *srv = ac->data;
  if (!srv || status == REDIS_OK)
    return;
  vlm__repl_state *rs = srv->repl;
  if (rs->ac == ac) {
    rs->ac = NULL; /* hiredis frees it after this call */
    set_error(rs, "cannot connect to %s:%d: %s", rs->host, rs->port,
              ac->errstr);
  }
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  vlm_server *srv = ac->data;
  (void)status;
  if (!srv)
    return;
  vlm__repl_state *rs = srv->repl;
  if (rs->ac == ac) {
    rs->ac = NULL;
    pthread_mutex_lock(&rs->mu);
    rs->link_up = 0;
    pthread_mutex_unlock(&rs->mu);
  }
}

static void apply_run(vlm__task *task) {
  apply_task *t = (apply_task *)task;
  t->rc = vlm_db_apply_changes(t->srv->db, t->buf, t->len, &t->seq);
  if (t->rc < 0)
    snprintf(t->err, sizeof t->err, "%s", vlm_errmsg());
  else
    t->has_digest =
        vlm_db_log_digest(t->srv->db, t->seq, &t->digest, &t->items) == 0;
  free(t->buf);
  t->buf = NULL;
  uv_async_send(&t->srv->repl->async);
}

/* A buffer was applied (or refused) on the pool: note it and go on. */
static void on_applied(uv_async_t *async) {
  vlm_server *srv = async->data;
  vlm__repl_state *rs = srv->repl;
  apply_task *t = rs->task;
  if (!t || t->buf) /* not done yet (a stray wake-up) */
    return;
  rs->task = NULL;
  pthread_mutex_lock(&rs->mu);
  rs->busy = 0;
  if (t->rc == 0) {
    rs->applied_total += t->seq - rs->applied;
    if (t->seq != rs->applied || t->has_digest) {
      rs->has_digest = t->has_digest;
      rs->digest = t->digest;
      rs->items = t->items;
    }
    rs->applied = t->seq;
    rs->partial = (t->flags & VLM_CHANGES_PARTIAL) != 0;
  }
  int current = t->gen == rs->gen && rs->replica;
  uint64_t head = rs->phead, applied = rs->applied;
  pthread_mutex_unlock(&rs->mu);
  if (t->rc == VLM_ESTATE && current) {
    /* another history (a key or an id that is not where the primary's
     * batches expect it), or a database that refuses writes */
    set_error(rs, "applying the primary's batches: %s", t->err);
    ask_reseed(srv, t->err);
  } else if (t->rc < 0 && current) {
    set_error(rs, "applying the primary's batches: %s", t->err);
    vlm__server_log(srv, "replication: applying batches: %s", t->err);
    again_in(srv, RETRY_MS);
  } else if (current) {
    if (applied < head)
      send_sync(srv);
    else
      again_in(srv, POLL_MS);
  }
  free(t);
}

static void on_sync(redisAsyncContext *ac, void *r, void *privdata) {
  vlm_server *srv = ac->data;
  redisReply *reply = r;
  if (!srv)
    return; /* the link was dropped (REPLICAOF, shutdown) */
  vlm__repl_state *rs = srv->repl;
  uint64_t gen = (uint64_t)(uintptr_t)privdata;
  pthread_mutex_lock(&rs->mu);
  int current = gen == rs->gen && rs->replica && !rs->stopping;
  if (current)
    rs->busy = 0;
  pthread_mutex_unlock(&rs->mu);
  if (!current)
    return;
  if (!reply) {
    set_error(rs, "lost the connection to %s:%d", rs->host, rs->port);
    again_in(srv, RETRY_MS);
    return;
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    set_error(rs, "%s:%d answered: %s", rs->host, rs->port, reply->str);
    if (!strncmp(reply->str, "RESEED", 6)) {
      ask_reseed(srv, reply->str);
      return;
    }
    again_in(srv, RETRY_MS);
    return;
  }
  uint64_t first, last, head;
  unsigned flags = 0;
  if (reply->type != REDIS_REPLY_STRING ||
      vlm_db_changes_info(reply->str, reply->len, &first, &last, &head,
                          &flags) < 0) {
    set_error(rs, "%s:%d answered VLM.SYNC with something else", rs->host,
              rs->port);
    again_in(srv, RETRY_MS);
    return;
  }
  pthread_mutex_lock(&rs->mu);
  rs->link_up = 1;
  rs->syncs++;
  rs->last_io_ms = vlm__now_ms();
  rs->phead = head;
  rs->error[0] = '\0';
  pthread_mutex_unlock(&rs->mu);
  if (last < first) { /* nothing new */
    again_in(srv, POLL_MS);
    return;
  }
  apply_task *t = calloc(1, sizeof *t);
  if (t && !(t->buf = malloc(reply->len))) {
    free(t);
    t = NULL;
  }
  if (!t) {
    set_error(rs, "out of memory");
    again_in(srv, RETRY_MS);
    return;
  }
  memcpy(t->buf, reply->str, reply->len);
  t->len = reply->len;
  t->flags = flags;
  t->srv = srv;
  t->gen = gen;
  t->task.run = apply_run;
  rs->task = t;
  pthread_mutex_lock(&rs->mu);
  rs->busy = 1;
  pthread_mutex_unlock(&rs->mu);
  vlm__pool_submit(&srv->pool, &t->task);
}

static void send_sync(vlm_server *srv) {
  vlm__repl_state *rs = srv->repl;
  if (rs->stopping || !rs->replica || rs->task || rs->busy)
    return;
  if (!rs->ac) {
    redisAsyncContext *ac = redisAsyncConnect(rs->host, rs->port);
    if (!ac || ac->err || vlm__redis_attach(srv, ac) < 0) {
      set_error(rs, "cannot connect to %s:%d: %s", rs->host, rs->port,
                ac ? ac->errstr : "out of memory");
      if (ac)
        redisAsyncFree(ac);
      again_in(srv, RETRY_MS);
      return;
    }
    ac->data = srv;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rs->ac = ac;
    /* a primary and its replicas share the password (Redis's masterauth) */
    if (srv->password)
      redisAsyncCommand(ac, NULL, NULL, "AUTH %b", srv->password,
                        srv->password_len);
  }
  pthread_mutex_lock(&rs->mu);
  uint64_t after = rs->applied, gen = rs->gen, digest = rs->digest;
  int has_digest = rs->has_digest, items = rs->items;
  rs->busy = 1;
  pthread_mutex_unlock(&rs->mu);
  int rc = has_digest
               ? redisAsyncCommand(rs->ac, on_sync, (void *)(uintptr_t)gen,
                                   "VLM.SYNC %llu %d %llu %d",
                                   (unsigned long long)after, srv->port,
                                   (unsigned long long)digest, items)
               : redisAsyncCommand(rs->ac, on_sync, (void *)(uintptr_t)gen,
                                   "VLM.SYNC %llu %d",
                                   (unsigned long long)after, srv->port);
  if (rc != REDIS_OK) {
    pthread_mutex_lock(&rs->mu);
    rs->busy = 0;
    pthread_mutex_unlock(&rs->mu);
    drop_link(rs);
    again_in(srv, RETRY_MS);
  }
}

int vlm__repl_start(vlm_server *srv) {
  vlm__repl_state *rs = srv->repl;
  vlm_db_info info;
  int rc = vlm_db_stat(srv->db, &info);
  if (rc < 0)
    return rc;
  uv_timer_init(&srv->loop, &rs->timer);
  rs->timer.data = srv;
  uv_async_init(&srv->loop, &rs->async, on_applied);
  rs->async.data = srv;
  rs->started = 1;
  uint64_t digest = 0;
  int items = 0;
  int has_digest =
      vlm_db_log_digest(srv->db, info.seq, &digest, &items) == 0;
  pthread_mutex_lock(&rs->mu);
  rs->applied = info.seq;
  rs->head = info.seq;
  rs->has_digest = has_digest;
  rs->digest = digest;
  rs->items = items;
  pthread_mutex_unlock(&rs->mu);
  if (rs->replica) {
    vlm__server_log(srv, "replica of %s:%d from batch %llu", rs->host,
                    rs->port, (unsigned long long)info.seq);
    send_sync(srv);
  }
  return 0;
}

void vlm__repl_stop(vlm_server *srv) {
  vlm__repl_state *rs = srv->repl;
  if (!rs || !rs->started)
    return;
  rs->stopping = 1;
  uv_timer_stop(&rs->timer);
  drop_link(rs);
}

void vlm__repl_close(vlm_server *srv) {
  vlm__repl_state *rs = srv->repl;
  if (!rs || !rs->started)
    return;
  rs->started = 0;
  if (!uv_is_closing((uv_handle_t *)&rs->timer))
    uv_close((uv_handle_t *)&rs->timer, NULL);
  if (!uv_is_closing((uv_handle_t *)&rs->async))
    uv_close((uv_handle_t *)&rs->async, NULL);
}

/* Forget replicas not heard from lately (cron, loop). */
void vlm__repl_cron(vlm_server *srv) {
  vlm__repl_state *rs = srv->repl;
  if (!rs)
    return;
  uint64_t now = vlm__now_ms();
  pthread_mutex_lock(&rs->mu);
  if (rs->npeers)
    update_hold(srv, now);
  pthread_mutex_unlock(&rs->mu);
}

/* REPLICAOF host port | REPLICAOF NO ONE (loop). */
int vlm__repl_replicaof(vlm__ctx *ctx) {
  vlm_server *srv = ctx->srv;
  vlm__repl_state *rs = srv->repl;
  const vlm__resp_arg *a = &ctx->argv[1], *b = &ctx->argv[2];
  if (a->len == 2 && !strncasecmp(a->ptr, "NO", 2) && b->len == 3 &&
      !strncasecmp(b->ptr, "ONE", 3)) {
    if (persist_role(srv, NULL) < 0) { /* a restart would follow again */
      vlm__reply_error(ctx->out, "ERR", "REPLICAOF NO ONE: %s", vlm_errmsg());
      return -1;
    }
    if (rs->replica) {
      uv_timer_stop(&rs->timer);
      pthread_mutex_lock(&rs->mu);
      rs->replica = 0;
      rs->gen++;
      rs->error[0] = '\0';
      uint64_t applied = rs->applied;
      pthread_mutex_unlock(&rs->mu);
      drop_link(rs);
      /* a primary now: its database is no longer a copy to throw away
       * when it must seed again (cmd_serve keeps such a one aside) */
      if (srv->db_dir[0]) {
        char mark[PATH_MAX];
        snprintf(mark, sizeof mark, "%s/%s", srv->db_dir, VLM_REPLICA_MARK);
        unlink(mark);
      }
      vlm__server_log(srv, "replication: no longer a replica of %s:%d; "
                      "writable at batch %llu", rs->host, rs->port,
                      (unsigned long long)applied);
    }
    vlm__reply_status(ctx->out, "OK");
    return 0;
  }
  char host[256], addr[300];
  uint64_t port;
  if (a->len == 0 || a->len >= sizeof host ||
      parse_u64(b, &port) < 0 || port < 1 || port > 65535) {
    vlm__reply_error(ctx->out, "ERR", "REPLICAOF host port | REPLICAOF NO "
                     "ONE");
    return -1;
  }
  memcpy(host, a->ptr, a->len);
  host[a->len] = '\0';
  snprintf(addr, sizeof addr, "%s:%d", host, (int)port);
  if (rs->replica && !strcmp(rs->host, host) && rs->port == (int)port) {
    vlm__reply_status(ctx->out, "OK Already connected to specified master");
    return 0;
  }
  if (persist_role(srv, addr) < 0) {
    vlm__reply_error(ctx->out, "ERR", "REPLICAOF: %s", vlm_errmsg());
    return -1;
  }
  uv_timer_stop(&rs->timer);
  drop_link(rs);
  pthread_mutex_lock(&rs->mu);
  snprintf(rs->host, sizeof rs->host, "%s", host);
  rs->port = (int)port;
  rs->replica = 1;
  rs->gen++;
  rs->busy = 0;
  rs->error[0] = '\0';
  pthread_mutex_unlock(&rs->mu);
  vlm__server_log(srv, "replication: replica of %s from batch %llu", addr,
                  (unsigned long long)rs->applied);
  if (rs->started)
    send_sync(srv);
  vlm__reply_status(ctx->out, "OK");
  return 0;
}

/* INFO's "# Replication" section (any thread); seq: this database's last
 * batch. */
void vlm__repl_info(vlm_server *srv, vlm__buf *b, uint64_t seq) {
  vlm__repl_state *rs = srv->repl;
  uint64_t now = vlm__now_ms();
  pthread_mutex_lock(&rs->mu);
  if (rs->replica) {
    uint64_t lag = rs->phead > rs->applied ? rs->phead - rs->applied : 0;
    vlm__buf_printf(b, "# Replication\r\nrole:slave\r\nmaster_host:%s\r\n"
                    "master_port:%d\r\nmaster_link_status:%s\r\n"
                    "master_last_io_seconds_ago:%lld\r\n"
                    "master_sync_in_progress:%d\r\nslave_read_repl_offset:%llu"
                    "\r\nslave_repl_offset:%llu\r\nslave_priority:100\r\n"
                    "slave_read_only:1\r\nreplica_announced:1\r\n"
                    "connected_slaves:0\r\nmaster_repl_offset:%llu\r\n"
                    "replica_lag_batches:%llu\r\n"
                    "replica_batches_applied:%llu\r\n"
                    "master_sync_error:%s\r\n\r\n",
                    rs->host, rs->port, rs->link_up ? "up" : "down",
                    rs->last_io_ms ? (long long)((now - rs->last_io_ms) / 1000)
                                   : -1LL,
                    rs->partial, (unsigned long long)rs->applied,
                    (unsigned long long)rs->applied,
                    (unsigned long long)rs->phead, (unsigned long long)lag,
                    (unsigned long long)rs->applied_total, rs->error);
  } else {
    int n = 0;
    for (int i = 0; i < rs->npeers; i++)
      n += now - rs->peers[i].seen_ms < HOLD_MS;
    vlm__buf_printf(b, "# Replication\r\nrole:master\r\nconnected_slaves:%d"
                    "\r\n", n);
    for (int i = 0, k = 0; i < rs->npeers; i++) {
      const peer *p = &rs->peers[i];
      if (now - p->seen_ms >= HOLD_MS)
        continue;
      vlm__buf_printf(b, "slave%d:ip=%s,port=%d,state=%s,offset=%llu,"
                      "lag=%llu\r\n", k++, p->ip, p->port,
                      p->seeding ? "wait_bgsave" : "online",
                      (unsigned long long)p->ack,
                      (unsigned long long)((now - p->seen_ms) / 1000));
    }
    vlm__buf_printf(b, "master_repl_offset:%llu\r\nrepl_backlog_active:%d\r\n"
                    "repl_backlog_size:%llu\r\n\r\n",
                    (unsigned long long)seq, n > 0,
                    (unsigned long long)rs->backlog);
  }
  pthread_mutex_unlock(&rs->mu);
}

/* ======================================================================
 * Seeding a replica (vlmdb serve --replica-of, before it serves)
 * ==================================================================== */

static int seed_fail(redisContext *c, redisReply *r, const char *tmp,
                     int rc) {
  if (r)
    freeReplyObject(r);
  if (c)
    redisFree(c);
  if (tmp && *tmp)
    rm_tree(tmp);
  return rc;
}

static int name_ok(const char *name) {
  return *name && name[0] != '/' && !strstr(name, "..") &&
         strlen(name) < 128;
}

int vlm_replica_seed(const char *primary, const char *password,
                     const char *dir, int port_self, FILE *log,
                     uint64_t *seq) {
  char host[256], tmp[PATH_MAX], parent[PATH_MAX], path[PATH_MAX];
  int port;
  redisContext *c = NULL;
  redisReply *r = NULL;
  tmp[0] = '\0';
  if (vlm__split_address(primary, host, sizeof host, &port) < 0)
    return vlm_seterr(VLM_EINVAL, "replica of '%s': not host:port", primary);
  struct timeval tv = {10, 0};
  c = redisConnectWithTimeout(host, port, tv);
  if (!c || c->err)
    return seed_fail(c, NULL, NULL,
                     vlm_seterr(VLM_ENET, "seeding from %s: %s", primary,
                                c ? c->errstr : "out of memory"));
  struct timeval io = {600, 0}; /* the primary's backup comes first */
  redisSetTimeout(c, io);
  if (password && *password) {
    r = redisCommand(c, "AUTH %s", password);
    if (!r || r->type == REDIS_REPLY_ERROR)
      return seed_fail(c, r, NULL,
                       vlm_seterr(VLM_ENET, "seeding from %s: AUTH: %s",
                                  primary, r ? r->str : c->errstr));
    freeReplyObject(r);
  }
  if (log)
    fprintf(log, "vlmdb: seeding %s from an online backup of %s\n", dir,
            primary);
  r = redisCommand(c, "VLM.SEED BEGIN %d", port_self);
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
      r->element[0]->type != REDIS_REPLY_INTEGER ||
      r->element[1]->type != REDIS_REPLY_INTEGER ||
      r->element[2]->type != REDIS_REPLY_ARRAY ||
      r->element[2]->elements % 2)
    return seed_fail(c, r, NULL,
                     vlm_seterr(VLM_ENET, "seeding from %s: VLM.SEED BEGIN: "
                                "%s", primary,
                                !r ? c->errstr
                                : r->type == REDIS_REPLY_ERROR
                                    ? r->str
                                    : "an unexpected answer"));
  long long token = r->element[0]->integer, batch = r->element[1]->integer;
  redisReply *files = r->element[2];
  snprintf(parent, sizeof parent, "%s", dir);
  char *slash = strrchr(parent, '/');
  const char *base = slash ? slash + 1 : parent;
  char basebuf[256];
  snprintf(basebuf, sizeof basebuf, "%s", base);
  if (slash)
    *slash = '\0';
  else
    snprintf(parent, sizeof parent, ".");
  snprintf(tmp, sizeof tmp, "%s/.%s.seeding-%d", parent, basebuf,
           (int)getpid());
  rm_tree(tmp);
  if (mkdir(tmp, 0755) != 0)
    return seed_fail(c, r, NULL,
                     vlm_seterr(VLM_EIO, "seeding: mkdir %s: %s", tmp,
                                strerror(errno)));
  uint64_t total = 0;
  char *chunk_name = NULL;
  for (size_t i = 0; i + 1 < files->elements; i += 2) {
    redisReply *nm = files->element[i], *sz = files->element[i + 1];
    if (nm->type != REDIS_REPLY_STRING || sz->type != REDIS_REPLY_INTEGER ||
        !name_ok(nm->str))
      return seed_fail(c, r, tmp,
                       vlm_seterr(VLM_ENET, "seeding from %s: a bad file "
                                  "list", primary));
    chunk_name = nm->str;
    snprintf(path, sizeof path, "%s/%s", tmp, chunk_name);
    char *sub = strchr(chunk_name, '/');
    if (sub) {
      char d[PATH_MAX];
      snprintf(d, sizeof d, "%s/%.*s", tmp, (int)(sub - chunk_name),
               chunk_name);
      mkdir(d, 0755);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
      return seed_fail(c, r, tmp,
                       vlm_seterr(VLM_EIO, "seeding: %s: %s", path,
                                  strerror(errno)));
    uint64_t size = (uint64_t)sz->integer, off = 0;
    while (off < size) {
      redisReply *d = redisCommand(c, "VLM.SEED READ %lld %s %llu", token,
                                   chunk_name, (unsigned long long)off);
      if (!d || d->type != REDIS_REPLY_STRING || d->len == 0) {
        close(fd);
        int rc = vlm_seterr(VLM_ENET, "seeding from %s: reading %s at %llu: "
                            "%s", primary, chunk_name,
                            (unsigned long long)off,
                            !d ? c->errstr
                            : d->type == REDIS_REPLY_ERROR ? d->str
                                                           : "no data");
        if (d)
          freeReplyObject(d);
        return seed_fail(c, r, tmp, rc);
      }
      if (vlm_write_all(fd, d->str, d->len) < 0) {
        close(fd);
        freeReplyObject(d);
        return seed_fail(c, r, tmp,
                         vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO,
                                    "seeding: writing %s: %s", path,
                                    strerror(errno)));
      }
      off += d->len;
      freeReplyObject(d);
    }
    total += size;
    if (fsync(fd) != 0) {
      close(fd);
      return seed_fail(c, r, tmp,
                       vlm_seterr(VLM_EIO, "seeding: fsync %s: %s", path,
                                  strerror(errno)));
    }
    close(fd);
  }
  snprintf(path, sizeof path, "%s/%s", tmp, VLM_REPLICA_MARK);
  FILE *mark = fopen(path, "w");
  if (!mark || fprintf(mark, "seeded from %s at batch %lld\n", primary,
                       batch) < 0 || fflush(mark) != 0 ||
      fsync(fileno(mark)) != 0) {
    int rc = vlm_seterr(VLM_EIO, "seeding: %s: %s", path, strerror(errno));
    if (mark)
      fclose(mark);
    return seed_fail(c, r, tmp, rc);
  }
  fclose(mark);
  redisReply *e = redisCommand(c, "VLM.SEED END %lld", token);
  if (e)
    freeReplyObject(e);
  freeReplyObject(r);
  r = NULL;
  redisFree(c);
  c = NULL;
  /* the copy takes the database's name whole, or not at all */
  snprintf(path, sizeof path, "%s/payload.lmdb", tmp);
  fsync_dir(path);
  fsync_dir(tmp);
  rmdir(dir); /* an empty directory may stand in the way */
  if (rename(tmp, dir) != 0)
    return seed_fail(NULL, NULL, tmp,
                     vlm_seterr(VLM_EIO, "seeding: rename %s to %s: %s", tmp,
                                dir, strerror(errno)));
  fsync_dir(parent);
  if (log)
    fprintf(log, "vlmdb: seeded %s at batch %lld (%llu bytes)\n", dir, batch,
            (unsigned long long)total);
  if (seq)
    *seq = (uint64_t)batch;
  return 0;
}
