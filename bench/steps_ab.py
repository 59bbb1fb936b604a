"""Two detserve checkouts' pipelines side by side, step by step, in the same minutes of the host.

    git worktree add /tmp/before <commit>
    python bench/steps_ab.py /tmp/before . [--calls 200] [--models yolov8n-sized]

A pipeline change shows in-process, where an HTTP comparison (bench/side_by_side.py) cancels it
out: both the route and the in-process run carry it. Each tree's Detector runs in its own child
process (its own `shared/` first on the path); the parent asks them for one call in turn, in
alternating order, on each bench image, and prints per step the medians of A and B and the median
of the per-call differences B - A with its interquartile range. Both answers are checked equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def child(model_path: str) -> None:
    """Serve calls: read an image index per line, run it, answer step times and the answer."""
    import time

    # the tree's own detserve, imported before steps (which puts this checkout's on the path)
    import detserve
    import steps
    from detserve.inference.standalone import local_detector

    print(f"pipeline from {Path(detserve.__file__).parents[1]}", file=sys.stderr)

    detector = local_detector(Path(model_path).read_bytes(), 1)
    images = list(steps.bench_images().values())
    pipeline = steps.detserve_steps(detector)
    print("ready", flush=True)
    for line in sys.stdin:
        value: Any = images[int(line)]
        times = {}
        for name in steps.STEPS:
            t0 = time.perf_counter()
            value = pipeline[name](value)
            times[name] = (time.perf_counter() - t0) * 1000
        times["pre"] = times["decode"] + times["prepare"]
        print(json.dumps({"times": times, "answer": value.to_dict()}), flush=True)


def spawn(tree: Path, model_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "shared"), str(HERE)])}
    proc = subprocess.Popen([sys.executable, str(HERE / "steps_ab.py"), "--child", str(model_path)],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"{tree}: the pipeline did not start")
    return proc


def call(proc: subprocess.Popen[str], index: int) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{index}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())  # type: ignore[no-any-return]


def compare(tree_a: Path, tree_b: Path, model_path: Path, calls: int) -> None:
    import steps

    names = list(steps.bench_images())
    a, b = spawn(tree_a, model_path), spawn(tree_b, model_path)
    try:
        for index, name in enumerate(names):
            times: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
            for i in range(calls):
                pair = ((a, "A"), (b, "B")) if i % 2 else ((b, "B"), (a, "A"))
                answers = {}
                for proc, side in pair:
                    out = call(proc, index)
                    times[side].append(out["times"])
                    answers[side] = out["answer"]
                if answers["A"] != answers["B"] and i == 0:
                    diff = max((abs(x - y) for ba, bb in zip(answers["A"]["detection_boxes"],
                                                              answers["B"]["detection_boxes"], strict=False)
                                for x, y in zip(ba, bb, strict=False)), default=0.0)
                    same = answers["A"]["detection_classes"] == answers["B"]["detection_classes"]
                    print(f"  note: answers differ (classes {'same' if same else 'DIFFER'}, "
                          f"boxes by up to {diff:.3f} px)")
            print(f"{model_path.stem} / {name}: {calls} calls each")
            for step in (*steps.STEPS, "pre"):
                ta = [t[step] for t in times["A"]]
                tb = [t[step] for t in times["B"]]
                d = [y - x for x, y in zip(ta, tb, strict=True)]
                q = statistics.quantiles(d, n=4)
                print(f"  {step:8} A {statistics.median(ta):8.3f}  B {statistics.median(tb):8.3f}  "
                      f"B-A {statistics.median(d):+8.3f} [{q[0]:+.3f} {q[2]:+.3f}] ms "
                      f"({statistics.median(d) / statistics.median(ta):+.1%})", flush=True)
    finally:
        for proc in (a, b):
            proc.kill()
            proc.wait()


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--models", default="demo-detector,yolov8n-sized")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "shared"))
    sys.path.insert(0, str(HERE))
    import steps

    cache = HERE.parent / ".bench-cache"
    for name, model in steps.models(args.models.split(",")).items():
        path = cache / f"{name}.onnx"
        path.write_bytes(model)
        compare(args.a.resolve(), args.b.resolve(), path, args.calls)


if __name__ == "__main__":
    main()
