/*
 * test_config.c — settings from flags, key = value files and JSON files:
 * precedence, range checks, clear errors, derived defaults.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "testutil.h"
#include "daemon/config.h"
#include "daemon/log.h"
#include "ssmd_err.h"

static char dir[] = "/tmp/ssmd-test-config-XXXXXX";

static char *write_file(const char *name, const char *text)
{
	static char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	return path;
}

int main(void)
{
	cfg c;
	char *path;

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}

	/* Flags, both spellings, dashes or underscores. */
	cfg_init(&c);
	char *argv1[] = {"ssmd", "--model", "m", "--store=s.db", "--slots", "3",
			 "--checkpoint_every=100", "--log-level", "debug",
			 "--backend", "cpu", NULL};
	CHECK_RC(cfg_parse_args(&c, 11, argv1), SSMD_OK);
	CHECK(strcmp(c.model, "m") == 0 && strcmp(c.store, "s.db") == 0,
	      "model and store from flags");
	CHECK(c.slots == 3 && c.checkpoint_every == 100, "integers from flags");
	CHECK(c.log_level == LOG_DEBUG, "log level from a flag");
	unsetenv("XDG_RUNTIME_DIR");
	CHECK_RC(cfg_finish(&c), SSMD_OK);
	CHECK(strcmp(c.run_dir, "run") == 0, "run dir defaults to ./run without XDG");
	CHECK(strcmp(c.listen, "ipc://run/ssmd.sock") == 0, "listen default: %s",
	      c.listen);
	CHECK(strcmp(c.events, "ipc://run/ssmd-events.sock") == 0,
	      "events default: %s", c.events);
	CHECK(strcmp(c.jobs, "ipc://run/ssmd-jobs.sock") == 0, "jobs default: %s",
	      c.jobs);
	cfg_fini(&c);

	/* The other sockets sit beside an ipc listen socket; a network listen
	 * address leaves events in the run directory and jobs off. */
	cfg_init(&c);
	cfg_set(&c, "model", "m");
	cfg_set(&c, "store", "s");
	cfg_set(&c, "run_dir", "/r");
	cfg_set(&c, "listen", "ipc:///x/a.sock");
	CHECK_RC(cfg_finish(&c), SSMD_OK);
	CHECK(strcmp(c.events, "ipc:///x/a-events.sock") == 0 &&
	      strcmp(c.jobs, "ipc:///x/a-jobs.sock") == 0,
	      "siblings of ipc:///x/a.sock: %s %s", c.events, c.jobs);
	cfg_fini(&c);
	cfg_init(&c);
	cfg_set(&c, "model", "m");
	cfg_set(&c, "store", "s");
	cfg_set(&c, "run_dir", "/r");
	cfg_set(&c, "listen", "tcp://127.0.0.1:7000");
	CHECK_RC(cfg_finish(&c), SSMD_OK);
	CHECK(strcmp(c.events, "ipc:///r/ssmd-events.sock") == 0 &&
	      strcmp(c.jobs, "off") == 0, "tcp listen: %s %s", c.events, c.jobs);
	cfg_fini(&c);

	/* XDG_RUNTIME_DIR is honoured. */
	cfg_init(&c);
	setenv("XDG_RUNTIME_DIR", "/xdg", 1);
	cfg_set(&c, "model", "m");
	cfg_set(&c, "store", "s");
	CHECK_RC(cfg_finish(&c), SSMD_OK);
	CHECK(strcmp(c.listen, "ipc:///xdg/ssmd/ssmd.sock") == 0, "XDG listen: %s",
	      c.listen);
	cfg_fini(&c);

	/* Bad flags and values. */
	cfg_init(&c);
	char *argv2[] = {"ssmd", "--slots", "0", NULL};
	CHECK_RC(cfg_parse_args(&c, 3, argv2), SSMD_EINVAL);
	CHECK(strstr(ssmd_errmsg(), "slots") != NULL, "message names the key: %s",
	      ssmd_errmsg());
	char *argv3[] = {"ssmd", "--no-such-flag", "1", NULL};
	CHECK_RC(cfg_parse_args(&c, 3, argv3), SSMD_EINVAL);
	char *argv4[] = {"ssmd", "--slots", NULL};
	CHECK_RC(cfg_parse_args(&c, 2, argv4), SSMD_EINVAL);
	char *argv5[] = {"ssmd", "stray", NULL};
	CHECK_RC(cfg_parse_args(&c, 2, argv5), SSMD_EINVAL);
	CHECK_RC(cfg_set(&c, "slots", "12abc"), SSMD_EINVAL);
	CHECK_RC(cfg_set(&c, "slots", "99999999999999999999"), SSMD_EINVAL);
	CHECK_RC(cfg_set(&c, "backend", "tpu"), SSMD_EINVAL);
	CHECK_RC(cfg_set(&c, "log_level", "loud"), SSMD_EINVAL);
	CHECK_RC(cfg_set(&c, "model", ""), SSMD_EINVAL);
	CHECK_RC(cfg_finish(&c), SSMD_EINVAL); /* no model */
	cfg_fini(&c);

	/* key = value file; flags override it wherever they stand. */
	path = write_file("a.conf",
			  "# ssmd settings\n"
			  "model = /models/x   # trailing comment\n"
			  "\n"
			  "store = \"lib # not a comment.db\"\n"
			  "slots=5\n"
			  "max-generate-tokens = 77\n");
	cfg_init(&c);
	char *argv6[] = {"ssmd", "--slots", "9", "--config", path, NULL};
	CHECK_RC(cfg_parse_args(&c, 5, argv6), SSMD_OK);
	CHECK(c.model && strcmp(c.model, "/models/x") == 0, "model from file: %s",
	      c.model ? c.model : "(null)");
	CHECK(c.store && strcmp(c.store, "lib # not a comment.db") == 0,
	      "quoted value keeps '#': %s", c.store ? c.store : "(null)");
	CHECK(c.slots == 9, "flag beats file: slots %d", c.slots);
	CHECK(c.max_generate_tokens == 77, "dashes in file keys");
	cfg_fini(&c);

	/* JSON file. */
	path = write_file("b.json", " {\"model\": \"m\", \"slots\": 6, \"log_level\": \"warn\"}");
	cfg_init(&c);
	CHECK_RC(cfg_load_file(&c, path), SSMD_OK);
	CHECK(c.slots == 6 && c.log_level == LOG_WARN, "JSON settings applied");
	cfg_fini(&c);

	/* Malformed files: clear codes, the message names file and line. */
	cfg_init(&c);
	path = write_file("c.conf", "model = m\nslots 4\n");
	CHECK_RC(cfg_load_file(&c, path), SSMD_EFORMAT);
	CHECK(strstr(ssmd_errmsg(), ":2:") != NULL, "line number in message: %s",
	      ssmd_errmsg());
	path = write_file("d.conf", "slots = -1\n");
	CHECK_RC(cfg_load_file(&c, path), SSMD_EINVAL);
	path = write_file("e.json", "{\"slots\": [1]}");
	CHECK_RC(cfg_load_file(&c, path), SSMD_EFORMAT);
	path = write_file("f.json", "{\"slots\": 4");
	CHECK_RC(cfg_load_file(&c, path), SSMD_EFORMAT);
	path = write_file("g.conf", "store = \"open\n");
	CHECK_RC(cfg_load_file(&c, path), SSMD_EFORMAT);
	CHECK_RC(cfg_load_file(&c, "/nonexistent/ssmd.conf"), SSMD_ENOENT);
	cfg_fini(&c);
	cfg_fini(NULL);

	/* The state library's size limit: none by default, any byte count
	 * that fits int64, never negative. */
	cfg_init(&c);
	CHECK(c.max_store_bytes == 0, "no store size limit by default");
	CHECK_RC(cfg_set(&c, "max-store-bytes", "1073741824"), SSMD_OK);
	CHECK(c.max_store_bytes == 1073741824ull, "store size limit from a flag");
	CHECK_RC(cfg_set(&c, "max_store_bytes", "-1"), SSMD_EINVAL);
	CHECK_RC(cfg_set(&c, "max_store_bytes", "99999999999999999999"), SSMD_EINVAL);
	cfg_fini(&c);

	CHECK(test_dir_remove(dir) == 0, "cleanup");
	return check_summary("config");
}
