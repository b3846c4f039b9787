/*
 * bench_tok — tokenizer encode throughput on one core.
 *
 *   bench_tok [--tokenizer tokenizer.json] [FILE...]
 *
 * With files, each file is one row, encoded in one tok_encode call. Without,
 * the text is English that every Debian machine has: the licences in
 * /usr/share/common-licenses followed by the packages' /usr/share/doc/
 * NAME/copyright files, in name order, up to 4 MiB (the bytes column says
 * how much was found). It is timed twice: as one call, and as one call per
 * file (each call starts with an empty word cache, as daemon requests do).
 * The tokenizer defaults to the GPT-NeoX file of the shared models folder.
 *
 * Each row repeats its encodes for at least a second of the thread's CPU
 * time and reports the mean: MB/s counts input bytes (10^6 per MB),
 * tokens/s the ids produced.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/tok.h"

#define CORPUS_MAX (4u << 20)

/* A text and where each document in it ends. */
struct corpus {
	char *text;
	size_t len;
	size_t *ends;
	size_t n_docs;
};

/* CPU time of this thread: the figure is the speed of one core, whatever
 * else the machine is running. */
static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Appends the file at path as one document, stopping at CORPUS_MAX (or
 * without a limit when limit is 0). Returns 0 if the file was added. */
static int corpus_add(struct corpus *c, const char *path, size_t limit)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -1;
	size_t cap = c->len + 65536;
	int added = -1;
	for (;;) {
		char *p = realloc(c->text, cap + 1);
		if (!p)
			break;
		c->text = p;
		size_t got = fread(c->text + c->len, 1, cap - c->len, f);
		c->len += got;
		if (got == 0 || (limit && c->len >= limit))
			break;
		if (c->len == cap)
			cap *= 2;
	}
	if (limit && c->len > limit)
		c->len = limit;
	size_t *ends = realloc(c->ends, (c->n_docs + 1) * sizeof(*ends));
	if (ends) {
		c->ends = ends;
		if (c->n_docs == 0 || c->ends[c->n_docs - 1] < c->len)
			c->ends[c->n_docs++] = c->len;
		added = 0;
	}
	fclose(f);
	return added;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds every entry of dir in name order; with suffix, dir/NAME/suffix. */
static void corpus_add_dir(struct corpus *c, const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	char **names = NULL;
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char **p = realloc(names, (n + 1) * sizeof(*names));
		if (!p)
			break;
		names = p;
		names[n] = strdup(e->d_name);
		if (names[n])
			n++;
	}
	closedir(d);
	qsort(names, n, sizeof(*names), name_cmp);
	for (size_t i = 0; i < n; i++) {
		char path[4096];
		if (suffix)
			snprintf(path, sizeof(path), "%s/%s/%s", dir, names[i], suffix);
		else
			snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if (c->len < CORPUS_MAX)
			corpus_add(c, path, CORPUS_MAX);
		free(names[i]);
	}
	free(names);
}

/* Encodes the corpus (as one call, or one call per document) repeatedly
 * for at least a second and prints one row. */
static int bench_row(const tok_tokenizer *tok, const char *label,
		     const struct corpus *c, int per_doc)
{
	size_t tokens = 0, reps = 0;
	double start = now(), elapsed;

	do {
		size_t from = 0;
		tokens = 0;
		for (size_t d = 0; d < (per_doc ? c->n_docs : 1); d++) {
			size_t to = per_doc ? c->ends[d] : c->len;
			int32_t *ids = NULL;
			size_t n = 0;
			int rc = tok_encode(tok, c->text + from, to - from, &ids, &n);
			if (rc) {
				fprintf(stderr, "bench_tok: %s: %s\n", label, ssmd_errmsg());
				return rc;
			}
			tokens += n;
			free(ids);
			from = to;
		}
		reps++;
		elapsed = now() - start;
	} while (elapsed < 1.0);

	double per_rep = elapsed / (double)reps;
	printf("| %-44s | %10zu | %9zu | %7.1f | %11.0f |\n", label, c->len, tokens,
	       (double)c->len / per_rep / 1e6, (double)tokens / per_rep);
	return 0;
}

int main(int argc, char **argv)
{
	const char *path = TOK_BENCH_DEFAULT_TOKENIZER;
	int first_file = argc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
			path = argv[++i];
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") ||
			   argv[i][0] == '-') {
			fprintf(argv[i][1] == 'h' || argv[i][1] == '-' ? stdout : stderr,
				"usage: bench_tok [--tokenizer tokenizer.json] [FILE...]\n");
			return argv[i][1] == 'h' ? 0 : 2;
		} else {
			first_file = i;
			break;
		}
	}

	tok_tokenizer *tok = NULL;
	int rc = tok_load(path, &tok);
	if (rc) {
		fprintf(stderr, "bench_tok: %s\n", ssmd_errmsg());
		return 1;
	}
	printf("tokenizer: %s (%zu tokens), one thread\n\n", path, tok_vocab_size(tok));
	printf("| %-44s | %10s | %9s | %7s | %11s |\n", "text source", "bytes", "tokens",
	       "MB/s", "tokens/s");
	printf("|%.46s|%.12s|%.11s|%.9s|%.13s|\n",
	       "----------------------------------------------", "------------",
	       "-----------", "---------", "-------------");

	if (first_file < argc) {
		for (int i = first_file; i < argc && !rc; i++) {
			struct corpus c = {0};
			if (corpus_add(&c, argv[i], 0) || !c.len) {
				fprintf(stderr, "bench_tok: cannot read %s\n", argv[i]);
				rc = 1;
			} else {
				rc = bench_row(tok, argv[i], &c, 0);
			}
			free(c.text);
			free(c.ends);
		}
	} else {
		struct corpus c = {0};
		corpus_add_dir(&c, "/usr/share/common-licenses", NULL);
		corpus_add_dir(&c, "/usr/share/doc", "copyright");
		if (!c.len) {
			fprintf(stderr, "bench_tok: no text under /usr/share; give a FILE\n");
			rc = 1;
		} else {
			char label[64];
			rc = bench_row(tok, "Debian licences + copyright, one call", &c, 0);
			snprintf(label, sizeof(label), "same, one call per file (%zu files)",
				 c.n_docs);
			if (!rc)
				rc = bench_row(tok, label, &c, 1);
		}
		free(c.text);
		free(c.ends);
	}
	tok_free(tok);
	return rc ? 1 : 0;
}
