/*
 * session.c — the session table: which sessions a daemon has open and the
 * stored state each continues from (store.h, "sessions").
 */
#include <stdlib.h>
#include <string.h>

#include "store_impl.h"

const char store_sessions_sql[] =
	"CREATE TABLE IF NOT EXISTS sessions(id TEXT PRIMARY KEY,"
	" state TEXT NOT NULL, seed INTEGER NOT NULL, label TEXT NOT NULL,"
	" closed INTEGER NOT NULL, updated_ms INTEGER NOT NULL) WITHOUT ROWID;";

/* Printable ASCII, no space, 1..STORE_SESSION_ID_MAX bytes. */
static int session_id_valid(const char *id)
{
	size_t n = id ? strlen(id) : 0;

	if (n < 1 || n > STORE_SESSION_ID_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (id[i] <= ' ' || id[i] > '~')
			return 0;
	return 1;
}

int store_session_check(const char *id, const char *state, const char *label)
{
	if (!session_id_valid(id))
		return ssmd_err_set(SSMD_EINVAL, "invalid session ID '%.80s'",
				    id ? id : "");
	if (state && state[0] && !store_id_valid(state))
		return ssmd_err_set(SSMD_EINVAL, "invalid state ID '%.40s'", state);
	if (label && strlen(label) > STORE_LABEL_MAX)
		return ssmd_err_set(SSMD_EINVAL, "label longer than %d bytes",
				    STORE_LABEL_MAX);
	return SSMD_OK;
}

int store_session_row_put(sqlite3 *db, const char *id, const char *state,
			  uint64_t seed, const char *label)
{
	sqlite3_stmt *st = NULL;
	int rc = store_sql_prepare(db, "INSERT OR REPLACE INTO sessions(id, state,"
		     " seed, label, closed, updated_ms) VALUES(?1, ?2, ?3, ?4, 0, ?5)",
		     &st);

	if (!rc) {
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, state ? state : "", -1, SQLITE_STATIC);
		/* SQLite integers are signed 64-bit: the seed's bits travel as
		 * such and come back unchanged. */
		sqlite3_bind_int64(st, 3, (sqlite3_int64)seed);
		sqlite3_bind_text(st, 4, label ? label : "", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, store_now_ms());
		rc = store_sql_step(db, st, "session put");
	}
	sqlite3_finalize(st);
	return rc;
}

int store_session_put(store *s, const char *id, const char *state,
		      uint64_t seed, const char *label)
{
	int rc;

	if (!s)
		return ssmd_err_set(SSMD_EINVAL, "store_session_put: NULL");
	rc = store_session_check(id, state, label);
	if (rc)
		return rc;
	rc = store_write_begin(s);
	if (rc)
		return rc;
	rc = store_session_row_put(s->wdb, id, state, seed, label);
	return store_write_end(s, rc);
}

int store_session_put_many(store *s, const store_session *rows, size_t n)
{
	int rc = SSMD_OK;

	if (!s || (n && !rows))
		return ssmd_err_set(SSMD_EINVAL, "store_session_put_many: NULL");
	for (size_t i = 0; !rc && i < n; i++)
		rc = store_session_check(rows[i].id, rows[i].state, rows[i].label);
	if (rc || !n)
		return rc;
	rc = store_write_begin(s);
	if (rc)
		return rc;
	for (size_t i = 0; !rc && i < n; i++)
		rc = store_session_row_put(s->wdb, rows[i].id, rows[i].state,
					   rows[i].seed, rows[i].label);
	return store_write_end(s, rc);
}

int store_session_close(store *s, const char *id)
{
	int rc;

	if (!s)
		return ssmd_err_set(SSMD_EINVAL, "store_session_close: NULL");
	if (!session_id_valid(id))
		return ssmd_err_set(SSMD_EINVAL, "invalid session ID '%.80s'",
				    id ? id : "");
	rc = store_write_begin(s);
	if (rc)
		return rc;
	rc = store_sql_exec_text(s->wdb, "UPDATE sessions SET closed=1 WHERE id=?1",
				 id);
	if (!rc && sqlite3_changes(s->wdb) == 0)
		rc = ssmd_err_set(SSMD_ENOENT, "no session '%s'", id);
	return store_write_end(s, rc);
}

/* store_rows_collect()'s row of the session list. */
static int session_row(sqlite3 *db, sqlite3_stmt *st, void *elem, void *ctx)
{
	store_session *x = elem;

	(void)db;
	(void)ctx;
	store_copy_text(x->id, sizeof(x->id), sqlite3_column_text(st, 0));
	store_copy_text(x->state, sizeof(x->state), sqlite3_column_text(st, 1));
	x->seed = (uint64_t)sqlite3_column_int64(st, 2);
	store_copy_text(x->label, sizeof(x->label), sqlite3_column_text(st, 3));
	x->updated_ms = sqlite3_column_int64(st, 4);
	return SSMD_OK;
}

int store_session_list(store *s, store_session **out, size_t *n)
{
	sqlite3_stmt *st = NULL;
	sqlite3 *db;
	store_session *arr = NULL;
	size_t cnt = 0;
	int rc;

	if (!s || !out || !n)
		return ssmd_err_set(SSMD_EINVAL, "store_session_list: NULL");
	rc = store_read_begin(s, &db);
	if (rc)
		return rc;
	rc = store_sql_prepare(db, "SELECT id, state, seed, label, updated_ms FROM"
		     " sessions WHERE closed=0 ORDER BY updated_ms, id", &st);
	if (!rc)
		rc = store_rows_collect(db, st, sizeof(*arr), 16, SIZE_MAX, "session list",
					session_row, NULL, &arr, &cnt, NULL);
	if (!rc) {
		*out = arr;
		*n = cnt;
		arr = NULL;
	}
	sqlite3_finalize(st);
	store_read_end(s, db);
	free(arr);
	return rc;
}
