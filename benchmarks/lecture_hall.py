"""A lecture hall: N students open a page of the read-only demo within a few seconds, at the protocol level.

    .venv/bin/python benchmarks/lecture_hall.py --students 100 --within 10           # Compare, on a fresh server
    .venv/bin/python benchmarks/lecture_hall.py --students 100 --within 10 --page embeddings
    .venv/bin/python benchmarks/lecture_hall.py --students 100 --within 10 --url http://127.0.0.1:8080  # e.g. nginx
    .venv/bin/python benchmarks/lecture_hall.py --students 100 --within 10 --replicas 2  # deploy.serve, started here

No browsers: each student is one websocket session on ``/_stcore/stream`` (subprotocol "streamlit", as the
front end opens it) that sends what a browser sends to open a page, a ``BackMsg`` ``rerun_script`` whose
``ClientState`` carries the page's url path, and reads ``ForwardMsg``s until ``script_finished``. A visit is
timed from the moment the student starts connecting to that message. Students start at evenly spaced times
over ``--within`` seconds.

Without ``--url`` it starts the real Streamlit server of this checkout on loopback (read-only, the shipped
checkpoints, a private runs folder and cache), lets one student visit first (the lecturer's check, which fills
the per-process caches) and waits for the server to go idle; then it measures, and reports the server's CPU
seconds per visit (all its processes, from /proc). Everything is bounded: each visit gives up after
``--visit-timeout`` seconds, and the server is stopped at the end.

Prints one line per percentile, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.app_server import free_port, start_server, stop_process_group, wait_healthy  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_CPU_SECONDS = 0.1
IDLE_WINDOW_S = 2.0


async def visit(base_url: str, page: str, timeout: float) -> dict:
    """One student: connect, ask for ``page``, wait for script_finished. Returns seconds and the outcome."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.asyncio.client import connect

    started = time.perf_counter()
    stream = base_url.replace("http://", "ws://", 1).rstrip("/") + "/_stcore/stream"
    exceptions = 0
    try:
        async with asyncio.timeout(timeout):
            async with connect(stream, subprotocols=["streamlit"], max_size=None, open_timeout=timeout) as socket:
                message = BackMsg()
                message.rerun_script.query_string = ""
                message.rerun_script.page_name = page
                await socket.send(message.SerializeToString())
                async for data in socket:
                    forward = ForwardMsg()
                    forward.ParseFromString(data)
                    kind = forward.WhichOneof("type")
                    if kind == "delta" and forward.delta.new_element.WhichOneof("type") == "exception":
                        exceptions += 1
                    if kind == "script_finished":
                        status = ForwardMsg.ScriptFinishedStatus.Name(forward.script_finished)
                        return {"seconds": time.perf_counter() - started, "status": status, "exceptions": exceptions}
        return {"seconds": None, "status": "closed before script_finished", "exceptions": exceptions}
    except TimeoutError:
        return {"seconds": None, "status": f"no script_finished within {timeout:.0f} s", "exceptions": exceptions}
    except OSError as error:
        return {"seconds": None, "status": f"connection failed: {error}", "exceptions": exceptions}


async def lecture(base_url: str, page: str, students: int, within: float, timeout: float) -> list[dict]:
    """``students`` visits starting at evenly spaced times over ``within`` seconds."""
    spacing = within / students if students > 1 else 0.0

    async def student(number: int) -> dict:
        await asyncio.sleep(number * spacing)
        return await visit(base_url, page, timeout)

    return await asyncio.gather(*(student(number) for number in range(students)))


def process_tree_cpu_seconds(root_pid: int) -> float:
    """utime + stime of ``root_pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, pending = 0.0, [root_pid]
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        pending.extend(children.get(pid, []))
    return total


def wait_idle(pid: int, limit: float = 180.0) -> None:
    """Until the server's processes use less than IDLE_CPU_SECONDS over IDLE_WINDOW_S (at most ``limit`` s)."""
    deadline = time.monotonic() + limit
    previous = process_tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW_S)
        current = process_tree_cpu_seconds(pid)
        if current - previous < IDLE_CPU_SECONDS:
            return
        previous = current


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summarise(visits: list[dict], wall: float) -> dict:
    times = [entry["seconds"] for entry in visits if entry["seconds"] is not None]
    failures = [entry["status"] for entry in visits if entry["seconds"] is None or entry["status"] != "FINISHED_SUCCESSFULLY"]
    return {
        "visits": len(visits),
        "finished": len(times),
        "failures": failures[:5],
        "failure_count": len(failures),
        "exceptions": sum(entry["exceptions"] for entry in visits),
        "p50_s": round(statistics.median(times), 2) if times else None,
        "p95_s": round(percentile(times, 0.95), 2) if times else None,
        "max_s": round(max(times), 2) if times else None,
        "wall_s": round(wall, 1),
    }


def run_replicas(students: int, within: float, page: str, timeout: float, replicas: int) -> dict:
    """As ``run``, against ``deploy.serve``'s nginx in front of ``replicas`` read-only replicas (cookie hashing:
    these clients send no cookie, so each session lands on a replica of its own drawing)."""
    from deploy.serve import Deployment

    work = Path(tempfile.mkdtemp(prefix="ecaml-lecture-"))
    environment = {"ECAML_CHECKPOINTS_DIR": str(REPO_ROOT / "checkpoints"), "ECAML_RUNS_DIR": str(work / "runs"),
                   "ECAML_CACHE_DIR": str(work / "cache")}
    first_port = free_port()
    with Deployment(replicas, free_port(), first_port, listen="127.0.0.1", hash_by="cookie",
                    environment=environment, state_dir=work / "nginx") as deployment:
        # The lecturer's check, a few times over, so that every replica has served the page once.
        first = [asyncio.run(visit(deployment.url, page, timeout))["seconds"] for _ in range(3 * replicas)]
        roots = [process.pid for process in deployment.processes]
        for pid in roots:
            wait_idle(pid)
        cpu_before, started = sum(map(process_tree_cpu_seconds, roots)), time.monotonic()
        visits = asyncio.run(lecture(deployment.url, page, students, within, timeout))
        wall = time.monotonic() - started
        cpu = sum(map(process_tree_cpu_seconds, roots)) - cpu_before
    return {"server": f"nginx in front of {replicas} Streamlit replicas (deploy.serve, read-only)",
            "page": page or "compare", "students": students, "within_s": within, "first_visits_s": first,
            **summarise(visits, wall), "server_cpu_s_per_visit": round(cpu / max(1, students), 3),
            "load_1min": round(os.getloadavg()[0], 2)}


def run(students: int, within: float, page: str, timeout: float, url: str | None, replicas: int = 1) -> dict:
    if replicas > 1:
        return run_replicas(students, within, page, timeout, replicas)
    if url:
        started = time.monotonic()
        visits = asyncio.run(lecture(url, page, students, within, timeout))
        return {"server": url, "page": page or "compare", "students": students, "within_s": within,
                **summarise(visits, time.monotonic() - started)}
    work = Path(tempfile.mkdtemp(prefix="ecaml-lecture-"))
    (work / "cache").mkdir()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    environment = {"ECAML_CHECKPOINTS_DIR": str(REPO_ROOT / "checkpoints"), "ECAML_RUNS_DIR": str(work / "runs"),
                   "ECAML_CACHE_DIR": str(work / "cache"), "ECAML_READ_ONLY": "1"}
    server = start_server(port, work / "streamlit.log", environment)
    try:
        wait_healthy(base_url, server, 90)
        first = asyncio.run(visit(base_url, page, timeout))  # the lecturer's check
        wait_idle(server.pid)
        cpu_before, started = process_tree_cpu_seconds(server.pid), time.monotonic()
        visits = asyncio.run(lecture(base_url, page, students, within, timeout))
        wall = time.monotonic() - started
        cpu = process_tree_cpu_seconds(server.pid) - cpu_before
    finally:
        stop_process_group(server)
    return {"server": "one Streamlit process (this checkout, read-only)", "page": page or "compare",
            "students": students, "within_s": within, "first_visit_s": first["seconds"],
            **summarise(visits, wall), "server_cpu_s_per_visit": round(cpu / max(1, students), 3),
            "load_1min": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=100)
    parser.add_argument("--within", type=float, default=10.0, help="seconds over which the students arrive")
    parser.add_argument("--page", default="", help="url path of the page ('' is the default page, Compare)")
    parser.add_argument("--visit-timeout", type=float, default=120.0)
    parser.add_argument("--url", help="measure a server already running there (e.g. nginx in front of replicas)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="above 1: serve with deploy.serve (nginx in front of this many replicas)")
    args = parser.parse_args(argv)
    result = run(max(1, args.students), max(0.0, args.within), args.page, args.visit_timeout, args.url, args.replicas)
    for key in ("p50_s", "p95_s", "max_s", "server_cpu_s_per_visit", "failure_count"):
        if key in result:
            print(f"{key}: {result[key]}")
    print(json.dumps(result))
    return 0 if result["failure_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
