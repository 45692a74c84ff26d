"""test_train_resume.py - an interrupted and resumed training run ends bit-identical to an
uninterrupted one.

Run A trains straight through. Run B trains the same (same flags, plus --checkpoint-every C)
and is interrupted some time after checkpoints/latest first appears:
  - SIGKILL: nothing is saved; `--resume` continues from the checkpoint `latest` names;
  - SIGTERM: the CLI writes a checkpoint at the current step, says how to resume, exits 1.
Then `saectl train --resume` runs B to the end. A's and B's sae_weights.safetensors and
cfg.json must be byte-identical, their train_state.safetensors must hold equal tensors (Adam
moments, last_fired) and equal state (step, tokens, theta, options, loader position), and
metrics.jsonl must list the same steps with the same losses (timing fields aside).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp

from conftest import CRASH_MARKERS, run_saectl

STEPS_PER_CKPT = 400        # C: long enough that a poll at 5 ms always lands inside a window
CKPTS = 4                   # the run is C * CKPTS steps


def _corpus(saectl, work: Path) -> Path:
    c = work / "corpus"
    r = run_saectl(saectl, "synth", "--out", c, "--d-in", 16, "--features", 48, "--tokens",
                   40000, "--seed", 11, "--noise", 0.05, "--k-mean", 3, "--context-len", 32)
    assert r.returncode == 0, r.describe()
    return c


def _train_args(arch, corpus, out):
    args = ["train", "--arch", arch, "--k", 4, "--d-sae", 64, "--corpus", corpus, "--out", out,
            "--steps", STEPS_PER_CKPT * CKPTS, "--batch", 128, "--lr", 3e-3, "--seed", 5,
            "--normalize", "layer_norm", "--shuffle-rows", 2048]
    if arch == "topk":
        args += ["--auxk", "--dead-window", 2000]
    return args


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _latest(out: Path):
    try:
        return (out / "checkpoints" / "latest").read_text().strip()
    except OSError:
        return None


def _interrupted_run(saectl, arch, corpus, out: Path, sig) -> tuple[int, str, str]:
    """Starts run B, waits for the first checkpoint, waits a little more (a random part of a
    checkpoint interval, so the interruption lands at various steps), sends sig. Returns
    (exit code, latest before the signal, stderr)."""
    argv = [saectl] + [str(a) for a in _train_args(arch, corpus, out)] + \
        ["--checkpoint-every", str(STEPS_PER_CKPT)]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=_env(), stdin=subprocess.DEVNULL)
    try:
        while _latest(out) is None:
            assert p.poll() is None, f"run B ended (exit {p.returncode}) before its first " \
                f"checkpoint:\n{p.stderr.read()[-3000:]}"
            assert time.monotonic() - t0 < 300, "no checkpoint after 300 s"
            time.sleep(0.005)
        first = time.monotonic() - t0
        # a random moment in the next interval (the first took `first` seconds)
        time.sleep(float(np.random.default_rng(zlib.crc32(arch.encode())).uniform(0, 0.5)) * first)
        latest = _latest(out)
        assert p.poll() is None, f"run B finished before it could be interrupted (exit " \
            f"{p.returncode}); make STEPS_PER_CKPT larger"
        p.send_signal(sig)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    for m in CRASH_MARKERS:
        assert m not in err, f"run B reported '{m}':\n{err[-3000:]}"
    return p.returncode, latest, err


def _state(path: Path):
    tensors = stnp.load_file(str(path))
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        meta = json.loads(fh.read(n))["__metadata__"]
    return tensors, json.loads(meta["state"])


def _metrics(out: Path):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("tokens_per_s", None)
        r.pop("eta_s", None)
    return rows


def _assert_same_run(a: Path, b: Path):
    for name in ("sae_weights.safetensors", "cfg.json"):
        ba, bb = (a / name).read_bytes(), (b / name).read_bytes()
        if ba != bb and name == "cfg.json":
            pytest.fail(f"cfg.json differs:\n{ba.decode()}\n{bb.decode()}")
        if ba != bb:
            wa, wb = stnp.load_file(str(a / name)), stnp.load_file(str(b / name))
            diff = {k: float(np.max(np.abs(wa[k].astype(np.float64) - wb[k]))) for k in wa
                    if k in wb and not np.array_equal(wa[k], wb[k])}
            pytest.fail(f"{name} differs between the uninterrupted and the resumed run "
                        f"(max |diff| per tensor: {diff})")
    ta, sa = _state(a / "train_state.safetensors")
    tb, sb = _state(b / "train_state.safetensors")
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), f"train_state tensor {k} differs"
    assert sa == sb, f"training state differs:\n{sa}\n{sb}"
    ma, mb = _metrics(a), _metrics(b)
    assert [r["step"] for r in mb] == [r["step"] for r in ma], "metrics.jsonl steps differ"
    assert ma == mb, "metrics.jsonl values differ"


@pytest.fixture(scope="module")
def corpus(saectl, tmp_path_factory):
    return _corpus(saectl, tmp_path_factory.mktemp("resume_corpus"))


@pytest.fixture(scope="module")
def straight_runs(saectl, corpus, tmp_path_factory):
    """Run A of each architecture, trained once for both variants."""
    runs = {}
    base = tmp_path_factory.mktemp("resume_a")
    for arch in ("ptopk", "topk"):
        out = base / arch
        r = run_saectl(saectl, *_train_args(arch, corpus, out), timeout=600)
        assert r.returncode == 0, r.describe()
        runs[arch] = out
    return runs


@pytest.mark.parametrize("arch", ["ptopk", "topk"])
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_resume_is_bit_exact(saectl, corpus, straight_runs, work, arch, how):
    out = work / "b"
    sig = signal.SIGKILL if how == "sigkill" else signal.SIGTERM
    rc, latest_before, err = _interrupted_run(saectl, arch, corpus, out, sig)
    latest = _latest(out)
    assert latest is not None and (out / "checkpoints" / latest).is_dir(), \
        f"checkpoints/latest ({latest}) does not name a checkpoint directory"
    stopped = int(latest.split("_")[-1])
    assert 0 < stopped < STEPS_PER_CKPT * CKPTS
    assert not (out / "sae_weights.safetensors").exists(), "the interrupted run left a final model"
    if how == "sigkill":
        assert rc == -signal.SIGKILL
    else:
        assert rc == 3, f"SIGTERM: exit {rc}, want 3 (stopped, resumable)\n{err[-2000:]}"
        assert "resume" in err, f"SIGTERM: stderr does not say how to resume:\n{err[-2000:]}"
        # the stop writes its own checkpoint, at the step it stopped (not a multiple of C
        # unless by chance), at or after the last periodic one
        assert stopped >= int(latest_before.split("_")[-1])
        # the checkpoint is a loadable model
        r = run_saectl(saectl, "inspect", "--model", out / "checkpoints" / latest)
        assert r.returncode == 0, r.describe()
    # resume, watching the progress lines: the run must go on from the checkpoint, not
    # start again (which would end identical too)
    rfd, wfd = os.pipe()
    argv = [saectl, "train", "--resume", "--corpus", str(corpus), "--out", str(out),
            "--progress-fd", str(wfd)]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=_env(), stdin=subprocess.DEVNULL, pass_fds=(wfd,))
    os.close(wfd)
    with os.fdopen(rfd) as fh:
        progress = [json.loads(line) for line in fh if line.strip()]
    err = p.communicate(timeout=600)[1]
    assert p.returncode == 0, f"$ {' '.join(argv)}\n-> {p.returncode}\n{err[-3000:]}"
    for m in CRASH_MARKERS:
        assert m not in err, f"the resumed run reported '{m}':\n{err[-3000:]}"
    assert progress and progress[0]["step"] == stopped + 1, \
        f"the resumed run started at step {progress[0]['step'] if progress else None}, " \
        f"want {stopped + 1} (after {latest})"
    assert progress[-1]["step"] == STEPS_PER_CKPT * CKPTS
    _assert_same_run(straight_runs[arch], out)
