"""Start and stop the real Streamlit server of this checkout on loopback, for benchmarks and browser tests.

The server listens on 127.0.0.1 only, in a process group of its own, so stopping it also stops
anything it started in that group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHUTDOWN_TIMEOUT_S = 10


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Streamlit server exited with code {process.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                body = response.read().decode(errors="replace").strip()
                if response.status == 200 and body == "ok":
                    return
                last = f"HTTP {response.status}: {body[:80]}"
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(0.25)
    raise RuntimeError(f"the Streamlit server was not healthy after {timeout:.0f} s ({last})")


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (it was started in a new session), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=SHUTDOWN_TIMEOUT_S)


def start_server(port: int, log_path: Path, environment: dict[str, str], repo: Path = REPO_ROOT) -> subprocess.Popen:
    """``streamlit run app/main.py`` of ``repo`` on 127.0.0.1:``port``, its output in ``log_path``."""
    command = [
        sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1",
    ]
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false", PYTHONUNBUFFERED="1", **environment)
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
