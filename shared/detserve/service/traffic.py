"""Several versions of a model in one service, with traffic weights (as SageMaker's production
variants or KServe's canary split).

A service row holds its split in `traffic`: [{"version", "version_id", "weight"}] with integer
weights adding up to 100 (null on rows older than versions: all traffic to `version_id`). Its
`version`/`version_id` stay the primary one, the highest weight (the first listed of a tie), so
everything that knew one version per service keeps its meaning.

Each prediction picks one entry, here and nowhere else (`route`): by weight, or the one the
caller pins with the X-Model-Version header (a version of weight 0 is served only when pinned,
for testing before it takes traffic). The answer names the version in the same header.

A change of versions on a Running service waits in `pending_traffic` until a worker has loaded
every version in it (rollout.py); the switch is one UPDATE of the row, so every prediction
after it reads the new split, and the old versions keep answering until then. Its `state` is
LOADING until then, or FAILED (with the `error`) when a version did not load; a service leaving
Running takes a change still loading as its split (`promoted`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from detserve.errors import ValidationFailed, quoted

PIN_HEADER = "X-Model-Version"  # on the request: the version to use; on the answer: the one used
MAX_VERSIONS = 3
TOTAL_WEIGHT = 100

LOADING, FAILED = "loading", "failed"  # the states of a change waiting in pending_traffic

Entry = dict[str, int]  # {"version", "version_id", "weight"}

_rng = random.Random()  # its methods are safe to share between threads


def served(traffic: Sequence[Mapping[str, Any]] | None, version_id: int, version: int
           ) -> list[Entry]:
    """The split a service row stands for (its one version when it has none stored)."""
    if not traffic:
        return [{"version": version, "version_id": version_id, "weight": TOTAL_WEIGHT}]
    return [{"version": int(e["version"]), "version_id": int(e["version_id"]),
             "weight": int(e["weight"])} for e in traffic]


def live(row: Any) -> list[Entry]:
    """The split a service row serves now (a change still loading not included)."""
    return served(row.traffic, row.version_id, row.version)


def asked(pending: Mapping[str, Any]) -> list[Entry]:
    """The split a pending change asks for (a stored change always lists its versions)."""
    return served(pending["versions"], 0, 0)


def live_ids(row: Any) -> set[int]:
    """The version ids a service row serves now."""
    return version_ids(live(row))


def served_ids(row: Any) -> set[int]:
    """The version ids a service row serves, or is loading to serve."""
    ids = live_ids(row)
    pending = row.pending_traffic
    if pending and pending.get("state") == LOADING:
        ids |= version_ids(asked(pending))
    return ids


def apply_fields(entries: Sequence[Entry]) -> dict[str, Any]:
    """The service columns that make `entries` its split."""
    first = primary(entries)
    return {"traffic": [dict(e) for e in entries], "version_id": first["version_id"],
            "version": first["version"]}


def promoted(row: Any) -> dict[str, Any]:
    """Fields for a service leaving Running: a change still loading becomes its split (its
    next deploy loads it), a failed one is forgotten (its error was shown)."""
    pending = row.pending_traffic
    if not pending:
        return {}
    if pending.get("state") == LOADING:
        return {**apply_fields(asked(pending)), "pending_traffic": None}
    return {"pending_traffic": None}


def primary(entries: Sequence[Entry]) -> Entry:
    """The entry the service's own `version` names: the highest weight, the first of a tie."""
    return max(entries, key=lambda e: e["weight"])  # max keeps the first of equals


def version_ids(entries: Iterable[Mapping[str, Any]] | None) -> set[int]:
    return {int(e["version_id"]) for e in entries or ()}


def split_problem(items: Sequence[Mapping[str, Any]]) -> str | None:
    """What is wrong with a requested split as a whole (each item already a version number and
    a weight 0..100), or None."""
    if not 1 <= len(items) <= MAX_VERSIONS:
        return f"give 1 to {MAX_VERSIONS} versions, not {len(items)}"
    numbers = [int(i["version"]) for i in items]
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        return (f"version {', '.join(map(str, repeated))} is listed more than once; list each "
                "version once")
    total = sum(int(i["weight"]) for i in items)
    if total != TOTAL_WEIGHT:
        return f"the weights add up to {total}; they must add up to {TOTAL_WEIGHT}"
    return None


def choose(entries: Sequence[Entry], pinned: str | None = None,
           rng: random.Random | None = None) -> Entry:
    """The entry that answers one request: the pinned version, or one drawn by weight.

    Raises:
        ValidationFailed: the pinned version is no number, or not one this service serves (the
            message lists those it does).
    """
    if pinned is not None and pinned.strip():
        return _pinned(entries, pinned.strip())
    if len(entries) == 1:
        return entries[0]
    point = (rng or _rng).randrange(TOTAL_WEIGHT)
    for entry in entries:
        point -= entry["weight"]
        if point < 0:
            return entry
    return entries[-1]  # unreachable while the weights add up to 100


def _pinned(entries: Sequence[Entry], pinned: str) -> Entry:
    numbers = ", ".join(str(e["version"]) for e in entries)
    accepted = f"one of the versions this service serves: {numbers}"
    if pinned.isascii() and pinned.isdigit() and len(pinned) <= 10:  # int() refuses huge ones
        for entry in entries:
            if entry["version"] == int(pinned):
                return entry
        problem = f"this service does not serve version {pinned}; send {accepted}"
    else:
        problem = f"{quoted(pinned, 20)} is not a version number; send {accepted}"
    raise ValidationFailed(f"invalid {PIN_HEADER} header ({problem})",
                           fields={PIN_HEADER: [problem]})


class Routed:
    """A service's hot row (auth.HOT_QUERY) as one request sees it: `version_id` and `version`
    are those of the version chosen for it; every other attribute is the row's."""

    __slots__ = ("_row", "version_id", "version")

    def __init__(self, row: Any, entry: Entry) -> None:
        self._row, self.version_id, self.version = row, entry["version_id"], entry["version"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


def route(row: Any, pinned: str | None = None) -> Routed:
    """The hot row of a prediction's service with the version that answers it.

    Raises:
        ValidationFailed: a pinned version the service does not serve.
    """
    return Routed(row, choose(live(row), pinned))
