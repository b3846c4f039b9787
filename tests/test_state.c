/* Canonical state encoding: exact round trip and rejection of bad buffers. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ssm_state.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t next_u32(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)rng;
}

int main(void)
{
	ssm_state *st, *back = NULL;
	ssm_state_layout lay;
	size_t n, size;
	uint8_t *buf;

	CHECK_RC(ssm_state_alloc(SSM_ARCH_MAMBA1, 3, 40, 16, 4, 20, &st), SSMD_OK);
	n = (size_t)3 * 40 * 16 + 3 * 40 * 3 + 20 + 3 * 40;
	/* Random bit patterns cover NaN payloads, infinities, -0 and denormals. */
	for (size_t i = 0; i < n; i++) {
		uint32_t bits = next_u32();
		memcpy(&st->ssm[i], &bits, 4);
	}
	st->n_tokens = 123456789012ull;
	for (int i = 0; i < SSM_FINGERPRINT_LEN; i++)
		st->fingerprint[i] = (uint8_t)i;
	size = ssm_state_encoded_size(st);
	CHECK(size == SSM_STATE_HEADER_SIZE + n * 4, "encoded size %zu", size);
	buf = malloc(size);
	CHECK_RC(ssm_state_encode(st, buf, size - 1), SSMD_ERANGE);
	CHECK_RC(ssm_state_encode(st, buf, size), SSMD_OK);
	CHECK_RC(ssm_state_layout_of(buf, size, &lay), SSMD_OK);
	CHECK(lay.conv_off == 64 + 3 * 40 * 16 * 4, "conv offset %zu", lay.conv_off);
	CHECK(lay.total == size, "layout total %zu", lay.total);
	CHECK_RC(ssm_state_decode(buf, size, &back), SSMD_OK);
	if (back) {
		CHECK(memcmp(back->ssm, st->ssm, n * 4) == 0, "arrays bit-exact");
		CHECK(back->n_tokens == st->n_tokens, "n_tokens");
		CHECK(memcmp(back->fingerprint, st->fingerprint, 16) == 0, "fingerprint");
		CHECK(ssm_state_same_shape(back, st), "shape");
	}
	ssm_state_free(back);

	/* Truncated, extended, wrong magic, wrong version, absurd shape. */
	CHECK_RC(ssm_state_layout_of(buf, size - 4, &lay), SSMD_EFORMAT);
	CHECK_RC(ssm_state_layout_of(buf, 10, &lay), SSMD_EFORMAT);
	CHECK_RC(ssm_state_layout_of(NULL, 0, &lay), SSMD_EFORMAT);
	buf[0] = 'X';
	CHECK_RC(ssm_state_decode(buf, size, &back), SSMD_EFORMAT);
	buf[0] = 'S';
	buf[4] = 99;
	CHECK_RC(ssm_state_decode(buf, size, &back), SSMD_EFORMAT);
	buf[4] = 1;
	buf[15] = 0xff; /* n_layer huge */
	CHECK_RC(ssm_state_decode(buf, size, &back), SSMD_EFORMAT);
	free(buf);
	ssm_state_free(st);
	ssm_state_free(NULL);
	return check_summary("state_codec");
}
