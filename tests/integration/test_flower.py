"""`detserve flower`: Flower on the Celery queues, behind basic auth (user admin, the admin token)."""

from __future__ import annotations

import socket

import requests

from support import ADMIN, free_port, start_component, wait_for


def test_flower_needs_basic_auth_and_sees_the_workers(settings):
    port = free_port()
    proc = start_component(settings, "flower", "flower", "--port", str(port))
    try:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return requests.get(url, timeout=2).status_code in (200, 401)
            except requests.RequestException:
                return False

        wait_for(answers, 60, 0.3, what=lambda: f"flower to answer\n{proc.tail()}")
        assert requests.get(url, timeout=5).status_code == 401
        assert requests.get(url, auth=("admin", "wrong"), timeout=5).status_code == 401
        page = requests.get(f"{url}/workers", auth=("admin", ADMIN), timeout=5)
        assert page.status_code == 200 and "Flower" in page.text
        # the stack's CPU worker and scheduler, by their node names, as Flower's API lists them
        host = socket.gethostname()
        wanted = {f"cpu@{host}", f"scheduler@{host}"}
        seen: set[str] = set()

        def lists_them() -> bool:
            resp = requests.get(f"{url}/api/workers", params={"refresh": "1"}, auth=("admin", ADMIN),
                                timeout=30)
            seen.update(resp.json() if resp.status_code == 200 else {})
            return wanted <= seen

        wait_for(lists_them, 90, 1.0, what=lambda: f"flower to list {wanted} (it lists {seen})")
        assert requests.get(f"{url}/api/workers", timeout=5).status_code == 401
    finally:
        proc.stop()
