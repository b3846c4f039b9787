"""The Python client (client/python, package ssmd_client) against a running
ssmd: every operation, streaming as an iterator, errors as SsmdError, and an
exact resume across a daemon restart.

Comparisons are of token IDs and therefore exact: a resumed state continues
bit for bit (same CPU backend) and sampling is keyed by (seed, token index).
"""
import math

import time

import pytest

from ssmd_client import Client, SsmdError, events_url_for
from ssmd_client.client import (SSMD_EEMPTY, SSMD_EEXIST, SSMD_EINVAL, SSMD_ENOENT,
                                SSMD_EPROTO, SSMD_ERANGE, SSMD_EUNSUPPORTED)

PROMPT = ("A river does not hurry, yet it reaches the sea; the stones along "
          "its bed remember every flood.")


def test_info(client):
    info = client.info()
    assert info.protocol_version == 1
    assert info.has_tokenizer
    assert info.vocab_size == 50280
    assert info.d_model == 64 and info.n_layer == 2
    assert info.backend == "cpu"
    assert len(info.model_fingerprint) == 32
    assert info.state_bytes > 0
    assert info.limits.max_generate_tokens > 0


def test_events_url_rule():
    assert events_url_for("ipc:///run/x/ssmd.sock") == "ipc:///run/x/ssmd-events.sock"
    with pytest.raises(SsmdError):
        events_url_for("tcp://127.0.0.1:7000")


def test_append_generate_stream(client):
    s = client.open()
    a = client.append(s, text=PROMPT)
    assert a.appended > 0 and a.session_tokens == a.appended
    fork = client.fork(s, 1)[0]

    whole = client.generate(s, 30)
    assert len(whole.tokens) == 30
    assert whole.session_tokens == a.session_tokens + 30
    assert whole.text

    # The fork continues identically, streamed: the chunks add up to the
    # complete reply, token for token and byte for byte.
    st = client.stream(fork, 30)
    chunks = list(st)
    assert chunks, "no chunk"
    assert [t for c in chunks for t in c.tokens] == list(whole.tokens)
    assert "".join(c.text for c in chunks) == whole.text
    assert list(st.result.tokens) == list(whole.tokens)


def test_stop_string_and_tokens(client):
    s = client.open()
    client.append(s, text=PROMPT)
    probe = client.fork(s, 1)[0]
    ref = client.generate(probe, 20)
    # Stop at the 5th emitted token: it is included.
    stop_tok = ref.tokens[4]
    first = list(ref.tokens).index(stop_tok)
    g = client.generate(s, 20, stop_tokens=[stop_tok])
    assert list(g.tokens) == list(ref.tokens[:first + 1])
    assert g.finish == 3  # FINISH_STOP_TOKEN


def test_forks_same_seed(client):
    s = client.open()
    client.append(s, text=PROMPT)
    sid = client.snapshot(s)
    forks = client.fork(sid, 4, seed=42)
    outs = [list(client.generate(f, 15, temperature=1.0).tokens) for f in forks]
    assert all(o == outs[0] for o in outs)
    other = client.fork(sid, 1, seed=43)[0]
    assert list(client.generate(other, 15, temperature=1.0).tokens) != outs[0]


def test_states_tags_export_import(client):
    s = client.open(label="py-test")
    client.append(s, text=PROMPT)
    sid = client.snapshot(s, tag="py/first", label="first")
    client.append(s, text=" And then some more.")
    sid2 = client.snapshot(s)

    info = client.state(sid2)
    assert info.info.id == sid2
    assert info.info.parent == sid
    assert [x.id for x in info.lineage][:1] == [sid]
    assert client.state("py/first").info.id == sid

    listed = client.states(tag_prefix="py/")
    assert sid in [x.id for x in listed.states]
    assert sid2 not in [x.id for x in listed.states]
    assert client.tag("py/second", sid2) == sid2

    data = client.export(sid2)
    assert len(data) > 0
    imported = client.import_state(data, tag="py/imported")
    assert imported
    r = client.open_sessions("py/imported")[0]
    assert r.n_tokens == info.info.n_tokens

    client.untag("py/second")
    with pytest.raises(SsmdError) as e:
        client.state("py/second")
    assert e.value.code == SSMD_ENOENT
    with pytest.raises(SsmdError) as e:
        client.delete(sid)  # a tag points at it
    assert e.value.code == SSMD_EEXIST
    client.delete(sid2, force=True)
    with pytest.raises(SsmdError) as e:
        client.state(sid2)
    assert e.value.code == SSMD_ENOENT


def test_close_with_snapshot(client):
    s = client.open()
    client.append(s, tokens=[10, 20, 30])
    sid = client.close_session(s, snapshot=True, tag="py/closed")
    assert sid
    assert client.state(sid).info.n_tokens == 3
    with pytest.raises(SsmdError) as e:
        client.append(s, tokens=[1])
    assert e.value.code == SSMD_ENOENT
    s2 = client.open()
    assert client.close_session(s2) is None


def test_errors(client):
    with pytest.raises(SsmdError) as e:
        client.append("s-nope", tokens=[1])
    assert e.value.code == SSMD_ENOENT and e.value.message
    s = client.open()
    with pytest.raises(SsmdError) as e:
        client.generate(s, 5)
    assert e.value.code == SSMD_EEMPTY
    client.append(s, tokens=[1, 2])
    for kw in ({"temperature": math.nan}, {"top_p": 1.5}, {"top_p": -1.0}):
        with pytest.raises(SsmdError) as e:
            client.generate(s, 5, **kw)
        assert e.value.code == SSMD_EINVAL, kw
    with pytest.raises(SsmdError) as e:
        client.generate(s, client.info().limits.max_generate_tokens + 1)
    assert e.value.code == SSMD_ERANGE
    with pytest.raises(SsmdError) as e:
        client.append(s, tokens=[50280])
    assert e.value.code == SSMD_EINVAL
    assert len(client.generate(s, 3).tokens) == 3


def test_stats(client):
    st = client.stats()
    assert st.sessions >= 1
    assert st.tokens_total > 0
    assert st.store_states >= 1


def test_resume_after_restart(daemon):
    with daemon.client() as c:
        a = c.open()
        c.append(a, text=PROMPT)
        b = c.fork(a, 1)[0]
        sid = c.snapshot(b)
        greedy = list(c.generate(a, 50).tokens)
        c2 = c.open(sid)
        sampled = list(c.generate(c2, 50, temperature=0.8, top_p=0.9, seed=3).tokens)
    assert daemon.stop() == 0
    daemon.start()
    with daemon.client() as c:
        r = c.open(sid)
        assert list(c.generate(r, 50).tokens) == greedy
        r2 = c.open(sid)
        assert list(c.generate(r2, 50, temperature=0.8, top_p=0.9, seed=3).tokens) == sampled


def test_delete_reparents_children(client):
    s = client.open()
    client.append(s, tokens=[1, 2])
    a = client.snapshot(s)
    client.append(s, tokens=[3])
    b = client.snapshot(s)
    client.append(s, tokens=[4])
    c = client.snapshot(s)
    assert client.state(c).info.parent == b
    client.delete(b)
    st = client.state(c)
    assert st.info.parent == a
    assert [x.id for x in st.lineage] == [a]
    # The child still loads, with every token it had.
    assert client.open_sessions(c)[0].n_tokens == 4


def supported(fn):
    """Runs fn; skips the test when the daemon does not implement the
    operation yet (it answers SSMD_EPROTO or SSMD_EUNSUPPORTED)."""
    try:
        return fn()
    except SsmdError as e:
        if e.code in (SSMD_EPROTO, SSMD_EUNSUPPORTED):
            pytest.skip(f"daemon does not serve this operation: {e}")
        raise


def continuation(client, source, n=5):
    """Greedy tokens after a state ID/tag or a copy of a live session."""
    s = client.fork(source, 1)[0]
    return list(client.generate(s, n).tokens)


def test_append_checkpoints(client):
    toks = [(i * 37) % 50000 + 1 for i in range(40)]
    s = client.open()
    r = supported(lambda: client.append(s, tokens=toks, checkpoint_every=16,
                                        boundaries=[5, 16]))
    # 16 is named twice and stored once.
    assert list(r.checkpoint_tokens) == [5, 16, 32]
    assert len(r.checkpoints) == 3 and r.session_tokens == 40
    for ck, pos in zip(r.checkpoints, r.checkpoint_tokens):
        # Each checkpoint is the state of an append that stopped there.
        ref = client.open()
        client.append(ref, tokens=toks[:pos])
        assert continuation(client, ck) == continuation(client, ref), pos
        assert client.state(ck).info.kind == "checkpoint"
    # Checkpoints chain, each the parent of the next.
    assert client.state(r.checkpoints[2]).info.parent == r.checkpoints[1]

    # Messages: each tokenized on its own, a checkpoint after each.
    msgs = ["One fish.", " Two fish, red fish."]
    s2 = client.open()
    r2 = client.append(s2, texts=msgs)
    first = client.append(client.open(), text=msgs[0]).appended
    assert list(r2.checkpoint_tokens) == [first, r2.session_tokens]


def test_merge(client):
    a_toks, b_toks = [11, 12, 13, 14], [21, 22, 23]
    sa, sb, sab = client.open(), client.open(), client.open()
    client.append(sa, tokens=a_toks)
    client.append(sb, tokens=b_toks)
    client.append(sab, tokens=a_toks + b_toks)
    a, b = client.snapshot(sa), client.snapshot(sb)

    # replay is exact: the state of reading A's tokens then B's.
    m = supported(lambda: client.merge([a, b], mode="replay", open=True,
                                       tag="py/merged"))
    assert m.n_tokens == 7 and m.session.id
    assert list(client.generate(m.session.id, 5).tokens) == continuation(client, sab)
    info = client.state("py/merged").info
    assert info.kind == "merge" and info.parent == a

    # interpolate with weights (1, 0) is A itself, bit for bit: 1*x + 0*y = x.
    w = client.merge([a, b], weights=[1.0, 0.0])
    assert w.n_tokens == 4
    assert continuation(client, w.state_id) == continuation(client, a)

    c = client.merge([a, b], mode="compose")
    assert c.n_tokens == 7 and client.state(c.state_id).info.kind == "merge"

    for kw, code in (({"sources": [a]}, SSMD_EINVAL),
                     ({"sources": [a, b], "mode": "blend"}, SSMD_EINVAL),
                     ({"sources": [a, b], "weights": [1.0, -1.0]}, SSMD_EINVAL),
                     ({"sources": [a, b], "weights": [0.0, 0.0]}, SSMD_EINVAL),
                     ({"sources": [a, b], "mode": "compose", "weights": [1.0, 1.0]},
                      SSMD_EINVAL),
                     ({"sources": [a, "py/no-such-tag"]}, SSMD_ENOENT)):
        with pytest.raises(SsmdError) as e:
            client.merge(**kw)
        assert e.value.code == code, kw


def test_score(client):
    s = client.open()
    client.append(s, text=PROMPT)
    greedy = list(client.generate(client.fork(s, 1)[0], 8).tokens)
    sc = supported(lambda: client.score(s, tokens=greedy))
    assert list(sc.tokens) == greedy and sc.unscored == 0
    assert len(sc.token_logprobs) == 8
    # A greedy token is the most probable one, so its probability is at
    # least 1/vocab: log p in [-ln V, 0] (1e-4 of slack for f32 rounding).
    bound = math.log(client.info().vocab_size)
    assert all(-bound - 1e-4 <= lp <= 1e-4 for lp in sc.token_logprobs)
    # The total is the sum (f32 terms summed in f64: 1e-4 relative).
    assert math.isclose(sc.logprob, sum(sc.token_logprobs), rel_tol=1e-4)
    # The source is unchanged: it still continues with the same tokens.
    assert list(client.generate(s, 8).tokens) == greedy

    # The same state scored from the library gives the same numbers.
    t = client.open()
    client.append(t, text=PROMPT)
    sid = client.snapshot(t)
    lib = client.score(sid, tokens=greedy)
    assert list(lib.token_logprobs) == list(sc.token_logprobs)
    # Text is scored as its tokens.
    by_text = client.score(sid, text=" and the tide came in.")
    by_toks = client.score(sid, tokens=list(by_text.tokens))
    assert by_text.logprob == by_toks.logprob
    # From an empty session the first token has no prediction.
    empty = client.score(client.open(), tokens=[5, 6, 7])
    assert empty.unscored == 1 and len(empty.token_logprobs) == 2


def test_result_by_request_id(daemon, client):
    import pynng
    from ssmd_client.client import pb
    s = client.open()
    client.append(s, tokens=[1, 2, 3])
    req = pb.Request(version=1, request_id="py-result-1", client_id="py-result",
                     generate=pb.GenerateRequest(session=s, max_tokens=6))
    with pynng.Req0(dial=daemon.url, recv_timeout=30000) as raw:
        raw.send(req.SerializeToString())
        first = pb.Reply()
        first.ParseFromString(raw.recv())
    again = supported(lambda: client.result("py-result-1", client_id="py-result"))
    assert again.request_id == "py-result-1"
    assert list(again.generate.tokens) == list(first.generate.tokens)
    with pytest.raises(SsmdError) as e:
        client.result("never-sent")
    assert e.value.code == SSMD_ENOENT


def job_result(client, rid):
    """The final reply of a pushed job. A push travels on another socket than
    `result`, which may reach the daemon first: submit_wait() until the
    daemon has the job, then `result` waits for it to finish."""
    client.submit_wait(rid)
    return client.result(rid)


def test_jobs(client):
    s = client.open()
    with pytest.raises(SsmdError) as e:
        client.result_status("py-never-pushed")
    assert e.value.code == SSMD_ENOENT
    rid = client.submit("append", session=s, text=PROMPT)
    client.submit_wait(rid)
    client.result_status(rid)  # known once submit_wait returned: ENOENT would raise
    rep = client.result(rid)
    assert rep.request_id == rid and rep.code == 0 and rep.append.appended > 0
    assert client.result_status(rid) is True
    bad = client.submit("append", session="s-nope", tokens=[1])
    rep = job_result(client, bad)
    assert rep.code == SSMD_ENOENT and rep.message
    opened = job_result(client, client.submit("open", **{"from": client.snapshot(s)}))
    assert opened.sessions.sessions[0].n_tokens == client.state(
        client.snapshot(s)).info.n_tokens
    with pytest.raises(SsmdError) as e:
        client.submit("frobnicate")
    assert e.value.code == SSMD_EINVAL
    # A caller-chosen request ID names the job; a resend of it is not run twice.
    mine = f"job/{time.monotonic_ns()}"
    assert client.submit("append", request_id=mine, session=s, tokens=[5, 6]) == mine
    first = job_result(client, mine)
    assert first.request_id == mine and first.code == 0 and first.append.appended == 2
    client.submit("append", request_id=mine, session=s, tokens=[5, 6])
    # The next job on the same push socket arrives after the resend: its
    # total shows the resend added nothing (2 more tokens if it had run).
    after = job_result(client, client.submit("append", session=s, tokens=[7]))
    assert after.append.session_tokens == first.append.session_tokens + 1
    assert job_result(client, mine).append.session_tokens == first.append.session_tokens
    for bad_id in ("", "x" * 129):
        with pytest.raises(SsmdError) as e:
            client.submit("append", request_id=bad_id, session=s, tokens=[1])
        assert e.value.code == SSMD_EINVAL
