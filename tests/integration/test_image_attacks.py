"""Images whose headers lie, sent through HTTP to a real worker (issue 12): each ends as 400
invalid_image or 413, never 500, and no process decodes one at its lying size."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import attack_images
from api_helpers import AUTH, predict, running_service
from conftest import Stack, as_config, make_settings
from detserve.service.demo import build_blob_detector
from support import wait_for

LIMIT = 1_000_000  # pixels: the attacks claim 16 MP and more (48 MB as RGB), a harmless size here
BIG = 4000
CORPUS = attack_images.corpus(BIG)


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory, redis_base: str) -> Iterator[Stack]:
    """Its worker refuses over LIMIT pixels."""
    s = Stack(make_settings(tmp_path_factory.mktemp("attacks"), redis_base, max_image_pixels=LIMIT))
    yield s
    s.close()


@pytest.fixture(scope="module")
def service(small_stack: Stack) -> dict:
    return running_service(small_stack.app.test_client(), "attacks",
                           build_blob_detector().SerializeToString())


@pytest.fixture(scope="module")
def lenient_client(small_stack: Stack):
    """An API that lets every image through to the worker: the worker's own check must hold."""
    from detserve_api import create_app

    config = {**as_config(small_stack.settings), "max_image_pixels": 10**9}
    return create_app(config, store=small_stack.store).test_client()


def peak_rss_kb(pid: int) -> int:
    """The highest resident size the process group ever had (VmHWM), summed over its members."""
    group = os.getpgid(pid)
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            status = (entry / "status").read_text()
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmHWM:")), 0)
    return total


def assert_refused(resp, name: str) -> None:
    assert resp.status_code in {400, 413}, (name, resp.status_code, resp.get_data(as_text=True))
    assert resp.is_json
    code = resp.json["error"]["code"]
    assert code == ("invalid_image" if resp.status_code == 400 else "image_too_large"), resp.json


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_api_refuses_each_attack(small_stack, service, name):
    resp = predict(small_stack.app.test_client(), service["id"], CORPUS[name], filename="x.png")
    assert_refused(resp, name)


def test_the_worker_refuses_what_an_api_let_through(small_stack, service, lenient_client):
    # given: a worker that has loaded the model and answered once
    client = small_stack.app.test_client()
    assert predict(client, service["id"], attack_images.png_ihdr_after_idat(3, BIG)).status_code == 200
    worker = small_stack.procs["worker-cpu"].proc
    assert worker is not None
    before = peak_rss_kb(worker.pid)
    # when: every attack reaches the worker, synchronously and as a task
    tasks = {}
    for name, data in CORPUS.items():
        assert_refused(predict(lenient_client, service["id"], data, filename="x.png"), name)
        queued = predict(lenient_client, service["id"], data, filename="x.png", route="predictions")
        if queued.status_code == 202:
            tasks[name] = queued.json["task_id"]
        else:
            assert_refused(queued, name)
    # then: each task failed with a plain reason, and none was decoded at its claimed size
    for name, task_id in tasks.items():
        outcome = _finished(lenient_client, task_id)
        assert outcome["status"] == "FAILURE", (name, outcome)
        assert any(word in outcome["error"] for word in ("pixels", "damaged", "not a")), outcome
    grown_mb = (peak_rss_kb(worker.pid) - before) / 1024
    assert grown_mb < 24, f"the worker's peak memory grew by {grown_mb:.0f} MB"  # 16 MP RGB: 48 MB
    assert worker.poll() is None


def _finished(client, task_id: str) -> dict:
    seen: dict = {}

    def done() -> bool:
        seen.update(client.get(f"/v1/predictions/{task_id}", headers=AUTH).json)
        return seen["status"] in {"SUCCESS", "FAILURE"}

    wait_for(done, 30, 0.1, what=f"task {task_id}")
    return seen
