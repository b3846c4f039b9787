/*
 * ssm-mkmodel — writes a random-weight Hugging Face MambaForCausalLM directory
 * (config.json + model.safetensors [+ tokenizer.json]) of any shape and dtype.
 *
 * Used for demos and benchmarks that need real-shaped models without network
 * access (mamba-130m is --d-model 768 --n-layer 24, 1.4b is 2048 x 48, 2.8b is
 * 2560 x 64; vocab 50280). Weights follow the initialisation of the reference
 * mamba_ssm implementation so activations stay finite at any depth:
 *   embedding           ~ N(0, 0.02)
 *   in/x/dt-free linear ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))   (kaiming, a=sqrt 5)
 *   out_proj            ~ the same, divided by sqrt(n_layer)
 *   conv1d weight, bias ~ U(-1/sqrt(d_conv), 1/sqrt(d_conv))
 *   dt_proj.weight      ~ U(-dt_rank^-1/2, dt_rank^-1/2)
 *   dt_proj.bias        = softplus^-1(dt), dt = exp(U(log 1e-3, log 1e-1)) >= 1e-4
 *   A_log[c][s]         = log(s + 1);  D = 1;  norm weights = 1;  linear biases 0
 * Every tensor draws from its own stream keyed by (seed, tensor name), so the
 * weights do not depend on write order. Tensors are generated and written in
 * chunks: a 2.8b model needs no more than a few MB of memory.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ssm_impl.h"

typedef enum init_kind {
	INIT_NORMAL,    /* N(0, a) */
	INIT_UNIFORM,   /* U(-a, a) */
	INIT_CONST,     /* a */
	INIT_A_LOG,     /* log(column + 1) */
	INIT_DT_BIAS,   /* softplus^-1 of a log-uniform dt */
} init_kind;

typedef struct spec {
	char name[96];
	int ndim;
	int64_t shape[3];
	init_kind init;
	double a;
	int64_t cols; /* row length (for INIT_A_LOG) */
	size_t offset, nbytes;
} spec;

typedef struct opts {
	const char *out, *tokenizer;
	int d_model, n_layer, vocab, d_state, d_conv, expand, dt_rank;
	int use_bias, use_conv_bias, tie;
	double eps;
	ssm_dtype dtype;
	uint64_t seed;
} opts;

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in (0, 1): top 53 bits, never 0. */
static double unif(uint64_t *s)
{
	return ((double)(splitmix64(s) >> 11) + 0.5) * 0x1p-53;
}

static uint64_t name_hash(const char *name, uint64_t seed)
{
	uint64_t h = 1469598103934665603ull ^ seed; /* FNV-1a */

	for (; *name; name++)
		h = (h ^ (uint8_t)*name) * 1099511628211ull;
	return h;
}

static double draw(const spec *sp, uint64_t *rng, size_t i)
{
	switch (sp->init) {
	case INIT_NORMAL: /* Box-Muller, one value per pair of uniforms */
		return sp->a * sqrt(-2.0 * log(unif(rng))) *
		       cos(2.0 * M_PI * unif(rng));
	case INIT_UNIFORM:
		return sp->a * (2.0 * unif(rng) - 1.0);
	case INIT_CONST:
		return sp->a;
	case INIT_A_LOG:
		return log((double)(i % (size_t)sp->cols) + 1.0);
	case INIT_DT_BIAS: {
		double dt = exp(unif(rng) * (log(0.1) - log(1e-3)) + log(1e-3));
		if (dt < 1e-4)
			dt = 1e-4;
		return dt + log(-expm1(-dt)); /* inverse of softplus */
	}
	}
	return 0.0;
}

static size_t dtype_size(ssm_dtype d)
{
	return d == SSM_DTYPE_F32 ? 4 : 2;
}

static const char *dtype_name(ssm_dtype d)
{
	return d == SSM_DTYPE_F32 ? "F32" : d == SSM_DTYPE_F16 ? "F16" : "BF16";
}

static void add(spec *v, int *n, const char *name, int ndim, int64_t d0,
		int64_t d1, int64_t d2, init_kind init, double a)
{
	spec *sp = &v[(*n)++];

	memset(sp, 0, sizeof *sp);
	snprintf(sp->name, sizeof sp->name, "%s", name);
	sp->ndim = ndim;
	sp->shape[0] = d0;
	sp->shape[1] = d1;
	sp->shape[2] = d2;
	sp->init = init;
	sp->a = a;
	sp->cols = ndim > 1 ? d1 : 1;
}

static int cmp_spec(const void *a, const void *b)
{
	return strcmp(((const spec *)a)->name, ((const spec *)b)->name);
}

/* The tensor list of MambaForCausalLM for o, sorted by name. */
static spec *build_specs(const opts *o, int *n_out)
{
	int d = o->d_model, di = o->expand * o->d_model, r = o->dt_rank;
	int n = 0;
	spec *v = calloc((size_t)o->n_layer * 12 + 4, sizeof *v);
	char nm[96];

	if (!v)
		return NULL;
	add(v, &n, "backbone.embeddings.weight", 2, o->vocab, d, 0, INIT_NORMAL,
	    0.02);
	add(v, &n, "backbone.norm_f.weight", 1, d, 0, 0, INIT_CONST, 1.0);
	if (!o->tie)
		add(v, &n, "lm_head.weight", 2, o->vocab, d, 0, INIT_NORMAL,
		    0.02);
	for (int l = 0; l < o->n_layer; l++) {
#define LNAME(suffix) (snprintf(nm, sizeof nm, "backbone.layers.%d.%s", l, suffix), nm)
		add(v, &n, LNAME("norm.weight"), 1, d, 0, 0, INIT_CONST, 1.0);
		add(v, &n, LNAME("mixer.in_proj.weight"), 2, 2 * di, d, 0,
		    INIT_UNIFORM, 1.0 / sqrt(d));
		if (o->use_bias)
			add(v, &n, LNAME("mixer.in_proj.bias"), 1, 2 * di, 0, 0,
			    INIT_CONST, 0.0);
		add(v, &n, LNAME("mixer.conv1d.weight"), 3, di, 1, o->d_conv,
		    INIT_UNIFORM, 1.0 / sqrt(o->d_conv));
		if (o->use_conv_bias)
			add(v, &n, LNAME("mixer.conv1d.bias"), 1, di, 0, 0,
			    INIT_UNIFORM, 1.0 / sqrt(o->d_conv));
		add(v, &n, LNAME("mixer.x_proj.weight"), 2, r + 2 * o->d_state,
		    di, 0, INIT_UNIFORM, 1.0 / sqrt(di));
		add(v, &n, LNAME("mixer.dt_proj.weight"), 2, di, r, 0,
		    INIT_UNIFORM, 1.0 / sqrt(r));
		add(v, &n, LNAME("mixer.dt_proj.bias"), 1, di, 0, 0,
		    INIT_DT_BIAS, 0.0);
		add(v, &n, LNAME("mixer.A_log"), 2, di, o->d_state, 0,
		    INIT_A_LOG, 0.0);
		add(v, &n, LNAME("mixer.D"), 1, di, 0, 0, INIT_CONST, 1.0);
		add(v, &n, LNAME("mixer.out_proj.weight"), 2, d, di, 0,
		    INIT_UNIFORM, 1.0 / sqrt(di) / sqrt(o->n_layer));
		if (o->use_bias)
			add(v, &n, LNAME("mixer.out_proj.bias"), 1, d, 0, 0,
			    INIT_CONST, 0.0);
#undef LNAME
	}
	qsort(v, (size_t)n, sizeof *v, cmp_spec);
	*n_out = n;
	return v;
}

static int write_config(const opts *o, const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return ssmd_err_set(SSMD_EIO, "%s: %s", path, strerror(errno));
	fprintf(f,
		"{\n"
		"  \"architectures\": [\"MambaForCausalLM\"],\n"
		"  \"model_type\": \"mamba\",\n"
		"  \"bos_token_id\": 0,\n"
		"  \"eos_token_id\": 0,\n"
		"  \"pad_token_id\": 0,\n"
		"  \"hidden_size\": %d,\n"
		"  \"intermediate_size\": %d,\n"
		"  \"num_hidden_layers\": %d,\n"
		"  \"state_size\": %d,\n"
		"  \"conv_kernel\": %d,\n"
		"  \"expand\": %d,\n"
		"  \"time_step_rank\": %d,\n"
		"  \"vocab_size\": %d,\n"
		"  \"use_bias\": %s,\n"
		"  \"use_conv_bias\": %s,\n"
		"  \"residual_in_fp32\": true,\n"
		"  \"layer_norm_epsilon\": %.9g,\n"
		"  \"tie_word_embeddings\": %s,\n"
		"  \"hidden_act\": \"silu\",\n"
		"  \"initializer_range\": 0.02,\n"
		"  \"dtype\": \"%s\"\n"
		"}\n",
		o->d_model, o->expand * o->d_model, o->n_layer, o->d_state,
		o->d_conv, o->expand, o->dt_rank, o->vocab,
		o->use_bias ? "true" : "false",
		o->use_conv_bias ? "true" : "false", o->eps,
		o->tie ? "true" : "false",
		o->dtype == SSM_DTYPE_F32 ? "float32" :
		o->dtype == SSM_DTYPE_F16 ? "float16" : "bfloat16");
	if (fclose(f) != 0)
		return ssmd_err_set(SSMD_EIO, "%s: write failed", path);
	return SSMD_OK;
}

/* Writes the safetensors header and then every tensor, chunk by chunk. */
static int write_weights(const opts *o, const char *path)
{
	int n = 0, rc = SSMD_OK;
	spec *v = build_specs(o, &n);
	size_t es = dtype_size(o->dtype), off = 0, hlen, cap = 1 << 16;
	char *hdr = NULL;
	uint8_t *buf = NULL;
	FILE *f = NULL;

	if (!v)
		return ssmd_err_set(SSMD_ENOMEM, "out of memory");
	hdr = malloc((size_t)n * 256 + 64);
	buf = malloc(cap * 4);
	if (!hdr || !buf) {
		rc = ssmd_err_set(SSMD_ENOMEM, "out of memory");
		goto done;
	}
	hlen = (size_t)sprintf(hdr, "{\"__metadata__\":{\"format\":\"pt\"}");
	for (int i = 0; i < n; i++) {
		size_t numel = 1;
		for (int k = 0; k < v[i].ndim; k++)
			numel *= (size_t)v[i].shape[k];
		v[i].offset = off;
		v[i].nbytes = numel * es;
		off += v[i].nbytes;
		hlen += (size_t)sprintf(hdr + hlen, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
					v[i].name, dtype_name(o->dtype));
		for (int k = 0; k < v[i].ndim; k++)
			hlen += (size_t)sprintf(hdr + hlen, "%s%lld", k ? "," : "",
						(long long)v[i].shape[k]);
		hlen += (size_t)sprintf(hdr + hlen, "],\"data_offsets\":[%zu,%zu]}",
					v[i].offset, v[i].offset + v[i].nbytes);
	}
	hdr[hlen++] = '}';
	while (hlen % 8) /* data starts 8-byte aligned, as safetensors pads */
		hdr[hlen++] = ' ';

	f = fopen(path, "wb");
	if (!f) {
		rc = ssmd_err_set(SSMD_EIO, "%s: %s", path, strerror(errno));
		goto done;
	}
	uint8_t len8[8];
	for (int k = 0; k < 8; k++)
		len8[k] = (uint8_t)((uint64_t)hlen >> (8 * k));
	fwrite(len8, 1, 8, f);
	fwrite(hdr, 1, hlen, f);
	for (int i = 0; i < n; i++) {
		uint64_t rng = name_hash(v[i].name, o->seed);
		size_t numel = v[i].nbytes / es;
		for (size_t start = 0; start < numel; start += cap) {
			size_t m = numel - start < cap ? numel - start : cap;
			for (size_t j = 0; j < m; j++) {
				float x = (float)draw(&v[i], &rng, start + j);
				uint8_t *p = buf + j * es;
				if (o->dtype == SSM_DTYPE_F32) {
					memcpy(p, &x, 4); /* little-endian host */
				} else {
					uint16_t h = o->dtype == SSM_DTYPE_F16 ?
						     ssm_f32_to_f16(x) :
						     ssm_f32_to_bf16(x);
					p[0] = (uint8_t)h;
					p[1] = (uint8_t)(h >> 8);
				}
			}
			if (fwrite(buf, es, m, f) != m) {
				rc = ssmd_err_set(SSMD_EIO, "%s: write failed",
						  path);
				goto done;
			}
		}
	}
	if (fclose(f) != 0)
		rc = ssmd_err_set(SSMD_EIO, "%s: write failed", path);
	f = NULL;
done:
	if (f)
		fclose(f);
	free(buf);
	free(hdr);
	free(v);
	return rc;
}

static int copy_file(const char *src, const char *dst)
{
	FILE *in = fopen(src, "rb"), *out = NULL;
	char buf[1 << 16];
	size_t k;
	int rc = SSMD_OK;

	if (!in)
		return ssmd_err_set(SSMD_ENOENT, "%s: %s", src, strerror(errno));
	out = fopen(dst, "wb");
	if (!out) {
		rc = ssmd_err_set(SSMD_EIO, "%s: %s", dst, strerror(errno));
		goto done;
	}
	while ((k = fread(buf, 1, sizeof buf, in)) > 0)
		if (fwrite(buf, 1, k, out) != k) {
			rc = ssmd_err_set(SSMD_EIO, "%s: write failed", dst);
			goto done;
		}
	if (ferror(in))
		rc = ssmd_err_set(SSMD_EIO, "%s: read failed", src);
done:
	if (out && fclose(out) != 0 && rc == SSMD_OK)
		rc = ssmd_err_set(SSMD_EIO, "%s: write failed", dst);
	fclose(in);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ssm-mkmodel --out DIR [--d-model 768] [--n-layer 24] [--vocab 50280]\n"
		"         [--d-state 16] [--d-conv 4] [--expand 2] [--dt-rank N (ceil(d/16))]\n"
		"         [--use-bias] [--no-conv-bias] [--untied] [--eps 1e-5]\n"
		"         [--dtype f32|f16|bf16] [--seed S] [--tokenizer tokenizer.json]\n"
		"Writes a random-weight MambaForCausalLM directory (config.json,\n"
		"model.safetensors, and a copy of the tokenizer when given).\n");
}

/* Parses a positive int option value; 0 on error. */
static int parse_pos(const char *flag, const char *s, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v <= 0 || v > (1 << 24)) {
		fprintf(stderr, "ssm-mkmodel: %s needs a positive integer, got '%s'\n",
			flag, s);
		return 0;
	}
	*out = (int)v;
	return 1;
}

int main(int argc, char **argv)
{
	opts o = { .d_model = 768, .n_layer = 24, .vocab = 50280, .d_state = 16,
		   .d_conv = 4, .expand = 2, .dt_rank = 0, .use_bias = 0,
		   .use_conv_bias = 1, .tie = 1, .eps = 1e-5,
		   .dtype = SSM_DTYPE_F32, .seed = 0 };
	char path[4096];
	int rc;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		int ok = 1;
#define NEEDVAL() do { if (!val) { fprintf(stderr, "ssm-mkmodel: %s needs a value\n", a); return 2; } i++; } while (0)
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--out")) {
			NEEDVAL(); o.out = val;
		} else if (!strcmp(a, "--tokenizer")) {
			NEEDVAL(); o.tokenizer = val;
		} else if (!strcmp(a, "--d-model")) {
			NEEDVAL(); ok = parse_pos(a, val, &o.d_model);
		} else if (!strcmp(a, "--n-layer")) {
			NEEDVAL(); ok = parse_pos(a, val, &o.n_layer);
		} else if (!strcmp(a, "--vocab")) {
			NEEDVAL(); ok = parse_pos(a, val, &o.vocab);
		} else if (!strcmp(a, "--d-state")) {
			NEEDVAL(); ok = parse_pos(a, val, &o.d_state);
		} else if (!strcmp(a, "--d-conv")) {
			NEEDVAL(); ok = parse_pos(a, val, &o.d_conv);
		} else if (!strcmp(a, "--expand")) {
			NEEDVAL(); ok = parse_pos(a, val, &o.expand);
		} else if (!strcmp(a, "--dt-rank")) {
			NEEDVAL(); ok = parse_pos(a, val, &o.dt_rank);
		} else if (!strcmp(a, "--use-bias")) {
			o.use_bias = 1;
		} else if (!strcmp(a, "--no-conv-bias")) {
			o.use_conv_bias = 0;
		} else if (!strcmp(a, "--untied")) {
			o.tie = 0;
		} else if (!strcmp(a, "--eps")) {
			NEEDVAL();
			char *end;
			o.eps = strtod(val, &end);
			ok = *end == 0 && o.eps > 0 && o.eps < 1;
			if (!ok)
				fprintf(stderr, "ssm-mkmodel: bad --eps '%s'\n", val);
		} else if (!strcmp(a, "--seed")) {
			NEEDVAL();
			char *end;
			errno = 0;
			o.seed = strtoull(val, &end, 0);
			ok = !errno && *end == 0;
			if (!ok)
				fprintf(stderr, "ssm-mkmodel: bad --seed '%s'\n", val);
		} else if (!strcmp(a, "--dtype")) {
			NEEDVAL();
			if (!strcmp(val, "f32") || !strcmp(val, "float32"))
				o.dtype = SSM_DTYPE_F32;
			else if (!strcmp(val, "f16") || !strcmp(val, "float16"))
				o.dtype = SSM_DTYPE_F16;
			else if (!strcmp(val, "bf16") || !strcmp(val, "bfloat16"))
				o.dtype = SSM_DTYPE_BF16;
			else {
				fprintf(stderr, "ssm-mkmodel: --dtype must be f32, f16 or bf16\n");
				ok = 0;
			}
		} else {
			fprintf(stderr, "ssm-mkmodel: unknown argument '%s'\n", a);
			usage(stderr);
			return 2;
		}
#undef NEEDVAL
		if (!ok)
			return 2;
	}
	if (!o.out) {
		usage(stderr);
		return 2;
	}
	if (o.d_conv < 2) {
		fprintf(stderr, "ssm-mkmodel: --d-conv must be at least 2\n");
		return 2;
	}
	if (!o.dt_rank)
		o.dt_rank = (o.d_model + 15) / 16;

	if (mkdir(o.out, 0777) != 0 && errno != EEXIST) {
		fprintf(stderr, "ssm-mkmodel: %s: %s\n", o.out, strerror(errno));
		return 1;
	}
	snprintf(path, sizeof path, "%s/config.json", o.out);
	rc = write_config(&o, path);
	if (!rc) {
		snprintf(path, sizeof path, "%s/model.safetensors", o.out);
		rc = write_weights(&o, path);
	}
	if (!rc && o.tokenizer) {
		snprintf(path, sizeof path, "%s/tokenizer.json", o.out);
		rc = copy_file(o.tokenizer, path);
	}
	if (rc) {
		fprintf(stderr, "ssm-mkmodel: %s\n", ssmd_errmsg());
		return 1;
	}
	return 0;
}
