"""bench/serve.py still runs end to end (a small model, 1 s windows): the benchmark that
bench/RESULTS.md quotes must not rot between the sessions that run it for real. Its figures
are not judged here, only that every part of the run produced them: no failed request, the
daemon exited 0 on SIGTERM (under ASan in CI: no leak report), and each figure is there."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from saed_harness import REPO


def test_serve_bench_runs():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "serve.py"), "--seconds", "3",
                        "--d-in", "64", "--d-sae", "256", "--k", "8", "--offline-rows", "4096"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    assert len(line) == 1, r.stdout[-3000:]
    res = json.loads(line[0][len("RESULT "):])
    serve, binp = res["serving"], res["binary_1024"]
    assert res["saed_exit"] == 0
    assert serve["errors"] == 0 and serve["requests"] > 0
    assert set(res["statuses"]) == {"200"} and res["statuses"]["200"] >= serve["requests"]
    assert len(res["window_ratios"]) == 3 and all(q > 0 for q in res["window_ratios"])
    assert len(res["offline_points"]) == 4 and all(p > 0 for p in res["offline_points"])
    for key in ("p50_ms", "p99_ms", "rss_first_mb", "rss_last_mb", "mean_batch_rows"):
        assert math.isfinite(serve[key]) and serve[key] > 0, key
    assert binp["rows"] == 1024 and 0 < binp["engine_ms"] <= binp["server_ms"] <= binp["request_ms"]
