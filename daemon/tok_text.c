/*
 * tok_text.c — UTF-8 scanning and repair, Unicode classes (utf8proc) and the
 * hand-written matcher of the GPT-2 pre-tokenisation pattern.
 */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "ssmd_err.h"

int tok_buf_reserve(struct tok_buf *b, size_t extra)
{
	if (extra >= SIZE_MAX / 2 - b->len)
		return ssmd_err_set(SSMD_ENOMEM, "tokenizer buffer too large");
	size_t need = b->len + extra + 1;
	if (need <= b->cap)
		return SSMD_OK;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < need)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p)
		return ssmd_err_set(SSMD_ENOMEM, "tokenizer: out of memory");
	b->p = p;
	b->cap = cap;
	return SSMD_OK;
}

int tok_buf_append(struct tok_buf *b, const void *s, size_t n)
{
	int rc = tok_buf_reserve(b, n);
	if (rc)
		return rc;
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	return SSMD_OK;
}

size_t tok_utf8_scan(const uint8_t *s, size_t n, enum tok_utf8 *kind)
{
	uint8_t b0 = s[0];
	size_t need;          /* continuation bytes after the lead byte */
	uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */

	if (b0 < 0x80) {
		*kind = TOK_UTF8_OK;
		return 1;
	}
	if (b0 >= 0xC2 && b0 <= 0xDF) {
		need = 1;
	} else if (b0 >= 0xE0 && b0 <= 0xEF) {
		need = 2;
		if (b0 == 0xE0)
			lo = 0xA0; /* no overlong forms */
		else if (b0 == 0xED)
			hi = 0x9F; /* no surrogates */
	} else if (b0 >= 0xF0 && b0 <= 0xF4) {
		need = 3;
		if (b0 == 0xF0)
			lo = 0x90; /* no overlong forms */
		else if (b0 == 0xF4)
			hi = 0x8F; /* nothing above U+10FFFF */
	} else {
		*kind = TOK_UTF8_BAD; /* 80-C1, F5-FF never start a character */
		return 1;
	}
	for (size_t i = 1; i <= need; i++) {
		if (i >= n) {
			*kind = TOK_UTF8_SHORT;
			return i;
		}
		if (s[i] < lo || s[i] > hi) {
			*kind = TOK_UTF8_BAD;
			return i;
		}
		lo = 0x80;
		hi = 0xBF;
	}
	*kind = TOK_UTF8_OK;
	return need + 1;
}

int32_t tok_utf8_decode(const uint8_t *s, size_t len)
{
	switch (len) {
	case 1:
		return s[0];
	case 2:
		return (int32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
	case 3:
		return (int32_t)(s[0] & 0x0F) << 12 | (int32_t)(s[1] & 0x3F) << 6 |
		       (s[2] & 0x3F);
	default:
		return (int32_t)(s[0] & 0x07) << 18 | (int32_t)(s[1] & 0x3F) << 12 |
		       (int32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
	}
}

size_t tok_utf8_valid_len(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		enum tok_utf8 kind;
		size_t len = tok_utf8_scan(s + i, n - i, &kind);
		if (kind != TOK_UTF8_OK)
			break;
		i += len;
	}
	return i;
}

int tok_utf8_repair(struct tok_buf *out, const uint8_t *s, size_t n,
		    bool keep_tail, size_t *used)
{
	static const char fffd[] = "\xEF\xBF\xBD";
	size_t i = 0;
	int rc = SSMD_OK;

	while (i < n) {
		size_t good = tok_utf8_valid_len(s + i, n - i);
		rc = tok_buf_append(out, s + i, good);
		if (rc)
			return rc;
		i += good;
		if (i == n)
			break;
		enum tok_utf8 kind;
		size_t len = tok_utf8_scan(s + i, n - i, &kind);
		if (kind == TOK_UTF8_SHORT && keep_tail)
			break;
		rc = tok_buf_append(out, fffd, 3);
		if (rc)
			return rc;
		i += len;
	}
	if (used)
		*used = i;
	return SSMD_OK;
}

/* Classes of the ASCII characters, the hot path of English text. */
static const uint8_t ascii_cls[128] = {
#define O TOK_CLS_O
#define S TOK_CLS_S
#define N TOK_CLS_N
#define L TOK_CLS_L
	/* 00 */ O, O, O, O, O, O, O, O, O, S, S, S, S, S, O, O,
	/* 10 */ O, O, O, O, O, O, O, O, O, O, O, O, O, O, O, O,
	/* 20 */ S, O, O, O, O, O, O, O, O, O, O, O, O, O, O, O,
	/* 30 */ N, N, N, N, N, N, N, N, N, N, O, O, O, O, O, O,
	/* 40 */ O, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,
	/* 50 */ L, L, L, L, L, L, L, L, L, L, L, O, O, O, O, O,
	/* 60 */ O, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,
	/* 70 */ L, L, L, L, L, L, L, L, L, L, L, O, O, O, O, O,
#undef O
#undef S
#undef N
#undef L
};

enum tok_cls tok_cls_of(int32_t cp)
{
	if (cp < 128)
		return (enum tok_cls)ascii_cls[cp];
	if (cp == 0x85)
		return TOK_CLS_S; /* NEXT LINE is White_Space but category Cc */
	switch (utf8proc_category(cp)) {
	case UTF8PROC_CATEGORY_LU:
	case UTF8PROC_CATEGORY_LL:
	case UTF8PROC_CATEGORY_LT:
	case UTF8PROC_CATEGORY_LM:
	case UTF8PROC_CATEGORY_LO:
		return TOK_CLS_L;
	case UTF8PROC_CATEGORY_ND:
	case UTF8PROC_CATEGORY_NL:
	case UTF8PROC_CATEGORY_NO:
		return TOK_CLS_N;
	case UTF8PROC_CATEGORY_ZS:
	case UTF8PROC_CATEGORY_ZL:
	case UTF8PROC_CATEGORY_ZP:
		return TOK_CLS_S;
	default:
		return TOK_CLS_O;
	}
}

bool tok_is_word_char(int32_t cp)
{
	if (cp == 0x200C || cp == 0x200D)
		return true;
	/* \w takes the Alphabetic property, not only the letter categories:
	 * Other_Alphabetic also holds these enclosed letters of category So
	 * (circled, squared, negative circled and negative squared Latin). */
	if ((cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
	    (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189))
		return true;
	switch (utf8proc_category(cp)) {
	case UTF8PROC_CATEGORY_LU:
	case UTF8PROC_CATEGORY_LL:
	case UTF8PROC_CATEGORY_LT:
	case UTF8PROC_CATEGORY_LM:
	case UTF8PROC_CATEGORY_LO:
	case UTF8PROC_CATEGORY_MN:
	case UTF8PROC_CATEGORY_MC:
	case UTF8PROC_CATEGORY_ME:
	case UTF8PROC_CATEGORY_ND:
	case UTF8PROC_CATEGORY_NL:
	case UTF8PROC_CATEGORY_PC:
		return true;
	default:
		return false;
	}
}

/* Class of the (valid) character at s[i], its byte length in *len. */
static inline enum tok_cls cls_at(const uint8_t *s, size_t n, size_t i,
				  size_t *len)
{
	if (s[i] < 0x80) {
		*len = 1;
		return (enum tok_cls)ascii_cls[s[i]];
	}
	enum tok_utf8 kind;
	*len = tok_utf8_scan(s + i, n - i, &kind);
	return tok_cls_of(tok_utf8_decode(s + i, *len));
}

size_t tok_split_next(const uint8_t *s, size_t n, size_t i)
{
	/* 's 't 're 've 'm 'll 'd: lower case only, as in the pattern. */
	if (s[i] == '\'' && i + 1 < n) {
		uint8_t c1 = s[i + 1];
		if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
			return i + 2;
		if (i + 2 < n) {
			uint8_t c2 = s[i + 2];
			if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') ||
			    (c1 == 'l' && c2 == 'l'))
				return i + 3;
		}
	}

	size_t len;
	enum tok_cls k = cls_at(s, n, i, &len);
	size_t j = i + len;

	/* ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional U+0020
	 * then a run of one class. */
	if (s[i] == ' ' && j < n) {
		enum tok_cls k1 = cls_at(s, n, j, &len);
		if (k1 != TOK_CLS_S) {
			k = k1;
			j += len;
		}
	}
	if (k != TOK_CLS_S) {
		while (j < n && cls_at(s, n, j, &len) == k)
			j += len;
		return j;
	}

	/* Whitespace. `\s+(?!\S)` takes the run up to the end of the text,
	 * or else backs off one character so that the last one stays to
	 * lead the next word (` ?\p{L}+` ...); a lone whitespace character
	 * before a non-space falls through to `\s+`. */
	size_t last = i; /* start of the run's last character */
	j = i;
	while (j < n && cls_at(s, n, j, &len) == TOK_CLS_S) {
		last = j;
		j += len;
	}
	if (j == n || last == i)
		return j;
	return last;
}
