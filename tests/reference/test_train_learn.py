"""test_train_learn.py - training recovers a known dictionary (the training issue's acceptance
numbers): on a noiseless synthetic corpus, topk and ptopk at k = 4 with --normalize none reach
fvu < 0.15 and mmcs > 0.8 (`saectl eval --json`: mmcs = mean over true features of the best
cosine with a learned decoder row).

The corpus (`saectl synth`): d_in 32, 64 features, noise 0, k-mean 2, zipf 0.5, 200k tokens.
  - k-mean 2 (mean active features per token) leaves k = 4 room: with k-mean 4 a token often
    has more than 4 active features, and even the true dictionary with an optimal 4-sparse
    code (OMP) leaves fvu ~0.045; here it leaves ~0.006, so the bar measures learning, not
    the corpus.
  - zipf 0.5 keeps the rarest feature's frequency at ~1.7% (zipf 1 would put the rarest of
    128 at ~0.6%), so every feature is seen a few thousand times in a short run.
  - 64 features in 32 dimensions is still superposition (2x overcomplete); d_sae = 128.
Training: 500 steps (ptopk 600) of 256 (ptopk 512) rows, lr 5e-3, default warmup (10%).
The recipe's lr 5e-4 is meant for runs of 10^5 steps of 8192 rows; in a short run it
under-trains (1500 steps of 1024 rows on a harder corpus gave fvu 0.19, mmcs 0.72 at 5e-4,
0.097 / 0.925 at 2e-3). Measured on the release build (several seeds): topk fvu ~0.06-0.07,
mmcs ~0.95-0.96; ptopk fvu ~0.075-0.08, mmcs ~0.94-0.97.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_saectl

CORPUS_FLAGS = ["--d-in", 32, "--features", 64, "--tokens", 200000, "--seed", 3, "--noise", 0,
                "--k-mean", 2, "--zipf", 0.5]
RUNS = {
    "topk": ["--steps", 500, "--batch", 256],
    "ptopk": ["--steps", 600, "--batch", 512],
}
FVU_MAX, MMCS_MIN = 0.15, 0.8


@pytest.fixture(scope="module")
def corpus(saectl, tmp_path_factory) -> Path:
    c = tmp_path_factory.mktemp("learn") / "corpus"
    r = run_saectl(saectl, "synth", "--out", c, *CORPUS_FLAGS)
    assert r.returncode == 0, r.describe()
    return c


@pytest.mark.parametrize("arch", list(RUNS))
def test_recovers_the_dictionary(saectl, corpus, work, arch):
    out = work / arch
    r = run_saectl(saectl, "train", "--arch", arch, "--k", 4, "--d-sae", 128, "--corpus", corpus,
                   "--out", out, "--lr", 5e-3, "--normalize", "none", "--seed", 0, *RUNS[arch],
                   timeout=900)
    assert r.returncode == 0, r.describe()
    r = run_saectl(saectl, "eval", "--model", out, "--corpus", corpus, "--truth", corpus,
                   "--tokens", 50000, "--json")
    assert r.returncode == 0, r.describe()
    m = json.loads(r.stdout)
    print(f"{arch}: {m}")
    assert m["fvu"] < FVU_MAX and m["mmcs"] > MMCS_MIN, \
        f"{arch}: fvu {m['fvu']:.4f} (want < {FVU_MAX}), mmcs {m['mmcs']:.4f} (want > " \
        f"{MMCS_MIN}), recovered {m['recovered']:.3f}, dead {m['dead']}"
    assert m["l0"] <= 4.0 + 1e-9
