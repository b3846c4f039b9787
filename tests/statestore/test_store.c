/*
 * test_store.c — the state library: put/get round trips through every codec,
 * IDs, validation, corruption of a stored payload (through SQLite directly),
 * full disk, readers during writes, export/import, tags, delete and gc,
 * lineage, transcripts, pagination and filters, models.
 */
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "check.h"
#include "testutil.h"
#include "codec.h"
#include "ssm_state.h"
#include "store.h"
#include "store_impl.h"

static char dir[256];

/* The file's shared random stream (splitmix64); threads use their own. */
static uint64_t rng_state = 0x243f6a8885a308d3ull;

static const uint8_t fp_a[16] = "model-A-fingerp";
static const uint8_t fp_b[16] = "model-B-fingerp";

/* An encoded state (2 layers, d_inner 32, d_state 16, d_conv 4, d_model 16)
 * whose floats derive from seed: random bits when noisy, else smooth. The
 * same (seed, noisy) always gives the same bytes, so readers can check. */
static void *make_state(const uint8_t fp[16], uint64_t n_tokens,
			uint64_t seed, int noisy, size_t *len)
{
	ssm_state *st;
	uint64_t local = seed * 7919 + 1; /* own stream: called from threads */
	void *buf;
	float *f;
	size_t n = 2 * 32 * 16 + 2 * 32 * 3 + 16 + 2 * 32;

	if (ssm_state_alloc(SSM_ARCH_MAMBA1, 2, 32, 16, 4, 16, &st))
		abort();
	st->n_tokens = n_tokens;
	memcpy(st->fingerprint, fp, 16);
	f = st->ssm;
	for (size_t i = 0; i < n; i++) {
		if (noisy) {
			uint32_t u = (uint32_t)test_splitmix64(&local);

			memcpy(&f[i], &u, 4);
		} else {
			f[i] = (float)sin((double)(i + seed) * 0.05);
		}
	}
	*len = ssm_state_encoded_size(st);
	buf = malloc(*len);
	if (!buf || ssm_state_encode(st, buf, *len))
		abort();
	ssm_state_free(st);
	return buf;
}

static void path_of(char *out, size_t cap, const char *name)
{
	snprintf(out, cap, "%s/%s", dir, name);
}

static store *open_new(const char *name, const store_opts *o)
{
	char p[512];
	store *s = NULL;

	path_of(p, sizeof(p), name);
	unlink(p);
	if (store_open(p, o, &s)) {
		fprintf(stderr, "store_open %s: %s\n", p, ssmd_errmsg());
		abort();
	}
	return s;
}

/* Puts a state with the given parents and transcript; returns rc. */
static int put(store *s, store_kind kind, uint64_t n_tokens, uint64_t seed,
	       int noisy, const char *const *parents, size_t n_parents,
	       const int32_t *tok, size_t n_tok, int lossy, char id[STORE_ID_SIZE])
{
	size_t len;
	void *raw = make_state(fp_a, n_tokens, seed, noisy, &len);
	store_put p = {
		.raw = raw, .raw_len = len, .kind = kind, .parents = parents,
		.n_parents = n_parents, .tokens = tok, .n_tokens = n_tok,
		.lossy = lossy, .label = "test",
	};
	int rc = store_state_put(s, &p, id);

	free(raw);
	return rc;
}

/* Decodes the millisecond time at the front of an ID (Crockford base32). */
static int64_t id_time(const char *id)
{
	static const char alpha[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	unsigned __int128 v = 0;

	for (int i = 0; i < STORE_ID_LEN; i++)
		v = v << 5 | (unsigned)(strchr(alpha, id[i]) - alpha);
	return (int64_t)(uint64_t)(v >> 80);
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ round trip -- */

static void test_round_trip(void)
{
	store *s = open_new("rt.db", NULL);
	const int lossy[] = { STORE_LOSSY_NONE, STORE_LOSSY_BF16, STORE_LOSSY_F16 };

	for (int noisy = 0; noisy < 2; noisy++) {
		for (int k = 0; k < 3; k++) {
			char id[STORE_ID_SIZE];
			store_state_info info;
			size_t len, glen = 0;
			void *raw = make_state(fp_a, 77, 5 + noisy, noisy, &len);
			void *got = NULL;
			int64_t before = wall_ms();
			store_put p = {
				.raw = raw, .raw_len = len,
				.kind = STORE_KIND_SNAPSHOT, .label = "my label",
				.metadata = "{\"user\":\"ada\",\"n\":[1,2]}",
				.lossy = lossy[k],
			};

			CHECK_RC(store_state_put(s, &p, id), SSMD_OK);
			CHECK(store_id_valid(id) && strlen(id) == 26,
			      "ID '%s' is 26 Crockford characters", id);
			CHECK(id_time(id) >= before - 1 &&
			      id_time(id) <= wall_ms() + 1,
			      "ID carries the creation time");
			CHECK_RC(store_state_get(s, id, &got, &glen, &info),
				 SSMD_OK);
			if (!got)
				continue;
			CHECK(glen == len, "length back");
			if (lossy[k] == STORE_LOSSY_NONE)
				CHECK(memcmp(got, raw, len) == 0,
				      "lossless put/get is bit-exact (noisy %d)",
				      noisy);
			else
				CHECK(memcmp(got, raw, SSM_STATE_HEADER_SIZE) == 0,
				      "lossy keeps the header");
			CHECK(info.raw_hash == XXH64(got, glen, 0),
			      "recorded hash is xxHash64 of what get returns");
			CHECK(strcmp(info.id, id) == 0 && info.n_tokens == 77 &&
			      memcmp(info.fingerprint, fp_a, 16) == 0 &&
			      info.kind == STORE_KIND_SNAPSHOT &&
			      strcmp(info.label, "my label") == 0 &&
			      info.metadata &&
			      strcmp(info.metadata, p.metadata) == 0 &&
			      info.raw_size == len && info.n_parents == 0,
			      "info fields");
			CHECK((info.codec & STORE_CODEC_LOSSY_MASK) ==
			      (lossy[k] == STORE_LOSSY_BF16 ? STORE_CODEC_BF16 :
			       lossy[k] == STORE_LOSSY_F16 ? STORE_CODEC_F16 : 0),
			      "lossy codec recorded");
			store_state_info_fini(&info);
			free(got);
			free(raw);
		}
	}
	/* IDs are unique and sort by creation time */
	{
		char prev[STORE_ID_SIZE] = "", id[STORE_ID_SIZE];
		int ordered = 1;

		for (int i = 0; i < 20; i++) {
			CHECK_RC(put(s, STORE_KIND_CHECKPOINT, 1, i, 0, NULL, 0,
				     NULL, 0, 0, id), SSMD_OK);
			if (prev[0] && strcmp(prev, id) >= 0)
				ordered = 0;
			memcpy(prev, id, sizeof(prev));
			usleep(1500); /* a new millisecond for the next ID */
		}
		CHECK(ordered, "IDs from later milliseconds sort later");
	}
	store_close(s);
}

/* ------------------------------------------------------------ validation -- */

static void test_validation(void)
{
	store *s = open_new("val.db", NULL);
	char root[STORE_ID_SIZE], other[STORE_ID_SIZE], id[STORE_ID_SIZE];
	const int32_t toks[3] = { 5, 6, 7 }, neg[2] = { 1, -4 };
	size_t len;
	void *raw = make_state(fp_a, 10, 1, 0, &len);
	void *rawb = make_state(fp_b, 10, 1, 0, &len);
	char big_label[STORE_LABEL_MAX + 2];
	uint8_t junk[100] = { 0 };
	store_put p = { .raw = raw, .raw_len = len, .kind = STORE_KIND_SNAPSHOT };
	store_totals t;

	CHECK_RC(store_state_put(s, &p, root), SSMD_OK);
	p.raw = rawb;
	CHECK_RC(store_state_put(s, &p, other), SSMD_OK);
	p.raw = raw;

	p.kind = 9;
	CHECK_RC(store_state_put(s, &p, id), SSMD_EINVAL);
	p.kind = STORE_KIND_SNAPSHOT;
	p.metadata = "{not json";
	CHECK_RC(store_state_put(s, &p, id), SSMD_EINVAL);
	p.metadata = NULL;
	memset(big_label, 'x', sizeof(big_label) - 1);
	big_label[sizeof(big_label) - 1] = '\0';
	p.label = big_label;
	CHECK_RC(store_state_put(s, &p, id), SSMD_EINVAL);
	p.label = "bell\a";
	CHECK_RC(store_state_put(s, &p, id), SSMD_EINVAL);
	p.label = NULL;
	p.raw = junk;
	p.raw_len = sizeof(junk);
	CHECK_RC(store_state_put(s, &p, id), SSMD_EFORMAT);
	p.raw = raw;
	p.raw_len = len - 1;
	CHECK_RC(store_state_put(s, &p, id), SSMD_EFORMAT);
	p.raw_len = len;
	{
		const char *unknown[1] = { "01ARZ3NDEKTSV4RRFFQ69G5FAV" };
		const char *notid[1] = { "hello" };
		const char *b_parent[1] = { other };
		const char *one[1] = { root };
		const char *twice[2] = { root, root };

		p.parents = unknown;
		p.n_parents = 1;
		CHECK_RC(store_state_put(s, &p, id), SSMD_ENOENT);
		p.parents = notid;
		CHECK_RC(store_state_put(s, &p, id), SSMD_EINVAL);
		p.parents = b_parent;
		CHECK_RC(store_state_put(s, &p, id), SSMD_EMODEL);
		p.parents = one;
		p.kind = STORE_KIND_MERGE;
		CHECK_RC(store_state_put(s, &p, id), SSMD_EINVAL);
		p.parents = twice;
		p.n_parents = 2;
		CHECK_RC(store_state_put(s, &p, id), SSMD_EINVAL);
		/* transcript length must account for the token count:
		 * parent 10 + 3 tokens != 10 */
		p.kind = STORE_KIND_CHECKPOINT;
		p.parents = one;
		p.n_parents = 1;
		p.tokens = toks;
		p.n_tokens = 3;
		CHECK_RC(store_state_put(s, &p, id), SSMD_EINVAL);
		p.tokens = neg;
		p.n_tokens = 2;
		p.parents = NULL;
		p.n_parents = 0;
		CHECK_RC(store_state_put(s, &p, id), SSMD_EINVAL);
	}
	CHECK_RC(store_total_size(s, &t), SSMD_OK);
	CHECK(t.n_states == 2, "rejected puts store nothing (%llu states)",
	      (unsigned long long)t.n_states);

	/* lookups */
	{
		void *got = NULL;
		size_t glen;
		char res[STORE_ID_SIZE], lower[STORE_ID_SIZE];

		CHECK_RC(store_state_get(s, "01ARZ3NDEKTSV4RRFFQ69G5FAV", &got,
					 &glen, NULL), SSMD_ENOENT);
		CHECK_RC(store_state_get(s, "no-such-tag", &got, &glen, NULL),
			 SSMD_ENOENT);
		CHECK_RC(store_state_get(s, "bad tag!", &got, &glen, NULL),
			 SSMD_EINVAL);
		CHECK(got == NULL, "nothing returned on failure");
		for (int i = 0; i < STORE_ID_SIZE; i++)
			lower[i] = (char)(root[i] >= 'A' && root[i] <= 'Z' ?
					  root[i] - 'A' + 'a' : root[i]);
		CHECK_RC(store_resolve(s, lower, res), SSMD_OK);
		CHECK(strcmp(res, root) == 0, "lower-case ID resolves");
	}
	free(raw);
	free(rawb);
	store_close(s);
}

/* ------------------------------------------------------------ open/close -- */

static void test_open(void)
{
	char p[512];
	store *s = NULL;
	sqlite3 *db;
	FILE *f;

	store_close(NULL);
	path_of(p, sizeof(p), "notadb.db");
	f = fopen(p, "w");
	fputs("this is not a database, not at all; just some text to fill a "
	      "page header and more text so SQLite reads it fully\n", f);
	fclose(f);
	CHECK_RC(store_open(p, NULL, &s), SSMD_EFORMAT);

	path_of(p, sizeof(p), "foreign.db");
	unlink(p);
	sqlite3_open(p, &db);
	sqlite3_exec(db, "CREATE TABLE t(x)", NULL, NULL, NULL);
	sqlite3_close(db);
	CHECK_RC(store_open(p, NULL, &s), SSMD_EFORMAT);

	s = open_new("newer.db", NULL);
	store_close(s);
	path_of(p, sizeof(p), "newer.db");
	sqlite3_open(p, &db);
	sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL);
	sqlite3_close(db);
	CHECK_RC(store_open(p, NULL, &s), SSMD_EUNSUPPORTED);

	/* reopen keeps data; NORMAL sync opens too */
	{
		store_opts o = { .sync_normal = 1 };
		char id[STORE_ID_SIZE];
		store_state_info info;

		s = open_new("reopen.db", &o);
		CHECK_RC(put(s, STORE_KIND_SNAPSHOT, 3, 3, 0, NULL, 0, NULL, 0,
			     0, id), SSMD_OK);
		store_close(s);
		path_of(p, sizeof(p), "reopen.db");
		CHECK_RC(store_open(p, NULL, &s), SSMD_OK);
		CHECK_RC(store_state_info_get(s, id, &info), SSMD_OK);
		store_state_info_fini(&info);
		sqlite3_open(p, &db);
		{
			sqlite3_stmt *st;
			int ok = 0;

			sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL);
			if (sqlite3_step(st) == SQLITE_ROW)
				ok = !strcmp((const char *)sqlite3_column_text(st, 0),
					     "wal");
			sqlite3_finalize(st);
			CHECK(ok, "library is in WAL mode");
		}
		sqlite3_close(db);
		store_close(s);
	}
}

/* ------------------------------------------------------------ corruption -- */

/* Flips one byte of a stored payload with SQLite directly. */
static void flip_payload(const char *path, const char *id, long where)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	sqlite3_blob *blob;
	sqlite3_int64 key = 0;
	uint8_t b;
	int n;

	sqlite3_open(path, &db);
	sqlite3_prepare_v2(db, "SELECT n FROM states WHERE id=?1", -1, &st, NULL);
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		key = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	if (sqlite3_blob_open(db, "main", "payloads", "data", key, 1, &blob) ==
	    SQLITE_OK) {
		n = sqlite3_blob_bytes(blob);
		if (where < 0)
			where += n;
		sqlite3_blob_read(blob, &b, 1, (int)where);
		b ^= 0x10;
		sqlite3_blob_write(blob, &b, 1, (int)where);
		sqlite3_blob_close(blob);
	}
	sqlite3_close(db);
}

static void test_corruption(void)
{
	char p[512], raw_id[STORE_ID_SIZE], lz_id[STORE_ID_SIZE],
		ok_id[STORE_ID_SIZE];
	store *s = open_new("corrupt.db", NULL);
	store_state_info info;
	void *got = NULL, *exp = NULL;
	size_t glen, elen;

	path_of(p, sizeof(p), "corrupt.db");
	CHECK_RC(put(s, STORE_KIND_SNAPSHOT, 1, 11, 1, NULL, 0, NULL, 0, 0,
		     raw_id), SSMD_OK);
	CHECK_RC(put(s, STORE_KIND_SNAPSHOT, 1, 12, 0, NULL, 0, NULL, 0, 0,
		     lz_id), SSMD_OK);
	CHECK_RC(put(s, STORE_KIND_SNAPSHOT, 1, 13, 0, NULL, 0, NULL, 0, 0,
		     ok_id), SSMD_OK);
	CHECK_RC(store_state_info_get(s, lz_id, &info), SSMD_OK);
	CHECK(info.codec & STORE_CODEC_LZ4, "smooth state stored with LZ4");
	store_state_info_fini(&info);

	/* raw payload: a byte in the middle of the floats; LZ4 payload: a
	 * byte of the frame's content checksum (the last 4 bytes) */
	flip_payload(p, raw_id, 1000);
	flip_payload(p, lz_id, -2);
	CHECK_RC(store_state_get(s, raw_id, &got, &glen, NULL), SSMD_ECORRUPT);
	CHECK(got == NULL, "corrupt raw payload never served");
	CHECK_RC(store_state_get(s, lz_id, &got, &glen, NULL), SSMD_ECORRUPT);
	CHECK(got == NULL, "corrupt LZ4 payload never served");
	CHECK(strstr(ssmd_errmsg(), lz_id) != NULL,
	      "error names the state: %s", ssmd_errmsg());
	CHECK_RC(store_export(s, lz_id, &got, &glen), SSMD_ECORRUPT);
	CHECK_RC(store_state_get(s, ok_id, &got, &glen, NULL), SSMD_OK);
	exp = make_state(fp_a, 1, 13, 0, &elen);
	CHECK(got && glen == elen && memcmp(got, exp, elen) == 0,
	      "other states still read");
	free(got);
	free(exp);

	/* damaged bookkeeping instead of payload bytes: each column the
	 * decoder relies on, changed behind the library's back */
	{
		static const char *const edits[] = {
			"UPDATE states SET raw_size=raw_size+4 WHERE id=?1",
			"UPDATE states SET raw_size=1e12 WHERE id=?1",
			"UPDATE states SET stored_size=stored_size-1 WHERE id=?1",
			"UPDATE states SET codec=99 WHERE id=?1",
			"UPDATE states SET codec=codec|16 WHERE id=?1",
			"UPDATE states SET raw_hash=raw_hash+1 WHERE id=?1",
			"DELETE FROM payloads WHERE n=(SELECT n FROM states"
			" WHERE id=?1)",
		};
		char id[STORE_ID_SIZE];

		for (size_t i = 0; i < sizeof(edits) / sizeof(*edits); i++) {
			sqlite3 *db;
			sqlite3_stmt *st;

			CHECK_RC(put(s, STORE_KIND_SNAPSHOT, 1, 20 + i, 0, NULL, 0,
				     NULL, 0, 0, id), SSMD_OK);
			sqlite3_open(p, &db);
			sqlite3_prepare_v2(db, edits[i], -1, &st, NULL);
			sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
			CHECK(sqlite3_step(st) == SQLITE_DONE, "edit %zu", i);
			sqlite3_finalize(st);
			sqlite3_close(db);
			got = NULL;
			CHECK_RC(store_state_get(s, id, &got, &glen, NULL),
				 SSMD_ECORRUPT);
			CHECK(got == NULL, "edit %zu: nothing served", i);
		}
	}
	/* a damaged transcript is reported, not decoded into garbage */
	{
		const int32_t toks[3] = { 1, 2, 3 };
		char id[STORE_ID_SIZE];
		int32_t *ids = NULL;
		size_t n = 0;
		sqlite3 *db;
		sqlite3_stmt *st;

		CHECK_RC(put(s, STORE_KIND_SNAPSHOT, 3, 40, 0, NULL, 0, toks, 3, 0,
			     id), SSMD_OK);
		sqlite3_open(p, &db);
		sqlite3_prepare_v2(db, "UPDATE transcripts SET tokens=x'8080'"
				   " WHERE n=(SELECT n FROM states WHERE id=?1)",
				   -1, &st, NULL);
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		sqlite3_step(st);
		sqlite3_finalize(st);
		sqlite3_close(db);
		CHECK_RC(store_transcript(s, id, &ids, &n), SSMD_ECORRUPT);
		CHECK(ids == NULL, "no tokens from a damaged transcript");
	}
	store_close(s);
}

/* ------------------------------------------------------------- full disk -- */

static void test_full_disk(void)
{
	/* 2 MB cap, ~10 KB noisy states stored raw: fills after ~150 */
	store_opts o = { .max_bytes = 2 << 20 };
	store *s = open_new("full.db", &o);
	char ids[400][STORE_ID_SIZE], id[STORE_ID_SIZE];
	int n = 0, rc = SSMD_OK, bad = 0;
	void *got;
	size_t glen;
	store_totals t;

	while (n < 400) {
		rc = put(s, STORE_KIND_CHECKPOINT, 1, (uint64_t)n, 1, NULL, 0,
			 NULL, 0, 0, ids[n]);
		if (rc)
			break;
		n++;
	}
	CHECK(rc == SSMD_ENOSPC, "filling the library ends in SSMD_ENOSPC "
	      "(got %d after %d puts: %s)", rc, n, ssmd_errmsg());
	CHECK(n > 20, "a fair number of states fit (%d)", n);
	CHECK_RC(store_total_size(s, &t), SSMD_OK);
	CHECK(t.n_states == (uint64_t)n, "the failed put left nothing (%llu)",
	      (unsigned long long)t.n_states);
	for (int i = 0; i < n; i++) {
		got = NULL;
		if (store_state_get(s, ids[i], &got, &glen, NULL))
			bad++;
		free(got);
	}
	CHECK(bad == 0, "%d acknowledged states unreadable after ENOSPC", bad);
	/* still usable: free whole pages (the oldest 30 states), then put
	 * again */
	for (int i = 0; i < 30 && i < n; i++)
		CHECK_RC(store_state_delete(s, ids[i], 0), SSMD_OK);
	CHECK_RC(put(s, STORE_KIND_CHECKPOINT, 1, 999, 1, NULL, 0, NULL, 0, 0,
		     id), SSMD_OK);
	CHECK_RC(store_tag_set(s, "after/full", id), SSMD_OK);
	store_close(s);
}

/* ---------------------------------------------------------- concurrency -- */

typedef struct conc {
	store *s;
	volatile int done;
	int errors, busy, reads;
} conc;

static void *writer(void *arg)
{
	conc *c = arg;
	char id[STORE_ID_SIZE];

	for (uint64_t i = 1; i <= 150; i++) {
		/* n_tokens carries the seed so readers can rebuild it */
		int rc = put(c->s, STORE_KIND_CHECKPOINT, i, i, (int)(i % 2),
			     NULL, 0, NULL, 0, 0, id);

		if (rc) {
			__atomic_add_fetch(&c->errors, 1, __ATOMIC_RELAXED);
			fprintf(stderr, "writer: %s\n", ssmd_errmsg());
		}
	}
	c->done = 1;
	return NULL;
}

static void *reader(void *arg)
{
	conc *c = arg;

	while (!c->done) {
		store_state_info *arr = NULL;
		store_filter f = { .newest_first = 1, .limit = 10 };
		char next[STORE_ID_SIZE];
		size_t n = 0;
		int rc = store_state_list(c->s, &f, &arr, &n, next);

		if (rc == SSMD_EBUSY)
			__atomic_add_fetch(&c->busy, 1, __ATOMIC_RELAXED);
		if (rc) {
			__atomic_add_fetch(&c->errors, 1, __ATOMIC_RELAXED);
			fprintf(stderr, "reader: list: %s\n", ssmd_errmsg());
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			void *got = NULL, *exp;
			size_t glen, elen;

			rc = store_state_get(c->s, arr[i].id, &got, &glen, NULL);
			exp = make_state(fp_a, arr[i].n_tokens, arr[i].n_tokens,
					 (int)(arr[i].n_tokens % 2), &elen);
			if (rc == SSMD_EBUSY)
				__atomic_add_fetch(&c->busy, 1, __ATOMIC_RELAXED);
			if (rc || glen != elen || memcmp(got, exp, elen)) {
				__atomic_add_fetch(&c->errors, 1,
						   __ATOMIC_RELAXED);
				fprintf(stderr, "reader: get %s: rc %d (%s)\n",
					arr[i].id, rc, rc ? ssmd_errmsg() : "wrong bytes");
			}
			__atomic_add_fetch(&c->reads, 1, __ATOMIC_RELAXED);
			free(got);
			free(exp);
		}
		store_info_array_free(arr, n);
	}
	return NULL;
}

static void test_concurrency(void)
{
	conc c = { .s = open_new("conc.db", NULL) };
	pthread_t w, r[3];
	store *other;
	char p[512];

	for (int i = 0; i < 3; i++)
		pthread_create(&r[i], NULL, reader, &c);
	pthread_create(&w, NULL, writer, &c);
	pthread_join(w, NULL);
	for (int i = 0; i < 3; i++)
		pthread_join(r[i], NULL);
	CHECK(c.busy == 0, "readers never see busy (%d)", c.busy);
	CHECK(c.errors == 0, "%d failed or wrong reads during writes",
	      c.errors);
	CHECK(c.reads > 0, "readers read while the writer wrote (%d)", c.reads);

	/* a second handle on the same file (another process would be the
	 * same to SQLite) sees every committed state */
	path_of(p, sizeof(p), "conc.db");
	CHECK_RC(store_open(p, NULL, &other), SSMD_OK);
	{
		store_totals t;

		CHECK_RC(store_total_size(other, &t), SSMD_OK);
		CHECK(t.n_states == 150, "150 states committed (%llu)",
		      (unsigned long long)t.n_states);
	}
	store_close(other);
	store_close(c.s);
}

/* -------------------------------------------------------- export/import -- */

static void test_export_import(void)
{
	store *a = open_new("exp_a.db", NULL), *b = open_new("exp_b.db", NULL);
	char root[STORE_ID_SIZE], child[STORE_ID_SIZE], imp[STORE_ID_SIZE];
	const int32_t t1[4] = { 1, 2, 3, 50000 }, t2[2] = { 7, 8 };
	const char *par[1] = { root };
	void *buf = NULL, *ra = NULL, *rb = NULL;
	size_t len = 0, la, lb;
	store_state_info ia, ib;
	int32_t *tok = NULL;
	size_t n_tok = 0;
	char *cfg = NULL, path[512];
	store_totals t;

	CHECK_RC(store_model_put(a, fp_a, "{\"d_model\":16}"), SSMD_OK);
	CHECK_RC(put(a, STORE_KIND_SNAPSHOT, 4, 1, 0, NULL, 0, t1, 4, 0, root),
		 SSMD_OK);
	CHECK_RC(put(a, STORE_KIND_CHECKPOINT, 6, 2, 0, par, 1, t2, 2,
		     STORE_LOSSY_BF16, child), SSMD_OK);
	CHECK_RC(store_tag_set(a, "books/child", child), SSMD_OK);
	CHECK_RC(store_export(a, "books/child", &buf, &len), SSMD_OK);
	CHECK_RC(store_import(b, buf, len, imp), SSMD_OK);
	CHECK_RC(store_state_get(a, child, &ra, &la, &ia), SSMD_OK);
	CHECK_RC(store_state_get(b, imp, &rb, &lb, &ib), SSMD_OK);
	CHECK(ra && rb && la == lb && memcmp(ra, rb, la) == 0,
	      "imported state has the same bytes");
	CHECK(ia.raw_hash == ib.raw_hash && ib.raw_hash == XXH64(rb, lb, 0),
	      "identical raw hash");
	CHECK(ib.kind == STORE_KIND_IMPORT && strcmp(ib.origin, child) == 0 &&
	      strcmp(ib.label, ia.label) == 0 && ib.n_parents == 0 &&
	      ib.codec == ia.codec && ib.n_tokens == 6,
	      "import info: kind import, origin, label, codec");
	CHECK_RC(store_transcript(b, imp, &tok, &n_tok), SSMD_OK);
	CHECK(n_tok == 6 && tok && tok[0] == 1 && tok[3] == 50000 &&
	      tok[4] == 7 && tok[5] == 8, "whole transcript travels");
	CHECK_RC(store_model_get(b, fp_a, &cfg), SSMD_OK);
	CHECK(cfg && strcmp(cfg, "{\"d_model\":16}") == 0,
	      "model config travels");
	free(cfg);
	free(tok);
	free(ra);
	free(rb);
	store_state_info_fini(&ia);
	store_state_info_fini(&ib);

	/* damaged exports: every flipped byte, every truncation, foreign
	 * bytes — each refused, and b unchanged */
	{
		uint8_t *e = buf;
		int accepted = 0, wrong_code = 0;
		char id[STORE_ID_SIZE];

		for (size_t pos = 0; pos < len; pos += 1 + len / 300) {
			int rc;

			e[pos] ^= 0x01;
			rc = store_import(b, e, len, id);
			accepted += rc == SSMD_OK;
			wrong_code += rc != SSMD_OK && rc != SSMD_EFORMAT &&
				      rc != SSMD_ECORRUPT &&
				      rc != SSMD_EUNSUPPORTED;
			e[pos] ^= 0x01;
		}
		CHECK(accepted == 0, "%d flipped exports accepted", accepted);
		CHECK(wrong_code == 0, "%d flips gave an unexpected code",
		      wrong_code);
		accepted = 0;
		for (size_t cut = 0; cut < len; cut += 1 + len / 200)
			accepted += store_import(b, e, cut, id) == SSMD_OK;
		CHECK(accepted == 0, "%d truncated exports accepted", accepted);
		CHECK_RC(store_import(b, e, len - 1, id), SSMD_EFORMAT);
		CHECK_RC(store_import(b, "", 0, id), SSMD_EFORMAT);
		CHECK_RC(store_import(b, "\x89PNG\r\n\x1a\n0000000000000000", 24,
				      id), SSMD_EFORMAT);
		{
			uint8_t junk[4096];

			for (size_t i = 0; i < sizeof(junk); i++)
				junk[i] = (uint8_t)test_splitmix64(&rng_state);
			CHECK_RC(store_import(b, junk, sizeof(junk), id),
				 SSMD_EFORMAT);
		}
		/* forged: valid checksum but a JSON that lies about the raw
		 * hash — caught when the payload is verified */
		{
			uint8_t *f = malloc(len);
			char *h;
			uint64_t sum;

			memcpy(f, e, len);
			h = memmem(f, len, "\"raw_hash\":\"", 12);
			if (h) {
				h += 12;
				*h = *h == '0' ? '1' : '0';
			}
			sum = XXH64(f, len - 8, 0);
			for (int i = 0; i < 8; i++)
				f[len - 8 + i] = (uint8_t)(sum >> (8 * i));
			CHECK(h != NULL, "found raw_hash in the export");
			CHECK_RC(store_import(b, f, len, id), SSMD_ECORRUPT);
			free(f);
		}
		CHECK_RC(store_total_size(b, &t), SSMD_OK);
		CHECK(t.n_states == 1, "failed imports changed nothing (%llu)",
		      (unsigned long long)t.n_states);
	}

	/* file variants */
	path_of(path, sizeof(path), "child.ssmdstate");
	CHECK_RC(store_export_file(a, child, path), SSMD_OK);
	CHECK_RC(store_import_file(b, path, imp), SSMD_OK);
	CHECK_RC(store_state_info_get(b, imp, &ib), SSMD_OK);
	CHECK(ib.raw_hash == ia.raw_hash || ia.raw_hash == 0,
	      "file round trip keeps the hash");
	store_state_info_fini(&ib);
	path_of(path, sizeof(path), "missing.ssmdstate");
	CHECK_RC(store_import_file(b, path, imp), SSMD_ENOENT);
	free(buf);
	store_close(a);
	store_close(b);
}

/* -------------------------------------------------------------- tags -- */

static void test_tags(void)
{
	store *s = open_new("tags.db", NULL);
	char a[STORE_ID_SIZE], b[STORE_ID_SIZE], res[STORE_ID_SIZE];
	char long_name[STORE_TAG_MAX + 2];
	static const char *const good[] = {
		"main", "textbook/python-tutorial", "a.b_c-d:e@f+g=h", "x/y/z",
		"v1.2", "..x", "A",
	};
	static const char *const bad[] = {
		"", "/a", "a/", "a//b", "a/./b", "../x", "x/..", ".",
		"has space", "tab\there", "quote\"", "star*", "ümlaut",
		"01ARZ3NDEKTSV4RRFFQ69G5FAV", /* shaped like an ID */
	};
	store_tag *tags = NULL;
	size_t n = 0;

	CHECK_RC(put(s, STORE_KIND_SNAPSHOT, 1, 1, 0, NULL, 0, NULL, 0, 0, a),
		 SSMD_OK);
	CHECK_RC(put(s, STORE_KIND_SNAPSHOT, 1, 2, 0, NULL, 0, NULL, 0, 0, b),
		 SSMD_OK);
	for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++)
		CHECK_RC(store_tag_set(s, good[i], a), SSMD_OK);
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		CHECK(!store_tag_name_valid(bad[i]), "'%s' is invalid", bad[i]);
		CHECK_RC(store_tag_set(s, bad[i], a), SSMD_EINVAL);
	}
	memset(long_name, 'n', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	CHECK_RC(store_tag_set(s, long_name, a), SSMD_EINVAL);
	long_name[STORE_TAG_MAX] = '\0';
	CHECK_RC(store_tag_set(s, long_name, a), SSMD_OK);
	CHECK_RC(store_tag_set(s, "main", "01ARZ3NDEKTSV4RRFFQ69G5FAV"),
		 SSMD_ENOENT);
	CHECK_RC(store_tag_set(s, NULL, a), SSMD_EINVAL);

	/* moving a tag, tagging by tag */
	CHECK_RC(store_tag_set(s, "main", b), SSMD_OK);
	CHECK_RC(store_resolve(s, "main", res), SSMD_OK);
	CHECK(strcmp(res, b) == 0, "tag moved");
	CHECK_RC(store_tag_set(s, "release", "main"), SSMD_OK);
	CHECK_RC(store_resolve(s, "release", res), SSMD_OK);
	CHECK(strcmp(res, b) == 0, "tag set through a tag");

	CHECK_RC(store_tag_list(s, "x/", &tags, &n), SSMD_OK);
	CHECK(n == 1 && strcmp(tags[0].name, "x/y/z") == 0 &&
	      strcmp(tags[0].id, a) == 0, "prefix list");
	free(tags);
	CHECK_RC(store_tag_list(s, NULL, &tags, &n), SSMD_OK);
	CHECK(n == sizeof(good) / sizeof(*good) + 2, "all tags listed (%zu)", n);
	for (size_t i = 1; i < n; i++)
		CHECK(strcmp(tags[i - 1].name, tags[i].name) < 0,
		      "tags sorted by name");
	free(tags);
	CHECK_RC(store_tag_delete(s, "release"), SSMD_OK);
	CHECK_RC(store_tag_delete(s, "release"), SSMD_ENOENT);
	CHECK_RC(store_resolve(s, "release", res), SSMD_ENOENT);
	store_close(s);
}

/* ------------------------------------------- lineage, transcripts, delete -- */

static void test_lineage_delete_gc(void)
{
	store *s = open_new("lineage.db", NULL);
	/* root(3 tokens) -> a(+2) -> b(+1); c root(2); m = merge(b, c);
	 * a -> d(+1) */
	char root[STORE_ID_SIZE], a[STORE_ID_SIZE], b[STORE_ID_SIZE],
		c[STORE_ID_SIZE], m[STORE_ID_SIZE], d[STORE_ID_SIZE];
	const int32_t t_root[3] = { 10, 11, 12 }, t_a[2] = { 20, 21 },
		t_b[1] = { 30 }, t_c[2] = { 40, 41 }, t_d[1] = { 50 };
	const int32_t want_b[6] = { 10, 11, 12, 20, 21, 30 };
	const char *p_root[1] = { root }, *p_a[1] = { a }, *p_m[2] = { b, c };
	store_state_info *anc = NULL, *kids = NULL;
	size_t na = 0, nk = 0, n_tok = 0;
	int32_t *tok = NULL;
	uint64_t n_states = 0, n_bytes = 0;
	void *got;
	size_t glen;

	CHECK_RC(put(s, STORE_KIND_CHECKPOINT, 3, 1, 0, NULL, 0, t_root, 3, 0,
		     root), SSMD_OK);
	CHECK_RC(put(s, STORE_KIND_CHECKPOINT, 5, 2, 0, p_root, 1, t_a, 2, 0,
		     a), SSMD_OK);
	CHECK_RC(put(s, STORE_KIND_CHECKPOINT, 6, 3, 0, p_a, 1, t_b, 1, 0, b),
		 SSMD_OK);
	CHECK_RC(put(s, STORE_KIND_SNAPSHOT, 2, 4, 0, NULL, 0, t_c, 2, 0, c),
		 SSMD_OK);
	CHECK_RC(put(s, STORE_KIND_MERGE, 8, 5, 0, p_m, 2, t_c, 2, 0, m),
		 SSMD_OK);
	CHECK_RC(put(s, STORE_KIND_CHECKPOINT, 6, 6, 0, p_a, 1, t_d, 1, 0, d),
		 SSMD_OK);

	CHECK_RC(store_transcript(s, b, &tok, &n_tok), SSMD_OK);
	CHECK(n_tok == 6 && tok && memcmp(tok, want_b, sizeof(want_b)) == 0,
	      "transcript root -> b concatenates along the chain");
	free(tok);
	tok = NULL;

	CHECK_RC(store_lineage(s, m, &anc, &na, &kids, &nk), SSMD_OK);
	CHECK(na == 4 && nk == 0, "merge has 4 ancestors (%zu), no children",
	      na);
	if (na == 4) {
		/* depth 1: b and c (by ID), depth 2: a, depth 3: root */
		CHECK(strcmp(anc[0].id, b) == 0 && strcmp(anc[1].id, c) == 0 &&
		      strcmp(anc[2].id, a) == 0 && strcmp(anc[3].id, root) == 0,
		      "ancestors nearest first");
	}
	store_info_array_free(anc, na);
	store_info_array_free(kids, nk);
	CHECK_RC(store_lineage(s, a, &anc, &na, &kids, &nk), SSMD_OK);
	CHECK(na == 1 && nk == 2 && strcmp(kids[0].id, b) == 0 &&
	      strcmp(kids[1].id, d) == 0, "a: parent root, children b and d");
	store_info_array_free(anc, na);
	store_info_array_free(kids, nk);
	{
		store_state_info info;

		CHECK_RC(store_state_info_get(s, m, &info), SSMD_OK);
		CHECK(info.n_parents == 2 && strcmp(info.parents[0], b) == 0 &&
		      strcmp(info.parents[1], c) == 0, "merge lists its parents");
		store_state_info_fini(&info);
	}

	/* delete the middle of the chain: children keep payloads, b's
	 * transcript from the root is unchanged, b now hangs off root */
	CHECK_RC(store_tag_set(s, "keep/a", a), SSMD_OK);
	CHECK_RC(store_state_delete(s, a, 0), SSMD_EEXIST);
	CHECK_RC(store_state_delete(s, "keep/a", 1), SSMD_EINVAL);
	CHECK_RC(store_state_delete(s, a, 1), SSMD_OK);
	CHECK_RC(store_resolve(s, "keep/a", root), SSMD_ENOENT);
	CHECK_RC(store_state_delete(s, a, 1), SSMD_ENOENT);
	got = NULL;
	CHECK_RC(store_state_get(s, b, &got, &glen, NULL), SSMD_OK);
	free(got);
	CHECK_RC(store_transcript(s, b, &tok, &n_tok), SSMD_OK);
	CHECK(n_tok == 6 && tok && memcmp(tok, want_b, sizeof(want_b)) == 0,
	      "b's transcript survives deleting its parent");
	free(tok);
	tok = NULL;
	CHECK_RC(store_lineage(s, b, &anc, &na, &kids, &nk), SSMD_OK);
	CHECK(na == 1 && strcmp(anc[0].id, root) == 0 && nk == 1 &&
	      strcmp(kids[0].id, m) == 0, "b re-parented onto root");
	store_info_array_free(anc, na);
	store_info_array_free(kids, nk);

	/* deleting a root: child d (first parent root after a went) becomes
	 * a root whose transcript holds root's tokens */
	{
		const int32_t want_d[6] = { 10, 11, 12, 20, 21, 50 };

		CHECK_RC(store_state_delete(s, root, 0), SSMD_OK);
		CHECK_RC(store_transcript(s, d, &tok, &n_tok), SSMD_OK);
		CHECK(n_tok == 6 && tok &&
		      memcmp(tok, want_d, sizeof(want_d)) == 0,
		      "d's transcript survives deleting the root");
		free(tok);
		tok = NULL;
	}

	/* gc: nothing is older than an hour; with age 0, everything but the
	 * tagged state and its ancestors goes */
	CHECK_RC(store_gc(s, 3600, 0, &n_states, &n_bytes), SSMD_OK);
	CHECK(n_states == 0, "young states are kept (%llu)",
	      (unsigned long long)n_states);
	CHECK_RC(store_tag_set(s, "keep/m", m), SSMD_OK);
	usleep(2000);
	CHECK_RC(store_gc(s, 0, 1, &n_states, &n_bytes), SSMD_OK);
	CHECK(n_states == 1 && n_bytes > 0, "dry run: only d is collectable "
	      "(%llu)", (unsigned long long)n_states);
	CHECK_RC(store_state_info_get(s, d, &(store_state_info){ 0 }), SSMD_OK);
	CHECK_RC(store_gc(s, 0, 0, &n_states, NULL), SSMD_OK);
	CHECK(n_states == 1, "gc deleted d");
	CHECK_RC(store_resolve(s, d, root), SSMD_ENOENT);
	CHECK_RC(store_resolve(s, b, root), SSMD_OK);
	CHECK_RC(store_resolve(s, c, root), SSMD_OK);
	CHECK_RC(store_transcript(s, m, &tok, &n_tok), SSMD_OK);
	CHECK(n_tok == 8 && tok && memcmp(tok, want_b, sizeof(want_b)) == 0 &&
	      tok[6] == 40 && tok[7] == 41, "merge transcript intact");
	free(tok);
	store_close(s);
}

/* ------------------------------------------------------------ ID order -- */

/* store_id_next on fixed inputs, the expected bytes worked out by hand:
 * a later millisecond takes its time and 10 random bytes; the same one (or
 * a clock stepped back) the last ID's time and random part + 1 + the
 * 40-bit step; a random part that would pass 80 bits the next millisecond. */
static void test_id_next(void)
{
	uint8_t rnd[15], last[16] = { 0 }, out[16];
	int64_t ms;

	for (int i = 0; i < 15; i++)
		rnd[i] = (uint8_t)(0xA0 + i);
	{
		static const uint8_t want[16] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
						  0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5,
						  0xA6, 0xA7, 0xA8, 0xA9 };

		ms = store_id_next(last, -1, 0x010203040506LL, rnd, out);
		CHECK(ms == 0x010203040506LL && memcmp(out, want, 16) == 0,
		      "a first ID: its time and 10 random bytes");
	}
	/* random part 00 00 00 00 00 FF FF FF FF FF, step 00 00 00 00 01:
	 * + 1 + 1 = 00 00 00 00 01 00 00 00 00 01 */
	memset(last, 0, sizeof(last));
	last[5] = 0x07;
	memset(last + 11, 0xFF, 5);
	memset(rnd + 10, 0, 4);
	rnd[14] = 0x01;
	for (int back = 0; back < 2; back++) {
		static const uint8_t want[16] = { 0, 0, 0, 0, 0, 0x07, 0, 0, 0, 0,
						  0x01, 0, 0, 0, 0, 0x01 };

		ms = store_id_next(last, 7, back ? 5 : 7, rnd, out);
		CHECK(ms == 7 && memcmp(out, want, 16) == 0 && memcmp(out, last, 16) > 0,
		      "same millisecond (clock back %d): last + 1 + step, sorting after it",
		      back);
	}
	/* random part all FF: + 1 passes 80 bits, on to millisecond 8 */
	memset(last + 6, 0xFF, 10);
	memset(rnd + 10, 0, 5);
	{
		static const uint8_t want[16] = { 0, 0, 0, 0, 0, 0x08, 0xA0, 0xA1,
						  0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
						  0xA8, 0xA9 };

		ms = store_id_next(last, 7, 7, rnd, out);
		CHECK(ms == 8 && memcmp(out, want, 16) == 0 && memcmp(out, last, 16) > 0,
		      "a full millisecond moves on to the next");
	}
}

/* IDs made one after another sort in that order, also within one
 * millisecond (listings walk by ID, and their cursors rely on it): 300
 * small puts as fast as they go, many of them sharing a millisecond here
 * (test_id_next covers that case whatever the machine's speed). */
static void test_id_order(void)
{
	store *s = open_new("order.db", NULL);
	char prev[STORE_ID_SIZE] = "", id[STORE_ID_SIZE];
	int in_order = 1, same_ms = 0;

	for (int i = 0; i < 300; i++) {
		size_t len;
		void *raw = make_state(fp_a, 1, (uint64_t)i, 0, &len);
		store_put p = {
			.raw = raw, .raw_len = len, .kind = STORE_KIND_CHECKPOINT,
		};

		CHECK_RC(store_state_put(s, &p, id), SSMD_OK);
		free(raw);
		if (prev[0]) {
			in_order &= strcmp(prev, id) < 0;
			same_ms += id_time(prev) == id_time(id);
		}
		memcpy(prev, id, sizeof(id));
	}
	CHECK(in_order, "300 IDs in the order they were made (%d pairs in one ms)",
	      same_ms);
	printf("  ID order: 300 puts, %d consecutive pairs within one millisecond\n",
	       same_ms);
	store_close(s);
}

/* ------------------------------------------------------ list and models -- */

static void test_list(void)
{
	store *s = open_new("list.db", NULL);
	char ids[25][STORE_ID_SIZE], next[STORE_ID_SIZE] = "";
	store_state_info *arr = NULL;
	size_t n = 0, seen = 0;
	int in_order = 1, pages = 0;
	int64_t mid_ms = 0;
	char *cfg = NULL;

	for (int i = 0; i < 25; i++) {
		size_t len;
		void *raw = make_state(i < 20 ? fp_a : fp_b, 1, (uint64_t)i, 0,
				       &len);
		store_put p = {
			.raw = raw, .raw_len = len,
			.kind = i % 5 == 0 ? STORE_KIND_SNAPSHOT :
					     STORE_KIND_CHECKPOINT,
			.label = i % 2 ? "odd" : "even",
		};

		CHECK_RC(store_state_put(s, &p, ids[i]), SSMD_OK);
		free(raw);
		if (i == 12) {
			usleep(3000);
			mid_ms = wall_ms();
			usleep(3000);
		}
	}
	CHECK_RC(store_tag_set(s, "book/one", ids[3]), SSMD_OK);
	CHECK_RC(store_tag_set(s, "book/two", ids[4]), SSMD_OK);
	CHECK_RC(store_tag_set(s, "other", ids[5]), SSMD_OK);

	/* pages of 10 walk every state once, in ID order */
	do {
		store_filter f = { .limit = 10, .cursor = next };

		CHECK_RC(store_state_list(s, &f, &arr, &n, next), SSMD_OK);
		for (size_t i = 0; i < n; i++, seen++)
			if (seen >= 25 || strcmp(arr[i].id, ids[seen]) != 0)
				in_order = 0;
		store_info_array_free(arr, n);
		pages++;
	} while (next[0] && pages < 10);
	CHECK(seen == 25 && in_order && pages == 3,
	      "pagination: %zu states in %d pages, ordered %d", seen, pages,
	      in_order);

	{
		store_filter f = { .newest_first = 1, .limit = 3 };

		CHECK_RC(store_state_list(s, &f, &arr, &n, next), SSMD_OK);
		CHECK(n == 3 && strcmp(arr[0].id, ids[24]) == 0 &&
		      strcmp(next, ids[22]) == 0, "newest first");
		store_info_array_free(arr, n);
	}
	{
		store_filter f = { .fingerprint = fp_b };

		CHECK_RC(store_state_list(s, &f, &arr, &n, next), SSMD_OK);
		CHECK(n == 5 && !next[0], "model filter (%zu)", n);
		store_info_array_free(arr, n);
	}
	{
		store_filter f = { .kind = STORE_KIND_SNAPSHOT, .label = "odd" };

		CHECK_RC(store_state_list(s, &f, &arr, &n, next), SSMD_OK);
		CHECK(n == 2 && strcmp(arr[0].id, ids[5]) == 0 &&
		      strcmp(arr[1].id, ids[15]) == 0, "kind + label filter");
		store_info_array_free(arr, n);
	}
	{
		store_filter f = { .tag_prefix = "book/" };

		CHECK_RC(store_state_list(s, &f, &arr, &n, next), SSMD_OK);
		CHECK(n == 2 && strcmp(arr[0].id, ids[3]) == 0 &&
		      arr[0].n_tags == 1, "tag prefix filter");
		store_info_array_free(arr, n);
	}
	{
		store_filter f = { .since_ms = mid_ms };

		CHECK_RC(store_state_list(s, &f, &arr, &n, next), SSMD_OK);
		CHECK(n == 12 && strcmp(arr[0].id, ids[13]) == 0,
		      "time range: since (%zu)", n);
		store_info_array_free(arr, n);
		f.since_ms = 0;
		f.until_ms = mid_ms;
		CHECK_RC(store_state_list(s, &f, &arr, &n, next), SSMD_OK);
		CHECK(n == 13, "time range: until (%zu)", n);
		store_info_array_free(arr, n);
	}
	{
		store_filter f = { .cursor = "garbage" };

		CHECK_RC(store_state_list(s, &f, &arr, &n, next), SSMD_EINVAL);
	}

	/* models */
	CHECK_RC(store_model_get(s, fp_a, &cfg), SSMD_ENOENT);
	CHECK_RC(store_model_put(s, fp_a, "{oops"), SSMD_EINVAL);
	CHECK_RC(store_model_put(s, fp_a, "{\"arch\":\"mamba\",\"n_layer\":2}"),
		 SSMD_OK);
	CHECK_RC(store_model_put(s, fp_a, "{\"arch\":\"mamba\",\"n_layer\":3}"),
		 SSMD_OK);
	CHECK_RC(store_model_get(s, fp_a, &cfg), SSMD_OK);
	CHECK(cfg && strstr(cfg, "\"n_layer\":3"), "model config replaced");
	free(cfg);

	{
		store_totals t;
		uint64_t stored = 0;
		store_filter f = { .limit = 100 };

		CHECK_RC(store_total_size(s, &t), SSMD_OK);
		CHECK_RC(store_state_list(s, &f, &arr, &n, next), SSMD_OK);
		for (size_t i = 0; i < n; i++)
			stored += arr[i].stored_size;
		CHECK(t.n_states == 25 && t.stored_bytes == stored &&
		      t.file_bytes >= stored, "totals add up");
		store_info_array_free(arr, n);
	}
	store_close(s);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(dir, sizeof(dir), "%s/ssmd-store-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_open();
	test_round_trip();
	test_validation();
	test_corruption();
	test_full_disk();
	test_concurrency();
	test_export_import();
	test_tags();
	test_lineage_delete_gc();
	test_list();
	test_id_next();
	test_id_order();
	{
		char cmd[300];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	}
	return check_summary("statestore");
}
