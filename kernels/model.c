/*
 * model.c — loads a Hugging Face MambaForCausalLM directory.
 *
 * config.json is parsed with cJSON and every field the math depends on is
 * read from it; a field the file omits takes the value transformers'
 * MambaConfig gives it (so a directory loads here exactly as it would there),
 * and the tensor shapes are then checked against the result, so a config that
 * disagrees with its weights is refused rather than guessed around.
 *
 * Weights: model.safetensors, or the shards named by
 * model.safetensors.index.json. Each file is memory-mapped read-only and its
 * header validated in full before any tensor is used: header length inside
 * the file, JSON well-formed, every dtype known, data_offsets ordered, inside
 * the data area, matching dtype x shape, and no two tensors overlapping.
 * Tensors keep pointing into the mappings (ssm_tensor.data); backends convert
 * them to their compute type when they open.
 *
 * Fingerprint: XXH3-128 over a canonical config string and then, in sorted
 * name order, each tensor the model uses: name, dtype, shape, raw bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "ssm_impl.h"

/* Limits that reject absurd configs before any allocation. */
#define MAX_D_MODEL (1 << 16)
#define MAX_D_INNER (1 << 18)
#define MAX_LAYERS 1024
#define MAX_D_STATE 1024
#define MAX_D_CONV 64
#define MAX_VOCAB (1 << 24)
#define MAX_HEADER ((uint64_t)100 << 20) /* safetensors' own header limit */
#define MAX_CONFIG_BYTES (1 << 20)

/* One mapped safetensors file. */
struct ssm_mapping {
	char path[4096];
	const uint8_t *addr; /* whole file */
	size_t len;
};

/* A tensor entry of some shard's header, before binding. */
typedef struct entry {
	ssm_tensor t;
	int map;      /* index into maps */
	int dtype_ok; /* F32, F16 or BF16: a dtype the engine computes with */
	size_t begin; /* offset of the data from the start of the file */
} entry;

typedef struct entries {
	entry *v;
	size_t n, cap;
} entries;

/* ------------------------------------------------------------- helpers -- */

static int path_join(char *out, size_t cap, const char *dir, const char *name)
{
	int k = snprintf(out, cap, "%s/%s", dir, name);

	if (k < 0 || (size_t)k >= cap)
		return ssmd_err_set(SSMD_EINVAL, "%s/%s: path too long", dir,
				    name);
	return SSMD_OK;
}

/* Reads a whole (small) file into a NUL-terminated heap buffer. */
static int read_small_file(const char *path, char **out, size_t *len_out)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long len;
	int rc = SSMD_OK;

	if (!f)
		return ssmd_err_set(errno == ENOENT ? SSMD_ENOENT : SSMD_EIO,
				    "%s: %s", path, strerror(errno));
	if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 ||
	    fseek(f, 0, SEEK_SET) != 0) {
		rc = ssmd_err_set(SSMD_EIO, "%s: cannot size the file", path);
		goto done;
	}
	if (len > MAX_CONFIG_BYTES) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: %ld bytes, too large for a "
				  "JSON description", path, len);
		goto done;
	}
	buf = malloc((size_t)len + 1);
	if (!buf) {
		rc = ssmd_err_set(SSMD_ENOMEM, "%s: out of memory", path);
		goto done;
	}
	if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
		rc = ssmd_err_set(SSMD_EIO, "%s: read failed", path);
		goto done;
	}
	buf[len] = 0;
	*out = buf;
	*len_out = (size_t)len;
	buf = NULL;
done:
	free(buf);
	fclose(f);
	return rc;
}

static size_t dtype_size(ssm_dtype d)
{
	return d == SSM_DTYPE_F32 ? 4 : 2;
}

static void shape_str(const int64_t *shape, int ndim, char *buf, size_t cap)
{
	size_t k = (size_t)snprintf(buf, cap, "[");

	for (int i = 0; i < ndim && k < cap; i++)
		k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "",
				      (long long)shape[i]);
	if (k < cap)
		snprintf(buf + k, cap - k, "]");
}

/* -------------------------------------------------------------- config -- */

/* Reads an integer field; *out keeps def when the field is absent and def is
 * not INT_MIN (INT_MIN marks a required field). */
static int cfg_int(const cJSON *root, const char *path, const char *key,
		   int def, int lo, int hi, int *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
	double v;

	if (!it || cJSON_IsNull(it)) {
		if (def == INT_MIN)
			return ssmd_err_set(SSMD_EFORMAT, "%s: required field "
					    "\"%s\" missing", path, key);
		*out = def;
		return SSMD_OK;
	}
	if (!cJSON_IsNumber(it))
		return ssmd_err_set(SSMD_EFORMAT, "%s: \"%s\" is not a number",
				    path, key);
	v = it->valuedouble;
	if (v != floor(v) || v < lo || v > hi)
		return ssmd_err_set(SSMD_EFORMAT, "%s: \"%s\" = %g, expected an "
				    "integer in [%d, %d]", path, key, v, lo, hi);
	*out = (int)v;
	return SSMD_OK;
}

static int cfg_bool(const cJSON *root, const char *path, const char *key,
		    int def, int *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);

	if (!it || cJSON_IsNull(it)) {
		*out = def;
		return SSMD_OK;
	}
	if (!cJSON_IsBool(it))
		return ssmd_err_set(SSMD_EFORMAT, "%s: \"%s\" is not a boolean",
				    path, key);
	*out = cJSON_IsTrue(it) ? 1 : 0;
	return SSMD_OK;
}

/* Architecture check: architectures[] must name MambaForCausalLM (or
 * MambaModel) and model_type, when present, must be "mamba". */
static int cfg_arch(const cJSON *root, const char *path)
{
	const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
	const cJSON *a;
	int found = 0;

	if (mt && !cJSON_IsString(mt))
		return ssmd_err_set(SSMD_EFORMAT, "%s: \"model_type\" is not a "
				    "string", path);
	if (mt && strcmp(mt->valuestring, "mamba") != 0)
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: model_type \"%s\" is "
				    "not supported (only \"mamba\")", path,
				    mt->valuestring);
	if (archs && !cJSON_IsArray(archs))
		return ssmd_err_set(SSMD_EFORMAT, "%s: \"architectures\" is not "
				    "an array", path);
	cJSON_ArrayForEach(a, archs) {
		if (!cJSON_IsString(a))
			return ssmd_err_set(SSMD_EFORMAT, "%s: \"architectures\" "
					    "holds a non-string", path);
		if (!strcmp(a->valuestring, "MambaForCausalLM") ||
		    !strcmp(a->valuestring, "MambaModel"))
			found = 1;
	}
	if (archs && !found) {
		a = cJSON_GetArrayItem(archs, 0);
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: architecture \"%s\" is "
				    "not supported (only MambaForCausalLM)",
				    path, a ? a->valuestring : "(none)");
	}
	if (!archs && !mt)
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: neither "
				    "\"architectures\" nor \"model_type\": not a "
				    "Hugging Face Mamba config", path);
	return SSMD_OK;
}

static int config_parse(const char *dir, ssm_config *cfg)
{
	char path[4096];
	char *text = NULL;
	size_t len = 0;
	cJSON *root = NULL;
	const cJSON *it;
	int rc, expand, d_inner_default;
	double eps;

	if ((rc = path_join(path, sizeof path, dir, "config.json")))
		return rc;
	if ((rc = read_small_file(path, &text, &len)))
		return rc;
	root = cJSON_ParseWithLength(text, len);
	if (!root || !cJSON_IsObject(root)) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: not a JSON object", path);
		goto done;
	}
	if ((rc = cfg_arch(root, path)))
		goto done;
	memset(cfg, 0, sizeof *cfg);
	cfg->arch = SSM_ARCH_MAMBA1;
	/* Defaults are MambaConfig's (transformers) for absent fields. */
	if ((rc = cfg_int(root, path, "hidden_size", INT_MIN, 1, MAX_D_MODEL,
			  &cfg->d_model)) ||
	    (rc = cfg_int(root, path, "num_hidden_layers", INT_MIN, 1,
			  MAX_LAYERS, &cfg->n_layer)) ||
	    (rc = cfg_int(root, path, "vocab_size", INT_MIN, 1, MAX_VOCAB,
			  &cfg->vocab_size)) ||
	    (rc = cfg_int(root, path, "state_size", 16, 1, MAX_D_STATE,
			  &cfg->d_state)) ||
	    (rc = cfg_int(root, path, "conv_kernel", 4, 1, MAX_D_CONV,
			  &cfg->d_conv)) ||
	    (rc = cfg_int(root, path, "expand", 2, 1, 64, &expand)))
		goto done;
	d_inner_default = expand * cfg->d_model;
	if (d_inner_default > MAX_D_INNER)
		d_inner_default = MAX_D_INNER + 1; /* let the range check name it */
	if ((rc = cfg_int(root, path, "intermediate_size", d_inner_default, 1,
			  MAX_D_INNER, &cfg->d_inner)) ||
	    (rc = cfg_bool(root, path, "use_bias", 1, &cfg->use_bias)) ||
	    (rc = cfg_bool(root, path, "use_conv_bias", 1,
			   &cfg->use_conv_bias)) ||
	    (rc = cfg_bool(root, path, "residual_in_fp32", 1,
			   &cfg->residual_in_fp32)) ||
	    (rc = cfg_bool(root, path, "tie_word_embeddings", 1,
			   &cfg->tie_embeddings)))
		goto done;
	if (cfg->d_conv < 2) {
		/* a width-1 conv keeps no window; the canonical state needs one */
		rc = ssmd_err_set(SSMD_EUNSUPPORTED, "%s: conv_kernel %d is not "
				  "supported (need >= 2)", path, cfg->d_conv);
		goto done;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "time_step_rank");
	if (!it || cJSON_IsNull(it) ||
	    (cJSON_IsString(it) && !strcmp(it->valuestring, "auto"))) {
		cfg->dt_rank = (cfg->d_model + 15) / 16; /* ceil(d_model / 16) */
	} else if ((rc = cfg_int(root, path, "time_step_rank", INT_MIN, 1,
				 MAX_D_INNER, &cfg->dt_rank))) {
		ssmd_err_set(SSMD_EFORMAT, "%s: \"time_step_rank\" must be a "
			     "positive integer or \"auto\"", path);
		goto done;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
	eps = 1e-5;
	if (it && !cJSON_IsNull(it)) {
		if (!cJSON_IsNumber(it) || !(it->valuedouble > 0) ||
		    it->valuedouble >= 1) {
			rc = ssmd_err_set(SSMD_EFORMAT, "%s: \"layer_norm_epsilon\" "
					  "must be a number in (0, 1)", path);
			goto done;
		}
		eps = it->valuedouble;
	}
	cfg->eps = (float)eps;
	rc = SSMD_OK;
done:
	cJSON_Delete(root);
	free(text);
	return rc;
}

/* --------------------------------------------------------- safetensors -- */

static int parse_dtype(const char *s, ssm_dtype *out)
{
	if (!strcmp(s, "F32"))
		*out = SSM_DTYPE_F32;
	else if (!strcmp(s, "F16"))
		*out = SSM_DTYPE_F16;
	else if (!strcmp(s, "BF16"))
		*out = SSM_DTYPE_BF16;
	else
		return 0;
	return 1;
}

static int entries_push(entries *es, const entry *e)
{
	if (es->n == es->cap) {
		size_t cap = es->cap ? es->cap * 2 : 64;
		entry *v = realloc(es->v, cap * sizeof *v);
		if (!v)
			return ssmd_err_set(SSMD_ENOMEM, "out of memory");
		es->v = v;
		es->cap = cap;
	}
	es->v[es->n++] = *e;
	return SSMD_OK;
}

static int cmp_begin(const void *a, const void *b)
{
	const entry *x = *(const entry *const *)a, *y = *(const entry *const *)b;

	return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(((const entry *)a)->t.name, ((const entry *)b)->t.name);
}

/* Maps path and appends its tensors to es. */
static int shard_load(struct ssm_mapping *mp, int map_idx, entries *es)
{
	const char *path = mp->path;
	int fd = -1, rc = SSMD_OK;
	struct stat sb;
	uint64_t hlen = 0;
	cJSON *hdr = NULL, *it;
	size_t first = es->n, data_start, data_len;
	entry **order = NULL;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ssmd_err_set(errno == ENOENT ? SSMD_ENOENT : SSMD_EIO,
				    "%s: %s", path, strerror(errno));
	if (fstat(fd, &sb) != 0) {
		rc = ssmd_err_set(SSMD_EIO, "%s: %s", path, strerror(errno));
		goto done;
	}
	if (sb.st_size < 8) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: truncated (%lld bytes, no "
				  "safetensors header)", path,
				  (long long)sb.st_size);
		goto done;
	}
	mp->len = (size_t)sb.st_size;
	mp->addr = mmap(NULL, mp->len, PROT_READ, MAP_PRIVATE, fd, 0);
	if (mp->addr == MAP_FAILED) {
		mp->addr = NULL;
		rc = ssmd_err_set(SSMD_EIO, "%s: mmap: %s", path, strerror(errno));
		goto done;
	}
	for (int i = 0; i < 8; i++)
		hlen |= (uint64_t)mp->addr[i] << (8 * i);
	if (hlen > MAX_HEADER || hlen > mp->len - 8) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: header length %llu runs past "
				  "the end of the file (%zu bytes)", path,
				  (unsigned long long)hlen, mp->len);
		goto done;
	}
	data_start = 8 + (size_t)hlen;
	data_len = mp->len - data_start;
	hdr = cJSON_ParseWithLength((const char *)mp->addr + 8, (size_t)hlen);
	if (!hdr || !cJSON_IsObject(hdr)) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: safetensors header is not a "
				  "JSON object", path);
		goto done;
	}
	cJSON_ArrayForEach(it, hdr) {
		entry e;
		const cJSON *dt, *shape, *offs, *d;
		double b, en;
		size_t numel = 1;

		if (!strcmp(it->string, "__metadata__"))
			continue;
		memset(&e, 0, sizeof e);
		if (strlen(it->string) >= sizeof e.t.name) {
			rc = ssmd_err_set(SSMD_EFORMAT, "%s: tensor name \"%.40s...\" "
					  "too long", path, it->string);
			goto done;
		}
		strcpy(e.t.name, it->string);
		dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
		shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
		offs = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
		if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) ||
		    !cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2) {
			rc = ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s: needs "
					  "dtype, shape and data_offsets", path,
					  e.t.name);
			goto done;
		}
		e.t.ndim = cJSON_GetArraySize(shape);
		if (e.t.ndim > 4) {
			rc = ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s: %d "
					  "dimensions", path, e.t.name, e.t.ndim);
			goto done;
		}
		int k = 0;
		cJSON_ArrayForEach(d, shape) {
			if (!cJSON_IsNumber(d) || d->valuedouble < 0 ||
			    d->valuedouble > (double)(1ull << 40) ||
			    d->valuedouble != floor(d->valuedouble)) {
				rc = ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s: "
						  "bad shape", path, e.t.name);
				goto done;
			}
			e.t.shape[k++] = (int64_t)d->valuedouble;
			numel *= (size_t)d->valuedouble;
			if (numel > ((size_t)1 << 40)) {
				rc = ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s: "
						  "absurd shape", path, e.t.name);
				goto done;
			}
		}
		const cJSON *ob = cJSON_GetArrayItem(offs, 0);
		const cJSON *oe = cJSON_GetArrayItem(offs, 1);
		b = cJSON_IsNumber(ob) ? ob->valuedouble : -1.0;
		en = cJSON_IsNumber(oe) ? oe->valuedouble : -1.0;
		if (b < 0 || en < b || b != floor(b) || en != floor(en) ||
		    en > (double)data_len) {
			rc = ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s: data_offsets "
					  "[%.0f, %.0f] out of range (data area "
					  "%zu bytes)", path, e.t.name, b, en,
					  data_len);
			goto done;
		}
		e.dtype_ok = parse_dtype(dt->valuestring, &e.t.dtype);
		/* Tensors of other dtypes are legal safetensors; they are
		 * rejected only if the model needs them (bind). */
		if (e.dtype_ok &&
		    (size_t)(en - b) != numel * dtype_size(e.t.dtype)) {
			rc = ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s: %.0f bytes "
					  "for %zu %s elements", path, e.t.name,
					  en - b, numel, dt->valuestring);
			goto done;
		}
		e.begin = data_start + (size_t)b;
		e.t.nbytes = (size_t)(en - b);
		e.t.data = mp->addr + e.begin;
		e.map = map_idx;
		if ((rc = entries_push(es, &e)))
			goto done;
	}
	/* No two tensors of this file may share bytes. */
	if (es->n - first > 1) {
		size_t n = es->n - first;
		order = malloc(n * sizeof *order);
		if (!order) {
			rc = ssmd_err_set(SSMD_ENOMEM, "out of memory");
			goto done;
		}
		for (size_t i = 0; i < n; i++)
			order[i] = &es->v[first + i];
		qsort(order, n, sizeof *order, cmp_begin);
		for (size_t i = 1; i < n; i++) {
			const entry *p = order[i - 1], *q = order[i];
			if (q->t.nbytes && p->begin + p->t.nbytes > q->begin) {
				rc = ssmd_err_set(SSMD_EFORMAT, "%s: tensors %s and "
						  "%s overlap", path, p->t.name,
						  q->t.name);
				goto done;
			}
		}
	}
done:
	free(order);
	cJSON_Delete(hdr);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Fills *names (heap array of heap strings) with the distinct shard file
 * names of an index file's weight_map. */
static int index_parse(const char *path, char ***names_out, int *n_out)
{
	char *text = NULL;
	size_t len;
	cJSON *root = NULL;
	const cJSON *wm, *it;
	char **names = NULL;
	int n = 0, rc;

	if ((rc = read_small_file(path, &text, &len)))
		return rc;
	root = cJSON_ParseWithLength(text, len);
	wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
	if (!root || !cJSON_IsObject(wm)) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: not a JSON object with a "
				  "\"weight_map\"", path);
		goto done;
	}
	names = calloc((size_t)cJSON_GetArraySize(wm) + 1, sizeof *names);
	if (!names) {
		rc = ssmd_err_set(SSMD_ENOMEM, "out of memory");
		goto done;
	}
	cJSON_ArrayForEach(it, wm) {
		int dup = 0;
		if (!cJSON_IsString(it) || !it->valuestring[0] ||
		    strchr(it->valuestring, '/') ||
		    !strcmp(it->valuestring, "..")) {
			rc = ssmd_err_set(SSMD_EFORMAT, "%s: weight_map entry %s "
					  "is not a file name in the directory",
					  path, it->string);
			goto done;
		}
		for (int i = 0; i < n && !dup; i++)
			dup = !strcmp(names[i], it->valuestring);
		if (dup)
			continue;
		names[n] = strdup(it->valuestring);
		if (!names[n]) {
			rc = ssmd_err_set(SSMD_ENOMEM, "out of memory");
			goto done;
		}
		n++;
	}
	if (n == 0) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: empty weight_map", path);
		goto done;
	}
	*names_out = names;
	*n_out = n;
	names = NULL;
	rc = SSMD_OK;
done:
	if (names) {
		for (int i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	cJSON_Delete(root);
	free(text);
	return rc;
}

/* Maps model.safetensors or every shard of the index into m->maps and
 * collects their tensors, sorted by name, into es. */
static int weights_open(ssm_model *m, entries *es)
{
	char idx[4096], single[4096];
	char **names = NULL;
	int n = 0, rc;

	if ((rc = path_join(idx, sizeof idx, m->dir,
			    "model.safetensors.index.json")) ||
	    (rc = path_join(single, sizeof single, m->dir, "model.safetensors")))
		return rc;
	if (access(idx, F_OK) == 0) {
		if ((rc = index_parse(idx, &names, &n)))
			return rc;
	} else if (access(single, F_OK) != 0) {
		return ssmd_err_set(SSMD_ENOENT, "%s: no model.safetensors or "
				    "model.safetensors.index.json", m->dir);
	}
	m->maps = calloc(n ? (size_t)n : 1, sizeof *m->maps);
	if (!m->maps) {
		rc = ssmd_err_set(SSMD_ENOMEM, "out of memory");
		goto done;
	}
	if (!n) {
		strcpy(m->maps[0].path, single);
		m->n_maps = 1;
		rc = shard_load(&m->maps[0], 0, es);
	} else {
		for (int i = 0; i < n; i++) {
			if ((rc = path_join(m->maps[i].path, sizeof m->maps[i].path,
					    m->dir, names[i])))
				goto done;
			m->n_maps = i + 1;
			if ((rc = shard_load(&m->maps[i], i, es)))
				goto done;
		}
	}
	if (rc)
		goto done;
	qsort(es->v, es->n, sizeof *es->v, cmp_name);
	for (size_t i = 1; i < es->n; i++)
		if (!strcmp(es->v[i].t.name, es->v[i - 1].t.name)) {
			rc = ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s appears in "
					  "%s and %s", m->dir, es->v[i].t.name,
					  m->maps[es->v[i - 1].map].path,
					  m->maps[es->v[i].map].path);
			goto done;
		}
done:
	if (names) {
		for (int i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	return rc;
}

/* ------------------------------------------------------------- binding -- */

/* Finds name in es and checks dtype and shape; optional tensors that are
 * absent leave *t zeroed (data NULL). */
static int bind(const ssm_model *m, const entries *es, const char *name,
		int required, int ndim, int64_t d0, int64_t d1, int64_t d2,
		ssm_tensor *t)
{
	entry key;
	const entry *e;
	int64_t want[3] = { d0, d1, d2 };
	char got_s[96], want_s[96];

	memset(t, 0, sizeof *t);
	snprintf(key.t.name, sizeof key.t.name, "%s", name);
	e = bsearch(&key, es->v, es->n, sizeof *es->v, cmp_name);
	if (!e) {
		if (!required)
			return SSMD_OK;
		return ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s missing from "
				    "the weights", m->dir, name);
	}
	if (!e->dtype_ok)
		return ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s has an "
				    "unsupported dtype (need F32, F16 or BF16)",
				    m->maps[e->map].path, name);
	if (e->t.ndim != ndim || memcmp(e->t.shape, want,
					(size_t)ndim * sizeof *want)) {
		shape_str(e->t.shape, e->t.ndim, got_s, sizeof got_s);
		shape_str(want, ndim, want_s, sizeof want_s);
		return ssmd_err_set(SSMD_EFORMAT, "%s: tensor %s has shape %s, "
				    "config.json implies %s",
				    m->maps[e->map].path, name, got_s, want_s);
	}
	*t = e->t;
	return SSMD_OK;
}

static int bind_all(ssm_model *m, const entries *es)
{
	const ssm_config *c = &m->cfg;
	int64_t d = c->d_model, di = c->d_inner, V = c->vocab_size;
	int rc;
	char nm[96];

	if ((rc = bind(m, es, "backbone.embeddings.weight", 1, 2, V, d, 0,
		       &m->embed)) ||
	    (rc = bind(m, es, "backbone.norm_f.weight", 1, 1, d, 0, 0,
		       &m->norm_f)))
		return rc;
	if (c->tie_embeddings)
		m->lm_head = m->embed;
	else if ((rc = bind(m, es, "lm_head.weight", 1, 2, V, d, 0,
			    &m->lm_head)))
		return rc;
	m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
	if (!m->layers)
		return ssmd_err_set(SSMD_ENOMEM, "out of memory");
	for (int l = 0; l < c->n_layer; l++) {
		ssm_layer_weights *w = &m->layers[l];
#define B(suffix, req, nd, a, b_, c_, dst)                                     \
	do {                                                                   \
		snprintf(nm, sizeof nm, "backbone.layers.%d.%s", l, suffix);   \
		if ((rc = bind(m, es, nm, req, nd, a, b_, c_, dst)))           \
			return rc;                                             \
	} while (0)
		B("norm.weight", 1, 1, d, 0, 0, &w->norm);
		B("mixer.in_proj.weight", 1, 2, 2 * di, d, 0, &w->in_proj_w);
		B("mixer.conv1d.weight", 1, 3, di, 1, c->d_conv, &w->conv_w);
		B("mixer.x_proj.weight", 1, 2, c->dt_rank + 2 * c->d_state, di,
		  0, &w->x_proj_w);
		B("mixer.dt_proj.weight", 1, 2, di, c->dt_rank, 0, &w->dt_proj_w);
		B("mixer.dt_proj.bias", 1, 1, di, 0, 0, &w->dt_proj_b);
		B("mixer.A_log", 1, 2, di, c->d_state, 0, &w->A_log);
		B("mixer.D", 1, 1, di, 0, 0, &w->D);
		B("mixer.out_proj.weight", 1, 2, d, di, 0, &w->out_proj_w);
		if (c->use_bias) {
			B("mixer.in_proj.bias", 1, 1, 2 * di, 0, 0, &w->in_proj_b);
			B("mixer.out_proj.bias", 1, 1, d, 0, 0, &w->out_proj_b);
		}
		if (c->use_conv_bias)
			B("mixer.conv1d.bias", 1, 1, di, 0, 0, &w->conv_b);
#undef B
	}
	m->cfg.dtype = m->embed.dtype;
	return SSMD_OK;
}

/* --------------------------------------------------------- fingerprint -- */

static int cmp_tensor_ptr(const void *a, const void *b)
{
	return strcmp((*(const ssm_tensor *const *)a)->name,
		      (*(const ssm_tensor *const *)b)->name);
}

static void hash_u64(XXH3_state_t *h, uint64_t v)
{
	uint8_t b[8];

	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	XXH3_128bits_update(h, b, 8);
}

static int fingerprint(ssm_model *m)
{
	const ssm_config *c = &m->cfg;
	size_t n = 0, cap = (size_t)c->n_layer * 12 + 3;
	const ssm_tensor **ts = malloc(cap * sizeof *ts);
	XXH3_state_t *h = XXH3_createState();
	char canon[512];
	XXH128_hash_t r;
	XXH128_canonical_t out;
	int rc = SSMD_OK;

	if (!ts || !h) {
		rc = ssmd_err_set(SSMD_ENOMEM, "out of memory");
		goto done;
	}
	/* %a prints eps exactly, so equal configs give equal strings. */
	snprintf(canon, sizeof canon,
		 "arch=mamba1;d_model=%d;d_inner=%d;n_layer=%d;d_state=%d;"
		 "d_conv=%d;dt_rank=%d;vocab=%d;use_bias=%d;use_conv_bias=%d;"
		 "tie=%d;eps=%a", c->d_model, c->d_inner, c->n_layer,
		 c->d_state, c->d_conv, c->dt_rank, c->vocab_size, c->use_bias,
		 c->use_conv_bias, c->tie_embeddings, (double)c->eps);
	ts[n++] = &m->embed;
	ts[n++] = &m->norm_f;
	if (!c->tie_embeddings)
		ts[n++] = &m->lm_head;
	for (int l = 0; l < c->n_layer; l++) {
		const ssm_tensor *all[] = {
			&m->layers[l].norm, &m->layers[l].in_proj_w,
			&m->layers[l].in_proj_b, &m->layers[l].conv_w,
			&m->layers[l].conv_b, &m->layers[l].x_proj_w,
			&m->layers[l].dt_proj_w, &m->layers[l].dt_proj_b,
			&m->layers[l].A_log, &m->layers[l].D,
			&m->layers[l].out_proj_w, &m->layers[l].out_proj_b,
		};
		for (size_t i = 0; i < sizeof all / sizeof *all; i++)
			if (all[i]->data)
				ts[n++] = all[i];
	}
	qsort(ts, n, sizeof *ts, cmp_tensor_ptr);
	XXH3_128bits_reset(h);
	XXH3_128bits_update(h, canon, strlen(canon) + 1);
	for (size_t i = 0; i < n; i++) {
		XXH3_128bits_update(h, ts[i]->name, strlen(ts[i]->name) + 1);
		hash_u64(h, (uint64_t)ts[i]->dtype);
		hash_u64(h, (uint64_t)ts[i]->ndim);
		for (int k = 0; k < ts[i]->ndim; k++)
			hash_u64(h, (uint64_t)ts[i]->shape[k]);
		XXH3_128bits_update(h, ts[i]->data, ts[i]->nbytes);
	}
	r = XXH3_128bits_digest(h);
	XXH128_canonicalFromHash(&out, r);
	memcpy(m->fingerprint, out.digest, SSM_FINGERPRINT_LEN);
done:
	XXH3_freeState(h);
	free(ts);
	return rc;
}

/* ---------------------------------------------------------------- API -- */

int ssm_model_load(const char *dir, ssm_model **out)
{
	ssm_model *m = NULL;
	entries es = { 0 };
	int rc;

	if (!dir || !out)
		return ssmd_err_set(SSMD_EINVAL, "ssm_model_load: NULL argument");
	m = calloc(1, sizeof *m);
	if (!m)
		return ssmd_err_set(SSMD_ENOMEM, "out of memory");
	if (strlen(dir) >= sizeof m->dir - 64) {
		rc = ssmd_err_set(SSMD_EINVAL, "%s: path too long", dir);
		goto fail;
	}
	strcpy(m->dir, dir);
	if ((rc = config_parse(dir, &m->cfg)) ||
	    (rc = weights_open(m, &es)) ||
	    (rc = bind_all(m, &es)) ||
	    (rc = fingerprint(m)))
		goto fail;
	free(es.v);
	*out = m;
	return SSMD_OK;
fail:
	free(es.v);
	ssm_model_free(m);
	return rc;
}

void ssm_model_free(ssm_model *m)
{
	if (!m)
		return;
	for (int i = 0; i < m->n_maps; i++)
		if (m->maps[i].addr)
			munmap((void *)m->maps[i].addr, m->maps[i].len);
	free(m->maps);
	free(m->layers);
	free(m);
}

const ssm_config *ssm_model_config(const ssm_model *m)
{
	return &m->cfg;
}

const uint8_t *ssm_model_fingerprint(const ssm_model *m)
{
	return m->fingerprint;
}

void ssm_fingerprint_hex(const uint8_t *fp, char *hex)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < SSM_FINGERPRINT_LEN; i++) {
		hex[2 * i] = digits[fp[i] >> 4];
		hex[2 * i + 1] = digits[fp[i] & 15];
	}
	hex[2 * SSM_FINGERPRINT_LEN] = 0;
}

int ssm_model_state_alloc(const ssm_model *m, ssm_state **out)
{
	const ssm_config *c = &m->cfg;
	ssm_state *st;
	int rc = ssm_state_alloc(c->arch, (uint32_t)c->n_layer,
				 (uint32_t)c->d_inner, (uint32_t)c->d_state,
				 (uint32_t)c->d_conv, (uint32_t)c->d_model, &st);

	if (rc)
		return rc;
	memcpy(st->fingerprint, m->fingerprint, SSM_FINGERPRINT_LEN);
	*out = st;
	return SSMD_OK;
}

int ssm_model_check_state(const ssm_model *m, const ssm_state *st)
{
	const ssm_config *c = &m->cfg;
	char want[33], got[33];

	if (st->arch != c->arch || st->n_layer != (uint32_t)c->n_layer ||
	    st->d_inner != (uint32_t)c->d_inner ||
	    st->d_state != (uint32_t)c->d_state ||
	    st->d_conv != (uint32_t)c->d_conv ||
	    st->d_model != (uint32_t)c->d_model)
		return ssmd_err_set(SSMD_EMODEL, "state shape (layers %u, d_inner "
				    "%u, d_state %u, d_conv %u, d_model %u) does "
				    "not fit model %s", st->n_layer, st->d_inner,
				    st->d_state, st->d_conv, st->d_model, m->dir);
	if (memcmp(st->fingerprint, m->fingerprint, SSM_FINGERPRINT_LEN)) {
		ssm_fingerprint_hex(st->fingerprint, got);
		ssm_fingerprint_hex(m->fingerprint, want);
		return ssmd_err_set(SSMD_EMODEL, "state of model %s cannot load "
				    "into model %s (%s)", got, want, m->dir);
	}
	return SSMD_OK;
}
