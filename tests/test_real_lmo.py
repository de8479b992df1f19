"""The real-photo check set (../shared/data/real_lmo): its files read with our readers, and its labels
are the projections of its meshes' boxes under its poses, so a model trained from a mesh is scored
on it in the mesh's own frame (docs/design.md §3.5). Never trained on: it is only read here.

CI has ../shared beside the checkout; elsewhere these tests skip, naming the folder they need.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import linemod_format as lf
import utils
from MeshPly import MeshPly

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real_lmo"
OBJECTS = {"ape": 0, "can": 3}  # the class ids of the labels: alphabetical over the 13 LINEMOD objects
N_FRAMES = 15

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"the real-frame set is not at {REAL}")


def frames(obj: str) -> list[str]:
    return lf.read_list(REAL / "LINEMOD" / obj / "all.txt", root=REAL)


@pytest.mark.parametrize("obj", OBJECTS)
def test_labels_are_the_projected_mesh_box_under_the_poses(obj):
    cfg = lf.read_data_cfg(REAL / f"{obj}.data", resolve_paths=True)
    K, width, height = utils.camera_from_data_cfg(cfg, REAL / f"{obj}.data")
    metres = MeshPly(cfg["mesh"])
    millimetres = MeshPly.from_millimetres(REAL / "meshes" / f"{obj}.ply")
    np.testing.assert_allclose(metres.vertices, millimetres.vertices, atol=1e-6)  # one object frame
    assert float(cfg["diam"]) == pytest.approx(utils.mesh_diameter(metres.vertices), rel=1e-3)
    corners = utils.box_corners(millimetres.vertices)  # (8, 3) metres, design §9.2 order
    poses = json.loads((REAL / "LINEMOD" / obj / "gt_poses.json").read_text())
    images = frames(obj)
    assert len(images) == N_FRAMES and (width, height) == (640, 640 * 3 // 4)
    for image in images:
        pose = poses[Path(image).stem]
        (row,) = lf.read_label_rows(lf.label_path(image))
        assert int(row[0]) == OBJECTS[obj]
        expect = utils.label_from_pose(corners, np.array(pose["R"]), np.array(pose["t_m"]), K, OBJECTS[obj])
        # labels hold 6 decimals of a 640 x 480 normalisation: 0.0005 px at most
        np.testing.assert_allclose(row[1:19] * np.tile([width, height], 9), expect[1:19] * np.tile([width, height], 9),
                                   atol=0.001)


@pytest.mark.parametrize("obj", OBJECTS)
def test_valid_scores_the_real_frames_and_the_report_reads_its_files(obj, golden_weights, tmp_path, monkeypatch):
    """The real `.data` files score with valid.py as they are (run from their folder, as the README
    says), and tools/real_frame_report.py gives valid.py's own accuracies with their intervals."""
    import valid
    from tools import real_frame_report

    out = tmp_path / obj
    monkeypatch.chdir(REAL)  # the .data paths are relative to its folder
    before = sorted(p for p in REAL.rglob("*"))
    summary = valid.main(valid.get_args_parser().parse_args([
        "--datacfg", f"{obj}.data", "--modelcfg", str(ROOT / "cfg" / "yolo-lite-trial3-pose.cfg"),
        "--weightfile", str(golden_weights), "--test-size", "416", "--json", str(out / "valid.json"),
        "--save-predictions", str(out), "--quiet"]))
    assert sorted(p for p in REAL.rglob("*")) == before  # nothing written beside the frames
    scored = json.loads((out / "valid.json").read_text())["objects"][0]
    assert scored["n"] == N_FRAMES and scored["object"] == obj and scored["n_failed"] <= N_FRAMES
    assert summary is not None
    (row,) = real_frame_report.main([str(out / "valid.json"), "--json", str(tmp_path / "table.json")])
    assert row["object"] == obj and row["n"] == N_FRAMES
    for t in real_frame_report.PX_THRESHOLDS:  # valid.py divides by n + 1e-5 (design §9.4)
        assert row[f"acc_{t}px"] == pytest.approx(scored[f"acc_2d_{t}px"], abs=1e-3)
    assert row["acc_add"] == pytest.approx(scored["acc_add"], abs=1e-3)
    assert row["mean_err_2d"] == pytest.approx(scored["mean_err_2d"], rel=1e-9)
    assert json.loads((tmp_path / "table.json").read_text()) == [row]
