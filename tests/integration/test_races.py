"""Races through the public contract, on real worker and scheduler processes: a user stop racing
a deploy that is finishing, two starts at once, a PATCH racing a countdown that is firing, two
worker processes serving one service's sync predictions. Each race is run a few times at
different offsets (bounded), and the end state is checked once the work has settled."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import pytest
import requests
from PIL import Image

from api_helpers import AUTH, deploy, get_service, predict, upload, wait_status
from conftest import Stack, make_settings
from detserve import tasknames as names
from detserve.service.demo import build_blob_detector
from support import start_component, wait_for


def events(client, sid):
    return client.get(f"/v1/services/{sid}/events", headers=AUTH).json["events"]


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def deploys_done(stack) -> int:
    """How many deploy tasks the CPU workers have run (a public Celery inspect)."""
    replies = stack.app.extensions["celery"].control.inspect(timeout=2.0).stats() or {}
    return sum(r.get("total", {}).get(names.DEPLOY, 0) for n, r in replies.items() if n.startswith("cpu@"))


@pytest.fixture(scope="module")
def model(stack):
    client = stack.app.test_client()
    resp = upload(client, "races", build_blob_detector().SerializeToString())
    assert resp.status_code == 201, resp.json
    return resp.json["version"]


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.4])
def test_a_user_stop_racing_a_finishing_deploy_ends_stopped(stack, client, model, delay):
    # given a deploy that a worker is taking up
    before = deploys_done(stack)
    created = deploy(client, "races", model, auto_stop={"enabled": True, "hours": 1})
    assert created.status_code == 202, created.json
    sid = created.json["id"]
    # when the user stops it while the worker loads the model (or just after)
    time.sleep(delay)
    stopped = client.post(f"/v1/services/{sid}/stop", headers=AUTH)
    assert stopped.status_code in (200, 202), stopped.json
    wait_for(lambda: deploys_done(stack) > before, 60, 0.2, what="the worker to finish the deploy")
    # then the stop wins whichever came first: Stopped, disarmed, and Stopped the last word
    final = get_service(client, sid)
    assert final["status"] == "Stopped" and final["auto_stop"]["stop_at"] is None, final
    ev = [(e["to"], e["reason"]) for e in events(client, sid)]
    assert ev[-2:] == [("Stopping", "user"), ("Stopped", "user")], ev
    assert ev.count(("Running", "deployed")) <= 1
    # and it refuses predictions
    assert predict(client, sid, b"\x89PNG\r\n\x1a\n").status_code in (400, 409)


def test_two_starts_at_once_deploy_once_and_both_succeed(stack, client, live_url, model):
    # given a Stopped service
    created = deploy(client, "races", model, auto_stop={"enabled": False, "hours": 1})
    sid = created.json["id"]
    wait_status(client, sid, "Running")
    assert client.post(f"/v1/services/{sid}/stop", headers=AUTH).status_code == 202
    for attempt in range(3):  # a few rounds: the race window is small
        # when several callers start it at the same moment
        barrier = threading.Barrier(6)

        def start(barrier: threading.Barrier = barrier) -> int:
            barrier.wait()
            url = f"{live_url}/v1/services/{sid}/start"
            return requests.post(url, headers=AUTH, timeout=30).status_code

        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda _: start(), range(6)))
        # then every one is told 202 (a second start is a no-op), and it deploys exactly once
        assert codes == [202] * 6, (attempt, codes)
        wait_status(client, sid, "Running")
        ev = [(e["to"], e["reason"]) for e in events(client, sid)]
        assert ev[-2:] == [("Deploying", "user"), ("Running", "deployed")], ev
        assert client.post(f"/v1/services/{sid}/stop", headers=AUTH).status_code == 202


HOUR = 2.0


@pytest.fixture(scope="module")
def fast(tmp_path_factory, redis_base):
    settings = make_settings(tmp_path_factory.mktemp("races-fast"), redis_base,
                             autostop_hour_seconds=HOUR, sweep_seconds=1.0)
    stack = Stack(settings)
    resp = upload(stack.app.test_client(), "races-fast", build_blob_detector().SerializeToString())
    assert resp.status_code == 201
    yield stack
    stack.close()


@pytest.mark.parametrize("offset", [-0.3, -0.05, 0.0, 0.1])
def test_a_patch_racing_a_firing_countdown_leaves_a_consistent_service(fast, offset):
    client = fast.app.test_client()
    created = deploy(client, "races-fast", 1, auto_stop={"enabled": True, "hours": 1})
    svc = wait_status(client, created.json["id"], "Running", timeout=60)
    # when the user re-arms it just as its countdown fires
    time.sleep(max(0.0, ts(svc["auto_stop"]["stop_at"]) + offset - time.time()))
    patched = client.patch(f"/v1/services/{svc['id']}", json={"auto_stop": {"enabled": True, "hours": 3}},
                           headers=AUTH)
    assert patched.status_code == 200, patched.json
    time.sleep(1.5)  # the old countdown, and a sweep, have run (if they were to run at all)
    final = get_service(client, svc["id"])
    ev = [(e["to"], e["reason"]) for e in events(client, svc["id"])]
    # then either the countdown won (Stopped by auto stop, nothing left armed) or the PATCH won
    # (Running on the new arming, no auto stop yet); never a mix
    if final["status"] == "Stopped":
        assert ev[-2:] == [("Stopping", "auto_stop"), ("Stopped", "auto_stop")], ev
        assert final["auto_stop"]["stop_at"] is None
        assert final["running_seconds"] == pytest.approx(HOUR, abs=0.1)  # billed to its stop_at
    else:
        assert final["status"] == "Running", final
        assert ("Stopped", "auto_stop") not in ev
        assert final["auto_stop"]["stop_at"] == patched.json["auto_stop"]["stop_at"]
        assert ts(final["auto_stop"]["stop_at"]) > ts(svc["auto_stop"]["stop_at"]) + HOUR
        # and the new arming is live: it stops at its new time
        wait_status(client, svc["id"], "Stopped", timeout=3 * HOUR + 15)
        assert events(client, svc["id"])[-1]["reason"] == "auto_stop"


def scene(i: int) -> tuple[bytes, str, tuple[int, int]]:
    """An image with one blob whose colour and place depend on i: (bytes, label, centre)."""
    colour = ("red", "green", "blue")[i % 3]
    x, y = 40 + (i * 37) % 200, 40 + (i * 53) % 200
    rgb = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}[colour]
    arr = np.full((320, 320, 3), 90, dtype=np.uint8)
    arr[y - 20:y + 20, x - 20:x + 20] = rgb
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), colour, (x, y)


def test_two_worker_processes_on_one_sync_lane_answer_every_request_right(stack, client, model):
    # given a second CPU worker process beside the stack's, both serving one service
    second = start_component(stack.settings, "worker-cpu-2", "worker", "--flavor", "cpu")
    try:
        # both beat under one host name: wait for the new one's own word that it is ready
        wait_for(lambda: second.proc.poll() is None and " ready." in second.tail(), 120, 0.3,
                 what=lambda: f"the second worker to be ready\n{second.tail()}")
        created = deploy(client, "races", model, auto_stop={"enabled": False, "hours": 1})
        sid = created.json["id"]
        wait_status(client, sid, "Running")

        # when many sync predictions arrive from several callers at once
        def ask(i: int) -> tuple[int, dict, str, tuple[int, int]]:
            data, colour, centre = scene(i)
            resp = predict(stack.app.test_client(), sid, data)
            return resp.status_code, resp.json, colour, centre

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, range(60)))
        # then every answer is that image's own: its colour, at its place
        for i, (code, body, colour, (x, y)) in enumerate(answers):
            assert code == 200, (i, body)
            assert set(body["detection_classes"]) == {colour}, (i, body)
            y0, x0, y1, x1 = body["detection_boxes"][0]
            assert abs((x0 + x1) / 2 - x) <= 16 and abs((y0 + y1) / 2 - y) <= 16, (i, body)
        # and the second process took part (it loaded the model to answer)
        assert "loading races v" in second.tail(200000), second.tail()
        client.post(f"/v1/services/{sid}/stop", headers=AUTH)
    finally:
        second.stop()
