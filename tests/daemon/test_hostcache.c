/*
 * test_hostcache.c — the host tier of paged-out states (daemon/hostcache.h)
 * alone, with states of a few sizes and no scheduler.
 *
 * What is checked, and against what:
 *   - hits and misses: a state added is found (the very pointer) and counted
 *     as a hit; an unknown key is a miss;
 *   - the byte bound, on a random sequence of 20000 operations (adds pinned
 *     or not, unpins, lookups) mirrored by a model of the tier kept here:
 *     after every step the tier's bytes equal the sum over the entries the
 *     model holds, never exceed the budget, the peak never exceeds it, and
 *     an add is refused exactly when the pinned bytes plus the new state
 *     would not fit; pinned entries are never dropped; drops go coldest first
 *     (a served entry before every other unpinned one);
 *   - a failed commit: unpin(owned = 0) leaves the entry borrowing a state it
 *     no longer frees; adopt() of another pointer is refused and of that
 *     state makes the entry its owner again (run under ASan in CI: a double
 *     free or a leak here fails the run);
 *   - budget 0 refuses every add;
 *   - spares: release() of a key someone else still holds, or of a pinned
 *     entry, keeps the entry; of a key only the tier holds, it removes the
 *     entry and its state (the very pointer) becomes the spare that
 *     spare_take() hands out, which no remaining entry serves (a reused
 *     buffer never aliases a live state); a borrowed state never becomes a
 *     spare (the sref frees it: ASan would catch a double free); spares
 *     count against the budget, at most 4 are kept, and an add frees them
 *     before it drops entries. The random sequence also releases keys and
 *     takes and gives back spares, and its bound covers entries + spares.
 * All sizes are exact byte counts: ssm_state_encoded_size() is deterministic.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "daemon/hostcache.h"
#include "testutil.h"

#define N_KEYS 64

static ssm_state *state_new(uint32_t d_inner)
{
	ssm_state *st = NULL;

	if (ssm_state_alloc(SSM_ARCH_MAMBA1, 2, d_inner, 4, 4, 8, &st))
		abort();
	return st;
}

/* What the test believes each key's entry is. */
struct model_entry {
	struct sref *key;
	int present, pinned;
	size_t bytes;
	uint64_t order;    /* drop order: smaller drops first */
};

static void test_basic(void)
{
	hostcache *hc;
	struct hostcache_stats t;
	struct sref *a = sref_alloc(), *b = sref_alloc();
	ssm_state *sa = state_new(8), *sb = state_new(8);
	size_t one = ssm_state_encoded_size(sa);

	CHECK_RC(hostcache_alloc(3 * one / 2, &hc), SSMD_OK);
	CHECK_RC(hostcache_add(hc, a, sa, 0), SSMD_OK);
	CHECK(hostcache_has(hc, a) && !hostcache_has(hc, b), "has() knows the added key only");
	CHECK(hostcache_get(hc, a) == sa, "get() returns the state added");
	CHECK(hostcache_get(hc, b) == NULL, "get() of an unknown key is NULL");
	hostcache_stats_get(hc, &t);
	CHECK(t.hits == 1 && t.misses == 1 && t.entries == 1 && t.bytes == one,
	      "one hit, one miss, one entry of %zu bytes (got %llu, %llu, %zu, %zu)",
	      one, (unsigned long long)t.hits, (unsigned long long)t.misses,
	      t.entries, t.bytes);
	/* Room for one state: b replaces a (unpinned). */
	CHECK_RC(hostcache_add(hc, b, sb, 1), SSMD_OK);
	CHECK(!hostcache_has(hc, a) && hostcache_has(hc, b),
	      "an unpinned entry is dropped to make room");
	/* b is pinned: a cannot come back until b's commit ends. */
	sa = state_new(8);
	CHECK_RC(hostcache_add(hc, a, sa, 0), SSMD_ENOSPC);
	CHECK(hostcache_has(hc, b), "a pinned entry is never dropped");
	/* b's commit failed: the entry borrows its state from the sref. */
	hostcache_unpin(hc, b, 0);
	CHECK(!hostcache_adopt(hc, b, sa), "adopt() of another state is refused");
	CHECK(hostcache_adopt(hc, b, sb), "adopt() of the borrowed state takes it back");
	CHECK(!hostcache_adopt(hc, b, sb), "adopt() of an owned state is refused");
	CHECK_RC(hostcache_add(hc, a, sa, 0), SSMD_OK);
	CHECK(!hostcache_has(hc, b), "b, unpinned, made room for a");

	/* Borrowed and dropped: the state stays the borrower's to free. */
	sb = state_new(8);
	CHECK_RC(hostcache_add(hc, b, sb, 1), SSMD_OK);
	hostcache_unpin(hc, b, 0);
	hostcache_free(hc);
	ssm_state_free(sb); /* the "kept copy": freed once, here */

	CHECK_RC(hostcache_alloc(0, &hc), SSMD_OK);
	sa = state_new(8);
	CHECK_RC(hostcache_add(hc, a, sa, 0), SSMD_ENOSPC);
	ssm_state_free(sa);
	hostcache_free(hc);
	hostcache_free(NULL);
	sref_put(a);
	sref_put(b);
}

/* Whether any entry of keys[0..n) serves st. */
static int served_by_any(hostcache *hc, struct sref **keys, int n,
			 const ssm_state *st)
{
	for (int i = 0; i < n; i++)
		if (keys[i] && hostcache_has(hc, keys[i]) &&
		    hostcache_get(hc, keys[i]) == st)
			return 1;
	return 0;
}

static void test_spares(void)
{
	hostcache *hc;
	struct hostcache_stats t;
	struct sref *a = sref_alloc(), *b = sref_alloc(), *c = sref_alloc();
	struct sref *keys[2];
	ssm_state *sa = state_new(8), *sb = state_new(8), *sc = state_new(8), *got;
	size_t one = ssm_state_encoded_size(sa);

	CHECK_RC(hostcache_alloc(3 * one, &hc), SSMD_OK);
	CHECK_RC(hostcache_add(hc, a, sa, 0), SSMD_OK);
	CHECK_RC(hostcache_add(hc, b, sb, 1), SSMD_OK);
	/* a: the test holds it besides the caller of release (a fork). */
	hostcache_release(hc, sref_get(a));
	/* b: the caller's is the last reference but the entry is pinned. */
	hostcache_release(hc, sref_get(b));
	hostcache_stats_get(hc, &t);
	CHECK(hostcache_has(hc, a) && hostcache_has(hc, b) && t.spares == 0 &&
	      t.released == 0,
	      "release() keeps an entry whose key another holds, and a pinned one");
	CHECK(hostcache_spare_take(hc) == NULL, "no spare before any release");
	/* a: now only the tier holds it besides the caller. */
	hostcache_release(hc, a);
	hostcache_stats_get(hc, &t);
	CHECK(t.entries == 1 && t.spares == 1 && t.released == 1 &&
	      t.bytes == one && t.spare_bytes == one,
	      "release() of a key only the tier holds makes its state a spare (entries %zu, spares %zu, bytes %zu + %zu)",
	      t.entries, t.spares, t.bytes, t.spare_bytes);
	got = hostcache_spare_take(hc);
	keys[0] = b;
	keys[1] = NULL;
	CHECK(got == sa && !served_by_any(hc, keys, 2, got),
	      "the spare is the released entry's state and no entry serves it");
	hostcache_stats_get(hc, &t);
	CHECK(t.spares == 0 && t.spare_bytes == 0 && t.reused == 1 &&
	      hostcache_spare_take(hc) == NULL,
	      "a spare is handed out once");
	/* Given back as a new entry's state: it is that entry's now. */
	a = sref_alloc();
	CHECK_RC(hostcache_add(hc, a, got, 0), SSMD_OK);
	CHECK(hostcache_get(hc, a) == got, "a spare added back is served by its new key");

	/* A borrowed state (the sref's kept copy) is never a spare. */
	CHECK_RC(hostcache_add(hc, c, sc, 1), SSMD_OK);
	hostcache_unpin(hc, c, 0);
	c->kept = sc;
	hostcache_release(hc, c); /* frees c and, with it, sc */
	hostcache_stats_get(hc, &t);
	CHECK(t.entries == 2 && t.spares == 0 && t.released == 2,
	      "a dead entry that borrowed its state goes without leaving a spare");

	/* Spares count against the budget: budget 3, entries a and b, so
	 * room for one spare; a second one given is freed. */
	hostcache_spare_put(hc, state_new(8));
	hostcache_spare_put(hc, state_new(8));
	hostcache_spare_put(hc, NULL);
	hostcache_stats_get(hc, &t);
	CHECK(t.spares == 1 && t.bytes + t.spare_bytes <= t.budget &&
	      t.peak_bytes <= t.budget,
	      "spares fit in the budget with the entries (%zu spares, %zu + %zu of %zu bytes)",
	      t.spares, t.bytes, t.spare_bytes, t.budget);
	/* An add needing that room frees the spare before dropping an entry. */
	c = sref_alloc();
	CHECK_RC(hostcache_add(hc, c, state_new(8), 0), SSMD_OK);
	hostcache_stats_get(hc, &t);
	CHECK(t.spares == 0 && t.entries == 3 && t.dropped == 0,
	      "an add frees spares before it drops entries");
	hostcache_unpin(hc, b, 1);
	hostcache_release(hc, b);
	hostcache_release(hc, c);
	hostcache_release(hc, a);
	hostcache_stats_get(hc, &t);
	CHECK(t.entries == 0 && t.spares == 3 && t.bytes == 0,
	      "releasing the last keys leaves their states as spares (%zu)", t.spares);
	hostcache_free(hc); /* frees the spares */

	/* At most 4 spares, and none with budget 0. */
	CHECK_RC(hostcache_alloc(100 * one, &hc), SSMD_OK);
	for (int i = 0; i < 6; i++)
		hostcache_spare_put(hc, state_new(8));
	hostcache_stats_get(hc, &t);
	CHECK(t.spares == 4, "at most 4 spares are kept (%zu)", t.spares);
	hostcache_free(hc);
	CHECK_RC(hostcache_alloc(0, &hc), SSMD_OK);
	hostcache_spare_put(hc, state_new(8));
	hostcache_release(hc, NULL);
	hostcache_stats_get(hc, &t);
	CHECK(t.spares == 0 && hostcache_spare_take(hc) == NULL,
	      "a tier of budget 0 keeps no spare");
	hostcache_free(hc);
}

/* The random sequence against the model above. */
static void test_random(void)
{
	struct model_entry me[N_KEYS];
	uint64_t rng = 11, clock = 0;
	size_t sizes[3], budget;
	hostcache *hc;
	int ok_bound = 1, ok_refuse = 1, ok_pinned = 1, ok_order = 1, ok_sum = 1;
	size_t peak = 0;

	for (int k = 0; k < 3; k++) {
		ssm_state *p = state_new(8u << k);
		sizes[k] = ssm_state_encoded_size(p);
		ssm_state_free(p);
	}
	budget = 6 * sizes[1] + 17;
	CHECK_RC(hostcache_alloc(budget, &hc), SSMD_OK);
	memset(me, 0, sizeof(me));
	for (int i = 0; i < N_KEYS; i++)
		me[i].key = sref_alloc();
	for (int step = 0; step < 20000; step++) {
		int i = (int)(test_splitmix64(&rng) % N_KEYS);
		int op = (int)(test_splitmix64(&rng) % 6);
		struct hostcache_stats t;
		size_t sum = 0, pinned_bytes = 0;

		for (int k = 0; k < N_KEYS; k++)
			if (me[k].present && me[k].pinned)
				pinned_bytes += me[k].bytes;
		if (op <= 1 && !me[i].present) {
			int sz = (int)(test_splitmix64(&rng) % 3), pin = op == 1;
			ssm_state *st = state_new(8u << sz);
			int fits = sizes[sz] <= budget &&
				   pinned_bytes <= budget - sizes[sz];
			int rc = hostcache_add(hc, me[i].key, st, pin);
			ok_refuse &= (rc == SSMD_OK) == fits &&
				     (rc == SSMD_OK || rc == SSMD_ENOSPC);
			if (rc) {
				ssm_state_free(st);
			} else {
				/* Which entries went: those the model drops,
				 * coldest first, until the new one fits. */
				size_t held = 0;
				for (int k = 0; k < N_KEYS; k++)
					held += me[k].present ? me[k].bytes : 0;
				while (held + sizes[sz] > budget) {
					int c = -1;
					for (int k = 0; k < N_KEYS; k++)
						if (me[k].present && !me[k].pinned &&
						    (c < 0 || me[k].order < me[c].order))
							c = k;
					if (c < 0)
						break;
					me[c].present = 0;
					held -= me[c].bytes;
				}
				me[i].present = 1;
				me[i].pinned = pin;
				me[i].bytes = sizes[sz];
				me[i].order = ++clock + 1000000;
			}
		} else if (op == 2 && me[i].present) {
			hostcache_unpin(hc, me[i].key, 1);
			me[i].pinned = 0;
		} else if (op == 4 && !(me[i].present && me[i].pinned)) {
			/* The key's last holder lets go: an unpinned entry
			 * goes (as a spare); the key is then replaced. */
			hostcache_release(hc, me[i].key);
			me[i].key = sref_alloc();
			me[i].present = 0;
		} else if (op == 5) {
			/* A page-out takes a spare and gives it back (its add
			 * refused) or frees it. */
			ssm_state *sp = hostcache_spare_take(hc);
			if (test_splitmix64(&rng) % 2)
				hostcache_spare_put(hc, sp);
			else
				ssm_state_free(sp);
		} else if (op == 3) {
			const ssm_state *got = hostcache_get(hc, me[i].key);
			ok_order &= (got != NULL) == me[i].present;
			/* Served: first to drop (before everything added). */
			if (got)
				me[i].order = 1000000 - ++clock;
		}
		hostcache_stats_get(hc, &t);
		for (int k = 0; k < N_KEYS; k++) {
			ok_order &= hostcache_has(hc, me[k].key) == me[k].present;
			ok_pinned &= !me[k].pinned || hostcache_has(hc, me[k].key);
			sum += me[k].present ? me[k].bytes : 0;
		}
		ok_sum &= t.bytes == sum;
		ok_bound &= t.bytes + t.spare_bytes <= budget &&
			    t.peak_bytes <= budget;
		if (t.peak_bytes > peak)
			peak = t.peak_bytes;
	}
	CHECK(ok_bound, "the tier's bytes (entries and spares) and peak never exceed the budget of %zu", budget);
	CHECK(ok_sum, "the tier's bytes are the sum of its entries' encoded sizes");
	CHECK(ok_refuse, "an add is refused exactly when the pinned entries leave no room");
	CHECK(ok_pinned, "a pinned entry is never dropped");
	CHECK(ok_order, "entries drop coldest first, a served one before the rest");
	CHECK(peak > budget - sizes[2], "the sequence filled the tier (peak %zu of %zu)",
	      peak, budget);
	for (int k = 0; k < N_KEYS; k++)
		hostcache_unpin(hc, me[k].key, 1);
	hostcache_free(hc);
	for (int k = 0; k < N_KEYS; k++)
		sref_put(me[k].key);
}

int main(void)
{
	test_basic();
	test_spares();
	test_random();
	return check_summary("hostcache");
}
