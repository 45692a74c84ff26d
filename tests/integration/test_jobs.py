"""Admin jobs: `saectl train` / `saectl profile` as children of saed - progress, the
served result, Server-Sent Events, cancel, bad requests - and the faults: kill -9 of
saed during a training job and during a profile job, restart on the same state
directory, resume (the resumed training equals an uninterrupted run byte for byte).

saectl is $SAECTL, else build/src/cli/saectl."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from saed_harness import CRASH_MARKERS, REPO, TOKEN, Daemon

# One OpenMP thread in the children: with two on a busy two-core runner, a tiny
# training step spends most of its time spinning.
ENV = {"OMP_NUM_THREADS": "1"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
# A tiny ptopk run over the synthetic corpus: a few hundred steps take well under a second.
TRAIN = {"kind": "train", "corpus": "corpus", "arch": "ptopk", "k": 4, "d_sae": 64,
         "batch": 128, "seed": 3, "checkpoint_every": 100}


def saectl_path() -> Path:
    env = os.environ.get("SAECTL")
    return Path(env) if env else REPO / "build" / "src" / "cli" / "saectl"


def saectl(*args, check=True):
    return subprocess.run([str(saectl_path()), *map(str, args)], capture_output=True,
                          text=True, check=check, timeout=120, env={**os.environ, **ENV})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A model root holding a 20k-token synthetic corpus (d_in 16)."""
    r = tmp_path_factory.mktemp("jobroot")
    saectl("synth", "--out", r / "corpus", "--d-in", 16, "--features", 32, "--tokens", 20000,
           "--seed", 1, "--context-len", 32)
    return r


@pytest.fixture(autouse=True)
def clean_job_logs(tmp_path):
    """The children's logs carry no sanitizer report either (CI runs them under ASan)."""
    yield
    for log in (tmp_path / "state" / "jobs").glob("*.log"):
        text = log.read_text(errors="replace")
        for m in CRASH_MARKERS:
            assert m not in text, f"{log} reports '{m}'\n{text[-4000:]}"


def start(state: Path, root: Path, ready=503, extra=()):
    d = Daemon(state, [root], extra=["--saectl", str(saectl_path()), *extra], env=ENV)
    return d.wait_ready(want=ready)


def submit(d, body, want=202):
    return d.admin("POST", "/v1/admin/jobs", body, want=want)


def wait_job(d, jid, want="succeeded", timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = d.admin("GET", f"/v1/admin/jobs/{jid}")
        if j["state"] == want:
            return j
        assert j["state"] not in FINAL, f"job {jid} is {j['state']}: {j['error']}"
        time.sleep(0.05)
    pytest.fail(f"job {jid} not {want} in {timeout}s\n{d.output()[-3000:]}")


def wait_until(d, jid, pred, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = d.admin("GET", f"/v1/admin/jobs/{jid}")
        if pred(j):
            return j
        assert j["state"] not in FINAL, f"job {jid} ended early: {j['state']} {j['error']}"
        time.sleep(0.02)
    pytest.fail(f"job {jid}: condition not met in {timeout}s")


def crash(d, child_pid):
    """Freezes the job's child (so the kill lands mid-job, not after it), then kill -9
    saed; the child dies with it (PR_SET_PDEATHSIG)."""
    os.kill(child_pid, signal.SIGSTOP)
    d.proc.kill()
    d.proc.wait()
    d.stop(check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{child_pid}/stat").read_text()
        except OSError:
            return
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return      # dead, waiting for a reaper that is not ours
        time.sleep(0.02)
    pytest.fail(f"the job's child {child_pid} outlived saed")


def encodes(d, model_id):
    out = d.json("POST", f"/v1/models/{model_id}/encode", {"inputs": [[0.1] * 16]})
    assert len(out["codes"]) == 1 and out["codes"][0]["indices"]


def test_train_job_registers_and_serves(root, tmp_path):
    d = start(tmp_path / "state", root)
    j = submit(d, {**TRAIN, "out": "served", "steps": 200, "model_id": "trained"})
    assert j["state"] == "queued" and j["id"].startswith("job-")
    assert j["paths"]["out"] == str((root / "served").resolve())
    j = wait_job(d, j["id"])
    assert j["progress"]["step"] == j["progress"]["total"] == 200
    assert j["progress"]["fraction"] == 1.0 and "tokens_per_s" in j["progress"]
    assert {"mse", "fvu", "l0"} <= set(j["metrics"]) and j["error"] is None
    assert j["attempts"] == 1 and j["finished_at"] and j["pid"] is None
    assert Path(j["log"]).is_file()
    encodes(d, "trained")
    assert [m["id"] for m in d.admin("GET", "/v1/admin/models")["models"]] == ["trained"]
    assert [x["id"] for x in d.admin("GET", "/v1/admin/jobs")["jobs"]] == [j["id"]]
    _, _, metrics = d.request("GET", "/metrics")
    assert b'saed_jobs{state="succeeded"} 1' in metrics
    # the id is served now: another job may not register it
    out = submit(d, {**TRAIN, "out": "again", "model_id": "trained"}, want=409)
    assert out["error"]["code"] == "model_exists"
    d.stop()


def test_profile_job_fills_the_store(root, tmp_path):
    state = tmp_path / "state"
    d = start(state, root)
    wait_job(d, submit(d, {**TRAIN, "out": "prof", "steps": 100, "model_id": "pm"})["id"])
    j = submit(d, {"kind": "profile", "model": "pm", "corpus": "corpus", "max_tokens": 4000,
                   "top": 8, "per_bucket": 4})
    assert j["params"]["model_id"] == "pm"     # defaulted from the served model
    j = wait_job(d, j["id"])
    assert j["progress"]["phase"] and j["metrics"] is None
    feat = json.loads(saectl("feature", "--state", state, "--model-id", "pm",
                             "--feature", 0).stdout)
    assert feat["n_tokens"] == 4000
    # a checkpoint path needs an explicit model_id
    out = submit(d, {"kind": "profile", "model": "prof", "corpus": "corpus"}, want=422)
    assert "model_id" in out["error"]["message"]
    d.stop()


def read_events(d, jid, timeout=60):
    """The whole SSE stream of a job: [(event, data)], and the response headers."""
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=timeout)
    try:
        c.request("GET", f"/v1/admin/jobs/{jid}/events", headers=AUTH)
        r = c.getresponse()
        assert r.status == 200
        events, ev, data = [], None, None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and ev:
                events.append((ev, data))
                ev = data = None
        return events, dict(r.getheaders())
    finally:
        c.close()


def test_event_stream(root, tmp_path):
    d = start(tmp_path / "state", root)
    j = submit(d, {**TRAIN, "out": "sse", "steps": 400})
    events, headers = read_events(d, j["id"])
    assert headers["Content-Type"] == "text/event-stream"
    kinds = [e for e, _ in events]
    assert kinds[0] == "state" and kinds[-1] == "state", kinds
    assert "progress" in kinds, kinds
    assert events[-1][1]["state"] == "succeeded"
    steps = [data["progress"]["step"] for e, data in events if e == "progress"]
    assert steps == sorted(steps) and steps[-1] <= 400
    # a finished job's stream is its final state, at once
    again, _ = read_events(d, j["id"])
    assert [(e, x["state"]) for e, x in again] == [("state", "succeeded")]
    st, _, _ = d.request("GET", f"/v1/admin/jobs/{j['id']}/events")
    assert st == 401
    d.admin("GET", "/v1/admin/jobs/job-999999/events", want=404)
    d.stop()


def test_cancel_queued_and_running(root, tmp_path):
    d = start(tmp_path / "state", root, extra=["--max-jobs", "1", "--job-grace-s", "5"])
    a = submit(d, {**TRAIN, "out": "long", "steps": 1000000})
    b = submit(d, {**TRAIN, "out": "waits", "steps": 10})
    out = submit(d, {**TRAIN, "out": "long", "steps": 10}, want=409)
    assert out["error"]["code"] == "job_conflict"
    wait_until(d, a["id"], lambda j: j["state"] == "running" and j["progress"])
    assert d.admin("GET", f"/v1/admin/jobs/{b['id']}")["state"] == "queued"
    assert d.admin("DELETE", f"/v1/admin/jobs/{b['id']}", want=202)["state"] == "cancelled"
    out = d.admin("DELETE", f"/v1/admin/jobs/{a['id']}", want=202)
    assert out["cancel_requested"] is True
    j = wait_job(d, a["id"], want="cancelled")
    assert j["resumable"] and j["pid"] is None
    d.admin("DELETE", f"/v1/admin/jobs/{a['id']}", want=409)
    # a cancelled train job resumes from the checkpoint its SIGTERM wrote
    r = d.admin("POST", f"/v1/admin/jobs/{a['id']}/resume", want=202)
    assert r["state"] == "queued"
    j = wait_until(d, a["id"], lambda j: j["state"] == "running" and j["attempts"] == 2)
    d.admin("DELETE", f"/v1/admin/jobs/{a['id']}", want=202)
    wait_job(d, a["id"], want="cancelled")
    assert "--resume" in Path(j["log"]).read_text().splitlines()[-2]
    d.stop()


@pytest.mark.parametrize("body,status,code", [
    ({"kind": "nope"}, 422, "invalid_kind"),
    ({}, 422, "invalid_kind"),
    ([1], 422, "invalid_request"),
    ({**TRAIN, "out": "x", "bogus": 1}, 422, "unknown_param"),
    ({**TRAIN, "out": "x", "config": "/etc/passwd"}, 422, "unknown_param"),
    ({**TRAIN, "out": "x", "steps": "10"}, 422, "invalid_type"),
    ({**TRAIN, "out": "x", "steps": -1}, 422, "invalid_type"),
    ({**TRAIN, "out": "x", "arch": "--resume"}, 422, "invalid_type"),
    ({**TRAIN, "out": "x", "model_id": "bad/id"}, 422, "invalid_id"),
    ({**TRAIN}, 422, "invalid_request"),
    ({**TRAIN, "out": "x", "corpus": "../outside"}, 403, "path_forbidden"),
    ({**TRAIN, "out": "x", "corpus": "/etc"}, 403, "path_forbidden"),
    ({**TRAIN, "out": "/tmp/x"}, 403, "path_forbidden"),
    ({**TRAIN, "out": "../x"}, 403, "path_forbidden"),
    ({**TRAIN, "out": "nodir/x"}, 404, "path_not_found"),
    ({**TRAIN, "out": "x", "corpus": "nope"}, 404, "path_not_found"),
    ({"kind": "profile", "corpus": "corpus"}, 422, "invalid_request"),
])
def test_bad_job_requests(root, tmp_path, body, status, code):
    d = start(tmp_path / "state", root)
    out = submit(d, body, want=status)
    assert out["error"]["code"] == code, out
    assert d.admin("GET", "/v1/admin/jobs")["jobs"] == []
    d.stop()


def test_job_routes_refuse_without_token_and_unknown_ids(root, tmp_path):
    d = start(tmp_path / "state", root)
    st, _, _ = d.request("POST", "/v1/admin/jobs", {**TRAIN, "out": "x"})
    assert st == 401
    st, _, _ = d.request("GET", "/v1/admin/jobs", headers={"Authorization": "Bearer nope"})
    assert st == 401
    st, _, data = d.request("POST", "/v1/admin/jobs", "{not json", AUTH)
    assert st == 400
    for method, path in [("GET", "/v1/admin/jobs/job-000042"),
                         ("DELETE", "/v1/admin/jobs/job-000042"),
                         ("POST", "/v1/admin/jobs/job-000042/resume")]:
        assert d.admin(method, path, want=404)["error"]["code"] == "job_not_found"
    assert d.json("GET", "/healthz")["status"] == "ok"
    d.stop()


def test_kill9_during_training_then_resume(root, tmp_path):
    cfg = {**TRAIN, "steps": 1000}
    flags = ["--arch", "ptopk", "--k", 4, "--d-sae", 64, "--batch", 128, "--seed", 3,
             "--steps", 1000, "--checkpoint-every", 100]
    saectl("train", "--corpus", root / "corpus", "--out", root / "ref", *flags)
    state = tmp_path / "state"
    d = start(state, root)
    d.admin("POST", "/v1/admin/models", {"id": "keep", "path": "ref"}, want=201)
    j = submit(d, {**cfg, "out": "crashed", "model_id": "resumed"})
    j = wait_until(d, j["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 300)
    crash(d, j["pid"])

    d = start(state, root, ready=200)
    encodes(d, "keep")                      # the registry survived
    j2 = d.admin("GET", f"/v1/admin/jobs/{j['id']}")
    assert j2["state"] == "interrupted" and j2["resumable"], j2
    d.json("GET", "/v1/models/resumed", want=404)
    d.admin("POST", f"/v1/admin/jobs/{j['id']}/resume", want=202)
    j2 = wait_job(d, j["id"])
    assert j2["attempts"] == 2 and j2["progress"]["step"] == 1000
    encodes(d, "resumed")
    assert (root / "crashed" / "sae_weights.safetensors").read_bytes() == \
        (root / "ref" / "sae_weights.safetensors").read_bytes()
    d.stop()
    # and the registered model comes back after a clean restart
    d = start(state, root, ready=200)
    encodes(d, "resumed")
    d.stop()


def test_kill9_during_profile_then_resume(root, tmp_path):
    state = tmp_path / "state"
    d = start(state, root)
    # a wide model, so the profile runs long enough to be caught mid-way
    wait_job(d, submit(d, {**TRAIN, "out": "wide", "d_sae": 512, "k": 8, "steps": 20,
                           "model_id": "wide"})["id"])
    j = submit(d, {"kind": "profile", "model": "wide", "corpus": "corpus"})
    j = wait_until(d, j["id"], lambda j: j["progress"] is not None and j["pid"])
    crash(d, j["pid"])

    d = start(state, root, ready=200)
    encodes(d, "wide")
    j2 = d.admin("GET", f"/v1/admin/jobs/{j['id']}")
    assert j2["state"] == "interrupted", j2
    # the store opens and is consistent; the profile is marked incomplete
    assert saectl("store-check", "--state", state).returncode == 0
    assert saectl("feature", "--state", state, "--model-id", "wide", "--feature", 0,
                  check=False).returncode != 0
    d.admin("POST", f"/v1/admin/jobs/{j['id']}/resume", want=202)
    wait_job(d, j["id"])
    feat = json.loads(saectl("feature", "--state", state, "--model-id", "wide",
                             "--feature", 0).stdout)
    assert feat["n_tokens"] == 20000
    assert saectl("store-check", "--state", state).returncode == 0
    d.stop()


def test_sigterm_interrupts_a_running_job(root, tmp_path):
    state = tmp_path / "state"
    d = start(state, root)
    j = submit(d, {**TRAIN, "out": "stopped", "steps": 1000000})
    wait_until(d, j["id"], lambda j: j["state"] == "running" and j["progress"])
    out = d.stop()      # SIGTERM: the child checkpoints and exits; saed exits 0
    assert "interrupted" in out
    d = start(state, root)
    j2 = d.admin("GET", f"/v1/admin/jobs/{j['id']}")
    assert j2["state"] == "interrupted" and "shutdown" in j2["error"]
    assert (root / "stopped" / "checkpoints" / "latest").is_file()
    d.stop()
    # restarted with other model roots, the job's paths are outside them: no resume
    other = tmp_path / "other-root"
    other.mkdir()
    d = start(state, other)
    out = d.admin("POST", f"/v1/admin/jobs/{j['id']}/resume", want=404)
    assert out["error"]["code"] == "path_not_found"
    # the same relative names inside the new root are other directories: no resume either
    (other / "corpus").mkdir()
    out = d.admin("POST", f"/v1/admin/jobs/{j['id']}/resume", want=409)
    assert out["error"]["code"] == "paths_changed"
    assert d.admin("GET", f"/v1/admin/jobs/{j['id']}")["state"] == "interrupted"
    d.stop()
