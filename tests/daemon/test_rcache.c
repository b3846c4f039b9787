/*
 * test_rcache.c — the request cache: first execution, replay of a finished
 * reply, attaching to one in progress, eviction order, forgetting on demand.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "daemon/rcache.h"

struct seen {
	int calls;
	char reply[64];
};

static void on_reply(void *waiter, const void *reply, size_t len)
{
	struct seen *s = waiter;

	s->calls++;
	memcpy(s->reply, reply, len < sizeof(s->reply) ? len : sizeof(s->reply) - 1);
}

int main(void)
{
	rcache *c = NULL;
	void *reply = NULL;
	size_t len = 0;
	int state = -1;
	struct seen w1 = {0}, w2 = {0};
	char id[32];

	CHECK_RC(rcache_alloc(0, 1000, &c), SSMD_EINVAL);
	CHECK_RC(rcache_alloc(3, 1000, &c), SSMD_OK);

	/* First sight: execute. */
	CHECK_RC(rcache_begin(c, "cli", "r1", &w1, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_NEW, "first sight is NEW, got %d", state);
	/* Resent while in progress: attached, not executed. */
	CHECK_RC(rcache_begin(c, "cli", "r1", &w1, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_PENDING, "resend in progress is PENDING, got %d", state);
	CHECK_RC(rcache_begin(c, "cli", "r1", &w2, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_PENDING, "second resend is PENDING");
	/* Same request ID from another client is a different request. */
	CHECK_RC(rcache_begin(c, "other", "r1", NULL, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_NEW, "other client's r1 is NEW");
	/* NULL client is the empty client, distinct from "cli". */
	CHECK_RC(rcache_begin(c, NULL, "r1", NULL, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_NEW, "anonymous r1 is NEW");

	/* A NULL waiter (a pushed request) is told PENDING, not attached. */
	CHECK_RC(rcache_begin(c, "cli", "r1", NULL, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_PENDING, "NULL waiter: PENDING");
	CHECK_RC(rcache_finish(c, "cli", "r1", "answer", 7, 1, on_reply), SSMD_OK);
	CHECK(w1.calls == 1 && w2.calls == 1, "both waiters called once (%d, %d)",
	      w1.calls, w2.calls);
	CHECK(strcmp(w1.reply, "answer") == 0, "waiter got the reply");
	CHECK_RC(rcache_finish(c, "cli", "r1", "again", 6, 1, on_reply), SSMD_ENOENT);
	CHECK(w1.calls == 1, "a finished entry is not finished twice");

	/* Resent after completion: the stored reply. */
	CHECK_RC(rcache_begin(c, "cli", "r1", NULL, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_DONE && len == 7 && memcmp(reply, "answer", 7) == 0,
	      "finished request answered from the cache");
	free(reply);

	/* Not remembered (e.g. a busy reply): the retry executes afresh. */
	CHECK_RC(rcache_finish(c, "other", "r1", "busy", 5, 0, on_reply), SSMD_OK);
	CHECK_RC(rcache_begin(c, "other", "r1", NULL, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_NEW, "forgotten reply executes again");
	CHECK_RC(rcache_finish(c, "other", "r1", "ok", 3, 1, NULL), SSMD_OK);
	CHECK_RC(rcache_finish(c, NULL, "r1", "anon", 5, 1, NULL), SSMD_OK);
	CHECK(rcache_size(c) == 3, "three finished replies kept, got %zu",
	      rcache_size(c));

	/* A fourth finished reply evicts the oldest (cli/r1). */
	CHECK_RC(rcache_begin(c, "cli", "r2", NULL, &reply, &len, &state), SSMD_OK);
	CHECK_RC(rcache_finish(c, "cli", "r2", "two", 4, 1, NULL), SSMD_OK);
	CHECK(rcache_size(c) == 3, "capacity holds at 3");
	CHECK_RC(rcache_begin(c, "cli", "r1", NULL, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_NEW, "the oldest reply was forgotten first");
	CHECK_RC(rcache_begin(c, "other", "r1", NULL, &reply, &len, &state), SSMD_OK);
	CHECK(state == RCACHE_DONE && len == 3, "a newer reply is still kept");
	free(reply);
	rcache_free(c);

	/* Many entries: every one of the last `capacity` is found. */
	CHECK_RC(rcache_alloc(100, 1 << 20, &c), SSMD_OK);
	for (int i = 0; i < 1000; i++) {
		snprintf(id, sizeof(id), "req-%d", i);
		rcache_begin(c, "c", id, NULL, &reply, &len, &state);
		rcache_finish(c, "c", id, id, strlen(id) + 1, 1, NULL);
	}
	int found = 0;
	for (int i = 900; i < 1000; i++) {
		snprintf(id, sizeof(id), "req-%d", i);
		rcache_begin(c, "c", id, NULL, &reply, &len, &state);
		if (state == RCACHE_DONE && strcmp(reply, id) == 0)
			found++;
		if (state == RCACHE_DONE)
			free(reply);
	}
	CHECK(found == 100, "last 100 of 1000 replies found, got %d", found);
	rcache_free(c);

	/* The byte budget: 3 replies of 40 bytes fit in 100 only two at a
	 * time; a reply over the budget is delivered but not kept. */
	char big[200];
	memset(big, 'x', sizeof(big));
	CHECK_RC(rcache_alloc(10, 100, &c), SSMD_OK);
	for (int i = 0; i < 3; i++) {
		snprintf(id, sizeof(id), "b%d", i);
		rcache_begin(c, "c", id, NULL, &reply, &len, &state);
		rcache_finish(c, "c", id, big, 40, 1, NULL);
	}
	CHECK(rcache_size(c) == 2 && rcache_bytes(c) == 80,
	      "byte budget keeps the newest two (%zu replies, %zu bytes)",
	      rcache_size(c), rcache_bytes(c));
	rcache_begin(c, "c", "b0", NULL, &reply, &len, &state);
	CHECK(state == RCACHE_NEW, "the oldest went first");
	rcache_finish(c, "c", "b0", big, 200, 1, NULL);
	CHECK(rcache_size(c) == 2 && rcache_bytes(c) == 80,
	      "a reply over the whole budget is not kept");
	rcache_begin(c, "c", "b0", NULL, &reply, &len, &state);
	CHECK(state == RCACHE_NEW, "so its retry runs again");
	rcache_finish(c, "c", "b0", big, 10, 1, NULL);

	/* Lookup (the result operation): never makes an entry. */
	{
		struct seen w3 = {0};
		CHECK_RC(rcache_lookup(c, "c", "unknown", &w3, &reply, &len, &state),
			 SSMD_ENOENT);
		CHECK_RC(rcache_begin(c, "c", "unknown", NULL, &reply, &len, &state),
			 SSMD_OK);
		CHECK(state == RCACHE_NEW, "a lookup of an unknown key leaves it unknown");
		CHECK_RC(rcache_lookup(c, "c", "unknown", &w3, &reply, &len, &state),
			 SSMD_OK);
		CHECK(state == RCACHE_PENDING, "a lookup of a running request is PENDING");
		rcache_finish(c, "c", "unknown", "done", 5, 1, on_reply);
		CHECK(w3.calls == 1 && strcmp(w3.reply, "done") == 0,
		      "a lookup's waiter gets the reply when it finishes");
		reply = NULL;
		CHECK_RC(rcache_lookup(c, "c", "unknown", NULL, &reply, &len, &state),
			 SSMD_OK);
		CHECK(state == RCACHE_DONE && len == 5 && reply &&
		      memcmp(reply, "done", 5) == 0,
		      "a lookup of a finished request returns a copy of its reply");
		free(reply);
		state = -1;
		CHECK_RC(rcache_lookup(c, "c", "unknown", NULL, NULL, NULL, &state), SSMD_OK);
		CHECK(state == RCACHE_DONE, "a state-only lookup of a finished request is DONE");
		CHECK_RC(rcache_lookup(c, "c", "never", NULL, NULL, NULL, &state), SSMD_ENOENT);
	}

	/* An unfinished entry is dropped by rcache_free without a call. */
	rcache_begin(c, "c", "open", &w1, &reply, &len, &state);
	rcache_free(c);
	rcache_free(NULL);
	return check_summary("rcache");
}
