"""ssmd's protocol over pynng: one Request out, one Reply back, events for
streams. See proto/PROTOCOL.md for the wire rules this module follows.

A Client owns one REQ socket (requests) and, from the first stream on, one
SUB socket (events). Use a Client from one thread at a time; open one per
thread for parallel requests.
"""
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Sequence

import pynng

try:
    from . import ssmd_pb2 as pb  # installed package: generated at build
except ImportError:  # source tree: the build generates it onto PYTHONPATH
    import ssmd_pb2 as pb

PROTOCOL_VERSION = 1
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_CONNECT_TIMEOUT_S = 2.0
# After the final reply of a stream, how long events still in transit on the
# other socket are waited for before the rest is taken from the reply.
STREAM_DRAIN_S = 0.2
STREAM_POLL_MS = 20
# A request ID is 1..REQUEST_ID_MAX - 1 bytes (SSMD_REQUEST_ID_MAX of ssmd.h).
REQUEST_ID_MAX = 129

# Error codes of proto/ssmd_err.h (they travel on the wire and never change).
ERROR_NAMES = {
    1: "SSMD_ENOMEM", 2: "SSMD_EINVAL", 3: "SSMD_EIO", 4: "SSMD_ENOENT",
    5: "SSMD_EFORMAT", 6: "SSMD_ECORRUPT", 7: "SSMD_EMODEL", 8: "SSMD_ENOSPC",
    9: "SSMD_EBUSY", 10: "SSMD_ERANGE", 11: "SSMD_EUNSUPPORTED",
    12: "SSMD_EEXIST", 13: "SSMD_EDEVICE", 14: "SSMD_EPROTO",
    15: "SSMD_ETIMEDOUT", 16: "SSMD_ECLOSED", 17: "SSMD_ESTORE",
    18: "SSMD_ENOTOK", 19: "SSMD_EEMPTY", 20: "SSMD_ECANCELED",
}
globals().update({name: code for code, name in ERROR_NAMES.items()})


class SsmdError(Exception):
    """A request failed: code is an SSMD_E* value, message the daemon's (or
    this client's) explanation."""

    def __init__(self, code: int, message: str):
        self.code = code
        self.name = ERROR_NAMES.get(code, f"error {code}")
        self.message = message
        super().__init__(f"{message} ({self.name})")


def default_url() -> str:
    """$SSMD_URL, else the daemon's default request socket:
    ipc://$XDG_RUNTIME_DIR/ssmd/ssmd.sock, or ipc://run/ssmd.sock."""
    env = os.environ.get("SSMD_URL")
    if env:
        return env
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return f"ipc://{xdg}/ssmd/ssmd.sock" if xdg else "ipc://run/ssmd.sock"


def _sibling_url(url: str, env_name: str, name: str) -> str:
    """$env_name, else the endpoint called name that the daemon pairs with
    url in its run directory: ipc://DIR/NAME.sock -> ipc://DIR/NAME-name.sock."""
    env = os.environ.get(env_name)
    if env:
        return env
    if url.startswith("ipc://"):
        stem = url[:-5] if url.endswith(".sock") else url
        return f"{stem}-{name}.sock"
    raise SsmdError(SSMD_EINVAL, f"{url}: cannot derive the {name} URL; give it")


def events_url_for(url: str) -> str:
    """$SSMD_EVENTS_URL, else the events endpoint the daemon pairs with url
    in its run directory: ipc://DIR/NAME.sock -> ipc://DIR/NAME-events.sock.
    Other transports have no such rule: pass events_url to Client."""
    return _sibling_url(url, "SSMD_EVENTS_URL", "events")


def jobs_url_for(url: str) -> str:
    """$SSMD_JOBS_URL, else the jobs endpoint the daemon pairs with url:
    ipc://DIR/NAME.sock -> ipc://DIR/NAME-jobs.sock. Other transports have no
    such rule: pass jobs_url to Client."""
    return _sibling_url(url, "SSMD_JOBS_URL", "jobs")


@dataclass
class Chunk:
    """Tokens of a stream since the previous chunk, and their text ("" when
    the model has no tokenizer)."""
    tokens: List[int]
    text: str


def _dial(sock, url: str, timeout_s: float):
    """Connects sock to url, retrying while nothing listens there for up to
    timeout_s (a daemon that is still starting); returns sock, or closes it
    and raises."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                sock.dial(url, block=True)
                return sock
            except pynng.NNGException as e:
                if time.monotonic() >= deadline:
                    raise SsmdError(SSMD_ECLOSED,
                                    f"connect {url}: {e} (is ssmd running?)") from e
                time.sleep(0.05)
    except BaseException:
        sock.close()
        raise


def _set_given(msg, **fields):
    """Sets each field of the protobuf message msg whose value is not None
    (an unset optional field keeps the daemon's default); returns msg."""
    for name, value in fields.items():
        if value is not None:
            setattr(msg, name, value)
    return msg


class Client:
    """A connection to one ssmd daemon. Every method sends one request and
    blocks for its reply; failures raise SsmdError."""

    def __init__(self, url: Optional[str] = None, events_url: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT_S,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
                 jobs_url: Optional[str] = None):
        self.url = url or default_url()
        self._events_url = events_url
        self._jobs_url = jobs_url
        self._push = None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.client_id = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(8)}"
        self._req = pynng.Req0(recv_timeout=int(timeout * 1000),
                               send_timeout=int(connect_timeout * 1000))
        self._sub = None
        _dial(self._req, self.url, connect_timeout)

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Disconnects; the client cannot be used afterwards."""
        self._req.close()
        for name in ("_sub", "_push"):
            sock = getattr(self, name)
            if sock is not None:
                sock.close()
                setattr(self, name, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _envelope(self, request_id: Optional[str] = None, **op) -> "pb.Request":
        req = pb.Request(version=PROTOCOL_VERSION,
                         request_id=request_id or secrets.token_hex(16),
                         client_id=self.client_id, **op)
        return req

    def _send(self, req: "pb.Request") -> None:
        try:
            self._req.send(req.SerializeToString())
        except pynng.Timeout as e:
            raise SsmdError(SSMD_ETIMEDOUT, "send: daemon not reachable") from e
        except pynng.NNGException as e:
            raise SsmdError(SSMD_ECLOSED, f"send: {e}") from e

    @staticmethod
    def _decode(data: bytes, req: "pb.Request", want: Optional[str]) -> "pb.Reply":
        rep = pb.Reply()
        try:
            rep.ParseFromString(data)
        except Exception as e:  # the protobuf runtime's DecodeError
            raise SsmdError(SSMD_EPROTO, f"reply is not a valid message: {e}") from e
        if rep.request_id != req.request_id:
            raise SsmdError(SSMD_EPROTO, "reply answers another request")
        if rep.code != 0:
            raise SsmdError(rep.code, rep.message or ERROR_NAMES.get(rep.code, ""))
        if want is not None and rep.WhichOneof("result") != want:
            raise SsmdError(SSMD_EPROTO, f"reply carries {rep.WhichOneof('result')}, "
                            f"expected {want}")
        return rep

    def _call(self, want: Optional[str], **op) -> "pb.Reply":
        req = self._envelope(**op)
        self._send(req)
        try:
            data = self._req.recv()
        except pynng.Timeout as e:
            raise SsmdError(SSMD_ETIMEDOUT, "no reply in time") from e
        except pynng.NNGException as e:
            raise SsmdError(SSMD_ECLOSED, f"receive: {e}") from e
        return self._decode(data, req, want)

    def _events(self):
        if self._sub is None:
            self._sub = _dial(pynng.Sub0(recv_timeout=STREAM_POLL_MS),
                              self._events_url or events_url_for(self.url),
                              self.connect_timeout)
        return self._sub

    # ------------------------------------------------------------ daemon

    def info(self) -> "pb.InfoReply":
        """Daemon version, model, backend, state size and limits."""
        return self._call("info", info=pb.InfoRequest()).info

    def stats(self) -> "pb.StatsReply":
        """Sessions, slots, queue, tokens/s, store size."""
        return self._call("stats", stats=pb.StatsRequest()).stats

    # ------------------------------------------------------------ sessions

    def open_sessions(self, source: Optional[str] = None, *, fork: Optional[str] = None,
                      count: int = 1, seed: Optional[int] = None,
                      label: Optional[str] = None) -> List["pb.SessionInfo"]:
        """Opens count sessions: empty, resumed from a state ID or tag
        (source), or copied from a live session (fork)."""
        # "from" is a Python keyword
        op = _set_given(pb.OpenRequest(count=count), fork=fork, seed=seed,
                        label=label, **{"from": source})
        return list(self._call("sessions", open=op).sessions.sessions)

    def open(self, source: Optional[str] = None, *, fork: Optional[str] = None,
             seed: Optional[int] = None, label: Optional[str] = None) -> str:
        """Opens one session (see open_sessions) and returns its ID."""
        return self.open_sessions(source, fork=fork, seed=seed, label=label)[0].id

    def fork(self, source: str, n: int = 1, seed: Optional[int] = None) -> List[str]:
        """Forks a live session (copies its state) or a state ID or tag
        (resumes it) n times; returns the new session IDs."""
        op = _set_given(pb.ForkRequest(source=source, count=n), seed=seed)
        return [s.id for s in self._call("sessions", fork=op).sessions.sessions]

    def append(self, session: str, text: Optional[str] = None,
               tokens: Optional[Sequence[int]] = None, *,
               texts: Optional[Sequence[str]] = None,
               checkpoint_every: Optional[int] = None,
               boundaries: Sequence[int] = ()) -> "pb.AppendReply":
        """Feeds text (needs a tokenizer), token IDs, or a list of messages
        (texts: each tokenized on its own, a checkpoint after each) into a
        session. checkpoint_every / boundaries store checkpoints at offsets
        inside this append; the reply lists them (checkpoints with
        checkpoint_tokens)."""
        if sum(x is not None for x in (text, tokens, texts)) != 1:
            raise SsmdError(SSMD_EINVAL, "append: give one of text, tokens, texts")
        op = pb.AppendRequest(session=session)
        if text is not None:
            op.text = text
        elif tokens is not None:
            op.tokens.extend(tokens)
        else:
            op.texts.extend(texts)
        _set_given(op, checkpoint_every=checkpoint_every)
        op.boundaries.extend(boundaries)
        return self._call("append", append=op).append

    @staticmethod
    def _generate_op(session, max_tokens, temperature, top_k, top_p, seed, stop,
                     stop_tokens, snapshot, tag, label, stream) -> "pb.GenerateRequest":
        op = _set_given(pb.GenerateRequest(session=session, stream=stream),
                        max_tokens=max_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed)
        op.stop.extend(stop)
        op.stop_tokens.extend(stop_tokens)
        if snapshot:
            op.snapshot_at_end = True
            _set_given(op, snapshot_tag=tag, snapshot_label=label)
        elif tag is not None or label is not None:
            raise SsmdError(SSMD_EINVAL, "generate: tag and label go with snapshot")
        return op

    def generate(self, session: str, max_tokens: Optional[int] = None, *,
                 temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None,
                 stop: Iterable[str] = (), stop_tokens: Iterable[int] = (),
                 snapshot: bool = False, tag: Optional[str] = None,
                 label: Optional[str] = None) -> "pb.GenerateReply":
        """Samples up to max_tokens tokens (each consumed by the session) and
        returns the complete result: tokens, text, finish, session_tokens and,
        with snapshot, state_id."""
        op = self._generate_op(session, max_tokens, temperature, top_k, top_p, seed,
                               stop, stop_tokens, snapshot, tag, label, False)
        return self._call("generate", generate=op).generate

    def stream(self, session: str, max_tokens: Optional[int] = None, *,
               temperature: Optional[float] = None, top_k: Optional[int] = None,
               top_p: Optional[float] = None, seed: Optional[int] = None,
               stop: Iterable[str] = (), stop_tokens: Iterable[int] = (),
               snapshot: bool = False, tag: Optional[str] = None,
               label: Optional[str] = None) -> "Stream":
        """Like generate, but returns a Stream: iterate it for Chunks as the
        tokens are produced; afterwards stream.result is the complete reply.
        Every token is yielded exactly once, in order, even when events are
        lost in transit (the rest then comes from the final reply)."""
        op = self._generate_op(session, max_tokens, temperature, top_k, top_p, seed,
                               stop, stop_tokens, snapshot, tag, label, True)
        return Stream(self, op)

    def snapshot(self, session: str, tag: Optional[str] = None,
                 label: Optional[str] = None) -> str:
        """Stores the session's state; returns its ID once committed."""
        op = _set_given(pb.SnapshotRequest(session=session), tag=tag, label=label)
        return self._call("state_ref", snapshot=op).state_ref.state_id

    def close_session(self, session: str, snapshot: bool = False,
                      tag: Optional[str] = None,
                      label: Optional[str] = None) -> Optional[str]:
        """Ends a session; with snapshot, stores its state first and returns
        the ID (None otherwise)."""
        op = _set_given(pb.CloseRequest(session=session, snapshot=snapshot),
                        tag=tag, label=label)
        sid = self._call("state_ref", close=op).state_ref.state_id
        return sid or None

    # ------------------------------------------------------------ states

    def states(self, tag_prefix: Optional[str] = None, *, session: Optional[str] = None,
               kind: Optional[str] = None, all_models: bool = False,
               limit: Optional[int] = None,
               cursor: Optional[str] = None) -> "pb.StatesReply":
        """One page of stored states, newest first (.states, .next_cursor)."""
        op = _set_given(pb.StatesRequest(all_models=all_models),
                        tag_prefix=tag_prefix, session=session, kind=kind,
                        limit=limit, cursor=cursor)
        return self._call("states", states=op).states

    def state(self, ref: str) -> "pb.StateReply":
        """A state (ID or tag) with its lineage (.info, .lineage parent first)."""
        return self._call("state", state=pb.StateRequest(ref=ref, lineage=True)).state

    def tag(self, name: str, ref: str) -> str:
        """Points tag name at a state; returns the state's ID."""
        return self._call("state_ref", tag=pb.TagRequest(name=name, ref=ref)).state_ref.state_id

    def untag(self, name: str) -> None:
        """Removes a tag (the state stays)."""
        self._call(None, untag=pb.UntagRequest(name=name))

    def delete(self, ref: str, force: bool = False) -> None:
        """Deletes a state (refused while tags point at it, unless force,
        which removes them); its children are re-parented onto its parent."""
        self._call(None, delete_state=pb.DeleteRequest(ref=ref, force=force))

    def export(self, ref: str) -> bytes:
        """The state in the library's self-describing export format."""
        return self._call("export_state", export_state=pb.ExportRequest(ref=ref)).export_state.data

    def merge(self, sources: Sequence[str], *, mode: Optional[str] = None,
              weights: Sequence[float] = (), tag: Optional[str] = None,
              label: Optional[str] = None, open: bool = False,
              seed: Optional[int] = None) -> "pb.MergeReply":
        """Merges stored states (IDs or tags) into a new stored state:
        mode "interpolate" (default, with weights), "compose" or "replay".
        With open, the reply's session is a new session on it."""
        op = _set_given(pb.MergeRequest(sources=list(sources), weights=list(weights),
                                        open=open),
                        mode=mode, tag=tag, label=label, seed=seed)
        return self._call("merge", merge=op).merge

    def score(self, source: str, text: Optional[str] = None,
              tokens: Optional[Sequence[int]] = None) -> "pb.ScoreReply":
        """Log-probability of text or tokens after a live session or a state
        ID or tag, leaving the source unchanged (.logprob, .tokens,
        .token_logprobs, .unscored)."""
        if (text is None) == (tokens is None):
            raise SsmdError(SSMD_EINVAL, "score: give text or tokens")
        op = pb.ScoreRequest(source=source)
        if text is not None:
            op.text = text
        else:
            op.tokens.extend(tokens)
        return self._call("score", score=op).score

    def result(self, request_id: str, client_id: Optional[str] = None) -> "pb.Reply":
        """The final reply of an earlier request (by default one of this
        client's), from the daemon's request cache; waits while it runs."""
        op = _set_given(pb.ResultRequest(request_id=request_id), client_id=client_id)
        return self._call("fetched", result=op).fetched.reply

    def result_status(self, request_id: str, client_id: Optional[str] = None) -> bool:
        """Whether the daemon has an earlier request, without waiting for it:
        True when its reply is ready (fetch it with result()), False while it
        runs; raises SsmdError(SSMD_ENOENT) when the daemon has not received
        it (or has forgotten it)."""
        op = _set_given(pb.ResultRequest(request_id=request_id, wait=False),
                        client_id=client_id)
        fetched = self._call("fetched", result=op).fetched
        if not fetched.HasField("running"):
            raise SsmdError(SSMD_EPROTO, "result status reply without `running`")
        return not fetched.running

    def submit_wait(self, request_id: str) -> None:
        """Waits until the daemon has received the job this client submitted
        as request_id (not until it has run), asking every 1 to 32 ms, up to
        the client's timeout: after it, closing the client cannot drop the
        job."""
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            try:
                self.result_status(request_id)
                return
            except SsmdError as e:
                if e.code != SSMD_ENOENT:
                    raise
            if time.monotonic() >= deadline:
                raise SsmdError(SSMD_ETIMEDOUT,
                                f"submit: the daemon has not received job {request_id}")
            time.sleep(pause)
            pause = min(2 * pause, 0.032)

    def submit(self, op: str, *, request_id: Optional[str] = None, **fields) -> str:
        """Pushes one request to the jobs endpoint, fire and forget: op names
        an operation ("append", "generate", "merge", ...), fields are those
        of its request message (OpenRequest's "from" as **{"from": ...}).
        request_id, when given, names the job (1..128 bytes; a resend with
        the same ID is not executed twice), else a fresh random one does.
        Returns the request ID; the complete reply is published on the events
        endpoint, and result(request_id) returns it, waiting while it runs.
        The message may still sit in the jobs socket: submit_wait() before
        closing the client, or it may be dropped."""
        field = pb.Request.DESCRIPTOR.fields_by_name.get(op)
        if field is None or field.containing_oneof is None:
            raise SsmdError(SSMD_EINVAL, f"submit: no operation {op!r}")
        if request_id is not None and not 0 < len(request_id.encode()) < REQUEST_ID_MAX:
            raise SsmdError(SSMD_EINVAL,
                            f"submit: a request ID has 1..{REQUEST_ID_MAX - 1} bytes")
        try:
            msg = getattr(pb, field.message_type.name)(**fields)
        except (TypeError, ValueError) as e:
            raise SsmdError(SSMD_EINVAL, f"submit {op}: {e}") from e
        req = self._envelope(request_id, **{op: msg})
        if self._push is None:
            self._push = _dial(
                pynng.Push0(send_timeout=int(self.connect_timeout * 1000)),
                self._jobs_url or jobs_url_for(self.url), self.connect_timeout)
        try:
            self._push.send(req.SerializeToString())
        except pynng.NNGException as e:
            raise SsmdError(SSMD_ECLOSED, f"submit: {e}") from e
        return req.request_id

    def import_state(self, data: bytes, tag: Optional[str] = None) -> str:
        """Stores an exported state; returns its new ID."""
        op = _set_given(pb.ImportRequest(data=data), tag=tag)
        return self._call("state_ref", import_state=op).state_ref.state_id


class Stream:
    """A streaming generate in progress. Iterate it for Chunks; afterwards
    .result holds the complete GenerateReply and .events_missed counts events
    lost in transit (their tokens came from the reply)."""

    def __init__(self, client: Client, op: "pb.GenerateRequest"):
        self._client = client
        self._op = op
        self.result: Optional["pb.GenerateReply"] = None
        self.events_missed = 0

    def __iter__(self) -> Iterator[Chunk]:
        c = self._client
        sub = c._events()
        req = c._envelope(generate=self._op)
        topic = req.request_id.encode() + b"\0"
        # Subscribe before sending so no event of this request is missed.
        sub.subscribe(topic)
        try:
            yield from self._run(c, sub, req, topic)
        finally:
            sub.unsubscribe(topic)

    def _run(self, c: Client, sub, req, topic: bytes) -> Iterator[Chunk]:
        next_seq, broken, done = 0, False, False
        tokens_given, text_given = 0, 0

        def event(frame: bytes):
            nonlocal next_seq, broken, done
            if not frame.startswith(topic):
                return None
            ev = pb.Event()
            try:
                ev.ParseFromString(frame[len(topic):])
            except Exception:
                broken = True  # an unreadable event counts as a lost one
                return None
            if ev.seq != next_seq:
                self.events_missed += max(0, ev.seq - next_seq)
                broken = True
            if broken:
                return None
            next_seq = ev.seq + 1
            done = ev.done
            if ev.tokens or ev.text:
                return Chunk(list(ev.tokens), ev.text)
            return None

        c._send(req)
        deadline = time.monotonic() + c.timeout
        data = None
        while data is None:
            try:
                chunk = event(sub.recv())
                if chunk is not None:
                    tokens_given += len(chunk.tokens)
                    text_given += len(chunk.text.encode())
                    yield chunk
            except pynng.Timeout:
                pass
            try:
                data = c._req.recv(block=False)
            except pynng.TryAgain:
                if time.monotonic() > deadline:
                    raise SsmdError(SSMD_ETIMEDOUT, "no reply in time")
        result = c._decode(data, req, "generate").generate

        # The reply and the events travel on different sockets: wait briefly
        # for events still on their way, then take the rest from the reply.
        until = time.monotonic() + STREAM_DRAIN_S
        while (not broken and not done and tokens_given < len(result.tokens)
               and time.monotonic() < until):
            try:
                chunk = event(sub.recv())
            except pynng.Timeout:
                continue
            if chunk is not None:
                tokens_given += len(chunk.tokens)
                text_given += len(chunk.text.encode())
                yield chunk
        if tokens_given < len(result.tokens):
            if tokens_given and not broken:
                self.events_missed += 1
            text = result.text.encode()
            rest = text[min(text_given, len(text)):].decode(errors="replace")
            yield Chunk(list(result.tokens[tokens_given:]), rest)
        self.result = result
