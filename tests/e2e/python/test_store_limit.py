"""ssmd with --max-store-bytes: the state library stops growing at the limit.

A snapshot past it is refused with SSMD_ENOSPC (an error reply, the daemon
goes on serving); every state acknowledged before stays readable; the session
keeps its state, so once there is room again (states deleted) closing it
with a snapshot stores every token it consumed, and a restart does not reopen
it. The limit is the size of a freshly created library plus four 64 KiB
pages; snapshots of random tokens (states that do not compress) fill it.
"""
import os
import random

from conftest import Daemon
from ssmd_client import SsmdError

SSMD_ENOSPC = 8
PAGE = 65536


def test_store_limit(tmpdir_short, text_model):
    fresh = Daemon(tmpdir_short, "limit", text_model)
    fresh.start()
    assert fresh.stop() == 0
    limit = os.path.getsize(fresh.store) + 4 * PAGE

    d = Daemon(tmpdir_short, "limit", text_model,
               extra=["--max-store-bytes", str(limit)])
    d.start()
    rng = random.Random(11)
    with d.client() as c:
        s = c.open()
        ids, consumed, refused = [], 0, None
        for _ in range(200):
            consumed = c.append(s, tokens=[rng.randrange(50277) for _ in range(32)]
                                ).session_tokens
            try:
                ids.append(c.snapshot(s))
            except SsmdError as e:
                refused = e
                break
        assert refused is not None, "200 snapshots fit under the limit"
        assert refused.code == SSMD_ENOSPC, refused
        assert ids, "not even one snapshot fit under the limit"
        for sid in ids:
            assert c.state(sid).info.id == sid
        assert os.path.getsize(d.store) <= limit

        # Room again: the session's state, never stored, is stored by the
        # close, with all its tokens.
        for sid in ids[:-1]:
            c.delete(sid)
        closed = c.close_session(s, snapshot=True)
        assert closed and c.state(closed).info.n_tokens == consumed
    assert d.stop() == 0, d.read_log()

    d.start()
    with d.client() as c:
        assert c.stats().sessions == 0, "a closed session was reopened"
    assert d.stop() == 0, d.read_log()
