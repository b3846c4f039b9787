/*
 * cpu.c — the CPU reference backend: plain C float32, threaded over rows and
 * channels with a small pthreads pool.
 *
 * The math is Hugging Face's MambaMixer slow path. Shapes below use
 * d = d_model, di = d_inner, N = d_state, K = d_conv, R = dt_rank, V = vocab.
 *
 *   h   = embed[token]                                   (d)  residual, f32
 *   per layer l:
 *     u      = rmsnorm(h) * norm_w                       (d)
 *     x, z   = split(in_proj_w @ u + in_proj_b)          (di), (di)
 *     win    = [conv_state (K-1, oldest first), x]       (di, K)
 *     xc     = silu(sum_k conv_w[c][k] * win[c][k] + conv_b[c])
 *     conv_state = win[:, 1:]
 *     dt_low, B, C = split(x_proj_w @ xc)                (R), (N), (N)
 *     dt     = softplus(dt_proj_w @ dt_low + dt_proj_b)  (di)
 *     A      = -exp(A_log)                               (di, N)
 *     s[c][n] = exp(dt[c] A[c][n]) s[c][n] + (dt[c] B[n]) xc[c]
 *     y[c]   = sum_n s[c][n] C[n] + D[c] xc[c]
 *     h     += out_proj_w @ (y * silu(z)) + out_proj_b
 *   logits = lm_head @ (rmsnorm(h) * norm_f)             (V)
 *
 * One routine (forward_rows) runs a batch of *rows*, each a (slot, token)
 * pair: a decode step is one row per slot, a prefill chunk is consecutive
 * tokens of one slot. The projections are position-independent and run as
 * one matrix product over all rows, which reads each weight once per batch;
 * the conv and the scan walk the rows in order per channel, so rows of the
 * same slot see each other's updates. Every output element is computed by
 * the same loop in the same order whatever the batch, chunking or thread
 * count, which is what makes batched decode, chunked prefill, token-by-token
 * decode and get/set round trips agree bit for bit.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ssm_impl.h"

#define PREFILL_CHUNK 64 /* positions per prefill batch */
#define MAX_THREADS 64

/* ---------------------------------------------------------- thread pool -- */

/* Runs fn(ctx, begin, end) over [0, n) split into one contiguous chunk per
 * thread; the caller's thread takes the first chunk. */
typedef void (*pool_fn)(void *ctx, int begin, int end);

typedef struct pool {
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	pthread_t *threads;
	int n_threads;   /* including the caller */
	int n_started;   /* worker threads running */
	uint64_t gen;    /* bumped for every job */
	int pending;     /* workers that have not finished the current job */
	int stop;
	pool_fn fn;
	void *ctx;
	int n, n_chunks;
} pool;

typedef struct worker_arg {
	pool *p;
	int idx;
} worker_arg;

static void chunk_of(int n, int n_chunks, int i, int *b, int *e)
{
	*b = (int)((int64_t)n * i / n_chunks);
	*e = (int)((int64_t)n * (i + 1) / n_chunks);
}

static void *pool_worker(void *arg)
{
	worker_arg *wa = arg;
	pool *p = wa->p;
	int idx = wa->idx;
	uint64_t seen = 0;

	free(wa);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (p->gen == seen && !p->stop)
			pthread_cond_wait(&p->go, &p->mu);
		if (p->stop)
			break;
		seen = p->gen;
		if (idx < p->n_chunks) {
			int b, e;
			pool_fn fn = p->fn;
			void *ctx = p->ctx;
			chunk_of(p->n, p->n_chunks, idx, &b, &e);
			pthread_mutex_unlock(&p->mu);
			fn(ctx, b, e);
			pthread_mutex_lock(&p->mu);
		}
		if (--p->pending == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void pool_stop(pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n_started; i++)
		pthread_join(p->threads[i], NULL);
	free(p->threads);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	pthread_mutex_destroy(&p->mu);
}

static int pool_start(pool *p, int n_threads)
{
	memset(p, 0, sizeof *p);
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	p->n_threads = n_threads;
	if (n_threads > 1) {
		p->threads = calloc((size_t)n_threads - 1, sizeof *p->threads);
		if (!p->threads)
			goto fail;
	}
	for (int i = 1; i < n_threads; i++) {
		worker_arg *wa = malloc(sizeof *wa);
		if (!wa)
			goto fail;
		wa->p = p;
		wa->idx = i;
		if (pthread_create(&p->threads[i - 1], NULL, pool_worker, wa)) {
			free(wa);
			goto fail;
		}
		p->n_started++;
	}
	return SSMD_OK;
fail:
	pool_stop(p);
	return ssmd_err_set(SSMD_ENOMEM, "cpu backend: cannot start %d threads",
			    n_threads);
}

/* grain: the least work (items) worth a thread of its own. */
static void pool_run(pool *p, int n, int grain, pool_fn fn, void *ctx)
{
	int n_chunks = grain > 0 ? (n + grain - 1) / grain : n;

	if (n_chunks > p->n_threads)
		n_chunks = p->n_threads;
	if (n_chunks <= 1) {
		fn(ctx, 0, n);
		return;
	}
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->ctx = ctx;
	p->n = n;
	p->n_chunks = n_chunks;
	p->pending = p->n_started;
	p->gen++;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);

	int b, e;
	chunk_of(n, n_chunks, 0, &b, &e);
	fn(ctx, b, e);

	pthread_mutex_lock(&p->mu);
	while (p->pending > 0)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

/* ------------------------------------------------------------- backend -- */

typedef struct cpu_layer {
	float *norm;   /* (d) */
	float *in_w;   /* (2 di, d) */
	float *in_b;   /* (2 di) or NULL */
	float *conv_w; /* (di, K) */
	float *conv_b; /* (di) or NULL */
	float *x_w;    /* (R + 2N, di) */
	float *dt_w;   /* (di, R) */
	float *dt_b;   /* (di) */
	float *A;      /* (di, N) = -exp(A_log) */
	float *D;      /* (di) */
	float *out_w;  /* (d, di) */
	float *out_b;  /* (d) or NULL */
} cpu_layer;

typedef struct cpu {
	ssm_config c;
	float *embed;    /* (V, d) */
	float *norm_f;   /* (d) */
	float *lm_head;  /* (V, d); == embed when tied */
	cpu_layer *layers;
	ssm_state **slots; /* (n_slots) canonical states, the slots themselves */
	pool pool;
	int pool_started;

	/* scratch for up to max_rows rows */
	int max_rows;
	int *row_slot;   /* (rows) slot of each row */
	int32_t *row_tok;/* (rows) */
	float *h;        /* (rows, d) residual stream */
	float *u;        /* (rows, d) normed input */
	float *xz;       /* (rows, 2 di) in_proj output: x then z */
	float *xc;       /* (rows, di) conv + silu output */
	float *xdbl;     /* (rows, R + 2N) x_proj output: dt_low, B, C */
	float *dt;       /* (rows, di) dt_proj output before softplus */
	float *y;        /* (rows, di) gated scan output */
	float *o;        /* (rows, d) out_proj output */
	ssm_state *ckpt; /* checkpoint scratch handed to ckpt_fn */
	float *lp_logits; /* (PREFILL_CHUNK, V) a prefill's logits for logprobs,
			   * allocated on first use */
} cpu;

static cpu *CPU(ssm_backend *b)
{
	return b->impl;
}

/* Dot products in one fixed order: 8 interleaved partial sums over k (lane
 * j sums w[k+j] * x[k+j] for k = 0, 8, 16, ...), combined pairwise, then the
 * tail in sequence. dot() and dot4() give bit-identical results for the
 * same vectors; dot4 shares the loads of w across four rows of x. The lanes
 * are GCC vector types (4 floats), which any x86-64 or arm64 target maps
 * to SIMD registers without changing the order of operations. */
typedef float v4f __attribute__((vector_size(16)));

static v4f load4(const float *p)
{
	v4f v;

	memcpy(&v, p, sizeof v); /* unaligned load */
	return v;
}

static float dot_finish(v4f lo, v4f hi, const float *w, const float *x,
			int k, int n)
{
	float s = ((lo[0] + lo[1]) + (lo[2] + lo[3])) +
		  ((hi[0] + hi[1]) + (hi[2] + hi[3]));

	for (; k < n; k++)
		s += w[k] * x[k];
	return s;
}

static float dot(const float *w, const float *x, int n)
{
	v4f lo = { 0 }, hi = { 0 };
	int k = 0;

	for (; k + 8 <= n; k += 8) {
		lo += load4(w + k) * load4(x + k);
		hi += load4(w + k + 4) * load4(x + k + 4);
	}
	return dot_finish(lo, hi, w, x, k, n);
}

/* out[i * ldo] = dot(w, x + i * ldx, n) for i in 0..3 */
static void dot4(const float *w, const float *x, size_t ldx, int n,
		 float *out, size_t ldo)
{
	const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
	v4f l0 = { 0 }, h0 = { 0 }, l1 = { 0 }, h1 = { 0 };
	v4f l2 = { 0 }, h2 = { 0 }, l3 = { 0 }, h3 = { 0 };
	int k = 0;

	for (; k + 8 <= n; k += 8) {
		v4f wl = load4(w + k), wh = load4(w + k + 4);
		l0 += wl * load4(x0 + k);
		h0 += wh * load4(x0 + k + 4);
		l1 += wl * load4(x1 + k);
		h1 += wh * load4(x1 + k + 4);
		l2 += wl * load4(x2 + k);
		h2 += wh * load4(x2 + k + 4);
		l3 += wl * load4(x3 + k);
		h3 += wh * load4(x3 + k + 4);
	}
	out[0] = dot_finish(l0, h0, w, x0, k, n);
	out[ldo] = dot_finish(l1, h1, w, x1, k, n);
	out[2 * ldo] = dot_finish(l2, h2, w, x2, k, n);
	out[3 * ldo] = dot_finish(l3, h3, w, x3, k, n);
}

static float silu(float x)
{
	return x / (1.0f + expf(-x));
}

/* torch.nn.functional.softplus with its default threshold 20. */
static float softplus(float x)
{
	return x > 20.0f ? x : log1pf(expf(x));
}

/* out (rows, ldo) = x (rows, ldx) @ W^T (n_in -> n_out) + bias. */
typedef struct matmul_job {
	float *out;
	const float *w, *bias, *x;
	int rows, n_in, ldx, ldo;
} matmul_job;

static void matmul_part(void *ctx, int o0, int o1)
{
	const matmul_job *j = ctx;

	for (int o = o0; o < o1; o++) {
		const float *wr = j->w + (size_t)o * j->n_in;
		float b = j->bias ? j->bias[o] : 0.0f;
		int r = 0;
		for (; r + 4 <= j->rows; r += 4)
			dot4(wr, j->x + (size_t)r * j->ldx, (size_t)j->ldx,
			     j->n_in, j->out + (size_t)r * j->ldo + o,
			     (size_t)j->ldo);
		for (; r < j->rows; r++)
			j->out[(size_t)r * j->ldo + o] =
				dot(wr, j->x + (size_t)r * j->ldx, j->n_in);
		if (j->bias)
			for (r = 0; r < j->rows; r++)
				j->out[(size_t)r * j->ldo + o] += b;
	}
}

static void matmul(cpu *p, float *out, int ldo, const float *w,
		   const float *bias, const float *x, int ldx, int rows,
		   int n_in, int n_out)
{
	matmul_job j = { out, w, bias, x, rows, n_in, ldx, ldo };
	/* about 32k multiply-adds per chunk before a thread pays off */
	int grain = 32768 / (n_in * rows) + 1;

	pool_run(&p->pool, n_out, grain, matmul_part, &j);
}

/* out = x / sqrt(mean(x^2) + eps) * w over d elements; the mean in double. */
static void rmsnorm(float *out, const float *x, const float *w, int d,
		    float eps)
{
	double ss = 0.0;

	for (int i = 0; i < d; i++)
		ss += (double)x[i] * x[i];
	float r = (float)(1.0 / sqrt(ss / d + (double)eps));
	for (int i = 0; i < d; i++)
		out[i] = w[i] * (x[i] * r);
}

/* The conv and scan passes: per channel, the rows in order. */
typedef struct chan_job {
	cpu *p;
	int l, rows;
} chan_job;

static void conv_part(void *ctx, int c0, int c1)
{
	const chan_job *j = ctx;
	cpu *p = j->p;
	const cpu_layer *L = &p->layers[j->l];
	int di = p->c.d_inner, K = p->c.d_conv;

	for (int c = c0; c < c1; c++) {
		const float *w = L->conv_w + (size_t)c * K;
		for (int r = 0; r < j->rows; r++) {
			ssm_state *st = p->slots[p->row_slot[r]];
			float *win = st->conv + ((size_t)j->l * di + c) * (K - 1);
			float x = p->xz[(size_t)r * 2 * di + c];
			float acc = 0.0f;
			for (int k = 0; k < K - 1; k++)
				acc += w[k] * win[k];
			acc += w[K - 1] * x;
			if (L->conv_b)
				acc += L->conv_b[c];
			memmove(win, win + 1, (size_t)(K - 2) * sizeof *win);
			win[K - 2] = x;
			p->xc[(size_t)r * di + c] = silu(acc);
		}
	}
}

static void scan_part(void *ctx, int c0, int c1)
{
	const chan_job *j = ctx;
	cpu *p = j->p;
	const cpu_layer *L = &p->layers[j->l];
	int di = p->c.d_inner, N = p->c.d_state, R = p->c.dt_rank;
	int ld = R + 2 * N;

	for (int c = c0; c < c1; c++) {
		const float *A = L->A + (size_t)c * N;
		for (int r = 0; r < j->rows; r++) {
			ssm_state *st = p->slots[p->row_slot[r]];
			float *s = st->ssm + ((size_t)j->l * di + c) * N;
			const float *B = p->xdbl + (size_t)r * ld + R;
			const float *C = B + N;
			float dt = softplus(p->dt[(size_t)r * di + c]);
			float x = p->xc[(size_t)r * di + c];
			float z = p->xz[(size_t)r * 2 * di + di + c];
			float y = 0.0f;
			for (int n = 0; n < N; n++) {
				s[n] = expf(dt * A[n]) * s[n] + (dt * B[n]) * x;
				y += s[n] * C[n];
			}
			y += L->D[c] * x;
			st->dt_sum[(size_t)j->l * di + c] += dt;
			p->y[(size_t)r * di + c] = y * silu(z);
		}
	}
}

/* Runs rows [0, rows) — (row_slot, row_tok) filled in — through the model:
 * updates each slot's state, leaves the final residual of each row in h. */
static void forward_rows(cpu *p, int rows)
{
	const ssm_config *c = &p->c;
	int d = c->d_model, di = c->d_inner, N = c->d_state, R = c->dt_rank;
	int ld = R + 2 * N;
	chan_job cj = { p, 0, rows };
	/* channels per thread chunk: the scan costs ~N * rows per channel */
	int grain = 4096 / ((N + 4) * rows) + 1;

	for (int r = 0; r < rows; r++)
		memcpy(p->h + (size_t)r * d,
		       p->embed + (size_t)p->row_tok[r] * d, (size_t)d * sizeof(float));
	for (int l = 0; l < c->n_layer; l++) {
		const cpu_layer *L = &p->layers[l];
		for (int r = 0; r < rows; r++)
			rmsnorm(p->u + (size_t)r * d, p->h + (size_t)r * d,
				L->norm, d, c->eps);
		matmul(p, p->xz, 2 * di, L->in_w, L->in_b, p->u, d, rows, d,
		       2 * di);
		cj.l = l;
		pool_run(&p->pool, di, grain, conv_part, &cj);
		matmul(p, p->xdbl, ld, L->x_w, NULL, p->xc, di, rows, di, ld);
		matmul(p, p->dt, di, L->dt_w, L->dt_b, p->xdbl, ld, rows, R, di);
		pool_run(&p->pool, di, grain, scan_part, &cj);
		matmul(p, p->o, d, L->out_w, L->out_b, p->y, di, rows, di, d);
		for (size_t i = 0; i < (size_t)rows * d; i++)
			p->h[i] += p->o[i];
	}
	/* The last row of each slot leaves its residual as the slot's hidden;
	 * rows are in order, so a later row of the same slot overwrites. */
	for (int r = 0; r < rows; r++) {
		ssm_state *st = p->slots[p->row_slot[r]];
		memcpy(st->hidden, p->h + (size_t)r * d, (size_t)d * sizeof(float));
		st->n_tokens++;
	}
}

/* Logits of rows [r0, r0 + m) of h into out (m, V). */
static void logits_rows(cpu *p, int r0, int m, float *out)
{
	int d = p->c.d_model;

	for (int r = 0; r < m; r++)
		rmsnorm(p->u + (size_t)r * d, p->h + (size_t)(r0 + r) * d,
			p->norm_f, d, p->c.eps);
	matmul(p, out, p->c.vocab_size, p->lm_head, NULL, p->u, d, m, d,
	       p->c.vocab_size);
}

/* ----------------------------------------------------------------- ops -- */

static int cpu_slot_reset(ssm_backend *b, int slot)
{
	ssm_state_zero(CPU(b)->slots[slot]);
	return SSMD_OK;
}

static int cpu_slot_copy(ssm_backend *b, int dst, int src)
{
	return ssm_state_copy(CPU(b)->slots[dst], CPU(b)->slots[src]);
}

static int cpu_slot_get(ssm_backend *b, int slot, ssm_state *st)
{
	return ssm_state_copy(st, CPU(b)->slots[slot]);
}

static int cpu_slot_set(ssm_backend *b, int slot, const ssm_state *st)
{
	return ssm_state_copy(CPU(b)->slots[slot], st);
}

static int cpu_prefill(ssm_backend *b, int slot, const ssm_prefill_args *a)
{
	cpu *p = CPU(b);
	int V = p->c.vocab_size;
	size_t pos = 0, ck = 0;

	if (a->logprobs && !a->all_logits && !p->lp_logits &&
	    !(p->lp_logits = malloc((size_t)PREFILL_CHUNK * V * sizeof(float))))
		return ssmd_err_set(SSMD_ENOMEM, "prefill: log-probability logits");
	while (pos < a->n_tokens) {
		size_t end = pos + PREFILL_CHUNK;
		if (end > a->n_tokens)
			end = a->n_tokens;
		/* stop the chunk at the next checkpoint */
		if (ck < a->n_ckpt && a->ckpt_pos[ck] < end)
			end = a->ckpt_pos[ck];
		int rows = (int)(end - pos);
		for (int r = 0; r < rows; r++) {
			p->row_slot[r] = slot;
			p->row_tok[r] = a->tokens[pos + (size_t)r];
		}
		forward_rows(p, rows);
		if (a->all_logits)
			logits_rows(p, 0, rows, a->all_logits + pos * (size_t)V);
		if (a->logprobs) {
			const float *lg = a->all_logits ? a->all_logits + pos * (size_t)V
							: p->lp_logits;
			if (!a->all_logits)
				logits_rows(p, 0, rows, p->lp_logits);
			for (int r = 0; r < rows; r++) {
				const int32_t t = a->lp_next[pos + (size_t)r];
				a->logprobs[pos + (size_t)r] =
					t < 0 ? 0.0f
					      : (float)ssm_logprob(lg + (size_t)r * V, V, t);
			}
		}
		if (a->last_logits && end == a->n_tokens) {
			if (a->all_logits)
				memcpy(a->last_logits,
				       a->all_logits + (end - 1) * (size_t)V,
				       (size_t)V * sizeof(float));
			else
				logits_rows(p, rows - 1, 1, a->last_logits);
		}
		pos = end;
		for (; ck < a->n_ckpt && a->ckpt_pos[ck] == pos; ck++) {
			int rc;
			ssm_state_copy(p->ckpt, p->slots[slot]);
			memcpy(p->ckpt->fingerprint, b->model->fingerprint,
			       SSM_FINGERPRINT_LEN);
			if ((rc = a->ckpt_fn(a->ckpt_ctx, pos, p->ckpt)))
				return rc;
		}
	}
	return SSMD_OK;
}

static int cpu_decode(ssm_backend *b, const int *slots, const int32_t *tokens,
		      int n, float *logits)
{
	cpu *p = CPU(b);

	/* n <= n_slots <= max_rows: one batch */
	for (int r = 0; r < n; r++) {
		p->row_slot[r] = slots[r];
		p->row_tok[r] = tokens[r];
	}
	forward_rows(p, n);
	logits_rows(p, 0, n, logits);
	return SSMD_OK;
}

static int cpu_slot_logits(ssm_backend *b, int slot, float *logits)
{
	cpu *p = CPU(b);

	memcpy(p->h, p->slots[slot]->hidden,
	       (size_t)p->c.d_model * sizeof(float));
	logits_rows(p, 0, 1, logits);
	return SSMD_OK;
}

static void cpu_free(cpu *p)
{
	if (!p)
		return;
	if (p->pool_started)
		pool_stop(&p->pool);
	if (p->layers) {
		for (int l = 0; l < p->c.n_layer; l++) {
			cpu_layer *L = &p->layers[l];
			float *all[] = { L->norm, L->in_w, L->in_b, L->conv_w,
					 L->conv_b, L->x_w, L->dt_w, L->dt_b,
					 L->A, L->D, L->out_w, L->out_b };
			for (size_t i = 0; i < sizeof all / sizeof *all; i++)
				free(all[i]);
		}
		free(p->layers);
	}
	if (p->lm_head != p->embed)
		free(p->lm_head);
	free(p->embed);
	free(p->norm_f);
	if (p->slots)
		for (int i = 0; p->slots[i]; i++)
			ssm_state_free(p->slots[i]);
	free(p->slots);
	ssm_state_free(p->ckpt);
	free(p->lp_logits);
	free(p->row_slot);
	free(p->row_tok);
	free(p->h);
	free(p->u);
	free(p->xz);
	free(p->xc);
	free(p->xdbl);
	free(p->dt);
	free(p->y);
	free(p->o);
	free(p);
}

static void cpu_close(ssm_backend *b)
{
	cpu_free(CPU(b));
	b->impl = NULL;
}

static const ssm_backend_ops cpu_ops = {
	.name = "cpu",
	.close = cpu_close,
	.slot_reset = cpu_slot_reset,
	.slot_copy = cpu_slot_copy,
	.slot_get = cpu_slot_get,
	.slot_set = cpu_slot_set,
	.prefill = cpu_prefill,
	.decode = cpu_decode,
	.slot_logits = cpu_slot_logits,
};

/* A float copy of t, or NULL (and *ok unchanged) when t is absent. */
static float *to_f32(const ssm_tensor *t, int *ok)
{
	size_t n;
	float *v;

	if (!t->data)
		return NULL;
	n = ssm_tensor_numel(t);
	v = malloc(n * sizeof *v);
	if (!v) {
		*ok = 0;
		return NULL;
	}
	ssm_tensor_to_f32(t, v, n);
	return v;
}

static float *scratch(size_t n, int *ok)
{
	float *v = calloc(n ? n : 1, sizeof *v);

	if (!v)
		*ok = 0;
	return v;
}

int ssm_cpu_open(ssm_backend *b, const ssm_backend_opts *opts)
{
	const ssm_model *m = b->model;
	cpu *p = calloc(1, sizeof *p);
	int ok = 1, rc, n_threads = opts->n_threads;
	size_t rows;

	if (!p)
		return ssmd_err_set(SSMD_ENOMEM, "cpu backend: out of memory");
	p->c = m->cfg;
	const ssm_config *c = &p->c;
	int d = c->d_model, di = c->d_inner, N = c->d_state;

	p->embed = to_f32(&m->embed, &ok);
	p->norm_f = to_f32(&m->norm_f, &ok);
	p->lm_head = c->tie_embeddings ? p->embed : to_f32(&m->lm_head, &ok);
	p->layers = calloc((size_t)c->n_layer, sizeof *p->layers);
	if (!p->layers)
		ok = 0;
	for (int l = 0; ok && l < c->n_layer; l++) {
		const ssm_layer_weights *w = &m->layers[l];
		cpu_layer *L = &p->layers[l];
		L->norm = to_f32(&w->norm, &ok);
		L->in_w = to_f32(&w->in_proj_w, &ok);
		L->in_b = to_f32(&w->in_proj_b, &ok);
		L->conv_w = to_f32(&w->conv_w, &ok);
		L->conv_b = to_f32(&w->conv_b, &ok);
		L->x_w = to_f32(&w->x_proj_w, &ok);
		L->dt_w = to_f32(&w->dt_proj_w, &ok);
		L->dt_b = to_f32(&w->dt_proj_b, &ok);
		L->A = to_f32(&w->A_log, &ok);
		L->D = to_f32(&w->D, &ok);
		L->out_w = to_f32(&w->out_proj_w, &ok);
		L->out_b = to_f32(&w->out_proj_b, &ok);
		if (L->A)
			for (size_t i = 0; i < (size_t)di * N; i++)
				L->A[i] = -expf(L->A[i]);
	}
	if (!ok) {
		rc = ssmd_err_set(SSMD_ENOMEM, "cpu backend: out of memory for "
				  "the f32 weights of %s", m->dir);
		goto fail;
	}

	p->slots = calloc((size_t)b->n_slots + 1, sizeof *p->slots);
	if (!p->slots) {
		rc = ssmd_err_set(SSMD_ENOMEM, "cpu backend: out of memory");
		goto fail;
	}
	for (int i = 0; i < b->n_slots; i++)
		if ((rc = ssm_model_state_alloc(m, &p->slots[i])))
			goto fail;
	if ((rc = ssm_model_state_alloc(m, &p->ckpt)))
		goto fail;

	p->max_rows = b->n_slots > PREFILL_CHUNK ? b->n_slots : PREFILL_CHUNK;
	rows = (size_t)p->max_rows;
	p->row_slot = calloc(rows, sizeof *p->row_slot);
	p->row_tok = calloc(rows, sizeof *p->row_tok);
	if (!p->row_slot || !p->row_tok)
		ok = 0;
	p->h = scratch(rows * d, &ok);
	p->u = scratch(rows * d, &ok);
	p->xz = scratch(rows * 2 * di, &ok);
	p->xc = scratch(rows * di, &ok);
	p->xdbl = scratch(rows * (size_t)(c->dt_rank + 2 * N), &ok);
	p->dt = scratch(rows * di, &ok);
	p->y = scratch(rows * di, &ok);
	p->o = scratch(rows * d, &ok);
	if (!ok) {
		rc = ssmd_err_set(SSMD_ENOMEM, "cpu backend: out of memory");
		goto fail;
	}

	if (n_threads <= 0) {
		long nc = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = nc > 0 ? (int)nc : 1;
	}
	if (n_threads > MAX_THREADS)
		n_threads = MAX_THREADS;
	if ((rc = pool_start(&p->pool, n_threads)))
		goto fail;
	p->pool_started = 1;

	b->ops = &cpu_ops;
	b->impl = p;
	return SSMD_OK;
fail:
	cpu_free(p);
	return rc;
}
