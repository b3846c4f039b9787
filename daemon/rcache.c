/*
 * rcache.c — (client_id, request_id) → reply, with chained hashing and FIFO
 * eviction of finished entries.
 */
#include "rcache.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

struct waiter {
	void *arg;
	struct waiter *next;
};

struct entry {
	struct entry *chain;          /* next in the hash bucket */
	struct entry *older, *newer;  /* FIFO of finished entries */
	uint64_t hash;
	char *key;                    /* client_id, NUL, request_id, NUL */
	size_t key_len;
	int done;
	void *reply;
	size_t reply_len;
	struct waiter *waiters;       /* while in progress */
};

struct rcache {
	pthread_mutex_t lock;
	struct entry **buckets;
	size_t n_buckets;             /* power of two */
	size_t capacity, n_done;
	size_t max_bytes, bytes;      /* of the finished replies */
	struct entry *oldest, *newest;
};

static int key_make(const char *client_id, const char *request_id, char **key,
		    size_t *len)
{
	size_t a = client_id ? strlen(client_id) : 0;
	size_t b = strlen(request_id);
	char *k = malloc(a + b + 2);

	if (!k)
		return ssmd_err_set(SSMD_ENOMEM, "request cache key");
	if (a)
		memcpy(k, client_id, a);
	k[a] = 0;
	memcpy(k + a + 1, request_id, b + 1);
	*key = k;
	*len = a + b + 2;
	return SSMD_OK;
}

int rcache_alloc(size_t capacity, size_t max_bytes, rcache **out)
{
	rcache *c = calloc(1, sizeof(*c));
	size_t nb = 64;

	if (!c || capacity == 0)
		goto fail;
	/* Load factor <= 1 at capacity, counting as many entries in progress. */
	while (nb < 2 * capacity)
		nb *= 2;
	c->buckets = calloc(nb, sizeof(*c->buckets));
	if (!c->buckets)
		goto fail;
	c->n_buckets = nb;
	c->capacity = capacity;
	c->max_bytes = max_bytes;
	pthread_mutex_init(&c->lock, NULL);
	*out = c;
	return SSMD_OK;
fail:
	free(c);
	return ssmd_err_set(capacity ? SSMD_ENOMEM : SSMD_EINVAL,
			    "request cache of %zu entries", capacity);
}

static void entry_free(struct entry *e)
{
	struct waiter *w = e->waiters;

	while (w) {
		struct waiter *next = w->next;
		free(w);
		w = next;
	}
	free(e->key);
	free(e->reply);
	free(e);
}

void rcache_free(rcache *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_buckets; i++) {
		struct entry *e = c->buckets[i];
		while (e) {
			struct entry *next = e->chain;
			entry_free(e);
			e = next;
		}
	}
	pthread_mutex_destroy(&c->lock);
	free(c->buckets);
	free(c);
}

/* The link that points at the entry with this key (or the bucket's end). */
static struct entry **entry_link(rcache *c, uint64_t hash, const char *key,
				 size_t len)
{
	struct entry **p = &c->buckets[hash & (c->n_buckets - 1)];

	while (*p && !((*p)->hash == hash && (*p)->key_len == len &&
		       memcmp((*p)->key, key, len) == 0))
		p = &(*p)->chain;
	return p;
}

static void fifo_unlink(rcache *c, struct entry *e)
{
	if (e->older)
		e->older->newer = e->newer;
	else
		c->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		c->newest = e->older;
	e->older = e->newer = NULL;
}

/* rcache_begin() and rcache_lookup(): create says whether an unknown key
 * becomes a new entry (begin) or SSMD_ENOENT (lookup). */
static int cache_find(rcache *c, const char *client_id, const char *request_id,
		      void *waiter, void **reply, size_t *len, int *state,
		      int create)
{
	char *key;
	size_t key_len;
	uint64_t hash;
	struct entry **link, *e;
	int rc = key_make(client_id, request_id, &key, &key_len);

	if (rc)
		return rc;
	hash = XXH3_64bits(key, key_len);
	pthread_mutex_lock(&c->lock);
	link = entry_link(c, hash, key, key_len);
	e = *link;
	if (e && e->done && !reply) {
		*state = RCACHE_DONE;
	} else if (e && e->done) {
		void *copy = malloc(e->reply_len ? e->reply_len : 1);
		if (!copy) {
			rc = ssmd_err_set(SSMD_ENOMEM, "request cache reply copy");
			goto out;
		}
		memcpy(copy, e->reply, e->reply_len);
		*reply = copy;
		*len = e->reply_len;
		*state = RCACHE_DONE;
	} else if (e && !waiter) {
		*state = RCACHE_PENDING;
	} else if (e) {
		struct waiter *w = malloc(sizeof(*w));
		if (!w) {
			rc = ssmd_err_set(SSMD_ENOMEM, "request cache waiter");
			goto out;
		}
		w->arg = waiter;
		w->next = e->waiters;
		e->waiters = w;
		*state = RCACHE_PENDING;
	} else if (!create) {
		rc = ssmd_err_set(SSMD_ENOENT,
				  "request '%.128s' is unknown or no longer remembered",
				  request_id);
	} else {
		e = calloc(1, sizeof(*e));
		if (!e) {
			rc = ssmd_err_set(SSMD_ENOMEM, "request cache entry");
			goto out;
		}
		e->hash = hash;
		e->key = key;
		e->key_len = key_len;
		key = NULL;
		*link = e;
		*state = RCACHE_NEW;
	}
out:
	pthread_mutex_unlock(&c->lock);
	free(key);
	return rc;
}

int rcache_begin(rcache *c, const char *client_id, const char *request_id,
		 void *waiter, void **reply, size_t *len, int *state)
{
	return cache_find(c, client_id, request_id, waiter, reply, len, state, 1);
}

int rcache_lookup(rcache *c, const char *client_id, const char *request_id,
		  void *waiter, void **reply, size_t *len, int *state)
{
	return cache_find(c, client_id, request_id, waiter, reply, len, state, 0);
}

int rcache_finish(rcache *c, const char *client_id, const char *request_id,
		  const void *reply, size_t len, int remember,
		  rcache_waiter_fn fn)
{
	char *key;
	size_t key_len;
	uint64_t hash;
	struct entry **link, *e, *evicted = NULL;
	struct waiter *waiters;
	int rc = key_make(client_id, request_id, &key, &key_len);

	if (rc)
		return rc;
	hash = XXH3_64bits(key, key_len);
	pthread_mutex_lock(&c->lock);
	link = entry_link(c, hash, key, key_len);
	e = *link;
	if (!e || e->done) {
		pthread_mutex_unlock(&c->lock);
		free(key);
		return ssmd_err_set(SSMD_ENOENT, "request '%s' is not in progress",
				    request_id);
	}
	waiters = e->waiters;
	e->waiters = NULL;
	if (len > c->max_bytes)
		remember = 0;
	if (remember) {
		e->reply = malloc(len ? len : 1);
		if (!e->reply) {
			rc = ssmd_err_set(SSMD_ENOMEM, "request cache reply");
			remember = 0;
		}
	}
	if (remember) {
		memcpy(e->reply, reply, len);
		e->reply_len = len;
		e->done = 1;
		e->older = c->newest;
		if (c->newest)
			c->newest->newer = e;
		else
			c->oldest = e;
		c->newest = e;
		c->n_done++;
		c->bytes += len;
		/* Evicted entries are chained through `chain` (unlinked from
		 * their buckets) and freed after the lock is dropped. */
		while (c->n_done > c->capacity || c->bytes > c->max_bytes) {
			struct entry *old = c->oldest;
			fifo_unlink(c, old);
			*entry_link(c, old->hash, old->key, old->key_len) = old->chain;
			c->n_done--;
			c->bytes -= old->reply_len;
			old->chain = evicted;
			evicted = old;
		}
	} else {
		*link = e->chain;
		e->chain = NULL;
		evicted = e;
	}
	pthread_mutex_unlock(&c->lock);
	free(key);
	while (evicted) {
		struct entry *next = evicted->chain;
		entry_free(evicted);
		evicted = next;
	}
	while (waiters) {
		struct waiter *next = waiters->next;
		if (fn)
			fn(waiters->arg, reply, len);
		free(waiters);
		waiters = next;
	}
	return rc;
}

size_t rcache_size(rcache *c)
{
	size_t n;

	pthread_mutex_lock(&c->lock);
	n = c->n_done;
	pthread_mutex_unlock(&c->lock);
	return n;
}

size_t rcache_bytes(rcache *c)
{
	size_t n;

	pthread_mutex_lock(&c->lock);
	n = c->bytes;
	pthread_mutex_unlock(&c->lock);
	return n;
}
