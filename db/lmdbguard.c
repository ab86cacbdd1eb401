/* lmdbguard.c - LMDB calls that a damaged page cannot crash.
 *
 * LMDB trusts its pages.  A flipped bit in a page header, a node offset
 * or a child page number makes it fail one of its own assertions (which
 * aborts the process) or read past the end of the file through its map
 * (SIGBUS) or outside the map (SIGSEGV).  A library must not take its
 * caller down for bad data, so every call that reads pages goes through
 * a wrapper here:
 *
 *   - the wrapper marks the thread as inside LMDB (a jump buffer in
 *     thread-local storage) for the length of the call;
 *   - LMDB's assertion hook (mdb_env_set_assert) and a SIGSEGV/SIGBUS
 *     handler jump back to the wrapper when the thread is marked, which
 *     returns MDB_CORRUPTED; a fault anywhere else goes on to the handler
 *     that was installed before ours (or the default action: a crash, as
 *     it would have been);
 *   - a value LMDB returns that lies in the map but reaches past the pages
 *     in use (a damaged size) is refused before the caller touches it.
 *
 * Jumping out of LMDB is safe here because of what is left behind: a
 * read transaction holds no lock while it reads pages (its reader slot is
 * released by the abort or reset that follows every error), and a write
 * transaction's state is undone by mdb_txn_abort, which every caller runs
 * after an error -- except after mdb_txn_commit, which frees the
 * transaction itself on failure, so its wrapper aborts it.  The caller
 * turns MDB_CORRUPTED into VLM_ECORRUPT with vlm__lmdb_err, which names
 * what LMDB tripped on and the next step (verify, salvage, a backup).
 */
#include "db_int.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

typedef struct guard {
  sigjmp_buf jb;
  struct guard *prev;
} guard;

static __thread guard *tl_guard;
static __thread char tl_damage[240];

static pthread_mutex_t install_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction prev_segv, prev_bus;

static void on_assert(MDB_env *env, const char *msg) {
  (void)env;
  guard *g = tl_guard;
  if (!g)
    return; /* outside a wrapper: LMDB aborts, as it always did */
  snprintf(tl_damage, sizeof tl_damage, "%s", msg);
  siglongjmp(g->jb, 1);
}

static void on_fault(int sig, siginfo_t *si, void *uc) {
  guard *g = tl_guard;
  if (g) {
    snprintf(tl_damage, sizeof tl_damage, "%s reading a page",
             sig == SIGBUS ? "bus error" : "segmentation fault");
    siglongjmp(g->jb, 1);
  }
  /* Not ours: hand it to whoever had it before.  A default or ignored
   * disposition is restored and the faulting instruction runs again. */
  struct sigaction *p = sig == SIGBUS ? &prev_bus : &prev_segv;
  if (p->sa_flags & SA_SIGINFO) {
    p->sa_sigaction(sig, si, uc);
  } else if (p->sa_handler != SIG_DFL && p->sa_handler != SIG_IGN) {
    p->sa_handler(sig);
  } else {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
  }
}

/* Put on_fault in front of whatever handles SIGSEGV and SIGBUS now.  Run
 * at every environment open: a process may have replaced it since (a
 * forked child that restored the defaults, a test harness). */
static void install_one(int sig, struct sigaction *prev) {
  struct sigaction cur;
  if (sigaction(sig, NULL, &cur) != 0)
    return;
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_fault)
    return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  /* SA_NODEFER: the jump leaves the handler without unblocking the
   * signal, so it must not be blocked in the first place */
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  *prev = cur;
  sigaction(sig, &sa, NULL);
}

void vlm__mdb_guard_env(MDB_env *env) {
  mdb_env_set_assert(env, on_assert);
  pthread_mutex_lock(&install_mu);
  install_one(SIGSEGV, &prev_segv);
  install_one(SIGBUS, &prev_bus);
  pthread_mutex_unlock(&install_mu);
}

const char *vlm__mdb_damage(void) { return tl_damage; }

/* A value in the map must end inside the pages in use.  Values outside
 * the map are a write transaction's dirty pages (heap memory). */
static int val_in_bounds(MDB_txn *txn, const MDB_val *v) {
  if (!v || !v->mv_data)
    return 1;
  MDB_env *env = mdb_txn_env(txn);
  MDB_envinfo ei;
  MDB_stat st;
  if (mdb_env_info(env, &ei) != 0 || mdb_env_stat(env, &st) != 0)
    return 1;
  const char *map = ei.me_mapaddr, *p = v->mv_data;
  if (!map || p < map || p >= map + ei.me_mapsize)
    return 1;
  uint64_t used = ((uint64_t)ei.me_last_pgno + 1) * st.ms_psize;
  uint64_t off = (uint64_t)(p - map);
  if (off <= used && v->mv_size <= used - off)
    return 1;
  snprintf(tl_damage, sizeof tl_damage,
           "a value of %zu bytes at offset %llu reaches past the %llu bytes "
           "in use", v->mv_size, (unsigned long long)off,
           (unsigned long long)used);
  return 0;
}

/* The wrapper's frame holds the jump buffer, so each is a function of its
 * own; GUARDED runs one LMDB call under it. */
#define GUARDED(call)                                                      \
  do {                                                                     \
    guard g;                                                               \
    g.prev = tl_guard;                                                     \
    if (sigsetjmp(g.jb, 0)) {                                              \
      tl_guard = g.prev;                                                   \
      rc = MDB_CORRUPTED;                                                  \
      break;                                                               \
    }                                                                      \
    tl_damage[0] = '\0';                                                   \
    tl_guard = &g;                                                         \
    rc = (call);                                                           \
    tl_guard = g.prev;                                                     \
  } while (0)

int vlm__mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data) {
  int rc;
  GUARDED(mdb_get(txn, dbi, key, data));
  if (rc == 0 && !val_in_bounds(txn, data))
    rc = MDB_CORRUPTED;
  return rc;
}

int vlm__mdb_cursor_get(MDB_cursor *c, MDB_val *key, MDB_val *data,
                        MDB_cursor_op op) {
  int rc;
  GUARDED(mdb_cursor_get(c, key, data, op));
  if (rc == 0 && (!val_in_bounds(mdb_cursor_txn(c), key) ||
                  !val_in_bounds(mdb_cursor_txn(c), data)))
    rc = MDB_CORRUPTED;
  return rc;
}

int vlm__mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data,
                 unsigned flags) {
  int rc;
  GUARDED(mdb_put(txn, dbi, key, data, flags));
  return rc;
}

int vlm__mdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data) {
  int rc;
  GUARDED(mdb_del(txn, dbi, key, data));
  return rc;
}

int vlm__mdb_cursor_del(MDB_cursor *c, unsigned flags) {
  int rc;
  GUARDED(mdb_cursor_del(c, flags));
  return rc;
}

int vlm__mdb_cursor_open(MDB_txn *txn, MDB_dbi dbi, MDB_cursor **c) {
  int rc;
  GUARDED(mdb_cursor_open(txn, dbi, c));
  return rc;
}

int vlm__mdb_dbi_open(MDB_txn *txn, const char *name, unsigned flags,
                      MDB_dbi *dbi) {
  int rc;
  GUARDED(mdb_dbi_open(txn, name, flags, dbi));
  return rc;
}

int vlm__mdb_stat(MDB_txn *txn, MDB_dbi dbi, MDB_stat *st) {
  int rc;
  GUARDED(mdb_stat(txn, dbi, st));
  return rc;
}

/* mdb_txn_commit frees the transaction whether it succeeds or fails, and
 * callers rely on that; after a jump out of it the transaction is still
 * there (with the writer's lock), so it is aborted here. */
int vlm__mdb_txn_commit(MDB_txn *txn) {
  guard g;
  g.prev = tl_guard;
  if (sigsetjmp(g.jb, 0)) {
    tl_guard = g.prev;
    /* the abort may trip over the same damage: then the transaction is
     * left as it is (its writer's lock with it) rather than crash */
    if (sigsetjmp(g.jb, 0) == 0) {
      tl_guard = &g;
      mdb_txn_abort(txn);
    }
    tl_guard = g.prev;
    return MDB_CORRUPTED;
  }
  tl_damage[0] = '\0';
  tl_guard = &g;
  int rc = mdb_txn_commit(txn);
  tl_guard = g.prev;
  return rc;
}
