/*
 * log.h — leveled logging to stderr for the daemon.
 *
 * One process-wide level (default info); each line is
 * `2026-01-02T03:04:05.678Z ssmd[pid] LEVEL message`. Lines are written with
 * one fprintf each, so lines of different threads never interleave.
 *
 * Thread-safety: all functions may be called from any thread; log_level_set()
 * is meant for start-up.
 */
#ifndef SSMD_LOG_H
#define SSMD_LOG_H

enum log_level {
	LOG_ERROR = 0,
	LOG_WARN = 1,
	LOG_INFO = 2,
	LOG_DEBUG = 3,
};

/* Sets the most verbose level that is printed. */
void log_level_set(int level);

/* Parses "error", "warn", "info" or "debug" (or 0..3) into *level.
 * SSMD_EINVAL (with a detail) on anything else. */
int log_level_parse(const char *s, int *level);

/* Prints one line at level (dropped when level is above the set level). */
void log_msg(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
