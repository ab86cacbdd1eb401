/* server.c - `vlmdb serve` as a child process for the tests (util.h). */
#include "util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int vlm_test_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

int vlm_test_server_spawn(vlm_test_server *s, const char *bin,
                          const char *const *args, const char *log,
                          double timeout_s) {
  const char *argv[64];
  int n = 0;
  argv[n++] = bin;
  argv[n++] = "serve";
  for (int i = 0; args && args[i] && n < 63; i++)
    argv[n++] = args[i];
  argv[n] = NULL;
  s->pid = 0;
  s->port = 0;
  int out[2];
  if (pipe(out) != 0)
    return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    close(out[0]);
    close(out[1]);
    return -1;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
    dup2(out[1], 1);
    close(out[0]);
    close(out[1]);
    int fd = log ? open(log, O_WRONLY | O_CREAT | O_APPEND, 0644) : -1;
    if (fd >= 0) {
      dup2(fd, 2);
      close(fd);
    }
    if (strstr(bin, "asan")) {
      /* ASan keeps 256 MiB of freed memory in quarantine by default, which
       * would hide whether the server gives memory back; a small one
       * still catches use after free. */
      char opts[512];
      const char *old = getenv("ASAN_OPTIONS");
      snprintf(opts, sizeof opts, "%s%squarantine_size_mb=16",
               old ? old : "", old && *old ? ":" : "");
      setenv("ASAN_OPTIONS", opts, 1);
    }
    execv(bin, (char *const *)argv);
    _exit(127);
  }
  close(out[1]);
  char line[256];
  size_t len = 0;
  double deadline = now_s() + timeout_s;
  while (now_s() < deadline && len < sizeof line - 1) {
    struct pollfd p = {out[0], POLLIN, 0};
    if (poll(&p, 1, 100) <= 0)
      continue;
    ssize_t r = read(out[0], line + len, 1);
    if (r <= 0)
      break;
    if (line[len++] == '\n')
      break;
  }
  line[len] = '\0';
  /* the HTTP line comes in the same write, when the server has one */
  char line2[256];
  size_t len2 = 0;
  s->http_port = 0;
  while (len2 < sizeof line2 - 1) {
    struct pollfd p = {out[0], POLLIN, 0};
    if (poll(&p, 1, 0) <= 0 || read(out[0], line2 + len2, 1) != 1)
      break;
    if (line2[len2++] == '\n')
      break;
  }
  line2[len2] = '\0';
  close(out[0]);
  char *colon = strrchr(line, ':');
  if (strstr(line, "listening on") && colon) {
    s->pid = pid;
    s->port = atoi(colon + 1);
    char *colon2 = strrchr(line2, ':');
    if (strstr(line2, "http on") && colon2)
      s->http_port = atoi(colon2 + 1);
    return 0;
  }
  int status = 0;
  for (int i = 0; i < 3000 && waitpid(pid, &status, WNOHANG) == 0; i++)
    sleep_ms(10);
  if (WIFEXITED(status))
    return WEXITSTATUS(status) ? WEXITSTATUS(status) : -1;
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

int vlm_test_server_stop(vlm_test_server *s, double timeout_s) {
  if (!s->pid)
    return 0;
  kill(s->pid, SIGTERM);
  int status = 0;
  pid_t r = 0;
  double deadline = now_s() + timeout_s;
  while ((r = waitpid(s->pid, &status, WNOHANG)) == 0 && now_s() < deadline)
    sleep_ms(10);
  if (r == 0) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &status, 0);
    status = -1;
  }
  s->pid = 0;
  return status;
}
