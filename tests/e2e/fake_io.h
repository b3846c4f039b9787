/*
 * fake_io.h — the wire side of the scripted fake daemons in the client's unit
 * tests (test_client_fake.c, test_jobs_fake.c): one Request in, one message
 * out, on sockets the test opened. Each socket is used by one thread.
 */
#ifndef SSMD_E2E_FAKE_IO_H
#define SSMD_E2E_FAKE_IO_H

#include <stdlib.h>

#include <nng/nng.h>

#include "proto.h"

/* Receives one message on s (blocking up to the socket's receive timeout)
 * and decodes it. Returns 0 with *req set: the Request (free it with
 * proto_request_free()), or NULL when the bytes are no Request. Returns -1
 * when nothing came (socket closed, timeout). */
static inline int fake_recv_request(nng_socket s, Ssmd__Request **req)
{
	void *buf;
	size_t len;

	*req = NULL;
	if (nng_recv(s, &buf, &len, NNG_FLAG_ALLOC) != 0)
		return -1;
	if (proto_request_decode(buf, len, req) != SSMD_OK) {
		proto_request_free(*req);
		*req = NULL;
	}
	nng_free(buf, len);
	return 0;
}

/* Packs msg and sends it on s; a message that cannot be packed (out of
 * memory) is not sent, which the client sees as silence. */
static inline void fake_send(nng_socket s, const ProtobufCMessage *msg)
{
	void *buf;
	size_t len;

	if (proto_msg_pack(msg, &buf, &len) == SSMD_OK) {
		nng_send(s, buf, len, 0);
		free(buf);
	}
}

#endif
