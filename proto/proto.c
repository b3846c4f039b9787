/*
 * proto.c — request decoding checks, message packing and event framing.
 */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

int proto_request_decode(const void *buf, size_t len, Ssmd__Request **out)
{
	Ssmd__Request *req;

	*out = NULL;
	req = ssmd__request__unpack(NULL, len, buf);
	if (!req)
		return ssmd_err_set(SSMD_EFORMAT,
				    "request of %zu bytes is not a valid protobuf Request",
				    len);
	*out = req;
	if (!req->has_version || req->version == 0 ||
	    req->version > PROTO_VERSION)
		return ssmd_err_set(SSMD_EPROTO,
				    "protocol version %u not supported (this daemon speaks 1..%d)",
				    req->has_version ? req->version : 0,
				    PROTO_VERSION);
	if (!req->request_id || !req->request_id[0])
		return ssmd_err_set(SSMD_EINVAL, "request_id is missing");
	if (strlen(req->request_id) > PROTO_MAX_ID_LEN)
		return ssmd_err_set(SSMD_EINVAL,
				    "request_id longer than %d bytes",
				    PROTO_MAX_ID_LEN);
	if (req->client_id && strlen(req->client_id) > PROTO_MAX_ID_LEN)
		return ssmd_err_set(SSMD_EINVAL,
				    "client_id longer than %d bytes",
				    PROTO_MAX_ID_LEN);
	if (req->op_case == SSMD__REQUEST__OP__NOT_SET)
		return ssmd_err_set(SSMD_EPROTO,
				    "request names no operation this daemon knows");
	return SSMD_OK;
}

void proto_request_free(Ssmd__Request *req)
{
	if (req)
		ssmd__request__free_unpacked(req, NULL);
}

int proto_msg_pack(const ProtobufCMessage *msg, void **buf, size_t *len)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	/* malloc(0) may return NULL: an all-default message packs to 0 bytes. */
	uint8_t *p = malloc(n ? n : 1);

	if (!p)
		return ssmd_err_set(SSMD_ENOMEM, "packing a %zu-byte message", n);
	protobuf_c_message_pack(msg, p);
	*buf = p;
	*len = n;
	return SSMD_OK;
}

int proto_event_topic(const char *request_id, void *topic, size_t cap,
		      size_t *len)
{
	size_t n = request_id ? strlen(request_id) : 0;

	if (n == 0 || n > PROTO_MAX_ID_LEN)
		return ssmd_err_set(SSMD_EINVAL, "bad request_id for a topic");
	if (n + 1 > cap)
		return ssmd_err_set(SSMD_ERANGE, "topic buffer too small");
	memcpy(topic, request_id, n);
	((uint8_t *)topic)[n] = 0;
	*len = n + 1;
	return SSMD_OK;
}

int proto_event_frame(const char *request_id, const Ssmd__Event *ev,
		      void **buf, size_t *len)
{
	size_t id_len = strlen(request_id);
	size_t n = ssmd__event__get_packed_size(ev);
	uint8_t *p = malloc(id_len + 1 + n);

	if (!p)
		return ssmd_err_set(SSMD_ENOMEM, "framing a %zu-byte event", n);
	memcpy(p, request_id, id_len);
	p[id_len] = 0;
	ssmd__event__pack(ev, p + id_len + 1);
	*buf = p;
	*len = id_len + 1 + n;
	return SSMD_OK;
}

int proto_event_parse(const void *buf, size_t len, Ssmd__Event **out)
{
	const uint8_t *p = buf;
	const uint8_t *sep = len ? memchr(p, 0, len) : NULL;
	Ssmd__Event *ev;
	size_t id_len;

	*out = NULL;
	if (!sep)
		return ssmd_err_set(SSMD_EFORMAT, "event frame has no topic separator");
	id_len = (size_t)(sep - p);
	ev = ssmd__event__unpack(NULL, len - id_len - 1, sep + 1);
	if (!ev)
		return ssmd_err_set(SSMD_EFORMAT, "event does not parse");
	if (!ev->request_id || strlen(ev->request_id) != id_len ||
	    memcmp(ev->request_id, p, id_len) != 0) {
		ssmd__event__free_unpacked(ev, NULL);
		return ssmd_err_set(SSMD_EFORMAT,
				    "event request_id differs from its topic");
	}
	*out = ev;
	return SSMD_OK;
}

const char *proto_op_name(const Ssmd__Request *req)
{
	switch (req->op_case) {
	case SSMD__REQUEST__OP_INFO: return "info";
	case SSMD__REQUEST__OP_OPEN: return "open";
	case SSMD__REQUEST__OP_APPEND: return "append";
	case SSMD__REQUEST__OP_GENERATE: return "generate";
	case SSMD__REQUEST__OP_SNAPSHOT: return "snapshot";
	case SSMD__REQUEST__OP_FORK: return "fork";
	case SSMD__REQUEST__OP_CLOSE: return "close";
	case SSMD__REQUEST__OP_STATES: return "states";
	case SSMD__REQUEST__OP_STATE: return "state";
	case SSMD__REQUEST__OP_TAG: return "tag";
	case SSMD__REQUEST__OP_UNTAG: return "untag";
	case SSMD__REQUEST__OP_DELETE_STATE: return "delete";
	case SSMD__REQUEST__OP_EXPORT_STATE: return "export";
	case SSMD__REQUEST__OP_IMPORT_STATE: return "import";
	case SSMD__REQUEST__OP_STATS: return "stats";
	case SSMD__REQUEST__OP_MERGE: return "merge";
	case SSMD__REQUEST__OP_SCORE: return "score";
	case SSMD__REQUEST__OP_RESULT: return "result";
	default: return "none";
	}
}
