/*
 * test_faults.c — bad input never takes ssmd down: random bytes, a truncated
 * protobuf, an oversized message, an unknown operation, unknown sessions,
 * states and tags, a state of another model, nonsense generate parameters,
 * and a client that vanishes in the middle of a generate. After each, the
 * daemon must still answer the next request correctly.
 */
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>

#include "check.h"
#include "harness.h"
#include "proto.h"

/* The daemon under test accepts requests up to this size (--max-message). */
#define MAX_MESSAGE (1 << 20)

static e2e_daemon tiny;

/* The daemon is alive and answers info with the right model. */
static void check_alive(const char *after)
{
	ssmd_client *c;
	ssmd_info info;
	int status;

	CHECK(waitpid(tiny.pid, &status, WNOHANG) == 0, "daemon died after %s",
	      after);
	if (e2e_connect(&tiny, 10000, &c) != SSMD_OK) {
		CHECK(0, "no connection after %s", after);
		return;
	}
	CHECK(ssmd_info_get(c, &info) == SSMD_OK && info.vocab_size == 512,
	      "info after %s: %s", after, ssmd_errmsg());
	ssmd_client_close(c);
}

/* Sends raw bytes; returns the reply's code, or 1000 + the local error when
 * no reply came. */
static unsigned raw_code(const void *buf, size_t len, int timeout_ms)
{
	void *rep = NULL;
	size_t rlen = 0;
	unsigned code;
	int rc = e2e_raw_call(&tiny, buf, len, timeout_ms, &rep, &rlen);

	if (rc != SSMD_OK)
		return 1000 + (unsigned)rc;
	Ssmd__Reply *r = ssmd__reply__unpack(NULL, rlen, rep);
	code = r ? r->code : 2000;
	if (r && r->code != 0)
		CHECK(r->message && r->message[0], "error %u without a message", code);
	ssmd__reply__free_unpacked(r, NULL);
	free(rep);
	return code;
}

/* Packs a request with the envelope filled in. */
static void pack(Ssmd__Request *req, void **buf, size_t *len)
{
	static int n;
	static char rid[32];

	snprintf(rid, sizeof rid, "faults-%d", ++n);
	if (!req->has_version) {
		req->has_version = 1;
		req->version = PROTO_VERSION;
	}
	req->request_id = rid;
	req->client_id = "e2e-faults";
	if (proto_msg_pack(&req->base, buf, len) != SSMD_OK) {
		fprintf(stderr, "pack failed\n");
		exit(1);
	}
}

/* Speaks nng's IPC wire format on a plain Unix socket (an 8-byte SP header
 * each way: 0x00 'S' 'P' 0x00, the protocol number big-endian — REQ 0x30 —
 * and two zero bytes; then each message as type 0x01, a 64-bit big-endian
 * length and the body), announces a message of `announced` bytes and sends
 * the first 64 KiB of it. True when the daemon closes the connection within
 * 10 s. A plain socket, because closing an nng socket in the middle of a
 * large send can hang in nng 1.5.2. */
static int oversized_closes(uint64_t announced)
{
	static const uint8_t hello[8] = {0, 'S', 'P', 0, 0x00, 0x30, 0, 0};
	struct sockaddr_un addr;
	uint8_t head[8 + 1 + 8], body[65536], peer[8];
	int fd, closed = 0;

	const char *path = tiny.url + strlen("ipc://");
	memset(&addr, 0, sizeof addr);
	addr.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof addr.sun_path)
		return 0;
	memcpy(addr.sun_path, path, strlen(path) + 1);
	if ((fd = socket(AF_UNIX, SOCK_STREAM, 0)) < 0)
		return 0;
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
		close(fd);
		return 0;
	}
	memcpy(head, hello, 8);
	head[8] = 1;
	for (int i = 0; i < 8; i++)
		head[9 + i] = (uint8_t)(announced >> (56 - 8 * i));
	memset(body, 0x80, sizeof body); /* REQ's request-ID header and junk */
	if (send(fd, head, sizeof head, MSG_NOSIGNAL) == (ssize_t)sizeof head)
		(void)send(fd, body, sizeof body, MSG_NOSIGNAL);
	/* Read the daemon's SP header, then wait for the close. */
	for (int64_t until = e2e_now_ms() + 10000; e2e_now_ms() < until;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = recv(fd, peer, sizeof peer, 0);
		if (n <= 0) {
			closed = 1;
			break;
		}
	}
	close(fd);
	return closed;
}

static void test_malformed(void)
{
	uint8_t junk[1000];
	void *buf;
	size_t len;
	unsigned code;

	/* Random bytes. */
	e2e_random(junk, sizeof junk);
	code = raw_code(junk, sizeof junk, 10000);
	CHECK(code == SSMD_EFORMAT || code == SSMD_EPROTO,
	      "random bytes answered with %u", code);
	check_alive("random bytes");

	/* An empty message. */
	code = raw_code(junk, 0, 10000);
	CHECK(code == SSMD_EFORMAT || code == SSMD_EPROTO,
	      "empty message answered with %u", code);

	/* A valid append cut inside its packed token list. */
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__AppendRequest op = SSMD__APPEND_REQUEST__INIT;
	int32_t toks[100];
	for (int i = 0; i < 100; i++)
		toks[i] = i;
	op.session = "s-whatever";
	op.n_tokens = 100;
	op.tokens = toks;
	req.op_case = SSMD__REQUEST__OP_APPEND;
	req.append = &op;
	pack(&req, &buf, &len);
	code = raw_code(buf, len - 20, 10000);
	CHECK(code == SSMD_EFORMAT, "truncated protobuf answered with %u", code);
	free(buf);
	check_alive("a truncated protobuf");

	/* An operation this daemon does not know: field 30 of Request (in the
	 * range reserved for later operations), an empty message. */
	Ssmd__Request none = SSMD__REQUEST__INIT;
	pack(&none, &buf, &len);
	code = raw_code(buf, len, 10000);
	CHECK(code == SSMD_EPROTO, "request without operation answered with %u",
	      code);
	uint8_t *ext = malloc(len + 3);
	memcpy(ext, buf, len);
	ext[len] = 0xF2; /* key: field 30, wire type 2 */
	ext[len + 1] = 0x01;
	ext[len + 2] = 0x00; /* length 0 */
	code = raw_code(ext, len + 3, 10000);
	CHECK(code == SSMD_EPROTO, "unknown operation answered with %u", code);
	free(ext);
	free(buf);

	/* A protocol version from the future, and none. */
	Ssmd__Request future = SSMD__REQUEST__INIT;
	Ssmd__InfoRequest info = SSMD__INFO_REQUEST__INIT;
	future.has_version = 1;
	future.version = 99;
	future.op_case = SSMD__REQUEST__OP_INFO;
	future.info = &info;
	pack(&future, &buf, &len);
	code = raw_code(buf, len, 10000);
	CHECK(code == SSMD_EPROTO, "version 99 answered with %u", code);
	free(buf);
	check_alive("an unknown operation");

	/* Over the message limit: the daemon drops that connection without
	 * a reply, and carries on. */
	CHECK(oversized_closes(2 * MAX_MESSAGE), "a 2 MiB message did not "
	      "close its connection");
	CHECK(oversized_closes(1ull << 40), "a message announcing 1 TiB did "
	      "not close its connection");
	check_alive("an oversized message");
}

static void test_unknown_ids(ssmd_client *c)
{
	static const char *nosession = "s-00000000000000000000000000000000";
	static const char *nostate = "0000000000000000000000000000dead";
	int32_t tok = 1;
	ssmd_session s;
	ssmd_state_ref r;
	ssmd_state_list *l = NULL;
	ssmd_generation *g = NULL;
	void *data = NULL;
	size_t len;

	CHECK_RC(ssmd_append_tokens(c, nosession, &tok, 1, NULL), SSMD_ENOENT);
	CHECK_RC(ssmd_generate(c, nosession, NULL, NULL, NULL, &g), SSMD_ENOENT);
	CHECK_RC(ssmd_session_snapshot(c, nosession, NULL, NULL, &r), SSMD_ENOENT);
	CHECK_RC(ssmd_session_close(c, nosession, 0, NULL, NULL, &r), SSMD_ENOENT);
	ssmd_open_args oa = {.from = nostate};
	CHECK_RC(ssmd_session_open(c, &oa, &s), SSMD_ENOENT);
	oa.from = "no/such/tag";
	CHECK_RC(ssmd_session_open(c, &oa, &s), SSMD_ENOENT);
	ssmd_open_args of = {.fork = nosession};
	CHECK_RC(ssmd_session_open(c, &of, &s), SSMD_ENOENT);
	CHECK_RC(ssmd_session_fork(c, "no/such/tag", 1, NULL, &s), SSMD_ENOENT);
	CHECK_RC(ssmd_state_get(c, "no/such/tag", &l), SSMD_ENOENT);
	CHECK_RC(ssmd_state_get(c, nostate, &l), SSMD_ENOENT);
	CHECK_RC(ssmd_tag_set(c, "e2e/x", nostate, &r), SSMD_ENOENT);
	CHECK_RC(ssmd_tag_delete(c, "no/such/tag"), SSMD_ENOENT);
	CHECK_RC(ssmd_state_delete(c, nostate, 0), SSMD_ENOENT);
	CHECK_RC(ssmd_state_export(c, nostate, &data, &len), SSMD_ENOENT);
	check_alive("unknown IDs");
}

static void test_bad_params(ssmd_client *c)
{
	int32_t toks[4] = {1, 2, 3, 4}, bad_tok = 512, neg_tok = -1;
	int32_t many_stops[200];
	ssmd_session s, empty;
	ssmd_generation *g = NULL;
	ssmd_generate_args a;
	ssmd_append_result r;
	ssmd_info info;

	CHECK_RC(ssmd_info_get(c, &info), SSMD_OK);
	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);
	CHECK_RC(ssmd_session_open(c, NULL, &empty), SSMD_OK);

	/* Tokens outside the vocabulary: refused, nothing consumed. */
	CHECK_RC(ssmd_append_tokens(c, s.id, &bad_tok, 1, NULL), SSMD_EINVAL);
	CHECK_RC(ssmd_append_tokens(c, s.id, &neg_tok, 1, NULL), SSMD_EINVAL);
	CHECK_RC(ssmd_append_tokens(c, s.id, toks, 4, &r), SSMD_OK);
	CHECK(r.n_tokens == 4, "bad appends consumed tokens: %" PRIu64, r.n_tokens);

	/* Nothing consumed yet: nothing to continue from. */
	CHECK_RC(ssmd_generate(c, empty.id, NULL, NULL, NULL, &g), SSMD_EEMPTY);

	const struct {
		const char *what;
		float temperature, top_p;
		uint32_t max_tokens;
	} cases[] = {
		{"NaN temperature", NAN, 0, 4},
		{"infinite temperature", INFINITY, 0, 4},
		{"top_p 1.5", 0.8f, 1.5f, 4},
		{"negative top_p", 0.8f, -0.5f, 4},
		{"NaN top_p", 0.8f, NAN, 4},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		ssmd_generate_args_init(&a);
		a.temperature = cases[i].temperature;
		a.top_p = cases[i].top_p;
		a.max_tokens = cases[i].max_tokens;
		CHECK_RC(ssmd_generate(c, s.id, &a, NULL, NULL, &g), SSMD_EINVAL);
		CHECK(strlen(ssmd_errmsg()) > 0, "%s: no message", cases[i].what);
	}
	ssmd_generate_args_init(&a);
	a.max_tokens = info.max_generate_tokens + 1;
	CHECK_RC(ssmd_generate(c, s.id, &a, NULL, NULL, &g), SSMD_ERANGE);
	for (int i = 0; i < 200; i++)
		many_stops[i] = i;
	ssmd_generate_args_init(&a);
	a.stop_tokens = many_stops;
	a.n_stop_tokens = info.max_stop + 1;
	CHECK_RC(ssmd_generate(c, s.id, &a, NULL, NULL, &g), SSMD_ERANGE);

	/* Import of bytes that are no export. */
	uint8_t junk[512];
	ssmd_state_ref ref;
	e2e_random(junk, sizeof junk);
	int rc = ssmd_state_import(c, junk, sizeof junk, NULL, &ref);
	CHECK(rc == SSMD_EFORMAT || rc == SSMD_ECORRUPT,
	      "import of random bytes: %d (%s)", rc, ssmd_errmsg());

	/* The session is intact: exactly its 4 tokens, and it generates. */
	ssmd_generate_args_init(&a);
	a.max_tokens = 3;
	CHECK_RC(ssmd_generate(c, s.id, &a, NULL, NULL, &g), SSMD_OK);
	CHECK(g && g->n_tokens == 3 && g->session_tokens == 7,
	      "after bad requests: %zu tokens, session at %" PRIu64,
	      g ? g->n_tokens : 0, g ? g->session_tokens : 0);
	ssmd_generation_free(g);
	check_alive("nonsense parameters");
}

/* A state exported by a daemon serving another model is refused here. */
static void test_other_model(ssmd_client *c)
{
	e2e_daemon other;
	ssmd_client *oc = NULL;
	ssmd_session s, r;
	ssmd_state_ref snap, imported;
	void *data = NULL;
	size_t len = 0;
	int rc;

	e2e_daemon_init(&other, "other", e2e_text_model());
	if (e2e_daemon_start(&other) != 0) {
		CHECK(0, "second daemon did not start");
		return;
	}
	CHECK_RC(e2e_connect(&other, 0, &oc), SSMD_OK);
	if (oc) {
		CHECK_RC(ssmd_session_open(oc, NULL, &s), SSMD_OK);
		CHECK_RC(ssmd_append_text(oc, s.id, "A state of another model.", NULL),
			 SSMD_OK);
		CHECK_RC(ssmd_session_snapshot(oc, s.id, NULL, NULL, &snap), SSMD_OK);
		CHECK_RC(ssmd_state_export(oc, snap.id, &data, &len), SSMD_OK);
		ssmd_client_close(oc);
	}
	CHECK(e2e_daemon_stop(&other) == 0, "second daemon did not exit cleanly");
	if (!data)
		return;

	/* Either the import itself refuses the foreign model, or the state is
	 * kept (a library may hold states of several models) and every
	 * attempt to load it is refused. */
	rc = ssmd_state_import(c, data, len, "e2e/foreign", &imported);
	if (rc == SSMD_OK) {
		ssmd_open_args oa = {.from = imported.id};
		CHECK_RC(ssmd_session_open(c, &oa, &r), SSMD_EMODEL);
		CHECK(strlen(ssmd_errmsg()) > 0, "SSMD_EMODEL without a message");
		oa.from = "e2e/foreign";
		CHECK_RC(ssmd_session_open(c, &oa, &r), SSMD_EMODEL);
		CHECK_RC(ssmd_session_fork(c, imported.id, 2, NULL, &r), SSMD_EMODEL);
	} else {
		CHECK(rc == SSMD_EMODEL, "import of a foreign state: %d (%s)", rc,
		      ssmd_errmsg());
	}
	ssmd_free(data);
	check_alive("a state of another model");
}

/* A client sends a long streaming generate and goes away without reading
 * the reply. */
static void test_vanishing_client(ssmd_client *c)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__GenerateRequest op = SSMD__GENERATE_REQUEST__INIT;
	int32_t toks[3] = {7, 8, 9};
	ssmd_session s, fresh;
	ssmd_generation *g = NULL;
	ssmd_generate_args a;
	ssmd_info info;
	nng_socket sock;
	void *buf;
	size_t len;
	int rc;

	CHECK_RC(ssmd_info_get(c, &info), SSMD_OK);
	CHECK_RC(ssmd_session_open(c, NULL, &s), SSMD_OK);
	CHECK_RC(ssmd_append_tokens(c, s.id, toks, 3, NULL), SSMD_OK);
	op.session = s.id;
	op.has_max_tokens = 1;
	op.max_tokens = info.max_generate_tokens;
	op.has_stream = 1;
	op.stream = 1;
	req.op_case = SSMD__REQUEST__OP_GENERATE;
	req.generate = &op;
	pack(&req, &buf, &len);
	CHECK(nng_req0_open(&sock) == 0, "req socket");
	CHECK(nng_dial(sock, tiny.url, NULL, 0) == 0, "dial");
	CHECK(nng_send(sock, buf, len, 0) == 0, "send");
	nng_msleep(50);
	nng_close(sock);
	free(buf);

	/* Others are served meanwhile. */
	CHECK_RC(ssmd_session_open(c, NULL, &fresh), SSMD_OK);
	CHECK_RC(ssmd_append_tokens(c, fresh.id, toks, 3, NULL), SSMD_OK);
	ssmd_generate_args_init(&a);
	a.max_tokens = 5;
	CHECK_RC(ssmd_generate(c, fresh.id, &a, NULL, NULL, &g), SSMD_OK);
	ssmd_generation_free(g);
	g = NULL;

	/* The abandoned session becomes usable again (it may be busy until
	 * the orphaned generation ends, well within 30 s on this model). */
	ssmd_client *c2 = NULL;
	if (e2e_connect(&tiny, 30000, &c2) != SSMD_OK) {
		CHECK(0, "no second connection");
		return;
	}
	for (int64_t until = e2e_now_ms() + 30000;;) {
		rc = ssmd_generate(c2, s.id, &a, NULL, NULL, &g);
		if (rc != SSMD_EBUSY || e2e_now_ms() > until)
			break;
		nng_msleep(100);
	}
	CHECK(rc == SSMD_OK, "abandoned session: %d (%s)", rc, ssmd_errmsg());
	ssmd_generation_free(g);
	ssmd_client_close(c2);
	check_alive("a client vanishing mid-generate");
}

int main(void)
{
	char maxmsg[32];
	ssmd_client *c = NULL;

	if (!e2e_have_daemon()) {
		SKIP("ssmd or ssm-mkmodel not built");
		return check_summary("e2e_faults");
	}
	snprintf(maxmsg, sizeof maxmsg, "%d", MAX_MESSAGE);
	e2e_daemon_init(&tiny, "faults", e2e_tiny_model());
	tiny.extra[0] = "--max-message";
	tiny.extra[1] = maxmsg;
	if (e2e_daemon_start(&tiny) != 0) {
		CHECK(0, "daemon did not start");
		return check_summary("e2e_faults");
	}
	test_malformed();
	CHECK_RC(e2e_connect(&tiny, 0, &c), SSMD_OK);
	if (c) {
		test_unknown_ids(c);
		test_bad_params(c);
		test_other_model(c);
		test_vanishing_client(c);
		ssmd_client_close(c);
	}
	CHECK(e2e_daemon_stop(&tiny) == 0, "daemon did not exit cleanly");
	return check_summary("e2e_faults");
}
