"""Which part of a real object's appearance a pose model trained on renders misreads (design §7.7).

In each labelled frame, the object's pixels (its silhouette under the labelled pose) are swapped
for parts of its render at that pose, and valid.py scores the model on every variant:

  real           the frames as they are
  render         the object replaced by its render (smooth shading, random lights of the defaults)
  real_coarse    the real object blurred by --split-px, plus the render's finer detail
  render_coarse  the render blurred by --split-px, plus the real object's finer detail
  render_detail  the render plus the renderer's --detail pattern at --detail-amplitude

A model that scores on `render` but not on `real` has a gap in the object's appearance, not in
its surroundings (the background stays real in every variant). `real_coarse` against
`render_coarse` says whether the gap is in the coarse look (colour, shading) or in the fine
detail (ridges, holes, print, reflections); `render_detail` whether the renderer's own detail
pattern (randomisation.Randomiser.detail) shows the same failure. Each row: the frames within 10
and 20 px with their 95 % intervals, the median 2-D error, and the median size of the predicted
box against the true one (the spread of its 8 corners about their mean, predicted / true).

    python tools/appearance_swap.py --datacfg ../shared/data/real_lmo/can.data \\
        --mesh ../shared/data/real_lmo/meshes/can.ply --mesh-units mm \\
        --weightfile backup/mesh/can/model.weights --out runs/swap/can

Writes under --out: one folder per variant (its images as PNG with the labels, except `real`,
which lists the frame files themselves; its list, .data file and valid.py's --json and
predictions), table.md and table.json, and fine_detail.png: the object in the first PICTURE_FRAMES
frames, real (top) and rendered, each above its fine detail (the image less its blur by
--split-px, x3 about grey). The frames themselves are only read.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli  # noqa: E402
import linemod_format as lf  # noqa: E402
import utils  # noqa: E402
import valid  # noqa: E402
from errors import InputError, OverwriteError, run_cli  # noqa: E402
from evaluation import solve_pose  # noqa: E402
from MeshPly import read_mesh  # noqa: E402
from model_info import INFO_FILE  # noqa: E402
from randomisation import Randomiser, RenderOptions  # noqa: E402
from render import Mesh, render  # noqa: E402
from stats import binomial_interval  # noqa: E402

VARIANTS = ("real", "render", "real_coarse", "render_coarse", "render_detail")
SPLIT_PX = 3.0  # the blur sigma that splits coarse from fine: the can's failure lies in 2-6 px detail
DETAIL_AMPLITUDE = 25.0  # grey levels: about the fine detail of a real white object's surface
LABEL_MISMATCH_PX = 2.0  # a labelled frame whose points are further from the mesh box under any pose
PX_THRESHOLDS = (10, 20)
PICTURE_FRAMES = 6
PICTURE_TILE = (100, 120)  # width, height of one tile of fine_detail.png


def swap(real: np.ndarray, rendered: np.ndarray, mask: np.ndarray, split_px: float,
         detail: np.ndarray) -> dict[str, np.ndarray]:
    """The variants (VARIANTS order) of one frame: real and rendered (H, W, 3) uint8, the object's
    silhouette mask (H, W) bool, the sigma that splits coarse from fine, and detail (H, W, 3)
    uint8, the render with the detail pattern over the object. Outside the mask every variant is
    the real frame."""
    real_f = real.astype(np.float32)
    ren_f = real_f.copy()
    ren_f[mask] = rendered[mask]

    def coarse(a):
        return cv2.GaussianBlur(a, (0, 0), split_px)

    mixes = {"real": real_f, "render": ren_f,
             "real_coarse": coarse(real_f) + ren_f - coarse(ren_f),
             "render_coarse": coarse(ren_f) + real_f - coarse(real_f),
             "render_detail": detail.astype(np.float32)}
    out = {}
    for name in VARIANTS:
        img = real.copy()
        img[mask] = np.clip(np.round(mixes[name][mask]), 0, 255).astype(np.uint8)
        out[name] = img
    return out


def frame_poses(images: list[str], keypoints3d: np.ndarray, K: np.ndarray, width: int, height: int):
    """Per image: (R (3, 3), t (3,) m) solved from its label's 9 points, InputError naming the
    label when they are not the mesh box's projection (another mesh, or other units)."""
    poses = []
    for image in images:
        label = lf.label_path(image)
        rows = lf.read_label_rows(label)
        if len(rows) != 1:
            raise InputError(f"{label}: {len(rows)} objects; expected one (a single-object .data file)")
        px = rows[0][1:19].reshape(9, 2) * np.array([width, height])
        pose = solve_pose(keypoints3d, px, K)
        if pose is None:
            raise InputError(f"{label}: no pose fits its 9 points")
        off = np.linalg.norm(utils.project_points(keypoints3d, *pose, K) - px, axis=1).max()
        if off > LABEL_MISMATCH_PX:
            raise InputError(f"{label}: its points are {off:.1f} px from the --mesh box under the best pose; "
                             f"not this mesh's labels (check --mesh and --mesh-units)")
        poses.append(pose)
    return poses


def write_variant(folder: Path, cfg: dict, datacfg: Path, images: list[str], frames) -> Path:
    """A LINEMOD-layout copy of the set with these frames (RGB uint8; None: the frame files as they
    are, not re-encoded): PNG images, the labels, a list of absolute paths and a .data file;
    returns the .data file."""
    paths = [str(Path(image).resolve()) for image in images] if frames is None else []
    for image, rgb in zip(images, frames or []):
        out = folder / "JPEGImages" / (Path(image).stem + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise InputError(f"{out}: cannot write the image")
        (folder / "labels").mkdir(exist_ok=True)
        shutil.copyfile(lf.label_path(image), folder / "labels" / (Path(image).stem + ".txt"))
        paths.append(str(out.resolve()))
    lf.write_text(folder / "frames.txt", "".join(p + "\n" for p in paths))
    keys = [k for k in ("name", "diam", "width", "height", "fx", "fy", "u0", "v0") if k in cfg]
    data = folder / f"{cfg.get('name', datacfg.stem)}.data"
    lf.write_data_cfg(data, [("valid", str((folder / "frames.txt").resolve())),
                             ("mesh", str(Path(cfg["mesh"]).resolve()))] + [(k, cfg[k]) for k in keys])
    return data


def fine_detail_picture(pairs, split_px: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB: per (real, rendered, mask) frame a column of four tiles around the
    object: the real frame, its fine detail, the rendered frame, its fine detail."""
    columns = []
    for real, rendered, mask in pairs:
        ys, xs = np.nonzero(mask)
        pad = 10
        y0, x0 = max(int(ys.min()) - pad, 0), max(int(xs.min()) - pad, 0)
        y1, x1 = int(ys.max()) + 1 + pad, int(xs.max()) + 1 + pad
        tiles = []
        for rgb in (real, rendered):
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
            fine = np.clip(128 + 3 * (grey - cv2.GaussianBlur(grey, (0, 0), split_px)), 0, 255).astype(np.uint8)
            tiles += [rgb[y0:y1, x0:x1], cv2.cvtColor(fine, cv2.COLOR_GRAY2RGB)[y0:y1, x0:x1]]
        columns.append(np.concatenate([cv2.resize(np.ascontiguousarray(t), PICTURE_TILE, interpolation=cv2.INTER_AREA)
                                       for t in tiles], axis=0))
    return np.concatenate(columns, axis=1)


def box_scale(gt_px: np.ndarray, pr_px: np.ndarray) -> np.ndarray:
    """(N,) spread of the predicted 8 corners about their mean over that of the true ones (N, 9, 2)."""
    def spread(p):
        corners = p[:, 1:]
        return np.linalg.norm(corners - corners.mean(axis=1, keepdims=True), axis=2).mean(axis=1)
    return spread(pr_px) / np.maximum(spread(gt_px), 1e-9)


def row_of(name: str, predictions: Path) -> dict:
    d = np.load(predictions)
    err, n = d["err_2d"], len(d["err_2d"])
    row = {"variant": name, "n": n}
    for t in PX_THRESHOLDS:
        pct = 100.0 * float(np.sum(err <= t)) / n
        row[f"acc_{t}px"], row[f"acc_{t}px_ci95"] = pct, list(binomial_interval(pct, n))
    row["median_err_2d"] = float(np.median(err))
    row["median_box_scale"] = float(np.median(box_scale(d["gt_px"], d["pr_px"])))
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | n | 2-D 10 px % | 2-D 20 px % | median 2-D error px | box size, predicted / true |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[f'acc_{t}px']:.1f} [{r[f'acc_{t}px_ci95'][0]:.0f}, {r[f'acc_{t}px_ci95'][1]:.0f}]"
                 for t in PX_THRESHOLDS]
        lines.append(f"| {r['variant']} | {r['n']} | {' | '.join(cells)} | {r['median_err_2d']:.1f} | "
                     f"{r['median_box_scale']:.2f} |")
    return "\n".join(lines) + "\n"


def get_args_parser():
    p = cli.default_argument_parser(__doc__)
    cli.add_datacfg(p, what="labelled frames of one object (its 'valid' list)", required=True)
    cli.add_mesh(p, "the one the labels are the box of, rendered at each frame's pose", required=True)
    cli.add_mesh_units(p, ("m", "mm"))
    cli.add_model(p, cfg_why="the modelcfg of model_info.json beside the weights", weights_required=True)
    cli.add_out(p, what="the variants and the table", required=True)
    p.add_argument("--split-px", type=float, default=SPLIT_PX,
                   help=f"blur sigma (pixels) that splits coarse from fine appearance (default {SPLIT_PX:g})")
    p.add_argument("--detail-amplitude", type=float, default=DETAIL_AMPLITUDE,
                   help=f"grey levels of the render_detail pattern (default {DETAIL_AMPLITUDE:g})")
    cli.add_seed(p, what="of the lights and the detail pattern")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run wrote: the variants and the table under --out")
    return p


def main(argv=None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    if not args.split_px > 0:
        raise InputError(f"--split-px {args.split_px:g}: expected a blur sigma > 0 pixels")
    out = cli.check_output_dir("--out", args.out)
    if (out / "table.md").exists() and not args.overwrite:
        raise OverwriteError(f"--out {out}: holds an earlier run's table.md; pass --overwrite to replace it")
    if args.modelcfg is None:
        info = Path(args.weightfile).parent / INFO_FILE
        if not info.is_file():
            raise InputError(f"--modelcfg: not given, and no {INFO_FILE} beside {args.weightfile} names it")
        args.modelcfg = str(Path(__file__).resolve().parents[1] / json.loads(info.read_text())["modelcfg"])
    datacfg = Path(args.datacfg)
    cfg = lf.read_data_cfg(datacfg, resolve_paths=True)
    if "mesh" not in cfg:
        raise InputError(f"{datacfg}: no 'mesh' key; valid.py needs the object's mesh (metres) to score")
    K, width, height = utils.camera_from_data_cfg(cfg, datacfg)
    images = lf.read_list(cfg["valid"], root=datacfg.parent)
    mesh = Mesh.from_file(read_mesh(args.mesh, args.mesh_units))
    poses = frame_poses(images, mesh.keypoints3d, K, width, height)
    options = RenderOptions(detail=(args.detail_amplitude, args.detail_amplitude)).checked()
    randomiser = Randomiser(options)
    variants = {name: [] for name in VARIANTS}
    picture = []
    for i, (image, (R, t)) in enumerate(zip(images, poses)):
        bgr = cv2.imread(image)
        if bgr is None or bgr.shape[:2] != (height, width):
            raise InputError(f"{image}: not a readable {width}x{height} image (the .data file's camera)")
        rng = np.random.default_rng([args.seed, i])
        rendering = render([mesh], [(R, t)], K, width, height, options.lighting(rng))
        mask = rendering.ids == 0
        real = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        detail = real.copy()
        detail[mask] = rendering.rgb[mask]
        randomiser.detail(rng, detail, mask)
        swapped = swap(real, rendering.rgb, mask, args.split_px, detail)
        for name, img in swapped.items():
            if name != "real":  # scored from the files themselves
                variants[name].append(img)
        if len(picture) < PICTURE_FRAMES:
            picture.append((real, swapped["render"], mask))
    rows = []
    for name, frames in variants.items():
        folder = out / name
        data = write_variant(folder, cfg, datacfg, images, frames if name != "real" else None)
        valid.main(valid.get_args_parser().parse_args([
            "--datacfg", str(data), "--modelcfg", args.modelcfg, "--weightfile", args.weightfile,
            "--json", str(folder / "valid.json"), "--save-predictions", str(folder), "--quiet"]))
        rows.append(row_of(name, folder / f"predictions_{cfg.get('name', datacfg.stem)}.npz"))
    table = markdown(rows)
    print(table, end="")
    lf.write_text(out / "table.md", table)
    lf.write_text(out / "table.json", json.dumps(rows, indent=1) + "\n")
    ok, png = cv2.imencode(".png", cv2.cvtColor(fine_detail_picture(picture, args.split_px), cv2.COLOR_RGB2BGR))
    lf.write_bytes(out / "fine_detail.png", png.tobytes())
    return rows


if __name__ == "__main__":
    run_cli(main, prog="appearance_swap.py")
