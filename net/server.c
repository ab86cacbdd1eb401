/* server.c - the libuv event loop: listener, connections, input, output,
 * limits, idle timeout and graceful shutdown.
 *
 * Input.  A client with no partial request reads into one shared buffer
 * (so 10,000 idle clients hold no input memory); what is left of a partial
 * request moves to the client's own buffer, which then grows to fit the
 * request, up to the request limits the parser enforces, and is freed once
 * empty.  Every complete request in a read is dispatched at once
 * (pipelining); its jobs take effect in request order (jobs.c); a client
 * with max_pipeline requests owed is not read from until replies drain.
 *
 * Output.  Replies are appended to the client's output buffer and written
 * with uv_try_write when the read (or a batch of completions) has been
 * handled; what the kernel does not take goes to one uv_write at a time.
 * Replies of worker jobs wait in the client's job list until every
 * earlier request has been answered.  A client whose unsent output passes
 * max_output (it sends but does not read) is disconnected.
 *
 * Shutdown.  Stop accepting, stop reading, let every job already
 * dispatched finish and its reply be written (bounded by a deadline), close
 * the clients, drain the workers, checkpoint the database.
 */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "netint.h"
#include "vlm_error.h"

#define READ_CHUNK (64 * 1024)
#define SHUTDOWN_DEADLINE_MS 10000
#define CRON_MS 1000

static void conn_close(vlm__conn *conn);
static void conn_flush(vlm__conn *conn);
static void conn_process(vlm__conn *conn);
static void maybe_finish_shutdown(vlm_server *srv);

uint64_t vlm__now_ms(void) { return vlm__now_ns() / 1000000u; }

uint64_t vlm__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

long vlm__proc_status_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f)
    return 0;
  char line[256];
  size_t n = strlen(field);
  long kb = 0;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, field, n) && line[n] == ':') {
      kb = strtol(line + n + 1, NULL, 10);
      break;
    }
  fclose(f);
  return kb;
}

void vlm__server_log(vlm_server *srv, const char *fmt, ...) {
  if (!srv->log)
    return;
  char stamp[32];
  time_t now = time(NULL);
  struct tm tm;
  localtime_r(&now, &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
  va_list ap;
  va_start(ap, fmt);
  fprintf(srv->log, "%s vlmdb serve: ", stamp);
  vfprintf(srv->log, fmt, ap);
  fputc('\n', srv->log);
  fflush(srv->log);
  va_end(ap);
}

/* ======================================================================
 * Output
 * ==================================================================== */

vlm__buf *vlm__conn_reply_buf(vlm__conn *conn) {
  if (conn->njobs == 0)
    return &conn->out;
  /* Earlier requests are still in the workers: this reply waits its turn
   * in a slot of its own. */
  vlm__job *slot = vlm__job_new(conn, NULL, 0, NULL);
  if (!slot) {
    conn->out.oom = 1; /* closes the connection at the next flush */
    return &conn->out;
  }
  slot->done = 1;
  vlm__conn_push_job(conn, slot);
  return &slot->reply;
}

void vlm__conn_push_job(vlm__conn *conn, vlm__job *job) {
  if (conn->jobs_tail)
    conn->jobs_tail->next = job;
  else
    conn->jobs_head = job;
  conn->jobs_tail = job;
  conn->njobs++;
}

void vlm__conn_quit(vlm__conn *conn) {
  conn->quit = 1;
  if (conn->reading) {
    uv_read_stop((uv_stream_t *)&conn->tcp);
    conn->reading = 0;
  }
}

/* Move the replies at the head of the job list that are complete to the
 * output buffer. */
static void conn_drain_jobs(vlm__conn *conn) {
  vlm__job *job;
  while ((job = conn->jobs_head) && job->done) {
    conn->jobs_head = job->next;
    if (!conn->jobs_head)
      conn->jobs_tail = NULL;
    conn->njobs--;
    if (job->cmd && job->reply.len > 0 && job->reply.data[0] == '-')
      vlm__metrics_error(conn->srv, job->cmd,
                         conn->http ? VLM__PROTO_HTTP : VLM__PROTO_RESP);
    if (job->reply.oom) {
      conn->out.oom = 1;
    } else if (conn->http) {
      vlm__http_render(conn, job);
    } else if (conn->out.len == 0 && job->reply.len > 4096) {
      /* Take the job's buffer instead of copying a large reply. */
      vlm__buf tmp = conn->out;
      conn->out = job->reply;
      conn->out.resp3 = conn->resp3;
      job->reply = tmp;
    } else {
      vlm__buf_append(&conn->out, job->reply.data, job->reply.len);
    }
    vlm__job_free(job);
  }
}

static void on_write(uv_write_t *req, int status) {
  vlm__conn *conn = req->data;
  free(conn->wdata);
  conn->wdata = NULL;
  conn->writing = 0;
  if (status < 0) {
    conn->wlen = 0;
    if (!conn->closing)
      conn_close(conn);
    return;
  }
  conn->srv->stats.net_out += conn->wlen;
  conn->wlen = 0;
  if (!conn->closing)
    conn_flush(conn);
}

static void conn_flush(vlm__conn *conn) {
  vlm_server *srv = conn->srv;
  if (conn->closing)
    return;
  if (conn->out.oom) {
    vlm__server_log(srv, "client %llu: out of memory for its reply, closing",
                    (unsigned long long)conn->id);
    conn_close(conn);
    return;
  }
  if (!conn->writing && conn->out.len > 0) {
    uv_buf_t buf = uv_buf_init(conn->out.data, (unsigned)conn->out.len);
    int n = uv_try_write((uv_stream_t *)&conn->tcp, &buf, 1);
    if (n == UV_EAGAIN || n == UV_ENOSYS)
      n = 0;
    if (n < 0) {
      conn_close(conn);
      return;
    }
    srv->stats.net_out += (uint64_t)n;
    if ((size_t)n == conn->out.len) {
      conn->out.len = 0;
      if (conn->out.cap > 64 * 1024) {
        vlm__buf_free(&conn->out);
        conn->out.resp3 = conn->resp3;
      }
    } else {
      /* The kernel is full: hand the rest to one uv_write. */
      size_t rest = conn->out.len - (size_t)n;
      if (n > 0)
        memmove(conn->out.data, conn->out.data + n, rest);
      conn->wdata = conn->out.data;
      conn->wlen = rest;
      vlm__buf_init(&conn->out, conn->resp3);
      uv_buf_t wbuf = uv_buf_init(conn->wdata, (unsigned)rest);
      conn->wreq.data = conn;
      int rc = uv_write(&conn->wreq, (uv_stream_t *)&conn->tcp, &wbuf, 1,
                        on_write);
      if (rc < 0) {
        free(conn->wdata);
        conn->wdata = NULL;
        conn->wlen = 0;
        conn_close(conn);
        return;
      }
      conn->writing = 1;
    }
  }
  if (conn->out.len + conn->wlen > srv->max_output) {
    srv->stats.slow_readers++;
    vlm__server_log(srv, "client %llu (%s): %zu reply bytes unsent, over the "
                    "%zu byte limit: disconnecting a slow reader",
                    (unsigned long long)conn->id, conn->addr,
                    conn->out.len + conn->wlen, srv->max_output);
    conn_close(conn);
    return;
  }
  if (conn->quit && !conn->writing && conn->out.len == 0 && conn->njobs == 0)
    conn_close(conn);
  else if (conn->http && !conn->writing && conn->out.len == 0 &&
           conn->njobs == 0 && vlm__http_flushed(conn) < 0)
    conn_close(conn);
}

/* ======================================================================
 * Closing
 * ==================================================================== */

static void conn_free(vlm__conn *conn) {
  vlm__http_conn_free(conn);
  vlm__resp_parser_free(&conn->parser);
  free(conn->qbuf);
  vlm__buf_free(&conn->out);
  free(conn->wdata);
  free(conn);
}

static void on_conn_close(uv_handle_t *handle) {
  vlm__conn *conn = handle->data;
  vlm_server *srv = conn->srv;
  if (conn->prev)
    conn->prev->next = conn->next;
  else
    srv->conns = conn->next;
  if (conn->next)
    conn->next->prev = conn->prev;
  srv->nconns--;
  srv->freed_since_trim += conn->qcap + conn->out.cap + 4096;
  /* Replies nobody will read: free the finished ones, orphan the others
   * (the workers still hold them; they are freed when they complete). */
  vlm__job *job = conn->jobs_head;
  while (job) {
    vlm__job *next = job->next;
    if (job->done)
      vlm__job_free(job);
    else
      job->orphan = 1;
    job = next;
  }
  conn->jobs_head = conn->jobs_tail = NULL;
  conn->njobs = 0;
  vlm__job_free_list(conn->multi_head); /* a transaction never executed */
  conn->multi_head = conn->multi_tail = NULL;
  conn->closed = 1;
  if (conn->refs == 0)
    conn_free(conn);
  maybe_finish_shutdown(srv);
}

static void conn_close(vlm__conn *conn) {
  if (conn->closing)
    return;
  conn->closing = 1;
  conn->reading = 0;
  uv_close((uv_handle_t *)&conn->tcp, on_conn_close);
}

/* ======================================================================
 * Input
 * ==================================================================== */

/* Make room for at least `need` more bytes in the client's own buffer,
 * compacting it first. */
static int conn_qbuf_reserve(vlm__conn *conn, size_t need) {
  if (conn->qpos > 0) {
    memmove(conn->qbuf, conn->qbuf + conn->qpos, conn->qlen - conn->qpos);
    conn->qlen -= conn->qpos;
    conn->qpos = 0;
  }
  if (conn->qcap - conn->qlen >= need)
    return 0;
  /* Double small buffers; size a large one (a big bulk whose length the
   * parser knows) exactly, so a 64 MiB image does not take 128 MiB. */
  size_t cap = conn->qcap ? conn->qcap : READ_CHUNK;
  if (conn->qlen + need > (1u << 20))
    cap = conn->qlen + need;
  else
    while (cap - conn->qlen < need)
      cap *= 2;
  char *q = realloc(conn->qbuf, cap);
  if (!q)
    return VLM_ENOMEM;
  conn->qbuf = q;
  conn->qcap = cap;
  return 0;
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  vlm__conn *conn = handle->data;
  vlm_server *srv = conn->srv;
  (void)suggested;
  if (conn->http && srv->rbuf_busy) {
    /* HTTP input is consumed whole by its parser: a scratch buffer */
    if (conn_qbuf_reserve(conn, READ_CHUNK) < 0) {
      *buf = uv_buf_init(NULL, 0);
      return;
    }
    *buf = uv_buf_init(conn->qbuf, READ_CHUNK);
    return;
  }
  if (conn->qlen == conn->qpos && !srv->rbuf_busy) {
    srv->rbuf_busy = 1;
    *buf = uv_buf_init(srv->rbuf, READ_CHUNK);
    return;
  }
  /* A partial request is pending: read into the client's buffer, sized
   * for the bulk being received when the parser knows its length. */
  size_t have = conn->qlen - conn->qpos;
  size_t want = vlm__resp_want(&conn->parser, have);
  size_t need = want > READ_CHUNK ? want : READ_CHUNK;
  if (need > srv->max_request + READ_CHUNK)
    need = srv->max_request + READ_CHUNK;
  if (conn_qbuf_reserve(conn, need) < 0) {
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init(conn->qbuf + conn->qlen,
                     (unsigned)(conn->qcap - conn->qlen));
}

/* Parse and dispatch every complete request in data[0, len); return the
 * bytes consumed.  Stops early when the client must wait (pipeline full,
 * QUIT, protocol error, closing). */
static size_t process_bytes(vlm__conn *conn, char *data, size_t len) {
  vlm_server *srv = conn->srv;
  size_t pos = 0;
  while (pos < len && !conn->closing && !conn->quit && !conn->paused) {
    size_t used;
    int rc = vlm__resp_parse(&conn->parser, data + pos, len - pos, &used);
    if (rc == VLM__RESP_MORE)
      break;
    if (rc < 0) {
      srv->stats.protocol_errors++;
      vlm__server_log(srv, "client %llu (%s): %s",
                      (unsigned long long)conn->id, conn->addr,
                      conn->parser.err);
      /* The reply goes out in order, then the connection closes: the
       * stream cannot be resynchronized. */
      vlm__reply_error(vlm__conn_reply_buf(conn), "ERR", "%s",
                       conn->parser.err);
      vlm__conn_quit(conn);
      return len;
    }
    pos += used;
    if (conn->parser.argc > 0) {
      srv->stats.commands++;
      srv->more_input = pos < len;
      vlm__dispatch(conn, conn->parser.argc, conn->parser.argv);
      srv->more_input = 0;
      if (conn->njobs >= srv->max_pipeline && !conn->paused) {
        conn->paused = 1;
        if (conn->reading) {
          uv_read_stop((uv_stream_t *)&conn->tcp);
          conn->reading = 0;
        }
      }
    }
  }
  return pos;
}

static void conn_process(vlm__conn *conn) {
  if (conn->qlen > conn->qpos) {
    conn->qpos += process_bytes(conn, conn->qbuf + conn->qpos,
                                conn->qlen - conn->qpos);
  }
  if (conn->qpos == conn->qlen) {
    conn->qpos = conn->qlen = 0;
    if (conn->qbuf && !conn->parser.kind) {
      conn->srv->freed_since_trim += conn->qcap;
      free(conn->qbuf);
      conn->qbuf = NULL;
      conn->qcap = 0;
    }
  }
}

static void on_read_conn(vlm__conn *conn, ssize_t nread, const uv_buf_t *buf);
static void on_jobs_done(uv_async_t *async);

/* A job run inline during the read completes here, before the reply is
 * flushed: no wake-up of the loop by itself.  A completion can start more
 * work of its client (a resumed pipeline), which may finish inline too. */
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  vlm__conn *conn = stream->data;
  vlm_server *srv = conn->srv;
  srv->in_read = 1;
  on_read_conn(conn, nread, buf);
  while (srv->inline_done) {
    srv->inline_done = 0;
    on_jobs_done(&srv->async_done);
  }
  srv->in_read = 0;
}

static void on_read_conn(vlm__conn *conn, ssize_t nread, const uv_buf_t *buf) {
  vlm_server *srv = conn->srv;
  int shared = buf->base == srv->rbuf;
  if (shared)
    srv->rbuf_busy = 0;
  if (nread == UV_EOF) {
    /* The client is done sending (it may have only shut down its side,
     * as `printf 'SEARCH ...' | nc -N` does): answer what it sent, then
     * close.  If it is gone entirely, the first write fails and closes. */
    vlm__conn_quit(conn);
    conn_flush(conn);
    return;
  }
  if (nread < 0) {
    if (nread == UV_ENOBUFS)
      vlm__server_log(srv, "client %llu: out of memory for its request",
                      (unsigned long long)conn->id);
    conn_close(conn); /* a socket error: replies owed are dropped */
    return;
  }
  if (nread == 0 || conn->closing)
    return;
  srv->stats.net_in += (uint64_t)nread;
  conn->last_ms = uv_now(&srv->loop);
  if (conn->http) {
    vlm__http_read(conn, buf->base, (size_t)nread);
    conn_drain_jobs(conn); /* requests refused at once are complete */
  } else if (shared) {
    size_t used = process_bytes(conn, buf->base, (size_t)nread);
    size_t rest = (size_t)nread - used;
    if (rest > 0 && !conn->closing && !conn->quit) {
      /* A partial request (or requests waiting for the pipeline to
       * drain): keep them in the client's own buffer. */
      if (conn_qbuf_reserve(conn, rest) < 0) {
        conn_close(conn);
        return;
      }
      memcpy(conn->qbuf + conn->qlen, buf->base + used, rest);
      conn->qlen += rest;
    }
  } else {
    conn->qlen += (size_t)nread;
    conn_process(conn);
  }
  conn_flush(conn);
}

static void conn_resume(vlm__conn *conn) {
  vlm_server *srv = conn->srv;
  if (!conn->paused || conn->njobs > srv->max_pipeline / 2)
    return;
  conn->paused = 0;
  conn_process(conn);
  if (!conn->paused && !conn->quit && !conn->closing && !conn->reading &&
      !srv->shutting_down) {
    if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) == 0)
      conn->reading = 1;
  }
}

/* ======================================================================
 * Completions from the workers
 * ==================================================================== */

static void on_jobs_done(uv_async_t *async) {
  vlm_server *srv = async->data;
  pthread_mutex_lock(&srv->done_mu);
  vlm__job *job = srv->done_head;
  srv->done_head = srv->done_tail = NULL;
  pthread_mutex_unlock(&srv->done_mu);
  /* Each client is flushed once per wake-up, after all its completions:
   * one write for a burst of pipelined replies. */
  vlm__conn *touched = NULL;
  while (job) {
    vlm__job *next = job->done_next;
    vlm__conn *conn = job->conn;
    if (job->after) {
      int (*after)(vlm__job *) = job->after;
      job->after = NULL;
      if (after(job)) { /* it posts the job again when done */
        job = next;
        continue;
      }
    }
    conn->refs--;
    vlm__job_finished(job);
    if (job->cmd)
      vlm__metrics_latency(srv, job->cmd,
                           (double)(vlm__now_ns() - job->created_ns) * 1e-9);
    if (job->orphan) {
      vlm__job_free(job);
      if (conn->closed && conn->refs == 0)
        conn_free(conn);
    } else {
      job->done = 1;
      if (!conn->closing) {
        conn_drain_jobs(conn);
        conn_resume(conn);
        if (!conn->flush_queued) {
          conn->flush_queued = 1;
          conn->flush_next = touched;
          touched = conn;
        }
      }
    }
    job = next;
  }
  while (touched) {
    vlm__conn *conn = touched;
    touched = conn->flush_next;
    conn->flush_queued = 0;
    conn_flush(conn);
  }
  vlm__reembed_poll(srv); /* a model switch waits for jobs to come back */
  maybe_finish_shutdown(srv);
}

/* ======================================================================
 * Accepting
 * ==================================================================== */

static void accept_conn(uv_stream_t *listener, int status, int http) {
  vlm_server *srv = listener->data;
  if (status < 0) {
    vlm__server_log(srv, "accept: %s", uv_strerror(status));
    return;
  }
  vlm__conn *conn = calloc(1, sizeof *conn);
  if (!conn) {
    /* libuv stops polling the listener until the next accept. */
    vlm__server_log(srv, "accept: out of memory");
    return;
  }
  conn->srv = srv;
  uv_tcp_init(&srv->loop, &conn->tcp);
  conn->tcp.data = conn;
  vlm__resp_parser_init(&conn->parser, &srv->limits);
  vlm__buf_init(&conn->out, 0);
  conn->id = ++srv->next_id;
  conn->authed = srv->password == NULL;
  int refuse = http && vlm__http_conn_init(conn) < 0;
  conn->created_ms = conn->last_ms = uv_now(&srv->loop);
  conn->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = conn;
  srv->conns = conn;
  srv->nconns++;
  if (uv_accept(listener, (uv_stream_t *)&conn->tcp) < 0) {
    conn_close(conn);
    return;
  }
  struct sockaddr_storage ss;
  int sslen = sizeof ss;
  if (uv_tcp_getpeername(&conn->tcp, (struct sockaddr *)&ss, &sslen) == 0) {
    char ip[48];
    if (ss.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
      snprintf(conn->addr, sizeof conn->addr, "[%s]:%d", ip,
               ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    } else {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
      snprintf(conn->addr, sizeof conn->addr, "%s:%d", ip,
               ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
  }
  if (srv->shutting_down || refuse) {
    if (refuse)
      vlm__server_log(srv, "accept: out of memory");
    conn_close(conn);
    return;
  }
  if (srv->nconns > srv->maxclients) {
    srv->stats.rejected++;
    if (conn->http)
      vlm__http_error(&conn->out, 503, "unavailable", NULL, 0,
                      "max number of clients reached");
    else
      vlm__reply_error(&conn->out, "ERR", "max number of clients reached");
    uv_buf_t buf = uv_buf_init(conn->out.data, (unsigned)conn->out.len);
    uv_try_write((uv_stream_t *)&conn->tcp, &buf, 1);
    conn_close(conn);
    return;
  }
  srv->stats.connections++;
  uv_tcp_nodelay(&conn->tcp, 1);
  if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) < 0) {
    conn_close(conn);
    return;
  }
  conn->reading = 1;
}

static void on_connection(uv_stream_t *listener, int status) {
  accept_conn(listener, status, 0);
}

static void on_http_connection(uv_stream_t *listener, int status) {
  accept_conn(listener, status, 1);
}

/* ======================================================================
 * Timers, signals, shutdown
 * ==================================================================== */

static void on_cron(uv_timer_t *timer) {
  vlm_server *srv = timer->data;
  uint64_t now = uv_now(&srv->loop);
  for (vlm__conn *conn = srv->conns, *next; conn; conn = next) {
    next = conn->next;
    if (conn->http && !conn->closing && vlm__http_linger_over(conn, now))
      conn_close(conn);
  }
  if (srv->timeout_s > 0) {
    uint64_t limit = (uint64_t)srv->timeout_s * 1000u;
    for (vlm__conn *conn = srv->conns, *next; conn; conn = next) {
      next = conn->next;
      if (!conn->closing && conn->njobs == 0 && !conn->writing &&
          now - conn->last_ms > limit) {
        srv->stats.timeouts++;
        conn_close(conn);
      }
    }
  }
  vlm__repl_cron(srv);
  vlm__reembed_poll(srv);
  /* Give memory freed by departed clients and large requests back to the
   * system, so the server returns to its baseline size. */
  if (srv->freed_since_trim > 4 * 1024 * 1024) {
    malloc_trim(0);
    srv->freed_since_trim = 0;
  }
}

static void close_handle(vlm_server *srv, uv_handle_t *h) {
  if (!uv_is_closing(h)) {
    uv_close(h, NULL);
    (void)srv;
  }
}

/* Run the jobs still waiting behind others of their (closed) connection:
 * each completion may release the next, so take completions here until no
 * job waits.  Some job of each such connection is in the workers, so this
 * ends. */
static void drain_waiting_jobs(vlm_server *srv) {
  while (srv->jobs_waiting > 0) {
    pthread_mutex_lock(&srv->done_mu);
    while (!srv->done_head)
      pthread_cond_wait(&srv->done_cv, &srv->done_mu);
    pthread_mutex_unlock(&srv->done_mu);
    on_jobs_done(&srv->async_done);
  }
}

/* Take the last completions once the workers are gone; a coordinated
 * command's completion can post its job again (its fan-out fails at once
 * while stopping), so until none is left. */
static void take_last_completions(vlm_server *srv) {
  int more;
  do {
    on_jobs_done(&srv->async_done);
    pthread_mutex_lock(&srv->done_mu);
    more = srv->done_head != NULL;
    pthread_mutex_unlock(&srv->done_mu);
  } while (more);
}

static void finish_shutdown(vlm_server *srv) {
  /* No client is left: every job still in the workers is an orphan.
   * Coordinated commands waiting on other shards fail now, so that the
   * jobs waiting behind them can run; a re-embedding stops before its
   * switch. */
  vlm__reembed_stop(srv, 1);
  vlm__cluster_stop(srv);
  vlm__repl_stop(srv);
  drain_waiting_jobs(srv);
  vlm__batcher_stop(&srv->batcher);
  vlm__pool_stop(&srv->pool);
  take_last_completions(srv);
  vlm__repl_close(srv);
  /* a read-only database (serve --mmap) has nothing to write */
  int rc = !srv->db || vlm_db_readonly(srv->db) ? 0
                                                : vlm_db_checkpoint(srv->db);
  if (rc < 0) {
    srv->checkpoint_rc = rc;
    vlm__server_log(srv, "checkpoint failed: %s", vlm_errmsg());
  } else {
    vlm__server_log(srv, "checkpoint written; shut down");
  }
  close_handle(srv, (uv_handle_t *)&srv->async_done);
  close_handle(srv, (uv_handle_t *)&srv->async_stop);
  close_handle(srv, (uv_handle_t *)&srv->async_reembed);
  close_handle(srv, (uv_handle_t *)&srv->cron);
  close_handle(srv, (uv_handle_t *)&srv->shutdown_timer);
  if (srv->handle_signals) {
    close_handle(srv, (uv_handle_t *)&srv->sig_int);
    close_handle(srv, (uv_handle_t *)&srv->sig_term);
  }
}

static void maybe_finish_shutdown(vlm_server *srv) {
  if (srv->shutting_down == 1 && srv->nconns == 0 &&
      uv_is_closing((uv_handle_t *)&srv->listener)) {
    srv->shutting_down = 2;
    finish_shutdown(srv);
  }
}

static void on_shutdown_deadline(uv_timer_t *timer) {
  vlm_server *srv = timer->data;
  vlm__server_log(srv, "shutdown: closing %d clients still busy",
                  srv->nconns);
  for (vlm__conn *conn = srv->conns, *next; conn; conn = next) {
    next = conn->next;
    conn_close(conn);
  }
}

static void begin_shutdown(vlm_server *srv) {
  if (srv->shutting_down)
    return;
  srv->shutting_down = 1;
  vlm__server_log(srv, "shutting down: finishing requests in flight");
  vlm__reembed_stop(srv, 0); /* held jobs go to the workers */
  close_handle(srv, (uv_handle_t *)&srv->listener);
  close_handle(srv, (uv_handle_t *)&srv->http_listener);
  uv_timer_start(&srv->shutdown_timer, on_shutdown_deadline,
                 SHUTDOWN_DEADLINE_MS, 0);
  for (vlm__conn *conn = srv->conns, *next; conn; conn = next) {
    next = conn->next;
    if (conn->closing)
      continue;
    vlm__conn_quit(conn); /* no new requests; replies owed still go out */
    conn_flush(conn);
  }
  maybe_finish_shutdown(srv);
}

static void on_stop(uv_async_t *async) { begin_shutdown(async->data); }

static void on_reembed(uv_async_t *async) { vlm__reembed_poll(async->data); }

static void on_signal(uv_signal_t *sig, int signum) {
  vlm_server *srv = sig->data;
  vlm__server_log(srv, "received %s", signum == SIGINT ? "SIGINT" : "SIGTERM");
  begin_shutdown(srv);
}

/* ======================================================================
 * Public API
 * ==================================================================== */

static int is_loopback(const char *addr) {
  return !strncmp(addr, "127.", 4) || !strcmp(addr, "::1") ||
         !strcmp(addr, "localhost");
}

static int listen_on(vlm_server *srv, uv_tcp_t *listener, int *port,
                     uv_connection_cb cb) {
  struct sockaddr_storage ss;
  const char *host = strcmp(srv->bind, "localhost") ? srv->bind : "127.0.0.1";
  int rc;
  if (strchr(host, ':'))
    rc = uv_ip6_addr(host, *port, (struct sockaddr_in6 *)&ss);
  else
    rc = uv_ip4_addr(host, *port, (struct sockaddr_in *)&ss);
  if (rc < 0)
    return vlm_seterr(VLM_EINVAL, "bind address '%s': %s", srv->bind,
                      uv_strerror(rc));
  rc = uv_tcp_bind(listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)listener, 511, cb);
  if (rc < 0)
    return vlm_seterr(VLM_ENET, "listen on %s:%d%s: %s", srv->bind, *port,
                      cb == on_http_connection ? " (HTTP)" : "",
                      uv_strerror(rc));
  int len = sizeof ss;
  if (uv_tcp_getsockname(listener, (struct sockaddr *)&ss, &len) == 0)
    *port = ntohs(ss.ss_family == AF_INET6
                      ? ((struct sockaddr_in6 *)&ss)->sin6_port
                      : ((struct sockaddr_in *)&ss)->sin_port);
  return 0;
}

int vlm_server_create(vlm_db *db, vlm_clip *clip,
                      const vlm_server_options *opts, vlm_server **out) {
  *out = NULL;
  vlm_server_options defaults = {0};
  if (!opts)
    opts = &defaults;
  if (!db)
    return vlm_seterr(VLM_EINVAL, "server: no database");
  const char *bind = opts->bind ? opts->bind : "127.0.0.1";
  if (strlen(bind) >= 64)
    return vlm_seterr(VLM_EINVAL, "bind address too long");
  if (!is_loopback(bind) && !(opts->requirepass && *opts->requirepass))
    return vlm_seterr(VLM_EINVAL,
                      "refusing to listen on %s without a password: anyone "
                      "who can reach it could read and change the database;"
                      " set --requirepass, or bind to 127.0.0.1", bind);
  if (opts->port < 0 || opts->port > 65535)
    return vlm_seterr(VLM_EINVAL, "port %d out of range", opts->port);
  if (opts->http && (opts->http_port < 0 || opts->http_port > 65535))
    return vlm_seterr(VLM_EINVAL, "HTTP port %d out of range",
                      opts->http_port);
  if (opts->threads < 0 || opts->maxclients < 0 || opts->timeout_s < 0 ||
      opts->max_pipeline < 0 || opts->batch_max < 0 ||
      opts->batch_window_us < VLM_SERVER_NO_BATCH)
    return vlm_seterr(VLM_EINVAL, "server: negative option");

  vlm_db_info info;
  int rc = vlm_db_stat(db, &info);
  if (rc < 0)
    return rc;
  if (clip && vlm_clip_dim(clip) != info.dim)
    return vlm_seterr(VLM_EMISMATCH, "model dimension %d, database %d",
                      vlm_clip_dim(clip), info.dim);

  vlm_server *srv = calloc(1, sizeof *srv);
  if (!srv)
    return vlm_seterr(VLM_ENOMEM, "server");
  srv->db = db;
  srv->clip = clip;
  srv->dim = info.dim;
  srv->image_size = clip ? vlm_clip_image_size(clip) : 0;
  snprintf(srv->bind, sizeof srv->bind, "%s", bind);
  srv->port = opts->port;
  srv->http_port = opts->http ? opts->http_port : -1;
  snprintf(srv->db_dir, sizeof srv->db_dir, "%s",
           opts->db_dir ? opts->db_dir : "");
  if (opts->requirepass && *opts->requirepass) {
    srv->password = strdup(opts->requirepass);
    srv->password_len = strlen(opts->requirepass);
  }
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  srv->threads = opts->threads ? opts->threads : (ncpu > 0 ? (int)ncpu : 2);
  srv->maxclients = opts->maxclients ? opts->maxclients
                                     : VLM_SERVER_DEFAULT_MAXCLIENTS;
  srv->max_request = opts->max_request_bytes ? opts->max_request_bytes
                                             : VLM_SERVER_DEFAULT_MAX_REQUEST;
  srv->max_output = opts->max_output_bytes ? opts->max_output_bytes
                                           : VLM_SERVER_DEFAULT_MAX_OUTPUT;
  srv->max_pipeline = opts->max_pipeline ? opts->max_pipeline
                                         : VLM_SERVER_DEFAULT_MAX_PIPELINE;
  srv->timeout_s = opts->timeout_s;
  srv->batch_window_us = opts->batch_window_us
                             ? opts->batch_window_us
                             : VLM_SERVER_DEFAULT_BATCH_WINDOW_US;
  srv->batch_max = opts->batch_max ? opts->batch_max
                                   : VLM_SERVER_DEFAULT_BATCH_MAX;
  srv->inline_max_us = opts->inline_max_us == VLM_SERVER_NO_INLINE ? 0
                       : opts->inline_max_us > 0
                           ? opts->inline_max_us
                           : VLM_SERVER_DEFAULT_INLINE_MAX_US;
  srv->handle_signals = opts->handle_signals;
  snprintf(srv->model_dir, sizeof srv->model_dir, "%s",
           opts->model_dir ? opts->model_dir : "");
  srv->log = opts->log;
  srv->limits.max_bulk = srv->max_request;
  srv->limits.max_request = srv->max_request;
  srv->limits.max_args = 1 << 16;
  srv->limits.max_inline = 64 * 1024;
  srv->nfields = info.nfields;
  for (int i = 0; i < srv->nfields; i++) {
    snprintf(srv->field_names[i], sizeof srv->field_names[i], "%s",
             info.field_names[i]);
    srv->field_types[i] = info.field_types[i];
  }
  pthread_mutex_init(&srv->done_mu, NULL);
  pthread_cond_init(&srv->done_cv, NULL);
  if (opts->cluster) {
    /* The database must be the shard it is served as, holding exactly
     * the slots the map gives that shard: a database left between the
     * steps of a killed `vlmdb cluster move` is not served, so no search
     * finds an item in two shards.  The digest may be an older map's (a
     * shard a move left alone keeps the one it was built with). */
    const vlm_cluster *map = opts->cluster;
    const vlm_cluster_shard *mine =
        opts->shard >= 0 && opts->shard < map->nshards
            ? &map->shards[opts->shard]
            : NULL;
    /* or more slots, marked as a live move's (vlm_cluster_held_ok): the
     * node hides the items of the slots its map does not give it */
    int same_slots =
        mine && info.nshards == map->nshards &&
        vlm_cluster_held_ok(map, opts->shard, info.slot_ranges,
                            info.nslot_ranges, info.cluster_digest) >= 0;
    if (info.shard >= 0 && (info.shard != opts->shard ||
                            info.nshards != map->nshards || !same_slots)) {
      char held[256] = "", given[256] = "";
      vlm_slot_ranges_format(info.slot_ranges, info.nslot_ranges, held,
                             sizeof held);
      if (mine)
        vlm_slot_ranges_format(mine->ranges, mine->nranges, given,
                               sizeof given);
      rc = vlm_seterr(VLM_EMISMATCH, "the database is shard %d of the "
                      "cluster map with digest %s, not shard %d of this map "
                      "(digest %s): it holds slots %s, the map gives shard "
                      "%d slots %s%s", info.shard, info.cluster_digest,
                      opts->shard, map->digest, held, opts->shard, given,
                      info.shard == opts->shard
                          ? " (a `vlmdb cluster move` not finished? run it "
                            "again)"
                          : "");
    }
    else if (info.shard < 0 && map->nshards > 1)
      rc = vlm_seterr(VLM_EMISMATCH, "the database is not a shard (vlmdb "
                      "init --cluster) but the cluster map has %d shards",
                      map->nshards);
    else
      rc = vlm__cluster_init(srv, map, opts->cluster_path, opts->shard,
                             opts->cluster_timeout_ms);
    if (rc < 0)
      goto fail_early;
  }
  if ((rc = vlm__repl_init(srv, opts->replica_of, opts->repl_backlog)) < 0 ||
      (rc = vlm__reembed_init(srv)) < 0)
    goto fail_early;
  srv->rbuf = malloc(READ_CHUNK);
  srv->exec_cost_us = calloc((size_t)vlm__command_count(),
                             sizeof *srv->exec_cost_us);
  if (!srv->rbuf || !srv->exec_cost_us || vlm__metrics_init(srv) < 0 || (opts->requirepass && *opts->requirepass &&
                     !srv->password)) {
    rc = vlm_seterr(VLM_ENOMEM, "server");
    goto fail_early;
  }

  rc = uv_loop_init(&srv->loop);
  if (rc < 0) {
    rc = vlm_seterr(VLM_ENET, "event loop: %s", uv_strerror(rc));
    goto fail_early;
  }
  uv_tcp_init(&srv->loop, &srv->listener);
  srv->listener.data = srv;
  uv_tcp_init(&srv->loop, &srv->http_listener);
  srv->http_listener.data = srv;
  uv_async_init(&srv->loop, &srv->async_done, on_jobs_done);
  srv->async_done.data = srv;
  uv_async_init(&srv->loop, &srv->async_stop, on_stop);
  srv->async_stop.data = srv;
  uv_async_init(&srv->loop, &srv->async_reembed, on_reembed);
  srv->async_reembed.data = srv;
  uv_timer_init(&srv->loop, &srv->cron);
  srv->cron.data = srv;
  uv_timer_init(&srv->loop, &srv->shutdown_timer);
  srv->shutdown_timer.data = srv;
  if (srv->handle_signals) {
    uv_signal_init(&srv->loop, &srv->sig_int);
    srv->sig_int.data = srv;
    uv_signal_init(&srv->loop, &srv->sig_term);
    srv->sig_term.data = srv;
  }
  rc = listen_on(srv, &srv->listener, &srv->port, on_connection);
  if (rc == 0 && srv->http_port >= 0)
    rc = listen_on(srv, &srv->http_listener, &srv->http_port,
                   on_http_connection);
  if (rc < 0)
    goto fail_loop;
  rc = vlm__pool_start(&srv->pool, srv->threads);
  if (rc < 0)
    goto fail_loop;
  rc = vlm__batcher_start(&srv->batcher, srv, srv->batch_window_us,
                          srv->batch_max);
  if (rc < 0) {
    vlm__batcher_destroy(&srv->batcher);
    vlm__pool_stop(&srv->pool);
    goto fail_loop;
  }
  *out = srv;
  return 0;

fail_loop:
  /* Close every handle and let the loop run their close callbacks. */
  uv_close((uv_handle_t *)&srv->listener, NULL);
  uv_close((uv_handle_t *)&srv->http_listener, NULL);
  uv_close((uv_handle_t *)&srv->async_done, NULL);
  uv_close((uv_handle_t *)&srv->async_stop, NULL);
  uv_close((uv_handle_t *)&srv->async_reembed, NULL);
  uv_close((uv_handle_t *)&srv->cron, NULL);
  uv_close((uv_handle_t *)&srv->shutdown_timer, NULL);
  if (srv->handle_signals) {
    uv_close((uv_handle_t *)&srv->sig_int, NULL);
    uv_close((uv_handle_t *)&srv->sig_term, NULL);
  }
  uv_run(&srv->loop, UV_RUN_DEFAULT);
  uv_loop_close(&srv->loop);
fail_early:
  vlm__reembed_free(srv);
  vlm__metrics_free(srv);
  vlm__cluster_free(srv);
  vlm__repl_free(srv);
  pthread_cond_destroy(&srv->done_cv);
  pthread_mutex_destroy(&srv->done_mu);
  free(srv->rbuf);
  free(srv->exec_cost_us);
  free(srv->password);
  free(srv);
  return rc;
}

int vlm_server_port(const vlm_server *srv) { return srv->port; }

void vlm_server_handles(const vlm_server *srv, vlm_db **db, vlm_clip **clip) {
  *db = srv->db;
  *clip = srv->clip;
}

int vlm_server_http_port(const vlm_server *srv) {
  return srv->http_port >= 0 ? srv->http_port : 0;
}

int vlm_server_run(vlm_server *srv) {
  if (srv->running || srv->shutting_down)
    return vlm_seterr(VLM_ESTATE, "server already ran");
  srv->running = 1;
  srv->start_ms = uv_now(&srv->loop);
  if (srv->handle_signals) {
    signal(SIGPIPE, SIG_IGN);
    uv_signal_start(&srv->sig_int, on_signal, SIGINT);
    uv_signal_start(&srv->sig_term, on_signal, SIGTERM);
  }
  uv_timer_start(&srv->cron, on_cron, CRON_MS, CRON_MS);
  if (vlm__repl_start(srv) < 0)
    vlm__server_log(srv, "replication: %s", vlm_errmsg());
  vlm__server_log(srv, "listening on %s:%d (%d worker threads, batch window "
                  "%d us)", srv->bind, srv->port, srv->threads,
                  srv->batch_window_us);
  uv_run(&srv->loop, UV_RUN_DEFAULT);
  srv->running = 0;
  return srv->checkpoint_rc;
}

void vlm_server_stop(vlm_server *srv) { uv_async_send(&srv->async_stop); }

void vlm_server_free(vlm_server *srv) {
  if (!srv)
    return;
  if (srv->shutting_down != 2) {
    /* Never ran (or run failed): shut down without clients. */
    srv->shutting_down = 2;
    uv_close((uv_handle_t *)&srv->listener, NULL);
    uv_close((uv_handle_t *)&srv->http_listener, NULL);
    for (vlm__conn *conn = srv->conns; conn; conn = conn->next)
      conn_close(conn);
    uv_run(&srv->loop, UV_RUN_NOWAIT);
    vlm__reembed_stop(srv, 1);
    vlm__cluster_stop(srv);
    vlm__repl_stop(srv);
    drain_waiting_jobs(srv);
    vlm__batcher_stop(&srv->batcher);
    vlm__pool_stop(&srv->pool);
    take_last_completions(srv);
    vlm__repl_close(srv);
    close_handle(srv, (uv_handle_t *)&srv->async_done);
    close_handle(srv, (uv_handle_t *)&srv->async_stop);
    close_handle(srv, (uv_handle_t *)&srv->async_reembed);
    close_handle(srv, (uv_handle_t *)&srv->cron);
    close_handle(srv, (uv_handle_t *)&srv->shutdown_timer);
    if (srv->handle_signals) {
      close_handle(srv, (uv_handle_t *)&srv->sig_int);
      close_handle(srv, (uv_handle_t *)&srv->sig_term);
    }
  }
  uv_run(&srv->loop, UV_RUN_DEFAULT);
  uv_loop_close(&srv->loop);
  vlm__cluster_free(srv);
  vlm__repl_free(srv);
  vlm__reembed_free(srv);
  vlm__batcher_destroy(&srv->batcher);
  vlm__metrics_free(srv);
  pthread_cond_destroy(&srv->done_cv);
  pthread_mutex_destroy(&srv->done_mu);
  free(srv->rbuf);
  free(srv->exec_cost_us);
  if (srv->password) {
    memset(srv->password, 0, srv->password_len);
    free(srv->password);
  }
  free(srv);
}
