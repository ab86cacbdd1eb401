/* pool.c - the worker threads that run embedding, search and database
 * work off the event loop.  A plain FIFO under one mutex: tasks are
 * milliseconds of work each, so the queue is never the bottleneck. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "netint.h"
#include "vlm_error.h"

/* Workers run at a lower priority than the event loop thread (Linux
 * priorities are per thread): when they keep every core busy, the loop
 * still gets a core the moment a client sends, so PING and the replies of
 * finished work are not delayed behind a search. */
#define WORKER_NICE 5

static void *worker_main(void *arg) {
  vlm__pool *pool = arg;
  pid_t tid = (pid_t)syscall(SYS_gettid);
  errno = 0;
  int prio = getpriority(PRIO_PROCESS, (id_t)tid);
  if (errno == 0)
    setpriority(PRIO_PROCESS, (id_t)tid,
                prio + WORKER_NICE > 19 ? 19 : prio + WORKER_NICE);
  pthread_mutex_lock(&pool->mu);
  for (;;) {
    /* Stop only when nothing is queued and nothing running could still
     * submit more (a job stage submits its next stage). */
    while (!pool->head && !(pool->stopping && pool->active == 0))
      pthread_cond_wait(&pool->cv, &pool->mu);
    if (!pool->head)
      break;
    vlm__task *task = pool->head;
    pool->head = task->next;
    if (!pool->head)
      pool->tail = NULL;
    pool->active++;
    pthread_mutex_unlock(&pool->mu);
    task->next = NULL;
    task->run(task);
    pthread_mutex_lock(&pool->mu);
    pool->active--;
    if (pool->stopping && pool->active == 0 && !pool->head)
      pthread_cond_broadcast(&pool->cv);
  }
  pthread_mutex_unlock(&pool->mu);
  return NULL;
}

int vlm__pool_start(vlm__pool *pool, int nthreads) {
  memset(pool, 0, sizeof *pool);
  pthread_mutex_init(&pool->mu, NULL);
  pthread_cond_init(&pool->cv, NULL);
  pool->threads = calloc((size_t)nthreads, sizeof *pool->threads);
  if (!pool->threads)
    return vlm_seterr(VLM_ENOMEM, "worker pool");
  for (int i = 0; i < nthreads; i++) {
    if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0) {
      vlm__pool_stop(pool);
      return vlm_seterr(VLM_ENOMEM, "cannot start worker thread %d", i);
    }
    pool->nthreads++;
  }
  return 0;
}

void vlm__pool_submit(vlm__pool *pool, vlm__task *task) {
  task->next = NULL;
  pthread_mutex_lock(&pool->mu);
  if (pool->tail)
    pool->tail->next = task;
  else
    pool->head = task;
  pool->tail = task;
  pthread_cond_signal(&pool->cv);
  pthread_mutex_unlock(&pool->mu);
}

int vlm__pool_idle(vlm__pool *pool) {
  pthread_mutex_lock(&pool->mu);
  int idle = !pool->head && pool->active == 0 && !pool->stopping;
  pthread_mutex_unlock(&pool->mu);
  return idle;
}

void vlm__pool_stop(vlm__pool *pool) {
  if (!pool->threads)
    return;
  pthread_mutex_lock(&pool->mu);
  pool->stopping = 1;
  pthread_cond_broadcast(&pool->cv);
  pthread_mutex_unlock(&pool->mu);
  for (int i = 0; i < pool->nthreads; i++)
    pthread_join(pool->threads[i], NULL);
  free(pool->threads);
  pool->threads = NULL;
  pool->nthreads = 0;
  pthread_cond_destroy(&pool->cv);
  pthread_mutex_destroy(&pool->mu);
}
