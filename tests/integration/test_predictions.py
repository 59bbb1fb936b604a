"""Sync and async prediction through HTTP and a real worker: results, bad inputs, EXIF."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from api_helpers import AUTH, predict, running_service, wait_status
from conftest import as_config
from detserve.lane import shm
from detserve.lane.frames import LOCAL_LANE_KEY
from detserve.service.demo import build_blob_detector
from support import blobs_image, heartbeat, image_bytes, wait_for


@pytest.fixture(scope="module")
def service(stack):
    return running_service(stack.app.test_client(), "predictions", build_blob_detector().SerializeToString())


@pytest.fixture(scope="module")
def stopped(stack):
    client = stack.app.test_client()
    svc = running_service(client, "predictions-stopped", build_blob_detector().SerializeToString())
    assert client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH).status_code == 202
    wait_status(client, svc["id"], "Stopped")
    return svc


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _other(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format=fmt)
    return buf.getvalue()


GOOD = blobs_image([("red", 40, 40, 90, 90)])


@pytest.mark.parametrize("data,filename", [
    (b"", "empty.png"), (b"just text", "notes.jpg"), (_other("GIF"), "anim.gif"),
    (_other("GIF"), "disguised.png"), (_other("TIFF"), "scan.tiff"), (_other("WEBP"), "photo.webp"),
    (b"<svg/>", "icon.svg"), (b"%PDF-1.7", "doc.pdf"),
    (image_bytes(640, 480, fmt="JPEG")[:700], "truncated.jpg"),
])
def test_bad_images_get_invalid_image_and_the_service_carries_on(client, service, data, filename):
    resp = predict(client, service["id"], data, filename=filename)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    err = resp.json["error"]
    assert err["code"] == "invalid_image"
    assert "JPG, JPEG, BMP or PNG" in err["message"] or "no image" in err["message"]
    ok = predict(client, service["id"], GOOD)
    assert ok.status_code == 200 and set(ok.json["detection_classes"]) == {"red"}


def test_every_answer_of_the_route(client, service, stopped):
    key = {"X-Service-Key": service["key"]}
    cases = {
        "service key": (service["id"], GOOD, key, 200),
        "admin token": (service["id"], GOOD, None, 200),
        "no credentials": (service["id"], GOOD, {}, 401),
        "unknown key": (service["id"], GOOD, {"X-Service-Key": "nope"}, 401),
        "another service's key": (stopped["id"], GOOD, key, 403),
        "wrong bearer": (service["id"], GOOD, {"Authorization": "Bearer nope"}, 401),
        "unknown service": ("nosuch", GOOD, None, 404),
        "stopped service": (stopped["id"], GOOD, None, 409),
        "gif": (service["id"], image_bytes(16, 16, fmt="GIF"), key, 400),
        "empty file": (service["id"], b"", key, 400),
        "too many pixels": (service["id"], _bomb(), key, 413),
    }
    for name, (service_id, data, headers, status) in cases.items():
        resp = predict(client, service_id, data, headers=headers)
        assert resp.status_code == status, (name, resp.json)
        assert resp.headers["Content-Type"] == "application/json", name
        assert len(resp.headers["X-Request-Id"]) >= 16, name
        if status == 200:
            assert {"auth", "enqueue", "worker", "model"} <= {
                part.split(";")[0] for part in resp.headers["Server-Timing"].split(", ")}
        else:
            assert resp.json["error"]["request_id"] == resp.headers["X-Request-Id"], name
    assert client.get(f"/v1/services/{service['id']}/predict", headers=AUTH).status_code == 405
    raw = client.post(f"/v1/services/{service['id']}/predict", headers=AUTH, data=GOOD,
                      content_type="image/png")
    assert raw.status_code == 400 and raw.json["error"]["code"] == "invalid_image"


def test_no_file_at_all(client, service):
    resp = client.post(f"/v1/services/{service['id']}/predict", headers=AUTH,
                       data={}, content_type="multipart/form-data")
    assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_image"


def test_limits_give_413(stack, service):
    from detserve_api import create_app

    strict = create_app({**as_config(stack.settings), "max_image_bytes": 5000,
                         "max_image_pixels": 10_000}, store=stack.store).test_client()
    big_bytes = predict(strict, service["id"], image_bytes(400, 400, fmt="BMP"))
    assert big_bytes.status_code == 413 and "bytes" in big_bytes.json["error"]["message"]
    many_pixels = predict(strict, service["id"], image_bytes(200, 200))
    assert many_pixels.status_code == 413 and "pixels" in many_pixels.json["error"]["message"]


def test_boxes_follow_exif_orientation(client, service):
    # the person sees a 300x200 picture with a blue square at x 200..260, y 20..80;
    # the file stores it rotated, with EXIF orientation 6
    display = Image.open(io.BytesIO(blobs_image([("blue", 200, 20, 260, 80)], 300, 200)))
    stored = display.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif)
    body = predict(client, service["id"], buf.getvalue(), filename="phone.jpg").json
    assert set(body["detection_classes"]) == {"blue"}
    y0, x0, y1, x1 = body["detection_boxes"][0]
    assert 200 <= (x0 + x1) / 2 <= 260 and 20 <= (y0 + y1) / 2 <= 80
    assert all(0 <= v <= 300 for v in (x0, x1)) and all(0 <= v <= 200 for v in (y0, y1))


def test_async_flow_end_to_end(client, service):
    headers = {"X-Service-Key": service["key"]}
    sub = predict(client, service["id"], GOOD, headers=headers, route="predictions")
    assert sub.status_code == 202
    task = sub.json["task_id"]
    body = wait_for(lambda: (r := client.get(f"/v1/predictions/{task}", headers=headers).json)
                    ["status"] == "SUCCESS" and r, 30, what="async result")
    sync = predict(client, service["id"], GOOD, headers=headers).json
    assert body["error"] is None
    assert body["result"]["detection_boxes"] == sync["detection_boxes"]
    assert body["result"]["detection_classes"] == sync["detection_classes"]


def test_async_failure_is_reported(client, service):
    bad = image_bytes(640, 480, fmt="JPEG")[:700]
    sub = predict(client, service["id"], bad, route="predictions")
    assert sub.status_code == 202
    task = sub.json["task_id"]
    body = wait_for(lambda: (r := client.get(f"/v1/predictions/{task}", headers=AUTH).json)
                    ["status"] == "FAILURE" and r, 30, what="async failure")
    assert body["result"] is None and "damaged" in body["error"]


def test_async_bad_input_is_refused_up_front(client, service):
    resp = predict(client, service["id"], b"text", route="predictions")
    assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_image"


def test_monitoring_counts_requests(client):
    # a service of its own: no earlier test's counts can still be on their way to its panel
    service = running_service(client, "monitored", build_blob_detector().SerializeToString())
    before = client.get(f"/v1/services/{service['id']}/monitoring", headers=AUTH).json
    assert (before["requests"], before["failures"]) == (0, 0)
    predict(client, service["id"], GOOD)
    predict(client, service["id"], image_bytes(640, 480, fmt="JPEG")[:700])
    # counts are written by a background thread once the answers have gone: wait for them
    def counted():
        now = client.get(f"/v1/services/{service['id']}/monitoring", headers=AUTH).json
        return now if now["requests"] >= 2 else None

    after = wait_for(counted, timeout=30, what="the two requests to be counted")
    assert (after["requests"], after["failures"]) == (2, 1)
    assert after["latency_ms"]["p50"] > 0 and len(after["series"]) == 60
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'detserve_requests_total{{service="{service["id"]}"}} 2' in metrics
    client.post(f"/v1/services/{service['id']}/stop", headers=AUTH)


def test_no_worker_answer_is_504(stack, client):
    import redis

    from detserve.service import status
    from detserve_api import create_app
    from support import image_bytes as img

    # given a Running gpu service whose worker has gone (a heartbeat once made gpu available)
    r = redis.Redis.from_url(stack.settings.redis_url)
    with heartbeat(stack.settings, "gpu", "gpu@gone"):
        model = (io.BytesIO(build_blob_detector().SerializeToString()), "m.onnx")
        version = client.post("/v1/models/timeout/versions", headers=AUTH,
                              content_type="multipart/form-data", data={"model": model})
        created = client.post("/v1/services", headers=AUTH, json={"model": "timeout", "flavor": "gpu",
                                                                  "version": version.json["version"]})
    status.transition(stack.store, created.json["id"], status.DEPLOYING, status.RUNNING, reason="test")
    quick = create_app({**as_config(stack.settings), "predict_timeout": 0.5}, store=stack.store)
    # when a prediction is sent, then the caller gets 504 once the timeout has passed, not long
    # after it (the bound is generous: a loaded machine delays threads by seconds, never by 20)
    started = time.monotonic()
    resp = predict(quick.test_client(), created.json["id"], img())
    waited = time.monotonic() - started
    assert resp.status_code == 504 and resp.json["error"]["code"] == "prediction_timeout"
    assert 0.5 <= waited < 0.5 + 10.0, waited
    client.post(f"/v1/services/{created.json['id']}/stop", headers=AUTH)
    # and the unconsumed frame does not wait forever for a gpu worker that never comes
    lane = LOCAL_LANE_KEY.format(flavor="gpu", shm_id=shm.open_dir(stack.settings.shm_dir)[1])
    assert r.llen(lane) == 1 and 0 < r.ttl(lane) <= 61
    r.delete(lane)
