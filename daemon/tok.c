/*
 * tok.c — loading tokenizer.json, encoding (added tokens, NFC, GPT-2 split,
 * byte-level BPE) and decoding. See tok.h for the contract.
 */
#include "tok.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <utf8proc.h>
#include <xxhash.h>

#include "tok_impl.h"

/* An added token (tokenizer.json "added_tokens"). */
struct tok_added {
	char *match;      /* the text matched: content, NFC'd when normalized */
	size_t match_len;
	int32_t id;
	bool single_word, lstrip, rstrip, normalized;
};

/* A trie over the added tokens of one kind (normalized or not), walked
 * from each position of the text to find the longest token starting
 * there. The root is the table root[]; a node's children form a list
 * through sibling. */
struct tok_trie_node {
	int32_t child, sibling; /* node indices, -1 for none */
	int32_t added;          /* index into tok->added ending here, or -1 */
	uint8_t byte;
};

struct tok_trie {
	struct tok_trie_node *nodes;
	size_t n, cap;
	int32_t root[256]; /* the root's children by byte, -1 for none */
};

/* Slot of the model vocabulary's open-addressing map: token text → id. */
struct tok_vslot {
	uint64_t hash; /* XXH3 of the text; 0 marks an empty slot */
	int32_t id;
};

/* Slot of the merge map: (left id, right id) → (rank, merged id). */
struct tok_mslot {
	uint64_t key; /* left << 32 | right; UINT64_MAX marks an empty slot */
	uint32_t rank;
	int32_t id;
};

struct tok_tokenizer {
	size_t n_ids; /* one past the largest ID */

	/* Per ID (n_ids entries): the token's text (an added token's, NFC'd
	 * if normalized, overrides the model vocabulary's) and the bytes it
	 * decodes to, both as offsets into arenas; len -1 for IDs with no
	 * token. */
	uint32_t *text_off, *dec_off;
	int32_t *text_len, *dec_len;
	struct tok_buf texts, decs;

	/* The model vocabulary (its own texts: model_off/model_len index
	 * texts for ids the model defines, even where an added token with
	 * other text overrides the decode). */
	uint32_t *model_off;
	int32_t *model_len;
	struct tok_vslot *vocab;
	size_t vocab_mask, n_vocab; /* n_vocab: entries in model.vocab */

	struct tok_mslot *merges;
	size_t merges_mask;

	int32_t byte_id[256]; /* id of each byte's byte-level symbol; -1 for
			       * bytes that never occur in UTF-8 */

	struct tok_added *added;
	size_t n_added;
	struct tok_trie trie_raw, trie_norm;

	bool nfc, add_prefix_space, use_regex;

	struct tok_cache_slot *cache; /* TOK_CACHE_SLOTS, shared by all threads */
};

/* The word cache: words repeat a lot in real text, so the BPE result of
 * each short word is kept in a direct-mapped table shared by every thread.
 * A slot is one cache line of 64-bit atomics guarded by a sequence lock:
 * a writer makes seq odd while it fills the slot (and gives up if another
 * writer holds it), a reader copies the slot and keeps the copy only if
 * seq was even and unchanged across the copy. Nothing ever blocks; a lost
 * race only costs a cache miss. */
#define TOK_CACHE_SLOTS (1u << 16) /* x 64 bytes = 4 MiB */
#define TOK_CACHE_WORD 16          /* longest cached word, in bytes */
#define TOK_CACHE_IDS 6            /* most ids of a cached word */

struct tok_cache_slot {
	_Atomic uint64_t seq;
	_Atomic uint64_t hash;     /* of the word; 0 while empty */
	_Atomic uint64_t len;      /* word bytes | number of ids << 8 */
	_Atomic uint64_t word[2];  /* the word, zero-padded */
	_Atomic uint64_t ids[3];   /* the ids, two per word */
};

/* ---- GPT-2 byte-level alphabet --------------------------------------- */

/* GPT-2 maps each byte to a printable code point: bytes '!'..'~',
 * 0xA1..0xAC and 0xAE..0xFF map to themselves, the other 68 bytes to
 * U+0100.. in byte order. */
static int32_t byte_to_cp(uint8_t b)
{
	if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
		return b;
	int32_t n = 0;
	for (int c = 0; c < b; c++)
		if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) ||
		      c >= 0xAE))
			n++;
	return 256 + n;
}

/* ---- hashing --------------------------------------------------------- */

static uint64_t text_hash(const void *s, size_t n)
{
	uint64_t h = XXH3_64bits(s, n);
	return h ? h : 1; /* 0 marks empty slots */
}

static size_t pair_slot(uint64_t key, size_t mask)
{
	/* Fibonacci hashing: the high bits of key * 2^64/phi spread the
	 * structured (left, right) pairs evenly. */
	return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static size_t table_size(size_t n)
{
	size_t size = 64;
	while (size < 2 * n)
		size *= 2; /* load factor at most 1/2 */
	return size;
}

static int32_t vocab_find(const tok_tokenizer *tok, const char *s, size_t n)
{
	uint64_t h = text_hash(s, n);
	for (size_t i = h & tok->vocab_mask;; i = (i + 1) & tok->vocab_mask) {
		const struct tok_vslot *v = &tok->vocab[i];
		if (!v->hash)
			return -1;
		if (v->hash == h && (size_t)tok->model_len[v->id] == n &&
		    !memcmp(tok->texts.p + tok->model_off[v->id], s, n))
			return v->id;
	}
}

static const struct tok_mslot *merge_find(const tok_tokenizer *tok,
					  int32_t a, int32_t b)
{
	uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	for (size_t i = pair_slot(key, tok->merges_mask);;
	     i = (i + 1) & tok->merges_mask) {
		const struct tok_mslot *m = &tok->merges[i];
		if (m->key == key)
			return m;
		if (m->key == UINT64_MAX)
			return NULL;
	}
}

/* ---- loading --------------------------------------------------------- */

static int read_file(const char *path, char **data, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	int rc = SSMD_OK;

	if (!f)
		return ssmd_err_set(errno == ENOENT ? SSMD_ENOENT : SSMD_EIO,
				    "%s: %s", path, strerror(errno));
	if (fseek(f, 0, SEEK_END) || ftell(f) < 0) {
		rc = ssmd_err_set(SSMD_EIO, "%s: cannot size: %s", path,
				  strerror(errno));
		goto out;
	}
	size_t size = (size_t)ftell(f);
	rewind(f);
	buf = malloc(size + 1);
	if (!buf) {
		rc = ssmd_err_set(SSMD_ENOMEM, "%s: %zu bytes", path, size);
		goto out;
	}
	if (fread(buf, 1, size, f) != size) {
		rc = ssmd_err_set(SSMD_EIO, "%s: short read", path);
		goto out;
	}
	buf[size] = '\0';
	*data = buf;
	*len = size;
	buf = NULL;
out:
	free(buf);
	fclose(f);
	return rc;
}

/* A JSON boolean field; absent or null gives def. */
static int json_bool(const cJSON *obj, const char *name, bool def, bool *out,
		     const char *path)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
	if (!v || cJSON_IsNull(v)) {
		*out = def;
		return SSMD_OK;
	}
	if (!cJSON_IsBool(v))
		return ssmd_err_set(SSMD_EFORMAT, "%s: \"%s\" is not a boolean",
				    path, name);
	*out = cJSON_IsTrue(v);
	return SSMD_OK;
}

/* The "type" of a component object, or NULL when the component is null. */
static int json_type(const cJSON *root, const char *name, const char **type,
		     const char *path)
{
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, name);
	*type = NULL;
	if (!c || cJSON_IsNull(c))
		return SSMD_OK;
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "type");
	if (!cJSON_IsObject(c) || !cJSON_IsString(t))
		return ssmd_err_set(SSMD_EFORMAT, "%s: \"%s\" has no type",
				    path, name);
	*type = t->valuestring;
	return SSMD_OK;
}

/* Checks every option of the model that would change the output and that
 * this module does not implement. */
static int check_model_options(const cJSON *model, const char *path)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
	if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: BPE dropout", path);
	static const char *const prefixes[] = {"continuing_subword_prefix",
					       "end_of_word_suffix"};
	for (size_t i = 0; i < 2; i++) {
		v = cJSON_GetObjectItemCaseSensitive(model, prefixes[i]);
		if (v && !cJSON_IsNull(v) &&
		    !(cJSON_IsString(v) && !v->valuestring[0]))
			return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: BPE %s",
					    path, prefixes[i]);
	}
	bool ignore_merges;
	int rc = json_bool(model, "ignore_merges", false, &ignore_merges, path);
	if (rc)
		return rc;
	if (ignore_merges)
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: BPE ignore_merges",
				    path);
	/* unk_token, fuse_unk and byte_fallback never act: every byte of
	 * UTF-8 has a symbol in the vocabulary (checked after loading). */
	return SSMD_OK;
}

static int check_pipeline(tok_tokenizer *tok, const cJSON *root,
			  const char *path)
{
	const char *type;
	int rc = json_type(root, "model", &type, path);
	if (rc)
		return rc;
	if (type && strcmp(type, "BPE"))
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: model type %s",
				    path, type);

	rc = json_type(root, "normalizer", &type, path);
	if (rc)
		return rc;
	if (type && strcmp(type, "NFC"))
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: normalizer %s",
				    path, type);
	tok->nfc = type != NULL;

	rc = json_type(root, "pre_tokenizer", &type, path);
	if (rc)
		return rc;
	if (!type || strcmp(type, "ByteLevel"))
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: pre_tokenizer %s",
				    path, type ? type : "null");
	const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
	if ((rc = json_bool(pre, "add_prefix_space", true,
			    &tok->add_prefix_space, path)) ||
	    (rc = json_bool(pre, "use_regex", true, &tok->use_regex, path)))
		return rc;

	rc = json_type(root, "decoder", &type, path);
	if (rc)
		return rc;
	if (!type || strcmp(type, "ByteLevel"))
		return ssmd_err_set(SSMD_EUNSUPPORTED, "%s: decoder %s", path,
				    type ? type : "null");
	return SSMD_OK;
}

/* Grows the per-ID tables to hold id. */
static int ids_grow(tok_tokenizer *tok, size_t want)
{
	if (want <= tok->n_ids)
		return SSMD_OK;
	size_t cap = tok->n_ids ? tok->n_ids : 1024;
	while (cap < want)
		cap *= 2;
	void *p;
#define GROW(field)                                                          \
	do {                                                                 \
		p = realloc(tok->field, cap * sizeof(*tok->field));          \
		if (!p)                                                      \
			return ssmd_err_set(SSMD_ENOMEM, "tokenizer tables"); \
		tok->field = p;                                              \
	} while (0)
	GROW(text_off);
	GROW(text_len);
	GROW(dec_off);
	GROW(dec_len);
	GROW(model_off);
	GROW(model_len);
#undef GROW
	for (size_t i = tok->n_ids; i < cap; i++)
		tok->text_len[i] = tok->dec_len[i] = tok->model_len[i] = -1;
	tok->n_ids = cap;
	return SSMD_OK;
}

/* IDs are dense in real files; bounding them by the number of tokens
 * defined keeps a hostile file from making the per-ID tables huge. */
static size_t id_limit(size_t defined)
{
	return 2 * defined + 1024;
}

static int load_vocab(tok_tokenizer *tok, const cJSON *vocab, const char *path)
{
	size_t count = 0;
	int32_t max_id = -1;
	const cJSON *e;
	int rc;

	if (!cJSON_IsObject(vocab))
		return ssmd_err_set(SSMD_EFORMAT, "%s: model.vocab is not an object",
				    path);
	cJSON_ArrayForEach(e, vocab) {
		if (!cJSON_IsNumber(e) || e->valuedouble < 0 ||
		    e->valuedouble > INT32_MAX - 1 ||
		    e->valuedouble != (double)(int32_t)e->valuedouble)
			return ssmd_err_set(SSMD_EFORMAT,
					    "%s: vocab entry \"%s\" has a bad id",
					    path, e->string);
		if ((int32_t)e->valuedouble > max_id)
			max_id = (int32_t)e->valuedouble;
		count++;
	}
	if ((size_t)max_id >= id_limit(count))
		return ssmd_err_set(SSMD_EFORMAT,
				    "%s: vocab id %d is far beyond its %zu entries",
				    path, (int)max_id, count);
	tok->n_vocab = count;
	if ((rc = ids_grow(tok, (size_t)max_id + 1)))
		return rc;
	tok->vocab_mask = table_size(count) - 1;
	tok->vocab = calloc(tok->vocab_mask + 1, sizeof(*tok->vocab));
	if (!tok->vocab)
		return ssmd_err_set(SSMD_ENOMEM, "tokenizer vocabulary");

	cJSON_ArrayForEach(e, vocab) {
		int32_t id = (int32_t)e->valuedouble;
		size_t len = strlen(e->string);
		if (tok->model_len[id] >= 0)
			return ssmd_err_set(SSMD_EFORMAT,
					    "%s: vocab id %d given twice", path,
					    (int)id);
		if (len > INT32_MAX || tok->texts.len > UINT32_MAX - len - 1)
			return ssmd_err_set(SSMD_EFORMAT, "%s: vocab too large",
					    path);
		if (vocab_find(tok, e->string, len) >= 0)
			return ssmd_err_set(SSMD_EFORMAT,
					    "%s: vocab token \"%s\" given twice",
					    path, e->string);
		tok->model_off[id] = tok->text_off[id] = (uint32_t)tok->texts.len;
		tok->model_len[id] = tok->text_len[id] = (int32_t)len;
		if ((rc = tok_buf_append(&tok->texts, e->string, len + 1)))
			return rc;
		uint64_t h = text_hash(e->string, len);
		size_t i = h & tok->vocab_mask;
		while (tok->vocab[i].hash)
			i = (i + 1) & tok->vocab_mask;
		tok->vocab[i].hash = h;
		tok->vocab[i].id = id;
	}
	return SSMD_OK;
}

/* Splits one merge entry ("a b" or ["a", "b"]) into its two token ids and
 * finds the id of their concatenation, built in scratch. */
static int merge_ids(const tok_tokenizer *tok, const cJSON *m, size_t rank,
		     int32_t ids[3], struct tok_buf *scratch, const char *path)
{
	const char *a, *b;
	size_t alen, blen;
	char *sp = NULL;

	if (cJSON_IsString(m)) {
		a = m->valuestring;
		sp = strchr(a, ' ');
		if (!sp || strchr(sp + 1, ' '))
			return ssmd_err_set(SSMD_EFORMAT,
					    "%s: merge %zu \"%s\" is not two tokens",
					    path, rank, a);
		alen = (size_t)(sp - a);
		b = sp + 1;
	} else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
		   cJSON_IsString(m->child) && cJSON_IsString(m->child->next)) {
		a = m->child->valuestring;
		alen = strlen(a);
		b = m->child->next->valuestring;
	} else {
		return ssmd_err_set(SSMD_EFORMAT, "%s: merge %zu is malformed",
				    path, rank);
	}
	blen = strlen(b);

	int rc;
	scratch->len = 0;
	if ((rc = tok_buf_append(scratch, a, alen)) ||
	    (rc = tok_buf_append(scratch, b, blen)))
		return rc;
	ids[0] = vocab_find(tok, scratch->p, alen);
	ids[1] = vocab_find(tok, b, blen);
	ids[2] = vocab_find(tok, scratch->p, alen + blen);
	if (ids[0] < 0 || ids[1] < 0 || ids[2] < 0)
		return ssmd_err_set(SSMD_EFORMAT,
				    "%s: merge %zu names a token not in the vocabulary",
				    path, rank);
	return SSMD_OK;
}

static int load_merges(tok_tokenizer *tok, const cJSON *merges, const char *path)
{
	if (!cJSON_IsArray(merges))
		return ssmd_err_set(SSMD_EFORMAT, "%s: model.merges is not an array",
				    path);
	size_t count = (size_t)cJSON_GetArraySize(merges);
	tok->merges_mask = table_size(count) - 1;
	tok->merges = malloc((tok->merges_mask + 1) * sizeof(*tok->merges));
	if (!tok->merges)
		return ssmd_err_set(SSMD_ENOMEM, "tokenizer merges");
	for (size_t i = 0; i <= tok->merges_mask; i++)
		tok->merges[i].key = UINT64_MAX;

	struct tok_buf scratch = {0};
	size_t rank = 0;
	const cJSON *m;
	int rc = SSMD_OK;
	cJSON_ArrayForEach(m, merges) {
		int32_t ids[3] = {-1, -1, -1};
		if ((rc = merge_ids(tok, m, rank, ids, &scratch, path)))
			break;
		uint64_t key = (uint64_t)(uint32_t)ids[0] << 32 | (uint32_t)ids[1];
		size_t i = pair_slot(key, tok->merges_mask);
		while (tok->merges[i].key != UINT64_MAX && tok->merges[i].key != key)
			i = (i + 1) & tok->merges_mask;
		/* A pair listed twice takes its last rank, as in Hugging
		 * Face's map built in file order. */
		tok->merges[i].key = key;
		tok->merges[i].rank = (uint32_t)rank;
		tok->merges[i].id = ids[2];
		rank++;
	}
	free(scratch.p);
	return rc;
}

static int trie_node_new(struct tok_trie *t, uint8_t byte, int32_t *out)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		void *p = realloc(t->nodes, cap * sizeof(*t->nodes));
		if (!p)
			return ssmd_err_set(SSMD_ENOMEM, "tokenizer added tokens");
		t->nodes = p;
		t->cap = cap;
	}
	t->nodes[t->n] = (struct tok_trie_node){
		.child = -1, .sibling = -1, .added = -1, .byte = byte};
	*out = (int32_t)t->n++;
	return SSMD_OK;
}

static int trie_insert(struct tok_trie *t, const uint8_t *s, size_t n,
		       int32_t added)
{
	int32_t node = t->root[s[0]];
	int rc;

	if (node < 0) {
		if ((rc = trie_node_new(t, s[0], &node)))
			return rc;
		t->root[s[0]] = node;
	}
	for (size_t i = 1; i < n; i++) {
		int32_t c = t->nodes[node].child;
		while (c >= 0 && t->nodes[c].byte != s[i])
			c = t->nodes[c].sibling;
		if (c < 0) {
			if ((rc = trie_node_new(t, s[i], &c)))
				return rc;
			t->nodes[c].sibling = t->nodes[node].child;
			t->nodes[node].child = c;
		}
		node = c;
	}
	/* The same text given twice matches as the later entry, as a later
	 * Hugging Face entry replaces an earlier one. */
	t->nodes[node].added = added;
	return SSMD_OK;
}

static int load_added(tok_tokenizer *tok, const cJSON *list, const char *path)
{
	const cJSON *e;
	int rc;

	if (!list || cJSON_IsNull(list))
		return SSMD_OK;
	if (!cJSON_IsArray(list))
		return ssmd_err_set(SSMD_EFORMAT, "%s: added_tokens is not an array",
				    path);
	tok->added = calloc((size_t)cJSON_GetArraySize(list) + 1,
			    sizeof(*tok->added));
	if (!tok->added)
		return ssmd_err_set(SSMD_ENOMEM, "tokenizer added tokens");

	cJSON_ArrayForEach(e, list) {
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
		struct tok_added *a = &tok->added[tok->n_added];
		bool special;

		if (!cJSON_IsNumber(id) || id->valuedouble < 0 ||
		    id->valuedouble > INT32_MAX - 1 ||
		    id->valuedouble != (double)(int32_t)id->valuedouble ||
		    !cJSON_IsString(content) || !content->valuestring[0])
			return ssmd_err_set(SSMD_EFORMAT,
					    "%s: added token %zu needs an id and content",
					    path, tok->n_added);
		if ((size_t)id->valuedouble >=
		    id_limit(tok->n_vocab + (size_t)cJSON_GetArraySize(list)))
			return ssmd_err_set(SSMD_EFORMAT,
					    "%s: added token id %.0f is far beyond the %zu tokens defined",
					    path, id->valuedouble,
					    tok->n_vocab + (size_t)cJSON_GetArraySize(list));
		size_t clen = strlen(content->valuestring);
		if (tok_utf8_valid_len((const uint8_t *)content->valuestring, clen) != clen)
			return ssmd_err_set(SSMD_EFORMAT,
					    "%s: added token %zu is not UTF-8",
					    path, tok->n_added);
		a->id = (int32_t)id->valuedouble;
		/* Special tokens are not normalised unless the file says so;
		 * other added tokens are (Hugging Face's defaults). */
		if ((rc = json_bool(e, "special", false, &special, path)) ||
		    (rc = json_bool(e, "single_word", false, &a->single_word, path)) ||
		    (rc = json_bool(e, "lstrip", false, &a->lstrip, path)) ||
		    (rc = json_bool(e, "rstrip", false, &a->rstrip, path)) ||
		    (rc = json_bool(e, "normalized", !special, &a->normalized, path)))
			return rc;

		if (a->normalized && tok->nfc) {
			utf8proc_uint8_t *nfc = NULL;
			utf8proc_ssize_t n = utf8proc_map(
				(const utf8proc_uint8_t *)content->valuestring,
				(utf8proc_ssize_t)clen, &nfc,
				UTF8PROC_STABLE | UTF8PROC_COMPOSE);
			if (n < 0)
				return ssmd_err_set(SSMD_ENOMEM, "%s: NFC: %s", path,
						    utf8proc_errmsg(n));
			a->match = (char *)nfc;
			a->match_len = (size_t)n;
		} else {
			a->match = strdup(content->valuestring);
			if (!a->match)
				return ssmd_err_set(SSMD_ENOMEM, "tokenizer added tokens");
			a->match_len = clen;
		}
		tok->n_added++;

		/* The per-ID text of an added token is what it matches: its
		 * content, NFC'd if normalized (Hugging Face decodes that form,
		 * so "cafe\u0301" decodes as "caf\u00e9" mapped byte-level). */
		if ((rc = ids_grow(tok, (size_t)a->id + 1)))
			return rc;
		if (tok->texts.len > UINT32_MAX - a->match_len - 1)
			return ssmd_err_set(SSMD_EFORMAT, "%s: vocab too large", path);
		tok->text_off[a->id] = (uint32_t)tok->texts.len;
		tok->text_len[a->id] = (int32_t)a->match_len;
		if ((rc = tok_buf_append(&tok->texts, a->match, a->match_len + 1)))
			return rc;
		struct tok_trie *t = a->normalized ? &tok->trie_norm : &tok->trie_raw;
		if ((rc = trie_insert(t, (const uint8_t *)a->match, a->match_len,
				      (int32_t)(tok->n_added - 1))))
			return rc;
	}
	return SSMD_OK;
}

/* The bytes each ID decodes to: its text mapped back through the
 * byte-level alphabet, or the text itself when some character is outside
 * the alphabet (added tokens like "<|endoftext|>" and runs of spaces). */
static int build_decode(tok_tokenizer *tok, const char *path)
{
	int16_t cp_to_byte[324]; /* the alphabet spans U+0021..U+0143 */
	int rc;

	for (size_t i = 0; i < 324; i++)
		cp_to_byte[i] = -1;
	for (int b = 0; b < 256; b++)
		cp_to_byte[byte_to_cp((uint8_t)b)] = (int16_t)b;

	for (size_t id = 0; id < tok->n_ids; id++) {
		if (tok->text_len[id] < 0)
			continue;
		const uint8_t *s = (const uint8_t *)tok->texts.p + tok->text_off[id];
		size_t n = (size_t)tok->text_len[id];
		size_t start = tok->decs.len;
		if (tok->decs.len > UINT32_MAX - n)
			return ssmd_err_set(SSMD_EFORMAT, "%s: vocab too large", path);
		bool mapped = true;
		for (size_t i = 0; i < n && mapped;) {
			enum tok_utf8 kind;
			size_t len = tok_utf8_scan(s + i, n - i, &kind);
			int32_t cp = kind == TOK_UTF8_OK ? tok_utf8_decode(s + i, len) : -1;
			if (cp < 0 || cp >= 324 || cp_to_byte[cp] < 0) {
				mapped = false;
				break;
			}
			uint8_t b = (uint8_t)cp_to_byte[cp];
			if ((rc = tok_buf_append(&tok->decs, &b, 1)))
				return rc;
			i += len;
		}
		if (!mapped) {
			tok->decs.len = start;
			if ((rc = tok_buf_append(&tok->decs, s, n)))
				return rc;
		}
		tok->dec_off[id] = (uint32_t)start;
		tok->dec_len[id] = (int32_t)(tok->decs.len - start);
	}
	return SSMD_OK;
}

/* Input is valid UTF-8 by the time BPE sees it, so only the 243 bytes that
 * occur in UTF-8 need a symbol (GPT-NeoX has none for C0, C1, F5-FF). */
static int build_byte_ids(tok_tokenizer *tok, const char *path)
{
	for (int b = 0; b < 256; b++) {
		utf8proc_uint8_t s[4];
		utf8proc_ssize_t n = utf8proc_encode_char(byte_to_cp((uint8_t)b), s);
		tok->byte_id[b] = vocab_find(tok, (const char *)s, (size_t)n);
		if (tok->byte_id[b] < 0 && b != 0xC0 && b != 0xC1 && b < 0xF5)
			return ssmd_err_set(SSMD_EFORMAT,
					    "%s: vocabulary lacks the byte-level symbol of byte 0x%02x",
					    path, b);
	}
	return SSMD_OK;
}

int tok_load(const char *path, tok_tokenizer **out)
{
	char *data = NULL;
	size_t len = 0;
	cJSON *root = NULL;
	tok_tokenizer *tok = NULL;
	int rc;

	if ((rc = read_file(path, &data, &len)))
		goto out;
	root = cJSON_ParseWithLength(data, len);
	if (!root || !cJSON_IsObject(root)) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: not a JSON object", path);
		goto out;
	}
	tok = calloc(1, sizeof(*tok));
	if (!tok) {
		rc = ssmd_err_set(SSMD_ENOMEM, "tokenizer");
		goto out;
	}
	tok->cache = aligned_alloc(64, TOK_CACHE_SLOTS * sizeof(*tok->cache));
	if (!tok->cache) {
		rc = ssmd_err_set(SSMD_ENOMEM, "tokenizer cache");
		goto out;
	}
	for (size_t i = 0; i < TOK_CACHE_SLOTS; i++) {
		struct tok_cache_slot *c = &tok->cache[i];
		atomic_init(&c->seq, 0);
		atomic_init(&c->hash, 0);
		atomic_init(&c->len, 0);
		for (int k = 0; k < 2; k++)
			atomic_init(&c->word[k], 0);
		for (int k = 0; k < 3; k++)
			atomic_init(&c->ids[k], 0);
	}
	memset(tok->trie_raw.root, -1, sizeof(tok->trie_raw.root));
	memset(tok->trie_norm.root, -1, sizeof(tok->trie_norm.root));

	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (!cJSON_IsObject(model)) {
		rc = ssmd_err_set(SSMD_EFORMAT, "%s: no model", path);
		goto out;
	}
	if ((rc = check_pipeline(tok, root, path)) ||
	    (rc = check_model_options(model, path)) ||
	    (rc = load_vocab(tok, cJSON_GetObjectItemCaseSensitive(model, "vocab"), path)) ||
	    (rc = load_merges(tok, cJSON_GetObjectItemCaseSensitive(model, "merges"), path)) ||
	    (rc = load_added(tok, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path)) ||
	    (rc = build_byte_ids(tok, path)) || (rc = build_decode(tok, path)))
		goto out;

	/* n_ids was rounded up for growth: trim it to one past the largest
	 * ID that has a token. */
	while (tok->n_ids && tok->text_len[tok->n_ids - 1] < 0)
		tok->n_ids--;
	*out = tok;
	tok = NULL;
out:
	tok_free(tok);
	cJSON_Delete(root);
	free(data);
	return rc;
}

void tok_free(tok_tokenizer *tok)
{
	if (!tok)
		return;
	for (size_t i = 0; i < tok->n_added; i++)
		free(tok->added[i].match);
	free(tok->added);
	free(tok->trie_raw.nodes);
	free(tok->trie_norm.nodes);
	free(tok->merges);
	free(tok->vocab);
	free(tok->text_off);
	free(tok->text_len);
	free(tok->dec_off);
	free(tok->dec_len);
	free(tok->model_off);
	free(tok->model_len);
	free(tok->texts.p);
	free(tok->decs.p);
	free(tok->cache);
	free(tok);
}

size_t tok_vocab_size(const tok_tokenizer *tok)
{
	return tok->n_ids;
}

int32_t tok_token_id(const tok_tokenizer *tok, const char *token)
{
	size_t n = strlen(token);
	for (size_t i = 0; i < tok->n_added; i++) {
		int32_t id = tok->added[i].id;
		if ((size_t)tok->text_len[id] == n &&
		    !memcmp(tok->texts.p + tok->text_off[id], token, n))
			return id;
	}
	return vocab_find(tok, token, n);
}

/* ---- encoding -------------------------------------------------------- */

/* One symbol of a word during BPE: a doubly linked list over the word's
 * bytes, merged in place. */
struct bpe_sym {
	int32_t id;
	int32_t prev, next; /* indices, -1 at the ends */
	bool dead;          /* merged into its left neighbour */
};

/* A candidate merge of symbol pos with its right neighbour. */
struct bpe_cand {
	uint32_t rank;
	int32_t pos, id;
};

/* Per-call state of tok_encode. */
struct enc {
	const tok_tokenizer *tok;
	int32_t *ids; /* output, grown */
	size_t n, cap;

	struct bpe_sym *syms; /* scratch for one word */
	struct bpe_cand *heap;
	size_t syms_cap, heap_n, heap_cap;

	struct tok_buf prefixed;   /* a piece with its prefix space added */
	struct tok_buf normalized; /* a piece of raw text in NFC */
};

static int emit(struct enc *e, const int32_t *ids, size_t n)
{
	if (n > e->cap - e->n) {
		size_t cap = e->cap ? e->cap : 256;
		while (n > cap - e->n)
			cap *= 2;
		int32_t *p = realloc(e->ids, cap * sizeof(*p));
		if (!p)
			return ssmd_err_set(SSMD_ENOMEM, "tokenizer output");
		e->ids = p;
		e->cap = cap;
	}
	memcpy(e->ids + e->n, ids, n * sizeof(*ids));
	e->n += n;
	return SSMD_OK;
}

static bool cand_less(const struct bpe_cand *a, const struct bpe_cand *b)
{
	return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static int heap_push(struct enc *e, struct bpe_cand c)
{
	if (e->heap_n == e->heap_cap) {
		size_t cap = e->heap_cap ? e->heap_cap * 2 : 64;
		void *p = realloc(e->heap, cap * sizeof(*e->heap));
		if (!p)
			return ssmd_err_set(SSMD_ENOMEM, "tokenizer scratch");
		e->heap = p;
		e->heap_cap = cap;
	}
	size_t i = e->heap_n++;
	while (i > 0 && cand_less(&c, &e->heap[(i - 1) / 2])) {
		e->heap[i] = e->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	e->heap[i] = c;
	return SSMD_OK;
}

static struct bpe_cand heap_pop(struct enc *e)
{
	struct bpe_cand top = e->heap[0];
	struct bpe_cand last = e->heap[--e->heap_n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= e->heap_n)
			break;
		if (c + 1 < e->heap_n && cand_less(&e->heap[c + 1], &e->heap[c]))
			c++;
		if (!cand_less(&e->heap[c], &last))
			break;
		e->heap[i] = e->heap[c];
		i = c;
	}
	if (e->heap_n)
		e->heap[i] = last;
	return top;
}

/* Queues the merge of symbol pos with its right neighbour, if any. */
static int queue_pair(struct enc *e, int32_t pos)
{
	int32_t r = e->syms[pos].next;
	if (r < 0)
		return SSMD_OK;
	const struct tok_mslot *m = merge_find(e->tok, e->syms[pos].id, e->syms[r].id);
	if (!m)
		return SSMD_OK;
	return heap_push(e, (struct bpe_cand){.rank = m->rank, .pos = pos, .id = m->id});
}

/* BPE over one word: start from one symbol per byte and repeatedly apply
 * the merge of lowest rank (leftmost on ties), Hugging Face's order; a
 * queued candidate whose pair has changed since is skipped unless the pair
 * now there merges to the same token. Appends the ids to e->ids. */
static int bpe_word(struct enc *e, const uint8_t *w, size_t n)
{
	int rc;

	if (n > INT32_MAX)
		return ssmd_err_set(SSMD_ERANGE, "tokenizer: word of %zu bytes", n);
	if (n > e->syms_cap) {
		void *p = realloc(e->syms, n * sizeof(*e->syms));
		if (!p)
			return ssmd_err_set(SSMD_ENOMEM, "tokenizer scratch");
		e->syms = p;
		e->syms_cap = n;
	}
	for (size_t i = 0; i < n; i++)
		e->syms[i] = (struct bpe_sym){.id = e->tok->byte_id[w[i]],
					      .prev = (int32_t)i - 1,
					      .next = i + 1 < n ? (int32_t)i + 1 : -1};
	e->heap_n = 0;
	for (size_t i = 0; i + 1 < n; i++)
		if ((rc = queue_pair(e, (int32_t)i)))
			return rc;

	while (e->heap_n) {
		struct bpe_cand c = heap_pop(e);
		struct bpe_sym *s = &e->syms[c.pos];
		if (s->dead || s->next < 0)
			continue;
		const struct tok_mslot *m =
			merge_find(e->tok, s->id, e->syms[s->next].id);
		if (!m || m->id != c.id)
			continue;
		struct bpe_sym *r = &e->syms[s->next];
		s->id = c.id;
		r->dead = true;
		s->next = r->next;
		if (s->next >= 0)
			e->syms[s->next].prev = c.pos;
		if (s->prev >= 0 && (rc = queue_pair(e, s->prev)))
			return rc;
		if ((rc = queue_pair(e, c.pos)))
			return rc;
	}
	for (int32_t i = 0; i >= 0; i = e->syms[i].next)
		if ((rc = emit(e, &e->syms[i].id, 1)))
			return rc;
	return SSMD_OK;
}

/* Looks w up in the shared cache; on a hit appends its ids and sets *hit. */
static int cache_get(struct enc *e, uint64_t h, const uint64_t key[2],
		     size_t n, bool *hit)
{
	struct tok_cache_slot *slot = &e->tok->cache[h & (TOK_CACHE_SLOTS - 1)];
	uint64_t seq = atomic_load_explicit(&slot->seq, memory_order_acquire);
	*hit = false;
	if (seq & 1)
		return SSMD_OK;
	uint64_t len = atomic_load_explicit(&slot->len, memory_order_relaxed);
	bool same = atomic_load_explicit(&slot->hash, memory_order_relaxed) == h &&
		    (len & 0xFF) == n &&
		    atomic_load_explicit(&slot->word[0], memory_order_relaxed) == key[0] &&
		    atomic_load_explicit(&slot->word[1], memory_order_relaxed) == key[1];
	uint64_t ids[3];
	for (int i = 0; i < 3; i++)
		ids[i] = atomic_load_explicit(&slot->ids[i], memory_order_relaxed);
	atomic_thread_fence(memory_order_acquire);
	if (!same || atomic_load_explicit(&slot->seq, memory_order_relaxed) != seq)
		return SSMD_OK;
	int32_t out[TOK_CACHE_IDS];
	size_t n_ids = (size_t)(len >> 8);
	for (size_t i = 0; i < n_ids; i++)
		out[i] = (int32_t)(uint32_t)(ids[i / 2] >> (32 * (i % 2)));
	*hit = true;
	return emit(e, out, n_ids);
}

static void cache_put(struct enc *e, uint64_t h, const uint64_t key[2],
		      size_t n, const int32_t *ids, size_t n_ids)
{
	struct tok_cache_slot *slot = &e->tok->cache[h & (TOK_CACHE_SLOTS - 1)];
	uint64_t seq = atomic_load_explicit(&slot->seq, memory_order_relaxed);
	if ((seq & 1) ||
	    !atomic_compare_exchange_strong_explicit(&slot->seq, &seq, seq + 1,
						     memory_order_acquire,
						     memory_order_relaxed))
		return; /* another writer is here: skip */
	atomic_thread_fence(memory_order_release);
	uint64_t packed[3] = {0, 0, 0};
	for (size_t i = 0; i < n_ids; i++)
		packed[i / 2] |= (uint64_t)(uint32_t)ids[i] << (32 * (i % 2));
	atomic_store_explicit(&slot->hash, h, memory_order_relaxed);
	atomic_store_explicit(&slot->len, n | n_ids << 8, memory_order_relaxed);
	atomic_store_explicit(&slot->word[0], key[0], memory_order_relaxed);
	atomic_store_explicit(&slot->word[1], key[1], memory_order_relaxed);
	for (int i = 0; i < 3; i++)
		atomic_store_explicit(&slot->ids[i], packed[i], memory_order_relaxed);
	atomic_store_explicit(&slot->seq, seq + 2, memory_order_release);
}

/* BPE through the shared cache for words of up to TOK_CACHE_WORD bytes. */
static int bpe_cached(struct enc *e, const uint8_t *w, size_t n)
{
	if (n > TOK_CACHE_WORD)
		return bpe_word(e, w, n);

	uint64_t key[2] = {0, 0};
	memcpy(key, w, n);
	uint64_t h = text_hash(w, n);
	bool hit;
	int rc = cache_get(e, h, key, n, &hit);
	if (rc || hit)
		return rc;

	size_t first = e->n;
	rc = bpe_word(e, w, n);
	if (!rc && e->n - first <= TOK_CACHE_IDS)
		cache_put(e, h, key, n, e->ids + first, e->n - first);
	return rc;
}

/* The ByteLevel pre-tokenizer over one piece of normalised text, then BPE
 * on each split. */
static int encode_pretok(struct enc *e, const uint8_t *s, size_t n)
{
	int rc;

	if (e->tok->add_prefix_space && s[0] != ' ') {
		e->prefixed.len = 0;
		if ((rc = tok_buf_append(&e->prefixed, " ", 1)) ||
		    (rc = tok_buf_append(&e->prefixed, s, n)))
			return rc;
		s = (const uint8_t *)e->prefixed.p;
		n++;
	}
	if (!e->tok->use_regex)
		return bpe_cached(e, s, n);
	for (size_t i = 0; i < n;) {
		size_t j = tok_split_next(s, n, i);
		if ((rc = bpe_cached(e, s + i, j - i)))
			return rc;
		i = j;
	}
	return SSMD_OK;
}

/* Start of the (valid) character that ends just before s + i, i > 0. */
static size_t char_start_before(const uint8_t *s, size_t i)
{
	size_t k = i - 1;
	while (k > 0 && (s[k] & 0xC0) == 0x80)
		k--;
	return k;
}

/* Code point of the character that ends just before s + i, i > 0. */
static int32_t cp_before(const uint8_t *s, size_t i)
{
	size_t k = char_start_before(s, i);
	return tok_utf8_decode(s + k, i - k);
}

static int32_t cp_at(const uint8_t *s, size_t n, size_t i, size_t *len)
{
	enum tok_utf8 kind;
	*len = tok_utf8_scan(s + i, n - i, &kind);
	return tok_utf8_decode(s + i, *len);
}

typedef int (*piece_fn)(struct enc *e, const uint8_t *s, size_t n);

/* Splits s[0..n) on the added tokens of trie t, leftmost-longest, as
 * Hugging Face's AddedVocabulary does: matching resumes after each match
 * (even one rejected by single_word); lstrip/rstrip widen a match over the
 * whitespace beside it. Text between matches goes to piece. */
static int split_added(struct enc *e, const struct tok_trie *t,
		       const uint8_t *s, size_t n, piece_fn piece)
{
	size_t done = 0; /* end of the last emitted match */
	size_t p = 0;    /* where matching resumes */
	int rc;

	while (p < n) {
		int32_t node = t->root[s[p]];
		int32_t best = -1;
		size_t best_end = 0;
		for (size_t q = p + 1; node >= 0; q++) {
			if (t->nodes[node].added >= 0) {
				best = t->nodes[node].added;
				best_end = q;
			}
			if (q == n)
				break;
			int32_t c = t->nodes[node].child;
			while (c >= 0 && t->nodes[c].byte != s[q])
				c = t->nodes[c].sibling;
			node = c;
		}
		if (best < 0) {
			p++;
			continue;
		}
		const struct tok_added *a = &e->tok->added[best];
		size_t start = p, stop = best_end, len;
		p = best_end;
		if (a->single_word &&
		    ((start > 0 && tok_is_word_char(cp_before(s, start))) ||
		     (stop < n && tok_is_word_char(cp_at(s, n, stop, &len)))))
			continue;
		/* lstrip never reaches into text already matched. */
		while (a->lstrip && start > done &&
		       tok_cls_of(cp_before(s, start)) == TOK_CLS_S)
			start = char_start_before(s, start);
		if (a->rstrip) {
			while (stop < n && tok_cls_of(cp_at(s, n, stop, &len)) == TOK_CLS_S)
				stop += len;
		}
		if (start > done && (rc = piece(e, s + done, start - done)))
			return rc;
		if ((rc = emit(e, &a->id, 1)))
			return rc;
		done = stop;
	}
	if (done < n && (rc = piece(e, s + done, n - done)))
		return rc;
	return SSMD_OK;
}

/* Appends the NFC form of s[0..n) to out.
 *
 * Code points below U+0300 are NFC already, so only spans holding a byte
 * >= 0xCC (the lead byte of U+0300 and above) need utf8proc. The text can
 * be cut before any ASCII character: it is a starter that no composition
 * takes as its second character, so NFC(a + b) = NFC(a) + NFC(b) when b
 * starts with ASCII. A span therefore runs from the last ASCII character
 * before such a byte (a combining mark may compose with it) to the next
 * ASCII character. */
static int nfc_append(struct tok_buf *out, const uint8_t *s, size_t n)
{
	size_t done = 0; /* s[0..done) has been appended */
	int rc;

	for (size_t k = 0; k < n; k++) {
		if (s[k] < 0xCC)
			continue;
		size_t from = k, to = k;
		while (from > done && s[from] >= 0x80)
			from--;
		while (to < n && s[to] >= 0x80)
			to++;
		utf8proc_uint8_t *nfc = NULL;
		utf8proc_ssize_t m = utf8proc_map(s + from, (utf8proc_ssize_t)(to - from),
						  &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
		if (m < 0)
			return ssmd_err_set(SSMD_ENOMEM, "tokenizer NFC: %s",
					    utf8proc_errmsg(m));
		if (!(rc = tok_buf_append(out, s + done, from - done)))
			rc = tok_buf_append(out, nfc, (size_t)m);
		free(nfc);
		if (rc)
			return rc;
		done = to;
		k = to;
	}
	return tok_buf_append(out, s + done, n - done);
}

/* NFC-normalises one piece of the raw text (when the file asks for it)
 * and splits it on the normalised added tokens. */
static int encode_normalized(struct enc *e, const uint8_t *s, size_t n)
{
	int rc;

	if (e->tok->nfc) {
		bool stable = true;
		for (size_t i = 0; i < n && stable; i++)
			stable = s[i] < 0xCC;
		if (!stable) {
			e->normalized.len = 0;
			if ((rc = nfc_append(&e->normalized, s, n)))
				return rc;
			s = (const uint8_t *)e->normalized.p;
			n = e->normalized.len;
		}
	}
	return split_added(e, &e->tok->trie_norm, s, n, encode_pretok);
}

int tok_encode(const tok_tokenizer *tok, const char *text, size_t len,
	       int32_t **ids, size_t *n)
{
	struct enc e = {.tok = tok};
	struct tok_buf fixed = {0};
	const uint8_t *s = (const uint8_t *)text;
	int rc;

	if (len && !text)
		return ssmd_err_set(SSMD_EINVAL, "tok_encode: NULL text");
	if (tok_utf8_valid_len(s, len) != len) {
		if ((rc = tok_utf8_repair(&fixed, s, len, false, NULL)))
			goto out;
		s = (const uint8_t *)fixed.p;
		len = fixed.len;
	}

	if ((rc = split_added(&e, &tok->trie_raw, s, len, encode_normalized)))
		goto out;
	*ids = e.ids;
	*n = e.n;
	e.ids = NULL;
out:
	free(e.ids);
	free(e.syms);
	free(e.heap);
	free(e.prefixed.p);
	free(e.normalized.p);
	free(fixed.p);
	return rc;
}

/* ---- decoding -------------------------------------------------------- */

static int check_id(const tok_tokenizer *tok, int32_t id)
{
	if (id < 0 || (size_t)id >= tok->n_ids || tok->dec_len[id] < 0)
		return ssmd_err_set(SSMD_ERANGE, "token id %d is not in the vocabulary (size %zu)",
				    (int)id, tok->n_ids);
	return SSMD_OK;
}

int tok_decode(const tok_tokenizer *tok, const int32_t *ids, size_t n,
	       char **text, size_t *len)
{
	struct tok_buf raw = {0}, out = {0};
	int rc;

	for (size_t i = 0; i < n; i++) {
		if ((rc = check_id(tok, ids[i])) ||
		    (rc = tok_buf_append(&raw, tok->decs.p + tok->dec_off[ids[i]],
					 (size_t)tok->dec_len[ids[i]])))
			goto out;
	}
	if ((rc = tok_buf_reserve(&out, raw.len)) ||
	    (rc = tok_utf8_repair(&out, (const uint8_t *)raw.p, raw.len, false, NULL)))
		goto out;
	out.p[out.len] = '\0';
	*text = out.p;
	*len = out.len;
	out.p = NULL;
out:
	free(raw.p);
	free(out.p);
	return rc;
}

struct tok_decoder {
	const tok_tokenizer *tok;
	uint8_t pending[4]; /* an unfinished character, at most 3 bytes */
	size_t n_pending;
};

int tok_decoder_alloc(const tok_tokenizer *tok, tok_decoder **out)
{
	tok_decoder *dec = calloc(1, sizeof(*dec));
	if (!dec)
		return ssmd_err_set(SSMD_ENOMEM, "tokenizer decoder");
	dec->tok = tok;
	*out = dec;
	return SSMD_OK;
}

void tok_decoder_free(tok_decoder *dec)
{
	free(dec);
}

/* Repairs pending bytes + more; keeps an unfinished tail when keep_tail. */
static int decoder_run(tok_decoder *dec, const char *more, size_t n_more,
		       bool keep_tail, char **out, size_t *len)
{
	struct tok_buf raw = {0}, text = {0};
	size_t used;
	int rc;

	if ((rc = tok_buf_append(&raw, dec->pending, dec->n_pending)) ||
	    (rc = tok_buf_append(&raw, more, n_more)) ||
	    (rc = tok_buf_reserve(&text, raw.len)) ||
	    (rc = tok_utf8_repair(&text, (const uint8_t *)raw.p, raw.len,
				  keep_tail, &used)))
		goto out;
	text.p[text.len] = '\0';
	dec->n_pending = raw.len - used; /* < 4: a cut-off valid prefix */
	memcpy(dec->pending, raw.p + used, dec->n_pending);
	*out = text.p;
	*len = text.len;
	text.p = NULL;
out:
	free(raw.p);
	free(text.p);
	return rc;
}

int tok_decoder_push(tok_decoder *dec, int32_t id, char **out, size_t *len)
{
	int rc = check_id(dec->tok, id);
	if (rc)
		return rc;
	return decoder_run(dec, dec->tok->decs.p + dec->tok->dec_off[id],
			   (size_t)dec->tok->dec_len[id], true, out, len);
}

int tok_decoder_flush(tok_decoder *dec, char **out, size_t *len)
{
	return decoder_run(dec, NULL, 0, false, out, len);
}
