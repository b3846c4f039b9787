/*
 * bench_service — the scheduler serving many sessions on few slots, in
 * process on a backend (no sockets): what paging idle sessions to the state
 * library costs.
 *
 *   bench_service --model DIR [--model DIR]... [--backend cpu|cuda]
 *                 [--slots 4] [--sessions 40] [--rounds 3] [--tokens 4]
 *                 [--prompt 16] [--reps 20] [--dir TMPDIR]
 *
 * For each model directory (e.g. tests' tiny-mamba, or a 130m-shaped model
 * from `ssm-mkmodel --out DIR --d-model 768 --n-layer 24`), prints:
 *   round-robin  sessions served per second: every session appends a prompt,
 *                then each round sends one greedy generate of --tokens
 *                tokens to every session at once and waits for all; with
 *                --sessions on --slots (paging: each round pages every
 *                session out and in) and, for comparison, with as many
 *                slots as sessions (all resident; same batching);
 *   page         median time of one 1-token generate on a session whose
 *                state was paged out by the previous request (two sessions
 *                alternating on 1 slot: page-out with store commit, then
 *                page-in), and the same with 2 slots (both resident); the
 *                difference is the cost of a page-out + page-in.
 * The library is a fresh file in --dir (default /tmp) with its default
 * synchronous=FULL commits.
 *
 * Measured on a 2-core x86 CPU shared with other work (CPU backend,
 * --rounds 2 --tokens 2 --reps 10; the 130m shape is ssm-mkmodel
 * --d-model 768 --n-layer 24 --dtype bf16; repeated runs vary by up to 2x):
 *   shape       state    slots/sessions  round-robin       all resident
 *   d64 x 2L    0.021MB  4/40             221 sessions/s    10603 sessions/s
 *   d768 x 24L  2.952MB  4/40             13.1 sessions/s   32.1 sessions/s
 *   page-out + page-in: 3.7 ms (d64 x 2L, mostly the commit's fsync),
 *   27 ms (d768 x 24L: 73 ms per paged 1-token request, 47 ms resident).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Ends the benchmark when a request failed: its figures would mean nothing. */
static void check_ok(int code)
{
	if (code) {
		fprintf(stderr, "bench_service: request failed with code %d (%s)\n",
			code, ssmd_strerror(code));
		exit(1);
	}
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
	const char *backend, *dir;
	int slots, sessions, rounds, tokens, prompt, reps;
};

/* A scheduler on a fresh library file. */
static sched *start(const struct opts *o, const ssm_model *m, int slots,
		    cfg *c, store **st, char *path, size_t cap)
{
	static int n_lib;
	struct sched_opts so;
	sched *s;

	snprintf(path, cap, "%s/bench_service-%d-%d.db", o->dir, (int)getpid(), ++n_lib);
	if (store_open(path, NULL, st)) {
		fprintf(stderr, "bench_service: %s\n", ssmd_errmsg());
		exit(1);
	}
	cfg_init(c);
	cfg_set(c, "backend", o->backend);
	c->slots = slots;
	c->max_sessions = o->sessions + 16;
	c->queue_depth = o->sessions * 4 + 16;
	memset(&so, 0, sizeof(so));
	so.cfg = c;
	so.model = m;
	so.store = *st;
	so.model_name = "bench";
	if (sched_start(&so, &s)) {
		fprintf(stderr, "bench_service: %s\n", ssmd_errmsg());
		exit(1);
	}
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

/* Sessions served per second in the round-robin workload on slots. */
static double round_robin(const struct opts *o, const ssm_model *m, int slots)
{
	int vocab = ssm_model_config(m)->vocab_size, n = o->sessions;
	char path[1024], **ids = calloc((size_t)n, sizeof(*ids));
	struct harness_box *b = calloc((size_t)n, sizeof(*b));
	int32_t *prompt = malloc((size_t)o->prompt * sizeof(int32_t));
	store *st;
	cfg c;
	sched *s = start(o, m, slots, &c, &st, path, sizeof(path));
	double t0, t;

	for (int i = 0; i < n; i++)
		ids[i] = open_session(s);
	for (int i = 0; i < n; i++) {
		for (int k = 0; k < o->prompt; k++)
			prompt[k] = (int32_t)((i * 7919 + k * 104729) % vocab);
		check_ok(harness_append(s, ids[i], prompt, (size_t)o->prompt));
	}
	t0 = now_s();
	for (int r = 0; r < o->rounds; r++) {
		for (int i = 0; i < n; i++)
			generate_async(s, ids[i], (uint32_t)o->tokens, &b[i]);
		for (int i = 0; i < n; i++)
			wait_ok(&b[i]);
	}
	t = now_s() - t0;
	stop(s, &c, st, path);
	for (int i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
	free(b);
	free(prompt);
	return (double)n * o->rounds / t;
}

/* Median ms of one 1-token generate, two sessions alternating on slots. */
static double alternate(const struct opts *o, const ssm_model *m, int slots)
{
	char path[1024], *ids[2];
	double *ms = malloc((size_t)o->reps * sizeof(double)), med;
	int32_t prompt[4] = {1, 2, 3, 4}, out[1];
	size_t n_out;
	store *st;
	cfg c;
	sched *s = start(o, m, slots, &c, &st, path, sizeof(path));

	for (int i = 0; i < 2; i++) {
		ids[i] = open_session(s);
		check_ok(harness_append(s, ids[i], prompt, 4));
	}
	for (int r = -2; r < o->reps; r++) {
		for (int i = 0; i < 2; i++) {
			double t0 = now_s();
			check_ok(harness_generate(s, ids[i], 1, 0, 0, 0, out, &n_out));
			/* Two warm-up rounds; then the second session's time. */
			if (r >= 0 && i == 1)
				ms[r] = (now_s() - t0) * 1e3;
		}
	}
	qsort(ms, (size_t)o->reps, sizeof(*ms), cmp_double);
	med = ms[o->reps / 2];
	stop(s, &c, st, path);
	free(ids[0]);
	free(ids[1]);
	free(ms);
	return med;
}

static const char *dtype_name(ssm_dtype d)
{
	return d == SSM_DTYPE_BF16 ? "bf16" : d == SSM_DTYPE_F16 ? "f16" : "f32";
}

static void usage(void)
{
	fprintf(stderr,
		"usage: bench_service --model DIR [--model DIR]... [--backend cpu|cuda]\n"
		"       [--slots 4] [--sessions 40] [--rounds 3] [--tokens 4] [--prompt 16]\n"
		"       [--reps 20] [--dir /tmp]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct opts o = {"cpu", "/tmp", 4, 40, 3, 4, 16, 20};
	const char *models[16];
	int n_models = 0;

	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			usage();
		if (strcmp(argv[i], "--model") == 0 && n_models < 16)
			models[n_models++] = v;
		else if (strcmp(argv[i], "--backend") == 0)
			o.backend = v;
		else if (strcmp(argv[i], "--dir") == 0)
			o.dir = v;
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
		else
			usage();
		i++;
	}
	if (!n_models || o.slots < 1 || o.sessions < o.slots || o.rounds < 1 ||
	    o.tokens < 1 || o.prompt < 1 || o.reps < 1)
		usage();
	printf("%-12s %-5s %-8s %-5s %-8s %-12s %s\n", "model", "dtype", "state", "slots",
	       "sessions", "workload", "figure");
	for (int k = 0; k < n_models; k++) {
		ssm_model *m;
		ssm_state *probe = NULL;
		char shape[32];
		double mb;
		if (ssm_model_load(models[k], &m)) {
			fprintf(stderr, "bench_service: %s: %s\n", models[k], ssmd_errmsg());
			return 1;
		}
		const ssm_config *mc = ssm_model_config(m);
		ssm_model_state_alloc(m, &probe);
		mb = (double)ssm_state_encoded_size(probe) / 1e6;
		ssm_state_free(probe);
		snprintf(shape, sizeof(shape), "d%d x %dL", mc->d_model, mc->n_layer);
		double paged = round_robin(&o, m, o.slots);
		double resident = round_robin(&o, m, o.sessions);
		printf("%-12s %-5s %6.3fMB %-5d %-8d %-12s %.1f sessions/s (%d-token generates)\n",
		       shape, dtype_name(mc->dtype), mb, o.slots, o.sessions, "round-robin",
		       paged, o.tokens);
		printf("%-12s %-5s %6.3fMB %-5d %-8d %-12s %.1f sessions/s\n", shape,
		       dtype_name(mc->dtype), mb, o.sessions, o.sessions, "all resident",
		       resident);
		double page = alternate(&o, m, 1), keep = alternate(&o, m, 2);
		printf("%-12s %-5s %6.3fMB %-5d %-8d %-12s %.2f ms per 1-token request\n",
		       shape, dtype_name(mc->dtype), mb, 1, 2, "paged", page);
		printf("%-12s %-5s %6.3fMB %-5d %-8d %-12s %.2f ms per 1-token request (page-out + page-in = %.2f ms)\n",
		       shape, dtype_name(mc->dtype), mb, 2, 2, "resident", keep, page - keep);
		fflush(stdout);
		ssm_model_free(m);
	}
	return 0;
}
