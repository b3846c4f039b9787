/*
 * cuda_persist_nb.cuh — the decode step for 2 or 4 rows as one persistent
 * kernel, its weight products on the tensor cores.
 *
 * Included by cuda_backend.cu only, after cuda_persist.cuh, whose phases,
 * barriers and work split it follows (read that file first). What differs is
 * the GEMV: with NB rows each weight piece meets NB input vectors, which on
 * the CUDA cores costs an unpack and 8 FMAs per row and piece and made a
 * multi-row version of the batch-1 kernel issue-bound (bench/NOTES.md,
 * "Batch 2-4 through the persistent kernel"). Here one mma.m16n8k16 per row
 * and chunk does that work, fed straight from the weight loads:
 *
 *   A warp takes two weight rows r, r' at a time, 128 columns a chunk: lane
 *   l = 4g + t loads columns 4l .. 4l+3 of both (two 8-byte loads, each a
 *   256-byte run of one row for the warp) and the input's same columns from
 *   shared memory. As mma operands, A's row g holds r's columns and row g+8
 *   r''s, and B's column g the input's, each lane's four columns in the
 *   places (2t, 2t+1, 2t+8, 2t+9) of k. So D[g][g] is r's dot over the
 *   columns 16g .. 16g+15 of the chunk and D[g+8][g] r''s: the diagonal of
 *   each half holds what a GEMV needs, the rest of D is discarded. The
 *   accumulators run over a row's chunks; at its end the lane holding a
 *   diagonal entry (g == 2t: c0 / c2, g == 2t+1: c1 / c3) passes it into a
 *   warp sum.
 *
 * One mma per row and chunk instead of ~40 instructions, with the weights
 * read in runs of whole 256-byte rows. The sums follow a fixed order (the
 * mma's, then the shuffles), so every run gives the same bits; they are not
 * the batch-1 kernel's bits, as the cuBLAS path's are not either.
 *
 * The 2 NB values a warp has at an item's end (two rows, NB inputs) are
 * summed by a reduce-scatter (pkn_sums), which leaves each lane one of
 * them: the epilogues store from the lane that holds a value.
 *
 * Rows. Row b of every activation is row b of cuda_act (stride d_model,
 * 2 d_inner, d_inner or vocab), its slot slots[b] (< 0: padding, no state).
 * The staged inputs hold NB vectors; phase C's items are (row, channel)
 * pairs, so its lanes take NB times as many as at batch 1, with the same
 * per-channel code (pk_chan_fetch / pk_chan_step).
 *
 * Requirements besides cuda_persist.cuh's: 16-bit weights (bf16 or f16),
 * d_state 16, NB (d_conv - 1) + d_conv + 2 <= 32 (the conv epilogue's
 * lanes), the shared memory within the device's opt-in limit (pkn_init_t).
 */
#ifndef SSM_CUDA_PERSIST_NB_CUH
#define SSM_CUDA_PERSIST_NB_CUH

#define PKN_CHUNK 128 /* columns of a row per chunk: 4 a lane */
/* Chunks a lane fetches ahead: 48 bytes a row pair a lane. Measured on the
 * H200 (bf16, bench/NOTES.md round eighteen): 6 is 1-5% faster than 4 at 2
 * and 4 rows on every shape (4 left the memory idle two thirds of the
 * time); 8 spills at the 128-register cap and is slower than 4. */
#define PKN_PF 6

/* d += A . B for one m16n8k16 tile (T: bf16 or f16): A's row g from w (row
 * r, columns 4l .. 4l+3) and row g+8 from w2 (row r'), B's column g from x. */
template <typename T>
__device__ __forceinline__ void pkn_mma(float d[4], uint2 w, uint2 w2, uint2 x)
{
	if constexpr (std::is_same<T, __half>::value)
		asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
		    "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
		    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		    : "r"(w.x), "r"(w2.x), "r"(w.y), "r"(w2.y), "r"(x.x), "r"(x.y));
	else
		asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
		    "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
		    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		    : "r"(w.x), "r"(w2.x), "r"(w.y), "r"(w2.y), "r"(x.x), "r"(x.y));
}

/* The chunk range [c0, c1) of item `it` (row pair it / P, part it % P) of
 * a matrix with k columns: nc = ceil(k / PKN_CHUNK) chunks in P parts.
 * Every caller passes P = 1 (whole row pairs). The batch-1 kernel's
 * helpers lost their P; here that moved the 4-row kernel's register
 * allocation and cost 3-4% at batch 4 on the H200 (bench/NOTES.md, round
 * twenty), so it stays. */
__device__ __forceinline__ void pkn_range(int it, int k, int P, int *r, int *c0, int *c1)
{
	const int nc = (k + PKN_CHUNK - 1) / PKN_CHUNK, pp = (nc + P - 1) / P, part = it % P;

	*r = 2 * (it / P);
	*c0 = part * pp;
	*c1 = *c0 + pp < nc ? *c0 + pp : nc;
}

/* Units of PF chunks per item (as pk_units). */
__device__ __forceinline__ int pkn_units(int k, int P, int PF)
{
	const int nc = (k + PKN_CHUNK - 1) / PKN_CHUNK, pp = (nc + P - 1) / P;

	return (pp + PF - 1) / PF;
}

/* Unit h of item `it` of an (m, k) matrix: pre[i] = columns 4l .. 4l+3 of
 * rows r and r + 1 in chunk c0 + h PF + i (zeros past an end). */
template <typename T, int PF>
__device__ __forceinline__ void pkn_fetch(const T *W, int m, int k, int P, int it, int h,
					  uint2 (*pre)[2])
{
	const int lane = threadIdx.x & 31;
	int r, c0, c1;

	pkn_range(it, k, P, &r, &c0, &c1);
#pragma unroll
	for (int i = 0; i < PF; i++) {
		const int c = c0 + h * PF + i, q = c * PKN_CHUNK + 4 * lane;
		const bool in = it < (m + 1) / 2 * P && c < c1 && q < k;
		pre[i][0] = make_uint2(0, 0);
		pre[i][1] = make_uint2(0, 0);
		if (in)
			pre[i][0] = __ldg((const uint2 *)(W + (size_t)r * k + q));
		if (in && r + 1 < m)
			pre[i][1] = __ldg((const uint2 *)(W + (size_t)(r + 1) * k + q));
	}
}

/* The mmas of unit h: acc[b] += rows (r, r + 1) . xs row b over its chunks
 * (xs: NB rows of ldx elements in shared memory). */
template <typename T, int PF, int NB>
__device__ __forceinline__ void pkn_dot(const uint2 (*cur)[2], const T *xs, int ldx, int k,
					int c0, int c1, int h, float (*acc)[4])
{
	const int lane = threadIdx.x & 31;

#pragma unroll
	for (int i = 0; i < PF; i++) {
		const int c = c0 + h * PF + i, q = c * PKN_CHUNK + 4 * lane;
		if (c < c1) {
#pragma unroll
			for (int b = 0; b < NB; b++) {
				const uint2 x = q < k ? *(const uint2 *)(xs + b * ldx + q)
						      : make_uint2(0, 0);
				pkn_mma<T>(acc[b], cur[i][0], cur[i][1], x);
			}
		}
	}
}

/*
 * The warp sums of the two rows' diagonals, reduce-scattered: value k (of
 * M = 2 NB: row r for rows b = k < NB, row r + 1 for k - NB) ends whole on
 * lanes k * 32 / M .. (k + 1) * 32 / M - 1 (pkn_k()), each halving step
 * sending half of a lane's values to its partner: M - 1 + log2(32 / M)
 * shuffles instead of M times 5. acc cleared.
 */
template <int NB>
__device__ __forceinline__ int pkn_k(void)
{
	return (threadIdx.x & 31) / (32 / (2 * NB));
}

template <int NB>
__device__ __forceinline__ float pkn_sums(float (*acc)[4])
{
	constexpr int M = 2 * NB;
	const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
	const bool lo = g == 2 * t, hi = g == 2 * t + 1;
	float a[M];
	int o = 16;

#pragma unroll
	for (int b = 0; b < NB; b++) {
		a[b] = lo ? acc[b][0] : hi ? acc[b][1] : 0.0f;
		a[NB + b] = lo ? acc[b][2] : hi ? acc[b][3] : 0.0f;
#pragma unroll
		for (int j = 0; j < 4; j++)
			acc[b][j] = 0.0f;
	}
#pragma unroll
	for (int cnt = M; cnt > 1; cnt >>= 1, o >>= 1) {
		const bool up = lane & o;
#pragma unroll
		for (int i = 0; i < cnt / 2; i++) {
			const float send = up ? a[i] : a[i + cnt / 2];
			const float keep = up ? a[i + cnt / 2] : a[i];
			a[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
		}
	}
	for (; o > 0; o >>= 1)
		a[0] += __shfl_xor_sync(0xffffffffu, a[0], o);
	return a[0];
}

/*
 * One GEMV phase over NB rows: for each item of this warp (a row pair and
 * a part), epi(r, part, v) on every lane, v its value pkn_k(): W[r + k /
 * NB, part] . xs[k % NB, part] (to be ignored when r + k / NB == m). cur
 * holds the warp's first unit (pkn_fetch(.., pk_gw(), 0, ..)); the next
 * unit is fetched while one computes.
 */
template <typename T, int PF, int NB, typename Epi>
__device__ __forceinline__ void pkn_gemv(const T *W, int m, int k, int P, const T *xs, int ldx,
					 uint2 (*cur)[2], Epi epi)
{
	const int nw = pk_nw(), H = pkn_units(k, P, PF), items = (m + 1) / 2 * P;
	uint2 nxt[PF][2];
	float acc[NB][4];

#pragma unroll
	for (int b = 0; b < NB; b++)
#pragma unroll
		for (int j = 0; j < 4; j++)
			acc[b][j] = 0.0f;
	for (int it = pk_gw(), h = 0; it < items;) {
		const int nit = h + 1 < H ? it : it + nw, nh = h + 1 < H ? h + 1 : 0;
		int r, c0, c1;

		pkn_fetch<T, PF>(W, m, k, P, nit, nh, nxt);
		pkn_range(it, k, P, &r, &c0, &c1);
		pkn_dot<T, PF, NB>(cur, xs, ldx, k, c0, c1, h, acc);
		if (h == H - 1)
			epi(r, it % P, pkn_sums<NB>(acc));
#pragma unroll
		for (int i = 0; i < PF; i++) {
			cur[i][0] = nxt[i][0];
			cur[i][1] = nxt[i][1];
		}
		it = nit;
		h = nh;
	}
}

/* The whole decode step over NB rows (d_state 16: 4 states a lane). grid
 * (G) cooperative, block PK_THREADS, dynamic shared memory
 * pk_smem_bytes(NB, ...). */
template <typename T, int NB>
__global__ void __launch_bounds__(PK_THREADS, 1) ssmk_decode_persist_nb(const pk_args p)
{
	constexpr int NPL = 4, PF = PKN_PF, SPAN = 32 / (2 * NB);
	extern __shared__ uint4 pk_smem[];
	__shared__ float red[PK_WARPS * NB];
	__shared__ unsigned long long base;
	const pk_smem_map<T> sm = pk_carve<T, NB>(pk_smem, p);
	cuda_layer *lay = sm.lay;
	T *xs = sm.xs, *xloc = sm.xloc, *xw = sm.xw;
	float *dbc = sm.dbc;
	const int D = p.D, E = p.E, W = p.W, G = gridDim.x, lane = threadIdx.x & 31;
	/* this lane's value of each GEMV item: row r + dr of the pair, row b,
	 * and whether it stores it (the first lane of the value's span) */
	const int kk = pkn_k<NB>(), dr = kk / NB, rb = kk % NB;
	const bool store = lane % SPAN == 0;
	uint2 cur[PF][2];
	float cw = 0.0f, cw2 = 0.0f, scale[NB], my_scale = 0.0f;
	unsigned long long target;
	pk_chan<T, NPL> ch;

	/* the grid barriers, and pk_sample's arrival and ticket */
	const int n_bar = 3 * p.n_layer + 2;

	if (threadIdx.x == 0)
		base = pk_base(p.bar, n_bar);
	pkn_fetch<T, PF>((const T *)p.layers[0].in_w, 2 * E, D, 1, pk_gw(), 0, cur);
	pk_load_layers(p, pk_smem);
	/* channels past E stay 0 */
	for (int m = threadIdx.x; m < NB * p.M; m += PK_THREADS)
		xloc[m] = from_f32<T>(0.0f);
	pk_xw_copy<T>(p, 0, xw);
	__syncthreads();
	cw = pk_cw_fetch<NB>(p, &lay[0], 0, 2 * pk_gw());
	cw2 = pk_cw_fetch<NB>(p, &lay[0], 0, 2 * pk_gw() + 1);
	target = base;
	PK_MARK(0);
	for (int l = 0; l < p.n_layer; l++) {
		const cuda_layer *y = &lay[l];

		/* A: norm . in_proj, the conv step on x rows; the warp's k-th pair
		 * of rows 2 (gw + k NW) + s is this block's channel pair warp + 16
		 * k, local index 2 (warp + 16 k) + s (pk_xw_pr) */
		int mloc = 2 * (threadIdx.x >> 5);
		pk_stage_norm<T, NB>(p.h, l ? NULL : (const T *)p.embed, p.tokens, y->norm, D,
				      p.eps, xs, red, scale);
#pragma unroll
		for (int b = 0; b < NB; b++)
			if (rb == b)
				my_scale = scale[b];
		pkn_gemv<T, PF, NB>((const T *)y->in_w, 2 * E, D, 1, xs, D, cur,
				    [&](int r, int, float v) {
					    float v0[NB], v1[NB];

					    v *= my_scale;
					    /* only z: phase C reads x from xc */
					    if (store && r >= E)
						    p.xz[(size_t)rb * 2 * E + r + dr] = v;
#pragma unroll
					    for (int b = 0; b < NB; b++) {
						    v0[b] = __shfl_sync(0xffffffffu, v, b * SPAN);
						    v1[b] = __shfl_sync(0xffffffffu, v, (NB + b) * SPAN);
					    }
					    if (r < E)
						    pk_conv_epi<T, NB>(p, l, r, v0, cw, xloc + mloc);
					    if (r + 1 < E)
						    pk_conv_epi<T, NB>(p, l, r + 1, v1, cw2,
								       xloc + mloc + 1);
					    mloc += 2 * PK_WARPS;
					    cw = pk_cw_fetch<NB>(p, y, l, r + 2 * pk_nw());
					    cw2 = pk_cw_fetch<NB>(p, y, l, r + 1 + 2 * pk_nw());
				    });
		PK_MARK(l * 8 + 1);
		PK_MARK(l * 8 + 2);

		/* B: x_proj over this block's channels, into the layer's sums */
		pk_xproj_block<T, NB>(p, l, xw, xloc);
		PK_MARK(l * 8 + 3);
		pk_arrive(p.bar);
		{
			/* phase C's items are (row, channel) pairs, row b = i / E */
			const int i = pk_chan0(), ok = i < NB * E;
			pk_chan_fetch<T, NPL>(p, y, l, ok ? i % E : E, ok ? i / E : 0, &ch);
		}
		pk_wait(p.bar, target += G);
		PK_MARK(l * 8 + 4);

		/* C: the SSM step per (row, channel) */
		{
			pk_xproj_read<T, NB>(p, l, xw, dbc);
			/* every lane of a warp takes the same number of turns */
			for (int c0 = 0; c0 < NB * E; c0 += pk_nchan()) {
				const int i = c0 + pk_chan0(), ok = i < NB * E;
				const int e = ok ? i % E : E, b = ok ? i / E : 0;
				if (c0)
					pk_chan_fetch<T, NPL>(p, y, l, e, b, &ch);
				const float x = ok ? __ldcg(p.xc + (size_t)b * E + e) : 0.0f;
				const float z = ok ? __ldcg(p.xz + (size_t)b * 2 * E + E + e) : 0.0f;
				pk_chan_step<T, NPL, false>(p, y, l, e, b, ch, dbc + b * W, x, z,
							    (T *)p.yT + (size_t)b * E + e);
			}
		}
		PK_MARK(l * 8 + 5);
		pk_arrive(p.bar);
		pkn_fetch<T, PF>((const T *)y->out_w, D, E, 1, pk_gw(), 0, cur);
		cw = pk_res_fetch<T, NB>(p, y, l, 2 * pk_gw());
		cw2 = pk_res_fetch<T, NB>(p, y, l, 2 * pk_gw() + 1);
		pk_wait(p.bar, target += G);
		PK_MARK(l * 8 + 6);

		/* D: out_proj + residual */
		pk_stage<T, NB>(p.yT, E, xs);
		__syncthreads();
		pkn_gemv<T, PF, NB>((const T *)y->out_w, D, E, 1, xs, E, cur,
				    [&](int r, int, float v) {
					    const float h0 = __shfl_sync(0xffffffffu, cw, rb);
					    const float h1 = __shfl_sync(0xffffffffu, cw2, rb);
					    const float b0 = __shfl_sync(0xffffffffu, cw, NB);
					    const float b1 = __shfl_sync(0xffffffffu, cw2, NB);
					    if (store && r + dr < D)
						    p.h[(size_t)rb * D + r + dr] =
							    (v + (dr ? h1 : h0)) + (dr ? b1 : b0);
					    cw = pk_res_fetch<T, NB>(p, y, l, r + 2 * pk_nw());
					    cw2 = pk_res_fetch<T, NB>(p, y, l, r + 1 + 2 * pk_nw());
				    });
		PK_MARK(l * 8 + 7);
		pk_arrive(p.bar);
		if (l + 1 < p.n_layer) {
			pkn_fetch<T, PF>((const T *)y[1].in_w, 2 * E, D, 1, pk_gw(), 0, cur);
			if (threadIdx.x == 0)
				pk_l2(y[1].norm, (size_t)D * sizeof(float));
			cw = pk_cw_fetch<NB>(p, &y[1], l + 1, 2 * pk_gw());
			cw2 = pk_cw_fetch<NB>(p, &y[1], l + 1, 2 * pk_gw() + 1);
		} else {
			pkn_fetch<T, PF>((const T *)p.lm_head, p.V, D, 1, pk_gw(), 0, cur);
			if (threadIdx.x == 0)
				pk_l2(p.norm_f, (size_t)D * sizeof(float));
		}
		pk_wait(p.bar, target += G);
		PK_MARK(l * 8 + 8);
	}

	/* the final norm . lm_head; block 0 keeps each row's hidden vector */
	pk_keep_hidden<NB>(p);
	pk_xproj_done<NB>(p);
	pk_stage_norm<T, NB>(p.h, NULL, p.tokens, p.norm_f, D, p.eps, xs, red, scale);
#pragma unroll
	for (int b = 0; b < NB; b++)
		if (rb == b)
			my_scale = scale[b];
	float best = -INFINITY;
	int bi = p.V;
	pkn_gemv<T, PF, NB>((const T *)p.lm_head, p.V, D, 1, xs, D, cur, [&](int r, int, float v) {
		if (store && r + dr < p.V) {
			const float logit = v * my_scale;
			p.logits[(size_t)rb * p.V + r + dr] = logit;
			argmax_merge(&best, &bi, clean_logit(logit), r + dr);
		}
	});
	__syncthreads();
	PK_MARK(p.n_layer * 8 + 1);
	pk_sample<NB>(p, rb, best, bi, base + (unsigned long long)n_bar * G);
}

/*
 * The rows a multi-row kernel serves: 2 or 4. Measured on the H200 (bf16,
 * ms per step, against the cuBLAS path; bench/NOTES.md): 2 rows 130m 0.44
 * / 0.65, 1.4b 1.50 / 2.18, 2.8b 2.70 / 3.48; 4 rows 0.50 / 0.66, 1.71 /
 * 2.19, 3.15 / 3.47. At 8 rows it was slower than cuBLAS (1.4b 3.18 / 2.23:
 * the kernel spills at its 128 registers), so buckets 8 and up keep that path.
 */
static inline bool pkn_rows_ok(int nb) { return nb == 2 || nb == 4; }

/* The kernel for NB rows (16-bit weights; NULL for f32). */
template <typename T>
static inline pk_kernel_fn pkn_kernel(int nb)
{
	if constexpr (sizeof(T) != 2)
		return NULL;
	else
		return nb == 2 ? ssmk_decode_persist_nb<T, 2> : ssmk_decode_persist_nb<T, 4>;
}

#endif
