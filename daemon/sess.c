/*
 * sess.c — sessions, srefs and the session table.
 */
#include "sess.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "job.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct sref *sref_alloc(void)
{
	struct sref *r = calloc(1, sizeof(*r));

	if (r)
		atomic_init(&r->refs, 1);
	return r;
}

struct sref *sref_committed(const char *id)
{
	struct sref *r = sref_alloc();

	if (r)
		snprintf(r->id, sizeof(r->id), "%s", id);
	return r;
}

struct sref *sref_get(struct sref *r)
{
	if (r)
		atomic_fetch_add(&r->refs, 1);
	return r;
}

void sref_put(struct sref *r)
{
	/* Iterative over kept_parent so a long chain of failed puts cannot
	 * overflow the stack. */
	while (r && atomic_fetch_sub(&r->refs, 1) == 1) {
		struct sref *parent = r->kept_parent;
		ssm_state_free(r->kept);
		free(r->kept_tokens);
		free(r);
		r = parent;
	}
}

int sess_alloc(uint64_t seed, const char *label, struct sess **out)
{
	struct sess *s = calloc(1, sizeof(*s));
	uint8_t rnd[16];

	if (!s)
		goto nomem;
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
		free(s);
		return ssmd_err_set(SSMD_EIO, "getrandom failed for a session ID");
	}
	s->id[0] = 's';
	s->id[1] = '-';
	for (int i = 0; i < 16; i++)
		snprintf(s->id + 2 + 2 * i, 3, "%02x", rnd[i]);
	if (label && label[0] && !(s->label = strdup(label))) {
		free(s);
		goto nomem;
	}
	s->seed = seed;
	s->slot = -1;
	s->active_s = now_s();
	*out = s;
	return SSMD_OK;
nomem:
	return ssmd_err_set(SSMD_ENOMEM, "session");
}

void sess_free(struct sess *s)
{
	if (!s)
		return;
	sref_put(s->base);
	ssm_state_free(s->mem);
	free(s->trans);
	free(s->label);
	free(s);
}

int sess_trans_push(struct sess *s, const int32_t *tokens, size_t n)
{
	if (n == 0)
		return SSMD_OK; /* tokens may be NULL then */
	if (s->n_trans + n > s->cap_trans) {
		size_t cap = s->cap_trans ? s->cap_trans : 256;
		int32_t *p;
		while (cap < s->n_trans + n)
			cap *= 2;
		p = realloc(s->trans, cap * sizeof(*p));
		if (!p)
			return ssmd_err_set(SSMD_ENOMEM, "transcript of %zu tokens",
					    cap);
		s->trans = p;
		s->cap_trans = cap;
	}
	memcpy(s->trans + s->n_trans, tokens, n * sizeof(*tokens));
	s->n_trans += n;
	return SSMD_OK;
}

void sess_job_push(struct sess *s, struct job *j)
{
	j->next = NULL;
	j->sess = s;
	s->active_s = now_s();
	if (s->tail)
		s->tail->next = j;
	else
		s->head = j;
	s->tail = j;
}

struct job *sess_job_pop(struct sess *s)
{
	struct job *j = s->head;

	if (j) {
		s->active_s = now_s();
		s->head = j->next;
		if (!s->head)
			s->tail = NULL;
		j->next = NULL;
	}
	return j;
}

int sess_table_add(struct sess_table *t, struct sess *s)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 64;
		struct sess **v = realloc(t->v, cap * sizeof(*v));
		if (!v)
			return ssmd_err_set(SSMD_ENOMEM, "session table");
		t->v = v;
		t->cap = cap;
	}
	t->v[t->n++] = s;
	return SSMD_OK;
}

struct sess *sess_table_find(const struct sess_table *t, const char *id)
{
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->v[i]->id, id) == 0)
			return t->v[i];
	return NULL;
}

void sess_table_remove(struct sess_table *t, struct sess *s)
{
	for (size_t i = 0; i < t->n; i++) {
		if (t->v[i] == s) {
			t->v[i] = t->v[--t->n];
			return;
		}
	}
}

struct sess *sess_table_lru_idle(const struct sess_table *t)
{
	struct sess *best = NULL;

	for (size_t i = 0; i < t->n; i++) {
		struct sess *s = t->v[i];
		if (s->slot < 0 || s->loading || s->head)
			continue;
		if (!best || s->last_used < best->last_used)
			best = s;
	}
	return best;
}

void sess_table_fini(struct sess_table *t)
{
	free(t->v);
	t->v = NULL;
	t->n = t->cap = 0;
}
