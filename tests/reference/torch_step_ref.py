"""torch_step_ref.py - an independent PyTorch reference of one training step (DESIGN.md
section 3), in float64, with autograd for the gradients and torch.optim.Adam for the update.

Run by tests/reference/test_train_torch.py under Debian's /usr/bin/python3 (python3-torch),
which has numpy and torch but not safetensors: everything comes in as .npy / JSON and goes
out as one .npz.

    /usr/bin/python3 torch_step_ref.py CASE_DIR OUT.npz
    /usr/bin/python3 torch_step_ref.py --philox KEY0 KEY1 C0 C1 C2 C3 [KEY0 KEY1 C0 ...]

CASE_DIR holds
    case.json   {"cfg": {"architecture", "apply_b_dec_to_input", "normalize_activations",
                          "normalization_scale"},
                 "options": the train_options (train_options_to_json's names),
                 "state": {"step", "tokens", "theta"} (optional: a loaded training state),
                 "steps": S}
    x.npy       float32 [S * batch, d_in]; step s uses rows [s B, (s + 1) B)
    <name>.npy  float32 weights in native names/orientation: W_enc [d, M], W_dec [M, d], b_dec,
                b_enc | b_gate, b_mag, r_mag, threshold (batchtopk)
    adam_m.<name>.npy, adam_v.<name>.npy, last_fired.npy  (with "state"; trainer names, flat)
OUT.npz holds
    grad.stats [loss, mse, fvu, l0, aux_loss, lr, beta]; grad.<trainer name>: the gradients of
    the loss on batch 0 (W_enc_T [M, d] flattened like the trainer's), before anything else;
    step<N>.<native name>, step<N>.adam_m.<trainer name>, step<N>.adam_v.<...>,
    step<N>.last_fired, step<N>.theta, step<N>.stats [loss, mse, grad_norm, lr, beta, l0]:
    after step N (1-based) of the run;
    slack<N>: per step (N = 0 for batch 0), the smallest distance of a selection decision
    (top-k boundary, ReLU / gate sign) from flipping, less the float32 uncertainty of the
    quantities compared; a non-positive value means the engine may legitimately choose
    otherwise (a near-tie), and the case should not be compared.

The recipe as implemented here, from DESIGN.md section 3:
    x' = preprocess(x); x~ = x' - b_dec (apply_b_dec_to_input) else x'
    topk:      a = x~ W_enc + b_enc; the k largest a per row (ties: lower index); f = ReLU(a)
    ptopk:     a as topk; l = LN(a) over the M latents (eps 1e-5, no affine) or a;
               u = Philox4x32-10 draw keyed (seed, step, row, latent); g = log u - log(1-u)
               (0 with sigmoid_gate); z = sigmoid((l + g) / beta); s = z + lambda_mag |a|;
               top-k of s; f = a at the kept latents; gradient only through a there
    batchtopk: the k B largest ReLU(a) > 0 over the whole batch; f = ReLU(a) there
    standard:  f = ReLU(a)
    gated:     pi_gate = x~ W_enc + b_gate; pi_mag = x~ (W_enc * exp(r_mag)) + b_mag;
               f = 1[pi_gate > 0] ReLU(pi_mag)
    x^' = f W_dec + b_dec;  mse = mean_b sum_j (x' - x^')^2
    standard:  loss = mse + l1 mean_b sum_i f_i ||W_dec,i||
    gated:     loss = mse + l1 mean_b sum_i ReLU(pi_gate)_i ||W_dec,i||
                      + mean_b ||x' - (ReLU(pi_gate) sg(W_dec) + sg(b_dec))||^2  (sg: frozen)
    topk+AuxK: dead = tokens - last_fired > dead_window; k_aux = min(#dead, d // 2);
               e = sg(x' - x^'); e^ = sum over the k_aux largest a among dead latents of
               ReLU(a) W_dec,i (no bias);
               loss = mse + auxk_coef ||e^ - e||^2 / ||e - mean_batch(e)||^2
    step: gradients by autograd; top-k family: W_dec rows' gradient loses its component along
    the row; global grad-norm clip at `clip`; torch.optim.Adam(betas, eps) at
    lr_t = lr (t + 1) / warmup during warmup, then lr (1 + cos(pi (t - w) / (T - w))) / 2;
    top-k family: W_dec rows renormalised; batchtopk: theta = min kept value at step 0, then
    theta += rate (min kept - theta), every threshold = theta; latents with a non-zero code
    fired at tokens + B. beta_t = beta0 through warmup, then beta0 (betaT / beta0)^((t-w)/(T-w)).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

torch = None    # imported by run(): --philox needs numpy only
LN_EPS = 1e-5
TOPK_FAMILY = ("topk", "ptopk", "batchtopk")
# trainer name -> native name, and whether the trainer stores it transposed
TRAINER_NAMES = {"W_enc_T": ("W_enc", True), "W_dec": ("W_dec", False),
                 "b_dec": ("b_dec", False), "b_enc": ("b_enc", False),
                 "b_gate": ("b_gate", False), "b_mag": ("b_mag", False),
                 "r_mag": ("r_mag", False)}

# ----------------------------------------------------------------------------- Philox4x32-10

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr, key):
    """Philox4x32-10 (Salmon et al. 2011, as in Random123) on arrays of counters.
    ctr: 4 arrays (or ints) of uint32 words, key: 2. Returns 4 uint64 arrays of 32-bit words."""
    c = [np.asarray(w, dtype=np.uint64) & MASK32 for w in ctr]
    k0 = np.asarray(key[0], dtype=np.uint64) & MASK32
    k1 = np.asarray(key[1], dtype=np.uint64) & MASK32
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    for r in range(10):
        if r > 0:
            k0 = (k0 + np.uint64(PHILOX_W0)) & MASK32
            k1 = (k1 + np.uint64(PHILOX_W1)) & MASK32
        p0 = m0 * c[0]          # < 2^64: exact in uint64
        p1 = m1 * c[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & MASK32
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
    return c


def ptopk_noise(seed: int, step: int, B: int, M: int) -> np.ndarray:
    """g = log u - log(1 - u) [B, M], u = ((r >> 8) + 0.5) / 2^24, r = word latent % 4 of
    Philox(key = (seed lo, seed hi), counter = (latent / 4, row, step lo, step hi))."""
    lat = np.arange(M, dtype=np.uint64)
    row = np.arange(B, dtype=np.uint64)
    C0 = np.broadcast_to((lat // np.uint64(4))[None, :], (B, M))
    C1 = np.broadcast_to(row[:, None], (B, M))
    C2 = np.full((B, M), step & 0xFFFFFFFF, dtype=np.uint64)
    C3 = np.full((B, M), (step >> 32) & 0xFFFFFFFF, dtype=np.uint64)
    words = philox4x32_10([C0, C1, C2, C3], [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])
    sel = (lat % np.uint64(4)).astype(np.int64)
    r = np.choose(np.broadcast_to(sel[None, :], (B, M)), words)
    u = ((r >> np.uint64(8)).astype(np.float64) + 0.5) / float(1 << 24)
    return np.log(u) - np.log1p(-u)


# ----------------------------------------------------------------------------- schedules

def warmup_of(o) -> int:
    w = int(o["warmup"])
    return w if w >= 0 else min(20000, int(o["steps"]) // 10)


def lr_at(o, step: int) -> float:
    lr, w, T = float(o["lr"]), warmup_of(o), int(o["steps"])
    if step < w:
        return lr * (step + 1) / w
    if T <= w:
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - w) / (T - w)))


def beta_at(o, step: int) -> float:
    b0, bT, w, T = float(o["beta0"]), float(o["beta_end"]), warmup_of(o), int(o["steps"])
    if step < w or T <= w:
        return b0
    return b0 * (bT / b0) ** ((step - w) / (T - w))


def dead_window_of(o) -> int:
    w = int(o["dead_window"])
    return w if w >= 0 else min(10_000_000, int(o["steps"]) * int(o["batch"]) // 4)


# ----------------------------------------------------------------------------- forward

def preprocess(x, cfg):
    mode = cfg.get("normalize_activations", "none")
    if mode == "none":
        return x.clone()
    if mode == "center_unit_norm":
        xc = x - x.mean(dim=1, keepdim=True)
        return xc / xc.norm(dim=1, keepdim=True)
    if mode == "layer_norm":
        mu = x.mean(dim=1, keepdim=True)
        var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
        return (x - mu) / torch.sqrt(var + LN_EPS)
    if mode == "constant_scale":
        return float(cfg["normalization_scale"]) * x
    raise ValueError(mode)


def topk_mask(scores: np.ndarray, k: int):
    """Boolean [B, M] of the k largest per row (ties toward the lower index), and the
    per-row gap between the k-th and (k+1)-th score (inf when k == M)."""
    B, M = scores.shape
    order = np.lexsort((np.broadcast_to(np.arange(M), (B, M)), -scores), axis=1)
    mask = np.zeros((B, M), dtype=bool)
    np.put_along_axis(mask, order[:, :k], True, axis=1)
    return mask, order


def selection_slack(scores, unc, mask):
    """Smallest (min kept (s - unc)) - (max dropped (s + unc)) over rows (mask: kept)."""
    lo = np.where(mask, scores - unc, np.inf).min(axis=1)
    hi = np.where(mask, -np.inf, scores + unc).max(axis=1)
    return float(np.min(lo - hi))


def sign_slack(v, unc):
    """Smallest |v| - unc: how far a sign (ReLU, gate) is from flipping."""
    return float(np.min(np.abs(v) - unc)) if v.size else math.inf


def f32_uncertainty(xt, W, bias):
    """Bound on the float32 error of x~ W + b computed by the engine (as sae_ref's F32_REL):
    1e-5 of the sum of absolute terms."""
    return 1e-5 * (np.abs(xt) @ np.abs(W) + np.abs(bias)[None, :] + 1e-6)


def forward(P, x, cfg, o, st):
    """Loss and what the step needs. P: dict of leaf tensors (native names)."""
    arch = cfg["architecture"]
    B, d = x.shape
    M = int(o["d_sae"])
    xp = preprocess(x, cfg)
    xt = xp - P["b_dec"] if cfg.get("apply_b_dec_to_input", True) else xp
    xt_np = xt.detach().numpy()
    out = {"xp": xp}
    slack = math.inf
    if arch == "gated":
        pg = xt @ P["W_enc"] + P["b_gate"]
        W_mag = P["W_enc"] * torch.exp(P["r_mag"])[None, :]
        pm = xt @ W_mag + P["b_mag"]
        gate = (pg > 0).to(pg.dtype)
        f = gate * torch.relu(pm)
        pg_np, pm_np = pg.detach().numpy(), pm.detach().numpy()
        slack = min(sign_slack(pg_np, f32_uncertainty(xt_np, P["W_enc"].detach().numpy(),
                                                       P["b_gate"].detach().numpy())),
                    sign_slack(pm_np[pg_np > 0], f32_uncertainty(
                        xt_np, W_mag.detach().numpy(), P["b_mag"].detach().numpy())[pg_np > 0]))
        fired = (pg_np > 0) & (pm_np > 0)
    else:
        a = xt @ P["W_enc"] + P["b_enc"]
        a_np = a.detach().numpy()
        unc = f32_uncertainty(xt_np, P["W_enc"].detach().numpy(), P["b_enc"].detach().numpy())
        k = int(o["k"])
        if arch == "standard":
            f = torch.relu(a)
            slack = sign_slack(a_np, unc)
            fired = a_np > 0
        elif arch == "topk":
            mask, _ = topk_mask(a_np, k)
            f = torch.relu(a) * torch.from_numpy(mask.astype(np.float64))
            slack = min(selection_slack(a_np, unc, mask), sign_slack(a_np[mask], unc[mask]))
            fired = mask & (a_np > 0)
        elif arch == "batchtopk":
            r = np.maximum(a_np, 0.0).ravel()
            keep = k * B
            order = np.lexsort((np.arange(B * M), -r))
            kept = np.zeros(B * M, dtype=bool)
            kept[order[:keep]] = True
            kept &= r > 0
            mask = kept.reshape(B, M)
            f = torch.relu(a) * torch.from_numpy(mask.astype(np.float64))
            u = unc.ravel()
            lo = np.min(np.where(kept, r - u, np.inf))
            hi = np.max(np.where(kept, -np.inf, r + u))
            slack = min(float(lo - max(hi, 0.0)), sign_slack(a_np[mask], unc[mask]))
            out["min_kept"] = float(r[kept].min()) if kept.any() else math.nan
            fired = mask
        elif arch == "ptopk":
            lam = 0.0 if o["no_magnitude"] else float(o["lambda_mag"])
            beta = beta_at(o, st["step"])
            if o["no_layernorm"]:
                l_np, dl = a_np, np.ones_like(a_np)
            else:
                mu = a_np.mean(axis=1, keepdims=True)
                var = ((a_np - mu) ** 2).mean(axis=1, keepdims=True)
                rstd = 1.0 / np.sqrt(var + LN_EPS)
                l_np, dl = (a_np - mu) * rstd, np.broadcast_to(rstd, a_np.shape)
            g = (np.zeros_like(a_np) if o["sigmoid_gate"]
                 else ptopk_noise(int(o["seed"]), st["step"], B, M))
            t = (l_np + g) / beta
            z = 1.0 / (1.0 + np.exp(-np.clip(t, -700, 700)))
            s = z + lam * np.abs(a_np)
            # ds/da ~ z (1 - z) / beta * dl/da + lam; uncertainty of a times that, plus
            # the LN statistics' share (a few unc's of the row)
            dz = z * (1.0 - z) / beta
            s_unc = (dz * dl + lam) * (unc + unc.mean(axis=1, keepdims=True) * 4)
            mask, _ = topk_mask(s, k)
            f = a * torch.from_numpy(mask.astype(np.float64))
            slack = selection_slack(s, s_unc + 1e-12, mask)
            fired = mask & (a_np != 0)
        else:
            raise ValueError(arch)
    xh = f @ P["W_dec"] + P["b_dec"]
    err = xp - xh
    mse = (err ** 2).sum(dim=1).mean()
    loss = mse
    aux = torch.zeros(())
    norms = P["W_dec"].norm(dim=1)
    l1 = float(o["l1_coef"])
    if arch == "standard":
        loss = loss + l1 * (f * norms[None, :]).sum(dim=1).mean()
    elif arch == "gated":
        rg = torch.relu(pg)
        loss = loss + l1 * (rg * norms[None, :]).sum(dim=1).mean()
        x_frozen = rg @ P["W_dec"].detach() + P["b_dec"].detach()
        aux = ((xp - x_frozen) ** 2).sum(dim=1).mean()
        loss = loss + aux
    elif arch == "topk" and o["auxk"]:
        dead = (st["tokens"] - st["last_fired"]) > dead_window_of(o)
        k_aux = int(min(int(dead.sum()), d // 2))
        if k_aux > 0:
            e = err.detach()
            scores = np.where(dead[None, :], a_np, -np.inf)
            amask, _ = topk_mask(scores, k_aux)
            fa = torch.relu(a) * torch.from_numpy(amask.astype(np.float64))
            ehat = fa @ P["W_dec"]
            denom = ((e - e.mean(dim=0, keepdim=True)) ** 2).sum()
            if float(denom) > 0:
                aux = float(o["auxk_coef"]) * ((ehat - e) ** 2).sum() / denom
                loss = loss + aux
            # the dead latents' order and signs matter too
            dunc = np.where(dead[None, :], unc, 0.0)
            slack = min(slack, selection_slack(np.where(dead[None, :], a_np, -1e300), dunc,
                                               amask),
                        sign_slack(a_np[amask], unc[amask]))
    var = ((xp - xp.mean(dim=0, keepdim=True)) ** 2).sum()
    out.update(loss=loss, mse=mse, aux=aux, f=f, fired=fired.any(axis=0), slack=slack,
               fvu=float(((err ** 2).sum() / var).detach()) if float(var) > 0 else 0.0,
               l0=float((f.detach() != 0).sum()) / B)
    return out


# ----------------------------------------------------------------------------- the run

def trainer_names(cfg):
    arch = cfg["architecture"]
    names = ["W_enc_T", "W_dec", "b_dec"]
    names += ["b_gate", "b_mag", "r_mag"] if arch == "gated" else ["b_enc"]
    return names


def to_trainer(name, t):
    native, transposed = TRAINER_NAMES[name]
    a = t.detach().numpy()
    return (a.T if transposed else a).reshape(-1).copy()


def from_trainer(name, flat, P):
    native, transposed = TRAINER_NAMES[name]
    shape = P[native].shape
    if transposed:
        return torch.from_numpy(flat.reshape(shape[1], shape[0]).T.copy())
    return torch.from_numpy(flat.reshape(shape).copy())


def load_params(case: Path, cfg):
    arch = cfg["architecture"]
    names = ["W_enc", "W_dec", "b_dec"] + (["b_gate", "b_mag", "r_mag"] if arch == "gated"
                                           else ["b_enc"])
    P = {n: torch.from_numpy(np.load(case / f"{n}.npy").astype(np.float64)).requires_grad_()
         for n in names}
    thr = case / "threshold.npy"
    threshold = np.load(thr).astype(np.float64) if thr.exists() else None
    return P, threshold


def run(case: Path, out_path: Path) -> None:
    global torch
    import torch as _torch
    torch = _torch
    torch.set_default_dtype(torch.float64)
    spec = json.loads((case / "case.json").read_text())
    cfg, o = spec["cfg"], spec["options"]
    S = int(spec["steps"])
    arch = cfg["architecture"]
    B = int(o["batch"])
    M = int(o["d_sae"])
    x_all = torch.from_numpy(np.load(case / "x.npy").astype(np.float64))
    P, threshold = load_params(case, cfg)
    state = spec.get("state") or {}
    st = {"step": int(state.get("step", 0)), "tokens": int(state.get("tokens", 0)),
          "theta": float(state.get("theta", threshold[0] if threshold is not None else 0.0)),
          "last_fired": (np.load(case / "last_fired.npy").astype(np.int64)
                         if state else np.zeros(M, dtype=np.int64))}
    names = trainer_names(cfg)
    res = {}

    # 1. loss and gradients on batch 0
    fw = forward(P, x_all[:B], cfg, o, st)
    leaves = [P[TRAINER_NAMES[n][0]] for n in names]
    grads = torch.autograd.grad(fw["loss"], leaves)
    for n, g in zip(names, grads):
        res[f"grad.{n}"] = to_trainer(n, g)
    res["grad.stats"] = np.array([float(fw["loss"]), float(fw["mse"]), fw["fvu"], fw["l0"],
                                  float(fw["aux"]), lr_at(o, st["step"]), beta_at(o, st["step"])])
    res["slack0"] = np.array(fw["slack"])

    # 2. the steps
    opt = torch.optim.Adam(leaves, lr=float(o["lr"]),
                           betas=(float(o["adam_beta1"]), float(o["adam_beta2"])),
                           eps=float(o["adam_eps"]))
    if state:
        for n, p in zip(names, leaves):
            m = np.load(case / f"adam_m.{n}.npy").astype(np.float64)
            v = np.load(case / f"adam_v.{n}.npy").astype(np.float64)
            opt.state[p] = {"step": torch.tensor(float(st["step"])),
                            "exp_avg": from_trainer(n, m, P),
                            "exp_avg_sq": from_trainer(n, v, P)}
    for s in range(S):
        x = x_all[s * B:(s + 1) * B]
        fw = forward(P, x, cfg, o, st)
        res[f"slack{s + 1}"] = np.array(fw["slack"])
        grads = list(torch.autograd.grad(fw["loss"], leaves))
        if arch in TOPK_FAMILY:
            i = names.index("W_dec")
            W = P["W_dec"].detach()
            grads[i] = grads[i] - (grads[i] * W).sum(dim=1, keepdim=True) * W
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
        if norm > float(o["clip"]):
            grads = [g * (float(o["clip"]) / norm) for g in grads]
        lr = lr_at(o, st["step"])
        for group in opt.param_groups:
            group["lr"] = lr
        for p, g in zip(leaves, grads):
            p.grad = g.clone()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            if arch in TOPK_FAMILY:
                P["W_dec"] /= P["W_dec"].norm(dim=1, keepdim=True)
        if arch == "batchtopk" and not math.isnan(fw.get("min_kept", math.nan)):
            rate = 1.0 if st["step"] == 0 else float(o["threshold_rate"])
            st["theta"] = (1.0 - rate) * st["theta"] + rate * fw["min_kept"]
        st["last_fired"] = np.where(fw["fired"], st["tokens"] + B, st["last_fired"])
        res[f"step{s + 1}.stats"] = np.array([float(fw["loss"]), float(fw["mse"]), norm, lr,
                                              beta_at(o, st["step"]), fw["l0"]])
        st["tokens"] += B
        st["step"] += 1
        for n, p in P.items():
            res[f"step{s + 1}.{n}"] = p.detach().numpy().copy()
        for n, p in zip(names, leaves):
            res[f"step{s + 1}.adam_m.{n}"] = to_trainer(n, opt.state[p]["exp_avg"])
            res[f"step{s + 1}.adam_v.{n}"] = to_trainer(n, opt.state[p]["exp_avg_sq"])
        res[f"step{s + 1}.last_fired"] = st["last_fired"].copy()
        res[f"step{s + 1}.theta"] = np.array(st["theta"])
    np.savez(out_path, **res)


def main(argv) -> int:
    if len(argv) >= 8 and argv[1] == "--philox" and (len(argv) - 2) % 6 == 0:
        v = [int(a, 0) for a in argv[2:]]
        for q in range(0, len(v), 6):
            words = philox4x32_10(v[q + 2:q + 6], v[q:q + 2])
            print(" ".join(f"{int(w):08x}" for w in words))
        return 0
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    run(Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
