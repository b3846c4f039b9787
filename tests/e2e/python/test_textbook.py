"""The textbook walkthrough (examples/textbook/walkthrough.py) in its reduced
form: the first two chapters of the Debian Reference, each cut at a paragraph
end within 8000 characters, three passages of each kind, on the CPU backend
with the demo model (models/demo; SSMD_TEXTBOOK_MODEL names another).

The script runs as a user runs it, keeping its state library (--store) and
writing its measurements (--json). A daemon restarted on that library then
checks what the script claims, by itself:
- a checkpoint after each chapter, tagged, at the session total of the
  chapters so far (token counts from ssm-tokenize, which gives Hugging
  Face's IDs), chained chapter to chapter, the last one carrying the book tag;
- the tagged state exports to the bytes it exported before the forks;
- forks are independent: two fresh forks score a text identically (and as the
  tag does), two forks that were told different things score it differently.
Scores are compared exactly: the same state on the same CPU backend gives
the same f32 logits, and a state of different tokens gives different ones.
Nothing about the model's quality or about times is asserted.
"""
import hashlib
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import BUILD, Daemon

SOURCE = os.environ.get("SSMD_SOURCE_ROOT",
                        os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(SOURCE, "examples", "textbook"))
import walkthrough  # noqa: E402

MODEL = os.environ.get("SSMD_TEXTBOOK_MODEL", os.path.join(SOURCE, "models", "demo"))
CHAPTERS, CHAPTER_CHARS, PASSAGES, SEED = 2, 8000, 3, 1
ROWS = {"tokens", "ingest_s", "fork_first_token_ms", "speedup", "state_raw_bytes",
        "state_stored_bytes"} | {
    f"{kind}_{src}_{unit}" for kind in ("quoted", "held_out")
    for src in ("empty", "textbook") for unit in ("nats", "ppl")}


@pytest.fixture(scope="module")
def walked(tmpdir_short):
    if not os.path.isfile(os.path.join(MODEL, "config.json")):
        pytest.skip(f"no demo model at {MODEL}: the walkthrough needs a trained model")
    assert os.path.exists(walkthrough.BOOK), \
        f"{walkthrough.BOOK} missing: apt-get install {walkthrough.BOOK_PACKAGE}"
    out = os.path.join(tmpdir_short, "textbook.json")
    store = os.path.join(tmpdir_short, "tb.db")
    run = subprocess.run(
        [sys.executable, os.path.join(SOURCE, "examples", "textbook", "walkthrough.py"),
         "--build", BUILD, "--model", MODEL, "--backend", "cpu",
         "--chapters", str(CHAPTERS), "--chapter-chars", str(CHAPTER_CHARS),
         "--passages", str(PASSAGES), "--seed", str(SEED), "--gen-tokens", "12",
         "--store", store, "--json", out],
        capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    with open(out) as f:
        res = json.load(f)
    d = Daemon(tmpdir_short, "tb", MODEL)  # the same store: tb.db
    d.start()
    yield res, run.stdout, d
    assert d.stop() == 0, d.read_log()


def test_checkpoints_per_chapter(walked):
    res, _, d = walked
    # The texts the script ingested: the same book cut, the same seeded
    # sample of held-out paragraphs left out.
    book = walkthrough.load_book(walkthrough.BOOK, CHAPTERS, CHAPTER_CHARS)
    tokenizer = os.path.join(MODEL, "tokenizer.json")
    held_out, _ = walkthrough.choose_passages(book, PASSAGES, SEED, BUILD, tokenizer)
    counts = walkthrough.count_tokens(BUILD, tokenizer,
                                      walkthrough.ingest_texts(book, held_out))
    assert len(res["chapters"]) == CHAPTERS
    with d.client() as c:
        total, parent = 0, ""
        for ch, n, row in zip(book, counts, res["chapters"]):
            total += n
            st = c.state(f"{walkthrough.TAG}/{ch.suffix}").info
            assert st.kind == "checkpoint"
            assert st.n_tokens == total, (ch.suffix, st.n_tokens, total)
            assert st.id == row["state"] and row["n_tokens"] == total
            assert f"{walkthrough.TAG}/{ch.suffix}" in st.tags
            if parent:
                assert st.parent == parent, "checkpoints do not chain"
            parent = st.id
        final = c.state(walkthrough.TAG).info
        assert final.id == parent and final.n_tokens == total == res["tokens"]
        assert walkthrough.TAG in final.tags
    assert res["passages"]["quoted"] == res["passages"]["held_out"] == PASSAGES


def test_tagged_state_unchanged(walked):
    res, _, d = walked
    t = res["tagged_state"]
    assert t["unchanged"] and t["sha256_before"] == t["sha256_after"]
    with d.client() as c:
        assert c.state(walkthrough.TAG).info.id == res["state"]["id"] == t["id_after"]
        assert hashlib.sha256(c.export(walkthrough.TAG)).hexdigest() == t["sha256_before"]


def test_forks_independent(walked):
    res, _, d = walked
    f = res["forks"]
    # In the script: each fork was told its own question and answer.
    assert len(set(f["probe_logprob"])) == len(f["probe_logprob"])
    assert f["probe_logprob_fresh"] == [f["probe_logprob_tag"]] * 2
    assert f["first_question_again_same"]
    # Again here, after the restart: forks of the tag start equal and go
    # their own ways.
    probe = " Packages are installed with apt."
    with d.client() as c:
        a, b = c.fork(walkthrough.TAG, 2)
        assert c.score(a, text=probe).logprob == c.score(b, text=probe).logprob \
            == c.score(walkthrough.TAG, text=probe).logprob
        c.append(a, text="\nQuestion: what is a package?\nAnswer:")
        c.append(b, text="\nQuestion: what is a kernel?\nAnswer:")
        sa, sb = c.score(a, text=probe), c.score(b, text=probe)
        assert sa.logprob != sb.logprob
        assert list(sa.tokens) == list(sb.tokens)
        for s in (a, b):
            c.close_session(s)


def test_table_rows(walked):
    res, stdout, _ = walked
    rows = {r["key"]: r["value"] for r in res["rows"]}
    assert set(rows) == ROWS
    assert all(math.isfinite(v) for v in rows.values())
    for v in res["loss"].values():
        assert math.isfinite(v["nats"]) and v["nats"] >= 0 and v["tokens"] > 0
    assert rows["state_raw_bytes"] > 0 and rows["state_stored_bytes"] > 0
    # The table is printed last, every line of it.
    table = walkthrough.format_table(res)
    assert stdout.rstrip("\n").endswith("\n".join(table))
    assert len(res["forks"]["replies"]) == len(walkthrough.QUESTIONS)
