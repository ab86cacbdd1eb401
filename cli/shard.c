/* shard.c - cluster maps, shard choice and atomic publishing for the
 * commands that build shards (init, ingest, embed, split, cluster). */
#include "shard.h"
#include "vlm_cli.h"
#include "vlm_error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void print_problem(void *arg, const char *problem) {
  vlm_cli_error((const char *)arg, "%s", problem);
}

int vlm_cli_cluster_load(const char *cmd, const char *path,
                         vlm_cluster **out) {
  int rc = vlm_cluster_load(path, print_problem, (void *)cmd, out);
  if (rc == VLM_EFORMAT)
    return -1; /* every problem printed */
  if (rc) {
    vlm_cli_error(cmd, "%s", vlm_errmsg());
    return -1;
  }
  return 0;
}

int vlm_cli_shard_choose(const char *cmd, const char *text,
                         const vlm_cluster *cluster, int *shard) {
  if (vlm_shard_index(text, cluster->nshards, shard)) {
    vlm_cli_error(cmd, "%s", vlm_errmsg());
    return -1;
  }
  return 0;
}

int vlm_cli_publish_tmp(const char *cmd, const char *dir, char *buf,
                        size_t cap) {
  size_t n = strlen(dir);
  while (n > 1 && dir[n - 1] == '/')
    n--; /* "out/shard-0/" publishes out/shard-0 */
  if (n + 5 > cap || (int)snprintf(buf, cap, "%.*s.tmp", (int)n, dir) < 0) {
    vlm_cli_error(cmd, "%s: path too long", dir);
    return -1;
  }
  return 0;
}

int vlm_cli_exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

int vlm_cli_publish(const char *cmd, const char *tmp, const char *dir) {
  char parent[PATH_MAX];
  /* rename() replaces an empty directory silently: never publish over
   * anything */
  if (vlm_cli_exists(dir)) {
    vlm_cli_error(cmd, "cannot publish %s as %s: %s exists", tmp, dir, dir);
    return -1;
  }
  if (rename(tmp, dir) != 0) {
    vlm_cli_error(cmd, "publishing %s as %s: %s", tmp, dir, strerror(errno));
    return -1;
  }
  snprintf(parent, sizeof parent, "%s", dir);
  size_t n = strlen(parent);
  while (n > 1 && parent[n - 1] == '/')
    parent[--n] = '\0';
  char *slash = strrchr(parent, '/');
  if (!slash)
    snprintf(parent, sizeof parent, ".");
  else if (slash == parent)
    parent[1] = '\0';
  else
    *slash = '\0';
  int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0) {
    vlm_cli_error(cmd, "fsync %s: %s", parent, strerror(errno));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  close(fd);
  return 0;
}
