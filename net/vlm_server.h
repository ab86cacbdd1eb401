/* vlm_server.h - serve a vlmdb database over TCP with the Redis protocol.
 *
 * The server speaks RESP2 and RESP3 (HELLO 3), so redis-cli,
 * redis-benchmark, hiredis, redis-py and every other Redis client talk to
 * it unchanged, with their pipelining, connection pools and AUTH.  Its
 * commands are vlmdb's own: SEARCH, ADD, UPSERT, GET, DEL, EMBED, COUNT,
 * SAVE, EVAL, next to PING, ECHO, AUTH, HELLO, QUIT, INFO, COMMAND, CLIENT
 * and CONFIG GET (see the README's "Server" section for the syntax).
 *
 * Threads: one libuv loop thread does all network I/O and the cheap
 * commands; a pool of worker threads runs embedding, search, writes and
 * reads of the database, so the loop never blocks on them.  Replies on
 * one connection come back in request order whatever order the work
 * finishes in.  Embedding requests from all clients are batched per
 * modality within a short window (batch_window_us).
 *
 * Lifetime: create binds and listens (errors such as a port in use are
 * reported there, before run); run serves until vlm_server_stop is called
 * or, with handle_signals, SIGINT or SIGTERM arrives; then it stops
 * accepting, finishes the requests already received, writes their
 * replies, checkpoints the database (vlm_db_checkpoint) and returns.  The
 * caller then frees the server and closes the database and model, which
 * the server borrows and never closes, except at a VLM.REEMBED switch
 * (see vlm_server_handles).
 *
 * Errors: 0 or a negative VLM_E* code with vlm_errmsg() set.
 */
#ifndef VLM_SERVER_H
#define VLM_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "vlm_clip.h"
#include "vlmdb.h"

typedef struct vlm_server vlm_server;

/* The port `vlmdb serve` listens on by default (Redis's is 6379); its
 * HTTP port is the next one. */
#define VLM_SERVER_DEFAULT_PORT 7878

/* The defaults of vlm_server_options' zero fields (and of `vlmdb serve`). */
#define VLM_SERVER_DEFAULT_MAXCLIENTS 10000
#define VLM_SERVER_DEFAULT_MAX_REQUEST ((size_t)64 << 20)
#define VLM_SERVER_DEFAULT_MAX_OUTPUT ((size_t)256 << 20)
#define VLM_SERVER_DEFAULT_MAX_PIPELINE 1024
#define VLM_SERVER_DEFAULT_BATCH_WINDOW_US 1000
#define VLM_SERVER_DEFAULT_BATCH_MAX 64

/* inline_max_us: the default, and the value that turns it off. */
#define VLM_SERVER_DEFAULT_INLINE_MAX_US 1500
#define VLM_SERVER_NO_INLINE (-1)
/* batch_window_us value that turns dynamic batching off. */
#define VLM_SERVER_NO_BATCH (-1)

/* Zero means "default" for every field. */
typedef struct {
  const char *bind;          /* address to listen on; NULL = "127.0.0.1".
                                Any address other than a loopback one
                                needs requirepass (VLM_EINVAL otherwise) */
  int port;                  /* 0 = an ephemeral port: see vlm_server_port */
  const char *requirepass;   /* password for AUTH; NULL = none */
  int threads;               /* worker threads; 0 = online CPUs */
  int maxclients;            /* 0 = VLM_SERVER_DEFAULT_MAXCLIENTS; more
                                connections get an error */
  size_t max_request_bytes;  /* bytes of one request's arguments (also the
                                cap on one bulk argument); 0 =
                                VLM_SERVER_DEFAULT_MAX_REQUEST */
  size_t max_output_bytes;   /* unsent reply bytes one client may hold
                                before it is disconnected as a slow reader;
                                0 = VLM_SERVER_DEFAULT_MAX_OUTPUT */
  int max_pipeline;          /* requests of one client in flight before
                                the server stops reading from it until
                                replies are written; 0 =
                                VLM_SERVER_DEFAULT_MAX_PIPELINE */
  int timeout_s;             /* close connections idle this long; 0 = never */
  int batch_window_us;       /* how long an embedding request waits for
                                others to join its batch; 0 =
                                VLM_SERVER_DEFAULT_BATCH_WINDOW_US;
                                VLM_SERVER_NO_BATCH = embed one by one */
  int batch_max;             /* largest embedding batch; 0 =
                                VLM_SERVER_DEFAULT_BATCH_MAX */
  int inline_max_us;         /* a read that needs no embedding runs on the
                                event loop itself, without a worker, when
                                the workers are idle and its command's
                                moving average is at most this; 0 =
                                VLM_SERVER_DEFAULT_INLINE_MAX_US;
                                VLM_SERVER_NO_INLINE = never */
  int handle_signals;        /* run() catches SIGINT and SIGTERM and shuts
                                down gracefully (and ignores SIGPIPE) */
  int http;                  /* 1: also serve HTTP/1.1 (the JSON API,
                                /metrics, /openapi.json) on http_port */
  int http_port;             /* with http: the port; 0 = an ephemeral one
                                (see vlm_server_http_port) */
  const char *db_dir;        /* the database's directory, for the store
                                sizes /metrics reports; may be NULL */
  const char *model_dir;     /* reported by INFO; may be NULL */
  FILE *log;                 /* one line per notable event; NULL = quiet */
  const vlm_cluster *cluster;/* serve shard `shard` of this cluster map as
                                a Redis Cluster node (borrowed; every
                                shard needs an address); NULL = not a
                                cluster node */
  int shard;
  const char *cluster_path;  /* the map's file, read again by CLUSTER
                                RELOAD (NULL: RELOAD is refused) */
  int cluster_timeout_ms;    /* how long a coordinated command waits for
                                the other shards; 0 = 2000 */
  const char *replica_of;    /* "host:port": follow that primary as a
                                read replica (db must be a copy of it,
                                see vlm_replica_seed): its batches are
                                applied as they commit there, client
                                writes answer -READONLY; NULL = a primary
                                (which any replica may follow) */
  uint64_t repl_backlog;     /* a primary keeps its log for a replica at
                                most this many batches behind; one further
                                behind must seed again; 0 = 1,000,000 */
} vlm_server_options;

/* Create a server for db (required) and clip (NULL: the commands that
 * embed text or images reply with an error).  Binds and listens on
 * return.  db must have been made with clip's model; both are borrowed
 * and must outlive the server.  Errors: VLM_EINVAL (bad option, public
 * bind without a password), VLM_ENET (address in use, ...), VLM_ENOMEM. */
int vlm_server_create(vlm_db *db, vlm_clip *clip,
                      const vlm_server_options *opts, vlm_server **out);

/* The database and model the server serves now.  VLM.REEMBED (see the
 * README's "Commands") moves a running server to another model: at its
 * switch the server closes the database and frees the model it served
 * (those given to create, or those of an earlier switch) and serves a new
 * database handle and model it opened.  So after run returns, the caller
 * closes and frees what this reports (before vlm_server_free), not
 * necessarily what it passed; they are the same when no switch
 * happened.  Loop thread or after run. */
void vlm_server_handles(const vlm_server *srv, vlm_db **db, vlm_clip **clip);

/* The port the server listens on (the chosen one when opts->port was 0). */
int vlm_server_port(const vlm_server *srv);

/* The HTTP port, or 0 when the server has no HTTP listener. */
int vlm_server_http_port(const vlm_server *srv);

/* Serve on the calling thread until stopped (see the header comment).
 * Returns 0, or the error of the final checkpoint. */
int vlm_server_run(vlm_server *srv);

/* Ask a running server to shut down gracefully.  Safe from any thread and
 * from a signal handler; run() returns once the shutdown is complete.
 * Calling it before run() makes run() shut down at once. */
void vlm_server_stop(vlm_server *srv);

/* After run() returned: 1 when the server stopped because its primary
 * no longer holds the batches it needs (too far behind, or another
 * history), with the primary's "host:port" in primary (cap bytes; may
 * be NULL): the caller seeds the database again (vlm_replica_seed) and
 * serves the new copy.  0 otherwise. */
int vlm_server_reseed_needed(const vlm_server *srv, char *primary,
                             size_t cap);

/* Seed a replica: an online backup of the primary at "host:port"
 * (VLM.SEED, password as its requirepass or NULL) is copied into dir,
 * for a replica that will listen on port_self (the primary keeps its log
 * from the copy's batch for it; 0 if not known),
 * which must be absent or empty; the copy is built beside it and renamed
 * into place, so dir ends up a whole database or absent.  log (may be
 * NULL) gets a line at the start and the end.  *seq (may be NULL) gets
 * the copy's batch.  VLM_ENET when the primary cannot be reached or
 * refuses, VLM_EIO / VLM_ENOSPACE for the local disk. */
int vlm_replica_seed(const char *primary, const char *password,
                     const char *dir, int port_self, FILE *log,
                     uint64_t *seq);

/* The file a seeded replica's directory holds (the primary's address, for
 * information): a database without it was never seeded as a replica, and
 * `vlmdb serve` keeps it aside rather than delete it when it must seed
 * again. */
#define VLM_REPLICA_MARK "REPLICA"

/* The role a server was given, kept in its database directory so that a
 * restart keeps it: the primary's "host:port" and a newline, written
 * (atomically, durably) when the server starts with replica_of or is
 * sent REPLICAOF host port, removed by REPLICAOF NO ONE.  `vlmdb serve`
 * without --replica-of follows the primary it names. */
#define VLM_REPLICAOF_FILE "REPLICAOF"

/* The primary dir's VLM_REPLICAOF_FILE names, into addr (cap bytes): 1,
 * 0 when there is none, or an error code (a malformed file:
 * VLM_ECORRUPT, naming it). */
int vlm_replica_role_read(const char *dir, char *addr, size_t cap);

/* Free a server that is not running.  Accepts NULL. */
void vlm_server_free(vlm_server *srv);

#endif
