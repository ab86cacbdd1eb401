/* fuzz_http.c - libFuzzer target for the HTTP request path of the server:
 * parsing, limits, authentication, routing, the JSON, form and multipart
 * bodies, the commands they become and the rendering of their replies.
 *
 * A real server (vlm_server_create over a small Flat database, no model,
 * a password, a 64 KiB request limit) runs on its own thread for the
 * whole run.  Each input is sent on a fresh loopback connection, in
 * chunks whose sizes come from the input's first byte, and our side is
 * shut down; then every response is read to the server's close.  Every
 * response must be framed (an HTTP/1.1 status line, headers, a body of
 * exactly its Content-Length; a 100 Continue before a final one), and
 * the server must close the connection within 10 s of our EOF: a crash, a
 * hang or a broken frame is a finding.  Inputs that start with "AUTH"
 * get the bearer token, so the routes behind it are reached too.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "vlm_error.h"
#include "vlm_server.h"
#include "vlmdb.h"

static vlm_server *g_srv;
static int g_port;

static void *serve(void *arg) {
  (void)arg;
  vlm_server_run(g_srv);
  return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  signal(SIGPIPE, SIG_IGN);
  char dir[64];
  snprintf(dir, sizeof dir, "%s/vlm_fuzz_http_XXXXXX",
           access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  if (!mkdtemp(dir))
    abort();
  char db_dir[96];
  snprintf(db_dir, sizeof db_dir, "%s/db", dir);
  vlm_field f[] = {{"n", VLM_FIELD_INT}, {"cat", VLM_FIELD_TEXT}};
  vlm_db_config cfg = {.dim = 4, .index_factory = "Flat",
                       .model_id = "fuzz", .fields = f, .nfields = 2};
  vlm_db *db;
  if (vlm_db_create(db_dir, &cfg, &db) != 0) {
    fprintf(stderr, "fuzz_http: %s\n", vlm_errmsg());
    abort();
  }
  vlm_server_options o = {0};
  o.http = 1;
  o.threads = 2;
  o.requirepass = "fuzz";
  o.max_request_bytes = 64 * 1024;
  o.db_dir = db_dir;
  if (vlm_server_create(db, NULL, &o, &g_srv) != 0) {
    fprintf(stderr, "fuzz_http: %s\n", vlm_errmsg());
    abort();
  }
  g_port = vlm_server_http_port(g_srv);
  pthread_t t;
  pthread_create(&t, NULL, serve, NULL);
  pthread_detach(t);
  return 0;
}

static int connect_server(void) {
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)g_port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  /* tens of thousands of connections a minute: a SIGALRM (libFuzzer's
   * -timeout) or a moment without a free local port is no finding; a
   * server that refuses connections is */
  int fd = -1;
  for (int tries = 0;; tries++) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
      abort();
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
      break;
    int e = errno;
    close(fd);
    if ((e != EINTR && e != EADDRNOTAVAIL && e != EAGAIN) || tries == 1000) {
      fprintf(stderr, "fuzz_http: connect: %s\n", strerror(e));
      abort();
    }
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

/* Check the framing of everything the server wrote. */
static void check_responses(const char *buf, size_t len) {
  size_t pos = 0;
  while (pos < len) {
    const char *p = buf + pos;
    if (len - pos < 17 || memcmp(p, "HTTP/1.1 ", 9) || p[9] < '1' ||
        p[9] > '5') {
      fprintf(stderr, "fuzz_http: a response without a status line: %.40s\n",
              p);
      abort();
    }
    const char *end = memmem(p, len - pos, "\r\n\r\n", 4);
    if (!end) {
      fprintf(stderr, "fuzz_http: headers without an end\n");
      abort();
    }
    size_t hlen = (size_t)(end - p) + 4;
    if (!memcmp(p + 9, "100 ", 4)) {
      pos += hlen;
      continue;
    }
    const char *cl = memmem(p, hlen, "\r\nContent-Length: ", 18);
    if (!cl) {
      fprintf(stderr, "fuzz_http: a response without Content-Length\n");
      abort();
    }
    size_t body = strtoul(cl + 18, NULL, 10);
    if (body > len - pos - hlen) {
      fprintf(stderr, "fuzz_http: a body shorter than its Content-Length\n");
      abort();
    }
    pos += hlen + body;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0)
    return 0;
  size_t chunk = (size_t)data[0] * 7 + 1;
  data++, size--;
  int fd = connect_server();
  /* "AUTH" up front: the token follows, on the first request */
  if (size >= 4 && !memcmp(data, "AUTH", 4)) {
    const char *eol = memchr(data + 4, '\n', size - 4);
    size_t first = eol ? (size_t)(eol - (const char *)data) + 1 : size;
    send(fd, data + 4, first - 4, MSG_NOSIGNAL);
    send(fd, "Authorization: Bearer fuzz\r\n", 28, MSG_NOSIGNAL);
    data += first, size -= first;
  }
  for (size_t off = 0; off < size;) {
    size_t n = size - off < chunk ? size - off : chunk;
    /* (libFuzzer's -timeout is a SIGALRM, which interrupts a socket call
     * with a timeout even under SA_RESTART: not a finding, go on) */
    ssize_t w = send(fd, data + off, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      break; /* the server closed after an error: fine */
    off += (size_t)w;
  }
  shutdown(fd, SHUT_WR);
  size_t cap = 1 << 20, len = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (len == cap) {
      cap *= 2;
      buf = realloc(buf, cap);
    }
    ssize_t r = recv(fd, buf + len, cap - len, 0);
    if (r == 0)
      break;
    if (r < 0) {
      if (errno == EINTR)
        continue; /* SIGALRM, as above */
      if (errno == ECONNRESET)
        break; /* our unread bytes after an error that closes */
      fprintf(stderr, "fuzz_http: the server did not close: %s\n",
              strerror(errno));
      abort();
    }
    len += (size_t)r;
  }
  close(fd);
  check_responses(buf, len);
  free(buf);
  return 0;
}
