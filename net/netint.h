/* netint.h - the server's private structures, shared by the files of net/:
 *
 *   server.c    the libuv loop: listener, connections, reading, writing,
 *               limits, idle timeout, graceful shutdown
 *   pool.c      the worker threads
 *   jobs.c      a request's way through the workers: image decoding,
 *               embedding (dynamic batching per modality), execution, and
 *               back to the loop in its connection's order
 *   commands.c  the command table and its handlers
 *   resp.c      the protocol
 *   http.c      HTTP/1.1 connections: parsing, limits, responses (http.h)
 *   api.c       the JSON API: a request becomes the command RESP would run
 *   render.c    and its RESP3 reply becomes JSON (http.h)
 *   json.c      a RESP3 reply reader and a JSON writer (http.h)
 *   metrics.c   counters and histograms, /metrics (http.h)
 *   cluster.c   Redis Cluster serving: the map, redirections, fan-out,
 *               a live move's hidden slots and write fence (VLM.MIGRATE)
 *   migrate.c   a live move's item transfer: VLM.RANGEKEYS, DUMP, RESTORE
 *   replica.c   read replicas: VLM.SYNC / VLM.SEED, following a primary
 *   reembed.c   VLM.REEMBED: another model while serving, and the switch
 *
 * Thread rules.  Everything in vlm_server and vlm__conn belongs to the loop
 * thread, except the fields marked otherwise.  A job belongs to the loop
 * until it is submitted to the pool, then to the workers (the batcher hands
 * it from one worker stage to the next) until vlm__job_complete posts it
 * back; workers touch only the job, the read-only server settings, the
 * database and the model (both thread safe).
 */
#ifndef VLM_NET_INT_H
#define VLM_NET_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "resp.h"
#include "vlm_server.h"
#include "vlm_slot.h"

typedef struct vlm__conn vlm__conn;
typedef struct vlm__job vlm__job;
typedef struct vlm__command vlm__command;
typedef struct vlm__http_conn vlm__http_conn;
typedef struct vlm__http_req vlm__http_req;
typedef struct vlm__metrics vlm__metrics;

/* ---- worker pool (pool.c) ---- */

typedef struct vlm__task {
  struct vlm__task *next;
  void (*run)(struct vlm__task *task);
} vlm__task;

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  vlm__task *head, *tail;
  int nthreads;
  int active;      /* tasks running */
  int stopping;
  pthread_t *threads;
} vlm__pool;

int vlm__pool_start(vlm__pool *pool, int nthreads);
/* FIFO; any thread.  Tasks submitted while stopping still run. */
void vlm__pool_submit(vlm__pool *pool, vlm__task *task);
/* 1 when nothing is queued or running (and not stopping). */
int vlm__pool_idle(vlm__pool *pool);
/* Run every queued task (and those they submit), then join the threads. */
void vlm__pool_stop(vlm__pool *pool);

/* ---- embedding batcher (jobs.c) ---- */

enum { VLM__TEXT = 0, VLM__IMAGE = 1 };

typedef struct vlm__batcher vlm__batcher;

typedef struct {
  vlm__job *head, *tail;
  int n;
} vlm__batch_queue;

/* One collector thread per modality waits for a batch to fill (or its
 * window to pass) and hands it to the pool; waiting never holds a worker. */
struct vlm__batcher {
  vlm_server *srv;
  pthread_mutex_t mu;
  pthread_cond_t cv[2];
  vlm__batch_queue q[2];
  pthread_t threads[2];
  int nthreads;
  int stopping;    /* collectors: take what is queued and exit */
  int stopped;     /* collectors gone: embed on the submitting thread */
  long window_ns;  /* < 0: no batching */
  int max;
  atomic_llong batches[2], items[2], largest[2];
};

/* Start the collectors (when batching is on and a model is loaded). */
int vlm__batcher_start(vlm__batcher *b, vlm_server *srv, int window_us,
                       int max);
/* Flush the queues to the pool and join the collectors; the pool must
 * still run.  Later submissions embed at once on the calling worker. */
void vlm__batcher_stop(vlm__batcher *b);
void vlm__batcher_destroy(vlm__batcher *b);

/* ---- jobs (jobs.c) ---- */

/* A request answered off the loop, or an inline reply that had to wait
 * behind one (then done from the start and argc == 0). */
struct vlm__job {
  vlm__task task;           /* runs job stages on the pool */
  vlm__job *next;           /* connection's reply order (loop) */
  vlm__job *wait_next;      /* connection's execution queue (loop) */
  vlm__job *done_next;      /* server's completion queue */
  vlm__job *batch_next;     /* batcher queue (batcher lock) */
  vlm__conn *conn;
  vlm_server *srv;
  const vlm__command *cmd;
  int argc;
  vlm__resp_arg *argv;      /* copies, each NUL-terminated, one allocation */
  vlm__buf reply;
  int done;                 /* loop: reply complete */
  int orphan;               /* loop: its connection closed */
  int failed;               /* an error reply has been written */
  /* Embedding stage, set by the command's proc on the loop. */
  const char *embed_text;           /* text to embed, or NULL */
  const void *embed_image;          /* image bytes to embed, or NULL */
  size_t embed_image_len;
  float *text_vec, *image_vec;      /* dim floats, malloc'd by the stage */
  float *pixels;                    /* preprocessed image */
  uint64_t enqueued_ns;             /* batcher: arrival time */
  /* Command-specific state from proc to exec. */
  void *state;
  void (*state_free)(void *state);
  vlm__job *multi_next;     /* a MULTI queue (loop) or an EXEC's list */
  /* HTTP: how to turn the RESP3 reply into the response (loop; owned). */
  vlm__http_req *http;
  uint64_t created_ns;      /* for the latency histograms */
  /* Cluster: local is set for a request sent as VLM.LOCAL (answered by
   * this shard alone, never coordinated or redirected).  after, when
   * set by exec, runs on the loop once the job is back from the workers
   * (cleared first): it returns 1 when it keeps the job (it posts it
   * again with vlm__job_complete when done), 0 to finish it now. */
  int local;
  int (*after)(vlm__job *job);
  uint64_t write_seq;       /* loop: a write job's number (0: not one) */
  uint64_t model_gen;       /* the server's model_gen when proc checked it */
};

/* New job for cmd with copies of argv (argc 0: an inline reply slot). */
vlm__job *vlm__job_new(vlm__conn *conn, const vlm__command *cmd, int argc,
                       const vlm__resp_arg *argv);
void vlm__job_free(vlm__job *job);
/* Hand a job to its connection's execution order (loop thread): it goes
 * to the workers at once, or waits until the earlier jobs it must follow
 * are done (see vlm__conn's exec fields). */
void vlm__job_start(vlm__job *job);
/* A job came back from the workers (loop thread, before it is freed or
 * its reply drained): release its place and start the jobs that waited on
 * it. */
void vlm__job_finished(vlm__job *job);
/* Post a finished job back to the loop (any thread). */
void vlm__job_complete(vlm__job *job);
/* Compute the job's embeddings now, on this thread (not through the
 * batcher): EXEC embeds its queued commands' inputs before their batch.
 * 0, or -1 with job->failed set and the error in job->reply. */
int vlm__job_embed_now(vlm__job *job);
/* Send a job back to the workers from the loop (its exec runs again, no
 * embedding): a coordinated command that had to fetch something first.
 * Its place in its connection's order is kept meanwhile. */
void vlm__job_resubmit(vlm__job *job);
/* Free a list of queued jobs linked through multi_next. */
void vlm__job_free_list(vlm__job *head);
/* Launch the jobs held while hold_launches was set (loop thread). */
void vlm__jobs_release_held(vlm_server *srv);

/* ---- commands (commands.c) ---- */

typedef struct {
  vlm_server *srv;
  vlm__conn *conn;          /* the client (loop only) */
  vlm__job *job;            /* NULL for a command answered on the loop */
  int argc;
  const vlm__resp_arg *argv;
  vlm__buf *out;            /* where the reply goes */
} vlm__ctx;

/* proc runs on the loop: it answers (inline commands) or checks the
 * arguments and fills job->state / job->embed_* (worker commands).  It
 * returns 0, or -1 after writing an error reply.  exec runs on a worker
 * and writes the reply to job->reply. */
typedef int (*vlm__proc_fn)(vlm__ctx *ctx);
typedef void (*vlm__exec_fn)(vlm__job *job);

#define VLM__CMD_NOAUTH 1u  /* allowed before AUTH */
#define VLM__CMD_WRITE 2u   /* changes the database */
#define VLM__CMD_ADMIN 4u
#define VLM__CMD_TX 8u      /* MULTI, EXEC, DISCARD, QUIT: never queued */

struct vlm__command {
  const char *name;         /* upper case */
  vlm__proc_fn proc;
  vlm__exec_fn exec;        /* NULL: answered on the loop */
  int arity;                /* Redis's: n exact, -n at least n (with name) */
  unsigned flags;
  const char *group;        /* for COMMAND DOCS */
  const char *syntax;       /* arguments, for COMMAND DOCS and HELP */
  const char *summary;
};

/* COMMAND DOCS "arguments" of a syntax line (docs.c): an array of Redis
 * argument maps; an empty one and -1 for a line outside the grammar. */
int vlm__reply_doc_args(vlm__buf *out, const char *syntax);

/* The command table, for the metrics: its size, an entry, and an entry's
 * index (-1 for a command not in it). */
int vlm__command_count(void);
const vlm__command *vlm__command_at(int i);
int vlm__command_index(const vlm__command *cmd);

/* Look up, check arity and authentication, and run one request. */
void vlm__dispatch(vlm__conn *conn, int argc, const vlm__resp_arg *argv);

/* Run one command for an HTTP request (authentication was checked by
 * http.c): exactly one job goes on the connection's reply list, carrying
 * req (owned from here on); its reply is RESP3, an error reply when the
 * arguments are refused. */
void vlm__dispatch_http(vlm__conn *conn, int argc, const vlm__resp_arg *argv,
                        vlm__http_req *req);
/* Run writes (ADD/UPSERT/UPDATE/DEL argv lists) as one transaction, as
 * MULTI ... EXEC would: one job as above whose reply is EXEC's.  When an
 * item's arguments are refused nothing is queued: -1, *bad the item's
 * index, why its message (req is not taken); -2 the same when the item
 * may be sent again in a moment (its slot is fenced by a live move). */
int vlm__dispatch_http_batch(vlm__conn *conn, int n, const int *argcs,
                             vlm__resp_arg *const *argvs, vlm__http_req *req,
                             int *bad, char *why, size_t whycap);
/* Compare a guess with the secret in time that depends only on the
 * secret's length (AUTH, and HTTP's bearer token). */
int vlm__secret_equal(const char *guess, size_t glen, const char *secret,
                      size_t slen);
/* Check a job's arguments again (its command's proc) against the model
 * served now: a job checked before a model switch (VLM.REEMBED) and run
 * after it.  0, or -1 with job->failed set and the error in job->reply. */
int vlm__job_prepare_again(vlm__job *job);
/* For an UPSERT job sent by HTTP: 1 if the key existed before it. */
int vlm__job_upsert_existed(const vlm__job *job);
/* ---- cluster serving (cluster.c) ---- */

typedef struct vlm__cluster_state vlm__cluster_state;
struct redisReply;

/* Set up cluster mode from opts (map borrowed for the server's life):
 * node ids, this node's address.  0, or VLM_EINVAL naming the problem. */
int vlm__cluster_init(vlm_server *srv, const vlm_cluster *map,
                      const char *path, int shard, int timeout_ms);
/* Disconnect from the other shards, failing every fan-out in flight
 * (loop thread, at shutdown).  Then vlm__cluster_free. */
void vlm__cluster_stop(vlm_server *srv);
void vlm__cluster_free(vlm_server *srv);
/* Shards in the cluster (1 without one), and this node's. */
int vlm__cluster_nshards(const vlm_server *srv);
int vlm__cluster_myshard(const vlm_server *srv);
/* 1 if this node holds slot. */
int vlm__cluster_owns(const vlm_server *srv, int slot);
/* Write -MOVED slot host:port for a slot held elsewhere. */
void vlm__cluster_reply_moved(vlm__buf *out, const vlm_server *srv, int slot);
/* CLUSTER subcommands (loop). */
int vlm__cluster_command(vlm__ctx *ctx);
/* INFO's "# Cluster" section. */
void vlm__cluster_info(vlm_server *srv, vlm__buf *b);

/* Send argv (argc strings of lens bytes, copied) to every other shard of
 * the cluster and call done on the loop when each has answered, failed or
 * timed out: replies[s] is shard s's reply (NULL for this shard and for
 * those in errors[s], a message); both arrays are valid during the call
 * only.  done writes job->reply; the job is then posted back.  Returns 0,
 * or -1 when nothing could be sent (out of memory: job->reply holds the
 * error). */
typedef void (*vlm__fanout_done)(vlm__job *job, struct redisReply **replies,
                                 const char **errors);
int vlm__cluster_fanout(vlm__job *job, int argc, const char **argv,
                        const size_t *lens, vlm__fanout_done done);
/* As vlm__cluster_fanout, asking one other shard only (replies[shard]). */
int vlm__cluster_ask(vlm__job *job, int shard, int argc, const char **argv,
                     const size_t *lens, vlm__fanout_done done);
/* "host:port" or "[v6]:port" into host (cap bytes) and port: 0, or -1
 * when addr is not one. */
int vlm__split_address(const char *addr, char *host, size_t cap,
                       int *port);
/* The shard holding slot. */
int vlm__cluster_owner(const vlm_server *srv, int slot);
/* Parse one RESP2 reply from len bytes (NULL if it is not one whole
 * reply); free with vlm__cluster_reply_free. */
struct redisReply *vlm__cluster_parse_reply(const char *data, size_t len);
void vlm__cluster_reply_free(struct redisReply *r); /* accepts NULL */

/* Live moves (net/README.md "Moving slots while the nodes serve").
 *
 * The search filter of this node: user (may be NULL) with the items of
 * the slots its database holds but the map does not give its shard
 * hidden; the map is owners (VLM.LOCAL SEARCH ... OWNERS spec, the
 * coordinator's: "a-b:s,c-d:t", see vlm__cluster_owners) or, when NULL,
 * this node's.  0 with *out NULL when nothing is hidden, else *out
 * malloc'd; -1 with why set (owners malformed, the filter too long).
 * Loop thread. */
int vlm__cluster_search_filter(const vlm_server *srv, const char *owners,
                               const char *user, char **out, char *why,
                               size_t whycap);
/* This node's map as an owners spec (malloc'd, NULL: out of memory). */
char *vlm__cluster_owners(const vlm_server *srv);
/* *out: a bitmap (VLM_SLOTS bits) of the slots this node holds but does
 * not serve under its map (a live move under way), or NULL when there
 * are none.  -1: out of memory.  Loop thread. */
int vlm__cluster_hidden_slots(const vlm_server *srv, uint8_t **out);
/* 1 if writes to slot are held back (-TRYAGAIN) while a live move
 * switches it to another shard. */
int vlm__cluster_fenced(const vlm_server *srv, int slot);
/* A write job started / finished (loop; jobs.c): the fence waits for the
 * writes admitted before it. */
void vlm__cluster_write_started(vlm_server *srv, vlm__job *job);
void vlm__cluster_write_finished(vlm_server *srv, vlm__job *job);
/* VLM.MIGRATE STATE | SETSLOTS | FENCE | STATUS | UNFENCE (loop). */
int vlm__migrate_command(vlm__ctx *ctx);
/* VLM.RANGEKEYS, VLM.DUMP, VLM.RESTORE (migrate.c): procs and execs. */
int vlm__rangekeys_proc(vlm__ctx *ctx);
void vlm__rangekeys_exec(vlm__job *job);
int vlm__dump_proc(vlm__ctx *ctx);
void vlm__dump_exec(vlm__job *job);
int vlm__restore_proc(vlm__ctx *ctx);
void vlm__restore_exec(vlm__job *job);

/* hiredis's libuv adapter with cluster.c's poll callback (a refused
 * connect or a reset fails the requests at once): 0, or -1. */
struct redisAsyncContext;
int vlm__redis_attach(vlm_server *srv, struct redisAsyncContext *ac);

/* ---- replication (replica.c) ---- */

typedef struct vlm__repl_state vlm__repl_state;

/* Set up replication (every server: a primary answers VLM.SYNC);
 * replica_of "host:port" or NULL; backlog: the most batches the log is
 * kept for a replica behind (0 = 1,000,000). */
int vlm__repl_init(vlm_server *srv, const char *replica_of,
                   uint64_t backlog);
/* Loop: start following the primary (run), stop (shutdown, before the
 * pool stops), close the handles (after it), free. */
int vlm__repl_start(vlm_server *srv);
void vlm__repl_stop(vlm_server *srv);
void vlm__repl_close(vlm_server *srv);
void vlm__repl_free(vlm_server *srv);
void vlm__repl_cron(vlm_server *srv);
/* 1 while the server follows a primary: client writes are refused. */
int vlm__repl_readonly(const vlm_server *srv);
/* INFO's "# Replication" section (any thread); seq: the database's last
 * batch. */
void vlm__repl_info(vlm_server *srv, vlm__buf *b, uint64_t seq);
/* The commands: VLM.SYNC, VLM.SEED (worker), REPLICAOF (loop). */
int vlm__repl_sync_proc(vlm__ctx *ctx);
void vlm__repl_sync_exec(vlm__job *job);
int vlm__repl_seed_proc(vlm__ctx *ctx);
void vlm__repl_seed_exec(vlm__job *job);
int vlm__repl_replicaof(vlm__ctx *ctx);

/* ---- model migration while serving (reembed.c) ---- */

typedef struct vlm__reembed_state vlm__reembed_state;

int vlm__reembed_init(vlm_server *srv);
void vlm__reembed_free(vlm_server *srv);
/* VLM.REEMBED (loop). */
int vlm__reembed_command(vlm__ctx *ctx);
/* Loop: move the re-embedding on (start its thread, tell it when the
 * final phase has no write in flight, switch once no job is out, join its
 * thread once it ended).  Called
 * after completions, from the cron and on async_reembed. */
void vlm__reembed_poll(vlm_server *srv);
/* Loop, at shutdown: stop the re-embedding before its switch (the staged
 * database stays for a rerun); with join, wait for its thread. */
void vlm__reembed_stop(vlm_server *srv, int join);
/* The new model's directory while writes (writes 1: from the last
 * catch-up to the switch) or REPLICAOF (writes 0: from the command to the
 * switch) are refused, else NULL (loop). */
const char *vlm__reembed_refusing(vlm_server *srv, int writes);
/* INFO's "# Reembed" section; the figures /metrics reports (any thread). */
void vlm__reembed_info(vlm_server *srv, vlm__buf *b);
void vlm__reembed_progress(vlm_server *srv, int *running, long *items,
                           long *done);

/* ---- server and connections (server.c) ---- */

typedef struct {
  uint64_t connections;     /* accepted */
  uint64_t rejected;        /* refused: maxclients */
  uint64_t commands;        /* processed */
  uint64_t net_in, net_out; /* bytes */
  uint64_t protocol_errors;
  uint64_t slow_readers;    /* disconnected: output cap */
  uint64_t timeouts;        /* disconnected: idle */
  uint64_t auth_failures;
  uint64_t http_requests;   /* HTTP requests parsed */
} vlm__stats;

struct vlm__conn {
  uv_tcp_t tcp;
  vlm_server *srv;
  vlm__conn *prev, *next;
  uint64_t id;
  vlm__resp_parser parser;
  char *qbuf;               /* unconsumed input [qpos, qlen) */
  size_t qcap, qlen, qpos;
  vlm__buf out;             /* replies not yet handed to the kernel */
  uv_write_t wreq;
  char *wdata;              /* bytes of the write in flight */
  size_t wlen;
  int writing;
  vlm__job *jobs_head, *jobs_tail;  /* replies owed, in request order */
  int njobs;
  int refs;                 /* jobs in the workers or waiting to go */
  /* Execution order.  Commands take effect in the order sent: a write
   * (VLM__CMD_WRITE or ADMIN) starts only when every earlier job of the
   * connection is done, and nothing starts while a write runs; reads
   * between writes run in parallel.  Jobs that cannot start yet wait here,
   * in request order, and keep waiting (as orphans) if the client leaves:
   * a command received is a command executed. */
  vlm__job *wait_head, *wait_tail;
  int exec_reads;           /* read jobs in the workers */
  int exec_write;           /* a write job is in the workers */
  /* MULTI: commands queued for EXEC (checked, not started), and whether
   * one was refused while queueing (EXEC then aborts). */
  int multi, multi_dirty, multi_n;
  vlm__job *multi_head, *multi_tail;
  int resp3, authed;
  vlm__http_conn *http;     /* an HTTP connection's state; NULL for RESP */
  int reading, paused, quit, closing, closed;
  int flush_queued;         /* on the completion handler's flush list */
  vlm__conn *flush_next;
  uint64_t created_ms, last_ms;
  char last_cmd[24];
  char name[128];
  char lib_name[64], lib_ver[32];
  char addr[64];
};

struct vlm_server {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_tcp_t http_listener;   /* open when http_port >= 0 */
  uv_async_t async_done, async_stop;
  uv_signal_t sig_int, sig_term;
  uv_timer_t cron, shutdown_timer;

  /* Settings (read-only once created; workers may read them). */
  vlm_db *db;
  vlm_clip *clip;
  int dim;                  /* database vector dimension */
  int image_size;           /* model input side, pixels */
  char bind[64];
  int port;
  int http_port;            /* -1: no HTTP listener */
  char db_dir[512];         /* for the disk sizes in /metrics */
  char *password;
  size_t password_len;
  int threads, maxclients, max_pipeline, timeout_s, handle_signals;
  int batch_window_us, batch_max;
  size_t max_request, max_output;
  char model_dir[512];
  FILE *log;
  vlm__resp_limits limits;
  int nfields;
  char field_names[VLM_DB_MAX_FIELDS][VLM_DB_FIELD_NAME];
  vlm_field_type field_types[VLM_DB_MAX_FIELDS];

  vlm__pool pool;
  vlm__batcher batcher;
  pthread_mutex_t done_mu;  /* guards done_head/done_tail */
  pthread_cond_t done_cv;   /* signalled with done_mu when a job is posted */
  vlm__job *done_head, *done_tail;
  int jobs_waiting;         /* loop: jobs in connections' wait queues */

  vlm__conn *conns;
  int nconns;
  uint64_t next_id;
  char *rbuf;               /* shared read buffer for clients with no
                               partial request */
  int rbuf_busy;
  int running, shutting_down, stop_requested;
  int checkpoint_rc;
  uint64_t start_ms;
  size_t freed_since_trim;
  vlm__stats stats;
  vlm__metrics *metrics;    /* metrics.c */
  vlm__cluster_state *cluster; /* NULL: not a cluster node */
  vlm__repl_state *repl;    /* replica.c */
  uint64_t write_seq;       /* loop: write jobs started so far */
  long writes_inflight;     /* loop: write jobs started, not finished */

  /* Inline execution (jobs.c).  A read that needs no embedding runs on
   * the loop thread itself when the workers are idle, nothing else is
   * waiting to be read and its command has been cheap: a lone query then
   * costs no hand-off to a worker and back. */
  int in_read;              /* loop: inside a read callback */
  int inline_done;          /* loop: a job finished inline, not yet drained */
  int more_input;           /* loop: the request being dispatched has
                               others behind it in its client's buffer */
  uint64_t contended_until_ns; /* loop: no inline execution before this */
  uint64_t inline_jobs;     /* loop: jobs run inline (INFO stats) */
  int inline_max_us;        /* setting: 0 never inline */
  _Atomic uint32_t *exec_cost_us; /* per command: 1 + moving average of
                               exec time in us (0: not measured yet) */

  /* Model migration (reembed.c).  A switch of database and model happens
   * on the loop while no job is in the workers: jobs launched meanwhile
   * wait in the held list (they count as launched for their connection's
   * order), and run after it, checked again against the new model. */
  vlm__reembed_state *reembed;
  uv_async_t async_reembed; /* the re-embedding thread wakes the loop */
  uint64_t model_gen;       /* loop: bumped by each switch */
  int hold_launches;        /* loop: launches go to the held list */
  vlm__job *held_head, *held_tail; /* linked through wait_next */
  int jobs_out;             /* loop: jobs launched and not yet finished */
  int writes_pending;       /* loop: write jobs started, not yet finished */
};

/* The buffer the reply to the request being dispatched goes to: the
 * connection's output, or an inline slot queued behind pending jobs. */
vlm__buf *vlm__conn_reply_buf(vlm__conn *conn);
/* Queue a job's reply slot on its connection (before starting it). */
void vlm__conn_push_job(vlm__conn *conn, vlm__job *job);
/* Close the connection once every reply owed has been written. */
void vlm__conn_quit(vlm__conn *conn);
void vlm__server_log(vlm_server *srv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
uint64_t vlm__now_ms(void);
uint64_t vlm__now_ns(void);
/* Memory figures for INFO: kB from /proc/self/status (0 if unknown). */
long vlm__proc_status_kb(const char *field);

#endif
