"""detserve's pipeline against the independent reference, step by step, in this process.

    python bench/steps.py [--calls 200] [--models demo-detector,yolov8n-sized]

For each model and bench image it first checks that both pipelines give the same answer (same
classes, boxes within 1 px of the original image; it exits non-zero otherwise), then times each
step of both, alternating reference and detserve call by call so that the host's speed drifting
lands on both sides alike:
  decode   bytes to an upright RGB image
  prepare  letterbox and tensor
  model    the ONNX Runtime session's run (the same model, the same thread settings: a control)
  post     output decoding, NMS, rescaling to the original image, and the answer as the API
           returns it (class names, rounded lists)
Figures are medians with the interquartile range; `pre` is decode + prepare per call.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(Path(__file__).parent))

import reference  # noqa: E402
from detserve.inference.detector import Detector  # noqa: E402
from detserve.inference.standalone import local_detector  # noqa: E402
from detserve.inference.synthetic import scene  # noqa: E402

STEPS = ("decode", "prepare", "model", "post")
TOLERANCE_PX = 1.0
BORDERLINE = 0.005  # a score this close to the threshold may fall either side of it


def photo(seed: int, w: int, h: int, fmt: str) -> bytes:
    """A synthetic scene smoothed a little, as a phone's processing smooths sensor noise."""
    img = scene(seed, w, h, max_objects=6).image.filter(ImageFilter.GaussianBlur(0.8))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def bench_image() -> bytes:
    """The HTTP bench's image: a 1280x960 JPEG of about 290 KB, a phone photo's proportions."""
    return photo(424242, 1280, 960, "JPEG")


def bench_images() -> dict[str, bytes]:
    """The images both pipelines are timed on: the HTTP bench's photo, a 3:2 photo, a large
    photo (libjpeg's reduced-scale decoding matters there) and a lossless PNG."""
    return {"bench.jpg 1280x960": bench_image(), "photo.jpg 1280x853": photo(7, 1280, 853, "JPEG"),
            "photo.jpg 4000x3000": photo(8, 4000, 3000, "JPEG"),
            "scene.png 1280x853": photo(9, 1280, 853, "PNG")}


def detserve_steps(detector: Detector) -> dict[str, Callable[[Any], Any]]:
    return {"decode": detector.decode, "prepare": detector.to_input,
            "model": lambda prepared: (detector.backend.infer(prepared.tensor), prepared),
            "post": lambda pair: detector.finish(*pair)}


def reference_steps(ref: reference.Reference, labels: list[str]) -> dict[str, Callable[[Any], Any]]:
    """The reference's steps; its post step ends, like detserve's, with the answer a caller gets."""
    def prepare(img: Image.Image) -> tuple[Any, ...]:
        return (*reference.letterbox(img, ref.size), img.size)

    def model(prepared: tuple[Any, ...]) -> tuple[Any, ...]:
        tensor, *rest = prepared
        return (ref.session.run(None, {ref.input_name: tensor})[0], *rest)

    def post(state: tuple[Any, ...]) -> reference.Result:
        out, ratio, pad, size = state
        boxes, scores, classes = reference.postprocess(out, ref.conf, ref.iou, ref.max_det)
        result = reference.Result(reference.scale_boxes(boxes, ratio, pad, size), scores, classes)
        reference.answer(result, labels)
        return result

    return {"decode": reference.decode, "prepare": prepare, "model": model, "post": post}


def run_steps(steps: dict[str, Callable[[Any], Any]], data: bytes,
              times: dict[str, list[float]]) -> Any:
    value: Any = data
    for name in STEPS:
        t0 = time.perf_counter()
        value = steps[name](value)
        times[name].append((time.perf_counter() - t0) * 1000)
    times["pre"].append(times["decode"][-1] + times["prepare"][-1])
    return value


def compare(ours: Any, ref: reference.Result, labels: list[str], tolerance: float,
            threshold: float) -> tuple[str | None, float]:
    """(None, the largest box difference in px) when the answers agree: every detection of either
    has one of the same class in the other with every coordinate within `tolerance` px. One that
    only one side has passes when its score is within BORDERLINE of the threshold (the other
    side scored it just below)."""
    theirs = [(labels[int(c)], b, float(s)) for c, b, s in zip(ref.classes, ref.boxes, ref.scores,
                                                                 strict=True)]
    unmatched, worst = [], 0.0
    for cls, box, score in zip(ours.classes, np.asarray(ours.boxes).reshape(-1, 4), ours.scores,
                               strict=True):
        dists = [float(np.abs(b - box).max()) if c == cls else np.inf for c, b, _ in theirs]
        j = int(np.argmin(dists)) if dists else -1
        if j < 0 or dists[j] > tolerance:
            unmatched.append(("detserve", cls, score))
            continue
        worst = max(worst, dists[j])
        theirs.pop(j)
    unmatched += [("reference", c, s) for c, _, s in theirs]
    real = [u for u in unmatched if u[2] > threshold + BORDERLINE]
    if real:
        return f"detections only one side has (side, class, score): {real}", worst
    return None, worst


def spread(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4)
    return {"p50": statistics.median(values), "p25": q[0], "p75": q[2]}


def measure(detector: Detector, ref: reference.Reference, data: bytes,
            calls: int) -> dict[str, Any]:
    """Check the answers, then time both pipelines alternately (which goes first alternates too)."""
    ours_steps, ref_steps = detserve_steps(detector), reference_steps(ref, detector.labels)
    ours, theirs = detector.infer(data), ref(data)
    decoded = detector.decode(data)
    tolerance, full_decode = TOLERANCE_PX, None
    if decoded.scale > 1:
        # detserve decoded a large JPEG at reduced scale (libjpeg's DCT scaling) where the
        # reference decodes it in full: the pixels differ a little, so the answers are checked
        # from detserve's decoded pixels on (1 px of those), and the full-decode comparison
        # (1 px of the model's input) is reported beside it
        model_px = 1 / min(ref.size[0] / decoded.height, ref.size[1] / decoded.width)
        problem, worst = compare(ours, theirs, detector.labels, model_px, ref.conf)
        full_decode = f"{problem or 'agree'}; boxes within {worst:.2f} px (tolerance {model_px:.2f})"
        same = ref.detect(decoded.image)
        theirs = reference.Result(same.boxes * decoded.scale, same.scores, same.classes)
        tolerance = TOLERANCE_PX * decoded.scale
    problem, worst = compare(ours, theirs, detector.labels, tolerance, ref.conf)
    times: dict[str, dict[str, list[float]]] = {
        side: {s: [] for s in (*STEPS, "pre")} for side in ("detserve", "reference")}
    for i in range(calls):
        order = (("detserve", ours_steps), ("reference", ref_steps))
        for side, steps in order if i % 2 else order[::-1]:
            run_steps(steps, data, times[side])
    return {"boxes": len(ours.boxes), "problem": problem, "tolerance_px": tolerance, "worst_px": worst,
            "full_decode": full_decode,
            "detserve": {k: spread(v) for k, v in times["detserve"].items()},
            "reference": {k: spread(v) for k, v in times["reference"].items()},
            # paired: per call, detserve's pre/post minus the reference's, median
            "pre_diff_ms": statistics.median(
                a - b for a, b in zip(times["detserve"]["pre"], times["reference"]["pre"], strict=True)),
            "post_diff_ms": statistics.median(
                a - b for a, b in zip(times["detserve"]["post"], times["reference"]["post"], strict=True))}


def report(model: str, image: str, r: dict[str, Any]) -> None:
    def fmt(side: str, step: str) -> str:
        s = r[side][step]
        return f"{s['p50']:7.2f} [{s['p25']:.2f}-{s['p75']:.2f}]"

    print(f"{model} / {image}: {r['boxes']} boxes, answers "
          f"{'AGREE' if r['problem'] is None else 'DIFFER: ' + r['problem']} "
          f"(boxes within {r['worst_px']:.2f} px, tolerance {r['tolerance_px']:.2f} px)")
    if r["full_decode"]:
        print(f"  from detserve's reduced-scale decode on; against the reference's full decode: "
              f"{r['full_decode']}")
    print(f"  {'step':8} {'detserve ms p50 [IQR]':>24} {'reference ms p50 [IQR]':>24}")
    for step in (*STEPS, "pre"):
        print(f"  {step:8} {fmt('detserve', step):>24} {fmt('reference', step):>24}")
    print(f"  paired detserve - reference: pre {r['pre_diff_ms']:+.2f} ms, "
          f"post {r['post_diff_ms']:+.2f} ms", flush=True)


def models(wanted: list[str]) -> dict[str, bytes]:
    """The demo detector, and the YOLOv8n-sized model (built once; needs torch)."""
    from detserve.service.demo import demo_model_bytes

    def yolov8n_sized() -> bytes:
        from yolov8n import build

        cache = ROOT / ".bench-cache"
        cache.mkdir(exist_ok=True)
        return build(cache, bench_image()).read_bytes()

    found = {"demo-detector": demo_model_bytes, "yolov8n-sized": yolov8n_sized}
    return {name: found[name]() for name in wanted}


def run(model_bytes: dict[str, bytes], calls: int, images: dict[str, bytes] | None = None,
        threads: int = 1) -> dict[str, dict[str, Any]]:
    """Every model on every image; raises SystemExit when any answer differs."""
    images = images or bench_images()
    results: dict[str, dict[str, Any]] = {}
    for name, model in model_bytes.items():
        detector = local_detector(model, threads)
        ref = reference.Reference(model, threads,
                                  conf=float(detector.output.get("score_threshold", 0.25)),
                                  iou=float(detector.output.get("iou_threshold", 0.45)),
                                  max_det=int(detector.output.get("max_detections", 100)))
        for image_name, data in images.items():
            results[f"{name} / {image_name}"] = r = measure(detector, ref, data, calls)
            report(name, image_name, r)
    problems = [f"{k}: {r['problem']}" for k, r in results.items() if r["problem"]]
    if problems:
        raise SystemExit("detserve's answers differ from the reference pipeline's:\n"
                         + "\n".join(problems))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--models", default="demo-detector,yolov8n-sized")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    results = run(models(args.models.split(",")), args.calls)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
