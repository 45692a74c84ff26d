"""Admin: model load/unload with path checks, persistence across a restart, SIGTERM
drain, config file, --print-routes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from saed_harness import D_IN, TOKEN, Daemon, mk, plain_saed_path, saed_path, write_models

ROW = [0.25] * D_IN


@pytest.fixture
def fresh(tmp_path):
    """A daemon with no models, one model root holding every architecture."""
    root = tmp_path / "root"
    root.mkdir()
    ms = write_models(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copytree(ms["topk"][0], outside / "topk")
    d = Daemon(tmp_path / "state", [root])
    d.wait_ready(want=503)
    yield d, root, outside
    d.stop()


def test_load_encode_unload(fresh):
    d, root, _ = fresh
    st, _, data = d.request("GET", "/readyz")
    assert st == 503 and json.loads(data)["error"]["code"] == "not_ready"
    out = d.admin("POST", "/v1/admin/models", {"id": "m1", "path": "topk"}, want=201)
    assert out["path"] == str((root / "topk").resolve())
    d.admin("POST", "/v1/admin/models", {"id": "m2", "path": str(root / "standard")}, want=201)
    assert d.json("GET", "/readyz")["status"] == "ready"
    assert len(d.json("POST", "/v1/models/m1/encode", {"inputs": [ROW]})["codes"]) == 1
    listed = d.admin("GET", "/v1/admin/models")["models"]
    assert [m["id"] for m in listed] == ["m1", "m2"] and all(m["persistent"] for m in listed)
    d.admin("POST", "/v1/admin/models", {"id": "m1", "path": "standard"}, want=409)
    d.admin("DELETE", "/v1/admin/models/m1", want=204)
    d.json("GET", "/v1/models/m1", want=404)
    d.admin("DELETE", "/v1/admin/models/m1", want=404)


def rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024


def settled_rss_mb(pid) -> float:
    """The lowest RSS over half a second: libgomp's workers free their blocks as they exit,
    a little after the unload has answered."""
    lowest = rss_mb(pid)
    for _ in range(10):
        time.sleep(0.05)
        lowest = min(lowest, rss_mb(pid))
    return lowest


def load_encode_unload_rss(tmp_path, exe=None, measure=True) -> list[float]:
    """Six cycles of loading a model, encoding one 1024-row batch and unloading it; saed's
    RSS after each unload (MB), when measured."""
    root = tmp_path / "root"
    rng = np.random.default_rng(5)
    d_in, d_sae = 128, 8192
    cfg = mk.native_cfg("topk", d_in, d_sae, k=16)
    mk.write_native(root / "wide", cfg, mk.random_weights(rng, "topk", d_in, d_sae))
    x = rng.standard_normal((1024, d_in)).astype("<f4").tobytes()
    d = Daemon(tmp_path / "state", [root], exe=exe)
    try:
        d.wait_ready(want=503)
        rss = []
        for _ in range(6):
            d.admin("POST", "/v1/admin/models", {"id": "w", "path": "wide"}, want=201)
            st, _, body = d.request("POST", "/v1/models/w/encode", x,
                                    {"Content-Type": "application/octet-stream"})
            assert st == 200, body[:300]
            d.admin("DELETE", "/v1/admin/models/w", want=204)
            if measure:
                rss.append(settled_rss_mb(d.proc.pid))
        return rss
    finally:
        d.stop()


def test_unload_frees_encode_buffers(tmp_path):
    """An unload gives the model's encode buffers back. They are per-thread blocks (17 MB
    per thread here) of the model's batcher thread and its OpenMP workers, which end at the
    unload: they once stayed allocated (34 MB more per cycle), and then, freed, stayed in
    malloc's arenas (RSS 12 MB after the first cycle, 63 MB from the fourth) until saed
    fixed its malloc thresholds (src/server/main.c). RSS is measured on the build without
    sanitizers (ASan's allocator holds freed memory in its quarantine); the ASan build runs
    the same cycles, and LeakSanitizer's report at its stop catches a leak."""
    load_encode_unload_rss(tmp_path / "saed", measure=False)
    plain = plain_saed_path()
    if not plain.is_file():
        pytest.skip(f"no build without sanitizers at {plain}")
    rss = load_encode_unload_rss(tmp_path / "plain", exe=plain)
    assert rss[-1] - rss[0] < 8, f"RSS after each cycle (MB): {rss}"


@pytest.mark.parametrize("path,status", [
    ("../outside/topk", 403), ("topk/../../outside/topk", 403), ("/etc", 403),
    ("/", 403), ("nope", 404), ("topk/cfg.json", 422), ("", 422),
])
def test_paths_outside_roots(fresh, path, status):
    d, root, outside = fresh
    out = d.admin("POST", "/v1/admin/models", {"id": "x", "path": path}, want=status)
    assert "error" in out


def test_symlink_out_of_root(fresh):
    d, root, outside = fresh
    os.symlink(outside / "topk", root / "link")
    out = d.admin("POST", "/v1/admin/models", {"id": "x", "path": "link"}, want=403)
    assert out["error"]["code"] == "path_forbidden"
    out = d.admin("POST", "/v1/admin/models", {"id": "x", "path": str(root / "link")}, want=403)


def test_bad_admin_requests(fresh):
    d, root, _ = fresh
    d.admin("POST", "/v1/admin/models", {"id": "bad/id", "path": "topk"}, want=422)
    d.admin("POST", "/v1/admin/models", {"id": ".hidden", "path": "topk"}, want=422)
    d.admin("POST", "/v1/admin/models", {"path": "topk"}, want=422)
    d.admin("POST", "/v1/admin/models", [1], want=422)
    broken = root / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text("{}")
    out = d.admin("POST", "/v1/admin/models", {"id": "b", "path": "broken"}, want=422)
    assert out["error"]["code"] == "bad_checkpoint"


def test_registered_models_survive_restart(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    write_models(root)
    state = tmp_path / "state"
    d = Daemon(state, [root])
    d.wait_ready(want=503)
    d.admin("POST", "/v1/admin/models", {"id": "keep", "path": "topk"}, want=201)
    d.admin("POST", "/v1/admin/models", {"id": "gone", "path": "gated"}, want=201)
    d.admin("DELETE", "/v1/admin/models/gone", want=204)
    d.stop()
    d2 = Daemon(state, [root])
    try:
        d2.wait_ready()
        ids = [m["id"] for m in d2.json("GET", "/v1/models")["models"]]
        assert ids == ["keep"]
    finally:
        d2.stop()


def test_sigterm_drains_in_flight(models, tmp_path):
    """Requests in flight when SIGTERM arrives are answered; the exit is 0."""
    root, ms = models
    d = Daemon(tmp_path / "state", [root], [("topk", ms["topk"][0])],
               ["--batch-wait-us", "200000"])    # each batch waits 0.2 s: requests linger
    d.wait_ready()
    results = []

    def client():
        results.append(d.request("POST", "/v1/models/topk/encode", {"inputs": [ROW]})[0])

    ts = [threading.Thread(target=client) for _ in range(8)]
    for t in ts:
        t.start()
    import time
    time.sleep(0.05)
    d.proc.send_signal(signal.SIGTERM)
    for t in ts:
        t.join()
    out = d.stop()
    assert results == [200] * 8, (results, out[-2000:])
    assert "draining" in out


def test_config_file_and_flags(models, tmp_path):
    root, ms = models
    cfg = tmp_path / "saed.json"
    cfg.write_text(json.dumps({"model": [f"a={ms['topk'][0]}"], "threads": 2,
                               "max-body-mb": 1}))
    d = Daemon(tmp_path / "state", [root], [], ["--config", str(cfg), "--model",
                                                 f"b={ms['standard'][0]}"])
    try:
        d.wait_ready()
        ids = [m["id"] for m in d.json("GET", "/v1/models")["models"]]
        assert ids == ["b"], "a flag replaces the file's list"
    finally:
        d.stop()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no-such-key": 1}))
    r = subprocess.run([str(saed_path()), "--config", str(bad), "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no-such-key" in r.stderr


@pytest.mark.parametrize("mode", ["all", "errors", "off"])
def test_request_log(models, tmp_path, mode):
    """--request-log: a line per request, only for failures, or none; the rest of the
    log (start, stop) stays."""
    root, ms = models
    d = Daemon(tmp_path / "state", [root], [("topk", ms["topk"][0])],
               ["--request-log", mode])
    try:
        d.wait_ready()
        d.json("POST", "/v1/models/topk/encode", {"inputs": [ROW]})
        d.json("GET", "/v1/models/nope", want=404)
    finally:
        out = d.stop()
    ok = '"POST /v1/models/topk/encode" 200' in out
    failed = '"GET /v1/models/nope" 404' in out
    assert (ok, failed) == {"all": (True, True), "errors": (False, True),
                            "off": (False, False)}[mode], out[-3000:]
    assert "listening on" in out and "stopped" in out


def test_bad_flags_exit_2(tmp_path):
    for argv in (["--nope"], ["--state-dir", str(tmp_path), "--threads", "0"],
                 ["--state-dir", str(tmp_path), "--listen", "nowhere"],
                 ["--state-dir", str(tmp_path), "--request-log", "some"]):
        r = subprocess.run([str(saed_path())] + argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (argv, r.stderr)


def test_sd_notify(models, tmp_path):
    """READY=1 and STOPPING=1 arrive on $NOTIFY_SOCKET."""
    import socket
    root, ms = models
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    d = Daemon(tmp_path / "state", [root], [("topk", ms["topk"][0])],
               env={"NOTIFY_SOCKET": path})
    try:
        assert s.recv(256) == b"READY=1"
    finally:
        d.stop()
    assert s.recv(256) == b"STOPPING=1"
    s.close()
