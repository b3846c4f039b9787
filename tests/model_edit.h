/*
 * model_edit.h — test helpers that make edited copies of a model folder:
 * writing a file whole, copying a folder into a fresh temporary one, and
 * reading and writing model.safetensors as its header (JSON) and data.
 *
 * Header-only (static inline) like testutil.h, which it needs; the caller
 * links cJSON. Every function is safe to call from any thread on its own
 * arguments.
 */
#ifndef SSMD_TEST_MODEL_EDIT_H
#define SSMD_TEST_MODEL_EDIT_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "testutil.h"

/* Writes len bytes of data as the whole file at path: 1 on success. */
static inline int spew(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	int ok = f && fwrite(data, 1, len, f) == len;

	if (f && fclose(f) != 0)
		ok = 0;
	return ok;
}

/* Copies the files of folder src (not its dot files or subfolders' insides)
 * into a new folder under $TMPDIR (or /tmp), whose path goes to dst (256
 * bytes): 1 on success. dst is "" when no folder was made; otherwise the
 * caller removes it (test_dir_remove), on failure too. */
static inline int copy_dir(const char *src, char *dst /* cap 256 */)
{
	const char *tmp = getenv("TMPDIR");
	DIR *d;
	struct dirent *e;
	char ps[4400], pd[4400];

	/* mkdtemp replaces the name's last six characters */
	if (snprintf(dst, 256, "%s/ssm_model_XXXXXX", tmp && *tmp ? tmp : "/tmp") >= 256 ||
	    !mkdtemp(dst)) {
		dst[0] = '\0';
		return 0;
	}
	d = opendir(src);
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		size_t len;
		char *buf;
		if (e->d_name[0] == '.')
			continue;
		snprintf(ps, sizeof ps, "%s/%s", src, e->d_name);
		snprintf(pd, sizeof pd, "%s/%s", dst, e->d_name);
		buf = test_file_read(ps, &len);
		if (!buf || !spew(pd, buf, len)) {
			free(buf);
			closedir(d);
			return 0;
		}
		free(buf);
	}
	closedir(d);
	return 1;
}

/* The safetensors file of dir, split into header JSON and data. */
typedef struct st_file {
	cJSON *hdr;
	char *data;
	size_t data_len;
} st_file;

/* Frees what st_read put into f (an empty f too) and empties it. */
static inline void st_free(st_file *f)
{
	cJSON_Delete(f->hdr);
	free(f->data);
	f->hdr = NULL;
	f->data = NULL;
	f->data_len = 0;
}

/* Reads dir/model.safetensors into f: 1 on success (then st_free(f)); 0,
 * with f empty, when the file is missing, shorter than its header length
 * says, its header is not JSON, or memory runs out. */
static inline int st_read(const char *dir, st_file *f)
{
	char path[4096];
	size_t len;
	char *buf;
	uint64_t hl = 0;

	f->hdr = NULL;
	f->data = NULL;
	f->data_len = 0;
	snprintf(path, sizeof path, "%s/model.safetensors", dir);
	buf = test_file_read(path, &len);
	if (!buf)
		return 0;
	for (int i = 0; len >= 8 && i < 8; i++)
		hl |= (uint64_t)(uint8_t)buf[i] << (8 * i);
	if (len < 8 || hl > len - 8) { /* no room for the header it names */
		free(buf);
		return 0;
	}
	f->hdr = cJSON_ParseWithLength(buf + 8, (size_t)hl);
	f->data_len = len - 8 - (size_t)hl;
	f->data = malloc(f->data_len ? f->data_len : 1);
	if (f->hdr && f->data)
		memcpy(f->data, buf + 8 + hl, f->data_len);
	free(buf);
	if (!f->hdr || !f->data) {
		st_free(f);
		return 0;
	}
	return 1;
}

/* Writes f as dir/model.safetensors: 1 on success. */
static inline int st_write(const char *dir, const st_file *f)
{
	char path[4096];
	char *h = cJSON_PrintUnformatted(f->hdr);
	size_t hl;
	uint8_t len8[8];
	FILE *fp;
	int ok;

	if (!h)
		return 0;
	hl = strlen(h);
	snprintf(path, sizeof path, "%s/model.safetensors", dir);
	for (int i = 0; i < 8; i++)
		len8[i] = (uint8_t)((uint64_t)hl >> (8 * i));
	fp = fopen(path, "wb");
	ok = fp && fwrite(len8, 1, 8, fp) == 8 && fwrite(h, 1, hl, fp) == hl &&
	     fwrite(f->data, 1, f->data_len, fp) == f->data_len;
	if (fp)
		fclose(fp);
	free(h);
	return ok;
}

/* Tensor `name` of f if its dtype is F32: its first element, its element
 * count into *n and its first dimension into *rows. NULL otherwise. */
static inline float *st_f32(const st_file *f, const char *name, size_t *n, size_t *rows)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(f->hdr, name);
	const cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
	const cJSON *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
	const cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
	double b, e;

	if (!cJSON_IsString(dt) || strcmp(dt->valuestring, "F32") || !cJSON_IsArray(sh) ||
	    cJSON_GetArraySize(sh) < 1 || !cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
	    !cJSON_IsNumber(cJSON_GetArrayItem(off, 0)) ||
	    !cJSON_IsNumber(cJSON_GetArrayItem(off, 1)))
		return NULL;
	b = cJSON_GetArrayItem(off, 0)->valuedouble;
	e = cJSON_GetArrayItem(off, 1)->valuedouble;
	if (!(b >= 0 && b <= e && e <= (double)f->data_len))
		return NULL;
	*n = (size_t)(e - b) / sizeof(float);
	*rows = (size_t)cJSON_GetArrayItem(sh, 0)->valuedouble;
	return (float *)(f->data + (size_t)b);
}

#endif
