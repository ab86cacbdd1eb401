/* jobs.c - a request's way through the worker pool.
 *
 * A job that needs an embedding goes through stages, each a pool task:
 *
 *   decode: an image is decoded and preprocessed on its own task, so many
 *           images decode in parallel;
 *   embed:  the job joins the batcher queue of its modality; that
 *           modality's collector thread waits up to the batch window from
 *           the first queued job's arrival (or until the batch is full),
 *           takes the batch and hands it to the pool as one task, which
 *           runs the model once for all of it and resubmits every job;
 *   exec:   the command's own work (search, write, reply formatting);
 *
 * and then goes back to the loop through the completion queue.  The
 * collectors only sleep and hand over, so waiting for a window never
 * holds a worker, and while one batch is encoded the next is gathered.
 * With batching off every job embeds its own input in its exec task.
 *
 * Order.  A connection's jobs enter the workers in request order, and a
 * write (or SAVE, EVAL) enters only when the connection has nothing else
 * in the workers; reads between two writes go in together.  So pipelined
 * commands take effect in the order sent (ADD k; DEL k deletes k) while
 * other connections' jobs, and their embeddings in the batcher, proceed
 * in parallel.  The gate runs on the loop thread: vlm__job_start queues
 * the job or launches it, vlm__job_finished launches what it held back.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "netint.h"
#include "vlm_error.h"

/* ---- jobs ---- */

vlm__job *vlm__job_new(vlm__conn *conn, const vlm__command *cmd, int argc,
                       const vlm__resp_arg *argv) {
  size_t bytes = sizeof(vlm__job) + (size_t)argc * sizeof(vlm__resp_arg);
  for (int i = 0; i < argc; i++)
    bytes += argv[i].len + 1;
  vlm__job *job = calloc(1, bytes);
  if (!job)
    return NULL;
  job->conn = conn;
  job->srv = conn->srv;
  job->cmd = cmd;
  job->argc = argc;
  job->model_gen = conn->srv->model_gen;
  job->created_ns = vlm__now_ns();
  vlm__buf_init(&job->reply, conn->resp3);
  if (argc > 0) {
    job->argv = (vlm__resp_arg *)(job + 1);
    char *p = (char *)(job->argv + argc);
    for (int i = 0; i < argc; i++) {
      memcpy(p, argv[i].ptr, argv[i].len);
      p[argv[i].len] = '\0';
      job->argv[i].ptr = p;
      job->argv[i].len = argv[i].len;
      job->argv[i].off = 0;
      p += argv[i].len + 1;
    }
  }
  return job;
}

void vlm__job_free(vlm__job *job) {
  if (!job)
    return;
  vlm__buf_free(&job->reply);
  if (job->state_free)
    job->state_free(job->state);
  free(job->text_vec);
  free(job->image_vec);
  free(job->pixels);
  vlm__http_req_free(job->http);
  free(job);
}

/* Queue a finished job for the loop's completion handler. */
static void job_post(vlm__job *job) {
  vlm_server *srv = job->srv;
  job->done_next = NULL;
  pthread_mutex_lock(&srv->done_mu);
  if (srv->done_tail)
    srv->done_tail->done_next = job;
  else
    srv->done_head = job;
  srv->done_tail = job;
  pthread_cond_signal(&srv->done_cv);
  pthread_mutex_unlock(&srv->done_mu);
}

void vlm__job_complete(vlm__job *job) {
  vlm_server *srv = job->srv; /* once posted, the loop may free the job */
  job_post(job);
  uv_async_send(&srv->async_done);
}

static void job_fail(vlm__job *job, const char *what) {
  job->reply.len = 0;
  vlm__reply_error(&job->reply, "ERR", "%s: %s", what, vlm_errmsg());
  job->failed = 1;
}

void vlm__job_free_list(vlm__job *head) {
  while (head) {
    vlm__job *next = head->multi_next;
    vlm__job_free(head);
    head = next;
  }
}

int vlm__job_embed_now(vlm__job *job) {
  vlm_server *srv = job->srv;
  size_t dim = (size_t)srv->dim;
  int rc;
  if (!job->failed && job->embed_image && !job->pixels) {
    size_t side = (size_t)srv->image_size;
    job->pixels = malloc(3 * side * side * sizeof(float));
    rc = job->pixels ? vlm_clip_preprocess(srv->clip, job->embed_image,
                                           job->embed_image_len, job->pixels)
                     : vlm_seterr(VLM_ENOMEM, "image pixels");
    if (rc < 0)
      job_fail(job, "cannot read the image");
  }
  if (!job->failed && job->embed_text && !job->text_vec) {
    job->text_vec = malloc(dim * sizeof(float));
    rc = job->text_vec ? vlm_clip_encode_texts(srv->clip, &job->embed_text, 1,
                                               0, job->text_vec)
                       : vlm_seterr(VLM_ENOMEM, "vector");
    if (rc < 0)
      job_fail(job, "cannot embed the text");
  }
  if (!job->failed && job->embed_image && !job->image_vec) {
    job->image_vec = malloc(dim * sizeof(float));
    rc = job->image_vec ? vlm_clip_encode_pixels(srv->clip, job->pixels, 1, 0,
                                                 job->image_vec)
                        : vlm_seterr(VLM_ENOMEM, "vector");
    if (rc < 0)
      job_fail(job, "cannot embed the image");
  }
  return job->failed ? -1 : 0;
}

/* ---- inline execution on the loop thread ----
 *
 * A lone query pays two thread hand-offs on its way through a worker:
 * the loop wakes a worker, the worker wakes the loop.  At one query in
 * flight that is a sixth of an HNSW search.  So the loop runs a job itself
 * when all of these hold, and hands it to the workers otherwise:
 *
 *   - it is a read (writes keep their order through the workers) that
 *     needs no embedding and is not a coordinated fan-out's resubmission;
 *   - its command's moving average of execution time is at most
 *     --inline-max-us (default 1.5 ms; measured on the workers and inline alike; a command
 *     never measured goes to a worker first), so a PING never waits
 *     behind more than about that;
 *   - the workers are idle and no other request of its client is already
 *     in the buffer (a pipeline goes to the workers, in parallel);
 *   - the loop has not seen contention lately: when, after a job run
 *     inline, the loop has more input ready (another client sent while it
 *     searched), jobs go to the workers for INLINE_BACKOFF_NS, so clients
 *     in parallel are served in parallel.
 *
 * The job then completes through the loop's completion queue like any
 * other, without waking the loop: the read callback drains it. */
#define INLINE_BACKOFF_NS (20u * 1000u * 1000u)

static void exec_cost_note(vlm_server *srv, const vlm__command *cmd,
                           uint64_t ns) {
  int i = vlm__command_index(cmd);
  if (i < 0 || !srv->exec_cost_us)
    return;
  uint64_t us = ns / 1000u;
  if (us > 1000000u)
    us = 1000000u;
  uint32_t old = atomic_load_explicit(&srv->exec_cost_us[i],
                                      memory_order_relaxed);
  /* Races between workers only lose a sample. */
  uint32_t avg = old == 0 ? (uint32_t)us : ((old - 1) * 7u + (uint32_t)us) / 8u;
  atomic_store_explicit(&srv->exec_cost_us[i], avg + 1, memory_order_relaxed);
}

static void job_exec_timed(vlm__job *job) {
  uint64_t t0 = vlm__now_ns();
  job->cmd->exec(job);
  exec_cost_note(job->srv, job->cmd, vlm__now_ns() - t0);
}

static int job_exclusive(const vlm__job *job);

static int job_inline_ok(const vlm__job *job) {
  vlm_server *srv = job->srv;
  if (!srv->in_read || srv->more_input || job_exclusive(job) ||
      (job->cmd->flags & VLM__CMD_TX) ||
      job->embed_text || job->embed_image || job->failed || !job->cmd->exec)
    return 0;
  int i = vlm__command_index(job->cmd);
  if (i < 0 || !srv->exec_cost_us || srv->inline_max_us <= 0)
    return 0;
  uint32_t cost = atomic_load_explicit(&srv->exec_cost_us[i],
                                       memory_order_relaxed);
  if (cost == 0 || cost - 1 > (uint32_t)srv->inline_max_us)
    return 0;
  if (srv->contended_until_ns && vlm__now_ns() < srv->contended_until_ns)
    return 0;
  return vlm__pool_idle(&srv->pool);
}

/* Has the loop anything ready to read (or a worker's completion)? */
static int loop_has_input(vlm_server *srv) {
  struct pollfd p = {.fd = uv_backend_fd(&srv->loop), .events = POLLIN};
  return poll(&p, 1, 0) > 0;
}

static void job_run_inline(vlm__job *job) {
  vlm_server *srv = job->srv;
  job_exec_timed(job);
  srv->inline_jobs++;
  if (loop_has_input(srv))
    srv->contended_until_ns = vlm__now_ns() + INLINE_BACKOFF_NS;
  job_post(job); /* the read callback drains it: no wake-up */
  srv->inline_done = 1;
}

static int batching(const vlm_server *srv) {
  return srv->batcher.window_ns >= 0;
}

static void batcher_submit(vlm__batcher *b, int m, vlm__job *job);

static void job_run(vlm__task *task) {
  vlm__job *job = (vlm__job *)task;
  vlm_server *srv = job->srv;
  int rc;

  if (batching(srv)) {
    /* the image is decoded here; the batcher encodes it with others */
    if (!job->failed && job->embed_image && !job->pixels) {
      size_t side = (size_t)srv->image_size;
      job->pixels = malloc(3 * side * side * sizeof(float));
      rc = job->pixels ? vlm_clip_preprocess(srv->clip, job->embed_image,
                                             job->embed_image_len,
                                             job->pixels)
                       : vlm_seterr(VLM_ENOMEM, "image pixels");
      if (rc < 0)
        job_fail(job, "cannot read the image");
    }
    if (!job->failed && job->embed_text && !job->text_vec) {
      batcher_submit(&srv->batcher, VLM__TEXT, job);
      return;
    }
    if (!job->failed && job->embed_image && !job->image_vec) {
      batcher_submit(&srv->batcher, VLM__IMAGE, job);
      return;
    }
  } else {
    vlm__job_embed_now(job);
  }
  if (!job->failed)
    job_exec_timed(job);
  vlm__job_complete(job);
}

void vlm__job_resubmit(vlm__job *job) {
  job->task.run = job_run;
  vlm__pool_submit(&job->srv->pool, &job->task);
}

/* ---- execution order per connection (loop thread) ---- */

static int job_exclusive(const vlm__job *job) {
  return (job->cmd->flags & (VLM__CMD_WRITE | VLM__CMD_ADMIN)) != 0;
}

static int job_may_run(const vlm__conn *conn, const vlm__job *job) {
  if (conn->exec_write)
    return 0;
  return !job_exclusive(job) || conn->exec_reads == 0;
}

static void job_launch(vlm__job *job) {
  vlm__conn *conn = job->conn;
  vlm_server *srv = job->srv;
  if (job_exclusive(job))
    conn->exec_write = 1;
  else
    conn->exec_reads++;
  if (srv->hold_launches) { /* a model switch waits for the workers */
    job->wait_next = NULL;
    if (srv->held_tail)
      srv->held_tail->wait_next = job;
    else
      srv->held_head = job;
    srv->held_tail = job;
    return;
  }
  srv->jobs_out++;
  if (job->model_gen != srv->model_gen)
    vlm__job_prepare_again(job);
  if (job_inline_ok(job)) {
    job_run_inline(job);
    return;
  }
  job->task.run = job_run;
  vlm__pool_submit(&job->srv->pool, &job->task);
}

void vlm__jobs_release_held(vlm_server *srv) {
  vlm__job *job = srv->held_head;
  srv->held_head = srv->held_tail = NULL;
  while (job) {
    vlm__job *next = job->wait_next;
    srv->jobs_out++;
    if (job->model_gen != srv->model_gen)
      vlm__job_prepare_again(job);
    job->task.run = job_run;
    vlm__pool_submit(&srv->pool, &job->task);
    job = next;
  }
}

static int job_is_write(const vlm__job *job) {
  return job->cmd && (job->cmd->flags & VLM__CMD_WRITE);
}

void vlm__job_start(vlm__job *job) {
  vlm__conn *conn = job->conn;
  conn->refs++;
  if (job_is_write(job)) {
    vlm__cluster_write_started(job->srv, job);
    job->srv->writes_pending++;
  }
  if (!conn->wait_head && job_may_run(conn, job)) {
    job_launch(job);
    return;
  }
  job->wait_next = NULL;
  if (conn->wait_tail)
    conn->wait_tail->wait_next = job;
  else
    conn->wait_head = job;
  conn->wait_tail = job;
  job->srv->jobs_waiting++;
}

void vlm__job_finished(vlm__job *job) {
  vlm__conn *conn = job->conn;
  if (job->write_seq)
    vlm__cluster_write_finished(job->srv, job);
  job->srv->jobs_out--;
  if (job_is_write(job))
    job->srv->writes_pending--;
  if (job_exclusive(job))
    conn->exec_write = 0;
  else
    conn->exec_reads--;
  vlm__job *next;
  while ((next = conn->wait_head) && job_may_run(conn, next)) {
    conn->wait_head = next->wait_next;
    if (!conn->wait_head)
      conn->wait_tail = NULL;
    job->srv->jobs_waiting--;
    job_launch(next);
  }
}

/* ---- batcher ---- */

typedef struct {
  vlm__task task;  /* first: the pool runs it */
  vlm__batcher *batcher;
  int modality, n;
  vlm__job *head;
} batch_task;

static void encode_batch(vlm__batcher *b, int m, vlm__job *head, int n);

static void batch_task_run(vlm__task *task) {
  batch_task *bt = (batch_task *)task;
  encode_batch(bt->batcher, bt->modality, bt->head, bt->n);
  free(bt);
}

/* Take up to max jobs off queue m (lock held). */
static vlm__job *take_batch(vlm__batcher *b, int m, int *count) {
  vlm__batch_queue *q = &b->q[m];
  vlm__job *head = q->head, *last = NULL, *job = head;
  int n = 0;
  while (job && n < b->max) {
    last = job;
    job = job->batch_next;
    n++;
  }
  if (last)
    last->batch_next = NULL;
  q->head = job;
  if (!job)
    q->tail = NULL;
  q->n -= n;
  *count = n;
  return head;
}

typedef struct {
  vlm__batcher *b;
  int m;
} collector_arg;

static void *collector_main(void *arg) {
  collector_arg ca = *(collector_arg *)arg;
  free(arg);
  vlm__batcher *b = ca.b;
  int m = ca.m;
  vlm__batch_queue *q = &b->q[m];
  pthread_mutex_lock(&b->mu);
  for (;;) {
    while (!q->head && !b->stopping)
      pthread_cond_wait(&b->cv[m], &b->mu);
    if (!q->head)
      break; /* stopping and drained */
    /* The window counts from the first job's arrival. */
    uint64_t deadline = q->head->enqueued_ns + (uint64_t)b->window_ns;
    while (q->n < b->max && !b->stopping) {
      uint64_t now = vlm__now_ns();
      if (now >= deadline)
        break;
      struct timespec ts = {(time_t)(deadline / 1000000000u),
                            (long)(deadline % 1000000000u)};
      pthread_cond_timedwait(&b->cv[m], &b->mu, &ts);
    }
    int n;
    vlm__job *head = take_batch(b, m, &n);
    pthread_mutex_unlock(&b->mu);
    batch_task *bt = malloc(sizeof *bt);
    if (bt) {
      bt->task.run = batch_task_run;
      bt->batcher = b;
      bt->modality = m;
      bt->n = n;
      bt->head = head;
      vlm__pool_submit(&b->srv->pool, &bt->task);
    } else {
      encode_batch(b, m, head, n); /* out of memory: do it here */
    }
    pthread_mutex_lock(&b->mu);
  }
  pthread_mutex_unlock(&b->mu);
  return NULL;
}

int vlm__batcher_start(vlm__batcher *b, vlm_server *srv, int window_us,
                       int max) {
  memset(b, 0, sizeof *b);
  b->srv = srv;
  b->window_ns = window_us < 0 ? -1 : (long)window_us * 1000;
  b->max = max;
  pthread_mutex_init(&b->mu, NULL);
  for (int m = 0; m < 2; m++) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv[m], &attr);
    pthread_condattr_destroy(&attr);
    atomic_init(&b->batches[m], 0);
    atomic_init(&b->items[m], 0);
    atomic_init(&b->largest[m], 0);
  }
  if (b->window_ns < 0 || !srv->clip) {
    b->stopped = 1;
    return 0;
  }
  for (int m = 0; m < 2; m++) {
    collector_arg *ca = malloc(sizeof *ca);
    if (ca) {
      ca->b = b;
      ca->m = m;
    }
    if (!ca || pthread_create(&b->threads[m], NULL, collector_main, ca) != 0) {
      free(ca);
      vlm__batcher_stop(b);
      return vlm_seterr(VLM_ENOMEM, "cannot start the batcher threads");
    }
    b->nthreads++;
  }
  return 0;
}

void vlm__batcher_stop(vlm__batcher *b) {
  pthread_mutex_lock(&b->mu);
  b->stopping = 1;
  pthread_cond_broadcast(&b->cv[0]);
  pthread_cond_broadcast(&b->cv[1]);
  pthread_mutex_unlock(&b->mu);
  for (int m = 0; m < b->nthreads; m++)
    pthread_join(b->threads[m], NULL);
  b->nthreads = 0;
  pthread_mutex_lock(&b->mu);
  b->stopped = 1;
  pthread_mutex_unlock(&b->mu);
}

void vlm__batcher_destroy(vlm__batcher *b) {
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->cv[0]);
  pthread_cond_destroy(&b->cv[1]);
}

static void batcher_submit(vlm__batcher *b, int m, vlm__job *job) {
  vlm__batch_queue *q = &b->q[m];
  pthread_mutex_lock(&b->mu);
  if (b->stopped) {
    pthread_mutex_unlock(&b->mu);
    job->batch_next = NULL;
    encode_batch(b, m, job, 1);
    return;
  }
  job->enqueued_ns = vlm__now_ns();
  job->batch_next = NULL;
  if (q->tail)
    q->tail->batch_next = job;
  else
    q->head = job;
  q->tail = job;
  q->n++;
  if (q->n == 1 || q->n >= b->max)
    pthread_cond_signal(&b->cv[m]);
  pthread_mutex_unlock(&b->mu);
}

/* Give each job of the batch its vector (or its own error) and send it on
 * to its next stage. */
static void finish_batch(vlm__batcher *b, int m, vlm__job *head,
                         const float *vecs, int rc) {
  vlm_server *srv = b->srv;
  size_t dim = (size_t)srv->dim;
  int i = 0;
  for (vlm__job *job = head, *next; job; job = next, i++) {
    next = job->batch_next;
    float *vec = malloc(dim * sizeof(float));
    int jrc = vec ? 0 : vlm_seterr(VLM_ENOMEM, "vector");
    if (jrc == 0 && rc == 0) {
      memcpy(vec, vecs + (size_t)i * dim, dim * sizeof(float));
    } else if (jrc == 0) {
      /* The batch failed: find out which input is at fault. */
      if (m == VLM__TEXT)
        jrc = vlm_clip_encode_texts(srv->clip, &job->embed_text, 1, 0, vec);
      else
        jrc = vlm_clip_encode_pixels(srv->clip, job->pixels, 1, 0, vec);
    }
    if (jrc < 0) {
      free(vec);
      job_fail(job, m == VLM__TEXT ? "cannot embed the text"
                                   : "cannot embed the image");
    } else if (m == VLM__TEXT) {
      job->text_vec = vec;
    } else {
      job->image_vec = vec;
    }
    vlm__pool_submit(&srv->pool, &job->task);
  }
}

/* Run the model once for n jobs of modality m. */
static void encode_batch(vlm__batcher *b, int m, vlm__job *head, int n) {
  vlm_server *srv = b->srv;
  vlm__metrics_batch(srv, m, n);
  atomic_fetch_add(&b->batches[m], 1);
  atomic_fetch_add(&b->items[m], n);
  long long largest = atomic_load(&b->largest[m]);
  while (n > largest &&
         !atomic_compare_exchange_weak(&b->largest[m], &largest, n))
    ;
  size_t side = (size_t)srv->image_size, one = 3 * side * side;
  float *vecs = malloc((size_t)n * (size_t)srv->dim * sizeof(float));
  int rc = vlm_seterr(VLM_ENOMEM, "batch of %d", n);
  if (m == VLM__TEXT) {
    const char **texts = malloc((size_t)n * sizeof *texts);
    if (texts && vecs) {
      int i = 0;
      for (vlm__job *job = head; job; job = job->batch_next)
        texts[i++] = job->embed_text;
      rc = vlm_clip_encode_texts(srv->clip, texts, n, 0, vecs);
    }
    free(texts);
  } else {
    float *pixels = n == 1 ? NULL : malloc((size_t)n * one * sizeof(float));
    if (n == 1 && vecs) {
      rc = vlm_clip_encode_pixels(srv->clip, head->pixels, 1, 0, vecs);
    } else if (pixels && vecs) {
      int i = 0;
      for (vlm__job *job = head; job; job = job->batch_next)
        memcpy(pixels + (size_t)i++ * one, job->pixels, one * sizeof(float));
      rc = vlm_clip_encode_pixels(srv->clip, pixels, n, 0, vecs);
    }
    free(pixels);
  }
  finish_batch(b, m, head, vecs, rc);
  free(vecs);
}
