/*
 * storeq.c — a FIFO of tasks served by one thread.
 */
#include "storeq.h"

#include <pthread.h>
#include <stdlib.h>

struct storeq {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct storeq_task *head, *tail;
	int stopping;
	pthread_t thread;
};

static void *storeq_main(void *arg)
{
	storeq *q = arg;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		struct storeq_task *t = q->head;
		if (!t) {
			if (q->stopping)
				break;
			pthread_cond_wait(&q->cond, &q->lock);
			continue;
		}
		q->head = t->next;
		if (!q->head)
			q->tail = NULL;
		pthread_mutex_unlock(&q->lock);
		t->fn(t); /* may free t */
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

int storeq_start(storeq **out)
{
	storeq *q = calloc(1, sizeof(*q));

	if (!q)
		return ssmd_err_set(SSMD_ENOMEM, "store queue");
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->cond, NULL);
	if (pthread_create(&q->thread, NULL, storeq_main, q) != 0) {
		pthread_cond_destroy(&q->cond);
		pthread_mutex_destroy(&q->lock);
		free(q);
		return ssmd_err_set(SSMD_EIO, "cannot start the store thread");
	}
	*out = q;
	return SSMD_OK;
}

void storeq_post(storeq *q, struct storeq_task *t, storeq_fn fn)
{
	t->fn = fn;
	t->next = NULL;
	pthread_mutex_lock(&q->lock);
	if (q->tail)
		q->tail->next = t;
	else
		q->head = t;
	q->tail = t;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

void storeq_stop(storeq *q)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stopping = 1;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
	pthread_join(q->thread, NULL);
	pthread_cond_destroy(&q->cond);
	pthread_mutex_destroy(&q->lock);
	free(q);
}
