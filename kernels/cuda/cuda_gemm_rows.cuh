/*
 * cuda_gemm_rows.cuh — the batched decode's in_proj and out_proj for 8 and
 * 16 rows, a weight-streaming GEMM of the backend's own.
 *
 * Included by cuda_backend.cu only, after cuda_kernels.cuh (cp.async,
 * mma16816, pdl_wait, cluster_arrive_relaxed, cluster_wait). cuBLAS's launches cannot start
 * before the kernel ahead has ended (bench/NOTES.md round thirty-three), so
 * every GEMM of a step was a full drain. This kernel asks for its first
 * weight tiles before its pdl_wait: the weights are written by nothing after
 * upload, so they may be read while the kernel ahead still runs. At 8 and
 * 16 rows the product is bound by its weight bytes; at 64 rows it is not
 * (64 FLOPs a weight byte, near what mma.sync gives at the one block an SM
 * its accumulators leave room for, round thirty-four), and ssmk_gemm_wg
 * (cuda_gemm_wg.cuh) runs buckets of 32 and 64 rows on the warpgroup
 * tensor cores.
 */
#ifndef SSM_CUDA_GEMM_ROWS_CUH
#define SSM_CUDA_GEMM_ROWS_CUH

#define GR_THREADS 256 /* 8 warps */
#define GR_STAGE 8192  /* 16-bit weights a pipeline stage (16 KB): NT rows of KC */
#define GR_STAGES 5    /* stages in the ring; GR_STAGES - 1 in flight */
#define GR_MAX_ROWS 16 /* rows (decode slots) a product at most: 8 MB, MB <= 2 */
#define GR_MAX_CLUSTER 16
#define GR_PP 36 /* the partial sums' row pitch (32 outputs, 4 floats apart) */

/* Columns of the stage of a block of NT weight rows (NT 32, 64 or 128). */
static inline __host__ __device__ int gr_kc(int NT) { return GR_STAGE / NT; }

/* Shared memory of ssmk_gemm_rows<T, MB> for K slice KS: the rows' K slice
 * (8 MB x KS, 16-bit), the weight ring, then the partial sums of a tile
 * (8 warps x 8 MB rows x 32 outputs, f32, rows GR_PP apart). */
static inline __host__ __device__ size_t gr_smem_bytes(int MB, int KS)
{
	return (size_t)8 * MB * KS * 2 + (size_t)GR_STAGES * GR_STAGE * 2 +
	       (size_t)(GR_THREADS / 32) * (8 * MB) * GR_PP * 4;
}

/* The place (in 16-bit elements) of the 16-byte piece p of row r in a tile
 * of rows of `pitch` elements (a multiple of 64): odd rows swap the halves
 * of each 128-byte line, so the two rows that a quarter-warp's 16-byte
 * loads touch (rows g, g + 1 at the same columns) fall in distinct banks. */
__device__ __forceinline__ int gr_at(int r, int p, int pitch)
{
	return r * pitch + 8 * (p ^ ((r & 1) << 2));
}

/*
 * Y (M, N) f32, row-major with leading dim ldy  =  X (M, K) [ld ldx] . W^T,
 * W (N, K) row-major, both 16-bit T (bf16 or f16), f32 sums; M <= 8 MB.
 *
 * grid (S, C), cluster (S, 1, 1), block GR_THREADS, dynamic shared memory
 * gr_smem_bytes(MB, KS). The N / NT tiles of NT outputs go to the C
 * clusters in turn (tiles c, c + C, ...; C at most the clusters resident
 * at once, so that no block waits for a later round and each copies the
 * rows' slice once); block q of a cluster takes K slice [q KS, (q + 1)
 * KS), S KS = K. NT is 32 FG (FG 1, 2 or 4 feature groups of warps), the
 * stage KC = GR_STAGE / NT columns, KS a multiple of KC; K, ldx multiples
 * of 8, ldy of 4, and W, X, Y 16-byte aligned.
 *   - The weights stream through the ring as one run of stages over the
 *     block's tiles, each stage's copy issued GR_STAGES - 1 stages ahead,
 *     the first GR_STAGES - 1 before pdl_wait (no kernel of the step writes
 *     the weights). After it: the rows' K slice (rows >= M zero).
 *   - Warp w = (fg, kg), fg = w % FG, kg = w / FG (KG = 8 / FG k groups):
 *     outputs [32 fg, 32 fg + 32) of the tile, columns [32 kg, 32 kg + 32)
 *     of each stage, every row, on the tensor cores (mma.m16n8k16): lane
 *     (g, t) reads the 16 bytes at columns 8 t .. 8 t + 7 of a row for the
 *     weights and the rows alike and gives the chunk's two k steps its
 *     halves (the k order inside a chunk is permuted the same way on both
 *     sides, as in ssmk_conv_xproj).
 *   - After a tile's last stage: each warp's sums into the block's partial
 *     sums; the block adds its KG warps' in warp order; a cluster barrier;
 *     then block q adds, for the q-th S-th of the tile's (row, output)
 *     values, every block's sums in rank order (the same sums on every
 *     run), 4 outputs a load and 4 such loads in flight a thread, and
 *     writes Y. It then arrives at a relaxed cluster barrier, which it
 *     waits on before the next tile's partial sums (or its exit) overwrite
 *     what the others may still read; the next tile's copies run on
 *     meanwhile.
 */
template <typename T, int MB>
__global__ void __launch_bounds__(GR_THREADS)
ssmk_gemm_rows(const T *__restrict__ Wt, int K, int N, const T *__restrict__ X, int ldx, int M,
	       float *__restrict__ Y, int ldy, int NT, int KS)
{
	namespace cg = cooperative_groups;
	constexpr int M8 = 8 * MB, PP = GR_PP;
	extern __shared__ __align__(16) unsigned char smem_raw[];
	cg::cluster_group cl = cg::this_cluster();
	const int S = gridDim.x, q = blockIdx.x, C = gridDim.y, k0 = q * KS;
	const int KC = gr_kc(NT), FG = NT / 32, KG = 8 / FG, NS = KS / KC;
	/* the cluster's tiles blockIdx.y + C j, j < NJ, as NU stages */
	const int NJ = (N / NT - (int)blockIdx.y + C - 1) / C, NU = NJ * NS;
	T *s_x = (T *)smem_raw;
	T *s_w = s_x + (size_t)M8 * KS;
	float *s_p = (float *)(s_w + GR_STAGES * GR_STAGE);
	const int tid = threadIdx.x, w = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;
	const int fg = w % FG, kg = w / FG, lnt = __ffs(NT) - 1;
	/* a stage's copies: a row of KC / 8 16-byte pieces, the block's
	 * threads covering GR_THREADS / (KC / 8) rows (an even count: the
	 * swizzle is the same for a thread's every row) a pass, 8 GR_THREADS
	 * elements of the stage apart */
	const int lpr = __ffs(KC / 8) - 1, r0 = tid >> lpr, p0 = tid & ((1 << lpr) - 1);
	const T *wsrc = Wt + ((size_t)blockIdx.y * NT + r0) * K + k0 + 8 * p0;
	const size_t wpass = (size_t)(GR_THREADS >> lpr) * K, wtile = (size_t)C * NT * K;
	const int wdst = gr_at(r0, p0, KC);
	int is = 0; /* the stage of its tile that issue copies next */
	const T *isrc = wsrc;

	/* the next stage of the run into ring place u % GR_STAGES (one group,
	 * empty past the last) */
	auto issue = [&](int u) {
		if (u < NU) {
			T *dst = s_w + (u % GR_STAGES) * GR_STAGE + wdst;
			const T *src = isrc + is * KC;
#pragma unroll
			for (int j = 0; j < GR_STAGE / 8 / GR_THREADS; j++)
				cp_async16(dst + j * 8 * GR_THREADS, src + j * wpass, true);
			if (++is == NS)
				is = 0, isrc += wtile;
		}
		cp_async_commit();
	};

#pragma unroll
	for (int u = 0; u < GR_STAGES - 1; u++)
		issue(u);
	/* X is the kernel ahead's output */
	pdl_wait();
	{
		/* piece p of row r, walked GR_THREADS pieces at a time */
		const int PR = KS / 8, dr = GR_THREADS / PR, dp = GR_THREADS % PR;
		int r = tid / PR, p = tid % PR;

		while (r < M8) {
			cp_async16(s_x + gr_at(r, p, KS), X + (size_t)(r < M ? r : 0) * ldx + k0 + 8 * p,
				   r < M);
			r += dr, p += dp;
			if (p >= PR)
				r++, p -= PR;
		}
		cp_async_commit();
	}

	/* this lane's 16 bytes of a stage: piece 4 kg + t of rows g (+ 8, + 16,
	 * + 24 of its feature group) of the weights and of rows g + 8 mb of X;
	 * g's parity picks the swizzle for all of them */
	const int pa = 8 * ((4 * kg + t) ^ ((g & 1) << 2));
	const T *wa = s_w + (32 * fg + g) * KC + pa;
	const T *xa = s_x + g * KS + pa;
	float d[2][MB][4] = {};
	int s = 0, n0 = blockIdx.y * NT; /* the stage of the tile at n0 */

	for (int u = 0; u < NU; u++) {
		/* stage u landed (and at u == 0 the rows): the groups after it
		 * are the stages issued since, and the rows' until u reaches
		 * GR_STAGES - 1 */
		if (u == 0)
			cp_async_wait<0>();
		else if (u < GR_STAGES - 1)
			cp_async_wait<GR_STAGES - 1>();
		else
			cp_async_wait<GR_STAGES - 2>();
		__syncthreads(); /* every copy visible, stage u - 1's place free */
		issue(u + GR_STAGES - 1);

		const T *ws = wa + (u % GR_STAGES) * GR_STAGE, *xs = xa + s * KC;
		unsigned a[2][2][4];
#pragma unroll
		for (int ft = 0; ft < 2; ft++) {
			const uint4 lo = *(const uint4 *)(ws + 16 * ft * KC);
			const uint4 hi = *(const uint4 *)(ws + (16 * ft + 8) * KC);
			a[ft][0][0] = lo.x, a[ft][0][1] = hi.x, a[ft][0][2] = lo.y, a[ft][0][3] = hi.y;
			a[ft][1][0] = lo.z, a[ft][1][1] = hi.z, a[ft][1][2] = lo.w, a[ft][1][3] = hi.w;
		}
#pragma unroll
		for (int mb = 0; mb < MB; mb++) {
			const uint4 bq = *(const uint4 *)(xs + 8 * mb * KS);
			const unsigned b1[2] = {bq.x, bq.y}, b2[2] = {bq.z, bq.w};
#pragma unroll
			for (int ft = 0; ft < 2; ft++) {
				mma16816<T>(d[ft][mb], a[ft][0], b1);
				mma16816<T>(d[ft][mb], a[ft][1], b2);
			}
		}
		if (++s < NS)
			continue;

		/* the tile's last stage: the others may still read the last
		 * tile's partial sums until they have arrived */
		if (u >= NS)
			cluster_wait();
		/* warp w's part: d[ft][mb] holds outputs 16 ft + g, + 8 of its
		 * 32 by rows 8 mb + 2 t, + 1; at s_p[w][row][output] */
		{
			float *pw = s_p + (size_t)w * M8 * PP;
#pragma unroll
			for (int ft = 0; ft < 2; ft++)
#pragma unroll
				for (int mb = 0; mb < MB; mb++) {
					float *row = pw + (size_t)(8 * mb + 2 * t) * PP + 16 * ft + g;
					row[0] = d[ft][mb][0];
					row[PP] = d[ft][mb][1];
					row[8] = d[ft][mb][2];
					row[PP + 8] = d[ft][mb][3];
					d[ft][mb][0] = d[ft][mb][1] = d[ft][mb][2] = d[ft][mb][3] = 0.0f;
				}
		}
		__syncthreads();
		/* the block's KG warps added in warp order, 4 outputs at a
		 * time, into the first k group's place (each read and written by
		 * one thread) */
		for (int v = 4 * tid; v < M8 * NT; v += 4 * GR_THREADS) {
			const int o = v & (NT - 1);
			float4 *at = (float4 *)(s_p + (size_t)(o >> 5) * M8 * PP +
						(size_t)(v >> lnt) * PP + (o & 31));
			float4 sum = *at;

			for (int k = 1; k < KG; k++) {
				const float4 x = at[(size_t)k * FG * M8 * PP / 4];
				sum.x += x.x, sum.y += x.y, sum.z += x.z, sum.w += x.w;
			}
			*at = sum;
		}
		cl.sync();
		/* block q: the q-th S-th of the tile's M NT / 4 groups of 4
		 * outputs (v = (row NT + output) / 4), added over the blocks in
		 * rank order, 4 groups a thread at once so that their remote
		 * loads overlap */
		const int nv = M * NT / 4, per = (nv + S - 1) / S, v0 = q * per;
		const int v1 = min(v0 + per, nv);
		for (int vb = v0 + tid; vb < v1; vb += 4 * GR_THREADS) {
			size_t at[4];
			float4 sum[4] = {};

#pragma unroll
			for (int j = 0; j < 4; j++) {
				const int v = 4 * min(vb + j * GR_THREADS, v1 - 1), o = v & (NT - 1);
				at[j] = (size_t)(o >> 5) * M8 * PP + (size_t)(v >> lnt) * PP + (o & 31);
			}
#pragma unroll 4
			for (int rank = 0; rank < S; rank++) {
				const float *pr = cl.map_shared_rank(s_p, rank);
#pragma unroll
				for (int j = 0; j < 4; j++) {
					const float4 x = *(const float4 *)(pr + at[j]);
					sum[j].x += x.x, sum[j].y += x.y, sum[j].z += x.z, sum[j].w += x.w;
				}
			}
#pragma unroll
			for (int j = 0; j < 4; j++) {
				const int v = vb + j * GR_THREADS, o = 4 * v & (NT - 1);
				if (v < v1)
					*(float4 *)(Y + (size_t)(4 * v >> lnt) * ldy + n0 + o) = sum[j];
			}
		}
		cluster_arrive_relaxed();
		s = 0;
		n0 += C * NT;
	}
	/* every block's shared memory stays until the others have read it */
	if (NU)
		cluster_wait();
}

#endif
