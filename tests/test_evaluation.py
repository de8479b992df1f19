"""evaluation.py, the library behind valid.py and valid_multi.py: the scripts are thin and re-export it,
and no library module imports a script. The scores themselves are tested in tests/test_valid.py
(one object per image) and tests/test_multi.py (several, D63)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import evaluation
import linemod_format
import valid
from multi_obj_pose_estimation import valid_multi

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["EvalSetup", "load_eval_setup", "solve_pose", "pose_errors", "summarize",
                                  "accuracy_curves", "curves_figure", "plot_curves", "inference_net", "evaluate",
                                  "report", "_json_safe", "save_predictions", "mean_row", "print_table",
                                  "check_model_cfg", "check_weights", "load_model", "check_test_list", "log",
                                  "skipped_by_all", "RECORD_KEYS", "ERROR_KEYS", "POSE_KEYS", "DIAM_SOURCES",
                                  "REPORT_PX_THRESHOLDS"])
def test_valid_reexports_the_evaluation(name):
    assert getattr(valid, name) is getattr(evaluation, name)


def test_valid_multi_reexports_the_evaluation():
    import dataset

    assert valid_multi.evaluate_object is evaluation.evaluate_object
    assert valid_multi.load_objects is evaluation.load_objects
    assert valid_multi.OcclusionObject is evaluation.OcclusionObject
    assert valid_multi.make_test_loader is evaluation.occlusion_test_loader
    assert valid_multi.check_test_images is evaluation.check_occlusion_test_images
    assert valid_multi.OcclusionTestSet is dataset.OcclusionTestSet
    assert valid_multi.pick_box is evaluation.pick_box
    assert valid_multi.VALID_OBJECTS == evaluation.OCCLUSION_OBJECTS
    assert valid.append_csv is linemod_format.append_csv and valid.CSV_HEADER == linemod_format.METRICS_CSV_HEADER


def test_library_modules_import_no_script():
    """A library never imports a command-line script (valid.py, valid_multi.py, train.py, detect.py)."""
    code = ("import sys; import evaluation, engine, dataset, utils, linemod_format; "
            "print(sorted(m for m in ('valid', 'train', 'detect', 'multi_obj_pose_estimation.valid_multi') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_box_selection_is_refused():
    class Stub:
        num_keypoints, num_classes, num_anchors = 9, 3, 1

    obj = evaluation.OcclusionObject(0, None)
    with pytest.raises(ValueError, match=r"unknown box selection 'best'; expected one of \('class', 'original'\)"):
        evaluation.evaluate_object(Stub(), [], obj, select="best")
