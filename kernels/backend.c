/*
 * backend.c — ssm.h's backend functions: argument checks, then the ops table.
 *
 * Every check that does not need the backend's data lives here, once, so
 * each backend implementation may assume valid slots, tokens and states.
 */
#include <stdlib.h>
#include <string.h>

#include "ssm_impl.h"

#define MAX_SLOTS 65536

void ssm_backend_opts_init(ssm_backend_opts *opts)
{
	memset(opts, 0, sizeof *opts);
	opts->kind = SSM_BACKEND_AUTO;
	opts->n_slots = 1;
	opts->n_threads = 0;
	opts->weight_dtype = SSM_DTYPE_BF16;
	opts->device = 0;
}

int ssm_backend_open(const ssm_model *m, const ssm_backend_opts *opts,
		     ssm_backend **out)
{
	ssm_backend *b;
	ssm_backend_kind kind;
	int rc;

	if (!m || !opts || !out)
		return ssmd_err_set(SSMD_EINVAL, "ssm_backend_open: NULL argument");
	if (opts->n_slots < 1 || opts->n_slots > MAX_SLOTS)
		return ssmd_err_set(SSMD_EINVAL, "ssm_backend_open: n_slots %d "
				    "not in [1, %d]", opts->n_slots, MAX_SLOTS);
	if (opts->n_threads < 0)
		return ssmd_err_set(SSMD_EINVAL, "ssm_backend_open: n_threads %d",
				    opts->n_threads);
	kind = opts->kind;
	if (kind != SSM_BACKEND_AUTO && kind != SSM_BACKEND_CPU &&
	    kind != SSM_BACKEND_CUDA)
		return ssmd_err_set(SSMD_EINVAL, "ssm_backend_open: unknown "
				    "backend kind %d", (int)kind);
	if (kind == SSM_BACKEND_AUTO) {
		kind = SSM_BACKEND_CPU;
#ifdef SSM_HAVE_CUDA
		if (ssm_cuda_device_count() > 0)
			kind = SSM_BACKEND_CUDA;
#endif
	}
#ifndef SSM_HAVE_CUDA
	if (kind == SSM_BACKEND_CUDA)
		return ssmd_err_set(SSMD_EUNSUPPORTED, "the CUDA backend is not "
				    "built into this program");
#endif
	b = calloc(1, sizeof *b);
	if (!b)
		return ssmd_err_set(SSMD_ENOMEM, "out of memory");
	b->model = m;
	b->n_slots = opts->n_slots;
	b->slot_tokens = calloc((size_t)opts->n_slots, sizeof *b->slot_tokens);
	if (!b->slot_tokens) {
		free(b);
		return ssmd_err_set(SSMD_ENOMEM, "out of memory");
	}
#ifdef SSM_HAVE_CUDA
	if (kind == SSM_BACKEND_CUDA)
		rc = ssm_cuda_open(b, opts);
	else
#endif
		rc = ssm_cpu_open(b, opts);
	if (rc) {
		free(b->slot_tokens);
		free(b);
		return rc;
	}
	*out = b;
	return SSMD_OK;
}

void ssm_backend_close(ssm_backend *b)
{
	if (!b)
		return;
	b->ops->close(b);
	free(b->slot_tokens);
	free(b);
}

const char *ssm_backend_name(const ssm_backend *b)
{
	return b->ops->name;
}

int ssm_backend_n_slots(const ssm_backend *b)
{
	return b->n_slots;
}

/* After a failed or aborted operation the slot may have consumed part of its
 * input: read the count back from the backend. */
static void resync(ssm_backend *b, int slot)
{
	ssm_state *st = NULL;

	if (ssm_model_state_alloc(b->model, &st) == SSMD_OK &&
	    b->ops->slot_get(b, slot, st) == SSMD_OK)
		b->slot_tokens[slot] = st->n_tokens;
	ssm_state_free(st);
}

static int check_slot(const ssm_backend *b, int slot, const char *fn)
{
	if (slot < 0 || slot >= b->n_slots)
		return ssmd_err_set(SSMD_EINVAL, "%s: slot %d out of range "
				    "[0, %d)", fn, slot, b->n_slots);
	return SSMD_OK;
}

static int check_tokens(const ssm_backend *b, const int32_t *tokens,
			size_t n, const char *fn)
{
	int32_t vocab = b->model->cfg.vocab_size;

	for (size_t i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= vocab)
			return ssmd_err_set(SSMD_EINVAL, "%s: token %ld at position "
					    "%zu out of range [0, %d)", fn,
					    (long)tokens[i], i, (int)vocab);
	return SSMD_OK;
}

static int check_shape(const ssm_backend *b, const ssm_state *st,
		       const char *fn)
{
	const ssm_config *c = &b->model->cfg;

	if (!st)
		return ssmd_err_set(SSMD_EINVAL, "%s: NULL state", fn);
	if (st->arch != c->arch || st->n_layer != (uint32_t)c->n_layer ||
	    st->d_inner != (uint32_t)c->d_inner ||
	    st->d_state != (uint32_t)c->d_state ||
	    st->d_conv != (uint32_t)c->d_conv ||
	    st->d_model != (uint32_t)c->d_model)
		return ssmd_err_set(SSMD_EMODEL, "%s: state shape does not fit "
				    "this model", fn);
	return SSMD_OK;
}

int ssm_slot_reset(ssm_backend *b, int slot)
{
	int rc;

	if ((rc = check_slot(b, slot, "ssm_slot_reset")) ||
	    (rc = b->ops->slot_reset(b, slot)))
		return rc;
	b->slot_tokens[slot] = 0;
	return SSMD_OK;
}

int ssm_slot_copy(ssm_backend *b, int dst, int src)
{
	int rc;

	if ((rc = check_slot(b, dst, "ssm_slot_copy")) ||
	    (rc = check_slot(b, src, "ssm_slot_copy")))
		return rc;
	if (dst == src)
		return SSMD_OK;
	if ((rc = b->ops->slot_copy(b, dst, src)))
		return rc;
	b->slot_tokens[dst] = b->slot_tokens[src];
	return SSMD_OK;
}

int ssm_slot_get(ssm_backend *b, int slot, ssm_state *st)
{
	int rc;

	if ((rc = check_slot(b, slot, "ssm_slot_get")) ||
	    (rc = check_shape(b, st, "ssm_slot_get")) ||
	    (rc = b->ops->slot_get(b, slot, st)))
		return rc;
	memcpy(st->fingerprint, b->model->fingerprint, SSM_FINGERPRINT_LEN);
	return SSMD_OK;
}

int ssm_slot_set(ssm_backend *b, int slot, const ssm_state *st)
{
	int rc;

	if ((rc = check_slot(b, slot, "ssm_slot_set")) ||
	    (rc = check_shape(b, st, "ssm_slot_set")) ||
	    (rc = ssm_model_check_state(b->model, st)) ||
	    (rc = b->ops->slot_set(b, slot, st)))
		return rc;
	b->slot_tokens[slot] = st->n_tokens;
	return SSMD_OK;
}

int ssm_prefill(ssm_backend *b, int slot, const ssm_prefill_args *args)
{
	int rc;

	if (!args)
		return ssmd_err_set(SSMD_EINVAL, "ssm_prefill: NULL args");
	if ((rc = check_slot(b, slot, "ssm_prefill")))
		return rc;
	if (args->n_tokens && !args->tokens)
		return ssmd_err_set(SSMD_EINVAL, "ssm_prefill: NULL tokens");
	if ((rc = check_tokens(b, args->tokens, args->n_tokens, "ssm_prefill")))
		return rc;
	if (args->n_ckpt) {
		if (!args->ckpt_pos || !args->ckpt_fn)
			return ssmd_err_set(SSMD_EINVAL, "ssm_prefill: checkpoints "
					    "need ckpt_pos and ckpt_fn");
		for (size_t i = 0; i < args->n_ckpt; i++) {
			size_t p = args->ckpt_pos[i];
			if (p < 1 || p > args->n_tokens ||
			    (i && p < args->ckpt_pos[i - 1]))
				return ssmd_err_set(SSMD_EINVAL, "ssm_prefill: "
						    "checkpoint position %zu "
						    "not ascending in [1, %zu]",
						    p, args->n_tokens);
		}
	}
	if (!args->lp_next != !args->logprobs)
		return ssmd_err_set(SSMD_EINVAL, "ssm_prefill: lp_next and logprobs "
				    "go together");
	for (size_t i = 0; args->lp_next && i < args->n_tokens; i++)
		if (args->lp_next[i] < -1 || args->lp_next[i] >= b->model->cfg.vocab_size)
			return ssmd_err_set(SSMD_EINVAL, "ssm_prefill: lp_next[%zu] = %d "
					    "not -1 or a token below %d", i,
					    (int)args->lp_next[i],
					    b->model->cfg.vocab_size);
	if (args->n_tokens == 0) {
		/* nothing to consume; the last logits are the slot's own */
		return args->last_logits ?
		       ssm_slot_logits(b, slot, args->last_logits) : SSMD_OK;
	}
	rc = b->ops->prefill(b, slot, args);
	if (rc)
		resync(b, slot);
	else
		b->slot_tokens[slot] += args->n_tokens;
	return rc;
}

/* Checks a decode batch (ssm_impl.h). */
int ssm_check_batch(const ssm_backend *b, const int *slots, const int32_t *tokens,
		    int n, const char *fn)
{
	unsigned char *seen;
	int rc = SSMD_OK;

	if (n < 1 || n > b->n_slots || !slots || !tokens)
		return ssmd_err_set(SSMD_EINVAL, "%s: bad batch of %d (backend "
				    "has %d slots)", fn, n, b->n_slots);
	if ((rc = check_tokens(b, tokens, (size_t)n, fn)))
		return rc;
	seen = calloc((size_t)b->n_slots, 1);
	if (!seen)
		return ssmd_err_set(SSMD_ENOMEM, "out of memory");
	for (int i = 0; i < n && !rc; i++) {
		if ((rc = check_slot(b, slots[i], fn)))
			break;
		if (seen[slots[i]])
			rc = ssmd_err_set(SSMD_EINVAL, "%s: slot %d appears twice "
					  "in the batch", fn, slots[i]);
		seen[slots[i]] = 1;
	}
	free(seen);
	return rc;
}

/* Bookkeeping after a decode step over slots (see resync). */
static void decode_done(ssm_backend *b, const int *slots, int n, int rc)
{
	for (int i = 0; i < n; i++) {
		if (rc)
			resync(b, slots[i]);
		else
			b->slot_tokens[slots[i]]++;
	}
}

int ssm_decode(ssm_backend *b, const int *slots, const int32_t *tokens, int n,
	       float *logits)
{
	int rc;

	if (n == 0)
		return SSMD_OK;
	if (!logits)
		return ssmd_err_set(SSMD_EINVAL, "ssm_decode: NULL logits");
	if ((rc = ssm_check_batch(b, slots, tokens, n, "ssm_decode")))
		return rc;
	rc = b->ops->decode(b, slots, tokens, n, logits);
	decode_done(b, slots, n, rc);
	return rc;
}

int ssm_decode_sample(ssm_backend *b, const int *slots, const int32_t *tokens,
		      int n, const ssm_sampler *samplers, const uint64_t *index,
		      int32_t *next)
{
	int vocab = b->model->cfg.vocab_size;
	float *logits;
	int rc;

	if (!samplers || !index || !next)
		return ssmd_err_set(SSMD_EINVAL, "ssm_decode_sample: NULL "
				    "argument");
	if ((rc = ssm_check_batch(b, slots, tokens, n, "ssm_decode_sample")))
		return rc;
	if (b->ops->decode_sample) {
		rc = b->ops->decode_sample(b, slots, tokens, n, samplers, index,
					   next);
		decode_done(b, slots, n, rc);
		return rc;
	}
	logits = malloc((size_t)n * (size_t)vocab * sizeof *logits);
	if (!logits)
		return ssmd_err_set(SSMD_ENOMEM, "ssm_decode_sample: out of "
				    "memory for %d x %d logits", n, vocab);
	rc = b->ops->decode(b, slots, tokens, n, logits);
	decode_done(b, slots, n, rc);
	for (int i = 0; i < n && !rc; i++) {
		int32_t t = ssm_sample(logits + (size_t)i * vocab, vocab,
				       &samplers[i], index[i]);
		if (t < 0)
			rc = ssmd_err_set(-t, "ssm_decode_sample: sampling "
					  "failed");
		else
			next[i] = t;
	}
	free(logits);
	return rc;
}

int ssm_slot_logits(ssm_backend *b, int slot, float *logits)
{
	int rc;

	if ((rc = check_slot(b, slot, "ssm_slot_logits")))
		return rc;
	if (!logits)
		return ssmd_err_set(SSMD_EINVAL, "ssm_slot_logits: NULL logits");
	if (b->slot_tokens[slot] == 0)
		return ssmd_err_set(SSMD_EEMPTY, "ssm_slot_logits: slot %d has "
				    "consumed no tokens", slot);
	return b->ops->slot_logits(b, slot, logits);
}
