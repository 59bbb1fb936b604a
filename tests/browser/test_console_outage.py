"""The console during an outage: a 503 shows "temporarily unavailable, retrying" and the request
is tried again until it succeeds (real Chromium, the API over HTTP, a Redis of the test's own)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from conftest import as_config
from detserve.config import Settings
from detserve.store import Store
from faultkit import PrivateRedis
from support import ADMIN

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing")


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, PrivateRedis]]:
    server = PrivateRedis(tmp_path)
    server.start()
    settings = Settings(data_dir=tmp_path, redis_url=server.url, admin_token=ADMIN).resolved()
    store = Store(settings.database_url)
    store.migrate()
    from detserve_api import create_app

    http = make_server("127.0.0.1", 0, create_app(as_config(settings), store=store), threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}", server
    finally:
        server.signal(signal.SIGCONT)
        http.shutdown()
        thread.join()
        server.stop()
        store.dispose()


def test_a_503_shows_retrying_and_the_request_succeeds_once_redis_is_back(served):
    from playwright.sync_api import sync_playwright

    url, redis_server = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.fill("#token", ADMIN)
            page.click("#signin")
            page.locator("#app").wait_for(state="visible")
            # when Redis hangs while the console asks for something that needs it
            redis_server.signal(signal.SIGSTOP)
            # (not awaited: evaluate would wait for the promise)
            page.evaluate("() => { window.outcome = null; api('/v1/flavors').then("
                          "() => { window.outcome = 'ok'; }, (e) => { window.outcome = e.message; }); }")
            # then the console says it is retrying, and succeeds once Redis answers again
            note = page.locator("#unavailable")
            note.wait_for(state="visible", timeout=20_000)
            assert "temporarily unavailable, retrying" in note.inner_text()
            redis_server.signal(signal.SIGCONT)
            page.wait_for_function("window.outcome !== null", timeout=30_000)
            assert page.evaluate("window.outcome") == "ok"
            note.wait_for(state="hidden", timeout=20_000)  # once the console's own polls retry too
        finally:
            browser.close()
