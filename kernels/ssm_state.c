#include "ssm_state.h"

#include <stdlib.h>
#include <string.h>

/* Generous upper bounds that reject garbage headers before any allocation. */
#define MAX_DIM (1u << 20)
#define MAX_STATE_BYTES ((size_t)1 << 34)

static const uint8_t magic[4] = { 'S', 'S', 'M', 'S' };

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
	return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* Element counts of each array; returns 0 on absurd dimensions. */
static int counts(uint32_t n_layer, uint32_t d_inner, uint32_t d_state,
		  uint32_t d_conv, uint32_t d_model, size_t n[4])
{
	if (!n_layer || !d_inner || !d_state || d_conv < 2 || !d_model)
		return 0;
	if (n_layer > MAX_DIM || d_inner > MAX_DIM || d_state > 4096 ||
	    d_conv > 64 || d_model > MAX_DIM)
		return 0;
	n[0] = (size_t)n_layer * d_inner * d_state;
	n[1] = (size_t)n_layer * d_inner * (d_conv - 1);
	n[2] = d_model;
	n[3] = (size_t)n_layer * d_inner;
	if ((n[0] + n[1] + n[2] + n[3]) * 4 > MAX_STATE_BYTES)
		return 0;
	return 1;
}

int ssm_state_alloc(uint32_t arch, uint32_t n_layer, uint32_t d_inner,
		    uint32_t d_state, uint32_t d_conv, uint32_t d_model,
		    ssm_state **out)
{
	size_t n[4];
	ssm_state *st;
	float *mem;

	if (!counts(n_layer, d_inner, d_state, d_conv, d_model, n))
		return ssmd_err_set(SSMD_EINVAL, "state shape out of range");
	st = calloc(1, sizeof(*st));
	mem = calloc(n[0] + n[1] + n[2] + n[3], sizeof(float));
	if (!st || !mem) {
		free(st);
		free(mem);
		return SSMD_ENOMEM;
	}
	st->arch = arch;
	st->n_layer = n_layer;
	st->d_inner = d_inner;
	st->d_state = d_state;
	st->d_conv = d_conv;
	st->d_model = d_model;
	st->ssm = mem;
	st->conv = st->ssm + n[0];
	st->hidden = st->conv + n[1];
	st->dt_sum = st->hidden + n[2];
	*out = st;
	return SSMD_OK;
}

void ssm_state_free(ssm_state *st)
{
	if (!st)
		return;
	free(st->ssm); /* one block holds all four arrays */
	free(st);
}

static size_t n_floats(const ssm_state *st)
{
	size_t n[4];

	if (!counts(st->n_layer, st->d_inner, st->d_state, st->d_conv,
		    st->d_model, n))
		return 0;
	return n[0] + n[1] + n[2] + n[3];
}

void ssm_state_zero(ssm_state *st)
{
	memset(st->ssm, 0, n_floats(st) * sizeof(float));
	st->n_tokens = 0;
}

int ssm_state_same_shape(const ssm_state *a, const ssm_state *b)
{
	return a->arch == b->arch && a->n_layer == b->n_layer &&
	       a->d_inner == b->d_inner && a->d_state == b->d_state &&
	       a->d_conv == b->d_conv && a->d_model == b->d_model;
}

int ssm_state_copy(ssm_state *dst, const ssm_state *src)
{
	if (!ssm_state_same_shape(dst, src))
		return ssmd_err_set(SSMD_EINVAL, "state shapes differ");
	memcpy(dst->ssm, src->ssm, n_floats(src) * sizeof(float));
	dst->n_tokens = src->n_tokens;
	memcpy(dst->fingerprint, src->fingerprint, SSM_FINGERPRINT_LEN);
	return SSMD_OK;
}

size_t ssm_state_encoded_size(const ssm_state *st)
{
	return SSM_STATE_HEADER_SIZE + n_floats(st) * sizeof(float);
}

/* Floats are stored little-endian; every supported host is little-endian. */
_Static_assert(sizeof(float) == 4, "f32 required");

int ssm_state_encode(const ssm_state *st, void *buf, size_t cap)
{
	uint8_t *p = buf;
	size_t n = n_floats(st);

	if (!n)
		return ssmd_err_set(SSMD_EINVAL, "state shape out of range");
	if (cap < ssm_state_encoded_size(st))
		return ssmd_err_set(SSMD_ERANGE, "state buffer too small");
	memset(p, 0, SSM_STATE_HEADER_SIZE);
	memcpy(p, magic, 4);
	put_u32(p + 4, SSM_STATE_VERSION);
	put_u32(p + 8, st->arch);
	put_u32(p + 12, st->n_layer);
	put_u32(p + 16, st->d_inner);
	put_u32(p + 20, st->d_state);
	put_u32(p + 24, st->d_conv);
	put_u32(p + 28, st->d_model);
	put_u64(p + 32, st->n_tokens);
	memcpy(p + 40, st->fingerprint, SSM_FINGERPRINT_LEN);
	memcpy(p + SSM_STATE_HEADER_SIZE, st->ssm, n * sizeof(float));
	return SSMD_OK;
}

int ssm_state_layout_of(const void *buf, size_t len, ssm_state_layout *lay)
{
	const uint8_t *p = buf;
	size_t n[4];

	if (!buf || len < SSM_STATE_HEADER_SIZE || memcmp(p, magic, 4) != 0)
		return ssmd_err_set(SSMD_EFORMAT, "not an encoded ssmd state");
	if (get_u32(p + 4) != SSM_STATE_VERSION)
		return ssmd_err_set(SSMD_EFORMAT,
				    "state format version %u not supported",
				    get_u32(p + 4));
	if (!counts(get_u32(p + 12), get_u32(p + 16), get_u32(p + 20),
		    get_u32(p + 24), get_u32(p + 28), n))
		return ssmd_err_set(SSMD_EFORMAT, "state shape out of range");
	lay->ssm_off = SSM_STATE_HEADER_SIZE;
	lay->ssm_len = n[0] * 4;
	lay->conv_off = lay->ssm_off + lay->ssm_len;
	lay->conv_len = n[1] * 4;
	lay->hidden_off = lay->conv_off + lay->conv_len;
	lay->hidden_len = n[2] * 4;
	lay->dt_sum_off = lay->hidden_off + lay->hidden_len;
	lay->dt_sum_len = n[3] * 4;
	lay->total = lay->dt_sum_off + lay->dt_sum_len;
	if (len != lay->total)
		return ssmd_err_set(SSMD_EFORMAT,
				    "state is %zu bytes, header implies %zu",
				    len, lay->total);
	return SSMD_OK;
}

int ssm_state_decode(const void *buf, size_t len, ssm_state **out)
{
	const uint8_t *p = buf;
	ssm_state_layout lay;
	ssm_state *st;
	int rc;

	rc = ssm_state_layout_of(buf, len, &lay);
	if (rc)
		return rc;
	rc = ssm_state_alloc(get_u32(p + 8), get_u32(p + 12), get_u32(p + 16),
			     get_u32(p + 20), get_u32(p + 24), get_u32(p + 28),
			     &st);
	if (rc)
		return rc;
	st->n_tokens = get_u64(p + 32);
	memcpy(st->fingerprint, p + 40, SSM_FINGERPRINT_LEN);
	memcpy(st->ssm, p + SSM_STATE_HEADER_SIZE, len - SSM_STATE_HEADER_SIZE);
	*out = st;
	return SSMD_OK;
}
