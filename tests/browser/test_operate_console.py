"""The service page's operating parts in real headless Chromium: the stopping-soon banner and
Extend, resource-usage charts, and the Logs tab tailing live. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

import pytest
from test_console import ARTIFACTS, CHROMIUM, browser, page, sign_in  # noqa: F401  (fixtures)

from api_helpers import AUTH, predict, upload
from detserve.service.demo import build_blob_detector
from support import blobs_image, wait_for

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing")

IMAGE = blobs_image([("red", 30, 30, 90, 90), ("green", 180, 60, 240, 120)])


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_banner_extend_usage_and_live_logs(page, client):  # noqa: F811
    # given a version, deployed from the console with an idle stop of 5 minutes (under the ten
    # minutes' warning, so the service is stopping soon from the start)
    assert upload(client, "ops-blobs", build_blob_detector().SerializeToString()).status_code == 201
    sign_in(page)
    page.locator("#app").wait_for(state="visible")
    page.locator(".deploy-btn[data-model='ops-blobs']").first.click()
    page.locator("#deploy-dialog").wait_for(state="visible")
    page.check("#idle-enabled")
    page.fill("#idle-minutes", "0")
    page.click("#deploy-ok")
    assert "1 to 1440" in page.locator("#deploy-error").inner_text()
    page.fill("#idle-minutes", "5")
    page.click("#deploy-ok")
    page.locator("#deploy-dialog").wait_for(state="hidden")
    row = page.locator("#service-list tr.selected")
    row.locator(".status", has_text="Running").wait_for(timeout=60_000)
    sid = row.get_attribute("data-id")
    svc = client.get(f"/v1/services/{sid}", headers=AUTH).json
    assert svc["auto_stop"]["idle_minutes"] == 5 and svc["stopping_soon"] is True

    # then the banner says when it stops, and Extend pushes the fixed stop back
    banner = page.locator("#stopping-banner")
    banner.wait_for(state="visible")
    assert "idle stop" in banner.inner_text()
    assert "5 min without a prediction" in page.locator("#detail-countdown").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#detail").screenshot(path=str(ARTIFACTS / "console-stopping-soon.png"))
    page.select_option("#extend-hours", "2")
    page.click("#extend-btn")
    wait_for(lambda: ts(client.get(f"/v1/services/{sid}", headers=AUTH).json["auto_stop"]["stop_at"])
             - ts(svc["auto_stop"]["stop_at"]) > 2 * 3600 - 5, 10, what="the extended stop")
    assert page.locator("#extend-error").inner_text() == ""

    # and the worker's usage is drawn as charts
    page.locator("#usage svg.chart").nth(1).wait_for(timeout=20_000)
    page.wait_for_function("""() => [...document.querySelectorAll('#usage polyline')]
        .some((p) => p.getAttribute('points').split(' ').length >= 2)""", timeout=20_000)
    assert "Model memory" in page.locator("#usage").inner_text()
    page.locator("#usage-panel").screenshot(path=str(ARTIFACTS / "console-usage.png"))

    # when a prediction is made, the Logs tab shows its lines from the API and the worker
    rid = f"browser-{time.time_ns()}"
    assert predict(client, sid, IMAGE, headers={**AUTH, "X-Request-Id": rid}).status_code == 200
    page.click("#detail-tabs .tab[data-tab=logs]")
    cells = page.locator("#log-table tbody tr", has_text=rid)
    wait_for(lambda: cells.count() >= 2, 15, what="both lines of the prediction")
    components = {cells.nth(i).locator("td").nth(1).inner_text() for i in range(cells.count())}
    assert components == {"api", "worker-cpu"}
    assert page.locator("#usage-panel").is_hidden()
    # and it tails: a later prediction appears with nothing clicked
    later = f"browser-later-{time.time_ns()}"
    assert predict(client, sid, IMAGE, headers={**AUTH, "X-Request-Id": later}).status_code == 200
    page.locator("#log-table tbody tr", has_text=later).first.wait_for(timeout=15_000)
    page.locator("#detail").screenshot(path=str(ARTIFACTS / "console-logs.png"))

    # the windows: 30 minutes still has it, a custom time in the future has nothing
    page.check("input[name=log-since][value='30m']")
    page.locator("#log-table tbody tr", has_text=rid).first.wait_for(timeout=10_000)
    page.check("input[name=log-since][value=custom]")
    future = (datetime.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    page.fill("#log-custom", future)
    page.dispatch_event("#log-custom", "change")
    page.locator("#log-table tbody", has_text="No log lines").wait_for(timeout=10_000)

    client.post(f"/v1/services/{sid}/stop", headers=AUTH)
