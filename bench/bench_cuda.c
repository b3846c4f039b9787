/*
 * bench_cuda — the CUDA backend's benchmark table (issue 5).
 *
 *   bench_cuda LABEL=MODEL_DIR ...      e.g. 130m=/tmp/m130 1.4b=/tmp/m14b
 *
 * For each model (random weights of a real shape, from ssm-mkmodel), BF16
 * weights on the device, 64 slots whose states were first filled by a
 * 32-token prefill (never timed on zero states):
 *   - decode ms/step at batch 1, 2, 4, 8, 16, 64 (ssm_decode_sample, greedy:
 *     the logits stay on the device), median of 100 steps after 20 warm-up,
 *     and at batch 1 and 64 sampling at temperature 0.8;
 *   - prefill tokens/s at 2048 and 16384 tokens, median of 5 / 3 runs;
 *   - scoring 2048 tokens (every position's next token), wall time, best of
 *     3: log-probabilities formed by the backend (lp_next / logprobs), and,
 *     in the note, every position's logits to the host + ssm_logprob();
 *   - prefill slowdown with checkpoints every 64 / 256 / 1024 tokens (16k):
 *     CK_PAIRS runs without and with them, alternating, the median of the
 *     pairs' slowdowns and their range;
 *   - decode throughput loss at batch 16 while slot 0 is snapshotted
 *     (ssm_slot_get) every 256 steps, over 1024 steps;
 *   - snapshot latency (slot -> host state) and restore latency (host state
 *     -> slot -> logits -> first token), median of 20.
 *   - where a 2k prefill's device time goes: the mean of 3 runs of
 *     ssm_cuda_prefill_split() (an event after each part of each layer),
 *     summed per part over the layers;
 *   - where a decode step's device time goes at batch 16 and 64: the mean of
 *     10 ungraphed steps of ssm_cuda_decode_split() (an event after each
 *     part of each layer), summed per part over the layers;
 *   - where a step of 1, 2 or 4 rows spends its time inside the persistent
 *     kernels: each phase's share of 3 traced steps
 *     (ssm_cuda_persist_split()) times the measured step, with the shortest
 *     / mean / longest of the blocks' own times for each phase.
 * With BENCH_CUDA_DECODE_ONLY set, the decode rows alone. With
 * BENCH_CUDA_PROFILE set, only decode at batch 1 and 64 (20 timed steps
 * each) and one 2k prefill run, for a profiler's kernel summary; with both
 * PROFILE and PREFILL_ONLY, the 2k prefill's warm-up run is the first work
 * on the device (tools/gpu_run.sh profile counts kernels from there).
 * With BENCH_CUDA_PREFILL_ONLY set, the prefill rows alone (tokens/s,
 * split, scoring, checkpoints).
 * Device times come from CUDA events on the backend's stream
 * (ssm_cuda_timer_*) around the synchronous calls. The roofline column is
 * the floor time over the measured time, the floor being the larger of
 * bytes / 4.3 TB/s and FLOPs / 790 TFLOP/s (H200, measured ceilings).
 * Prints one table on stdout; progress on stderr.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ssm.h"
#include "ssm_cuda.h"

#define HBM_BPS 4.3e12
#define BF16_FLOPS 790e12
#define N_SLOTS 64

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Pairs of 16k prefills (without, with checkpoints) per checkpoint row. */
#define CK_PAIRS 7

static double median(double *v, int n)
{
	qsort(v, n, sizeof(double), cmp_d);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "bench_cuda: %s: %s (%s)\n", what, ssmd_strerror(rc), ssmd_errmsg());
	exit(1);
}

#define TRY(what, call)                      \
	do {                                 \
		int rc_ = (call);            \
		if (rc_)                     \
			die(what, rc_);      \
	} while (0)

static uint64_t lcg = 0x12345678;
static int profile; /* BENCH_CUDA_PROFILE: the short run described above */
static int decode_only; /* BENCH_CUDA_DECODE_ONLY: the decode rows alone */
static int prefill_only; /* BENCH_CUDA_PREFILL_ONLY: the prefill rows alone */

static void fill_tokens(int32_t *t, size_t n, int vocab)
{
	for (size_t i = 0; i < n; i++) {
		lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
		t[i] = (int32_t)((lcg >> 33) % (uint64_t)vocab);
	}
}

/* Sizes of the model, for the roofline. */
typedef struct shape {
	double w_bytes;   /* bytes of weights one decode step reads (bf16 matrices + f32 vectors) */
	double mm_params; /* multiply-accumulates per token in the GEMMs, without lm_head */
	double head;      /* lm_head multiply-accumulates per token */
	double state_bytes; /* one canonical state's arrays */
	double state_rw;  /* state bytes a decode step reads + writes per slot */
} shape;

static shape shape_of(const ssm_config *c)
{
	const double D = c->d_model, E = c->d_inner, N = c->d_state, K = c->d_conv,
		     R = c->dt_rank, V = c->vocab_size, L = c->n_layer;
	shape s;

	s.mm_params = L * (2 * E * D + (R + 2 * N) * E + E * R + D * E);
	s.head = V * D;
	s.w_bytes = 2 * (s.mm_params + s.head) +
		    4 * L * (D + E * K + 3 * E + E * N);
	s.state_bytes = 4 * (L * E * N + L * E * (K - 1) + D + L * E);
	s.state_rw = 2 * 4 * (L * E * N + L * E * (K - 1) + L * E) + 4 * D;
	return s;
}

static void row(const char *model, const char *figure, double value,
		const char *unit, double roof, const char *note)
{
	char r[32];

	if (roof > 0)
		snprintf(r, sizeof r, "%5.1f%%", 100 * roof);
	else
		snprintf(r, sizeof r, "%6s", "-");
	printf("| %-5s | bf16  | %-34s | %10.3f | %-8s | %s %s\n", model, figure,
	       value, unit, r, note);
	fflush(stdout);
}

typedef struct ck_count {
	int n;
} ck_count;

static int ck_cb(void *ctx, size_t pos, const ssm_state *st)
{
	(void)pos;
	(void)st;
	((ck_count *)ctx)->n++;
	return 0;
}

/* Wall time of scoring n tokens from an empty slot 0 (every position's
 * next token), best of 3: with the log-probabilities formed by the backend
 * (host = 0), or with every position's logits brought to the host and
 * ssm_logprob() run there (host = 1, the way before lp_next). */
static double score_ms(ssm_backend *b, int V, const int32_t *toks, size_t n, int host)
{
	int32_t *nx = malloc(n * sizeof *nx);
	float *lp = malloc(n * sizeof *lp);
	float *all = host ? malloc(n * (size_t)V * sizeof *all) : NULL;
	double best = 0;

	if (!nx || !lp || (host && !all)) {
		fprintf(stderr, "bench_cuda: out of memory\n");
		exit(1);
	}
	for (size_t i = 0; i < n; i++)
		nx[i] = i + 1 < n ? toks[i + 1] : -1;
	for (int r = 0; r < 3; r++) {
		ssm_prefill_args pa = {0};
		double t0;

		pa.tokens = toks;
		pa.n_tokens = n;
		if (host) {
			pa.all_logits = all;
		} else {
			pa.lp_next = nx;
			pa.logprobs = lp;
		}
		TRY("reset", ssm_slot_reset(b, 0));
		t0 = now_s();
		TRY("score prefill", ssm_prefill(b, 0, &pa));
		for (size_t i = 0; host && i + 1 < n; i++)
			lp[i] = (float)ssm_logprob(all + i * (size_t)V, V, nx[i]);
		t0 = (now_s() - t0) * 1e3;
		if (!r || t0 < best)
			best = t0;
	}
	free(nx);
	free(lp);
	free(all);
	return best;
}

/* Device time of one prefill of n tokens into slot 0 (reset first). */
static double prefill_ms(ssm_backend *b, const int32_t *toks, size_t n,
			 size_t every, float *logits)
{
	size_t *pos = NULL, np = 0;
	ck_count cc = {0};
	ssm_prefill_args pa = {0};
	float ms;

	if (every) {
		pos = malloc((n / every + 1) * sizeof(size_t));
		if (!pos)
			die("prefill", SSMD_ENOMEM);
		for (size_t p = every; p <= n; p += every)
			pos[np++] = p;
	}
	pa.tokens = toks;
	pa.n_tokens = n;
	pa.last_logits = logits;
	pa.ckpt_pos = pos;
	pa.n_ckpt = np;
	pa.ckpt_fn = np ? ck_cb : NULL;
	pa.ckpt_ctx = &cc;
	TRY("reset", ssm_slot_reset(b, 0));
	TRY("timer", ssm_cuda_timer_start(b));
	TRY("prefill", ssm_prefill(b, 0, &pa));
	TRY("timer", ssm_cuda_timer_stop(b, &ms));
	if ((size_t)cc.n != np)
		die("prefill: checkpoint count", SSMD_EINVAL);
	free(pos);
	return ms;
}

/* Rows of the per-part device time of a 2k prefill, mean of 3 runs. */
static void prefill_split(const char *label, ssm_backend *b, const int32_t *toks,
			  float *logits)
{
	double ms[SSM_CUDA_N_PARTS] = {0}, total = 0;
	ssm_prefill_args pa = {0};
	char fig[64], note[64];

	pa.tokens = toks;
	pa.n_tokens = 2048;
	pa.last_logits = logits;
	for (int r = 0; r < 3; r++) {
		TRY("reset", ssm_slot_reset(b, 0));
		TRY("prefill split", ssm_cuda_prefill_split(b, 0, &pa, ms));
	}
	for (int p = 0; p <= SSM_CUDA_OTHER; p++)
		total += ms[p] / 3;
	for (int p = 0; p <= SSM_CUDA_OTHER; p++) {
		snprintf(fig, sizeof fig, "prefill 2k split: %s", ssm_cuda_part_names[p]);
		snprintf(note, sizeof note, "(%.1f%% of %.2f ms, all layers)",
			 100 * ms[p] / 3 / total, total);
		row(label, fig, ms[p] / 3, "ms", 0, note);
	}
}

/* Rows of the per-part device time of an ungraphed decode step of n rows,
 * mean of 10 steps after 2 warm-up steps. */
static void decode_split(const char *label, ssm_backend *b, const int *slots,
			 const int32_t *toks, int n, int n_layer)
{
	static const int order[] = {SSM_CUDA_TAIL, SSM_CUDA_NORM, SSM_CUDA_IN_PROJ,
				    SSM_CUDA_CONV, SSM_CUDA_X_PROJ, SSM_CUDA_SSM_STEP,
				    SSM_CUDA_OUT_PROJ, SSM_CUDA_HEAD};
	double ms[SSM_CUDA_N_PARTS] = {0}, warm[SSM_CUDA_N_PARTS] = {0}, total = 0;
	char fig[64], note[96];
	const int runs = 10;
	int r, cluster = 0;

	/* the conv step and x_proj as one kernel: one part */
	TRY("conv step form", ssm_cuda_conv_xproj(b, &cluster));

	for (r = 0; r < 2; r++)
		TRY("decode split", ssm_cuda_decode_split(b, slots, toks, n, warm));
	for (r = 0; r < runs; r++)
		TRY("decode split", ssm_cuda_decode_split(b, slots, toks, n, ms));
	for (r = 0; r < SSM_CUDA_N_PARTS; r++)
		total += ms[r] / runs;
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		const int p = order[i];
		const int per_layer = p != SSM_CUDA_TAIL && p != SSM_CUDA_HEAD;

		if (ms[p] == 0)
			continue;
		snprintf(fig, sizeof fig, "decode b%d split: %s", n,
			 p == SSM_CUDA_CONV && cluster ? "conv + x_proj" : ssm_cuda_part_names[p]);
		if (per_layer)
			snprintf(note, sizeof note, "(%.1f%% of %.3f ms; %.1f us per layer)",
				 100 * ms[p] / runs / total, total,
				 1e3 * ms[p] / runs / n_layer);
		else
			snprintf(note, sizeof note, "(%.1f%% of %.3f ms)",
				 100 * ms[p] / runs / total, total);
		row(label, fig, ms[p] / runs, "ms", 0, note);
	}
}

/* The median device time of `steps` (at most DECODE_MAX_STEPS) decode
 * steps of rows 0..n-1 after 20 of warm-up, each step fed the tokens the
 * previous one sampled. */
#define DECODE_MAX_STEPS 128
static double decode_ms(ssm_backend *b, const int *slots, int32_t *cur, int n,
			const ssm_sampler *sp, uint64_t *index, int steps)
{
	int32_t next[N_SLOTS];
	double t[DECODE_MAX_STEPS];
	float ms;
	int k, s;

	if (steps > DECODE_MAX_STEPS)
		steps = DECODE_MAX_STEPS;

	for (k = 0; k < 20 + steps; k++) {
		TRY("timer", ssm_cuda_timer_start(b));
		TRY("decode", ssm_decode_sample(b, slots, cur, n, sp, index, next));
		TRY("timer", ssm_cuda_timer_stop(b, &ms));
		memcpy(cur, next, n * sizeof(int32_t));
		for (s = 0; s < n; s++)
			index[s]++;
		if (k >= 20)
			t[k - 20] = ms;
	}
	return median(t, steps);
}

/* Where a step's time goes inside the persistent kernel that runs n rows:
 * the mean share of each phase over 3 traced steps, times the measured
 * step, and the spread of the blocks' own times for each phase (shortest /
 * mean / longest: at a barrier, the shortest wait is the last arrival's).
 * Nothing where no persistent kernel serves n rows. */
static void persist_split(const char *label, ssm_backend *b, const int *slots,
			  const int32_t *toks, int n, double step_ms)
{
	double share[SSM_CUDA_N_PHASES] = {0}, spread[SSM_CUDA_N_PHASES - 1][3] = {{0}};
	char fig[64], note[96];
	int r, rc;

	for (r = 0; r < 3; r++)
		if ((rc = ssm_cuda_persist_split(b, slots, toks, n, share, spread))) {
			if (rc == SSMD_EUNSUPPORTED)
				return;
			die("decode split", rc);
		}
	for (int p = 0; p < SSM_CUDA_N_PHASES; p++) {
		snprintf(fig, sizeof fig, "decode b%d split: %s", n, ssm_cuda_phase_names[p]);
		if (p < SSM_CUDA_N_PHASES - 1)
			snprintf(note, sizeof note,
				 "(%.1f%% of the step, all layers; blocks %.3f / %.3f / %.3f)",
				 100 * share[p] / 3, step_ms * spread[p][0] / 3,
				 step_ms * spread[p][1] / 3, step_ms * spread[p][2] / 3);
		else
			snprintf(note, sizeof note, "(%.1f%% of the step, all layers)",
				 100 * share[p] / 3);
		row(label, fig, step_ms * share[p] / 3, "ms", 0, note);
	}
}

static void bench_model(const char *label, const char *dir)
{
	ssm_model *m = NULL;
	ssm_backend *b = NULL;
	ssm_backend_opts o;
	const ssm_config *c;
	shape sh;
	int32_t *toks, next[N_SLOTS], cur[N_SLOTS];
	int slots[N_SLOTS];
	uint64_t index[N_SLOTS];
	ssm_sampler sp[N_SLOTS];
	ssm_state *st = NULL;
	float *logits;
	double t[128], t0, plain = 0, snap = 0;
	static const int batches[] = {1, 2, 4, 8, 16, 64};
	static const size_t prefills[] = {2048, 16384};
	static const size_t everies[] = {64, 256, 1024};
	char fig[64], note[128], gemm[48];
	const char *form;
	int i, k, s, groups = -1, gf[6], wf[4];

	t0 = now_s();
	TRY("load", ssm_model_load(dir, &m));
	c = ssm_model_config(m);
	sh = shape_of(c);
	ssm_backend_opts_init(&o);
	o.kind = SSM_BACKEND_CUDA;
	o.n_slots = N_SLOTS;
	o.weight_dtype = SSM_DTYPE_BF16;
	TRY("open", ssm_backend_open(m, &o, &b));
	fprintf(stderr, "%s: %dx%d, vocab %d loaded and uploaded in %.1f s\n", label,
		c->d_model, c->n_layer, c->vocab_size, now_s() - t0);
	toks = malloc(16384 * sizeof(int32_t));
	logits = malloc((size_t)c->vocab_size * sizeof(float));
	if (!toks || !logits || ssm_model_state_alloc(m, &st))
		die("alloc", SSMD_ENOMEM);

	/* every slot gets a real state first (the prefill rows reset slot 0
	 * and use no other: a profile of them starts at the first 2k prefill) */
	for (s = 0; s < N_SLOTS && !(profile && prefill_only); s++) {
		ssm_prefill_args pa = {0};
		fill_tokens(toks, 32, c->vocab_size);
		pa.tokens = toks;
		pa.n_tokens = 32;
		TRY("prefill", ssm_prefill(b, s, &pa));
		slots[s] = s;
		index[s] = 32;
		sp[s] = (ssm_sampler){.temperature = 0, .top_k = 0, .top_p = 1, .seed = s};
	}
	fill_tokens(cur, N_SLOTS, c->vocab_size);

	/* decode; the batch-1 kernel's form (ssm_cuda_decode1_groups) noted */
	TRY("decode groups", ssm_cuda_decode1_groups(b, &groups));
	form = groups < 0 ? "" : groups ? " C, D by channel group" : " C by channel, D by row";
	for (i = 0; i < (int)(sizeof(batches) / sizeof(batches[0])); i++) {
		int n = batches[i];
		const int steps = profile ? 20 : 100;

		if ((profile && n != 1 && n != 64) || prefill_only)
			continue;
		double bytes = sh.w_bytes + n * (sh.state_rw + 4.0 * c->vocab_size);
		double flops = 2.0 * n * (sh.mm_params + sh.head);
		double floor_s, med;

		med = decode_ms(b, slots, cur, n, sp, index, steps);
		floor_s = fmax(bytes / HBM_BPS, flops / BF16_FLOPS);
		snprintf(fig, sizeof fig, "decode batch %d", n);
		/* in_proj and out_proj by the backend's GEMM: tile x K slices x
		 * clusters */
		TRY("GEMM form", ssm_cuda_gemm_rows(b, n, gf));
		/* ... or by the warpgroup GEMM: tile x K slices */
		TRY("warpgroup GEMM form", ssm_cuda_gemm_wg(b, n, wf));
		if (gf[0] || gf[3])
			snprintf(gemm, sizeof gemm, " in_proj %dx%dx%d, out_proj %dx%dx%d", gf[0],
				 gf[1], gf[2], gf[3], gf[4], gf[5]);
		else if (wf[0] || wf[2])
			snprintf(gemm, sizeof gemm, " in_proj %dx%d, out_proj %dx%d (warpgroup)",
				 wf[0], wf[1], wf[2], wf[3]);
		else
			gemm[0] = 0;
		snprintf(note, sizeof note, "(floor %.3f ms: %.0f MB moved)%s%s",
			 floor_s * 1e3, bytes / 1e6,
			 n == 1 ? form : "", gemm);
		row(label, fig, med, "ms/step", floor_s * 1e3 / med, note);
		if (n <= 4)
			persist_split(label, b, slots, cur, n, med);
	}
	/* the same steps sampling at temperature 0.8 (no top-k / top-p: on the
	 * device), against greedy above */
	for (i = 0; i < 2 && !profile && !prefill_only; i++) {
		const int n = i ? 64 : 1;

		for (s = 0; s < n; s++)
			sp[s].temperature = 0.8f;
		snprintf(fig, sizeof fig, "decode batch %d, temperature 0.8", n);
		row(label, fig, decode_ms(b, slots, cur, n, sp, index, 100), "ms/step", 0, "");
		for (s = 0; s < n; s++)
			sp[s].temperature = 0.0f;
	}
	if (!profile && !prefill_only)
		for (i = 0; i < 2; i++)
			decode_split(label, b, slots, cur, i ? 64 : 16, c->n_layer);

	if (decode_only)
		goto done;
	/* prefill */
	for (i = 0; i < 2; i++) {
		size_t n = prefills[i];
		int runs = profile ? 1 : n > 4096 ? 3 : 5;
		double flops = 2.0 * n * sh.mm_params + 2.0 * sh.head;
		double med;

		if (profile && n != 2048)
			continue;

		fill_tokens(toks, n, c->vocab_size);
		prefill_ms(b, toks, n, 0, logits); /* warm-up */
		for (k = 0; k < runs; k++)
			t[k] = prefill_ms(b, toks, n, 0, logits);
		med = median(t, runs);
		snprintf(fig, sizeof fig, "prefill %zu tokens", n);
		snprintf(note, sizeof note, "(%.1f ms; floor %.2f ms of GEMM FLOPs)", med,
			 flops / BF16_FLOPS * 1e3);
		row(label, fig, n / (med * 1e-3), "tok/s", flops / BF16_FLOPS * 1e3 / med, note);
		if (n == 2048)
			prefill_split(label, b, toks, logits);
	}

	if (profile)
		goto done;
	/* scoring 2048 tokens: log-probabilities on the device or on the host */
	{
		const double dev = score_ms(b, c->vocab_size, toks, 2048, 0),
			     host = score_ms(b, c->vocab_size, toks, 2048, 1);

		snprintf(note, sizeof note, "(wall; logits to the host + ssm_logprob: %.1f ms)",
			 host);
		row(label, "score 2048 tokens, log-probs on the device", dev, "ms", 0, note);
	}
	/* checkpoints inside a 16k prefill: runs without and with them
	 * alternate, CK_PAIRS pairs, so a drift of the clocks between the two
	 * kinds cannot pass for a cost; the median of the pairs' slowdowns, their
	 * range in the note */
	for (i = 0; i < 3; i++) {
		size_t e = everies[i];
		double plain_ms[CK_PAIRS], ck_ms[CK_PAIRS], slow[CK_PAIRS], med;

		for (k = 0; k < CK_PAIRS; k++) {
			plain_ms[k] = prefill_ms(b, toks, 16384, 0, logits);
			ck_ms[k] = prefill_ms(b, toks, 16384, e, logits);
			slow[k] = 100 * (ck_ms[k] - plain_ms[k]) / plain_ms[k];
		}
		med = median(slow, CK_PAIRS); /* sorts slow */
		snprintf(fig, sizeof fig, "prefill 16k, checkpoint every %zu", e);
		snprintf(note, sizeof note,
			 "(%d pairs: %.1f..%.1f%%; %.1f vs %.1f ms; %zu states of %.1f MB)",
			 CK_PAIRS, slow[0], slow[CK_PAIRS - 1], median(ck_ms, CK_PAIRS),
			 median(plain_ms, CK_PAIRS), 16384 / e, sh.state_bytes / 1e6);
		row(label, fig, med, "% slower", 0, note);
	}
	if (prefill_only)
		goto done;

	/* decode throughput loss while slot 0 is snapshotted every 256 steps:
	 * alternate plain and snapshotting runs of 1024 steps, medians */
	{
		double tp[3], ts[3];
		int r;

		for (r = 0; r < 3; r++) {
			for (int with = 0; with < 2; with++) {
				t0 = now_s();
				for (k = 0; k < 1024; k++) {
					TRY("decode", ssm_decode_sample(b, slots, cur, 16, sp,
									index, next));
					memcpy(cur, next, 16 * sizeof(int32_t));
					for (s = 0; s < 16; s++)
						index[s]++;
					if (with && k % 256 == 255)
						TRY("snapshot", ssm_slot_get(b, 0, st));
				}
				(with ? ts : tp)[r] = now_s() - t0;
			}
		}
		plain = median(tp, 3);
		snap = median(ts, 3);
		snprintf(note, sizeof note, "(1024 steps: %.1f ms plain, %.1f ms with 4 snapshots)",
			 plain * 1e3, snap * 1e3);
		row(label, "decode b16 loss, snapshot every 256", 100 * (snap - plain) / plain,
		    "%", 0, note);
	}

	/* snapshot and restore latency */
	{
		double tr[20];

		for (k = 0; k < 20; k++) {
			t0 = now_s();
			TRY("snapshot", ssm_slot_get(b, 1, st));
			t[k] = (now_s() - t0) * 1e3;
		}
		for (k = 0; k < 20; k++) {
			int32_t first;
			t0 = now_s();
			TRY("restore", ssm_slot_set(b, 2, st));
			TRY("restore", ssm_slot_logits(b, 2, logits));
			first = ssm_sample(logits, c->vocab_size, &sp[2], st->n_tokens);
			tr[k] = (now_s() - t0) * 1e3;
			if (first < 0)
				die("sample", -first);
		}
		double ms_get = median(t, 20), ms_set = median(tr, 20);
		snprintf(note, sizeof note, "(%.1f MB, %.1f GB/s over PCIe)", sh.state_bytes / 1e6,
			 sh.state_bytes / (ms_get * 1e-3) / 1e9);
		row(label, "snapshot slot -> host", ms_get, "ms", 0, note);
		snprintf(note, sizeof note, "(host -> slot -> logits -> token)");
		row(label, "restore host -> first token", ms_set, "ms", 0, note);
	}

done:
	ssm_state_free(st);
	free(toks);
	free(logits);
	ssm_backend_close(b);
	ssm_model_free(m);
}

int main(int argc, char **argv)
{
	int i;

	if (argc < 2) {
		fprintf(stderr, "usage: bench_cuda LABEL=MODEL_DIR ...\n");
		return 2;
	}
	profile = getenv("BENCH_CUDA_PROFILE") != NULL;
	decode_only = getenv("BENCH_CUDA_DECODE_ONLY") != NULL;
	prefill_only = getenv("BENCH_CUDA_PREFILL_ONLY") != NULL;
	printf("| model | dtype | %-34s | %10s | %-8s | roofline\n", "figure", "value", "unit");
	printf("|-------|-------|------------------------------------|------------|----------|---------\n");
	for (i = 1; i < argc; i++) {
		char *eq = strchr(argv[i], '=');
		if (!eq) {
			fprintf(stderr, "bench_cuda: argument '%s' is not LABEL=DIR\n", argv[i]);
			return 2;
		}
		*eq = 0;
		bench_model(argv[i], eq + 1);
	}
	return 0;
}
