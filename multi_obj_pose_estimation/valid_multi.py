"""Score the multi-object pose network on OCCLUSION test scenes (design §9.6), one object at a time.

    python multi_obj_pose_estimation/valid_multi.py --modelcfg multi_obj_pose_estimation/cfg/yolo-pose-multi.cfg \\
        --weightfile backup_multi/model_backup.weights
    python multi_obj_pose_estimation/valid_multi.py --datacfg data/synthetic_multi/cfg/occlusion.data \\
        --modelcfg multi_obj_pose_estimation/cfg/yolo-lite-trial3-multi.cfg \\
        --weightfile backup_multi/synthetic/model.weights --test-size 256

For every object: the images of its `test_occlusion.txt`, labels from `<obj>/labels_occlusion`
(re-ordered from the OCCLUSION corner order to the design §9.2 order before PnP), boxes by
`utils.get_multi_region_boxes` with the class of the image's first GT; for each GT, the box of its
class with the highest det_conf. Prints the 2-D projection accuracy at 5, 10, ..., 50 px, plus
ADD (10 % of the diameter) and 5cm5deg, which the original did not report, then one table.

Differences from the original (design §11): the objects and their test lists, meshes, diameters
and class ids come from one `.data` file (`valid<k>`, `mesh<k>`, `diam<k>`, class k-1) instead
of hard-coded per-object files; a GT with no box of its class, or a failed PnP, is a miss.

Reading order: `load_objects` (what to score) -> `OcclusionTestSet` (images + re-ordered labels)
-> `evaluate_object` (the design §9.6 loop, also used by train_multi.py) -> `print_table` -> the CLI.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import dataset
import image as im
import model_info
import utils
import valid
from errors import FlagError, InputError, run_cli
from linemod_format import from_occlusion_order, occlusion_label_path, read_label_rows, write_text
from MeshPly import MeshPly

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DEFAULT_DATACFG = "cfg/occlusion.data"
DEFAULT_MODELCFG = "cfg/yolo-pose-multi.cfg"
DEFAULT_WEIGHTFILE = "backup_multi/model_backup.weights"
VALID_OBJECTS = ("ape", "can", "cat", "duck", "glue", "holepuncher")  # design §9.6 (driller, eggbox not scored)
PX_THRESHOLDS = tuple(range(5, 55, 5))  # design §9.6: 5, 10, ..., 50 px


def find_path(path) -> str:
    """`path` as given when it exists from the current directory, else from this folder (the
    original's working directory) or the repository root; unchanged when found nowhere."""
    for base in (HERE, ROOT):
        if not Path(path).exists() and (base / path).exists():
            return os.path.relpath(base / path)
    return str(path)


# --------------------------------------------------------------------------------------------
# What to score
# --------------------------------------------------------------------------------------------

@dataclass
class OcclusionObject:
    """One object to score: its class id (k - 1 for the `.data` keys valid<k>/mesh<k>) and setup."""
    class_id: int
    setup: valid.EvalSetup

    @property
    def name(self) -> str:
        return self.setup.name


def load_objects(datacfg, objects=None, diam_source: str = "data",
                 pnp_method: str = "iterative") -> list[OcclusionObject]:
    """The objects of an occlusion `.data` file (design §3.2 keys valid<k>, mesh<k>, diam<k>).

    An object's name is its mesh file's stem (LINEMOD/ape/ape.ply -> 'ape'), its class id k - 1.
    objects: names to keep, in that order; default: the six of design §9.6 when the file has them
    all, else every object of the file. diam_source 'data' (diam<k>; the mesh's when missing) or
    'mesh'. Raises FileNotFoundError / ValueError naming the `.data` file and the key.
    """
    if diam_source not in valid.DIAM_SOURCES:
        raise ValueError(f"diam source must be one of {valid.DIAM_SOURCES}, not {diam_source!r}")
    opts = utils.read_data_cfg(datacfg, resolve_paths=True)
    ks = sorted(int(key[4:]) for key in opts if key.startswith("mesh") and key[4:].isdigit())
    if not ks:
        raise ValueError(f"{datacfg}: no 'mesh<k>' keys; expected an occlusion .data file with valid<k>, mesh<k> "
                         f"(and diam<k>) for each class k = 1, 2, ...")
    by_name = {Path(opts[f"mesh{k}"]).stem: k for k in ks}
    if objects is None:
        objects = VALID_OBJECTS if all(o in by_name for o in VALID_OBJECTS) else list(by_name)
    unknown = [o for o in objects if o not in by_name]
    if unknown:
        raise ValueError(f"{datacfg}: no object named {unknown[0]!r}; its objects (mesh<k> stems) are {list(by_name)}")
    K, width, height = utils.camera_from_data_cfg(opts, datacfg)
    out = []
    for name in objects:
        k = by_name[name]
        mesh, valid_list = opts[f"mesh{k}"], opts.get(f"valid{k}")
        if valid_list is None:
            raise ValueError(f"{datacfg}: object {name!r} has mesh{k} but no 'valid{k}' test list")
        if not Path(mesh).is_file():
            raise FileNotFoundError(f"{datacfg}: mesh{k} file not found: {mesh}")
        if not Path(valid_list).is_file():
            raise FileNotFoundError(f"{datacfg}: valid{k} test list not found: {valid_list}")
        vertices = MeshPly(mesh).vertices
        utils.check_mesh_vertices(vertices, mesh)  # a point or a line gives no pose
        if diam_source == "mesh" or f"diam{k}" not in opts:
            diam = utils.mesh_diameter(vertices)
        else:
            diam = utils.data_cfg_number(opts, f"diam{k}", datacfg, positive=True)  # metres
        setup = valid.EvalSetup(name=name, valid_list=valid_list, vertices=vertices,
                                corners=utils.box_corners(vertices),
                                K=K, im_width=width, im_height=height, diam=diam, pnp_method=pnp_method,
                                extra={"datacfg": str(datacfg), "mesh": mesh})
        out.append(OcclusionObject(k - 1, setup))
    return out


class OcclusionTestSet(dataset.PoseDataset):
    """Test scenes of one object (design §3.4, §9.6): the images of its test list, its label rows from
    `<obj>/labels_occlusion/`, re-ordered to the design §9.2 corner order unless reorder=False.

    `dataset[i]` -> (image float32 (3, H, W), target float64 (50*21,)) like the single-object test set.
    """

    def __init__(self, source, obj: str, shape, reorder: bool = True, **kw):
        self.obj, self.reorder = obj, reorder
        super().__init__(source, shape, train=False, **kw)

    def files_of(self, index: int) -> dict[str, str]:
        path = self.paths[index]
        return {"image": path, "label file": occlusion_label_path(path, self.obj)}

    def test_sample(self, index: int, size: tuple[int, int]):
        path = self.paths[index]
        rows = read_label_rows(occlusion_label_path(path, self.obj), self.label_width)
        if self.reorder and len(rows):
            rows = np.stack([from_occlusion_order(r) for r in rows])
        img = dataset.load_image(path)
        if img.size != size:
            img = img.resize(size, im.resample_filter(self.resample))
        return img, rows


# --------------------------------------------------------------------------------------------
# The evaluation (design §9.6)
# --------------------------------------------------------------------------------------------

def pick_box(boxes: torch.Tensor, class_id: int) -> torch.Tensor | None:
    """Among boxes (n, 2K+3), the first with the highest det_conf of class `class_id`; None if none."""
    of_class = (boxes[:, -1] == class_id).nonzero().flatten()
    if of_class.numel() == 0:
        return None
    return boxes[of_class[boxes[of_class, -3].argmax()]]


def threshold_accuracies(err_2d, thresholds=PX_THRESHOLDS) -> list[float]:
    """2-D projection accuracy (%) at each pixel threshold: 100 * #(err <= th) / (N + 1e-5)."""
    err = np.asarray(err_2d, dtype=np.float64)
    return [utils.accuracy(np.sum(err <= th), len(err)) for th in thresholds]


@torch.inference_mode()
def evaluate_object(model, loader, obj: OcclusionObject, device="cpu", conf_thresh: float = utils.MULTI_CONF_THRESH,
                    progress: bool = False, box_rule: str = "max", fuse: bool = True) -> tuple[dict, dict]:
    """Score one object's test scenes (design §9.6).

    loader yields (images (B, 3, H, W), targets (B, 50*21) label rows in the design §9.2 order). For each
    image: boxes of `utils.get_multi_region_boxes` (score det_conf * class prob, the image's first
    GT class as the corresponding class); for each GT, the highest-det_conf box of its class
    (box_rule 'vote': its corners from the 3x3 vote, D54). fuse: run the BN-folded channels-last
    `inference_copy` of a Darknet (D57).
    Returns (summary, records) like `valid.evaluate`: summary = `valid.summarize` plus
    `thresholds` and `acc_px` (accuracy at each of PX_THRESHOLDS) and `class_id`; records hold
    the per-GT errors, poses and points (a GT with no box of its class is a miss).
    """
    device = torch.device(device)
    K, C, A = model.num_keypoints, model.num_classes, model.num_anchors
    if not 0 <= obj.class_id < C:
        raise ValueError(f"object {obj.name!r} has class id {obj.class_id} but the network has {C} classes")
    setup = obj.setup
    given, was_training = model, model.training
    model.eval()
    model, channels_last = valid.inference_net(model, fuse)
    scale = np.array([setup.im_width, setup.im_height], dtype=np.float32)
    nan_pred = np.full((K, 2), np.nan, dtype=np.float32)
    records = {k: [] for k in valid.RECORD_KEYS}
    n_images = 0
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"eval {obj.name}", unit="batch", leave=False)
    try:
        for images, targets in batches:
            images = images.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            output = model(images).float()
            rows = targets.reshape(len(images), -1, 2 * K + 3).numpy()
            valid_rows = [r[: int(np.argmin(np.r_[r[:, 1] != 0, False]))] for r in rows]  # up to the first x0 == 0
            first_class = [int(r[0, 0]) if len(r) else obj.class_id for r in valid_rows]
            boxes = utils.get_multi_region_boxes(output, conf_thresh, C, K, model.anchors, A, first_class,
                                                 only_objectness=0, carry_class_max=False, rule=box_rule)
            for b, gts in enumerate(valid_rows):
                for row in gts:
                    box = pick_box(boxes[b], int(row[0]))
                    # labels and predictions pass through float32 before de-normalisation (design §9.1)
                    gt_px = row[1:1 + 2 * K].astype(np.float32).reshape(-1, 2) * scale
                    if box is None:
                        pr_px = nan_pred
                    else:
                        pr_px = box[:2 * K].cpu().numpy().astype(np.float32).reshape(-1, 2) * scale
                    res = valid.pose_errors(gt_px, pr_px, setup)
                    for k in (*valid.ERROR_KEYS, "failed", *valid.POSE_KEYS):
                        records[k].append(res[k])
                    records["gt_px"].append(gt_px)
                    records["pr_px"].append(pr_px)
                    records["conf"].append(math.nan if box is None else float(box[2 * K]))
                    records["image_index"].append(n_images + b)
            n_images += len(images)
    finally:
        if was_training:
            given.train()
    if n_images == 0:
        raise ValueError(f"{setup.valid_list}: the test list is empty")
    if not records["err_2d"]:
        raise ValueError(f"{setup.valid_list}: no test image of {obj.name!r} has a label row")
    shapes = {"R_gt": (3, 3), "R_pr": (3, 3), "t_gt": (3,), "t_pr": (3,), "gt_px": (K, 2), "pr_px": (K, 2)}
    records = {k: np.asarray(v).reshape(-1, *shapes.get(k, ())) for k, v in records.items()}
    summary = valid.summarize(records, setup)
    summary.update(class_id=obj.class_id, images=n_images, thresholds=list(PX_THRESHOLDS),
                   acc_px=threshold_accuracies(records["err_2d"]))
    return summary, records


def make_test_loader(obj: OcclusionObject, shape, batch_size: int = 1, workers: int = 0,
                     resample: str = im.DEFAULT_RESAMPLE):
    """A test loader over one object's scenes at `shape` (w, h)."""
    test_set = OcclusionTestSet(obj.setup.valid_list, obj.name, shape, resample=resample)
    return dataset.make_test_loader(test_set, batch_size=batch_size, workers=workers)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def report(summary: dict, file=None) -> None:
    """The original's per-threshold lines (design §9.6), then ADD and 5cm5deg."""
    valid.log(f"   Results of {summary['object']} (class {summary['class_id']}, {summary['n']} objects)", file)
    for th, acc in zip(summary["thresholds"], summary["acc_px"]):
        valid.log(f"   Acc using {th} px 2D Projection = {acc:.2f}%", file)
    valid.log(f"   Acc using {summary['add_threshold']:f} vx 3D Transformation = {summary['acc_add']:.2f}%", file)
    valid.log(f"   Acc using 5 cm 5 degree metric = {summary['acc_5cm5deg']:.2f}%", file)
    if summary["n_failed"]:
        valid.log(f"   {summary['n_failed']} of {summary['n']} objects counted as misses (no box of the class, "
                  f"non-finite output or failed PnP)", file)


TABLE_EXTRA = (("ADD", "acc_add"), ("5cm5deg", "acc_5cm5deg"), ("mean px err", "mean_err_2d"))


def mean_row(summaries: list) -> dict:
    """The unweighted mean over objects of every accuracy and of the mean pixel error."""
    row = {"object": "mean", "n": int(sum(s["n"] for s in summaries)),
           "acc_px": list(np.mean([s["acc_px"] for s in summaries], axis=0))}
    for _, key in TABLE_EXTRA:
        row[key] = float(np.mean([s[key] for s in summaries]))
    return row


def print_table(summaries: list, file=None) -> None:
    """A markdown table: one row per object (accuracy % at every threshold, ADD, 5cm5deg) and the mean."""
    file = file or sys.stdout
    head = ["object", "n", *(f"{th} px" for th in PX_THRESHOLDS), *(name for name, _ in TABLE_EXTRA)]
    print("| " + " | ".join(head) + " |", file=file)
    print("|" + "---|" * len(head), file=file)
    for s in summaries + ([mean_row(summaries)] if len(summaries) > 1 else []):
        cells = [s["object"], str(s["n"]), *(f"{a:.2f}" for a in s["acc_px"]), *(f"{s[k]:.2f}" for _, k in TABLE_EXTRA)]
        print("| " + " | ".join(cells) + " |", file=file)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0], epilog=__doc__.split("\n\n")[1])
    cli.add_model(p, cfg_default=DEFAULT_MODELCFG, weights="weightfile", weights_default=DEFAULT_WEIGHTFILE,
                  weights_aliases=("initweightfile",),
                  weights_help=f"darknet weights to score (alias --initweightfile, the original's name; "
                               f"default {DEFAULT_WEIGHTFILE})")
    cli.add_datacfg(p, default=DEFAULT_DATACFG,
                    help=f"occlusion .data file with valid<k>/mesh<k>/diam<k> (default {DEFAULT_DATACFG})")
    cli.add_objects(p, help=f"objects to score (default: {' '.join(VALID_OBJECTS)} when the .data file has them, "
                            f"else all)")
    cli.add_conf_thresh(p, default=utils.MULTI_CONF_THRESH, help="box score threshold (design §4.2)")
    cli.add_sizes(p, test=True, test_help="square input size, a multiple of 32 (default: the size the weights were "
                                          "trained for, model_info.json beside them, else the cfg width x height)")
    cli.add_box_rule(p)
    cli.add_batch_size(p, default=1, help="images per forward pass (boxes are chosen per image)")
    cli.add_workers(p, default=0)
    cli.add_device(p)
    p.add_argument("--diam", choices=valid.DIAM_SOURCES, default="data", help="ADD diameter: diam<k> or the mesh's")
    cli.add_pnp(p)
    cli.add_resample(p, "test-image resize filter")
    p.add_argument("--json", default=None, metavar="FILE", help="write every summary (and the mean) as JSON")
    p.add_argument("--quiet", action="store_true", help="only the table")
    return p


def check_args(args) -> argparse.Namespace:
    """Resolve the default paths and check the flags that need no file (FlagError)."""
    args.datacfg, args.modelcfg = find_path(args.datacfg), find_path(args.modelcfg)
    args.objects = cli.object_list(args.objects)
    cli.check_positive("--batch-size", args.batch_size)
    cli.check_positive("--workers", args.workers, minimum=0)
    cli.check_size("--test-size", args.test_size)
    if args.json:
        cli.check_output_file("--json", args.json)
    if not 0.0 <= args.conf_thresh < 1.0:
        raise FlagError(f"--conf-thresh must be in [0, 1), found {args.conf_thresh}")
    return args


def check_test_images(objects) -> None:
    """Every object's test images (headers, `preflight.check_image_list`) and `labels_occlusion`
    files, before anything runs. Raises InputError listing the problems, and for an object whose
    label files are all empty (nothing to score); warns when only some are empty."""
    import preflight

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


def main(args) -> list:
    """Score every object; return their summaries. Bad inputs stop here with an InputError."""
    try:
        args = check_args(args)
        device = valid.resolve_device(args.device)
        objects = load_objects(args.datacfg, args.objects, args.diam, args.pnp)
        check_test_images(objects)
        model = valid.load_model(args.modelcfg, args.weightfile, device)
        size, rule = model_info.resolve(args, args.weightfile, args.modelcfg, (model.test_width, model.test_height))
        loaders = [make_test_loader(o, size, args.batch_size, args.workers, args.resample) for o in objects]
        for o in objects:
            if o.class_id >= model.num_classes:
                raise ValueError(f"{args.datacfg}: object {o.name!r} has class id {o.class_id} but {args.modelcfg} "
                                 f"has {model.num_classes} classes")
    except (OSError, ValueError) as exc:  # InputError is a ValueError; a missing image an OSError
        raise InputError(f"cannot evaluate:\n  {exc}") from None
    summaries = []
    for obj, loader in zip(objects, loaders):
        if not args.quiet:
            valid.log(f"Testing {obj.name}: {len(loader.dataset)} test images at {size[0]}x{size[1]}")
        summary, _ = evaluate_object(model, loader, obj, device, args.conf_thresh, progress=not args.quiet,
                                     box_rule=rule)
        summary.update(model=str(args.modelcfg), weights=str(args.weightfile), test_size=list(size), box_rule=rule)
        summaries.append(summary)
        if not args.quiet:
            report(summary)
    print_table(summaries)
    if args.json:
        payload = {"objects": summaries, "mean": mean_row(summaries) if len(summaries) > 1 else None}
        write_text(args.json, json.dumps(valid._json_safe(payload), indent=2))
    return summaries


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)))
