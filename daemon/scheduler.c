/*
 * scheduler.c — the scheduler thread: sessions, slots, paging and continuous
 * batching (see scheduler.h for the contract).
 *
 * Life of a request on a session: it is queued on the session (requests on
 * one session run in arrival order). When it reaches the head, operations
 * that need the state in a slot (append, generate) first place the session:
 * a free slot, or one taken from the least recently used idle session (paged
 * out: stored if dirty); the session's state then comes from host memory, the
 * zero state, or the library (an asynchronous page-in on the store thread).
 * Once placed, every scheduler step advances it: one prefill chunk for an
 * append, one token for a generate (all generating sessions share one batched
 * ssm_decode). Operations that need no slot (snapshot, close, fork) run at
 * once when they reach the head.
 *
 * Generation consumes every token it emits: a token is sampled from the
 * logits of the session's last consumed token, keyed by (seed, index of the
 * new token), then fed in the next step's batched decode. So after a
 * generate the session's state covers everything it has emitted.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "scheduler_impl.h"

#define STOP_MAX 64          /* stop strings + stop tokens per generate */
#define STOP_LEN_MAX 256     /* bytes of one stop string */
#define RATE_WINDOW_S 5.0    /* tokens/s is averaged over this window */
#define APPEND_MARKS_MAX 65536 /* checkpoints asked for inside one append */

struct gen {
	ssm_sampler smp;
	uint32_t max_tokens;
	int32_t *out;            /* (max_tokens) emitted tokens */
	size_t n_out;
	int32_t next;            /* sampled and not yet consumed, or -1 */
	int finish;              /* SSMD__FINISH_REASON__* once decided, else 0 */
	tok_decoder *dec;        /* NULL without a tokenizer */
	char *text;              /* decoded output, NUL-terminated */
	size_t len, cap;
	size_t cut;              /* reported text length (before a stop string) */
	size_t sent;             /* bytes of text already published */
	size_t hold;             /* longest stop string - 1: held back from events */
	uint64_t seq;            /* next event sequence number */
};

double sched_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void gen_free(struct gen *g)
{
	if (!g)
		return;
	tok_decoder_free(g->dec);
	free(g->out);
	free(g->text);
	free(g);
}

/* ---------------------------------------------------------------- inbox -- */

void sched_done_post(sched *s, struct done_msg *m)
{
	m->next = NULL;
	pthread_mutex_lock(&s->lock);
	if (s->done_tail)
		s->done_tail->next = m;
	else
		s->done_head = m;
	s->done_tail = m;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

int sched_submit(sched *s, struct job *j)
{
	size_t limit = (size_t)s->cfg->queue_depth;
	int rc = SSMD_OK;

	j->sched = s;
	atomic_fetch_add(&s->requests_total, 1);
	/* Under the lock, so nothing is posted to the store thread once
	 * sched_stop() has begun to drain it. */
	pthread_mutex_lock(&s->lock);
	if (s->stopping) {
		rc = ssmd_err_set(SSMD_ECLOSED, "the daemon is shutting down");
	} else if (atomic_load(&s->waiting) >= limit) {
		rc = ssmd_err_set(SSMD_EBUSY,
				  "%zu requests are already waiting; retry later",
				  limit);
	} else if (sched_op_is_store(j->req)) {
		/* Library-only requests go straight to the store thread. */
		atomic_fetch_add(&s->waiting, 1);
		j->waiting = &s->waiting;
		sched_store_request(s, j);
	} else {
		atomic_fetch_add(&s->waiting, 1);
		j->waiting = &s->waiting;
		j->next = NULL;
		if (s->in_tail)
			s->in_tail->next = j;
		else
			s->in_head = j;
		s->in_tail = j;
		s->in_n++;
		pthread_cond_signal(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* -------------------------------------------------------------- helpers -- */

/* Copies the host tier's counters for sched_tier_stats(); called after
 * every change of the tier, so the copy is current once a request that
 * paged a session in or out has its reply. */
static void tier_publish(sched *s)
{
	pthread_mutex_lock(&s->lock);
	hostcache_stats_get(s->hc, &s->tier);
	pthread_mutex_unlock(&s->lock);
}

/* Counts the clients' sessions (not the internal scratch ones). */
static void stats_publish(sched *s)
{
	size_t resident = 0, open = 0;

	for (size_t i = 0; i < s->sessions.n; i++) {
		const struct sess *x = s->sessions.v[i];
		open += !x->scratch;
		resident += !x->scratch && x->slot >= 0;
	}
	atomic_store(&s->n_sessions, open);
	atomic_store(&s->n_resident, resident);
}

static void tokens_count(sched *s, size_t n)
{
	double now = sched_now();
	uint64_t total = atomic_fetch_add(&s->tokens_total, n) + n;

	if (now - s->rate_t0 >= RATE_WINDOW_S) {
		s->tokens_per_s = (double)(total - s->rate_n0) / (now - s->rate_t0);
		s->rate_t0 = now;
		s->rate_n0 = total;
	}
}

/* Sets a SessionsReply of n sessions as the job's result. */
static int reply_sessions(struct job *j, struct sess **v, size_t n)
{
	Ssmd__SessionsReply *r = arena_alloc(&j->arena, sizeof(*r));

	if (!r)
		return ssmd_err_set(SSMD_ENOMEM, "reply");
	ssmd__sessions_reply__init(r);
	r->sessions = arena_alloc(&j->arena, n * sizeof(*r->sessions));
	if (!r->sessions)
		return ssmd_err_set(SSMD_ENOMEM, "reply");
	for (size_t i = 0; i < n; i++) {
		Ssmd__SessionInfo *o = arena_alloc(&j->arena, sizeof(*o));
		if (!o)
			return ssmd_err_set(SSMD_ENOMEM, "reply");
		ssmd__session_info__init(o);
		o->id = arena_strdup(&j->arena, v[i]->id);
		o->base_state = arena_strdup(&j->arena, v[i]->from_id);
		if (!o->id || !o->base_state)
			return ssmd_err_set(SSMD_ENOMEM, "reply");
		o->has_n_tokens = 1;
		o->n_tokens = v[i]->n_tokens;
		r->sessions[r->n_sessions++] = o;
	}
	j->reply.result_case = SSMD__REPLY__RESULT_SESSIONS;
	j->reply.sessions = r;
	/* The last step of every open: the new sessions go into the library's
	 * session table, so their IDs outlive this process. */
	if (sched_store_sessions(j->sched, v, n, 0))
		log_warn("%zu new sessions: %s", n, ssmd_errmsg());
	return SSMD_OK;
}

static int reply_state_ref(struct job *j, uint64_t n_tokens)
{
	Ssmd__StateRefReply *r = arena_alloc(&j->arena, sizeof(*r));

	if (!r)
		return ssmd_err_set(SSMD_ENOMEM, "reply");
	ssmd__state_ref_reply__init(r);
	r->state_id = "";
	r->has_n_tokens = 1;
	r->n_tokens = n_tokens;
	j->reply.result_case = SSMD__REPLY__RESULT_STATE_REF;
	j->reply.state_ref = r;
	return SSMD_OK;
}

/* Checks an optional tag name (NULL or "" = none) and label. */
static int tag_label_check(const char *tag, const char *label)
{
	if (tag && tag[0] && !store_tag_name_valid(tag))
		return ssmd_err_set(SSMD_EINVAL,
				    "'%.*s' is not a valid tag name (1..%d of A-Z a-z 0-9 -_.:@+=/, not shaped like a state ID)",
				    STORE_TAG_MAX, tag, STORE_TAG_MAX);
	if (label && strlen(label) > STORE_LABEL_MAX)
		return ssmd_err_set(SSMD_ERANGE, "label longer than %d bytes",
				    STORE_LABEL_MAX);
	return SSMD_OK;
}

static const char *nonempty(const char *s)
{
	return s && s[0] ? s : NULL;
}

/* ---------------------------------------------------- slots and paging -- */

/* A copy of the session's current state: from its slot, its host copy, or
 * the zero state when it has consumed nothing. SSMD_EINVAL when it is paged
 * out (its state is then its base). */
static int sess_state_copy(sched *s, struct sess *x, ssm_state **out)
{
	ssm_state *st = NULL;
	int rc = ssm_model_state_alloc(s->model, &st);

	if (rc)
		return rc;
	if (x->slot >= 0 && !x->loading)
		rc = ssm_slot_get(s->be, x->slot, st);
	else if (x->mem)
		rc = ssm_state_copy(st, x->mem);
	else if (x->n_tokens != 0)
		rc = ssmd_err_set(SSMD_EINVAL, "session %s is paged out", x->id);
	if (rc) {
		ssm_state_free(st);
		return rc;
	}
	*out = st;
	return SSMD_OK;
}

/* Prepares a put of st (taken, also on failure) as the session's new state:
 * a child of its base, with its transcript; the new sref becomes its base.
 * The caller posts *out with sched_store_put() (after adding to it). When
 * job is set, the job is finished by the store thread after the commit (tag
 * applied, ID in the reply). *ref_out (may be NULL) gets the new base,
 * borrowed. */
static int sess_put_prepare(sched *s, struct sess *x, ssm_state *st,
			    store_kind kind, const char *tag, const char *label,
			    struct job *job, int log_commit,
			    struct put_args **out, struct sref **ref_out)
{
	struct put_args *a = calloc(1, sizeof(*a));
	struct sref *ref = sref_alloc();
	int rc = SSMD_OK;

	if (!a || !ref) {
		rc = ssmd_err_set(SSMD_ENOMEM, "snapshot");
		goto fail;
	}
	a->st = st;
	st = NULL;
	label = label ? label : x->label;
	if ((label && !(a->label = strdup(label))) ||
	    (tag && !(a->tag = strdup(tag))) ||
	    (x->label && !(a->sess_label = strdup(x->label)))) {
		rc = ssmd_err_set(SSMD_ENOMEM, "snapshot");
		goto fail;
	}
	a->s = s;
	a->ref = sref_get(ref);
	a->parent = x->base;     /* the session's reference moves to the task */
	a->tokens = x->trans;
	a->n_tokens = x->n_trans;
	a->kind = kind;
	a->job = job;
	a->log_commit = log_commit;
	a->persist = !x->scratch;
	a->seed = x->seed;
	memcpy(a->session, x->id, SESS_ID_SIZE);
	x->base = ref;
	x->trans = NULL;
	x->n_trans = x->cap_trans = 0;
	x->since_ckpt = 0;
	if (ref_out)
		*ref_out = ref;
	*out = a;
	return SSMD_OK;
fail:
	ssm_state_free(st);
	if (a) {
		ssm_state_free(a->st);
		free(a->label);
		free(a->tag);
		free(a->sess_label);
		free(a);
	}
	sref_put(ref);
	return rc;
}

/* Queues a put of the session's current state (see sess_put_prepare()). */
static int sess_store(sched *s, struct sess *x, store_kind kind,
		      const char *tag, const char *label, struct job *job,
		      int log_commit, struct sref **ref_out)
{
	struct put_args *a;
	ssm_state *st = NULL;
	int rc = sess_state_copy(s, x, &st);

	if (!rc)
		rc = sess_put_prepare(s, x, st, kind, tag, label, job, log_commit,
				      &a, ref_out);
	if (!rc)
		sched_store_put(a);
	return rc;
}

/* For a session with no progress since its base (not dirty, base set):
 * stores the base's state again if its put failed (sched_store_heal()),
 * with the given kind, tag and label; job (may be NULL) replies with it. */
static int sess_store_again(sched *s, struct sess *x, store_kind kind,
			    const char *tag, const char *label, struct job *job,
			    int log_commit, struct done_msg *closed)
{
	struct put_args *a = calloc(1, sizeof(*a));

	label = label ? label : x->label;
	if (!a || !(a->done = calloc(1, sizeof(*a->done))) ||
	    (label && !(a->label = strdup(label))) ||
	    (tag && !(a->tag = strdup(tag))) ||
	    (x->label && !(a->sess_label = strdup(x->label)))) {
		if (a) {
			free(a->done);
			free(a->label);
			free(a->tag);
		}
		free(a);
		return ssmd_err_set(SSMD_ENOMEM, "snapshot");
	}
	a->s = s;
	a->ref = sref_get(x->base);
	a->kind = kind;
	a->job = job;
	a->log_commit = log_commit;
	a->persist = !x->scratch;
	a->seed = x->seed;
	a->closed = closed;
	memcpy(a->session, x->id, SESS_ID_SIZE);
	sched_store_heal(a);
	return SSMD_OK;
}

/* The state of x (resident) for its page-out, copied into one of the host
 * tier's spares when it has one (see hostcache.h), else into a new state. */
static int sess_state_page_out(sched *s, struct sess *x, ssm_state **out)
{
	ssm_state *st = x->slot >= 0 && !x->loading ? hostcache_spare_take(s->hc)
						    : NULL;
	int rc;

	if (!st)
		return sess_state_copy(s, x, out);
	rc = ssm_slot_get(s->be, x->slot, st);
	if (rc) {
		hostcache_spare_put(s->hc, st);
		return rc;
	}
	*out = st;
	return SSMD_OK;
}

static void slot_release(sched *s, struct sess *x)
{
	if (x->slot >= 0)
		s->slot_owner[x->slot] = NULL;
	x->slot = -1;
	x->loading = 0;
}

/* Queues the checkpoint of x (dirty, resident) that its page-out needs,
 * keeping the state in the host tier when there is room: the put then
 * borrows the tier's copy (the entry is pinned until DONE_COMMITTED), so
 * the state leaves the slot once and the next page-in needs no library
 * read. Without room, the put owns the state as any other put. */
static int sess_page_out_store(sched *s, struct sess *x)
{
	struct put_args *a = NULL;
	struct done_msg *m = calloc(1, sizeof(*m));
	struct sref *ref = NULL;
	ssm_state *st = NULL;
	int rc = m ? sess_state_page_out(s, x, &st)
		   : ssmd_err_set(SSMD_ENOMEM, "page-out");

	if (!rc)
		rc = sess_put_prepare(s, x, st, STORE_KIND_CHECKPOINT, NULL, NULL,
				      NULL, 0, &a, &ref);
	if (rc) {
		free(m);
		return rc;
	}
	if (hostcache_add(s->hc, ref, a->st, 1) == SSMD_OK) {
		a->borrowed = 1;
		a->done = m;
		m = NULL;
	}
	free(m);
	sched_store_put(a);
	return SSMD_OK;
}

/* Evicts x (idle, resident). With unsaved progress it is checkpointed (on
 * the store thread, after the slot is free again) and its state stays in
 * the host tier while room lasts. Without, its state is its base's: a copy
 * goes into the tier unless the base already has one there. */
static int sess_page_out(sched *s, struct sess *x)
{
	int rc = SSMD_OK;

	if (sess_dirty(x)) {
		rc = sess_page_out_store(s, x);
	} else if (x->base && !hostcache_has(s->hc, x->base)) {
		/* Best effort: without a copy, the page-in reads the library. */
		ssm_state *st = NULL;
		if (sess_state_page_out(s, x, &st) == SSMD_OK &&
		    hostcache_add(s->hc, x->base, st, 0) == SSMD_OK)
			st = NULL;
		hostcache_spare_put(s->hc, st);
	}
	if (rc) {
		log_warn("cannot page out session %s: %s", x->id, ssmd_errmsg());
		return rc;
	}
	tier_publish(s);
	log_debug("paged out session %s (%llu tokens)", x->id,
		  (unsigned long long)x->n_tokens);
	slot_release(s, x);
	atomic_fetch_add(&s->evictions, 1);
	return SSMD_OK;
}

/* A free slot, freeing the least recently used idle session's if needed;
 * -1 when every slot is busy. */
static int slot_acquire(sched *s)
{
	struct sess *victim;

	for (int i = 0; i < s->n_slots; i++)
		if (!s->slot_owner[i])
			return i;
	victim = sess_table_lru_idle(&s->sessions);
	if (victim) {
		int slot = victim->slot;
		if (sess_page_out(s, victim) == SSMD_OK)
			return slot;
	}
	return -1;
}

/* Brings x's state into a slot. *ready = 1 when it is there now; 0 when the
 * caller must wait (no slot free yet, or a page-in is in flight). */
static int sess_place(sched *s, struct sess *x, int *ready)
{
	const ssm_state *st;
	int slot, rc = SSMD_OK;

	*ready = 0;
	if (x->loading)
		return SSMD_OK;
	if (x->slot >= 0) {
		*ready = 1;
		return SSMD_OK;
	}
	slot = slot_acquire(s);
	if (slot < 0)
		return SSMD_OK;
	s->slot_owner[slot] = x;
	x->slot = slot;
	if (x->mem) {
		rc = ssm_slot_set(s->be, slot, x->mem);
		if (!rc) {
			ssm_state_free(x->mem);
			x->mem = NULL;
			*ready = 1;
		}
	} else if (x->n_tokens == 0) {
		rc = ssm_slot_reset(s->be, slot);
		*ready = !rc;
	} else if ((st = hostcache_get(s->hc, x->base))) {
		/* Paged out with no unsaved progress: its state is its base's,
		 * still in the host tier (committed or not). */
		rc = ssm_slot_set(s->be, slot, st);
		*ready = !rc;
		if (!rc)
			log_debug("paged in session %s from host memory", x->id);
		tier_publish(s);
	} else {
		rc = sched_store_load(s, x, x->base);
		x->loading = !rc;
		tier_publish(s); /* the miss */
	}
	if (rc)
		slot_release(s, x);
	return rc;
}

/* ------------------------------------------------------------ generate -- */

static int generate_check(sched *s, const Ssmd__GenerateRequest *q)
{
	uint32_t max = q->has_max_tokens ? q->max_tokens : 16;

	if (max < 1 || max > (uint32_t)s->cfg->max_generate_tokens)
		return ssmd_err_set(SSMD_ERANGE, "max_tokens %u is outside 1..%d", max,
				    s->cfg->max_generate_tokens);
	if (q->has_temperature &&
	    (!isfinite(q->temperature) || q->temperature > 100.0f))
		return ssmd_err_set(SSMD_EINVAL,
				    "temperature %g is not a finite number <= 100",
				    (double)q->temperature);
	if (q->has_top_p &&
	    (!isfinite(q->top_p) || q->top_p <= 0.0f || q->top_p > 1.0f))
		return ssmd_err_set(SSMD_EINVAL, "top_p %g is outside (0, 1]",
				    (double)q->top_p);
	if (q->n_stop + q->n_stop_tokens > STOP_MAX)
		return ssmd_err_set(SSMD_ERANGE,
				    "%zu stop strings and tokens; at most %d",
				    q->n_stop + q->n_stop_tokens, STOP_MAX);
	if (q->n_stop && !s->tok)
		return ssmd_err_set(SSMD_ENOTOK,
				    "stop strings need a tokenizer; model %s has no tokenizer.json",
				    s->model_name);
	for (size_t i = 0; i < q->n_stop; i++)
		if (!q->stop[i][0] || strlen(q->stop[i]) > STOP_LEN_MAX)
			return ssmd_err_set(SSMD_EINVAL,
					    "stop string %zu is empty or longer than %d bytes",
					    i, STOP_LEN_MAX);
	for (size_t i = 0; i < q->n_stop_tokens; i++)
		if (q->stop_tokens[i] < 0 || q->stop_tokens[i] >= s->vocab)
			return ssmd_err_set(SSMD_EINVAL,
					    "stop token %d is outside [0, %d)",
					    q->stop_tokens[i], s->vocab);
	return tag_label_check(q->snapshot_tag, q->snapshot_label);
}

/* Publishes text[sent..end) and tokens as the next event of j. */
static void gen_publish(sched *s, struct job *j, const int32_t *tokens,
			size_t n_tokens, size_t end, int done, int code)
{
	struct gen *g = j->gen;
	Ssmd__Event ev = SSMD__EVENT__INIT;
	char saved;
	void *frame;
	size_t len;

	if (!s->publish || !j->req->generate->stream || !g->text)
		return;
	ev.request_id = j->req->request_id;
	ev.has_seq = 1;
	ev.seq = g->seq++;
	ev.n_tokens = n_tokens;
	ev.tokens = (int32_t *)tokens;
	saved = g->text[end];
	g->text[end] = 0;
	ev.text = g->text + g->sent;
	if (done) {
		ev.has_done = ev.has_code = 1;
		ev.done = 1;
		ev.code = (uint32_t)code;
	}
	if (proto_event_frame(j->req->request_id, &ev, &frame, &len) == SSMD_OK) {
		s->publish(s->publish_arg, frame, len);
		free(frame);
	}
	g->text[end] = saved;
	g->sent = end;
}

/* Appends len bytes to the generated text. */
static int gen_text_add(struct gen *g, const char *p, size_t len)
{
	if (g->len + len + 1 > g->cap) {
		size_t cap = g->cap ? g->cap : 256;
		char *t;
		while (cap < g->len + len + 1)
			cap *= 2;
		t = realloc(g->text, cap);
		if (!t)
			return ssmd_err_set(SSMD_ENOMEM, "generated text");
		g->text = t;
		g->cap = cap;
	}
	memcpy(g->text + g->len, p, len);
	g->len += len;
	g->text[g->len] = 0;
	return SSMD_OK;
}

/* Samples the next token of j's session from logits (vocab floats), records
 * it, decides whether generation stops after it, and streams it. */
static int gen_emit(sched *s, struct job *j, const float *logits)
{
	const Ssmd__GenerateRequest *q = j->req->generate;
	struct gen *g = j->gen;
	struct sess *x = j->sess;
	size_t old_len = g->len, end;
	int32_t t = ssm_sample(logits, s->vocab, &g->smp, x->n_tokens);
	int rc;

	if (t < 0)
		return ssmd_err_set(-t, "sampling");
	g->out[g->n_out++] = t;
	g->next = t;
	if (g->dec) {
		char *piece = NULL;
		size_t plen = 0;
		/* A token past the tokenizer's vocabulary (the embedding may
		 * have padding rows) has no text. */
		rc = tok_decoder_push(g->dec, t, &piece, &plen);
		if (rc == SSMD_OK) {
			rc = gen_text_add(g, piece, plen);
			free(piece);
			if (rc)
				return rc;
		}
	}
	for (size_t i = 0; i < q->n_stop; i++) {
		size_t sl = strlen(q->stop[i]);
		size_t from = old_len >= sl ? old_len - sl + 1 : 0;
		const char *hit = g->len > from
			? memmem(g->text + from, g->len - from, q->stop[i], sl)
			: NULL;
		if (hit && (size_t)(hit - g->text) < g->cut) {
			g->cut = (size_t)(hit - g->text);
			g->finish = SSMD__FINISH_REASON__FINISH_STOP_STRING;
		}
	}
	for (size_t i = 0; !g->finish && i < q->n_stop_tokens; i++)
		if (q->stop_tokens[i] == t)
			g->finish = SSMD__FINISH_REASON__FINISH_STOP_TOKEN;
	if (!g->finish && g->n_out >= g->max_tokens)
		g->finish = SSMD__FINISH_REASON__FINISH_LENGTH;
	/* Stream all text that no stop string can still claim, ending on a
	 * whole UTF-8 character. */
	end = g->finish ? g->len : (g->len > g->hold ? g->len - g->hold : 0);
	if (end > g->cut)
		end = g->cut;
	while (end > g->sent && end < g->len &&
	       ((unsigned char)g->text[end] & 0xC0) == 0x80)
		end--;
	if (end < g->sent)
		end = g->sent;
	gen_publish(s, j, &t, 1, end, 0, 0);
	return SSMD_OK;
}

static void job_done(sched *s, struct job *j);

/* Ends j's generation: final text, final event, reply (after the commit of
 * the end snapshot, when asked). */
static void gen_done(sched *s, struct job *j, int code)
{
	const Ssmd__GenerateRequest *q = j->req->generate;
	struct gen *g = j->gen;
	struct sess *x = j->sess;
	Ssmd__GenerateReply *r;
	int rc = code;

	sess_job_pop(x);
	if (!rc && g->dec) {
		char *tail = NULL;
		size_t tlen = 0;
		rc = tok_decoder_flush(g->dec, &tail, &tlen);
		if (!rc) {
			rc = gen_text_add(g, tail, tlen);
			free(tail);
		}
	}
	if (g->cut > g->len)
		g->cut = g->len;
	gen_publish(s, j, NULL, 0, g->cut < g->sent ? g->sent : g->cut, 1, rc);
	if (rc) {
		job_finish(j, rc, NULL);
		return;
	}
	r = arena_alloc(&j->arena, sizeof(*r));
	if (!r) {
		job_finish(j, SSMD_ENOMEM, "reply");
		return;
	}
	ssmd__generate_reply__init(r);
	g->text[g->cut] = 0;
	r->text = g->text;
	r->tokens = g->out;
	r->n_tokens = g->n_out;
	r->has_finish = 1;
	r->finish = g->finish;
	r->has_session_tokens = 1;
	r->session_tokens = x->n_tokens;
	j->reply.result_case = SSMD__REPLY__RESULT_GENERATE;
	j->reply.generate = r;
	if (q->snapshot_at_end) {
		rc = sess_store(s, x, STORE_KIND_SNAPSHOT, nonempty(q->snapshot_tag),
				nonempty(q->snapshot_label), j, 0, NULL);
		if (rc)
			job_finish(j, rc, NULL);
		return;
	}
	job_done(s, j);
}

static int gen_start(sched *s, struct job *j)
{
	const Ssmd__GenerateRequest *q = j->req->generate;
	struct sess *x = j->sess;
	struct gen *g;
	size_t hold = 0;
	int rc;

	if (x->n_tokens == 0)
		return ssmd_err_set(SSMD_EEMPTY,
				    "session %s has consumed no tokens: append a prompt (or a BOS token) before generating",
				    x->id);
	g = calloc(1, sizeof(*g));
	if (!g)
		return ssmd_err_set(SSMD_ENOMEM, "generate");
	j->gen = g;
	g->max_tokens = q->has_max_tokens ? q->max_tokens : 16;
	g->smp.temperature = q->has_temperature ? q->temperature : 0.0f;
	g->smp.top_k = q->has_top_k ? (int)(q->top_k > INT_MAX ? INT_MAX : q->top_k) : 0;
	g->smp.top_p = q->has_top_p ? q->top_p : 1.0f;
	g->smp.seed = q->has_seed ? q->seed : x->seed;
	g->next = -1;
	g->cut = SIZE_MAX;
	for (size_t i = 0; i < q->n_stop; i++)
		if (strlen(q->stop[i]) - 1 > hold)
			hold = strlen(q->stop[i]) - 1;
	g->hold = hold;
	g->out = malloc(g->max_tokens * sizeof(*g->out));
	if (!g->out || gen_text_add(g, "", 0))
		return ssmd_err_set(SSMD_ENOMEM, "generate");
	if (s->tok && (rc = tok_decoder_alloc(s->tok, &g->dec)))
		return rc;
	rc = ssm_slot_logits(s->be, x->slot, s->logits);
	if (rc)
		return rc;
	return gen_emit(s, j, s->logits);
}

/* -------------------------------------------------------------- append -- */

/* Tokenizes text into j->toks (appending) and checks the IDs against the
 * model's vocabulary. */
static int text_tokens_add(sched *s, struct job *j, const char *text)
{
	int32_t *t = NULL, *all;
	size_t n = 0;
	int rc = tok_encode(s->tok, text, strlen(text), &t, &n);

	if (rc)
		return rc;
	if (j->n_toks + n > (size_t)s->cfg->max_append_tokens) {
		free(t);
		return ssmd_err_set(SSMD_ERANGE,
				    "text is %zu tokens; at most %d per request",
				    j->n_toks + n, s->cfg->max_append_tokens);
	}
	/* The tokenizer may know more IDs than the model embeds. */
	for (size_t i = 0; i < n; i++)
		if (t[i] >= s->vocab) {
			rc = ssmd_err_set(SSMD_EINVAL,
					  "text token %d at position %zu is outside the model's vocabulary [0, %d)",
					  t[i], j->n_toks + i, s->vocab);
			free(t);
			return rc;
		}
	all = realloc(j->toks, (j->n_toks + n + 1) * sizeof(*all));
	if (!all) {
		free(t);
		return ssmd_err_set(SSMD_ENOMEM, "tokens");
	}
	if (n)
		memcpy(all + j->n_toks, t, n * sizeof(*t));
	j->toks = all;
	j->n_toks += n;
	free(t);
	return SSMD_OK;
}

static int size_cmp(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;

	return x < y ? -1 : x > y;
}

/* Adds checkpoint position pos (1..n_toks) to j->marks (capacity checked by
 * the caller). */
static void mark_add(struct job *j, size_t pos)
{
	if (pos >= 1 && pos <= j->n_toks)
		j->marks[j->n_marks++] = pos;
}

/* The positions inside this append where a checkpoint was asked for:
 * multiples of checkpoint_every, the boundaries, the end of each text;
 * sorted, each once. */
static int append_marks(struct job *j, const size_t *text_ends,
			size_t n_texts)
{
	const Ssmd__AppendRequest *q = j->req->append;
	size_t every = q->checkpoint_every, cap = q->n_boundaries + n_texts, u = 0;

	for (size_t i = 0; i < q->n_boundaries; i++)
		if (q->boundaries[i] > j->n_toks)
			return ssmd_err_set(SSMD_ERANGE,
					    "boundary %u is past the %zu tokens appended",
					    q->boundaries[i], j->n_toks);
	if (every)
		cap += j->n_toks / every;
	if (cap > APPEND_MARKS_MAX)
		return ssmd_err_set(SSMD_ERANGE,
				    "%zu checkpoints asked for in one append; at most %d",
				    cap, APPEND_MARKS_MAX);
	if (!cap)
		return SSMD_OK;
	j->marks = malloc(cap * sizeof(*j->marks));
	if (!j->marks)
		return ssmd_err_set(SSMD_ENOMEM, "checkpoint positions");
	for (size_t i = 0; i < q->n_boundaries; i++)
		mark_add(j, q->boundaries[i]);
	for (size_t i = 0; i < n_texts; i++)
		mark_add(j, text_ends[i]);
	for (size_t p = every; every && p <= j->n_toks; p += every)
		mark_add(j, p);
	qsort(j->marks, j->n_marks, sizeof(*j->marks), size_cmp);
	for (size_t i = 0; i < j->n_marks; i++)
		if (!u || j->marks[i] != j->marks[u - 1])
			j->marks[u++] = j->marks[i];
	j->n_marks = u;
	return SSMD_OK;
}

static int append_start(sched *s, struct job *j)
{
	const Ssmd__AppendRequest *q = j->req->append;
	size_t *ends = NULL;
	int rc = SSMD_OK;

	if (q->n_texts) {
		ends = malloc(q->n_texts * sizeof(*ends));
		if (!ends)
			return ssmd_err_set(SSMD_ENOMEM, "append");
		for (size_t i = 0; !rc && i < q->n_texts; i++) {
			rc = text_tokens_add(s, j, q->texts[i]);
			ends[i] = j->n_toks;
		}
	} else if (q->text) {
		rc = text_tokens_add(s, j, q->text);
	} else {
		j->toks = malloc((q->n_tokens ? q->n_tokens : 1) * sizeof(int32_t));
		if (!j->toks)
			return ssmd_err_set(SSMD_ENOMEM, "append");
		memcpy(j->toks, q->tokens, q->n_tokens * sizeof(int32_t));
		j->n_toks = q->n_tokens;
	}
	if (!rc)
		rc = append_marks(j, ends, q->n_texts);
	free(ends);
	return rc;
}

static void append_done(sched *s, struct job *j, int code)
{
	Ssmd__AppendReply *r = arena_alloc(&j->arena, sizeof(*r));

	sess_job_pop(j->sess);
	if (code) {
		job_finish(j, code, "%s (%zu of %zu tokens were consumed)",
			   ssmd_errmsg(), j->n_done, j->n_toks);
		return;
	}
	if (!r) {
		job_finish(j, SSMD_ENOMEM, "reply");
		return;
	}
	ssmd__append_reply__init(r);
	r->has_appended = r->has_session_tokens = 1;
	r->appended = (uint32_t)j->n_done;
	r->session_tokens = j->sess->n_tokens;
	j->reply.result_case = SSMD__REPLY__RESULT_APPEND;
	j->reply.append = r;
	job_done(s, j);
}

/* Records n tokens consumed by x's slot: transcript, counts. */
static int sess_advance(sched *s, struct sess *x, const int32_t *tokens,
			size_t n)
{
	int rc = sess_trans_push(x, tokens, n);

	if (rc)
		return rc;
	x->n_tokens += n;
	x->since_ckpt += n;
	tokens_count(s, n);
	return SSMD_OK;
}

/* Records n consumed tokens on x and checkpoints when due (decode). */
static int sess_consume(sched *s, struct sess *x, struct job *j,
			const int32_t *tokens, size_t n)
{
	struct sref *ref;
	int rc = sess_advance(s, x, tokens, n);

	if (rc)
		return rc;
	if (s->cfg->checkpoint_every && !x->scratch &&
	    x->since_ckpt >= (uint64_t)s->cfg->checkpoint_every) {
		rc = sess_store(s, x, STORE_KIND_CHECKPOINT, NULL, NULL, NULL, 0, &ref);
		if (rc)
			log_warn("session %s: automatic checkpoint failed: %s", x->id,
				 ssmd_errmsg());
		else if (j)
			job_ckpt_add(j, ref, x->n_tokens);
	}
	return SSMD_OK;
}

/* The prefill of one chunk, seen from its checkpoint callback. */
struct chunk_ctx {
	sched *s;
	struct sess *x;
	struct job *j;
	const int32_t *toks;     /* (n) the chunk */
	size_t at;               /* tokens of the chunk already recorded */
};

/* The engine hands out the state after the first pos tokens of the chunk:
 * record those tokens, then store that state as a checkpoint. */
static int chunk_ckpt(void *arg, size_t pos, const ssm_state *st)
{
	struct chunk_ctx *c = arg;
	struct put_args *a;
	struct sref *ref;
	ssm_state *copy = NULL;
	int rc = sess_advance(c->s, c->x, c->toks + c->at, pos - c->at);

	if (rc)
		return rc;
	c->at = pos;
	rc = ssm_model_state_alloc(c->s->model, &copy);
	if (!rc)
		rc = ssm_state_copy(copy, st);
	if (rc) {
		ssm_state_free(copy);
		return rc;
	}
	rc = sess_put_prepare(c->s, c->x, copy, STORE_KIND_CHECKPOINT, NULL, NULL,
			      NULL, 0, &a, &ref);
	if (rc)
		return rc;
	sched_store_put(a);
	return job_ckpt_add(c->j, ref, c->x->n_tokens);
}

static void merge_replay_done(sched *s, struct job *j, int code);

/* One prefill chunk of j (append, or the replay of a merge) of at most
 * limit tokens (sched_step() sizes it). Checkpoint positions inside it
 * (those asked for, and the automatic ones every checkpoint_every tokens of
 * the session) come out of the one prefill through chunk_ckpt(). Returns
 * the tokens consumed. */
static size_t append_step(sched *s, struct job *j, size_t limit)
{
	struct sess *x = j->sess;
	size_t n = j->n_toks - j->n_done, np = 0, at = 0, mi = j->next_mark;
	uint64_t every = x->scratch ? 0 : (uint64_t)s->cfg->checkpoint_every;
	uint64_t sc = x->since_ckpt;
	size_t *pos = NULL;
	struct chunk_ctx c = {s, x, j, j->toks + j->n_done, 0};
	ssm_prefill_args a;
	int rc = SSMD_OK;

	if (n > limit)
		n = limit;
	/* Positions within the chunk, 1..n: the next asked-for mark or the
	 * next automatic one, whichever comes first; either restarts the
	 * automatic count. */
	if (every || mi < j->n_marks) {
		size_t cap = (every ? n / every + 1 : 0) + (j->n_marks - mi);
		pos = malloc(cap * sizeof(*pos));
		if (!pos)
			rc = ssmd_err_set(SSMD_ENOMEM, "checkpoint positions");
		while (!rc) {
			size_t next_auto = every ? at + (sc >= every ? 1 : every - sc)
						 : SIZE_MAX;
			size_t next_mark = mi < j->n_marks ? j->marks[mi] - j->n_done
							   : SIZE_MAX;
			size_t p = next_auto < next_mark ? next_auto : next_mark;
			if (p > n)
				break;
			pos[np++] = p;
			at = p;
			sc = 0;
			if (p == next_mark)
				mi++;
		}
	}
	if (!rc) {
		memset(&a, 0, sizeof(a));
		a.tokens = c.toks;
		a.n_tokens = n;
		a.ckpt_pos = pos;
		a.n_ckpt = np;
		a.ckpt_fn = chunk_ckpt;
		a.ckpt_ctx = &c;
		rc = ssm_prefill(s->be, x->slot, &a);
		if (!rc)
			rc = sess_advance(s, x, c.toks + c.at, n - c.at);
		else
			n = c.at; /* the slot holds the state at the last checkpoint */
	}
	free(pos);
	j->n_done += n;
	while (j->next_mark < j->n_marks && j->marks[j->next_mark] <= j->n_done)
		j->next_mark++;
	if (rc || j->n_done == j->n_toks) {
		if (j->req->op_case == SSMD__REQUEST__OP_APPEND)
			append_done(s, j, rc);
		else
			merge_replay_done(s, j, rc);
	}
	return n;
}

/* --------------------------------------------------------------- score -- */

struct score {
	ssm_state *saved;        /* the source's state, put back at the end */
	int32_t *next;           /* (n_toks) the token after each position, -1 last */
	float *lp;               /* (n_toks + 1) log-probability of each scored
				  * token; the backend writes position i's (token
				  * i + 1's) at lp + i + 1 - unscored */
	double total;
	uint32_t unscored;
};

void score_free(struct score *sc)
{
	if (!sc)
		return;
	ssm_state_free(sc->saved);
	free(sc->next);
	free(sc->lp);
	free(sc);
}

static int score_start(sched *s, struct job *j)
{
	const Ssmd__ScoreRequest *q = j->req->score;
	struct sess *x = j->sess;
	struct score *sc = calloc(1, sizeof(*sc));
	int rc;

	if (!sc)
		return ssmd_err_set(SSMD_ENOMEM, "score");
	j->score = sc;
	if (q->text) {
		rc = text_tokens_add(s, j, q->text);
	} else {
		j->toks = malloc(q->n_tokens * sizeof(int32_t));
		rc = j->toks ? SSMD_OK : ssmd_err_set(SSMD_ENOMEM, "score");
		if (!rc) {
			memcpy(j->toks, q->tokens, q->n_tokens * sizeof(int32_t));
			j->n_toks = q->n_tokens;
		}
	}
	if (rc)
		return rc;
	sc->next = malloc((j->n_toks ? j->n_toks : 1) * sizeof(int32_t));
	sc->lp = malloc((j->n_toks + 1) * sizeof(float));
	if (!sc->next || !sc->lp)
		return ssmd_err_set(SSMD_ENOMEM, "score");
	for (size_t i = 0; i < j->n_toks; i++)
		sc->next[i] = i + 1 < j->n_toks ? j->toks[i + 1] : -1;
	rc = ssm_model_state_alloc(s->model, &sc->saved);
	if (!rc)
		rc = ssm_slot_get(s->be, x->slot, sc->saved);
	if (rc)
		return rc;
	if (x->n_tokens > 0 && j->n_toks > 0) {
		/* token 0 follows the source's own last token */
		float *logits = malloc((size_t)s->vocab * sizeof(float));

		if (!logits)
			return ssmd_err_set(SSMD_ENOMEM, "score");
		rc = ssm_slot_logits(s->be, x->slot, logits);
		if (!rc) {
			sc->lp[0] = (float)ssm_logprob(logits, s->vocab, j->toks[0]);
			sc->total += sc->lp[0];
		}
		free(logits);
	} else if (x->n_tokens == 0) {
		sc->unscored = j->n_toks > 0;
	}
	return rc;
}

static void sess_close(sched *s, struct sess *x);

/* Puts the source's state back and replies. */
static void score_done(sched *s, struct job *j, int code)
{
	struct score *sc = j->score;
	struct sess *x = j->sess;
	Ssmd__ScoreReply *r;
	int rc = code;

	sess_job_pop(x);
	if (sc && sc->saved) {
		int r2 = ssm_slot_set(s->be, x->slot, sc->saved);
		if (r2) {
			/* The slot no longer holds the session's state: give
			 * the slot up and keep the state in host memory, where
			 * the session's next placement loads it from. */
			log_error("session %s: restoring after score failed: %s",
				  x->id, ssmd_errmsg());
			slot_release(s, x);
			x->mem = sc->saved;
			sc->saved = NULL;
			rc = rc ? rc : r2;
		}
	}
	if (!rc) {
		r = arena_alloc(&j->arena, sizeof(*r));
		if (!r) {
			rc = ssmd_err_set(SSMD_ENOMEM, "reply");
		} else {
			ssmd__score_reply__init(r);
			r->has_logprob = r->has_unscored = 1;
			r->logprob = sc->total;
			r->unscored = sc->unscored;
			r->tokens = j->toks;
			r->n_tokens = j->n_toks;
			r->token_logprobs = sc->lp;
			r->n_token_logprobs = j->n_toks - sc->unscored;
			j->reply.result_case = SSMD__REPLY__RESULT_SCORE;
			j->reply.score = r;
		}
	}
	job_finish(j, rc, NULL);
	if (x->scratch)
		sess_close(s, x);
}

/* Scores the next chunk of at most limit tokens (sched_step() sizes it), as
 * an append steps: a prefill that also returns, at each position, the
 * log-probability of the token after it (the backend forms them where the
 * logits are, so no logits cross to the host); token 0 was scored at the
 * start with the source's own logits. Returns the tokens consumed. */
static size_t score_step(sched *s, struct job *j, size_t limit)
{
	struct score *sc = j->score;
	struct sess *x = j->sess;
	const size_t at = j->n_done;
	size_t n = j->n_toks - at;
	ssm_prefill_args a;
	int rc;

	if (n > limit)
		n = limit;
	memset(&a, 0, sizeof(a));
	a.tokens = j->toks + at;
	a.n_tokens = n;
	a.lp_next = sc->next + at;
	a.logprobs = sc->lp + at + 1 - sc->unscored;
	rc = ssm_prefill(s->be, x->slot, &a);
	for (size_t i = at; !rc && i < at + n; i++)
		if (sc->next[i] >= 0)
			sc->total += sc->lp[i + 1 - sc->unscored];
	if (!rc)
		j->n_done += n;
	if (rc || j->n_done == j->n_toks)
		score_done(s, j, rc);
	return n;
}

/* --------------------------------------------------------- other ops -- */

/* Finishes a job whose reply may name checkpoints: those IDs exist only
 * after their commits, so such replies leave through the store thread. */
static void job_done(sched *s, struct job *j)
{
	if (j->n_ckpts)
		sched_store_reply(s, j);
	else
		job_finish(j, SSMD_OK, NULL);
}

static int op_info(sched *s, struct job *j)
{
	Ssmd__InfoReply *r = arena_alloc(&j->arena, sizeof(*r));
	Ssmd__Limits *l = arena_alloc(&j->arena, sizeof(*l));

	if (!r || !l)
		return ssmd_err_set(SSMD_ENOMEM, "reply");
	ssmd__info_reply__init(r);
	ssmd__limits__init(l);
	r->version = (char *)SSMD_VERSION;
	r->has_protocol_version = 1;
	r->protocol_version = PROTO_VERSION;
	r->model = s->model_name;
	r->model_fingerprint = s->fp_hex;
	r->arch = "mamba1";
	r->has_d_model = r->has_n_layer = r->has_d_inner = r->has_d_state = 1;
	r->d_model = (uint32_t)s->mc->d_model;
	r->n_layer = (uint32_t)s->mc->n_layer;
	r->d_inner = (uint32_t)s->mc->d_inner;
	r->d_state = (uint32_t)s->mc->d_state;
	r->has_vocab_size = 1;
	r->vocab_size = (uint32_t)s->vocab;
	r->backend = (char *)ssm_backend_name(s->be);
	r->has_slots = 1;
	r->slots = (uint32_t)s->n_slots;
	r->has_state_bytes = 1;
	r->state_bytes = s->state_bytes;
	r->has_has_tokenizer = 1;
	r->has_tokenizer = s->tok != NULL;
	r->has_checkpoint_every = 1;
	r->checkpoint_every = (uint32_t)s->cfg->checkpoint_every;
	l->has_max_message_bytes = l->has_max_append_tokens = 1;
	l->max_message_bytes = s->cfg->max_message;
	l->max_append_tokens = (uint32_t)s->cfg->max_append_tokens;
	l->has_max_generate_tokens = l->has_max_sessions = 1;
	l->max_generate_tokens = (uint32_t)s->cfg->max_generate_tokens;
	l->max_sessions = (uint32_t)s->cfg->max_sessions;
	l->has_queue_depth = l->has_max_stop = 1;
	l->queue_depth = (uint32_t)s->cfg->queue_depth;
	l->max_stop = STOP_MAX;
	r->limits = l;
	j->reply.result_case = SSMD__REPLY__RESULT_INFO;
	j->reply.info = r;
	return SSMD_OK;
}

static int op_stats(sched *s, struct job *j)
{
	Ssmd__StatsReply *r = arena_alloc(&j->arena, sizeof(*r));
	double now = sched_now();
	uint64_t total = atomic_load(&s->tokens_total);
	size_t used = 0;

	if (!r)
		return ssmd_err_set(SSMD_ENOMEM, "reply");
	ssmd__stats_reply__init(r);
	for (int i = 0; i < s->n_slots; i++)
		used += s->slot_owner[i] != NULL;
	stats_publish(s);
	r->has_sessions = r->has_sessions_resident = r->has_slots = 1;
	r->sessions = (uint32_t)atomic_load(&s->n_sessions);
	r->sessions_resident = (uint32_t)atomic_load(&s->n_resident);
	r->slots = (uint32_t)s->n_slots;
	r->has_slots_used = r->has_queue_depth = 1;
	r->slots_used = (uint32_t)used;
	/* Not counting this stats request itself. */
	r->queue_depth = (uint32_t)(atomic_load(&s->waiting) - (j->waiting != NULL));
	r->has_tokens_total = r->has_tokens_per_s = 1;
	r->tokens_total = total;
	/* The last full window, or the current one once it is overdue (the
	 * rate is only refreshed while tokens flow). */
	r->tokens_per_s = now - s->rate_t0 >= RATE_WINDOW_S
		? (double)(total - s->rate_n0) / (now - s->rate_t0)
		: s->tokens_per_s;
	r->has_requests_total = r->has_evictions = r->has_uptime_s = 1;
	r->requests_total = atomic_load(&s->requests_total);
	r->evictions = atomic_load(&s->evictions);
	r->has_store_failures = 1;
	r->store_failures = atomic_load(&s->store_failures);
	r->uptime_s = now - s->start_s;
	pthread_mutex_lock(&s->lock);
	r->tier_bytes = s->tier.bytes + s->tier.spare_bytes;
	r->tier_budget = s->tier.budget;
	r->tier_pending = (uint32_t)s->tier.pinned;
	r->tier_hits = s->tier.hits;
	r->tier_misses = s->tier.misses;
	pthread_mutex_unlock(&s->lock);
	r->has_tier_bytes = r->has_tier_budget = r->has_tier_pending = 1;
	r->has_tier_hits = r->has_tier_misses = 1;
	j->reply.result_case = SSMD__REPLY__RESULT_STATS;
	j->reply.stats = r;
	/* The library's size is read on the store thread. */
	sched_store_request(s, j);
	return SSMD_OK;
}

/* SSMD_ERANGE unless count (1..1024) more sessions fit under max_sessions. */
static int sessions_check_room(sched *s, uint32_t count)
{
	if (count < 1 || count > 1024)
		return ssmd_err_set(SSMD_ERANGE, "count %u is outside 1..1024", count);
	if (s->sessions.n + count > (size_t)s->cfg->max_sessions)
		return ssmd_err_set(SSMD_ERANGE,
				    "%zu sessions are open; the limit is %d",
				    s->sessions.n, s->cfg->max_sessions);
	return SSMD_OK;
}

/* Ends an open or fork of the count new sessions v (entries may be NULL
 * after a failure): when rc is still 0, adds them to the table and replies
 * with them; otherwise, or when that fails, every one is taken out of the
 * table and its slot and freed, so a failed open leaves nothing behind. v
 * stays the caller's. Returns the final code. */
static int sessions_finish(sched *s, struct job *j, struct sess **v,
			   uint32_t count, int rc)
{
	for (uint32_t i = 0; !rc && i < count; i++)
		rc = sess_table_add(&s->sessions, v[i]);
	if (!rc)
		rc = reply_sessions(j, v, count);
	if (rc) {
		for (uint32_t i = 0; i < count && v; i++) {
			if (!v[i])
				continue;
			sess_table_remove(&s->sessions, v[i]);
			slot_release(s, v[i]);
			sess_free(v[i]);
		}
	}
	return rc;
}

/* Forks x (at the head of its queue, so its state is current) count times.
 * Children take device-side copies while free slots last. The others start
 * paged out on x's stored state, so a large fork costs no host memory: when
 * x has unsaved progress it is checkpointed once first. */
static int op_fork_live(sched *s, struct job *j, struct sess *x, uint32_t count,
			int has_seed, uint64_t seed)
{
	struct sess **kids = calloc(count, sizeof(*kids));
	uint32_t made = 0, n_free = 0;
	int rc = sessions_check_room(s, count);

	if (!rc && !kids)
		rc = ssmd_err_set(SSMD_ENOMEM, "fork");
	for (int i = 0; x->slot >= 0 && !x->loading && i < s->n_slots; i++)
		n_free += !s->slot_owner[i];
	if (!rc && sess_dirty(x) && (x->slot < 0 || n_free < count))
		rc = sess_store(s, x, STORE_KIND_CHECKPOINT, NULL, NULL, NULL, 0, NULL);
	for (; !rc && made < count; made++) {
		struct sess *k;
		int slot = -1;
		rc = sess_alloc(has_seed ? seed : x->seed, x->label, &kids[made]);
		if (rc)
			break;
		k = kids[made];
		k->n_tokens = x->n_tokens;
		k->since_ckpt = x->since_ckpt;
		k->base = sref_get(x->base);
		memcpy(k->from_id, x->from_id, sizeof(k->from_id));
		rc = sess_trans_push(k, x->trans, x->n_trans);
		if (rc)
			break;
		for (int i = 0; x->slot >= 0 && !x->loading && i < s->n_slots &&
				slot < 0; i++)
			if (!s->slot_owner[i])
				slot = i;
		if (slot >= 0) {
			rc = ssm_slot_copy(s->be, slot, x->slot);
			if (!rc) {
				s->slot_owner[slot] = k;
				k->slot = slot;
				k->last_used = ++s->tick;
			}
		}
		/* Otherwise k is paged out: its state is its base (x is clean
		 * now) and its first request pages it in. */
	}
	rc = sessions_finish(s, j, kids, count, rc);
	free(kids);
	return rc;
}

/* Opens count sessions on a state read from the library (DONE_OPENED). */
static int op_open_stored(sched *s, struct job *j, ssm_state **st,
			  const char *id, uint32_t count, uint64_t seed,
			  const char *label)
{
	struct sess **v = calloc(count, sizeof(*v));
	struct sref *base = sref_committed(id);
	uint32_t made = 0;
	int rc = sessions_check_room(s, count);

	if (!rc && (!v || !base))
		rc = ssmd_err_set(SSMD_ENOMEM, "open");
	for (; !rc && made < count; made++) {
		rc = sess_alloc(seed, label, &v[made]);
		if (rc)
			break;
		v[made]->n_tokens = (*st)->n_tokens;
		v[made]->base = sref_get(base);
		snprintf(v[made]->from_id, sizeof(v[made]->from_id), "%s", id);
	}
	if (!rc) {
		/* The first session keeps the state just read, so its first
		 * use needs no second read; the others page in when used. */
		v[0]->mem = *st;
		*st = NULL;
	}
	rc = sessions_finish(s, j, v, count, rc);
	sref_put(base);
	free(v);
	return rc;
}

static int op_open_empty(sched *s, struct job *j, uint32_t count,
			 uint64_t seed, const char *label)
{
	struct sess **v = calloc(count, sizeof(*v));
	int rc = sessions_check_room(s, count);

	if (!rc && !v)
		rc = ssmd_err_set(SSMD_ENOMEM, "open");
	for (uint32_t i = 0; !rc && i < count; i++)
		rc = sess_alloc(seed, label, &v[i]);
	rc = sessions_finish(s, j, v, count, rc);
	free(v);
	return rc;
}

/* Snapshot or close at the head of x's queue. A close that stores a state
 * sets x->closing: the session is closed only once that state is committed
 * (DONE_CLOSED), and stays open with its state when the put fails. */
static int op_store_session(sched *s, struct job *j, struct sess *x,
			    const char *tag, const char *label, int closing,
			    int want)
{
	int rc = reply_state_ref(j, x->n_tokens);
	int stores = want && !(closing && x->n_tokens == 0);

	if (rc)
		return rc;
	if (stores && closing) {
		/* Set before the job reaches the store thread, which posts it
		 * back; freed with the job if nothing is posted. */
		if (!(j->closed = calloc(1, sizeof(*j->closed))))
			return ssmd_err_set(SSMD_ENOMEM, "close");
		j->closed->type = DONE_CLOSED;
		j->closed->s = s;
		j->closed->sess = x;
	}
	if (!stores) {
		/* Nothing to store. */
	} else if (sess_dirty(x) || !x->base) {
		rc = sess_store(s, x, STORE_KIND_SNAPSHOT, tag, label, j, 0, NULL);
		if (rc)
			return rc;
		x->closing = closing;
		j = NULL; /* the store thread replies after the commit */
	} else {
		/* No progress since the last stored state: that is the answer,
		 * stored again first if its put had failed. */
		rc = sess_store_again(s, x, STORE_KIND_SNAPSHOT, tag, label, j, 0, NULL);
		if (rc)
			return rc;
		x->closing = closing;
		j = NULL;
	}
	if (j)
		job_done(s, j);
	return SSMD_OK;
}

static void sess_close(sched *s, struct sess *x)
{
	struct job *j;

	while ((j = sess_job_pop(x)))
		job_finish(j, SSMD_ECLOSED, "session %s was closed", x->id);
	if (!x->scratch && sched_store_session(s, x, 1))
		log_warn("session %s: %s", x->id, ssmd_errmsg());
	slot_release(s, x);
	sess_table_remove(&s->sessions, x);
	/* Nobody asks for its base's state again unless a fork holds it. */
	hostcache_release(s->hc, x->base);
	x->base = NULL;
	sess_free(x);
}

/* --------------------------------------------------------------- merge -- */

void merge_free(struct merge *m)
{
	if (!m)
		return;
	free(m->tokens);
	free(m);
}

/* Checks a merge request and makes job->merge. */
static int merge_check(sched *s, struct job *j)
{
	const Ssmd__MergeRequest *q = j->req->merge;
	const char *mode = nonempty(q->mode) ? q->mode : "interpolate";
	struct merge *m;
	double sum = 0;
	int rc;

	if (q->n_sources < 2 || q->n_sources > STORE_PARENTS_MAX)
		return ssmd_err_set(SSMD_EINVAL,
				    "merge takes 2..%d sources (state IDs or tags), not %zu",
				    STORE_PARENTS_MAX, q->n_sources);
	for (size_t i = 0; i < q->n_sources; i++)
		if (!q->sources[i][0] || strlen(q->sources[i]) > STORE_TAG_MAX)
			return ssmd_err_set(SSMD_EINVAL,
					    "merge source %zu is empty or longer than %d bytes",
					    i, STORE_TAG_MAX);
	if ((rc = tag_label_check(q->tag, q->label)))
		return rc;
	if (q->open && (rc = sessions_check_room(s, 1)))
		return rc;
	m = calloc(1, sizeof(*m));
	if (!m)
		return ssmd_err_set(SSMD_ENOMEM, "merge");
	j->merge = m;
	m->open = q->open;
	m->n = q->n_sources;
	if (strcmp(mode, "interpolate") == 0) {
		m->mode = MERGE_INTERPOLATE;
	} else if (strcmp(mode, "compose") == 0) {
		m->mode = MERGE_COMPOSE;
	} else if (strcmp(mode, "replay") == 0) {
		m->mode = MERGE_REPLAY;
	} else {
		return ssmd_err_set(SSMD_EINVAL,
				    "merge mode '%.32s' is not interpolate, compose or replay",
				    mode);
	}
	if (q->n_weights && m->mode != MERGE_INTERPOLATE)
		return ssmd_err_set(SSMD_EINVAL,
				    "merge mode %s takes no weights", mode);
	if (q->n_weights && q->n_weights != q->n_sources)
		return ssmd_err_set(SSMD_EINVAL,
				    "%zu weights for %zu sources: give one per source",
				    q->n_weights, q->n_sources);
	for (size_t i = 0; i < q->n_weights; i++) {
		if (!isfinite(q->weights[i]) || q->weights[i] < 0)
			return ssmd_err_set(SSMD_EINVAL,
					    "weight %zu is %g: weights must be finite and >= 0",
					    i, q->weights[i]);
		sum += q->weights[i];
	}
	if (q->n_weights && !(sum > 0 && isfinite(sum)))
		return ssmd_err_set(SSMD_EINVAL,
				    "the weights sum to %g: they must sum to a finite number > 0",
				    sum);
	return SSMD_OK;
}

int reply_merge(struct job *j, uint64_t n_tokens, const struct sess *x)
{
	Ssmd__MergeReply *r = arena_alloc(&j->arena, sizeof(*r));

	if (!r)
		return ssmd_err_set(SSMD_ENOMEM, "reply");
	ssmd__merge_reply__init(r);
	r->state_id = "";
	r->has_n_tokens = 1;
	r->n_tokens = n_tokens;
	if (x) {
		Ssmd__SessionInfo *o = arena_alloc(&j->arena, sizeof(*o));
		if (!o)
			return ssmd_err_set(SSMD_ENOMEM, "reply");
		ssmd__session_info__init(o);
		o->id = arena_strdup(&j->arena, x->id);
		o->base_state = arena_strdup(&j->arena, x->from_id);
		if (!o->id || !o->base_state)
			return ssmd_err_set(SSMD_ENOMEM, "reply");
		o->has_n_tokens = 1;
		o->n_tokens = x->n_tokens;
		r->session = o;
	}
	j->reply.result_case = SSMD__REPLY__RESULT_MERGE;
	j->reply.merge = r;
	return SSMD_OK;
}

/* A session on stored state *st (taken; ID id), for j to run on: a scratch
 * session (score of a stored state, replay) or a real one (an opened merge
 * result). j (may be NULL) is queued on it. *out (may be NULL) gets it. */
static int scratch_open(sched *s, struct job *j, ssm_state **st,
			const char *id, uint64_t seed, int scratch,
			struct sess **out)
{
	struct sess *x = NULL;
	int rc = sessions_check_room(s, 1);

	if (!rc)
		rc = sess_alloc(seed, NULL, &x);
	if (!rc && !(x->base = sref_committed(id)))
		rc = ssmd_err_set(SSMD_ENOMEM, "session");
	if (!rc)
		rc = sess_table_add(&s->sessions, x);
	if (rc) {
		sess_free(x);
		return rc;
	}
	x->scratch = scratch;
	x->n_tokens = (*st)->n_tokens;
	x->mem = *st;
	*st = NULL;
	if (!scratch)
		snprintf(x->from_id, sizeof(x->from_id), "%s", id);
	if (j)
		sess_job_push(x, j);
	if (out)
		*out = x;
	return SSMD_OK;
}

/* A merge's state came back from the store thread: open a session on the
 * stored result, or replay the other sources' tokens onto the first. */
static void merge_opened(sched *s, struct job *j, ssm_state **st,
			 const char *id)
{
	struct merge *m = j->merge;
	const Ssmd__MergeRequest *q = j->req->merge;
	struct sess *x = NULL;
	int rc;

	if (m->mode == MERGE_REPLAY) {
		rc = scratch_open(s, j, st, id, q->seed, 1, &x);
		/* Opened, it is a session resumed from the first source's state
		 * (the replayed tokens follow); its base_state says so. */
		if (!rc && m->open)
			snprintf(x->from_id, sizeof(x->from_id), "%s", id);
		if (!rc) {
			/* The job runs as a prefill of these tokens. */
			j->toks = m->tokens;
			j->n_toks = m->n_tokens;
			m->tokens = NULL;
		}
	} else {
		uint64_t n_tokens = (*st)->n_tokens;
		rc = scratch_open(s, NULL, st, id, q->seed, 0, &x);
		if (!rc)
			rc = reply_merge(j, n_tokens, x);
		if (!rc)
			rc = sched_store_session(s, x, 0);
		if (!rc) {
			j->reply.merge->state_id = arena_strdup(&j->arena, id);
			rc = j->reply.merge->state_id ? SSMD_OK
				: ssmd_err_set(SSMD_ENOMEM, "reply");
		}
		if (rc && x)
			sess_close(s, x);
		if (!rc)
			job_finish(j, SSMD_OK, NULL);
	}
	if (rc)
		job_finish(j, rc, NULL);
}

/* The replay of a merge consumed its tokens: store the result as a merge
 * of every source (the replayed tokens are its transcript from the first),
 * then close the scratch session, or keep it as the opened session. */
static void merge_replay_done(sched *s, struct job *j, int code)
{
	const Ssmd__MergeRequest *q = j->req->merge;
	struct merge *m = j->merge;
	struct sess *x = j->sess;
	struct put_args *a = NULL;
	char (*extra)[STORE_ID_SIZE] = NULL;
	ssm_state *st = NULL;
	/* Read now: m goes with j, which the store thread (or the error
	 * reply below) frees. */
	const int open = m->open;
	int rc = code;

	sess_job_pop(x);
	if (!rc)
		rc = reply_merge(j, x->n_tokens, open ? x : NULL);
	if (!rc && !(extra = malloc((m->n - 1) * sizeof(*extra))))
		rc = ssmd_err_set(SSMD_ENOMEM, "merge parents");
	if (!rc)
		rc = sess_state_copy(s, x, &st);
	if (!rc) {
		/* An opened result is a session like any other from now on
		 * (its put records it in the session table). */
		x->scratch = !open;
		rc = sess_put_prepare(s, x, st, STORE_KIND_MERGE, nonempty(q->tag),
				      nonempty(q->label), j, 0, &a, NULL);
	}
	if (!rc) {
		memcpy(extra, m->ids + 1, (m->n - 1) * sizeof(*extra));
		a->extra = extra;
		a->n_extra = m->n - 1;
		extra = NULL;
		sched_store_put(a); /* finishes j after the commit */
	} else {
		job_finish(j, rc, NULL);
	}
	free(extra);
	if (rc || !open)
		sess_close(s, x);
}

/* ------------------------------------------------------ job dispatch -- */

/* Starts the head job of x if it can start. Returns 1 when that job ran to
 * completion (so the next one may start now), 0 when the head is running or
 * waiting, or the session was closed. */
static int sess_service_one(sched *s, struct sess *x)
{
	struct job *j = x->head;
	const Ssmd__Request *q;
	int ready, rc = SSMD_OK;

	if (!j || j->started || x->closing)
		return 0;
	q = j->req;
	x->last_used = ++s->tick;
	switch (q->op_case) {
	case SSMD__REQUEST__OP_APPEND:
	case SSMD__REQUEST__OP_GENERATE:
		if (q->op_case == SSMD__REQUEST__OP_GENERATE && x->n_tokens == 0) {
			rc = gen_start(s, j); /* fails with the EEMPTY message */
			break;
		}
		rc = sess_place(s, x, &ready);
		if (rc || !ready)
			break;
		j->started = 1;
		job_unqueue(j);
		if (q->op_case == SSMD__REQUEST__OP_GENERATE) {
			rc = gen_start(s, j);
		} else {
			rc = append_start(s, j);
			if (!rc && j->n_toks == 0) {
				append_done(s, j, SSMD_OK);
				return 1;
			}
		}
		break;
	case SSMD__REQUEST__OP_SCORE:
	case SSMD__REQUEST__OP_MERGE:
		/* A score, or the replay of a merge on its scratch session:
		 * prefill work once the state is in a slot. */
		rc = sess_place(s, x, &ready);
		if (!rc && !ready)
			return 0;
		j->started = 1;
		job_unqueue(j);
		if (q->op_case == SSMD__REQUEST__OP_SCORE) {
			if (!rc)
				rc = score_start(s, j);
			if (rc || j->n_toks == 0) {
				int scratch = x->scratch;
				score_done(s, j, rc);
				return !scratch;
			}
		} else if (rc || j->n_toks == 0) {
			/* Closes x unless it became the opened result. */
			merge_replay_done(s, j, rc);
		}
		return 0;
	case SSMD__REQUEST__OP_SNAPSHOT:
		sess_job_pop(x);
		rc = op_store_session(s, j, x, nonempty(q->snapshot->tag),
				      nonempty(q->snapshot->label), 0, 1);
		if (rc)
			job_finish(j, rc, NULL);
		return 1;
	case SSMD__REQUEST__OP_CLOSE:
		sess_job_pop(x);
		rc = op_store_session(s, j, x, nonempty(q->close->tag),
				      nonempty(q->close->label), 1, q->close->snapshot);
		if (rc)
			job_finish(j, rc, NULL);
		if (x->closing)
			return 0; /* closed at DONE_CLOSED */
		if (!rc)
			log_debug("closed session %s", x->id);
		sess_close(s, x);
		return 0;
	case SSMD__REQUEST__OP_OPEN:
	case SSMD__REQUEST__OP_FORK: {
		int is_open = q->op_case == SSMD__REQUEST__OP_OPEN;
		uint32_t count = is_open ? q->open->count : q->fork->count;
		int has_seed = is_open ? q->open->has_seed : q->fork->has_seed;
		uint64_t seed = is_open ? q->open->seed : q->fork->seed;
		sess_job_pop(x);
		rc = op_fork_live(s, j, x, count, has_seed, seed);
		job_finish(j, rc, NULL);
		return 1;
	}
	default:
		rc = ssmd_err_set(SSMD_EPROTO, "operation not queued on sessions");
		break;
	}
	if (rc) {
		sess_job_pop(x);
		if (q->op_case == SSMD__REQUEST__OP_GENERATE && j->gen)
			gen_publish(s, j, NULL, 0, j->gen->sent, 1, rc);
		job_finish(j, rc, NULL);
		return 1;
	}
	return 0;
}

/* Starts x's queued requests until one keeps running or waits. */
static void sess_service(sched *s, struct sess *x)
{
	while (sess_service_one(s, x))
		;
}

/* sess_service() over every session. Backwards: a close removes its
 * session by moving the last one into its place, which this order has
 * already visited. */
static void sched_service_all(sched *s)
{
	for (size_t i = s->sessions.n; !s->draining && i-- > 0;)
		sess_service(s, s->sessions.v[i]);
}

/* The session a request names; ENOENT with the ID in the message. */
static struct sess *sess_lookup(sched *s, const char *id, int *rc)
{
	struct sess *x = id && id[0] ? sess_table_find(&s->sessions, id) : NULL;

	if (x && x->closing) {
		*rc = ssmd_err_set(SSMD_ENOENT, "session '%s' is being closed", x->id);
		return NULL;
	}
	if (!x)
		*rc = id && id[0]
			? ssmd_err_set(SSMD_ENOENT, "no open session '%.*s'", 64, id)
			: ssmd_err_set(SSMD_EINVAL, "a session ID is required");
	return x;
}

/* Checks text or token IDs given to append or score. */
static int tokens_check(sched *s, const char *op, const char *text,
			const int32_t *tokens, size_t n_tokens, size_t n_texts)
{
	int n_src = (text != NULL) + (n_tokens > 0) + (n_texts > 0);

	if (n_src > 1)
		return ssmd_err_set(SSMD_EINVAL, "%s takes one of text, tokens%s",
				    op, n_texts ? " or texts" : "");
	if (n_src == 0)
		return ssmd_err_set(SSMD_EINVAL, "%s needs text or tokens", op);
	if ((text || n_texts) && !s->tok)
		return ssmd_err_set(SSMD_ENOTOK,
				    "model %s has no tokenizer.json: send token IDs instead of text",
				    s->model_name);
	if (n_tokens > (size_t)s->cfg->max_append_tokens)
		return ssmd_err_set(SSMD_ERANGE, "%zu tokens; at most %d per request",
				    n_tokens, s->cfg->max_append_tokens);
	for (size_t i = 0; i < n_tokens; i++)
		if (tokens[i] < 0 || tokens[i] >= s->vocab)
			return ssmd_err_set(SSMD_EINVAL,
					    "token %d at position %zu is outside [0, %d)",
					    tokens[i], i, s->vocab);
	return SSMD_OK;
}

static int append_check(sched *s, const Ssmd__AppendRequest *q)
{
	int rc = tokens_check(s, "append", q->text, q->tokens, q->n_tokens,
			      q->n_texts);

	if (rc)
		return rc;
	if (q->n_texts > APPEND_MARKS_MAX)
		return ssmd_err_set(SSMD_ERANGE, "%zu texts; at most %d per append",
				    q->n_texts, APPEND_MARKS_MAX);
	for (size_t i = 0; i < q->n_boundaries; i++)
		if (q->boundaries[i] == 0 ||
		    (i && q->boundaries[i] <= q->boundaries[i - 1]))
			return ssmd_err_set(SSMD_EINVAL,
					    "boundaries must be ascending token offsets >= 1 (boundary %zu is %u)",
					    i, q->boundaries[i]);
	return SSMD_OK;
}

/* A new request arrives on the scheduler thread. */
static void job_begin(sched *s, struct job *j)
{
	const Ssmd__Request *q = j->req;
	struct sess *x = NULL;
	int rc = SSMD_OK;

	switch (q->op_case) {
	case SSMD__REQUEST__OP_INFO:
		rc = op_info(s, j);
		if (!rc)
			job_finish(j, SSMD_OK, NULL);
		break;
	case SSMD__REQUEST__OP_STATS:
		rc = op_stats(s, j);
		break;
	case SSMD__REQUEST__OP_OPEN: {
		const Ssmd__OpenRequest *o = q->open;
		uint32_t count = o->has_count ? o->count : 1;
		if (nonempty(o->from) && nonempty(o->fork)) {
			rc = ssmd_err_set(SSMD_EINVAL, "open takes from or fork, not both");
		} else if ((rc = tag_label_check(NULL, o->label)) ||
			   (rc = sessions_check_room(s, count))) {
			/* refused */
		} else if (nonempty(o->fork)) {
			if ((x = sess_lookup(s, o->fork, &rc)))
				sess_job_push(x, j);
		} else if (nonempty(o->from)) {
			rc = sched_store_resolve(s, j, o->from);
		} else {
			rc = op_open_empty(s, j, count, o->seed, o->label);
			if (!rc)
				job_finish(j, SSMD_OK, NULL);
		}
		break;
	}
	case SSMD__REQUEST__OP_FORK: {
		const Ssmd__ForkRequest *f = q->fork;
		uint32_t count = f->has_count ? f->count : 1;
		if (!nonempty(f->source))
			rc = ssmd_err_set(SSMD_EINVAL,
					  "fork needs a source: session ID, state ID or tag");
		else if ((rc = sessions_check_room(s, count)))
			break;
		else if ((x = sess_table_find(&s->sessions, f->source)))
			sess_job_push(x, j);
		else
			rc = sched_store_resolve(s, j, f->source);
		break;
	}
	case SSMD__REQUEST__OP_APPEND:
		if ((x = sess_lookup(s, q->append->session, &rc)) &&
		    !(rc = append_check(s, q->append)))
			sess_job_push(x, j);
		break;
	case SSMD__REQUEST__OP_GENERATE:
		if ((x = sess_lookup(s, q->generate->session, &rc)) &&
		    !(rc = generate_check(s, q->generate)))
			sess_job_push(x, j);
		break;
	case SSMD__REQUEST__OP_SNAPSHOT:
		if ((x = sess_lookup(s, q->snapshot->session, &rc)) &&
		    !(rc = tag_label_check(q->snapshot->tag, q->snapshot->label)))
			sess_job_push(x, j);
		break;
	case SSMD__REQUEST__OP_CLOSE:
		if ((x = sess_lookup(s, q->close->session, &rc)) &&
		    !(rc = tag_label_check(q->close->tag, q->close->label)))
			sess_job_push(x, j);
		break;
	case SSMD__REQUEST__OP_SCORE: {
		const Ssmd__ScoreRequest *sq = q->score;
		if (!nonempty(sq->source))
			rc = ssmd_err_set(SSMD_EINVAL,
					  "score needs a source: session ID, state ID or tag");
		else if ((rc = tokens_check(s, "score", sq->text, sq->tokens,
					    sq->n_tokens, 0)))
			break;
		else if ((x = sess_table_find(&s->sessions, sq->source)))
			sess_job_push(x, j);
		else if (!(rc = sessions_check_room(s, 1)))
			rc = sched_store_resolve(s, j, sq->source);
		break;
	}
	case SSMD__REQUEST__OP_MERGE:
		if (!(rc = merge_check(s, j)))
			sched_store_merge(s, j);
		break;
	default:
		rc = ssmd_err_set(SSMD_EPROTO, "operation %s is not served here",
				  proto_op_name(q));
		break;
	}
	if (rc)
		job_finish(j, rc, NULL);
}

/* A store-thread completion arrives on the scheduler thread. */
static void done_handle(sched *s, struct done_msg *m)
{
	if (m->type == DONE_COMMITTED) {
		hostcache_unpin(s->hc, m->ref, m->rc == SSMD_OK);
		/* The put no longer needs its parent: when the session moved
		 * on from it and nothing else holds it, its entry's state is
		 * a spare for the next page-out. The put's own state may be
		 * one too when its session was closed meanwhile. */
		hostcache_release(s->hc, m->parent);
		hostcache_release(s->hc, m->ref);
		m->parent = m->ref = NULL;
		tier_publish(s);
	} else if (m->type == DONE_HEALED) {
		if (hostcache_adopt(s->hc, m->ref, m->st))
			m->st = NULL;
	} else if (m->type == DONE_CLOSED) {
		/* A close request's reply is on its way; on failure the
		 * session keeps its state (in memory), takes requests again
		 * and, if it was expiring, expires again after another idle
		 * period. */
		m->sess->closing = 0;
		if (!m->rc) {
			log_debug("closed session %s", m->sess->id);
			sess_close(s, m->sess);
		} else {
			m->sess->active_s = sched_now();
		}
	} else if (m->type == DONE_LOADED) {
		struct sess *x = m->sess;
		int rc = m->rc;
		x->loading = 0;
		if (!rc)
			rc = ssm_slot_set(s->be, x->slot, m->st);
		if (rc) {
			struct job *j = sess_job_pop(x);
			slot_release(s, x);
			if (j)
				job_finish(j, rc, "paging in session %s failed: %s",
					   x->id, m->rc ? m->err : ssmd_errmsg());
		} else {
			log_debug("paged in session %s", x->id);
		}
	} else {
		struct job *j = m->job;
		const Ssmd__Request *q = j->req;
		int rc = m->rc;
		if (rc) {
			job_finish(j, rc, "%s", m->err);
		} else if (m->type == DONE_MERGED) {
			merge_opened(s, j, &m->st, m->id);
		} else if (q->op_case == SSMD__REQUEST__OP_SCORE) {
			rc = scratch_open(s, j, &m->st, m->id, 0, 1, NULL);
			if (rc)
				job_finish(j, rc, NULL);
		} else {
			int is_open = q->op_case == SSMD__REQUEST__OP_OPEN;
			uint32_t count = is_open ? (q->open->has_count ? q->open->count : 1)
						 : (q->fork->has_count ? q->fork->count : 1);
			uint64_t seed = is_open ? q->open->seed : q->fork->seed;
			const char *label = is_open ? q->open->label : NULL;
			rc = op_open_stored(s, j, &m->st, m->id, count, seed, label);
			job_finish(j, rc, NULL);
		}
	}
	ssm_state_free(m->st);
	sref_put(m->ref);
	sref_put(m->parent);
	free(m);
}

/* --------------------------------------------------------------- steps -- */

/* 1 when x's running request feeds tokens by prefill chunks this step (an
 * append, a score, a merge's replay): started, and x in a slot. */
static int sess_prefilling(const struct sess *x)
{
	const struct job *j = x->head;

	return j && j->started && !x->loading && x->slot >= 0 &&
	       j->req->op_case != SSMD__REQUEST__OP_GENERATE;
}

/* One step: start what can start, one batched decode over every generating
 * session, one prefill chunk per prefilling session. Returns 1 when work was
 * done (so the loop does not sleep). */
static int sched_step(sched *s)
{
	int n = 0, worked = 0, rc;
	size_t budget, share, lim, n_pre = 0;

	sched_service_all(s);
	for (size_t i = 0; i < s->sessions.n; i++) {
		struct sess *x = s->sessions.v[i];
		struct job *j = x->head;
		if (!j || !j->started || x->loading || x->slot < 0)
			continue;
		if (j->req->op_case == SSMD__REQUEST__OP_GENERATE && j->gen &&
		    j->gen->next >= 0) {
			s->batch_slots[n] = x->slot;
			s->batch_tokens[n] = j->gen->next;
			s->batch_sess[n] = x;
			n++;
		}
	}
	if (n) {
		worked = 1;
		rc = ssm_decode(s->be, s->batch_slots, s->batch_tokens, n, s->logits);
		for (int i = 0; i < n; i++) {
			struct sess *x = s->batch_sess[i];
			struct job *j = x->head;
			struct gen *g = j->gen;
			int32_t t = g->next;
			int r = rc;
			g->next = -1;
			x->last_used = ++s->tick;
			if (!r)
				r = sess_consume(s, x, j, &t, 1);
			if (r || g->finish)
				gen_done(s, j, r);
			else if ((r = gen_emit(s, j, s->logits + (size_t)i * s->vocab)))
				gen_done(s, j, r);
		}
	}
	/* Prefill work (appends, scores, replays) shares what the decode left
	 * of the step's token budget, round-robin from where the last step
	 * stopped; at least one token per step, so nothing waits forever.
	 * A session's chunk is capped at its equal share of that budget, or at
	 * prefill_chunk where that is larger: a lone ingest takes the whole
	 * step in one chunk (on the GPU a chunk pays its launches once, so
	 * longer ones run faster), while many sessions each may still take
	 * prefill_chunk tokens, in turns when the budget runs out before the
	 * round does. This is the one place that sizes chunks. */
	budget = (size_t)s->cfg->step_tokens > (size_t)n
			 ? (size_t)s->cfg->step_tokens - (size_t)n : 1;
	for (size_t i = 0; i < s->sessions.n; i++)
		n_pre += sess_prefilling(s->sessions.v[i]);
	share = n_pre ? budget / n_pre : budget;
	if (share < (size_t)s->cfg->prefill_chunk)
		share = (size_t)s->cfg->prefill_chunk;
	/* The round starts at rr as it stood when the step began: the loop
	 * moves s->rr as it goes, and reading the moved one would visit some
	 * sessions twice in one step and skip others. */
	for (size_t k = 0, m = s->sessions.n, rr = s->rr; budget && k < m; k++) {
		size_t i = (rr + k) % m;
		struct sess *x;
		struct job *j;
		if (i >= s->sessions.n)
			continue; /* a step just ended a scratch session */
		x = s->sessions.v[i];
		j = x->head;
		if (!sess_prefilling(x))
			continue;
		worked = 1;
		x->last_used = ++s->tick;
		lim = share < budget ? share : budget;
		budget -= j->req->op_case == SSMD__REQUEST__OP_SCORE ? score_step(s, j, lim)
								     : append_step(s, j, lim);
		s->rr = i + 1;
	}
	/* Requests behind the ones that just finished start now, so the loop
	 * knows whether there is work before it sleeps. */
	sched_service_all(s);
	return worked;
}

/* Work that waits only for the scheduler itself (not for the store
 * thread or for a slot to free up). */
static int sched_has_work(sched *s)
{
	for (size_t i = 0; i < s->sessions.n; i++) {
		struct sess *x = s->sessions.v[i];
		if (x->head && x->head->started && !x->loading && x->slot >= 0)
			return 1;
	}
	return 0;
}

/* Shutdown on the scheduler thread: end running work, store every session
 * with unsaved progress. */
static void sched_drain(sched *s)
{
	int ended = 0;

	s->draining = 1;
	for (size_t i = 0; i < s->sessions.n; i++) {
		struct sess *x = s->sessions.v[i];
		struct job *j = x->head;
		if (j && j->started && j->gen && !j->gen->finish)
			j->gen->finish = SSMD__FINISH_REASON__FINISH_CANCELED;
	}
	/* One last step consumes the tokens already emitted. */
	sched_step(s);
	/* Backwards: ending a scratch session moves the last one into its
	 * place, which this order has already visited. */
	for (size_t i = s->sessions.n; i-- > 0;) {
		struct sess *x = s->sessions.v[i];
		struct job *j = x->head;
		int op = j ? (int)j->req->op_case : 0;
		if (j && j->started) {
			ssmd_err_set(SSMD_ECANCELED, "the daemon is shutting down");
			if (op == SSMD__REQUEST__OP_APPEND)
				append_done(s, j, SSMD_ECANCELED);
			else if (op == SSMD__REQUEST__OP_SCORE)
				score_done(s, j, SSMD_ECANCELED);
			else if (op == SSMD__REQUEST__OP_MERGE)
				merge_replay_done(s, j, SSMD_ECANCELED);
		}
		if (i >= s->sessions.n || s->sessions.v[i] != x)
			continue; /* a scratch session, ended */
		if (x->scratch) {
			sess_close(s, x);
			continue;
		}
		while ((j = sess_job_pop(x)))
			job_finish(j, SSMD_ECLOSED, "the daemon is shutting down");
		if (sess_dirty(x)) {
			if (sess_store(s, x, STORE_KIND_CHECKPOINT, NULL, NULL, NULL,
				       1, NULL))
				log_error("session %s: final checkpoint failed: %s",
					  x->id, ssmd_errmsg());
			ended++;
		} else if (x->base &&
			   sess_store_again(s, x, STORE_KIND_CHECKPOINT, NULL, NULL,
					    NULL, 1, NULL)) {
			log_error("session %s: final checkpoint failed: %s", x->id,
				  ssmd_errmsg());
		}
	}
	log_info("stopping: storing %d session%s with unsaved progress", ended,
		 ended == 1 ? "" : "s");
}

/* Expires x: stores its state (a checkpoint, or its base again if that
 * put had failed) and closes it once that is committed (DONE_CLOSED, like a
 * close request); when the put fails the session stays open with its state
 * in memory and expires again later. A session that never consumed anything
 * closes at once. */
static void sess_expire(sched *s, struct sess *x)
{
	struct done_msg *cm;
	struct put_args *a;
	ssm_state *st = NULL;
	int rc;

	if (!sess_dirty(x) && !x->base) {
		sess_close(s, x);
		return;
	}
	if (!(cm = calloc(1, sizeof(*cm)))) {
		log_warn("session %s: idle, but cannot be stored: no memory", x->id);
		return;
	}
	cm->type = DONE_CLOSED;
	cm->s = s;
	cm->sess = x;
	if (!sess_dirty(x)) {
		rc = sess_store_again(s, x, STORE_KIND_CHECKPOINT, NULL, NULL, NULL, 1, cm);
	} else if (!(rc = sess_state_copy(s, x, &st)) &&
		   !(rc = sess_put_prepare(s, x, st, STORE_KIND_CHECKPOINT, NULL, NULL,
					   NULL, 1, &a, NULL))) {
		a->closed = cm;
		sched_store_put(a);
	}
	if (rc) {
		free(cm);
		log_warn("session %s: idle, but cannot be stored: %s", x->id, ssmd_errmsg());
		return;
	}
	x->closing = 1;
	log_info("session %s expires after %d s idle", x->id, s->cfg->idle_timeout);
}

/*
 * Expires every session idle for idle_timeout seconds. Returns the
 * monotonic time of the next look (0: expiry is off). The sessions are
 * walked only once that time has come, not at every step: a session that
 * becomes idle after a walk has active_s >= the walk's time (its last
 * request ended then, or it was opened then), so it is due no earlier than
 * walk + idle_timeout, and the next look is the earliest due of the walk's
 * idle sessions or, with none, walk + idle_timeout.
 */
static double sched_expire(sched *s)
{
	double timeout = s->cfg->idle_timeout, now = sched_now(), next;

	if (timeout <= 0)
		return 0;
	if (now < s->expiry_next)
		return s->expiry_next;
	next = now + timeout;
	for (size_t i = s->sessions.n; i-- > 0;) {
		struct sess *x = s->sessions.v[i];
		double due = x->active_s + timeout;
		if (x->head || x->loading || x->closing)
			continue;
		if (due > now) {
			if (due < next)
				next = due;
			continue;
		}
		sess_expire(s, x);
	}
	s->expiry_next = next;
	return next;
}

/* Waits on the inbox until abs_mono (monotonic seconds; 0 = forever). */
static void sched_wait(sched *s, double abs_mono)
{
	struct timespec ts;

	if (!abs_mono) {
		pthread_cond_wait(&s->cond, &s->lock);
		return;
	}
	/* The condition variable runs on the monotonic clock (sched_start()),
	 * so a change of the wall clock neither stretches nor cuts the wait. */
	ts.tv_sec = (time_t)abs_mono;
	ts.tv_nsec = (long)((abs_mono - (double)ts.tv_sec) * 1e9);
	pthread_cond_timedwait(&s->cond, &s->lock, &ts);
}

static void *sched_main(void *arg)
{
	sched *s = arg;

	for (;;) {
		struct job *jobs;
		struct done_msg *done;
		double next_expiry = sched_expire(s);
		int stopping;

		pthread_mutex_lock(&s->lock);
		while (!s->stopping && !s->in_head && !s->done_head &&
		       !sched_has_work(s) &&
		       (!next_expiry || sched_now() < next_expiry))
			sched_wait(s, next_expiry);
		jobs = s->in_head;
		done = s->done_head;
		s->in_head = s->in_tail = NULL;
		s->in_n = 0;
		s->done_head = s->done_tail = NULL;
		stopping = s->stopping;
		pthread_mutex_unlock(&s->lock);

		while (done) {
			struct done_msg *next = done->next;
			done_handle(s, done);
			done = next;
		}
		while (jobs) {
			struct job *next = jobs->next;
			jobs->next = NULL;
			if (stopping)
				job_finish(jobs, SSMD_ECLOSED, "the daemon is shutting down");
			else
				job_begin(s, jobs);
			jobs = next;
		}
		if (stopping)
			break;
		sched_step(s);
		stats_publish(s);
	}
	sched_drain(s);
	stats_publish(s);
	return NULL;
}

/* ------------------------------------------------------------ lifecycle -- */

/* Reopens the sessions the library's session table lists as open (the
 * daemon stopped without closing them): each paged out on its last stored
 * state, so its next request resumes it. Runs before the threads start. */
static int sessions_restore(sched *s)
{
	store_session *v = NULL;
	size_t n = 0, restored = 0;
	int rc = store_session_list(s->store, &v, &n);

	if (rc)
		return rc;
	for (size_t i = 0; !rc && i < n; i++) {
		store_state_info info;
		struct sess *x = NULL;
		int r = SSMD_OK;
		memset(&info, 0, sizeof(info));
		if (strlen(v[i].id) >= SESS_ID_SIZE)
			continue; /* not a session ID of this daemon */
		if (v[i].state[0]) {
			r = store_state_info_get(s->store, v[i].state, &info);
			if (!r && memcmp(info.fingerprint, ssm_model_fingerprint(s->model),
					 STORE_FINGERPRINT_LEN) != 0) {
				/* Another model's session in a shared library. */
				store_state_info_fini(&info);
				continue;
			}
			if (r == SSMD_ENOENT) {
				log_warn("session %s continues from state %s, which is gone (%s): closing it",
					 v[i].id, v[i].state, ssmd_errmsg());
				store_session_close(s->store, v[i].id);
				continue;
			}
			if (r) {
				/* A read error need not last: the row stays for the next start. */
				log_warn("session %s: its state %s cannot be read now (%s); not resumed this time",
					 v[i].id, v[i].state, ssmd_errmsg());
				continue;
			}
		}
		if (s->sessions.n >= (size_t)s->cfg->max_sessions) {
			log_warn("%zu more sessions in the session table than max_sessions allows; they stay closed here",
				 n - i);
			store_state_info_fini(&info);
			break;
		}
		rc = sess_alloc(v[i].seed, v[i].label, &x);
		if (!rc) {
			memcpy(x->id, v[i].id, strlen(v[i].id) + 1);
			x->n_tokens = v[i].state[0] ? info.n_tokens : 0;
			if (v[i].state[0] && !(x->base = sref_committed(v[i].state)))
				rc = ssmd_err_set(SSMD_ENOMEM, "session");
		}
		if (!rc)
			rc = sess_table_add(&s->sessions, x);
		if (rc)
			sess_free(x);
		else
			restored++;
		store_state_info_fini(&info);
	}
	free(v);
	if (restored)
		log_info("reopened %zu session%s from the session table", restored,
			 restored == 1 ? "" : "s");
	return rc;
}

int sched_start(const struct sched_opts *o, sched **out)
{
	sched *s = calloc(1, sizeof(*s));
	ssm_backend_opts bo;
	ssm_state *probe = NULL;
	const char *kind = o->cfg->backend ? o->cfg->backend : "auto";
	int rc;

	if (!s)
		return ssmd_err_set(SSMD_ENOMEM, "scheduler");
	s->cfg = o->cfg;
	s->model = o->model;
	s->mc = ssm_model_config(o->model);
	s->tok = o->tok;
	s->store = o->store;
	s->vocab = s->mc->vocab_size;
	s->publish = o->publish;
	s->publish_arg = o->publish_arg;
	snprintf(s->model_name, sizeof(s->model_name), "%s",
		 o->model_name ? o->model_name : "");
	ssm_fingerprint_hex(ssm_model_fingerprint(o->model), s->fp_hex);
	pthread_mutex_init(&s->lock, NULL);
	{
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&s->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	s->start_s = s->rate_t0 = sched_now();

	rc = ssm_model_state_alloc(o->model, &probe);
	if (rc)
		goto fail;
	s->state_bytes = ssm_state_encoded_size(probe);
	ssm_state_free(probe);

	ssm_backend_opts_init(&bo);
	bo.kind = strcmp(kind, "cpu") == 0    ? SSM_BACKEND_CPU
		  : strcmp(kind, "cuda") == 0 ? SSM_BACKEND_CUDA
					      : SSM_BACKEND_AUTO;
	bo.n_slots = o->cfg->slots;
	bo.n_threads = o->cfg->threads;
	rc = ssm_backend_open(o->model, &bo, &s->be);
	if (rc)
		goto fail;
	s->n_slots = ssm_backend_n_slots(s->be);
	s->slot_owner = calloc((size_t)s->n_slots, sizeof(*s->slot_owner));
	s->logits = malloc((size_t)s->n_slots * (size_t)s->vocab * sizeof(float));
	s->batch_slots = malloc((size_t)s->n_slots * sizeof(int));
	s->batch_tokens = malloc((size_t)s->n_slots * sizeof(int32_t));
	s->batch_sess = malloc((size_t)s->n_slots * sizeof(*s->batch_sess));
	if (!s->slot_owner || !s->logits || !s->batch_slots ||
	    !s->batch_tokens || !s->batch_sess) {
		rc = ssmd_err_set(SSMD_ENOMEM, "scheduler buffers for %d slots",
				  s->n_slots);
		goto fail;
	}
	rc = hostcache_alloc((size_t)o->cfg->host_cache_mb << 20, &s->hc);
	if (rc)
		goto fail;
	rc = sessions_restore(s);
	if (rc)
		goto fail;
	rc = storeq_start(&s->sq);
	if (rc)
		goto fail;
	if (pthread_create(&s->thread, NULL, sched_main, s) != 0) {
		rc = ssmd_err_set(SSMD_EIO, "cannot start the scheduler thread");
		goto fail;
	}
	s->thread_started = 1;
	*out = s;
	return SSMD_OK;
fail:
	sched_free(s);
	return rc;
}

void sched_stop(sched *s)
{
	struct done_msg *m;

	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	if (s->stopped) {
		pthread_mutex_unlock(&s->lock);
		return;
	}
	s->stopping = 1;
	s->stopped = 1;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	if (s->thread_started)
		pthread_join(s->thread, NULL);
	/* Every queued commit completes before the library is closed. */
	storeq_stop(s->sq);
	s->sq = NULL;
	/* Completions that arrived after the scheduler stopped. */
	while ((m = s->done_head)) {
		s->done_head = m->next;
		/* A close whose state was stored: the session table must not
		 * reopen it at the next start. */
		if (m->type == DONE_CLOSED && !m->rc) {
			int rc = store_session_close(s->store, m->sess->id);
			if (rc && rc != SSMD_ENOENT)
				log_warn("session %s: %s", m->sess->id, ssmd_errmsg());
		}
		/* The host tier's entries, unpinned as their commits ended. */
		if (m->type == DONE_COMMITTED)
			hostcache_unpin(s->hc, m->ref, m->rc == SSMD_OK);
		if (m->type == DONE_HEALED && hostcache_adopt(s->hc, m->ref, m->st))
			m->st = NULL;
		if (m->job)
			job_finish(m->job, SSMD_ECLOSED, "the daemon is shutting down");
		ssm_state_free(m->st);
		sref_put(m->ref);
		sref_put(m->parent);
		free(m);
	}
	s->done_tail = NULL;
	if (s->hc && s->cfg->host_cache_mb) {
		struct hostcache_stats t;
		tier_publish(s);
		hostcache_stats_get(s->hc, &t);
		log_info("host tier: %llu page-ins served, %llu read from the library; peak %.1f of %.1f MB",
			 (unsigned long long)t.hits, (unsigned long long)t.misses,
			 (double)t.peak_bytes / 1048576.0, (double)t.budget / 1048576.0);
	}
}

void sched_free(sched *s)
{
	if (!s)
		return;
	sched_stop(s);
	for (size_t i = 0; i < s->sessions.n; i++)
		sess_free(s->sessions.v[i]);
	sess_table_fini(&s->sessions);
	hostcache_free(s->hc);
	free(s->put_raw);
	ssm_backend_close(s->be);
	free(s->slot_owner);
	free(s->logits);
	free(s->batch_slots);
	free(s->batch_tokens);
	free(s->batch_sess);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

const char *sched_backend_name(const sched *s)
{
	return ssm_backend_name(s->be);
}

void sched_tier_stats(sched *s, struct hostcache_stats *out)
{
	pthread_mutex_lock(&s->lock);
	*out = s->tier;
	pthread_mutex_unlock(&s->lock);
}
