"""Geometry, network-output decoding, the keypoint confidence, and the pose metrics.

Conventions (design §3, §4, §9):
    K = 9 keypoints: the model origin (the "centroid") then the 8 corners of the 3-D box in the
    design §9.2 order. 2-D points are either *normalised* (x / image width, y / image height) or in
    *pixels*; every function says which. 3-D points are in metres.
    A network output is (B, A*(2K+1+C), H, W): per anchor [x0, y0, ..., x8, y8, conf, cls...].
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import cv2
import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError, cKDTree

from linemod_format import IM_HEIGHT, IM_WIDTH, LINEMOD_FX, LINEMOD_FY, LINEMOD_U0, LINEMOD_V0, NUM_KEYPOINTS
from linemod_format import data_cfg_number
from linemod_format import read_data_cfg as read_data_cfg  # the original's utils.read_data_cfg
from errors import MeshError


# design §3.1: classes in alphabetical order; label rows hold 21 numbers
LINEMOD_OBJECTS = (
    "ape", "benchvise", "cam", "can", "cat", "driller", "duck",
    "eggbox", "glue", "holepuncher", "iron", "lamp", "phone",
)
# design §3.2: object diameters in metres
LINEMOD_DIAMETERS = {
    "ape": 0.103, "benchvise": 0.286908, "cam": 0.173, "can": 0.202, "cat": 0.155,
    "driller": 0.262, "duck": 0.109, "eggbox": 0.176364, "glue": 0.176,
    "holepuncher": 0.162, "iron": 0.303153, "lamp": 0.285155, "phone": 0.213,
}

# design §5.2: the exponential keypoint confidence
CONF_DIST_TH = 80.0  # pixels
CONF_SHARPNESS = 2.0
CONF_EPS = 1e-5  # only in the scalar (responsible-cell) variant

# design §9.3: metric thresholds
ACC_EPS = 1e-5  # accuracy = 100 * k / (N + 1e-5)
PX_THRESHOLD = 5.0
ADD_DIAMETER_FRACTION = 0.1
TRANS_THRESHOLD_M = 0.05
ANGLE_THRESHOLD_DEG = 5.0

# design §9.2: box edges between corner indices 0..7, for drawing
BOX_EDGES = ((0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7))
# design D61: the field of view of a real camera (a telephoto lens to a wide angle one); a focal
# length in pixels that gives less or more is a typo or another unit (fx = 1e12, fx in mm)
MIN_FOV_DEG, MAX_FOV_DEG = 1.0, 170.0
# a box extent below this fraction of the largest one counts as zero (a flat or a line-like mesh)
DEGENERATE_EXTENT = 1e-6


# --------------------------------------------------------------------------------------------
# Camera and 3-D geometry
# --------------------------------------------------------------------------------------------

def get_camera_intrinsic(u0=LINEMOD_U0, v0=LINEMOD_V0, fx=LINEMOD_FX, fy=LINEMOD_FY) -> np.ndarray:
    """The (3, 3) pinhole matrix K = [[fx, 0, u0], [0, fy, v0], [0, 0, 1]]."""
    return np.array([[fx, 0.0, u0], [0.0, fy, v0], [0.0, 0.0, 1.0]], dtype=np.float64)


def box_corners(points: np.ndarray) -> np.ndarray:
    """The 8 corners of the axis-aligned box around `points` (N, 3), as (8, 3), design §9.2 order.

    Corner index = 4*ix + 2*iy + iz with 0 = min and 1 = max along that axis.
    """
    points = np.asarray(points, dtype=np.float64)
    lo, hi = points.min(axis=0), points.max(axis=0)
    idx = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)])
    return np.where(idx == 1, hi, lo)


def get_3D_corners(vertices: np.ndarray) -> np.ndarray:
    """Original API: vertices (3|4, N) -> homogeneous corners (4, 8), design §9.2 order."""
    corners = box_corners(np.asarray(vertices)[:3].T)
    return np.vstack([corners.T, np.ones((1, 8))])


def pose_points3d(corners: np.ndarray) -> np.ndarray:
    """The 9 3-D keypoints (9, 3): the model origin (design §9.1: not the box centre), then `corners` (8, 3)."""
    return np.vstack([np.zeros((1, 3)), np.asarray(corners, dtype=np.float64)[:8, :3]])


def project_points(points: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel projections (N, 2) of 3-D points (N, 3) in metres under pose (R (3,3), t (3,) m)."""
    cam = _transform(points, R, t)
    uvw = cam @ np.asarray(K, dtype=np.float64).T
    return uvw[:, :2] / uvw[:, 2:3]


def compute_projection(points_3D: np.ndarray, transformation: np.ndarray,
                       internal_calibration: np.ndarray) -> np.ndarray:
    """Original API: points (3|4, N), [R|t] (3, 4), K (3, 3) -> pixel coordinates (2, N)."""
    pts = np.asarray(points_3D, dtype=np.float64)[:3].T
    T = np.asarray(transformation, dtype=np.float64)
    return project_points(pts, T[:, :3], T[:, 3], internal_calibration).T


def compute_transformation(points_3D: np.ndarray, transformation: np.ndarray) -> np.ndarray:
    """Original API: points (3|4, N) transformed by [R|t] (3, 4) -> (3, N)."""
    T = np.asarray(transformation, dtype=np.float64)
    return T[:, :3] @ np.asarray(points_3D, dtype=np.float64)[:3] + T[:, 3:4]


def keypoints_from_pose(corners: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """The 9 label points in pixels (9, 2): origin then the 8 box corners (8, 3), projected."""
    return project_points(pose_points3d(corners), R, t, K)


def label_row(points_px: np.ndarray, class_id: int = 0, im_width=IM_WIDTH, im_height=IM_HEIGHT) -> np.ndarray:
    """One 21-number label row (design §3.1) from the 9 keypoints in pixels (9, 2).

    [class, x0, y0, ..., x8, y8, x range, y range], coordinates normalised by the image size;
    the ranges are the extent of the tight 2-D box around the 9 normalised points.
    """
    norm = np.asarray(points_px, dtype=np.float64) / np.array([im_width, im_height], dtype=np.float64)
    extent = norm.max(axis=0) - norm.min(axis=0)
    return np.concatenate([[float(class_id)], norm.reshape(-1), extent])


def label_from_pose(corners: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, class_id: int = 0,
                    width: int = IM_WIDTH, height: int = IM_HEIGHT) -> np.ndarray:
    """The (21,) label row of an object: corners (8, 3) m in the §9.2 order, pose R (3, 3), t (3,) m, K (3, 3)."""
    return label_row(keypoints_from_pose(corners, R, t, K), class_id, width, height)


PNP_METHODS = {"iterative": cv2.SOLVEPNP_ITERATIVE, "epnp": cv2.SOLVEPNP_EPNP, "sqpnp": cv2.SOLVEPNP_SQPNP}


def pnp(points_3D: np.ndarray, points_2D: np.ndarray, cameraMatrix: np.ndarray, method: str = "iterative"):
    """Pose from 2-D/3-D correspondences, as the original: float32 inputs, zero distortion (design §9.1).

    points_3D (N, 3) metres, points_2D (N, 2) pixels, cameraMatrix (3, 3).
    Returns R (3, 3) float64 and t (3, 1) float64 (metres). Raises cv2.error if PnP fails.
    """
    if method not in PNP_METHODS:
        raise ValueError(f"unknown PnP method {method!r}; choose one of {sorted(PNP_METHODS)}")
    dist = np.zeros((8, 1), dtype=np.float32)
    ok, rvec, tvec = cv2.solvePnP(
        np.ascontiguousarray(points_3D, dtype=np.float32),
        np.ascontiguousarray(points_2D, dtype=np.float32).reshape(-1, 1, 2),
        np.asarray(cameraMatrix, dtype=np.float32),
        dist,
        flags=PNP_METHODS[method],
    )
    if not ok:
        raise cv2.error("solvePnP did not converge")
    R, _ = cv2.Rodrigues(rvec)
    return R, tvec


# --------------------------------------------------------------------------------------------
# Metrics (design §9.1, §9.3); numpy in, float out
# --------------------------------------------------------------------------------------------

def angle_error(R_gt: np.ndarray, R_pr: np.ndarray) -> float:
    """Rotation error in degrees, arccos((trace(R_gt R_pr^T) - 1) / 2) with the argument clipped to [-1, 1]."""
    cos = (np.trace(np.asarray(R_gt) @ np.asarray(R_pr).T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


calcAngularDistance = angle_error  # original name


def translation_error(t_gt: np.ndarray, t_pr: np.ndarray) -> float:
    """||t_gt - t_pr|| in the unit of t (metres)."""
    diff = np.asarray(t_gt, dtype=np.float64).reshape(3) - np.asarray(t_pr, dtype=np.float64).reshape(3)
    return float(np.linalg.norm(diff))


def projection_error_2d(points: np.ndarray, K: np.ndarray, R_gt, t_gt, R_pr, t_pr) -> float:
    """Mean pixel distance over `points` (N, 3) between their projections under the two poses."""
    d = project_points(points, R_gt, t_gt, K) - project_points(points, R_pr, t_pr, K)
    return float(np.linalg.norm(d, axis=1).mean())


def _transform(points, R, t):
    R = np.asarray(R, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ R.T + np.asarray(t, dtype=np.float64).reshape(1, 3)


def add_error(points: np.ndarray, R_gt, t_gt, R_pr, t_pr) -> float:
    """ADD: mean distance (metres) between corresponding points (N, 3) under the two poses."""
    return float(np.linalg.norm(_transform(points, R_gt, t_gt) - _transform(points, R_pr, t_pr), axis=1).mean())


def adds_error(points: np.ndarray, R_gt, t_gt, R_pr, t_pr, tree: cKDTree | None = None) -> float:
    """ADD-S: mean distance (metres) from each GT-posed point to the nearest predicted-posed point.

    tree: optional cKDTree of `points` (model frame), built once per mesh by the caller. The
    query then runs in the model frame, R_pr^T (R_gt x + t_gt - t_pr), which gives the same
    distances since a rigid motion preserves them, without a tree per pose.
    """
    if tree is None:
        dist, _ = cKDTree(_transform(points, R_pr, t_pr)).query(_transform(points, R_gt, t_gt), k=1)
    else:
        R_pr = np.asarray(R_pr, dtype=np.float64)
        query = (_transform(points, R_gt, t_gt) - np.asarray(t_pr, dtype=np.float64).reshape(1, 3)) @ R_pr
        dist, _ = tree.query(query, k=1)
    return float(dist.mean())


def corner_error_2d(gt_px: np.ndarray, pr_px: np.ndarray) -> float:
    """Mean pixel distance between two sets of keypoints (K, 2)."""
    diff = np.asarray(gt_px, dtype=np.float64) - np.asarray(pr_px, dtype=np.float64)
    return float(np.linalg.norm(diff, axis=1).mean())


def accuracy(count, n) -> float:
    """Percentage as the original reports it: 100 * count / (n + 1e-5) (never exactly 100)."""
    return 100.0 * float(count) / (float(n) + ACC_EPS)


def mesh_diameter(points: np.ndarray) -> float:
    """Exact maximum pairwise distance of `points` (N, 3), using only the convex-hull vertices.

    The farthest pair always lies on the hull, so this equals the original's O(N^2) search.
    """
    pts = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(pts) < 2:
        return 0.0
    try:
        pts = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # flat or tiny sets: fall back to all points
        pass
    best = 0.0
    chunk = max(1, 2_000_000 // len(pts))
    for i in range(0, len(pts), chunk):
        d = np.linalg.norm(pts[i:i + chunk, None, :] - pts[None, :, :], axis=-1)
        best = max(best, float(d.max()))
    return best


calc_pts_diameter = mesh_diameter  # original name


# --------------------------------------------------------------------------------------------
# The keypoint confidence (design §5.2); torch, vectorised over any leading shape
# --------------------------------------------------------------------------------------------

def keypoint_confidence(gt: torch.Tensor, pr: torch.Tensor, eps: float = 0.0, th: float = CONF_DIST_TH,
                        sharpness: float = CONF_SHARPNESS, im_width: float = IM_WIDTH,
                        im_height: float = IM_HEIGHT) -> torch.Tensor:
    """Mean exponential confidence between keypoint sets, shape (..., 2K) -> (...).

    Points are normalised and interleaved [x0, y0, x1, y1, ...]; distances are measured in
    pixels of a fixed im_width x im_height image (640 x 480, whatever the network input).
    f(d) = (exp(sharpness*(1 - d/th)) - 1) / (exp(sharpness) - 1 + eps) for d < th, else 0.
    """
    diff = gt - pr  # broadcast first: either side may carry the leading dimensions
    diff = diff.reshape(*diff.shape[:-1], diff.shape[-1] // 2, 2)
    scale = torch.tensor([im_width, im_height], dtype=diff.dtype, device=diff.device)
    dist = torch.linalg.vector_norm(diff * scale, dim=-1)
    conf = (torch.exp(sharpness * (1.0 - dist / th)) - 1.0) / (math.exp(sharpness) - 1.0 + eps)
    return torch.where(dist < th, conf, torch.zeros_like(conf)).mean(dim=-1)


def corner_confidences(gt: torch.Tensor, pr: torch.Tensor, **kw) -> torch.Tensor:
    """The vectorised variant used for the ignore mask (eps = 0). Shapes as keypoint_confidence."""
    return keypoint_confidence(gt, pr, eps=0.0, **kw)


def corner_confidence(gt: torch.Tensor, pr: torch.Tensor, **kw) -> torch.Tensor:
    """The scalar variant used for the responsible cell's target (eps = 1e-5)."""
    return keypoint_confidence(gt, pr, eps=CONF_EPS, **kw)


# --------------------------------------------------------------------------------------------
# Decoding the network output (design §4)
# --------------------------------------------------------------------------------------------

def head_channels(num_anchors: int = 1, num_keypoints: int = NUM_KEYPOINTS, num_classes: int = 1) -> int:
    """Channels of a pose network's output, A*(2K+1+C): per anchor 2K keypoint coordinates, one
    confidence and C class logits (design §4). The one statement of the rule: the decoder, the loss,
    the distillation check and the model checks (`model_loading.check_head`) all ask it."""
    return num_anchors * (2 * num_keypoints + 1 + num_classes)


def head_channel_problem(channels: int, num_anchors: int = 1, num_keypoints: int = NUM_KEYPOINTS,
                         num_classes: int = 1, what: str = "output") -> str | None:
    """None when `channels` is `head_channels(...)`, else one phrase naming `what`, the channels
    found and the A*(2K+1+C) expected."""
    expect = head_channels(num_anchors, num_keypoints, num_classes)
    if channels == expect:
        return None
    return (f"{what} has {channels} channels; expected num_anchors*(2K+1+C) = "
            f"{num_anchors}*({2 * num_keypoints}+1+{num_classes}) = {expect}")


def check_head_channels(channels: int, num_anchors: int = 1, num_keypoints: int = NUM_KEYPOINTS,
                        num_classes: int = 1) -> None:
    """ValueError (`head_channel_problem`) unless a raw output's `channels` fit the head."""
    problem = head_channel_problem(channels, num_anchors, num_keypoints, num_classes)
    if problem:
        raise ValueError(problem)


def decode_output(output: torch.Tensor, num_keypoints: int = NUM_KEYPOINTS, num_classes: int = 1, num_anchors: int = 1):
    """Decode raw network output into per-cell keypoints, confidence and class probabilities.

    output: (B, A*(2K+1+C), H, W) raw.
    Returns
        points: (B, A, H, W, 2K) normalised [x0, y0, ...]: x_k = (o + cx) / W, sigmoid(o) for k = 0
        conf:   (B, A, H, W) sigmoid confidence
        cls_prob: (B, A, H, W, C) softmax over the class logits
    """
    B, ch, H, W = output.shape
    check_head_channels(ch, num_anchors, num_keypoints, num_classes)
    per_anchor = ch // num_anchors
    o = output.reshape(B, num_anchors, per_anchor, H, W).permute(0, 1, 3, 4, 2)  # (B, A, H, W, ch)
    xy = o[..., : 2 * num_keypoints].reshape(B, num_anchors, H, W, num_keypoints, 2)
    xy = torch.cat([torch.sigmoid(xy[..., :1, :]), xy[..., 1:, :]], dim=-2)
    gx = torch.arange(W, dtype=o.dtype, device=o.device).view(1, 1, 1, W, 1)
    gy = torch.arange(H, dtype=o.dtype, device=o.device).view(1, 1, H, 1, 1)
    x = (xy[..., 0] + gx) / W
    y = (xy[..., 1] + gy) / H
    points = torch.stack([x, y], dim=-1).reshape(B, num_anchors, H, W, 2 * num_keypoints)
    conf = torch.sigmoid(o[..., 2 * num_keypoints])
    cls_prob = torch.softmax(o[..., 2 * num_keypoints + 1:], dim=-1)
    return points, conf, cls_prob


BOX_RULES = ("max", "vote")  # design §4.1 (the original's most confident cell) and D54 (the paper's 3x3 vote)
VOTE_RADIUS = 1  # D54: the 3x3 cells around the most confident one


def vote_points(points: torch.Tensor, conf: torch.Tensor, radius: int = VOTE_RADIUS) -> torch.Tensor:
    """Every cell's points under the paper's test-time rule (D54): its corners become the
    confidence-weighted mean of the corner predictions of the (2r+1)^2 cells around it, on its anchor.

    points: (B, A, H, W, 2K) decoded normalised points; conf: (B, A, H, W) sigmoid confidences.
    Returns (B, A, H, W, 2K): the centroid (k = 0) is each cell's own (a neighbour's centroid is
    squashed into its own cell, design §4), the corners k >= 1 the weighted mean. Cells outside the
    grid and cells with a non-finite confidence or prediction take no part; where no cell has a
    positive weight, the cell keeps its own corners.
    """
    B, A, H, W, P = points.shape
    usable = torch.isfinite(conf) & torch.isfinite(points).all(dim=-1)
    w = torch.where(usable, conf, torch.zeros_like(conf)).reshape(B * A, 1, H, W)
    pts = torch.where(usable[..., None], points, torch.zeros_like(points))
    wp = (w.reshape(B, A, H, W, 1) * pts).permute(0, 1, 4, 2, 3).reshape(B * A, P, H, W)
    k = 2 * radius + 1
    # a sum over the window; zero padding = cells outside the grid take no part
    sum_w = torch.nn.functional.avg_pool2d(w, k, stride=1, padding=radius, divisor_override=1)
    sum_wp = torch.nn.functional.avg_pool2d(wp, k, stride=1, padding=radius, divisor_override=1)
    voted = (sum_wp / sum_w).reshape(B, A, P, H, W).permute(0, 1, 3, 4, 2)
    out = torch.cat([points[..., :2], voted[..., 2:]], dim=-1)
    return torch.where(torch.isfinite(out), out, points)


def apply_box_rule(points: torch.Tensor, conf: torch.Tensor, rule: str) -> torch.Tensor:
    """The points every box selection reads: `points` (B, A, H, W, 2K) as decoded for 'max', their
    3x3 vote (`vote_points`) for 'vote'. ValueError for any other rule."""
    if rule not in BOX_RULES:
        raise ValueError(f"unknown box rule {rule!r}; expected one of {BOX_RULES}")
    return vote_points(points, conf) if rule == "vote" else points


def get_region_boxes(output: torch.Tensor, num_classes: int = 1, num_keypoints: int = NUM_KEYPOINTS,
                     only_objectness: int = 1, validation: bool = True, num_anchors: int = 1,
                     rule: str = "max") -> torch.Tensor:
    """The single most confident box of each image (design §4.1, fixed per image: D24).

    output: (B, A*(2K+1+C), H, W) raw. Returns (B, 2K+3) float32 on output's device:
    [x0, y0, ..., x8, y8 (normalised), det_conf, cls_max_conf, cls_max_id]. The first cell
    with the strictly highest score wins, scanning row, column, anchor. NaN scores never win;
    an image whose scores are all NaN gets a row of NaN.
    `only_objectness=0` scores cells by det_conf * cls_max_conf instead of det_conf alone.
    rule: 'max', the original (the chosen cell's 9 points); 'vote', the paper's test-time rule
    (its corners are the confidence-weighted mean over the 3x3 cells around it, `vote_points`).
    """
    points, conf, cls_prob = decode_output(output.float(), num_keypoints, num_classes, num_anchors)
    points = apply_box_rule(points, conf, rule)
    cls_conf, cls_id = cls_prob.max(dim=-1)
    score = conf if only_objectness else conf * cls_conf
    B = output.shape[0]
    # scan order row, column, anchor (design §4.1): move the anchor axis last before flattening
    flat = lambda t: t.permute(0, 2, 3, 1, *range(4, t.dim())).reshape(B, -1, *t.shape[4:])
    score_f = flat(score)
    best = torch.nan_to_num(score_f, nan=-math.inf).argmax(dim=1)
    pick = lambda t: t[torch.arange(B, device=t.device), best]
    boxes = torch.cat([pick(flat(points)), pick(flat(conf))[:, None], pick(flat(cls_conf))[:, None],
                       pick(flat(cls_id)).to(points.dtype)[:, None]], dim=1)
    all_nan = torch.isnan(score_f).all(dim=1)
    return torch.where(all_nan[:, None], torch.full_like(boxes, math.nan), boxes)


# design §4.2, D63: the one default box-score threshold of the multi-object scripts (valid_multi.py,
# train_multi.py's tests and detect.py --multi): the original multi-object evaluation's 0.05
MULTI_CONF_THRESH = 0.05


def _fallback_cell(det_conf: np.ndarray, cls_prob: np.ndarray, cls_max: float) -> tuple[int, float]:
    """The cell the original's running update ends on (design §4.2), and the class maximum after it.

    det_conf, cls_prob: (N,) in scan order. The running state (d, p) starts at (-inf, cls_max); a
    cell replaces it only when det_conf > d and cls_prob > p. Returns (index or -1, p). Loops over
    the successive replacements (a short chain), each found with one vectorised search.
    """
    best_d, best_p, index, start = -math.inf, cls_max, -1, 0
    while start < len(det_conf):
        hits = np.flatnonzero((det_conf[start:] > best_d) & (cls_prob[start:] > best_p))
        if hits.size == 0:
            break
        index = start + int(hits[0])
        best_d, best_p, start = float(det_conf[index]), float(cls_prob[index]), index + 1
    return index, best_p


def get_multi_region_boxes(output: torch.Tensor, conf_thresh: float, num_classes: int,
                           num_keypoints: int = NUM_KEYPOINTS, anchors=(), num_anchors: int = 1,
                           correspondingclass=0, only_objectness: int = 1,
                           carry_class_max: bool = True, rule: str = "max") -> list[torch.Tensor]:
    """Every box above `conf_thresh`, plus a fallback box of the expected class (design §4.2).

    output: (B, A*(2K+1+C), H, W) raw. correspondingclass: the class of the image's first GT,
    an int for the whole batch or a sequence of B ints. anchors: accepted for the original's
    signature; decoding never uses them (design §4).
    Returns B tensors (n_b, 2K+3) float32 on output's device, rows [x0, y0, ..., x8, y8
    (normalised), det_conf, cls_max_conf, cls_max_id], in scan order row, column, anchor:
      * kept: every cell/anchor whose score > conf_thresh; score = det_conf (only_objectness=1)
        or det_conf * cls_max_conf (only_objectness=0, what valid_multi uses);
      * fallback: when no kept box has class id == correspondingclass, the cell of the original's
        running update (`_fallback_cell`) is appended with its det_conf, its probability of that
        class and that class id (none when every score is NaN).
    carry_class_max=True reproduces the original, whose class-probability maximum is not reset
    between the images of a batch; False treats every image as in a batch of one.
    rule 'vote': every box's corners come from the 3x3 vote around its cell (`vote_points`, D54).
    """
    points, conf, cls_prob = decode_output(output.float(), num_keypoints, num_classes, num_anchors)
    points = apply_box_rule(points, conf, rule)
    B = output.shape[0]
    if np.ndim(correspondingclass) == 0:
        wanted = [int(correspondingclass)] * B
    else:
        wanted = [int(c) for c in correspondingclass]
        if len(wanted) != B:
            raise ValueError(f"correspondingclass has {len(wanted)} entries for a batch of {B} images")
    bad = [c for c in wanted if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"correspondingclass {bad[0]} is outside the {num_classes} classes of the network")
    cls_conf, cls_id = cls_prob.max(dim=-1)
    score = conf if only_objectness else conf * cls_conf
    # scan order row, column, anchor (design §4.2): move the anchor axis last before flattening
    flat = lambda t: t.permute(0, 2, 3, 1, *range(4, t.dim())).reshape(B, -1, *t.shape[4:])
    points, conf, cls_prob, cls_conf, cls_id, score = map(flat, (points, conf, cls_prob, cls_conf, cls_id, score))
    rows = torch.cat([points, conf[..., None], cls_conf[..., None], cls_id[..., None].to(points.dtype)], dim=-1)
    conf_np = conf.detach().cpu().double().numpy()
    wanted_prob = cls_prob[torch.arange(B, device=cls_prob.device), :, torch.tensor(wanted, device=cls_prob.device)]
    wanted_np = wanted_prob.detach().cpu().double().numpy()  # (B, N) probability of each image's class
    boxes, cls_max = [], -math.inf
    for b in range(B):
        kept = score[b] > conf_thresh
        out = rows[b][kept]
        if not carry_class_max:
            cls_max = -math.inf
        index, cls_max = _fallback_cell(conf_np[b], wanted_np[b], cls_max)
        if not bool((out[:, -1] == wanted[b]).any()) and index >= 0:
            extra = rows[b, index].clone()
            extra[-2], extra[-1] = wanted_prob[b, index], float(wanted[b])
            out = torch.cat([out, extra[None]])
        boxes.append(out)
    return boxes


class MultiBoxes(NamedTuple):
    """One box per image and class (`select_multi_boxes`); B images, C classes, K keypoints.

    score (B, C): det_conf * class prob of the class's cell, -inf where no cell has that class as
    its best one; det_conf (B, C); points (B, C, 2K) normalised [x0, y0, ..., x8, y8];
    kept (B, C) bool: score > conf_thresh (a box that is not kept is no detection).
    """
    score: torch.Tensor
    det_conf: torch.Tensor
    points: torch.Tensor
    kept: torch.Tensor


def select_multi_boxes(output: torch.Tensor, conf_thresh: float = MULTI_CONF_THRESH, num_classes: int = 1,
                       num_keypoints: int = NUM_KEYPOINTS, num_anchors: int = 1, rule: str = "max") -> MultiBoxes:
    """The multi-object box choice of valid_multi.py and detect.py --multi (design §4.2, D63).

    output: (B, A*(2K+1+C), H, W) raw. For each image and class c: among the cells/anchors whose
    best class is c, the one with the highest score det_conf * prob(c); the first maximum wins in
    the scan order row, column, anchor (as design §4.1); NaN scores never win. It is a detection
    when its score > conf_thresh. rule 'vote': its corners come from the 3x3 vote (D54) of the cells
    whose best class is c, weighted by det_conf * prob(c): a neighbouring object's cells, confident
    but of another class, take no part (with every cell voting, they dragged the corners onto the
    other object: 41 % instead of 82 % at 50 px on a partly trained model, D63).
    No ground truth enters (the original's fallback box for the first GT class is
    `get_multi_region_boxes`), so an evaluation and a detection on the same image agree.
    Returns `MultiBoxes` on output's device, float32.
    """
    if rule not in BOX_RULES:
        raise ValueError(f"unknown box rule {rule!r}; expected one of {BOX_RULES}")
    points, conf, cls_prob = decode_output(output.float(), num_keypoints, num_classes, num_anchors)
    cls_conf, cls_id = cls_prob.max(dim=-1)
    B = output.shape[0]
    classes = torch.arange(num_classes, device=cls_id.device)
    # scan order row, column, anchor: move the anchor axis last before flattening
    flat = lambda t: t.permute(0, 2, 3, 1, *range(4, t.dim())).reshape(t.shape[0], -1, *t.shape[4:])
    score = torch.nan_to_num(flat(conf * cls_conf), nan=-math.inf)  # (B, N)
    cells = flat(cls_id)  # (B, N)
    # (B, N, C): a cell's score under its best class, -inf under the others; argmax = first maximum
    by_class = torch.where(cells[..., None] == classes, score[..., None], torch.full_like(score, -math.inf)[..., None])
    best = by_class.argmax(dim=1)  # (B, C) cell index
    best_score = by_class.gather(1, best[:, None]).squeeze(1)
    P = points.shape[-1]
    if rule == "vote":  # per class: only the cells of that class vote, weighted by det_conf * prob(c) (D63)
        C = num_classes
        weight = conf[None] * cls_prob.permute(4, 0, 1, 2, 3) * (cls_id[None] == classes.view(C, 1, 1, 1, 1))
        voted = vote_points(points.expand(C, *points.shape).reshape(C * B, *points.shape[1:]),
                            weight.reshape(C * B, *conf.shape[1:]))
        per_class = flat(voted).reshape(C, B, -1, P).permute(1, 0, 2, 3)  # (B, C, N, 2K)
        best_points = per_class.gather(2, best[..., None, None].expand(-1, -1, 1, P)).squeeze(2)
    else:
        best_points = flat(points).gather(1, best[..., None].expand(-1, -1, P))
    return MultiBoxes(best_score, flat(conf).gather(1, best), best_points, best_score > conf_thresh)


# --------------------------------------------------------------------------------------------
# `.data` camera and drawing helpers shared by the scripts
# --------------------------------------------------------------------------------------------

def camera_from_data_cfg(options: dict, source="<data cfg>") -> tuple[np.ndarray, int, int]:
    """(K (3, 3), image width, image height) from a data-cfg dict (single- or multi-object keys).

    fx, fy must be positive, u0, v0 finite, the image size positive whole numbers of pixels;
    otherwise DataCfgError names `source` (the `.data` file) and the key.
    """
    fx, fy = (data_cfg_number(options, k, source, positive=True) for k in ("fx", "fy"))
    u0, v0 = (data_cfg_number(options, k, source) for k in ("u0", "v0"))
    width = data_cfg_number(options, "im_width" if "im_width" in options else "width", source,
                            positive=True, integer=True)
    height = data_cfg_number(options, "im_height" if "im_height" in options else "height", source,
                             positive=True, integer=True)
    for key, focal, side in (("fx", fx, width), ("fy", fy, height)):
        warn_unreal_focal(source, key, focal, side)
    return get_camera_intrinsic(u0, v0, fx, fy), width, height


def resolve_camera(camera_data=None, fx=None, fy=None, u0=None, v0=None, width=None, height=None):
    """(K (3, 3), width or None, height or None): LINEMOD defaults < camera_data's keys < explicit values."""
    K, w, h = get_camera_intrinsic(), None, None
    if camera_data is not None:
        K, w, h = camera_from_data_cfg(read_data_cfg(camera_data), camera_data)
    vals = {"fx": K[0, 0], "fy": K[1, 1], "u0": K[0, 2], "v0": K[1, 2]}
    for key, v in (("fx", fx), ("fy", fy), ("u0", u0), ("v0", v0)):
        if v is not None:
            vals[key] = float(v)
    if not (vals["fx"] > 0 and vals["fy"] > 0 and np.isfinite(list(vals.values())).all()):
        raise ValueError(f"focal lengths must be positive and all camera values finite; got fx={vals['fx']}, "
                         f"fy={vals['fy']}, u0={vals['u0']}, v0={vals['v0']}")
    K = get_camera_intrinsic(vals["u0"], vals["v0"], vals["fx"], vals["fy"])
    return K, (w if width is None else int(width)), (h if height is None else int(height))


def field_of_view_deg(focal_px: float, side_px: float) -> float:
    """The pinhole field of view (degrees) across `side_px` pixels for a focal length of `focal_px` pixels."""
    return math.degrees(2.0 * math.atan(side_px / (2.0 * focal_px)))


def warn_unreal_focal(source, key: str, focal_px: float, side_px: int) -> None:
    """One warning, naming the file and key, when a focal length gives a field of view outside
    MIN_FOV_DEG..MAX_FOV_DEG (no real camera: a typo, or millimetres instead of pixels)."""
    fov = field_of_view_deg(focal_px, side_px)
    if not MIN_FOV_DEG <= fov <= MAX_FOV_DEG:
        warnings.warn(f"{source}: {key} = {focal_px:g} px gives a field of view of {fov:.3g} degrees across "
                      f"{side_px} px; real cameras have {MIN_FOV_DEG:g} to {MAX_FOV_DEG:g} (the focal length "
                      f"is in pixels)", stacklevel=1)  # 1: one line per process, whichever script reads the file


def check_mesh_vertices(vertices: np.ndarray, source) -> None:
    """Refuse a mesh that cannot give a pose, warn about a flat one (design D61).

    The pose comes from PnP on the 8 corners of the vertices' box and its centroid: a mesh whose box
    has fewer than 2 non-zero extents (one vertex, identical vertices, points on a line) gives
    coincident or collinear points, so every pose fails. Raises MeshError naming `source`. A box
    with one zero extent (a flat object) still gives a pose, with a warning naming the mesh."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    extent = v.max(axis=0) - v.min(axis=0) if len(v) else np.zeros(3)
    zero = extent <= DEGENERATE_EXTENT * max(float(extent.max()), 0.0)
    if len(v) < 2 or extent.max() <= 0 or zero.sum() >= 2:
        sizes = " x ".join(f"{e:.3g}" for e in extent)
        raise MeshError(f"{source}: the mesh's bounding box is {sizes} (m) over {len(v)} vertices: a point or a "
                        f"line, whose box corners cannot give a pose; expected a 3-D object")
    if zero.any():
        warnings.warn(f"{source}: the mesh is flat (zero extent along {'xyz'[int(np.argmax(zero))]}); its box "
                      f"corners lie on a plane, and ADD compares poses of a plane", stacklevel=1)  # once per process


def draw_box(image: np.ndarray, points_px: np.ndarray, color=(0, 255, 0), thickness: int = 2,
             centroid: bool = True) -> np.ndarray:
    """Draw the 12 box edges of 9 keypoints (9, 2) pixels (or 8 corners) on an RGB uint8 image (copy)."""
    out = np.ascontiguousarray(image).copy()
    pts = np.asarray(points_px, dtype=np.float64)
    corners = pts[1:9] if len(pts) == 9 else pts[:8]
    if not np.all(np.isfinite(corners)):
        return out
    shift = 4  # sub-pixel drawing
    ip = np.round(corners * (1 << shift)).astype(np.int64)
    for a, b in BOX_EDGES:
        cv2.line(out, tuple(int(v) for v in ip[a]), tuple(int(v) for v in ip[b]), color, thickness, cv2.LINE_AA, shift)
    if centroid and len(pts) == 9 and np.all(np.isfinite(pts[0])):
        c = np.round(pts[0] * (1 << shift)).astype(np.int64)
        cv2.circle(out, tuple(int(v) for v in c), 3 << shift, color, -1, cv2.LINE_AA, shift)
    return out
