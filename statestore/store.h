/*
 * store.h — the ssmd state library: a durable, checksummed SQLite store of
 * canonical states with lineage, tags, transcripts and export/import.
 *
 * What it is: one SQLite database file (WAL journal) holding
 *   - states: immutable snapshots of a session's recurrent state, each an
 *     encoded canonical state (ssm_state_encode()) kept compressed by the
 *     codec (codec.h: byte shuffle + LZ4 frame, or raw, optionally rounded to
 *     bf16/f16), with kind, parents, model fingerprint, n_tokens, creation
 *     time, label, free JSON metadata, sizes and the xxHash64 of the raw bytes;
 *   - transcripts: the token IDs consumed between a state and its first
 *     parent (LEB128 varints), so the tokens from the root to any state can be
 *     replayed;
 *   - tags: mutable human names (like git branches) pointing at states;
 *   - models: model fingerprint -> architecture/config JSON.
 * What it is not: it knows nothing of the engine, CUDA or the network; it
 * reads only the header of an encoded state (n_tokens, fingerprint, shape).
 *
 * IDs: 128 bits = 48-bit Unix time in milliseconds, then 80 random bits from
 * getrandom(); printed as 26 characters of Crockford base32
 * ("0123456789ABCDEFGHJKMNPQRSTVWXYZ", upper case, the first character 0-7),
 * so IDs sort by creation time as strings and cannot be guessed. Parsing
 * accepts lower case too. An ID made in the same millisecond as the
 * process's previous one takes that one's random bits plus a random 40-bit
 * step, so IDs made one after another sort in the order they were made.
 *
 * Names an `id_or_tag` argument accepts: a 26-character ID, or a tag name.
 * Tag names are 1..STORE_TAG_MAX characters of [A-Za-z0-9] and "-_.:@+=/";
 * '/' separates namespaces ("textbook/python"), so a name may not start or end
 * with '/', contain "//", or have a "." or ".." segment; a name shaped like an
 * ID is refused so that resolution is never ambiguous.
 *
 * Durability: every write runs in one `BEGIN IMMEDIATE` transaction; a put
 * returns its ID only after COMMIT. synchronous=FULL by default: a committed
 * state survives a process crash and a power loss. With
 * store_opts.sync_normal a commit is still atomic and survives a crash of the
 * process, but a power loss or OS crash may lose the last few commits.
 * Payloads are verified on every read (LZ4 frame checksum and xxHash64 of the
 * decoded bytes); a mismatch is SSMD_ECORRUPT and the bytes are never
 * returned.
 *
 * Threads: a store handle is safe to share between threads. Writes (put,
 * import, tag, delete, gc, model_put) serialize on one writer connection
 * behind a mutex; reads use a small pool of separate read connections, so
 * they run alongside a write and see only committed data (WAL snapshots).
 * Compression and decompression run outside the writer lock and outside any
 * read transaction. Each handle also runs one background thread that
 * checkpoints the WAL into the database file after commits, so a put's
 * latency covers only its own WAL write. Every connection has a busy timeout, so callers do not
 * get SSMD_EBUSY from ordinary contention (several processes may also open
 * the same file; writers then queue on SQLite's lock for up to the timeout).
 * store_close() must not race with other calls on the same handle.
 *
 * Errors: every function returns SSMD_OK or a positive SSMD_E* code and, on
 * failure, leaves a detail in ssmd_errmsg() (SQLite's and LZ4's own message
 * text is kept there). SQLite "disk full" (or the store_opts.max_bytes limit)
 * is SSMD_ENOSPC; the failed write is rolled back and the store stays usable.
 * Other database failures are SSMD_ESTORE (SSMD_EIO for I/O errors). Out
 * parameters are written only on success. Buffers the library allocates for
 * the caller are released with free() unless a *_free function is named.
 */
#ifndef SSMD_STORE_H
#define SSMD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "ssmd_err.h"

/* Characters of a printed ID including the terminating NUL. */
#define STORE_ID_LEN 26
#define STORE_ID_SIZE (STORE_ID_LEN + 1)
/* Longest tag name, in bytes (without NUL). */
#define STORE_TAG_MAX 128
/* Longest label, in bytes (without NUL); any UTF-8 text without NUL. */
#define STORE_LABEL_MAX 256
/* Largest metadata JSON text, in bytes. */
#define STORE_METADATA_MAX 65536
/* Most parents a state may have (a merge of up to this many sources). */
#define STORE_PARENTS_MAX 16
/* Most tokens in one put's transcript. */
#define STORE_TRANSCRIPT_MAX ((size_t)1 << 26)
/* Bytes of a model fingerprint (equals SSM_FINGERPRINT_LEN). */
#define STORE_FINGERPRINT_LEN 16
/* Schema version kept in PRAGMA user_version. */
#define STORE_SCHEMA_VERSION 1

typedef struct store store;

typedef enum store_kind {
	STORE_KIND_CHECKPOINT = 1, /* automatic, every N tokens / on eviction */
	STORE_KIND_SNAPSHOT = 2,   /* asked for by a client */
	STORE_KIND_MERGE = 3,      /* made from >= 2 parents by a merge */
	STORE_KIND_IMPORT = 4,     /* imported from an export file */
} store_kind;

/* Lossy rounding asked for at put time; applies to the ssm and conv parts
 * only (hidden and dt_sum stay f32). Rounding is to nearest even; the
 * relative error of a normal value is at most 2^-8 (bf16) or 2^-11 (f16);
 * f16 flushes |x| < 2^-24 to zero and turns |x| >= 65520 into infinity. */
typedef enum store_lossy {
	STORE_LOSSY_NONE = 0,
	STORE_LOSSY_BF16 = 1,
	STORE_LOSSY_F16 = 2,
} store_lossy;

typedef struct store_opts {
	/* 0: synchronous=FULL (default). 1: synchronous=NORMAL — faster commits;
	 * still atomic and safe against a crash of the process, but a power
	 * loss or OS crash may lose the last commits. */
	int sync_normal;
	/* How long a connection waits for a lock before giving up; 0 = 10000. */
	int busy_timeout_ms;
	/* Upper bound on the database file size in bytes (0 = none). A write
	 * that would grow the file past it fails with SSMD_ENOSPC. */
	uint64_t max_bytes;
	/* Most read connections kept open at once; 0 = 4. A reader beyond
	 * that waits for a free one. */
	int max_readers;
} store_opts;

/* What one put stores. Every pointer is borrowed for the duration of the
 * call only. */
typedef struct store_put {
	const void *raw;       /* encoded canonical state (ssm_state_encode()) */
	size_t raw_len;        /* its length in bytes */
	store_kind kind;
	/* Parent IDs (not tags), first parent first; NULL/0 for a root. A
	 * merge needs >= 2. Every parent must exist and have the same model
	 * fingerprint (else SSMD_ENOENT / SSMD_EMODEL). */
	const char *const *parents;
	size_t n_parents;
	const char *label;     /* NULL = "" */
	const char *metadata;  /* JSON text or NULL */
	/* Token IDs (each >= 0) consumed since the first parent (or since the
	 * zero state for a root). For a checkpoint or snapshot with a non-empty
	 * transcript, the state's n_tokens must equal the first parent's
	 * n_tokens (0 for a root) plus n_tokens here, else SSMD_EINVAL. */
	const int32_t *tokens;
	size_t n_tokens;
	store_lossy lossy;
	/* When session is set, the same transaction records that session as
	 * open and continuing from the new state, with session_seed and
	 * session_label (NULL = ""), as store_session_put() does. */
	const char *session;
	uint64_t session_seed;
	const char *session_label;
} store_put;

typedef struct store_state_info {
	char id[STORE_ID_SIZE];
	/* Parent IDs, first parent first. An ID whose state was deleted later
	 * no longer appears (see store_state_delete()). */
	char parents[STORE_PARENTS_MAX][STORE_ID_SIZE];
	size_t n_parents;
	/* For an import: the ID the state had in the library it was exported
	 * from; "" otherwise. */
	char origin[STORE_ID_SIZE];
	uint8_t fingerprint[STORE_FINGERPRINT_LEN];
	store_kind kind;
	uint64_t n_tokens;     /* from the state header */
	int64_t created_ms;    /* Unix time in milliseconds */
	char label[STORE_LABEL_MAX + 1];
	char *metadata;        /* owned JSON text, or NULL if none */
	int codec;             /* STORE_CODEC_* bits (codec.h) */
	uint64_t raw_size;     /* bytes of the decoded canonical state */
	uint64_t stored_size;  /* bytes of the stored payload */
	uint64_t raw_hash;     /* xxHash64 (seed 0) of the decoded bytes */
	uint64_t n_transcript; /* tokens in its own transcript (since parent) */
	size_t n_tags;         /* tags pointing at it */
} store_state_info;

typedef struct store_filter {
	const uint8_t *fingerprint; /* STORE_FINGERPRINT_LEN bytes, or NULL */
	const char *tag_prefix;     /* states with a tag starting so, or NULL */
	int kind;                   /* a store_kind, or 0 for any */
	const char *label;          /* exact label, or NULL */
	int64_t since_ms;           /* created_ms >= since_ms (0 = no bound) */
	int64_t until_ms;           /* created_ms < until_ms (0 = no bound) */
	size_t limit;               /* most results; 0 = 100, capped at 10000 */
	int newest_first;           /* order by ID descending */
	const char *cursor;         /* next_cursor of the previous page, or NULL */
} store_filter;

typedef struct store_tag {
	char name[STORE_TAG_MAX + 1];
	char id[STORE_ID_SIZE];
	int64_t updated_ms;
} store_tag;

typedef struct store_totals {
	uint64_t n_states;
	uint64_t stored_bytes; /* sum of stored payload sizes */
	uint64_t raw_bytes;    /* sum of decoded sizes */
	uint64_t file_bytes;   /* database file (pages in use and free) */
} store_totals;

/* ------------------------------------------------------------ lifecycle -- */

/* Opens the library at path, creating the file and schema if missing.
 * opts may be NULL (defaults). Sets WAL, synchronous, busy timeout,
 * secure_delete=FAST, checks application_id and PRAGMA user_version
 * (SSMD_EFORMAT: not a state library; SSMD_EUNSUPPORTED: a newer schema).
 * Blocks on I/O. *out is owned by the caller; close with store_close(). */
int store_open(const char *path, const store_opts *opts, store **out);

/* Closes every connection and frees the handle; NULL is a no-op. */
void store_close(store *s);

/* ---------------------------------------------------------------- states -- */

/* Compresses p->raw, stores it with its metadata and transcript in one
 * transaction, and writes the new ID (NUL-terminated) into id only after the
 * transaction committed. SSMD_EFORMAT: raw is not an encoded state;
 * SSMD_EINVAL: bad kind, label, metadata (not JSON), token or parent count;
 * SSMD_ENOENT / SSMD_EMODEL: parent unknown / of another model; SSMD_ENOSPC:
 * disk or max_bytes full (nothing stored). Blocks: compression (~tens of ms
 * for a 26 MB state) then the commit's fsync. Thread-safe. */
int store_state_put(store *s, const store_put *p, char id[STORE_ID_SIZE]);

/* Reads, decompresses and verifies a state. On success *raw (free()) holds
 * *len bytes of the encoded canonical state, and *info (if info is not NULL)
 * is filled; release it with store_state_info_fini(). SSMD_ENOENT: unknown
 * ID or tag; SSMD_ECORRUPT: the stored payload fails its checksums (nothing
 * is returned). Thread-safe. */
int store_state_get(store *s, const char *id_or_tag, void **raw, size_t *len,
		    store_state_info *info);

/* Fills *info with a state's metadata without reading its payload.
 * SSMD_ENOENT if unknown. Release with store_state_info_fini(). */
int store_state_info_get(store *s, const char *id_or_tag,
			 store_state_info *info);

/* Frees what an info owns (its metadata) and clears it; NULL is a no-op. */
void store_state_info_fini(store_state_info *info);

/* Frees an array of n infos from store_state_list()/store_lineage(); NULL
 * is a no-op. */
void store_info_array_free(store_state_info *arr, size_t n);

/* Writes the ID that id_or_tag names (an existing state) into id.
 * SSMD_ENOENT: no such state or tag; SSMD_EINVAL: neither an ID nor a valid
 * tag name. */
int store_resolve(store *s, const char *id_or_tag, char id[STORE_ID_SIZE]);

/* Lists states matching f (NULL = everything), ordered by ID (creation
 * time), at most f->limit of them. *out (store_info_array_free()) gets *n
 * infos; next_cursor gets the cursor of the next page, or "" when this page
 * is the last. SSMD_EINVAL on a bad cursor or filter. */
int store_state_list(store *s, const store_filter *f, store_state_info **out,
		     size_t *n, char next_cursor[STORE_ID_SIZE]);

/* Lineage of a state: *ancestors gets every state reachable through parent
 * links (all parents of merges too), nearest first, each once; *children
 * gets the states that name it as a parent, oldest first. Either output pair
 * may be NULL to skip it. Free both with store_info_array_free(). */
int store_lineage(store *s, const char *id_or_tag,
		  store_state_info **ancestors, size_t *n_ancestors,
		  store_state_info **children, size_t *n_children);

/* The token IDs from the root to the state: the transcripts along the
 * first-parent chain, concatenated root first. *ids (free(); NULL when *n is
 * 0) gets *n tokens. */
int store_transcript(store *s, const char *id_or_tag, int32_t **ids,
		     size_t *n);

/* Counts and sizes of the whole library. */
int store_total_size(store *s, store_totals *t);

/* Deletes a state by ID (not by tag). SSMD_EEXIST while a tag points at it,
 * unless force, which deletes those tags too. Its children keep their
 * payloads; each child whose first parent it was is re-parented onto its own
 * first parent (or becomes a root) and its transcript is prefixed with the
 * deleted state's, so store_transcript() of every descendant is unchanged.
 * Other links to it are replaced the same way (or dropped). */
int store_state_delete(store *s, const char *id, int force);

/* Garbage collection: deletes (as store_state_delete() does) every state
 * created more than older_than_s seconds ago that no tag reaches — a tagged
 * state and all its ancestors through every parent link are kept, so a
 * tag's whole history survives. With dry_run nothing changes. *n_states and
 * *n_bytes (stored bytes), each may be NULL, get what was (or would be)
 * freed. One transaction. */
int store_gc(store *s, int64_t older_than_s, int dry_run, uint64_t *n_states,
	     uint64_t *n_bytes);

/* ------------------------------------------------------------------ tags -- */

/* Points tag name at the state id_or_tag names, creating or moving the
 * tag. SSMD_EINVAL: invalid name (see the top of this file); SSMD_ENOENT:
 * no such state. */
int store_tag_set(store *s, const char *name, const char *id_or_tag);

/* Removes a tag (the state stays). SSMD_ENOENT if there is no such tag. */
int store_tag_delete(store *s, const char *name);

/* Tags whose name starts with prefix (NULL or "" = all), sorted by name.
 * *out (free()) gets *n entries. */
int store_tag_list(store *s, const char *prefix, store_tag **out, size_t *n);

/* ---------------------------------------------------------------- models -- */

/* Records (or replaces) the architecture/config JSON of a model
 * fingerprint. SSMD_EINVAL if config_json is not JSON. */
int store_model_put(store *s, const uint8_t fingerprint[STORE_FINGERPRINT_LEN],
		    const char *config_json);

/* *config_json (free()) gets the JSON recorded for fingerprint;
 * SSMD_ENOENT if none was. */
int store_model_get(store *s, const uint8_t fingerprint[STORE_FINGERPRINT_LEN],
		    char **config_json);

/* -------------------------------------------------------------- sessions -- */

/* The session table: a daemon records its open sessions here (ID, the
 * latest stored state it continues from, sampling seed, label) so that a
 * session ID stays usable across restarts of the daemon; closed sessions
 * are marked, not forgotten. Session IDs are opaque printable strings of
 * 1..STORE_SESSION_ID_MAX bytes. The table names states by ID only: a
 * deleted state leaves the row in place (the daemon decides what a session
 * whose state is gone becomes). */
#define STORE_SESSION_ID_MAX 64

typedef struct store_session {
	char id[STORE_SESSION_ID_MAX + 1];
	char state[STORE_ID_SIZE];   /* "" = nothing stored yet (zero state) */
	uint64_t seed;
	char label[STORE_LABEL_MAX + 1];
	int64_t updated_ms;
} store_session;

/* Records session id as open, continuing from state (an ID, or NULL/"" for
 * none), with seed and label (NULL = ""): inserts it, or replaces the row,
 * reopening it if it was closed. SSMD_EINVAL on a bad ID or label. */
int store_session_put(store *s, const char *id, const char *state,
		      uint64_t seed, const char *label);

/* store_session_put() of n rows (id, state, seed, label of each; updated_ms
 * is ignored) in one transaction: all or none. */
int store_session_put_many(store *s, const store_session *rows, size_t n);

/* Marks session id closed. SSMD_ENOENT when there is no such row. */
int store_session_close(store *s, const char *id);

/* The open sessions, oldest update first, into *out (free(); NULL when *n
 * is 0). */
int store_session_list(store *s, store_session **out, size_t *n);

/* -------------------------------------------------------- export/import -- */

/*
 * Export format (version 1, all integers little-endian):
 *   off  size  field
 *     0     8  magic "SSMDSTX\n"
 *     8     4  u32 format version (1)
 *    12     4  u32 length J of the JSON document
 *    16     J  JSON: {"id", "kind", "parents", "label", "metadata",
 *              "created_ms", "n_tokens", "fingerprint" (hex), "codec",
 *              "raw_size", "raw_hash" (hex), "model" (config JSON or null)}
 *           8  u64 T: tokens in the transcript from the root
 *         4*T  i32 tokens
 *           8  u64 P: payload bytes
 *           P  payload exactly as stored (codec "codec")
 *           8  u64 xxHash64 (seed 0) of every byte before it
 * The transcript is the whole one from the root, so the state imports as a
 * root of kind import with the same raw hash, label and metadata.
 */

/* Serializes a state into *buf (free()) of *len bytes. The payload is
 * verified first (SSMD_ECORRUPT: nothing exported). Thread-safe. */
int store_export(store *s, const char *id_or_tag, void **buf, size_t *len);

/* Imports an export: checks magic, version, lengths, the trailing checksum,
 * the JSON, then decodes and verifies the payload; only then stores it as a
 * new state of kind import (new ID in id; the old one in info.origin) and
 * records its model config if the library has none for it. SSMD_EFORMAT:
 * truncated, foreign or malformed bytes; SSMD_ECORRUPT: a checksum fails.
 * A failed import changes nothing. */
int store_import(store *s, const void *buf, size_t len,
		 char id[STORE_ID_SIZE]);

/* store_export() into the file path, written to "path.tmp", fsynced and
 * renamed over path, so path is either complete or untouched. SSMD_EIO. */
int store_export_file(store *s, const char *id_or_tag, const char *path);

/* store_import() of the file at path (read whole, bounded to 2 GiB).
 * SSMD_ENOENT: no such file; SSMD_EIO. */
int store_import_file(store *s, const char *path, char id[STORE_ID_SIZE]);

/* --------------------------------------------------------------- helpers -- */

/* Name of a kind ("checkpoint", ...), or "unknown". */
const char *store_kind_name(int kind);

/* 1 if s is a 26-character ID (either case), else 0. */
int store_id_valid(const char *s);

/* 1 if name is a valid tag name (rules at the top of this file), else 0. */
int store_tag_name_valid(const char *name);

#endif
