"""Sync and async prediction through HTTP and a real worker: results, bad inputs, EXIF."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from api_helpers import AUTH, predict, running_service
from conftest import as_config
from detserve.lane import replies, synclane
from detserve.service.demo import build_blob_detector
from detserve_api.auth import HOT_QUERY
from support import blobs_image, heartbeat, image_bytes, wait_for


@pytest.fixture(scope="module")
def service(stack):
    return running_service(stack.app.test_client(), "predictions", build_blob_detector().SerializeToString())


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
    lane = synclane.KEY.format(flavor="gpu")
    assert r.llen(lane) == 1 and 0 < r.ttl(lane) <= 61
    r.delete(lane)


def test_sync_predictions_hand_images_over_in_shared_memory(stack, client, service):
    from detserve.lane.handoff import Handoff

    shm = Handoff(stack.settings.shm_dir)
    lanes = stack.app.extensions["detserve"]["lanes"]
    # given the stack's worker, which shares the API's memory directory and says so
    wait_for(lambda: lanes._worker_shares_memory("cpu"), timeout=10,
             what="the worker to advertise its shared memory")
    # when sync predictions are answered
    for _ in range(2):
        resp = predict(client, service["id"], GOOD)
        assert resp.status_code == 200 and set(resp.json["detection_classes"]) == {"red"}
    # then they went through this thread's port: its slot holds the last image, its socket got
    # the answers, and nothing else was left in the directory
    port = lanes._thread.port
    assert shm.read_image(port.name, len(GOOD)) == GOOD
    assert {p.suffix for p in shm.dir.glob(port.name + ".*")} == {".slot", ".sock"}
    assert list(shm.dir.glob("*.img")) == []


@pytest.mark.parametrize("shm_dir", ["", "elsewhere"])
def test_sync_predictions_without_shared_memory_send_the_bytes(stack, service, tmp_path, shm_dir):
    from detserve_api import create_app

    # given an API with no shared memory, or with a directory no worker shares
    config = {**as_config(stack.settings), "shm_dir": str(tmp_path / shm_dir) if shm_dir else ""}
    other = create_app(config, store=stack.store).test_client()
    # when it predicts, then the worker answers from the bytes in the frame
    resp = predict(other, service["id"], GOOD)
    assert resp.status_code == 200 and set(resp.json["detection_classes"]) == {"red"}
    assert not shm_dir or list((tmp_path / shm_dir).glob("*.img")) == []


def _frame(reply_to: str, version_id: int, image: bytes, deadline: float) -> synclane.Frame:
    return synclane.Frame(version_id, "test", reply_to, deadline, image)


def _reply(r, key: str, timeout: float) -> replies.Answer | None:
    item = r.blpop([key], timeout=timeout)
    return None if item is None else replies.decode(item[1])


def _submit(r, frame: synclane.Frame) -> None:
    r.lpush(synclane.KEY.format(flavor="cpu"), synclane.encode(frame))


def test_lane_drops_stale_and_malformed_frames_and_carries_on(stack, service):
    import redis

    r = redis.Redis.from_url(stack.settings.redis_url)
    lane = synclane.KEY.format(flavor="cpu")
    version_id = stack.store.first(HOT_QUERY, {"id": service["id"]}).version_id
    stale, good, elsewhere = replies.new_key(), replies.new_key(), replies.new_key()
    # given a frame whose caller gave up a second ago, one that is not a frame at all, and one
    # whose image is in shared memory the worker does not have
    _submit(r, _frame(stale, version_id, GOOD, time.time() - 1))
    r.lpush(lane, b"not a frame")
    _submit(r, synclane.Frame(version_id, "test", elsewhere, time.time() + 20, port="x",
                              image_size=10))
    # when a good frame follows them
    _submit(r, _frame(good, version_id, GOOD, time.time() + 20))
    # then the good one is answered, the stale one never is, the lost image is reported
    answer = _reply(r, good, 20)
    assert answer is not None and set(json.loads(answer.body)["detection_classes"]) == {"red"}
    lost = _reply(r, elsewhere, 5)
    assert lost is not None and lost.status == 400 and "send it again" in lost.error["message"]
    assert r.exists(stale) == 0 and r.llen(lane) == 0
