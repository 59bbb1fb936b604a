"""Test helpers: a real Redis, detserve processes, ONNX models and images made here."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import redis
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from detserve.config import Settings

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "test-admin-token"


def free_port() -> int:
    """The launcher's own, imported when called: the launcher pulls in Celery and SQLAlchemy,
    which the gpu tests (run where only CUDA and the model stack are installed) never need."""
    from detserve_launcher.supervisor import free_port as launcher_free_port

    return launcher_free_port()


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
             what: str | Callable[[], str] = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for "
                         f"{what() if callable(what) else what}")


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / p) for p in ("shared", "services/api", "services/scheduler",
                                 "services/worker-cpu", "services/worker-gpu", "services/launcher")]
        + [env.get("PYTHONPATH", "")])
    return env


@dataclass
class Proc:
    """A detserve component in its own process group, logging to a file."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)

    def start(self) -> Proc:
        fh = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=ROOT)
        fh.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # the group: also children that outlive the leader
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait()
        self.kill(signal.SIGKILL)
        return self.proc.returncode

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def detserve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "detserve_launcher.cli", *args]


def start_component(settings: Settings, name: str, *args: str) -> Proc:
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return Proc(name, detserve_cmd(*args), child_env(settings), logs / f"{name}.log").start()


@contextmanager
def heartbeat(settings: Settings, flavor: str, worker: str, now: float | None = None) -> Iterator[None]:
    """A worker's heartbeat that is gone again when the block ends, whatever happens in it (a
    beat left behind would make the flavor look available to every later test)."""
    from detserve.monitoring import heartbeats

    client = redis.Redis.from_url(settings.redis_url)
    heartbeats.beat(client, flavor, worker, now=now)
    try:
        yield
    finally:
        heartbeats.forget(client, flavor, worker)


def wait_heartbeat(settings: Settings, role: str, proc: Proc, timeout: float = 60.0) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    key = f"detserve:workers:{role}"

    def beating() -> bool:
        if proc.proc and proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited:\n{proc.tail()}")
        return bool(client.zrangebyscore(key, time.time() - 3 * settings.heartbeat_seconds, "+inf"))

    wait_for(beating, timeout, what=f"{role} heartbeat")


# ---- models ---------------------------------------------------------------------------------


def _finish(graph: onnx.GraphProto, meta: dict[str, str] | None = None) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def constant_model(output: np.ndarray, *, size: int = 64, out_name: str = "output0",
                   meta: dict[str, str] | None = None, extra_outputs: dict[str, np.ndarray] | None = None,
                   input_dtype: int = TensorProto.FLOAT, layout: str = "NCHW") -> bytes:
    """A model whose outputs are fixed tensors (known boxes), plus 0 x the input to use it."""
    shape = [1, 3, size, size] if layout == "NCHW" else [1, size, size, 3]
    outputs = {out_name: output, **(extra_outputs or {})}
    nodes, inits, infos = [], [], []
    src = "images"
    if input_dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["images"], ["images_f"], to=TensorProto.FLOAT))
        src = "images_f"
    nodes.append(helper.make_node("ReduceSum", [src], ["total"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["total", "zero"], ["nothing"]))
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    for name, value in outputs.items():
        value = np.asarray(value, dtype=np.float32)
        inits.append(numpy_helper.from_array(value, f"{name}_const"))
        nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "constant", [helper.make_tensor_value_info(
        "images", input_dtype, shape)], infos, initializer=inits)
    return _finish(graph, meta)


def yolo_v8_output(boxes_xywh: list[tuple[float, float, float, float]], classes: list[int],
                   scores: list[float], nc: int, n: int = 50) -> np.ndarray:
    out = np.zeros((1, 4 + nc, n), dtype=np.float32)
    for i, (box, c, s) in enumerate(zip(boxes_xywh, classes, scores, strict=True)):
        out[0, :4, i] = box
        out[0, 4 + c, i] = s
    return out


def failing_model() -> bytes:
    """Valid for onnx.checker, but ONNX Runtime cannot load it (an operator nobody implements)."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchDetector", ["images"], ["output0"], domain="detserve.test")],
        "broken", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 50])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("detserve.test", 1)])
    model.ir_version = 8
    return model.SerializeToString()


# ---- images ---------------------------------------------------------------------------------


def image_bytes(width: int = 320, height: int = 240, fmt: str = "PNG",
                color: tuple[int, int, int] = (40, 40, 40), mode: str = "RGB", **save: object) -> bytes:
    img = Image.new(mode, (width, height), color if mode == "RGB" else None)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def blobs_image(blobs: list[tuple[str, int, int, int, int]], width: int = 320, height: int = 320,
                fmt: str = "PNG") -> bytes:
    """Grey background with saturated squares: (colour, x0, y0, x1, y1)."""
    colours = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
    arr = np.full((height, width, 3), 90, dtype=np.uint8)
    for colour, x0, y0, x1, y1 in blobs:
        arr[y0:y1, x0:x1] = colours[colour]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def stored_for_exif(display: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for what a person sees, per the EXIF (TIFF 6.0) definition of
    each orientation: where the stored row 0 and column 0 lie in the displayed picture. Written
    with numpy, independently of PIL's transpose table."""
    return {
        1: lambda d: d,                        # row 0 top, column 0 left
        2: lambda d: d[:, ::-1],               # row 0 top, column 0 right
        3: lambda d: d[::-1, ::-1],            # row 0 bottom, column 0 right
        4: lambda d: d[::-1, :],               # row 0 bottom, column 0 left
        5: lambda d: d.transpose(1, 0, 2),     # row 0 left, column 0 top
        6: lambda d: np.rot90(d, 1),           # row 0 right, column 0 top
        7: lambda d: d[::-1, ::-1].transpose(1, 0, 2),  # row 0 right, column 0 bottom
        8: lambda d: np.rot90(d, -1),          # row 0 left, column 0 bottom
    }[orientation](display)


def redis_alive(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def dynamic_batch_model(nc: int = 3, anchors: int = 4, batch: int | str = "N") -> bytes:
    """A yolo-v8-layout model with a dynamic batch: [N,3,64,64] -> [N, 4+nc, anchors]; each
    image's class scores are its mean colour per 32x32 quadrant, so outputs differ per image.
    An integer `batch` fixes it (1: the static batch of a default Ultralytics export)."""
    boxes = np.zeros((1, 4, anchors), dtype=np.float32)
    for i in range(anchors):
        boxes[0, :, i] = [16 + 32 * (i % 2), 16 + 32 * (i // 2), 30, 30]
    nodes = [
        helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Reshape", ["pooled", "shape"], ["scores"]),
        helper.make_node("ReduceSum", ["scores", "axes"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["boxes", "nothing"], ["batched_boxes"]),
        helper.make_node("Concat", ["batched_boxes", "scores"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "dynamic", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 4 + nc, anchors])],
        initializer=[numpy_helper.from_array(np.asarray([0, nc, anchors], dtype=np.int64), "shape"),
                     numpy_helper.from_array(np.asarray([1, 2], dtype=np.int64), "axes"),
                     numpy_helper.from_array(np.zeros((), np.float32), "zero"),
                     numpy_helper.from_array(boxes, "boxes")])
    return _finish(graph, {"names": str({i: f"c{i}" for i in range(nc)}), "imgsz": "[64, 64]"})
