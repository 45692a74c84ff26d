"""saectl synth against its own documented generative model (src/sae/synth.c).

Each corpus is read back with the `safetensors` package, independently of our reader, and
checked for: the corpus format (dataset.json, shards, vocab.json), the ground truth
(unit-norm dictionary, Zipf-skewed frequencies summing to k_mean, consistent pairs and
truth.json), the activations' statistics against the closed-form moments of the model, the
rows where exactly one feature fires (they are that feature's direction times a lognormal
magnitude, and their token is one of its trigger words), determinism (seed, shard layout,
dtype), and flag validation.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

N_FILLER = 64
WORDS = 3
FOLLOW = 0.8


class Corpus:
    def __init__(self, d: Path):
        self.dir = d
        self.meta = json.loads((d / "dataset.json").read_text())
        acts, toks = [], []
        for name in self.meta["shards"]:
            s = load_file(str(d / name))
            assert set(s) == {"activations", "tokens"}, f"{name}: tensors {sorted(s)}"
            acts.append(s["activations"])
            toks.append(s["tokens"])
        self.x = np.concatenate(acts)
        self.tokens = np.concatenate(toks)
        self.shard_rows = [a.shape[0] for a in acts]
        self.truth = load_file(str(d / "truth.safetensors"))
        self.truth_json = json.loads((d / "truth.json").read_text())
        self.vocab = json.loads((d / "vocab.json").read_text())


def synth(run_success, out: Path, *flags) -> Corpus:
    run_success("synth", "--out", out, *flags)
    return Corpus(out)


@pytest.fixture(scope="module")
def base(saectl, tmp_path_factory):
    """D=32, G=128, 60k tokens, no noise, no pairs: the corpus most checks use."""
    from conftest import run_ok
    out = tmp_path_factory.mktemp("synth") / "base"
    run_ok(saectl, "synth", "--out", out, "--d-in", 32, "--features", 128, "--tokens", 60000,
           "--seed", 7, "--shard-tokens", 25000)
    return Corpus(out)


def test_layout(base):
    m = base.meta
    assert m["d_in"] == 32 and m["dtype"] == "float32" and m["context_len"] == 64
    assert m["n_tokens"] == 60000 and m["vocab"] == "vocab.json"
    assert m["shards"] == [f"shard_{i:05d}.safetensors" for i in range(3)]
    assert base.shard_rows == [25000, 25000, 10000]
    assert base.x.dtype == np.float32 and base.x.shape == (60000, 32)
    assert base.tokens.dtype == np.int32 and base.tokens.shape == (60000,)
    assert np.isfinite(base.x).all()
    assert not list(base.dir.glob("*.tmp.*")), "temporary files left behind"


def test_truth_tensors(base):
    t = base.truth
    G, D = 128, 32
    assert t["dictionary"].shape == (G, D) and t["dictionary"].dtype == np.float32
    norms = np.linalg.norm(t["dictionary"].astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)
    cos = t["dictionary"] @ t["dictionary"].T
    np.fill_diagonal(cos, 0)
    assert np.abs(cos).max() < 0.9, "random directions should not nearly coincide"
    for k in ("frequencies", "base_probability", "magnitude_mu", "magnitude_sigma"):
        assert t[k].shape == (G,) and t[k].dtype == np.float32, k
    assert t["trigger_tokens"].shape == (G, WORDS) and t["trigger_tokens"].dtype == np.int32
    np.testing.assert_array_equal(
        t["trigger_tokens"], N_FILLER + np.arange(G * WORDS).reshape(G, WORDS))
    assert "pairs" not in t
    f = t["frequencies"].astype(np.float64)
    # Zipf-like with exponent 1: id = frequency rank, p_g ~ 1/(g+1), capped at 0.5.
    assert np.all(np.diff(f) <= 1e-9) and f.max() <= 0.5 + 1e-6
    assert f[0] / f[63] > 20, "frequencies are not skewed"
    np.testing.assert_allclose(f.sum(), 4.0, rtol=1e-4)
    np.testing.assert_array_equal(t["frequencies"], t["base_probability"])
    assert np.all(np.abs(t["magnitude_mu"]) <= 0.5) and np.all(t["magnitude_sigma"] == 0.5)


def test_truth_json_and_vocab(base):
    tj, vocab = base.truth_json, base.vocab
    assert tj["n_features"] == 128 and tj["d_in"] == 32 and tj["seed"] == 7
    assert len(vocab) == N_FILLER + 128 * WORDS
    assert len(set(vocab)) == len(vocab), "words must be distinct"
    assert all(re.fullmatch(r"([bdfgklmnprstvz][aeiou]){2,}", w) for w in vocab), vocab[:10]
    assert tj["filler_words"] == vocab[:N_FILLER]
    for g, feat in enumerate(tj["features"]):
        assert feat["id"] == g
        assert feat["token_ids"] == base.truth["trigger_tokens"][g].tolist()
        assert feat["words"] == [vocab[i] for i in feat["token_ids"]]
        assert feat["frequency"] == pytest.approx(float(base.truth["frequencies"][g]), rel=1e-6)
        assert feat["partner"] is None and feat["role"] == "none"


def lognormal_moments(mu, s):
    return np.exp(mu + s * s / 2), np.exp(2 * mu + 2 * s * s)


def test_activation_moments(base):
    """E||x||^2 and E[x] in closed form for independent features:
    E[x] = sum_g f_g m1_g d_g;  E||x||^2 = sum_g f_g m2_g - sum_g (f_g m1_g)^2 + ||E[x]||^2."""
    t = base.truth
    f = t["frequencies"].astype(np.float64)
    m1, m2 = lognormal_moments(t["magnitude_mu"].astype(np.float64), 0.5)
    Dm = t["dictionary"].astype(np.float64)
    mean = (f * m1) @ Dm
    sq = (f * m2).sum() - ((f * m1) ** 2).sum() + mean @ mean
    x = base.x.astype(np.float64)
    got_sq = (x * x).sum(1).mean()
    assert got_sq == pytest.approx(sq, rel=0.03), (got_sq, sq)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.04 * np.sqrt(sq / 32) + 0.02)


def single_feature_rows(c: Corpus):
    """Rows that are a positive multiple of one dictionary row: exactly one feature fired."""
    Dm = c.truth["dictionary"].astype(np.float64)
    x = c.x.astype(np.float64)
    norm = np.linalg.norm(x, axis=1)
    nz = norm > 0
    cos = (x[nz] @ Dm.T) / norm[nz, None]
    best = cos.argmax(1)
    single = cos[np.arange(len(best)), best] > 1 - 1e-5
    rows = np.flatnonzero(nz)[single]
    return rows, best[single], norm[rows]


def test_firing_counts(base):
    """Zero rows = nothing fired; single-feature rows match prod(1-p) * sum p/(1-p)."""
    p = base.truth["base_probability"].astype(np.float64)
    n = base.x.shape[0]
    none = np.prod(1 - p)
    one = none * (p / (1 - p)).sum()
    zero_rows = (np.abs(base.x).max(1) == 0).mean()
    assert zero_rows == pytest.approx(none, abs=4 * np.sqrt(none / n) + 1e-3)
    rows, _, _ = single_feature_rows(base)
    assert len(rows) / n == pytest.approx(one, abs=4 * np.sqrt(one / n) + 1e-3)


def test_single_feature_rows(base):
    """Where only g fires: the token is one of g's trigger words, and the magnitude
    ||x|| is lognormal(mu_g, 0.5)."""
    rows, feat, mag = single_feature_rows(base)
    assert len(rows) > 1000
    trig = base.truth["trigger_tokens"]
    tok = base.tokens[rows]
    assert np.all((tok[:, None] == trig[feat]).any(1)), "a token is not its feature's word"
    for g in range(3):
        lm = np.log(mag[feat == g])
        assert len(lm) > 200
        assert lm.mean() == pytest.approx(float(base.truth["magnitude_mu"][g]), abs=0.06)
        assert lm.std() == pytest.approx(0.5, abs=0.05)
    # All of a frequent feature's trigger words are used.
    assert set(tok[feat == 0].tolist()) == set(trig[0].tolist())


def test_tokens(base):
    x, tok = base.x, base.tokens
    assert tok.min() >= 0 and tok.max() < len(base.vocab)
    zero = np.abs(x).max(1) == 0
    assert np.all(tok[zero] < N_FILLER), "a row where nothing fires must get a filler word"
    assert np.all(tok[~zero] >= N_FILLER), "a row where something fires gets a trigger word"
    # The token's feature is the dominant one: its direction aligns with the row.
    g = (tok[~zero] - N_FILLER) // WORDS
    Dm = base.truth["dictionary"]
    xs = x[~zero]
    cos = np.einsum("ij,ij->i", xs, Dm[g]) / np.linalg.norm(xs, axis=1)
    assert cos.mean() > 0.6 and np.mean(cos > 0) > 0.97
    # A feature names a token only where it fires (and is dominant there), so its token
    # count is at most its firing count, and follows its frequency.
    counts = np.bincount(g, minlength=128)
    fires = len(tok) * base.truth["frequencies"].astype(np.float64)
    assert np.all(counts <= fires + 4 * np.sqrt(fires))
    assert np.corrcoef(np.log(counts + 1), np.log(fires))[0, 1] > 0.75


def test_deterministic_and_layout_free(run_success, work, base):
    """Same seed -> same rows whatever the shard size; another seed -> other rows."""
    other = synth(run_success, work / "a", "--d-in", 32, "--features", 128, "--tokens", 60000,
                  "--seed", 7, "--shard-tokens", 7777)
    assert len(other.meta["shards"]) == 8
    np.testing.assert_array_equal(other.x, base.x)
    np.testing.assert_array_equal(other.tokens, base.tokens)
    np.testing.assert_array_equal(other.truth["dictionary"], base.truth["dictionary"])
    again = synth(run_success, work / "b", "--d-in", 32, "--features", 128, "--tokens", 5000,
                  "--seed", 7)
    np.testing.assert_array_equal(again.x, base.x[:5000])   # a prefix of the longer corpus
    diff = synth(run_success, work / "c", "--d-in", 32, "--features", 128, "--tokens", 5000,
                 "--seed", 8)
    assert not np.array_equal(diff.truth["dictionary"], base.truth["dictionary"])
    assert not np.array_equal(diff.x, base.x[:5000])


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (no NaNs here)."""
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_dtypes(run_success, work, dtype):
    flags = ["--d-in", 16, "--features", 64, "--tokens", 3000, "--seed", 3]
    ref = synth(run_success, work / "f32", *flags)
    run_success("synth", "--out", work / dtype, *flags, "--dtype", dtype)
    meta = json.loads((work / dtype / "dataset.json").read_text())
    assert meta["dtype"] == dtype
    if dtype == "float16":
        half = Corpus(work / dtype)
        np.testing.assert_array_equal(half.tokens, ref.tokens)
        assert half.x.dtype == np.float16
        np.testing.assert_array_equal(half.x, ref.x.astype(np.float16))
    else:
        # numpy has no bfloat16 for safetensors.numpy to load into: compare the raw bits.
        raw = (work / dtype / "shard_00000.safetensors").read_bytes()
        n = int.from_bytes(raw[:8], "little")
        hdr = json.loads(raw[8:8 + n])
        assert hdr["activations"]["dtype"] == "BF16"
        b, e = hdr["activations"]["data_offsets"]
        bits = np.frombuffer(raw[8 + n + b:8 + n + e], dtype="<u2").reshape(3000, 16)
        np.testing.assert_array_equal(bits, bf16_round(ref.x))


def test_noise(run_success, work):
    """Noise adds sigma^2 per coordinate and makes every row non-zero."""
    flags = ["--d-in", 24, "--features", 96, "--tokens", 20000, "--seed", 11]
    clean = synth(run_success, work / "clean", *flags)
    noisy = synth(run_success, work / "noisy", *flags, "--noise", 0.3)
    eps = noisy.x.astype(np.float64) - clean.x
    assert eps.mean() == pytest.approx(0, abs=0.01)
    assert eps.std() == pytest.approx(0.3, rel=0.02)
    assert np.abs(np.corrcoef(eps[:, 0], eps[:, 1])[0, 1]) < 0.03
    np.testing.assert_array_equal(noisy.tokens, clean.tokens)


def test_correlated_pairs(run_success, work):
    c = synth(run_success, work / "pairs", "--d-in", 32, "--features", 100, "--tokens", 20000,
              "--seed", 5, "--correlated", 0.5, "--k-mean", 3)
    pairs = c.truth["pairs"]
    assert pairs.shape == (25, 2) and pairs.dtype == np.int32
    assert len(set(pairs.ravel().tolist())) == 50, "pairs must be disjoint"
    assert np.all(pairs[:, 0] < pairs[:, 1]), "the leader is the lower (more frequent) id"
    p = c.truth["base_probability"].astype(np.float64)
    f = c.truth["frequencies"].astype(np.float64)
    a, b = pairs[:, 0], pairs[:, 1]
    np.testing.assert_allclose(f[b], p[b] + (1 - p[b]) * FOLLOW * p[a], rtol=1e-5)
    np.testing.assert_allclose(f.sum(), 3.0, rtol=1e-4)
    feats = c.truth_json["features"]
    for lead, follow in pairs.tolist():
        assert feats[lead]["partner"] == follow and feats[lead]["role"] == "leader"
        assert feats[follow]["partner"] == lead and feats[follow]["role"] == "follower"
    # Exactly-one-feature rows, per role, in closed form. Z = P(nothing fires) =
    # prod over all g of (1 - p_g) (a follower cannot fire through an idle leader).
    # Only a leader: its follower neither fires on its own nor follows (1 - 0.8), so
    # leaders appear alone 5x less often than independent features would.
    n = c.x.shape[0]
    z = np.prod(1 - p)
    role = np.zeros(100, int)
    role[a], role[b] = 1, 2
    expect = {
        0: z * (p / (1 - p))[role == 0].sum(),
        1: z * (p[a] * (1 - FOLLOW) / (1 - p[a])).sum(),
        2: z * (p / (1 - p))[b].sum(),
    }
    rows, feat, _ = single_feature_rows(c)
    for k, e in expect.items():
        got = np.sum(role[feat] == k)
        assert abs(got - n * e) < 4 * np.sqrt(n * e) + 5, (k, got, n * e)
    zero_rows = (np.abs(c.x).max(1) == 0).sum()
    assert abs(zero_rows - n * z) < 4 * np.sqrt(n * z) + 5


def test_uniform_frequencies(run_success, work):
    """--zipf 0: every feature fires with probability k_mean / G."""
    c = synth(run_success, work / "u", "--d-in", 8, "--features", 40, "--tokens", 500,
              "--seed", 2, "--zipf", 0, "--k-mean", 2)
    np.testing.assert_allclose(c.truth["frequencies"], 2 / 40, rtol=1e-5)


def test_tiny(run_success, work):
    c = synth(run_success, work / "t", "--d-in", 1, "--features", 1, "--tokens", 1,
              "--seed", 0, "--k-mean", 0.25, "--context-len", 1)
    assert c.x.shape == (1, 1) and c.truth["dictionary"].shape == (1, 1)
    assert abs(float(c.truth["dictionary"][0, 0])) == 1.0


def test_progress_on_stderr(run_success, work):
    r = run_success("synth", "--out", work / "p", "--d-in", 8, "--features", 16, "--tokens",
                    1000, "--seed", 1)
    assert "1000 / 1000 tokens (100.0%)" in r.stderr


@pytest.mark.parametrize("flags,needle", [
    (["--d-in", 0], "--d-in"),
    (["--features", 0], "--features"),
    (["--tokens", 0], "--tokens"),
    (["--k-mean", 100], "--k-mean"),
    (["--k-mean", 0], "--k-mean"),
    (["--correlated", 1.5], "--correlated"),
    (["--noise", -1], "--noise"),
    (["--zipf", -0.5], "--zipf"),
    (["--context-len", 0], "--context-len"),
    (["--dtype", "float64"], "--dtype"),
    (["--shard-tokens", -5], "--shard-tokens"),
    (["--seed", -1], "--seed"),
    (["--tokens", "many"], "--tokens"),
    (["--bogus", 1], "--bogus"),
])
def test_bad_flags(run, work, flags, needle):
    base = {"--out": work / "bad", "--d-in": 8, "--features": 32, "--tokens": 100, "--seed": 1}
    for k, v in zip(flags[::2], flags[1::2]):
        base[k] = v
    args = [a for kv in base.items() for a in kv]
    r = run("synth", *args)
    assert r.returncode == 2, r.describe()
    assert needle in r.stderr, r.describe()
    assert not (work / "bad" / "dataset.json").exists()


def test_missing_required_flag(run, work):
    r = run("synth", "--out", work / "x", "--d-in", 8, "--features", 32, "--seed", 1)
    assert r.returncode == 2 and "--tokens" in r.stderr, r.describe()


def test_unwritable_out_fails(run, work):
    (work / "file").write_text("not a directory")
    r = run("synth", "--out", work / "file" / "corpus", "--d-in", 8, "--features", 32,
            "--tokens", 100, "--seed", 1)
    assert r.returncode == 1, r.describe()
    assert "file" in r.stderr
