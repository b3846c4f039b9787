/*
 * sample.c — next-token sampling and the counter-based RNG (see ssm.h for the
 * exact procedure, which the CUDA backend reproduces on the device).
 */
#include <math.h>
#include <stdlib.h>

#include "ssm_impl.h"

#define GOLDEN 0x9e3779b97f4a7c15ull

/* splitmix64's output function. */
static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

double ssm_rng_uniform(uint64_t seed, uint64_t index)
{
	uint64_t key = mix64(seed);
	uint64_t r = mix64(key + (index + 1) * GOLDEN);

	return (double)(r >> 11) * 0x1p-53;
}

/* NaN counts as -inf: it never wins and never gets probability. */
static float clean(float x)
{
	return isnan(x) ? -INFINITY : x;
}

static int32_t argmax(const float *logits, int vocab)
{
	int32_t best = 0;
	float bv = clean(logits[0]);

	for (int i = 1; i < vocab; i++) {
		float v = clean(logits[i]);
		if (v > bv) { /* strict: the lowest ID wins ties */
			bv = v;
			best = i;
		}
	}
	return best;
}

typedef struct cand {
	float v;    /* logit / temperature */
	int32_t id;
} cand;

/* Descending by value, ascending by ID on ties: a total order, so the
 * result of the sort does not depend on the sort algorithm. */
static int cmp_cand(const void *a, const void *b)
{
	const cand *x = a, *y = b;

	if (x->v != y->v)
		return x->v > y->v ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Moves the k candidates that come first in cmp_cand's order to c[0..k), in
 * no particular order, with a min-heap of the best k seen (the heap's root is
 * the worst of them): O(vocab log k) instead of sorting the whole vocabulary.
 * The order is total, so the set is the same as a full sort's first k. */
static void sift_down(cand *h, int k, int i)
{
	for (;;) {
		int w = i, l = 2 * i + 1, r = l + 1;
		if (l < k && cmp_cand(&h[l], &h[w]) > 0)
			w = l;
		if (r < k && cmp_cand(&h[r], &h[w]) > 0)
			w = r;
		if (w == i)
			return;
		cand t = h[i];
		h[i] = h[w];
		h[w] = t;
		i = w;
	}
}

static int top_k_select(cand *c, int vocab, int k)
{
	for (int i = k / 2 - 1; i >= 0; i--)
		sift_down(c, k, i);
	for (int i = k; i < vocab; i++)
		if (cmp_cand(&c[i], &c[0]) < 0) { /* better than the worst kept */
			c[0] = c[i];
			sift_down(c, k, 0);
		}
	return k;
}

int32_t ssm_sample(const float *logits, int vocab, const ssm_sampler *s,
		   uint64_t index)
{
	cand *c;
	int n = vocab;
	double total = 0.0, u, acc = 0.0;
	int32_t pick;
	float inv_t;

	if (!logits || !s || vocab < 1)
		return -SSMD_EINVAL;
	inv_t = 1.0f / s->temperature;
	/* a temperature so small that 1/T overflows (below ~2.9e-39), or NaN:
	 * its limit, greedy (the weights below would all be NaN or 0) */
	if (s->temperature <= 0.0f || !isfinite(inv_t) || s->top_k == 1 || vocab == 1)
		return argmax(logits, vocab);
	c = malloc((size_t)vocab * sizeof *c);
	if (!c)
		return -SSMD_ENOMEM;
	for (int i = 0; i < vocab; i++) {
		c[i].v = clean(logits[i]) * inv_t;
		c[i].id = i;
	}
	if (s->top_k > 0 && s->top_k < vocab) {
		n = top_k_select(c, vocab, s->top_k);
		qsort(c, (size_t)n, sizeof *c, cmp_cand);
	} else if (s->top_p < 1.0f) {
		qsort(c, (size_t)vocab, sizeof *c, cmp_cand);
	}
	float max = c[0].v;
	for (int i = 1; i < n; i++)
		if (c[i].v > max)
			max = c[i].v;
	if (max == -INFINITY) { /* nothing has probability: fall back */
		free(c);
		return argmax(logits, vocab);
	}
	/* p_i = exp(v_i - max) / total, in double */
	for (int i = 0; i < n; i++)
		total += exp((double)c[i].v - max);
	if (s->top_p < 1.0f) {
		/* the smallest prefix of the sorted list whose mass >= top_p */
		double need = (double)s->top_p * total, mass = 0.0;
		int keep = 0;
		while (keep < n) {
			mass += exp((double)c[keep].v - max);
			keep++;
			if (mass >= need)
				break;
		}
		n = keep;
		total = mass;
	}
	u = ssm_rng_uniform(s->seed, index) * total;
	pick = c[n - 1].id;
	for (int i = 0; i < n; i++) {
		acc += exp((double)c[i].v - max);
		if (u < acc) {
			pick = c[i].id;
			break;
		}
	}
	free(c);
	return pick;
}

double ssm_logprob(const float *logits, int vocab, int32_t t)
{
	float max = logits[0];
	double sum = 0;

	for (int v = 1; v < vocab; v++)
		if (logits[v] > max)
			max = logits[v];
	for (int v = 0; v < vocab; v++)
		sum += expf(logits[v] - max);
	return (double)logits[t] - ((double)max + log(sum));
}
