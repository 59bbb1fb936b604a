"""Several versions in one service, with traffic weights, through the API and a real worker:
the weights hold, a caller can pin a version, every answer names its version, a change of
versions on a Running service loads first and drops nothing under load, a version that cannot
load leaves the old ones serving, monitoring counts per version, and bad bodies store nothing.

Each version of the model here finds one box of its own class ("one", "two", "three"), so an
answer's body says which version made it, independently of the header that claims it.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections import Counter

import pytest
import requests

from api_helpers import AUTH, deploy, get_service, post_multipart, task_outcome, upload, wait_status
from detserve.service import traffic
from support import constant_model, failing_model, image_bytes, wait_for, yolo_v8_output

MODEL = "versioned"
LABELS = ["one", "two", "three"]
IMAGE = image_bytes(64, 64)
PIN = traffic.PIN_HEADER


def model(k: int) -> bytes:
    out = yolo_v8_output([(32, 32, 20, 20)], [k], [0.9], nc=3)
    return constant_model(out, meta={"names": str(dict(enumerate(LABELS))), "imgsz": "[64, 64]"})


@pytest.fixture(scope="module")
def numbers(stack):
    """Versions 1..3 of the model (each answering with its own class) and 4, which cannot load."""
    client = stack.app.test_client()
    made = [upload(client, MODEL, model(k)).json["version"] for k in range(3)]
    made.append(upload(client, MODEL, failing_model(), config='{"labels": ["a", "b"]}')
                .json["version"])
    assert made == [1, 2, 3, 4], made
    return made


@pytest.fixture(scope="module")
def split(stack, numbers):
    """A Running service: 70% to version 1, 30% to version 2, version 3 on weight 0."""
    client = stack.app.test_client()
    created = deploy(client, MODEL, versions=[{"version": 1, "weight": 70},
                                              {"version": 2, "weight": 30},
                                              {"version": 3, "weight": 0}])
    assert created.status_code == 202, created.json
    assert created.json["version"] == 1  # the primary: the highest weight
    wait_status(client, created.json["id"], "Running")
    return created.json


def ask(client, sid, headers=None, route="predict"):
    return post_multipart(client, f"/v1/services/{sid}/{route}",
                          {"images": (io.BytesIO(IMAGE), "i.png")}, {**AUTH, **(headers or {})})


def answered_by(resp) -> int:
    """The version that answered, from the header, checked against what the body shows."""
    version = int(resp.headers[PIN])
    body = resp.json() if callable(resp.json) else resp.json  # requests' or Flask's answer
    assert body["detection_classes"] == [LABELS[version - 1]], (version, body)
    return version


def within_binomial(count, n, p, sigmas=4.5):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_the_service_shows_its_versions_and_weights(client, split):
    svc = get_service(client, split["id"])
    assert svc["versions"] == [{"version": 1, "weight": 70}, {"version": 2, "weight": 30},
                               {"version": 3, "weight": 0}]
    assert svc["version"] == 1 and svc["pending_versions"] is None


def test_the_weights_hold_over_a_few_hundred_requests(client, split):
    traffic._rng.seed(20261204)  # the API runs in this process: its draws are repeatable
    n = 300
    counts = Counter(answered_by(resp) for resp in (ask(client, split["id"]) for _ in range(n)))
    assert within_binomial(counts[1], n, 0.7) and within_binomial(counts[2], n, 0.3), counts
    assert counts[3] == 0 and counts[1] + counts[2] == n  # weight 0: only when pinned


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_pinned_version_answers_every_request(client, split, version):
    for _ in range(10):
        resp = ask(client, split["id"], {PIN: str(version)})
        assert resp.status_code == 200, resp.json
        assert answered_by(resp) == version


def test_an_async_result_names_its_version(client, split):
    resp = ask(client, split["id"], {PIN: "2"}, route="predictions")
    assert resp.status_code == 202 and resp.headers[PIN] == "2"
    seen = task_outcome(client, resp.json["task_id"])
    assert seen["status"] == "SUCCESS", seen
    assert seen["result"]["version"] == 2 and seen["result"]["detection_classes"] == ["two"]


@pytest.mark.parametrize("pin, problem", [("9", "does not serve version 9"),
                                          ("two", "is not a version number")])
def test_pinning_a_version_not_served_is_a_400_naming_those_served(client, split, pin, problem):
    for route in ("predict", "predictions"):
        resp = ask(client, split["id"], {PIN: pin}, route=route)
        assert resp.status_code == 400, resp.json
        assert problem in resp.json["error"]["message"]
        assert "1, 2, 3" in resp.json["error"]["fields"][PIN][0]
        assert PIN not in resp.headers  # no version was chosen


def test_an_error_after_the_choice_names_the_version(client, split):
    resp = post_multipart(client, f"/v1/services/{split['id']}/predict",
                          {"images": (io.BytesIO(b"not an image"), "i.png")}, {**AUTH, PIN: "3"})
    assert resp.status_code == 400 and resp.headers[PIN] == "3"


def test_monitoring_counts_per_version(client, split):
    time.sleep(1.0)  # the counts of earlier requests are written (within a second, counters.py)
    before = client.get(f"/v1/services/{split['id']}/monitoring", headers=AUTH).json
    had = {v["version"]: v["requests"] for v in before["versions"]}
    for version in (1, 3, 3):
        assert ask(client, split["id"], {PIN: str(version)}).status_code == 200

    def counted():
        now = client.get(f"/v1/services/{split['id']}/monitoring", headers=AUTH).json
        seen = {v["version"]: v["requests"] for v in now["versions"]}
        return seen.get(1, 0) - had.get(1, 0) == 1 and seen.get(3, 0) - had.get(3, 0) == 2 and now

    url = f"/v1/services/{split['id']}/monitoring"
    now = wait_for(counted, 10, 0.1, what=lambda: f"the per-version counts (had {had}, now "
                   f"{client.get(url, headers=AUTH).json['versions']})")
    assert sum(v["requests"] for v in now["versions"]) <= now["requests"]
    per_minute = Counter()
    for point in now["series"]:
        per_minute.update({v["version"]: v["requests"] for v in point["versions"]})
    assert per_minute == {v["version"]: v["requests"] for v in now["versions"]}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'detserve_version_requests_total{{service="{split["id"]}",version="3"}}' in metrics


def test_a_switch_under_load_drops_nothing(client, live_url, numbers):
    # given a Running service on version 1 alone
    created = deploy(client, MODEL, 1)
    sid = created.json["id"]
    wait_status(client, sid, "Running")
    # and callers sending predictions over HTTP without pause, both routes (bounded: 150
    # requests each, 60 s in all)
    answers, tasks, errors = [], [], []
    stop, lock, deadline = threading.Event(), threading.Lock(), time.monotonic() + 60

    def caller(route):
        session = requests.Session()
        for _ in range(150):
            if stop.is_set() or time.monotonic() > deadline:
                return
            sent = time.monotonic()
            try:
                resp = session.post(f"{live_url}/v1/services/{sid}/{route}", headers=AUTH,
                                    files={"images": ("i.png", IMAGE, "image/png")}, timeout=30)
            except requests.RequestException as exc:
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                (answers if route == "predict" else tasks).append((sent, resp))

    threads = [threading.Thread(target=caller, args=(route,))
               for route in ("predict", "predict", "predict", "predictions")]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    # when its versions change to 2 and 3 while the load runs
    asked = time.monotonic()
    resp = client.patch(f"/v1/services/{sid}", json={"versions": [
        {"version": 2, "weight": 50}, {"version": 3, "weight": 50}]}, headers=AUTH)
    assert resp.status_code == 200, resp.json
    # (the answer shows the old versions loading the new ones, unless the worker was quicker;
    # that they never serve before they are loaded: tests/unit/test_rollout.py)
    assert (resp.json["versions"] == [{"version": 1, "weight": 100}]
            and resp.json["pending_versions"]["state"] == "loading") or (
        resp.json["pending_versions"] is None and resp.json["version"] == 2), resp.json
    # then the service switches once a worker has loaded them, without leaving Running
    switched = wait_for(lambda: (lambda s: s["pending_versions"] is None and s)(
        get_service(client, sid)), 60, 0.05, what="the switch")
    seen_switched = time.monotonic()
    assert switched["versions"] == [{"version": 2, "weight": 50}, {"version": 3, "weight": 50}]
    assert switched["status"] == "Running" and switched["version"] == 2
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(90)
    # and every request was answered, by version 1 until the switch and by 2 or 3 after it
    assert not errors, errors[:3]
    assert answers and all(r.status_code == 200 for _, r in answers), Counter(
        r.status_code for _, r in answers)
    by = [(sent, answered_by(r)) for sent, r in answers]
    assert {v for sent, v in by if sent < asked} == {1}
    assert {v for sent, v in by if sent > seen_switched} <= {2, 3}
    assert {v for sent, v in by if sent > seen_switched}, "no request after the switch"
    events = client.get(f"/v1/services/{sid}/events", headers=AUTH).json["events"]
    assert [e["to"] for e in events] == ["Deploying", "Running"]
    # and every async prediction accepted meanwhile ends with its version's answer
    assert tasks and all(r.status_code == 202 for _, r in tasks)
    for _, accepted in tasks:
        url = f"/v1/predictions/{accepted.json()['task_id']}"
        done = wait_for(lambda u=url: (lambda b: b["status"] in ("SUCCESS", "FAILURE") and b)(
            client.get(u, headers=AUTH).json), 60, 0.05, what="an async result")
        assert done["status"] == "SUCCESS", done
        assert done["result"]["version"] == int(accepted.headers[PIN])
        assert done["result"]["detection_classes"] == [LABELS[done["result"]["version"] - 1]]
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)


def test_a_version_that_cannot_load_leaves_the_old_ones_serving(client, numbers):
    created = deploy(client, MODEL, 2)
    sid = created.json["id"]
    wait_status(client, sid, "Running")
    resp = client.patch(f"/v1/services/{sid}", json={"versions": [
        {"version": 2, "weight": 90}, {"version": 4, "weight": 10}]}, headers=AUTH)
    assert resp.status_code == 200, resp.json
    failed = wait_for(lambda: (lambda s: (s["pending_versions"] or {}).get("state") == "failed"
                                and s)(get_service(client, sid)), 60, 0.1, what="the failure")
    assert failed["pending_versions"]["error"].startswith("version 4: ")
    assert "NoSuchDetector" in failed["pending_versions"]["error"]
    assert failed["status"] == "Running" and failed["versions"] == [{"version": 2, "weight": 100}]
    for _ in range(5):
        resp = ask(client, sid)
        assert resp.status_code == 200 and answered_by(resp) == 2
    # a later good change replaces the failed one
    resp = client.patch(f"/v1/services/{sid}", json={"versions": [{"version": 1, "weight": 100}]},
                        headers=AUTH)
    assert resp.status_code == 200 and (resp.json["pending_versions"] or {}).get("state") in (
        None, "loading")
    wait_for(lambda: get_service(client, sid)["versions"] == [{"version": 1, "weight": 100}], 60,
             0.1, what="the second change")
    assert answered_by(ask(client, sid)) == 1
    # stop and start: the service comes back serving its versions
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)
    client.post(f"/v1/services/{sid}/start", headers=AUTH)
    assert wait_status(client, sid, "Running")["versions"] == [{"version": 1, "weight": 100}]
    assert answered_by(ask(client, sid)) == 1
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)


BAD_SPLITS = [
    ([{"version": 1, "weight": 60}, {"version": 2, "weight": 30}], "must add up to 100"),
    ([{"version": v, "weight": 25} for v in (1, 2, 3, 1)], "give 1 to 3 versions, not 4"),
    ([], "give 1 to 3 versions, not 0"),
    ([{"version": 1, "weight": 50}, {"version": 1, "weight": 50}], "listed more than once"),
    ([{"version": 1, "weight": 101}], "from 0 to 100"),
    ([{"version": 1, "weight": -1}, {"version": 2, "weight": 101}], "from 0 to 100"),
    ([{"version": 1, "weight": "100"}], "integer"),
    ([{"version": 1, "weight": 99.5}, {"version": 2, "weight": 0.5}], "integer"),
    ([{"version": 1}], "required"),
    ([{"version": 0, "weight": 100}], "version number"),
    ([{"version": 99, "weight": 100}], "has no version 99; its versions are: 1, 2, 3, 4"),
    ("1:100", "list"),
    ({"version": 1, "weight": 100}, "list"),
]


@pytest.mark.parametrize("value, problem", BAD_SPLITS)
def test_a_bad_deploy_is_a_400_naming_versions_and_stores_nothing(client, numbers, value, problem):
    count = len(client.get("/v1/services", headers=AUTH).json["services"])
    resp = deploy(client, MODEL, None, versions=value)
    assert resp.status_code == 400, resp.json
    fields = resp.json["error"]["fields"]
    assert fields and all(k.startswith("versions") for k in fields), fields
    assert problem in resp.json["error"]["message"], resp.json
    assert len(client.get("/v1/services", headers=AUTH).json["services"]) == count


@pytest.mark.parametrize("value, problem", BAD_SPLITS)
def test_a_bad_change_is_a_400_naming_versions_and_stores_nothing(client, split, value, problem):
    before = get_service(client, split["id"])
    resp = client.patch(f"/v1/services/{split['id']}", headers=AUTH,
                        json={"versions": value, "traffic_limit": {"qps": 5}})
    assert resp.status_code == 400, resp.json
    fields = resp.json["error"]["fields"]
    assert fields and all(k.startswith("versions") for k in fields), fields
    assert problem in resp.json["error"]["message"], resp.json
    after = get_service(client, split["id"])
    for key in ("versions", "pending_versions", "version", "traffic_limit", "updated_at"):
        assert after[key] == before[key], key


def test_deploy_needs_a_version_and_a_version_must_be_among_the_versions(client, numbers):
    resp = deploy(client, MODEL, None)
    assert resp.status_code == 400 and "version" in resp.json["error"]["fields"]
    resp = deploy(client, MODEL, 3, versions=[{"version": 1, "weight": 100}])
    assert resp.status_code == 400
    assert "version 3 is not in versions" in resp.json["error"]["fields"]["version"][0]


def test_a_version_a_service_serves_cannot_be_deleted(client, split):
    resp = client.delete(f"/v1/models/{MODEL}/versions/2", headers=AUTH)
    assert resp.status_code == 409 and "one of the versions of service" in resp.json["error"][
        "message"]


def test_usage_lists_the_workers_holding_any_of_its_versions(client, split):
    def listed():
        workers = client.get(f"/v1/services/{split['id']}/usage", headers=AUTH).json["workers"]
        return workers and workers

    workers = wait_for(listed, 15, 0.2, what="the worker's usage report")
    assert workers[0]["flavor"] == "cpu" and workers[0]["model_bytes"] >= 0


def test_a_prediction_still_reads_the_database_once(stack, client, split, monkeypatch):
    # the weights come with the service's row (auth.HOT_QUERY): no second query per request
    from sqlalchemy import event

    from detserve_api.activity import Warnings

    monkeypatch.setattr(Warnings, "TTL", 3600.0)  # its own cached read, once a second, aside
    assert ask(client, split["id"]).status_code == 200
    statements: list[str] = []

    def seen(conn, cursor, statement, *_):
        statements.append(statement)

    # Store.first's AUTOCOMMIT proxy shares the engine's listeners: this one sees every statement
    event.listen(stack.store.engine, "before_cursor_execute", seen)
    try:
        for headers in ({}, {PIN: "3"}):
            statements.clear()
            assert ask(client, split["id"], headers).status_code == 200
            selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
            assert len(selects) == 1, statements
    finally:
        event.remove(stack.store.engine, "before_cursor_execute", seen)
