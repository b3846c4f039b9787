/*
 * cuda_gemm_wg.cuh — the batched decode's in_proj and out_proj for buckets
 * of 32 and 64 rows, on the warpgroup tensor cores (wgmma, sm_90a).
 *
 * Included by cuda_backend.cu only, after cuda_kernels.cuh (cp.async,
 * pdl_wait, pdl_trigger). At 64 rows a product does 64 FLOPs a weight byte:
 * more than mma.sync keeps up with at the one block an SM that
 * ssmk_gemm_rows's accumulators leave room for (bench/NOTES.md round
 * thirty-four), and cuBLAS's kernels cannot start before the kernel ahead
 * has ended. Here one warpgroup a block multiplies the rows' 64 x 64 tile
 * by an NT x 64 tile of weights per wgmma group, both operands straight
 * from shared memory, so the warps only issue copies; one stage's group
 * runs while the next stage's copies are waited for (waiting for each
 * group at once left the kernel no faster than cuBLAS: the stage's
 * barriers and the products' latency in series, bench/NOTES.md round
 * thirty-six), and the weights' first stages are asked for before
 * pdl_wait (nothing writes them after upload).
 */
#ifndef SSM_CUDA_GEMM_WG_CUH
#define SSM_CUDA_GEMM_WG_CUH

#define WG_THREADS 128 /* one warpgroup */
#define WG_ROWS 64     /* the rows of a product at most (wgmma's M) */
#define WG_KC 64       /* K columns a stage: one 128-byte swizzle line a row
			* (two or four lines a stage: bench/NOTES.md round
			* thirty-six) */

/* The byte offset of 16-byte piece c (0..7) of row r in a tile of 128-byte
 * rows laid out as wgmma's 128-byte swizzle reads it: piece c of row r sits
 * at place c ^ (r % 8) of its line. */
__device__ __forceinline__ unsigned wg_at(int r, int c)
{
	return (unsigned)(r * 128 + ((c ^ (r & 7)) << 4));
}

/* A wgmma shared-memory descriptor for a K-major tile of 128-byte rows with
 * the 128-byte swizzle: the start address (16-byte units), the leading
 * offset 16 bytes (unused by this layout), the stride between 8-row groups
 * 1024 bytes, layout 1 (128B swizzle). */
__device__ __forceinline__ unsigned long long wg_desc(unsigned saddr)
{
	return (unsigned long long)((saddr & 0x3FFFF) >> 4) | (1ull << 16) |
	       ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wg_fence(void)
{
	asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}

__device__ __forceinline__ void wg_commit(void)
{
	asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

__device__ __forceinline__ void wg_wait0(void)
{
	asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
}

__device__ __forceinline__ void wg_wait1(void)
{
	asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
}

/* d (64 x NT, f32, the warpgroup's fragments) += A (64 x 16) . B (NT x 16)^T,
 * both K-major in shared memory (descriptors a, b), 16-bit T. */
#define WG_REGS16                                                               \
	"{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define WG_REGS32                                                               \
	"{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
	"%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, "   \
	"%30, %31}"
#define WG_REGS64                                                               \
	"{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
	"%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, "   \
	"%30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "   \
	"%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, "   \
	"%58, %59, %60, %61, %62, %63}"
#define WG_D16(d)                                                              \
	"+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),  \
	"+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
	"+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define WG_D32(d)                                                              \
	WG_D16(d), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),           \
	"+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),          \
	"+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),          \
	"+f"(d[30]), "+f"(d[31])
/* scale-d is a predicate (set: d += a b), from the operand after b */
#define WG_D64(d)                                                              \
	WG_D32(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),           \
	"+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),          \
	"+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]),          \
	"+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),          \
	"+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),          \
	"+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),          \
	"+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define WG_MMA(n, ty, regs, dops, ia, ib, is)                                  \
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #is ", 0;\n"            \
		     "wgmma.mma_async.sync.aligned.m64n" #n "k16.f32." ty "." ty " " \
		     regs ", %" #ia ", %" #ib ", p, 1, 1, 0, 0;\n}\n"               \
		     : dops                                                    \
		     : "l"(a), "l"(b), "r"(1))

template <typename T, int NT> struct wg_mma;
#define WG_MMA_T(T, ty, n, regs, dops, ia, ib, is)                              \
	template <> struct wg_mma<T, n> {                                        \
		static __device__ __forceinline__ void run(float *d, unsigned long long a, \
							   unsigned long long b)   \
		{                                                                \
			WG_MMA(n, ty, regs, dops(d), ia, ib, is);                  \
		}                                                                \
	};
WG_MMA_T(__nv_bfloat16, "bf16", 32, WG_REGS16, WG_D16, 16, 17, 18)
WG_MMA_T(__nv_bfloat16, "bf16", 64, WG_REGS32, WG_D32, 32, 33, 34)
WG_MMA_T(__nv_bfloat16, "bf16", 128, WG_REGS64, WG_D64, 64, 65, 66)
WG_MMA_T(__half, "f16", 32, WG_REGS16, WG_D16, 16, 17, 18)
WG_MMA_T(__half, "f16", 64, WG_REGS32, WG_D32, 32, 33, 34)
WG_MMA_T(__half, "f16", 128, WG_REGS64, WG_D64, 64, 65, 66)
#undef WG_MMA_T

/* The stages of ssmk_gemm_wg<T, NT>'s ring: as many as fit in 192 KB, at
 * most 12 (12 for tiles of 32 and 64 outputs, 8 for 128). */
static inline __host__ __device__ constexpr int wg_stages(int NT)
{
	return (192 << 10) / ((WG_ROWS + NT) * WG_KC * 2) > 12
		       ? 12
		       : (192 << 10) / ((WG_ROWS + NT) * WG_KC * 2);
}

/* Shared memory of ssmk_gemm_wg<T, NT>: the ring, each stage the rows' tile
 * (64 x WG_KC) then the weights' (NT x WG_KC), 16-bit, plus 1 KB to align
 * the ring to the swizzle's 1024-byte pattern. */
static inline __host__ __device__ size_t wg_smem_bytes(int NT)
{
	return (size_t)wg_stages(NT) * (WG_ROWS + NT) * WG_KC * 2 + 1024;
}

/*
 * Y_q (M, N) f32 [ld ldy] = X (M, K slice q) [ld ldx] . W (N, K slice q)^T,
 * W (N, K) row-major, 16-bit T, f32 sums; M <= 64, Y_q = Y + q yslice.
 *
 * grid (N / NT, S), block WG_THREADS, dynamic shared memory
 * wg_smem_bytes(NT). Block (t, q) makes outputs [t NT, (t + 1) NT) of K
 * slice q, [q KS, (q + 1) KS), S KS = K, KS a multiple of WG_KC; K and ldx
 * multiples of 8, W and X 16-byte aligned, ldy even.
 *   - Stage u of the ring (ST = wg_stages(NT) places) holds columns
 *     [u WG_KC, (u + 1) WG_KC) of the slice: the 64 rows' tile (rows >= M
 *     zero) and the NT weight rows' tile, each row 128 bytes in the
 *     swizzle's order. Copied by cp.async, thread i taking 16-byte piece
 *     i % 8 of rows i / 8 + 16 j (16 rows apart, so one swizzle serves all
 *     of a thread's rows). The weights of the first ST - 2 stages are
 *     asked for before pdl_wait (one group), their rows after it (a group a
 *     stage); each later stage is one group issued ST - 2 stages ahead, so
 *     a stage has landed when at most ST - 2 groups are still pending.
 *   - Each stage is 4 wgmma.m64nNTk16 steps (16 columns each) into the
 *     warpgroup's accumulators as one group; a warp waits for the group
 *     before last, so one stage's products run while the next stage's
 *     wait and barriers pass, and the place a copy reuses (two stages back)
 *     is free once every warp has passed the barrier at the top.
 *   - Then warp w writes rows 16 w + g, + 8 (g = lane / 4) of its
 *     fragments: outputs 8 j + 2 (lane % 4), + 1 for j < NT / 8.
 * Every output is one thread's f32 sum in a fixed order: the same bits on
 * every run.
 */
template <typename T, int NT>
__global__ void __launch_bounds__(WG_THREADS)
ssmk_gemm_wg(const T *__restrict__ Wt, int K, const T *__restrict__ X, int ldx, int M,
	     float *__restrict__ Y, int ldy, size_t yslice, int KS)
{
	/* RS: the rows between a thread's pieces */
	constexpr int ST = wg_stages(NT), RS = WG_THREADS / 8;
	constexpr int XB = WG_ROWS * WG_KC * 2, SB = (WG_ROWS + NT) * WG_KC * 2;
	extern __shared__ __align__(16) unsigned char smem_raw[];
	const unsigned raw = (unsigned)__cvta_generic_to_shared(smem_raw);
	const unsigned base = (raw + 1023u) & ~1023u;
	unsigned char *ring = smem_raw + (base - raw);
	const int tid = threadIdx.x, r0 = tid / 8, p = tid % 8;
	const int n0 = blockIdx.x * NT, k0 = blockIdx.y * KS, NU = KS / WG_KC;
	/* this thread's first piece in a stage's tiles of rows and weights */
	const unsigned xo = wg_at(r0, p), wo = XB + xo;
	const T *wsrc = Wt + (size_t)(n0 + r0) * K + k0 + 8 * p;
	const T *xsrc = X + k0 + 8 * p;
	float d[NT / 2];

#pragma unroll
	for (int i = 0; i < NT / 2; i++)
		d[i] = 0.0f;

	auto issue_w = [&](int u) {
		unsigned char *dst = ring + u % ST * SB + wo;
#pragma unroll
		for (int j = 0; j < NT / RS; j++)
			cp_async16(dst + j * RS * 128, wsrc + (size_t)j * RS * K + u * WG_KC, true);
	};
	auto issue_x = [&](int u) {
		unsigned char *dst = ring + u % ST * SB + xo;
#pragma unroll
		for (int j = 0; j < WG_ROWS / RS; j++) {
			const int r = r0 + j * RS;
			cp_async16(dst + j * RS * 128, xsrc + (size_t)(r < M ? r : 0) * ldx + u * WG_KC,
				   r < M);
		}
	};

	for (int u = 0; u < ST - 2 && u < NU; u++)
		issue_w(u);
	cp_async_commit();
	/* X is the kernel ahead's output */
	pdl_wait();
	for (int u = 0; u < ST - 2; u++) {
		if (u < NU)
			issue_x(u);
		cp_async_commit();
	}
	for (int u = 0; u < NU; u++) {
		/* stage u - 2's place is free: every warp has waited for its
		 * products */
		__syncthreads();
		if (u + ST - 2 < NU) {
			issue_w(u + ST - 2);
			issue_x(u + ST - 2);
		}
		cp_async_commit();
		cp_async_wait<ST - 2>();
		/* this thread's copies of stage u, seen by the async proxy that
		 * wgmma reads through, then everyone's */
		asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
		__syncthreads();
		const unsigned sx = base + u % ST * SB, sw = sx + XB;

		wg_fence();
#pragma unroll
		for (int kk = 0; kk < WG_KC / 16; kk++)
			wg_mma<T, NT>::run(d, wg_desc(sx + 32 * kk), wg_desc(sw + 32 * kk));
		wg_commit();
		wg_wait1();
	}
	wg_wait0();
	/* the next kernel may start its blocks: it waits for this one */
	pdl_trigger();
	{
		const int w = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;
		float *y = Y + blockIdx.y * yslice + n0 + 2 * t;
		const int ra = 16 * w + g, rb = ra + 8;

#pragma unroll
		for (int j = 0; j < NT / 8; j++) {
			if (ra < M)
				*(float2 *)(y + (size_t)ra * ldy + 8 * j) =
					make_float2(d[4 * j], d[4 * j + 1]);
			if (rb < M)
				*(float2 *)(y + (size_t)rb * ldy + 8 * j) =
					make_float2(d[4 * j + 2], d[4 * j + 3]);
		}
	}
}

#undef WG_REGS16
#undef WG_REGS32
#undef WG_REGS64
#undef WG_D64
#undef WG_D16
#undef WG_D32
#undef WG_MMA

#endif
