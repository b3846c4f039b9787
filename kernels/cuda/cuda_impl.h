/*
 * cuda_impl.h — private declarations of the CUDA backend (kernels/cuda/).
 *
 * The backend keeps, on one device:
 *   - the weights, converted once at open from the model's mapped tensors to
 *     the chosen dtype (BF16 default, F16 or F32) for the four projections and
 *     the embedding / lm_head, and to f32 for every small per-channel vector;
 *   - a slot pool of f32 canonical states, slot s at pool + s * state_floats,
 *     each laid out exactly as ssm_state's arrays, back to back:
 *       ssm    (n_layer, d_inner, d_state)
 *       conv   (n_layer, d_inner, d_conv-1)   oldest input first
 *       hidden (d_model)
 *       dt_sum (n_layer, d_inner)
 *     so a slot moves to or from the host in one copy;
 *   - activation buffers shared by decode and prefill (one owner, one stream).
 *
 * Streams: every computation runs on `stream`; slot <-> host copies run on
 * `copy_stream` from pinned buffers, ordered against `stream` by events.
 * Decode steps are captured as CUDA graphs, one per batch-size bucket (powers
 * of two up to max_batch), built on first use.
 *
 * Error handling: every CUDA / cuBLAS call goes through CUDA_TRY / CUBLAS_TRY,
 * which record SSMD_EDEVICE with "file:line: call: reason" and jump to the
 * function's single `out` label.
 */
#ifndef SSM_CUDA_IMPL_H
#define SSM_CUDA_IMPL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "ssm_cuda.h"
#include "ssm_impl.h"
}

#define CUDA_TRY(call)                                                        \
	do {                                                                  \
		cudaError_t e_ = (call);                                      \
		if (e_ != cudaSuccess) {                                      \
			rc = ssmd_err_set(SSMD_EDEVICE, "%s:%d: %s: %s",      \
					  cuda_file_name(__FILE__), __LINE__, \
					  #call, cudaGetErrorString(e_));     \
			goto out;                                             \
		}                                                             \
	} while (0)

#define CUBLAS_TRY(call)                                                      \
	do {                                                                  \
		cublasStatus_t s_ = (call);                                   \
		if (s_ != CUBLAS_STATUS_SUCCESS) {                            \
			rc = ssmd_err_set(SSMD_EDEVICE, "%s:%d: %s: %s",      \
					  cuda_file_name(__FILE__), __LINE__, \
					  #call, cublasGetStatusString(s_));  \
			goto out;                                             \
		}                                                             \
	} while (0)

/* After a kernel launch: the launch configuration error, if any. */
#define CUDA_LAUNCHED(name) CUDA_TRY(cudaPeekAtLastError())

/* The file name without its directories, for error details. */
static inline const char *cuda_file_name(const char *path)
{
	const char *s = path, *p;

	for (p = path; *p; p++)
		if (*p == '/')
			s = p + 1;
	return s;
}

/* Per-layer weights on the device. W* are (rows, cols) row-major in the
 * backend's weight dtype; the rest are f32. Optional ones are NULL. */
typedef struct cuda_layer {
	float *norm;   /* (d_model) RMSNorm weight */
	void *in_w;    /* (2*d_inner, d_model) */
	float *in_b;   /* (2*d_inner) or NULL */
	float *conv_w; /* (d_inner, d_conv) */
	float *conv_b; /* (d_inner) or NULL */
	void *x_w;     /* (dt_rank + 2*d_state, d_inner) */
	void *dt_w;    /* (d_inner, dt_rank) */
	float *dt_b;   /* (d_inner) */
	float *A;      /* (d_inner, d_state) = -exp(A_log) */
	float *Dp;     /* (d_inner) skip weight D */
	void *out_w;   /* (d_model, d_inner) */
	float *out_b;  /* (d_model) or NULL */
} cuda_layer;

/* Activation buffers, each for up to `rows` rows (decode batch or prefill
 * chunk). "T" marks buffers in the weight dtype (GEMM inputs). */
typedef struct cuda_act {
	int rows;
	float *h;     /* (rows, d_model) residual stream */
	void *xn;     /* (rows, d_model) T, normalised hidden */
	void *xz;     /* (rows, 2*d_inner) in_proj output: x | z, f32 in the
		       * batched step, T in the prefill */
	float *xc;    /* (rows, d_inner) conv + SiLU output (batched step) */
	void *xcT;    /* (rows, d_inner) T, the same for x_proj; the prefill's
		       * only copy, which its scan reads too */
	float *dbc;   /* (rows, dt_rank + 2*d_state) x_proj output: dt_low | B | C */
	void *dlT;    /* (rows, dt_rank) T, dt_low for the prefill dt_proj GEMM */
	float *dtr;   /* (rows, d_inner) dt_proj output before bias/softplus */
	void *yT;     /* (rows, d_inner) T, gated SSM output */
	float *seg_h;   /* (n_seg, d_inner, d_state) segment end states from zero */
	float *seg_dt;  /* (n_seg, d_inner) segment dt sums */
	float *start_h; /* (n_seg, d_inner, d_state) segment start states */
	float *start_d; /* (n_seg, d_inner) dt_sum at segment starts */
	int n_seg;      /* segments of a full prefill chunk */
	float *mix;   /* (rows, d_model) out_proj output */
	float *logits; /* (logit_rows, vocab) */
	int logit_rows;
} cuda_act;

/* A batch-size bucket's captured decode step. */
typedef struct cuda_graph {
	cudaGraph_t graph;
	cudaGraphExec_t exec;
} cuda_graph;

/* A form of ssmk_gemm_rows: its block's outputs (nt; 0: cuBLAS runs the
 * product), its cluster's K slices (s) and its clusters (c). */
typedef struct cuda_gr_form {
	int nt, s, c;
} cuda_gr_form;

/* A form of ssmk_gemm_wg: its block's outputs (nt 32, 64 or 128; 0:
 * cuBLAS runs the product) and its K slices (s 1 or 2, each slice's sums
 * into a buffer of their own). */
typedef struct cuda_wg_form {
	int nt, s;
} cuda_wg_form;

typedef struct cuda_backend {
	const ssm_model *model;
	ssm_config cfg;
	int device;
	ssm_dtype wdtype;
	cudaDataType_t wtype;  /* CUDA_R_32F / CUDA_R_16F / CUDA_R_16BF */
	size_t wsize;          /* bytes per weight element */
	int n_slots;

	cudaStream_t stream;      /* all computation */
	cudaStream_t copy_stream; /* slot <-> host copies */
	cudaEvent_t ev_compute, ev_copy;
	cudaEvent_t ev_t0, ev_t1;  /* ssm_cuda_timer_start / _stop */
	/* ssm_cuda_prefill_split(): an event after each part of the prefill
	 * while split_n >= 0 (split_n marks so far; -1: not timing). */
	cudaEvent_t *split_ev;
	unsigned char *split_part;
	int split_n;
	cublasHandle_t blas;
	void *blas_ws;            /* cuBLAS workspace (needed for graph capture) */
	size_t blas_ws_size;

	/* Weights. */
	void *embed;     /* (vocab, d_model) T */
	void *lm_head;   /* (vocab, d_model) T; == embed when tied */
	float *norm_f;   /* (d_model) */
	cuda_layer *layers; /* (n_layer) host array of device pointers */
	void **allocs;   /* every device allocation, for close */
	int n_allocs, cap_allocs;

	/* States. */
	size_t state_floats;  /* floats in one slot */
	size_t off_conv, off_hidden, off_dt_sum; /* float offsets inside a slot */
	float *pool;          /* (n_slots, state_floats) */
	uint64_t *n_tokens;   /* (n_slots) host-side token counts */
	float *h_state;       /* pinned (state_floats) staging for get/set */

	/* Activations and decode inputs. */
	cuda_act act;
	int max_batch;        /* largest decode bucket */
	int chunk;            /* prefill tokens per chunk */
	int scan_seg;         /* prefill scan segment length (tokens) */
	int xproj_split;      /* the prefill x_proj's K slices at most (1 .. XPROJ_MAX_SLICES) */
	int n_sm;             /* the device's multiprocessors */
	int out_split;        /* batched decode's out_proj K slices: 1 or 2 */
	bool prefill_pdl;     /* the prefill's own kernels by programmatic dependent launch */
	bool dt_fused;        /* the prefill's dt_proj inside the scan's pass 1 (16-bit weights) */
	int step_mma_min;     /* the batched decode's SSM step with dt_proj on the tensor
			       * cores from this many rows (bf16, 16 states), 0: never */
	int cxp_c;            /* the batched decode's conv step and x_proj as one kernel
			       * (ssmk_conv_xproj): its cluster's blocks, 0: two kernels */
	int cxp_rows;         /* its rows a cluster, 8 or 16 (SSMD_CUDA_CXP_ROWS), 0: 8
			       * where a step's clusters of 8 rows are all resident at once
			       * (cxp_fit8 of them), else 16 */
	int cxp_fit8;
	/* The batched decode's in_proj ([0]) and out_proj ([1]) by
	 * ssmk_gemm_rows for buckets of 8 and 16 rows (nt 0: cuBLAS). */
	cuda_gr_form gr[2][2];
	/* ... and by ssmk_gemm_wg for buckets of 32 and 64 rows. */
	cuda_wg_form wg[2];
	/* Decode inputs travel in one block, h_io -> d_io (a copy, or read by
	 * the step's graph: io_mapped), laid out as
	 *   int slots[max_batch] (-1 = padding row) | cuda_sampler samp[max_batch]
	 *   | int32 tokens[max(max_batch, chunk)]
	 * (prefill copies its tokens into d_tokens straight from the caller). */
	void *d_io, *h_io;    /* device / pinned */
	int io_mapped;        /* 1: the sampling kernel writes the tokens to h_next, 2:
			       * the step's graph reads h_io itself (SSMD_CUDA_IO_MAPPED,
			       * default 3) */
	void *dh_io;          /* h_io and h_next as the device addresses them */
	int32_t *dh_next;
	size_t io_bytes;
	int *d_slots, *h_slots;
	struct cuda_sampler *d_samp, *h_samp;
	int32_t *d_tokens, *h_tokens;
	int32_t *d_next;      /* (max_batch) sampled tokens, -1 = sample on the host */
	int32_t *h_next;      /* pinned (max_batch) */
	float *h_logits;      /* pinned (act.logit_rows, vocab) */
	uint64_t host_picks;  /* decode_sample rows the host picked (ssm_cuda_host_picks) */
	cuda_graph *graphs;   /* indexed by log2(bucket) */
	int n_graphs;

	/* The persistent decode kernels (cuda_persist.cuh): their grid (0: not
	 * usable here), the batch-1 kernel's prefetch depth (pk_pf), the
	 * barrier words (the batch-1 kernel's, the multi-row kernels'), x_proj's
	 * block-ordered copies and sums, the batch-1 kernel's out_proj sums and
	 * layer inputs, and a device copy of `layers`. */
	int pk_grid, pk_pf;
	bool pk_groups;          /* the batch-1 kernel's phases C and D by
				  * channel group (pk_groups()) */
	int pkn_rows;            /* the most rows the multi-row kernels serve
				  * (cuda_persist_nb.cuh), 0: none */
	struct pk_bar *pk_bar;
	void *pk_xwb, *pkn_xwb;      /* x_proj in block order (ssmk_xw_blocks), 1 | 2-4 rows */
	unsigned long long *pk_xacc; /* the x_proj sums (pk_xsum_add) */
	unsigned long long *pk_osum; /* the out_proj sums (pk_oproj) */
	float *pk_hbuf;              /* layer inputs (pk_stage_res), 2 d_model */
	unsigned long long *pk_cand; /* pk_sample's picks and sums: 2 x 4 rows x grid */
	cuda_layer *d_layers;
	long long *pk_trace;     /* where the kernel marks phases now, or NULL */
	long long *pk_trace_buf; /* ssm_cuda_persist_split()'s marks */

	/* Prefill checkpoints: up to ck_max full states per chunk, two buffers
	 * so one chunk's states travel to the host while the next computes. */
	int ck_max;
	float *d_ck;          /* (2, ck_max, state_floats) */
	float *h_ck;          /* pinned (2, ck_max, state_floats) */
	cudaEvent_t ev_ck[2]; /* buffer b's copy to the host is done */
	int *d_ck_pos;        /* (ck_max) chunk-relative positions, ascending */
	ssm_state ck_view;    /* the callback's state: arrays point into h_ck */

	/* A prefill chunk's log-probabilities (ssm_prefill_args.lp_next) */
	int32_t *d_lp_next;   /* (chunk) */
	float *d_lp;          /* (chunk) */
	float *h_lp;          /* pinned (chunk) */
} cuda_backend;

/* Sampling parameters of one row, as the kernel reads them. */
typedef struct cuda_sampler {
	float temperature;
	int top_k;
	float top_p;
	int pad;
	uint64_t seed;
	uint64_t index;
} cuda_sampler;

#endif
