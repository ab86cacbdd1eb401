/* vlm_file.c - reading a whole file (see vlm_file.h). */
#include "vlm_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vlm_error.h"

static const char *file_kind(mode_t mode) {
  if (S_ISDIR(mode))
    return "a directory";
  if (S_ISFIFO(mode))
    return "a FIFO";
  if (S_ISSOCK(mode))
    return "a socket";
  if (S_ISCHR(mode))
    return "a character device";
  if (S_ISBLK(mode))
    return "a block device";
  return "a special file";
}

int vlm_read_file(const char *path, size_t max_bytes, uint8_t **data,
                  size_t *len) {
  *data = NULL;
  *len = 0;
  /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
   * writer, forever, before fstat could tell what it is. */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0)
    return vlm_seterr(errno == ENOENT || errno == ENOTDIR ? VLM_ENOTFOUND
                                                          : VLM_EIO,
                      "%s: %s", path, strerror(errno));
  uint8_t *buf = NULL;
  size_t n = 0;
  int rc = 0;
  struct stat st;
  if (fstat(fd, &st)) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
    goto done;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = vlm_seterr(VLM_ENOTFOUND, "%s: %s, not a regular file", path,
                    file_kind(st.st_mode));
    goto done;
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0)
    (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  if ((uint64_t)st.st_size > max_bytes) {
    rc = vlm_seterr(VLM_ETOOBIG, "%s: %lld bytes, over the limit of %zu",
                    path, (long long)st.st_size, max_bytes);
    goto done;
  }
  /* One byte more than its size, to see the end in one read; a file that
   * grows meanwhile is read on, up to the limit. */
  size_t cap = (size_t)st.st_size + 1;
  buf = malloc(cap);
  for (;;) {
    if (!buf) {
      rc = vlm_seterr(VLM_ENOMEM, "%s: out of memory reading", path);
      goto done;
    }
    ssize_t got = read(fd, buf + n, cap - n);
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0) {
      rc = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
      goto done;
    }
    if (got == 0)
      break;
    n += (size_t)got;
    if (n == cap) {
      if (cap > max_bytes) {
        rc = vlm_seterr(VLM_ETOOBIG, "%s: over the limit of %zu bytes",
                        path, max_bytes);
        goto done;
      }
      uint8_t *bigger = realloc(buf, cap * 2);
      if (!bigger)
        free(buf);
      buf = bigger;
      cap *= 2;
    }
  }
done:
  close(fd);
  if (rc) {
    free(buf);
    return rc;
  }
  buf[n] = 0; /* n < cap: the loop grows buf when it fills */
  *data = buf;
  *len = n;
  return 0;
}

int vlm_write_all(int fd, const void *data, size_t len) {
  const uint8_t *p = data;
  while (len) {
    ssize_t w = write(fd, p, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}
