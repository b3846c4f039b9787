"""Fixtures of the Python end-to-end tests: a small model with a tokenizer
(made by ssm-mkmodel) and an ssmd daemon on private sockets and a private
state library, started by the test.

Run through meson (`meson test --suite python`), which sets SSMD_BUILD_ROOT,
SSMD_SHARED_FIXTURES and a PYTHONPATH holding the client package and its
generated protocol classes.
"""
import os
import signal
import subprocess
import tempfile
import time

import pytest

from ssmd_client import Client, SsmdError

BUILD = os.environ.get("SSMD_BUILD_ROOT", "")
FIXTURES = os.environ.get("SSMD_SHARED_FIXTURES", "")
SSMD = os.path.join(BUILD, "daemon", "ssmd")
MKMODEL = os.path.join(BUILD, "kernels", "ssm-mkmodel")
SSMCTL = os.path.join(BUILD, "client", "ssmctl")


def _die_with_parent():
    """In the daemon's child process: be killed when the test process dies,
    however it dies, so that no daemon outlives its test."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Daemon:
    """One ssmd process; restartable on the same store."""

    def __init__(self, tmp, name, model, extra=()):
        self.tmp, self.name, self.model, self.extra = tmp, name, model, list(extra)
        self.url = f"ipc://{tmp}/{name}.sock"
        self.events = f"ipc://{tmp}/{name}-events.sock"
        self.store = os.path.join(tmp, f"{name}.db")
        self.log = os.path.join(tmp, f"{name}.log")
        # Sockets the test does not name (the daemon's defaults) go in a run
        # directory of the daemon's own, so that daemons never collide.
        self.run_dir = os.path.join(tmp, f"{name}-run")
        os.makedirs(self.run_dir, exist_ok=True)
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSMD, "--model", self.model, "--store", self.store,
                 "--listen", self.url, "--events", self.events,
                 "--run-dir", self.run_dir, "--backend", "cpu", "--threads", "1",
                 *self.extra], stdout=log, stderr=log,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ssmd exited at start:\n{self.read_log()}")
            try:
                with self.client(timeout=5, connect_timeout=0.5) as c:
                    c.info()
                return
            except SsmdError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"ssmd did not answer within 60 s:\n{self.read_log()}")

    def stop(self):
        """SIGTERM; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            return -1

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def read_log(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def client(self, **kw):
        return Client(self.url, events_url=self.events, **kw)


def _require_binaries():
    for path in (SSMD, MKMODEL, SSMCTL):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} not built")


@pytest.fixture(scope="module")
def tmpdir_short():
    # ipc socket paths are limited to ~107 bytes: keep the directory short.
    with tempfile.TemporaryDirectory(prefix="ssmd-py.", dir="/tmp") as d:
        yield d


@pytest.fixture(scope="module")
def text_model(tmpdir_short):
    _require_binaries()
    out = os.path.join(tmpdir_short, "text-model")
    tokenizer = os.path.join(FIXTURES, "..", "models", "gpt-neox-20b-tokenizer.json")
    subprocess.run([MKMODEL, "--out", out, "--d-model", "64", "--n-layer", "2",
                    "--vocab", "50280", "--seed", "5", "--tokenizer", tokenizer],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def daemon(tmpdir_short, text_model):
    d = Daemon(tmpdir_short, "py", text_model)
    d.start()
    yield d
    status = d.stop()
    assert status == 0, f"ssmd exited with {status}:\n{d.read_log()}"


@pytest.fixture
def client(daemon):
    with daemon.client() as c:
        yield c
