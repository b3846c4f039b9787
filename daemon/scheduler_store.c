/*
 * scheduler_store.c — the scheduler's store-thread half: commits of snapshots and
 * checkpoints, page-ins, resolving states to open, replies that must wait for
 * commits, and the library-only requests.
 *
 * Every function whose name ends in _run executes on the store thread.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "log.h"
#include "scheduler_impl.h"

/* ------------------------------------------------------------ replies -- */

/* Tags, fills the reply's checkpoint IDs and state ID, finishes the job. */
static void reply_finish(struct job *j)
{
	sched *s = j->sched;
	char **ckpt_ids = NULL;
	uint64_t *ckpt_tokens = NULL;
	size_t n_ids = 0;
	char *id = NULL;

	if (j->closed) {
		/* Before the reply, so a client that retries the close
		 * after a failure finds its session open again. */
		j->closed->rc = j->reply_ref ? j->reply_ref->rc : SSMD_OK;
		sched_done_post(s, j->closed);
		j->closed = NULL;
	}
	if (j->reply_ref) {
		if (j->reply_ref->rc) {
			job_finish(j, j->reply_ref->rc,
				   "the state could not be stored (the session keeps it in memory%s): %s",
				   j->req->op_case == SSMD__REQUEST__OP_CLOSE
					   ? " and stays open" : "",
				   ssmd_strerror(j->reply_ref->rc));
			return;
		}
		id = j->reply_ref->id;
		if (j->reply_tag) {
			int rc = store_tag_set(s->store, j->reply_tag, id);
			if (rc) {
				job_finish(j, rc, "state %s stored, but tag '%s' failed: %s",
					   id, j->reply_tag, ssmd_errmsg());
				return;
			}
		}
	}
	if (j->n_ckpts) {
		ckpt_ids = arena_alloc(&j->arena, j->n_ckpts * sizeof(char *));
		ckpt_tokens = arena_alloc(&j->arena, j->n_ckpts * sizeof(uint64_t));
		if (!ckpt_ids || !ckpt_tokens) {
			job_finish(j, SSMD_ENOMEM, "reply");
			return;
		}
		for (size_t i = 0; i < j->n_ckpts; i++)
			if (!j->ckpts[i]->rc) {
				ckpt_tokens[n_ids] = j->ckpt_tokens[i];
				ckpt_ids[n_ids++] = j->ckpts[i]->id;
			}
	}
	switch (j->reply.result_case) {
	case SSMD__REPLY__RESULT_APPEND:
		j->reply.append->checkpoints = ckpt_ids;
		j->reply.append->n_checkpoints = n_ids;
		j->reply.append->checkpoint_tokens = ckpt_tokens;
		j->reply.append->n_checkpoint_tokens = n_ids;
		break;
	case SSMD__REPLY__RESULT_MERGE:
		j->reply.merge->state_id = id;
		break;
	case SSMD__REPLY__RESULT_GENERATE:
		j->reply.generate->checkpoints = ckpt_ids;
		j->reply.generate->n_checkpoints = n_ids;
		j->reply.generate->state_id = id;
		break;
	case SSMD__REPLY__RESULT_STATE_REF:
		j->reply.state_ref->state_id = id;
		break;
	default:
		break;
	}
	job_finish(j, SSMD_OK, NULL);
}

static void reply_run(struct storeq_task *t)
{
	reply_finish((struct job *)t);
}

void sched_store_reply(sched *s, struct job *j)
{
	storeq_post(s->sq, &j->task, reply_run);
}

/* --------------------------------------------------------------- puts -- */

/* The transcript from the nearest committed ancestor: the kept transcripts
 * of failed puts in between, oldest first, then the put's own. *parent gets
 * that ancestor (NULL = root). *joined is NULL when no join was needed. */
static int put_transcript(struct put_args *a, struct sref **parent,
			  const int32_t **tokens, size_t *n, int32_t **joined)
{
	struct sref *p = a->parent;
	size_t total = a->n_tokens, at;
	int32_t *buf;

	*joined = NULL;
	while (p && p->rc) {
		total += p->n_kept;
		p = p->kept_parent;
	}
	*parent = p;
	if (total == a->n_tokens) {
		*tokens = a->tokens;
		*n = a->n_tokens;
		return SSMD_OK;
	}
	buf = malloc(total * sizeof(*buf));
	if (!buf)
		return ssmd_err_set(SSMD_ENOMEM, "transcript of %zu tokens", total);
	at = total - a->n_tokens;
	memcpy(buf + at, a->tokens, a->n_tokens * sizeof(*buf));
	for (p = a->parent; p && p->rc; p = p->kept_parent) {
		at -= p->n_kept;
		memcpy(buf + at, p->kept_tokens, p->n_kept * sizeof(*buf));
	}
	*joined = buf;
	*tokens = buf;
	*n = total;
	return SSMD_OK;
}

/* Frees a put's arguments and everything they own; NULL is a no-op. */
/* Posts a's close completion, if any, with rc (SSMD_OK: the state is in
 * the library, so the session may close). */
static void closed_post(struct put_args *a, int rc)
{
	if (!a->closed)
		return;
	a->closed->rc = rc;
	sched_done_post(a->s, a->closed);
	a->closed = NULL;
}

static void put_args_free(struct put_args *a)
{
	if (!a)
		return;
	free(a->tokens);
	if (!a->borrowed)
		ssm_state_free(a->st);
	free(a->done);
	free(a->closed);
	free(a->label);
	free(a->tag);
	free(a->sess_label);
	free(a->extra);
	sref_put(a->ref);
	sref_put(a->parent);
	free(a);
}

/*
 * Encodes st into the store thread's one put buffer, grown as needed: a
 * fresh buffer of a 1.4b state's 15.7 MB costs a page fault per 4 kB page
 * on first touch (about as long as the encode), and its free gives the
 * pages back to be faulted in again by the next put. *raw points into it
 * until the next put_encode.
 */
static int put_encode(sched *s, const ssm_state *st, void **raw, size_t *raw_len)
{
	const size_t len = ssm_state_encoded_size(st);

	if (len > s->put_raw_cap) {
		free(s->put_raw);
		s->put_raw_cap = 0;
		if (!(s->put_raw = malloc(len)))
			return ssmd_err_set(SSMD_ENOMEM, "encoding a state of %zu bytes", len);
		s->put_raw_cap = len;
	}
	*raw = s->put_raw;
	*raw_len = len;
	return ssm_state_encode(st, s->put_raw, len);
}

/* Encodes st and stores it as a's put describes (kind, label, first parent
 * a->parent reaching back over failed puts, transcript a->tokens, a merge's
 * further parents, the session row); id gets the new ID at commit. */
static int put_store(struct put_args *a, const ssm_state *st,
		     char id[STORE_ID_SIZE])
{
	sched *s = a->s;
	struct sref *parent = NULL;
	const int32_t *tokens = NULL;
	int32_t *joined = NULL;
	size_t n_tokens = 0, raw_len = 0;
	void *raw = NULL;
	char metadata[64 + SESS_ID_SIZE];
	int rc;

	rc = put_transcript(a, &parent, &tokens, &n_tokens, &joined);
	if (rc)
		goto done;
	rc = put_encode(s, st, &raw, &raw_len);
	if (rc)
		goto done;
	snprintf(metadata, sizeof(metadata), "{\"session\":\"%s\"}", a->session);
	/* The first parent (the transcript's start), then a merge's others. */
	const char *parents[STORE_PARENTS_MAX];
	size_t n_parents = 0;
	if (parent)
		parents[n_parents++] = parent->id;
	for (size_t i = 0; i < a->n_extra && n_parents < STORE_PARENTS_MAX; i++)
		parents[n_parents++] = a->extra[i];
	store_put p = {
		.raw = raw,
		.raw_len = raw_len,
		.kind = a->kind,
		.parents = n_parents ? parents : NULL,
		.n_parents = n_parents,
		.label = a->label,
		/* An internal session (a replay not opened) is no one's. */
		.metadata = a->persist ? metadata : NULL,
		.tokens = tokens,
		.n_tokens = n_tokens,
		/* The session continues from this state, in the same commit. */
		.session = a->persist ? a->session : NULL,
		.session_seed = a->seed,
		.session_label = a->sess_label,
	};
	rc = store_state_put(s->store, &p, id);
	if (rc == SSMD_ENOENT && parent) {
		/* The parent was deleted while the session built on it: keep
		 * the state, as a root; its tokens before this one are gone. */
		log_warn("session %s: parent state %s was deleted; storing its state as a root without transcript",
			 a->session, parent->id);
		p.parents = a->n_extra ? parents + 1 : NULL;
		p.n_parents = a->n_extra;
		p.tokens = NULL;
		p.n_tokens = 0;
		rc = store_state_put(s->store, &p, id);
	}
done:
	free(joined);
	return rc;
}

static void put_run(struct storeq_task *t)
{
	struct put_args *a = (struct put_args *)t;
	struct done_msg *m = NULL;
	sched *s;
	char id[STORE_ID_SIZE];
	int rc = put_store(a, a->st, id);

	if (rc == SSMD_OK) {
		memcpy(a->ref->id, id, sizeof(id));
		if (a->log_commit)
			log_info("session %s -> state %s (%llu tokens)", a->session,
				 id, (unsigned long long)a->st->n_tokens);
		else
			log_debug("session %s: stored %s %s (%llu tokens)",
				  a->session, store_kind_name(a->kind), id,
				  (unsigned long long)a->st->n_tokens);
	} else {
		/* Keep what could not be stored, so the session loses nothing:
		 * its page-in and its next put reach back to it. */
		log_error("session %s: storing its state failed (%s: %s); kept in memory",
			  a->session, ssmd_strerror(rc), ssmd_errmsg());
		atomic_fetch_add(&a->s->store_failures, 1);
		a->ref->kept = a->st;
		a->ref->kept_tokens = a->tokens;
		a->ref->n_kept = a->n_tokens;
		a->ref->kept_parent = a->parent;
		a->st = NULL;
		a->tokens = NULL;
		a->parent = NULL;
		a->ref->rc = rc;
	}
	if (a->borrowed) {
		/* The host tier's entry may be dropped from now on; after a
		 * failure it only borrows the state, which is the kept copy. */
		m = a->done;
		a->done = NULL;
		a->st = NULL;
		m->type = DONE_COMMITTED;
		m->s = a->s;
		m->ref = sref_get(a->ref);
		m->parent = a->parent; /* the reference moves */
		a->parent = NULL;
		m->rc = rc;
	}
	if (a->job) {
		a->job->reply_ref = sref_get(a->ref);
		a->job->reply_tag = a->tag;
		a->tag = NULL;
		reply_finish(a->job);
	}
	s = a->s;
	closed_post(a, a->ref->rc);
	put_args_free(a);
	/* Last, after the put's own references are gone: the scheduler then
	 * sees whether it holds the last ones (hostcache_release()). */
	if (m)
		sched_done_post(s, m);
}

void sched_store_put(struct put_args *a)
{
	storeq_post(a->s->sq, &a->task, put_run);
}

/* a->ref is the base of a session with no progress since. When its put
 * failed, its kept state is stored now, reaching back over the failed puts
 * before it as a put would, and on commit the sref becomes that committed
 * state in place: every holder of it (the session, its forks) now builds on
 * a stored state. Then the job, if any, replies with the sref. */
static void heal_run(struct storeq_task *t)
{
	struct put_args *a = (struct put_args *)t;
	struct sref *r = a->ref;
	char id[STORE_ID_SIZE];
	int rc;

	assert(a->done);
	if (r->rc) {
		/* Borrowed from r for the put. */
		a->parent = r->kept_parent;
		a->tokens = r->kept_tokens;
		a->n_tokens = r->n_kept;
		rc = put_store(a, r->kept, id);
		a->parent = NULL;
		a->tokens = NULL;
		a->n_tokens = 0;
		if (rc == SSMD_OK) {
			log_info("session %s -> state %s (%llu tokens), stored on a second attempt",
				 a->session, id, (unsigned long long)r->kept->n_tokens);
			memcpy(r->id, id, sizeof(id));
			/* The host tier may be reading the kept state (a
			 * page-out's put that failed): the scheduler frees
			 * it, or its tier entry owns it again. */
			a->done->type = DONE_HEALED;
			a->done->s = a->s;
			a->done->ref = sref_get(r);
			a->done->st = r->kept;
			sched_done_post(a->s, a->done);
			a->done = NULL;
			free(r->kept_tokens);
			sref_put(r->kept_parent);
			r->kept = NULL;
			r->kept_tokens = NULL;
			r->n_kept = 0;
			r->kept_parent = NULL;
			r->rc = SSMD_OK;
		} else {
			log_error("session %s: storing its state failed again (%s: %s); kept in memory",
				  a->session, ssmd_strerror(rc), ssmd_errmsg());
		}
	}
	if (a->job) {
		a->job->reply_ref = sref_get(r);
		a->job->reply_tag = a->tag;
		a->tag = NULL;
		reply_finish(a->job);
	}
	closed_post(a, r->rc);
	put_args_free(a);
}

void sched_store_heal(struct put_args *a)
{
	storeq_post(a->s->sq, &a->task, heal_run);
}

/* ------------------------------------------------------- loads, opens -- */

/* Reads and checks a stored state: decoded, of the served model. */
static int state_read(sched *s, const char *ref, ssm_state **out,
		      char id[STORE_ID_SIZE])
{
	void *raw = NULL;
	size_t len = 0;
	store_state_info info;
	ssm_state *st = NULL;
	int rc;

	memset(&info, 0, sizeof(info));
	rc = store_state_get(s->store, ref, &raw, &len, &info);
	if (rc)
		return rc;
	rc = ssm_state_decode(raw, len, &st);
	if (rc)
		goto out;
	rc = ssm_model_check_state(s->model, st);
	if (rc) {
		char fp[2 * SSM_FINGERPRINT_LEN + 1];
		ssm_fingerprint_hex(st->fingerprint, fp);
		rc = ssmd_err_set(SSMD_EMODEL,
				  "state %s belongs to another model (fingerprint %s); this daemon serves %s (fingerprint %s)",
				  info.id, fp, s->model_name, s->fp_hex);
		goto out;
	}
	if (id)
		memcpy(id, info.id, STORE_ID_SIZE);
	*out = st;
	st = NULL;
out:
	ssm_state_free(st);
	free(raw);
	store_state_info_fini(&info);
	return rc;
}

static void done_fail(struct done_msg *m, int rc)
{
	m->rc = rc;
	snprintf(m->err, sizeof(m->err), "%s", ssmd_errmsg());
}

static void load_run(struct storeq_task *t)
{
	struct done_msg *m = (struct done_msg *)t;
	struct sref *r = m->ref;
	int rc;

	if (r->rc) {
		/* The put failed: the state is the one kept in memory. */
		rc = ssm_model_state_alloc(m->s->model, &m->st);
		if (!rc)
			rc = ssm_state_copy(m->st, r->kept);
	} else {
		rc = state_read(m->s, r->id, &m->st, NULL);
	}
	if (rc)
		done_fail(m, rc);
	sref_put(m->ref);
	m->ref = NULL;
	sched_done_post(m->s, m);
}

int sched_store_load(sched *s, struct sess *sess, struct sref *ref)
{
	struct done_msg *m = calloc(1, sizeof(*m));

	if (!m)
		return ssmd_err_set(SSMD_ENOMEM, "page-in");
	m->type = DONE_LOADED;
	m->s = s;
	m->sess = sess;
	m->ref = sref_get(ref);
	storeq_post(s->sq, &m->task, load_run);
	return SSMD_OK;
}

static void resolve_run(struct storeq_task *t)
{
	struct done_msg *m = (struct done_msg *)t;
	int rc = state_read(m->s, m->ref_str, &m->st, m->id);

	if (rc)
		done_fail(m, rc);
	sched_done_post(m->s, m);
}

int sched_store_resolve(sched *s, struct job *job, const char *ref)
{
	struct done_msg *m;

	if (strlen(ref) > STORE_TAG_MAX)
		return ssmd_err_set(SSMD_EINVAL, "state reference longer than %d bytes",
				    STORE_TAG_MAX);
	m = calloc(1, sizeof(*m));
	if (!m)
		return ssmd_err_set(SSMD_ENOMEM, "open");
	m->type = DONE_OPENED;
	m->s = s;
	m->job = job;
	snprintf(m->ref_str, sizeof(m->ref_str), "%s", ref);
	storeq_post(s->sq, &m->task, resolve_run);
	return SSMD_OK;
}

/* ------------------------------------------------------------- merges -- */

/* Stores a merged state (kind merge, parents = the sources in order) and
 * tags it; id gets its ID. */
static int merge_put(sched *s, struct job *j, const ssm_state *st,
		     char id[STORE_ID_SIZE])
{
	const Ssmd__MergeRequest *q = j->req->merge;
	struct merge *m = j->merge;
	const char *parents[STORE_PARENTS_MAX];
	size_t raw_len = 0;
	void *raw = NULL;
	int rc;

	for (size_t i = 0; i < m->n; i++)
		parents[i] = m->ids[i];
	rc = put_encode(s, st, &raw, &raw_len);
	if (!rc) {
		store_put p = {
			.raw = raw,
			.raw_len = raw_len,
			.kind = STORE_KIND_MERGE,
			.parents = parents,
			.n_parents = m->n,
			.label = q->label,
			.metadata = m->mode == MERGE_COMPOSE ? "{\"merge\":\"compose\"}"
							     : "{\"merge\":\"interpolate\"}",
		};
		rc = store_state_put(s->store, &p, id);
	}
	if (!rc && q->tag && q->tag[0] && (rc = store_tag_set(s->store, q->tag, id)))
		rc = ssmd_err_set(rc, "merged state %s stored, but tag '%s' failed: %s",
				  id, q->tag, ssmd_errmsg());
	return rc;
}

/* The tokens that replay sources 1..n-1 onto source 0: each one's whole
 * transcript from its root, in order. */
static int merge_replay_tokens(sched *s, struct merge *m, ssm_state **st)
{
	size_t total = 0;

	for (size_t i = 1; i < m->n; i++) {
		int32_t *t = NULL, *all;
		size_t n = 0;
		int rc = store_transcript(s->store, m->ids[i], &t, &n);
		if (rc)
			return rc;
		if (n != st[i]->n_tokens) {
			free(t);
			return ssmd_err_set(SSMD_EINVAL,
					    "state %s cannot be replayed: its transcript holds %zu of its %llu tokens (a merge, import or deleted transcript in its lineage)",
					    m->ids[i], n,
					    (unsigned long long)st[i]->n_tokens);
		}
		if (total + n > (size_t)s->cfg->max_append_tokens) {
			free(t);
			return ssmd_err_set(SSMD_ERANGE,
					    "replay of %zu tokens; at most %d",
					    total + n, s->cfg->max_append_tokens);
		}
		all = realloc(m->tokens, (total + n + 1) * sizeof(*all));
		if (!all) {
			free(t);
			return ssmd_err_set(SSMD_ENOMEM, "replay tokens");
		}
		if (n)
			memcpy(all + total, t, n * sizeof(*t));
		m->tokens = all;
		total += n;
		free(t);
	}
	m->n_tokens = total;
	return SSMD_OK;
}

static void merge_run(struct storeq_task *t)
{
	struct job *j = (struct job *)t;
	sched *s = j->sched;
	const Ssmd__MergeRequest *q = j->req->merge;
	struct merge *m = j->merge;
	ssm_state *st[STORE_PARENTS_MAX] = {0}, *out = NULL;
	struct done_msg *dm = NULL;
	char id[STORE_ID_SIZE];
	size_t n = m->n;           /* m goes with j when j finishes */
	int rc = SSMD_OK;

	job_unqueue(j);
	for (size_t i = 0; !rc && i < m->n; i++)
		rc = state_read(s, q->sources[i], &st[i], m->ids[i]);
	if (!rc && m->mode == MERGE_REPLAY) {
		rc = merge_replay_tokens(s, m, st);
		if (!rc) {
			out = st[0];
			st[0] = NULL;
			memcpy(id, m->ids[0], sizeof(id));
		}
	} else if (!rc) {
		rc = ssm_model_state_alloc(s->model, &out);
		if (!rc && m->mode == MERGE_INTERPOLATE)
			rc = ssm_merge_interpolate((const ssm_state *const *)st,
						   q->n_weights ? q->weights : NULL,
						   m->n, out);
		for (size_t i = 0; !rc && m->mode == MERGE_COMPOSE && i < m->n; i++)
			rc = i == 0 ? ssm_state_copy(out, st[0])
				    : ssm_merge_compose(s->model, out, st[i], out);
		if (!rc)
			rc = merge_put(s, j, out, id);
		if (!rc && !m->open) {
			rc = reply_merge(j, out->n_tokens, NULL);
			if (!rc && !(j->reply.merge->state_id = arena_strdup(&j->arena, id)))
				rc = ssmd_err_set(SSMD_ENOMEM, "reply");
			if (!rc) {
				job_finish(j, SSMD_OK, NULL);
				j = NULL;
			}
		}
	}
	if (!rc && j && !(dm = calloc(1, sizeof(*dm))))
		rc = ssmd_err_set(SSMD_ENOMEM, "merge");
	if (rc && j)
		job_finish(j, rc, NULL);
	else if (dm) {
		/* Replay, or open a session on the result: the scheduler. */
		dm->type = DONE_MERGED;
		dm->s = s;
		dm->job = j;
		dm->st = out;
		out = NULL;
		memcpy(dm->id, id, sizeof(id));
		sched_done_post(s, dm);
	}
	ssm_state_free(out);
	for (size_t i = 0; i < n; i++)
		ssm_state_free(st[i]);
}

void sched_store_merge(sched *s, struct job *j)
{
	storeq_post(s->sq, &j->task, merge_run);
}

/* ----------------------------------------------------------- sessions -- */

/* Session table rows to write (open) or mark closed, in one transaction. */
struct sess_task {
	struct storeq_task task;
	sched *s;
	int closed;
	size_t n;
	struct sref **base;        /* (n) references; NULL = zero state */
	store_session rows[];      /* (n) id, seed, label; state filled at run */
};

static void sess_task_run(struct storeq_task *t)
{
	struct sess_task *a = (struct sess_task *)t;
	int rc = SSMD_OK;

	for (size_t i = 0; i < a->n; i++) {
		/* A put that failed keeps its state in memory: the row names
		 * the nearest ancestor that was stored. */
		struct sref *b = a->base[i];
		while (b && b->rc)
			b = b->kept_parent;
		snprintf(a->rows[i].state, sizeof(a->rows[i].state), "%s",
			 b ? b->id : "");
	}
	if (a->closed) {
		for (size_t i = 0; i < a->n; i++) {
			int r = store_session_close(a->s->store, a->rows[i].id);
			if (r && r != SSMD_ENOENT)
				rc = r;
		}
	} else {
		rc = store_session_put_many(a->s->store, a->rows, a->n);
	}
	if (rc)
		log_warn("recording %zu session%s in the session table failed: %s",
			 a->n, a->n == 1 ? "" : "s", ssmd_errmsg());
	for (size_t i = 0; i < a->n; i++)
		sref_put(a->base[i]);
	free(a->base);
	free(a);
}

int sched_store_sessions(sched *s, struct sess *const *v, size_t n, int closed)
{
	struct sess_task *a = calloc(1, sizeof(*a) + n * sizeof(a->rows[0]));

	if (!a || !(a->base = calloc(n ? n : 1, sizeof(*a->base)))) {
		free(a);
		return ssmd_err_set(SSMD_ENOMEM, "session table");
	}
	a->s = s;
	a->closed = closed;
	a->n = n;
	for (size_t i = 0; i < n; i++) {
		memcpy(a->rows[i].id, v[i]->id, SESS_ID_SIZE);
		a->rows[i].seed = v[i]->seed;
		snprintf(a->rows[i].label, sizeof(a->rows[i].label), "%s",
			 v[i]->label ? v[i]->label : "");
		a->base[i] = sref_get(v[i]->base);
	}
	storeq_post(s->sq, &a->task, sess_task_run);
	return SSMD_OK;
}

int sched_store_session(sched *s, struct sess *x, int closed)
{
	return sched_store_sessions(s, &x, 1, closed);
}

/* ------------------------------------------------ library-only requests -- */

int sched_op_is_store(const Ssmd__Request *req)
{
	switch (req->op_case) {
	case SSMD__REQUEST__OP_STATES:
	case SSMD__REQUEST__OP_STATE:
	case SSMD__REQUEST__OP_TAG:
	case SSMD__REQUEST__OP_UNTAG:
	case SSMD__REQUEST__OP_DELETE_STATE:
	case SSMD__REQUEST__OP_EXPORT_STATE:
	case SSMD__REQUEST__OP_IMPORT_STATE:
		return 1;
	default:
		return 0;
	}
}

/* The session a state was written by, from its metadata, or "". */
static void meta_session(const char *metadata, char out[SESS_ID_SIZE])
{
	cJSON *root = metadata ? cJSON_Parse(metadata) : NULL;
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "session");

	out[0] = 0;
	if (cJSON_IsString(v))
		snprintf(out, SESS_ID_SIZE, "%s", v->valuestring);
	cJSON_Delete(root);
}

/* Tags of every state, for listing (one query per request). */
struct tag_list {
	store_tag *v;
	size_t n;
};

static Ssmd__StateInfo *info_to_proto(struct job *j, const store_state_info *in,
				      const struct tag_list *tags)
{
	Ssmd__StateInfo *o = arena_alloc(&j->arena, sizeof(*o));
	char fp[2 * STORE_FINGERPRINT_LEN + 1];
	size_t nt = 0;

	if (!o)
		return NULL;
	ssmd__state_info__init(o);
	ssm_fingerprint_hex(in->fingerprint, fp);
	o->id = arena_strdup(&j->arena, in->id);
	o->parent = arena_strdup(&j->arena, in->n_parents ? in->parents[0] : "");
	o->kind = (char *)store_kind_name(in->kind);
	o->has_n_tokens = 1;
	o->n_tokens = in->n_tokens;
	o->has_created_ms = 1;
	o->created_ms = in->created_ms;
	o->label = arena_strdup(&j->arena, in->label);
	o->metadata = arena_strdup(&j->arena, in->metadata ? in->metadata : "{}");
	o->has_raw_bytes = o->has_stored_bytes = o->has_transcript_tokens = 1;
	o->raw_bytes = in->raw_size;
	o->stored_bytes = in->stored_size;
	o->transcript_tokens = in->n_transcript;
	o->model_fingerprint = arena_strdup(&j->arena, fp);
	if (!o->id || !o->parent || !o->label || !o->metadata ||
	    !o->model_fingerprint)
		return NULL;
	if (in->n_tags && tags) {
		o->tags = arena_alloc(&j->arena, in->n_tags * sizeof(char *));
		if (!o->tags)
			return NULL;
		for (size_t i = 0; i < tags->n && nt < in->n_tags; i++)
			if (strcmp(tags->v[i].id, in->id) == 0 &&
			    !(o->tags[nt++] = arena_strdup(&j->arena,
							    tags->v[i].name)))
				return NULL;
		o->n_tags = nt;
	}
	return o;
}

static int op_states(sched *s, struct job *j, struct tag_list *tags)
{
	const Ssmd__StatesRequest *q = j->req->states;
	uint32_t limit = q->has_limit ? q->limit : 100;
	int want_session = q->session && q->session[0];
	Ssmd__StatesReply *r;
	store_filter f;
	char cursor[STORE_ID_SIZE] = "";
	int rc = SSMD_OK;

	if (limit < 1 || limit > 1000)
		return ssmd_err_set(SSMD_ERANGE, "limit %u is outside 1..1000", limit);
	memset(&f, 0, sizeof(f));
	f.fingerprint = q->all_models ? NULL : ssm_model_fingerprint(s->model);
	f.tag_prefix = q->tag_prefix && q->tag_prefix[0] ? q->tag_prefix : NULL;
	f.newest_first = 1;
	if (q->kind && q->kind[0]) {
		for (int k = STORE_KIND_CHECKPOINT; k <= STORE_KIND_IMPORT; k++)
			if (strcmp(q->kind, store_kind_name(k)) == 0)
				f.kind = k;
		if (!f.kind)
			return ssmd_err_set(SSMD_EINVAL,
					    "kind '%s' is not checkpoint, snapshot, merge or import",
					    q->kind);
	}
	if (q->cursor && q->cursor[0])
		snprintf(cursor, sizeof(cursor), "%s", q->cursor);
	r = arena_alloc(&j->arena, sizeof(*r));
	if (!r)
		return ssmd_err_set(SSMD_ENOMEM, "states reply");
	ssmd__states_reply__init(r);
	r->states = arena_alloc(&j->arena, limit * sizeof(*r->states));
	if (!r->states)
		return ssmd_err_set(SSMD_ENOMEM, "states reply");
	/* Pages sized to what is still missing, so a page never has to be cut
	 * in the middle: the store's cursor then stays exact. A session
	 * filter reads on until enough match or the library ends. */
	do {
		store_state_info *v = NULL;
		size_t n = 0;
		f.limit = limit - r->n_states;
		f.cursor = cursor[0] ? cursor : NULL;
		rc = store_state_list(s->store, &f, &v, &n, cursor);
		if (rc)
			return rc;
		for (size_t i = 0; i < n && !rc; i++) {
			char sess[SESS_ID_SIZE];
			if (want_session) {
				meta_session(v[i].metadata, sess);
				if (strcmp(sess, q->session) != 0)
					continue;
			}
			r->states[r->n_states] = info_to_proto(j, &v[i], tags);
			if (!r->states[r->n_states])
				rc = ssmd_err_set(SSMD_ENOMEM, "states reply");
			else
				r->n_states++;
		}
		store_info_array_free(v, n);
	} while (!rc && cursor[0] && r->n_states < limit);
	if (rc)
		return rc;
	r->next_cursor = arena_strdup(&j->arena, cursor);
	if (!r->next_cursor)
		return ssmd_err_set(SSMD_ENOMEM, "states reply");
	j->reply.result_case = SSMD__REPLY__RESULT_STATES;
	j->reply.states = r;
	return SSMD_OK;
}

static int op_state(sched *s, struct job *j, struct tag_list *tags)
{
	const Ssmd__StateRequest *q = j->req->state;
	Ssmd__StateReply *r = arena_alloc(&j->arena, sizeof(*r));
	store_state_info info, *anc = NULL;
	size_t n_anc = 0;
	int rc;

	if (!q->ref || !q->ref[0])
		return ssmd_err_set(SSMD_EINVAL, "state needs a state ID or tag");
	if (!r)
		return ssmd_err_set(SSMD_ENOMEM, "state reply");
	ssmd__state_reply__init(r);
	memset(&info, 0, sizeof(info));
	rc = store_state_info_get(s->store, q->ref, &info);
	if (rc)
		return rc;
	r->info = info_to_proto(j, &info, tags);
	if (!r->info)
		rc = ssmd_err_set(SSMD_ENOMEM, "state reply");
	if (!rc && (!q->has_lineage || q->lineage))
		rc = store_lineage(s->store, info.id, &anc, &n_anc, NULL, NULL);
	if (!rc && n_anc) {
		r->lineage = arena_alloc(&j->arena, n_anc * sizeof(*r->lineage));
		if (!r->lineage)
			rc = ssmd_err_set(SSMD_ENOMEM, "state reply");
		for (size_t i = 0; !rc && i < n_anc; i++) {
			r->lineage[i] = info_to_proto(j, &anc[i], tags);
			if (!r->lineage[i])
				rc = ssmd_err_set(SSMD_ENOMEM, "state reply");
			r->n_lineage = i + 1;
		}
	}
	store_info_array_free(anc, n_anc);
	store_state_info_fini(&info);
	if (rc)
		return rc;
	j->reply.result_case = SSMD__REPLY__RESULT_STATE;
	j->reply.state = r;
	return SSMD_OK;
}

/* Sets a StateRefReply with id and n_tokens as the result. */
static int reply_state_ref(struct job *j, const char *id, uint64_t n_tokens)
{
	Ssmd__StateRefReply *r = arena_alloc(&j->arena, sizeof(*r));

	if (!r)
		return ssmd_err_set(SSMD_ENOMEM, "reply");
	ssmd__state_ref_reply__init(r);
	r->state_id = arena_strdup(&j->arena, id);
	if (!r->state_id)
		return ssmd_err_set(SSMD_ENOMEM, "reply");
	r->has_n_tokens = 1;
	r->n_tokens = n_tokens;
	j->reply.result_case = SSMD__REPLY__RESULT_STATE_REF;
	j->reply.state_ref = r;
	return SSMD_OK;
}

/* Checks a tag name before the library sees it, for a clear message. */
static int tag_check(const char *name)
{
	if (!name || !name[0])
		return ssmd_err_set(SSMD_EINVAL, "a tag name is required");
	if (!store_tag_name_valid(name))
		return ssmd_err_set(SSMD_EINVAL,
				    "'%.*s' is not a valid tag name (1..%d of A-Z a-z 0-9 -_.:@+=/, not shaped like a state ID)",
				    STORE_TAG_MAX, name, STORE_TAG_MAX);
	return SSMD_OK;
}

static int op_ref_required(const char *ref, const char *op)
{
	if (!ref || !ref[0])
		return ssmd_err_set(SSMD_EINVAL, "%s needs a state ID or tag", op);
	return SSMD_OK;
}

static int op_library(sched *s, struct job *j)
{
	const Ssmd__Request *q = j->req;
	struct tag_list tags = {0};
	store_state_info info;
	char id[STORE_ID_SIZE];
	int rc;

	memset(&info, 0, sizeof(info));
	switch (q->op_case) {
	case SSMD__REQUEST__OP_STATES:
	case SSMD__REQUEST__OP_STATE:
		rc = store_tag_list(s->store, NULL, &tags.v, &tags.n);
		if (!rc)
			rc = q->op_case == SSMD__REQUEST__OP_STATES
				     ? op_states(s, j, &tags)
				     : op_state(s, j, &tags);
		free(tags.v);
		return rc;
	case SSMD__REQUEST__OP_TAG:
		if ((rc = tag_check(q->tag->name)) ||
		    (rc = op_ref_required(q->tag->ref, "tag")) ||
		    (rc = store_tag_set(s->store, q->tag->name, q->tag->ref)) ||
		    (rc = store_state_info_get(s->store, q->tag->name, &info)))
			return rc;
		rc = reply_state_ref(j, info.id, info.n_tokens);
		store_state_info_fini(&info);
		return rc;
	case SSMD__REQUEST__OP_UNTAG:
		if ((rc = tag_check(q->untag->name)) ||
		    (rc = store_resolve(s->store, q->untag->name, id)) ||
		    (rc = store_tag_delete(s->store, q->untag->name)))
			return rc;
		return reply_state_ref(j, id, 0);
	case SSMD__REQUEST__OP_DELETE_STATE:
		if ((rc = op_ref_required(q->delete_state->ref, "delete")) ||
		    (rc = store_state_info_get(s->store, q->delete_state->ref, &info)))
			return rc;
		rc = store_state_delete(s->store, info.id, q->delete_state->force);
		if (!rc)
			rc = reply_state_ref(j, info.id, info.n_tokens);
		store_state_info_fini(&info);
		return rc;
	case SSMD__REQUEST__OP_EXPORT_STATE: {
		Ssmd__ExportReply *r = arena_alloc(&j->arena, sizeof(*r));
		void *buf;
		size_t len;
		if ((rc = op_ref_required(q->export_state->ref, "export")))
			return rc;
		if (!r)
			return ssmd_err_set(SSMD_ENOMEM, "export reply");
		ssmd__export_reply__init(r);
		if ((rc = store_resolve(s->store, q->export_state->ref, id)) ||
		    (rc = store_export(s->store, id, &buf, &len)))
			return rc;
		j->free_after = buf;
		r->has_data = 1;
		r->data.data = buf;
		r->data.len = len;
		r->state_id = arena_strdup(&j->arena, id);
		if (!r->state_id)
			return ssmd_err_set(SSMD_ENOMEM, "export reply");
		j->reply.result_case = SSMD__REPLY__RESULT_EXPORT_STATE;
		j->reply.export_state = r;
		return SSMD_OK;
	}
	case SSMD__REQUEST__OP_IMPORT_STATE: {
		const Ssmd__ImportRequest *im = q->import_state;
		const char *tag = im->tag && im->tag[0] ? im->tag : NULL;
		if (!im->has_data || im->data.len == 0)
			return ssmd_err_set(SSMD_EINVAL, "import needs the exported bytes");
		if (tag && (rc = tag_check(tag)))
			return rc;
		if ((rc = store_import(s->store, im->data.data, im->data.len, id)))
			return rc;
		if (tag && (rc = store_tag_set(s->store, tag, id)))
			return ssmd_err_set(rc, "imported as %s, but tag '%s' failed: %s",
					    id, tag, ssmd_errmsg());
		if ((rc = store_state_info_get(s->store, id, &info)))
			return rc;
		rc = reply_state_ref(j, id, info.n_tokens);
		store_state_info_fini(&info);
		return rc;
	}
	case SSMD__REQUEST__OP_STATS: {
		store_totals t;
		if ((rc = store_total_size(s->store, &t)))
			return rc;
		j->reply.stats->has_store_bytes = j->reply.stats->has_store_states = 1;
		j->reply.stats->store_bytes = t.file_bytes;
		j->reply.stats->store_states = t.n_states;
		return SSMD_OK;
	}
	default:
		return ssmd_err_set(SSMD_EPROTO, "not a library operation");
	}
}

static void request_run(struct storeq_task *t)
{
	struct job *j = (struct job *)t;
	int rc;

	job_unqueue(j);
	rc = op_library(j->sched, j);
	job_finish(j, rc, NULL);
}

void sched_store_request(sched *s, struct job *j)
{
	storeq_post(s->sq, &j->task, request_run);
}
