/*
 * test_jobs.c — the work queue and stream gaps, end to end (issue 4):
 *   - requests pushed with ssmd_submit() to the jobs endpoint ("append these
 *     tokens", then "snapshot with a tag", then "open from that tag") run in
 *     order and publish their complete replies as events under their request
 *     IDs; ssmd_result() fetches the same replies; the tagged state
 *     continues exactly like the same tokens appended through the request
 *     endpoint; pushing a finished request again republishes its result
 *     without running it twice;
 *   - bad jobs: an unknown session, a token outside the vocabulary, an
 *     unsupported protocol version and a request without operation each
 *     yield an error event with its code and a message; bytes that are not a
 *     request are dropped; the daemon keeps serving; local refusals of
 *     ssmd_submit();
 *   - job status: ssmd_result_status() answers unknown before a push and
 *     known once ssmd_submit_wait() returns, without waiting; a job queued
 *     behind a long append on its session is never done before it;
 *   - stream gaps: a subscriber with a one-message receive buffer that reads
 *     slowly during a long streamed generate misses events, sees the gap in
 *     the sequence numbers, and fetches the final result by request ID with
 *     ssmd_result(). Every event it did receive carries the reply's token at
 *     its position, and the result equals the same generate run
 *     synchronously on a fork.
 *
 * All comparisons are exact (token IDs, codes): greedy decoding on one
 * backend is deterministic.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/supplemental/util/platform.h>

#include "check.h"
#include "harness.h"
#include "proto.h"

/* How long to wait for one job's result event: far beyond the few
 * milliseconds these jobs take on the tiny model. */
#define EVENT_WAIT_MS 30000

/* A request ID unique to this run: prefix + 16 random hex digits. */
static void rid_make(char *out, size_t cap, const char *prefix)
{
	unsigned char b[8];

	e2e_random(b, sizeof b);
	snprintf(out, cap, "%s-%02x%02x%02x%02x%02x%02x%02x%02x", prefix, b[0],
		 b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
}

static void subscribe(nng_socket sub, const char *rid)
{
	nng_socket_set(sub, NNG_OPT_SUB_SUBSCRIBE, rid, strlen(rid) + 1);
}

/* Waits for the result event (the one carrying a Reply) of rid on sub;
 * stream events of rid are skipped. *out is freed with
 * ssmd__event__free_unpacked(). SSMD_ETIMEDOUT after timeout_ms. */
static int result_event_wait(nng_socket sub, const char *rid, int timeout_ms,
			     Ssmd__Event **out)
{
	size_t tl = strlen(rid) + 1;
	nng_time until = nng_clock() + (nng_time)timeout_ms;
	nng_msg *msg;
	Ssmd__Event *ev;

	while (nng_clock() < until) {
		if (nng_recvmsg(sub, &msg, 0) != 0)
			continue; /* receive timeout: look at the clock */
		if (nng_msg_len(msg) >= tl &&
		    memcmp(nng_msg_body(msg), rid, tl) == 0 &&
		    proto_event_parse(nng_msg_body(msg), nng_msg_len(msg),
				      &ev) == SSMD_OK) {
			if (ev->reply) {
				nng_msg_free(msg);
				*out = ev;
				return SSMD_OK;
			}
			ssmd__event__free_unpacked(ev, NULL);
		}
		nng_msg_free(msg);
	}
	return SSMD_ETIMEDOUT;
}

/* Opens a subscriber of d's events (recvbuf > 0: that receive buffer) and
 * makes sure it is connected: the daemon publishes only to subscribers
 * already there, so probe jobs (a snapshot of an unknown session) are
 * pushed until one's result event arrives. */
static int subscriber_open(const e2e_daemon *d, ssmd_client *c, int recvbuf,
			   nng_socket *out)
{
	nng_socket sub;
	int rc = SSMD_ETIMEDOUT;

	if (nng_sub0_open(&sub) != 0)
		return SSMD_EIO;
	if (recvbuf > 0)
		nng_socket_set_int(sub, NNG_OPT_RECVBUF, recvbuf);
	nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 50);
	nng_socket_set_size(sub, NNG_OPT_RECVMAXSZ, 0);
	if (nng_dial(sub, d->events, NULL, 0) != 0) {
		nng_close(sub);
		return SSMD_ECLOSED;
	}
	for (int i = 0; i < 50 && rc != SSMD_OK; i++) {
		char rid[64], got[SSMD_REQUEST_ID_MAX];
		ssmd_job j = {.op = SSMD_OP_SNAPSHOT, .request_id = rid,
			      .session = "s-00000000000000000000000000000000"};
		Ssmd__Event *ev;

		rid_make(rid, sizeof rid, "probe");
		subscribe(sub, rid);
		if ((rc = ssmd_submit(c, &j, got)) != SSMD_OK)
			break;
		if ((rc = result_event_wait(sub, rid, 200, &ev)) == SSMD_OK)
			ssmd__event__free_unpacked(ev, NULL);
		nng_socket_set(sub, NNG_OPT_SUB_UNSUBSCRIBE, rid, strlen(rid) + 1);
	}
	if (rc) {
		nng_close(sub);
		return rc;
	}
	*out = sub;
	return SSMD_OK;
}

/* Greedy continuation of n tokens from a fork of source (a state ID, tag or
 * live session); the source is unchanged. */
static int continuation(ssmd_client *c, const char *source, uint32_t n,
			ssmd_generation **out)
{
	ssmd_session f;
	ssmd_generate_args a;
	int rc;

	if ((rc = ssmd_session_fork(c, source, 1, NULL, &f)))
		return rc;
	ssmd_generate_args_init(&a);
	a.max_tokens = n;
	rc = ssmd_generate(c, f.id, &a, NULL, NULL, out);
	ssmd_session_close(c, f.id, 0, NULL, NULL, NULL);
	return rc;
}

static int same_tokens(const ssmd_generation *a, const ssmd_generation *b)
{
	return a && b && a->n_tokens == b->n_tokens &&
	       memcmp(a->tokens, b->tokens, a->n_tokens * sizeof *a->tokens) == 0;
}

/* Open, append, snapshot with a tag and open from the tag, as jobs. */
static void test_job_chain(const e2e_daemon *d, ssmd_client *c)
{
	int32_t toks[40];
	char r_append[64], r_snap[64], r_open[64];
	ssmd_session s, sync;
	ssmd_append_args aa = {.tokens = toks, .n_tokens = 40};
	ssmd_open_args oa = {.from = "jobs/chain"};
	Ssmd__Event *ev = NULL;
	ssmd_reply *rep = NULL;
	ssmd_state_list *l = NULL;
	ssmd_generation *g_job = NULL, *g_sync = NULL;
	ssmd_state_ref before, after;
	char state_id[SSMD_ID_MAX] = "";
	nng_socket sub;

	for (int i = 0; i < 40; i++)
		toks[i] = (i * 37 + 11) % 512;
	if (subscriber_open(d, c, 0, &sub) != SSMD_OK) {
		CHECK(0, "no subscription to the events endpoint");
		return;
	}
	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);
	rid_make(r_append, sizeof r_append, "append");
	rid_make(r_snap, sizeof r_snap, "snap");
	rid_make(r_open, sizeof r_open, "open");
	subscribe(sub, r_append);
	subscribe(sub, r_snap);
	subscribe(sub, r_open);

	/* Both pushed at once: the snapshot runs after the append because
	 * requests on one session run in arrival order. */
	ssmd_job ja = {.op = SSMD_OP_APPEND, .request_id = r_append,
		       .session = s.id, .append = &aa};
	ssmd_job js = {.op = SSMD_OP_SNAPSHOT, .request_id = r_snap,
		       .session = s.id, .tag = "jobs/chain"};
	char got_rid[SSMD_REQUEST_ID_MAX];
	CHECK_RC(ssmd_submit(c, &ja, got_rid), SSMD_OK);
	CHECK(strcmp(got_rid, r_append) == 0, "submit returned request ID %s, "
	      "want %s", got_rid, r_append);
	CHECK_RC(ssmd_submit(c, &js, got_rid), SSMD_OK);

	CHECK_RC(result_event_wait(sub, r_append, EVENT_WAIT_MS, &ev), SSMD_OK);
	if (ev) {
		CHECK(ev->done && ev->code == 0 && ev->reply->code == 0 &&
		      ev->reply->result_case == SSMD__REPLY__RESULT_APPEND &&
		      ev->reply->append->appended == 40 &&
		      strcmp(ev->reply->request_id, r_append) == 0,
		      "append job's event: code %u, result %d", ev->code,
		      (int)ev->reply->result_case);
		ssmd__event__free_unpacked(ev, NULL);
		ev = NULL;
	}
	CHECK_RC(result_event_wait(sub, r_snap, EVENT_WAIT_MS, &ev), SSMD_OK);
	if (ev) {
		const Ssmd__Reply *r = ev->reply;
		CHECK(ev->code == 0 && r->result_case ==
		      SSMD__REPLY__RESULT_STATE_REF && r->state_ref->n_tokens == 40
		      && r->state_ref->state_id && r->state_ref->state_id[0],
		      "snapshot job's event: code %u (%s)", ev->code,
		      r->message ? r->message : "");
		if (r->result_case == SSMD__REPLY__RESULT_STATE_REF &&
		    r->state_ref->state_id)
			snprintf(state_id, sizeof state_id, "%s",
				 r->state_ref->state_id);
		ssmd__event__free_unpacked(ev, NULL);
		ev = NULL;
	}

	/* The tag names the state the event announced. */
	CHECK_RC(ssmd_state_get(c, "jobs/chain", &l), SSMD_OK);
	CHECK(l && strcmp(l->states[0].id, state_id) == 0 &&
	      l->states[0].n_tokens == 40, "tag jobs/chain names %s, the event "
	      "%s", l ? l->states[0].id : "nothing", state_id);
	ssmd_state_list_free(l);

	/* result fetches the same replies. */
	CHECK_RC(ssmd_result(c, r_snap, NULL, &rep), SSMD_OK);
	CHECK(rep && rep->code == 0 && rep->kind == SSMD_REPLY_STATE &&
	      strcmp(rep->state.id, state_id) == 0 &&
	      strcmp(rep->request_id, r_snap) == 0,
	      "result of the snapshot job differs from its event");
	ssmd_reply_free(rep);
	rep = NULL;
	CHECK_RC(ssmd_result(c, r_append, ssmd_client_id(c), &rep), SSMD_OK);
	CHECK(rep && rep->code == 0 && rep->kind == SSMD_REPLY_APPEND &&
	      rep->append.n_appended == 40 && rep->append.n_tokens == 40,
	      "result of the append job");
	ssmd_reply_free(rep);
	rep = NULL;

	/* Open from the tag as a job. */
	ssmd_job jo = {.op = SSMD_OP_OPEN, .request_id = r_open, .open = &oa};
	CHECK_RC(ssmd_submit(c, &jo, got_rid), SSMD_OK);
	CHECK_RC(result_event_wait(sub, r_open, EVENT_WAIT_MS, &ev), SSMD_OK);
	if (ev) {
		CHECK(ev->code == 0 && ev->reply->result_case ==
		      SSMD__REPLY__RESULT_SESSIONS &&
		      ev->reply->sessions->n_sessions == 1 &&
		      ev->reply->sessions->sessions[0]->n_tokens == 40,
		      "open job's event: code %u", ev->code);
		ssmd__event__free_unpacked(ev, NULL);
		ev = NULL;
	}
	CHECK_RC(ssmd_result(c, r_open, NULL, &rep), SSMD_OK);
	CHECK(rep && rep->kind == SSMD_REPLY_SESSIONS && rep->n_sessions == 1 &&
	      rep->sessions[0].n_tokens == 40 &&
	      strcmp(rep->sessions[0].base_state, state_id) == 0,
	      "result of the open job");

	/* The state the jobs made continues like the same tokens appended
	 * through the request endpoint. */
	CHECK_RC(ssmd_session_open(c, NULL, &sync), SSMD_OK);
	CHECK_RC(ssmd_append_tokens(c, sync.id, toks, 40, NULL), SSMD_OK);
	CHECK_RC(continuation(c, rep && rep->n_sessions ? rep->sessions[0].id
			      : "jobs/chain", 12, &g_job), SSMD_OK);
	CHECK_RC(continuation(c, sync.id, 12, &g_sync), SSMD_OK);
	CHECK(same_tokens(g_job, g_sync), "the jobs' state continues unlike "
	      "the same tokens appended synchronously");
	ssmd_reply_free(rep);
	ssmd_generation_free(g_job);
	ssmd_generation_free(g_sync);

	/* Pushed again, a finished job republishes its result and does not
	 * run again: the session still holds 40 tokens. */
	CHECK_RC(ssmd_session_snapshot(c, s.id, NULL, NULL, &before), SSMD_OK);
	CHECK_RC(ssmd_submit(c, &ja, got_rid), SSMD_OK);
	CHECK_RC(result_event_wait(sub, r_append, EVENT_WAIT_MS, &ev), SSMD_OK);
	CHECK(ev && ev->code == 0 && ev->reply->result_case ==
	      SSMD__REPLY__RESULT_APPEND && ev->reply->append->appended == 40,
	      "a repeated job's result was not republished");
	if (ev)
		ssmd__event__free_unpacked(ev, NULL);
	CHECK_RC(ssmd_session_snapshot(c, s.id, NULL, NULL, &after), SSMD_OK);
	CHECK(before.n_tokens == 40 && after.n_tokens == 40, "a repeated job "
	      "ran again: %" PRIu64 " tokens, then %" PRIu64, before.n_tokens,
	      after.n_tokens);
	nng_close(sub);
}

/* ssmd_result_status() and ssmd_submit_wait(): a job is unknown before it
 * is pushed and known once ssmd_submit_wait() returns; a job queued behind
 * a long append on the same session is not done before that append is;
 * done once its result has come. */
static void test_job_status(ssmd_client *c)
{
	enum { N_LONG = 20000 };
	int32_t *toks = malloc(N_LONG * sizeof *toks);
	char r_long[64], r_short[64], got[SSMD_REQUEST_ID_MAX];
	ssmd_session s;
	ssmd_append_args al = {.tokens = toks, .n_tokens = N_LONG};
	ssmd_append_args as = {.tokens = toks, .n_tokens = 1};
	ssmd_reply *rep = NULL;
	int done = -1, done_long = -1;

	if (!toks) {
		CHECK(0, "out of memory");
		return;
	}
	for (int i = 0; i < N_LONG; i++)
		toks[i] = (i * 31 + 7) % 512;
	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);
	rid_make(r_long, sizeof r_long, "status-long");
	rid_make(r_short, sizeof r_short, "status-short");
	ssmd_job jl = {.op = SSMD_OP_APPEND, .request_id = r_long, .session = s.id,
		       .append = &al};
	ssmd_job js = {.op = SSMD_OP_APPEND, .request_id = r_short, .session = s.id,
		       .append = &as};
	CHECK_RC(ssmd_result_status(c, r_long, NULL, &done), SSMD_ENOENT);
	CHECK_RC(ssmd_submit(c, &jl, got), SSMD_OK);
	CHECK_RC(ssmd_submit(c, &js, got), SSMD_OK);
	CHECK_RC(ssmd_submit_wait(c, r_short), SSMD_OK);
	/* the short job runs after the long one: asked in this order, a done
	 * short job means a done long one */
	CHECK_RC(ssmd_result_status(c, r_short, NULL, &done), SSMD_OK);
	CHECK_RC(ssmd_result_status(c, r_long, NULL, &done_long), SSMD_OK);
	CHECK((done == 0 || done == 1) && (done_long == 0 || done_long == 1) &&
	      (!done || done_long),
	      "status: short job done %d, the long one before it %d", done, done_long);
	printf("job status right after submit_wait: short %s, long %s\n",
	       done ? "done" : "running", done_long ? "done" : "running");
	CHECK_RC(ssmd_result(c, r_short, NULL, &rep), SSMD_OK);
	CHECK(rep && rep->code == 0 && rep->kind == SSMD_REPLY_APPEND &&
	      rep->append.n_appended == 1 && rep->append.n_tokens == N_LONG + 1,
	      "the short job ran after the long one");
	ssmd_reply_free(rep);
	done = done_long = -1;
	CHECK_RC(ssmd_result_status(c, r_short, NULL, &done), SSMD_OK);
	CHECK_RC(ssmd_result_status(c, r_long, NULL, &done_long), SSMD_OK);
	CHECK(done == 1 && done_long == 1, "status after the result: %d, %d", done,
	      done_long);
	CHECK_RC(ssmd_result_status(c, "never-sent", NULL, &done), SSMD_ENOENT);
	CHECK_RC(ssmd_result_status(c, "", NULL, &done), SSMD_EINVAL);
	CHECK_RC(ssmd_session_close(c, s.id, 0, NULL, NULL, NULL), SSMD_OK);
	free(toks);
}

/* Pushes raw bytes to the jobs endpoint on a socket of its own. */
static int push_raw(const e2e_daemon *d, const void *buf, size_t len)
{
	char url[SSMD_URL_MAX];
	nng_socket push;
	int rv;

	if (ssmd_jobs_url(d->url, url, sizeof url) != SSMD_OK ||
	    nng_push0_open(&push) != 0)
		return SSMD_EIO;
	nng_socket_set_ms(push, NNG_OPT_SENDTIMEO, 5000);
	rv = nng_dial(push, url, NULL, 0);
	if (rv == 0)
		rv = nng_send(push, (void *)buf, len, 0);
	/* nng_close drops messages not yet delivered: wait for the daemon to
	 * take it (the send above only queued it). */
	nng_msleep(200);
	nng_close(push);
	return rv ? SSMD_EIO : SSMD_OK;
}

/* Pushes req (packed here) with raw framing. */
static int push_request(const e2e_daemon *d, const Ssmd__Request *req)
{
	size_t len = ssmd__request__get_packed_size(req);
	uint8_t *buf = malloc(len ? len : 1);
	int rc;

	if (!buf)
		return SSMD_ENOMEM;
	ssmd__request__pack(req, buf);
	rc = push_raw(d, buf, len);
	free(buf);
	return rc;
}

/* Waits for rid's result event and checks its code and message. */
static void expect_error_event(nng_socket sub, const char *rid, int code,
			       const char *what)
{
	Ssmd__Event *ev = NULL;

	CHECK_RC(result_event_wait(sub, rid, EVENT_WAIT_MS, &ev), SSMD_OK);
	if (!ev)
		return;
	CHECK(ev->done && (int)ev->code == code && (int)ev->reply->code == code
	      && ev->reply->message && ev->reply->message[0] &&
	      ev->reply->result_case == SSMD__REPLY__RESULT__NOT_SET,
	      "%s: event code %u (%s), want %d with a message", what, ev->code,
	      ev->reply->message ? ev->reply->message : "", code);
	ssmd__event__free_unpacked(ev, NULL);
}

static void test_job_errors(const e2e_daemon *d, ssmd_client *c)
{
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0x0f, 0x12, 0x80,
					  0x80, 0x80};
	char r_nosess[64], r_vocab[64], r_version[64], r_noop[64], r_after[64];
	char got[SSMD_REQUEST_ID_MAX];
	int32_t bad_tok[2] = {1, 0};
	ssmd_append_args aa = {.tokens = bad_tok, .n_tokens = 2};
	ssmd_session s;
	ssmd_reply *rep = NULL;
	ssmd_info info;
	nng_socket sub;

	if (subscriber_open(d, c, 0, &sub) != SSMD_OK) {
		CHECK(0, "no subscription to the events endpoint");
		return;
	}
	CHECK_RC(ssmd_info_get(c, &info), SSMD_OK);
	bad_tok[1] = (int32_t)info.vocab_size; /* one past the vocabulary */
	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);

	/* Jobs the daemon refuses when it runs them. */
	rid_make(r_nosess, sizeof r_nosess, "nosess");
	rid_make(r_vocab, sizeof r_vocab, "vocab");
	subscribe(sub, r_nosess);
	subscribe(sub, r_vocab);
	ssmd_job j1 = {.op = SSMD_OP_APPEND, .request_id = r_nosess,
		       .session = "s-0123456789abcdef0123456789abcdef",
		       .append = &aa};
	ssmd_job j2 = {.op = SSMD_OP_APPEND, .request_id = r_vocab,
		       .session = s.id, .append = &aa};
	CHECK_RC(ssmd_submit(c, &j1, got), SSMD_OK);
	CHECK_RC(ssmd_submit(c, &j2, got), SSMD_OK);
	expect_error_event(sub, r_nosess, SSMD_ENOENT, "unknown session");
	expect_error_event(sub, r_vocab, SSMD_EINVAL, "token outside the vocabulary");
	CHECK_RC(ssmd_result(c, r_nosess, NULL, &rep), SSMD_OK);
	CHECK(rep && rep->code == SSMD_ENOENT && rep->message[0] &&
	      rep->kind == SSMD_REPLY_NONE, "result of the failed job: code %d",
	      rep ? rep->code : -1);
	ssmd_reply_free(rep);

	/* Malformed requests that still carry a request ID. */
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__InfoRequest info_op = SSMD__INFO_REQUEST__INIT;
	rid_make(r_version, sizeof r_version, "version");
	rid_make(r_noop, sizeof r_noop, "noop");
	subscribe(sub, r_version);
	subscribe(sub, r_noop);
	req.has_version = 1;
	req.version = PROTO_VERSION + 98;
	req.request_id = r_version;
	req.client_id = "e2e-jobs";
	req.op_case = SSMD__REQUEST__OP_INFO;
	req.info = &info_op;
	CHECK_RC(push_request(d, &req), SSMD_OK);
	expect_error_event(sub, r_version, SSMD_EPROTO, "newer protocol version");
	req.version = PROTO_VERSION;
	req.request_id = r_noop;
	req.op_case = SSMD__REQUEST__OP__NOT_SET;
	req.info = NULL;
	CHECK_RC(push_request(d, &req), SSMD_OK);
	expect_error_event(sub, r_noop, SSMD_EPROTO, "no operation");

	/* Bytes that are no request at all: dropped (nothing to answer
	 * under); the daemon keeps serving both endpoints. */
	CHECK_RC(push_raw(d, garbage, sizeof garbage), SSMD_OK);
	CHECK_RC(ssmd_info_get(c, &info), SSMD_OK);
	rid_make(r_after, sizeof r_after, "after");
	subscribe(sub, r_after);
	bad_tok[1] = 2;
	ssmd_job j3 = {.op = SSMD_OP_APPEND, .request_id = r_after,
		       .session = s.id, .append = &aa};
	CHECK_RC(ssmd_submit(c, &j3, got), SSMD_OK);
	Ssmd__Event *ev = NULL;
	CHECK_RC(result_event_wait(sub, r_after, EVENT_WAIT_MS, &ev), SSMD_OK);
	CHECK(ev && ev->code == 0 && ev->reply->append->appended == 2,
	      "a job after the malformed ones failed");
	if (ev)
		ssmd__event__free_unpacked(ev, NULL);

	/* Refused locally: nothing is pushed. */
	ssmd_job bad = {.op = 99};
	CHECK_RC(ssmd_submit(c, &bad, got), SSMD_EINVAL);
	CHECK_RC(ssmd_submit(c, NULL, got), SSMD_EINVAL);
	ssmd_job noid = {.op = SSMD_OP_SNAPSHOT, .request_id = "",
			 .session = s.id};
	CHECK_RC(ssmd_submit(c, &noid, got), SSMD_EINVAL);
	ssmd_job nosess = {.op = SSMD_OP_GENERATE};
	CHECK_RC(ssmd_submit(c, &nosess, got), SSMD_EINVAL);
	CHECK_RC(ssmd_result(c, "never-sent", NULL, &rep), SSMD_ENOENT);
	nng_close(sub);
}

#define GAP_TOKENS 300

/* A slow subscriber misses stream events, detects the gap and fetches the
 * result by request ID. */
static void test_stream_gap(const e2e_daemon *d, ssmd_client *c)
{
	static const int32_t prompt[] = {3, 141, 59, 265, 358, 97, 93};
	char rid[64], got[SSMD_REQUEST_ID_MAX];
	int32_t seen_tok[GAP_TOKENS];
	int seen[GAP_TOKENS] = {0};
	uint64_t next = 0, missed = 0;
	int n_events = 0, order_ok = 1, stream_done = 0, last_seq = -1;
	ssmd_session s, f;
	ssmd_generate_args a;
	ssmd_generation *alone = NULL;
	ssmd_reply *rep = NULL;
	nng_socket sub;
	nng_msg *msg;

	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);
	CHECK_RC(ssmd_append_tokens(c, s.id, prompt, 7, NULL), SSMD_OK);
	/* The same generate on a copy, synchronously: the reference. */
	CHECK_RC(ssmd_session_fork(c, s.id, 1, NULL, &f), SSMD_OK);
	ssmd_generate_args_init(&a);
	a.max_tokens = GAP_TOKENS;
	CHECK_RC(ssmd_generate(c, f.id, &a, NULL, NULL, &alone), SSMD_OK);

	/* One message of receive buffer: nng drops what does not fit. */
	if (subscriber_open(d, c, 1, &sub) != SSMD_OK) {
		CHECK(0, "no subscription to the events endpoint");
		ssmd_generation_free(alone);
		return;
	}
	rid_make(rid, sizeof rid, "gap");
	subscribe(sub, rid);
	ssmd_job j = {.op = SSMD_OP_GENERATE, .request_id = rid,
		      .session = s.id, .generate = &a, .stream = 1};
	CHECK_RC(ssmd_submit(c, &j, got), SSMD_OK);

	/* Read one event every 10 ms (the daemon makes tokens much faster)
	 * until the stream's last event, or 2 s of silence once events came
	 * (the last one may be among those dropped). */
	for (int idle = 0; !stream_done &&
	     idle < (n_events ? 40 : EVENT_WAIT_MS / 50);) {
		Ssmd__Event *ev;
		if (nng_recvmsg(sub, &msg, 0) != 0) {
			idle++;
			continue;
		}
		idle = 0;
		if (proto_event_parse(nng_msg_body(msg), nng_msg_len(msg),
				      &ev) == SSMD_OK) {
			if (!ev->reply) { /* a stream event, not the job result */
				n_events++;
				if ((int64_t)ev->seq <= last_seq)
					order_ok = 0;
				last_seq = (int)ev->seq;
				if (ev->seq > next)
					missed += ev->seq - next;
				next = ev->seq + 1;
				if (ev->n_tokens == 1 && ev->seq < GAP_TOKENS) {
					seen[ev->seq] = 1;
					seen_tok[ev->seq] = ev->tokens[0];
				}
				stream_done = ev->done;
			}
			ssmd__event__free_unpacked(ev, NULL);
		}
		nng_msg_free(msg);
		nng_msleep(10);
	}
	CHECK(n_events > 0, "the slow subscriber received no stream event");
	CHECK(order_ok, "stream events out of order");
	CHECK(missed > 0 || !stream_done, "a one-message buffer read every "
	      "10 ms missed none of %d events: no gap to detect", GAP_TOKENS);
	printf("slow subscriber: %d events received, %" PRIu64 " missed\n",
	       n_events, missed);

	/* The gap is detected: fetch the final result by request ID. */
	CHECK_RC(ssmd_result(c, rid, NULL, &rep), SSMD_OK);
	if (rep && alone) {
		const ssmd_generation *g = rep->generation;
		int match = 1;
		CHECK(rep->code == 0 && rep->kind == SSMD_REPLY_GENERATE && g &&
		      g->n_tokens == GAP_TOKENS, "fetched result: code %d, "
		      "kind %d", rep->code, rep->kind);
		CHECK(same_tokens(g, alone), "the streamed generate's result "
		      "differs from the same generate run synchronously");
		for (int i = 0; g && i < GAP_TOKENS && i < (int)g->n_tokens; i++)
			if (seen[i] && seen_tok[i] != g->tokens[i])
				match = 0;
		CHECK(match, "an event's token differs from the result's token "
		      "at its sequence number");
	}
	ssmd_reply_free(rep);
	ssmd_generation_free(alone);
	nng_close(sub);
}

int main(void)
{
	e2e_daemon d;
	ssmd_client *c = NULL;

	if (!e2e_have_daemon()) {
		SKIP("ssmd or ssm-mkmodel not built");
		return check_summary("e2e_jobs");
	}
	e2e_daemon_init(&d, "jobs", e2e_tiny_model());
	if (e2e_daemon_start(&d) != 0) {
		CHECK(0, "daemon did not start");
		return check_summary("e2e_jobs");
	}
	CHECK_RC(e2e_connect(&d, 0, &c), SSMD_OK);
	if (c) {
		test_job_chain(&d, c);
		test_job_errors(&d, c);
		test_job_status(c);
		test_stream_gap(&d, c);
		ssmd_client_close(c);
	}
	CHECK(e2e_daemon_stop(&d) == 0, "daemon did not exit cleanly");
	return check_summary("e2e_jobs");
}
