/*
 * admin.c — changing the state library besides puts and imports: deleting
 * states (with re-linking of their children), garbage collection, tags and
 * model configs.
 */
#include "store.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "store_impl.h"

/* ------------------------------------------------------- delete and gc -- */

/* What deleting a state does, in order. Parameters: ?1 the state's ID, ?2
 * its row key, ?3 its own first parent (NULL for a root), which inherits its
 * children. */
static const char *const delete_sql[] = {
	/* First-parent children: prefix their transcript with ours so the
	 * tokens from the root stay the same (varints simply concatenate). */
	"INSERT OR REPLACE INTO transcripts(n, tokens)"
	" SELECT c.n, coalesce((SELECT tokens FROM transcripts WHERE n=?2), x'')"
	" || coalesce((SELECT tokens FROM transcripts WHERE n=c.n), x'')"
	" FROM states c JOIN parents p ON p.child=c.id"
	" WHERE p.parent=?1 AND p.ord=0"
	" AND (SELECT n_transcript FROM states WHERE n=?2) > 0",
	"UPDATE states SET n_transcript = n_transcript +"
	" (SELECT n_transcript FROM states WHERE n=?2)"
	" WHERE id IN (SELECT child FROM parents WHERE parent=?1 AND ord=0)",
	/* Re-link children onto ?3: a first-parent link always moves (any
	 * other link of that child to ?3 is dropped first); another link moves
	 * unless the child already names ?3. Links left over go below. */
	"DELETE FROM parents WHERE parent=?3 AND ord>0"
	" AND child IN (SELECT child FROM parents WHERE parent=?1 AND ord=0)",
	"UPDATE parents SET parent=?3 WHERE ?3 IS NOT NULL AND parent=?1"
	" AND (ord=0 OR child NOT IN (SELECT child FROM parents WHERE parent=?3))",
	"DELETE FROM parents WHERE parent=?1 OR child=?1",
	"DELETE FROM tags WHERE id=?1",
	"DELETE FROM payloads WHERE n=?2",
	"DELETE FROM transcripts WHERE n=?2",
	"DELETE FROM states WHERE n=?2",
};

/* Deletes state id (canonical, existing, row key key) inside the write
 * transaction, re-linking its children as store_state_delete() documents. */
static int delete_locked(store *s, const char *id, int64_t key)
{
	sqlite3 *db = s->wdb;
	sqlite3_stmt *st = NULL;
	char gp[STORE_ID_SIZE] = "";
	int rc;

	rc = store_sql_prepare(db, "SELECT parent FROM parents WHERE child=?1 AND ord=0",
		     &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		store_copy_text(gp, sizeof(gp), sqlite3_column_text(st, 0));
	rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SSMD_OK :
		store_sql_err(db, rc, "delete");
	for (size_t i = 0; !rc && i < sizeof(delete_sql) / sizeof(*delete_sql);
	     i++) {
		sqlite3_finalize(st);
		st = NULL;
		rc = store_sql_prepare(db, delete_sql[i], &st);
		if (rc)
			break;
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		if (sqlite3_bind_parameter_count(st) >= 2)
			sqlite3_bind_int64(st, 2, key);
		if (sqlite3_bind_parameter_count(st) >= 3 && gp[0])
			sqlite3_bind_text(st, 3, gp, -1, SQLITE_STATIC);
		rc = store_sql_step(db, st, "delete");
	}
	sqlite3_finalize(st);
	return rc;
}

int store_state_delete(store *s, const char *id, int force)
{
	sqlite3_stmt *st = NULL;
	char canon[STORE_ID_SIZE];
	int64_t key = 0, tags = 0;
	int rc;

	if (!s || !id)
		return ssmd_err_set(SSMD_EINVAL, "store_state_delete: NULL");
	if (!store_id_valid(id))
		return ssmd_err_set(SSMD_EINVAL,
				    "delete takes a state ID, not '%.64s'", id);
	store_id_canon(id, canon);
	rc = store_write_begin(s);
	if (rc)
		return rc;
	rc = store_sql_prepare(s->wdb, "SELECT n, (SELECT count(*) FROM tags WHERE id=?1)"
		     " FROM states WHERE id=?1", &st);
	if (rc)
		goto out;
	sqlite3_bind_text(st, 1, canon, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		key = sqlite3_column_int64(st, 0);
		tags = sqlite3_column_int64(st, 1);
		rc = SSMD_OK;
	} else if (rc == SQLITE_DONE) {
		rc = ssmd_err_set(SSMD_ENOENT, "no state %s", canon);
	} else {
		rc = store_sql_err(s->wdb, rc, "delete");
	}
	if (!rc && tags && !force)
		rc = ssmd_err_set(SSMD_EEXIST,
				  "state %s is tagged (%lld tags); untag it or "
				  "force", canon, (long long)tags);
	if (!rc)
		rc = delete_locked(s, canon, key);
out:
	sqlite3_finalize(st);
	return store_write_end(s, rc);
}

/* A state store_gc() collects, and store_rows_collect()'s row of one (ctx:
 * the bytes so far). */
struct gc_victim {
	char id[STORE_ID_SIZE];
	int64_t key;
};

static int gc_row(sqlite3 *db, sqlite3_stmt *st, void *elem, void *ctx)
{
	struct gc_victim *v = elem;

	(void)db;
	store_copy_text(v->id, STORE_ID_SIZE, sqlite3_column_text(st, 0));
	v->key = sqlite3_column_int64(st, 1);
	*(uint64_t *)ctx += (uint64_t)sqlite3_column_int64(st, 2);
	return SSMD_OK;
}

int store_gc(store *s, int64_t older_than_s, int dry_run, uint64_t *n_states,
	     uint64_t *n_bytes)
{
	struct gc_victim *v = NULL;
	sqlite3_stmt *st = NULL;
	size_t cnt = 0;
	uint64_t bytes = 0;
	int rc;

	if (!s || older_than_s < 0 || older_than_s > INT64_MAX / 1000)
		return ssmd_err_set(SSMD_EINVAL, "store_gc: bad argument");
	rc = store_write_begin(s);
	if (rc)
		return rc;
	/* Everything a tag reaches through parent links is kept. */
	rc = store_sql_prepare(s->wdb,
		     "WITH RECURSIVE keep(id) AS (SELECT id FROM tags"
		     " UNION SELECT p.parent FROM parents p JOIN keep k"
		     " ON p.child=k.id)"
		     " SELECT id, n, stored_size FROM states WHERE created_ms<?1"
		     " AND id NOT IN (SELECT id FROM keep) ORDER BY id", &st);
	if (rc)
		goto out;
	sqlite3_bind_int64(st, 1, store_now_ms() - older_than_s * 1000);
	rc = store_rows_collect(s->wdb, st, sizeof(*v), 64, SIZE_MAX, "gc", gc_row, &bytes,
				&v, &cnt, NULL);
	sqlite3_finalize(st);
	st = NULL;
	/* Oldest first, so each child is re-linked past every collected
	 * ancestor in turn. */
	for (size_t i = 0; i < cnt && !dry_run && !rc; i++)
		rc = delete_locked(s, v[i].id, v[i].key);
out:
	sqlite3_finalize(st);
	free(v);
	/* A dry run changed nothing, so its commit is empty. */
	rc = store_write_end(s, rc);
	if (!rc) {
		if (n_states)
			*n_states = cnt;
		if (n_bytes)
			*n_bytes = bytes;
	}
	return rc;
}

/* ----------------------------------------------------------------- tags -- */

/* Checks the arguments of fn (a tag writer) and begins the write
 * transaction, which the caller ends with store_write_end(). */
static int tag_write_begin(store *s, const char *name, const char *fn)
{
	if (!s)
		return ssmd_err_set(SSMD_EINVAL, "%s: NULL", fn);
	if (!store_tag_name_valid(name))
		return ssmd_err_set(SSMD_EINVAL, "invalid tag name '%.64s'",
				    name ? name : "");
	return store_write_begin(s);
}

int store_tag_set(store *s, const char *name, const char *id_or_tag)
{
	sqlite3_stmt *st = NULL;
	char id[STORE_ID_SIZE];
	int rc;

	rc = tag_write_begin(s, name, "store_tag_set");
	if (rc)
		return rc;
	rc = store_resolve_db(s->wdb, id_or_tag, id, NULL);
	if (!rc)
		rc = store_sql_prepare(s->wdb, "INSERT OR REPLACE INTO tags(name, id,"
			     " updated_ms) VALUES(?1, ?2, ?3)", &st);
	if (!rc) {
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, store_now_ms());
		rc = store_sql_step(s->wdb, st, "tag");
	}
	sqlite3_finalize(st);
	return store_write_end(s, rc);
}

int store_tag_delete(store *s, const char *name)
{
	int rc;

	rc = tag_write_begin(s, name, "store_tag_delete");
	if (rc)
		return rc;
	rc = store_sql_exec_text(s->wdb, "DELETE FROM tags WHERE name=?1", name);
	if (!rc && sqlite3_changes(s->wdb) == 0)
		rc = ssmd_err_set(SSMD_ENOENT, "no tag '%s'", name);
	return store_write_end(s, rc);
}

/* store_rows_collect()'s row of a tag list. */
static int tag_row(sqlite3 *db, sqlite3_stmt *st, void *elem, void *ctx)
{
	store_tag *t = elem;

	(void)db;
	(void)ctx;
	store_copy_text(t->name, sizeof(t->name), sqlite3_column_text(st, 0));
	store_copy_text(t->id, sizeof(t->id), sqlite3_column_text(st, 1));
	t->updated_ms = sqlite3_column_int64(st, 2);
	return SSMD_OK;
}

int store_tag_list(store *s, const char *prefix, store_tag **out, size_t *n)
{
	sqlite3_stmt *st = NULL;
	sqlite3 *db;
	store_tag *arr = NULL;
	size_t cnt = 0;
	char *pend = NULL;
	int rc;

	if (!s || !out || !n)
		return ssmd_err_set(SSMD_EINVAL, "store_tag_list: NULL");
	if (!prefix)
		prefix = "";
	pend = store_prefix_end(prefix);
	if (!pend)
		return SSMD_ENOMEM;
	rc = store_read_begin(s, &db);
	if (rc)
		goto done;
	rc = store_sql_prepare(db, "SELECT name, id, updated_ms FROM tags WHERE name>=?1"
		     " AND name<?2 ORDER BY name", &st);
	if (!rc) {
		sqlite3_bind_text(st, 1, prefix, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, pend, -1, SQLITE_STATIC);
		rc = store_rows_collect(db, st, sizeof(*arr), 16, SIZE_MAX, "tag list",
					tag_row, NULL, &arr, &cnt, NULL);
	}
	if (!rc) {
		*out = arr;
		*n = cnt;
		arr = NULL;
	}
	sqlite3_finalize(st);
	store_read_end(s, db);
done:
	free(arr);
	free(pend);
	return rc;
}

/* --------------------------------------------------------------- models -- */

int store_model_put(store *s, const uint8_t fingerprint[STORE_FINGERPRINT_LEN],
		    const char *config_json)
{
	sqlite3_stmt *st = NULL;
	cJSON *doc;
	int rc;

	if (!s || !fingerprint || !config_json)
		return ssmd_err_set(SSMD_EINVAL, "store_model_put: NULL");
	if (strlen(config_json) > STORE_METADATA_MAX)
		return ssmd_err_set(SSMD_EINVAL, "model config too long");
	doc = cJSON_Parse(config_json);
	if (!doc)
		return ssmd_err_set(SSMD_EINVAL, "model config is not JSON");
	cJSON_Delete(doc);
	rc = store_write_begin(s);
	if (rc)
		return rc;
	rc = store_sql_prepare(s->wdb, "INSERT OR REPLACE INTO models(fingerprint, config,"
		     " updated_ms) VALUES(?1, ?2, ?3)", &st);
	if (!rc) {
		sqlite3_bind_blob(st, 1, fingerprint, STORE_FINGERPRINT_LEN,
				  SQLITE_STATIC);
		sqlite3_bind_text(st, 2, config_json, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, store_now_ms());
		rc = store_sql_step(s->wdb, st, "model");
	}
	sqlite3_finalize(st);
	return store_write_end(s, rc);
}

int store_model_get(store *s, const uint8_t fingerprint[STORE_FINGERPRINT_LEN],
		    char **config_json)
{
	sqlite3_stmt *st = NULL;
	sqlite3 *db;
	int rc;

	if (!s || !fingerprint || !config_json)
		return ssmd_err_set(SSMD_EINVAL, "store_model_get: NULL");
	rc = store_read_begin(s, &db);
	if (rc)
		return rc;
	rc = store_sql_prepare(db, "SELECT config FROM models WHERE fingerprint=?1", &st);
	if (!rc) {
		sqlite3_bind_blob(st, 1, fingerprint, STORE_FINGERPRINT_LEN,
				  SQLITE_STATIC);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			char *c = strdup((const char *)sqlite3_column_text(st, 0));

			rc = c ? SSMD_OK : SSMD_ENOMEM;
			if (c)
				*config_json = c;
		} else if (rc == SQLITE_DONE) {
			rc = ssmd_err_set(SSMD_ENOENT, "model not recorded");
		} else {
			rc = store_sql_err(db, rc, "model");
		}
	}
	sqlite3_finalize(st);
	store_read_end(s, db);
	return rc;
}
