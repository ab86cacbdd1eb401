/* vlm_utf8.c - see vlm_utf8.h; the decoding is utf8proc's. */
#include "vlm_utf8.h"

#include <utf8proc.h>

int vlm_utf8_valid(const void *s, size_t n) {
  const utf8proc_uint8_t *p = s;
  while (n > 0) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate(p, (utf8proc_ssize_t)n, &cp);
    if (k <= 0 || cp == 0)
      return 0;
    p += k;
    n -= (size_t)k;
  }
  return 1;
}
