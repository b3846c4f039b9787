/*
 * ssmd.h — libssmd-client, the C API of the ssmd daemon.
 *
 * ssmd serves a Mamba language model and keeps each session's recurrent state
 * in a state library, so sessions can be snapshotted, resumed, forked and
 * tagged by state ID. This library speaks ssmd's protocol (proto/ssmd.proto,
 * explained in proto/PROTOCOL.md) over nng: requests and replies on the
 * daemon's request endpoint, token streams from its events endpoint. It hides
 * nng and protobuf; this header is the whole interface.
 *
 * Every operation is one blocking call that sends one request and waits for
 * its reply (up to the client's timeout), except ssmd_submit(), which pushes
 * a request to the daemon's jobs endpoint without waiting for its result. Each returns 0 (SSMD_OK) or a
 * positive SSMD_E* code (ssmd_err.h): the daemon's code when the daemon
 * refused the request, or a local one (SSMD_ETIMEDOUT, SSMD_ECLOSED when the
 * daemon cannot be reached, SSMD_EPROTO for a reply that makes no sense,
 * SSMD_EINVAL for bad arguments, SSMD_ENOMEM). On failure ssmd_errmsg()
 * returns the daemon's message (or a local one) until the next failing call
 * on the same thread. Out-parameters are written only on success.
 *
 * Retries are safe: every request carries a fresh random 128-bit request ID
 * and the client's ID; nng resends a request whose reply is late, and the
 * daemon answers a resent request from its first execution.
 *
 * Strings: IDs are copied into fixed arrays of SSMD_ID_MAX bytes; every
 * string argument is borrowed for the duration of the call. Results with
 * variable size are heap objects released with their _free function, which
 * accepts NULL.
 *
 * Thread-safety: an ssmd_client has one owner; call it from one thread at a
 * time. Open one client per thread to issue requests in parallel (the daemon
 * serves many at once). Different clients share nothing.
 */
#ifndef SSMD_H
#define SSMD_H

#include <stddef.h>
#include <stdint.h>

#include "ssmd_err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Capacity of every ID array (session IDs, state IDs, fingerprints), NUL
 * included. A reply carrying a longer ID is refused with SSMD_EPROTO. */
#define SSMD_ID_MAX 64

/* Capacity of the URL written by ssmd_default_url(), NUL included. */
#define SSMD_URL_MAX 512

/* ----------------------------------------------------------- connection -- */

typedef struct ssmd_client ssmd_client;

typedef struct ssmd_client_opts {
	/* Request endpoint, e.g. "ipc:///run/user/1000/ssmd/ssmd.sock" or
	 * "tcp://host:7400"; NULL = ssmd_default_url(). Borrowed. */
	const char *url;
	/* Events endpoint for streaming generate; NULL = derived from url by
	 * the daemon's naming rule (ssmd_events_url()). Borrowed. */
	const char *events_url;
	/* Longest wait for one reply, in milliseconds; 0 = 300000 (long
	 * generations and appends are single requests); < 0 = no limit. */
	int timeout_ms;
	/* Longest wait for the daemon's socket to accept the connection;
	 * 0 = 2000 ms. */
	int connect_timeout_ms;
	/* Jobs endpoint for ssmd_submit(); NULL = derived from url
	 * (ssmd_jobs_url()). Borrowed. */
	const char *jobs_url;
} ssmd_client_opts;

/* Sets opts to the defaults above (all NULL / 0). */
void ssmd_client_opts_init(ssmd_client_opts *opts);

/* Writes the daemon's default request URL into url (capacity cap): $SSMD_URL
 * when set, else the ipc socket in the daemon's default run directory
 * ($XDG_RUNTIME_DIR/ssmd/ssmd.sock, or ./run/ssmd.sock without
 * XDG_RUNTIME_DIR). SSMD_ERANGE when cap is too small. */
int ssmd_default_url(char *url, size_t cap);

/* Writes the events URL that goes with request URL url into out (capacity
 * cap): $SSMD_EVENTS_URL when set, else for "ipc://DIR/NAME.sock" the sibling
 * "ipc://DIR/NAME-events.sock" (the daemon's default pair in its run
 * directory). Other transports have no such rule: SSMD_EINVAL (give the
 * events URL in ssmd_client_opts), SSMD_ERANGE when cap is too small. */
int ssmd_events_url(const char *url, char *out, size_t cap);

/* The same for the jobs endpoint: $SSMD_JOBS_URL when set, else for
 * "ipc://DIR/NAME.sock" the sibling "ipc://DIR/NAME-jobs.sock". */
int ssmd_jobs_url(const char *url, char *out, size_t cap);

/* Connects to the daemon and returns a client in *out. opts may be NULL (all
 * defaults). Blocks until the request socket is connected or
 * connect_timeout_ms passes (SSMD_ECLOSED: nothing listens there). The events
 * socket is connected on the first streaming generate, the jobs socket on
 * the first ssmd_submit(). */
int ssmd_client_open(const ssmd_client_opts *opts, ssmd_client **out);

/* Disconnects and frees the client; NULL is a no-op. Clients of several
 * threads may close at once (their sockets are closed one after another).
 * A client's events socket, if it streamed, stays open for the process's
 * next client that streams from the same daemon (see client.c). */
void ssmd_client_close(ssmd_client *c);

/* This client's ID as sent with every request ("host/pid/random");
 * borrowed, valid until ssmd_client_close(). */
const char *ssmd_client_id(const ssmd_client *c);

/* ----------------------------------------------------------------- info -- */

typedef struct ssmd_info {
	char version[32];              /* daemon version, "0.1.0" */
	uint32_t protocol_version;
	char model[256];               /* model directory name (truncated to fit) */
	char model_fingerprint[SSMD_ID_MAX]; /* 32 hex digits */
	char arch[16];                 /* "mamba1" */
	uint32_t d_model, n_layer, d_inner, d_state, vocab_size;
	char backend[16];              /* "cpu" | "cuda" */
	uint32_t slots;                /* states held on the device at once */
	uint64_t state_bytes;          /* encoded canonical state size */
	int has_tokenizer;             /* 0: text operations are refused */
	uint32_t checkpoint_every;     /* automatic checkpoint period; 0 = off */
	uint64_t max_message_bytes;    /* largest request accepted */
	uint32_t max_append_tokens;    /* tokens per append */
	uint32_t max_generate_tokens;  /* max_tokens per generate */
	uint32_t max_sessions;         /* live sessions */
	uint32_t queue_depth;          /* requests waiting before SSMD_EBUSY */
	uint32_t max_stop;             /* stop strings + stop tokens */
} ssmd_info;

/* The daemon's version, model, backend, state size and limits. */
int ssmd_info_get(ssmd_client *c, ssmd_info *out);

typedef struct ssmd_stats {
	uint32_t sessions;             /* open sessions */
	uint32_t sessions_resident;    /* of which hold a slot */
	uint32_t slots, slots_used;
	uint32_t queue_depth;          /* requests waiting for the scheduler */
	uint64_t tokens_total;         /* tokens consumed since start */
	double tokens_per_s;           /* over the last ~10 s */
	uint64_t store_bytes;          /* state library file size */
	uint64_t store_states;
	uint64_t requests_total;
	uint64_t evictions;
	double uptime_s;
	uint64_t tier_bytes;           /* host tier of paged-out states: bytes held */
	uint64_t tier_budget;          /* bytes allowed (--host-cache-mb) */
	uint32_t tier_pending;         /* states whose commit has not finished */
	uint64_t tier_hits;            /* page-ins served from the tier */
	uint64_t tier_misses;          /* page-ins read from the library */
	uint64_t store_failures;       /* states the library refused since start
					* (kept in memory by their sessions) */
} ssmd_stats;

/* The daemon's counters. */
int ssmd_stats_get(ssmd_client *c, ssmd_stats *out);

/* ------------------------------------------------------------- sessions -- */

/* A live session as the daemon reports it after open or fork. */
typedef struct ssmd_session {
	char id[SSMD_ID_MAX];
	uint64_t n_tokens;             /* tokens consumed since the zero state */
	char base_state[SSMD_ID_MAX];  /* state it was resumed from, or "" */
} ssmd_session;

typedef struct ssmd_open_args {
	const char *from;      /* state ID or tag to resume, or NULL */
	const char *fork;      /* live session whose state is copied, or NULL */
	uint32_t count;        /* sessions to open from the same source; 0 = 1 */
	const uint64_t *seed;  /* default sampling seed, or NULL (daemon's rule) */
	const char *label;     /* label of the sessions' stored states, or NULL */
} ssmd_open_args;

/* Opens args->count sessions (one when args is NULL or count is 0): empty,
 * resumed from a stored state (from) or copied from a live session (fork);
 * at most one of from/fork. Writes them into out, which has room for that
 * many. SSMD_ENOENT for an unknown state, tag or session, SSMD_EMODEL for a
 * state of another model. */
int ssmd_session_open(ssmd_client *c, const ssmd_open_args *args,
		      ssmd_session *out);

/* Forks source — a live session ID (its current state is copied) or a state
 * ID or tag (resumed) — count times (0 = 1) into out (room for that many).
 * seed, when not NULL, is the new sessions' default sampling seed. */
int ssmd_session_fork(ssmd_client *c, const char *source, uint32_t count,
		      const uint64_t *seed, ssmd_session *out);

typedef struct ssmd_append_result {
	uint32_t n_appended;   /* tokens consumed by this request */
	uint64_t n_tokens;     /* session total afterwards */
	uint32_t n_checkpoints; /* automatic checkpoints stored meanwhile */
} ssmd_append_result;

/* Feeds text (tokenized by the daemon; SSMD_ENOTOK when its model has no
 * tokenizer) into a session. out may be NULL. */
int ssmd_append_text(ssmd_client *c, const char *session, const char *text,
		     ssmd_append_result *out);

/* Feeds n token IDs into a session. SSMD_EINVAL for an ID out of the model's
 * vocabulary (nothing is consumed), SSMD_ERANGE beyond max_append_tokens.
 * out may be NULL. */
int ssmd_append_tokens(ssmd_client *c, const char *session,
		       const int32_t *tokens, size_t n, ssmd_append_result *out);

/* A checkpoint stored during an append: its state ID and the session's
 * n_tokens there. */
typedef struct ssmd_checkpoint {
	char id[SSMD_ID_MAX];
	uint64_t n_tokens;
} ssmd_checkpoint;

typedef struct ssmd_append_args {
	const char *text;              /* text to tokenize, or NULL */
	const int32_t *tokens;         /* n_tokens token IDs, or NULL */
	size_t n_tokens;
	const char *const *texts;      /* n_texts messages, each tokenized on
					* its own, a checkpoint after each; or NULL */
	size_t n_texts;
	uint32_t checkpoint_every;     /* a checkpoint after every N tokens of
					* this append; 0 = none */
	const uint32_t *boundaries;    /* n_boundaries offsets into this append
					* (ascending, 1..tokens appended) to
					* checkpoint at, or NULL */
	size_t n_boundaries;
} ssmd_append_args;

/* The general append: exactly one of args->text / tokens / texts, with
 * checkpoints inside the prefill, each equal to the state of an append that
 * stopped there. out may be NULL. When checkpoints is not NULL (out must then
 * be given), *checkpoints receives a malloc'd array of out->n_checkpoints
 * entries in order (free with ssmd_free(); NULL when there are none). */
int ssmd_append(ssmd_client *c, const char *session,
		const ssmd_append_args *args, ssmd_append_result *out,
		ssmd_checkpoint **checkpoints);

enum ssmd_finish {
	SSMD_FINISH_NONE = 0,
	SSMD_FINISH_LENGTH = 1,       /* max_tokens reached */
	SSMD_FINISH_STOP_STRING = 2,
	SSMD_FINISH_STOP_TOKEN = 3,
	SSMD_FINISH_CANCELED = 4,     /* session closed or daemon stopping */
};

/* "none", "length", "stop", "stop_token", "canceled"; static string. */
const char *ssmd_finish_name(int finish);

typedef struct ssmd_generate_args {
	uint32_t max_tokens;          /* 0 = the daemon's default (16) */
	float temperature;            /* <= 0: greedy */
	uint32_t top_k;               /* 0: no top-k filter */
	float top_p;                  /* 0 or 1: no nucleus filter; else (0, 1) */
	const uint64_t *seed;         /* NULL: the session's seed */
	const char *const *stop;      /* n_stop stop strings, or NULL */
	size_t n_stop;
	const int32_t *stop_tokens;   /* n_stop_tokens token IDs, or NULL */
	size_t n_stop_tokens;
	int snapshot;                 /* store the state at the end */
	const char *snapshot_tag;     /* with snapshot: tag it, or NULL */
	const char *snapshot_label;   /* with snapshot: its label, or NULL */
} ssmd_generate_args;

/* Sets args to the defaults (all zero / NULL: greedy, 16 tokens). */
void ssmd_generate_args_init(ssmd_generate_args *args);

/* Called during a streaming generate with the tokens produced since the last
 * call and their decoded text (text_len bytes, not NUL-terminated; empty when
 * the model has no tokenizer). Both are borrowed for the call. Called on the
 * caller's thread, in order, each token exactly once. */
typedef void (*ssmd_token_fn)(void *ctx, const int32_t *tokens, size_t n,
			      const char *text, size_t text_len);

/* The complete result of a generate. */
typedef struct ssmd_generation {
	int32_t *tokens;              /* (n_tokens) every emitted token */
	size_t n_tokens;
	char *text;                   /* their decoded text, NUL-terminated */
	int finish;                   /* enum ssmd_finish */
	uint64_t session_tokens;      /* session total afterwards */
	char state_id[SSMD_ID_MAX];   /* with snapshot: the stored state, else "" */
	uint32_t n_checkpoints;       /* automatic checkpoints meanwhile */
	uint64_t events_missed;       /* stream events lost in transit (their
				       * tokens were delivered from the reply) */
} ssmd_generation;

/* Samples up to max_tokens tokens from session (each is consumed by it) and
 * returns the complete result in *out (free with ssmd_generation_free()).
 * args may be NULL (defaults). When fn is not NULL the daemon streams the
 * tokens and fn receives them as they arrive; if events are lost in transit
 * (a slow subscriber), fn stops receiving events and gets the rest from the
 * final reply instead, so it still sees every token once, in order.
 * SSMD_EEMPTY when the session has consumed nothing, SSMD_EINVAL for nonsense
 * parameters (NaN temperature, top_p outside (0, 1]), SSMD_ERANGE beyond
 * the limits. */
int ssmd_generate(ssmd_client *c, const char *session,
		  const ssmd_generate_args *args, ssmd_token_fn fn, void *ctx,
		  ssmd_generation **out);

/* Frees a generation; NULL is a no-op. */
void ssmd_generation_free(ssmd_generation *g);

/* A stored state named by a reply. */
typedef struct ssmd_state_ref {
	char id[SSMD_ID_MAX];         /* "" when nothing was stored */
	uint64_t n_tokens;
} ssmd_state_ref;

/* Stores the session's current state; returns its ID once it is committed
 * to the library. tag and label may be NULL. out may be NULL. */
int ssmd_session_snapshot(ssmd_client *c, const char *session, const char *tag,
			  const char *label, ssmd_state_ref *out);

/* Ends a session. With snapshot set its state is stored first (when it has
 * consumed anything) and out receives the ID, else out->id is "". tag and
 * label (used with snapshot) and out may be NULL. */
int ssmd_session_close(ssmd_client *c, const char *session, int snapshot,
		       const char *tag, const char *label, ssmd_state_ref *out);

/* ---------------------------------------------------------------- states -- */

/* One stored state. */
typedef struct ssmd_state_info {
	char id[SSMD_ID_MAX];
	char parent[SSMD_ID_MAX];     /* "" for a root */
	char kind[16];                /* checkpoint | snapshot | merge | import */
	uint64_t n_tokens;
	int64_t created_ms;           /* Unix time, milliseconds */
	char *label;                  /* NUL-terminated, "" if none */
	char *metadata;               /* JSON object text, "" if none */
	uint64_t raw_bytes, stored_bytes;
	char model_fingerprint[SSMD_ID_MAX];
	char **tags;                  /* (n_tags) tag names */
	size_t n_tags;
	uint64_t transcript_tokens;   /* tokens between parent and this state */
} ssmd_state_info;

/* A list of states; every string in it is owned by the list. */
typedef struct ssmd_state_list {
	ssmd_state_info *states;      /* (n) */
	size_t n;
	char *next_cursor;            /* "" on the last page */
} ssmd_state_list;

/* Frees a state list; NULL is a no-op. */
void ssmd_state_list_free(ssmd_state_list *l);

typedef struct ssmd_states_filter {
	const char *tag_prefix;       /* only states with a tag starting so */
	const char *session;          /* only states written by this session */
	int all_models;               /* 0: only the served model's states */
	uint32_t limit;               /* page size; 0 = 100 */
	const char *cursor;           /* next_cursor of the previous page */
	const char *kind;             /* checkpoint | snapshot | merge | import */
} ssmd_states_filter;

/* Lists stored states, newest first. filter may be NULL (the first 100 of
 * the served model). */
int ssmd_states_list(ssmd_client *c, const ssmd_states_filter *filter,
		     ssmd_state_list **out);

/* One state by ID or tag, with its lineage: out->states[0] is the state,
 * states[1..n-1] its ancestors, parent first, root last. SSMD_ENOENT for an
 * unknown reference. */
int ssmd_state_get(ssmd_client *c, const char *ref, ssmd_state_list **out);

/* Points tag name at the state ref (an ID or another tag), moving the tag if
 * it exists. out (may be NULL) receives the state. */
int ssmd_tag_set(ssmd_client *c, const char *name, const char *ref,
		 ssmd_state_ref *out);

/* Removes tag name (the state stays). SSMD_ENOENT when no such tag. */
int ssmd_tag_delete(ssmd_client *c, const char *name);

/* Deletes a stored state. SSMD_EEXIST while tags point at it, unless force
 * (which removes those tags too); its children are re-parented onto its
 * parent. */
int ssmd_state_delete(ssmd_client *c, const char *ref, int force);

/* Exports a state in the library's self-describing format: *data (len
 * bytes, free with ssmd_free()) can be imported by any ssmd serving the same
 * model. */
int ssmd_state_export(ssmd_client *c, const char *ref, void **data,
		      size_t *len);

/* Imports a state exported by ssmd_state_export() (len bytes, borrowed);
 * tag may be NULL. out (may be NULL) receives the new state's ID.
 * SSMD_EFORMAT or SSMD_ECORRUPT for bytes that are not a sound export. */
int ssmd_state_import(ssmd_client *c, const void *data, size_t len,
		      const char *tag, ssmd_state_ref *out);

typedef struct ssmd_merge_args {
	const char *const *sources;   /* n_sources >= 2 state IDs or tags */
	size_t n_sources;
	const double *weights;        /* interpolate: one per source, or NULL
				       * for equal weights */
	size_t n_weights;
	const char *mode;             /* "interpolate" (NULL), "compose" or
				       * "replay" */
	const char *tag;              /* tag the merged state, or NULL */
	const char *label;            /* its label, or NULL */
	int open;                     /* also open a session on it */
	const uint64_t *seed;         /* that session's seed, or NULL */
} ssmd_merge_args;

/* Merges stored states into a new stored state (kind "merge", the sources
 * as parents): interpolate = weighted mean of every part, compose = A then B
 * through B's dt_sum, replay = resume the first source and feed the others'
 * transcripts (exact). out (may be NULL) receives the new state; with
 * args->open, session (may be NULL) the session opened on it. SSMD_EMODEL
 * for sources of another model, SSMD_EINVAL for bad weights or mode. */
int ssmd_merge(ssmd_client *c, const ssmd_merge_args *args, ssmd_state_ref *out,
	       ssmd_session *session);

/* The log-probability of tokens following a state. */
typedef struct ssmd_score {
	double logprob;               /* sum of token_logprobs (natural log) */
	int32_t *tokens;              /* (n_tokens) the scored text's tokens */
	size_t n_tokens;
	uint32_t unscored;            /* leading tokens read as context only:
				       * 1 after an empty source, else 0 */
	float *token_logprobs;        /* (n_tokens - unscored): entry i is the
				       * log-probability of tokens[i + unscored]
				       * given everything before it */
} ssmd_score;

/* Scores text (tokenized by the daemon) or n tokens after source — a live
 * session (scored at its current state, in order with its other requests)
 * or a state ID or tag — without changing the source. *out is freed with
 * ssmd_score_free(). */
int ssmd_score_text(ssmd_client *c, const char *source, const char *text,
		    ssmd_score **out);
int ssmd_score_tokens(ssmd_client *c, const char *source,
		      const int32_t *tokens, size_t n, ssmd_score **out);

/* Frees a score; NULL is a no-op. */
void ssmd_score_free(ssmd_score *s);

/* ----------------------------------------------------------------- jobs -- */

/* Capacity of a request ID array, NUL included (request IDs have 1..128
 * bytes). */
#define SSMD_REQUEST_ID_MAX 129

/* Operations that can be pushed to the jobs endpoint. */
enum ssmd_op {
	SSMD_OP_OPEN = 1,
	SSMD_OP_APPEND = 2,
	SSMD_OP_GENERATE = 3,
	SSMD_OP_SNAPSHOT = 4,
	SSMD_OP_CLOSE = 5,
	SSMD_OP_MERGE = 6,
};

/* One fire-and-forget request: op and the fields that op reads (the others
 * are ignored). Zero it, then set what is needed. */
typedef struct ssmd_job {
	int op;                               /* enum ssmd_op */
	const char *request_id;               /* 1..128 bytes, unique for this
					       * client; NULL = a fresh random
					       * ID (choose one to subscribe to
					       * its events before submitting) */
	const char *session;                  /* append, generate, snapshot,
					       * close */
	const ssmd_open_args *open;           /* open; NULL = one empty session */
	const ssmd_append_args *append;       /* append */
	const ssmd_generate_args *generate;   /* generate; NULL = defaults */
	int stream;                           /* generate: also publish each
					       * token as a stream event */
	int snapshot;                         /* close: store the state first */
	const char *tag;                      /* snapshot, close: tag, or NULL */
	const char *label;                    /* snapshot, close: label, or NULL */
	const ssmd_merge_args *merge;         /* merge */
} ssmd_job;

/* Pushes job to the daemon's jobs endpoint and returns without waiting for
 * it to run; its request ID is written into request_id. The daemon runs it
 * like the same request on the request endpoint (requests on one session
 * still run in the order they arrive) and publishes its complete reply on
 * the events endpoint as an event under the request ID (topic = request ID
 * + NUL byte, see proto/PROTOCOL.md): subscribe before submitting to
 * receive it. ssmd_result() fetches the same reply. Blocks only until the
 * daemon's socket accepts the message (up to connect_timeout_ms:
 * SSMD_ETIMEDOUT, or SSMD_ECLOSED when no jobs endpoint listens);
 * SSMD_EINVAL for an unknown op or arguments the blocking call would refuse
 * locally. Errors of the job itself arrive in its reply. The message may
 * still sit in the jobs socket when this returns, and nng sends nothing
 * after the socket is closed: ssmd_client_close() at once may drop the job;
 * ssmd_submit_wait() (or its event, or its result) before closing. */
int ssmd_submit(ssmd_client *c, const ssmd_job *job,
		char request_id[SSMD_REQUEST_ID_MAX]);

/* Which result an ssmd_reply carries. */
enum ssmd_reply_kind {
	SSMD_REPLY_NONE = 0,      /* none: an error, or untag / delete */
	SSMD_REPLY_SESSIONS = 1,  /* open, fork: sessions */
	SSMD_REPLY_APPEND = 2,    /* append: append, checkpoints */
	SSMD_REPLY_GENERATE = 3,  /* generate: generation */
	SSMD_REPLY_STATE = 4,     /* snapshot, close, tag, import: state */
	SSMD_REPLY_MERGE = 5,     /* merge: state, and with open sessions[0] */
	SSMD_REPLY_OTHER = 6,     /* info, states, ...: not converted here
				   * (use the blocking call) */
};

/* The final reply of an earlier request. Every pointer is owned by it. */
typedef struct ssmd_reply {
	char request_id[SSMD_REQUEST_ID_MAX];
	int code;                     /* the request's outcome: 0 or SSMD_E* */
	char *message;                /* its detail; "" on success */
	int kind;                     /* enum ssmd_reply_kind */
	ssmd_session *sessions;       /* (n_sessions) */
	size_t n_sessions;
	ssmd_append_result append;
	ssmd_checkpoint *checkpoints; /* (append.n_checkpoints), or NULL */
	ssmd_generation *generation;
	ssmd_state_ref state;
} ssmd_reply;

/* Fetches the final reply of an earlier request by its request ID, from the
 * daemon's cache of recent replies: a pushed job, or a stream whose events
 * were lost. client_id is the client that sent it (ssmd_client_id()); NULL
 * = this client. Waits while the request still runs (up to the client's
 * timeout). Returns SSMD_OK with the reply in *out (free with
 * ssmd_reply_free()) whatever the request's own outcome, which is
 * (*out)->code; SSMD_ENOENT when the daemon does not know the request (never
 * received, or already forgotten). */
int ssmd_result(ssmd_client *c, const char *request_id, const char *client_id,
		ssmd_reply **out);

/* Whether the daemon has an earlier request (by request ID; client_id as in
 * ssmd_result()), without waiting for it: SSMD_OK with *done = 1 when its
 * reply is ready (fetch it with ssmd_result()), *done = 0 while it runs;
 * SSMD_ENOENT when the daemon has not received it (or has forgotten it). */
int ssmd_result_status(ssmd_client *c, const char *request_id, const char *client_id,
		       int *done);

/* Waits until the daemon has received the job this client submitted as
 * request_id (asking with ssmd_result_status(), every 1 to 32 ms, up to the
 * client's timeout: SSMD_ETIMEDOUT), not until it has run. After it,
 * closing the client cannot drop the job. */
int ssmd_submit_wait(ssmd_client *c, const char *request_id);

/* Frees a reply; NULL is a no-op. */
void ssmd_reply_free(ssmd_reply *r);

/* Frees memory returned by this library (ssmd_state_export, ssmd_append
 * checkpoints); NULL is a no-op. */
void ssmd_free(void *p);

#ifdef __cplusplus
}
#endif

#endif
