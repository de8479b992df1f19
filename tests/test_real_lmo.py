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

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_lmo"
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
