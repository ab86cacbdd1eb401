/* livebits.c - the live bitmaps of both modalities, saved beside a
 * checkpoint so that open need not read every vector record.
 *
 * Open must know, per modality, which item ids are live and have a
 * vector (the bitmap searches use as the index's ID selector, and the
 * counts `info` reports).  Reading them from LMDB means walking every
 * vector record: at 200,000 items 2-4 s and every page of the vectors
 * faulted in (issue 22).  So each checkpoint that switches the manifest
 * also writes live-<seq>-<nonce>.bits, the bitmaps as they stand at the
 * index side's batch (the checkpoint's seq), and the manifest names it
 * with that batch and the id bound.  Open reads it and replays the log
 * from that batch to LMDB's (the log keeps every batch after the oldest
 * checkpoint, so after this one too), which costs what changed since the
 * checkpoint, not the database's size.
 *
 * The file is written like an index file (.tmp, fsync, rename; the
 * directory is fsync'd before the manifest switch), so a crash leaves
 * the old manifest with its old file or the new one with the new.  It is
 * trusted only when everything agrees: magic and version, a header
 * checksum, a checksum of the bitmaps, the batch and id bound the
 * manifest recorded for it, no bit at or above that bound, the counts in
 * the header equal to the bits, and every batch since in the log.  Any
 * disagreement (damage, a file from another checkpoint or copy) makes
 * open walk the vector records as before, with a warning.
 *
 * Layout: a 64-byte header (below, little-endian as the machine), then
 * the image bitmap and the text bitmap, (next + 7) / 8 bytes each, bit i
 * of byte i / 8 for item id i.
 */
#include "db_int.h"
#include "vlm_file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define LIVE_MAGIC "VLMLIVE\n"
#define LIVE_VERSION 1

typedef struct {
  char magic[8];
  uint32_t version;
  uint32_t nmod;       /* VLM__NMOD */
  uint64_t seq;        /* the batch the bitmaps stand at */
  uint64_t next;       /* ids < next; bits at or above are zero */
  uint64_t nlive[2];   /* set bits per bitmap */
  uint64_t body_hash;  /* XXH64 of the bitmaps */
  uint32_t reserved;
  uint32_t header_hash; /* XXH32 of the bytes before it */
} live_header;

_Static_assert(sizeof(live_header) == 64, "live header is 64 bytes");

static uint64_t count_bits(const uint8_t *bits, size_t nbytes) {
  uint64_t n = 0;
  for (size_t i = 0; i < nbytes; i++)
    n += (uint64_t)__builtin_popcount(bits[i]);
  return n;
}

int vlm__live_write(const char *path, uint64_t seq, uint64_t next,
                    uint8_t *const bits[VLM__NMOD]) {
  char tmp[PATH_MAX];
  size_t nbytes = (size_t)((next + 7) / 8);
  uint8_t *copy[VLM__NMOD] = {NULL, NULL};
  int fd = -1, rc = 0;
  live_header h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, LIVE_MAGIC, 8);
  h.version = LIVE_VERSION;
  h.nmod = VLM__NMOD;
  h.seq = seq;
  h.next = next;
  XXH64_state_t *xs = XXH64_createState();
  if (!xs) {
    rc = vlm_seterr(VLM_ENOMEM, "%s", path);
    goto done;
  }
  XXH64_reset(xs, 0);
  for (int m = 0; m < VLM__NMOD; m++) {
    /* bits at or above next (an unfinished catch-up chunk) stay out */
    if (!(copy[m] = calloc(1, nbytes ? nbytes : 1))) {
      rc = vlm_seterr(VLM_ENOMEM, "%s", path);
      goto done;
    }
    if (nbytes) {
      memcpy(copy[m], bits[m], nbytes);
      if (next & 7)
        copy[m][nbytes - 1] &= (uint8_t)((1u << (next & 7)) - 1);
    }
    h.nlive[m] = count_bits(copy[m], nbytes);
    XXH64_update(xs, copy[m], nbytes);
  }
  h.body_hash = XXH64_digest(xs);
  h.header_hash = XXH32(&h, offsetof(live_header, header_hash), 0);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || vlm_write_all(fd, &h, sizeof h) != 0 ||
      vlm_write_all(fd, copy[0], nbytes) != 0 ||
      vlm_write_all(fd, copy[1], nbytes) != 0 || fsync(fd) != 0) {
    int e = errno;
    rc = vlm_seterr(e == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s", tmp,
                    strerror(e));
    goto done;
  }
  close(fd);
  fd = -1;
  if (rename(tmp, path) != 0) {
    rc = vlm_seterr(VLM_EIO, "rename %s: %s", tmp, strerror(errno));
    goto done;
  }
done:
  if (fd >= 0)
    close(fd);
  if (rc)
    unlink(tmp);
  XXH64_freeState(xs);
  free(copy[0]);
  free(copy[1]);
  return rc;
}

static int read_all(int fd, void *p, size_t n) {
  char *c = p;
  while (n > 0) {
    ssize_t r = read(fd, c, n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    c += r;
    n -= (size_t)r;
  }
  return 0;
}

int vlm__live_read(const char *path, uint64_t seq, uint64_t next,
                   uint8_t *const bits[VLM__NMOD], size_t cap,
                   int64_t nlive[VLM__NMOD], char *why, size_t whylen) {
  live_header h;
  size_t nbytes = (size_t)((next + 7) / 8);
  struct stat st;
  int rc = -1;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, whylen, "%s", strerror(errno));
    return -1;
  }
  if (fstat(fd, &st) != 0 || read_all(fd, &h, sizeof h) != 0) {
    snprintf(why, whylen, "cannot read its header");
    goto done;
  }
  if (memcmp(h.magic, LIVE_MAGIC, 8) ||
      h.header_hash != XXH32(&h, offsetof(live_header, header_hash), 0)) {
    snprintf(why, whylen, "header checksum mismatch");
    goto done;
  }
  if (h.version != LIVE_VERSION || h.nmod != VLM__NMOD) {
    snprintf(why, whylen, "version %u, this vlmdb reads %u", h.version,
             LIVE_VERSION);
    goto done;
  }
  if (h.seq != seq || h.next != next) {
    snprintf(why, whylen, "it holds batch %llu, ids below %llu; the manifest "
             "names batch %llu, ids below %llu", (unsigned long long)h.seq,
             (unsigned long long)h.next, (unsigned long long)seq,
             (unsigned long long)next);
    goto done;
  }
  if ((uint64_t)st.st_size != sizeof h + 2 * (uint64_t)nbytes ||
      nbytes > cap) {
    snprintf(why, whylen, "%lld bytes, not %llu", (long long)st.st_size,
             (unsigned long long)(sizeof h + 2 * (uint64_t)nbytes));
    goto done;
  }
  XXH64_state_t *xs = XXH64_createState();
  if (!xs) {
    snprintf(why, whylen, "out of memory");
    goto done;
  }
  XXH64_reset(xs, 0);
  int bad = 0;
  for (int m = 0; m < VLM__NMOD && !bad; m++) {
    memset(bits[m], 0, cap);
    if (read_all(fd, bits[m], nbytes) != 0) {
      bad = 1;
      snprintf(why, whylen, "cannot read its bitmaps");
      break;
    }
    XXH64_update(xs, bits[m], nbytes);
    if ((next & 7) && (bits[m][nbytes - 1] >> (next & 7)) != 0) {
      bad = 1;
      snprintf(why, whylen, "bits set beyond id %llu",
               (unsigned long long)next);
    } else if (count_bits(bits[m], nbytes) != h.nlive[m]) {
      bad = 1;
      snprintf(why, whylen, "counts disagree with the bitmaps");
    }
    nlive[m] = (int64_t)h.nlive[m];
  }
  if (!bad && XXH64_digest(xs) != h.body_hash) {
    bad = 1;
    snprintf(why, whylen, "bitmap checksum mismatch");
  }
  XXH64_freeState(xs);
  if (!bad)
    rc = 0;
done:
  close(fd);
  return rc;
}
