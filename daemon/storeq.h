/*
 * storeq.h — the store thread: runs tasks one at a time, in the order they
 * were posted.
 *
 * Everything that touches the state library from the daemon's request path
 * runs here (compression, commits, reads, listings), so the scheduler never
 * waits on disk. The order matters: a put posted before a read is committed
 * before the read runs, so a task can rely on the IDs of earlier puts.
 *
 * A task is a struct storeq_task embedded in the caller's own record; the
 * task function receives it and recovers the record (container_of style).
 * Posting never fails and never blocks beyond a mutex.
 *
 * Threads: storeq_post() from any thread; tasks run on the store thread.
 */
#ifndef SSMD_STOREQ_H
#define SSMD_STOREQ_H

#include <stddef.h>

#include "ssmd_err.h"

struct storeq_task;
typedef void (*storeq_fn)(struct storeq_task *t);

struct storeq_task {
	struct storeq_task *next;
	storeq_fn fn;
};

typedef struct storeq storeq;

/* Starts the store thread. SSMD_ENOMEM, SSMD_EIO (thread creation). */
int storeq_start(storeq **out);

/* Queues t to run fn(t) on the store thread, after every earlier task. */
void storeq_post(storeq *q, struct storeq_task *t, storeq_fn fn);

/* Runs every queued task (including ones those tasks post), then stops and
 * joins the thread and frees q. NULL is a no-op. */
void storeq_stop(storeq *q);

#endif
