#include "codec.h"

#include <lz4.h>
#include <lz4frame.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* for the XXH64_state_t definition (streaming hash on the stack) */
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "ssm_state.h"
#include "store.h"

/*
 * An encoded state is cut into regions that are transformed separately:
 * the header (copied as is), ssm and conv (f32, or 16-bit when lossy), hidden
 * and dt_sum (always f32). Each region is cut into chunks of at most
 * CHUNK_BYTES of stored ("packed") bytes, and every chunk is one LZ4 block.
 * The "transformed" bytes are the chunks in order, each either packed as is
 * or shuffled: for a chunk of m elements of w bytes,
 *   shuffled[k*m + i] = packed[i*w + k].
 * Chunking keeps every transform inside a cache-sized window, so encoding
 * and decoding stream through the state once, with one chunk of scratch
 * memory; LZ4 matches reach back only 64 KB, so the chunks cost no ratio.
 */
enum { N_REGIONS = 5 };

#define CHUNK_BYTES ((size_t)1 << 20)

/* Payloads up to this size try both shuffled and unshuffled in full; larger
 * ones decide on SAMPLE_CHUNKS chunks spread over the state. */
#define EXACT_TRIAL_BYTES ((size_t)2 << 20)
#define SAMPLE_CHUNKS 4

typedef struct region {
	size_t raw_off;    /* offset in the decoded (f32) state */
	size_t n;          /* elements (bytes for the header) */
	int raw_w;         /* bytes per element in the decoded state: 1 or 4 */
	int packed_w;      /* bytes per element when stored: 1, 2 or 4 */
} region;

/* Fills the regions of a state of layout lay for a lossy kind; returns the
 * packed length (the transformed length too). */
static size_t regions_of(const ssm_state_layout *lay, int lossy,
			 region r[N_REGIONS])
{
	int w16 = lossy ? 2 : 4;
	size_t len = 0;

	r[0] = (region){ 0, SSM_STATE_HEADER_SIZE, 1, 1 };
	r[1] = (region){ lay->ssm_off, lay->ssm_len / 4, 4, w16 };
	r[2] = (region){ lay->conv_off, lay->conv_len / 4, 4, w16 };
	r[3] = (region){ lay->hidden_off, lay->hidden_len / 4, 4, 4 };
	r[4] = (region){ lay->dt_sum_off, lay->dt_sum_len / 4, 4, 4 };
	for (int i = 0; i < N_REGIONS; i++)
		len += r[i].n * (size_t)r[i].packed_w;
	return len;
}

/* One chunk: m elements of region r starting at element e. */
typedef struct chunk {
	const region *r;
	size_t e, m;
} chunk;

/* Walks the chunks of all regions in order; returns 0 when done. */
static int chunk_next(const region r[N_REGIONS], int *ri, size_t *e, chunk *c)
{
	while (*ri < N_REGIONS) {
		const region *g = &r[*ri];
		size_t per = CHUNK_BYTES / (size_t)g->packed_w;

		if (*e < g->n) {
			c->r = g;
			c->e = *e;
			c->m = g->n - *e < per ? g->n - *e : per;
			*e += c->m;
			return 1;
		}
		(*ri)++;
		*e = 0;
	}
	return 0;
}

/* Stored (transformed) bytes of chunk c. */
static size_t chunk_bytes(const chunk *c)
{
	return c->m * (size_t)c->r->packed_w;
}

/* Offset of chunk c in the decoded state. */
static size_t chunk_raw_off(const chunk *c)
{
	return c->r->raw_off + c->e * (size_t)c->r->raw_w;
}

/* ------------------------------------------------------------- rounding -- */

static uint32_t load_u32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4); /* states are little-endian, like every host we run on */
	return v;
}

/* f32 -> bf16, round to nearest even; NaNs stay NaN (quiet bit forced so a
 * payload living only in the low bits cannot turn into infinity). */
static uint16_t f32_to_bf16(uint32_t x)
{
	if ((x & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((x >> 16) | 0x0040u);
	return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static uint32_t bf16_to_f32(uint16_t h)
{
	return (uint32_t)h << 16;
}

/* f32 -> IEEE binary16, round to nearest even, subnormals kept, |x| >= 65520
 * to infinity, NaN stays NaN (quiet). */
static uint16_t f32_to_f16(uint32_t x)
{
	uint32_t sign = (x >> 16) & 0x8000u;
	uint32_t ax = x & 0x7fffffffu;

	if (ax >= 0x7f800000u) /* inf or NaN */
		return (uint16_t)(sign | 0x7c00u |
				  (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
	if (ax >= 0x477ff000u) /* >= 65520 rounds past the largest half */
		return (uint16_t)(sign | 0x7c00u);
	if (ax < 0x38800000u) { /* below 2^-14: a half subnormal or zero */
		uint32_t e = ax >> 23, m, shift, r, rem, half;

		if (ax < 0x33000000u) /* below 2^-25, rounds to zero */
			return (uint16_t)sign;
		/* value = m * 2^(e-150); in units of 2^-24 that is m >> (126-e) */
		m = (ax & 0x7fffffu) | 0x800000u;
		shift = 126 - e; /* 14..24 */
		r = m >> shift;
		rem = m & ((1u << shift) - 1);
		half = 1u << (shift - 1);
		if (rem > half || (rem == half && (r & 1u)))
			r++;
		return (uint16_t)(sign | r);
	}
	/* normal: rebias the exponent (127 -> 15) and round 23 -> 10 bits */
	ax -= 0x38000000u;
	return (uint16_t)(sign | ((ax + 0xfffu + ((ax >> 13) & 1u)) >> 13));
}

static uint32_t f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
	uint32_t e = 0;

	if (exp == 0x1f)
		return sign | 0x7f800000u | (man << 13);
	if (exp == 0) {
		if (!man)
			return sign;
		/* subnormal man * 2^-24: normalise so bit 10 is the implicit 1 */
		while (!(man & 0x400u)) {
			man <<= 1;
			e++;
		}
		return sign | ((113 - e) << 23) | ((man & 0x3ffu) << 13);
	}
	return sign | ((exp + 112) << 23) | (man << 13);
}

static uint16_t narrow(uint32_t x, int lossy)
{
	return lossy == STORE_LOSSY_BF16 ? f32_to_bf16(x) : f32_to_f16(x);
}

static uint32_t widen(uint16_t h, int lossy)
{
	return lossy == STORE_LOSSY_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

static int lossy_of_codec(int codec)
{
	switch (codec & STORE_CODEC_LOSSY_MASK) {
	case STORE_CODEC_BF16:
		return STORE_LOSSY_BF16;
	case STORE_CODEC_F16:
		return STORE_LOSSY_F16;
	default:
		return STORE_LOSSY_NONE;
	}
}


/* ------------------------------------------------------------ transforms -- */

/* Byte shuffle of m f32 values: dst[k*m + i] = src[4*i + k]. Written in
 * blocks of 16 with restrict pointers so the compiler vectorizes it (about
 * 5x the speed of the plain loop at -O2). */
static void shuffle4(const uint8_t *restrict src, uint8_t *restrict dst,
		     size_t m)
{
	uint8_t *restrict d0 = dst, *restrict d1 = dst + m,
		*restrict d2 = dst + 2 * m, *restrict d3 = dst + 3 * m;
	size_t i = 0;

	for (; i + 16 <= m; i += 16)
		for (size_t j = i; j < i + 16; j++) {
			d0[j] = src[4 * j];
			d1[j] = src[4 * j + 1];
			d2[j] = src[4 * j + 2];
			d3[j] = src[4 * j + 3];
		}
	for (; i < m; i++) {
		d0[i] = src[4 * i];
		d1[i] = src[4 * i + 1];
		d2[i] = src[4 * i + 2];
		d3[i] = src[4 * i + 3];
	}
}

/* The inverse: dst[4*i + k] = src[k*m + i]. */
static void unshuffle4(const uint8_t *restrict src, uint8_t *restrict dst,
		       size_t m)
{
	const uint8_t *restrict s0 = src, *restrict s1 = src + m,
		      *restrict s2 = src + 2 * m, *restrict s3 = src + 3 * m;
	size_t i = 0;

	for (; i + 16 <= m; i += 16)
		for (size_t j = i; j < i + 16; j++) {
			dst[4 * j] = s0[j];
			dst[4 * j + 1] = s1[j];
			dst[4 * j + 2] = s2[j];
			dst[4 * j + 3] = s3[j];
		}
	for (; i < m; i++) {
		dst[4 * i] = s0[i];
		dst[4 * i + 1] = s1[i];
		dst[4 * i + 2] = s2[i];
		dst[4 * i + 3] = s3[i];
	}
}

/* Decoded bytes of chunk c (src) -> its transformed bytes (dst). */
static void chunk_encode(const chunk *c, const uint8_t *src, uint8_t *dst,
			 int shuffle, int lossy)
{
	size_t m = c->m;

	if (c->r->packed_w == 1 || (c->r->packed_w == 4 && !shuffle)) {
		memcpy(dst, src, m * (size_t)c->r->packed_w);
	} else if (c->r->packed_w == 4) {
		shuffle4(src, dst, m);
	} else {
		for (size_t i = 0; i < m; i++) {
			uint16_t h = narrow(load_u32(src + 4 * i), lossy);

			if (shuffle) {
				dst[i] = (uint8_t)h;
				dst[m + i] = (uint8_t)(h >> 8);
			} else {
				dst[2 * i] = (uint8_t)h;
				dst[2 * i + 1] = (uint8_t)(h >> 8);
			}
		}
	}
}

/* Transformed bytes of chunk c (src) -> its decoded bytes (out). */
static void chunk_decode(const chunk *c, const uint8_t *src, uint8_t *out,
			 int shuffle, int lossy)
{
	size_t m = c->m;

	if (c->r->packed_w == 1 || (c->r->packed_w == 4 && !shuffle)) {
		memcpy(out, src, m * (size_t)c->r->packed_w);
	} else if (c->r->packed_w == 4) {
		unshuffle4(src, out, m);
	} else {
		for (size_t i = 0; i < m; i++) {
			uint16_t h = shuffle ?
				(uint16_t)(src[i] | src[m + i] << 8) :
				(uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
			uint32_t v = widen(h, lossy);

			memcpy(out + 4 * i, &v, 4);
		}
	}
}

/* ---------------------------------------------------------------- frames -- */

/*
 * LZ4 output is one frame, or for a large lossless state two frames back to
 * back (the LZ4 frame format allows concatenation), each covering a run of
 * whole chunks, so that both halves are compressed and decompressed on two
 * threads. Every frame has its own content size and checksum.
 */
#define MAX_FRAMES 16

/* One frame's work: chunks [lo, hi) of the state, transformed bytes len. */
typedef struct frame_job {
	const region *r;       /* the N_REGIONS regions */
	const uint8_t *raw;    /* encode: the decoded state */
	uint8_t *res;          /* decode: the result being filled */
	size_t lo, hi, len;
	int lz4, shuffle, lossy; /* lz4: decode an LZ4 frame, else packed bytes */
	XXH64_state_t *hash;   /* decoded-state hash to extend, or NULL */
	const uint8_t *src;    /* decode: the frame's bytes */
	size_t src_len;
	uint8_t *out;          /* encode: output of capacity cap */
	size_t cap, out_len;
	int rc;
	char msg[160];         /* the failure's detail, for the caller's thread */
} frame_job;

/* Walks chunks with their index; returns 0 when done. */
static int chunk_next_i(const region r[N_REGIONS], int *ri, size_t *e,
			size_t *idx, chunk *c)
{
	if (!chunk_next(r, ri, e, c))
		return 0;
	(*idx)++;
	return 1;
}

static void lz4_prefs(LZ4F_preferences_t *p, size_t len)
{
	memset(p, 0, sizeof(*p));
	/* one chunk per block: autoFlush compresses each update at once */
	p->frameInfo.blockSizeID = LZ4F_max1MB;
	p->frameInfo.blockMode = LZ4F_blockIndependent;
	p->frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
	p->frameInfo.contentSize = len;
	p->autoFlush = 1;
	p->compressionLevel = 0; /* the fast compressor */
}

/* Sets a job's failure, keeping the detail for the caller's thread. */
static void job_fail(frame_job *j, int rc, const char *fmt, const char *arg)
{
	j->rc = rc;
	snprintf(j->msg, sizeof(j->msg), fmt, arg);
}

/* ---------------------------------------------------------------- encode -- */

uint64_t store_codec_hash(const void *buf, size_t len)
{
	return XXH64(buf, len, 0);
}

/* Sizes a job for chunks [lo, hi): transformed bytes and the output
 * capacity LZ4F_compressUpdate() asks for (autoFlush: per chunk). */
static void job_size(frame_job *j)
{
	LZ4F_preferences_t prefs;
	size_t e = 0, idx = 0;
	int ri = 0;
	chunk c;

	lz4_prefs(&prefs, 0);
	j->len = 0;
	j->cap = LZ4F_HEADER_SIZE_MAX;
	while (chunk_next_i(j->r, &ri, &e, &idx, &c))
		if (idx - 1 >= j->lo && idx - 1 < j->hi) {
			j->len += chunk_bytes(&c);
			j->cap += LZ4F_compressBound(chunk_bytes(&c), &prefs);
		}
}

/* Compresses chunks [lo, hi) into one LZ4 frame at j->out; extends j->hash
 * with the decoded state's bytes (widened values when lossy). */
static void *frame_encode(void *arg)
{
	frame_job *j = arg;
	LZ4F_cctx *cctx = NULL;
	LZ4F_preferences_t prefs;
	uint8_t *scratch = malloc(CHUNK_BYTES);
	uint8_t *wide = malloc(2 * CHUNK_BYTES); /* a 16-bit chunk as f32 */
	size_t pos = 0, n = 0, e = 0, idx = 0;
	int ri = 0;
	chunk c;

	j->rc = SSMD_OK;
	if (!scratch || !wide ||
	    LZ4F_isError(LZ4F_createCompressionContext(&cctx, LZ4F_VERSION))) {
		job_fail(j, SSMD_ENOMEM, "%s", "out of memory compressing");
		goto out;
	}
	lz4_prefs(&prefs, j->len);
	n = LZ4F_compressBegin(cctx, j->out, j->cap, &prefs);
	if (LZ4F_isError(n))
		goto lz4_fail;
	pos = n;
	while (chunk_next_i(j->r, &ri, &e, &idx, &c)) {
		size_t len = chunk_bytes(&c);

		if (idx - 1 < j->lo || idx - 1 >= j->hi)
			continue;
		chunk_encode(&c, j->raw + chunk_raw_off(&c), scratch, j->shuffle,
			     j->lossy);
		if (j->hash && c.r->packed_w == 2) {
			/* the state decoding will return: widened values */
			chunk_decode(&c, scratch, wide, j->shuffle, j->lossy);
			XXH64_update(j->hash, wide, c.m * 4);
		} else if (j->hash) {
			XXH64_update(j->hash, j->raw + chunk_raw_off(&c), len);
		}
		n = LZ4F_compressUpdate(cctx, j->out + pos, j->cap - pos, scratch,
					len, NULL);
		if (LZ4F_isError(n))
			goto lz4_fail;
		pos += n;
	}
	n = LZ4F_compressEnd(cctx, j->out + pos, j->cap - pos, NULL);
	if (LZ4F_isError(n))
		goto lz4_fail;
	j->out_len = pos + n;
	goto out;
lz4_fail:
	job_fail(j, SSMD_ENOMEM, "LZ4 compression failed: %s",
		 LZ4F_getErrorName(n));
out:
	LZ4F_freeCompressionContext(cctx);
	free(wide);
	free(scratch);
	return NULL;
}

/* Estimates which transform compresses better from SAMPLE_CHUNKS chunks
 * spread evenly over the state; returns 1 for shuffled. */
static int shuffle_wins(const region r[N_REGIONS], const uint8_t *raw,
			int lossy, size_t n_chunks)
{
	size_t sizes[2] = { 0, 0 }, idx = 0, e = 0, next = 0, taken = 0;
	uint8_t *scratch = malloc(CHUNK_BYTES);
	char *dst = malloc((size_t)LZ4_compressBound((int)CHUNK_BYTES));
	int ri = 0;
	chunk c;

	while (scratch && dst && taken < SAMPLE_CHUNKS &&
	       chunk_next_i(r, &ri, &e, &idx, &c)) {
		if (idx - 1 != next)
			continue;
		for (int s = 0; s < 2; s++) {
			int len = (int)chunk_bytes(&c);

			chunk_encode(&c, raw + chunk_raw_off(&c), scratch, s, lossy);
			sizes[s] += (size_t)LZ4_compress_default(
				(const char *)scratch, dst, len,
				LZ4_compressBound(len));
		}
		taken++;
		next = (taken * 2 + 1) * n_chunks / (2 * SAMPLE_CHUNKS);
	}
	free(dst);
	free(scratch);
	/* without memory for the sample, shuffling is the usual winner */
	return taken ? sizes[1] < sizes[0] : 1;
}

/* Runs jobs[0..n) — jobs[1..] on helper threads — and joins them. A failed
 * thread start runs its job here instead. */
static void jobs_run(frame_job *jobs, int n, void *(*fn)(void *))
{
	pthread_t th[MAX_FRAMES];
	int started[MAX_FRAMES] = { 0 };

	for (int i = 1; i < n; i++)
		started[i] = pthread_create(&th[i], NULL, fn, &jobs[i]) == 0;
	fn(&jobs[0]);
	for (int i = 1; i < n; i++) {
		if (started[i])
			pthread_join(th[i], NULL);
		else
			fn(&jobs[i]);
	}
}

/* The first failed job's code, with its detail moved to this thread. */
static int jobs_rc(const frame_job *jobs, int n)
{
	for (int i = 0; i < n; i++)
		if (jobs[i].rc)
			return ssmd_err_set(jobs[i].rc, "%s", jobs[i].msg);
	return SSMD_OK;
}

int store_codec_encode(const void *raw, size_t raw_len, int lossy, void **out,
		       size_t *out_len, int *codec, uint64_t *raw_hash)
{
	ssm_state_layout lay;
	region r[N_REGIONS];
	frame_job jobs[2];
	XXH64_state_t hstate;
	uint8_t *best = NULL;
	size_t plen, n_chunks = 0, e = 0, idx = 0, total = 0, acc = 0, split;
	int ri = 0, rc, c = STORE_CODEC_RAW, shuffle, n_jobs = 1;
	chunk ch;

	if (lossy != STORE_LOSSY_NONE && lossy != STORE_LOSSY_BF16 &&
	    lossy != STORE_LOSSY_F16)
		return ssmd_err_set(SSMD_EINVAL, "unknown lossy codec %d", lossy);
	rc = ssm_state_layout_of(raw, raw_len, &lay);
	if (rc)
		return rc;
	if (raw_len > CODEC_RAW_MAX)
		return ssmd_err_set(SSMD_ERANGE, "state of %zu bytes is too large",
				    raw_len);
	plen = regions_of(&lay, lossy, r);
	/* split: the first chunk at or past half the bytes */
	split = 0;
	while (chunk_next_i(r, &ri, &e, &idx, &ch)) {
		if (acc < plen / 2)
			split = idx;
		acc += chunk_bytes(&ch);
		n_chunks++;
	}
	memset(jobs, 0, sizeof(jobs));
	for (int i = 0; i < 2; i++) {
		jobs[i].r = r;
		jobs[i].raw = raw;
		jobs[i].lossy = lossy;
		jobs[i].lo = 0;
		jobs[i].hi = n_chunks;
	}
	XXH64_reset(&hstate, 0);

	if (plen <= EXACT_TRIAL_BYTES) {
		/* small: both transforms in full, keep the smaller */
		jobs[0].shuffle = 0;
		jobs[0].hash = &hstate;
		jobs[1].shuffle = 1;
		for (int i = 0; i < 2; i++) {
			job_size(&jobs[i]);
			jobs[i].out = malloc(jobs[i].cap);
			if (!jobs[i].out) {
				rc = SSMD_ENOMEM;
				goto out;
			}
			frame_encode(&jobs[i]);
		}
		rc = jobs_rc(jobs, 2);
		if (rc)
			goto out;
		if (jobs[1].out_len < jobs[0].out_len) {
			free(jobs[0].out);
			jobs[0] = jobs[1];
			jobs[1].out = NULL;
		}
		total = jobs[0].out_len;
	} else {
		shuffle = shuffle_wins(r, raw, lossy, n_chunks);
		jobs[0].shuffle = jobs[1].shuffle = shuffle;
		if (lossy) {
			/* the widened values must be hashed in order: one frame */
			jobs[0].hash = &hstate;
		} else {
			jobs[0].hi = jobs[1].lo = split;
			n_jobs = 2;
		}
		for (int i = 0; i < n_jobs; i++) {
			job_size(&jobs[i]);
			jobs[i].out = malloc(jobs[i].cap);
			if (!jobs[i].out) {
				rc = SSMD_ENOMEM;
				goto out;
			}
		}
		jobs_run(jobs, n_jobs, frame_encode);
		rc = jobs_rc(jobs, n_jobs);
		if (rc)
			goto out;
		if (!lossy)
			XXH64_update(&hstate, raw, raw_len);
		for (int i = 0; i < n_jobs; i++)
			total += jobs[i].out_len;
	}

	if (total < plen) {
		/* LZ4 pays: the frames back to back in the first buffer */
		best = realloc(jobs[0].out, jobs[0].cap > total ? jobs[0].cap :
			       total);
		if (!best) {
			rc = SSMD_ENOMEM;
			goto out;
		}
		jobs[0].out = NULL;
		if (n_jobs == 2)
			memcpy(best + (total - jobs[1].out_len), jobs[1].out,
			       jobs[1].out_len);
		if (total < jobs[0].cap / 2) { /* give back what a good ratio left */
			uint8_t *shrunk = realloc(best, total);

			best = shrunk ? shrunk : best;
		}
		c = STORE_CODEC_LZ4 | (jobs[0].shuffle ? STORE_CODEC_SHUFFLE : 0);
	} else {
		/* not smaller than the packed bytes: store those */
		best = malloc(plen);
		if (!best) {
			rc = SSMD_ENOMEM;
			goto out;
		}
		ri = 0;
		e = 0;
		total = 0;
		while (chunk_next(r, &ri, &e, &ch)) {
			chunk_encode(&ch, (const uint8_t *)raw + chunk_raw_off(&ch),
				     best + total, 0, lossy);
			total += chunk_bytes(&ch);
		}
	}
	if (lossy == STORE_LOSSY_BF16)
		c |= STORE_CODEC_BF16;
	else if (lossy == STORE_LOSSY_F16)
		c |= STORE_CODEC_F16;
	*out = best;
	*out_len = total;
	*codec = c;
	*raw_hash = XXH64_digest(&hstate);
	rc = SSMD_OK;
out:
	free(jobs[1].out);
	free(jobs[0].out);
	return rc;
}

/* ---------------------------------------------------------------- decode -- */

/* Decodes one frame (or, when !lz4, the packed bytes) of chunks [lo, hi)
 * into j->res through one chunk of scratch, extending j->hash if set. */
static void *frame_decode(void *arg)
{
	frame_job *j = arg;
	LZ4F_dctx *dctx = NULL;
	int lz4 = j->lz4;
	uint8_t *scratch = lz4 ? malloc(CHUNK_BYTES) : NULL;
	size_t in = 0, ret = 1, e = 0, idx = 0;
	int ri = 0;
	chunk c;

	j->rc = SSMD_OK;
	if (lz4 && (!scratch || LZ4F_isError(LZ4F_createDecompressionContext(
					 &dctx, LZ4F_VERSION)))) {
		job_fail(j, SSMD_ENOMEM, "%s", "out of memory decompressing");
		goto out;
	}
	while (chunk_next_i(j->r, &ri, &e, &idx, &c)) {
		size_t len = chunk_bytes(&c), got = 0;
		uint8_t *dst = j->res + chunk_raw_off(&c);

		if (idx - 1 < j->lo || idx - 1 >= j->hi)
			continue;
		if (!lz4) {
			if (j->src_len - in < len)
				goto short_input;
			chunk_decode(&c, j->src + in, dst, j->shuffle, j->lossy);
			in += len;
		} else {
			while (got < len) {
				size_t ssz = j->src_len - in, dsz = len - got;

				if (!ret)
					goto short_input; /* frame ended early */
				ret = LZ4F_decompress(dctx, scratch + got, &dsz,
						      j->src + in, &ssz, NULL);
				if (LZ4F_isError(ret))
					goto lz4_fail;
				in += ssz;
				got += dsz;
				if (!ssz && !dsz && got < len)
					goto short_input;
			}
			chunk_decode(&c, scratch, dst, j->shuffle, j->lossy);
		}
		/* hashed while the chunk is still in cache */
		if (j->hash)
			XXH64_update(j->hash, dst, c.m * (size_t)c.r->raw_w);
	}
	/* An LZ4 frame must end exactly here: end mark and checksum. */
	while (lz4 && ret && in < j->src_len) {
		size_t ssz = j->src_len - in, dsz = 0;

		ret = LZ4F_decompress(dctx, scratch, &dsz, j->src + in, &ssz, NULL);
		if (LZ4F_isError(ret))
			goto lz4_fail;
		if (!ssz)
			break;
		in += ssz;
	}
	if ((lz4 && ret) || in != j->src_len)
		job_fail(j, SSMD_ECORRUPT, "payload: %s", in != j->src_len ?
			 "longer than the state it holds" :
			 "LZ4 frame does not end");
	goto out;
lz4_fail:
	job_fail(j, SSMD_ECORRUPT, "payload: LZ4: %s", LZ4F_getErrorName(ret));
	goto out;
short_input:
	job_fail(j, SSMD_ECORRUPT, "payload: %s",
		 "shorter than the state its header describes");
out:
	LZ4F_freeDecompressionContext(dctx);
	free(scratch);
	return NULL;
}

/* Splits stored bytes into LZ4 frames by walking their block headers
 * (bounds-checked; LZ4F validates everything again while decoding).
 * off[i], len[i], content[i] per frame; returns the count, 0 if malformed. */
static int frames_find(const uint8_t *p, size_t n, size_t off[MAX_FRAMES],
		       size_t len[MAX_FRAMES], uint64_t content[MAX_FRAMES])
{
	size_t pos = 0;
	int cnt = 0;

	while (pos < n) {
		size_t start = pos, h;
		uint8_t flg;

		if (cnt == MAX_FRAMES || n - pos < 7)
			return 0;
		h = LZ4F_headerSize(p + pos, n - pos);
		flg = p[pos + 4];
		/* every frame this codec writes carries its content size */
		if (LZ4F_isError(h) || h > n - pos || !(flg & 0x08))
			return 0;
		content[cnt] = 0;
		for (int i = 7; i >= 0; i--)
			content[cnt] = content[cnt] << 8 | p[pos + 6 + i];
		pos += h;
		for (;;) {
			uint32_t b;

			if (n - pos < 4)
				return 0;
			b = (uint32_t)p[pos] | (uint32_t)p[pos + 1] << 8 |
			    (uint32_t)p[pos + 2] << 16 | (uint32_t)p[pos + 3] << 24;
			pos += 4;
			if (b == 0)
				break; /* end mark */
			b &= 0x7fffffffu;
			if (flg & 0x10)
				b += 4; /* block checksum */
			if (n - pos < b)
				return 0;
			pos += b;
		}
		if (flg & 0x04) { /* content checksum */
			if (n - pos < 4)
				return 0;
			pos += 4;
		}
		off[cnt] = start;
		len[cnt] = pos - start;
		cnt++;
	}
	return cnt;
}

/* Copies the 64-byte state header at the start of the stored bytes into
 * hdr; with LZ4 that is the first frame's first block, decoded on its own. */
static int header_peek(const uint8_t *stored, size_t stored_len, int lz4,
		       uint8_t *hdr)
{
	LZ4F_dctx *d = NULL;
	size_t ssz = stored_len, dsz = SSM_STATE_HEADER_SIZE, ret;

	if (!lz4) {
		if (stored_len < SSM_STATE_HEADER_SIZE)
			return ssmd_err_set(SSMD_ECORRUPT, "payload: truncated");
		memcpy(hdr, stored, SSM_STATE_HEADER_SIZE);
		return SSMD_OK;
	}
	if (LZ4F_isError(LZ4F_createDecompressionContext(&d, LZ4F_VERSION)))
		return ssmd_err_set(SSMD_ENOMEM, "LZ4 decompression context");
	ret = LZ4F_decompress(d, hdr, &dsz, stored, &ssz, NULL);
	LZ4F_freeDecompressionContext(d);
	if (LZ4F_isError(ret))
		return ssmd_err_set(SSMD_ECORRUPT, "payload: LZ4: %s",
				    LZ4F_getErrorName(ret));
	if (dsz != SSM_STATE_HEADER_SIZE)
		return ssmd_err_set(SSMD_ECORRUPT, "payload: truncated");
	return SSMD_OK;
}

int store_codec_decode(const void *stored, size_t stored_len, int codec,
		       size_t raw_len, uint64_t raw_hash, void **out)
{
	const int known = STORE_CODEC_LZ4 | STORE_CODEC_SHUFFLE |
			  STORE_CODEC_LOSSY_MASK;
	int lossy = lossy_of_codec(codec);
	int shuffle = (codec & STORE_CODEC_SHUFFLE) != 0;
	int lz4 = (codec & STORE_CODEC_LZ4) != 0;
	size_t off[MAX_FRAMES], len[MAX_FRAMES], e = 0, idx = 0, acc = 0;
	uint64_t content[MAX_FRAMES];
	frame_job jobs[MAX_FRAMES];
	XXH64_state_t hstate;
	uint8_t *res = NULL;
	ssm_state_layout lay;
	region r[N_REGIONS];
	int rc, n = 1, f = 0, ri = 0;
	chunk ch;

	if ((codec & ~known) || (codec & STORE_CODEC_LOSSY_MASK) ==
	    STORE_CODEC_LOSSY_MASK || (shuffle && !lz4))
		return ssmd_err_set(SSMD_ECORRUPT, "payload: unknown codec %d",
				    codec);
	if (raw_len < SSM_STATE_HEADER_SIZE || raw_len > CODEC_RAW_MAX)
		return ssmd_err_set(SSMD_ECORRUPT,
				    "payload: recorded size %zu out of range",
				    raw_len);
	/* The recorded size bounds every allocation; the frames' own content
	 * sizes are only checked against it. */
	res = malloc(raw_len);
	if (!res)
		return SSMD_ENOMEM;
	/* The header is the first chunk, never shuffled or rounded; it alone
	 * (with the recorded size) fixes every other region. */
	rc = header_peek(stored, stored_len, lz4, res);
	if (rc == SSMD_OK && ssm_state_layout_of(res, raw_len, &lay) != SSMD_OK)
		rc = ssmd_err_set(SSMD_ECORRUPT,
				  "payload: state header does not match its "
				  "recorded size %zu", raw_len);
	if (rc)
		goto out;
	regions_of(&lay, lossy, r);

	memset(jobs, 0, sizeof(jobs));
	off[0] = 0;
	len[0] = stored_len;
	if (lz4) {
		n = frames_find(stored, stored_len, off, len, content);
		if (!n) {
			rc = ssmd_err_set(SSMD_ECORRUPT,
					  "payload: not a sequence of LZ4 frames");
			goto out;
		}
	}
	/* Each frame covers whole chunks: map content sizes to chunk runs. */
	jobs[0].lo = 0;
	while (chunk_next_i(r, &ri, &e, &idx, &ch)) {
		acc += chunk_bytes(&ch);
		if (lz4 && f < n && acc == content[f]) {
			jobs[f].hi = idx;
			if (++f < n)
				jobs[f].lo = idx;
			acc = 0;
		}
	}
	if (!lz4) {
		jobs[0].hi = idx;
	} else if (f != n || acc != 0) {
		rc = ssmd_err_set(SSMD_ECORRUPT, "payload: LZ4 frames do not "
				  "match the state's chunks");
		goto out;
	}
	XXH64_reset(&hstate, 0);
	for (int i = 0; i < n; i++) {
		jobs[i].r = r;
		jobs[i].res = res;
		jobs[i].shuffle = shuffle;
		jobs[i].lossy = lossy;
		jobs[i].src = (const uint8_t *)stored + off[i];
		jobs[i].src_len = len[i];
		jobs[i].lz4 = lz4;
		/* one frame: hash as it decodes; several: hash at the end */
		jobs[i].hash = n == 1 ? &hstate : NULL;
	}
	jobs_run(jobs, n, frame_decode);
	rc = jobs_rc(jobs, n);
	if (rc)
		goto out;
	if (n > 1)
		XXH64_update(&hstate, res, raw_len);
	if (XXH64_digest(&hstate) != raw_hash) {
		rc = ssmd_err_set(SSMD_ECORRUPT,
				  "payload: xxHash64 of the decoded state does "
				  "not match the recorded one");
		goto out;
	}
	*out = res;
	res = NULL;
out:
	free(res);
	return rc;
}

const char *store_codec_name(int codec)
{
	static const char *const names[3][4] = {
		{ "raw", "lz4", NULL, "shuffle+lz4" },
		{ "bf16+raw", "bf16+lz4", NULL, "bf16+shuffle+lz4" },
		{ "f16+raw", "f16+lz4", NULL, "f16+shuffle+lz4" },
	};
	int lossy = lossy_of_codec(codec);

	if (codec & ~(STORE_CODEC_LZ4 | STORE_CODEC_SHUFFLE |
		      STORE_CODEC_LOSSY_MASK) ||
	    (codec & STORE_CODEC_LOSSY_MASK) == STORE_CODEC_LOSSY_MASK ||
	    !names[lossy][codec & 3])
		return "unknown";
	return names[lossy][codec & 3];
}
