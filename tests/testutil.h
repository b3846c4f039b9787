/*
 * testutil.h — small helpers several ssmd test programs share, next to
 * check.h: reading a whole fixture file, a seeded random stream and removing
 * a test's temporary folder.
 *
 * Header-only (static inline), so each test program links nothing more;
 * every function is safe to call from any thread on its own arguments.
 */
#ifndef SSMD_TEST_TESTUTIL_H
#define SSMD_TEST_TESTUTIL_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static inline int test_dir_remove_one(const char *path, const struct stat *sb,
				     int type, struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	return remove(path);
}

/* Removes dir and everything below it (without following links), as
 * `rm -rf` does; prints a line to stderr and returns -1 when something could
 * not be removed, 0 otherwise. */
static inline int test_dir_remove(const char *dir)
{
	if (nftw(dir, test_dir_remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0) {
		fprintf(stderr, "could not remove %s\n", dir);
		return -1;
	}
	return 0;
}

/* The whole file at path in a malloc'd buffer with one NUL byte after its
 * end (so a text file reads as a string); *len, when len is not NULL, gets
 * the file's size without that NUL. NULL when the file cannot be opened or
 * read, or memory runs out. */
static inline void *test_file_read(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;

	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
	    fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) &&
	    fread(buf, 1, (size_t)n, f) == (size_t)n) {
		buf[n] = '\0';
		if (len)
			*len = (size_t)n;
	} else {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

/* splitmix64 (Steele, Lea, Flood 2014): advances *state by the golden
 * ratio 0x9e3779b97f4a7c15 and returns the mixed value. Any seed,
 * 0 included, gives a full-period stream of well-mixed 64-bit outputs. */
static inline uint64_t test_splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

#endif
