/*
 * config.h — the daemon's settings: defaults, command-line flags and an
 * optional config file, all through one key table.
 *
 * Every setting has one key (`checkpoint_every`); on the command line it is
 * `--checkpoint-every N` or `--checkpoint-every=N`, in a config file either a
 * `checkpoint_every = N` line (`#` starts a comment, values may be quoted) or
 * a JSON object `{"checkpoint_every": N}` (a file whose first non-blank
 * character is `{`). Dashes and underscores in keys are interchangeable.
 * Precedence: defaults < config file (`--config FILE`) < flags. Relative
 * paths are taken relative to the daemon's working directory.
 *
 * Ownership: a cfg owns its strings; cfg_fini() frees them.
 * Thread-safety: one owner; read-only after start-up.
 */
#ifndef SSMD_CONFIG_H
#define SSMD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct cfg {
	char *model;            /* model directory (required) */
	char *store;            /* state library file (required; created if missing) */
	char *listen;           /* request/reply URL; default ipc://RUN_DIR/ssmd.sock */
	char *events;           /* publish URL; default: beside an ipc:// listen
				 * socket (D/NAME.sock -> D/NAME-events.sock),
				 * else ipc://RUN_DIR/ssmd-events.sock */
	char *jobs;             /* pull URL of fire-and-forget requests, or
				 * "off"; default: D/NAME-jobs.sock beside an
				 * ipc:// listen socket, else off */
	char *run_dir;          /* default $XDG_RUNTIME_DIR/ssmd, else ./run */
	char *backend;          /* auto | cpu | cuda */
	int slots;              /* live states on the backend */
	int checkpoint_every;   /* automatic checkpoint every N consumed tokens; 0 = off */
	int threads;            /* CPU backend threads; 0 = all cores */
	int log_level;          /* LOG_* */
	uint64_t max_message;   /* NNG_OPT_RECVMAXSZ of every listener, bytes */
	uint64_t max_store_bytes; /* state library file size limit (store_opts
				 * max_bytes): a write past it is SSMD_ENOSPC;
				 * 0 = none */
	int max_append_tokens;  /* tokens per append request */
	int max_generate_tokens;/* max_tokens per generate request */
	int max_sessions;       /* open sessions (resident or paged out) */
	int queue_depth;        /* requests submitted and not started; beyond: EBUSY */
	int prefill_chunk;      /* the least a prefilling session's (append,
				 * score, replay) chunk per step is capped at:
				 * each takes at most max(prefill_chunk, the
				 * step's prefill budget / sessions prefilling),
				 * and no more than the budget has left */
	int step_tokens;        /* tokens one scheduler step feeds in all: one
				 * per generating session plus the prefill
				 * chunks, shared round-robin among appenders */
	int idle_timeout;       /* seconds after which an idle session is stored
				 * and closed; 0 = never */
	int host_cache_mb;      /* host memory for the states of paged-out
				 * sessions (the host tier), MB; 0 = off */
	int request_cache;      /* remembered replies for idempotent retries */
	int contexts;           /* requests in flight on the REP socket */
} cfg;

/* Fills c with the defaults (strings NULL where there is no default). */
void cfg_init(cfg *c);

/* Frees c's strings; c may then be cfg_init()ed again. NULL is a no-op. */
void cfg_fini(cfg *c);

/* Sets key (dashes or underscores) to value, parsed and range-checked.
 * SSMD_EINVAL with a detail naming the key on an unknown key or bad value. */
int cfg_set(cfg *c, const char *key, const char *value);

/* Applies a config file (format above). SSMD_ENOENT / SSMD_EIO if it cannot
 * be read, SSMD_EFORMAT on a malformed line or JSON, SSMD_EINVAL from
 * cfg_set() (the detail names file and line). */
int cfg_load_file(cfg *c, const char *path);

/* Applies argv[1..argc-1]: first the file of `--config FILE` if present,
 * then every flag in order. SSMD_EINVAL on an unknown flag, a missing value,
 * or a positional argument. `--help` is not handled here. */
int cfg_parse_args(cfg *c, int argc, char **argv);

/* Checks the required keys and fills the derived defaults (run_dir, listen,
 * events, jobs). SSMD_EINVAL when model or store is missing, SSMD_ENOMEM.
 * Does not touch the file system. */
int cfg_finish(cfg *c);

/* Prints the flags and their defaults. */
void cfg_usage(FILE *f);

#endif
