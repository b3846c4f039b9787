/*
 * cuda_batch.cuh — the batched decode path (buckets of 2..64 rows, 16-bit
 * weights): a skinny tensor-core GEMM that streams each weight matrix once,
 * with the conv step or the residual add in its epilogue, and the small
 * kernels around it, all chained by programmatic dependent launch.
 *
 * Included by cuda_backend.cu only, after cuda_kernels.cuh. A decode layer on
 * this path is five kernels:
 *   ssmk_norm_b       RMSNorm of the residual stream h -> xn (T)
 *   ssmk_bgemm CONV   in_proj -> z into xz; x through the conv step + SiLU
 *                     (ssm_conv_channel) -> xc, xcT
 *   ssmk_bgemm STORE  x_proj -> dbc = dt_low | B | C
 *   ssmk_ssm_step_b   dt_proj + softplus + state update + gate -> yT
 *   ssmk_bgemm RES    out_proj, added with its bias into h
 * and the step ends with ssmk_add_norm (final norm, hidden vectors), the
 * lm_head GEMM (STORE) and sampling.
 *
 * ssmk_bgemm: Y (nb, M) = X (nb, K) . W^T with W (M, K) row-major in T and
 * X (nb, K) in T, nb <= 16 * BT, K a multiple of 32, f32 accumulation with
 * mma.sync.m16n8k16: the A operand is 16 rows of X, the B operand 8 rows of
 * W. A warp owns 16 weight rows (two 8-row tiles) and all nb batch rows; a
 * block of BG_WARPS warps owns BG_ROWS consecutive weight rows; the K steps
 * of 32 are split over gridDim.y blocks, which form one thread-block cluster
 * and add their partial tiles through distributed shared memory (a fixed
 * order: the result does not depend on timing).
 *
 * Fragment layout trick: the sum over k does not care in which order k is
 * visited, as long as X and W use the same order. Within a step of 32 k,
 * lane (g = lane / 4, t = lane % 4) loads one 16-byte piece (8 elements,
 * k = 8t .. 8t+7) of each row it needs, and the two k16 halves q = 0, 1 of
 * the step use elements 4q .. 4q+3 of it in the places mma.sync expects
 * k = 2t, 2t+1 (first register) and 2t+8, 2t+9 (second): a bijection of the
 * 32 k of the step, the same one for A and B. So every operand comes from
 * full 16-byte loads with no shuffles or shared-memory staging: W streams
 * from HBM (L1 no-allocate), X (at most 64 x K x 2 bytes) from L1 / L2,
 * shared by the block's warps that walk the same k at the same time.
 *
 * Programmatic dependent launch: each kernel first lets the next one be
 * scheduled, loads what no earlier kernel writes (BG_PF steps of weights,
 * A), then waits for the previous kernel (pdl_wait) before touching
 * anything an earlier kernel wrote or writing anything.
 */
#ifndef SSM_CUDA_BATCH_CUH
#define SSM_CUDA_BATCH_CUH

#include <cooperative_groups.h>

#define BG_WARPS 8
#define BG_THREADS (32 * BG_WARPS)
#define BG_PF 4                 /* 32-k weight steps in flight per warp (1 KB each) */
#define BG_MAX_NB 64            /* batch rows: BT = 4 tiles of 16 */
#define BG_SMEM_MAX (100 << 10) /* dynamic shared memory: two blocks per SM */
#define BG_EPI 4                /* outputs per thread per epilogue group */
#define BG_KMAX 8               /* largest d_conv of the conv epilogue */

enum { BG_STORE, BG_RES, BG_CONV };

/* What the epilogue of ssmk_bgemm does with output (n, m):
 *   STORE: y[n * ldy + m] = v
 *   RES:   y[n * ldy + m] += v + bias[m]     (bias may be NULL)
 *   CONV:  m <  E: the conv step of ssm_conv_channel (x = v, e = m, r = n)
 *                  -> xc, xcT and the slot's conv window at conv_off
 *                  (d_conv <= BG_KMAX)
 *          m >= E: y[n * ldy + m] = v        (z, for the SSM step) */
typedef struct bg_epi {
	float *y;
	int ldy;
	const float *bias;
	const float *in_b, *cw, *cb;
	float *pool;
	const int *slots;
	size_t state_floats, conv_off;
	int E, K;
	float *xc;
	void *xcT;
} bg_epi;

/* A 16-byte load of data no kernel writes (weights): not kept in L1. */
__device__ __forceinline__ uint4 ld_stream16(const void *p)
{
	uint4 v;

	asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
	    : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
	    : "l"(p));
	return v;
}

__device__ __forceinline__ uint32_t u4_at(const uint4 &v, int i)
{
	return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* c += a . b, m16n8k16, A row-major (4 registers), B column-major (2). */
template <typename T>
__device__ __forceinline__ void mma16816(float *c, const uint32_t *a, const uint32_t *b);

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float *c, const uint32_t *a,
							 const uint32_t *b)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
		     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma16816<__half>(float *c, const uint32_t *a,
						  const uint32_t *b)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
		     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Asynchronous 16-byte copy global -> shared (cp.async, L2 only). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src)
{
	const unsigned d = (unsigned)__cvta_generic_to_shared(dst);

	asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_wait_all(void)
{
	asm volatile("cp.async.wait_all;" ::: "memory");
}

/* Elements per row of a block's X slab of nbs 32-k steps: the row stride
 * is an odd multiple of 64 bytes, so the 16-byte reads of lanes g and g + 1
 * (rows g, g + 1, pieces t) fall in different banks. */
__host__ __device__ __forceinline__ int bg_ldk(int nbs)
{
	return 32 * nbs + (nbs % 2 ? 0 : 32);
}

/*
 * The batched GEMM described above, with epilogue EPI. A block is mw row
 * groups of 16 weight rows times kw = BG_WARPS / mw K groups: warp w takes
 * row group w % mw and the (w / mw)-th part of the block's K steps. The
 * block first copies its slab of X (all 16 BT rows, its K range) into shared
 * memory (cp.async), so each warp's per-step X reads are shared-memory reads
 * while its next BG_PF weight steps are in flight. Rows of X beyond nb copy
 * row nb - 1, weight rows beyond M read row M - 1 (their results are
 * dropped). The partial tiles then reuse the slab's shared memory: summed
 * over the block's K groups, then over the cluster's blocks.
 * grid (ceil(M / (16 mw)), KS), KS <= 8 the K split, launched as clusters of
 * (1, KS, 1) when KS > 1; block BG_THREADS; dynamic shared memory
 * bgemm_smem() bytes.
 */
template <typename T, int BT, int EPI>
__global__ void __launch_bounds__(BG_THREADS)
ssmk_bgemm(const T *W, const T *X, int ldx, int M, int K, int nb, int mw, bg_epi ep)
{
	extern __shared__ __align__(16) unsigned char bg_smem[];
	T *slab = (T *)bg_smem;         /* (16 BT, ldk) this block's X */
	float *part = (float *)bg_smem; /* (kw, 16 BT, ldp) partial sums */
	const int kw = BG_WARPS / mw, br = 16 * mw, ldp = br + 4;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int g = lane >> 2, t = lane & 3;
	const int wm = warp % mw, wk = warp / mw;
	const int m_blk = blockIdx.x * br;
	const int m0 = m_blk + wm * 16;
	const int ks = gridDim.y, kr = blockIdx.y;
	const int S = K / 32;
	const int b0 = S * kr / ks, nbs = S * (kr + 1) / ks - b0;
	const int ldk = bg_ldk(nbs);
	const int s0 = nbs * wk / kw, s1 = nbs * (wk + 1) / kw; /* block-relative */
	const bool active = m0 < M;
	const T *wp[2];
	float acc[BT][2][4];
	uint4 wb[BG_PF][2];

#pragma unroll
	for (int j = 0; j < 2; j++) {
		const int row = m0 + 8 * j + g < M ? m0 + 8 * j + g : M - 1;
		wp[j] = W + (size_t)row * K + (size_t)b0 * 32 + 8 * t;
	}
#pragma unroll
	for (int b = 0; b < BT; b++)
#pragma unroll
		for (int j = 0; j < 2; j++)
#pragma unroll
			for (int i = 0; i < 4; i++)
				acc[b][j][i] = 0.0f;

	pdl_launch_dependents();
	if (active) {
#pragma unroll
		for (int i = 0; i < BG_PF; i++)
			if (s0 + i < s1)
#pragma unroll
				for (int j = 0; j < 2; j++)
					wb[i][j] = ld_stream16(wp[j] + (s0 + i) * 32);
	}
	pdl_wait();
	{
		const int per_row = nbs * 4; /* 16-byte pieces */
		for (int i = threadIdx.x; i < 16 * BT * per_row; i += BG_THREADS) {
			const int row = i / per_row, c = i % per_row;
			const int src = row < nb ? row : nb - 1;
			cp_async16(slab + row * ldk + c * 8,
				   X + (size_t)src * ldx + (size_t)b0 * 32 + c * 8);
		}
		cp_async_wait_all();
		__syncthreads();
	}
	if (active) {
		for (int s = s0; s < s1; s += BG_PF) {
#pragma unroll
			for (int i = 0; i < BG_PF; i++) {
				if (s + i < s1) {
					const int k = (s + i) * 32;
					uint4 xa[BT][2], w[2];
#pragma unroll
					for (int b = 0; b < BT; b++)
#pragma unroll
						for (int h = 0; h < 2; h++)
							xa[b][h] = *(const uint4 *)(slab +
								(16 * b + 8 * h + g) * ldk + k + 8 * t);
					w[0] = wb[i][0];
					w[1] = wb[i][1];
					if (s + i + BG_PF < s1)
#pragma unroll
						for (int j = 0; j < 2; j++)
							wb[i][j] = ld_stream16(wp[j] + k + BG_PF * 32);
#pragma unroll
					for (int q = 0; q < 2; q++)
#pragma unroll
						for (int b = 0; b < BT; b++) {
							const uint32_t a[4] = {
								u4_at(xa[b][0], 2 * q), u4_at(xa[b][1], 2 * q),
								u4_at(xa[b][0], 2 * q + 1), u4_at(xa[b][1], 2 * q + 1)};
#pragma unroll
							for (int j = 0; j < 2; j++) {
								const uint32_t bf[2] = {u4_at(w[j], 2 * q),
											u4_at(w[j], 2 * q + 1)};
								mma16816<T>(acc[b][j], a, bf);
							}
						}
				}
			}
		}
	}
	__syncthreads(); /* the slab is read no more: its memory holds part */
	/* c0, c1: batch row 16b + g, weight rows 8j + 2t, +1; c2, c3: row + 8 */
#pragma unroll
	for (int b = 0; b < BT; b++)
#pragma unroll
		for (int j = 0; j < 2; j++) {
			float *p = part + (wk * 16 * BT + 16 * b + g) * ldp + wm * 16 + 8 * j + 2 * t;
			p[0] = acc[b][j][0];
			p[1] = acc[b][j][1];
			p[8 * ldp] = acc[b][j][2];
			p[8 * ldp + 1] = acc[b][j][3];
		}
	__syncthreads();
	if (kw > 1) {
		for (int idx = threadIdx.x; idx < nb * br; idx += BG_THREADS) {
			const int n = idx / br, ml = idx % br;
			float v = part[n * ldp + ml];
			for (int k = 1; k < kw; k++)
				v += part[(k * 16 * BT + n) * ldp + ml];
			part[n * ldp + ml] = v;
		}
	}

	namespace cg = cooperative_groups;
	if (ks > 1)
		cg::this_cluster().sync();
	else if (kw > 1)
		__syncthreads();
	/* block kr of the cluster finishes its share of the (nb, br) tile,
	 * BG_EPI outputs per thread at a time: every load of the group (the
	 * partial sums, h, the conv windows) is issued before any store, so
	 * a thread waits for memory once per group, not once per output */
	const int tot = nb * br, e0 = tot * kr / ks, e1 = tot * (kr + 1) / ks;
	for (int i0 = e0 + threadIdx.x; i0 < e1; i0 += BG_EPI * BG_THREADS) {
		float v[BG_EPI], old[BG_EPI], win[BG_EPI][BG_KMAX - 1];
		int n[BG_EPI], m[BG_EPI], slot[BG_EPI];
		bool ok[BG_EPI];

#pragma unroll
		for (int u = 0; u < BG_EPI; u++) {
			const int idx = i0 + u * BG_THREADS, ml = idx % br;
			n[u] = idx / br;
			m[u] = m_blk + ml;
			ok[u] = idx < e1 && m[u] < M;
			v[u] = 0.0f;
			old[u] = 0.0f;
			slot[u] = -1;
			if (!ok[u])
				continue;
			if (ks > 1) {
				cg::cluster_group cl = cg::this_cluster();
				for (int r = 0; r < ks; r++)
					v[u] += cl.map_shared_rank(part, r)[n[u] * ldp + ml];
			} else {
				v[u] = part[n[u] * ldp + ml];
			}
			if (EPI == BG_RES)
				old[u] = ep.y[(size_t)n[u] * ep.ldy + m[u]];
			if (EPI == BG_CONV && m[u] < ep.E) {
				slot[u] = ep.slots[n[u]];
				const float *w = ep.pool + (size_t)slot[u] * ep.state_floats +
						 ep.conv_off + (size_t)m[u] * (ep.K - 1);
#pragma unroll
				for (int j = 0; j < BG_KMAX - 1; j++)
					if (j < ep.K - 1)
						win[u][j] = slot[u] >= 0 ? w[j] : 0.0f;
			}
		}
#pragma unroll
		for (int u = 0; u < BG_EPI; u++) {
			if (!ok[u])
				continue;
			const size_t o = (size_t)n[u] * ep.ldy + m[u];
			if (EPI == BG_STORE) {
				ep.y[o] = v[u];
			} else if (EPI == BG_RES) {
				ep.y[o] = old[u] + v[u] + (ep.bias ? ep.bias[m[u]] : 0.0f);
			} else if (m[u] >= ep.E) {
				ep.y[o] = v[u];
			} else {
				/* ssm_conv_channel's formula, window held in registers */
				const int e = m[u], K = ep.K;
				const float x = v[u] + (ep.in_b ? ep.in_b[e] : 0.0f);
				const float *cw = ep.cw + (size_t)e * K;
				float acc = ep.cb ? ep.cb[e] : 0.0f;
#pragma unroll
				for (int j = 0; j < BG_KMAX - 1; j++)
					if (j < K - 1)
						acc += cw[j] * win[u][j];
				acc += cw[K - 1] * x;
				if (slot[u] >= 0) {
					float *w = ep.pool + (size_t)slot[u] * ep.state_floats +
						   ep.conv_off + (size_t)e * (K - 1);
#pragma unroll
					for (int j = 0; j < BG_KMAX - 2; j++)
						if (j + 1 < K - 1)
							w[j] = win[u][j + 1];
					w[K - 2] = x;
				}
				const float y = silu(acc);
				ep.xc[(size_t)n[u] * ep.E + e] = y;
				((T *)ep.xcT)[(size_t)n[u] * ep.E + e] = from_f32<T>(y);
			}
		}
	}
	/* the other blocks may still read this block's tile */
	if (ks > 1)
		cg::this_cluster().sync();
}

/* xn[r] = h[r] * rsqrt(mean(h[r]^2) + eps) * w in T, one block (256
 * threads) per row; launched with programmatic dependent launch.
 * grid (B), block 256. */
template <typename T>
__global__ void ssmk_norm_b(const float *h, const float *w, T *xn, int D, float eps)
{
	__shared__ float red[32];
	const float *hr = h + (size_t)blockIdx.x * D;
	float ss = 0.0f;

	pdl_launch_dependents();
	pdl_wait();
	for (int i = threadIdx.x; i < D; i += blockDim.x)
		ss += hr[i] * hr[i];
	for (int o = 16; o > 0; o >>= 1)
		ss += __shfl_xor_sync(0xffffffffu, ss, o);
	if ((threadIdx.x & 31) == 0)
		red[threadIdx.x >> 5] = ss;
	__syncthreads();
	if (threadIdx.x < 32) {
		ss = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
		for (int o = 16; o > 0; o >>= 1)
			ss += __shfl_xor_sync(0xffffffffu, ss, o);
		if (threadIdx.x == 0)
			red[0] = ss;
	}
	__syncthreads();
	const float scale = rsqrtf(red[0] / (float)D + eps);
	T *xr = xn + (size_t)blockIdx.x * D;
	for (int i = threadIdx.x; i < D; i += blockDim.x)
		xr[i] = from_f32<T>(hr[i] * scale * w[i]);
}

/*
 * The SSM step of ssmk_ssm_step (same formulas, same contract) for the
 * batched path: a block takes SSM_STEP_ROWS consecutive rows of its 32
 * channels and issues every load of all its rows (slots, states, x, z,
 * dt_sum) before computing any, so one block waits for memory once, not
 * once per row (slots in a batch are distinct: no row's stores touch
 * another row's loads). States move as 16-byte pieces when NPL == 4 and
 * state_floats is a multiple of 4. Each channel's dt_w row is read once
 * for all the block's rows.
 * grid (ceil(E/32), ceil(B/SSM_STEP_ROWS)), block 128.
 */
template <typename T, int NPL>
__global__ void ssmk_ssm_step_b(const float *dbc, int R, const T *dt_w,
				const float *dt_b, const float *A, const float *Dp,
				const float *xc, const float *xz, const float *in_b,
				float *pool, const int *slots, size_t state_floats,
				size_t ssm_off, size_t dts_off, int E, int B, T *yT)
{
	constexpr int VEC = 16 / sizeof(T);
	constexpr int RPB = SSM_STEP_ROWS;
	const int N = NPL * SSM_LANES;
	const int W = R + 2 * N;
	const int g = threadIdx.x & (SSM_LANES - 1);
	const int e = blockIdx.x * SSM_CH_PER_BLOCK + threadIdx.x / SSM_LANES;
	const bool valid = e < E;
	const int ec = valid ? e : E - 1; /* keeps every lane in the shuffles */
	const int r0 = blockIdx.y * RPB;
	const T *wr = dt_w + (size_t)ec * R;
	const float zb = in_b ? in_b[E + ec] : 0.0f;
	/* 16-byte state pieces need every slot's start 16-byte aligned */
	const bool v4 = NPL == 4 && (state_floats & 3) == 0;
	float a[NPL], h[RPB][NPL], x[RPB], z[RPB], ds[RPB], acc[RPB];
	int slot[RPB];

	pdl_launch_dependents();
#pragma unroll
	for (int i = 0; i < NPL; i++)
		a[i] = A[(size_t)ec * N + g * NPL + i];
	pdl_wait();

#pragma unroll
	for (int q = 0; q < RPB; q++) {
		const int r = r0 + q < B ? r0 + q : B - 1;
		slot[q] = r0 + q < B ? slots[r] : -1;
		x[q] = xc[(size_t)r * E + ec];
		z[q] = xz[(size_t)r * 2 * E + E + ec] + zb;
		ds[q] = 0.0f;
#pragma unroll
		for (int i = 0; i < NPL; i++)
			h[q][i] = 0.0f;
	}
#pragma unroll
	for (int q = 0; q < RPB; q++) {
		if (slot[q] < 0)
			continue;
		const float *st = pool + (size_t)slot[q] * state_floats;
		const float *hs = st + ssm_off + (size_t)ec * N + g * NPL;
		bool done = false;
		if constexpr (NPL == 4) {
			if (v4) {
				const float4 v = *(const float4 *)hs;
				h[q][0] = v.x;
				h[q][1] = v.y;
				h[q][2] = v.z;
				h[q][3] = v.w;
				done = true;
			}
		}
		if (!done)
#pragma unroll
			for (int i = 0; i < NPL; i++)
				h[q][i] = hs[i];
		if (g == 0)
			ds[q] = st[dts_off + ec];
	}

	/* dt_low . dt_w[e, :] for every row, each dt_w piece loaded once */
#pragma unroll
	for (int q = 0; q < RPB; q++)
		acc[q] = 0.0f;
	if (R % VEC == 0) {
		for (int j = g * VEC; j < R; j += SSM_LANES * VEC) {
			float wf[VEC];
			unpack16(__ldg((const uint4 *)(wr + j)), wf, T());
#pragma unroll
			for (int q = 0; q < RPB; q++) {
				const float *row = dbc + (size_t)(r0 + q < B ? r0 + q : B - 1) * W;
#pragma unroll
				for (int i = 0; i < VEC; i++)
					acc[q] += wf[i] * row[j + i];
			}
		}
	} else {
		for (int j = g; j < R; j += SSM_LANES) {
			const float wv = to_f32(wr[j]);
#pragma unroll
			for (int q = 0; q < RPB; q++)
				acc[q] += wv * dbc[(size_t)(r0 + q < B ? r0 + q : B - 1) * W + j];
		}
	}

#pragma unroll
	for (int q = 0; q < RPB; q++) {
		if (r0 + q >= B)
			break;
		const int r = r0 + q;
		float s = acc[q];
		s += __shfl_xor_sync(0xffffffffu, s, 1);
		s += __shfl_xor_sync(0xffffffffu, s, 2);
		const float dt = softplus(s + dt_b[ec]);
		const float *row = dbc + (size_t)r * W;
		const float *Bv = row + R + g * NPL;
		const float *Cv = row + R + N + g * NPL;
		float y = 0.0f;
#pragma unroll
		for (int i = 0; i < NPL; i++) {
			h[q][i] = __expf(dt * a[i]) * h[q][i] + dt * Bv[i] * x[q];
			y += Cv[i] * h[q][i];
		}
		if (slot[q] >= 0 && valid) {
			float *st = pool + (size_t)slot[q] * state_floats;
			float *hs = st + ssm_off + (size_t)ec * N + g * NPL;
			bool done = false;
			if constexpr (NPL == 4) {
				if (v4) {
					*(float4 *)hs = make_float4(h[q][0], h[q][1], h[q][2], h[q][3]);
					done = true;
				}
			}
			if (!done)
#pragma unroll
				for (int i = 0; i < NPL; i++)
					hs[i] = h[q][i];
			if (g == 0)
				st[dts_off + e] = ds[q] + dt;
		}
		y += __shfl_xor_sync(0xffffffffu, y, 1);
		y += __shfl_xor_sync(0xffffffffu, y, 2);
		if (valid && g == 0)
			yT[(size_t)r * E + e] = from_f32<T>((y + Dp[e] * x[q]) * silu(z[q]));
	}
}

#endif
