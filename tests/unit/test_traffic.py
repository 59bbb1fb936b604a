"""The per-request choice of a version (service/traffic.py): weights, pins, what a split may be."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from detserve.errors import ValidationFailed
from detserve.service import traffic

SPLIT = [{"version": 3, "version_id": 30, "weight": 90},
         {"version": 4, "version_id": 40, "weight": 10}]


def within_binomial(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """True when `count` of `n` draws lies within `sigmas` standard deviations of n*p (a
    correct sampler fails this about once in 150,000 runs)."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("weights", [(90, 10), (50, 50), (70, 20, 10), (1, 99), (34, 33, 33)])
def test_weights_hold_within_a_binomial_bound(seed, weights):
    entries = [{"version": i + 1, "version_id": 100 + i, "weight": w}
               for i, w in enumerate(weights)]
    rng, n = random.Random(seed), 600
    counts = Counter(traffic.choose(entries, rng=rng)["version"] for _ in range(n))
    for i, w in enumerate(weights):
        assert within_binomial(counts[i + 1], n, w / 100), (weights, counts)


def test_a_weight_of_zero_gets_no_traffic_and_a_hundred_gets_all():
    entries = [{"version": 1, "version_id": 10, "weight": 0},
               {"version": 2, "version_id": 20, "weight": 100}]
    rng = random.Random(7)
    assert {traffic.choose(entries, rng=rng)["version"] for _ in range(500)} == {2}


def test_every_point_of_the_draw_maps_to_its_version():
    # the cumulative table, exhaustively: 90 of the 100 points go to v3, 10 to v4
    class Fixed(random.Random):
        def __init__(self, point):
            super().__init__()
            self.point = point

        def randrange(self, *_):  # type: ignore[override]
            return self.point

    counts = Counter(traffic.choose(SPLIT, rng=Fixed(p))["version"] for p in range(100))
    assert counts == {3: 90, 4: 10}


def test_a_pin_chooses_its_version_whatever_its_weight():
    entries = [*SPLIT, {"version": 5, "version_id": 50, "weight": 0}]
    assert traffic.choose(entries, "5")["version_id"] == 50
    assert traffic.choose(entries, " 4 ")["version_id"] == 40
    assert traffic.choose(entries, "")["version"] in (3, 4)  # an empty header pins nothing


@pytest.mark.parametrize("pin, problem", [("7", "does not serve version 7"),
                                          ("v3", "is not a version number"),
                                          ("3.0", "is not a version number"),
                                          ("-3", "is not a version number"),
                                          ("٣", "is not a version number"),
                                          # past Python's int() digit limit: still a 400
                                          ("9" * 5000, "is not a version number")])
def test_a_pin_of_a_version_not_served_is_a_400_naming_those_served(pin, problem):
    with pytest.raises(ValidationFailed) as caught:
        traffic.choose(SPLIT, pin)
    assert caught.value.status_code == 400
    assert problem in caught.value.message
    assert "3, 4" in caught.value.fields[traffic.PIN_HEADER][0]


def test_a_row_without_a_split_serves_its_one_version():
    assert traffic.served(None, 12, 2) == [{"version": 2, "version_id": 12, "weight": 100}]


def test_route_keeps_the_row_and_replaces_the_version():
    class Row:
        id, flavor, version_id, version, traffic = "s1", "cpu", 30, 3, SPLIT

    routed = traffic.route(Row(), "4")
    assert (routed.id, routed.flavor, routed.version_id, routed.version) == ("s1", "cpu", 40, 4)


def test_the_primary_is_the_highest_weight_and_the_first_of_a_tie():
    assert traffic.primary(SPLIT)["version"] == 3
    tie = [{"version": 8, "version_id": 1, "weight": 50}, {"version": 2, "version_id": 2,
                                                            "weight": 50}]
    assert traffic.primary(tie)["version"] == 8


@pytest.mark.parametrize("items, problem", [
    ([], "give 1 to 3 versions, not 0"),
    ([{"version": v, "weight": 25} for v in (1, 2, 3, 4)], "give 1 to 3 versions, not 4"),
    ([{"version": 1, "weight": 50}, {"version": 1, "weight": 50}], "version 1 is listed more"),
    ([{"version": 1, "weight": 50}, {"version": 2, "weight": 40}], "add up to 90; they must"),
    ([{"version": 1, "weight": 0}], "add up to 0; they must"),
])
def test_what_a_split_may_not_be(items, problem):
    assert problem in (traffic.split_problem(items) or "")


def test_good_splits():
    assert traffic.split_problem([{"version": 1, "weight": 100}]) is None
    assert traffic.split_problem([{"version": 1, "weight": 0}, {"version": 2, "weight": 100}]) is None
