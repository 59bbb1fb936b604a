"""The service JSON's view of a deploy's progress record, and paths kept out of users' errors."""

from __future__ import annotations

import pytest

from detserve.service.progress import path_free, view

STEP = {"label": "building TensorRT engine", "detail": "fp16, batch 1/8/32", "at": "2026-12-04T19:00:00Z",
        "started": 0.0, "progress": 55}


def _record(*names: str, **last: object) -> dict[str, object]:
    steps = [{**STEP, "name": n} for n in names]
    steps[-1].update(last)
    return {"steps": steps, "error": None, "engine": None}


@pytest.mark.parametrize("status", ["Stopped", "Stopping"])
def test_a_service_at_rest_shows_no_progress(status):
    assert view(_record("queued", "ready"), status) == {
        "progress": None, "phase": None, "deploy_steps": [], "engine": None}


def test_a_redeploy_nobody_queued_hides_the_last_deploys_end():
    assert view(_record("queued", "ready", progress=100), "Deploying")["phase"] is None


def test_the_phase_is_the_last_step():
    shown = view(_record("queued", "fetching", "building_engine", bytes_total=None), "Deploying")
    assert shown["progress"] == 55
    assert shown["phase"]["name"] == "building_engine" and not shown["phase"]["failed"]
    assert [s["name"] for s in shown["deploy_steps"]] == ["queued", "fetching", "building_engine"]


def test_a_failed_step_shows_on_a_failed_service():
    shown = view(_record("queued", "loading", failed=True), "Failed")
    assert shown["phase"]["failed"] and shown["deploy_steps"][-1]["failed"]


@pytest.mark.parametrize(("text", "shown"), [
    ("Error Code 4: /opt/build/cache/x.plan: no", "Error Code 4: x.plan: no"),
    ("cannot open C:\\models\\a.onnx", "cannot open a.onnx"),
    ("(/tmp/q.onnx)", "(q.onnx)"),
    ("from http://api:8080/v1/artifacts/ab: 404", "from http://api:8080/v1/artifacts/ab: 404"),
])
def test_paths_leave_only_the_file_name(text, shown):
    assert path_free(text) == shown
