"""Deploy progress through HTTP with a real CPU worker: the steps in order, their progress, and a
failed step that says which step and why."""

from __future__ import annotations

import threading

from api_helpers import AUTH, deploy, upload, wait_status
from detserve.service.demo import build_blob_detector
from detserve.service.progress import STEPS
from support import failing_model

ORDER = list(STEPS)


def _watch(client, service_id: str, stop: threading.Event, seen: list[tuple[str, int]]) -> None:
    """What a console polling the service sees while it deploys."""
    while not stop.is_set():
        svc = client.get(f"/v1/services/{service_id}", headers=AUTH).json
        if svc["phase"]:
            seen.append((svc["phase"]["name"], svc["progress"]))
        if svc["status"] != "Deploying":
            return
        stop.wait(0.01)


def test_a_deploy_passes_through_its_steps_in_order(client):
    # given an uploaded version
    model = build_blob_detector().SerializeToString()
    version = upload(client, "progress-blobs", model).json["version"]
    # when it is deployed and watched until Running
    created = deploy(client, "progress-blobs", version)
    assert created.status_code == 202
    assert created.json["deploy_steps"][0]["name"] == "queued"  # written before the deploy is sent
    seen: list[tuple[str, int]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(client.application.test_client(),
                                                   created.json["id"], stop, seen))
    watcher.start()
    try:
        running = wait_status(client, created.json["id"], "Running")
    finally:
        stop.set()
        watcher.join(10)
    # then the record holds every step of a CPU deploy, in order, with rising progress
    steps = running["deploy_steps"]
    assert [s["name"] for s in steps] == ["queued", "fetching", "loading", "warming_up", "ready"]
    assert [s["at"] for s in steps] == sorted(s["at"] for s in steps)
    assert [s["progress"] for s in steps] == sorted(s["progress"] for s in steps)
    assert steps[1]["progress"] == STEPS["fetching"][2]  # fetched in full
    assert running["progress"] == 100 and running["phase"]["name"] == "ready"
    assert running["engine"] is None  # ONNX Runtime builds no engine
    # and what a poller saw never went backwards
    assert seen, "the watcher saw no phase at all"
    assert [ORDER.index(name) for name, _ in seen] == sorted(ORDER.index(name) for name, _ in seen)
    assert [p for _, p in seen] == sorted(p for _, p in seen)
    # and the list shows the same
    listed = {s["id"]: s for s in client.get("/v1/services", headers=AUTH).json["services"]}
    assert listed[created.json["id"]]["deploy_steps"] == steps


def test_a_failed_step_says_which_step_and_why(client):
    version = upload(client, "progress-broken", failing_model(),
                     config='{"labels": ["a", "b"]}').json["version"]
    created = deploy(client, "progress-broken", version)
    failed = wait_status(client, created.json["id"], "Failed")
    assert failed["error"].startswith("loading the model failed: ONNX Runtime could not load")
    assert "NoSuchDetector" in failed["error"]
    assert failed["phase"]["name"] == "loading" and failed["phase"]["failed"] is True
    assert [s["name"] for s in failed["deploy_steps"]] == ["queued", "fetching", "loading"]


def test_a_stopped_service_shows_no_progress(client):
    version = upload(client, "progress-stop", build_blob_detector().SerializeToString()).json["version"]
    sid = deploy(client, "progress-stop", version).json["id"]
    wait_status(client, sid, "Running")
    stopped = client.post(f"/v1/services/{sid}/stop", headers=AUTH).json
    assert stopped["progress"] is None and stopped["phase"] is None and stopped["deploy_steps"] == []
    # a start begins a new record at "queued"
    started = client.post(f"/v1/services/{sid}/start", headers=AUTH).json
    assert started["deploy_steps"][0]["name"] == "queued"
    again = wait_status(client, sid, "Running")
    assert [s["name"] for s in again["deploy_steps"]][-1] == "ready"
    assert [s["name"] for s in again["deploy_steps"]].count("queued") == 1


def test_openapi_documents_the_progress_fields(client):
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    service = schemas["Service"]["properties"]
    assert {"progress", "phase", "deploy_steps", "engine"} <= set(service)
    assert {"name", "label", "detail", "elapsed_seconds", "failed", "bytes_done", "bytes_total"} <= \
        set(schemas["Phase"]["properties"])
    assert "precision" in schemas["Engine"]["properties"]
