#include "vlm_error.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char errmsg[1024];

const char *vlm_strerror(int err) {
  switch (err) {
  case VLM_OK: return "success";
#define VLM__ERRCASE(name, code, msg) case VLM_E##name: return msg;
    VLM_ERRNO_MAP(VLM__ERRCASE)
#undef VLM__ERRCASE
  default: return "unknown error";
  }
}

const char *vlm_errname(int err) {
  switch (err) {
  case VLM_OK: return "VLM_OK";
#define VLM__ERRNAME(name, code, msg) case VLM_E##name: return "VLM_E" #name;
    VLM_ERRNO_MAP(VLM__ERRNAME)
#undef VLM__ERRNAME
  default: return "VLM_EUNKNOWN";
  }
}

const char *vlm_errmsg(void) { return errmsg; }

/* Formats into a scratch buffer first: callers add context to the message
 * they were given (vlm_seterr(rc, "%s: %s", what, vlm_errmsg())), and
 * vsnprintf from the buffer it writes to is undefined (it garbled such
 * messages: 'index factory "Foo": ring Foo'). */
int vlm_vseterr(int err, const char *fmt, va_list ap) {
  char msg[sizeof errmsg];
  int n = 0;
  if (fmt)
    n = vsnprintf(msg, sizeof msg, fmt, ap);
  if (!fmt || n <= 0)
    snprintf(msg, sizeof msg, "%s", vlm_strerror(err));
  memcpy(errmsg, msg, strlen(msg) + 1);
  return err;
}

int vlm_seterr(int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlm_vseterr(err, fmt, ap);
  va_end(ap);
  return err;
}

void vlm_clearerr(void) { errmsg[0] = '\0'; }
