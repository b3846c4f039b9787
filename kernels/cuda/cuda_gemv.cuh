/*
 * cuda_gemv.cuh — the small-batch decode path (buckets of 1, 2 and 4 rows):
 * GEMVs that stream each weight matrix once with 16-byte loads, with the
 * small per-layer kernels folded into their prologues and epilogues.
 *
 * Included by cuda_backend.cu only, after cuda_kernels.cuh. A decode layer on
 * this path is four kernels instead of six:
 *   ssmk_gemv_in    RMSNorm of h (prologue) . in_proj -> x | z, then the conv
 *                   step + SiLU on x (epilogue, ssm_conv_channel)
 *   ssmk_gemv_plain x_proj -> dt_low | B | C
 *   ssmk_ssm_step   dt_proj + softplus + state update + gate (cuda_kernels.cuh)
 *   ssmk_gemv_res   out_proj, added into h (epilogue: the residual of the
 *                   next layer, so no separate add + norm kernel)
 * and a step ends with ssmk_gemv_head (final RMSNorm . lm_head, the slot's
 * hidden vector stored on the way) and sampling.
 *
 * Work split: a block of GEMV_THREADS = 256 threads is 8 warps. CFG picks
 * the shape per matrix (gemv_cfg): SPLIT warps share one weight row (each a
 * strided 1/SPLIT of it; for short, wide matrices such as x_proj) or each
 * warp owns RPW consecutive rows (so the per-block RMSNorm prologue, which
 * reads the whole input vector, is paid once per 8 * RPW rows). Each 16-byte
 * weight load meets NB 16-byte loads of the input rows in T (the GEMM input
 * dtype: the same rounding as the cuBLAS path of larger batches): straight
 * from global memory (L1) where the input is already in T, from shared
 * memory where the prologue computes it (RMSNorm). Every row's sum runs over
 * the same pieces in the same order whatever NB is.
 *
 * Batch buckets: only NB = 1 is instantiated (GEMV_MAX_NB). Measured on the
 * 1.4b shape, a bucket of 4 through these kernels took 3.34 ms per step,
 * cuBLAS 2.84 ms: the NB loads of the input per weight piece and the
 * per-row epilogues outweigh streaming the weights once.
 *
 * Programmatic dependent launch: these kernels (and ssmk_ssm_step) are
 * launched with the programmatic-stream-serialization attribute (see
 * pdl_wait in cuda_kernels.cuh). Each one
 * first allows the next kernel to be scheduled (pdl_launch_dependents), then
 * loads its first GEMV_PF 16-byte weight pieces per lane into registers —
 * weights never depend on an earlier kernel — and only then waits for the
 * previous kernel to complete (pdl_wait, which also makes its writes
 * visible). Nothing an earlier kernel writes is read, and nothing is
 * written, before that wait. So the weight stream of one kernel starts
 * during the tail of the previous one instead of after a launch gap.
 */
#ifndef SSM_CUDA_GEMV_CUH
#define SSM_CUDA_GEMV_CUH

#define GEMV_THREADS 256
#define GEMV_WARPS (GEMV_THREADS / 32)
/* 16-byte weight pieces per lane loaded before the wait (32 registers) */
#define GEMV_PF 8
/* largest batch bucket served by this path */
#define GEMV_MAX_NB 1

/* Block shapes: CFG 0 = 8 warps per row; 1 = one row per warp; 2 = four rows
 * per warp. Rows per block RPB = 8 / SPLIT * RPW. */
template <int CFG> struct gemv_cfg {
	static constexpr int SPLIT = CFG == 0 ? 8 : 1;
	static constexpr int RPW = CFG == 2 ? 4 : 1;
	static constexpr int RPB = GEMV_WARPS / SPLIT * RPW;
	static constexpr int PFR = GEMV_PF / RPW; /* prefetched pieces per row */
};

/* This warp's first row and its part of a split row. */
template <int CFG> __device__ __forceinline__ int gemv_row0(void)
{
	return blockIdx.x * gemv_cfg<CFG>::RPB +
	       (threadIdx.x >> 5) / gemv_cfg<CFG>::SPLIT * gemv_cfg<CFG>::RPW;
}

template <int CFG> __device__ __forceinline__ int gemv_part(void)
{
	return (threadIdx.x >> 5) % gemv_cfg<CFG>::SPLIT;
}

/* Column of this lane's i-th 16-byte piece of a row. */
template <typename T, int CFG> __device__ __forceinline__ int gemv_col(int i)
{
	constexpr int VEC = 16 / sizeof(T);

	return ((i * gemv_cfg<CFG>::SPLIT + gemv_part<CFG>()) * 32 + (threadIdx.x & 31)) * VEC;
}

/* The first PFR pieces of each of this warp's rows of W (m, k). */
template <typename T, int CFG>
__device__ __forceinline__ void gemv_prefetch(const T *W, int m, int k, uint4 *pre)
{
	using C = gemv_cfg<CFG>;
	const int row0 = gemv_row0<CFG>();

#pragma unroll
	for (int q = 0; q < C::RPW; q++)
#pragma unroll
		for (int i = 0; i < C::PFR; i++) {
			const int j = gemv_col<T, CFG>(i);
			pre[q * C::PFR + i] = make_uint4(0, 0, 0, 0);
			if (row0 + q < m && j < k)
				pre[q * C::PFR + i] =
					__ldg((const uint4 *)(W + (size_t)(row0 + q) * k + j));
		}
}

/* acc[b] += W[r, j .. j+VEC) . xs[b, j .. j+VEC) for the NB input rows
 * xs (NB, k) in T, in shared or global memory. */
template <typename T, int NB>
__device__ __forceinline__ void gemv_fma(const uint4 &wv, const T *xs, int k, int j,
					 float *acc)
{
	constexpr int VEC = 16 / sizeof(T);
	float wf[VEC], xf[VEC];

	unpack16(wv, wf, T());
#pragma unroll
	for (int b = 0; b < NB; b++) {
		unpack16(*(const uint4 *)(xs + (size_t)b * k + j), xf, T());
#pragma unroll
		for (int i = 0; i < VEC; i++)
			acc[b] += wf[i] * xf[i];
	}
}

/* This lane's partial sums acc[q][b] of row row0 + q against input row b:
 * the prefetched pieces first, then the rest of the row in order. */
template <typename T, int NB, int CFG>
__device__ __forceinline__ void gemv_dot(const T *W, int m, int k, const T *xs,
					 const uint4 *pre, float (*acc)[NB])
{
	using C = gemv_cfg<CFG>;
	constexpr int VEC = 16 / sizeof(T);
	const int row0 = gemv_row0<CFG>();

#pragma unroll
	for (int q = 0; q < C::RPW; q++) {
#pragma unroll
		for (int b = 0; b < NB; b++)
			acc[q][b] = 0.0f;
		if (row0 + q >= m)
			continue;
		const T *w = W + (size_t)(row0 + q) * k;
#pragma unroll
		for (int i = 0; i < C::PFR; i++) {
			const int j = gemv_col<T, CFG>(i);
			if (j < k)
				gemv_fma<T, NB>(pre[q * C::PFR + i], xs, k, j, acc[q]);
		}
#pragma unroll 4
		for (int j = gemv_col<T, CFG>(C::PFR); j < k; j += 32 * C::SPLIT * VEC)
			gemv_fma<T, NB>(__ldg((const uint4 *)(w + j)), xs, k, j, acc[q]);
	}
}

/*
 * Sums the lanes and the SPLIT warps of each row. Returns, for threads
 * t < RPB * NB, row r (of the block's rows) and batch row b = t % NB with
 * their dot product in *v; false for the other threads and rows >= m.
 * red: shared (GEMV_WARPS * RPW * NB).
 */
template <int NB, int CFG>
__device__ __forceinline__ bool gemv_finish(float (*acc)[NB], float *red, int m,
					    int *r, int *b, float *v)
{
	using C = gemv_cfg<CFG>;
	const int warp = threadIdx.x >> 5, t = threadIdx.x;

#pragma unroll
	for (int q = 0; q < C::RPW; q++)
#pragma unroll
		for (int bb = 0; bb < NB; bb++) {
			float s = acc[q][bb];
			for (int o = 16; o > 0; o >>= 1)
				s += __shfl_xor_sync(0xffffffffu, s, o);
			if ((t & 31) == 0)
				red[(warp * C::RPW + q) * NB + bb] = s;
		}
	__syncthreads();
	if (t >= C::RPB * NB)
		return false;
	const int rr = t / NB, g = rr / C::RPW, q = rr % C::RPW;
	float s = 0.0f;
	for (int p = 0; p < C::SPLIT; p++)
		s += red[((g * C::SPLIT + p) * C::RPW + q) * NB + t % NB];
	*r = blockIdx.x * C::RPB + rr;
	*b = t % NB;
	*v = s;
	return *r < m;
}

/* xs (NB, D) = RMSNorm of h (NB, D) with weight nw, in T — the formula of
 * ssmk_add_norm: h * rsqrt(mean(h^2) + eps) * nw. red: shared (8 * NB). */
template <typename T, int NB>
__device__ __forceinline__ void gemv_stage_norm(const float *h, const float *nw, int D,
						float eps, T *xs, float *red)
{
	float ss[NB], scale[NB];

#pragma unroll
	for (int b = 0; b < NB; b++)
		ss[b] = 0.0f;
	for (int i = threadIdx.x; i < D; i += GEMV_THREADS)
#pragma unroll
		for (int b = 0; b < NB; b++) {
			const float v = h[(size_t)b * D + i];
			ss[b] += v * v;
		}
#pragma unroll
	for (int b = 0; b < NB; b++) {
		for (int o = 16; o > 0; o >>= 1)
			ss[b] += __shfl_xor_sync(0xffffffffu, ss[b], o);
		if ((threadIdx.x & 31) == 0)
			red[(threadIdx.x >> 5) * NB + b] = ss[b];
	}
	__syncthreads();
#pragma unroll
	for (int b = 0; b < NB; b++) {
		float s = 0.0f;
		for (int w = 0; w < GEMV_WARPS; w++)
			s += red[w * NB + b];
		scale[b] = rsqrtf(s / (float)D + eps);
	}
	for (int i = threadIdx.x; i < D; i += GEMV_THREADS)
#pragma unroll
		for (int b = 0; b < NB; b++)
			xs[(size_t)b * D + i] =
				from_f32<T>(h[(size_t)b * D + i] * scale[b] * nw[i]);
	__syncthreads();
}

/*
 * in_proj with its neighbours, rows b < NB (D = d_model, E = d_inner):
 *   xn[b]  = RMSNorm(h[b]) * norm                     (prologue, in T)
 *   xz[b, r] = in_w[r, :] . xn[b]                     r < 2E
 *   for r < E: the conv step of channel r on slot slots[b] (ssm_conv_channel)
 * grid (ceil(2E / RPB)), block 256, dynamic shared memory NB * D * sizeof(T).
 */
template <typename T, int NB, int CFG>
__global__ void __launch_bounds__(GEMV_THREADS)
ssmk_gemv_in(const T *W, const float *h, const float *norm, float eps, int D, int E,
	     const float *in_b, const float *cw, const float *cb, float *pool,
	     const int *slots, size_t state_floats, size_t conv_off, int K,
	     float *xz, float *xc, T *xcT)
{
	extern __shared__ uint4 gemv_smem[];
	__shared__ float red[GEMV_WARPS * gemv_cfg<CFG>::RPW * NB];
	__shared__ float red_n[GEMV_WARPS * NB];
	uint4 pre[GEMV_PF];
	float acc[gemv_cfg<CFG>::RPW][NB], v;
	int r, b;

	pdl_launch_dependents();
	gemv_prefetch<T, CFG>(W, 2 * E, D, pre);
	pdl_wait();
	gemv_stage_norm<T, NB>(h, norm, D, eps, (T *)gemv_smem, red_n);
	gemv_dot<T, NB, CFG>(W, 2 * E, D, (const T *)gemv_smem, pre, acc);
	if (!gemv_finish<NB, CFG>(acc, red, 2 * E, &r, &b, &v))
		return;
	xz[(size_t)b * 2 * E + r] = v;
	if (r < E)
		ssm_conv_channel<T>(v, r, b, in_b, cw, cb, pool, slots[b], state_floats,
				    conv_off, E, K, xc, xcT);
}

/*
 * Y[b, r] = W[r, :] . X[b, :]  for b < NB, r < m; X (NB, k) in T (read
 * through L1), Y (NB, m).  grid (ceil(m / RPB)), block 256.
 */
template <typename T, int NB, int CFG>
__global__ void __launch_bounds__(GEMV_THREADS)
ssmk_gemv_plain(const T *W, const T *X, int m, int k, float *Y)
{
	__shared__ float red[GEMV_WARPS * gemv_cfg<CFG>::RPW * NB];
	uint4 pre[GEMV_PF];
	float acc[gemv_cfg<CFG>::RPW][NB], v;
	int r, b;

	pdl_launch_dependents();
	gemv_prefetch<T, CFG>(W, m, k, pre);
	pdl_wait();
	gemv_dot<T, NB, CFG>(W, m, k, X, pre, acc);
	if (gemv_finish<NB, CFG>(acc, red, m, &r, &b, &v))
		Y[(size_t)b * m + r] = v;
}

/*
 * out_proj and the residual add: h[b, r] = (h[b, r] + W[r, :] . X[b, :]) + bias[r]
 * (the order of ssmk_add_norm's add), b < NB, r < m = d_model, X (NB, k) in
 * T (read through L1).  grid (ceil(m / RPB)), block 256.
 */
template <typename T, int NB, int CFG>
__global__ void __launch_bounds__(GEMV_THREADS)
ssmk_gemv_res(const T *W, const T *X, int m, int k, const float *bias, float *h)
{
	__shared__ float red[GEMV_WARPS * gemv_cfg<CFG>::RPW * NB];
	uint4 pre[GEMV_PF];
	float acc[gemv_cfg<CFG>::RPW][NB], v;
	int r, b;

	pdl_launch_dependents();
	gemv_prefetch<T, CFG>(W, m, k, pre);
	pdl_wait();
	gemv_dot<T, NB, CFG>(W, m, k, X, pre, acc);
	if (!gemv_finish<NB, CFG>(acc, red, m, &r, &b, &v))
		return;
	v += h[(size_t)b * m + r];
	if (bias)
		v += bias[r];
	h[(size_t)b * m + r] = v;
}

/*
 * The step's end: logits[b, r] = lm_head[r, :] . (RMSNorm(h[b]) * norm_f),
 * r < V; block 0 also stores h[b] as the hidden vector of slot slots[b]
 * (padding rows, slot < 0, skipped).
 * grid (ceil(V / RPB)), block 256, dynamic shared memory NB * D * sizeof(T).
 */
template <typename T, int NB, int CFG>
__global__ void __launch_bounds__(GEMV_THREADS)
ssmk_gemv_head(const T *W, const float *h, const float *norm, float eps, int D, int V,
	       float *logits, float *pool, const int *slots, size_t state_floats,
	       size_t off_hidden)
{
	extern __shared__ uint4 gemv_smem[];
	__shared__ float red[GEMV_WARPS * gemv_cfg<CFG>::RPW * NB];
	__shared__ float red_n[GEMV_WARPS * NB];
	uint4 pre[GEMV_PF];
	float acc[gemv_cfg<CFG>::RPW][NB], v;
	int r, b;

	pdl_launch_dependents();
	gemv_prefetch<T, CFG>(W, V, D, pre);
	pdl_wait();
	if (blockIdx.x == 0)
		for (int i = threadIdx.x; i < NB * D; i += GEMV_THREADS)
			if (slots[i / D] >= 0)
				pool[(size_t)slots[i / D] * state_floats + off_hidden + i % D] = h[i];
	gemv_stage_norm<T, NB>(h, norm, D, eps, (T *)gemv_smem, red_n);
	gemv_dot<T, NB, CFG>(W, V, D, (const T *)gemv_smem, pre, acc);
	if (gemv_finish<NB, CFG>(acc, red, V, &r, &b, &v))
		logits[(size_t)b * V + r] = v;
}

#endif
