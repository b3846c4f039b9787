/*
 * ssm.h — the ssmd model engine: Mamba checkpoints, backends, sampling.
 *
 * The engine loads a Hugging Face MambaForCausalLM directory (config.json and
 * model.safetensors or a sharded index), and runs it through a *backend*: the
 * CPU reference (float32, always built) or the CUDA backend (built when nvcc
 * is present). A backend owns a fixed number of *slots*; each slot holds one
 * session's recurrent state. Prefill feeds tokens into one slot; decode
 * advances a set of slots by one token each in one batched step. A slot is read
 * and written as a canonical state (ssm_state.h), the same on every backend.
 *
 * The engine knows nothing of the state library, the network or tokenizers.
 *
 * Threads: an ssm_model is immutable after loading and may be shared by any
 * number of threads and backends. An ssm_backend has one owner: call it from
 * one thread at a time (the daemon's scheduler thread). The CPU backend
 * parallelises internally over its own worker threads.
 *
 * Errors: every function returns SSMD_OK or an SSMD_E* code; a detail naming
 * the file, tensor or slot is left in ssmd_errmsg().
 */
#ifndef SSM_H
#define SSM_H

#include <stddef.h>
#include <stdint.h>

#include "ssm_state.h"
#include "ssmd_err.h"

/* ---------------------------------------------------------------- model -- */

typedef enum ssm_dtype {
	SSM_DTYPE_F32 = 0,
	SSM_DTYPE_F16 = 1,
	SSM_DTYPE_BF16 = 2,
} ssm_dtype;

/* Every field is read from config.json. A field the file omits takes the
 * value transformers' MambaConfig gives it (state_size 16, conv_kernel 4,
 * expand 2, time_step_rank "auto", use_bias true, use_conv_bias true,
 * residual_in_fp32 true, layer_norm_epsilon 1e-5, tie_word_embeddings true,
 * intermediate_size expand * hidden_size), so a directory loads as it would
 * there; hidden_size, num_hidden_layers and vocab_size are required. Every
 * tensor's shape is then checked against the result. */
typedef struct ssm_config {
	uint32_t arch;          /* SSM_ARCH_MAMBA1 */
	int d_model;            /* hidden_size */
	int d_inner;            /* intermediate_size (= expand * hidden_size) */
	int n_layer;            /* num_hidden_layers */
	int d_state;            /* state_size */
	int d_conv;             /* conv_kernel */
	int dt_rank;            /* time_step_rank ("auto" = ceil(d_model/16)) */
	int vocab_size;         /* rows of the embedding */
	int use_bias;           /* in_proj / out_proj have biases */
	int use_conv_bias;      /* conv1d has a bias */
	int residual_in_fp32;   /* residual stream kept in f32 (always true on CPU) */
	int tie_embeddings;     /* lm_head shares the embedding matrix */
	float eps;              /* layer_norm_epsilon */
	ssm_dtype dtype;        /* dtype of the weights on disk (of the embedding) */
} ssm_config;

typedef struct ssm_model ssm_model;

/* Loads the model directory dir (memory-mapped; the files must stay in place
 * while the model is open). On a bad directory returns SSMD_ENOENT (missing
 * file), SSMD_EFORMAT (bad JSON, bad safetensors header, wrong dtype/shape,
 * missing tensor, offsets out of range), SSMD_EUNSUPPORTED (unknown
 * architecture) with ssmd_errmsg() naming the file and tensor. Blocks on I/O;
 * also computes the fingerprint, which reads every weight byte once. */
int ssm_model_load(const char *dir, ssm_model **out);

/* Unmaps and frees a model; NULL is a no-op. Every backend opened on the model
 * must be closed first. */
void ssm_model_free(ssm_model *m);

/* The model's configuration; borrowed, valid until ssm_model_free(). */
const ssm_config *ssm_model_config(const ssm_model *m);

/* The model fingerprint: SSM_FINGERPRINT_LEN bytes of XXH3-128 over the
 * canonical config and every weight tensor (name, dtype, shape, bytes).
 * Borrowed, valid until ssm_model_free(). */
const uint8_t *ssm_model_fingerprint(const ssm_model *m);

/* Writes the fingerprint as 2*SSM_FINGERPRINT_LEN lowercase hex digits + NUL
 * into hex (capacity at least 33). */
void ssm_fingerprint_hex(const uint8_t *fp, char *hex);

/* Allocates a zero canonical state shaped for m, with m's fingerprint. */
int ssm_model_state_alloc(const ssm_model *m, ssm_state **out);

/* SSMD_OK when st was produced by m (same shape and fingerprint), else
 * SSMD_EMODEL with a detail. */
int ssm_model_check_state(const ssm_model *m, const ssm_state *st);

/* ------------------------------------------------------------- backends -- */

typedef enum ssm_backend_kind {
	SSM_BACKEND_AUTO = 0, /* CUDA when built and a GPU is present, else CPU */
	SSM_BACKEND_CPU = 1,
	SSM_BACKEND_CUDA = 2,
} ssm_backend_kind;

typedef struct ssm_backend_opts {
	ssm_backend_kind kind;
	int n_slots;            /* live states held by the backend, >= 1 */
	int n_threads;          /* CPU worker threads; 0 = number of cores */
	ssm_dtype weight_dtype; /* CUDA: weights on the device (BF16 default); CPU always F32 */
	int device;             /* CUDA device ordinal */
} ssm_backend_opts;

typedef struct ssm_backend ssm_backend;

/* Sets opts to the defaults (AUTO, 1 slot, all cores, BF16, device 0). */
void ssm_backend_opts_init(ssm_backend_opts *opts);

/* Opens a backend on m with opts->n_slots zero states. The model is borrowed
 * and must outlive the backend. SSMD_EUNSUPPORTED when CUDA is asked for and
 * not built or no GPU is present; SSMD_EDEVICE, SSMD_ENOMEM. */
int ssm_backend_open(const ssm_model *m, const ssm_backend_opts *opts,
		     ssm_backend **out);

/* Releases the backend and its slots; NULL is a no-op. */
void ssm_backend_close(ssm_backend *b);

/* "cpu" or "cuda"; static string. */
const char *ssm_backend_name(const ssm_backend *b);

/* Number of slots (as opened). */
int ssm_backend_n_slots(const ssm_backend *b);

/* Resets a slot to the zero state (an empty session). */
int ssm_slot_reset(ssm_backend *b, int slot);

/* Copies slot src's state into slot dst (fork). */
int ssm_slot_copy(ssm_backend *b, int dst, int src);

/* Reads a slot as a canonical state into st (allocated for this model with
 * ssm_model_state_alloc). Blocks until the copy is complete. */
int ssm_slot_get(ssm_backend *b, int slot, ssm_state *st);

/* Loads a canonical state into a slot. SSMD_EMODEL when st is not of this
 * backend's model (shape or fingerprint). Setting a state and continuing is
 * bit-for-bit the same as never having stopped (on the same backend). */
int ssm_slot_set(ssm_backend *b, int slot, const ssm_state *st);

/* Called during a prefill at each requested checkpoint position: st is the
 * slot's state after the first pos tokens of this prefill (pos >= 1), borrowed
 * for the duration of the call. A non-zero return aborts the prefill with that
 * code (the slot then holds the state at pos). */
typedef int (*ssm_ckpt_fn)(void *ctx, size_t pos, const ssm_state *st);

typedef struct ssm_prefill_args {
	const int32_t *tokens;  /* (n_tokens) token IDs, each < vocab_size */
	size_t n_tokens;
	const size_t *ckpt_pos; /* ascending positions in [1, n_tokens], or NULL */
	size_t n_ckpt;
	ssm_ckpt_fn ckpt_fn;    /* required when n_ckpt > 0 */
	void *ckpt_ctx;
	float *all_logits;      /* (n_tokens, vocab) logits at every position, or NULL */
	float *last_logits;     /* (vocab) logits after the last token, or NULL */
	/* Scoring without the logits leaving the backend: with both set,
	 * logprobs[i] = ssm_logprob(logits at position i, lp_next[i]), the
	 * log-probability of lp_next[i] following tokens [0, i], and 0 where
	 * lp_next[i] is -1 (no token to score there). */
	const int32_t *lp_next; /* (n_tokens) IDs < vocab_size, or -1 */
	float *logprobs;        /* (n_tokens) */
} ssm_prefill_args;

/* Feeds tokens into slot, advancing its state; optional logits, log-
 * probabilities and checkpoint states as above. SSMD_EINVAL on a token out of
 * range, or lp_next without logprobs or the reverse (nothing consumed). */
int ssm_prefill(ssm_backend *b, int slot, const ssm_prefill_args *args);

/* One batched decode step: slot slots[i] consumes tokens[i] and logits row i
 * (n rows of vocab floats) receives its next-token logits. Slots must be
 * distinct. Each slot's result equals decoding it alone. */
int ssm_decode(ssm_backend *b, const int *slots, const int32_t *tokens, int n,
	       float *logits);

/* Logits (vocab floats) of a slot's last consumed token, recomputed from its
 * last hidden vector without consuming anything. SSMD_EEMPTY when the slot has
 * consumed no tokens. */
int ssm_slot_logits(ssm_backend *b, int slot, float *logits);

/* ------------------------------------------------------------- sampling -- */

/* Sampling settings. temperature <= 0 means greedy (argmax, lowest ID on
 * ties), as does one too small for 1/temperature to be finite. top_k <= 0
 * and top_p >= 1 disable those filters. */
typedef struct ssm_sampler {
	float temperature;
	int top_k;
	float top_p;
	uint64_t seed;
} ssm_sampler;

/* Counter-based RNG: a uniform double in [0, 1) that depends only on
 * (seed, index). The same on every backend and every run. Exactly:
 *   mix(z)  = splitmix64's finaliser: z ^= z >> 30; z *= 0xbf58476d1ce4e5b9;
 *             z ^= z >> 27; z *= 0x94d049bb133111eb; z ^= z >> 31
 *   r       = mix(mix(seed) + (index + 1) * 0x9e3779b97f4a7c15)   (mod 2^64)
 *   uniform = (r >> 11) * 2^-53
 * i.e. the (index+1)-th output of splitmix64 started at mix(seed). */
double ssm_rng_uniform(uint64_t seed, uint64_t index);

/* Picks the next token from logits (vocab floats; not modified) with sampler s.
 * The procedure, which every backend follows exactly:
 *  1. temperature <= 0, 1.0f / temperature not finite (a temperature below
 *     ~2.9e-39, or NaN), top_k == 1 or vocab == 1: argmax (lowest ID on
 *     ties). NaN logits count as -inf throughout.
 *  2. v_i = logit_i * (1.0f / temperature) in float.
 *  3. If top_k in [1, vocab) or top_p < 1: order candidates by v descending,
 *     ID ascending on ties; keep the first top_k when top_k applies.
 *     Otherwise the candidates stay in ID order.
 *  4. In double: w_i = exp(v_i - max v), total = sum of w_i over candidates.
 *  5. If top_p < 1: keep the shortest prefix (in that order) whose running
 *     sum of w_i reaches top_p * total (at least one); total = that sum.
 *  6. u = ssm_rng_uniform(seed, index) * total; the pick is the first
 *     candidate whose running sum of w_i exceeds u (the last if none does).
 *  If every candidate is -inf the result is the argmax of step 1.
 * index is the session's token index (its n_tokens), which keys the RNG so a
 * fork with the same seed reproduces and a resumed session continues exactly.
 * Returns the token ID. Thread-safe. Uses O(vocab) scratch memory internally;
 * returns -SSMD_ENOMEM if that cannot be allocated. */
int32_t ssm_sample(const float *logits, int vocab, const ssm_sampler *s,
		   uint64_t index);

/* log softmax(logits)[t] = logits[t] - (max + log sum_v exp(logits[v] - max)),
 * each term an f32 difference and expf (about an ulp of relative error each)
 * summed in double: over 64 rows of 50280 random logits the results were
 * within 1e-12 relative of the all-double formula, at half its time. */
double ssm_logprob(const float *logits, int vocab, int32_t t);

/* One batched decode step followed by sampling, for callers that want tokens
 * rather than logits: as ssm_decode(slots, tokens, n), then next[i] =
 * ssm_sample(logits of row i, vocab, &samplers[i], index[i]). Gives the same
 * tokens as ssm_decode() + ssm_sample() whenever the logits agree; the CUDA
 * backend samples on the device so the logits never cross to the host.
 * Blocks until done. SSMD_EINVAL on n < 1, a slot out of range or repeated,
 * or a token out of range (nothing consumed); SSMD_ENOMEM, SSMD_EDEVICE. */
int ssm_decode_sample(ssm_backend *b, const int *slots, const int32_t *tokens,
		      int n, const ssm_sampler *samplers, const uint64_t *index,
		      int32_t *next);

/* ---------------------------------------------------------------- merge -- */

/* Merges build a new canonical state from stored ones (DESIGN.md "Merge").
 * They are pure functions of their arguments: no backend, no I/O, nothing
 * shared, so any thread may call them (on distinct out states). Sources are
 * borrowed for the call; out is a state allocated by the caller with the
 * sources' shape (ssm_model_state_alloc or ssm_state_alloc) and may be one of
 * the sources. Each output value is computed in double and rounded once to
 * f32. On any error out is left exactly as it was. The daemon's `replay` mode
 * needs no function here: it resumes A and prefills B's transcript. */

/* Interpolate ("state soup"): the weighted mean of n >= 1 states, part by
 * part — ssm, conv, hidden and dt_sum all become
 *   out[i] = sum_j w_j * src[j][i] / sum_j w_j
 * Weights are relative: they are divided by their sum, so {1, 1} is the
 * average and {3, 1} is 0.75 / 0.25. weights NULL means equal weights.
 * n_tokens = round(sum_j w_j * n_tokens_j / sum_j w_j), halves away from
 * zero. The fingerprint is the sources'.
 * Errors: SSMD_EINVAL for n == 0, a NULL pointer, a weight that is NaN,
 * infinite or negative, weights summing to 0 (or overflowing), or out shaped
 * unlike the sources; SSMD_EMODEL when the sources differ in architecture,
 * shape or fingerprint (states of different models never merge);
 * SSMD_ENOMEM. */
int ssm_merge_interpolate(const ssm_state *const *src, const double *weights,
			  size_t n, ssm_state *out);

/* Compose ("A then B"): the state of having read A's tokens and then B's,
 * in the approximation that B's tokens produce the same SSM inputs after A
 * as they did from the zero state. For every layer l, channel c, state n:
 *   ssm[l][c][n] = exp(A[l][c][n] * dt_sum_B[l][c]) * ssm_A[l][c][n]
 *                  + ssm_B[l][c][n],          A = -exp(A_log) of model m,
 * which is exact for one linear SSM layer given the same per-token (dt, B, x)
 * (the decay of h_A over B's tokens is prod_t exp(A dt_t)). conv and hidden
 * are B's (the newest inputs); dt_sum = dt_sum_A + dt_sum_B and
 * n_tokens = n_tokens_A + n_tokens_B. The model is borrowed for the call.
 * More than two states compose left to right, compose(compose(A, B), C),
 * which in exact arithmetic equals compose(A, compose(B, C)).
 * Errors: SSMD_EINVAL for a NULL pointer, out shaped unlike the states, or
 * a dt_sum of B that is negative or not finite (no state of a model has
 * one); SSMD_EMODEL when a or b is not a state of m (shape or fingerprint);
 * SSMD_ERANGE when the token counts overflow; SSMD_EUNSUPPORTED for an
 * architecture other than SSM_ARCH_MAMBA1; SSMD_ENOMEM. */
int ssm_merge_compose(const ssm_model *m, const ssm_state *a,
		      const ssm_state *b, ssm_state *out);

#endif
