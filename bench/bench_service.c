/*
 * bench_service — the scheduler serving many sessions on few slots, in
 * process on a backend (no sockets): what paging idle sessions costs, through
 * the host tier and through the state library.
 *
 *   bench_service [--model DIR]... [--shape NAME]... [--backend cpu|cuda]
 *                 [--slots 4] [--sessions 40] [--rounds 3] [--tokens 4]
 *                 [--prompt 16] [--reps 20] [--host-cache-mb 1024]
 *                 [--dir TMPDIR] [--mkmodel PATH]
 *
 * Models: a model directory (--model), or a shape (--shape 130m | 1.4b |
 * 2.8b | DxL, e.g. 64x2): random bf16 weights of that d_model and layer
 * count, vocab 50280, d_state 16, written by ssm-mkmodel (--mkmodel, else
 * found beside this program or in the build tree's kernels/) into
 * TMPDIR/bench-service-DxL and reused by later runs. For each model, prints:
 *   round-robin  sessions served per second: every session appends a prompt,
 *                then each round sends one greedy generate of --tokens
 *                tokens to every session at once and waits for all; with
 *                --sessions on --slots (paging: each round pages every
 *                session out and in), through the host tier and with the
 *                tier off (every page-in reads the library), and with as
 *                many slots as sessions (all resident; same batching);
 *   request      median time of one 1-token generate on a session whose
 *                state was paged out by the previous request (two sessions
 *                alternating on 1 slot: a page-out whose checkpoint commits
 *                behind, then a page-in), through the tier and through the
 *                library, and the same with 2 slots (both resident); the
 *                differences are the cost of a page-out + page-in. The three
 *                run side by side, one request pair of each in turn, so the
 *                machine's drifting load falls on all three alike;
 *   copy         the backend's own slot -> host copy (into a new state, as
 *                a page-out makes, and into a reused one) and host -> slot
 *                copy, median of --reps: the floor of the tier's path.
 * The library is a fresh file in TMPDIR (default /tmp) with its default
 * synchronous=FULL commits. Every paged session has unsaved progress, so
 * every page-out also queues a checkpoint: the tier's figures hold while the
 * store thread keeps up or the tier has room for the backlog (its commits
 * are never dropped); a full tier sends page-outs through the library.
 *
 * Measured on a 2-core x86 CPU shared with other builds (CPU backend; the
 * fixture's tiny-mamba with --rounds 2 --tokens 2 --reps 10, the 130m shape
 * with --shape 768x24 --slots 2 --sessions 20 --rounds 2 --tokens 2 --reps
 * 10; repeated runs vary by up to 4x):
 *   shape      state    slots/sessions  round-robin: tier  library  resident
 *   64 x 2L    0.021MB  4/40            1314-5342/s        106/s    4278/s
 *   768 x 24L  2.952MB  2/20            8.2/s              7.1/s    17.2/s
 *   page-out + page-in: 64 x 2L tier 0.00 ms, library 5.5 ms (the commit's
 *   fsync); 768 x 24L, with the request rows side by side: tier 21 ms,
 *   library 28-31 ms (42 ms per resident 1-token request; round-robin
 *   13.4-14.6/s tier, 11.2-11.8/s library, 31-34/s resident). Where the
 *   130m tier figure goes, from timestamps in the scheduler and store
 *   threads: the page-out and page-in themselves take 1.1 ms of the
 *   scheduler thread (slot -> spare state 0.45 ms, slot set 0.5 ms, tier
 *   and queueing 0.05 ms); the rest is the checkpoint's commit (LZ4 on the
 *   codec's 2 threads, then SQLite, 22-35 ms of wall time) running beside
 *   the request on the 2 cores the CPU backend's workers use, which makes
 *   its logits and decode 17 ms slower. Through the library the request
 *   waits for that commit instead, with the cores otherwise idle. The
 *   request waits on nothing else: no lock, no poll, the reply leaves at
 *   once. A store thread at nice 10 brought the tier figure to 7-13 ms on
 *   an otherwise idle machine (no gain while other processes load it).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sched_harness.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return v[n / 2];
}

/* Ends the benchmark when a request failed: its figures would mean nothing. */
static void check_ok(int code)
{
	if (code) {
		fprintf(stderr, "bench_service: request failed with code %d (%s)\n",
			code, ssmd_strerror(code));
		exit(1);
	}
}

static void die(const char *what)
{
	fprintf(stderr, "bench_service: %s: %s\n", what, ssmd_errmsg());
	exit(1);
}

/* Waits for b's reply and checks its code. */
static void wait_ok(struct harness_box *b)
{
	Ssmd__Reply *r = harness_box_wait(b);

	check_ok((int)r->code);
	harness_reply_free(r);
}

/* Opens an empty session; its ID (malloc). */
static char *open_session(sched *s)
{
	char *id = harness_open(s, NULL, 0, 0);

	if (!id) {
		fprintf(stderr, "bench_service: open refused\n");
		exit(1);
	}
	return id;
}

/* Queues a greedy generate of n tokens on session sid; its reply arrives
 * in *b. */
static void generate_async(sched *s, const char *sid, uint32_t n,
			   struct harness_box *b)
{
	Ssmd__Request q = SSMD__REQUEST__INIT;
	Ssmd__GenerateRequest g = SSMD__GENERATE_REQUEST__INIT;

	g.session = (char *)sid;
	g.has_max_tokens = 1;
	g.max_tokens = n;
	q.op_case = SSMD__REQUEST__OP_GENERATE;
	q.generate = &g;
	harness_box_init(b);
	check_ok(harness_submit(s, &q, NULL, b));
}

struct opts {
	const char *backend, *dir, *mkmodel;
	int slots, sessions, rounds, tokens, prompt, reps, host_cache_mb;
};

/* A scheduler on a fresh library file, with a host tier of tier_mb. */
static sched *start(const struct opts *o, const ssm_model *m, int slots,
		    int tier_mb, cfg *c, store **st, char *path, size_t cap)
{
	static int n_lib;
	struct sched_opts so;
	sched *s;

	snprintf(path, cap, "%s/bench_service-%d-%d.db", o->dir, (int)getpid(), ++n_lib);
	if (store_open(path, NULL, st))
		die(path);
	cfg_init(c);
	cfg_set(c, "backend", o->backend);
	c->slots = slots;
	c->host_cache_mb = tier_mb;
	c->max_sessions = o->sessions + 16;
	c->queue_depth = o->sessions * 4 + 16;
	memset(&so, 0, sizeof(so));
	so.cfg = c;
	so.model = m;
	so.store = *st;
	so.model_name = "bench";
	if (sched_start(&so, &s))
		die("scheduler");
	return s;
}

static void stop(sched *s, cfg *c, store *st, const char *path)
{
	char wal[1100];

	sched_free(s);
	store_close(st);
	cfg_fini(c);
	unlink(path);
	snprintf(wal, sizeof(wal), "%s-wal", path);
	unlink(wal);
	snprintf(wal, sizeof(wal), "%s-shm", path);
	unlink(wal);
}

/* Page-ins of the timed part: from the tier, from the library. */
struct pageins {
	uint64_t tier, library, refused;
	uint64_t spares;           /* page-outs that copied into a spare state */
};

static struct pageins pageins_since(sched *s, const struct hostcache_stats *t0)
{
	struct hostcache_stats t;
	struct pageins p;

	sched_tier_stats(s, &t);
	p.tier = t.hits - t0->hits;
	p.library = t.misses - t0->misses;
	p.refused = t.refused - t0->refused;
	p.spares = t.reused - t0->reused;
	return p;
}

/* Sessions served per second in the round-robin workload on slots. */
static double round_robin(const struct opts *o, const ssm_model *m, int slots,
			  int tier_mb, struct pageins *pi)
{
	int vocab = ssm_model_config(m)->vocab_size, n = o->sessions;
	char path[1024], **ids = calloc((size_t)n, sizeof(*ids));
	struct harness_box *b = calloc((size_t)n, sizeof(*b));
	int32_t *prompt = malloc((size_t)o->prompt * sizeof(int32_t));
	struct hostcache_stats t0s;
	store *st;
	cfg c;
	sched *s = start(o, m, slots, tier_mb, &c, &st, path, sizeof(path));
	double t0, t;

	for (int i = 0; i < n; i++)
		ids[i] = open_session(s);
	for (int i = 0; i < n; i++) {
		for (int k = 0; k < o->prompt; k++)
			prompt[k] = (int32_t)((i * 7919 + k * 104729) % vocab);
		check_ok(harness_append(s, ids[i], prompt, (size_t)o->prompt));
	}
	sched_tier_stats(s, &t0s);
	t0 = now_s();
	for (int r = 0; r < o->rounds; r++) {
		for (int i = 0; i < n; i++)
			generate_async(s, ids[i], (uint32_t)o->tokens, &b[i]);
		for (int i = 0; i < n; i++)
			wait_ok(&b[i]);
	}
	t = now_s() - t0;
	*pi = pageins_since(s, &t0s);
	stop(s, &c, st, path);
	for (int i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
	free(b);
	free(prompt);
	return (double)n * o->rounds / t;
}

/* One scheduler of the request rows: two sessions alternating on slots. */
struct alt {
	char path[1024], *ids[2];
	double *ms;                 /* (reps) the second session's times */
	struct hostcache_stats t0;
	store *st;
	cfg c;
	sched *s;
};

/* Median ms of one 1-token generate, two sessions alternating on 1 slot
 * through the tier (k 0), through the library (k 1), and on 2 slots (k 2,
 * resident). The three schedulers run side by side, one request pair of each
 * in turn, so that the machine's load drifts over all three alike (on a
 * shared CPU, three runs one after the other differ by more than what is
 * measured). A request's time includes its own page-out's commit running
 * beside it on the store thread; what is left of that commit after the
 * reply is waited for, untimed (a stats request ends after it), before the
 * next scheduler's turn, so one scheduler's commit never slows another's
 * request. */
static void alternate(const struct opts *o, const ssm_model *m, double med[3],
		      struct pageins pi[3])
{
	static const int slots[3] = {1, 1, 2};
	int32_t prompt[4] = {1, 2, 3, 4}, out[1];
	struct alt a[3];
	size_t n_out;

	for (int k = 0; k < 3; k++) {
		a[k].ms = malloc((size_t)o->reps * sizeof(double));
		a[k].s = start(o, m, slots[k], k == 1 ? 0 : o->host_cache_mb, &a[k].c,
			       &a[k].st, a[k].path, sizeof(a[k].path));
		for (int i = 0; i < 2; i++) {
			a[k].ids[i] = open_session(a[k].s);
			check_ok(harness_append(a[k].s, a[k].ids[i], prompt, 4));
		}
	}
	for (int r = -2; r < o->reps; r++) {
		for (int k = 0; k < 3; k++) {
			if (r == 0)
				sched_tier_stats(a[k].s, &a[k].t0);
			for (int i = 0; i < 2; i++) {
				double t0 = now_s();
				check_ok(harness_generate(a[k].s, a[k].ids[i], 1, 0, 0, 0,
							  out, &n_out));
				/* Two warm-up rounds; then the second
				 * session's time. */
				if (r >= 0 && i == 1)
					a[k].ms[r] = (now_s() - t0) * 1e3;
			}
			harness_reply_free(harness_stats(a[k].s));
		}
	}
	for (int k = 0; k < 3; k++) {
		pi[k] = pageins_since(a[k].s, &a[k].t0);
		med[k] = median(a[k].ms, o->reps);
		stop(a[k].s, &a[k].c, a[k].st, a[k].path);
		free(a[k].ids[0]);
		free(a[k].ids[1]);
		free(a[k].ms);
	}
}

/* The backend's slot <-> host copies on a one-slot backend whose slot holds
 * a 32-token state: median ms of slot -> new state (allocated, as a
 * page-out's), slot -> reused state, and state -> slot. */
static void copies(const struct opts *o, const ssm_model *m, double *get_new,
		   double *get_reused, double *set)
{
	ssm_backend *b = harness_backend_open(m, o->backend);
	int vocab = ssm_model_config(m)->vocab_size;
	double *v[3];
	int32_t toks[32];
	ssm_prefill_args pa = {0};
	ssm_state *st = NULL;

	for (int i = 0; i < 32; i++)
		toks[i] = (int32_t)((i * 104729 + 17) % vocab);
	pa.tokens = toks;
	pa.n_tokens = 32;
	if (ssm_prefill(b, 0, &pa) || ssm_model_state_alloc(m, &st))
		die("copies");
	for (int k = 0; k < 3; k++)
		v[k] = malloc((size_t)o->reps * sizeof(double));
	for (int r = -2; r < o->reps; r++) {
		ssm_state *fresh = NULL;
		double t0 = now_s(), t1, t2, t3;
		if (ssm_model_state_alloc(m, &fresh) || ssm_slot_get(b, 0, fresh))
			die("slot get");
		t1 = now_s();
		ssm_state_free(fresh);
		t2 = now_s();
		if (ssm_slot_get(b, 0, st))
			die("slot get");
		t3 = now_s();
		if (ssm_slot_set(b, 0, st))
			die("slot set");
		if (r >= 0) {
			v[0][r] = (t1 - t0) * 1e3;
			v[1][r] = (t3 - t2) * 1e3;
			v[2][r] = (now_s() - t3) * 1e3;
		}
	}
	*get_new = median(v[0], o->reps);
	*get_reused = median(v[1], o->reps);
	*set = median(v[2], o->reps);
	for (int k = 0; k < 3; k++)
		free(v[k]);
	ssm_state_free(st);
	ssm_backend_close(b);
}

static const char *dtype_name(ssm_dtype d)
{
	return d == SSM_DTYPE_BF16 ? "bf16" : d == SSM_DTYPE_F16 ? "f16" : "f32";
}

/* ------------------------------------------------------------- models -- */

/* d_model and layers of a shape name: 130m, 1.4b, 2.8b or DxL. */
static int shape_parse(const char *name, int *d, int *l)
{
	static const struct { const char *name; int d, l; } known[] = {
		{"130m", 768, 24}, {"370m", 1024, 48}, {"790m", 1536, 48},
		{"1.4b", 2048, 48}, {"2.8b", 2560, 64},
	};
	char tail;

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (strcmp(name, known[i].name) == 0) {
			*d = known[i].d;
			*l = known[i].l;
			return 0;
		}
	if (sscanf(name, "%dx%d%c", d, l, &tail) != 2 || *d < 16 || *l < 1)
		return -1;
	return 0;
}

/* ssm-mkmodel: --mkmodel, else beside this program (a staged bin/
 * folder), else in the build tree (bench/../kernels/). */
static void mkmodel_find(const char *argv0, char *out, size_t cap)
{
	char dir[1024];
	const char *slash = strrchr(argv0, '/');

	snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - argv0) : 1,
		 slash ? argv0 : ".");
	snprintf(out, cap, "%s/ssm-mkmodel", dir);
	if (access(out, X_OK) == 0)
		return;
	snprintf(out, cap, "%s/../kernels/ssm-mkmodel", dir);
}

/* The directory of a random bf16 model of shape name under o->dir, made
 * with ssm-mkmodel unless an earlier run left it there. */
static void model_make(const struct opts *o, const char *name, char *out,
		       size_t cap)
{
	char d_arg[16], l_arg[16], cfgpath[1300];
	int d, l, status;
	pid_t pid;

	if (shape_parse(name, &d, &l)) {
		fprintf(stderr, "bench_service: --shape %s: want 130m, 1.4b, 2.8b or DxL\n",
			name);
		exit(2);
	}
	snprintf(out, cap, "%s/bench-service-%dx%d", o->dir, d, l);
	snprintf(cfgpath, sizeof(cfgpath), "%s/config.json", out);
	if (access(cfgpath, R_OK) == 0)
		return;
	snprintf(d_arg, sizeof(d_arg), "%d", d);
	snprintf(l_arg, sizeof(l_arg), "%d", l);
	fprintf(stderr, "bench_service: writing a %dx%d model with %s into %s\n",
		d, l, o->mkmodel, out);
	pid = fork();
	if (pid == 0) {
		char *args[] = {(char *)o->mkmodel, "--out", out, "--d-model", d_arg,
				"--n-layer", l_arg, "--vocab", "50280", "--dtype",
				"bf16", "--seed", "1", NULL};
		execv(o->mkmodel, args);
		fprintf(stderr, "bench_service: cannot run %s: %s\n", o->mkmodel,
			strerror(errno));
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0) {
		fprintf(stderr, "bench_service: %s failed for shape %s\n", o->mkmodel,
			name);
		exit(1);
	}
}

/* ---------------------------------------------------------------- main -- */

static void usage(void)
{
	fprintf(stderr,
		"usage: bench_service [--model DIR]... [--shape 130m|1.4b|2.8b|DxL]...\n"
		"       [--backend cpu|cuda] [--slots 4] [--sessions 40] [--rounds 3]\n"
		"       [--tokens 4] [--prompt 16] [--reps 20] [--host-cache-mb 1024]\n"
		"       [--dir /tmp] [--mkmodel PATH]\n");
	exit(2);
}

/* One table row: the model's columns, then the workload and its figure. */
static void row(const char *shape, const ssm_config *mc, double mb,
		const char *backend, int slots, int sessions, const char *work,
		const char *fmt, ...)
{
	va_list ap;

	printf("%-11s %-5s %8.3f %-7s %5d %8d  %-23s ", shape, dtype_name(mc->dtype),
	       mb, backend, slots, sessions, work);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void bench_model(const struct opts *o, const char *dir)
{
	ssm_model *m;
	ssm_state *probe = NULL;
	struct pageins pt, pl, pr;
	char shape[32];
	double mb;

	if (ssm_model_load(dir, &m))
		die(dir);
	const ssm_config *mc = ssm_model_config(m);
	if (ssm_model_state_alloc(m, &probe))
		die("state");
	mb = (double)ssm_state_encoded_size(probe) / 1e6;
	ssm_state_free(probe);
	snprintf(shape, sizeof(shape), "%dx%dL", mc->d_model, mc->n_layer);

	double rr_tier = round_robin(o, m, o->slots, o->host_cache_mb, &pt);
	row(shape, mc, mb, o->backend, o->slots, o->sessions, "round-robin, tier",
	    "%.1f sessions/s (%d-token generates; page-ins: %llu tier, %llu library; %llu page-outs found the tier full)",
	    rr_tier, o->tokens, (unsigned long long)pt.tier,
	    (unsigned long long)pt.library, (unsigned long long)pt.refused);
	double rr_lib = round_robin(o, m, o->slots, 0, &pl);
	row(shape, mc, mb, o->backend, o->slots, o->sessions, "round-robin, library",
	    "%.1f sessions/s (page-ins: %llu library)", rr_lib,
	    (unsigned long long)pl.library);
	double rr_res = round_robin(o, m, o->sessions, o->host_cache_mb, &pr);
	row(shape, mc, mb, o->backend, o->sessions, o->sessions, "all resident",
	    "%.1f sessions/s", rr_res);

	double req[3];
	struct pageins pq[3];
	alternate(o, m, req, pq);
	double req_tier = req[0], req_lib = req[1], req_res = req[2];
	pt = pq[0];
	row(shape, mc, mb, o->backend, 1, 2, "request, paged, tier",
	    "%.2f ms per 1-token generate (page-ins: %llu tier, %llu library; %llu page-outs into spare states)",
	    req_tier, (unsigned long long)pt.tier, (unsigned long long)pt.library,
	    (unsigned long long)pt.spares);
	row(shape, mc, mb, o->backend, 1, 2, "request, paged, library",
	    "%.2f ms per 1-token generate", req_lib);
	row(shape, mc, mb, o->backend, 2, 2, "request, resident",
	    "%.2f ms per 1-token generate", req_res);
	row(shape, mc, mb, o->backend, 1, 2, "page-out + page-in",
	    "%.2f ms through the tier, %.2f ms through the library", req_tier - req_res,
	    req_lib - req_res);

	double get_new, get_reused, set;
	copies(o, m, &get_new, &get_reused, &set);
	row(shape, mc, mb, o->backend, 1, 1, "copy",
	    "slot -> new state %.3f ms, slot -> reused state %.3f ms, state -> slot %.3f ms",
	    get_new, get_reused, set);
	ssm_model_free(m);
}

int main(int argc, char **argv)
{
	struct opts o = {"cpu", "/tmp", NULL, 4, 40, 3, 4, 16, 20, 1024};
	const char *models[16], *shapes[16];
	char mkmodel[1200], made[1200];
	int n_models = 0, n_shapes = 0;

	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			usage();
		if (strcmp(argv[i], "--model") == 0 && n_models < 16)
			models[n_models++] = v;
		else if (strcmp(argv[i], "--shape") == 0 && n_shapes < 16)
			shapes[n_shapes++] = v;
		else if (strcmp(argv[i], "--backend") == 0)
			o.backend = v;
		else if (strcmp(argv[i], "--dir") == 0)
			o.dir = v;
		else if (strcmp(argv[i], "--mkmodel") == 0)
			o.mkmodel = v;
		else if (strcmp(argv[i], "--slots") == 0)
			o.slots = atoi(v);
		else if (strcmp(argv[i], "--sessions") == 0)
			o.sessions = atoi(v);
		else if (strcmp(argv[i], "--rounds") == 0)
			o.rounds = atoi(v);
		else if (strcmp(argv[i], "--tokens") == 0)
			o.tokens = atoi(v);
		else if (strcmp(argv[i], "--prompt") == 0)
			o.prompt = atoi(v);
		else if (strcmp(argv[i], "--reps") == 0)
			o.reps = atoi(v);
		else if (strcmp(argv[i], "--host-cache-mb") == 0)
			o.host_cache_mb = atoi(v);
		else
			usage();
		i++;
	}
	if ((!n_models && !n_shapes) || o.slots < 1 || o.sessions < o.slots ||
	    o.rounds < 1 || o.tokens < 1 || o.prompt < 1 || o.reps < 1 ||
	    o.host_cache_mb < 0)
		usage();
	if (!o.mkmodel) {
		mkmodel_find(argv[0], mkmodel, sizeof(mkmodel));
		o.mkmodel = mkmodel;
	}
	printf("bench_service: backend %s, host tier %d MB, %d rounds of %d-token generates, median of %d requests\n",
	       o.backend, o.host_cache_mb, o.rounds, o.tokens, o.reps);
	printf("%-11s %-5s %8s %-7s %5s %8s  %-23s %s\n", "shape", "dtype", "state MB",
	       "backend", "slots", "sessions", "workload", "figure");
	for (int k = 0; k < n_models; k++)
		bench_model(&o, models[k]);
	for (int k = 0; k < n_shapes; k++) {
		model_make(&o, shapes[k], made, sizeof(made));
		bench_model(&o, made);
	}
	return 0;
}
