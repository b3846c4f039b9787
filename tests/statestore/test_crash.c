/*
 * test_crash.c — crash safety of the state library. A child process puts
 * states in a loop and reports each ID the moment store_state_put() returns
 * it, through a pipe; the parent kills it with SIGKILL at a random moment,
 * 120 times. After each kill the library must pass PRAGMA integrity_check,
 * every acknowledged state must read back bit-exact, every state visible
 * must be complete (payload of its recorded size, verified content), and at
 * most one state — the put in flight — may be committed without having been
 * acknowledged.
 */
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "ssm_state.h"
#include "store.h"

#define ROUNDS 120

static const uint8_t fp[16] = "crash-test-model";

/* The state for a seed: 1..8 layers of d_inner 256 (20-160 KB), smooth or
 * noisy by seed parity; n_tokens is the seed, so any reader can rebuild it. */
static void *make_state(uint64_t seed, size_t *len)
{
	ssm_state *st;
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	size_t n;
	void *buf;

	if (ssm_state_alloc(SSM_ARCH_MAMBA1, 1 + (uint32_t)(seed % 8), 256, 16,
			    4, 64, &st))
		abort();
	st->n_tokens = seed;
	memcpy(st->fingerprint, fp, 16);
	n = (ssm_state_encoded_size(st) - SSM_STATE_HEADER_SIZE) / 4;
	for (size_t i = 0; i < n; i++) {
		if (seed % 2) {
			uint32_t u;

			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			u = (uint32_t)x;
			memcpy(&st->ssm[i], &u, 4);
		} else {
			st->ssm[i] = (float)(i % 97) * 0.25f;
		}
	}
	*len = ssm_state_encoded_size(st);
	buf = malloc(*len);
	if (!buf || ssm_state_encode(st, buf, *len))
		abort();
	ssm_state_free(st);
	return buf;
}

static void child(const char *path, int fd, uint64_t base)
{
	store *s;

	if (store_open(path, NULL, &s))
		_exit(2);
	for (uint64_t i = 0; i < 100000; i++) {
		char id[STORE_ID_SIZE];
		size_t len;
		void *raw = make_state(base + i, &len);
		store_put p = { .raw = raw, .raw_len = len,
				.kind = STORE_KIND_CHECKPOINT,
				.label = "crash" };

		if (store_state_put(s, &p, id))
			_exit(3);
		free(raw);
		/* 27 bytes < PIPE_BUF: one atomic write per acknowledgement */
		if (write(fd, id, STORE_ID_SIZE) != STORE_ID_SIZE)
			_exit(4);
	}
	_exit(0);
}

static int integrity_ok(const char *path, int64_t *incomplete)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	int ok = 0;

	if (sqlite3_open(path, &db) != SQLITE_OK)
		return 0;
	if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) ==
	    SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		ok = !strcmp((const char *)sqlite3_column_text(st, 0), "ok");
	sqlite3_finalize(st);
	/* every state row has its payload, of the recorded size */
	*incomplete = -1;
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM states s LEFT JOIN"
			       " payloads p ON p.n=s.n WHERE p.n IS NULL OR"
			       " length(p.data)!=s.stored_size", -1, &st,
			       NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		*incomplete = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return ok;
}

/* Reads and checks every state created since since_ms; returns how many
 * there are, or -1 after reporting a failure. */
static long verify_since(store *s, int64_t since_ms)
{
	char next[STORE_ID_SIZE] = "";
	long count = 0, bad = 0;

	do {
		store_filter f = { .since_ms = since_ms, .limit = 500,
				   .cursor = next };
		store_state_info *arr = NULL;
		size_t n = 0;

		if (store_state_list(s, &f, &arr, &n, next))
			return -1;
		for (size_t i = 0; i < n; i++) {
			void *got = NULL, *exp;
			size_t glen = 0, elen;

			exp = make_state(arr[i].n_tokens, &elen);
			if (store_state_get(s, arr[i].id, &got, &glen, NULL) ||
			    glen != elen || memcmp(got, exp, elen) != 0)
				bad++;
			free(got);
			free(exp);
			count++;
		}
		store_info_array_free(arr, n);
	} while (next[0]);
	return bad ? -1 : count;
}

int main(void)
{
	char dir[256], path[300];
	const char *tmp = getenv("TMPDIR");
	int total_acked = 0, killed_mid = 0;
	store *s;

	snprintf(dir, sizeof(dir), "%s/ssmd-crash-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(dir))
		return 1;
	snprintf(path, sizeof(path), "%s/crash.db", dir);
	if (store_open(path, NULL, &s))
		return 1;
	store_close(s);
	srand((unsigned)time(NULL) ^ (unsigned)getpid());

	for (int round = 0; round < ROUNDS; round++) {
		char (*acked)[STORE_ID_SIZE] = NULL;
		size_t n_acked = 0, cap = 0, got = 0;
		char rec[STORE_ID_SIZE];
		struct timespec ts;
		int64_t start_ms, incomplete = -1;
		int fds[2], status, bad = 0;
		long visible;
		pid_t pid;

		clock_gettime(CLOCK_REALTIME, &ts);
		start_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - 1;
		if (pipe(fds))
			return 1;
		pid = fork();
		if (pid == 0) {
			close(fds[0]);
			child(path, fds[1], (uint64_t)round * 100000);
		}
		close(fds[1]);
		/* a random moment: before the open, between puts, inside a
		 * transaction, during a checkpoint */
		usleep((useconds_t)(rand() % 100000));
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		killed_mid += WIFSIGNALED(status);
		for (;;) {
			ssize_t r = read(fds[0], rec + got, STORE_ID_SIZE - got);

			if (r <= 0)
				break;
			got += (size_t)r;
			if (got < STORE_ID_SIZE)
				continue;
			got = 0;
			if (n_acked == cap) {
				cap = cap ? cap * 2 : 64;
				acked = realloc(acked, cap * sizeof(*acked));
			}
			memcpy(acked[n_acked++], rec, STORE_ID_SIZE);
		}
		close(fds[0]);
		total_acked += (int)n_acked;

		if (!integrity_ok(path, &incomplete) || incomplete != 0) {
			CHECK(0, "round %d: integrity_check failed or %lld "
			      "incomplete states", round, (long long)incomplete);
			free(acked);
			continue;
		}
		if (store_open(path, NULL, &s)) {
			CHECK(0, "round %d: reopen: %s", round, ssmd_errmsg());
			free(acked);
			continue;
		}
		for (size_t i = 0; i < n_acked; i++) {
			store_state_info info;
			void *raw = NULL, *exp;
			size_t len = 0, elen;

			if (store_state_get(s, acked[i], &raw, &len, &info)) {
				bad++;
				continue;
			}
			exp = make_state(info.n_tokens, &elen);
			bad += len != elen || memcmp(raw, exp, elen) != 0;
			free(exp);
			free(raw);
			store_state_info_fini(&info);
		}
		visible = verify_since(s, start_ms);
		store_close(s);
		CHECK(bad == 0, "round %d: %d acknowledged states lost or wrong",
		      round, bad);
		CHECK(visible >= (long)n_acked && visible <= (long)n_acked + 1,
		      "round %d: %ld states visible and verified, %zu "
		      "acknowledged (at most one more may be in flight)",
		      round, visible, n_acked);
		free(acked);
	}
	printf("%d rounds, %d killed mid-run, %d states acknowledged\n", ROUNDS,
	       killed_mid, total_acked);
	CHECK(killed_mid >= 100, "at least 100 kills hit a running writer (%d)",
	      killed_mid);
	CHECK(total_acked > ROUNDS, "the writer made progress (%d puts)",
	      total_acked);
	{
		char cmd[300];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	}
	return check_summary("statestore_crash");
}
