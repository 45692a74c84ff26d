"""test_engine.py - saectl encode / decode / convert / inspect held to the numpy reference.

Every architecture x every preprocessing mode x apply_b_dec_to_input in {true, false},
small random dimensions per case (seeded from the test name), plus ties, saturated
Probabilistic-TopK gates, decode of hand-made code files, and the three checkpoint layouts
in float32 / float16 / bfloat16.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp

import make_ckpt as mk
import refcheck as rc
import sae_ref

ARCHS = ("standard", "topk", "batchtopk", "jumprelu", "gated", "ptopk")
NORMS = ("none", "center_unit_norm", "layer_norm", "constant_scale")


# ----------------------------------------------------------------------------- helpers

def encode_files(run_success, model, x, work: Path, tag="x"):
    """Runs encode (sparse and --dense) on x; returns (sparse dict, dense dict, paths)."""
    xin = work / f"{tag}.npy"
    mk.save_npy(xin, x)
    sp = work / f"{tag}_sparse.safetensors"
    dn = work / f"{tag}_dense.safetensors"
    run_success("encode", "--model", model, "--input", xin, "--output", sp)
    run_success("encode", "--model", model, "--input", xin, "--output", dn, "--dense")
    return stnp.load_file(str(sp)), stnp.load_file(str(dn)), sp, dn


def decode_file(run_success, model, codes_path: Path, work: Path, tag="xhat"):
    out = work / f"{tag}.npy"
    run_success("decode", "--model", model, "--input", codes_path, "--output", out)
    return np.load(str(out))


def check_encode_decode(run_success, model, x, cfg, weights, work, ctx, tag="x"):
    """The full contract on one model and one input: sparse codes, dense codes, decode of
    both. Returns the reference encoding."""
    ref = sae_ref.encode(x.astype(np.float64), cfg, weights)
    sparse, dense, sp, dn = encode_files(run_success, model, x, work, tag)
    assert set(dense) == {"codes"}, f"{ctx}: --dense output tensors {sorted(dense)}, want codes"
    rc.check_dense(dense["codes"], ref, ctx + " --dense")
    arch = sae_ref.canonical_arch(cfg["architecture"])
    if arch in sae_ref.TOPK_ARCHS:
        sp_dense = rc.check_fixed_k(sparse, ref, ctx + " sparse")
    else:
        sp_dense = rc.check_csr(sparse, ref, ctx + " sparse")
    xh = decode_file(run_success, model, sp, work, tag + "_hat_sparse")
    rc.check_decode(xh, sp_dense, ref, weights, ctx + " decode(sparse)")
    xh2 = decode_file(run_success, model, dn, work, tag + "_hat_dense")
    rc.check_decode(xh2, dense["codes"].astype(np.float64), ref, weights, ctx + " decode(dense)")
    return ref


def make_case(rng, arch, norm, apply_b_dec, *, d_in=None, d_sae=None, n=None, k=None,
              beta_final=None, layernorm=None):
    d_in = d_in or int(rng.integers(16, 65))
    d_sae = d_sae or int(rng.integers(64, 513))
    n = n or int(rng.integers(8, 65))
    k = k or int(rng.integers(1, 17))
    x = mk.random_input(rng, n, d_in)
    if norm == "layer_norm":
        # rows of tiny variance, where eps = 1e-5 on the variance matters
        x[: max(1, n // 4)] *= np.float32(2e-3)
    if beta_final is None:
        beta_final = float(rng.choice([1.0, 0.5, 0.05, 1e-4]))
    if layernorm is None:
        layernorm = bool(rng.integers(0, 2))
    scale = float(rng.uniform(0.2, 3.0))
    cfg = mk.native_cfg(arch, d_in, d_sae, k=k, apply_b_dec=apply_b_dec, norm=norm,
                        scale=scale, beta_final=beta_final, layernorm=layernorm)
    w = mk.random_weights(rng, arch, d_in, d_sae, x=x, cfg=cfg)
    return cfg, w, x


# ----------------------------------------------------------------------------- the product

@pytest.mark.parametrize("apply_b_dec", [True, False], ids=["bdec", "nobdec"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_encode_decode(run_success, rng, work, arch, norm, apply_b_dec):
    cfg, w, x = make_case(rng, arch, norm, apply_b_dec)
    stored = mk.write_native(work / "m", cfg, w)
    ctx = (f"{arch}/{norm}/apply_b_dec={apply_b_dec} d_in={cfg['d_in']} d_sae={cfg['d_sae']} "
           f"N={x.shape[0]} k={cfg.get('k')}")
    if arch == "ptopk":
        ctx += f" beta_final={cfg['beta_final']} layernorm={cfg['layernorm']}"
    ref = check_encode_decode(run_success, work / "m", x, cfg, stored, work, ctx)
    # the case must exercise something: some codes are non-zero
    assert (ref.f != 0).any(), f"{ctx}: degenerate test case (no latent fires)"


@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_relu_alias(run_success, rng, work, norm):
    """cfg architecture "relu" is the standard (ReLU) SAE."""
    cfg, w, x = make_case(rng, "relu", norm, True)
    stored = mk.write_native(work / "m", cfg, w)
    check_encode_decode(run_success, work / "m", x, cfg, stored, work, f"relu/{norm}")


# ----------------------------------------------------------------------------- ties

@pytest.mark.parametrize("d_sae", [64, 2000])
@pytest.mark.parametrize("arch", ["topk", "ptopk"])
def test_ties_break_toward_lower_index(run_success, rng, work, arch, d_sae):
    """W_enc = 0 makes every pre-activation exactly b_enc, which holds exact ties. Top-k
    must take the lower index among equals, and order equals by index. 2000 latents: a
    few rows' latents go to the threads in blocks of 768, so equals meet across blocks."""
    d_in, n, k = 16, 8, 7
    x = mk.random_input(rng, n, d_in)
    cfg = mk.native_cfg(arch, d_in, d_sae, k=k, beta_final=0.5, layernorm=True)
    w = mk.random_weights(rng, arch, d_in, d_sae)
    w["W_enc"][:] = 0
    # values in {0.25, 0.5, 0.75, 1.0}: many exact ties, exactly representable
    w["b_enc"] = (rng.integers(1, 5, size=d_sae) / 4.0).astype(np.float32)
    stored = mk.write_native(work / "m", cfg, w)
    ref = sae_ref.encode(x.astype(np.float64), cfg, stored)
    sparse, dense, _, _ = encode_files(run_success, work / "m", x, work)
    # exact: every row has the same pre-activations, so the same selection and order
    want = ref.sel
    got = sparse["indices"]
    assert got.shape == want.shape, f"indices shape {got.shape}, want {want.shape}"
    assert np.array_equal(got, want), (
        f"{arch}: ties not broken toward the lower index (or not ordered best first, "
        f"equals by index)\n  b_enc = {w['b_enc'].tolist()}\n  engine    {got[0].tolist()}\n"
        f"  reference {want[0].tolist()}")
    assert np.allclose(sparse["values"], ref.value[np.arange(n)[:, None], want])


def test_all_equal_scores(run_success, rng, work):
    """Every latent equal: top-k is 0..k-1 in order (topk and ptopk, whose LN of a constant
    row is 0 -> z = 0.5 for all)."""
    d_in, d_sae, n, k = 16, 80, 4, 5
    x = mk.random_input(rng, n, d_in)
    for arch in ("topk", "ptopk"):
        cfg = mk.native_cfg(arch, d_in, d_sae, k=k, beta_final=0.3, layernorm=True)
        w = mk.random_weights(rng, arch, d_in, d_sae)
        w["W_enc"][:] = 0
        w["b_enc"][:] = 0.5
        mk.write_native(work / arch, cfg, w)
        sparse, _, _, _ = encode_files(run_success, work / arch, x, work, tag=arch)
        want = np.tile(np.arange(k, dtype=np.int32), (n, 1))
        assert np.array_equal(sparse["indices"], want), \
            f"{arch}: all-equal scores gave {sparse['indices'][0].tolist()}, want 0..{k - 1}"


def test_topk_relu_after_selection(run_success, rng, work):
    """topk keeps the k largest z, then ReLU: where fewer than k pre-activations are
    positive, the remaining picks are still reported (k per row) with value 0."""
    d_in, d_sae, n, k = 24, 64, 16, 12
    cfg, w, x = make_case(rng, "topk", "none", True, d_in=d_in, d_sae=d_sae, n=n, k=k)
    w["b_enc"][:] = -2.0
    w["b_enc"][:4] = 1.0
    stored = mk.write_native(work / "m", cfg, w)
    ref = check_encode_decode(run_success, work / "m", x, cfg, stored, work, "topk negative z")
    rows = np.arange(n)[:, None]
    assert (ref.score[rows, ref.sel] < 0).any(), "test design: some picks must have z < 0"


@pytest.mark.parametrize("arch", ["topk", "ptopk"])
def test_k_equals_d_sae_and_single_row(run_success, rng, work, arch):
    cfg, w, x = make_case(rng, arch, "none", True, d_in=16, d_sae=64, n=1, k=64,
                          beta_final=0.5, layernorm=True)
    stored = mk.write_native(work / "m", cfg, w)
    check_encode_decode(run_success, work / "m", x, cfg, stored, work, f"{arch} k=d_sae N=1")


@pytest.mark.parametrize("n", [257, 200, 33])
@pytest.mark.parametrize("arch", ["topk", "ptopk", "jumprelu", "gated"])
def test_larger_shapes(run_success, rng, work, arch, n):
    """Sizes past the small-case range, odd row counts: blocking / threading paths (257
    rows: blocks of rows; 200 and 33: one GEMM for all rows through our kernel, in blocks
    of latents; 200 rows are four of its chunks)."""
    cfg, w, x = make_case(rng, arch, "layer_norm", True, d_in=96, d_sae=1536, n=n, k=32,
                          beta_final=1e-4 if arch == "ptopk" else None, layernorm=True)
    stored = mk.write_native(work / "m", cfg, w)
    check_encode_decode(run_success, work / "m", x, cfg, stored, work, f"{arch} large")


@pytest.mark.parametrize("arch", ["topk", "ptopk", "jumprelu"])
def test_one_thread_small_batch(run_success, rng, work, monkeypatch, arch):
    """One thread and 100 rows: the rows go to one GEMM through our small-batch kernel
    (once they went to per-thread blocks and OpenBLAS)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg, w, x = make_case(rng, arch, "none", True, d_in=64, d_sae=1600, n=100, k=16,
                          beta_final=1e-4 if arch == "ptopk" else None, layernorm=True)
    stored = mk.write_native(work / "m", cfg, w)
    check_encode_decode(run_success, work / "m", x, cfg, stored, work, f"{arch} 1 thread")


# ----------------------------------------------------------------------------- ptopk precision

@pytest.mark.parametrize("layernorm", [True, False], ids=["ln", "noln"])
@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_ptopk_saturated_gates_random(run_success, rng, work, layernorm, norm):
    """beta_final = 1e-4, lambda_mag = 1e-4: z is 1 (in float64) for most positive l, so
    the ranking among them is by |a|; hold it to the float64 formula."""
    cfg, w, x = make_case(rng, "ptopk", norm, True, d_sae=512, n=64, k=16,
                          beta_final=1e-4, layernorm=layernorm)
    assert cfg["lambda_mag"] == 1e-4
    stored = mk.write_native(work / "m", cfg, w)
    ref = check_encode_decode(run_success, work / "m", x, cfg, stored, work,
                              f"ptopk saturated layernorm={layernorm} norm={norm}")
    assert (ref.z[np.arange(x.shape[0])[:, None], ref.sel] == 1.0).mean() > 0.9


@pytest.mark.parametrize("layernorm", [True, False], ids=["ln", "noln"])
def test_ptopk_saturated_cluster(run_success, rng, work, layernorm):
    """A cluster of C latents with a = 3 (1 + m 1e-4), m = 0..C-1, all with z == 1: the
    exact formula takes the k of largest |a|, i.e. the highest m. In float32,
    1 + 1e-4 * |a| cannot tell them apart (spacing 3e-8 < ulp(1) = 1.2e-7), so an engine
    that ranks by a float32 s picks low indices and fails here."""
    d_in, d_sae, n, k, C = 32, 256, 16, 8, 24
    x = mk.random_input(rng, n, d_in)
    cfg = mk.native_cfg("ptopk", d_in, d_sae, k=k, beta_final=1e-4, layernorm=layernorm)
    w = mk.random_weights(rng, "ptopk", d_in, d_sae)
    w["W_enc"] *= np.float32(0.05)          # keep the other latents' |a| small
    w["b_enc"][:] = (0.05 * rng.standard_normal(d_sae)).astype(np.float32)
    base = 40
    m = np.arange(C)
    w["W_enc"][:, base:base + C] = 0
    w["b_enc"][base:base + C] = (3.0 * (1.0 + 1e-4 * m)).astype(np.float32)
    # shuffle the cluster order so "highest m" is not "highest index"
    perm = rng.permutation(C)
    w["b_enc"][base:base + C] = w["b_enc"][base:base + C][perm]
    stored = mk.write_native(work / "m", cfg, w)
    ref = sae_ref.encode(x.astype(np.float64), cfg, stored)
    rows = np.arange(n)
    assert np.all(ref.z[rows[:, None], ref.sel] == 1.0), "test design: gates must saturate"
    assert np.all((ref.sel >= base) & (ref.sel < base + C)), "test design: cluster on top"
    sparse, dense, sp, _ = encode_files(run_success, work / "m", x, work)
    got = sparse["indices"]
    for r in range(n):
        assert set(got[r].tolist()) == set(ref.sel[r].tolist()), (
            f"ptopk saturated cluster (layernorm={layernorm}): row {r}: engine picked "
            f"{sorted(got[r].tolist())}, the float64 formula s = z + 1e-4|a| picks "
            f"{sorted(ref.sel[r].tolist())}\n  b_enc of cluster: "
            f"{ {int(base + i): float(stored['b_enc'][base + i]) for i in range(C)} }")
        assert np.array_equal(got[r], ref.sel[r]), (
            f"row {r}: order {got[r].tolist()}, want best first {ref.sel[r].tolist()}")
    rc.check_fixed_k(sparse, ref, "ptopk cluster")
    rc.check_dense(dense["codes"], ref, "ptopk cluster --dense")


def test_ptopk_negative_values_kept(run_success, rng, work):
    """ptopk has no ReLU: f = a at the selected latents, negative a included (large |a|
    with lambda_mag large enough to select it)."""
    d_in, d_sae, n, k = 24, 128, 16, 6
    x = mk.random_input(rng, n, d_in)
    cfg = mk.native_cfg("ptopk", d_in, d_sae, k=k, beta_final=1.0, layernorm=False,
                        lambda_mag=1.0)
    w = mk.random_weights(rng, "ptopk", d_in, d_sae)
    w["b_enc"][:8] = -20.0
    stored = mk.write_native(work / "m", cfg, w)
    ref = check_encode_decode(run_success, work / "m", x, cfg, stored, work,
                              "ptopk lambda_mag=1 negative a")
    assert (ref.f < 0).any(), "test design: some selected a must be negative"


# ----------------------------------------------------------------------------- decode

@pytest.mark.parametrize("form", ["fixed", "csr", "dense"])
def test_decode_handmade_codes(run_success, rng, work, form):
    """decode of code files written by numpy (not by the engine), in each accepted form."""
    d_in, d_sae, n, k = 40, 200, 12, 5
    cfg = mk.native_cfg("topk", d_in, d_sae, k=k)
    w = mk.random_weights(rng, "topk", d_in, d_sae)
    stored = mk.write_native(work / "m", cfg, w)
    f = np.zeros((n, d_sae))
    if form == "fixed":
        idx = np.stack([rng.choice(d_sae, k, replace=False) for _ in range(n)]).astype(np.int32)
        val = (rng.standard_normal((n, k)) * 2).astype(np.float32)
        f[np.arange(n)[:, None], idx] = val
        tensors = {"indices": idx, "values": val}
    elif form == "csr":
        counts = rng.integers(0, 9, size=n)
        counts[3] = 0  # an empty row
        ip = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        idx = np.concatenate([np.sort(rng.choice(d_sae, c, replace=False)) for c in counts]
                             ).astype(np.int32)
        val = (rng.standard_normal(len(idx)) * 2).astype(np.float32)
        for r in range(n):
            f[r, idx[ip[r]:ip[r + 1]]] = val[ip[r]:ip[r + 1]]
        tensors = {"indptr": ip, "indices": idx, "values": val}
    else:
        codes = (rng.standard_normal((n, d_sae)) * (rng.random((n, d_sae)) < 0.1)
                 ).astype(np.float32)
        f = codes.astype(np.float64)
        tensors = {"codes": codes}
    p = work / "codes.safetensors"
    stnp.save_file(tensors, str(p))
    xh = decode_file(run_success, work / "m", p, work)
    rc.check_decode(xh, f, None, stored, f"decode {form}")


# ----------------------------------------------------------------------------- input dtypes

@pytest.mark.parametrize("npdt", ["float64", "float16"])
def test_input_npy_other_float_dtypes(run_success, rng, work, npdt):
    """npy inputs of '<f8' / '<f2' are read and converted to float32."""
    cfg, w, x = make_case(rng, "topk", "none", True, d_in=32, d_sae=128, n=10, k=4)
    stored = mk.write_native(work / "m", cfg, w)
    xx = x.astype(npdt)
    p = work / "x.npy"
    np.save(str(p), xx)
    out = work / "o.safetensors"
    run_success("encode", "--model", work / "m", "--input", p, "--output", out, "--dense")
    ref = sae_ref.encode(xx.astype(np.float32).astype(np.float64), cfg, stored)
    rc.check_dense(stnp.load_file(str(out))["codes"], ref, f"input {npdt}")


# ----------------------------------------------------------------------------- interop

def _interop_case(rng, layout, dtype, work):
    """Writes a checkpoint of the given layout/dtype; returns (dir, ref cfg, stored
    weights in native names, expected inspect fields)."""
    d_in = int(rng.integers(16, 49))
    k = int(rng.integers(2, 12))
    n = int(rng.integers(8, 33))
    x = mk.random_input(rng, n, d_in)
    d = work / f"{layout}_{dtype}"
    if layout == "native":
        arch = {"float32": "ptopk", "float16": "gated", "bfloat16": "jumprelu"}[dtype]
        d_sae = int(rng.integers(64, 257))
        cfg = mk.native_cfg(arch, d_in, d_sae, k=k, apply_b_dec=True, norm="layer_norm",
                            beta_final=0.1, layernorm=True)
        w = mk.random_weights(rng, arch, d_in, d_sae, x=x, cfg=cfg)
        stored = mk.write_native(d, cfg, w, dtype=dtype)
        ref_cfg = cfg
    elif layout == "saelens_flat":
        d_sae = int(rng.integers(64, 257))
        w = mk.random_weights(rng, "topk", d_in, d_sae)
        stored = mk.write_saelens_flat(d, d_in, d_sae, k, w, dtype=dtype,
                                       apply_b_dec=False, norm="none")
        ref_cfg = {"architecture": "topk", "k": k, "apply_b_dec_to_input": False,
                   "normalize_activations": "none"}
    elif layout == "sparsify":
        zero = dtype != "float16"
        d_sae = d_in * int(rng.integers(4, 9)) if zero else int(rng.integers(64, 257))
        w = mk.random_weights(rng, "topk", d_in, d_sae)
        stored = mk.write_sparsify(d, d_in, d_sae, k, w, dtype=dtype, num_latents_zero=zero)
        ref_cfg = mk.sparsify_ref_cfg(k)
    else:
        raise ValueError(layout)
    return d, ref_cfg, stored, x, d_in, d_sae, k


LAYOUTS = ("native", "saelens_flat", "sparsify")


@pytest.mark.parametrize("dtype", mk.DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_interop_load_encode(run_success, rng, work, layout, dtype):
    d, ref_cfg, stored, x, d_in, d_sae, k = _interop_case(rng, layout, dtype, work)
    ctx = f"{layout}/{dtype}"
    arch = sae_ref.canonical_arch(ref_cfg["architecture"])
    # inspect
    r = run_success("inspect", "--model", d)
    try:
        info = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"{ctx}: inspect did not print JSON ({e}):\n{r.stdout[:2000]}")
    assert info.get("d_in") == d_in, f"{ctx}: inspect d_in {info.get('d_in')}, want {d_in}"
    assert info.get("d_sae") == d_sae, f"{ctx}: inspect d_sae {info.get('d_sae')}, want {d_sae}"
    assert sae_ref.canonical_arch(str(info.get("architecture"))) == arch, \
        f"{ctx}: inspect architecture {info.get('architecture')!r}, want {arch!r}"
    if arch in ("topk", "ptopk", "batchtopk"):
        assert info.get("k") == k, f"{ctx}: inspect k {info.get('k')}, want {k}"
    # encode / decode against the reference on the rounded weights
    if layout == "sparsify":
        # sparsify computes relu(encoder(x - b_dec)) then top-k: same values, but the
        # indices of zero-valued picks may differ, so compare values in dense form
        ref = sae_ref.encode(x.astype(np.float64), ref_cfg, stored)
        sparse, dense, sp, dn = encode_files(run_success, d, x, work)
        rc.check_dense(dense["codes"], ref, ctx + " --dense")
        idx, val = sparse["indices"], sparse["values"]
        assert idx.shape == (x.shape[0], k) and val.shape == (x.shape[0], k), \
            f"{ctx}: sparse shapes {idx.shape} {val.shape}"
        sd = sae_ref.dense_from_fixed(idx, val.astype(np.float64), d_sae)
        rc.check_dense(sd.astype(np.float32), ref, ctx + " sparse (dense form)")
        xh = decode_file(run_success, d, sp, work)
        rc.check_decode(xh, sd, ref, stored, ctx + " decode")
    else:
        check_encode_decode(run_success, d, x, ref_cfg, stored, work, ctx)


def _expected_keys(arch):
    arch = sae_ref.canonical_arch(arch)
    if arch == "gated":
        keys = {"W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"}
    else:
        keys = {"W_enc", "b_enc", "W_dec", "b_dec"}
    if arch in ("jumprelu", "batchtopk"):
        keys.add("threshold")
    return keys


def _check_converted(d2: Path, ref_cfg, stored, d_in, d_sae, k, ctx):
    cfg_p = d2 / "cfg.json"
    w_p = d2 / "sae_weights.safetensors"
    assert cfg_p.is_file() and w_p.is_file(), \
        f"{ctx}: convert wrote {sorted(p.name for p in d2.iterdir()) if d2.exists() else 'nothing'}"
    cfg2 = json.loads(cfg_p.read_text())
    arch = sae_ref.canonical_arch(ref_cfg["architecture"])
    assert cfg2.get("d_in") == d_in and cfg2.get("d_sae") == d_sae, \
        f"{ctx}: converted cfg d_in/d_sae {cfg2.get('d_in')}/{cfg2.get('d_sae')}"
    assert sae_ref.canonical_arch(str(cfg2.get("architecture"))) == arch, \
        f"{ctx}: converted architecture {cfg2.get('architecture')!r}, want {arch!r}"
    assert cfg2.get("apply_b_dec_to_input") == bool(ref_cfg.get("apply_b_dec_to_input", True)), \
        f"{ctx}: converted apply_b_dec_to_input {cfg2.get('apply_b_dec_to_input')!r}"
    assert cfg2.get("normalize_activations") == ref_cfg.get("normalize_activations", "none"), \
        f"{ctx}: converted normalize_activations {cfg2.get('normalize_activations')!r}"
    assert isinstance(cfg2.get("dtype"), str), f"{ctx}: converted cfg has no dtype string"
    assert isinstance(cfg2.get("metadata", {}), dict), f"{ctx}: converted cfg metadata not an object"
    if arch in ("topk", "ptopk", "batchtopk"):
        assert cfg2.get("k") == k, f"{ctx}: converted k {cfg2.get('k')}, want {k}"
    if arch == "ptopk":
        for f_ in ("lambda_mag", "beta_final"):
            assert cfg2.get(f_) == pytest.approx(ref_cfg[f_], rel=1e-6), \
                f"{ctx}: converted {f_} {cfg2.get(f_)!r}, want {ref_cfg[f_]!r}"
        assert cfg2.get("layernorm") == ref_cfg["layernorm"], f"{ctx}: converted layernorm"
    if ref_cfg.get("normalize_activations") == "constant_scale":
        assert cfg2.get("normalization_scale") == pytest.approx(
            ref_cfg["normalization_scale"], rel=1e-6), f"{ctx}: converted normalization_scale"
    t = stnp.load_file(str(w_p))     # the real package must read it
    assert set(t) == _expected_keys(arch), \
        f"{ctx}: converted tensors {sorted(t)}, want {sorted(_expected_keys(arch))}"
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, arr in t.items():
        want_shape = shapes.get(name, (d_sae,))
        assert arr.shape == want_shape, f"{ctx}: converted {name} shape {arr.shape}, want {want_shape}"
        assert arr.dtype.kind == "f", f"{ctx}: converted {name} dtype {arr.dtype}"
        src = np.asarray(stored[name], np.float64).astype(np.float32)
        if not np.array_equal(arr.astype(np.float32), src):
            i = np.argwhere(arr.astype(np.float32) != src)[0]
            raise AssertionError(f"{ctx}: converted {name}{tuple(i)} = {arr[tuple(i)]!r}, "
                                 f"source {src[tuple(i)]!r}")


@pytest.mark.parametrize("dtype", mk.DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_interop_convert(run_success, rng, work, layout, dtype):
    d, ref_cfg, stored, x, d_in, d_sae, k = _interop_case(rng, layout, dtype, work)
    ctx = f"convert {layout}/{dtype}"
    d2 = work / "converted"
    run_success("convert", "--model", d, "--output", d2)
    _check_converted(d2, ref_cfg, stored, d_in, d_sae, k, ctx)
    if layout == "sparsify":
        enc_w = stnp.load_file(str(d2 / "sae_weights.safetensors"))["W_enc"]
        raw = stnp.load_file(str(d / "sae.safetensors")) if dtype != "bfloat16" else None
        if raw is not None:
            assert np.array_equal(enc_w, raw["encoder.weight"].astype(np.float32).T), \
                f"{ctx}: W_enc != encoder.weight.T"
    # the converted directory loads and encodes like the source
    ref = sae_ref.encode(x.astype(np.float64), ref_cfg, stored)
    xin = work / "x.npy"
    mk.save_npy(xin, x)
    out = work / "conv_dense.safetensors"
    run_success("encode", "--model", d2, "--input", xin, "--output", out, "--dense")
    rc.check_dense(stnp.load_file(str(out))["codes"], ref, ctx + " re-encode")


@pytest.mark.parametrize("arch", ARCHS)
def test_convert_native_roundtrip_all_archs(run_success, rng, work, arch):
    """native -> convert keeps every architecture's tensors and cfg fields."""
    norm = {"standard": "constant_scale", "topk": "center_unit_norm", "batchtopk": "none",
            "jumprelu": "layer_norm", "gated": "constant_scale", "ptopk": "constant_scale"}[arch]
    cfg, w, x = make_case(rng, arch, norm, arch != "gated", beta_final=0.25, layernorm=False)
    stored = mk.write_native(work / "m", cfg, w)
    d2 = work / "m2"
    run_success("convert", "--model", work / "m", "--output", d2)
    _check_converted(d2, cfg, stored, cfg["d_in"], cfg["d_sae"], cfg.get("k"), f"convert {arch}")
    check_encode_decode(run_success, d2, x, cfg, stored, work, f"converted {arch}/{norm}")
