"""`make bench`: the sync route under wrk vs. an independent pipeline in-process (the ceiling).

First, in this process, detserve's pipeline and the independent reference (bench/reference.py,
which imports nothing of detserve) are checked to give the same answers on the bench images and
timed step by step (bench/steps.py); the bench stops there if the answers differ. Then it runs a
real `detserve up` (embedded Redis, SQLite, gunicorn API, Celery CPU worker), deploys the demo
detector and a YOLOv8n-sized model, checks the route's answer against the reference's, and for
concurrency 1, 4 and 16 measures:
  route    wrk (C, one thread) POSTing the bench image to /v1/services/{id}/predict
  ceiling  the reference pipeline called in this process with the workers' layout: a pool of
           `worker_concurrency` threads, ONNX Runtime with `ort_threads` intra-op threads each
  paired   (c=1 only) one request, then the same image in-process, alternating; the median of
           the differences is the latency the route adds, whatever the machine's speed drifts
With --reference the same is measured for bench/plain_flask.py, the reference pipeline in a plain
Flask app: the floor of serving it over HTTP. It runs beside detserve for the whole model, and the
two take turns window by window, so its p99 is compared with detserve's repetition by repetition.
Route and ceiling windows alternate (--reps pairs of --seconds each) and each figure is the median
over the windows; the ratio is the median of the per-pair ratios route images/s / ceiling images/s,
so the host's speed drifting between windows (it does, by 10% on our shared 2-core machines)
cancels out instead of landing on one side. After each route window the bench waits until the
server has answered what wrk left queued (`settle`): otherwise that backlog (at c=16 most of a
second of both cores) runs inside the next window and slows whoever measures there.
Each route window also reads, from /proc, the CPU time the server's processes spent per image,
by part (HTTP, worker, Redis, scheduler), beside the ceiling's own: at saturation throughput is
CPU per image, and that figure is far steadier than images/s, so it says where a gap comes from.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(Path(__file__).parent))

import steps  # noqa: E402
from detserve.config import Settings  # noqa: E402
from detserve.inference.detector import Detections  # noqa: E402
from detserve.inference.standalone import local_detector  # noqa: E402
from detserve_launcher.supervisor import free_port  # noqa: E402
from reference import Reference  # noqa: E402

CACHE = ROOT / ".bench-cache"
BOUNDARY = "----detservebench"


def start_detserve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETSERVE_")}
    log = open(data_dir.parent / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "detserve_launcher.cli", "up", "--data-dir", str(data_dir),
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if "detserve is up." in (data_dir.parent / "up.log").read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise SystemExit((data_dir.parent / "up.log").read_text())
        time.sleep(0.3)
    raise SystemExit("detserve up did not start")


def deploy(base: str, token: str, name: str, model: bytes) -> tuple[str, str]:
    auth = {"Authorization": f"Bearer {token}"}
    resp = requests.post(f"{base}/v1/models/{name}/versions", headers=auth,
                         files={"model": ("model.onnx", model)}, timeout=300)
    resp.raise_for_status()
    svc = requests.post(f"{base}/v1/services", headers=auth, timeout=30, json={
        "model": name, "version": resp.json()["version"], "flavor": "cpu",
        "auto_stop": {"enabled": False, "hours": 1}}).json()
    while (status := requests.get(f"{base}/v1/services/{svc['id']}", headers=auth, timeout=30)
           .json()["status"]) != "Running":
        if status == "Failed":
            raise SystemExit(f"{name} failed to deploy")
        time.sleep(0.3)
    return svc["id"], svc["key"]


def wrk_script(path: Path, image: Path, key: str) -> None:
    path.write_text(f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary={BOUNDARY}"
wrk.headers["X-Service-Key"] = "{key}"
local f = io.open("{image}", "rb"); local data = f:read("*all"); f:close()
wrk.body = "--{BOUNDARY}\\r\\n" ..
  "Content-Disposition: form-data; name=\\"images\\"; filename=\\"bench.jpg\\"\\r\\n" ..
  "Content-Type: image/jpeg\\r\\n\\r\\n" .. data .. "\\r\\n--{BOUNDARY}--\\r\\n"
""")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, script: Path, concurrency: int, seconds: float,
            server: int | None = None) -> dict[str, float]:
    """wrk's figures; with `server` (the pid at the root of the server's processes) also the CPU
    time the server spent per image, in total and by component (cpu_ms_<component>)."""
    before = tree_cpu(server) if server else {}
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency",
                          "--timeout", "30s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    after = tree_cpu(server) if server else {}
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw failed requests:\n{out}")
    lat = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if len(lat) != 2:
        raise SystemExit(f"could not read wrk's latency distribution:\n{out}")
    result = {"images_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
              "p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"])}
    if server:
        answered = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        spent = {part: after.get(part, 0.0) - before.get(part, 0.0) for part in after}
        result["cpu_ms"] = 1000 * sum(spent.values()) / answered
        result.update({f"cpu_ms_{part}": 1000 * t / answered for part, t in sorted(spent.items())})
    return result


# which part of a server a process is, by its command line
PARTS = (("redis-server", "redis"), ("detserve_worker", "worker"),
         ("detserve_scheduler", "scheduler"), ("gunicorn", "http"))


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds used so far by `root` and every process below it, summed by part (PARTS;
    anything else is "other"), from /proc. A process that ended between two readings drops out
    of the second: the servers here start none while they are measured."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:  # it ended while we looked
            continue
        part = next((name for key, name in PARTS if key in cmd), "other")
        procs[int(entry)] = (int(stat[1]), (int(stat[11]) + int(stat[12])) / tick, part)
    totals: dict[str, float] = {}
    for pid, (_, seconds, part) in procs.items():
        up = pid
        while up in procs and up != root:
            up = procs[up][0]
        if up == root:
            totals[part] = totals.get(part, 0.0) + seconds
    return totals


def run_ceiling(detector: Reference, image: bytes, concurrency: int, seconds: float,
                workers: int) -> dict[str, float]:
    """Clients submit to a pool shaped like the worker (threads x ORT threads), as the route does."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    with cf.ThreadPoolExecutor(workers) as pool:
        def client() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                pool.submit(detector, image).result()
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1000)
        started, cpu = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    latencies.sort()
    return {"images_s": len(latencies) / elapsed, "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "cpu_ms": 1000 * cpu / len(latencies)}


def run_paired(url: str, key: str, detector: Reference, image: bytes, seconds: float) -> dict[str, float]:
    """c=1 overhead, robust to a machine whose speed drifts: one request over HTTP, then the same
    image in-process, again and again; the median of the per-pair differences is what the route
    adds. Both halves of a pair run within milliseconds of each other, so a slow patch of the
    host (on our shared 2-core machines in-process p50 drifts by 5 ms between 8 s runs) slows both.
    The client is a raw keep-alive socket with the request prebuilt, as lean as wrk's."""
    parsed = urlsplit(url)
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"bench.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()
    request = (f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nX-Service-Key: {key}\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    route, local, added = [], [], []
    stop_at = time.perf_counter() + seconds
    sock: socket.socket | None = None
    try:
        while time.perf_counter() < stop_at:
            if sock is None:  # a server without keep-alive closes after each answer
                sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            sock.sendall(request)
            keep = _read_response(sock)
            t1 = time.perf_counter()
            if not keep:
                sock.close()
                sock = None
            detector(image)
            t2 = time.perf_counter()
            route.append((t1 - t0) * 1000)
            local.append((t2 - t1) * 1000)
            added.append(route[-1] - local[-1])
    finally:
        if sock is not None:
            sock.close()
    return {"route_p50_ms": statistics.median(route), "ceiling_p50_ms": statistics.median(local),
            "added_p50_ms": statistics.median(added), "pairs": len(added)}


def _read_response(sock: socket.socket) -> bool:
    """Read one 200 answer; True when the server keeps the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the server closed the connection before answering")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the route answered {head.splitlines()[0]!r}")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        rest += sock.recv(65536)
    return re.search(rb"(?i)\r\nconnection:\s*close", head) is None


def settle(url: str, key: str, image: bytes, workers: int) -> None:
    """Wait until the server has answered what wrk left queued when its window closed.

    wrk stops waiting at the end of its window, but the server still answers the requests it had
    already taken (at c=16, about 14 of them: most of a second of both cores). One request per
    model thread, sent together through the same route, waits its turn behind them (the lane and
    the listen backlog are first in, first out); when the last is answered every thread is idle,
    so the next window, whoever's it is, starts on an idle machine."""
    def one(_: int) -> None:
        requests.post(url, headers={"X-Service-Key": key}, timeout=120,
                      files={"images": ("bench.jpg", image, "image/jpeg")}).raise_for_status()

    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(workers)))


def measure(servers: list[tuple[str, str, int]], script: Path, key: str, detector: Reference,
            image: bytes, args: argparse.Namespace, workers: int) -> dict[str, dict[int, dict[str, Any]]]:
    """Each server (name, url, root pid) against the ceiling at each concurrency, paired at c=1.

    Windows alternate: for each repetition every server's route window is followed by a ceiling
    window of its own, and the servers take turns going first. Each figure is the median over the
    repetitions; a ratio is the median of per-pair ratios. With a second server (the plain-Flask
    floor) its p99 is compared repetition by repetition too: both were measured minutes apart at
    most, on the same machine in the same state, so the host's drift cancels out of that ratio."""
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name, *_ in servers}
    for c in (int(v) for v in args.concurrency.split(",")):
        route: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in servers}
        ceiling: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in servers}
        for rep in range(args.reps):
            for name, url, pid in (servers if rep % 2 == 0 else servers[::-1]):
                route[name].append(run_wrk(url, script, c, args.seconds, server=pid))
                settle(url, key, image, workers)
                ceiling[name].append(run_ceiling(detector, image, c, args.seconds, workers))
        for name, *_ in servers:
            ratios = sorted(r["images_s"] / k["images_s"]
                            for r, k in zip(route[name], ceiling[name], strict=True))
            results[name][c] = {"route": median_of(route[name]),
                                "ceiling": median_of(ceiling[name]),
                                "ratio": statistics.median(ratios),
                                "ratio_range": [ratios[0], ratios[-1]]}
            report(name, c, results[name][c])
        if len(servers) > 1:
            ours, floor = servers[0][0], servers[1][0]
            tails = sorted(a["p99_ms"] / b["p99_ms"]
                           for a, b in zip(route[ours], route[floor], strict=True))
            results[ours][c]["p99_vs_floor"] = {"ratio": statistics.median(tails),
                                                "range": [tails[0], tails[-1]]}
            print(f"{ours:14} c={c:<3} p99 / {floor}'s p99, paired by repetition: "
                  f"{statistics.median(tails):.3f} [{tails[0]:.3f}-{tails[-1]:.3f}]", flush=True)
        if c == 1:
            for name, url, _ in servers:
                paired = run_paired(url, key, detector, image, args.seconds * args.reps)
                results[name][c]["paired"] = paired
                print(f"{name:14} c=1   paired: route p50 {paired['route_p50_ms']:.1f} ms, "
                      f"in-process p50 {paired['ceiling_p50_ms']:.1f} ms, added p50 "
                      f"+{paired['added_p50_ms']:.1f} ms over {paired['pairs']} pairs", flush=True)
    return results


@contextlib.contextmanager
def plain_flask(tmp: Path, model: bytes, labels: list[str]) -> Iterator[tuple[str, int]]:
    """The floor: bench/plain_flask.py under gunicorn, 2 sync workers; yields its URL and the
    pid of its gunicorn."""
    (tmp / "reference.onnx").write_bytes(model)
    port = free_port()
    env = {**os.environ, "BENCH_MODEL": str(tmp / "reference.onnx"),
           "BENCH_LABELS": json.dumps(labels)}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--chdir", str(Path(__file__).parent),
                             "-b", f"127.0.0.1:{port}", "-w", "2", "-k", "sync",
                             "--worker-tmp-dir", "/dev/shm", "plain_flask:create_app()"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=10)
                break
            except requests.RequestException:  # not listening yet, or busy starting
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit("the plain Flask reference did not start") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/predict", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def check_route(url: str, key: str, image: bytes, ref: Reference, labels: list[str]) -> None:
    """The server's answer to the bench image against the reference pipeline's, or stop."""
    resp = requests.post(url, headers={"X-Service-Key": key}, timeout=60,
                         files={"images": ("bench.jpg", image, "image/jpeg")})
    resp.raise_for_status()
    body = resp.json()
    answer = Detections(classes=body["detection_classes"], boxes=body["detection_boxes"],
                        scores=body["detection_scores"])
    problem, _ = steps.compare(answer, ref(image), labels, steps.TOLERANCE_PX, ref.conf)
    if problem:
        raise SystemExit(f"{url} answers differently from the reference pipeline: {problem}")


def ready(url: str, key: str, image: bytes, ref: Reference, labels: list[str], script: Path,
          workers: int) -> None:
    """A server checked against the reference and warmed up (every worker thread has run the
    model), then idle again, before it is measured."""
    check_route(url, key, image, ref, labels)
    run_wrk(url, script, 4, 3)
    settle(url, key, image, workers)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines()
        if line.startswith("Model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, {platform.machine()}"


def commit() -> str:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def targets(results: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """The issue's targets for the YOLOv8n-sized model, each MET or MISSED with its figure."""
    ours, floor = results.get("yolov8n-sized", {}), results.get("yolov8n-sized (plain Flask)", {})
    lines = []
    for c in (4, 16):
        if c in ours:
            r = ours[c]["ratio"]
            lines.append(f"c={c} route/ceiling {r:.3f} >= 0.97: {'MET' if r >= 0.97 else 'MISSED'}")
    if 1 in ours:
        added = ours[1]["paired"]["added_p50_ms"]
        lines.append(f"c=1 paired p50 added {added:+.2f} ms <= 2 ms: {'MET' if added <= 2 else 'MISSED'}")
    if 16 in ours and 16 in floor:
        a, b = ours[16]["route"]["p99_ms"], floor[16]["route"]["p99_ms"]
        tail = ours[16]["p99_vs_floor"]
        lines.append(f"c=16 p99 / plain Flask's p99, median of paired windows "
                     f"{tail['ratio']:.3f} [{tail['range'][0]:.3f}-{tail['range'][1]:.3f}] <= 1 "
                     f"(medians {a:.1f} and {b:.1f} ms): {'MET' if tail['ratio'] <= 1 else 'MISSED'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--models", default="demo-detector,yolov8n-sized")
    parser.add_argument("--calls", type=int, default=200, help="in-process step timings per image")
    parser.add_argument("--reference", action="store_true",
                        help="also measure bench/plain_flask.py, the reference pipeline in Flask")
    args = parser.parse_args()
    revision = commit()  # the code under test: read before anything can change the checkout
    CACHE.mkdir(exist_ok=True)
    image = steps.bench_image()
    image_path = CACHE / "bench.jpg"
    image_path.write_bytes(image)
    models = steps.models(args.models.split(","))
    step_results = steps.run(models, args.calls)  # stops here if the answers differ
    settings = Settings.from_env(environ={})
    results: dict[str, dict[int, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, port = Path(tmp) / "data", free_port()
        proc = start_detserve(data_dir, port)
        try:
            base = f"http://127.0.0.1:{port}"
            token = (data_dir / "admin_token").read_text().strip()
            for name, model in models.items():
                service_id, key = deploy(base, token, f"bench-{name}", model)
                script = Path(tmp) / f"{name}.lua"
                wrk_script(script, image_path, key)
                url = f"{base}/v1/services/{service_id}/predict"
                served = local_detector(model, settings.ort_threads)  # what registering read
                ref = Reference(model, settings.ort_threads,
                                conf=float(served.output.get("score_threshold", 0.25)),
                                iou=float(served.output.get("iou_threshold", 0.45)),
                                max_det=int(served.output.get("max_detections", 100)))
                ready(url, key, image, ref, served.labels, script, settings.worker_concurrency)
                servers = [(name, url, proc.pid)]
                with contextlib.ExitStack() as floor:
                    if args.reference:  # up beside detserve for the whole run: windows alternate
                        ref_url, ref_pid = floor.enter_context(
                            plain_flask(Path(tmp), model, served.labels))
                        ready(ref_url, key, image, ref, served.labels, script,
                              settings.worker_concurrency)
                        servers.append((f"{name} (plain Flask)", ref_url, ref_pid))
                    results.update(measure(servers, script, key, ref, image, args,
                                           settings.worker_concurrency))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "commit": revision, "load_average": os.getloadavg(),
            "worker_concurrency": settings.worker_concurrency,
            "ort_threads": settings.ort_threads, "seconds": args.seconds, "reps": args.reps,
            "targets": targets(results)}
    (CACHE / "results.json").write_text(json.dumps(
        {"meta": meta, "steps": step_results, "results": results}, indent=2))
    print("\n".join(meta.pop("targets")))  # type: ignore[arg-type]
    print(json.dumps(meta))


def report(name: str, c: int, r: dict[str, Any]) -> None:
    route, ceil = r["route"], r["ceiling"]
    print(f"{name:14} c={c:<3} route {route['images_s']:7.1f} img/s p50 {route['p50_ms']:7.1f} ms "
          f"p99 {route['p99_ms']:7.1f} ms | ceiling {ceil['images_s']:7.1f} img/s p50 "
          f"{ceil['p50_ms']:7.1f} ms p99 {ceil['p99_ms']:7.1f} ms | ratio "
          f"{r['ratio']:.3f} [{r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f}]  "
          f"p50 +{route['p50_ms'] - ceil['p50_ms']:.1f} ms",
          flush=True)
    parts = ", ".join(f"{k[7:]} {v:.2f}" for k, v in route.items() if k.startswith("cpu_ms_"))
    print(f"{'':14} c={c:<3} CPU per image: route {route['cpu_ms']:.2f} ms ({parts}), ceiling "
          f"{ceil['cpu_ms']:.2f} ms: {route['cpu_ms'] - ceil['cpu_ms']:+.2f} ms", flush=True)


if __name__ == "__main__":
    main()
