/*
 * client.c — libssmd-client: ssmd's protocol over nng REQ (requests) and SUB
 * (token streams). See ssmd.h for the contract of every public function.
 *
 * One call = one Request message packed with protobuf-c, sent on the REQ
 * socket, and one Reply unpacked from the answer. The REQ socket matches the
 * reply to the request and resends the request when the reply is late or the
 * connection is re-established; the daemon deduplicates by
 * (client_id, request_id), so a resend is never executed twice.
 */
#include "ssmd.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>

#include "proto.h"

#define DEFAULT_TIMEOUT_MS 300000
#define DEFAULT_CONNECT_TIMEOUT_MS 2000
/* Request IDs: 128 random bits as 32 hex digits. */
#define REQUEST_ID_LEN 32
/* After the final reply of a stream, how long to wait for events still in
 * transit on the other socket before taking the rest from the reply. */
#define STREAM_DRAIN_MS 200
/* How often the stream loop looks at the reply while waiting for events. */
#define STREAM_POLL_MS 20

struct ssmd_client {
	nng_socket req;        /* request endpoint (REQ) */
	nng_socket sub;        /* events endpoint (SUB), opened on first stream */
	int sub_open;
	nng_socket push;       /* jobs endpoint (PUSH), opened on first submit */
	int push_open;
	int timeout_ms;
	int connect_timeout_ms;
	char url[SSMD_URL_MAX];
	char events_url[SSMD_URL_MAX];
	char jobs_url[SSMD_URL_MAX];
	char id[128];          /* client ID sent with every request */
};

/* ------------------------------------------------------------- helpers -- */

static int err_from_nng(int rv, const char *what)
{
	switch (rv) {
	case NNG_ETIMEDOUT:
		return ssmd_err_set(SSMD_ETIMEDOUT, "%s: no reply in time", what);
	case NNG_ENOMEM:
		return ssmd_err_set(SSMD_ENOMEM, "%s: out of memory", what);
	case NNG_ECONNREFUSED:
	case NNG_ENOENT:
	case NNG_ECLOSED:
	case NNG_ECONNSHUT:
	case NNG_ECONNRESET:
		return ssmd_err_set(SSMD_ECLOSED, "%s: %s (is ssmd running?)",
				    what, nng_strerror(rv));
	case NNG_EADDRINVAL:
	case NNG_EINVAL:
	case NNG_ENOTSUP:
		return ssmd_err_set(SSMD_EINVAL, "%s: %s", what, nng_strerror(rv));
	default:
		return ssmd_err_set(SSMD_EIO, "%s: %s (nng error %d)", what,
				    nng_strerror(rv), rv);
	}
}

static void hex_random(char *out, size_t n_bytes)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char buf[32];
	size_t got = 0;

	if (n_bytes > sizeof buf)
		n_bytes = sizeof buf;
	while (got < n_bytes) {
		ssize_t r = getrandom(buf + got, n_bytes - got, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			/* No entropy source: fall back to nng's generator,
			 * still unique enough for request IDs. */
			for (; got < n_bytes; got += 4) {
				uint32_t v = nng_random();
				memcpy(buf + got, &v,
				       n_bytes - got < 4 ? n_bytes - got : 4);
			}
			break;
		}
		got += (size_t)r;
	}
	for (size_t i = 0; i < n_bytes; i++) {
		out[2 * i] = hex[buf[i] >> 4];
		out[2 * i + 1] = hex[buf[i] & 15];
	}
	out[2 * n_bytes] = '\0';
}

/* Copies a reply string into a fixed array; NULL reads as "". */
static void copy_str(char *dst, size_t cap, const char *src)
{
	snprintf(dst, cap, "%s", src ? src : "");
}

/* Copies an ID from a reply, refusing one that does not fit. */
static int copy_id(char dst[SSMD_ID_MAX], const char *src)
{
	size_t n = src ? strlen(src) : 0;

	if (n >= SSMD_ID_MAX)
		return ssmd_err_set(SSMD_EPROTO,
				    "reply carries an ID of %zu bytes (max %d)",
				    n, SSMD_ID_MAX - 1);
	memcpy(dst, src ? src : "", n + 1);
	return SSMD_OK;
}

static char *dup_str(const char *s)
{
	return strdup(s ? s : "");
}

/* -------------------------------------------------------------- URLs -- */

void ssmd_client_opts_init(ssmd_client_opts *opts)
{
	memset(opts, 0, sizeof *opts);
}

int ssmd_default_url(char *url, size_t cap)
{
	const char *env = getenv("SSMD_URL");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	int n;

	if (env && *env)
		n = snprintf(url, cap, "%s", env);
	else if (xdg && *xdg)
		n = snprintf(url, cap, "ipc://%s/ssmd/ssmd.sock", xdg);
	else
		n = snprintf(url, cap, "ipc://run/ssmd.sock");
	if (n < 0 || (size_t)n >= cap)
		return ssmd_err_set(SSMD_ERANGE, "default URL longer than %zu", cap);
	return SSMD_OK;
}

/* The daemon's sibling rule: $env when set, else for "ipc://DIR/NAME.sock"
 * the socket "ipc://DIR/NAME-<what>.sock". */
static int sibling_url(const char *url, const char *env_name, const char *what,
		       char *out, size_t cap)
{
	const char *env = getenv(env_name);
	int n;

	if (env && *env) {
		n = snprintf(out, cap, "%s", env);
	} else if (strncmp(url, "ipc://", 6) == 0) {
		size_t len = strlen(url);
		size_t stem = len;
		if (len > 5 && strcmp(url + len - 5, ".sock") == 0)
			stem = len - 5;
		n = snprintf(out, cap, "%.*s-%s.sock", (int)stem, url, what);
	} else {
		return ssmd_err_set(SSMD_EINVAL, "%s: cannot derive the %s "
				    "URL; give it explicitly", url, what);
	}
	if (n < 0 || (size_t)n >= cap)
		return ssmd_err_set(SSMD_ERANGE, "%s URL longer than %zu", what,
				    cap);
	return SSMD_OK;
}

int ssmd_events_url(const char *url, char *out, size_t cap)
{
	return sibling_url(url, "SSMD_EVENTS_URL", "events", out, cap);
}

int ssmd_jobs_url(const char *url, char *out, size_t cap)
{
	return sibling_url(url, "SSMD_JOBS_URL", "jobs", out, cap);
}

/* -------------------------------------------------------- connection -- */

/* Copies an optional URL from the options into dst (cap bytes); what names
 * it in the error when it does not fit. */
static int url_copy(char *dst, size_t cap, const char *url, const char *what)
{
	if (!url)
		return SSMD_OK;
	if (strlen(url) >= cap)
		return ssmd_err_set(SSMD_ERANGE, "%s too long", what);
	strcpy(dst, url);
	return SSMD_OK;
}

/* Dials url on s. A synchronous dial fails at once when nothing listens;
 * it is retried every 50 ms within connect_timeout_ms so that a client
 * started together with the daemon still connects. what names the step in
 * the error ("connect events": "connect events URL: ..."). */
static int socket_dial(const ssmd_client *c, nng_socket s, const char *what,
		       const char *url)
{
	int rv;

	for (int waited = 0;; waited += 50) {
		rv = nng_dial(s, url, NULL, 0);
		if (rv == 0 || (rv != NNG_ECONNREFUSED && rv != NNG_ENOENT) ||
		    waited >= c->connect_timeout_ms)
			break;
		nng_msleep(50);
	}
	if (rv != 0) {
		char step[SSMD_URL_MAX + 32];
		snprintf(step, sizeof step, "%s %s", what, url);
		return err_from_nng(rv, step);
	}
	return SSMD_OK;
}

int ssmd_client_open(const ssmd_client_opts *opts, ssmd_client **out)
{
	ssmd_client_opts defaults;
	ssmd_client *c;
	char host[64];
	int rv, rc;

	if (!opts) {
		ssmd_client_opts_init(&defaults);
		opts = &defaults;
	}
	c = calloc(1, sizeof *c);
	if (!c)
		return ssmd_err_set(SSMD_ENOMEM, "client: out of memory");
	c->timeout_ms = opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->connect_timeout_ms = opts->connect_timeout_ms > 0
		? opts->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;

	if ((rc = url_copy(c->url, sizeof c->url, opts->url, "URL")) ||
	    (!opts->url && (rc = ssmd_default_url(c->url, sizeof c->url))) ||
	    (rc = url_copy(c->events_url, sizeof c->events_url,
			   opts->events_url, "events URL")) ||
	    (rc = url_copy(c->jobs_url, sizeof c->jobs_url, opts->jobs_url,
			   "jobs URL")))
		goto fail;
	/* An underivable events or jobs URL matters only to streaming or
	 * submitting; leave it empty and report when one is asked for. */

	if (gethostname(host, sizeof host) != 0)
		strcpy(host, "localhost");
	host[sizeof host - 1] = '\0';
	{
		char rnd[17];
		hex_random(rnd, 8);
		snprintf(c->id, sizeof c->id, "%s/%ld/%s", host, (long)getpid(),
			 rnd);
	}

	if ((rv = nng_req0_open(&c->req)) != 0) {
		rc = err_from_nng(rv, "open request socket");
		goto fail;
	}
	nng_socket_set_ms(c->req, NNG_OPT_RECVTIMEO,
			  c->timeout_ms < 0 ? NNG_DURATION_INFINITE : c->timeout_ms);
	nng_socket_set_ms(c->req, NNG_OPT_SENDTIMEO, c->connect_timeout_ms);
	/* Replies (exports, long generations) may be large: no receive cap
	 * beyond what the daemon chose to send. */
	nng_socket_set_size(c->req, NNG_OPT_RECVMAXSZ, 0);

	if ((rc = socket_dial(c, c->req, "connect", c->url))) {
		nng_close(c->req);
		goto fail;
	}
	*out = c;
	return SSMD_OK;
fail:
	free(c);
	return rc;
}

/*
 * Clients of one process close their sockets one at a time: nng 1.5
 * (Debian 12) can deadlock when sockets are closed from several threads at
 * once (the closing threads and its reaper wait on each other; upstream
 * nng issues 1543 and 1813). A close takes well under a millisecond, so
 * taking turns costs nothing that matters.
 *
 * Events (SUB) sockets are not closed at all: the same bug can hang the
 * close of a SUB socket for good while messages still arrive on it, and the
 * daemon publishes every stream to every subscriber, so closing one
 * client's SUB socket while another client of the process streams hung
 * (1 close in 11-35 in e2e_sessions). A closed client's SUB socket, with no
 * subscription left, goes to sub_pool instead, and the next client to
 * stream from the same events URL takes it; the pool goes with the process.
 */
static pthread_mutex_t close_lock = PTHREAD_MUTEX_INITIALIZER;

struct sub_pool {
	nng_socket sub;
	char url[SSMD_URL_MAX];
	struct sub_pool *next;
};
static struct sub_pool *sub_pool;

/* A pooled SUB socket dialed to url into *sub; 0 when there is none. */
static int sub_pool_take(const char *url, nng_socket *sub)
{
	struct sub_pool **pp, *e = NULL;

	pthread_mutex_lock(&close_lock);
	for (pp = &sub_pool; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->url, url) == 0) {
			e = *pp;
			*pp = e->next;
			break;
		}
	pthread_mutex_unlock(&close_lock);
	if (!e)
		return 0;
	*sub = e->sub;
	free(e);
	return 1;
}

void ssmd_client_close(ssmd_client *c)
{
	struct sub_pool *e = NULL;

	if (!c)
		return;
	if (c->sub_open && (e = malloc(sizeof(*e)))) {
		e->sub = c->sub;
		memcpy(e->url, c->events_url, sizeof(e->url));
	}
	pthread_mutex_lock(&close_lock);
	nng_close(c->req);
	if (e) {
		e->next = sub_pool;
		sub_pool = e;
	} else if (c->sub_open) {
		nng_close(c->sub); /* no memory to keep it */
	}
	if (c->push_open)
		nng_close(c->push);
	pthread_mutex_unlock(&close_lock);
	free(c);
}

const char *ssmd_client_id(const ssmd_client *c)
{
	return c->id;
}

/* Connects the SUB socket once (or takes one a closed client left in
 * sub_pool); later streams reuse it. */
static int client_sub_open(ssmd_client *c)
{
	int rv, rc;

	if (c->sub_open)
		return SSMD_OK;
	if (!c->events_url[0] &&
	    (rc = ssmd_events_url(c->url, c->events_url, sizeof c->events_url)))
		return rc;
	if (sub_pool_take(c->events_url, &c->sub)) {
		c->sub_open = 1;
		return SSMD_OK;
	}
	if ((rv = nng_sub0_open(&c->sub)) != 0)
		return err_from_nng(rv, "open events socket");
	nng_socket_set_ms(c->sub, NNG_OPT_RECVTIMEO, STREAM_POLL_MS);
	nng_socket_set_size(c->sub, NNG_OPT_RECVMAXSZ, 0);
	if ((rc = socket_dial(c, c->sub, "connect events", c->events_url))) {
		nng_close(c->sub);
		return rc;
	}
	c->sub_open = 1;
	return SSMD_OK;
}

/* Connects the PUSH socket to the jobs endpoint once; later submits reuse
 * it. A send waits up to connect_timeout_ms for the daemon to take the
 * message (PUSH holds it until a pipe is there). */
static int client_push_open(ssmd_client *c)
{
	int rv, rc;

	if (c->push_open)
		return SSMD_OK;
	if (!c->jobs_url[0] &&
	    (rc = ssmd_jobs_url(c->url, c->jobs_url, sizeof c->jobs_url)))
		return rc;
	if ((rv = nng_push0_open(&c->push)) != 0)
		return err_from_nng(rv, "open jobs socket");
	nng_socket_set_ms(c->push, NNG_OPT_SENDTIMEO, c->connect_timeout_ms);
	if ((rc = socket_dial(c, c->push, "connect jobs", c->jobs_url))) {
		nng_close(c->push);
		return rc;
	}
	c->push_open = 1;
	return SSMD_OK;
}

/* ------------------------------------------------------------ calls -- */

/* Fills the envelope of req (version, IDs) with a fresh request ID written
 * into rid (REQUEST_ID_LEN + 1 bytes). */
static void request_prepare(ssmd_client *c, Ssmd__Request *req, char *rid)
{
	hex_random(rid, REQUEST_ID_LEN / 2);
	req->has_version = 1;
	req->version = PROTO_VERSION;
	req->request_id = rid;
	req->client_id = c->id;
}

static int request_send(ssmd_client *c, const Ssmd__Request *req)
{
	size_t len = ssmd__request__get_packed_size(req);
	nng_msg *msg;
	int rv;

	if ((rv = nng_msg_alloc(&msg, len)) != 0)
		return err_from_nng(rv, "request");
	ssmd__request__pack(req, nng_msg_body(msg));
	if ((rv = nng_sendmsg(c->req, msg, 0)) != 0) {
		nng_msg_free(msg);
		return err_from_nng(rv, "send request");
	}
	return SSMD_OK;
}

/* Unpacks a reply message (freed here) and checks that it answers rid with
 * the expected result. On a daemon error returns its code with its message
 * in ssmd_errmsg(); on success *out owns the reply. */
static int reply_decode(nng_msg *msg, const char *rid,
			Ssmd__Reply__ResultCase want, Ssmd__Reply **out)
{
	Ssmd__Reply *rep = ssmd__reply__unpack(NULL, nng_msg_len(msg),
					       nng_msg_body(msg));
	nng_msg_free(msg);
	if (!rep)
		return ssmd_err_set(SSMD_EPROTO, "reply is not a valid message");
	if (!rep->request_id || strcmp(rep->request_id, rid) != 0) {
		ssmd__reply__free_unpacked(rep, NULL);
		return ssmd_err_set(SSMD_EPROTO, "reply answers another request");
	}
	if (rep->code != SSMD_OK) {
		int code = (int)rep->code;
		ssmd_err_set(code, "%s", rep->message && *rep->message
			     ? rep->message : ssmd_strerror(code));
		ssmd__reply__free_unpacked(rep, NULL);
		return code;
	}
	if (want != SSMD__REPLY__RESULT__NOT_SET && rep->result_case != want) {
		int got = (int)rep->result_case;
		ssmd__reply__free_unpacked(rep, NULL);
		return ssmd_err_set(SSMD_EPROTO, "reply carries result %d, "
				    "expected %d", got, (int)want);
	}
	*out = rep;
	return SSMD_OK;
}

/* One blocking round trip: sends req, waits for its reply (with result want,
 * or any result when want is NOT_SET). */
static int client_call(ssmd_client *c, Ssmd__Request *req,
		       Ssmd__Reply__ResultCase want, Ssmd__Reply **out)
{
	char rid[REQUEST_ID_LEN + 1];
	nng_msg *msg;
	int rv, rc;

	request_prepare(c, req, rid);
	if ((rc = request_send(c, req)) != SSMD_OK)
		return rc;
	if ((rv = nng_recvmsg(c->req, &msg, 0)) != 0)
		return err_from_nng(rv, "receive reply");
	return reply_decode(msg, rid, want, out);
}

/* One blocking round trip whose reply carries no result (the daemon's code
 * says it all). */
static int client_call_ack(ssmd_client *c, Ssmd__Request *req)
{
	Ssmd__Reply *rep;
	int rc;

	if ((rc = client_call(c, req, SSMD__REPLY__RESULT__NOT_SET, &rep)))
		return rc;
	ssmd__reply__free_unpacked(rep, NULL);
	return SSMD_OK;
}

/* ----------------------------------------------------------- info -- */

int ssmd_info_get(ssmd_client *c, ssmd_info *out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__InfoRequest op = SSMD__INFO_REQUEST__INIT;
	Ssmd__Reply *rep;
	int rc;

	req.op_case = SSMD__REQUEST__OP_INFO;
	req.info = &op;
	if ((rc = client_call(c, &req, SSMD__REPLY__RESULT_INFO, &rep)))
		return rc;
	const Ssmd__InfoReply *r = rep->info;
	ssmd_info info;
	memset(&info, 0, sizeof info);
	copy_str(info.version, sizeof info.version, r->version);
	info.protocol_version = r->protocol_version;
	copy_str(info.model, sizeof info.model, r->model);
	copy_str(info.model_fingerprint, sizeof info.model_fingerprint,
		 r->model_fingerprint);
	copy_str(info.arch, sizeof info.arch, r->arch);
	info.d_model = r->d_model;
	info.n_layer = r->n_layer;
	info.d_inner = r->d_inner;
	info.d_state = r->d_state;
	info.vocab_size = r->vocab_size;
	copy_str(info.backend, sizeof info.backend, r->backend);
	info.slots = r->slots;
	info.state_bytes = r->state_bytes;
	info.has_tokenizer = r->has_tokenizer;
	info.checkpoint_every = r->checkpoint_every;
	if (r->limits) {
		info.max_message_bytes = r->limits->max_message_bytes;
		info.max_append_tokens = r->limits->max_append_tokens;
		info.max_generate_tokens = r->limits->max_generate_tokens;
		info.max_sessions = r->limits->max_sessions;
		info.queue_depth = r->limits->queue_depth;
		info.max_stop = r->limits->max_stop;
	}
	ssmd__reply__free_unpacked(rep, NULL);
	*out = info;
	return SSMD_OK;
}

int ssmd_stats_get(ssmd_client *c, ssmd_stats *out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__StatsRequest op = SSMD__STATS_REQUEST__INIT;
	Ssmd__Reply *rep;
	int rc;

	req.op_case = SSMD__REQUEST__OP_STATS;
	req.stats = &op;
	if ((rc = client_call(c, &req, SSMD__REPLY__RESULT_STATS, &rep)))
		return rc;
	const Ssmd__StatsReply *r = rep->stats;
	out->sessions = r->sessions;
	out->sessions_resident = r->sessions_resident;
	out->slots = r->slots;
	out->slots_used = r->slots_used;
	out->queue_depth = r->queue_depth;
	out->tokens_total = r->tokens_total;
	out->tokens_per_s = r->tokens_per_s;
	out->store_bytes = r->store_bytes;
	out->store_states = r->store_states;
	out->requests_total = r->requests_total;
	out->evictions = r->evictions;
	out->uptime_s = r->uptime_s;
	out->tier_bytes = r->tier_bytes;
	out->tier_budget = r->tier_budget;
	out->tier_pending = r->tier_pending;
	out->tier_hits = r->tier_hits;
	out->tier_misses = r->tier_misses;
	out->store_failures = r->store_failures;
	ssmd__reply__free_unpacked(rep, NULL);
	return SSMD_OK;
}

/* ------------------------------------------------------- sessions -- */

/* Copies a SessionsReply with exactly want sessions into out; checks every
 * entry first so that out is written only when all of them are sound. */
static int sessions_copy(const Ssmd__SessionsReply *r, uint32_t want,
			 ssmd_session *out)
{
	if (r->n_sessions != want)
		return ssmd_err_set(SSMD_EPROTO, "reply has %zu sessions, "
				    "asked for %u", r->n_sessions, want);
	for (size_t i = 0; i < r->n_sessions; i++) {
		const Ssmd__SessionInfo *si = r->sessions[i];
		if (!si->id || !si->id[0])
			return ssmd_err_set(SSMD_EPROTO, "reply has a session "
					    "without an ID");
		if (strlen(si->id) >= SSMD_ID_MAX ||
		    (si->base_state && strlen(si->base_state) >= SSMD_ID_MAX))
			return ssmd_err_set(SSMD_EPROTO, "reply carries an ID "
					    "longer than %d bytes", SSMD_ID_MAX - 1);
	}
	for (size_t i = 0; i < r->n_sessions; i++) {
		memset(&out[i], 0, sizeof out[i]);
		copy_id(out[i].id, r->sessions[i]->id);
		copy_id(out[i].base_state, r->sessions[i]->base_state);
		out[i].n_tokens = r->sessions[i]->n_tokens;
	}
	return SSMD_OK;
}

/* Runs a request answered by count sessions and copies them into out. */
static int sessions_call(ssmd_client *c, Ssmd__Request *req, uint32_t count,
			 ssmd_session *out)
{
	Ssmd__Reply *rep;
	int rc;

	if ((rc = client_call(c, req, SSMD__REPLY__RESULT_SESSIONS, &rep)))
		return rc;
	rc = sessions_copy(rep->sessions, count, out);
	ssmd__reply__free_unpacked(rep, NULL);
	return rc;
}

/* Fills an open request from args (NULL: one empty session); *count
 * receives the number of sessions it asks for. op borrows args' strings. */
static int open_op_fill(Ssmd__OpenRequest *op, const ssmd_open_args *args,
			uint32_t *count)
{
	*count = 1;
	if (!args)
		return SSMD_OK;
	if (args->from && args->fork)
		return ssmd_err_set(SSMD_EINVAL, "open: give from or fork, "
				    "not both");
	*count = args->count ? args->count : 1;
	op->from = (char *)args->from;
	op->fork = (char *)args->fork;
	op->has_count = 1;
	op->count = *count;
	if (args->seed) {
		op->has_seed = 1;
		op->seed = *args->seed;
	}
	op->label = (char *)args->label;
	return SSMD_OK;
}

int ssmd_session_open(ssmd_client *c, const ssmd_open_args *args,
		      ssmd_session *out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__OpenRequest op = SSMD__OPEN_REQUEST__INIT;
	uint32_t count;
	int rc;

	if ((rc = open_op_fill(&op, args, &count)))
		return rc;
	req.op_case = SSMD__REQUEST__OP_OPEN;
	req.open = &op;
	return sessions_call(c, &req, count, out);
}

int ssmd_session_fork(ssmd_client *c, const char *source, uint32_t count,
		      const uint64_t *seed, ssmd_session *out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__ForkRequest op = SSMD__FORK_REQUEST__INIT;

	if (!source)
		return ssmd_err_set(SSMD_EINVAL, "fork: no source");
	if (count == 0)
		count = 1;
	op.source = (char *)source;
	op.has_count = 1;
	op.count = count;
	if (seed) {
		op.has_seed = 1;
		op.seed = *seed;
	}
	req.op_case = SSMD__REQUEST__OP_FORK;
	req.fork = &op;
	return sessions_call(c, &req, count, out);
}

/* Copies an append reply into out (may be NULL) and, when checkpoints is
 * not NULL, its checkpoints into a malloc'd array (NULL when none). */
static int append_copy(const Ssmd__AppendReply *r, ssmd_append_result *out,
		       ssmd_checkpoint **checkpoints)
{
	ssmd_checkpoint *ck = NULL;
	int rc = SSMD_OK;

	if (checkpoints && r->n_checkpoints) {
		if (r->n_checkpoint_tokens != r->n_checkpoints) {
			rc = ssmd_err_set(SSMD_EPROTO, "append reply: %zu "
					  "checkpoints but %zu positions",
					  r->n_checkpoints, r->n_checkpoint_tokens);
			goto done;
		}
		if (!(ck = calloc(r->n_checkpoints, sizeof *ck))) {
			rc = ssmd_err_set(SSMD_ENOMEM, "append: out of memory");
			goto done;
		}
		for (size_t i = 0; i < r->n_checkpoints && !rc; i++) {
			rc = copy_id(ck[i].id, r->checkpoints[i]);
			ck[i].n_tokens = r->checkpoint_tokens[i];
		}
		if (rc)
			goto done;
	}
	if (out) {
		out->n_appended = r->appended;
		out->n_tokens = r->session_tokens;
		out->n_checkpoints = (uint32_t)r->n_checkpoints;
	}
	if (checkpoints) {
		*checkpoints = ck;
		ck = NULL;
	}
done:
	free(ck);
	return rc;
}

static int append_call(ssmd_client *c, Ssmd__AppendRequest *op,
		       ssmd_append_result *out, ssmd_checkpoint **checkpoints)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__Reply *rep;
	int rc;

	if (!op->session)
		return ssmd_err_set(SSMD_EINVAL, "append: no session");
	req.op_case = SSMD__REQUEST__OP_APPEND;
	req.append = op;
	if ((rc = client_call(c, &req, SSMD__REPLY__RESULT_APPEND, &rep)))
		return rc;
	rc = append_copy(rep->append, out, checkpoints);
	ssmd__reply__free_unpacked(rep, NULL);
	return rc;
}

int ssmd_append_text(ssmd_client *c, const char *session, const char *text,
		     ssmd_append_result *out)
{
	Ssmd__AppendRequest op = SSMD__APPEND_REQUEST__INIT;

	if (!text)
		return ssmd_err_set(SSMD_EINVAL, "append: no text");
	op.session = (char *)session;
	op.text = (char *)text;
	return append_call(c, &op, out, NULL);
}

int ssmd_append_tokens(ssmd_client *c, const char *session,
		       const int32_t *tokens, size_t n, ssmd_append_result *out)
{
	Ssmd__AppendRequest op = SSMD__APPEND_REQUEST__INIT;

	if (n && !tokens)
		return ssmd_err_set(SSMD_EINVAL, "append: no tokens");
	op.session = (char *)session;
	op.n_tokens = n;
	op.tokens = (int32_t *)tokens;
	return append_call(c, &op, out, NULL);
}

/* Fills an append request from args; op borrows args' arrays. */
static int append_op_fill(Ssmd__AppendRequest *op, const char *session,
			  const ssmd_append_args *args)
{
	if (!session)
		return ssmd_err_set(SSMD_EINVAL, "append: no session");
	if (!args)
		return ssmd_err_set(SSMD_EINVAL, "append: no arguments");
	if ((args->text != NULL) + (args->tokens != NULL) +
	    (args->texts != NULL) != 1)
		return ssmd_err_set(SSMD_EINVAL, "append: give exactly one of "
				    "text, tokens, texts");
	op->session = (char *)session;
	op->text = (char *)args->text;
	op->n_tokens = args->tokens ? args->n_tokens : 0;
	op->tokens = (int32_t *)args->tokens;
	op->n_texts = args->texts ? args->n_texts : 0;
	op->texts = (char **)args->texts;
	if (args->checkpoint_every) {
		op->has_checkpoint_every = 1;
		op->checkpoint_every = args->checkpoint_every;
	}
	op->n_boundaries = args->boundaries ? args->n_boundaries : 0;
	op->boundaries = (uint32_t *)args->boundaries;
	return SSMD_OK;
}

int ssmd_append(ssmd_client *c, const char *session,
		const ssmd_append_args *args, ssmd_append_result *out,
		ssmd_checkpoint **checkpoints)
{
	Ssmd__AppendRequest op = SSMD__APPEND_REQUEST__INIT;
	int rc;

	if (checkpoints && !out)
		return ssmd_err_set(SSMD_EINVAL, "append: checkpoints need out "
				    "for their count");
	if ((rc = append_op_fill(&op, session, args)))
		return rc;
	return append_call(c, &op, out, checkpoints);
}

const char *ssmd_finish_name(int finish)
{
	switch (finish) {
	case SSMD_FINISH_LENGTH: return "length";
	case SSMD_FINISH_STOP_STRING: return "stop";
	case SSMD_FINISH_STOP_TOKEN: return "stop_token";
	case SSMD_FINISH_CANCELED: return "canceled";
	default: return "none";
	}
}

void ssmd_generate_args_init(ssmd_generate_args *args)
{
	memset(args, 0, sizeof *args);
}

/* Progress of one stream: what fn has been given so far. */
typedef struct stream_state {
	const char *topic;         /* request ID + NUL: the subscription */
	size_t topic_len;          /* including the NUL */
	uint64_t next_seq;         /* next event expected */
	int broken;                /* an event was lost: stop using events */
	int done;                  /* the done event arrived */
	size_t tokens_given;       /* tokens passed to fn */
	size_t text_given;         /* text bytes passed to fn */
	uint64_t missed;
	ssmd_token_fn fn;
	void *ctx;
} stream_state;

/* Handles one message from the SUB socket. */
static void stream_event(stream_state *s, nng_msg *msg)
{
	size_t len = nng_msg_len(msg);
	const uint8_t *body = nng_msg_body(msg);
	Ssmd__Event *ev;

	if (len < s->topic_len || memcmp(body, s->topic, s->topic_len) != 0)
		return; /* another request's stream */
	if (proto_event_parse(body, len, &ev) != SSMD_OK) {
		s->broken = 1; /* an unreadable event counts as a lost one */
		return;
	}
	if (ev->seq != s->next_seq) {
		if (ev->seq > s->next_seq)
			s->missed += ev->seq - s->next_seq;
		s->broken = 1;
	}
	if (!s->broken) {
		s->next_seq = ev->seq + 1;
		if (ev->n_tokens || (ev->text && *ev->text)) {
			size_t tl = ev->text ? strlen(ev->text) : 0;
			s->fn(s->ctx, ev->tokens, ev->n_tokens,
			      ev->text ? ev->text : "", tl);
			s->tokens_given += ev->n_tokens;
			s->text_given += tl;
		}
		if (ev->done)
			s->done = 1;
	}
	ssmd__event__free_unpacked(ev, NULL);
}

/* Callback of the reply aio: only flags completion (aio callbacks must not
 * block). */
static void reply_ready(void *arg)
{
	atomic_store((atomic_int *)arg, 1);
}

/* Sends a streaming generate and feeds events to fn until the reply arrives;
 * then gives fn whatever the events did not carry. */
static int generate_streaming(ssmd_client *c, Ssmd__Request *req,
			      stream_state *s, Ssmd__Reply **out)
{
	char rid[REQUEST_ID_LEN + 1];
	char topic[REQUEST_ID_LEN + 1];
	atomic_int ready = 0;
	nng_aio *aio = NULL;
	nng_msg *msg;
	int rv, rc;

	if ((rc = client_sub_open(c)) != SSMD_OK)
		return rc;
	request_prepare(c, req, rid);
	memcpy(topic, rid, sizeof topic);
	s->topic = topic;
	s->topic_len = strlen(rid) + 1;
	/* Subscribe before sending so no event of this request is missed. */
	if ((rv = nng_socket_set(c->sub, NNG_OPT_SUB_SUBSCRIBE, topic,
				 s->topic_len)) != 0)
		return err_from_nng(rv, "subscribe");
	if ((rv = nng_aio_alloc(&aio, reply_ready, &ready)) != 0) {
		rc = err_from_nng(rv, "generate");
		goto done;
	}
	nng_aio_set_timeout(aio, c->timeout_ms < 0 ? NNG_DURATION_INFINITE
			    : c->timeout_ms);
	if ((rc = request_send(c, req)) != SSMD_OK)
		goto done;
	nng_recv_aio(c->req, aio);

	while (!atomic_load(&ready)) {
		rv = nng_recvmsg(c->sub, &msg, 0);
		if (rv == 0) {
			stream_event(s, msg);
			nng_msg_free(msg);
		}
	}
	if ((rv = nng_aio_result(aio)) != 0) {
		rc = err_from_nng(rv, "receive reply");
		goto done;
	}
	msg = nng_aio_get_msg(aio);
	if ((rc = reply_decode(msg, rid, SSMD__REPLY__RESULT_GENERATE, out)))
		goto done;

	/* The reply and the events travel on different sockets: events may
	 * still be on their way. Wait briefly for them, then take the rest
	 * from the reply, which always holds the complete result. */
	const Ssmd__GenerateReply *g = (*out)->generate;
	nng_time until = nng_clock() + STREAM_DRAIN_MS;
	while (!s->broken && !s->done && s->tokens_given < g->n_tokens &&
	       nng_clock() < until) {
		if (nng_recvmsg(c->sub, &msg, 0) == 0) {
			stream_event(s, msg);
			nng_msg_free(msg);
		}
	}
	if (s->tokens_given < g->n_tokens) {
		const char *text = g->text ? g->text : "";
		size_t tl = strlen(text);
		size_t from = s->text_given <= tl ? s->text_given : tl;
		if (s->tokens_given > 0 && !s->broken)
			s->missed++; /* the tail never arrived as events */
		s->fn(s->ctx, g->tokens + s->tokens_given,
		      g->n_tokens - s->tokens_given, text + from, tl - from);
		s->tokens_given = g->n_tokens;
	}
done:
	nng_aio_free(aio);
	nng_socket_set(c->sub, NNG_OPT_SUB_UNSUBSCRIBE, topic, s->topic_len);
	return rc;
}

/* Fills a generate request from args (NULL: defaults); op borrows args'
 * arrays. */
static int generate_op_fill(Ssmd__GenerateRequest *op, const char *session,
			    const ssmd_generate_args *args, int stream)
{
	if (!session)
		return ssmd_err_set(SSMD_EINVAL, "generate: no session");
	op->session = (char *)session;
	op->has_stream = 1;
	op->stream = stream != 0;
	if (!args)
		return SSMD_OK;
	if (args->max_tokens) {
		op->has_max_tokens = 1;
		op->max_tokens = args->max_tokens;
	}
	/* NaN and infinities are sent as given: the daemon judges them. */
	if (args->temperature != 0.0f) {
		op->has_temperature = 1;
		op->temperature = args->temperature;
	}
	if (args->top_k) {
		op->has_top_k = 1;
		op->top_k = args->top_k;
	}
	if (args->top_p != 0.0f) {
		op->has_top_p = 1;
		op->top_p = args->top_p;
	}
	if (args->seed) {
		op->has_seed = 1;
		op->seed = *args->seed;
	}
	op->n_stop = args->n_stop;
	op->stop = (char **)args->stop;
	op->n_stop_tokens = args->n_stop_tokens;
	op->stop_tokens = (int32_t *)args->stop_tokens;
	if (args->snapshot) {
		op->has_snapshot_at_end = 1;
		op->snapshot_at_end = 1;
		op->snapshot_tag = (char *)args->snapshot_tag;
		op->snapshot_label = (char *)args->snapshot_label;
	}
	return SSMD_OK;
}

/* Copies a generate reply into a new generation; missed = stream events
 * lost in transit. */
static int generation_copy(const Ssmd__GenerateReply *r, uint64_t missed,
			   ssmd_generation **out)
{
	ssmd_generation *g = calloc(1, sizeof *g);
	int rc;

	if (!g)
		return ssmd_err_set(SSMD_ENOMEM, "generate: out of memory");
	g->tokens = malloc((r->n_tokens ? r->n_tokens : 1) * sizeof *g->tokens);
	g->text = dup_str(r->text);
	if (!g->tokens || !g->text) {
		rc = ssmd_err_set(SSMD_ENOMEM, "generate: out of memory");
		goto fail;
	}
	if (r->n_tokens)
		memcpy(g->tokens, r->tokens, r->n_tokens * sizeof *g->tokens);
	g->n_tokens = r->n_tokens;
	g->finish = (int)r->finish;
	g->session_tokens = r->session_tokens;
	if ((rc = copy_id(g->state_id, r->state_id)))
		goto fail;
	g->n_checkpoints = (uint32_t)r->n_checkpoints;
	g->events_missed = missed;
	*out = g;
	return SSMD_OK;
fail:
	ssmd_generation_free(g);
	return rc;
}

int ssmd_generate(ssmd_client *c, const char *session,
		  const ssmd_generate_args *args, ssmd_token_fn fn, void *ctx,
		  ssmd_generation **out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__GenerateRequest op = SSMD__GENERATE_REQUEST__INIT;
	stream_state s;
	Ssmd__Reply *rep = NULL;
	int rc;

	if ((rc = generate_op_fill(&op, session, args, fn != NULL)))
		return rc;
	req.op_case = SSMD__REQUEST__OP_GENERATE;
	req.generate = &op;

	memset(&s, 0, sizeof s);
	s.fn = fn;
	s.ctx = ctx;
	if (fn)
		rc = generate_streaming(c, &req, &s, &rep);
	else
		rc = client_call(c, &req, SSMD__REPLY__RESULT_GENERATE, &rep);
	if (rc)
		return rc;
	rc = generation_copy(rep->generate, s.missed, out);
	ssmd__reply__free_unpacked(rep, NULL);
	return rc;
}

void ssmd_generation_free(ssmd_generation *g)
{
	if (!g)
		return;
	free(g->tokens);
	free(g->text);
	free(g);
}

/* Runs a request answered by a StateRefReply and copies it into out (may be
 * NULL). */
static int state_ref_call(ssmd_client *c, Ssmd__Request *req,
			  ssmd_state_ref *out)
{
	Ssmd__Reply *rep;
	ssmd_state_ref ref;
	int rc;

	if ((rc = client_call(c, req, SSMD__REPLY__RESULT_STATE_REF, &rep)))
		return rc;
	memset(&ref, 0, sizeof ref);
	rc = copy_id(ref.id, rep->state_ref->state_id);
	ref.n_tokens = rep->state_ref->n_tokens;
	ssmd__reply__free_unpacked(rep, NULL);
	if (rc == SSMD_OK && out)
		*out = ref;
	return rc;
}

int ssmd_session_snapshot(ssmd_client *c, const char *session, const char *tag,
			  const char *label, ssmd_state_ref *out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__SnapshotRequest op = SSMD__SNAPSHOT_REQUEST__INIT;

	if (!session)
		return ssmd_err_set(SSMD_EINVAL, "snapshot: no session");
	op.session = (char *)session;
	op.tag = (char *)tag;
	op.label = (char *)label;
	req.op_case = SSMD__REQUEST__OP_SNAPSHOT;
	req.snapshot = &op;
	return state_ref_call(c, &req, out);
}

int ssmd_session_close(ssmd_client *c, const char *session, int snapshot,
		       const char *tag, const char *label, ssmd_state_ref *out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__CloseRequest op = SSMD__CLOSE_REQUEST__INIT;

	if (!session)
		return ssmd_err_set(SSMD_EINVAL, "close: no session");
	op.session = (char *)session;
	op.has_snapshot = 1;
	op.snapshot = snapshot != 0;
	op.tag = (char *)tag;
	op.label = (char *)label;
	req.op_case = SSMD__REQUEST__OP_CLOSE;
	req.close = &op;
	return state_ref_call(c, &req, out);
}

/* --------------------------------------------------------- states -- */

static void state_info_fini(ssmd_state_info *s)
{
	free(s->label);
	free(s->metadata);
	for (size_t i = 0; i < s->n_tags; i++)
		free(s->tags[i]);
	free(s->tags);
}

void ssmd_state_list_free(ssmd_state_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++)
		state_info_fini(&l->states[i]);
	free(l->states);
	free(l->next_cursor);
	free(l);
}

static int state_info_copy(const Ssmd__StateInfo *r, ssmd_state_info *s)
{
	int rc;

	memset(s, 0, sizeof *s);
	if ((rc = copy_id(s->id, r->id)) || (rc = copy_id(s->parent, r->parent)))
		return rc;
	copy_str(s->kind, sizeof s->kind, r->kind);
	copy_str(s->model_fingerprint, sizeof s->model_fingerprint,
		 r->model_fingerprint);
	s->n_tokens = r->n_tokens;
	s->created_ms = r->created_ms;
	s->raw_bytes = r->raw_bytes;
	s->stored_bytes = r->stored_bytes;
	s->transcript_tokens = r->transcript_tokens;
	s->label = dup_str(r->label);
	s->metadata = dup_str(r->metadata);
	if (r->n_tags)
		s->tags = calloc(r->n_tags, sizeof *s->tags);
	if (!s->label || !s->metadata || (r->n_tags && !s->tags))
		return ssmd_err_set(SSMD_ENOMEM, "state list: out of memory");
	for (size_t i = 0; i < r->n_tags; i++) {
		if (!(s->tags[i] = dup_str(r->tags[i])))
			return ssmd_err_set(SSMD_ENOMEM, "state list: out of memory");
		s->n_tags = i + 1;
	}
	return SSMD_OK;
}

/* Builds a list from `first` (may be NULL) followed by the n infos. */
static int state_list_build(const Ssmd__StateInfo *first,
			    Ssmd__StateInfo *const *rest, size_t n,
			    const char *cursor, ssmd_state_list **out)
{
	ssmd_state_list *l = calloc(1, sizeof *l);
	size_t total = n + (first != NULL);
	int rc;

	if (!l)
		return ssmd_err_set(SSMD_ENOMEM, "state list: out of memory");
	l->states = calloc(total ? total : 1, sizeof *l->states);
	l->next_cursor = dup_str(cursor);
	if (!l->states || !l->next_cursor) {
		rc = ssmd_err_set(SSMD_ENOMEM, "state list: out of memory");
		goto fail;
	}
	for (size_t i = 0; i < total; i++) {
		const Ssmd__StateInfo *r = first ? (i == 0 ? first : rest[i - 1])
						 : rest[i];
		l->n = i + 1; /* the entry is freed with the list even half-copied */
		if ((rc = state_info_copy(r, &l->states[i])))
			goto fail;
	}
	*out = l;
	return SSMD_OK;
fail:
	ssmd_state_list_free(l);
	return rc;
}

int ssmd_states_list(ssmd_client *c, const ssmd_states_filter *filter,
		     ssmd_state_list **out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__StatesRequest op = SSMD__STATES_REQUEST__INIT;
	Ssmd__Reply *rep;
	int rc;

	if (filter) {
		op.tag_prefix = (char *)filter->tag_prefix;
		op.session = (char *)filter->session;
		op.has_all_models = 1;
		op.all_models = filter->all_models != 0;
		if (filter->limit) {
			op.has_limit = 1;
			op.limit = filter->limit;
		}
		op.cursor = (char *)filter->cursor;
		op.kind = (char *)filter->kind;
	}
	req.op_case = SSMD__REQUEST__OP_STATES;
	req.states = &op;
	if ((rc = client_call(c, &req, SSMD__REPLY__RESULT_STATES, &rep)))
		return rc;
	rc = state_list_build(NULL, rep->states->states, rep->states->n_states,
			      rep->states->next_cursor, out);
	ssmd__reply__free_unpacked(rep, NULL);
	return rc;
}

int ssmd_state_get(ssmd_client *c, const char *ref, ssmd_state_list **out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__StateRequest op = SSMD__STATE_REQUEST__INIT;
	Ssmd__Reply *rep;
	int rc;

	if (!ref)
		return ssmd_err_set(SSMD_EINVAL, "state: no ID or tag");
	op.ref = (char *)ref;
	op.has_lineage = 1;
	op.lineage = 1;
	req.op_case = SSMD__REQUEST__OP_STATE;
	req.state = &op;
	if ((rc = client_call(c, &req, SSMD__REPLY__RESULT_STATE, &rep)))
		return rc;
	if (!rep->state->info)
		rc = ssmd_err_set(SSMD_EPROTO, "state reply without the state");
	else
		rc = state_list_build(rep->state->info, rep->state->lineage,
				      rep->state->n_lineage, "", out);
	ssmd__reply__free_unpacked(rep, NULL);
	return rc;
}

int ssmd_tag_set(ssmd_client *c, const char *name, const char *ref,
		 ssmd_state_ref *out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__TagRequest op = SSMD__TAG_REQUEST__INIT;

	if (!name || !ref)
		return ssmd_err_set(SSMD_EINVAL, "tag: need a name and a state");
	op.name = (char *)name;
	op.ref = (char *)ref;
	req.op_case = SSMD__REQUEST__OP_TAG;
	req.tag = &op;
	return state_ref_call(c, &req, out);
}

int ssmd_tag_delete(ssmd_client *c, const char *name)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__UntagRequest op = SSMD__UNTAG_REQUEST__INIT;

	if (!name)
		return ssmd_err_set(SSMD_EINVAL, "untag: no tag name");
	op.name = (char *)name;
	req.op_case = SSMD__REQUEST__OP_UNTAG;
	req.untag = &op;
	return client_call_ack(c, &req);
}

int ssmd_state_delete(ssmd_client *c, const char *ref, int force)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__DeleteRequest op = SSMD__DELETE_REQUEST__INIT;

	if (!ref)
		return ssmd_err_set(SSMD_EINVAL, "delete: no state");
	op.ref = (char *)ref;
	op.has_force = 1;
	op.force = force != 0;
	req.op_case = SSMD__REQUEST__OP_DELETE_STATE;
	req.delete_state = &op;
	return client_call_ack(c, &req);
}

int ssmd_state_export(ssmd_client *c, const char *ref, void **data,
		      size_t *len)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__ExportRequest op = SSMD__EXPORT_REQUEST__INIT;
	Ssmd__Reply *rep;
	void *buf;
	int rc;

	if (!ref)
		return ssmd_err_set(SSMD_EINVAL, "export: no state");
	op.ref = (char *)ref;
	req.op_case = SSMD__REQUEST__OP_EXPORT_STATE;
	req.export_state = &op;
	if ((rc = client_call(c, &req, SSMD__REPLY__RESULT_EXPORT_STATE, &rep)))
		return rc;
	const ProtobufCBinaryData *d = &rep->export_state->data;
	if (d->len == 0) {
		rc = ssmd_err_set(SSMD_EPROTO, "export reply without data");
	} else if (!(buf = malloc(d->len))) {
		rc = ssmd_err_set(SSMD_ENOMEM, "export: out of memory");
	} else {
		memcpy(buf, d->data, d->len);
		*data = buf;
		*len = d->len;
	}
	ssmd__reply__free_unpacked(rep, NULL);
	return rc;
}

int ssmd_state_import(ssmd_client *c, const void *data, size_t len,
		      const char *tag, ssmd_state_ref *out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__ImportRequest op = SSMD__IMPORT_REQUEST__INIT;

	if (!data || len == 0)
		return ssmd_err_set(SSMD_EINVAL, "import: no data");
	op.has_data = 1;
	op.data.data = (uint8_t *)data;
	op.data.len = len;
	op.tag = (char *)tag;
	req.op_case = SSMD__REQUEST__OP_IMPORT_STATE;
	req.import_state = &op;
	return state_ref_call(c, &req, out);
}

/* ---------------------------------------------------- merge, score -- */

/* Fills a merge request from args; op borrows args' arrays. */
static int merge_op_fill(Ssmd__MergeRequest *op, const ssmd_merge_args *args)
{
	if (!args || !args->sources || args->n_sources < 2)
		return ssmd_err_set(SSMD_EINVAL, "merge: needs at least 2 sources");
	op->n_sources = args->n_sources;
	op->sources = (char **)args->sources;
	op->n_weights = args->weights ? args->n_weights : 0;
	op->weights = (double *)args->weights;
	op->mode = (char *)args->mode;
	op->tag = (char *)args->tag;
	op->label = (char *)args->label;
	if (args->open) {
		op->has_open = 1;
		op->open = 1;
	}
	if (args->seed) {
		op->has_seed = 1;
		op->seed = *args->seed;
	}
	return SSMD_OK;
}

int ssmd_merge(ssmd_client *c, const ssmd_merge_args *args, ssmd_state_ref *out,
	       ssmd_session *session)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__MergeRequest op = SSMD__MERGE_REQUEST__INIT;
	Ssmd__Reply *rep;
	ssmd_state_ref ref;
	ssmd_session ses;
	int rc;

	if ((rc = merge_op_fill(&op, args)))
		return rc;
	req.op_case = SSMD__REQUEST__OP_MERGE;
	req.merge = &op;
	if ((rc = client_call(c, &req, SSMD__REPLY__RESULT_MERGE, &rep)))
		return rc;
	const Ssmd__MergeReply *r = rep->merge;
	memset(&ref, 0, sizeof ref);
	memset(&ses, 0, sizeof ses);
	rc = copy_id(ref.id, r->state_id);
	ref.n_tokens = r->n_tokens;
	if (!rc && !ref.id[0])
		rc = ssmd_err_set(SSMD_EPROTO, "merge reply without a state ID");
	if (!rc && args->open) {
		if (!r->session || !r->session->id || !r->session->id[0])
			rc = ssmd_err_set(SSMD_EPROTO, "merge reply without the "
					  "session it was asked to open");
		else if (!(rc = copy_id(ses.id, r->session->id)))
			rc = copy_id(ses.base_state, r->session->base_state);
		ses.n_tokens = r->session ? r->session->n_tokens : 0;
	}
	ssmd__reply__free_unpacked(rep, NULL);
	if (rc)
		return rc;
	if (out)
		*out = ref;
	if (session && args->open)
		*session = ses;
	return SSMD_OK;
}

static int score_call(ssmd_client *c, Ssmd__ScoreRequest *op, ssmd_score **out)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__Reply *rep;
	ssmd_score *sc = NULL;
	int rc;

	if (!op->source)
		return ssmd_err_set(SSMD_EINVAL, "score: no source");
	req.op_case = SSMD__REQUEST__OP_SCORE;
	req.score = op;
	if ((rc = client_call(c, &req, SSMD__REPLY__RESULT_SCORE, &rep)))
		return rc;
	const Ssmd__ScoreReply *r = rep->score;
	if (r->unscored > r->n_tokens ||
	    r->n_token_logprobs != r->n_tokens - r->unscored) {
		rc = ssmd_err_set(SSMD_EPROTO, "score reply: %zu log-probabilities "
				  "for %zu tokens, %u unscored", r->n_token_logprobs,
				  r->n_tokens, r->unscored);
		goto done;
	}
	if (!(sc = calloc(1, sizeof *sc)) ||
	    !(sc->tokens = malloc((r->n_tokens ? r->n_tokens : 1) * sizeof *sc->tokens)) ||
	    !(sc->token_logprobs = malloc((r->n_token_logprobs ? r->n_token_logprobs : 1) *
					  sizeof *sc->token_logprobs))) {
		rc = ssmd_err_set(SSMD_ENOMEM, "score: out of memory");
		goto done;
	}
	sc->logprob = r->logprob;
	sc->n_tokens = r->n_tokens;
	sc->unscored = r->unscored;
	if (r->n_tokens)
		memcpy(sc->tokens, r->tokens, r->n_tokens * sizeof *sc->tokens);
	if (r->n_token_logprobs)
		memcpy(sc->token_logprobs, r->token_logprobs,
		       r->n_token_logprobs * sizeof *sc->token_logprobs);
	*out = sc;
	sc = NULL;
done:
	ssmd_score_free(sc);
	ssmd__reply__free_unpacked(rep, NULL);
	return rc;
}

int ssmd_score_text(ssmd_client *c, const char *source, const char *text,
		    ssmd_score **out)
{
	Ssmd__ScoreRequest op = SSMD__SCORE_REQUEST__INIT;

	if (!text)
		return ssmd_err_set(SSMD_EINVAL, "score: no text");
	op.source = (char *)source;
	op.text = (char *)text;
	return score_call(c, &op, out);
}

int ssmd_score_tokens(ssmd_client *c, const char *source,
		      const int32_t *tokens, size_t n, ssmd_score **out)
{
	Ssmd__ScoreRequest op = SSMD__SCORE_REQUEST__INIT;

	if (!tokens || !n)
		return ssmd_err_set(SSMD_EINVAL, "score: no tokens");
	op.source = (char *)source;
	op.n_tokens = n;
	op.tokens = (int32_t *)tokens;
	return score_call(c, &op, out);
}

void ssmd_score_free(ssmd_score *s)
{
	if (!s)
		return;
	free(s->tokens);
	free(s->token_logprobs);
	free(s);
}

/* ------------------------------------------------------------- jobs -- */

int ssmd_submit(ssmd_client *c, const ssmd_job *job,
		char request_id[SSMD_REQUEST_ID_MAX])
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__OpenRequest open = SSMD__OPEN_REQUEST__INIT;
	Ssmd__AppendRequest append = SSMD__APPEND_REQUEST__INIT;
	Ssmd__GenerateRequest generate = SSMD__GENERATE_REQUEST__INIT;
	Ssmd__SnapshotRequest snapshot = SSMD__SNAPSHOT_REQUEST__INIT;
	Ssmd__CloseRequest close = SSMD__CLOSE_REQUEST__INIT;
	Ssmd__MergeRequest merge = SSMD__MERGE_REQUEST__INIT;
	char rid[SSMD_REQUEST_ID_MAX];
	uint32_t count;
	size_t len;
	nng_msg *msg;
	int rv, rc;

	if (!job)
		return ssmd_err_set(SSMD_EINVAL, "submit: no job");
	switch (job->op) {
	case SSMD_OP_OPEN:
		rc = open_op_fill(&open, job->open, &count);
		req.op_case = SSMD__REQUEST__OP_OPEN;
		req.open = &open;
		break;
	case SSMD_OP_APPEND:
		rc = append_op_fill(&append, job->session, job->append);
		req.op_case = SSMD__REQUEST__OP_APPEND;
		req.append = &append;
		break;
	case SSMD_OP_GENERATE:
		rc = generate_op_fill(&generate, job->session, job->generate,
				      job->stream);
		req.op_case = SSMD__REQUEST__OP_GENERATE;
		req.generate = &generate;
		break;
	case SSMD_OP_SNAPSHOT:
	case SSMD_OP_CLOSE:
		rc = job->session ? SSMD_OK
			: ssmd_err_set(SSMD_EINVAL, "submit: no session");
		snapshot.session = close.session = (char *)job->session;
		snapshot.tag = close.tag = (char *)job->tag;
		snapshot.label = close.label = (char *)job->label;
		close.has_snapshot = 1;
		close.snapshot = job->snapshot != 0;
		if (job->op == SSMD_OP_SNAPSHOT) {
			req.op_case = SSMD__REQUEST__OP_SNAPSHOT;
			req.snapshot = &snapshot;
		} else {
			req.op_case = SSMD__REQUEST__OP_CLOSE;
			req.close = &close;
		}
		break;
	case SSMD_OP_MERGE:
		rc = merge_op_fill(&merge, job->merge);
		req.op_case = SSMD__REQUEST__OP_MERGE;
		req.merge = &merge;
		break;
	default:
		rc = ssmd_err_set(SSMD_EINVAL, "submit: no operation %d", job->op);
	}
	if (rc)
		return rc;

	if (job->request_id) {
		len = strlen(job->request_id);
		if (len == 0 || len >= SSMD_REQUEST_ID_MAX)
			return ssmd_err_set(SSMD_EINVAL, "submit: a request ID "
					    "has 1..%d bytes", SSMD_REQUEST_ID_MAX - 1);
		memcpy(rid, job->request_id, len + 1);
	} else {
		hex_random(rid, REQUEST_ID_LEN / 2);
	}
	req.has_version = 1;
	req.version = PROTO_VERSION;
	req.request_id = rid;
	req.client_id = c->id;

	if ((rc = client_push_open(c)))
		return rc;
	len = ssmd__request__get_packed_size(&req);
	if ((rv = nng_msg_alloc(&msg, len)) != 0)
		return err_from_nng(rv, "submit");
	ssmd__request__pack(&req, nng_msg_body(msg));
	if ((rv = nng_sendmsg(c->push, msg, 0)) != 0) {
		nng_msg_free(msg);
		return err_from_nng(rv, "submit");
	}
	memcpy(request_id, rid, strlen(rid) + 1);
	return SSMD_OK;
}

void ssmd_reply_free(ssmd_reply *r)
{
	if (!r)
		return;
	free(r->message);
	free(r->sessions);
	free(r->checkpoints);
	ssmd_generation_free(r->generation);
	free(r);
}

/* Converts a daemon reply into an ssmd_reply (see ssmd.h for which results
 * are carried). */
static int reply_copy(const Ssmd__Reply *rep, ssmd_reply **out)
{
	ssmd_reply *r = calloc(1, sizeof *r);
	size_t n;
	int rc = SSMD_OK;

	if (!r || !(r->message = dup_str(rep->message))) {
		rc = ssmd_err_set(SSMD_ENOMEM, "result: out of memory");
		goto fail;
	}
	n = rep->request_id ? strlen(rep->request_id) : 0;
	if (n >= SSMD_REQUEST_ID_MAX) {
		rc = ssmd_err_set(SSMD_EPROTO, "result: request ID of %zu bytes", n);
		goto fail;
	}
	memcpy(r->request_id, rep->request_id ? rep->request_id : "", n + 1);
	r->code = (int)rep->code;
	switch (rep->result_case) {
	case SSMD__REPLY__RESULT_SESSIONS:
		r->kind = SSMD_REPLY_SESSIONS;
		n = rep->sessions->n_sessions;
		if (!(r->sessions = calloc(n ? n : 1, sizeof *r->sessions))) {
			rc = ssmd_err_set(SSMD_ENOMEM, "result: out of memory");
			goto fail;
		}
		if ((rc = sessions_copy(rep->sessions, (uint32_t)n, r->sessions)))
			goto fail;
		r->n_sessions = n;
		break;
	case SSMD__REPLY__RESULT_APPEND:
		r->kind = SSMD_REPLY_APPEND;
		if ((rc = append_copy(rep->append, &r->append, &r->checkpoints)))
			goto fail;
		break;
	case SSMD__REPLY__RESULT_GENERATE:
		r->kind = SSMD_REPLY_GENERATE;
		if ((rc = generation_copy(rep->generate, 0, &r->generation)))
			goto fail;
		break;
	case SSMD__REPLY__RESULT_STATE_REF:
		r->kind = SSMD_REPLY_STATE;
		if ((rc = copy_id(r->state.id, rep->state_ref->state_id)))
			goto fail;
		r->state.n_tokens = rep->state_ref->n_tokens;
		break;
	case SSMD__REPLY__RESULT_MERGE:
		r->kind = SSMD_REPLY_MERGE;
		if ((rc = copy_id(r->state.id, rep->merge->state_id)))
			goto fail;
		r->state.n_tokens = rep->merge->n_tokens;
		if (rep->merge->session && rep->merge->session->id &&
		    rep->merge->session->id[0]) {
			Ssmd__SessionInfo *one[1] = {rep->merge->session};
			Ssmd__SessionsReply sr = SSMD__SESSIONS_REPLY__INIT;
			sr.n_sessions = 1;
			sr.sessions = one;
			if (!(r->sessions = calloc(1, sizeof *r->sessions))) {
				rc = ssmd_err_set(SSMD_ENOMEM, "result: out of memory");
				goto fail;
			}
			if ((rc = sessions_copy(&sr, 1, r->sessions)))
				goto fail;
			r->n_sessions = 1;
		}
		break;
	case SSMD__REPLY__RESULT__NOT_SET:
		r->kind = SSMD_REPLY_NONE;
		break;
	default:
		r->kind = SSMD_REPLY_OTHER;
		break;
	}
	*out = r;
	return SSMD_OK;
fail:
	ssmd_reply_free(r);
	return rc;
}

/* Sends a `result` request (wait or not) and returns its fetched reply. */
static int result_call(ssmd_client *c, const char *what, const char *request_id,
		       const char *client_id, int wait, Ssmd__Reply **rep)
{
	Ssmd__Request req = SSMD__REQUEST__INIT;
	Ssmd__ResultRequest op = SSMD__RESULT_REQUEST__INIT;

	if (!request_id || !request_id[0])
		return ssmd_err_set(SSMD_EINVAL, "%s: no request ID", what);
	op.request_id = (char *)request_id;
	op.client_id = (char *)client_id;
	if (!wait) {
		op.has_wait = 1;
		op.wait = 0;
	}
	req.op_case = SSMD__REQUEST__OP_RESULT;
	req.result = &op;
	return client_call(c, &req, SSMD__REPLY__RESULT_FETCHED, rep);
}

int ssmd_result(ssmd_client *c, const char *request_id, const char *client_id,
		ssmd_reply **out)
{
	Ssmd__Reply *rep;
	int rc;

	if ((rc = result_call(c, "result", request_id, client_id, 1, &rep)))
		return rc;
	if (!rep->fetched->reply)
		rc = ssmd_err_set(SSMD_EPROTO, "result reply without the reply");
	else
		rc = reply_copy(rep->fetched->reply, out);
	ssmd__reply__free_unpacked(rep, NULL);
	return rc;
}

int ssmd_result_status(ssmd_client *c, const char *request_id, const char *client_id,
		       int *done)
{
	Ssmd__Reply *rep;
	int rc;

	if ((rc = result_call(c, "result status", request_id, client_id, 0, &rep)))
		return rc;
	if (rep->fetched->has_running)
		*done = !rep->fetched->running;
	else
		rc = ssmd_err_set(SSMD_EPROTO, "result status reply without `running`");
	ssmd__reply__free_unpacked(rep, NULL);
	return rc;
}

int ssmd_submit_wait(ssmd_client *c, const char *request_id)
{
	const nng_time end = nng_clock() + (nng_time)(c->timeout_ms < 0 ? 0 : c->timeout_ms);
	nng_duration pause = 1;
	int rc, done;

	for (;;) {
		rc = ssmd_result_status(c, request_id, NULL, &done);
		if (rc != SSMD_ENOENT)
			return rc;
		if (c->timeout_ms >= 0 && nng_clock() >= end)
			return ssmd_err_set(SSMD_ETIMEDOUT,
					    "submit: the daemon has not received job %s",
					    request_id);
		/* 1, 2, 4 ... 32 ms between asks */
		nng_msleep(pause);
		if (pause < 32)
			pause *= 2;
	}
}

void ssmd_free(void *p)
{
	free(p);
}
