#!/usr/bin/env python3
"""paper.py - the seed paper's experiments on corpora we can make here.

Synthetic mode (default): writes one corpus with `saectl synth` (a known
dictionary), trains the grid (ptopk / topk / topk+AuxK at k = 4, 8, 16, 32,
ReLU and Gated at calibrated sparsity coefficients, the ptopk ablations at
k = 8, 16, 32, the temperature sweep beta0 in {0.5, 1, 5, 10} at k = 8 and 32;
SEEDS seeds each), evaluates every model on held-out tokens against the true
dictionary, and writes a markdown table, a JSON summary and SVG figures.

Real mode (--corpus DIR): the same grid on a real activation corpus at the
paper's settings (d_sae = 16 d_in, batch 8192, 20k warmup steps); no truth, so
no mmcs / recovered. The last shard is held out when there are two or more.

Jobs run JOBS at a time (default 2, one OpenMP thread each: on the 2-core
machine two single-threaded runs beat one run on two threads). A finished run
(eval.json present) is not redone, so an interrupted run resumes.
Environment overrides for quick tests: PAPER_STEPS, PAPER_BATCH, PAPER_WARMUP,
PAPER_SEEDS, PAPER_TOKENS (synthetic corpus size), PAPER_EVAL_TOKENS.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import svgplot  # noqa: E402

# --- the synthetic corpus (see docs/paper.md for why these values) -----------
SYNTH = dict(d_in=64, features=256, zipf=1.3, noise=0.05, k_mean=5, seed=7)
SYNTH_TRAIN_SHARDS = 5          # shards of SHARD_TOKENS rows; one more is held out
SHARD_TOKENS = 100000
D_SAE_SYNTH = 1024              # 16 x d_in, 4 x the true features
STEPS_SYNTH, BATCH_SYNTH, LR_SYNTH = 2000, 512, 2e-3

KS = [4, 8, 16, 32]
KS_REAL = [4, 8, 16, 24, 32]
ABL_KS = [8, 16, 32]
TEMP_KS = [8, 32]
BETA0S = [0.5, 1.0, 5.0, 10.0]
# ReLU / Gated sparsity coefficients: picked by `--calibrate` on the synthetic
# corpus so that L0 lands near 4, 8, 16, 32 (table in docs/paper.md).
L1_SYNTH = {"standard": [0.53, 0.36, 0.24, 0.13], "gated": [1.3, 1.18, 1.06, 0.95]}
CAL_COEFS = {"standard": [0.02, 0.06, 0.2, 0.6, 2.0], "gated": [0.02, 0.3, 1.0, 1.3, 1.6, 2.0, 3.0]}
# Real corpora: a log sweep (a Pareto front needs no matched L0s).
L1_REAL = [0.3, 1.0, 3.0, 10.0, 30.0]

ARCH_LABEL = {"ptopk": "ptopk", "topk": "topk", "topk+auxk": "topk+AuxK",
              "standard": "ReLU", "gated": "Gated"}
# relative cost per step (measured: ptopk ~2x a gated step, ~4x a topk step)
COST = {"ptopk": 4.0, "topk": 1.0, "topk+auxk": 1.2, "standard": 2.0, "gated": 2.8}


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


def log(msg):
    print(msg, flush=True)


def run(cmd, env=None, log_path=None):
    with open(log_path or os.devnull, "w") as lf:
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE if log_path is None else lf,
                           stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
                           text=True)
    if p.returncode != 0:
        raise RuntimeError("%s failed (rc %d)%s" % (" ".join(cmd[:3]), p.returncode,
                                                    ", see " + log_path if log_path else ""))
    return p.stdout


# --- corpora ----------------------------------------------------------------
def link_subset(src, dst, shards, meta):
    os.makedirs(dst, exist_ok=True)
    d = dict(meta)
    d["shards"] = [os.path.basename(s) for s in shards]
    for s in shards:
        t = os.path.join(dst, os.path.basename(s))
        if not os.path.lexists(t):
            os.symlink(os.path.abspath(os.path.join(src, s)), t)
    if meta.get("vocab"):
        t = os.path.join(dst, meta["vocab"])
        if not os.path.lexists(t) and os.path.exists(os.path.join(src, meta["vocab"])):
            os.symlink(os.path.abspath(os.path.join(src, meta["vocab"])), t)
    d.pop("n_tokens", None)
    with open(os.path.join(dst, "dataset.json"), "w") as f:
        json.dump(d, f, indent=2)


def split_corpus(src, outdir):
    """train/ = every shard but the last, heldout/ = the last (symlinks)."""
    with open(os.path.join(src, "dataset.json")) as f:
        meta = json.load(f)
    shards = meta["shards"]
    if len(shards) < 2:
        return src, src, False
    link_subset(src, os.path.join(outdir, "train"), shards[:-1], meta)
    link_subset(src, os.path.join(outdir, "heldout"), shards[-1:], meta)
    return os.path.join(outdir, "train"), os.path.join(outdir, "heldout"), True


def make_synth(saectl, outdir):
    syn = os.path.join(outdir, "synth")
    tokens = env_int("PAPER_TOKENS", (SYNTH_TRAIN_SHARDS + 1) * SHARD_TOKENS)
    shard = max(1000, tokens // (SYNTH_TRAIN_SHARDS + 1))
    stamp = os.path.join(syn, "params.json")
    want = dict(SYNTH, tokens=tokens, shard_tokens=shard)
    have = None
    if os.path.exists(stamp):
        with open(stamp) as f:
            have = json.load(f)
    if have != want:
        shutil.rmtree(syn, ignore_errors=True)
        log("== synth: %d tokens, d_in %d, %d true features, zipf %g, noise %g, k_mean %g"
            % (tokens, SYNTH["d_in"], SYNTH["features"], SYNTH["zipf"], SYNTH["noise"],
               SYNTH["k_mean"]))
        run([saectl, "synth", "--out", syn, "--d-in", str(SYNTH["d_in"]),
             "--features", str(SYNTH["features"]), "--tokens", str(tokens),
             "--seed", str(SYNTH["seed"]), "--zipf", str(SYNTH["zipf"]),
             "--noise", str(SYNTH["noise"]), "--k-mean", str(SYNTH["k_mean"]),
             "--shard-tokens", str(shard)])
        for d in ("train", "heldout"):
            shutil.rmtree(os.path.join(outdir, d), ignore_errors=True)
        with open(stamp, "w") as f:
            json.dump(want, f)
    train, held, _ = split_corpus(syn, outdir)
    return train, held, syn


# --- the grid ---------------------------------------------------------------
class Job:
    def __init__(self, group, arch, k=None, l1=None, seed=1, flags=(), variant="", x=None):
        self.group, self.arch, self.k, self.l1, self.seed = group, arch, k, l1, seed
        self.flags, self.variant = list(flags), variant
        self.x = x  # the value the group varies (k, beta0, coefficient)
        parts = [group, arch.replace("+", "_")]
        if variant:
            parts.append(variant)
        if k is not None:
            parts.append("k%d" % k)
        if l1 is not None:
            parts.append("l1_%g" % l1)
        self.key = "-".join(parts)
        self.name = "%s-s%d" % (self.key, seed)

    def cost(self):
        return COST[self.arch]


def build_grid(seeds, real, ks, l1s):
    jobs = []
    for s in seeds:
        for k in ks:
            jobs.append(Job("main", "ptopk", k=k, seed=s, x=k))
            jobs.append(Job("main", "topk", k=k, seed=s, x=k))
            jobs.append(Job("main", "topk+auxk", k=k, seed=s, flags=["--auxk"], x=k))
        for arch in ("standard", "gated"):
            for c in l1s[arch]:
                jobs.append(Job("main", arch, l1=c, seed=s, x=c))
        if real:
            continue
        for k in ABL_KS:
            for v, fl in (("no-magnitude", "--no-magnitude"), ("no-layernorm", "--no-layernorm"),
                          ("sigmoid-gate", "--sigmoid-gate")):
                jobs.append(Job("ablation", "ptopk", k=k, seed=s, flags=[fl], variant=v, x=k))
        for k in TEMP_KS:
            for b in BETA0S:
                if b == 5.0:   # the default: the main grid's run is this point
                    continue
                jobs.append(Job("temperature", "ptopk", k=k, seed=s,
                                flags=["--beta0", "%g" % b], variant="beta%g" % b, x=b))
    return jobs


def job_cmd(saectl, j, corpus, out, p):
    cmd = [saectl, "train", "--arch", "topk" if j.arch == "topk+auxk" else j.arch,
           "--d-sae", str(p["d_sae"]), "--corpus", corpus, "--out", out,
           "--steps", str(p["steps"]), "--batch", str(p["batch"]), "--lr", "%g" % p["lr"],
           "--seed", str(j.seed)]
    if p.get("warmup") is not None:
        cmd += ["--warmup", str(p["warmup"])]
    if j.k is not None:
        cmd += ["--k", str(j.k)]
    if j.l1 is not None:
        cmd += ["--l1-coef", "%g" % j.l1]
    return cmd + j.flags


def run_jobs(saectl, jobs, corpus, held, truth, runs_dir, p, n_workers, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    total_cost = sum(j.cost() for j in jobs)
    state = dict(done=0, done_cost=0.0, skipped_cost=0.0, failed=[])
    lock = threading.Lock()
    t0 = time.time()
    # seed by seed (a run cut short still has every point at the first seeds),
    # longest first within a seed so the workers finish together
    order = sorted(jobs, key=lambda j: (j.seed, -j.cost()))

    def work(j):
        d = os.path.join(runs_dir, j.name)
        ev_path = os.path.join(d, "eval.json")
        cmd = job_cmd(saectl, j, corpus, d, p)
        skipped = False
        try:   # a finished run counts only if it was trained with the same command
            with open(ev_path) as f:
                skipped = json.load(f).get("cmd") == cmd[1:]
        except (OSError, ValueError):
            pass
        if not skipped:
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            logf = d + ".log"
            try:
                ts = time.time()
                run(cmd, env=env, log_path=logf)
                train_s = time.time() - ts
                ecmd = [saectl, "eval", "--model", d, "--corpus", held, "--json",
                        "--tokens", str(p["eval_tokens"]), "--device", "cpu"]
                if truth:
                    ecmd += ["--truth", truth]
                ev = json.loads(run(ecmd, env=env).strip().splitlines()[-1])
                ev["train_s"] = round(train_s, 2)
                ev["cmd"] = cmd[1:]
                with open(ev_path + ".tmp", "w") as f:
                    json.dump(ev, f)
                os.replace(ev_path + ".tmp", ev_path)
                os.remove(logf)
            except Exception as e:  # keep going; the failure is reported at the end
                with lock:
                    state["failed"].append("%s: %s" % (j.name, e))
        with lock:
            state["done"] += 1
            state["done_cost"] += j.cost()
            if skipped:
                state["skipped_cost"] += j.cost()
            el = time.time() - t0
            work_cost = state["done_cost"] - state["skipped_cost"]
            rem = total_cost - state["done_cost"]
            eta = el / work_cost * rem if work_cost > 0 else float("nan")
            log("[%3d/%d] %-44s %s elapsed %s  ETA %s" % (
                state["done"], len(jobs), j.name, "(cached)" if skipped else "        ",
                hms(el), hms(eta) if math.isfinite(eta) else "?"))

    with ThreadPoolExecutor(max_workers=n_workers) as ex:
        list(ex.map(work, order))
    return state["failed"]


def hms(s):
    s = int(round(s))
    return "%d:%02d:%02d" % (s // 3600, s // 60 % 60, s % 60)


# --- results ----------------------------------------------------------------
METRICS = ["fvu", "mse", "l0", "alive", "dead", "train_alive", "mmcs", "recovered"]


def read_metrics_jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def collect(jobs, runs_dir):
    by_key = {}
    for j in jobs:
        d = os.path.join(runs_dir, j.name)
        try:
            with open(os.path.join(d, "eval.json")) as f:
                ev = json.load(f)
        except OSError:
            continue
        ms = read_metrics_jsonl(os.path.join(d, "metrics.jsonl"))
        ev["train_alive"] = ms[-1]["alive"] if ms else None
        ev["curve"] = [(m["step"], m["alive"]) for m in ms]
        g = by_key.setdefault(j.key, dict(job=j, runs=[]))
        g["runs"].append(ev)
    for g in by_key.values():
        st = {}
        for m in METRICS:
            vals = [r[m] for r in g["runs"] if r.get(m) is not None]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            st[m] = dict(mean=mean, std=sd, min=min(vals), max=max(vals), n=len(vals))
        g["stats"] = st
    return by_key


def fmt(st, m, digits):
    if m not in st:
        return "–"
    s = st[m]
    if m in ("alive", "dead", "train_alive"):
        return "%.0f ± %.0f" % (s["mean"], s["std"])
    return "%.*f ± %.*f" % (digits, s["mean"], digits, s["std"])


def setting(j):
    if j.group == "temperature":
        return "beta0 = %g" % j.x
    if j.group == "ablation":
        return j.variant
    if j.l1 is not None:
        return "l1 = %g" % j.l1
    if j.arch == "ptopk":
        return "beta0 = 5 (default)"
    return ""


def write_table(by_key, path, truth, d_sae):
    order = {"main": 0, "ablation": 1, "temperature": 2}
    arch_o = {"ptopk": 0, "topk": 1, "topk+auxk": 2, "standard": 3, "gated": 4}
    cols = ["fvu", "mse", "l0", "alive", "train_alive"] + (["mmcs", "recovered"] if truth else [])
    head = ("| group | arch | k | setting | seeds | fvu | mse | L0 | alive (held-out) | "
            "alive (train, end) |" + (" mmcs | recovered |" if truth else ""))
    lines = ["Mean ± std over seeds. alive: latents (of %d) that fired on the held-out tokens; "
             "alive (train, end): latents that fired within the trainer's dead-latent window at "
             "the last step; dead = %d - alive." % (d_sae, d_sae), "",
             head, "|" + "---|" * (head.count("|") - 1)]
    keys = sorted(by_key, key=lambda k: (order[by_key[k]["job"].group],
                                         by_key[k]["job"].variant if by_key[k]["job"].group == "ablation" else "",
                                         arch_o[by_key[k]["job"].arch],
                                         by_key[k]["job"].k or 0,
                                         by_key[k]["job"].x if by_key[k]["job"].group == "temperature" else 0,
                                         -(by_key[k]["job"].l1 or 0)))
    for k in keys:
        g = by_key[k]
        j, st = g["job"], g["stats"]
        digits = {"fvu": 4, "mse": 4, "l0": 2, "mmcs": 3, "recovered": 3}
        cells = [fmt(st, m, digits.get(m, 3)) for m in cols]
        lines.append("| %s | %s | %s | %s | %d | %s |" % (
            j.group, ARCH_LABEL[j.arch], j.k if j.k is not None else "–", setting(j),
            len(g["runs"]), " | ".join(cells)))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def series_of(by_key, pred, xf=lambda j, st: j.x):
    pts = []
    for g in by_key.values():
        j = g["job"]
        if pred(j):
            pts.append((xf(j, g["stats"]), g["stats"]))
    pts.sort(key=lambda t: t[0])
    return pts


def add_metric(panel, label, pts, m, **kw):
    pts = [(x, st) for x, st in pts if m in st]
    if not pts:
        return
    panel.add(label, [x for x, _ in pts], [st[m]["mean"] for _, st in pts],
              lo=[st[m]["mean"] - st[m]["std"] for _, st in pts],
              hi=[st[m]["mean"] + st[m]["std"] for _, st in pts], **kw)


def figures(by_key, figdir, truth, d_sae, note):
    files = []
    main = lambda a: (lambda j: j.group == "main" and j.arch == a)
    archs = ["ptopk", "topk", "topk+auxk", "standard", "gated"]
    # 1. Pareto: fvu vs L0 (each point its mean over seeds; bars: std in fvu)
    p1 = svgplot.Panel("FVU vs L0 (held-out)", "L0 (mean active latents)", "FVU", xlog=True,
                       ylog=True)
    p2 = svgplot.Panel("alive latents vs L0 (held-out)", "L0", "alive latents (of %d)" % d_sae,
                       xlog=True, legend="lower right", ylim=(0, d_sae * 1.04),
                       yticks=[d_sae * i // 4 for i in range(5)])
    p3 = svgplot.Panel("dictionary recovery vs L0", "L0", "MMCS with the true dictionary",
                       xlog=True, legend="lower right") if truth else None
    for i, a in enumerate(archs):
        pts = []
        for g in by_key.values():
            j = g["job"]
            if j.group == "main" and j.arch == a and "l0" in g["stats"]:
                pts.append((g["stats"]["l0"]["mean"], g["stats"]))
        pts.sort(key=lambda t: t[0])
        kw = dict(color=svgplot.PALETTE[i], marker=svgplot.MARKERS[i])
        add_metric(p1, ARCH_LABEL[a], pts, "fvu", **kw)
        add_metric(p2, ARCH_LABEL[a], pts, "alive", **kw)
        if p3:
            add_metric(p3, ARCH_LABEL[a], pts, "mmcs", **kw)
    fig = svgplot.Figure([p for p in (p1, p2, p3) if p], cols=3 if p3 else 2,
                         title="Reconstruction-sparsity front (mean ± std over seeds)", note=note)
    fig.save(os.path.join(figdir, "pareto.svg"))
    files.append("pareto.svg")

    # 2. alive over training, ptopk vs topk vs topk+AuxK, one panel per k
    panels = []
    ks = sorted({g["job"].k for g in by_key.values()
                 if g["job"].group == "main" and g["job"].k is not None})
    for k in ks:
        p = svgplot.Panel("k = %d" % k, "training step", "alive latents (training window)",
                          legend="lower left", ylim=(0, d_sae * 1.04),
                          yticks=[d_sae * i // 4 for i in range(5)])
        for i, a in enumerate(["ptopk", "topk", "topk+auxk"]):
            for g in by_key.values():
                j = g["job"]
                if j.group == "main" and j.arch == a and j.k == k:
                    curves = [r["curve"] for r in g["runs"] if r["curve"]]
                    if not curves:
                        continue
                    n = min(len(c) for c in curves)
                    stride = max(1, n // 100)
                    idx = list(range(0, n, stride)) + ([n - 1] if (n - 1) % stride else [])
                    xs = [curves[0][t][0] for t in idx]
                    mean = [sum(c[t][1] for c in curves) / len(curves) for t in idx]
                    lo = [min(c[t][1] for c in curves) for t in idx]
                    hi = [max(c[t][1] for c in curves) for t in idx]
                    p.add(ARCH_LABEL[a], xs, mean, color=svgplot.PALETTE[i], marker="")
                    p.add("", xs, lo, color=svgplot.PALETTE[i], marker="", dash="2,3")
                    p.add("", xs, hi, color=svgplot.PALETTE[i], marker="", dash="2,3")
        panels.append(p)
    fig = svgplot.Figure(panels, cols=min(4, len(panels)) or 1, panel_w=320,
                         title="Alive latents during training (mean over seeds; dashed: min and max)",
                         note=note)
    fig.save(os.path.join(figdir, "alive.svg"))
    files.append("alive.svg")

    abl = [g for g in by_key.values() if g["job"].group == "ablation"]
    if abl:
        mets = [("fvu", "FVU", True), ("alive", "alive latents (held-out)", False)]
        if truth:
            mets.append(("mmcs", "MMCS", False))
        panels = []
        for m, lab, ylog in mets:
            p = svgplot.Panel(lab + " vs k", "k", lab, xlog=True, ylog=ylog, xticks=ABL_KS,
                              legend="upper right" if m == "fvu" else "lower left")
            add_metric(p, "ptopk (full)", series_of(by_key, lambda j: main("ptopk")(j) and j.k in ABL_KS), m)
            for v in ("no-magnitude", "no-layernorm", "sigmoid-gate"):
                add_metric(p, v, series_of(by_key, lambda j, v=v: j.group == "ablation" and j.variant == v), m)
            add_metric(p, "topk", series_of(by_key, lambda j: main("topk")(j) and j.k in ABL_KS), m,
                       dash="4,3")
            panels.append(p)
        svgplot.Figure(panels, cols=len(panels), title="ptopk ablations (mean ± std over seeds)",
                       note=note).save(os.path.join(figdir, "ablations.svg"))
        files.append("ablations.svg")

    tmp = [g for g in by_key.values() if g["job"].group == "temperature"]
    if tmp:
        mets = [("fvu", "FVU", True), ("alive", "alive latents (held-out)", False)]
        if truth:
            mets.append(("mmcs", "MMCS", False))
        panels = []
        for m, lab, ylog in mets:
            p = svgplot.Panel(lab + " vs beta0", "beta0 (initial temperature after warmup)", lab,
                              xlog=True, ylog=ylog, xticks=BETA0S, legend="upper right")
            for i, k in enumerate(TEMP_KS):
                pts = series_of(by_key, lambda j, k=k: j.arch == "ptopk" and j.k == k and (
                    j.group == "temperature" or (j.group == "main")),
                    xf=lambda j, st: j.x if j.group == "temperature" else 5.0)
                add_metric(p, "ptopk k=%d" % k, pts, m, color=svgplot.PALETTE[i])
            panels.append(p)
        svgplot.Figure(panels, cols=len(panels), title="Temperature sweep (mean ± std over seeds)",
                       note=note).save(os.path.join(figdir, "temperature.svg"))
        files.append("temperature.svg")
    return files


# --- calibration ------------------------------------------------------------
def calibrate(saectl, corpus, held, runs_dir, p, n_workers, threads, targets):
    jobs = [Job("cal", a, l1=c, seed=1, x=c) for a in ("standard", "gated") for c in CAL_COEFS[a]]
    failed = run_jobs(saectl, jobs, corpus, held, None, runs_dir, p, n_workers, threads)
    res = {}
    for j in jobs:
        try:
            with open(os.path.join(runs_dir, j.name, "eval.json")) as f:
                ev = json.load(f)
        except OSError:
            continue
        res.setdefault(j.arch, []).append((j.l1, ev["l0"], ev["fvu"]))
    lines = ["| arch | l1 coefficient | L0 (held-out) | FVU |", "|---|---|---|---|"]
    pick = {}
    for a, rows in res.items():
        rows.sort()
        for c, l0, fvu in rows:
            lines.append("| %s | %g | %.2f | %.4f |" % (ARCH_LABEL[a], c, l0, fvu))
        pick[a] = [min(rows, key=lambda r: abs(math.log(max(r[1], 1e-3) / t)))[0] for t in targets]
    return "\n".join(lines) + "\n", pick, failed


# --- main -------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="a real activation corpus (dataset.json dir); default: synthetic")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--docs", default=None,
                    help="also copy the table and figures here (default: docs/paper for the "
                         "synthetic run, none for --corpus)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads per job")
    ap.add_argument("--seeds", type=int, default=env_int("PAPER_SEEDS", 3))
    ap.add_argument("--only", default="", help="comma list of groups: main,ablation,temperature")
    ap.add_argument("--calibrate", action="store_true",
                    help="sweep the ReLU/Gated l1 coefficient and print the L0 each gives")
    ap.add_argument("--saectl", default=os.environ.get("SAECTL"))
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: the table and figures from the runs already in --out")
    ap.add_argument("--steps", type=int, help="training steps per run (PAPER_STEPS)")
    ap.add_argument("--batch", type=int, help="rows per step (PAPER_BATCH)")
    ap.add_argument("--warmup", type=int, help="warmup steps (PAPER_WARMUP)")
    a = ap.parse_args()

    saectl = a.saectl or os.path.join(ROOT, "build-paper/src/cli/saectl")
    os.makedirs(a.out, exist_ok=True)
    real = a.corpus is not None
    t_start = time.time()
    if real:
        with open(os.path.join(a.corpus, "dataset.json")) as f:
            d_in = json.load(f)["d_in"]
        p = dict(d_sae=16 * d_in, steps=env_int("PAPER_STEPS", 200000),
                 batch=env_int("PAPER_BATCH", 8192), lr=5e-4,
                 warmup=env_int("PAPER_WARMUP", 20000),
                 eval_tokens=env_int("PAPER_EVAL_TOKENS", 1000000))
        corpus, held, split = split_corpus(a.corpus, a.out)
        if not split:
            log("note: one shard only, so the evaluation reads the training corpus (no held-out split)")
        truth, ks, l1s = None, KS_REAL, {"standard": L1_REAL, "gated": L1_REAL}
    else:
        p = dict(d_sae=D_SAE_SYNTH, steps=env_int("PAPER_STEPS", STEPS_SYNTH),
                 batch=env_int("PAPER_BATCH", BATCH_SYNTH), lr=LR_SYNTH,
                 warmup=env_int("PAPER_WARMUP", -1),
                 eval_tokens=env_int("PAPER_EVAL_TOKENS", SHARD_TOKENS))
        if p["warmup"] < 0:
            p["warmup"] = None  # the trainer's default: 10% of a short run
        corpus, held, truth = make_synth(saectl, a.out)
        ks, l1s = KS, L1_SYNTH
    for f in ("steps", "batch", "warmup"):
        if getattr(a, f) is not None:
            p[f] = getattr(a, f)
    runs_dir = os.path.join(a.out, "runs")
    if a.calibrate:
        text, pick, failed = calibrate(saectl, corpus, held, os.path.join(a.out, "calibration"),
                                       p, a.jobs, a.threads, ks)
        print(text)
        print("closest to L0 =", ks, ":", json.dumps(pick))
        with open(os.path.join(a.out, "calibration.md"), "w") as f:
            f.write(text + "\nclosest to L0 = %s: %s\n" % (ks, json.dumps(pick)))
        return 1 if failed else 0
    seeds = list(range(1, a.seeds + 1))
    jobs = build_grid(seeds, real, ks, l1s)
    if a.only:
        groups = set(a.only.split(","))
        jobs = [j for j in jobs if j.group in groups]
    log("== %d runs (%s), %d at a time, %d thread(s) each; d_sae %d, %d steps x batch %d, "
        "lr %g, warmup %s" % (len(jobs), "real corpus " + a.corpus if real else "synthetic",
                              a.jobs, a.threads, p["d_sae"], p["steps"], p["batch"], p["lr"],
                              p["warmup"] if p["warmup"] is not None else "default (10%)"))
    if a.report_only:
        failed = []
    else:
        failed = run_jobs(saectl, jobs, corpus, held, truth, runs_dir, p, a.jobs, a.threads)
    by_key = collect(jobs, runs_dir)
    figdir = os.path.join(a.out, "figures")
    os.makedirs(figdir, exist_ok=True)
    note = "%s; d_sae %d; %d steps x %d rows; %d seeds" % (
        "synthetic corpus" if not real else os.path.basename(os.path.abspath(a.corpus)),
        p["d_sae"], p["steps"], p["batch"], len(seeds))
    write_table(by_key, os.path.join(a.out, "table.md"), truth, p["d_sae"])
    files = figures(by_key, figdir, truth, p["d_sae"], note)
    summary = {k: dict(group=g["job"].group, arch=g["job"].arch, k=g["job"].k, l1=g["job"].l1,
                       variant=g["job"].variant, x=g["job"].x, stats=g["stats"],
                       runs=[{m: r.get(m) for m in METRICS + ["train_s"]} for r in g["runs"]])
               for k, g in by_key.items()}
    wall = time.time() - t_start
    missing = sorted(j.name for j in jobs
                     if not os.path.exists(os.path.join(runs_dir, j.name, "eval.json")))
    if missing:
        log("note: %d of %d runs have no result: %s" % (len(missing), len(jobs), " ".join(missing)))
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    record = dict(wall_s=round(wall, 1), date=now)
    if a.report_only:   # keep the training run's date and wall time
        try:
            with open(os.path.join(a.out, "summary.json")) as f:
                old = json.load(f)
            record = dict(wall_s=old.get("wall_s"), date=old.get("date"), report_date=now)
        except (OSError, ValueError):
            record = dict(wall_s=None, date=None, report_date=now)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(dict(params=p, synth=None if real else SYNTH, corpus=a.corpus, seeds=seeds,
                       missing=missing, failed=failed, **record, results=summary), f, indent=1)
    docs = a.docs if a.docs is not None else (None if real else os.path.join(ROOT, "docs/paper"))
    if docs and not a.only:
        os.makedirs(docs, exist_ok=True)
        for fn in files:
            shutil.copy(os.path.join(figdir, fn), os.path.join(docs, fn))
        for fn in ("table.md", "summary.json"):
            shutil.copy(os.path.join(a.out, fn), os.path.join(docs, fn))
    log("== done in %s: %s/table.md, %s/summary.json, figures in %s%s" % (
        hms(wall), a.out, a.out, figdir, (", copied to " + docs) if docs and not a.only else ""))
    if failed:
        log("FAILED runs:\n  " + "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
