"""Serving: every public endpoint over HTTP, encode/decode held to the numpy reference,
JSON and binary paths, dynamic batching under concurrency."""
from __future__ import annotations

import io
import json
import struct
import threading

import numpy as np
import pytest
import safetensors.numpy as stnp

import make_ckpt as mk
import refcheck as rc
import sae_ref
from saed_harness import ARCHS, D_IN, D_SAE


def codes_to_arrays(codes, arch):
    """JSON codes -> the tensors saectl would write (fixed-k or CSR)."""
    if sae_ref.canonical_arch(arch) in sae_ref.TOPK_ARCHS:
        return {"indices": np.array([c["indices"] for c in codes], np.int32),
                "values": np.array([c["values"] for c in codes], np.float32)}
    indptr = np.cumsum([0] + [len(c["indices"]) for c in codes]).astype(np.int64)
    return {"indptr": indptr,
            "indices": np.array([i for c in codes for i in c["indices"]], np.int32),
            "values": np.array([v for c in codes for v in c["values"]], np.float32)}


def check_codes(arrays, arch, x, cfg, w, ctx):
    ref = sae_ref.encode(x.astype(np.float64), cfg, w)
    if sae_ref.canonical_arch(arch) in sae_ref.TOPK_ARCHS:
        return ref, rc.check_fixed_k(arrays, ref, ctx)
    return ref, rc.check_csr(arrays, ref, ctx)


def test_health(saed):
    assert saed.json("GET", "/healthz") == {"status": "ok"}
    assert saed.json("GET", "/readyz")["status"] == "ready"


def test_models_list_and_get(saed):
    ms = saed.json("GET", "/v1/models")["models"]
    assert sorted(m["id"] for m in ms) == sorted(ARCHS)
    m = saed.json("GET", "/v1/models/topk")
    assert (m["d_in"], m["d_sae"], m["k"], m["architecture"]) == (D_IN, D_SAE, 8, "topk")
    assert m["codes"] == "fixed_k" and m["metadata"]["model_name"] == "test-model"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_encode_json_matches_reference(saed, models, arch, rng):
    _, ms = models
    _, cfg, w = ms[arch]
    x = mk.random_input(rng, 5, D_IN)
    out = saed.json("POST", f"/v1/models/{arch}/encode",
                    {"inputs": x.tolist(), "reconstruct": True})
    arrays = codes_to_arrays(out["codes"], arch)
    ref, dense = check_codes(arrays, arch, x, cfg, w, f"{arch} json")
    xh = np.array(out["reconstruction"], np.float32)
    rc.check_decode(xh, dense, ref, w, f"{arch} reconstruction")


@pytest.mark.parametrize("arch", ["topk", "standard"])
def test_encode_binary_roundtrip(saed, models, arch, rng):
    _, ms = models
    _, cfg, w = ms[arch]
    x = mk.random_input(rng, 7, D_IN)
    st, hd, data = saed.request("POST", f"/v1/models/{arch}/encode?reconstruct=true",
                                x.astype("<f4").tobytes(),
                                {"Content-Type": "application/octet-stream",
                                 "Accept": "application/octet-stream"})
    assert st == 200, data[:300]
    assert hd["Content-Type"] == "application/octet-stream"
    t = stnp.load(data)
    xh = t.pop("reconstruction")
    ref, dense = check_codes(t, arch, x, cfg, w, f"{arch} binary")
    rc.check_decode(xh, dense, ref, w, f"{arch} binary reconstruction")


def test_binary_in_json_out(saed, models, rng):
    x = mk.random_input(rng, 2, D_IN)
    st, _, data = saed.request("POST", "/v1/models/topk/encode", x.astype("<f4").tobytes(),
                               {"Content-Type": "application/octet-stream"})
    assert st == 200
    assert len(json.loads(data)["codes"]) == 2


def test_top_k(saed, models, rng):
    _, ms = models
    x = mk.random_input(rng, 3, D_IN)
    full = saed.json("POST", "/v1/models/topk/encode", {"inputs": x.tolist()})["codes"]
    part = saed.json("POST", "/v1/models/topk/encode", {"inputs": x.tolist(), "top_k": 3})
    for f, p in zip(full, part["codes"]):
        assert p["indices"] == f["indices"][:3] and p["values"] == f["values"][:3]
    # non-top-k architectures: the top_k largest values, largest first
    full = saed.json("POST", "/v1/models/standard/encode", {"inputs": x.tolist()})["codes"]
    part = saed.json("POST", "/v1/models/standard/encode",
                     {"inputs": x.tolist(), "top_k": 4})["codes"]
    for f, p in zip(full, part):
        order = sorted(zip(f["values"], f["indices"]), key=lambda t: (-t[0], t[1]))[:4]
        assert p["values"] == [v for v, _ in order] and p["indices"] == [i for _, i in order]


def test_decode_matches_reference(saed, models):
    _, ms = models
    _, cfg, w = ms["standard"]
    codes = [{"indices": [0, 5, 127], "values": [1.5, -0.25, 3.0]}, {"indices": [], "values": []}]
    out = saed.json("POST", "/v1/models/standard/decode", {"codes": codes})
    f = np.zeros((2, D_SAE))
    f[0, [0, 5, 127]] = [1.5, -0.25, 3.0]
    want = sae_ref.decode(f, w)
    np.testing.assert_allclose(np.array(out["reconstruction"]), want, rtol=1e-4, atol=1e-4)


def test_feature_vector(saed, models):
    _, ms = models
    w = ms["topk"][2]
    out = saed.json("GET", "/v1/models/topk/features/17/vector")
    assert out["model_id"] == "topk" and out["feature"] == 17
    np.testing.assert_allclose(out["vector"], w["W_dec"][17], rtol=1e-6)


def test_concurrent_requests_are_batched_and_correct(saed, models, rng):
    """64 threads of 1-row requests: every answer is its own row's, and batches merge."""
    _, ms = models
    _, cfg, w = ms["topk"]
    x = mk.random_input(rng, 256, D_IN)
    ref = sae_ref.encode(x.astype(np.float64), cfg, w)
    before = batches(saed)
    errors = []

    def client(rows):
        for r in rows:
            try:
                out = saed.json("POST", "/v1/models/topk/encode", {"inputs": [x[r].tolist()]})
                got = {"indices": np.array([out["codes"][0]["indices"]], np.int32),
                       "values": np.array([out["codes"][0]["values"]], np.float32)}
                one = sae_ref.encode(x[r:r + 1].astype(np.float64), cfg, w)
                rc.check_fixed_k(got, one, f"row {r}")
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(f"row {r}: {e}")

    threads = [threading.Thread(target=client, args=(range(i, 256, 64),)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    after = batches(saed)
    assert after[1] - before[1] == 256, "every request went through the batcher"
    assert after[0] - before[0] < 256, "concurrent requests were never merged"
    del ref


def batches(saed):
    """(batches, requests) so far, from /metrics."""
    st, _, data = saed.request("GET", "/metrics")
    text = data.decode()
    n = req = 0
    for line in text.splitlines():
        if line.startswith("saed_batch_rows_count "):
            n = int(line.split()[1])
        if line.startswith("saed_batch_requests_total "):
            req = int(line.split()[1])
    return n, req


def test_metrics(saed):
    saed.json("GET", "/healthz")
    st, hd, data = saed.request("GET", "/metrics")
    assert st == 200 and hd["Content-Type"].startswith("text/plain")
    text = data.decode()
    assert 'saed_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "saed_http_request_duration_seconds_bucket" in text
    assert "saed_models_loaded 4" in text
    assert "saed_queue_rows" in text and "saed_batch_rows_bucket" in text
