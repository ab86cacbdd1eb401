/* vlm_file.h - reading a whole file, the one way vlmdb does it.
 *
 * vlm_read_file reads the file at path into *data (malloc'd, the caller
 * frees it, NUL-terminated one byte past *len so text can be used as a
 * string) and *len.  Only a regular file is read: a FIFO, directory,
 * socket or device is refused without waiting on it (opened O_NONBLOCK,
 * checked with fstat before any read), like a missing file:
 * VLM_ENOTFOUND.  VLM_ETOOBIG past max_bytes, VLM_EIO, VLM_ENOMEM; the
 * message names the path.  On failure *data is NULL and *len 0. */
#ifndef VLM_FILE_H
#define VLM_FILE_H

#include <stddef.h>
#include <stdint.h>

/* The largest image file vlmdb reads (ingest, embed, training). */
#define VLM_MAX_IMAGE_FILE ((size_t)1 << 30)

int vlm_read_file(const char *path, size_t max_bytes, uint8_t **data,
                  size_t *len);

/* Write all len bytes to fd, going on after short writes and EINTR: 0, or
 * -1 with errno set (0 for a write that wrote nothing). */
int vlm_write_all(int fd, const void *data, size_t len);

#endif
