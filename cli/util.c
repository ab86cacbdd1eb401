/* util.c - helpers shared by the subcommands. */
#include "vlm_cli.h"
#include "vlm_error.h"

#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void vlm_cli_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "vlmdb %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

void vlm_cli_liberror(const char *cmd, int err) {
  const char *detail = vlm_errmsg();
  if (detail && *detail && strcmp(detail, vlm_strerror(err)))
    fprintf(stderr, "vlmdb %s: %s: %s\n", cmd, vlm_strerror(err), detail);
  else
    fprintf(stderr, "vlmdb %s: %s\n", cmd, vlm_strerror(err));
}

static int is_model_dir(const char *dir) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/config.json", dir);
  return access(path, R_OK) == 0;
}

const char *vlm_cli_default_model(void) {
  static char found[PATH_MAX];
  const char *env = getenv("VLMDB_MODEL");
  if (env && *env)
    return env;
  /* The binary lives in <tree>/build/vlmdb; the model in <tree>/models. */
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      snprintf(found, sizeof found, "%s/../models/default", exe);
      if (is_model_dir(found))
        return found;
    }
  }
  if (is_model_dir("/usr/local/share/vlmdb/models/default"))
    return "/usr/local/share/vlmdb/models/default";
  return "models/default";
}

void vlm_cli_json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
    switch (*p) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\r': fputs("\\r", f); break;
    case '\t': fputs("\\t", f); break;
    default:
      if (*p < 0x20)
        fprintf(f, "\\u%04x", *p);
      else
        fputc(*p, f);
    }
  }
  fputc('"', f);
}

void (*vlm_cli_crash_hook)(const char *point);

void vlm_cli_crash_point(const char *point) {
  if (vlm_cli_crash_hook)
    vlm_cli_crash_hook(point);
}
