"""evaluation.py, the library behind valid.py and valid_multi.py (no library imports a script:
tests/test_layers.py). The scores themselves are tested in tests/test_valid.py
(one object per image) and tests/test_multi.py (several, D63)."""
from __future__ import annotations


import pytest

import evaluation


def test_unknown_box_selection_is_refused():
    class Stub:
        num_keypoints, num_classes, num_anchors = 9, 3, 1

    obj = evaluation.OcclusionObject(0, None)
    with pytest.raises(ValueError, match=r"unknown box selection 'best'; expected one of \('class', 'original'\)"):
        evaluation.evaluate_object(Stub(), [], obj, select="best")
