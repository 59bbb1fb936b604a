"""A service's traffic limit: set at deploy or by PATCH, enforced across two API processes
(gunicorn, over real HTTP) by the one limiter in Redis, on both prediction routes."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from api_helpers import AUTH, deploy, running_service, upload
from detserve.service.demo import build_blob_detector
from support import blobs_image, free_port, start_component, wait_for

IMAGE = blobs_image([("red", 40, 40, 90, 90)])
QPS = 2.0


@pytest.fixture(scope="module")
def apis(stack):
    """Two API processes on the stack's database and Redis."""
    procs, urls = [], []
    for name in ("api-a", "api-b"):
        port = free_port()
        procs.append(start_component(stack.settings, name, "api", "--host", "127.0.0.1",
                                     "--port", str(port), "--workers", "1", "--threads", "8"))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url, proc in zip(urls, procs, strict=True):
            wait_for(lambda u=url: _up(u), 60, 0.2, what=lambda p=proc: f"the API ({p.tail()})")
        yield urls
    finally:
        for proc in procs:
            proc.stop()


def _up(url):
    try:
        return requests.get(url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or still importing
        return False


@pytest.fixture(scope="module")
def limited(stack):
    return running_service(stack.app.test_client(), "limited", build_blob_detector().SerializeToString(),
                           traffic_limit={"qps": QPS})


@pytest.fixture(scope="module")
def uploaded(stack):
    resp = upload(stack.app.test_client(), "limit-bad", build_blob_detector().SerializeToString())
    assert resp.status_code == 201, resp.json
    return resp.json["version"]


def call(url, service, route="predict"):
    return requests.post(f"{url}/v1/services/{service['id']}/{route}",
                         headers={"X-Service-Key": service["key"]},
                         files={"images": ("i.png", IMAGE, "image/png")}, timeout=30)


def burst(urls, service, n):
    """n requests at once, spread over both APIs and both routes; (answers, seconds taken)."""
    jobs = [(urls[i % 2], "predict" if i % 4 < 2 else "predictions") for i in range(n)]
    started = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda job: call(job[0], service, job[1]), jobs))
    return answers, time.monotonic() - started


def test_below_the_limit_nothing_is_refused(apis, limited):
    time.sleep(1.5)  # a full burst allowance
    for i in range(8):  # 1.33 per second, alternating APIs and routes
        resp = call(apis[i % 2], limited, "predict" if i % 3 else "predictions")
        assert resp.status_code in (200, 202), resp.text
        time.sleep(0.75)


def test_over_the_limit_429_across_both_processes(apis, limited):
    # given a full burst allowance (a second's worth: 2 requests)
    time.sleep(1.5)
    # when 20 requests come at once through two API processes
    answers, seconds = burst(apis, limited, 20)
    passed = [r for r in answers if r.status_code in (200, 202)]
    refused = [r for r in answers if r.status_code == 429]
    # then the two processes together admit at most the burst plus QPS per second (a limit per
    # process would admit twice that), and refuse the rest with Retry-After
    assert len(passed) + len(refused) == len(answers), [r.status_code for r in answers]
    assert QPS <= len(passed) <= QPS + QPS * seconds + 1, (len(passed), seconds)
    assert refused
    for resp in refused:
        assert resp.json()["error"]["code"] == "rate_limited"
        assert "2 predictions per second" in resp.json()["error"]["message"]
        assert 1 <= int(resp.headers["Retry-After"]) <= 2


def test_patch_changes_and_removes_the_limit(apis, limited, client):
    # when the limit is removed, a burst passes whole
    resp = client.patch(f"/v1/services/{limited['id']}", json={"traffic_limit": None}, headers=AUTH)
    assert resp.status_code == 200 and resp.json["traffic_limit"] is None
    assert resp.json["auto_stop"]["hours"] == 1  # untouched
    answers, _ = burst(apis, limited, 8)
    assert all(r.status_code in (200, 202) for r in answers), [r.status_code for r in answers]
    # and when one is set again (0.5: one request every 2 s), the second request of a pair waits
    resp = client.patch(f"/v1/services/{limited['id']}", json={"traffic_limit": {"qps": 0.5}},
                        headers=AUTH)
    assert resp.status_code == 200 and resp.json["traffic_limit"] == {"qps": 0.5}
    time.sleep(2.2)
    first, second = call(apis[0], limited), call(apis[1], limited)
    assert first.status_code == 200 and second.status_code == 429
    assert int(second.headers["Retry-After"]) in (1, 2)


@pytest.mark.parametrize("value", [{"qps": 0}, {"qps": -1}, {"qps": "fast"}, {"qps": None}, {},
                                   {"qps": 1e9}, 5, "10/s", {"qps": 5, "burst": 2}])
def test_bad_limits_are_400(client, uploaded, value):
    created = deploy(client, "limit-bad", uploaded, traffic_limit=value)
    assert created.status_code == 400, created.json
    assert all(k.startswith("traffic_limit") for k in created.json["error"]["fields"])
    patched = client.patch("/v1/services/nosuch", json={"traffic_limit": value}, headers=AUTH)
    assert patched.status_code == 400, patched.json
    assert all(k.startswith("traffic_limit") for k in patched.json["error"]["fields"])


def test_an_empty_patch_is_400(client, limited):
    resp = client.patch(f"/v1/services/{limited['id']}", json={}, headers=AUTH)
    assert resp.status_code == 400
    assert "traffic_limit" in resp.json["error"]["message"]


def test_the_limit_is_judged_before_the_body_is_read(apis, limited, client):
    # given a service whose one request every 10 s was just used
    resp = client.patch(f"/v1/services/{limited['id']}", json={"traffic_limit": {"qps": 0.1}},
                        headers=AUTH)
    assert resp.status_code == 200
    time.sleep(1.1)
    call(apis[0], limited)
    # when a request announces a large upload and sends none of it
    host, port = apis[1].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((f"POST /v1/services/{limited['id']}/predict HTTP/1.1\r\nHost: x\r\n"
                      f"X-Service-Key: {limited['key']}\r\nContent-Length: 500000\r\n"
                      "Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode())
        # then the 429 comes at once, without waiting for the body
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 429"), head
    assert "Retry-After: " in head
