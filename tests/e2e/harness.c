/*
 * harness.c — daemons, models and temporary files for the end-to-end tests.
 * See harness.h.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

static char tmpdir[E2E_PATH_MAX];
static char text_model[E2E_PATH_MAX];
static pid_t owner_pid;

/* Daemons started and not yet reaped, for the fatal-signal handler. */
#define MAX_DAEMONS 8
static e2e_daemon *volatile running[MAX_DAEMONS];

/* Async-signal-safe: writes a string to stderr. */
static void say(const char *s)
{
	ssize_t r = write(2, s, strlen(s));
	(void)r;
}

/* On a watchdog alarm or a kill by the test runner: print every running
 * daemon's log (the test is stuck: the log says where), kill the daemons so
 * none outlives the test, and exit failed. Uses only async-signal-safe
 * calls. */
static void on_fatal_signal(int sig)
{
	char buf[4096];

	say(sig == SIGALRM ? "\ne2e: watchdog expired, the test is stuck"
			   : "\ne2e: killed");
	say("; its files are kept in ");
	say(tmpdir);
	say("\n");
	for (int i = 0; i < MAX_DAEMONS; i++) {
		e2e_daemon *d = running[i];
		if (!d || d->pid <= 0)
			continue;
		say("---- ");
		say(d->log);
		say("\n");
		int fd = open(d->log, O_RDONLY);
		if (fd >= 0) {
			ssize_t n;
			while ((n = read(fd, buf, sizeof buf)) > 0) {
				ssize_t w = write(2, buf, (size_t)n);
				(void)w;
			}
			close(fd);
		}
		kill(d->pid, SIGKILL);
	}
	_exit(1);
}

/* The watchdog fires before meson's 300 s test timeout. */
#define WATCHDOG_S 270

static void watchdog_arm(void)
{
	static int armed;
	struct sigaction sa;

	if (armed)
		return;
	armed = 1;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_fatal_signal;
	sa.sa_flags = SA_RESETHAND; /* a second signal is not handled again */
	sigaction(SIGALRM, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	alarm(WATCHDOG_S);
}

static void running_set(e2e_daemon *d, int on)
{
	for (int i = 0; i < MAX_DAEMONS; i++) {
		if (on && !running[i]) {
			running[i] = d;
			return;
		}
		if (!on && running[i] == d) {
			running[i] = NULL;
			return;
		}
	}
}

static void die(const char *fmt, const char *arg)
{
	fprintf(stderr, "e2e harness: ");
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(1);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	remove(path);
	return 0;
}

static void tmpdir_remove(void)
{
	/* Only the process that made it (not a forked child) cleans up. */
	if (tmpdir[0] && getpid() == owner_pid && !getenv("SSMD_KEEP_TMP"))
		nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *e2e_tmpdir(void)
{
	if (!tmpdir[0]) {
		const char *base = getenv("TMPDIR");
		/* ipc socket paths are limited to ~107 bytes: keep it short. */
		snprintf(tmpdir, sizeof tmpdir, "%s/ssmd-e2e.XXXXXX",
			 base && *base && strlen(base) < 40 ? base : "/tmp");
		if (!mkdtemp(tmpdir))
			die("mkdtemp: %s", strerror(errno));
		owner_pid = getpid();
		atexit(tmpdir_remove);
	}
	return tmpdir;
}

void e2e_build_path(const char *rel, char *out, size_t cap)
{
	const char *root = getenv("SSMD_BUILD_ROOT");

	if (!root || !*root)
		die("%s", "SSMD_BUILD_ROOT is not set (run through meson test)");
	snprintf(out, cap, "%s/%s", root, rel);
}

int e2e_have_daemon(void)
{
	char ssmd[E2E_PATH_MAX], mkmodel[E2E_PATH_MAX];

	e2e_build_path("daemon/ssmd", ssmd, sizeof ssmd);
	e2e_build_path("kernels/ssm-mkmodel", mkmodel, sizeof mkmodel);
	return access(ssmd, X_OK) == 0 && access(mkmodel, X_OK) == 0;
}

const char *e2e_tiny_model(void)
{
	static char path[E2E_PATH_MAX];
	const char *fx = getenv("SSMD_SHARED_FIXTURES");

	if (!fx || !*fx)
		die("%s", "SSMD_SHARED_FIXTURES is not set (run through meson test)");
	snprintf(path, sizeof path, "%s/tiny-mamba", fx);
	return path;
}

/* Runs argv (a NULL-terminated vector), stdout and stderr to log; returns its
 * exit status or -1. */
static int run_wait(char *const argv[], const char *log)
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		execv(argv[0], argv);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void print_log(const char *log)
{
	char line[1024];
	FILE *f = fopen(log, "r");

	if (!f)
		return;
	fprintf(stderr, "---- %s\n", log);
	while (fgets(line, sizeof line, f))
		fputs(line, stderr);
	fprintf(stderr, "----\n");
	fclose(f);
}

const char *e2e_text_model(void)
{
	char tool[E2E_PATH_MAX], tokenizer[E2E_PATH_MAX], log[E2E_PATH_MAX];
	const char *fx = getenv("SSMD_SHARED_FIXTURES");

	if (text_model[0])
		return text_model;
	if (!fx || !*fx)
		die("%s", "SSMD_SHARED_FIXTURES is not set (run through meson test)");
	e2e_build_path("kernels/ssm-mkmodel", tool, sizeof tool);
	snprintf(tokenizer, sizeof tokenizer,
		 "%s/../models/gpt-neox-20b-tokenizer.json", fx);
	snprintf(text_model, sizeof text_model, "%s/text-model", e2e_tmpdir());
	snprintf(log, sizeof log, "%s/mkmodel.log", e2e_tmpdir());
	char *argv[] = {tool, "--out", text_model, "--d-model", "64",
			"--n-layer", "2", "--vocab", "50280", "--seed", "11",
			"--tokenizer", tokenizer, NULL};
	if (run_wait(argv, log) != 0) {
		print_log(log);
		die("%s failed", tool);
	}
	return text_model;
}

void e2e_daemon_init(e2e_daemon *d, const char *name, const char *model)
{
	memset(d, 0, sizeof *d);
	snprintf(d->name, sizeof d->name, "%s", name);
	snprintf(d->model, sizeof d->model, "%s", model);
	snprintf(d->store, sizeof d->store, "%s/%s.db", e2e_tmpdir(), name);
	snprintf(d->url, sizeof d->url, "ipc://%s/%s.sock", e2e_tmpdir(), name);
	snprintf(d->events, sizeof d->events, "ipc://%s/%s-events.sock",
		 e2e_tmpdir(), name);
	snprintf(d->log, sizeof d->log, "%s/%s.log", e2e_tmpdir(), name);
	/* Sockets the test does not name (the daemon's defaults) go in a run
	 * directory of the daemon's own, so that daemons never collide. */
	snprintf(d->run_dir, sizeof d->run_dir, "%s/%s-run", e2e_tmpdir(), name);
	if (mkdir(d->run_dir, 0700) != 0 && errno != EEXIST)
		die("mkdir: %s", strerror(errno));
}

int e2e_daemon_start(e2e_daemon *d)
{
	char bin[E2E_PATH_MAX];
	char *argv[40];
	int n = 0, status;

	e2e_build_path("daemon/ssmd", bin, sizeof bin);
	argv[n++] = bin;
	argv[n++] = "--model";
	argv[n++] = d->model;
	argv[n++] = "--store";
	argv[n++] = d->store;
	argv[n++] = "--listen";
	argv[n++] = d->url;
	argv[n++] = "--events";
	argv[n++] = d->events;
	argv[n++] = "--run-dir";
	argv[n++] = d->run_dir;
	argv[n++] = "--backend";
	argv[n++] = "cpu";
	argv[n++] = "--threads";
	argv[n++] = "1";
	for (int i = 0; i < 8 && d->extra[i]; i++)
		argv[n++] = (char *)d->extra[i];
	argv[n] = NULL;

	watchdog_arm();
	d->pid = fork();
	if (d->pid < 0) {
		d->pid = 0;
		perror("fork");
		return -1;
	}
	if (d->pid == 0) {
		/* The daemon dies with the test, whatever kills the test. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		execv(bin, argv);
		_exit(127);
	}
	running_set(d, 1);

	for (int64_t until = e2e_now_ms() + 60000; e2e_now_ms() < until;) {
		ssmd_client *c;
		ssmd_info info;
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			fprintf(stderr, "ssmd %s exited at start (status %d)\n",
				d->name, status);
			print_log(d->log);
			running_set(d, 0);
			d->pid = 0;
			return -1;
		}
		if (e2e_connect(d, 2000, &c) == SSMD_OK) {
			int rc = ssmd_info_get(c, &info);
			ssmd_client_close(c);
			if (rc == SSMD_OK)
				return 0;
		}
		usleep(50 * 1000);
	}
	fprintf(stderr, "ssmd %s did not answer within 60 s\n", d->name);
	print_log(d->log);
	e2e_daemon_kill(d);
	return -1;
}

int e2e_daemon_stop(e2e_daemon *d)
{
	int status;

	if (!d->pid)
		return -1;
	kill(d->pid, SIGTERM);
	for (int64_t until = e2e_now_ms() + 60000; e2e_now_ms() < until;) {
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			running_set(d, 0);
			d->pid = 0;
			if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
				return 0;
			fprintf(stderr, "ssmd %s exited with status %d\n",
				d->name, status);
			print_log(d->log);
			return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		}
		usleep(20 * 1000);
	}
	fprintf(stderr, "ssmd %s ignored SIGTERM for 60 s\n", d->name);
	print_log(d->log);
	e2e_daemon_kill(d);
	return -1;
}

void e2e_daemon_kill(e2e_daemon *d)
{
	pid_t pid = d->pid;

	if (!pid)
		return;
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	running_set(d, 0);
	d->pid = 0;
}

int e2e_connect(const e2e_daemon *d, int timeout_ms, ssmd_client **out)
{
	ssmd_client_opts o;

	ssmd_client_opts_init(&o);
	o.url = d->url;
	o.events_url = d->events;
	o.timeout_ms = timeout_ms ? timeout_ms : 120000;
	o.connect_timeout_ms = 1000;
	return ssmd_client_open(&o, out);
}

int e2e_raw_call(const e2e_daemon *d, const void *buf, size_t len,
		 int timeout_ms, void **reply, size_t *reply_len)
{
	nng_socket s;
	nng_msg *msg = NULL;
	int rv, rc = SSMD_OK;

	if (nng_req0_open(&s) != 0)
		return SSMD_EIO;
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, timeout_ms);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, timeout_ms);
	if ((rv = nng_dial(s, d->url, NULL, 0)) != 0) {
		rc = SSMD_ECLOSED;
		goto done;
	}
	if ((rv = nng_send(s, (void *)buf, len, 0)) != 0) {
		rc = rv == NNG_ETIMEDOUT ? SSMD_ETIMEDOUT : SSMD_EIO;
		goto done;
	}
	if ((rv = nng_recvmsg(s, &msg, 0)) != 0) {
		rc = rv == NNG_ETIMEDOUT ? SSMD_ETIMEDOUT : SSMD_EIO;
		goto done;
	}
	*reply_len = nng_msg_len(msg);
	*reply = malloc(*reply_len ? *reply_len : 1);
	if (!*reply)
		rc = SSMD_ENOMEM;
	else
		memcpy(*reply, nng_msg_body(msg), *reply_len);
	nng_msg_free(msg);
done:
	nng_close(s);
	return rc;
}

void e2e_random(void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t r = getrandom((char *)buf + got, len - got, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			die("getrandom: %s", strerror(errno));
		}
		got += (size_t)r;
	}
}

int64_t e2e_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
