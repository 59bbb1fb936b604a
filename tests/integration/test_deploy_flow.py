"""Upload → deploy → Running → stop → Stopped → start → Running, through HTTP and a real worker."""

from __future__ import annotations

from sqlalchemy import select

from api_helpers import AUTH, deploy, predict, running_service, upload, wait_status
from detserve.service.demo import build_blob_detector
from detserve.store import Service
from support import blobs_image, failing_model, wait_for


def test_lifecycle_with_events(client):
    # given a running service of the demo detector
    svc = running_service(client, "lifecycle", build_blob_detector().SerializeToString())
    sid = svc["id"]
    assert svc["key"] and svc["status"] == "Deploying"
    assert svc["auto_stop"] == {"enabled": True, "hours": 1, "stop_at": None, "idle_minutes": None,
                                 "idle_stop_at": None, "stops_at": None}
    # when it is stopped and started again
    stopped = client.post(f"/v1/services/{sid}/stop", headers=AUTH)
    assert stopped.status_code == 202 and stopped.json["status"] == "Stopped"
    assert client.post(f"/v1/services/{sid}/stop", headers=AUTH).status_code == 200
    started = client.post(f"/v1/services/{sid}/start", headers=AUTH)
    assert started.status_code == 202 and started.json["status"] == "Deploying"
    running = wait_status(client, sid, "Running")
    # then the events tell the whole story and auto stop is armed again
    assert running["auto_stop"]["stop_at"] is not None
    events = client.get(f"/v1/services/{sid}/events", headers=AUTH).json["events"]
    steps = [(e["from"], e["to"], e["reason"]) for e in events]
    assert steps == [
        (None, "Deploying", "created"),
        ("Deploying", "Running", "deployed"),
        ("Running", "Stopping", "user"),
        ("Stopping", "Stopped", "user"),
        ("Stopped", "Deploying", "user"),
        ("Deploying", "Running", "deployed"),
    ]


def test_stopping_drops_the_model_from_worker_memory(client, stack):
    svc = running_service(client, "unload-me", build_blob_detector().SerializeToString())
    version_id = stack.store.first(select(Service.version_id).where(Service.id == svc["id"]))[0]
    worker = stack.procs["worker-cpu"]
    assert f"unloaded model version {version_id}\n" not in worker.tail(100_000)
    client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH)
    wait_for(lambda: f"unloaded model version {version_id}\n" in worker.tail(100_000), 10,
             what="the worker to unload the model")


def test_predict_goes_through_the_worker(client):
    svc = running_service(client, "blobs", build_blob_detector().SerializeToString())
    image = blobs_image([("red", 40, 40, 80, 80), ("blue", 200, 120, 240, 160)])
    resp = predict(client, svc["id"], image)
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert set(body) >= {"detection_classes", "detection_boxes", "detection_scores"}
    assert sorted(set(body["detection_classes"])) == ["blue", "red"]
    assert body["detection_scores"] == sorted(body["detection_scores"], reverse=True)


def test_model_that_cannot_load_fails_with_its_error(client):
    resp = upload(client, "broken", failing_model(), config='{"labels": ["a", "b"]}')
    assert resp.status_code == 201, resp.json
    created = deploy(client, "broken", resp.json["version"])
    assert created.status_code == 202
    failed = wait_status(client, created.json["id"], "Failed")
    assert "ONNX Runtime could not load the model" in failed["error"]
    assert "NoSuchDetector" in failed["error"]
    events = client.get(f"/v1/services/{created.json['id']}/events", headers=AUTH).json["events"]
    assert events[-1]["reason"] == "deploy_failed"


def test_delete_stops_and_removes_a_service(client):
    # given a Running service
    svc = running_service(client, "deleted", build_blob_detector().SerializeToString())
    sid = svc["id"]
    image = blobs_image([("red", 10, 10, 60, 60)])
    assert predict(client, sid, image).status_code == 200
    # when it is deleted
    resp = client.delete(f"/v1/services/{sid}", headers=AUTH)
    assert resp.status_code == 204
    # then it is gone everywhere: get, events, the list, predictions (its key opens nothing)
    assert client.get(f"/v1/services/{sid}", headers=AUTH).status_code == 404
    assert client.get(f"/v1/services/{sid}/events", headers=AUTH).status_code == 404
    assert sid not in {s["id"] for s in client.get("/v1/services", headers=AUTH).json["services"]}
    assert predict(client, sid, image).status_code == 404
    assert predict(client, sid, image, headers={"X-Service-Key": svc["key"]}).status_code == 401
    # a second delete finds nothing, and the version it used can now be deleted
    assert client.delete(f"/v1/services/{sid}", headers=AUTH).status_code == 404
    assert client.delete("/v1/models/deleted/versions/1", headers=AUTH).status_code == 204


def test_start_up_recovery_redeploys_running_services_and_keeps_their_arming(tmp_path_factory, redis_base):
    # given a stack of its own (recovery touches every service) with a Running, armed service
    from api_helpers import get_service
    from conftest import Stack, make_settings
    from detserve.service import deployments

    stack = Stack(make_settings(tmp_path_factory.mktemp("recovery"), redis_base))
    try:
        client = stack.app.test_client()
        svc = running_service(client, "recovered", build_blob_detector().SerializeToString(),
                              auto_stop={"enabled": True, "hours": 2})
        sid = svc["id"]
        before = get_service(client, sid)
        stopped = running_service(client, "left-stopped", build_blob_detector().SerializeToString())
        client.post(f"/v1/services/{stopped['id']}/stop", headers=AUTH)
        # when detserve comes back up and recovers (what `detserve up` runs at start)
        redeployed = deployments.recover(stack.app.extensions["detserve"]["runtime"])
        # then the Running service is deployed again on a worker, armed as it was; the Stopped one
        # stays Stopped
        assert redeployed == [sid]
        after = wait_status(client, sid, "Running")
        assert after["auto_stop"]["stop_at"] == before["auto_stop"]["stop_at"]
        steps = [(e["from"], e["to"], e["reason"]) for e in
                 client.get(f"/v1/services/{sid}/events", headers=AUTH).json["events"]]
        assert steps[-2:] == [("Running", "Deploying", "restart"), ("Deploying", "Running", "deployed")]
        assert get_service(client, stopped["id"])["status"] == "Stopped"
        resp = predict(client, sid, blobs_image([("blue", 10, 10, 60, 60)]))
        assert resp.status_code == 200 and set(resp.json["detection_classes"]) == {"blue"}
    finally:
        stack.close()
