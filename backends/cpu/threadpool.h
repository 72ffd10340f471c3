/*
 * threadpool.h - the CPU backend's persistent worker pool.
 *
 * An instance creates its workers once at open() and joins them at close();
 * compute() hands each node's work to the pool as a "run": fn(arg, ith, nth)
 * is called once for every ith in [0, nth), the calling thread doing ith 0,
 * and the run returns when all calls have returned.  No thread is created
 * per run.
 */
#ifndef VELO_CPU_THREADPOOL_H
#define VELO_CPU_THREADPOOL_H

#include <stdint.h>

#include "velo/status.h"

typedef struct velo_cpu_pool velo_cpu_pool;

/* One share of a run: ith in [0, nth).  Must not call back into the pool. */
typedef void (*velo_cpu_task_fn)(void *arg, int ith, int nth);

/* Creates a pool of n_threads threads in all, the caller included (so
 * n_threads - 1 workers; 1 gives a pool that runs everything inline).
 * n_threads must be in [1, 1024].  Returns OK and *out, RESOURCE_EXHAUSTED
 * when memory or threads run out (nothing is left running), or
 * INVALID_ARGUMENT. */
velo_status velo_cpu_pool_create(int n_threads, velo_cpu_pool **out, velo_error *err);

/* Stops and joins the workers and frees the pool.  NULL is a no-op.  Must
 * not be called while a run is in progress. */
void velo_cpu_pool_destroy(velo_cpu_pool *pool);

/* Threads in the pool, the caller included. */
int velo_cpu_pool_size(const velo_cpu_pool *pool);

/* Runs fn(arg, ith, nth) for ith = 0..nth-1 and waits for all of them.
 * nth is clamped to [1, pool size]; ith 0 runs on the calling thread.
 * One run at a time per pool (the backend's caller serialises compute on an
 * instance); never fails. */
void velo_cpu_pool_run(velo_cpu_pool *pool, velo_cpu_task_fn fn, void *arg, int nth);

#endif /* VELO_CPU_THREADPOOL_H */
