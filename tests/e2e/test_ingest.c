/*
 * test_ingest.c — long appends, end to end (issue 4):
 *   - a long ingest (200,000 tokens appended to one session in one request)
 *     runs while three other clients send short generates: every short reply
 *     arrives before the ingest's reply. The daemon advances appending
 *     sessions by bounded prefill chunks inside each scheduler step, so a
 *     long append never stalls the others; a daemon that ran the append to
 *     the end first would answer the short requests after it. Ordering is
 *     asserted, never time;
 *   - checkpoints inside a prefill (checkpoint_every and boundaries) equal
 *     the states of appends that stopped there and were snapshotted: the
 *     exported transcript and payload bytes are identical (the Python test
 *     compares continuations; this compares the stored bytes).
 *
 * Exact comparisons throughout (token IDs, bytes): on one backend a prefill
 * split at a checkpoint computes the same floats as one stopped there.
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

#define INGEST_TOKENS 200000
#define N_SHORT 3           /* clients sending short generates */
#define SHORT_TURNS 3       /* generates per short client */
#define SHORT_TOKENS 4

typedef struct ingest {
	const e2e_daemon *d;
	const char *session;
	atomic_int done;            /* the ingest's reply has arrived */
	int rc;
	ssmd_append_result res;
} ingest;

typedef struct shorty {
	const e2e_daemon *d;
	ingest *in;
	const char *session;
	int rc;
	int replies;                /* short replies received */
	int before;                 /* of which while the ingest was running */
	int tokens_ok;              /* each had SHORT_TOKENS tokens */
} shorty;

static void *ingest_main(void *arg)
{
	ingest *in = arg;
	int32_t *toks = malloc(INGEST_TOKENS * sizeof *toks);
	ssmd_client *c = NULL;

	in->rc = toks ? e2e_connect(in->d, 0, &c) : SSMD_ENOMEM;
	if (in->rc == SSMD_OK) {
		for (int i = 0; i < INGEST_TOKENS; i++)
			toks[i] = (int32_t)((i * 7919u + 13u) % 512u);
		in->rc = ssmd_append_tokens(c, in->session, toks, INGEST_TOKENS,
					    &in->res);
	}
	atomic_store(&in->done, 1);
	ssmd_client_close(c);
	free(toks);
	return NULL;
}

static void *short_main(void *arg)
{
	shorty *s = arg;
	ssmd_client *c = NULL;
	ssmd_generate_args a;

	s->tokens_ok = 1;
	if ((s->rc = e2e_connect(s->d, 0, &c)) != SSMD_OK)
		return NULL;
	ssmd_generate_args_init(&a);
	a.max_tokens = SHORT_TOKENS;
	for (int t = 0; t < SHORT_TURNS && !s->rc; t++) {
		ssmd_generation *g = NULL;
		s->rc = ssmd_generate(c, s->session, &a, NULL, NULL, &g);
		if (s->rc)
			break;
		/* Read right after the reply: 0 means the ingest has not
		 * been answered yet. */
		if (!atomic_load(&s->in->done))
			s->before++;
		s->replies++;
		if (g->n_tokens != SHORT_TOKENS)
			s->tokens_ok = 0;
		ssmd_generation_free(g);
	}
	ssmd_client_close(c);
	return NULL;
}

/* Short generates complete while a long ingest is in progress. */
static void test_ingest_fairness(const e2e_daemon *d, ssmd_client *c)
{
	static const int32_t prompt[] = {17, 4, 300, 21};
	static ingest in;
	static shorty sh[N_SHORT];
	ssmd_session big, small[N_SHORT];
	pthread_t ti, ts[N_SHORT];
	ssmd_stats st0, st;
	int started = 0;

	CHECK_RC(ssmd_session_open(c, NULL, &big), SSMD_OK);
	for (int i = 0; i < N_SHORT; i++) {
		CHECK_RC(ssmd_session_open(c, NULL, &small[i]), SSMD_OK);
		CHECK_RC(ssmd_append_tokens(c, small[i].id, prompt, 4, NULL),
			 SSMD_OK);
	}
	CHECK_RC(ssmd_stats_get(c, &st0), SSMD_OK);
	if (check_failed)
		return;

	memset(&in, 0, sizeof in);
	in.d = d;
	in.session = big.id;
	pthread_create(&ti, NULL, ingest_main, &in);
	/* The short requests start once the ingest is being consumed:
	 * the daemon's token counter moves and nothing else runs. */
	while (!atomic_load(&in.done)) {
		if (ssmd_stats_get(c, &st) != SSMD_OK)
			break;
		if (st.tokens_total > st0.tokens_total) {
			started = 1;
			break;
		}
		nng_msleep(1);
	}
	CHECK(started, "the ingest finished before it was seen running");
	for (int i = 0; i < N_SHORT; i++) {
		memset(&sh[i], 0, sizeof sh[i]);
		sh[i].d = d;
		sh[i].in = &in;
		sh[i].session = small[i].id;
		pthread_create(&ts[i], NULL, short_main, &sh[i]);
	}
	for (int i = 0; i < N_SHORT; i++) {
		pthread_join(ts[i], NULL);
		CHECK(sh[i].rc == SSMD_OK && sh[i].replies == SHORT_TURNS &&
		      sh[i].tokens_ok, "short client %d: %d replies (%s)", i,
		      sh[i].replies, ssmd_strerror(sh[i].rc));
		CHECK(sh[i].before == sh[i].replies, "short client %d: %d of "
		      "%d replies came after the ingest's", i,
		      sh[i].replies - sh[i].before, sh[i].replies);
	}
	pthread_join(ti, NULL);
	CHECK(in.rc == SSMD_OK && in.res.n_appended == INGEST_TOKENS &&
	      in.res.n_tokens == INGEST_TOKENS, "ingest: %s, %u tokens "
	      "appended", ssmd_strerror(in.rc), in.res.n_appended);
}

/* The transcript and payload bytes of an export (format in
 * statestore/store.h: magic 8, version 4, JSON length J 4, JSON, then
 * transcript, payload, and a hash over everything before it, which covers
 * the JSON's ID and time). Points *tail at them, *len their size. */
static int export_tail(const uint8_t *buf, size_t n, const uint8_t **tail,
		       size_t *len)
{
	uint32_t j;

	if (n < 16 + 8 || memcmp(buf, "SSMDSTX\n", 8) != 0)
		return SSMD_EFORMAT;
	j = (uint32_t)buf[12] | (uint32_t)buf[13] << 8 |
	    (uint32_t)buf[14] << 16 | (uint32_t)buf[15] << 24;
	if ((size_t)j > n - 16 - 8)
		return SSMD_EFORMAT;
	*tail = buf + 16 + j;
	*len = n - 16 - j - 8;
	return SSMD_OK;
}

/* 1 when two stored states export the same transcript and payload bytes. */
static int same_export(ssmd_client *c, const char *a, const char *b)
{
	void *ea = NULL, *eb = NULL;
	size_t na = 0, nb = 0, ta_len = 0, tb_len = 0;
	const uint8_t *ta = NULL, *tb = NULL;
	int same = 0;

	if (ssmd_state_export(c, a, &ea, &na) == SSMD_OK &&
	    ssmd_state_export(c, b, &eb, &nb) == SSMD_OK &&
	    export_tail(ea, na, &ta, &ta_len) == SSMD_OK &&
	    export_tail(eb, nb, &tb, &tb_len) == SSMD_OK)
		same = ta_len == tb_len && memcmp(ta, tb, ta_len) == 0;
	ssmd_free(ea);
	ssmd_free(eb);
	return same;
}

/* Checkpoints inside one append equal appends stopped there. */
static void test_prefill_checkpoints(ssmd_client *c)
{
	enum { N = 60, EVERY = 16 };
	static const uint32_t bounds[] = {5, 16, 37};
	/* The positions the protocol promises: every EVERY tokens (16, 32,
	 * 48) and each boundary, in order, 16 once. */
	static const uint64_t want[] = {5, 16, 32, 37, 48};
	const size_t n_want = sizeof want / sizeof want[0];
	int32_t toks[N];
	ssmd_session s;
	ssmd_append_args aa = {.tokens = toks, .n_tokens = N,
			       .checkpoint_every = EVERY, .boundaries = bounds,
			       .n_boundaries = 3};
	ssmd_append_result res;
	ssmd_checkpoint *ck = NULL;

	for (int i = 0; i < N; i++)
		toks[i] = (i * 101 + 7) % 512;
	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);
	CHECK_RC(ssmd_append(c, s.id, &aa, &res, &ck), SSMD_OK);
	if (!ck) {
		CHECK(0, "append returned no checkpoints");
		return;
	}
	CHECK(res.n_checkpoints == n_want, "%u checkpoints, want %zu",
	      res.n_checkpoints, n_want);
	for (size_t i = 0; i < res.n_checkpoints && i < n_want; i++) {
		ssmd_session ref;
		ssmd_state_ref snap;
		CHECK(ck[i].n_tokens == want[i], "checkpoint %zu at %" PRIu64
		      ", want %" PRIu64, i, ck[i].n_tokens, want[i]);
		/* Stop there and snapshot. */
		CHECK_RC(ssmd_session_open(c, NULL, &ref), SSMD_OK);
		CHECK_RC(ssmd_append_tokens(c, ref.id, toks, (size_t)want[i],
					    NULL), SSMD_OK);
		CHECK_RC(ssmd_session_snapshot(c, ref.id, NULL, NULL, &snap),
			 SSMD_OK);
		CHECK(same_export(c, ck[i].id, snap.id), "checkpoint at %" PRIu64
		      " exports other bytes than stopping there", want[i]);
		ssmd_session_close(c, ref.id, 0, NULL, NULL, NULL);
	}
	ssmd_free(ck);
}

int main(void)
{
	e2e_daemon d;
	ssmd_client *c = NULL;

	if (!e2e_have_daemon()) {
		SKIP("ssmd or ssm-mkmodel not built");
		return check_summary("e2e_ingest");
	}
	e2e_daemon_init(&d, "ingest", e2e_tiny_model());
	/* Small steps make the ingest take many scheduler steps (a lone
	 * session's chunk is the whole step). */
	d.extra[0] = "--prefill-chunk";
	d.extra[1] = "64";
	d.extra[2] = "--step-tokens";
	d.extra[3] = "64";
	if (e2e_daemon_start(&d) != 0) {
		CHECK(0, "daemon did not start");
		return check_summary("e2e_ingest");
	}
	CHECK_RC(e2e_connect(&d, 0, &c), SSMD_OK);
	if (c) {
		test_prefill_checkpoints(c);
		test_ingest_fairness(&d, c);
		ssmd_client_close(c);
	}
	CHECK(e2e_daemon_stop(&d) == 0, "daemon did not exit cleanly");
	return check_summary("e2e_ingest");
}
