/*
 * ssm-tokenize — the tokenizer on the command line, one JSON object a line.
 *
 *   ssm-tokenize --tokenizer tokenizer.json            {"text": ...}  → {"text": ..., "ids": [...]}
 *   ssm-tokenize --tokenizer tokenizer.json --decode   {"ids": [...]} → {"text": ...}
 *
 * Reads stdin to its end and writes one output line per non-blank input
 * line, flushed at once, so it also works as a co-process. A line that
 * cannot be handled (not JSON, no "text"/"ids", an unknown ID) gets
 * {"error": "..."} in its place and the exit status becomes 1; the lines
 * after it are still handled. Exit status 2: bad arguments or tokenizer file.
 * Input text that is not valid UTF-8 is tokenised as tok_encode does
 * (U+FFFD in place of each invalid sequence) and echoed in that repaired
 * form, so the output is always valid JSON. An escaped U+0000 in an input
 * "text" is refused (the JSON reader keeps C strings and would cut the
 * text there); decoded text containing U+0000 is written out whole.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tok.h"
#include "tok_impl.h"

/* Writes s[0..n) as a JSON string: quotes, backslashes and control
 * characters escaped, everything else (valid UTF-8, tok_decode's output)
 * as is. */
static void put_json_string(const char *s, size_t n, FILE *f)
{
	putc('"', f);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c == '\r')
			fputs("\\r", f);
		else if (c < 0x20 || c == 0x7F)
			fprintf(f, "\\u%04x", c);
		else
			putc(c, f);
	}
	putc('"', f);
}

static void put_error(const char *what, int rc)
{
	char msg[512];
	snprintf(msg, sizeof(msg), "%s: %s (%s)", what, ssmd_errmsg(),
		 ssmd_strerror(rc));
	fputs("{\"error\": ", stdout);
	put_json_string(msg, strlen(msg), stdout);
	fputs("}\n", stdout);
}

/* Whether the JSON text holds the escape \u0000 (an escaping backslash:
 * one preceded by an even number of backslashes). */
static int has_nul_escape(const char *line, size_t len)
{
	for (size_t i = 0; i + 6 <= len; i++) {
		if (memcmp(line + i, "\\u0000", 6))
			continue;
		size_t slashes = 0;
		while (slashes < i && line[i - 1 - slashes] == '\\')
			slashes++;
		if (slashes % 2 == 0)
			return 1;
	}
	return 0;
}

static int encode_line(const tok_tokenizer *tok, const cJSON *obj,
		       const char *line, size_t line_len)
{
	const cJSON *text = cJSON_GetObjectItemCaseSensitive(obj, "text");
	struct tok_buf echo = {0};
	int32_t *ids = NULL;
	size_t n = 0;
	int rc;

	if (!cJSON_IsString(text)) {
		put_error("input", ssmd_err_set(SSMD_EFORMAT, "no \"text\" string"));
		return 1;
	}
	if (has_nul_escape(line, line_len)) {
		put_error("input", ssmd_err_set(SSMD_EUNSUPPORTED,
						"text holds U+0000, which this tool cannot carry"));
		return 1;
	}
	size_t len = strlen(text->valuestring);
	if ((rc = tok_encode(tok, text->valuestring, len, &ids, &n)) ||
	    (rc = tok_utf8_repair(&echo, (const uint8_t *)text->valuestring, len,
				  false, NULL))) {
		put_error("encode", rc);
		free(ids);
		return 1;
	}
	fputs("{\"text\": ", stdout);
	put_json_string(echo.p ? echo.p : "", echo.len, stdout);
	fputs(", \"ids\": [", stdout);
	for (size_t i = 0; i < n; i++)
		printf(i ? ", %d" : "%d", (int)ids[i]);
	fputs("]}\n", stdout);
	free(echo.p);
	free(ids);
	return 0;
}

static int decode_line(const tok_tokenizer *tok, const cJSON *obj)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(obj, "ids");
	const cJSON *e;
	int32_t *ids = NULL;
	size_t n = 0;
	char *text = NULL;
	size_t len;
	int failed = 1, rc;

	if (!cJSON_IsArray(arr)) {
		put_error("input", ssmd_err_set(SSMD_EFORMAT, "no \"ids\" array"));
		return 1;
	}
	ids = malloc(((size_t)cJSON_GetArraySize(arr) + 1) * sizeof(*ids));
	if (!ids) {
		put_error("input", ssmd_err_set(SSMD_ENOMEM, "ids"));
		return 1;
	}
	cJSON_ArrayForEach(e, arr) {
		/* range first: casting an out-of-range double is undefined */
		if (!cJSON_IsNumber(e) || e->valuedouble < INT32_MIN ||
		    e->valuedouble > INT32_MAX ||
		    e->valuedouble != (double)(int32_t)e->valuedouble) {
			put_error("input", ssmd_err_set(SSMD_EFORMAT,
							"ids[%zu] is not a 32-bit integer", n));
			goto out;
		}
		ids[n++] = (int32_t)e->valuedouble;
	}
	rc = tok_decode(tok, ids, n, &text, &len);
	if (rc) {
		put_error("decode", rc);
		goto out;
	}
	fputs("{\"text\": ", stdout);
	put_json_string(text, len, stdout);
	fputs("}\n", stdout);
	failed = 0;
out:
	free(text);
	free(ids);
	return failed;
}

static void usage(FILE *f)
{
	fputs("usage: ssm-tokenize --tokenizer FILE [--decode]\n"
	      "  reads JSON lines {\"text\": ...} on stdin and writes\n"
	      "  {\"text\": ..., \"ids\": [...]}; with --decode reads {\"ids\": [...]}\n"
	      "  and writes {\"text\": ...}\n",
	      f);
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	int decode = 0;
	tok_tokenizer *tok = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t got;
	int status = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
			path = argv[++i];
		} else if (!strcmp(argv[i], "--decode")) {
			decode = 1;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!path) {
		usage(stderr);
		return 2;
	}
	int rc = tok_load(path, &tok);
	if (rc) {
		fprintf(stderr, "ssm-tokenize: %s (%s)\n", ssmd_errmsg(),
			ssmd_strerror(rc));
		return 2;
	}

	while ((got = getline(&line, &cap, stdin)) > 0) {
		size_t len = (size_t)got;
		while (len && (line[len - 1] == '\n' || line[len - 1] == '\r' ||
			       line[len - 1] == ' ' || line[len - 1] == '\t'))
			len--;
		if (!len)
			continue;
		cJSON *obj = cJSON_ParseWithLength(line, len);
		if (!cJSON_IsObject(obj)) {
			put_error("input", ssmd_err_set(SSMD_EFORMAT,
							"not a JSON object"));
			status = 1;
		} else if (decode ? decode_line(tok, obj)
				  : encode_line(tok, obj, line, len)) {
			status = 1;
		}
		cJSON_Delete(obj);
		fflush(stdout);
	}
	if (ferror(stdin)) {
		fprintf(stderr, "ssm-tokenize: reading stdin: %s\n", strerror(errno));
		status = 2;
	}
	free(line);
	tok_free(tok);
	return status;
}
