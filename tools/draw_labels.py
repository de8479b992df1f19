"""Overlay the labelled 3-D boxes on dataset images and save a PNG grid (a visual label check).

    python tools/draw_labels.py --datacfg data/synthetic/cfg/obj00.data --n 4 --out-file docs/img/synthetic_labels.png
    python tools/draw_labels.py --datacfg data/synthetic/cfg/obj0[0-2].data --list train --n 4 --colors 256 \\
        --out-file x.png
    python tools/draw_labels.py --datacfg data/synthetic/cfg/occlusion.data --list train --out-file docs/img/x.png
    python tools/draw_labels.py --datacfg data/synthetic/cfg/obj01_occlusion.data --occlusion --out-file x.png
    python tools/draw_labels.py --datacfg data/synthetic/cfg/obj00.data --predictions runs/pred/predictions_obj00.npz \
        --no-poses --out-file docs/img/main_job_prediction.png

With `--predictions` (the `.npz` of `valid.py --save-predictions DIR`) the images are chosen among
the scored ones and each gets, over its green label box, the network's 9 points (orange dots) and
the box of the pose PnP recovered from them (blue), the pose valid.py scores; the 2-D error
(mean distance of the 9 points to the label's, valid.py's err_2d) is printed per image.

For each chosen image of the `.data` files' lists (`--list valid` = the `valid` key, `train` =
the `train` key; with several files the images alternate between them), every row of its label
file is drawn with utils.draw_box: green box, centroid dot, class id. With `--occlusion` the
labels come from LINEMOD/<name>/labels_occlusion/ and are put back into the design §9.2 order with the
design §9.6 permutation before drawing (a wrong order shows as a scrambled box). If the dataset root
has poses/<obj>.json files (written by the synthetic generator, make_labels.py,
bop_to_linemod.py), the 9 points re-projected from the saved pose and mesh are drawn on top as
magenta dots (for the classes whose labels are drawn): each dot must sit on the green box's
corner (or centroid); the largest gap is printed. A pose saved with its own camera ("K", as
bop_to_linemod.py writes when the camera varies) is projected with it.

List entries and .data paths are resolved from the current directory, then from the dataset
root (the .data file's parent's parent).
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import image_files
from errors import FlagError, InputError, run_cli
from linemod_format import (
    NUM_KEYPOINTS, atomic_write, from_occlusion_order, label_path, occlusion_label_path, read_data_cfg,
    read_label_rows,
)
from MeshPly import MeshPly
from utils import box_corners, camera_from_data_cfg, draw_box, keypoints_from_pose

LABEL_COLOR = (0, 255, 0)  # green: the label file
POSE_COLOR = (255, 0, 255)  # magenta: re-projected from the saved pose
PRED_BOX_COLOR = (40, 110, 255)  # blue: the predicted pose's box (valid.py --save-predictions)
PRED_POINT_COLOR = (255, 150, 0)  # orange: the network's 9 points
POSE_RADIUS_PX = 4  # full-resolution dot radius (still visible in a half-size grid)
MAX_PALETTE = 256  # a PNG palette holds at most 256 colours
MAX_SCALE = 4.0  # a tile larger than 4x the image only costs memory


def _resolve(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else root / p


def load_pose_index(root: Path) -> dict:
    """{image path (as in the lists): [(class id, corners (8, 3), R, t, K or None)]} from every root/poses/*.json."""
    index: dict = {}
    for f in sorted((root / "poses").glob("*.json")):
        doc = json.loads(f.read_text())
        if not isinstance(doc, dict) or "poses" not in doc or "mesh" not in doc:
            continue
        corners = box_corners(MeshPly(_resolve(doc["mesh"], root)).vertices)
        for rec in doc["poses"]:
            index.setdefault(rec["image"], []).append(
                (int(doc.get("class_id", -1)), corners, np.asarray(rec["R"]), np.asarray(rec["t"]),
                 np.asarray(rec["K"]) if "K" in rec else None))
    return index


def draw_dots(img: np.ndarray, points_px: np.ndarray, color) -> None:
    """Filled dots of POSE_RADIUS_PX at the finite points (N, 2) pixels, drawn into img (H, W, 3) in place,
    at sub-pixel positions (4 fractional bits)."""
    for p in points_px:
        if np.all(np.isfinite(p)):
            cv2.circle(img, (int(round(p[0] * 16)), int(round(p[1] * 16))), POSE_RADIUS_PX * 16, color, -1,
                       cv2.LINE_AA, 4)


def draw_image(image_path: str, root: Path, K: np.ndarray, width: int, height: int, occlusion_name: str | None = None,
               pose_index: dict | None = None, thickness: int = 2) -> tuple[np.ndarray, float]:
    """The RGB image (H, W, 3) uint8 with its label boxes (and saved-pose points) drawn, and the gap.

    gap: the largest distance in pixels between a label point and the same point re-projected
    from the saved pose (NaN when no pose of a drawn class is saved for the image). For labels
    written by these tools it is below 1e-3 px ('%.6f' rounding).
    """
    resolved = _resolve(image_path, root)
    if resolved.exists():  # refused from its header: a FIFO (cv2 would wait forever), a bomb, 16 bits
        image_files.check_bit_depth(resolved, image_files.read_header(resolved).mode)
    bgr = cv2.imread(str(resolved), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{image_path}: cannot read the image (looked in . and {root})")
    img = np.ascontiguousarray(bgr[..., ::-1])
    if occlusion_name:
        rows = read_label_rows(_resolve(occlusion_label_path(image_path, occlusion_name), root))
        rows = np.stack([from_occlusion_order(r) for r in rows]) if len(rows) else rows
    else:
        rows = read_label_rows(_resolve(label_path(image_path), root))
    scale = np.array([width, height], dtype=np.float64)
    label_pts = {}
    for r in rows:
        pts = r[1:1 + 2 * NUM_KEYPOINTS].reshape(NUM_KEYPOINTS, 2) * scale
        label_pts.setdefault(int(r[0]), []).append(pts)
        img = draw_box(img, pts, LABEL_COLOR, thickness)
        org = tuple(int(v) for v in np.round(pts[0] + np.array([6, -6])))
        cv2.putText(img, str(int(r[0])), org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, LABEL_COLOR, 2, cv2.LINE_AA)
    gap = float("nan")
    for class_id, corners, R, t, K_pose in (pose_index or {}).get(image_path, []):
        if class_id not in label_pts:
            continue
        kp = keypoints_from_pose(corners, R, t, K if K_pose is None else K_pose)
        # the label row of this object: the one of its class nearest to the re-projection
        d = min(float(np.abs(p - kp).max()) for p in label_pts[class_id])
        gap = d if np.isnan(gap) else max(gap, d)
        draw_dots(img, kp, POSE_COLOR)
    return img, gap


PREDICTION_SHAPES = {"pr_px": (9, 2), "R_pr": (3, 3), "t_pr": (3,), "err_2d": ()}  # per image, valid.py's arrays


def load_predictions(path: Path) -> dict:
    """{resolved image path: (pr_px (9, 2), R_pr (3, 3), t_pr (3,), err_2d)} from a valid.py --save-predictions file.

    InputError naming the file for one that is not a readable .npz (truncated, pickled objects), lacks
    an array, or holds arrays of other shapes than N image paths and N predictions of those shapes."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("image", *PREDICTION_SHAPES)}
    except KeyError as exc:
        raise InputError(f"{path}: not a valid.py --save-predictions file with image paths (missing {exc})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz file (truncated, or not one of valid.py's): {exc}") from None
    images = arrays["image"]
    if images.ndim != 1 or images.dtype.kind not in "US":
        raise InputError(f"{path}: 'image' holds {images.dtype} of shape {images.shape}, expected a list of paths")
    for key, shape in PREDICTION_SHAPES.items():
        a = arrays[key]
        if a.shape != (len(images), *shape) or a.dtype.kind not in "fiu":
            raise InputError(f"{path}: '{key}' holds {a.dtype} of shape {a.shape}, expected numbers of shape "
                             f"{(len(images), *shape)} (one per image path)")
    return {str(Path(str(im)).resolve()): (px, R, t, float(e)) for im, px, R, t, e in
            zip(images, arrays["pr_px"], arrays["R_pr"], arrays["t_pr"], arrays["err_2d"])}


def draw_prediction(img: np.ndarray, prediction: tuple, corners: np.ndarray, K: np.ndarray,
                    thickness: int = 2) -> np.ndarray:
    """img (H, W, 3) with the predicted pose's box (blue) and the network's 9 points (orange) drawn."""
    px, R, t, _ = prediction
    if np.all(np.isfinite(R)) and np.all(np.isfinite(t)):  # a failed PnP has no pose: only the points
        img = draw_box(img, keypoints_from_pose(corners, R, t, K), PRED_BOX_COLOR, thickness)
    draw_dots(img, px, PRED_POINT_COLOR)
    return img


def make_grid(images: list[np.ndarray], cols: int, scale: float) -> np.ndarray:
    """Tiles (H, W, 3) resized by `scale`, `cols` per row, black padding for a short last row."""
    tiles = [cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for im in images]
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, t in enumerate(tiles):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = t[:h, :w]
    return grid


def pick(items: list, n: int) -> list:
    """n entries spread evenly over the list (all of them if it is shorter)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def save_png(path: Path, rgb: np.ndarray, colors: int = 0) -> None:
    """Write an RGB (H, W, 3) uint8 image as PNG; colors > 0 stores a palette of that many colours (smaller file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb)
    if colors:
        img = img.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with atomic_write(path, "wb") as f:
        img.save(f, format="PNG", optimize=True)


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n\n")[0])
    cli.add_datacfg(p, "one or more, single-object, occlusion.data or <obj>_occlusion.data; images alternate "
                       "between them", required=True, nargs="+")
    p.add_argument("--list", choices=("valid", "train"), default="valid",
                   help="which list of the .data file (default valid)")
    cli.add_alias(p, "--split", "--list")  # --split is bop_to_linemod.py's BOP split folder
    p.add_argument("--n", type=int, default=4, help="number of images, spread over the list (default 4)")
    p.add_argument("--cols", type=int, default=2, help="grid columns (default 2)")
    p.add_argument("--scale", type=float, default=0.5, help="tile scale (default 0.5)")
    p.add_argument("--colors", type=int, default=0, help="palette PNG with this many colours (default 0: full colour)")
    p.add_argument("--occlusion", action="store_true",
                   help="read labels_occlusion/ of the .data 'name' (OCCLUSION order)")
    p.add_argument("--no-poses", action="store_true", help="do not draw points re-projected from poses/*.json")
    p.add_argument("--predictions", metavar="NPZ", default=None,
                   help="valid.py --save-predictions file: draw the predicted points and pose box on the scored "
                        "images (one .data file)")
    cli.add_out(p, "file", what="the PNG", required=True)
    cli.add_alias(p, "--out", "--out-file")  # --out is an output folder everywhere
    return p


def _data_images(data: Path, split: str, n: int, occlusion: bool, no_poses: bool,
                 only: set | None = None) -> list[tuple]:
    """n (image, root, K, width, height, occlusion name, pose index) jobs spread over one .data file's list
    (over its entries whose resolved path is in `only`, when given)."""
    opts = read_data_cfg(data, resolve_paths=True)
    root = data.resolve().parent.parent
    K, width, height = camera_from_data_cfg(opts, data)
    if split not in opts:
        raise ValueError(f"{data} has no '{split}' key")
    list_path = _resolve(opts[split], root)
    if not list_path.is_file():
        raise FileNotFoundError(f"{list_path}: image list not found ({split} of {data})")
    entries = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
    if not entries:
        raise ValueError(f"{list_path} lists no images")
    if only is not None:
        entries = [e for e in entries if str(_resolve(e, root).resolve()) in only]
        if not entries:
            raise ValueError(f"no image of {list_path} is in the predictions file (another split or dataset?)")
    pose_index = {} if no_poses else load_pose_index(root)
    name = opts.get("name") if occlusion else None
    return [(e, root, K, width, height, name, pose_index) for e in pick(entries, n)]


def check_flags(args) -> None:
    """The numbers in range and --out-file a writable PNG path, before any image is read (FlagError,
    OutputPathError: run_cli prints one line and exits 2)."""
    cli.check_positive("--n", args.n)
    cli.check_positive("--cols", args.cols)
    cli.check_range("--colors", args.colors, 0, MAX_PALETTE)
    if not 0 < args.scale <= MAX_SCALE:
        raise FlagError(f"--scale must be above 0 and at most {MAX_SCALE:g}, found {args.scale}")
    cli.check_output_file("--out-file", args.out_file)
    if args.predictions is not None:
        if len(args.datacfg) != 1:
            raise FlagError(f"--predictions goes with one --datacfg, found {len(args.datacfg)}")
        if args.occlusion:
            raise FlagError("--predictions draws single-object predictions; it does not combine with --occlusion")
        if not Path(args.predictions).is_file():
            raise FlagError(f"--predictions {args.predictions}: file not found")


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        check_flags(args)
        predictions = load_predictions(Path(args.predictions)) if args.predictions else None
        per_file = -(-args.n // len(args.datacfg))  # ceil: the images are shared out over the .data files
        lists = [_data_images(Path(d), args.list, per_file, args.occlusion, args.no_poses,
                              None if predictions is None else set(predictions)) for d in args.datacfg]
        jobs = [job for group in zip(*[lst + [None] * (per_file - len(lst)) for lst in lists]) for job in group if job]
        drawn = [draw_image(*job) for job in jobs[:args.n]]
        if predictions is not None:
            data = Path(args.datacfg[0])
            corners = box_corners(MeshPly(_resolve(read_data_cfg(data, resolve_paths=True)["mesh"],
                                                   data.resolve().parent.parent)).vertices)
            for i, (job, (img, gap)) in enumerate(zip(jobs, drawn)):
                pred = predictions[str(_resolve(job[0], job[1]).resolve())]
                drawn[i] = (draw_prediction(img, pred, corners, job[2]), gap)
                print(f"{job[0]}: 2-D error {pred[3]:.2f} px")
    except (OSError, ValueError) as exc:
        print(f"draw_labels: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out_file)
    save_png(out, make_grid([img for img, _ in drawn], args.cols, args.scale), args.colors)
    gaps = [g for _, g in drawn if not np.isnan(g)]
    gap = f"; label vs saved pose: max {max(gaps):.2g} px over {len(gaps)} images" if gaps else ""
    print(f"wrote {out} ({len(drawn)} images from {len(args.datacfg)} data file(s){gap})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
