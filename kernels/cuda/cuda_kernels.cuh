/*
 * cuda_kernels.cuh — the CUDA backend's own kernels (everything but GEMMs).
 *
 * Included by cuda_backend.cu only. T is the weight dtype (float, __half,
 * __nv_bfloat16): GEMM inputs are written in T, everything the recurrence
 * touches is f32. Shapes use B = rows (decode batch or prefill chunk),
 * D = d_model, E = d_inner, N = d_state, K = d_conv, R = dt_rank,
 * W = R + 2N (one x_proj output row: dt_low | B | C).
 *
 * Kernel names start with ssmk_ (the racecheck run of tools/gpu_run.sh
 * selects them by that prefix). The selective-SSM kernels give each channel LANES = 4 consecutive lanes of a
 * warp, each lane holding NPL = N / 4 state entries in registers; the output
 * y = C.h is reduced over the 4 lanes with two xor-shuffles.
 */
#ifndef SSM_CUDA_KERNELS_CUH
#define SSM_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define SSM_LANES 4        /* lanes per channel in the SSM kernels */
#define SSM_CH_PER_BLOCK 32 /* channels per 128-thread block */

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v)
{
	return __half2float(v);
}
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v)
{
	return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v)
{
	return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v)
{
	return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

/* torch.nn.functional.softplus with its default threshold 20. */
__device__ __forceinline__ float softplus(float v)
{
	return v > 20.0f ? v : log1pf(expf(v));
}

/* Eight f32 values (or four for f32 storage) from one 16-byte load. */
__device__ __forceinline__ void unpack16(const uint4 &v, float *f, float)
{
	f[0] = __uint_as_float(v.x);
	f[1] = __uint_as_float(v.y);
	f[2] = __uint_as_float(v.z);
	f[3] = __uint_as_float(v.w);
}
__device__ __forceinline__ void unpack16(const uint4 &v, float *f, __nv_bfloat16)
{
	const __nv_bfloat162 *p = (const __nv_bfloat162 *)&v;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		float2 t = __bfloat1622float2(p[i]);
		f[2 * i] = t.x;
		f[2 * i + 1] = t.y;
	}
}
__device__ __forceinline__ void unpack16(const uint4 &v, float *f, __half)
{
	const __half2 *p = (const __half2 *)&v;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		float2 t = __half22float2(p[i]);
		f[2 * i] = t.x;
		f[2 * i + 1] = t.y;
	}
}

/*
 * Programmatic dependent launch (sm_90). A kernel launched with the
 * programmatic-stream-serialization attribute may start while the kernel
 * before it in the stream still runs: pdl_launch_dependents lets the next
 * kernel be scheduled once every block of this one has started, and
 * pdl_wait returns when the previous kernel has completed with its writes
 * visible. Without the attribute both are no-ops.
 */
__device__ __forceinline__ void pdl_launch_dependents(void)
{
	asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

__device__ __forceinline__ void pdl_wait(void)
{
	asm volatile("griddepcontrol.wait;" ::: "memory");
}

/* h[r, :] = embed[tok[r], :] as f32.  grid (B), block 256. */
template <typename T>
__global__ void ssmk_embed(const int32_t *tok, const T *embed, float *h, int D)
{
	const T *src = embed + (size_t)tok[blockIdx.x] * D;
	float *dst = h + (size_t)blockIdx.x * D;

	for (int i = threadIdx.x; i < D; i += blockDim.x)
		dst[i] = to_f32(src[i]);
}

/*
 * Fused residual add + RMSNorm, one block (256 threads) per row:
 *   h[r] += mix[r] + mix_b            (when mix != NULL)
 *   xn[r] = h[r] * rsqrt(mean(h[r]^2) + eps) * w       (in T)
 * When pool != NULL, h[r] is also stored as the hidden vector of slot
 * slots[r] (skipped for padding rows, slot < 0).
 */
template <typename T>
__global__ void ssmk_add_norm(float *h, const float *mix, const float *mix_b,
			   const float *w, T *xn, int D, float eps,
			   float *pool, const int *slots, size_t state_floats,
			   size_t off_hidden)
{
	__shared__ float red[32];
	float *hr = h + (size_t)blockIdx.x * D;
	float ss = 0.0f;

	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		float v = hr[i];
		if (mix) {
			v += mix[(size_t)blockIdx.x * D + i];
			if (mix_b)
				v += mix_b[i];
			hr[i] = v;
		}
		ss += v * v;
	}
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
	float *hid = NULL;
	if (pool && slots[blockIdx.x] >= 0)
		hid = pool + (size_t)slots[blockIdx.x] * state_floats + off_hidden;
	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		xr[i] = from_f32<T>(hr[i] * scale * w[i]);
		if (hid)
			hid[i] = hr[i];
	}
}

/* Copies slot slots[r]'s hidden vector into h[r].  grid (B), block 256. */
__global__ void ssmk_load_hidden(float *h, const float *pool, const int *slots,
			      size_t state_floats, size_t off_hidden, int D)
{
	const float *src = pool + (size_t)slots[blockIdx.x] * state_floats + off_hidden;

	for (int i = threadIdx.x; i < D; i += blockDim.x)
		h[(size_t)blockIdx.x * D + i] = src[i];
}

/*
 * Decode conv step of channel e, batch row r, given the in_proj output xin:
 *   x   = xin + in_b[e]
 *   out = conv_b[e] + sum_{j<K-1} w[e, j] * win[j] + w[e, K-1] * x
 *   win <- (win[1..K-2], x)           (the slot's conv state, oldest first)
 *   xc[r, e] = SiLU(out)  (f32 and T)
 * conv_off = float offset of this layer's conv state inside a slot; a
 * padding row (slot < 0) has no state (zeros) and keeps none.
 */
template <typename T>
__device__ __forceinline__ void ssm_conv_channel(float xin, int e, int r, const float *in_b,
						 const float *cw, const float *cb, float *pool,
						 int slot, size_t state_floats, size_t conv_off,
						 int E, int K, float *xc, T *xcT)
{
	const float x = xin + (in_b ? in_b[e] : 0.0f);
	const float *w = cw + (size_t)e * K;
	float acc = cb ? cb[e] : 0.0f;

	if (slot >= 0) {
		float *win = pool + (size_t)slot * state_floats + conv_off +
			     (size_t)e * (K - 1);
		for (int j = 0; j < K - 1; j++)
			acc += w[j] * win[j];
		for (int j = 0; j + 1 < K - 1; j++)
			win[j] = win[j + 1];
		win[K - 2] = x;
	}
	acc += w[K - 1] * x;
	const float y = silu(acc);
	xc[(size_t)r * E + e] = y;
	xcT[(size_t)r * E + e] = from_f32<T>(y);
}

/* The conv step (ssm_conv_channel) on the in_proj output in xz, one thread
 * per (row r, channel e). grid (ceil(E/128), B), block 128. */
template <typename T>
__global__ void ssmk_conv_step(const float *xz, const float *in_b, const float *cw,
			    const float *cb, float *pool, const int *slots,
			    size_t state_floats, size_t conv_off, int E, int K,
			    float *xc, T *xcT)
{
	const int e = blockIdx.x * blockDim.x + threadIdx.x;
	const int r = blockIdx.y;

	if (e < E)
		ssm_conv_channel<T>(xz[(size_t)r * 2 * E + e], e, r, in_b, cw, cb, pool,
				    slots[r], state_floats, conv_off, E, K, xc, xcT);
}

/*
 * Decode SSM step, fused: per row r and channel e (4 lanes, NPL states each)
 *   dt  = softplus(dt_w[e, :] . dbc[r, 0:R] + dt_b[e])
 *   h_n = exp(dt * A[e, n]) * h_n + dt * B[r, n] * x        (slot state)
 *   y   = (sum_n C[r, n] * h_n + D[e] * x) * SiLU(z + in_b[E + e])
 *   dt_sum[e] += dt
 * ssm_off / dts_off = float offsets of this layer's ssm / dt_sum inside a slot.
 * A block takes `rpb` consecutive rows of its 32 channels in turn, so their
 * dt_w rows (read with 16-byte loads when R allows) come from L1 after the
 * first row. Serves the small-batch path (rpb = 1; batches of 2 or more rows
 * take ssmk_ssm_step_b), launched there with programmatic dependent launch:
 * A is loaded before waiting for x_proj (pdl_wait).
 * grid (ceil(E/32), ceil(B/rpb)), block 128.
 */

template <typename T, int NPL>
__global__ void ssmk_ssm_step(const float *dbc, int R, const T *dt_w,
			   const float *dt_b, const float *A, const float *Dp,
			   const float *xc, const float *xz, const float *in_b,
			   float *pool, const int *slots, size_t state_floats,
			   size_t ssm_off, size_t dts_off, int E, int B, int rpb,
			   T *yT)
{
	constexpr int VEC = 16 / sizeof(T);
	const int N = NPL * SSM_LANES;
	const int W = R + 2 * N;
	const int g = threadIdx.x & (SSM_LANES - 1);
	const int e = blockIdx.x * SSM_CH_PER_BLOCK + threadIdx.x / SSM_LANES;
	const bool valid = e < E;
	const int ec = valid ? e : E - 1; /* keeps every lane in the shuffles */
	const int r1 = (blockIdx.y + 1) * rpb < B ? (blockIdx.y + 1) * rpb : B;
	const T *wr = dt_w + (size_t)ec * R;
	float a[NPL];

	pdl_launch_dependents();
#pragma unroll
	for (int i = 0; i < NPL; i++)
		a[i] = A[(size_t)ec * N + g * NPL + i];
	pdl_wait();
	for (int r = blockIdx.y * rpb; r < r1; r++) {
		const int slot = slots[r];
		const float *row = dbc + (size_t)r * W;
		float acc = 0.0f;

		if (R % VEC == 0) {
			for (int j = g * VEC; j < R; j += SSM_LANES * VEC) {
				float wf[VEC];
				unpack16(__ldg((const uint4 *)(wr + j)), wf, T());
#pragma unroll
				for (int i = 0; i < VEC; i++)
					acc += wf[i] * row[j + i];
			}
		} else {
			for (int j = g; j < R; j += SSM_LANES)
				acc += to_f32(wr[j]) * row[j];
		}
		acc += __shfl_xor_sync(0xffffffffu, acc, 1);
		acc += __shfl_xor_sync(0xffffffffu, acc, 2);
		const float dt = softplus(acc + dt_b[ec]);
		const float x = xc[(size_t)r * E + ec];
		const float z = xz[(size_t)r * 2 * E + E + ec] + (in_b ? in_b[E + ec] : 0.0f);

		float *hs = NULL;
		if (slot >= 0)
			hs = pool + (size_t)slot * state_floats + ssm_off +
			     (size_t)ec * N + g * NPL;
		const float *Bv = row + R + g * NPL;
		const float *Cv = row + R + N + g * NPL;
		float y = 0.0f;
#pragma unroll
		for (int i = 0; i < NPL; i++) {
			float hv = hs ? hs[i] : 0.0f;
			hv = __expf(dt * a[i]) * hv + dt * Bv[i] * x;
			y += Cv[i] * hv;
			if (hs && valid)
				hs[i] = hv;
		}
		y += __shfl_xor_sync(0xffffffffu, y, 1);
		y += __shfl_xor_sync(0xffffffffu, y, 2);
		if (valid && g == 0) {
			y = (y + Dp[e] * x) * silu(z);
			yT[(size_t)r * E + e] = from_f32<T>(y);
			if (slot >= 0)
				pool[(size_t)slot * state_floats + dts_off + e] += dt;
		}
	}
}

/* Rows per block of ssmk_ssm_step_b. Measured on the H200 (bf16, decode
 * ms/step at batch 64): 2 rows 1.4b 3.32 / 2.8b 5.61, 4 rows 3.43 / 5.81,
 * 8 rows 4.21 / 7.35: fewer rows per block, more blocks in flight. */
#define SSM_STEP_ROWS 2

/*
 * The SSM step of ssmk_ssm_step (same formulas, same contract) for the
 * batched (cuBLAS) path: a block takes RPB consecutive rows of its 32
 * channels and issues every load of all its rows (slots, states, x, z,
 * dt_sum) before computing any, so a block waits for memory once, not once
 * per row (slots in a batch are distinct: no row's stores touch another
 * row's loads). States move as 16-byte pieces when NPL == 4 and
 * state_floats is a multiple of 4; each channel's dt_w row is read once for
 * all the block's rows, the dt_low rows as 16-byte pieces.
 * grid (ceil(E/32), ceil(B/RPB)), block 128.
 */
template <typename T, int NPL, int RPB>
__global__ void ssmk_ssm_step_b(const float *dbc, int R, const T *dt_w,
				const float *dt_b, const float *A, const float *Dp,
				const float *xc, const float *xz, const float *in_b,
				float *pool, const int *slots, size_t state_floats,
				size_t ssm_off, size_t dts_off, int E, int B, T *yT)
{
	constexpr int VEC = 16 / sizeof(T);
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
		/* R % VEC == 0 makes W and j multiples of 4: 16-byte row pieces */
		for (int j = g * VEC; j < R; j += SSM_LANES * VEC) {
			float wf[VEC];
			unpack16(__ldg((const uint4 *)(wr + j)), wf, T());
#pragma unroll
			for (int q = 0; q < RPB; q++) {
				const float4 *row = (const float4 *)(dbc +
					(size_t)(r0 + q < B ? r0 + q : B - 1) * W + j);
#pragma unroll
				for (int i = 0; i < VEC / 4; i++) {
					const float4 f = row[i];
					acc[q] += wf[4 * i] * f.x + wf[4 * i + 1] * f.y +
						  wf[4 * i + 2] * f.z + wf[4 * i + 3] * f.w;
				}
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

/*
 * Prefill causal conv over a chunk of L tokens, one thread per (t, e):
 *   in(p) = xz[p, e] + in_b[e] for p >= 0, else the slot's conv state
 *           column K-1+p (the inputs before this chunk)
 *   xc[t, e] = SiLU(conv_b[e] + sum_{j<K} w[e, j] * in(t - (K-1) + j))
 * conv = this layer's (E, K-1) conv state in the slot (read only here).
 * grid (ceil(E/128), L), block 128.
 */
template <typename T>
__global__ void ssmk_conv_seq(const float *xz, const float *in_b, const float *cw,
			   const float *cb, const float *conv, int E, int K,
			   float *xc, T *xcT)
{
	const int e = blockIdx.x * blockDim.x + threadIdx.x;
	const int t = blockIdx.y;
	if (e >= E)
		return;
	const float bias = in_b ? in_b[e] : 0.0f;
	const float *w = cw + (size_t)e * K;
	float acc = cb ? cb[e] : 0.0f;

	for (int j = 0; j < K; j++) {
		const int p = t - (K - 1) + j;
		const float v = p >= 0 ? xz[(size_t)p * 2 * E + e] + bias
				       : conv[(size_t)e * (K - 1) + (K - 1) + p];
		acc += w[j] * v;
	}
	const float y = silu(acc);
	xc[(size_t)t * E + e] = y;
	xcT[(size_t)t * E + e] = from_f32<T>(y);
}

/*
 * Conv windows after chunk position q (the newest K-1 inputs up to and
 * including token q-1 of the chunk), for each q in qs[0..nq):
 *   dst[k * dst_stride + e * (K-1) + j] = in(q - (K-1) + j),  j < K-1
 * with in() as in ssmk_conv_seq reading the old state `conv`. One thread per
 * channel walks j upwards; it reads column q+j >= j+1 of the old state before
 * any write to it, so dst may be `conv` itself (the final update, nq = 1).
 * grid (ceil(E/128)), block 128.
 */
__global__ void ssmk_conv_window(const float *xz, const float *in_b,
			      const float *conv, const int *qs, int nq, int q1,
			      int E, int K, float *dst, size_t dst_stride)
{
	const int e = blockIdx.x * blockDim.x + threadIdx.x;
	if (e >= E)
		return;
	const float bias = in_b ? in_b[e] : 0.0f;

	for (int k = 0; k < nq; k++) {
		const int q = qs ? qs[k] : q1;
		float *d = dst + (size_t)k * dst_stride + (size_t)e * (K - 1);
		for (int j = 0; j < K - 1; j++) {
			const int p = q - (K - 1) + j;
			d[j] = p >= 0 ? xz[(size_t)p * 2 * E + e] + bias
				      : conv[(size_t)e * (K - 1) + (K - 1) + p];
		}
	}
}

/* dlT[t, j] = dbc[t, j] for j < R, in T (the dt_proj GEMM's input).
 * grid (L), block 64. */
template <typename T>
__global__ void ssmk_dt_low(const float *dbc, int W, int R, T *dlT)
{
	for (int j = threadIdx.x; j < R; j += blockDim.x)
		dlT[(size_t)blockIdx.x * R + j] = from_f32<T>(dbc[(size_t)blockIdx.x * W + j]);
}

/*
 * Prefill selective scan over a chunk of L tokens, parallel over channels and
 * over time. Per token t and channel e:
 *   dt  = softplus(dtr[t, e] + dt_b[e])
 *   h_n = exp(dt * A[e, n]) * h_n + dt * B[t, n] * x[t, e]
 *   y   = (sum_n C[t, n] h_n + D[e] x[t, e]) * SiLU(z[t, e])
 * The chunk is cut into segments of SCAN_SEG tokens (grid.y). Because the
 * recurrence is linear in h, a segment's end state is
 *   h_end = exp(A * sum_seg dt) * h_start + h_local
 * with h_local the segment's end state from zero. So, with nseg > 1:
 *   pass 1 (ssmk_scan<LOCAL=true>): every segment from zero -> seg_h, seg_dt;
 *   pass 2 (ssmk_scan_combine): walks the segments in order per (e, n) ->
 *          start_h, start_d of every segment;
 *   pass 3 (ssmk_scan<LOCAL=false>): every segment again from its true start,
 *          writing y, the checkpoint states and (last segment) the slot.
 * With nseg == 1 only pass 3 runs, starting from the slot.
 * Each channel's state stays in registers (4 lanes x NPL entries) within a
 * segment and reaches memory only at segment ends, checkpoints
 * (ck_pos[0..n_ck), chunk-relative in [1, L]: the state after token q-1 goes
 * to ck + k * state_floats + ck_ssm_off / + ck_dts_off) and the chunk's end.
 *
 * The block's 32 channels walk a segment in tiles of SCAN_TILE tokens: the
 * block first loads the tile's dt (softplus once per token and channel), x,
 * SiLU(z), B and C into shared memory with coalesced loads, runs the
 * recurrence from shared memory, then stores y with coalesced writes.
 * grid (ceil(E/32), nseg), block 128, shared memory scan_smem_bytes(N).
 */
#define SCAN_TILE 32
#define SCAN_SEG 64

static inline size_t scan_smem_bytes(int N)
{
	return sizeof(float) * SCAN_TILE * (4 * SSM_CH_PER_BLOCK + 2 * N);
}

template <typename T, int NPL, bool LOCAL>
__global__ void __launch_bounds__(128)
ssmk_scan(const float *dtr, const float *dt_b, const float *dbc, int R,
       const float *xc, const float *xz, const float *in_b, const float *A,
       const float *Dp, const float *start_h, const float *start_d,
       size_t start_stride_h, size_t start_stride_d, float *seg_h,
       float *seg_dt, float *ssm, float *dts, int E, int L, const int *ck_pos,
       int n_ck, float *ck, size_t state_floats, size_t ck_ssm_off,
       size_t ck_dts_off, T *yT)
{
	const int N = NPL * SSM_LANES;
	const int W = R + 2 * N;
	const int CB = SSM_CH_PER_BLOCK;
	extern __shared__ float smem[];
	float *s_dt = smem;                  /* (SCAN_TILE, CB) */
	float *s_x = s_dt + SCAN_TILE * CB;  /* (SCAN_TILE, CB) */
	float *s_g = s_x + SCAN_TILE * CB;   /* (SCAN_TILE, CB) SiLU(z) */
	float *s_y = s_g + SCAN_TILE * CB;   /* (SCAN_TILE, CB) output */
	float *s_bc = s_y + SCAN_TILE * CB;  /* (SCAN_TILE, 2N) B | C */
	const int e0 = blockIdx.x * CB;
	const int ch = threadIdx.x / SSM_LANES;
	const int g = threadIdx.x & (SSM_LANES - 1);
	const int e = e0 + ch;
	const bool valid = e < E;
	const int ec = valid ? e : E - 1;
	const int seg = blockIdx.y;
	const int ts = seg * SCAN_SEG;
	const int te = ts + SCAN_SEG < L ? ts + SCAN_SEG : L;
	const bool last = te == L;

	float h[NPL], a[NPL], dsum = 0.0f;
#pragma unroll
	for (int i = 0; i < NPL; i++) {
		h[i] = LOCAL ? 0.0f
			     : start_h[seg * start_stride_h + (size_t)ec * N + g * NPL + i];
		a[i] = A[(size_t)ec * N + g * NPL + i];
	}
	if (!LOCAL)
		dsum = start_d[seg * start_stride_d + ec];
	const float dskip = Dp[ec];
	int k = 0;
	if (!LOCAL)
		while (k < n_ck && ck_pos[k] <= ts)
			k++;
	int next_ck = !LOCAL && k < n_ck ? ck_pos[k] : -1;

	for (int t0 = ts; t0 < te; t0 += SCAN_TILE) {
		const int nt = te - t0 < SCAN_TILE ? te - t0 : SCAN_TILE;

		for (int idx = threadIdx.x; idx < nt * CB; idx += blockDim.x) {
			const int tt = idx / CB, c = idx % CB, ee = e0 + c;
			float dt = 0.0f, x = 0.0f, gz = 0.0f;
			if (ee < E) {
				const size_t t = (size_t)(t0 + tt);
				dt = softplus(dtr[t * E + ee] + dt_b[ee]);
				x = xc[t * E + ee];
				if (!LOCAL)
					gz = silu(xz[t * 2 * E + E + ee] +
						  (in_b ? in_b[E + ee] : 0.0f));
			}
			s_dt[idx] = dt;
			s_x[idx] = x;
			s_g[idx] = gz;
		}
		for (int idx = threadIdx.x; idx < nt * 2 * N; idx += blockDim.x) {
			const int tt = idx / (2 * N), j = idx % (2 * N);
			s_bc[idx] = dbc[(size_t)(t0 + tt) * W + R + j];
		}
		__syncthreads();

		/* unrolled so the next tokens' shared-memory loads overlap this one's chain */
#pragma unroll 4
		for (int tt = 0; tt < nt; tt++) {
			const float dt = s_dt[tt * CB + ch];
			const float x = s_x[tt * CB + ch];
			const float *Bv = s_bc + tt * 2 * N + g * NPL;
			const float *Cv = Bv + N;
			const float dx = dt * x;
			float y = 0.0f;
#pragma unroll
			for (int i = 0; i < NPL; i++) {
				h[i] = __expf(dt * a[i]) * h[i] + dx * Bv[i];
				if (!LOCAL)
					y += Cv[i] * h[i];
			}
			dsum += dt;
			if (LOCAL)
				continue;
			y += __shfl_xor_sync(0xffffffffu, y, 1);
			y += __shfl_xor_sync(0xffffffffu, y, 2);
			if (g == 0)
				s_y[tt * CB + ch] = (y + dskip * x) * s_g[tt * CB + ch];
			while (next_ck == t0 + tt + 1) {
				if (valid) {
					float *c = ck + (size_t)k * state_floats;
#pragma unroll
					for (int i = 0; i < NPL; i++)
						c[ck_ssm_off + (size_t)e * N + g * NPL + i] = h[i];
					if (g == 0)
						c[ck_dts_off + e] = dsum;
				}
				k++;
				next_ck = k < n_ck ? ck_pos[k] : -1;
			}
		}
		__syncthreads();

		if (!LOCAL)
			for (int idx = threadIdx.x; idx < nt * CB; idx += blockDim.x) {
				const int tt = idx / CB, c = idx % CB;
				if (e0 + c < E)
					yT[(size_t)(t0 + tt) * E + e0 + c] = from_f32<T>(s_y[idx]);
			}
		/* the next tile's loads overwrite shared memory only after this */
		__syncthreads();
	}
	if (!valid)
		return;
	if (LOCAL) {
#pragma unroll
		for (int i = 0; i < NPL; i++)
			seg_h[((size_t)seg * E + e) * N + g * NPL + i] = h[i];
		if (g == 0)
			seg_dt[(size_t)seg * E + e] = dsum;
	} else if (last) {
#pragma unroll
		for (int i = 0; i < NPL; i++)
			ssm[(size_t)e * N + g * NPL + i] = h[i];
		if (g == 0)
			dts[e] = dsum;
	}
}

/*
 * Pass 2 of the segmented scan, one thread per (e, n): from the slot's state
 * (ssm (E, N), dts (E)) walks the segments in order,
 *   start_h[s] = h;  h = exp(A[e, n] * seg_dt[s, e]) * h + seg_h[s, e, n]
 * and likewise start_d[s] = d;  d += seg_dt[s, e]  (written by n == 0).
 * grid (ceil(E*N/256)), block 256.
 */
__global__ void ssmk_scan_combine(const float *A, const float *ssm, const float *dts,
			       const float *seg_h, const float *seg_dt,
			       float *start_h, float *start_d, int E, int N, int nseg)
{
	const int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= E * N)
		return;
	const int e = i / N, n = i % N;
	const float a = A[i];
	float h = ssm[i], d = dts[e];

	for (int s = 0; s < nseg; s++) {
		const float sd = seg_dt[(size_t)s * E + e];
		start_h[(size_t)s * E * N + i] = h;
		if (n == 0)
			start_d[(size_t)s * E + e] = d;
		h = __expf(a * sd) * h + seg_h[(size_t)s * E * N + i];
		d += sd;
	}
}

#endif
