/* lmdbwalk.c - read payload.lmdb's B-trees page by page, trusting nothing.
 *
 * LMDB trusts its pages: a flipped bit in a node offset or a child page
 * number sends a reader out of its page or into another tree, and it
 * crashes or asserts.  This walker reads the same pages with pread, from
 * the snapshot of a read transaction (whose pages no writer reuses while
 * it lives), and checks every page before it follows anything in it: the
 * page number it records, its kind for its depth, its header bounds,
 * every node inside the page, child and overflow page numbers inside the
 * file, keys in order (by the tree's own comparison), leaves all at the
 * tree's depth, and the page and entry counts the tree records.
 *
 * vlm_db_verify checks every tree with it before it reads through LMDB;
 * vlm_db_salvage reads the trees only through it, stepping over a damaged
 * subtree (counted, with the first reason) to the next good one.
 *
 * The page layout is LMDB 0.9's on-disk format (mdb.c: MDB_page, MDB_node,
 * MDB_meta, MDB_db), stable across the 0.9 series; it is checked against
 * the meta page's magic and version before anything else is read.
 */
#include "db_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
  PAGEHDR = 16,
  NODEHDR = 8,
  MAX_DEPTH = 32,
  P_BRANCH = 0x01,
  P_LEAF = 0x02,
  P_OVERFLOW = 0x04,
  P_META = 0x08,
  P_LEAF2 = 0x20,
  F_BIGDATA = 0x01,
  F_SUBDATA = 0x02,
  F_DUPDATA = 0x04,
  MDB_DB_SIZE = 48,
};

#define META_MAGIC 0xBEEFC0DEu
#define META_VERSION 1u
#define P_INVALID (~(uint64_t)0)

static uint16_t rd16(const unsigned char *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}
static uint32_t rd32(const unsigned char *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static uint64_t rd64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* An MDB_db record: a tree's root and counts. */
typedef struct {
  uint16_t flags, depth;
  uint64_t branch, leaf, overflow, entries, root;
} tree_db;

static void parse_db(const unsigned char *p, tree_db *t) {
  t->flags = rd16(p + 4);
  t->depth = rd16(p + 6);
  t->branch = rd64(p + 8);
  t->leaf = rd64(p + 16);
  t->overflow = rd64(p + 24);
  t->entries = rd64(p + 32);
  t->root = rd64(p + 40);
}

struct vlm__lwalk {
  vlm__lmdb *lm;
  MDB_txn *txn;
  MDB_dbi dbi; /* for mdb_cmp; 0 for the main tree (plain byte order) */
  int intkey;  /* MDB_INTEGERKEY: every key is 8 bytes */
  int fd;
  size_t psize;
  uint64_t last_pg;
  tree_db t;
  char name[32];
  /* the path from the root: page buffer and next node per level */
  unsigned char *page[MAX_DEPTH];
  uint64_t pgno[MAX_DEPTH];
  int next[MAX_DEPTH];
  int depth; /* levels on the path; 0: not started or done */
  int started, done;
  /* what was seen, checked against the tree's counts at the end */
  uint64_t seen_branch, seen_leaf, seen_overflow, seen_entries;
  /* the previous key, for the order check */
  unsigned char *prev;
  size_t prev_len;
  int has_prev;
  /* the current value when it lives in overflow pages */
  unsigned char *big;
  size_t big_cap;
  vlm__lwalk_damage dmg;
};

static void damage(vlm__lwalk *w, uint64_t pgno, const char *what) {
  if (!w->dmg.count++)
    snprintf(w->dmg.first, sizeof w->dmg.first,
             "page %llu of the '%s' tree: %s", (unsigned long long)pgno,
             w->name, what);
}

static int read_at(vlm__lwalk *w, void *buf, size_t n, uint64_t off) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(w->fd, (char *)buf + got, n - got, (off_t)(off + got));
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return vlm_seterr(VLM_EIO, "payload store: read: %s", strerror(errno));
    if (r == 0)
      return 1; /* past the end of the file */
    got += (size_t)r;
  }
  return 0;
}

/* The snapshot's meta: the meta page whose txnid is the transaction's. */
static int read_meta(vlm__lmdb *lm, MDB_txn *txn, int fd, size_t psize,
                     tree_db *main_db, uint64_t *last_pg) {
  unsigned char hdr[160];
  uint64_t want = (uint64_t)mdb_txn_id(txn);
  for (int i = 0; i < 2; i++) {
    size_t got = 0;
    while (got < sizeof hdr) {
      ssize_t r = pread(fd, hdr + got, sizeof hdr - got,
                        (off_t)((uint64_t)i * psize + got));
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        return vlm_seterr(VLM_ECORRUPT, "payload store: cannot read meta "
                          "page %d; %s", i, VLM__LMDB_DAMAGED_HINT);
      got += (size_t)r;
    }
    if (rd32(hdr + PAGEHDR) != META_MAGIC ||
        rd32(hdr + PAGEHDR + 4) != META_VERSION)
      continue;
    if (rd64(hdr + PAGEHDR + 128) != want)
      continue;
    parse_db(hdr + PAGEHDR + 24 + MDB_DB_SIZE, main_db);
    *last_pg = rd64(hdr + PAGEHDR + 120);
    return 0;
  }
  (void)lm;
  return 1; /* not found: a writer moved on; the caller retries */
}

int vlm__lwalk_open(vlm__lmdb *lm, MDB_txn *txn, const char *name,
                    vlm__lwalk **out) {
  *out = NULL;
  MDB_stat st;
  int rc = mdb_env_stat(lm->env, &st);
  if (rc)
    return vlm__lmdb_err(rc, "payload store: stat");
  int fd = -1;
  if ((rc = mdb_env_get_fd(lm->env, &fd)))
    return vlm__lmdb_err(rc, "payload store");
  vlm__lwalk *w = calloc(1, sizeof *w);
  if (!w)
    return vlm_seterr(VLM_ENOMEM, "payload store walk");
  w->lm = lm;
  w->txn = txn;
  w->fd = fd;
  w->psize = st.ms_psize;
  snprintf(w->name, sizeof w->name, "%s", name ? name : "main");
  tree_db main_db;
  rc = read_meta(lm, txn, fd, w->psize, &main_db, &w->last_pg);
  if (rc == 1)
    rc = vlm_seterr(VLM_EBUSY, "payload store walk: the snapshot's meta "
                    "page was rewritten; retry");
  if (rc)
    goto fail;
  if (!(w->prev = malloc(w->psize)) || !(w->big = malloc(w->psize))) {
    rc = vlm_seterr(VLM_ENOMEM, "payload store walk");
    goto fail;
  }
  w->big_cap = w->psize;
  for (int i = 0; i < MAX_DEPTH; i++)
    w->page[i] = NULL;
  if (!name) {
    w->t = main_db;
    *out = w;
    return 0;
  }
  /* a named tree: its MDB_db record is a value of the main tree, read
   * with the same care */
  vlm__lwalk *m = NULL;
  if ((rc = vlm__lwalk_open(lm, txn, NULL, &m)))
    goto fail;
  MDB_val k, v;
  int found = 0;
  unsigned nflags = 0;
  while (vlm__lwalk_next(m, &k, &v, &nflags) == 0) {
    if (k.mv_size == strlen(name) && !memcmp(k.mv_data, name, k.mv_size)) {
      if (!(nflags & F_SUBDATA) || v.mv_size != MDB_DB_SIZE) {
        damage(w, 0, "its record in the main tree is damaged");
      } else {
        parse_db(v.mv_data, &w->t);
        found = 1;
      }
      break;
    }
  }
  if (m->dmg.count && !found)
    w->dmg = m->dmg;
  vlm__lwalk_close(m);
  if (!found) {
    if (!w->dmg.count)
      damage(w, 0, "the tree is missing");
    w->done = 1;
  }
  if ((rc = vlm__mdb_dbi_open(txn, name, 0, &w->dbi)) && found) {
    rc = vlm__lmdb_err(rc, "payload store walk");
    goto fail;
  }
  unsigned dflags = 0;
  if (found && !mdb_dbi_flags(txn, w->dbi, &dflags))
    w->intkey = (dflags & MDB_INTEGERKEY) != 0;
  *out = w;
  return 0;
fail:
  vlm__lwalk_close(w);
  return rc;
}

void vlm__lwalk_close(vlm__lwalk *w) {
  if (!w)
    return;
  for (int i = 0; i < MAX_DEPTH; i++)
    free(w->page[i]);
  free(w->prev);
  free(w->big);
  free(w);
}

const vlm__lwalk_damage *vlm__lwalk_damaged(const vlm__lwalk *w) {
  return &w->dmg;
}

int64_t vlm__lwalk_missing(const vlm__lwalk *w) {
  return w->t.entries > w->seen_entries
             ? (int64_t)(w->t.entries - w->seen_entries) : 0;
}

/* Node i of a checked page: its offset, or 0 when it does not fit. */
static size_t node_at(const vlm__lwalk *w, const unsigned char *p, int i) {
  size_t off = rd16(p + PAGEHDR + 2 * (size_t)i);
  size_t upper = rd16(p + 14);
  if (off < upper || off & 1 || off + NODEHDR > w->psize)
    return 0;
  size_t ks = rd16(p + off + 6);
  if (off + NODEHDR + ks > w->psize)
    return 0;
  return off;
}

static int nkeys(const unsigned char *p) {
  return (rd16(p + 12) - PAGEHDR) >> 1;
}

/* Read and check page pgno for level lvl: 0 good, 1 damaged (reported),
 * <0 an I/O error. */
static int load(vlm__lwalk *w, int lvl, uint64_t pgno) {
  if (pgno < 2 || pgno > w->last_pg) {
    damage(w, pgno, "a child page number outside the file");
    return 1;
  }
  if (!w->page[lvl] && !(w->page[lvl] = malloc(w->psize)))
    return vlm_seterr(VLM_ENOMEM, "payload store walk");
  unsigned char *p = w->page[lvl];
  int rc = read_at(w, p, w->psize, pgno * w->psize);
  if (rc < 0)
    return rc;
  if (rc) {
    damage(w, pgno, "past the end of the file");
    return 1;
  }
  int leaf_level = lvl == (int)w->t.depth - 1;
  uint16_t flags = rd16(p + 10) & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META |
                                   P_LEAF2);
  size_t lower = rd16(p + 12), upper = rd16(p + 14);
  const char *why = NULL;
  if (rd64(p) != pgno)
    why = "it records another page number";
  else if (flags != (leaf_level ? P_LEAF : P_BRANCH))
    why = leaf_level ? "not a leaf page at the leaf level"
                     : "not a branch page above the leaves";
  else if (lower < PAGEHDR || lower & 1 || upper > w->psize || lower > upper)
    why = "its free-space bounds are out of the page";
  else if (nkeys(p) == 0)
    why = "it holds no nodes";
  if (!why) {
    for (int i = 0; i < nkeys(p) && !why; i++) {
      size_t off = node_at(w, p, i);
      if (!off) {
        why = "a node outside the page";
        break;
      }
      unsigned nf = rd16(p + off + 4);
      size_t ks = rd16(p + off + 6);
      /* integer keys are 8 bytes (a branch's first key is empty) */
      if (w->intkey && ks != 8 && (leaf_level || i > 0 || ks != 0)) {
        why = "an integer key of the wrong size";
        break;
      }
      if (!leaf_level)
        continue; /* the flags field holds the child's high bits */
      size_t ds = rd16(p + off) | (size_t)rd16(p + off + 2) << 16;
      if (nf & ~(unsigned)(F_BIGDATA | F_SUBDATA | F_DUPDATA))
        why = "a node with unknown flags";
      else if (nf & F_DUPDATA)
        why = "a duplicate-sorted node in a tree without duplicates";
      else if ((nf & F_SUBDATA) && (w->dbi || ds != MDB_DB_SIZE))
        why = "a sub-database node out of place";
      else if (off + NODEHDR + ks + ((nf & F_BIGDATA) ? 8 : ds) > w->psize)
        why = "a node's data runs past the page";
    }
  }
  if (why) {
    damage(w, pgno, why);
    return 1;
  }
  if (leaf_level)
    w->seen_leaf++;
  else
    w->seen_branch++;
  if (w->seen_leaf > w->t.leaf || w->seen_branch > w->t.branch) {
    damage(w, pgno, "more pages than the tree records");
    w->done = 1; /* a loop or a foreign subtree: stop here */
    return 1;
  }
  w->pgno[lvl] = pgno;
  w->next[lvl] = 0;
  return 0;
}

static int key_cmp(const vlm__lwalk *w, const MDB_val *a, const MDB_val *b) {
  if (w->dbi)
    return mdb_cmp(w->txn, w->dbi, a, b);
  size_t n = a->mv_size < b->mv_size ? a->mv_size : b->mv_size;
  int c = memcmp(a->mv_data, b->mv_data, n);
  return c ? c : (a->mv_size > b->mv_size) - (a->mv_size < b->mv_size);
}

/* The value of a leaf node at off: inline, or read from its overflow
 * pages.  0 good, 1 damaged (reported), <0 error. */
static int value_of(vlm__lwalk *w, const unsigned char *p, size_t off,
                    MDB_val *v) {
  unsigned nf = rd16(p + off + 4);
  size_t ks = rd16(p + off + 6);
  size_t ds = rd16(p + off) | (size_t)rd16(p + off + 2) << 16;
  const unsigned char *d = p + off + NODEHDR + ks;
  if (!(nf & F_BIGDATA)) {
    v->mv_size = ds;
    v->mv_data = (void *)d;
    return 0;
  }
  uint64_t opg = rd64(d);
  unsigned char hdr[PAGEHDR];
  int rc;
  if (opg < 2 || opg > w->last_pg ||
      (rc = read_at(w, hdr, sizeof hdr, opg * w->psize)) > 0) {
    damage(w, w->pgno[w->depth - 1], "an overflow page number outside the file");
    return 1;
  }
  if (rc < 0)
    return rc;
  uint32_t pages = rd32(hdr + 12);
  if (rd64(hdr) != opg || !(rd16(hdr + 10) & P_OVERFLOW) || pages == 0 ||
      opg + pages - 1 > w->last_pg ||
      (uint64_t)pages * w->psize - PAGEHDR < ds) {
    damage(w, opg, "a damaged overflow page");
    return 1;
  }
  if (ds > w->big_cap) {
    unsigned char *nb = realloc(w->big, ds);
    if (!nb)
      return vlm_seterr(VLM_ENOMEM, "payload store walk");
    w->big = nb;
    w->big_cap = ds;
  }
  if ((rc = read_at(w, w->big, ds, opg * w->psize + PAGEHDR)) != 0) {
    if (rc > 0)
      damage(w, opg, "an overflow value runs past the end of the file");
    return rc;
  }
  w->seen_overflow += pages;
  v->mv_size = ds;
  v->mv_data = w->big;
  return 0;
}

int vlm__lwalk_next(vlm__lwalk *w, MDB_val *key, MDB_val *val,
                    unsigned *node_flags) {
  if (w->done)
    return 1;
  if (!w->started) {
    w->started = 1;
    if (w->t.root == P_INVALID) {
      if (w->t.depth || w->t.entries || w->t.leaf || w->t.branch)
        damage(w, 0, "an empty tree that records pages");
      w->done = 1;
      return 1;
    }
    if (w->t.depth == 0 || w->t.depth > MAX_DEPTH) {
      damage(w, w->t.root, "an impossible tree depth");
      w->done = 1;
      return 1;
    }
    int rc = load(w, 0, w->t.root);
    if (rc < 0)
      return rc;
    if (rc) {
      w->done = 1;
      return 1;
    }
    w->depth = 1;
  }
  int leaf_level = (int)w->t.depth - 1;
  while (w->depth > 0 && !w->done) {
    int lvl = w->depth - 1;
    unsigned char *p = w->page[lvl];
    if (w->next[lvl] >= nkeys(p)) {
      w->depth--; /* this page is done */
      continue;
    }
    int i = w->next[lvl]++;
    size_t off = node_at(w, p, i);
    MDB_val k = {rd16(p + off + 6), p + off + NODEHDR};
    if (lvl < leaf_level) {
      uint64_t child = rd16(p + off) | (uint64_t)rd16(p + off + 2) << 16 |
                       (uint64_t)rd16(p + off + 4) << 32;
      int rc = load(w, lvl + 1, child);
      if (rc < 0)
        return rc;
      if (rc == 0)
        w->depth++;
      continue; /* a damaged child is stepped over */
    }
    if (w->has_prev) {
      MDB_val pk = {w->prev_len, w->prev};
      if (key_cmp(w, &pk, &k) >= 0) {
        damage(w, w->pgno[lvl], "keys out of order");
        continue;
      }
    }
    int rc = value_of(w, p, off, val);
    if (rc < 0)
      return rc;
    if (rc)
      continue;
    memcpy(w->prev, k.mv_data, k.mv_size);
    w->prev_len = k.mv_size;
    w->has_prev = 1;
    w->seen_entries++;
    *key = k;
    if (node_flags)
      *node_flags = rd16(p + off + 4);
    return 0;
  }
  if (!w->done) {
    w->done = 1;
    if (!w->dmg.count &&
        (w->seen_entries != w->t.entries || w->seen_leaf != w->t.leaf ||
         w->seen_branch != w->t.branch || w->seen_overflow != w->t.overflow))
      damage(w, w->t.root, "its page or entry counts do not match the tree");
  }
  return 1;
}

int vlm__lmdb_check(vlm__lmdb *lm, MDB_txn *txn) {
  static const char *const trees[] = {NULL, "keys", "items", "vecs", "log",
                                      "state"};
  for (size_t i = 0; i < sizeof trees / sizeof *trees; i++) {
    vlm__lwalk *w = NULL;
    int rc = vlm__lwalk_open(lm, txn, trees[i], &w);
    if (rc)
      return rc;
    MDB_val k, v;
    while ((rc = vlm__lwalk_next(w, &k, &v, NULL)) == 0)
      ;
    if (rc < 0) {
      vlm__lwalk_close(w);
      return rc;
    }
    if (w->dmg.count) {
      rc = vlm_seterr(VLM_ECORRUPT, "payload store damaged: %s (%llu "
                      "damaged place%s); %s", w->dmg.first,
                      (unsigned long long)w->dmg.count,
                      w->dmg.count == 1 ? "" : "s", VLM__LMDB_DAMAGED_HINT);
      vlm__lwalk_close(w);
      return rc;
    }
    vlm__lwalk_close(w);
  }
  return 0;
}
