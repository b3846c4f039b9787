/*
 * test_client_fake.c — libssmd-client against a scripted fake daemon (a REP
 * and a PUB socket in a thread of this test), so that what a real daemon
 * rarely does can be forced: error replies, replies to another request,
 * garbage, silence, and event streams with gaps. Checks the request envelope
 * (version, fresh 128-bit request IDs, client ID), that errors carry the
 * daemon's message, that out-parameters stay untouched on failure, and that
 * a streaming callback sees every token exactly once, in order, whatever the
 * events did. Fast and self-contained: suite unit (also under ASan).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/util/platform.h>

#include "check.h"
#include "fake_io.h"
#include "proto.h"
#include "ssmd.h"

/* What the fake does with the next request. */
enum script {
	S_INFO,         /* a proper info reply */
	S_ERROR,        /* code ENOENT with a message */
	S_WRONG_ID,     /* a reply to another request */
	S_WRONG_RESULT, /* a stats result to an info request */
	S_GARBAGE,      /* bytes that are no Reply */
	S_SILENCE,      /* no reply at all */
	S_SESSIONS_1,   /* one session, whatever was asked */
	S_LONG_ID,      /* a session ID longer than SSMD_ID_MAX */
	S_STREAM,       /* events 0,1,2 then the reply */
	S_STREAM_GAP,   /* events 0 and 2 (1 lost) then the reply */
	S_STREAM_NONE,  /* no events, only the reply */
	S_STOP,         /* end the fake */
};

static const int32_t gen_tokens[5] = {11, 12, 13, 14, 15};
static const char gen_text[] = "abcde";

typedef struct fake {
	nng_socket rep, pub;
	enum script script[32];
	int n_script;
	char ids[32][PROTO_MAX_ID_LEN + 1]; /* request IDs seen */
	char client_ids[32][PROTO_MAX_ID_LEN + 1];
	uint32_t versions[32];
	int n_seen;
} fake;

/* Publishes one event: seq, and the tokens [from, to) with their letters. */
static void publish(fake *f, const char *rid, uint64_t seq, int from, int to,
		    int done)
{
	Ssmd__Event ev = SSMD__EVENT__INIT;
	char text[8];
	void *buf;
	size_t len;

	snprintf(text, sizeof text, "%.*s", to - from, gen_text + from);
	ev.request_id = (char *)rid;
	ev.has_seq = 1;
	ev.seq = seq;
	ev.n_tokens = (size_t)(to - from);
	ev.tokens = (int32_t *)gen_tokens + from;
	ev.text = text;
	ev.has_done = 1;
	ev.done = done;
	if (proto_event_frame(rid, &ev, &buf, &len) == SSMD_OK) {
		nng_send(f->pub, buf, len, 0);
		free(buf);
	}
}

static void *fake_main(void *arg)
{
	fake *f = arg;

	for (int step = 0; step < f->n_script; step++) {
		Ssmd__Reply rep = SSMD__REPLY__INIT;
		Ssmd__InfoReply info = SSMD__INFO_REPLY__INIT;
		Ssmd__StatsReply stats = SSMD__STATS_REPLY__INIT;
		Ssmd__SessionsReply sessions = SSMD__SESSIONS_REPLY__INIT;
		Ssmd__SessionInfo si = SSMD__SESSION_INFO__INIT, *sip = &si;
		Ssmd__GenerateReply gen = SSMD__GENERATE_REPLY__INIT;
		Ssmd__Request *req = NULL;
		char long_id[200];

		if (f->script[step] == S_STOP)
			break;
		if (fake_recv_request(f->rep, &req) != 0)
			break;
		if (!req)
			continue;
		if (f->n_seen < 32) {
			snprintf(f->ids[f->n_seen], sizeof f->ids[0], "%s",
				 req->request_id ? req->request_id : "");
			snprintf(f->client_ids[f->n_seen], sizeof f->client_ids[0],
				 "%s", req->client_id ? req->client_id : "");
			f->versions[f->n_seen] = req->version;
			f->n_seen++;
		}
		rep.request_id = req->request_id;
		rep.has_code = 1;
		switch (f->script[step]) {
		case S_INFO:
			info.version = "9.9.9";
			info.has_vocab_size = 1;
			info.vocab_size = 77;
			info.model = "fake-model";
			rep.result_case = SSMD__REPLY__RESULT_INFO;
			rep.info = &info;
			fake_send(f->rep, &rep.base);
			break;
		case S_ERROR:
			rep.code = SSMD_ENOENT;
			rep.message = "no session s-bad";
			fake_send(f->rep, &rep.base);
			break;
		case S_WRONG_ID:
			rep.request_id = "someone-else";
			rep.result_case = SSMD__REPLY__RESULT_INFO;
			rep.info = &info;
			fake_send(f->rep, &rep.base);
			break;
		case S_WRONG_RESULT:
			rep.result_case = SSMD__REPLY__RESULT_STATS;
			rep.stats = &stats;
			fake_send(f->rep, &rep.base);
			break;
		case S_GARBAGE:
			nng_send(f->rep, "\xff\xff\xff\xff garbage", 12, 0);
			break;
		case S_SILENCE:
			break;
		case S_SESSIONS_1:
		case S_LONG_ID:
			memset(long_id, 'x', sizeof long_id - 1);
			long_id[sizeof long_id - 1] = '\0';
			si.id = f->script[step] == S_LONG_ID ? long_id : "s-1";
			sessions.n_sessions = 1;
			sessions.sessions = &sip;
			rep.result_case = SSMD__REPLY__RESULT_SESSIONS;
			rep.sessions = &sessions;
			fake_send(f->rep, &rep.base);
			break;
		case S_STREAM:
		case S_STREAM_GAP:
		case S_STREAM_NONE:
			/* Give the subscription time to reach the publisher. */
			nng_msleep(100);
			if (f->script[step] == S_STREAM) {
				publish(f, req->request_id, 0, 0, 2, 0);
				publish(f, req->request_id, 1, 2, 3, 0);
				publish(f, req->request_id, 2, 3, 5, 1);
			} else if (f->script[step] == S_STREAM_GAP) {
				publish(f, req->request_id, 0, 0, 2, 0);
				publish(f, req->request_id, 2, 3, 5, 1);
			}
			nng_msleep(20);
			gen.n_tokens = 5;
			gen.tokens = (int32_t *)gen_tokens;
			gen.text = (char *)gen_text;
			gen.has_finish = 1;
			gen.finish = SSMD__FINISH_REASON__FINISH_LENGTH;
			gen.has_session_tokens = 1;
			gen.session_tokens = 105;
			rep.result_case = SSMD__REPLY__RESULT_GENERATE;
			rep.generate = &gen;
			fake_send(f->rep, &rep.base);
			break;
		case S_STOP:
			break;
		}
		proto_request_free(req);
	}
	return NULL;
}

/* What the streaming callback received. */
typedef struct got {
	int32_t tokens[16];
	size_t n;
	char text[16];
	size_t text_len;
	int calls;
} got;

static void on_tokens(void *ctx, const int32_t *t, size_t n, const char *text,
		      size_t text_len)
{
	got *g = ctx;

	for (size_t i = 0; i < n && g->n < 16; i++)
		g->tokens[g->n++] = t[i];
	if (g->text_len + text_len < sizeof g->text) {
		memcpy(g->text + g->text_len, text, text_len);
		g->text_len += text_len;
	}
	g->calls++;
}

static void check_stream(ssmd_client *c, const char *what, uint64_t missed_min)
{
	ssmd_generation *gen = NULL;
	got g;

	memset(&g, 0, sizeof g);
	CHECK_RC(ssmd_generate(c, "s-1", NULL, on_tokens, &g, &gen), SSMD_OK);
	CHECK(g.n == 5 && memcmp(g.tokens, gen_tokens, sizeof gen_tokens) == 0,
	      "%s: callback got %zu tokens, not exactly 11..15 once each", what, g.n);
	CHECK(g.text_len == 5 && memcmp(g.text, gen_text, 5) == 0,
	      "%s: callback text '%.*s'", what, (int)g.text_len, g.text);
	if (gen) {
		CHECK(gen->n_tokens == 5 && gen->session_tokens == 105 &&
		      strcmp(gen->text, gen_text) == 0 &&
		      gen->finish == SSMD_FINISH_LENGTH,
		      "%s: result not copied from the reply", what);
		CHECK(gen->events_missed >= missed_min, "%s: events_missed %" PRIu64,
		      what, gen->events_missed);
	}
	ssmd_generation_free(gen);
}

static void test_urls(void)
{
	char out[SSMD_URL_MAX], tiny[8];

	unsetenv("SSMD_EVENTS_URL");
	CHECK_RC(ssmd_events_url("ipc:///run/u/ssmd/ssmd.sock", out, sizeof out), SSMD_OK);
	CHECK(strcmp(out, "ipc:///run/u/ssmd/ssmd-events.sock") == 0, "got %s", out);
	CHECK_RC(ssmd_events_url("tcp://10.0.0.1:7400", out, sizeof out), SSMD_EINVAL);
	CHECK_RC(ssmd_events_url("inproc://x", out, sizeof out), SSMD_EINVAL);
	CHECK_RC(ssmd_events_url("ipc:///a/b.sock", tiny, sizeof tiny), SSMD_ERANGE);
	setenv("SSMD_EVENTS_URL", "tcp://h:1", 1);
	CHECK_RC(ssmd_events_url("ipc:///a/b.sock", out, sizeof out), SSMD_OK);
	CHECK(strcmp(out, "tcp://h:1") == 0, "got %s", out);
	unsetenv("SSMD_EVENTS_URL");

	setenv("SSMD_URL", "tcp://example:1", 1);
	CHECK_RC(ssmd_default_url(out, sizeof out), SSMD_OK);
	CHECK(strcmp(out, "tcp://example:1") == 0, "got %s", out);
	unsetenv("SSMD_URL");
	setenv("XDG_RUNTIME_DIR", "/run/user/7", 1);
	CHECK_RC(ssmd_default_url(out, sizeof out), SSMD_OK);
	CHECK(strcmp(out, "ipc:///run/user/7/ssmd/ssmd.sock") == 0, "got %s", out);
	unsetenv("XDG_RUNTIME_DIR");
	CHECK_RC(ssmd_default_url(out, sizeof out), SSMD_OK);
	CHECK(strcmp(out, "ipc://run/ssmd.sock") == 0, "got %s", out);
}

int main(void)
{
	char dir[] = "/tmp/ssmd-fake.XXXXXX";
	char url[128], events[128];
	fake f = {.script = {S_INFO, S_INFO, S_ERROR, S_WRONG_ID, S_WRONG_RESULT,
			     S_GARBAGE, S_SILENCE, S_SESSIONS_1, S_SESSIONS_1,
			     S_LONG_ID, S_STREAM, S_STREAM_GAP, S_STREAM_NONE,
			     S_STOP},
		  .n_script = 14};
	ssmd_client_opts o;
	ssmd_client *c = NULL;
	ssmd_info info;
	ssmd_session sess[2];
	pthread_t th;

	test_urls();

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(url, sizeof url, "ipc://%s/fake.sock", dir);
	snprintf(events, sizeof events, "ipc://%s/fake-events.sock", dir);
	if (nng_rep0_open(&f.rep) || nng_listen(f.rep, url, NULL, 0) ||
	    nng_pub0_open(&f.pub) || nng_listen(f.pub, events, NULL, 0)) {
		fprintf(stderr, "fake daemon: cannot listen\n");
		return 1;
	}
	pthread_create(&th, NULL, fake_main, &f);

	ssmd_client_opts_init(&o);
	o.url = url;
	o.events_url = events;
	o.timeout_ms = 500; /* the silent step must time out quickly */
	CHECK_RC(ssmd_client_open(&o, &c), SSMD_OK);
	if (!c)
		return check_summary("client_fake");

	/* Proper replies; every request gets a fresh ID. */
	memset(&info, 0, sizeof info);
	CHECK_RC(ssmd_info_get(c, &info), SSMD_OK);
	CHECK(info.vocab_size == 77 && strcmp(info.model, "fake-model") == 0 &&
	      strcmp(info.version, "9.9.9") == 0, "info not copied");
	CHECK_RC(ssmd_info_get(c, &info), SSMD_OK);

	/* The daemon's error: its code and its words. */
	memset(&info, 0xAB, sizeof info);
	CHECK_RC(ssmd_info_get(c, &info), SSMD_ENOENT);
	CHECK(strcmp(ssmd_errmsg(), "no session s-bad") == 0, "message '%s'",
	      ssmd_errmsg());
	CHECK(info.vocab_size == 0xABABABABu, "out-param written on failure");

	CHECK_RC(ssmd_info_get(c, &info), SSMD_EPROTO);   /* another request's */
	CHECK_RC(ssmd_info_get(c, &info), SSMD_EPROTO);   /* wrong result */
	CHECK_RC(ssmd_info_get(c, &info), SSMD_EPROTO);   /* garbage */
	CHECK_RC(ssmd_info_get(c, &info), SSMD_ETIMEDOUT); /* silence */

	/* Asked for 2 sessions, got 1: refused, not half-filled. */
	ssmd_open_args oa = {.count = 2};
	CHECK_RC(ssmd_session_open(c, &oa, sess), SSMD_EPROTO);
	CHECK_RC(ssmd_session_open(c, NULL, sess), SSMD_OK);
	CHECK(strcmp(sess[0].id, "s-1") == 0, "session '%s'", sess[0].id);
	memset(sess, 0xAB, sizeof sess);
	CHECK_RC(ssmd_session_open(c, NULL, sess), SSMD_EPROTO); /* ID too long */
	CHECK((unsigned char)sess[0].id[0] == 0xAB, "out-param written on failure");

	check_stream(c, "complete stream", 0);
	check_stream(c, "stream with a gap", 1);
	check_stream(c, "no events", 0);

	ssmd_client_close(c);
	pthread_join(th, NULL);

	/* The envelope of every request the fake saw. */
	CHECK(f.n_seen == 13, "fake saw %d requests", f.n_seen);
	for (int i = 0; i < f.n_seen; i++) {
		CHECK(f.versions[i] == PROTO_VERSION, "request %d: version %u", i,
		      f.versions[i]);
		CHECK(strlen(f.ids[i]) == 32 &&
		      strspn(f.ids[i], "0123456789abcdef") == 32,
		      "request %d: ID '%s' is not 128 bits of hex", i, f.ids[i]);
		CHECK(strcmp(f.client_ids[i], f.client_ids[0]) == 0 &&
		      f.client_ids[i][0], "request %d: client ID changed", i);
		for (int j = 0; j < i; j++)
			CHECK(strcmp(f.ids[i], f.ids[j]) != 0,
			      "requests %d and %d share an ID", j, i);
	}
	nng_close(f.rep);
	nng_close(f.pub);
	char path[160];
	snprintf(path, sizeof path, "%s/fake.sock", dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/fake-events.sock", dir);
	unlink(path);
	rmdir(dir);
	ssmd_client_close(NULL);
	ssmd_generation_free(NULL);
	ssmd_state_list_free(NULL);
	ssmd_free(NULL);
	return check_summary("client_fake");
}
