/*
 * test_crash.c — kill -9 of the daemon in the middle of a stream of
 * snapshots, several times over one state library. After every restart,
 * every state whose ID the daemon had returned (acknowledged) must still be
 * listed with its token count, load into a session (the store verifies its
 * checksum and the daemon its model fingerprint on the way), and export;
 * and the library must keep accepting new snapshots.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "harness.h"

#define ROUNDS 4
#define MAX_ACKED 20000

typedef struct acked {
	char id[SSMD_ID_MAX];
	uint64_t n_tokens;
} acked;

static acked acks[MAX_ACKED];
static size_t n_acks;

typedef struct killer {
	e2e_daemon *d;
	unsigned delay_ms;
} killer;

static void *killer_main(void *arg)
{
	killer *k = arg;

	usleep(k->delay_ms * 1000u);
	e2e_daemon_kill(k->d);
	return NULL;
}

/* Appends and snapshots until the daemon is killed under us. */
static size_t snapshot_until_killed(e2e_daemon *d, unsigned delay_ms)
{
	ssmd_client *c = NULL;
	ssmd_session s;
	ssmd_state_ref r;
	pthread_t th;
	killer k = {d, delay_ms};
	size_t before = n_acks;
	int32_t toks[3];

	/* A short reply timeout: the request in flight at the kill never gets
	 * one. */
	if (e2e_connect(d, 3000, &c) != SSMD_OK ||
	    ssmd_session_open(c, NULL, &s) != SSMD_OK) {
		CHECK(0, "no session before the kill: %s", ssmd_errmsg());
		ssmd_client_close(c);
		return 0;
	}
	pthread_create(&th, NULL, killer_main, &k);
	for (unsigned i = 0; n_acks < MAX_ACKED; i++) {
		for (int j = 0; j < 3; j++)
			toks[j] = (int32_t)((i * 3 + j) * 7919 % 512);
		if (ssmd_append_tokens(c, s.id, toks, 3, NULL) != SSMD_OK)
			break;
		if (ssmd_session_snapshot(c, s.id, NULL, NULL, &r) != SSMD_OK)
			break;
		acks[n_acks] = (acked){.n_tokens = r.n_tokens};
		memcpy(acks[n_acks].id, r.id, SSMD_ID_MAX);
		n_acks++;
	}
	pthread_join(th, NULL);
	ssmd_client_close(c);
	return n_acks - before;
}

/* Every acknowledged state is there and loads. */
static void verify_all(e2e_daemon *d, int round)
{
	ssmd_client *c = NULL;
	size_t bad_info = 0, bad_open = 0, bad_export = 0;

	if (e2e_connect(d, 0, &c) != SSMD_OK) {
		CHECK(0, "round %d: no connection after restart", round);
		return;
	}
	for (size_t i = 0; i < n_acks; i++) {
		ssmd_state_list *l = NULL;
		ssmd_session s;
		void *data = NULL;
		size_t len = 0;

		if (ssmd_state_get(c, acks[i].id, &l) != SSMD_OK ||
		    l->states[0].n_tokens != acks[i].n_tokens) {
			if (bad_info++ < 5)
				fprintf(stderr, "state %s: %s\n", acks[i].id,
					ssmd_errmsg());
		}
		ssmd_state_list_free(l);

		ssmd_open_args oa = {.from = acks[i].id};
		if (ssmd_session_open(c, &oa, &s) != SSMD_OK ||
		    s.n_tokens != acks[i].n_tokens) {
			if (bad_open++ < 5)
				fprintf(stderr, "open from %s: %s\n", acks[i].id,
					ssmd_errmsg());
		} else {
			ssmd_session_close(c, s.id, 0, NULL, NULL, NULL);
		}
		/* Export reads the payload back through its checksum: sample
		 * every 8th state to keep the test short. */
		if (i % 8 == 0) {
			if (ssmd_state_export(c, acks[i].id, &data, &len) != SSMD_OK ||
			    len == 0)
				bad_export++;
			ssmd_free(data);
		}
	}
	CHECK(bad_info == 0, "round %d: %zu of %zu acknowledged states missing or "
	      "changed", round, bad_info, n_acks);
	CHECK(bad_open == 0, "round %d: %zu of %zu acknowledged states do not load",
	      round, bad_open, n_acks);
	CHECK(bad_export == 0, "round %d: %zu exports failed", round, bad_export);

	/* The library still takes new states. */
	ssmd_session s;
	ssmd_state_ref r;
	int32_t t = 5;
	CHECK(ssmd_session_open(c, NULL, &s) == SSMD_OK &&
	      ssmd_append_tokens(c, s.id, &t, 1, NULL) == SSMD_OK &&
	      ssmd_session_snapshot(c, s.id, NULL, NULL, &r) == SSMD_OK,
	      "round %d: no snapshot after restart: %s", round, ssmd_errmsg());
	ssmd_client_close(c);
}

int main(void)
{
	e2e_daemon d;
	unsigned seed;

	if (!e2e_have_daemon()) {
		SKIP("ssmd or ssm-mkmodel not built");
		return check_summary("e2e_crash");
	}
	e2e_random(&seed, sizeof seed);
	printf("kill delays from seed %u\n", seed);
	e2e_daemon_init(&d, "crash", e2e_tiny_model());
	for (int round = 1; round <= ROUNDS; round++) {
		if (e2e_daemon_start(&d) != 0) {
			CHECK(0, "round %d: daemon did not start", round);
			break;
		}
		if (round > 1)
			verify_all(&d, round - 1);
		/* Kill after 150..650 ms: some dozens of snapshots, the kill
		 * landing anywhere in an append, a compression or a commit. */
		size_t got = snapshot_until_killed(&d, 150 + rand_r(&seed) % 500);
		printf("round %d: %zu states acknowledged before kill -9\n", round, got);
		CHECK(got > 0, "round %d: nothing acknowledged before the kill", round);
	}
	if (e2e_daemon_start(&d) == 0) {
		verify_all(&d, ROUNDS);
		CHECK(e2e_daemon_stop(&d) == 0, "daemon did not exit cleanly");
	} else {
		CHECK(0, "daemon did not start after the last kill");
	}
	return check_summary("e2e_crash");
}
