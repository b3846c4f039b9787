/*
 * sched_harness.h — drives the scheduler in-process for the daemon's tests
 * (test_sched, test_service) and bench_service, without sockets: each request is packed as it
 * would come from the network, decoded, wrapped in a job and handed to
 * sched_submit(); the packed reply comes back through a harness_box and is
 * unpacked here.
 *
 * Threads: replies are delivered on the scheduler's thread into a box; the
 * helpers that wait (harness_box_wait() and everything built on
 * harness_call()) block the calling test thread until the reply is there.
 *
 * Failures of the plumbing itself (packing, decoding, a refused submit where
 * the caller cannot handle one) abort the program: a test cannot go on
 * without its reply. Nothing here counts checks: check.h's counters belong
 * to each test program, so the callers CHECK what these helpers return.
 *
 * With SSMD_TEST_VERBOSE set, every reply with a non-zero code is printed to
 * stderr.
 */
#ifndef SSMD_TEST_SCHED_HARNESS_H
#define SSMD_TEST_SCHED_HARNESS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/config.h"
#include "daemon/scheduler.h"
#include "daemon/tok.h"
#include "proto.h"
#include "ssm.h"
#include "store.h"

/* Where one reply lands: filled once by the scheduler thread. */
struct harness_box {
	pthread_mutex_t m;
	pthread_cond_t c;
	int done;
	void *buf;  /* the packed reply (malloc), taken by harness_box_wait() */
	size_t len;
};

/* Makes b empty and ready for one reply. */
void harness_box_init(struct harness_box *b);

/* Sends q without waiting: fills in q's version and request ID (rid, or a
 * fresh "t<N>" when rid is NULL; q->request_id then points to a static
 * buffer valid until the next such call) and submits it. Returns
 * sched_submit()'s code; on SSMD_OK the reply arrives in *b, which must stay
 * alive until then. */
int harness_submit(sched *s, Ssmd__Request *q, const char *rid,
		   struct harness_box *b);

/* 1 once b holds its reply; does not block. Only before
 * harness_box_wait(). */
int harness_box_done(struct harness_box *b);

/* Blocks until b holds its reply and returns it unpacked (free with
 * harness_reply_free()). This finishes b: harness_box_init() makes it
 * ready for another request. */
Ssmd__Reply *harness_box_wait(struct harness_box *b);

/* harness_submit() with a fresh request ID, then harness_box_wait(); aborts
 * when the scheduler refuses the request. */
Ssmd__Reply *harness_call(sched *s, Ssmd__Request *q);

/* Frees a reply; NULL is a no-op. */
void harness_reply_free(Ssmd__Reply *r);

/* Opens one session, empty (from NULL) or from a state ID or tag, with the
 * given seed when has_seed. Returns its ID (malloc), or NULL when refused. */
char *harness_open(sched *s, const char *from, int has_seed, uint64_t seed);
/* A fork of session sid (its ID, malloc), or NULL when refused. */
char *harness_fork(sched *s, const char *sid);

/* Appends n tokens to session sid; returns the reply's code. */
int harness_append(sched *s, const char *sid, const int32_t *t, size_t n);

/* Generates up to max tokens at temperature temp (greedy when 0), with seed
 * when has_seed, else the session's own seed. Writes the tokens to out
 * (room for max) and their count to *n_out (0 on error); returns the reply's
 * code. */
int harness_generate(sched *s, const char *sid, uint32_t max, float temp,
		     int has_seed, uint64_t seed, int32_t *out, size_t *n_out);

/* Snapshots session sid (tag may be NULL); returns the state ID (malloc),
 * or NULL when refused. */
char *harness_snapshot(sched *s, const char *sid, const char *tag);

/* Closes session sid; returns the reply's code. */
int harness_close(sched *s, const char *sid);

/* The stats reply (free with harness_reply_free()). */
Ssmd__Reply *harness_stats(sched *s);

/* Starts a scheduler on the borrowed c, m, tok (may be NULL) and st, named
 * "test-model"; publishes events to publish when not NULL. Aborts on
 * failure. */
sched *harness_start(const cfg *c, const ssm_model *m, const tok_tokenizer *tok,
		     store *st, sched_publish_fn publish);

/* The backend the tests run on: "cpu", or "cuda" when SSMD_TEST_BACKEND
 * says so (on a GPU machine). */
const char *harness_backend_name(void);

/* States stored to fill a library up to its size cap. */
#define HARNESS_FILLERS_MAX 4096
struct harness_fillers {
	char id[HARNESS_FILLERS_MAX][STORE_ID_SIZE];
	size_t n;
	uint64_t rng;
};
/* Puts states of m into st until SSMD_ENOSPC: random floats when random
 * (drawn from f->rng), else zeros (which compress to almost nothing). Returns
 * the last code: SSMD_ENOSPC once the library is full. */
int harness_fill(struct harness_fillers *f, store *st, const ssm_model *m, int random);
/* Deletes every filler; the number of deletions that failed. */
int harness_unfill(struct harness_fillers *f, store *st);

/* A fresh one-slot backend ("cpu" or "cuda") of m, for references computed
 * in the test; aborts on failure. Close with ssm_backend_close(). */
ssm_backend *harness_backend_open(const ssm_model *m, const char *backend);

/* The engine alone, on a fresh one-slot backend: prefills prompt (n
 * tokens), then emits max tokens into out, token i sampled at index n + i
 * with (temp, seed) and fed back — what a session must reproduce. Aborts on
 * engine errors. */
void harness_reference_run(const ssm_model *m, const char *backend,
			   const int32_t *prompt, size_t n, uint32_t max,
			   float temp, uint64_t seed, int32_t *out);

/* Makes a random model with GPT-NeoX's tokenizer (vocab 50280, d_model 32,
 * 2 layers, seed 3) in dir with ssm-mkmodel (from SSMD_BUILD_ROOT) and loads
 * it and its tokenizer. shared is the shared fixtures folder; the tokenizer
 * is its ../models/gpt-neox-20b-tokenizer.json. Returns 0, SSMD_ENOENT when
 * the tool or the tokenizer is missing (the caller skips), or another code
 * when making or loading failed. On error nothing is returned. */
int harness_text_model(const char *shared, const char *dir, ssm_model **m,
		       tok_tokenizer **tok);

/* A scheduler of two slots on backend over harness_text_model()'s model
 * (made in tmp/textmodel), with its library in tmp/text.db; events go to
 * publish when not NULL. */
typedef struct harness_text {
	ssm_model *m;
	tok_tokenizer *tok;
	store *st;
	cfg c;
	sched *s;
} harness_text;

/* Starts t. Returns 0, or what harness_text_model() or store_open()
 * returned (SSMD_ENOENT: the caller skips); on error t holds nothing.
 * Stop with harness_text_stop(). */
int harness_text_start(harness_text *t, const char *shared, const char *tmp,
		       const char *backend, sched_publish_fn publish);
void harness_text_stop(harness_text *t);

#ifdef SSMD_TEST_CHECK_H
/* In a test file (check.h's counters are the file's own): whether
 * harness_text_start() returned rc = 0; a skip for SSMD_ENOENT, a failed
 * check for any other code. */
static inline int harness_text_ready(int rc)
{
	if (rc == SSMD_ENOENT) {
		SKIP("%s", ssmd_errmsg());
		return 0;
	}
	CHECK(rc == SSMD_OK,
	      "a model made by ssm-mkmodel loads with its tokenizer, beside a library (%s)",
	      rc ? ssmd_errmsg() : "ok");
	return rc == SSMD_OK;
}
#endif

#endif
