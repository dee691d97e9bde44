"""deploy/serve.py: two Streamlit replicas behind nginx on loopback, a session opened through nginx's websocket proxy."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import urllib.request

import pytest

from benchmarks.app_server import free_port
from benchmarks.lecture_hall import visit
from deploy.serve import Deployment, nginx_config

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


def test_two_replicas_behind_nginx_serve_a_page_over_the_proxied_websocket(tmp_path):
    environment = {"ECAML_RUNS_DIR": str(tmp_path / "runs"), "ECAML_CACHE_DIR": str(tmp_path / "cache"),
                   "ECAML_WARM_CACHE": "0"}
    with Deployment(2, free_port(), free_port_pair(), listen="127.0.0.1", environment=environment,
                    state_dir=tmp_path / "nginx") as deployment:
        assert len(deployment.processes) == 3  # two replicas, then nginx
        with urllib.request.urlopen(f"{deployment.url}/_stcore/health", timeout=10) as response:
            assert response.read().decode().strip() == "ok"
        # What a browser sends to open the About page, through nginx's websocket upgrade.
        outcome = run_alone(visit(deployment.url, "about", timeout=240))
        assert outcome["status"] == "FINISHED_SUCCESSFULLY", outcome
        assert outcome["exceptions"] == 0
        # Sticky: a second session from this address reaches the same replica (and finishes too).
        assert run_alone(visit(deployment.url, "about", timeout=240))["status"] == "FINISHED_SUCCESSFULLY"
        processes = list(deployment.processes)
    assert all(process.poll() is not None for process in processes), "stopping left a server running"


def run_alone(coroutine):
    """``asyncio.run`` in a thread of its own: the browser tests' Playwright keeps an event loop running in this
    session's main thread, where asyncio.run refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def free_port_pair() -> int:
    """A port p such that p and p + 1 were both free a moment ago."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def test_the_configuration_is_sticky_and_proxies_websockets(tmp_path):
    config = nginx_config(8080, [8501, 8502], tmp_path)
    assert "ip_hash;" in config
    assert "server 127.0.0.1:8501;" in config and "server 127.0.0.1:8502;" in config
    assert "proxy_set_header Upgrade $http_upgrade;" in config
    assert "proxy_set_header Connection $connection_upgrade;" in config
    cookie = nginx_config(8080, [8501], tmp_path, hash_by="cookie", upstream_hosts=["10.0.0.2", "10.0.0.3"])
    assert "hash $ecaml_replica consistent;" in cookie and "Set-Cookie" in cookie
    assert "server 10.0.0.3:8501;" in cookie
