"""preflight.check_training_inputs: every input of a training run checked before the first batch."""
import shutil
from pathlib import Path

import numpy as np
import pytest

import linemod_format as lf
import preflight
from errors import InputError
from MeshPly import MeshPly, MeshUnitsWarning, write_ply
from tools.make_synthetic_linemod import generate

ROOT = Path(__file__).resolve().parents[1]
TRIAL3, TRIAL10 = ROOT / "cfg" / "yolo-lite-trial3-pose.cfg", ROOT / "cfg" / "yolo-lite-trial10-pose.cfg"
VOC3, VOC10 = ROOT / "weights" / "tiny-yolov2-trial3-voc.weights", ROOT / "weights" / "tiny-yolov2-trial10-voc.weights"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight") / "synth"
    generate(root, objects=1, images_per_object=6, seed=3, test_fraction=0.5, workers=1)
    return root


@pytest.fixture
def copy(synth, tmp_path):
    """A private copy of the synthetic set: (root, .data, train image paths, test image paths)."""
    root = tmp_path / "synth"
    shutil.copytree(synth, root)
    data = root / "cfg" / "obj00.data"
    lists = root / "LINEMOD" / "obj00"
    return root, data, lf.read_list(lists / "train.txt"), lf.read_list(lists / "test.txt")


def test_good_inputs_pass_and_report(copy):
    _, data, train, test = copy
    report = preflight.check_training_inputs(data, TRIAL3, VOC3)
    assert (report.n_train, report.n_valid) == (len(train), len(test))
    assert report.init_weights.floats_read == 542_064 and report.empty_labels == {"train": [], "valid": []}


def test_every_problem_is_listed_at_once(copy, tmp_path):
    """A run found a bad label, a missing mask or the wrong init weights only when it met them."""
    _, data, train, test = copy
    Path(lf.label_path(train[0])).write_text("0 " + " ".join(["320"] * 20) + "\n")  # pixels
    Path(lf.mask_path(train[1])).unlink()
    Path(lf.label_path(test[0])).write_text(Path(lf.label_path(test[0])).read_text() + "0 0.5\n")
    data.write_text(data.read_text() + "fx = -1\n")
    with pytest.raises(InputError) as err:
        preflight.check_training_inputs(data, TRIAL3, VOC10)  # trial 10's weights for trial 3
    lines = str(err.value).splitlines()
    assert lines[0] == "cannot start training:"
    text = str(err.value)
    assert f"{data}: fx = '-1'; expected a positive finite number" in text
    assert f"{lf.label_path(train[0])}:1: x0 = 320 is more than 10 image sizes outside the image" in text
    assert f"{lf.mask_path(train[1])}: mask not found (entry 2 of " in text
    assert f"{lf.label_path(test[0])}:2: expected 21 numbers per object, found 2" in text
    assert f"{VOC10}: " in text and "another network" in text
    assert len(lines) == 6


def test_empty_labels_and_millimetre_mesh_warn(copy):
    root, data, train, _ = copy
    Path(lf.label_path(train[0])).write_text("")
    Path(lf.label_path(train[2])).write_text("\n")
    mesh = root / "LINEMOD" / "obj00" / "obj00.ply"
    m = MeshPly(mesh)
    write_ply(mesh, m.vertices * 1000, m.indices)
    with pytest.warns(UserWarning) as record:
        report = preflight.check_training_inputs(data, TRIAL3, VOC3)
    messages = [str(w.message) for w in record]
    assert any(w.category is MeshUnitsWarning and str(mesh) in str(w.message) for w in record)
    assert any(f"2 of {len(train)} label files are empty, so 2 training images have no object to learn from "
               f"(first: {lf.label_path(train[0])})" in m for m in messages)
    assert len(report.empty_labels["train"]) == 2


def test_weights_options_and_teacher(copy, tmp_path):
    data = copy[1]
    cut = tmp_path / "backbone.weights"
    cut.write_bytes(VOC3.read_bytes()[:16 + 4 * 496])  # only layer 0
    with pytest.raises(InputError,
                       match=r"backbone\.weights: 496 floats after the header; the backbone of .* needs 542064"):
        preflight.check_training_inputs(data, TRIAL3, cut)
    report = preflight.check_training_inputs(data, TRIAL3, cut, allow_partial=True)
    assert report.init_weights.partial and report.init_weights.layers == [0]
    header_only = tmp_path / "teacher.weights"
    header_only.write_bytes(np.zeros(4, "<i4").tobytes())
    with pytest.raises(InputError, match=r"teacher\.weights: 0 floats after the header"):
        preflight.check_training_inputs(data, TRIAL3, VOC3, teacher_cfg=TRIAL10, teacher_weights=header_only)
    with pytest.raises(InputError, match="needs both a teacher cfg and teacher weights"):
        preflight.check_training_inputs(data, TRIAL3, VOC3, teacher_cfg=TRIAL10)
    with pytest.raises(InputError, match=r"nope: background folder not found"):
        preflight.check_training_inputs(data, TRIAL3, None, bg_dir=tmp_path / "nope")


def test_a_missing_image_is_reported_alone(copy):
    """Its label and mask paths derive from where the list placed it: one line, not three."""
    _, data, train, _ = copy
    Path(train[2]).unlink()
    with pytest.raises(InputError) as err:
        preflight.check_training_inputs(data, TRIAL3, None)
    text = str(err.value)
    assert "image not found (entry 3 of " in text
    assert "label file not found" not in text and "mask not found" not in text
