#include "ssmd_err.h"

#include <stdarg.h>
#include <stdio.h>

static const char *const names[SSMD_ERR_COUNT] = {
	[SSMD_OK] = "success",
	[SSMD_ENOMEM] = "out of memory",
	[SSMD_EINVAL] = "invalid argument",
	[SSMD_EIO] = "I/O error",
	[SSMD_ENOENT] = "not found",
	[SSMD_EFORMAT] = "malformed input",
	[SSMD_ECORRUPT] = "data corrupt (checksum mismatch)",
	[SSMD_EMODEL] = "belongs to another model",
	[SSMD_ENOSPC] = "no space left",
	[SSMD_EBUSY] = "busy, try again",
	[SSMD_ERANGE] = "limit exceeded",
	[SSMD_EUNSUPPORTED] = "not supported",
	[SSMD_EEXIST] = "already exists or still referenced",
	[SSMD_EDEVICE] = "device error",
	[SSMD_EPROTO] = "protocol error",
	[SSMD_ETIMEDOUT] = "timed out",
	[SSMD_ECLOSED] = "closed",
	[SSMD_ESTORE] = "state library error",
	[SSMD_ENOTOK] = "model has no tokenizer",
	[SSMD_EEMPTY] = "session has consumed no tokens",
	[SSMD_ECANCELED] = "canceled",
};

static _Thread_local char detail[512];
static _Thread_local int detail_code;

const char *ssmd_strerror(int code)
{
	if (code < 0 || code >= SSMD_ERR_COUNT || !names[code])
		return "unknown error";
	return names[code];
}

int ssmd_err_set(int code, const char *fmt, ...)
{
	va_list ap;

	detail_code = code;
	if (!fmt) {
		detail[0] = '\0';
		return code;
	}
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	return code;
}

const char *ssmd_errmsg(void)
{
	if (detail[0])
		return detail;
	return detail_code ? ssmd_strerror(detail_code) : "";
}

void ssmd_err_clear(void)
{
	detail[0] = '\0';
	detail_code = 0;
}
