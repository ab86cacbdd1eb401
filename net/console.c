/* console.c - the web console's files (net/console/), compiled into the
 * server with one .incbin each, as openapi.c does for the OpenAPI
 * document; the Makefile rebuilds this file when one of them changes. */
#include <string.h>

#include "console.h"

/* sym: the bytes, NUL-terminated; sym_len: their count without the NUL. */
#define VLM__INCBIN(sym, file)                                               \
  __asm__(".section .rodata\n"                                               \
          ".global " #sym "\n"                                               \
          ".type " #sym ", @object\n"                                        \
          ".balign 16\n" #sym ":\n"                                          \
          ".incbin \"" file "\"\n" #sym "_end:\n"                            \
          ".byte 0\n"                                                        \
          ".global " #sym "_len\n"                                           \
          ".type " #sym "_len, @object\n"                                    \
          ".balign 4\n" #sym "_len:\n"                                       \
          ".long " #sym "_end - " #sym "\n"                                  \
          ".previous\n");                                                    \
  extern const char sym[];                                                   \
  extern const unsigned sym##_len

VLM__INCBIN(vlm__console_index_html, "net/console/index.html");
VLM__INCBIN(vlm__console_app_js, "net/console/app.js");
VLM__INCBIN(vlm__console_app_css, "net/console/app.css");

const char vlm__console_headers[] =
    "Cache-Control: no-cache\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Content-Security-Policy: default-src 'none'; script-src 'self'; "
    "style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'\r\n";

int vlm__console_asset(const char *path, const void **body, size_t *len,
                       const char **content_type) {
  static const struct {
    const char *path;
    const char *data;
    const unsigned *len;
    const char *type;
  } assets[] = {
      {"/", vlm__console_index_html, &vlm__console_index_html_len,
       "text/html; charset=utf-8"},
      {"/console/app.js", vlm__console_app_js, &vlm__console_app_js_len,
       "text/javascript; charset=utf-8"},
      {"/console/app.css", vlm__console_app_css, &vlm__console_app_css_len,
       "text/css; charset=utf-8"},
  };
  for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++) {
    if (strcmp(path, assets[i].path))
      continue;
    if (body)
      *body = assets[i].data;
    if (len)
      *len = *assets[i].len;
    if (content_type)
      *content_type = assets[i].type;
    return 0;
  }
  return -1;
}
