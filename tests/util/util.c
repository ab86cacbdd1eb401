/* util.c - see util.h. */
#include "util.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>

#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

void vlm_test_rm_rf(const char *path) {
  nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

uint64_t vlm_test_splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double vlm_test_uniform(uint64_t *state) {
  return (double)(vlm_test_splitmix64(state) >> 11) / 9007199254740992.0;
}

size_t vlm_test_resp_encode(char *out, int argc, const char **argv,
                            const size_t *lens) {
  size_t n = (size_t)sprintf(out, "*%d\r\n", argc);
  for (int i = 0; i < argc; i++) {
    size_t len = lens ? lens[i] : strlen(argv[i]);
    n += (size_t)sprintf(out + n, "$%zu\r\n", len);
    memcpy(out + n, argv[i], len);
    n += len;
    memcpy(out + n, "\r\n", 2);
    n += 2;
  }
  return n;
}

#ifdef VLM_TEST_COVERAGE
/* Coverage builds link the tests with -Wl,--wrap=_exit (Makefile): a
 * forked child that leaves by _exit writes its gcov counts first, so the
 * library code it ran is counted. */
void __gcov_dump(void);
_Noreturn void __real__exit(int status);
_Noreturn void __wrap__exit(int status);

void __wrap__exit(int status) {
  __gcov_dump();
  __real__exit(status);
}
#endif

static const char *crash_want;
static int crash_sig;

static void crash_hook(const char *point) {
  if (crash_want && !strcmp(point, crash_want)) {
    fflush(NULL);
    raise(crash_sig);
  }
}

pid_t vlm_test_spawn_crash(const char *dir, int (*fn)(int, char **),
                           const char *const *args, const char *point,
                           int sig, void (**hook)(const char *)) {
  char out[4096], err[4096];
  snprintf(out, sizeof out, "%s/.stdout", dir);
  snprintf(err, sizeof err, "%s/.stderr", dir);
  char *argv[64];
  int argc = 0;
  while (args[argc] && argc < 63) {
    argv[argc] = (char *)args[argc];
    argc++;
  }
  argv[argc] = NULL;
  fflush(NULL);
  pid_t pid = fork();
  if (pid != 0)
    return pid;
  int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int fi = open("/dev/null", O_RDONLY);
  if (fo < 0 || fe < 0 || fi < 0)
    _exit(127);
  dup2(fo, 1);
  dup2(fe, 2);
  dup2(fi, 0);
  setenv("VLMDB_PROGRESS", "lines", 1);
  setenv("VLMDB_PROGRESS_INTERVAL", "0.02", 1);
  crash_want = point;
  crash_sig = sig;
  *hook = crash_hook;
  int rc = fn(argc, argv);
  fflush(NULL);
  _exit(rc);
}
