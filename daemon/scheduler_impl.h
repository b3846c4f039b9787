/*
 * scheduler_impl.h — internals shared by the scheduler (scheduler.c, scheduler
 * thread) and its store-thread half (scheduler_store.c).
 */
#ifndef SSMD_SCHED_IMPL_H
#define SSMD_SCHED_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "hostcache.h"
#include "scheduler.h"
#include "sess.h"
#include "storeq.h"

struct sched {
	/* Fixed after start. */
	const cfg *cfg;
	const ssm_model *model;
	const ssm_config *mc;
	const tok_tokenizer *tok;
	store *store;
	ssm_backend *be;
	int n_slots;
	int vocab;
	size_t state_bytes;        /* encoded canonical state */
	char model_name[256];
	char fp_hex[2 * SSM_FINGERPRINT_LEN + 1];
	sched_publish_fn publish;
	void *publish_arg;
	storeq *sq;
	void *put_raw;             /* store thread only: put_encode()'s buffer
				    * for every put and merge, (put_raw_cap)
				    * bytes, kept from put to put (freed by
				    * sched_free()) */
	size_t put_raw_cap;
	double start_s;            /* monotonic seconds at start */
	double expiry_next;        /* sched_expire(): when to walk the sessions next */
	hostcache *hc;             /* the host tier (scheduler thread; after
				    * the thread ends, sched_stop()'s) */

	/* Inbox, under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *in_head, *in_tail;
	size_t in_n;               /* jobs in the inbox */
	struct done_msg *done_head, *done_tail;
	int stopping;
	int stopped;               /* the scheduler thread has finished */
	pthread_t thread;
	int thread_started;

	/* Counters read by stats from any thread. */
	atomic_size_t waiting;     /* requests submitted and not yet started */
	atomic_uint_fast64_t tokens_total, requests_total, evictions;
	atomic_uint_fast64_t store_failures; /* puts the library refused */
	atomic_size_t n_sessions, n_resident;
	struct hostcache_stats tier; /* copy of hc's, under lock */

	/* Scheduler thread only. */
	struct sess_table sessions;
	struct sess **slot_owner;  /* (n_slots) session in each slot, or NULL */
	uint64_t tick;
	size_t rr;                 /* session index where the next step's
				    * prefill round-robin starts */
	int draining;              /* shutting down: start nothing new */
	float *logits;             /* (n_slots, vocab) decode output */
	int *batch_slots;          /* (n_slots) */
	int32_t *batch_tokens;     /* (n_slots) */
	struct sess **batch_sess;  /* (n_slots) */
	double rate_t0;            /* tokens/s window start (seconds) */
	uint64_t rate_n0;          /* tokens_total at rate_t0 */
	double tokens_per_s;       /* over the last completed window */
};

/* A completion posted back to the scheduler by the store thread. */
enum done_type {
	DONE_LOADED,   /* page-in of sess finished: st or rc */
	DONE_OPENED,   /* open/fork/score of a stored state: st + id, or rc */
	DONE_MERGED,   /* merge: st + id to open, or to replay onto */
	DONE_CLOSED,   /* a close's snapshot of sess: committed (rc 0, close
			* it now) or failed (rc: it stays open) */
	DONE_COMMITTED,/* a put that borrowed ref's state from the host tier
			* ended: rc 0, or the put failed and ref's kept copy
			* is now that state */
	DONE_HEALED,   /* ref's kept copy st (owned) was stored by a later
			* put and gave it up: the host tier may borrow it */
};

enum merge_mode { MERGE_INTERPOLATE, MERGE_COMPOSE, MERGE_REPLAY };

/* A merge request on its way (job->merge). */
struct merge {
	enum merge_mode mode;
	int open;                  /* open a session on the result */
	char ids[STORE_PARENTS_MAX][STORE_ID_SIZE]; /* (n) the sources */
	size_t n;
	int32_t *tokens;           /* replay: the transcripts to feed (owned) */
	size_t n_tokens;
};

struct done_msg {
	struct storeq_task task;   /* the store-thread task that fills it */
	struct sref *ref;          /* load: the state to read; committed,
				    * healed: the state (reference) */
	struct sref *parent;       /* committed: the put's parent, when it
				    * succeeded (reference), or NULL */
	char ref_str[STORE_TAG_MAX + 1]; /* resolve: the ID or tag */
	sched *s;
	struct done_msg *next;
	enum done_type type;
	struct sess *sess;
	struct job *job;
	ssm_state *st;             /* owned */
	char id[STORE_ID_SIZE];
	int rc;
	char err[512];
};

/* Posts a completion to the scheduler thread (store thread side). */
void sched_done_post(sched *s, struct done_msg *m);

/* --- store-thread tasks (scheduler_store.c), posted by the scheduler -------- */

/* Stores st (taken) with transcript tokens (taken, n) as a child of parent
 * (reference taken; NULL = root) and fills ref (reference taken) at commit;
 * then, if job is set, finishes it as sched_store_reply() with ref and tag.
 * Takes a (calloc'd) and everything it owns. */
struct put_args {
	struct storeq_task task;
	sched *s;
	struct sref *ref;
	struct sref *parent;
	ssm_state *st;
	int32_t *tokens;
	size_t n_tokens;
	store_kind kind;
	char *label;               /* owned, may be NULL */
	char *tag;                 /* owned, may be NULL */
	char session[SESS_ID_SIZE];
	int persist;               /* record the state as the session's latest
				    * in the library's session table, with: */
	uint64_t seed;             /* the session's seed */
	char *sess_label;          /* its label (owned, may be NULL) */
	/* A merge's further parents (after parent), by ID. */
	char (*extra)[STORE_ID_SIZE];
	size_t n_extra;
	struct job *job;
	int log_commit;            /* log "session → state" at info (shutdown) */
	int borrowed;              /* st belongs to ref's host tier entry: the
				    * put reads it and, when it fails, makes
				    * it ref's kept copy; then it posts done */
	struct done_msg *done;     /* borrowed: the DONE_COMMITTED to post;
				    * heal: a DONE_HEALED to post if the
				    * kept copy is stored (owned) */
	struct done_msg *closed;   /* a DONE_CLOSED (idle expiry) posted last
				    * with rc = whether the state is stored
				    * (owned, may be NULL) */
};
void sched_store_put(struct put_args *a);

/* For a session with no progress since its base a->ref (reference taken;
 * a->st, a->parent and a->tokens unset): when the put of that base failed
 * (disk full), stores the state it kept now, as a put of a's kind, label
 * and session would, and the sref becomes that committed state in place;
 * the kept state then goes back to the scheduler in a->done (DONE_HEALED),
 * since the host tier may be reading it.
 * Whether it failed is known only here, after the earlier puts. Then, if
 * a->job is set, finishes it as sched_store_reply() with the sref and a->tag
 * (an error when it is still not stored). Takes a. */
void sched_store_heal(struct put_args *a);

/* Reads the state of ref (or its kept copy after a failed put) for sess and
 * answers with DONE_LOADED. SSMD_ENOMEM (nothing posted). */
int sched_store_load(sched *s, struct sess *sess, struct sref *ref);

/* Resolves the state ID or tag `ref` for job (open/fork) and answers with
 * DONE_OPENED. SSMD_ENOMEM (nothing posted). */
int sched_store_resolve(sched *s, struct job *job, const char *ref);

/* Finishes job on the store thread after every earlier put: fills the IDs of
 * its automatic checkpoints and, when job->reply_ref is set, puts that
 * state's ID into the reply (StateRefReply or GenerateReply), pointing tag
 * job->reply_tag at it first. */
void sched_store_reply(sched *s, struct job *job);

/* Reads the sources of a merge (job->merge set, checked) on the store
 * thread; interpolate and compose are computed and stored there (the job
 * is finished there unless it opens a session); replay and opens come back
 * as DONE_MERGED. */
void sched_store_merge(sched *s, struct job *job);

/* Records sessions (ID, base state, seed, label) as open in the library's
 * session table, or as closed, in one transaction on the store thread;
 * SSMD_ENOMEM (nothing posted). */
int sched_store_sessions(sched *s, struct sess *const *v, size_t n, int closed);
int sched_store_session(sched *s, struct sess *x, int closed);

/* Sets a MergeReply with n_tokens (and the session, when x is set). */
int reply_merge(struct job *j, uint64_t n_tokens, const struct sess *x);

/* Runs a library-only request (states, state, tag, untag, delete_state,
 * export_state, import_state) or finishes stats, on the store thread. */
void sched_store_request(sched *s, struct job *job);

/* 1 for operations that only touch the state library. */
int sched_op_is_store(const Ssmd__Request *req);

/* Free generate and score state (scheduler.c), merge sources
 * (scheduler_store.c). NULL is a no-op. */
void gen_free(struct gen *g);
void score_free(struct score *sc);
void merge_free(struct merge *m);

/* Monotonic seconds. */
double sched_now(void);

#endif
