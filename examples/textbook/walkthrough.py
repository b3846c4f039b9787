#!/usr/bin/env python3
"""Read the textbook once, fork it for every question.

Starts ssmd on a fresh state library, ingests the Debian Reference (package
debian-reference-en) into one session with ONE append whose texts are the
chapters (a checkpoint after each), tags the final state
textbook/debian-reference and each chapter's checkpoint
textbook/debian-reference/chNN, then measures:

- the ingest time (what every question would cost if the book were replayed)
  against the time to fork the tagged state into a new session and produce a
  first token;
- the state's size in the library (raw and stored bytes);
- the mean per-token loss of (a) passages quoted from the ingested text and
  (b) held-out passages of the same book (a seeded sample of paragraphs left
  out of the ingest), each scored from the empty state and from the textbook
  state;

and finally forks the textbook state once per question, asks each fork its
own question, and shows that the forks continue independently while the
tagged state stays byte for byte what it was.

    examples/textbook/walkthrough.py [--build build] [--model models/demo]
        [--backend cpu|cuda|auto] [--chapters N] [--json FILE] ...

Run from anywhere: --build and --model default to the checkout's build/
and models/demo, and paths given are relative to the current directory. The
Python client comes from an installed ssmd-client package, else from
client/python plus the protocol classes generated in the build folder.
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOOK = "/usr/share/debian-reference/debian-reference.en.txt.gz"
BOOK_PACKAGE = "debian-reference-en"
TAG = "textbook/debian-reference"
# Paragraphs scored as passages: this many tokens (the model's tokenizer).
PASSAGE_TOKENS = (60, 120)
QUESTIONS = [
    "How do I install a package and all of its dependencies with apt?",
    "How can I see which process is listening on a network port?",
    "How do I make a compressed backup of my home directory with tar?",
]
# Scored after each fork's reply to show that the forks hold different
# states (and, from fresh forks, that they start from the same one).
PROBE = "\n\n    The package manager keeps a list of installed packages."
FORK_TIMING_REPS = 5


def import_client(build):
    """Imports ssmd_client: installed, else from the source tree with the
    protocol classes the build generated (BUILD/client/ssmd_pb2.py)."""
    try:
        import ssmd_client  # noqa: F401
    except ImportError:
        sys.path[:0] = [os.path.join(ROOT, "client", "python"),
                        os.path.join(build, "client")]
    import ssmd_client
    return ssmd_client


# ------------------------------------------------------------------ the book

class Chapter:
    """One chapter (or the appendix) of the book: its tag suffix, its title
    line and its lines (the title first, ending with the blank line before
    the next chapter)."""

    def __init__(self, suffix, title, lines):
        self.suffix, self.title, self.lines = suffix, title, lines

    def text(self, without=()):
        """The chapter's text, less the paragraphs (line ranges) in without;
        each removed paragraph takes its following blank line with it."""
        drop = set()
        for start, end in without:
            drop.update(range(start, end + 1))
        return "".join(line + "\n" for i, line in enumerate(self.lines) if i not in drop)


def load_book(path=BOOK, chapters=None, chapter_chars=0):
    """The book's chapters and appendix, in order (the front matter before
    chapter 1 is a table of contents and is left out). chapters: only the
    first N; chapter_chars: cut each chapter at the last paragraph end within
    its first N characters (0: whole chapters)."""
    if not os.path.exists(path):
        raise SystemExit(f"no textbook at {path}: install the Debian package "
                         f"{BOOK_PACKAGE} (apt-get install {BOOK_PACKAGE})")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Headings are "Chapter 1. Title" and "Appendix A. Title" with no-break
    # spaces (U+00A0) after the word and after the number.
    head = re.compile("^(Chapter|Appendix)\u00a0([0-9A-Z]+)\\.\u00a0")
    starts = [(i, m) for i, line in enumerate(lines) if (m := head.match(line))]
    if not starts:
        raise SystemExit(f"{path}: no chapter headings found")
    book = []
    for k, (i, m) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        body = lines[i:end]
        while len(body) > 1 and body[-1] == "" and body[-2] == "":
            body.pop()
        if body[-1] != "":
            body.append("")
        if chapter_chars:
            body = _cut(body, chapter_chars)
        n = m.group(2)
        suffix = f"ch{int(n):02d}" if m.group(1) == "Chapter" else f"app{n}"
        # The text rendering indents some lines with no-break spaces where
        # others have spaces: every U+00A0 becomes a plain space.
        body = [line.replace("\u00a0", " ") for line in body]
        book.append(Chapter(suffix, body[0], body))
    return book[:chapters] if chapters else book


def _cut(body, limit):
    """body's lines up to the last blank line within limit characters."""
    size, cut = 0, 1
    for i, line in enumerate(body):
        size += len(line) + 1
        if size > limit:
            break
        if line == "":
            cut = i + 1
    return body[:cut] if cut > 1 else body[:1] + [""]


def prose_paragraphs(chapter):
    """(start, end) line ranges of the chapter's running-text paragraphs:
    at least three lines, each indented by exactly four spaces, starting
    with a capital letter and ending with a full stop; no list items, code or
    tables (no runs of spaces inside a line)."""
    out, i, lines = [], 0, chapter.lines
    while i < len(lines):
        if lines[i] == "":
            i += 1
            continue
        j = i
        while j + 1 < len(lines) and lines[j + 1] != "":
            j += 1
        block = lines[i:j + 1]
        if (len(block) >= 3
                and all(re.match(r"^    \S", line) for line in block)
                and not any("  " in line[4:] for line in block)
                and block[0][4].isupper() and block[-1].endswith(".")):
            out.append((i, j))
        i = j + 1
    return out


def count_tokens(build, tokenizer, texts):
    """Token counts of texts under the model's tokenizer (ssm-tokenize of
    the build, which gives exactly Hugging Face's IDs)."""
    tool = os.path.join(build, "daemon", "ssm-tokenize")
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    out = subprocess.run([tool, "--tokenizer", tokenizer], input=data,
                         capture_output=True, text=True, check=True).stdout
    return [len(json.loads(line)["ids"]) for line in out.splitlines()]


def choose_passages(book, n, seed, build, tokenizer):
    """A seeded sample of 2n prose paragraphs of PASSAGE_TOKENS tokens from
    the book: (held_out, quoted), n each (fewer when the book is short), as
    lists of (chapter index, (start, end), text)."""
    cands = [(k, r, "\n".join(ch.lines[r[0]:r[1] + 1]) + "\n")
             for k, ch in enumerate(book) for r in prose_paragraphs(ch)]
    counts = count_tokens(build, tokenizer, [c[2] for c in cands])
    lo, hi = PASSAGE_TOKENS
    cands = [c for c, t in zip(cands, counts) if lo <= t <= hi]
    n = min(n, len(cands) // 2)
    if n < 1:
        raise SystemExit("too few paragraphs of 60-120 tokens to sample passages "
                         "(more chapters or a larger --chapter-chars)")
    picked = random.Random(seed).sample(cands, 2 * n)
    return picked[:n], picked[n:]


def ingest_texts(book, held_out):
    """The texts the walkthrough appends: each chapter less its held-out
    paragraphs."""
    return [ch.text([r for k, r, _ in held_out if k == i]) for i, ch in enumerate(book)]


# ------------------------------------------------------------------ the daemon

class Daemon:
    """An ssmd process on a fresh state library in its own directory; a
    context manager that stops it (SIGTERM) on exit."""

    def __init__(self, build, model, backend="cpu", store=None, threads=None,
                 workdir=None):
        self.build, self.model, self.backend = build, model, backend
        self.threads = threads
        self.dir = workdir or tempfile.mkdtemp(prefix="ssmd-textbook.", dir="/tmp")
        self.store = store or os.path.join(self.dir, "states.db")
        # ipc socket paths are limited to ~107 bytes: keep them in dir.
        self.url = f"ipc://{self.dir}/ssmd.sock"
        self.events = f"ipc://{self.dir}/ssmd-events.sock"
        self.log = os.path.join(self.dir, "ssmd.log")
        self.proc = None

    def start(self, client_mod, timeout=60):
        ssmd = os.path.join(self.build, "daemon", "ssmd")
        if not os.access(ssmd, os.X_OK):
            raise SystemExit(f"{ssmd} not built (meson setup {self.build} && "
                             f"ninja -C {self.build})")
        cmd = [ssmd, "--model", self.model, "--store", self.store,
               "--listen", self.url, "--events", self.events, "--jobs", "off",
               "--run-dir", self.dir, "--backend", self.backend,
               "--log-level", "warn"]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"ssmd exited at start:\n{self.read_log()}")
            try:
                with self.client(client_mod, timeout=5, connect_timeout=0.5) as c:
                    c.info()
                return self
            except client_mod.SsmdError:
                time.sleep(0.05)
        self.proc.kill()
        raise SystemExit(f"ssmd did not answer within {timeout} s:\n{self.read_log()}")

    def stop(self):
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def read_log(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def client(self, client_mod, **kw):
        kw.setdefault("timeout", 24 * 3600.0)  # a whole-book append is long
        return client_mod.Client(self.url, events_url=self.events, **kw)


# ------------------------------------------------------------------ measuring

def mean_loss(replies, skip_first):
    """Mean negative log-probability per token (nats) over the tokens of all
    replies. skip_first drops each reply's first scored token, so that
    scores from a state that has read something cover the same tokens as
    scores from the empty state (where the first token has no prediction)."""
    total, n = 0.0, 0
    for r in replies:
        lps = list(r.token_logprobs)[1 if skip_first else 0:]
        total -= sum(lps)
        n += len(lps)
    return total / n, n


def _append(c, session, texts, monitor):
    """c.append(session, texts=texts); with monitor (a second client of the
    same daemon), shows the daemon's token count on the terminal meanwhile."""
    if monitor is None:
        return c.append(session, texts=texts)
    done = []
    t = threading.Thread(target=lambda: done.append(_try(c.append, session, texts=texts)))
    t.start()
    while t.is_alive():
        t.join(2.0)
        st = monitor.stats()
        sys.stdout.write(f"\r   {st.tokens_total} tokens read, "
                         f"{st.tokens_per_s:.0f} tokens/s ")
        sys.stdout.flush()
    sys.stdout.write("\r" + " " * 50 + "\r")
    ok, value = done[0]
    if not ok:
        raise value
    return value


def _try(f, *args, **kw):
    try:
        return True, f(*args, **kw)
    except Exception as e:  # re-raised in the caller's thread
        return False, e


def walk(c, book, held_out, quoted, questions=QUESTIONS, gen_tokens=40,
         say=print, monitor=None):
    """The walkthrough against client c of a fresh daemon; returns the
    measurements (a dict, also what --json writes). monitor: a second client,
    to show the ingest's progress on a terminal."""
    info = c.info()
    texts = ingest_texts(book, held_out)
    res = {"model": {"name": info.model, "d_model": info.d_model,
                     "n_layer": info.n_layer, "vocab": info.vocab_size,
                     "backend": info.backend},
           "book": BOOK, "tag": TAG}

    say(f"== ingest: one append of {len(texts)} texts "
        f"({sum(map(len, texts))} characters), a checkpoint after each")
    s = c.open(label="textbook")
    t0 = time.perf_counter()
    a = _append(c, s, texts, monitor)
    ingest_s = time.perf_counter() - t0
    if len(a.checkpoints) != len(texts):
        raise RuntimeError(f"{len(a.checkpoints)} checkpoints for {len(texts)} texts")
    chapters, prev = [], 0
    for ch, sid, pos in zip(book, a.checkpoints, a.checkpoint_tokens):
        c.tag(f"{TAG}/{ch.suffix}", sid)
        chapters.append({"tag": f"{TAG}/{ch.suffix}", "title": ch.title,
                         "state": sid, "n_tokens": pos, "tokens": pos - prev})
        say(f"   {TAG}/{ch.suffix:5}  {pos - prev:7d} tokens  "
            f"(at {pos:7d})  {ch.title}")
        prev = pos
    final = a.checkpoints[-1]
    c.tag(TAG, final)
    c.close_session(s)
    say(f"   {TAG} -> {final}: {a.session_tokens} tokens in {ingest_s:.1f} s "
        f"({a.session_tokens / ingest_s:.0f} tokens/s)")
    res["chapters"] = chapters
    res["tokens"] = a.session_tokens
    res["ingest_s"] = ingest_s

    st = c.state(TAG).info
    res["state"] = {"id": st.id, "raw_bytes": st.raw_bytes,
                    "stored_bytes": st.stored_bytes}
    before = hashlib.sha256(c.export(TAG)).hexdigest()

    say(f"\n== fork {TAG} and produce a first token ({FORK_TIMING_REPS} times)")
    times = []
    for _ in range(FORK_TIMING_REPS):
        t0 = time.perf_counter()
        f = c.fork(TAG, 1)[0]
        g = c.generate(f, 1)
        times.append(time.perf_counter() - t0)
        c.close_session(f)
        if len(g.tokens) != 1:
            raise RuntimeError("first token not produced")
    res["fork_first_token_ms"] = [t * 1000 for t in times]
    say("   " + "  ".join(f"{t * 1000:.1f} ms" for t in times))

    say(f"\n== scoring {len(quoted)} quoted and {len(held_out)} held-out passages "
        f"({PASSAGE_TOKENS[0]}-{PASSAGE_TOKENS[1]} tokens each)")
    empty = c.open(label="empty")
    losses = {}
    for kind, passages in (("quoted", quoted), ("held_out", held_out)):
        for source, name in ((empty, "empty"), (TAG, "textbook")):
            reps = [c.score(source, text=p[2]) for p in passages]
            mean, n = mean_loss(reps, skip_first=name != "empty")
            losses[f"{kind}_{name}"] = {"nats": mean, "ppl": math.exp(mean),
                                        "tokens": n}
    c.close_session(empty)
    res["loss"] = losses
    res["passages"] = {"quoted": len(quoted), "held_out": len(held_out),
                       "held_out_titles": sorted({book[k].suffix for k, _, _ in held_out})}

    say(f"\n== {len(questions)} forks of {TAG}, one question each "
        f"({gen_tokens} tokens, greedy)")
    forks = c.fork(TAG, len(questions))
    replies = []
    for f, q in zip(forks, questions):
        c.append(f, text=f"\nQuestion: {q}\nAnswer:")
        g = c.generate(f, gen_tokens)
        replies.append({"session": f, "question": q, "reply": g.text,
                        "session_tokens": g.session_tokens})
        say(f"\n-- {f}\n   Question: {q}\n   Answer:{_indent(g.text)}")
    # Each fork now holds its own question and answer: the same probe scores
    # differently after each. Two fresh forks of the tag score it exactly as
    # the tag itself does, and the first question asked again on a fresh
    # fork gets the same answer: nothing the forks did reached the tag.
    probe = [c.score(f, text=PROBE).logprob for f in forks]
    fresh = c.fork(TAG, 2)
    probe_fresh = [c.score(f, text=PROBE).logprob for f in fresh]
    probe_tag = c.score(TAG, text=PROBE).logprob
    c.append(fresh[0], text=f"\nQuestion: {questions[0]}\nAnswer:")
    again = c.generate(fresh[0], gen_tokens).text
    for f in forks + fresh:
        c.close_session(f)
    after = hashlib.sha256(c.export(TAG)).hexdigest()
    res["forks"] = {"replies": replies, "probe_logprob": probe,
                    "probe_logprob_fresh": probe_fresh,
                    "probe_logprob_tag": probe_tag,
                    "first_question_again_same": again == replies[0]["reply"]}
    res["tagged_state"] = {"id_after": c.state(TAG).info.id,
                           "sha256_before": before, "sha256_after": after,
                           "unchanged": before == after
                           and c.state(TAG).info.id == st.id}
    say("\n   probe log-probability after each fork's answer: "
        + ", ".join(f"{x:.3f}" for x in probe))
    say("   from two fresh forks: " + ", ".join(f"{x:.3f}" for x in probe_fresh)
        + f"; from the tag itself: {probe_tag:.3f}")
    say("   first question asked again on a fresh fork: "
        + ("the same answer" if res["forks"]["first_question_again_same"]
           else "A DIFFERENT ANSWER"))
    say(f"   {TAG} exported before and after the forks: sha256 {before[:16]}... "
        + ("identical" if before == after else f"CHANGED to {after[:16]}..."))
    res["rows"] = table_rows(res)
    return res


def _indent(text):
    return text.replace("\n", "\n   ")


def table_rows(res):
    """The table: (key, label, value, unit) rows, in print order."""
    ms = statistics.median(res["fork_first_token_ms"])
    L = res["loss"]
    rows = [
        ("tokens", f"textbook tokens ({len(res['chapters'])} chapters, one append)",
         res["tokens"], "tokens"),
        ("ingest_s", "ingest = cost of replaying the book per question",
         res["ingest_s"], "s"),
        ("fork_first_token_ms", "fork the tagged state + first token (median)",
         ms, "ms"),
        ("speedup", "ingest / fork-and-first-token", res["ingest_s"] * 1000 / ms, "x"),
        ("state_raw_bytes", "state size, raw", res["state"]["raw_bytes"], "bytes"),
        ("state_stored_bytes", "state size, stored (LZ4)", res["state"]["stored_bytes"],
         "bytes"),
    ]
    for kind, label in (("quoted", "(a) quoted passages"),
                        ("held_out", "(b) held-out passages")):
        for src in ("empty", "textbook"):
            x = L[f"{kind}_{src}"]
            rows.append((f"{kind}_{src}_nats", f"{label}, {src} state: loss",
                         x["nats"], "nats/token"))
            rows.append((f"{kind}_{src}_ppl", f"{label}, {src} state: perplexity",
                         x["ppl"], ""))
    return [{"key": k, "label": lb, "value": v, "unit": u} for k, lb, v, u in rows]


def format_table(res):
    """The table as text lines."""
    m, L = res["model"], res["loss"]
    ms = statistics.median(res["fork_first_token_ms"])
    st = res["state"]
    p = res["passages"]

    def loss(k):
        return f"{L[k]['nats']:6.3f} ({L[k]['ppl']:8.1f})"

    return [
        f"model {m['name']}: d_model {m['d_model']}, {m['n_layer']} layers, "
        f"vocab {m['vocab']}; backend {m['backend']}",
        "",
        f"  {'textbook tokens (' + str(len(res['chapters'])) + ' chapters, one append)':48}"
        f"{res['tokens']:>12}",
        f"  {'ingest (= replaying the book for every question)':48}"
        f"{res['ingest_s']:>10.2f} s",
        f"  {'fork the tagged state + first token (median)':48}{ms:>10.1f} ms",
        f"  {'ratio':48}{res['ingest_s'] * 1000 / ms:>10.0f} x",
        f"  {'state in the library: raw / stored':48}"
        f"{st['raw_bytes']:>12} / {st['stored_bytes']} bytes "
        f"({st['raw_bytes'] / max(st['stored_bytes'], 1):.2f}x)",
        "",
        f"  {'per-token loss, nats (perplexity)':40}{'empty state':>20}"
        f"{'textbook state':>22}",
        f"  {'(a) ' + str(p['quoted']) + ' passages quoted from the text':40}"
        f"{loss('quoted_empty'):>20}{loss('quoted_textbook'):>22}",
        f"  {'(b) ' + str(p['held_out']) + ' held-out passages':40}"
        f"{loss('held_out_empty'):>20}{loss('held_out_textbook'):>22}",
        f"  ({L['quoted_empty']['tokens']} and {L['held_out_empty']['tokens']} tokens; "
        "each passage's first token is not counted, having no prediction from the "
        "empty state)",
    ]


# ------------------------------------------------------------------ main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="build folder holding ssmd [the checkout's build/]")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"),
                    help="model directory [the checkout's models/demo]")
    ap.add_argument("--backend", default="cpu", choices=("cpu", "cuda", "auto"),
                    help="ssmd --backend [cpu]")
    ap.add_argument("--threads", type=int, help="ssmd --threads (CPU backend)")
    ap.add_argument("--chapters", type=int, default=0,
                    help="ingest only the first N chapters [all, with the appendix]")
    ap.add_argument("--chapter-chars", type=int, default=0,
                    help="cut each chapter after its last paragraph within N characters")
    ap.add_argument("--passages", type=int, default=16,
                    help="passages of each kind (quoted, held out) [16]")
    ap.add_argument("--seed", type=int, default=1, help="passage sample seed [1]")
    ap.add_argument("--gen-tokens", type=int, default=40,
                    help="tokens generated per question [40]")
    ap.add_argument("--store", help="state library to create (must not exist) "
                    "[a fresh one in a temporary directory, removed at the end]")
    ap.add_argument("--book", default=BOOK, help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the measurements as JSON to FILE")
    a = ap.parse_args(argv)
    if a.store and os.path.exists(a.store):
        ap.error(f"--store {a.store} exists: the walkthrough needs a fresh library")
    if a.chapters < 0 or a.chapter_chars < 0 or a.passages < 1 or a.gen_tokens < 1:
        ap.error("--chapters, --chapter-chars, --passages and --gen-tokens "
                 "must be positive")
    return a


def main(argv=None):
    a = parse_args(argv)
    tokenizer = os.path.join(a.model, "tokenizer.json")
    if not os.path.isfile(os.path.join(a.model, "config.json")):
        raise SystemExit(f"no model at {a.model} (give --model DIR)")
    if not os.path.isfile(tokenizer):
        raise SystemExit(f"{a.model} has no tokenizer.json: the walkthrough reads text")
    for tool in ("ssmd", "ssm-tokenize"):
        if not os.access(os.path.join(a.build, "daemon", tool), os.X_OK):
            raise SystemExit(f"{a.build}/daemon/{tool} not built "
                             f"(meson setup {a.build} && ninja -C {a.build})")
    mod = import_client(a.build)

    book = load_book(a.book, a.chapters or None, a.chapter_chars)
    held_out, quoted = choose_passages(book, a.passages, a.seed, a.build, tokenizer)
    print(f"The Debian Reference ({BOOK_PACKAGE}): {len(book)} chapters, "
          f"from '{book[0].title}' to '{book[-1].title}'.")
    print(f"Held out (not ingested): {len(held_out)} paragraphs sampled with seed "
          f"{a.seed} from chapters {', '.join(sorted({book[k].suffix for k, _, _ in held_out}))}; "
          f"{len(quoted)} other paragraphs are quoted passages, ingested as usual.")

    work = tempfile.mkdtemp(prefix="ssmd-textbook.", dir="/tmp")
    d = Daemon(a.build, a.model, a.backend, a.store, a.threads, work)
    try:
        d.start(mod)
        print(f"ssmd started on {d.store} ({a.backend} backend)\n")
        with d.client(mod) as c, d.client(mod) as m:
            res = walk(c, book, held_out, quoted, gen_tokens=a.gen_tokens,
                       monitor=m if sys.stdout.isatty() else None)
    except Exception:
        d.stop()
        sys.stderr.write(f"--- ssmd log ---\n{d.read_log()}")
        raise
    finally:
        status = d.stop()
        shutil.rmtree(work, ignore_errors=True)  # sockets, log, default store
    if status != 0:
        raise SystemExit(f"ssmd exited with status {status}")
    res["held_out_seed"] = a.seed
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print("\n== table\n")
    print("\n".join(format_table(res)))
    return res


if __name__ == "__main__":
    main()
