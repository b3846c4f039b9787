/*
 * export.c — the state library's single-file export format (layout in
 * store.h): serializing a state with its metadata, whole transcript and
 * stored payload, and importing such bytes into another library.
 */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "codec.h"
#include "ssm_state.h"
#include "store.h"
#include "store_impl.h"

static const uint8_t export_magic[8] = { 'S', 'S', 'M', 'D', 'S', 'T', 'X', '\n' };
#define EXPORT_VERSION 1
/* The JSON document holds at most a label, two JSON texts of
 * STORE_METADATA_MAX and a few numbers. */
#define EXPORT_JSON_MAX (4 * STORE_METADATA_MAX)
/* Whole files read by store_import_file(). */
#define EXPORT_FILE_MAX ((size_t)2 << 30)

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void hex_encode(const uint8_t *b, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[b[i] >> 4];
		out[2 * i + 1] = digits[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hex_decode(const char *s, uint8_t *b, size_t n)
{
	if (!s || strlen(s) != 2 * n)
		return 0;
	for (size_t i = 0; i < 2 * n; i++) {
		char c = s[i];
		int v = c >= '0' && c <= '9' ? c - '0' :
			c >= 'a' && c <= 'f' ? c - 'a' + 10 :
			c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;

		if (v < 0)
			return 0;
		b[i / 2] = (uint8_t)(i % 2 ? b[i / 2] | v : v << 4);
	}
	return 1;
}

/* The JSON document of an export. */
static char *export_json(const store_state_info *in, const char *model)
{
	char fp[2 * STORE_FINGERPRINT_LEN + 1], hash[17];
	uint8_t hb[8];
	cJSON *doc = cJSON_CreateObject(), *parents;
	char *text = NULL;

	if (!doc)
		return NULL;
	hex_encode(in->fingerprint, STORE_FINGERPRINT_LEN, fp);
	/* big-endian hex, the way the number reads */
	for (int i = 0; i < 8; i++)
		hb[i] = (uint8_t)(in->raw_hash >> (56 - 8 * i));
	hex_encode(hb, 8, hash);
	parents = cJSON_AddArrayToObject(doc, "parents");
	for (size_t i = 0; parents && i < in->n_parents; i++)
		cJSON_AddItemToArray(parents, cJSON_CreateString(in->parents[i]));
	if (!parents || !cJSON_AddStringToObject(doc, "id", in->id) ||
	    !cJSON_AddStringToObject(doc, "kind", store_kind_name(in->kind)) ||
	    !cJSON_AddStringToObject(doc, "label", in->label) ||
	    !(in->metadata ? cJSON_AddStringToObject(doc, "metadata", in->metadata) :
			     cJSON_AddNullToObject(doc, "metadata")) ||
	    !cJSON_AddNumberToObject(doc, "created_ms", (double)in->created_ms) ||
	    !cJSON_AddNumberToObject(doc, "n_tokens", (double)in->n_tokens) ||
	    !cJSON_AddStringToObject(doc, "fingerprint", fp) ||
	    !cJSON_AddNumberToObject(doc, "codec", in->codec) ||
	    !cJSON_AddNumberToObject(doc, "raw_size", (double)in->raw_size) ||
	    !cJSON_AddStringToObject(doc, "raw_hash", hash) ||
	    !(model ? cJSON_AddStringToObject(doc, "model", model) :
		      cJSON_AddNullToObject(doc, "model")))
		goto out;
	text = cJSON_PrintUnformatted(doc);
out:
	cJSON_Delete(doc);
	return text;
}

int store_export(store *s, const char *id_or_tag, void **buf, size_t *len)
{
	store_state_info in;
	char id[STORE_ID_SIZE], *model = NULL, *json = NULL;
	void *stored = NULL, *dec = NULL;
	int32_t *tokens = NULL;
	size_t n_tok = 0, jlen, total;
	uint8_t *out = NULL, *p;
	int rc;

	if (!s || !buf || !len)
		return ssmd_err_set(SSMD_EINVAL, "store_export: NULL argument");
	memset(&in, 0, sizeof(in));
	/* One read transaction, so state and transcript agree. */
	rc = store_state_read(s, id_or_tag, id, &in, &stored, &tokens, &n_tok);
	if (rc)
		goto out;
	if (store_model_get(s, in.fingerprint, &model) != SSMD_OK)
		model = NULL; /* the model is optional in an export */
	/* Never export bytes that would not read back. */
	rc = store_state_decode(id, &in, stored, &dec);
	if (rc)
		goto out;
	json = export_json(&in, model);
	if (!json) {
		rc = SSMD_ENOMEM;
		goto out;
	}
	jlen = strlen(json);
	total = 16 + jlen + 8 + 4 * n_tok + 8 + in.stored_size + 8;
	out = malloc(total);
	if (!out) {
		rc = SSMD_ENOMEM;
		goto out;
	}
	p = out;
	memcpy(p, export_magic, 8);
	put_le(p + 8, EXPORT_VERSION, 4);
	put_le(p + 12, jlen, 4);
	memcpy(p + 16, json, jlen);
	p += 16 + jlen;
	put_le(p, n_tok, 8);
	p += 8;
	for (size_t i = 0; i < n_tok; i++, p += 4)
		put_le(p, (uint32_t)tokens[i], 4);
	put_le(p, in.stored_size, 8);
	memcpy(p + 8, stored, in.stored_size);
	p += 8 + in.stored_size;
	put_le(p, XXH64(out, (size_t)(p - out), 0), 8);
	*buf = out;
	*len = total;
	out = NULL;
out:
	free(out);
	free(json);
	free(dec);
	free(model);
	free(tokens);
	free(stored);
	store_state_info_fini(&in);
	return rc;
}

/* What an export's JSON says, checked. */
typedef struct export_doc {
	cJSON *doc;
	const char *id, *label, *metadata, *model;
	uint8_t fingerprint[STORE_FINGERPRINT_LEN];
	uint64_t n_tokens, raw_size, raw_hash;
	int codec;
} export_doc;

static int doc_number(cJSON *doc, const char *key, double max, uint64_t *v)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(doc, key);

	if (!cJSON_IsNumber(it) || it->valuedouble < 0 ||
	    it->valuedouble > max || it->valuedouble != (double)(uint64_t)it->valuedouble)
		return ssmd_err_set(SSMD_EFORMAT, "export: bad \"%s\"", key);
	*v = (uint64_t)it->valuedouble;
	return SSMD_OK;
}

/* A string member, or NULL when the member is JSON null (if allowed). */
static int doc_string(cJSON *doc, const char *key, int nullable,
		      const char **v)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(doc, key);

	if (nullable && cJSON_IsNull(it)) {
		*v = NULL;
		return SSMD_OK;
	}
	if (!cJSON_IsString(it))
		return ssmd_err_set(SSMD_EFORMAT, "export: bad \"%s\"", key);
	*v = it->valuestring;
	return SSMD_OK;
}

static int doc_parse(const uint8_t *json, size_t jlen, export_doc *d)
{
	const char *fp = NULL, *hash = NULL;
	uint8_t hb[8];
	uint64_t codec;
	int rc;

	memset(d, 0, sizeof(*d));
	d->doc = cJSON_ParseWithLength((const char *)json, jlen);
	if (!cJSON_IsObject(d->doc))
		return ssmd_err_set(SSMD_EFORMAT, "export: metadata is not a "
				    "JSON object");
	rc = doc_string(d->doc, "id", 0, &d->id);
	if (!rc)
		rc = doc_string(d->doc, "label", 0, &d->label);
	if (!rc)
		rc = doc_string(d->doc, "metadata", 1, &d->metadata);
	if (!rc)
		rc = doc_string(d->doc, "model", 1, &d->model);
	if (!rc)
		rc = doc_string(d->doc, "fingerprint", 0, &fp);
	if (!rc)
		rc = doc_string(d->doc, "raw_hash", 0, &hash);
	if (!rc)
		rc = doc_number(d->doc, "n_tokens", 9007199254740992.0,
				&d->n_tokens);
	if (!rc)
		rc = doc_number(d->doc, "raw_size", (double)CODEC_RAW_MAX,
				&d->raw_size);
	if (!rc)
		rc = doc_number(d->doc, "codec", 255, &codec);
	if (rc)
		return rc;
	d->codec = (int)codec;
	if (!hex_decode(fp, d->fingerprint, STORE_FINGERPRINT_LEN) ||
	    !hex_decode(hash, hb, 8))
		return ssmd_err_set(SSMD_EFORMAT,
				    "export: bad fingerprint or raw_hash");
	d->raw_hash = 0;
	for (int i = 0; i < 8; i++)
		d->raw_hash = d->raw_hash << 8 | hb[i];
	rc = store_label_check(d->label);
	if (!rc)
		rc = store_metadata_check(d->metadata);
	if (!rc && d->model)
		rc = store_metadata_check(d->model);
	if (rc)
		return ssmd_err_set(SSMD_EFORMAT, "export: %s", ssmd_errmsg());
	return SSMD_OK;
}

/* Records the model config if the library has none for it. */
static int model_insert(store *s, const uint8_t *fp, const char *config,
			int64_t ms)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite3_prepare_v2(s->wdb, "INSERT OR IGNORE INTO models(fingerprint,"
				" config, updated_ms) VALUES(?1, ?2, ?3)",
				-1, &st, NULL);
	if (rc != SQLITE_OK)
		return store_sql_err(s->wdb, rc, "import model");
	sqlite3_bind_blob(st, 1, fp, STORE_FINGERPRINT_LEN, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, config, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, ms);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? SSMD_OK : store_sql_err(s->wdb, rc, "import model");
	sqlite3_finalize(st);
	return rc;
}

int store_import(store *s, const void *buf, size_t len, char id[STORE_ID_SIZE])
{
	const uint8_t *b = buf, *json, *tok, *payload;
	export_doc d = { 0 };
	ssm_state_layout lay;
	char new_id[STORE_ID_SIZE], origin[STORE_ID_SIZE];
	uint64_t jlen, n_tok, plen, off;
	int32_t *tokens = NULL;
	uint8_t *tbuf = NULL;
	size_t tlen = 0;
	void *dec = NULL;
	int64_t ms;
	int rc;

	if (!s || (!buf && len) || !id)
		return ssmd_err_set(SSMD_EINVAL, "store_import: NULL argument");
	/* Structure first, every length checked against what is left. */
	if (len < 16 || memcmp(b, export_magic, 8) != 0)
		return ssmd_err_set(SSMD_EFORMAT, "not an ssmd state export");
	if (get_le(b + 8, 4) != EXPORT_VERSION)
		return ssmd_err_set(SSMD_EUNSUPPORTED,
				    "state export version %u not supported",
				    (unsigned)get_le(b + 8, 4));
	jlen = get_le(b + 12, 4);
	if (jlen > EXPORT_JSON_MAX || len - 16 < jlen + 8)
		return ssmd_err_set(SSMD_EFORMAT, "state export truncated");
	json = b + 16;
	off = 16 + jlen;
	n_tok = get_le(b + off, 8);
	off += 8;
	if (n_tok > (len - off) / 4 || len - off - 4 * n_tok < 8)
		return ssmd_err_set(SSMD_EFORMAT, "state export truncated");
	tok = b + off;
	off += 4 * n_tok;
	plen = get_le(b + off, 8);
	off += 8;
	if (plen > len - off || len - off - plen != 8)
		return ssmd_err_set(SSMD_EFORMAT, "state export %s",
				    plen > len - off || len - off - plen < 8 ?
					    "truncated" : "has trailing bytes");
	payload = b + off;
	off += plen;
	if (XXH64(b, off, 0) != get_le(b + off, 8))
		return ssmd_err_set(SSMD_ECORRUPT, "state export checksum "
				    "mismatch");

	rc = doc_parse(json, jlen, &d);
	if (rc)
		goto out;
	/* The payload must decode to exactly the state the JSON describes. */
	rc = store_codec_decode(payload, plen, d.codec, d.raw_size, d.raw_hash,
				&dec);
	if (rc)
		goto out;
	rc = ssm_state_layout_of(dec, d.raw_size, &lay);
	if (!rc && (memcmp((uint8_t *)dec + 40, d.fingerprint,
			   STORE_FINGERPRINT_LEN) != 0 ||
		    get_le((uint8_t *)dec + 32, 8) != d.n_tokens))
		rc = ssmd_err_set(SSMD_ECORRUPT, "state export: payload header "
				  "disagrees with its metadata");
	if (rc)
		goto out;
	tokens = malloc(n_tok ? n_tok * sizeof(*tokens) : 1);
	if (!tokens) {
		rc = SSMD_ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < n_tok; i++)
		tokens[i] = (int32_t)get_le(tok + 4 * i, 4);
	rc = store_tokens_pack(tokens, n_tok, &tbuf, &tlen);
	if (rc) {
		rc = ssmd_err_set(SSMD_EFORMAT, "state export: %s", ssmd_errmsg());
		goto out;
	}
	if (store_id_valid(d.id))
		store_id_canon(d.id, origin);
	else
		origin[0] = '\0';
	rc = store_id_new(new_id, &ms);
	if (rc)
		goto out;

	rc = store_write_begin(s);
	if (rc)
		goto out;
	{
		store_row row = {
			.id = new_id,
			.created_ms = ms,
			.kind = STORE_KIND_IMPORT,
			.fingerprint = d.fingerprint,
			.n_tokens = d.n_tokens,
			.label = d.label,
			.metadata = d.metadata,
			.origin = origin[0] ? origin : NULL,
			.codec = d.codec,
			.raw_size = d.raw_size,
			.raw_hash = d.raw_hash,
			.payload = payload,
			.payload_len = plen,
			.transcript = tbuf,
			.transcript_len = tlen,
			.n_transcript = n_tok,
		};

		rc = store_row_insert(s, &row);
	}
	if (!rc && d.model)
		rc = model_insert(s, d.fingerprint, d.model, ms);
	rc = store_write_end(s, rc);
	if (!rc)
		memcpy(id, new_id, STORE_ID_SIZE);
out:
	free(tbuf);
	free(tokens);
	free(dec);
	cJSON_Delete(d.doc);
	return rc;
}

/* ----------------------------------------------------------------- files -- */

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int store_export_file(store *s, const char *id_or_tag, const char *path)
{
	void *buf = NULL;
	size_t len;
	char *tmp = NULL, *dir = NULL;
	int fd = -1, dfd, rc;

	if (!path)
		return ssmd_err_set(SSMD_EINVAL, "store_export_file: no path");
	rc = store_export(s, id_or_tag, &buf, &len);
	if (rc)
		return rc;
	tmp = malloc(strlen(path) + 5);
	dir = strdup(path);
	if (!tmp || !dir) {
		rc = SSMD_ENOMEM;
		goto out;
	}
	sprintf(tmp, "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write_all(fd, buf, len) || fsync(fd)) {
		rc = ssmd_err_set(errno == ENOSPC ? SSMD_ENOSPC : SSMD_EIO,
				  "%s: %s", tmp, strerror(errno));
		if (fd >= 0)
			unlink(tmp);
		goto out;
	}
	if (close(fd) || rename(tmp, path)) {
		fd = -1;
		rc = ssmd_err_set(SSMD_EIO, "%s: %s", path, strerror(errno));
		unlink(tmp);
		goto out;
	}
	fd = -1;
	/* Make the rename itself durable. */
	dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
out:
	if (fd >= 0)
		close(fd);
	free(dir);
	free(tmp);
	free(buf);
	return rc;
}

int store_import_file(store *s, const char *path, char id[STORE_ID_SIZE])
{
	struct stat sb;
	uint8_t *buf = NULL;
	size_t got = 0;
	int fd, rc;

	if (!path)
		return ssmd_err_set(SSMD_EINVAL, "store_import_file: no path");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ssmd_err_set(errno == ENOENT ? SSMD_ENOENT : SSMD_EIO,
				    "%s: %s", path, strerror(errno));
	if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
		rc = ssmd_err_set(SSMD_EIO, "%s: not a regular file", path);
		goto out;
	}
	if ((uint64_t)sb.st_size > EXPORT_FILE_MAX) {
		rc = ssmd_err_set(SSMD_ERANGE, "%s: larger than 2 GiB", path);
		goto out;
	}
	buf = malloc(sb.st_size ? (size_t)sb.st_size : 1);
	if (!buf) {
		rc = SSMD_ENOMEM;
		goto out;
	}
	while (got < (size_t)sb.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = ssmd_err_set(SSMD_EIO, "%s: %s", path,
					  r ? strerror(errno) : "file shrank");
			goto out;
		}
		got += (size_t)r;
	}
	rc = store_import(s, buf, got, id);
out:
	free(buf);
	close(fd);
	return rc;
}
