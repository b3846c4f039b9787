/*
 * test_cuda_math.c — the CUDA kernels' FMA-pipe arithmetic (cuda_math.h)
 * against libm in double precision. The functions are plain C as well as
 * CUDA, and fmaf rounds once on the host as the device's FFMA does, so this
 * runs (and proves them) on any machine, with or without a GPU.
 */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "cuda_math.h"

/* one ulp of a float in [1, 2) */
#define ULP1 (1.0 / 8388608.0)

static void test_ex2(void)
{
	double worst = 0.0, at = 0.0;
	long n = 0;

	/* every 1/28672 (not a power of two, so f takes every offset) over the
	 * range whose results are normal floats */
	for (double x = -126.0; x <= 0.0; x += 1.0 / 28672.0, n++) {
		const float xf = (float)x;
		const double ref = exp2((double)xf);
		const double err = fabs((double)ssm_ex2_fma(xf) - ref) / ref;

		if (err > worst) {
			worst = err;
			at = xf;
		}
	}
	/* ex2.approx, which it stands in for, is within 2 ulp; the fit's
	 * bound is 0.6 */
	CHECK(worst <= ULP1, "ssm_ex2_fma: relative error %.3g (%.2f ulp) at x = %.9g, %ld points",
	      worst, worst / ULP1, at, n);
	CHECK(ssm_ex2_fma(0.0f) == 1.0f, "ssm_ex2_fma(0) = %.9g, want exactly 1",
	      ssm_ex2_fma(0.0f));
	CHECK(ssm_ex2_fma(-1.0f) == 0.5f && ssm_ex2_fma(-20.0f) == ldexpf(1.0f, -20),
	      "ssm_ex2_fma at integers: %.9g, %.9g", ssm_ex2_fma(-1.0f), ssm_ex2_fma(-20.0f));
	/* below 2^-126 the device's ex2.approx.ftz gives 0: here 0 at -127
	 * and beyond, and something under 2^-126 between */
	CHECK(ssm_ex2_fma(-127.0f) == 0.0f && ssm_ex2_fma(-1000.0f) == 0.0f &&
		      ssm_ex2_fma(-INFINITY) == 0.0f,
	      "ssm_ex2_fma below -127: %g %g", ssm_ex2_fma(-127.0f), ssm_ex2_fma(-1000.0f));
	CHECK(ssm_ex2_fma(-126.6f) >= 0.0f && ssm_ex2_fma(-126.6f) < ldexpf(1.0f, -126),
	      "ssm_ex2_fma(-126.6) = %g", ssm_ex2_fma(-126.6f));
}

static void test_log1p(void)
{
	double worst = 0.0, at = 0.0;
	long n = 0;

	/* tiny u geometrically (log1p(u) ~ u there), then [1e-6, 1] densely */
	for (double u = 1e-30; u <= 1.0; u = u < 1e-6 ? u * 1.01 : u + 1.0 / 3.0e6, n++) {
		const float uf = (float)u;
		const double ref = log1p((double)uf);
		const double err = fabs((double)ssm_log1p01(uf) - ref) / ref;

		if (err > worst) {
			worst = err;
			at = uf;
		}
	}
	/* the fit's bound 1.4e-7 relative; softplus in f32 rounds to 0.6e-7
	 * anyway */
	CHECK(worst <= 2.0e-7, "ssm_log1p01: relative error %.3g at u = %.9g, %ld points", worst,
	      at, n);
	CHECK(ssm_log1p01(0.0f) == 0.0f, "ssm_log1p01(0) = %g", ssm_log1p01(0.0f));
	CHECK(fabs(ssm_log1p01(1.0f) - log(2.0)) <= 2.0e-7 * log(2.0),
	      "ssm_log1p01(1) = %.9g, want ln 2", ssm_log1p01(1.0f));
}

int main(void)
{
	test_ex2();
	test_log1p();
	return check_summary("cuda_math");
}
