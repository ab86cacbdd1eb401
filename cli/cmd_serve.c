/* cmd_serve.c - `vlmdb serve`: serve a database over TCP with the Redis
 * protocol (see net/vlm_server.h and the README's "Server" section). */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "opts.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_reembed.h"
#include "vlm_server.h"
#include "vlm_slot.h"
#include "vlmdb.h"

static void usage(FILE *f) {
  fprintf(f,
"usage: vlmdb serve --db DIR [options]\n"
"\n"
"Serve a database over TCP with the Redis protocol (RESP2 and RESP3):\n"
"redis-cli, redis-benchmark and every Redis client library can talk to it.\n"
"The same commands answer HTTP/1.1 with JSON on a second port (the HTTP\n"
"API: curl http://127.0.0.1:7879/openapi.json).\n"
"\n"
"  --db DIR                 the database (required)\n"
"  --model DIR              the CLIP model for text and image queries\n"
"                           (default: the one the database records, else\n"
"                           $VLMDB_MODEL or models/default; it must be the\n"
"                           database's model; without one, only KEY and\n"
"                           VECTOR searches work)\n"
"  --bind ADDR              address to listen on (default 127.0.0.1); any\n"
"                           other than loopback needs --requirepass\n"
"  --port P                 TCP port (default %d; 0 picks a free one)\n"
"  --http P                 HTTP port for the JSON API, /metrics and\n"
"                           /openapi.json (default: the RESP port + 1;\n"
"                           0 picks a free one, as does --port 0)\n"
"  --no-http                serve RESP only\n"
"  --requirepass SECRET     clients must AUTH with SECRET first\n"
"  --threads N              worker threads (default: the CPU count)\n"
"  --maxclients N           connections at most (default %d)\n"
"  --max-request-bytes N    bytes of one request (default %zu MiB)\n"
"  --max-output-bytes N     unsent reply bytes before a client that does\n"
"                           not read is disconnected (default %zu MiB)\n"
"  --timeout S              close connections idle S seconds (default 0:\n"
"                           never)\n"
"  --batch-window-us N      how long an embedding waits for others to batch\n"
"                           with (default %d; 0 turns batching off)\n"
"  --batch-max N            largest embedding batch (default %d)\n"
"  --inline-max-us N        a search that needs no embedding runs on the\n"
"                           event loop itself, saving two thread hand-offs,\n"
"                           when the workers are idle, no other client is\n"
"                           waiting and such commands have taken at most N\n"
"                           us on average (default %d; 0: always workers)\n"
"  --mmap                   serve read-only, an IVF index's inverted lists\n"
"                           memory-mapped from its file instead of loaded\n"
"                           (resident memory far below the index's size;\n"
"                           the LAION way, with `vlmdb merge`'s index);\n"
"                           writes are refused\n"
"  --cluster FILE           serve as one node of a Redis Cluster: the\n"
"                           cluster map (cluster.json, every shard with an\n"
"                           address); the database must be its shard\n"
"  --shard I|auto           which shard this node serves (default: the one\n"
"                           the database's manifest records); the port\n"
"                           defaults to the one of its address in the map\n"
"  --cluster-timeout MS     how long SEARCH, COUNT and INFO keyspace wait\n"
"                           for the other shards (default 2000)\n"
"  --replica-of HOST:PORT   serve a read replica of the primary there: an\n"
"                           empty or absent --db is first seeded with an\n"
"                           online backup of it; then every batch it\n"
"                           commits is applied here, in order; writes\n"
"                           answer -READONLY (REPLICAOF NO ONE promotes).\n"
"                           The role is kept in DB/REPLICAOF: a restart\n"
"                           without --replica-of follows the primary that\n"
"                           REPLICAOF or --replica-of last named\n"
"  --repl-backlog N         as a primary, keep the log for a replica at\n"
"                           most N batches behind (default 1000000); one\n"
"                           further behind seeds itself again\n"
"  --quiet                  no log lines on stderr\n"
"\n"
"SIGINT or SIGTERM stops it gracefully: requests in flight are answered,\n"
"the index is checkpointed, the stores closed.\n",
          VLM_SERVER_DEFAULT_PORT, VLM_SERVER_DEFAULT_MAXCLIENTS,
          VLM_SERVER_DEFAULT_MAX_REQUEST >> 20,
          VLM_SERVER_DEFAULT_MAX_OUTPUT >> 20,
          VLM_SERVER_DEFAULT_BATCH_WINDOW_US, VLM_SERVER_DEFAULT_BATCH_MAX,
          VLM_SERVER_DEFAULT_INLINE_MAX_US);
}

/* A non-negative integer flag value with an optional K/M/G suffix. */
static int parse_count(const char *s, long long max, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || v < 0 || errno)
    return -1;
  long long mult = 1;
  if (*end == 'k' || *end == 'K')
    mult = 1024, end++;
  else if (*end == 'm' || *end == 'M')
    mult = 1024 * 1024, end++;
  else if (*end == 'g' || *end == 'G')
    mult = 1024 * 1024 * 1024, end++;
  if (*end || v > max / mult)
    return -1;
  *out = v * mult;
  return 0;
}

static int dir_absent_or_empty(const char *dir) {
  DIR *d = opendir(dir);
  if (!d)
    return errno == ENOENT;
  struct dirent *e;
  int empty = 1;
  while (empty && (e = readdir(d)))
    empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
  closedir(d);
  return empty;
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

/* Seed dir again from primary: the old copy is moved aside and, when it
 * was itself a seeded replica (its VLM_REPLICA_MARK file), removed once
 * the new one is whole; a database that never was one (a primary's, a
 * restored backup) is kept beside it, named in the log.  Put back if
 * seeding fails. */
static int reseed(const char *dir, const char *primary, const char *password,
                  int port, FILE *log) {
  char stale[4096], mark[4096];
  snprintf(stale, sizeof stale, "%s.stale-%d", dir, (int)getpid());
  snprintf(mark, sizeof mark, "%s/%s", dir, VLM_REPLICA_MARK);
  int was_replica = access(mark, F_OK) == 0;
  if (rename(dir, stale) != 0)
    return vlm_seterr(VLM_EIO, "reseeding: rename %s: %s", dir,
                      strerror(errno));
  int rc = vlm_replica_seed(primary, password, dir, port, log, NULL);
  if (rc < 0) {
    rename(stale, dir);
    return rc;
  }
  if (was_replica)
    nftw(stale, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  else if (log)
    fprintf(log, "vlmdb serve: %s was not a seeded replica: it is kept as "
            "%s\n", dir, stale);
  return 0;
}

static void serve_note(void *arg, const char *line) {
  (void)arg;
  fprintf(stderr, "vlmdb serve: %s\n", line);
}

int cmd_serve(int argc, char **argv) {
  const char *cmd = argv[0];
  const char *db_dir = NULL, *model_dir = NULL;
  const char *cluster_file = NULL, *shard_text = NULL;
  vlm_server_options opts = {0};
  opts.port = VLM_SERVER_DEFAULT_PORT;
  int quiet = 0, http_set = 0, mmap_index = 0, port_given = 0;
  opts.http = 1;
  vlm_cluster *map = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return VLM_EXIT_OK;
    }
    if (!strcmp(a, "--mmap")) {
      mmap_index = 1;
      continue;
    }
    if (!strcmp(a, "--quiet")) {
      quiet = 1;
      continue;
    }
    if (!strcmp(a, "--no-http")) {
      opts.http = 0;
      continue;
    }
    if (i + 1 >= argc) {
      vlm_cli_error(cmd, "%s needs a value (see --help)", a);
      return VLM_EXIT_USAGE;
    }
    const char *v = argv[++i];
    long long n = 0;
    int bad = 0;
    if (!strcmp(a, "--db"))
      db_dir = v;
    else if (!strcmp(a, "--model"))
      model_dir = v;
    else if (!strcmp(a, "--bind"))
      opts.bind = v;
    else if (!strcmp(a, "--requirepass"))
      opts.requirepass = v;
    else if (!strcmp(a, "--port"))
      bad = parse_count(v, 65535, &n) < 0, opts.port = (int)n, port_given = 1;
    else if (!strcmp(a, "--http"))
      bad = parse_count(v, 65535, &n) < 0, opts.http_port = (int)n,
      http_set = 1;
    else if (!strcmp(a, "--cluster"))
      cluster_file = v;
    else if (!strcmp(a, "--replica-of"))
      opts.replica_of = v;
    else if (!strcmp(a, "--repl-backlog"))
      bad = parse_count(v, INT64_MAX, &n) < 0 || n < 1,
      opts.repl_backlog = (uint64_t)n;
    else if (!strcmp(a, "--shard"))
      shard_text = v;
    else if (!strcmp(a, "--cluster-timeout"))
      bad = parse_count(v, 3600000, &n) < 0 || n < 1,
      opts.cluster_timeout_ms = (int)n;
    else if (!strcmp(a, "--threads"))
      bad = parse_count(v, 1024, &n) < 0 || n < 1, opts.threads = (int)n;
    else if (!strcmp(a, "--maxclients"))
      bad = parse_count(v, 1000000, &n) < 0 || n < 1,
      opts.maxclients = (int)n;
    else if (!strcmp(a, "--max-request-bytes"))
      bad = parse_count(v, 1LL << 32, &n) < 0 || n < 1024,
      opts.max_request_bytes = (size_t)n;
    else if (!strcmp(a, "--max-output-bytes"))
      bad = parse_count(v, 1LL << 40, &n) < 0 || n < 1024,
      opts.max_output_bytes = (size_t)n;
    else if (!strcmp(a, "--timeout"))
      bad = parse_count(v, 100000000, &n) < 0, opts.timeout_s = (int)n;
    else if (!strcmp(a, "--batch-window-us"))
      bad = parse_count(v, 10000000, &n) < 0,
      opts.batch_window_us = n == 0 ? VLM_SERVER_NO_BATCH : (int)n;
    else if (!strcmp(a, "--inline-max-us"))
      bad = parse_count(v, 1000000, &n) < 0,
      opts.inline_max_us = n == 0 ? VLM_SERVER_NO_INLINE : (int)n;
    else if (!strcmp(a, "--batch-max"))
      bad = parse_count(v, 4096, &n) < 0 || n < 1, opts.batch_max = (int)n;
    else {
      vlm_cli_error(cmd, "unknown option '%s' (see --help)", a);
      return VLM_EXIT_USAGE;
    }
    if (bad) {
      vlm_cli_error(cmd, "bad value '%s' for %s", v, a);
      return VLM_EXIT_USAGE;
    }
  }
  if (!db_dir) {
    vlm_cli_error(cmd, "--db DIR is required (see --help)");
    return VLM_EXIT_USAGE;
  }
  if (shard_text && !cluster_file) {
    vlm_cli_error(cmd, "--shard needs --cluster FILE");
    return VLM_EXIT_USAGE;
  }

  /* Requests and replies of 256 KiB or more (images, large batches) are
   * mmapped, so their memory goes back to the system when they are freed
   * instead of raising glibc's sliding mmap threshold, and RSS returns to
   * its baseline after a burst of large requests (test_net checks it).
   * Fixing the threshold also stops the trim threshold from sliding: it
   * stays at 128 KiB, so any free that left more than that at the top of
   * an arena was handed back (madvise) and faulted in again by the next
   * request.  Searches allocated and freed about 200 KB each that way
   * (FAISS's visited table, now kept per thread by the index shim), which
   * cost about 40% of the server's CPU.  An arena now keeps up to 1 MiB
   * free at its top: no churn for anything under the mmap threshold, and
   * a bounded amount per arena (one per worker thread here). */
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);

  int status = VLM_EXIT_RUNTIME, rc;
  vlm_clip *clip = NULL;
  vlm_db *db = NULL;
  vlm_server *srv = NULL;
  char replica_of[300];
  int explicit_model = model_dir != NULL;
  /* A replica keeps following after a restart: the primary REPLICAOF (or
   * an earlier --replica-of) named, unless --replica-of names another */
  if (!opts.replica_of && !mmap_index) {
    rc = vlm_replica_role_read(db_dir, replica_of, sizeof replica_of);
    if (rc < 0) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    if (rc == 1) {
      opts.replica_of = replica_of;
      if (!quiet)
        fprintf(stderr, "vlmdb serve: a replica of %s (%s/%s; REPLICAOF NO "
                "ONE makes it a primary)\n", replica_of, db_dir,
                VLM_REPLICAOF_FILE);
    }
  }
  if (opts.replica_of && mmap_index) {
    vlm_cli_error(cmd, "--replica-of writes the primary's batches: not with "
                  "--mmap");
    status = VLM_EXIT_USAGE;
    goto done;
  }
  /* A replica's first copy: an online backup of its primary. */
  if (opts.replica_of && dir_absent_or_empty(db_dir) &&
      (rc = vlm_replica_seed(opts.replica_of, opts.requirepass, db_dir,
                             opts.port, quiet ? NULL : stderr, NULL)) < 0) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
again:;
  /* The database names the model it was made with; --model only
   * overrides it (and must be that same model). */
  vlm_db_open_options dopts = {.readonly = mmap_index,
                               .mmap_index = mmap_index};
  rc = vlm_db_open(db_dir, &dopts, &db);
  if (rc < 0) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  vlm_db_info info;
  rc = vlm_db_stat(db, &info);
  if (rc < 0) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  /* a re-embedding killed after its switch: the old database, beside
   * this one, goes now (this process holds the writer lock) */
  if (!mmap_index) {
    vlm_reembed_options notes = {.on_note = serve_note};
    if ((rc = vlm_reembed_finish_switch(db_dir, &notes, NULL)) < 0)
      vlm_cli_liberror(cmd, rc);
  }
  if (cluster_file) {
    rc = vlm_cluster_load(cluster_file, NULL, NULL, &map);
    if (rc < 0) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    if (shard_text)
      rc = vlm_shard_index(shard_text, map->nshards, &opts.shard);
    else if (info.shard >= 0)
      opts.shard = info.shard;
    else if (map->nshards == 1)
      opts.shard = 0;
    else
      rc = vlm_seterr(VLM_EINVAL, "%s is not a shard database: give --shard",
                      db_dir);
    if (rc < 0) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    opts.cluster = map;
    opts.cluster_path = cluster_file;
    /* the port of this shard's address in the map, unless given */
    const vlm_cluster_shard *me = &map->shards[opts.shard];
    const char *colon = me->naddresses ? strrchr(me->addresses[0], ':')
                                       : NULL;
    if (!port_given && colon)
      opts.port = atoi(colon + 1);
  }
  /* HTTP next to RESP: 7879 by default, a free port when RESP's is */
  if (opts.http && !http_set)
    opts.http_port = opts.port == 0 ? 0 : opts.port + 1;
  if (opts.http && opts.http_port > 65535) {
    vlm_cli_error(cmd, "no HTTP port after %d: give --http P or --no-http",
                  opts.port);
    status = VLM_EXIT_USAGE;
    goto done;
  }
  if (!model_dir)
    model_dir = info.model_dir[0] && access(info.model_dir, R_OK) == 0
                    ? info.model_dir
                    : vlm_cli_default_model();
  /* one thread a call: parallelism comes from the worker threads */
  vlm_clip_options copts = vlm_cli_db_model_options(&info, 1);
  rc = vlm_clip_load(model_dir, &copts, &clip);
  if (rc < 0) {
    if (explicit_model) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    if (!quiet)
      fprintf(stderr, "vlmdb serve: no model at %s (%s): serving without "
              "one; TEXT and IMAGE queries are refused\n", model_dir,
              vlm_errmsg());
    clip = NULL;
    model_dir = NULL;
  } else if (strcmp(vlm_clip_model_id(clip), info.model_id)) {
    vlm_cli_model_mismatch(cmd, model_dir, db_dir, &info);
    goto done;
  }
  opts.handle_signals = 1;
  opts.db_dir = db_dir;
  opts.model_dir = model_dir;
  opts.log = quiet ? NULL : stderr;
  rc = vlm_server_create(db, clip, &opts, &srv);
  if (rc < 0) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  /* One write for both lines: a reader that takes only the first and
   * closes the pipe never makes a second write fail. */
  const char *host = opts.bind ? opts.bind : "127.0.0.1";
  char lines[256];
  int n = snprintf(lines, sizeof lines, "vlmdb serve: listening on %s:%d\n",
                   host, vlm_server_port(srv));
  if (opts.http)
    snprintf(lines + n, sizeof lines - (size_t)n,
             "vlmdb serve: http on %s:%d\n", host,
             vlm_server_http_port(srv));
  fputs(lines, stdout);
  fflush(stdout);
  rc = vlm_server_run(srv);
  if (rc < 0) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  char primary[300];
  if (vlm_server_reseed_needed(srv, primary, sizeof primary)) {
    /* too far behind its primary (or on another history): a new copy,
     * the old one kept until the new one is whole */
    vlm_server_handles(srv, &db, &clip); /* a VLM.REEMBED replaces them */
    vlm_server_free(srv);
    srv = NULL;
    vlm_db_close(db);
    db = NULL;
    vlm_clip_free(clip);
    clip = NULL;
    vlm_cluster_free(map);
    map = NULL;
    model_dir = explicit_model ? model_dir : NULL;
    if ((rc = reseed(db_dir, primary, opts.requirepass, opts.port,
                     quiet ? NULL : stderr)) < 0) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    /* the new copy follows the primary the old one followed */
    snprintf(replica_of, sizeof replica_of, "%s", primary);
    opts.replica_of = replica_of;
    goto again;
  }
  status = VLM_EXIT_OK;
done:
  if (srv)
    vlm_server_handles(srv, &db, &clip); /* a VLM.REEMBED replaces them */
  vlm_server_free(srv);
  vlm_cluster_free(map);
  vlm_db_close(db);
  vlm_clip_free(clip);
  return status;
}
