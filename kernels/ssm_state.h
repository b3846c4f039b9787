/*
 * ssm_state.h — the canonical state of a Mamba session and its byte encoding.
 *
 * A canonical state is everything needed to continue a session exactly: the
 * SSM state, the conv window, the last hidden vector, the running dt sums, the
 * token count and the fingerprint of the model that produced it. It is the same
 * object whichever backend (CPU or CUDA) produced it, and it is what the state
 * library stores.
 *
 * This part has no dependencies beyond the C library and ssmd_err.h so that
 * the state library can parse encoded states without linking the engine.
 *
 * Encoding (all little-endian), SSM_STATE_HEADER_SIZE bytes of header then
 * four f32 arrays packed back to back:
 *
 *   off  size  field
 *     0     4  magic "SSMS"
 *     4     4  u32 format version (SSM_STATE_VERSION)
 *     8     4  u32 architecture (SSM_ARCH_*)
 *    12     4  u32 n_layer
 *    16     4  u32 d_inner
 *    20     4  u32 d_state
 *    24     4  u32 d_conv   (kernel width; the conv array keeps d_conv-1 columns)
 *    28     4  u32 d_model
 *    32     8  u64 n_tokens
 *    40    16  model fingerprint
 *    56     8  reserved, zero
 *    64        f32 ssm    (n_layer, d_inner, d_state)
 *              f32 conv   (n_layer, d_inner, d_conv-1), oldest input first
 *              f32 hidden (d_model)
 *              f32 dt_sum (n_layer, d_inner)
 *
 * Thread-safety: functions here touch only their arguments.
 */
#ifndef SSM_STATE_H
#define SSM_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "ssmd_err.h"

#define SSM_FINGERPRINT_LEN 16
#define SSM_STATE_HEADER_SIZE 64
#define SSM_STATE_VERSION 1

enum ssm_arch {
	SSM_ARCH_MAMBA1 = 1, /* Hugging Face MambaForCausalLM */
};

typedef struct ssm_state {
	uint32_t arch;
	uint32_t n_layer, d_inner, d_state, d_conv, d_model;
	uint64_t n_tokens;      /* tokens consumed since the zero state */
	uint8_t fingerprint[SSM_FINGERPRINT_LEN];
	float *ssm;    /* (n_layer, d_inner, d_state) recurrent SSM state h */
	float *conv;   /* (n_layer, d_inner, d_conv-1) newest conv inputs, oldest first */
	float *hidden; /* (d_model) last block's output (before the final norm) of the last token */
	float *dt_sum; /* (n_layer, d_inner) sum of dt over every consumed token */
} ssm_state;

/* Byte offsets of each part inside an encoded state. */
typedef struct ssm_state_layout {
	size_t ssm_off, ssm_len;       /* bytes */
	size_t conv_off, conv_len;
	size_t hidden_off, hidden_len;
	size_t dt_sum_off, dt_sum_len;
	size_t total;                  /* header + all arrays */
} ssm_state_layout;

/* Allocates a zero state of the given shape (fingerprint zero, n_tokens 0).
 * Returns SSMD_OK and *out, SSMD_EINVAL on a zero or absurd dimension,
 * SSMD_ENOMEM. Free with ssm_state_free(). */
int ssm_state_alloc(uint32_t arch, uint32_t n_layer, uint32_t d_inner,
		    uint32_t d_state, uint32_t d_conv, uint32_t d_model,
		    ssm_state **out);

/* Frees a state from ssm_state_alloc() or ssm_state_decode(); NULL is a no-op. */
void ssm_state_free(ssm_state *st);

/* Sets every array, n_tokens to zero (the state of an empty session). */
void ssm_state_zero(ssm_state *st);

/* Copies src into dst; both must have the same shape (else SSMD_EINVAL). */
int ssm_state_copy(ssm_state *dst, const ssm_state *src);

/* True when a and b have identical shape and architecture. */
int ssm_state_same_shape(const ssm_state *a, const ssm_state *b);

/* Number of bytes ssm_state_encode() writes for st. */
size_t ssm_state_encoded_size(const ssm_state *st);

/* Writes the encoding of st into buf of capacity cap bytes. Returns SSMD_OK,
 * or SSMD_ERANGE when cap < ssm_state_encoded_size(st). */
int ssm_state_encode(const ssm_state *st, void *buf, size_t cap);

/* Parses the header of an encoded state of len bytes and fills *lay with the
 * part offsets. Checks magic, version, dimension sanity and that len equals
 * the size the header implies; SSMD_EFORMAT otherwise. Safe on any input. */
int ssm_state_layout_of(const void *buf, size_t len, ssm_state_layout *lay);

/* Decodes len bytes into a newly allocated state (*out, owned by the caller).
 * SSMD_EFORMAT on a malformed buffer, SSMD_ENOMEM. Bit-exact: every f32,
 * NaN payloads included, comes back as it was encoded. */
int ssm_state_decode(const void *buf, size_t len, ssm_state **out);

#endif
