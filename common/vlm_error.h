/* vlm_error.h - the one error list of vlmdb.
 *
 * Every library function returns int: 0 on success or a negative VLM_E*
 * code.  vlm_strerror() gives the fixed message of a code; vlm_errmsg()
 * gives the detail of the last error set on the calling thread (file name,
 * key, tensor, catalog line), which the function that failed wrote with
 * vlm_seterr() just before returning.  The detail is thread-local, so
 * concurrent callers never see each other's messages.
 */
#ifndef VLM_ERROR_H
#define VLM_ERROR_H

#include <stdarg.h>

#define VLM_ERRNO_MAP(X)                                                 \
  X(INVAL,       -1, "invalid argument")                                 \
  X(NOMEM,       -2, "out of memory")                                    \
  X(IO,          -3, "input/output error")                               \
  X(NOTFOUND,    -4, "not found")                                        \
  X(EXISTS,      -5, "already exists")                                   \
  X(FORMAT,      -6, "malformed input")                                  \
  X(UNSUPPORTED, -7, "unsupported format or feature")                    \
  X(MISMATCH,    -8, "model or dimension mismatch")                      \
  X(CORRUPT,     -9, "corrupt data")                                     \
  X(NOSPACE,     -10, "no space left on device")                         \
  X(TOOBIG,      -11, "too large")                                       \
  X(FILTER,      -12, "invalid or forbidden filter expression")          \
  X(STORE,       -13, "storage engine error")                            \
  X(INDEX,       -14, "vector index error")                              \
  X(NET,         -15, "network error")                                   \
  X(BUSY,        -16, "resource busy")                                   \
  X(INTR,        -17, "interrupted")                                     \
  X(VERSION,     -18, "unknown format version")                          \
  X(NUMERIC,     -19, "non-finite number")                               \
  X(STATE,       -20, "operation not valid in this state")              \
  X(READONLY,    -21, "read-only database or filesystem")              \
  X(WRONGSHARD,  -22, "key belongs to another shard")

enum {
  VLM_OK = 0,
#define VLM__ERRDEF(name, code, msg) VLM_E##name = (code),
  VLM_ERRNO_MAP(VLM__ERRDEF)
#undef VLM__ERRDEF
  VLM__ELAST = -22
};

/* Fixed message of an error code; never NULL, also for unknown codes. */
const char *vlm_strerror(int err);

/* Symbolic name of an error code ("VLM_EINVAL"); never NULL. */
const char *vlm_errname(int err);

/* Detail of the last error set on this thread, or the fixed message of
 * the last code when no detail was given.  Valid until the next vlm_seterr
 * on this thread. */
const char *vlm_errmsg(void);

/* Set the calling thread's error detail (printf format) and return err,
 * so library code can write `return vlm_seterr(VLM_EIO, "%s: %s", ...)`. */
int vlm_seterr(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int vlm_vseterr(int err, const char *fmt, va_list ap);

/* Clear the calling thread's error detail. */
void vlm_clearerr(void);

#endif
