"""The one error renderer: an outage of ours is 503 with Retry-After; a bug stays a 500."""

from __future__ import annotations

import sqlite3

import kombu.exceptions
import pytest
import redis
import sqlalchemy.exc
from flask import Flask

from detserve.errors import PredictionTimeout, Unavailable
from detserve_api.errors import response_for


def _wrapped(orig: Exception, invalidated: bool = False) -> Exception:
    cls = sqlalchemy.exc.OperationalError if isinstance(orig, sqlite3.OperationalError) \
        else sqlalchemy.exc.DBAPIError
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize("exc,status,code", [
    (redis.ConnectionError("Connection refused"), 503, "unavailable"),
    (redis.TimeoutError("Timeout reading from 127.0.0.1:6379"), 503, "unavailable"),
    (kombu.exceptions.OperationalError("Error 111 connecting"), 503, "unavailable"),
    (sqlite3.OperationalError("database is locked"), 503, "unavailable"),
    (_wrapped(sqlite3.OperationalError("database is locked")), 503, "unavailable"),
    (_wrapped(RuntimeError("server closed the connection"), invalidated=True), 503, "unavailable"),
    (sqlalchemy.exc.TimeoutError("QueuePool limit reached"), 503, "unavailable"),
    (Unavailable("not ready: broker down"), 503, "not_ready"),
    (PredictionTimeout("no answer within 30 s"), 504, "prediction_timeout"),
    (sqlite3.OperationalError("no such table: services"), 500, "internal_error"),
    (_wrapped(sqlite3.OperationalError("no such column: x")), 500, "internal_error"),
    (KeyError("a bug"), 500, "internal_error"),
])
def test_outages_are_503_with_retry_after_and_bugs_stay_500(exc, status, code):
    with Flask(__name__).app_context():
        response = response_for(exc, "req-1")
    body = response.get_json()["error"]
    assert (response.status_code, body["code"], body["request_id"]) == (status, code, "req-1")
    assert ("Retry-After" in response.headers) == (status == 503)
