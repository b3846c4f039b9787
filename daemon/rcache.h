/*
 * rcache.h — the request cache that makes every request idempotent.
 *
 * nng REQ resends a request after a timeout or a reconnect, so the daemon may
 * see one request several times. The cache maps (client_id, request_id) to the
 * packed reply of its first execution:
 *   - first sight: an entry "in progress" is made and the caller executes the
 *     request, then hands the reply to rcache_finish();
 *   - seen and finished: the caller answers with a copy of the stored reply;
 *   - seen and still in progress: the caller's waiter is attached and gets
 *     the reply when the first execution finishes (no second execution).
 * At most `capacity` finished replies, of at most `max_bytes` bytes in all,
 * are kept; the oldest is forgotten first, and a single reply larger than
 * max_bytes is not kept at all (such replies are exports, which are safe to
 * run again). Entries in progress are never forgotten (their number is
 * bounded by the requests in flight).
 *
 * Thread-safety: every function may be called from any thread (one mutex;
 * waiter callbacks run without it held).
 */
#ifndef SSMD_RCACHE_H
#define SSMD_RCACHE_H

#include <stddef.h>

#include "ssmd_err.h"

typedef struct rcache rcache;

enum rcache_state {
	RCACHE_NEW = 0,     /* not seen: execute, then rcache_finish() */
	RCACHE_DONE = 1,    /* finished: *reply holds a copy */
	RCACHE_PENDING = 2, /* in progress: the waiter will be called */
};

/* Called once per attached waiter by the thread that finishes the request;
 * reply (len bytes) is borrowed for the duration of the call. */
typedef void (*rcache_waiter_fn)(void *waiter, const void *reply, size_t len);

/* Makes a cache keeping at most capacity (>= 1) finished replies of at most
 * max_bytes bytes in all. SSMD_EINVAL on a zero capacity, SSMD_ENOMEM. */
int rcache_alloc(size_t capacity, size_t max_bytes, rcache **out);

/* Frees the cache and every stored reply; NULL is a no-op. Waiters still
 * attached are dropped without a call. */
void rcache_free(rcache *c);

/* Looks (client_id, request_id) up; client_id may be NULL (= ""). Writes
 * *state; for RCACHE_DONE also *reply (malloc'd copy, caller frees) and
 * *len; for RCACHE_PENDING, waiter is attached (unless it is NULL: then the
 * caller just leaves the answer to the first execution). SSMD_ENOMEM
 * (nothing changed). */
int rcache_begin(rcache *c, const char *client_id, const char *request_id,
		 void *waiter, void **reply, size_t *len, int *state);

/* As rcache_begin(), but only for a key already known: RCACHE_DONE or
 * RCACHE_PENDING (waiter attached unless NULL); SSMD_ENOENT for a key never
 * seen or already forgotten (nothing is made). For fetching a result by
 * request ID; with reply NULL (and len unused) only the state is asked for,
 * and a finished reply is not copied. */
int rcache_lookup(rcache *c, const char *client_id, const char *request_id,
		  void *waiter, void **reply, size_t *len, int *state);

/* Completes an entry made by rcache_begin() == RCACHE_NEW: calls fn for each
 * attached waiter with reply, then keeps a copy of the reply when remember
 * is set (forgetting the oldest beyond capacity), or drops the entry when it
 * is not (a reply like "queue full" whose retry must execute afresh).
 * SSMD_ENOENT when there is no such entry in progress; SSMD_ENOMEM when the
 * copy cannot be made (the waiters are still called; the entry is dropped). */
int rcache_finish(rcache *c, const char *client_id, const char *request_id,
		  const void *reply, size_t len, int remember,
		  rcache_waiter_fn fn);

/* Number of finished replies kept now. */
size_t rcache_size(rcache *c);

/* Bytes of the finished replies kept now. */
size_t rcache_bytes(rcache *c);

#endif
