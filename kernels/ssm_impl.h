/*
 * ssm_impl.h — engine internals shared by the loader and the backends.
 * Not installed, not included outside kernels/ (and the engine's own tests).
 *
 * A backend is an ops table (struct ssm_backend_ops) plus its private data.
 * ssm.h's public functions (backend.c) check arguments — slot ranges, token
 * ranges, model of a state — and then call the table, so implementations may
 * assume valid arguments.
 */
#ifndef SSM_IMPL_H
#define SSM_IMPL_H

#include "ssm.h"

/* One tensor of the checkpoint, as found on disk (memory-mapped). A tensor
 * that the config makes optional and the file lacks has data == NULL. */
typedef struct ssm_tensor {
	char name[96];
	ssm_dtype dtype;
	int ndim;
	int64_t shape[4];
	const void *data;   /* little-endian, row-major; borrowed from the mapping */
	size_t nbytes;
} ssm_tensor;

/* Hugging Face names, i = layer: backbone.layers.{i}.norm.weight, and
 * backbone.layers.{i}.mixer.{in_proj,conv1d,x_proj,dt_proj,out_proj}.*,
 * .A_log, .D. Shapes as in MambaMixer. */
typedef struct ssm_layer_weights {
	ssm_tensor norm;       /* (d_model) RMSNorm weight */
	ssm_tensor in_proj_w;  /* (2*d_inner, d_model): rows [0,d_inner) -> x, rest -> z */
	ssm_tensor in_proj_b;  /* (2*d_inner) when use_bias */
	ssm_tensor conv_w;     /* (d_inner, 1, d_conv) depthwise causal conv */
	ssm_tensor conv_b;     /* (d_inner) when use_conv_bias */
	ssm_tensor x_proj_w;   /* (dt_rank + 2*d_state, d_inner) -> (dt_low, B, C) */
	ssm_tensor dt_proj_w;  /* (d_inner, dt_rank) */
	ssm_tensor dt_proj_b;  /* (d_inner), always present */
	ssm_tensor A_log;      /* (d_inner, d_state); A = -exp(A_log) */
	ssm_tensor D;          /* (d_inner) skip connection */
	ssm_tensor out_proj_w; /* (d_model, d_inner) */
	ssm_tensor out_proj_b; /* (d_model) when use_bias */
} ssm_layer_weights;

struct ssm_model {
	ssm_config cfg;
	uint8_t fingerprint[SSM_FINGERPRINT_LEN];
	char dir[4096];
	ssm_tensor embed;    /* (vocab, d_model) backbone.embeddings.weight */
	ssm_tensor norm_f;   /* (d_model) backbone.norm_f.weight */
	ssm_tensor lm_head;  /* (vocab, d_model); a copy of embed's descriptor when tied */
	ssm_layer_weights *layers; /* (n_layer) */
	struct ssm_mapping *maps;  /* loader-private: the mapped shard files */
	int n_maps;
};

/* Converts n elements of t (any dtype) to f32 into out (n floats). */
void ssm_tensor_to_f32(const ssm_tensor *t, float *out, size_t n);

/* Elements in t (product of its shape). */
size_t ssm_tensor_numel(const ssm_tensor *t);

/* f16 / bf16 <-> f32 conversion (round to nearest even). */
float ssm_f16_to_f32(uint16_t h);
float ssm_bf16_to_f32(uint16_t h);
uint16_t ssm_f32_to_f16(float f);
uint16_t ssm_f32_to_bf16(float f);

typedef struct ssm_backend_ops {
	const char *name;
	void (*close)(ssm_backend *b);
	int (*slot_reset)(ssm_backend *b, int slot);
	int (*slot_copy)(ssm_backend *b, int dst, int src);
	int (*slot_get)(ssm_backend *b, int slot, ssm_state *st);
	int (*slot_set)(ssm_backend *b, int slot, const ssm_state *st);
	int (*prefill)(ssm_backend *b, int slot, const ssm_prefill_args *a);
	int (*decode)(ssm_backend *b, const int *slots, const int32_t *tokens,
		      int n, float *logits);
	int (*slot_logits)(ssm_backend *b, int slot, float *logits);
	/* Optional, NULL where the backend has none (CPU): one decode step as
	 * decode(), then row i sampled with samplers[i] at RNG index index[i]
	 * into next[i], the logits never leaving the backend. The public
	 * ssm_decode_sample() falls back to decode() + ssm_sample(). */
	int (*decode_sample)(ssm_backend *b, const int *slots,
			     const int32_t *tokens, int n,
			     const ssm_sampler *samplers, const uint64_t *index,
			     int32_t *next);
} ssm_backend_ops;

struct ssm_backend {
	const ssm_backend_ops *ops;
	const ssm_model *model;
	int n_slots;
	void *impl; /* the backend's private data */
	/* (n_slots) tokens each slot has consumed, kept by backend.c (not by
	 * the implementations) so that emptiness checks need no device copy. */
	uint64_t *slot_tokens;
};

/* ssm_decode()'s argument checks, for entry points that step slots past
 * backend.c (the CUDA backend's timing splits): 1 <= n <= n_slots, slots in
 * range and distinct, tokens in the vocabulary. fn names the caller in the
 * error message. */
int ssm_check_batch(const ssm_backend *b, const int *slots, const int32_t *tokens,
		    int n, const char *fn);

/* Backend constructors; each fills b->ops and b->impl of a zeroed *b. */
int ssm_cpu_open(ssm_backend *b, const ssm_backend_opts *opts);
#ifdef SSM_HAVE_CUDA
int ssm_cuda_open(ssm_backend *b, const ssm_backend_opts *opts);
int ssm_cuda_device_count(void);
#endif

#endif
