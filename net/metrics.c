/* metrics.c - the server's counters and histograms, and GET /metrics in
 * the Prometheus text format (version 0.0.4).
 *
 * Counters are atomics: the loop counts requests and errors, the workers
 * count embedding batches and items written.  A scrape is the METRICS
 * pseudo-command: its proc copies what only the loop may read (the
 * connections), its exec, on a worker, reads the atomics, the database's
 * figures (vlm_db_stat), the sizes of the store files and the process's
 * RSS, and writes the text.
 */
#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "http.h"
#include "vlm_error.h"

/* Latency buckets, seconds: 100 us to 10 s. */
static const double lat_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                    0.005,  0.01,    0.025,  0.05,  0.1,
                                    0.25,   0.5,     1,      2.5,   5,
                                    10};
#define NLAT (sizeof lat_bounds / sizeof lat_bounds[0])

/* Embedding batch sizes. */
static const int batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                   1024};
#define NBATCH (sizeof batch_bounds / sizeof batch_bounds[0])

/* The commands whose latency is kept (the rest are counted only). */
static const char *const timed[] = {"SEARCH", "EMBED", "ADD", "UPSERT",
                                    "UPDATE", "GET",   "DEL", "EXEC",
                                    "VLM.EVAL"};
#define NTIMED (sizeof timed / sizeof timed[0])

typedef struct {
  atomic_ullong bucket[NLAT + 1]; /* not cumulative; the last is +Inf */
  atomic_ullong count;
  atomic_ullong sum_ns;
} histogram;

struct vlm__metrics {
  int ncmd;
  atomic_ullong *requests; /* [ncmd][2] */
  atomic_ullong *errors;   /* [ncmd][2] */
  int timed_index[NTIMED]; /* command index of each timed command */
  histogram latency[NTIMED];
  atomic_ullong batch_bucket[2][NBATCH + 1];
  atomic_ullong batch_count[2], batch_sum[2];
  atomic_ullong items_added;
};

int vlm__metrics_init(vlm_server *srv) {
  vlm__metrics *m = calloc(1, sizeof *m);
  if (!m)
    return VLM_ENOMEM;
  m->ncmd = vlm__command_count();
  m->requests = calloc((size_t)m->ncmd * 2, sizeof *m->requests);
  m->errors = calloc((size_t)m->ncmd * 2, sizeof *m->errors);
  if (!m->requests || !m->errors) {
    free(m->requests);
    free(m->errors);
    free(m);
    return VLM_ENOMEM;
  }
  for (size_t t = 0; t < NTIMED; t++) {
    m->timed_index[t] = -1;
    for (int i = 0; i < m->ncmd; i++)
      if (!strcmp(vlm__command_at(i)->name, timed[t]))
        m->timed_index[t] = i;
  }
  srv->metrics = m;
  return 0;
}

void vlm__metrics_free(vlm_server *srv) {
  vlm__metrics *m = srv->metrics;
  if (!m)
    return;
  free(m->requests);
  free(m->errors);
  free(m);
  srv->metrics = NULL;
}

void vlm__metrics_request(vlm_server *srv, const vlm__command *cmd,
                          int proto) {
  int i = vlm__command_index(cmd);
  if (i >= 0 && srv->metrics)
    atomic_fetch_add_explicit(&srv->metrics->requests[2 * i + proto], 1,
                              memory_order_relaxed);
}

void vlm__metrics_error(vlm_server *srv, const vlm__command *cmd,
                        int proto) {
  int i = vlm__command_index(cmd);
  if (i >= 0 && srv->metrics)
    atomic_fetch_add_explicit(&srv->metrics->errors[2 * i + proto], 1,
                              memory_order_relaxed);
}

void vlm__metrics_latency(vlm_server *srv, const vlm__command *cmd,
                          double seconds) {
  vlm__metrics *m = srv->metrics;
  int i = vlm__command_index(cmd);
  if (!m || i < 0)
    return;
  for (size_t t = 0; t < NTIMED; t++) {
    if (m->timed_index[t] != i)
      continue;
    histogram *h = &m->latency[t];
    size_t b = 0;
    while (b < NLAT && seconds > lat_bounds[b])
      b++;
    atomic_fetch_add_explicit(&h->bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns,
                              (unsigned long long)(seconds * 1e9),
                              memory_order_relaxed);
    return;
  }
}

void vlm__metrics_batch(vlm_server *srv, int modality, int n) {
  vlm__metrics *m = srv->metrics;
  if (!m)
    return;
  size_t b = 0;
  while (b < NBATCH && n > batch_bounds[b])
    b++;
  atomic_fetch_add_explicit(&m->batch_bucket[modality][b], 1,
                            memory_order_relaxed);
  atomic_fetch_add_explicit(&m->batch_count[modality], 1,
                            memory_order_relaxed);
  atomic_fetch_add_explicit(&m->batch_sum[modality], (unsigned long long)n,
                            memory_order_relaxed);
}

void vlm__metrics_items_added(vlm_server *srv, long long n) {
  if (srv->metrics && n > 0)
    atomic_fetch_add_explicit(&srv->metrics->items_added,
                              (unsigned long long)n, memory_order_relaxed);
}

/* ======================================================================
 * The scrape
 * ==================================================================== */

typedef struct {
  int conns[2];             /* open connections by protocol */
  int in_flight;            /* requests in the workers or waiting */
  uint64_t accepted, rejected, protocol_errors, timeouts;
} scrape_state;

static int metrics_proc(vlm__ctx *ctx) {
  vlm_server *srv = ctx->srv;
  scrape_state *st = calloc(1, sizeof *st);
  if (!st) {
    vlm__reply_error(ctx->out, "ERR", "out of memory");
    return -1;
  }
  ctx->job->state = st;
  ctx->job->state_free = free;
  for (vlm__conn *c = srv->conns; c; c = c->next) {
    st->conns[c->http ? VLM__PROTO_HTTP : VLM__PROTO_RESP]++;
    st->in_flight += c->njobs;
  }
  st->accepted = srv->stats.connections;
  st->rejected = srv->stats.rejected;
  st->protocol_errors = srv->stats.protocol_errors;
  st->timeouts = srv->stats.timeouts;
  return 0;
}

static unsigned long long load(atomic_ullong *a) {
  return atomic_load_explicit(a, memory_order_relaxed);
}

static void lower(char *dst, size_t cap, const char *src) {
  size_t i = 0;
  for (; src[i] && i < cap - 1; i++)
    dst[i] = (char)(src[i] >= 'A' && src[i] <= 'Z' ? src[i] + 32 : src[i]);
  dst[i] = '\0';
}

static void help(vlm__buf *b, const char *name, const char *type,
                 const char *text) {
  vlm__buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

/* Bytes of the files under path (a file or a directory, one level), and
 * the newest modification time among them. */
static unsigned long long file_bytes(const char *path, time_t *newest) {
  struct stat sb;
  if (stat(path, &sb) != 0)
    return 0;
  if (!S_ISDIR(sb.st_mode)) {
    if (newest && sb.st_mtime > *newest)
      *newest = sb.st_mtime;
    return (unsigned long long)sb.st_size;
  }
  unsigned long long total = 0;
  DIR *d = opendir(path);
  struct dirent *e;
  char sub[1024];
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
    if (stat(sub, &sb) == 0 && S_ISREG(sb.st_mode))
      total += (unsigned long long)sb.st_size;
  }
  if (d)
    closedir(d);
  return total;
}

/* The index checkpoints (*.faiss, and the live-*.bits every checkpoint
 * writes: a Flat index has no file of its own): their bytes and the
 * newest's time. */
static unsigned long long index_bytes(const char *dir, time_t *newest) {
  unsigned long long total = 0;
  DIR *d = opendir(dir);
  struct dirent *e;
  char path[1024];
  while (d && (e = readdir(d))) {
    size_t n = strlen(e->d_name);
    if ((n > 6 && !strcmp(e->d_name + n - 6, ".faiss")) ||
        (!strncmp(e->d_name, "live-", 5) && n > 5 &&
         !strcmp(e->d_name + n - 5, ".bits"))) {
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      total += file_bytes(path, newest);
    }
  }
  if (d)
    closedir(d);
  return total;
}

static void write_histogram(vlm__buf *b, const char *name,
                            const char *labels, const histogram *h) {
  unsigned long long cum = 0;
  for (size_t i = 0; i <= NLAT; i++) {
    cum += load((atomic_ullong *)&h->bucket[i]);
    if (i < NLAT)
      vlm__buf_printf(b, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels,
                      lat_bounds[i], cum);
    else
      vlm__buf_printf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels,
                      cum);
  }
  vlm__buf_printf(b, "%s_sum{%s} %.9f\n%s_count{%s} %llu\n", name, labels,
                  (double)load((atomic_ullong *)&h->sum_ns) * 1e-9, name,
                  labels, load((atomic_ullong *)&h->count));
}

static void metrics_exec(vlm__job *job) {
  vlm_server *srv = job->srv;
  vlm__metrics *m = srv->metrics;
  scrape_state *st = job->state;
  vlm_db_info info;
  int rc = vlm_db_stat(srv->db, &info);
  if (rc < 0) {
    vlm__reply_error(&job->reply, "ERR", "%s: %s", vlm_strerror(rc),
                     vlm_errmsg());
    return;
  }
  vlm__buf b;
  vlm__buf_init(&b, 0);
  static const char *proto[2] = {"resp", "http"};
  char name[32];

  help(&b, "vlmdb_requests_total", "counter",
       "Requests received, by command and protocol.");
  for (int i = 0; i < m->ncmd; i++)
    for (int p = 0; p < 2; p++) {
      lower(name, sizeof name, vlm__command_at(i)->name);
      vlm__buf_printf(&b, "vlmdb_requests_total{command=\"%s\",protocol="
                      "\"%s\"} %llu\n", name, proto[p],
                      load(&m->requests[2 * i + p]));
    }
  help(&b, "vlmdb_request_errors_total", "counter",
       "Requests answered with an error, by command and protocol.");
  for (int i = 0; i < m->ncmd; i++)
    for (int p = 0; p < 2; p++) {
      lower(name, sizeof name, vlm__command_at(i)->name);
      vlm__buf_printf(&b, "vlmdb_request_errors_total{command=\"%s\","
                      "protocol=\"%s\"} %llu\n", name, proto[p],
                      load(&m->errors[2 * i + p]));
    }
  help(&b, "vlmdb_request_duration_seconds", "histogram",
       "Time from a request's arrival to its reply, by command (both "
       "protocols).");
  for (size_t t = 0; t < NTIMED; t++) {
    char labels[64];
    lower(name, sizeof name, timed[t]);
    snprintf(labels, sizeof labels, "command=\"%s\"", name);
    write_histogram(&b, "vlmdb_request_duration_seconds", labels,
                    &m->latency[t]);
  }

  help(&b, "vlmdb_embed_batch_size", "histogram",
       "Inputs per model call of the embedding batcher, by modality.");
  static const char *mod[2] = {"text", "image"};
  for (int md = 0; md < 2; md++) {
    unsigned long long cum = 0;
    for (size_t i = 0; i <= NBATCH; i++) {
      cum += load(&m->batch_bucket[md][i]);
      if (i < NBATCH)
        vlm__buf_printf(&b, "vlmdb_embed_batch_size_bucket{modality=\"%s\","
                        "le=\"%d\"} %llu\n", mod[md], batch_bounds[i], cum);
      else
        vlm__buf_printf(&b, "vlmdb_embed_batch_size_bucket{modality=\"%s\","
                        "le=\"+Inf\"} %llu\n", mod[md], cum);
    }
    vlm__buf_printf(&b, "vlmdb_embed_batch_size_sum{modality=\"%s\"} %llu\n"
                    "vlmdb_embed_batch_size_count{modality=\"%s\"} %llu\n",
                    mod[md], load(&m->batch_sum[md]), mod[md],
                    load(&m->batch_count[md]));
  }
  help(&b, "vlmdb_embed_queue_depth", "gauge",
       "Embedding requests waiting for a batch, by modality.");
  int depth[2];
  pthread_mutex_lock(&srv->batcher.mu);
  depth[0] = srv->batcher.q[0].n;
  depth[1] = srv->batcher.q[1].n;
  pthread_mutex_unlock(&srv->batcher.mu);
  for (int md = 0; md < 2; md++)
    vlm__buf_printf(&b, "vlmdb_embed_queue_depth{modality=\"%s\"} %d\n",
                    mod[md], depth[md]);

  help(&b, "vlmdb_items", "gauge", "Items in the database.");
  vlm__buf_printf(&b, "vlmdb_items %lld\n", (long long)info.items);
  int reembedding;
  long re_items, re_done;
  vlm__reembed_progress(srv, &reembedding, &re_items, &re_done);
  help(&b, "vlmdb_reembed_running", "gauge",
       "1 while VLM.REEMBED stages another model (writes refused).");
  vlm__buf_printf(&b, "vlmdb_reembed_running %d\n", reembedding);
  help(&b, "vlmdb_reembed_items", "gauge",
       "Items of the database the last VLM.REEMBED moves.");
  vlm__buf_printf(&b, "vlmdb_reembed_items %ld\n", re_items);
  help(&b, "vlmdb_reembed_done_items", "gauge",
       "Items the last VLM.REEMBED has staged (resumed ones included).");
  vlm__buf_printf(&b, "vlmdb_reembed_done_items %ld\n", re_done);
  help(&b, "vlmdb_vectors", "gauge", "Stored vectors, by modality.");
  vlm__buf_printf(&b, "vlmdb_vectors{modality=\"image\"} %lld\n"
                  "vlmdb_vectors{modality=\"text\"} %lld\n",
                  (long long)info.image_vectors,
                  (long long)info.text_vectors);
  help(&b, "vlmdb_index_vectors", "gauge",
       "Vectors in the FAISS indexes.");
  vlm__buf_printf(&b, "vlmdb_index_vectors %lld\n",
                  (long long)info.index_vectors);
  help(&b, "vlmdb_index_pending_vectors", "gauge",
       "Committed vectors not yet in the FAISS index (searched exactly).");
  vlm__buf_printf(&b, "vlmdb_index_pending_vectors %lld\n",
                  (long long)info.pending_vectors);
  help(&b, "vlmdb_index_tombstones", "gauge",
       "Deleted vectors still in the FAISS index (skipped).");
  vlm__buf_printf(&b, "vlmdb_index_tombstones %lld\n",
                  (long long)info.tombstones);
  help(&b, "vlmdb_index_info", "gauge",
       "The index kind (FAISS factory string); always 1.");
  vlm__buf_printf(&b, "vlmdb_index_info{kind=\"");
  for (const char *p = info.index_factory; *p; p++)
    if (*p != '"' && *p != '\\' && *p != '\n')
      vlm__buf_append(&b, p, 1);
  vlm__buf_printf(&b, "\",trained=\"%d\"} 1\n", info.index_trained);
  help(&b, "vlmdb_index_tuned_effort", "gauge",
       "The efSearch or nprobe searches use by default, by modality (0: "
       "not measured yet).");
  vlm__buf_printf(&b, "vlmdb_index_tuned_effort{modality=\"image\"} %d\n"
                  "vlmdb_index_tuned_effort{modality=\"text\"} %d\n",
                  info.tuned_effort[0], info.tuned_effort[1]);

  if (srv->db_dir[0]) {
    char path[1024];
    time_t newest = 0;
    unsigned long long idx = index_bytes(srv->db_dir, &newest);
    snprintf(path, sizeof path, "%s/payload.lmdb", srv->db_dir);
    unsigned long long payload = file_bytes(path, NULL);
    snprintf(path, sizeof path, "%s/meta.sqlite", srv->db_dir);
    unsigned long long meta = file_bytes(path, NULL);
    snprintf(path, sizeof path, "%s/meta.sqlite-wal", srv->db_dir);
    meta += file_bytes(path, NULL);
    help(&b, "vlmdb_store_bytes", "gauge", "Bytes on disk, by store.");
    vlm__buf_printf(&b, "vlmdb_store_bytes{store=\"payload.lmdb\"} %llu\n"
                    "vlmdb_store_bytes{store=\"meta.sqlite\"} %llu\n"
                    "vlmdb_store_bytes{store=\"index\"} %llu\n", payload,
                    meta, idx);
    if (newest > 0) {
      help(&b, "vlmdb_last_checkpoint_age_seconds", "gauge",
           "Seconds since the newest index checkpoint was written.");
      vlm__buf_printf(&b, "vlmdb_last_checkpoint_age_seconds %lld\n",
                      (long long)(time(NULL) - newest));
    }
  }
  help(&b, "vlmdb_items_added_total", "counter",
       "Items written by ADD and UPSERT (ingest throughput).");
  vlm__buf_printf(&b, "vlmdb_items_added_total %llu\n",
                  load(&m->items_added));
  help(&b, "vlmdb_connections", "gauge", "Open connections, by protocol.");
  for (int p = 0; p < 2; p++)
    vlm__buf_printf(&b, "vlmdb_connections{protocol=\"%s\"} %d\n", proto[p],
                    st->conns[p]);
  help(&b, "vlmdb_connections_accepted_total", "counter",
       "Connections accepted (both protocols).");
  vlm__buf_printf(&b, "vlmdb_connections_accepted_total %llu\n",
                  (unsigned long long)st->accepted);
  help(&b, "vlmdb_connections_rejected_total", "counter",
       "Connections refused at --maxclients.");
  vlm__buf_printf(&b, "vlmdb_connections_rejected_total %llu\n",
                  (unsigned long long)st->rejected);
  help(&b, "vlmdb_requests_in_flight", "gauge",
       "Requests received and not yet answered.");
  vlm__buf_printf(&b, "vlmdb_requests_in_flight %d\n", st->in_flight);
  help(&b, "process_resident_memory_bytes", "gauge",
       "Resident memory size in bytes.");
  vlm__buf_printf(&b, "process_resident_memory_bytes %lld\n",
                  (long long)vlm__proc_status_kb("VmRSS") * 1024);
  if (b.oom)
    vlm__reply_error(&job->reply, "ERR", "out of memory");
  else
    vlm__reply_bulk(&job->reply, b.data, b.len);
  vlm__buf_free(&b);
}

const vlm__command vlm__metrics_command = {
    "METRICS", metrics_proc, metrics_exec, 1, 0, "server", "",
    "The Prometheus metrics (HTTP GET /metrics)."};
