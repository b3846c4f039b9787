/*
 * test_tok_oom.c — the tokenizer when memory runs out.
 *
 * Linked with -Wl,--wrap=malloc,... so every allocation the tokenizer's own
 * code makes goes through the wrappers below, which fail the k-th one. For
 * k = 1, 2, ... until the call succeeds, load / encode / decode / stream
 * must return SSMD_ENOMEM, leave their out-parameters alone and leak
 * nothing (LeakSanitizer checks at exit under the ASan build); once the
 * call succeeds its result must equal the result with no failure at all.
 * (cJSON and utf8proc allocate inside their shared libraries, outside the
 * wrappers; their failures reach us as NULL and are covered by the same
 * error paths.)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "daemon/tok.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);

static long fail_at = -1; /* index of the allocation to fail; -1: none */
static long n_allocs;

static int should_fail(void)
{
	return fail_at >= 0 && n_allocs++ == fail_at;
}

void *__wrap_malloc(size_t n)
{
	return should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
	return should_fail() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
	return should_fail() ? NULL : __real_realloc(p, n);
}

void *__wrap_aligned_alloc(size_t align, size_t n)
{
	return should_fail() ? NULL : __real_aligned_alloc(align, n);
}

static void arm(long k)
{
	fail_at = k;
	n_allocs = 0;
}

static void disarm(void)
{
	fail_at = -1;
}

/* Mixed text: special token, runs of spaces, NFC work, emoji, words long
 * enough to bypass the word cache. */
static const char text[] =
	"Hello  world <|endoftext|> cafe\xCC\x81 \xF0\x9F\x9A\x80\xF0\x9F\x98\x80 "
	"supercalifragilisticexpialidocious\n\n    indented \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E";

int main(void)
{
	const char *fixtures = getenv("SSMD_SHARED_FIXTURES");
	if (!fixtures) {
		SKIP("SSMD_SHARED_FIXTURES is not set");
		return check_summary("tok_oom");
	}
	char path[4096];
	snprintf(path, sizeof(path), "%s/../models/gpt-neox-20b-tokenizer.json", fixtures);

	/* load */
	tok_tokenizer *tok = NULL;
	int rc = SSMD_ENOMEM, odd = 0;
	long k;
	for (k = 0; rc == SSMD_ENOMEM && k < 100000; k++) {
		tok_tokenizer *t = (tok_tokenizer *)&odd; /* must stay untouched */
		arm(k);
		rc = tok_load(path, &t);
		disarm();
		if (rc == SSMD_OK)
			tok = t;
		else if (rc != SSMD_ENOMEM || t != (tok_tokenizer *)&odd)
			odd++;
	}
	CHECK(odd == 0, "tok_load under failing allocations: %d bad outcomes", odd);
	CHECK(tok != NULL, "tok_load never succeeded (%ld tries, rc %d)", k, rc);
	if (!tok)
		return check_summary("tok_oom");

	/* encode */
	int32_t *want = NULL;
	size_t n_want = 0;
	CHECK_RC(tok_encode(tok, text, sizeof(text) - 1, &want, &n_want), SSMD_OK);
	odd = 0;
	rc = SSMD_ENOMEM;
	for (k = 0; rc == SSMD_ENOMEM; k++) {
		int32_t *ids = (int32_t *)&odd;
		size_t n = 12345;
		arm(k);
		rc = tok_encode(tok, text, sizeof(text) - 1, &ids, &n);
		disarm();
		if (rc == SSMD_OK) {
			if (n != n_want || memcmp(ids, want, n * sizeof(*ids)))
				odd++;
			free(ids);
		} else if (rc != SSMD_ENOMEM || ids != (int32_t *)&odd || n != 12345) {
			odd++;
		}
	}
	CHECK(odd == 0, "tok_encode under failing allocations: %d bad outcomes", odd);
	CHECK(k > 1, "tok_encode allocated nothing (%ld)", k);

	/* decode */
	odd = 0;
	rc = SSMD_ENOMEM;
	for (k = 0; rc == SSMD_ENOMEM; k++) {
		char *out = (char *)&odd;
		size_t len = 12345;
		arm(k);
		rc = tok_decode(tok, want, n_want, &out, &len);
		disarm();
		if (rc == SSMD_OK)
			free(out);
		else if (rc != SSMD_ENOMEM || out != (char *)&odd || len != 12345)
			odd++;
	}
	CHECK(odd == 0, "tok_decode under failing allocations: %d bad outcomes", odd);

	/* streaming: a failed push leaves the stream as it was, so pushing
	 * the same id again continues it exactly */
	char *whole = NULL;
	size_t whole_len = 0;
	CHECK_RC(tok_decode(tok, want, n_want, &whole, &whole_len), SSMD_OK);
	tok_decoder *dec = NULL;
	CHECK_RC(tok_decoder_alloc(tok, &dec), SSMD_OK);
	char *streamed = calloc(1, whole_len + 16);
	size_t got = 0;
	odd = 0;
	for (size_t i = 0; dec && streamed && i <= n_want; i++) {
		for (k = 0;; k++) {
			char *out = NULL;
			size_t len = 0;
			arm(k % 3 == 2 ? -1 : k % 3); /* fail the 1st, then the 2nd, then none */
			rc = i < n_want ? tok_decoder_push(dec, want[i], &out, &len)
					: tok_decoder_flush(dec, &out, &len);
			disarm();
			if (rc == SSMD_OK) {
				if (got + len <= whole_len)
					memcpy(streamed + got, out, len);
				got += len;
				free(out);
				break;
			}
			if (rc != SSMD_ENOMEM || out != NULL)
				odd++;
		}
	}
	CHECK(odd == 0, "decoder under failing allocations: %d bad outcomes", odd);
	CHECK(got == whole_len && streamed && !memcmp(streamed, whole, whole_len),
	      "stream with failed pushes differs from the decode");

	/* the decoder itself */
	tok_decoder *d2 = (tok_decoder *)&odd;
	arm(0);
	rc = tok_decoder_alloc(tok, &d2);
	disarm();
	CHECK(rc == SSMD_ENOMEM && d2 == (tok_decoder *)&odd,
	      "tok_decoder_alloc without memory: rc %d", rc);

	free(streamed);
	free(whole);
	tok_decoder_free(dec);
	free(want);
	tok_free(tok);
	return check_summary("tok_oom");
}
