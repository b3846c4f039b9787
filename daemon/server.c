/*
 * server.c — REP contexts and the PUB socket.
 *
 * Each context loops RECV → (WAIT for the job's reply) → SEND → RECV. The
 * reply callback comes from the scheduler or store thread and only starts an
 * asynchronous send, so no thread ever blocks on the network.
 */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/transport/ipc/ipc.h>

#include "job.h"
#include "log.h"
#include "proto.h"

enum ctx_state { CTX_RECV, CTX_WAIT, CTX_SEND };

struct ctx {
	server *srv;
	nng_ctx ctx;
	nng_aio *aio;
	enum ctx_state state;
	char client_id[PROTO_MAX_ID_LEN + 1];
	char request_id[PROTO_MAX_ID_LEN + 1];
	/* A `result` request waiting for the reply of another: that reply
	 * goes out wrapped in this request's own. */
	int fetching;
};

/* A request pushed to the jobs endpoint, on its way. */
struct push {
	server *srv;
	char client_id[PROTO_MAX_ID_LEN + 1];
	char request_id[PROTO_MAX_ID_LEN + 1];
};

struct server {
	nng_socket rep, pub, pull;
	int rep_open, pub_open, pull_open;
	nng_listener rep_l, pub_l, pull_l;
	nng_aio *pull_aio;
	struct ctx *ctxs;
	int n_ctxs;
	sched *sched;
	rcache *cache;
};

static int nng_to_ssmd(int rv, const char *what, const char *url)
{
	int code = rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP ? SSMD_EINVAL
		   : rv == NNG_ENOMEM                       ? SSMD_ENOMEM
							    : SSMD_EIO;
	return ssmd_err_set(code, "%s %s: %s", what, url, nng_strerror(rv));
}

/* Creates, configures and starts a listener on url. */
static int listen_on(nng_socket sock, const char *url, uint64_t max_message,
		     nng_listener *out)
{
	nng_listener l;
	int rv = nng_listener_create(&l, sock, url);

	if (rv)
		return nng_to_ssmd(rv, "cannot listen on", url);
	rv = nng_listener_set_size(l, NNG_OPT_RECVMAXSZ, (size_t)max_message);
	if (!rv && strncmp(url, "ipc://", 6) == 0)
		rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600);
	if (!rv)
		rv = nng_listener_start(l, 0);
	if (rv) {
		nng_listener_close(l);
		return nng_to_ssmd(rv, "cannot listen on", url);
	}
	*out = l;
	return SSMD_OK;
}

int server_open(const struct server_opts *o, server **out)
{
	server *srv = calloc(1, sizeof(*srv));
	int rv, rc;

	if (!srv)
		return ssmd_err_set(SSMD_ENOMEM, "server");
	srv->n_ctxs = o->contexts;
	srv->ctxs = calloc((size_t)o->contexts, sizeof(*srv->ctxs));
	if (!srv->ctxs) {
		rc = ssmd_err_set(SSMD_ENOMEM, "server contexts");
		goto fail;
	}
	if ((rv = nng_rep0_open(&srv->rep))) {
		rc = nng_to_ssmd(rv, "cannot open", "REP socket");
		goto fail;
	}
	srv->rep_open = 1;
	if ((rv = nng_pub0_open(&srv->pub))) {
		rc = nng_to_ssmd(rv, "cannot open", "PUB socket");
		goto fail;
	}
	srv->pub_open = 1;
	/* The socket-level limit covers dialers added later too. */
	nng_socket_set_size(srv->rep, NNG_OPT_RECVMAXSZ, (size_t)o->max_message);
	if ((rc = listen_on(srv->rep, o->listen, o->max_message, &srv->rep_l)) ||
	    (rc = listen_on(srv->pub, o->events, o->max_message, &srv->pub_l)))
		goto fail;
	if (o->jobs && strcmp(o->jobs, "off") != 0) {
		if ((rv = nng_pull0_open(&srv->pull))) {
			rc = nng_to_ssmd(rv, "cannot open", "PULL socket");
			goto fail;
		}
		srv->pull_open = 1;
		nng_socket_set_size(srv->pull, NNG_OPT_RECVMAXSZ,
				    (size_t)o->max_message);
		if ((rc = listen_on(srv->pull, o->jobs, o->max_message, &srv->pull_l)))
			goto fail;
	}
	*out = srv;
	return SSMD_OK;
fail:
	server_close(srv);
	return rc;
}

static void ctx_recv(struct ctx *c)
{
	c->state = CTX_RECV;
	nng_ctx_recv(c->ctx, c->aio);
}

/* Sends len bytes of reply on c (any thread). */
static void ctx_send(struct ctx *c, const void *reply, size_t len)
{
	nng_msg *msg;

	if (!reply || nng_msg_alloc(&msg, 0) || nng_msg_append(msg, reply, len)) {
		if (reply)
			log_error("out of memory for a %zu-byte reply; dropped", len);
		ctx_recv(c);
		return;
	}
	c->state = CTX_SEND;
	nng_aio_set_msg(c->aio, msg);
	nng_ctx_send(c->ctx, c->aio);
}

/* Answers c's `result` request with r, or with code and message when r is
 * NULL. */
static void fetched_send(struct ctx *c, Ssmd__ResultReply *r, int code, const char *message)
{
	Ssmd__Reply out = SSMD__REPLY__INIT;
	void *buf = NULL;
	size_t blen = 0;

	c->fetching = 0;
	out.request_id = c->request_id;
	out.has_code = 1;
	if (r) {
		out.result_case = SSMD__REPLY__RESULT_FETCHED;
		out.fetched = r;
	} else {
		out.code = (uint32_t)code;
		out.message = (char *)message;
	}
	if (proto_msg_pack(&out.base, &buf, &blen))
		buf = NULL;
	ctx_send(c, buf, blen);
	free(buf);
}

/* Answers c's `result` request with the earlier reply (len bytes). */
static void result_send(struct ctx *c, const void *reply, size_t len)
{
	Ssmd__ResultReply r = SSMD__RESULT_REPLY__INIT;
	Ssmd__Reply *earlier = reply ? ssmd__reply__unpack(NULL, len, reply) : NULL;

	r.reply = earlier;
	fetched_send(c, earlier ? &r : NULL, SSMD_ENOMEM, "the earlier reply could not be read");
	if (earlier)
		ssmd__reply__free_unpacked(earlier, NULL);
}

/* Answers c's `result` request with wait = false: whether it still runs
 * (the reply itself is not sent). */
static void running_send(struct ctx *c, int running)
{
	Ssmd__ResultReply r = SSMD__RESULT_REPLY__INIT;

	r.has_running = 1;
	r.running = running != 0;
	fetched_send(c, &r, 0, NULL);
}

/* A resend that waited for the first execution gets its reply; so does a
 * `result` request that waited for it. */
static void waiter_reply(void *waiter, const void *reply, size_t len)
{
	struct ctx *c = waiter;

	if (c && c->fetching)
		result_send(c, reply, len);
	else if (c)
		ctx_send(c, reply, len);
}

/* The job of c's request finished (scheduler or store thread). */
static void job_reply(void *arg, const void *reply, size_t len)
{
	struct ctx *c = arg;

	/* Without a reply (out of memory) the entry is dropped, so a retry
	 * runs afresh; waiters go back to receiving. */
	rcache_finish(c->srv->cache, c->client_id, c->request_id, reply, len,
		      reply != NULL, waiter_reply);
	ctx_send(c, reply, len);
}

/* Answers c with an error without running anything. */
static void ctx_error(struct ctx *c, const char *request_id, int code,
		      const char *message)
{
	void *buf;
	size_t len;

	if (job_error_pack(request_id, code, message, &buf, &len)) {
		ctx_recv(c);
		return;
	}
	ctx_send(c, buf, len);
	free(buf);
}

/* `result`: the reply of an earlier request, from the request cache (not
 * itself cached: it changes nothing and may be asked again); one still
 * running is waited for. With wait = false only whether it still runs. */
static void result_request(struct ctx *c, const Ssmd__Request *req)
{
	const Ssmd__ResultRequest *q = req->result;
	const char *cid = q->client_id ? q->client_id : req->client_id;
	const int wait = !q->has_wait || q->wait;
	void *cached = NULL;
	size_t len = 0;
	int state, rc;

	snprintf(c->request_id, sizeof(c->request_id), "%s", req->request_id);
	if (!q->request_id || !q->request_id[0] ||
	    strlen(q->request_id) > PROTO_MAX_ID_LEN) {
		ctx_error(c, req->request_id, SSMD_EINVAL,
			  "result needs the request_id (1..128 bytes) of an earlier request");
		return;
	}
	/* As a waiter, c may be answered from another thread at once. */
	c->state = CTX_WAIT;
	c->fetching = 1;
	rc = wait ? rcache_lookup(c->srv->cache, cid, q->request_id, c, &cached, &len,
				  &state)
		  : rcache_lookup(c->srv->cache, cid, q->request_id, NULL, NULL, NULL,
				  &state);
	if (rc) {
		c->fetching = 0;
		ctx_error(c, req->request_id, rc, ssmd_errmsg());
	} else if (!wait) {
		running_send(c, state == RCACHE_PENDING);
	} else if (state == RCACHE_DONE) {
		result_send(c, cached, len);
		free(cached);
	}
	/* RCACHE_PENDING and waiting: waiter_reply() answers when it
	 * finishes. */
}

static void ctx_request(struct ctx *c, nng_msg *msg)
{
	Ssmd__Request *req = NULL;
	struct job *j;
	void *cached;
	size_t len;
	int state, rc;

	rc = proto_request_decode(nng_msg_body(msg), nng_msg_len(msg), &req);
	nng_msg_free(msg);
	if (rc) {
		log_debug("bad request: %s", ssmd_errmsg());
		ctx_error(c, req ? req->request_id : "", rc, ssmd_errmsg());
		proto_request_free(req);
		return;
	}
	if (req->op_case == SSMD__REQUEST__OP_RESULT) {
		result_request(c, req);
		proto_request_free(req);
		return;
	}
	snprintf(c->client_id, sizeof(c->client_id), "%s",
		 req->client_id ? req->client_id : "");
	snprintf(c->request_id, sizeof(c->request_id), "%s", req->request_id);
	/* WAIT before the cache sees c: as a waiter, c may be answered from
	 * another thread at once, and that send must not be overwritten. */
	c->state = CTX_WAIT;
	rc = rcache_begin(c->srv->cache, c->client_id, c->request_id, c, &cached,
			  &len, &state);
	if (rc) {
		ctx_error(c, req->request_id, rc, ssmd_errmsg());
		proto_request_free(req);
		return;
	}
	if (state == RCACHE_DONE) {
		log_debug("request %s answered from the cache", c->request_id);
		proto_request_free(req);
		ctx_send(c, cached, len);
		free(cached);
		return;
	}
	if (state == RCACHE_PENDING) {
		log_debug("request %s is running; the resend waits for it",
			  c->request_id);
		proto_request_free(req);
		return;
	}
	log_debug("request %s: %s", c->request_id, proto_op_name(req));
	rc = job_alloc(req, job_reply, c, &j);
	if (!rc) {
		rc = sched_submit(c->srv->sched, j);
		if (rc)
			job_free(j);
	}
	if (rc) {
		/* Not executed: a retry must run afresh, so forget it. */
		void *buf;
		if (job_error_pack(c->request_id, rc, ssmd_errmsg(), &buf, &len)) {
			rcache_finish(c->srv->cache, c->client_id, c->request_id,
				      NULL, 0, 0, NULL);
			ctx_recv(c);
			return;
		}
		rcache_finish(c->srv->cache, c->client_id, c->request_id, buf, len,
			      0, waiter_reply);
		ctx_send(c, buf, len);
		free(buf);
	}
}

static void ctx_cb(void *arg)
{
	struct ctx *c = arg;
	int rv = nng_aio_result(c->aio);

	switch (c->state) {
	case CTX_RECV:
		if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
			return;
		if (rv) {
			log_warn("receive failed: %s", nng_strerror(rv));
			ctx_recv(c);
			return;
		}
		ctx_request(c, nng_aio_get_msg(c->aio));
		return;
	case CTX_SEND:
		if (rv) {
			/* The client went away; its reply stays in the cache. */
			nng_msg_free(nng_aio_get_msg(c->aio));
			if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
				return;
			log_debug("reply not delivered: %s", nng_strerror(rv));
		}
		ctx_recv(c);
		return;
	case CTX_WAIT:
		return;
	}
}

/* ------------------------------------------------ jobs endpoint (PULL) -- */

/* Publishes a packed Reply as the result event of a pushed request. */
static void push_publish(server *srv, const char *request_id, const void *reply,
			 size_t len)
{
	Ssmd__Event ev = SSMD__EVENT__INIT;
	Ssmd__Reply *r = reply ? ssmd__reply__unpack(NULL, len, reply) : NULL;
	void *frame;
	size_t flen;

	if (!r) {
		log_error("request %s: result not published (out of memory)",
			  request_id);
		return;
	}
	ev.request_id = (char *)request_id;
	ev.has_seq = ev.has_done = ev.has_code = 1;
	ev.done = 1;
	ev.code = r->code;
	ev.reply = r;
	if (proto_event_frame(request_id, &ev, &frame, &flen) == SSMD_OK) {
		server_publish(srv, frame, flen);
		free(frame);
	}
	ssmd__reply__free_unpacked(r, NULL);
}

/* Publishes an error result for a pushed request that never ran. */
static void push_error(server *srv, const char *request_id, int code,
		       const char *message)
{
	void *buf;
	size_t len;

	if (!request_id || !request_id[0]) {
		log_warn("pushed request dropped (no request ID to answer under): %s",
			 message);
		return;
	}
	if (job_error_pack(request_id, code, message, &buf, &len) == SSMD_OK) {
		push_publish(srv, request_id, buf, len);
		free(buf);
	}
}

/* The job of a pushed request finished. */
static void push_reply(void *arg, const void *reply, size_t len)
{
	struct push *p = arg;

	rcache_finish(p->srv->cache, p->client_id, p->request_id, reply, len,
		      reply != NULL, waiter_reply);
	push_publish(p->srv, p->request_id, reply, len);
	free(p);
}

static void push_request(server *srv, nng_msg *msg)
{
	Ssmd__Request *req = NULL;
	struct push *p = NULL;
	struct job *j;
	void *cached;
	size_t len;
	int state, rc;

	rc = proto_request_decode(nng_msg_body(msg), nng_msg_len(msg), &req);
	nng_msg_free(msg);
	if (rc) {
		push_error(srv, req ? req->request_id : NULL, rc, ssmd_errmsg());
		proto_request_free(req);
		return;
	}
	rc = rcache_begin(srv->cache, req->client_id, req->request_id, NULL,
			  &cached, &len, &state);
	if (rc) {
		push_error(srv, req->request_id, rc, ssmd_errmsg());
		proto_request_free(req);
		return;
	}
	if (state != RCACHE_NEW) {
		/* Pushed again: republish a finished result; one in progress
		 * publishes its own. */
		if (state == RCACHE_DONE) {
			push_publish(srv, req->request_id, cached, len);
			free(cached);
		}
		proto_request_free(req);
		return;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		rc = ssmd_err_set(SSMD_ENOMEM, "pushed request");
	} else {
		p->srv = srv;
		snprintf(p->client_id, sizeof(p->client_id), "%s",
			 req->client_id ? req->client_id : "");
		snprintf(p->request_id, sizeof(p->request_id), "%s", req->request_id);
	}
	if (!rc && !(rc = job_alloc(req, push_reply, p, &j))) {
		req = NULL; /* the job owns it now */
		if ((rc = sched_submit(srv->sched, j)))
			job_free(j);
		else
			return;
	}
	/* Not executed: publish the error and forget the request, so that
	 * pushing it again runs it. */
	{
		void *buf;
		const char *rid = p ? p->request_id : req->request_id;
		char saved[PROTO_MAX_ID_LEN + 1], client[PROTO_MAX_ID_LEN + 1];
		snprintf(saved, sizeof(saved), "%s", rid);
		snprintf(client, sizeof(client), "%s",
			 p ? p->client_id : (req->client_id ? req->client_id : ""));
		if (job_error_pack(saved, rc, ssmd_errmsg(), &buf, &len) == SSMD_OK) {
			rcache_finish(srv->cache, client, saved, buf, len, 0, waiter_reply);
			push_publish(srv, saved, buf, len);
			free(buf);
		} else {
			rcache_finish(srv->cache, client, saved, NULL, 0, 0, waiter_reply);
		}
	}
	proto_request_free(req);
	free(p);
}

static void pull_cb(void *arg)
{
	server *srv = arg;
	int rv = nng_aio_result(srv->pull_aio);

	if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
		return;
	if (rv)
		log_warn("jobs endpoint: receive failed: %s", nng_strerror(rv));
	else
		push_request(srv, nng_aio_get_msg(srv->pull_aio));
	nng_recv_aio(srv->pull, srv->pull_aio);
}

int server_start(server *srv, sched *sc, rcache *cache)
{
	int rv;

	srv->sched = sc;
	srv->cache = cache;
	for (int i = 0; i < srv->n_ctxs; i++) {
		struct ctx *c = &srv->ctxs[i];
		c->srv = srv;
		if ((rv = nng_aio_alloc(&c->aio, ctx_cb, c)) ||
		    (rv = nng_ctx_open(&c->ctx, srv->rep))) {
			nng_aio_free(c->aio);
			c->aio = NULL;
			return nng_to_ssmd(rv, "cannot open", "a REP context");
		}
		ctx_recv(c);
	}
	if (!srv->pull_open)
		return SSMD_OK;
	if ((rv = nng_aio_alloc(&srv->pull_aio, pull_cb, srv)))
		return nng_to_ssmd(rv, "cannot start", "the jobs endpoint");
	nng_recv_aio(srv->pull, srv->pull_aio);
	return SSMD_OK;
}

void server_publish(void *arg, const void *frame, size_t len)
{
	server *srv = arg;
	int rv = nng_send(srv->pub, (void *)frame, len, NNG_FLAG_NONBLOCK);

	if (rv && rv != NNG_EAGAIN)
		log_debug("event not published: %s", nng_strerror(rv));
}

void server_close(server *srv)
{
	if (!srv)
		return;
	for (int i = 0; i < srv->n_ctxs; i++)
		if (srv->ctxs[i].aio)
			nng_aio_stop(srv->ctxs[i].aio);
	if (srv->pull_aio)
		nng_aio_stop(srv->pull_aio);
	if (srv->rep_open)
		nng_close(srv->rep);
	if (srv->pull_open)
		nng_close(srv->pull);
	if (srv->pub_open)
		nng_close(srv->pub);
	nng_aio_free(srv->pull_aio);
	for (int i = 0; i < srv->n_ctxs; i++) {
		if (srv->ctxs[i].aio) {
			nng_aio_free(srv->ctxs[i].aio);
			nng_ctx_close(srv->ctxs[i].ctx);
		}
	}
	free(srv->ctxs);
	free(srv);
}
