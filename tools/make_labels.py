"""Make a LINEMOD-format dataset for your own object from a mesh, a camera and per-image poses.

    python tools/make_labels.py --mesh drill.ply --poses poses.json --images-dir photos/ \\
        --out data/mydata --name drill [--camera-data cam.data | --fx F --fy F --u0 U --v0 V] \\
        [--width W --height H] [--mm | --mesh-units mm --pose-units m] [--class-id 0] \\
        [--masks render|full|none | --masks-dir DIR] \\
        [--test-fraction 0.25 --seed 0 | --train-list train_names.txt [--test-list test_names.txt]]

Inputs
    --mesh      PLY (ASCII or binary) of the object, in metres (--mesh-units mm or --mm for
                millimetres, the BOP convention). Its frame is the object frame of the poses.
    --poses     the model-to-camera pose in each image, X_cam = R @ X_model + t (OpenCV camera:
                x right, y down, z forward):
                JSON: [{"image": "img_0001.jpg", "R": [[r11, r12, r13], [r21, r22, r23],
                [r31, r32, r33]] (or 9 numbers row-major), "t": [tx, ty, tz]}, ...], or a
                poses/<name>.json written by these tools ({"poses": [...]});
                CSV: header image,r11,r12,r13,r21,r22,r23,r31,r32,r33,tx,ty,tz.
                t in metres (--pose-units mm or --mm: millimetres). "image" is relative to
                --images-dir (or absolute).
    camera      --camera-data FILE takes fx, fy, u0, v0, width, height from a .data file (design
                §3.2; missing keys get the LINEMOD values); --fx --fy --u0 --v0 --width --height
                override single values. Without either: the LINEMOD camera (design §3.3) and the
                size of the first image. Zero distortion (undistort your images first). Every
                image must have that size.

Output (the LINEMOD layout of design §3.4 under --out; lists and .data paths relative to --out):
    LINEMOD/<name>/JPEGImages/NNNNNN.jpg|png   the images in pose-file order (copied, or
                                               symlinked with --symlink; other formats -> .jpg)
    LINEMOD/<name>/labels/NNNNNN.txt           21 numbers: class, centroid (model origin) and
                                               the 8 box corners (design §9.2 order) normalised by
                                               width / height, then the x / y range ('%.6f')
    LINEMOD/<name>/mask/NNNN.png               0 / 255 masks (training replaces the background
                                               outside them): --masks render (default; the mesh
                                               silhouette, needs faces), full (all 255: keep the
                                               real background), none; or --masks-dir DIR with
                                               one mask per image, same file stem, any format
    LINEMOD/<name>/train.txt, test.txt, training_range.txt
    LINEMOD/<name>/image_map.txt               'NNNNNN <original image>' per line
    LINEMOD/<name>/<name>.ply                  the mesh in metres (ASCII; normals, colours)
    poses/<name>.json                          the poses in metres (draw_labels.py checks them)
    cfg/<name>.data                            every design §3.2 key; diam = mesh diameter unless --diameter
    ssp_manifest.json                          what it wrote (ownership.py): a file that exists and
                                               that it did not write is never replaced; --overwrite
                                               replaces only its own files of this --name

Labels come from utils.label_from_pose (utils.keypoints_from_pose + label_row),
the code the synthetic generator uses, applied to the box of the mesh exactly as written
(float32 vertices). Errors name the file and the pose entry (JSON) or line (CSV).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/make_labels.py` finds the top level

import cli
from errors import FlagError, PoseFileError, run_cli
from image import write_image
from linemod_format import (
    JPEG_QUALITY, copy_file, data_cfg_items, image_stem, mask_path, pose_entry, read_poses,
    split_flags, write_data_cfg, write_label_rows, write_list, write_poses_json,
)
from MeshPly import MESH_UNITS, MeshPly, units_warning, vertex_normals, write_ply
from ownership import Outputs
from utils import (box_corners, check_mesh_vertices, get_camera_intrinsic, label_from_pose,
                   mesh_diameter, pose_points3d, resolve_camera)

TOOL = "make_labels.py"  # the name its files carry in the output folder's manifest (ownership.py)
DEFAULT_TEST_FRACTION = 0.25
KEEP_EXTENSIONS = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png"}  # what the design §3.4 derivations handle
UNIT_SCALE = MESH_UNITS  # metres per unit of --mesh-units and --pose-units
MASK_MODES = ("render", "full", "none")
# unit sanity check (a warning): an object 20 m away is almost always a millimetre pose read as
# metres; the mesh's own check is MeshPly.units_warning
SUSPICIOUS_DISTANCE_M = 20.0


def write_mesh_metres(path: Path, mesh: MeshPly, vertices: np.ndarray, normals=None) -> np.ndarray:
    """Write `vertices` (N, 3) m with the mesh's faces/colours as ASCII PLY; return the vertices as written.

    The PLY stores float32, so the returned (N, 3) float64 array holds the float32 values: box
    corners computed from it equal those a reader of the file computes.
    """
    if normals is None:
        normals = mesh.normals if mesh.normals is not None else vertex_normals(vertices, mesh.indices)
    colors = np.clip(np.round(mesh.colors * 255.0), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_ply(path, vertices, mesh.indices, normals, colors)
    return np.asarray(vertices, dtype=np.float32).astype(np.float64)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header."""
    try:
        with Image.open(path) as img:
            return img.size
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot read the image ({exc})") from exc


def image_destination(src: Path, dst_stem: Path) -> Path:
    """Where place_image puts `src`: dst_stem + .jpg/.png (other formats become .jpg)."""
    return dst_stem.with_suffix(KEEP_EXTENSIONS.get(src.suffix.lower(), ".jpg"))


def place_image(src: Path, dst_stem: Path, symlink: bool) -> Path:
    """Copy (or link) an image to dst_stem + .jpg/.png, atomically; other formats are re-encoded to JPEG."""
    dst = image_destination(src, dst_stem)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() not in KEEP_EXTENSIONS:
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"{src}: cannot read the image")
        write_image(dst, img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    elif symlink:
        dst.symlink_to(src.resolve())
    else:
        copy_file(src, dst)
    return dst


def read_names(path) -> set[str]:
    """The image names of a split list (one per line, blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split list not found")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def render_mask(vertices: np.ndarray, faces: np.ndarray, R, t, K, width: int, height: int) -> np.ndarray:
    """Silhouette (H, W) uint8 0/255 of a triangle mesh (N, 3) m, (M, 3) at pose (R, t) with camera K.

    Every face is rendered with both windings, so a mesh whose faces are not consistently
    oriented still gives a full silhouette (the renderer culls back faces).
    """
    from render import Light, Mesh, render

    both = np.concatenate([faces, faces[:, ::-1]])
    mesh = Mesh(vertices, both, np.zeros_like(vertices), np.zeros((len(vertices), 3), np.uint8),
                np.full((len(both), 3), 255, np.uint8))
    rendering = render([mesh], [(R, t)], K, width, height, Light(np.array([0.0, 0.0, -1.0])))
    return np.where(rendering.ids >= 0, 255, 0).astype(np.uint8)


def find_mask(masks_dir: Path, image_name: str) -> Path:
    """The mask of `image_name` in masks_dir: same relative path and stem, any image extension."""
    rel = Path(image_name)
    stem_path = masks_dir / (rel.name if rel.is_absolute() else rel)
    for ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        cand = stem_path.with_suffix(ext)
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{stem_path.with_suffix('.png')}: mask of image {image_name!r} not found in {masks_dir}")


def make_labels(mesh_path, poses_path, images_dir, out_dir, name: str, K: np.ndarray | None = None,
                width: int | None = None, height: int | None = None, mesh_units: str = "m",
                pose_units: str = "m", class_id: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION,
                seed: int = 0, train_list=None, test_list=None, symlink: bool = False, masks: str = "render",
                masks_dir=None, diam: float | None = None, overwrite: bool = False, warn=None,
                camera_data=None) -> Path:
    """Write the dataset of one object (see the module docstring); return the .data path.

    K (3, 3) defaults to the LINEMOD camera; width/height to the first image's size. mesh_units,
    pose_units: 'm' or 'mm'. masks: 'render', 'full' or 'none' (ignored when masks_dir is given).
    Everything is checked (mesh, pose file, every image and mask) before anything is written, and
    so is every file it would replace (ownership.py): one it did not write is never replaced, one
    of an earlier run only with `overwrite`, and never one of its inputs (camera_data included).
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    out, images_dir = Path(out_dir), Path(images_dir)
    K = get_camera_intrinsic() if K is None else np.asarray(K, dtype=np.float64)
    for what, unit in (("mesh_units", mesh_units), ("pose_units", pose_units)):
        if unit not in UNIT_SCALE:
            raise ValueError(f"{what} must be one of {sorted(UNIT_SCALE)}; got {unit!r}")
    if masks_dir is None and masks not in MASK_MODES:
        raise ValueError(f"masks must be one of {MASK_MODES}; got {masks!r}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--name must be a plain folder name; got {name!r}")
    if diam is not None and not (math.isfinite(diam) and diam > 0):  # train.py and valid.py refuse such a .data
        raise FlagError(f"--diameter {diam}: the object's diameter must be a positive number of metres "
                        f"(leave --diameter out to use the mesh's)")

    # --- read and check every input first: a bad input leaves the output untouched ---
    mesh = MeshPly(mesh_path, scale=UNIT_SCALE[mesh_units], check_units=False)  # warned below, with the flag
    check_mesh_vertices(mesh.vertices, mesh_path)  # a point or a line: no pose, and a diameter of 0
    if masks_dir is None and masks == "render" and len(mesh.indices) == 0:
        raise ValueError(f"{mesh_path}: rendering masks needs a mesh with faces (this one is a point cloud); "
                         f"pass --masks full, --masks none or --masks-dir")
    poses = read_poses(poses_path)
    if not poses:
        raise ValueError(f"{poses_path}: no poses")
    sources = [Path(p["image"]) if Path(p["image"]).is_absolute() else images_dir / p["image"] for p in poses]
    poses, sources = _drop_repeated_images(poses, sources, poses_path, warn)
    for i, src in enumerate(sources):
        if not src.is_file():
            raise FileNotFoundError(f"{src}: image of pose entry {i} ({poses_path}) not found")
    if width is None or height is None:
        w0, h0 = image_size(sources[0])
        width, height = (w0 if width is None else width), (h0 if height is None else height)
    for i, src in enumerate(sources):
        if image_size(src) != (width, height):
            raise ValueError(f"{src}: image of pose entry {i} ({poses_path}) is {image_size(src)[0]}x"
                             f"{image_size(src)[1]}, the camera says {width}x{height}")
    mask_sources = None
    if masks_dir is not None:
        mask_sources = [find_mask(Path(masks_dir), p["image"]) for p in poses]
        for i, m in enumerate(mask_sources):
            if image_size(m) != (width, height):
                raise ValueError(f"{m}: mask of pose entry {i} is {image_size(m)[0]}x{image_size(m)[1]}, "
                                 f"the images are {width}x{height}")
    flags = split_flags([p["image"] for p in poses], test_fraction, seed,
                        read_names(train_list) if train_list else None, read_names(test_list) if test_list else None,
                        lists=(str(train_list), str(test_list)))
    # the written mesh holds float32: the labels use the box of exactly those values
    corners = box_corners(np.asarray(mesh.vertices, dtype=np.float32).astype(np.float64))
    far = []
    for i, rec in enumerate(poses):
        t = rec["t"] * UNIT_SCALE[pose_units]
        depth = (pose_points3d(corners) @ rec["R"].T + t)[:, 2]
        if np.any(depth <= 0):
            raise ValueError(f"{poses_path}: pose entry {i} ({rec['image']}) puts the object behind the camera "
                             f"(z = {depth.min():.3g} m); poses must map model to camera coordinates")
        if np.linalg.norm(t) > SUSPICIOUS_DISTANCE_M:
            far.append(i)
    if far and pose_units == "m":
        warn(f"warning: {poses_path}: {len(far)} poses are more than {SUSPICIOUS_DISTANCE_M:.0f} m away "
             f"(first: entry {far[0]}); if t is in millimetres pass --pose-units mm")

    folder = out / "LINEMOD" / name
    images = [image_destination(src, folder / "JPEGImages" / image_stem(i)) for i, src in enumerate(sources)]
    outputs = Outputs(out, TOOL)
    outputs.plan(object_files(out, name, images, masks=mask_sources is not None or masks != "none"), name)
    outputs.check(overwrite, inputs=[mesh_path, poses_path, *sources, *(mask_sources or []),
                                     *(p for p in (train_list, test_list, camera_data) if p)])
    with outputs.writing({"name": name, "mesh": str(mesh_path), "poses": str(poses_path)}):
        vertices = write_mesh_metres(folder / f"{name}.ply", mesh, mesh.vertices)
        diameter = mesh_diameter(vertices)
        units = units_warning(vertices, mesh_path, hint="pass --mesh-units mm") if mesh_units == "m" else None
        if units:
            warn(f"warning: {units}")

        entries, image_map, rel_images, outside = [], [], [], []
        for i, (rec, src) in enumerate(zip(poses, sources)):
            R, t = rec["R"], rec["t"] * UNIT_SCALE[pose_units]
            dst = place_image(src, folder / "JPEGImages" / image_stem(i), symlink)
            rel = f"LINEMOD/{name}/JPEGImages/{dst.name}"
            row = label_from_pose(corners, R, t, K, class_id, width, height)
            if not (0 <= row[1] <= 1 and 0 <= row[2] <= 1):
                outside.append(i)
            write_label_rows(folder / "labels" / f"{image_stem(i)}.txt", row)
            mask_file = out / mask_path(rel)
            if mask_sources is not None:
                m = cv2.imread(str(mask_sources[i]), cv2.IMREAD_GRAYSCALE)
                if m is None:
                    raise ValueError(f"{mask_sources[i]}: cannot read the mask")
                _write_mask(mask_file, np.where(m > 0, 255, 0).astype(np.uint8))
            elif masks == "render":
                _write_mask(mask_file, render_mask(vertices, mesh.indices, R, t, K, width, height))
            elif masks == "full":
                _write_mask(mask_file, np.full((height, width), 255, np.uint8))
            entries.append(pose_entry(rel, R, t, label=f"LINEMOD/{name}/labels/{image_stem(i)}.txt", row=0))
            image_map.append(f"{image_stem(i)} {rec['image']}")
            rel_images.append(rel)
        if outside:
            warn(f"warning: the object centre projects outside the image in {len(outside)} of {len(poses)} images "
                 f"(first: pose entry {outside[0]}); check the camera and that R, t map model to camera")

        write_list(folder / "train.txt", [p for p, f in zip(rel_images, flags) if not f])
        write_list(folder / "test.txt", [p for p, f in zip(rel_images, flags) if f])
        write_list(folder / "training_range.txt", [str(i) for i, f in enumerate(flags) if not f])
        write_list(folder / "image_map.txt", image_map)
        write_poses_json(out / "poses" / f"{name}.json", name, class_id, f"LINEMOD/{name}/{name}.ply", K, width, height,
                         entries)
        data = out / "cfg" / f"{name}.data"
        diameter = diameter if diam is None else float(diam)
        write_data_cfg(data, data_cfg_items(name, f"LINEMOD/{name}", diameter, K, width, height))
    for rel in outputs.kept:
        warn(f"warning: {out / rel}: changed since {TOOL} wrote it; kept as it is")
    return data


def _drop_repeated_images(poses: list, sources: list, poses_path, warn) -> tuple[list, list]:
    """Poses and image paths without repeats: an image listed twice with the same pose is kept
    once (with a warning); with two different poses it is a PoseFileError naming both entries."""
    first: dict[str, int] = {}
    keep = []
    for i, src in enumerate(sources):
        key = os.path.normpath(os.path.abspath(src))
        j = first.setdefault(key, i)
        if j == i:
            keep.append(i)
            continue
        a, b = poses[j], poses[i]
        if not (np.allclose(a["R"], b["R"], atol=1e-9) and np.allclose(a["t"], b["t"], atol=1e-9)):
            raise PoseFileError(
                f"{poses_path}: image {b['image']!r} has two different poses: entry {j} (R={a['R'].tolist()}, "
                f"t={a['t'].tolist()}) and entry {i} (R={b['R'].tolist()}, t={b['t'].tolist()}); keep one")
        warn(f"warning: {poses_path}: entry {i} repeats entry {j} (image {b['image']!r}, same pose); used once")
    return [poses[i] for i in keep], [sources[i] for i in keep]


def _write_mask(path: Path, mask: np.ndarray) -> None:
    write_image(path, mask)


def object_files(out: Path, name: str, images: list[Path], masks: bool) -> list[Path]:
    """Every file make_labels (and bop_to_linemod) writes for one object whose images go to `images`."""
    folder = out / "LINEMOD" / name
    files = [folder / f"{name}.ply", *images, *(folder / "labels" / f"{p.stem}.txt" for p in images),
             *(folder / n for n in ("train.txt", "test.txt", "training_range.txt", "image_map.txt")),
             out / "poses" / f"{name}.json", out / "cfg" / f"{name}.data"]
    if masks:
        files += [out / mask_path(p.relative_to(out).as_posix()) for p in images]
    return files


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n\n")[0],
                                    epilog="Formats and outputs: python -c 'import tools.make_labels as m; help(m)'")
    cli.add_mesh(p, "PLY (metres unless --mesh-units mm), its box gives the label points", required=True)
    p.add_argument("--poses", required=True, help="poses .json or .csv (model to camera; R row-major, t in metres)")
    p.add_argument("--images-dir", default=".", help="folder the pose file's image names are relative to (default .)")
    cli.add_out(p, what="the dataset root to write (LINEMOD/<name>/, cfg/, poses/)", required=True)
    p.add_argument("--name", required=True, help="object name (folder, .data and .ply names)")
    p.add_argument("--class-id", type=int, default=0, help="class id in the labels (default 0)")
    cli.add_camera(p, "camera (default: the LINEMOD camera, design §3.3, and the first image's size)")
    units = p.add_argument_group("units")
    cli.add_mesh_units(units, UNIT_SCALE, default=None, why="m, or mm with --mm")
    units.add_argument("--pose-units", choices=sorted(UNIT_SCALE), default=None, help="units of t (default m)")
    units.add_argument("--mm", action="store_true", help="mesh and t in millimetres (BOP); same as both units mm")
    p.add_argument("--diameter", type=float, default=None,
                   help="the object's diameter in metres, written as the .data 'diam' (default: the mesh's largest "
                        "vertex distance)")
    cli.add_alias(p, "--diam", "--diameter")  # --diam is valid.py's choice of the ADD diameter
    p.add_argument("--masks", choices=MASK_MODES, default="render",
                   help="render: mesh silhouettes (default); full: all-255 masks; none: no masks (no training)")
    p.add_argument("--masks-dir", default=None, help="your own masks, one per image with the image's stem")
    split = p.add_argument_group("train/test split (default: seeded random)")
    split.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                       help=f"fraction of images in test.txt: a random split (default {DEFAULT_TEST_FRACTION}: a "
                            f"quarter held out, as the synthetic sets)")
    cli.add_seed(split, what="of the random split")
    split.add_argument("--train-list", default=None,
                       help="file of the images for train.txt: their names, as in --poses")
    split.add_argument("--test-list", default=None, help="file of the images for test.txt: their names")
    p.add_argument("--symlink", action="store_true", help="link the images instead of copying them")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run wrote: the files of this --name (never other files, nor this "
                        "run's inputs)")
    return p


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.mm and (args.mesh_units == "m" or args.pose_units == "m"):
        parser.error("--mm contradicts --mesh-units m / --pose-units m")
    mesh_units = args.mesh_units or ("mm" if args.mm else "m")
    pose_units = args.pose_units or ("mm" if args.mm else "m")
    try:
        K, width, height = resolve_camera(args.camera_data, args.fx, args.fy, args.u0, args.v0, args.width, args.height)
        data = make_labels(args.mesh, args.poses, args.images_dir, args.out, args.name, K, width, height,
                           mesh_units, pose_units, args.class_id, args.test_fraction, args.seed, args.train_list,
                           args.test_list, args.symlink, args.masks, args.masks_dir, args.diameter, args.overwrite,
                           camera_data=args.camera_data)
    except (OSError, ValueError) as exc:  # FileNotFoundError, FileExistsError, MeshError, PoseFileError
        print(f"make_labels: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote LINEMOD/{args.name}/ under {args.out}; data cfg: {data}")
    print(f"train: python train.py --datacfg {data} ; test: python valid.py --datacfg {data} --weightfile ...")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
