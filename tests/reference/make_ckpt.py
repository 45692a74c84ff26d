"""make_ckpt.py - checkpoint directories written with the real `safetensors` package.

Three layouts:
  native / SAELens v6   cfg.json + sae_weights.safetensors
  SAELens flat (older)  cfg.json with architecture "standard" + activation_fn_str "topk" and
                        activation_fn_kwargs {"k": K}; same weights file
  EleutherAI sparsify   cfg.json {expansion_factor, normalize_decoder, num_latents, k, ...}
                        + sae.safetensors (encoder.weight [M, d], encoder.bias, W_dec, b_dec)

Weights can be stored as float32, float16 or bfloat16. float32 / float16 go through
safetensors.numpy.save_file. numpy has no bfloat16 (ml_dtypes is not a dependency), so
bfloat16 goes through the package's own serializer, safetensors.serialize_file, with a
TensorSpec of dtype "bfloat16" over the raw uint16 bits we rounded (round to nearest even).
Either way the file is written by the real package, not by hand.

Every writer returns the weights as the engine will see them (float64 of the stored,
rounded values) in native names/orientation, so the reference uses exactly those.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy as stnp

import sae_ref

DTYPES = ("float32", "float16", "bfloat16")


# ----------------------------------------------------------------------------- dtypes

def bf16_bits(a) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (finite input)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def bf16_to_f32(bits) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def round_to(a, dtype: str) -> np.ndarray:
    """The float64 values the stored dtype holds for a."""
    a32 = np.asarray(a, dtype=np.float32)
    if dtype == "float32":
        return a32.astype(np.float64)
    if dtype == "float16":
        return a32.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        return bf16_to_f32(bf16_bits(a32)).astype(np.float64)
    raise ValueError(dtype)


def save_tensors(path, tensors: dict, dtype: str = "float32", metadata=None) -> dict:
    """Writes tensors (name -> float array) with the real safetensors package in the
    given dtype; returns name -> float64 of the stored values."""
    path = str(path)
    out = {}
    if dtype in ("float32", "float16"):
        npdt = np.float32 if dtype == "float32" else np.float16
        arrs = {n: np.ascontiguousarray(np.asarray(v, dtype=np.float32).astype(npdt))
                for n, v in tensors.items()}
        stnp.save_file(arrs, path, metadata=metadata)
        for n, v in arrs.items():
            out[n] = v.astype(np.float64)
        return out
    if dtype == "bfloat16":
        keep = {}
        specs = {}
        for n, v in tensors.items():
            bits = np.ascontiguousarray(bf16_bits(v))
            keep[n] = bits
            specs[n] = safetensors.TensorSpec(dtype="bfloat16", shape=list(bits.shape),
                                              data_ptr=bits.ctypes.data, data_len=bits.nbytes)
            out[n] = bf16_to_f32(bits).astype(np.float64)
        safetensors.serialize_file(specs, path, metadata=metadata)
        del keep
        return out
    raise ValueError(f"unsupported dtype {dtype}")


# ----------------------------------------------------------------------------- weights

def random_weights(rng, arch: str, d_in: int, d_sae: int, *, x=None, cfg=None,
                   fire_quantile=(0.5, 0.95)) -> dict:
    """Gaussian weights (float32) in native names; W_dec rows unit norm; b_dec small.
    For jumprelu/batchtopk, thresholds are per-latent quantiles of the pre-activation over
    the rows x (with cfg's preprocessing), so some latents fire on x."""
    arch = sae_ref.canonical_arch(arch)
    W_dec = rng.standard_normal((d_sae, d_in))
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    W_enc = 0.8 * W_dec.T + 0.6 * rng.standard_normal((d_in, d_sae)) / np.sqrt(d_in)
    w = {
        "W_enc": W_enc.astype(np.float32),
        "W_dec": W_dec.astype(np.float32),
        "b_dec": (0.1 * rng.standard_normal(d_in)).astype(np.float32),
    }
    if arch == "gated":
        w["b_gate"] = (0.1 * rng.standard_normal(d_sae)).astype(np.float32)
        w["b_mag"] = (0.1 * rng.standard_normal(d_sae)).astype(np.float32)
        w["r_mag"] = (0.2 * rng.standard_normal(d_sae)).astype(np.float32)
    else:
        w["b_enc"] = (0.1 * rng.standard_normal(d_sae) - 0.02).astype(np.float32)
    if arch in ("jumprelu", "batchtopk"):
        if x is not None and cfg is not None:
            xt = sae_ref.encoder_input(x, cfg, {k: v.astype(np.float64) for k, v in w.items()})
            z = xt @ w["W_enc"].astype(np.float64) + w["b_enc"].astype(np.float64)
            q = rng.uniform(*fire_quantile, size=d_sae)
            th = np.array([np.quantile(z[:, i], q[i]) for i in range(d_sae)])
            th = np.maximum(th, 1e-3)
        else:
            th = np.abs(0.05 * rng.standard_normal(d_sae)) + 1e-3
        w["threshold"] = th.astype(np.float32)
    return w


def random_input(rng, n: int, d_in: int, *, offset=0.5, scale=2.0) -> np.ndarray:
    """float32 [n, d_in] with per-row scale and mean offset (exercises preprocessing)."""
    row_scale = scale * rng.uniform(0.5, 1.5, size=(n, 1))
    row_off = offset * rng.standard_normal((n, 1))
    return (rng.standard_normal((n, d_in)) * row_scale + row_off).astype(np.float32)


def save_npy(path, x) -> None:
    np.save(str(path), np.ascontiguousarray(x))


# ----------------------------------------------------------------------------- layouts

def native_cfg(arch: str, d_in: int, d_sae: int, *, k=None, apply_b_dec=True,
               norm="none", scale=None, lambda_mag=1e-4, beta_final=None, layernorm=True,
               dtype="float32") -> dict:
    cfg = {
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": dtype,
        "architecture": arch,
        "apply_b_dec_to_input": bool(apply_b_dec),
        "normalize_activations": norm,
        "metadata": {"model_name": "test-model", "hook_name": "blocks.0.hook_resid_post",
                     "context_size": 128},
    }
    if sae_ref.canonical_arch(arch) in ("topk", "batchtopk", "ptopk"):
        cfg["k"] = int(k)
    if sae_ref.canonical_arch(arch) == "ptopk":
        cfg["lambda_mag"] = float(lambda_mag)
        cfg["beta_final"] = float(beta_final)
        cfg["layernorm"] = bool(layernorm)
    if norm == "constant_scale":
        cfg["normalization_scale"] = float(scale)
    return cfg


def _write_json(path, obj) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)


def write_native(dirpath, cfg: dict, weights: dict, dtype: str = "float32") -> dict:
    """Native / SAELens v6 directory. Returns the stored weights (float64)."""
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg)
    cfg["dtype"] = dtype
    _write_json(d / "cfg.json", cfg)
    return save_tensors(d / "sae_weights.safetensors", weights, dtype)


def write_saelens_flat(dirpath, d_in: int, d_sae: int, k: int, weights: dict,
                       dtype: str = "float32", apply_b_dec=True, norm="none",
                       activation="topk") -> dict:
    """Older SAELens flat cfg: architecture "standard" + activation_fn_str."""
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {
        "architecture": "standard",
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": dtype,
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_name": "blocks.3.hook_resid_pre",
        "hook_layer": 3,
        "hook_head_index": None,
        "context_size": 128,
        "activation_fn_str": activation,
        "apply_b_dec_to_input": bool(apply_b_dec),
        "finetuning_scaling_factor": False,
        "normalize_activations": norm,
        "prepend_bos": True,
        "dataset_path": "",
        "sae_lens_training_version": "3.0.0",
    }
    if activation == "topk":
        cfg["activation_fn_kwargs"] = {"k": int(k)}
    else:
        cfg["activation_fn_kwargs"] = {}
    _write_json(d / "cfg.json", cfg)
    return save_tensors(d / "sae_weights.safetensors", weights, dtype)


def write_sparsify(dirpath, d_in: int, d_sae: int, k: int, weights: dict,
                   dtype: str = "float32", num_latents_zero: bool = False) -> dict:
    """EleutherAI sparsify directory. weights in native names (W_enc [d, M], b_enc, W_dec,
    b_dec); written as encoder.weight = W_enc.T [M, d], encoder.bias, W_dec, b_dec.
    Returns the stored weights in native names/orientation (float64)."""
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    if num_latents_zero:
        assert d_sae % d_in == 0
        cfg = {"expansion_factor": d_sae // d_in, "normalize_decoder": True,
               "num_latents": 0, "k": int(k), "multi_topk": False,
               "skip_connection": False, "d_in": int(d_in)}
    else:
        cfg = {"expansion_factor": 32, "normalize_decoder": True, "num_latents": int(d_sae),
               "k": int(k), "multi_topk": False, "skip_connection": False, "d_in": int(d_in)}
    _write_json(d / "cfg.json", cfg)
    st = {
        "encoder.weight": np.ascontiguousarray(np.asarray(weights["W_enc"]).T),
        "encoder.bias": weights["b_enc"],
        "W_dec": weights["W_dec"],
        "b_dec": weights["b_dec"],
    }
    stored = save_tensors(d / "sae.safetensors", st, dtype)
    return {
        "W_enc": np.ascontiguousarray(stored["encoder.weight"].T),
        "b_enc": stored["encoder.bias"],
        "W_dec": stored["W_dec"],
        "b_dec": stored["b_dec"],
    }


def sparsify_ref_cfg(k: int) -> dict:
    """What a sparsify checkpoint means in the reference's vocabulary."""
    return {"architecture": "topk", "k": int(k), "apply_b_dec_to_input": True,
            "normalize_activations": "none"}


def ensure_dir(p) -> str:
    os.makedirs(p, exist_ok=True)
    return str(p)
