/*
 * ssmctl — command line client of ssmd.
 *
 *   ssmctl [--url URL] [--events-url URL] [--jobs-url URL] [--timeout MS]
 *          [--json] COMMAND ...
 *
 * One command per run, one request (or a few) to the daemon through
 * libssmd-client. Output is human-readable by default and one JSON object
 * per result (one per line) with --json. Bare IDs are printed alone on stdout
 * (open, fork, snapshot) so that scripts can write S=$(ssmctl open).
 * Exit status: 0 on success, 1 when the daemon or the connection fails (the
 * message goes to stderr), 2 on a usage error.
 */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ssmd.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2
/* A text file is appended in pieces of about this many bytes, so a large
 * file stays under the daemon's per-request limits and shows progress. */
#define APPEND_CHUNK (256 * 1024)

static const char usage_text[] =
"usage: ssmctl [--url URL] [--events-url URL] [--jobs-url URL] [--timeout MS]\n"
"              [--json] COMMAND\n"
"\n"
"  info                                   daemon, model, backend, limits\n"
"  open [--from ID|TAG] [--fork SESSION] [-n K] [--seed N] [--label L]\n"
"                                         open session(s); prints their IDs\n"
"  append SESSION (--text T | --file F | --tokens 1,2,3 | --message T...)\n"
"         [--checkpoint-every N] [--boundaries 10,20]   (prints checkpoints)\n"
"  generate SESSION [--max-tokens N] [--temperature T] [--top-k K]\n"
"           [--top-p P] [--seed S] [--stop STR]... [--stop-token ID]...\n"
"           [--snapshot] [--tag NAME]   prints tokens as they stream\n"
"  snapshot SESSION [--tag NAME] [--label L]   prints the state ID\n"
"  fork SESSION|ID|TAG [-n K] [--seed S]  prints the new session IDs\n"
"  close SESSION [--snapshot] [--tag NAME] [--label L]\n"
"  states [--tag PREFIX] [--session S] [--kind K] [--all-models]\n"
"         [--limit N] [--cursor C]\n"
"  state ID|TAG                           one state and its lineage\n"
"  tag NAME ID|TAG     untag NAME     rm ID|TAG [--force]\n"
"  export ID|TAG FILE  import FILE [--tag NAME]     stats\n"
"  merge ID|TAG ID|TAG... [--mode interpolate|compose|replay]\n"
"        [--weights 0.7,0.3] [--tag NAME] [--label L] [--open [--seed S]]\n"
"  score SESSION|ID|TAG (--text T | --file F | --tokens 1,2,3)\n"
"  submit open [--from ID|TAG] | append SESSION (--text T | --file F |\n"
"         --tokens 1,2,3) [--checkpoint-every N] | snapshot SESSION\n"
"         [--tag NAME] [--label L] | close SESSION [--snapshot [--tag NAME]]\n"
"                                         push a job to the jobs endpoint;\n"
"                                         prints REQUEST_ID CLIENT_ID once\n"
"                                         the daemon has the job\n"
"  result REQUEST_ID [--client CLIENT_ID] the final reply of a request\n"
"\n"
"URL defaults to $SSMD_URL, else the daemon's default ipc socket.\n";

static int json_out;
/* No events URL is known (another transport than ipc, none given): generate
 * prints its result at the end instead of streaming it. */
static int no_stream;

static int usage(const char *fmt, const char *arg)
{
	if (fmt) {
		fprintf(stderr, "ssmctl: ");
		fprintf(stderr, fmt, arg ? arg : "");
		fputc('\n', stderr);
	}
	fputs(usage_text, stderr);
	return EXIT_USAGE;
}

static int fail(const char *what, int rc)
{
	const char *msg = ssmd_errmsg();

	fprintf(stderr, "ssmctl: %s: %s", what, msg && *msg ? msg : ssmd_strerror(rc));
	if (msg && *msg && strcmp(msg, ssmd_strerror(rc)) != 0)
		fprintf(stderr, " (%s)", ssmd_strerror(rc));
	fputc('\n', stderr);
	return EXIT_FAIL;
}

/* Prints obj as one line of JSON and frees it. */
static void json_print(cJSON *obj)
{
	char *s = cJSON_PrintUnformatted(obj);

	if (s) {
		puts(s);
		free(s);
	}
	cJSON_Delete(obj);
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (!s || !*s || *s == '-')
		return -1;
	v = strtoull(s, &end, 0);
	if (errno || *end)
		return -1;
	*out = v;
	return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
	uint64_t v;

	if (parse_u64(s, &v) || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static int parse_i32(const char *s, int32_t *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < INT32_MIN || v > INT32_MAX)
		return -1;
	*out = (int32_t)v;
	return 0;
}

static int parse_float(const char *s, float *out)
{
	char *end;

	errno = 0;
	*out = strtof(s, &end);
	return (errno || end == s || *end) ? -1 : 0;
}

/* Parses "1,2,3" into a malloc'd array. */
static int parse_tokens(const char *s, int32_t **out, size_t *n)
{
	size_t cap = 1, k = 0;
	int32_t *v;
	char *copy, *tok, *save = NULL;

	for (const char *p = s; *p; p++)
		cap += *p == ',';
	v = malloc(cap * sizeof *v);
	copy = strdup(s);
	if (!v || !copy) {
		free(v);
		free(copy);
		return -1;
	}
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		if (k == cap || parse_i32(tok, &v[k]) || v[k] < 0) {
			free(v);
			free(copy);
			return -1;
		}
		k++;
	}
	free(copy);
	if (k == 0) {
		free(v);
		return -1;
	}
	*out = v;
	*n = k;
	return 0;
}

/* Reads a whole file into a malloc'd buffer (NUL-terminated). */
static int read_file(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n = 0;

	if (!f)
		return ssmd_err_set(SSMD_EIO, "%s: %s", path, strerror(errno));
	for (;;) {
		if (n + 65536 + 1 > cap) {
			size_t ncap = cap ? cap * 2 : 1 << 20;
			char *nb = realloc(buf, ncap);
			if (!nb) {
				free(buf);
				fclose(f);
				return ssmd_err_set(SSMD_ENOMEM, "%s: out of memory", path);
			}
			buf = nb;
			cap = ncap;
		}
		size_t r = fread(buf + n, 1, cap - n - 1, f);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(f)) {
		int e = errno;
		free(buf);
		fclose(f);
		return ssmd_err_set(SSMD_EIO, "%s: %s", path, strerror(e));
	}
	fclose(f);
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return SSMD_OK;
}

static int write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	int ok;

	if (!f)
		return ssmd_err_set(SSMD_EIO, "%s: %s", path, strerror(errno));
	ok = fwrite(data, 1, len, f) == len;
	if (fclose(f) != 0)
		ok = 0;
	if (!ok)
		return ssmd_err_set(SSMD_EIO, "%s: %s", path, strerror(errno));
	return SSMD_OK;
}

/* ---------------------------------------------------------- options -- */

typedef struct cmd_ctx {
	ssmd_client *c;
	int argc;
	char **argv;   /* argv[0] is the command name */
	uint64_t seed; /* the value of --seed, which the args structs point at */
} cmd_ctx;

/* How a command option stores its value; opt_spec.dst points at the type
 * named first. */
typedef enum opt_kind {
	OPT_FLAG,  /* int: set to 1 (the option takes no value) */
	OPT_STR,   /* const char *: the value, borrowed from argv */
	OPT_U32,   /* uint32_t: a number within [min, max] (max 0: no bound) */
	OPT_FLOAT, /* float (NaN and the like are the daemon's to refuse) */
	OPT_SEED,  /* const uint64_t *: set to &cmd_ctx.seed, holding the value */
	OPT_STRS,  /* opt_list of const char *: each use adds its value */
	OPT_I32S,  /* opt_list of int32_t: each use adds one number */
	OPT_F64S,  /* opt_list of double: each use adds "0.7,0.3" */
} opt_kind;

/* One option of a command; a command's table ends with {NULL}. */
typedef struct opt_spec {
	const char *name;  /* long name, without the dashes */
	opt_kind kind;
	void *dst;         /* where the value goes, of the type kind says */
	char short_name;   /* also -X, or 0 */
	uint32_t min, max; /* OPT_U32: the accepted range */
	const char *bad;   /* usage message for a bad value (%s: the value);
			      NULL: "bad --NAME: VALUE" */
} opt_spec;

/* Table rows: an option stored as kind says; a number within [min, max]
 * (max 0: no bound); the end of the table. */
#define OPT(name, kind, dst) {(name), (kind), (dst), 0, 0, 0, NULL}
#define OPT_RANGE(name, dst, min, max) \
	{(name), OPT_U32, (dst), 0, (min), (max), NULL}
#define OPT_END {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL}

/* The values of a repeatable option. v holds argc entries, allocated by
 * opts_parse() (a repeated option cannot appear more often than there are
 * words); the command frees v, also when parsing failed. */
typedef struct opt_list {
	void *v;
	size_t n;
} opt_list;

/* The most options one command has. */
#define OPTS_MAX 16
/* getopt_long value of a long-only option: this plus its index in the table. */
#define OPT_LONG_ONLY 256

static int opt_bad(const opt_spec *s, const char *arg)
{
	char fmt[64];

	if (s->bad)
		return usage(s->bad, arg);
	snprintf(fmt, sizeof fmt, "bad --%s: %%s", s->name);
	return usage(fmt, arg);
}

/* Adds each number of "0.7,0.3" to l (at most cap entries); -1 when one is
 * not a number or there are too many. */
static int parse_doubles(const char *s, opt_list *l, size_t cap)
{
	char *copy = strdup(s), *tok, *save = NULL, *end;
	int bad = !copy;

	for (tok = copy ? strtok_r(copy, ",", &save) : NULL; tok && !bad;
	     tok = strtok_r(NULL, ",", &save)) {
		errno = 0;
		double w = strtod(tok, &end);
		bad = errno || end == tok || *end || l->n >= cap;
		if (!bad)
			((double *)l->v)[l->n++] = w;
	}
	free(copy);
	return bad ? -1 : 0;
}

/* Stores arg as s says; returns 0, or the exit status after the usage
 * message when the value is bad. */
static int opt_store(cmd_ctx *x, const opt_spec *s, const char *arg)
{
	opt_list *l = s->dst;
	size_t cap = (size_t)x->argc;
	uint32_t u;
	int ok = 1;

	switch (s->kind) {
	case OPT_FLAG:
		*(int *)s->dst = 1;
		break;
	case OPT_STR:
		*(const char **)s->dst = arg;
		break;
	case OPT_U32:
		ok = !parse_u32(arg, &u) && u >= s->min &&
		     (!s->max || u <= s->max);
		if (ok)
			*(uint32_t *)s->dst = u;
		break;
	case OPT_FLOAT:
		ok = !parse_float(arg, s->dst);
		break;
	case OPT_SEED:
		ok = !parse_u64(arg, &x->seed);
		if (ok)
			*(const uint64_t **)s->dst = &x->seed;
		break;
	case OPT_STRS:
		ok = l->n < cap;
		if (ok)
			((const char **)l->v)[l->n++] = arg;
		break;
	case OPT_I32S:
		ok = l->n < cap && !parse_i32(arg, &((int32_t *)l->v)[l->n]);
		if (ok)
			l->n++;
		break;
	case OPT_F64S:
		ok = !parse_doubles(arg, l, cap);
		break;
	}
	return ok ? 0 : opt_bad(s, arg);
}

static size_t opt_list_elem(opt_kind kind)
{
	switch (kind) {
	case OPT_STRS: return sizeof(const char *);
	case OPT_I32S: return sizeof(int32_t);
	case OPT_F64S: return sizeof(double);
	default: return 0;
	}
}

/* Parses the options of the command in x->argv by the table specs (options
 * and operands may come in any order) and checks that between min_args and
 * max_args operands (max_args -1: any number) follow, else prints the usage
 * message args_msg (%s: the first extra operand). optind then indexes the
 * first operand. Returns 0, or the exit status after printing why not. */
static int opts_parse(cmd_ctx *x, const opt_spec *specs, int min_args,
		      int max_args, const char *args_msg)
{
	struct option lo[OPTS_MAX + 1];
	char shorts[2 * OPTS_MAX + 1];
	size_t n, ns = 0;
	int o, rc, n_args;

	for (n = 0; specs[n].name; n++) {
		const opt_spec *s = &specs[n];
		int has_arg = s->kind == OPT_FLAG ? no_argument : required_argument;
		size_t elem = opt_list_elem(s->kind);

		assert(n < OPTS_MAX);
		lo[n] = (struct option){s->name, has_arg, NULL,
			s->short_name ? s->short_name : OPT_LONG_ONLY + (int)n};
		if (s->short_name) {
			shorts[ns++] = s->short_name;
			if (has_arg)
				shorts[ns++] = ':';
		}
		if (elem && !(((opt_list *)s->dst)->v = calloc((size_t)x->argc, elem)))
			return fail(x->argv[0], ssmd_err_set(SSMD_ENOMEM, "out of memory"));
	}
	lo[n] = (struct option){NULL, 0, NULL, 0};
	shorts[ns] = '\0';
	while ((o = getopt_long(x->argc, x->argv, shorts, lo, NULL)) != -1) {
		const opt_spec *s = NULL;
		for (size_t i = 0; i < n && !s; i++)
			if (lo[i].val == o)
				s = &specs[i];
		if (!s)
			return usage(NULL, NULL);
		if ((rc = opt_store(x, s, optarg)))
			return rc;
	}
	n_args = x->argc - optind;
	if (n_args < min_args || (max_args >= 0 && n_args > max_args))
		return usage(args_msg, x->argv[optind]);
	return 0;
}

/* --------------------------------------------------------- commands -- */

static int cmd_info(cmd_ctx *x)
{
	ssmd_info i;
	int rc;

	if (x->argc != 1)
		return usage("info takes no arguments", NULL);
	if ((rc = ssmd_info_get(x->c, &i)))
		return fail("info", rc);
	if (json_out) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "version", i.version);
		cJSON_AddNumberToObject(o, "protocol_version", i.protocol_version);
		cJSON_AddStringToObject(o, "model", i.model);
		cJSON_AddStringToObject(o, "model_fingerprint", i.model_fingerprint);
		cJSON_AddStringToObject(o, "arch", i.arch);
		cJSON_AddNumberToObject(o, "d_model", i.d_model);
		cJSON_AddNumberToObject(o, "n_layer", i.n_layer);
		cJSON_AddNumberToObject(o, "d_inner", i.d_inner);
		cJSON_AddNumberToObject(o, "d_state", i.d_state);
		cJSON_AddNumberToObject(o, "vocab_size", i.vocab_size);
		cJSON_AddStringToObject(o, "backend", i.backend);
		cJSON_AddNumberToObject(o, "slots", i.slots);
		cJSON_AddNumberToObject(o, "state_bytes", (double)i.state_bytes);
		cJSON_AddBoolToObject(o, "has_tokenizer", i.has_tokenizer);
		cJSON_AddNumberToObject(o, "checkpoint_every", i.checkpoint_every);
		cJSON *l = cJSON_AddObjectToObject(o, "limits");
		cJSON_AddNumberToObject(l, "max_message_bytes", (double)i.max_message_bytes);
		cJSON_AddNumberToObject(l, "max_append_tokens", i.max_append_tokens);
		cJSON_AddNumberToObject(l, "max_generate_tokens", i.max_generate_tokens);
		cJSON_AddNumberToObject(l, "max_sessions", i.max_sessions);
		cJSON_AddNumberToObject(l, "queue_depth", i.queue_depth);
		cJSON_AddNumberToObject(l, "max_stop", i.max_stop);
		json_print(o);
		return 0;
	}
	printf("ssmd %s (protocol %u)\n", i.version, i.protocol_version);
	printf("model        %s (%s, d_model %u, %u layers, d_inner %u, d_state %u, vocab %u)\n",
	       i.model, i.arch, i.d_model, i.n_layer, i.d_inner, i.d_state,
	       i.vocab_size);
	printf("fingerprint  %s\n", i.model_fingerprint);
	printf("tokenizer    %s\n", i.has_tokenizer ? "yes" : "no (token IDs only)");
	printf("backend      %s, %u slots\n", i.backend, i.slots);
	printf("state size   %" PRIu64 " bytes\n", i.state_bytes);
	if (i.checkpoint_every)
		printf("checkpoints  every %u tokens\n", i.checkpoint_every);
	else
		printf("checkpoints  off\n");
	printf("limits       message %" PRIu64 " B, append %u tokens, generate %u tokens, "
	       "%u sessions, queue %u, %u stops\n", i.max_message_bytes,
	       i.max_append_tokens, i.max_generate_tokens, i.max_sessions,
	       i.queue_depth, i.max_stop);
	return 0;
}

/* -n K, --count K of open and fork: how many sessions. */
#define COUNT_OPT(dst) \
	{"count", OPT_U32, (dst), 'n', 1, 4096, "bad -n: %s (1..4096)"}

static void print_sessions(const ssmd_session *s, uint32_t n)
{
	for (uint32_t k = 0; k < n; k++) {
		if (json_out) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "session", s[k].id);
			cJSON_AddNumberToObject(o, "n_tokens", (double)s[k].n_tokens);
			cJSON_AddStringToObject(o, "base_state", s[k].base_state);
			json_print(o);
		} else {
			puts(s[k].id);
		}
	}
}

static int cmd_open(cmd_ctx *x)
{
	ssmd_open_args a = {.count = 1};
	const opt_spec opts[] = {
		OPT("from", OPT_STR, &a.from),
		OPT("fork", OPT_STR, &a.fork),
		OPT("seed", OPT_SEED, &a.seed),
		OPT("label", OPT_STR, &a.label),
		COUNT_OPT(&a.count),
		OPT_END,
	};
	ssmd_session *s;
	int rc;

	if ((rc = opts_parse(x, opts, 0, 0, "open: unexpected argument %s")))
		return rc;
	if (a.from && a.fork)
		return usage("open: give --from or --fork, not both", NULL);
	if (!(s = calloc(a.count, sizeof *s)))
		return fail("open", ssmd_err_set(SSMD_ENOMEM, "out of memory"));
	if ((rc = ssmd_session_open(x->c, &a, s))) {
		free(s);
		return fail("open", rc);
	}
	print_sessions(s, a.count);
	free(s);
	return 0;
}

static int cmd_fork(cmd_ctx *x)
{
	uint32_t count = 1;
	const uint64_t *seedp = NULL;
	const opt_spec opts[] = {
		OPT("seed", OPT_SEED, &seedp),
		COUNT_OPT(&count),
		OPT_END,
	};
	ssmd_session *s;
	int rc;

	if ((rc = opts_parse(x, opts, 1, 1,
				 "fork needs one SESSION, state ID or tag")))
		return rc;
	if (!(s = calloc(count, sizeof *s)))
		return fail("fork", ssmd_err_set(SSMD_ENOMEM, "out of memory"));
	if ((rc = ssmd_session_fork(x->c, x->argv[optind], count, seedp, s))) {
		free(s);
		return fail("fork", rc);
	}
	print_sessions(s, count);
	free(s);
	return 0;
}

/* Draws "append [#####.....] 45% 1.2/2.7 MB" on stderr. */
static void progress(size_t done, size_t total)
{
	int width = 30, fill = total ? (int)((double)done / total * width) : width;

	fprintf(stderr, "\rappend [%.*s%.*s] %3d%% %.1f/%.1f MB", fill,
		"##############################", width - fill,
		"..............................",
		total ? (int)(100.0 * done / total) : 100, done / 1e6, total / 1e6);
	if (done == total)
		fputc('\n', stderr);
	fflush(stderr);
}

/* End of the next piece of text[from..len): at most about APPEND_CHUNK bytes,
 * cut just after a newline that is followed by a non-space character. A
 * byte-level BPE tokenizer's pre-tokenizer splits there anyway (the newline
 * is a piece of its own and the next piece starts at that character), so the
 * pieces tokenize to exactly the tokens of the whole text. Without such a
 * place the rest goes as one piece. */
static size_t next_cut(const char *text, size_t from, size_t len)
{
	if (len - from <= APPEND_CHUNK)
		return len;
	for (size_t i = from + APPEND_CHUNK; i + 1 < len; i++) {
		if (text[i] == '\n' && text[i + 1] != '\n' && text[i + 1] != ' ' &&
		    text[i + 1] != '\t' && text[i + 1] != '\r' &&
		    ((unsigned char)text[i + 1] & 0xC0) != 0x80)
			return i + 1;
	}
	return len;
}

/* Parses "10,20,30" into a malloc'd array of positive offsets. */
static int parse_offsets(const char *s, uint32_t **out, size_t *n)
{
	int32_t *v;
	uint32_t *u;

	if (parse_tokens(s, &v, n))
		return -1;
	u = malloc(*n * sizeof *u);
	if (!u) {
		free(v);
		return -1;
	}
	for (size_t i = 0; i < *n; i++) {
		if (v[i] == 0) { /* parse_tokens() refused negatives */
			free(v);
			free(u);
			return -1;
		}
		u[i] = (uint32_t)v[i];
	}
	free(v);
	*out = u;
	return 0;
}

/* Appends the checkpoints of one request to the running list. */
static int add_checkpoints(ssmd_checkpoint **all, size_t *n_all,
			   ssmd_checkpoint *ck, size_t n)
{
	ssmd_checkpoint *grown;

	if (!n)
		return 0;
	grown = realloc(*all, (*n_all + n) * sizeof *grown);
	if (!grown)
		return -1;
	memcpy(grown + *n_all, ck, n * sizeof *ck);
	*all = grown;
	*n_all += n;
	return 0;
}

/* The input of append, score and submit append: --text, --file or --tokens. */
typedef struct cmd_input {
	const char *text;   /* --text, or the file's contents once loaded */
	const char *file;   /* --file */
	const char *tokens; /* --tokens "1,2,3" */
	int32_t *ids;       /* n_ids tokens parsed from --tokens (malloc'd) */
	size_t n_ids;
	char *buf;          /* the file's contents (malloc'd, len bytes) */
	size_t len;
} cmd_input;

#define INPUT_OPTS(in)                        \
	OPT("text", OPT_STR, &(in)->text),     \
	OPT("file", OPT_STR, &(in)->file),     \
	OPT("tokens", OPT_STR, &(in)->tokens)

/* How many of --text, --file and --tokens were given. */
static int input_given(const cmd_input *in)
{
	return (in->text != NULL) + (in->file != NULL) + (in->tokens != NULL);
}

/* Parses --tokens into in->ids or reads --file into in->buf (in->text then
 * points at it). Returns 0, or the exit status after printing why not
 * (cmd: the command named in a failure). */
static int input_load(cmd_input *in, const char *cmd)
{
	int rc;

	if (in->tokens && parse_tokens(in->tokens, &in->ids, &in->n_ids))
		return usage("bad --tokens: %s (want 1,2,3)", in->tokens);
	if (in->file) {
		if ((rc = read_file(in->file, &in->buf, &in->len)))
			return fail(cmd, rc);
		in->text = in->buf;
	}
	return 0;
}

static void input_fini(cmd_input *in)
{
	free(in->ids);
	free(in->buf);
}

static int cmd_append(cmd_ctx *x)
{
	ssmd_append_args a = {0};
	cmd_input in = {0};
	opt_list messages = {0};
	const char *bounds = NULL;
	const opt_spec opts[] = {
		INPUT_OPTS(&in),
		OPT("message", OPT_STRS, &messages),
		OPT_RANGE("checkpoint-every", &a.checkpoint_every, 1, 0),
		OPT("boundaries", OPT_STR, &bounds),
		OPT_END,
	};
	const char *session;
	size_t n_ck_all = 0;
	ssmd_append_result r, total = {0};
	ssmd_checkpoint *ck_all = NULL, *ck = NULL;
	uint32_t *offsets = NULL;
	int rc = 0, ret;

	if ((ret = opts_parse(x, opts, 1, 1, "append needs one SESSION")))
		goto done;
	ret = EXIT_USAGE;
	if (input_given(&in) + (messages.n > 0) != 1) {
		usage("append needs exactly one of --text, --file, --tokens, "
		      "--message...", NULL);
		goto done;
	}
	if (bounds && parse_offsets(bounds, &offsets, &a.n_boundaries)) {
		usage("bad --boundaries: %s (want 10,20,30)", bounds);
		goto done;
	}
	a.boundaries = offsets;
	session = x->argv[optind];
	if ((ret = input_load(&in, "append")))
		goto done;
	a.tokens = in.ids;
	a.n_tokens = in.n_ids;
	if (messages.n) {
		a.texts = messages.v;
		a.n_texts = messages.n;
	}
	if (!in.file) {
		a.text = in.text;
		rc = ssmd_append(x->c, session, &a, &total, &ck);
		if (rc == SSMD_OK && add_checkpoints(&ck_all, &n_ck_all, ck,
						      total.n_checkpoints))
			rc = ssmd_err_set(SSMD_ENOMEM, "out of memory");
		ssmd_free(ck);
		ck = NULL;
	} else {
		char *buf = in.buf;
		size_t len = in.len, from = 0;
		int bar;
		/* Checkpoint offsets count from the start of one append:
		 * with them the file goes whole. */
		int whole = a.checkpoint_every || a.n_boundaries;
		bar = !whole && isatty(STDERR_FILENO) && len > APPEND_CHUNK;
		while (from < len && rc == SSMD_OK) {
			size_t cut = whole ? len : next_cut(buf, from, len);
			char saved = buf[cut];
			buf[cut] = '\0';
			a.text = buf + from;
			rc = ssmd_append(x->c, session, &a, &r, &ck);
			buf[cut] = saved;
			if (rc == SSMD_OK) {
				total.n_appended += r.n_appended;
				total.n_tokens = r.n_tokens;
				total.n_checkpoints += r.n_checkpoints;
				if (add_checkpoints(&ck_all, &n_ck_all, ck,
						    r.n_checkpoints))
					rc = ssmd_err_set(SSMD_ENOMEM, "out of memory");
				from = cut;
				if (bar)
					progress(from, len);
			}
			ssmd_free(ck);
			ck = NULL;
		}
		if (bar && rc != SSMD_OK)
			fputc('\n', stderr);
	}
	if (rc) {
		ret = fail("append", rc);
		goto done;
	}
	if (json_out) {
		cJSON *o2 = cJSON_CreateObject();
		cJSON *arr;
		cJSON_AddStringToObject(o2, "session", session);
		cJSON_AddNumberToObject(o2, "appended", total.n_appended);
		cJSON_AddNumberToObject(o2, "n_tokens", (double)total.n_tokens);
		arr = cJSON_AddArrayToObject(o2, "checkpoints");
		for (size_t i = 0; i < n_ck_all; i++) {
			cJSON *e = cJSON_CreateObject();
			cJSON_AddStringToObject(e, "id", ck_all[i].id);
			cJSON_AddNumberToObject(e, "n_tokens", (double)ck_all[i].n_tokens);
			cJSON_AddItemToArray(arr, e);
		}
		json_print(o2);
	} else {
		printf("appended %u tokens (session %s now at %" PRIu64 " tokens)\n",
		       total.n_appended, session, total.n_tokens);
		for (size_t i = 0; i < n_ck_all; i++)
			printf("checkpoint %s at %" PRIu64 " tokens\n", ck_all[i].id,
			       ck_all[i].n_tokens);
	}
	ret = 0;
done:
	input_fini(&in);
	free(ck_all);
	free(offsets);
	free(messages.v);
	return ret;
}

static int cmd_merge(cmd_ctx *x)
{
	ssmd_merge_args a = {0};
	opt_list weights = {0};
	const opt_spec opts[] = {
		/* "0.7,0.3" or repeated --weights */
		{"weights", OPT_F64S, &weights, 0, 0, 0,
		 "bad --weights: %s (want 0.7,0.3)"},
		OPT("mode", OPT_STR, &a.mode),
		OPT("tag", OPT_STR, &a.tag),
		OPT("label", OPT_STR, &a.label),
		OPT("open", OPT_FLAG, &a.open),
		OPT("seed", OPT_SEED, &a.seed),
		OPT_END,
	};
	ssmd_state_ref r;
	ssmd_session ses;
	int rc, ret;

	if ((ret = opts_parse(x, opts, 2, -1,
				 "merge needs at least two IDs or tags")))
		goto done;
	a.sources = (const char *const *)(x->argv + optind);
	a.n_sources = (size_t)(x->argc - optind);
	if (weights.n) {
		a.weights = weights.v;
		a.n_weights = weights.n;
	}
	if ((rc = ssmd_merge(x->c, &a, &r, &ses))) {
		ret = fail("merge", rc);
		goto done;
	}
	if (json_out) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "state_id", r.id);
		cJSON_AddNumberToObject(j, "n_tokens", (double)r.n_tokens);
		if (a.open)
			cJSON_AddStringToObject(j, "session", ses.id);
		json_print(j);
	} else {
		puts(r.id);
		if (a.open)
			puts(ses.id);
	}
	ret = 0;
done:
	free(weights.v);
	return ret;
}

static int cmd_score(cmd_ctx *x)
{
	cmd_input in = {0};
	const opt_spec opts[] = {
		INPUT_OPTS(&in),
		OPT_END,
	};
	ssmd_score *sc = NULL;
	int rc;

	if ((rc = opts_parse(x, opts, 1, 1,
				 "score needs one SESSION, state ID or tag")))
		return rc;
	if (input_given(&in) != 1)
		return usage("score needs exactly one of --text, --file, --tokens", NULL);
	if ((rc = input_load(&in, "score"))) {
		input_fini(&in);
		return rc;
	}
	if (in.tokens)
		rc = ssmd_score_tokens(x->c, x->argv[optind], in.ids, in.n_ids, &sc);
	else
		rc = ssmd_score_text(x->c, x->argv[optind], in.text, &sc);
	input_fini(&in);
	if (rc)
		return fail("score", rc);
	size_t scored = sc->n_tokens - sc->unscored;
	if (json_out) {
		cJSON *j = cJSON_CreateObject();
		cJSON *t = cJSON_AddArrayToObject(j, "tokens");
		cJSON *l = cJSON_AddArrayToObject(j, "token_logprobs");
		cJSON_AddNumberToObject(j, "logprob", sc->logprob);
		cJSON_AddNumberToObject(j, "unscored", sc->unscored);
		for (size_t i = 0; i < sc->n_tokens; i++)
			cJSON_AddItemToArray(t, cJSON_CreateNumber(sc->tokens[i]));
		for (size_t i = 0; i < scored; i++)
			cJSON_AddItemToArray(l, cJSON_CreateNumber(sc->token_logprobs[i]));
		json_print(j);
	} else if (scored) {
		printf("logprob %.4f over %zu tokens (%.4f per token, perplexity %.2f)\n",
		       sc->logprob, scored, sc->logprob / (double)scored,
		       exp(-sc->logprob / (double)scored));
	} else {
		printf("no token scored\n");
	}
	ssmd_score_free(sc);
	return 0;
}

/* Streaming output of generate: the text as it arrives, or token IDs when
 * the model has no tokenizer. */
typedef struct gen_out {
	int ids;        /* print token IDs instead of text */
	size_t printed; /* tokens printed so far */
} gen_out;

static void on_tokens(void *ctx, const int32_t *tokens, size_t n,
		      const char *text, size_t text_len)
{
	gen_out *g = ctx;

	if (g->ids) {
		for (size_t i = 0; i < n; i++)
			printf("%s%" PRId32, g->printed + i ? " " : "", tokens[i]);
	} else {
		fwrite(text, 1, text_len, stdout);
	}
	g->printed += n;
	fflush(stdout);
}

static int cmd_generate(cmd_ctx *x)
{
	ssmd_generate_args a;
	opt_list stops = {0}, stop_tokens = {0};
	const opt_spec opts[] = {
		OPT_RANGE("max-tokens", &a.max_tokens, 1, 0),
		OPT("temperature", OPT_FLOAT, &a.temperature),
		OPT("top-k", OPT_U32, &a.top_k),
		OPT("top-p", OPT_FLOAT, &a.top_p),
		OPT("seed", OPT_SEED, &a.seed),
		OPT("stop", OPT_STRS, &stops),
		OPT("stop-token", OPT_I32S, &stop_tokens),
		OPT("snapshot", OPT_FLAG, &a.snapshot),
		OPT("tag", OPT_STR, &a.snapshot_tag),
		OPT("label", OPT_STR, &a.snapshot_label),
		OPT_END,
	};
	ssmd_generation *g = NULL;
	ssmd_info info;
	gen_out out = {0, 0};
	int rc, ret;

	ssmd_generate_args_init(&a);
	if ((ret = opts_parse(x, opts, 1, 1, "generate needs one SESSION")))
		goto done;
	if ((a.snapshot_tag || a.snapshot_label) && !a.snapshot) {
		ret = usage("--tag and --label go with --snapshot", NULL);
		goto done;
	}
	a.stop = stops.v;
	a.n_stop = stops.n;
	a.stop_tokens = stop_tokens.v;
	a.n_stop_tokens = stop_tokens.n;

	if (json_out) {
		rc = ssmd_generate(x->c, x->argv[optind], &a, NULL, NULL, &g);
	} else {
		if ((rc = ssmd_info_get(x->c, &info))) {
			ret = fail("generate", rc);
			goto done;
		}
		out.ids = !info.has_tokenizer;
		rc = ssmd_generate(x->c, x->argv[optind], &a,
				   no_stream ? NULL : on_tokens, &out, &g);
		if (rc == SSMD_OK && no_stream)
			on_tokens(&out, g->tokens, g->n_tokens, g->text,
				  strlen(g->text));
		if (out.printed)
			putchar('\n');
	}
	if (rc) {
		ret = fail("generate", rc);
		goto done;
	}
	if (json_out) {
		cJSON *j = cJSON_CreateObject();
		cJSON *arr = cJSON_AddArrayToObject(j, "tokens");
		for (size_t i = 0; i < g->n_tokens; i++)
			cJSON_AddItemToArray(arr, cJSON_CreateNumber(g->tokens[i]));
		cJSON_AddStringToObject(j, "text", g->text);
		cJSON_AddStringToObject(j, "finish", ssmd_finish_name(g->finish));
		cJSON_AddNumberToObject(j, "n_tokens", (double)g->session_tokens);
		if (g->state_id[0])
			cJSON_AddStringToObject(j, "state_id", g->state_id);
		json_print(j);
	} else if (g->state_id[0]) {
		fprintf(stderr, "state %s\n", g->state_id);
	}
	ret = 0;
done:
	ssmd_generation_free(g);
	free(stops.v);
	free(stop_tokens.v);
	return ret;
}

static void print_state_ref(const char *key, const ssmd_state_ref *r)
{
	if (json_out) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, key, r->id);
		cJSON_AddNumberToObject(o, "n_tokens", (double)r->n_tokens);
		json_print(o);
	} else if (r->id[0]) {
		puts(r->id);
	}
}

static int cmd_snapshot(cmd_ctx *x)
{
	const char *tag = NULL, *label = NULL;
	const opt_spec opts[] = {
		OPT("tag", OPT_STR, &tag),
		OPT("label", OPT_STR, &label),
		OPT_END,
	};
	ssmd_state_ref r;
	int rc;

	if ((rc = opts_parse(x, opts, 1, 1, "snapshot needs one SESSION")))
		return rc;
	if ((rc = ssmd_session_snapshot(x->c, x->argv[optind], tag, label, &r)))
		return fail("snapshot", rc);
	print_state_ref("state_id", &r);
	return 0;
}

static int cmd_close(cmd_ctx *x)
{
	const char *tag = NULL, *label = NULL;
	int snap = 0, rc;
	const opt_spec opts[] = {
		OPT("snapshot", OPT_FLAG, &snap),
		OPT("tag", OPT_STR, &tag),
		OPT("label", OPT_STR, &label),
		OPT_END,
	};
	ssmd_state_ref r;

	if ((rc = opts_parse(x, opts, 1, 1, "close needs one SESSION")))
		return rc;
	if ((tag || label) && !snap)
		return usage("--tag and --label go with --snapshot", NULL);
	if ((rc = ssmd_session_close(x->c, x->argv[optind], snap, tag, label, &r)))
		return fail("close", rc);
	print_state_ref("state_id", &r);
	return 0;
}

/* ------------------------------------------------------------- jobs -- */

/* ssmctl submit OP ...: pushes one request to the jobs endpoint and, once
 * the daemon has it (not once it has run), prints its request ID and this
 * process's client ID, which `ssmctl result` needs to find it (request IDs
 * are scoped by client). */
static int cmd_submit(cmd_ctx *x)
{
	ssmd_open_args oa = {0};
	ssmd_append_args aa = {0};
	ssmd_job job = {0};
	cmd_input in = {0};
	const opt_spec opts[] = {
		OPT("from", OPT_STR, &oa.from),
		INPUT_OPTS(&in),
		OPT_RANGE("checkpoint-every", &aa.checkpoint_every, 1, 0),
		OPT("tag", OPT_STR, &job.tag),
		OPT("label", OPT_STR, &job.label),
		OPT("snapshot", OPT_FLAG, &job.snapshot),
		OPT_END,
	};
	const char *op;
	char rid[SSMD_REQUEST_ID_MAX];
	int rc, ret, want_session;

	if (x->argc < 2)
		return usage("submit needs an operation: open, append, snapshot "
			     "or close", NULL);
	op = x->argv[1];
	x->argc--;
	x->argv++;
	/* The operands are counted once the operation is known. */
	if ((ret = opts_parse(x, opts, 0, -1, NULL)))
		goto done;
	ret = EXIT_USAGE;
	if (strcmp(op, "open") == 0) {
		job.op = SSMD_OP_OPEN;
		job.open = &oa;
	} else if (strcmp(op, "append") == 0) {
		job.op = SSMD_OP_APPEND;
		job.append = &aa;
	} else if (strcmp(op, "snapshot") == 0) {
		job.op = SSMD_OP_SNAPSHOT;
	} else if (strcmp(op, "close") == 0) {
		job.op = SSMD_OP_CLOSE;
	} else {
		usage("submit: no operation %s (open, append, snapshot, close)", op);
		goto done;
	}
	/* Each option belongs to one operation: refuse the others'. */
	if ((oa.from && job.op != SSMD_OP_OPEN) ||
	    ((input_given(&in) || aa.checkpoint_every) &&
	     job.op != SSMD_OP_APPEND) ||
	    ((job.tag || job.label) && job.op != SSMD_OP_SNAPSHOT &&
	     !(job.op == SSMD_OP_CLOSE && job.snapshot)) ||
	    (job.snapshot && job.op != SSMD_OP_CLOSE)) {
		usage("submit %s: an option of another operation", op);
		goto done;
	}
	want_session = job.op != SSMD_OP_OPEN;
	if (optind + want_session != x->argc) {
		usage(want_session ? "submit %s needs one SESSION"
		      : "submit %s takes no SESSION", op);
		goto done;
	}
	job.session = want_session ? x->argv[optind] : NULL;
	if (job.op == SSMD_OP_APPEND) {
		if (input_given(&in) != 1) {
			usage("submit append needs exactly one of --text, --file, "
			      "--tokens", NULL);
			goto done;
		}
		/* A job is one request: the file goes whole (the blocking
		 * append sends large files in pieces). */
		if ((ret = input_load(&in, "submit")))
			goto done;
		aa.tokens = in.ids;
		aa.n_tokens = in.n_ids;
		aa.text = in.text;
	}
	if ((rc = ssmd_submit(x->c, &job, rid))) {
		ret = fail("submit", rc);
		goto done;
	}
	/* ssmctl exits right away, and closing the client could drop a job
	 * still queued in the jobs socket (see ssmd_submit()): return once
	 * the daemon has it. */
	if ((rc = ssmd_submit_wait(x->c, rid))) {
		ret = fail("submit", rc);
		goto done;
	}
	if (json_out) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "request_id", rid);
		cJSON_AddStringToObject(j, "client_id", ssmd_client_id(x->c));
		json_print(j);
	} else {
		printf("%s %s\n", rid, ssmd_client_id(x->c));
	}
	ret = 0;
done:
	input_fini(&in);
	return ret;
}

/* ssmctl result REQUEST_ID [--client ID]: prints the final reply of an
 * earlier request; exits 1 with its message when that request failed. */
static int cmd_result(cmd_ctx *x)
{
	const char *client = NULL;
	const opt_spec opts[] = {
		OPT("client", OPT_STR, &client),
		OPT_END,
	};
	ssmd_reply *r = NULL;
	int rc;

	if ((rc = opts_parse(x, opts, 1, 1, "result needs one REQUEST_ID")))
		return rc;
	if ((rc = ssmd_result(x->c, x->argv[optind], client, &r)))
		return fail("result", rc);
	if (r->code != SSMD_OK) {
		ssmd_err_set(r->code, "%s", r->message);
		rc = fail(x->argv[optind], r->code);
		ssmd_reply_free(r);
		return rc;
	}
	if (json_out) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "request_id", r->request_id);
		if (r->kind == SSMD_REPLY_SESSIONS || r->n_sessions) {
			cJSON *arr = cJSON_AddArrayToObject(j, "sessions");
			for (size_t i = 0; i < r->n_sessions; i++)
				cJSON_AddItemToArray(arr, cJSON_CreateString(
					r->sessions[i].id));
		}
		if (r->kind == SSMD_REPLY_APPEND) {
			cJSON_AddNumberToObject(j, "appended", r->append.n_appended);
			cJSON_AddNumberToObject(j, "n_tokens",
						(double)r->append.n_tokens);
		}
		if (r->kind == SSMD_REPLY_GENERATE) {
			cJSON *arr = cJSON_AddArrayToObject(j, "tokens");
			for (size_t i = 0; i < r->generation->n_tokens; i++)
				cJSON_AddItemToArray(arr, cJSON_CreateNumber(
					r->generation->tokens[i]));
			cJSON_AddStringToObject(j, "text", r->generation->text);
			cJSON_AddNumberToObject(j, "n_tokens",
				(double)r->generation->session_tokens);
		}
		if (r->kind == SSMD_REPLY_STATE || r->kind == SSMD_REPLY_MERGE) {
			cJSON_AddStringToObject(j, "state_id", r->state.id);
			cJSON_AddNumberToObject(j, "n_tokens",
						(double)r->state.n_tokens);
		}
		json_print(j);
	} else {
		for (size_t i = 0; i < r->n_sessions; i++)
			puts(r->sessions[i].id);
		if (r->kind == SSMD_REPLY_APPEND)
			printf("appended %u tokens (session now at %" PRIu64
			       " tokens)\n", r->append.n_appended,
			       r->append.n_tokens);
		if (r->kind == SSMD_REPLY_GENERATE)
			printf("%s\n", r->generation->text);
		if ((r->kind == SSMD_REPLY_STATE || r->kind == SSMD_REPLY_MERGE)
		    && r->state.id[0])
			puts(r->state.id);
	}
	ssmd_reply_free(r);
	return 0;
}

static cJSON *state_json(const ssmd_state_info *s)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *tags;

	cJSON_AddStringToObject(o, "id", s->id);
	cJSON_AddStringToObject(o, "parent", s->parent);
	cJSON_AddStringToObject(o, "kind", s->kind);
	cJSON_AddNumberToObject(o, "n_tokens", (double)s->n_tokens);
	cJSON_AddNumberToObject(o, "created_ms", (double)s->created_ms);
	cJSON_AddStringToObject(o, "label", s->label);
	cJSON_AddStringToObject(o, "metadata", s->metadata);
	cJSON_AddNumberToObject(o, "raw_bytes", (double)s->raw_bytes);
	cJSON_AddNumberToObject(o, "stored_bytes", (double)s->stored_bytes);
	cJSON_AddStringToObject(o, "model_fingerprint", s->model_fingerprint);
	cJSON_AddNumberToObject(o, "transcript_tokens", (double)s->transcript_tokens);
	tags = cJSON_AddArrayToObject(o, "tags");
	for (size_t i = 0; i < s->n_tags; i++)
		cJSON_AddItemToArray(tags, cJSON_CreateString(s->tags[i]));
	return o;
}

static void format_time(int64_t ms, char *buf, size_t cap)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	if (!localtime_r(&t, &tm) || !strftime(buf, cap, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(buf, cap, "%" PRId64, ms);
}

static void print_tags(const ssmd_state_info *s)
{
	for (size_t i = 0; i < s->n_tags; i++)
		printf("%s%s", i ? "," : "", s->tags[i]);
	if (!s->n_tags)
		printf("-");
}

static int cmd_states(cmd_ctx *x)
{
	ssmd_states_filter f = {0};
	const opt_spec opts[] = {
		OPT("tag", OPT_STR, &f.tag_prefix),
		OPT("session", OPT_STR, &f.session),
		OPT("kind", OPT_STR, &f.kind),
		OPT("all-models", OPT_FLAG, &f.all_models),
		OPT_RANGE("limit", &f.limit, 1, 0),
		OPT("cursor", OPT_STR, &f.cursor),
		OPT_END,
	};
	ssmd_state_list *l;
	int rc;

	if ((rc = opts_parse(x, opts, 0, 0, "states: unexpected argument %s")))
		return rc;
	if ((rc = ssmd_states_list(x->c, &f, &l)))
		return fail("states", rc);
	if (!json_out && l->n)
		printf("%-32s %10s %-10s %-19s %9s  %s\n", "ID", "TOKENS", "KIND",
		       "CREATED", "STORED", "TAGS");
	for (size_t i = 0; i < l->n; i++) {
		const ssmd_state_info *s = &l->states[i];
		if (json_out) {
			json_print(state_json(s));
			continue;
		}
		char when[32];
		format_time(s->created_ms, when, sizeof when);
		printf("%-32s %10" PRIu64 " %-10s %-19s %9" PRIu64 "  ", s->id,
		       s->n_tokens, s->kind, when, s->stored_bytes);
		print_tags(s);
		putchar('\n');
	}
	if (l->next_cursor[0] && !json_out)
		fprintf(stderr, "more: ssmctl states --cursor %s\n", l->next_cursor);
	ssmd_state_list_free(l);
	return 0;
}

static int cmd_state(cmd_ctx *x)
{
	ssmd_state_list *l;
	int rc;

	if (x->argc != 2)
		return usage("state needs one ID or TAG", NULL);
	if ((rc = ssmd_state_get(x->c, x->argv[1], &l)))
		return fail("state", rc);
	const ssmd_state_info *s = &l->states[0];
	if (json_out) {
		cJSON *o = state_json(s);
		cJSON *lin = cJSON_AddArrayToObject(o, "lineage");
		for (size_t i = 1; i < l->n; i++)
			cJSON_AddItemToArray(lin, state_json(&l->states[i]));
		json_print(o);
	} else {
		char when[32];
		format_time(s->created_ms, when, sizeof when);
		printf("id           %s\n", s->id);
		printf("kind         %s\n", s->kind);
		printf("tokens       %" PRIu64 " (%" PRIu64 " since parent)\n",
		       s->n_tokens, s->transcript_tokens);
		printf("created      %s\n", when);
		printf("size         %" PRIu64 " bytes stored, %" PRIu64 " raw\n",
		       s->stored_bytes, s->raw_bytes);
		printf("model        %s\n", s->model_fingerprint);
		printf("tags         ");
		print_tags(s);
		putchar('\n');
		if (s->label[0])
			printf("label        %s\n", s->label);
		if (s->metadata[0])
			printf("metadata     %s\n", s->metadata);
		printf("lineage      %s\n", l->n > 1 ? "" : "(root)");
		for (size_t i = 1; i < l->n; i++)
			printf("  %s %10" PRIu64 " tokens  %s\n", l->states[i].id,
			       l->states[i].n_tokens, l->states[i].kind);
	}
	ssmd_state_list_free(l);
	return 0;
}

static int cmd_tag(cmd_ctx *x)
{
	ssmd_state_ref r;
	int rc;

	if (x->argc != 3)
		return usage("tag needs NAME and ID", NULL);
	if ((rc = ssmd_tag_set(x->c, x->argv[1], x->argv[2], &r)))
		return fail("tag", rc);
	if (json_out) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "tag", x->argv[1]);
		cJSON_AddStringToObject(o, "state_id", r.id);
		json_print(o);
	} else {
		printf("%s -> %s\n", x->argv[1], r.id);
	}
	return 0;
}

static int cmd_untag(cmd_ctx *x)
{
	int rc;

	if (x->argc != 2)
		return usage("untag needs NAME", NULL);
	if ((rc = ssmd_tag_delete(x->c, x->argv[1])))
		return fail("untag", rc);
	if (json_out) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "untagged", x->argv[1]);
		json_print(o);
	}
	return 0;
}

static int cmd_rm(cmd_ctx *x)
{
	int force = 0, rc;
	const opt_spec opts[] = {
		{"force", OPT_FLAG, &force, 'f', 0, 0, NULL},
		OPT_END,
	};

	if ((rc = opts_parse(x, opts, 1, 1, "rm needs one ID")))
		return rc;
	if ((rc = ssmd_state_delete(x->c, x->argv[optind], force)))
		return fail("rm", rc);
	if (json_out) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "deleted", x->argv[optind]);
		json_print(j);
	}
	return 0;
}

static int cmd_export(cmd_ctx *x)
{
	void *data;
	size_t len;
	int rc;

	if (x->argc != 3)
		return usage("export needs ID and FILE", NULL);
	if ((rc = ssmd_state_export(x->c, x->argv[1], &data, &len)))
		return fail("export", rc);
	rc = write_file(x->argv[2], data, len);
	ssmd_free(data);
	if (rc)
		return fail("export", rc);
	if (json_out) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "state", x->argv[1]);
		cJSON_AddStringToObject(o, "file", x->argv[2]);
		cJSON_AddNumberToObject(o, "bytes", (double)len);
		json_print(o);
	} else {
		printf("wrote %zu bytes to %s\n", len, x->argv[2]);
	}
	return 0;
}

static int cmd_import(cmd_ctx *x)
{
	const char *tag = NULL;
	const opt_spec opts[] = {
		OPT("tag", OPT_STR, &tag),
		OPT_END,
	};
	ssmd_state_ref r;
	char *data;
	size_t len;
	int rc;

	if ((rc = opts_parse(x, opts, 1, 1, "import needs one FILE")))
		return rc;
	if ((rc = read_file(x->argv[optind], &data, &len)))
		return fail("import", rc);
	rc = ssmd_state_import(x->c, data, len, tag, &r);
	free(data);
	if (rc)
		return fail("import", rc);
	print_state_ref("state_id", &r);
	return 0;
}

static int cmd_stats(cmd_ctx *x)
{
	ssmd_stats s;
	int rc;

	if (x->argc != 1)
		return usage("stats takes no arguments", NULL);
	if ((rc = ssmd_stats_get(x->c, &s)))
		return fail("stats", rc);
	if (json_out) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "sessions", s.sessions);
		cJSON_AddNumberToObject(o, "sessions_resident", s.sessions_resident);
		cJSON_AddNumberToObject(o, "slots", s.slots);
		cJSON_AddNumberToObject(o, "slots_used", s.slots_used);
		cJSON_AddNumberToObject(o, "queue_depth", s.queue_depth);
		cJSON_AddNumberToObject(o, "tokens_total", (double)s.tokens_total);
		cJSON_AddNumberToObject(o, "tokens_per_s", s.tokens_per_s);
		cJSON_AddNumberToObject(o, "store_bytes", (double)s.store_bytes);
		cJSON_AddNumberToObject(o, "store_states", (double)s.store_states);
		cJSON_AddNumberToObject(o, "requests_total", (double)s.requests_total);
		cJSON_AddNumberToObject(o, "evictions", (double)s.evictions);
		cJSON_AddNumberToObject(o, "uptime_s", s.uptime_s);
		cJSON_AddNumberToObject(o, "tier_bytes", (double)s.tier_bytes);
		cJSON_AddNumberToObject(o, "tier_budget", (double)s.tier_budget);
		cJSON_AddNumberToObject(o, "tier_pending", s.tier_pending);
		cJSON_AddNumberToObject(o, "tier_hits", (double)s.tier_hits);
		cJSON_AddNumberToObject(o, "tier_misses", (double)s.tier_misses);
		cJSON_AddNumberToObject(o, "store_failures", (double)s.store_failures);
		json_print(o);
		return 0;
	}
	printf("sessions     %u open, %u resident\n", s.sessions, s.sessions_resident);
	printf("slots        %u of %u used, %" PRIu64 " evictions\n", s.slots_used,
	       s.slots, s.evictions);
	printf("host tier    %.1f of %.1f MB, %u awaiting commit; page-ins: %" PRIu64
	       " from the tier, %" PRIu64 " from the library\n",
	       (double)s.tier_bytes / 1e6, (double)s.tier_budget / 1e6, s.tier_pending,
	       s.tier_hits, s.tier_misses);
	printf("queue        %u waiting\n", s.queue_depth);
	printf("tokens       %" PRIu64 " consumed, %.1f tokens/s\n", s.tokens_total,
	       s.tokens_per_s);
	printf("store        %" PRIu64 " states, %" PRIu64 " bytes, %" PRIu64
	       " puts refused (states kept in memory)\n",
	       s.store_states, s.store_bytes, s.store_failures);
	printf("requests     %" PRIu64 " in %.0f s\n", s.requests_total, s.uptime_s);
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(cmd_ctx *);
} commands[] = {
	{"info", cmd_info},       {"open", cmd_open},
	{"append", cmd_append},   {"generate", cmd_generate},
	{"snapshot", cmd_snapshot}, {"fork", cmd_fork},
	{"close", cmd_close},     {"states", cmd_states},
	{"state", cmd_state},     {"tag", cmd_tag},
	{"untag", cmd_untag},     {"rm", cmd_rm},
	{"export", cmd_export},   {"import", cmd_import},
	{"stats", cmd_stats},
	{"merge", cmd_merge},     {"score", cmd_score},
	{"submit", cmd_submit},   {"result", cmd_result},
};

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"url", required_argument, NULL, 'u'},
		{"events-url", required_argument, NULL, 'e'},
		{"jobs-url", required_argument, NULL, 'J'},
		{"timeout", required_argument, NULL, 't'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	ssmd_client_opts co;
	cmd_ctx x;
	int o, rc;
	uint32_t timeout;

	ssmd_client_opts_init(&co);
	/* "+": stop at the command; its own options are parsed after. */
	while ((o = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		switch (o) {
		case 'u': co.url = optarg; break;
		case 'e': co.events_url = optarg; break;
		case 'J': co.jobs_url = optarg; break;
		case 'j': json_out = 1; break;
		case 't':
			if (parse_u32(optarg, &timeout) || timeout == 0 ||
			    timeout > INT_MAX)
				return usage("bad --timeout: %s", optarg);
			co.timeout_ms = (int)timeout;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			return usage(NULL, NULL);
		}
	}
	if (optind >= argc)
		return usage("no command", NULL);
	if (!co.events_url) {
		static char url[SSMD_URL_MAX];
		char events[SSMD_URL_MAX];
		if (!co.url && ssmd_default_url(url, sizeof url) == SSMD_OK)
			co.url = url;
		no_stream = !co.url ||
			    ssmd_events_url(co.url, events, sizeof events) != SSMD_OK;
	}
	x.argc = argc - optind;
	x.argv = argv + optind;
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
		if (strcmp(commands[i].name, x.argv[0]) != 0)
			continue;
		if ((rc = ssmd_client_open(&co, &x.c)))
			return fail("connect", rc);
		optind = 0; /* glibc: reinitialise getopt for the command's arguments */
		rc = commands[i].fn(&x);
		ssmd_client_close(x.c);
		return rc;
	}
	return usage("unknown command %s", x.argv[0]);
}
