"""Serve the read-only demo from N Streamlit replicas behind nginx, with one command.

    python -m deploy.serve --replicas 2                   # http://0.0.0.0:8080, replicas on 127.0.0.1:8501..
    python -m deploy.serve --replicas 4 --port 80 --replica-port 8600
    python -m deploy.serve --print-config --replicas 2    # only print the nginx configuration

One Streamlit process runs every session's script under one GIL, so a lecture hall of students queues on it;
replicas are separate processes (one per core is a good start). A Streamlit session lives in the process that
opened its websocket, so nginx must send a browser to the same replica every time: ``ip_hash`` does that by
the client's address (students behind one NAT land on one replica; use ``--hash cookie`` to hash a per-browser
cookie instead). Websocket upgrades on ``/_stcore/stream`` are proxied with the Upgrade and Connection headers
and long read timeouts.

Each replica runs ``streamlit run app/main.py`` with ``ECAML_READ_ONLY=1`` (the viewer the Procfile serves) and
no file watcher; nginx runs in the foreground from a configuration written to a private folder. Ctrl-C (or
SIGTERM) stops nginx and every replica. For several machines, see the README ("Serving a lecture hall").
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NGINX = "nginx"
HEALTH_TIMEOUT_S = 120.0


def nginx_config(port: int, replica_ports: list[int], state_dir: Path, listen: str = "0.0.0.0",
                 hash_by: str = "ip", upstream_hosts: list[str] | None = None) -> str:
    """An nginx.conf that balances ``replica_ports`` (on ``upstream_hosts``, default 127.0.0.1) with sticky
    sessions and proxies websockets; every file nginx writes goes under ``state_dir``."""
    hosts = upstream_hosts or ["127.0.0.1"]
    servers = "\n".join(f"        server {host}:{replica};" for host in hosts for replica in replica_ports)
    sticky = "ip_hash;" if hash_by == "ip" else "hash $ecaml_replica consistent;"
    # A browser without the cookie gets a random one (the request's id), hashed and handed back, so its later
    # requests (the websocket among them) hash the same value and reach the same replica.
    cookie_map = ("    map $cookie_ecaml_replica $ecaml_replica { '' $request_id; default $cookie_ecaml_replica; }\n"
                  if hash_by == "cookie" else "")
    cookie = ('            add_header Set-Cookie "ecaml_replica=$ecaml_replica; Path=/; HttpOnly; SameSite=Lax" always;\n'
              if hash_by == "cookie" else "")
    return f"""worker_processes 1;
daemon off;
pid {state_dir}/nginx.pid;
error_log {state_dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {state_dir}/client_body;
    proxy_temp_path {state_dir}/proxy;
    fastcgi_temp_path {state_dir}/fastcgi;
    uwsgi_temp_path {state_dir}/uwsgi;
    scgi_temp_path {state_dir}/scgi;
    client_max_body_size 5m;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
{cookie_map}    upstream streamlit {{
        {sticky}
{servers}
    }}
    server {{
        listen {listen}:{port};
        location / {{
            proxy_pass http://streamlit;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 1d;
            proxy_send_timeout 1d;
            proxy_buffering off;
{cookie}        }}
    }}
}}
"""


def start_replica(port: int, log_path: Path, environment: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
               "--server.maxUploadSize", "5", "--browser.gatherUsageStats", "false"]
    env = dict(os.environ, ECAML_READ_ONLY="1", PYTHONUNBUFFERED="1", **environment)
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_healthy(url: str, processes: list[subprocess.Popen], timeout: float = HEALTH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a server process exited with code {process.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} was not healthy after {timeout:.0f} s")


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (each was started in a session of its own), then SIGKILL what lingers."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)


class Deployment:
    """nginx on ``port`` in front of ``replicas`` Streamlit processes on ``replica_port``, ``replica_port`` + 1, ..."""

    def __init__(self, replicas: int, port: int, replica_port: int, listen: str = "0.0.0.0", hash_by: str = "ip",
                 environment: dict[str, str] | None = None, state_dir: Path | None = None):
        if replicas < 1:
            raise ValueError(f"--replicas must be at least 1; got {replicas}")
        self.replica_ports = [replica_port + i for i in range(replicas)]
        self.port, self.listen, self.hash_by = port, listen, hash_by
        self.environment = environment or {}
        self.state_dir = Path(state_dir) if state_dir else None
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.listen in ("0.0.0.0", "127.0.0.1") else self.listen
        return f"http://{host}:{self.port}"

    def start(self) -> "Deployment":
        self.state_dir = self.state_dir or Path(tempfile.mkdtemp(prefix="ecaml-deploy-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            for port in self.replica_ports:
                self.processes.append(start_replica(port, self.state_dir / f"replica-{port}.log", self.environment))
            for port in self.replica_ports:
                wait_healthy(f"http://127.0.0.1:{port}", self.processes)
            config = self.state_dir / "nginx.conf"
            config.write_text(nginx_config(self.port, self.replica_ports, self.state_dir, self.listen, self.hash_by))
            with open(self.state_dir / "nginx.log", "wb") as log:
                self.processes.append(subprocess.Popen(
                    [NGINX, "-c", str(config), "-p", str(self.state_dir), "-e", str(self.state_dir / "error.log")],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            wait_healthy(self.url, self.processes)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop(list(reversed(self.processes)))  # nginx first, so no request reaches a stopping replica
        self.processes.clear()

    def __enter__(self) -> "Deployment":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=os.cpu_count() or 1, help="Streamlit processes (default: one per CPU)")
    parser.add_argument("--port", type=int, default=8080, help="nginx's port")
    parser.add_argument("--listen", default="0.0.0.0", help="nginx's address")
    parser.add_argument("--replica-port", type=int, default=8501, help="first replica's port (on 127.0.0.1)")
    parser.add_argument("--hash", choices=("ip", "cookie"), default="ip", dest="hash_by",
                        help="sticky sessions by client address (ip_hash) or by a per-browser cookie")
    parser.add_argument("--print-config", action="store_true", help="print the nginx configuration and exit")
    parser.add_argument("--upstream-host", action="append", dest="upstream_hosts",
                        help="with --print-config: a machine running replicas (repeat it; default 127.0.0.1)")
    args = parser.parse_args(argv)
    deployment = Deployment(args.replicas, args.port, args.replica_port, args.listen, args.hash_by)
    if args.print_config:
        print(nginx_config(args.port, deployment.replica_ports, Path("/var/lib/ecaml-nginx"), args.listen, args.hash_by,
                           args.upstream_hosts))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with deployment:
        print(f"serving {deployment.url} (nginx) -> {len(deployment.replica_ports)} replicas on "
              f"127.0.0.1:{deployment.replica_ports[0]}-{deployment.replica_ports[-1]}; logs in {deployment.state_dir}",
              flush=True)
        try:
            while all(process.poll() is None for process in deployment.processes):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        print("a server process exited; stopping the others" if any(p.poll() is not None for p in deployment.processes)
              else "stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
