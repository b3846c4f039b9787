/*
 * ssmd_err.h — error codes shared by every ssmd module and carried on the wire.
 *
 * Every function in ssmd returns int: 0 (SSMD_OK) or one of the positive codes
 * below. The numeric values travel in protocol replies, so codes are only ever
 * appended, never renumbered or reused.
 *
 * Alongside the code, a function that fails may record a human-readable detail
 * (which file, which tensor, which ID) with ssmd_err_set(); the detail is kept
 * per thread and read back with ssmd_errmsg(). The detail is advisory: callers
 * decide on the code alone.
 *
 * Thread-safety: all functions are safe from any thread; the detail buffer is
 * thread-local.
 */
#ifndef SSMD_ERR_H
#define SSMD_ERR_H

#include <stddef.h>

enum ssmd_err {
	SSMD_OK = 0,
	SSMD_ENOMEM = 1,      /* out of memory */
	SSMD_EINVAL = 2,      /* invalid argument or parameter */
	SSMD_EIO = 3,         /* operating-system I/O error */
	SSMD_ENOENT = 4,      /* file, state, tag or session not found */
	SSMD_EFORMAT = 5,     /* malformed file or message */
	SSMD_ECORRUPT = 6,    /* checksum mismatch: stored data is corrupt */
	SSMD_EMODEL = 7,      /* state or request belongs to another model */
	SSMD_ENOSPC = 8,      /* disk or store full */
	SSMD_EBUSY = 9,       /* resource busy or queue full; retry later */
	SSMD_ERANGE = 10,     /* a value or size exceeds a limit */
	SSMD_EUNSUPPORTED = 11, /* feature not supported by this build/model */
	SSMD_EEXIST = 12,     /* object already exists, or is still referenced */
	SSMD_EDEVICE = 13,    /* GPU or backend failure */
	SSMD_EPROTO = 14,     /* protocol violation (unknown operation, bad version) */
	SSMD_ETIMEDOUT = 15,  /* operation timed out */
	SSMD_ECLOSED = 16,    /* object closed or shutting down */
	SSMD_ESTORE = 17,     /* state library (database) error */
	SSMD_ENOTOK = 18,     /* operation needs a tokenizer and the model has none */
	SSMD_EEMPTY = 19,     /* session has consumed no tokens */
	SSMD_ECANCELED = 20,  /* operation canceled */
	SSMD_ERR_COUNT        /* one past the last code; append above this line */
};

/* Returns a static, human-readable name for code (never NULL). */
const char *ssmd_strerror(int code);

/* Records a printf-style detail for the calling thread and returns code, so a
 * failure path reads `return ssmd_err_set(SSMD_EFORMAT, "%s: ...", path);`. */
int ssmd_err_set(int code, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The detail recorded last by this thread, or ssmd_strerror() of the last code
 * if none was given; "" if nothing was recorded. Valid until the next
 * ssmd_err_set() on this thread. */
const char *ssmd_errmsg(void);

/* Forgets this thread's detail. */
void ssmd_err_clear(void);

#endif
