/*
 * job.c — request lifecycle, reply arena, reply packing.
 */
#include "job.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sess.h"
#include "scheduler_impl.h"

struct arena_blk {
	struct arena_blk *next;
	size_t used, cap;
	max_align_t data[];
};

void *arena_alloc(struct arena *a, size_t n)
{
	struct arena_blk *b = a->head;
	size_t need = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t);
	void *p;

	if (!b || b->cap - b->used < need) {
		size_t cap = need > 256 ? need : 256; /* units of max_align_t */
		b = malloc(sizeof(*b) + cap * sizeof(max_align_t));
		if (!b)
			return NULL;
		b->next = a->head;
		b->used = 0;
		b->cap = cap;
		a->head = b;
	}
	p = &b->data[b->used];
	b->used += need;
	memset(p, 0, n);
	return p;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
	char *p = arena_alloc(a, n + 1);

	if (p)
		memcpy(p, s, n);
	return p;
}

char *arena_strdup(struct arena *a, const char *s)
{
	return arena_strndup(a, s, strlen(s));
}

void arena_fini(struct arena *a)
{
	while (a->head) {
		struct arena_blk *next = a->head->next;
		free(a->head);
		a->head = next;
	}
}

int job_alloc(Ssmd__Request *req, job_reply_fn fn, void *arg,
	      struct job **out)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j) {
		proto_request_free(req);
		return ssmd_err_set(SSMD_ENOMEM, "job");
	}
	j->req = req;
	j->reply_fn = fn;
	j->reply_arg = arg;
	ssmd__reply__init(&j->reply);
	*out = j;
	return SSMD_OK;
}

void job_unqueue(struct job *j)
{
	if (j->waiting) {
		atomic_fetch_sub(j->waiting, 1);
		j->waiting = NULL;
	}
}

void job_free(struct job *j)
{
	if (!j)
		return;
	job_unqueue(j);
	for (size_t i = 0; i < j->n_ckpts; i++)
		sref_put(j->ckpts[i]);
	free(j->ckpts);
	free(j->ckpt_tokens);
	sref_put(j->reply_ref);
	free(j->reply_tag);
	free(j->free_after);
	free(j->closed);
	gen_free(j->gen);
	score_free(j->score);
	merge_free(j->merge);
	free(j->toks);
	free(j->marks);
	arena_fini(&j->arena);
	proto_request_free(j->req);
	free(j);
}

int job_ckpt_add(struct job *j, struct sref *ref, uint64_t n_tokens)
{
	struct sref **p = realloc(j->ckpts, (j->n_ckpts + 1) * sizeof(*p));
	uint64_t *t;

	if (!p)
		return ssmd_err_set(SSMD_ENOMEM, "checkpoint list");
	j->ckpts = p;
	t = realloc(j->ckpt_tokens, (j->n_ckpts + 1) * sizeof(*t));
	if (!t)
		return ssmd_err_set(SSMD_ENOMEM, "checkpoint list");
	j->ckpt_tokens = t;
	t[j->n_ckpts] = n_tokens;
	j->ckpts[j->n_ckpts++] = sref_get(ref);
	return SSMD_OK;
}

int job_error_pack(const char *request_id, int code, const char *message,
		   void **buf, size_t *len)
{
	Ssmd__Reply r = SSMD__REPLY__INIT;

	r.request_id = (char *)(request_id ? request_id : "");
	r.has_code = 1;
	r.code = (uint32_t)code;
	r.message = (char *)message;
	return proto_msg_pack(&r.base, buf, len);
}

void job_finish(struct job *j, int code, const char *fmt, ...)
{
	char msg[1024] = "";
	void *buf = NULL;
	size_t len = 0;
	int rc;

	if (code) {
		if (fmt) {
			va_list ap;
			va_start(ap, fmt);
			vsnprintf(msg, sizeof(msg), fmt, ap);
			va_end(ap);
		} else {
			snprintf(msg, sizeof(msg), "%s", ssmd_errmsg());
		}
		if (!msg[0])
			snprintf(msg, sizeof(msg), "%s", ssmd_strerror(code));
		j->reply.result_case = SSMD__REPLY__RESULT__NOT_SET;
		j->reply.message = msg;
	}
	j->reply.request_id = j->req->request_id;
	j->reply.has_code = 1;
	j->reply.code = (uint32_t)code;
	log_debug("request %s (%s): %s%s%s", j->req->request_id,
		  proto_op_name(j->req), ssmd_strerror(code), code ? ": " : "",
		  msg);
	rc = proto_msg_pack(&j->reply.base, &buf, &len);
	if (rc) {
		/* Out of memory for the full reply: try the bare error. */
		rc = job_error_pack(j->req->request_id, SSMD_ENOMEM,
				    "reply too large for memory", &buf, &len);
	}
	if (rc)
		log_error("request %s: cannot pack even an error reply",
			  j->req->request_id);
	j->reply_fn(j->reply_arg, rc ? NULL : buf, rc ? 0 : len);
	free(buf);
	job_free(j);
}
