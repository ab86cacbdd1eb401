/* opts.c - helpers shared by the database commands. */
#include "opts.h"
#include "vlm_cli.h"
#include "vlm_error.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int vlm_cli_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "vlmdb %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n(see 'vlmdb %s --help')\n", cmd);
  return VLM_EXIT_USAGE;
}

int vlm_cli_getopt_failed(const char *cmd) {
  fprintf(stderr, "(see 'vlmdb %s --help')\n", cmd);
  return VLM_EXIT_USAGE;
}

int vlm_cli_parse_long(const char *cmd, const char *flag, const char *text,
                       long min, long max, long *out) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || end == text || *end || v < min || v > max) {
    vlm_cli_usage_error(cmd, "%s wants a whole number from %ld to %ld, not "
                             "'%s'",
                        flag, min, max, text);
    return -1;
  }
  *out = v;
  return 0;
}

int vlm_cli_parse_target(const char *cmd, const char *text, vlm_target *out) {
  if (!strcmp(text, "image"))
    *out = VLM_TARGET_IMAGE;
  else if (!strcmp(text, "text"))
    *out = VLM_TARGET_TEXT;
  else if (!strcmp(text, "any"))
    *out = VLM_TARGET_ANY;
  else {
    vlm_cli_usage_error(cmd, "--target is image, text or any");
    return -1;
  }
  return 0;
}

int vlm_cli_parse_collapse(const char *cmd, const char *text, float *out) {
  char *end;
  double t = strtod(text, &end);
  if (end == text || *end || !(t > 0 && t <= 1)) {
    vlm_cli_usage_error(cmd, "--collapse is a cosine in (0, 1]");
    return -1;
  }
  *out = (float)t;
  return 0;
}

int vlm_cli_open_db(const char *cmd, const char *dir, int readonly,
                    vlm_db **out) {
  vlm_db_open_options opts = {.readonly = readonly};
  int rc = vlm_db_open(dir, &opts, out);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  return 0;
}

int vlm_cli_orientation(const char *name) {
  if (!strcmp(name, "model"))
    return VLM_ORIENT_MODEL;
  if (!strcmp(name, "apply"))
    return VLM_ORIENT_APPLY;
  if (!strcmp(name, "ignore"))
    return VLM_ORIENT_IGNORE;
  return -1;
}

vlm_clip_options vlm_cli_db_model_options(const vlm_db_info *info,
                                          int threads) {
  vlm_clip_options o = {.threads = threads};
  int orient = vlm_cli_orientation(info->image_orientation);
  o.orientation = orient < 0 ? VLM_ORIENT_MODEL : (vlm_orient_mode)orient;
  return o;
}

int vlm_cli_load_model(const char *cmd, vlm_db *db, const char *model_dir,
                       int threads, vlm_clip **out) {
  vlm_db_info info;
  int rc = vlm_db_stat(db, &info);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  const char *dir = model_dir;
  if (!dir && info.model_dir[0] && access(info.model_dir, R_OK) == 0)
    dir = info.model_dir;
  if (!dir)
    dir = vlm_cli_default_model();
  vlm_clip_options copts = vlm_cli_db_model_options(&info, threads);
  rc = vlm_clip_load(dir, &copts, out);
  if (rc) {
    vlm_cli_error(cmd, "loading the model from %s: %s", dir, vlm_errmsg());
    return -1;
  }
  if (strcmp(vlm_clip_model_id(*out), info.model_id)) {
    vlm_cli_model_mismatch(cmd, dir, NULL, &info);
    vlm_clip_free(*out);
    *out = NULL;
    return -1;
  }
  return 0;
}

void vlm_cli_model_mismatch(const char *cmd, const char *model_dir,
                            const char *db_dir, const vlm_db_info *info) {
  vlm_cli_error(cmd,
                "the model in %s is not the one the database%s%s was made "
                "with (%s); pass --model with that directory",
                model_dir, db_dir ? " " : "", db_dir ? db_dir : "",
                info->model_dir[0] ? info->model_dir : "a directory it does not record");
}

void vlm_cli_getopt_reset(void) {
  optind = 0; /* glibc: 0 also resets its internal state */
  opterr = 1;
}
