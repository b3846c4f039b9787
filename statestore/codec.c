#include "codec.h"

#include <lz4frame.h>
#include <pthread.h>
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
 * and dt_sum (always f32). "Packed" bytes are the regions back to back at
 * their stored width; "shuffled" bytes are the packed bytes with each
 * region's element bytes grouped: for a region of n elements of w bytes,
 * shuffled[k*n + i] = packed[i*w + k].
 */
enum { N_REGIONS = 5 };

typedef struct region {
	size_t raw_off;    /* offset in the decoded (f32) state */
	size_t packed_off; /* offset in the packed bytes */
	size_t n;          /* elements (bytes for the header) */
	int raw_w;         /* bytes per element in the decoded state: 1 or 4 */
	int packed_w;      /* bytes per element when packed: 1, 2 or 4 */
} region;

/* Fills the regions of a state of layout lay for a lossy kind; returns the
 * packed length. */
static size_t regions_of(const ssm_state_layout *lay, int lossy,
			 region r[N_REGIONS])
{
	int w16 = lossy ? 2 : 4;
	size_t off = 0;

	r[0] = (region){ 0, 0, SSM_STATE_HEADER_SIZE, 1, 1 };
	r[1] = (region){ lay->ssm_off, 0, lay->ssm_len / 4, 4, w16 };
	r[2] = (region){ lay->conv_off, 0, lay->conv_len / 4, 4, w16 };
	r[3] = (region){ lay->hidden_off, 0, lay->hidden_len / 4, 4, 4 };
	r[4] = (region){ lay->dt_sum_off, 0, lay->dt_sum_len / 4, 4, 4 };
	for (int i = 0; i < N_REGIONS; i++) {
		r[i].packed_off = off;
		off += r[i].n * (size_t)r[i].packed_w;
	}
	return off;
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

/* raw (decoded layout) -> packed or shuffled bytes of one region. */
static void region_encode(const region *r, const uint8_t *raw, uint8_t *dst,
			  int shuffle, int lossy)
{
	const uint8_t *src = raw + r->raw_off;
	uint8_t *out = dst + r->packed_off;
	size_t n = r->n;

	if (r->packed_w == 1 || (r->packed_w == 4 && !shuffle)) {
		memcpy(out, src, n * (size_t)r->packed_w);
	} else if (r->packed_w == 4) {
		for (size_t i = 0; i < n; i++) {
			out[i] = src[4 * i];
			out[n + i] = src[4 * i + 1];
			out[2 * n + i] = src[4 * i + 2];
			out[3 * n + i] = src[4 * i + 3];
		}
	} else {
		for (size_t i = 0; i < n; i++) {
			uint16_t h = narrow(load_u32(src + 4 * i), lossy);

			if (shuffle) {
				out[i] = (uint8_t)h;
				out[n + i] = (uint8_t)(h >> 8);
			} else {
				out[2 * i] = (uint8_t)h;
				out[2 * i + 1] = (uint8_t)(h >> 8);
			}
		}
	}
}

/* packed or shuffled bytes of one region -> decoded layout. */
static void region_decode(const region *r, const uint8_t *src_all,
			  uint8_t *raw, int shuffle, int lossy)
{
	const uint8_t *src = src_all + r->packed_off;
	uint8_t *out = raw + r->raw_off;
	size_t n = r->n;

	if (r->packed_w == 1 || (r->packed_w == 4 && !shuffle)) {
		memcpy(out, src, n * (size_t)r->packed_w);
	} else if (r->packed_w == 4) {
		for (size_t i = 0; i < n; i++) {
			out[4 * i] = src[i];
			out[4 * i + 1] = src[n + i];
			out[4 * i + 2] = src[2 * n + i];
			out[4 * i + 3] = src[3 * n + i];
		}
	} else {
		for (size_t i = 0; i < n; i++) {
			uint16_t h = shuffle ?
				(uint16_t)(src[i] | src[n + i] << 8) :
				(uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
			uint32_t v = widen(h, lossy);

			memcpy(out + 4 * i, &v, 4);
		}
	}
}

/* ---------------------------------------------------------------- LZ4 -- */

typedef struct lz4_job {
	const uint8_t *src;
	size_t len;
	uint8_t *dst;  /* LZ4F_compressFrameBound() bytes */
	size_t cap;
	size_t out;    /* compressed length, or 0 on failure */
	const char *err;
} lz4_job;

static void lz4_prefs(LZ4F_preferences_t *p, size_t len)
{
	memset(p, 0, sizeof(*p));
	p->frameInfo.blockSizeID = LZ4F_max4MB;
	p->frameInfo.blockMode = LZ4F_blockIndependent;
	p->frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
	p->frameInfo.contentSize = len;
	p->compressionLevel = 0; /* the fast compressor */
}

static void *lz4_run(void *arg)
{
	lz4_job *j = arg;
	LZ4F_preferences_t prefs;
	size_t rc;

	lz4_prefs(&prefs, j->len);
	rc = LZ4F_compressFrame(j->dst, j->cap, j->src, j->len, &prefs);
	if (LZ4F_isError(rc)) {
		j->err = LZ4F_getErrorName(rc);
		j->out = 0;
	} else {
		j->out = rc;
	}
	return NULL;
}

static int lz4_alloc(lz4_job *j, const uint8_t *src, size_t len)
{
	LZ4F_preferences_t prefs;

	lz4_prefs(&prefs, len);
	j->src = src;
	j->len = len;
	j->cap = LZ4F_compressFrameBound(len, &prefs);
	j->dst = malloc(j->cap);
	j->out = 0;
	j->err = NULL;
	return j->dst ? SSMD_OK : SSMD_ENOMEM;
}

/* ------------------------------------------------------------ encoding -- */

uint64_t store_codec_hash(const void *buf, size_t len)
{
	return XXH64(buf, len, 0);
}

/* Hash of the state decoding will return for a lossy encoding, computed by
 * widening the packed 16-bit regions in chunks. */
static uint64_t lossy_hash(const region r[N_REGIONS], const uint8_t *packed,
			   int lossy)
{
	XXH64_state_t st;
	uint8_t chunk[4096 * 4];

	XXH64_reset(&st, 0);
	for (int k = 0; k < N_REGIONS; k++) {
		const uint8_t *src = packed + r[k].packed_off;

		if (r[k].packed_w != 2) {
			XXH64_update(&st, src, r[k].n * (size_t)r[k].packed_w);
			continue;
		}
		for (size_t i = 0; i < r[k].n; i += 4096) {
			size_t m = r[k].n - i < 4096 ? r[k].n - i : 4096;

			for (size_t j = 0; j < m; j++) {
				uint32_t v = widen((uint16_t)(src[2 * (i + j)] |
					src[2 * (i + j) + 1] << 8), lossy);

				memcpy(chunk + 4 * j, &v, 4);
			}
			XXH64_update(&st, chunk, 4 * m);
		}
	}
	return XXH64_digest(&st);
}

int store_codec_encode(const void *raw, size_t raw_len, int lossy, void **out,
		       size_t *out_len, int *codec, uint64_t *raw_hash)
{
	ssm_state_layout lay;
	region r[N_REGIONS];
	uint8_t *packed = NULL, *shuffled = NULL, *best;
	const uint8_t *src = raw;
	lz4_job plain = { 0 }, shuf = { 0 };
	pthread_t th;
	int threaded = 0, rc, c;
	size_t plen, best_len;
	uint64_t hash;

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

	/* Packed bytes: the raw state itself unless lossy. */
	if (lossy) {
		packed = malloc(plen);
		if (!packed) {
			rc = SSMD_ENOMEM;
			goto out;
		}
		for (int k = 0; k < N_REGIONS; k++)
			region_encode(&r[k], raw, packed, 0, lossy);
		hash = lossy_hash(r, packed, lossy);
		src = packed;
	} else {
		hash = XXH64(raw, raw_len, 0);
	}

	/* Compress the unshuffled bytes on a helper thread while this one
	 * shuffles and compresses the shuffled bytes: the two trials cost
	 * about one on a 2-core machine. */
	rc = lz4_alloc(&plain, src, plen);
	if (rc)
		goto out;
	if (pthread_create(&th, NULL, lz4_run, &plain) == 0)
		threaded = 1;
	else
		lz4_run(&plain);
	shuffled = malloc(plen);
	if (!shuffled) {
		rc = SSMD_ENOMEM;
		goto out;
	}
	for (int k = 0; k < N_REGIONS; k++)
		region_encode(&r[k], raw, shuffled, 1, lossy);
	rc = lz4_alloc(&shuf, shuffled, plen);
	if (rc)
		goto out;
	lz4_run(&shuf);
	if (threaded) {
		pthread_join(th, NULL);
		threaded = 0;
	}
	if (!plain.out || !shuf.out) {
		rc = ssmd_err_set(SSMD_ENOMEM, "LZ4 compression failed: %s",
				  plain.err ? plain.err : shuf.err);
		goto out;
	}

	/* Keep the smallest; ties go to the cheaper decode. */
	best = NULL;
	best_len = plen;
	c = STORE_CODEC_RAW;
	if (plain.out < best_len) {
		best_len = plain.out;
		c = STORE_CODEC_LZ4;
	}
	if (shuf.out < best_len) {
		best_len = shuf.out;
		c = STORE_CODEC_LZ4 | STORE_CODEC_SHUFFLE;
	}
	if (c == STORE_CODEC_LZ4) {
		best = realloc(plain.dst, best_len);
		best = best ? best : plain.dst;
		plain.dst = NULL;
	} else if (c != STORE_CODEC_RAW) {
		best = realloc(shuf.dst, best_len);
		best = best ? best : shuf.dst;
		shuf.dst = NULL;
	} else if (lossy) {
		best = packed;
		packed = NULL;
	} else {
		best = malloc(plen);
		if (!best) {
			rc = SSMD_ENOMEM;
			goto out;
		}
		memcpy(best, raw, plen);
	}
	if (lossy == STORE_LOSSY_BF16)
		c |= STORE_CODEC_BF16;
	else if (lossy == STORE_LOSSY_F16)
		c |= STORE_CODEC_F16;
	*out = best;
	*out_len = best_len;
	*codec = c;
	*raw_hash = hash;
	rc = SSMD_OK;
out:
	if (threaded)
		pthread_join(th, NULL);
	free(shuf.dst);
	free(plain.dst);
	free(shuffled);
	free(packed);
	return rc;
}

/* ------------------------------------------------------------ decoding -- */

/* Decompresses one LZ4 frame of exactly src_len bytes into dst of capacity
 * cap; *produced gets the decoded length. */
static int lz4_decode(const uint8_t *src, size_t src_len, uint8_t *dst,
		      size_t cap, size_t *produced)
{
	LZ4F_dctx *dctx = NULL;
	size_t in = 0, outp = 0, ret = 1;
	int rc = SSMD_OK;

	if (LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION)))
		return ssmd_err_set(SSMD_ENOMEM, "LZ4 decompression context");
	while (in < src_len) {
		size_t ssz = src_len - in, dsz = cap - outp;

		ret = LZ4F_decompress(dctx, dst + outp, &dsz, src + in, &ssz,
				      NULL);
		if (LZ4F_isError(ret)) {
			rc = ssmd_err_set(SSMD_ECORRUPT, "payload: LZ4: %s",
					  LZ4F_getErrorName(ret));
			goto out;
		}
		in += ssz;
		outp += dsz;
		if (ret == 0)
			break; /* frame complete */
		if (!ssz && !dsz) {
			rc = ssmd_err_set(SSMD_ECORRUPT,
					  "payload: decodes to more than %zu bytes",
					  cap);
			goto out;
		}
	}
	if (ret != 0 || in != src_len) {
		rc = ssmd_err_set(SSMD_ECORRUPT, "payload: %s",
				  ret ? "truncated LZ4 frame" :
					"trailing bytes after the LZ4 frame");
		goto out;
	}
	*produced = outp;
out:
	LZ4F_freeDecompressionContext(dctx);
	return rc;
}

int store_codec_decode(const void *stored, size_t stored_len, int codec,
		       size_t raw_len, uint64_t raw_hash, void **out)
{
	const int known = STORE_CODEC_LZ4 | STORE_CODEC_SHUFFLE |
			  STORE_CODEC_LOSSY_MASK;
	int lossy = lossy_of_codec(codec);
	int shuffle = (codec & STORE_CODEC_SHUFFLE) != 0;
	uint8_t *buf = NULL, *res = NULL;
	const uint8_t *packed;
	ssm_state_layout lay;
	region r[N_REGIONS];
	size_t plen, got = 0;
	int rc;

	if ((codec & ~known) || (codec & STORE_CODEC_LOSSY_MASK) ==
	    STORE_CODEC_LOSSY_MASK || (shuffle && !(codec & STORE_CODEC_LZ4)))
		return ssmd_err_set(SSMD_ECORRUPT, "payload: unknown codec %d",
				    codec);
	if (raw_len < SSM_STATE_HEADER_SIZE || raw_len > CODEC_RAW_MAX)
		return ssmd_err_set(SSMD_ECORRUPT,
				    "payload: recorded size %zu out of range",
				    raw_len);

	/* Packed bytes are never longer than the decoded state. */
	if (codec & STORE_CODEC_LZ4) {
		buf = malloc(raw_len);
		if (!buf)
			return SSMD_ENOMEM;
		rc = lz4_decode(stored, stored_len, buf, raw_len, &got);
		if (rc)
			goto out;
		packed = buf;
	} else {
		packed = stored;
		got = stored_len;
	}
	/* The header is the first region and never shuffled or rounded; it
	 * alone (with the recorded size) fixes every other region. */
	if (got < SSM_STATE_HEADER_SIZE ||
	    ssm_state_layout_of(packed, raw_len, &lay) != SSMD_OK) {
		rc = ssmd_err_set(SSMD_ECORRUPT,
				  "payload: state header does not match its "
				  "recorded size %zu", raw_len);
		goto out;
	}
	plen = regions_of(&lay, lossy, r);
	if (got != plen) {
		rc = ssmd_err_set(SSMD_ECORRUPT,
				  "payload: %zu bytes where %zu were expected",
				  got, plen);
		goto out;
	}
	if (!shuffle && !lossy && buf) {
		res = buf; /* LZ4 decoded straight into the result */
		buf = NULL;
	} else {
		res = malloc(raw_len);
		if (!res) {
			rc = SSMD_ENOMEM;
			goto out;
		}
		for (int k = 0; k < N_REGIONS; k++)
			region_decode(&r[k], packed, res, shuffle, lossy);
	}
	if (XXH64(res, raw_len, 0) != raw_hash) {
		rc = ssmd_err_set(SSMD_ECORRUPT,
				  "payload: xxHash64 of the decoded state does "
				  "not match the recorded one");
		goto out;
	}
	*out = res;
	res = NULL;
	rc = SSMD_OK;
out:
	free(res);
	free(buf);
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
