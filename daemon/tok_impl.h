/*
 * tok_impl.h — private pieces of the tokenizer shared by tok.c and
 * tok_text.c: a growable byte buffer, UTF-8 scanning and repair, Unicode
 * character classes, and the GPT-2 pre-tokenisation split.
 *
 * Everything here is pure (no global state) and safe from any thread.
 */
#ifndef SSMD_TOK_IMPL_H
#define SSMD_TOK_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable byte buffer; zero-initialise, release with free(b.p). */
struct tok_buf {
	char *p;
	size_t len, cap;
};

/* Makes room for extra more bytes plus a NUL. SSMD_ENOMEM on failure. */
int tok_buf_reserve(struct tok_buf *b, size_t extra);

/* Appends n bytes and keeps p NUL-terminated. */
int tok_buf_append(struct tok_buf *b, const void *s, size_t n);

/* Result of looking at one UTF-8 sequence. */
enum tok_utf8 {
	TOK_UTF8_OK,    /* a whole, valid character */
	TOK_UTF8_BAD,   /* a maximal invalid subpart: becomes one U+FFFD */
	TOK_UTF8_SHORT, /* a valid start cut off by the end of the buffer */
};

/* Looks at s[0..n), n >= 1, and returns the length (1-4) of the sequence
 * that starts there, with its kind in *kind. Maximal subparts follow the
 * Unicode Standard's recommended practice (chapter 3, "U+FFFD
 * Substitution of Maximal Subparts"), the rule of Rust's from_utf8_lossy:
 * a lead byte and the continuation bytes that can still make a valid
 * character are replaced together; a byte that can never start one is
 * replaced alone. */
size_t tok_utf8_scan(const uint8_t *s, size_t n, enum tok_utf8 *kind);

/* The code point of the valid character of length len at s. */
int32_t tok_utf8_decode(const uint8_t *s, size_t len);

/* Length of the longest prefix of s[0..n) that is valid UTF-8. */
size_t tok_utf8_valid_len(const uint8_t *s, size_t n);

/* Appends s[0..n) to out with every maximal invalid subpart replaced by
 * U+FFFD. With keep_tail, a valid but unfinished character at the end is
 * not consumed; *used (if not NULL) receives the bytes consumed. */
int tok_utf8_repair(struct tok_buf *out, const uint8_t *s, size_t n,
		    bool keep_tail, size_t *used);

/* Character classes of the GPT-2 pattern: \p{L}, \p{N}, \s (Unicode
 * White_Space, which is Oniguruma's \s too) and everything else. */
enum tok_cls { TOK_CLS_L, TOK_CLS_N, TOK_CLS_S, TOK_CLS_O };

enum tok_cls tok_cls_of(int32_t cp);

/* Whether cp is a "word" character of the \w used to check single_word
 * added tokens: letters, marks, decimal and letter numbers, connector
 * punctuation, the enclosed letters that Unicode counts as Alphabetic, and
 * the zero-width (non-)joiners. */
bool tok_is_word_char(int32_t cp);

/* The GPT-2 split: given valid UTF-8 s[0..n) and a split boundary i < n,
 * returns the end of the split that starts at i, i.e. the end of the match
 * of `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
 * at i (the pattern matches at every position, so splits tile the text). */
size_t tok_split_next(const uint8_t *s, size_t n, size_t i);

#endif
