/*
 * cuda_kernels.cuh — the CUDA backend's own kernels (everything but GEMMs).
 *
 * Included by cuda_backend.cu only. T is the weight dtype (float, __half,
 * __nv_bfloat16): GEMM inputs, and the prefill's activations between its
 * kernels (in_proj's x | z, the conv's output), are in T; the states, dt,
 * B, C and every sum are f32. Shapes use B = rows (decode batch or prefill
 * chunk), D = d_model, E = d_inner, N = d_state, K = d_conv, R = dt_rank,
 * W = R + 2N (one x_proj output row: dt_low | B | C).
 *
 * Kernel names start with ssmk_ (the racecheck run of tools/gpu_run.sh
 * selects them by that prefix). The selective-SSM kernels give each channel
 * LANES = 4 consecutive lanes of a warp, each lane holding NPL = N / 4 state
 * entries in registers; the output y = C.h is reduced over the 4 lanes with
 * two xor-shuffles. The prefill scan's pass 3 gives a channel one thread
 * instead (ssmk_scan).
 */
#ifndef SSM_CUDA_KERNELS_CUH
#define SSM_CUDA_KERNELS_CUH

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

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

/* Programmatic dependent launch: a kernel launched with programmatic stream
 * serialization (launch_pdl) may start before the kernel ahead of it in the
 * stream has finished; pdl_wait() returns once that kernel has completed and
 * its writes are visible. Everything before it must neither read what that
 * kernel writes nor write what it reads (the kernels before that one have
 * completed: their blocks ended after their own pdl_wait()). Without the
 * launch attribute it returns at once. */
__device__ __forceinline__ void pdl_wait(void)
{
	asm volatile("griddepcontrol.wait;" ::: "memory");
}

/* Lets the kernel after this one in the stream, where it was launched with
 * programmatic stream serialization, start its blocks before this one's
 * have all ended: they take the SMs this kernel leaves free and sit in
 * their pdl_wait() until it completes, so its end and their start-up
 * overlap. Without it, the next kernel starts only as this one's last
 * blocks end. A kernel started this way must touch no global memory before
 * its pdl_wait() (bench/NOTES.md round thirty-three: the batched SSM step's
 * state loads there gave wrong rows, though nothing running wrote them). */
__device__ __forceinline__ void pdl_trigger(void)
{
	asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

/* The decode step's inputs (n words: slots | samplers | tokens) from pinned
 * host memory into their device copy, as the step's graph starts: one block,
 * loads that never hit a cached line (the host rewrites them between
 * steps). */
__global__ void ssmk_io_in(const unsigned *src, unsigned *dst, int n)
{
	for (int i = threadIdx.x; i < n; i += blockDim.x)
		dst[i] = __ldcv(src + i);
}

/* 2^v with the special-function unit (ex2.approx.ftz: 2 ulp, what __expf
 * uses after its own multiply by log2(e)). */
__device__ __forceinline__ float ex2_approx(float v)
{
	float r;
	asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
	return r;
}

/*
 * SiLU and softplus (the conv output, the gate and dt), in every kernel,
 * prefill and decode alike: few instructions for these per-(token, channel)
 * functions, with __expf (ex2.approx after a multiply by log2 e; at most 2 +
 * floor(|1.173 v|) ulp, so ~3e-6 relative at |v| = 20, ~1e-6 at the |v| < 5
 * that dt and z mostly take) and __fdividef (2 ulp) instead of the
 * correctly rounded expf and division (and log1pf: ~40 instructions). silu
 * is v / (1 + exp(-v)), -> -0 for v below about -88, where the denominator
 * overflows, as the exact formula does.
 */
__device__ __forceinline__ float silu(float v)
{
	/* __expf(-v) without its range fix-up for denormal results, which
	 * cannot change 1 + u */
	return __fdividef(v, 1.0f + ex2_approx(v * -1.4426950408889634f));
}

/* torch.nn.functional.softplus (threshold 20) as max(v, 0) + log1p(u), u =
 * exp(-|v|) in (0, 1], without log1pf or a branch (lanes of a warp take
 * either side of any threshold): log1p(u) = 2 atanh(s), s = u / (2 + u) <=
 * 1/3, by its series to s^15 (truncation < 1.5e-8 relative). For v > 20 the
 * log1p term is below half an ulp of v, so the result is v, as softplus's
 * threshold gives. ex2.approx and __fdividef: ~2 ulp each; u is flushed to 0
 * below 2^-126, so softplus(v) is 0 for v below about -87. */
__device__ __forceinline__ float softplus(float v)
{
	const float u = ex2_approx(fabsf(v) * -1.4426950408889634f);
	const float s = __fdividef(u, 2.0f + u), s2 = s * s;
	float p = 2.0f / 15;
	p = fmaf(p, s2, 2.0f / 13);
	p = fmaf(p, s2, 2.0f / 11);
	p = fmaf(p, s2, 2.0f / 9);
	p = fmaf(p, s2, 2.0f / 7);
	p = fmaf(p, s2, 2.0f / 5);
	p = fmaf(p, s2, 2.0f / 3);
	p = fmaf(p, s2, 2.0f);
	return fmaf(s, p, fmaxf(v, 0.0f));
}

/* dst[0..4) = v in T, as one store (dst aligned to 4 sizeof(T)) */
template <typename T> __device__ __forceinline__ void store4(T *dst, float4 v);
template <> __device__ __forceinline__ void store4<float>(float *dst, float4 v)
{
	*(float4 *)dst = v;
}
template <> __device__ __forceinline__ void store4<__half>(__half *dst, float4 v)
{
	const __half2 a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
	*(uint2 *)dst = make_uint2(*(const unsigned *)&a, *(const unsigned *)&b);
}
template <> __device__ __forceinline__ void store4<__nv_bfloat16>(__nv_bfloat16 *dst, float4 v)
{
	const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y),
			     b = __floats2bfloat162_rn(v.z, v.w);
	*(uint2 *)dst = make_uint2(*(const unsigned *)&a, *(const unsigned *)&b);
}

/* src[0..4) in T as f32, one load (src aligned to 4 sizeof(T)) */
template <typename T> __device__ __forceinline__ float4 load4(const T *src);
template <> __device__ __forceinline__ float4 load4<float>(const float *src)
{
	return *(const float4 *)src;
}
template <> __device__ __forceinline__ float4 load4<__half>(const __half *src)
{
	const uint2 u = *(const uint2 *)src;
	const float2 a = __half22float2(*(const __half2 *)&u.x),
		     b = __half22float2(*(const __half2 *)&u.y);
	return make_float4(a.x, a.y, b.x, b.y);
}
template <> __device__ __forceinline__ float4 load4<__nv_bfloat16>(const __nv_bfloat16 *src)
{
	const uint2 u = *(const uint2 *)src;
	const float2 a = __bfloat1622float2(*(const __nv_bfloat162 *)&u.x),
		     b = __bfloat1622float2(*(const __nv_bfloat162 *)&u.y);
	return make_float4(a.x, a.y, b.x, b.y);
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

__device__ __forceinline__ float4 f4_add(float4 a, float4 b)
{
	return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

/* float4 pieces a thread holds of a row in the RMSNorm kernels: rows up to
 * 4 * NORM_V4 * blockDim.x floats stay in registers */
#define NORM_V4 4

/* The sum of v over the block (every thread's value; blockDim.x a multiple
 * of 32), returned to every thread. red: shared (32). */
__device__ __forceinline__ float block_sum(float v, float *red)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	if ((threadIdx.x & 31) == 0)
		red[threadIdx.x >> 5] = v;
	__syncthreads();
	if (threadIdx.x < 32) {
		v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
		for (int o = 16; o > 0; o >>= 1)
			v += __shfl_xor_sync(0xffffffffu, v, o);
		if (threadIdx.x == 0)
			red[0] = v;
	}
	__syncthreads();
	return red[0];
}

/* h[r, :] = embed[tok[r], :] as f32.  grid (B), block 256. Rows of whole
 * 16-byte pieces load a piece a thread per round, so a 1.4b row (2048 bf16)
 * is one round trip, not eight. */
template <typename T>
__global__ void ssmk_embed(const int32_t *tok, const T *embed, float *h, int D)
{
	constexpr int VEC = 16 / sizeof(T);
	const T *src = embed + (size_t)tok[blockIdx.x] * D;
	float *dst = h + (size_t)blockIdx.x * D;

	if (D % VEC == 0) {
		for (int i = threadIdx.x; i < D / VEC; i += blockDim.x) {
			float f[VEC];

			unpack16(((const uint4 *)src)[i], f, T());
#pragma unroll
			for (int j = 0; j < VEC; j += 4)
				*(float4 *)(dst + i * VEC + j) =
					make_float4(f[j], f[j + 1], f[j + 2], f[j + 3]);
		}
		return;
	}
	for (int i = threadIdx.x; i < D; i += blockDim.x)
		dst[i] = to_f32(src[i]);
}

/*
 * RMSNorm of one row held in registers as float4, by one block (D % 4 == 0,
 * D <= 4 * NORM_V4 * blockDim.x):
 *   v  = ((hr + a) + a2) + b          (each term when not NULL; a2 only with
 *                                      a; v goes back to hr when any is added)
 *   xr = v * rsqrt(mean(v^2) + eps) * w              (in T)
 *   hid = v                           (when hid != NULL)
 * Every load of the row is issued before any is used (a load used at once
 * inside a loop made each of a thread's rounds wait for the last one: 16
 * round trips a row at d_model 2048). red: shared (32).
 */
template <typename T>
__device__ __forceinline__ void norm_row_v4(float *hr, const float *a, const float *a2,
					    const float *b, const float *w, T *xr, int D,
					    float eps, float *hid, float *red)
{
	const int D4 = D / 4;
	const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
	float4 v[NORM_V4], va[NORM_V4], va2[NORM_V4], vb[NORM_V4], ww[NORM_V4];
	float ss = 0.0f;

#pragma unroll
	for (int k = 0; k < NORM_V4; k++) {
		const int i = threadIdx.x + k * blockDim.x, ic = i < D4 ? i : 0;
		v[k] = ((const float4 *)hr)[ic];
		va[k] = a ? ((const float4 *)a)[ic] : zero;
		va2[k] = a2 ? ((const float4 *)a2)[ic] : zero;
		vb[k] = b ? ((const float4 *)b)[ic] : zero;
		ww[k] = ((const float4 *)w)[ic];
	}
#pragma unroll
	for (int k = 0; k < NORM_V4; k++) {
		const int i = threadIdx.x + k * blockDim.x;
		if (i < D4) {
			if (a)
				v[k] = f4_add(v[k], va[k]);
			if (a2)
				v[k] = f4_add(v[k], va2[k]);
			if (b)
				v[k] = f4_add(v[k], vb[k]);
			if (a || b)
				((float4 *)hr)[i] = v[k];
			ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z +
			      v[k].w * v[k].w;
		}
	}
	const float scale = rsqrtf(block_sum(ss, red) / (float)D + eps);
#pragma unroll
	for (int k = 0; k < NORM_V4; k++) {
		const int i = threadIdx.x + k * blockDim.x;
		if (i < D4) {
			store4<T>(xr + 4 * i, make_float4(v[k].x * scale * ww[k].x,
							  v[k].y * scale * ww[k].y,
							  v[k].z * scale * ww[k].z,
							  v[k].w * scale * ww[k].w));
			if (hid)
				((float4 *)hid)[i] = v[k];
		}
	}
}

/*
 * Fused residual add + RMSNorm, one block (256 threads) per row:
 *   h[r] = ((h[r] + mix[r]) + mix2[r]) + mix_b
 *                         (when mix != NULL; mix2, the second K slice of a
 *                          split out_proj, and mix_b each only with mix)
 *   xn[r] = h[r] * rsqrt(mean(h[r]^2) + eps) * w       (in T)
 * When pool != NULL, h[r] is also stored as the hidden vector of slot
 * slots[r] (skipped for padding rows, slot < 0). Rows of whole float4s up to
 * 4 * NORM_V4 * 256 floats take norm_row_v4, others a loop.
 */
template <typename T>
__global__ void ssmk_add_norm(float *h, const float *mix, const float *mix2,
			      const float *mix_b, const float *w, T *xn, int D, float eps,
			      float *pool, const int *slots, size_t state_floats,
			      size_t off_hidden)
{
	__shared__ float red[32];
	float *hr = h + (size_t)blockIdx.x * D;
	T *xr = xn + (size_t)blockIdx.x * D;
	float ss = 0.0f;

	/* the slot's hidden vector: the slot read before the wait (written
	 * by no kernel of the step) */
	float *hid = NULL;
	if (pool && slots[blockIdx.x] >= 0)
		hid = pool + (size_t)slots[blockIdx.x] * state_floats + off_hidden;
	pdl_wait();
	/* the next kernel (ssmk_gemm_rows) may start: it reads only
	 * weights before its wait */
	pdl_trigger();
	if (D % 4 == 0 && D <= 4 * NORM_V4 * (int)blockDim.x) {
		norm_row_v4<T>(hr, mix ? mix + (size_t)blockIdx.x * D : NULL,
			       mix && mix2 ? mix2 + (size_t)blockIdx.x * D : NULL,
			       mix ? mix_b : NULL, w, xr, D, eps, hid, red);
		return;
	}
	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		float v = hr[i];
		if (mix) {
			v += mix[(size_t)blockIdx.x * D + i];
			if (mix2)
				v += mix2[(size_t)blockIdx.x * D + i];
			if (mix_b)
				v += mix_b[i];
			hr[i] = v;
		}
		ss += v * v;
	}
	const float scale = rsqrtf(block_sum(ss, red) / (float)D + eps);
	for (int i = threadIdx.x; i < D; i += blockDim.x) {
		xr[i] = from_f32<T>(hr[i] * scale * w[i]);
		if (hid)
			hid[i] = hr[i];
	}
}

/*
 * Prefill RMSNorm of L rows, one block (256 threads) per row (norm_row_v4:
 * D % 4 == 0, D <= 4 * 256 * NORM_V4):
 *   h[r] += bias                      (when bias != NULL: the previous
 *                                      layer's out_proj bias)
 *   xn[r] = h[r] * rsqrt(mean(h[r]^2) + eps) * w       (in T)
 * The residual add itself happens in the out_proj GEMM (beta = 1 into h).
 * grid (L), block 256.
 */
template <typename T>
__global__ void __launch_bounds__(256)
ssmk_norm_rows(float *__restrict__ h, const float *__restrict__ bias,
	       const float *__restrict__ w, T *__restrict__ xn, int D, float eps)
{
	__shared__ float red[32];

	pdl_wait();
	norm_row_v4<T>(h + (size_t)blockIdx.x * D, NULL, NULL, bias, w,
		       xn + (size_t)blockIdx.x * D, D, eps, NULL, red);
}

/* Copies slot slots[r]'s hidden vector into h[r].  grid (B), block 256. */
__global__ void ssmk_load_hidden(float *h, const float *pool, const int *slots,
			      size_t state_floats, size_t off_hidden, int D)
{
	const float *src = pool + (size_t)slots[blockIdx.x] * state_floats + off_hidden;

	for (int i = threadIdx.x; i < D; i += blockDim.x)
		h[(size_t)blockIdx.x * D + i] = src[i];
}

/* xc[r, e] = SiLU(acc) in f32 and in T: a conv step's output. */
template <typename T>
__device__ __forceinline__ void conv_store(float acc, int r, int e, int E, float *xc, T *xcT)
{
	const float y = silu(acc);

	xc[(size_t)r * E + e] = y;
	xcT[(size_t)r * E + e] = from_f32<T>(y);
}

/*
 * Decode conv step of one channel, given x = the in_proj output + in_b:
 *   out = acc + sum_{j<K-1} w[j] * old[j] + w[K-1] * x    (acc: conv_b)
 *   win <- (old[1..K-2], x)         (the slot's conv state, oldest first)
 * returns out (before the SiLU). old is the window as it was (registers,
 * or win itself: each entry is read before it is overwritten); win NULL:
 * a padding row, which has no state (zeros) and keeps none.
 */
__device__ __forceinline__ float conv_step_out(float acc, const float *w, const float *old,
					       float *win, float x, int K)
{
	if (win) {
#pragma unroll
		for (int j = 0; j < K - 1; j++)
			acc += w[j] * old[j];
#pragma unroll
		for (int j = 0; j + 1 < K - 1; j++)
			win[j] = old[j + 1];
		win[K - 2] = x;
	}
	return acc + w[K - 1] * x;
}

/* Channel e's window (K - 1 floats, oldest first, K = d_conv) in slot
 * slot, NULL for a padding row (slot < 0), which has none. conv_off = float
 * offset of this layer's conv state inside a slot. */
__device__ __forceinline__ float *conv_window(float *pool, int slot, size_t state_floats,
					      size_t conv_off, int e, int K)
{
	return slot >= 0 ? pool + (size_t)slot * state_floats + conv_off + (size_t)e * (K - 1)
			 : NULL;
}

/* Channel e's conv weights (w, KC of them) and, for a slot, its window
 * (old; zeros for a padding row, slot < 0) into registers: returns the
 * window's place in the slot (conv_window). */
template <int KC>
__device__ __forceinline__ float *conv_load(float *pool, int slot, size_t state_floats,
					    size_t conv_off, int e, const float *cw, float *w,
					    float *old)
{
	float *win = conv_window(pool, slot, state_floats, conv_off, e, KC);

#pragma unroll
	for (int j = 0; j < KC; j++)
		w[j] = cw[(size_t)e * KC + j];
#pragma unroll
	for (int j = 0; j < KC - 1; j++)
		old[j] = win ? win[j] : 0.0f;
	return win;
}

/* conv_step_out on channel e, batch row r, reading its weights and window
 * in place: xc[r, e] = SiLU(out) (f32 and T). conv_off = float offset of
 * this layer's conv state inside a slot. */
template <typename T>
__device__ __forceinline__ void ssm_conv_channel(float xin, int e, int r, const float *in_b,
						 const float *cw, const float *cb, float *pool,
						 int slot, size_t state_floats, size_t conv_off,
						 int E, int K, float *xc, T *xcT)
{
	float *win = conv_window(pool, slot, state_floats, conv_off, e, K);

	conv_store<T>(conv_step_out(cb ? cb[e] : 0.0f, cw + (size_t)e * K, win, win,
				    xin + (in_b ? in_b[e] : 0.0f), K),
		      r, e, E, xc, xcT);
}

/*
 * The conv step (ssm_conv_channel) on the in_proj output in xz, one thread
 * per (row r, channel e). KC = d_conv where it is known at compile time (4,
 * every published Mamba-1 checkpoint), 0 for any other width. With KC the
 * slot, the conv weights and the window load before pdl_wait(): the window
 * was written by the previous step's conv, never by the in_proj GEMM ahead,
 * so they are in flight while it finishes (read after the wait, the slot,
 * then the window through a loop over the runtime width, they were a chain
 * of round trips). The same formula, summed in the same order.
 * grid (ceil(E/128), B), block 128.
 */
template <typename T, int KC>
__global__ void ssmk_conv_step(const float *xz, const float *in_b, const float *cw,
			    const float *cb, float *pool, const int *slots,
			    size_t state_floats, size_t conv_off, int E, int K,
			    float *xc, T *xcT)
{
	const int e = blockIdx.x * blockDim.x + threadIdx.x;
	const int r = blockIdx.y;

	if constexpr (KC > 0) {
		const int ec = e < E ? e : E - 1;
		float w[KC], old[KC - 1];
		float *win = conv_load<KC>(pool, slots[r], state_floats, conv_off, ec, cw, w, old);
		const float bias = cb ? cb[ec] : 0.0f, ib = in_b ? in_b[ec] : 0.0f;

		pdl_wait();
		if (e >= E)
			return;
		conv_store<T>(conv_step_out(bias, w, old, win, xz[(size_t)r * 2 * E + e] + ib, KC),
			      r, e, E, xc, xcT);
	} else {
		pdl_wait();
		if (e < E)
			ssm_conv_channel<T>(xz[(size_t)r * 2 * E + e], e, r, in_b, cw, cb, pool,
					    slots[r], state_floats, conv_off, E, K, xc, xcT);
	}
}

/* Rows per block of ssmk_ssm_step_b. Measured on the H200 (bf16, decode
 * ms/step at batch 64): 2 rows 1.4b 3.32 / 2.8b 5.61, 4 rows 3.43 / 5.81,
 * 8 rows 4.21 / 7.35: fewer rows per block, more blocks in flight. */
#define SSM_STEP_ROWS 2

/*
 * Decode SSM step, fused: per row r and channel e (4 lanes, NPL states each)
 *   dt  = softplus(dt_w[e, :] . dbc[r, 0:R] + dt_b[e])
 *   h_n = exp(dt * A[e, n]) * h_n + dt * B[r, n] * x        (slot state)
 *   y   = (sum_n C[r, n] * h_n + D[e] * x) * SiLU(z + in_b[E + e])
 *   dt_sum[e] += dt
 * ssm_off / dts_off = float offsets of this layer's ssm / dt_sum inside a
 * slot; padding rows (slot < 0) keep no state. For the batched (cuBLAS)
 * path (batch 1 has its own kernel, cuda_persist.cuh): a block takes RPB
 * consecutive rows of its 32
 * channels and issues every load of all its rows (slots, states, z,
 * dt_sum) before computing any, so a block waits for memory once, not once
 * per row (slots in a batch are distinct: no row's stores touch another
 * row's loads). States move as 16-byte pieces when NPL == 4 and
 * state_floats is a multiple of 4; each channel's dt_w row is read once for
 * all the block's rows, the dt_low rows as 16-byte pieces. Launched with
 * programmatic dependent launch; ssmk_conv_xproj starts its blocks early
 * (pdl_trigger), so they load nothing before pdl_wait().
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
	/* 16-byte state pieces need every slot's start 16-byte aligned */
	const bool v4 = NPL == 4 && (state_floats & 3) == 0;
	float a[NPL], h[RPB][NPL], x[RPB], z[RPB], ds[RPB], acc[RPB];
	int slot[RPB];

	pdl_wait();
	/* the next kernel (ssmk_gemm_rows) may start: it reads only
	 * weights before its wait */
	pdl_trigger();
	const float zb = in_b ? in_b[E + ec] : 0.0f;
#pragma unroll
	for (int i = 0; i < NPL; i++)
		a[i] = A[(size_t)ec * N + g * NPL + i];

#pragma unroll
	for (int q = 0; q < RPB; q++) {
		const int r = r0 + q < B ? r0 + q : B - 1;
		slot[q] = r0 + q < B ? slots[r] : -1;
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
#pragma unroll
	for (int q = 0; q < RPB; q++)
		x[q] = xc[(size_t)(r0 + q < B ? r0 + q : B - 1) * E + ec];

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
 * xz and xc in T (the prefill's activations between kernels are in the
 * weights' type, as the GEMMs read them; the sums are f32). conv = this
 * layer's (E, K-1) conv state in the slot (read only here).
 * grid (ceil(E/128), L), block 128.
 */
template <typename T>
__global__ void ssmk_conv_seq(const T *xz, const float *in_b, const float *cw,
			   const float *cb, const float *conv, int E, int K, T *xc)
{
	const int e = blockIdx.x * blockDim.x + threadIdx.x;
	const int t = blockIdx.y;
	if (e >= E)
		return;
	const float bias = in_b ? in_b[e] : 0.0f;
	const float *w = cw + (size_t)e * K;
	float acc = cb ? cb[e] : 0.0f;

	pdl_wait();
	for (int j = 0; j < K; j++) {
		const int p = t - (K - 1) + j;
		const float v = p >= 0 ? to_f32(xz[(size_t)p * 2 * E + e]) + bias
				       : conv[(size_t)e * (K - 1) + (K - 1) + p];
		acc += w[j] * v;
	}
	xc[(size_t)t * E + e] = from_f32<T>(silu(acc));
}

/*
 * The prefill conv of ssmk_conv_seq for d_conv == K, one thread per 4
 * consecutive channels (E % 4 == 0) and run of CONV_RUN tokens: the run's
 * K-1 + CONV_RUN input rows are loaded once into registers, four values a
 * load (a warp reads 128 contiguous values of a row, all loads in flight
 * together), and each output is formed from them with the same sum order
 * as ssmk_conv_seq.
 * The conv windows come from the same registers, as ssmk_conv_window forms
 * them (so no launch of their own):
 * - checkpoint k's (q = qs[k], nq of them, ascending, in [1, L]), written by
 *   the run holding token q - 1 to ck + k * ck_stride, (E, K-1) a layer;
 * - the slot's after the chunk, written into conv by the first run's
 *   threads, the only ones that read the old window, after they read it.
 * grid (ceil(E/512), ceil(L/CONV_RUN)), block 128.
 */
#define CONV_RUN 16

template <typename T, int K>
__global__ void __launch_bounds__(128)
ssmk_conv_run(const T *__restrict__ xz, const float *__restrict__ in_b,
	      const float *__restrict__ cw, const float *__restrict__ cb,
	      float *__restrict__ conv, int E, int L, T *__restrict__ xc,
	      const int *__restrict__ qs, int nq,
	      float *__restrict__ ck, size_t ck_stride)
{
	const int e = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
	const int t0 = blockIdx.y * CONV_RUN;
	if (e >= E)
		return;
	const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
	const float4 bias = in_b ? *(const float4 *)(in_b + e) : zero;
	const float4 acc0 = cb ? *(const float4 *)(cb + e) : zero;
	float w[4][K];
	float4 v[CONV_RUN + K - 1];

#pragma unroll
	for (int c = 0; c < 4; c++)
#pragma unroll
		for (int j = 0; j < K; j++)
			w[c][j] = cw[(size_t)(e + c) * K + j];
	pdl_wait();
	/* every row's load first, at a clamped row so that none waits behind a
	 * test: a load inside the branches below was used at once, so the 19
	 * loads of a run went out one after another (H200, ncu: the kernel at
	 * ~30% of DRAM bandwidth, 0.34 eligible warps a scheduler) */
#pragma unroll
	for (int j = 0; j < CONV_RUN + K - 1; j++) {
		const int p = t0 - (K - 1) + j;
		const int pc = p < 0 ? 0 : p < L ? p : L - 1;
		v[j] = load4<T>(xz + (size_t)pc * 2 * E + e);
	}
#pragma unroll
	for (int j = 0; j < CONV_RUN + K - 1; j++) {
		const int p = t0 - (K - 1) + j;
		if (p < 0) {
			const float *cs = conv + (size_t)e * (K - 1) + (K - 1) + p;
			v[j] = make_float4(cs[0], cs[K - 1], cs[2 * (K - 1)], cs[3 * (K - 1)]);
		} else {
			v[j] = p < L ? f4_add(v[j], bias) : zero;
		}
	}
#pragma unroll
	for (int i = 0; i < CONV_RUN; i++) {
		if (t0 + i >= L)
			break;
		float4 acc = acc0;
#pragma unroll
		for (int j = 0; j < K; j++) {
			acc.x += w[0][j] * v[i + j].x;
			acc.y += w[1][j] * v[i + j].y;
			acc.z += w[2][j] * v[i + j].z;
			acc.w += w[3][j] * v[i + j].w;
		}
		const float4 y = make_float4(silu(acc.x), silu(acc.y),
					     silu(acc.z), silu(acc.w));
		store4<T>(xc + (size_t)(t0 + i) * E + e, y);
	}
	if (nq) {
		/* the first checkpoint after t0 (binary search), then those of
		 * this run in order: q = t0 + i has window entries v[i + j] */
		int k = 0, hi = nq;

		while (k < hi) {
			const int mid = (k + hi) / 2;

			if (qs[mid] <= t0)
				k = mid + 1;
			else
				hi = mid;
		}
#pragma unroll
		for (int i = 1; i <= CONV_RUN; i++)
			if (k < nq && qs[k] == t0 + i) {
				float *c = ck + (size_t)k * ck_stride + (size_t)e * (K - 1);
#pragma unroll
				for (int j = 0; j < K - 1; j++) {
					c[j] = v[i + j].x;
					c[(K - 1) + j] = v[i + j].y;
					c[2 * (K - 1) + j] = v[i + j].z;
					c[3 * (K - 1) + j] = v[i + j].w;
				}
				k++;
			}
	}
	if (blockIdx.y == 0) {
		/* entry j = in(L - (K-1) + j); where that is before the chunk
		 * (L < K-1) it is old column L + j > j, which this thread has
		 * read above and overwrites only at a later j */
#pragma unroll
		for (int j = 0; j < K - 1; j++) {
			const int p = L - (K - 1) + j;
			float4 u;

			if (p >= 0)
				u = f4_add(load4<T>(xz + (size_t)p * 2 * E + e), bias);
			else
				u = make_float4(conv[(size_t)e * (K - 1) + L + j],
						conv[(size_t)(e + 1) * (K - 1) + L + j],
						conv[(size_t)(e + 2) * (K - 1) + L + j],
						conv[(size_t)(e + 3) * (K - 1) + L + j]);
			conv[(size_t)e * (K - 1) + j] = u.x;
			conv[(size_t)(e + 1) * (K - 1) + j] = u.y;
			conv[(size_t)(e + 2) * (K - 1) + j] = u.z;
			conv[(size_t)(e + 3) * (K - 1) + j] = u.w;
		}
	}
}

/*
 * Conv windows after chunk position q (the newest K-1 inputs up to and
 * including token q-1 of the chunk): for each checkpoint q = qs[k], k < nq,
 *   ck[k * ck_stride + e * (K-1) + j] = in(q - (K-1) + j),  j < K-1
 * then the slot's own window after the chunk (q = L) into conv itself, with
 * in() as in ssmk_conv_seq reading the old window `conv`. Block row k < nq
 * writes checkpoint k, all at once (one memory round trip per thread,
 * whatever nq). The rare checkpoints with q < K-1 read the old window, so
 * row nq writes them, then the slot's own window, one thread per channel
 * walking j upwards: entry j reads column L+j >= j+1 of the old window,
 * never one written before it, so every read sees the window from before
 * the chunk. It serves where ssmk_conv_run, which forms the windows itself,
 * does not.
 * grid (ceil(E/128), nq + 1), block 128.
 */
template <typename T>
__global__ void ssmk_conv_window(const T *__restrict__ xz, const float *__restrict__ in_b,
				 float *__restrict__ conv, const int *__restrict__ qs, int nq,
				 float *__restrict__ ck, size_t ck_stride, int L, int E, int K)
{
	const int e = blockIdx.x * blockDim.x + threadIdx.x;
	const int row = blockIdx.y;
	if (e >= E)
		return;
	const float bias = in_b ? in_b[e] : 0.0f;
	float *w = conv + (size_t)e * (K - 1);
	/* the conv ahead reads the old window this kernel overwrites */
	pdl_wait();
	auto window = [&](int q, float *d) {
		for (int j = 0; j < K - 1; j++) {
			const int p = q - (K - 1) + j;
			d[j] = p >= 0 ? to_f32(xz[(size_t)p * 2 * E + e]) + bias : w[(K - 1) + p];
		}
	};

	if (row < nq) {
		const int q = qs[row];
		if (q >= K - 1)
			window(q, ck + (size_t)row * ck_stride + (size_t)e * (K - 1));
		return;
	}
	for (int k = 0; k < nq && qs[k] < K - 1; k++)
		window(qs[k], ck + (size_t)k * ck_stride + (size_t)e * (K - 1));
	window(L, w);
}

/* The hidden vector of each checkpoint: dst[k * dst_stride + i] =
 * h[(qs[k] - 1) * D + i] (the residual stream after chunk token qs[k] - 1).
 * grid (nq), block 256. */
__global__ void ssmk_ck_hidden(const float *h, const int *qs, int D, float *dst,
			       size_t dst_stride)
{
	const float *src = h + (size_t)(qs[blockIdx.x] - 1) * D;
	float *d = dst + (size_t)blockIdx.x * dst_stride;

	for (int i = threadIdx.x; i < D; i += blockDim.x)
		d[i] = src[i];
}

/* The x_proj GEMM's P <= XPROJ_MAX_SLICES K slices (slice p at dbc + p *
 * slice) summed in slice order into slice 0, and dlT[t, j] = dbc[t, j] for
 * j < R, in T (the dt_proj GEMM's input). A thread's P loads go out together
 * before the sum. grid (L), block dt_low_threads(W, R, P). */
#define XPROJ_MAX_SLICES 8

static inline __host__ __device__ int dt_low_threads(int W, int R, int P)
{
	const int n = P > 1 ? W : R;
	return n < 256 ? (n + 31) / 32 * 32 : 256;
}

template <typename T>
__global__ void ssmk_dt_low(float *dbc, int W, int R, int P, size_t slice, T *dlT)
{
	pdl_wait();
	for (int j = threadIdx.x; j < (P > 1 ? W : R); j += blockDim.x) {
		float *p = dbc + (size_t)blockIdx.x * W + j;
		float u[XPROJ_MAX_SLICES];
#pragma unroll
		for (int q = 0; q < XPROJ_MAX_SLICES; q++)
			u[q] = q < P ? p[q * slice] : 0.0f;
		float v = u[0];
#pragma unroll
		for (int q = 1; q < XPROJ_MAX_SLICES; q++)
			if (q < P)
				v += u[q];
		if (P > 1)
			p[0] = v;
		if (j < R)
			dlT[(size_t)blockIdx.x * R + j] = from_f32<T>(v);
	}
}

/*
 * Asynchronous global -> shared copies (sm_80+): cp.async with a source
 * size, so a column past the end of a row is zero-filled instead of read.
 * A thread's copies are grouped by cp_async_commit; cp_async_wait<n> returns
 * once at most n of its groups are still in flight (then a barrier makes
 * every thread's landed copies visible to the block).
 */
__device__ __forceinline__ void cp_async4(float *dst, const float *src, bool ok)
{
	const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
	asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(d), "l"(src),
		     "r"(ok ? 4 : 0) : "memory");
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool ok)
{
	const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src),
		     "r"(ok ? 16 : 0) : "memory");
}

__device__ __forceinline__ void cp_async_commit(void)
{
	asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int n> __device__ __forceinline__ void cp_async_wait(void)
{
	asm volatile("cp.async.wait_group %0;" ::"n"(n) : "memory");
}

/*
 * dst (nt, nc) dense in shared memory  <-  src rows [0, nt) (row stride ld
 * values of V: f32, or the 16-bit activations), columns [c0, c0 + nc);
 * columns >= cmax are zero-filled. vec: 16-byte copies, valid when ld, c0,
 * nc, cmax are multiples of 16 / sizeof(V) and src is 16-byte aligned.
 * Otherwise f32 goes by 4-byte cp.async and 16-bit values by plain copies
 * (cp.async has no 2-byte form): those land before the barrier that follows
 * the tile's cp_async_wait like the rest. Called by every thread of the
 * block.
 */
template <typename V>
__device__ __forceinline__ void tile_load(V *dst, const V *src, size_t ld, int nt, int c0,
					  int nc, int cmax, bool vec)
{
	constexpr int PER = 16 / sizeof(V);
	if (vec) {
		const int nq = nc / PER;
		for (int i = threadIdx.x; i < nt * nq; i += blockDim.x) {
			const int tt = i / nq, c = c0 + PER * (i % nq);
			cp_async16(dst + PER * i, src + (size_t)tt * ld + (c < cmax ? c : 0),
				   c < cmax);
		}
	} else {
		for (int i = threadIdx.x; i < nt * nc; i += blockDim.x) {
			const int tt = i / nc, c = c0 + i % nc;
			const V *p = src + (size_t)tt * ld + (c < cmax ? c : 0);
			if constexpr (sizeof(V) == 4)
				cp_async4((float *)(dst + i), (const float *)p, c < cmax);
			else
				dst[i] = c < cmax ? *p : from_f32<V>(0.0f);
		}
	}
}

/*
 * Prefill selective scan over a chunk of L tokens, parallel over channels and
 * over time. Per token t and channel e:
 *   dt  = softplus(dtr[t, e] + dt_b[e])
 *   h_n = exp(dt * A[e, n]) * h_n + dt * B[t, n] * x[t, e]
 *   y   = (sum_n C[t, n] h_n + D[e] x[t, e]) * SiLU(z[t, e])
 * The chunk is cut into nseg segments of seg_len tokens (grid.y). Because the
 * recurrence is linear in h, a segment's end state is
 *   h_end = exp(A * sum_seg dt) * h_start + h_local
 * with h_local the segment's end state from zero. So, with nseg > 1:
 *   pass 1 (ssmk_scan_local, segments 0 .. nseg-2): every segment from zero
 *          -> seg_h, seg_dt; it also stores dt = softplus(dtr + dt_b) back
 *          into dtr, so pass 3 reads dt instead of recomputing it (with
 *          dt_proj inside it, it makes dt itself, for the last segment too);
 *   pass 2 (ssmk_scan_combine): walks the segments in order per (e, n) ->
 *          start_h, start_d of every segment;
 *   pass 3 (ssmk_scan): every segment again from its true start, writing y,
 *          the checkpoint states and (last segment) the slot. Segments >=
 *          seg_raw (the last one, or all when nseg == 1: then only pass 3
 *          runs, from the slot; none with dt_proj in pass 1) still hold the
 *          raw dtr and apply the softplus themselves.
 * Both keep each channel's state in registers within a segment. It reaches
 * memory only at segment ends, checkpoints (ck_pos[0..n_ck), n_ck <=
 * SCAN_CK_MAX, ascending, distinct, chunk-relative in [1, L]: the state after
 * token q-1 goes to ck + k * state_floats + ck_ssm_off / + ck_dts_off) and
 * the chunk's end. A block walks its segment in tiles of tokens, double
 * buffered in shared memory: while the recurrence runs on tile i, cp.async
 * brings tile i+1 in (each channel's dt in f32, x and, in pass 3, z in the
 * weight type T; the tokens' B | C, read by all the block's channels).
 * exp(dt A) is one ex2 of dt * (A log2 e).
 *
 * The passes lay channels out differently, each the faster for its work
 * (bench/NOTES.md, round twenty-four):
 * - pass 1 gives a channel SSM_LANES = 4 lanes of NPL = N / 4 states: it only
 *   runs the recurrence, and four lanes a channel give it four times the
 *   warps to hide its latencies with;
 * - pass 3 gives a channel one thread: y = C.h is then the thread's own sum,
 *   with no shuffles, and the gate and the store are one a (token, channel).
 */
#define SCAN_SEG 64 /* tokens per segment (the backend's default) */
#define SCAN_THREADS 128 /* the block, in both passes */
#define SCAN1_TILE 32 /* pass 1: tokens a tile (SSM_CH_PER_BLOCK channels a block) */
#define SCAN3_TILE 16 /* pass 3: tokens a tile (SCAN_THREADS channels a block) */
#define SCAN_CK_MAX 64 /* checkpoints per call at most (<= SCAN_THREADS) */

/* floats of one tile buffer, with x (and z) in activations of xb bytes (f32
 * or the 16-bit weight type). Pass 1: dt (without lo_pitch), x (SCAN1_TILE,
 * SSM_CH_PER_BLOCK) | B (SCAN1_TILE, N) | with dt_proj fused (lo_pitch > 0),
 * the dt_low tile (SCAN1_TILE rows of lo_pitch 16-bit values); pass 3: dt
 * (SCAN3_TILE, SCAN_THREADS) | x, z (the same, in xb) | B | C (SCAN3_TILE,
 * 2N). Every part a multiple of 16 bytes. */
static inline __host__ __device__ int scan_buf_floats(int N, bool local, int lo_pitch, int xb)
{
	return !local    ? SCAN3_TILE * (SCAN_THREADS + 2 * SCAN_THREADS * xb / 4 + 2 * N)
	       : lo_pitch ? SCAN1_TILE * (SSM_CH_PER_BLOCK * xb / 4 + N + lo_pitch / 2)
			  : SCAN1_TILE * (SSM_CH_PER_BLOCK + SSM_CH_PER_BLOCK * xb / 4 + N);
}

/* the two tile buffers, then (pass 1) the tile's (dt, dt x) pairs */
static inline size_t scan_smem_bytes(int N, bool local, int lo_pitch, int xb)
{
	return sizeof(float) * (2 * scan_buf_floats(N, local, lo_pitch, xb) +
				(local ? 2 * SCAN1_TILE * SSM_CH_PER_BLOCK : 0));
}

/* whether dynamic shared memory of this size, with the kernel's static
 * checkpoint list, needs the opt-in beyond 48 KB */
static inline bool scan_smem_optin(size_t bytes)
{
	return bytes + sizeof(int) * SCAN_CK_MAX > 48 * 1024;
}

/* A full tile's copies (ROWS rows of NC values of V, NC a multiple of 16 /
 * sizeof(V), row stride ld, src 16-byte aligned): copy c, of the block's
 * SCAN_THREADS threads' copies, is row c / NQ, piece c % NQ, so a thread's
 * offsets need no division at run time. */
template <int ROWS, int NC, typename V = float>
__device__ __forceinline__ void tile_load_full(V *dst, const V *src, size_t ld)
{
	constexpr int PER = 16 / sizeof(V), NQ = NC / PER, COPIES = ROWS * NQ;
#pragma unroll
	for (int k = 0; k < (COPIES + SCAN_THREADS - 1) / SCAN_THREADS; k++) {
		const int c = threadIdx.x + SCAN_THREADS * k;
		if (COPIES % SCAN_THREADS == 0 || c < COPIES)
			cp_async16(dst + PER * c, src + (size_t)(c / NQ) * ld + PER * (c % NQ),
				   true);
	}
}

/*
 * The tile walk of both passes: tokens [ts, te) in tiles of TILE, double
 * buffered in shared memory (smem: two buffers of buf floats). issue(b, t1,
 * n1) starts the copies of the tile at t1 (n1 tokens) into buffer b; first()
 * runs once, while tile 0 is on its way; body(b, t0, nt) runs on a landed
 * tile. Every thread of the block calls it.
 */
template <int TILE, typename Issue, typename First, typename Body>
__device__ __forceinline__ void scan_tiles(float *smem, int buf, int ts, int te, Issue issue,
					   First first, Body body)
{
	const int ntiles = (te - ts + TILE - 1) / TILE;

	for (int i = -1; i < ntiles; i++) {
		/* issue tile i+1 into buffer (i+1)&1: its last readers finished
		 * before the barrier that ended iteration i-1 */
		if (i + 1 < ntiles) {
			const int t1 = ts + (i + 1) * TILE;
			issue(smem + ((i + 1) & 1) * buf, t1, te - t1 < TILE ? te - t1 : TILE);
		}
		cp_async_commit();
		if (i < 0) {
			first();
			continue;
		}
		cp_async_wait<1>(); /* all but the newest group: tile i */
		__syncthreads();
		const int t0 = ts + i * TILE;
		body(smem + (i & 1) * buf, t0, te - t0 < TILE ? te - t0 : TILE);
		/* the next iteration's copies overwrite this buffer only after this */
		__syncthreads();
	}
}

/* dst[0..n) = src[0..n) from shared memory in the widest loads n allows
 * (src aligned to 4n bytes when n <= 4, to 16 bytes beyond). */
template <int n> __device__ __forceinline__ void lds_vec(float *dst, const float *src)
{
	if (n % 4 == 0) {
#pragma unroll
		for (int q = 0; q < n / 4; q++) {
			const float4 v = ((const float4 *)src)[q];
			dst[4 * q] = v.x;
			dst[4 * q + 1] = v.y;
			dst[4 * q + 2] = v.z;
			dst[4 * q + 3] = v.w;
		}
	} else if (n == 2) {
		const float2 v = *(const float2 *)src;
		dst[0] = v.x;
		dst[1] = v.y;
	} else {
#pragma unroll
		for (int q = 0; q < n; q++)
			dst[q] = src[q];
	}
}

/* dt_proj inside pass 1 (16-bit weights): dt_rank a multiple of 16, at most
 * DT_FUSED_RMAX (a warp holds its 8 channels' dt_proj rows as mma fragments,
 * 2 registers a 16-wide k step). The dt_low tiles and the fragments cost
 * pass 1 occupancy (in round twenty-seven's layout 8 blocks an SM at
 * dt_rank 48, 6 at 128 or 160, against 11 without them): measured on the
 * H200 (bf16, bench/NOTES.md round twenty-seven), that pays at dt_rank 48
 * (the 130m shape: a 2k prefill 3.6% faster, its dt GEMM small and
 * latency-bound) and not at 128 or 160 (1.4b 2.7% and 2.8b 3.4% slower,
 * pass 1 up 43-46% against a GEMM of 0.94 / 1.57 ms over the layers). */
#define DT_FUSED_RMAX 64

/* The bf16 / f16 row pitch of pass 1's dt_low tile (R columns and 8 of
 * padding, so the 8 rows of an ldmatrix fall in distinct banks), 0 without
 * it. */
static inline __host__ __device__ int scan_lo_pitch(int R, bool fused)
{
	return fused ? R + 8 : 0;
}

/* d += A . B for one m16n8k16 tile, A (16 x 16, row-major fragments a[4]) and
 * B (16 x 8, column-major fragments b[2]) in T (bf16 or f16), sums in f32. */
template <typename T>
__device__ __forceinline__ void mma16816(float d[4], const unsigned a[4], const unsigned b[2])
{
	if constexpr (std::is_same<T, __half>::value)
		asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
		    "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
		    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
	else
		asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
		    "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
		    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* The A fragments of a 16 x 16 tile of 16-bit values in shared memory (row
 * pitch `pitch` elements, rows 16-byte aligned): lane l gives row l % 16,
 * columns 8 (l / 16) .. +7. */
__device__ __forceinline__ void ldmatrix_x4(unsigned a[4], const void *tile, int pitch)
{
	const int l = threadIdx.x & 31;
	const unsigned p = (unsigned)__cvta_generic_to_shared(
		(const char *)tile + 2 * ((l & 15) * pitch + 8 * (l >> 4)));
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
		     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
		     : "r"(p));
}

/*
 * Pass 1: segment blockIdx.y from zero for SSM_CH_PER_BLOCK channels, lane g
 * of a channel's four holding states g NPL .. g NPL + NPL - 1 (so warp w
 * runs channels 8w .. 8w+7 of the block). Each tile's dt entries are made
 * once, back into dtr and, with dt x, as one pair a (token, channel) into
 * shared memory (so the four lanes of a channel read one pair a token),
 * before the tile's recurrence:
 * - TW float: dt = softplus(dtr + dt_b), dtr holding the dt_proj GEMM's
 *   output, (token, channel) per thread; segments 0 .. nseg-2 (grid.y
 *   nseg - 1);
 * - TW bf16 / f16 (dt_proj fused): dt = softplus(dlo . dt_w^T + dt_b) on the
 *   tensor cores, dlo (L, R) the x_proj's dt_low columns in TW and dt_w (E,
 *   R) the weights, R % 16 == 0, R <= DT_FUSED_RMAX: warp w makes its own
 *   channels' dt for every token of the tile (so only the warp waits on
 *   it), from dt_low tiles double buffered with the tile and dt_w's rows
 *   held as mma fragments. Segments 0 .. nseg-1: the last one (no end state
 *   needed) only makes its dt, so that pass 3 reads every segment's ready.
 * xc (L, E) is the conv's output in TX (the model's weight type).
 * grid (ceil(E/32), nseg - 1 or nseg), block SCAN_THREADS, shared memory
 * scan_smem_bytes(N, true, scan_lo_pitch(R, TW is 16-bit), sizeof(TX)).
 */
template <int NPL, typename TW, typename TX>
__global__ void __launch_bounds__(SCAN_THREADS)
ssmk_scan_local(float *dtr, const float *dt_b, const TW *dlo, const TW *dt_w,
		const float *dbc, int R, const TX *xc, const float *A, float *seg_h,
		float *seg_dt, int E, int L, int seg_len)
{
	constexpr int N = NPL * SSM_LANES, CB = SSM_CH_PER_BLOCK, T1 = SCAN1_TILE;
	constexpr bool FUSED = !std::is_same<TW, float>::value;
	constexpr int KS = FUSED ? DT_FUSED_RMAX / 16 : 1;
	const int W = R + 2 * N;
	const int RP = scan_lo_pitch(R, FUSED);
	const int BUF = scan_buf_floats(N, true, RP, sizeof(TX));
	extern __shared__ __align__(16) float smem[];
	const int e0 = blockIdx.x * CB;
	const int ch = threadIdx.x / SSM_LANES;
	const int g = threadIdx.x & (SSM_LANES - 1);
	const int e = e0 + ch;
	const int ec = e < E ? e : E - 1;
	/* the channel of this thread's softplus entries (SCAN_THREADS % CB == 0) */
	const int cl = threadIdx.x % CB;
	const int ecl = e0 + cl < E ? e0 + cl : E - 1;
	const int seg = blockIdx.y;
	const int ts = seg * seg_len;
	const int te = ts + seg_len < L ? ts + seg_len : L;
	/* fused: the last segment makes its dt only */
	const bool dt_only = FUSED && seg == gridDim.y - 1;
	const bool vec_dt = E % 4 == 0, vec_x = E % (16 / sizeof(TX)) == 0,
		   vec_bc = R % 4 == 0;
	/* whole tiles of this block load through tile_load_full */
	const bool full_ok = vec_dt && vec_x && vec_bc && e0 + CB <= E;
	const float LOG2E = 1.4426950408889634f;
	/* a buffer: dt (unfused), x (T1, CB) in TX | B (T1, N) | dt_low (fused:
	 * T1 rows of RP TW); after the buffers, the tile's (dt, dt x) pairs
	 * (T1, CB) (offsets in floats) */
	constexpr int XF = T1 * CB * (int)sizeof(TX) / 4;
	const int OX = FUSED ? 0 : T1 * CB, OB = OX + XF, OLO = OB + T1 * N;
	/* fused: this lane's mma row (token) g8 and channel pair c2, c2 + 1 */
	const int lane = threadIdx.x & 31, g8 = lane >> 2;
	const int c2 = 8 * (threadIdx.x >> 5) + 2 * (lane & 3);

	float h[NPL], a[NPL], dsum = 0.0f;
#pragma unroll
	for (int i = 0; i < NPL; i++) {
		h[i] = 0.0f;
		a[i] = A[(size_t)ec * N + g * NPL + i] * LOG2E;
	}
	const float dtb = dt_b[ecl];
	/* fused (weights, so before the wait): the B fragments of the warp's
	 * channels' dt_proj rows (column g8 = channel 8w + g8, rows k =
	 * 2 (l & 3) + {0, 1} and + 8 of each k step), and the dt biases of the
	 * channel pair */
	unsigned bw[KS][2];
	float dtb2[2] = {0.0f, 0.0f};
	if constexpr (FUSED) {
		const int ew = e0 + 8 * (threadIdx.x >> 5) + g8;
		const TW *wr = dt_w + (size_t)(ew < E ? ew : E - 1) * R + 2 * (lane & 3);
#pragma unroll
		for (int ks = 0; ks < KS; ks++)
			if (16 * ks < R) {
				bw[ks][0] = *(const unsigned *)(wr + 16 * ks);
				bw[ks][1] = *(const unsigned *)(wr + 16 * ks + 8);
			}
#pragma unroll
		for (int j = 0; j < 2; j++)
			dtb2[j] = dt_b[e0 + c2 + j < E ? e0 + c2 + j : E - 1];
	}
	pdl_wait();
	/* fused: a dt_low tile is rows t1 .. of dlo, contiguous (R TW a row):
	 * copy i of 16 bytes is row i / P8, piece i % P8, stepped without
	 * division from this thread's first */
	const int P8 = FUSED ? R / 8 : 1;
	const int q8 = SCAN_THREADS / P8, r8 = SCAN_THREADS % P8;
	const int row0 = threadIdx.x / P8, piece0 = threadIdx.x % P8;

	auto issue = [&](float *b, int t1, int n1) {
		if constexpr (FUSED) {
			/* the dt_low rows past n1 zero */
			TW *lo = (TW *)(b + OLO);
			int row = row0, piece = piece0;

			while (row < T1) {
				const bool in = row < n1;
				cp_async16((float *)(lo + row * RP + 8 * piece),
					   (const float *)(dlo + (size_t)(t1 + (in ? row : 0)) * R +
							   8 * piece),
					   in);
				row += q8;
				piece += r8;
				if (piece >= P8) {
					piece -= P8;
					row++;
				}
			}
			if (dt_only)
				return;
		}
		if (full_ok && n1 == T1) {
			if constexpr (!FUSED)
				tile_load_full<T1, CB>(b, dtr + (size_t)t1 * E + e0, E);
			tile_load_full<T1, CB>((TX *)(b + OX), xc + (size_t)t1 * E + e0, E);
			tile_load_full<T1, N>(b + OB, dbc + (size_t)t1 * W + R, W);
		} else {
			if constexpr (!FUSED)
				tile_load(b, dtr + (size_t)t1 * E, E, n1, e0, CB, E, vec_dt);
			tile_load((TX *)(b + OX), xc + (size_t)t1 * E, E, n1, e0, CB, E, vec_x);
			tile_load(b + OB, dbc + (size_t)t1 * W + R, W, n1, 0, N, N, vec_bc);
		}
	};
	/* fused: the tile's dt = softplus(dlo . dt_w^T + dt_b), tokens 16 mt + g8
	 * (+ 8) and channels c2 (+ 1) of this lane, into dtr and with dt x into
	 * s_p */
	auto dt_fused = [&](const TW *lo, const TX *s_x, float2 *s_p, int t0, int nt) {
#pragma unroll
		for (int mt = 0; mt < T1 / 16; mt++) {
			float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
			for (int ks = 0; ks < KS; ks++)
				if (16 * ks < R) {
					unsigned af[4];
					ldmatrix_x4(af, lo + 16 * mt * RP + 16 * ks, RP);
					mma16816<TW>(d, af, bw[ks]);
				}
#pragma unroll
			for (int hf = 0; hf < 2; hf++) {
				const int tt = 16 * mt + g8 + 8 * hf;
				const float2 v = make_float2(softplus(d[2 * hf] + dtb2[0]),
							     softplus(d[2 * hf + 1] + dtb2[1]));
				if (tt < nt) {
					const TX *xr = s_x + tt * CB + c2;
					*(float4 *)(s_p + tt * CB + c2) =
						make_float4(v.x, v.x * to_f32(xr[0]), v.y,
							    v.y * to_f32(xr[1]));
					if (e0 + c2 + 1 < E)
						*(float2 *)(dtr + (size_t)(t0 + tt) * E + e0 + c2) = v;
					else if (e0 + c2 < E)
						dtr[(size_t)(t0 + tt) * E + e0 + c2] = v.x;
				}
			}
		}
	};
	auto body = [&](float *b, int t0, int nt) {
		const TX *s_x = (const TX *)(b + OX);
		const float *s_b = b + OB;
		/* the pairs' last readers ended the tile before at its barrier */
		float2 *s_p = (float2 *)(smem + 2 * BUF);

		if constexpr (FUSED) {
			/* the warp's own channels: its lanes wait for each other
			 * only */
			dt_fused((const TW *)(b + OLO), s_x, s_p, t0, nt);
			__syncwarp();
			if (dt_only)
				return;
		} else {
			/* entry idx = threadIdx.x + SCAN_THREADS q: token idx / CB,
			 * channel cl */
			float *dtp = dtr + (size_t)(t0 + threadIdx.x / CB) * E + e0 + cl;
#pragma unroll
			for (int q = 0; q < T1 * CB / SCAN_THREADS; q++) {
				const int idx = threadIdx.x + SCAN_THREADS * q;
				if (idx < nt * CB) {
					const float dt = softplus(b[idx] + dtb);
					s_p[idx] = make_float2(dt, dt * to_f32(s_x[idx]));
					if (e0 + cl < E)
						dtp[(size_t)q * (SCAN_THREADS / CB) * E] = dt;
				}
			}
			__syncthreads();
		}

		/* unrolled so the next tokens' shared-memory loads and
		 * exponentials overlap this one's chain */
#pragma unroll 4
		for (int tt = 0; tt < nt; tt++) {
			const float2 p = s_p[tt * CB + ch];
			const float dt = p.x, dx = p.y;
			float Bv[NPL];
			lds_vec<NPL>(Bv, s_b + tt * N + g * NPL);
#pragma unroll
			for (int j = 0; j < NPL; j++)
				h[j] = ex2_approx(dt * a[j]) * h[j] + dx * Bv[j];
			dsum += dt;
		}
	};
	scan_tiles<T1>(smem, BUF, ts, te, issue, [] {}, body);
	if (e >= E || dt_only)
		return;
#pragma unroll
	for (int i = 0; i < NPL; i++)
		seg_h[((size_t)seg * E + e) * N + g * NPL + i] = h[i];
	if (g == 0)
		seg_dt[(size_t)seg * E + e] = dsum;
}

/*
 * Pass 3: segment blockIdx.y from its start state (start_h, start_d: the
 * segment's at index seg, strides start_stride_*) for SCAN_THREADS channels,
 * one a thread: y to yT (T, (L, E)), checkpoints to ck, and after the
 * chunk's last token the state to ssm (E, N) and dts (E). xc (L, E) and xz
 * (L, 2E: its z half is read) are in T too.
 * grid (ceil(E/SCAN_THREADS), nseg), block SCAN_THREADS, shared memory
 * scan_smem_bytes(N, false, 0, sizeof(T)).
 */
template <typename T, int N>
__global__ void __launch_bounds__(SCAN_THREADS)
ssmk_scan(const float *dtr, const float *dt_b, int seg_raw, const float *dbc, int R,
	  const T *xc, const T *xz, const float *in_b, const float *A,
	  const float *Dp, const float *start_h, const float *start_d,
	  size_t start_stride_h, size_t start_stride_d, float *ssm, float *dts, int E,
	  int L, int seg_len, const int *ck_pos, int n_ck, float *ck,
	  size_t state_floats, size_t ck_ssm_off, size_t ck_dts_off, T *yT)
{
	constexpr int CB = SCAN_THREADS, T3 = SCAN3_TILE;
	const int W = R + 2 * N;
	const int BUF = scan_buf_floats(N, false, 0, sizeof(T));
	/* a buffer: dt (T3, CB) | x, z (T3, CB) in T | B, C (offsets in floats) */
	constexpr int XF = T3 * CB * (int)sizeof(T) / 4, OX = T3 * CB, OZ = OX + XF,
		      OBC = OZ + XF;
	extern __shared__ __align__(16) float smem[];
	const int e0 = blockIdx.x * CB;
	const int e = e0 + threadIdx.x;
	const bool valid = e < E;
	const int ec = valid ? e : E - 1;
	const int seg = blockIdx.y;
	const int ts = seg * seg_len;
	const int te = ts + seg_len < L ? ts + seg_len : L;
	const bool raw = seg >= seg_raw;
	const bool vec_dt = E % 4 == 0, vec_x = E % (16 / sizeof(T)) == 0,
		   vec_bc = R % 4 == 0;
	/* whole tiles of this block load through tile_load_full */
	const bool full_ok = vec_dt && vec_x && vec_bc && e0 + CB <= E;
	const float LOG2E = 1.4426950408889634f;

	float h[N], a[N];
#pragma unroll
	for (int n = 0; n < N; n++)
		a[n] = A[(size_t)ec * N + n] * LOG2E;
	const float dtb = dt_b[ec], dskip = Dp[ec];
	const float zb = in_b ? in_b[E + ec] : 0.0f;
	/* the start states are the combine's (the kernel ahead) */
	pdl_wait();
#pragma unroll
	for (int n = 0; n < N; n++)
		h[n] = start_h[seg * start_stride_h + (size_t)ec * N + n];
	float dsum = start_d[seg * start_stride_d + ec];
	/* checkpoint k is the first after ts (the positions ascend) */
	__shared__ int s_ck[SCAN_CK_MAX];
	int k = 0, next_ck = -1;

	auto issue = [&](float *b, int t1, int n1) {
		T *bx = (T *)(b + OX), *bz = (T *)(b + OZ);
		float *bbc = b + OBC;
		const T *z1 = xz + (size_t)t1 * 2 * E + E;
		if (full_ok && n1 == T3) {
			tile_load_full<T3, CB>(b, dtr + (size_t)t1 * E + e0, E);
			tile_load_full<T3, CB>(bx, xc + (size_t)t1 * E + e0, E);
			tile_load_full<T3, CB>(bz, z1 + e0, 2 * E);
			tile_load_full<T3, 2 * N>(bbc, dbc + (size_t)t1 * W + R, W);
		} else {
			tile_load(b, dtr + (size_t)t1 * E, E, n1, e0, CB, E, vec_dt);
			tile_load(bx, xc + (size_t)t1 * E, E, n1, e0, CB, E, vec_x);
			tile_load(bz, z1, 2 * E, n1, e0, CB, E, vec_x);
			tile_load(bbc, dbc + (size_t)t1 * W + R, W, n1, 0, 2 * N, 2 * N, vec_bc);
		}
	};
	/* with tile 0 on its way: the positions to shared memory, k counted by
	 * the barrier itself (n_ck is the block's) */
	auto first = [&] {
		if (n_ck) {
			const bool mine = threadIdx.x < n_ck;
			const int q = mine ? ck_pos[threadIdx.x] : 0;
			if (mine)
				s_ck[threadIdx.x] = q;
			k = __syncthreads_count(mine && q <= ts);
			next_ck = k < n_ck ? s_ck[k] : -1;
		}
	};
	auto body = [&](float *b, int t0, int nt) {
		/* this thread's column of the tile's dt, x and z (T3, CB) */
		const float *s_dt = b + threadIdx.x;
		const T *s_x = (const T *)(b + OX) + threadIdx.x;
		const T *s_z = (const T *)(b + OZ) + threadIdx.x;
		const float *s_bc = b + OBC;
		T *yp = yT + (size_t)t0 * E + e;
		/* one token of the recurrence for this channel's states, its
		 * gated y = C.h to yT */
		auto step = [&](int tt) {
			float dt = s_dt[tt * CB];
			if (raw)
				dt = softplus(dt + dtb);
			const float x = to_f32(s_x[tt * CB]);
			const float dx = dt * x;
			const float4 *bc = (const float4 *)(s_bc + tt * 2 * N);
			float y = 0.0f;
#pragma unroll
			for (int q = 0; q < N / 4; q++) {
				const float4 b4 = bc[q], c4 = bc[N / 4 + q];
				const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
				const float cv[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
				for (int r = 0; r < 4; r++) {
					const int n = 4 * q + r;
					h[n] = ex2_approx(dt * a[n]) * h[n] + dx * bv[r];
					y += cv[r] * h[n];
				}
			}
			dsum += dt;
			if (valid)
				yp[(size_t)tt * E] =
					from_f32<T>((y + dskip * x) * silu(to_f32(s_z[tt * CB]) + zb));
		};
		/* the state now is checkpoint k's; on to the next checkpoint */
		auto ck_store = [&]() {
			if (valid) {
				float *c = ck + (size_t)k * state_floats;
#pragma unroll
				for (int n = 0; n < N; n++)
					c[ck_ssm_off + (size_t)e * N + n] = h[n];
				c[ck_dts_off + e] = dsum;
			}
			k++;
			next_ck = k < n_ck ? s_ck[k] : -1;
		};
		if (!(next_ck > t0 && next_ck <= t0 + nt)) {
			/* no checkpoint in this tile (unrolled so the next tokens'
			 * loads and exponentials overlap this one's chains) */
#pragma unroll 4
			for (int tt = 0; tt < nt; tt++)
				step(tt);
		} else {
			for (int tt = 0; tt < nt; tt++) {
				step(tt);
				while (next_ck == t0 + tt + 1)
					ck_store();
			}
		}
	};
	scan_tiles<T3>(smem, BUF, ts, te, issue, first, body);
	if (!valid || te != L)
		return;
#pragma unroll
	for (int n = 0; n < N; n++)
		ssm[(size_t)e * N + n] = h[n];
	dts[e] = dsum;
}

/*
 * Pass 2 of the segmented scan, one thread per (e, n): from the slot's state
 * (ssm (E, N), dts (E)) walks the segments in order,
 *   start_h[s] = h;  h = exp(A[e, n] * seg_dt[s, e]) * h + seg_h[s, e, n]
 * and likewise start_d[s] = d;  d += seg_dt[s, e]  (written by n == 0), for
 * s < nseg (seg_h / seg_dt of segments < nseg - 1 are read). The loads of
 * COMBINE_BATCH segments are issued together (a whole 2k chunk's 31 at the
 * default segment length): the walk is a chain of dependent updates, not of
 * dependent loads. In the last batch the slots past the last segment load
 * that segment again (clamped, so no load waits behind a test) and their
 * updates, which come after the walk's last store, store nothing; the
 * offsets are 32-bit (nseg E N < 2^31, checked by act_alloc).
 * grid (ceil(E*N/256)), block 256.
 */
#define COMBINE_BATCH 32

__global__ void ssmk_scan_combine(const float *__restrict__ A, const float *__restrict__ ssm,
			       const float *__restrict__ dts, const float *__restrict__ seg_h,
			       const float *__restrict__ seg_dt, float *__restrict__ start_h,
			       float *__restrict__ start_d, int E, int N, int nseg)
{
	const int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= E * N)
		return;
	const int e = i / N, n = i % N, EN = E * N;
	const float a = A[i] * 1.4426950408889634f;
	float h = ssm[i], d = dts[e];

	pdl_wait();
	start_h[i] = h;
	if (n == 0)
		start_d[e] = d;
	for (int s0 = 0; s0 + 1 < nseg; s0 += COMBINE_BATCH) {
		/* segments s0 .. s0 + nv - 1 are read; their ends start the next */
		const int nv = nseg - 1 - s0 < COMBINE_BATCH ? nseg - 1 - s0 : COMBINE_BATCH;
		float sd[COMBINE_BATCH], sh[COMBINE_BATCH];
#pragma unroll
		for (int j = 0; j < COMBINE_BATCH; j++) {
			const int s = s0 + (j < nv ? j : nv - 1);
			sd[j] = seg_dt[s * E + e];
			sh[j] = seg_h[s * EN + i];
		}
#pragma unroll
		for (int j = 0; j < COMBINE_BATCH; j++) {
			h = ex2_approx(a * sd[j]) * h + sh[j];
			d += sd[j];
			if (j < nv) {
				start_h[(s0 + j + 1) * EN + i] = h;
				if (n == 0)
					start_d[(s0 + j + 1) * E + e] = d;
			}
		}
	}
}

/*
 * The batched decode SSM step (ssmk_ssm_step_b's formulas) with dt_proj on
 * the tensor cores, for 16-state models in bf16 (the backend takes it from
 * CUDA_STEP_MMA_MIN rows): a block takes STEP_MMA_ROWS = 8 rows of 32
 * channels, 256 threads.
 *   dt phase: the block's dt_proj rows (32 channels x R, bf16) and dt_low
 *     rows (8 x R, f32) come into shared memory by cp.async, after
 *     pdl_wait() (ssmk_conv_xproj starts these blocks early). Warp w makes
 *     a k quarter (k steps w / 2, + 4, ...) of the 16-channel x 8-row tile
 *     w % 2 of dt_low . dt_w^T by mma.m16n8k16, dt_low split into bf16 hi
 *     + lo parts (two products a k step, so the sum sees dt_low to ~2^-17
 *     rather than bf16's 2^-9); thread t then adds the four quarters of
 *     its (row, channel) in order and puts dt = softplus(. + dt_b) into
 *     s_dt. (Warps 0 and 1 making the whole tiles while six warps waited
 *     at the barrier held the block a dt phase's length: bench/NOTES.md
 *     round thirty-two.)
 *   state phase: warp w takes row w; lane l channels (l >> 2) + 8 j, j < 4,
 *     and states 4 (l & 3) .. + 3 of each: every warp access to the states
 *     reads 8 channels' 512 contiguous bytes, and a lane's B and C pieces
 *     serve its four channels. y = C.h over a channel's four lanes by two
 *     xor-shuffles, as ssmk_ssm_step_b.
 * ssmk_ssm_step_b makes each dt as four lanes' quarter dots in f32, each
 * lane unpacking its dt_w row from bf16 for every two rows; here the dot
 * is two tensor-core products a 16-wide k step for 16 channels by 8 rows,
 * and a lane's B, C loads serve four channels. Measured (bench/NOTES.md,
 * round twenty-nine): the 1.4b batch-64 step 22.2 -> 20.0 us a layer; the
 * dt tiles in k quarters over the 8 warps (round thirty-two): batch 64
 * 130m 0.656 -> 0.651, 1.4b 2.671 -> 2.665, 2.8b 4.638 -> 4.610 ms a step.
 * Requires N == 16, R % 16 == 0 and R <= 448 (its shared memory in 48
 * KB), E % 32 == 0, state_floats % 4 == 0.
 * grid (E / 32, ceil(B / 8)), block 256, dynamic shared memory
 * step_mma_smem_bytes(R).
 */
#define STEP_MMA_ROWS 8
/* the k quarters of the dt tiles (8 warps: 2 tiles by 4 quarters) */
#define STEP_MMA_KQ 4

/* shared memory of ssmk_ssm_step_mma: dt_w rows (32, R + 8 bf16: the 8
 * rows of an ldmatrix in distinct banks), dt_low rows (8, R + 8 f32: a
 * k step's B fragments conflict-free), dt (8, 32), the dt tiles' k
 * quarters (STEP_MMA_KQ, 8, 32) */
static inline __host__ __device__ int step_mma_smem_bytes(int R)
{
	return 32 * (R + 8) * 2 + STEP_MMA_ROWS * (R + 8) * 4 +
	       (1 + STEP_MMA_KQ) * STEP_MMA_ROWS * 32 * 4;
}

__global__ void __launch_bounds__(256, 3)
ssmk_ssm_step_mma(const float *__restrict__ dbc, int R, const __nv_bfloat16 *__restrict__ dt_w,
		  const float *__restrict__ dt_b, const float *__restrict__ A,
		  const float *__restrict__ Dp, const float *__restrict__ xc,
		  const float *__restrict__ xz, const float *__restrict__ in_b,
		  float *__restrict__ pool, const int *__restrict__ slots, size_t state_floats,
		  size_t ssm_off, size_t dts_off, int E, int B, __nv_bfloat16 *__restrict__ yT)
{
	constexpr int N = 16, CB = 32, RB = STEP_MMA_ROWS;
	const float LOG2E = 1.4426950408889634f;
	extern __shared__ __align__(16) unsigned char smem_raw[];
	const int W = R + 2 * N, RP = R + 8;
	__nv_bfloat16 *s_w = (__nv_bfloat16 *)smem_raw;
	float *s_lo = (float *)(smem_raw + CB * RP * 2);
	float *s_dt = s_lo + RB * RP;
	float *s_part = s_dt + RB * CB;
	const int e0 = blockIdx.x * CB, r0 = blockIdx.y * RB;
	const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
	const int g = l & 3, c8 = l >> 2;
	const int r = r0 + w;

	pdl_wait();
	/* the next kernel (ssmk_gemm_rows) may start: it reads only
	 * weights before its wait */
	pdl_trigger();
	const int slot = r < B ? slots[r] : -1;
	float h[4][4], a[4][4];

	/* the block's dt_w rows (R / 8 pieces of 16 bytes a row) and its
	 * rows' dt_low (R / 4 pieces) */
	for (int i = threadIdx.x; i < CB * (R / 8); i += 256) {
		const int row = i / (R / 8), piece = i % (R / 8);
		cp_async16(s_w + row * RP + 8 * piece, dt_w + (size_t)(e0 + row) * R + 8 * piece,
			   true);
	}
	for (int i = threadIdx.x; i < RB * (R / 4); i += 256) {
		const int row = i / (R / 4), piece = i % (R / 4);
		const int rr = r0 + row < B ? r0 + row : B - 1;
		cp_async16(s_lo + row * RP + 4 * piece, dbc + (size_t)rr * W + 4 * piece, true);
	}
	cp_async_commit();
	/* this lane's channels: A (in log2 units) and its states; x, the
	 * gate SiLU(z) and dt_sum of channel c8 + 8 g, one a lane (the lanes
	 * of a channel's row get them by shuffles) */
#pragma unroll
	for (int j = 0; j < 4; j++) {
		const int e = e0 + c8 + 8 * j;
		const float4 av = *(const float4 *)(A + (size_t)e * N + 4 * g);
		a[j][0] = av.x * LOG2E;
		a[j][1] = av.y * LOG2E;
		a[j][2] = av.z * LOG2E;
		a[j][3] = av.w * LOG2E;
		if (slot >= 0) {
			const float4 v = *(const float4 *)(pool + (size_t)slot * state_floats +
							   ssm_off + (size_t)e * N + 4 * g);
			h[j][0] = v.x;
			h[j][1] = v.y;
			h[j][2] = v.z;
			h[j][3] = v.w;
		} else {
			h[j][0] = h[j][1] = h[j][2] = h[j][3] = 0.0f;
		}
	}
	const int eg = e0 + c8 + 8 * g, rc = r < B ? r : B - 1;
	const float zg = silu(xz[(size_t)rc * 2 * E + E + eg] + (in_b ? in_b[E + eg] : 0.0f));
	const float dsg = slot >= 0 ? pool[(size_t)slot * state_floats + dts_off + eg] : 0.0f;
	const float xg = xc[(size_t)rc * E + eg];
	const float4 Bq = *(const float4 *)(dbc + (size_t)(r < B ? r : B - 1) * W + R + 4 * g);
	const float4 Cq =
		*(const float4 *)(dbc + (size_t)(r < B ? r : B - 1) * W + R + N + 4 * g);
	cp_async_wait<0>();
	__syncthreads();

	{
		/* warp w: channels 16 (w & 1) .. + 15 of the block (tile rows) by
		 * its 8 rows (tile columns), over the k steps w / 2, w / 2 + 4,
		 * ...; lane l holds channels 16 (w & 1) + c8 (+ 8), rows 2 g,
		 * 2 g + 1 */
		const int tw = w & 1, kq = w >> 1;
		float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
		for (int ks = kq; ks < R / 16; ks += STEP_MMA_KQ) {
			unsigned af[4], bh[2], bl[2];
			ldmatrix_x4(af, s_w + 16 * tw * RP + 16 * ks, RP);
#pragma unroll
			for (int hf = 0; hf < 2; hf++) {
				const float2 v = *(const float2 *)(s_lo + c8 * RP + 16 * ks + 2 * g +
								   8 * hf);
				const __nv_bfloat162 hi = __floats2bfloat162_rn(v.x, v.y);
				const __nv_bfloat162 lo = __floats2bfloat162_rn(
					v.x - __low2float(hi), v.y - __high2float(hi));
				bh[hf] = *(const unsigned *)&hi;
				bl[hf] = *(const unsigned *)&lo;
			}
			mma16816<__nv_bfloat16>(d, af, bh);
			mma16816<__nv_bfloat16>(d, af, bl);
		}
#pragma unroll
		for (int i = 0; i < 4; i++) {
			const int ch = 16 * tw + c8 + 8 * (i >> 1), row = 2 * g + (i & 1);
			s_part[kq * RB * CB + row * CB + ch] = d[i];
		}
	}
	__syncthreads();
	{
		/* thread t: dt of row t / 32, channel t % 32, its k quarters
		 * added in order */
		const int ch = threadIdx.x % CB;
		float v = 0.0f;
#pragma unroll
		for (int k = 0; k < STEP_MMA_KQ; k++)
			v += s_part[k * RB * CB + threadIdx.x];
		s_dt[threadIdx.x] = softplus(v + dt_b[e0 + ch]);
	}
	__syncthreads();
	if (r >= B)
		return;

	const float bv[4] = {Bq.x, Bq.y, Bq.z, Bq.w}, cv[4] = {Cq.x, Cq.y, Cq.z, Cq.w};
	float *st = slot >= 0 ? pool + (size_t)slot * state_floats : NULL;
#pragma unroll
	for (int j = 0; j < 4; j++) {
		const int e = e0 + c8 + 8 * j;
		/* channel e's x, gate and dt_sum are lane 4 c8 + j's */
		const float xj = __shfl_sync(0xffffffffu, xg, 4 * c8 + j);
		const float zj = __shfl_sync(0xffffffffu, zg, 4 * c8 + j);
		const float dsj = __shfl_sync(0xffffffffu, dsg, 4 * c8 + j);
		const float dt = s_dt[w * CB + c8 + 8 * j], dx = dt * xj;
		float y = 0.0f;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			h[j][i] = ex2_approx(dt * a[j][i]) * h[j][i] + dx * bv[i];
			y += cv[i] * h[j][i];
		}
		if (st) {
			*(float4 *)(st + ssm_off + (size_t)e * N + 4 * g) =
				make_float4(h[j][0], h[j][1], h[j][2], h[j][3]);
			if (g == 0)
				st[dts_off + e] = dsj + dt;
		}
		y += __shfl_xor_sync(0xffffffffu, y, 1);
		y += __shfl_xor_sync(0xffffffffu, y, 2);
		if (g == 0)
			yT[(size_t)r * E + e] = __float2bfloat16_rn((y + Dp[e] * xj) * zj);
	}
}

/*
 * The batched decode's conv step and x_proj in one kernel (16-bit weights,
 * d_conv 4), where they were the conv kernel and a cuBLAS GEMM: a cluster
 * of C blocks (grid.x = C) takes RB rows, block q of it channels
 * [q CH, (q + 1) CH), CH = E / C a multiple of 32.
 *   - Before pdl_wait, of what the in_proj GEMM ahead does not write: the
 *     block's x_proj columns (rows 16 MT of x_w, those past W zero, CH
 *     columns, in T) by cp.async into shared memory; each thread's conv
 *     weights, bias, in_b and first CXP_CONV_ROWS rows' windows into
 *     registers; the later rows' windows asked into L2. (All of a
 *     thread's windows in registers there, 126 of them, was slower:
 *     round thirty-one.)
 *   - After it, the conv step of every (row, channel) of the block:
 *     thread t takes channel t % CH of rows t / CH, + CXP_THREADS / CH,
 *     ..., CXP_CONV_ROWS of them at a time, their windows and x all asked
 *     for before the first is used (one (row, channel) a loop round, every
 *     load after the last store, was a round trip each: bench/NOTES.md
 *     round thirty-two); ssmk_conv_step's formula, summed in the same
 *     order; xc in f32 for the SSM step, and in T into shared memory as
 *     the GEMM's input.
 *   - The block's part of dbc = xc . x_w^T over its channels on the tensor
 *     cores (mma.m16n8k16, f32 sums): warp w takes the 16-output tiles w,
 *     w + warps, ... over the block's channels in order. Lane (g, t) reads
 *     16 bytes of a row at columns 8 t .. 8 t + 7 of each 32-column chunk,
 *     for x_w and xc alike, and gives the chunk's two k steps its halves
 *     (the k order inside a chunk is permuted the same way on both sides,
 *     so the sum is the chunk's); rows of the pitch cxp_pitch() fall in
 *     distinct banks.
 *   - The cluster's C parts summed through distributed shared memory in
 *     rank order (the same sums on every run), block q the q-th C-th of
 *     the rows' dbc values (a run of CXP_THREADS values a block left most
 *     blocks idle at the second barrier); a second, relaxed cluster barrier
 *     keeps every block's shared memory alive until the others have read
 *     it.
 * grid (C, ceil(B / RB)), cluster (C, 1, 1), block CXP_THREADS, dynamic
 * shared memory cxp_smem_bytes(RB, CH, W, 2).
 */
#define CXP_THREADS 512

/* The row pitch (16-bit elements) of the shared x_w and xc tiles: CH
 * columns, padded so that rows 16-byte steps apart by 8 rows start 64 bytes
 * apart modulo 128 (CH % 32 == 0). */
static inline __host__ __device__ int cxp_pitch(int CH)
{
	return (2 * CH) % 128 == 0 ? CH + 32 : CH;
}

static inline __host__ __device__ size_t cxp_smem_bytes(int RB, int CH, int W, int wsize)
{
	const int MT = (W + 15) / 16;

	return (size_t)(16 * MT + RB) * cxp_pitch(CH) * wsize + (size_t)RB * W * 4;
}

/* The most blocks a cluster of ssmk_conv_xproj (its reduction is unrolled
 * over them). */
#define CXP_MAX_CLUSTER 16

/* The rows of its channel a thread of ssmk_conv_xproj's conv phase loads
 * before it uses any. */
#define CXP_CONV_ROWS 4

/* The two halves of a cluster barrier, for work between them: arriving
 * without release semantics (no fence before it), and waiting for every
 * thread of the cluster to have arrived. */
__device__ __forceinline__ void cluster_arrive_relaxed(void)
{
	asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}

__device__ __forceinline__ void cluster_wait(void)
{
	asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
}

/* A cluster barrier without release semantics (no fence before it). */
__device__ __forceinline__ void cluster_sync_relaxed(void)
{
	cluster_arrive_relaxed();
	cluster_wait();
}

__device__ __forceinline__ void prefetch_l2(const void *p)
{
	asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

template <typename T, int RB>
__global__ void __launch_bounds__(CXP_THREADS)
ssmk_conv_xproj(const float *__restrict__ xz, const float *__restrict__ in_b,
		const float *__restrict__ cw, const float *__restrict__ cbias,
		float *__restrict__ pool, const int *__restrict__ slots, size_t state_floats,
		size_t conv_off, int E, int CH, const T *__restrict__ x_w, int W, int B,
		float *__restrict__ xc, float *__restrict__ dbc)
{
	namespace cg = cooperative_groups;
	constexpr int K = 4, NT = RB / 8, WARPS = CXP_THREADS / 32;
	extern __shared__ __align__(16) unsigned char smem_raw[];
	cg::cluster_group cl = cg::this_cluster();
	const int C = gridDim.x, q = blockIdx.x, r0 = blockIdx.y * RB, c0 = q * CH;
	const int MT = (W + 15) / 16, P = cxp_pitch(CH);
	T *s_w = (T *)smem_raw;
	T *s_x = s_w + (size_t)16 * MT * P;
	float *s_p = (float *)(s_x + (size_t)RB * P);
	const int tid = threadIdx.x, w = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;

	{
		/* thread: piece tid % PR of rows tid / PR, + step, ... (PR pieces
		 * of 16 bytes a row, CH <= CXP_THREADS) */
		const int PR = CH / 8, step = CXP_THREADS / PR;
		const T *src = x_w + c0 + 8 * (tid % PR);
		T *dst = s_w + 8 * (tid % PR);

		for (int j = tid / PR; j < 16 * MT && tid < step * PR; j += step)
			cp_async16(dst + (size_t)j * P, src + (size_t)(j < W ? j : 0) * E, j < W);
	}
	cp_async_commit();

	/* thread tid: channel ch of rows rl, rl + RS, ... (RS row lanes of CH
	 * threads; the rest idle in the conv), CXP_CONV_ROWS of them at a
	 * time, every window and x of them asked for before the first is
	 * used */
	const int RS = CXP_THREADS / CH, ch = tid % CH, rl = tid / CH, e = c0 + ch;
	float wk[K], bias = 0.0f, ib = 0.0f, old[CXP_CONV_ROWS][K - 1];
	float *win[CXP_CONV_ROWS];
	/* the windows of rows r1, r1 + RS, ... and their places in the slots
	 * (NULL: a padding row or one past RB or B, which keeps no state) */
	auto windows = [&](int r1) {
#pragma unroll
		for (int k = 0; k < CXP_CONV_ROWS; k++) {
			const int r = r1 + k * RS;

			win[k] = conv_window(pool, r < RB && r0 + r < B ? slots[r0 + r] : -1,
					     state_floats, conv_off, e, K);
#pragma unroll
			for (int j = 0; j < K - 1; j++)
				old[k][j] = win[k] ? win[k][j] : 0.0f;
		}
	};

	/* before the wait: the weights, bias and in_b, the first rows'
	 * windows (the previous step's conv wrote them), and the later rows'
	 * windows asked into L2 by 128-byte line (a float every 32 and the
	 * run's last one) */
	if (rl < RS) {
#pragma unroll
		for (int j = 0; j < K; j++)
			wk[j] = cw[(size_t)e * K + j];
		bias = cbias ? cbias[e] : 0.0f;
		ib = in_b ? in_b[e] : 0.0f;
		windows(rl);
	}
	{
		const int nw = CH * (K - 1), wl = nw / 32 + 1, rf = CXP_CONV_ROWS * RS;
		for (int i = tid; i < (RB - rf) * wl; i += CXP_THREADS) {
			const int r = rf + i / wl;
			const int slot = r0 + r < B ? slots[r0 + r] : -1;
			if (slot >= 0)
				prefetch_l2(pool + (size_t)slot * state_floats + conv_off +
					    (size_t)c0 * (K - 1) + min(32 * (i % wl), nw - 1));
		}
	}
	/* xz is the in_proj GEMM's */
	pdl_wait();
	/* the SSM step's blocks may start now: every kernel before this one
	 * has completed, and they wait for this one before their first load */
	pdl_trigger();
	for (int r1 = rl; rl < RS && r1 < RB; r1 += CXP_CONV_ROWS * RS) {
		float xv[CXP_CONV_ROWS];

		if (r1 != rl)
			windows(r1);
#pragma unroll
		for (int k = 0; k < CXP_CONV_ROWS; k++) {
			const int r = r1 + k * RS;
			xv[k] = r < RB && r0 + r < B ? xz[(size_t)(r0 + r) * 2 * E + e] + ib : 0.0f;
		}
#pragma unroll
		for (int k = 0; k < CXP_CONV_ROWS; k++) {
			const int r = r1 + k * RS;
			float y = 0.0f;

			if (r >= RB)
				break;
			if (r0 + r < B) {
				y = silu(conv_step_out(bias, wk, old[k], win[k], xv[k], K));
				xc[(size_t)(r0 + r) * E + e] = y;
			}
			s_x[(size_t)r * P + ch] = from_f32<T>(y);
		}
	}
	cp_async_wait<0>();
	__syncthreads();

	for (int mt = w; mt < MT; mt += WARPS) {
		const T *a0 = s_w + (size_t)(16 * mt + g) * P + 8 * t, *a1 = a0 + (size_t)8 * P;
		float d[NT][4] = {};

		for (int k = 0; k < CH; k += 32) {
			const uint4 lo = *(const uint4 *)(a0 + k), hi = *(const uint4 *)(a1 + k);
			const unsigned f1[4] = {lo.x, hi.x, lo.y, hi.y};
			const unsigned f2[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
			for (int nt = 0; nt < NT; nt++) {
				const uint4 bq = *(const uint4 *)(s_x + (size_t)(8 * nt + g) * P +
								  8 * t + k);
				const unsigned b1[2] = {bq.x, bq.y}, b2[2] = {bq.z, bq.w};
				mma16816<T>(d[nt], f1, b1);
				mma16816<T>(d[nt], f2, b2);
			}
		}
		/* d[nt]: outputs j, j + 8 by rows 8 nt + 2 t, + 1 */
		const int j = 16 * mt + g;
#pragma unroll
		for (int nt = 0; nt < NT; nt++) {
			float *row = s_p + (size_t)(8 * nt + 2 * t) * W;
			if (j < W) {
				row[j] = d[nt][0];
				row[W + j] = d[nt][1];
			}
			if (j + 8 < W) {
				row[j + 8] = d[nt][2];
				row[W + j + 8] = d[nt][3];
			}
		}
	}

	cl.sync();
	/* block q sums and writes values [v0, v1) of the rows' RB W */
	const int per = (RB * W + C - 1) / C, v0 = q * per, v1 = min(v0 + per, RB * W);
	for (int v = v0 + tid; v < v1; v += CXP_THREADS) {
		const int r = v / W;
		float part[CXP_MAX_CLUSTER], s = 0.0f;

		if (r0 + r >= B)
			continue;
		/* every part asked for before the first is added */
#pragma unroll
		for (int p = 0; p < CXP_MAX_CLUSTER; p++)
			part[p] = p < C ? cl.map_shared_rank(s_p, p)[v] : 0.0f;
#pragma unroll
		for (int p = 0; p < CXP_MAX_CLUSTER; p++)
			s += part[p];
		dbc[(size_t)(r0 + r) * W + v % W] = s;
	}
	/* every block's shared memory stays until the others have read it:
	 * their reads are in registers by now, so nothing is to be released */
	cluster_sync_relaxed();
}

#endif
