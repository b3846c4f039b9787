/*
 * test_session.c — the library's session table (store_session_*): rows
 * round-trip (every seed bit, label, state ID), alone or in an all-or-none
 * batch; closed sessions drop out of the list and reopen when put again;
 * bad input is refused with its code; a state put that names a session
 * records it in the same commit; the table survives closing and reopening
 * the library, and a library made before the table existed gets it on open.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "check.h"
#include "testutil.h"
#include "ssm_state.h"
#include "store.h"

static char tmp[] = "/tmp/ssmd-test-session-XXXXXX";

/* A stored state to point sessions at. */
static void put_state(store *st, char id[STORE_ID_SIZE])
{
	ssm_state *x = NULL;
	void *raw;
	size_t len;

	if (ssm_state_alloc(SSM_ARCH_MAMBA1, 1, 4, 2, 4, 3, &x))
		abort();
	len = ssm_state_encoded_size(x);
	raw = malloc(len);
	if (!raw || ssm_state_encode(x, raw, len))
		abort();
	store_put p = {.raw = raw, .raw_len = len, .kind = STORE_KIND_SNAPSHOT};
	CHECK_RC(store_state_put(st, &p, id), SSMD_OK);
	free(raw);
	ssm_state_free(x);
}

static const store_session *find(const store_session *v, size_t n,
				 const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i].id, id) == 0)
			return &v[i];
	return NULL;
}

int main(void)
{
	char path[256], old[256], sid[STORE_ID_SIZE], big[STORE_LABEL_MAX + 2];
	char longid[STORE_SESSION_ID_MAX + 2];
	store *st;
	store_session *v = NULL;
	size_t n = 0;
	const store_session *a;

	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(path, sizeof(path), "%s/lib.db", tmp);
	CHECK_RC(store_open(path, NULL, &st), SSMD_OK);
	put_state(st, sid);

	CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
	CHECK(n == 0, "a new library lists no sessions (%zu)", n);
	free(v);

	CHECK_RC(store_session_put(st, "s-empty", NULL, 7, NULL), SSMD_OK);
	CHECK_RC(store_session_put(st, "s-full", sid, UINT64_MAX - 1, "a label"), SSMD_OK);
	CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
	a = find(v, n, "s-full");
	CHECK(n == 2 && a && strcmp(a->state, sid) == 0 && a->seed == UINT64_MAX - 1 &&
	      strcmp(a->label, "a label") == 0,
	      "a row round-trips: state ID, every bit of the seed, label");
	a = find(v, n, "s-empty");
	CHECK(a && a->state[0] == 0 && a->seed == 7 && a->label[0] == 0,
	      "a session with nothing stored has an empty state");
	free(v);

	/* Moving on: the row is replaced. */
	CHECK_RC(store_session_put(st, "s-empty", sid, 8, "now"), SSMD_OK);
	CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
	a = find(v, n, "s-empty");
	CHECK(n == 2 && a && strcmp(a->state, sid) == 0 && a->seed == 8,
	      "put again replaces the row");
	free(v);

	CHECK_RC(store_session_close(st, "s-full"), SSMD_OK);
	CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
	CHECK(n == 1 && !find(v, n, "s-full"), "a closed session is not listed");
	free(v);
	CHECK_RC(store_session_close(st, "s-nothing"), SSMD_ENOENT);

	/* A put that names a session records it in the same commit. */
	{
		ssm_state *x = NULL;
		char pid[STORE_ID_SIZE];
		size_t len;
		void *raw;
		ssm_state_alloc(SSM_ARCH_MAMBA1, 1, 4, 2, 4, 3, &x);
		len = ssm_state_encoded_size(x);
		raw = malloc(len);
		ssm_state_encode(x, raw, len);
		store_put p = {.raw = raw, .raw_len = len, .kind = STORE_KIND_CHECKPOINT,
			       .session = "s-put", .session_seed = 42,
			       .session_label = "via put"};
		CHECK_RC(store_state_put(st, &p, pid), SSMD_OK);
		CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
		a = find(v, n, "s-put");
		CHECK(a && strcmp(a->state, pid) == 0 && a->seed == 42 &&
		      strcmp(a->label, "via put") == 0,
		      "store_state_put with a session records it continuing from the new state");
		free(v);
		p.session = "bad id";
		CHECK_RC(store_state_put(st, &p, pid), SSMD_EINVAL);
		CHECK_RC(store_session_close(st, "s-put"), SSMD_OK);
		free(raw);
		ssm_state_free(x);
	}

	/* Many rows in one transaction: all or none. */
	{
		store_session rows[3];
		memset(rows, 0, sizeof(rows));
		for (int i = 0; i < 3; i++) {
			snprintf(rows[i].id, sizeof(rows[i].id), "s-many-%d", i);
			rows[i].seed = (uint64_t)i;
		}
		snprintf(rows[1].state, sizeof(rows[1].state), "%s", sid);
		snprintf(rows[2].id, sizeof(rows[2].id), "bad id");
		CHECK_RC(store_session_put_many(st, rows, 3), SSMD_EINVAL);
		CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
		CHECK(!find(v, n, "s-many-0"), "a batch with a bad row writes nothing");
		free(v);
		snprintf(rows[2].id, sizeof(rows[2].id), "s-many-2");
		CHECK_RC(store_session_put_many(st, rows, 3), SSMD_OK);
		CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
		a = find(v, n, "s-many-1");
		CHECK(find(v, n, "s-many-0") && find(v, n, "s-many-2") && a &&
		      strcmp(a->state, sid) == 0 && a->seed == 1,
		      "a batch of 3 rows is listed");
		free(v);
		for (int i = 0; i < 3; i++)
			CHECK_RC(store_session_close(st, rows[i].id), SSMD_OK);
	}

	/* Bad input. */
	memset(longid, 'x', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = 0;
	memset(big, 'l', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	CHECK_RC(store_session_put(st, "", NULL, 0, NULL), SSMD_EINVAL);
	CHECK_RC(store_session_put(st, longid, NULL, 0, NULL), SSMD_EINVAL);
	CHECK_RC(store_session_put(st, "has space", NULL, 0, NULL), SSMD_EINVAL);
	CHECK_RC(store_session_put(st, "s-x", "not-an-id", 0, NULL), SSMD_EINVAL);
	CHECK_RC(store_session_put(st, "s-x", NULL, 0, big), SSMD_EINVAL);
	CHECK_RC(store_session_put(NULL, "s-x", NULL, 0, NULL), SSMD_EINVAL);

	/* Reopen: the table is still there; a closed session reopens by put. */
	store_close(st);
	CHECK_RC(store_open(path, NULL, &st), SSMD_OK);
	CHECK_RC(store_session_put(st, "s-full", sid, 1, NULL), SSMD_OK);
	CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
	CHECK(n == 2 && find(v, n, "s-empty") && find(v, n, "s-full"),
	      "after reopening the library both sessions are listed (the closed one put again)");
	free(v);
	store_close(st);

	/* A library from before the session table: the table is added. */
	snprintf(old, sizeof(old), "%s/old.db", tmp);
	CHECK_RC(store_open(old, NULL, &st), SSMD_OK);
	store_close(st);
	{
		sqlite3 *db;
		CHECK(sqlite3_open(old, &db) == SQLITE_OK &&
		      sqlite3_exec(db, "DROP TABLE sessions", NULL, NULL, NULL) == SQLITE_OK,
		      "dropping the table to mimic an older library");
		sqlite3_close(db);
	}
	CHECK_RC(store_open(old, NULL, &st), SSMD_OK);
	CHECK_RC(store_session_put(st, "s-1", NULL, 0, NULL), SSMD_OK);
	CHECK_RC(store_session_list(st, &v, &n), SSMD_OK);
	CHECK(n == 1, "an older library gets the session table on open");
	free(v);
	store_close(st);

	test_dir_remove(tmp);
	return check_summary("statestore_session");
}
