/*
 * log.c — leveled logging to stderr.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ssmd_err.h"

static atomic_int log_level = LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_level_set(int level)
{
	atomic_store(&log_level, level);
}

int log_level_parse(const char *s, int *level)
{
	for (int i = 0; i <= LOG_DEBUG; i++) {
		if (strcasecmp(s, level_names[i]) == 0 ||
		    (s[0] == '0' + i && s[1] == 0)) {
			*level = i;
			return SSMD_OK;
		}
	}
	return ssmd_err_set(SSMD_EINVAL,
			    "log level '%s' is not one of error, warn, info, debug",
			    s);
}

void log_msg(int level, const char *fmt, ...)
{
	char msg[2048];
	char stamp[32];
	struct timespec ts;
	struct tm tm;
	va_list ap;

	if (level > atomic_load(&log_level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(stderr, "%s.%03ldZ ssmd[%ld] %-5s %s\n", stamp,
		ts.tv_nsec / 1000000, (long)getpid(), level_names[level], msg);
}
