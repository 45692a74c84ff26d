#!/usr/bin/env python3
"""bench/serve.py - saed's serving figures against its own engine, in one run.

  1. offline: `saectl encode` on N rows in one batch (load time subtracted by a 1-row run)
     -> rows/s, the engine's batched throughput, the better of two runs;
  2. serving: C concurrent connections of 1-row JSON encodes for S seconds against saed
     (wrk when installed, else Python threads), in three windows of S/3 seconds
     -> requests/s, p50, p99. Offline is measured before the first window, between the
     windows and after the last, and each window's ratio is taken against the mean of the
     offline figures on either side of it: a shared machine's speed drifts by tens of
     percent over minutes, and both sides of a ratio should see the same machine. Printed:
     the median and best of the windows' ratios, and (as before the interleaving) the best
     window over the best offline figure of the whole run. DESIGN.md section 7 wants >= 0.70.
     By default the client shares saed's cores and its CPU counts against saed; with
     --server-cpus/--client-cpus saed and the offline runs get the same cores and the client
     others, as remote clients would (bench/RESULTS.md has both);
  3. binary path: POST 1024 float32 rows (Accept: application/octet-stream) in sequence;
     overhead = (request latency - engine batch time, from /metrics) / engine batch time,
     with the latency seen by this (Python) client and by saed itself (its request-duration
     histogram, from the request's first byte to the response's last). DESIGN.md wants < 10%.

The default model is 768 x 24576 (k 32): GPT-2 small's residual stream with a 32x dictionary,
the shape of bench/encode and of widely used SAEs. For a small model (--d-in 256 --d-sae 4096)
serving is bound by a request's HTTP and JSON work, which costs more than the engine's work for
its row, and stays near 0.3 of offline (bench/RESULTS.md).

Usage: python3 bench/serve.py [--seconds 10] [--connections 64] [--d-in 768] [--d-sae 24576]
       [--k 32] [--threads 4] [--device cpu|cuda] [--offline-rows N] [--saed PATH] [--saectl PATH]
       [--server-cpus 0-1 --client-cpus 2-5]
Prints a human summary and one JSON line (prefix "RESULT ").
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))
import make_ckpt as mk  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_set(spec):
    """'0-1,4' -> {0, 1, 4}; None -> None."""
    if spec is None:
        return None
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def on_cpus(cpus):
    """A preexec_fn that keeps a child (and its threads) to cpus; None leaves it be."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Offline:
    """The engine's batched rows/s and CPU seconds per row, by `saectl encode` of x in one
    batch, the cost of a 1-row run (process start, model loading) subtracted: measured
    once, then at each point() the better of `runs` batch runs."""

    def __init__(self, saectl, model, x, work, device, cpus=None):
        self.saectl, self.model, self.x, self.work, self.device = saectl, model, x, work, device
        self.cpus = cpus
        self.run(x[:1])
        self.t1, self.c1 = min(self.run(x[:1]) for _ in range(3))
        self.points = []   # (rows/s, CPU s per row) at each point

    def run(self, rows):
        p = self.work / f"x{len(rows)}.npy"
        np.save(p, rows)
        c0, t0 = children_cpu_s(), time.perf_counter()
        subprocess.run([self.saectl, "encode", "--model", str(self.model), "--input", str(p),
                        "--output", str(self.work / "out.safetensors"), "--device", self.device],
                       check=True, capture_output=True, preexec_fn=on_cpus(self.cpus))
        return time.perf_counter() - t0, children_cpu_s() - c0

    def point(self, runs=2):
        tn, cn = min(self.run(self.x) for _ in range(runs))
        if tn - self.t1 < 0.5 * self.t1:
            print(f"warning: the offline batch ({tn:.2f} s) is not much longer than a 1-row run "
                  f"({self.t1:.2f} s); its rows/s is noise: raise --offline-rows", file=sys.stderr)
        self.points.append((len(self.x) / max(tn - self.t1, 1e-9), (cn - self.c1) / len(self.x)))


def process_cpu_s(pid):
    """utime + stime of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(saed_batch_(?:seconds|rows)_(?:sum|count)|saed_batch_requests_total) (\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
        m = re.match(r'^saed_http_request_duration_seconds_(sum|count)'
                     r'\{method="POST",route="/v1/models/\{id\}/encode"\} (\S+)', line)
        if m:
            out["encode_seconds_" + m.group(1)] = float(m.group(2))
    return out


def wrk_run(port, body, conns, seconds, work, threads):
    lua = work / "post.lua"
    lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                   f"wrk.body = {json.dumps(body)}\n")
    c0 = children_cpu_s()
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
                          "-s", str(lua), f"http://127.0.0.1:{port}/v1/models/m/encode"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v if u == "ms" else v * 1000
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    done = int(re.search(r"(\d+) requests in", out).group(1))
    return {"tool": "wrk", "rps": rps, "p50_ms": pct(50), "p99_ms": pct(99),
            "errors": int(non2xx.group(1)) if non2xx else 0, "requests": done,
            "client_cpu_s": children_cpu_s() - c0}


def python_run(port, body, conns, seconds):
    lat, errors, stop = [], [0], time.monotonic() + seconds
    lock = threading.Lock()
    data = body.encode()

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            c.request("POST", "/v1/models/m/encode", data, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            mine.append(time.perf_counter() - t0)
            if r.status != 200:
                errors[0] += 1
        with lock:
            lat.extend(mine)
    ts = [threading.Thread(target=client) for _ in range(conns)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    el = time.perf_counter() - t0
    a = np.array(lat) * 1e3
    return {"tool": "python-threads", "rps": len(a) / el, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "errors": errors[0], "requests": len(a),
            "client_cpu_s": None}


class RssSampler:
    """Samples a process's resident set (VmRSS) every 0.5 s in a thread."""

    def __init__(self, pid):
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(0.5):
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            m = re.search(r"VmRSS:\s+(\d+) kB", text)
            if m:
                self.samples.append(int(m.group(1)) / 1024.0)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def summary(self):
        """RSS over the first and last fifth of the run, and the peak (MB)."""
        s = self.samples or [0.0]
        n = max(1, len(s) // 5)
        return {"rss_first_mb": float(np.mean(s[:n])), "rss_last_mb": float(np.mean(s[-n:])),
                "rss_peak_mb": float(max(s))}


def binary_overhead(port, x, reps=20):
    body = x.astype("<f4").tobytes()
    hdr = {"Content-Type": "application/octet-stream", "Accept": "application/octet-stream"}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(3):
        c.request("POST", "/v1/models/m/encode", body, hdr)
        c.getresponse().read()
    m0 = metrics(port)
    t0 = time.perf_counter()
    for _ in range(reps):
        c.request("POST", "/v1/models/m/encode", body, hdr)
        r = c.getresponse()
        r.read()
        assert r.status == 200
    wall = (time.perf_counter() - t0) / reps
    m1 = metrics(port)
    c.close()
    def mean(name):
        return ((m1[name + "_sum"] - m0[name + "_sum"]) /
                (m1[name + "_count"] - m0[name + "_count"]))
    engine, server = mean("saed_batch_seconds"), mean("encode_seconds")
    return {"rows": len(x), "request_ms": wall * 1e3, "engine_ms": engine * 1e3,
            "server_ms": server * 1e3, "overhead": (wall - engine) / engine,
            "server_overhead": (server - engine) / engine}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--wrk-threads", type=int, default=4)
    ap.add_argument("--batch-wait-us", type=int, default=None, help="saed's (default: its own)")
    ap.add_argument("--saed", default=os.environ.get("SAED", str(REPO / "build/src/server/saed")))
    ap.add_argument("--saectl", default=os.environ.get("SAECTL", str(REPO / "build/src/cli/saectl")))
    ap.add_argument("--device", default="cpu", help="cpu or cuda, for saed and the offline run")
    ap.add_argument("--offline-rows", type=int, default=0,
                    help="rows of the offline batch (default 16384 on cpu, 262144 on cuda)")
    ap.add_argument("--python-client", action="store_true", help="skip wrk even if installed")
    ap.add_argument("--server-cpus", help="CPUs for saed and the offline runs, e.g. 0-1 "
                    "(default: all); with --client-cpus, the client runs on other cores, as "
                    "remote clients would")
    ap.add_argument("--client-cpus", help="CPUs for the client (wrk or this script's threads)")
    a = ap.parse_args()
    server_cpus, client_cpus = cpu_set(a.server_cpus), cpu_set(a.client_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)   # this script, its threads and wrk

    work = Path(tempfile.mkdtemp(prefix="saed-bench-"))
    rng = np.random.default_rng(0)
    cfg = mk.native_cfg("topk", a.d_in, a.d_sae, k=a.k)
    mk.write_native(work / "m", cfg, mk.random_weights(rng, "topk", a.d_in, a.d_sae))
    # the offline batch: long enough that process start and loading, subtracted by a 1-row
    # run, are small beside it (a GPU encodes 16384 rows in well under their noise)
    x = mk.random_input(rng, a.offline_rows or (262144 if a.device == "cuda" else 16384), a.d_in)
    offline = Offline(a.saectl, work / "m", x, work, a.device, server_cpus)

    port = free_port()
    env = dict(os.environ)
    log = open(work / "saed.log", "w")
    proc = subprocess.Popen([a.saed, "--listen", f"127.0.0.1:{port}", "--state-dir",
                             str(work / "state"), "--model", f"m={work / 'm'}", "--device", a.device,
                             "--threads", str(a.threads)] +
                            (["--batch-wait-us", str(a.batch_wait_us)]
                             if a.batch_wait_us is not None else []),
                            stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=on_cpus(server_cpus))
    try:
        for _ in range(1200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit("saed did not become ready")
        body = json.dumps({"inputs": [x[0].tolist()]})
        windows, busy_s, load_s, saed_cpu_s = [], 0.0, 0.0, 0.0
        batches, batch_rows = 0, 0
        use_wrk = shutil.which("wrk") and not a.python_client
        offline.point()            # saed idles meanwhile (here and below)
        with RssSampler(proc.pid) as rss:
            for _ in range(3):
                m0, c0, t0 = metrics(port), process_cpu_s(proc.pid), time.monotonic()
                if use_wrk:
                    windows.append(wrk_run(port, body, a.connections, max(1, round(a.seconds / 3)),
                                           work, min(a.wrk_threads, a.connections)))
                else:
                    windows.append(python_run(port, body, a.connections, a.seconds / 3))
                load_s += time.monotonic() - t0
                saed_cpu_s += process_cpu_s(proc.pid) - c0
                m1 = metrics(port)
                busy_s += m1["saed_batch_seconds_sum"] - m0["saed_batch_seconds_sum"]
                batches += m1["saed_batch_rows_count"] - m0["saed_batch_rows_count"]
                batch_rows += m1["saed_batch_rows_sum"] - m0["saed_batch_rows_sum"]
                offline.point()
        # each window against the offline figures on either side of it
        offs = [p[0] for p in offline.points]
        ratios = [w["rps"] / ((offs[i] + offs[i + 1]) / 2) for i, w in enumerate(windows)]
        by_rps = sorted(windows, key=lambda w: w["rps"])
        serve = dict(by_rps[1])    # the median window's latencies
        serve["rps_windows"] = [w["rps"] for w in windows]
        serve["rps_best"] = by_rps[-1]["rps"]
        serve["errors"] = sum(w["errors"] for w in windows)
        # CPU seconds per request, saed's own and the client's (on the same cores here):
        # less moved by a shared machine's load than requests/s, though not unmoved
        done = sum(w["requests"] for w in windows)
        serve["saed_cpu_us"] = 1e6 * saed_cpu_s / done
        if all(w["client_cpu_s"] is not None for w in windows):
            serve["client_cpu_us"] = 1e6 * sum(w["client_cpu_s"] for w in windows) / done
        serve.update(rss.summary())
        # the share of the load the engine spent encoding (the rest: waiting for rows)
        serve["engine_busy"] = busy_s / load_s
        serve["mean_batch_rows"] = batch_rows / max(batches, 1)
        binp = binary_overhead(port, x[:1024])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    off_rps = max(offs)
    off_cpu = min(p[1] for p in offline.points)
    res = {"device": a.device, "d_in": a.d_in, "d_sae": a.d_sae, "k": a.k, "cpus": os.cpu_count(),
           "server_cpus": sorted(server_cpus) if server_cpus else None,
           "client_cpus": sorted(client_cpus) if client_cpus else None,
           "offline_rows_per_s": off_rps, "offline_points": offs, "serving": serve,
           "window_ratios": ratios, "serving_ratio_median": sorted(ratios)[1],
           "serving_ratio_best": max(ratios), "serving_ratio_best_of_run": serve["rps_best"] / off_rps,
           "offline_cpu_us": 1e6 * off_cpu, "binary_1024": binp, "saed_exit": proc.returncode}
    print(f"engine offline, one batch of {len(x)} rows, before, between and after the windows: "
          + ", ".join(f"{o:,.0f}" for o in offs) + " rows/s")
    print(f"serving, {a.connections} connections x 1-row JSON ({serve['tool']}, 3 x "
          f"{a.seconds / 3:g}s): windows " + ", ".join(f"{r:,.0f}" for r in serve["rps_windows"]) +
          " req/s = " + ", ".join(f"{r:.2f}" for r in ratios) + " of offline on either side; "
          f"median {res['serving_ratio_median']:.2f}, best {res['serving_ratio_best']:.2f} "
          f"(best window / best offline of the run: {res['serving_ratio_best_of_run']:.2f})")
    arrangement = ("the client on CPUs " + a.client_cpus + ", saed and offline on " +
                   (a.server_cpus or "the rest") if client_cpus else "the client on saed's CPUs")
    print(f"target (DESIGN.md section 7): median window >= 0.70 of offline: "
          f"{'met' if res['serving_ratio_median'] >= 0.70 else 'NOT met'} ({arrangement})")
    print(f"latency (median window): p50 {serve['p50_ms']:.2f} ms, p99 {serve['p99_ms']:.2f} ms; "
          f"mean batch {serve['mean_batch_rows']:.1f} rows, engine busy "
          f"{100 * serve['engine_busy']:.0f}%; errors {serve['errors']}")
    cpu = serve["saed_cpu_us"] + serve.get("client_cpu_us", 0.0)
    print(f"CPU per row: offline engine {1e6 * off_cpu:.0f} us; serving saed "
          f"{serve['saed_cpu_us']:.0f} us + client {serve.get('client_cpu_us', float('nan')):.0f} "
          f"us per request; offline / (saed + client) = {1e6 * off_cpu / cpu:.2f}")
    print(f"saed RSS under load: first fifth {serve['rss_first_mb']:.1f} MB, last fifth "
          f"{serve['rss_last_mb']:.1f} MB, peak {serve['rss_peak_mb']:.1f} MB")
    print(f"binary path, 1024 rows: request {binp['request_ms']:.2f} ms at the client, "
          f"{binp['server_ms']:.2f} ms in saed, engine {binp['engine_ms']:.2f} ms: overhead "
          f"{100 * binp['overhead']:.1f}% (client's view), {100 * binp['server_overhead']:.1f}% "
          f"(saed's)")
    statuses = {}
    for line in (work / "saed.log").read_text().splitlines():
        m = re.search(r'"POST /v1/models/m/encode" (\d{3}) ', line)  # not the /readyz polls
        if m:
            statuses[m.group(1)] = statuses.get(m.group(1), 0) + 1
    res["statuses"] = statuses
    print(f"encode responses by status: {statuses}")
    print("RESULT " + json.dumps(res))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
