"""JSON bodies that parse but cannot be used (issue 12's "never a 500"): nesting past Python's
stack and strings with a lone UTF-16 surrogate are a 400 invalid_json on every JSON route."""

from __future__ import annotations

import pytest

from api_helpers import AUTH

BODIES = {
    # deeper than Python's recursion limit, within the JSON routes' body limit (16 KB)
    "deep-array": b"[" * 5_000 + b"]" * 5_000,
    "deep-object": b'{"a":' * 2_200 + b"1" + b"}" * 2_200,
    "lone-surrogate-value": b'{"model": "\\ud800", "version": 1, "flavor": "cpu"}',
    "lone-surrogate-name": b'{"model": "m", "version": 1, "flavor": "cpu", "name": "a\\udfffb"}',
    "lone-surrogate-key": b'{"\\udc00": 1, "model": "m", "version": 1, "flavor": "cpu"}',
}
ROUTES = [("post", "/v1/services"), ("patch", "/v1/services/nope")]


@pytest.mark.parametrize("name", sorted(BODIES))
@pytest.mark.parametrize("method,path", ROUTES)
def test_unusable_json_is_400(client, method, path, name):
    resp = getattr(client, method)(path, data=BODIES[name],
                                   headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
    assert resp.json["error"]["code"] == "invalid_json"


def test_a_surrogate_pair_is_a_character_and_welcome(client):
    # an emoji written as its UTF-16 pair: valid text, so the request goes on (the model is unknown)
    body = b'{"model": "\\ud83d\\ude00", "version": 1, "flavor": "cpu"}'
    resp = client.post("/v1/services", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 404, resp.json


def test_without_credentials_the_body_is_not_judged(client):
    resp = client.post("/v1/services", data=BODIES["deep-array"],
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 401
