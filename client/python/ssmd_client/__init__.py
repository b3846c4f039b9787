"""Python client of ssmd, the Mamba state-library daemon.

Speaks ssmd's protocol (proto/ssmd.proto) over nng with pynng and the
protobuf runtime::

    from ssmd_client import Client

    with Client() as c:                      # $SSMD_URL or the default socket
        s = c.open()
        c.append(s, text="The lighthouse keeper")
        state = c.snapshot(s, tag="demo/prompt")
        for chunk in c.stream(s, max_tokens=20):
            print(chunk.text, end="", flush=True)
"""
from .client import (Chunk, Client, Stream, SsmdError, default_url,
                     events_url_for, jobs_url_for, ERROR_NAMES)

__all__ = ["Chunk", "Client", "Stream", "SsmdError", "default_url",
           "events_url_for", "jobs_url_for", "ERROR_NAMES"]
__version__ = "0.1.0"
