"""Scoring poses (design §9): what valid.py, valid_multi.py and the tests during training share.

A library module: it raises exceptions and never exits; the scripts (valid.py, valid_multi.py,
train.py, train_multi.py, detect.py) parse flags and call it.

Reading order:
  1. what a test needs besides the model: `EvalSetup` / `load_eval_setup` (one object's `.data`
     file), `OcclusionObject` / `load_objects` (the objects of an occlusion `.data` file, design §9.6);
  2. the errors of one object: `solve_pose`, `pose_errors` (design §9.1); the accuracies:
     `summarize` (design §9.3), `accuracy_curves`, `threshold_accuracies`;
  3. which box answers each ground-truth object: `most_confident_box` (design §4.1, one object per
     image), `box_of_its_class` (D63, several objects: `utils.select_multi_boxes`, shared with
     detect.py --multi) and `original_multi_box` (design §4.2, the original's choice);
  4. the one evaluation loop, `evaluation_loop`, and its two faces: `evaluate` (valid.py, train.py)
     and `evaluate_object` (valid_multi.py, train_multi.py);
  5. the reports and files: `report`, `print_table`, `save_predictions`, the occlusion report;
  6. the checks of the test lists before a run: `check_test_list`, `check_occlusion_test_images`
     (the network and its weights: model_loading.py).

Differences from the original valid.py and valid_multi.py, all listed in docs/design.md §11: the
box is chosen per image, so batches > 1 work (D24); the ADD threshold uses the `.data` diameter
unless `--diam mesh` (D25); the angle is clipped (D26); timings are means over all images with
CUDA synchronisation (D33); several objects take the box of their class, the one detect.py --multi
draws (D63). A non-finite network output, a GT with no box, or a failed PnP is a miss (counted and
reported), never a crash.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

import dataset
import errors
import image as im
import preflight
import utils
from errors import DataCfgError, InputError, MeshError
from linemod_format import NUM_KEYPOINTS, atomic_write, occlusion_label_path, write_text
from MeshPly import MeshPly

DIAM_SOURCES = ("data", "mesh")
# accuracy-versus-threshold curves
PX_CURVE_MAX = 50.0  # pixels
ADD_CURVE_MAX = 0.5  # fraction of the diameter
CURVE_STEPS = 101
REPORT_PX_THRESHOLDS = (5, 10, 15, 20, 30)  # 2-D projection accuracy lines of the report (D50)
OCCLUSION_OBJECTS = ("ape", "can", "cat", "duck", "glue", "holepuncher")  # design §9.6 (driller, eggbox not scored)
OCCLUSION_PX_THRESHOLDS = tuple(range(5, 55, 5))  # design §9.6: 5, 10, ..., 50 px
# the multi-object box choice (D63): the box of each GT's class, or the original's (design §4.2)
MULTI_SELECTIONS = ("class", "original")

ERROR_KEYS = ("err_2d", "err_add", "err_adds", "err_trans", "err_angle", "err_corner")
POSE_KEYS = ("R_gt", "t_gt", "R_pr", "t_pr")
RECORD_KEYS = (*ERROR_KEYS, "failed", *POSE_KEYS, "gt_px", "pr_px", "conf", "image_index")
TIMER_KEYS = ("to_device", "forward", "decode", "eval")


def log(msg: str, file=None) -> None:
    """Print a line with the original's local-time prefix `YYYY-MM-DD HH:MM:SS` (design §9.4)."""
    print(time.strftime("%Y-%m-%d %H:%M:%S"), msg, file=file or sys.stdout, flush=True)


# --------------------------------------------------------------------------------------------
# What an evaluation needs besides the model
# --------------------------------------------------------------------------------------------

@dataclass
class EvalSetup:
    """Object, camera and thresholds of one test split.

    vertices (N, 3) metres; corners (8, 3) metres in the design §9.2 order; K (3, 3); im_width x
    im_height: the original image size that de-normalises the 2-D points; diam metres.
    """
    name: str
    valid_list: str
    vertices: np.ndarray
    corners: np.ndarray
    K: np.ndarray
    im_width: int
    im_height: int
    diam: float
    px_threshold: float = utils.PX_THRESHOLD
    pnp_method: str = "iterative"
    extra: dict = field(default_factory=dict)

    @property
    def vertex_tree(self):
        """cKDTree of the mesh vertices (model frame), built once: ADD-S queries it per image."""
        tree = self.extra.get("_vertex_tree")
        if tree is None:
            tree = self.extra["_vertex_tree"] = cKDTree(self.vertices)
        return tree

    @property
    def add_threshold(self) -> float:
        """ADD threshold in metres: 10 % of the diameter (design §9.3)."""
        return utils.ADD_DIAMETER_FRACTION * self.diam


def _check_choices(diam_source: str, pnp_method: str) -> None:
    if diam_source not in DIAM_SOURCES:
        raise ValueError(f"diam source must be one of {DIAM_SOURCES}, not {diam_source!r}")
    if pnp_method not in utils.PNP_METHODS:
        raise ValueError(f"unknown PnP method {pnp_method!r}; choose one of {sorted(utils.PNP_METHODS)}")


def load_eval_setup(datacfg, diam_source: str = "data", pnp_method: str = "iterative") -> EvalSetup:
    """Read a `.data` file and its mesh, checking every file the evaluation reads.

    diam_source: 'data' uses the file's `diam` (the mesh's when the key is missing); 'mesh' uses
    the mesh diameter, as the original valid.py ends up doing (design §9.3, D25).
    Raises DataCfgError (or MeshError) naming the `.data` file (or mesh) and what is wrong.
    """
    _check_choices(diam_source, pnp_method)
    opts = utils.read_data_cfg(datacfg, resolve_paths=True)
    for key in ("valid", "mesh"):
        if key not in opts:
            raise DataCfgError(f"{datacfg}: no '{key}' key (expected a line '{key} = <path>')")
    if not Path(opts["mesh"]).is_file():
        raise MeshError(f"{datacfg}: mesh file not found: {opts['mesh']}")
    if not Path(opts["valid"]).is_file():
        raise DataCfgError(f"{datacfg}: test list (valid) not found: {opts['valid']}")
    vertices = MeshPly(opts["mesh"]).vertices
    utils.check_mesh_vertices(vertices, opts["mesh"])  # MeshError for a point or a line: no pose
    if diam_source == "mesh" or "diam" not in opts:
        diam = utils.mesh_diameter(vertices)
    else:
        diam = utils.data_cfg_number(opts, "diam", datacfg, positive=True)  # metres
    K, w, h = utils.camera_from_data_cfg(opts, datacfg)
    return EvalSetup(name=opts.get("name", Path(datacfg).stem), valid_list=opts["valid"], vertices=vertices,
                     corners=utils.box_corners(vertices), K=K, im_width=w, im_height=h, diam=diam,
                     pnp_method=pnp_method,
                     extra={"datacfg": str(datacfg), "mesh": opts["mesh"], "backup": opts.get("backup")})


def skipped_by_all(datacfg: Path) -> bool:
    """valid.py --all scores each object once: the OCCLUSION files and the fresh test sets
    (`<obj>_fresh<S>.data`, another test list of an object already there) are left out."""
    return "occlusion" in datacfg.name or "_fresh" in datacfg.stem


@dataclass
class OcclusionObject:
    """One object to score: its class id (k - 1 for the `.data` keys valid<k>/mesh<k>) and setup."""
    class_id: int
    setup: EvalSetup

    @property
    def name(self) -> str:
        return self.setup.name


def _numbered(opts: dict, prefix: str) -> list[int]:
    """The k of every key `<prefix><k>` (k digits) of a `.data` dict, sorted."""
    return sorted(int(key[len(prefix):]) for key in opts if key.startswith(prefix) and key[len(prefix):].isdigit())


def load_objects(datacfg, objects=None, diam_source: str = "data",
                 pnp_method: str = "iterative") -> list[OcclusionObject]:
    """The objects of an occlusion `.data` file (design §3.2 keys valid<k>, mesh<k>, diam<k>).

    An object's name is its mesh file's stem (LINEMOD/ape/ape.ply -> 'ape'), its class id k - 1.
    objects: names to keep, in that order; default: the six of design §9.6 when the file has them
    all, else every object of the file. diam_source 'data': diam<k>, required for every object
    scored; 'mesh': the mesh's diameter (diam<k> not read). Every key is checked before a mesh is
    read. Raises DataCfgError (a `valid<k>` without `mesh<k>`, an object scored without `valid<k>`
    or, with 'data', `diam<k>`), FileNotFoundError or MeshError, naming the `.data` file and the key.
    """
    _check_choices(diam_source, pnp_method)
    opts = utils.read_data_cfg(datacfg, resolve_paths=True)
    ks = _numbered(opts, "mesh")
    if not ks:
        raise DataCfgError(f"{datacfg}: no 'mesh<k>' keys; expected an occlusion .data file with valid<k>, mesh<k> "
                           f"(and diam<k>) for each class k = 1, 2, ...")
    orphans = [k for k in _numbered(opts, "valid") if k not in ks]
    if orphans:
        k = orphans[0]
        raise DataCfgError(f"{datacfg}: 'valid{k}' has no 'mesh{k}': the objects of its test list cannot be scored "
                           f"without their mesh (add 'mesh{k} = <path>.ply')")
    by_name = {Path(opts[f"mesh{k}"]).stem: k for k in ks}
    if objects is None:
        objects = OCCLUSION_OBJECTS if all(o in by_name for o in OCCLUSION_OBJECTS) else list(by_name)
    unknown = [o for o in objects if o not in by_name]
    if unknown:
        raise DataCfgError(f"{datacfg}: no object named {unknown[0]!r}; its objects (mesh<k> stems) are "
                           f"{list(by_name)}")
    for name in objects:
        k = by_name[name]
        if f"valid{k}" not in opts:
            raise DataCfgError(f"{datacfg}: object {name!r} has mesh{k} but no 'valid{k}' test list")
        if diam_source == "data" and f"diam{k}" not in opts:  # the ADD threshold is 10 % of it (design §9.3)
            raise DataCfgError(f"{datacfg}: object {name!r} has mesh{k} but no 'diam{k}' (its diameter in metres, "
                               f"for the ADD threshold); add it, or take the mesh's diameter (--diam mesh)")
    K, width, height = utils.camera_from_data_cfg(opts, datacfg)
    out = []
    for name in objects:
        k = by_name[name]
        mesh, valid_list = opts[f"mesh{k}"], opts[f"valid{k}"]
        if not Path(mesh).is_file():
            raise FileNotFoundError(f"{datacfg}: mesh{k} file not found: {mesh}")
        if not Path(valid_list).is_file():
            raise FileNotFoundError(f"{datacfg}: valid{k} test list not found: {valid_list}")
        vertices = MeshPly(mesh).vertices
        utils.check_mesh_vertices(vertices, mesh)  # a point or a line gives no pose
        if diam_source == "mesh":
            diam = utils.mesh_diameter(vertices)
        else:
            diam = utils.data_cfg_number(opts, f"diam{k}", datacfg, positive=True)  # metres
        setup = EvalSetup(name=name, valid_list=valid_list, vertices=vertices, corners=utils.box_corners(vertices),
                          K=K, im_width=width, im_height=height, diam=diam, pnp_method=pnp_method,
                          extra={"datacfg": str(datacfg), "mesh": mesh})
        out.append(OcclusionObject(k - 1, setup))
    return out


def occlusion_test_loader(obj: OcclusionObject, shape, batch_size: int = 1, workers: int = 0,
                          resample: str = im.DEFAULT_RESAMPLE, input_filter: str = "none"):
    """A test loader over one object's scenes at `shape` (w, h) (`dataset.OcclusionTestSet`), each
    image through `input_filter` first (D69)."""
    test_set = dataset.OcclusionTestSet(obj.setup.valid_list, obj.name, shape, resample=resample,
                                        input_filter=input_filter)
    return dataset.make_test_loader(test_set, batch_size=batch_size, workers=workers)


# --------------------------------------------------------------------------------------------
# Per-object pose errors (design §9.1) and accuracies (design §9.3)
# --------------------------------------------------------------------------------------------

def solve_pose(points3d: np.ndarray, points_px: np.ndarray, K: np.ndarray, method: str = "iterative"):
    """(R (3, 3), t (3,) metres) by PnP from 3-D points (N, 3) and pixels (N, 2); None when the
    points are not finite or PnP fails. The evaluations and detect.py all solve every pose here."""
    if not np.all(np.isfinite(points_px)):
        return None
    try:
        R, t = utils.pnp(points3d, points_px, K, method)
    except utils.cv2.error:
        return None
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        return None
    return R, t.ravel()


def pose_errors(gt_px: np.ndarray, pr_px: np.ndarray, setup: EvalSetup) -> dict:
    """Every design §9.1 error for one object from its 9 GT and 9 predicted points (9, 2) in pixels.

    Both poses come from PnP on the 9 points, the GT pose too, as in the original. Returns
    err_2d (px, mean over mesh vertices), err_add and err_adds (m), err_trans (m), err_angle
    (deg), err_corner (px, mean over the 9 points), the poses R_* (3, 3) and t_* (3,) (NaN when
    unknown) and `failed`. A non-finite prediction or a failed PnP gives infinite errors and
    failed=True: a miss for every metric, never a crash.
    """
    points3d = utils.pose_points3d(setup.corners)
    gt = solve_pose(points3d, gt_px, setup.K, setup.pnp_method)
    pr = solve_pose(points3d, pr_px, setup.K, setup.pnp_method)
    nan_pose = (np.full((3, 3), np.nan), np.full(3, np.nan))
    (R_gt, t_gt), (R_pr, t_pr) = gt or nan_pose, pr or nan_pose
    out = {"R_gt": R_gt, "t_gt": t_gt, "R_pr": R_pr, "t_pr": t_pr, "failed": gt is None or pr is None}
    finite = np.all(np.isfinite(pr_px)) and np.all(np.isfinite(gt_px))
    out["err_corner"] = utils.corner_error_2d(gt_px, pr_px) if finite else math.inf
    if out["failed"]:
        out.update({k: math.inf for k in ERROR_KEYS if k != "err_corner"})
        return out
    v = setup.vertices
    out.update(
        err_2d=utils.projection_error_2d(v, setup.K, R_gt, t_gt, R_pr, t_pr),
        err_add=utils.add_error(v, R_gt, t_gt, R_pr, t_pr),
        err_adds=utils.adds_error(v, R_gt, t_gt, R_pr, t_pr, tree=setup.vertex_tree),
        err_trans=utils.translation_error(t_gt, t_pr),
        err_angle=utils.angle_error(R_gt, R_pr),
    )
    return out


def summarize(records: dict, setup: EvalSetup) -> dict:
    """The design §9.3 accuracies (100*k/(N+1e-5), thresholds with `<=`) and mean errors.

    records: per-object arrays of ERROR_KEYS and `failed` (N,). Means are over finite errors
    (a miss has infinite errors); `n_failed` counts the misses.
    """
    n = len(records["err_2d"])
    e = {k: np.asarray(records[k], dtype=np.float64) for k in ERROR_KEYS}

    def mean(a):
        ok = np.isfinite(a)
        return float(a[ok].mean()) if ok.any() else math.nan

    add_th = setup.add_threshold
    pose_ok = (e["err_trans"] <= utils.TRANS_THRESHOLD_M) & (e["err_angle"] <= utils.ANGLE_THRESHOLD_DEG)
    return {
        "object": setup.name,
        "n": n,
        "n_failed": int(np.sum(records["failed"])),
        "acc_2d": utils.accuracy(np.sum(e["err_2d"] <= setup.px_threshold), n),
        **{f"acc_2d_{t}px": utils.accuracy(np.sum(e["err_2d"] <= t), n) for t in REPORT_PX_THRESHOLDS},
        "acc_add": utils.accuracy(np.sum(e["err_add"] <= add_th), n),
        "acc_adds": utils.accuracy(np.sum(e["err_adds"] <= add_th), n),
        "acc_5cm5deg": utils.accuracy(np.sum(pose_ok), n),
        "acc_corner": utils.accuracy(np.sum(e["err_corner"] <= setup.px_threshold), n),
        "mean_err_2d": mean(e["err_2d"]),
        "mean_err_add": mean(e["err_add"]),
        "mean_err_adds": mean(e["err_adds"]),
        "mean_err_corner": mean(e["err_corner"]),
        "mean_err_trans": mean(e["err_trans"]),
        "mean_err_angle": mean(e["err_angle"]),
        "px_threshold": setup.px_threshold,
        "add_threshold": add_th,
        "diam": setup.diam,
    }


def threshold_accuracies(err_2d, thresholds=OCCLUSION_PX_THRESHOLDS) -> list[float]:
    """2-D projection accuracy (%) at each pixel threshold: 100 * #(err <= th) / (N + 1e-5)."""
    err = np.asarray(err_2d, dtype=np.float64)
    return [utils.accuracy(np.sum(err <= th), len(err)) for th in thresholds]


def accuracy_curves(records: dict, diam: float, steps: int = CURVE_STEPS) -> dict:
    """Accuracy (%) versus threshold: 2-D projection over 0..50 px, ADD and ADD-S over 0..0.5 diam.

    Returns px (steps,), acc_2d (steps,), add_fraction (steps,), acc_add, acc_adds (steps,).
    """
    n = len(records["err_2d"])

    def acc(errs, thresholds):
        errs = np.asarray(errs, dtype=np.float64)
        return np.array([utils.accuracy(np.sum(errs <= t), n) for t in thresholds])

    px = np.linspace(0.0, PX_CURVE_MAX, steps)
    frac = np.linspace(0.0, ADD_CURVE_MAX, steps)
    return {"px": px, "acc_2d": acc(records["err_2d"], px), "add_fraction": frac,
            "acc_add": acc(records["err_add"], frac * diam), "acc_adds": acc(records["err_adds"], frac * diam)}


def curves_figure(curves: dict, title: str = ""):
    """A matplotlib Figure with the two accuracy-threshold plots of `accuracy_curves`.

    Built without pyplot, so it neither needs nor changes a display backend.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    a.plot(curves["px"], curves["acc_2d"])
    a.axvline(utils.PX_THRESHOLD, ls="--", c="grey")
    a.set(xlabel="2-D projection threshold (px)", ylabel="accuracy (%)", ylim=(0, 101), title="2-D projection")
    b.plot(curves["add_fraction"], curves["acc_add"], label="ADD")
    b.plot(curves["add_fraction"], curves["acc_adds"], label="ADD-S")
    b.axvline(utils.ADD_DIAMETER_FRACTION, ls="--", c="grey")
    b.set(xlabel="threshold (fraction of the diameter)", ylim=(0, 101), title="ADD / ADD-S")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(curves: dict, path, title: str = "") -> None:
    """Save `curves_figure` as a PNG."""
    with atomic_write(path, "wb") as f:
        curves_figure(curves, title).savefig(f, dpi=100, format="png")


# --------------------------------------------------------------------------------------------
# Which box answers each ground-truth object
# --------------------------------------------------------------------------------------------

# A box choice: (output (B, A*(2K+1+C), H, W) float32 raw, the GT rows of each image [(n_b, 2K+3)])
# -> per image, per GT row: (its predicted points (2K,) normalised, or None for no box; det_conf).
BoxChoice = Callable[[torch.Tensor, list], list]


def most_confident_box(num_classes: int = 1, num_keypoints: int = NUM_KEYPOINTS, num_anchors: int = 1,
                       box_rule: str = "max") -> BoxChoice:
    """One object per image (design §4.1, per image: D24): the most confident cell of each image
    answers every GT of that image; box_rule 'vote': its corners from the 3x3 vote (D54)."""
    def choose(output, gts):
        boxes = utils.get_region_boxes(output, num_classes, num_keypoints, num_anchors=num_anchors,
                                       rule=box_rule).cpu().numpy()
        return [[(boxes[b, :2 * num_keypoints], float(boxes[b, 2 * num_keypoints]))] * len(rows)
                for b, rows in enumerate(gts)]
    return choose


def box_of_its_class(num_classes: int, num_keypoints: int = NUM_KEYPOINTS, num_anchors: int = 1,
                     conf_thresh: float = utils.MULTI_CONF_THRESH, box_rule: str = "max") -> BoxChoice:
    """Several objects per image (D63): each GT takes its class's box of `utils.select_multi_boxes`,
    the box detect.py --multi reports; a class with no box above conf_thresh gives a miss."""
    def choose(output, gts):
        boxes = utils.select_multi_boxes(output, conf_thresh, num_classes, num_keypoints, num_anchors, box_rule)
        points, det_conf, kept = (t.cpu().numpy() for t in (boxes.points, boxes.det_conf, boxes.kept))
        out = []
        for b, rows in enumerate(gts):
            cls = [int(c) for c in rows[:, 0]]
            out.append([(points[b, c], float(det_conf[b, c])) if 0 <= c < num_classes and kept[b, c]
                        else (None, math.nan) for c in cls])
        return out
    return choose


def pick_box(boxes: torch.Tensor, class_id: int) -> torch.Tensor | None:
    """Among boxes (n, 2K+3), the first with the highest det_conf of class `class_id`; None if none."""
    of_class = (boxes[:, -1] == class_id).nonzero().flatten()
    if of_class.numel() == 0:
        return None
    return boxes[of_class[boxes[of_class, -3].argmax()]]


def original_multi_box(num_classes: int, num_keypoints: int = NUM_KEYPOINTS, num_anchors: int = 1,
                       conf_thresh: float = utils.MULTI_CONF_THRESH, box_rule: str = "max",
                       default_class: int = 0) -> BoxChoice:
    """The original's choice (design §4.2, §9.6): the boxes of `utils.get_multi_region_boxes`
    (score det_conf * class prob, the fallback box for the image's first GT class; `default_class`
    for an image without GT), then for each GT the highest-det_conf box of its class (`pick_box`)."""
    def choose(output, gts):
        first = [int(rows[0, 0]) if len(rows) else default_class for rows in gts]
        boxes = utils.get_multi_region_boxes(output, conf_thresh, num_classes, num_keypoints, (), num_anchors, first,
                                             only_objectness=0, carry_class_max=False, rule=box_rule)
        out = []
        for b, rows in enumerate(gts):
            picks = [pick_box(boxes[b], int(c)) for c in rows[:, 0]]
            out.append([(None, math.nan) if p is None else
                        (p[:2 * num_keypoints].cpu().numpy(), float(p[2 * num_keypoints])) for p in picks])
        return out
    return choose


# --------------------------------------------------------------------------------------------
# The evaluation loop
# --------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # otherwise the forward time is only the kernel launch (D33)
        torch.cuda.synchronize(device)


def inference_net(model, fuse: bool = True):
    """(net, channels_last): what a test forward runs for `model`. A Darknet not yet fused becomes its
    BN-folded channels-last `inference_copy` (D57), whose inputs must then be made channels-last;
    anything else (fuse=False, a stand-in module) runs as it is."""
    if fuse and hasattr(model, "inference_copy") and not getattr(model, "fused", False):
        return model.inference_copy(channels_last=True), True
    return model, False


def gt_rows(targets: torch.Tensor, num_keypoints: int = NUM_KEYPOINTS) -> list[np.ndarray]:
    """targets (B, 50*(2K+3)) -> per image its GT rows (n_b, 2K+3): the rows before the first
    empty slot (x0 == 0 ends the objects, design §3.1)."""
    rows = targets.reshape(len(targets), -1, 2 * num_keypoints + 3).numpy()
    return [r[: int(np.argmin(np.r_[r[:, 1] != 0, False]))] for r in rows]


@torch.inference_mode()
def evaluation_loop(model, loader, setup: EvalSetup, choose: BoxChoice, device="cpu",
                    num_keypoints: int = NUM_KEYPOINTS, progress: bool = False, amp: bool = False,
                    fuse: bool = True) -> tuple[dict, dict]:
    """Run the model over a test loader and score every GT object with the box `choose` gives it
    (design §9.1). The one loop of `evaluate` and `evaluate_object`.

    loader yields (images (B, 3, H, W) in [0, 1], targets (B, 50*21) normalised label rows). fuse: a
    Darknet runs as its BN-folded channels-last `inference_copy` (D57); the model itself is left as
    it was (its training mode restored). Returns (records, timing):
        records: per-GT arrays: ERROR_KEYS (N,), failed (N,), R_gt/R_pr (N, 3, 3), t_gt/t_pr (N, 3)
                 metres, gt_px/pr_px (N, K, 2) pixels (NaN: no box), conf (N,) the box's det_conf,
                 image_index (N,);
        timing: `time_<to_device|forward|decode|eval|prediction>` (seconds per image, means over
                all images, CUDA synchronised; decode = the box choice), `images`, `images_per_s`.
    Raises ValueError if the loader yields no image.
    """
    device = torch.device(device)
    K = num_keypoints
    given, was_training = model, model.training
    model.eval()
    model, channels_last = inference_net(model, fuse)
    scale = np.array([setup.im_width, setup.im_height], dtype=np.float32)
    nan_pred = np.full((K, 2), np.nan, dtype=np.float32)
    records = {k: [] for k in RECORD_KEYS}
    timers = dict.fromkeys(TIMER_KEYS, 0.0)
    n_images = 0
    batches = errors.start_iteration(loader)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=len(loader) if hasattr(loader, "__len__") else None,
                       desc=f"eval {setup.name}", unit="batch", leave=False)
    t_start = time.perf_counter()
    try:
        for images, targets in batches:
            gts = gt_rows(targets, K)
            t0 = time.perf_counter()
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            _sync(device)
            t1 = time.perf_counter()
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                output = model(images)
            _sync(device)
            t2 = time.perf_counter()
            predictions = choose(output.float(), gts)
            t3 = time.perf_counter()
            for b, (rows, preds) in enumerate(zip(gts, predictions)):
                for row, (points, conf) in zip(rows, preds):
                    # labels and predictions pass through float32 before de-normalisation (design §9.1)
                    gt_px = row[1: 1 + 2 * K].astype(np.float32).reshape(-1, 2) * scale
                    pr_px = nan_pred if points is None else points.astype(np.float32).reshape(-1, 2) * scale
                    res = pose_errors(gt_px, pr_px, setup)
                    for k in (*ERROR_KEYS, "failed", *POSE_KEYS):
                        records[k].append(res[k])
                    records["gt_px"].append(gt_px)
                    records["pr_px"].append(pr_px)
                    records["conf"].append(conf)
                    records["image_index"].append(n_images + b)
            n_images += len(images)
            t4 = time.perf_counter()
            for k, dt in zip(TIMER_KEYS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                timers[k] += dt
    finally:
        if was_training:
            given.train()
    total = time.perf_counter() - t_start
    if n_images == 0:
        raise ValueError(f"{setup.valid_list}: the test list is empty")
    shapes = {"R_gt": (3, 3), "R_pr": (3, 3), "t_gt": (3,), "t_pr": (3,), "gt_px": (K, 2), "pr_px": (K, 2)}
    records = {k: np.asarray(v).reshape(-1, *shapes.get(k, ())) for k, v in records.items()}
    timing = {f"time_{k}": v / n_images for k, v in timers.items()}
    timing["time_prediction"] = timing["time_to_device"] + timing["time_forward"] + timing["time_decode"]
    timing["images"] = n_images
    timing["images_per_s"] = n_images / total if total > 0 else math.inf
    return records, timing


def evaluate(model, loader, setup: EvalSetup, device="cpu", num_classes: int = 1, num_keypoints: int = 9,
             num_anchors: int = 1, progress: bool = False, amp: bool = False, box_rule: str = "max",
             fuse: bool = True) -> tuple[dict, dict]:
    """Score one object's test split (design §9.1): the most confident box of each image (design
    §4.1, per image; box_rule 'vote': D54) is the prediction for each of its GT objects.

    Returns (summary, records): summary = `summarize` plus the timing of `evaluation_loop`
    (`time_<to_device|forward|decode|eval|prediction>`, `images`, `images_per_s`); records as
    `evaluation_loop`'s. Raises ValueError if the loader yields no image.
    """
    choose = most_confident_box(num_classes, num_keypoints, num_anchors, box_rule)
    records, timing = evaluation_loop(model, loader, setup, choose, device, num_keypoints, progress, amp, fuse)
    summary = summarize(records, setup)
    summary.update(timing)
    return summary, records


def evaluate_object(model, loader, obj: OcclusionObject, device="cpu", conf_thresh: float = utils.MULTI_CONF_THRESH,
                    progress: bool = False, box_rule: str = "max", fuse: bool = True,
                    select: str = "class") -> tuple[dict, dict]:
    """Score one object's occlusion test scenes (design §9.6).

    loader yields (images (B, 3, H, W), targets (B, 50*21) label rows in the design §9.2 order).
    model: a network (or stand-in) with num_keypoints, num_classes and num_anchors. select 'class'
    (D63): each GT takes the box of its class of `utils.select_multi_boxes`, as detect.py --multi;
    'original': the original's boxes and fallback (`original_multi_box`). box_rule 'vote': the
    corners from the 3x3 vote (D54). A GT with no box of its class is a miss.
    Returns (summary, records) as `evaluate`, the summary with `class_id`, `thresholds` and `acc_px`
    (accuracy at each of OCCLUSION_PX_THRESHOLDS). Raises ValueError for a class id the network
    does not have, an empty test list or one without a label row.
    """
    K, C, A = model.num_keypoints, model.num_classes, model.num_anchors
    if not 0 <= obj.class_id < C:
        raise ValueError(f"object {obj.name!r} has class id {obj.class_id} but the network has {C} classes")
    if select == "class":
        choose = box_of_its_class(C, K, A, conf_thresh, box_rule)
    elif select == "original":
        choose = original_multi_box(C, K, A, conf_thresh, box_rule, default_class=obj.class_id)
    else:
        raise ValueError(f"unknown box selection {select!r}; expected one of {MULTI_SELECTIONS}")
    setup = obj.setup
    records, timing = evaluation_loop(model, loader, setup, choose, device, K, progress, fuse=fuse)
    if not len(records["err_2d"]):
        raise ValueError(f"{setup.valid_list}: no test image of {obj.name!r} has a label row")
    summary = summarize(records, setup)
    summary.update(timing)
    summary.update(class_id=obj.class_id, thresholds=list(OCCLUSION_PX_THRESHOLDS),
                   acc_px=threshold_accuracies(records["err_2d"]))
    return summary, records


# --------------------------------------------------------------------------------------------
# Reports and files
# --------------------------------------------------------------------------------------------

def report(summary: dict, file=None) -> None:
    """Print the design §9.4 block (timings as means over all images) with the extra metrics."""
    s = summary
    log("-----------------------------------", file)
    log("  tensor to device : %f" % s["time_to_device"], file)
    log("    forward pass   : %f" % s["time_forward"], file)
    log("get_region_boxes   : %f" % s["time_decode"], file)
    log(" prediction time   : %f" % s["time_prediction"], file)
    log("            eval   : %f" % s["time_eval"], file)
    log("-----------------------------------", file)
    log("   Results of %s" % s["object"], file)
    log("   Acc using %g px 2D Projection = %.2f%%" % (s["px_threshold"], s["acc_2d"]), file)
    for t in REPORT_PX_THRESHOLDS:  # the other thresholds, one line each in the same form
        if t != s["px_threshold"] and f"acc_2d_{t}px" in s:
            log("   Acc using %g px 2D Projection = %.2f%%" % (t, s[f"acc_2d_{t}px"]), file)
    log("   Acc using %f vx 3D Transformation = %.2f%%" % (s["add_threshold"], s["acc_add"]), file)
    log("   Acc using 5 cm 5 degree metric = %.2f%%" % s["acc_5cm5deg"], file)
    log("   Acc using %f vx ADD-S = %.2f%%" % (s["add_threshold"], s["acc_adds"]), file)
    log("   Acc using %g px mean corner error = %.2f%%" % (s["px_threshold"], s["acc_corner"]), file)
    log("   Mean 2D pixel error is %f, Mean vertex error is %f, mean corner error is %f"
        % (s["mean_err_2d"], s["mean_err_add"], s["mean_err_corner"]), file)
    log("   Translation error: %f m, angle error: %f degree, pixel error: % f pix"
        % (s["mean_err_trans"], s["mean_err_angle"], s["mean_err_2d"]), file)
    if s["n_failed"]:
        log("   %d of %d objects counted as misses (non-finite network output or failed PnP)"
            % (s["n_failed"], s["n"]), file)
    log("   %d images in %.1f s: %.1f images/s end to end"
        % (s["images"], s["images"] / s["images_per_s"], s["images_per_s"]), file)
    if "test_size" in s:
        log("   input %dx%d, box rule %s" % (*s["test_size"], s.get("box_rule", "max")), file)


MEAN_KEYS = ("acc_2d", "acc_add", "acc_adds", "acc_5cm5deg", "acc_corner", "mean_err_2d", "mean_err_add",
             "mean_err_adds", "mean_err_corner", "mean_err_trans", "mean_err_angle", "images_per_s")
TABLE_COLUMNS = ("object", "n", "acc_2d", "acc_add", "acc_adds", "acc_5cm5deg", "acc_corner", "mean_err_2d",
                 "mean_err_angle", "n_failed")


def mean_row(summaries: list) -> dict:
    """The paper's mean row: the unweighted mean of each object's accuracies and errors."""
    row = {k: float(np.mean([s[k] for s in summaries])) for k in MEAN_KEYS}
    row.update(object="mean", n=int(sum(s["n"] for s in summaries)),
               n_failed=int(sum(s["n_failed"] for s in summaries)))
    return row


def print_table(summaries: list, file=None) -> None:
    """A markdown table: one row per object, and the mean row when there are several."""
    file = file or sys.stdout
    print("| " + " | ".join(TABLE_COLUMNS) + " |", file=file)
    print("|" + "---|" * len(TABLE_COLUMNS), file=file)
    rows = summaries + ([mean_row(summaries)] if len(summaries) > 1 else [])
    for s in rows:
        cells = (str(s[c]) if c in ("object", "n", "n_failed") else f"{s[c]:.2f}" for c in TABLE_COLUMNS)
        print("| " + " | ".join(cells) + " |", file=file)


def occlusion_report(summary: dict, file=None) -> None:
    """The original's per-threshold lines (design §9.6), then ADD and 5cm5deg."""
    log(f"   Results of {summary['object']} (class {summary['class_id']}, {summary['n']} objects)", file)
    for th, acc in zip(summary["thresholds"], summary["acc_px"]):
        log(f"   Acc using {th} px 2D Projection = {acc:.2f}%", file)
    log(f"   Acc using {summary['add_threshold']:f} vx 3D Transformation = {summary['acc_add']:.2f}%", file)
    log(f"   Acc using 5 cm 5 degree metric = {summary['acc_5cm5deg']:.2f}%", file)
    if summary["n_failed"]:
        log(f"   {summary['n_failed']} of {summary['n']} objects counted as misses (no box of the class, "
            f"non-finite output or failed PnP)", file)


OCCLUSION_TABLE_EXTRA = (("ADD", "acc_add"), ("5cm5deg", "acc_5cm5deg"), ("mean px err", "mean_err_2d"))


def occlusion_mean_row(summaries: list) -> dict:
    """The unweighted mean over objects of every accuracy and of the mean pixel error."""
    row = {"object": "mean", "n": int(sum(s["n"] for s in summaries)),
           "acc_px": list(np.mean([s["acc_px"] for s in summaries], axis=0))}
    for _, key in OCCLUSION_TABLE_EXTRA:
        row[key] = float(np.mean([s[key] for s in summaries]))
    return row


def print_occlusion_table(summaries: list, file=None) -> None:
    """A markdown table: one row per object (accuracy % at every threshold, ADD, 5cm5deg) and the mean."""
    file = file or sys.stdout
    head = ["object", "n", *(f"{th} px" for th in OCCLUSION_PX_THRESHOLDS),
            *(name for name, _ in OCCLUSION_TABLE_EXTRA)]
    print("| " + " | ".join(head) + " |", file=file)
    print("|" + "---|" * len(head), file=file)
    for s in summaries + ([occlusion_mean_row(summaries)] if len(summaries) > 1 else []):
        cells = [s["object"], str(s["n"]), *(f"{a:.2f}" for a in s["acc_px"]),
                 *(f"{s[k]:.2f}" for _, k in OCCLUSION_TABLE_EXTRA)]
        print("| " + " | ".join(cells) + " |", file=file)


def _json_safe(value):
    """Plain JSON: numpy scalars to Python numbers, inf/NaN to null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_summaries_json(path, summaries: list, mean_row=mean_row) -> None:
    """The `--json` file of valid.py and valid_multi.py: {"objects": the summaries, "mean": their
    `mean_row` (None for one object)}, plain JSON (`_json_safe`), written whole."""
    payload = {"objects": summaries, "mean": mean_row(summaries) if len(summaries) > 1 else None}
    write_text(path, json.dumps(_json_safe(payload), indent=2))


def save_predictions(path, records: dict, image_paths=None) -> None:
    """Per-object R, t, 2-D points, errors (and image paths) as one `.npz` (design §9.5, fixed
    naming: every array is indexed like `image_index`)."""
    arrays = {k: records[k] for k in RECORD_KEYS}
    if image_paths is not None:
        arrays["image"] = np.array([str(image_paths[i]) for i in records["image_index"]], dtype=str)
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


# --------------------------------------------------------------------------------------------
# Checks before a run: the test lists (the network and its weights: model_loading)
# --------------------------------------------------------------------------------------------

def check_test_list(setup: EvalSetup, datacfg, label_width: int = 2 * NUM_KEYPOINTS + 3) -> list[str]:
    """The problems of a test list before scoring it (`preflight.check_image_list`: every image's
    header and pixels, of the `.data` width and height, and its label file), at most
    `preflight.MAX_LISTED` lines; [] when it can be scored. Warns (one line each) about empty label
    files (they add no object to the scores), label points far outside the image and entries
    listed twice. valid.py and train.py --also-valid check their lists here."""
    scan = preflight.check_image_list(setup.valid_list, train=False, label_width=label_width,
                                      size=(setup.im_width, setup.im_height),
                                      size_from=f"the width and height of {datacfg}")
    if scan.problems:
        return preflight.summarise(scan.problems)
    if scan.empty:
        warnings.warn(f"{setup.valid_list}: {len(scan.empty)} of {len(scan.paths)} test images have an empty "
                      f"label file (first: {scan.empty[0]}); they have no object to score", stacklevel=3)
    preflight.warn_list_oddities(setup.valid_list, scan, "scored")
    return []


def check_occlusion_test_images(objects) -> None:
    """Every object's test images (headers, `preflight.check_image_list`) and `labels_occlusion`
    files, before anything runs. Raises InputError listing the problems (a missing label file is
    named), and for an object whose label files are all empty (nothing to score); warns when only
    some are empty."""
    problems = []
    for o in objects:
        scan = preflight.check_image_list(o.setup.valid_list, train=False,
                                          size=(o.setup.im_width, o.setup.im_height),
                                          size_from=f"the width and height of {o.setup.extra.get('datacfg')}",
                                          label_of=lambda p, name=o.name: occlusion_label_path(p, name))
        problems.extend(preflight.summarise(scan.problems))
        if scan.problems:
            continue
        empty = len(scan.empty)
        if empty == len(scan.paths):
            problems.append(f"{o.setup.valid_list}: all {empty} labels_occlusion files of {o.name!r} are empty "
                            f"(first: {scan.empty[0]}); there is no object to score")
        elif empty:
            warnings.warn(f"{o.setup.valid_list}: {empty} of {len(scan.paths)} labels_occlusion files of "
                          f"{o.name!r} are empty (first: {scan.empty[0]}); those images add nothing", stacklevel=2)
        preflight.warn_list_oddities(o.setup.valid_list, scan, "scored")
    if problems:
        raise InputError("\n  ".join(problems))
