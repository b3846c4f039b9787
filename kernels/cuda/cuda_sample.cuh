/*
 * cuda_sample.cuh — next-token selection on the device (decode_sample),
 * following ssm_sample()'s procedure (ssm.h) step by step, and the
 * log-probabilities of given next tokens (ssmk_logprob, for score).
 *
 * Included by cuda_backend.cu only, before the persistent kernels, which
 * pick their rows' tokens the same way at their end (pk_sample: a
 * temperature row's weights summed by all blocks, a chunk of IDs each, in
 * yet another order the margin below covers). Here one block per row of
 * logits:
 *   - greedy rows (temperature <= 0 or too small for 1/T to be finite,
 *     top_k == 1 or vocab == 1): argmax, NaN counting as -inf, the lowest ID
 *     winning ties — exact;
 *   - temperature rows without top-k / top-p: v_i = logit_i * (1/T) in
 *     float, w_i = exp((double)v_i - max v), u = ssm_rng_uniform(seed,
 *     index) * sum w, the pick is the first i whose running sum of w exceeds
 *     u. The device sums in a different order than the host, which moves the
 *     sums by at most about vocab * 2^-53 of the total (5.6e-12 at vocab
 *     50280); whenever u lies within SAMPLE_MARGIN * total of the chosen
 *     token's bounds the row is handed to the host instead, so the token is
 *     always the one ssm_sample() picks;
 *   - rows with top-k or top-p (a sort of the vocabulary) and rows whose
 *     logits are all -inf or NaN are handed to the host.
 * A row handed to the host gets next = -1; the caller runs ssm_sample() on
 * that row's logits.
 */
#ifndef SSM_CUDA_SAMPLE_CUH
#define SSM_CUDA_SAMPLE_CUH

#define SAMPLE_THREADS 1024
#define SAMPLE_MARGIN 1e-10

/* splitmix64's output function, as in sample.c. */
__device__ __forceinline__ uint64_t rng_mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ssm_rng_uniform(): the (index+1)-th splitmix64 output from mix(seed). */
__device__ __forceinline__ double rng_uniform(uint64_t seed, uint64_t index)
{
	uint64_t r = rng_mix64(rng_mix64(seed) + (index + 1) * 0x9e3779b97f4a7c15ull);

	return (double)(r >> 11) * 0x1p-53;
}

__device__ __forceinline__ float clean_logit(float x)
{
	return isnan(x) ? -INFINITY : x;
}

/* Keeps the larger value, the lower ID on ties. */
__device__ __forceinline__ void argmax_merge(float *v, int *i, float ov, int oi)
{
	if (ov > *v || (ov == *v && oi < *i)) {
		*v = ov;
		*i = oi;
	}
}

/* Merges (v, i) over the warp: every lane ends with the warp's pick. */
__device__ __forceinline__ void warp_argmax(float *v, int *i)
{
	for (int o = 16; o > 0; o >>= 1) {
		const float ov = __shfl_xor_sync(0xffffffffu, *v, o);
		const int oi = __shfl_xor_sync(0xffffffffu, *i, o);
		argmax_merge(v, i, ov, oi);
	}
}

/* How a row with sampler s is picked (see the top of this file). */
enum { SAMPLE_GREEDY, SAMPLE_TEMPERATURE, SAMPLE_HOST };

__device__ __forceinline__ int sample_kind(const cuda_sampler &s, int V)
{
	if (s.temperature <= 0.0f || !isfinite(1.0f / s.temperature) || s.top_k == 1 || V == 1)
		return SAMPLE_GREEDY;
	if ((s.top_k > 0 && s.top_k < V) || s.top_p < 1.0f)
		return SAMPLE_HOST;
	return SAMPLE_TEMPERATURE;
}

/* f(j, row[j]) for this thread's share of a row (j = threadIdx.x + k
 * blockDim.x, in 16-byte pieces where the row allows them). A thread's
 * SAMPLE_LOADS pieces are all in flight before f sees any: a row of 50280
 * logits is then two round trips a thread, where one load a loop round,
 * used before the next went out, made ~49 (a batch-1 step's only sampling
 * block waited on each). The order f sees elements in differs from ID
 * order, which the argmax (argmax_merge picks the same element in any
 * order), the temperature rows' max and the log-probabilities' max do not
 * notice; the log-probabilities' sum's order is free by contract. */
#define SAMPLE_LOADS 8

template <typename F>
__device__ __forceinline__ void row_each(const float *row, int V, F f)
{
	if ((V & 3) == 0 && ((uintptr_t)row & 15) == 0) {
		const float4 *r4 = (const float4 *)row;
		const int n4 = V / 4;

		for (int j0 = threadIdx.x; j0 < n4; j0 += SAMPLE_LOADS * blockDim.x) {
			float4 q[SAMPLE_LOADS];
#pragma unroll
			for (int k = 0; k < SAMPLE_LOADS; k++) {
				const int j = j0 + k * blockDim.x;
				if (j < n4)
					q[k] = __ldcg(r4 + j);
			}
#pragma unroll
			for (int k = 0; k < SAMPLE_LOADS; k++) {
				const int j = j0 + k * blockDim.x;
				if (j < n4) {
					f(4 * j, q[k].x);
					f(4 * j + 1, q[k].y);
					f(4 * j + 2, q[k].z);
					f(4 * j + 3, q[k].w);
				}
			}
		}
		return;
	}
	for (int j = threadIdx.x; j < V; j += blockDim.x)
		f(j, row[j]);
}

/* f(i, row[i]) for i = lo .. hi - 1 in order, on one thread;
 * SAMPLE_LOADS elements are loaded before f sees the first of them (one
 * load a round, each used before the next went out, made a temperature
 * row's contiguous runs a chain of round trips). */
template <typename F>
__device__ __forceinline__ void run_each(const float *row, int lo, int hi, F f)
{
	for (int i0 = lo; i0 < hi; i0 += SAMPLE_LOADS) {
		float q[SAMPLE_LOADS];
#pragma unroll
		for (int k = 0; k < SAMPLE_LOADS; k++)
			q[k] = i0 + k < hi ? row[i0 + k] : 0.0f;
#pragma unroll
		for (int k = 0; k < SAMPLE_LOADS; k++)
			if (i0 + k < hi)
				f(i0 + k, q[k]);
	}
}

/* The largest m over the block, returned to every thread; s_f holds one
 * value per warp. Synchronises the block once. */
__device__ __forceinline__ float block_max(float m, float *s_f)
{
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;

	for (int o = 16; o > 0; o >>= 1)
		m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
	if (lane == 0)
		s_f[warp] = m;
	__syncthreads();
	m = s_f[0];
	for (int w = 1; w < nw; w++)
		m = fmaxf(m, s_f[w]);
	return m;
}

/* x's inclusive prefix sum over the block in thread order, returned to
 * each thread, and the block's total (*total); s_d holds one value per warp
 * (32). Synchronises the block twice; s_d is read after the second, so a
 * caller synchronises again before the next call. */
__device__ __forceinline__ double block_scan(double x, double *s_d, double *total)
{
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	double incl = x;

	for (int o = 1; o < 32; o <<= 1) {
		const double t = __shfl_up_sync(0xffffffffu, incl, o);
		if (lane >= o)
			incl += t;
	}
	if (lane == 31)
		s_d[warp] = incl;
	__syncthreads();
	if (warp == 0) {
		double v = lane < nw ? s_d[lane] : 0.0;
		for (int o = 1; o < 32; o <<= 1) {
			const double t = __shfl_up_sync(0xffffffffu, v, o);
			if (lane >= o)
				v += t;
		}
		s_d[lane] = v;
	}
	__syncthreads();
	*total = s_d[nw - 1];
	return (warp ? s_d[warp - 1] : 0.0) + incl;
}

/* w_i of a temperature row: exp(v_i - max v) in double, v_i = logit_i * (1/T) in float. */
__device__ __forceinline__ double temperature_weight(float x, float inv_t, float mx)
{
	return exp((double)(clean_logit(x) * inv_t) - mx);
}

/*
 * The pick of a temperature row among its IDs [lo, hi), whose weights
 * before lo sum to pre0, returned to every thread: ssm_sample()'s pick, or
 * -1 where u falls outside [lo, hi) or within SAMPLE_MARGIN * total of the
 * picked token's bounds. total: the row's total weight, or NaN where [lo,
 * hi) is the whole row (then the block's own sum). Each thread sums a
 * contiguous run of IDs, an exclusive scan gives each run's start, and the
 * thread whose run holds u walks it again (from L1). s_d: block_scan's;
 * *s_pick is set here.
 */
__device__ __noinline__ int pick_run(const float *row, int lo, int hi, double pre0, double total,
				     const cuda_sampler &s, float inv_t, float mx, int V, double *s_d,
				     int *s_pick)
{
	const int n = hi - lo, run = (n + (int)blockDim.x - 1) / (int)blockDim.x;
	const int a = lo + min((int)threadIdx.x * run, n), b = min(a + run, hi);
	double part = 0.0, sum;

	if (threadIdx.x == 0)
		*s_pick = V;
	run_each(row, a, b, [&](int, float x) { part += temperature_weight(x, inv_t, mx); });
	const double pre = pre0 + (block_scan(part, s_d, &sum) - part);
	if (isnan(total))
		total = pre0 + sum;
	const double u = rng_uniform(s.seed, s.index) * total;
	const double margin = SAMPLE_MARGIN * total;
	if (a < b && pre <= u && u < pre + part) {
		double acc = pre;
		for (int i = a; i < b; i++) {
			const double prev = acc;
			acc += temperature_weight(row[i], inv_t, mx);
			if (u < acc) {
				/* V + i: "found but too close to call" */
				const bool sure = u - prev > margin && acc - u > margin;
				atomicMin(s_pick, sure ? i : V + i);
				break;
			}
		}
	}
	__syncthreads();
	return *s_pick < V ? *s_pick : -1;
}

/*
 * One temperature row (sample_kind's SAMPLE_TEMPERATURE: no top-k / top-p,
 * 1/T finite) into *out: ssm_sample()'s pick, or -1 to hand the row to the
 * host (see the top of this file). top: the row's
 * largest logit (NaN counting as -inf) where the caller has it, else NaN.
 * The largest v_i is then top * (1/T) exactly (a product with a positive
 * finite factor keeps the order, rounding included), and the row is read
 * once instead of twice. Kept out of line (as pick_run): inlined, it doubled
 * ssmk_sample's code and the greedy rows of a batch-1 step measured ~6 us
 * slower on the H200.
 */
__device__ __noinline__ void sample_temperature(const float *row, int V, const cuda_sampler &s, float top,
				   int32_t *out, float *s_f, double *s_d, int *s_pick)
{
	const float inv_t = 1.0f / s.temperature;
	float mx = -INFINITY;

	if (!isnan(top)) {
		mx = top * inv_t;
	} else {
		row_each(row, V, [&](int, float x) {
			const float v = clean_logit(x) * inv_t;
			if (v > mx)
				mx = v;
		});
		mx = block_max(mx, s_f);
	}
	const int pick = mx == -INFINITY ? -1 : pick_run(row, 0, V, 0.0, NAN, s, inv_t, mx, V, s_d, s_pick);
	if (threadIdx.x == 0)
		*out = pick;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
ssmk_sample(const float *logits, int V, const cuda_sampler *sp, int32_t *next)
{
	__shared__ float s_f[32];
	__shared__ int s_i[32];
	__shared__ double s_d[32];
	__shared__ int s_pick;
	const cuda_sampler s = sp[blockIdx.x];
	const float *row = logits + (size_t)blockIdx.x * V;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int nw = blockDim.x >> 5;

	const int kind = sample_kind(s, V);
	if (kind == SAMPLE_HOST) {
		if (threadIdx.x == 0)
			next[blockIdx.x] = -1;
		return;
	}
	if (kind == SAMPLE_TEMPERATURE) {
		sample_temperature(row, V, s, NAN, &next[blockIdx.x], s_f, s_d, &s_pick);
		return;
	}

	float best = -INFINITY;
	int bi = V;
	row_each(row, V, [&](int j, float x) { argmax_merge(&best, &bi, clean_logit(x), j); });
	warp_argmax(&best, &bi);
	if (lane == 0) {
		s_f[warp] = best;
		s_i[warp] = bi;
	}
	__syncthreads();
	if (warp == 0) {
		best = -INFINITY;
		bi = V;
		if (lane < nw) {
			best = s_f[lane];
			bi = s_i[lane];
		}
		warp_argmax(&best, &bi);
		if (lane == 0)
			next[blockIdx.x] = bi;
	}
}

/*
 * out[r] = log softmax(logits row r)[next[r]] as ssm_logprob() forms it (the
 * row's max, then expf(x - max) in f32 summed in double), 0 where next[r] is
 * -1. Only the order of the sum differs from the host's.
 * grid (rows), block SAMPLE_THREADS.
 */
__global__ void __launch_bounds__(SAMPLE_THREADS)
ssmk_logprob(const float *logits, int V, const int32_t *next, float *out)
{
	__shared__ float s_f[32];
	__shared__ double s_d[32];
	const float *row = logits + (size_t)blockIdx.x * V;
	const int t = next[blockIdx.x], lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int nw = blockDim.x >> 5;
	float m = -INFINITY;
	double sum = 0.0;

	if (t < 0) {
		if (threadIdx.x == 0)
			out[blockIdx.x] = 0.0f;
		return;
	}
	row_each(row, V, [&](int, float x) { m = fmaxf(m, x); });
	m = block_max(m, s_f);
	row_each(row, V, [&](int, float x) { sum += expf(x - m); });
	for (int o = 16; o; o >>= 1)
		sum += __shfl_xor_sync(0xffffffffu, sum, o);
	if (lane == 0)
		s_d[warp] = sum;
	__syncthreads();
	if (threadIdx.x == 0) {
		double total = 0.0;
		for (int w = 0; w < nw; w++)
			total += s_d[w];
		out[blockIdx.x] = (float)((double)row[t] - ((double)m + log(total)));
	}
}

#endif
