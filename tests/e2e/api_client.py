"""Small HTTP helpers for tests that talk to a real detserve over the network."""

from __future__ import annotations

from typing import Any

import requests

from support import wait_for


class ApiClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.http.post(self.base + path, timeout=60, **kw)

    def service(self, service_id: str) -> dict[str, Any]:
        resp = self.get(f"/v1/services/{service_id}")
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]

    def wait_status(self, service_id: str, status: str, timeout: float = 90) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def reached() -> bool:
            last.update(self.service(service_id))
            return last["status"] == status

        wait_for(reached, timeout, 0.2, what=lambda: f"{service_id} {status} (last {last.get('status')})")
        return last
