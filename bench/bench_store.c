/*
 * bench_store — the state library's compression ratio and put/get latency.
 *
 *   bench_store [--reps N] [--dir DIR] [--sync-normal] [--state FILE]...
 *
 * For states shaped like mamba-130m (24 x 1536, ~3.0 MB) and mamba-2.8b
 * (64 x 5120, ~26 MB), filled with
 *   random  uniform random f32 in [-1, 1) (incompressible mantissas),
 *   smooth  a slowly varying synthetic signal (compressible),
 * plus every --state FILE (an encoded canonical state, e.g. written by
 * `ssm-forward --state`), prints per lossy request: what the codec chose,
 * the ratio raw/stored, median put latency (compress + commit with the
 * library's default synchronous=FULL) and get latency (read + decompress +
 * verify) over N reps (default 20), MB/s of raw bytes, and the codec alone
 * (encode / decode medians) to separate CPU from database time.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "ssm_state.h"
#include "store.h"

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static uint64_t rng = 88172645463325252ull;

static uint32_t xorshift(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 11);
}

/* A state of the given shape filled with random or smooth values. */
static void *synthetic(uint32_t n_layer, uint32_t d_inner, uint32_t d_model,
		       int smooth, size_t *len)
{
	ssm_state *st;
	size_t n;
	void *buf;

	if (ssm_state_alloc(SSM_ARCH_MAMBA1, n_layer, d_inner, 16, 4, d_model,
			    &st))
		return NULL;
	st->n_tokens = 300;
	n = (ssm_state_encoded_size(st) - SSM_STATE_HEADER_SIZE) / 4;
	for (size_t i = 0; i < n; i++) {
		if (smooth) /* decaying wave along d_state, varying by channel */
			st->ssm[i] = (float)((i % 16 + 1) * 0.01 *
					     sin((double)(i / 16) * 0.001));
		else
			st->ssm[i] = (float)xorshift() / 2147483648.0f - 1.0f;
	}
	*len = ssm_state_encoded_size(st);
	buf = malloc(*len);
	if (buf && ssm_state_encode(st, buf, *len)) {
		free(buf);
		buf = NULL;
	}
	ssm_state_free(st);
	return buf;
}

static void *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	void *buf = NULL;
	long n;

	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 &&
	    fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n)) &&
	    fread(buf, 1, (size_t)n, f) == (size_t)n) {
		*len = (size_t)n;
	} else {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

static const char *shape_name(const void *raw, size_t len, char *buf,
			      size_t cap)
{
	ssm_state_layout lay;
	uint32_t nl, di;

	if (ssm_state_layout_of(raw, len, &lay))
		return "?";
	memcpy(&nl, (const uint8_t *)raw + 12, 4);
	memcpy(&di, (const uint8_t *)raw + 16, 4);
	if (nl == 24 && di == 1536)
		return "mamba-130m";
	if (nl == 64 && di == 5120)
		return "mamba-2.8b";
	snprintf(buf, cap, "%ux%u", nl, di);
	return buf;
}

/* One table row per lossy request for one state. */
static int bench_one(store *s, const char *data, const void *raw, size_t len,
		     int reps)
{
	static const char *const req_name[] = { "none", "bf16", "f16" };
	char shape_buf[32], (*ids)[STORE_ID_SIZE];
	const char *shape = shape_name(raw, len, shape_buf, sizeof(shape_buf));
	double *put_ms = calloc((size_t)reps, sizeof(double));
	double *get_ms = calloc((size_t)reps, sizeof(double));
	double *enc_ms = calloc((size_t)reps, sizeof(double));
	double *dec_ms = calloc((size_t)reps, sizeof(double));
	double mb = len / 1e6;
	int rc = 0;

	ids = calloc((size_t)reps, sizeof(*ids));
	if (!put_ms || !get_ms || !enc_ms || !dec_ms || !ids)
		return SSMD_ENOMEM;
	for (int lossy = STORE_LOSSY_NONE; lossy <= STORE_LOSSY_F16 && !rc;
	     lossy++) {
		store_put p = { .raw = raw, .raw_len = len,
				.kind = STORE_KIND_SNAPSHOT, .lossy = lossy };
		size_t stored = 0;
		int codec = 0;

		for (int r = 0; r < reps; r++) {
			void *enc = NULL, *dec = NULL;
			size_t elen;
			uint64_t hash;
			double t0 = now_ms();

			rc = store_codec_encode(raw, len, lossy, &enc, &elen,
						&codec, &hash);
			enc_ms[r] = now_ms() - t0;
			if (rc)
				break;
			t0 = now_ms();
			rc = store_codec_decode(enc, elen, codec, len, hash,
						&dec);
			dec_ms[r] = now_ms() - t0;
			stored = elen;
			free(enc);
			free(dec);
			if (rc)
				break;
		}
		for (int r = 0; r < reps && !rc; r++) {
			double t0 = now_ms();

			rc = store_state_put(s, &p, ids[r]);
			put_ms[r] = now_ms() - t0;
		}
		for (int r = 0; r < reps && !rc; r++) {
			void *got = NULL;
			size_t glen;
			double t0 = now_ms();

			rc = store_state_get(s, ids[r], &got, &glen, NULL);
			get_ms[r] = now_ms() - t0;
			free(got);
		}
		if (rc) {
			fprintf(stderr, "bench_store: %s\n", ssmd_errmsg());
			break;
		}
		{
			double pm = median(put_ms, reps), gm = median(get_ms, reps);

			printf("| %-10s | %-7s | %5.1f | %-4s | %-16s | %5.2f |"
			       " %7.1f | %9.0f | %7.1f | %8.0f | %6.1f | %6.1f |\n",
			       shape, data, mb, req_name[lossy],
			       store_codec_name(codec), (double)len / stored,
			       pm, mb / (pm / 1e3), gm, mb / (gm / 1e3),
			       median(enc_ms, reps), median(dec_ms, reps));
			fflush(stdout);
		}
		/* keep the library small between rows (not timed) */
		for (int r = 0; r < reps; r++)
			store_state_delete(s, ids[r], 1);
	}
	free(ids);
	free(put_ms);
	free(get_ms);
	free(enc_ms);
	free(dec_ms);
	return rc;
}

int main(int argc, char **argv)
{
	const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	const char *files[16];
	int n_files = 0, reps = 20, rc = 0;
	store_opts opts = { 0 };
	char path[512];
	store *s;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
			reps = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
			dir = argv[++i];
		} else if (!strcmp(argv[i], "--sync-normal")) {
			opts.sync_normal = 1;
		} else if (!strcmp(argv[i], "--state") && i + 1 < argc &&
			   n_files < 16) {
			files[n_files++] = argv[++i];
		} else {
			fprintf(stderr, "usage: bench_store [--reps N] [--dir DIR] "
				"[--sync-normal] [--state FILE]...\n");
			return 2;
		}
	}
	if (reps < 1)
		reps = 1;
	snprintf(path, sizeof(path), "%s/bench_store-%d.db", dir, (int)getpid());
	if (store_open(path, &opts, &s)) {
		fprintf(stderr, "bench_store: %s\n", ssmd_errmsg());
		return 1;
	}
	printf("state library: put = compress + commit (synchronous=%s), get = "
	       "read + decompress + verify; medians of %d\n\n",
	       opts.sync_normal ? "NORMAL" : "FULL", reps);
	printf("| shape      | data    |    MB | req  | stored as        | ratio |"
	       "  put ms |  put MB/s |  get ms | get MB/s | enc ms | dec ms |\n");
	printf("|------------|---------|-------|------|------------------|-------|"
	       "---------|-----------|---------|----------|--------|--------|\n");
	for (int shape = 0; shape < 2 && !rc; shape++) {
		uint32_t nl = shape ? 64 : 24, di = shape ? 5120 : 1536,
			 dm = shape ? 2560 : 768;

		for (int smooth = 0; smooth < 2 && !rc; smooth++) {
			size_t len;
			void *raw = synthetic(nl, di, dm, smooth, &len);

			rc = raw ? bench_one(s, smooth ? "smooth" : "random", raw,
					     len, reps) : SSMD_ENOMEM;
			free(raw);
		}
	}
	for (int i = 0; i < n_files && !rc; i++) {
		size_t len;
		void *raw = read_file(files[i], &len);

		if (!raw) {
			fprintf(stderr, "bench_store: cannot read %s\n", files[i]);
			rc = 1;
			break;
		}
		rc = bench_one(s, "engine", raw, len, reps);
		free(raw);
	}
	store_close(s);
	{
		static const char *const suffix[] = { "", "-wal", "-shm" };

		for (int i = 0; i < 3; i++) {
			char p[600];

			snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
			unlink(p);
		}
	}
	return rc ? 1 : 0;
}
