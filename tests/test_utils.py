"""Geometry, decoding, confidence and metrics against docs/design.md and the original's golden outputs."""
import math
import re

import cv2
import numpy as np
import pytest
import torch

import utils
from errors import DataCfgError, MeshError
from linemod_format import DATA_CFG_DEFAULTS
from MeshPly import MeshPly
from tolerances import PNP_ATOL


@pytest.fixture(scope="module")
def ev(golden):
    return golden("evaluation")


@pytest.fixture(scope="module")
def mesh(golden_dir):
    return MeshPly(golden_dir / "synthetic_box.ply")


def _gt_points(ev):
    # labels pass through float32 before de-normalisation (design §9.1)
    return ev["label_rows"][:, 1:19].astype(np.float32).reshape(-1, 9, 2) * np.array([640, 480], np.float32)


def test_box_corners_order_and_homogeneous(ev, mesh):
    np.testing.assert_allclose(mesh.vertices, ev["vertices"], atol=1e-8)
    c = utils.get_3D_corners(np.vstack([mesh.vertices.T, np.ones((1, len(mesh.vertices)))]))  # (4, N), the original's
    np.testing.assert_allclose(c, ev["corners3D"], atol=1e-8)
    corners = utils.box_corners(mesh.vertices)
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    for i in range(8):  # index = 4*ix + 2*iy + iz, design §9.2
        expect = [hi[a] if (i >> (2 - a)) & 1 else lo[a] for a in range(3)]
        np.testing.assert_array_equal(corners[i], expect)
    np.testing.assert_array_equal(utils.pose_points3d(corners).astype(np.float32), ev["pnp_points3D"])


def test_camera_and_projection(ev):
    K = utils.get_camera_intrinsic()
    np.testing.assert_array_equal(K, ev["K"])
    pts = utils.pose_points3d(ev["corners3D"][:3].T)
    for R, t, row in zip(ev["R_true"], ev["t_true"], ev["label_rows"]):
        px = utils.keypoints_from_pose(ev["corners3D"][:3].T, R, t, K)
        # labels were written with %.6f of normalised values: 0.5e-6 * 640 px at most
        np.testing.assert_allclose(px / [640, 480], row[1:19].reshape(9, 2), atol=6e-7)
        T = np.hstack([R, t[:, None]])
        np.testing.assert_allclose(utils.compute_projection(pts.T, T, K).T, px, atol=1e-9)
        np.testing.assert_allclose(utils.compute_transformation(pts.T, T).T, pts @ R.T + t, atol=1e-12)


def test_label_row_layout():
    pts = np.array([[320, 240]] + [[100 + 10 * i, 50 + 20 * i] for i in range(8)], dtype=np.float64)
    row = utils.label_row(pts, class_id=3)
    assert row.shape == (21,) and row[0] == 3
    np.testing.assert_allclose(row[1:19].reshape(9, 2), pts / [640, 480])
    np.testing.assert_allclose(row[19:], [(320 - 100) / 640, (240 - 50) / 480])


def test_golden_decoding_trial3(golden):
    g = golden("yolo_lite_trial3")
    box = utils.get_region_boxes(torch.from_numpy(g["output"]), num_classes=1, num_keypoints=9)
    assert box.shape == (1, 21)
    np.testing.assert_allclose(box[0].double().numpy(), g["best_box"], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(box[0, :18].double().numpy().reshape(9, 2), g["best_points"], atol=1e-6)
    assert int(box[0, 20]) == int(g["best_cls_id"])


def test_decoding_formula_and_per_image_selection():
    torch.manual_seed(0)
    B, H, W = 3, 4, 5
    out = torch.randn(B, 20, H, W)
    out[:, 18] = -5.0
    cells = [(0, 1, 2), (1, 3, 4), (2, 0, 0)]
    for b, y, x in cells:
        out[b, 18, y, x] = 3.0 + b  # a different maximum in every image
    boxes = utils.get_region_boxes(out)
    for b, y, x in cells:
        o = out[b, :, y, x]
        xs = torch.cat([torch.sigmoid(o[:1]), o[2:18:2]]) + x
        ys = torch.cat([torch.sigmoid(o[1:2]), o[3:18:2]]) + y
        expect = torch.stack([xs / W, ys / H], dim=1).reshape(-1)
        torch.testing.assert_close(boxes[b, :18], expect)
        torch.testing.assert_close(boxes[b, 18], torch.sigmoid(o[18]))
        assert boxes[b, 19] == 1.0 and boxes[b, 20] == 0.0


def test_decoding_first_maximum_wins_and_nan_is_never_chosen():
    out = torch.zeros(1, 20, 3, 3)
    out[0, 18] = -1.0
    out[0, 18, 1, 2] = 2.0
    out[0, 18, 2, 0] = 2.0  # tie: the first in row-major order wins
    out[0, 18, 0, 0] = float("nan")
    box = utils.get_region_boxes(out)[0]
    np.testing.assert_allclose(box[0].item(), (0.5 + 2) / 3, rtol=1e-6)
    all_nan = torch.full((2, 20, 2, 2), float("nan"))
    assert torch.isnan(utils.get_region_boxes(all_nan)).all()


def test_decoding_multi_anchor_class_scores():
    A, C = 2, 3
    out = torch.zeros(1, A * (19 + C), 2, 2)
    out[0, 18] = -4
    out[0, 22 + 18] = -4
    out[0, 22 + 18, 1, 1] = 4  # anchor 1 at (1, 1)
    out[0, 22 + 19 + 2, 1, 1] = 5  # class 2
    box = utils.get_region_boxes(out, num_classes=C, num_anchors=A)[0]
    assert int(box[20]) == 2
    np.testing.assert_allclose(box[19].item(), torch.softmax(torch.tensor([0.0, 0.0, 5.0]), 0)[2].item(), rtol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        utils.decode_output(out, num_classes=1, num_anchors=1)


def _decoded_cell(out, b, y, x, a=0, per_anchor=20):
    """(9, 2) normalised points of one cell, by the design §4 formula written out."""
    H, W = out.shape[2:]
    o = out[b, a * per_anchor:(a + 1) * per_anchor, y, x].double()
    xs = torch.cat([torch.sigmoid(o[:1]), o[2:18:2]]) + x
    ys = torch.cat([torch.sigmoid(o[1:2]), o[3:18:2]]) + y
    return torch.stack([xs / W, ys / H], dim=1)


@pytest.mark.parametrize("best", [(2, 2), (0, 0), (4, 3)])  # inside, a corner of the grid, an edge
def test_vote_rule_is_the_confidence_weighted_mean_of_the_3x3_corners(best):
    torch.manual_seed(1)
    H, W = 5, 4
    out = torch.randn(1, 20, H, W)
    out[0, 18] = torch.randn(H, W) - 3.0  # every other cell well below the chosen one
    by, bx = best[0] % H, best[1] % W
    out[0, 18, by, bx] = 4.0
    box = utils.get_region_boxes(out, rule="vote")[0].double()
    cells = [(y, x) for y in range(by - 1, by + 2) for x in range(bx - 1, bx + 2) if 0 <= y < H and 0 <= x < W]
    w = torch.tensor([torch.sigmoid(out[0, 18, y, x]).item() for y, x in cells], dtype=torch.float64)
    pts = torch.stack([_decoded_cell(out, 0, y, x) for y, x in cells])  # (M, 9, 2)
    expect = (w[:, None, None] * pts).sum(0) / w.sum()
    own = _decoded_cell(out, 0, by, bx)
    torch.testing.assert_close(box[:2], own[0], atol=1e-6, rtol=1e-6)  # the centroid is the cell's own
    torch.testing.assert_close(box[2:18].reshape(8, 2), expect[1:], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(box[18], torch.sigmoid(out[0, 18, by, bx]).double())
    # the original rule is unchanged: the chosen cell's own 9 points
    torch.testing.assert_close(utils.get_region_boxes(out, rule="max")[0, :18].double(), own.reshape(-1),
                               atol=1e-6, rtol=1e-6)
    assert len(cells) == {(2, 2): 9, (0, 0): 4, (4, 3): 4}[best]


def test_vote_rule_per_image_skips_non_finite_neighbours_and_rejects_unknown_rules():
    out = torch.zeros(2, 20, 3, 3)
    out[:, 18] = -2.0
    out[0, 18, 1, 1], out[1, 18, 0, 2] = 3.0, 3.0
    out[0, 2:18, 0, 0] = float("nan")  # a neighbour with NaN corners takes no part
    boxes = utils.get_region_boxes(out, rule="vote")
    assert torch.isfinite(boxes).all()
    for b, (y, x) in enumerate([(1, 1), (0, 2)]):
        cells = [(j, i) for j in range(y - 1, y + 2) for i in range(x - 1, x + 2)
                 if 0 <= j < 3 and 0 <= i < 3 and not (b == 0 and (j, i) == (0, 0))]
        w = torch.tensor([torch.sigmoid(out[b, 18, j, i]).item() for j, i in cells], dtype=torch.float64)
        pts = torch.stack([_decoded_cell(out, b, j, i) for j, i in cells])
        expect = (w[:, None, None] * pts).sum(0) / w.sum()
        torch.testing.assert_close(boxes[b, 2:18].double().reshape(8, 2), expect[1:], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="box rule"):
        utils.get_region_boxes(out, rule="median")


def test_vote_rule_on_the_golden_output_differs_only_in_the_corners(golden):
    g = golden("yolo_lite_trial3")
    out = torch.from_numpy(g["output"])
    voted = utils.get_region_boxes(out, rule="vote")[0].double().numpy()
    np.testing.assert_allclose(voted[:2], g["best_box"][:2], atol=1e-6)
    np.testing.assert_allclose(voted[18:], g["best_box"][18:], atol=1e-6, rtol=1e-5)
    assert np.abs(voted[2:18] - g["best_box"][2:18]).max() > 1e-4  # the neighbours moved the corners


def test_golden_evaluation_end_to_end(ev, mesh):
    """Replays the original valid() on the 5 golden cases: PnP poses, every error, every accuracy."""
    K = ev["K"]
    boxes = utils.get_region_boxes(torch.from_numpy(ev["network_outputs"]))
    pr = boxes[:, :18].numpy().reshape(-1, 9, 2) * np.array([640, 480], np.float32)
    gt = _gt_points(ev)
    np.testing.assert_array_equal(pr, ev["pr_corners2D"])
    np.testing.assert_array_equal(gt, ev["gt_corners2D"])
    p3 = utils.pose_points3d(utils.box_corners(mesh.vertices))
    diam = utils.mesh_diameter(mesh.vertices)
    np.testing.assert_allclose(diam, ev["diam"], rtol=1e-7)
    n = len(gt)
    errs = {k: [] for k in ("2d", "3d", "trans", "angle", "corner", "adds")}
    for i in range(n):
        R_gt, t_gt = utils.pnp(p3, gt[i], K)
        R_pr, t_pr = utils.pnp(p3, pr[i], K)
        np.testing.assert_allclose(R_gt, ev["R_gt"][i], atol=PNP_ATOL)
        np.testing.assert_allclose(t_gt.ravel(), ev["t_gt"][i], atol=PNP_ATOL)
        np.testing.assert_allclose(R_pr, ev["R_pr"][i], atol=PNP_ATOL)
        np.testing.assert_allclose(t_pr.ravel(), ev["t_pr"][i], atol=PNP_ATOL)
        errs["2d"].append(utils.projection_error_2d(mesh.vertices, K, R_gt, t_gt, R_pr, t_pr))
        errs["3d"].append(utils.add_error(mesh.vertices, R_gt, t_gt, R_pr, t_pr))
        errs["adds"].append(utils.adds_error(mesh.vertices, R_gt, t_gt, R_pr, t_pr))
        errs["trans"].append(utils.translation_error(t_gt, t_pr))
        errs["angle"].append(utils.angle_error(R_gt, R_pr))
        errs["corner"].append(utils.corner_error_2d(gt[i], pr[i]))
    np.testing.assert_allclose(errs["2d"], ev["errs_2d"], rtol=1e-5, atol=PNP_ATOL)
    np.testing.assert_allclose(errs["3d"], ev["errs_3d"], rtol=1e-5, atol=PNP_ATOL)
    np.testing.assert_allclose(errs["trans"], ev["errs_trans"], rtol=1e-5, atol=PNP_ATOL)
    np.testing.assert_allclose(errs["angle"], ev["errs_angle"], rtol=1e-5, atol=PNP_ATOL)
    np.testing.assert_allclose(errs["corner"], ev["errs_corner2D"], rtol=1e-5, atol=PNP_ATOL)
    assert all(s <= a + 1e-12 for s, a in zip(errs["adds"], errs["3d"]))
    px = ev["px_threshold"]
    acc = {
        "acc_2d_5px": utils.accuracy(sum(e <= px for e in errs["2d"]), n),
        "acc_add_0p1d": utils.accuracy(sum(e <= 0.1 * diam for e in errs["3d"]), n),
        "acc_5cm5deg": utils.accuracy(sum(t <= 0.05 and a <= 5 for t, a in zip(errs["trans"], errs["angle"])), n),
        "acc_corner_5px": utils.accuracy(sum(e <= px for e in errs["corner"]), n),
    }
    for k, v in acc.items():
        np.testing.assert_allclose(v, ev[k], rtol=1e-12)
    np.testing.assert_allclose(np.mean(errs["2d"]), ev["mean_err_2d"], rtol=1e-5)
    np.testing.assert_allclose(np.mean(errs["corner"]), ev["mean_corner_err_2d"], rtol=1e-5)


def test_metrics_on_known_poses():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.05, 0.05, size=(200, 3))
    K = utils.get_camera_intrinsic()
    R = utils.cv2.Rodrigues(np.array([0.3, -0.2, 0.1]))[0]
    t = np.array([0.02, -0.01, 0.8])
    assert utils.add_error(pts, R, t, R, t) == 0.0
    assert utils.projection_error_2d(pts, K, R, t, R, t) == 0.0
    assert utils.angle_error(R, R) < 1e-5
    # trace rounded above 3 would give NaN in the original; the clip gives 0 (D26)
    assert utils.angle_error(np.eye(3) * (1 + 1e-12), np.eye(3)) == 0.0
    t2 = t + np.array([0.01, 0.0, 0.0])
    np.testing.assert_allclose(utils.add_error(pts, R, t, R, t2), 0.01, rtol=1e-12)
    np.testing.assert_allclose(utils.translation_error(t, t2), 0.01, rtol=1e-12)
    R2 = utils.cv2.Rodrigues(np.array([0.0, 0.0, math.radians(10)]))[0] @ R
    np.testing.assert_allclose(utils.angle_error(R, R2), 10.0, rtol=1e-9)
    # ADD-S <= ADD, and ADD-S is zero for a symmetry of the point set
    assert utils.adds_error(pts, R, t, R2, t) <= utils.add_error(pts, R, t, R2, t)
    sym = np.vstack([pts, pts * [-1, -1, 1]])
    flip = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(utils.adds_error(sym, R, t, R @ flip, t), 0.0, atol=1e-12)
    assert utils.add_error(sym, R, t, R @ flip, t) > 0.01
    np.testing.assert_allclose(utils.accuracy(253, 1050), 24.09523786575964, rtol=1e-14)


def test_pnp_methods_recover_pose():
    K = utils.get_camera_intrinsic()
    corners = utils.box_corners(np.array([[-0.04, -0.03, -0.05], [0.06, 0.035, 0.045]]))
    R = utils.cv2.Rodrigues(np.array([0.4, 0.5, -0.3]))[0]
    t = np.array([0.05, -0.02, 0.9])
    px = utils.keypoints_from_pose(corners, R, t, K)
    for method in ("iterative", "epnp", "sqpnp"):
        R_pr, t_pr = utils.pnp(utils.pose_points3d(corners), px, K, method=method)
        assert utils.angle_error(R, R_pr) < 0.05
        assert utils.translation_error(t, t_pr) < 1e-4
    with pytest.raises(ValueError, match="unknown PnP method"):
        utils.pnp(utils.pose_points3d(corners), px, K, method="p3p-magic")


def test_mesh_diameter_equals_all_pairs():
    rng = np.random.default_rng(1)
    for pts in (rng.normal(size=(500, 3)), rng.uniform(size=(300, 3)) * [1, 1, 0]):  # incl. a flat set
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1).max()
        np.testing.assert_allclose(utils.mesh_diameter(pts), d, rtol=1e-12)
    assert utils.mesh_diameter(np.zeros((1, 3))) == 0.0


def test_keypoint_confidence_constants():
    gt = torch.zeros(18, dtype=torch.float64)
    assert utils.corner_confidences(gt, gt).item() == pytest.approx(1.0, abs=1e-12)
    expect = (math.e ** 2 - 1) / (math.e ** 2 - 1 + 1e-5)
    assert utils.corner_confidence(gt, gt).item() == pytest.approx(expect, rel=1e-12)
    # a shift of d pixels in x on every point: (exp(2(1 - d/80)) - 1) / (e^2 - 1)
    for d in (0.0, 10.0, 40.0, 79.0, 80.0, 120.0):
        pr = gt.clone()
        pr[0::2] = d / 640
        expect = (math.exp(2 * (1 - d / 80)) - 1) / (math.exp(2) - 1) if d < 80 else 0.0
        assert utils.corner_confidences(gt, pr).item() == pytest.approx(expect, abs=1e-12)
    # y distances are scaled by 480 (fixed), whatever the input size
    pr = gt.clone()
    pr[1::2] = 40 / 480
    assert utils.corner_confidences(gt, pr).item() == pytest.approx((math.exp(1) - 1) / (math.exp(2) - 1), abs=1e-12)
    # broadcasting over leading dimensions
    batch = torch.zeros(4, 7, 18, dtype=torch.float64)
    assert utils.corner_confidences(batch, gt).shape == (4, 7)
    assert utils.corner_confidences(gt, batch).shape == (4, 7)
    assert utils.corner_confidences(torch.zeros(0, 18), torch.zeros(5, 1, 18)).shape == (5, 0)


def test_read_data_cfg_defaults_and_errors(tmp_path):
    p = tmp_path / "obj.data"
    p.write_text("train = LINEMOD/ape/train.txt\n# comment\n\nname=ape\ndiam = 0.103\n")
    opts = utils.read_data_cfg(p)
    assert opts["train"] == "LINEMOD/ape/train.txt" and opts["name"] == "ape"
    assert float(opts["fx"]) == 572.4114 and opts["width"] == "640" and opts["num_workers"] == "10"
    K, w, h = utils.camera_from_data_cfg(opts)
    np.testing.assert_array_equal(K, utils.get_camera_intrinsic())
    assert (w, h) == (640, 480)
    bad = tmp_path / "bad.data"
    bad.write_text("train = a\nthis line has no equals sign\n")
    with pytest.raises(DataCfgError, match=r"bad\.data:2: expected 'key = value'"):
        utils.read_data_cfg(bad)
    with pytest.raises(FileNotFoundError, match="missing.data: data cfg not found"):
        utils.read_data_cfg(tmp_path / "missing.data")
    bad.write_bytes(b"train = a\n\xff\xfe = 1\n")
    with pytest.raises(DataCfgError, match=r"bad\.data: not a text file"):
        utils.read_data_cfg(bad)
    bad.write_text("train = a\n = 3\n")
    with pytest.raises(DataCfgError, match=r"bad\.data:2: empty key"):
        utils.read_data_cfg(bad)


@pytest.mark.parametrize("line, message", [
    ("fx = -572.4", "fx = '-572.4'; expected a positive finite number"),
    ("fy = 0", "fy = '0'; expected a positive finite number"),
    ("fx = inf", "fx = 'inf'; expected a positive finite number"),
    ("u0 = nan", "u0 = 'nan'; expected a finite number"),
    ("v0 = centre", "v0 = 'centre'; expected a finite number"),
    ("width = abc", "width = 'abc'; expected a positive whole number"),
    ("height = 480.5", "height = '480.5'; expected a positive whole number"),
    ("im_width = -640", "im_width = '-640'; expected a positive whole number"),
])
def test_bad_camera_values_name_the_file_and_key(tmp_path, line, message):
    """A negative focal length or `width = abc` gave a silent bad K or a bare float() traceback."""
    p = tmp_path / "cam.data"
    p.write_text(f"name = x\n{line}\n")
    with pytest.raises(DataCfgError, match=re.escape(f"{p}: {message}")):
        utils.camera_from_data_cfg(utils.read_data_cfg(p), p)


def test_read_data_cfg_resolves_paths_against_dataset_root(tmp_path, monkeypatch):
    (tmp_path / "LINEMOD" / "x").mkdir(parents=True)
    (tmp_path / "LINEMOD" / "x" / "train.txt").write_text("")
    (tmp_path / "cfg").mkdir()
    p = tmp_path / "cfg" / "x.data"
    p.write_text("train = LINEMOD/x/train.txt\nvalid = LINEMOD/x/nothing.txt\n")
    monkeypatch.chdir(tmp_path.parent)
    opts = utils.read_data_cfg(p, resolve_paths=True)
    assert opts["train"] == str(tmp_path / "LINEMOD/x/train.txt")
    assert opts["valid"] == "LINEMOD/x/nothing.txt"  # not found anywhere: left as written


def test_draw_box_draws_on_a_copy():
    img = np.zeros((100, 100, 3), np.uint8)
    pts = np.array([[50, 50]] + [[20 + 60 * ((i >> 2) & 1), 20 + 60 * ((i >> 1) & 1)] for i in range(8)], float)
    out = utils.draw_box(img, pts, color=(0, 255, 0))
    assert img.sum() == 0 and out[..., 1].sum() > 0 and out[..., 0].sum() == 0
    assert out[20, 50, 1] > 0  # the top edge between corners (20,20) and (80,20)


def test_adds_with_a_model_frame_tree_equals_the_direct_search():
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(5)
    pts = rng.normal(size=(500, 3)) * 0.05
    for _ in range(3):
        R_gt, _ = cv2.Rodrigues(rng.normal(size=3))
        R_pr, _ = cv2.Rodrigues(rng.normal(size=3))
        t_gt, t_pr = rng.normal(size=3), rng.normal(size=3)
        direct = utils.adds_error(pts, R_gt, t_gt, R_pr, t_pr)
        assert utils.adds_error(pts, R_gt, t_gt, R_pr, t_pr, tree=cKDTree(pts)) == pytest.approx(direct, abs=1e-12)
        assert direct <= utils.add_error(pts, R_gt, t_gt, R_pr, t_pr)


def test_multi_boxes_vote_around_their_own_cells():
    torch.manual_seed(2)
    A, C, H, W = 2, 3, 4, 5
    out = torch.randn(1, A * (19 + C), H, W)
    voted = utils.get_multi_region_boxes(out, 0.0, C, num_anchors=A, rule="vote", only_objectness=1)[0]
    plain = utils.get_multi_region_boxes(out, 0.0, C, num_anchors=A, rule="max", only_objectness=1)[0]
    assert voted.shape == plain.shape == (A * H * W, 21)
    points, conf, _ = utils.decode_output(out, 9, C, A)
    expect = utils.vote_points(points, conf).permute(0, 2, 3, 1, 4).reshape(-1, 18)  # scan order row, column, anchor
    torch.testing.assert_close(voted[:, :18], expect)
    torch.testing.assert_close(voted[:, :2], plain[:, :2])  # centroids are the cells' own
    torch.testing.assert_close(voted[:, 18:], plain[:, 18:])
    # one anchor, the best cell: the same points as the single-object decoder
    single = out[:, : 19 + C]
    box = utils.get_region_boxes(single, num_classes=C, rule="vote")[0]
    (rows,) = utils.get_multi_region_boxes(single, 0.0, C, rule="vote")
    torch.testing.assert_close(rows[int(rows[:, 18].argmax()), :18], box[:18])


def test_degenerate_meshes_and_unreal_focal_lengths(recwarn):
    """A point or a line cannot give a pose (refused); a flat mesh and a focal length no camera has warn."""
    for v in (np.zeros((1, 3)), np.full((5, 3), 0.3), np.outer(np.arange(5.0), [0, 0.02, 0])):
        with pytest.raises(MeshError, match=r"m\.ply: the mesh's bounding box is .* a point or a line"):
            utils.check_mesh_vertices(v, "m.ply")
    utils.check_mesh_vertices(np.eye(3) * 0.1, "box.ply")
    assert len(recwarn) == 0
    with pytest.warns(UserWarning, match=r"flat\.ply: the mesh is flat \(zero extent along z\)"):
        utils.check_mesh_vertices(np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0.0]]), "flat.ply")
    assert utils.field_of_view_deg(320.0, 640) == pytest.approx(90.0)
    opts = dict(DATA_CFG_DEFAULTS, fx="1e12")
    with pytest.warns(UserWarning, match=r"a\.data: fx = 1e\+12 px gives a field of view of 3\.67e-08 degrees"):
        utils.camera_from_data_cfg(opts, "a.data")
