/*
 * bench_forward — prefill and batched decode throughput of a backend.
 *
 *   bench_forward --model DIR [--backend auto|cpu|cuda] [--threads N]
 *                 [--prefill 512] [--steps 32] [--batches 1,4,16]
 *
 * Prints one table: model shape, weight dtype, backend, then prefill tokens/s
 * (last logits only) and decode steps/s and tokens/s per batch size. Inputs
 * are pseudo-random token IDs, never zeros; the median of 3 runs is shown.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ssm.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median3(double v[3])
{
	qsort(v, 3, sizeof *v, cmp_d);
	return v[1];
}

int main(int argc, char **argv)
{
	const char *model_dir = NULL, *batches = "1,4,16";
	int n_prefill = 512, steps = 32, max_batch = 0;
	ssm_backend_opts opts;
	ssm_model *m = NULL;
	ssm_backend *b = NULL;
	int bs[16], n_bs = 0, rc = 1;
	int32_t *tok = NULL;
	float *logits = NULL;

	ssm_backend_opts_init(&opts);
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *a = argv[i], *v = argv[i + 1];
		if (!strcmp(a, "--model"))
			model_dir = v;
		else if (!strcmp(a, "--threads"))
			opts.n_threads = atoi(v);
		else if (!strcmp(a, "--prefill"))
			n_prefill = atoi(v);
		else if (!strcmp(a, "--steps"))
			steps = atoi(v);
		else if (!strcmp(a, "--batches"))
			batches = v;
		else if (!strcmp(a, "--backend"))
			opts.kind = !strcmp(v, "cpu") ? SSM_BACKEND_CPU :
				    !strcmp(v, "cuda") ? SSM_BACKEND_CUDA :
				    SSM_BACKEND_AUTO;
		else {
			fprintf(stderr, "bench_forward: unknown argument %s\n", a);
			return 2;
		}
	}
	if (!model_dir || n_prefill < 1 || steps < 1) {
		fprintf(stderr, "usage: bench_forward --model DIR [--backend "
			"auto|cpu|cuda] [--threads N] [--prefill 512] "
			"[--steps 32] [--batches 1,4,16]\n");
		return 2;
	}
	for (const char *p = batches; *p && n_bs < 16;) {
		bs[n_bs] = atoi(p);
		if (bs[n_bs] < 1) {
			fprintf(stderr, "bench_forward: bad --batches\n");
			return 2;
		}
		if (bs[n_bs] > max_batch)
			max_batch = bs[n_bs];
		n_bs++;
		p = strchr(p, ',');
		if (!p)
			break;
		p++;
	}
	opts.n_slots = max_batch;
	if (ssm_model_load(model_dir, &m) || ssm_backend_open(m, &opts, &b)) {
		fprintf(stderr, "bench_forward: %s\n", ssmd_errmsg());
		goto done;
	}
	const ssm_config *c = ssm_model_config(m);
	int V = c->vocab_size;
	size_t n_tok = (size_t)n_prefill + (size_t)max_batch * steps * 4;
	tok = malloc(n_tok * sizeof *tok);
	logits = malloc((size_t)max_batch * V * sizeof *logits);
	if (!tok || !logits)
		goto done;
	uint32_t s = 12345;
	for (size_t i = 0; i < n_tok; i++) {
		s = s * 1664525u + 1013904223u;
		tok[i] = (int32_t)((s >> 8) % (uint32_t)V);
	}
	static const char *dt[] = { "f32", "f16", "bf16" };
	printf("model %s: d_model %d, layers %d, d_inner %d, d_state %d, vocab %d, "
	       "weights %s, backend %s\n", model_dir, c->d_model, c->n_layer,
	       c->d_inner, c->d_state, V, dt[c->dtype], ssm_backend_name(b));
	printf("%-10s %6s %12s %12s\n", "phase", "batch", "steps/s", "tokens/s");

	double t[3];
	for (int r = 0; r < 3; r++) {
		ssm_prefill_args pa = { .tokens = tok, .n_tokens = (size_t)n_prefill,
					.last_logits = logits };
		ssm_slot_reset(b, 0);
		double t0 = now();
		if (ssm_prefill(b, 0, &pa)) {
			fprintf(stderr, "bench_forward: %s\n", ssmd_errmsg());
			goto done;
		}
		t[r] = now() - t0;
	}
	double med = median3(t);
	printf("%-10s %6d %12.2f %12.1f\n", "prefill", 1, 1.0 / med,
	       n_prefill / med);

	for (int k = 0; k < n_bs; k++) {
		int n = bs[k], slots[1024];
		for (int i = 0; i < n; i++)
			slots[i] = i;
		for (int r = 0; r < 3; r++) {
			double t0 = now();
			for (int st = 0; st < steps; st++)
				if (ssm_decode(b, slots, tok + (size_t)st * n, n,
					       logits)) {
					fprintf(stderr, "bench_forward: %s\n",
						ssmd_errmsg());
					goto done;
				}
			t[r] = now() - t0;
		}
		med = median3(t);
		printf("%-10s %6d %12.2f %12.1f\n", "decode", n, steps / med,
		       (double)steps * n / med);
	}
	rc = 0;
done:
	free(tok);
	free(logits);
	ssm_backend_close(b);
	ssm_model_free(m);
	return rc;
}
