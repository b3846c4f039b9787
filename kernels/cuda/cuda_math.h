/*
 * cuda_math.h — 2^x and log1p on the FMA pipe, for the kernels whose
 * special-function unit is the busiest one.
 *
 * The prefill scan runs one exponential a (token, state) in each pass, and
 * an H200 SM completes 16 of those a cycle on its special-function unit
 * (MUFU) against 128 fused multiply-adds. Where MUFU is the bound, a few of
 * the exponentials are worth computing with multiply-adds instead, and
 * softplus needs only one MUFU operation when its log1p is a polynomial.
 *
 * Plain C99 as well as CUDA (SSM_MATH_FN adds __host__ __device__ under
 * nvcc), so the CPU tests check these against libm with the same IEEE
 * float arithmetic the device runs (fmaf is one rounding on both).
 */
#ifndef SSM_CUDA_MATH_H
#define SSM_CUDA_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define SSM_MATH_FN static __host__ __device__ __forceinline__
#else
#define SSM_MATH_FN static inline
#endif

/*
 * 2^x for x <= 0 without MUFU: 2^x = 2^j 2^f with j = round(x) and f = x - j
 * in [-1/2, 1/2]; 2^f = 1 + f q(f), q of degree 5 (a Chebyshev fit of
 * (2^f - 1) / f, so 2^0 is exactly 1), and 2^j added into the exponent
 * bits. Relative error at most 0.6 ulp over [-126, 0] (tests/cuda/
 * test_cuda_math.c; ex2.approx is at most 2 ulp). x is clamped to -127,
 * where the result is exactly 0; between -127 and -126 it is below 2^-126,
 * as ex2.approx.ftz's 0. 11 instructions, none on MUFU.
 */
SSM_MATH_FN float ssm_ex2_fma(float x)
{
	/* 1.5 2^23: adding it rounds x to an integer held in the low bits */
	const float shift = 12582912.0f;
	float q, p, r;
	uint32_t pb, tb;

	x = fmaxf(x, -127.0f);
	const float t = x + shift;
	const float f = x - (t - shift);
	q = 1.5453162945e-04f;
	q = fmaf(q, f, 1.3390863365e-03f);
	q = fmaf(q, f, 9.6180825573e-03f);
	q = fmaf(q, f, 5.5503571142e-02f);
	q = fmaf(q, f, 2.4022650761e-01f);
	q = fmaf(q, f, 6.9314718803e-01f);
	p = fmaf(q, f, 1.0f);
	memcpy(&pb, &p, 4);
	memcpy(&tb, &t, 4);
	/* t's low bits are j in two's complement: j << 23 is 2^j's exponent */
	pb += tb << 23;
	memcpy(&r, &pb, 4);
	return r;
}

/*
 * log1p(u) for u in [0, 1]: u q(u), q of degree 9 (a Chebyshev fit of
 * log1p(u) / u), relative error at most 1.4e-7 (tests/cuda/
 * test_cuda_math.c), 0 at u = 0. softplus's log1p(exp(-|v|)) takes it
 * without a division.
 */
SSM_MATH_FN float ssm_log1p01(float u)
{
	float q = -3.1760570184e-03f;

	q = fmaf(q, u, 1.9542527261e-02f);
	q = fmaf(q, u, -5.6373612830e-02f);
	q = fmaf(q, u, 1.0543623795e-01f);
	q = fmaf(q, u, -1.5269667074e-01f);
	q = fmaf(q, u, 1.9663274257e-01f);
	q = fmaf(q, u, -2.4951616263e-01f);
	q = fmaf(q, u, 3.3329710499e-01f);
	q = fmaf(q, u, -4.9999892648e-01f);
	q = fmaf(q, u, 9.9999999466e-01f);
	return u * q;
}

#endif
