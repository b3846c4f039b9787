/*
 * test_codec.c — the state library's payload codec: bit-exact lossless round
 * trips of random and adversarial f32 values, lossy bf16/f16 rounding checked
 * against independent references, and decoding of damaged input.
 */
#include <lz4frame.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "check.h"
#include "testutil.h"
#include "codec.h"
#include "ssm_state.h"
#include "store.h"

/* A small state shape: 2 layers, d_inner 64, d_state 16, d_conv 4,
 * d_model 32 — every region non-empty, ~10 KB. */
#define NL 2
#define DI 64
#define DS 16
#define DC 4
#define DM 32

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float bits_f(uint32_t u)
{
	float f;

	memcpy(&f, &u, 4);
	return f;
}

static uint32_t f_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	return u;
}

/* floats in a state of the shape above: ssm + conv + hidden + dt_sum */
#define N_FLOATS ((size_t)NL * DI * DS + (size_t)NL * DI * (DC - 1) + DM + \
		  (size_t)NL * DI)

typedef enum fill { FILL_RANDOM_BITS, FILL_SPECIALS, FILL_ZERO, FILL_SMOOTH,
		    FILL_NORMAL } fill;

/* Encodes a state filled as asked into *buf (free()) of *len bytes. */
static void make_state(fill how, void **buf, size_t *len)
{
	static const uint32_t specials[] = {
		0x00000000u, 0x80000000u,             /* +0, -0 */
		0x00000001u, 0x807fffffu, 0x00400000u, /* denormals */
		0x7f800000u, 0xff800000u,             /* +-inf */
		0x7f800001u, 0xffc00001u, 0x7fbfffffu, 0x7fc12345u, /* NaN payloads */
		0x7f7fffffu, 0xff7fffffu,             /* +-FLT_MAX */
		0x00800000u, 0x3f800000u, 0xbf800001u,
	};
	ssm_state *st;
	float *f;
	size_t n;

	if (ssm_state_alloc(SSM_ARCH_MAMBA1, NL, DI, DS, DC, DM, &st))
		abort();
	st->n_tokens = test_splitmix64(&rng) >> 20;
	for (int i = 0; i < SSM_FINGERPRINT_LEN; i++)
		st->fingerprint[i] = (uint8_t)test_splitmix64(&rng);
	f = st->ssm; /* one block holds all four arrays */
	n = N_FLOATS;
	for (size_t i = 0; i < n; i++) {
		switch (how) {
		case FILL_RANDOM_BITS:
			f[i] = bits_f((uint32_t)test_splitmix64(&rng));
			break;
		case FILL_SPECIALS:
			f[i] = bits_f(specials[i % (sizeof(specials) / 4)] ^
				      (uint32_t)(i / 16 % 2)); /* vary low bits */
			break;
		case FILL_ZERO:
			f[i] = 0.0f;
			break;
		case FILL_SMOOTH:
			f[i] = (float)sin((double)i * 0.01) * 0.5f;
			break;
		case FILL_NORMAL: {
			/* sign, exponent in [-20, 20], random mantissa */
			uint32_t m = (uint32_t)test_splitmix64(&rng) & 0x7fffffu;
			uint32_t e = (uint32_t)(127 - 20 + test_splitmix64(&rng) % 41);

			f[i] = bits_f((uint32_t)(test_splitmix64(&rng) & 1) << 31 | e << 23 | m);
			break;
		}
		}
	}
	*len = ssm_state_encoded_size(st);
	*buf = malloc(*len);
	if (!*buf || ssm_state_encode(st, *buf, *len))
		abort();
	ssm_state_free(st);
}

static const char *fill_name(fill how)
{
	static const char *const names[] = { "random bits", "specials", "zero",
					     "smooth", "normal" };
	return names[how];
}

/* Every lossless fill through the encoder and back, bit for bit. */
static void test_lossless(void)
{
	for (fill how = FILL_RANDOM_BITS; how <= FILL_NORMAL; how++) {
		void *raw, *enc = NULL, *dec = NULL;
		size_t len, elen = 0;
		uint64_t hash = 0;
		int codec = -1;

		make_state(how, &raw, &len);
		CHECK_RC(store_codec_encode(raw, len, STORE_LOSSY_NONE, &enc,
					    &elen, &codec, &hash), SSMD_OK);
		CHECK(hash == XXH64(raw, len, 0), "%s: hash is xxHash64 of raw",
		      fill_name(how));
		CHECK(!(codec & STORE_CODEC_LOSSY_MASK), "%s: lossless codec",
		      fill_name(how));
		CHECK(elen <= len, "%s: never stored larger (%zu > %zu)",
		      fill_name(how), elen, len);
		CHECK_RC(store_codec_decode(enc, elen, codec, len, hash, &dec),
			 SSMD_OK);
		CHECK(dec && memcmp(dec, raw, len) == 0,
		      "%s (%s): bit-exact round trip", fill_name(how),
		      store_codec_name(codec));
		if (how == FILL_ZERO)
			CHECK(elen < len / 50 && (codec & STORE_CODEC_LZ4),
			      "zeros compress (%zu of %zu bytes)", elen, len);
		if (how == FILL_RANDOM_BITS)
			CHECK(codec == STORE_CODEC_RAW,
			      "random bits are stored raw, got %s",
			      store_codec_name(codec));
		free(dec);
		free(enc);
		free(raw);
	}
}

/* Shuffling must be kept when it helps: smooth f32 data whose sign and
 * exponent bytes repeat compresses better shuffled. */
static void test_shuffle_chosen(void)
{
	void *raw, *enc = NULL;
	size_t len, elen = 0;
	uint64_t hash;
	int codec = -1;

	make_state(FILL_SMOOTH, &raw, &len);
	CHECK_RC(store_codec_encode(raw, len, STORE_LOSSY_NONE, &enc, &elen,
				    &codec, &hash), SSMD_OK);
	CHECK(codec == (STORE_CODEC_LZ4 | STORE_CODEC_SHUFFLE),
	      "smooth data: shuffle+lz4 chosen, got %s", store_codec_name(codec));
	free(enc);
	free(raw);
}

/* Reference bf16 rounding check: r must be a bf16 value (low 16 bits zero)
 * and no other bf16 value may be nearer to x (ties to the even one). */
static int bf16_nearest(uint32_t x, uint32_t r)
{
	double dx = bits_f(x), dr = bits_f(r);
	double up = bits_f(r + 0x10000u), down = bits_f(r - 0x10000u);

	if (r & 0xffffu)
		return 0;
	if (fabs(dx - up) < fabs(dx - dr) || fabs(dx - down) < fabs(dx - dr))
		return 0;
	if ((fabs(dx - up) == fabs(dx - dr) || fabs(dx - down) == fabs(dx - dr))
	    && (r & 0x10000u))
		return 0; /* a tie must go to the even neighbour */
	return 1;
}

/* Lossy codecs: ssm and conv rounded as documented, everything else exact. */
static void test_lossy(int lossy)
{
	const char *name = lossy == STORE_LOSSY_BF16 ? "bf16" : "f16";
	/* relative error of round-to-nearest with 8 (bf16) or 11 (f16)
	 * significant bits: half an ulp = 2^-8 / 2^-11 of the value */
	const double tol = lossy == STORE_LOSSY_BF16 ? ldexp(1, -8) : ldexp(1, -11);
	ssm_state_layout lay;
	void *raw, *enc = NULL, *dec = NULL;
	size_t len, elen = 0, bad_near = 0, bad_rel = 0, n_round;
	uint64_t hash = 0;
	int codec = -1;

	make_state(FILL_NORMAL, &raw, &len);
	if (lossy == STORE_LOSSY_F16) {
		/* keep ssm+conv inside the f16 normal range [2^-14, 65504] */
		float *f = (float *)((uint8_t *)raw + SSM_STATE_HEADER_SIZE);

		for (size_t i = 0; i < (size_t)NL * DI * (DS + DC - 1); i++)
			f[i] = bits_f((f_bits(f[i]) & 0x807fffffu) |
				      (uint32_t)(127 - 14 + test_splitmix64(&rng) % 30) << 23);
	}
	CHECK_RC(ssm_state_layout_of(raw, len, &lay), SSMD_OK);
	CHECK_RC(store_codec_encode(raw, len, lossy, &enc, &elen, &codec, &hash),
		 SSMD_OK);
	CHECK((codec & STORE_CODEC_LOSSY_MASK) ==
	      (lossy == STORE_LOSSY_BF16 ? STORE_CODEC_BF16 : STORE_CODEC_F16),
	      "%s recorded in the codec", name);
	CHECK(elen < len * 3 / 4, "%s: 16-bit ssm/conv shrink the payload "
	      "(%zu of %zu)", name, elen, len);
	CHECK_RC(store_codec_decode(enc, elen, codec, len, hash, &dec), SSMD_OK);
	if (!dec)
		goto out;
	CHECK(hash == XXH64(dec, len, 0), "%s: hash is of the decoded state",
	      name);
	CHECK(memcmp(dec, raw, SSM_STATE_HEADER_SIZE) == 0, "%s: header exact",
	      name);
	CHECK(memcmp((uint8_t *)dec + lay.hidden_off,
		     (uint8_t *)raw + lay.hidden_off,
		     lay.hidden_len + lay.dt_sum_len) == 0,
	      "%s: hidden and dt_sum exact", name);
	n_round = (lay.ssm_len + lay.conv_len) / 4;
	for (size_t i = 0; i < n_round; i++) {
		uint32_t x, r;

		memcpy(&x, (uint8_t *)raw + lay.ssm_off + 4 * i, 4);
		memcpy(&r, (uint8_t *)dec + lay.ssm_off + 4 * i, 4);
		if (fabs((double)bits_f(r) - bits_f(x)) >
		    tol * fabs((double)bits_f(x)))
			bad_rel++;
		if (lossy == STORE_LOSSY_BF16 ? !bf16_nearest(x, r) :
		    f_bits((float)(_Float16)bits_f(x)) != r)
			bad_near++;
	}
	CHECK(bad_rel == 0, "%s: %zu of %zu values beyond relative error %g",
	      name, bad_rel, n_round, tol);
	/* reference: the compiler's own f32 -> _Float16 conversion (round to
	 * nearest even) for f16; nearest-neighbour search for bf16 */
	CHECK(bad_near == 0, "%s: %zu of %zu values not the nearest %s value",
	      name, bad_near, n_round, name);
out:
	free(dec);
	free(enc);
	free(raw);
}

/* Specials through the lossy codecs: NaN stays NaN, inf stays inf, -0 stays
 * -0, f16 over/underflow as documented. Exact f16 references from _Float16
 * for every non-NaN value. */
static void test_lossy_specials(void)
{
	for (int lossy = STORE_LOSSY_BF16; lossy <= STORE_LOSSY_F16; lossy++) {
		ssm_state_layout lay;
		void *raw, *enc = NULL, *dec = NULL;
		size_t len, elen = 0, bad = 0;
		uint64_t hash;
		int codec;

		make_state(FILL_SPECIALS, &raw, &len);
		ssm_state_layout_of(raw, len, &lay);
		CHECK_RC(store_codec_encode(raw, len, lossy, &enc, &elen, &codec,
					    &hash), SSMD_OK);
		CHECK_RC(store_codec_decode(enc, elen, codec, len, hash, &dec),
			 SSMD_OK);
		for (size_t i = 0; dec && i < (lay.ssm_len + lay.conv_len) / 4; i++) {
			float x, r;

			memcpy(&x, (uint8_t *)raw + lay.ssm_off + 4 * i, 4);
			memcpy(&r, (uint8_t *)dec + lay.ssm_off + 4 * i, 4);
			if (isnan(x)) {
				bad += !isnan(r);
			} else if (lossy == STORE_LOSSY_F16) {
				bad += f_bits((float)(_Float16)x) != f_bits(r);
			} else {
				bad += isinf(x) && f_bits(x) != f_bits(r);
				bad += x == 0 && f_bits(x) != f_bits(r);
				bad += isfinite(x) && x != 0 &&
				       !bf16_nearest(f_bits(x), f_bits(r)) &&
				       !isinf(r); /* FLT_MAX rounds to inf */
			}
		}
		CHECK(bad == 0, "%s specials: %zu wrong", lossy == 1 ? "bf16" :
		      "f16", bad);
		free(dec);
		free(enc);
		free(raw);
	}
}

/* Flips one random bit at every step-th byte of the encoded payload enc
 * (elen bytes, restored after each try) and decodes it against raw (len
 * bytes, hash, codec). Counts the tries, the flips refused with
 * SSMD_ECORRUPT, and returns how many were served wrong: bytes other than
 * raw, or an error other than SSMD_ECORRUPT, or bytes with an error.
 * LZ4 has redundant encodings (a match offset into a run of zeros): a flip
 * may still decode to the very same state, which the hash then proves;
 * that is not counted wrong. */
static int flip_sweep(uint8_t *enc, size_t elen, size_t step, int codec,
		      const void *raw, size_t len, uint64_t hash, int *tried,
		      int *rejected)
{
	int bad = 0;

	for (size_t pos = 0; pos < elen; pos += step) {
		uint8_t mask = (uint8_t)(1u << (test_splitmix64(&rng) % 8));
		void *dec = NULL;
		int rc;

		enc[pos] ^= mask;
		rc = store_codec_decode(enc, elen, codec, len, hash, &dec);
		if (rc == SSMD_OK ? memcmp(dec, raw, len) != 0 :
		    rc != SSMD_ECORRUPT || dec)
			bad++;
		*rejected += rc == SSMD_ECORRUPT;
		(*tried)++;
		free(dec);
		enc[pos] ^= mask;
	}
	return bad;
}

/* Decoding damaged or mislabelled bytes: always an error, never a crash,
 * never bytes back. */
static void test_damage(void)
{
	for (fill how = FILL_RANDOM_BITS; how <= FILL_SMOOTH; how++) {
		void *raw, *enc = NULL, *dec;
		size_t len, elen;
		uint64_t hash;
		int codec, bad, rejected = 0, tried = 0;

		make_state(how, &raw, &len);
		if (store_codec_encode(raw, len, STORE_LOSSY_NONE, &enc, &elen,
				       &codec, &hash))
			abort();
		/* about 400 byte positions of a small payload, a random bit
		 * each */
		bad = flip_sweep(enc, elen, 1 + elen / 400, codec, raw, len, hash,
				 &tried, &rejected);
		CHECK(bad == 0, "%s (%s): %d flipped payloads served wrong bytes",
		      fill_name(how), store_codec_name(codec), bad);
		/* at most a few flips land on a redundant bit */
		CHECK(rejected * 10 >= tried * 9, "%s: only %d of %d flips "
		      "rejected", fill_name(how), rejected, tried);
		dec = NULL;
		/* truncated, wrong size, wrong hash, wrong codec */
		CHECK_RC(store_codec_decode(enc, elen / 2, codec, len, hash, &dec),
			 SSMD_ECORRUPT);
		CHECK_RC(store_codec_decode(enc, elen, codec, len - 4, hash, &dec),
			 SSMD_ECORRUPT);
		CHECK_RC(store_codec_decode(enc, elen, codec, len + 4, hash, &dec),
			 SSMD_ECORRUPT);
		CHECK_RC(store_codec_decode(enc, elen, codec, len, hash ^ 1, &dec),
			 SSMD_ECORRUPT);
		if (how != FILL_ZERO) /* zeros read the same shuffled or not */
			CHECK_RC(store_codec_decode(enc, elen,
						    codec ^ STORE_CODEC_SHUFFLE,
						    len, hash, &dec),
				 SSMD_ECORRUPT);
		CHECK_RC(store_codec_decode(enc, elen, 0x40, len, hash, &dec),
			 SSMD_ECORRUPT);
		CHECK_RC(store_codec_decode(enc, elen, codec, (size_t)1 << 40,
					    hash, &dec), SSMD_ECORRUPT);
		CHECK(dec == NULL, "no bytes returned on failure");
		free(enc);
		free(raw);
	}
}

/* An LZ4 frame whose content is larger than the recorded size (a state of
 * 8x the layers decoded as if it were the small one): the decoder must stop
 * at the recorded size, not trust the frame header. */
static void test_oversized_frame(void)
{
	void *small, *bigraw, *enc = NULL, *dec = NULL;
	size_t len, blen, elen;
	uint64_t hash;
	int codec;
	ssm_state *st;

	make_state(FILL_ZERO, &small, &len);
	if (ssm_state_alloc(SSM_ARCH_MAMBA1, NL * 8, DI, DS, DC, DM, &st))
		abort();
	blen = ssm_state_encoded_size(st);
	bigraw = malloc(blen);
	if (!bigraw || ssm_state_encode(st, bigraw, blen))
		abort();
	CHECK_RC(store_codec_encode(bigraw, blen, STORE_LOSSY_NONE, &enc, &elen,
				    &codec, &hash), SSMD_OK);
	CHECK_RC(store_codec_decode(enc, elen, codec, len, hash, &dec),
		 SSMD_ECORRUPT);
	CHECK(dec == NULL, "oversized frame: nothing returned");
	free(enc);
	free(bigraw);
	ssm_state_free(st);
	free(small);
}

/* A state of mamba-130m's shape (~3 MB): large enough that the encoder
 * samples instead of trying both transforms, and splits a lossless payload
 * into two LZ4 frames compressed (and decompressed) on two threads. */
static void *make_large(int smooth, size_t *len)
{
	ssm_state *st;
	size_t n;
	void *buf;

	if (ssm_state_alloc(SSM_ARCH_MAMBA1, 24, 1536, 16, 4, 768, &st))
		abort();
	n = (ssm_state_encoded_size(st) - SSM_STATE_HEADER_SIZE) / 4;
	for (size_t i = 0; i < n; i++)
		st->ssm[i] = smooth ? (float)sin((double)i * 1e-3) :
				      bits_f((uint32_t)test_splitmix64(&rng));
	*len = ssm_state_encoded_size(st);
	buf = malloc(*len);
	if (!buf || ssm_state_encode(st, buf, *len))
		abort();
	ssm_state_free(st);
	return buf;
}

/* Bytes of the first LZ4 frame at p (decoding it with LZ4F), 0 if none. */
static size_t first_frame_len(const uint8_t *p, size_t n, size_t raw_len)
{
	LZ4F_dctx *d;
	uint8_t *tmp = malloc(raw_len);
	size_t in = 0, out = 0, ret = 1;

	LZ4F_createDecompressionContext(&d, LZ4F_VERSION);
	while (ret && in < n) {
		size_t ssz = n - in, dsz = raw_len - out;

		ret = LZ4F_decompress(d, tmp + out, &dsz, p + in, &ssz, NULL);
		if (LZ4F_isError(ret) || (!ssz && !dsz))
			break;
		in += ssz;
		out += dsz;
	}
	LZ4F_freeDecompressionContext(d);
	free(tmp);
	return ret == 0 ? in : 0;
}

static void test_large(void)
{
	for (int smooth = 0; smooth < 2; smooth++) {
		for (int lossy = STORE_LOSSY_NONE; lossy <= STORE_LOSSY_F16;
		     lossy++) {
			void *raw, *enc = NULL, *dec = NULL;
			size_t len, elen = 0;
			uint64_t hash = 0;
			int codec = -1;

			raw = make_large(smooth, &len);
			CHECK_RC(store_codec_encode(raw, len, lossy, &enc, &elen,
						    &codec, &hash), SSMD_OK);
			CHECK_RC(store_codec_decode(enc, elen, codec, len, hash,
						    &dec), SSMD_OK);
			if (lossy == STORE_LOSSY_NONE)
				CHECK(dec && memcmp(dec, raw, len) == 0,
				      "large %s state: bit-exact (%s)",
				      smooth ? "smooth" : "random",
				      store_codec_name(codec));
			else
				CHECK(dec && hash == XXH64(dec, len, 0),
				      "large lossy state decodes to its hash");
			if (smooth)
				CHECK(codec & STORE_CODEC_SHUFFLE,
				      "large smooth state: shuffle chosen (%s)",
				      store_codec_name(codec));
			free(dec);
			free(enc);
			free(raw);
		}
	}

	/* two frames: damage in either, a missing second frame, the frames
	 * swapped — each refused */
	{
		void *raw, *enc = NULL, *dec = NULL;
		size_t len, elen, f1;
		uint64_t hash;
		int codec, bad, tried = 0, rejected = 0;
		uint8_t *e, *sw;

		raw = make_large(1, &len);
		if (store_codec_encode(raw, len, STORE_LOSSY_NONE, &enc, &elen,
				       &codec, &hash))
			abort();
		e = enc;
		f1 = first_frame_len(e, elen, len);
		CHECK(f1 > 0 && f1 < elen, "lossless large payload is two "
		      "frames (first %zu of %zu bytes)", f1, elen);
		bad = flip_sweep(e, elen, 1 + elen / 150, codec, raw, len, hash,
				 &tried, &rejected);
		CHECK(bad == 0, "two frames: %d of %d flips served wrong bytes",
		      bad, tried);
		dec = NULL;
		CHECK_RC(store_codec_decode(enc, f1, codec, len, hash, &dec),
			 SSMD_ECORRUPT);
		sw = malloc(elen);
		memcpy(sw, e + f1, elen - f1);
		memcpy(sw + (elen - f1), e, f1);
		CHECK_RC(store_codec_decode(sw, elen, codec, len, hash, &dec),
			 SSMD_ECORRUPT);
		CHECK(dec == NULL, "nothing returned");
		free(sw);
		free(enc);
		free(raw);
	}
}

static void test_bad_input(void)
{
	void *out = NULL;
	size_t olen;
	uint64_t hash;
	int codec;
	uint8_t junk[256] = { 'S', 'S', 'M', 'S' };

	CHECK_RC(store_codec_encode(junk, sizeof(junk), STORE_LOSSY_NONE, &out,
				    &olen, &codec, &hash), SSMD_EFORMAT);
	CHECK_RC(store_codec_encode(junk, 3, STORE_LOSSY_NONE, &out, &olen,
				    &codec, &hash), SSMD_EFORMAT);
	CHECK(out == NULL, "nothing allocated on a bad state");
	CHECK(strcmp(store_codec_name(STORE_CODEC_LZ4 | STORE_CODEC_SHUFFLE |
				      STORE_CODEC_F16), "f16+shuffle+lz4") == 0,
	      "codec names");
	CHECK(strcmp(store_codec_name(STORE_CODEC_SHUFFLE), "unknown") == 0,
	      "shuffle without lz4 is no codec");
}

int main(void)
{
	test_lossless();
	test_shuffle_chosen();
	test_lossy(STORE_LOSSY_BF16);
	test_lossy(STORE_LOSSY_F16);
	test_lossy_specials();
	test_damage();
	test_oversized_frame();
	test_large();
	test_bad_input();
	return check_summary("statestore_codec");
}
