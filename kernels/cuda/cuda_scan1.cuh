/*
 * cuda_scan1.cuh — the prefill selective scan in one pass over the chunk
 * (d_state 16). Included by cuda_backend.cu after cuda_kernels.cuh.
 *
 * Per token t and channel e, as ssmk_scan:
 *   dt  = softplus(dtr[t, e] + dt_b[e])
 *   h_n = exp(dt * A[e, n]) * h_n + dt * B[t, n] * x[t, e]
 *   y   = (sum_n C[t, n] h_n + D[e] x[t, e]) * SiLU(z[t, e])
 * The segmented scan (ssmk_scan, two passes and a combine) runs every
 * exponential twice and spends ~21 instructions a (token, state). Here each
 * (channel, state) walks the whole chunk once: lane 16 j + n of a warp holds
 * state n of CPL neighbouring channels, so one B and one C load a token serve
 * CPL channels, and a channel's dt and dt x reach its 16 lanes as one
 * broadcast load of CPL values. Every 16 tokens (a group) the lanes' C.h
 * parts go through a reduce-scatter over the 16 lanes (four xor-shuffle
 * rounds), which leaves lane n token n's y of each channel; that lane adds
 * D x, gates it by SiLU(z) and stores it.
 *
 * The block's channels read the chunk in tiles of SCAN1_TT tokens, double
 * buffered in shared memory by cp.async (raw dt, x and B | C); before a tile
 * runs, its dt entries become softplus(dt + dt_b) and dt x, each computed once
 * per (token, channel). Tokens past the chunk get dt 0, which leaves the
 * state as it is. dt_sum: lane n adds the dt of the tokens it gates, and the
 * 16 lanes' sums are added when a checkpoint or the chunk's end needs it.
 *
 * Checkpoints (ck_pos[0..n_ck), ascending, chunk-relative in [1, L], as
 * ssmk_scan) at a group's end cost nothing extra; a group with one inside runs
 * the same arithmetic with a test after every token. The slot's state
 * (ssm, dts) is read at the start and written at the end.
 * Needs N == 16, R % 4 == 0, E % scan1_channels(CPL, WPB) == 0 (scan1_fits).
 * grid (E / CB), block 32 WPB, shared memory scan1_smem_bytes(CB).
 */
#ifndef SSM_CUDA_SCAN1_CUH
#define SSM_CUDA_SCAN1_CUH

#define SCAN1_TT 64 /* tokens per tile */
#define SCAN1_N 16  /* d_state */

/* channels of one block: G lanes a channel, CPL channels a lane */
static inline __host__ __device__ constexpr int scan1_channels(int g, int cpl, int wpb)
{
	return wpb * (32 / g) * cpl;
}

/* floats of one tile buffer: B | C (TT, 2N), then dt, x, z, dt x (TT, CB) */
static inline __host__ __device__ constexpr int scan1_buf_floats(int cb)
{
	return SCAN1_TT * (2 * SCAN1_N + 4 * cb);
}

static inline size_t scan1_smem_bytes(int cb)
{
	return sizeof(float) * 2 * scan1_buf_floats(cb);
}

static inline bool scan1_fits(int N, int R, int E, int cb)
{
	return N == SCAN1_N && R % 4 == 0 && E % cb == 0;
}

/* C consecutive floats from shared memory (aligned to 4 C bytes) */
template <int C> __device__ __forceinline__ void lds_n(float *d, const float *s)
{
	if (C == 4) {
		const float4 v = *(const float4 *)s;
		d[0] = v.x, d[1] = v.y, d[2] = v.z, d[3] = v.w;
	} else if (C == 2) {
		const float2 v = *(const float2 *)s;
		d[0] = v.x, d[1] = v.y;
	} else {
		d[0] = s[0];
	}
}

/* One round of reduce_scatter: of v[0..2M), keep the half that bit M of
 * n selects, plus the partner's (lane n ^ M) parts of it, in v[0..M). */
template <int M> __device__ __forceinline__ void rs_round(float *v, int n)
{
	const bool hi = n & M;
#pragma unroll
	for (int i = 0; i < M; i++) {
		const float keep = hi ? v[i + M] : v[i], send = hi ? v[i] : v[i + M];
		v[i] = keep + __shfl_xor_sync(0xffffffffu, send, M);
	}
}

/* v[0..G): this lane's parts of G tokens' sums; returns the whole sum of
 * token n (lane n of the G a channel has), after log2 G rounds. */
template <int G> __device__ __forceinline__ float reduce_scatter(float *v, int n)
{
	if (G >= 16)
		rs_round<8>(v, n);
	if (G >= 8)
		rs_round<4>(v, n);
	if (G >= 4)
		rs_round<2>(v, n);
	rs_round<1>(v, n);
	return v[0];
}

/* the sum of v over the G lanes of this lane's channel group */
template <int G> __device__ __forceinline__ float sum_lanes(float v)
{
#pragma unroll
	for (int m = 1; m < G; m <<= 1)
		v += __shfl_xor_sync(0xffffffffu, v, m);
	return v;
}

template <typename T, int G, int CPL, int WPB>
__global__ void __launch_bounds__(32 * WPB)
ssmk_scan1(const float *dtr, const float *dt_b, const float *dbc, int R, const float *xc,
	   const float *xz, const float *in_b, const float *A, const float *Dp, float *ssm,
	   float *dts, int E, int L, const int *ck_pos, int n_ck, float *ck,
	   size_t state_floats, size_t ck_ssm_off, size_t ck_dts_off, T *yT)
{
	constexpr int S = SCAN1_N / G; /* states a lane */
	constexpr int CB = scan1_channels(G, CPL, WPB), BUF = scan1_buf_floats(CB);
	constexpr int NT = 32 * WPB, BCS = 2 * SCAN1_N;
	const int W = R + 2 * SCAN1_N;
	extern __shared__ __align__(16) float smem[];
	__shared__ int s_ck[SCAN_CK_MAX];
	const int lane = threadIdx.x & 31, n = lane & (G - 1);
	/* this lane's first channel within the block, and in the layer */
	const int cl0 = ((threadIdx.x >> 5) * (32 / G) + lane / G) * CPL;
	const int e0 = blockIdx.x * CB, ec = e0 + cl0;
	const float LOG2E = 1.4426950408889634f;
	/* the pre-pass's channel: NT % CB == 0, so each thread keeps one */
	const int pc = threadIdx.x % CB;
	const float dtb = dt_b[e0 + pc];
	float h[CPL][S], a[CPL][S], dsk[CPL], zb[CPL], dpart[CPL], gsum[CPL];

#pragma unroll
	for (int k = 0; k < CPL; k++) {
		const int e = ec + k;
#pragma unroll
		for (int j = 0; j < S; j++) {
			h[k][j] = ssm[(size_t)e * SCAN1_N + n * S + j];
			a[k][j] = A[(size_t)e * SCAN1_N + n * S + j] * LOG2E;
		}
		dsk[k] = Dp[e];
		zb[k] = in_b ? in_b[E + e] : 0.0f;
		dpart[k] = n == 0 ? dts[e] : 0.0f;
	}
	for (int i = threadIdx.x; i < n_ck; i += NT)
		s_ck[i] = ck_pos[i];
	int kc = 0;

	/* stores checkpoint kc (the state after token q - 1); gsum: the dt of
	 * the tokens of the current group up to q, not yet in dpart */
	auto ck_store = [&]() {
		float *c = ck + (size_t)kc * state_floats;
#pragma unroll
		for (int k = 0; k < CPL; k++) {
			const float d = sum_lanes<G>(dpart[k]) + gsum[k];
#pragma unroll
			for (int j = 0; j < S; j++)
				c[ck_ssm_off + (size_t)(ec + k) * SCAN1_N + n * S + j] = h[k][j];
			if (n == 0)
				c[ck_dts_off + ec + k] = d;
		}
		kc++;
	};

	const int ntiles = (L + SCAN1_TT - 1) / SCAN1_TT;
	for (int i = -1; i < ntiles; i++) {
		/* tile i+1 into buffer (i+1)&1, whose last readers finished before
		 * the barrier that ended iteration i-1 */
		if (i + 1 < ntiles) {
			const int t1 = (i + 1) * SCAN1_TT;
			float *b = smem + ((i + 1) & 1) * BUF;
			/* B | C: 2N / 4 pieces a token; dt, x and z: CB / 4 */
			for (int c = threadIdx.x; c < SCAN1_TT * BCS / 4; c += NT) {
				const int t = t1 + c / (BCS / 4);
				cp_async16(b + 4 * c,
					   dbc + (size_t)(t < L ? t : 0) * W + R + 4 * (c % (BCS / 4)),
					   t < L);
			}
			for (int c = threadIdx.x; c < SCAN1_TT * CB / 4; c += NT) {
				const int t = t1 + c / (CB / 4), tc = t < L ? t : 0;
				const size_t off = (size_t)tc * E + e0 + 4 * (c % (CB / 4));
				cp_async16(b + SCAN1_TT * BCS + 4 * c, dtr + off, t < L);
				cp_async16(b + SCAN1_TT * (BCS + CB) + 4 * c, xc + off, t < L);
				cp_async16(b + SCAN1_TT * (BCS + 2 * CB) + 4 * c,
					   xz + off + (size_t)tc * E + E, t < L);
			}
		}
		cp_async_commit();
		if (i < 0) {
			__syncthreads(); /* s_ck */
			continue;
		}
		cp_async_wait<1>();
		__syncthreads();

		const int t0 = i * SCAN1_TT;
		const float *s_bc = smem + (i & 1) * BUF;
		float *s_dt = (float *)s_bc + SCAN1_TT * BCS;
		const float *s_x = s_dt + SCAN1_TT * CB, *s_z = s_x + SCAN1_TT * CB;
		float *s_dx = s_dt + 3 * SCAN1_TT * CB;
		/* dt -> softplus(dt + dt_b) and dt x, once per (token, channel);
		 * 0 past the chunk */
#pragma unroll
		for (int q = 0; q < SCAN1_TT * CB / NT; q++) {
			const int idx = threadIdx.x + NT * q;
			const float d = t0 + idx / CB < L ? softplus(s_dt[idx] + dtb) : 0.0f;
			s_dt[idx] = d;
			s_dx[idx] = d * s_x[idx];
		}
		__syncthreads();

		for (int g0 = 0; g0 < SCAN1_TT && t0 + g0 < L; g0 += G) {
			const int tg = t0 + g0; /* the group's first token */
			const int tz = tg + n;  /* the token this lane gates */
			int next = kc < n_ck ? s_ck[kc] : -1;
			const bool inside = next > tg && next < tg + G && next < L;
			float p[CPL][G];

#pragma unroll
			for (int k = 0; k < CPL; k++)
				gsum[k] = 0.0f;
			/* token g0 + tt of the group for this lane's states */
			auto tok = [&](int tt) {
				const int r = g0 + tt;
				float Bv[S], Cv[S], d[CPL], dx[CPL];
				lds_n<S>(Bv, s_bc + r * BCS + n * S);
				lds_n<S>(Cv, s_bc + r * BCS + SCAN1_N + n * S);
				lds_n<CPL>(d, s_dt + r * CB + cl0);
				lds_n<CPL>(dx, s_dx + r * CB + cl0);
#pragma unroll
				for (int k = 0; k < CPL; k++) {
					float y = 0.0f;
#pragma unroll
					for (int j = 0; j < S; j++) {
						h[k][j] = ex2_approx(d[k] * a[k][j]) * h[k][j] +
							  dx[k] * Bv[j];
						y += Cv[j] * h[k][j];
					}
					p[k][tt] = y;
					gsum[k] += d[k];
				}
			};
			if (!inside) {
#pragma unroll
				for (int tt = 0; tt < G; tt++)
					tok(tt);
			} else {
				/* a checkpoint inside: the same tokens, a test after each */
#pragma unroll
				for (int tt = 0; tt < G; tt++) {
					tok(tt);
					while (next == tg + tt + 1) {
						ck_store();
						next = kc < n_ck ? s_ck[kc] : -1;
					}
				}
			}

			/* lane n: token tz's y of each channel, gated and stored */
			float d[CPL], x[CPL], z[CPL];
			lds_n<CPL>(d, s_dt + (g0 + n) * CB + cl0);
			lds_n<CPL>(x, s_x + (g0 + n) * CB + cl0);
			lds_n<CPL>(z, s_z + (g0 + n) * CB + cl0);
#pragma unroll
			for (int k = 0; k < CPL; k++) {
				const float y = reduce_scatter<G>(p[k], n);
				dpart[k] += d[k];
				if (tz < L)
					yT[(size_t)tz * E + ec + k] =
						from_f32<T>((y + dsk[k] * x[k]) * silu(z[k] + zb[k]));
			}
			/* checkpoints at the group's end, or at the chunk's end inside
			 * its last group (the tokens past it left the state as it is) */
#pragma unroll
			for (int k = 0; k < CPL; k++)
				gsum[k] = 0.0f;
			while (next > 0 && next <= tg + G) {
				ck_store();
				next = kc < n_ck ? s_ck[kc] : -1;
			}
		}
		/* the next iteration's copies overwrite this buffer only after this */
		__syncthreads();
	}
#pragma unroll
	for (int k = 0; k < CPL; k++) {
		const float d = sum_lanes<G>(dpart[k]);
#pragma unroll
		for (int j = 0; j < S; j++)
			ssm[(size_t)(ec + k) * SCAN1_N + n * S + j] = h[k][j];
		if (n == 0)
			dts[ec + k] = d;
	}
}

#endif
