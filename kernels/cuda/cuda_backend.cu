/*
 * cuda_backend.cu — the CUDA backend: weights on the device, a slot pool of
 * f32 states, cuBLAS GEMMs for the four projections and lm_head, own kernels
 * for everything else (cuda_kernels.cuh), the batch-1 decode step as one
 * persistent kernel (cuda_persist.cuh), decode steps with their sampling captured
 * as CUDA graphs per batch-size bucket (cuda_sample.cuh), a chunked prefill whose
 * time-segmented scan keeps states in registers and writes them only at
 * segment ends, the chunk's end and checkpoints, whose states travel to the
 * host on a copy stream while the next chunk computes.
 *
 * See cuda_impl.h for the data layout and ssm_impl.h for the ops contract
 * (arguments are validated by backend.c before they reach us).
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_impl.h"
#include "cuda_kernels.cuh"
#include "cuda_gemm_rows.cuh"
#include "cuda_gemm_wg.cuh"
#include "cuda_sample.cuh"
#include "cuda_persist.cuh"
#include "cuda_persist_nb.cuh"

/* Prefill tokens per chunk (bounds activation memory, act_alloc: ~109 KB a
 * token for 1.4b, ~137 KB for 2.8b); SSMD_CUDA_CHUNK overrides it (tests use
 * a small value to cross chunk boundaries). Measured on the H200 (16k
 * prefill, bf16, 130m / 1.4b / 2.8b tok/s): an early build 2048 576k / 107k
 * / 59k, 4096 657k / 113k / 61k, 8192 731k / 117k / 63k, 16384 768k / 119k
 * / 64k; round twenty-nine's kernels 8192 1024k / 144.6k / 72.1k, 16384
 * 1066k / 147.4k / 76.2k. Each chunk costs every layer's ~10 launches and a
 * scan whose segments restart. The default is CUDA_DEFAULT_CHUNK where a
 * full chunk's checkpoints every CUDA_CK_FULL_EVERY tokens fit
 * CUDA_CK_BUDGET_MAX (1.4b: 64 states of 15.7 MB), else half of it (2.8b), so
 * that checkpoints do not cut chunks short. */
#define CUDA_DEFAULT_CHUNK 16384
/* K slices of the batched decode's out_proj GEMM (1 or 2), each a product
 * of its own that the next layer's norm adds in order: cuBLAS runs the
 * two halves of a 64-row product faster than the whole (bench/NOTES.md,
 * round fourteen). */
#define CUDA_OUT_SPLIT 2
/* Largest decode bucket; bigger batches run in pieces of this size. */
#define CUDA_MAX_BUCKET 256
/* Rows of logits computed per lm_head GEMM when a prefill wants them all. */
#define CUDA_LOGIT_ROWS 256
/* Device memory (and as much pinned host memory) for the checkpoint states
 * emitted inside one prefill chunk; a chunk holding more checkpoints is cut
 * short. Room for a checkpoint every CUDA_CK_FULL_EVERY tokens of a full
 * chunk (64 states of 15.7 MB on 1.4b: 1.0 GB; 32 of 26 MB in 2.8b's chunks
 * of 8192: 0.84 GB), within [CUDA_CK_BUDGET, CUDA_CK_BUDGET_MAX]. Measured
 * on the H200 (16k prefill, 2.8b, checkpoints every 256, median of 7
 * pairs): 512 MiB (19 states, chunks cut to 4864 tokens) 4.4% and 6.1%
 * slower in two calls, 1 GiB (chunks of 8192) 0.2%. The cap keeps larger
 * models' budget (twice: the buffers are double) within what a host pins
 * without trouble. */
#define CUDA_CK_BUDGET ((size_t)512 << 20)
#define CUDA_CK_BUDGET_MAX ((size_t)1 << 30)
#define CUDA_CK_FULL_EVERY 256
#define CUDA_CK_MAX SCAN_CK_MAX /* the scan keeps their positions in shared memory */

/* Rows from which the batched decode's SSM step makes dt on the tensor
 * cores (ssmk_ssm_step_mma, 8 rows a block). Measured on the H200 (bf16,
 * ms per step, against ssmk_ssm_step_b in the same binary): batch 64
 * 130m 0.733 -> 0.710, 1.4b 2.864 -> 2.761, 2.8b 4.886 -> 4.697; batch 16
 * 0.590 -> 0.595, 2.007 -> 2.021, 3.339 -> 3.244, so it first took 32 rows
 * and more. With its dt tiles over all eight warps and both steps started
 * early by the conv + x_proj kernel (round thirty-three, means of two
 * runs): batch 8 130m 0.491 -> 0.484, 1.4b 1.692 -> 1.680, 2.8b 2.868 ->
 * 2.825; batch 16 0.509 -> 0.499, 1.810 -> 1.805, 3.169 -> 3.047. So from
 * 8 rows: every bucket of the batched kernels. */
#define CUDA_STEP_MMA_MIN 8

static int cdiv(int a, int b) { return (a + b - 1) / b; }

static cuda_backend *cb_of(ssm_backend *b) { return (cuda_backend *)b->impl; }

static int bucket_of(int n)
{
	int b = 1;

	while (b < n)
		b <<= 1;
	return b;
}

static int log2_of(int b)
{
	int i = 0;

	while ((1 << i) < b)
		i++;
	return i;
}

/* The bytes of the io block a step of bucket nb reads: the slots, the
 * samplers and its nb tokens (whole 4-byte words). */
static size_t io_step_bytes(const cuda_backend *cb, int nb)
{
	return (size_t)((char *)(cb->h_tokens + nb) - (char *)cb->h_io);
}

/* Where the decode step's sampling kernel writes the tokens: the pinned
 * h_next itself (io_mapped bit 1), else d_next. */
static int32_t *sample_out(const cuda_backend *cb)
{
	return (cb->io_mapped & 1) ? cb->dh_next : cb->d_next;
}

/* Whether ssmk_ssm_step_mma serves the model: bf16 weights, 16 states,
 * dt_rank a multiple of 16, d_inner of 32, slots 16-byte aligned (d_model
 * a multiple of 4, given d_inner's). */
static bool step_mma_ok(const cuda_backend *cb)
{
	const ssm_config *c = &cb->cfg;

	/* its shared memory within the 48 KB a launch gets without opting in:
	 * dt_rank up to 448 */
	return cb->wdtype == SSM_DTYPE_BF16 && c->d_state == 16 && c->dt_rank % 16 == 0 &&
	       step_mma_smem_bytes(c->dt_rank) <= 48 * 1024 && c->d_inner % 32 == 0 &&
	       cb->state_floats % 4 == 0;
}

/* Whether a batched step of nb rows (a bucket) takes ssmk_ssm_step_mma. */
static bool step_mma_on(const cuda_backend *cb, int nb)
{
	return cb->step_mma_min > 0 && nb >= cb->step_mma_min;
}

/* ssmk_conv_xproj<T, rows> as a function pointer (16-bit T) */
typedef void (*cxp_kernel_fn)(const float *, const float *, const float *, const float *,
			      float *, const int *, size_t, size_t, int, int, const void *,
			      int, int, float *, float *);

static cxp_kernel_fn cxp_kernel(ssm_dtype dt, int rows)
{
	if (dt == SSM_DTYPE_F16)
		return rows == 8 ? (cxp_kernel_fn)ssmk_conv_xproj<__half, 8>
				 : (cxp_kernel_fn)ssmk_conv_xproj<__half, 16>;
	return rows == 8 ? (cxp_kernel_fn)ssmk_conv_xproj<__nv_bfloat16, 8>
			 : (cxp_kernel_fn)ssmk_conv_xproj<__nv_bfloat16, 16>;
}

/* The clusters of C blocks of ssmk_conv_xproj<rows> that can be resident
 * at once (*n; 0 where it does not fit), its shared memory limit set. */
static int cxp_fit(cuda_backend *cb, int C, int rows, int *n)
{
	int rc = SSMD_OK, optin = 0;
	const ssm_config *c = &cb->cfg;
	const int CH = c->d_inner / C, W = c->dt_rank + 2 * c->d_state;
	const cxp_kernel_fn k = cxp_kernel(cb->wdtype, rows);
	const size_t smem = cxp_smem_bytes(rows, CH, W, 2);
	cudaLaunchConfig_t lc = {};
	cudaLaunchAttribute at[1] = {};

	*n = 0;
	CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
					cb->device));
	if (smem + 1024 > (size_t)optin)
		return SSMD_OK;
	CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
	CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
	lc.gridDim = dim3(C, 1);
	lc.blockDim = dim3(CXP_THREADS);
	lc.dynamicSmemBytes = smem;
	at[0].id = cudaLaunchAttributeClusterDimension;
	at[0].val.clusterDim.x = C;
	at[0].val.clusterDim.y = 1;
	at[0].val.clusterDim.z = 1;
	lc.attrs = at;
	lc.numAttrs = 1;
	if (cudaOccupancyMaxActiveClusters(n, k, &lc) != cudaSuccess) {
		cudaGetLastError();
		*n = 0;
	}
out:
	return rc;
}

/*
 * Whether the batched decode runs its conv step and x_proj as one kernel
 * (ssmk_conv_xproj), and its cluster: 16-bit weights, d_conv 4, d_inner a
 * multiple of 32, every layer's x_proj 16-byte aligned; the most blocks a
 * cluster (16, 8, 4, 2, 1: fewer channels and less shared memory a block)
 * whose channel run is a multiple of 32 and at most CXP_THREADS, and
 * of which a cluster of 16 rows can be resident. Sets cb->cxp_c (0: the
 * conv kernel and the cuBLAS GEMM), cb->cxp_rows and cb->cxp_fit8.
 * SSMD_CUDA_CONV_XPROJ=0 keeps the two kernels; SSMD_CUDA_CXP_ROWS=8|16
 * fixes the rows a cluster, for tests and tuning. Measured on the H200
 * (bf16, ms per step, two kernels -> one, the same binary, two runs each):
 * batch 8 / 16 / 64 130m 0.566 / 0.585 / 0.709 -> 0.530 / 0.547 / 0.679,
 * 1.4b 1.891 / 2.007 / 2.785 -> 1.840 / 1.928 / 2.738, 2.8b 3.010 / 3.350
 * / 4.638 -> 2.997 / 3.313 / 4.645 (its 64 rows in clusters of 16: the H200
 * holds 7 clusters of 16 blocks at once, and 8 of 8 rows were 8% slower).
 * Its conv phase a channel a thread with the loads ahead, and the sums
 * spread over the cluster (round thirty-two): 130m 0.531 / 0.547 / 0.676
 * -> 0.519 / 0.534 / 0.656, 1.4b 1.845 / 1.946 / 2.718 -> 1.794 / 1.890 /
 * 2.671, 2.8b 2.996 / 3.302 / 4.690 -> 2.998 / 3.299 / 4.638; then the
 * first rows' windows in registers before the wait: 130m 0.520 / 0.534 /
 * 0.651 -> 0.501 / 0.516 / 0.635, 1.4b 1.798 / 1.896 / 2.669 -> 1.757 /
 * 1.857 / 2.638, 2.8b 3.006 / 3.312 / 4.630 -> 2.944 / 3.249 / 4.556.
 */
static int cxp_init(cuda_backend *cb)
{
	int rc = SSMD_OK, l, C, n;
	const ssm_config *c = &cb->cfg;
	const int E = c->d_inner;
	const char *env;

	cb->cxp_c = 0;
	cb->cxp_rows = 0;
	cb->cxp_fit8 = 0;
	env = getenv("SSMD_CUDA_CXP_ROWS");
	if (env && (atoi(env) == 8 || atoi(env) == 16))
		cb->cxp_rows = atoi(env);
	env = getenv("SSMD_CUDA_CONV_XPROJ");
	if ((env && atoi(env) == 0) || cb->wsize != 2 || c->d_conv != 4 || E % 32)
		return SSMD_OK;
	for (l = 0; l < c->n_layer; l++)
		if ((uintptr_t)cb->layers[l].x_w % 16)
			return SSMD_OK;
	for (C = CXP_MAX_CLUSTER; C >= 1; C /= 2) {
		if (E % (32 * C) || E / C > CXP_THREADS)
			continue;
		if ((rc = cxp_fit(cb, C, 16, &n)))
			return rc;
		if (n >= 1) {
			cb->cxp_c = C;
			return cxp_fit(cb, C, 8, &cb->cxp_fit8);
		}
	}
	return SSMD_OK;
}

/* The rows a cluster of ssmk_conv_xproj takes in a step of nb rows: 8
 * below 64 rows where all those clusters are resident at once, else 16.
 * Since it starts the SSM step's blocks early (round thirty-three), 64
 * rows gain from clusters of 16 (ms per step, means of two runs: 130m
 * 0.620 -> 0.615, 1.4b 2.535 -> 2.490, 2.8b 4.330 -> 4.327), 8 and 16 rows
 * lose (1.4b batch 8 1.692 -> 1.747, batch 16 1.810 -> 1.891). */
static int cxp_rows(const cuda_backend *cb, int nb)
{
	if (cb->cxp_rows)
		return cb->cxp_rows;
	return nb < 64 && cdiv(nb, 8) <= cb->cxp_fit8 ? 8 : 16;
}

/* Launches ssmk_conv_xproj for layer y over nb rows (cxp_init found it
 * usable), by programmatic dependent launch after the in_proj GEMM. */
static cudaError_t cxp_launch(cuda_backend *cb, const cuda_layer *y, int l, int nb)
{
	const ssm_config *c = &cb->cfg;
	const int C = cb->cxp_c, E = c->d_inner, W = c->dt_rank + 2 * c->d_state;
	const int rows = cxp_rows(cb, nb);
	cudaLaunchConfig_t lc = {};
	cudaLaunchAttribute at[2] = {};

	lc.gridDim = dim3(C, cdiv(nb, rows));
	lc.blockDim = dim3(CXP_THREADS);
	lc.dynamicSmemBytes = cxp_smem_bytes(rows, E / C, W, 2);
	lc.stream = cb->stream;
	at[0].id = cudaLaunchAttributeClusterDimension;
	at[0].val.clusterDim.x = C;
	at[0].val.clusterDim.y = 1;
	at[0].val.clusterDim.z = 1;
	at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[1].val.programmaticStreamSerializationAllowed = 1;
	lc.attrs = at;
	lc.numAttrs = 2;
	return cudaLaunchKernelEx(&lc, cxp_kernel(cb->wdtype, rows),
				  (const float *)cb->act.xz, y->in_b, y->conv_w, y->conv_b,
				  cb->pool, (const int *)cb->d_slots, cb->state_floats,
				  cb->off_conv + (size_t)l * E * (c->d_conv - 1), E, E / C,
				  (const void *)y->x_w, W, nb, cb->act.xc, cb->act.dbc);
}

/* ssmk_gemm_rows<T, MB> as a function pointer (16-bit T, MB 1 or 2) */
typedef void (*gr_kernel_fn)(const void *, int, int, const void *, int, int, float *, int, int,
			     int);

static gr_kernel_fn gr_kernel(ssm_dtype dt, int MB)
{
#define GR_K(T) (MB == 1 ? (gr_kernel_fn)ssmk_gemm_rows<T, 1> : (gr_kernel_fn)ssmk_gemm_rows<T, 2>)
	return dt == SSM_DTYPE_F16 ? GR_K(__half) : GR_K(__nv_bfloat16);
#undef GR_K
}

/* The launch of ssmk_gemm_rows<MB> in form f for a product of K columns
 * (grid, cluster, shared memory, programmatic dependent launch) into lc,
 * whose attributes are at[2]. */
static void gr_config(const cuda_backend *cb, const cuda_gr_form *f, int K, int MB,
		      cudaLaunchConfig_t *lc, cudaLaunchAttribute at[2])
{
	*lc = cudaLaunchConfig_t{};
	at[0] = at[1] = cudaLaunchAttribute{};
	lc->gridDim = dim3(f->s, f->c);
	lc->blockDim = dim3(GR_THREADS);
	lc->dynamicSmemBytes = gr_smem_bytes(MB, K / f->s);
	lc->stream = cb->stream;
	at[0].id = cudaLaunchAttributeClusterDimension;
	at[0].val.clusterDim.x = f->s;
	at[0].val.clusterDim.y = 1;
	at[0].val.clusterDim.z = 1;
	at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[1].val.programmaticStreamSerializationAllowed = 1;
	lc->attrs = at;
	lc->numAttrs = 2;
}

/*
 * The form of ssmk_gemm_rows for an (N, K) product of 8 MB rows (f->nt 0
 * where none fits): of the tiles NT = 32, 64, 128 dividing N and the slices
 * S <= GR_MAX_CLUSTER whose KS = K / S is a multiple of the stage's
 * columns, C = as many clusters as are resident at once (at most the
 * tiles), the one of least estimated time in 16 KB stages of weights. A
 * block's bytes are its tiles' stages and its rows' slice (counted at half:
 * from L2); the k blocks an SM holds share its bandwidth, while a block
 * alone also waits out its pipeline's fill (GR_FILL_STAGES) and, for each
 * tile, its cluster's sums (1 + S / 8). On a tie, fewer slices, then wider
 * tiles. (Counting bytes alone made every form equal and picked clusters of
 * 16 blocks of 2 stages each in 4 rounds: 55 us for a 1.4b in_proj at 16
 * rows, bench/NOTES.md round thirty-four.)
 */
#define GR_FILL_STAGES 4
static int gr_plan(cuda_backend *cb, int N, int K, int MB, cuda_gr_form *f)
{
	int rc = SSMD_OK, optin = 0, NT, S;
	const gr_kernel_fn k = gr_kernel(cb->wdtype, MB);
	double best = 0;

	*f = cuda_gr_form{};
	CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
					cb->device));
	CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
	for (NT = 128; NT >= 32; NT /= 2) {
		for (S = 1; S <= GR_MAX_CLUSTER; S++) {
			const int KS = K / S;
			const size_t smem = gr_smem_bytes(MB, KS);
			cuda_gr_form g = {NT, S, 1};
			cudaLaunchConfig_t lc;
			cudaLaunchAttribute at[2];
			int n = 0;

			if (N % NT || K % S || KS % gr_kc(NT) || smem + 1024 > (size_t)optin)
				continue;
			CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
						      (int)smem));
			gr_config(cb, &g, K, MB, &lc, at);
			lc.numAttrs = 1; /* the cluster only */
			if (cudaOccupancyMaxActiveClusters(&n, k, &lc) != cudaSuccess) {
				cudaGetLastError();
				n = 0;
			}
			if (n < 1)
				continue;
			g.c = N / NT < n ? N / NT : n;
			const int J = cdiv(N / NT, g.c), blocks = g.c * S;
			const double bytes = (double)J * (KS / gr_kc(NT)) + 0.5 * 8 * MB * KS / GR_STAGE;
			const double alone = bytes + GR_FILL_STAGES + J * (1 + S / 8.0);
			const double shared = cdiv(blocks, cb->n_sm) * bytes;
			const double cost = shared > alone ? shared : alone;

			if (!f->nt || cost < best * 0.99) {
				best = cost;
				*f = g;
			}
		}
	}
	/* the shared memory limit of the largest form of this kernel */
	if (f->nt)
		CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
					      (int)(optin - 1024)));
out:
	return rc;
}

/*
 * Whether the batched decode's in_proj and out_proj run as ssmk_gemm_rows
 * (16-bit weights, d_model and d_inner multiples of 64, every layer's
 * in_proj and out_proj 16-byte aligned), and each one's form for the
 * buckets of 8 and 16 rows (cb->gr); SSMD_CUDA_GEMM_ROWS=n keeps cuBLAS
 * above buckets of n rows (0: everywhere), for tests and tuning. A bucket
 * where either product's best form has more than GR_MOST_SLICES K slices
 * (SSMD_CUDA_GEMM_SLICES overrides it, for tests and tuning) keeps cuBLAS
 * for both: every such form measured was slower than cuBLAS (2.8b at 16
 * rows: in_proj in 8 slices 30.0 against 20.5 us a layer, out_proj in 16
 * 22.6 against 12.7; bench/NOTES.md round thirty-four), and every one of
 * at most 6 as fast or faster in the step. The planner's estimate of a
 * cluster's sums is what misjudges them; the cap stands until the sums
 * get cheaper or the estimate right.
 */
#define GR_MOST_SLICES 6
static int gr_init(cuda_backend *cb)
{
	int rc = SSMD_OK, l, i;
	const ssm_config *c = &cb->cfg;
	const int D = c->d_model, E = c->d_inner;
	const char *env = getenv("SSMD_CUDA_GEMM_ROWS");
	const int most = env ? atoi(env) : GR_MAX_ROWS;
	const char *senv = getenv("SSMD_CUDA_GEMM_SLICES");
	const int most_s = senv && atoi(senv) > 0 ? atoi(senv) : GR_MOST_SLICES;

	memset(cb->gr, 0, sizeof(cb->gr));
	if (cb->wsize != 2 || D % 64 || E % 64)
		return SSMD_OK;
	for (l = 0; l < c->n_layer; l++)
		if ((uintptr_t)cb->layers[l].in_w % 16 || (uintptr_t)cb->layers[l].out_w % 16)
			return SSMD_OK;
	for (i = 0; i < 2 && 8 << i <= most && 8 << i <= GR_MAX_ROWS; i++) {
		if ((rc = gr_plan(cb, 2 * E, D, 1 << i, &cb->gr[0][i])) ||
		    (rc = gr_plan(cb, D, E, 1 << i, &cb->gr[1][i])))
			return rc;
		if (cb->gr[0][i].s > most_s || cb->gr[1][i].s > most_s)
			cb->gr[0][i] = cb->gr[1][i] = cuda_gr_form{};
	}
	return SSMD_OK;
}

/* The form of product p (0 in_proj, 1 out_proj) at nb rows (a bucket):
 * NULL where cuBLAS runs it. */
static const cuda_gr_form *gr_form(const cuda_backend *cb, int p, int nb)
{
	if (nb < 8 || nb > GR_MAX_ROWS || !cb->gr[p][log2_of(nb) - 3].nt)
		return NULL;
	return &cb->gr[p][log2_of(nb) - 3];
}

/* Y (nb, N) f32 [ld ldy] = X (nb, K) [ld ldx] . W^T by ssmk_gemm_rows in
 * product p's form (gr_form not NULL), after the kernel ahead by
 * programmatic dependent launch. */
static cudaError_t gr_launch(cuda_backend *cb, int p, const void *W, const void *X, int ldx,
			     float *Y, int ldy, int N, int K, int nb)
{
	const cuda_gr_form *f = gr_form(cb, p, nb);
	const int MB = nb / 8;
	cudaLaunchConfig_t lc;
	cudaLaunchAttribute at[2];

	gr_config(cb, f, K, MB, &lc, at);
	return cudaLaunchKernelEx(&lc, gr_kernel(cb->wdtype, MB), W, K, N, X, ldx, nb, Y, ldy,
				  f->nt, K / f->s);
}

/* ssmk_gemm_wg<T, NT> as a function pointer (16-bit T, NT 32, 64 or 128) */
typedef void (*wg_kernel_fn)(const void *, int, const void *, int, int, float *, int, size_t,
			     int);

static wg_kernel_fn wg_kernel(ssm_dtype dt, int NT)
{
#define WG_K(T)                                                                \
	(NT == 32 ? (wg_kernel_fn)ssmk_gemm_wg<T, 32>                           \
	 : NT == 64 ? (wg_kernel_fn)ssmk_gemm_wg<T, 64> : (wg_kernel_fn)ssmk_gemm_wg<T, 128>)
	return dt == SSM_DTYPE_F16 ? WG_K(__half) : WG_K(__nv_bfloat16);
#undef WG_K
}

/*
 * The form of ssmk_gemm_wg for an (N, K) product in at most most_s K
 * slices (f->nt 0 where none fits): of the tiles NT = 128, 64, 32
 * dividing N and the slices S whose K / S is a multiple of WG_KC, the one
 * whose busiest SM moves the fewest bytes: its blocks (ceil(N / NT S /
 * SMs)) times a block's weights and rows (the rows counted at half: they
 * come from L2). On a tie, the wider tile, then fewer slices. It picks
 * what measured fastest on the H200 (bench/NOTES.md round thirty-six):
 * in_proj / out_proj 32 x 1 / 32 x 2 on 130m, 64 x 1 / 32 x 2 on 1.4b
 * (128 blocks each), 128 x 1 / 64 x 2 on 2.8b (80 blocks each; its in_proj
 * in 160 blocks of 64 took 8% longer a step).
 */
static void wg_plan(const cuda_backend *cb, int N, int K, int most_s, cuda_wg_form *f)
{
	double best = 0;

	*f = cuda_wg_form{};
	for (int NT = 128; NT >= 32; NT /= 2)
		for (int S = 1; S <= most_s; S++) {
			const int KS = K / S;

			if (N % NT || K % S || KS % WG_KC)
				continue;
			const double bytes = (double)NT * KS + 0.5 * WG_ROWS * KS;
			const double cost = cdiv(N / NT * S, cb->n_sm) * bytes;

			if (!f->nt || cost < best * 0.99) {
				best = cost;
				*f = cuda_wg_form{NT, S};
			}
		}
}

/*
 * Whether the batched decode's in_proj and out_proj run as ssmk_gemm_wg at
 * buckets of 32 and 64 rows (16-bit weights, compute capability 9.0, every
 * layer's in_proj and out_proj 16-byte aligned, d_model and d_inner
 * multiples of WG_KC), and each one's form (cb->wg): in_proj in one K
 * slice (xz is read whole by the conv), out_proj in one or two (the next
 * norm adds the second, as it does cuBLAS's split). Measured on the H200
 * (bf16, batch 64, ms a step, two runs each, against cuBLAS in the same
 * call): 130m 0.656, 0.664 -> 0.568, 0.569; 1.4b 2.402, 2.415 -> 2.214,
 * 2.214; 2.8b 4.347, 4.345 -> 4.012, 4.004. SSMD_CUDA_GEMM_WG=0 keeps
 * cuBLAS, for tests and tuning.
 */
static int wg_init(cuda_backend *cb)
{
	int rc = SSMD_OK, major = 0, l, p;
	const ssm_config *c = &cb->cfg;
	const int D = c->d_model, E = c->d_inner;
	const char *env = getenv("SSMD_CUDA_GEMM_WG");

	memset(cb->wg, 0, sizeof(cb->wg));
	CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, cb->device));
	if ((env && atoi(env) == 0) || cb->wsize != 2 || major != 9 || D % WG_KC || E % WG_KC)
		return SSMD_OK;
	for (l = 0; l < c->n_layer; l++)
		if ((uintptr_t)cb->layers[l].in_w % 16 || (uintptr_t)cb->layers[l].out_w % 16)
			return SSMD_OK;
	wg_plan(cb, 2 * E, D, 1, &cb->wg[0]);
	wg_plan(cb, D, E, 2, &cb->wg[1]);
	/* SSMD_CUDA_WG_FORM=nt,s,nt,s sets both forms, for tuning */
	env = getenv("SSMD_CUDA_WG_FORM");
	if (env) {
		int f[4];

		if (sscanf(env, "%d,%d,%d,%d", &f[0], &f[1], &f[2], &f[3]) == 4)
			for (p = 0; p < 2; p++) {
				const int N = p ? D : 2 * E, K = p ? E : D;

				if ((f[2 * p] == 32 || f[2 * p] == 64 || f[2 * p] == 128) &&
				    N % f[2 * p] == 0 && f[2 * p + 1] >= 1 && f[2 * p + 1] <= p + 1 &&
				    K % (f[2 * p + 1] * WG_KC) == 0)
					cb->wg[p] = cuda_wg_form{f[2 * p], f[2 * p + 1]};
			}
	}
	for (p = 0; p < 2; p++)
		if (cb->wg[p].nt)
			CUDA_TRY(cudaFuncSetAttribute(wg_kernel(cb->wdtype, cb->wg[p].nt),
						      cudaFuncAttributeMaxDynamicSharedMemorySize,
						      (int)wg_smem_bytes(cb->wg[p].nt)));
out:
	return rc;
}

/* The form of product p (0 in_proj, 1 out_proj) by ssmk_gemm_wg at nb rows
 * (a bucket): NULL where another kernel runs it. */
static const cuda_wg_form *wg_form(const cuda_backend *cb, int p, int nb)
{
	if (nb <= GR_MAX_ROWS || nb > WG_ROWS || !cb->wg[p].nt)
		return NULL;
	return &cb->wg[p];
}

/* Y (nb, N) f32 [ld ldy] = X (nb, K) [ld ldx] . W^T by ssmk_gemm_wg in
 * product p's form (wg_form not NULL), K slice q's sums at Y + q nb ldy,
 * after the kernel ahead by programmatic dependent launch. */
static cudaError_t wg_launch(cuda_backend *cb, int p, const void *W, const void *X, int ldx,
			     float *Y, int ldy, int N, int K, int nb)
{
	const cuda_wg_form *f = wg_form(cb, p, nb);
	cudaLaunchConfig_t lc = {};
	cudaLaunchAttribute at[1] = {};

	lc.gridDim = dim3(N / f->nt, f->s);
	lc.blockDim = dim3(WG_THREADS);
	lc.dynamicSmemBytes = wg_smem_bytes(f->nt);
	lc.stream = cb->stream;
	at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[0].val.programmaticStreamSerializationAllowed = 1;
	lc.attrs = at;
	lc.numAttrs = 1;
	return cudaLaunchKernelEx(&lc, wg_kernel(cb->wdtype, f->nt), W, K, X, ldx, nb,
				  Y, ldy, (size_t)nb * ldy, K / f->s);
}

/* --------------------------------------------------------------- memory -- */

/* cudaMalloc that remembers the pointer so close frees it. */
static int dev_alloc(cuda_backend *cb, size_t bytes, void **out)
{
	int rc = SSMD_OK;
	void *p = NULL;

	if (cb->n_allocs == cb->cap_allocs) {
		int cap = cb->cap_allocs ? 2 * cb->cap_allocs : 64;
		void **na = (void **)realloc(cb->allocs, cap * sizeof(*na));
		if (!na)
			return ssmd_err_set(SSMD_ENOMEM, "cuda: allocation table");
		cb->allocs = na;
		cb->cap_allocs = cap;
	}
	CUDA_TRY(cudaMalloc(&p, bytes ? bytes : 1));
	cb->allocs[cb->n_allocs++] = p;
	*out = p;
out:
	return rc;
}

static int dev_upload(cuda_backend *cb, const void *src, size_t bytes, void **out)
{
	int rc;
	void *p = NULL;

	rc = dev_alloc(cb, bytes, &p);
	if (rc)
		goto out;
	CUDA_TRY(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
	*out = p;
out:
	return rc;
}

/*
 * Uploads tensor t (numel elements expected). as_weight: in the backend's
 * weight dtype, else f32. transform (f32 only) maps each value (A_log -> A).
 * An absent optional tensor (data NULL) gives *out = NULL.
 */
static int upload_tensor(cuda_backend *cb, const ssm_tensor *t, size_t numel,
			 int as_weight, int neg_exp, void **out)
{
	int rc = SSMD_OK;
	float *f = NULL;
	uint16_t *h = NULL;
	size_t i;

	*out = NULL;
	if (!t->data)
		return SSMD_OK;
	if (ssm_tensor_numel(t) != numel)
		return ssmd_err_set(SSMD_EFORMAT, "cuda: tensor %s has %zu elements, want %zu",
				    t->name, ssm_tensor_numel(t), numel);
	if (as_weight && t->dtype == cb->wdtype)
		return dev_upload(cb, t->data, numel * cb->wsize, out);
	f = (float *)malloc(numel * sizeof(float));
	if (!f) {
		rc = ssmd_err_set(SSMD_ENOMEM, "cuda: converting %s", t->name);
		goto out;
	}
	ssm_tensor_to_f32(t, f, numel);
	if (neg_exp)
		for (i = 0; i < numel; i++)
			f[i] = -expf(f[i]);
	if (!as_weight || cb->wdtype == SSM_DTYPE_F32) {
		rc = dev_upload(cb, f, numel * sizeof(float), out);
		goto out;
	}
	h = (uint16_t *)malloc(numel * sizeof(uint16_t));
	if (!h) {
		rc = ssmd_err_set(SSMD_ENOMEM, "cuda: converting %s", t->name);
		goto out;
	}
	for (i = 0; i < numel; i++)
		h[i] = cb->wdtype == SSM_DTYPE_BF16 ? ssm_f32_to_bf16(f[i])
						    : ssm_f32_to_f16(f[i]);
	rc = dev_upload(cb, h, numel * sizeof(uint16_t), out);
out:
	free(h);
	free(f);
	return rc;
}

#define UP_W(t, n, dst) upload_tensor(cb, &(t), (n), 1, 0, (void **)&(dst))
#define UP_F(t, n, dst) upload_tensor(cb, &(t), (n), 0, 0, (void **)&(dst))

static int upload_weights(cuda_backend *cb)
{
	const ssm_model *m = cb->model;
	const ssm_config *c = &cb->cfg;
	const size_t D = c->d_model, E = c->d_inner, N = c->d_state,
		     K = c->d_conv, R = c->dt_rank, V = c->vocab_size;
	int rc, l;

	if ((rc = UP_W(m->embed, V * D, cb->embed)))
		return rc;
	if (m->lm_head.data == m->embed.data)
		cb->lm_head = cb->embed;
	else if ((rc = UP_W(m->lm_head, V * D, cb->lm_head)))
		return rc;
	if ((rc = UP_F(m->norm_f, D, cb->norm_f)))
		return rc;
	for (l = 0; l < c->n_layer; l++) {
		const ssm_layer_weights *w = &m->layers[l];
		cuda_layer *y = &cb->layers[l];

		if ((rc = UP_F(w->norm, D, y->norm)) ||
		    (rc = UP_W(w->in_proj_w, 2 * E * D, y->in_w)) ||
		    (rc = UP_F(w->in_proj_b, 2 * E, y->in_b)) ||
		    (rc = UP_F(w->conv_w, E * K, y->conv_w)) ||
		    (rc = UP_F(w->conv_b, E, y->conv_b)) ||
		    (rc = UP_W(w->x_proj_w, (R + 2 * N) * E, y->x_w)) ||
		    (rc = UP_W(w->dt_proj_w, E * R, y->dt_w)) ||
		    (rc = UP_F(w->dt_proj_b, E, y->dt_b)) ||
		    (rc = upload_tensor(cb, &w->A_log, E * N, 0, 1, (void **)&y->A)) ||
		    (rc = UP_F(w->D, E, y->Dp)) ||
		    (rc = UP_W(w->out_proj_w, D * E, y->out_w)) ||
		    (rc = UP_F(w->out_proj_b, D, y->out_b)))
			return rc;
		if (!y->norm || !y->in_w || !y->conv_w || !y->x_w || !y->dt_w ||
		    !y->dt_b || !y->A || !y->Dp || !y->out_w)
			return ssmd_err_set(SSMD_EFORMAT, "cuda: layer %d lacks a tensor", l);
	}
	if (!cb->embed || !cb->lm_head || !cb->norm_f)
		return ssmd_err_set(SSMD_EFORMAT, "cuda: model lacks embedding, lm_head or norm_f");
	return SSMD_OK;
}

/* ----------------------------------------------------------------- GEMM -- */

/* Y (n, m) row-major in ytype (f32, or the weight dtype), leading dim ldy
 * =  X (n, k) [ld ldx]  .  W^T (+ Y when acc: the prefill's out_proj adding
 * straight into the residual stream, C = Y with beta = 1), with W (m, k)
 * row-major in the weight dtype; the sums are f32 either way. cuBLAS sees
 * column-major Y^T = W^T' X^T: op(A) = W^T stored as (k, m) column-major. */
static int gemm_ex(cuda_backend *cb, const void *W, const void *X, int ldx, void *Y,
		   cudaDataType ytype, int ldy, int m, int n, int k, int acc)
{
	int rc = SSMD_OK;
	const float one = 1.0f, zero = 0.0f;

	CUBLAS_TRY(cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one,
				W, cb->wtype, k, X, cb->wtype, ldx, acc ? &one : &zero, Y,
				ytype, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
out:
	return rc;
}

static int gemm(cuda_backend *cb, const void *W, const void *X, int ldx,
		float *Y, int ldy, int m, int n, int k)
{
	return gemm_ex(cb, W, X, ldx, Y, CUDA_R_32F, ldy, m, n, k, 0);
}

/* gemm() with Y in the weight dtype (the prefill's in_proj) */
static int gemm_w(cuda_backend *cb, const void *W, const void *X, int ldx, void *Y,
		  int ldy, int m, int n, int k)
{
	return gemm_ex(cb, W, X, ldx, Y, cb->wtype, ldy, m, n, k, 0);
}

/* The prefill x_proj's K slices for L rows: its output (L x W, W = dt_rank +
 * 2 d_state, 160 on 1.4b) makes too few tiles to fill the device from K =
 * d_inner in one product (96 tiles of 64 x 64 for a 2k chunk on 132 SMs), so
 * K is cut until there are about two tiles an SM; the slices land one after
 * the other in act.dbc (P L <= its rows), and ssmk_dt_low adds them. */
static int xproj_slices(const cuda_backend *cb, int L)
{
	const int W = cb->cfg.dt_rank + 2 * cb->cfg.d_state, E = cb->cfg.d_inner;
	const long tiles = (long)cdiv(L, 64) * cdiv(W, 64);
	int P = 1;

	while (2 * P <= cb->xproj_split && (long)2 * P * L <= cb->act.rows &&
	       E % (2 * P * 8) == 0 && tiles * P < 2L * cb->n_sm)
		P *= 2;
	return P;
}

/* gemm() with K cut in P slices, one product each (slice p's Y at Y + p *
 * ldy * n), for the consumer to add: k % P == 0. */
static int gemm_split(cuda_backend *cb, const void *W, const void *X, int ldx,
		      float *Y, int ldy, int m, int n, int k, int P)
{
	int rc = SSMD_OK;
	const float one = 1.0f, zero = 0.0f;

	if (P == 1)
		return gemm(cb, W, X, ldx, Y, ldy, m, n, k);
	CUBLAS_TRY(cublasGemmStridedBatchedEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k / P,
					      &one, W, cb->wtype, k, k / P, X, cb->wtype,
					      ldx, k / P, &zero, Y, CUDA_R_32F, ldy,
					      (long long)ldy * n, P, CUBLAS_COMPUTE_32F,
					      CUBLAS_GEMM_DEFAULT));
out:
	return rc;
}

static int gemm_acc(cuda_backend *cb, const void *W, const void *X, int ldx,
		    float *Y, int ldy, int m, int n, int k)
{
	return gemm_ex(cb, W, X, ldx, Y, CUDA_R_32F, ldy, m, n, k, 1);
}

/* ------------------------------------------------------------- forward -- */

/* ssm_cuda_prefill_split() / _decode_split(): the end of a part. Recording an
 * event is enqueue-only; a failure shows in the split's elapsed times. */
#define SPLIT_CAP 8192
static void split_mark(cuda_backend *cb, int part)
{
	if (cb->split_n < 0)
		return;
	if (cb->split_n < SPLIT_CAP) {
		cb->split_part[cb->split_n] = (unsigned char)part;
		cudaEventRecord(cb->split_ev[cb->split_n], cb->stream);
	}
	cb->split_n++;
}

/* Launches kernel k on s with smem bytes of dynamic shared memory, with
 * programmatic stream serialization when pdl: k may start while the kernel
 * ahead of it drains (launch and block start-up overlap its tail) and waits
 * in pdl_wait() before it reads what that kernel wrote. Measured on the H200
 * (bf16): the batched decode's kernels 2-3% faster per step on 1.4b and 2.8b
 * at batch 4-64, 130m 1-2% slower; the prefill's in prefill_body. */
template <typename... P, typename... A>
static cudaError_t launch_ex(void (*k)(P...), dim3 grid, dim3 block, size_t smem,
			     cudaStream_t s, bool pdl, A... args)
{
	cudaLaunchConfig_t lc = {};
	cudaLaunchAttribute at[1] = {};

	lc.gridDim = grid;
	lc.blockDim = block;
	lc.dynamicSmemBytes = smem;
	lc.stream = s;
	at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[0].val.programmaticStreamSerializationAllowed = 1;
	lc.attrs = at;
	lc.numAttrs = pdl ? 1 : 0;
	return cudaLaunchKernelEx(&lc, k, args...);
}

template <typename... P, typename... A>
static cudaError_t launch_pdl(void (*k)(P...), dim3 grid, dim3 block, cudaStream_t s,
			      A... args)
{
	return launch_ex(k, grid, block, 0, s, true, args...);
}

#define NPL_SWITCH(npl, CALL)                                                \
	switch (npl) {                                                       \
	case 1: CALL(1); break;                                              \
	case 2: CALL(2); break;                                              \
	case 4: CALL(4); break;                                              \
	case 8: CALL(8); break;                                              \
	default: CALL(16); break;                                            \
	}

/*
 * One decode step over rows [0, nb) of d_slots / d_tokens (padding rows have
 * slot -1): logits (nb, vocab) in act.logits, every real slot advanced.
 * Only enqueues work on cb->stream (it is what the graphs capture).
 */
template <typename T>
static int decode_body(cuda_backend *cb, int nb)
{
	int rc = SSMD_OK;
	const ssm_config *c = &cb->cfg;
	const int D = c->d_model, E = c->d_inner, N = c->d_state, K = c->d_conv,
		  R = c->dt_rank, V = c->vocab_size, W = R + 2 * N;
	const size_t sf = cb->state_floats;
	cuda_act *a = &cb->act;
	/* in_proj and out_proj by ssmk_gemm_rows (else cuBLAS); cuBLAS's
	 * out_proj's second K slice, which the next norm adds (out_split 2) */
	const bool gr_in = gr_form(cb, 0, nb), gr_out = gr_form(cb, 1, nb);
	/* ... or by ssmk_gemm_wg, whose out_proj may write two K slices too */
	const cuda_wg_form *wg_in = wg_form(cb, 0, nb), *wg_out = wg_form(cb, 1, nb);
	const int out_slices = gr_out ? 1 : wg_out ? wg_out->s : cb->out_split;
	const float *mix2 = out_slices == 2 ? a->mix + (size_t)nb * D : NULL;
	cudaStream_t s = cb->stream;
	int l;

	ssmk_embed<T><<<nb, 256, 0, s>>>(cb->d_tokens, (const T *)cb->embed, a->h, D);
	CUDA_LAUNCHED();
	split_mark(cb, SSM_CUDA_TAIL);
	for (l = 0; l < c->n_layer; l++) {
		const cuda_layer *y = &cb->layers[l];
		const cuda_layer *p = l ? &cb->layers[l - 1] : NULL;

		CUDA_TRY(launch_pdl(ssmk_add_norm<T>, nb, 256, s, a->h, p ? a->mix : NULL,
				    p ? mix2 : NULL, p ? p->out_b : NULL, y->norm,
				    (T *)a->xn, D, c->eps, (float *)NULL, (const int *)NULL,
				    (size_t)0, (size_t)0));
		split_mark(cb, SSM_CUDA_NORM);
		if (gr_in)
			CUDA_TRY(gr_launch(cb, 0, y->in_w, a->xn, D, (float *)a->xz, 2 * E, 2 * E,
					   D, nb));
		else if (wg_in)
			CUDA_TRY(wg_launch(cb, 0, y->in_w, a->xn, D, (float *)a->xz, 2 * E, 2 * E,
					   D, nb));
		else if ((rc = gemm(cb, y->in_w, a->xn, D, (float *)a->xz, 2 * E, 2 * E, nb, D)))
			goto out;
		split_mark(cb, SSM_CUDA_IN_PROJ);
		if (cb->cxp_c) {
			/* one kernel, which the split counts as the conv */
			CUDA_TRY(cxp_launch(cb, y, l, nb));
			split_mark(cb, SSM_CUDA_CONV);
		} else {
			CUDA_TRY(launch_pdl(K == 4 ? ssmk_conv_step<T, 4> : ssmk_conv_step<T, 0>,
					    dim3(cdiv(E, 128), nb), 128, s, (const float *)a->xz,
					    y->in_b, y->conv_w, y->conv_b, cb->pool, cb->d_slots,
					    sf, cb->off_conv + (size_t)l * E * (K - 1), E, K,
					    a->xc, (T *)a->xcT));
			split_mark(cb, SSM_CUDA_CONV);
			if ((rc = gemm(cb, y->x_w, a->xcT, E, a->dbc, W, W, nb, E)))
				goto out;
			split_mark(cb, SSM_CUDA_X_PROJ);
		}
#define SSM_STEP(npl)                                                         \
	CUDA_TRY(launch_pdl(ssmk_ssm_step_b<T, npl, SSM_STEP_ROWS>,           \
			    dim3(cdiv(E, SSM_CH_PER_BLOCK), cdiv(nb, SSM_STEP_ROWS)), \
			    128, s, (const float *)a->dbc, R, (const T *)y->dt_w,   \
			    y->dt_b, y->A, y->Dp, a->xc, (const float *)a->xz, y->in_b, \
			    cb->pool,                                               \
			    cb->d_slots, sf, (size_t)l * E * N,                     \
			    cb->off_dt_sum + (size_t)l * E, E, nb, (T *)a->yT))
		if (std::is_same<T, __nv_bfloat16>::value && step_mma_on(cb, nb))
			CUDA_TRY(launch_ex(ssmk_ssm_step_mma,
					   dim3(E / 32, cdiv(nb, STEP_MMA_ROWS)), 256,
					   step_mma_smem_bytes(R), s, true,
					   (const float *)a->dbc, R,
					   (const __nv_bfloat16 *)y->dt_w, y->dt_b, y->A, y->Dp,
					   (const float *)a->xc, (const float *)a->xz, y->in_b,
					   cb->pool, (const int *)cb->d_slots, sf,
					   (size_t)l * E * N, cb->off_dt_sum + (size_t)l * E, E,
					   nb, (__nv_bfloat16 *)a->yT));
		else
			NPL_SWITCH(N / SSM_LANES, SSM_STEP);
#undef SSM_STEP
		split_mark(cb, SSM_CUDA_SSM_STEP);
		if (gr_out)
			CUDA_TRY(gr_launch(cb, 1, y->out_w, a->yT, E, a->mix, D, D, E, nb));
		else if (wg_out)
			CUDA_TRY(wg_launch(cb, 1, y->out_w, a->yT, E, a->mix, D, D, E, nb));
		else if ((rc = gemm_split(cb, y->out_w, a->yT, E, a->mix, D, D, nb, E,
					  cb->out_split)))
			goto out;
		split_mark(cb, SSM_CUDA_OUT_PROJ);
	}
	CUDA_TRY(launch_pdl(ssmk_add_norm<T>, nb, 256, s, a->h, a->mix, mix2,
			    cb->layers[c->n_layer - 1].out_b, cb->norm_f, (T *)a->xn, D,
			    c->eps, cb->pool, cb->d_slots, sf, cb->off_hidden));
	if ((rc = gemm(cb, cb->lm_head, a->xn, D, a->logits, V, V, nb, D)))
		goto out;
	/* every row's next token too (decode_sample reads it, decode not) */
	ssmk_sample<<<nb, SAMPLE_THREADS, 0, s>>>(a->logits, V, cb->d_samp, sample_out(cb));
	CUDA_LAUNCHED();
	split_mark(cb, SSM_CUDA_HEAD);
out:
	return rc;
}

/*
 * The batch-1 step (and 2 or 4 rows, cuda_persist_nb.cuh) as one persistent
 * kernel (cuda_persist.cuh), its sampling included (pk_sample): the same
 * contract as decode_body at nb rows. Launched cooperatively, so every
 * block is resident (or the launch fails).
 */
template <typename T>
static int decode_persist(cuda_backend *cb, int nb)
{
	int rc = SSMD_OK;
	const ssm_config *c = &cb->cfg;
	cuda_act *a = &cb->act;
	cudaStream_t s = cb->stream;
	cudaLaunchAttribute at[1] = {};
	cudaLaunchConfig_t lc = {};
	pk_args p = {};

	p.layers = cb->d_layers;
	p.embed = cb->embed;
	p.lm_head = cb->lm_head;
	p.norm_f = cb->norm_f;
	p.pool = cb->pool;
	p.slots = cb->d_slots;
	p.tokens = cb->d_tokens;
	p.state_floats = cb->state_floats;
	p.off_conv = cb->off_conv;
	p.off_hidden = cb->off_hidden;
	p.off_dt_sum = cb->off_dt_sum;
	p.D = c->d_model;
	p.E = c->d_inner;
	p.N = c->d_state;
	p.K = c->d_conv;
	p.R = c->dt_rank;
	p.V = c->vocab_size;
	p.W = c->dt_rank + 2 * c->d_state;
	p.n_layer = c->n_layer;
	p.eps = c->eps;
	p.xz = (float *)a->xz;
	p.xc = a->xc;
	p.h = a->h;
	p.logits = a->logits;
	p.yT = a->yT;
	p.bar = cb->pk_bar + (nb == 1 ? 0 : 1);
	p.trace = cb->pk_trace;
	p.xwb = nb == 1 ? cb->pk_xwb : cb->pkn_xwb;
	p.M = pk_xw_m(p.E, cb->pk_grid, nb);
	p.xacc = cb->pk_xacc;
	p.osum = cb->pk_osum;
	p.hbuf = cb->pk_hbuf;
	p.samp = cb->d_samp;
	p.next = sample_out(cb);
	p.cand = cb->pk_cand;
	p.csum = (double *)(cb->pk_cand + 4 * cb->pk_grid);

	at[0].id = cudaLaunchAttributeCooperative;
	at[0].val.cooperative = 1;
	lc.gridDim = dim3(cb->pk_grid);
	lc.blockDim = dim3(PK_THREADS);
	lc.dynamicSmemBytes = pk_smem_bytes(nb, p.D, p.E, p.W, cb->pk_grid, sizeof(T), p.n_layer);
	lc.stream = s;
	lc.attrs = at;
	lc.numAttrs = 1;
#define PERSIST(npl)                                                                   \
	CUDA_TRY(cudaLaunchKernelEx(&lc,                                               \
				    nb == 1 ? pk_kernel<T, npl>(cb->pk_pf, cb->pk_groups) \
					    : pkn_kernel<T>(nb),                          \
				    p))
	NPL_SWITCH(c->d_state / SSM_LANES, PERSIST);
#undef PERSIST
out:
	return rc;
}

/* Whether persistent kernel k fits on this device with smem bytes of
 * dynamic shared memory (*fits): within the opt-in limit, with ~1 KB of
 * static (red and base) besides, and one block of PK_THREADS resident an
 * SM. Sets k's dynamic shared memory limit to smem. */
static int pk_fits(cuda_backend *cb, pk_kernel_fn k, size_t smem, int *fits)
{
	int rc = SSMD_OK, optin = 0, occ = 0;

	*fits = 0;
	CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
					cb->device));
	if (smem + 1024 > (size_t)optin)
		return SSMD_OK;
	CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
	CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k, PK_THREADS, smem));
	*fits = occ >= 1;
out:
	return rc;
}

/* Whether a persistent kernel serves this step: persist_init_t found a
 * grid for it on this device, and one row, or 2 or 4 rows where it found
 * the multi-row kernels usable (pkn_init_t). */
static int decode_persist_ok(const cuda_backend *cb, int nb)
{
	return cb->pk_grid > 0 &&
	       (nb == 1 || (pkn_rows_ok(nb) && nb <= cb->pkn_rows));
}

template <typename T>
static int decode_any_nb(cuda_backend *cb, int nb)
{
	int rc = SSMD_OK;

	if (cb->io_mapped & 2) {
		ssmk_io_in<<<1, 256, 0, cb->stream>>>((const unsigned *)cb->dh_io,
						      (unsigned *)cb->d_io,
						      (int)(io_step_bytes(cb, nb) / 4));
		CUDA_LAUNCHED();
	}
	if (decode_persist_ok(cb, nb))
		return decode_persist<T>(cb, nb);
	return decode_body<T>(cb, nb);
out:
	return rc;
}

static int decode_body_any(cuda_backend *cb, int nb)
{
	switch (cb->wdtype) {
	case SSM_DTYPE_F32: return decode_any_nb<float>(cb, nb);
	case SSM_DTYPE_F16: return decode_any_nb<__half>(cb, nb);
	default: return decode_any_nb<__nv_bfloat16>(cb, nb);
	}
}

/*
 * Copies floats [off, off + width) of the nq checkpoint states in d_ck to the
 * same place in h_ck, on the copy stream once the compute stream has come
 * this far: a layer's part of every checkpoint travels while the next layers
 * compute.
 */
static int ck_copy_part(cuda_backend *cb, const float *d_ck, float *h_ck, int nq,
			size_t off, size_t width)
{
	int rc = SSMD_OK;
	const size_t pitch = cb->state_floats * sizeof(float);

	CUDA_TRY(cudaMemcpy2DAsync(h_ck + off, pitch, d_ck + off, pitch, width * sizeof(float),
				   nq, cudaMemcpyDeviceToHost, cb->copy_stream));
out:
	return rc;
}

/* The scan's pass 1 (ssmk_scan_local<NPL, TW, TX>) on grid: its
 * shared-memory opt-in where smem needs it, then the launch. */
template <int NPL, typename TW, typename TX>
static cudaError_t launch_scan_local(dim3 grid, size_t smem, cudaStream_t s, bool pdl,
				     float *dtr, const float *dt_b, const TW *dlo,
				     const TW *dt_w, const float *dbc, int R, const TX *xc,
				     const float *A, float *seg_h, float *seg_dt, int E, int L,
				     int seg_len)
{
	cudaError_t e = cudaSuccess;

	if (scan_smem_optin(smem))
		e = cudaFuncSetAttribute(ssmk_scan_local<NPL, TW, TX>,
					 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
	if (e != cudaSuccess)
		return e;
	return launch_ex(ssmk_scan_local<NPL, TW, TX>, grid, SCAN_THREADS, smem, s, pdl, dtr,
			 dt_b, dlo, dt_w, dbc, R, xc, A, seg_h, seg_dt, E, L, seg_len);
}

/* Whether the prefill's dt_proj runs inside the scan's pass 1, on the tensor
 * cores: 16-bit weights and dt_rank a multiple of 16 up to DT_FUSED_RMAX,
 * unless SSMD_CUDA_DT_FUSED=0 at open. */
static bool dt_fused_on(const cuda_backend *cb)
{
	const int R = cb->cfg.dt_rank;

	return cb->dt_fused && cb->wdtype != SSM_DTYPE_F32 && R % 16 == 0 &&
	       R <= DT_FUSED_RMAX;
}

/*
 * Prefill of L tokens (already in d_tokens) into slot. nq checkpoint
 * positions (chunk-relative, ascending, distinct) are in d_ck_pos: their
 * full states land in d_ck + k * state_floats, and each layer's part
 * of them goes on to h_ck (pinned, same layout) on the copy stream right
 * after that layer. Enqueues only.
 */
template <typename T>
static int prefill_body(cuda_backend *cb, int slot, int L, int nq, float *d_ck, float *h_ck)
{
	int rc = SSMD_OK;
	const ssm_config *c = &cb->cfg;
	const int D = c->d_model, E = c->d_inner, N = c->d_state, K = c->d_conv,
		  R = c->dt_rank, W = R + 2 * N;
	const size_t sf = cb->state_floats;
	float *base = cb->pool + (size_t)slot * sf;
	cuda_act *a = &cb->act;
	cudaStream_t s = cb->stream;
	const int seg_len = cb->scan_seg;
	const int nseg = cdiv(L, seg_len);
	/* with dt_proj in pass 1 (dt_fused_on) there is no dt GEMM, and pass 1
	 * makes every segment's dt, the last one's too, so pass 3 finds them all
	 * ready. Otherwise the GEMM writes dtr and pass 1 covers the segments
	 * but the last (whose end state from zero is never needed). */
	const bool dt_fused = !std::is_same<T, float>::value && dt_fused_on(cb);
	const int nseg1 = dt_fused ? nseg : nseg - 1;
	const size_t smem1 = scan_smem_bytes(N, true, scan_lo_pitch(R, dt_fused), sizeof(T)),
		     smem3 = scan_smem_bytes(N, false, 0, sizeof(T));
	const bool norm_v4 = D % 4 == 0 && D <= 4 * 256 * NORM_V4;
	/* the norm a row a block: 128 threads where they hold the row (d_model
	 * up to 2048), so that twice the rows are in flight (8 blocks an SM, by
	 * registers, against 4 of 256 threads) */
	const int norm_threads = D % 4 == 0 && D <= 4 * 128 * NORM_V4 ? 128 : 256;
	const int xsplit = xproj_slices(cb, L);
	const bool conv_run = K == 4 && E % 4 == 0;
	/* the layer's own kernels by programmatic dependent launch, each
	 * started while the kernel ahead drains (cuBLAS's GEMMs keep stream
	 * order). Measured on the H200 (bf16, 2k tokens): 130m 8%, 1.4b 3%,
	 * 2.8b 1% faster */
	const bool pdl = cb->prefill_pdl;
	/* the activations between kernels in T, as the GEMMs read them (half
	 * the bytes of f32 with 16-bit weights): in_proj's x | z, and the
	 * conv's output in xcT, which x_proj and both scan passes read */
	T *xz = (T *)a->xz, *xc = (T *)a->xcT;
	int l;

	ssmk_embed<T><<<L, 256, 0, s>>>(cb->d_tokens, (const T *)cb->embed, a->h, D);
	CUDA_LAUNCHED();
	split_mark(cb, SSM_CUDA_TAIL);
	for (l = 0; l < c->n_layer; l++) {
		const cuda_layer *y = &cb->layers[l];
		const cuda_layer *p = l ? &cb->layers[l - 1] : NULL;
		const size_t conv_off = cb->off_conv + (size_t)l * E * (K - 1);
		const size_t ssm_off = (size_t)l * E * N;
		const size_t dts_off = cb->off_dt_sum + (size_t)l * E;
		/* every out_proj but the last adds into h itself (GEMM beta = 1) */
		const bool acc = norm_v4 && l + 1 < c->n_layer;

		if (norm_v4)
			CUDA_TRY(launch_ex(ssmk_norm_rows<T>, L, norm_threads, 0, s, pdl, a->h,
					   p ? p->out_b : NULL, y->norm, (T *)a->xn, D,
					   c->eps));
		else
			CUDA_TRY(launch_ex(ssmk_add_norm<T>, L, 256, 0, s, pdl, a->h,
					   p ? a->mix : NULL, (const float *)NULL,
					   p ? p->out_b : NULL, y->norm, (T *)a->xn, D,
					   c->eps, (float *)NULL, (const int *)NULL, 0, 0));
		split_mark(cb, SSM_CUDA_NORM);
		if ((rc = gemm_w(cb, y->in_w, a->xn, D, xz, 2 * E, 2 * E, L, D)))
			goto out;
		split_mark(cb, SSM_CUDA_IN_PROJ);
		if (conv_run) {
			/* with the checkpoints' conv windows and the slot's */
			CUDA_TRY(launch_ex(ssmk_conv_run<T, 4>,
					   dim3(cdiv(E, 512), cdiv(L, CONV_RUN)), 128, 0, s,
					   pdl, (const T *)xz, y->in_b, y->conv_w, y->conv_b,
					   base + conv_off, E, L, xc, cb->d_ck_pos, nq,
					   d_ck + conv_off, sf));
		} else {
			CUDA_TRY(launch_ex(ssmk_conv_seq<T>, dim3(cdiv(E, 128), L), 128, 0,
					   s, pdl, (const T *)xz, y->in_b, y->conv_w, y->conv_b,
					   base + conv_off, E, K, xc));
			/* the checkpoints' windows and the slot's own, after
			 * the conv read the slot's */
			CUDA_TRY(launch_ex(ssmk_conv_window<T>, dim3(cdiv(E, 128), nq + 1), 128,
					   0, s, pdl, (const T *)xz, y->in_b, base + conv_off,
					   cb->d_ck_pos, nq, d_ck + conv_off, sf, L, E, K));
		}
		split_mark(cb, SSM_CUDA_CONV);
		if ((rc = gemm_split(cb, y->x_w, xc, E, a->dbc, W, W, L, E, xsplit)))
			goto out;
		split_mark(cb, SSM_CUDA_X_PROJ);
		CUDA_TRY(launch_ex(ssmk_dt_low<T>, L, dt_low_threads(W, R, xsplit), 0, s, pdl,
				   a->dbc, W, R, xsplit, (size_t)L * W, (T *)a->dlT));
		if (!dt_fused && (rc = gemm(cb, y->dt_w, a->dlT, R, a->dtr, E, E, L, R)))
			goto out;
		split_mark(cb, SSM_CUDA_DT);
		/* pass 1 leaves softplus'd dt in dtr for segments < nseg1 */
#define SCAN(npl)                                                             \
	do {                                                                  \
		constexpr int n_ = SSM_LANES * npl;                           \
		const dim3 g1(cdiv(E, SSM_CH_PER_BLOCK), nseg1);              \
		if (scan_smem_optin(smem3))                                   \
			CUDA_TRY(cudaFuncSetAttribute(                        \
				ssmk_scan<T, n_>,                             \
				cudaFuncAttributeMaxDynamicSharedMemorySize,  \
				(int)smem3));                                 \
		if (dt_fused) /* never with T float */                        \
			CUDA_TRY((launch_scan_local<npl, T, T>(g1, smem1, s,  \
				pdl, a->dtr, y->dt_b, (const T *)a->dlT,      \
				(const T *)y->dt_w, a->dbc, R, xc, y->A,      \
				a->seg_h, a->seg_dt, E, L, seg_len)));        \
		else if (nseg1 > 0)                                           \
			CUDA_TRY((launch_scan_local<npl, float, T>(g1, smem1, \
				s, pdl, a->dtr, y->dt_b, (const float *)NULL, \
				(const float *)NULL, a->dbc, R, xc, y->A,     \
				a->seg_h, a->seg_dt, E, L, seg_len)));        \
		if (nseg > 1) {                                               \
			CUDA_TRY(launch_ex(ssmk_scan_combine, cdiv(E * N, 256), \
				256, 0, s, pdl, y->A, base + ssm_off,         \
				base + dts_off, a->seg_h, a->seg_dt,          \
				a->start_h, a->start_d, E, N, nseg));         \
		}                                                             \
		split_mark(cb, SSM_CUDA_SCAN1);                               \
		CUDA_TRY(launch_ex(ssmk_scan<T, n_>,                          \
			dim3(cdiv(E, SCAN_THREADS), nseg), SCAN_THREADS,      \
			smem3, s, pdl, a->dtr, y->dt_b, nseg1, a->dbc, R,     \
			xc, xz, y->in_b, y->A, y->Dp,                         \
			nseg > 1 ? a->start_h : base + ssm_off,               \
			nseg > 1 ? a->start_d : base + dts_off,               \
			(size_t)E * N, (size_t)E, base + ssm_off,             \
			base + dts_off, E, L, seg_len, cb->d_ck_pos, nq, d_ck,\
			sf, ssm_off, dts_off, (T *)a->yT));                   \
	} while (0)
		NPL_SWITCH(N / SSM_LANES, SCAN);
#undef SCAN
		split_mark(cb, SSM_CUDA_SCAN2);
		if (nq) {
			CUDA_TRY(cudaEventRecord(cb->ev_compute, s));
			CUDA_TRY(cudaStreamWaitEvent(cb->copy_stream, cb->ev_compute, 0));
			if ((rc = ck_copy_part(cb, d_ck, h_ck, nq, ssm_off, (size_t)E * N)) ||
			    (rc = ck_copy_part(cb, d_ck, h_ck, nq, conv_off, (size_t)E * (K - 1))) ||
			    (rc = ck_copy_part(cb, d_ck, h_ck, nq, dts_off, (size_t)E)))
				goto out;
		}
		if ((rc = acc ? gemm_acc(cb, y->out_w, a->yT, E, a->h, D, D, L, E)
			      : gemm(cb, y->out_w, a->yT, E, a->mix, D, D, L, E)))
			goto out;
		split_mark(cb, SSM_CUDA_OUT_PROJ);
	}
	CUDA_TRY(launch_ex(ssmk_add_norm<T>, L, 256, 0, s, pdl, a->h, (const float *)a->mix,
			   (const float *)NULL, cb->layers[c->n_layer - 1].out_b, cb->norm_f,
			   (T *)a->xn, D, c->eps, (float *)NULL, (const int *)NULL, 0, 0));
	CUDA_TRY(cudaMemcpyAsync(base + cb->off_hidden, a->h + (size_t)(L - 1) * D,
				 D * sizeof(float), cudaMemcpyDeviceToDevice, s));
	if (nq) {
		ssmk_ck_hidden<<<nq, 256, 0, s>>>(a->h, cb->d_ck_pos, D, d_ck + cb->off_hidden,
						  sf);
		CUDA_LAUNCHED();
		CUDA_TRY(cudaEventRecord(cb->ev_compute, s));
		CUDA_TRY(cudaStreamWaitEvent(cb->copy_stream, cb->ev_compute, 0));
		if ((rc = ck_copy_part(cb, d_ck, h_ck, nq, cb->off_hidden, (size_t)D)))
			goto out;
	}
	split_mark(cb, SSM_CUDA_TAIL);
out:
	return rc;
}

static int prefill_body_any(cuda_backend *cb, int slot, int L, int nq, float *d_ck,
			    float *h_ck)
{
	switch (cb->wdtype) {
	case SSM_DTYPE_F32: return prefill_body<float>(cb, slot, L, nq, d_ck, h_ck);
	case SSM_DTYPE_F16: return prefill_body<__half>(cb, slot, L, nq, d_ck, h_ck);
	default: return prefill_body<__nv_bfloat16>(cb, slot, L, nq, d_ck, h_ck);
	}
}

/* Logits of rows [r0, r0 + n) of act.xn into act.logits rows [0, n). */
static int logits_rows(cuda_backend *cb, int r0, int n)
{
	const int D = cb->cfg.d_model, V = cb->cfg.vocab_size;

	return gemm(cb, cb->lm_head, (const char *)cb->act.xn + (size_t)r0 * D * cb->wsize,
		    D, cb->act.logits, V, V, n, D);
}

/* -------------------------------------------------------------- decode -- */

/* The instantiated graph of bucket nb, captured on first use. */
static int graph_get(cuda_backend *cb, int nb, cudaGraphExec_t *out)
{
	int rc = SSMD_OK, capturing = 0;
	cuda_graph *g = &cb->graphs[log2_of(nb)];
	cudaGraph_t graph = NULL;

	if (g->exec) {
		*out = g->exec;
		return SSMD_OK;
	}
	CUDA_TRY(cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal));
	capturing = 1;
	rc = decode_body_any(cb, nb);
	capturing = 0;
	{
		cudaError_t e = cudaStreamEndCapture(cb->stream, &graph);
		if (rc)
			goto out;
		CUDA_TRY(e);
	}
	CUDA_TRY(cudaGraphInstantiate(&g->exec, graph, 0));
	g->graph = graph;
	graph = NULL;
	*out = g->exec;
out:
	if (capturing) {
		cudaStreamEndCapture(cb->stream, &graph);
		cudaGetLastError();
	}
	if (graph)
		cudaGraphDestroy(graph);
	return rc;
}

/* Writes the slots and tokens of rows [0, n) and padding up to bucket nb
 * (slot -1, token 0, greedy) into h_io, and copies them to the device in one
 * copy unless the step's graph reads them from there itself (io_mapped bit
 * 2). */
static int decode_inputs(cuda_backend *cb, const int *slots, const int32_t *tokens,
			 int n, int nb)
{
	int rc = SSMD_OK, i;

	for (i = 0; i < nb; i++) {
		cb->h_slots[i] = i < n ? slots[i] : -1;
		cb->h_tokens[i] = i < n ? tokens[i] : 0;
		if (i >= n)
			memset(&cb->h_samp[i], 0, sizeof(cuda_sampler)); /* greedy */
	}
	/* slots, samplers and the first nb tokens in one copy */
	if (!(cb->io_mapped & 2))
		CUDA_TRY(cudaMemcpyAsync(cb->d_io, cb->h_io, io_step_bytes(cb, nb),
					 cudaMemcpyHostToDevice, cb->stream));
out:
	return rc;
}

/* Runs one decode step on rows [0, n) (n <= max_batch): hands slots and
 * tokens in, replays the bucket's graph. Leaves logits in act.logits, the
 * sampled tokens in h_next (io_mapped bit 1) or d_next. */
static int decode_launch(cuda_backend *cb, const int *slots,
			 const int32_t *tokens, int n)
{
	int rc = SSMD_OK, i;
	const int nb = bucket_of(n);
	cudaGraphExec_t exec = NULL;

	if ((rc = decode_inputs(cb, slots, tokens, n, nb)))
		goto out;
	if ((rc = graph_get(cb, nb, &exec)))
		goto out;
	CUDA_TRY(cudaGraphLaunch(exec, cb->stream));
	for (i = 0; i < n; i++)
		cb->n_tokens[slots[i]]++;
out:
	return rc;
}

static int cuda_decode(ssm_backend *b, const int *slots, const int32_t *tokens,
		       int n, float *logits)
{
	cuda_backend *cb = cb_of(b);
	const size_t V = cb->cfg.vocab_size;
	int rc = SSMD_OK, off;

	CUDA_TRY(cudaSetDevice(cb->device));
	for (off = 0; off < n; off += cb->max_batch) {
		int cnt = n - off < cb->max_batch ? n - off : cb->max_batch;

		if ((rc = decode_launch(cb, slots + off, tokens + off, cnt)))
			goto out;
		CUDA_TRY(cudaMemcpyAsync(cb->h_logits, cb->act.logits,
					 cnt * V * sizeof(float),
					 cudaMemcpyDeviceToHost, cb->stream));
		CUDA_TRY(cudaStreamSynchronize(cb->stream));
		memcpy(logits + off * V, cb->h_logits, cnt * V * sizeof(float));
	}
out:
	return rc;
}

static int cuda_decode_sample(ssm_backend *b, const int *slots,
			      const int32_t *tokens, int n,
			      const ssm_sampler *samplers, const uint64_t *index,
			      int32_t *next)
{
	cuda_backend *cb = cb_of(b);
	const int V = cb->cfg.vocab_size;
	int rc = SSMD_OK, off, i;

	CUDA_TRY(cudaSetDevice(cb->device));
	for (off = 0; off < n; off += cb->max_batch) {
		int cnt = n - off < cb->max_batch ? n - off : cb->max_batch;

		for (i = 0; i < cnt; i++) {
			cuda_sampler *p = &cb->h_samp[i];
			p->temperature = samplers[off + i].temperature;
			p->top_k = samplers[off + i].top_k;
			p->top_p = samplers[off + i].top_p;
			p->seed = samplers[off + i].seed;
			p->index = index[off + i];
		}
		if ((rc = decode_launch(cb, slots + off, tokens + off, cnt)))
			goto out;
		if (!(cb->io_mapped & 1))
			CUDA_TRY(cudaMemcpyAsync(cb->h_next, cb->d_next, cnt * sizeof(int32_t),
						 cudaMemcpyDeviceToHost, cb->stream));
		CUDA_TRY(cudaStreamSynchronize(cb->stream));
		for (i = 0; i < cnt; i++) {
			if (cb->h_next[i] >= 0) {
				next[off + i] = cb->h_next[i];
				continue;
			}
			/* top-k / top-p, or too close to call: the host picks */
			cb->host_picks++;
			CUDA_TRY(cudaMemcpy(cb->h_logits, cb->act.logits + (size_t)i * V,
					    V * sizeof(float), cudaMemcpyDeviceToHost));
			next[off + i] = ssm_sample(cb->h_logits, V, &samplers[off + i],
						   index[off + i]);
			if (next[off + i] < 0) {
				rc = ssmd_err_set(-next[off + i], "cuda: host sampling");
				goto out;
			}
		}
	}
out:
	return rc;
}

/* ------------------------------------------------------------- prefill -- */

/* A prefill chunk whose checkpoint states are on their way to the host
 * (h_ck buffer `buf`): checkpoint indices [ci, cj) of the prefill, at
 * chunk-relative positions qs[0..nq) of the chunk starting at pos. */
typedef struct ck_pending {
	int active, buf, nq;
	size_t pos, ci, cj;
	int qs[CUDA_CK_MAX];
} ck_pending;

static float *ck_dev(cuda_backend *cb, int buf)
{
	return cb->d_ck + (size_t)buf * cb->ck_max * cb->state_floats;
}

/* Waits for p's copy and calls the callback for each of its checkpoints with
 * a view of the pinned buffer (no host copy). If the callback aborts, the
 * slot is set back to that checkpoint's state (still intact in d_ck: later
 * chunks write the other buffer) and its code is returned. */
static int ck_deliver(cuda_backend *cb, int slot, const ssm_prefill_args *a,
		      uint64_t start_tokens, ck_pending *p)
{
	const size_t sf = cb->state_floats;
	ssm_state *st = &cb->ck_view;
	int rc = SSMD_OK, k = 0;
	size_t i;

	p->active = 0;
	CUDA_TRY(cudaEventSynchronize(cb->ev_ck[p->buf]));
	for (i = p->ci; i < p->cj; i++) {
		const size_t pos = a->ckpt_pos[i];
		const float *src;

		while (p->qs[k] != (int)(pos - p->pos))
			k++;
		src = cb->h_ck + ((size_t)p->buf * cb->ck_max + k) * sf;
		st->ssm = (float *)src;
		st->conv = (float *)src + cb->off_conv;
		st->hidden = (float *)src + cb->off_hidden;
		st->dt_sum = (float *)src + cb->off_dt_sum;
		st->n_tokens = start_tokens + pos;
		rc = a->ckpt_fn(a->ckpt_ctx, pos, st);
		if (rc) {
			CUDA_TRY(cudaMemcpyAsync(cb->pool + (size_t)slot * sf,
						 ck_dev(cb, p->buf) + (size_t)k * sf,
						 sf * sizeof(float),
						 cudaMemcpyDeviceToDevice, cb->stream));
			CUDA_TRY(cudaStreamSynchronize(cb->stream));
			cb->n_tokens[slot] = start_tokens + pos;
			goto out;
		}
	}
out:
	return rc;
}

/*
 * Chunks of at most cb->chunk tokens (cut short so that a chunk holds at
 * most ck_max distinct checkpoint positions). A chunk's checkpoint states go
 * to the host on the copy stream layer by layer as the chunk computes (two
 * buffers), and their callbacks run while the next chunk computes.
 */
static int cuda_prefill(ssm_backend *b, int slot, const ssm_prefill_args *a)
{
	cuda_backend *cb = cb_of(b);
	const size_t V = cb->cfg.vocab_size, sf = cb->state_floats;
	const uint64_t start_tokens = cb->n_tokens[slot];
	ck_pending pend[2];
	size_t pos = 0, ci = 0;
	int rc = SSMD_OK, chunk_no = 0;

	memset(pend, 0, sizeof(pend));
	CUDA_TRY(cudaSetDevice(cb->device));
	while (pos < a->n_tokens) {
		size_t L = a->n_tokens - pos < (size_t)cb->chunk ? a->n_tokens - pos
								  : (size_t)cb->chunk;
		const int buf = chunk_no & 1;
		ck_pending *p = &pend[buf];
		size_t cj = ci, r;
		int nq = 0;

		/* the checkpoints of this chunk: at most ck_max distinct positions */
		while (cj < a->n_ckpt && a->ckpt_pos[cj] <= pos + L) {
			int q = (int)(a->ckpt_pos[cj] - pos);
			if (!nq || p->qs[nq - 1] != q) {
				if (nq == cb->ck_max) {
					L = (size_t)p->qs[nq - 1];
					break;
				}
				p->qs[nq++] = q;
			}
			cj++;
		}
		/* pageable sources: the copies are staged before these return */
		CUDA_TRY(cudaMemcpyAsync(cb->d_tokens, a->tokens + pos, L * sizeof(int32_t),
					 cudaMemcpyHostToDevice, cb->stream));
		if (nq) {
			CUDA_TRY(cudaMemcpyAsync(cb->d_ck_pos, p->qs, nq * sizeof(int),
						 cudaMemcpyHostToDevice, cb->stream));
			/* d_ck[buf] is free once its last copy to the host is done */
			CUDA_TRY(cudaStreamWaitEvent(cb->stream, cb->ev_ck[buf], 0));
		}
		if ((rc = prefill_body_any(cb, slot, (int)L, nq, ck_dev(cb, buf),
					   cb->h_ck + (size_t)buf * cb->ck_max * sf)))
			goto out;
		cb->n_tokens[slot] = start_tokens + pos + L;
		if (a->logprobs)
			/* pageable source: staged before this returns */
			CUDA_TRY(cudaMemcpyAsync(cb->d_lp_next, a->lp_next + pos,
						 L * sizeof(int32_t), cudaMemcpyHostToDevice,
						 cb->stream));
		/* each block of logits rows is formed once, for the host's copy
		 * and for the log-probabilities alike */
		for (r = 0; (a->all_logits || a->logprobs) && r < L; r += CUDA_LOGIT_ROWS) {
			int n = L - r < CUDA_LOGIT_ROWS ? (int)(L - r) : CUDA_LOGIT_ROWS;
			if ((rc = logits_rows(cb, (int)r, n)))
				goto out;
			if (a->logprobs) {
				ssmk_logprob<<<n, SAMPLE_THREADS, 0, cb->stream>>>(
					cb->act.logits, (int)V, cb->d_lp_next + r, cb->d_lp + r);
				CUDA_LAUNCHED();
			}
			if (a->all_logits) {
				CUDA_TRY(cudaMemcpyAsync(cb->h_logits, cb->act.logits,
							 n * V * sizeof(float),
							 cudaMemcpyDeviceToHost, cb->stream));
				CUDA_TRY(cudaStreamSynchronize(cb->stream));
				memcpy(a->all_logits + (pos + r) * V, cb->h_logits,
				       n * V * sizeof(float));
			}
		}
		if (a->logprobs) {
			CUDA_TRY(cudaMemcpyAsync(cb->h_lp, cb->d_lp, L * sizeof(float),
						 cudaMemcpyDeviceToHost, cb->stream));
			CUDA_TRY(cudaStreamSynchronize(cb->stream));
			memcpy(a->logprobs + pos, cb->h_lp, L * sizeof(float));
		}
		if (a->last_logits && pos + L == a->n_tokens) {
			if ((rc = logits_rows(cb, (int)L - 1, 1)))
				goto out;
			CUDA_TRY(cudaMemcpyAsync(cb->h_logits, cb->act.logits,
						 V * sizeof(float),
						 cudaMemcpyDeviceToHost, cb->stream));
		}
		if (nq) {
			/* the layers' parts were enqueued by prefill_body */
			CUDA_TRY(cudaEventRecord(cb->ev_ck[buf], cb->copy_stream));
			p->active = 1;
			p->buf = buf;
			p->nq = nq;
			p->pos = pos;
			p->ci = ci;
			p->cj = cj;
		}
		ci = cj;
		/* the previous chunk's callbacks run while this chunk computes */
		if (pend[buf ^ 1].active &&
		    (rc = ck_deliver(cb, slot, a, start_tokens, &pend[buf ^ 1])))
			goto out;
		pos += L;
		chunk_no++;
	}
	if (pend[(chunk_no - 1) & 1].active &&
	    (rc = ck_deliver(cb, slot, a, start_tokens, &pend[(chunk_no - 1) & 1])))
		goto out;
	CUDA_TRY(cudaStreamSynchronize(cb->stream));
	if (a->last_logits)
		memcpy(a->last_logits, cb->h_logits, V * sizeof(float));
out:
	return rc;
}

/* ---------------------------------------------------------------- slots -- */

static int cuda_slot_reset(ssm_backend *b, int slot)
{
	cuda_backend *cb = cb_of(b);
	int rc = SSMD_OK;

	CUDA_TRY(cudaSetDevice(cb->device));
	CUDA_TRY(cudaMemsetAsync(cb->pool + (size_t)slot * cb->state_floats, 0,
				 cb->state_floats * sizeof(float), cb->stream));
	CUDA_TRY(cudaStreamSynchronize(cb->stream));
	cb->n_tokens[slot] = 0;
out:
	return rc;
}

static int cuda_slot_copy(ssm_backend *b, int dst, int src)
{
	cuda_backend *cb = cb_of(b);
	const size_t sf = cb->state_floats;
	int rc = SSMD_OK;

	CUDA_TRY(cudaSetDevice(cb->device));
	if (dst != src)
		CUDA_TRY(cudaMemcpyAsync(cb->pool + (size_t)dst * sf,
					 cb->pool + (size_t)src * sf, sf * sizeof(float),
					 cudaMemcpyDeviceToDevice, cb->stream));
	CUDA_TRY(cudaStreamSynchronize(cb->stream));
	cb->n_tokens[dst] = cb->n_tokens[src];
out:
	return rc;
}

/* Slot -> pinned buffer on the copy stream, after the work queued so far. */
static int cuda_slot_get(ssm_backend *b, int slot, ssm_state *st)
{
	cuda_backend *cb = cb_of(b);
	const ssm_config *c = &cb->cfg;
	int rc = SSMD_OK;

	CUDA_TRY(cudaSetDevice(cb->device));
	CUDA_TRY(cudaEventRecord(cb->ev_compute, cb->stream));
	CUDA_TRY(cudaStreamWaitEvent(cb->copy_stream, cb->ev_compute, 0));
	CUDA_TRY(cudaMemcpyAsync(cb->h_state, cb->pool + (size_t)slot * cb->state_floats,
				 cb->state_floats * sizeof(float),
				 cudaMemcpyDeviceToHost, cb->copy_stream));
	CUDA_TRY(cudaStreamSynchronize(cb->copy_stream));
	memcpy(st->ssm, cb->h_state, cb->off_conv * sizeof(float));
	memcpy(st->conv, cb->h_state + cb->off_conv,
	       (size_t)c->n_layer * c->d_inner * (c->d_conv - 1) * sizeof(float));
	memcpy(st->hidden, cb->h_state + cb->off_hidden, c->d_model * sizeof(float));
	memcpy(st->dt_sum, cb->h_state + cb->off_dt_sum,
	       (size_t)c->n_layer * c->d_inner * sizeof(float));
	st->n_tokens = cb->n_tokens[slot];
	memcpy(st->fingerprint, cb->model->fingerprint, SSM_FINGERPRINT_LEN);
out:
	return rc;
}

/* Pinned buffer -> slot on the copy stream; later computation waits for it. */
static int cuda_slot_set(ssm_backend *b, int slot, const ssm_state *st)
{
	cuda_backend *cb = cb_of(b);
	const ssm_config *c = &cb->cfg;
	int rc = SSMD_OK;

	CUDA_TRY(cudaSetDevice(cb->device));
	memcpy(cb->h_state, st->ssm, cb->off_conv * sizeof(float));
	memcpy(cb->h_state + cb->off_conv, st->conv,
	       (size_t)c->n_layer * c->d_inner * (c->d_conv - 1) * sizeof(float));
	memcpy(cb->h_state + cb->off_hidden, st->hidden, c->d_model * sizeof(float));
	memcpy(cb->h_state + cb->off_dt_sum, st->dt_sum,
	       (size_t)c->n_layer * c->d_inner * sizeof(float));
	CUDA_TRY(cudaEventRecord(cb->ev_compute, cb->stream));
	CUDA_TRY(cudaStreamWaitEvent(cb->copy_stream, cb->ev_compute, 0));
	CUDA_TRY(cudaMemcpyAsync(cb->pool + (size_t)slot * cb->state_floats, cb->h_state,
				 cb->state_floats * sizeof(float),
				 cudaMemcpyHostToDevice, cb->copy_stream));
	CUDA_TRY(cudaEventRecord(cb->ev_copy, cb->copy_stream));
	CUDA_TRY(cudaStreamWaitEvent(cb->stream, cb->ev_copy, 0));
	/* the pinned buffer is reused by the next get/set */
	CUDA_TRY(cudaStreamSynchronize(cb->copy_stream));
	cb->n_tokens[slot] = st->n_tokens;
out:
	return rc;
}

static int cuda_slot_logits(ssm_backend *b, int slot, float *logits)
{
	cuda_backend *cb = cb_of(b);
	const ssm_config *c = &cb->cfg;
	cuda_act *a = &cb->act;
	int rc = SSMD_OK;

	CUDA_TRY(cudaSetDevice(cb->device));
	if (!cb->n_tokens[slot])
		return ssmd_err_set(SSMD_EEMPTY, "cuda: slot %d has consumed no tokens", slot);
	cb->h_slots[0] = slot;
	CUDA_TRY(cudaMemcpyAsync(cb->d_slots, cb->h_slots, sizeof(int),
				 cudaMemcpyHostToDevice, cb->stream));
	ssmk_load_hidden<<<1, 256, 0, cb->stream>>>(a->h, cb->pool, cb->d_slots,
						 cb->state_floats, cb->off_hidden,
						 c->d_model);
	CUDA_LAUNCHED();
	switch (cb->wdtype) {
	case SSM_DTYPE_F32:
		ssmk_add_norm<float><<<1, 256, 0, cb->stream>>>(
			a->h, NULL, NULL, NULL, cb->norm_f, (float *)a->xn, c->d_model,
			c->eps, NULL, NULL, 0, 0);
		break;
	case SSM_DTYPE_F16:
		ssmk_add_norm<__half><<<1, 256, 0, cb->stream>>>(
			a->h, NULL, NULL, NULL, cb->norm_f, (__half *)a->xn, c->d_model,
			c->eps, NULL, NULL, 0, 0);
		break;
	default:
		ssmk_add_norm<__nv_bfloat16><<<1, 256, 0, cb->stream>>>(
			a->h, NULL, NULL, NULL, cb->norm_f, (__nv_bfloat16 *)a->xn,
			c->d_model, c->eps, NULL, NULL, 0, 0);
		break;
	}
	CUDA_LAUNCHED();
	if ((rc = logits_rows(cb, 0, 1)))
		goto out;
	CUDA_TRY(cudaMemcpyAsync(cb->h_logits, a->logits, c->vocab_size * sizeof(float),
				 cudaMemcpyDeviceToHost, cb->stream));
	CUDA_TRY(cudaStreamSynchronize(cb->stream));
	memcpy(logits, cb->h_logits, c->vocab_size * sizeof(float));
out:
	return rc;
}

/* --------------------------------------------------------------- timing -- */

static void cuda_close(ssm_backend *b);

static const ssm_backend_ops cuda_ops = {
	"cuda",
	cuda_close,
	cuda_slot_reset,
	cuda_slot_copy,
	cuda_slot_get,
	cuda_slot_set,
	cuda_prefill,
	cuda_decode,
	cuda_slot_logits,
	cuda_decode_sample,
};

static int cuda_backend_check(ssm_backend *b)
{
	if (!b || b->ops != &cuda_ops)
		return ssmd_err_set(SSMD_EINVAL, "cuda timer: not a CUDA backend");
	return SSMD_OK;
}

extern "C" int ssm_cuda_timer_start(ssm_backend *b)
{
	int rc;

	if ((rc = cuda_backend_check(b)))
		return rc;
	CUDA_TRY(cudaEventRecord(cb_of(b)->ev_t0, cb_of(b)->stream));
out:
	return rc;
}

extern "C" int ssm_cuda_timer_stop(ssm_backend *b, float *ms)
{
	int rc;

	if ((rc = cuda_backend_check(b)))
		return rc;
	CUDA_TRY(cudaEventRecord(cb_of(b)->ev_t1, cb_of(b)->stream));
	CUDA_TRY(cudaEventSynchronize(cb_of(b)->ev_t1));
	CUDA_TRY(cudaEventElapsedTime(ms, cb_of(b)->ev_t0, cb_of(b)->ev_t1));
out:
	return rc;
}

const char *const ssm_cuda_part_names[SSM_CUDA_N_PARTS] = {
	"norm", "in_proj", "conv", "x_proj", "dt_proj", "scan pass 1",
	"scan pass 2", "out_proj", "embed/final", "other", "ssm step",
	"final norm/lm_head/sample",
};

extern "C" const char *const ssm_cuda_phase_names[SSM_CUDA_N_PHASES] = {
	"A: norm, in_proj, conv", "A to B (no barrier)", "B: x_proj", "B: barrier",
	"C: ssm step", "C: barrier (by group: the block's)", "D: out_proj", "D: barrier",
	"final norm, lm_head",
};

extern "C" int ssm_cuda_persist_split(ssm_backend *b, const int *slots, const int32_t *tokens,
				      int rows, double share[SSM_CUDA_N_PHASES],
				      double spread[SSM_CUDA_N_PHASES - 1][3])
{
	cuda_backend *cb;
	int rc, l, ph, n, g, G, i;
	long long *tr = NULL;
	double total;

	if ((rc = cuda_backend_check(b)))
		return rc;
	if (!share)
		return ssmd_err_set(SSMD_EINVAL, "decode split: no share array");
	cb = cb_of(b);
	if (rows < 1 || rows > cb->max_batch)
		return ssmd_err_set(SSMD_EINVAL, "decode split: %d rows, 1..%d", rows,
				    cb->max_batch);
	if (!decode_persist_ok(cb, bucket_of(rows)))
		return ssmd_err_set(SSMD_EUNSUPPORTED,
				    "decode split: no persistent kernel for %d rows here", rows);
	/* the split steps the slots past backend.c: its checks here */
	if ((rc = ssm_check_batch(b, slots, tokens, rows, "decode split")))
		return rc;
	n = pk_n_marks(cb->cfg.n_layer);
	G = cb->pk_grid;
	tr = (long long *)malloc((size_t)G * n * sizeof(long long));
	if (!tr)
		return ssmd_err_set(SSMD_ENOMEM, "decode split: no memory");
	if (!cb->pk_trace_buf &&
	    (rc = dev_alloc(cb, (size_t)G * n * sizeof(long long), (void **)&cb->pk_trace_buf)))
		goto out;
	/* one greedy step outside the bucket's graph, with the marks on */
	for (i = 0; i < rows; i++)
		memset(&cb->h_samp[i], 0, sizeof(cuda_sampler));
	if ((rc = decode_inputs(cb, slots, tokens, rows, bucket_of(rows))))
		goto out;
	/* cleared, so a mark a block did not write reads 0, not an earlier
	 * step's clock */
	CUDA_TRY(cudaMemsetAsync(cb->pk_trace_buf, 0, (size_t)G * n * sizeof(long long),
				 cb->stream));
	cb->pk_trace = cb->pk_trace_buf;
	rc = decode_body_any(cb, bucket_of(rows));
	cb->pk_trace = NULL;
	if (rc)
		goto out;
	for (i = 0; i < rows; i++)
		cb->n_tokens[slots[i]]++;
	CUDA_TRY(cudaMemcpyAsync(tr, cb->pk_trace_buf, (size_t)G * n * sizeof(long long),
				 cudaMemcpyDeviceToHost, cb->stream));
	CUDA_TRY(cudaStreamSynchronize(cb->stream));
	/* block 0's marks give the shares; the blocks' clocks are not one
	 * clock, so the spread compares each block's own intervals only */
	total = (double)(tr[n - 1] - tr[0]);
	for (l = 0; l < cb->cfg.n_layer; l++)
		for (ph = 0; ph < 8; ph++) {
			const int mk = l * 8 + ph; /* the phase's first mark */
			double lo = 0, hi = 0, sum = 0;

			share[ph] += (tr[mk + 1] - tr[mk]) / total;
			if (!spread)
				continue;
			for (g = 0; g < G; g++) {
				const double d = (double)(tr[(size_t)g * n + mk + 1] -
							  tr[(size_t)g * n + mk]);
				lo = g == 0 || d < lo ? d : lo;
				hi = g == 0 || d > hi ? d : hi;
				sum += d;
			}
			spread[ph][0] += lo / total;
			spread[ph][1] += sum / G / total;
			spread[ph][2] += hi / total;
		}
	share[SSM_CUDA_N_PHASES - 1] += (tr[n - 1] - tr[n - 2]) / total;
out:
	free(tr);
	return rc;
}

/* The checks of the queries below: a CUDA backend and a result pointer
 * (`what` names the query in the error). */
static int query_check(ssm_backend *b, const void *out, const char *what)
{
	int rc;

	if ((rc = cuda_backend_check(b)))
		return rc;
	if (!out)
		return ssmd_err_set(SSMD_EINVAL, "%s: no result pointer", what);
	return SSMD_OK;
}

/* query_check, and a count n (rows or tokens, named by unit) of at least 1 */
static int query_check_n(ssm_backend *b, const int *out, int n, const char *what,
			 const char *unit)
{
	const int rc = query_check(b, out, what);

	if (!rc && n < 1)
		return ssmd_err_set(SSMD_EINVAL, "%s: %d %s", what, n, unit);
	return rc;
}

extern "C" int ssm_cuda_decode1_depth(ssm_backend *b, int *pf)
{
	const int rc = query_check(b, pf, "decode depth");

	if (!rc)
		*pf = decode_persist_ok(cb_of(b), 1) ? cb_of(b)->pk_pf : 0;
	return rc;
}

extern "C" int ssm_cuda_persist_rows(ssm_backend *b, int rows, int *served)
{
	const int rc = query_check_n(b, served, rows, "persistent rows", "rows");

	if (!rc)
		*served = decode_persist_ok(cb_of(b), bucket_of(rows));
	return rc;
}

extern "C" int ssm_cuda_decode1_groups(ssm_backend *b, int *groups)
{
	const int rc = query_check(b, groups, "decode groups");

	if (!rc)
		*groups = decode_persist_ok(cb_of(b), 1) ? cb_of(b)->pk_groups : -1;
	return rc;
}

extern "C" int ssm_cuda_xproj_slices(ssm_backend *b, int n_tokens, int *slices)
{
	const int rc = query_check_n(b, slices, n_tokens, "x_proj slices", "tokens");

	if (!rc)
		*slices = xproj_slices(cb_of(b), n_tokens < cb_of(b)->chunk ? n_tokens
									   : cb_of(b)->chunk);
	return rc;
}

extern "C" int ssm_cuda_dt_fused(ssm_backend *b, int *fused)
{
	int rc = query_check(b, fused, "dt_proj");

	if (!rc)
		*fused = dt_fused_on(cb_of(b));
	return rc;
}

extern "C" int ssm_cuda_io_mapped(ssm_backend *b, int *mapped)
{
	const int rc = query_check(b, mapped, "io form");

	if (!rc)
		*mapped = cb_of(b)->io_mapped;
	return rc;
}

extern "C" int ssm_cuda_host_picks(ssm_backend *b, uint64_t *picks)
{
	const int rc = query_check(b, picks, "host picks");

	if (!rc)
		*picks = cb_of(b)->host_picks;
	return rc;
}

extern "C" int ssm_cuda_conv_xproj(ssm_backend *b, int *cluster)
{
	const int rc = query_check(b, cluster, "conv step form");

	if (!rc)
		*cluster = cb_of(b)->cxp_c;
	return rc;
}

extern "C" int ssm_cuda_step_mma(ssm_backend *b, int rows, int *on)
{
	const int rc = query_check_n(b, on, rows, "step form", "rows");

	if (!rc)
		*on = step_mma_on(cb_of(b), bucket_of(rows));
	return rc;
}

extern "C" int ssm_cuda_gemm_rows(ssm_backend *b, int rows, int form[6])
{
	const int rc = query_check_n(b, form, rows, "GEMM form", "rows");
	int p;

	for (p = 0; !rc && p < 2; p++) {
		const cuda_gr_form *f = gr_form(cb_of(b), p, bucket_of(rows));

		form[3 * p] = f ? f->nt : 0;
		form[3 * p + 1] = f ? f->s : 0;
		form[3 * p + 2] = f ? f->c : 0;
	}
	return rc;
}

extern "C" int ssm_cuda_gemm_wg(ssm_backend *b, int rows, int form[4])
{
	const int rc = query_check_n(b, form, rows, "warpgroup GEMM form", "rows");
	int p;

	for (p = 0; !rc && p < 2; p++) {
		const cuda_wg_form *f = wg_form(cb_of(b), p, bucket_of(rows));

		form[2 * p] = f ? f->nt : 0;
		form[2 * p + 1] = f ? f->s : 0;
	}
	return rc;
}

/* The event pool of the splits, made on first use. */
static int split_events(cuda_backend *cb)
{
	int rc = SSMD_OK, i;

	if (cb->split_ev)
		return SSMD_OK;
	cb->split_ev = (cudaEvent_t *)calloc(SPLIT_CAP, sizeof(cudaEvent_t));
	cb->split_part = (unsigned char *)calloc(SPLIT_CAP, 1);
	if (!cb->split_ev || !cb->split_part)
		return ssmd_err_set(SSMD_ENOMEM, "split: no memory for its events");
	for (i = 0; i < SPLIT_CAP; i++)
		CUDA_TRY(cudaEventCreate(&cb->split_ev[i]));
out:
	return rc;
}

/* Ends a split of n marks (split_n before it is reset): adds the time
 * between consecutive marks to ms[part of the later mark]. Blocks. */
static int split_collect(cuda_backend *cb, const char *what, int n,
			 double ms[SSM_CUDA_N_PARTS])
{
	int rc = SSMD_OK, i;
	float t;

	if (n > SPLIT_CAP)
		return ssmd_err_set(SSMD_EINVAL, "%s split: %d parts, at most %d", what, n,
				    SPLIT_CAP);
	CUDA_TRY(cudaEventSynchronize(cb->split_ev[n - 1]));
	for (i = 1; i < n; i++) {
		CUDA_TRY(cudaEventElapsedTime(&t, cb->split_ev[i - 1], cb->split_ev[i]));
		ms[cb->split_part[i]] += t;
	}
out:
	return rc;
}

extern "C" int ssm_cuda_prefill_split(ssm_backend *b, int slot,
				      const ssm_prefill_args *a,
				      double ms[SSM_CUDA_N_PARTS])
{
	cuda_backend *cb;
	int rc, n;

	if ((rc = cuda_backend_check(b)))
		return rc;
	if (!ms)
		return ssmd_err_set(SSMD_EINVAL, "prefill split: no ms array");
	cb = cb_of(b);
	if ((rc = split_events(cb)))
		return rc;
	cb->split_n = 0;
	split_mark(cb, SSM_CUDA_OTHER); /* the start: its part is not used */
	rc = ssm_prefill(b, slot, a);
	split_mark(cb, SSM_CUDA_OTHER);
	n = cb->split_n;
	cb->split_n = -1;
	if (rc)
		return rc;
	return split_collect(cb, "prefill", n, ms);
}

extern "C" int ssm_cuda_decode_split(ssm_backend *b, const int *slots,
				     const int32_t *tokens, int n,
				     double ms[SSM_CUDA_N_PARTS])
{
	cuda_backend *cb;
	int rc, i, k;

	if ((rc = cuda_backend_check(b)))
		return rc;
	if (!ms)
		return ssmd_err_set(SSMD_EINVAL, "decode split: no ms array");
	cb = cb_of(b);
	if (n < 1 || n > cb->max_batch)
		return ssmd_err_set(SSMD_EINVAL, "decode split: %d rows, 1..%d", n,
				    cb->max_batch);
	if ((rc = ssm_check_batch(b, slots, tokens, n, "decode split")))
		return rc;
	if ((rc = split_events(cb)))
		return rc;
	CUDA_TRY(cudaSetDevice(cb->device));
	for (i = 0; i < n; i++)
		memset(&cb->h_samp[i], 0, sizeof(cuda_sampler)); /* greedy */
	if ((rc = decode_inputs(cb, slots, tokens, n, bucket_of(n))))
		goto out;
	cb->split_n = 0;
	split_mark(cb, SSM_CUDA_OTHER); /* the start: its part is not used */
	rc = decode_body_any(cb, bucket_of(n));
	split_mark(cb, SSM_CUDA_OTHER);
	k = cb->split_n;
	cb->split_n = -1;
	if (rc)
		goto out;
	for (i = 0; i < n; i++)
		cb->n_tokens[slots[i]]++;
	rc = split_collect(cb, "decode", k, ms);
out:
	return rc;
}

/* ------------------------------------------------------- open / close -- */

static void cuda_close(ssm_backend *b)
{
	cuda_backend *cb = b ? cb_of(b) : NULL;
	int i;

	if (!cb)
		return;
	cudaSetDevice(cb->device);
	if (cb->stream)
		cudaStreamSynchronize(cb->stream);
	if (cb->copy_stream)
		cudaStreamSynchronize(cb->copy_stream);
	for (i = 0; cb->graphs && i < cb->n_graphs; i++) {
		if (cb->graphs[i].exec)
			cudaGraphExecDestroy(cb->graphs[i].exec);
		if (cb->graphs[i].graph)
			cudaGraphDestroy(cb->graphs[i].graph);
	}
	free(cb->graphs);
	for (i = 0; cb->split_ev && i < SPLIT_CAP; i++)
		if (cb->split_ev[i])
			cudaEventDestroy(cb->split_ev[i]);
	free(cb->split_ev);
	free(cb->split_part);
	for (i = 0; i < cb->n_allocs; i++)
		cudaFree(cb->allocs[i]);
	free(cb->allocs);
	cudaFreeHost(cb->h_state);
	cudaFreeHost(cb->h_io);
	cudaFreeHost(cb->h_logits);
	cudaFreeHost(cb->h_ck);
	cudaFreeHost(cb->h_next);
	cudaFreeHost(cb->h_lp);
	if (cb->blas)
		cublasDestroy(cb->blas);
	if (cb->ev_compute)
		cudaEventDestroy(cb->ev_compute);
	if (cb->ev_copy)
		cudaEventDestroy(cb->ev_copy);
	for (i = 0; i < 2; i++)
		if (cb->ev_ck[i])
			cudaEventDestroy(cb->ev_ck[i]);
	if (cb->ev_t0)
		cudaEventDestroy(cb->ev_t0);
	if (cb->ev_t1)
		cudaEventDestroy(cb->ev_t1);
	if (cb->stream)
		cudaStreamDestroy(cb->stream);
	if (cb->copy_stream)
		cudaStreamDestroy(cb->copy_stream);
	free(cb->layers);
	free(cb->n_tokens);
	free(cb);
	b->impl = NULL;
}


/*
 * Sets cb->pkn_rows where the multi-row kernels (cuda_persist_nb.cuh) can
 * serve buckets 2 and 4 beside the batch-1 kernel (on a grid of G blocks;
 * called for 16-bit weights only): d_state 16, the conv epilogue's lanes for
 * 4 rows within a warp, each kernel's shared memory within the device's
 * opt-in limit and one block per SM resident. SSMD_CUDA_PKN_ROWS=0|2 leaves
 * them off or serves only 2 rows (the other buckets take the cuBLAS path).
 */
template <typename T>
static int pkn_init_t(cuda_backend *cb, int G)
{
	int rc = SSMD_OK, fits = 0;
	const ssm_config *c = &cb->cfg;
	const int W = c->dt_rank + 2 * c->d_state;
	const char *env = getenv("SSMD_CUDA_PKN_ROWS");
	static const int rows[] = {2, 4};

	cb->pkn_rows = 0;
	if (c->d_state != 16 || 4 * (c->d_conv - 1) + c->d_conv + 2 > 32 ||
	    (env && atoi(env) < 2))
		return SSMD_OK;
	for (int i = 0; i < 2; i++) {
		rc = pk_fits(cb, pkn_kernel<T>(rows[i]),
			     pk_smem_bytes(rows[i], c->d_model, c->d_inner, W, G, sizeof(T),
					   c->n_layer),
			     &fits);
		if (rc || !fits)
			return rc;
	}
	cb->pkn_rows = env ? atoi(env) : 4;
	return SSMD_OK;
}

/* x_proj's weights of every layer in the block order of the persistent
 * kernel for nb rows on a grid of G blocks (ssmk_xw_blocks), into *out. */
template <typename T>
static int xw_blocks(cuda_backend *cb, int G, int nb, void **out)
{
	int rc;
	const ssm_config *c = &cb->cfg;
	const int W = c->dt_rank + 2 * c->d_state, M = pk_xw_m(c->d_inner, G, nb),
		  run = pk_xw_run(M, W, sizeof(T));

	if ((rc = dev_alloc(cb, (size_t)c->n_layer * G * run * sizeof(T), out)))
		return rc;
	for (int l = 0; l < c->n_layer; l++) {
		ssmk_xw_blocks<T><<<G, 256, 0, cb->stream>>>(
			(const T *)cb->layers[l].x_w, W, c->d_inner, G, M, pk_xw_pr(nb), run,
			(T *)*out + (size_t)l * G * run);
		CUDA_LAUNCHED();
	}
	CUDA_TRY(cudaStreamSynchronize(cb->stream));
out:
	return rc;
}

/*
 * Sets up the persistent batch-1 kernel (cuda_persist.cuh) where it can run:
 * row lengths in whole 16-byte pieces, the conv epilogue's 2 * d_conv + 1
 * lanes in a warp, cooperative launch, and its shared memory and one block
 * per SM resident (pk_fits). Otherwise pk_grid stays 0 and
 * batch 1 takes the cuBLAS path of larger batches.
 */
template <typename T>
static int persist_init_t(cuda_backend *cb)
{
	int rc = SSMD_OK, fits = 0, sms = 0, coop = 0, rows;
	const ssm_config *c = &cb->cfg;
	const int vec = 16 / sizeof(T), W = c->dt_rank + 2 * c->d_state;
	const char *env = getenv("SSMD_CUDA_PK_PF");
	/* SSMD_CUDA_PK_PF=6|8 overrides the depth, for tests and tuning */
	const int pf = env && (atoi(env) == 6 || atoi(env) == 8) ? atoi(env)
								  : pk_pf(c->d_model, sizeof(T));
	const char *genv = getenv("SSMD_CUDA_PK_GROUPS");
	bool groups;
	size_t smem;

	if (c->d_model % vec || c->d_inner % vec || 2 * c->d_conv + 1 > 32)
		return SSMD_OK;
	CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, cb->device));
	CUDA_TRY(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, cb->device));
	/* one block an SM; the x_proj sums hold up to PK_XBLOCKS blocks' parts */
	if (sms > PK_XBLOCKS)
		return SSMD_OK;
	/* SSMD_CUDA_PK_GROUPS=0|1 overrides the choice, for tests and tuning */
	groups = genv ? atoi(genv) != 0 : pk_groups(c->d_model, c->d_inner, sizeof(T));
	/* a channel group of phases C and D a block at least (pk_dgrid) */
	groups = groups && (c->d_inner + PK_CG - 1) / PK_CG <= sms;
	smem = pk_smem_bytes(1, c->d_model, c->d_inner, W, sms, sizeof(T), c->n_layer);
#define FITS(npl) rc = pk_fits(cb, pk_kernel<T, npl>(pf, groups), smem, &fits)
	NPL_SWITCH(c->d_state / SSM_LANES, FITS);
#undef FITS
	if (rc || !coop || !fits)
		return rc;
	if constexpr (sizeof(T) == 2)
		if ((rc = pkn_init_t<T>(cb, sms)))
			return rc;
	rows = cb->pkn_rows ? cb->pkn_rows : 1;
	if ((rc = dev_upload(cb, cb->layers, c->n_layer * sizeof(cuda_layer),
			     (void **)&cb->d_layers)) ||
	    (rc = dev_alloc(cb, 2 * sizeof(pk_bar), (void **)&cb->pk_bar)) ||
	    (rc = dev_alloc(cb, 2 * PK_OAREA(c->d_model) * sizeof(unsigned long long),
			    (void **)&cb->pk_osum)) ||
	    (rc = dev_alloc(cb, 2 * (size_t)c->d_model * sizeof(float), (void **)&cb->pk_hbuf)) ||
	    (rc = dev_alloc(cb, 8 * (size_t)sms * sizeof(unsigned long long),
			    (void **)&cb->pk_cand)) ||
	    (rc = dev_alloc(cb, 2 * PK_XAREA(rows * W) * sizeof(unsigned long long),
			    (void **)&cb->pk_xacc)) ||
	    (rc = xw_blocks<T>(cb, sms, 1, &cb->pk_xwb)) ||
	    (cb->pkn_rows && (rc = xw_blocks<T>(cb, sms, 2, &cb->pkn_xwb))))
		goto out;
	CUDA_TRY(cudaMemset(cb->pk_xacc, 0, 2 * PK_XAREA(rows * W) * sizeof(unsigned long long)));
	CUDA_TRY(cudaMemset(cb->pk_osum, 0, 2 * PK_OAREA(c->d_model) * sizeof(unsigned long long)));
	CUDA_TRY(cudaMemset(cb->pk_bar, 0, 2 * sizeof(pk_bar)));
	cb->pk_grid = sms;
	cb->pk_pf = pf;
	cb->pk_groups = groups;
out:
	return rc;
}

static int persist_init(cuda_backend *cb)
{
	switch (cb->wdtype) {
	case SSM_DTYPE_F32: return persist_init_t<float>(cb);
	case SSM_DTYPE_F16: return persist_init_t<__half>(cb);
	default: return persist_init_t<__nv_bfloat16>(cb);
	}
}

/* Activation buffers for `rows` rows; logits for logit_rows rows. */
static int act_alloc(cuda_backend *cb, int rows, int logit_rows)
{
	const ssm_config *c = &cb->cfg;
	const size_t D = c->d_model, E = c->d_inner, R = c->dt_rank,
		     W = R + 2 * (size_t)c->d_state, ws = cb->wsize, n = rows;
	/* a split out_proj's slices, one after the other (cuBLAS's or
	 * ssmk_gemm_wg's) */
	const size_t mix_rows = n > 2 * (size_t)cb->max_batch ? n : 2 * (size_t)cb->max_batch;
	cuda_act *a = &cb->act;
	int rc;

	a->rows = rows;
	a->logit_rows = logit_rows;
	if ((rc = dev_alloc(cb, n * D * 4, (void **)&a->h)) ||
	    (rc = dev_alloc(cb, n * D * ws, &a->xn)) ||
	    (rc = dev_alloc(cb, n * 2 * E * 4, (void **)&a->xz)) ||
	    (rc = dev_alloc(cb, n * E * 4, (void **)&a->xc)) ||
	    (rc = dev_alloc(cb, n * E * ws, &a->xcT)) ||
	    (rc = dev_alloc(cb, n * W * 4, (void **)&a->dbc)) ||
	    (rc = dev_alloc(cb, n * R * ws, &a->dlT)) ||
	    (rc = dev_alloc(cb, n * E * 4, (void **)&a->dtr)) ||
	    (rc = dev_alloc(cb, n * E * ws, &a->yT)) ||
	    (rc = dev_alloc(cb, mix_rows * D * 4, (void **)&a->mix)) ||
	    (rc = dev_alloc(cb, (size_t)logit_rows * c->vocab_size * 4,
			    (void **)&a->logits)))
		return rc;
	a->n_seg = cdiv(cb->chunk, cb->scan_seg);
	/* ssmk_scan_combine's offsets are 32-bit */
	if ((size_t)a->n_seg * E * c->d_state > INT_MAX)
		return ssmd_err_set(SSMD_EUNSUPPORTED,
				    "cuda: a chunk's %d scan segments of %zu x %d states pass "
				    "2^31 floats (SSMD_CUDA_CHUNK / SSMD_CUDA_SCAN_SEG)",
				    a->n_seg, E, c->d_state);
	if ((rc = dev_alloc(cb, (size_t)a->n_seg * E * c->d_state * 4, (void **)&a->seg_h)) ||
	    (rc = dev_alloc(cb, (size_t)a->n_seg * E * 4, (void **)&a->seg_dt)) ||
	    (rc = dev_alloc(cb, (size_t)a->n_seg * E * c->d_state * 4, (void **)&a->start_h)) ||
	    (rc = dev_alloc(cb, (size_t)a->n_seg * E * 4, (void **)&a->start_d)))
		return rc;
	return SSMD_OK;
}

extern "C" int ssm_cuda_device_count(void)
{
	int n = 0;

	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError();
		return 0;
	}
	return n;
}

extern "C" int ssm_cuda_open(ssm_backend *b, const ssm_backend_opts *opts)
{
	const ssm_config *c = &b->model->cfg;
	cuda_backend *cb = NULL;
	int rc = SSMD_OK, rows, n_dev = ssm_cuda_device_count();
	const char *env;
	size_t E, L, ck_bytes;

	if (n_dev <= 0)
		return ssmd_err_set(SSMD_EUNSUPPORTED, "cuda: no CUDA device present");
	if (opts->device < 0 || opts->device >= n_dev)
		return ssmd_err_set(SSMD_EINVAL, "cuda: device %d of %d", opts->device, n_dev);
	if (c->arch != SSM_ARCH_MAMBA1)
		return ssmd_err_set(SSMD_EUNSUPPORTED, "cuda: architecture %u", c->arch);
	if (c->d_state % SSM_LANES || c->d_state > 64 ||
	    ((c->d_state / SSM_LANES) & (c->d_state / SSM_LANES - 1)))
		return ssmd_err_set(SSMD_EUNSUPPORTED,
				    "cuda: d_state %d (supported: 4, 8, 16, 32, 64)",
				    c->d_state);
	cb = (cuda_backend *)calloc(1, sizeof(*cb));
	if (!cb)
		return ssmd_err_set(SSMD_ENOMEM, "cuda: backend");
	b->impl = cb;
	b->ops = &cuda_ops;
	cb->model = b->model;
	cb->cfg = *c;
	cb->device = opts->device;
	cb->n_slots = opts->n_slots;
	cb->wdtype = opts->weight_dtype;
	switch (cb->wdtype) {
	case SSM_DTYPE_F32: cb->wtype = CUDA_R_32F; cb->wsize = 4; break;
	case SSM_DTYPE_F16: cb->wtype = CUDA_R_16F; cb->wsize = 2; break;
	case SSM_DTYPE_BF16: cb->wtype = CUDA_R_16BF; cb->wsize = 2; break;
	default:
		rc = ssmd_err_set(SSMD_EINVAL, "cuda: weight dtype %d", (int)cb->wdtype);
		goto out;
	}
	CUDA_TRY(cudaSetDevice(cb->device));
	CUDA_TRY(cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking));
	CUDA_TRY(cudaStreamCreateWithFlags(&cb->copy_stream, cudaStreamNonBlocking));
	CUDA_TRY(cudaEventCreateWithFlags(&cb->ev_compute, cudaEventDisableTiming));
	CUDA_TRY(cudaEventCreateWithFlags(&cb->ev_copy, cudaEventDisableTiming));
	CUDA_TRY(cudaEventCreateWithFlags(&cb->ev_ck[0], cudaEventDisableTiming));
	CUDA_TRY(cudaEventCreateWithFlags(&cb->ev_ck[1], cudaEventDisableTiming));
	CUDA_TRY(cudaEventCreate(&cb->ev_t0));
	CUDA_TRY(cudaEventCreate(&cb->ev_t1));
	CUBLAS_TRY(cublasCreate(&cb->blas));
	CUBLAS_TRY(cublasSetStream(cb->blas, cb->stream));
	/* a fixed workspace lets cuBLAS calls be captured into graphs */
	cb->blas_ws_size = (size_t)32 << 20;
	if ((rc = dev_alloc(cb, cb->blas_ws_size, &cb->blas_ws)))
		goto out;
	CUBLAS_TRY(cublasSetWorkspace(cb->blas, cb->blas_ws, cb->blas_ws_size));

	cb->layers = (cuda_layer *)calloc(c->n_layer, sizeof(cuda_layer));
	cb->n_tokens = (uint64_t *)calloc(cb->n_slots, sizeof(uint64_t));
	if (!cb->layers || !cb->n_tokens) {
		rc = ssmd_err_set(SSMD_ENOMEM, "cuda: backend tables");
		goto out;
	}
	if ((rc = upload_weights(cb)))
		goto out;

	E = c->d_inner;
	L = c->n_layer;
	cb->off_conv = L * E * c->d_state;
	cb->off_hidden = cb->off_conv + L * E * (c->d_conv - 1);
	cb->off_dt_sum = cb->off_hidden + c->d_model;
	cb->state_floats = cb->off_dt_sum + L * E;
	if ((rc = dev_alloc(cb, cb->n_slots * cb->state_floats * sizeof(float),
			    (void **)&cb->pool)))
		goto out;
	CUDA_TRY(cudaMemset(cb->pool, 0, cb->n_slots * cb->state_floats * sizeof(float)));

	cb->max_batch = bucket_of(cb->n_slots);
	if (cb->max_batch > CUDA_MAX_BUCKET)
		cb->max_batch = CUDA_MAX_BUCKET;
	cb->n_graphs = log2_of(cb->max_batch) + 1;
	cb->graphs = (cuda_graph *)calloc(cb->n_graphs, sizeof(cuda_graph));
	cb->chunk = CUDA_DEFAULT_CHUNK;
	if ((size_t)(cb->chunk / CUDA_CK_FULL_EVERY) * cb->state_floats * sizeof(float) >
	    CUDA_CK_BUDGET_MAX)
		cb->chunk /= 2;
	cb->split_n = -1;
	env = getenv("SSMD_CUDA_CHUNK");
	if (env && atoi(env) > 0)
		cb->chunk = atoi(env);
	/* the batched decode's out_proj in two K slices, which the next norm
	 * adds (CUDA_OUT_SPLIT; d_inner a multiple of 32, so each half starts
	 * 16-byte aligned in every weight dtype); SSMD_CUDA_OUT_SPLIT=1|2
	 * overrides it */
	cb->out_split = c->d_inner % 32 == 0 ? CUDA_OUT_SPLIT : 1;
	env = getenv("SSMD_CUDA_OUT_SPLIT");
	if (env && (atoi(env) == 1 || (atoi(env) == 2 && c->d_inner % 32 == 0)))
		cb->out_split = atoi(env);
	/* the scan's segment length (a multiple of both passes' tiles);
	 * SSMD_CUDA_SCAN_SEG overrides it for tuning */
	cb->scan_seg = SCAN_SEG;
	env = getenv("SSMD_CUDA_SCAN_SEG");
	if (env && atoi(env) >= SCAN1_TILE)
		cb->scan_seg = atoi(env) / SCAN1_TILE * SCAN1_TILE;
	/* the prefill x_proj's K slices at most (xproj_slices());
	 * SSMD_CUDA_XPROJ_SPLIT lowers it for tuning (1: one product) */
	cb->xproj_split = XPROJ_MAX_SLICES;
	env = getenv("SSMD_CUDA_XPROJ_SPLIT");
	if (env && atoi(env) >= 1 && atoi(env) < XPROJ_MAX_SLICES)
		cb->xproj_split = atoi(env);
	/* SSMD_CUDA_PREFILL_PDL=0 launches the prefill's kernels in plain
	 * stream order, for tests and tuning */
	env = getenv("SSMD_CUDA_PREFILL_PDL");
	cb->prefill_pdl = !(env && atoi(env) == 0);
	/* SSMD_CUDA_DT_FUSED=0 keeps the prefill's dt_proj a GEMM of its own
	 * (16-bit weights), for tests and tuning */
	env = getenv("SSMD_CUDA_DT_FUSED");
	cb->dt_fused = !(env && atoi(env) == 0);
	/* the batched step on the tensor cores (ssmk_ssm_step_mma) from
	 * CUDA_STEP_MMA_MIN rows where the shape allows it;
	 * SSMD_CUDA_STEP_MMA=N moves the threshold (0: never), for tests and
	 * tuning */
	cb->step_mma_min = step_mma_ok(cb) ? CUDA_STEP_MMA_MIN : 0;
	env = getenv("SSMD_CUDA_STEP_MMA");
	if (env && step_mma_ok(cb))
		cb->step_mma_min = atoi(env) > 0 ? atoi(env) : 0;
	CUDA_TRY(cudaDeviceGetAttribute(&cb->n_sm, cudaDevAttrMultiProcessorCount, cb->device));
	if ((rc = cxp_init(cb)) || (rc = gr_init(cb)) || (rc = wg_init(cb)))
		goto out;
	/* SSMD_CUDA_CK_MB overrides the checkpoint budget (MiB) for tuning */
	ck_bytes = (size_t)(cb->chunk / CUDA_CK_FULL_EVERY) * cb->state_floats * sizeof(float);
	if (ck_bytes < CUDA_CK_BUDGET)
		ck_bytes = CUDA_CK_BUDGET;
	if (ck_bytes > CUDA_CK_BUDGET_MAX)
		ck_bytes = CUDA_CK_BUDGET_MAX;
	env = getenv("SSMD_CUDA_CK_MB");
	if (env && atoi(env) > 0)
		ck_bytes = (size_t)atoi(env) << 20;
	cb->ck_max = (int)(ck_bytes / (cb->state_floats * sizeof(float)));
	if (cb->ck_max < 1)
		cb->ck_max = 1;
	if (cb->ck_max > CUDA_CK_MAX)
		cb->ck_max = CUDA_CK_MAX;
	rows = cb->chunk > cb->max_batch ? cb->chunk : cb->max_batch;
	if (!cb->graphs) {
		rc = ssmd_err_set(SSMD_ENOMEM, "cuda: graph table");
		goto out;
	}
	if ((rc = act_alloc(cb, rows, cb->max_batch > CUDA_LOGIT_ROWS
					      ? cb->max_batch : CUDA_LOGIT_ROWS)))
		goto out;
	/* the io block: slots | samplers | tokens (cuda_sampler is 8-aligned) */
	{
		const size_t s_off = ((size_t)cb->max_batch * sizeof(int) + 15) & ~(size_t)15;
		const size_t t_off = s_off + (size_t)cb->max_batch * sizeof(cuda_sampler);

		cb->io_bytes = t_off + (size_t)rows * sizeof(int32_t);
		if ((rc = dev_alloc(cb, cb->io_bytes, &cb->d_io)))
			goto out;
		CUDA_TRY(cudaMallocHost(&cb->h_io, cb->io_bytes));
		memset(cb->h_io, 0, cb->io_bytes);
		CUDA_TRY(cudaMemset(cb->d_io, 0, cb->io_bytes));
		cb->d_slots = (int *)cb->d_io;
		cb->h_slots = (int *)cb->h_io;
		cb->d_samp = (cuda_sampler *)((char *)cb->d_io + s_off);
		cb->h_samp = (cuda_sampler *)((char *)cb->h_io + s_off);
		cb->d_tokens = (int32_t *)((char *)cb->d_io + t_off);
		cb->h_tokens = (int32_t *)((char *)cb->h_io + t_off);
	}
	if ((rc = dev_alloc(cb, 2 * cb->ck_max * cb->state_floats * sizeof(float),
			    (void **)&cb->d_ck)) ||
	    (rc = dev_alloc(cb, cb->ck_max * sizeof(int), (void **)&cb->d_ck_pos)) ||
	    (rc = dev_alloc(cb, cb->max_batch * sizeof(int32_t), (void **)&cb->d_next)) ||
	    (rc = dev_alloc(cb, cb->chunk * sizeof(int32_t), (void **)&cb->d_lp_next)) ||
	    (rc = dev_alloc(cb, cb->chunk * sizeof(float), (void **)&cb->d_lp)))
		goto out;
	if ((rc = persist_init(cb)))
		goto out;
	CUDA_TRY(cudaMallocHost((void **)&cb->h_state, cb->state_floats * sizeof(float)));
	CUDA_TRY(cudaMallocHost((void **)&cb->h_logits,
				(size_t)cb->act.logit_rows * c->vocab_size * sizeof(float)));
	CUDA_TRY(cudaMallocHost((void **)&cb->h_ck,
				2 * cb->ck_max * cb->state_floats * sizeof(float)));
	CUDA_TRY(cudaMallocHost((void **)&cb->h_next, cb->max_batch * sizeof(int32_t)));
	/* The decode step's inputs and tokens through mapped pinned memory:
	 * a copy engine's operation in the stream, each way, costs more than
	 * the graph's own PCIe reads of the inputs and the sampling kernel's
	 * writes of the tokens. Measured on the H200 (bf16, ms per step, two
	 * runs each, copies against both mapped): batch 1 130m 0.279, 0.282 ->
	 * 0.273, 0.273, 1.4b 1.119, 1.117 -> 1.113, 1.108, 2.8b 1.991, 1.991
	 * -> 1.981, 1.971 (either alone moved 130m by under 1%).
	 * SSMD_CUDA_IO_MAPPED=0 keeps the copies, for tests and tuning. */
	env = getenv("SSMD_CUDA_IO_MAPPED");
	cb->io_mapped = env ? atoi(env) & 3 : 3;
	CUDA_TRY(cudaHostGetDevicePointer(&cb->dh_io, cb->h_io, 0));
	CUDA_TRY(cudaHostGetDevicePointer((void **)&cb->dh_next, cb->h_next, 0));
	CUDA_TRY(cudaMallocHost((void **)&cb->h_lp, cb->chunk * sizeof(float)));
	cb->ck_view.arch = c->arch;
	cb->ck_view.n_layer = c->n_layer;
	cb->ck_view.d_inner = c->d_inner;
	cb->ck_view.d_state = c->d_state;
	cb->ck_view.d_conv = c->d_conv;
	cb->ck_view.d_model = c->d_model;
	memcpy(cb->ck_view.fingerprint, cb->model->fingerprint, SSM_FINGERPRINT_LEN);
	CUDA_TRY(cudaDeviceSynchronize());
out:
	if (rc) {
		cuda_close(b);
		b->ops = NULL;
	}
	return rc;
}
