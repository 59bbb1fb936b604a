"""The decoder registry and the CenterFace and PP-PicoDet heads on known outputs."""

from __future__ import annotations

import numpy as np
import pytest

from detserve.processing import decoders
from detserve.processing.options import AnswerOptions
from detserve.processing.postprocess import decode, match_outputs
from heads_data import centerface_outputs, picodet_outputs


def _shapes(named: list[tuple[str, np.ndarray]]) -> list[tuple[str, list[int]]]:
    return [(n, list(v.shape)) for n, v in named]


def test_registry_has_the_builtins_and_names_them_for_an_unknown():
    assert {"yolo", "boxes", "centerface", "picodet"} <= set(decoders.available())
    with pytest.raises(ValueError, match="unknown decoder 'ssd': installed decoders are .*picodet"):
        decoders.get("ssd")


def test_centerface_decodes_at_stride_4_with_nms():
    maps = list(centerface_outputs().items())
    spec = {"decoder": "centerface", **match_outputs(_shapes(maps), "centerface", None)}
    raw = [dict(maps)[n] for n in spec["outputs"]]
    boxes, scores, classes = decode(raw, spec, (64, 64))
    assert np.allclose(boxes, [[30, 15, 42, 31], [8, 48, 12, 52]])
    assert scores == pytest.approx([0.9, 0.5]) and classes.tolist() == [0, 0]
    # the request's threshold reaches the head: at 0.55 the small face goes
    assert len(decode(raw, spec, (64, 64), AnswerOptions(score_threshold=0.55))[0]) == 1


def test_centerface_options_and_missing_maps():
    maps = _shapes(list(centerface_outputs().items()))
    named = match_outputs(list(reversed(maps)), "centerface", None,
                          {"heatmap": "heatmap", "scale": "scale", "offset": "offset", "stride": 8})
    assert named["outputs"] == ["heatmap", "scale", "offset"] and named["stride"] == 8
    with pytest.raises(ValueError, match="expects a \\[1, 1, H/4, W/4\\] heatmap"):
        match_outputs(maps[:1], "centerface", None)
    with pytest.raises(ValueError, match="unknown centerface options"):
        match_outputs(maps, "centerface", None, {"strides": 4})


def test_picodet_integral_decoding_per_level():
    outs = picodet_outputs()
    spec = {"decoder": "picodet", **match_outputs(_shapes(outs), "picodet", 2)}
    assert spec["outputs"][:2] == ["scores0", "boxes0"] and spec["reg_max"] == 7
    raw = [dict(outs)[n] for n in spec["outputs"]]
    boxes, scores, classes = decode(raw, spec, (64, 64))
    assert np.allclose(boxes, [[0, 4, 28, 36], [32, 32, 64, 64]], atol=1e-4)
    assert scores == pytest.approx([0.8, 0.7]) and classes.tolist() == [1, 0]
    kept = decode(raw, spec, (64, 64), AnswerOptions(classes=["a"]), ["a", "b"])
    assert kept[2].tolist() == [0]


def test_picodet_refuses_what_it_cannot_pair():
    shapes = _shapes(picodet_outputs())
    with pytest.raises(ValueError, match="3 levels"):
        match_outputs(shapes, "picodet", 2, {"strides": [8, 16, 32]})
    with pytest.raises(ValueError, match="reg_max 5"):
        match_outputs(shapes, "picodet", 2, {"reg_max": 5})
    with pytest.raises(ValueError, match="per level"):
        match_outputs(shapes[:-1], "picodet", 2)


def test_builtins_are_declared_as_entry_points():
    # the built-ins are found the way a third party's decoder is: through the installed entry points
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][decoders.GROUP]
    assert set(declared) == {"yolo", "boxes", "centerface", "picodet"}
    assert set(declared) <= set(decoders.available())


def test_picodet_scores_must_have_the_labels_classes():
    with pytest.raises(ValueError, match="has 3 classes"):
        match_outputs(_shapes(picodet_outputs()), "picodet", 3)


def test_picodet_anchor_counts_must_fit_the_input_size_and_strides():
    shapes = _shapes(picodet_outputs())  # 64, 16, 4, 1 anchors: a 64x64 input at strides 8..64
    assert match_outputs(shapes, "picodet", 2, None, (64, 64))["strides"] == [8, 16, 32, 64]
    assert match_outputs(shapes, "picodet", 2, None, (57, 60))["strides"] == [8, 16, 32, 64]
    with pytest.raises(ValueError, match=r"96x96 input .* \[144, 36, 9, 4\] anchors .*"
                                         r"12x12=144 at stride 8.* have \[64, 16, 4, 1\]"):
        match_outputs(shapes, "picodet", 2, None, (96, 96))
    with pytest.raises(ValueError, match=r"\[256, 64, 16, 4\] anchors"):
        match_outputs(shapes, "picodet", 2, {"strides": [4, 8, 16, 32]}, (64, 64))
