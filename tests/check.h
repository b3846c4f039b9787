/*
 * check.h — the tiny assertion kit every ssmd test program uses.
 *
 * CHECK(cond, fmt, ...) counts a passed or failed check and prints failures
 * with file and line; a test program ends with `return check_summary("suite");`
 * which prints the last line `suite: N passed, N failed[, N skipped]` and
 * returns the exit status (0, 1, or 77 when everything was skipped).
 */
#ifndef SSMD_TEST_CHECK_H
#define SSMD_TEST_CHECK_H

#include <stdio.h>

static int check_passed, check_failed, check_skipped;

#define CHECK(cond, ...)                                                  \
	do {                                                              \
		if (cond) {                                               \
			check_passed++;                                   \
		} else {                                                  \
			check_failed++;                                   \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__);                     \
			fputc('\n', stderr);                              \
		}                                                         \
	} while (0)

/* CHECK_RC(expr, expected): expr returns an ssmd error code. */
#define CHECK_RC(expr, want)                                              \
	do {                                                              \
		int check_rc_ = (expr);                                   \
		CHECK(check_rc_ == (want), "%s = %d (%s), want %d", #expr, \
		      check_rc_, ssmd_errmsg(), (int)(want));             \
	} while (0)

#define SKIP(...)                                                         \
	do {                                                              \
		check_skipped++;                                          \
		fprintf(stderr, "SKIP: ");                                \
		fprintf(stderr, __VA_ARGS__);                             \
		fputc('\n', stderr);                                      \
	} while (0)

static inline int check_summary(const char *suite)
{
	if (check_skipped)
		printf("%s: %d passed, %d failed, %d skipped\n", suite,
		       check_passed, check_failed, check_skipped);
	else
		printf("%s: %d passed, %d failed\n", suite, check_passed,
		       check_failed);
	fflush(stdout);
	if (check_failed)
		return 1;
	if (check_skipped && !check_passed)
		return 77;
	return 0;
}

#endif
