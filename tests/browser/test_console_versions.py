"""A service's versions and traffic weights in the console, in Chromium: shown on the service,
changed with the form (the API's refusal shown as it is), the switch seen when it is done."""

from __future__ import annotations

from test_console import browser, page, pytestmark, sign_in  # noqa: F401 (fixtures)

from api_helpers import AUTH, deploy, upload, wait_status
from support import constant_model, yolo_v8_output


def model(k: int) -> bytes:
    out = yolo_v8_output([(32, 32, 20, 20)], [k], [0.9], nc=2)
    return constant_model(out, meta={"names": "{0: 'old', 1: 'new'}", "imgsz": "[64, 64]"})


def fill_row(pg, i, version, weight):
    row = pg.locator("#versions-table tbody tr").nth(i)
    row.locator(".v-version").fill(str(version))
    row.locator(".v-weight").fill(str(weight))


def test_the_weights_are_shown_and_changed_in_the_console(page, client):  # noqa: F811
    # given a Running service on version 1 of a model that has two versions
    assert upload(client, "console-split", model(0)).json["version"] == 1
    assert upload(client, "console-split", model(1)).json["version"] == 2
    created = deploy(client, "console-split", 1)
    sid = created.json["id"]
    wait_status(client, sid, "Running")
    sign_in(page)
    page.locator(f"#service-list tr[data-id='{sid}']").click()
    page.wait_for_function("document.querySelector('#versions-current').textContent === 'v1'")

    # when the user asks for 90/10 and the weights add up to 110
    page.click("#versions-edit")
    page.click("#versions-add")
    fill_row(page, 0, 1, 90)
    fill_row(page, 1, 2, 20)
    assert "add up to 110" in page.locator("#versions-sum").inner_text()
    page.click("#versions-save")
    # then the API's refusal is shown, naming the field, and nothing changes
    page.wait_for_function("document.querySelector('#versions-error').textContent.length > 0")
    assert "versions: the weights add up to 110" in page.locator("#versions-error").inner_text()
    assert client.get(f"/v1/services/{sid}", headers=AUTH).json["versions"] == [
        {"version": 1, "weight": 100}]

    # when the weights are corrected and saved
    fill_row(page, 1, 2, 10)
    page.click("#versions-save")
    # then the form closes, and once version 2 is loaded the service shows the split in its
    # detail and in the list
    page.locator("#versions-form").wait_for(state="hidden")
    page.wait_for_function(
        "document.querySelector('#versions-current').textContent === 'v1 90% · v2 10%'",
        timeout=60_000)
    row = page.locator(f"#service-list tr[data-id='{sid}']")
    page.wait_for_function(f"document.querySelector(\"#service-list tr[data-id='{sid}']\")"
                           ".textContent.includes('v1 90% · v2 10%')")
    assert "console-split" in row.inner_text()
    assert page.locator("#versions-pending").is_hidden()
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)
