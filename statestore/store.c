#include "store.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "codec.h"
#include "ssm_state.h"
#include "store_impl.h"

_Static_assert(STORE_FINGERPRINT_LEN == SSM_FINGERPRINT_LEN,
	       "store and state fingerprints differ");

/* Schema version 1. Payloads and transcripts live in their own tables keyed
 * by the state's row key, so scans of states never page through blobs. */
static const char schema_sql[] =
	"CREATE TABLE states("
	" n INTEGER PRIMARY KEY,"
	" id TEXT NOT NULL UNIQUE,"
	" kind INTEGER NOT NULL,"
	" fingerprint BLOB NOT NULL,"
	" n_tokens INTEGER NOT NULL,"
	" created_ms INTEGER NOT NULL,"
	" label TEXT NOT NULL,"
	" metadata TEXT,"
	" origin TEXT,"
	" codec INTEGER NOT NULL,"
	" raw_size INTEGER NOT NULL,"
	" stored_size INTEGER NOT NULL,"
	" raw_hash INTEGER NOT NULL,"
	" n_transcript INTEGER NOT NULL);"
	"CREATE INDEX states_by_model ON states(fingerprint, id);"
	"CREATE INDEX states_by_created ON states(created_ms);"
	/* ord 0 is the first parent: the one transcripts are relative to */
	"CREATE TABLE parents(child TEXT NOT NULL, ord INTEGER NOT NULL,"
	" parent TEXT NOT NULL, PRIMARY KEY(child, ord)) WITHOUT ROWID;"
	"CREATE INDEX parents_by_parent ON parents(parent);"
	"CREATE TABLE payloads(n INTEGER PRIMARY KEY, data BLOB NOT NULL);"
	"CREATE TABLE transcripts(n INTEGER PRIMARY KEY, tokens BLOB NOT NULL);"
	"CREATE TABLE tags(name TEXT PRIMARY KEY, id TEXT NOT NULL,"
	" updated_ms INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE INDEX tags_by_id ON tags(id);"
	"CREATE TABLE models(fingerprint BLOB PRIMARY KEY, config TEXT NOT NULL,"
	" updated_ms INTEGER NOT NULL);";

/* Page size of a new library: large pages keep a multi-MB payload's chain
 * of overflow pages (and its WAL frames) short. */
#define NEW_PAGE_SIZE 65536

/* ------------------------------------------------------------ SQLite glue -- */

int store_sql_err(sqlite3 *db, int rc, const char *what)
{
	const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
	int code;

	switch (rc & 0xff) {
	case SQLITE_FULL:
		code = SSMD_ENOSPC;
		break;
	case SQLITE_NOMEM:
		code = SSMD_ENOMEM;
		break;
	case SQLITE_IOERR:
	case SQLITE_CANTOPEN:
	case SQLITE_READONLY:
	case SQLITE_PERM:
		code = SSMD_EIO;
		break;
	case SQLITE_NOTADB:
		code = SSMD_EFORMAT;
		break;
	case SQLITE_CORRUPT:
		code = SSMD_ECORRUPT;
		break;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		code = SSMD_EBUSY;
		break;
	case SQLITE_TOOBIG:
		code = SSMD_ERANGE;
		break;
	default:
		code = SSMD_ESTORE;
	}
	return ssmd_err_set(code, "state library: %s: %s (SQLite code %d)",
			    what, msg, rc);
}

int store_sql_exec(sqlite3 *db, const char *sql)
{
	int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? SSMD_OK : store_sql_err(db, rc, sql);
}

int store_sql_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
	int rc = sqlite3_prepare_v2(db, sql, -1, st, NULL);

	return rc == SQLITE_OK ? SSMD_OK : store_sql_err(db, rc, "prepare");
}

/* Steps a statement that returns no row. */
int store_sql_step(sqlite3 *db, sqlite3_stmt *st, const char *what)
{
	int rc = sqlite3_step(st);

	return rc == SQLITE_DONE ? SSMD_OK : store_sql_err(db, rc, what);
}

/* Runs a statement with one text parameter that returns no row. */
int store_sql_exec_text(sqlite3 *db, const char *sql, const char *a)
{
	sqlite3_stmt *st = NULL;
	int rc = store_sql_prepare(db, sql, &st);

	if (!rc) {
		sqlite3_bind_text(st, 1, a, -1, SQLITE_STATIC);
		rc = store_sql_step(db, st, sql);
	}
	sqlite3_finalize(st);
	return rc;
}

int64_t store_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Opens one connection with the per-connection settings. */
static int conn_open(store *s, int writer, sqlite3 **out)
{
	char sql[160];
	sqlite3 *db = NULL;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
	int rc;

	if (writer)
		flags |= SQLITE_OPEN_CREATE;
	rc = sqlite3_open_v2(s->path, &db, flags, NULL);
	if (rc != SQLITE_OK) {
		rc = store_sql_err(db, rc, s->path);
		goto out;
	}
	sqlite3_extended_result_codes(db, 1);
	sqlite3_busy_timeout(db, s->opts.busy_timeout_ms);
	/* FAST: freed pages are zeroed where that costs no extra I/O, instead
	 * of rewriting every freed overflow page of a deleted payload. */
	snprintf(sql, sizeof(sql),
		 "PRAGMA secure_delete=FAST; PRAGMA synchronous=%s;",
		 s->opts.sync_normal ? "NORMAL" : "FULL");
	rc = store_sql_exec(db, sql);
	if (rc)
		goto out;
	if (writer && s->opts.max_bytes) {
		/* page_size is fixed once the file exists; a new file gets
		 * NEW_PAGE_SIZE, set in store_open() before this matters. */
		uint64_t pages = s->opts.max_bytes / NEW_PAGE_SIZE;

		/* 0 would mean "no limit" to SQLite */
		snprintf(sql, sizeof(sql), "PRAGMA max_page_count=%llu;",
			 (unsigned long long)(pages ? pages : 1));
		rc = store_sql_exec(db, sql);
		if (rc)
			goto out;
	}
	if (!writer)
		rc = store_sql_exec(db, "PRAGMA query_only=1;");
out:
	if (rc) {
		sqlite3_close(db);
		return rc;
	}
	*out = db;
	return SSMD_OK;
}

int store_write_begin(store *s)
{
	int rc;

	pthread_mutex_lock(&s->wlock);
	rc = store_sql_exec(s->wdb, "BEGIN IMMEDIATE");
	if (rc)
		pthread_mutex_unlock(&s->wlock);
	return rc;
}

int store_write_end(store *s, int rc)
{
	if (!rc)
		rc = store_sql_exec(s->wdb, "COMMIT");
	if (rc && !sqlite3_get_autocommit(s->wdb)) {
		/* Keep the first error's detail; the rollback's own result
		 * changes nothing for the caller. */
		sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
	}
	pthread_mutex_unlock(&s->wlock);
	if (!rc) {
		pthread_mutex_lock(&s->clock);
		s->ckpt_pending = 1;
		pthread_cond_signal(&s->ccond);
		pthread_mutex_unlock(&s->clock);
	}
	return rc;
}

/* The checkpointer thread: after each commit, a PASSIVE checkpoint, which
 * never blocks the writer or readers. A checkpoint that cannot finish
 * (readers still on old frames, or an error) simply runs again after the
 * next commit; committed data is safe in the WAL meanwhile. */
static void *checkpointer(void *arg)
{
	store *s = arg;

	pthread_mutex_lock(&s->clock);
	for (;;) {
		while (!s->ckpt_pending && !s->stopping)
			pthread_cond_wait(&s->ccond, &s->clock);
		if (s->stopping)
			break;
		s->ckpt_pending = 0;
		pthread_mutex_unlock(&s->clock);
		sqlite3_wal_checkpoint_v2(s->cdb, NULL,
					  SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
		pthread_mutex_lock(&s->clock);
	}
	pthread_mutex_unlock(&s->clock);
	return NULL;
}

int store_read_begin(store *s, sqlite3 **out)
{
	sqlite3 *db = NULL;
	int rc;

	pthread_mutex_lock(&s->rlock);
	while (!s->n_free && s->n_open >= s->opts.max_readers)
		pthread_cond_wait(&s->rcond, &s->rlock);
	if (s->n_free) {
		db = s->rfree[--s->n_free];
		pthread_mutex_unlock(&s->rlock);
	} else {
		s->n_open++;
		pthread_mutex_unlock(&s->rlock);
		rc = conn_open(s, 0, &db);
		if (rc) {
			pthread_mutex_lock(&s->rlock);
			s->n_open--;
			pthread_cond_signal(&s->rcond);
			pthread_mutex_unlock(&s->rlock);
			return rc;
		}
	}
	rc = store_sql_exec(db, "BEGIN");
	if (rc) {
		store_read_end(s, db);
		return rc;
	}
	*out = db;
	return SSMD_OK;
}

void store_read_end(store *s, sqlite3 *db)
{
	if (!sqlite3_get_autocommit(db))
		sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	pthread_mutex_lock(&s->rlock);
	s->rfree[s->n_free++] = db;
	pthread_cond_signal(&s->rcond);
	pthread_mutex_unlock(&s->rlock);
}

/* ---------------------------------------------------------------- open -- */

/* Creates the schema in a new file, or checks an existing one. */
static int schema_check(store *s)
{
	sqlite3_stmt *st = NULL;
	int64_t app_id = 0, version = 0, n_objects = 0;
	int rc;

	rc = store_write_begin(s);
	if (rc)
		return rc;
	rc = store_sql_prepare(s->wdb,
		     "SELECT (SELECT application_id FROM pragma_application_id),"
		     " (SELECT user_version FROM pragma_user_version),"
		     " (SELECT count(*) FROM sqlite_schema)", &st);
	if (rc)
		goto out;
	if (sqlite3_step(st) != SQLITE_ROW) {
		rc = store_sql_err(s->wdb, sqlite3_errcode(s->wdb), s->path);
		goto out;
	}
	app_id = sqlite3_column_int64(st, 0);
	version = sqlite3_column_int64(st, 1);
	n_objects = sqlite3_column_int64(st, 2);
	if (n_objects == 0 && app_id == 0 && version == 0) {
		char sql[96];

		rc = store_sql_exec(s->wdb, schema_sql);
		if (rc)
			goto out;
		snprintf(sql, sizeof(sql),
			 "PRAGMA application_id=%d; PRAGMA user_version=%d;",
			 STORE_APP_ID, STORE_SCHEMA_VERSION);
		rc = store_sql_exec(s->wdb, sql);
	} else if (app_id != STORE_APP_ID) {
		rc = ssmd_err_set(SSMD_EFORMAT,
				  "%s: an SQLite database but not an ssmd state "
				  "library", s->path);
	} else if (version > STORE_SCHEMA_VERSION) {
		rc = ssmd_err_set(SSMD_EUNSUPPORTED,
				  "%s: schema version %lld is newer than this "
				  "build's %d", s->path, (long long)version,
				  STORE_SCHEMA_VERSION);
	} else if (version < 1) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: no schema version",
				  s->path);
	}
	/* Added within schema version 1: older builds never read it, and a
	 * library made by one gets it on its first open here. */
	if (!rc)
		rc = store_sql_exec(s->wdb, store_sessions_sql);
out:
	sqlite3_finalize(st);
	return store_write_end(s, rc);
}

int store_open(const char *path, const store_opts *opts, store **out)
{
	store *s;
	char sql[64];
	int rc;

	if (!path || !*path || !out)
		return ssmd_err_set(SSMD_EINVAL, "store_open: no path");
	s = calloc(1, sizeof(*s));
	if (!s)
		return SSMD_ENOMEM;
	if (opts)
		s->opts = *opts;
	if (s->opts.busy_timeout_ms <= 0)
		s->opts.busy_timeout_ms = 10000;
	if (s->opts.max_readers <= 0)
		s->opts.max_readers = 4;
	pthread_mutex_init(&s->wlock, NULL);
	pthread_mutex_init(&s->rlock, NULL);
	pthread_cond_init(&s->rcond, NULL);
	pthread_mutex_init(&s->clock, NULL);
	pthread_cond_init(&s->ccond, NULL);
	s->path = strdup(path);
	s->rfree = calloc((size_t)s->opts.max_readers, sizeof(*s->rfree));
	if (!s->path || !s->rfree) {
		rc = SSMD_ENOMEM;
		goto fail;
	}
	rc = conn_open(s, 1, &s->wdb);
	if (rc)
		goto fail;
	/* Only takes effect on a file without tables yet. */
	snprintf(sql, sizeof(sql), "PRAGMA page_size=%d;", NEW_PAGE_SIZE);
	rc = store_sql_exec(s->wdb, sql);
	if (rc)
		goto fail;
	/* WAL is a property of the file: readers run alongside the writer. */
	rc = store_sql_exec(s->wdb, "PRAGMA journal_mode=WAL;");
	if (rc)
		goto fail;
	/* After a checkpoint, cut the WAL back so a burst of 26 MB puts does
	 * not leave a file of that size behind. */
	rc = store_sql_exec(s->wdb, "PRAGMA journal_size_limit=67108864;");
	if (rc)
		goto fail;
	rc = schema_check(s);
	if (rc)
		goto fail;
	/* Checkpoints run on their own thread (see checkpointer()). */
	rc = store_sql_exec(s->wdb, "PRAGMA wal_autocheckpoint=0;");
	if (!rc)
		rc = conn_open(s, 0, &s->cdb);
	if (rc)
		goto fail;
	if (pthread_create(&s->cthread, NULL, checkpointer, s)) {
		rc = ssmd_err_set(SSMD_ENOMEM, "cannot start the checkpointer");
		goto fail;
	}
	s->cthread_started = 1;
	*out = s;
	return SSMD_OK;
fail:
	store_close(s);
	return rc;
}

void store_close(store *s)
{
	if (!s)
		return;
	if (s->cthread_started) {
		pthread_mutex_lock(&s->clock);
		s->stopping = 1;
		pthread_cond_signal(&s->ccond);
		pthread_mutex_unlock(&s->clock);
		pthread_join(s->cthread, NULL);
	}
	sqlite3_close(s->cdb);
	for (int i = 0; i < s->n_free; i++)
		sqlite3_close(s->rfree[i]);
	/* The last connection to close checkpoints and removes the WAL. */
	sqlite3_close(s->wdb);
	pthread_cond_destroy(&s->ccond);
	pthread_mutex_destroy(&s->clock);
	pthread_cond_destroy(&s->rcond);
	pthread_mutex_destroy(&s->rlock);
	pthread_mutex_destroy(&s->wlock);
	free(s->rfree);
	free(s->path);
	free(s);
}

/* ------------------------------------------------------------------ IDs -- */

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static int crockford_value(char c)
{
	if (c >= 'a' && c <= 'z')
		c = (char)(c - 'a' + 'A');
	const char *p = c ? strchr(crockford, c) : NULL;

	return p ? (int)(p - crockford) : -1;
}

int store_id_valid(const char *s)
{
	if (!s || strlen(s) != STORE_ID_LEN)
		return 0;
	/* 26 characters carry 130 bits; the top two must be zero. */
	if (crockford_value(s[0]) < 0 || crockford_value(s[0]) > 7)
		return 0;
	for (int i = 1; i < STORE_ID_LEN; i++)
		if (crockford_value(s[i]) < 0)
			return 0;
	return 1;
}

void store_id_canon(const char *in, char out[STORE_ID_SIZE])
{
	for (int i = 0; i < STORE_ID_LEN; i++)
		out[i] = crockford[crockford_value(in[i])];
	out[STORE_ID_LEN] = '\0';
}

int64_t store_id_next(const uint8_t last[16], int64_t last_ms, int64_t now_ms,
		      const uint8_t rnd[15], uint8_t out[16])
{
	if (now_ms <= last_ms) {
		/* last's random part (an 80-bit big-endian count) + 1 + the
		 * 40-bit step rnd[10..15) */
		unsigned carry = 1;

		memcpy(out, last, 16);
		for (int k = 15; k >= 6; k--) {
			const unsigned v = out[k] + carry + (k >= 11 ? rnd[k - 1] : 0);

			out[k] = (uint8_t)v;
			carry = v >> 8;
		}
		if (!carry)
			return last_ms;
		now_ms = last_ms + 1; /* past 2^80 in one millisecond */
	}
	/* bytes 0-5: big-endian milliseconds, so IDs sort by time */
	for (int k = 0; k < 6; k++)
		out[k] = (uint8_t)((uint64_t)now_ms >> (40 - 8 * k));
	memcpy(out + 6, rnd, 10);
	return now_ms;
}

/* The last ID this process made (store_id_next's last), under id_lock. */
static pthread_mutex_t id_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t id_last[16];
static int64_t id_last_ms = -1;

int store_id_new(char id[STORE_ID_SIZE], int64_t *ms_out)
{
	uint8_t b[16], rnd[15];
	size_t got = 0;
	int64_t ms;

	while (got < sizeof(rnd)) {
		ssize_t k = getrandom(rnd + got, sizeof(rnd) - got, 0);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return ssmd_err_set(SSMD_EIO, "getrandom: %s",
					    strerror(errno));
		got += (size_t)k;
	}
	pthread_mutex_lock(&id_lock);
	ms = store_id_next(id_last, id_last_ms, store_now_ms(), rnd, b);
	memcpy(id_last, b, sizeof(b));
	id_last_ms = ms;
	pthread_mutex_unlock(&id_lock);
	/* 130 bits = two zero bits then the 128 bits, 5 bits per character */
	for (int c = 0; c < STORE_ID_LEN; c++) {
		int v = 0;

		for (int k = 0; k < 5; k++) {
			int bit = 5 * c + k - 2;

			v <<= 1;
			if (bit >= 0)
				v |= (b[bit / 8] >> (7 - bit % 8)) & 1;
		}
		id[c] = crockford[v];
	}
	id[STORE_ID_LEN] = '\0';
	*ms_out = ms;
	return SSMD_OK;
}

int store_tag_name_valid(const char *name)
{
	static const char extra[] = "-_.:@+=/";
	size_t len, seg = 0;

	if (!name)
		return 0;
	len = strlen(name);
	if (len == 0 || len > STORE_TAG_MAX || store_id_valid(name))
		return 0;
	if (name[0] == '/' || name[len - 1] == '/')
		return 0;
	for (size_t i = 0; i <= len; i++) {
		char c = name[i];

		if (c == '/' || c == '\0') {
			/* segment name[seg..i): not empty, ".", or ".." */
			size_t n = i - seg;

			if (n == 0 || (n == 1 && name[seg] == '.') ||
			    (n == 2 && name[seg] == '.' && name[seg + 1] == '.'))
				return 0;
			seg = i + 1;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || strchr(extra, c)))
			return 0;
	}
	return 1;
}

const char *store_kind_name(int kind)
{
	switch (kind) {
	case STORE_KIND_CHECKPOINT:
		return "checkpoint";
	case STORE_KIND_SNAPSHOT:
		return "snapshot";
	case STORE_KIND_MERGE:
		return "merge";
	case STORE_KIND_IMPORT:
		return "import";
	default:
		return "unknown";
	}
}

/* ---------------------------------------------------------- transcripts -- */

int store_tokens_pack(const int32_t *tokens, size_t n, uint8_t **out,
		      size_t *len)
{
	uint8_t *buf, *p;

	buf = malloc(n ? n * 5 : 1); /* LEB128: at most 5 bytes per int32 */
	if (!buf)
		return SSMD_ENOMEM;
	p = buf;
	for (size_t i = 0; i < n; i++) {
		uint32_t v = (uint32_t)tokens[i];

		if (tokens[i] < 0) {
			free(buf);
			return ssmd_err_set(SSMD_EINVAL,
					    "transcript token %zu is negative", i);
		}
		while (v >= 0x80) {
			*p++ = (uint8_t)(v | 0x80);
			v >>= 7;
		}
		*p++ = (uint8_t)v;
	}
	*out = buf;
	*len = (size_t)(p - buf);
	return SSMD_OK;
}

int store_tokens_unpack(const uint8_t *buf, size_t len, size_t n,
			int32_t *dst)
{
	size_t pos = 0;

	for (size_t i = 0; i < n; i++) {
		uint32_t v = 0;
		int shift = 0;

		for (;;) {
			if (pos >= len || shift > 28)
				return ssmd_err_set(SSMD_ECORRUPT,
						    "transcript: malformed");
			uint8_t b = buf[pos++];

			v |= (uint32_t)(b & 0x7f) << shift;
			shift += 7;
			if (!(b & 0x80))
				break;
		}
		if (v > INT32_MAX)
			return ssmd_err_set(SSMD_ECORRUPT,
					    "transcript: token out of range");
		dst[i] = (int32_t)v;
	}
	if (pos != len)
		return ssmd_err_set(SSMD_ECORRUPT,
				    "transcript: %zu trailing bytes", len - pos);
	return SSMD_OK;
}

/* ------------------------------------------------------------ state rows -- */

int store_label_check(const char *label)
{
	size_t len = label ? strlen(label) : 0;

	if (len > STORE_LABEL_MAX)
		return ssmd_err_set(SSMD_EINVAL, "label longer than %d bytes",
				    STORE_LABEL_MAX);
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)label[i] < 0x20 || label[i] == 0x7f)
			return ssmd_err_set(SSMD_EINVAL,
					    "label has a control character");
	return SSMD_OK;
}

int store_metadata_check(const char *json)
{
	cJSON *doc;

	if (!json)
		return SSMD_OK;
	if (strlen(json) > STORE_METADATA_MAX)
		return ssmd_err_set(SSMD_EINVAL,
				    "metadata longer than %d bytes",
				    STORE_METADATA_MAX);
	doc = cJSON_Parse(json);
	if (!doc)
		return ssmd_err_set(SSMD_EINVAL, "metadata is not valid JSON");
	cJSON_Delete(doc);
	return SSMD_OK;
}

void store_copy_text(char *dst, size_t cap, const unsigned char *src)
{
	snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

int store_grow(void *arrp, size_t *cap, size_t elem, size_t first_cap, const char *what)
{
	void *arr, *na;
	size_t nc = *cap ? *cap * 2 : first_cap;

	memcpy(&arr, arrp, sizeof(arr));
	if (!(na = realloc(arr, nc * elem)))
		return ssmd_err_set(SSMD_ENOMEM, "%s: no memory for %zu rows", what, nc);
	memcpy(arrp, &na, sizeof(na));
	*cap = nc;
	return SSMD_OK;
}

int store_rows_collect(sqlite3 *db, sqlite3_stmt *st, size_t elem, size_t first_cap,
		       size_t max, const char *what, store_row_fn fill, void *ctx,
		       void *outp, size_t *n, int *more)
{
	char *arr = NULL;
	size_t cnt = 0, cap = 0;
	int rc;

	if (more)
		*more = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (cnt == max) {
			if (more)
				*more = 1;
			rc = SQLITE_DONE;
			break;
		}
		if (cnt == cap && (rc = store_grow(&arr, &cap, elem, first_cap, what)))
			goto out;
		memset(arr + cnt * elem, 0, elem);
		if ((rc = fill(db, st, arr + cnt++ * elem, ctx)))
			goto out;
	}
	rc = rc == SQLITE_DONE ? SSMD_OK : store_sql_err(db, rc, what);
out:
	memcpy(outp, &arr, sizeof(arr));
	*n = cnt;
	return rc;
}

/* Fills info from a row of STORE_STATE_COLS (not parents, tags or metadata). */
static void info_from_row(sqlite3_stmt *st, store_state_info *info,
			  int64_t *rowkey)
{
	const void *fp = sqlite3_column_blob(st, 3);
	int fp_len = sqlite3_column_bytes(st, 3);

	memset(info, 0, sizeof(*info));
	*rowkey = sqlite3_column_int64(st, 0);
	store_copy_text(info->id, sizeof(info->id), sqlite3_column_text(st, 1));
	info->kind = (store_kind)sqlite3_column_int(st, 2);
	if (fp && fp_len == STORE_FINGERPRINT_LEN)
		memcpy(info->fingerprint, fp, STORE_FINGERPRINT_LEN);
	info->n_tokens = (uint64_t)sqlite3_column_int64(st, 4);
	info->created_ms = sqlite3_column_int64(st, 5);
	store_copy_text(info->label, sizeof(info->label), sqlite3_column_text(st, 6));
	store_copy_text(info->origin, sizeof(info->origin),
		  sqlite3_column_text(st, 8));
	info->codec = sqlite3_column_int(st, 9);
	info->raw_size = (uint64_t)sqlite3_column_int64(st, 10);
	info->stored_size = (uint64_t)sqlite3_column_int64(st, 11);
	info->raw_hash = (uint64_t)sqlite3_column_int64(st, 12);
	info->n_transcript = (uint64_t)sqlite3_column_int64(st, 13);
}

/* Completes an info from a row: metadata, parents and tag count. */
static int info_finish(sqlite3 *db, sqlite3_stmt *row, store_state_info *info)
{
	sqlite3_stmt *st = NULL;
	const unsigned char *meta = sqlite3_column_text(row, 7);
	int rc;

	if (meta) {
		info->metadata = strdup((const char *)meta);
		if (!info->metadata)
			return SSMD_ENOMEM;
	}
	rc = store_sql_prepare(db, "SELECT parent FROM parents WHERE child=?1 ORDER BY ord",
		     &st);
	if (rc)
		goto out;
	sqlite3_bind_text(st, 1, info->id, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW &&
	       info->n_parents < STORE_PARENTS_MAX)
		store_copy_text(info->parents[info->n_parents++], STORE_ID_SIZE,
			  sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	st = NULL;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		rc = store_sql_err(db, rc, "parents");
		goto out;
	}
	rc = store_sql_prepare(db, "SELECT count(*) FROM tags WHERE id=?1", &st);
	if (rc)
		goto out;
	sqlite3_bind_text(st, 1, info->id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		rc = store_sql_err(db, rc, "tags");
		goto out;
	}
	info->n_tags = (size_t)sqlite3_column_int64(st, 0);
	rc = SSMD_OK;
out:
	sqlite3_finalize(st);
	if (rc)
		store_state_info_fini(info);
	return rc;
}

int store_info_db(sqlite3 *db, const char *id, store_state_info *info,
		  int64_t *rowkey)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = store_sql_prepare(db, "SELECT " STORE_STATE_COLS " FROM states WHERE id=?1", &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		info_from_row(st, info, rowkey);
		rc = info_finish(db, st, info);
	} else if (rc == SQLITE_DONE) {
		rc = ssmd_err_set(SSMD_ENOENT, "no state %s", id);
	} else {
		rc = store_sql_err(db, rc, "state");
	}
	sqlite3_finalize(st);
	return rc;
}

int store_resolve_db(sqlite3 *db, const char *id_or_tag,
		     char id[STORE_ID_SIZE], int64_t *rowkey)
{
	sqlite3_stmt *st = NULL;
	char canon[STORE_ID_SIZE];
	int rc, by_id;

	if (!id_or_tag)
		return ssmd_err_set(SSMD_EINVAL, "no state ID or tag");
	by_id = store_id_valid(id_or_tag);
	if (!by_id && !store_tag_name_valid(id_or_tag))
		return ssmd_err_set(SSMD_EINVAL,
				    "'%.64s' is neither a state ID nor a valid "
				    "tag name", id_or_tag);
	if (by_id) {
		store_id_canon(id_or_tag, canon);
		rc = store_sql_prepare(db, "SELECT id, n FROM states WHERE id=?1", &st);
	} else {
		rc = store_sql_prepare(db, "SELECT s.id, s.n FROM tags t JOIN states s"
			     " ON s.id=t.id WHERE t.name=?1", &st);
	}
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, by_id ? canon : id_or_tag, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		store_copy_text(id, STORE_ID_SIZE, sqlite3_column_text(st, 0));
		if (rowkey)
			*rowkey = sqlite3_column_int64(st, 1);
		rc = SSMD_OK;
	} else if (rc == SQLITE_DONE) {
		rc = ssmd_err_set(SSMD_ENOENT, "no %s '%s'",
				  by_id ? "state" : "tag", id_or_tag);
	} else {
		rc = store_sql_err(db, rc, "resolve");
	}
	sqlite3_finalize(st);
	return rc;
}

/* Reads the stored payload of row rowkey (stored_size bytes expected) into
 * *out (free()). */
static int payload_read(sqlite3 *db, int64_t rowkey, size_t stored_size,
			void **out)
{
	sqlite3_blob *blob = NULL;
	void *buf = NULL;
	int rc;

	/* Incremental blob I/O reads the overflow pages straight into buf,
	 * without SQLite assembling its own copy first. */
	rc = sqlite3_blob_open(db, "main", "payloads", "data", rowkey, 0, &blob);
	if (rc != SQLITE_OK) {
		rc = rc == SQLITE_ERROR ?
			ssmd_err_set(SSMD_ECORRUPT, "state payload missing") :
			store_sql_err(db, rc, "payload");
		goto out;
	}
	if ((size_t)sqlite3_blob_bytes(blob) != stored_size) {
		rc = ssmd_err_set(SSMD_ECORRUPT,
				  "payload is %d bytes, recorded %zu",
				  sqlite3_blob_bytes(blob), stored_size);
		goto out;
	}
	buf = malloc(stored_size ? stored_size : 1);
	if (!buf) {
		rc = SSMD_ENOMEM;
		goto out;
	}
	rc = sqlite3_blob_read(blob, buf, (int)stored_size, 0);
	if (rc != SQLITE_OK) {
		rc = store_sql_err(db, rc, "payload read");
		goto out;
	}
	*out = buf;
	buf = NULL;
	rc = SSMD_OK;
out:
	free(buf);
	sqlite3_blob_close(blob);
	return rc;
}

int store_state_read_db(sqlite3 *db, const char *id_or_tag,
			char id[STORE_ID_SIZE], store_state_info *info,
			void **stored)
{
	int64_t key;
	int rc;

	rc = store_resolve_db(db, id_or_tag, id, NULL);
	if (!rc)
		rc = store_info_db(db, id, info, &key);
	if (rc || !stored)
		return rc;
	/* A recorded size past the codec's worst case is corruption; refuse
	 * it before allocating for it. */
	if (info->stored_size > CODEC_RAW_MAX + (CODEC_RAW_MAX >> 4))
		rc = ssmd_err_set(SSMD_ECORRUPT, "state %s: stored size %llu "
				  "out of range", id,
				  (unsigned long long)info->stored_size);
	else
		rc = payload_read(db, key, info->stored_size, stored);
	if (rc)
		store_state_info_fini(info);
	return rc;
}

/* Runs sql, an INSERT of ?1 = key and ?2 = the len bytes at blob, once. */
static int blob_insert(sqlite3 *db, const char *sql, int64_t key,
		       const void *blob, size_t len, const char *what)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = store_sql_prepare(db, sql, &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, key);
	sqlite3_bind_blob64(st, 2, blob, len, SQLITE_STATIC);
	rc = store_sql_step(db, st, what);
	sqlite3_finalize(st);
	return rc;
}

int store_row_insert(store *s, const store_row *row)
{
	sqlite3 *db = s->wdb;
	sqlite3_stmt *st = NULL;
	int64_t key;
	int rc;

	rc = store_sql_prepare(db, "INSERT INTO states(id, kind, fingerprint, n_tokens,"
		     " created_ms, label, metadata, origin, codec, raw_size,"
		     " stored_size, raw_hash, n_transcript)"
		     " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)", &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, row->id, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, row->kind);
	sqlite3_bind_blob(st, 3, row->fingerprint, STORE_FINGERPRINT_LEN,
			  SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)row->n_tokens);
	sqlite3_bind_int64(st, 5, row->created_ms);
	sqlite3_bind_text(st, 6, row->label ? row->label : "", -1,
			  SQLITE_STATIC);
	if (row->metadata)
		sqlite3_bind_text(st, 7, row->metadata, -1, SQLITE_STATIC);
	if (row->origin)
		sqlite3_bind_text(st, 8, row->origin, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 9, row->codec);
	sqlite3_bind_int64(st, 10, (sqlite3_int64)row->raw_size);
	sqlite3_bind_int64(st, 11, (sqlite3_int64)row->payload_len);
	sqlite3_bind_int64(st, 12, (sqlite3_int64)row->raw_hash);
	sqlite3_bind_int64(st, 13, (sqlite3_int64)row->n_transcript);
	rc = store_sql_step(db, st, "insert state");
	sqlite3_finalize(st);
	st = NULL;
	if (rc)
		return rc;
	key = sqlite3_last_insert_rowid(db);

	rc = blob_insert(db, "INSERT INTO payloads(n, data) VALUES(?1, ?2)", key,
			 row->payload, row->payload_len, "insert payload");
	if (!rc && row->n_transcript)
		rc = blob_insert(db, "INSERT INTO transcripts(n, tokens) VALUES(?1, ?2)",
				 key, row->transcript, row->transcript_len,
				 "insert transcript");
	if (rc)
		return rc;

	rc = store_sql_prepare(db, "INSERT INTO parents(child, ord, parent)"
		     " VALUES(?1, ?2, ?3)", &st);
	if (rc)
		return rc;
	for (size_t i = 0; i < row->n_parents && !rc; i++) {
		sqlite3_bind_text(st, 1, row->id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)i);
		sqlite3_bind_text(st, 3, row->parents[i], -1, SQLITE_STATIC);
		rc = store_sql_step(db, st, "insert parent");
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	return rc;
}

/* ------------------------------------------------------------------ put -- */

/* Checks the parents inside the write transaction: each exists, has the
 * state's model, and the first one's n_tokens plus the transcript match. */
static int parents_check(store *s, const store_put *p,
			 char (*canon)[STORE_ID_SIZE], const uint8_t *fp,
			 uint64_t n_tokens)
{
	sqlite3_stmt *st = NULL;
	uint64_t base = 0;
	int rc;

	rc = store_sql_prepare(s->wdb, "SELECT fingerprint, n_tokens FROM states"
		     " WHERE id=?1", &st);
	if (rc)
		return rc;
	for (size_t i = 0; i < p->n_parents; i++) {
		sqlite3_bind_text(st, 1, canon[i], -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		if (rc == SQLITE_DONE) {
			rc = ssmd_err_set(SSMD_ENOENT, "no parent state %s",
					  canon[i]);
			goto out;
		}
		if (rc != SQLITE_ROW) {
			rc = store_sql_err(s->wdb, rc, "parent");
			goto out;
		}
		if (sqlite3_column_bytes(st, 0) != STORE_FINGERPRINT_LEN ||
		    memcmp(sqlite3_column_blob(st, 0), fp,
			   STORE_FINGERPRINT_LEN) != 0) {
			rc = ssmd_err_set(SSMD_EMODEL,
					  "parent %s belongs to another model",
					  canon[i]);
			goto out;
		}
		if (i == 0)
			base = (uint64_t)sqlite3_column_int64(st, 1);
		sqlite3_reset(st);
	}
	rc = SSMD_OK;
	if (p->n_tokens && (p->kind == STORE_KIND_CHECKPOINT ||
			    p->kind == STORE_KIND_SNAPSHOT) &&
	    n_tokens != base + p->n_tokens)
		rc = ssmd_err_set(SSMD_EINVAL,
				  "state has %llu tokens but its parent %llu "
				  "plus a transcript of %zu",
				  (unsigned long long)n_tokens,
				  (unsigned long long)base, p->n_tokens);
out:
	sqlite3_finalize(st);
	return rc;
}

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

int store_state_put(store *s, const store_put *p, char id[STORE_ID_SIZE])
{
	char (*canon)[STORE_ID_SIZE] = NULL;
	const char **parent_ptrs = NULL;
	uint8_t *tbuf = NULL;
	void *payload = NULL;
	size_t tlen = 0, plen = 0;
	ssm_state_layout lay;
	char new_id[STORE_ID_SIZE];
	const uint8_t *hdr = p ? p->raw : NULL;
	uint64_t hash;
	int64_t ms;
	int codec, rc;

	if (!s || !p || !id)
		return ssmd_err_set(SSMD_EINVAL, "store_state_put: NULL argument");
	if (p->kind < STORE_KIND_CHECKPOINT || p->kind > STORE_KIND_IMPORT)
		return ssmd_err_set(SSMD_EINVAL, "unknown state kind %d",
				    p->kind);
	if (p->n_parents > STORE_PARENTS_MAX || (p->n_parents && !p->parents))
		return ssmd_err_set(SSMD_EINVAL, "more than %d parents",
				    STORE_PARENTS_MAX);
	if (p->kind == STORE_KIND_MERGE && p->n_parents < 2)
		return ssmd_err_set(SSMD_EINVAL, "a merge needs >= 2 parents");
	if (p->session && store_session_check(p->session, NULL, p->session_label))
		return SSMD_EINVAL;
	if (p->n_tokens > STORE_TRANSCRIPT_MAX || (p->n_tokens && !p->tokens))
		return ssmd_err_set(SSMD_EINVAL, "transcript of %zu tokens",
				    p->n_tokens);
	rc = store_label_check(p->label);
	if (!rc)
		rc = store_metadata_check(p->metadata);
	if (!rc)
		rc = ssm_state_layout_of(p->raw, p->raw_len, &lay);
	if (rc)
		return rc;

	canon = calloc(p->n_parents + 1, sizeof(*canon));
	parent_ptrs = calloc(p->n_parents + 1, sizeof(*parent_ptrs));
	if (!canon || !parent_ptrs) {
		rc = SSMD_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < p->n_parents; i++) {
		if (!store_id_valid(p->parents[i])) {
			rc = ssmd_err_set(SSMD_EINVAL,
					  "parent %zu is not a state ID", i);
			goto out;
		}
		store_id_canon(p->parents[i], canon[i]);
		parent_ptrs[i] = canon[i];
		for (size_t j = 0; j < i; j++)
			if (!strcmp(canon[i], canon[j])) {
				rc = ssmd_err_set(SSMD_EINVAL,
						  "parent %s given twice",
						  canon[i]);
				goto out;
			}
	}

	/* The expensive part runs before the writer lock is taken. */
	rc = store_codec_encode(p->raw, p->raw_len, p->lossy, &payload, &plen,
				&codec, &hash);
	if (rc)
		goto out;
	rc = store_tokens_pack(p->tokens, p->n_tokens, &tbuf, &tlen);
	if (rc)
		goto out;
	rc = store_id_new(new_id, &ms);
	if (rc)
		goto out;

	rc = store_write_begin(s);
	if (rc)
		goto out;
	rc = parents_check(s, p, canon, hdr + 40, le64(hdr + 32));
	if (!rc) {
		store_row row = {
			.id = new_id,
			.created_ms = ms,
			.kind = p->kind,
			.fingerprint = hdr + 40,
			.n_tokens = le64(hdr + 32),
			.label = p->label,
			.metadata = p->metadata,
			.codec = codec,
			.raw_size = p->raw_len,
			.raw_hash = hash,
			.payload = payload,
			.payload_len = plen,
			.transcript = tbuf,
			.transcript_len = tlen,
			.n_transcript = p->n_tokens,
			.parents = parent_ptrs,
			.n_parents = p->n_parents,
		};

		rc = store_row_insert(s, &row);
	}
	if (!rc && p->session)
		rc = store_session_row_put(s->wdb, p->session, new_id,
					   p->session_seed, p->session_label);
	rc = store_write_end(s, rc);
	if (!rc)
		memcpy(id, new_id, STORE_ID_SIZE);
out:
	free(tbuf);
	free(payload);
	free(parent_ptrs);
	free(canon);
	return rc;
}

/* ------------------------------------------------------------------ get -- */

int store_state_read(store *s, const char *id_or_tag, char id[STORE_ID_SIZE],
		     store_state_info *info, void **stored, int32_t **tokens, size_t *n)
{
	sqlite3 *db;
	int rc = store_read_begin(s, &db);

	if (rc)
		return rc;
	rc = store_state_read_db(db, id_or_tag, id, info, stored);
	if (!rc && tokens) {
		rc = store_transcript_db(db, id, tokens, n);
		if (rc) {
			store_state_info_fini(info);
			if (stored) {
				free(*stored);
				*stored = NULL;
			}
		}
	}
	store_read_end(s, db);
	return rc;
}

int store_state_decode(const char *id, const store_state_info *info, const void *stored,
		       void **raw)
{
	int rc = store_codec_decode(stored, info->stored_size, info->codec, info->raw_size,
				    info->raw_hash, raw);

	if (rc == SSMD_ECORRUPT)
		ssmd_err_set(rc, "state %s: %s", id, ssmd_errmsg());
	return rc;
}

int store_state_get(store *s, const char *id_or_tag, void **raw, size_t *len,
		    store_state_info *info)
{
	store_state_info in;
	char id[STORE_ID_SIZE];
	void *stored = NULL, *dec = NULL;
	int rc;

	if (!s || !raw || !len)
		return ssmd_err_set(SSMD_EINVAL, "store_state_get: NULL argument");
	memset(&in, 0, sizeof(in));
	rc = store_state_read(s, id_or_tag, id, &in, &stored, NULL, NULL);
	/* Decompress and verify outside the read transaction. */
	if (!rc)
		rc = store_state_decode(id, &in, stored, &dec);
	free(stored);
	if (rc) {
		store_state_info_fini(&in);
		return rc;
	}
	*raw = dec;
	*len = in.raw_size;
	if (info)
		*info = in;
	else
		store_state_info_fini(&in);
	return SSMD_OK;
}

int store_state_info_get(store *s, const char *id_or_tag,
			 store_state_info *info)
{
	char id[STORE_ID_SIZE];

	if (!s || !info)
		return ssmd_err_set(SSMD_EINVAL, "store_state_info_get: NULL");
	return store_state_read(s, id_or_tag, id, info, NULL, NULL, NULL);
}

void store_state_info_fini(store_state_info *info)
{
	if (!info)
		return;
	free(info->metadata);
	memset(info, 0, sizeof(*info));
}

void store_info_array_free(store_state_info *arr, size_t n)
{
	if (!arr)
		return;
	for (size_t i = 0; i < n; i++)
		free(arr[i].metadata);
	free(arr);
}

int store_resolve(store *s, const char *id_or_tag, char id[STORE_ID_SIZE])
{
	sqlite3 *db;
	int rc;

	if (!s || !id)
		return ssmd_err_set(SSMD_EINVAL, "store_resolve: NULL argument");
	rc = store_read_begin(s, &db);
	if (rc)
		return rc;
	rc = store_resolve_db(db, id_or_tag, id, NULL);
	store_read_end(s, db);
	return rc;
}

/* Upper bound of a prefix range: names starting with prefix sort below
 * prefix + "\x7f", since every tag character is below 0x7f. */
char *store_prefix_end(const char *prefix)
{
	size_t n = strlen(prefix);
	char *e = malloc(n + 2);

	if (e) {
		memcpy(e, prefix, n);
		e[n] = 0x7f;
		e[n + 1] = '\0';
	}
	return e;
}

/* store_rows_collect()'s row of STORE_STATE_COLS, parents, tags and
 * metadata included. */
static int info_row(sqlite3 *db, sqlite3_stmt *st, void *elem, void *ctx)
{
	int64_t key;

	(void)ctx;
	info_from_row(st, elem, &key);
	return info_finish(db, st, elem);
}

/* Runs a query of STORE_STATE_COLS rows into a growing info array. */
int store_infos_collect(sqlite3 *db, sqlite3_stmt *st, size_t max,
			 store_state_info **out, size_t *n, int *more)
{
	store_state_info *arr;
	size_t cnt;
	int rc;

	rc = store_rows_collect(db, st, sizeof(*arr), 16, max, "state list", info_row,
				NULL, &arr, &cnt, more);
	if (rc) {
		store_info_array_free(arr, cnt);
		return rc;
	}
	*out = arr;
	*n = cnt;
	return SSMD_OK;
}
