/*
 * scheduler.h — the scheduler: sessions, the backend's slots, continuous batching.
 *
 * One scheduler thread owns the backend. Requests arrive as jobs through
 * sched_submit() (from the server's nng callbacks, which must not block) and
 * wait in a bounded inbox; a full inbox refuses with SSMD_EBUSY. Each
 * scheduler step starts the queued requests it can, then runs one batched
 * decode over every generating session and one bounded prefill chunk for
 * every appending session, so a long ingest never stalls short requests.
 * Requests on one session run one after the other, in arrival order.
 *
 * Slots are fewer than sessions: when a request needs a slot and none is
 * free, the least recently used idle session is evicted (paged out): its
 * state is copied to host memory and the slot is free at once; if it has
 * unsaved progress, that state is also checkpointed to the library on the
 * store thread (write-behind). Its next request pages it back in, exactly:
 * from the host tier (hostcache.h, cfg->host_cache_mb) while it is there,
 * else from the state library. The tier is bounded; entries whose commit
 * has not ended are never dropped (a full tier sends further page-outs
 * through the library only), and a failed commit keeps the state in memory
 * (sess.h) so nothing is lost. A store thread (storeq.h) does every library
 * access: compression and commits of snapshots and checkpoints, page-ins,
 * listings, tags, export and import. A snapshot's reply leaves only after
 * its commit.
 *
 * Lifecycle: sched_start() → sched_submit()... → sched_stop() (refuses new
 * jobs, ends running ones, stores every session with unsaved progress and
 * logs session → state ID, waits for the store thread, so every commit in
 * flight, page-outs' included, ends before it returns) → sched_free().
 *
 * Threads: sched_submit() and sched_stop() from any thread.
 */
#ifndef SSMD_SCHED_H
#define SSMD_SCHED_H

#include <stddef.h>

#include "config.h"
#include "hostcache.h"
#include "job.h"
#include "ssm.h"
#include "ssmd_err.h"
#include "store.h"
#include "tok.h"

/* Publishes one event frame (proto_event_frame()) on the events endpoint;
 * must not block. Called from the scheduler thread. */
typedef void (*sched_publish_fn)(void *arg, const void *frame, size_t len);

struct sched_opts {
	const cfg *cfg;             /* borrowed; outlives the scheduler */
	const ssm_model *model;     /* borrowed */
	const tok_tokenizer *tok;   /* borrowed; NULL = no tokenizer */
	store *store;               /* borrowed */
	const char *model_name;     /* reported by info */
	sched_publish_fn publish;   /* may be NULL: streams are not published */
	void *publish_arg;
};

typedef struct sched sched;

/* Opens the backend (cfg->backend, cfg->slots, cfg->threads) and starts the
 * scheduler and store threads. Errors of ssm_backend_open(), SSMD_ENOMEM. */
int sched_start(const struct sched_opts *o, sched **out);

/* Hands j to the scheduler, which finishes it (job_finish()) later. Takes j
 * on success; on SSMD_EBUSY (queue full) or SSMD_ECLOSED (stopping) the
 * caller keeps j. */
int sched_submit(sched *s, struct job *j);

/* Graceful stop as described above; blocks until done. Idempotent. */
void sched_stop(sched *s);

/* Stops if needed and frees everything; NULL is a no-op. */
void sched_free(sched *s);

/* The backend's name ("cpu", "cuda"). */
const char *sched_backend_name(const sched *s);

/* The host tier's counters (hostcache.h), current as of the tier's last
 * change: a request that paged a session in or out changed it before its
 * reply; a commit's end unpins an entry a little after the store thread
 * finished it. Any thread. (The stats reply has no fields for them.) */
void sched_tier_stats(sched *s, struct hostcache_stats *out);

#endif
