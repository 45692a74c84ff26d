"""test_train_bad_input.py - `saectl train` on broken corpora and impossible command lines.

Each case must end with exit code 1 (bad data) or 2 (bad command line), a message on stderr
that names the problem (the flag, or the file and what is wrong with it), no crash and no
sanitizer report (run_saectl checks both), and no final model in the output directory.

Mid-run NaNs: the loader streams the corpus in shuffle rounds; each epoch reads the shuffled
full chunks first and the tail (n_rows mod chunk_rows rows) last (src/sae/dataset.h), so a
NaN in the corpus's last row is first read at the end of epoch 0, after some checkpoints. The
run must stop with an error naming the shard and the row, `checkpoints/latest` must name the
last checkpoint written before, and that checkpoint must load (inspect, eval).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp

from conftest import run_saectl

D = 16


def write_corpus(root: Path, x: np.ndarray, *, d_in=None, name="shard_00000.safetensors") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    stnp.save_file({"activations": np.ascontiguousarray(x, dtype=np.float32)},
                   str(root / name))
    manifest = {"d_in": int(x.shape[1] if d_in is None else d_in), "dtype": "float32",
                "context_len": 16, "shards": [name]}
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root


def clean(rng, n=2000) -> np.ndarray:
    return rng.standard_normal((n, D)).astype(np.float32)


def train(saectl, corpus, out, *extra, defaults=True):
    args = ["train", "--corpus", corpus, "--out", out]
    if defaults:
        args += ["--arch", "topk", "--k", 4, "--d-sae", 32, "--steps", 20, "--batch", 32]
    return run_saectl(saectl, *args, *extra, timeout=300)


def assert_refused(r, out: Path, *needles, codes=(1, 2)):
    assert r.returncode in codes, f"exit {r.returncode}, want one of {codes}\n{r.describe()}"
    err = r.stderr.strip()
    assert err, f"no message on stderr\n{r.describe()}"
    for n in needles:
        assert re.search(n, err, re.I), f"stderr does not mention /{n}/\n{r.describe()}"
    assert not (out / "sae_weights.safetensors").exists(), "a final model was written"


# ----------------------------------------------------------------------------- corpora

def test_manifest_d_in_disagrees_with_shard(saectl, work, rng):
    c = write_corpus(work / "c", clean(rng), d_in=D + 4)
    r = train(saectl, c, work / "out")
    assert_refused(r, work / "out", r"shard_00000|dataset\.json", r"d_in|\b16\b|\b20\b")


def test_truncated_shard(saectl, work, rng):
    c = write_corpus(work / "c", clean(rng))
    shard = c / "shard_00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) - 1000])
    r = train(saectl, c, work / "out")
    assert_refused(r, work / "out", r"shard_00000", r"truncat|short|size|end|bytes|offset")


def test_nan_at_the_start(saectl, work, rng):
    x = clean(rng, 1000)
    x[500, 3] = np.nan
    c = write_corpus(work / "c", x)
    out = work / "out"
    r = train(saectl, c, out, "--checkpoint-every", 5)
    assert_refused(r, out, r"shard_00000", r"non-finite|nan", r"\b500\b")
    assert not (out / "checkpoints" / "latest").exists(), "a checkpoint was written before " \
        "the first batch was read"


def test_nan_mid_run_keeps_the_last_checkpoint(saectl, work, rng):
    # 10005 rows, batch 64: shuffle rounds of 32 x 64 = 2048 rows, chunks of 2048 / 256 = 8
    # rows, a tail of 5 rows read last in epoch 0: the NaN row is stream row 10004, in round 4,
    # read when step 128 asks for it. Checkpoints every 50 steps: 50 and 100 exist by then.
    x = clean(rng, 10005)
    x[-1, 0] = np.nan
    c = write_corpus(work / "c", x)
    out = work / "out"
    r = run_saectl(saectl, "train", "--corpus", c, "--out", out, "--arch", "ptopk", "--k", 4,
                   "--d-sae", 32, "--steps", 400, "--batch", 64, "--checkpoint-every", 50,
                   timeout=300)
    assert_refused(r, out, r"shard_00000", r"non-finite|nan", r"\b10004\b")
    latest = (out / "checkpoints" / "latest").read_text().strip()
    step = int(latest.split("_")[-1])
    assert 50 <= step < 400 and step % 50 == 0, f"latest names {latest}"
    ckpt = out / "checkpoints" / latest
    r = run_saectl(saectl, "inspect", "--model", ckpt)
    assert r.returncode == 0, r.describe()
    clean_c = write_corpus(work / "clean", clean(rng, 512))
    r = run_saectl(saectl, "eval", "--model", ckpt, "--corpus", clean_c, "--json")
    assert r.returncode == 0, r.describe()
    assert np.isfinite(json.loads(r.stdout)["fvu"])
    # the training state there is whole: resuming reaches the same NaN and stops the same way
    r = run_saectl(saectl, "train", "--resume", "--corpus", c, "--out", out, timeout=300)
    assert_refused(r, out, r"non-finite|nan", r"\b10004\b")
    assert (out / "checkpoints" / "latest").read_text().strip() == latest


def test_resume_against_a_corpus_of_another_width(saectl, work, rng):
    c = write_corpus(work / "c", clean(rng))
    out = work / "out"
    r = train(saectl, c, out, "--checkpoint-every", 5, "--steps", 6)
    assert r.returncode == 0, r.describe()
    (out / "sae_weights.safetensors").unlink()
    other = write_corpus(work / "c8", rng.standard_normal((500, 8)).astype(np.float32))
    r = run_saectl(saectl, "train", "--resume", "--corpus", other, "--out", out)
    assert_refused(r, out, r"d_in")


# ----------------------------------------------------------------------------- flags

FLAG_CASES = {
    "k_above_d_sae": (["--k", 40], [r"--k"]),
    "auxk_with_ptopk": (["--arch", "ptopk", "--auxk"], [r"--auxk"]),
    "no_magnitude_with_topk": (["--no-magnitude"], [r"--no-magnitude"]),
    "sigmoid_gate_with_gated": (["--arch", "gated", "--sigmoid-gate"], [r"--sigmoid-gate"]),
    "steps_0": (["--steps", 0], [r"--steps"]),
    "warmup_equals_steps": (["--warmup", 20], [r"--warmup"]),
    "warmup_above_steps": (["--warmup", 50], [r"--warmup"]),
    "unknown_arch": (["--arch", "jumprelu"], [r"--arch"]),
    "batch_0": (["--batch", 0], [r"--batch"]),
    "lr_0": (["--lr", 0], [r"--lr"]),
    # negative values used to be taken for "not given" and replaced by the defaults
    "steps_negative": (["--steps", -5], [r"--steps"]),
    "lr_negative": (["--lr", -1], [r"--lr"]),
    "lr_nan": (["--lr", "nan"], [r"--lr"]),
    "batch_negative": (["--batch", -2], [r"--batch"]),
    "k_negative": (["--k", -3], [r"--k"]),
    "d_sae_negative": (["--d-sae", -4], [r"--d-sae"]),
    "seed_negative": (["--seed", -1], [r"--seed"]),
    "normalize_unknown": (["--normalize", "zscore"], [r"--normalize"]),
    "steps_not_a_number": (["--steps", "ten"], [r"--steps"]),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_impossible_flags(saectl, work, rng, case):
    extra, needles = FLAG_CASES[case]
    c = write_corpus(work / "c", clean(rng, 256))
    out = work / "out"
    r = train(saectl, c, out, *extra)
    assert_refused(r, out, *needles)


def test_resume_with_nothing_to_resume(saectl, work, rng):
    c = write_corpus(work / "c", clean(rng, 256))
    out = work / "out"
    r = run_saectl(saectl, "train", "--resume", "--corpus", c, "--out", out)
    assert_refused(r, out, r"resume")
    out.mkdir(exist_ok=True)
    r = run_saectl(saectl, "train", "--resume", "--corpus", c, "--out", out)
    assert_refused(r, out, r"resume")


def test_missing_d_sae(saectl, work, rng):
    c = write_corpus(work / "c", clean(rng, 256))
    r = run_saectl(saectl, "train", "--arch", "topk", "--k", 4, "--corpus", c, "--out",
                   work / "out")
    assert_refused(r, work / "out", r"--d-sae", codes=(2,))


# ----------------------------------------------------------------------------- devices

def test_device_cuda_without_a_gpu_is_refused(saectl, work, rng):
    """CI has no GPU (and its build may have no CUDA): --device cuda must fail with a
    clear reason; a bad device string is refused too."""
    corpus = write_corpus(work / "c", clean(rng))
    r = train(saectl, corpus, work / "o1", "--device", "cuda")
    assert_refused(r, work / "o1", r"cuda", r"no CUDA support|not usable|no CUDA device|driver")
    r = train(saectl, corpus, work / "o2", "--device", "gpu0")
    assert_refused(r, work / "o2", r"unknown device")


def test_device_auto_falls_back_to_the_cpu(saectl, work, rng):
    corpus = write_corpus(work / "c", clean(rng))
    r = train(saectl, corpus, work / "o", "--device", "auto")
    assert r.returncode == 0, r.describe()
    assert (work / "o" / "sae_weights.safetensors").exists()
    assert re.search(r"training on the CPU|on the CPU", r.stderr), r.describe()
