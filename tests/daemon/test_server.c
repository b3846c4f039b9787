/*
 * test_server.c — ssmd as a process, spoken to with raw nng and packed
 * protobuf (no client library): malformed input never kills it, resent
 * request IDs are not executed twice, events stream with sequence numbers,
 * SIGTERM stores unsaved sessions and exits 0, and a restart on the same run
 * directory (stale socket files) comes back up.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>

#include "check.h"
#include "testutil.h"
#include "proto.h"

static char tmp[] = "/tmp/ssmd-test-server-XXXXXX";
static char listen_url[700], events_url[700], jobs_url[700];
static char log_path[600];

/* Starts ssmd; waits for its ready line in the log. Returns the pid. */
static pid_t daemon_start(const char *ssmd, const char *model)
{
	char store[600], run[600];
	pid_t pid;
	int fd;

	snprintf(store, sizeof(store), "%s/lib.db", tmp);
	snprintf(run, sizeof(run), "%s/run", tmp);
	snprintf(log_path, sizeof(log_path), "%s/ssmd.log", tmp);
	snprintf(listen_url, sizeof(listen_url), "ipc://%s/ssmd.sock", run);
	snprintf(events_url, sizeof(events_url), "ipc://%s/ssmd-events.sock", run);
	snprintf(jobs_url, sizeof(jobs_url), "ipc://%s/ssmd-jobs.sock", run);
	fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	pid = fork();
	if (pid == 0) {
		dup2(fd, 2);
		execl(ssmd, ssmd, "--model", model, "--store", store, "--run-dir", run,
		      "--slots", "2", "--max-message", "65536", "--log-level", "info",
		      "--backend", "cpu",
		      (char *)NULL);
		_exit(127);
	}
	close(fd);
	for (int i = 0; i < 600; i++) {
		char buf[8192] = "";
		FILE *f = fopen(log_path, "r");
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
		if (f)
			fclose(f);
		buf[n] = 0;
		if (strstr(buf, "ssmd ready"))
			return pid;
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return -1;
		usleep(50000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* Exit status after SIGTERM, or -1 when it does not exit within 20 s. */
static int daemon_stop(pid_t pid)
{
	int status;

	kill(pid, SIGTERM);
	for (int i = 0; i < 400; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		usleep(50000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

static nng_socket req_open(int timeout_ms)
{
	nng_socket s;

	if (nng_req0_open(&s) || nng_dial(s, listen_url, NULL, 0))
		abort();
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, timeout_ms);
	nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, 600000);
	return s;
}

/* Sends raw bytes, returns the unpacked reply or NULL (timeout). */
static Ssmd__Reply *raw_call(nng_socket s, const void *buf, size_t len)
{
	void *rbuf;
	size_t rlen;
	Ssmd__Reply *r;

	if (nng_send(s, (void *)buf, len, 0))
		return NULL;
	if (nng_recv(s, &rbuf, &rlen, NNG_FLAG_ALLOC))
		return NULL;
	r = ssmd__reply__unpack(NULL, rlen, rbuf);
	nng_free(rbuf, rlen);
	return r;
}

static Ssmd__Reply *call(nng_socket s, Ssmd__Request *q, const char *rid,
			 const char *client)
{
	void *buf;
	size_t len;
	Ssmd__Reply *r;

	q->has_version = 1;
	q->version = PROTO_VERSION;
	q->request_id = (char *)rid;
	q->client_id = (char *)client;
	if (proto_msg_pack(&q->base, &buf, &len))
		abort();
	r = raw_call(s, buf, len);
	free(buf);
	return r;
}

static unsigned code_of(Ssmd__Reply *r)
{
	return r ? r->code : 9999;
}

static char *open_session(nng_socket s, const char *rid)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__OpenRequest o = SSMD__OPEN_REQUEST__INIT;
	Ssmd__Reply *r;
	char *id = NULL;

	q.op_case = SSMD__REQUEST__OP_OPEN;
	q.open = &o;
	r = call(s, &q, rid, "test");
	if (r && !r->code)
		id = strdup(r->sessions->sessions[0]->id);
	if (r)
		ssmd__reply__free_unpacked(r, NULL);
	return id;
}

static Ssmd__Reply *append(nng_socket s, const char *sid, int32_t *t, size_t n,
			   const char *rid, const char *client)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__AppendRequest a = SSMD__APPEND_REQUEST__INIT;

	a.session = (char *)sid;
	a.tokens = t;
	a.n_tokens = n;
	q.op_case = SSMD__REQUEST__OP_APPEND;
	q.append = &a;
	return call(s, &q, rid, client);
}

/* Runs ssmd with args (NULL-terminated) to completion; its exit status. */
static int run_status(const char *ssmd, char **args)
{
	pid_t pid = fork();
	int status;

	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(ssmd, args);
		_exit(127);
	}
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int file_contains(const char *path, const char *needle)
{
	static char buf[1 << 16];
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;

	if (f)
		fclose(f);
	buf[n] = 0;
	return strstr(buf, needle) != NULL;
}

int main(void)
{
	const char *build = getenv("SSMD_BUILD_ROOT");
	const char *fixtures = getenv("SSMD_SHARED_FIXTURES");
	char ssmd[1024], model[1024];
	Ssmd__Reply *r;
	nng_socket s;
	pid_t pid;
	char *sid;
	int32_t toks[3] = {1, 2, 3};

	if (!build || !fixtures) {
		SKIP("SSMD_BUILD_ROOT / SSMD_SHARED_FIXTURES not set");
		return check_summary("server");
	}
	snprintf(ssmd, sizeof(ssmd), "%s/daemon/ssmd", build);
	snprintf(model, sizeof(model), "%s/tiny-mamba", fixtures);
	if (!mkdtemp(tmp))
		return 1;
	/* Usage errors exit 2, start-up failures 1, --help 0. */
	{
		char store[700], bad[700];
		snprintf(store, sizeof(store), "%s/x.db", tmp);
		snprintf(bad, sizeof(bad), "%s/no-such-model", tmp);
		char *no_model[] = {ssmd, "--store", store, NULL};
		char *bad_flag[] = {ssmd, "--model", model, "--store", store, "--slots", "zero", NULL};
		char *bad_dir[] = {ssmd, "--model", bad, "--store", store, NULL};
		char *help[] = {ssmd, "--help", NULL};
		CHECK(run_status(ssmd, no_model) == 2, "missing --model exits 2");
		CHECK(run_status(ssmd, bad_flag) == 2, "a bad flag value exits 2");
		CHECK(run_status(ssmd, bad_dir) == 1, "a missing model directory exits 1");
		CHECK(run_status(ssmd, help) == 0, "--help exits 0");
	}

	pid = daemon_start(ssmd, model);
	CHECK(pid > 0, "ssmd starts and prints its ready line");
	if (pid <= 0)
		return check_summary("server");
	{
		struct stat stt;
		CHECK(stat(listen_url + 6, &stt) == 0 && (stt.st_mode & 0777) == 0600,
		      "the ipc socket file has mode 0600");
	}
	s = req_open(20000);

	/* Random bytes, a truncated request, a bad version, no operation. */
	{
		unsigned char junk[300];
		srand((unsigned)time(NULL));
		for (size_t i = 0; i < sizeof(junk); i++)
			junk[i] = (unsigned char)rand();
		junk[0] = 0xff; /* field 31, wire type 7: never valid */
		r = raw_call(s, junk, sizeof(junk));
		CHECK(code_of(r) == SSMD_EFORMAT, "random bytes: %u", code_of(r));
		if (r)
			ssmd__reply__free_unpacked(r, NULL);

		Ssmd__Request q = SSMD__REQUEST__INIT;
		Ssmd__StateRequest st = SSMD__STATE_REQUEST__INIT;
		void *buf;
		size_t len;
		st.ref = "some-long-tag-name-so-that-truncation-cuts-a-string";
		q.op_case = SSMD__REQUEST__OP_STATE;
		q.state = &st;
		q.has_version = 1;
		q.version = 1;
		q.request_id = "trunc";
		proto_msg_pack(&q.base, &buf, &len);
		r = raw_call(s, buf, len - 5);
		CHECK(code_of(r) == SSMD_EFORMAT, "truncated protobuf: %u", code_of(r));
		if (r)
			ssmd__reply__free_unpacked(r, NULL);
		free(buf);

		q.version = 7;
		q.request_id = "v7";
		proto_msg_pack(&q.base, &buf, &len);
		r = raw_call(s, buf, len);
		free(buf);
		CHECK(code_of(r) == SSMD_EPROTO && r && strcmp(r->request_id, "v7") == 0,
		      "unknown version: %u, request ID echoed", code_of(r));
		if (r)
			ssmd__reply__free_unpacked(r, NULL);

		/* An operation from the future: field 35 (reserved range),
		 * length-delimited, empty. */
		Ssmd__Request e = SSMD__REQUEST__INIT;
		unsigned char fut[512];
		e.has_version = 1;
		e.version = 1;
		e.request_id = "future";
		len = ssmd__request__pack(&e, fut);
		/* key (35 << 3) | 2 = 282 as a varint: 0x9a 0x02; length 0 */
		fut[len++] = 0x9a;
		fut[len++] = 0x02;
		fut[len++] = 0x00;
		r = raw_call(s, fut, len);
		CHECK(code_of(r) == SSMD_EPROTO, "unknown operation: %u", code_of(r));
		if (r)
			ssmd__reply__free_unpacked(r, NULL);
	}

	/* Oversized messages are tested in tests/e2e/test_faults.c over a plain
	 * Unix socket: closing an nng socket in the middle of a large send can
	 * hang inside nng 1.5.2, which would hang this test, not the daemon. */

	/* Unknown IDs, then normal service. */
	r = append(s, "s-00000000000000000000000000000000", toks, 3, "unk", "test");
	CHECK(code_of(r) == SSMD_ENOENT, "unknown session: %u", code_of(r));
	if (r)
		ssmd__reply__free_unpacked(r, NULL);
	sid = open_session(s, "open1");
	CHECK(sid != NULL, "open after bad input");

	/* Idempotency: the same (client, request ID) twice runs once. */
	{
		Ssmd__Reply *r1 = append(s, sid, toks, 3, "dup", "client-a");
		Ssmd__Reply *r2 = append(s, sid, toks, 3, "dup", "client-a");
		CHECK(r1 && r2 && r1->code == 0 && r2->code == 0 &&
		      r1->append->session_tokens == 3 && r2->append->session_tokens == 3,
		      "a resent append is answered from its first execution");
		Ssmd__Reply *r3 = append(s, sid, toks, 1, "dup", "client-b");
		CHECK(r3 && r3->code == 0 && r3->append->session_tokens == 4,
		      "the same request ID from another client runs (%llu tokens)",
		      r3 && r3->append ? (unsigned long long)r3->append->session_tokens : 0ULL);
		if (r1)
			ssmd__reply__free_unpacked(r1, NULL);
		if (r2)
			ssmd__reply__free_unpacked(r2, NULL);
		if (r3)
			ssmd__reply__free_unpacked(r3, NULL);
	}

	/* Streamed events: consecutive seq, tokens equal the reply's. */
	{
		nng_socket sub;
		char topic[64];
		size_t tlen;
		Ssmd__Request q = SSMD__REQUEST__INIT;
		Ssmd__GenerateRequest g = SSMD__GENERATE_REQUEST__INIT;
		nng_sub0_open(&sub);
		proto_event_topic("gen1", topic, sizeof(topic), &tlen);
		nng_socket_set(sub, NNG_OPT_SUB_SUBSCRIBE, topic, tlen);
		nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 5000);
		nng_dial(sub, events_url, NULL, 0);
		usleep(200000); /* let the subscription reach the publisher */
		g.session = sid;
		g.has_max_tokens = 1;
		g.max_tokens = 10;
		g.has_stream = 1;
		g.stream = 1;
		q.op_case = SSMD__REQUEST__OP_GENERATE;
		q.generate = &g;
		r = call(s, &q, "gen1", "test");
		CHECK(code_of(r) == 0 && r->generate->n_tokens == 10, "generate 10");
		size_t got = 0;
		int ok = 1, done = 0;
		for (uint64_t seq = 0; !done; seq++) {
			void *buf;
			size_t len;
			Ssmd__Event *ev;
			if (nng_recv(sub, &buf, &len, NNG_FLAG_ALLOC)) {
				ok = 0;
				break;
			}
			if (proto_event_parse(buf, len, &ev) == 0) {
				ok &= ev->seq == seq;
				for (size_t k = 0; k < ev->n_tokens; k++, got++)
					ok &= r && r->generate && got < r->generate->n_tokens &&
					      ev->tokens[k] == r->generate->tokens[got];
				done = ev->done;
				ssmd__event__free_unpacked(ev, NULL);
			} else {
				ok = 0;
			}
			nng_free(buf, len);
		}
		CHECK(ok && got == 10, "events: seq 0.., 10 tokens equal the reply's");
		if (r)
			ssmd__reply__free_unpacked(r, NULL);
		nng_close(sub);
	}

	/* A subscriber that missed events fetches the final reply by request
	 * ID: the same tokens as the reply the requester got. */
	{
		Ssmd__Request q = SSMD__REQUEST__INIT;
		Ssmd__ResultRequest rq = SSMD__RESULT_REQUEST__INIT;
		Ssmd__GenerateRequest g = SSMD__GENERATE_REQUEST__INIT;
		Ssmd__Reply *first, *fetched;
		g.session = sid;
		g.has_max_tokens = 1;
		g.max_tokens = 5;
		q.op_case = SSMD__REQUEST__OP_GENERATE;
		q.generate = &g;
		first = call(s, &q, "gen-fetch", "writer");
		rq.request_id = "gen-fetch";
		rq.client_id = "writer";
		q.op_case = SSMD__REQUEST__OP_RESULT;
		q.result = &rq;
		fetched = call(s, &q, "fetch1", "reader");
		CHECK(code_of(first) == 0 && code_of(fetched) == 0 && fetched->fetched &&
		      fetched->fetched->reply && fetched->fetched->reply->generate &&
		      strcmp(fetched->fetched->reply->request_id, "gen-fetch") == 0 &&
		      fetched->fetched->reply->generate->n_tokens == 5 &&
		      memcmp(fetched->fetched->reply->generate->tokens,
			     first->generate->tokens, 5 * sizeof(int32_t)) == 0,
		      "result by request ID returns the generate's reply with its tokens");
		if (first)
			ssmd__reply__free_unpacked(first, NULL);
		if (fetched)
			ssmd__reply__free_unpacked(fetched, NULL);
		rq.client_id = NULL; /* the caller's own client ID: not the writer's */
		fetched = call(s, &q, "fetch2", "reader");
		CHECK(code_of(fetched) == SSMD_ENOENT,
		      "result under another client ID: ENOENT (%u)", code_of(fetched));
		if (fetched)
			ssmd__reply__free_unpacked(fetched, NULL);
		rq.request_id = "never-sent";
		rq.client_id = "writer";
		fetched = call(s, &q, "fetch3", "reader");
		CHECK(code_of(fetched) == SSMD_ENOENT, "result of an unknown request: ENOENT (%u)",
		      code_of(fetched));
		if (fetched)
			ssmd__reply__free_unpacked(fetched, NULL);
	}

	/* Fire-and-forget: requests pushed to the jobs endpoint publish their
	 * Reply as an event under their request ID. */
	{
		nng_socket push, sub;
		char topic[64];
		size_t tlen;
		void *buf;
		size_t len;
		Ssmd__Event *res[4] = {0};
		const char *rids[4] = {"job1", "job2", "jobbad", "job1"};
		nng_push0_open(&push);
		nng_dial(push, jobs_url, NULL, 0);
		nng_sub0_open(&sub);
		for (int i = 0; i < 3; i++) {
			proto_event_topic(rids[i], topic, sizeof(topic), &tlen);
			nng_socket_set(sub, NNG_OPT_SUB_SUBSCRIBE, topic, tlen);
		}
		nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 5000);
		nng_dial(sub, events_url, NULL, 0);
		usleep(200000);
		for (int i = 0; i < 4; i++) {
			Ssmd__Request q = SSMD__REQUEST__INIT;
			Ssmd__OpenRequest o = SSMD__OPEN_REQUEST__INIT;
			Ssmd__AppendRequest a = SSMD__APPEND_REQUEST__INIT;
			q.has_version = 1;
			q.version = i == 2 ? 0 : 1;
			q.request_id = (char *)rids[i];
			q.client_id = "pusher";
			if (i == 1) {
				a.session = "s-00000000000000000000000000000000";
				a.tokens = toks;
				a.n_tokens = 1;
				q.op_case = SSMD__REQUEST__OP_APPEND;
				q.append = &a;
			} else {
				q.op_case = SSMD__REQUEST__OP_OPEN;
				q.open = &o;
			}
			proto_msg_pack(&q.base, &buf, &len);
			nng_send(push, buf, len, 0);
			free(buf);
			/* One at a time, so the events arrive in this order. */
			void *ebuf;
			size_t elen;
			if (nng_recv(sub, &ebuf, &elen, NNG_FLAG_ALLOC) == 0) {
				proto_event_parse(ebuf, elen, &res[i]);
				nng_free(ebuf, elen);
			}
		}
		CHECK(res[0] && res[0]->reply && res[0]->done && res[0]->code == 0 &&
		      res[0]->reply->sessions && res[0]->reply->sessions->n_sessions == 1,
		      "a pushed open publishes its reply");
		CHECK(res[1] && res[1]->reply && res[1]->code == SSMD_ENOENT &&
		      res[1]->reply->code == SSMD_ENOENT,
		      "a pushed append to an unknown session publishes its error");
		CHECK(res[2] && res[2]->reply && res[2]->code == SSMD_EPROTO,
		      "a pushed request with a bad version publishes SSMD_EPROTO");
		CHECK(res[0] && res[3] && res[3]->reply && res[3]->reply->sessions &&
		      res[0]->reply->sessions &&
		      strcmp(res[3]->reply->sessions->sessions[0]->id,
			     res[0]->reply->sessions->sessions[0]->id) == 0,
		      "pushing the same request ID again republishes, not reruns");
		for (int i = 0; i < 4; i++)
			if (res[i])
				ssmd__event__free_unpacked(res[i], NULL);
		nng_close(push);
		nng_close(sub);
	}

	/* A client that vanishes mid-generate: the daemon finishes the work
	 * (the session keeps the tokens) and serves the next client. */
	{
		nng_socket gone = req_open(20000);
		Ssmd__Request q = SSMD__REQUEST__INIT;
		Ssmd__GenerateRequest g = SSMD__GENERATE_REQUEST__INIT;
		void *buf;
		size_t len;
		char *other = open_session(s, "open2");
		Ssmd__Reply *r1 = append(s, other, toks, 3, "app2", "test");
		if (r1)
			ssmd__reply__free_unpacked(r1, NULL);
		g.session = other;
		g.has_max_tokens = 1;
		g.max_tokens = 2000;
		g.has_stream = 1;
		g.stream = 1;
		q.op_case = SSMD__REQUEST__OP_GENERATE;
		q.generate = &g;
		q.has_version = 1;
		q.version = 1;
		q.request_id = "vanish";
		q.client_id = "gone";
		proto_msg_pack(&q.base, &buf, &len);
		nng_send(gone, buf, len, 0);
		free(buf);
		/* close only once the daemon has the request (nng drops what a
		 * socket still holds when it closes): `result` without waiting
		 * answers ENOENT until then, then whether it still runs */
		{
			Ssmd__Request rq = SSMD__REQUEST__INIT;
			Ssmd__ResultRequest rr = SSMD__RESULT_REQUEST__INIT;
			unsigned code = SSMD_ENOENT;

			rr.request_id = "vanish";
			rr.client_id = "gone";
			rr.has_wait = 1;
			rr.wait = 0;
			rq.op_case = SSMD__REQUEST__OP_RESULT;
			rq.result = &rr;
			for (int i = 0; i < 500 && code == SSMD_ENOENT; i++) {
				Ssmd__Reply *rs = call(s, &rq, "is-vanish-known", "test");
				code = code_of(rs);
				if (code == SSMD_ENOENT)
					usleep(10000);
				if (rs)
					ssmd__reply__free_unpacked(rs, NULL);
			}
			CHECK(code == 0, "the daemon has the generate of the client that vanishes (code %u)",
			      code);
		}
		nng_close(gone);
		Ssmd__Reply *r2 = append(s, other, toks, 1, "after-vanish", "test");
		CHECK(code_of(r2) == 0 && r2->append->session_tokens == 2004,
		      "after the client vanished the generate completed (session at %llu tokens)",
		      r2 && r2->append ? (unsigned long long)r2->append->session_tokens : 0ULL);
		if (r2)
			ssmd__reply__free_unpacked(r2, NULL);
		free(other);
	}

	/* SIGTERM: unsaved progress is stored and logged; exit 0. */
	nng_close(s);
	CHECK(daemon_stop(pid) == 0, "ssmd exits 0 on SIGTERM");
	{
		char needle[128];
		snprintf(needle, sizeof(needle), "session %s -> state", sid);
		CHECK(file_contains(log_path, needle), "the final checkpoint is logged");
	}

	/* Restart on the same run directory (stale socket files). */
	pid = daemon_start(ssmd, model);
	CHECK(pid > 0, "ssmd restarts over stale sockets");
	if (pid > 0) {
		s = req_open(20000);
		Ssmd__Request q = SSMD__REQUEST__INIT;
		Ssmd__StatesRequest st = SSMD__STATES_REQUEST__INIT;
		st.session = sid;
		q.op_case = SSMD__REQUEST__OP_STATES;
		q.states = &st;
		r = call(s, &q, "list", "test");
		CHECK(code_of(r) == 0 && r->states->n_states == 1 &&
		      r->states->states[0]->n_tokens == 19,
		      "the session's state (4 + 10 + 5 tokens) is found by session after restart");
		if (r)
			ssmd__reply__free_unpacked(r, NULL);
		/* The session ID itself works after the restart. */
		r = append(s, sid, toks, 1, "after-restart", "test");
		CHECK(code_of(r) == 0 && r->append->session_tokens == 20,
		      "the session opened before the restart continues after it (at %llu tokens)",
		      r && r->append ? (unsigned long long)r->append->session_tokens : 0ULL);
		if (r)
			ssmd__reply__free_unpacked(r, NULL);
		nng_close(s);
		CHECK(daemon_stop(pid) == 0, "second stop exits 0");
	}
	free(sid);
	test_dir_remove(tmp);
	return check_summary("server");
}
