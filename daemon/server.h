/*
 * server.h — the daemon's nng endpoints.
 *
 * A REP socket serves requests with a pool of contexts (one nng_ctx and one
 * nng_aio each), so many requests are in flight at once; the aio callbacks
 * never block: they decode the request, consult the request cache (a resent
 * request is answered from its first execution), and hand new work to the
 * scheduler; the reply is sent when the scheduler or the store thread
 * finishes the job. A PUB socket carries token-stream events. A PULL socket
 * takes the same requests fire-and-forget: each one's Reply is published on
 * the PUB socket, in an Event with `reply` set, under its request ID. Every
 * listener has NNG_OPT_RECVMAXSZ set; ipc:// listeners create their socket
 * file with mode 0600.
 *
 * Lifecycle: server_open() (binds both URLs) → server_start() (starts the
 * contexts) → ... → sched_stop() (so every job has replied) →
 * server_close().
 *
 * Threads: server_publish() from any thread; the rest from the main thread.
 */
#ifndef SSMD_SERVER_H
#define SSMD_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "rcache.h"
#include "scheduler.h"
#include "ssmd_err.h"

struct server_opts {
	const char *listen;     /* REP URL */
	const char *events;     /* PUB URL */
	const char *jobs;       /* PULL URL, or NULL / "off": no jobs endpoint */
	uint64_t max_message;   /* bytes; larger requests close their pipe */
	int contexts;           /* requests in flight */
};

typedef struct server server;

/* Opens and binds the three sockets. SSMD_EIO (with nng's message) when a URL
 * cannot be bound, SSMD_EINVAL on a malformed URL, SSMD_ENOMEM. */
int server_open(const struct server_opts *o, server **out);

/* Starts serving requests into sched, remembering replies in cache (both
 * borrowed; they outlive the server). */
int server_start(server *srv, sched *sc, rcache *cache);

/* Publishes an event frame; never blocks (nng drops for slow subscribers).
 * Matches sched_publish_fn; arg is the server. */
void server_publish(void *arg, const void *frame, size_t len);

/* Closes the sockets and frees the contexts; NULL is a no-op. Call after
 * sched_stop() so no job still holds a context. */
void server_close(server *srv);

#endif
