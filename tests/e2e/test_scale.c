/*
 * test_scale.c — many sessions on few slots, end to end (issue 4):
 *   - 200 sessions on a daemon with --slots 4, driven by 4 client threads
 *     round-robin: each session appends its own prompt, then generates
 *     greedily in 5 turns of 4 tokens. Sessions are paged out to the library
 *     and back all the time, and up to 4 share a batched decode step. Every
 *     session's 20 tokens equal those of the same session run alone (a
 *     daemon with a slot for every session, one session at a time);
 *   - the same workload with a SIGTERM in the middle (after half of the
 *     generate turns, with requests in flight): after the restart every
 *     session continues by its session ID (the library's session table)
 *     and its tokens equal the uninterrupted run's. A generate running at
 *     the SIGTERM ends early with its tokens so far, and requests refused
 *     while the daemon stops are sent again, so each session asks for
 *     exactly the tokens it still lacks;
 *   - at that SIGTERM one more session is in the middle of a long streamed
 *     generate (20,000 tokens): it ends early with finish "canceled" and
 *     the tokens so far, and after the restart the same session ID
 *     generates the rest, together equal to the 20,000 tokens run alone.
 *
 * Comparisons are exact (token IDs): on one backend a state paged out and
 * resumed continues bit-for-bit, and greedy decoding depends only on the
 * tokens consumed, so there is no tolerance to state.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/supplemental/util/platform.h>

#include "check.h"
#include "harness.h"

#define N_SESS 200
#define N_WORKERS 4
#define N_ROUNDS 5
#define ROUND_TOKENS 4
#define N_GEN (N_ROUNDS * ROUND_TOKENS)
#define PROMPT_MAX 8
/* While the daemon restarts, a refused request is sent again after
 * RETRY_MS, at most RETRY_MAX times (60 s: far beyond a restart). */
#define RETRY_MS 100
#define RETRY_MAX 600
/* The long generate: N_LONG tokens, compared with the same generate run
 * alone. The run cut by the SIGTERM asks for up to N_CUT tokens (the most a
 * daemon allows), ~20 s of generating, so the stop cuts it even when the
 * test's threads get no CPU for a while after its first tokens arrive (a
 * 20000-token request, ~0.4 s, once finished before the stop landed on a
 * busy 2-core machine); its first N_LONG tokens are what is compared. */
#define N_LONG 20000
#define N_LONG_ARG "20000"
#define N_CUT (1 << 20)
#define N_CUT_ARG "1048576"
static const int32_t long_prompt[] = {5, 6, 7};

/* One session of the workload: its prompt and the tokens it got. */
typedef struct sess_rec {
	ssmd_session s;
	int32_t prompt[PROMPT_MAX];
	size_t n_prompt;
	int32_t got[N_GEN];
	size_t n_got;
	uint64_t session_tokens;  /* n_tokens reported by its last generate */
} sess_rec;

typedef struct workload {
	e2e_daemon *d;
	sess_rec *recs;               /* (N_SESS) */
	int retry;                    /* resend requests refused during a
				       * restart */
	pthread_barrier_t prompts_in; /* every prompt appended */
	atomic_int gens;              /* generate replies received */
	atomic_int canceled;          /* of which ended by the SIGTERM */
	atomic_int resent;            /* requests sent again */
	atomic_int finished;          /* workers that returned */
} workload;

/* The long generate: its session, what it got, and whether it streams. */
typedef struct long_gen {
	e2e_daemon *d;
	char session[SSMD_ID_MAX];
	atomic_int streaming;         /* the first tokens arrived */
	atomic_int returned;          /* the generate returned */
	int rc;
	int finish;
	int32_t *got;                 /* (N_LONG) */
	size_t n_got;                 /* tokens in got */
	size_t n_cut;                 /* tokens the cut generate returned */
} long_gen;

typedef struct worker {
	workload *wl;
	int index;
	int rc;
	char what[160];               /* the failing step */
} worker;

/* Session i's prompt: 3..7 tokens below vocab, different for each i. */
static void prompt_make(sess_rec *r, int i, uint32_t vocab)
{
	r->n_prompt = 3 + (size_t)(i % 5);
	for (size_t j = 0; j < r->n_prompt; j++)
		r->prompt[j] = (int32_t)(((uint32_t)i * 131u + (uint32_t)j * 17u
					  + 1u) % vocab);
}

/* Refusals that a restart explains: the stopping daemon answers ECLOSED,
 * and a request sent while no daemon listens times out in the send. */
static int restart_refusal(int rc)
{
	return rc == SSMD_ECLOSED || rc == SSMD_ETIMEDOUT;
}

/* Greedy tokens until r holds want of them. A generate cut short by a
 * SIGTERM returns its tokens so far (finish canceled); the next request asks
 * for the rest. */
static int generate_until(workload *wl, ssmd_client *c, sess_rec *r,
			  size_t want)
{
	ssmd_generate_args a;
	ssmd_generation *g = NULL;
	int tries = 0, rc;

	while (r->n_got < want) {
		ssmd_generate_args_init(&a);
		a.max_tokens = (uint32_t)(want - r->n_got);
		rc = ssmd_generate(c, r->s.id, &a, NULL, NULL, &g);
		if (rc != SSMD_OK) {
			if (!wl->retry || !restart_refusal(rc) ||
			    ++tries > RETRY_MAX)
				return rc;
			atomic_fetch_add(&wl->resent, 1);
			nng_msleep(RETRY_MS);
			continue;
		}
		if (g->n_tokens > want - r->n_got) {
			ssmd_generation_free(g);
			return ssmd_err_set(SSMD_EPROTO, "generate gave more "
					    "tokens than max_tokens");
		}
		memcpy(r->got + r->n_got, g->tokens, g->n_tokens * sizeof *g->tokens);
		r->n_got += g->n_tokens;
		r->session_tokens = g->session_tokens;
		if (g->finish == SSMD_FINISH_CANCELED)
			atomic_fetch_add(&wl->canceled, 1);
		ssmd_generation_free(g);
		atomic_fetch_add(&wl->gens, 1);
	}
	return SSMD_OK;
}

/* Worker w owns sessions w, w + N_WORKERS, ...: opens them and appends
 * their prompts, waits for the others, then runs the generate turns
 * round-robin over its sessions. */
static void *worker_main(void *arg)
{
	worker *w = arg;
	workload *wl = w->wl;
	ssmd_client *c = NULL;
	int rc;

	if ((rc = e2e_connect(wl->d, 60000, &c)) != SSMD_OK) {
		snprintf(w->what, sizeof w->what, "connect");
		goto prompts_done;
	}
	for (int i = w->index; i < N_SESS && !rc; i += N_WORKERS) {
		sess_rec *r = &wl->recs[i];
		rc = ssmd_session_open(c, NULL, &r->s);
		if (!rc)
			rc = ssmd_append_tokens(c, r->s.id, r->prompt, r->n_prompt,
						NULL);
		if (rc)
			snprintf(w->what, sizeof w->what, "session %d: open and "
				 "append: %s", i, ssmd_errmsg());
	}
prompts_done:
	/* Every worker reaches the barrier, failed or not. */
	pthread_barrier_wait(&wl->prompts_in);
	for (int round = 0; round < N_ROUNDS && !rc; round++) {
		for (int i = w->index; i < N_SESS && !rc; i += N_WORKERS) {
			rc = generate_until(wl, c, &wl->recs[i],
					    (size_t)(round + 1) * ROUND_TOKENS);
			if (rc)
				snprintf(w->what, sizeof w->what, "session %d, "
					 "round %d: %s", i, round, ssmd_errmsg());
		}
	}
	w->rc = rc;
	ssmd_client_close(c);
	atomic_fetch_add(&wl->finished, 1);
	return NULL;
}

static void long_on_tokens(void *ctx, const int32_t *t, size_t n,
			   const char *text, size_t text_len)
{
	(void)t;
	(void)n;
	(void)text;
	(void)text_len;
	atomic_store(&((long_gen *)ctx)->streaming, 1);
}

/* One streamed generate of up to N_CUT tokens on lg->session; its first
 * N_LONG tokens go to lg->got. */
static void *long_main(void *arg)
{
	long_gen *lg = arg;
	ssmd_client *c = NULL;
	ssmd_generation *g = NULL;
	ssmd_generate_args a;

	if ((lg->rc = e2e_connect(lg->d, 0, &c)) == SSMD_OK) {
		ssmd_generate_args_init(&a);
		a.max_tokens = N_CUT;
		lg->rc = ssmd_generate(c, lg->session, &a, long_on_tokens, lg, &g);
	}
	if (lg->rc == SSMD_OK) {
		lg->n_cut = g->n_tokens;
		lg->n_got = g->n_tokens < N_LONG ? g->n_tokens : N_LONG;
		memcpy(lg->got, g->tokens, lg->n_got * sizeof *g->tokens);
		lg->finish = g->finish;
	}
	ssmd_generation_free(g);
	ssmd_client_close(c);
	atomic_store(&lg->returned, 1);
	return NULL;
}

/* Greedy tokens on session until got holds N_LONG (retrying refusals of a
 * daemon that is restarting). */
static int long_finish(const e2e_daemon *d, const char *session, int32_t *got,
		       size_t *n_got)
{
	ssmd_client *c = NULL;
	ssmd_generate_args a;
	int tries = 0, rc;

	if ((rc = e2e_connect(d, 0, &c)) != SSMD_OK)
		return rc;
	while (*n_got < N_LONG && rc == SSMD_OK) {
		ssmd_generation *g = NULL;
		ssmd_generate_args_init(&a);
		a.max_tokens = (uint32_t)(N_LONG - *n_got);
		rc = ssmd_generate(c, session, &a, NULL, NULL, &g);
		if (rc == SSMD_OK && g->n_tokens > N_LONG - *n_got) {
			rc = ssmd_err_set(SSMD_EPROTO, "generate gave more "
					  "tokens than max_tokens");
		} else if (rc == SSMD_OK) {
			memcpy(got + *n_got, g->tokens, g->n_tokens * sizeof *got);
			*n_got += g->n_tokens;
		} else if (restart_refusal(rc) && ++tries <= RETRY_MAX) {
			nng_msleep(RETRY_MS);
			rc = SSMD_OK;
		}
		ssmd_generation_free(g);
	}
	ssmd_client_close(c);
	return rc;
}

/* Opens the long generate's session with its prompt; its ID into id. */
static int long_open(const e2e_daemon *d, char id[SSMD_ID_MAX])
{
	ssmd_client *c = NULL;
	ssmd_session s;
	int rc;

	if ((rc = e2e_connect(d, 0, &c)) != SSMD_OK)
		return rc;
	rc = ssmd_session_open(c, NULL, &s);
	if (!rc)
		rc = ssmd_append_tokens(c, s.id, long_prompt,
					sizeof long_prompt / sizeof long_prompt[0],
					NULL);
	if (!rc)
		memcpy(id, s.id, SSMD_ID_MAX);
	ssmd_client_close(c);
	return rc;
}

/* Runs the workload on d (started) into recs; with stop_at > 0 the daemon
 * is stopped by SIGTERM once stop_at generate replies have arrived and lg's
 * long generate is streaming, and started again on the same library. */
static void workload_run(e2e_daemon *d, sess_rec *recs, int stop_at,
			 long_gen *lg)
{
	static workload wl;
	worker w[N_WORKERS];
	pthread_t th[N_WORKERS];

	memset(&wl, 0, sizeof wl);
	wl.d = d;
	wl.recs = recs;
	wl.retry = stop_at > 0;
	pthread_barrier_init(&wl.prompts_in, NULL, N_WORKERS);
	for (int i = 0; i < N_WORKERS; i++) {
		memset(&w[i], 0, sizeof w[i]);
		w[i].wl = &wl;
		w[i].index = i;
		pthread_create(&th[i], NULL, worker_main, &w[i]);
	}
	if (stop_at > 0) {
		pthread_t tl;
		int at;
		/* (all workers may end first, failing: their checks say why) */
		while ((at = atomic_load(&wl.gens)) < stop_at &&
		       atomic_load(&wl.finished) < N_WORKERS)
			nng_msleep(1);
		pthread_create(&tl, NULL, long_main, lg);
		while (!atomic_load(&lg->streaming) && !atomic_load(&lg->returned))
			nng_msleep(1);
		/* The workers keep sending while the daemon stops. */
		CHECK(e2e_daemon_stop(d) == 0, "daemon did not exit cleanly on "
		      "SIGTERM");
		CHECK(at < N_SESS * N_ROUNDS, "the stop came after the workload");
		CHECK(e2e_daemon_start(d) == 0, "daemon did not restart");
		pthread_join(tl, NULL);
		printf("restart after %d of %d generate turns; %d short "
		       "generates canceled by the stop, %d requests sent again; "
		       "the long generate stopped after %zu tokens\n", at,
		       N_SESS * N_ROUNDS, atomic_load(&wl.canceled),
		       atomic_load(&wl.resent), lg->n_cut);
		CHECK(lg->rc == SSMD_OK && lg->finish == SSMD_FINISH_CANCELED &&
		      lg->n_cut < N_CUT, "long generate at the SIGTERM: %s, "
		      "finish %s after %zu tokens", ssmd_strerror(lg->rc),
		      ssmd_finish_name(lg->finish), lg->n_cut);
	}
	for (int i = 0; i < N_WORKERS; i++) {
		pthread_join(th[i], NULL);
		CHECK(w[i].rc == SSMD_OK, "worker %d: %s (%s)", i, w[i].what,
		      ssmd_strerror(w[i].rc));
	}
	pthread_barrier_destroy(&wl.prompts_in);
}

/* Each session alone: one after another on a daemon with a slot for each,
 * so none is ever paged out or shares a decode step. */
static int reference_run(e2e_daemon *d, sess_rec *recs)
{
	static workload wl;
	ssmd_client *c = NULL;
	int rc;

	memset(&wl, 0, sizeof wl);
	if ((rc = e2e_connect(d, 0, &c)) != SSMD_OK)
		return rc;
	for (int i = 0; i < N_SESS && !rc; i++) {
		sess_rec *r = &recs[i];
		rc = ssmd_session_open(c, NULL, &r->s);
		if (!rc)
			rc = ssmd_append_tokens(c, r->s.id, r->prompt, r->n_prompt,
						NULL);
		for (int round = 0; round < N_ROUNDS && !rc; round++)
			rc = generate_until(&wl, c, r,
					    (size_t)(round + 1) * ROUND_TOKENS);
	}
	ssmd_client_close(c);
	return rc;
}

/* Every session of got has the reference's tokens and length. */
static void compare(const char *run, const sess_rec *got, const sess_rec *ref)
{
	int differ = 0, first = -1;

	for (int i = 0; i < N_SESS; i++) {
		int same = got[i].n_got == N_GEN && ref[i].n_got == N_GEN &&
			   memcmp(got[i].got, ref[i].got, sizeof got[i].got) == 0 &&
			   got[i].session_tokens == got[i].n_prompt + N_GEN;
		if (!same) {
			differ++;
			if (first < 0)
				first = i;
		}
	}
	CHECK(differ == 0, "%s: %d of %d sessions differ from running alone "
	      "(first: session %d)", run, differ, N_SESS, first);
}

/* The sessions of the workload opened paged-out states: evictions happened
 * (else the test would not test paging). */
static void check_paged(const e2e_daemon *d, const char *run)
{
	ssmd_client *c = NULL;
	ssmd_stats st;

	CHECK_RC(e2e_connect(d, 0, &c), SSMD_OK);
	if (!c)
		return;
	CHECK_RC(ssmd_stats_get(c, &st), SSMD_OK);
	CHECK(st.slots == 4 && st.evictions >= N_SESS,
	      "%s: %" PRIu64 " evictions on %u slots; the workload did not page",
	      run, st.evictions, st.slots);
	CHECK(st.sessions == N_SESS, "%s: %u sessions open, want %d", run,
	      st.sessions, N_SESS);
	ssmd_client_close(c);
}

int main(void)
{
	static sess_rec ref[N_SESS], rr[N_SESS], rs[N_SESS];
	static int32_t long_got[N_LONG], long_ref[N_LONG];
	static long_gen lg, ref_long = {.got = long_ref};
	e2e_daemon alone, d, dr;
	ssmd_client *c = NULL;
	ssmd_info info;

	if (!e2e_have_daemon()) {
		SKIP("ssmd or ssm-mkmodel not built");
		return check_summary("e2e_scale");
	}

	e2e_daemon_init(&alone, "alone", e2e_tiny_model());
	alone.extra[0] = "--slots";
	alone.extra[1] = "256";
	alone.extra[2] = "--max-generate-tokens";
	alone.extra[3] = N_LONG_ARG;
	if (e2e_daemon_start(&alone) != 0) {
		CHECK(0, "reference daemon did not start");
		return check_summary("e2e_scale");
	}
	CHECK_RC(e2e_connect(&alone, 0, &c), SSMD_OK);
	CHECK_RC(c ? ssmd_info_get(c, &info) : SSMD_ECLOSED, SSMD_OK);
	ssmd_client_close(c);
	if (check_failed)
		return check_summary("e2e_scale");
	for (int i = 0; i < N_SESS; i++) {
		prompt_make(&ref[i], i, info.vocab_size);
		rr[i] = rs[i] = ref[i];
	}
	CHECK_RC(reference_run(&alone, ref), SSMD_OK);
	/* The long generate alone. */
	CHECK_RC(long_open(&alone, ref_long.session), SSMD_OK);
	CHECK_RC(long_finish(&alone, ref_long.session, ref_long.got,
			     &ref_long.n_got), SSMD_OK);
	CHECK(e2e_daemon_stop(&alone) == 0, "reference daemon exit");

	/* 200 sessions round-robin on 4 slots. */
	e2e_daemon_init(&d, "rr", e2e_tiny_model());
	d.extra[0] = "--slots";
	d.extra[1] = "4";
	if (e2e_daemon_start(&d) == 0) {
		workload_run(&d, rr, 0, NULL);
		compare("round-robin on 4 slots", rr, ref);
		check_paged(&d, "round-robin");
		CHECK(e2e_daemon_stop(&d) == 0, "round-robin daemon exit");
	} else {
		CHECK(0, "round-robin daemon did not start");
	}

	/* The same with a SIGTERM and a restart halfway through the turns. */
	e2e_daemon_init(&dr, "restart", e2e_tiny_model());
	dr.extra[0] = "--slots";
	dr.extra[1] = "4";
	dr.extra[2] = "--max-generate-tokens";
	dr.extra[3] = N_CUT_ARG;
	if (e2e_daemon_start(&dr) == 0) {
		memset(&lg, 0, sizeof lg);
		lg.d = &dr;
		lg.got = long_got;
		CHECK_RC(long_open(&dr, lg.session), SSMD_OK);
		workload_run(&dr, rs, N_SESS * N_ROUNDS / 2, &lg);
		compare("restart in the middle", rs, ref);
		/* The cut generate continues by its session ID (to N_LONG
		 * tokens; a cut after more compares its first N_LONG). */
		CHECK_RC(long_finish(&dr, lg.session, lg.got, &lg.n_got), SSMD_OK);
		CHECK(lg.n_got == N_LONG && ref_long.n_got == N_LONG &&
		      memcmp(lg.got, ref_long.got, sizeof long_got) == 0,
		      "the long generate cut by the restart and finished after it "
		      "differs from running it alone");
		if (dr.pid)
			CHECK(e2e_daemon_stop(&dr) == 0, "restarted daemon exit");
	} else {
		CHECK(0, "restart daemon did not start");
	}
	return check_summary("e2e_scale");
}
