/*
 * ssm_merge.c — merges of canonical states (the "merge" section of ssm.h).
 *
 * Both merges are element-wise over the state arrays, computed in double and
 * rounded once to f32, so each output element carries one f32 rounding
 * (relative 6e-8) whatever the number of sources. Every argument is checked
 * before the first write: a refused merge leaves out exactly as it was.
 * Element-wise evaluation (each output element read from the sources before
 * it is written) is also what lets out alias a source.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ssm_impl.h"

/* Element counts of the four state arrays. */
typedef struct parts {
	size_t ssm;    /* n_layer * d_inner * d_state */
	size_t conv;   /* n_layer * d_inner * (d_conv - 1) */
	size_t hidden; /* d_model */
	size_t dt_sum; /* n_layer * d_inner */
} parts;

static parts parts_of(const ssm_state *st)
{
	size_t rows = (size_t)st->n_layer * st->d_inner;
	parts p = { rows * st->d_state, rows * (st->d_conv - 1), st->d_model,
		    rows };
	return p;
}

/* SSMD_EMODEL unless a and b come from the same model: same architecture,
 * shape and fingerprint. which names the pair in the detail. */
static int same_model(const ssm_state *a, const ssm_state *b, const char *fn,
		      size_t which)
{
	if (!ssm_state_same_shape(a, b))
		return ssmd_err_set(SSMD_EMODEL, "%s: state %zu has another shape "
				    "than state 0 (states of different models "
				    "never merge)", fn, which);
	if (memcmp(a->fingerprint, b->fingerprint, SSM_FINGERPRINT_LEN))
		return ssmd_err_set(SSMD_EMODEL, "%s: state %zu has another model "
				    "fingerprint than state 0 (states of "
				    "different models never merge)", fn, which);
	return SSMD_OK;
}

/* ---------------------------------------------------------- interpolate -- */

/* out[i] = sum_j w_j * src_j[i] over n_elem floats of each source, with
 * w already normalised. Reads every source at i before writing out[i]. */
static void weighted_sum(float *out, const float *const *src, const double *w,
			 size_t n, size_t n_elem)
{
	for (size_t i = 0; i < n_elem; i++) {
		double acc = 0.0;
		for (size_t j = 0; j < n; j++)
			acc += w[j] * (double)src[j][i];
		out[i] = (float)acc;
	}
}

int ssm_merge_interpolate(const ssm_state *const *src, const double *weights,
			  size_t n, ssm_state *out)
{
	static const char fn[] = "ssm_merge_interpolate";
	const float **arr = NULL;
	double *w = NULL;
	double total = 0.0, tokens = 0.0;
	parts p;
	int rc = SSMD_OK;

	if (!src || !out)
		return ssmd_err_set(SSMD_EINVAL, "%s: NULL argument", fn);
	if (n == 0)
		return ssmd_err_set(SSMD_EINVAL, "%s: no states to merge", fn);
	for (size_t j = 0; j < n; j++) {
		if (!src[j])
			return ssmd_err_set(SSMD_EINVAL, "%s: state %zu is NULL",
					    fn, j);
		if ((rc = same_model(src[0], src[j], fn, j)))
			return rc;
	}
	if (!ssm_state_same_shape(out, src[0]))
		return ssmd_err_set(SSMD_EINVAL, "%s: out is not shaped like the "
				    "states", fn);
	if (weights) {
		for (size_t j = 0; j < n; j++) {
			/* !(x >= 0) also catches NaN */
			if (!(weights[j] >= 0.0) || !isfinite(weights[j]))
				return ssmd_err_set(SSMD_EINVAL, "%s: weight %zu "
						    "(%g) is not a finite number "
						    ">= 0", fn, j, weights[j]);
			total += weights[j];
		}
		if (!(total > 0.0) || !isfinite(total))
			return ssmd_err_set(SSMD_EINVAL, "%s: the weights sum to "
					    "%g; they must have a finite sum "
					    "> 0", fn, total);
	}

	w = malloc(n * sizeof *w);
	arr = malloc(n * sizeof *arr);
	if (!w || !arr) {
		rc = ssmd_err_set(SSMD_ENOMEM, "%s: %zu weights", fn, n);
		goto done;
	}
	for (size_t j = 0; j < n; j++) {
		w[j] = weights ? weights[j] / total : 1.0 / (double)n;
		tokens += w[j] * (double)src[j]->n_tokens;
	}

	/* Every part, in the order of the encoding. */
	p = parts_of(src[0]);
	for (size_t j = 0; j < n; j++)
		arr[j] = src[j]->ssm;
	weighted_sum(out->ssm, arr, w, n, p.ssm);
	for (size_t j = 0; j < n; j++)
		arr[j] = src[j]->conv;
	weighted_sum(out->conv, arr, w, n, p.conv);
	for (size_t j = 0; j < n; j++)
		arr[j] = src[j]->hidden;
	weighted_sum(out->hidden, arr, w, n, p.hidden);
	for (size_t j = 0; j < n; j++)
		arr[j] = src[j]->dt_sum;
	weighted_sum(out->dt_sum, arr, w, n, p.dt_sum);

	/* A convex combination of u64 counts stays within their range, but
	 * near UINT64_MAX the double may round up to 2^64, which no u64 holds. */
	tokens = round(tokens);
	out->n_tokens = tokens >= 18446744073709551616.0 ? UINT64_MAX
							 : (uint64_t)tokens;
	memmove(out->fingerprint, src[0]->fingerprint, SSM_FINGERPRINT_LEN);

done:
	free(arr);
	free(w);
	return rc;
}

/* -------------------------------------------------------------- compose -- */

int ssm_merge_compose(const ssm_model *m, const ssm_state *a,
		      const ssm_state *b, ssm_state *out)
{
	static const char fn[] = "ssm_merge_compose";
	const ssm_config *c;
	float *A = NULL; /* (d_inner, d_state) A_log of one layer, as f32 */
	size_t di, N, rows;
	parts p;
	int rc;

	if (!m || !a || !b || !out)
		return ssmd_err_set(SSMD_EINVAL, "%s: NULL argument", fn);
	c = ssm_model_config(m);
	if (c->arch != SSM_ARCH_MAMBA1)
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: architecture %u has "
				    "no compose merge", fn, c->arch);
	if ((rc = ssm_model_check_state(m, a)) ||
	    (rc = ssm_model_check_state(m, b)))
		return rc;
	if (!ssm_state_same_shape(out, a))
		return ssmd_err_set(SSMD_EINVAL, "%s: out is not shaped like the "
				    "states", fn);
	p = parts_of(a);
	/* dt = softplus(.) > 0, so a state of this model has finite dt sums
	 * >= 0; anything else would turn exp(A * dt_sum) into inf or NaN. */
	for (size_t i = 0; i < p.dt_sum; i++)
		if (!(b->dt_sum[i] >= 0.0f) || !isfinite(b->dt_sum[i]))
			return ssmd_err_set(SSMD_EINVAL, "%s: state B has dt_sum "
					    "%g at [%zu]; dt sums are finite and "
					    ">= 0", fn, b->dt_sum[i], i);
	if (a->n_tokens > UINT64_MAX - b->n_tokens)
		return ssmd_err_set(SSMD_ERANGE, "%s: n_tokens %llu + %llu "
				    "overflows", fn,
				    (unsigned long long)a->n_tokens,
				    (unsigned long long)b->n_tokens);

	di = (size_t)c->d_inner;
	N = (size_t)c->d_state;
	rows = (size_t)c->n_layer * di;
	A = malloc(di * N * sizeof *A);
	if (!A)
		return ssmd_err_set(SSMD_ENOMEM, "%s: A (%zu floats)", fn, di * N);

	/* ssm (n_layer, d_inner, d_state):
	 *   h[l][c][n] = exp(A[l][c][n] * dt_sum_B[l][c]) * h_A[l][c][n]
	 *                + h_B[l][c][n],   A = -exp(A_log).
	 * B's scan started from zero; had it started from h_A, the same inputs
	 * would have decayed h_A by prod_t exp(A dt_t) = exp(A sum_t dt_t)
	 * and added the same h_B — exact for one linear SSM layer. */
	for (int l = 0; l < c->n_layer; l++) {
		ssm_tensor_to_f32(&m->layers[l].A_log, A, di * N);
		for (size_t ch = 0; ch < di; ch++) {
			size_t r = (size_t)l * di + ch;
			double dt = (double)b->dt_sum[r];
			for (size_t s = 0; s < N; s++) {
				size_t i = r * N + s;
				double decay = exp(-exp((double)A[ch * N + s]) * dt);
				out->ssm[i] = (float)(decay * (double)a->ssm[i] +
						      (double)b->ssm[i]);
			}
		}
	}
	/* conv window and last hidden: B's, the newest inputs */
	memmove(out->conv, b->conv, p.conv * sizeof(float));
	memmove(out->hidden, b->hidden, p.hidden * sizeof(float));
	for (size_t r = 0; r < rows; r++)
		out->dt_sum[r] = (float)((double)a->dt_sum[r] + (double)b->dt_sum[r]);
	out->n_tokens = a->n_tokens + b->n_tokens;
	memmove(out->fingerprint, a->fingerprint, SSM_FINGERPRINT_LEN);
	free(A);
	return SSMD_OK;
}
