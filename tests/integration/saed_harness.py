"""The integration tests' harness: the real saed on a free loopback port.

The binary is $SAED, else build/src/server/saed under the repository root (CI points SAED
at the ASan build); it runs with --device $SAED_DEVICE, cpu unless set (tests/gpu/run.sh
sets cuda). Checkpoints are written with the real `safetensors` package by
tests/reference/make_ckpt.py, and results are held to tests/reference/sae_ref.py.
Each daemon's stderr is checked for sanitizer reports when it stops, and it must exit 0
on SIGTERM.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))

import make_ckpt as mk  # noqa: E402

TOKEN = "integration-test-admin-token-0123456789"
D_IN, D_SAE, K = 32, 128, 8
ARCHS = {"topk": K, "standard": None, "ptopk": K, "gated": None}
CRASH_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                 "runtime error:", "Segmentation fault")


BUILT_SAED = REPO / "build" / "src" / "server" / "saed"


def saed_path() -> Path:
    return Path(os.environ.get("SAED") or BUILT_SAED)


def plain_saed_path() -> Path:
    """A build without sanitizers, for what only glibc's malloc shows (RSS): $SAED_PLAIN,
    else build/src/server/saed (CI builds it before the ASan one)."""
    return Path(os.environ.get("SAED_PLAIN") or BUILT_SAED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One saed process; request() talks HTTP to it."""

    def __init__(self, state: Path, roots, models=(), extra=(), env=None, exe=None):
        exe = exe or saed_path()
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            pytest.fail(f"saed not found at {exe} (build it, or set SAED)", pytrace=False)
        self.port = free_port()
        self.state = state
        self.log_path = state.parent / f"saed-{self.port}.log"
        argv = [str(exe), "--listen", f"127.0.0.1:{self.port}", "--state-dir", str(state),
                "--threads", "4", "--device", os.environ.get("SAED_DEVICE", "cpu")]
        for r in roots:
            argv += ["--model-root", str(r)]
        for mid, path in models:
            argv += ["--model", f"{mid}={path}"]
        argv += list(extra)
        e = dict(os.environ)
        e.setdefault("OMP_NUM_THREADS", "2")
        e["SAED_ADMIN_TOKEN"] = TOKEN
        e.update(env or {})
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=e,
                                     stdin=subprocess.DEVNULL)

    def wait_ready(self, want=200, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"saed exited {self.proc.returncode}\n{self.output()}")
            try:
                st, _, _ = self.request("GET", "/readyz", timeout=1)
                if st == want:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"saed not ready in {timeout}s\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, method, path, body=None, headers=None, timeout=30):
        h = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
            h.setdefault("Content-Type", "application/json")
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None, want=200):
        st, hd, data = self.request(method, path, body, headers)
        assert st == want, f"{method} {path}: {st} {data[:500]!r}, want {want}"
        return json.loads(data) if data else None

    def admin(self, method, path, body=None, want=200):
        return self.json(method, path, body, {"Authorization": f"Bearer {TOKEN}"}, want)

    def stop(self, check=True):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"saed did not stop on SIGTERM\n{self.output()}")
        out = self.output()
        self.log.close()
        if check:
            assert self.proc.returncode == 0, f"saed exited {self.proc.returncode}\n{out[-4000:]}"
            for m in CRASH_MARKERS:
                assert m not in out, f"saed reported '{m}'\n{out[-6000:]}"
        return out


def write_models(root: Path, seed=1234):
    """One checkpoint per architecture; returns {arch: (dir, cfg, weights)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for arch, k in ARCHS.items():
        cfg = mk.native_cfg(arch, D_IN, D_SAE, k=k, beta_final=0.5, norm="none")
        w = mk.random_weights(rng, arch, D_IN, D_SAE)
        d = root / arch
        stored = mk.write_native(d, cfg, w)
        out[arch] = (d, cfg, stored)
    return out
