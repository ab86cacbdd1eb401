/* util.h - what the test programs share: removing a temp tree, the
 * splitmix64 generator, a `vlmdb serve` child process, and check macros
 * for vlmdb calls that print the error code, its name and the library's
 * message on failure.
 *
 * Include after <cmocka.h> (the macros use fail_msg). */
#ifndef VLM_TEST_UTIL_H
#define VLM_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vlm_error.h"

/* Remove path and everything under it (no error if it is absent). */
void vlm_test_rm_rf(const char *path);

/* splitmix64: the next value of the generator whose state is *state. */
uint64_t vlm_test_splitmix64(uint64_t *state);
/* A uniform double in [0, 1) from *state. */
double vlm_test_uniform(uint64_t *state);

/* Encode argv (lens NULL: strlen each) as a RESP request into out (room
 * enough); its length. */
size_t vlm_test_resp_encode(char *out, int argc, const char **argv,
                            const size_t *lens);

/* A loopback TCP port free at this moment (bound and released: another
 * process may take it before the caller does), or 0 if none could be
 * had (server.c). */
int vlm_test_free_port(void);

/* A `vlmdb serve` child process (server.c). */
typedef struct {
  int pid;  /* 0 when none runs */
  int port;
  int http_port; /* from the "http on HOST:PORT" line; 0 if none */
} vlm_test_server;

/* Start `bin serve args...` (args NULL-terminated; pass "--port", "0" for
 * an ephemeral port), its stderr appended to log (NULL: inherited), and
 * wait up to timeout_s for the "listening on HOST:PORT" line it prints
 * (and read the "http on HOST:PORT" line written with it).
 * 0 with s->pid and s->port set; else its exit status (-1 if it did not
 * exit by itself) and no child left.  The child dies with the test. */
int vlm_test_server_spawn(vlm_test_server *s, const char *bin,
                          const char *const *args, const char *log,
                          double timeout_s);
/* SIGTERM, and wait up to timeout_s: its wait status, or -1 when it had
 * to be killed.  0 at once when none runs. */
int vlm_test_server_stop(vlm_test_server *s, double timeout_s);

/* call must return 0; else fail with its code, name and message. */
#define VLM_CHECK(call)                                                    \
  do {                                                                     \
    int rc_ = (call);                                                      \
    if (rc_ != 0)                                                          \
      fail_msg("%s = %d (%s): %s", #call, rc_, vlm_errname(rc_),           \
               vlm_errmsg());                                              \
  } while (0)

/* call must return code; else fail printing both. */
#define VLM_EXPECT_ERR(code, call)                                         \
  do {                                                                     \
    int rc_ = (call);                                                      \
    if (rc_ != (code))                                                     \
      fail_msg("%s = %d (%s), expected %s: %s", #call, rc_,                \
               vlm_errname(rc_), vlm_errname(code), vlm_errmsg());         \
  } while (0)

/* Run a vlmdb command (fn, e.g. cmd_reembed, with args as its argv: args[0]
 * the command's name, NULL-terminated) in a child process with the crash
 * hook set (*hook, given as &vlm_cli_crash_hook: the helpers that share
 * this file do not link the commands): when the command passes the crash point
 * named point it raises sig (SIGKILL, or SIGSTOP to look at the database
 * meanwhile).  The child's stdout and stderr go to DIR/.stdout and
 * DIR/.stderr, its stdin is /dev/null; it exits with the command's
 * status.  The child's pid, or -1. */
pid_t vlm_test_spawn_crash(const char *dir, int (*fn)(int, char **),
                           const char *const *args, const char *point,
                           int sig, void (**hook)(const char *));

#endif
