/*
 * test_paging.c — paging idle sessions through the host tier, in-process on
 * the CPU backend (tiny-mamba fixture).
 *
 * What is checked, and against what. Every token check is exact equality
 * with a direct run of the engine on a fresh one-slot backend (prefill the
 * prompt, then greedy decode), which is what a session never evicted emits:
 *   - page-ins served from the host tier: 12 sessions on 2 slots generating
 *     in turns; every page-in is a tier hit (none reads the library: the
 *     tier has room for all) and the tokens are exact; the same workload
 *     with the tier off reads every page-in from the library, also exact;
 *   - the tier's byte bound: 200 sessions on 4 slots with a 1 MB tier (room
 *     for about 48 of the fixture's 21.6 kB states), with requests that come
 *     back to recently paged-out sessions: the tier's peak stays within its
 *     budget, some page-ins hit and some read the library (dropped
 *     entries), every session's tokens are exact;
 *   - a page-out whose commit fails (the library is full): the session is
 *     paged in from the tier and stays exact; once there is room a snapshot
 *     stores the kept state (the tier's entry gets it back) and the session
 *     goes on, exact; shutdown stores its final state with every token;
 *   - spare states: two sessions and a fork of one (sharing its base's
 *     entry) alternating on 1 slot, each request waited on until every
 *     commit has ended: entries the sessions moved on from become spares
 *     and later page-outs copy into them (the tier's released and reused
 *     counters), while every token stays exact, before and after a restart
 *     from the library (the commits encoded the tier's states: a spare that
 *     aliased a live entry would corrupt a stored checkpoint or a page-in);
 *   - a page-out whose commit is delayed (another connection holds the
 *     library's write lock): the session is paged out and in again, twice,
 *     while its commits cannot happen, and generates exactly; after the lock
 *     is released, the stop waits for the delayed commits, and a scheduler
 *     restarted on the library continues the session exactly.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "check.h"
#include "sched_harness.h"
#include "testutil.h"

#define PLEN 5        /* prompt tokens of every session */

static char tmp[] = "/tmp/ssmd-test-paging-XXXXXX";
static uint64_t rng = 5;

static void prompt_fill(int32_t *t, int vocab)
{
	for (int i = 0; i < PLEN; i++)
		t[i] = (int32_t)(test_splitmix64(&rng) % (uint64_t)vocab);
}

/* The tier's counters now: current after the reply of every request that
 * paged a session (sched_tier_stats()). */
static struct hostcache_stats tier_now(sched *s)
{
	struct hostcache_stats t;

	sched_tier_stats(s, &t);
	return t;
}

/* The tier's counters once every commit queued so far has ended and the
 * scheduler has heard of it: a stats request finishes on the store thread
 * after them, and an info request after that runs on the scheduler thread
 * after their completions (each step handles completions before new
 * requests). */
static struct hostcache_stats tier_settled(sched *s)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__InfoRequest i = SSMD__INFO_REQUEST__INIT;

	harness_reply_free(harness_stats(s));
	q.op_case = SSMD__REQUEST__OP_INFO;
	q.info = &i;
	harness_reply_free(harness_call(s, &q));
	return tier_now(s);
}

/* The stats reply reports the tier as the scheduler's own counters do. */
static void check_stats_reply(sched *s, const struct hostcache_stats *t, const char *name)
{
	Ssmd__Reply *r = harness_stats(s);

	CHECK(r->code == 0 && r->stats, "%s: stats reply", name);
	if (r->code == 0 && r->stats) {
		const Ssmd__StatsReply *st = r->stats;
		CHECK(st->has_tier_hits && st->tier_hits == t->hits &&
		      st->tier_misses == t->misses,
		      "%s: stats reports %llu/%llu tier hits/misses, the tier %llu/%llu", name,
		      (unsigned long long)st->tier_hits, (unsigned long long)st->tier_misses,
		      (unsigned long long)t->hits, (unsigned long long)t->misses);
		CHECK(st->tier_budget == t->budget &&
		      st->tier_bytes == t->bytes + t->spare_bytes &&
		      st->tier_pending == t->pinned,
		      "%s: stats reports tier bytes %llu of %llu, %u pending", name,
		      (unsigned long long)st->tier_bytes, (unsigned long long)st->tier_budget,
		      st->tier_pending);
	}
	harness_reply_free(r);
}

/* Greedy tokens of session i so far, and the direct run they must equal. */
struct track {
	int32_t prompt[PLEN];
	int32_t got[64];
	size_t n;
};

static int track_exact(const ssm_model *m, const struct track *t)
{
	int32_t ref[64];

	harness_reference_run(m, harness_backend_name(), t->prompt, PLEN,
			      (uint32_t)t->n, 0.0f, 0, ref);
	return memcmp(ref, t->got, t->n * sizeof(*ref)) == 0;
}

static int gen(sched *s, const char *sid, struct track *t, uint32_t n)
{
	size_t got = 0;
	int rc;

	if (t->n + n > 64)
		abort();
	rc = harness_generate(s, sid, n, 0.0f, 0, 0, t->got + t->n, &got);
	t->n += got;
	return rc == 0 && got == n;
}

/* A fresh configuration on the test's backend with `slots` slots. */
static void paging_cfg(cfg *c, int slots)
{
	cfg_init(c);
	cfg_set(c, "backend", harness_backend_name());
	c->slots = slots;
}

/* A scheduler on a fresh library at name in tmp. */
static sched *start(const ssm_model *m, cfg *c, const char *name, store **st,
		    char *path, size_t cap)
{
	store_opts o;

	snprintf(path, cap, "%s/%s.db", tmp, name);
	memset(&o, 0, sizeof(o));
	/* The delayed commit waits on a lock the test holds: no time limit
	 * (10 minutes) decides that test's outcome. */
	o.busy_timeout_ms = 600000;
	if (store_open(path, &o, st))
		abort();
	return harness_start(c, m, NULL, *st, NULL);
}

/* ns sessions on slots generating greedily in turns: each turn, session i
 * generates per tokens and every third one also sends a request to the
 * session 8 before it (paged out a few requests ago). Returns the tier's
 * counters; *exact = every session equals its direct run. */
static struct hostcache_stats workload(const ssm_model *m, int slots, int mb,
				       int ns, int turns, uint32_t per,
				       const char *name, int *exact, int *ok)
{
	int vocab = ssm_model_config(m)->vocab_size;
	struct track *t = calloc((size_t)ns, sizeof(*t));
	char **ids = calloc((size_t)ns, sizeof(*ids)), path[1200];
	struct hostcache_stats out;
	store *st;
	cfg c;
	sched *s;

	paging_cfg(&c, slots);
	c.host_cache_mb = mb;
	c.max_sessions = ns + 4;
	s = start(m, &c, name, &st, path, sizeof(path));
	*ok = 1;
	for (int i = 0; i < ns; i++) {
		prompt_fill(t[i].prompt, vocab);
		ids[i] = harness_open(s, NULL, 0, 0);
		*ok &= ids[i] && harness_append(s, ids[i], t[i].prompt, PLEN) == 0;
	}
	for (int r = 0; r < turns; r++)
		for (int i = 0; i < ns; i++) {
			*ok &= gen(s, ids[i], &t[i], per);
			if (i % 3 == 0) {
				int k = (i + ns - 8) % ns;
				*ok &= gen(s, ids[k], &t[k], per);
			}
		}
	out = tier_settled(s);
	check_stats_reply(s, &out, name);
	sched_free(s);
	store_close(st);
	*exact = 1;
	for (int i = 0; i < ns; i++) {
		if (!track_exact(m, &t[i])) {
			*exact = 0;
			fprintf(stderr, "%s: session %d differs from its direct run\n",
				name, i);
		}
		free(ids[i]);
	}
	free(ids);
	free(t);
	cfg_fini(&c);
	return out;
}

static void test_hits(const ssm_model *m)
{
	int exact, ok;
	struct hostcache_stats t = workload(m, 2, 1024, 12, 3, 3, "hits", &exact, &ok);

	CHECK(ok, "tier on: every request succeeds");
	CHECK(exact, "tier on: 12 sessions on 2 slots equal their direct runs");
	CHECK(t.hits > 12 && t.misses == 0,
	      "tier on: every page-in is served from the tier (%llu hits, %llu library reads)",
	      (unsigned long long)t.hits, (unsigned long long)t.misses);
	t = workload(m, 2, 0, 12, 3, 3, "off", &exact, &ok);
	CHECK(ok, "tier off: every request succeeds");
	CHECK(exact, "tier off: 12 sessions on 2 slots equal their direct runs");
	CHECK(t.hits == 0 && t.misses > 12 && t.entries == 0,
	      "tier off: every page-in reads the library (%llu hits, %llu reads)",
	      (unsigned long long)t.hits, (unsigned long long)t.misses);
}

static void test_bound(const ssm_model *m)
{
	int exact, ok;
	struct hostcache_stats t = workload(m, 4, 1, 200, 2, 2, "bound", &exact, &ok);

	CHECK(ok, "1 MB tier: every request succeeds");
	CHECK(exact, "1 MB tier: 200 sessions on 4 slots equal their direct runs");
	CHECK(t.budget == 1u << 20 && t.peak_bytes <= t.budget && t.bytes <= t.budget,
	      "the tier never held more than its budget (peak %zu of %zu bytes)",
	      t.peak_bytes, t.budget);
	CHECK(t.peak_bytes > t.budget / 2,
	      "the workload filled the tier (peak %zu of %zu bytes)", t.peak_bytes,
	      t.budget);
	CHECK(t.hits > 0 && t.misses > 0,
	      "some page-ins come from the tier (%llu), the others from the library (%llu)",
	      (unsigned long long)t.hits, (unsigned long long)t.misses);
}

static void test_spares(const ssm_model *m)
{
	int vocab = ssm_model_config(m)->vocab_size, ok = 1;
	struct track tr[3] = {0};
	struct hostcache_stats t;
	char path[1200], *ids[3];
	store *st;
	cfg c;
	sched *s;

	paging_cfg(&c, 1);
	s = start(m, &c, "spares", &st, path, sizeof(path));
	prompt_fill(tr[0].prompt, vocab);
	prompt_fill(tr[1].prompt, vocab);
	/* The fork continues from the first session's prompt: its greedy
	 * tokens are that prompt's direct run. */
	memcpy(tr[2].prompt, tr[0].prompt, sizeof(tr[2].prompt));
	ids[0] = harness_open(s, NULL, 0, 0);
	ids[1] = harness_open(s, NULL, 0, 0);
	if (!ids[0] || !ids[1])
		abort();
	ok &= harness_append(s, ids[0], tr[0].prompt, PLEN) == 0;
	ok &= harness_append(s, ids[1], tr[1].prompt, PLEN) == 0;
	ok &= (ids[2] = harness_fork(s, ids[0])) != NULL;
	for (int turn = 0; ok && turn < 5; turn++)
		for (int i = 0; i < 3; i++) {
			ok &= gen(s, ids[i], &tr[i], 2);
			tier_settled(s);
		}
	t = tier_settled(s);
	CHECK(ok, "spares: every request succeeds");
	CHECK(t.hits >= 12 && t.misses == 0,
	      "spares: every page-in is served from the tier (%llu hits, %llu library reads)",
	      (unsigned long long)t.hits, (unsigned long long)t.misses);
	CHECK(t.released >= 10 && t.reused >= 10,
	      "entries the sessions left became spares (%llu) and page-outs copied into them (%llu)",
	      (unsigned long long)t.released, (unsigned long long)t.reused);
	CHECK(track_exact(m, &tr[0]) && track_exact(m, &tr[1]) && track_exact(m, &tr[2]),
	      "spares: both sessions and the fork equal their direct runs");
	sched_free(s);
	store_close(st);
	if (store_open(path, NULL, &st))
		abort();
	s = harness_start(&c, m, NULL, st, NULL);
	for (int i = 0; i < 3; i++)
		ok &= gen(s, ids[i], &tr[i], 3);
	CHECK(ok && track_exact(m, &tr[0]) && track_exact(m, &tr[1]) &&
	      track_exact(m, &tr[2]),
	      "spares: after a restart from the library all three continue exactly");
	sched_free(s);
	store_close(st);
	cfg_fini(&c);
	for (int i = 0; i < 3; i++)
		free(ids[i]);
}

/* ------------------------------------------------ a failing commit -- */

static struct harness_fillers fillers = {.rng = 5};

/* The newest state of session x in the library holds n tokens. */
static int newest_holds(store *st, const char *x, uint64_t n)
{
	store_state_info *list = NULL;
	size_t nl = 0, k;
	char cursor[STORE_ID_SIZE];
	store_filter f;
	int ok;

	memset(&f, 0, sizeof(f));
	f.newest_first = 1;
	if (store_state_list(st, &f, &list, &nl, cursor))
		return 0;
	for (k = 0; k < nl; k++)
		if (list[k].metadata && strstr(list[k].metadata, x))
			break;
	ok = k < nl && list[k].n_tokens == n;
	store_info_array_free(list, nl);
	return ok;
}

static void test_commit_fails(const ssm_model *m)
{
	int vocab = ssm_model_config(m)->vocab_size, ok = 1;
	struct track tx = {0}, ty = {0};
	struct hostcache_stats t;
	char path[1200], *x, *y, *snap;
	store_state_info info;
	store_totals tot;
	store_opts o;
	store *st;
	cfg c;
	sched *s;

	/* A library whose size limit is 1 MB over its size when new, filled
	 * up to it; deleting the fillers makes room for dozens of states. */
	snprintf(path, sizeof(path), "%s/full.db", tmp);
	if (store_open(path, NULL, &st) || store_total_size(st, &tot))
		abort();
	store_close(st);
	memset(&o, 0, sizeof(o));
	o.max_bytes = tot.file_bytes + (1u << 20);
	if (store_open(path, &o, &st))
		abort();
	CHECK_RC(harness_fill(&fillers, st, m, 1), SSMD_ENOSPC);
	CHECK_RC(harness_fill(&fillers, st, m, 0), SSMD_ENOSPC);

	paging_cfg(&c, 1);
	s = harness_start(&c, m, NULL, st, NULL);
	prompt_fill(tx.prompt, vocab);
	prompt_fill(ty.prompt, vocab);
	x = harness_open(s, NULL, 0, 0);
	y = harness_open(s, NULL, 0, 0);
	if (!x || !y)
		abort();
	ok &= harness_append(s, x, tx.prompt, PLEN) == 0;
	ok &= gen(s, x, &tx, 3);
	/* y takes the slot: x's page-out commit fails (library full). */
	ok &= harness_append(s, y, ty.prompt, PLEN) == 0;
	ok &= gen(s, x, &tx, 3);
	ok &= gen(s, y, &ty, 2);
	t = tier_settled(s);
	CHECK(t.hits >= 2 && t.misses == 0,
	      "after failed commits, page-ins still come from the tier (%llu hits, %llu reads)",
	      (unsigned long long)t.hits, (unsigned long long)t.misses);
	CHECK(t.pinned == 0, "a failed commit unpins its entry (%zu pinned)", t.pinned);

	/* Room again; x is paged out with no progress since its failed
	 * checkpoint: the snapshot stores the kept state. */
	ok &= harness_unfill(&fillers, st) == 0;
	snap = harness_snapshot(s, x, NULL);
	memset(&info, 0, sizeof(info));
	CHECK(snap && store_state_info_get(st, snap, &info) == SSMD_OK &&
	      info.n_tokens == PLEN + 6,
	      "the snapshot after the failed commits stores x's %d tokens", PLEN + 6);
	store_state_info_fini(&info);
	ok &= gen(s, x, &tx, 3);
	ok &= gen(s, y, &ty, 2);
	ok &= gen(s, x, &tx, 2);
	CHECK(ok, "failing commits: every request succeeds");
	CHECK(track_exact(m, &tx) && track_exact(m, &ty),
	      "failing commits: both sessions equal their direct runs");
	sched_free(s);
	CHECK(newest_holds(st, x, PLEN + tx.n) && newest_holds(st, y, PLEN + ty.n),
	      "shutdown stored both sessions with every token");
	store_close(st);
	cfg_fini(&c);
	free(snap);
	free(x);
	free(y);
}

/* ------------------------------------------------ a delayed commit -- */

static void test_commit_delayed(const ssm_model *m)
{
	int vocab = ssm_model_config(m)->vocab_size, ok = 1;
	struct track tx = {0}, ty = {0};
	struct hostcache_stats t;
	char path[1200], *x, *y;
	sqlite3 *lock = NULL;
	store *st;
	cfg c;
	sched *s;

	paging_cfg(&c, 1);
	s = start(m, &c, "delayed", &st, path, sizeof(path));
	prompt_fill(tx.prompt, vocab);
	prompt_fill(ty.prompt, vocab);
	x = harness_open(s, NULL, 0, 0);
	y = harness_open(s, NULL, 0, 0);
	if (!x || !y)
		abort();
	ok &= harness_append(s, x, tx.prompt, PLEN) == 0;
	ok &= harness_append(s, y, ty.prompt, PLEN) == 0;
	/* Every queued library write is done; then nothing can commit. */
	tier_settled(s);
	CHECK(sqlite3_open(path, &lock) == SQLITE_OK &&
	      sqlite3_exec(lock, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK,
	      "a second connection holds the library's write lock");
	ok &= gen(s, x, &tx, 3);   /* pages y out (commit waits), x in */
	ok &= gen(s, y, &ty, 3);   /* pages x out (commit waits), y in */
	ok &= gen(s, x, &tx, 3);   /* x in from its pinned entry */
	t = tier_now(s);
	CHECK(ok, "with the library locked, sessions page out and in and generate");
	CHECK(t.pinned >= 2,
	      "their page-out commits are still waiting (%zu pinned entries)", t.pinned);
	CHECK(t.hits >= 3, "their page-ins came from the tier (%llu hits)",
	      (unsigned long long)t.hits);
	sqlite3_exec(lock, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(lock);
	CHECK(track_exact(m, &tx) && track_exact(m, &ty),
	      "delayed commits: both sessions equal their direct runs");

	/* What SIGTERM does: the stop waits for the delayed commits. */
	sched_free(s);
	CHECK(newest_holds(st, x, PLEN + tx.n) && newest_holds(st, y, PLEN + ty.n),
	      "the stop stored both sessions with every token");
	store_close(st);
	if (store_open(path, NULL, &st))
		abort();
	s = harness_start(&c, m, NULL, st, NULL);
	ok = gen(s, x, &tx, 3) && gen(s, y, &ty, 3) && gen(s, x, &tx, 2);
	CHECK(ok && track_exact(m, &tx) && track_exact(m, &ty),
	      "after a restart both sessions continue exactly");
	sched_free(s);
	store_close(st);
	cfg_fini(&c);
	free(x);
	free(y);
}

int main(void)
{
	const char *fixtures = getenv("SSMD_SHARED_FIXTURES");
	char dir[1024];
	ssm_model *m;

	if (!fixtures) {
		SKIP("SSMD_SHARED_FIXTURES is not set");
		return check_summary("paging");
	}
	snprintf(dir, sizeof(dir), "%s/tiny-mamba", fixtures);
	if (ssm_model_load(dir, &m)) {
		SKIP("cannot load %s: %s", dir, ssmd_errmsg());
		return check_summary("paging");
	}
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	test_hits(m);
	test_bound(m);
	test_spares(m);
	test_commit_fails(m);
	test_commit_delayed(m);
	ssm_model_free(m);
	test_dir_remove(tmp);
	return check_summary("paging");
}
