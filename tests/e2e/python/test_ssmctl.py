"""ssmctl against a running ssmd: every command, human and --json output,
exit status and messages on failure, and a large file appended in pieces
giving exactly the tokens of one append.
"""
import json
import os
import subprocess

import pytest

from conftest import SSMCTL

PROMPT = "The old map showed a road where there was now only forest."


def ctl(daemon, *args, check=True):
    env = dict(os.environ, SSMD_URL=daemon.url, SSMD_EVENTS_URL=daemon.events)
    p = subprocess.run([SSMCTL, *args], capture_output=True, text=True, env=env,
                       timeout=120)
    if check:
        assert p.returncode == 0, f"ssmctl {' '.join(args)}: {p.stderr}"
    return p


def ctl_json(daemon, *args):
    out = ctl(daemon, "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_info(daemon):
    (info,) = ctl_json(daemon, "info")
    assert info["vocab_size"] == 50280 and info["has_tokenizer"] is True
    human = ctl(daemon, "info").stdout
    assert info["model_fingerprint"] in human


def test_session_commands(daemon):
    s = ctl(daemon, "open").stdout.strip()
    assert s
    (a,) = ctl_json(daemon, "append", s, "--text", PROMPT)
    assert a["appended"] > 0 and a["n_tokens"] == a["appended"]
    (t,) = ctl_json(daemon, "append", s, "--tokens", "11,12,13")
    assert t["n_tokens"] == a["n_tokens"] + 3

    sid = ctl(daemon, "snapshot", s, "--tag", "ctl/demo", "--label", "demo").stdout.strip()
    (st,) = ctl_json(daemon, "state", "ctl/demo")
    assert st["id"] == sid and st["n_tokens"] == t["n_tokens"]
    assert "ctl/demo" in st["tags"] and st["label"] == "demo"
    assert sid in ctl(daemon, "state", sid).stdout

    # Human generate streams the text; --json returns the whole result: a
    # fork of the same state must give the same 20 greedy tokens either way.
    f1, f2 = ctl(daemon, "fork", sid, "-n", "2").stdout.split()
    (g,) = ctl_json(daemon, "generate", f1, "--max-tokens", "20")
    assert len(g["tokens"]) == 20 and g["finish"] == "length"
    human = ctl(daemon, "generate", f2, "--max-tokens", "20").stdout
    assert human == g["text"] + "\n"

    (g2,) = ctl_json(daemon, "generate", s, "--max-tokens", "8", "--temperature",
                     "0.7", "--top-k", "50", "--top-p", "0.9", "--seed", "4",
                     "--snapshot")
    assert g2["state_id"] and g2["n_tokens"] == t["n_tokens"] + 8

    listed = ctl_json(daemon, "states", "--tag", "ctl/")
    assert [x["id"] for x in listed] == [sid]
    mine = ctl_json(daemon, "states", "--session", s)
    assert {x["id"] for x in mine} == {sid, g2["state_id"]}
    assert all(json.loads(x["metadata"])["session"] == s for x in mine)
    assert sid in ctl(daemon, "states").stdout

    (tg,) = ctl_json(daemon, "tag", "ctl/latest", g2["state_id"])
    assert tg["state_id"] == g2["state_id"]
    ctl(daemon, "untag", "ctl/latest")
    assert ctl(daemon, "state", "ctl/latest", check=False).returncode == 1

    (c,) = ctl_json(daemon, "close", s, "--snapshot")
    assert c["state_id"]
    ctl(daemon, "close", f1)

    (stats,) = ctl_json(daemon, "stats")
    assert stats["store_states"] >= 2  # close may reuse an unchanged state
    assert "sessions" in ctl(daemon, "stats").stdout


def test_export_import_rm(daemon, tmp_path):
    s = ctl(daemon, "open").stdout.strip()
    ctl(daemon, "append", s, "--tokens", "1,2,3,4")
    sid = ctl(daemon, "snapshot", s).stdout.strip()
    path = tmp_path / "state.ssmx"
    ctl(daemon, "export", sid, str(path))
    assert path.stat().st_size > 0
    new = ctl(daemon, "import", str(path), "--tag", "ctl/imported").stdout.strip()
    (st,) = ctl_json(daemon, "state", "ctl/imported")
    assert st["id"] == new and st["n_tokens"] == 4
    ctl(daemon, "rm", sid)
    p = ctl(daemon, "state", sid, check=False)
    assert p.returncode == 1 and "ssmctl: state:" in p.stderr


def test_failures(daemon):
    p = ctl(daemon, "append", "s-nope", "--tokens", "1", check=False)
    assert p.returncode == 1 and p.stderr.startswith("ssmctl: append:")
    assert ctl(daemon, "append", "s-nope", check=False).returncode == 2
    assert ctl(daemon, "append", "x", "--tokens", "1,a", check=False).returncode == 2
    assert ctl(daemon, "frobnicate", check=False).returncode == 2
    s = ctl(daemon, "open").stdout.strip()
    p = ctl(daemon, "generate", s, check=False)
    assert p.returncode == 1 and p.stderr.startswith("ssmctl: generate:")
    env = dict(os.environ, SSMD_URL="ipc:///nonexistent/ssmd.sock")
    p = subprocess.run([SSMCTL, "info"], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "ssmd running" in p.stderr


def test_large_file_in_pieces(daemon, tmp_path):
    # ~300 KB of text (more than one piece): ssmctl sends it in pieces cut after a newline followed
    # by a non-space character; the pieces must tokenize exactly like the
    # whole (same count, same continuation).
    lines = [f"Line {i}: the quick brown fox jumps over the lazy dog, {i * 7} times."
             for i in range(4100)]
    text = "\n".join(lines) + "\n"
    path = tmp_path / "big.txt"
    path.write_text(text)
    a = ctl(daemon, "open").stdout.strip()
    (r,) = ctl_json(daemon, "append", a, "--file", str(path))
    with daemon.client() as c:
        b = c.open()
        whole = c.append(b, text=text)
        assert r["n_tokens"] == whole.session_tokens
        assert list(c.generate(a, 5).tokens) == list(c.generate(b, 5).tokens)


def test_checkpoints_merge_score(daemon):
    s = ctl(daemon, "open").stdout.strip()
    (a,) = ctl_json(daemon, "append", s, "--tokens", ",".join(str(i) for i in range(1, 21)),
                    "--checkpoint-every", "8", "--boundaries", "3")
    assert [c["n_tokens"] for c in a["checkpoints"]] == [3, 8, 16]
    for bad in ("0,3", "-1", "3,x"):  # offsets are positive token counts
        r = ctl(daemon, "append", s, "--tokens", "1,2,3", "--boundaries", bad, check=False)
        assert r.returncode == 2 and "bad --boundaries" in r.stderr
    human = ctl(daemon, "append", s, "--message", "Hi.", "--message", " Bye.").stdout
    assert human.count("checkpoint ") == 2

    ids = [c["id"] for c in a["checkpoints"]]
    out = ctl(daemon, "merge", ids[0], ids[1], "--mode", "replay", "--open").stdout.split()
    assert len(out) == 2  # the state ID, then the opened session
    (st,) = ctl_json(daemon, "state", out[0])
    assert st["kind"] == "merge" and st["n_tokens"] == 3 + 8
    (m,) = ctl_json(daemon, "merge", ids[0], ids[1], "--weights", "0.25,0.75",
                    "--tag", "ctl/soup")
    assert m["state_id"] and m["n_tokens"] == 7  # 0.25*3 + 0.75*8 = 6.75
    assert ctl(daemon, "merge", ids[0], check=False).returncode == 2

    (sc,) = ctl_json(daemon, "score", "ctl/soup", "--tokens", "5,6,7")
    assert len(sc["token_logprobs"]) == 3 and sc["unscored"] == 0
    assert abs(sc["logprob"] - sum(sc["token_logprobs"])) < 1e-3
    assert "perplexity" in ctl(daemon, "score", s, "--text", "Hello.").stdout
