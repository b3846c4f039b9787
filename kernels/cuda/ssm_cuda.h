/*
 * ssm_cuda.h — extras of the CUDA backend for benchmarks (C API).
 *
 * Device-side timing of a region of backend calls: CUDA events recorded on
 * the backend's compute stream, so the figure is what the GPU spent between
 * the two marks (including any idle gaps while the host prepared work), not
 * the host's view. Both functions return SSMD_EINVAL when b is not a CUDA
 * backend and SSMD_EDEVICE on a CUDA error. One owner, like the backend.
 */
#ifndef SSM_CUDA_H
#define SSM_CUDA_H

#include "ssm.h"

/* Records the start mark on b's compute stream. Does not block. */
int ssm_cuda_timer_start(ssm_backend *b);

/* Records the end mark, waits for it and writes the device time since the
 * last ssm_cuda_timer_start() in milliseconds to *ms. Blocks. */
int ssm_cuda_timer_stop(ssm_backend *b, float *ms);

/* The parts of a prefill that ssm_cuda_prefill_split() times, per layer
 * summed over the layers, plus the embedding and final norm (TAIL) and what
 * follows the layers' kernels inside ssm_prefill (OTHER: the logits GEMM,
 * checkpoint copies, host work between chunks). A decode step on the
 * cuBLAS path (ssm_cuda_decode_split) has NORM, IN_PROJ, CONV, X_PROJ,
 * SSM_STEP, OUT_PROJ, TAIL (the embedding) and HEAD; a step that a
 * persistent kernel runs (one row; 2 or 4 rows of 16-bit weights with
 * d_state 16) is one launch this split cannot see into (all of it is OTHER):
 * ssm_cuda_persist_split() times that kernel's phases. */
enum ssm_cuda_part {
	SSM_CUDA_NORM,      /* residual add + RMSNorm */
	SSM_CUDA_IN_PROJ,   /* in_proj GEMM */
	SSM_CUDA_CONV,      /* causal conv + SiLU, conv windows (and the decode's
			     * x_proj where one kernel does both: ssm_cuda_conv_xproj) */
	SSM_CUDA_X_PROJ,    /* x_proj GEMM */
	SSM_CUDA_DT,        /* dt_proj input + GEMM */
	SSM_CUDA_SCAN1,     /* segmented scan: local pass + segment combine */
	SSM_CUDA_SCAN2,     /* scan from the true starts: y, states, checkpoints */
	SSM_CUDA_OUT_PROJ,  /* out_proj GEMM */
	SSM_CUDA_TAIL,      /* embedding, final norm, last hidden vectors */
	SSM_CUDA_OTHER,
	SSM_CUDA_SSM_STEP,  /* decode: dt_proj + state update + gate */
	SSM_CUDA_HEAD,      /* decode: final norm, lm_head, sampling */
	SSM_CUDA_N_PARTS
};
extern const char *const ssm_cuda_part_names[SSM_CUDA_N_PARTS];

/* Runs ssm_prefill(b, slot, a) with a CUDA event after each part of each
 * layer and adds each part's device time in milliseconds to ms[part]. The
 * events cost a little time of their own, so the parts add up to slightly
 * more than an untimed prefill. Blocks. SSMD_EINVAL: not a CUDA backend, ms
 * NULL, or a prefill of more parts than the event pool holds (8192). */
int ssm_cuda_prefill_split(ssm_backend *b, int slot, const ssm_prefill_args *a,
			   double ms[SSM_CUDA_N_PARTS]);

/* Runs one decode step of rows slots[0..n) (1 <= n <= the backend's largest
 * bucket; the same contract as ssm_decode, greedy, logits left on the
 * device) without its CUDA graph, with a CUDA event after each part of each
 * layer, and adds each part's device time in milliseconds to ms[part]. The
 * launches and events add gaps that the graph does not have, so the parts
 * add up to more than a graphed step; each part's own time is what to read.
 * Blocks. SSMD_EINVAL: not a CUDA backend, n out of range, or ms NULL. */
int ssm_cuda_decode_split(ssm_backend *b, const int *slots, const int32_t *tokens,
			  int n, double ms[SSM_CUDA_N_PARTS]);

/* The phases of the persistent decode kernels per layer (A..D, each
 * followed by the grid barrier that ends it) and the final norm + lm_head.
 * There is no barrier after A (each block's B starts on its own conv
 * outputs): its entry, "A to B (no barrier)", is the gap between two
 * marks. Nor after C where the batch-1 kernel takes C and D by channel
 * group (ssm_cuda_decode1_groups()): its "C: barrier" is then the block's
 * own barrier only. */
#define SSM_CUDA_N_PHASES 9
extern const char *const ssm_cuda_phase_names[SSM_CUDA_N_PHASES];

/* Runs one decode step of tokens[i] on slots[i] for the n rows (greedy,
 * advancing the slots) through the persistent kernel that serves n rows'
 * bucket, with every block's clock read at each phase end and barrier
 * release, and adds each phase's share of the step as block 0 saw it
 * (summed over the layers; the shares of one call add up to 1) to share[].
 * With spread non-NULL it also adds, for each of the eight per-layer
 * phases, the shortest, mean and longest of the blocks' own times for it
 * (summed over the layers, as shares of block 0's step): a barrier's
 * shortest wait is the last block's to arrive, so mean minus shortest is
 * what the blocks' skew costs there. Blocks. SSMD_EUNSUPPORTED where no
 * persistent kernel serves the bucket, SSMD_EINVAL for a NULL share or n
 * out of range. */
int ssm_cuda_persist_split(ssm_backend *b, const int *slots, const int32_t *tokens, int n,
			   double share[SSM_CUDA_N_PHASES],
			   double spread[SSM_CUDA_N_PHASES - 1][3]);

/* The batch-1 kernel's prefetch depth (16-byte weight pieces a lane fetched
 * ahead, 6 or 8, chosen per model; SSMD_CUDA_PK_PF=6|8 at open overrides it)
 * into *pf, or 0 where batch 1 takes the path of larger batches.
 * SSMD_EINVAL: not a CUDA backend, or pf NULL. */
int ssm_cuda_decode1_depth(ssm_backend *b, int *pf);

/* Whether a persistent kernel serves a decode step of `rows` rows (1: the
 * batch-1 kernel, 2 or 4: the multi-row ones, where the model, weight dtype
 * and device allow them) (1) or the batched kernels do (0), into *served.
 * SSMD_EINVAL: not a CUDA backend, rows < 1, or served NULL. */
int ssm_cuda_persist_rows(ssm_backend *b, int rows, int *served);

/* Whether the batch-1 kernel takes phases C and D by channel group, two
 * grid barriers a layer (1), or C by channel and D by row of out_proj,
 * three (0), chosen per model (SSMD_CUDA_PK_GROUPS=0|1 at open overrides
 * it where the device allows), into *groups; -1 where batch 1 takes the
 * path of larger batches. SSMD_EINVAL: not a CUDA backend, or groups NULL. */
int ssm_cuda_decode1_groups(ssm_backend *b, int *groups);

/* The K slices the prefill's x_proj GEMM is cut into for a prompt of
 * n_tokens tokens (its first chunk; 1: one product), into *slices: enough
 * for about two output tiles an SM where the chunk's buffers hold them
 * (SSMD_CUDA_XPROJ_SPLIT=n at open caps it). SSMD_EINVAL: not a CUDA
 * backend, n_tokens < 1, or slices NULL. */
int ssm_cuda_xproj_slices(ssm_backend *b, int n_tokens, int *slices);

/* Whether the prefill's dt_proj runs inside the scan's first pass on the
 * tensor cores (1: 16-bit weights, dt_rank a multiple of 16 up to 64) or as
 * a GEMM of its own (0; SSMD_CUDA_DT_FUSED=0 at open forces it), into
 * *fused. SSMD_EINVAL: not a CUDA backend, or fused NULL. */
int ssm_cuda_dt_fused(ssm_backend *b, int *fused);

/* Whether a batched decode step of `rows` rows (one that takes the batched
 * kernels, not the persistent ones of 1, 2 or 4 rows) makes dt on the tensor
 * cores (ssmk_ssm_step_mma: bf16, 16 states, dt_rank a multiple of 16 up to 448,
 * d_inner of 32, d_model of 4, from 8 rows; SSMD_CUDA_STEP_MMA=N at open
 * moves the threshold, 0 turns it off)
 * (1) or by the lanes' f32 dot (0), into *on. SSMD_EINVAL: not a CUDA
 * backend, rows < 1, or on NULL. */
int ssm_cuda_step_mma(ssm_backend *b, int rows, int *on);

/* Whether a batched decode step (one that takes the batched kernels, not
 * the persistent ones of 1, 2 or 4 rows) runs its conv step and x_proj as
 * one kernel (ssmk_conv_xproj: 16-bit weights, d_conv 4, d_inner a
 * multiple of 32), into *cluster: the blocks of that kernel's clusters, each
 * block a run of d_inner / *cluster channels; 0: the conv kernel and a
 * cuBLAS GEMM (SSMD_CUDA_CONV_XPROJ=0 at open forces it). SSMD_EINVAL: not a
 * CUDA backend, or cluster NULL. */
int ssm_cuda_conv_xproj(ssm_backend *b, int *cluster);

/* How a batched decode step of `rows` rows (one that takes the batched
 * kernels) runs its in_proj and out_proj, into form[6]: the block tile
 * (outputs a block), the K slices (blocks a cluster) and the clusters of the
 * backend's own weight-streaming GEMM (ssmk_gemm_rows: 16-bit weights,
 * d_model and d_inner multiples of 64, buckets of 8 and 16 rows, both
 * products' forms of at most 6 K slices, or SSMD_CUDA_GEMM_SLICES at open)
 * for in_proj, then for out_proj; 0, 0, 0 where cuBLAS runs it
 * (SSMD_CUDA_GEMM_ROWS=n at open: above buckets of n rows; 0 everywhere).
 * SSMD_EINVAL: not a CUDA backend, rows < 1, or form NULL. */
int ssm_cuda_gemm_rows(ssm_backend *b, int rows, int form[6]);

/* The same for the warpgroup GEMM (ssmk_gemm_wg: 16-bit weights, compute
 * capability 9.0, d_model and d_inner multiples of 64, buckets of 32 and 64
 * rows), into form[4]: the block tile (32, 64 or 128 outputs) and the K
 * slices (1 for in_proj, 1 or 2 for out_proj) for in_proj, then for
 * out_proj; 0, 0 where another kernel runs it (SSMD_CUDA_GEMM_WG=0 at open:
 * cuBLAS everywhere). SSMD_EINVAL: not a CUDA backend, rows < 1, or
 * form NULL. */
int ssm_cuda_gemm_wg(ssm_backend *b, int rows, int form[4]);

/* How a decode step's inputs and sampled tokens cross to and from the host,
 * into *mapped: 3, the step's graph reads the slots, samplers and tokens
 * from pinned host memory itself and its sampling kernel writes the tokens
 * there (no copies in the stream); 0 with SSMD_CUDA_IO_MAPPED=0 at open,
 * one copy each way (1: only the tokens written there, 2: only the inputs
 * read there, for tuning). SSMD_EINVAL: not a CUDA backend, or mapped
 * NULL. */
int ssm_cuda_io_mapped(ssm_backend *b, int *mapped);

/* How many of decode_sample's rows since open the device handed to the
 * host's ssm_sample(), into *picks: the top-k and top-p rows, and any
 * temperature row whose draw fell within SAMPLE_MARGIN of a token's bounds.
 * SSMD_EINVAL: not a CUDA backend, or picks NULL. */
int ssm_cuda_host_picks(ssm_backend *b, uint64_t *picks);

#endif
