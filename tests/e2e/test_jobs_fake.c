/*
 * test_jobs_fake.c — ssmd_submit(), ssmd_result() and ssmd_result_status() of
 * libssmd-client
 * against a fake daemon: a PULL socket held by the test receives the pushed
 * jobs, and a REP socket in a thread answers result requests with scripted
 * replies. Checks that every job kind is pushed as the Request the blocking
 * call would send (envelope, operation, fields), that local refusals push
 * nothing, and that every kind of fetched reply converts into ssmd_reply —
 * including errors, unconvertible results and malformed replies (which
 * leave *out untouched) — and that ssmd_result_status() asks with wait =
 * false and reads running, done and malformed answers. Fast, no model:
 * suite unit (also under ASan).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/reqrep0/rep.h>

#include "check.h"
#include "fake_io.h"
#include "proto.h"
#include "ssmd.h"

/* The reply the fake sends to the next result request. */
enum script {
	R_SESSIONS,     /* fetched: open of 2 sessions */
	R_APPEND,       /* fetched: append with 2 checkpoints */
	R_GENERATE,     /* fetched: 3 tokens and their text */
	R_STATE,        /* fetched: a snapshot's state */
	R_MERGE,        /* fetched: a merge that opened a session */
	R_FAILED,       /* fetched: a request that failed with ENOENT */
	R_OTHER,        /* fetched: a stats result */
	R_UNKNOWN,      /* the result request itself fails: ENOENT */
	R_EMPTY,        /* fetched without a reply in it */
	R_LONG_ID,      /* fetched: a session ID longer than SSMD_ID_MAX */
	R_RUNNING,      /* status: fetched, running */
	R_DONE,         /* status: fetched, not running */
	R_NEITHER,      /* status: fetched without `running` */
	N_SCRIPT
};

typedef struct fake {
	nng_socket rep;
	char rid[N_SCRIPT][PROTO_MAX_ID_LEN + 1];    /* result.request_id */
	char client[N_SCRIPT][PROTO_MAX_ID_LEN + 1]; /* result.client_id */
	int wait[N_SCRIPT];                          /* result.wait, -1 absent */
	int n_seen;
} fake;

static void *fake_main(void *arg)
{
	fake *f = arg;

	for (int step = 0; step < N_SCRIPT; step++) {
		Ssmd__Reply outer = SSMD__REPLY__INIT, inner = SSMD__REPLY__INIT;
		Ssmd__ResultReply fetched = SSMD__RESULT_REPLY__INIT;
		Ssmd__SessionsReply sr = SSMD__SESSIONS_REPLY__INIT;
		Ssmd__SessionInfo s1 = SSMD__SESSION_INFO__INIT;
		Ssmd__SessionInfo s2 = SSMD__SESSION_INFO__INIT;
		Ssmd__SessionInfo *ss[2] = {&s1, &s2};
		Ssmd__AppendReply ar = SSMD__APPEND_REPLY__INIT;
		Ssmd__GenerateReply gr = SSMD__GENERATE_REPLY__INIT;
		Ssmd__StateRefReply st = SSMD__STATE_REF_REPLY__INIT;
		Ssmd__MergeReply mr = SSMD__MERGE_REPLY__INIT;
		Ssmd__StatsReply stats = SSMD__STATS_REPLY__INIT;
		static char *ck_ids[2] = {"ck-a", "ck-b"};
		static uint64_t ck_pos[2] = {8, 16};
		static int32_t toks[3] = {7, 8, 9};
		char long_id[100];
		Ssmd__Request *req = NULL;

		if (fake_recv_request(f->rep, &req) != 0)
			break;
		if (!req)
			continue;
		if (req->op_case == SSMD__REQUEST__OP_RESULT) {
			snprintf(f->rid[step], sizeof f->rid[0], "%s",
				 req->result->request_id ? req->result->request_id : "");
			snprintf(f->client[step], sizeof f->client[0], "%s",
				 req->result->client_id ? req->result->client_id : "");
			f->wait[step] = req->result->has_wait ? req->result->wait : -1;
		}
		f->n_seen++;
		outer.request_id = req->request_id;
		outer.has_code = 1;
		outer.result_case = SSMD__REPLY__RESULT_FETCHED;
		outer.fetched = &fetched;
		fetched.reply = &inner;
		inner.request_id = "job-1";
		inner.has_code = 1;
		s1.id = "s-one";
		s2.id = "s-two";
		s2.base_state = "base";
		s2.has_n_tokens = 1;
		s2.n_tokens = 5;
		switch ((enum script)step) {
		case R_SESSIONS:
			sr.n_sessions = 2;
			sr.sessions = ss;
			inner.result_case = SSMD__REPLY__RESULT_SESSIONS;
			inner.sessions = &sr;
			break;
		case R_APPEND:
			ar.has_appended = ar.has_session_tokens = 1;
			ar.appended = 20;
			ar.session_tokens = 25;
			ar.n_checkpoints = ar.n_checkpoint_tokens = 2;
			ar.checkpoints = ck_ids;
			ar.checkpoint_tokens = ck_pos;
			inner.result_case = SSMD__REPLY__RESULT_APPEND;
			inner.append = &ar;
			break;
		case R_GENERATE:
			gr.n_tokens = 3;
			gr.tokens = toks;
			gr.text = "xyz";
			gr.has_finish = 1;
			gr.finish = SSMD__FINISH_REASON__FINISH_LENGTH;
			gr.has_session_tokens = 1;
			gr.session_tokens = 30;
			inner.result_case = SSMD__REPLY__RESULT_GENERATE;
			inner.generate = &gr;
			break;
		case R_STATE:
			st.state_id = "state-1";
			st.has_n_tokens = 1;
			st.n_tokens = 25;
			inner.result_case = SSMD__REPLY__RESULT_STATE_REF;
			inner.state_ref = &st;
			break;
		case R_MERGE:
			mr.state_id = "merged";
			mr.has_n_tokens = 1;
			mr.n_tokens = 50;
			mr.session = &s2;
			inner.result_case = SSMD__REPLY__RESULT_MERGE;
			inner.merge = &mr;
			break;
		case R_FAILED:
			inner.code = SSMD_ENOENT;
			inner.message = "no open session 's-x'";
			break;
		case R_OTHER:
			inner.result_case = SSMD__REPLY__RESULT_STATS;
			inner.stats = &stats;
			break;
		case R_UNKNOWN:
			outer.code = SSMD_ENOENT;
			outer.message = "request 'job-9' is unknown";
			outer.result_case = SSMD__REPLY__RESULT__NOT_SET;
			break;
		case R_EMPTY:
		case R_NEITHER:
			fetched.reply = NULL;
			break;
		case R_RUNNING:
		case R_DONE:
			fetched.reply = NULL;
			fetched.has_running = 1;
			fetched.running = step == R_RUNNING;
			break;
		case R_LONG_ID:
			memset(long_id, 'a', sizeof long_id - 1);
			long_id[sizeof long_id - 1] = '\0';
			s1.id = long_id;
			sr.n_sessions = 2;
			sr.sessions = ss;
			inner.result_case = SSMD__REPLY__RESULT_SESSIONS;
			inner.sessions = &sr;
			break;
		default:
			break;
		}
		fake_send(f->rep, &outer.base);
		proto_request_free(req);
	}
	return NULL;
}

/* Receives the next pushed job (up to 5 s); NULL when none came. */
static Ssmd__Request *pulled(nng_socket pull)
{
	Ssmd__Request *req = NULL;

	fake_recv_request(pull, &req);
	return req;
}

static int all_hex(const char *s, size_t n)
{
	if (strlen(s) != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!strchr("0123456789abcdef", s[i]))
			return 0;
	return 1;
}

static void test_submit(ssmd_client *c, nng_socket pull)
{
	static const int32_t toks[4] = {1, 2, 3, 4};
	static const char *const sources[2] = {"a", "b"};
	const uint64_t seed = 42;
	char rid[SSMD_REQUEST_ID_MAX], rid2[SSMD_REQUEST_ID_MAX];
	char long_rid[SSMD_REQUEST_ID_MAX + 1];
	ssmd_open_args oa = {.from = "tag/x", .count = 2, .seed = &seed};
	ssmd_append_args aa = {.tokens = toks, .n_tokens = 4,
			       .checkpoint_every = 2};
	ssmd_generate_args ga;
	ssmd_merge_args ma = {.sources = sources, .n_sources = 2,
			      .mode = "replay", .tag = "m"};
	Ssmd__Request *r;

	/* open, with a fresh random request ID. */
	ssmd_job j = {.op = SSMD_OP_OPEN, .open = &oa};
	CHECK_RC(ssmd_submit(c, &j, rid), SSMD_OK);
	r = pulled(pull);
	CHECK(r && r->op_case == SSMD__REQUEST__OP_OPEN && r->version ==
	      PROTO_VERSION && strcmp(r->request_id, rid) == 0 &&
	      strcmp(r->client_id, ssmd_client_id(c)) == 0 &&
	      strcmp(r->open->from, "tag/x") == 0 && r->open->count == 2 &&
	      r->open->has_seed && r->open->seed == 42, "pushed open");
	CHECK(all_hex(rid, 32), "request ID %s is not 32 hex digits", rid);
	proto_request_free(r);
	CHECK_RC(ssmd_submit(c, &j, rid2), SSMD_OK);
	proto_request_free(pulled(pull));
	CHECK(strcmp(rid, rid2) != 0, "two jobs got one request ID");

	/* append, with the caller's request ID. */
	ssmd_job ja = {.op = SSMD_OP_APPEND, .request_id = "mine-1",
		       .session = "s-1", .append = &aa};
	CHECK_RC(ssmd_submit(c, &ja, rid), SSMD_OK);
	CHECK(strcmp(rid, "mine-1") == 0, "request ID %s, want mine-1", rid);
	r = pulled(pull);
	CHECK(r && r->op_case == SSMD__REQUEST__OP_APPEND &&
	      strcmp(r->request_id, "mine-1") == 0 &&
	      strcmp(r->append->session, "s-1") == 0 &&
	      r->append->n_tokens == 4 && r->append->tokens[3] == 4 &&
	      r->append->checkpoint_every == 2, "pushed append");
	proto_request_free(r);

	/* generate, streamed. */
	ssmd_generate_args_init(&ga);
	ga.max_tokens = 7;
	ssmd_job jg = {.op = SSMD_OP_GENERATE, .session = "s-1",
		       .generate = &ga, .stream = 1};
	CHECK_RC(ssmd_submit(c, &jg, rid), SSMD_OK);
	r = pulled(pull);
	CHECK(r && r->op_case == SSMD__REQUEST__OP_GENERATE &&
	      r->generate->max_tokens == 7 && r->generate->stream &&
	      !r->generate->has_temperature, "pushed generate");
	proto_request_free(r);

	/* snapshot and close with a tag; merge. */
	ssmd_job js = {.op = SSMD_OP_SNAPSHOT, .session = "s-1", .tag = "t",
		       .label = "l"};
	CHECK_RC(ssmd_submit(c, &js, rid), SSMD_OK);
	r = pulled(pull);
	CHECK(r && r->op_case == SSMD__REQUEST__OP_SNAPSHOT &&
	      strcmp(r->snapshot->tag, "t") == 0 &&
	      strcmp(r->snapshot->label, "l") == 0, "pushed snapshot");
	proto_request_free(r);
	ssmd_job jc = {.op = SSMD_OP_CLOSE, .session = "s-1", .snapshot = 1,
		       .tag = "t"};
	CHECK_RC(ssmd_submit(c, &jc, rid), SSMD_OK);
	r = pulled(pull);
	CHECK(r && r->op_case == SSMD__REQUEST__OP_CLOSE && r->close->snapshot &&
	      strcmp(r->close->tag, "t") == 0, "pushed close");
	proto_request_free(r);
	ssmd_job jm = {.op = SSMD_OP_MERGE, .merge = &ma};
	CHECK_RC(ssmd_submit(c, &jm, rid), SSMD_OK);
	r = pulled(pull);
	CHECK(r && r->op_case == SSMD__REQUEST__OP_MERGE &&
	      r->merge->n_sources == 2 && strcmp(r->merge->mode, "replay") == 0,
	      "pushed merge");
	proto_request_free(r);

	/* Local refusals push nothing. */
	memset(long_rid, 'x', SSMD_REQUEST_ID_MAX);
	long_rid[SSMD_REQUEST_ID_MAX] = '\0';
	ssmd_job bad[] = {
		{.op = 0},
		{.op = SSMD_OP_APPEND, .session = "s-1"},            /* no args */
		{.op = SSMD_OP_APPEND, .append = &aa},               /* no session */
		{.op = SSMD_OP_SNAPSHOT},
		{.op = SSMD_OP_MERGE},
		{.op = SSMD_OP_OPEN, .request_id = ""},
		{.op = SSMD_OP_OPEN, .request_id = long_rid},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK(ssmd_submit(c, &bad[i], rid) == SSMD_EINVAL && ssmd_errmsg()[0],
		      "bad job %zu not refused", i);
	CHECK_RC(ssmd_submit(c, NULL, rid), SSMD_EINVAL);
	nng_socket_set_ms(pull, NNG_OPT_RECVTIMEO, 200);
	r = pulled(pull);
	CHECK(r == NULL, "a refused job was pushed");
	proto_request_free(r);
}

static void test_result(ssmd_client *c, fake *f)
{
	ssmd_reply *r = NULL;

	CHECK_RC(ssmd_result(c, "job-1", NULL, &r), SSMD_OK);
	CHECK(r && r->code == 0 && r->kind == SSMD_REPLY_SESSIONS &&
	      r->n_sessions == 2 && strcmp(r->sessions[1].id, "s-two") == 0 &&
	      strcmp(r->sessions[1].base_state, "base") == 0 &&
	      r->sessions[1].n_tokens == 5 && strcmp(r->request_id, "job-1") == 0
	      && r->message && !r->message[0], "sessions reply");
	ssmd_reply_free(r);
	r = NULL;

	CHECK_RC(ssmd_result(c, "job-1", "other/client", &r), SSMD_OK);
	CHECK(r && r->kind == SSMD_REPLY_APPEND && r->append.n_appended == 20 &&
	      r->append.n_tokens == 25 && r->append.n_checkpoints == 2 &&
	      r->checkpoints && strcmp(r->checkpoints[1].id, "ck-b") == 0 &&
	      r->checkpoints[1].n_tokens == 16, "append reply");
	ssmd_reply_free(r);
	r = NULL;

	CHECK_RC(ssmd_result(c, "job-1", NULL, &r), SSMD_OK);
	CHECK(r && r->kind == SSMD_REPLY_GENERATE && r->generation &&
	      r->generation->n_tokens == 3 && r->generation->tokens[2] == 9 &&
	      strcmp(r->generation->text, "xyz") == 0 &&
	      r->generation->finish == SSMD_FINISH_LENGTH &&
	      r->generation->session_tokens == 30, "generate reply");
	ssmd_reply_free(r);
	r = NULL;

	CHECK_RC(ssmd_result(c, "job-1", NULL, &r), SSMD_OK);
	CHECK(r && r->kind == SSMD_REPLY_STATE &&
	      strcmp(r->state.id, "state-1") == 0 && r->state.n_tokens == 25,
	      "state reply");
	ssmd_reply_free(r);
	r = NULL;

	CHECK_RC(ssmd_result(c, "job-1", NULL, &r), SSMD_OK);
	CHECK(r && r->kind == SSMD_REPLY_MERGE && strcmp(r->state.id, "merged")
	      == 0 && r->n_sessions == 1 && strcmp(r->sessions[0].id, "s-two")
	      == 0, "merge reply");
	ssmd_reply_free(r);
	r = NULL;

	CHECK_RC(ssmd_result(c, "job-1", NULL, &r), SSMD_OK);
	CHECK(r && r->code == SSMD_ENOENT && r->kind == SSMD_REPLY_NONE &&
	      strstr(r->message, "s-x"), "failed request's reply");
	ssmd_reply_free(r);
	r = NULL;

	CHECK_RC(ssmd_result(c, "job-1", NULL, &r), SSMD_OK);
	CHECK(r && r->code == 0 && r->kind == SSMD_REPLY_OTHER, "stats reply");
	ssmd_reply_free(r);
	r = NULL;

	/* Failures leave *out alone. */
	CHECK_RC(ssmd_result(c, "job-9", NULL, &r), SSMD_ENOENT);
	CHECK(r == NULL && strstr(ssmd_errmsg(), "job-9"), "unknown request");
	CHECK_RC(ssmd_result(c, "job-1", NULL, &r), SSMD_EPROTO);
	CHECK(r == NULL, "empty fetched reply written");
	CHECK_RC(ssmd_result(c, "job-1", NULL, &r), SSMD_EPROTO);
	CHECK(r == NULL, "reply with an overlong ID written");
	CHECK_RC(ssmd_result(c, NULL, NULL, &r), SSMD_EINVAL);
	CHECK_RC(ssmd_result(c, "", NULL, &r), SSMD_EINVAL);

	/* ssmd_result_status(): asks without waiting, reads running or done */
	int done = -1;
	CHECK_RC(ssmd_result_status(c, "job-1", NULL, &done), SSMD_OK);
	CHECK(done == 0, "running job read as done %d", done);
	CHECK_RC(ssmd_result_status(c, "job-1", "other/client", &done), SSMD_OK);
	CHECK(done == 1, "finished job read as done %d", done);
	CHECK_RC(ssmd_result_status(c, "job-1", NULL, &done), SSMD_EPROTO);
	CHECK_RC(ssmd_result_status(c, "", NULL, &done), SSMD_EINVAL);
	CHECK(f->wait[0] == -1 && f->wait[R_RUNNING] == 0 && f->wait[R_DONE] == 0 &&
	      strcmp(f->client[R_DONE], "other/client") == 0,
	      "result requests: wait %d (result), %d, %d (status)", f->wait[0],
	      f->wait[R_RUNNING], f->wait[R_DONE]);

	CHECK(f->n_seen == N_SCRIPT, "fake saw %d result requests", f->n_seen);
	CHECK(strcmp(f->rid[0], "job-1") == 0 && f->client[0][0] == '\0' &&
	      strcmp(f->client[1], "other/client") == 0,
	      "result request fields: %s / %s", f->rid[0], f->client[1]);
	ssmd_reply_free(NULL);
}

int main(void)
{
	char dir[] = "/tmp/ssmd-jobs-fake.XXXXXX";
	char url[256], jobs[256], path[256];
	static fake f;
	ssmd_client_opts o;
	ssmd_client *c = NULL;
	nng_socket pull;
	pthread_t th;

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(url, sizeof url, "ipc://%s/fake.sock", dir);
	/* The client finds the jobs socket by the daemon's sibling rule. */
	snprintf(jobs, sizeof jobs, "ipc://%s/fake-jobs.sock", dir);
	CHECK_RC(ssmd_jobs_url(url, path, sizeof path), SSMD_OK);
	CHECK(strcmp(path, jobs) == 0, "jobs URL %s, want %s", path, jobs);
	CHECK_RC(ssmd_jobs_url("tcp://127.0.0.1:1", path, sizeof path),
		 SSMD_EINVAL);
	CHECK_RC(ssmd_jobs_url(url, path, 8), SSMD_ERANGE);

	if (nng_rep0_open(&f.rep) != 0 || nng_listen(f.rep, url, NULL, 0) != 0 ||
	    nng_pull0_open(&pull) != 0 || nng_listen(pull, jobs, NULL, 0) != 0) {
		fprintf(stderr, "cannot listen in %s\n", dir);
		return 1;
	}
	nng_socket_set_ms(pull, NNG_OPT_RECVTIMEO, 5000);
	nng_socket_set_ms(f.rep, NNG_OPT_RECVTIMEO, 10000);
	pthread_create(&th, NULL, fake_main, &f);

	ssmd_client_opts_init(&o);
	o.url = url;
	o.timeout_ms = 10000;
	CHECK_RC(ssmd_client_open(&o, &c), SSMD_OK);
	if (c) {
		test_submit(c, pull);
		test_result(c, &f);
		ssmd_client_close(c);
	}
	pthread_join(th, NULL);
	nng_close(pull);
	nng_close(f.rep);
	snprintf(path, sizeof path, "%s/fake.sock", dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/fake-jobs.sock", dir);
	unlink(path);
	rmdir(dir);
	return check_summary("jobs_fake");
}
