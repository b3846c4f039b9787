/*
 * test_merge.c — the interpolate and compose merges (ssm.h, "merge").
 *
 * Every expected value is computed here, in double, from inputs the code under
 * test did not produce:
 *
 *  - interpolate of random states of random shapes against a direct weighted
 *    sum sum_j w_j x_j / sum_j w_j. Tolerance per element:
 *    |ours - ref| <= 1e-6 * sum_j w_j |x_j| / sum_j w_j. The merge rounds
 *    each value once to f32 (relative 6e-8 of that scale) after a double sum
 *    (1e-16); 1e-6 leaves margin, while a wrong weight or a missed source
 *    moves a value by a good fraction of the scale.
 *  - compose on real models (the shared tiny-mamba and every fixture in
 *    tests/fixtures, whatever their dtype, sharding, biases, conv width):
 *    T1 and T2 prefilled from the zero state into states A and B on the CPU
 *    backend, compose(A, B) against exp(A_ * dt_sum_B) * h_A + h_B with
 *    A_ = -exp(A_log) read straight from the safetensors files by this test.
 *    Tolerance per element: 1e-6 * (|decay * h_A| + |h_B|): one f32 rounding
 *    of the result; a wrong layer, channel or sign of A is off by far more.
 *  - the linear identity compose relies on, with a double-precision Mamba
 *    forward pass written here (checked first against the engine's states,
 *    dt sums included, at 1e-5 of each array's scale, the engine's f32
 *    accuracy as in test_engine.c): reading T1 then T2 and recording each
 *    layer's per-token (dt, dt*B*x) inputs while reading T2, the true h
 *    equals exp(A_ * sum dt) * h_A + (the recurrence from zero over those
 *    inputs) to 1e-12 of the scale (double rounding over a few dozen steps),
 *    and ssm_merge_compose on those parts (as f32) reproduces the true h to
 *    1e-6 * (|h_A| + |h_B|) (f32 inputs: each carries 6e-8, dt_sum's
 *    rounding moves exp(A_ dt) by at most 0.37 * 6e-8 relative).
 *  - how far compose(A, B) of the full network is from the state of reading
 *    T1 + T2 is printed, never asserted: the conv window and the layers
 *    above the first see different inputs, so compose is an approximation.
 *  - exact properties (compose onto the zero state, one-hot weights,
 *    aliasing out with a source) bit for bit; compose associative to 1e-6
 *    of the scale; every invalid input giving its code with out left
 *    byte-for-byte unchanged.
 *
 * Random inputs are fresh each run; the seed is printed (SSMD_TEST_SEED
 * replays one).
 */
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ssm.h"
#include "check.h"
#include "testutil.h"

/* ------------------------------------------------------------- helpers -- */

/* The test's random stream (splitmix64), seeded in main(). */
static uint64_t rng_s;

/* uniform in [0, 1) */
static double rng_unit(void)
{
	return (double)(test_splitmix64(&rng_s) >> 11) * 0x1p-53;
}

static uint32_t rng_below(uint32_t n)
{
	return (uint32_t)(test_splitmix64(&rng_s) % n);
}

static size_t n_ssm(const ssm_state *s)
{
	return (size_t)s->n_layer * s->d_inner * s->d_state;
}

static size_t n_conv(const ssm_state *s)
{
	return (size_t)s->n_layer * s->d_inner * (s->d_conv - 1);
}

static size_t n_rows(const ssm_state *s)
{
	return (size_t)s->n_layer * s->d_inner;
}

/* The encoding of st (header with n_tokens and fingerprint, every array):
 * two equal encodings are two bit-equal states. Caller frees. */
static uint8_t *encode(const ssm_state *st, size_t *len)
{
	*len = ssm_state_encoded_size(st);
	uint8_t *buf = malloc(*len);
	if (buf && ssm_state_encode(st, buf, *len)) {
		free(buf);
		buf = NULL;
	}
	return buf;
}

static int same_bytes(const ssm_state *st, const uint8_t *enc, size_t len)
{
	size_t n;
	uint8_t *now = encode(st, &n);
	int same = now && n == len && !memcmp(now, enc, len);

	free(now);
	return same;
}

/* Max |a - b| / max|b|, NaN counting as failure; b in double (bd) or
 * float (bf). */
static double rel_err(const float *a, const double *bd, const float *bf, size_t n)
{
	double md = 0, mb = 0;

	for (size_t i = 0; i < n; i++) {
		const double b = bd ? bd[i] : bf[i], d = fabs((double)a[i] - b);
		if (!(d <= md))
			md = d;
		if (fabs(b) > mb)
			mb = fabs(b);
	}
	return mb > 0 ? md / mb : md;
}

static double rel_err_d(const float *a, const double *b, size_t n)
{
	return rel_err(a, b, NULL, n);
}

static double rel_err_f(const float *a, const float *b, size_t n)
{
	return rel_err(a, NULL, b, n);
}

/* ------------------------------------- safetensors, read independently -- */

/* IEEE half to float, written out from the format. */
static double half_to_double(uint16_t h)
{
	int e = (h >> 10) & 31, f = h & 1023;
	double v = e == 0    ? ldexp(f, -24)
		   : e == 31 ? (f ? NAN : INFINITY)
			     : ldexp(f + 1024, e - 25);
	return (h >> 15) ? -v : v;
}

/* Reads tensor name of the Hugging Face directory dir (model.safetensors, or
 * the shard model.safetensors.index.json names) as doubles. want is the
 * element count the config implies; returns NULL when the tensor is absent
 * (and fails a check when it is present with another size). */
static double *st_read(const char *dir, const char *name, size_t want)
{
	char path[4400], file[256] = "model.safetensors";
	char *text, *buf = NULL;
	cJSON *idx, *hdr = NULL, *e, *dt, *off;
	double *out = NULL;
	size_t len, hlen, begin, end, esz;

	snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
	if ((text = test_file_read(path, NULL))) {
		idx = cJSON_Parse(text);
		e = cJSON_GetObjectItem(cJSON_GetObjectItem(idx, "weight_map"), name);
		if (cJSON_IsString(e))
			snprintf(file, sizeof file, "%s", e->valuestring);
		cJSON_Delete(idx);
		free(text);
	}
	snprintf(path, sizeof path, "%s/%s", dir, file);
	buf = test_file_read(path, &len);
	if (!buf || len < 8)
		goto done;
	hlen = 0;
	for (int i = 0; i < 8; i++)
		hlen |= (size_t)(uint8_t)buf[i] << (8 * i);
	if (hlen > len - 8)
		goto done;
	hdr = cJSON_ParseWithLength(buf + 8, hlen);
	e = cJSON_GetObjectItem(hdr, name);
	if (!e)
		goto done;
	dt = cJSON_GetObjectItem(e, "dtype");
	off = cJSON_GetObjectItem(e, "data_offsets");
	if (!cJSON_IsString(dt) || cJSON_GetArraySize(off) != 2)
		goto done;
	esz = !strcmp(dt->valuestring, "F32") ? 4 : 2;
	begin = 8 + hlen + (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
	end = 8 + hlen + (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
	CHECK(end <= len && end - begin == want * esz,
	      "%s: %s holds %zu bytes, want %zu", dir, name, end - begin,
	      want * esz);
	if (end > len || end - begin != want * esz)
		goto done;
	out = malloc(want * sizeof *out);
	for (size_t i = 0; out && i < want; i++) {
		const uint8_t *p = (const uint8_t *)buf + begin + i * esz;
		if (esz == 4) {
			float f;
			memcpy(&f, p, 4);
			out[i] = f;
		} else {
			uint16_t h = (uint16_t)(p[0] | p[1] << 8);
			if (!strcmp(dt->valuestring, "BF16")) {
				uint32_t u = (uint32_t)h << 16;
				float f;
				memcpy(&f, &u, 4);
				out[i] = f;
			} else {
				out[i] = half_to_double(h);
			}
		}
	}
done:
	cJSON_Delete(hdr);
	free(buf);
	return out;
}

/* ---------------------------------------- a double-precision reference -- */

typedef struct ref_layer {
	double *norm;   /* (d) */
	double *in_w;   /* (2 di, d) */
	double *in_b;   /* (2 di) or NULL */
	double *conv_w; /* (di, K) */
	double *conv_b; /* (di) or NULL */
	double *x_w;    /* (R + 2N, di) */
	double *dt_w;   /* (di, R) */
	double *dt_b;   /* (di) */
	double *A;      /* (di, N) = -exp(A_log) */
	double *D;      /* (di) */
	double *out_w;  /* (d, di) */
	double *out_b;  /* (d) or NULL */
} ref_layer;

typedef struct ref_model {
	int d, di, N, K, R, L, V;
	double eps;    /* RMSNorm epsilon */
	double *embed; /* (V, d) */
	ref_layer *layers;
} ref_model;

/* Recurrent state of the reference, all in double. */
typedef struct ref_state {
	double *h;      /* (L, di, N) */
	double *conv;   /* (L, di, K-1), oldest first */
	double *dt_sum; /* (L, di) */
} ref_state;

/* Inputs of each layer's scan while reading a sequence of T tokens. */
typedef struct ref_record {
	double *dt;  /* (L, T, di) */
	double *dbx; /* (L, T, di, N) dt * B[n] * x[c] */
} ref_record;

static void ref_model_free(ref_model *rm)
{
	if (rm->layers)
		for (int l = 0; l < rm->L; l++) {
			ref_layer *w = &rm->layers[l];
			double *all[] = { w->norm, w->in_w, w->in_b, w->conv_w,
					  w->conv_b, w->x_w, w->dt_w, w->dt_b,
					  w->A, w->D, w->out_w, w->out_b };
			for (size_t i = 0; i < sizeof all / sizeof *all; i++)
				free(all[i]);
		}
	free(rm->layers);
	free(rm->embed);
}

/* Reads every weight the state depends on (the final norm and lm_head do
 * not matter here). Dimensions come from the loaded config, every tensor's
 * size is checked against them. */
static int ref_model_load(const char *dir, const ssm_config *c, ref_model *rm)
{
	char n[160];
	int ok;

	memset(rm, 0, sizeof *rm);
	rm->d = c->d_model;
	rm->di = c->d_inner;
	rm->N = c->d_state;
	rm->K = c->d_conv;
	rm->R = c->dt_rank;
	rm->L = c->n_layer;
	rm->V = c->vocab_size;
	rm->eps = c->eps;
	size_t d = (size_t)rm->d, di = (size_t)rm->di, N = (size_t)rm->N;
	size_t K = (size_t)rm->K, R = (size_t)rm->R;

	rm->embed = st_read(dir, "backbone.embeddings.weight", (size_t)rm->V * d);
	rm->layers = calloc((size_t)rm->L, sizeof *rm->layers);
	ok = rm->embed && rm->layers;
	for (int l = 0; ok && l < rm->L; l++) {
		ref_layer *w = &rm->layers[l];
#define RD(field, suffix, count)                                               \
	(snprintf(n, sizeof n, "backbone.layers.%d.%s", l, suffix),            \
	 w->field = st_read(dir, n, count))
		RD(norm, "norm.weight", d);
		RD(in_w, "mixer.in_proj.weight", 2 * di * d);
		RD(in_b, "mixer.in_proj.bias", 2 * di);
		RD(conv_w, "mixer.conv1d.weight", di * K);
		RD(conv_b, "mixer.conv1d.bias", di);
		RD(x_w, "mixer.x_proj.weight", (R + 2 * N) * di);
		RD(dt_w, "mixer.dt_proj.weight", di * R);
		RD(dt_b, "mixer.dt_proj.bias", di);
		RD(A, "mixer.A_log", di * N);
		RD(D, "mixer.D", di);
		RD(out_w, "mixer.out_proj.weight", d * di);
		RD(out_b, "mixer.out_proj.bias", d);
#undef RD
		ok = w->norm && w->in_w && w->conv_w && w->x_w && w->dt_w &&
		     w->dt_b && w->A && w->D && w->out_w;
		for (size_t i = 0; ok && i < di * N; i++)
			w->A[i] = -exp(w->A[i]);
	}
	CHECK(ok, "%s: reference weights unreadable", dir);
	if (!ok)
		ref_model_free(rm);
	return ok;
}

static void ref_state_free(ref_state *s)
{
	free(s->h);
	free(s->conv);
	free(s->dt_sum);
}

static int ref_state_init(ref_state *s, const ref_model *rm)
{
	size_t rows = (size_t)rm->L * rm->di;

	s->h = calloc(rows * rm->N, sizeof *s->h);
	s->conv = calloc(rows * (rm->K - 1), sizeof *s->conv);
	s->dt_sum = calloc(rows, sizeof *s->dt_sum);
	return s->h && s->conv && s->dt_sum;
}

static void ref_state_copy(ref_state *dst, const ref_state *src,
			   const ref_model *rm)
{
	size_t rows = (size_t)rm->L * rm->di;

	memcpy(dst->h, src->h, rows * rm->N * sizeof *dst->h);
	memcpy(dst->conv, src->conv, rows * (rm->K - 1) * sizeof *dst->conv);
	memcpy(dst->dt_sum, src->dt_sum, rows * sizeof *dst->dt_sum);
}

/* out (n_out) = W (n_out, n_in) @ x + b */
static void ref_matvec(double *out, const double *W, const double *b,
		       const double *x, int n_in, int n_out)
{
	for (int o = 0; o < n_out; o++) {
		double s = b ? b[o] : 0.0;
		for (int k = 0; k < n_in; k++)
			s += W[(size_t)o * n_in + k] * x[k];
		out[o] = s;
	}
}

static double ref_silu(double x)
{
	return x / (1.0 + exp(-x));
}

/* Hugging Face's MambaMixer slow path and MambaBlock, token by token: reads
 * tokens[0..T) into s, recording each layer's scan inputs into rec (or not,
 * when rec is NULL). */
static int ref_forward(const ref_model *rm, ref_state *s, const int32_t *tok,
		       size_t T, ref_record *rec)
{
	int d = rm->d, di = rm->di, N = rm->N, K = rm->K, R = rm->R;
	double *x = malloc((size_t)d * sizeof *x);
	double *u = malloc((size_t)d * sizeof *u);
	double *o = malloc((size_t)d * sizeof *o);
	double *xz = malloc((size_t)2 * di * sizeof *xz);
	double *xc = malloc((size_t)di * sizeof *xc);
	double *xdbl = malloc((size_t)(R + 2 * N) * sizeof *xdbl);
	double *y = malloc((size_t)di * sizeof *y);
	int ok = x && u && o && xz && xc && xdbl && y;

	for (size_t t = 0; ok && t < T; t++) {
		memcpy(x, rm->embed + (size_t)tok[t] * d, (size_t)d * sizeof *x);
		for (int l = 0; l < rm->L; l++) {
			const ref_layer *w = &rm->layers[l];
			double ss = 0;
			for (int i = 0; i < d; i++)
				ss += x[i] * x[i];
			double r = 1.0 / sqrt(ss / d + rm->eps);
			for (int i = 0; i < d; i++)
				u[i] = x[i] * r * w->norm[i];
			ref_matvec(xz, w->in_w, w->in_b, u, d, 2 * di);
			/* causal depthwise conv over (window, new input), SiLU */
			for (int c = 0; c < di; c++) {
				double *win = s->conv + ((size_t)l * di + c) * (K - 1);
				const double *cw = w->conv_w + (size_t)c * K;
				double acc = w->conv_b ? w->conv_b[c] : 0.0;
				for (int k = 0; k < K - 1; k++)
					acc += cw[k] * win[k];
				acc += cw[K - 1] * xz[c];
				memmove(win, win + 1, (size_t)(K - 2) * sizeof *win);
				win[K - 2] = xz[c];
				xc[c] = ref_silu(acc);
			}
			ref_matvec(xdbl, w->x_w, NULL, xc, di, R + 2 * N);
			const double *B = xdbl + R, *C = xdbl + R + N;
			for (int c = 0; c < di; c++) {
				double v = w->dt_b[c];
				for (int k = 0; k < R; k++)
					v += w->dt_w[(size_t)c * R + k] * xdbl[k];
				/* torch softplus, threshold 20 */
				double dt = v > 20.0 ? v : log1p(exp(v));
				double *h = s->h + ((size_t)l * di + c) * N;
				double acc = 0;
				for (int n = 0; n < N; n++) {
					double dbx = dt * B[n] * xc[c];
					h[n] = exp(dt * w->A[(size_t)c * N + n]) * h[n] + dbx;
					acc += h[n] * C[n];
					if (rec)
						rec->dbx[(((size_t)l * T + t) * di + c) * N + n] = dbx;
				}
				s->dt_sum[(size_t)l * di + c] += dt;
				if (rec)
					rec->dt[((size_t)l * T + t) * di + c] = dt;
				y[c] = (acc + w->D[c] * xc[c]) * ref_silu(xz[di + c]);
			}
			ref_matvec(o, w->out_w, w->out_b, y, di, d);
			for (int i = 0; i < d; i++)
				x[i] += o[i];
		}
	}
	free(x);
	free(u);
	free(o);
	free(xz);
	free(xc);
	free(xdbl);
	free(y);
	return ok;
}

/* ----------------------------------------------------------- interpolate -- */

static void random_fill(ssm_state *st)
{
	float *arrs[] = { st->ssm, st->conv, st->hidden, st->dt_sum };
	size_t lens[] = { n_ssm(st), n_conv(st), st->d_model, n_rows(st) };
	/* magnitudes from 1e-3 to 1e3, either sign, so the relative tolerance
	 * is exercised across scales */
	double scale = pow(10.0, 6.0 * rng_unit() - 3.0);

	for (int a = 0; a < 4; a++)
		for (size_t i = 0; i < lens[a]; i++)
			arrs[a][i] = (float)((2.0 * rng_unit() - 1.0) * scale);
	st->n_tokens = test_splitmix64(&rng_s) % 100000;
}

/* out against sum_j w_j x_j / W in double, element by element. */
static void check_interp(const ssm_state *const *src, const double *w,
			 size_t n, const ssm_state *out, const char *what)
{
	const ssm_state *s0 = src[0];
	size_t lens[] = { n_ssm(s0), n_conv(s0), s0->d_model, n_rows(s0) };
	static const char *names[] = { "ssm", "conv", "hidden", "dt_sum" };
	double W = 0, tok = 0;
	size_t bad = 0;

	for (size_t j = 0; j < n; j++)
		W += w[j];
	for (int a = 0; a < 4; a++) {
		for (size_t i = 0; i < lens[a]; i++) {
			double ref = 0, scale = 0, got;
			for (size_t j = 0; j < n; j++) {
				const float *arr = a == 0 ? src[j]->ssm
						   : a == 1 ? src[j]->conv
						   : a == 2 ? src[j]->hidden
							    : src[j]->dt_sum;
				ref += w[j] * arr[i];
				scale += w[j] * fabs(arr[i]);
			}
			ref /= W;
			scale /= W;
			got = a == 0 ? out->ssm[i] : a == 1 ? out->conv[i]
				: a == 2 ? out->hidden[i] : out->dt_sum[i];
			/* tolerance: one f32 rounding of the scale, see top */
			if (!(fabs(got - ref) <= 1e-6 * scale)) {
				if (!bad++)
					fprintf(stderr, "%s: %s[%zu] = %.9g, want "
						"%.9g\n", what, names[a], i, got,
						ref);
			}
		}
	}
	CHECK(bad == 0, "%s: %zu values off the weighted sum by > 1e-6 of "
	      "their scale", what, bad);
	for (size_t j = 0; j < n; j++)
		tok += w[j] * (double)src[j]->n_tokens;
	tok /= W;
	/* round to nearest: within half a token of the exact mean (plus the
	 * double rounding of a sum of numbers below 1e5) */
	CHECK(fabs((double)out->n_tokens - tok) <= 0.5 + 1e-6,
	      "%s: n_tokens %llu, exact weighted mean %.6f", what,
	      (unsigned long long)out->n_tokens, tok);
	CHECK(!memcmp(out->fingerprint, s0->fingerprint, SSM_FINGERPRINT_LEN),
	      "%s: fingerprint not the sources'", what);
}

static void interpolate_random(void)
{
	for (int round = 0; round < 40; round++) {
		uint32_t L = 1 + rng_below(3), di = 1 + rng_below(9);
		uint32_t N = 1 + rng_below(5), K = 2 + rng_below(4);
		uint32_t d = 1 + rng_below(7);
		size_t n = 1 + rng_below(5);
		ssm_state *src[5] = { 0 }, *out = NULL, *alias = NULL;
		double w[5];
		uint8_t fp[SSM_FINGERPRINT_LEN];
		int ok = 1;
		char what[64];

		for (int i = 0; i < SSM_FINGERPRINT_LEN; i++)
			fp[i] = (uint8_t)test_splitmix64(&rng_s);
		for (size_t j = 0; j < n; j++) {
			ok &= !ssm_state_alloc(SSM_ARCH_MAMBA1, L, di, N, K, d,
					       &src[j]);
			if (!src[j])
				break;
			random_fill(src[j]);
			memcpy(src[j]->fingerprint, fp, sizeof fp);
			/* some zero weights, some large; never all zero */
			w[j] = rng_below(4) == 0 ? 0.0 : rng_unit() * 10.0;
		}
		w[rng_below((uint32_t)n)] += 0.5;
		ok &= !ssm_state_alloc(SSM_ARCH_MAMBA1, L, di, N, K, d, &out);
		ok &= !ssm_state_alloc(SSM_ARCH_MAMBA1, L, di, N, K, d, &alias);
		CHECK(ok, "alloc");
		if (!ok)
			goto next;
		snprintf(what, sizeof what, "interpolate round %d (n %zu)",
			 round, n);
		CHECK_RC(ssm_merge_interpolate((const ssm_state *const *)src, w,
					       n, out), SSMD_OK);
		check_interp((const ssm_state *const *)src, w, n, out, what);

		/* NULL weights: equal weights */
		double eq[5] = { 1, 1, 1, 1, 1 };
		CHECK_RC(ssm_merge_interpolate((const ssm_state *const *)src,
					       NULL, n, out), SSMD_OK);
		snprintf(what, sizeof what, "interpolate round %d, NULL "
			 "weights", round);
		check_interp((const ssm_state *const *)src, eq, n, out, what);

		/* out aliasing src[0] gives the same bits as a separate out */
		CHECK_RC(ssm_merge_interpolate((const ssm_state *const *)src, w,
					       n, out), SSMD_OK);
		CHECK_RC(ssm_state_copy(alias, src[0]), SSMD_OK);
		{
			ssm_state *asrc[5];
			size_t la, lb;
			memcpy(asrc, src, sizeof asrc);
			asrc[0] = alias;
			CHECK_RC(ssm_merge_interpolate(
					 (const ssm_state *const *)asrc, w, n,
					 alias), SSMD_OK);
			uint8_t *ea = encode(alias, &la), *eb = encode(out, &lb);
			CHECK(ea && eb && la == lb && !memcmp(ea, eb, la),
			      "round %d: out aliasing a source differs", round);
			free(ea);
			free(eb);
		}

		/* one-hot weights: exactly that source (1 * x + 0 * y = x) */
		{
			size_t k = rng_below((uint32_t)n), le;
			double oh[5] = { 0 };
			oh[k] = 2.5; /* relative: normalised to 1 */
			CHECK_RC(ssm_merge_interpolate(
					 (const ssm_state *const *)src, oh, n,
					 out), SSMD_OK);
			uint8_t *e = encode(src[k], &le);
			CHECK(e && same_bytes(out, e, le),
			      "round %d: one-hot weight is not a copy of source "
			      "%zu", round, k);
			free(e);
		}
next:
		for (size_t j = 0; j < n; j++)
			ssm_state_free(src[j]);
		ssm_state_free(out);
		ssm_state_free(alias);
	}
}

/* -------------------------------------------------------- invalid input -- */

static void interpolate_invalid(void)
{
	ssm_state *a = NULL, *b = NULL, *other = NULL, *arch = NULL, *out = NULL;
	ssm_state *bad_out = NULL;
	uint8_t *before = NULL, *bad_before = NULL;
	size_t len = 0, bad_len = 0;

	if (ssm_state_alloc(SSM_ARCH_MAMBA1, 2, 3, 4, 4, 5, &a) ||
	    ssm_state_alloc(SSM_ARCH_MAMBA1, 2, 3, 4, 4, 5, &b) ||
	    ssm_state_alloc(SSM_ARCH_MAMBA1, 2, 3, 5, 4, 5, &other) ||
	    ssm_state_alloc(SSM_ARCH_MAMBA1 + 1, 2, 3, 4, 4, 5, &arch) ||
	    ssm_state_alloc(SSM_ARCH_MAMBA1, 2, 3, 4, 4, 5, &out) ||
	    ssm_state_alloc(SSM_ARCH_MAMBA1, 2, 3, 4, 3, 5, &bad_out)) {
		CHECK(0, "alloc");
		goto done;
	}
	random_fill(a);
	random_fill(b);
	random_fill(other);
	random_fill(arch);
	random_fill(out);
	random_fill(bad_out);
	before = encode(out, &len);
	bad_before = encode(bad_out, &bad_len);

	const ssm_state *ab[] = { a, b }, *a_null[] = { a, NULL };
	const ssm_state *shape[] = { a, other }, *archs[] = { a, arch };
	double ok_w[] = { 1, 1 };
	struct {
		const char *what;
		const ssm_state *const *src;
		double w[2];
		int use_w;
		size_t n;
		ssm_state *out;
		int want;
	} cases[] = {
		{ "n = 0", ab, { 1, 1 }, 1, 0, out, SSMD_EINVAL },
		{ "NULL source", a_null, { 1, 1 }, 1, 2, out, SSMD_EINVAL },
		{ "NULL sources", NULL, { 1, 1 }, 1, 2, out, SSMD_EINVAL },
		{ "NaN weight", ab, { NAN, 1 }, 1, 2, out, SSMD_EINVAL },
		{ "negative weight", ab, { -0.25, 1.25 }, 1, 2, out, SSMD_EINVAL },
		{ "infinite weight", ab, { INFINITY, 1 }, 1, 2, out, SSMD_EINVAL },
		{ "zero weights", ab, { 0, 0 }, 1, 2, out, SSMD_EINVAL },
		{ "sum overflows", ab, { DBL_MAX, DBL_MAX }, 1, 2, out,
		  SSMD_EINVAL },
		{ "other shape", shape, { 1, 1 }, 0, 2, out, SSMD_EMODEL },
		{ "other arch", archs, { 1, 1 }, 0, 2, out, SSMD_EMODEL },
		{ "out of another shape", ab, { 1, 1 }, 1, 2, bad_out,
		  SSMD_EINVAL },
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		int rc = ssm_merge_interpolate(cases[i].src,
					       cases[i].use_w ? cases[i].w : NULL,
					       cases[i].n, cases[i].out);
		CHECK(rc == cases[i].want, "interpolate, %s: rc %d (%s), want %d",
		      cases[i].what, rc, ssmd_errmsg(), cases[i].want);
		/* the state given as out, whichever it is, is left as it was */
		CHECK(cases[i].out == bad_out ? same_bytes(bad_out, bad_before, bad_len)
					      : same_bytes(out, before, len),
		      "interpolate, %s: out changed", cases[i].what);
	}
	/* the same sources with another fingerprint in one */
	b->fingerprint[7] ^= 1;
	CHECK_RC(ssm_merge_interpolate(ab, ok_w, 2, out), SSMD_EMODEL);
	CHECK(same_bytes(out, before, len), "interpolate, fingerprint: out "
	      "changed");
	b->fingerprint[7] ^= 1;
	CHECK_RC(ssm_merge_interpolate(ab, ok_w, 2, out), SSMD_OK);
done:
	free(before);
	free(bad_before);
	ssm_state_free(a);
	ssm_state_free(b);
	ssm_state_free(other);
	ssm_state_free(arch);
	ssm_state_free(out);
	ssm_state_free(bad_out);
}

static void compose_invalid(const ssm_model *m, const ssm_state *good)
{
	ssm_state *a = NULL, *b = NULL, *out = NULL, *foreign = NULL;
	uint8_t *before = NULL;
	size_t len = 0;
	const ssm_config *c = ssm_model_config(m);

	if (ssm_model_state_alloc(m, &a) || ssm_model_state_alloc(m, &b) ||
	    ssm_model_state_alloc(m, &out) ||
	    ssm_state_alloc(SSM_ARCH_MAMBA1, (uint32_t)c->n_layer,
			    (uint32_t)c->d_inner + 1, (uint32_t)c->d_state,
			    (uint32_t)c->d_conv, (uint32_t)c->d_model, &foreign)) {
		CHECK(0, "alloc");
		goto done;
	}
	CHECK_RC(ssm_state_copy(a, good), SSMD_OK);
	CHECK_RC(ssm_state_copy(b, good), SSMD_OK);
	CHECK_RC(ssm_state_copy(out, good), SSMD_OK);
	out->n_tokens = 12345;
	before = encode(out, &len);
	memcpy(foreign->fingerprint, good->fingerprint, SSM_FINGERPRINT_LEN);

#define EXPECT(call, want, what)                                            \
	do {                                                                \
		CHECK_RC(call, want);                                       \
		CHECK(same_bytes(out, before, len), "compose, %s: out "     \
		      "changed", what);                                     \
	} while (0)
	EXPECT(ssm_merge_compose(NULL, a, b, out), SSMD_EINVAL, "NULL model");
	EXPECT(ssm_merge_compose(m, a, NULL, out), SSMD_EINVAL, "NULL b");
	EXPECT(ssm_merge_compose(m, foreign, b, out), SSMD_EMODEL,
	       "a of another shape");
	EXPECT(ssm_merge_compose(m, a, foreign, out), SSMD_EMODEL,
	       "b of another shape");
	EXPECT(ssm_merge_compose(m, a, b, foreign), SSMD_EINVAL,
	       "out of another shape");
	b->fingerprint[0] ^= 0x80;
	EXPECT(ssm_merge_compose(m, a, b, out), SSMD_EMODEL,
	       "b of another fingerprint");
	b->fingerprint[0] ^= 0x80;
	a->fingerprint[15] ^= 1;
	EXPECT(ssm_merge_compose(m, a, b, out), SSMD_EMODEL,
	       "a of another fingerprint");
	a->fingerprint[15] ^= 1;
	{
		size_t i = n_rows(b) - 1;
		float keep = b->dt_sum[i];
		float bad[] = { -1.0f, NAN, INFINITY };
		for (int k = 0; k < 3; k++) {
			b->dt_sum[i] = bad[k];
			EXPECT(ssm_merge_compose(m, a, b, out), SSMD_EINVAL,
			       "b with a bad dt_sum");
		}
		b->dt_sum[i] = keep;
	}
	a->n_tokens = UINT64_MAX;
	b->n_tokens = 1;
	EXPECT(ssm_merge_compose(m, a, b, out), SSMD_ERANGE,
	       "n_tokens overflow");
	b->n_tokens = 0;
	CHECK_RC(ssm_merge_compose(m, a, b, out), SSMD_OK);
#undef EXPECT
done:
	free(before);
	ssm_state_free(a);
	ssm_state_free(b);
	ssm_state_free(out);
	ssm_state_free(foreign);
}

/* -------------------------------------------------------------- compose -- */

static ssm_backend *open_cpu(const ssm_model *m, int n_slots)
{
	ssm_backend_opts o;
	ssm_backend *b = NULL;

	ssm_backend_opts_init(&o);
	o.kind = SSM_BACKEND_CPU;
	o.n_slots = n_slots;
	o.n_threads = 2;
	if (ssm_backend_open(m, &o, &b))
		return NULL;
	return b;
}

/* Prefills toks into slot (from zero) and reads the state into st. */
static int run_tokens(ssm_backend *be, int slot, const int32_t *toks, size_t n,
		      ssm_state *st)
{
	ssm_prefill_args pa = { .tokens = toks, .n_tokens = n };

	return ssm_slot_reset(be, slot) || ssm_prefill(be, slot, &pa) ||
	       ssm_slot_get(be, slot, st);
}

/* compose(A, B) of engine states against the formula, A_log read here. */
static void compose_formula(const char *name, const ssm_model *m,
			    const ref_model *rm, const ssm_state *A,
			    const ssm_state *B, const ssm_state *D)
{
	ssm_state *C = NULL, *Z = NULL, *Zc = NULL, *L = NULL, *R = NULL;
	size_t di = (size_t)rm->di, N = (size_t)rm->N, bad = 0, len;
	uint8_t *enc;

	if (ssm_model_state_alloc(m, &C) || ssm_model_state_alloc(m, &Z) ||
	    ssm_model_state_alloc(m, &Zc) || ssm_model_state_alloc(m, &L) ||
	    ssm_model_state_alloc(m, &R)) {
		CHECK(0, "alloc");
		goto done;
	}
	CHECK_RC(ssm_merge_compose(m, A, B, C), SSMD_OK);
	for (int l = 0; l < rm->L; l++)
		for (size_t c = 0; c < di; c++) {
			size_t r = (size_t)l * di + c;
			for (size_t n = 0; n < N; n++) {
				size_t i = r * N + n;
				double decay = exp(rm->layers[l].A[c * N + n] *
						   (double)B->dt_sum[r]);
				double ta = decay * A->ssm[i], tb = B->ssm[i];
				/* one f32 rounding, see top */
				if (!(fabs(C->ssm[i] - (ta + tb)) <=
				      1e-6 * (fabs(ta) + fabs(tb)))) {
					if (!bad++)
						fprintf(stderr, "%s: ssm[%zu] = "
							"%.9g, want %.9g\n",
							name, i, C->ssm[i], ta + tb);
				}
			}
			double ds = (double)A->dt_sum[r] + B->dt_sum[r];
			if (!(fabs(C->dt_sum[r] - ds) <= 1e-6 * ds))
				bad++;
		}
	CHECK(bad == 0, "%s: compose off the formula at %zu values", name, bad);
	CHECK(!memcmp(C->conv, B->conv, n_conv(B) * 4) &&
	      !memcmp(C->hidden, B->hidden, (size_t)B->d_model * 4),
	      "%s: compose's conv and hidden are not B's", name);
	CHECK(C->n_tokens == A->n_tokens + B->n_tokens, "%s: n_tokens %llu",
	      name, (unsigned long long)C->n_tokens);
	CHECK(!memcmp(C->fingerprint, ssm_model_fingerprint(m),
		      SSM_FINGERPRINT_LEN), "%s: compose fingerprint", name);

	/* Onto the zero state: exp(.) * 0 + h_B = h_B, 0 + dt_B = dt_B, exact */
	CHECK_RC(ssm_merge_compose(m, Z, B, Zc), SSMD_OK);
	enc = encode(B, &len);
	CHECK(enc && same_bytes(Zc, enc, len),
	      "%s: compose(zero, B) is not B bit for bit", name);
	free(enc);

	/* out aliasing a: the same bits as a separate out */
	CHECK_RC(ssm_state_copy(Zc, A), SSMD_OK);
	CHECK_RC(ssm_merge_compose(m, Zc, B, Zc), SSMD_OK);
	enc = encode(C, &len);
	CHECK(enc && same_bytes(Zc, enc, len),
	      "%s: compose with out aliasing a differs", name);
	free(enc);

	/* associative: (A then B) then D = A then (B then D). Each side rounds
	 * to f32 twice and the decay of h_A comes from dt sums rounded in a
	 * different order (relative 6e-8 each): 1e-6 of the array's scale. */
	CHECK_RC(ssm_merge_compose(m, A, B, L), SSMD_OK);
	CHECK_RC(ssm_merge_compose(m, L, D, L), SSMD_OK);
	CHECK_RC(ssm_merge_compose(m, B, D, R), SSMD_OK);
	CHECK_RC(ssm_merge_compose(m, A, R, R), SSMD_OK);
	{
		double e = rel_err_f(L->ssm, R->ssm, n_ssm(R));
		CHECK(e <= 1e-6, "%s: compose not associative, ssm rel err "
		      "%.3g > 1e-6", name, e);
		e = rel_err_f(L->dt_sum, R->dt_sum, n_rows(R));
		CHECK(e <= 1e-6, "%s: compose not associative, dt_sum rel err "
		      "%.3g > 1e-6", name, e);
		CHECK(L->n_tokens == R->n_tokens, "%s: n_tokens %llu vs %llu",
		      name, (unsigned long long)L->n_tokens,
		      (unsigned long long)R->n_tokens);
	}
done:
	ssm_state_free(C);
	ssm_state_free(Z);
	ssm_state_free(Zc);
	ssm_state_free(L);
	ssm_state_free(R);
}

/* The recurrence identity, and compose exact on the linear part. */
static void compose_linear(const char *name, const ssm_model *m,
			   const ref_model *rm, const int32_t *t1, size_t n1,
			   const int32_t *t2, size_t n2, const ssm_state *eng_a)
{
	size_t L = (size_t)rm->L, di = (size_t)rm->di, N = (size_t)rm->N;
	size_t rows = L * di;
	ref_state sa = { 0 }, st = { 0 };
	ref_record rec = { 0 };
	double *hb = calloc(rows * N, sizeof *hb);
	double *sdt = calloc(rows, sizeof *sdt);
	ssm_state *A = NULL, *B = NULL, *C = NULL;
	double worst_id = 0, scale;
	size_t bad = 0;

	rec.dt = calloc(L * n2 * di, sizeof *rec.dt);
	rec.dbx = calloc(L * n2 * di * N, sizeof *rec.dbx);
	if (!hb || !sdt || !rec.dt || !rec.dbx || !ref_state_init(&sa, rm) ||
	    !ref_state_init(&st, rm) || ssm_model_state_alloc(m, &A) ||
	    ssm_model_state_alloc(m, &B) || ssm_model_state_alloc(m, &C)) {
		CHECK(0, "alloc");
		goto done;
	}
	/* T1 from zero; then T2 in its context, recording the scan inputs */
	CHECK(ref_forward(rm, &sa, t1, n1, NULL), "ref forward");
	ref_state_copy(&st, &sa, rm);
	CHECK(ref_forward(rm, &st, t2, n2, &rec), "ref forward");

	/* The reference itself against the engine's state after T1 */
	{
		double e = rel_err_d(eng_a->ssm, sa.h, rows * N);
		CHECK(e <= 1e-5, "%s: engine ssm vs double reference rel err "
		      "%.3g > 1e-5", name, e);
		e = rel_err_d(eng_a->dt_sum, sa.dt_sum, rows);
		CHECK(e <= 1e-5, "%s: engine dt_sum vs double reference rel "
		      "err %.3g > 1e-5", name, e);
		e = rel_err_d(eng_a->conv, sa.conv, rows * (rm->K - 1));
		CHECK(e <= 1e-5, "%s: engine conv vs double reference rel err "
		      "%.3g > 1e-5", name, e);
	}

	/* h_B: the recurrence from zero over the recorded inputs */
	for (size_t l = 0; l < L; l++)
		for (size_t t = 0; t < n2; t++)
			for (size_t c = 0; c < di; c++) {
				size_t r = l * di + c;
				double dt = rec.dt[(l * n2 + t) * di + c];
				sdt[r] += dt;
				for (size_t n = 0; n < N; n++)
					hb[r * N + n] =
						exp(dt * rm->layers[l].A[c * N + n]) *
							hb[r * N + n] +
						rec.dbx[((l * n2 + t) * di + c) * N + n];
			}
	/* identity: h_true = exp(A sum dt) h_A + h_B, in double */
	scale = 0;
	for (size_t i = 0; i < rows * N; i++)
		scale = fmax(scale, fabs(sa.h[i]) + fabs(hb[i]));
	for (size_t r = 0; r < rows; r++) {
		const double *Ar = rm->layers[r / di].A + (r % di) * N;
		for (size_t n = 0; n < N; n++) {
			size_t i = r * N + n;
			double v = exp(Ar[n] * sdt[r]) * sa.h[i] + hb[i];
			worst_id = fmax(worst_id, fabs(v - st.h[i]));
		}
	}
	/* double rounding over <= 64 steps of a few operations each */
	CHECK(worst_id <= 1e-12 * scale, "%s: recurrence identity off by %.3g "
	      "(scale %.3g)", name, worst_id, scale);

	/* compose on those parts, as f32 states, reproduces h_true */
	for (size_t i = 0; i < rows * N; i++) {
		A->ssm[i] = (float)sa.h[i];
		B->ssm[i] = (float)hb[i];
	}
	for (size_t r = 0; r < rows; r++) {
		A->dt_sum[r] = (float)sa.dt_sum[r];
		B->dt_sum[r] = (float)sdt[r];
	}
	A->n_tokens = n1;
	B->n_tokens = n2;
	CHECK_RC(ssm_merge_compose(m, A, B, C), SSMD_OK);
	for (size_t i = 0; i < rows * N; i++)
		/* f32 inputs and output, see top */
		if (!(fabs(C->ssm[i] - st.h[i]) <=
		      1e-6 * (fabs(sa.h[i]) + fabs(hb[i]))))
			if (!bad++)
				fprintf(stderr, "%s: linear compose ssm[%zu] = "
					"%.9g, true %.9g\n", name, i, C->ssm[i],
					st.h[i]);
	CHECK(bad == 0, "%s: compose of in-context inputs misses the true "
	      "state at %zu values", name, bad);
	printf("%-14s identity err %.1e (scale %.1e); linear compose exact\n",
	       name, worst_id, scale);
done:
	ref_state_free(&sa);
	ref_state_free(&st);
	free(rec.dt);
	free(rec.dbx);
	free(hb);
	free(sdt);
	ssm_state_free(A);
	ssm_state_free(B);
	ssm_state_free(C);
}

static void compose_model(const char *dir, const char *name)
{
	ssm_model *m = NULL;
	ssm_backend *be = NULL;
	ssm_state *A = NULL, *B = NULL, *T = NULL, *C = NULL;
	ref_model rm;
	int32_t *toks = NULL;
	size_t n1, n2;
	const ssm_config *c;

	CHECK_RC(ssm_model_load(dir, &m), SSMD_OK);
	if (!m)
		return;
	c = ssm_model_config(m);
	if (!ref_model_load(dir, c, &rm)) {
		ssm_model_free(m);
		return;
	}
	be = open_cpu(m, 1);
	n1 = 1 + rng_below(24);
	n2 = 1 + rng_below(24);
	toks = malloc((n1 + n2) * sizeof *toks);
	if (!be || !toks || ssm_model_state_alloc(m, &A) ||
	    ssm_model_state_alloc(m, &B) || ssm_model_state_alloc(m, &T) ||
	    ssm_model_state_alloc(m, &C)) {
		CHECK(0, "%s: backend or alloc", name);
		goto done;
	}
	for (size_t i = 0; i < n1 + n2; i++)
		toks[i] = (int32_t)rng_below((uint32_t)c->vocab_size);
	CHECK(!run_tokens(be, 0, toks, n1, A) &&
	      !run_tokens(be, 0, toks + n1, n2, B) &&
	      !run_tokens(be, 0, toks, n1 + n2, T), "%s: prefill: %s", name,
	      ssmd_errmsg());

	compose_formula(name, m, &rm, A, B, T);
	compose_linear(name, m, &rm, toks, n1, toks + n1, n2, A);
	compose_invalid(m, A);

	/* measured, not asserted: compose vs really reading T1 then T2, and
	 * B alone (forgetting T1) for comparison */
	CHECK_RC(ssm_merge_compose(m, A, B, C), SSMD_OK);
	printf("%-14s T1 %2zu + T2 %2zu tokens: ssm rel err vs T1+T2: compose "
	       "%.3f, B alone %.3f; hidden: %.3f; dt_sum: compose %.3f\n",
	       name, n1, n2, rel_err_f(C->ssm, T->ssm, n_ssm(T)),
	       rel_err_f(B->ssm, T->ssm, n_ssm(T)),
	       rel_err_f(C->hidden, T->hidden, T->d_model),
	       rel_err_f(C->dt_sum, T->dt_sum, n_rows(T)));
done:
	free(toks);
	ssm_state_free(A);
	ssm_state_free(B);
	ssm_state_free(T);
	ssm_state_free(C);
	ssm_backend_close(be);
	ref_model_free(&rm);
	ssm_model_free(m);
}

int main(void)
{
	const char *shared = getenv("SSMD_SHARED_FIXTURES");
	const char *local = getenv("SSMD_TEST_FIXTURES");
	const char *seed_env = getenv("SSMD_TEST_SEED");
	char path[4400];
	struct dirent **names = NULL;
	int n_names;

	if (!local) {
		fprintf(stderr, "run through meson test (needs SSMD_* env)\n");
		return 1;
	}
	rng_s = seed_env ? strtoull(seed_env, NULL, 0)
			 : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	printf("seed %llu (SSMD_TEST_SEED replays it)\n",
	       (unsigned long long)rng_s);

	interpolate_random();
	interpolate_invalid();

	snprintf(path, sizeof path, "%s/tiny-mamba", shared ? shared : ".");
	if (shared && access(path, F_OK) == 0)
		compose_model(path, "tiny-mamba");
	else
		SKIP("no shared fixture %s: compose on the local fixtures only", path);
	n_names = scandir(local, &names, NULL, alphasort);
	for (int i = 0; i < n_names; i++) {
		snprintf(path, sizeof path, "%s/%s/config.json", local,
			 names[i]->d_name);
		if (names[i]->d_name[0] != '.' && access(path, F_OK) == 0) {
			snprintf(path, sizeof path, "%s/%s", local,
				 names[i]->d_name);
			compose_model(path, names[i]->d_name);
		}
		free(names[i]);
	}
	free(names);
	CHECK(n_names > 0, "no fixtures under %s", local);
	return check_summary("merge");
}
