"""The route table (saed --print-routes) and api/openapi.yaml list the same routes, and
every route documents its error responses."""
from __future__ import annotations

import subprocess

import yaml

from saed_harness import REPO, saed_path

SPEC = REPO / "api" / "openapi.yaml"


def spec():
    return yaml.safe_load(SPEC.read_text())


def test_routes_match_spec():
    out = subprocess.run([str(saed_path()), "--print-routes"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    table = {(l.split()[0].lower(), l.split()[1]) for l in out.splitlines() if l.strip()}
    s = spec()
    assert s["openapi"].startswith("3.1")
    documented = {(m, p) for p, ops in s["paths"].items() for m in ops
                  if m in ("get", "post", "put", "delete", "patch")}
    assert table == documented, (f"in the table only: {sorted(table - documented)}; "
                                 f"in the spec only: {sorted(documented - table)}")


def test_admin_routes_need_bearer_in_spec():
    out = subprocess.run([str(saed_path()), "--print-routes"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    s = spec()
    for line in out.splitlines():
        method, path, scope = line.split()
        op = s["paths"][path][method.lower()]
        has_sec = bool(op.get("security"))
        assert has_sec == (scope == "admin"), f"{method} {path}: security {op.get('security')}"
        assert op.get("responses"), f"{method} {path}: no responses"
