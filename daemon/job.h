/*
 * job.h — one request on its way through the daemon, and the reply it builds.
 *
 * The server decodes a Request into a job and hands it to the scheduler (or,
 * for library-only operations, to the store thread). Whichever thread holds
 * the job last fills `reply` (its sub-messages and strings allocated from the
 * job's arena) and calls job_finish() exactly once, which packs the Reply,
 * hands the bytes to the reply callback and frees the job.
 *
 * Ownership: a job owns its request, its arena and every buffer in it; it
 * is owned by exactly one thread at a time (passed along queues).
 */
#ifndef SSMD_JOB_H
#define SSMD_JOB_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "ssmd_err.h"
#include "storeq.h"

/* Bump allocator for reply pieces; everything is freed at once. */
struct arena_blk;
struct arena {
	struct arena_blk *head;
};

/* n zeroed bytes (aligned for any type), or NULL when out of memory. */
void *arena_alloc(struct arena *a, size_t n);

/* Copy of s (not NULL), or NULL when out of memory. */
char *arena_strdup(struct arena *a, const char *s);

/* Copy of n bytes of s plus a NUL. */
char *arena_strndup(struct arena *a, const char *s, size_t n);

void arena_fini(struct arena *a);

/* Receives the packed Reply (borrowed for the call). Called once per job,
 * from the thread that finishes it; reply is NULL (len 0) only when not even
 * an error reply could be packed (out of memory): drop the request then. */
typedef void (*job_reply_fn)(void *arg, const void *reply, size_t len);

struct sess;
struct sref;
struct gen;
struct done_msg;

struct job {
	struct storeq_task task;   /* when queued on the store thread */
	Ssmd__Request *req;        /* owned; op fields are read-only */
	job_reply_fn reply_fn;
	void *reply_arg;
	struct arena arena;
	Ssmd__Reply reply;         /* result filled by the op */
	struct job *next;          /* link in whichever queue holds it */

	/* Scheduler bookkeeping. */
	struct sched *sched;       /* set by sched_submit() */
	atomic_size_t *waiting;    /* counter of requests not yet started that
				    * counts this one, or NULL */
	struct sess *sess;         /* the session it runs on, if any */
	int started;

	/* append (also score, and the replay of a merge): the tokens to
	 * consume and how many were. */
	int32_t *toks;
	size_t n_toks, n_done;
	/* append: checkpoint positions asked for inside it (offsets into toks,
	 * ascending, unique, in 1..n_toks) and the first not yet reached. */
	size_t *marks;
	size_t n_marks, next_mark;

	/* score: its buffers and results (scheduler.c). */
	struct score *score;
	/* merge: sources read by the store thread (scheduler_store.c). */
	struct merge *merge;

	/* generate: sampling state (scheduler.c). */
	struct gen *gen;

	/* Automatic checkpoints stored while the job ran: their IDs go into the
	 * reply once committed. */
	struct sref **ckpts;
	uint64_t *ckpt_tokens;     /* (n_ckpts) session n_tokens at each */
	size_t n_ckpts;

	/* Store-thread reply (sched_store_reply()): the state whose ID the
	 * reply carries (reference) and the tag to point at it (owned). */
	struct sref *reply_ref;
	char *reply_tag;
	void *free_after;          /* malloc'd reply payload (export bytes) */
	/* close with a snapshot: posted to the scheduler (DONE_CLOSED, rc of
	 * reply_ref) before the reply, which closes the session only once its
	 * state is stored (owned until posted). */
	struct done_msg *closed;
};

/* Makes a job owning req (taken even on failure). SSMD_ENOMEM. */
int job_alloc(Ssmd__Request *req, job_reply_fn fn, void *arg,
	      struct job **out);

/* Finishes the job: with code 0 the reply's result is sent as filled; with
 * an error the result is cleared and message set from fmt (or from
 * ssmd_errmsg() when fmt is NULL). Packs, calls the reply callback, frees the
 * job. Any thread. */
void job_finish(struct job *j, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* The job has started running (or is finishing): it no longer counts as
 * waiting. Idempotent. */
void job_unqueue(struct job *j);

/* Frees a job without replying (only for jobs never handed out). NULL ok. */
void job_free(struct job *j);

/* Remembers a checkpoint made while the job ran (takes a reference), with
 * the session's n_tokens at that checkpoint. SSMD_ENOMEM. */
int job_ckpt_add(struct job *j, struct sref *ref, uint64_t n_tokens);

/* Packs a reply that carries only an error, for requests that never became
 * jobs (unparsable bytes). *buf is malloc'd. */
int job_error_pack(const char *request_id, int code, const char *message,
		   void **buf, size_t *len);

#endif
