"""preflight.check_training_inputs: every input of a training run checked before the first batch."""
import shutil
from pathlib import Path

import numpy as np
import pytest

import hostile
import linemod_format as lf
import preflight
from errors import InputError
from MeshPly import MeshPly, MeshUnitsWarning, write_ply
from synthetic import generate

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


# --------------------------------------------------------------------------------------------
# issue 25: image headers, masks and the .data size; suspicious inputs warn; no-pose meshes refused
# --------------------------------------------------------------------------------------------

def test_image_headers_are_checked_against_the_data_file_and_the_masks(copy):
    """Each was trained on (or scored) without a word: a 1x1 image, a mask of another size that the
    fast recipe never compared, an EXIF-rotated image, a 16-bit image clipped to white, a FIFO."""
    _, data, train, test = copy
    hostile.rgb(train[0], size=(1, 1))
    hostile.rgb(lf.mask_path(train[1]), size=(8, 6))
    hostile.rotated_jpeg(train[2], size=(640, 480))
    hostile.png16(test[0], size=(640, 480))
    Path(test[1]).unlink()
    hostile.fifo(test[1])
    with pytest.raises(InputError) as err:
        preflight.check_training_inputs(data, TRIAL3, None)
    text = str(err.value)
    assert f"{train[0]}: image is 1x1, expected 640x480 (the width and height of {data})" in text
    assert f"{lf.mask_path(train[1])}: mask is 8x6, expected 640x480 (the size of its image {train[1]})" in text
    assert f"{train[2]}: image has EXIF orientation 6 (stored rotated or mirrored)" in text
    assert f"{test[0]}: image has 16 or 32 bits per sample" in text
    assert f"{test[1]}: image is not a regular file (a folder, FIFO or device) (entry 2 of " in text
    data.write_text(data.read_text() + "width = 320\n")  # .data says 320 wide; the images are 640
    hostile.rgb(train[0], size=(640, 480))
    with pytest.raises(InputError, match=rf"{train[0]}: image is 640x480, expected 320x480"):
        preflight.check_training_inputs(data, TRIAL3, None)


def test_legal_but_suspicious_inputs_warn_once_each(copy):
    root, data, train, _ = copy
    train_list = root / "LINEMOD" / "obj00" / "train.txt"
    train_list.write_text(train_list.read_text() * 2)  # every image twice
    label = Path(lf.label_path(train[0]))
    fields = label.read_text().split()
    fields[3] = "5.5"  # x1: 5 image widths to the right
    label.write_text(" ".join(fields) + "\n")
    data.write_text(data.read_text() + "fx = 1e12\n")
    mesh = root / "LINEMOD" / "obj00" / "obj00.ply"
    m = MeshPly(mesh)
    write_ply(mesh, m.vertices * [1, 1, 0], m.indices)  # flat: zero thickness along z
    with pytest.warns(UserWarning) as record:
        preflight.check_training_inputs(data, TRIAL3, None)
    text = "\n".join(str(w.message) for w in record)
    n = 2 * len(train)
    assert f"{train_list}: {len(train)} of {n} entries are listed more than once, so they are trained on more " \
           f"than once (first: " in text
    assert f"label files have a point more than 1 image size outside the image (first: {label})" in text
    assert f"{data}: fx = 1e+12 px gives a field of view of " in text and "real cameras have 1 to 170" in text
    assert f"{mesh}: the mesh is flat (zero extent along z)" in text


def test_a_mesh_without_a_pose_and_all_zero_rows_are_refused(copy):
    """Identical vertices made every pose a miss without naming the mesh; an all-zero label row made
    an image silently object-less (x0 = 0 is the empty-slot mark of the targets)."""
    root, data, _, test = copy
    mesh = root / "LINEMOD" / "obj00" / "obj00.ply"
    write_ply(mesh, np.full((4, 3), 0.05), np.array([[0, 1, 2]]))
    Path(lf.label_path(test[0])).write_text(" ".join(["0"] * 21) + "\n")
    with pytest.raises(InputError) as err:
        preflight.check_training_inputs(data, TRIAL3, None)
    text = str(err.value)
    assert f"{mesh}: the mesh's bounding box is 0 x 0 x 0 (m) over 4 vertices: a point or a line" in text
    assert f"{lf.label_path(test[0])}:1: x0 = 0, which marks an empty slot in the targets" in text
