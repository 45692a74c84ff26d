"""sae_ref.py - an independent numpy reference of the SAE math (DESIGN.md section 3).

Everything is computed in float64 from the weights as stored (float32, or float16 /
bfloat16 values widened exactly), so it is the "real-number formula" the engine is held
to. Nothing here imports or calls the engine.

cfg is a dict in the native (SAELens v6) vocabulary:
    architecture            standard|relu|topk|batchtopk|jumprelu|gated|ptopk
    apply_b_dec_to_input    bool (default True)
    normalize_activations   none|center_unit_norm|layer_norm|constant_scale
    normalization_scale     float c (constant_scale)
    k                       int (topk, ptopk; batchtopk keeps it but infers with thresholds)
    lambda_mag, beta_final, layernorm   (ptopk)
weights is a dict of arrays with the native names and orientation:
    W_enc [d, M], W_dec [M, d], b_dec [d], b_enc [M] (not gated),
    b_gate, b_mag, r_mag [M] (gated), threshold [M] (jumprelu, batchtopk).

Besides the codes, encode() returns what a comparison needs to tell a genuine disagreement
from float32 noise: per latent the selection score (top-k family) or the pre-activation
that is compared with a threshold, and an uncertainty bound for it.
"""
from __future__ import annotations

import numpy as np

LN_EPS = 1e-5
# Relative error allowed to the engine's float32 arithmetic (preprocessing + one GEMM),
# applied to the sum of absolute values that make a pre-activation.
F32_REL = 1e-5

ARCH_ALIASES = {"relu": "standard"}
TOPK_ARCHS = ("topk", "ptopk")          # fixed k entries per row in sparse output
THRESHOLD_ARCHS = ("standard", "jumprelu", "batchtopk", "gated")


def canonical_arch(name: str) -> str:
    return ARCH_ALIASES.get(name, name)


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


# ----------------------------------------------------------------------------- preprocess

def preprocess(x, cfg) -> np.ndarray:
    """x' of DESIGN.md section 3, float64 [N, d]."""
    x = f64(x)
    mode = cfg.get("normalize_activations", "none") or "none"
    if mode == "none":
        return x.copy()
    if mode == "center_unit_norm":
        xc = x - x.mean(axis=1, keepdims=True)
        return xc / np.linalg.norm(xc, axis=1, keepdims=True)
    if mode == "layer_norm":
        mu = x.mean(axis=1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
        return (x - mu) / np.sqrt(var + LN_EPS)
    if mode == "constant_scale":
        return float(cfg["normalization_scale"]) * x
    raise ValueError(f"unknown normalize_activations {mode!r}")


def encoder_input(x, cfg, weights) -> np.ndarray:
    """x~ = x' - b_dec when apply_b_dec_to_input (default true), else x'."""
    xp = preprocess(x, cfg)
    if cfg.get("apply_b_dec_to_input", True):
        xp = xp - f64(weights["b_dec"])[None, :]
    return xp


# ----------------------------------------------------------------------------- helpers

def relu(a):
    return np.maximum(a, 0.0)


def sigmoid(t):
    t = f64(t)
    out = np.empty_like(t)
    pos = t >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-t[pos]))
    e = np.exp(t[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def topk_indices(score, k: int) -> np.ndarray:
    """[N, k] indices of the k largest scores per row, best first; ties go to the lower
    index (a stable sort of -score keeps index order among equal values)."""
    return np.argsort(-f64(score), axis=1, kind="stable")[:, :k]


def affine(xt, W, b):
    """z = xt W + b and its float32 uncertainty bound F32_REL * (|xt| |W| + |b|)."""
    W = f64(W)
    b = f64(b)
    z = xt @ W + b[None, :]
    tol = F32_REL * (np.abs(xt) @ np.abs(W) + np.abs(b)[None, :]) + 1e-30
    return z, tol


def layer_norm_latents(a):
    """LN over the M latents of each row: population variance, eps 1e-5, no affine."""
    mu = a.mean(axis=1, keepdims=True)
    var = ((a - mu) ** 2).mean(axis=1, keepdims=True)
    return (a - mu) / np.sqrt(var + LN_EPS), np.sqrt(var + LN_EPS)


# ----------------------------------------------------------------------------- encode

class Encoded:
    """Result of reference encoding.

    f        [N, M] dense codes
    kind     "topk" (k fixed entries per row) or "threshold"
    k        entries per row (topk kind)
    sel      [N, k] reference selection, best first (topk kind)
    score    [N, M] selection score (topk kind) or the quantity compared with the
             threshold (threshold kind)
    tol      [N, M] uncertainty of score under float32 arithmetic
    cut      [N, M] the threshold each score is compared with (threshold kind)
    value    [N, M] the value a latent takes when it is selected / passes
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def uncertain(self) -> np.ndarray:
        """Latents whose in/out status could flip under float32 noise."""
        if self.kind == "threshold":
            return np.abs(self.score - self.cut) <= self.tol
        # top-k: within tolerance of the boundary between the k-th and (k+1)-th score
        n, m = self.score.shape
        order = np.argsort(-self.score, axis=1, kind="stable")
        rows = np.arange(n)
        kth = order[:, self.k - 1]
        s_k = self.score[rows, kth]
        t_k = self.tol[rows, kth]
        if self.k < m:
            nxt = order[:, self.k]
            s_n = self.score[rows, nxt]
            t_n = self.tol[rows, nxt]
        else:
            s_n = np.full(n, -np.inf)
            t_n = np.zeros(n)
        tb = np.maximum(t_k, t_n)[:, None]
        sel = np.zeros((n, m), bool)
        sel[rows[:, None], self.sel] = True
        # a selected latent is uncertain if it could fall below the best unselected one,
        # an unselected one if it could rise above the k-th selected one
        unc_sel = sel & (self.score - self.tol - tb <= s_n[:, None])
        unc_out = ~sel & (self.score + self.tol + tb >= s_k[:, None])
        return unc_sel | unc_out


def encode(x, cfg, weights) -> Encoded:
    arch = canonical_arch(cfg["architecture"])
    xt = encoder_input(x, cfg, weights)
    n = xt.shape[0]
    rows = np.arange(n)

    if arch == "standard":
        z, tol = affine(xt, weights["W_enc"], weights["b_enc"])
        return Encoded(kind="threshold", f=relu(z), score=z, tol=tol,
                       cut=np.zeros_like(z), value=relu(z), z=z, xt=xt)

    if arch in ("jumprelu", "batchtopk"):
        z, tol = affine(xt, weights["W_enc"], weights["b_enc"])
        theta = np.broadcast_to(f64(weights["threshold"])[None, :], z.shape)
        f = z * (z > theta)
        return Encoded(kind="threshold", f=f, score=z, tol=tol, cut=np.array(theta),
                       value=z, z=z, xt=xt)

    if arch == "gated":
        W = f64(weights["W_enc"])
        pg, tol_g = affine(xt, W, weights["b_gate"])
        W_mag = W * np.exp(f64(weights["r_mag"]))[None, :]
        pm, _ = affine(xt, W_mag, weights["b_mag"])
        f = (pg > 0) * relu(pm)
        return Encoded(kind="threshold", f=f, score=pg, tol=tol_g, cut=np.zeros_like(pg),
                       value=relu(pm), z=pm, xt=xt)

    if arch == "topk":
        k = int(cfg["k"])
        z, tol = affine(xt, weights["W_enc"], weights["b_enc"])
        sel = topk_indices(z, k)
        f = np.zeros_like(z)
        f[rows[:, None], sel] = relu(z[rows[:, None], sel])
        return Encoded(kind="topk", k=k, f=f, sel=sel, score=z, tol=tol, value=relu(z),
                       z=z, xt=xt)

    if arch == "ptopk":
        k = int(cfg["k"])
        lam = float(cfg.get("lambda_mag", 1e-4))
        beta = float(cfg["beta_final"])
        a, tol_a = affine(xt, weights["W_enc"], weights["b_enc"])
        if cfg.get("layernorm", True):
            l, sd = layer_norm_latents(a)
            ta = tol_a.max(axis=1, keepdims=True)
            tol_l = (tol_a + ta * (1.0 + np.abs(l))) / sd
        else:
            l, tol_l = a, tol_a
        z = sigmoid(l / beta)
        s = z + lam * np.abs(a)
        # exact interval of z over l +- tol_l (sigmoid is monotone), plus the |a| term
        z_hi = sigmoid((l + tol_l) / beta)
        z_lo = sigmoid((l - tol_l) / beta)
        tol_s = np.maximum(z_hi - z, z - z_lo) + lam * tol_a + 1e-300
        sel = topk_indices(s, k)
        f = np.zeros_like(a)
        f[rows[:, None], sel] = a[rows[:, None], sel]
        return Encoded(kind="topk", k=k, f=f, sel=sel, score=s, tol=tol_s, value=a,
                       z=z, a=a, l=l, xt=xt)

    raise ValueError(f"unknown architecture {arch!r}")


def selection_score(x, cfg, weights) -> np.ndarray:
    """Per-latent selection score [N, M] (top-k family) or pre-activation (others)."""
    return encode(x, cfg, weights).score


# ----------------------------------------------------------------------------- decode

def decode(f, weights) -> np.ndarray:
    """x^' = f W_dec + b_dec (dense; the engine decodes sparsely, same value)."""
    return f64(f) @ f64(weights["W_dec"]) + f64(weights["b_dec"])[None, :]


def dense_from_csr(indptr, indices, values, n_rows, d_sae) -> np.ndarray:
    f = np.zeros((n_rows, d_sae))
    for r in range(n_rows):
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        f[r, indices[lo:hi]] = values[lo:hi]
    return f


def dense_from_fixed(indices, values, d_sae) -> np.ndarray:
    n = indices.shape[0]
    f = np.zeros((n, d_sae))
    f[np.arange(n)[:, None], indices] = values
    return f
