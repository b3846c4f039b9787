/*
 * cuda_persist.cuh — the batch-1 decode step as one persistent kernel.
 *
 * Included by cuda_backend.cu only, after cuda_kernels.cuh and
 * cuda_sample.cuh. At batch 1 a
 * decode step reads every weight once and does little else, so its time is
 * the weight bytes over the memory bandwidth plus whatever keeps the memory
 * idle: launch gaps and the latency at the start of each dependent step. One
 * kernel with one block per SM runs the whole step; its blocks meet at a
 * grid barrier (pk_arrive / pk_wait) where a result is needed by every
 * block, three times per layer:
 *   A  RMSNorm of h (every block stages h * norm in shared memory; the
 *      scale multiplies the sums) . in_proj -> x | z, the conv step +
 *      SiLU on x                                          -> xz, xc
 *   B  x_proj, each block over its own channels (those its conv steps
 *      made in A), added into the layer's sums            -> xacc (W)
 *      (no barrier between A and B: pk_xw_pr)
 *   C  dt_low | B | C = the sums (every block), then per channel dt_proj
 *      + softplus + state update + gate                   -> yT
 *   D  out_proj on yT, added into h with the bias         -> h
 * or, in the form by channel group (GROUPS, chosen per model by
 * pk_groups()), twice: C runs the block's group of channels -> y (shared
 * memory), and D, with no barrier before it, that group's columns of
 * out_proj for the block's rows, added into the layer's out_proj sums
 * (pk_dgrid)                                              -> osum (D);
 * the next A then starts by adding them into h (pk_stage_res)
 * and after the last layer the final RMSNorm . lm_head -> logits, with the
 * hidden vector stored into the slot. The last block to finish lm_head picks
 * the next token (pk_sample), so sampling needs no launch of its own.
 *
 * What hides the latency: nothing a phase loads from the weights or from the
 * slot's state depends on an earlier phase of the same step, so each warp
 * loads the first pieces of its first item of the next phase (pk_fetch; the
 * conv window, the SSM state and per-channel vectors likewise) between
 * arriving at the barrier and waiting for it, and the next item's while it
 * computes the current one. The layer table lives in shared memory, so no
 * phase waits for a pointer. Data written during the step by another block
 * (h, xz, xc, xacc, yT) is read with ld.global.cg (L2, never a stale L1
 * line).
 *
 * Work split. Global warp gw = warp * G + block (G blocks of PK_THREADS), so
 * consecutive items land on different SMs; warp gw takes items gw, gw + NW,
 * ... (NW = G * PK_WARPS). A GEMV item is a row: a warp's lanes read its
 * 16-byte pieces q = lane + 32 i and meet each with the staged input vector
 * in shared memory; the warp's sum goes to the phase's epilogue. The SSM
 * phase gives each channel 4 lanes (NPL states each), channel e on block
 * e % G, as ssmk_ssm_step_b does (by group: a block's PK_CG channels in
 * one turn).
 *
 * The numbers follow the cuBLAS path of larger batches: GEMM inputs rounded
 * to T as it rounds them (the norm's input before its scale), f32 sums in a
 * fixed order, the block sums of x_proj (and by group out_proj) added
 * exactly as integers (every run gives the same bits), the same formulas
 * (ssm_conv_channel's conv step, ssmk_ssm_step_b's update).
 *
 * Requirements (persist_init_t): d_model and d_inner whole numbers of
 * 16-byte pieces; 2 * d_conv + 1 <= 32 (the conv epilogue's lanes); the
 * shared memory within the device's limit; every block resident at once,
 * which the cooperative launch guarantees or refuses.
 */
#ifndef SSM_CUDA_PERSIST_CUH
#define SSM_CUDA_PERSIST_CUH

#define PK_THREADS 512
#define PK_WARPS (PK_THREADS / 32)
#define PK_PFC 4   /* dt_proj pieces per lane fetched ahead in phase C */
/*
 * The persistent kernels' x_proj sums (pk_xsum_*): every block adds its
 * part of each value (W a row) as an integer in units of 2^-32, so the sum is
 * exact whatever order the blocks' atomics land in, and every run gives the
 * same bits. Rounding a part costs at most 2^-33, ~1.5e-8 over 132 blocks:
 * below an f32 sum's own rounding for any value over ~1e-3. A part must
 * stay within +-PK_XMAX = 2^23, so that the parts of up to PK_XBLOCKS = 256
 * blocks (persist_init_t refuses a larger grid) sum inside a signed 64-bit
 * integer and no sum can wrap. A part outside it (or not finite) goes into
 * an f32 sum of its own instead, and sets the layer's flag, which tells
 * phase C to add those sums in: x_proj's values (dt_low, B, C) are orders
 * of magnitude smaller in any trained model, but a model whose values pass
 * 2^23 still gets them within f32 rounding (only then may two runs differ
 * in the last bits, the f32 atomics' order not being fixed).
 *
 * Block b adds into copy b % C of C copies (PK_XCOPIES for x_proj: on the
 * H200, 1.4b's batch-1 step took 1.111 ms with 2 copies, 1.132 with 1,
 * 1.115 with 4 and 1.131 with 8; bench/NOTES.md, round nineteen). Per
 * layer parity (the sums of layer l are read in its phase C and cleared in
 * the next layer's) PK_SUM_AREA(C, n) words for n values: the copies, the
 * flag, a word of padding, then the n f32 sums of the parts past the limit
 * (two a word, 16-byte aligned where C n is even), rounded up to whole
 * 16-byte pieces. The f32 sums stay zero where no part passed the limit,
 * so adding them in costs no rounding. Against round twenty-one's form (a
 * part past the limit made the values NaN) this costs the 130m batch-1
 * step ~2% and leaves 1.4b and 2.8b level; the f32 sums in a buffer of
 * their own cost 1-2% on every shape (bench/NOTES.md, round twenty-two),
 * and the flag after the f32 sums, on a line of its own, 1% on 2.8b
 * (round twenty-three).
 *
 * The batch-1 kernel's out_proj sums (osum) work the same way with one
 * copy (PK_OCOPIES): each block adds its channel group's part of each of
 * its rows, the next phase A (pk_stage_res) reads them, adding the f32
 * sums whether or not any part passed the limit, so their flag word is
 * left unset.
 */
#define PK_XFIX 0x1p32f
#define PK_XMAX 0x1p23f
#define PK_XBLOCKS 256
#define PK_XCOPIES 2
#define PK_OCOPIES 1
#define PK_SUM_AREA(c, n) (((c) * (n) + 2 + ((n) + 1) / 2 + 1) / 2 * 2)
#define PK_XAREA(n) PK_SUM_AREA(PK_XCOPIES, n)
#define PK_OAREA(n) PK_SUM_AREA(PK_OCOPIES, n)
/* The weight pieces a lane fetches ahead are the kernel's template
 * parameter PF (6 or 8, pk_pf()). */

/* The grid barrier's arrival count. It only grows: each launch adds
 * gridDim.x * its barriers, so a launch finds its base at start. Each
 * kernel has a count of its own (the batch-1 kernel meets twice a layer,
 * the multi-row kernels three times, and both twice more at the end, in
 * pk_sample). */
typedef struct pk_bar {
	unsigned long long count;
} pk_bar;

/* Everything the kernel reads, by value. */
typedef struct pk_args {
	const cuda_layer *layers; /* device copy of cb->layers */
	const void *embed, *lm_head;
	const float *norm_f;
	float *pool;
	const int *slots;         /* slots[0]: the row's slot, < 0 padding */
	const int32_t *tokens;
	size_t state_floats, off_conv, off_hidden, off_dt_sum;
	int D, E, N, K, R, V, W, n_layer;
	float eps;
	float *xz, *xc, *h, *logits;
	void *yT;
	/* x_proj's weight in this kernel's block order (ssmk_xw_blocks), M
	 * channels a block */
	const void *xwb;
	int M;
	/* the x_proj sums: 2 PK_XAREA(R W) words, R the most rows a persistent
	 * kernel serves here (persist_init_t); zero between launches */
	unsigned long long *xacc;
	/* the batch-1 kernel's out_proj sums by group, 2 PK_OAREA(D) words
	 * (zero at the first launch; the kernel zeroes what it used), and
	 * each layer's input h, 2 D floats (layer l's at (l & 1) D) */
	unsigned long long *osum;
	float *hbuf;
	pk_bar *bar;
	/* the step's sampling (pk_sample): each row's sampler, where its token
	 * goes, each block's greedy pick of each row and its chunk's sum of a
	 * temperature row's weights (4 G words each) */
	const cuda_sampler *samp;
	int32_t *next;
	unsigned long long *cand;
	double *csum;
	/* ssm_cuda_persist_split(): each block's clock at the start, at each
	 * phase's end and after each barrier (8 per layer), and at the end:
	 * pk_n_marks() a block, block b's from trace[b * pk_n_marks()]; or
	 * NULL */
	long long *trace;
} pk_args;

__host__ __device__ __forceinline__ int pk_n_marks(int n_layer) { return 8 * n_layer + 2; }

/* This block's clock into its mark i (when tracing). */
#define PK_MARK(i)                                                              \
	do {                                                                    \
		if (p.trace && threadIdx.x == 0)                                \
			p.trace[(size_t)blockIdx.x * pk_n_marks(p.n_layer) + (i)] = \
				clock64();                                      \
	} while (0)

__device__ __forceinline__ unsigned long long pk_ld_acquire(const unsigned long long *p)
{
	unsigned long long v;

	asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
	return v;
}

/* The same load without the acquire: no L1 invalidate (CCTL.IVALL) after it. */
__device__ __forceinline__ unsigned long long pk_ld_relaxed(const unsigned long long *p)
{
	unsigned long long v;

	asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
	return v;
}

/*
 * The grid barrier in two halves, so a block loads what the next phase needs
 * from the weights between them. pk_arrive: every thread of the block is
 * done with the phase, and thread 0 adds the block's arrival with release
 * semantics (its fence covers the block's writes, ordered before it by
 * __syncthreads). pk_wait: thread 0 polls with relaxed loads until every
 * block has arrived (count >= target), then reads the count once more with
 * acquire semantics (the count only grows, so that load reads from the
 * release sequence of every block's arrival), then releases the block.
 * Writes before pk_arrive in any block are visible after pk_wait in every
 * block. An acquire load is an L2 load plus an L1 invalidate; polling
 * without it saves ~90 ns a barrier on the H200 (bench/NOTES.md, round
 * nineteen).
 */
__device__ __forceinline__ void pk_arrive(pk_bar *bar)
{
	__syncthreads();
	if (threadIdx.x == 0)
		asm volatile("red.release.gpu.global.add.u64 [%0], 1;"
			     :: "l"(&bar->count) : "memory");
}

__device__ __forceinline__ void pk_wait(const pk_bar *bar, unsigned long long target)
{
	if (threadIdx.x == 0) {
		while (pk_ld_relaxed(&bar->count) < target)
			;
		(void)pk_ld_acquire(&bar->count);
	}
	__syncthreads();
}

/* The count before this block's arrival, as an arrival that also
 * acquires: the block that gets the launch's last count sees every write
 * that any block made before its own. */
__device__ __forceinline__ unsigned long long pk_ticket(pk_bar *bar)
{
	unsigned long long old;

	asm volatile("atom.acq_rel.gpu.global.add.u64 %0, [%1], 1;"
		     : "=l"(old) : "l"(&bar->count) : "memory");
	return old;
}

/* The count at the start of a launch of n_bar barriers, rounded down to a
 * whole launch: blocks may already have arrived at the first barrier, never
 * past it. */
__device__ __forceinline__ unsigned long long pk_base(const pk_bar *bar, int n_bar)
{
	const unsigned long long c = pk_ld_acquire(&bar->count),
				 per = (unsigned long long)gridDim.x * n_bar;

	return c - c % per;
}

/* Bytes of the layer table at the start of shared memory (copied from the
 * device table in 16-byte pieces). */
static_assert(sizeof(cuda_layer) % 16 == 0, "cuda_layer: whole 16-byte pieces");

__host__ __device__ __forceinline__ int pk_lay_bytes(int n_layer)
{
	return (int)(n_layer * sizeof(cuda_layer));
}

/* The layer table into shared memory at smem, in 16-byte pieces. */
__device__ __forceinline__ void pk_load_layers(const pk_args &p, uint4 *smem)
{
	for (int i = threadIdx.x; i < pk_lay_bytes(p.n_layer) / 16; i += PK_THREADS)
		smem[i] = ((const uint4 *)p.layers)[i];
}

/*
 * x_proj without a grid barrier before it. Phase A's items are one row (the
 * batch-1 kernel) or PR = 2 rows (the multi-row kernels) of in_proj, item
 * it on block it % G (pk_gw), so channel e's conv step runs on block
 * (e / PR) % G. Each block multiplies its own channels e = PR (b + G q) + s
 * (s < PR), local index m = PR q + s < M = PR ceil(E / (PR G)), by their
 * columns of x_proj as soon as its A ends, and adds the products into the
 * layer's sums (pk_xsum_add); phase C reads the sums. The columns come in
 * block order (ssmk_xw_blocks, made at open): block b's M (W) rows, zero
 * past E, one run of pk_xw_run() elements, which the block copies into
 * shared memory in 16-byte pieces.
 */
__host__ __device__ __forceinline__ int pk_xw_pr(int nb) { return nb == 1 ? 1 : 2; }

__host__ __device__ __forceinline__ int pk_xw_m(int E, int G, int nb)
{
	const int pr = pk_xw_pr(nb);

	return pr * ((E + pr * G - 1) / (pr * G));
}

__host__ __device__ __forceinline__ int pk_xw_run(int M, int W, size_t wsize)
{
	const int vec = (int)(16 / wsize);

	return (M * W + vec - 1) / vec * vec;
}

/* The batch-1 kernel's channel group: the channels a block's phase C
 * takes in one turn, SSM_LANES lanes each (pk_dgrid). */
#define PK_CG (PK_THREADS / SSM_LANES)

/*
 * The persistent kernels' dynamic shared memory for NB rows: the layer
 * table; one area that holds the staged input vectors (NB, max(D, E)) in T
 * during the GEMV phases, and in phase C the x_proj values dt_low | B | C
 * (NB, W) in f32 followed by the batch-1 kernel's y (PK_CG) in T; the
 * block's conv outputs (NB, M) in T; its x_proj run.
 */
template <typename T>
struct pk_smem_map {
	cuda_layer *lay;
	T *xs, *xloc, *xw, *ys;
	float *dbc;
};

/* Bytes of the x_proj values in the area, whole 16-byte pieces. */
__host__ __device__ __forceinline__ size_t pk_dbc_bytes(int nb, int W)
{
	return ((size_t)nb * W * sizeof(float) + 15) / 16 * 16;
}

/* Bytes of the area, whole 16-byte pieces. */
__host__ __device__ __forceinline__ size_t pk_area_bytes(int nb, int D, int E, int W,
							  size_t wsize)
{
	size_t v = (size_t)nb * (D > E ? D : E) * wsize, c = pk_dbc_bytes(nb, W) + PK_CG * wsize;

	return ((v > c ? v : c) + 15) / 16 * 16;
}

__host__ __device__ __forceinline__ size_t pk_xloc_bytes(int nb, int M, size_t wsize)
{
	return ((size_t)nb * M * wsize + 15) / 16 * 16;
}

template <typename T, int NB>
__device__ __forceinline__ pk_smem_map<T> pk_carve(uint4 *smem, const pk_args &p)
{
	char *area = (char *)smem + pk_lay_bytes(p.n_layer);
	pk_smem_map<T> m;

	m.lay = (cuda_layer *)smem;
	m.xs = (T *)area;
	m.dbc = (float *)area;
	m.ys = (T *)(area + pk_dbc_bytes(NB, p.W));
	m.xloc = (T *)(area + pk_area_bytes(NB, p.D, p.E, p.W, sizeof(T)));
	m.xw = (T *)((char *)m.xloc + pk_xloc_bytes(NB, p.M, sizeof(T)));
	return m;
}

/* Bytes of pk_carve's layout for nb rows on a grid of G blocks. */
static inline size_t pk_smem_bytes(int nb, int D, int E, int W, int G, size_t wsize,
				   int n_layer)
{
	const int M = pk_xw_m(E, G, nb);

	return (size_t)pk_lay_bytes(n_layer) + pk_area_bytes(nb, D, E, W, wsize) +
	       pk_xloc_bytes(nb, M, wsize) + (size_t)pk_xw_run(M, W, wsize) * wsize;
}

/* This warp's global index and the number of warps. */
__device__ __forceinline__ int pk_gw(void)
{
	return (threadIdx.x >> 5) * gridDim.x + blockIdx.x;
}

__device__ __forceinline__ int pk_nw(void) { return gridDim.x * PK_WARPS; }

/*
 * A GEMV phase's items are whole rows: warp gw takes rows gw, gw + NW, ...
 * A lane's pieces of a row, q = lane + 32 i (i < per = ceil(np / 32), np
 * the row's 16-byte pieces), come in H = ceil(per / PF) units of PF pieces,
 * unit h holding i = h PF .. h PF + PF - 1. The warp's units run in order
 * over its rows, so the next unit (of the same row or the next) loads while
 * one computes, and no piece of a long row waits for memory on its own.
 */
template <typename T, int PF>
__device__ __forceinline__ int pk_units(int k)
{
	constexpr int VEC = 16 / sizeof(T);
	const int per = (k / VEC + 31) / 32;

	return (per + PF - 1) / PF;
}

/* Unit h of row `row` of an (m, k) matrix (zeros past the row's end or
 * past the last row). */
template <typename T, int PF>
__device__ __forceinline__ void pk_fetch(const T *W, int m, int k, int row, int h, uint4 *pre)
{
	constexpr int VEC = 16 / sizeof(T);
	const int lane = threadIdx.x & 31;

#pragma unroll
	for (int i = 0; i < PF; i++) {
		const int q = lane + 32 * (h * PF + i);
		pre[i] = make_uint4(0, 0, 0, 0);
		if (row < m && q < k / VEC)
			pre[i] = __ldg((const uint4 *)(W + (size_t)row * k) + q);
	}
}

/* Asks L2 for bytes at a (16-byte aligned, a multiple of 16 long). */
__device__ __forceinline__ void pk_l2(const void *a, size_t bytes)
{
	if (bytes)
		asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;"
			     :: "l"(a), "r"((unsigned)bytes) : "memory");
}

/* acc plus this lane's products of unit h of a row of np pieces (cur)
 * with the staged input xs, in piece order. */
template <typename T, int PF>
__device__ __forceinline__ float pk_dot(const uint4 *cur, const T *xs, int np, int h,
					float acc)
{
	constexpr int VEC = 16 / sizeof(T);
	const int lane = threadIdx.x & 31;
	float wf[VEC], xf[VEC];

#pragma unroll
	for (int i = 0; i < PF; i++) {
		const int q = lane + 32 * (h * PF + i);
		if (q < np) {
			unpack16(cur[i], wf, T());
			unpack16(*(const uint4 *)(xs + q * VEC), xf, T());
#pragma unroll
			for (int j = 0; j < VEC; j++)
				acc += wf[j] * xf[j];
		}
	}
	return acc;
}

/*
 * One GEMV phase: for each row of this warp, v = W[row] . xs (xs: the input
 * vector in shared memory, in T), summed over the warp, then epi(row, v) on
 * every lane. cur holds the warp's first unit (pk_fetch(.., pk_gw(), 0,
 * ..)); the next unit is fetched while one computes. A lane adds its pieces
 * of a row in order, so the sums do not depend on PF. Rows of one unit (H =
 * 1) take a loop without the unit bookkeeping.
 */
template <typename T, int PF, typename Epi>
__device__ __forceinline__ void pk_gemv(const T *W, int m, int k, const T *xs, uint4 *cur,
					Epi epi)
{
	constexpr int VEC = 16 / sizeof(T);
	const int nw = pk_nw(), H = pk_units<T, PF>(k), np = k / VEC;
	uint4 nxt[PF];
	float acc = 0.0f;

	if (H == 1) {
		for (int row = pk_gw(); row < m; row += nw) {
			pk_fetch<T, PF>(W, m, k, row + nw, 0, nxt);
			acc = pk_dot<T, PF>(cur, xs, np, 0, 0.0f);
			for (int o = 16; o > 0; o >>= 1)
				acc += __shfl_xor_sync(0xffffffffu, acc, o);
			epi(row, acc);
#pragma unroll
			for (int i = 0; i < PF; i++)
				cur[i] = nxt[i];
		}
		return;
	}
	for (int row = pk_gw(), h = 0; row < m;) {
		/* the next unit: h + 1 of this row, or the next row's first */
		const int nrow = h + 1 < H ? row : row + nw, nh = h + 1 < H ? h + 1 : 0;

		pk_fetch<T, PF>(W, m, k, nrow, nh, nxt);
		acc = pk_dot<T, PF>(cur, xs, np, h, acc);
		if (h == H - 1) {
			for (int o = 16; o > 0; o >>= 1)
				acc += __shfl_xor_sync(0xffffffffu, acc, o);
			epi(row, acc);
			acc = 0.0f;
		}
#pragma unroll
		for (int i = 0; i < PF; i++)
			cur[i] = nxt[i];
		row = nrow;
		h = nh;
	}
}

/* Rounds of a staging loop (PK_THREADS pieces each) whose loads are issued
 * together, before any is used, for NB rows: a 1.4b or 2.8b row of d_model
 * or d_inner floats is then one wait for L2, not one a round. One round at 4
 * rows, where two would spill the multi-row kernel's registers. */
#define PK_ROUNDS(NB) ((NB) > 2 ? 1 : 2)

/* xs[b] = the len elements of T at src + b * len, for rows b < NB (written
 * during this step: read through L2). */
template <typename T, int NB>
__device__ __forceinline__ void pk_stage(const void *src, int len, T *xs)
{
	const int n = len * (int)sizeof(T) / 16;

	for (int j0 = 0; j0 < n; j0 += PK_ROUNDS(NB) * PK_THREADS) {
		uint4 v[PK_ROUNDS(NB)][NB];

		if (n - j0 <= PK_THREADS) {
			/* the last round alone (the whole row at 1.4b's 4096 bf16) */
			const int j = j0 + threadIdx.x;
			if (j < n) {
#pragma unroll
				for (int b = 0; b < NB; b++)
					v[0][b] = __ldcg((const uint4 *)((const T *)src +
									 (size_t)b * len) + j);
#pragma unroll
				for (int b = 0; b < NB; b++)
					((uint4 *)(xs + (size_t)b * len))[j] = v[0][b];
			}
			break;
		}

#pragma unroll
		for (int k = 0; k < PK_ROUNDS(NB); k++) {
			const int j = j0 + threadIdx.x + k * PK_THREADS, jc = j < n ? j : 0;
#pragma unroll
			for (int b = 0; b < NB; b++)
				v[k][b] = __ldcg((const uint4 *)((const T *)src + (size_t)b * len) + jc);
		}
#pragma unroll
		for (int k = 0; k < PK_ROUNDS(NB); k++) {
			const int j = j0 + threadIdx.x + k * PK_THREADS;
			if (j >= n)
				break;
#pragma unroll
			for (int b = 0; b < NB; b++)
				((uint4 *)(xs + (size_t)b * len))[j] = v[k][b];
		}
	}
}

/* scale[b] = rsqrt(mean of row b's squares + eps), from each thread's
 * sums of squares ss[b] (every thread; ends with the block's barrier).
 * red: shared (PK_WARPS * NB). */
template <int NB>
__device__ __forceinline__ void pk_norm_scale(float *ss, int D, float eps, float *red,
					      float *scale)
{
#pragma unroll
	for (int b = 0; b < NB; b++) {
		for (int o = 16; o > 0; o >>= 1)
			ss[b] += __shfl_xor_sync(0xffffffffu, ss[b], o);
		if ((threadIdx.x & 31) == 0)
			red[(threadIdx.x >> 5) * NB + b] = ss[b];
	}
	__syncthreads();
#pragma unroll
	for (int b = 0; b < NB; b++) {
		float t = 0.0f;
		for (int w = 0; w < PK_WARPS; w++)
			t += red[w * NB + b];
		scale[b] = rsqrtf(t / (float)D + eps);
	}
}

/* pk_stage_norm's float4 body: xs[b] = v_b * nw, ss[b] += the squares,
 * every load of R rounds issued before any is used (D % 4 == 0). */
template <typename T, int NB, int R>
__device__ __forceinline__ void pk_norm_v4(const float *h, const T *emb, const int32_t *tokens,
					   const float *nw, int D, T *xs, float *ss)
{
	const int D4 = D / 4;

	for (int i0 = 0; i0 < D4; i0 += R * PK_THREADS) {
		float4 w[R], v[R][NB];

#pragma unroll
		for (int k = 0; k < R; k++) {
			const int i = i0 + threadIdx.x + k * PK_THREADS, ic = i < D4 ? i : 0;
			w[k] = ((const float4 *)nw)[ic];
#pragma unroll
			for (int b = 0; b < NB; b++)
				v[k][b] = emb ? load4(emb + (size_t)tokens[b] * D + 4 * ic)
					      : __ldcg((const float4 *)(h + (size_t)b * D) + ic);
		}
#pragma unroll
		for (int k = 0; k < R; k++) {
			const int i = i0 + threadIdx.x + k * PK_THREADS;
			if (i >= D4)
				break;
#pragma unroll
			for (int b = 0; b < NB; b++) {
				const float4 x = v[k][b];
				ss[b] += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
				store4<T>(xs + (size_t)b * D + 4 * i,
					  make_float4(x.x * w[k].x, x.y * w[k].y, x.z * w[k].z,
						      x.w * w[k].w));
			}
		}
	}
}

/*
 * The RMSNorm of rows b < NB of v = h (written during this step) or, when
 * emb is set, the embedding rows of tokens[b] (the input of layer 0), in one
 * pass: xs[b] = v_b * nw in T, and scale[b] = rsqrt(mean(v_b^2) + eps)
 * multiplies each dot product afterwards (RMSNorm(v) . w = scale * ((v *
 * nw) . w)), so no block waits for the sum of squares before its weight
 * stream. red: shared (PK_WARPS * NB).
 */
template <typename T, int NB>
__device__ __forceinline__ void pk_stage_norm(const float *h, const T *emb, const int32_t *tokens,
					       const float *nw, int D, float eps, T *xs,
					       float *red, float *scale)
{
	float ss[NB];

#pragma unroll
	for (int b = 0; b < NB; b++)
		ss[b] = 0.0f;
	if (NB <= 2 && D % 4 == 0) {
		/* float4 pieces, every load of PK_ROUNDS(NB) rounds (the whole row up
		 * to d_model 4096) issued before any is used: one wait for L2; one
		 * round where it holds the row (1.4b). At 4 rows the float4s spill
		 * the multi-row kernel's registers (16 bytes): it keeps the loop
		 * below. */
		if (D / 4 <= PK_THREADS)
			pk_norm_v4<T, NB, 1>(h, emb, tokens, nw, D, xs, ss);
		else
			pk_norm_v4<T, NB, PK_ROUNDS(NB)>(h, emb, tokens, nw, D, xs, ss);
	} else {
		/* every row's loads before any store: one wait for L2, not NB */
		for (int i = threadIdx.x; i < D; i += PK_THREADS) {
			const float w = nw[i];
			float v[NB];
#pragma unroll
			for (int b = 0; b < NB; b++)
				v[b] = emb ? to_f32(emb[(size_t)tokens[b] * D + i])
					   : __ldcg(h + (size_t)b * D + i);
#pragma unroll
			for (int b = 0; b < NB; b++) {
				ss[b] += v[b] * v[b];
				xs[(size_t)b * D + i] = from_f32<T>(v[b] * w);
			}
		}
	}
	pk_norm_scale<NB>(ss, D, eps, red, scale);
}

/* Phase C's loads that depend on nothing of this step, for channel e of
 * row b (the multi-row kernel's; 0 here). */
template <typename T, int NPL>
struct pk_chan {
	float a[NPL], hs[NPL], dts, dt_b, dp, zb;
	uint4 w[PK_PFC];
};

template <typename T, int NPL>
__device__ __forceinline__ void pk_chan_fetch(const pk_args &p, const cuda_layer *y, int l,
					      int e, int b, pk_chan<T, NPL> *c)
{
	constexpr int VEC = 16 / sizeof(T);
	const int g = threadIdx.x & (SSM_LANES - 1), slot = p.slots[b];

	if (e >= p.E)
		return;
	const float *hs = p.pool + (size_t)slot * p.state_floats +
			  (size_t)l * p.E * p.N + (size_t)e * p.N + g * NPL;
#pragma unroll
	for (int i = 0; i < NPL; i++) {
		c->a[i] = y->A[(size_t)e * p.N + g * NPL + i];
		c->hs[i] = slot >= 0 ? hs[i] : 0.0f;
	}
	c->dt_b = y->dt_b[e];
	c->dp = y->Dp[e];
	c->zb = y->in_b ? y->in_b[p.E + e] : 0.0f;
	c->dts = slot >= 0 && g == 0 ? p.pool[(size_t)slot * p.state_floats + p.off_dt_sum +
					      (size_t)l * p.E + e]
				     : 0.0f;
	if (p.R % VEC == 0)
#pragma unroll
		for (int i = 0; i < PK_PFC; i++) {
			const int j = (g + SSM_LANES * i) * VEC;
			if (j < p.R)
				c->w[i] = __ldg((const uint4 *)((const T *)y->dt_w +
								(size_t)e * p.R + j));
		}
}

/* This lane's channel of phase C: 4 lanes per channel, channel e on block
 * e % G, the block's channel groups in turn. */
__device__ __forceinline__ int pk_chan0(void)
{
	return (threadIdx.x / SSM_LANES) * gridDim.x + blockIdx.x;
}

__device__ __forceinline__ int pk_nchan(void)
{
	return gridDim.x * (PK_THREADS / SSM_LANES);
}

/*
 * Phase C for channel e of row b (the ssmk_ssm_step_b formulas):
 *   dt = softplus(dt_w[e, :] . dbc[0:R] + dt_b[e]), the state update on the
 *   row's slot, y = (C . h + D x) * SiLU(z + in_b) -> *yo, dt_sum[e] +=
 *   dt. dbc: shared (W), the row's x_proj values (phase B's sums); x =
 *   xc[b, e], z = xz[b, E + e]. e == E: no channel (the lanes still join
 *   the shuffles). y goes to *yo. The new state and dt_sum go to the slot,
 *   or with DEFER into c (c.hs, c.dts) for pk_chan_store: the batch-1
 *   kernel runs a channel in several blocks (pk_dgrid), which read the old
 *   state up to the barrier before this phase, so its owner writes the new
 *   one only after the next barrier.
 */
template <typename T, int NPL, bool DEFER>
__device__ __forceinline__ void pk_chan_step(const pk_args &p, const cuda_layer *y, int l,
					     int e, int b, pk_chan<T, NPL> &c, const float *dbc,
					     float x, float z, T *yo)
{
	constexpr int VEC = 16 / sizeof(T);
	const int N = p.N, R = p.R, E = p.E, g = threadIdx.x & (SSM_LANES - 1);
	const int slot = p.slots[b];
	const bool valid = e < E;
	const int ec = valid ? e : E - 1;
	float acc = 0.0f;

	if (R % VEC == 0) {
		const T *wr = (const T *)y->dt_w + (size_t)ec * R;
		float wf[VEC];
#pragma unroll
		for (int i = 0; i < PK_PFC; i++) {
			const int j = (g + SSM_LANES * i) * VEC;
			if (valid && j < R) {
				unpack16(c.w[i], wf, T());
#pragma unroll
				for (int q = 0; q < VEC; q++)
					acc += wf[q] * dbc[j + q];
			}
		}
		for (int j = (g + SSM_LANES * PK_PFC) * VEC; j < R; j += SSM_LANES * VEC) {
			unpack16(__ldg((const uint4 *)(wr + j)), wf, T());
#pragma unroll
			for (int q = 0; q < VEC; q++)
				acc += wf[q] * dbc[j + q];
		}
	} else {
		for (int j = g; j < R; j += SSM_LANES)
			acc += to_f32(((const T *)y->dt_w)[(size_t)ec * R + j]) * dbc[j];
	}
	acc += __shfl_xor_sync(0xffffffffu, acc, 1);
	acc += __shfl_xor_sync(0xffffffffu, acc, 2);
	if (!valid)
		return;
	const float dt = softplus(acc + c.dt_b);
	const float *Bv = dbc + R + g * NPL, *Cv = dbc + R + N + g * NPL;
	float *hs = p.pool + (size_t)slot * p.state_floats + (size_t)l * E * N +
		    (size_t)e * N + g * NPL;
	float yv = 0.0f;

#pragma unroll
	for (int i = 0; i < NPL; i++) {
		const float hv = __expf(dt * c.a[i]) * c.hs[i] + dt * Bv[i] * x;
		yv += Cv[i] * hv;
		if (DEFER)
			c.hs[i] = hv;
		else if (slot >= 0)
			hs[i] = hv;
	}
	if (DEFER)
		c.dts += dt;
	yv += __shfl_xor_sync(0x0000000fu << (threadIdx.x & 28), yv, 1);
	yv += __shfl_xor_sync(0x0000000fu << (threadIdx.x & 28), yv, 2);
	if (g == 0) {
		yv = (yv + c.dp * x) * silu(z + c.zb);
		*yo = from_f32<T>(yv);
		if (!DEFER && slot >= 0)
			p.pool[(size_t)slot * p.state_floats + p.off_dt_sum + (size_t)l * E + e] =
				c.dts + dt;
	}
}

/* Writes pk_chan_step's deferred state and dt_sum of channel e of row b
 * (c) into the row's slot. */
template <typename T, int NPL>
__device__ __forceinline__ void pk_chan_store(const pk_args &p, int l, int e, int b,
					      const pk_chan<T, NPL> &c)
{
	const int g = threadIdx.x & (SSM_LANES - 1), slot = p.slots[b];

	if (e >= p.E || slot < 0)
		return;
	float *hs = p.pool + (size_t)slot * p.state_floats + (size_t)l * p.E * p.N +
		    (size_t)e * p.N + g * NPL;
#pragma unroll
	for (int i = 0; i < NPL; i++)
		hs[i] = c.hs[i];
	if (g == 0)
		p.pool[(size_t)slot * p.state_floats + p.off_dt_sum + (size_t)l * p.E + e] = c.dts;
}

/*
 * The conv epilogue of phase A for channel r over rows b < NB, on all lanes
 * of the warp: the ssm_conv_channel formula, its sum in the same order. The
 * lanes hold (pk_cw_fetch, fetched with the row) at b (K-1) + j for j < K-1
 * the conv window entry j of row b's slot, at NB (K-1) + j the conv weight
 * j, at NB (K-1) + K the conv bias and at NB (K-1) + K + 1 the in_proj
 * bias: NB (K-1) + K + 2 <= 32. v[b]: in_proj row r . xn_b, scaled. The
 * output goes to xc and to the block's copy for x_proj, xloc[b M] (xloc:
 * pk_carve's at channel r's local index).
 */
template <int NB>
__device__ __forceinline__ float pk_cw_fetch(const pk_args &p, const cuda_layer *y, int l,
					      int r)
{
	const int lane = threadIdx.x & 31, K = p.K, base = NB * (K - 1);

	if (r >= p.E)
		return 0.0f;
	if (lane < base) {
		const int b = lane / (K - 1), j = lane - b * (K - 1), slot = p.slots[b];
		return slot >= 0 ? p.pool[(size_t)slot * p.state_floats + p.off_conv +
					  ((size_t)l * p.E + r) * (K - 1) + j]
				 : 0.0f;
	}
	if (lane < base + K)
		return y->conv_w[(size_t)r * K + lane - base];
	if (lane == base + K)
		return y->conv_b ? y->conv_b[r] : 0.0f;
	if (lane == base + K + 1)
		return y->in_b ? y->in_b[r] : 0.0f;
	return 0.0f;
}

template <typename T, int NB>
__device__ __forceinline__ void pk_conv_epi(const pk_args &p, int l, int r, const float *v,
					     float cw, T *xloc)
{
	const int lane = threadIdx.x & 31, K = p.K, base = NB * (K - 1), E = p.E;
	const float inb = __shfl_sync(0xffffffffu, cw, base + K + 1);
	const float cb = __shfl_sync(0xffffffffu, cw, base + K);
	/* the window shifts by one: entry j takes entry j + 1, the last x */
	const float next = __shfl_down_sync(0xffffffffu, cw, 1);
	const int mb = lane / (K - 1), mj = lane - mb * (K - 1);
	float mine = 0.0f;

#pragma unroll
	for (int b = 0; b < NB; b++) {
		const float x = v[b] + inb;
		float acc = cb;
		for (int j = 0; j < K - 1; j++)
			acc += __shfl_sync(0xffffffffu, cw, base + j) *
			       __shfl_sync(0xffffffffu, cw, b * (K - 1) + j);
		acc += __shfl_sync(0xffffffffu, cw, base + K - 1) * x;
		if (mb == b)
			mine = x;
		if (lane == b) {
			const float o = silu(acc);
			p.xc[(size_t)b * E + r] = o;
			xloc[(size_t)b * p.M] = from_f32<T>(o);
		}
	}
	if (lane < base && p.slots[mb] >= 0)
		p.pool[(size_t)p.slots[mb] * p.state_floats + p.off_conv +
		       ((size_t)l * E + r) * (K - 1) + mj] = mj < K - 2 ? next : mine;
}

/* Phase D's per-row inputs for out_proj row r, on lanes: lane b the
 * residual of row b (h, or the embedding at layer 0), lane NB the bias. */
template <typename T, int NB>
__device__ __forceinline__ float pk_res_fetch(const pk_args &p, const cuda_layer *y, int l,
					       int r)
{
	const int lane = threadIdx.x & 31;

	if (r >= p.D)
		return 0.0f;
	if (lane < NB)
		return l ? p.h[(size_t)lane * p.D + r]
			 : to_f32(((const T *)p.embed)[(size_t)p.tokens[lane] * p.D + r]);
	if (lane == NB && y->out_b)
		return y->out_b[r];
	return 0.0f;
}

/* Block 0 keeps each row's hidden vector (h, rows b < NB) in the row's slot. */
template <int NB>
__device__ __forceinline__ void pk_keep_hidden(const pk_args &p)
{
	if (blockIdx.x != 0)
		return;
	for (int i = threadIdx.x; i < NB * p.D; i += PK_THREADS) {
		const int b = i / p.D;
		if (p.slots[b] >= 0)
			p.pool[(size_t)p.slots[b] * p.state_floats + p.off_hidden + i - b * p.D] =
				__ldcg(p.h + i);
	}
}

/* The flag after the C copies, and the f32 sums of the parts past
 * PK_XMAX after it and a word of padding. */
template <int C>
__device__ __forceinline__ unsigned long long *pk_xsum_flagp(unsigned long long *xs, int n)
{
	return xs + (size_t)C * n;
}

template <int C>
__device__ __forceinline__ float *pk_xsum_big(unsigned long long *xs, int n)
{
	return (float *)(xs + (size_t)C * n + 2);
}

/* Adds this block's part v of value j into the sums xs (one parity's
 * PK_SUM_AREA(C, n) words for n values). FLAG: a part past the limit also
 * sets the flag, for a reader that adds the f32 sums only where it is set
 * (pk_xsum_read); pk_stage_res adds them always and never reads it. */
template <int C, bool FLAG>
__device__ __forceinline__ void pk_xsum_add(unsigned long long *xs, int n, int j, float v)
{
	if (fabsf(v) < PK_XMAX) {
		asm volatile("red.relaxed.gpu.global.add.u64 [%0], %1;"
			     :: "l"(xs + (size_t)(blockIdx.x % C) * n + j),
			        "l"((unsigned long long)__float2ll_rn(v * PK_XFIX))
			     : "memory");
	} else {
		atomicAdd(pk_xsum_big<C>(xs, n) + j, v);
		if (FLAG)
			asm volatile("red.relaxed.gpu.global.or.b64 [%0], 1;"
				     :: "l"(pk_xsum_flagp<C>(xs, n)) : "memory");
	}
}

/* Whether any part of the sums xs went into the f32 sums (written during
 * this step by every block). */
template <int C>
__device__ __forceinline__ bool pk_xsum_flag(unsigned long long *xs, int n)
{
	return __ldcg(pk_xsum_flagp<C>(xs, n)) != 0;
}

/* A value of the sums from the copies' integer sum t (which wraps like the
 * adds, so only the total counts). */
__device__ __forceinline__ float pk_xsum_fix(unsigned long long t)
{
	return __ll2float_rn((long long)t) * (1.0f / PK_XFIX);
}

/* dbc[j] = x_proj value j < n from the sums xs (written during this step
 * by every block), the f32 sums added where the flag is set. */
__device__ __forceinline__ void pk_xsum_read(unsigned long long *xs, int n, float *dbc)
{
	const bool big = pk_xsum_flag<PK_XCOPIES>(xs, n);

	for (int j = threadIdx.x; j < n; j += PK_THREADS) {
		unsigned long long v[PK_XCOPIES], t = 0;
#pragma unroll
		for (int k = 0; k < PK_XCOPIES; k++)
			v[k] = __ldcg(xs + (size_t)k * n + j);
#pragma unroll
		for (int k = 0; k < PK_XCOPIES; k++)
			t += v[k];
		dbc[j] = pk_xsum_fix(t);
		if (big)
			dbc[j] += __ldcg(pk_xsum_big<PK_XCOPIES>(xs, n) + j);
	}
}

/* Zeroes one parity's sums, flag and f32 sums for n values (every thread). */
template <int C>
__device__ __forceinline__ void pk_xsum_clear(unsigned long long *xs, int n)
{
	for (int j = threadIdx.x; j < PK_SUM_AREA(C, n); j += PK_THREADS)
		xs[j] = 0;
}

/* One parity's sums of layer l for NB rows. */
template <int NB>
__device__ __forceinline__ unsigned long long *pk_xsums(const pk_args &p, int l)
{
	return p.xacc + (size_t)(l & 1) * PK_XAREA(NB * p.W);
}

/* Block b's x_proj run of layer l into xw (shared memory), by 16-byte
 * copies in one cp.async group. */
template <typename T>
__device__ __forceinline__ void pk_xw_copy(const pk_args &p, int l, T *xw)
{
	const int run = pk_xw_run(p.M, p.W, sizeof(T));
	const char *src = (const char *)p.xwb +
			  ((size_t)l * gridDim.x + blockIdx.x) * run * sizeof(T);

	for (int j = threadIdx.x; j < run * (int)sizeof(T) / 16; j += PK_THREADS)
		cp_async16((float *)xw + 4 * j, (const float *)(src + 16 * (size_t)j), true);
	cp_async_commit();
}

/*
 * Phase B: row b's value j of x_proj over this block's channels, xw (the
 * block's run, copied during the last C) . xloc (row b's conv outputs of
 * this phase A), for the NB W values, added into layer l's sums.
 */
template <typename T, int NB>
__device__ __forceinline__ void pk_xproj_block(const pk_args &p, int l, const T *xw,
					       const T *xloc)
{
	const int W = p.W, M = p.M;

	cp_async_wait<0>();
	__syncthreads();
	for (int t = threadIdx.x; t < NB * W; t += PK_THREADS) {
		const int b = t / W, j = t - b * W;
		float acc = 0.0f;

		for (int m = 0; m < M; m++)
			acc += to_f32(xw[m * W + j]) * to_f32(xloc[b * M + m]);
		pk_xsum_add<PK_XCOPIES, true>(pk_xsums<NB>(p, l), NB * W, t, acc);
	}
}

/*
 * Phase C's start: dbc = layer l's x_proj values (NB, W); block 0 clears
 * the other parity's sums (read in the last layer's C) for the next layer;
 * xw takes the next layer's run (B is done with it).
 */
template <typename T, int NB>
__device__ __forceinline__ void pk_xproj_read(const pk_args &p, int l, T *xw, float *dbc)
{
	pk_xsum_read(pk_xsums<NB>(p, l), NB * p.W, dbc);
	if (blockIdx.x == 0)
		pk_xsum_clear<PK_XCOPIES>(pk_xsums<NB>(p, l + 1), NB * p.W);
	if (l + 1 < p.n_layer)
		pk_xw_copy<T>(p, l + 1, xw);
	__syncthreads();
}

/* After the last layer: block 0 clears the last layer's sums, so the next
 * launch finds both parities zero. */
template <int NB>
__device__ __forceinline__ void pk_xproj_done(const pk_args &p)
{
	if (blockIdx.x == 0)
		pk_xsum_clear<PK_XCOPIES>(pk_xsums<NB>(p, p.n_layer - 1), NB * p.W);
}

/* One parity's out_proj sums of layer l (the batch-1 kernel). */
__device__ __forceinline__ unsigned long long *pk_osums(const pk_args &p, int l)
{
	return p.osum + (size_t)(l & 1) * PK_OAREA(p.D);
}

/*
 * The batch-1 kernel's input of layer l >= 1 (l = n_layer: the final
 * norm's), the residual stream after layer l - 1: h = (v + h_in) + out_b,
 * v layer l - 1's out_proj sums, h_in its input (hbuf, or the token's
 * embedding at layer 0), in the order of the cuBLAS path's epilogue.
 * Block 0 stores h at hout (NULL: nowhere); every block stages xs = h * nw
 * in T and the scale as pk_stage_norm does (D % 4 == 0).
 */
template <typename T>
__device__ __forceinline__ void pk_stage_res(const pk_args &p, int l, const float *ob,
					      const float *nw, float *hout, T *xs, float *red,
					      float *scale)
{
	const int D = p.D, D4 = D / 4;
	unsigned long long *os = pk_osums(p, l - 1);
	const float4 *big = (const float4 *)pk_xsum_big<PK_OCOPIES>(os, D);
	const float *hin = l > 1 ? p.hbuf + (size_t)((l - 1) & 1) * D : NULL;
	const T *emb = (const T *)p.embed + (size_t)p.tokens[0] * D;
	float ss[1] = {0.0f};

	/* the f32 sums are read always (zero where no part passed the limit),
	 * so nothing waits for a flag before the loads.
	 * A float4 piece a thread and round, its loads issued together (two
	 * rounds at once spill the kernel's registers: bench/NOTES.md, round
	 * twenty-three) */
	for (int i = threadIdx.x; i < D4; i += PK_THREADS) {
		const float4 w = ((const float4 *)nw)[i];
		const float4 v = hin ? __ldcg((const float4 *)hin + i) : load4(emb + 4 * i);
		const float4 b = ob ? ((const float4 *)ob)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
		const ulonglong2 s0 = __ldcg((const ulonglong2 *)os + 2 * i);
		const ulonglong2 s1 = __ldcg((const ulonglong2 *)os + 2 * i + 1);
		const float4 f = __ldcg(big + i);
		const float4 h = make_float4(((pk_xsum_fix(s0.x) + f.x) + v.x) + b.x,
					     ((pk_xsum_fix(s0.y) + f.y) + v.y) + b.y,
					     ((pk_xsum_fix(s1.x) + f.z) + v.z) + b.z,
					     ((pk_xsum_fix(s1.y) + f.w) + v.w) + b.w);

		ss[0] += h.x * h.x + h.y * h.y + h.z * h.z + h.w * h.w;
		store4<T>(xs + 4 * i, make_float4(h.x * w.x, h.y * w.y, h.z * w.z, h.w * w.w));
		if (hout && blockIdx.x == 0)
			((float4 *)hout)[i] = h;
	}
	pk_norm_scale<1>(ss, D, p.eps, red, scale);
}

/*
 * How the batch-1 kernel splits phases C and D over its blocks. Block b
 * takes channel group cg = b % Gc (channels cg PK_CG .. cg PK_CG + PK_CG - 1
 * below E; Gc = ceil(E / PK_CG) <= G, persist_init_t) and row group rg = b
 * / Gc of Gr = G / Gc (RG = ceil(D / Gr) rows each; blocks past Gc Gr have
 * none). In C every block of a channel group runs the SSM step of the
 * group's channels from the same inputs, so they get the same y, and the
 * block of row group 0 writes the state. In D each block multiplies the
 * group's columns of out_proj's rows r0 .. r1 - 1 by its y and adds each
 * row's part into the layer's out_proj sums: no grid barrier between C and
 * D, and one between D and the next layer's A, where every block reads the
 * sums (pk_stage_res).
 */
struct pk_dg {
	int cg, r0, r1;
	bool on, own;
};

__device__ __forceinline__ pk_dg pk_dgrid(const pk_args &p)
{
	/* Gr >= 1 whatever the grid: the three-barrier form computes it too */
	const int Gc = (p.E + PK_CG - 1) / PK_CG,
		  Gr = (int)gridDim.x > Gc ? (int)gridDim.x / Gc : 1,
		  RG = (p.D + Gr - 1) / Gr, rg = blockIdx.x / Gc;
	pk_dg g;

	g.cg = blockIdx.x % Gc;
	g.on = rg < Gr;
	g.own = rg == 0;
	g.r0 = rg * RG;
	g.r1 = g.r0 + RG < p.D ? g.r0 + RG : p.D;
	return g;
}

/*
 * Phase D's pieces. A row's share of the group's columns is LPR = PK_CG /
 * VEC 16-byte pieces, one a lane, so a warp reads RPW = 32 / LPR rows at
 * once; unit u of warp w is rows r0 + w RPW + s + u STEP (s = lane / LPR,
 * STEP = PK_WARPS RPW), and a lane keeps PKD_PF units in flight.
 */
#define PKD_PF 4

template <typename T>
__device__ __forceinline__ uint4 pk_ofetch(const pk_args &p, const T *W, const pk_dg &g, int u)
{
	constexpr int VEC = 16 / sizeof(T), LPR = PK_CG / VEC, RPW = 32 / LPR;
	const int lane = threadIdx.x & 31, q = g.cg * LPR + lane % LPR;
	const int r = g.r0 + (threadIdx.x >> 5) * RPW + lane / LPR + u * PK_WARPS * RPW;

	if (!g.on || r >= g.r1 || q >= p.E / VEC)
		return make_uint4(0, 0, 0, 0);
	return __ldg((const uint4 *)(W + (size_t)r * p.E) + q);
}

/* Phase D: dw holds the warp's first PKD_PF units (pk_ofetch); ys the
 * group's y in T. A row's part: each lane's products in piece order, then
 * the LPR lanes' sums by shuffles, the same order every run. */
template <typename T>
__device__ __forceinline__ void pk_oproj(const pk_args &p, int l, const T *W, const pk_dg &g,
					  const T *ys, uint4 *dw)
{
	constexpr int VEC = 16 / sizeof(T), LPR = PK_CG / VEC, RPW = 32 / LPR,
		      STEP = PK_WARPS * RPW;
	const int lane = threadIdx.x & 31, li = lane % LPR;
	const int rw = g.r0 + (threadIdx.x >> 5) * RPW, r = rw + lane / LPR;
	unsigned long long *os = pk_osums(p, l);
	float yf[VEC];

	/* channels past E have no y (and zero weights) */
	if ((g.cg * LPR + li) * VEC < p.E)
		unpack16(*(const uint4 *)(ys + li * VEC), yf, T());
	else
#pragma unroll
		for (int j = 0; j < VEC; j++)
			yf[j] = 0.0f;
	for (int u0 = 0; rw + u0 * STEP < g.r1; u0 += PKD_PF) {
#pragma unroll
		for (int i = 0; i < PKD_PF; i++) {
			float wf[VEC], a = 0.0f;

			unpack16(dw[i], wf, T());
#pragma unroll
			for (int j = 0; j < VEC; j++)
				a += wf[j] * yf[j];
			dw[i] = pk_ofetch<T>(p, W, g, u0 + i + PKD_PF);
			for (int o = LPR / 2; o > 0; o >>= 1)
				a += __shfl_xor_sync(0xffffffffu, a, o);
			if (li == 0 && r + (u0 + i) * STEP < g.r1)
				pk_xsum_add<PK_OCOPIES, false>(os, p.D, r + (u0 + i) * STEP, a);
		}
	}
}

/* Row b's largest logit (NaN counting as -inf) and its lowest ID (*id),
 * from the blocks' picks, to every thread; s_f[0] and s_i[0] carry them.
 * Synchronises the block twice. */
__device__ __forceinline__ float pk_top(const pk_args &p, int b, int *id, float *s_f, int *s_i)
{
	const int lane = threadIdx.x & 31, G = gridDim.x;

	if (threadIdx.x < 32) {
		float v = -INFINITY;
		int i = p.V;

		for (int j = lane; j < G; j += 32) {
			const unsigned long long c = __ldcg(&p.cand[(size_t)b * G + j]);
			argmax_merge(&v, &i, __uint_as_float((unsigned)(c >> 32)), (int)(unsigned)c);
		}
		warp_argmax(&v, &i);
		if (lane == 0)
			s_f[0] = v, s_i[0] = i;
	}
	__syncthreads();
	const float v = s_f[0];
	*id = s_i[0];
	__syncthreads();
	return v;
}

/*
 * The step's next token of each of its NB rows, picked as ssmk_sample
 * picks it, at the end of the kernel; `end` is the barrier count at the
 * launch's end. Every thread brings its greedy pick (best, bi) among the
 * logits it wrote of row `row` (-INFINITY and V where it wrote none).
 *   1. Each block's pick of each row goes to p.cand, and the block arrives
 *      at the barrier (always, so that every launch counts the same).
 *   2. Where a row samples at a temperature, every block waits there,
 *      takes the row's largest logit from the picks, and sums the weights
 *      of its chunk of IDs, [b C, (b + 1) C) with C = ceil(V / G), into
 *      p.csum: the row's weights are then summed over all SMs, not by one
 *      block.
 *   3. Every block takes a ticket on the barrier count; the last merges a
 *      greedy row's picks (argmax_merge picks the same logit in any order);
 *      for a temperature row it scans the chunk sums in ID order, finds the
 *      chunk that holds u and picks inside it (pick_run, with the same u
 *      and margin; u on no chunk by rounding goes to the host); a top-k /
 *      top-p row goes to the host (-1).
 * Every block's writes before its arrival or ticket are visible after the
 * wait or the ticket's acquire.
 */
template <int NB>
__device__ void pk_sample(const pk_args &p, int row, float best, int bi, unsigned long long end)
{
	__shared__ float s_f[PK_WARPS];
	__shared__ int s_i[PK_WARPS];
	__shared__ double s_d[32], s_pre;
	__shared__ int s_pick, s_last, s_chunk;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, G = gridDim.x;
	const int C = (p.V + G - 1) / G;
	bool temp = false;

#pragma unroll
	for (int b = 0; b < NB; b++) {
		float v = row == b ? best : -INFINITY;
		int i = row == b ? bi : p.V;

		warp_argmax(&v, &i);
		if (lane == 0)
			s_f[warp] = v, s_i[warp] = i;
		__syncthreads();
		if (threadIdx.x == 0) {
			for (int w = 1; w < PK_WARPS; w++)
				argmax_merge(&v, &i, s_f[w], s_i[w]);
			p.cand[(size_t)b * G + blockIdx.x] =
				(unsigned long long)__float_as_uint(v) << 32 | (unsigned)i;
		}
		__syncthreads();
		temp |= sample_kind(p.samp[b], p.V) == SAMPLE_TEMPERATURE;
	}
	pk_arrive(p.bar);
	if (temp) {
		pk_wait(p.bar, end - G);
		for (int b = 0; b < NB; b++) {
			const cuda_sampler s = p.samp[b];
			const float inv_t = 1.0f / s.temperature;
			int id;

			if (sample_kind(s, p.V) != SAMPLE_TEMPERATURE)
				continue;
			const float mx = pk_top(p, b, &id, s_f, s_i) * inv_t;
			const float *lg = p.logits + (size_t)b * p.V;
			const int hi = min((int)(blockIdx.x + 1) * C, p.V);
			double part = 0.0, sum;

			if (mx != -INFINITY)
				for (int i = blockIdx.x * C + threadIdx.x; i < hi; i += PK_THREADS)
					part += temperature_weight(__ldcg(lg + i), inv_t, mx);
			block_scan(part, s_d, &sum);
			if (threadIdx.x == 0)
				p.csum[(size_t)b * G + blockIdx.x] = sum;
			__syncthreads();
		}
	}
	if (threadIdx.x == 0)
		s_last = pk_ticket(p.bar) == end - 1;
	__syncthreads();
	if (!s_last)
		return;
	for (int b = 0; b < NB; b++) {
		const cuda_sampler s = p.samp[b];
		const int kind = sample_kind(s, p.V);
		const float inv_t = 1.0f / s.temperature;
		const float *lg = p.logits + (size_t)b * p.V;
		int id, pick;

		if (kind == SAMPLE_HOST) {
			if (threadIdx.x == 0)
				p.next[b] = -1;
			continue;
		}
		const float top = pk_top(p, b, &id, s_f, s_i);
		if (kind == SAMPLE_GREEDY) {
			pick = id;
		} else if (top * inv_t == -INFINITY) {
			pick = -1;
		} else {
			/* the chunk whose bounds hold u (the lowest, should two
			 * overlap by rounding), then the pick inside it; a
			 * thread a chunk (G <= PK_XBLOCKS < PK_THREADS) */
			const int t = threadIdx.x;
			const double x = t < G ? __ldcg(&p.csum[(size_t)b * G + t]) : 0.0;
			double total;

			if (t == 0)
				s_chunk = G;
			const double incl = block_scan(x, s_d, &total), pre = incl - x;
			const double u = rng_uniform(s.seed, s.index) * total;
			if (t < G && x > 0.0 && pre <= u && u < incl)
				atomicMin(&s_chunk, t);
			__syncthreads();
			const int c = s_chunk;
			if (t == c)
				s_pre = pre;
			__syncthreads();
			pick = c == G ? -1
				      : pick_run(lg, c * C, min((c + 1) * C, p.V), s_pre, total, s,
						 inv_t, top * inv_t, p.V, s_d, &s_pick);
		}
		if (threadIdx.x == 0)
			p.next[b] = pick;
		__syncthreads(); /* the shared values are the next row's */
	}
}

/*
 * The whole batch-1 decode step. grid (G) cooperative, block PK_THREADS,
 * dynamic shared memory pk_smem_bytes(1, ...); PF: pk_pf(). GROUPS: phases C
 * and D by channel group, two grid barriers a layer (pk_dgrid); otherwise
 * phase C takes channel e on block e % G and phase D whole rows of out_proj
 * after a third barrier, the residual added in D's epilogue (h).
 */
template <typename T, int NPL, int PF, bool GROUPS>
__global__ void __launch_bounds__(PK_THREADS, 1) ssmk_decode_persist(const pk_args p)
{
	extern __shared__ uint4 pk_smem[];
	__shared__ float red[PK_WARPS];
	__shared__ unsigned long long base;
	const int D = p.D, E = p.E, G = gridDim.x, lane = threadIdx.x & 31;
	const pk_smem_map<T> sm = pk_carve<T, 1>(pk_smem, p);
	const pk_dg dg = pk_dgrid(p);
	/* GROUPS: this thread's channel in phase C, and its y's place in sm.ys */
	const int cl = threadIdx.x / SSM_LANES, ce = dg.cg * PK_CG + cl;
	cuda_layer *lay = sm.lay;
	T *xs = sm.xs, *xloc = sm.xloc, *xw = sm.xw;
	float *dbc = sm.dbc;
	uint4 cur[PF], dw[PKD_PF];
	float cw = 0.0f, cw2 = 0.0f, scale[1];
	unsigned long long target;
	pk_chan<T, NPL> ch;

	/* the grid barriers, and pk_sample's arrival and ticket */
	const int n_bar = (GROUPS ? 2 : 3) * p.n_layer + 2;

	if (threadIdx.x == 0)
		base = pk_base(p.bar, n_bar);
	pk_fetch<T, PF>((const T *)p.layers[0].in_w, 2 * E, D, pk_gw(), 0, cur);
	pk_load_layers(p, pk_smem);
	/* channels past E stay 0 */
	for (int m = threadIdx.x; m < p.M; m += PK_THREADS)
		xloc[m] = from_f32<T>(0.0f);
	/* the out_proj sums of the last launch's last layer, read after its last
	 * barrier, are still there when that layer was even (odd: layer 0's C
	 * zeroes them) */
	if (GROUPS && blockIdx.x == 0)
		pk_xsum_clear<PK_OCOPIES>(pk_osums(p, 0), D);
	pk_xw_copy<T>(p, 0, xw);
	__syncthreads();
	/* the conv epilogue's inputs two rows ahead (cw: this row's, cw2: the
	 * next's): fetched one row ahead, each row's epilogue waited for a load
	 * issued in the previous one's */
	cw = pk_cw_fetch<1>(p, &lay[0], 0, pk_gw());
	cw2 = pk_cw_fetch<1>(p, &lay[0], 0, pk_gw() + pk_nw());
	target = base;
	PK_MARK(0);
	for (int l = 0; l < p.n_layer; l++) {
		const cuda_layer *y = &lay[l];

		/* A: (GROUPS: the residual) norm . in_proj, the conv step on x
		 * rows; the warp's k-th row r = gw + k NW is this block's channel
		 * warp + 16 k (xloc) */
		if (GROUPS && l)
			pk_stage_res<T>(p, l, lay[l - 1].out_b, y->norm,
					p.hbuf + (size_t)(l & 1) * D, xs, red, scale);
		else
			pk_stage_norm<T, 1>(p.h, l ? NULL : (const T *)p.embed, p.tokens, y->norm,
					    D, p.eps, xs, red, scale);
		int mloc = threadIdx.x >> 5;
		pk_gemv<T, PF>((const T *)y->in_w, 2 * E, D, xs, cur, [&](int r, float v) {
			v *= scale[0];
			/* only z: phase C reads x from xc */
			if (lane == 0 && r >= E)
				p.xz[r] = v;
			if (r < E)
				pk_conv_epi<T, 1>(p, l, r, &v, cw, xloc + mloc);
			mloc += PK_WARPS;
			cw = cw2;
			cw2 = pk_cw_fetch<1>(p, y, l, r + 2 * pk_nw());
		});
		PK_MARK(l * 8 + 1);
		PK_MARK(l * 8 + 2);

		/* B: x_proj over this block's channels, into the layer's sums */
		pk_xproj_block<T, 1>(p, l, xw, xloc);
		PK_MARK(l * 8 + 3);
		pk_arrive(p.bar);
		if (GROUPS) {
			/* every field set each layer, so none stays live through A */
			ch = pk_chan<T, NPL>();
			pk_chan_fetch<T, NPL>(p, y, l, dg.on ? ce : E, 0, &ch);
#pragma unroll
			for (int i = 0; i < PKD_PF; i++)
				dw[i] = pk_ofetch<T>(p, (const T *)y->out_w, dg, i);
		} else {
			pk_chan_fetch<T, NPL>(p, y, l, pk_chan0(), 0, &ch);
		}
		pk_wait(p.bar, target += G);
		PK_MARK(l * 8 + 4);

		/* C: the SSM step (GROUPS: of the block's channel group; block 0
		 * zeroes the out_proj sums read in this layer's A, for layer l +
		 * 1); x, z and the x_proj sums loaded at once */
		if (GROUPS) {
			const float x = dg.on && ce < E ? __ldcg(p.xc + ce) : 0.0f;
			const float z = dg.on && ce < E ? __ldcg(p.xz + E + ce) : 0.0f;

			pk_xproj_read<T, 1>(p, l, xw, dbc);
			if (blockIdx.x == 0)
				pk_xsum_clear<PK_OCOPIES>(pk_osums(p, l + 1), D);
			if (dg.on)
				pk_chan_step<T, NPL, true>(p, y, l, ce, 0, ch, dbc, x, z, sm.ys + cl);
			PK_MARK(l * 8 + 5);
			__syncthreads();
			PK_MARK(l * 8 + 6);

			/* D: the group's part of out_proj, into the layer's sums */
			if (dg.on)
				pk_oproj<T>(p, l, (const T *)y->out_w, dg, sm.ys, dw);
		} else {
			const int e = pk_chan0();
			float x = e < E ? __ldcg(p.xc + e) : 0.0f;
			float z = e < E ? __ldcg(p.xz + E + e) : 0.0f;

			pk_xproj_read<T, 1>(p, l, xw, dbc);
			for (int e0 = 0; e0 < E; e0 += pk_nchan()) {
				if (e0) {
					pk_chan_fetch<T, NPL>(p, y, l, e0 + e, 0, &ch);
					x = e0 + e < E ? __ldcg(p.xc + e0 + e) : 0.0f;
					z = e0 + e < E ? __ldcg(p.xz + E + e0 + e) : 0.0f;
				}
				pk_chan_step<T, NPL, false>(p, y, l, e0 + e, 0, ch, dbc, x, z,
							    (T *)p.yT + e0 + e);
			}
			PK_MARK(l * 8 + 5);
			pk_arrive(p.bar);
			pk_fetch<T, PF>((const T *)y->out_w, D, E, pk_gw(), 0, cur);
			/* lane 0 of a row's warp: the residual input, lane 1: the bias */
			cw = pk_res_fetch<T, 1>(p, y, l, pk_gw());
			pk_wait(p.bar, target += G);
			PK_MARK(l * 8 + 6);

			/* D: out_proj + residual */
			pk_stage<T, 1>(p.yT, E, xs);
			__syncthreads();
			pk_gemv<T, PF>((const T *)y->out_w, D, E, xs, cur, [&](int r, float v) {
				const float hin = __shfl_sync(0xffffffffu, cw, 0);
				const float b = __shfl_sync(0xffffffffu, cw, 1);
				if (lane == 0)
					p.h[r] = (v + hin) + b;
				cw = pk_res_fetch<T, 1>(p, y, l, r + pk_nw());
			});
		}
		PK_MARK(l * 8 + 7);
		pk_arrive(p.bar);
		if (l + 1 < p.n_layer) {
			pk_fetch<T, PF>((const T *)y[1].in_w, 2 * E, D, pk_gw(), 0, cur);
			if (threadIdx.x == 0)
				pk_l2(y[1].norm, (size_t)D * sizeof(float));
			cw = pk_cw_fetch<1>(p, &y[1], l + 1, pk_gw());
			cw2 = pk_cw_fetch<1>(p, &y[1], l + 1, pk_gw() + pk_nw());
		} else {
			pk_fetch<T, PF>((const T *)p.lm_head, p.V, D, pk_gw(), 0, cur);
			if (threadIdx.x == 0)
				pk_l2(p.norm_f, (size_t)D * sizeof(float));
		}
		pk_wait(p.bar, target += G);
		PK_MARK(l * 8 + 8);
		/* GROUPS: every block of the group has used the old state now */
		if (GROUPS && dg.own)
			pk_chan_store<T, NPL>(p, l, ce, 0, ch);
	}

	/* the final norm . lm_head; block 0 keeps the hidden vector in the slot */
	pk_xproj_done<1>(p);
	if (GROUPS) {
		pk_stage_res<T>(p, p.n_layer, lay[p.n_layer - 1].out_b, p.norm_f,
				p.slots[0] >= 0 ? p.pool + (size_t)p.slots[0] * p.state_floats +
							  p.off_hidden
						: NULL,
				xs, red, scale);
	} else {
		pk_keep_hidden<1>(p);
		pk_stage_norm<T, 1>(p.h, NULL, p.tokens, p.norm_f, D, p.eps, xs, red, scale);
	}
	float best = -INFINITY;
	int bi = p.V;
	pk_gemv<T, PF>((const T *)p.lm_head, p.V, D, xs, cur, [&](int r, float v) {
		if (lane == 0) {
			const float logit = v * scale[0];
			p.logits[r] = logit;
			argmax_merge(&best, &bi, clean_logit(logit), r);
		}
	});
	__syncthreads();
	PK_MARK(p.n_layer * 8 + 1);
	pk_sample<1>(p, 0, best, bi, base + (unsigned long long)n_bar * G);
}

/* x_proj's weight (W, E) in block order for items of pr rows (pk_xw_m):
 * out[b run + m W + j] = x_w[j, e] for block b's channel e = pr (b + G q)
 * + s, m = pr q + s < M, e < E, else 0. Grid G, made once at open. */
template <typename T>
__global__ void ssmk_xw_blocks(const T *x_w, int W, int E, int G, int M, int pr, int run,
			       T *out)
{
	const int b = blockIdx.x;

	for (int i = threadIdx.x; i < run; i += blockDim.x) {
		const int m = i / W, j = i - m * W, e = pr * (b + G * (m / pr)) + m % pr;
		out[(size_t)b * run + i] = m < M && e < E ? x_w[(size_t)j * E + e]
							  : from_f32<T>(0.0f);
	}
}

/* The kernel at prefetch depth pf (6 or 8, pk_pf()), phases C and D by
 * channel group or not (pk_groups()). */
typedef void (*pk_kernel_fn)(pk_args);

template <typename T, int NPL>
static inline pk_kernel_fn pk_kernel(int pf, bool groups)
{
	if (groups)
		return pf == 8 ? ssmk_decode_persist<T, NPL, 8, true>
			       : ssmk_decode_persist<T, NPL, 6, true>;
	return pf == 8 ? ssmk_decode_persist<T, NPL, 8, false>
		       : ssmk_decode_persist<T, NPL, 6, false>;
}

/*
 * The prefetch depth PF for a model: 8 pieces a lane where an in_proj row
 * (d_model long) is whole units of 8 pieces a lane, else 6. Measured on the
 * H200 (bench/NOTES.md, round ten): 6 is faster on the 130m and 2.8b shapes
 * (rows of 3 and 10 pieces a lane), and slower on 1.4b, whose rows of 8
 * pieces would take a unit of 6 and one of 2.
 */
static inline int pk_pf(int D, size_t wsize)
{
	const int per = (D / (int)(16 / wsize) + 31) / 32;

	return per % 8 == 0 ? 8 : 6;
}

/*
 * Whether the batch-1 kernel takes phases C and D by channel group
 * (pk_dgrid): where out_proj's weight is at most 16 MiB (1.4b's, 2048 x
 * 4096 in 16 bits). Without the third barrier a layer, phase D's stream is
 * no longer hidden behind it, and the next phase A reads the out_proj sums
 * (16 bytes a value where h took 4). Measured on the H200 (bench/NOTES.md,
 * round twenty-three), ms a step at batch 1 against the three-barrier form:
 * 130m 0.279-0.282 against 0.302-0.304, 1.4b 1.116-1.117 against 1.118
 * (level), 2.8b 2.094-2.107 against 1.969-1.973 (its 26 MB out_proj, on
 * 120 of the 132 blocks).
 */
static inline bool pk_groups(int D, int E, size_t wsize)
{
	return (size_t)D * E * wsize <= (size_t)16 << 20;
}

#endif
