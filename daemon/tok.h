/*
 * tok.h — the tokenizer: Hugging Face byte-level BPE (GPT-2 / GPT-NeoX family).
 *
 * Loads a Hugging Face `tokenizer.json` whose model is BPE over byte-level
 * symbols (the format of GPT-NeoX-20B's tokenizer, which every state-spaces
 * Mamba checkpoint uses) and turns text into token IDs and back, giving the
 * same IDs as Hugging Face `tokenizers` does for
 * `Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids` and
 * the same text as `decode(ids, skip_special_tokens=False)`.
 *
 * Encoding pipeline, in Hugging Face's order:
 *   1. invalid UTF-8 in the input is repaired: each maximal invalid subpart
 *      (Unicode's "best practice", exactly what Rust's String::from_utf8_lossy
 *      and Python's bytes.decode(errors="replace") do) becomes U+FFFD;
 *   2. added tokens with "normalized": false (e.g. `<|endoftext|>`) are matched
 *      on the raw text, leftmost-longest, honouring single_word/lstrip/rstrip;
 *   3. the rest is NFC-normalised (when the file's normalizer is NFC) and
 *      added tokens with "normalized": true (GPT-NeoX's runs of spaces) are
 *      matched in it;
 *   4. each remaining piece is split with the GPT-2 pattern
 *      `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
 *      (ByteLevel pre-tokenizer; `add_prefix_space` and `use_regex` honoured);
 *   5. each split's bytes become byte-level symbols merged by BPE merge rank.
 * Special tokens written in the text (`<|endoftext|>`) are recognised, as
 * Hugging Face does; a caller that must not let users inject them should
 * check the IDs it gets back (tok_token_id gives their IDs).
 *
 * Supported files: model.type "BPE" without dropout, continuing-subword
 * prefix, end-of-word suffix or ignore_merges (unk_token and byte_fallback
 * are accepted: every byte of UTF-8 has a symbol, so they never act);
 * normalizer null or NFC; pre_tokenizer ByteLevel; decoder ByteLevel.
 * Anything else is refused with SSMD_EUNSUPPORTED rather than tokenised
 * differently from the reference.
 *
 * Thread-safety: a loaded tok_tokenizer is immutable but for its word cache
 * (BPE results of short words, 4 MiB, lock-free and shared); any number of
 * threads may call tok_encode/tok_decode/tok_token_id/tok_decoder_alloc on it
 * at once. A tok_decoder has one owner.
 * Nothing here blocks except tok_load, which reads the file.
 * Every function returns 0 or a positive SSMD_E* code with a detail in
 * ssmd_errmsg(); out-parameters are written only on success.
 */
#ifndef SSMD_TOK_H
#define SSMD_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "ssmd_err.h"

typedef struct tok_tokenizer tok_tokenizer;
typedef struct tok_decoder tok_decoder;

/* Reads and parses the tokenizer.json at path. On success *out holds a new
 * tokenizer owned by the caller (release with tok_free). Errors: SSMD_EIO or
 * SSMD_ENOENT (cannot read), SSMD_EFORMAT (not JSON, missing or inconsistent
 * fields, a merge naming an unknown token, a byte without its byte-level
 * symbol, IDs far beyond the number of tokens defined), SSMD_EUNSUPPORTED (a
 * tokenizer type this module does not implement), SSMD_ENOMEM. */
int tok_load(const char *path, tok_tokenizer **out);

/* Releases tok; NULL is allowed. No call on tok may be running. */
void tok_free(tok_tokenizer *tok);

/* Encodes len bytes of text (need not be NUL-terminated, may hold NUL bytes
 * and invalid UTF-8, see above). On success *ids is a malloc'd array of *n
 * token IDs (NULL when *n is 0) that the caller frees with free(). */
int tok_encode(const tok_tokenizer *tok, const char *text, size_t len,
	       int32_t **ids, size_t *n);

/* Decodes n IDs to text: the bytes of each token, concatenated, then any
 * invalid UTF-8 (a sequence cut between tokens) replaced by U+FFFD as in step
 * 1 above. Special tokens are written out. On success *text is a malloc'd,
 * NUL-terminated string of *len bytes that the caller frees with free().
 * An ID outside [0, tok_vocab_size) or naming no token gives SSMD_ERANGE. */
int tok_decode(const tok_tokenizer *tok, const int32_t *ids, size_t n,
	       char **text, size_t *len);

/* One past the largest token ID (GPT-NeoX: 50277). A model's embedding may
 * have more rows than this; those rows have no text. */
size_t tok_vocab_size(const tok_tokenizer *tok);

/* The ID of the token whose text is token, as written in tokenizer.json
 * (added tokens first, a normalized one in its NFC form; then the BPE
 * vocabulary, whose entries are in byte-level form, e.g. "Ġthe"); -1 if
 * there is none. token is a NUL-terminated string. */
int32_t tok_token_id(const tok_tokenizer *tok, const char *token);

/* Incremental decoder for streaming generated tokens: push IDs one at a time
 * and get back only whole UTF-8 characters; bytes of a character split
 * across tokens are held until it completes. The concatenation of every
 * push's output and the final flush equals tok_decode of all the IDs.
 * tok must outlive the decoder. */
int tok_decoder_alloc(const tok_tokenizer *tok, tok_decoder **out);

/* Releases dec; NULL is allowed. */
void tok_decoder_free(tok_decoder *dec);

/* Adds one ID. On success *out is a malloc'd NUL-terminated string of *len
 * bytes (possibly empty) that the caller frees with free(). An unknown ID
 * gives SSMD_ERANGE and leaves the decoder as it was. */
int tok_decoder_push(tok_decoder *dec, int32_t id, char **out, size_t *len);

/* Ends the stream: an unfinished character at the end becomes U+FFFD.
 * *out as for tok_decoder_push. Afterwards the decoder is empty and can
 * start a new stream. */
int tok_decoder_flush(tok_decoder *dec, char **out, size_t *len);

#endif
