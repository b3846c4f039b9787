/*
 * test_cancel.c — a replay merge running when the scheduler stops, in-process
 * on the CPU backend (tiny-mamba fixture).
 *
 * The replay feeds a long transcript (N_LONG tokens, one token per scheduler
 * step) onto a short state; once the stats show tokens flowing, the
 * scheduler is stopped. The merge then ends canceled (SSMD_ECANCELED, and no
 * merged state is stored) — or, if it won the race, complete (a merge state
 * holding both sources' tokens). Either way its reply comes exactly once
 * and the run stays clean under ASan and ThreadSanitizer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "sched_harness.h"
#include "testutil.h"

#define N_SHORT 5
#define N_LONG 4000

static char tmp[] = "/tmp/ssmd-test-cancel-XXXXXX";

static uint64_t tokens_total(sched *s)
{
	Ssmd__Reply *r = harness_stats(s);
	uint64_t n = r->code == 0 ? r->stats->tokens_total : 0;

	harness_reply_free(r);
	return n;
}

/* A session of n random tokens, snapshotted; returns the state ID. */
static char *stored(sched *s, size_t n, uint64_t *rng)
{
	int32_t *t = malloc(n * sizeof(*t));
	char *sid = harness_open(s, NULL, 0, 0), *id = NULL;

	for (size_t i = 0; i < n; i++)
		t[i] = (int32_t)(test_splitmix64(rng) % 512);
	if (sid && harness_append(s, sid, t, n) == SSMD_OK)
		id = harness_snapshot(s, sid, NULL);
	CHECK(id != NULL, "a state of %zu tokens stored", n);
	if (sid)
		harness_close(s, sid);
	free(sid);
	free(t);
	return id;
}

static void test_replay_stop(const char *fixtures)
{
	char dir[1024], path[1200];
	const char *src[2];
	uint64_t rng = 3, before;
	struct harness_box box;
	ssm_model *m;
	store *st;
	cfg c;
	sched *s;
	char *a, *b;

	snprintf(dir, sizeof(dir), "%s/tiny-mamba", fixtures);
	if (ssm_model_load(dir, &m)) {
		SKIP("cannot load %s: %s", dir, ssmd_errmsg());
		return;
	}
	snprintf(path, sizeof(path), "%s/lib.db", tmp);
	CHECK_RC(store_open(path, NULL, &st), SSMD_OK);
	cfg_init(&c);
	cfg_set(&c, "backend", harness_backend_name());
	c.slots = 2;
	c.prefill_chunk = 1;
	c.step_tokens = 1; /* the replay takes N_LONG steps */
	s = harness_start(&c, m, NULL, st, NULL);
	a = stored(s, N_SHORT, &rng);
	b = stored(s, N_LONG, &rng);
	if (!a || !b)
		abort();

	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__MergeRequest mq = SSMD__MERGE_REQUEST__INIT;
	src[0] = a;
	src[1] = b;
	mq.sources = (char **)src;
	mq.n_sources = 2;
	mq.mode = "replay";
	q.op_case = SSMD__REQUEST__OP_MERGE;
	q.merge = &mq;
	before = tokens_total(s);
	harness_box_init(&box);
	CHECK_RC(harness_submit(s, &q, "replay", &box), SSMD_OK);
	/* Until the replay consumes tokens (at most 60 s), then stop. */
	for (int i = 0; i < 6000 && tokens_total(s) == before &&
			!harness_box_done(&box); i++)
		usleep(10000);
	sched_free(s);

	Ssmd__Reply *r = harness_box_wait(&box);
	store_state_info *v = NULL;
	size_t n = 0;
	char cursor[STORE_ID_SIZE];
	store_filter f;
	memset(&f, 0, sizeof(f));
	f.kind = STORE_KIND_MERGE;
	CHECK_RC(store_state_list(st, &f, &v, &n, cursor), SSMD_OK);
	CHECK(r->code == SSMD_ECANCELED || r->code == SSMD_OK,
	      "the replay merge ends canceled or complete (code %u: %s)", r->code,
	      r->message ? r->message : "");
	if (r->code == SSMD_ECANCELED)
		CHECK(n == 0, "a canceled merge stores no merged state (%zu)", n);
	else
		CHECK(n == 1 && v[0].n_tokens == N_SHORT + N_LONG,
		      "a complete merge stores the state of both sources' tokens");
	store_info_array_free(v, n);
	harness_reply_free(r);
	free(a);
	free(b);
	cfg_fini(&c);
	store_close(st);
	ssm_model_free(m);
}

int main(void)
{
	const char *fixtures = getenv("SSMD_SHARED_FIXTURES");

	if (!fixtures) {
		SKIP("SSMD_SHARED_FIXTURES is not set");
		return check_summary("cancel");
	}
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	test_replay_stop(fixtures);
	test_dir_remove(tmp);
	return check_summary("cancel");
}
