/*
 * store_impl.h — private pieces of the state library shared by its source
 * files: the handle, connection handling, SQLite error conversion, IDs,
 * transcripts and the state rows. Not for use outside statestore/.
 */
#ifndef SSMD_STORE_IMPL_H
#define SSMD_STORE_IMPL_H

#include <pthread.h>
#include <sqlite3.h>

#include "store.h"

/* PRAGMA application_id of a state library: "SSMD". */
#define STORE_APP_ID 0x53534d44

struct store {
	char *path;
	store_opts opts;          /* with defaults filled in */
	sqlite3 *wdb;             /* the writer connection, behind wlock */
	pthread_mutex_t wlock;
	pthread_mutex_t rlock;    /* guards the reader pool below */
	pthread_cond_t rcond;     /* signalled when a reader is returned */
	sqlite3 **rfree;          /* (max_readers) idle read connections */
	int n_free, n_open;
	/* Checkpointer: copies committed WAL frames into the database file
	 * on its own connection and thread, so a put pays only for its own
	 * WAL write (SQLite's automatic checkpoint would run inside some
	 * unlucky put and copy up to 64 MB there). Woken after each commit. */
	sqlite3 *cdb;
	pthread_t cthread;
	int cthread_started;
	pthread_mutex_t clock;
	pthread_cond_t ccond;
	int ckpt_pending, stopping;
};

/* Converts a SQLite result code into an SSMD code, keeping SQLite's text in
 * ssmd_errmsg() prefixed with what was being done. */
int store_sql_err(sqlite3 *db, int rc, const char *what);

/* Runs one SQL statement (or several) without results. */
int store_sql_exec(sqlite3 *db, const char *sql);

/* sqlite3_prepare_v2() with the error converted. */
int store_sql_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st);

/* Steps a statement that returns no row; what names it in errors. */
int store_sql_step(sqlite3 *db, sqlite3_stmt *st, const char *what);

/* Runs a statement with one text parameter ?1 that returns no row. */
int store_sql_exec_text(sqlite3 *db, const char *sql, const char *a);

/* Unix time in milliseconds. */
int64_t store_now_ms(void);

/* Copies a SQLite text column (NULL = "") into dst of capacity cap. */
void store_copy_text(char *dst, size_t cap, const unsigned char *src);

/* Doubles the array *arrp (a pointer to a T * holding *cap elements of elem
 * bytes; first size first_cap) so a row can be appended. On SSMD_ENOMEM
 * (message names what) the array is left as it was. */
int store_grow(void *arrp, size_t *cap, size_t elem, size_t first_cap, const char *what);

/* Fills elem (zeroed) from the current row of st; ctx is the caller's. An
 * error code stops store_rows_collect(). */
typedef int (*store_row_fn)(sqlite3 *db, sqlite3_stmt *st, void *elem, void *ctx);

/* Steps st to its end, or until max rows are in (*more, when not NULL, then
 * tells whether another row followed), each row into a new elem-byte element
 * of a growing array (first first_cap, then doubling) through fill. *outp (a
 * pointer to a T *) and *n always hold what was collected, also on failure,
 * the element that failed included: the caller frees it either way. what
 * names the query in error messages. */
int store_rows_collect(sqlite3 *db, sqlite3_stmt *st, size_t elem, size_t first_cap,
		       size_t max, const char *what, store_row_fn fill, void *ctx,
		       void *outp, size_t *n, int *more);

/* Columns every state query selects, in the order store_infos_collect() reads. */
#define STORE_STATE_COLS                                                  \
	"n, id, kind, fingerprint, n_tokens, created_ms, label, metadata, " \
	"origin, codec, raw_size, stored_size, raw_hash, n_transcript"

/* Steps a query of STORE_STATE_COLS rows into a new info array of at most
 * max entries; *more tells whether another row followed. */
int store_infos_collect(sqlite3 *db, sqlite3_stmt *st, size_t max,
			store_state_info **out, size_t *n, int *more);

/* Upper bound of a tag-prefix range (prefix + "\x7f"; free()), or NULL. */
char *store_prefix_end(const char *prefix);


/* The session table (session.c), created when missing at every open. */
extern const char store_sessions_sql[];

/* Checks a session row's ID, state ID (may be NULL) and label (may be
 * NULL). SSMD_EINVAL. */
int store_session_check(const char *id, const char *state, const char *label);

/* Inserts or replaces an open session row, inside the caller's write
 * transaction on db. */
int store_session_row_put(sqlite3 *db, const char *id, const char *state,
			  uint64_t seed, const char *label);

/* Takes the writer lock and begins an IMMEDIATE transaction. */
int store_write_begin(store *s);

/* Commits when rc is SSMD_OK (returning the commit's error if it fails),
 * otherwise rolls back; always releases the writer lock. Returns the final
 * code. */
int store_write_end(store *s, int rc);

/* Borrows an idle read connection (opening one if the pool allows) inside a
 * deferred read transaction; store_read_end() ends it and returns it. */
int store_read_begin(store *s, sqlite3 **db);
void store_read_end(store *s, sqlite3 *db);

/* Writes a fresh ID (48-bit ms time + 80 random bits) into id and the time
 * it carries into *ms. Each ID sorts after every ID made before it in this
 * process (store_id_next). */
int store_id_new(char id[STORE_ID_SIZE], int64_t *ms);

/* The 16 bytes of the ID made at now_ms after last (made at last_ms; < 0
 * when there is none), from 15 random bytes rnd, into out; returns the
 * milliseconds out carries. Later than last_ms: now_ms and rnd[0..10) as the
 * random part. Otherwise (the same millisecond, or the clock stepped back):
 * last's milliseconds, and its random part plus 1 plus the 40-bit step
 * rnd[10..15), so the ID sorts after last and cannot be told from it; a sum
 * past 80 bits moves on to last_ms + 1 with rnd[0..10). */
int64_t store_id_next(const uint8_t last[16], int64_t last_ms, int64_t now_ms,
		      const uint8_t rnd[15], uint8_t out[16]);

/* Copies a valid ID into out in canonical (upper) case. */
void store_id_canon(const char *in, char out[STORE_ID_SIZE]);

/* Resolves an ID or tag on db into id (canonical) and the row's key. */
int store_resolve_db(sqlite3 *db, const char *id_or_tag,
		     char id[STORE_ID_SIZE], int64_t *rowkey);

/* Fills info from the states row of id (metadata included). */
int store_info_db(sqlite3 *db, const char *id, store_state_info *info,
		  int64_t *rowkey);

/* Resolves id_or_tag into id, fills info from its row (release with
 * store_state_info_fini()) and, when stored is not NULL, reads its stored
 * payload (info->stored_size bytes, free()) — all in the caller's read
 * transaction on db, so row and payload agree. SSMD_ECORRUPT for a stored
 * size out of range or a payload that does not match the row. On error
 * info holds nothing to release and *stored is untouched. */
int store_state_read_db(sqlite3 *db, const char *id_or_tag,
			char id[STORE_ID_SIZE], store_state_info *info,
			void **stored);

/* store_state_read_db() in a read transaction of its own and, when tokens
 * is not NULL, store_transcript_db() of the same id in the same one, so
 * row, payload and transcript agree. */
int store_state_read(store *s, const char *id_or_tag, char id[STORE_ID_SIZE],
		     store_state_info *info, void **stored, int32_t **tokens, size_t *n);

/* The raw state of a stored payload read with its row (info), decompressed
 * and checked against the row's size and hash into *raw (free()); an
 * SSMD_ECORRUPT message names the state id. */
int store_state_decode(const char *id, const store_state_info *info, const void *stored,
		       void **raw);

/* Tokens from the root to id, concatenated along the first-parent chain. */
int store_transcript_db(sqlite3 *db, const char *id, int32_t **ids,
			size_t *n);

/* Transcript varints: n tokens (each >= 0) into *out (free()), *len bytes. */
int store_tokens_pack(const int32_t *tokens, size_t n, uint8_t **out,
		      size_t *len);

/* Decodes len bytes of varints holding exactly n tokens, appending them at
 * dst. SSMD_ECORRUPT on malformed bytes. */
int store_tokens_unpack(const uint8_t *buf, size_t len, size_t n,
			int32_t *dst);

/* Inserts a fully prepared state in the current write transaction. */
typedef struct store_row {
	const char *id;
	int64_t created_ms;
	int kind;
	const uint8_t *fingerprint;
	uint64_t n_tokens;
	const char *label;
	const char *metadata;     /* or NULL */
	const char *origin;       /* or NULL */
	int codec;
	uint64_t raw_size;
	uint64_t raw_hash;
	const void *payload;
	size_t payload_len;
	const uint8_t *transcript; /* varints, or NULL */
	size_t transcript_len;
	uint64_t n_transcript;
	const char *const *parents; /* canonical IDs */
	size_t n_parents;
} store_row;

int store_row_insert(store *s, const store_row *row);

/* Validation helpers shared with export/import. */
int store_label_check(const char *label);
int store_metadata_check(const char *json);

#endif
