/*
 * ssm-forward — runs a Mamba checkpoint over a token sequence and writes every
 * position's logits (float32 little-endian, [n_tokens][vocab]) and optionally
 * the final canonical state (ssm_state_encode bytes).
 *
 *   ssm-forward --model DIR (--tokens 1,2,3 | --tokens-file F) --logits OUT.f32
 *               [--state OUT.bin] [--backend auto|cpu|cuda] [--threads N]
 *
 * Exit status: 0 on success, 2 on bad arguments, 1 on any other failure.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ssm.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ssm-forward --model DIR (--tokens 1,2,3 | --tokens-file F)\n"
		"                   --logits OUT.f32 [--state OUT.bin]\n"
		"                   [--backend auto|cpu|cuda] [--threads N]\n"
		"Writes every position's logits as float32 little-endian\n"
		"[n_tokens][vocab] and optionally the final canonical state.\n"
		"--tokens-file holds one token ID per line.\n");
}

/* Appends one parsed ID to a growing array. */
static int push(int32_t **v, size_t *n, size_t *cap, long id)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 256;
		int32_t *nv = realloc(*v, nc * sizeof *nv);
		if (!nv)
			return 0;
		*v = nv;
		*cap = nc;
	}
	(*v)[(*n)++] = (int32_t)id;
	return 1;
}

/* Parses IDs separated by sep characters (commas, or newlines with
 * surrounding blanks). Returns 0 and a message on a bad ID. */
static int parse_ids(const char *text, const char *what, int32_t **out,
		     size_t *n_out)
{
	int32_t *v = NULL;
	size_t n = 0, cap = 0;
	const char *p = text;

	while (*p) {
		char *end;
		long id;
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' ||
		       *p == ',')
			p++;
		if (!*p)
			break;
		errno = 0;
		id = strtol(p, &end, 10);
		if (end == p || errno || id < 0 || id > INT32_MAX ||
		    (*end && !strchr(" \t\r\n,", *end))) {
			fprintf(stderr, "ssm-forward: %s: bad token ID near "
				"'%.20s'\n", what, p);
			free(v);
			return 0;
		}
		if (!push(&v, &n, &cap, id)) {
			fprintf(stderr, "ssm-forward: out of memory\n");
			free(v);
			return 0;
		}
		p = end;
	}
	if (n == 0) {
		fprintf(stderr, "ssm-forward: %s: no token IDs\n", what);
		free(v);
		return 0;
	}
	*out = v;
	*n_out = n;
	return 1;
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0, k;

	if (!f)
		return NULL;
	do {
		if (cap - len < 4096) {
			char *nb = realloc(buf, cap ? cap * 2 : 8192);
			if (!nb) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = nb;
			cap = cap ? cap * 2 : 8192;
		}
		k = fread(buf + len, 1, cap - len - 1, f);
		len += k;
	} while (k > 0);
	buf[len] = 0;
	fclose(f);
	return buf;
}

static int write_all(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");

	if (!f || fwrite(data, 1, len, f) != len) {
		fprintf(stderr, "ssm-forward: %s: %s\n", path, strerror(errno));
		if (f)
			fclose(f);
		return 0;
	}
	if (fclose(f) != 0) {
		fprintf(stderr, "ssm-forward: %s: %s\n", path, strerror(errno));
		return 0;
	}
	return 1;
}

int main(int argc, char **argv)
{
	const char *model_dir = NULL, *tokens_arg = NULL, *tokens_file = NULL;
	const char *logits_path = NULL, *state_path = NULL;
	ssm_backend_opts opts;
	ssm_model *m = NULL;
	ssm_backend *b = NULL;
	ssm_state *st = NULL;
	int32_t *tokens = NULL;
	size_t n_tokens = 0;
	float *logits = NULL;
	void *enc = NULL;
	int rc = 1;

	ssm_backend_opts_init(&opts);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		}
		if (!val) {
			fprintf(stderr, "ssm-forward: %s needs a value\n", a);
			usage(stderr);
			return 2;
		}
		i++;
		if (!strcmp(a, "--model")) {
			model_dir = val;
		} else if (!strcmp(a, "--tokens")) {
			tokens_arg = val;
		} else if (!strcmp(a, "--tokens-file")) {
			tokens_file = val;
		} else if (!strcmp(a, "--logits")) {
			logits_path = val;
		} else if (!strcmp(a, "--state")) {
			state_path = val;
		} else if (!strcmp(a, "--backend")) {
			if (!strcmp(val, "cpu"))
				opts.kind = SSM_BACKEND_CPU;
			else if (!strcmp(val, "cuda"))
				opts.kind = SSM_BACKEND_CUDA;
			else if (!strcmp(val, "auto"))
				opts.kind = SSM_BACKEND_AUTO;
			else {
				fprintf(stderr, "ssm-forward: --backend must be "
					"auto, cpu or cuda\n");
				return 2;
			}
		} else if (!strcmp(a, "--threads")) {
			char *end;
			long t = strtol(val, &end, 10);
			if (*end || t < 0 || t > 1024) {
				fprintf(stderr, "ssm-forward: bad --threads '%s'\n",
					val);
				return 2;
			}
			opts.n_threads = (int)t;
		} else {
			fprintf(stderr, "ssm-forward: unknown argument '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (!model_dir || !logits_path || !tokens_arg == !tokens_file) {
		fprintf(stderr, "ssm-forward: need --model, --logits and exactly "
			"one of --tokens / --tokens-file\n");
		usage(stderr);
		return 2;
	}
	if (tokens_arg) {
		if (!parse_ids(tokens_arg, "--tokens", &tokens, &n_tokens))
			return 2;
	} else {
		char *text = read_file(tokens_file);
		if (!text) {
			fprintf(stderr, "ssm-forward: %s: %s\n", tokens_file,
				strerror(errno));
			return 2;
		}
		int ok = parse_ids(text, tokens_file, &tokens, &n_tokens);
		free(text);
		if (!ok)
			return 2;
	}

	if (ssm_model_load(model_dir, &m) || ssm_backend_open(m, &opts, &b)) {
		fprintf(stderr, "ssm-forward: %s\n", ssmd_errmsg());
		goto done;
	}
	size_t vocab = (size_t)ssm_model_config(m)->vocab_size;
	logits = malloc(n_tokens * vocab * sizeof *logits);
	if (!logits) {
		fprintf(stderr, "ssm-forward: out of memory for %zu x %zu logits\n",
			n_tokens, vocab);
		goto done;
	}
	ssm_prefill_args pa = { .tokens = tokens, .n_tokens = n_tokens,
				.all_logits = logits };
	if (ssm_prefill(b, 0, &pa)) {
		fprintf(stderr, "ssm-forward: %s\n", ssmd_errmsg());
		goto done;
	}
	if (!write_all(logits_path, logits, n_tokens * vocab * sizeof *logits))
		goto done;
	if (state_path) {
		size_t len;
		if (ssm_model_state_alloc(m, &st) || ssm_slot_get(b, 0, st)) {
			fprintf(stderr, "ssm-forward: %s\n", ssmd_errmsg());
			goto done;
		}
		len = ssm_state_encoded_size(st);
		enc = malloc(len);
		if (!enc || ssm_state_encode(st, enc, len)) {
			fprintf(stderr, "ssm-forward: cannot encode the state\n");
			goto done;
		}
		if (!write_all(state_path, enc, len))
			goto done;
	}
	rc = 0;
done:
	free(enc);
	ssm_state_free(st);
	free(logits);
	free(tokens);
	ssm_backend_close(b);
	ssm_model_free(m);
	return rc;
}
