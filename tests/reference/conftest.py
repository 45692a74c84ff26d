"""Shared fixtures for the reference tests: where saectl is, how to run it, rng, tmp dirs.

The binary is $SAECTL, else build/src/cli/saectl under the repository root (found from
this file's location). A missing binary is a failure, not a skip: these tests exist to
hold the engine to the reference.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

CRASH_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                 "ThreadSanitizer", "runtime error:", "Segmentation fault", "core dumped")


def saectl_path() -> Path:
    env = os.environ.get("SAECTL")
    if env:
        return Path(env)
    return REPO / "build" / "src" / "cli" / "saectl"


@pytest.fixture(scope="session")
def saectl() -> str:
    p = saectl_path()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"saectl not found at {p} (build with `meson setup build && ninja -C "
                    f"build`, or set SAECTL)", pytrace=False)
    return str(p)


class Result:
    def __init__(self, args, proc):
        self.args = args
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def cmd(self) -> str:
        return " ".join(str(a) for a in self.args)

    def describe(self) -> str:
        return (f"$ {self.cmd()}\n-> exit {self.returncode}\n--- stderr ---\n"
                f"{self.stderr[-4000:]}\n--- stdout ---\n{self.stdout[-2000:]}")


def run_saectl(saectl: str, *args, timeout: float = 120) -> Result:
    """Runs saectl; asserts it did not crash (signal, sanitizer report) whatever the exit."""
    argv = [saectl] + [str(a) for a in args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    r = Result(argv, proc)
    assert proc.returncode >= 0, f"saectl was killed by signal {-proc.returncode}\n{r.describe()}"
    for m in CRASH_MARKERS:
        assert m not in proc.stderr, f"saectl reported '{m}'\n{r.describe()}"
    return r


def run_ok(saectl: str, *args, timeout: float = 120) -> Result:
    r = run_saectl(saectl, *args, timeout=timeout)
    assert r.returncode == 0, f"saectl failed\n{r.describe()}"
    return r


@pytest.fixture
def run(saectl):
    """run(*args) -> Result, asserting no crash."""
    return lambda *a, **kw: run_saectl(saectl, *a, **kw)


@pytest.fixture
def run_success(saectl):
    """run_success(*args) -> Result, asserting exit 0."""
    return lambda *a, **kw: run_ok(saectl, *a, **kw)


def seed_of(text: str) -> int:
    return zlib.crc32(text.encode())


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's name, so every case is reproducible alone.
    SAE_REF_SEED=N varies every case (for soak runs over many random cases)."""
    extra = int(os.environ.get("SAE_REF_SEED", "0"))
    return np.random.default_rng([seed_of(request.node.name), extra])


@pytest.fixture
def work(tmp_path) -> Path:
    return tmp_path
