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

#endif
