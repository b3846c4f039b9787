/*
 * hostcache.c — the host tier of paged-out states (see hostcache.h).
 *
 * Entries sit on one list ordered from the first to drop (head) to the last
 * (tail), and in a chained hash table keyed by the sref's address. Spares
 * sit in a small stack: a page-out takes one and gives it back as an entry
 * at once, so a few cover a burst of page-outs while commits catch up.
 */
#include "hostcache.h"

#include <assert.h>
#include <stdlib.h>

#define SPARES_MAX 4

struct entry {
	struct sref *key;          /* reference held */
	ssm_state *st;             /* owned unless borrowed */
	size_t bytes;
	int pinned;                /* a commit borrows st */
	int borrowed;              /* st is key's kept copy, not ours */
	struct entry *prev, *next; /* drop order: head first */
	struct entry *chain;       /* next in the hash bucket */
};

struct hostcache {
	struct hostcache_stats st; /* st.pinned kept current */
	size_t pinned_bytes;       /* bytes of the pinned entries */
	struct entry *head, *tail;
	struct entry **buckets;    /* (n_buckets) chains */
	size_t n_buckets;          /* a power of two */
	ssm_state *spares[SPARES_MAX]; /* (st.spares) owned */
};

static size_t bucket_of(const hostcache *hc, const struct sref *key)
{
	uint64_t h = (uint64_t)(uintptr_t)key * 0x9e3779b97f4a7c15ull;

	return (size_t)(h >> 32) & (hc->n_buckets - 1);
}

static struct entry *find(const hostcache *hc, const struct sref *key)
{
	struct entry *e = hc->buckets[bucket_of(hc, key)];

	while (e && e->key != key)
		e = e->chain;
	return e;
}

/* Doubles the table when it holds as many entries as buckets. */
static int grow(hostcache *hc)
{
	size_t n = hc->n_buckets * 2;
	struct entry **b = calloc(n, sizeof(*b)), **old = hc->buckets;
	size_t old_n = hc->n_buckets;

	if (!b)
		return ssmd_err_set(SSMD_ENOMEM, "host tier table");
	hc->buckets = b;
	hc->n_buckets = n;
	for (size_t i = 0; i < old_n; i++) {
		struct entry *e = old[i];
		while (e) {
			struct entry *next = e->chain;
			size_t k = bucket_of(hc, e->key);
			e->chain = b[k];
			b[k] = e;
			e = next;
		}
	}
	free(old);
	return SSMD_OK;
}

static void list_unlink(hostcache *hc, struct entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		hc->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		hc->tail = e->prev;
	e->prev = e->next = NULL;
}

static void list_push_tail(hostcache *hc, struct entry *e)
{
	e->prev = hc->tail;
	e->next = NULL;
	if (hc->tail)
		hc->tail->next = e;
	else
		hc->head = e;
	hc->tail = e;
}

static void list_push_head(hostcache *hc, struct entry *e)
{
	e->next = hc->head;
	e->prev = NULL;
	if (hc->head)
		hc->head->prev = e;
	else
		hc->tail = e;
	hc->head = e;
}

/* Takes e out of the tier and frees it with what it owns, except its
 * state when keep is set: *keep gets it (NULL when e only borrowed it). */
static void entry_remove(hostcache *hc, struct entry *e, ssm_state **keep)
{
	struct entry **p = &hc->buckets[bucket_of(hc, e->key)];

	assert(!e->pinned);
	while (*p != e)
		p = &(*p)->chain;
	*p = e->chain;
	list_unlink(hc, e);
	hc->st.bytes -= e->bytes;
	hc->st.entries--;
	if (keep)
		*keep = e->borrowed ? NULL : e->st;
	else if (!e->borrowed)
		ssm_state_free(e->st);
	/* Last: a borrowed state may die with the sref's last reference. */
	sref_put(e->key);
	free(e);
}

int hostcache_alloc(size_t budget, hostcache **out)
{
	hostcache *hc = calloc(1, sizeof(*hc));

	if (!hc || !(hc->buckets = calloc(64, sizeof(*hc->buckets)))) {
		free(hc);
		return ssmd_err_set(SSMD_ENOMEM, "host tier");
	}
	hc->n_buckets = 64;
	hc->st.budget = budget;
	*out = hc;
	return SSMD_OK;
}

void hostcache_free(hostcache *hc)
{
	if (!hc)
		return;
	while (hc->head) {
		assert(!hc->head->pinned);
		entry_remove(hc, hc->head, NULL);
	}
	while (hc->st.spares)
		ssm_state_free(hc->spares[--hc->st.spares]);
	free(hc->buckets);
	free(hc);
}

int hostcache_add(hostcache *hc, struct sref *key, ssm_state *st, int pinned)
{
	size_t bytes = ssm_state_encoded_size(st), freeable, k;
	struct entry *e, *next;

	assert(!find(hc, key));
	/* Whether dropping every unpinned entry would make room, before
	 * anything is dropped: a refused add changes nothing. */
	if (bytes > hc->st.budget || hc->pinned_bytes > hc->st.budget - bytes) {
		hc->st.refused++;
		return ssmd_err_set(SSMD_ENOSPC,
				    "host tier: %zu bytes pinned by commits in flight, %zu more do not fit in %zu",
				    hc->pinned_bytes, bytes, hc->st.budget);
	}
	if (hc->st.entries + 1 > hc->n_buckets && grow(hc))
		return SSMD_ENOMEM;
	e = calloc(1, sizeof(*e));
	if (!e)
		return ssmd_err_set(SSMD_ENOMEM, "host tier entry");
	freeable = hc->st.budget - bytes;
	while (hc->st.spares && hc->st.bytes + hc->st.spare_bytes > freeable) {
		ssm_state *sp = hc->spares[--hc->st.spares];
		hc->st.spare_bytes -= ssm_state_encoded_size(sp);
		ssm_state_free(sp);
	}
	for (struct entry *d = hc->head; d && hc->st.bytes > freeable; d = next) {
		next = d->next;
		if (!d->pinned) {
			entry_remove(hc, d, NULL);
			hc->st.dropped++;
		}
	}
	e->key = sref_get(key);
	e->st = st;
	e->bytes = bytes;
	e->pinned = pinned != 0;
	if (e->pinned) {
		hc->pinned_bytes += bytes;
		hc->st.pinned++;
	}
	k = bucket_of(hc, key);
	e->chain = hc->buckets[k];
	hc->buckets[k] = e;
	list_push_tail(hc, e);
	hc->st.bytes += bytes;
	hc->st.entries++;
	hc->st.added++;
	if (hc->st.bytes + hc->st.spare_bytes > hc->st.peak_bytes)
		hc->st.peak_bytes = hc->st.bytes + hc->st.spare_bytes;
	return SSMD_OK;
}

int hostcache_has(const hostcache *hc, const struct sref *key)
{
	return find(hc, key) != NULL;
}

const ssm_state *hostcache_get(hostcache *hc, const struct sref *key)
{
	struct entry *e = find(hc, key);

	if (!e) {
		hc->st.misses++;
		return NULL;
	}
	hc->st.hits++;
	list_unlink(hc, e);
	list_push_head(hc, e);
	return e->st;
}

void hostcache_unpin(hostcache *hc, const struct sref *key, int owned)
{
	struct entry *e = find(hc, key);

	if (!e || !e->pinned)
		return;
	e->pinned = 0;
	e->borrowed = !owned;
	hc->pinned_bytes -= e->bytes;
	hc->st.pinned--;
}

int hostcache_adopt(hostcache *hc, const struct sref *key, ssm_state *st)
{
	struct entry *e = find(hc, key);

	if (!e || !e->borrowed || e->st != st)
		return 0;
	e->borrowed = 0;
	return 1;
}

void hostcache_release(hostcache *hc, struct sref *key)
{
	struct entry *e = key ? find(hc, key) : NULL;

	/* Two references: the caller's and the entry's. Another thread may
	 * only drop references it holds, never add one to a key it does not
	 * hold: so 2 cannot turn into more behind this check, and a count
	 * that is about to fall only keeps the entry a while longer. */
	if (e && !e->pinned && atomic_load(&key->refs) == 2) {
		ssm_state *st;
		entry_remove(hc, e, &st);
		hc->st.released++;
		hostcache_spare_put(hc, st);
	}
	sref_put(key);
}

ssm_state *hostcache_spare_take(hostcache *hc)
{
	ssm_state *st;

	if (!hc->st.spares)
		return NULL;
	st = hc->spares[--hc->st.spares];
	hc->st.spare_bytes -= ssm_state_encoded_size(st);
	hc->st.reused++;
	return st;
}

void hostcache_spare_put(hostcache *hc, ssm_state *st)
{
	size_t bytes;

	if (!st)
		return;
	bytes = ssm_state_encoded_size(st);
	if (hc->st.spares == SPARES_MAX ||
	    bytes > hc->st.budget - hc->st.bytes - hc->st.spare_bytes) {
		ssm_state_free(st);
		return;
	}
	hc->spares[hc->st.spares++] = st;
	hc->st.spare_bytes += bytes;
	if (hc->st.bytes + hc->st.spare_bytes > hc->st.peak_bytes)
		hc->st.peak_bytes = hc->st.bytes + hc->st.spare_bytes;
}

void hostcache_stats_get(const hostcache *hc, struct hostcache_stats *out)
{
	*out = hc->st;
}
