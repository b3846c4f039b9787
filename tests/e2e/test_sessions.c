/*
 * test_sessions.c — end to end through libssmd-client against a real ssmd:
 * resume is exact across a daemon restart (greedy and seeded sampling),
 * streaming delivers exactly the reply's tokens, forks reproduce with the
 * same seed and leave their parent alone, two clients work at once, a
 * resent request is not executed twice, and a model without a tokenizer
 * refuses text but serves tokens.
 *
 * Every comparison here is exact (token IDs): the daemon promises that a
 * state resumed from the library continues bit-for-bit as the session would
 * have, on the same backend, and the sampler's RNG is keyed by
 * (seed, token index), so there is no tolerance to state.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "check.h"
#include "harness.h"
#include "proto.h"

static const char prompt[] =
	"The lighthouse keeper climbed the spiral stairs every evening at "
	"dusk, trimmed the wick, wound the clockwork that turned the great "
	"lens, and wrote the weather in a leather book.";

#define N_GEN 50

static int same_tokens(const ssmd_generation *a, const ssmd_generation *b)
{
	return a && b && a->n_tokens == b->n_tokens &&
	       memcmp(a->tokens, b->tokens, a->n_tokens * sizeof *a->tokens) == 0;
}

/* Streaming sink: concatenates what the callback receives. */
typedef struct sink {
	int32_t tokens[4096];
	size_t n;
	char text[65536];
	size_t text_len;
	int calls;
} sink;

static void on_tokens(void *ctx, const int32_t *t, size_t n, const char *text,
		      size_t text_len)
{
	sink *s = ctx;

	for (size_t i = 0; i < n && s->n < 4096; i++)
		s->tokens[s->n++] = t[i];
	if (s->text_len + text_len < sizeof s->text) {
		memcpy(s->text + s->text_len, text, text_len);
		s->text_len += text_len;
	}
	s->calls++;
}

/* Opens a session, appends the prompt; returns 0 and the ID. */
static int session_with_prompt(ssmd_client *c, ssmd_session *s)
{
	int rc = ssmd_session_open(c, NULL, s);
	if (rc == SSMD_OK)
		rc = ssmd_append_text(c, s->id, prompt, NULL);
	return rc;
}

static ssmd_generate_args greedy(void)
{
	ssmd_generate_args a;
	ssmd_generate_args_init(&a);
	a.max_tokens = N_GEN;
	return a;
}

static const uint64_t seed_a = 1234;

static ssmd_generate_args sampled(const uint64_t *seed)
{
	ssmd_generate_args a;
	ssmd_generate_args_init(&a);
	a.max_tokens = N_GEN;
	a.temperature = 0.9f;
	a.top_k = 200;
	a.top_p = 0.95f;
	a.seed = seed;
	return a;
}

/* Resume across a restart, on the text model. */
static void test_resume(void)
{
	e2e_daemon d;
	ssmd_client *c = NULL;
	ssmd_session s1, s2, s3, r1, r2;
	ssmd_state_ref snap;
	ssmd_generation *g_greedy = NULL, *g_seeded = NULL;
	ssmd_generation *h_greedy = NULL, *h_seeded = NULL;
	ssmd_generate_args a;
	sink st;

	e2e_daemon_init(&d, "resume", e2e_text_model());
	if (e2e_daemon_start(&d) != 0) {
		CHECK(0, "daemon did not start");
		return;
	}
	CHECK_RC(e2e_connect(&d, 0, &c), SSMD_OK);
	if (!c)
		goto out;

	/* Uninterrupted: prompt then 50 greedy tokens, streamed. */
	CHECK_RC(session_with_prompt(c, &s1), SSMD_OK);
	a = greedy();
	memset(&st, 0, sizeof st);
	CHECK_RC(ssmd_generate(c, s1.id, &a, on_tokens, &st, &g_greedy), SSMD_OK);
	if (g_greedy) {
		CHECK(g_greedy->n_tokens == N_GEN, "greedy gave %zu tokens",
		      g_greedy->n_tokens);
		CHECK(g_greedy->finish == SSMD_FINISH_LENGTH, "finish %d",
		      g_greedy->finish);
		/* The stream must hand over exactly the reply's tokens and
		 * text, each once, in order. */
		CHECK(st.n == g_greedy->n_tokens &&
		      memcmp(st.tokens, g_greedy->tokens, st.n * 4) == 0,
		      "streamed %zu tokens differ from the reply's %zu", st.n,
		      g_greedy->n_tokens);
		CHECK(st.text_len == strlen(g_greedy->text) &&
		      memcmp(st.text, g_greedy->text, st.text_len) == 0,
		      "streamed text differs from the reply's");
		CHECK(st.calls >= 1, "callback never called");
		CHECK(strlen(g_greedy->text) > 0, "no text from a tokenizer model");
	}

	/* Uninterrupted, seeded sampling. */
	CHECK_RC(session_with_prompt(c, &s3), SSMD_OK);
	a = sampled(&seed_a);
	CHECK_RC(ssmd_generate(c, s3.id, &a, NULL, NULL, &g_seeded), SSMD_OK);
	CHECK(g_seeded && !same_tokens(g_seeded, g_greedy),
	      "temperature 0.9 sampling gave exactly the greedy tokens");

	/* The same prompt, snapshotted; then the daemon stops. */
	CHECK_RC(session_with_prompt(c, &s2), SSMD_OK);
	memset(&snap, 0, sizeof snap);
	CHECK_RC(ssmd_session_snapshot(c, s2.id, "e2e/resume", "prompt", &snap),
		 SSMD_OK);
	CHECK(snap.id[0] != '\0', "snapshot returned no ID");
	CHECK(snap.n_tokens > 0, "snapshot of %" PRIu64 " tokens", snap.n_tokens);
	ssmd_client_close(c);
	c = NULL;
	CHECK(e2e_daemon_stop(&d) == 0, "daemon did not exit cleanly on SIGTERM");

	/* A new daemon process on the same library. */
	if (e2e_daemon_start(&d) != 0) {
		CHECK(0, "daemon did not restart");
		goto out;
	}
	CHECK_RC(e2e_connect(&d, 0, &c), SSMD_OK);
	if (!c)
		goto out;
	/* SIGTERM stored every session with unsaved progress, findable by
	 * session; a session without progress since its snapshot got nothing
	 * new. */
	ssmd_states_filter f = {.session = s1.id};
	ssmd_state_list *l = NULL;
	CHECK_RC(ssmd_states_list(c, &f, &l), SSMD_OK);
	CHECK(l && l->n == 1 && g_greedy &&
	      l->states[0].n_tokens == g_greedy->session_tokens,
	      "session %s left %zu states at shutdown, want 1 of %" PRIu64
	      " tokens", s1.id, l ? l->n : 0,
	      g_greedy ? g_greedy->session_tokens : 0);
	ssmd_state_list_free(l);
	l = NULL;
	f.session = s2.id;
	CHECK_RC(ssmd_states_list(c, &f, &l), SSMD_OK);
	CHECK(l && l->n == 1 && strcmp(l->states[0].id, snap.id) == 0,
	      "unchanged session %s stored again at shutdown", s2.id);
	ssmd_state_list_free(l);

	ssmd_open_args oa = {.from = snap.id};
	CHECK_RC(ssmd_session_open(c, &oa, &r1), SSMD_OK);
	CHECK(r1.n_tokens == snap.n_tokens, "resumed at %" PRIu64 ", stored %" PRIu64,
	      r1.n_tokens, snap.n_tokens);
	CHECK(strcmp(r1.base_state, snap.id) == 0, "base_state %s, want %s",
	      r1.base_state, snap.id);
	a = greedy();
	CHECK_RC(ssmd_generate(c, r1.id, &a, NULL, NULL, &h_greedy), SSMD_OK);
	CHECK(same_tokens(g_greedy, h_greedy),
	      "greedy continuation after restart differs from the uninterrupted one");
	if (g_greedy && h_greedy)
		CHECK(strcmp(g_greedy->text, h_greedy->text) == 0,
		      "greedy text differs after restart");

	/* Resume by tag, seeded sampling. */
	oa.from = "e2e/resume";
	CHECK_RC(ssmd_session_open(c, &oa, &r2), SSMD_OK);
	a = sampled(&seed_a);
	CHECK_RC(ssmd_generate(c, r2.id, &a, NULL, NULL, &h_seeded), SSMD_OK);
	CHECK(same_tokens(g_seeded, h_seeded),
	      "seeded continuation after restart differs from the uninterrupted one");
out:
	ssmd_generation_free(g_greedy);
	ssmd_generation_free(g_seeded);
	ssmd_generation_free(h_greedy);
	ssmd_generation_free(h_seeded);
	ssmd_client_close(c);
	if (d.pid)
		CHECK(e2e_daemon_stop(&d) == 0, "daemon did not exit cleanly");
}

/* Forks of a stored state and of a live session, on the token model. */
static void test_forks(ssmd_client *c)
{
	static const int32_t toks[] = {5, 17, 300, 42, 7, 7, 128, 511, 0, 64, 3};
	ssmd_session parent, forks[4], other[2], live[2], check;
	ssmd_state_ref snap;
	ssmd_generation *g[4] = {0}, *o[2] = {0}, *l[2] = {0};
	ssmd_generation *pg = NULL, *ref = NULL;
	ssmd_generate_args a;
	const uint64_t fork_seed = 7, seeds[2] = {8, 9};

	CHECK_RC(ssmd_session_open(c, NULL, &parent), SSMD_OK);
	CHECK_RC(ssmd_append_tokens(c, parent.id, toks, 11, NULL), SSMD_OK);
	CHECK_RC(ssmd_session_snapshot(c, parent.id, NULL, NULL, &snap), SSMD_OK);

	ssmd_generate_args_init(&a);
	a.max_tokens = 20;
	a.temperature = 1.0f;

	/* 4 forks of the state with one seed: identical continuations. */
	CHECK_RC(ssmd_session_fork(c, snap.id, 4, &fork_seed, forks), SSMD_OK);
	for (int i = 0; i < 4; i++)
		CHECK_RC(ssmd_generate(c, forks[i].id, &a, NULL, NULL, &g[i]), SSMD_OK);
	for (int i = 1; i < 4; i++)
		CHECK(same_tokens(g[0], g[i]), "fork %d differs from fork 0", i);
	CHECK(strcmp(forks[0].id, forks[1].id) != 0, "forks share an ID");

	/* Other seeds: different continuations (20 tokens at temperature 1
	 * over 512 tokens coincide with negligible probability). */
	for (int i = 0; i < 2; i++) {
		CHECK_RC(ssmd_session_fork(c, snap.id, 1, &seeds[i], &other[i]), SSMD_OK);
		CHECK_RC(ssmd_generate(c, other[i].id, &a, NULL, NULL, &o[i]), SSMD_OK);
		CHECK(o[i] && !same_tokens(g[0], o[i]),
		      "seed %" PRIu64 " reproduced seed 7", seeds[i]);
	}
	CHECK(o[0] && o[1] && !same_tokens(o[0], o[1]), "seeds 8 and 9 agree");

	/* Forks of the live parent: same seed, same tokens. */
	CHECK_RC(ssmd_session_fork(c, parent.id, 2, &fork_seed, live), SSMD_OK);
	for (int i = 0; i < 2; i++) {
		CHECK(live[i].n_tokens == 11, "live fork at %" PRIu64 " tokens",
		      live[i].n_tokens);
		CHECK_RC(ssmd_generate(c, live[i].id, &a, NULL, NULL, &l[i]), SSMD_OK);
	}
	CHECK(same_tokens(l[0], l[1]), "live forks with one seed differ");
	CHECK(same_tokens(l[0], g[0]), "live fork differs from a fork of its snapshot");

	/* The parent is untouched by its forks: it continues exactly like a
	 * fresh resume of its snapshot. */
	ssmd_generate_args_init(&a);
	a.max_tokens = 10;
	CHECK_RC(ssmd_generate(c, parent.id, &a, NULL, NULL, &pg), SSMD_OK);
	CHECK(pg && pg->session_tokens == 21, "parent at %" PRIu64 " tokens, want 21",
	      pg ? pg->session_tokens : 0);
	ssmd_open_args oa = {.from = snap.id};
	CHECK_RC(ssmd_session_open(c, &oa, &check), SSMD_OK);
	CHECK_RC(ssmd_generate(c, check.id, &a, NULL, NULL, &ref), SSMD_OK);
	CHECK(same_tokens(pg, ref), "parent changed by its forks");

	for (int i = 0; i < 4; i++)
		ssmd_generation_free(g[i]);
	for (int i = 0; i < 2; i++) {
		ssmd_generation_free(o[i]);
		ssmd_generation_free(l[i]);
	}
	ssmd_generation_free(pg);
	ssmd_generation_free(ref);
}

/* Two clients in two threads, each on its own session. */
typedef struct worker {
	const e2e_daemon *d;
	int32_t first;
	ssmd_generation *g;
	sink streamed;         /* what the streaming callback received */
	int rc;
} worker;

/* A session on 64 tokens derived from first, then 40 greedy tokens,
 * streamed into st when st is not NULL. */
static int run_session(ssmd_client *c, int32_t first, sink *st,
		       ssmd_generation **g)
{
	int32_t toks[64];
	ssmd_session s;
	ssmd_generate_args a;
	int rc;

	for (int i = 0; i < 64; i++)
		toks[i] = (first + 37 * i) % 512;
	ssmd_generate_args_init(&a);
	a.max_tokens = 40;
	if ((rc = ssmd_session_open(c, NULL, &s)) ||
	    (rc = ssmd_append_tokens(c, s.id, toks, 64, NULL)))
		return rc;
	return ssmd_generate(c, s.id, &a, st ? on_tokens : NULL, st, g);
}

static void *worker_main(void *arg)
{
	worker *w = arg;
	ssmd_client *c;

	w->rc = e2e_connect(w->d, 0, &c);
	if (w->rc == SSMD_OK) {
		w->rc = run_session(c, w->first, &w->streamed, &w->g);
		/* while the other client may still stream (client.c keeps
		 * events sockets open for this) */
		ssmd_client_close(c);
	}
	return NULL;
}

/* Two clients in two threads, each streaming its own session at the same
 * time: each gets exactly its own tokens, as when run alone. */
static void test_two_clients(const e2e_daemon *d, ssmd_client *c)
{
	static worker w[2];
	ssmd_generation *alone[2] = {0};
	pthread_t th[2];

	memset(w, 0, sizeof w);
	w[0].d = w[1].d = d;
	w[0].first = 3;
	w[1].first = 250;
	for (int i = 0; i < 2; i++)
		CHECK_RC(run_session(c, w[i].first, NULL, &alone[i]), SSMD_OK);
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, worker_main, &w[i]);
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		CHECK(w[i].rc == SSMD_OK, "client %d: %s", i, ssmd_strerror(w[i].rc));
		CHECK(same_tokens(w[i].g, alone[i]),
		      "client %d: concurrent run differs from running alone", i);
		CHECK(w[i].g && w[i].streamed.n == w[i].g->n_tokens &&
		      memcmp(w[i].streamed.tokens, w[i].g->tokens,
			     w[i].streamed.n * sizeof(int32_t)) == 0,
		      "client %d: its stream differs from its reply", i);
		ssmd_generation_free(w[i].g);
		ssmd_generation_free(alone[i]);
	}
}

/* Sends one append with a fixed (client ID, request ID) and returns the
 * session total its reply reports, or -1. */
static int64_t raw_append(const e2e_daemon *d, const char *session,
			  const char *rid)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__AppendRequest op = SSMD__APPEND_REQUEST__INIT;
	int32_t toks[5] = {1, 2, 3, 4, 5};
	void *buf, *rep = NULL;
	size_t len, rlen;
	int64_t total = -1;

	req.has_version = 1;
	req.version = PROTO_VERSION;
	req.request_id = (char *)rid;
	req.client_id = "e2e-resend";
	req.op_case = SSMD__REQUEST__OP_APPEND;
	req.append = &op;
	op.session = (char *)session;
	op.n_tokens = 5;
	op.tokens = toks;
	if (proto_msg_pack(&req.base, &buf, &len) != SSMD_OK)
		return -1;
	if (e2e_raw_call(d, buf, len, 30000, &rep, &rlen) == SSMD_OK) {
		Ssmd__Reply *r = ssmd__reply__unpack(NULL, rlen, rep);
		if (r && r->code == 0 && r->result_case == SSMD__REPLY__RESULT_APPEND)
			total = (int64_t)r->append->session_tokens;
		else
			fprintf(stderr, "raw append: code %u %s\n", r ? r->code : 0,
				r && r->message ? r->message : "");
		ssmd__reply__free_unpacked(r, NULL);
	}
	free(buf);
	free(rep);
	return total;
}

static void test_resend(const e2e_daemon *d, ssmd_client *c)
{
	ssmd_session s;
	ssmd_append_result r;
	int32_t one = 9;
	char rid[96];

	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);
	snprintf(rid, sizeof rid, "resend-%s", s.id);
	CHECK(raw_append(d, s.id, rid) == 5, "first append");
	/* The same request again (as nng REQ resends it): answered from the
	 * first execution, not executed again. */
	CHECK(raw_append(d, s.id, rid) == 5, "resent append was executed again");
	CHECK_RC(ssmd_append_tokens(c, s.id, &one, 1, &r), SSMD_OK);
	CHECK(r.n_tokens == 6, "session holds %" PRIu64 " tokens, want 6",
	      r.n_tokens);

	/* A resend that arrives while the first execution is still running
	 * (a long generate, sent twice on two connections back to back) waits
	 * for it and gets the same reply. */
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__GenerateRequest op = SSMD__GENERATE_REQUEST__INIT;
	nng_socket sk[2];
	Ssmd__Reply *rep[2] = {NULL, NULL};
	void *buf;
	size_t len;

	snprintf(rid, sizeof rid, "resend-gen-%s", s.id);
	req.has_version = 1;
	req.version = PROTO_VERSION;
	req.request_id = rid;
	req.client_id = "e2e-resend";
	req.op_case = SSMD__REQUEST__OP_GENERATE;
	req.generate = &op;
	op.session = s.id;
	op.has_max_tokens = 1;
	op.max_tokens = 1000;
	if (proto_msg_pack(&req.base, &buf, &len) != SSMD_OK) {
		CHECK(0, "pack");
		return;
	}
	for (int i = 0; i < 2; i++) {
		CHECK(nng_req0_open(&sk[i]) == 0 &&
		      nng_socket_set_ms(sk[i], NNG_OPT_RECVTIMEO, 60000) == 0 &&
		      nng_dial(sk[i], d->url, NULL, 0) == 0 &&
		      nng_send(sk[i], buf, len, 0) == 0, "send copy %d", i);
	}
	for (int i = 0; i < 2; i++) {
		void *data;
		size_t n;
		if (nng_recv(sk[i], &data, &n, NNG_FLAG_ALLOC) == 0) {
			rep[i] = ssmd__reply__unpack(NULL, n, data);
			nng_free(data, n);
		}
		nng_close(sk[i]);
	}
	free(buf);
	CHECK(rep[0] && rep[1] && rep[0]->code == 0 && rep[1]->code == 0 &&
	      rep[0]->result_case == SSMD__REPLY__RESULT_GENERATE &&
	      rep[1]->result_case == SSMD__REPLY__RESULT_GENERATE,
	      "both copies of the generate answered");
	if (rep[0] && rep[1] && rep[0]->generate && rep[1]->generate) {
		const Ssmd__GenerateReply *a = rep[0]->generate, *b = rep[1]->generate;
		CHECK(a->n_tokens == 1000 && b->n_tokens == 1000 &&
		      memcmp(a->tokens, b->tokens, 1000 * sizeof *a->tokens) == 0 &&
		      a->session_tokens == b->session_tokens,
		      "the two copies got different replies");
	}
	ssmd__reply__free_unpacked(rep[0], NULL);
	ssmd__reply__free_unpacked(rep[1], NULL);
	CHECK_RC(ssmd_append_tokens(c, s.id, &one, 1, &r), SSMD_OK);
	CHECK(r.n_tokens == 6 + 1000 + 1, "session holds %" PRIu64 " tokens, "
	      "want %d: the generate ran twice", r.n_tokens, 6 + 1000 + 1);
}

static void test_no_tokenizer(ssmd_client *c)
{
	ssmd_session s;
	ssmd_info info;
	ssmd_append_result r;
	ssmd_generation *g = NULL;
	ssmd_generate_args a;
	const char *stop[] = {"x"};
	int32_t toks[3] = {10, 20, 30};

	CHECK_RC(ssmd_info_get(c, &info), SSMD_OK);
	CHECK(!info.has_tokenizer, "tiny-mamba reported a tokenizer");
	CHECK(info.vocab_size == 512, "vocab %u", info.vocab_size);
	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);
	CHECK_RC(ssmd_append_text(c, s.id, "hello", NULL), SSMD_ENOTOK);
	CHECK(strlen(ssmd_errmsg()) > 0, "no message with SSMD_ENOTOK");
	CHECK_RC(ssmd_append_tokens(c, s.id, toks, 3, &r), SSMD_OK);
	CHECK(r.n_tokens == 3 && r.n_appended == 3, "append gave %u/%" PRIu64,
	      r.n_appended, r.n_tokens);
	ssmd_generate_args_init(&a);
	a.max_tokens = 4;
	a.stop = stop;
	a.n_stop = 1;
	CHECK_RC(ssmd_generate(c, s.id, &a, NULL, NULL, &g), SSMD_ENOTOK);
	a.n_stop = 0;
	CHECK_RC(ssmd_generate(c, s.id, &a, NULL, NULL, &g), SSMD_OK);
	CHECK(g && g->n_tokens == 4 && g->text[0] == '\0',
	      "token-only generate: %zu tokens, text '%s'", g ? g->n_tokens : 0,
	      g ? g->text : "");
	ssmd_generation_free(g);
}

/* Automatic checkpoints every N consumed tokens, inside an append and a
 * generate, each stored with its transcript. */
static void test_checkpoints(void)
{
	e2e_daemon d;
	ssmd_client *c = NULL;
	ssmd_session s;
	ssmd_append_result r;
	ssmd_generation *g = NULL;
	ssmd_generate_args a;
	ssmd_state_list *l = NULL;
	int32_t toks[40];

	e2e_daemon_init(&d, "ckpt", e2e_tiny_model());
	d.extra[0] = "--checkpoint-every";
	d.extra[1] = "16";
	if (e2e_daemon_start(&d) != 0) {
		CHECK(0, "daemon with --checkpoint-every did not start");
		return;
	}
	CHECK_RC(e2e_connect(&d, 0, &c), SSMD_OK);
	if (!c)
		goto out;
	for (int i = 0; i < 40; i++)
		toks[i] = (i * 13) % 512;
	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);
	CHECK_RC(ssmd_append_tokens(c, s.id, toks, 40, &r), SSMD_OK);
	CHECK(r.n_checkpoints == 2, "40 tokens every 16: %u checkpoints, want 2",
	      r.n_checkpoints);
	ssmd_generate_args_init(&a);
	a.max_tokens = 10; /* crosses 48 */
	CHECK_RC(ssmd_generate(c, s.id, &a, NULL, NULL, &g), SSMD_OK);
	CHECK(g && g->n_checkpoints == 1, "generate to 50: %u checkpoints, want 1",
	      g ? g->n_checkpoints : 0);
	ssmd_generation_free(g);

	ssmd_states_filter f = {.session = s.id, .kind = "checkpoint"};
	CHECK_RC(ssmd_states_list(c, &f, &l), SSMD_OK);
	if (l) {
		/* Newest first: 48, 32, 16 tokens, each with the 16 tokens
		 * since its parent as transcript. */
		CHECK(l->n == 3, "%zu checkpoints listed, want 3", l->n);
		for (size_t i = 0; i < l->n && i < 3; i++) {
			CHECK(l->states[i].n_tokens == 48 - 16 * i,
			      "checkpoint %zu at %" PRIu64 " tokens", i,
			      l->states[i].n_tokens);
			CHECK(l->states[i].transcript_tokens == 16,
			      "checkpoint %zu has %" PRIu64 " transcript tokens", i,
			      l->states[i].transcript_tokens);
		}
		if (l->n == 3)
			CHECK(strcmp(l->states[0].parent, l->states[1].id) == 0 &&
			      strcmp(l->states[1].parent, l->states[2].id) == 0,
			      "checkpoints do not form a chain");
	}
	ssmd_state_list_free(l);
out:
	ssmd_client_close(c);
	CHECK(e2e_daemon_stop(&d) == 0, "daemon did not exit cleanly");
}

int main(void)
{
	e2e_daemon d;
	ssmd_client *c = NULL;

	if (!e2e_have_daemon()) {
		SKIP("ssmd or ssm-mkmodel not built");
		return check_summary("e2e_sessions");
	}
	test_resume();
	test_checkpoints();

	e2e_daemon_init(&d, "tiny", e2e_tiny_model());
	if (e2e_daemon_start(&d) != 0) {
		CHECK(0, "daemon on tiny-mamba did not start");
		return check_summary("e2e_sessions");
	}
	CHECK_RC(e2e_connect(&d, 0, &c), SSMD_OK);
	if (c) {
		test_no_tokenizer(c);
		test_forks(c);
		test_two_clients(&d, c);
		test_resend(&d, c);
		ssmd_client_close(c);
	}
	CHECK(e2e_daemon_stop(&d) == 0, "daemon did not exit cleanly");
	return check_summary("e2e_sessions");
}
