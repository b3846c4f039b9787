/*
 * test_diskfull.c — the scheduler when the state library is full, in-process
 * on the CPU backend (tiny-mamba fixture).
 *
 * A session's eviction checkpoint fails with SSMD_ENOSPC; the session keeps
 * that state in memory and goes on, unsaved. When room comes back, a session
 * with no newer progress must still reach the library before it ends:
 *   - at shutdown (SIGTERM stores every session's unsaved state), and
 *   - when it expires after idle_timeout; and an idle session whose expiry
 *     checkpoint fails (library still full) stays open with its state.
 * A close with a snapshot that cannot be stored fails and leaves the session
 * open with its state (as the error says), so closing it again once there is
 * room stores it. The stats reply counts each refused put.
 * Checked against what the test itself sent: the state the library lists for
 * the session holds exactly the appended tokens (count and transcript).
 *
 * The library is made full with store_opts.max_bytes set to the size of a
 * fresh file, then filled with states written directly: incompressible
 * (random) ones until SSMD_ENOSPC, then all-zero ones (which compress to a
 * few hundred bytes) until SSMD_ENOSPC again, so no page keeps room for a
 * session's state. Deleting the fillers makes room again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "sched_harness.h"
#include "testutil.h"

#define N_APPEND 20

static char tmp[] = "/tmp/ssmd-test-diskfull-XXXXXX";
static struct harness_fillers fillers = {.rng = 7};
static uint64_t rng = 7;

/* A full library at path (fresh): max_bytes is the size of the new file. */
static store *full_store(const char *path, const ssm_model *m)
{
	store *st = NULL;
	store_totals t;
	store_opts o;

	memset(&o, 0, sizeof(o));
	if (store_open(path, NULL, &st) || store_total_size(st, &t))
		abort();
	store_close(st);
	o.max_bytes = t.file_bytes;
	if (store_open(path, &o, &st))
		abort();
	fillers.n = 0;
	CHECK_RC(harness_fill(&fillers, st, m, 1), SSMD_ENOSPC);
	CHECK_RC(harness_fill(&fillers, st, m, 0), SSMD_ENOSPC);
	return st;
}

/* Open sessions, as the stats reply counts them (-1: no reply). */
static int open_sessions(sched *s)
{
	Ssmd__Reply *r = harness_stats(s);
	int open = r->code == 0 ? (int)r->stats->sessions : -1;

	harness_reply_free(r);
	return open;
}

/* States the library refused, as the stats reply counts them (-1: no
 * reply). */
static long long store_failures(sched *s)
{
	Ssmd__Reply *r = harness_stats(s);
	long long n = r->code == 0 && r->stats->has_store_failures
			      ? (long long)r->stats->store_failures
			      : -1;

	harness_reply_free(r);
	return n;
}

/* Waits (up to 60 s) until n sessions are open. */
static int wait_open_sessions(sched *s, int n)
{
	for (int tries = 0; tries < 600; tries++) {
		if (open_sessions(s) == n)
			return 1;
		usleep(100000);
	}
	return 0;
}

static void room_make(store *st)
{
	int bad = harness_unfill(&fillers, st);

	CHECK(bad == 0, "fillers deleted (%d failed: %s)", bad, ssmd_errmsg());
}

/* Opens x and appends tokens, then opens y and appends, which evicts x from
 * the one slot: x's checkpoint fails (the library is full). A library
 * request after that runs on the store thread after the failed put. */
static char *evicted_unsaved(sched *s, const int32_t *tokens)
{
	char *x = harness_open(s, NULL, 0, 0), *y = harness_open(s, NULL, 0, 0);
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__StatesRequest sr = SSMD__STATES_REQUEST__INIT;
	Ssmd__Reply *r;

	CHECK(x && y, "two sessions open");
	if (!x || !y)
		abort();
	CHECK_RC(harness_append(s, x, tokens, N_APPEND), SSMD_OK);
	CHECK_RC(harness_append(s, y, tokens, 3), SSMD_OK);
	sr.session = x;
	q.op_case = SSMD__REQUEST__OP_STATES;
	q.states = &sr;
	r = harness_call(s, &q);
	CHECK(r->code == 0 && r->states->n_states == 0,
	      "nothing of the sessions could be stored (library full)");
	harness_reply_free(r);
	/* y is not needed: close it without a snapshot. */
	CHECK_RC(harness_close(s, y), SSMD_OK);
	free(y);
	return x;
}

/* The session table (what a restart resumes) names a state of session x
 * that holds exactly its N_APPEND tokens. */
static void check_row(store *st, const char *x, const char *when)
{
	store_session *v = NULL;
	size_t n = 0;
	int ok = 0;

	CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
	for (size_t i = 0; i < n; i++) {
		store_state_info info;
		if (strcmp(v[i].id, x) != 0 || !v[i].state[0])
			continue;
		memset(&info, 0, sizeof(info));
		ok = store_state_info_get(st, v[i].state, &info) == SSMD_OK &&
		     info.n_tokens == N_APPEND;
		store_state_info_fini(&info);
	}
	free(v);
	CHECK(ok, "%s: the session table resumes the session on a state of its %d tokens",
	      when, N_APPEND);
}

/* The newest state written by session x (its metadata names it) holds
 * exactly the appended tokens: count and transcript. */
static void check_saved(store *st, const char *x, const int32_t *tokens,
			const char *when)
{
	store_state_info *list = NULL;
	size_t nl = 0, k = 0;
	char cursor[STORE_ID_SIZE];
	store_filter f;
	int32_t *tr = NULL;
	size_t ntr = 0;

	memset(&f, 0, sizeof(f));
	f.newest_first = 1;
	CHECK_RC(store_state_list(st, &f, &list, &nl, cursor), SSMD_OK);
	for (k = 0; k < nl; k++)
		if (list[k].metadata && strstr(list[k].metadata, x))
			break;
	if (k < nl)
		CHECK_RC(store_transcript(st, list[k].id, &tr, &ntr), SSMD_OK);
	CHECK(k < nl && list[k].n_tokens == N_APPEND && ntr == N_APPEND &&
	      memcmp(tr, tokens, N_APPEND * sizeof(*tokens)) == 0,
	      "%s: the session's state holds its %d appended tokens, transcript included",
	      when, N_APPEND);
	free(tr);
	store_info_array_free(list, nl);
}

/* Closes sid with a snapshot; returns the reply's code and, on success, the
 * state ID in id. */
static int close_snapshot(sched *s, const char *sid, char id[STORE_ID_SIZE])
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__CloseRequest c = SSMD__CLOSE_REQUEST__INIT;
	Ssmd__Reply *r;
	int code;

	c.session = (char *)sid;
	c.has_snapshot = c.snapshot = 1;
	q.op_case = SSMD__REQUEST__OP_CLOSE;
	q.close = &c;
	r = harness_call(s, &q);
	code = (int)r->code;
	id[0] = 0;
	if (!code && r->state_ref && r->state_ref->state_id)
		snprintf(id, STORE_ID_SIZE, "%s", r->state_ref->state_id);
	harness_reply_free(r);
	return code;
}

/* A close whose snapshot fails, from a dirty session (its put carries the
 * reply) and from a clean one whose last checkpoint failed (the reply waits
 * for that put): the session stays open with its state. */
static void test_close(const ssm_model *m, cfg *c, const int32_t *tokens,
		       int dirty)
{
	char path[1200], id[STORE_ID_SIZE];
	const char *when = dirty ? "close of a dirty session"
				 : "close after a failed checkpoint";
	store_state_info info;
	int32_t *tr = NULL;
	size_t ntr = 0;
	store *st;
	sched *s;
	char *x;

	snprintf(path, sizeof(path), "%s/close-%d.db", tmp, dirty);
	st = full_store(path, m);
	s = harness_start(c, m, NULL, st, NULL);
	if (dirty) {
		x = harness_open(s, NULL, 0, 0);
		CHECK_RC(harness_append(s, x, tokens, N_APPEND), SSMD_OK);
	} else {
		x = evicted_unsaved(s, tokens);
	}
	CHECK_RC(close_snapshot(s, x, id), SSMD_ENOSPC);
	CHECK(store_failures(s) >= 1, "%s: the stats count the refused put", when);
	room_make(st);
	CHECK_RC(close_snapshot(s, x, id), SSMD_OK);
	memset(&info, 0, sizeof(info));
	CHECK(id[0] && store_state_info_get(st, id, &info) == SSMD_OK &&
	      info.n_tokens == N_APPEND,
	      "%s: closed again once there is room, its state holds its %d tokens",
	      when, N_APPEND);
	store_state_info_fini(&info);
	if (id[0])
		CHECK_RC(store_transcript(st, id, &tr, &ntr), SSMD_OK);
	CHECK(ntr == N_APPEND && memcmp(tr, tokens, N_APPEND * sizeof(*tokens)) == 0,
	      "%s: its transcript is the appended tokens", when);
	free(tr);
	CHECK_RC(harness_close(s, x), SSMD_ENOENT);
	sched_free(s);
	free(x);
	store_close(st);
}

static void test_full(const char *fixtures)
{
	char dir[1024], path[1200];
	int32_t tokens[N_APPEND];
	ssm_model *m;
	store *st;
	cfg c;
	sched *s;
	char *x;

	snprintf(dir, sizeof(dir), "%s/tiny-mamba", fixtures);
	if (ssm_model_load(dir, &m)) {
		SKIP("cannot load %s: %s", dir, ssmd_errmsg());
		return;
	}
	for (int i = 0; i < N_APPEND; i++)
		tokens[i] = (int32_t)(test_splitmix64(&rng) % 512);
	cfg_init(&c);
	cfg_set(&c, "backend", harness_backend_name());
	c.slots = 1;
	c.checkpoint_every = 0;

	/* Shutdown: the kept state is stored once there is room. */
	snprintf(path, sizeof(path), "%s/shutdown.db", tmp);
	st = full_store(path, m);
	s = harness_start(&c, m, NULL, st, NULL);
	x = evicted_unsaved(s, tokens);
	room_make(st);
	sched_free(s);
	check_saved(st, x, tokens, "shutdown");
	check_row(st, x, "shutdown");
	free(x);
	store_close(st);

	test_close(m, &c, tokens, 1);
	test_close(m, &c, tokens, 0);

	/* Idle expiry: the same, when the session is closed for idleness. */
	snprintf(path, sizeof(path), "%s/expire.db", tmp);
	st = full_store(path, m);
	c.idle_timeout = 1;
	s = harness_start(&c, m, NULL, st, NULL);
	x = evicted_unsaved(s, tokens);
	room_make(st);
	CHECK(wait_open_sessions(s, 0), "the idle session expired");
	sched_free(s);
	check_saved(st, x, tokens, "idle expiry");
	free(x);
	store_close(st);

	/* Idle expiry while the library is still full: the session's
	 * checkpoint (its unsaved appends) fails, so it must stay open with
	 * that state, and expire, stored, once there is room. */
	snprintf(path, sizeof(path), "%s/expire-full.db", tmp);
	st = full_store(path, m);
	s = harness_start(&c, m, NULL, st, NULL);
	x = harness_open(s, NULL, 0, 0);
	if (!x)
		abort();
	CHECK(harness_append(s, x, tokens, N_APPEND) == 0, "append");
	/* the idle expiry is tried and its checkpoint refused (up to 60 s) */
	for (int i = 0; i < 600 && store_failures(s) < 1; i++)
		usleep(100000);
	CHECK(store_failures(s) >= 1, "the expiry's checkpoint was tried and refused");
	CHECK(open_sessions(s) == 1,
	      "a session whose expiry checkpoint cannot be stored stays open");
	room_make(st);
	CHECK(wait_open_sessions(s, 0), "the idle session expired once there was room");
	sched_free(s);
	check_saved(st, x, tokens, "idle expiry of unsaved appends");
	free(x);
	store_close(st);

	cfg_fini(&c);
	ssm_model_free(m);
}

int main(void)
{
	const char *fixtures = getenv("SSMD_SHARED_FIXTURES");

	if (!fixtures) {
		SKIP("SSMD_SHARED_FIXTURES is not set");
		return check_summary("diskfull");
	}
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	test_full(fixtures);
	test_dir_remove(tmp);
	return check_summary("diskfull");
}
