"""The test area's score-threshold slider re-draws the boxes of one prediction, in Chromium."""

from __future__ import annotations

from test_console import browser, page, pytestmark, sign_in  # noqa: F401 (fixtures)

from api_helpers import running_service
from support import constant_model, image_bytes, yolo_v8_output

# four separate boxes of known scores on a 64x64 model
OUTPUT = yolo_v8_output([(12, 12, 8, 8), (40, 12, 8, 8), (12, 40, 8, 8), (40, 40, 8, 8)],
                        [0, 0, 1, 1], [0.9, 0.6, 0.4, 0.05], nc=2)


def set_slider(pg, value):
    pg.eval_on_selector("#threshold", "(el, v) => { el.value = v; "
                          "el.dispatchEvent(new Event('input', {bubbles: true})); }", value)


def test_slider_redraws_without_a_new_upload(page, client, tmp_path):  # noqa: F811
    # given a running service whose model answers four boxes of known scores
    model = constant_model(OUTPUT, meta={"names": "{0: 'cat', 1: 'dog'}", "imgsz": "[64, 64]"})
    svc = running_service(client, "slider", model)
    sign_in(page)
    page.locator("#app").wait_for(state="visible")
    page.locator(f"#service-list tr[data-id='{svc['id']}']").click()
    page.locator("#predict-btn:not([disabled])").wait_for()
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    path = tmp_path / "image.png"
    path.write_bytes(image_bytes(64, 64))

    # when one image is predicted at the default slider (0.25)
    page.set_input_files("#test-file", str(path))
    page.click("#predict-btn")
    page.wait_for_function("document.querySelectorAll('#boxes .box').length === 3")
    assert page.locator("#result-table tbody tr").count() == 3

    # then moving the slider re-draws the boxes and the table, with no new request
    for value, shown in (("0.5", 2), ("0.95", 0), ("0.01", 4), ("0.7", 1)):
        set_slider(page, value)
        assert page.locator("#boxes .box").count() == shown, value
        assert page.locator("#threshold-value").inner_text() == f"{float(value):.2f}"
    assert [c for c in page.locator("#boxes .box").evaluate_all(
        "bs => bs.map((b) => b.dataset.cls)")] == ["cat"]
    assert len([u for u in posts if u.endswith("/predict")]) == 1
