/*
 * query.c — reading the state library: filtered, paginated lists, lineage,
 * transcripts from the root, totals.
 */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_impl.h"

/* ----------------------------------------------------------------- list -- */

int store_state_list(store *s, const store_filter *f, store_state_info **out,
		     size_t *n, char next_cursor[STORE_ID_SIZE])
{
	static const char where[] =
		" WHERE (?1 IS NULL OR s.fingerprint=?1)"
		" AND (?2=0 OR s.kind=?2)"
		" AND (?3 IS NULL OR s.label=?3)"
		" AND (?4=0 OR s.created_ms>=?4)"
		" AND (?5=0 OR s.created_ms<?5)"
		" AND (?6 IS NULL OR EXISTS(SELECT 1 FROM tags t WHERE t.id=s.id"
		"  AND t.name>=?6 AND t.name<?7))";
	static const char asc[] = "SELECT " STORE_STATE_COLS " FROM states s%s"
		" AND (?8 IS NULL OR s.id>?8) ORDER BY s.id LIMIT ?9";
	static const char desc[] = "SELECT " STORE_STATE_COLS " FROM states s%s"
		" AND (?8 IS NULL OR s.id<?8) ORDER BY s.id DESC LIMIT ?9";
	store_filter none = { 0 };
	sqlite3_stmt *st = NULL;
	sqlite3 *db = NULL;
	store_state_info *arr = NULL;
	char sql[1024], cursor[STORE_ID_SIZE], *pend = NULL;
	size_t limit, cnt = 0;
	int rc, more = 0;

	if (!s || !out || !n || !next_cursor)
		return ssmd_err_set(SSMD_EINVAL, "store_state_list: NULL argument");
	if (!f)
		f = &none;
	limit = f->limit ? f->limit : 100;
	if (limit > 10000)
		limit = 10000;
	if (f->cursor && *f->cursor && !store_id_valid(f->cursor))
		return ssmd_err_set(SSMD_EINVAL, "bad list cursor");
	if (f->tag_prefix && *f->tag_prefix) {
		pend = store_prefix_end(f->tag_prefix);
		if (!pend)
			return SSMD_ENOMEM;
	}
	snprintf(sql, sizeof(sql), f->newest_first ? desc : asc, where);
	rc = store_read_begin(s, &db);
	if (rc)
		goto out;
	rc = store_sql_prepare(db, sql, &st);
	if (rc)
		goto out;
	if (f->fingerprint)
		sqlite3_bind_blob(st, 1, f->fingerprint, STORE_FINGERPRINT_LEN,
				  SQLITE_STATIC);
	sqlite3_bind_int(st, 2, f->kind);
	if (f->label)
		sqlite3_bind_text(st, 3, f->label, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, f->since_ms);
	sqlite3_bind_int64(st, 5, f->until_ms);
	if (pend) {
		sqlite3_bind_text(st, 6, f->tag_prefix, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 7, pend, -1, SQLITE_STATIC);
	}
	if (f->cursor && *f->cursor) {
		store_id_canon(f->cursor, cursor);
		sqlite3_bind_text(st, 8, cursor, -1, SQLITE_STATIC);
	}
	sqlite3_bind_int64(st, 9, (sqlite3_int64)limit + 1);
	rc = store_infos_collect(db, st, limit, &arr, &cnt, &more);
	if (rc)
		goto out;
	if (more && cnt)
		memcpy(next_cursor, arr[cnt - 1].id, STORE_ID_SIZE);
	else
		next_cursor[0] = '\0';
	*out = arr;
	*n = cnt;
out:
	sqlite3_finalize(st);
	if (db)
		store_read_end(s, db);
	free(pend);
	return rc;
}

/* -------------------------------------------------------------- lineage -- */

/* Every state row that sql (selecting STORE_STATE_COLS, with ?1 bound to
 * id) yields, into *out (n of them; free with store_info_array_free()). */
static int infos_of(sqlite3 *db, const char *sql, const char *id,
		    store_state_info **out, size_t *n)
{
	sqlite3_stmt *st = NULL;
	int rc, more;

	rc = store_sql_prepare(db, sql, &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = store_infos_collect(db, st, SIZE_MAX, out, n, &more);
	sqlite3_finalize(st);
	return rc;
}

int store_lineage(store *s, const char *id_or_tag,
		  store_state_info **ancestors, size_t *n_ancestors,
		  store_state_info **children, size_t *n_children)
{
	sqlite3 *db;
	store_state_info *anc = NULL, *kids = NULL;
	size_t na = 0, nk = 0;
	char id[STORE_ID_SIZE];
	int rc;

	if (!s)
		return ssmd_err_set(SSMD_EINVAL, "store_lineage: NULL argument");
	rc = store_read_begin(s, &db);
	if (rc)
		return rc;
	rc = store_resolve_db(db, id_or_tag, id, NULL);
	if (rc)
		goto out;
	if (ancestors && n_ancestors) {
		/* Every state reachable through parent links, each at its
		 * smallest depth; IDs are time-ordered so the graph has no
		 * cycles and the recursion ends. */
		rc = infos_of(db,
			      "WITH RECURSIVE anc(id, depth) AS ("
			      " SELECT parent, 1 FROM parents WHERE child=?1"
			      " UNION SELECT p.parent, a.depth+1 FROM parents p"
			      " JOIN anc a ON p.child=a.id)"
			      " SELECT " STORE_STATE_COLS " FROM states s JOIN"
			      " (SELECT id AS aid, min(depth) AS d FROM anc"
			      "  GROUP BY id) ON s.id=aid ORDER BY d, s.id",
			      id, &anc, &na);
		if (rc)
			goto out;
	}
	if (children && n_children) {
		rc = infos_of(db, "SELECT " STORE_STATE_COLS " FROM states s WHERE"
			      " s.id IN (SELECT child FROM parents WHERE parent=?1)"
			      " ORDER BY s.id", id, &kids, &nk);
		if (rc)
			goto out;
	}
	if (ancestors && n_ancestors) {
		*ancestors = anc;
		*n_ancestors = na;
		anc = NULL;
	}
	if (children && n_children) {
		*children = kids;
		*n_children = nk;
		kids = NULL;
	}
out:
	store_read_end(s, db);
	store_info_array_free(anc, na);
	store_info_array_free(kids, nk);
	return rc;
}

/* ----------------------------------------------------------- transcript -- */

typedef struct piece {
	uint8_t *bytes;
	size_t len, n;
} piece;

int store_transcript_db(sqlite3 *db, const char *start, int32_t **ids,
			size_t *n)
{
	sqlite3_stmt *st = NULL;
	piece *pieces = NULL;
	size_t np = 0, cap = 0, total = 0, pos = 0;
	int32_t *res = NULL;
	char cur[STORE_ID_SIZE];
	int rc, found;

	rc = store_sql_prepare(db, "SELECT s.n_transcript, t.tokens,"
		     " (SELECT parent FROM parents WHERE child=s.id AND ord=0)"
		     " FROM states s LEFT JOIN transcripts t ON t.n=s.n"
		     " WHERE s.id=?1", &st);
	if (rc)
		return rc;
	snprintf(cur, sizeof(cur), "%s", start);
	/* Walk up the first-parent chain, newest piece first. */
	for (found = 1; found;) {
		const void *b;
		size_t len, cnt;

		sqlite3_bind_text(st, 1, cur, -1, SQLITE_TRANSIENT);
		rc = sqlite3_step(st);
		if (rc == SQLITE_DONE) {
			rc = ssmd_err_set(SSMD_ENOENT, "no state %s", cur);
			goto out;
		}
		if (rc != SQLITE_ROW) {
			rc = store_sql_err(db, rc, "transcript");
			goto out;
		}
		cnt = (size_t)sqlite3_column_int64(st, 0);
		b = sqlite3_column_blob(st, 1);
		len = (size_t)sqlite3_column_bytes(st, 1);
		if (cnt > STORE_TRANSCRIPT_MAX * (size_t)8 || (cnt && !b) ||
		    total + cnt < total) {
			rc = ssmd_err_set(SSMD_ECORRUPT,
					  "transcript of %s: recorded %zu "
					  "tokens, stored none", cur, cnt);
			goto out;
		}
		if (np == cap &&
		    (rc = store_grow(&pieces, &cap, sizeof(*pieces), 16, "transcript")))
			goto out;
		pieces[np].len = len;
		pieces[np].n = cnt;
		pieces[np].bytes = malloc(len ? len : 1);
		if (!pieces[np].bytes) {
			rc = SSMD_ENOMEM;
			goto out;
		}
		if (len)
			memcpy(pieces[np].bytes, b, len);
		np++;
		total += cnt;
		found = sqlite3_column_type(st, 2) != SQLITE_NULL;
		if (found)
			store_copy_text(cur, sizeof(cur), sqlite3_column_text(st, 2));
		sqlite3_reset(st);
	}
	res = malloc(total ? total * sizeof(*res) : 1);
	if (!res) {
		rc = SSMD_ENOMEM;
		goto out;
	}
	for (size_t i = np; i-- > 0;) {
		rc = store_tokens_unpack(pieces[i].bytes, pieces[i].len,
					 pieces[i].n, res + pos);
		if (rc)
			goto out;
		pos += pieces[i].n;
	}
	if (total) {
		*ids = res;
		res = NULL;
	} else {
		*ids = NULL;
	}
	*n = total;
	rc = SSMD_OK;
out:
	sqlite3_finalize(st);
	for (size_t i = 0; i < np; i++)
		free(pieces[i].bytes);
	free(pieces);
	free(res);
	return rc;
}

int store_transcript(store *s, const char *id_or_tag, int32_t **ids,
		     size_t *n)
{
	sqlite3 *db;
	char id[STORE_ID_SIZE];
	int rc;

	if (!s || !ids || !n)
		return ssmd_err_set(SSMD_EINVAL, "store_transcript: NULL argument");
	rc = store_read_begin(s, &db);
	if (rc)
		return rc;
	rc = store_resolve_db(db, id_or_tag, id, NULL);
	if (!rc)
		rc = store_transcript_db(db, id, ids, n);
	store_read_end(s, db);
	return rc;
}

/* --------------------------------------------------------------- totals -- */

int store_total_size(store *s, store_totals *t)
{
	sqlite3_stmt *st = NULL;
	sqlite3 *db;
	int rc;

	if (!s || !t)
		return ssmd_err_set(SSMD_EINVAL, "store_total_size: NULL");
	rc = store_read_begin(s, &db);
	if (rc)
		return rc;
	rc = store_sql_prepare(db, "SELECT count(*), total(stored_size), total(raw_size),"
		     " (SELECT page_count FROM pragma_page_count) *"
		     " (SELECT page_size FROM pragma_page_size) FROM states", &st);
	if (!rc) {
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			t->n_states = (uint64_t)sqlite3_column_int64(st, 0);
			t->stored_bytes = (uint64_t)sqlite3_column_double(st, 1);
			t->raw_bytes = (uint64_t)sqlite3_column_double(st, 2);
			t->file_bytes = (uint64_t)sqlite3_column_int64(st, 3);
			rc = SSMD_OK;
		} else {
			rc = store_sql_err(db, rc, "totals");
		}
	}
	sqlite3_finalize(st);
	store_read_end(s, db);
	return rc;
}
