/*
 * test_tok.c — the tokenizer against Hugging Face's own output.
 *
 * - every line of tests/fixtures/reference/tokenizer/neox-cases.jsonl (ids and
 *   decoded text written by Hugging Face `tokenizers`): exact equality;
 * - the incremental decoder: every chunk is whole UTF-8 (checked with
 *   utf8proc, not with the code under test) and the chunks add up to
 *   tok_decode's text;
 * - invalid UTF-8 input: encoded as the text with U+FFFD in place of each
 *   maximal invalid subpart, the substitutions given by the Unicode
 *   Standard's examples (chapter 3, "U+FFFD Substitution of Maximal
 *   Subparts");
 * - round trip of fresh random NFC text (seed printed): exact;
 * - bad files and bad IDs: their error codes; two threads encoding at once.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <utf8proc.h>

#include "daemon/tok.h"
#include "check.h"
#include "testutil.h"

static char neox_path[4096];

static int write_file(const char *path, const char *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	size_t put = fwrite(data, 1, len, f);
	return fclose(f) || put != len ? -1 : 0;
}

/* Whole, valid UTF-8, judged by utf8proc. */
static int valid_utf8(const char *s, size_t n)
{
	utf8proc_int32_t cp;
	for (size_t i = 0; i < n;) {
		utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
						      (utf8proc_ssize_t)(n - i), &cp);
		if (k <= 0)
			return 0;
		i += (size_t)k;
	}
	return 1;
}

/* Pushes ids one at a time; checks each chunk and the total. */
static void check_stream(const tok_tokenizer *tok, const int32_t *ids, size_t n,
			 const char *want, size_t want_len, const char *label)
{
	tok_decoder *dec = NULL;
	char *all = calloc(1, want_len + 4 * n + 4);
	size_t all_len = 0;
	int chunks_ok = 1;

	CHECK_RC(tok_decoder_alloc(tok, &dec), SSMD_OK);
	for (size_t i = 0; dec && i <= n; i++) {
		char *out = NULL;
		size_t len = 0;
		int rc = i < n ? tok_decoder_push(dec, ids[i], &out, &len)
			       : tok_decoder_flush(dec, &out, &len);
		CHECK(rc == SSMD_OK, "%s: push %zu: %s", label, i, ssmd_errmsg());
		if (rc)
			break;
		if (!valid_utf8(out, len) || out[len] != '\0')
			chunks_ok = 0;
		if (all_len + len <= want_len + 4 * n) {
			memcpy(all + all_len, out, len);
			all_len += len;
		}
		free(out);
	}
	CHECK(chunks_ok, "%s: a streamed chunk is not whole UTF-8", label);
	CHECK(all_len == want_len && !memcmp(all, want, want_len),
	      "%s: streamed text differs from the decode", label);
	tok_decoder_free(dec);
	free(all);
}

static void test_fixture(const tok_tokenizer *tok, const char *fixtures)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/tokenizer/neox-cases.jsonl", fixtures);
	FILE *f = fopen(path, "r");
	CHECK(f != NULL, "cannot open %s", path);
	if (!f)
		return;
	char *line = NULL;
	size_t cap = 0;
	int lines = 0;
	while (getline(&line, &cap, f) > 0) {
		cJSON *obj = cJSON_Parse(line);
		const cJSON *text = cJSON_GetObjectItemCaseSensitive(obj, "text");
		const cJSON *ids = cJSON_GetObjectItemCaseSensitive(obj, "ids");
		const cJSON *decoded = cJSON_GetObjectItemCaseSensitive(obj, "decoded");
		CHECK(cJSON_IsString(text) && cJSON_IsArray(ids) && cJSON_IsString(decoded),
		      "fixture line %d is malformed", lines + 1);
		if (!cJSON_IsString(text) || !cJSON_IsArray(ids) || !cJSON_IsString(decoded)) {
			cJSON_Delete(obj);
			continue;
		}
		lines++;
		char label[64];
		snprintf(label, sizeof(label), "fixture line %d", lines);

		int32_t *got = NULL;
		size_t n = 0;
		CHECK_RC(tok_encode(tok, text->valuestring, strlen(text->valuestring),
				    &got, &n), SSMD_OK);
		int same = n == (size_t)cJSON_GetArraySize(ids);
		for (size_t i = 0; same && i < n; i++)
			same = got[i] == cJSON_GetArrayItem(ids, (int)i)->valueint;
		CHECK(same, "%s: ids differ from Hugging Face's for \"%.60s\"", label,
		      text->valuestring);

		/* decode the reference ids, not ours, so a decode bug cannot
		 * hide behind an encode bug */
		size_t nref = (size_t)cJSON_GetArraySize(ids);
		int32_t *ref = malloc((nref + 1) * sizeof(*ref));
		for (size_t i = 0; i < nref; i++)
			ref[i] = cJSON_GetArrayItem(ids, (int)i)->valueint;
		char *out = NULL;
		size_t len = 0;
		CHECK_RC(tok_decode(tok, ref, nref, &out, &len), SSMD_OK);
		CHECK(out && len == strlen(decoded->valuestring) &&
		      !memcmp(out, decoded->valuestring, len),
		      "%s: decode \"%s\" differs from Hugging Face's", label,
		      out ? out : "(null)");
		if (out)
			check_stream(tok, ref, nref, out, len, label);
		free(out);
		free(ref);
		free(got);
		cJSON_Delete(obj);
	}
	CHECK(lines >= 20, "read only %d fixture lines", lines);
	free(line);
	fclose(f);
}

/* Encoding bad UTF-8 must equal encoding the repaired text. */
static void check_repair(const tok_tokenizer *tok, const char *bad, size_t bad_len,
			 const char *good)
{
	int32_t *a = NULL, *b = NULL;
	size_t na = 0, nb = 0;
	CHECK_RC(tok_encode(tok, bad, bad_len, &a, &na), SSMD_OK);
	CHECK_RC(tok_encode(tok, good, strlen(good), &b, &nb), SSMD_OK);
	CHECK(na == nb && (na == 0 || !memcmp(a, b, na * sizeof(*a))),
	      "invalid UTF-8 not encoded as its U+FFFD repair \"%s\"", good);
	char *text = NULL;
	size_t len = 0;
	CHECK_RC(tok_decode(tok, a, na, &text, &len), SSMD_OK);
	CHECK(text && !strcmp(text, good), "repaired text decodes to \"%s\", want \"%s\"",
	      text ? text : "(null)", good);
	free(text);
	free(a);
	free(b);
}

static void test_invalid_utf8(const tok_tokenizer *tok)
{
#define R "\xEF\xBF\xBD" /* U+FFFD */
	/* The Unicode Standard's example: 61 F1 80 80 E1 80 C2 62 80 63 80
	 * BF 64 becomes a, FFFD, FFFD, FFFD, b, FFFD, c, FFFD, FFFD, d. */
	static const char ex[] = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
	check_repair(tok, ex, sizeof(ex) - 1, "a" R R R "b" R "c" R R "d");
	/* a surrogate (ED A0 80) and an overlong form (C0 AF): every byte
	 * on its own, since none can continue a valid character */
	check_repair(tok, "x\xED\xA0\x80y", 5, "x" R R R "y");
	check_repair(tok, "\xC0\xAF", 2, R R);
	/* a character cut off at the end: one U+FFFD */
	check_repair(tok, "end \xE6\x97", 6, "end " R);
	check_repair(tok, "\xFF\xFE", 2, R R);
#undef R
}

/* A NUL byte inside the text is encoded, not taken as its end. */
static void test_nul(const tok_tokenizer *tok)
{
	int32_t *ids = NULL;
	size_t n = 0;
	CHECK_RC(tok_encode(tok, "a\0b", 3, &ids, &n), SSMD_OK);
	char *text = NULL;
	size_t len = 0;
	CHECK_RC(tok_decode(tok, ids, n, &text, &len), SSMD_OK);
	CHECK(len == 3 && text && !memcmp(text, "a\0b", 3),
	      "text with a NUL byte does not round-trip");
	free(text);
	free(ids);
}

/* Random text from every plane (no surrogates, no unassigned code points,
 * kept only if already NFC): decode(encode(x)) must give x back. */
static void test_round_trip(const tok_tokenizer *tok, uint64_t seed)
{
	uint64_t s = seed;
	int bad = 0;
	for (int iter = 0; iter < 300; iter++) {
		utf8proc_uint8_t buf[1024];
		size_t len = 0;
		int chars = 1 + (int)((s >> 33) % 120);
		for (int c = 0; c < chars; c++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			uint32_t r = (uint32_t)(s >> 32);
			int32_t cp;
			switch (r % 4) {
			case 0: cp = 0x20 + (int32_t)(r >> 8) % 0x5F; break; /* ASCII */
			case 1: cp = (int32_t)(r >> 8) % 0x800; break;       /* 2 bytes */
			case 2: cp = (int32_t)(r >> 8) % 0x10000; break;     /* BMP */
			default: cp = (int32_t)(r >> 8) % 0x110000; break;   /* any */
			}
			if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF) ||
			    utf8proc_category(cp) == UTF8PROC_CATEGORY_CN)
				cp = ' ';
			len += (size_t)utf8proc_encode_char(cp, buf + len);
		}
		utf8proc_uint8_t *nfc = NULL;
		utf8proc_ssize_t nl = utf8proc_map(buf, (utf8proc_ssize_t)len, &nfc,
						   UTF8PROC_STABLE | UTF8PROC_COMPOSE);
		int is_nfc = nl == (utf8proc_ssize_t)len && !memcmp(nfc, buf, len);
		free(nfc);
		if (!is_nfc)
			continue;
		int32_t *ids = NULL;
		size_t n = 0;
		char *text = NULL;
		size_t tl = 0;
		if (tok_encode(tok, (const char *)buf, len, &ids, &n) ||
		    tok_decode(tok, ids, n, &text, &tl) || tl != len ||
		    memcmp(text, buf, len))
			bad++;
		free(ids);
		free(text);
	}
	CHECK(bad == 0, "%d random NFC strings did not round-trip (seed %llu)", bad,
	      (unsigned long long)seed);
}

/* Random id sequences, half of them single-byte tokens so characters are
 * cut between tokens and bytes are invalid: streaming them must give whole
 * UTF-8 chunks that add up to tok_decode's text (itself checked against
 * Hugging Face by the property test). */
static void test_stream_random(const tok_tokenizer *tok, uint64_t seed)
{
	int32_t singles[256];
	size_t n_singles = 0;
	for (int b = 0; b < 256; b++) {
		/* a single byte b, encoded alone, is one token when b is ASCII;
		 * other bytes come from "\xC3\xA9"-style pairs below */
		char c = (char)b;
		int32_t *ids = NULL;
		size_t n = 0;
		if (b < 0x80 && !tok_encode(tok, &c, 1, &ids, &n) && n == 1)
			singles[n_singles++] = ids[0];
		free(ids);
	}
	static const char *const multi[] = {"\xF0\x9F\x98\x80\xF0\x9F\x9A\x80",
					    "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",
					    "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB"};
	for (size_t m = 0; m < 3; m++) {
		int32_t *ids = NULL;
		size_t n = 0;
		if (!tok_encode(tok, multi[m], strlen(multi[m]), &ids, &n))
			for (size_t i = 0; i < n && n_singles < 256; i++)
				singles[n_singles++] = ids[i];
		free(ids);
	}
	CHECK(n_singles > 100, "only %zu short tokens found", n_singles);

	uint64_t s = seed;
	int32_t ids[40];
	for (int iter = 0; iter < 400; iter++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		size_t n = 1 + (size_t)((s >> 33) % 40);
		for (size_t i = 0; i < n; i++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			uint32_t r = (uint32_t)(s >> 32);
			ids[i] = r % 2 ? singles[(r >> 1) % n_singles]
				       : (int32_t)((r >> 1) % tok_vocab_size(tok));
		}
		char *text = NULL;
		size_t len = 0;
		CHECK_RC(tok_decode(tok, ids, n, &text, &len), SSMD_OK);
		char label[64];
		snprintf(label, sizeof(label), "random ids #%d (seed %llu)", iter,
			 (unsigned long long)seed);
		if (text)
			check_stream(tok, ids, n, text, len, label);
		free(text);
	}
}

static void test_errors(const tok_tokenizer *tok, const char *tmpdir)
{
	tok_tokenizer *t = NULL;
	char path[4096];

	CHECK_RC(tok_load("/nonexistent/tokenizer.json", &t), SSMD_ENOENT);
	CHECK(t == NULL, "failed load wrote its out-parameter");

	/* the real file cut in half: not JSON any more */
	size_t len = 0;
	char *data = test_file_read(neox_path, &len);
	CHECK(data != NULL, "cannot read %s", neox_path);
	if (data) {
		snprintf(path, sizeof(path), "%s/tok-truncated-%d.json", tmpdir, (int)getpid());
		CHECK(write_file(path, data, len / 2) == 0, "cannot write %s", path);
		CHECK_RC(tok_load(path, &t), SSMD_EFORMAT);
		remove(path);
		free(data);
	}

	static const struct {
		const char *json;
		int rc;
	} bad[] = {
		{"[1, 2]", SSMD_EFORMAT},
		{"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}, "
		 "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
		 "\"decoder\": {\"type\": \"ByteLevel\"}}", SSMD_EUNSUPPORTED},
		{"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, "
		 "\"normalizer\": {\"type\": \"NFKC\"}, "
		 "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
		 "\"decoder\": {\"type\": \"ByteLevel\"}}", SSMD_EUNSUPPORTED},
		/* a byte-level vocabulary without its alphabet */
		{"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
		 "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
		 "\"decoder\": {\"type\": \"ByteLevel\"}}", SSMD_EFORMAT},
		/* a merge of tokens that do not exist */
		{"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
		 "\"merges\": [\"a b\"]}, "
		 "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
		 "\"decoder\": {\"type\": \"ByteLevel\"}}", SSMD_EFORMAT},
		{"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}, "
		 "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
		 "\"decoder\": {\"type\": \"ByteLevel\"}}", SSMD_EFORMAT},
		/* an id that would need 8 GB of tables */
		{"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 2000000000}, "
		 "\"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
		 "\"decoder\": {\"type\": \"ByteLevel\"}}", SSMD_EFORMAT},
		{"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, "
		 "\"added_tokens\": [{\"id\": 2000000000, \"content\": \"x\"}], "
		 "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
		 "\"decoder\": {\"type\": \"ByteLevel\"}}", SSMD_EFORMAT},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(path, sizeof(path), "%s/tok-bad-%d-%zu.json", tmpdir, (int)getpid(), i);
		CHECK(write_file(path, bad[i].json, strlen(bad[i].json)) == 0,
		      "cannot write %s", path);
		CHECK_RC(tok_load(path, &t), bad[i].rc);
		remove(path);
		CHECK(t == NULL, "failed load %zu wrote its out-parameter", i);
	}

	/* unknown ids: an error, and the decoder keeps its state */
	int32_t ids[2] = {(int32_t)tok_vocab_size(tok), -1};
	char *text = NULL;
	size_t tl = 0;
	CHECK_RC(tok_decode(tok, ids, 1, &text, &tl), SSMD_ERANGE);
	CHECK_RC(tok_decode(tok, ids + 1, 1, &text, &tl), SSMD_ERANGE);
	CHECK(text == NULL, "failed decode wrote its out-parameter");

	/* "😀" is F0 9F 98 80; GPT-NeoX spells it as byte tokens, so the
	 * stream holds the first bytes back across a failed push */
	int32_t *e = NULL;
	size_t en = 0;
	CHECK_RC(tok_encode(tok, "\xF0\x9F\x98\x80", 4, &e, &en), SSMD_OK);
	tok_decoder *dec = NULL;
	CHECK_RC(tok_decoder_alloc(tok, &dec), SSMD_OK);
	CHECK(en >= 2, "emoji encoded as %zu tokens, expected several", en);
	if (dec && en >= 2) {
		char *out = NULL;
		size_t ol = 0;
		CHECK_RC(tok_decoder_push(dec, e[0], &out, &ol), SSMD_OK);
		CHECK(ol == 0, "first byte token of an emoji emitted %zu bytes", ol);
		free(out);
		out = NULL;
		CHECK_RC(tok_decoder_push(dec, -5, &out, &ol), SSMD_ERANGE);
		CHECK(out == NULL, "failed push wrote its out-parameter");
		size_t total = 0;
		for (size_t i = 1; i < en; i++) {
			CHECK_RC(tok_decoder_push(dec, e[i], &out, &ol), SSMD_OK);
			total += ol;
			if (i + 1 == en)
				CHECK(ol == 4 && !memcmp(out, "\xF0\x9F\x98\x80", 4),
				      "emoji not emitted whole at its last token");
			free(out);
		}
		CHECK(total == 4, "emoji streamed as %zu bytes", total);
		/* a stream cut inside a character ends in U+FFFD */
		CHECK_RC(tok_decoder_push(dec, e[0], &out, &ol), SSMD_OK);
		free(out);
		CHECK_RC(tok_decoder_flush(dec, &out, &ol), SSMD_OK);
		CHECK(ol == 3 && !memcmp(out, "\xEF\xBF\xBD", 3),
		      "unfinished character not flushed as U+FFFD");
		free(out);
	}
	tok_decoder_free(dec);
	tok_decoder_free(NULL);
	tok_free(NULL);
	free(e);
}

/* Two threads encode the same text with many distinct words (so they
 * keep overwriting each other's slots of the shared word cache) and must
 * both get what a separate, never-shared tokenizer gives. */
struct job {
	const tok_tokenizer *tok;
	const char *text;
	size_t len;
	const int32_t *want;
	size_t n_want;
	int failures;
};

static void *encode_many(void *arg)
{
	struct job *j = arg;
	for (int i = 0; i < 3; i++) {
		int32_t *ids = NULL;
		size_t n = 0;
		if (tok_encode(j->tok, j->text, j->len, &ids, &n) || n != j->n_want ||
		    memcmp(ids, j->want, n * sizeof(*ids)))
			j->failures++;
		free(ids);
	}
	return NULL;
}

static void test_threads(const tok_tokenizer *tok)
{
	/* 60000 random lower-case words of 1-12 letters: far more distinct
	 * words than cache slots per hash bucket */
	size_t cap = 60000 * 13 + 1, len = 0;
	char *text = malloc(cap);
	uint64_t s = 12345;
	for (int w = 0; w < 60000; w++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		int letters = 1 + (int)((s >> 33) % 12);
		for (int k = 0; k < letters; k++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			text[len++] = (char)('a' + (s >> 33) % 26);
		}
		text[len++] = ' ';
	}

	tok_tokenizer *fresh = NULL;
	int32_t *want = NULL;
	size_t n_want = 0;
	CHECK_RC(tok_load(neox_path, &fresh), SSMD_OK);
	CHECK_RC(fresh ? tok_encode(fresh, text, len, &want, &n_want) : SSMD_EINVAL,
		 SSMD_OK);
	if (want) {
		pthread_t th[2];
		struct job jobs[2];
		for (int i = 0; i < 2; i++) {
			jobs[i] = (struct job){tok, text, len, want, n_want, 0};
			pthread_create(&th[i], NULL, encode_many, &jobs[i]);
		}
		for (int i = 0; i < 2; i++)
			pthread_join(th[i], NULL);
		CHECK(jobs[0].failures == 0 && jobs[1].failures == 0,
		      "concurrent encodes differ from a private tokenizer's (%d, %d)",
		      jobs[0].failures, jobs[1].failures);
	}
	free(want);
	tok_free(fresh);
	free(text);
}

int main(void)
{
	const char *fixtures = getenv("SSMD_SHARED_FIXTURES");
	const char *tmp = getenv("TMPDIR");
	if (!fixtures) {
		SKIP("SSMD_SHARED_FIXTURES is not set");
		return check_summary("tok");
	}
	snprintf(neox_path, sizeof(neox_path),
		 "%s/../models/gpt-neox-20b-tokenizer.json", fixtures);

	tok_tokenizer *tok = NULL;
	CHECK_RC(tok_load(neox_path, &tok), SSMD_OK);
	if (!tok)
		return check_summary("tok");

	/* Hugging Face: get_vocab_size(with_added_tokens=True) is 50277 and
	 * token_to_id("<|endoftext|>") is 0 for this file */
	CHECK(tok_vocab_size(tok) == 50277, "vocab size %zu", tok_vocab_size(tok));
	CHECK(tok_token_id(tok, "<|endoftext|>") == 0, "<|endoftext|> id %d",
	      (int)tok_token_id(tok, "<|endoftext|>"));
	CHECK(tok_token_id(tok, "no such token at all") == -1, "unknown token found");

	test_fixture(tok, fixtures);
	test_invalid_utf8(tok);
	test_nul(tok);
	uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
	test_round_trip(tok, seed);
	test_stream_random(tok, seed);
	test_errors(tok, tmp ? tmp : "/tmp");
	test_threads(tok);
	tok_free(tok);
	return check_summary("tok");
}
