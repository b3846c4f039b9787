/*
 * dtype.c — f16 / bf16 <-> f32 conversions and tensor element helpers.
 *
 * Conversions to the narrow types round to nearest, ties to even, like
 * PyTorch's .to(torch.float16 / torch.bfloat16); NaN stays NaN and values
 * beyond the f16 range become infinities.
 */
#include <string.h>

#include "ssm_impl.h"

static uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof u);
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof f);
	return f;
}

float ssm_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

uint16_t ssm_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and signed */
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float ssm_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;

	if (exp == 0x1f) /* inf / NaN */
		return bits_f32(sign | 0x7f800000u | (man << 13));
	if (exp == 0) {
		if (man == 0)
			return bits_f32(sign);
		/* subnormal: man * 2^-24, exact in f32 */
		float v = (float)man * 0x1p-24f;
		return sign ? -v : v;
	}
	return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t ssm_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t a = u & 0x7fffffffu;

	if (a > 0x7f800000u) /* NaN */
		return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x3ffu);
	if (a >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
		return sign | 0x7c00u;
	if (a < 0x38800000u) { /* below 2^-14: f16 subnormal or zero */
		if (a < 0x33000000u) /* below 2^-25: rounds to zero */
			return sign;
		uint32_t e = a >> 23;            /* 102 .. 112 */
		uint32_t m = (a & 0x7fffffu) | 0x800000u;
		uint32_t shift = 126u - e;       /* 14 .. 24 */
		uint32_t v = m >> shift;
		uint32_t rem = m & ((1u << shift) - 1u);
		uint32_t half = 1u << (shift - 1u);
		if (rem > half || (rem == half && (v & 1u)))
			v++;
		return sign | (uint16_t)v;
	}
	/* normal: rebias the exponent (127 -> 15) and round the mantissa */
	a -= 112u << 23;
	a += 0xfffu + ((a >> 13) & 1u);
	return sign | (uint16_t)(a >> 13);
}

size_t ssm_tensor_numel(const ssm_tensor *t)
{
	size_t n = 1;

	for (int i = 0; i < t->ndim; i++)
		n *= (size_t)t->shape[i];
	return n;
}

void ssm_tensor_to_f32(const ssm_tensor *t, float *out, size_t n)
{
	const uint8_t *p = t->data;

	switch (t->dtype) {
	case SSM_DTYPE_F32:
		memcpy(out, p, n * sizeof(float));
		break;
	case SSM_DTYPE_F16:
		for (size_t i = 0; i < n; i++)
			out[i] = ssm_f16_to_f32((uint16_t)(p[2 * i] |
							   p[2 * i + 1] << 8));
		break;
	case SSM_DTYPE_BF16:
		for (size_t i = 0; i < n; i++)
			out[i] = ssm_bf16_to_f32((uint16_t)(p[2 * i] |
							    p[2 * i + 1] << 8));
		break;
	}
}
