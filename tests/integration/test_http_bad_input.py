"""Bad input: each case gets a JSON error with the right status, and the daemon keeps
serving afterwards (checked after every case)."""
from __future__ import annotations

import json
import socket
import time

import pytest

from saed_harness import D_IN, TOKEN

ROW = [0.5] * D_IN


def assert_error(st, data, status, code=None):
    assert st == status, f"got {st} {data[:300]!r}, want {status}"
    err = json.loads(data)["error"]
    assert isinstance(err["message"], str) and err["message"]
    if code:
        assert err["code"] == code, err


@pytest.fixture(autouse=True)
def still_serving(saed):
    yield
    out = saed.json("POST", "/v1/models/topk/encode", {"inputs": [ROW]})
    assert len(out["codes"]) == 1


ENC = "/v1/models/topk/encode"

CASES = {
    "malformed_json": ('{"inputs": [[1, 2', 400, "invalid_json"),
    "not_json": ("hello", 400, "invalid_json"),
    "empty_body": ("", 400, "invalid_json"),
    "nan_literal": ('{"inputs": [[NaN' + ", 0" * (D_IN - 1) + "]]}", 400, "invalid_json"),
    "inf_literal": ('{"inputs": [[Infinity' + ", 0" * (D_IN - 1) + "]]}", 400, "invalid_json"),
    "overflow_1e999": ('{"inputs": [[1e999' + ", 0" * (D_IN - 1) + "]]}", 400, "invalid_json"),
    "beyond_float32": ('{"inputs": [[1e39' + ", 0" * (D_IN - 1) + "]]}", 422, "non_finite"),
    "wrong_width": (json.dumps({"inputs": [[0.5] * (D_IN - 1)]}), 422, "invalid_shape"),
    "ragged": (json.dumps({"inputs": [ROW, ROW[:-1]]}), 422, "invalid_shape"),
    "no_rows": (json.dumps({"inputs": []}), 422, "invalid_shape"),
    "missing_inputs": (json.dumps({"rows": [ROW]}), 422, "invalid_request"),
    "not_object": (json.dumps([ROW]), 422, "invalid_request"),
    "inputs_not_array": (json.dumps({"inputs": 3}), 422, "invalid_request"),
    "row_not_array": (json.dumps({"inputs": [1.0]}), 422, "invalid_type"),
    "string_value": (json.dumps({"inputs": [["x"] + ROW[1:]]}), 422, "invalid_type"),
    "null_value": (json.dumps({"inputs": [[None] + ROW[1:]]}), 422, "invalid_type"),
    "bad_top_k": (json.dumps({"inputs": [ROW], "top_k": 0}), 422, "invalid_type"),
    "top_k_string": (json.dumps({"inputs": [ROW], "top_k": "3"}), 422, "invalid_type"),
    "bad_reconstruct": (json.dumps({"inputs": [ROW], "reconstruct": 1}), 422, "invalid_type"),
    "duplicate_key": ('{"inputs": [[0]], "inputs": [[0]]}', 400, "invalid_json"),
    "deep_100k": ("[" * 100_000, 400, "too_deep"),
    "deep_objects": ('{"a":' * 50_000, 400, "too_deep"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_encode_body(saed, name):
    body, status, code = CASES[name]
    t0 = time.monotonic()
    st, _, data = saed.request("POST", ENC, body, {"Content-Type": "application/json"})
    assert_error(st, data, status, code)
    assert time.monotonic() - t0 < 5


def test_binary_bad_length(saed):
    st, _, data = saed.request("POST", ENC, b"\0" * (4 * D_IN + 2),
                               {"Content-Type": "application/octet-stream"})
    assert_error(st, data, 422, "invalid_shape")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_binary_non_finite(saed, bad):
    import struct
    body = struct.pack("<%df" % D_IN, bad, *ROW[1:])
    st, _, data = saed.request("POST", ENC, body, {"Content-Type": "application/octet-stream"})
    assert_error(st, data, 422, "non_finite")


@pytest.mark.parametrize("row, col", [(0, 0), (37, 5), (40, D_IN - 1)])
def test_binary_non_finite_names_its_place(saed, row, col):
    """The first value that is not finite is named, wherever it lies in the body."""
    import struct
    values = ROW * 42
    values[row * D_IN + col] = float("nan")
    values[-1] = float("inf")    # a later one: the first is reported
    st, _, data = saed.request("POST", ENC, struct.pack("<%df" % len(values), *values),
                               {"Content-Type": "application/octet-stream"})
    assert_error(st, data, 422, "non_finite")
    assert f"row {row} column {col} is not finite" in json.loads(data)["error"]["message"]


def test_wrong_content_type(saed):
    st, _, data = saed.request("POST", ENC, json.dumps({"inputs": [ROW]}),
                               {"Content-Type": "text/plain"})
    assert_error(st, data, 415, "unsupported_media_type")


def test_body_over_limit_413_before_reading_it(saed):
    """Content-Length over the 1 MiB limit: answered at once, without the body."""
    s = socket.create_connection(("127.0.0.1", saed.port), timeout=10)
    try:
        s.sendall(b"POST " + ENC.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 500000000\r\n\r\n")
        s.sendall(b"{" * 1000)    # a little of the body, never the rest
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 413"), data[:200]
    finally:
        s.close()


def test_chunked_body_over_limit(saed):
    """No Content-Length: the bytes past the limit are dropped and the answer is 413."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", saed.port, timeout=30)
    try:
        def gen():
            for _ in range(20):
                yield b" " * 100_000
        c.request("POST", ENC, body=gen(), headers={"Content-Type": "application/json"},
                  encode_chunked=True)
        r = c.getresponse()
        assert_error(r.status, r.read(), 413, "body_too_large")
    finally:
        c.close()


@pytest.mark.parametrize("path", ["/v1/models/nope", "/v1/models/nope/features/0/vector",
                                  "/v1/models/topk/features/128/vector",
                                  "/v1/models/topk/features/x/vector", "/nope", "/v1/models/"])
def test_not_found(saed, path):
    st, _, data = saed.request("GET", path)
    assert_error(st, data, 404)


def test_encode_unknown_model(saed):
    st, _, data = saed.request("POST", "/v1/models/nope/encode", json.dumps({"inputs": [ROW]}))
    assert_error(st, data, 404, "model_not_found")


def test_wrong_method(saed):
    st, hd, data = saed.request("GET", ENC)
    assert_error(st, data, 405, "method_not_allowed")
    assert hd["Allow"] == "POST"
    st, hd, data = saed.request("DELETE", "/v1/models/topk")
    assert_error(st, data, 405)


def test_decode_bad(saed):
    D = "/v1/models/topk/decode"
    for body, status in [({"codes": [{"indices": [128], "values": [1.0]}]}, 422),
                         ({"codes": [{"indices": [-1], "values": [1.0]}]}, 422),
                         ({"codes": [{"indices": [1, 2], "values": [1.0]}]}, 422),
                         ({"codes": [{"indices": [1], "values": ["a"]}]}, 422),
                         ({"codes": []}, 422), ({"codes": [[1]]}, 422)]:
        st, _, data = saed.request("POST", D, body)
        assert_error(st, data, status)
    st, _, data = saed.request("POST", D, "{{", {"Content-Type": "application/json"})
    assert_error(st, data, 400, "invalid_json")


def test_admin_without_token(saed):
    st, hd, data = saed.request("POST", "/v1/admin/models", {"id": "x", "path": "topk"})
    assert_error(st, data, 401, "unauthorized")
    assert hd.get("WWW-Authenticate") == "Bearer"


def test_admin_wrong_token(saed):
    for h in ("Bearer wrong", "Bearer " + TOKEN + "x", "Bearer " + TOKEN[:-1], "Basic abc",
              "Bearer "):
        st, _, data = saed.request("DELETE", "/v1/admin/models/topk", None, {"Authorization": h})
        assert_error(st, data, 401)
    assert saed.json("GET", "/v1/models/topk")["id"] == "topk"


def test_slow_client_is_cut_off(models, tmp_path):
    """A client that never finishes its body is disconnected by the idle timeout, and
    others are served meanwhile."""
    from saed_harness import Daemon
    root, ms = models
    d = Daemon(tmp_path / "state", [root], [("topk", ms["topk"][0])], ["--timeout-s", "1"])
    try:
        d.wait_ready()
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(b"POST " + ENC.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inp")
        assert d.json("GET", "/healthz")["status"] == "ok"
        t0 = time.monotonic()
        data = s.recv(4096)       # the server closes: b"" (or a reset)
        assert data == b"" and time.monotonic() - t0 < 8
        s.close()
        assert "timeout" in d.output()
    finally:
        d.stop()
