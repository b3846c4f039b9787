/*
 * main.c — ssmd: load the model, open the state library, serve.
 *
 * Start-up order: settings → model → tokenizer (optional) → library →
 * endpoints → scheduler → "ready" line on stderr. SIGTERM or SIGINT stops it
 * gracefully: new requests are refused, running ones end, every session with
 * unsaved progress is stored (its state ID logged), the library is closed.
 * Exit status 0 after a clean stop, 1 when start-up fails, 2 on bad usage.
 */
#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "rcache.h"
#include "scheduler.h"
#include "server.h"
#include "ssm.h"
#include "store.h"
#include "tok.h"

/* mkdir -p with mode 0700 (the run directory holds private sockets). */
static int dir_make(const char *path)
{
	char buf[4096];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(buf))
		return ssmd_err_set(SSMD_EINVAL, "bad directory '%s'", path);
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; ; p++) {
		if (*p == '/' || *p == 0) {
			char c = *p;
			*p = 0;
			if (mkdir(buf, 0700) != 0 && errno != EEXIST)
				return ssmd_err_set(SSMD_EIO, "cannot create %s: %s",
						    buf, strerror(errno));
			*p = c;
			if (!c)
				break;
		}
	}
	return SSMD_OK;
}

/* Creates the directory of an ipc:// URL's socket file. */
static int ipc_dir_make(const char *url)
{
	char path[4096];
	char *dir;

	if (strncmp(url, "ipc://", 6) != 0)
		return SSMD_OK;
	snprintf(path, sizeof(path), "%s", url + 6);
	dir = dirname(path);
	if (strcmp(dir, ".") == 0 || strcmp(dir, "/") == 0)
		return SSMD_OK;
	return dir_make(dir);
}

static const char *model_name_of(const char *dir, char *buf, size_t cap)
{
	char tmp[4096];
	size_t n;

	snprintf(tmp, sizeof(tmp), "%s", dir);
	n = strlen(tmp);
	while (n > 1 && tmp[n - 1] == '/')
		tmp[--n] = 0;
	snprintf(buf, cap, "%s", basename(tmp));
	return buf;
}

static int fail(const char *what)
{
	log_error("%s: %s", what, ssmd_errmsg());
	return 1;
}

int main(int argc, char **argv)
{
	cfg c;
	sigset_t sigs;
	ssm_model *model = NULL;
	tok_tokenizer *tok = NULL;
	store *st = NULL;
	rcache *cache = NULL;
	server *srv = NULL;
	sched *sc = NULL;
	char path[4096], name[256];
	int sig = 0, status = 1, rc;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			cfg_usage(stdout);
			return 0;
		}
		if (strcmp(argv[i], "--version") == 0) {
			printf("ssmd %s\n", SSMD_VERSION);
			return 0;
		}
	}
	cfg_init(&c);
	if (cfg_parse_args(&c, argc, argv) || cfg_finish(&c)) {
		fprintf(stderr, "ssmd: %s\n(ssmd --help lists the options)\n",
			ssmd_errmsg());
		cfg_fini(&c);
		return 2;
	}
	log_level_set(c.log_level);

	/* Signals are taken by sigwait() on this thread only: block them
	 * before any thread starts so every thread inherits the mask. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	log_info("ssmd %s: loading model %s", SSMD_VERSION, c.model);
	if (ssm_model_load(c.model, &model)) {
		status = fail("cannot load the model");
		goto out;
	}
	snprintf(path, sizeof(path), "%s/tokenizer.json", c.model);
	if (access(path, F_OK) == 0) {
		if (tok_load(path, &tok)) {
			status = fail("cannot load the tokenizer");
			goto out;
		}
	} else {
		log_warn("%s has no tokenizer.json: serving token IDs only", c.model);
	}
	store_opts sto = {.max_bytes = c.max_store_bytes};
	if (store_open(c.store, &sto, &st)) {
		status = fail("cannot open the state library");
		goto out;
	}
	/* Replies are small except exports (states, many MB), which are safe
	 * to run again; the byte budget keeps a few of those at most. */
	if (rcache_alloc((size_t)c.request_cache, 256u << 20, &cache)) {
		status = fail("request cache");
		goto out;
	}
	if ((rc = ipc_dir_make(c.listen)) || (rc = ipc_dir_make(c.events)) ||
	    (strcmp(c.jobs, "off") != 0 && (rc = ipc_dir_make(c.jobs)))) {
		status = fail("run directory");
		goto out;
	}
	struct server_opts so = {
		.listen = c.listen,
		.events = c.events,
		.jobs = c.jobs,
		.max_message = c.max_message,
		.contexts = c.contexts,
	};
	if (server_open(&so, &srv)) {
		status = fail("cannot open the endpoints");
		goto out;
	}
	struct sched_opts schedo = {
		.cfg = &c,
		.model = model,
		.tok = tok,
		.store = st,
		.model_name = model_name_of(c.model, name, sizeof(name)),
		.publish = server_publish,
		.publish_arg = srv,
	};
	if (sched_start(&schedo, &sc)) {
		status = fail("cannot start the scheduler");
		goto out;
	}
	if (server_start(srv, sc, cache)) {
		status = fail("cannot start serving");
		goto out;
	}
	log_info("model %s, backend %s, %d slots, store %s", name,
		 sched_backend_name(sc), c.slots, c.store);
	/* The line tests and scripts wait for. */
	fprintf(stderr, "ssmd ready listen=%s events=%s jobs=%s\n", c.listen,
		c.events, c.jobs);
	fflush(stderr);

	if (sigwait(&sigs, &sig) == 0)
		log_info("%s: stopping", strsignal(sig));
	status = 0;
out:
	/* Scheduler first: every job replies while the sockets are open. */
	sched_stop(sc);
	server_close(srv);
	sched_free(sc);
	rcache_free(cache);
	store_close(st);
	tok_free(tok);
	ssm_model_free(model);
	if (status == 0)
		log_info("stopped");
	cfg_fini(&c);
	return status;
}
