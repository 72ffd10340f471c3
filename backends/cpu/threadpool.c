/*
 * threadpool.c - persistent worker pool for the CPU backend (threadpool.h).
 *
 * A run is published by bumping a generation counter under the mutex and
 * broadcasting; workers spin briefly on the counter (runs follow each other
 * closely inside one graph) and then sleep on the condition variable.  The
 * caller works as thread 0, then waits for the pending-worker count to drop
 * to zero, again spinning briefly before sleeping.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "threadpool.h"

/* Spin iterations before sleeping: about 50 us on current x86 cores, long
 * enough to bridge the gap between two nodes of one graph. */
#define POOL_SPIN 2000

typedef struct pool_worker {
  velo_cpu_pool *pool;
  int ith;
  pthread_t thread;
} pool_worker;

struct velo_cpu_pool {
  int n_threads;
  pool_worker *workers; /* n_threads - 1 entries */

  pthread_mutex_t mutex;
  pthread_cond_t work_cv; /* a new generation or stop */
  pthread_cond_t done_cv; /* pending reached zero */
  bool stop;              /* under mutex */

  atomic_uint gen;        /* bumped once per run (under mutex) */
  atomic_int pending;     /* workers still busy with the current run */

  /* the current run; written before gen is bumped */
  velo_cpu_task_fn fn;
  void *arg;
  int nth;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Waits for a generation other than seen; returns it, or seen itself when
 * the pool is stopping. */
static unsigned wait_for_work(velo_cpu_pool *pool, unsigned seen) {
  unsigned g;
  for (int i = 0; i < POOL_SPIN; i++) {
    g = atomic_load_explicit(&pool->gen, memory_order_acquire);
    if (g != seen) return g;
    cpu_relax();
  }
  pthread_mutex_lock(&pool->mutex);
  while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) == seen && !pool->stop)
    pthread_cond_wait(&pool->work_cv, &pool->mutex);
  pthread_mutex_unlock(&pool->mutex);
  return g;
}

/* Worker thread body: one share of every run until stopped. */
static void *worker_main(void *p) {
  pool_worker *w = p;
  velo_cpu_pool *pool = w->pool;
  /* The generation the pool had when this worker was created (0: set
   * before any worker starts), never the value it has when the thread gets
   * to run: a run published before a late-starting worker read gen would
   * otherwise count as already seen, and the caller would wait forever for
   * that worker's share. */
  unsigned seen = 0;
  for (;;) {
    unsigned g = wait_for_work(pool, seen);
    if (g == seen) break; /* stopping */
    seen = g;
    if (w->ith < pool->nth) pool->fn(pool->arg, w->ith, pool->nth);
    if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
      pthread_mutex_lock(&pool->mutex);
      pthread_cond_signal(&pool->done_cv);
      pthread_mutex_unlock(&pool->mutex);
    }
  }
  return NULL;
}

/* Stops and joins the first n workers (used by destroy and by a failed
 * create). */
static void stop_workers(velo_cpu_pool *pool, int n) {
  pthread_mutex_lock(&pool->mutex);
  pool->stop = true;
  pthread_cond_broadcast(&pool->work_cv);
  pthread_mutex_unlock(&pool->mutex);
  for (int i = 0; i < n; i++) pthread_join(pool->workers[i].thread, NULL);
}

/* See threadpool.h. */
velo_status velo_cpu_pool_create(int n_threads, velo_cpu_pool **out, velo_error *err) {
  *out = NULL;
  if (n_threads < 1 || n_threads > 1024)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "cpu: thread count %d outside [1, 1024]",
                          n_threads);
  velo_cpu_pool *pool = calloc(1, sizeof *pool);
  if (!pool) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "cpu: out of memory");
  pool->n_threads = n_threads;
  pool->nth = 1;
  atomic_init(&pool->gen, 0);
  atomic_init(&pool->pending, 0);
  if (n_threads > 1) {
    pool->workers = calloc((size_t)n_threads - 1, sizeof *pool->workers);
    if (!pool->workers) {
      free(pool);
      return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "cpu: out of memory");
    }
  }
  pthread_mutex_init(&pool->mutex, NULL);
  pthread_cond_init(&pool->work_cv, NULL);
  pthread_cond_init(&pool->done_cv, NULL);
  for (int i = 0; i < n_threads - 1; i++) {
    pool->workers[i].pool = pool;
    pool->workers[i].ith = i + 1;
    int rc = pthread_create(&pool->workers[i].thread, NULL, worker_main, &pool->workers[i]);
    if (rc != 0) {
      stop_workers(pool, i);
      pool->n_threads = 1; /* nothing left to join */
      velo_cpu_pool_destroy(pool);
      return velo_error_set(err, VELO_RESOURCE_EXHAUSTED,
                            "cpu: cannot start worker thread %d of %d: %s", i + 1, n_threads,
                            strerror(rc));
    }
  }
  *out = pool;
  return VELO_OK;
}

/* See threadpool.h. */
void velo_cpu_pool_destroy(velo_cpu_pool *pool) {
  if (!pool) return;
  if (pool->n_threads > 1) stop_workers(pool, pool->n_threads - 1);
  pthread_cond_destroy(&pool->done_cv);
  pthread_cond_destroy(&pool->work_cv);
  pthread_mutex_destroy(&pool->mutex);
  free(pool->workers);
  free(pool);
}

/* See threadpool.h. */
int velo_cpu_pool_size(const velo_cpu_pool *pool) { return pool->n_threads; }

/* See threadpool.h. */
void velo_cpu_pool_run(velo_cpu_pool *pool, velo_cpu_task_fn fn, void *arg, int nth) {
  if (nth > pool->n_threads) nth = pool->n_threads;
  if (nth < 1) nth = 1;
  if (pool->n_threads == 1 || nth == 1) {
    fn(arg, 0, 1);
    return;
  }
  pool->fn = fn;
  pool->arg = arg;
  pool->nth = nth;
  /* every worker takes part in every run (those with ith >= nth just
   * acknowledge), so pending always starts at the worker count */
  atomic_store_explicit(&pool->pending, pool->n_threads - 1, memory_order_relaxed);
  pthread_mutex_lock(&pool->mutex);
  atomic_fetch_add_explicit(&pool->gen, 1, memory_order_release);
  pthread_cond_broadcast(&pool->work_cv);
  pthread_mutex_unlock(&pool->mutex);

  fn(arg, 0, nth);

  for (int i = 0; i < POOL_SPIN; i++) {
    if (atomic_load_explicit(&pool->pending, memory_order_acquire) == 0) return;
    cpu_relax();
  }
  pthread_mutex_lock(&pool->mutex);
  while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0)
    pthread_cond_wait(&pool->done_cv, &pool->mutex);
  pthread_mutex_unlock(&pool->mutex);
}
