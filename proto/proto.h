/*
 * proto.h — framing helpers for the ssmd wire protocol (ssmd.proto).
 *
 * The protocol's messages are generated at build time by protobuf-c from
 * ssmd.proto into ssmd.pb-c.h (types Ssmd__Request, Ssmd__Reply, Ssmd__Event,
 * ...). This header adds what every endpoint needs around them: decoding a
 * request with the checks every operation relies on (version, request ID,
 * exactly one operation), packing replies, and the framing of events on the
 * publish endpoint (topic = request ID, one NUL byte, then the Event).
 *
 * It knows nothing of sockets; daemon and client both use it.
 *
 * Thread-safety: functions touch only their arguments.
 */
#ifndef SSMD_PROTO_H
#define SSMD_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "ssmd.pb-c.h"
#include "ssmd_err.h"

/* The protocol version this build speaks (Request.version). */
#define PROTO_VERSION 1

/* Longest request_id / client_id in bytes. */
#define PROTO_MAX_ID_LEN 128

/* Decodes len bytes of a Request into *out (free with proto_request_free()).
 * Checks, in order: the bytes parse (SSMD_EFORMAT), version is 1..
 * PROTO_VERSION (SSMD_EPROTO), request_id is 1..PROTO_MAX_ID_LEN bytes with no
 * NUL and client_id at most PROTO_MAX_ID_LEN bytes (SSMD_EINVAL), and an
 * operation is set (SSMD_EPROTO: an operation this build does not know
 * arrives as an unknown field, so the oneof is empty). On a failure after
 * parsing, *out is still set (so the caller can answer with the request ID)
 * and the code is returned; on SSMD_EFORMAT *out is NULL. Safe on any input. */
int proto_request_decode(const void *buf, size_t len, Ssmd__Request **out);

/* Frees a request from proto_request_decode(); NULL is a no-op. */
void proto_request_free(Ssmd__Request *req);

/* Packs any protobuf-c message into a new malloc'd buffer (*buf, *len; the
 * caller frees *buf). SSMD_ENOMEM. */
int proto_msg_pack(const ProtobufCMessage *msg, void **buf, size_t *len);

/* Builds the publish frame of an event: request_id bytes, one NUL byte, then
 * the packed Event (malloc'd *buf of *len bytes, caller frees). */
int proto_event_frame(const char *request_id, const Ssmd__Event *ev,
		      void **buf, size_t *len);

/* Writes the subscription topic of request_id (its bytes plus the NUL
 * separator) into topic, capacity cap; *len gets its length. SSMD_ERANGE when
 * it does not fit, SSMD_EINVAL on an empty or oversized ID. */
int proto_event_topic(const char *request_id, void *topic, size_t cap,
		      size_t *len);

/* Parses a publish frame into *out (free with ssmd__event__free_unpacked(*out,
 * NULL)). SSMD_EFORMAT when the separator is missing, the Event does not
 * parse, or its request_id differs from the topic. Safe on any input. */
int proto_event_parse(const void *buf, size_t len, Ssmd__Event **out);

/* Short lowercase name of the request's operation ("generate"), or "none". */
const char *proto_op_name(const Ssmd__Request *req);

#endif
