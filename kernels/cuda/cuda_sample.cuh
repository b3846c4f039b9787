/*
 * cuda_sample.cuh — next-token selection on the device for decode_sample.
 *
 * Included by cuda_backend.cu only. Rows whose sampler the kernel cannot
 * reproduce exactly are flagged in d_fallback and picked on the host by
 * ssm_sample() from that row's logits, so every row gets exactly the token
 * ssm_sample() would give.
 */
#ifndef SSM_CUDA_SAMPLE_CUH
#define SSM_CUDA_SAMPLE_CUH

#define SAMPLE_THREADS 1024

/* Keeps the larger logit, the lower token ID on ties (ssm_sample's argmax). */
__device__ __forceinline__ void argmax_merge(float *v, int *i, float ov, int oi)
{
	if (ov > *v || (ov == *v && oi < *i)) {
		*v = ov;
		*i = oi;
	}
}

/*
 * One block per row r of logits (rows, V). Greedy rows (ssm_sample's step 1:
 * temperature <= 0 or top_k == 1 or V == 1) get the argmax, NaN counting as
 * -inf and the lowest ID winning ties; the others are flagged for the host.
 */
__global__ void k_sample(const float *logits, int V, const cuda_sampler *sp,
			 int32_t *next, int *fallback)
{
	__shared__ float sv[SAMPLE_THREADS / 32];
	__shared__ int si[SAMPLE_THREADS / 32];
	const cuda_sampler s = sp[blockIdx.x];
	const float *row = logits + (size_t)blockIdx.x * V;
	float best = -INFINITY;
	int bi = V;

	if (!(s.temperature <= 0.0f || s.top_k == 1 || V == 1)) {
		if (threadIdx.x == 0) {
			fallback[blockIdx.x] = 1;
			next[blockIdx.x] = -1;
		}
		return;
	}
	for (int i = threadIdx.x; i < V; i += blockDim.x)
		argmax_merge(&best, &bi, isnan(row[i]) ? -INFINITY : row[i], i);
	for (int o = 16; o > 0; o >>= 1) {
		float ov = __shfl_xor_sync(0xffffffffu, best, o);
		int oi = __shfl_xor_sync(0xffffffffu, bi, o);
		argmax_merge(&best, &bi, ov, oi);
	}
	if ((threadIdx.x & 31) == 0) {
		sv[threadIdx.x >> 5] = best;
		si[threadIdx.x >> 5] = bi;
	}
	__syncthreads();
	if (threadIdx.x < 32) {
		best = -INFINITY;
		bi = V;
		if (threadIdx.x < (blockDim.x >> 5)) {
			best = sv[threadIdx.x];
			bi = si[threadIdx.x];
		}
		for (int o = 16; o > 0; o >>= 1) {
			float ov = __shfl_xor_sync(0xffffffffu, best, o);
			int oi = __shfl_xor_sync(0xffffffffu, bi, o);
			argmax_merge(&best, &bi, ov, oi);
		}
		if (threadIdx.x == 0) {
			next[blockIdx.x] = bi;
			fallback[blockIdx.x] = 0;
		}
	}
}

/* Samples rows [0, n) of act.logits with h_samp[0..n) into h_next and
 * h_fallback (valid once cb->stream is synchronised). Enqueues only. */
static int cuda_sample_rows(cuda_backend *cb, int n)
{
	int rc = SSMD_OK;

	CUDA_TRY(cudaMemcpyAsync(cb->d_samp, cb->h_samp, n * sizeof(cuda_sampler),
				 cudaMemcpyHostToDevice, cb->stream));
	k_sample<<<n, SAMPLE_THREADS, 0, cb->stream>>>(cb->act.logits,
						       cb->cfg.vocab_size,
						       cb->d_samp, cb->d_next,
						       cb->d_fallback);
	CUDA_LAUNCHED();
	CUDA_TRY(cudaMemcpyAsync(cb->h_next, cb->d_next, n * sizeof(int32_t),
				 cudaMemcpyDeviceToHost, cb->stream));
	CUDA_TRY(cudaMemcpyAsync(cb->h_fallback, cb->d_fallback, n * sizeof(int),
				 cudaMemcpyDeviceToHost, cb->stream));
out:
	return rc;
}

#endif
