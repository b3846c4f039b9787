/*
 * harness.h — what every end-to-end test needs: a private temporary
 * directory, test models, and ssmd daemons started and stopped by the test on
 * private ipc sockets and stores.
 *
 * Binaries are found under $SSMD_BUILD_ROOT (daemon/ssmd, kernels/ssm-mkmodel,
 * client/ssmctl), fixtures under $SSMD_SHARED_FIXTURES; meson's test_env sets
 * both. A daemon's stderr goes to a log file in the temporary directory and is
 * printed when it fails to start or exits badly. The temporary directory is
 * removed at exit unless $SSMD_KEEP_TMP is set.
 *
 * Single-threaded use except where a function says otherwise; aborts the test
 * (exit 1 with a message) when the environment is unusable.
 */
#ifndef SSMD_E2E_HARNESS_H
#define SSMD_E2E_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ssmd.h"

#define E2E_PATH_MAX 512

typedef struct e2e_daemon {
	pid_t pid;                   /* 0 when not running */
	char name[32];               /* for messages and file names */
	char model[E2E_PATH_MAX];
	char store[E2E_PATH_MAX];
	char url[E2E_PATH_MAX];      /* request endpoint */
	char events[E2E_PATH_MAX];   /* events endpoint */
	char log[E2E_PATH_MAX];      /* the daemon's stderr */
	char run_dir[E2E_PATH_MAX];  /* its own run directory (other sockets) */
	const char *extra[8];        /* more ssmd arguments, NULL-terminated */
} e2e_daemon;

/* 1 when the daemon and the model tool are built (the daemon lands after
 * the client in the tree); the test then skips (exit 77) otherwise. */
int e2e_have_daemon(void);

/* The test's private temporary directory (created on first use). */
const char *e2e_tmpdir(void);

/* Path of a file in the build tree ($SSMD_BUILD_ROOT/rel) written into out. */
void e2e_build_path(const char *rel, char *out, size_t cap);

/* tests/fixtures/reference/tiny-mamba: a model without tokenizer (token IDs only). */
const char *e2e_tiny_model(void);

/* A small random-weight model with the GPT-NeoX tokenizer, made once per test
 * program with ssm-mkmodel (d_model 64, 2 layers, vocab 50280). */
const char *e2e_text_model(void);

/* Prepares d to serve model with its store (name.db), sockets and log in the
 * temporary directory, named after name (one name per daemon of a test; a
 * daemon restarted under the same name finds its store again). Extra ssmd
 * arguments may be put in d->extra before e2e_daemon_start(). */
void e2e_daemon_init(e2e_daemon *d, const char *name, const char *model);

/* Starts ssmd and waits until it answers info (up to 60 s). Returns 0, or -1
 * with the reason printed (daemon log included). */
int e2e_daemon_start(e2e_daemon *d);

/* SIGTERM, then waits up to 60 s for exit (SIGKILL after). Returns the exit
 * status (0 = clean exit) or -1 when it had to be killed or died of a
 * signal. */
int e2e_daemon_stop(e2e_daemon *d);

/* SIGKILL and reap: a crash. Safe from another thread while the main thread
 * talks to the daemon. */
void e2e_daemon_kill(e2e_daemon *d);

/* Opens a client of d with a reply timeout of timeout_ms (0: 120 s). */
int e2e_connect(const e2e_daemon *d, int timeout_ms, ssmd_client **out);

/* Sends raw bytes as one request on a fresh REQ socket and waits up to
 * timeout_ms for the reply, which is written (malloc'd) to *reply, its size to
 * *reply_len.
 * Returns 0, or an SSMD_E* code (SSMD_ETIMEDOUT when no reply came). */
int e2e_raw_call(const e2e_daemon *d, const void *buf, size_t len,
		 int timeout_ms, void **reply, size_t *reply_len);

/* Random bytes from the OS. */
void e2e_random(void *buf, size_t len);

/* Milliseconds on a monotonic clock. */
int64_t e2e_now_ms(void);

#endif
