"""The Python client against a scripted fake daemon (pynng REP + PUB in a
thread), to force what a real daemon rarely does: error replies, replies to
another request, garbage, and event streams with gaps. Needs no model and no
daemon binary, so it runs with the unit tests.
"""
import threading
import time

import pynng
import pytest

from ssmd_client import Client, SsmdError
from ssmd_client.client import SSMD_ENOENT, SSMD_EPROTO, pb

TOKENS = [11, 12, 13, 14, 15]
TEXT = "abcde"


class Fake:
    """Answers each request with the next step of its script."""

    def __init__(self, tmp, script):
        self.url = f"ipc://{tmp}/fake.sock"
        self.events = f"ipc://{tmp}/fake-events.sock"
        self.script = list(script)
        self.seen = []
        self.rep = pynng.Rep0(listen=self.url)
        self.pub = pynng.Pub0(listen=self.events)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def publish(self, rid, seq, lo, hi, done=False):
        ev = pb.Event(request_id=rid, seq=seq, tokens=TOKENS[lo:hi], text=TEXT[lo:hi],
                      done=done)
        self.pub.send(rid.encode() + b"\0" + ev.SerializeToString())

    def run(self):
        for step in self.script:
            req = pb.Request()
            req.ParseFromString(self.rep.recv())
            self.seen.append(req)
            rep = pb.Reply(request_id=req.request_id, code=0)
            if step == "info":
                rep.info.version = "9.9.9"
                rep.info.vocab_size = 77
            elif step == "error":
                rep.code = SSMD_ENOENT
                rep.message = "no session s-bad"
            elif step == "wrong_id":
                rep.request_id = "someone-else"
                rep.info.version = "x"
            elif step == "garbage":
                self.rep.send(b"\xff\xff\xff\xff garbage")
                continue
            elif step.startswith("stream"):
                time.sleep(0.1)  # let the subscription reach the publisher
                rid = req.request_id
                if step == "stream":
                    self.publish(rid, 0, 0, 2)
                    self.publish(rid, 1, 2, 3)
                    self.publish(rid, 2, 3, 5, done=True)
                elif step == "stream_gap":
                    self.publish(rid, 0, 0, 2)
                    self.publish(rid, 2, 3, 5, done=True)
                time.sleep(0.02)
                g = rep.generate
                g.tokens.extend(TOKENS)
                g.text = TEXT
                g.finish = pb.FINISH_LENGTH
                g.session_tokens = 105
            self.rep.send(rep.SerializeToString())

    def close(self):
        self.thread.join(timeout=10)
        self.rep.close()
        self.pub.close()


@pytest.fixture
def tmpdir_ipc():
    import tempfile
    with tempfile.TemporaryDirectory(prefix="ssmd-fake.", dir="/tmp") as d:
        yield d


def run_script(tmp, script, body):
    fake = Fake(tmp, script)
    try:
        with Client(fake.url, events_url=fake.events, timeout=5) as c:
            body(c)
    finally:
        fake.close()
    return fake


def test_replies_and_envelope(tmpdir_ipc):
    def body(c):
        assert c.info().vocab_size == 77
        with pytest.raises(SsmdError) as e:
            c.info()
        assert e.value.code == SSMD_ENOENT and e.value.message == "no session s-bad"
        for _ in range(2):  # another request's reply, then garbage
            with pytest.raises(SsmdError) as e:
                c.info()
            assert e.value.code == SSMD_EPROTO

    fake = run_script(tmpdir_ipc, ["info", "error", "wrong_id", "garbage"], body)
    ids = [r.request_id for r in fake.seen]
    assert len(set(ids)) == len(ids) == 4
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({r.client_id for r in fake.seen}) == 1
    assert all(r.version == 1 for r in fake.seen)


@pytest.mark.parametrize("step,missed", [("stream", 0), ("stream_gap", 1),
                                         ("stream_none", 0)])
def test_stream_delivers_every_token_once(tmpdir_ipc, step, missed):
    def body(c):
        st = c.stream("s-1", 5)
        chunks = list(st)
        assert [t for ch in chunks for t in ch.tokens] == TOKENS
        assert "".join(ch.text for ch in chunks) == TEXT
        assert list(st.result.tokens) == TOKENS and st.result.session_tokens == 105
        assert st.events_missed >= missed

    fake = run_script(tmpdir_ipc, [step], body)
    assert fake.seen[0].generate.stream is True
