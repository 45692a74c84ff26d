"""saectl profile / feature / examples / explain-import / calibration / store-check against
numpy, from the definitions in src/sae/profile.h and DESIGN.md sec. 3:

- statistics of each feature's non-zero activations: count, density, mean, min, max exactly;
  quantiles q10..q90, q99 equal to numpy's default (linear) quantiles, hence rank error 0;
- buckets split at q20/q40/q60/q80, counts equal to numpy's; bucket examples inside their
  bucket, distinct, disjoint from the top examples;
- top examples exactly numpy's top N positions (value descending, lower row first on ties);
- every window: the corpus' tokens and the feature's codes at its rows, inside one document;
- negative windows: the feature is zero throughout;
- calibration: per-bucket mean, 95% CI (mean +- 1.96 s / sqrt(n), ddof 1) and Pearson r
  between bucket centre percentile and score, equal to numpy;
- crash safety: SIGKILL at random moments, the store checks, a rerun equals a clean run;
- end to end: a trained SAE's latent that best matches a true feature has top examples
  centred on that feature's trigger words.

Codes for the reference come from `saectl encode --dense` (held to numpy in test_engine.py),
over the same rows in one batch (--batch N), so values are bit-identical.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import make_ckpt
from conftest import run_ok, saectl_path
from profile_ref import LEVELS, NAMES, check_calibration, check_feature_stats

TOP, PER_BUCKET, NEG, WINDOW, SEED = 10, 7, 5, 9, 3


def load_corpus(d: Path):
    meta = json.loads((d / "dataset.json").read_text())
    parts = [load_file(str(d / s)) for s in meta["shards"]]
    x = np.concatenate([p["activations"] for p in parts])
    tok = np.concatenate([p["tokens"] for p in parts])
    return x, tok, meta.get("context_len", 0)


def as_json(saectl, *args):
    return json.loads(run_ok(saectl, *args).stdout)


class Profiled:
    """A synthetic corpus, a random-weight SAE, its dense codes and its profile."""

    def __init__(self, saectl, root: Path, arch: str, k=None, M=40):
        self.saectl, self.root = saectl, root
        self.corpus = root / "corpus"
        if not self.corpus.exists():
            run_ok(saectl, "synth", "--out", self.corpus, "--d-in", 16, "--features", 24,
                   "--tokens", 12000, "--seed", 7)
        self.x, self.tokens, self.ctx = load_corpus(self.corpus)
        rng = np.random.default_rng(11)
        self.M = M
        self.model = root / f"model_{arch}"
        cfg = make_ckpt.native_cfg(arch, 16, self.M, k=k)
        make_ckpt.write_native(self.model, cfg, make_ckpt.random_weights(rng, arch, 16, self.M))
        xin, out = root / "x.npy", root / f"codes_{arch}.safetensors"
        np.save(xin, self.x)
        run_ok(saectl, "encode", "--model", self.model, "--input", xin, "--output", out,
               "--dense")
        self.codes = load_file(str(out))["codes"]
        self.state = root / f"state_{arch}"
        self.id = f"m-{arch}"
        run_ok(saectl, *self.profile_args(self.state))

    def profile_args(self, state, batch=None):
        """One batch by default, so codes equal `encode --dense` of the whole corpus."""
        return ["profile", "--model", self.model, "--corpus", self.corpus, "--state", state,
                "--model-id", self.id, "--top", TOP, "--per-bucket", PER_BUCKET,
                "--negatives", NEG, "--window", WINDOW, "--seed", SEED,
                "--batch", batch or len(self.x)]

    def feature(self, f, state=None):
        return as_json(self.saectl, "feature", "--state", state or self.state, "--model-id",
                       self.id, "--feature", f)

    def examples(self, f, kind, bucket=None, state=None):
        extra = ["--bucket", bucket] if bucket is not None else []
        return as_json(self.saectl, "examples", "--state", state or self.state, "--model-id",
                       self.id, "--feature", f, "--kind", kind, *extra)["examples"]


@pytest.fixture(scope="module", params=[("topk", 6), ("standard", None)], ids=["topk", "relu"])
def prof(request, saectl, tmp_path_factory):
    arch, k = request.param
    return Profiled(saectl, tmp_path_factory.mktemp("profile"), arch, k)


def check_window(p: Profiled, f: int, e: dict):
    n = len(e["values"])
    row, start = e["row"], e["row"] - e["pos"] + e["start"]
    doc0 = e["doc"] * p.ctx
    assert e["doc"] == row // p.ctx and e["pos"] == row - doc0
    assert doc0 <= start <= row < start + n <= min(doc0 + p.ctx, len(p.x))
    assert n == min(WINDOW, p.ctx)
    assert e["token_ids"] == p.tokens[start:start + n].tolist()
    np.testing.assert_array_equal(np.float32(e["values"]), p.codes[start:start + n, f])
    assert e["max_index"] == int(np.argmax(e["values"])) and e["max_value"] == max(e["values"])
    assert e["value"] == e["values"][row - start]


def test_statistics_and_quantiles(prof):
    N = len(prof.x)
    for f in range(prof.M):
        nz = prof.codes[:, f][prof.codes[:, f] != 0]
        got = prof.feature(f)
        check_feature_stats(got, nz, N, f)
        if len(nz) == 0:
            continue
        srt = np.sort(nz)
        for name, p in zip(NAMES, LEVELS):
            q = got["quantiles"][name]
            # rank error: the target rank p (n - 1) against where q falls among the values
            lo, hi = np.searchsorted(srt, np.float32(q), "left"), np.searchsorted(srt, np.float32(q), "right")
            target = p * (len(nz) - 1)
            err = max(0.0, lo - 1 - target, target - hi) / len(nz)
            assert err < 0.005, (f, name, err)


def test_quantiles_through_histograms(prof, tmp_path):
    """--collect-max 50: features narrow by histogram rounds first; the same exact figures."""
    state = tmp_path / "state"
    run_ok(prof.saectl, *prof.profile_args(state), "--collect-max", 50)
    N = len(prof.x)
    narrowed = 0
    for f in range(prof.M):
        nz = prof.codes[:, f][prof.codes[:, f] != 0]
        got = prof.feature(f, state)
        check_feature_stats(got, nz, N, f)
        assert got == prof.feature(f), f
        narrowed += len(nz) > 50
    assert narrowed >= prof.M // 2


def test_small_memory_many_sweeps(saectl, tmp_path):
    """--memory-mb 1: the windows of 300 features take several sweeps over the spill (about
    48 features each): the same profile as one sweep, its windows equal to numpy's codes."""
    p = Profiled(saectl, tmp_path, "topk", 6, M=300)
    state = tmp_path / "state_small"
    run_ok(saectl, *p.profile_args(state), "--memory-mb", 1)
    for f in (0, 1, 47, 48, 49, 150, 298, 299):
        assert p.feature(f, state) == p.feature(f), f
        for kind in ("top", "negative"):
            got = p.examples(f, kind, state=state)
            assert got == p.examples(f, kind), (f, kind)
            for e in got:
                check_window(p, f, e)
        for b in range(5):
            assert p.examples(f, "bucket", b, state=state) == p.examples(f, "bucket", b), (f, b)


def test_top_examples_are_numpy_top_n(prof):
    for f in range(prof.M):
        col = prof.codes[:, f]
        rows = np.nonzero(col)[0]
        order = rows[np.lexsort((rows, -col[rows]))][:TOP]
        ex = prof.examples(f, "top")
        assert [e["row"] for e in ex] == order.tolist(), f
        vals = [e["value"] for e in ex]
        assert vals == sorted(vals, reverse=True)
        for e in ex:
            check_window(prof, f, e)


def test_bucket_and_negative_examples(prof):
    for f in range(prof.M):
        got = prof.feature(f)
        col = prof.codes[:, f]
        top_rows = {e["row"] for e in prof.examples(f, "top")}
        seen = set()
        for b in got["buckets"]:
            ex = prof.examples(f, "bucket", b["bucket"])
            in_bucket = [r for r in np.nonzero(col)[0] if (b["bucket"] == 0 or col[r] >= np.float32(b["lower"]))
                         and (b["bucket"] == 4 or col[r] < np.float32(b["upper"]))]
            assert len(ex) == min(PER_BUCKET, len(set(in_bucket) - top_rows)), (f, b)
            for e in ex:
                check_window(prof, f, e)
                v = np.float32(e["value"])
                assert v != 0 and e["row"] not in top_rows and e["row"] not in seen
                assert b["bucket"] == 0 or v >= np.float32(b["lower"])
                assert b["bucket"] == 4 or v < np.float32(b["upper"])
                seen.add(e["row"])
        neg = prof.examples(f, "negative")
        assert len(neg) <= NEG and (len(neg) == NEG or got["density"] > 0.5), f
        for e in neg:
            check_window(prof, f, e)
            assert not any(e["values"])


def test_explanations_and_calibration(prof, tmp_path):
    rng = np.random.default_rng(5)
    lines, pairs = [], []
    for f in range(prof.M):
        for b in range(5):
            score = float(np.clip(0.4 + 0.1 * b + 0.2 * rng.standard_normal(), 0, 1))
            lines.append({"model_id": prof.id, "feature": f, "bucket": b, "text": f"f{f} b{b}",
                          "scorer": "detection", "score": score, "judge": "llama"})
            pairs.append((b, score))
            if rng.uniform() < 0.3:
                lines.append({"model_id": prof.id, "feature": f, "bucket": b, "text": "x",
                              "scorer": "fuzz", "score": 0.0})
    path = tmp_path / "expl.jsonl"
    path.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    run_ok(prof.saectl, "explain-import", path, "--state", prof.state)
    got = as_json(prof.saectl, "calibration", "--state", prof.state, "--model-id", prof.id,
                  "--scorer", "detection")
    check_calibration(got, pairs)
    for row in got["buckets"]:
        assert row["n_features"] == prof.M
        assert row["centre_percentile"] == 10 + 20 * row["bucket"]
    feat = prof.feature(3)
    assert {(e["bucket"], e["scorer"]) for e in feat["explanations"]} >= {(i, "detection") for i in range(5)}
    run_ok(prof.saectl, "store-check", "--state", prof.state)
    # A bad line changes nothing and names the line.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(lines[0]) + "\n" + json.dumps({**lines[0], "bucket": 7}) + "\n")
    r = subprocess.run([prof.saectl, "explain-import", str(bad), "--state", str(prof.state)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "line 2" in r.stderr


def dump(p: Profiled, state, features):
    out = []
    for f in features:
        out.append(p.feature(f, state))
        out.append([p.examples(f, k, state=state) for k in ("top", "negative")])
        out.append([p.examples(f, "bucket", b, state=state) for b in range(5)])
    return out


def test_crash_safety(saectl, tmp_path):
    """SIGKILL at random moments: the store always checks; a rerun equals a clean run."""
    root = tmp_path
    run_ok(saectl, "synth", "--out", root / "corpus", "--d-in", 32, "--features", 64,
           "--tokens", 150000, "--seed", 9)
    p = Profiled.__new__(Profiled)
    p.saectl, p.corpus, p.id, p.M = saectl, root / "corpus", "crash", 256
    p.model = root / "model"
    make_ckpt.write_native(p.model, make_ckpt.native_cfg("topk", 32, 256, k=8),
                           make_ckpt.random_weights(np.random.default_rng(1), "topk", 32, 256))
    clean, state = root / "clean", root / "state"
    args = [str(a) for a in p.profile_args(clean, batch=4096)]
    t0 = time.monotonic()
    run_ok(saectl, *args)
    full = time.monotonic() - t0
    want = dump(p, clean, [0, 17, 255])
    rnd = random.Random(1234)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    for i in range(5):
        cmd = [saectl] + [a if a != str(clean) else str(state) for a in args]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(rnd.uniform(0.0, full * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run_ok(saectl, "store-check", "--state", state)
        if i % 2 == 0:      # every other time a rerun to the end (the others pile up kills)
            run_ok(saectl, *[a if a != str(clean) else str(state) for a in args])
            run_ok(saectl, "store-check", "--state", state)
            assert dump(p, state, [0, 17, 255]) == want


def test_end_to_end_trigger_words(saectl, tmp_path):
    run_ok(saectl, "synth", "--out", tmp_path / "c", "--d-in", 32, "--features", 64,
           "--tokens", 40000, "--seed", 2)
    run_ok(saectl, "train", "--arch", "topk", "--k", 4, "--d-sae", 128, "--steps", 1500, "--lr", "3e-3",
           "--batch", 512, "--normalize", "none", "--corpus", tmp_path / "c", "--out",
           tmp_path / "m", timeout=300)
    run_ok(saectl, "profile", "--model", tmp_path / "m", "--corpus", tmp_path / "c", "--state",
           tmp_path / "s", "--model-id", "e2e")
    truth = load_file(str(tmp_path / "c" / "truth.safetensors"))["dictionary"]
    words = json.loads((tmp_path / "c" / "truth.json").read_text())["features"]
    tokens = load_corpus(tmp_path / "c")[1]
    W = load_file(str(tmp_path / "m" / "sae_weights.safetensors"))["W_dec"]
    cos = (truth / np.linalg.norm(truth, axis=1, keepdims=True)) @ \
        (W / np.linalg.norm(W, axis=1, keepdims=True)).T
    checked = 0
    for g in np.argsort(-cos.max(axis=1))[:5]:     # the five best-matched true features
        latent = int(np.argmax(cos[g]))
        assert cos[g, latent] > 0.95
        top = as_json(saectl, "examples", "--state", tmp_path / "s", "--model-id", "e2e",
                      "--feature", latent, "--kind", "top")["examples"]
        assert len(top) == 32
        centred = [e["tokens"][e["row"] - (e["row"] - e["pos"] + e["start"])] for e in top]
        hits = sum(t in words[g]["words"] for t in centred)
        # The corpus token at a position is a trigger word of its largest-magnitude feature,
        # so a frequent feature's strongest positions are sometimes another's words: ask for
        # a large majority, and far above the words' share of all positions.
        base = np.isin(tokens, words[g]["token_ids"]).mean()
        print(f"feature {g} latent {latent} cos {cos[g, latent]:.3f}: {hits}/32 centred on "
              f"its words (base rate {base:.3f})")
        assert hits >= 0.75 * len(top) and hits / len(top) >= 3 * base, \
            (g, latent, centred, words[g]["words"])
        checked += 1
    assert checked == 5
