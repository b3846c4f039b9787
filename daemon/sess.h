/*
 * sess.h — sessions and the stored states they build on.
 *
 * A session is a live cursor over the model: its state sits in a backend
 * slot (resident), or in host memory (a fork not yet placed), or only in the
 * state library (paged out), or nowhere when it has consumed nothing. It
 * keeps the token IDs consumed since its last stored state (its transcript),
 * so every state it stores carries the tokens that lead to it from its parent.
 *
 * An sref names a stored state that sessions build on. It exists from the
 * moment a put is queued for the store thread, before the ID is known; the
 * store thread fills in the ID at commit. Because the store thread runs its
 * tasks in order, any later task sees the ID of an earlier put. If a put
 * fails (disk full), the sref keeps the state and its transcript in memory,
 * so the session loses nothing and its next put reaches back over it; a
 * snapshot, close, shutdown or idle expiry with no progress since stores it
 * again, and the sref then becomes that stored state in place.
 *
 * Threads: sessions and the session table belong to the scheduler thread.
 * An sref's reference count is atomic; its other fields are written at
 * creation or by the store thread and read only by store-thread tasks.
 */
#ifndef SSMD_SESS_H
#define SSMD_SESS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ssm_state.h"
#include "ssmd_err.h"
#include "store.h"

struct job;

struct sref {
	atomic_int refs;
	char id[STORE_ID_SIZE];   /* "" until committed */
	int rc;                   /* the put's error, 0 while pending or on success */
	/* After a failed put: what it would have stored. */
	ssm_state *kept;
	int32_t *kept_tokens;     /* (n_kept) transcript since kept_parent */
	size_t n_kept;
	struct sref *kept_parent; /* reference held; NULL = zero state */
};

/* A new pending sref (one reference), or NULL when out of memory. */
struct sref *sref_alloc(void);

/* A new sref of an already committed state ID. */
struct sref *sref_committed(const char *id);

/* Takes / drops a reference; sref_put frees at zero. NULL is a no-op. */
struct sref *sref_get(struct sref *r);
void sref_put(struct sref *r);

/* "s-" + 32 hex digits + NUL */
#define SESS_ID_SIZE 35

struct sess {
	char id[SESS_ID_SIZE];
	uint64_t seed;            /* default sampling seed */
	char *label;              /* label of its states; owned, may be NULL */
	int slot;                 /* backend slot, -1 when not resident */
	int loading;              /* a page-in from the library is in flight */
	ssm_state *mem;           /* state waiting in host memory (owned), or NULL */
	uint64_t n_tokens;        /* tokens consumed since the zero state */
	uint64_t last_used;       /* scheduler tick of the last use, for LRU */
	double active_s;          /* monotonic seconds of its last request
				   * arriving or ending, for idle expiry */
	struct sref *base;        /* last stored state (reference), NULL = zero state */
	char from_id[STORE_ID_SIZE]; /* state it was opened from, "" otherwise */
	int32_t *trans;           /* (n_trans) tokens consumed since base */
	size_t n_trans, cap_trans;
	uint64_t since_ckpt;      /* tokens since the last automatic checkpoint */
	int closing;              /* a close waits for its snapshot's commit
				   * (DONE_CLOSED): no new requests */
	int scratch;              /* internal (a score of a stored state, a
				   * replay merge): never checkpointed, listed
				   * or kept across restarts; closed when its
				   * one request ends */
	struct job *head, *tail;  /* its requests in arrival order; head runs */
};

/* A new session with a fresh random ID, nothing consumed, not resident.
 * label is copied (may be NULL). SSMD_ENOMEM. */
int sess_alloc(uint64_t seed, const char *label, struct sess **out);

/* Frees the session, its transcript, state and base reference. The caller
 * releases its slot and its jobs first. NULL is a no-op. */
void sess_free(struct sess *s);

/* Appends n tokens to the transcript. SSMD_ENOMEM. */
int sess_trans_push(struct sess *s, const int32_t *tokens, size_t n);

/* A session has unsaved progress when it consumed tokens since its base. */
static inline int sess_dirty(const struct sess *s)
{
	return s->n_trans > 0;
}

/* Queues a job on the session (it runs after the ones before it). This and
 * sess_job_pop() stamp active_s. */
void sess_job_push(struct sess *s, struct job *j);

/* Removes and returns the head job, or NULL. */
struct job *sess_job_pop(struct sess *s);

/* The open sessions, looked up by ID. Small linear table: lookups are rare
 * next to the model's work. */
struct sess_table {
	struct sess **v;
	size_t n, cap;
};

int sess_table_add(struct sess_table *t, struct sess *s);
struct sess *sess_table_find(const struct sess_table *t, const char *id);
/* Removes s (does not free it). */
void sess_table_remove(struct sess_table *t, struct sess *s);
/* The resident session least recently used that has no request queued or
 * running and is not loading, or NULL. */
struct sess *sess_table_lru_idle(const struct sess_table *t);
/* Frees the table array (not the sessions). */
void sess_table_fini(struct sess_table *t);

#endif
