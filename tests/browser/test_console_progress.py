"""The console's deploy progress bar in real Chromium: a GPU deploy whose worker reports its steps
through the same progress record a worker writes, and a failed build in the builder's words."""

from __future__ import annotations

import redis
from test_console import ARTIFACTS, browser, page, pytestmark, sign_in  # noqa: F401 (fixtures)

from api_helpers import AUTH, upload
from detserve.monitoring import heartbeats
from detserve.service import status
from detserve.service.demo import build_blob_detector
from detserve.service.progress import DeployProgress

WORKER = "gpu@browser-progress"


def test_the_bar_follows_a_deploy_and_shows_a_failed_build(page, client, stack, tmp_path):  # noqa: F811
    # given a gpu deploy that a worker has taken as far as half of its engine build
    r = redis.Redis.from_url(stack.settings.redis_url)
    heartbeats.beat(r, "gpu", WORKER)  # the flavor is offered; no process takes the deploy
    try:
        version = upload(client, "progress-gpu", build_blob_detector().SerializeToString()).json
        sid = client.post("/v1/services", json={"model": "progress-gpu", "version": version["version"],
                                                "flavor": "gpu"}, headers=AUTH).json["id"]
        worker = DeployProgress(r, sid)
        worker.taken()
        worker.enter("fetching", bytes_total=version["size_bytes"])
        worker.advance(1.0, bytes_done=version["size_bytes"])
        worker.enter("loading")
        worker.enter("building_engine", detail="fp16, batch 1/8/32")
        worker.advance(0.5)
        # when the user opens the service
        sign_in(page)
        row = page.locator(f"#service-list tr[data-id='{sid}']")
        row.click()
        # then the row and the service's page show the bar and the phase
        row.locator(".bar[role=progressbar]").wait_for()
        bar = page.locator("#deploy-progress .bar")
        bar.wait_for(state="visible")
        page.wait_for_function("document.querySelector('#deploy-progress .bar')"
                               ".getAttribute('aria-valuenow') === '55'")
        phase = page.locator("#deploy-phase").inner_text()
        assert phase.startswith("building TensorRT engine (fp16, batch 1/8/32), 55%")
        width = page.evaluate("document.querySelector('#deploy-progress .bar-fill')"
                              ".getBoundingClientRect().width / document.querySelector("
                              "'#deploy-progress .bar').getBoundingClientRect().width")
        assert abs(width - 0.55) < 0.05
        page.locator("#detail").screenshot(path=str(tmp_path / "deploy-progress.png"))
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#detail").screenshot(path=str(ARTIFACTS / "console-deploy-progress.png"))

        # and when the build fails, the step and the builder's words show, the bar in red
        error = worker.fail("TensorRT could not build an engine for this model: Error Code 10")
        status.transition(stack.store, sid, status.DEPLOYING, status.FAILED,
                          reason="deploy_failed", error=error)
        page.wait_for_function("document.querySelector('#deploy-phase').textContent.endsWith('failed')")
        assert page.locator("#deploy-progress .bar.failed").is_visible()
        assert "building TensorRT engine failed: TensorRT could not build" in \
            page.locator("#detail-status").inner_text()
        page.locator("#detail").screenshot(path=str(tmp_path / "deploy-failed.png"))
    finally:
        heartbeats.forget(r, "gpu", WORKER)
