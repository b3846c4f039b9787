"""ssmctl submit and result against a running ssmd: jobs pushed to the jobs
endpoint (open, append of text or a file, snapshot with a tag) and their
replies fetched by request ID, errors of a job, unknown request IDs and
usage errors.
"""
import json
import os
import subprocess

from conftest import SSMCTL

PROMPT = "The ferry left at dawn, loaded with crates of apples and one goat."


def ctl(daemon, *args):
    env = dict(os.environ, SSMD_URL=daemon.url, SSMD_EVENTS_URL=daemon.events)
    return subprocess.run([SSMCTL, *args], capture_output=True, text=True,
                          env=env, timeout=120)


def submit(daemon, *args):
    """Pushes a job; returns (request ID, client ID)."""
    p = ctl(daemon, "submit", *args)
    assert p.returncode == 0, p.stderr
    rid, cid = p.stdout.split()
    return rid, cid


def result(daemon, rid, cid):
    """The job's reply as JSON (waits while it runs). ssmctl submit returns
    once the daemon has the job, so asking right after never hears
    "unknown"."""
    p = ctl(daemon, "--json", "result", rid, "--client", cid)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_submit_result(daemon, tmp_path):
    s = ctl(daemon, "open").stdout.strip()
    a = result(daemon, *submit(daemon, "append", s, "--text", PROMPT))
    assert a["appended"] > 0 and a["n_tokens"] == a["appended"]

    snap = result(daemon, *submit(daemon, "snapshot", s, "--tag", "ctl/job"))
    st = json.loads(ctl(daemon, "--json", "state", "ctl/job").stdout.splitlines()[0])
    assert snap["state_id"] == st["id"] and st["n_tokens"] == a["n_tokens"]

    opened = result(daemon, *submit(daemon, "open", "--from", "ctl/job"))
    assert len(opened["sessions"]) == 1
    # The human form prints the new session's ID alone.
    rid, cid = submit(daemon, "open", "--from", "ctl/job")
    human = ctl(daemon, "result", rid, "--client", cid)
    assert human.returncode == 0 and human.stdout.strip().startswith("s-")

    # A file goes whole as one job: the same tokens as a blocking append.
    f = tmp_path / "note.txt"
    f.write_text(PROMPT + "\nSecond line of the note.\n")
    s2 = ctl(daemon, "open").stdout.strip()
    job = result(daemon, *submit(daemon, "append", s2, "--file", str(f)))
    s3 = ctl(daemon, "open").stdout.strip()
    blocking = json.loads(ctl(daemon, "--json", "append", s3, "--file",
                              str(f)).stdout)
    assert job["appended"] == blocking["appended"] > 0


def test_submit_errors(daemon):
    # The job fails when it runs: result exits 1 with the daemon's message.
    rid, cid = submit(daemon, "append", "s-0123456789abcdef0123456789abcdef",
                      "--tokens", "1,2")
    p = ctl(daemon, "result", rid, "--client", cid)
    assert p.returncode == 1 and "s-0123456789abcdef0123456789abcdef" in p.stderr
    p = ctl(daemon, "result", "never-submitted")
    assert p.returncode == 1 and "unknown" in p.stderr
    # Usage errors push nothing.
    assert ctl(daemon, "submit", "frobnicate").returncode == 2
    assert ctl(daemon, "submit", "append", "s-x", "--tag", "t",
               "--tokens", "1").returncode == 2
    assert ctl(daemon, "submit", "append", "s-x").returncode == 2
    assert ctl(daemon, "submit", "open", "s-x").returncode == 2
    assert ctl(daemon, "result").returncode == 2
