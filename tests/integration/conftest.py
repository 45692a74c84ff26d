"""Fixtures for the integration tests (the harness is saed_harness.py: a module
name of its own, since tests/reference has a conftest.py too)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from saed_harness import Daemon, write_models  # noqa: E402


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("roots") / "models"
    root.mkdir()
    return root, write_models(root)


@pytest.fixture(scope="session")
def saed(models, tmp_path_factory):
    """The shared daemon: every architecture loaded with --model (id = arch name)."""
    root, ms = models
    state = tmp_path_factory.mktemp("state") / "state"
    d = Daemon(state, [root], [(a, ms[a][0]) for a in ms], ["--max-body-mb", "1"])
    d.wait_ready()
    yield d
    d.stop()


@pytest.fixture
def rng(request):
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))
