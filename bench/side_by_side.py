"""Two detserve checkouts side by side: what one adds at c=1 against the other, drift cancelled.

    git worktree add /tmp/before <commit>
    python bench/side_by_side.py /tmp/before . --seconds 40

Starts a `detserve up` from each tree (each its own Redis, data dir and port), deploys the demo
detector on both, then again and again: one request to each server in random order, each followed
by the same image in-process. Per pair it takes what the route added over the in-process run, and
it prints the median for each tree and the median of B's minus A's. Both servers see the same
minutes of the host, so its speed drifting (by 20% within minutes on our shared 2-core machines)
cancels out: run it in both orders; an A/A run (one tree twice) shows the noise (about 0.1 ms).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(Path(__file__).parent))

from detserve.config import Settings  # noqa: E402
from detserve.inference.standalone import local_detector  # noqa: E402
from detserve.service.demo import demo_model_bytes  # noqa: E402
from detserve_launcher.supervisor import free_port  # noqa: E402
from run import BOUNDARY, _read_response, deploy  # noqa: E402

PACKAGES = ("shared", "services/api", "services/worker-cpu", "services/worker-gpu",
            "services/scheduler", "services/launcher")


def start(tree: Path, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """`detserve up` running the tree's own code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETSERVE_")}
    env["PYTHONPATH"] = os.pathsep.join(str(tree / p) for p in PACKAGES)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / "up.log"
    # checkouts from before the launcher had its own package run it as detserve.cli
    cli = "detserve_launcher.cli" if (tree / "services/launcher").is_dir() else "detserve.cli"
    proc = subprocess.Popen([sys.executable, "-m", cli, "up", "--data-dir",
                             str(data_dir), "--port", str(port)], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while "detserve is up." not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"{tree}: detserve up did not start\n{log.read_text()}")
        time.sleep(0.3)
    return proc


def caller(port: int, service_id: str, key: str, image: bytes) -> Callable[[], float]:
    """A kept-alive raw-socket client for one server; each call returns its latency in ms."""
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; "
            "filename=\"bench.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + image + \
        f"\r\n--{BOUNDARY}--\r\n".encode()
    request = (f"POST /v1/services/{service_id}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"X-Service-Key: {key}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
               f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call() -> float:
        started = time.perf_counter()
        sock.sendall(request)
        if not _read_response(sock):
            raise SystemExit("the server closed a kept-alive connection")
        return (time.perf_counter() - started) * 1000
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("--seconds", type=float, default=40)
    args = parser.parse_args()
    from steps import bench_image

    image, model = bench_image(), demo_model_bytes()
    trees = {"A": args.tree_a.resolve(), "B": args.tree_b.resolve()}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            deployed = {}
            for name, tree in trees.items():
                data_dir, port = Path(tmp) / name / "data", free_port()
                procs.append(start(tree, data_dir, port))
                token = (data_dir / "admin_token").read_text().strip()
                deployed[name] = (port, *deploy(f"http://127.0.0.1:{port}", token,
                                                "side-by-side", model))
            # connect once both are up: a server may close a connection left idle meanwhile
            calls = {name: caller(port, service_id, key, image)
                     for name, (port, service_id, key) in deployed.items()}
            detector = local_detector(model, Settings.from_env(environ={}).ort_threads)

            def added(name: str) -> float:
                route = calls[name]()
                started = time.perf_counter()
                detector.infer(image)
                return route - (time.perf_counter() - started) * 1000

            for _ in range(20):  # warm-up
                added("A"), added("B")
            per_tree: dict[str, list[float]] = {"A": [], "B": []}
            differences = []
            stop_at = time.perf_counter() + args.seconds
            while time.perf_counter() < stop_at:
                order = random.sample(["A", "B"], 2)
                got = {name: added(name) for name in order}
                for name, value in got.items():
                    per_tree[name].append(value)
                differences.append(got["B"] - got["A"])
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)
    median = statistics.median
    print(f"A {trees['A']}: added p50 {median(per_tree['A']):.2f} ms")
    print(f"B {trees['B']}: added p50 {median(per_tree['B']):.2f} ms")
    print(f"B - A, median of {len(differences)} pairs: {median(differences):+.3f} ms")


if __name__ == "__main__":
    main()
