"""Score pose weights on a LINEMOD test split (design §9): 2-D projection, ADD, ADD-S, 5cm5deg.

    python valid.py --datacfg cfg/ape.data --modelcfg cfg/yolo-pose.cfg --weightfile backup/ape/model_backup.weights
    python valid.py cfg/ape.data cfg/yolo-pose.cfg backup/ape/model_backup.weights      # positional form
    python valid.py --all cfg --modelcfg cfg/yolo-pose.cfg --weightfile 'backup/{name}/model_backup.weights'

Reading order: `load_eval_setup` (object, camera, thresholds) -> `pose_errors` (the design §9.1 errors of
one object from its 9 GT and 9 predicted points) -> `summarize` (the design §9.3 accuracies and means) ->
`evaluate` (the loop over a test loader; train.py calls it for its periodic test) -> the CLI.

Differences from the original valid.py, all listed in docs/design.md design §11: the box is chosen per image, so
batches > 1 work (D24); the ADD threshold uses the `.data` diameter unless `--diam mesh`
(D25); the angle is clipped (D26); timings are means over all images with CUDA
synchronisation (D33); the CSV is appended with a stable header (D34). A non-finite
network output or a failed PnP is a miss (counted and reported), never a crash.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

import cli
import model_info
import utils
from errors import CfgError, DataCfgError, FlagError, InputError, MeshError, WeightsError, run_cli
from linemod_format import NUM_KEYPOINTS, append_text, atomic_write, write_text
from MeshPly import MeshPly

DEFAULT_DATACFG = "cfg/ape.data"
DEFAULT_MODELCFG = "cfg/yolo-pose.cfg"
DEFAULT_WEIGHTFILE = "backup/{name}/model_backup.weights"  # the MS-released models (design §3.4)
CSV_HEADER = ("model", "object", "2d_projection", "3d_transformation")  # design §9.5, D34
DEFAULT_CSV, DISTILLED_CSV = "valid_metrics.csv", "valid_metrics_distilling.csv"  # the fork's names
DIAM_SOURCES = ("data", "mesh")
# accuracy-versus-threshold curves
PX_CURVE_MAX = 50.0  # pixels
ADD_CURVE_MAX = 0.5  # fraction of the diameter
CURVE_STEPS = 101
REPORT_PX_THRESHOLDS = (5, 10, 15, 20, 30)  # 2-D projection accuracy lines of the report

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


def load_eval_setup(datacfg, diam_source: str = "data", pnp_method: str = "iterative") -> EvalSetup:
    """Read a `.data` file and its mesh, checking every file the evaluation reads.

    diam_source: 'data' uses the file's `diam` (the mesh's when the key is missing); 'mesh' uses
    the mesh diameter, as the original valid.py ends up doing (design §9.3, D25).
    Raises DataCfgError (or MeshError) naming the `.data` file (or mesh) and what is wrong.
    """
    if diam_source not in DIAM_SOURCES:
        raise ValueError(f"diam source must be one of {DIAM_SOURCES}, not {diam_source!r}")
    if pnp_method not in utils.PNP_METHODS:
        raise ValueError(f"unknown PnP method {pnp_method!r}; choose one of {sorted(utils.PNP_METHODS)}")
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


# --------------------------------------------------------------------------------------------
# Per-object pose errors (design §9.1)
# --------------------------------------------------------------------------------------------

def solve_pose(points3d: np.ndarray, points_px: np.ndarray, K: np.ndarray, method: str = "iterative"):
    """(R (3, 3), t (3,) metres) by PnP from 3-D points (N, 3) and pixels (N, 2); None when the
    points are not finite or PnP fails. valid.py and detect.py both solve every pose here."""
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


@torch.inference_mode()
def evaluate(model, loader, setup: EvalSetup, device="cpu", num_classes: int = 1, num_keypoints: int = 9,
             num_anchors: int = 1, progress: bool = False, amp: bool = False, box_rule: str = "max",
             fuse: bool = True) -> tuple[dict, dict]:
    """Run the model over a test loader and score every GT object (design §9.1).

    loader yields (images (B, 3, H, W) in [0, 1], targets (B, 50*21) normalised label rows).
    The most confident box of each image (design §4.1, per image; box_rule 'vote': D54) is the
    prediction for each of its GT objects. fuse: a Darknet runs as its BN-folded channels-last
    `inference_copy` (D57); the model itself is left as it was. Returns (summary, records):
        summary: `summarize` plus `time_<to_device|forward|decode|eval|prediction>` (seconds per
                 image, means over all images, CUDA synchronised), `images`, `images_per_s`;
        records: per-object arrays: ERROR_KEYS (N,), failed (N,), R_gt/R_pr (N, 3, 3),
                 t_gt/t_pr (N, 3) metres, gt_px/pr_px (N, 9, 2) pixels, conf (N,), image_index (N,).
    Raises ValueError if the loader yields no image.
    """
    device = torch.device(device)
    given, was_training = model, model.training
    model.eval()
    model, channels_last = inference_net(model, fuse)
    scale = np.array([setup.im_width, setup.im_height], dtype=np.float32)
    records = {k: [] for k in RECORD_KEYS}
    timers = dict.fromkeys(TIMER_KEYS, 0.0)
    n_images = 0
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"eval {setup.name}", unit="batch", leave=False)
    t_start = time.perf_counter()
    try:
        for images, targets in batches:
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
            boxes = utils.get_region_boxes(output.float(), num_classes, num_keypoints,
                                           num_anchors=num_anchors, rule=box_rule).cpu().numpy()
            t3 = time.perf_counter()
            rows = targets.reshape(len(images), -1, 2 * num_keypoints + 3).numpy()  # 21-number rows (design §3.1)
            for b in range(len(images)):
                # predictions and labels pass through float32 before de-normalisation (design §9.1)
                pr_px = boxes[b, : 2 * num_keypoints].astype(np.float32).reshape(-1, 2) * scale
                for row in rows[b]:
                    if row[1] == 0:  # the first empty slot ends the objects (design §3.1)
                        break
                    gt_px = row[1: 1 + 2 * num_keypoints].astype(np.float32).reshape(-1, 2) * scale
                    res = pose_errors(gt_px, pr_px, setup)
                    for k in (*ERROR_KEYS, "failed", *POSE_KEYS):
                        records[k].append(res[k])
                    records["gt_px"].append(gt_px)
                    records["pr_px"].append(pr_px)
                    records["conf"].append(float(boxes[b, 2 * num_keypoints]))
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
    shapes = {"R_gt": (3, 3), "R_pr": (3, 3), "t_gt": (3,), "t_pr": (3,),
              "gt_px": (num_keypoints, 2), "pr_px": (num_keypoints, 2)}
    records = {k: np.asarray(v).reshape(-1, *shapes.get(k, ())) for k, v in records.items()}
    summary = summarize(records, setup)
    summary.update({f"time_{k}": v / n_images for k, v in timers.items()})
    summary["time_prediction"] = summary["time_to_device"] + summary["time_forward"] + summary["time_decode"]
    summary["images"] = n_images
    summary["images_per_s"] = n_images / total if total > 0 else math.inf
    return summary, records


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


# --------------------------------------------------------------------------------------------
# Files written by the CLI
# --------------------------------------------------------------------------------------------

def csv_columns(path, header=CSV_HEADER) -> list | None:
    """The columns `append_csv` will write to `path`: the file's own order, or None for a new
    file. Raises InputError when the file's header has other columns than `header`."""
    path = Path(path)
    if not (path.exists() and path.stat().st_size > 0):
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            existing = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read its CSV header ({exc}); write to another file") from None
    if sorted(existing) != sorted(header):
        raise InputError(f"{path}: its header {existing} has other columns than {list(header)}; "
                         "write to another file")
    return existing


def append_csv(path, row: dict, header=CSV_HEADER) -> None:
    """Append one row under a header written once, when the file is new (D34).

    An existing file keeps its own column order (the fork's CSVs have the columns sorted);
    one whose header has other columns than `header` raises InputError (`csv_columns`).
    """
    path = Path(path)
    fields = csv_columns(path, header)
    new = fields is None
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = list(header)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    if new:
        w.writeheader()
    w.writerow(row)
    append_text(path, buf.getvalue())  # the new file replaces the old: never a torn row (design D60)


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


def save_predictions(path, records: dict, image_paths=None) -> None:
    """Per-object R, t, 2-D points, errors (and image paths) as one `.npz` (design §9.5, fixed
    naming: every array is indexed like `image_index`)."""
    arrays = {k: records[k] for k in RECORD_KEYS}
    if image_paths is not None:
        arrays["image"] = np.array([str(image_paths[i]) for i in records["image_index"]], dtype=str)
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


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


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

POSITIONAL = ("datacfg", "modelcfg", "weightfile")  # the original's positional form


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0], epilog=__doc__.split("\n\n")[1])
    cli.add_positional(p, POSITIONAL)
    cli.add_datacfg(p, help=f"object .data file (default {DEFAULT_DATACFG})")
    cli.add_model(p, weights="weightfile", cfg_help=f"network cfg (default {DEFAULT_MODELCFG})",
                  weights_help=f"darknet weights; '{{name}}' is replaced by the object name "
                               f"(default {DEFAULT_WEIGHTFILE})")
    p.add_argument("--backupdir", default=None,
                   help="the fork's flag: output folder for the curves when no --curves/--json/--csv is given")
    p.add_argument("--pretrain_num_epochs", type=int, default=None, help="accepted for the fork's scripts; unused")
    cli.add_distiled(p, help=f"1: --csv writes {DISTILLED_CSV} (the fork's name)")
    cli.add_device(p)
    cli.add_batch_size(p, default=1, help="images per forward pass (the box is chosen per image)")
    cli.add_workers(p, default=0)
    cli.add_sizes(p, test=True, test_help="square input size, a multiple of 32 (default: the size the weights "
                                          "were trained for, model_info.json beside them, else the cfg "
                                          "test_width x test_height)")
    cli.add_box_rule(p)
    p.add_argument("--all", nargs="?", const="cfg", default=None, metavar="DIR",
                   help="score every .data file in DIR (default cfg/; *occlusion* and *_fresh* skipped): one row each "
                        "and the mean")
    p.add_argument("--skip-missing", action="store_true", help="with --all: skip objects whose weights file is missing")
    p.add_argument("--diam", choices=DIAM_SOURCES, default="data",
                   help="ADD threshold diameter: the .data value (default) or the mesh's (the original valid.py, D25)")
    cli.add_pnp(p)
    cli.add_resample(p, "test-image resize filter")
    p.add_argument("--amp", action="store_true", help="autocast on CUDA")
    p.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="write DIR/predictions_<name>.npz: per-image R, t, 2-D points, errors, image paths")
    p.add_argument("--csv", nargs="?", const=DEFAULT_CSV, default=None, metavar="FILE",
                   help=f"append model, object, 2d_projection, 3d_transformation (default file {DEFAULT_CSV})")
    p.add_argument("--json", default=None, metavar="FILE", help="write every summary (and the mean) as JSON")
    p.add_argument("--curves", default=None, metavar="DIR",
                   help="folder for curves_<name>.png (default: next to --json, else --csv, else --backupdir, "
                        "else the weights file)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-object report, only the table")
    return p


resolve_device = cli.resolve_device  # train.py and detect.py pick devices through valid.resolve_device


def check_model_cfg(modelcfg):
    """The network of `modelcfg` (untrained), after checking that its output has the
    A*(2K+1+C) channels its `[region]` and `num_keypoints` describe (design §4). Raises CfgError."""
    from darknet import Darknet

    if not Path(modelcfg).is_file():
        raise CfgError(f"model cfg not found: {modelcfg}")
    model = Darknet(modelcfg)
    channels = next(s.out_shape[0] for s in reversed(model.specs) if s.kind not in ("region", "cost"))
    expect = model.num_anchors * (2 * model.num_keypoints + 1 + model.num_classes)
    if channels != expect:
        raise CfgError(f"{modelcfg}: the output has {channels} channels; [region] num={model.num_anchors}, "
                       f"classes={model.num_classes} and num_keypoints={model.num_keypoints} need {expect}")
    return model


def check_weights(model, modelcfg, weightfile) -> None:
    """Raise WeightsError unless `weightfile` holds exactly the floats `model` (built from
    `modelcfg`) stores, all of them usable (`Darknet.check_weights`)."""
    from darknet import read_weights_file

    if not Path(weightfile).is_file():
        raise WeightsError(f"weights file not found: {weightfile}")
    _, _, floats = read_weights_file(weightfile)
    need = model.num_stored_floats()
    if floats.size != need:  # a short file would otherwise load silently up to a layer boundary (design §2.2)
        raise WeightsError(f"{weightfile} does not fit {modelcfg}: the file holds {floats.size} floats, "
                           f"the cfg needs {need} (weights of another network, or a backbone-only file?)")
    model.check_weights(weightfile)


def load_model(modelcfg, weightfile, device):
    """The network of `modelcfg` with all of `weightfile` loaded, in eval mode on `device`.

    Raises CfgError / WeightsError (see `check_model_cfg`, `check_weights`) before loading.
    """
    model = check_model_cfg(modelcfg)
    check_weights(model, modelcfg, weightfile)
    model.load_weights(weightfile)
    return model.to(device).eval()


@dataclass
class Job:
    """One object to score: its `.data` file, setup and weights file (all checked)."""
    datacfg: Path
    setup: EvalSetup
    weightfile: str


def check_test_list(setup: EvalSetup, datacfg, label_width: int = 2 * NUM_KEYPOINTS + 3) -> list[str]:
    """The problems of a test list before scoring it (`preflight.check_image_list`: every image's
    header and pixels, of the `.data` width and height, and its label file), at most
    `preflight.MAX_LISTED` lines; [] when it can be scored. Warns (one line each) about empty label
    files (they add no object to the scores), label points far outside the image and entries
    listed twice. valid.py and train.py --also-valid check their lists here."""
    import preflight

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


def plan_jobs(args) -> list[Job]:
    """Every object to score, with every input checked before anything runs.

    Raises InputError listing all the problems found: besides the files, every test image's
    header (`preflight.check_image_list`: a regular file, its size the `.data` width and height,
    8-bit, no EXIF rotation, within the pixel cap). Warns (one line per list) about test images
    whose label file is empty (they add no object to the scores), label points far outside the
    image and entries listed twice (`check_test_list`).
    """
    if args.all:
        datacfgs = sorted(p for p in Path(args.all).glob("*.data") if not skipped_by_all(p))
        if not datacfgs:
            raise InputError(f"--all {args.all}: no .data files there")
    else:
        datacfgs = [Path(args.datacfg)]
    model = check_model_cfg(args.modelcfg)  # untrained: only to check each weights file against it
    label_width = 2 * getattr(model, "num_keypoints", NUM_KEYPOINTS) + 3
    jobs, problems = [], []
    for datacfg in datacfgs:
        try:
            setup = load_eval_setup(datacfg, diam_source=args.diam, pnp_method=args.pnp)
            weightfile = args.weightfile.replace("{name}", setup.name)
            if args.all and args.skip_missing and not Path(weightfile).is_file():
                log(f"skipping {setup.name}: weights file not found: {weightfile}")
                continue
            check_weights(model, args.modelcfg, weightfile)
            test_list_problems = check_test_list(setup, datacfg, label_width)
            if test_list_problems:
                problems.extend(test_list_problems)
                continue
            jobs.append(Job(datacfg, setup, weightfile))
        except (OSError, ValueError) as exc:  # InputError is a ValueError; a missing image an OSError
            problems.append(str(exc))
    if problems:
        raise InputError("\n  ".join(dict.fromkeys(problems)))
    if not jobs:
        raise InputError(f"--all {args.all}: no object has its weights file ({args.weightfile})")
    return jobs


def skipped_by_all(datacfg: Path) -> bool:
    """--all scores each object once: the OCCLUSION files and the fresh test sets
    (`<obj>_fresh<S>.data`, another test list of an object already there) are left out."""
    return "occlusion" in datacfg.name or "_fresh" in datacfg.stem


def score_object(job: Job, args, device) -> tuple[dict, dict]:
    """Evaluate one object's test split; prints the design §9.4 report unless --quiet."""
    import dataset

    setup = job.setup
    model = load_model(args.modelcfg, job.weightfile, device)
    size, rule = model_info.resolve(args, job.weightfile, args.modelcfg, (model.test_width, model.test_height))
    test_set = dataset.listDataset(setup.valid_list, train=False, shape=size, resample=args.resample)
    if not args.quiet:
        log(f"Testing {setup.name}...")
        log(f"Number of test samples: {len(test_set)}")
    loader = dataset.make_test_loader(test_set, batch_size=args.batch_size, workers=args.workers)
    summary, records = evaluate(model, loader, setup, device, num_classes=model.num_classes,
                                num_keypoints=model.num_keypoints, num_anchors=model.num_anchors,
                                progress=not args.quiet, amp=args.amp, box_rule=rule)
    summary.update(model=str(args.modelcfg), weights=job.weightfile, test_size=list(size), box_rule=rule,
                   datacfg=str(job.datacfg),
                   batch_size=args.batch_size, device=str(device))
    records["image_paths"] = test_set.paths
    if not args.quiet:
        report(summary)
    return summary, records


def resolve_args(args) -> argparse.Namespace:
    """Fill the positional form and the defaults; check the flags that need no file."""
    cli.merge_positional(args, POSITIONAL)
    if args.all and args.datacfg:
        raise FlagError("give either --all DIR or a data cfg, not both")
    args.datacfg = args.datacfg or DEFAULT_DATACFG
    args.modelcfg = args.modelcfg or DEFAULT_MODELCFG
    args.weightfile = args.weightfile or DEFAULT_WEIGHTFILE
    cli.check_positive("--batch-size", args.batch_size)
    cli.check_positive("--workers", args.workers, minimum=0)
    cli.check_size("--test-size", args.test_size)
    return args


def curves_dir(args, weightfile: str) -> Path:
    """Where the accuracy-curve PNGs go: next to the report files, else the backup/weights folder."""
    if args.curves:
        return Path(args.curves)
    for f in (args.json, args.csv):
        if f:
            return Path(f).parent
    return Path(args.backupdir) if args.backupdir else Path(weightfile).parent


def check_outputs(args, csv_path) -> None:
    """Every file the run will write, checked before the evaluation (OutputPathError naming the
    flag): --json and --csv are files in writable folders, --save-predictions a writable folder;
    a CSV with other columns is refused here too, not after the first object."""
    if args.json:
        cli.check_output_file("--json", args.json)
    if csv_path:
        cli.check_output_file("--csv", csv_path)
        csv_columns(csv_path)
    if args.save_predictions:
        cli.check_output_dir("--save-predictions", args.save_predictions)


def main(args) -> list:
    """Score every object; return their summaries. Bad inputs stop here with an InputError."""
    try:
        args = resolve_args(args)
        device = resolve_device(args.device)
        cli.warn_amp_unused(args.amp, device)
        csv_path = None
        if args.csv:
            csv_path = Path(args.csv)
            if args.distiled and csv_path.name == DEFAULT_CSV:
                csv_path = csv_path.with_name(DISTILLED_CSV)
        check_outputs(args, csv_path)
        jobs = plan_jobs(args)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot evaluate:\n  {exc}") from None
    summaries = []
    for job in jobs:
        summary, records = score_object(job, args, device)
        summaries.append(summary)
        name = job.setup.name
        out = curves_dir(args, job.weightfile)
        try:
            out.mkdir(parents=True, exist_ok=True)
            plot_curves(accuracy_curves(records, job.setup.diam), out / f"curves_{name}.png",
                        title=f"{name}: {Path(args.modelcfg).stem}")
            summary["curves"] = str(out / f"curves_{name}.png")
        except OSError as exc:  # e.g. released weights in a read-only folder: the scores still count
            log(f"could not write the accuracy curves into {out}: {exc}")
        if args.save_predictions:
            d = Path(args.save_predictions)
            d.mkdir(parents=True, exist_ok=True)
            save_predictions(d / f"predictions_{name}.npz", records, records["image_paths"])
        if csv_path:
            append_csv(csv_path, {"model": Path(args.modelcfg).stem, "object": name,
                                  "2d_projection": summary["acc_2d"], "3d_transformation": summary["acc_add"]})
    print_table(summaries)
    if args.json:
        payload = {"objects": summaries, "mean": mean_row(summaries) if len(summaries) > 1 else None}
        write_text(args.json, json.dumps(_json_safe(payload), indent=2))
    return summaries


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)))
