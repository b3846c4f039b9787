/*
 * hostcache.h — the host tier: a bounded cache, in host memory, of the states
 * of paged-out sessions, so that paging a session back in is one copy into a
 * slot instead of a library read and decode.
 *
 * An entry is keyed by the stored state it holds (an sref, sess.h): a
 * session paged out with no unsaved progress is exactly its base state, so
 * the session, and every fork built on the same base, finds it by its base.
 * The tier is not the library: an entry may be the state of a put that is
 * still waiting for its commit, and nothing here ever reaches the disk.
 *
 * Pinned entries: at page-out, the put of a session with unsaved progress
 * borrows the entry's state (it encodes it on the store thread) instead of a
 * copy of its own. Such an entry is pinned until hostcache_unpin() says the
 * commit has ended: a pinned entry is never dropped and its state is never
 * freed. When that commit failed, the put keeps the state as the sref's
 * kept copy (sess.h) instead: the entry then only borrows it, and
 * hostcache_adopt() gives it back once a later put stored it.
 *
 * Spare states: a page-out needs a state of the model's size to copy its
 * slot into. A fresh one is a large allocation whose every page faults on
 * first touch (and whose free unmaps it again), which costs about as much as
 * the copy itself. So an entry whose key nobody else holds any more (the
 * session moved on from it, and no fork or pending put refers to it) gives
 * its state back as a spare (hostcache_release()), and the next page-out
 * copies into that (hostcache_spare_take()). A spare is nobody's state: it
 * left the tier's table before it was handed out, so it never aliases an
 * entry, a put's state or a session's.
 *
 * The budget: the bytes of every entry and spare (the encoded size of its
 * state, the measure ssm_state_encoded_size() gives: header and f32 arrays)
 * never exceed it. hostcache_add() makes room by freeing spares, then
 * dropping unpinned entries, least recently added or served first, and
 * refuses when pinned ones leave too little. An entry that was just served (hostcache_get()) becomes the first
 * to go: the session it paged in usually moves on from it at once; it stays
 * for other sessions on the same state (forks) while room lasts.
 *
 * Memory: entries own their state (unless borrowed, as above) and hold one
 * reference to their sref, so its address stays a valid key.
 *
 * Threads: one owner, the scheduler thread (hostcache_stats_get() included).
 * States handed out stay valid while their entry lives: until the next call
 * that may drop entries (hostcache_add(), hostcache_free()).
 */
#ifndef SSMD_HOSTCACHE_H
#define SSMD_HOSTCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "sess.h"
#include "ssm_state.h"
#include "ssmd_err.h"

typedef struct hostcache hostcache;

struct hostcache_stats {
	size_t budget;            /* bytes allowed */
	size_t bytes;             /* bytes of the entries now */
	size_t peak_bytes;        /* the most bytes ever held at once */
	size_t entries;           /* entries now, of which */
	size_t pinned;            /* wait for their commit */
	uint64_t hits, misses;    /* hostcache_get() that found / did not find */
	uint64_t added, dropped;  /* entries added / dropped for room */
	uint64_t refused;         /* hostcache_add() refused for lack of room */
	size_t spares;            /* spare states now (bytes not counted above) */
	size_t spare_bytes;       /* their bytes: bytes + spare_bytes <= budget */
	uint64_t released;        /* entries whose key nobody held any more */
	uint64_t reused;          /* spares handed out by hostcache_spare_take() */
};

/* A new empty tier of budget bytes (0: every add is refused). SSMD_ENOMEM. */
int hostcache_alloc(size_t budget, hostcache **out);

/* Frees every entry (their owned states and sref references) and the tier.
 * Pinned entries must have been unpinned (their commits ended) first.
 * NULL is a no-op. */
void hostcache_free(hostcache *hc);

/* Adds st (bytes = ssm_state_encoded_size(st)) as the state of key, which
 * must not be in the tier yet; pinned as described above when pinned.
 * Drops unpinned entries, coldest first, until it fits. On success takes st
 * and a reference to key. SSMD_ENOSPC when the pinned entries (with st)
 * would exceed the budget, SSMD_ENOMEM; then nothing is dropped or taken. */
int hostcache_add(hostcache *hc, struct sref *key, ssm_state *st, int pinned);

/* 1 when key has an entry. Counts nothing, moves nothing. */
int hostcache_has(const hostcache *hc, const struct sref *key);

/* The state of key, borrowed (valid as stated above), counted as a hit; or
 * NULL, counted as a miss. A hit makes the entry the first to drop. */
const ssm_state *hostcache_get(hostcache *hc, const struct sref *key);

/* The commit that borrowed key's state ended: the entry may be dropped from
 * now on. owned 0 means the committing side kept the state (a failed put:
 * the sref's kept copy is that same state), so the entry no longer frees it.
 * No-op when key has no entry. */
void hostcache_unpin(hostcache *hc, const struct sref *key, int owned);

/* st is a state that key's kept copy gave up (a later put stored it). When
 * key's entry borrows exactly st, the entry owns it again and 1 is returned;
 * otherwise 0, and st stays the caller's. */
int hostcache_adopt(hostcache *hc, const struct sref *key, ssm_state *st);

/* Gives up the caller's reference to key (taken; NULL is a no-op). When
 * the only other reference is the tier's own, no one can ask for key's
 * state any more: its entry goes (unless pinned), and its state, when the
 * entry owns it, becomes a spare. */
void hostcache_release(hostcache *hc, struct sref *key);

/* A spare state of the tier's model (contents undefined), now the caller's,
 * or NULL when there is none. Its bytes leave the tier's count. */
ssm_state *hostcache_spare_take(hostcache *hc);

/* Gives st (taken; NULL is a no-op) to the tier as a spare, or frees it
 * when the spares are full or the budget has no room for it. */
void hostcache_spare_put(hostcache *hc, ssm_state *st);

/* The counters above. */
void hostcache_stats_get(const hostcache *hc, struct hostcache_stats *out);

#endif
