"""Edges of the PP-PicoDet and CenterFace heads that `make mutate` found untested: option checks,
output order, a score at the threshold, NMS, large logits."""

from __future__ import annotations

import numpy as np
import pytest

from detserve.processing.options import AnswerOptions
from detserve.processing.postprocess import decode, match_outputs
from heads_data import centerface_outputs, picodet_outputs

PICODET_BOXES = [[0, 4, 28, 36], [32, 32, 64, 64]]


def _shapes(named: list[tuple[str, np.ndarray]]) -> list[tuple[str, list[int]]]:
    return [(n, list(v.shape)) for n, v in named]


def picodet(outs: list[tuple[str, np.ndarray]], options: AnswerOptions | None = None,
            num_classes: int | None = 2) -> tuple[np.ndarray, ...]:
    spec = {"decoder": "picodet", **match_outputs(_shapes(outs), "picodet", num_classes)}
    return decode([dict(outs)[n] for n in spec["outputs"]], spec, (64, 64), options)


def test_picodet_regressions_with_large_logits_decode_the_same():
    # the integral's softmax subtracts each row's largest logit: exp(100) alone would overflow
    outs = [(n, v * 5 if n.startswith("boxes") else v) for n, v in picodet_outputs()]
    boxes, _, _ = picodet(outs)
    assert np.allclose(boxes, PICODET_BOXES, atol=1e-4)


def test_picodet_pairs_scores_and_regressions_in_either_order():
    listed_last = list(reversed(picodet_outputs()))  # each level's regression before its scores
    assert np.allclose(picodet(listed_last)[0], PICODET_BOXES, atol=1e-4)
    # with no labels to tell them apart, the first of a pair is the scores
    assert match_outputs(_shapes(picodet_outputs()), "picodet", None)["outputs"][:2] == ["scores0", "boxes0"]


def test_picodet_keeps_a_score_at_the_threshold_and_suppresses_an_overlap():
    outs = dict(picodet_outputs())
    scores, regs = outs["scores0"], outs["boxes0"]
    scores[0, 9, 1] = 0.75
    scores[0, 10, 1] = 0.5  # the next cell to the right, the same sides: IoU 0.56 with cell 9's
    regs[0, 10] = regs[0, 9]
    boxes, found, classes = picodet(list(outs.items()), AnswerOptions(score_threshold=0.5))
    assert np.allclose(boxes, PICODET_BOXES, atol=1e-4) and found.tolist() == pytest.approx([0.75, 0.7])
    assert len(picodet(list(outs.items()), AnswerOptions(score_threshold=0.75))[0]) == 1


def test_picodet_ignores_outputs_that_are_no_level():
    outs = picodet_outputs()
    shapes = _shapes(outs) + [("count", [1, 4])]
    plain = match_outputs(_shapes(outs), "picodet", 2)["outputs"]
    assert match_outputs(shapes, "picodet", 2)["outputs"] == plain


@pytest.mark.parametrize("strides", [[8, 16, 32, 0], [8, 16, 32, -64], [8, 16, 32, True], [8.0, 16, 32, 64],
                                     "8,16,32,64", []])
def test_picodet_strides_must_be_positive_integers(strides):
    with pytest.raises(ValueError, match="strides is a list of positive integers"):
        match_outputs(_shapes(picodet_outputs()), "picodet", 2, {"strides": strides})


def test_centerface_stride_is_an_integer_from_1_to_64():
    maps = _shapes(list(centerface_outputs().items()))
    assert match_outputs(maps, "centerface", None, {"stride": 1})["stride"] == 1
    assert match_outputs(maps, "centerface", None, {"stride": 64})["stride"] == 64
    for bad in (0, 65, 4.0, True, "4"):
        with pytest.raises(ValueError, match="stride is an integer 1..64"):
            match_outputs(maps, "centerface", None, {"stride": bad})


def test_centerface_keeps_a_score_at_the_threshold():
    maps = list(centerface_outputs().items())
    spec = {"decoder": "centerface", **match_outputs(_shapes(maps), "centerface", None)}
    raw = [dict(maps)[n] for n in spec["outputs"]]
    _, scores, _ = decode(raw, spec, (64, 64), AnswerOptions(score_threshold=0.5))
    assert scores.tolist() == [np.float32(0.9), np.float32(0.5)]


def test_a_mismatch_lists_the_models_outputs():
    with pytest.raises(ValueError, match=r"the model's outputs are 'x' \[1, 2\], 'y' \['N', 6, 7\]$"):
        match_outputs([("x", [1, 2]), ("y", ["N", 6, 7])], "boxes", None)
    with pytest.raises(ValueError, match="the model's outputs are none$"):
        match_outputs([], "boxes", None)


def test_a_decoder_that_fails_to_load_is_left_out_and_logged(monkeypatch, caplog):
    from importlib.metadata import EntryPoint

    from detserve.processing import decoders

    points = [EntryPoint("broken", "no_such_module_for_detserve:Head", decoders.GROUP),
              EntryPoint("yolo", "detserve.processing.heads.yolo:Yolo", decoders.GROUP)]
    monkeypatch.setattr(decoders, "entry_points", lambda group: points)
    decoders.available.cache_clear()
    try:
        assert set(decoders.available()) == {"yolo"}
        assert "decoder 'broken'" in caplog.text and "left out" in caplog.text
        # read once per process: a scan of the installed packages per prediction would cost
        assert decoders.available() is decoders.available()
    finally:
        decoders.available.cache_clear()


def test_picodet_takes_the_smallest_distribution_of_two_bins():
    shapes = [(f"{kind}{i}", [1, n, width]) for i, n in enumerate((64, 16, 4, 1))
              for kind, width in (("scores", 2), ("boxes", 8))]
    assert match_outputs(shapes, "picodet", 2)["reg_max"] == 1
    with pytest.raises(ValueError, match="reg_max 0"):
        match_outputs([(n, [1, s[1], 4 if n.startswith("boxes") else 2]) for n, s in shapes], "picodet", 2)
