"""The web console in real headless Chromium (Debian's), driven by Playwright, against the API
served over HTTP with a real worker behind it."""

from __future__ import annotations

import io
import os
import re

import pytest
from PIL import Image

from api_helpers import AUTH, predict
from detserve.service.demo import build_blob_detector
from support import ADMIN, ROOT, blobs_image

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
            "--no-first-run", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture()
def page(browser, live_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.goto(live_url + "/")
    yield pg
    context.close()


def sign_in(page, token=ADMIN):
    page.fill("#token", token)
    page.click("#signin")


def test_wrong_token_shows_the_api_error(page):
    sign_in(page, "not-the-token")
    error = page.locator("#signin-error")
    error.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#signin-error').textContent.length > 0")
    assert "admin token" in error.inner_text()
    assert page.locator("#app").is_hidden()


def test_console_deploy_predict_stop(page, client, tmp_path):
    # given a signed-in user who uploads a version
    sign_in(page)
    page.locator("#app").wait_for(state="visible")
    page.evaluate("window.__noReload = true")
    model = tmp_path / "blobs.onnx"
    model.write_bytes(build_blob_detector().SerializeToString())
    page.click("#upload-panel summary")
    page.fill("#upload-name", "browser-blobs")
    page.set_input_files("#upload-file", str(model))
    page.click("#upload-btn")
    deploy_btn = page.locator(".deploy-btn[data-model='browser-blobs']").first
    deploy_btn.wait_for()
    services_before = len(client.get("/v1/services", headers=AUTH).json["services"])

    # when Custom 25 is asked for, the page refuses it and deploys nothing
    deploy_btn.click()
    page.locator("#deploy-dialog").wait_for(state="visible")
    assert page.locator("#compute-nodes").input_value() == "1"
    assert page.locator("#compute-nodes").is_disabled()
    assert page.locator("input[name=flavor][value=gpu]").is_disabled()
    page.check("input[name=autostop-preset][value=custom]")
    page.fill("#autostop-custom", "25")
    page.click("#deploy-ok")
    assert "1 to 24" in page.locator("#deploy-error").inner_text()
    assert len(client.get("/v1/services", headers=AUTH).json["services"]) == services_before

    # and Custom 3 deploys, going Running with no reload
    page.fill("#autostop-custom", "3")
    page.click("#deploy-ok")
    page.locator("#deploy-dialog").wait_for(state="hidden")
    assert "shown only now" in page.locator("#key-notice").inner_text()
    row = page.locator("#service-list tr.selected")
    row.locator(".status", has_text="Running").wait_for(timeout=60_000)
    assert page.evaluate("window.__noReload") is True
    service_id = row.get_attribute("data-id")
    svc = client.get(f"/v1/services/{service_id}", headers=AUTH).json
    assert svc["auto_stop"]["hours"] == 3 and svc["auto_stop"]["enabled"] is True

    # then an uploaded image is predicted and its boxes drawn where the API puts them
    image = blobs_image([("red", 30, 30, 90, 90), ("green", 180, 60, 240, 120),
                         ("blue", 100, 200, 160, 260)], 320, 300)
    path = tmp_path / "scene.png"
    path.write_bytes(image)
    page.set_input_files("#test-file", str(path))
    page.click("#predict-btn")
    page.locator("#boxes .box").first.wait_for()
    expected = predict(client, service_id, image).json
    drawn = page.evaluate("""() => {
        const img = document.querySelector('#test-image').getBoundingClientRect();
        const natural = document.querySelector('#test-image');
        const s = natural.naturalWidth / img.width;
        return [...document.querySelectorAll('#boxes .box')].map((b) => {
            const r = b.getBoundingClientRect();
            return {cls: b.dataset.cls, box: [(r.top - img.top) * s, (r.left - img.left) * s,
                                             (r.bottom - img.top) * s, (r.right - img.left) * s]};
        });
    }""")
    assert len(drawn) == len(expected["detection_boxes"]) > 0
    for got, box, cls in zip(drawn, expected["detection_boxes"], expected["detection_classes"], strict=True):
        assert got["cls"] == cls
        assert got["box"] == pytest.approx(box, abs=3.0)  # the border's width, in image pixels
    table = page.locator("#result-table")
    assert {"detection_classes", "detection_boxes [y_min, x_min, y_max, x_max]", "detection_scores"} == set(
        table.locator("th").all_inner_texts())
    assert table.locator("tbody tr").count() == len(expected["detection_classes"])
    assert "X-Service-Key" in page.locator("#snippet-curl").inner_text()
    assert "requests.post" in page.locator("#snippet-python").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#detail").screenshot(path=str(ARTIFACTS / "console-test-area.png"))

    # a GIF is refused with the API's own message
    gif = tmp_path / "anim.gif"
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, format="GIF")
    gif.write_bytes(buf.getvalue())
    page.set_input_files("#test-file", str(gif))
    page.click("#predict-btn")
    page.wait_for_function("document.querySelector('#predict-error').textContent.length > 0")
    assert "JPG, JPEG, BMP or PNG" in page.locator("#predict-error").inner_text()

    # stop: the row goes Stopped
    row.locator(".stop-btn").click()
    row.locator(".status", has_text="Stopped").wait_for(timeout=30_000)
    # the monitoring panel counts the console's own prediction (it refreshes every 1.5 s, and the
    # counts are written just after each answer)
    page.wait_for_function(
        "parseInt(document.querySelector('#monitoring-summary').textContent, 10) > 0", timeout=30_000)
    monitoring = page.locator("#monitoring-summary").inner_text()
    counted = re.match(r"(\d+) requests, (\d+) failures; latency p50 ([\d.]+) ms", monitoring)
    assert counted, monitoring
    assert int(counted.group(1)) >= 1 and float(counted.group(3)) > 0
