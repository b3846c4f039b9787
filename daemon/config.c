/*
 * config.c — settings from defaults, a config file and flags.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "log.h"
#include "ssmd_err.h"

enum key_type { KEY_STR, KEY_INT, KEY_U64, KEY_LEVEL };

struct key {
	const char *name;
	enum key_type type;
	size_t off;
	long long min, max;     /* bounds of KEY_INT / KEY_U64 */
	const char *help;
};

#define KS(f, h) {#f, KEY_STR, offsetof(cfg, f), 0, 0, h}
#define KI(f, lo, hi, h) {#f, KEY_INT, offsetof(cfg, f), lo, hi, h}

static const struct key keys[] = {
	KS(model, "model directory (Hugging Face MambaForCausalLM)"),
	KS(store, "state library file, created if missing"),
	KS(listen, "request/reply URL (default ipc://RUN_DIR/ssmd.sock)"),
	KS(events, "event publish URL (default: the listen socket's sibling NAME-events.sock)"),
	KS(jobs, "fire-and-forget pull URL, or off (default: sibling NAME-jobs.sock)"),
	KS(run_dir, "directory of the default ipc sockets"),
	KS(backend, "auto | cpu | cuda"),
	KI(slots, 1, 65536, "live states on the backend"),
	KI(checkpoint_every, 0, 1 << 30, "checkpoint every N consumed tokens (0 = off)"),
	KI(threads, 0, 1024, "CPU backend threads (0 = all cores)"),
	{"log_level", KEY_LEVEL, offsetof(cfg, log_level), 0, 0, "error | warn | info | debug"},
	{"max_message", KEY_U64, offsetof(cfg, max_message), 1024, 1LL << 31,
	 "largest request in bytes"},
	{"max_store_bytes", KEY_U64, offsetof(cfg, max_store_bytes), 0, INT64_MAX,
	 "state library size limit in bytes; writes past it get SSMD_ENOSPC (0 = none)"},
	KI(max_append_tokens, 1, 1 << 26, "tokens per append"),
	KI(max_generate_tokens, 1, 1 << 20, "max_tokens per generate"),
	KI(max_sessions, 1, 1 << 24, "open sessions"),
	KI(queue_depth, 1, 1 << 20, "requests waiting to start; beyond that EBUSY"),
	KI(prefill_chunk, 1, 1 << 20, "smallest cap on a prefilling session's tokens per step (append, score, replay); each may take max(this, its equal share of step_tokens)"),
	KI(step_tokens, 1, 1 << 24, "tokens per scheduler step: decode plus prefill of every session"),
	KI(idle_timeout, 0, 1 << 30, "seconds until an idle session is stored and closed (0 = never)"),
	KI(host_cache_mb, 0, 1 << 24, "MB of host memory keeping the states of paged-out sessions, so paging one in needs no library read (0 = off)"),
	KI(request_cache, 16, 1 << 24, "replies remembered for retries"),
	KI(contexts, 1, 65536, "requests in flight on the request endpoint"),
};

void cfg_init(cfg *c)
{
	memset(c, 0, sizeof(*c));
	c->slots = 8;
	c->checkpoint_every = 0;
	c->threads = 0;
	c->log_level = LOG_INFO;
	c->max_message = 64ull << 20;
	c->max_append_tokens = 1 << 20;
	c->max_generate_tokens = 4096;
	c->max_sessions = 4096;
	c->queue_depth = 256;
	c->prefill_chunk = 512;
	c->step_tokens = 2048;
	c->host_cache_mb = 1024;
	c->request_cache = 4096;
	c->contexts = 1024;
}

void cfg_fini(cfg *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (keys[i].type == KEY_STR)
			free(*(char **)((char *)c + keys[i].off));
	memset(c, 0, sizeof(*c));
}

/* Compares a key with dashes or underscores to a table name. */
static int key_match(const char *given, const char *name)
{
	for (; *given && *name; given++, name++) {
		char g = *given == '-' ? '_' : *given;
		if (g != *name)
			return 0;
	}
	return *given == 0 && *name == 0;
}

int cfg_set(cfg *c, const char *key, const char *value)
{
	const struct key *k = NULL;
	char *end;
	void *field;

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (key_match(key, keys[i].name))
			k = &keys[i];
	if (!k)
		return ssmd_err_set(SSMD_EINVAL, "unknown setting '%s'", key);
	field = (char *)c + k->off;
	switch (k->type) {
	case KEY_STR: {
		char *dup;
		if (!value[0])
			return ssmd_err_set(SSMD_EINVAL, "%s: empty value", k->name);
		if (strcmp(k->name, "backend") == 0 && strcmp(value, "auto") &&
		    strcmp(value, "cpu") && strcmp(value, "cuda"))
			return ssmd_err_set(SSMD_EINVAL,
					    "backend '%s' is not auto, cpu or cuda",
					    value);
		dup = strdup(value);
		if (!dup)
			return ssmd_err_set(SSMD_ENOMEM, "%s", k->name);
		free(*(char **)field);
		*(char **)field = dup;
		return SSMD_OK;
	}
	case KEY_LEVEL:
		return log_level_parse(value, (int *)field);
	case KEY_INT:
	case KEY_U64: {
		long long v;
		errno = 0;
		v = strtoll(value, &end, 10);
		while (isspace((unsigned char)*end))
			end++;
		if (errno || end == value || *end || v < k->min || v > k->max)
			return ssmd_err_set(SSMD_EINVAL,
					    "%s: '%s' is not an integer in [%lld, %lld]",
					    k->name, value, k->min, k->max);
		if (k->type == KEY_INT)
			*(int *)field = (int)v;
		else
			*(uint64_t *)field = (uint64_t)v;
		return SSMD_OK;
	}
	}
	return ssmd_err_set(SSMD_EINVAL, "%s", key);
}

static char *file_read(const char *path, int *rc)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0;

	if (!f) {
		*rc = ssmd_err_set(errno == ENOENT ? SSMD_ENOENT : SSMD_EIO,
				   "config file %s: %s", path, strerror(errno));
		return NULL;
	}
	for (;;) {
		size_t n;
		if (cap - len < 4096) {
			char *nb;
			if (cap > (1u << 20)) {
				*rc = ssmd_err_set(SSMD_ERANGE,
						   "config file %s is over 1 MiB", path);
				goto fail;
			}
			nb = realloc(buf, cap + 8192);
			if (!nb) {
				*rc = ssmd_err_set(SSMD_ENOMEM, "%s", path);
				goto fail;
			}
			buf = nb;
			cap += 8192;
		}
		n = fread(buf + len, 1, cap - len - 1, f);
		len += n;
		if (n == 0)
			break;
	}
	if (ferror(f)) {
		*rc = ssmd_err_set(SSMD_EIO, "reading config file %s", path);
		goto fail;
	}
	fclose(f);
	buf[len] = 0;
	if (strlen(buf) != len) {
		*rc = ssmd_err_set(SSMD_EFORMAT, "config file %s holds a NUL byte", path);
		free(buf);
		return NULL;
	}
	*rc = SSMD_OK;
	return buf;
fail:
	fclose(f);
	free(buf);
	return NULL;
}

static int cfg_load_json(cfg *c, const char *path, const char *text)
{
	cJSON *root = cJSON_Parse(text);
	const cJSON *item;
	int rc = SSMD_OK;

	if (!cJSON_IsObject(root)) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: not a JSON object", path);
		goto out;
	}
	cJSON_ArrayForEach(item, root) {
		char num[64];
		const char *value;
		if (cJSON_IsString(item)) {
			value = item->valuestring;
		} else if (cJSON_IsNumber(item) &&
			   item->valuedouble == (double)(long long)item->valuedouble) {
			snprintf(num, sizeof(num), "%lld", (long long)item->valuedouble);
			value = num;
		} else {
			rc = ssmd_err_set(SSMD_EFORMAT,
					  "%s: \"%s\" must be a string or an integer",
					  path, item->string);
			goto out;
		}
		rc = cfg_set(c, item->string, value);
		if (rc) {
			rc = ssmd_err_set(rc, "%s: %s", path, ssmd_errmsg());
			goto out;
		}
	}
out:
	cJSON_Delete(root);
	return rc;
}

static char *trim(char *s)
{
	char *e;
	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = 0;
	return s;
}

static int cfg_load_lines(cfg *c, const char *path, char *text)
{
	int line_no = 0;
	char *save = NULL;

	/* strtok_r would skip empty lines and lose the line count; walk by hand. */
	for (char *line = text; line; line = save) {
		char *nl = strchr(line, '\n');
		char *eq, *key, *value, *hash;
		int rc;
		save = nl ? nl + 1 : NULL;
		if (nl)
			*nl = 0;
		line_no++;
		hash = strchr(line, '#');
		if (hash && !strchr(line, '"'))
			*hash = 0;
		line = trim(line);
		if (!*line)
			continue;
		eq = strchr(line, '=');
		if (!eq)
			return ssmd_err_set(SSMD_EFORMAT,
					    "%s:%d: expected 'key = value'", path,
					    line_no);
		*eq = 0;
		key = trim(line);
		value = trim(eq + 1);
		if (value[0] == '"') {
			char *q = strchr(value + 1, '"');
			char *rest = q ? trim(q + 1) : NULL;
			if (!q || (rest[0] && rest[0] != '#'))
				return ssmd_err_set(SSMD_EFORMAT,
						    "%s:%d: unterminated quote",
						    path, line_no);
			*q = 0;
			value++;
		}
		rc = cfg_set(c, key, value);
		if (rc)
			return ssmd_err_set(rc, "%s:%d: %s", path, line_no,
					    ssmd_errmsg());
	}
	return SSMD_OK;
}

int cfg_load_file(cfg *c, const char *path)
{
	int rc;
	char *text = file_read(path, &rc);
	const char *p;

	if (!text)
		return rc;
	p = text;
	while (isspace((unsigned char)*p))
		p++;
	if (*p == '{')
		rc = cfg_load_json(c, path, text);
	else
		rc = cfg_load_lines(c, path, text);
	free(text);
	return rc;
}

/* Splits "--key=value" / "--key value"; returns the number of argv entries
 * used, 0 on error. */
static int arg_split(int argc, char **argv, int i, char *key, size_t cap,
		     const char **value)
{
	const char *a = argv[i] + 2;
	const char *eq = strchr(a, '=');
	size_t n = eq ? (size_t)(eq - a) : strlen(a);

	if (n == 0 || n >= cap) {
		ssmd_err_set(SSMD_EINVAL, "bad flag '%s'", argv[i]);
		return 0;
	}
	memcpy(key, a, n);
	key[n] = 0;
	if (eq) {
		*value = eq + 1;
		return 1;
	}
	if (i + 1 >= argc) {
		ssmd_err_set(SSMD_EINVAL, "flag --%s needs a value", key);
		return 0;
	}
	*value = argv[i + 1];
	return 2;
}

int cfg_parse_args(cfg *c, int argc, char **argv)
{
	char key[64];
	const char *value;
	int rc, used;

	/* The file first, so flags override it wherever they appear. */
	for (int i = 1; i < argc; i += used) {
		if (strncmp(argv[i], "--", 2) != 0)
			return ssmd_err_set(SSMD_EINVAL,
					    "unexpected argument '%s'", argv[i]);
		used = arg_split(argc, argv, i, key, sizeof(key), &value);
		if (!used)
			return SSMD_EINVAL;
		if (strcmp(key, "config") == 0) {
			rc = cfg_load_file(c, value);
			if (rc)
				return rc;
		}
	}
	for (int i = 1; i < argc; i += used) {
		used = arg_split(argc, argv, i, key, sizeof(key), &value);
		if (strcmp(key, "config") == 0)
			continue;
		rc = cfg_set(c, key, value);
		if (rc)
			return ssmd_err_set(rc, "--%s: %s", key, ssmd_errmsg());
	}
	return SSMD_OK;
}

static int str_printf(char **dst, const char *fmt, const char *a)
{
	if (asprintf(dst, fmt, a) < 0) {
		*dst = NULL;
		return ssmd_err_set(SSMD_ENOMEM, "config");
	}
	return SSMD_OK;
}

int cfg_finish(cfg *c)
{
	int rc;

	if (!c->model)
		return ssmd_err_set(SSMD_EINVAL, "--model DIR is required");
	if (!c->store)
		return ssmd_err_set(SSMD_EINVAL, "--store PATH is required");
	if (!c->backend && (rc = cfg_set(c, "backend", "auto")))
		return rc;
	if (!c->run_dir) {
		const char *xdg = getenv("XDG_RUNTIME_DIR");
		if (xdg && xdg[0])
			rc = str_printf(&c->run_dir, "%s/ssmd", xdg);
		else
			rc = cfg_set(c, "run_dir", "run");
		if (rc)
			return rc;
	}
	if (!c->listen && (rc = str_printf(&c->listen, "ipc://%s/ssmd.sock",
					   c->run_dir)))
		return rc;
	/* The other sockets sit beside an ipc:// listen socket
	 * (ipc://D/NAME.sock -> ipc://D/NAME-events.sock), the rule clients
	 * use to find them, so daemons sharing a run directory with their
	 * own listen sockets never collide. */
	if (strncmp(c->listen, "ipc://", 6) == 0) {
		size_t n = strlen(c->listen);
		int stem = (int)(n > 5 && strcmp(c->listen + n - 5, ".sock") == 0
				 ? n - 5 : n);
		if (!c->events &&
		    asprintf(&c->events, "%.*s-events.sock", stem, c->listen) < 0)
			c->events = NULL, rc = ssmd_err_set(SSMD_ENOMEM, "config");
		if (!rc && !c->jobs &&
		    asprintf(&c->jobs, "%.*s-jobs.sock", stem, c->listen) < 0)
			c->jobs = NULL, rc = ssmd_err_set(SSMD_ENOMEM, "config");
		if (rc)
			return rc;
	} else {
		/* No sibling of a network address: events go to the run
		 * directory, and the jobs endpoint is opened only on request. */
		if (!c->events && (rc = str_printf(&c->events,
						   "ipc://%s/ssmd-events.sock",
						   c->run_dir)))
			return rc;
		if (!c->jobs && (rc = cfg_set(c, "jobs", "off")))
			return rc;
	}
	return SSMD_OK;
}

void cfg_usage(FILE *f)
{
	cfg d;

	cfg_init(&d);
	fprintf(f, "usage: ssmd --model DIR --store PATH [options]\n\n"
		   "  --config FILE             settings file: 'key = value' lines or a JSON object\n");
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		char flag[48];
		char def[32] = "";
		const void *field = (const char *)&d + keys[i].off;
		size_t n = (size_t)snprintf(flag, sizeof(flag), "--%s", keys[i].name);
		for (size_t j = 2; j < n; j++)
			if (flag[j] == '_')
				flag[j] = '-';
		if (keys[i].type == KEY_INT)
			snprintf(def, sizeof(def), " [%d]", *(const int *)field);
		else if (keys[i].type == KEY_U64)
			snprintf(def, sizeof(def), " [%llu]",
				 (unsigned long long)*(const uint64_t *)field);
		fprintf(f, "  %-25s %s%s\n", flag, keys[i].help, def);
	}
	fprintf(f, "  --help                    this text\n");
}
