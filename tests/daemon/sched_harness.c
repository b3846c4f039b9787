/*
 * sched_harness.c — the in-process scheduler driver shared by the daemon's
 * tests (see sched_harness.h).
 */
#include "sched_harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/job.h"
#include "testutil.h"

/* ---------------------------------------------------------------- boxes -- */

static void on_reply(void *arg, const void *reply, size_t len)
{
	struct harness_box *b = arg;

	pthread_mutex_lock(&b->m);
	b->buf = malloc(len ? len : 1);
	if (!b->buf)
		abort();
	memcpy(b->buf, reply, len);
	b->len = len;
	b->done = 1;
	pthread_cond_signal(&b->c);
	pthread_mutex_unlock(&b->m);
}

void harness_box_init(struct harness_box *b)
{
	memset(b, 0, sizeof(*b));
	pthread_mutex_init(&b->m, NULL);
	pthread_cond_init(&b->c, NULL);
}

int harness_submit(sched *s, Ssmd__Request *q, const char *rid,
		   struct harness_box *b)
{
	static int next_id;
	static char fresh[32];
	Ssmd__Request *dec;
	struct job *j;
	void *buf;
	size_t len;
	int rc;

	if (!rid) {
		snprintf(fresh, sizeof(fresh), "t%d", ++next_id);
		rid = fresh;
	}
	q->has_version = 1;
	q->version = PROTO_VERSION;
	q->request_id = (char *)rid;
	if (proto_msg_pack(&q->base, &buf, &len) ||
	    proto_request_decode(buf, len, &dec) || job_alloc(dec, on_reply, b, &j))
		abort();
	free(buf);
	rc = sched_submit(s, j);
	if (rc)
		job_free(j);
	return rc;
}

int harness_box_done(struct harness_box *b)
{
	int d;

	pthread_mutex_lock(&b->m);
	d = b->done;
	pthread_mutex_unlock(&b->m);
	return d;
}

Ssmd__Reply *harness_box_wait(struct harness_box *b)
{
	Ssmd__Reply *r;

	pthread_mutex_lock(&b->m);
	while (!b->done)
		pthread_cond_wait(&b->c, &b->m);
	pthread_mutex_unlock(&b->m);
	/* The scheduler thread let go of b when it unlocked after signalling. */
	pthread_cond_destroy(&b->c);
	pthread_mutex_destroy(&b->m);
	r = ssmd__reply__unpack(NULL, b->len, b->buf);
	free(b->buf);
	b->buf = NULL;
	if (!r)
		abort();
	if (r->code && getenv("SSMD_TEST_VERBOSE"))
		fprintf(stderr, "  reply: %u %s\n", r->code, r->message);
	return r;
}

Ssmd__Reply *harness_call(sched *s, Ssmd__Request *q)
{
	struct harness_box b;

	harness_box_init(&b);
	if (harness_submit(s, q, NULL, &b))
		abort();
	return harness_box_wait(&b);
}

void harness_reply_free(Ssmd__Reply *r)
{
	if (r)
		ssmd__reply__free_unpacked(r, NULL);
}

/* ------------------------------------------------------------- requests -- */

/* One open request: its one session's ID (malloc), or NULL when refused. */
static char *open_one(sched *s, Ssmd__OpenRequest *o)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__Reply *r;
	char *id = NULL;

	q.op_case = SSMD__REQUEST__OP_OPEN;
	q.open = o;
	r = harness_call(s, &q);
	if (r->code == 0 && r->sessions && r->sessions->n_sessions == 1)
		id = strdup(r->sessions->sessions[0]->id);
	harness_reply_free(r);
	return id;
}

char *harness_fork(sched *s, const char *sid)
{
	Ssmd__OpenRequest o = SSMD__OPEN_REQUEST__INIT;

	o.fork = (char *)sid;
	return open_one(s, &o);
}

char *harness_open(sched *s, const char *from, int has_seed, uint64_t seed)
{
	Ssmd__OpenRequest o = SSMD__OPEN_REQUEST__INIT;

	o.from = (char *)from;
	o.has_seed = has_seed;
	o.seed = seed;
	return open_one(s, &o);
}

int harness_append(sched *s, const char *sid, const int32_t *t, size_t n)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__AppendRequest a = SSMD__APPEND_REQUEST__INIT;
	Ssmd__Reply *r;
	int code;

	a.session = (char *)sid;
	a.tokens = (int32_t *)t;
	a.n_tokens = n;
	q.op_case = SSMD__REQUEST__OP_APPEND;
	q.append = &a;
	r = harness_call(s, &q);
	code = (int)r->code;
	harness_reply_free(r);
	return code;
}

int harness_generate(sched *s, const char *sid, uint32_t max, float temp,
		     int has_seed, uint64_t seed, int32_t *out, size_t *n_out)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__GenerateRequest g = SSMD__GENERATE_REQUEST__INIT;
	Ssmd__Reply *r;
	int code;

	g.session = (char *)sid;
	g.has_max_tokens = 1;
	g.max_tokens = max;
	g.has_temperature = temp > 0;
	g.temperature = temp;
	g.has_seed = has_seed;
	g.seed = seed;
	q.op_case = SSMD__REQUEST__OP_GENERATE;
	q.generate = &g;
	r = harness_call(s, &q);
	code = (int)r->code;
	*n_out = 0;
	if (!code && r->generate) {
		memcpy(out, r->generate->tokens, r->generate->n_tokens * sizeof(int32_t));
		*n_out = r->generate->n_tokens;
	}
	harness_reply_free(r);
	return code;
}

char *harness_snapshot(sched *s, const char *sid, const char *tag)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__SnapshotRequest sn = SSMD__SNAPSHOT_REQUEST__INIT;
	Ssmd__Reply *r;
	char *id = NULL;

	sn.session = (char *)sid;
	sn.tag = (char *)tag;
	q.op_case = SSMD__REQUEST__OP_SNAPSHOT;
	q.snapshot = &sn;
	r = harness_call(s, &q);
	if (!r->code && r->state_ref && r->state_ref->state_id[0])
		id = strdup(r->state_ref->state_id);
	harness_reply_free(r);
	return id;
}

int harness_close(sched *s, const char *sid)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__CloseRequest c = SSMD__CLOSE_REQUEST__INIT;
	Ssmd__Reply *r;
	int code;

	c.session = (char *)sid;
	q.op_case = SSMD__REQUEST__OP_CLOSE;
	q.close = &c;
	r = harness_call(s, &q);
	code = (int)r->code;
	harness_reply_free(r);
	return code;
}

Ssmd__Reply *harness_stats(sched *s)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__StatsRequest st = SSMD__STATS_REQUEST__INIT;

	q.op_case = SSMD__REQUEST__OP_STATS;
	q.stats = &st;
	return harness_call(s, &q);
}

sched *harness_start(const cfg *c, const ssm_model *m, const tok_tokenizer *tok,
		     store *st, sched_publish_fn publish)
{
	struct sched_opts o = {c, m, tok, st, "test-model", publish, NULL};
	sched *s;

	if (sched_start(&o, &s))
		abort();
	return s;
}

/* ------------------------------------------------------------ references -- */

const char *harness_backend_name(void)
{
	const char *b = getenv("SSMD_TEST_BACKEND");

	return b && strcmp(b, "cuda") == 0 ? "cuda" : "cpu";
}

ssm_backend *harness_backend_open(const ssm_model *m, const char *backend)
{
	ssm_backend_opts bo;
	ssm_backend *b;

	ssm_backend_opts_init(&bo);
	bo.kind = strcmp(backend, "cuda") == 0 ? SSM_BACKEND_CUDA : SSM_BACKEND_CPU;
	bo.n_slots = 1;
	if (ssm_backend_open(m, &bo, &b))
		abort();
	return b;
}

void harness_reference_run(const ssm_model *m, const char *backend,
			   const int32_t *prompt, size_t n, uint32_t max,
			   float temp, uint64_t seed, int32_t *out)
{
	ssm_backend *b = harness_backend_open(m, backend);
	ssm_prefill_args a;
	ssm_sampler smp = {temp, 0, 1.0f, seed};
	int vocab = ssm_model_config(m)->vocab_size, slot = 0;
	float *logits = malloc((size_t)vocab * sizeof(float));

	if (!logits)
		abort();
	memset(&a, 0, sizeof(a));
	a.tokens = prompt;
	a.n_tokens = n;
	a.last_logits = logits;
	if (ssm_prefill(b, 0, &a))
		abort();
	for (uint32_t i = 0; i < max; i++) {
		out[i] = ssm_sample(logits, vocab, &smp, n + i);
		if (ssm_decode(b, &slot, &out[i], 1, logits))
			abort();
	}
	free(logits);
	ssm_backend_close(b);
}

int harness_text_model(const char *shared, const char *dir, ssm_model **m,
		       tok_tokenizer **tok)
{
	char tool[1200], tokenizer[1200], cmd[4096], path[1300];
	const char *build = getenv("SSMD_BUILD_ROOT");
	ssm_model *mm = NULL;
	int rc;

	snprintf(tool, sizeof(tool), "%s/kernels/ssm-mkmodel", build ? build : ".");
	snprintf(tokenizer, sizeof(tokenizer),
		 "%s/../models/gpt-neox-20b-tokenizer.json", shared);
	if (access(tool, X_OK) || access(tokenizer, R_OK))
		return ssmd_err_set(SSMD_ENOENT, "ssm-mkmodel or the tokenizer is missing");
	snprintf(cmd, sizeof(cmd),
		 "%s --out %s --d-model 32 --n-layer 2 --vocab 50280 --seed 3 --tokenizer %s >/dev/null",
		 tool, dir, tokenizer);
	if (system(cmd) != 0)
		return ssmd_err_set(SSMD_EIO, "ssm-mkmodel failed: %s", cmd);
	rc = ssm_model_load(dir, &mm);
	if (rc)
		return rc;
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	rc = tok_load(path, tok);
	if (rc) {
		ssm_model_free(mm);
		return rc;
	}
	*m = mm;
	return SSMD_OK;
}

int harness_text_start(harness_text *t, const char *shared, const char *tmp,
		       const char *backend, sched_publish_fn publish)
{
	char path[1300];
	int rc;

	memset(t, 0, sizeof(*t));
	snprintf(path, sizeof(path), "%s/textmodel", tmp);
	rc = harness_text_model(shared, path, &t->m, &t->tok);
	if (rc)
		return rc;
	snprintf(path, sizeof(path), "%s/text.db", tmp);
	rc = store_open(path, NULL, &t->st);
	if (rc) {
		tok_free(t->tok);
		ssm_model_free(t->m);
		return rc;
	}
	cfg_init(&t->c);
	cfg_set(&t->c, "backend", backend);
	t->c.slots = 2;
	t->s = harness_start(&t->c, t->m, t->tok, t->st, publish);
	return SSMD_OK;
}

void harness_text_stop(harness_text *t)
{
	sched_free(t->s);
	store_close(t->st);
	cfg_fini(&t->c);
	tok_free(t->tok);
	ssm_model_free(t->m);
}

/* -------------------------------------------------------------- fillers -- */

int harness_fill(struct harness_fillers *f, store *st, const ssm_model *m, int random)
{
	ssm_state *x = NULL;
	void *raw = NULL;
	size_t len;
	int rc = ssm_model_state_alloc(m, &x);

	if (rc)
		return rc;
	len = ssm_state_encoded_size(x);
	raw = malloc(len);
	while (!rc && f->n < HARNESS_FILLERS_MAX) {
		size_t nf = (size_t)x->n_layer * x->d_inner * x->d_state;
		for (size_t i = 0; random && i < nf; i++)
			x->ssm[i] = (float)(test_splitmix64(&f->rng) >> 40) / (1 << 24) - 0.5f;
		rc = raw ? ssm_state_encode(x, raw, len) : SSMD_ENOMEM;
		if (!rc) {
			store_put p = {.raw = raw, .raw_len = len,
				       .kind = STORE_KIND_SNAPSHOT};
			rc = store_state_put(st, &p, f->id[f->n]);
			if (!rc)
				f->n++;
		}
	}
	free(raw);
	ssm_state_free(x);
	return rc;
}

int harness_unfill(struct harness_fillers *f, store *st)
{
	int bad = 0;

	for (size_t i = 0; i < f->n; i++)
		bad += store_state_delete(st, f->id[i], 1) != SSMD_OK;
	f->n = 0;
	return bad;
}
