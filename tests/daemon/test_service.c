/*
 * test_service.c — the multi-session service features of the scheduler,
 * in-process on the CPU backend with the tiny-mamba fixture (and a random
 * model with the GPT-NeoX tokenizer made by ssm-mkmodel for text):
 *   - checkpoints inside an append (checkpoint_every, boundaries, texts):
 *     each stored payload is byte-for-byte the payload of an append that
 *     stopped at that position and was snapshotted; they chain, each with
 *     its transcript, and the reply lists their positions;
 *   - merge: interpolate and compose against the formulas of DESIGN.md
 *     computed here in double (A = -exp(A_log) read from the model's
 *     weights); replay is byte-for-byte the state of feeding the
 *     concatenated tokens; parents, kind, tag; refusals (weights, modes,
 *     another model's state, unknown sources);
 *   - score: per-token log-probabilities against log-softmax of logits the
 *     engine produces when run directly here; the source is unchanged;
 *   - the per-step token budget: short generates complete while a long
 *     append is still running (ordering, not time);
 *   - sessions survive a restart of the scheduler in the middle of a
 *     round-robin workload (200 sessions on 4 slots, sampled with each
 *     session's own seed): every session's tokens equal a direct run of the
 *     engine; a closed session stays closed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "testutil.h"
#include "sched_harness.h"
#include "ssm_impl.h"

/* ------------------------------------------------------------ requests -- */

/* Merges sources (n) by mode with weights (nw, may be 0). */
static Ssmd__Reply *merge(sched *s, const char **src, size_t n, const char *mode,
			  const double *w, size_t nw, int open)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__MergeRequest m = SSMD__MERGE_REQUEST__INIT;

	m.sources = (char **)src;
	m.n_sources = n;
	m.mode = (char *)mode;
	m.weights = (double *)w;
	m.n_weights = nw;
	m.has_open = open;
	m.open = open;
	q.op_case = SSMD__REQUEST__OP_MERGE;
	q.merge = &m;
	return harness_call(s, &q);
}

static Ssmd__Reply *score(sched *s, const char *source, const int32_t *t,
			  size_t n, const char *text)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__ScoreRequest sc = SSMD__SCORE_REQUEST__INIT;

	sc.source = (char *)source;
	sc.tokens = (int32_t *)t;
	sc.n_tokens = n;
	sc.text = (char *)text;
	q.op_case = SSMD__REQUEST__OP_SCORE;
	q.score = &sc;
	return harness_call(s, &q);
}

/* A stored state's raw (decoded) payload. */
static void *payload(store *st, const char *id, size_t *len)
{
	void *raw = NULL;

	*len = 0;
	if (store_state_get(st, id, &raw, len, NULL))
		return NULL;
	return raw;
}

static ssm_state *state_of(store *st, const char *id)
{
	size_t len;
	void *raw = payload(st, id, &len);
	ssm_state *x = NULL;

	if (raw && ssm_state_decode(raw, len, &x))
		x = NULL;
	free(raw);
	return x;
}

/* 1 when two stored states have identical raw payloads. */
static int same_payload(store *st, const char *a, const char *b)
{
	size_t la, lb;
	void *pa = payload(st, a, &la), *pb = payload(st, b, &lb);
	int same = pa && pb && la == lb && memcmp(pa, pb, la) == 0;

	free(pa);
	free(pb);
	return same;
}

static char tmp[] = "/tmp/ssmd-test-service-XXXXXX";

/* Pseudo-random tokens in [0, vocab). */
static void tokens_fill(int32_t *t, size_t n, int vocab, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1664525u + 1013904223u;
		t[i] = (int32_t)((seed >> 8) % (uint32_t)vocab);
	}
}

/* ---------------------------------------------------------------- tests -- */

/* Checkpoints inside one append equal appends that stop there. */
static void test_checkpoints(sched *s, store *st, int vocab)
{
	int32_t toks[100];
	uint32_t bounds[2] = {10, 37};
	/* checkpoint_every 25 and boundaries 10, 37: */
	const uint64_t want[6] = {10, 25, 37, 50, 75, 100};
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__AppendRequest ap = SSMD__APPEND_REQUEST__INIT;
	Ssmd__Reply *r;
	char *a = harness_open(s, NULL, 0, 0), *b = harness_open(s, NULL, 0, 0);
	char *ids[6] = {0};
	size_t n_ids = 0;

	tokens_fill(toks, 100, vocab, 11);
	ap.session = a;
	ap.tokens = toks;
	ap.n_tokens = 100;
	ap.has_checkpoint_every = 1;
	ap.checkpoint_every = 25;
	ap.boundaries = bounds;
	ap.n_boundaries = 2;
	q.op_case = SSMD__REQUEST__OP_APPEND;
	q.append = &ap;
	r = harness_call(s, &q);
	CHECK(r->code == 0 && r->append && r->append->n_checkpoints == 6 &&
	      r->append->n_checkpoint_tokens == 6,
	      "append with checkpoint_every 25 and boundaries 10, 37 stores 6 checkpoints (code %u)",
	      r->code);
	if (r->code == 0 && r->append->n_checkpoints == 6) {
		int pos_ok = 1;
		for (size_t i = 0; i < 6; i++) {
			pos_ok &= r->append->checkpoint_tokens[i] == want[i];
			ids[i] = strdup(r->append->checkpoints[i]);
		}
		n_ids = 6;
		CHECK(pos_ok, "checkpoint positions are 10, 25, 37, 50, 75, 100");
	}
	harness_reply_free(r);

	/* The same tokens appended piece by piece, snapshotted at each mark. */
	for (size_t i = 0; i < n_ids; i++) {
		size_t from = i ? (size_t)want[i - 1] : 0;
		char *snap;
		store_state_info info;
		int32_t *tr = NULL;
		size_t n_tr = 0;
		CHECK_RC(harness_append(s, b, toks + from, (size_t)want[i] - from), SSMD_OK);
		snap = harness_snapshot(s, b, NULL);
		CHECK(snap && same_payload(st, ids[i], snap),
		      "checkpoint at %llu is byte-for-byte the state of stopping there",
		      (unsigned long long)want[i]);
		memset(&info, 0, sizeof(info));
		CHECK_RC(store_state_info_get(st, ids[i], &info), SSMD_OK);
		CHECK(info.kind == STORE_KIND_CHECKPOINT &&
		      (i == 0 ? info.n_parents == 0
			      : info.n_parents == 1 && strcmp(info.parents[0], ids[i - 1]) == 0) &&
		      info.n_transcript == want[i] - from,
		      "checkpoint %zu: kind checkpoint, parent the previous one, transcript of %zu tokens",
		      i, (size_t)(want[i] - from));
		store_state_info_fini(&info);
		CHECK(store_transcript(st, ids[i], &tr, &n_tr) == SSMD_OK &&
		      n_tr == want[i] && memcmp(tr, toks, n_tr * sizeof(*tr)) == 0,
		      "transcript from the root to checkpoint %zu is the first %llu tokens",
		      i, (unsigned long long)want[i]);
		free(tr);
		free(snap);
	}

	/* Bad boundaries. */
	{
		uint32_t bad[2] = {5, 5}, past[1] = {101};
		ap.has_checkpoint_every = 0;
		ap.boundaries = bad;
		ap.n_boundaries = 2;
		r = harness_call(s, &q);
		CHECK(r->code == SSMD_EINVAL, "boundaries not ascending: EINVAL (%u)", r->code);
		harness_reply_free(r);
		ap.boundaries = past;
		ap.n_boundaries = 1;
		r = harness_call(s, &q);
		CHECK(r->code == SSMD_ERANGE, "boundary past the append: ERANGE (%u)", r->code);
		harness_reply_free(r);
	}
	for (size_t i = 0; i < n_ids; i++)
		free(ids[i]);
	free(a);
	free(b);
}

/* Largest |got - want| / max(|want|, floor) over n floats. */
static double rel_err(const float *got, const double *want, size_t n,
		      double floor)
{
	double worst = 0;

	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)got[i] - want[i]) /
			   fmax(fabs(want[i]), floor);
		if (!(d <= worst))
			worst = d;
	}
	return worst;
}

/* interpolate, compose, replay, and the refusals. */
static void test_merge(sched *s, store *st, const ssm_model *m)
{
	const ssm_config *mc = ssm_model_config(m);
	int vocab = mc->vocab_size;
	int32_t x[30], y[20], xy[50], out[8], ref[8];
	char *sa = harness_open(s, NULL, 0, 0), *sb = harness_open(s, NULL, 0, 0);
	char *sc = harness_open(s, NULL, 0, 0);
	char *ida, *idb, *idxy;
	ssm_state *A, *B, *M;
	Ssmd__Reply *r;
	size_t n;

	tokens_fill(x, 30, vocab, 21);
	tokens_fill(y, 20, vocab, 22);
	memcpy(xy, x, sizeof(x));
	memcpy(xy + 30, y, sizeof(y));
	harness_append(s, sa, x, 30);
	harness_append(s, sb, y, 20);
	harness_append(s, sc, xy, 50);
	ida = harness_snapshot(s, sa, NULL);
	idb = harness_snapshot(s, sb, NULL);
	idxy = harness_snapshot(s, sc, NULL);
	A = state_of(st, ida);
	B = state_of(st, idb);
	if (!A || !B || !idxy) {
		CHECK(0, "merge sources stored");
		return;
	}
	const char *src[2] = {ida, idb};

	/* interpolate with weights 3, 1: every part is (3 a + 1 b) / 4. */
	{
		double w[2] = {3, 1};
		r = merge(s, src, 2, "interpolate", w, 2, 0);
		CHECK(r->code == 0 && r->merge && r->merge->state_id[0],
		      "interpolate merge (code %u)", r->code);
		M = r->code == 0 ? state_of(st, r->merge->state_id) : NULL;
		if (M) {
			size_t nss = (size_t)mc->n_layer * mc->d_inner * mc->d_state;
			size_t ncv = (size_t)mc->n_layer * mc->d_inner * (mc->d_conv - 1);
			size_t ndt = (size_t)mc->n_layer * mc->d_inner;
			size_t nh = (size_t)mc->d_model;
			double *e = malloc(nss * sizeof(double)), worst = 0;
			struct { const float *a, *b, *got; size_t n; } parts[4] = {
				{A->ssm, B->ssm, M->ssm, nss}, {A->conv, B->conv, M->conv, ncv},
				{A->hidden, B->hidden, M->hidden, nh},
				{A->dt_sum, B->dt_sum, M->dt_sum, ndt}};
			for (int p = 0; p < 4; p++) {
				double d;
				e = realloc(e, parts[p].n * sizeof(double));
				for (size_t i = 0; i < parts[p].n; i++)
					e[i] = (3.0 * parts[p].a[i] + 1.0 * parts[p].b[i]) / 4.0;
				d = rel_err(parts[p].got, e, parts[p].n, 1e-30);
				worst = d > worst ? d : worst;
			}
			/* Both sides compute in double and round once to f32:
			 * at most one f32 rounding apart (2^-24 ~ 6e-8). */
			CHECK(worst <= 1.2e-7, "interpolate equals (3a + b) / 4 part by part (worst relative error %.3g, tolerance 1.2e-7)",
			      worst);
			/* n_tokens = round((3*30 + 20) / 4) = round(27.5) = 28. */
			CHECK(M->n_tokens == 28, "interpolate n_tokens %llu is the rounded weighted mean 28",
			      (unsigned long long)M->n_tokens);
			free(e);
			store_state_info info;
			memset(&info, 0, sizeof(info));
			CHECK(store_state_info_get(st, r->merge->state_id, &info) == 0 &&
			      info.kind == STORE_KIND_MERGE && info.n_parents == 2 &&
			      strcmp(info.parents[0], ida) == 0 &&
			      strcmp(info.parents[1], idb) == 0,
			      "the merge is of kind merge with both sources as parents, in order");
			store_state_info_fini(&info);
		}
		ssm_state_free(M);
		harness_reply_free(r);
	}

	/* compose: h = exp(A_l dt_sum_B) h_A + h_B with A_l = -exp(A_log),
	 * conv and hidden from B, dt_sum and n_tokens added. */
	{
		r = merge(s, src, 2, "compose", NULL, 0, 0);
		CHECK(r->code == 0 && r->merge, "compose merge (code %u)", r->code);
		M = r->code == 0 ? state_of(st, r->merge->state_id) : NULL;
		if (M) {
			size_t di = (size_t)mc->d_inner, N = (size_t)mc->d_state;
			size_t nss = (size_t)mc->n_layer * di * N;
			double *e = malloc(nss * sizeof(double));
			float *alog = malloc(di * N * sizeof(float));
			double *dts = malloc((size_t)mc->n_layer * di * sizeof(double));
			for (int l = 0; l < mc->n_layer; l++) {
				ssm_tensor_to_f32(&m->layers[l].A_log, alog, di * N);
				for (size_t c = 0; c < di; c++)
					for (size_t k = 0; k < N; k++) {
						size_t i = ((size_t)l * di + c) * N + k;
						double Al = -exp((double)alog[c * N + k]);
						e[i] = exp(Al * B->dt_sum[(size_t)l * di + c]) * A->ssm[i] +
						       B->ssm[i];
					}
				for (size_t c = 0; c < di; c++)
					dts[(size_t)l * di + c] = (double)A->dt_sum[(size_t)l * di + c] +
								  B->dt_sum[(size_t)l * di + c];
			}
			/* One f32 rounding of a double result, plus exp() of
			 * two libm calls that may differ by an ulp in double:
			 * 2e-7 relative (floor 1e-20 for values near 0). */
			double w1 = rel_err(M->ssm, e, nss, 1e-20);
			double w2 = rel_err(M->dt_sum, dts, (size_t)mc->n_layer * di, 1e-20);
			CHECK(w1 <= 2e-7 && w2 <= 2e-7,
			      "compose ssm and dt_sum follow the formula (worst relative errors %.3g, %.3g; tolerance 2e-7)",
			      w1, w2);
			CHECK(memcmp(M->conv, B->conv, (size_t)mc->n_layer * di * (mc->d_conv - 1) * sizeof(float)) == 0 &&
			      memcmp(M->hidden, B->hidden, (size_t)mc->d_model * sizeof(float)) == 0 &&
			      M->n_tokens == 50,
			      "compose takes conv and hidden from B and adds n_tokens (50)");
			free(e);
			free(alog);
			free(dts);
		}
		ssm_state_free(M);
		harness_reply_free(r);
	}

	/* replay: exactly the state of appending x then y; opened, it
	 * generates what the concatenation generates. */
	{
		r = merge(s, src, 2, "replay", NULL, 0, 1);
		CHECK(r->code == 0 && r->merge && r->merge->session,
		      "replay merge with open (code %u)", r->code);
		if (r->code == 0 && r->merge->session) {
			CHECK(same_payload(st, r->merge->state_id, idxy),
			      "replay of y onto x is byte-for-byte the state of appending x then y");
			CHECK(r->merge->n_tokens == 50 && r->merge->session->n_tokens == 50,
			      "replay result and its session hold 50 tokens");
			CHECK(r->merge->session->base_state &&
			      strcmp(r->merge->session->base_state, ida) == 0,
			      "the opened replay session was resumed from the first source "
			      "(base_state '%s')", r->merge->session->base_state);
			CHECK_RC(harness_generate(s, r->merge->session->id, 8, 0, 0, 0, out, &n), SSMD_OK);
			harness_reference_run(m, "cpu", xy, 50, 8, 0, 0, ref);
			CHECK(n == 8 && memcmp(out, ref, sizeof(ref)) == 0,
			      "the opened replay session continues like x + y run directly");
			store_state_info info;
			memset(&info, 0, sizeof(info));
			CHECK(store_state_info_get(st, r->merge->state_id, &info) == 0 &&
			      info.kind == STORE_KIND_MERGE && info.n_parents == 2 &&
			      info.n_transcript == 20,
			      "replay result: kind merge, 2 parents, y's 20 tokens as its transcript");
			store_state_info_fini(&info);
		}
		harness_reply_free(r);
	}

	/* Refusals. */
	{
		double neg[2] = {1, -1}, zero[2] = {0, 0}, one[1] = {1};
		double nan2[2] = {1, NAN};
		const char *one_src[1] = {ida}, *unknown[2] = {ida, "no/such-tag"};
		struct { const char **src; size_t n; const char *mode; const double *w;
			 size_t nw; uint32_t code; const char *what; } bad[] = {
			{one_src, 1, "interpolate", NULL, 0, SSMD_EINVAL, "one source"},
			{src, 2, "interpolate", neg, 2, SSMD_EINVAL, "a negative weight"},
			{src, 2, "interpolate", zero, 2, SSMD_EINVAL, "weights summing to 0"},
			{src, 2, "interpolate", nan2, 2, SSMD_EINVAL, "a NaN weight"},
			{src, 2, "interpolate", one, 1, SSMD_EINVAL, "one weight for two sources"},
			{src, 2, "compose", one, 1, SSMD_EINVAL, "weights with compose"},
			{src, 2, "average", NULL, 0, SSMD_EINVAL, "an unknown mode"},
			{unknown, 2, "interpolate", NULL, 0, SSMD_ENOENT, "an unknown tag"},
		};
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			r = merge(s, bad[i].src, bad[i].n, bad[i].mode, bad[i].w, bad[i].nw, 0);
			CHECK(r->code == bad[i].code, "merge with %s: code %u, want %u",
			      bad[i].what, r->code, bad[i].code);
			harness_reply_free(r);
		}
	}

	/* A state of another model (same shape, other fingerprint). */
	{
		ssm_state *o = NULL;
		size_t len = ssm_state_encoded_size(A);
		void *raw = malloc(len);
		char oid[STORE_ID_SIZE];
		ssm_state_alloc(A->arch, A->n_layer, A->d_inner, A->d_state, A->d_conv,
				A->d_model, &o);
		memset(o->fingerprint, 0xAB, sizeof(o->fingerprint));
		ssm_state_encode(o, raw, len);
		store_put p = {.raw = raw, .raw_len = len, .kind = STORE_KIND_IMPORT};
		CHECK_RC(store_state_put(st, &p, oid), SSMD_OK);
		const char *mixed[2] = {ida, oid};
		r = merge(s, mixed, 2, "interpolate", NULL, 0, 0);
		CHECK(r->code == SSMD_EMODEL, "merge with another model's state: EMODEL (%u)",
		      r->code);
		harness_reply_free(r);
		free(raw);
		ssm_state_free(o);
	}
	ssm_state_free(A);
	ssm_state_free(B);
	free(ida);
	free(idb);
	free(idxy);
	free(sa);
	free(sb);
	free(sc);
}

/* log softmax(logits)[t], computed here in double. */
static double ref_logprob(const float *logits, int vocab, int32_t t)
{
	double max = logits[0], sum = 0;

	for (int v = 0; v < vocab; v++)
		max = logits[v] > max ? logits[v] : max;
	for (int v = 0; v < vocab; v++)
		sum += exp((double)logits[v] - max);
	return (double)logits[t] - max - log(sum);
}

/* want[i] = log-probability of t[i] after p and t[0..i), from log-softmax
 * of the CPU engine's logits, decoded token by token; returns their sum. */
static double score_want(const ssm_model *m, const int32_t *p, size_t np, const int32_t *t,
			 size_t nt, double *want)
{
	int vocab = ssm_model_config(m)->vocab_size, slot = 0;
	ssm_backend *b = harness_backend_open(m, "cpu");
	float *logits = malloc((size_t)vocab * sizeof(float));
	ssm_prefill_args pa;
	double total = 0;

	memset(&pa, 0, sizeof(pa));
	pa.tokens = p;
	pa.n_tokens = np;
	pa.last_logits = logits;
	if (!logits || ssm_prefill(b, 0, &pa))
		abort();
	for (size_t i = 0; i < nt; i++) {
		want[i] = ref_logprob(logits, vocab, t[i]);
		total += want[i];
		if (ssm_decode(b, &slot, &t[i], 1, logits))
			abort();
	}
	free(logits);
	ssm_backend_close(b);
	return total;
}

/* The worst relative difference of a score reply's per-token values from
 * want (n of them); 1 when the reply does not hold n values. */
static double score_worst(const Ssmd__Reply *r, const double *want, size_t n)
{
	double worst = 0;

	if (r->code || !r->score || r->score->n_token_logprobs != n)
		return 1;
	for (size_t i = 0; i < n; i++) {
		double d = fabs(r->score->token_logprobs[i] - want[i]) / fmax(fabs(want[i]), 1e-3);
		worst = d > worst ? d : worst;
	}
	return worst;
}

/* score against log-softmax of the engine's own logits, decoded token by
 * token here; the source session and state are unchanged. */
static void test_score(sched *s, store *st, const ssm_model *m)
{
	int vocab = ssm_model_config(m)->vocab_size;
	int32_t p[12], t[20], out[6], ref[6];
	double want[20], total, worst;
	char *a = harness_open(s, NULL, 0, 0), *sid;
	Ssmd__Reply *r;
	size_t n;

	tokens_fill(p, 12, vocab, 31);
	tokens_fill(t, 20, vocab, 32);
	total = score_want(m, p, 12, t, 20, want);
	harness_append(s, a, p, 12);
	r = score(s, a, t, 20, NULL);
	CHECK(r->code == 0 && r->score && r->score->n_token_logprobs == 20 &&
	      r->score->unscored == 0 && r->score->n_tokens == 20,
	      "score of 20 tokens after a live session (code %u)", r->code);
	if (r->code == 0 && r->score->n_token_logprobs == 20) {
		worst = score_worst(r, want, 20);
		/* The daemon's logits come from a prefill, these from
		 * decode steps: same f32 math in another order, ~1e-6
		 * apart; 1e-5 relative covers it with room. */
		CHECK(worst <= 1e-5, "per-token log-probabilities equal log-softmax of the engine's logits (worst relative error %.3g, tolerance 1e-5)",
		      worst);
		CHECK(fabs(r->score->logprob - total) <= 1e-5 * fabs(total),
		      "total %.6f is the sum %.6f (1e-5 relative)", r->score->logprob, total);
	}
	harness_reply_free(r);
	/* The session is where it was: it generates what p alone generates. */
	CHECK_RC(harness_generate(s, a, 6, 0, 0, 0, out, &n), SSMD_OK);
	harness_reference_run(m, "cpu", p, 12, 6, 0, 0, ref);
	CHECK(n == 6 && memcmp(out, ref, sizeof(ref)) == 0,
	      "after score the session continues as if nothing was scored");

	/* From a stored state: the same numbers; from nothing: the first
	 * token is context only. */
	{
		char *b2 = harness_open(s, NULL, 0, 0);
		harness_append(s, b2, p, 12);
		sid = harness_snapshot(s, b2, NULL);
		r = score(s, sid, t, 20, NULL);
		CHECK(r->code == 0 && r->score && r->score->n_token_logprobs == 20 &&
		      fabs(r->score->logprob - total) <= 1e-5 * fabs(total),
		      "score of a stored state equals the live session's (code %u)", r->code);
		harness_reply_free(r);
		char *e = harness_open(s, NULL, 0, 0);
		r = score(s, e, t, 20, NULL);
		CHECK(r->code == 0 && r->score && r->score->unscored == 1 &&
		      r->score->n_token_logprobs == 19,
		      "score from an empty session leaves the first token unscored");
		{
			/* the others: each after t[0] and the tokens before it */
			double want1[19];

			score_want(m, t, 1, t + 1, 19, want1);
			CHECK(score_worst(r, want1, 19) <= 1e-5,
			      "score from an empty session: tokens 1..19 within 1e-5 of the "
			      "engine's (worst %.3g)", score_worst(r, want1, 19));
		}
		harness_reply_free(r);
		r = score(s, "no-such-session", t, 20, NULL);
		CHECK(r->code == SSMD_ENOENT, "score of an unknown source: ENOENT (%u)", r->code);
		harness_reply_free(r);
		int32_t badt[1] = {vocab};
		r = score(s, sid, badt, 1, NULL);
		CHECK(r->code == SSMD_EINVAL, "score of a token outside the vocabulary: EINVAL (%u)",
		      r->code);
		harness_reply_free(r);
		free(b2);
		free(e);
		free(sid);
	}
	(void)st;
	free(a);
}

/* With a small per-step budget, a short generate finishes while a long
 * append is still running. */
static void test_budget(const ssm_model *m, store *st)
{
	enum { LONG = 40000 };
	int vocab = ssm_model_config(m)->vocab_size;
	int32_t *big = malloc(LONG * sizeof(int32_t)), p[4] = {1, 2, 3, 4}, out[4];
	struct harness_box bl;
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__AppendRequest ap = SSMD__APPEND_REQUEST__INIT;
	Ssmd__Reply *r;
	cfg c;
	sched *s;
	size_t n;

	harness_box_init(&bl);
	cfg_init(&c);
	cfg_set(&c, "backend", "cpu");
	c.slots = 2;
	c.prefill_chunk = 64;
	c.step_tokens = 8;   /* the append advances <= 7 tokens per step */
	s = harness_start(&c, m, NULL, st, NULL);
	char *lng = harness_open(s, NULL, 0, 0), *shrt = harness_open(s, NULL, 0, 0);
	harness_append(s, shrt, p, 4);
	tokens_fill(big, LONG, vocab, 41);
	ap.session = lng;
	ap.tokens = big;
	ap.n_tokens = LONG;
	q.op_case = SSMD__REQUEST__OP_APPEND;
	q.append = &ap;
	if (harness_submit(s, &q, NULL, &bl))
		abort();
	/* The append needs > 5700 steps; the generate 4. */
	CHECK_RC(harness_generate(s, shrt, 4, 0, 0, 0, out, &n), SSMD_OK);
	CHECK(!harness_box_done(&bl), "a 4-token generate completes while a %d-token append is running",
	      LONG);
	r = harness_box_wait(&bl);
	CHECK(r->code == 0 && r->append && r->append->appended == LONG,
	      "the long append completes with every token (code %u)", r->code);
	harness_reply_free(r);
	{
		/* a score over several steps (20 tokens, 8 a step) gives what
		 * one step gives: tolerance as in test_score */
		int32_t sp[12], stk[20];
		double want[20];
		char *src = harness_open(s, NULL, 0, 0);

		tokens_fill(sp, 12, vocab, 31);
		tokens_fill(stk, 20, vocab, 32);
		score_want(m, sp, 12, stk, 20, want);
		harness_append(s, src, sp, 12);
		r = score(s, src, stk, 20, NULL);
		CHECK(score_worst(r, want, 20) <= 1e-5,
		      "a 20-token score over 8-token steps: per-token log-probabilities "
		      "within 1e-5 of the engine's (worst %.3g, code %u)",
		      score_worst(r, want, 20), r->code);
		harness_reply_free(r);
		free(src);
	}
	sched_free(s);
	cfg_fini(&c);
	free(big);
	free(lng);
	free(shrt);
}

/* Sessions survive a restart in the middle of a round-robin workload:
 * 200 sessions on 4 slots, 3 turns of 4 sampled tokens each, stopped after
 * half of the second round. */
static void test_restart(const ssm_model *m, const char *path)
{
	enum { NS = 200, TURNS = 3, PER = 4, PLEN = 6 };
	int vocab = ssm_model_config(m)->vocab_size;
	int32_t prompt[NS][PLEN], got[NS][TURNS * PER], ref[TURNS * PER];
	char *ids[NS], *gone;
	store *st;
	cfg c;
	sched *s;
	size_t n;
	int ok = 1;

	cfg_init(&c);
	cfg_set(&c, "backend", "cpu");
	c.slots = 4;
	CHECK_RC(store_open(path, NULL, &st), SSMD_OK);
	s = harness_start(&c, m, NULL, st, NULL);
	for (int i = 0; i < NS; i++) {
		tokens_fill(prompt[i], PLEN, vocab, 100 + i);
		ids[i] = harness_open(s, NULL, 1, 1000 + i);
		ok &= harness_append(s, ids[i], prompt[i], PLEN) == 0;
	}
	gone = harness_open(s, NULL, 0, 0);
	harness_close(s, gone);
	for (int t = 0; t < TURNS; t++)
		for (int i = 0; i < NS; i++) {
			if (t == 1 && i == NS / 2) {
				/* What SIGTERM does: stop (storing every session
				 * with unsaved progress), close the library, start
				 * again on it. */
				sched_free(s);
				store_close(st);
				CHECK_RC(store_open(path, NULL, &st), SSMD_OK);
				s = harness_start(&c, m, NULL, st, NULL);
			}
			ok &= harness_generate(s, ids[i], PER, 0.9f, 0, 0, got[i] + t * PER, &n) == 0 &&
			      n == PER;
		}
	CHECK(ok, "every request of the workload succeeds across the restart");
	ok = 1;
	for (int i = 0; i < NS; i++) {
		harness_reference_run(m, "cpu", prompt[i], PLEN, TURNS * PER, 0.9f, 1000 + i, ref);
		ok &= memcmp(got[i], ref, sizeof(ref)) == 0;
		if (memcmp(got[i], ref, sizeof(ref)) != 0)
			fprintf(stderr, "session %d differs from its direct run\n", i);
	}
	CHECK(ok, "all %d sessions: tokens across the restart equal a direct run with each one's seed",
	      NS);
	{
		int32_t one = 1;
		CHECK(harness_append(s, gone, &one, 1) == SSMD_ENOENT,
		      "a session closed before the restart stays closed");
	}
	sched_free(s);
	store_close(st);
	cfg_fini(&c);
	for (int i = 0; i < NS; i++)
		free(ids[i]);
	free(gone);
}

/* append texts: one checkpoint after each message; score of text. */
static void test_texts(const char *shared)
{
	const char *texts[3] = {"Chapter one. It was a dark night.",
				" Chapter two: the storm.", " The end."};
	harness_text t;
	tok_tokenizer *tok;
	sched *s;
	Ssmd__Reply *r;
	uint64_t ends[3], at = 0;

	if (!harness_text_ready(harness_text_start(&t, shared, tmp, "cpu", NULL)))
		return;
	s = t.s;
	tok = t.tok;
	for (int i = 0; i < 3; i++) {
		int32_t *ids;
		size_t n;
		tok_encode(tok, texts[i], strlen(texts[i]), &ids, &n);
		at += n;
		ends[i] = at;
		free(ids);
	}
	char *x = harness_open(s, NULL, 0, 0);
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__AppendRequest ap = SSMD__APPEND_REQUEST__INIT;
	ap.session = x;
	ap.texts = (char **)texts;
	ap.n_texts = 3;
	q.op_case = SSMD__REQUEST__OP_APPEND;
	q.append = &ap;
	r = harness_call(s, &q);
	CHECK(r->code == 0 && r->append && r->append->n_checkpoints == 3 &&
	      r->append->n_checkpoint_tokens == 3 &&
	      r->append->checkpoint_tokens[0] == ends[0] &&
	      r->append->checkpoint_tokens[1] == ends[1] &&
	      r->append->checkpoint_tokens[2] == ends[2] &&
	      r->append->appended == ends[2],
	      "append of 3 texts checkpoints after each (at %llu, %llu, %llu tokens)",
	      (unsigned long long)ends[0], (unsigned long long)ends[1],
	      (unsigned long long)ends[2]);
	harness_reply_free(r);
	r = score(s, x, NULL, 0, " Chapter three.");
	CHECK(r->code == 0 && r->score && r->score->n_tokens > 0 &&
	      r->score->n_token_logprobs == r->score->n_tokens && r->score->logprob < 0,
	      "score of text after a session: one negative log-probability per token (code %u)",
	      r->code);
	harness_reply_free(r);
	ap.text = "both";
	r = harness_call(s, &q);
	CHECK(r->code == SSMD_EINVAL, "append of text and texts together: EINVAL (%u)", r->code);
	harness_reply_free(r);
	free(x);
	harness_text_stop(&t);
}

int main(void)
{
	const char *fixtures = getenv("SSMD_SHARED_FIXTURES");
	char dir[1024], path[1200];
	ssm_model *m;
	store *st;
	cfg c;
	sched *s;

	if (!fixtures) {
		SKIP("SSMD_SHARED_FIXTURES is not set");
		return check_summary("service");
	}
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(dir, sizeof(dir), "%s/tiny-mamba", fixtures);
	if (ssm_model_load(dir, &m)) {
		SKIP("cannot load %s: %s", dir, ssmd_errmsg());
		return check_summary("service");
	}
	snprintf(path, sizeof(path), "%s/lib.db", tmp);
	CHECK_RC(store_open(path, NULL, &st), SSMD_OK);
	cfg_init(&c);
	cfg_set(&c, "backend", "cpu");
	c.slots = 2;
	c.prefill_chunk = 16; /* checkpoints fall inside and across chunks: */
	c.step_tokens = 16;   /* a lone session's chunk is the whole step */
	s = harness_start(&c, m, NULL, st, NULL);
	test_checkpoints(s, st, ssm_model_config(m)->vocab_size);
	test_merge(s, st, m);
	test_score(s, st, m);
	sched_free(s);
	test_budget(m, st);
	store_close(st);
	cfg_fini(&c);
	snprintf(path, sizeof(path), "%s/restart.db", tmp);
	test_restart(m, path);
	test_texts(fixtures);
	ssm_model_free(m);
	test_dir_remove(tmp);
	return check_summary("service");
}
