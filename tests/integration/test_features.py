"""The feature store over HTTP: GET /v1/models/{id}/features[/{f}[/examples]],
POST .../features/{f}/explanations and GET /v1/models/{id}/calibration.

One small synthetic corpus and a random top-k SAE are profiled with `saectl profile` into the
daemon's state directory before it starts (plus a second profile that fails half way, which
stays marked running). The daemon serves the checkpoint under another id, so the profiled id
is never loaded for encode: these routes read the store only.

Values are held to numpy as tests/reference/test_profile.py holds saectl: the codes of the
corpus come from `saectl encode --dense` in one batch (bit-identical to what the profile
saw), themselves checked here against the numpy reference sae_ref.py; counts, max, mean,
quantiles, bucket counts, top examples and the calibration table (mean, 95% CI, Pearson r)
are recomputed from them in numpy. The single-feature, examples and calibration documents
must also be byte-identical to what saectl prints for the same store.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import make_ckpt as mk
import refcheck as rc
from profile_ref import check_calibration, check_feature_stats
import sae_ref
from saed_harness import REPO, Daemon

D_IN, M, K = 16, 40, 6
TOP, PER_BUCKET, NEG, WINDOW, SEED = 10, 7, 5, 9, 3
MID, BROKEN = "feat-m", "broken"


def saectl_path() -> str:
    p = Path(os.environ.get("SAECTL") or REPO / "build" / "src" / "cli" / "saectl")
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"saectl not found at {p} (build it, or set SAECTL)", pytrace=False)
    return str(p)


def saectl(*args, ok=True):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    r = subprocess.run([saectl_path()] + [str(a) for a in args], capture_output=True,
                       text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode >= 0 and "Sanitizer" not in r.stderr, r.stderr[-3000:]
    if ok:
        assert r.returncode == 0, f"saectl {args}: {r.stderr[-3000:]}"
    return r


def profile_args(state, model, corpus, mid, n_rows):
    return ["profile", "--model", model, "--corpus", corpus, "--state", state, "--model-id",
            mid, "--top", TOP, "--per-bucket", PER_BUCKET, "--negatives", NEG, "--window",
            WINDOW, "--seed", SEED, "--batch", n_rows]


def break_last_row(src: Path, dst: Path):
    """A copy of the corpus whose last activation row is NaN: the profile fails there, after
    it has marked its run as running."""
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    shard = dst / json.loads((dst / "dataset.json").read_text())["shards"][-1]
    t = load_file(str(shard))
    t["activations"][-1, 0] = np.nan
    save_file(t, str(shard))


class Env:
    """The corpus, the model, its dense codes, the state directory and the daemon."""

    def __init__(self, root: Path):
        self.corpus, self.state = root / "corpus", root / "state"
        saectl("synth", "--out", self.corpus, "--d-in", D_IN, "--features", 24, "--tokens",
               6000, "--seed", 7)
        meta = json.loads((self.corpus / "dataset.json").read_text())
        parts = [load_file(str(self.corpus / s)) for s in meta["shards"]]
        self.x = np.concatenate([p["activations"] for p in parts])
        self.tokens = np.concatenate([p["tokens"] for p in parts])
        self.vocab = json.loads((self.corpus / meta["vocab"]).read_text())
        self.root = root / "models"
        self.model = self.root / "sae"
        cfg = mk.native_cfg("topk", D_IN, M, k=K)
        w = mk.write_native(self.model, cfg, mk.random_weights(np.random.default_rng(11),
                                                                 "topk", D_IN, M))
        np.save(root / "x.npy", self.x)
        saectl("encode", "--model", self.model, "--input", root / "x.npy", "--output",
               root / "codes.safetensors", "--dense")
        self.codes = load_file(str(root / "codes.safetensors"))["codes"]
        rc.check_dense(self.codes, sae_ref.encode(self.x.astype(np.float64), cfg, w), "corpus")
        saectl(*profile_args(self.state, self.model, self.corpus, MID, len(self.x)))
        break_last_row(self.corpus, root / "bad_corpus")
        r = saectl(*profile_args(self.state, self.model, root / "bad_corpus", BROKEN,
                                 len(self.x)), ok=False)
        assert r.returncode == 1 and "non-finite" in r.stderr, r.stderr
        # Served under another id: the profiled id is never loaded for encode.
        self.d = Daemon(self.state, [self.root], [("served", self.model)]).wait_ready()

    def get(self, path, want=200):
        return self.d.json("GET", path, want=want)

    def nz(self, f):
        col = self.codes[:, f]
        return col[col != 0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("features"))
    yield e
    e.d.stop()


def raw(env, path):
    st, _, body = env.d.request("GET", path)
    assert st == 200, body[:300]
    return body


# ---------------------------------------------------------------- reads against numpy

def test_profiled_model_needs_no_loaded_model(env):
    env.get(f"/v1/models/{MID}", want=404)
    assert env.get(f"/v1/models/{MID}/features/0")["feature"] == 0


def test_feature_matches_numpy(env):
    N = len(env.x)
    for f in range(M):
        got = env.get(f"/v1/models/{MID}/features/{f}")
        nz = env.nz(f)
        assert got["model_id"] == MID and got["feature"] == f and got["n_tokens"] == N
        assert got["examples"] == {"top": min(TOP, len(nz)), "negative": got["examples"]["negative"]}
        check_feature_stats(got, nz, N, f)


def test_feature_bytes_equal_saectl(env):
    for f in (0, 7, M - 1):
        cli = saectl("feature", "--state", env.state, "--model-id", MID, "--feature", f).stdout
        assert raw(env, f"/v1/models/{MID}/features/{f}").decode() + "\n" == cli


def summaries_numpy(env):
    N = len(env.x)
    rows = []
    for f in range(M):
        nz = env.nz(f)
        rows.append({"feature": f, "count": len(nz), "density": len(nz) / N,
                     "mean": float(nz.astype(np.float64).mean()) if len(nz) else None,
                     "max": float(nz.max()) if len(nz) else None})
    return rows


def check_rows(got, want):
    assert [g["feature"] for g in got] == [w["feature"] for w in want]
    for g, w in zip(got, want):
        assert g["count"] == w["count"] and g["density"] == pytest.approx(w["density"], rel=1e-12)
        if w["count"]:
            assert g["mean"] == pytest.approx(w["mean"], rel=1e-9)
            assert np.float32(g["max"]) == np.float32(w["max"])
        else:
            assert g["mean"] is None and g["max"] is None


def test_features_list_pages_and_sorts(env):
    want = summaries_numpy(env)
    page = env.get(f"/v1/models/{MID}/features")
    assert (page["model_id"], page["total"], page["offset"], page["limit"], page["sort"]) == \
        (MID, M, 0, 100, "index")
    check_rows(page["features"], want)
    check_rows(env.get(f"/v1/models/{MID}/features?offset=5&limit=7")["features"], want[5:12])
    assert env.get(f"/v1/models/{MID}/features?offset={M}")["features"] == []
    assert env.get(f"/v1/models/{MID}/features?offset=999999&sort=max")["features"] == []
    assert env.get(f"/v1/models/{MID}/features?limit=0")["features"] == []
    by_count = sorted(want, key=lambda w: (-w["count"], w["feature"]))
    by_max = sorted(want, key=lambda w: (-(w["max"] if w["count"] else -np.inf), w["feature"]))
    for sort, order in (("count", by_count), ("density", by_count), ("max", by_max)):
        got = env.get(f"/v1/models/{MID}/features?sort={sort}&limit=1000")
        assert got["sort"] == sort
        check_rows(got["features"], order)
        check_rows(env.get(f"/v1/models/{MID}/features?sort={sort}&offset=3&limit=4")["features"],
                   order[3:7])


def check_window(env, f, e):
    n, row = len(e["values"]), e["row"]
    start = row - e["pos"] + e["start"]
    assert n == WINDOW and e["token_ids"] == env.tokens[start:start + n].tolist()
    assert e["tokens"] == [env.vocab[t] for t in e["token_ids"]]
    np.testing.assert_array_equal(np.float32(e["values"]), env.codes[start:start + n, f])
    assert e["value"] == e["values"][row - start]
    assert e["max_index"] == int(np.argmax(e["values"])) and e["max_value"] == max(e["values"])


def test_examples_match_numpy(env):
    for f in range(M):
        col = env.codes[:, f]
        rows = np.nonzero(col)[0]
        order = rows[np.lexsort((rows, -col[rows]))][:TOP]
        top = env.get(f"/v1/models/{MID}/features/{f}/examples")["examples"]   # kind=top
        assert [e["row"] for e in top] == order.tolist(), f
        for e in top:
            check_window(env, f, e)
        assert env.get(f"/v1/models/{MID}/features/{f}/examples?kind=top&limit=3")["examples"] \
            == top[:3]
        feat = env.get(f"/v1/models/{MID}/features/{f}")
        for b in feat["buckets"]:
            ex = env.get(f"/v1/models/{MID}/features/{f}/examples?kind=bucket&bucket={b['bucket']}")
            assert len(ex["examples"]) == b["n_examples"]
            for e in ex["examples"]:
                check_window(env, f, e)
                v = np.float32(e["value"])
                assert b["bucket"] == 0 or v >= np.float32(b["lower"])
                assert b["bucket"] == 4 or v < np.float32(b["upper"])
        for e in env.get(f"/v1/models/{MID}/features/{f}/examples?kind=negative")["examples"]:
            check_window(env, f, e)
            assert not any(e["values"])


def test_examples_bytes_equal_saectl(env):
    for f, kind, extra in ((3, "top", []), (3, "bucket", ["--bucket", 2]), (11, "negative", [])):
        q = f"kind={kind}" + (f"&bucket={extra[1]}" if extra else "")
        cli = saectl("examples", "--state", env.state, "--model-id", MID, "--feature", f,
                     "--kind", kind, *extra).stdout
        assert raw(env, f"/v1/models/{MID}/features/{f}/examples?{q}").decode() + "\n" == cli


# ---------------------------------------------------------- explanations, calibration

def post(env, f, body, want=201, mid=MID):
    return env.d.json("POST", f"/v1/models/{mid}/features/{f}/explanations", body, want=want)


def test_explanations_and_calibration(env):
    empty = env.get(f"/v1/models/{MID}/calibration?scorer=detection")
    assert empty["n_pairs"] == 0 and empty["pearson_r"] is None
    rng = np.random.default_rng(5)
    det, every = [], []
    for f in range(M):
        for b in range(5):
            # First a score that the second post replaces: the key is (feature, bucket, scorer).
            post(env, f, {"bucket": b, "text": "draft", "scorer": "detection", "score": 9})
            score = float(np.clip(0.4 + 0.1 * b + 0.2 * rng.standard_normal(), 0, 1))
            got = post(env, f, {"bucket": b, "text": f"f{f} b{b}", "scorer": "detection",
                                "score": score, "judge": "llama"})
            assert got == {"text": f"f{f} b{b}", "score": score, "judge": "llama", "bucket": b,
                           "scorer": "detection"}
            det.append((b, score))
            if rng.uniform() < 0.3:
                post(env, f, {"bucket": b, "text": "x", "scorer": "fuzz", "score": 0})
                every.append((b, 0.0))
    every += det
    check_calibration(env.get(f"/v1/models/{MID}/calibration?scorer=detection"), det)
    check_calibration(env.get(f"/v1/models/{MID}/calibration"), every)
    got = env.get(f"/v1/models/{MID}/calibration?scorer=detection")
    assert got["scorer"] == "detection" and got["model_id"] == MID
    assert [r["centre_percentile"] for r in got["buckets"]] == [10, 30, 50, 70, 90]
    assert env.get(f"/v1/models/{MID}/calibration?scorer=nobody")["n_pairs"] == 0
    # The feature lists them in (bucket, scorer) order, as saectl does (another process on
    # the same store while the daemon holds it open).
    feat = env.get(f"/v1/models/{MID}/features/3")
    keys = [(e["bucket"], e["scorer"]) for e in feat["explanations"]]
    assert keys == sorted(keys) and {(b, "detection") for b in range(5)} <= set(keys)
    assert [e["text"] for e in feat["explanations"] if e["scorer"] == "detection"] == \
        [f"f3 b{b}" for b in range(5)]
    for path, args in ((f"/v1/models/{MID}/features/3", ["feature", "--feature", 3]),
                       (f"/v1/models/{MID}/calibration?scorer=detection",
                        ["calibration", "--scorer", "detection"]),
                       (f"/v1/models/{MID}/calibration", ["calibration"])):
        cli = saectl(*args, "--state", env.state, "--model-id", MID).stdout
        assert raw(env, path).decode() + "\n" == cli
    saectl("store-check", "--state", env.state)


# --------------------------------------------------------------------------- bad input

ROUTES = ["/features", "/features/0", "/features/0/examples", "/calibration"]


def err(env, method, path, want, body=None, headers=None):
    st, hd, data = env.d.request(method, path, body, headers)
    assert st == want, f"{method} {path}: {st} {data[:300]!r}, want {want}"
    e = json.loads(data)["error"]
    assert e["code"] and e["message"]
    return e["code"], hd


def still_serving(env):
    assert env.d.json("GET", "/healthz") == {"status": "ok"}
    assert env.get(f"/v1/models/{MID}/features/1")["feature"] == 1


def test_unknown_model_and_feature_404(env):
    good = {"bucket": 0, "text": "t", "scorer": "s", "score": 1}
    for mid in ("nobody", "served", "bad%20id", "x" * 129):
        for r in ROUTES:
            assert err(env, "GET", f"/v1/models/{mid}{r}", 404)[0] in ("model_not_found",
                                                                       "not_found")
        err(env, "POST", f"/v1/models/{mid}/features/0/explanations", 404, good)
    for f in (M, 10**6, "99999999999999999999", "-1", "abc", "1.0", "0x1"):
        for r in ("", "/examples"):
            assert err(env, "GET", f"/v1/models/{MID}/features/{f}{r}", 404)[0] == \
                "feature_not_found"
        assert err(env, "POST", f"/v1/models/{MID}/features/{f}/explanations", 404,
                   good)[0] == "feature_not_found"
    still_serving(env)


def test_bad_query_parameters_400(env):
    base = f"/v1/models/{MID}"
    for q in ("limit=abc", "limit=1001", "limit=-1", "offset=-1", "offset=1e3", "sort=bogus",
              "sort=", "limit="):
        assert err(env, "GET", f"{base}/features?{q}", 400)[0] == "invalid_parameter", q
    for q in ("kind=bogus", "kind=bucket", "kind=bucket&bucket=5", "bucket=-1", "bucket=x",
              "limit=1001", "kind=top&limit=x"):
        assert err(env, "GET", f"{base}/features/0/examples?{q}", 400)[0] == \
            "invalid_parameter", q
    for q in ("scorer=bad%20scorer", "scorer=", "scorer=" + "s" * 129):
        assert err(env, "GET", f"{base}/calibration?{q}", 400)[0] == "invalid_parameter", q
    still_serving(env)


def test_bad_explanation_bodies(env):
    path = f"/v1/models/{MID}/features/0/explanations"
    ok = {"bucket": 1, "text": "t", "scorer": "detection", "score": 0.5}
    for body in ("{bad", "", '{"bucket": 1, "score": NaN}', '{"score": 1e999}',
                 "[" * 100000, '{"a": 1, "a": 2}'):
        err(env, "POST", path, 400, body)
    bad = [[1], "str", 3, None,
           {k: v for k, v in ok.items() if k != "text"},
           {k: v for k, v in ok.items() if k != "score"},
           {k: v for k, v in ok.items() if k != "bucket"},
           {k: v for k, v in ok.items() if k != "scorer"},
           {**ok, "bucket": 5}, {**ok, "bucket": -1}, {**ok, "bucket": 1.5}, {**ok, "bucket": "1"},
           {**ok, "bucket": True}, {**ok, "text": ""}, {**ok, "text": 7},
           {**ok, "text": "x" * 8193}, {**ok, "scorer": "bad scorer"}, {**ok, "scorer": ""},
           {**ok, "scorer": "s" * 129}, {**ok, "scorer": 3}, {**ok, "score": "0.5"},
           {**ok, "score": None}, {**ok, "score": [1]}, {**ok, "judge": 3},
           {**ok, "judge": ""}, {**ok, "judge": "j" * 257}, {**ok, "extra": 1},
           {**ok, "model_id": MID}]
    for body in bad:
        assert err(env, "POST", path, 422, json.dumps(body))[0] == "invalid_explanation", body
    err(env, "POST", path, 415, json.dumps(ok), {"Content-Type": "text/plain"})
    # Limits that pass: the longest text and judge, a null judge, an integer score.
    got = post(env, 0, {**ok, "text": "x" * 8192, "judge": "j" * 256})
    assert len(got["text"]) == 8192
    assert post(env, 0, {**ok, "judge": None, "score": 1})["judge"] is None
    # Nothing bad was stored: bucket 1 holds the last good post only.
    ex = [e for e in env.get(f"/v1/models/{MID}/features/0")["explanations"]
          if e["scorer"] == "detection" and e["bucket"] == 1]
    assert ex == [{"text": "t", "score": 1.0, "judge": None, "bucket": 1, "scorer": "detection"}]
    still_serving(env)


def test_wrong_method_405(env):
    base = f"/v1/models/{MID}"
    for method, path, allow in (("POST", "/features", "GET"), ("DELETE", "/features/0", "GET"),
                                ("PUT", "/features/0/examples", "GET"),
                                ("GET", "/features/0/explanations", "POST"),
                                ("POST", "/calibration", "GET")):
        code, hd = err(env, method, base + path, 405, "{}" if method != "GET" else None)
        assert code == "method_not_allowed" and hd.get("Allow") == allow
    still_serving(env)


def test_incomplete_profile_409(env):
    for r in ROUTES:
        assert err(env, "GET", f"/v1/models/{BROKEN}{r}", 409)[0] == "profile_incomplete"
    assert err(env, "POST", f"/v1/models/{BROKEN}/features/0/explanations", 409,
               {"bucket": 0, "text": "t", "scorer": "s", "score": 1})[0] == "profile_incomplete"
    still_serving(env)
