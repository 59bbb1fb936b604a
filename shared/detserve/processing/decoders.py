"""The decoder registry: model heads found by name through the `detserve.decoders` entry point.

A package registers a decoder with, in its pyproject.toml,
`[project.entry-points."detserve.decoders"] myhead = "mypkg.heads:MyHead"`; the object loaded is
called with no arguments and must give a `Decoder`. detserve's own heads are registered the same
way; they are also listed here for an install whose metadata predates them (an old editable one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)
GROUP = "detserve.decoders"
Shape = Sequence[int | str | None]
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (K,4), scores (K,), classes (K,)

class Decoder(Protocol):
    """One kind of model head: which outputs it reads, and how they become boxes."""

    nms: bool  # whether detserve runs class-aware NMS (iou_threshold) on what decode returns

    def match(self, outputs: Sequence[tuple[str, Shape]], num_classes: int | None,
              options: dict[str, Any]) -> dict[str, Any]:
        """The output spec for a model (at upload): at least `outputs`, the names of the ONNX
        outputs decode reads, in its order; it is stored with the version and given to decode.

        Raises:
            ValueError: the outputs or options do not fit; the message says what would.
        """
        ...

    # A decoder whose outputs depend on the input size may also define
    # `check_input(self, outputs, spec, input_hw) -> None`, raising ValueError (saying what was
    # expected and what was found) when these outputs, with the spec `match` gave for them, cannot
    # fit a model of that (height, width) input. It is called at upload, so the mismatch is a 400
    # there, not wrong boxes at predict time; it is optional (not in this Protocol) so that
    # decoders written before it still load.

    def decode(self, raw: Sequence[np.ndarray], spec: dict[str, Any], input_hw: tuple[int, int],
               threshold: float) -> Decoded:
        """One image's outputs (batch of 1, in spec["outputs"] order) to x1, y1, x2, y2 boxes in
        model-input pixels, scores and class ids; at least those scoring `threshold`."""
        ...


@cache
def available() -> dict[str, Decoder]:
    """Every installed decoder by name: the built-ins are entry points like any other (pyproject.toml),
    so an install that predates one lacks it until `pip install -e .` runs again (make does)."""
    found: dict[str, Decoder] = {}
    for point in entry_points(group=GROUP):
        try:
            found.setdefault(point.name, point.load()())
        except Exception:  # one broken package must not take every other decoder down with it
            log.exception("decoder %r (%s) failed to load; it is left out", point.name, point.value)
    return found


def get(name: str) -> Decoder:
    """The decoder called `name`.

    Raises:
        ValueError: none is installed by that name (the message lists those that are).
    """
    decoders = available()
    if name not in decoders:
        raise ValueError(f"unknown decoder {name!r}: installed decoders are "
                         f"{', '.join(sorted(decoders))}")
    return decoders[name]


def describe(outputs: Sequence[tuple[str, Shape]]) -> str:
    return ", ".join(f"{n!r} {list(s)}" for n, s in outputs) or "none"
