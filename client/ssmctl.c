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
/* Pause after pushing a job before the process exits (100 ms). */
#define SUBMIT_SETTLE_NS 100000000L

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
"                                         prints REQUEST_ID CLIENT_ID\n"
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

/* --------------------------------------------------------- commands -- */

typedef struct cmd_ctx {
	ssmd_client *c;
	int argc;
	char **argv;   /* argv[0] is the command name */
} cmd_ctx;

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
	static const struct option opts[] = {
		{"from", required_argument, NULL, 'f'},
		{"fork", required_argument, NULL, 'F'},
		{"seed", required_argument, NULL, 's'},
		{"label", required_argument, NULL, 'l'},
		{"count", required_argument, NULL, 'n'},
		{NULL, 0, NULL, 0},
	};
	ssmd_open_args a;
	ssmd_session *s;
	uint64_t seed;
	int o, rc;

	memset(&a, 0, sizeof a);
	a.count = 1;
	while ((o = getopt_long(x->argc, x->argv, "n:", opts, NULL)) != -1) {
		switch (o) {
		case 'f': a.from = optarg; break;
		case 'F': a.fork = optarg; break;
		case 'l': a.label = optarg; break;
		case 's':
			if (parse_u64(optarg, &seed))
				return usage("bad --seed: %s", optarg);
			a.seed = &seed;
			break;
		case 'n':
			if (parse_u32(optarg, &a.count) || a.count == 0 ||
			    a.count > 4096)
				return usage("bad -n: %s (1..4096)", optarg);
			break;
		default:
			return usage(NULL, NULL);
		}
	}
	if (optind != x->argc)
		return usage("open: unexpected argument %s", x->argv[optind]);
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
	static const struct option opts[] = {
		{"seed", required_argument, NULL, 's'},
		{"count", required_argument, NULL, 'n'},
		{NULL, 0, NULL, 0},
	};
	uint32_t count = 1;
	uint64_t seed;
	const uint64_t *seedp = NULL;
	ssmd_session *s;
	int o, rc;

	while ((o = getopt_long(x->argc, x->argv, "n:", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			if (parse_u64(optarg, &seed))
				return usage("bad --seed: %s", optarg);
			seedp = &seed;
			break;
		case 'n':
			if (parse_u32(optarg, &count) || count == 0 || count > 4096)
				return usage("bad -n: %s (1..4096)", optarg);
			break;
		default:
			return usage(NULL, NULL);
		}
	}
	if (optind + 1 != x->argc)
		return usage("fork needs one SESSION, state ID or tag", NULL);
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
	for (size_t i = 0; i < *n; i++)
		u[i] = (uint32_t)v[i];
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

static int cmd_append(cmd_ctx *x)
{
	static const struct option opts[] = {
		{"text", required_argument, NULL, 't'},
		{"file", required_argument, NULL, 'f'},
		{"tokens", required_argument, NULL, 'k'},
		{"message", required_argument, NULL, 'm'},
		{"checkpoint-every", required_argument, NULL, 'c'},
		{"boundaries", required_argument, NULL, 'b'},
		{NULL, 0, NULL, 0},
	};
	const char *text = NULL, *file = NULL, *toks = NULL, *bounds = NULL;
	const char *session;
	const char **messages;
	size_t n_messages = 0, n_ck_all = 0;
	ssmd_append_args a;
	ssmd_append_result r, total;
	ssmd_checkpoint *ck_all = NULL, *ck = NULL;
	int32_t *ids = NULL;
	uint32_t *offsets = NULL;
	char *buf = NULL;
	int o, rc = 0, ret = EXIT_USAGE;

	memset(&a, 0, sizeof a);
	memset(&total, 0, sizeof total);
	if (!(messages = calloc((size_t)x->argc, sizeof *messages)))
		return fail("append", ssmd_err_set(SSMD_ENOMEM, "out of memory"));
	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 't': text = optarg; break;
		case 'f': file = optarg; break;
		case 'k': toks = optarg; break;
		case 'm': messages[n_messages++] = optarg; break;
		case 'b': bounds = optarg; break;
		case 'c':
			if (parse_u32(optarg, &a.checkpoint_every) ||
			    !a.checkpoint_every) {
				usage("bad --checkpoint-every: %s", optarg);
				goto done;
			}
			break;
		default:
			usage(NULL, NULL);
			goto done;
		}
	}
	if (optind + 1 != x->argc) {
		usage("append needs one SESSION", NULL);
		goto done;
	}
	if ((text != NULL) + (file != NULL) + (toks != NULL) + (n_messages > 0) != 1) {
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

	if (toks) {
		if (parse_tokens(toks, &ids, &a.n_tokens)) {
			usage("bad --tokens: %s (want 1,2,3)", toks);
			goto done;
		}
		a.tokens = ids;
	} else if (text) {
		a.text = text;
	} else if (n_messages) {
		a.texts = messages;
		a.n_texts = n_messages;
	}
	if (!file) {
		rc = ssmd_append(x->c, session, &a, &total, &ck);
		if (rc == SSMD_OK && add_checkpoints(&ck_all, &n_ck_all, ck,
						      total.n_checkpoints))
			rc = ssmd_err_set(SSMD_ENOMEM, "out of memory");
		ssmd_free(ck);
		ck = NULL;
	} else {
		size_t len, from = 0;
		int bar;
		if ((rc = read_file(file, &buf, &len))) {
			ret = fail("append", rc);
			goto done;
		}
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
	free(buf);
	free(ck_all);
	free(ids);
	free(offsets);
	free(messages);
	return ret;
}

static int cmd_merge(cmd_ctx *x)
{
	static const struct option opts[] = {
		{"weights", required_argument, NULL, 'w'},
		{"mode", required_argument, NULL, 'm'},
		{"tag", required_argument, NULL, 't'},
		{"label", required_argument, NULL, 'l'},
		{"open", no_argument, NULL, 'o'},
		{"seed", required_argument, NULL, 's'},
		{NULL, 0, NULL, 0},
	};
	ssmd_merge_args a;
	ssmd_state_ref r;
	ssmd_session ses;
	double *weights = NULL;
	uint64_t seed;
	int o, rc, ret = EXIT_USAGE;

	memset(&a, 0, sizeof a);
	if (!(weights = calloc((size_t)x->argc + 1, sizeof *weights)))
		return fail("merge", ssmd_err_set(SSMD_ENOMEM, "out of memory"));
	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'w': {
			/* "0.7,0.3" or repeated --weights */
			char *copy = strdup(optarg), *tok, *save = NULL, *end;
			int bad = !copy;
			for (tok = copy ? strtok_r(copy, ",", &save) : NULL; tok;
			     tok = strtok_r(NULL, ",", &save)) {
				errno = 0;
				double w = strtod(tok, &end);
				if (errno || end == tok || *end || a.n_weights >= (size_t)x->argc) {
					bad = 1;
					break;
				}
				weights[a.n_weights++] = w;
			}
			free(copy);
			if (bad) {
				usage("bad --weights: %s (want 0.7,0.3)", optarg);
				goto done;
			}
			break;
		}
		case 'm': a.mode = optarg; break;
		case 't': a.tag = optarg; break;
		case 'l': a.label = optarg; break;
		case 'o': a.open = 1; break;
		case 's':
			if (parse_u64(optarg, &seed)) {
				usage("bad --seed: %s", optarg);
				goto done;
			}
			a.seed = &seed;
			break;
		default:
			usage(NULL, NULL);
			goto done;
		}
	}
	if (x->argc - optind < 2) {
		usage("merge needs at least two IDs or tags", NULL);
		goto done;
	}
	a.sources = (const char *const *)(x->argv + optind);
	a.n_sources = (size_t)(x->argc - optind);
	if (a.n_weights)
		a.weights = weights;
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
	free(weights);
	return ret;
}

static int cmd_score(cmd_ctx *x)
{
	static const struct option opts[] = {
		{"text", required_argument, NULL, 't'},
		{"file", required_argument, NULL, 'f'},
		{"tokens", required_argument, NULL, 'k'},
		{NULL, 0, NULL, 0},
	};
	const char *text = NULL, *file = NULL, *toks = NULL;
	ssmd_score *sc = NULL;
	int32_t *ids = NULL;
	char *buf = NULL;
	size_t n, len;
	int o, rc;

	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 't': text = optarg; break;
		case 'f': file = optarg; break;
		case 'k': toks = optarg; break;
		default: return usage(NULL, NULL);
		}
	}
	if (optind + 1 != x->argc)
		return usage("score needs one SESSION, state ID or tag", NULL);
	if ((text != NULL) + (file != NULL) + (toks != NULL) != 1)
		return usage("score needs exactly one of --text, --file, --tokens", NULL);
	if (toks) {
		if (parse_tokens(toks, &ids, &n))
			return usage("bad --tokens: %s (want 1,2,3)", toks);
		rc = ssmd_score_tokens(x->c, x->argv[optind], ids, n, &sc);
		free(ids);
	} else {
		if (file && (rc = read_file(file, &buf, &len)))
			return fail("score", rc);
		rc = ssmd_score_text(x->c, x->argv[optind], file ? buf : text, &sc);
		free(buf);
	}
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
	static const struct option opts[] = {
		{"max-tokens", required_argument, NULL, 'm'},
		{"temperature", required_argument, NULL, 't'},
		{"top-k", required_argument, NULL, 'k'},
		{"top-p", required_argument, NULL, 'p'},
		{"seed", required_argument, NULL, 's'},
		{"stop", required_argument, NULL, 'S'},
		{"stop-token", required_argument, NULL, 'T'},
		{"snapshot", no_argument, NULL, 'n'},
		{"tag", required_argument, NULL, 'g'},
		{"label", required_argument, NULL, 'l'},
		{NULL, 0, NULL, 0},
	};
	ssmd_generate_args a;
	ssmd_generation *g = NULL;
	ssmd_info info;
	gen_out out = {0, 0};
	uint64_t seed;
	const char **stops = NULL;
	int32_t *stop_tokens = NULL;
	size_t n_stop = 0, n_stop_tokens = 0;
	int o, rc, ret = EXIT_USAGE;

	ssmd_generate_args_init(&a);
	stops = calloc((size_t)x->argc, sizeof *stops);
	stop_tokens = calloc((size_t)x->argc, sizeof *stop_tokens);
	if (!stops || !stop_tokens) {
		ret = fail("generate", ssmd_err_set(SSMD_ENOMEM, "out of memory"));
		goto done;
	}
	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'm':
			if (parse_u32(optarg, &a.max_tokens) || !a.max_tokens) {
				usage("bad --max-tokens: %s", optarg);
				goto done;
			}
			break;
		case 't':
			/* NaN and the like are the daemon's to refuse. */
			if (parse_float(optarg, &a.temperature)) {
				usage("bad --temperature: %s", optarg);
				goto done;
			}
			break;
		case 'k':
			if (parse_u32(optarg, &a.top_k)) {
				usage("bad --top-k: %s", optarg);
				goto done;
			}
			break;
		case 'p':
			if (parse_float(optarg, &a.top_p)) {
				usage("bad --top-p: %s", optarg);
				goto done;
			}
			break;
		case 's':
			if (parse_u64(optarg, &seed)) {
				usage("bad --seed: %s", optarg);
				goto done;
			}
			a.seed = &seed;
			break;
		case 'S':
			stops[n_stop++] = optarg;
			break;
		case 'T':
			if (parse_i32(optarg, &stop_tokens[n_stop_tokens++])) {
				usage("bad --stop-token: %s", optarg);
				goto done;
			}
			break;
		case 'n': a.snapshot = 1; break;
		case 'g': a.snapshot_tag = optarg; break;
		case 'l': a.snapshot_label = optarg; break;
		default:
			usage(NULL, NULL);
			goto done;
		}
	}
	if (optind + 1 != x->argc) {
		usage("generate needs one SESSION", NULL);
		goto done;
	}
	if ((a.snapshot_tag || a.snapshot_label) && !a.snapshot) {
		usage("--tag and --label go with --snapshot", NULL);
		goto done;
	}
	a.stop = stops;
	a.n_stop = n_stop;
	a.stop_tokens = stop_tokens;
	a.n_stop_tokens = n_stop_tokens;

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
	free(stops);
	free(stop_tokens);
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
	static const struct option opts[] = {
		{"tag", required_argument, NULL, 't'},
		{"label", required_argument, NULL, 'l'},
		{NULL, 0, NULL, 0},
	};
	const char *tag = NULL, *label = NULL;
	ssmd_state_ref r;
	int o, rc;

	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 't': tag = optarg; break;
		case 'l': label = optarg; break;
		default: return usage(NULL, NULL);
		}
	}
	if (optind + 1 != x->argc)
		return usage("snapshot needs one SESSION", NULL);
	if ((rc = ssmd_session_snapshot(x->c, x->argv[optind], tag, label, &r)))
		return fail("snapshot", rc);
	print_state_ref("state_id", &r);
	return 0;
}

static int cmd_close(cmd_ctx *x)
{
	static const struct option opts[] = {
		{"snapshot", no_argument, NULL, 's'},
		{"tag", required_argument, NULL, 't'},
		{"label", required_argument, NULL, 'l'},
		{NULL, 0, NULL, 0},
	};
	const char *tag = NULL, *label = NULL;
	int snap = 0, o, rc;
	ssmd_state_ref r;

	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 's': snap = 1; break;
		case 't': tag = optarg; break;
		case 'l': label = optarg; break;
		default: return usage(NULL, NULL);
		}
	}
	if (optind + 1 != x->argc)
		return usage("close needs one SESSION", NULL);
	if ((tag || label) && !snap)
		return usage("--tag and --label go with --snapshot", NULL);
	if ((rc = ssmd_session_close(x->c, x->argv[optind], snap, tag, label, &r)))
		return fail("close", rc);
	print_state_ref("state_id", &r);
	return 0;
}

/* ------------------------------------------------------------- jobs -- */

/* ssmctl submit OP ...: pushes one request to the jobs endpoint and prints
 * its request ID and this process's client ID, which `ssmctl result` needs
 * to find it (request IDs are scoped by client). */
static int cmd_submit(cmd_ctx *x)
{
	static const struct option opts[] = {
		{"from", required_argument, NULL, 'F'},
		{"text", required_argument, NULL, 't'},
		{"file", required_argument, NULL, 'f'},
		{"tokens", required_argument, NULL, 'k'},
		{"checkpoint-every", required_argument, NULL, 'c'},
		{"tag", required_argument, NULL, 'g'},
		{"label", required_argument, NULL, 'l'},
		{"snapshot", no_argument, NULL, 's'},
		{NULL, 0, NULL, 0},
	};
	const char *text = NULL, *file = NULL, *toks = NULL, *op;
	char rid[SSMD_REQUEST_ID_MAX];
	ssmd_open_args oa;
	ssmd_append_args aa;
	ssmd_job job;
	int32_t *ids = NULL;
	char *buf = NULL;
	size_t len;
	int o, rc, ret = EXIT_USAGE, want_session;

	memset(&oa, 0, sizeof oa);
	memset(&aa, 0, sizeof aa);
	memset(&job, 0, sizeof job);
	if (x->argc < 2)
		return usage("submit needs an operation: open, append, snapshot "
			     "or close", NULL);
	op = x->argv[1];
	x->argc--;
	x->argv++;
	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'F': oa.from = optarg; break;
		case 't': text = optarg; break;
		case 'f': file = optarg; break;
		case 'k': toks = optarg; break;
		case 'g': job.tag = optarg; break;
		case 'l': job.label = optarg; break;
		case 's': job.snapshot = 1; break;
		case 'c':
			if (parse_u32(optarg, &aa.checkpoint_every) ||
			    !aa.checkpoint_every) {
				usage("bad --checkpoint-every: %s", optarg);
				goto done;
			}
			break;
		default:
			usage(NULL, NULL);
			goto done;
		}
	}
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
	    ((text || file || toks || aa.checkpoint_every) &&
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
		if ((text != NULL) + (file != NULL) + (toks != NULL) != 1) {
			usage("submit append needs exactly one of --text, --file, "
			      "--tokens", NULL);
			goto done;
		}
		if (toks && parse_tokens(toks, &ids, &aa.n_tokens)) {
			usage("bad --tokens: %s (want 1,2,3)", toks);
			goto done;
		}
		aa.tokens = ids;
		/* A job is one request: the file goes whole (the blocking
		 * append sends large files in pieces). */
		if (file && (rc = read_file(file, &buf, &len))) {
			ret = fail("submit", rc);
			goto done;
		}
		aa.text = file ? buf : text;
	}
	if ((rc = ssmd_submit(x->c, &job, rid))) {
		ret = fail("submit", rc);
		goto done;
	}
	/* ssmctl exits right away, and closing the client could drop a job
	 * still queued in the jobs socket (see ssmd_submit()): leave the
	 * transport a moment to hand it over. */
	nanosleep(&(struct timespec){.tv_nsec = SUBMIT_SETTLE_NS}, NULL);
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
	free(ids);
	free(buf);
	return ret;
}

/* ssmctl result REQUEST_ID [--client ID]: prints the final reply of an
 * earlier request; exits 1 with its message when that request failed. */
static int cmd_result(cmd_ctx *x)
{
	static const struct option opts[] = {
		{"client", required_argument, NULL, 'c'},
		{NULL, 0, NULL, 0},
	};
	const char *client = NULL;
	ssmd_reply *r = NULL;
	int o, rc;

	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'c': client = optarg; break;
		default: return usage(NULL, NULL);
		}
	}
	if (optind + 1 != x->argc)
		return usage("result needs one REQUEST_ID", NULL);
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
	static const struct option opts[] = {
		{"tag", required_argument, NULL, 't'},
		{"session", required_argument, NULL, 's'},
		{"kind", required_argument, NULL, 'k'},
		{"all-models", no_argument, NULL, 'a'},
		{"limit", required_argument, NULL, 'l'},
		{"cursor", required_argument, NULL, 'c'},
		{NULL, 0, NULL, 0},
	};
	ssmd_states_filter f;
	ssmd_state_list *l;
	int o, rc;

	memset(&f, 0, sizeof f);
	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 't': f.tag_prefix = optarg; break;
		case 's': f.session = optarg; break;
		case 'k': f.kind = optarg; break;
		case 'a': f.all_models = 1; break;
		case 'c': f.cursor = optarg; break;
		case 'l':
			if (parse_u32(optarg, &f.limit) || !f.limit)
				return usage("bad --limit: %s", optarg);
			break;
		default: return usage(NULL, NULL);
		}
	}
	if (optind != x->argc)
		return usage("states: unexpected argument %s", x->argv[optind]);
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
	static const struct option opts[] = {
		{"force", no_argument, NULL, 'f'},
		{NULL, 0, NULL, 0},
	};
	int force = 0, o, rc;

	while ((o = getopt_long(x->argc, x->argv, "f", opts, NULL)) != -1) {
		if (o != 'f')
			return usage(NULL, NULL);
		force = 1;
	}
	if (optind + 1 != x->argc)
		return usage("rm needs one ID", NULL);
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
	static const struct option opts[] = {
		{"tag", required_argument, NULL, 't'},
		{NULL, 0, NULL, 0},
	};
	const char *tag = NULL;
	ssmd_state_ref r;
	char *data;
	size_t len;
	int o, rc;

	while ((o = getopt_long(x->argc, x->argv, "", opts, NULL)) != -1) {
		if (o != 't')
			return usage(NULL, NULL);
		tag = optarg;
	}
	if (optind + 1 != x->argc)
		return usage("import needs one FILE", NULL);
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
		json_print(o);
		return 0;
	}
	printf("sessions     %u open, %u resident\n", s.sessions, s.sessions_resident);
	printf("slots        %u of %u used, %" PRIu64 " evictions\n", s.slots_used,
	       s.slots, s.evictions);
	printf("queue        %u waiting\n", s.queue_depth);
	printf("tokens       %" PRIu64 " consumed, %.1f tokens/s\n", s.tokens_total,
	       s.tokens_per_s);
	printf("store        %" PRIu64 " states, %" PRIu64 " bytes\n",
	       s.store_states, s.store_bytes);
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
