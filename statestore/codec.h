/*
 * codec.h — the state library's payload codec: canonical state bytes <->
 * stored bytes.
 *
 * Encoding runs up to three steps, each recorded in a bit of the codec value:
 *   1. lossy (only on request): the ssm and conv parts of the state are
 *      rounded to bf16 or f16 and kept as 16-bit values; the header, hidden
 *      and dt_sum stay as they are. The "decoded" state is then the rounded
 *      one widened back to f32, and its hash is what the store records.
 *   2. shuffle: each array is cut into chunks of 1 MB of stored bytes, and
 *      within a chunk byte k of every element is grouped together (4 groups
 *      for f32, 2 for 16-bit), so the slowly varying sign and exponent bytes
 *      sit next to each other; the 64-byte header is kept as is.
 *   3. LZ4 frame (content checksum and content size on, one block per
 *      chunk). States over 2 MB stored lossless are written as two frames
 *      back to back, each over half the chunks, compressed and decompressed
 *      on two threads.
 * The encoder keeps LZ4 only when it is smaller than the uncompressed
 * bytes. Shuffled or not: states up to 2 MB try both in full and keep the
 * smaller; larger ones decide by compressing 4 of their chunks, spread over
 * the state, both ways (a full second trial would double the CPU time).
 *
 * Lossless codecs are bit-exact for every f32 value (-0.0, denormals,
 * infinities, NaN payloads): nothing but bytes is moved. The decoder treats
 * its input as untrusted: it allocates only the caller's expected raw size
 * (bounded by CODEC_RAW_MAX), never the frame's content size, checks the
 * frame checksum, the exact output length, the state header and the
 * xxHash64 of the result. Any mismatch is SSMD_ECORRUPT.
 *
 * Thread-safety: functions touch only their arguments; encode and decode
 * of a large state briefly run one helper thread each.
 */
#ifndef SSMD_STORE_CODEC_H
#define SSMD_STORE_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "ssmd_err.h"

/* Codec value bits. Lossy kinds occupy bits 4-5. */
enum store_codec {
	STORE_CODEC_RAW = 0,        /* bytes as they are */
	STORE_CODEC_LZ4 = 1 << 0,   /* LZ4 frame */
	STORE_CODEC_SHUFFLE = 1 << 1, /* byte-shuffled before LZ4 */
	STORE_CODEC_BF16 = 1 << 4,  /* ssm+conv rounded to bf16 */
	STORE_CODEC_F16 = 2 << 4,   /* ssm+conv rounded to f16 */
	STORE_CODEC_LOSSY_MASK = 3 << 4,
};

/* Largest decoded state the codec accepts (bytes). */
#define CODEC_RAW_MAX ((size_t)1 << 30)

/* Encodes the encoded canonical state raw (raw_len bytes). lossy is a
 * store_lossy value. On success *out (free()) holds *out_len stored bytes,
 * *codec the STORE_CODEC_* bits, *raw_hash the xxHash64 (seed 0) of the
 * bytes decoding will return (equal to raw's hash unless lossy).
 * SSMD_EFORMAT: raw is not an encoded state; SSMD_EINVAL: bad lossy;
 * SSMD_ENOMEM. */
int store_codec_encode(const void *raw, size_t raw_len, int lossy, void **out,
		       size_t *out_len, int *codec, uint64_t *raw_hash);

/* Decodes stored bytes written with codec, expecting raw_len decoded bytes
 * whose xxHash64 is raw_hash. On success *out (free()) holds raw_len bytes.
 * SSMD_ECORRUPT: anything does not match (the LZ4 error text is kept in
 * ssmd_errmsg()); SSMD_ENOMEM. */
int store_codec_decode(const void *stored, size_t stored_len, int codec,
		       size_t raw_len, uint64_t raw_hash, void **out);

/* A short name such as "shuffle+lz4" or "bf16+raw"; static storage. */
const char *store_codec_name(int codec);

/* xxHash64 with seed 0, the hash the store records for raw bytes. */
uint64_t store_codec_hash(const void *buf, size_t len);

#endif
