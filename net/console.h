/* console.h - the web console's files, compiled into the server (private
 * to net/).
 *
 * GET / is the console's page (net/console/index.html); its script and
 * style sheet are GET /console/app.js and /console/app.css.  They are
 * static, hold no data of the database (the page reads everything through
 * the JSON API with the user's bearer token), and are served without
 * authentication so that the page can load and ask for the password.
 */
#ifndef VLM_NET_CONSOLE_H
#define VLM_NET_CONSOLE_H

#include <stddef.h>

/* The asset served at path (the URL's path, without the query): 0 with
 * its bytes (static, never freed), length and Content-Type set, or -1 for
 * a path that is not the console's.  The outputs may be NULL (to ask
 * whether a path is the console's).  Thread-safe. */
int vlm__console_asset(const char *path, const void **body, size_t *len,
                       const char **content_type);

/* Header lines for every console response (CRLF-terminated): no caching
 * of a stale page after an upgrade, no sniffing, and a content security
 * policy that lets the page load only its own files and talk only to its
 * own server. */
extern const char vlm__console_headers[];

#endif
