/*
 * test_cuda.c — conformance of the CUDA backend (issue 5). GPU only: exits 77
 * when the CUDA backend is not built or no GPU is present.
 *
 * References, none written by this project's CUDA code:
 *   - the Hugging Face fixtures (float64 forward of transformers'
 *     MambaForCausalLM): $SSMD_SHARED_FIXTURES/tiny-mamba and
 *     $SSMD_TEST_FIXTURES/<each dir>;
 *   - the CPU backend (the float32 reference of this engine).
 * Errors are normwise: rel(a, b) = ||a - b||_2 / ||b||_2.
 *
 * Optional: $SSMD_CUDA_BIG_MODEL names a model directory of mamba-130m shape
 * (random weights from ssm-mkmodel) for the BF16-vs-F32 256-step check;
 * $SSMD_CUDA_QUICK shortens the fixtures' greedy runs to 16 steps;
 * $SSMD_CUDA_F32_ONLY replaces BF16 and F16 weights by F32 (see low_dtype).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "check.h"
#include "testutil.h"
#include "model_edit.h"
#include "ssm.h"
#include "ssm_cuda.h"

/* F32 weights against float64 references: float32 arithmetic over a few
 * layers lands near 1e-6; 1e-4 leaves room for exp/log1p approximations. */
#define TOL_REF 1e-4
/* F32 GPU against the F32 CPU backend: same math, different summation
 * order and __expf: a few float32 ulps per operation. */
#define TOL_CPU 2e-5
/* BF16 weights (8-bit mantissa, 2^-9 = 2e-3 relative per rounded operand)
 * against F32, through up to 24 layers of rounded GEMM inputs. */
#define TOL_BF16 3e-2
/* Batched against alone, same weights: only GEMM reduction order differs
 * (cuBLAS for 5 to 64 rows and for F32 weights, the multi-row persistent
 * kernels for 2-4 rows of 16-bit weights, the batch-1 kernel alone). With
 * BF16 weights every GEMM input is rounded to bf16 (2^-9 relative), so an
 * order difference flips roundings and the two runs differ at the bf16
 * level, as BF16 differs from F32 (measured 1.6e-3): a third of TOL_BF16. */
#define TOL_BATCH 1e-5
#define TOL_BATCH_BF16 1e-2

static double rel(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		double d = (double)a[i] - b[i];
		if (isnan(a[i]))
			return INFINITY;
		num += d * d;
		den += (double)b[i] * b[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

typedef struct fixture {
	char dir[1024];
	int32_t tokens[256];
	size_t n_tokens;
	float *logits;   /* (n_tokens, vocab) */
	float *ssm;      /* (layer, d_inner, d_state) */
	float *conv;     /* (layer, d_inner, d_conv), newest last */
} fixture;

static int fixture_load(fixture *fx, const char *dir)
{
	char path[1200];
	size_t len;
	char *js;
	cJSON *root, *t;

	memset(fx, 0, sizeof(*fx));
	snprintf(fx->dir, sizeof(fx->dir), "%s", dir);
	snprintf(path, sizeof(path), "%s/reference.json", dir);
	if (!(js = test_file_read(path, &len)))
		return -1;
	root = cJSON_Parse(js);
	free(js);
	if (!root)
		return -1;
	cJSON_ArrayForEach(t, cJSON_GetObjectItem(root, "tokens"))
		if (fx->n_tokens < 256)
			fx->tokens[fx->n_tokens++] = (int32_t)t->valuedouble;
	cJSON_Delete(root);
	snprintf(path, sizeof(path), "%s/ref_logits.f32", dir);
	fx->logits = test_file_read(path, &len);
	snprintf(path, sizeof(path), "%s/ref_ssm_state.f32", dir);
	fx->ssm = test_file_read(path, &len);
	snprintf(path, sizeof(path), "%s/ref_conv_state.f32", dir);
	fx->conv = test_file_read(path, &len);
	return fx->logits && fx->ssm && fx->conv && fx->n_tokens ? 0 : -1;
}

static void fixture_free(fixture *fx)
{
	free(fx->logits);
	free(fx->ssm);
	free(fx->conv);
}

static int open_backend(const ssm_model *m, ssm_backend_kind kind, ssm_dtype dt,
			int n_slots, ssm_backend **out)
{
	ssm_backend_opts o;

	ssm_backend_opts_init(&o);
	o.kind = kind;
	o.n_slots = n_slots;
	o.weight_dtype = dt;
	o.n_threads = 2;
	return ssm_backend_open(m, &o, out);
}

/* open_backend (CUDA) with the tuning variable var set to val for the open
 * alone (no change where var is NULL); var is unset after it. */
static int open_cuda_with(const ssm_model *m, ssm_dtype dt, int n_slots, const char *var,
			  const char *val, ssm_backend **out)
{
	int rc;

	if (var)
		setenv(var, val, 1);
	rc = open_backend(m, SSM_BACKEND_CUDA, dt, n_slots, out);
	if (var)
		unsetenv(var);
	return rc;
}

static int argmax(const float *v, int n)
{
	int i, b = 0;

	for (i = 1; i < n; i++)
		if (v[i] > v[b])
			b = i;
	return b;
}

/* Random tokens in [0, vocab) from a fixed LCG (the test's own inputs). */
static void fill_tokens(int32_t *t, size_t n, int vocab, uint64_t *seed)
{
	size_t i;

	for (i = 0; i < n; i++) {
		*seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
		t[i] = (int32_t)((*seed >> 33) % (uint64_t)vocab);
	}
}

/* Relative error of every part of two states, worst of the four. */
static double state_rel(const ssm_state *a, const ssm_state *b)
{
	size_t ne = (size_t)a->n_layer * a->d_inner;
	double e = rel(a->ssm, b->ssm, ne * a->d_state), f;

	if ((f = rel(a->conv, b->conv, ne * (a->d_conv - 1))) > e)
		e = f;
	if ((f = rel(a->hidden, b->hidden, a->d_model)) > e)
		e = f;
	if ((f = rel(a->dt_sum, b->dt_sum, ne)) > e)
		e = f;
	return e;
}

/* ------------------------------------------------ HF fixture conformance -- */

/* Greedy steps of the BF16-vs-F32 comparisons: 256, or 16 in quick mode
 * (SSMD_CUDA_QUICK, used under compute-sanitizer where each launch is slow). */
static int steps = 256;
/* Log-probabilities formed on the device (lp_next / logprobs) against
 * ssm_logprob() on the host of the same backend's prefill logits lg: only
 * the order of the sum over the vocabulary differs, then one f32 rounding of
 * a result of magnitude ~1-20, so 1e-5 absolute. Prefills slot `slot` of b
 * and resets it afterwards; position 1 has no next token (0 expected). With
 * all set, the same prefill also returns every position's logits (one pass
 * over the logits rows serves both), and the log-probabilities are checked
 * against those. */
#define TOL_LP 1e-5
static void check_logprobs(ssm_backend *b, int slot, const int32_t *tok, size_t n,
			   const float *lg, size_t V, const char *dir, int all)
{
	int32_t *nx = malloc(n * sizeof *nx);
	float *lp = malloc(n * sizeof *lp);
	float *own = all ? malloc(n * V * sizeof *own) : NULL;
	ssm_prefill_args pl = {0};
	double worst = 0;

	if (!nx || !lp || (all && !own)) {
		CHECK(0, "out of memory");
		goto out;
	}
	for (size_t t = 0; t < n; t++)
		nx[t] = t + 1 < n && t != 1 ? tok[t + 1] : -1;
	pl.tokens = tok;
	pl.n_tokens = n;
	pl.lp_next = nx;
	pl.logprobs = lp;
	pl.all_logits = own;
	CHECK_RC(ssm_prefill(b, slot, &pl), SSMD_OK);
	if (all) {
		/* the same kernels on the same input as lg's prefill: the same
		 * logits up to f32 rounding at most */
		const double e = rel(own, lg, n * V);
		CHECK(e <= 1e-6, "%s: logits with log-probabilities rel %.3g > 1e-6", dir, e);
		lg = own;
	}
	for (size_t t = 0; t < n; t++) {
		const double want = nx[t] < 0 ? 0.0 : ssm_logprob(lg + t * V, (int)V, nx[t]);
		if (fabs(lp[t] - want) > worst || isnan(lp[t]))
			worst = isnan(lp[t]) ? INFINITY : fabs(lp[t] - want);
	}
	CHECK(worst <= TOL_LP, "%s: device log-probabilities%s vs ssm_logprob: %.3g > %g", dir,
	      all ? " (with all logits)" : "", worst, TOL_LP);
	CHECK_RC(ssm_slot_reset(b, slot), SSMD_OK);
out:
	free(nx);
	free(lp);
	free(own);
}

/* The reduced-precision weight dtype under test: BF16, or F32 when
 * SSMD_CUDA_F32_ONLY is set (racecheck: compute-sanitizer's racecheck fails
 * internally on cuBLAS's Hopper bf16 GEMM kernels, so that run keeps every
 * GEMM in f32 while still running every kernel of this backend). */
static ssm_dtype low_dtype = SSM_DTYPE_BF16;
/* F16 weights, the other 16-bit dtype (F32 with SSMD_CUDA_F32_ONLY too). */
static ssm_dtype half_dtype = SSM_DTYPE_F16;

static void test_fixture(const char *dir)
{
	fixture fx;
	ssm_model *m = NULL;
	ssm_backend *gpu = NULL, *cpu = NULL, *bf = NULL;
	ssm_state *st = NULL;
	const ssm_config *c;
	float *logits = NULL, *cpu_logits = NULL, *bf_logits = NULL, *conv = NULL;
	size_t V, t, ne, j;
	int rc, i, k;
	double e, worst_bf = 0;
	int32_t tok_f32[256], tok_bf[256];

	if (fixture_load(&fx, dir)) {
		SKIP("%s: no reference files", dir);
		goto out;
	}
	CHECK_RC(rc = ssm_model_load(dir, &m), SSMD_OK);
	if (rc)
		goto out;
	c = ssm_model_config(m);
	V = c->vocab_size;
	CHECK_RC(rc = open_backend(m, SSM_BACKEND_CUDA, SSM_DTYPE_F32, 2, &gpu), SSMD_OK);
	if (rc)
		goto out;
	CHECK_RC(rc = open_backend(m, SSM_BACKEND_CPU, SSM_DTYPE_F32, 1, &cpu), SSMD_OK);
	if (rc)
		goto out;
	CHECK_RC(rc = open_backend(m, SSM_BACKEND_CUDA, low_dtype, 1, &bf), SSMD_OK);
	if (rc)
		goto out;
	logits = malloc(fx.n_tokens * V * sizeof(float));
	cpu_logits = malloc(fx.n_tokens * V * sizeof(float));
	bf_logits = malloc(fx.n_tokens * V * sizeof(float));
	ne = (size_t)c->n_layer * c->d_inner;
	conv = malloc(ne * (c->d_conv - 1) * sizeof(float));
	if (!logits || !cpu_logits || !bf_logits || !conv ||
	    ssm_model_state_alloc(m, &st)) {
		CHECK(0, "out of memory");
		goto out;
	}

	/* one prefill, logits at every position */
	ssm_prefill_args pa = {0};
	pa.tokens = fx.tokens;
	pa.n_tokens = fx.n_tokens;
	pa.all_logits = logits;
	CHECK_RC(ssm_prefill(gpu, 0, &pa), SSMD_OK);
	e = rel(logits, fx.logits, fx.n_tokens * V);
	CHECK(e <= TOL_REF, "%s: prefill logits rel %.3g > %g", dir, e, TOL_REF);
	CHECK_RC(ssm_slot_get(gpu, 0, st), SSMD_OK);
	e = rel(st->ssm, fx.ssm, ne * c->d_state);
	CHECK(e <= TOL_REF, "%s: ssm state rel %.3g > %g", dir, e, TOL_REF);
	/* HF keeps d_conv columns, newest last; the canonical state the newest
	 * d_conv-1, oldest first */
	for (j = 0; j < ne; j++)
		for (k = 0; k < c->d_conv - 1; k++)
			conv[j * (c->d_conv - 1) + k] = fx.conv[j * c->d_conv + k + 1];
	e = rel(st->conv, conv, ne * (c->d_conv - 1));
	CHECK(e <= TOL_REF, "%s: conv state rel %.3g > %g", dir, e, TOL_REF);
	CHECK(st->n_tokens == fx.n_tokens, "%s: n_tokens %llu", dir,
	      (unsigned long long)st->n_tokens);

	/* the CPU reference backend, same tokens */
	pa.all_logits = cpu_logits;
	CHECK_RC(ssm_prefill(cpu, 0, &pa), SSMD_OK);
	e = rel(logits, cpu_logits, fx.n_tokens * V);
	CHECK(e <= TOL_CPU, "%s: GPU vs CPU prefill logits rel %.3g > %g", dir, e, TOL_CPU);
	check_logprobs(gpu, 1, fx.tokens, fx.n_tokens, logits, V, dir, 0);
	check_logprobs(gpu, 1, fx.tokens, fx.n_tokens, logits, V, dir, 1);

	/* token by token through decode on slot 1 */
	for (t = 0; t < fx.n_tokens; t++) {
		int s1 = 1;
		CHECK_RC(ssm_decode(gpu, &s1, &fx.tokens[t], 1, logits + t * V), SSMD_OK);
	}
	e = rel(logits, fx.logits, fx.n_tokens * V);
	CHECK(e <= TOL_REF, "%s: decode logits rel %.3g > %g", dir, e, TOL_REF);

	/* BF16 weights: logits near F32, and greedy continuations agree */
	pa.all_logits = bf_logits;
	CHECK_RC(ssm_prefill(bf, 0, &pa), SSMD_OK);
	e = rel(bf_logits, fx.logits, fx.n_tokens * V);
	CHECK(e <= TOL_BF16, "%s: BF16 prefill logits rel %.3g > %g", dir, e, TOL_BF16);
	memcpy(logits, cpu_logits + (fx.n_tokens - 1) * V, V * sizeof(float));
	memcpy(bf_logits, bf_logits + (fx.n_tokens - 1) * V, V * sizeof(float));
	for (i = 0; i < steps; i++) {
		int s0 = 0;
		tok_f32[i] = argmax(logits, V);
		tok_bf[i] = argmax(bf_logits, V);
		CHECK_RC(ssm_decode(cpu, &s0, &tok_f32[i], 1, logits), SSMD_OK);
		CHECK_RC(ssm_decode(bf, &s0, &tok_f32[i], 1, bf_logits), SSMD_OK);
		e = rel(bf_logits, logits, V);
		if (e > worst_bf)
			worst_bf = e;
	}
	for (i = 0; i < steps && tok_f32[i] == tok_bf[i]; i++)
		;
	CHECK(i == steps, "%s: BF16 greedy token %d differs (%d vs %d)", dir, i,
	      tok_bf[i < steps ? i : 0], tok_f32[i < steps ? i : 0]);
	CHECK(worst_bf <= TOL_BF16, "%s: BF16 decode logits rel %.3g > %g", dir,
	      worst_bf, TOL_BF16);
	printf("  %-40s F32 ok, BF16 worst decode rel %.2e\n", dir, worst_bf);
out:
	ssm_state_free(st);
	free(logits);
	free(cpu_logits);
	free(bf_logits);
	free(conv);
	ssm_backend_close(bf);
	ssm_backend_close(cpu);
	ssm_backend_close(gpu);
	ssm_model_free(m);
	fixture_free(&fx);
}

/* ------------------------------------------------- states across backends -- */

/* Prefill 200 tokens on `from`, move the state to `to` through the canonical
 * form, and continue both with the same 16 tokens: the logits must agree. */
static void test_cross(const ssm_model *m, ssm_backend *from, ssm_backend *to,
		       const char *what)
{
	const int V = ssm_model_config(m)->vocab_size;
	int32_t toks[216];
	uint64_t seed = 7;
	float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
	ssm_state *st = NULL;
	ssm_prefill_args pa = {0};
	double worst = 0, e;
	int i, s0 = 0;

	if (!la || !lb || ssm_model_state_alloc(m, &st)) {
		CHECK(0, "out of memory");
		goto out;
	}
	fill_tokens(toks, 216, V, &seed);
	pa.tokens = toks;
	pa.n_tokens = 200; /* several scan segments of one chunk */
	CHECK_RC(ssm_slot_reset(from, 0), SSMD_OK);
	CHECK_RC(ssm_prefill(from, 0, &pa), SSMD_OK);
	CHECK_RC(ssm_slot_get(from, 0, st), SSMD_OK);
	CHECK_RC(ssm_slot_set(to, 0, st), SSMD_OK);
	CHECK_RC(ssm_slot_logits(from, 0, la), SSMD_OK);
	CHECK_RC(ssm_slot_logits(to, 0, lb), SSMD_OK);
	worst = rel(lb, la, V);
	for (i = 200; i < 216; i++) {
		CHECK_RC(ssm_decode(from, &s0, &toks[i], 1, la), SSMD_OK);
		CHECK_RC(ssm_decode(to, &s0, &toks[i], 1, lb), SSMD_OK);
		if ((e = rel(lb, la, V)) > worst)
			worst = e;
		CHECK(argmax(la, V) == argmax(lb, V), "%s: greedy token differs at %d", what, i);
	}
	CHECK(worst <= TOL_CPU, "%s: continued logits rel %.3g > %g", what, worst, TOL_CPU);
	printf("  %-40s continued 16 tokens, worst rel %.2e\n", what, worst);
out:
	ssm_state_free(st);
	free(la);
	free(lb);
}

/* A prompt prefilled in pieces of 1, 2, 3, 1, 5 and 40 tokens, each piece a
 * chunk of its own, ends in the state the CPU reaches in one prefill: the
 * pieces shorter than the conv window (d_conv - 1) carry part of the old
 * window into the new one. */
static void test_pieces(const ssm_model *m, ssm_backend *gpu, ssm_backend *cpu)
{
	static const size_t piece[] = {1, 2, 3, 1, 5, 40};
	enum { NP = sizeof(piece) / sizeof(piece[0]), NT = 52 /* their sum */ };
	const int V = ssm_model_config(m)->vocab_size;
	int32_t toks[NT];
	uint64_t seed = 11;
	ssm_state *a = NULL, *b = NULL;
	ssm_prefill_args pa = {0};
	size_t i, off = 0;
	double e;

	if (ssm_model_state_alloc(m, &a) || ssm_model_state_alloc(m, &b)) {
		CHECK(0, "out of memory");
		goto out;
	}
	fill_tokens(toks, NT, V, &seed);
	CHECK_RC(ssm_slot_reset(gpu, 0), SSMD_OK);
	for (i = 0; i < NP && off + piece[i] <= NT; i++) {
		pa.tokens = toks + off;
		pa.n_tokens = piece[i];
		CHECK_RC(ssm_prefill(gpu, 0, &pa), SSMD_OK);
		off += piece[i];
	}
	CHECK(off == NT, "prefill in pieces: %zu tokens, the pieces sum to more than %d",
	      off, (int)NT);
	CHECK_RC(ssm_slot_reset(cpu, 0), SSMD_OK);
	pa.tokens = toks;
	pa.n_tokens = off;
	CHECK_RC(ssm_prefill(cpu, 0, &pa), SSMD_OK);
	CHECK_RC(ssm_slot_get(gpu, 0, a), SSMD_OK);
	CHECK_RC(ssm_slot_get(cpu, 0, b), SSMD_OK);
	e = state_rel(a, b);
	CHECK(e <= TOL_CPU, "prefill in pieces: state rel %.3g > %g", e, TOL_CPU);
	CHECK(a->n_tokens == off, "prefill in pieces: n_tokens %llu, want %zu",
	      (unsigned long long)a->n_tokens, off);
	printf("  %zu tokens prefilled in %d pieces vs CPU in one: state rel %.2e\n", off,
	       (int)NP, e);
out:
	ssm_state_free(a);
	ssm_state_free(b);
}

/* ----------------------------------------------------- batched decoding -- */

/* 64 slots with different histories decode one batch of n (in a shuffled
 * order) and, on a twin backend, the same rows: one at a time, or, with
 * twin_var, as the same batch on a twin opened with twin_var=twin_val. Same
 * logits, states and tokens within tol. mma (or NULL): the batch's step
 * form on each backend (ssm_cuda_step_mma). */
static void batch_against(const ssm_model *m, ssm_dtype dt, int n, const char *twin_var,
			  const char *twin_val, double tol, const char *what, int mma[2])
{
	const ssm_config *c = ssm_model_config(m);
	const int V = c->vocab_size;
	ssm_backend *a = NULL, *b = NULL;
	ssm_state *sa = NULL, *sb = NULL;
	int32_t toks[128], step[64];
	int slots[64], i, j, step_no;
	float *la = malloc((size_t)64 * V * sizeof(float));
	float *lb = malloc((size_t)64 * V * sizeof(float));
	uint64_t seed = 99;
	double worst = 0, worst_state = 0, e;

	if (!la || !lb || ssm_model_state_alloc(m, &sa) || ssm_model_state_alloc(m, &sb)) {
		CHECK(0, "out of memory");
		goto out;
	}
	if (open_backend(m, SSM_BACKEND_CUDA, dt, 64, &a) ||
	    open_cuda_with(m, dt, 64, twin_var, twin_val, &b)) {
		CHECK(0, "open: %s", ssmd_errmsg());
		goto out;
	}
	if (mma) {
		/* no rows, or no result pointer: refused, nothing written */
		CHECK_RC(ssm_cuda_step_mma(a, 0, &mma[0]), SSMD_EINVAL);
		CHECK_RC(ssm_cuda_step_mma(a, n, NULL), SSMD_EINVAL);
		CHECK(mma[0] == -1, "step form: a refused query wrote %d", mma[0]);
		CHECK_RC(ssm_cuda_step_mma(a, n, &mma[0]), SSMD_OK);
		CHECK_RC(ssm_cuda_step_mma(b, n, &mma[1]), SSMD_OK);
	}
	for (i = 0; i < 64; i++) {
		ssm_prefill_args pa = {0};
		fill_tokens(toks, 128, V, &seed);
		pa.tokens = toks;
		pa.n_tokens = 1 + (size_t)(i * 37) % 100;
		CHECK_RC(ssm_prefill(a, i, &pa), SSMD_OK);
		CHECK_RC(ssm_prefill(b, i, &pa), SSMD_OK);
		slots[i] = (i * 29 + 5) % 64; /* a permutation of 0..63 */
	}
	fill_tokens(step, 64, V, &seed);
	for (step_no = 0; step_no < 4; step_no++) {
		CHECK_RC(ssm_decode(a, slots, step, n, la), SSMD_OK);
		if (twin_var)
			CHECK_RC(ssm_decode(b, slots, step, n, lb), SSMD_OK);
		for (i = 0; i < n; i++) {
			const float *lbi = twin_var ? lb + (size_t)i * V : lb;

			if (!twin_var)
				CHECK_RC(ssm_decode(b, &slots[i], &step[i], 1, lb), SSMD_OK);
			if ((e = rel(la + (size_t)i * V, lbi, V)) > worst)
				worst = e;
			j = argmax(lbi, V);
			CHECK(argmax(la + (size_t)i * V, V) == j,
			      "batch %d: slot %d greedy token differs", n, slots[i]);
			step[i] = j;
		}
	}
	for (i = 0; i < 64; i++) {
		CHECK_RC(ssm_slot_get(a, i, sa), SSMD_OK);
		CHECK_RC(ssm_slot_get(b, i, sb), SSMD_OK);
		if ((e = state_rel(sa, sb)) > worst_state)
			worst_state = e;
		CHECK(sa->n_tokens == sb->n_tokens, "batch %d: slot %d n_tokens", n, i);
	}
	CHECK(worst <= tol, "batch %d: logits rel %.3g > %g", n, worst, tol);
	CHECK(worst_state <= tol, "batch %d: state rel %.3g > %g", n, worst_state, tol);
	printf("  batch %2d (%s) vs %s: logits rel %.2e, states rel %.2e\n", n,
	       dt == SSM_DTYPE_F32 ? "f32" : dt == SSM_DTYPE_F16 ? "f16" : "bf16", what,
	       worst, worst_state);
out:
	ssm_state_free(sa);
	ssm_state_free(sb);
	ssm_backend_close(a);
	ssm_backend_close(b);
	free(la);
	free(lb);
}

static void test_batch(const ssm_model *m, ssm_dtype dt, int n)
{
	batch_against(m, dt, n, NULL, NULL, dt == SSM_DTYPE_F32 ? TOL_BATCH : TOL_BATCH_BF16,
		      "alone", NULL);
}

/* The batched step with dt_proj on the tensor cores (ssmk_ssm_step_mma:
 * bf16, 16 states, dt_rank a multiple of 16, from 8 rows) against the
 * lanes' f32 dot (SSMD_CUDA_STEP_MMA=0), both batched, so only dt's sum
 * differs: its order, and dt_low seen as bf16 hi + lo (to ~2^-17). A
 * last-bit change in a state can move a bf16 y by 2^-8 of itself, so the
 * check is TOL_BATCH_BF16 with greedy tokens identical; each backend also
 * reports its step form (1 and 0 in bf16), so the case cannot pass on the
 * old step alone. */
static void test_step_mma(const ssm_model *m, ssm_dtype dt, int n)
{
	const ssm_config *c = ssm_model_config(m);
	/* the shapes ssm_cuda.h says it takes, in a bucket of 8 rows or more */
	const int want = dt == SSM_DTYPE_BF16 && c->d_state == 16 && c->dt_rank % 16 == 0 &&
			 c->dt_rank <= 448 && c->d_inner % 32 == 0 && c->d_model % 4 == 0 &&
			 n > 4;
	int mma[2] = {-1, -1};

	batch_against(m, dt, n, "SSMD_CUDA_STEP_MMA", "0", TOL_BATCH_BF16,
		      "the lanes' dt (batched)", mma);
	CHECK(mma[0] == want && mma[1] == 0,
	      "%d rows: step on the tensor cores %d / %d (default / SSMD_CUDA_STEP_MMA=0), "
	      "want %d / 0", n, mma[0], mma[1], want);
}

/* Whether form f (tile, slices, clusters) is one ssmk_gemm_rows can run for
 * an (N, K) product in at most most_s slices: a tile of 32, 64 or 128
 * outputs dividing N, slices dividing K, at most as many clusters as
 * tiles. */
static int gemm_form_ok(const int f[3], int N, int K, int most_s)
{
	return (f[0] == 32 || f[0] == 64 || f[0] == 128) && N % f[0] == 0 && f[1] >= 1 &&
	       f[1] <= most_s && K % f[1] == 0 && f[2] >= 1 && f[2] <= N / f[0];
}

/* The batched decode's in_proj and out_proj by the backend's own GEMM
 * (ssmk_gemm_rows: 16-bit weights, d_model and d_inner multiples of 64,
 * buckets of 8 and 16 rows) against cuBLAS (SSMD_CUDA_GEMM_ROWS=0), both
 * batched: the same 16-bit products, summed in f32 in another order (a
 * cluster's K slices added in rank order). A last-bit change in a sum can
 * move a 16-bit activation by 2^-8 of itself, so the check is
 * TOL_BATCH_BF16 with greedy tokens identical.
 *   - The forms each backend reports: by default both products in at most
 *     6 slices, or cuBLAS for both (required up to d_model 2048, the 130m
 *     and 1.4b shapes, whose best forms take at most 6; 2.8b's take 8 to
 *     16, slower than cuBLAS); zeros with SSMD_CUDA_GEMM_ROWS=0.
 *   - The comparison runs with the cap lifted (SSMD_CUDA_GEMM_SLICES=16),
 *     whose forms must be the kernel's for every eligible shape, so the case
 *     cannot pass on cuBLAS alone and the forms of many slices stay
 *     correct for whoever retunes them. */
static void test_gemm_rows(const ssm_model *m, ssm_dtype dt, int n)
{
	const ssm_config *c = ssm_model_config(m);
	const int D = c->d_model, E = c->d_inner;
	/* a bucket of 8 or 16 rows */
	const int want = dt != SSM_DTYPE_F32 && D % 64 == 0 && E % 64 == 0 && n > 4 && n <= 16;
	/* in_proj (2 E, D), out_proj (D, E) */
	const int N[2] = {2 * E, D}, K[2] = {D, E};
	ssm_backend *a = NULL, *b = NULL, *w = NULL;
	int fa[6] = {-1, -1, -1, -1, -1, -1}, fb[6] = {-1, -1, -1, -1, -1, -1}, p;
	int fw[6] = {-1, -1, -1, -1, -1, -1};

	if (open_backend(m, SSM_BACKEND_CUDA, dt, 64, &a) ||
	    open_cuda_with(m, dt, 64, "SSMD_CUDA_GEMM_ROWS", "0", &b) ||
	    open_cuda_with(m, dt, 64, "SSMD_CUDA_GEMM_SLICES", "16", &w)) {
		CHECK(0, "open: %s", ssmd_errmsg());
		goto out;
	}
	/* no rows, or no result array: refused, nothing written */
	CHECK_RC(ssm_cuda_gemm_rows(a, 0, fa), SSMD_EINVAL);
	CHECK_RC(ssm_cuda_gemm_rows(a, n, NULL), SSMD_EINVAL);
	CHECK(fa[0] == -1, "GEMM form: a refused query wrote %d", fa[0]);
	CHECK_RC(ssm_cuda_gemm_rows(a, n, fa), SSMD_OK);
	CHECK_RC(ssm_cuda_gemm_rows(b, n, fb), SSMD_OK);
	CHECK_RC(ssm_cuda_gemm_rows(w, n, fw), SSMD_OK);
	{
		const int own = want && gemm_form_ok(fa, N[0], K[0], 6) &&
				gemm_form_ok(fa + 3, N[1], K[1], 6);
		const int none = !fa[0] && !fa[1] && !fa[2] && !fa[3] && !fa[4] && !fa[5];

		CHECK(want && D <= 2048 ? own : want ? own || none : none,
		      "%d rows (d_model %d): default forms %d x %d x %d, %d x %d x %d (want %s)", n,
		      D, fa[0], fa[1], fa[2], fa[3], fa[4], fa[5],
		      !want ? "cuBLAS" : D <= 2048 ? "the kernel's, <= 6 slices"
						   : "the kernel's in <= 6 slices or cuBLAS, both");
	}
	for (p = 0; p < 2; p++) {
		const char *what = p ? "out_proj" : "in_proj";

		CHECK(want ? gemm_form_ok(fw + 3 * p, N[p], K[p], 16)
			   : !fw[3 * p] && !fw[3 * p + 1] && !fw[3 * p + 2],
		      "%d rows: %s form %d x %d x %d with SSMD_CUDA_GEMM_SLICES=16 (want %s)", n,
		      what, fw[3 * p], fw[3 * p + 1], fw[3 * p + 2], want ? "the kernel's" : "cuBLAS");
		CHECK(!fb[3 * p] && !fb[3 * p + 1] && !fb[3 * p + 2],
		      "%d rows: %s form %d x %d x %d with SSMD_CUDA_GEMM_ROWS=0", n, what, fb[3 * p],
		      fb[3 * p + 1], fb[3 * p + 2]);
	}
	printf("  GEMM rows (%d rows, d_model %d, d_inner %d), tile x slices x clusters: in_proj "
	       "%d x %d x %d, out_proj %d x %d x %d (uncapped %d x %d x %d, %d x %d x %d)\n",
	       n, D, E, fa[0], fa[1], fa[2], fa[3], fa[4], fa[5], fw[0], fw[1], fw[2], fw[3], fw[4],
	       fw[5]);
out:
	ssm_backend_close(a);
	ssm_backend_close(b);
	ssm_backend_close(w);
	setenv("SSMD_CUDA_GEMM_SLICES", "16", 1);
	batch_against(m, dt, n, "SSMD_CUDA_GEMM_ROWS", "0", TOL_BATCH_BF16,
		      "cuBLAS's in_proj and out_proj (batched)", NULL);
	unsetenv("SSMD_CUDA_GEMM_SLICES");
}

/* The batched decode's in_proj and out_proj on the warpgroup tensor cores
 * (ssmk_gemm_wg: 16-bit weights, d_model and d_inner multiples of 64,
 * buckets of 32 and 64 rows) against cuBLAS (SSMD_CUDA_GEMM_WG=0), both
 * batched: the same 16-bit products summed in f32. On the H200 the two came
 * out bit for bit equal (cuBLAS adds the same 16-column steps in the same
 * order); an order of its own would move a 16-bit activation by up to
 * 2^-8 of itself, so the check is TOL_BATCH_BF16 with greedy tokens
 * identical (as for test_gemm_rows). Each backend reports its forms: by
 * default the kernel's (a tile of 32, 64 or 128 outputs dividing N,
 * in_proj in one K slice, out_proj in one or two, each a multiple of 64
 * columns) where the shape and the bucket take it, else zeros; zeros with
 * SSMD_CUDA_GEMM_WG=0, so the case cannot pass on cuBLAS alone. */
static void test_gemm_wg(const ssm_model *m, ssm_dtype dt, int n)
{
	const ssm_config *c = ssm_model_config(m);
	const int D = c->d_model, E = c->d_inner;
	const int want = dt != SSM_DTYPE_F32 && D % 64 == 0 && E % 64 == 0 && n > 16 && n <= 64;
	/* in_proj (2 E, D), out_proj (D, E) */
	const int N[2] = {2 * E, D}, K[2] = {D, E};
	ssm_backend *a = NULL, *b = NULL;
	int fa[4] = {-1, -1, -1, -1}, fb[4] = {-1, -1, -1, -1}, p;

	if (open_backend(m, SSM_BACKEND_CUDA, dt, 64, &a) ||
	    open_cuda_with(m, dt, 64, "SSMD_CUDA_GEMM_WG", "0", &b)) {
		CHECK(0, "open: %s", ssmd_errmsg());
		goto out;
	}
	/* no rows, or no result array: refused, nothing written */
	CHECK_RC(ssm_cuda_gemm_wg(a, 0, fa), SSMD_EINVAL);
	CHECK_RC(ssm_cuda_gemm_wg(a, n, NULL), SSMD_EINVAL);
	CHECK(fa[0] == -1, "warpgroup GEMM form: a refused query wrote %d", fa[0]);
	CHECK_RC(ssm_cuda_gemm_wg(a, n, fa), SSMD_OK);
	CHECK_RC(ssm_cuda_gemm_wg(b, n, fb), SSMD_OK);
	for (p = 0; p < 2; p++) {
		const int *f = fa + 2 * p;
		const int ok = (f[0] == 32 || f[0] == 64 || f[0] == 128) && N[p] % f[0] == 0 &&
			       f[1] >= 1 && f[1] <= p + 1 && (K[p] / f[1]) % 64 == 0;

		CHECK(want ? ok : !f[0] && !f[1], "%d rows: %s warpgroup form %d x %d (want %s)",
		      n, p ? "out_proj" : "in_proj", f[0], f[1], want ? "the kernel's" : "none");
		CHECK(!fb[2 * p] && !fb[2 * p + 1],
		      "%d rows: %s warpgroup form %d x %d with SSMD_CUDA_GEMM_WG=0", n,
		      p ? "out_proj" : "in_proj", fb[2 * p], fb[2 * p + 1]);
	}
	printf("  warpgroup GEMM (%d rows, d_model %d, d_inner %d), tile x slices: in_proj "
	       "%d x %d, out_proj %d x %d\n", n, D, E, fa[0], fa[1], fa[2], fa[3]);
out:
	ssm_backend_close(a);
	ssm_backend_close(b);
	batch_against(m, dt, n, "SSMD_CUDA_GEMM_WG", "0", TOL_BATCH_BF16,
		      "cuBLAS's in_proj and out_proj (batched)", NULL);
}

/* The batched decode's conv step and x_proj as one kernel (ssmk_conv_xproj:
 * 16-bit weights, d_conv 4, d_inner a multiple of 32; a cluster's blocks
 * sum their channels' parts of x_proj in rank order) against the conv
 * kernel and cuBLAS's GEMM (SSMD_CUDA_CONV_XPROJ=0), both batched: the same
 * bf16 / f16 products, only the order of x_proj's f32 sums differs. A
 * last-bit change there can move a 16-bit y by 2^-8 of itself, so the check
 * is TOL_BATCH_BF16 with greedy tokens identical; each backend also reports
 * its form (a cluster of d_inner / 32 blocks or fewer, and 0), so the case
 * cannot pass on the two kernels alone. rows: the rows a cluster takes
 * (SSMD_CUDA_CXP_ROWS, set for both opens; 0: the backend's choice: 8 below 64
 * rows where its clusters of 8 are resident at once, else 16). */
static void test_conv_xproj(const ssm_model *m, ssm_dtype dt, int n, const char *rows)
{
	const ssm_config *c = ssm_model_config(m);
	const int want = dt != SSM_DTYPE_F32 && c->d_conv == 4 && c->d_inner % 32 == 0;
	ssm_backend *a = NULL, *b = NULL;
	int form[2] = {-1, -1};

	if (open_backend(m, SSM_BACKEND_CUDA, dt, 1, &a) ||
	    open_cuda_with(m, dt, 1, "SSMD_CUDA_CONV_XPROJ", "0", &b)) {
		CHECK(0, "open: %s", ssmd_errmsg());
		goto out;
	}
	/* no result pointer: refused */
	CHECK_RC(ssm_cuda_conv_xproj(a, NULL), SSMD_EINVAL);
	CHECK_RC(ssm_cuda_conv_xproj(a, &form[0]), SSMD_OK);
	CHECK_RC(ssm_cuda_conv_xproj(b, &form[1]), SSMD_OK);
	CHECK(want ? form[0] >= 1 && c->d_inner % (32 * form[0]) == 0 : form[0] == 0,
	      "conv + x_proj: cluster of %d blocks where d_inner is %d (want %s)", form[0],
	      c->d_inner, want ? "one" : "none");
	CHECK(form[1] == 0, "conv + x_proj with SSMD_CUDA_CONV_XPROJ=0: cluster of %d",
	      form[1]);
	printf("  conv + x_proj (d_inner %d): a cluster of %d blocks\n", c->d_inner, form[0]);
out:
	ssm_backend_close(a);
	ssm_backend_close(b);
	setenv("SSMD_CUDA_CXP_ROWS", rows, 1);
	batch_against(m, dt, n, "SSMD_CUDA_CONV_XPROJ", "0", TOL_BATCH_BF16,
		      "conv and x_proj as two kernels (batched)", NULL);
	unsetenv("SSMD_CUDA_CXP_ROWS");
}

/* ------------------------------------------------------- checkpoints ----- */

/* The checkpoint positions of a 300-token prefill the checkpoint tests ask
 * for: the first token, inside and at the edges of 64-token scan segments,
 * across a 160-token chunk boundary, and the end. */
static const size_t ck_want[] = {1, 17, 64, 65, 128, 200, 255, 300};
#define N_CK_WANT ((int)(sizeof(ck_want) / sizeof(ck_want[0])))

typedef struct ck_ctx {
	ssm_state *got[16];
	size_t pos[16];
	int n, abort_at;
} ck_ctx;

static int ck_collect(void *ctx, size_t pos, const ssm_state *st)
{
	ck_ctx *k = ctx;

	if (k->n == k->abort_at)
		return SSMD_ECANCELED;
	k->pos[k->n] = pos;
	ssm_state_copy(k->got[k->n], st);
	k->n++;
	return 0;
}

/* Checkpoints inside a prefill (crossing chunk boundaries when the backend
 * was opened with a small SSMD_CUDA_CHUNK) equal the CPU reference's state
 * after prefilling exactly that many tokens; an aborting callback leaves the
 * slot at that checkpoint. */
static void test_checkpoints(const ssm_model *m, ssm_backend *gpu, ssm_backend *cpu)
{
	const int V = ssm_model_config(m)->vocab_size;
	const size_t *want = ck_want;
	const int nw = N_CK_WANT;
	int32_t toks[300];
	uint64_t seed = 1234;
	ck_ctx k = {.n = 0, .abort_at = -1};
	ssm_state *ref = NULL, *cur = NULL;
	ssm_prefill_args pa = {0};
	double worst = 0, e;
	int i;

	if (ssm_model_state_alloc(m, &ref) || ssm_model_state_alloc(m, &cur)) {
		CHECK(0, "out of memory");
		goto out;
	}
	for (i = 0; i < nw; i++)
		if (ssm_model_state_alloc(m, &k.got[i])) {
			CHECK(0, "out of memory");
			goto out;
		}
	fill_tokens(toks, 300, V, &seed);
	pa.tokens = toks;
	pa.n_tokens = 300;
	pa.ckpt_pos = want;
	pa.n_ckpt = nw;
	pa.ckpt_fn = ck_collect;
	pa.ckpt_ctx = &k;
	CHECK_RC(ssm_slot_reset(gpu, 0), SSMD_OK);
	CHECK_RC(ssm_prefill(gpu, 0, &pa), SSMD_OK);
	CHECK(k.n == nw, "checkpoints: %d callbacks, want %d", k.n, nw);
	for (i = 0; i < k.n; i++) {
		ssm_prefill_args pr = {0};
		CHECK(k.pos[i] == want[i], "checkpoint %d at %zu", i, k.pos[i]);
		CHECK_RC(ssm_slot_reset(cpu, 0), SSMD_OK);
		pr.tokens = toks;
		pr.n_tokens = want[i];
		CHECK_RC(ssm_prefill(cpu, 0, &pr), SSMD_OK);
		CHECK_RC(ssm_slot_get(cpu, 0, ref), SSMD_OK);
		if ((e = state_rel(k.got[i], ref)) > worst)
			worst = e;
		CHECK(k.got[i]->n_tokens == want[i], "checkpoint %d n_tokens %llu", i,
		      (unsigned long long)k.got[i]->n_tokens);
	}
	CHECK(worst <= TOL_CPU, "checkpoint states rel %.3g > %g", worst, TOL_CPU);
	printf("  %d checkpoints in a 300-token prefill vs CPU prefill-to-position: rel %.2e\n",
	       k.n, worst);

	/* abort at the fourth checkpoint (position 65): the slot stays there */
	k.n = 0;
	k.abort_at = 3;
	CHECK_RC(ssm_slot_reset(gpu, 0), SSMD_OK);
	CHECK_RC(ssm_prefill(gpu, 0, &pa), SSMD_ECANCELED);
	CHECK_RC(ssm_slot_get(gpu, 0, cur), SSMD_OK);
	CHECK(cur->n_tokens == want[3], "aborted prefill left n_tokens %llu",
	      (unsigned long long)cur->n_tokens);
	CHECK_RC(ssm_slot_reset(cpu, 0), SSMD_OK);
	pa.ckpt_pos = NULL;
	pa.n_ckpt = 0;
	pa.n_tokens = want[3];
	CHECK_RC(ssm_prefill(cpu, 0, &pa), SSMD_OK);
	CHECK_RC(ssm_slot_get(cpu, 0, ref), SSMD_OK);
	e = state_rel(cur, ref);
	CHECK(e <= TOL_CPU, "aborted prefill state rel %.3g", e);
out:
	for (i = 0; i < nw; i++)
		ssm_state_free(k.got[i]);
	ssm_state_free(ref);
	ssm_state_free(cur);
}

/* --------------------------------------------- slots: exact round trips -- */

static void test_slots(const ssm_model *m, ssm_backend *gpu)
{
	const int V = ssm_model_config(m)->vocab_size;
	ssm_state *a = NULL, *b = NULL;
	int32_t toks[40];
	uint64_t seed = 5;
	float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
	ssm_prefill_args pa = {0};
	int s0 = 0, s1 = 1, i;

	if (!la || !lb || ssm_model_state_alloc(m, &a) || ssm_model_state_alloc(m, &b)) {
		CHECK(0, "out of memory");
		goto out;
	}
	fill_tokens(toks, 40, V, &seed);
	pa.tokens = toks;
	pa.n_tokens = 32;
	pa.last_logits = la;
	CHECK_RC(ssm_slot_reset(gpu, 0), SSMD_OK);
	CHECK_RC(ssm_prefill(gpu, 0, &pa), SSMD_OK);
	CHECK_RC(ssm_slot_logits(gpu, 0, lb), SSMD_OK);
	CHECK(rel(lb, la, V) <= 1e-6, "slot_logits vs prefill last logits rel %.3g",
	      rel(lb, la, V));
	/* get -> set -> get is bit-exact, and continuing is bit-identical */
	CHECK_RC(ssm_slot_get(gpu, 0, a), SSMD_OK);
	CHECK_RC(ssm_slot_set(gpu, 1, a), SSMD_OK);
	CHECK_RC(ssm_slot_get(gpu, 1, b), SSMD_OK);
	CHECK(!memcmp(a->ssm, b->ssm, sizeof(float) * a->n_layer * a->d_inner * a->d_state) &&
	      !memcmp(a->hidden, b->hidden, sizeof(float) * a->d_model) &&
	      a->n_tokens == b->n_tokens, "slot set/get round trip not exact");
	for (i = 32; i < 40; i++) {
		CHECK_RC(ssm_decode(gpu, &s0, &toks[i], 1, la), SSMD_OK);
		CHECK_RC(ssm_decode(gpu, &s1, &toks[i], 1, lb), SSMD_OK);
		CHECK(!memcmp(la, lb, V * sizeof(float)), "resumed slot differs at %d", i);
	}
	/* fork: copy continues identically too */
	CHECK_RC(ssm_slot_copy(gpu, 1, 0), SSMD_OK);
	CHECK_RC(ssm_decode(gpu, &s0, &toks[0], 1, la), SSMD_OK);
	CHECK_RC(ssm_decode(gpu, &s1, &toks[0], 1, lb), SSMD_OK);
	CHECK(!memcmp(la, lb, V * sizeof(float)), "forked slot differs");
	/* reset empties a slot */
	CHECK_RC(ssm_slot_reset(gpu, 1), SSMD_OK);
	CHECK_RC(ssm_slot_logits(gpu, 1, lb), SSMD_EEMPTY);
out:
	ssm_state_free(a);
	ssm_state_free(b);
	free(la);
	free(lb);
}

/* ------------------------------------------------ sampling on the device -- */

/* decode_sample of n rows (at most 16) on one backend gives exactly
 * ssm_sample() of ssm_decode()'s logits on a twin backend, greedy and
 * sampled rows mixed. The twin's step reads its inputs from mapped pinned
 * memory (the default); the first backend's reads them there too and writes
 * its tokens there, or, with copies_a, takes one copy each way
 * (SSMD_CUDA_IO_MAPPED=0): the tokens are the same whichever way they
 * travel. */
static void test_decode_sample(const ssm_model *m, ssm_dtype dt, int n, int copies_a)
{
	const int V = ssm_model_config(m)->vocab_size;
	ssm_backend *a = NULL, *b = NULL;
	ssm_sampler sp[16];
	uint64_t idx[16], seed = 77;
	int32_t tok[16], next[16];
	int slots[16], io[2] = {-1, -1}, i, step, mism = 0, host = 0;
	uint64_t picks[2] = {0, 0};
	float *lg = malloc((size_t)n * V * sizeof(float));

	if (!lg ||
	    open_cuda_with(m, dt, n, copies_a ? "SSMD_CUDA_IO_MAPPED" : NULL, "0", &a) ||
	    open_backend(m, SSM_BACKEND_CUDA, dt, n, &b)) {
		CHECK(0, "open: %s", ssmd_errmsg());
		goto out;
	}
	/* a NULL result: refused, and the form each backend reports */
	CHECK_RC(ssm_cuda_io_mapped(a, NULL), SSMD_EINVAL);
	CHECK_RC(ssm_cuda_io_mapped(a, &io[0]), SSMD_OK);
	CHECK_RC(ssm_cuda_io_mapped(b, &io[1]), SSMD_OK);
	CHECK(io[0] == (copies_a ? 0 : 3) && io[1] == 3, "io form %d / %d, want %d / 3", io[0],
	      io[1], copies_a ? 0 : 3);
	fill_tokens(tok, n, V, &seed);
	for (i = 0; i < n; i++) {
		slots[i] = i;
		idx[i] = 0;
	}
	CHECK_RC(ssm_cuda_host_picks(a, NULL), SSMD_EINVAL);
	CHECK_RC(ssm_cuda_host_picks(a, &picks[0]), SSMD_OK);
	for (step = 0; step < 8; step++) {
		/* the kinds move along the rows each step, so one row sees
		 * greedy, temperature, top-k and top-p, and a temperature
		 * whose 1/T overflows (1e-40: greedy, with top-k or not) */
		for (i = 0; i < n; i++) {
			const int k = (i + step) % 16;
			sp[i].temperature = k % 4 == 0 ? 0.0f
					    : k % 7 == 6 ? 1e-40f
							 : 0.5f + 0.1f * k;
			sp[i].top_k = k % 3 == 1 ? 20 : 0;
			sp[i].top_p = k % 5 == 2 ? 0.9f : 1.0f;
			sp[i].seed = 1000 + i;
			/* rows of top-k or top-p that are not greedy (temperature
			 * <= 0 or 1/T not finite, top_k 1 or vocab 1) go to the
			 * host, as cuda_sample.cuh sorts them */
			host += !(sp[i].temperature <= 0.0f || !isfinite(1.0f / sp[i].temperature) ||
				  sp[i].top_k == 1 || V == 1) &&
				((sp[i].top_k > 0 && sp[i].top_k < V) || sp[i].top_p < 1.0f);
		}
		CHECK_RC(ssm_decode_sample(a, slots, tok, n, sp, idx, next), SSMD_OK);
		CHECK_RC(ssm_decode(b, slots, tok, n, lg), SSMD_OK);
		for (i = 0; i < n; i++) {
			int32_t want = ssm_sample(lg + (size_t)i * V, V, &sp[i], idx[i]);
			if (want != next[i])
				mism++;
			tok[i] = want;
			idx[i]++;
		}
	}
	CHECK(mism == 0, "decode_sample (%d rows, %s): %d of %d tokens differ from ssm_sample",
	      n, copies_a ? "copies" : "mapped", mism, 8 * n);
	/* every greedy and temperature row picked on the device: a draw within
	 * SAMPLE_MARGIN (1e-10 of the total) of a token's bounds would also go to
	 * the host, about one row in 10^9 */
	CHECK_RC(ssm_cuda_host_picks(a, &picks[1]), SSMD_OK);
	CHECK(picks[1] - picks[0] == (uint64_t)host,
	      "decode_sample (%d rows): %llu rows picked by the host, want %d (top-k / top-p)", n,
	      (unsigned long long)(picks[1] - picks[0]), host);
out:
	ssm_backend_close(a);
	ssm_backend_close(b);
	free(lg);
}

/* The four parts of two states' relative errors, as text (diagnostics). */
static const char *state_parts(const ssm_state *a, const ssm_state *b, char *buf, size_t cap)
{
	size_t ne = (size_t)a->n_layer * a->d_inner;

	snprintf(buf, cap, "ssm %.2e, conv %.2e, hidden %.2e, dt_sum %.2e",
		 rel(a->ssm, b->ssm, ne * a->d_state), rel(a->conv, b->conv, ne * (a->d_conv - 1)),
		 rel(a->hidden, b->hidden, a->d_model), rel(a->dt_sum, b->dt_sum, ne));
	return buf;
}

/*
 * Backend a against the reference ref on slot 0 of each: the same prompt
 * of n_prompt random tokens (seed) from an empty state, then `steps`
 * greedy steps on ref's picks. The states after the prompt, every step's
 * logits (normwise) and the states at the end within tol; a's greedy pick
 * the same as ref's. Returns the worst logits error.
 */
static double greedy_against(ssm_backend *a, ssm_backend *ref, const ssm_model *m,
			     int n_prompt, int steps_n, uint64_t seed, double tol,
			     const char *what)
{
	const int V = ssm_model_config(m)->vocab_size;
	float *la = malloc(V * sizeof(float)), *lr = malloc(V * sizeof(float));
	ssm_state *sa = NULL, *sr = NULL;
	int32_t toks[64], t;
	ssm_prefill_args pa = {0};
	double e, worst = 0;
	int i, s0 = 0, same = 1, first = -1;
	char parts[160];

	if (!la || !lr || n_prompt > 64 || ssm_model_state_alloc(m, &sa) ||
	    ssm_model_state_alloc(m, &sr)) {
		CHECK(0, "%s: out of memory", what);
		goto out;
	}
	fill_tokens(toks, n_prompt, V, &seed);
	CHECK_RC(ssm_slot_reset(a, 0), SSMD_OK);
	CHECK_RC(ssm_slot_reset(ref, 0), SSMD_OK);
	pa.tokens = toks;
	pa.n_tokens = n_prompt;
	pa.last_logits = la;
	CHECK_RC(ssm_prefill(a, 0, &pa), SSMD_OK);
	pa.last_logits = lr;
	CHECK_RC(ssm_prefill(ref, 0, &pa), SSMD_OK);
	CHECK_RC(ssm_slot_get(a, 0, sa), SSMD_OK);
	CHECK_RC(ssm_slot_get(ref, 0, sr), SSMD_OK);
	e = state_rel(sa, sr);
	CHECK(e <= tol, "%s: state after the prompt rel %.3g > %g (%s)", what, e, tol,
	      state_parts(sa, sr, parts, sizeof parts));
	for (i = 0; i < steps_n; i++) {
		t = argmax(lr, V);
		same &= argmax(la, V) == t;
		CHECK_RC(ssm_decode(a, &s0, &t, 1, la), SSMD_OK);
		CHECK_RC(ssm_decode(ref, &s0, &t, 1, lr), SSMD_OK);
		if (!((e = rel(la, lr, V)) <= worst))
			worst = e;
		if (first < 0 && !(e <= tol))
			first = i;
	}
	CHECK(worst <= tol, "%s: logits rel %.3g > %g (first at step %d)", what, worst, tol,
	      first);
	CHECK(same, "%s: a greedy pick differs", what);
	CHECK_RC(ssm_slot_get(a, 0, sa), SSMD_OK);
	CHECK_RC(ssm_slot_get(ref, 0, sr), SSMD_OK);
	e = state_rel(sa, sr);
	CHECK(e <= tol, "%s: state rel %.3g > %g (%s)", what, e, tol,
	      state_parts(sa, sr, parts, sizeof parts));
	printf("  %-58s logits rel %.2e, state rel %.2e\n", what, worst, e);
out:
	ssm_state_free(sa);
	ssm_state_free(sr);
	free(la);
	free(lr);
	return worst;
}

/* The model at dir (*m) and a copy of it under $TMPDIR (its folder into
 * copy, cap 256) with the copy's safetensors in f, to edit: 1, or 0 after
 * a failed check. */
static int model_and_copy(const char *dir, const char *what, char *copy, st_file *f,
			  ssm_model **m)
{
	if (!copy_dir(dir, copy) || !st_read(copy, f)) {
		CHECK(0, "%s: cannot copy %s", what, dir);
		return 0;
	}
	CHECK_RC(ssm_model_load(dir, m), SSMD_OK);
	return *m != NULL;
}

/* The edited tensors f written into the copy and loaded as *big (ok: the
 * edits succeeded): 1, or 0 after a failed check. */
static int load_edited(const char *copy, const st_file *f, int ok, const char *what,
		       ssm_model **big)
{
	CHECK(ok && st_write(copy, f), "%s: cannot write the scaled copy", what);
	CHECK_RC(ssm_model_load(copy, big), SSMD_OK);
	return ok && *big;
}

/*
 * x_proj values past the persistent kernels' integer range (PK_XMAX, 2^23):
 * a copy of the model whose dt_low rows of x_proj are scaled by 2^40 and
 * dt_proj by 2^-40. Powers of two scale every product and sum exactly, so
 * it is the same model: the CPU backend gives the same bits on both (checked
 * first). The GPU's batch-1 kernel (F32) must follow the CPU within TOL_CPU
 * on the copy, and the 2-row kernel (16-bit) the original within
 * TOL_BATCH_BF16: the parts past the range go to f32 sums of their own.
 */
static void test_xproj_big(const char *dir)
{
	char copy[256] = "", name[128];
	ssm_model *m = NULL, *big = NULL;
	ssm_backend *cpu = NULL, *cpu_big = NULL, *gpu = NULL, *lo = NULL, *lo_big = NULL;
	const ssm_config *c;
	st_file f = {0};
	int l, ok = 1, pf = 0, i, V;
	size_t n, rows, j;
	float *w;
	float *lg[2] = {NULL, NULL};

	if (!model_and_copy(dir, "x_proj range", copy, &f, &m))
		goto out;
	c = ssm_model_config(m);
	V = c->vocab_size;
	for (l = 0; l < c->n_layer && ok; l++) {
		snprintf(name, sizeof name, "backbone.layers.%d.mixer.x_proj.weight", l);
		w = st_f32(&f, name, &n, &rows);
		ok = w && rows == (size_t)(c->dt_rank + 2 * c->d_state);
		for (j = 0; ok && j < (size_t)c->dt_rank * (n / rows); j++)
			w[j] = ldexpf(w[j], 40);
		snprintf(name, sizeof name, "backbone.layers.%d.mixer.dt_proj.weight", l);
		w = st_f32(&f, name, &n, &rows);
		ok = ok && w;
		for (j = 0; ok && j < n; j++)
			w[j] = ldexpf(w[j], -40);
	}
	if (!load_edited(copy, &f, ok, "x_proj range", &big))
		goto out;
	if (open_backend(m, SSM_BACKEND_CPU, SSM_DTYPE_F32, 1, &cpu) ||
	    open_backend(big, SSM_BACKEND_CPU, SSM_DTYPE_F32, 1, &cpu_big) ||
	    open_backend(big, SSM_BACKEND_CUDA, SSM_DTYPE_F32, 1, &gpu) ||
	    open_backend(m, SSM_BACKEND_CUDA, low_dtype, 2, &lo) ||
	    open_backend(big, SSM_BACKEND_CUDA, low_dtype, 2, &lo_big)) {
		CHECK(0, "x_proj range: open: %s", ssmd_errmsg());
		goto out;
	}
	/* the premise: the same model, bit for bit on the CPU */
	CHECK(greedy_against(cpu_big, cpu, m, 24, 16, 21, 0.0,
			     "x_proj past 2^23 on the CPU against the original") == 0.0,
	      "x_proj range: the scaled copy is another model on the CPU");
	CHECK_RC(ssm_cuda_decode1_depth(gpu, &pf), SSMD_OK);
	CHECK(pf > 0, "x_proj range: batch 1 does not take the persistent kernel");
	greedy_against(gpu, cpu, m, 24, 16, 22, TOL_CPU,
		       "x_proj past 2^23, batch-1 F32 against the CPU");
	/* two rows at once through the multi-row kernel */
	lg[0] = malloc(2 * V * sizeof(float));
	lg[1] = malloc(2 * V * sizeof(float));
	if (!lg[0] || !lg[1]) {
		CHECK(0, "x_proj range: out of memory");
		goto out;
	}
	{
		int32_t toks[2][24], next[2];
		int slots[2] = {0, 1};
		uint64_t seed = 23;
		ssm_prefill_args pa = {0};
		double e, worst = 0;

		for (i = 0; i < 2; i++) {
			fill_tokens(toks[i], 24, V, &seed);
			pa.tokens = toks[i];
			pa.n_tokens = 24;
			pa.last_logits = lg[0] + i * V;
			CHECK_RC(ssm_prefill(lo, i, &pa), SSMD_OK);
			pa.last_logits = lg[1] + i * V;
			CHECK_RC(ssm_prefill(lo_big, i, &pa), SSMD_OK);
		}
		for (int s = 0; s < 16; s++) {
			for (i = 0; i < 2; i++)
				next[i] = argmax(lg[0] + i * V, V);
			CHECK_RC(ssm_decode(lo, slots, next, 2, lg[0]), SSMD_OK);
			CHECK_RC(ssm_decode(lo_big, slots, next, 2, lg[1]), SSMD_OK);
			if (!((e = rel(lg[1], lg[0], 2 * (size_t)V)) <= worst))
				worst = e;
		}
		CHECK(worst <= TOL_BATCH_BF16, "x_proj range, 2 rows 16-bit: rel %.3g > %g",
		      worst, TOL_BATCH_BF16);
		printf("  %-58s logits rel %.2e\n",
		       "x_proj past 2^23, 2 rows 16-bit against the original", worst);
	}
out:
	free(lg[0]);
	free(lg[1]);
	ssm_backend_close(lo_big);
	ssm_backend_close(lo);
	ssm_backend_close(gpu);
	ssm_backend_close(cpu_big);
	ssm_backend_close(cpu);
	ssm_model_free(big);
	ssm_model_free(m);
	st_free(&f);
	if (*copy)
		test_dir_remove(copy);
}

/*
 * The batch-1 kernel's two forms (ssm_cuda_decode1_groups): phases C and D
 * by channel group, out_proj's block parts added as integers (PK_XFIX), two
 * grid barriers a layer; or C by channel and D by whole out_proj rows after
 * a third barrier. Each form, F32 weights, must follow the CPU within
 * TOL_CPU: the state after a prompt, 16 greedy steps' logits and the state
 * at the end (greedy_against). Then out_proj parts past the integer range
 * (PK_XMAX, 2^23): a copy of the model with out_proj scaled by 2^40, a
 * model of its own whose residual stream is ~2^40 times larger (checked on
 * the CPU first), on which both forms must follow the CPU the same way:
 * the grouped form's parts past the range go to f32 sums of their own.
 */
static void test_groups(const char *dir)
{
	char copy[256] = "", name[128], what[128];
	ssm_model *m = NULL, *big = NULL;
	ssm_backend *cpu = NULL, *cpu_big = NULL, *gpu = NULL;
	ssm_state *st = NULL;
	st_file f = {0};
	int l, g, k, got = -2, ok = 1;
	size_t n, rows, j;
	float *w, hmax = 0;
	static const char *const form[2] = {"C by channel, D by row", "C and D by channel group"};

	if (!model_and_copy(dir, "out_proj range", copy, &f, &m))
		goto out;
	for (l = 0; l < ssm_model_config(m)->n_layer && ok; l++) {
		snprintf(name, sizeof name, "backbone.layers.%d.mixer.out_proj.weight", l);
		w = st_f32(&f, name, &n, &rows);
		ok = w != NULL;
		for (j = 0; ok && j < n; j++)
			w[j] = ldexpf(w[j], 40);
	}
	if (!load_edited(copy, &f, ok, "out_proj range", &big))
		goto out;
	if (open_backend(m, SSM_BACKEND_CPU, SSM_DTYPE_F32, 1, &cpu) ||
	    open_backend(big, SSM_BACKEND_CPU, SSM_DTYPE_F32, 1, &cpu_big) ||
	    ssm_model_state_alloc(big, &st)) {
		CHECK(0, "out_proj range: open: %s", ssmd_errmsg());
		goto out;
	}
	/* the premise: the copy's residual stream is far past 2^23 */
	{
		int32_t toks[24];
		uint64_t seed = 41;
		ssm_prefill_args pa = {0};

		fill_tokens(toks, 24, ssm_model_config(big)->vocab_size, &seed);
		pa.tokens = toks;
		pa.n_tokens = 24;
		CHECK_RC(ssm_prefill(cpu_big, 0, &pa), SSMD_OK);
		CHECK_RC(ssm_slot_get(cpu_big, 0, st), SSMD_OK);
		for (j = 0; j < (size_t)st->d_model; j++)
			hmax = fabsf(st->hidden[j]) > hmax ? fabsf(st->hidden[j]) : hmax;
		CHECK(hmax > 0x1p30f, "out_proj range: the copy's hidden vector peaks at %g", hmax);
	}
	for (g = 0; g < 2; g++) {
		setenv("SSMD_CUDA_PK_GROUPS", g ? "1" : "0", 1);
		for (k = 0; k < 2; k++) {
			if (open_backend(k ? big : m, SSM_BACKEND_CUDA, SSM_DTYPE_F32, 1, &gpu)) {
				CHECK(0, "groups %d: open: %s", g, ssmd_errmsg());
				goto out;
			}
			/* the entry point refuses a missing result */
			CHECK_RC(ssm_cuda_decode1_groups(gpu, NULL), SSMD_EINVAL);
			CHECK_RC(ssm_cuda_decode1_groups(gpu, &got), SSMD_OK);
			CHECK(got == g, "groups: asked for %d, runs %d", g, got);
			snprintf(what, sizeof what, "batch-1 F32, %s%s", form[g],
				 k ? ", out_proj x 2^40" : "");
			greedy_against(gpu, k ? cpu_big : cpu, k ? big : m, 24, 16, 31 + g, TOL_CPU,
				       what);
			ssm_backend_close(gpu);
			gpu = NULL;
		}
	}
out:
	unsetenv("SSMD_CUDA_PK_GROUPS");
	ssm_backend_close(gpu);
	ssm_backend_close(cpu_big);
	ssm_backend_close(cpu);
	ssm_state_free(st);
	ssm_model_free(big);
	ssm_model_free(m);
	st_free(&f);
	if (*copy)
		test_dir_remove(copy);
}

/* ----------------------------------------------- a mamba-130m-shaped model -- */

/* Whether a traced step (ssm_cuda_persist_split) timed every phase in
 * block 0 and gave every phase a nonzero shortest run over the blocks (the
 * split clears the marks first: a block that wrote none would read 0). */
static int split_timed(const double share[SSM_CUDA_N_PHASES],
		       const double spread[SSM_CUDA_N_PHASES - 1][3])
{
	int k, timed = 1;

	for (k = 0; k < SSM_CUDA_N_PHASES; k++)
		timed &= share[k] > 0.0;
	for (k = 0; k < SSM_CUDA_N_PHASES - 1; k++)
		timed &= spread[k][0] > 0.0;
	return timed;
}

/* Whether backend b (of at least `rows` slots) has no persistent kernel for
 * `rows` rows (shapes whose widths the batch-1 kernel does not take, d_model
 * 49 or 50 say; or, at 2 or 4 rows, F32 weights, which the multi-row
 * kernels do not take): then it refuses the traced step of `rows` rows, and
 * at 1 row reports prefetch depth 0, checked here (0 when it does have
 * one). */
static int no_pk_refused(ssm_backend *b, int rows, const char *what)
{
	double share[SSM_CUDA_N_PHASES] = {0};
	int32_t tok[2] = {0, 0};
	int slots[2] = {0, 1}, served = -1, pf = -1;

	CHECK_RC(ssm_cuda_persist_rows(b, rows, &served), SSMD_OK);
	if (served != 0)
		return 0;
	if (rows == 1) {
		CHECK_RC(ssm_cuda_decode1_depth(b, &pf), SSMD_OK);
		CHECK(pf == 0, "%s: no batch-1 kernel, but prefetch depth %d", what, pf);
	}
	CHECK_RC(ssm_cuda_persist_split(b, slots, tok, rows, share, NULL), SSMD_EUNSUPPORTED);
	printf("  %s: no persistent kernel for this shape, its traced steps refused\n", what);
	return 1;
}

/*
 * The batch-1 kernel's prefetch depth changes when each weight piece is
 * loaded, never the order a lane adds them, so depths 6 and 8 give the same
 * bits: 16 greedy steps with F32 weights (rows of 6 and 12 pieces a lane on
 * the 130m shape: out_proj's rows take two units at either depth), logits
 * and the slot's state compared bit for bit. The blocks' x_proj parts land
 * in a different order in every launch, so this also holds their sums to
 * being exact (integers, pk_xsum_add).
 */
static void test_depth(const ssm_model *m)
{
	const int V = ssm_model_config(m)->vocab_size;
	ssm_backend *b[2] = {NULL, NULL};
	ssm_state *st[2] = {NULL, NULL};
	float *lg[2] = {malloc(V * sizeof(float)), malloc(V * sizeof(float))};
	int32_t toks[32], t;
	uint64_t seed = 5;
	ssm_prefill_args pa = {0};
	int i, k, s0 = 0, pf, same = 1;
	static const char *const depth[2] = {"6", "8"};

	for (k = 0; k < 2; k++) {
		setenv("SSMD_CUDA_PK_PF", depth[k], 1);
		if (!lg[k] || ssm_model_state_alloc(m, &st[k]) ||
		    open_backend(m, SSM_BACKEND_CUDA, SSM_DTYPE_F32, 1, &b[k])) {
			CHECK(0, "depth %s: open: %s", depth[k], ssmd_errmsg());
			goto out;
		}
		CHECK_RC(ssm_cuda_decode1_depth(b[k], &pf), SSMD_OK);
		if (no_pk_refused(b[k], 1, "depth"))
			goto out;
		CHECK(pf == atoi(depth[k]), "depth: asked for %s, runs %d", depth[k], pf);
	}
	/* the timing entry points refuse a missing result array */
	CHECK_RC(ssm_cuda_decode1_depth(b[0], NULL), SSMD_EINVAL);
	CHECK_RC(ssm_cuda_persist_rows(b[0], 1, NULL), SSMD_EINVAL);
	CHECK_RC(ssm_cuda_persist_rows(b[0], 0, &pf), SSMD_EINVAL);
	CHECK_RC(ssm_cuda_persist_split(b[0], &s0, toks, 1, NULL, NULL), SSMD_EINVAL);
	{
		/* rows out of range: none, or more than the backend's one slot */
		double share[SSM_CUDA_N_PHASES] = {0};
		int two[2] = {0, 1};

		CHECK_RC(ssm_cuda_persist_split(b[0], two, toks, 0, share, NULL), SSMD_EINVAL);
		CHECK_RC(ssm_cuda_persist_split(b[0], two, toks, 2, share, NULL), SSMD_EINVAL);
	}
	CHECK_RC(ssm_cuda_decode_split(b[0], &s0, toks, 1, NULL), SSMD_EINVAL);
	pa.tokens = toks;
	pa.n_tokens = 1;
	CHECK_RC(ssm_cuda_prefill_split(b[0], 0, &pa, NULL), SSMD_EINVAL);
	fill_tokens(toks, 32, V, &seed);
	pa.tokens = toks;
	pa.n_tokens = 32;
	for (k = 0; k < 2; k++) {
		pa.last_logits = lg[k];
		CHECK_RC(ssm_prefill(b[k], 0, &pa), SSMD_OK);
	}
	for (i = 0; i < 16; i++) {
		t = argmax(lg[0], V);
		for (k = 0; k < 2; k++)
			CHECK_RC(ssm_decode(b[k], &s0, &t, 1, lg[k]), SSMD_OK);
		same &= !memcmp(lg[0], lg[1], V * sizeof(float));
	}
	for (k = 0; k < 2; k++)
		CHECK_RC(ssm_slot_get(b[k], 0, st[k]), SSMD_OK);
	CHECK(same, "depth 6 and 8: logits differ");
	CHECK(state_rel(st[0], st[1]) == 0, "depth 6 and 8: states differ (rel %.3g)",
	      state_rel(st[0], st[1]));
	printf("  batch-1 prefetch depth 6 against 8, 16 steps: logits %s, state rel %.1g\n",
	       same ? "identical" : "differ", state_rel(st[0], st[1]));
	/* the traced step: it leaves the slot as an untraced step of the same
	 * token does (b[1], whose results above equal b[0]'s), and every phase
	 * takes time (split_timed) */
	{
		double share[SSM_CUDA_N_PHASES] = {0}, spread[SSM_CUDA_N_PHASES - 1][3] = {{0}};

		CHECK_RC(ssm_cuda_persist_split(b[0], &s0, &t, 1, share, spread), SSMD_OK);
		CHECK_RC(ssm_decode(b[1], &s0, &t, 1, lg[1]), SSMD_OK);
		for (k = 0; k < 2; k++)
			CHECK_RC(ssm_slot_get(b[k], 0, st[k]), SSMD_OK);
		CHECK(state_rel(st[0], st[1]) == 0,
		      "decode split: the traced step's state differs (rel %.3g)",
		      state_rel(st[0], st[1]));
		CHECK(split_timed(share, spread),
		      "decode split: a phase with no time, in block 0 or in some block");
	}
out:
	unsetenv("SSMD_CUDA_PK_PF");
	for (k = 0; k < 2; k++) {
		ssm_backend_close(b[k]);
		ssm_state_free(st[k]);
		free(lg[k]);
	}
}

/* The multi-row kernel's traced step (2 rows of 16-bit weights): it leaves
 * both slots as an untraced step of the same tokens does, bit for bit (the
 * same kernel on the same inputs), and every phase takes time. With F32
 * weights 2 rows take the cuBLAS path, which the split refuses. */
static void test_split_rows(const ssm_model *m, ssm_dtype dt)
{
	const ssm_config *c = ssm_model_config(m);
	double share[SSM_CUDA_N_PHASES] = {0}, spread[SSM_CUDA_N_PHASES - 1][3] = {{0}};
	ssm_backend *b[2] = {NULL, NULL};
	ssm_state *st[2] = {NULL, NULL};
	int32_t toks[16], step[2];
	int slots[2] = {1, 0}, k, i, timed;
	uint64_t seed = 11;
	double worst = 0, e;
	float *lg = malloc((size_t)2 * c->vocab_size * sizeof(float));

	if (!lg) {
		CHECK(0, "split rows: out of memory");
		return;
	}
	for (k = 0; k < 2; k++)
		if (ssm_model_state_alloc(m, &st[k]) ||
		    open_backend(m, SSM_BACKEND_CUDA, dt, 2, &b[k])) {
			CHECK(0, "split rows: open: %s", ssmd_errmsg());
			goto out;
		}
	for (i = 0; i < 2; i++) {
		ssm_prefill_args pa = {0};
		fill_tokens(toks, 16, c->vocab_size, &seed);
		pa.tokens = toks;
		pa.n_tokens = 9 + (size_t)i * 7;
		for (k = 0; k < 2; k++)
			CHECK_RC(ssm_prefill(b[k], i, &pa), SSMD_OK);
	}
	fill_tokens(step, 2, c->vocab_size, &seed);
	if (no_pk_refused(b[0], 2, "split rows"))
		goto out;
	CHECK_RC(ssm_cuda_persist_split(b[0], slots, step, 2, share, spread), SSMD_OK);
	CHECK_RC(ssm_decode(b[1], slots, step, 2, lg), SSMD_OK);
	for (i = 0; i < 2; i++) {
		for (k = 0; k < 2; k++)
			CHECK_RC(ssm_slot_get(b[k], i, st[k]), SSMD_OK);
		if ((e = state_rel(st[0], st[1])) > worst)
			worst = e;
		CHECK(st[0]->n_tokens == st[1]->n_tokens, "split rows: slot %d n_tokens", i);
	}
	CHECK(worst == 0, "split rows: the traced step's states differ (rel %.3g)", worst);
	timed = split_timed(share, spread);
	CHECK(timed, "split rows: a phase with no time, in block 0 or in some block");
	ssm_backend_close(b[1]);
	b[1] = NULL;
	if (open_backend(m, SSM_BACKEND_CUDA, SSM_DTYPE_F32, 2, &b[1])) {
		CHECK(0, "split rows: open: %s", ssmd_errmsg());
		goto out;
	}
	CHECK_RC(ssm_cuda_persist_split(b[1], slots, step, 2, share, NULL), SSMD_EUNSUPPORTED);
	printf("  the 2-row kernel's traced step: states rel %.1g, every phase timed: %s\n",
	       worst, timed ? "yes" : "no");
out:
	for (k = 0; k < 2; k++) {
		ssm_backend_close(b[k]);
		ssm_state_free(st[k]);
	}
	free(lg);
}

/* Weights of dtype dt (BF16 or F16) against F32 on the same model: a 64-token
 * prefill, then 256 greedy steps fed the F32 tokens; logits within
 * TOL_BF16 and the same greedy tokens. */
static void test_low_vs_f32(const ssm_model *m, const char *dir, ssm_dtype dt)
{
	const char *name = dt == SSM_DTYPE_F16 ? "F16" : dt == SSM_DTYPE_F32 ? "F32" : "BF16";
	ssm_backend *f = NULL, *h = NULL;
	int32_t toks[64], tf, tb;
	uint64_t seed = 3;
	float *lf = NULL, *lh = NULL;
	ssm_prefill_args pa = {0};
	double worst = 0, e;
	int V, i, s0 = 0, same = 1, first_diff = -1;

	V = ssm_model_config(m)->vocab_size;
	lf = malloc(V * sizeof(float));
	lh = malloc(V * sizeof(float));
	if (!lf || !lh || open_backend(m, SSM_BACKEND_CUDA, SSM_DTYPE_F32, 1, &f) ||
	    open_backend(m, SSM_BACKEND_CUDA, dt, 1, &h)) {
		CHECK(0, "open: %s", ssmd_errmsg());
		goto out;
	}
	fill_tokens(toks, 64, V, &seed);
	pa.tokens = toks;
	pa.n_tokens = 64;
	pa.last_logits = lf;
	CHECK_RC(ssm_prefill(f, 0, &pa), SSMD_OK);
	pa.last_logits = lh;
	CHECK_RC(ssm_prefill(h, 0, &pa), SSMD_OK);
	worst = rel(lh, lf, V);
	for (i = 0; i < 256; i++) {
		tf = argmax(lf, V);
		tb = argmax(lh, V);
		if (tf != tb && same) {
			same = 0;
			first_diff = i;
		}
		CHECK_RC(ssm_decode(f, &s0, &tf, 1, lf), SSMD_OK);
		CHECK_RC(ssm_decode(h, &s0, &tf, 1, lh), SSMD_OK);
		if ((e = rel(lh, lf, V)) > worst)
			worst = e;
	}
	CHECK(same, "%s: %s greedy differs from F32 at step %d", dir, name, first_diff);
	CHECK(worst <= TOL_BF16, "%s: %s logits rel %.3g > %g", dir, name, worst, TOL_BF16);
	printf("  %-40s %s vs F32 over 256 greedy steps: worst rel %.2e, tokens %s\n", dir,
	       name, worst, same ? "identical" : "differ");
out:
	free(lf);
	free(lh);
	ssm_backend_close(h);
	ssm_backend_close(f);
}

/* The prefill's dt_proj inside the scan (dtype dt, 16-bit) against its GEMM
 * of its own (SSMD_CUDA_DT_FUSED=0), in chunks of 160 tokens: a 300-token
 * prefill (segments of 64, 64 and 32 tokens, then 64, 64 and 12: whole and
 * short tiles, the last segment's dt made alone) with 8 checkpoints, and a
 * 40-token one (one segment). Both sum the same 16-bit products in f32 in
 * different orders; a last-bit change in dt can flip a later 16-bit
 * rounding, so the states and logits are held to TOL_BATCH_BF16, as the
 * batched decode is against decoding alone (on the H200 they came out
 * bit-identical). Where the model's dt_rank keeps dt_proj a GEMM, both runs
 * take it and only the switch is checked. */
static void test_dt_fused(const ssm_model *m, ssm_dtype dt)
{
	const size_t *want = ck_want;
	const int nw = N_CK_WANT;
	const int V = ssm_model_config(m)->vocab_size;
	ssm_backend *b[2] = {NULL, NULL};
	ck_ctx k[2] = {{.n = 0, .abort_at = -1}, {.n = 0, .abort_at = -1}};
	ssm_state *fin[2] = {NULL, NULL};
	float *lg[2] = {NULL, NULL};
	int32_t toks[300];
	uint64_t seed = 77;
	double worst = 0, e;
	int i, j, R, fused[2] = {-1, -1};

	if (dt == SSM_DTYPE_F32) {
		printf("  dt_proj in the scan: not taken with F32 weights "
		       "(SSMD_CUDA_F32_ONLY)\n");
		return;
	}
	fill_tokens(toks, 300, V, &seed);
	setenv("SSMD_CUDA_CHUNK", "160", 1);
	for (j = 0; j < 2; j++) {
		ssm_prefill_args pa = {0};

		if (j == 1)
			setenv("SSMD_CUDA_DT_FUSED", "0", 1);
		lg[j] = malloc(V * sizeof(float));
		if (!lg[j] || ssm_model_state_alloc(m, &fin[j]) ||
		    open_backend(m, SSM_BACKEND_CUDA, dt, 1, &b[j])) {
			CHECK(0, "open: %s", ssmd_errmsg());
			goto out;
		}
		for (i = 0; i < nw; i++)
			if (ssm_model_state_alloc(m, &k[j].got[i])) {
				CHECK(0, "out of memory");
				goto out;
			}
		CHECK_RC(ssm_cuda_dt_fused(b[j], NULL), SSMD_EINVAL);
		CHECK_RC(ssm_cuda_dt_fused(b[j], &fused[j]), SSMD_OK);
		pa.tokens = toks;
		pa.n_tokens = 300;
		pa.ckpt_pos = want;
		pa.n_ckpt = nw;
		pa.ckpt_fn = ck_collect;
		pa.ckpt_ctx = &k[j];
		CHECK_RC(ssm_prefill(b[j], 0, &pa), SSMD_OK);
		CHECK_RC(ssm_slot_get(b[j], 0, fin[j]), SSMD_OK);
		CHECK(k[j].n == nw, "dt_proj in the scan: %d checkpoints, want %d", k[j].n, nw);
	}
	/* taken by default where dt_rank is a multiple of 16 up to 64 */
	R = ssm_model_config(m)->dt_rank;
	CHECK(fused[0] == (R % 16 == 0 && R <= 64) && fused[1] == 0,
	      "dt_proj in the scan: taken %d with the default (dt_rank %d), %d with "
	      "SSMD_CUDA_DT_FUSED=0",
	      fused[0], R, fused[1]);
	for (i = 0; i < k[0].n && i < k[1].n; i++)
		if ((e = state_rel(k[0].got[i], k[1].got[i])) > worst)
			worst = e;
	if ((e = state_rel(fin[0], fin[1])) > worst)
		worst = e;
	/* one segment, short tiles: 40 tokens from a fresh slot */
	for (j = 0; j < 2; j++) {
		ssm_prefill_args pa = {0};

		pa.tokens = toks;
		pa.n_tokens = 40;
		pa.last_logits = lg[j];
		CHECK_RC(ssm_slot_reset(b[j], 0), SSMD_OK);
		CHECK_RC(ssm_prefill(b[j], 0, &pa), SSMD_OK);
		CHECK_RC(ssm_slot_get(b[j], 0, fin[j]), SSMD_OK);
	}
	if ((e = state_rel(fin[0], fin[1])) > worst)
		worst = e;
	if ((e = rel(lg[0], lg[1], V)) > worst)
		worst = e;
	CHECK(worst <= TOL_BATCH_BF16, "dt_proj in the scan vs its GEMM: rel %.3g > %g", worst,
	      TOL_BATCH_BF16);
	printf("  dt_proj in the scan vs its own GEMM (%d checkpoints, the end states, "
	       "logits): worst rel %.2e\n",
	       k[0].n, worst);
out:
	unsetenv("SSMD_CUDA_CHUNK");
	unsetenv("SSMD_CUDA_DT_FUSED");
	for (j = 0; j < 2; j++) {
		for (i = 0; i < nw; i++)
			ssm_state_free(k[j].got[i]);
		ssm_state_free(fin[j]);
		free(lg[j]);
		ssm_backend_close(b[j]);
	}
}

/* check_logprobs at a real vocabulary (50280 logits a row: the device's
 * row walks take two rounds a thread, where the fixtures' 256-512 take
 * one), on a 40-token prefill of random tokens. */
static void test_big_logprobs(const ssm_model *m, ssm_dtype dt, const char *dir)
{
	const size_t V = ssm_model_config(m)->vocab_size, n = 40;
	int32_t toks[40];
	uint64_t seed = 99;
	float *lg = malloc(n * V * sizeof(float));
	ssm_backend *b = NULL;
	ssm_prefill_args pa = {0};

	if (!lg || open_backend(m, SSM_BACKEND_CUDA, dt, 1, &b)) {
		CHECK(0, "open: %s", ssmd_errmsg());
		goto out;
	}
	fill_tokens(toks, n, (int)V, &seed);
	pa.tokens = toks;
	pa.n_tokens = n;
	pa.all_logits = lg;
	CHECK_RC(ssm_prefill(b, 0, &pa), SSMD_OK);
	CHECK_RC(ssm_slot_reset(b, 0), SSMD_OK);
	check_logprobs(b, 0, toks, n, lg, V, dir, 0);
	check_logprobs(b, 0, toks, n, lg, V, dir, 1);
out:
	ssm_backend_close(b);
	free(lg);
}

static void test_big(const char *dir)
{
	ssm_model *m = NULL;

	CHECK_RC(ssm_model_load(dir, &m), SSMD_OK);
	if (!m)
		return;
	test_low_vs_f32(m, dir, low_dtype);
	test_low_vs_f32(m, dir, half_dtype);
	test_dt_fused(m, low_dtype);
	test_dt_fused(m, half_dtype);
	/* batched against alone at a real shape (d_inner 1536, dt_rank 48,
	 * where the fixtures have 128 and 4-7): a whole and a ragged last
	 * block of the SSM step's rows; 2 and 3 rows through the multi-row
	 * persistent kernels (3: one padding row), whose rows here are 6
	 * (in_proj) and 12 (out_proj) chunks long, with either 16-bit dtype */
	test_batch(m, low_dtype, 64);
	test_batch(m, low_dtype, 37);
	test_step_mma(m, low_dtype, 64);
	/* the smallest bucket it takes, 8 rows, one of them padding */
	test_step_mma(m, low_dtype, 7);
	/* the backend's in_proj and out_proj GEMM in each bucket it takes
	 * (7 and 13: padding rows), and buckets of 4 and 64 (other kernels) */
	test_gemm_rows(m, low_dtype, 7);
	test_gemm_rows(m, half_dtype, 13);
	test_gemm_rows(m, low_dtype, 16);
	test_gemm_rows(m, low_dtype, 3);
	test_gemm_rows(m, low_dtype, 64);
	/* the warpgroup GEMM in each bucket it takes (37 and 20: padding
	 * rows), and a bucket of 16 (not taken) */
	test_gemm_wg(m, low_dtype, 64);
	test_gemm_wg(m, half_dtype, 37);
	test_gemm_wg(m, low_dtype, 20);
	test_gemm_wg(m, low_dtype, 16);
	/* clusters of 16 rows (the choice at 64 rows) and of 8 (below),
	 * and 8 forced at 64 with 27 of the bucket's rows padding */
	test_conv_xproj(m, low_dtype, 64, "0");
	test_conv_xproj(m, half_dtype, 16, "0");
	test_conv_xproj(m, low_dtype, 37, "8");
	test_batch(m, low_dtype, 2);
	test_batch(m, low_dtype, 3);
	test_batch(m, half_dtype, 3);
	/* the buckets of 8 and 16 rows (7: one padding row), whose graphs
	 * the cases above do not reach */
	test_batch(m, low_dtype, 16);
	test_batch(m, low_dtype, 7);
	test_batch(m, half_dtype, 16);
	test_depth(m);
	test_split_rows(m, low_dtype);
	/* the device's picks and log-probabilities against the host's at a
	 * real vocabulary */
	test_decode_sample(m, low_dtype, 16, 0);
	test_decode_sample(m, low_dtype, 1, 1);
	test_big_logprobs(m, low_dtype, dir);
	ssm_model_free(m);
}

/* Whether group `name` runs: all of them, or those SSMD_CUDA_ONLY names
 * (comma-separated: fixtures, cross, batch or one of its cases batch-f32-64
 * ... batch-low-20-whole and batch-conv3, batch-gemm, checkpoints, xproj-big, groups,
 * sampling, big), so a slow tool such as a sanitizer can run the groups side
 * by side. */
static int want(const char *name)
{
	const char *only = getenv("SSMD_CUDA_ONLY");
	const size_t n = strlen(name);
	const char *p;

	if (!only || !*only)
		return 1;
	for (p = only; (p = strstr(p, name)); p += n)
		if ((p == only || p[-1] == ',') && (p[n] == ',' || !p[n]))
			return 1;
	return 0;
}

int main(void)
{
	const char *shared = getenv("SSMD_SHARED_FIXTURES");
	const char *local = getenv("SSMD_TEST_FIXTURES");
	const char *big = getenv("SSMD_CUDA_BIG_MODEL");
	static const char *const dirs[] = {"bf16-deep", "bias-untied", "conv3-rank7",
					   "f16-sharded", "state4", "state32", "state64"};
	/* the batch group's cases, each also a group of its own */
	static const struct {
		const char *name;
		int low, n; /* low: 1 the BF16, 2 the F16 weights (F32 with
			     * SSMD_CUDA_F32_ONLY), 0 F32 */
		int whole;  /* out_proj in one K slice (SSMD_CUDA_OUT_SPLIT=1) */
	} batches[] = {
		{"batch-f32-64", 0, 64, 0}, {"batch-f32-37", 0, 37, 0},
		{"batch-low-64", 1, 64, 0}, {"batch-f32-3", 0, 3, 0},
		{"batch-low-20", 1, 20, 0}, {"batch-low-2", 1, 2, 0},
		{"batch-low-4", 1, 4, 0},   {"batch-low-3", 1, 3, 0},
		{"batch-f16-4", 2, 4, 0},   {"batch-f16-20", 2, 20, 0},
		{"batch-low-8", 1, 8, 0},   {"batch-low-13", 1, 13, 0},
		{"batch-f16-16", 2, 16, 0},
		{"batch-f32-64-whole", 0, 64, 1}, {"batch-low-20-whole", 1, 20, 1},
	};
	char path[1024];
	ssm_model *m = NULL;
	ssm_backend *gpu = NULL, *cpu = NULL;
	ssm_backend_opts o;
	size_t i;
	int rc;

	setvbuf(stdout, NULL, _IOLBF, 0); /* progress survives a timeout */
	if (getenv("SSMD_CUDA_QUICK"))
		steps = 16;
	if (getenv("SSMD_CUDA_F32_ONLY")) {
		low_dtype = half_dtype = SSM_DTYPE_F32;
		printf("SSMD_CUDA_F32_ONLY: the BF16 checks below run with F32 weights\n");
	}
	snprintf(path, sizeof(path), "%s/tiny-mamba", shared ? shared : "");
	if (ssm_model_load(path, &m)) {
		SKIP("no tiny-mamba fixture at %s: %s", path, ssmd_errmsg());
		return check_summary("cuda");
	}
	ssm_backend_opts_init(&o);
	o.kind = SSM_BACKEND_CUDA;
	rc = ssm_backend_open(m, &o, &gpu);
	if (rc == SSMD_EUNSUPPORTED) {
		SKIP("CUDA backend not available: %s", ssmd_errmsg());
		ssm_model_free(m);
		return check_summary("cuda");
	}
	CHECK_RC(rc, SSMD_OK);
	ssm_backend_close(gpu);
	gpu = NULL;

	if (want("fixtures")) {
		printf("HF fixtures (F32 tol %g vs float64, %g vs CPU; BF16 tol %g):\n",
		       TOL_REF, TOL_CPU, TOL_BF16);
		test_fixture(path);
		for (i = 0; local && i < sizeof(dirs) / sizeof(dirs[0]); i++) {
			char d[1024];
			snprintf(d, sizeof(d), "%s/%s", local, dirs[i]);
			test_fixture(d);
		}
	}

	if (open_backend(m, SSM_BACKEND_CPU, SSM_DTYPE_F32, 1, &cpu)) {
		CHECK(0, "open: %s", ssmd_errmsg());
		goto out;
	}
	if (want("cross")) {
		printf("states across backends (tol %g):\n", TOL_CPU);
		if (open_backend(m, SSM_BACKEND_CUDA, SSM_DTYPE_F32, 2, &gpu)) {
			CHECK(0, "open: %s", ssmd_errmsg());
			goto out;
		}
		test_cross(m, gpu, cpu, "GPU state -> CPU");
		test_cross(m, cpu, gpu, "CPU state -> GPU");
		test_pieces(m, gpu, cpu);
		test_slots(m, gpu);
		ssm_backend_close(gpu);
		gpu = NULL;
	}

	printf("batched decode (tol %g f32, %g bf16):\n", TOL_BATCH, TOL_BATCH_BF16);
	for (i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
		if (!want("batch") && !want(batches[i].name))
			continue;
		if (batches[i].whole) {
			printf("  (out_proj in one K slice:)\n");
			setenv("SSMD_CUDA_OUT_SPLIT", "1", 1);
		}
		test_batch(m,
			   batches[i].low == 2 ? half_dtype
			   : batches[i].low    ? low_dtype
					       : SSM_DTYPE_F32,
			   batches[i].n);
		unsetenv("SSMD_CUDA_OUT_SPLIT");
	}
	/* the backend's in_proj and out_proj GEMM at the fixture's shape
	 * (in_proj K 64: one block's stage is a whole row of 128 outputs) */
	if (want("batch") || want("batch-gemm")) {
		test_gemm_rows(m, low_dtype, 16);
		test_gemm_wg(m, low_dtype, 64);
	}

	/* the batched conv step's any-width path: the batches above run d_conv
	 * 4, which has its own instantiation */
	if (local && (want("batch") || want("batch-conv3"))) {
		ssm_model *m3 = NULL;
		char d[1024];

		snprintf(d, sizeof(d), "%s/conv3-rank7", local);
		CHECK_RC(rc = ssm_model_load(d, &m3), SSMD_OK);
		if (!rc) {
			printf("batched decode, d_conv 3 (%s):\n", d);
			test_batch(m3, SSM_DTYPE_F32, 9);
			test_batch(m3, low_dtype, 9);
			ssm_model_free(m3);
		}
	}

	if (want("checkpoints")) {
		/* chunks of 160 tokens: scan segments of 64, 64 and 32, two
		 * chunks, the x_proj GEMM whole (160-row buffers leave no room
		 * for a second K slice); then one chunk of 300 tokens in buffers
		 * of 1200 rows: x_proj in 4 K slices of 32 */
		static const struct {
			const char *chunk, *what;
			int slices;
		} runs[] = {{"160", "prefill chunks of 160 tokens", 1},
			    {"1200", "one chunk, x_proj in 4 K slices", 4}};
		int got = 0;

		printf("checkpoints inside prefill (tol %g):\n", TOL_CPU);
		for (i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
			printf(" %s:\n", runs[i].what);
			setenv("SSMD_CUDA_CHUNK", runs[i].chunk, 1);
			rc = open_backend(m, SSM_BACKEND_CUDA, SSM_DTYPE_F32, 1, &gpu);
			unsetenv("SSMD_CUDA_CHUNK");
			if (rc) {
				CHECK(0, "open: %s", ssmd_errmsg());
				goto out;
			}
			/* the 300-token prompt below takes the slices named */
			CHECK_RC(ssm_cuda_xproj_slices(gpu, 300, &got), SSMD_OK);
			CHECK(got == runs[i].slices, "x_proj slices %d, want %d", got,
			      runs[i].slices);
			CHECK_RC(ssm_cuda_xproj_slices(gpu, 0, &got), SSMD_EINVAL);
			CHECK_RC(ssm_cuda_xproj_slices(gpu, 300, NULL), SSMD_EINVAL);
			test_checkpoints(m, gpu, cpu);
			ssm_backend_close(gpu);
			gpu = NULL;
		}
	}

	if (want("xproj-big")) {
		printf("x_proj values past the persistent kernels' integer range:\n");
		test_xproj_big(path);
	}

	if (want("groups")) {
		printf("the batch-1 kernel's two forms, and out_proj parts past its integer range:\n");
		test_groups(path);
	}

	if (want("sampling")) {
		printf("sampling on the device:\n");
		/* batch 1 (the persistent kernel), 4 (the multi-row one where
		 * it serves) and 16 (the batched kernels), each with its inputs
		 * and tokens mapped and copied */
		for (int rows = 1; rows <= 16; rows *= 4) {
			test_decode_sample(m, SSM_DTYPE_F32, rows, 0);
			test_decode_sample(m, low_dtype, rows, 0);
			test_decode_sample(m, low_dtype, rows, 1);
		}
	}

	if (big && want("big")) {
		printf("mamba-130m-shaped random model:\n");
		test_big(big);
	}
out:
	ssm_backend_close(gpu);
	ssm_backend_close(cpu);
	ssm_model_free(m);
	return check_summary("cuda");
}
