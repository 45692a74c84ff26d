"""test_train_torch.py - the engine's training step against a PyTorch reference.

tests/train/train_step_dump (built by meson next to saectl) runs the engine on given weights,
batches and options and dumps the loss, every gradient, and the weights, Adam moments and
firing record after each of a few steps. tests/reference/torch_step_ref.py computes the same
from DESIGN.md section 3 in float64 with autograd and torch.optim.Adam (its docstring lists
the recipe). Debian's python3-torch is the reference; it installs for /usr/bin/python3, so the
reference runs there as a subprocess ($TORCH_PYTHON overrides the interpreter). Without torch
the tests are skipped, saying so.

Every case is checked for near-ties first: the reference reports how far each selection
decision (top-k boundary, ReLU or gate sign) is from flipping, less a bound on the engine's
float32 error; a case with a non-positive slack is redrawn (the engine may legitimately
decide a near-tie either way, and then nothing downstream is comparable).

Tolerances (float32 engine vs float64 reference):
  loss, mse, aux_loss, fvu: rel 1e-4;  l0, last_fired, step, tokens: exact
  gradients: |g - g_ref| <= 1e-3 |g_ref| + 1e-5 max|g_ref| (per tensor)
  weights after a step: |w - w_ref| <= 1e-4 |w_ref| + 1e-3 lr (Adam moves a weight by about
  lr per step, so its error is measured against lr)
  Adam moments: m like the gradients; v: rel 2e-3 + 1e-5 max v
The worst error measured was about 1.5% of these tolerances; perturbing the reference (an
Adam eps of 1e-6, no parallel-gradient removal, no clip, a warmup or cosine off by one step,
another Philox output word, an unfrozen gated decoder, an uncentred AuxK denominator, k_aux
= d/4, ReLU on ptopk's codes, exp(r_mag) -> 1 + r_mag, ...) fails the cases it touches.

Cases: topk (the clip acts at step 1 only), ptopk (center_unit_norm, a seed with high bits),
ptopk at step 95 of 100 from a saved state (cosine lr, beta ~ 1e-4: saturated gates ranked
by |a|), ptopk's ablations, batchtopk (3 steps: the threshold's moving average), standard,
gated, both with 3 rows and lr 1 (which latents fired comes from the forward pass), and topk
with AuxK from a saved state with dead latents and non-zero Adam moments.

Where DESIGN.md leaves a choice open the reference follows what src/sae/train.c documents:
AuxK's loss is normalised by the batch variance of the residual e; gated's sparsity term is
weighted by the decoder row norms (as relu's is); batchtopk's threshold is the smallest kept
value at step 0, then a moving average at threshold_rate.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp

import make_ckpt as mk
from conftest import CRASH_MARKERS, REPO

HERE = Path(__file__).resolve().parent
REF = Path(os.environ.get("TORCH_STEP_REF", HERE / "torch_step_ref.py"))
TORCH_PYTHON = os.environ.get("TORCH_PYTHON", "/usr/bin/python3")
TOPK_FAMILY = ("topk", "ptopk", "batchtopk")


def driver_path() -> Path:
    env = os.environ.get("TRAIN_STEP_DUMP")
    if env:
        return Path(env)
    if os.environ.get("SAECTL"):  # <build>/src/cli/saectl -> <build>/tests/train/...
        return Path(os.environ["SAECTL"]).resolve().parents[2] / "tests" / "train" / \
            "train_step_dump"
    return REPO / "build" / "tests" / "train" / "train_step_dump"


@pytest.fixture(scope="module")
def driver() -> str:
    p = driver_path()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"train_step_dump not found at {p} (built by meson with the tests; or set "
                    f"TRAIN_STEP_DUMP)", pytrace=False)
    return str(p)


@pytest.fixture(scope="module")
def torch_python() -> str:
    try:
        r = subprocess.run([TORCH_PYTHON, "-c", "import torch, numpy; print(torch.__version__)"],
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"no PyTorch reference: {TORCH_PYTHON} cannot run ({e}); install Debian's "
                    f"python3-torch or set TORCH_PYTHON")
    if r.returncode != 0:
        pytest.skip(f"no PyTorch reference: {TORCH_PYTHON} cannot import torch "
                    f"({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}); "
                    f"install Debian's python3-torch (apt-get install python3-torch) or set "
                    f"TORCH_PYTHON")
    return TORCH_PYTHON


def run_checked(argv, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                       env=env)
    desc = f"$ {' '.join(str(a) for a in argv)}\n-> {p.returncode}\n{p.stderr[-4000:]}"
    assert p.returncode == 0, desc
    for m in CRASH_MARKERS:
        assert m not in p.stderr, desc
    return p


# ----------------------------------------------------------------------------- cases

def default_options(**over) -> dict:
    """train_options_default's values (train.h), then the case's."""
    o = {"arch": "topk", "d_sae": 64, "k": 4, "steps": 100, "batch": 32, "lr": 5e-4,
         "adam_beta1": 0.9, "adam_beta2": 0.99, "adam_eps": 1e-8, "clip": 10.0, "warmup": 5,
         "seed": 0, "normalize": "none", "norm_scale": 1.0, "apply_b_dec_to_input": True,
         "beta0": 5.0, "beta_end": 1e-4, "lambda_mag": 1e-4, "no_magnitude": False,
         "no_layernorm": False, "sigmoid_gate": False, "l1_coef": 5.0, "auxk": False,
         "auxk_coef": 1.0 / 32.0, "dead_window": -1, "threshold_rate": 0.01}
    o.update(over)
    return o


def f32(v) -> float:
    """The value the engine holds in a float field."""
    return float(np.float32(v))


def random_case(rng, arch, d, o, *, x_scales, state=None):
    """Weights (native names, float32), batches, and the state if any."""
    M, B, S = o["d_sae"], o["batch"], len(x_scales)
    W_dec = rng.standard_normal((M, d))
    norms = np.ones(M) if arch in TOPK_FAMILY else rng.uniform(0.5, 1.5, M)
    W_dec *= (norms / np.linalg.norm(W_dec, axis=1))[:, None]
    W_enc = 0.8 * W_dec.T + 0.6 * rng.standard_normal((d, M)) / np.sqrt(d)
    w = {"W_enc": W_enc, "W_dec": W_dec, "b_dec": 0.1 * rng.standard_normal(d)}
    if arch == "gated":
        w.update(b_gate=0.1 * rng.standard_normal(M), b_mag=0.1 * rng.standard_normal(M),
                 r_mag=0.2 * rng.standard_normal(M))
    else:
        w["b_enc"] = 0.1 * rng.standard_normal(M) - 0.02
    if arch == "batchtopk":
        w["threshold"] = np.full(M, 0.05)
    w = {n: np.ascontiguousarray(v, dtype=np.float32) for n, v in w.items()}
    rows = []
    for s in x_scales:
        row_scale = s * rng.uniform(0.5, 1.5, (B, 1))
        rows.append(rng.standard_normal((B, d)) * row_scale + 0.3 * rng.standard_normal((B, 1)))
    x = np.concatenate(rows).astype(np.float32)
    return w, x


def trainer_shapes(arch, d, M):
    names = ["W_enc_T", "W_dec", "b_dec"] + (["b_gate", "b_mag", "r_mag"] if arch == "gated"
                                            else ["b_enc"])
    return {n: (M * d if n.startswith("W_") else d if n == "b_dec" else M) for n in names}


def write_case(work: Path, arch, d, o, w, x, state, steps):
    """The model directory for the engine (native, + train_state when there is a state) and the
    case directory for the reference."""
    model = work / "model"
    cfg = mk.native_cfg(arch, d, o["d_sae"], k=o["k"], norm=o["normalize"],
                        apply_b_dec=o["apply_b_dec_to_input"],
                        lambda_mag=0.0 if o["no_magnitude"] else o["lambda_mag"],
                        beta_final=o["beta_end"], layernorm=not o["no_layernorm"])
    mk.write_native(model, cfg, w)
    case = work / "case"
    case.mkdir()
    for n, v in w.items():
        np.save(case / f"{n}.npy", v)
    np.save(case / "x.npy", x)
    np.save(work / "x.npy", x)
    spec = {"cfg": {"architecture": arch, "apply_b_dec_to_input": o["apply_b_dec_to_input"],
                    "normalize_activations": o["normalize"]},
            "options": o, "steps": steps}
    if state is not None:
        tensors = {}
        for n, arr in state["adam_m"].items():
            tensors[f"adam_m.{n}"] = arr
            np.save(case / f"adam_m.{n}.npy", arr)
        for n, arr in state["adam_v"].items():
            tensors[f"adam_v.{n}"] = arr
            np.save(case / f"adam_v.{n}.npy", arr)
        tensors["last_fired"] = state["last_fired"].astype(np.int64)
        np.save(case / "last_fired.npy", state["last_fired"].astype(np.int64))
        meta = {"step": state["step"], "tokens": state["tokens"], "theta": 0.0,
                "initialised": True, "options": o}
        stnp.save_file(tensors, str(model / "train_state.safetensors"),
                       metadata={"state": json.dumps(meta)})
        spec["state"] = {"step": state["step"], "tokens": state["tokens"], "theta": 0.0}
        opts = "-"
    else:
        opts = work / "options.json"
        opts.write_text(json.dumps(o))
    (case / "case.json").write_text(json.dumps(spec))
    return model, case, opts


def random_state(rng, arch, d, o, *, step, tokens, last_fired):
    shapes = trainer_shapes(arch, d, o["d_sae"])
    return {"step": step, "tokens": tokens, "last_fired": last_fired,
            "adam_m": {n: (1e-2 * rng.standard_normal(k)).astype(np.float32)
                       for n, k in shapes.items()},
            "adam_v": {n: (1e-3 * rng.uniform(0.1, 1.0, k)).astype(np.float32)
                       for n, k in shapes.items()}}


# Each case: arch, d_in, options, per-step input scales, and a state maker (or None).
def _auxk_state(rng, arch, d, o):
    M, B = o["d_sae"], o["batch"]
    tokens = 20 * B
    # about half the latents last fired long ago (dead), the rest just now
    last = np.where(rng.uniform(size=M) < 0.5, 0, tokens - B).astype(np.int64)
    return random_state(rng, arch, d, o, step=20, tokens=tokens, last_fired=last)


def _late_state(rng, arch, d, o):
    M, B = o["d_sae"], o["batch"]
    return random_state(rng, arch, d, o, step=95, tokens=95 * B,
                        last_fired=rng.integers(0, 95 * B, M).astype(np.int64))


CASES = {
    # clip: the first batch is large (grad norm > 10), the second small
    "topk": ("topk", 16, dict(lr=1e-2), (4.0, 0.5), None),
    "ptopk": ("ptopk", 16, dict(normalize="center_unit_norm", seed=0x123456789ABCDEF0,
                                lr=1e-2), (1.0, 1.0), None),
    # past warmup at step 95 of 100: cosine lr, beta ~ 1e-4 (saturated gates: ranking by |a|)
    "ptopk_late": ("ptopk", 16, dict(seed=77, lr=1e-2), (1.0, 1.0), _late_state),
    "ptopk_ablations": ("ptopk", 16, dict(no_magnitude=True, no_layernorm=True,
                                          sigmoid_gate=True, lr=1e-2, normalize="layer_norm"),
                        (1.0, 1.0), None),
    "batchtopk": ("batchtopk", 16, dict(lr=1e-2, threshold_rate=0.25), (1.0, 1.0, 1.0), None),
    "standard": ("standard", 12, dict(lr=1e-2, l1_coef=1.0, normalize="layer_norm",
                                      d_sae=48, batch=24), (1.0, 1.0), None),
    "gated": ("gated", 12, dict(lr=1e-2, l1_coef=0.5, d_sae=48, batch=24), (1.0, 1.0), None),
    # a few rows and a large step: which latents fired must come from the forward pass, not
    # from the weights after the update
    "gated_big_step": ("gated", 12, dict(lr=1.0, l1_coef=0.5, d_sae=48, batch=3), (1.0, 1.0),
                       None),
    "standard_big_step": ("standard", 12, dict(lr=1.0, l1_coef=0.5, d_sae=48, batch=3),
                          (1.0, 1.0), None),
    "topk_auxk": ("topk", 16, dict(lr=1e-2, auxk=True, dead_window=5 * 32, k=3),
                  (1.0, 1.0), _auxk_state),
}


def prepare(work: Path, rng, name, torch_python):
    """Draws the case until the reference finds no near-tie; returns the paths and the
    reference's results."""
    arch, d, over, scales, state_fn = CASES[name]
    o = default_options(arch=arch, **over)
    o = {k: (f32(v) if isinstance(v, float) else v) for k, v in o.items()}
    for attempt in range(8):
        sub = work / f"try{attempt}"
        sub.mkdir()
        w, x = random_case(rng, arch, d, o, x_scales=scales)
        state = state_fn(rng, arch, d, o) if state_fn else None
        model, case, opts = write_case(sub, arch, d, o, w, x, state, len(scales))
        run_checked([torch_python, REF, case, sub / "ref.npz"], timeout=300)
        ref = dict(np.load(sub / "ref.npz"))
        slacks = [float(ref[f"slack{s}"]) for s in range(len(scales) + 1)]
        if os.environ.get("TEST_TRAIN_VERBOSE"):
            print(f"{name}: draw {attempt}: slacks {slacks}")
        if min(slacks) > 0:
            return sub, model, opts, o, w, ref, len(scales), state
    pytest.fail(f"{name}: every draw had a near-tie in a selection (slacks {slacks})")


def close(a, b, rtol, atol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.abs(a - b)
    bound = rtol * np.abs(b) + atol
    i = int(np.argmax(err - bound)) if err.size else 0
    return bool(np.all(err <= bound)), (float(err.flat[i]) if err.size else 0.0,
                                        float(bound.flat[i]) if err.size else 0.0, i)


def assert_close(what, a, b, rtol, atol):
    ok, (e, bound, i) = close(a, b, rtol, atol)
    if os.environ.get("TEST_TRAIN_VERBOSE"):
        err = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        print(f"{what}: worst |err| / tolerance "
              f"{float(np.max(err / (rtol * np.abs(np.asarray(b, np.float64)) + atol))):.3g}")
    a, b = np.ravel(a), np.ravel(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs reference {b.shape}"
    assert ok, (f"{what}: engine {a[i]:.9g} vs reference {b[i]:.9g} at [{i}] (|err| {e:.3g} > "
                f"{bound:.3g}); worst relative error "
                f"{float(np.max(np.abs(a - b) / (np.abs(b) + 1e-30))):.3g}")


@pytest.mark.parametrize("name", list(CASES))
def test_step_matches_torch(name, driver, torch_python, work, rng):
    sub, model, opts, o, w, ref, steps, state0 = prepare(work, rng, name, torch_python)
    step0, tokens0 = (state0["step"], state0["tokens"]) if state0 else (0, 0)
    arch = o["arch"]
    out = sub / "engine"
    out.mkdir()
    run_checked([driver, model, sub / "x.npy", opts, out, steps])

    # 1. loss and gradients on batch 0
    stats = json.loads((out / "grads.json").read_text())
    r = ref["grad.stats"]       # loss, mse, fvu, l0, aux_loss, lr, beta
    for i, key in enumerate(("loss", "mse", "fvu")):
        assert_close(f"{name}: {key}", stats[key], r[i], 1e-4, 1e-7)
    assert stats["l0"] == pytest.approx(r[3], abs=1e-9), f"{name}: l0"
    assert_close(f"{name}: aux_loss", stats["aux_loss"], r[4], 1e-4, 1e-7)
    assert_close(f"{name}: lr", stats["lr"], r[5], 1e-6, 0)
    assert_close(f"{name}: beta", stats["beta"], r[6], 1e-6, 0)
    if name == "topk_auxk":
        assert r[4] > 0, "the AuxK case has no auxiliary loss (no dead latent was selected)"
    grads = stnp.load_file(str(out / "grads.safetensors"))
    names = [k[len("grad."):] for k in ref if k.startswith("grad.") and k != "grad.stats"]
    assert sorted(grads) == sorted(names), f"{name}: gradient tensors {sorted(grads)}"
    for n in names:
        g_ref = ref[f"grad.{n}"]
        assert_close(f"{name}: d loss / d {n}", grads[n], g_ref, 1e-3,
                     1e-5 * float(np.max(np.abs(g_ref))) + 1e-12)

    # 2. the steps
    steps_json = json.loads((out / "steps.json").read_text())
    clipped = []
    for s in range(1, steps + 1):
        rs = ref[f"step{s}.stats"]     # loss, mse, grad_norm, lr, beta, l0
        es = steps_json[s - 1]
        assert_close(f"{name} step {s}: loss", es["loss"], rs[0], 1e-4, 1e-7)
        assert_close(f"{name} step {s}: grad_norm", es["grad_norm"], rs[2], 1e-4, 1e-7)
        assert_close(f"{name} step {s}: lr", es["lr"], rs[3], 1e-6, 0)
        assert_close(f"{name} step {s}: beta", es["beta"], rs[4], 1e-6, 0)
        clipped.append(rs[2] > o["clip"])
        lr = rs[3]
        sd = out / f"step_{s}"
        weights = stnp.load_file(str(sd / "sae_weights.safetensors"))
        for n in w:
            if n == "threshold":
                continue
            assert_close(f"{name} step {s}: {n}", weights[n], ref[f"step{s}.{n}"], 1e-4,
                         1e-3 * lr)
        if arch in TOPK_FAMILY:
            norms = np.linalg.norm(weights["W_dec"].astype(np.float64), axis=1)
            assert np.allclose(norms, 1.0, atol=1e-5), f"{name}: W_dec rows not unit norm"
        if arch == "batchtopk":
            theta = float(ref[f"step{s}.theta"])
            assert_close(f"{name} step {s}: threshold", weights["threshold"],
                         np.full(o["d_sae"], theta), 1e-4, 1e-6)
        st = stnp.load_file(str(sd / "train_state.safetensors"))
        for n in names:
            m_ref, v_ref = ref[f"step{s}.adam_m.{n}"], ref[f"step{s}.adam_v.{n}"]
            assert_close(f"{name} step {s}: adam_m.{n}", st[f"adam_m.{n}"], m_ref, 1e-3,
                         1e-5 * float(np.max(np.abs(m_ref))) + 1e-12)
            assert_close(f"{name} step {s}: adam_v.{n}", st[f"adam_v.{n}"], v_ref, 2e-3,
                         1e-5 * float(np.max(np.abs(v_ref))) + 1e-20)
        assert np.array_equal(st["last_fired"], ref[f"step{s}.last_fired"]), \
            f"{name} step {s}: last_fired differs at latents " \
            f"{np.nonzero(st['last_fired'] != ref[f'step{s}.last_fired'])[0].tolist()}"
        with open(sd / "train_state.safetensors", "rb") as fh:
            n_hdr = int.from_bytes(fh.read(8), "little")
            meta = json.loads(fh.read(n_hdr))["__metadata__"]
        state = json.loads(meta["state"])
        assert (state["step"], state["tokens"]) == (step0 + s, tokens0 + s * o["batch"]), \
            f"{name} step {s}: state {state}"
    if name == "topk":
        assert clipped == [True, False], f"topk: the clip should act at step 1 only " \
            f"(reference grad norms {[float(ref[f'step{s}.stats'][2]) for s in (1, 2)]})"


PHILOX_KAT = [  # Random123's kat_vectors: key, counter -> output
    (("0", "0"), ("0", "0", "0", "0"), "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    (("0xffffffff",) * 2, ("0xffffffff",) * 4, "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    (("0xa4093822", "0x299f31d0"), ("0x243f6a88", "0x85a308d3", "0x13198a2e", "0x03707344"),
     "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def test_philox_matches_random123_and_engine(driver):
    """The reference's Philox4x32-10 gives the published Random123 known answers, and then
    the engine's words for the same key and counter (as src/sae/train.c calls it). Needs
    numpy only, so it runs under this interpreter, torch or not."""
    py = sys.executable
    argv = [w for key, ctr, _ in PHILOX_KAT for w in key + ctr]
    got = run_checked([py, REF, "--philox", *argv]).stdout.strip().splitlines()
    assert got == [want for _, _, want in PHILOX_KAT]
    for words in (("0xdeadbeef", "0x12345", "7", "3", "0x80000001", "2"),
                  ("0x9abcdef0", "0x12345678", "15", "31", "0xffffffff", "0")):
        ours = run_checked([py, REF, "--philox", *words]).stdout.split()
        engine = run_checked([driver, "--philox", *words]).stdout.split()
        assert ours == engine, f"Philox of {words}"


def test_init_follows_the_recipe(driver, work, rng):
    r"""trainer_new: W_dec rows unit norm, W_enc = W_dec^T, b_enc = 0, b_dec = the mean of the
    first batch (after preprocessing), and W_dec is an orthonormal-column matrix Q (QR of a
    Gaussian) with its rows rescaled: W_dec = D^-1 Q for a positive diagonal D, i.e.
    W_dec^T D^2 W_dec = I. That is d (d + 1) / 2 linear equations in the M entries of D^2,
    which a generic matrix does not satisfy when d (d + 1) / 2 > M."""
    d, M, B = 16, 64, 32
    o = default_options(arch="topk", d_sae=M, batch=B, normalize="layer_norm", seed=5)
    (work / "options.json").write_text(json.dumps(o))
    x = (rng.standard_normal((B, d)) * 2 + 1).astype(np.float32)
    np.save(work / "x.npy", x)
    run_checked([driver, "--init", work / "options.json", work / "x.npy", work / "model"])
    wts = stnp.load_file(str(work / "model" / "sae_weights.safetensors"))
    W_dec, W_enc = wts["W_dec"].astype(np.float64), wts["W_enc"].astype(np.float64)
    assert np.allclose(np.linalg.norm(W_dec, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(wts["W_enc"], wts["W_dec"].T)
    assert np.all(wts["b_enc"] == 0)
    xd = x.astype(np.float64)
    mu = xd.mean(1, keepdims=True)
    xp = (xd - mu) / np.sqrt(((xd - mu) ** 2).mean(1, keepdims=True) + 1e-5)
    assert np.allclose(wts["b_dec"], xp.mean(0), atol=1e-6)
    ju, ku = np.triu_indices(d)
    A = (W_dec[:, ju] * W_dec[:, ku]).T          # [(j, k), i] = W_ij W_ik
    b = (ju == ku).astype(np.float64)
    D2, *_ = np.linalg.lstsq(A, b, rcond=None)
    resid = np.abs(A @ D2 - b).max()
    assert resid < 1e-4 and D2.min() > 0, f"W_dec is not a row-rescaled orthonormal-column " \
        f"matrix (residual {resid:.3g}, min D^2 {D2.min():.3g})"
    # the same test on a Gaussian matrix with unit rows fails (the test has teeth)
    G = rng.standard_normal((M, d))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    AG = (G[:, ju] * G[:, ku]).T
    DG, *_ = np.linalg.lstsq(AG, b, rcond=None)
    assert np.abs(AG @ DG - b).max() > 1e-2
    # a different seed gives different weights; the same seed the same
    run_checked([driver, "--init", work / "options.json", work / "x.npy", work / "model2"])
    again = stnp.load_file(str(work / "model2" / "sae_weights.safetensors"))
    assert np.array_equal(again["W_dec"], wts["W_dec"])
