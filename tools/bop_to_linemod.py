"""Convert a BOP dataset (`lm`, `lmo`, or any BOP-format set) into the LINEMOD layout of design §3.4.

    python tools/bop_to_linemod.py --bop /data/bop/lm --out data/linemod_bop [--split test] \\
        [--objects ape can cat | --objects 1 5 6] [--names linemod|bop] [--rotate-y-180] \\
        [--train-list 'splits/{name}/training_range.txt'] [--test-list ...] [--test-fraction 0.85]

Input (BOP format, https://github.com/thodan/bop_toolkit/blob/master/docs/bop_datasets_format.md):
    <bop>/models/models_info.json             per object: diameter (mm), ...
    <bop>/models/obj_XXXXXX.ply               meshes in MILLIMETRES
    <bop>/<split>/<scene>/scene_gt.json       {im_id: [{obj_id, cam_R_m2c (9, row-major), cam_t_m2c (mm)}]}
    <bop>/<split>/<scene>/scene_camera.json   {im_id: {cam_K (9, row-major), ...}}
    <bop>/<split>/<scene>/rgb/IIIIII.png|jpg
    <bop>/<split>/<scene>/mask_visib/IIIIII_GGGGGG.png (preferred) or mask/IIIIII_GGGGGG.png

Output, per object (same files as tools/make_labels.py; lists relative to --out):
    LINEMOD/<name>/JPEGImages/NNNNNN.jpg      NNNNNN = BOP im_id when the object comes from one
                                              scene, else a running index; image_map.txt says
                                              'NNNNNN scene im_id gt_index'
    LINEMOD/<name>/labels/NNNNNN.txt          one row: the object, projected with THAT image's K
    LINEMOD/<name>/mask/NNNN.png              the BOP visible mask (or full mask), 0 / 255;
                                              the mesh silhouette where BOP has none
    LINEMOD/<name>/<name>.ply                 mesh in METRES (ASCII, normals, colours)
    LINEMOD/<name>/train.txt, test.txt, training_range.txt, image_map.txt
    poses/<name>.json                         R, t (metres) per image (+ K where it varies)
    cfg/<name>.data                           camera = the first image's K (a warning is printed
                                              if K varies); diam = models_info diameter / 1000
    ssp_manifest.json                         what it wrote (ownership.py): a file that exists and
                                              that it did not write (a .data you edited) is never
                                              replaced; --overwrite replaces only its own files

Frames. By default the written mesh is the BOP model in the BOP model frame, only scaled from
mm to m (v_written = v_bop / 1000, stored as float32), and the poses are BOP's cam_R_m2c and
cam_t_m2c / 1000 unchanged; the labels are the projections of that mesh's box with those poses.
Users report (zju3dv/pvnet#70) that the meshes of the preprocessed LINEMOD archive SingleShotPose
uses are rotated by 180 degrees about the model Y axis relative to the original LINEMOD meshes
(and in m instead of mm); whether BOP's lm models share the original frame is not verified here
(no dataset download in this project). `--rotate-y-180` writes the other frame: mesh
v' = Ry v with Ry = diag(-1, 1, -1), poses R' = R Ry, t' = t. Since R' v' + t = R v + t, the
object projects to the same pixels and the centroid label is unchanged; the box of the rotated
mesh is the rotated box, so its corners are the same 8 image points in another order: new
corner k = old corner k ^ 0b101 (x and z flipped: 0<->5, 1<->4, 2<->7, 3<->6). That order is
what a network trained on the preprocessed archive (e.g. the MS-released models) predicts if
the report holds; check with tools/draw_labels.py over the archive's mesh before relying on it.

Names and class ids: `--names linemod` (default) uses the LINEMOD names for BOP ids 1..15 (1 ape,
2 benchvise, 3 bowl, 4 cam, 5 can, 6 cat, 7 cup, 8 driller, 9 duck, 10 eggbox, 11 glue,
12 holepuncher, 13 iron, 14 lamp, 15 phone), `--names bop` gives obj_000001, ... Class ids are
the design §3.1 alphabetical LINEMOD indices when every converted object is one of the 13 LINEMOD
objects, else the position in the sorted list of converted object ids.

Splits: the BOP test split is not the BB8 train/test split SingleShotPose used. Pass
`--train-list` / `--test-list` (files of image ids, one per line, like LINEMOD's
training_range.txt; '{name}' and '{obj_id}' in the path are replaced per object) to reproduce a
given split; otherwise a seeded random split with --test-fraction (default 0.85: roughly the BB8
proportion of test images) is used. BOP lm's test split holds every original LINEMOD image; that
its im_ids equal the indices of the preprocessed archive's training_range.txt is assumed, not
verified here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from errors import run_cli
from image import write_image
from linemod_format import (
    JPEG_QUALITY, check_pose, copy_file, data_cfg_items, image_stem, mask_path, pose_entry, split_flags,
    write_data_cfg, write_label_rows, write_list, write_poses_json,
)
from MeshPly import MM_TO_M, MeshPly
from ownership import Outputs
from tools.make_labels import image_size, object_files, render_mask, write_mesh_metres
from utils import LINEMOD_OBJECTS, box_corners, check_mesh_vertices, label_from_pose, mesh_diameter

BOP_LM_NAMES = {1: "ape", 2: "benchvise", 3: "bowl", 4: "cam", 5: "can", 6: "cat", 7: "cup", 8: "driller",
                9: "duck", 10: "eggbox", 11: "glue", 12: "holepuncher", 13: "iron", 14: "lamp", 15: "phone"}
ROT_Y_180 = np.diag([-1.0, 1.0, -1.0])  # 180 degrees about the model Y axis
DEFAULT_TEST_FRACTION = 0.85
TOOL = "bop_to_linemod.py"  # the name its files carry in the output folder's manifest (ownership.py)
K_TOLERANCE = 1e-6


def _load_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BOP file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc


def scan_split(split_dir: Path) -> dict:
    """{obj_id: [(scene, im_id, gt_index, R (3, 3), t_mm (3,), K (3, 3))]} sorted by scene, image, index.

    Every pose and camera is checked; errors name the file, the image id and the annotation index.
    """
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: BOP split folder not found")
    found: dict = {}
    scenes = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not scenes:
        raise FileNotFoundError(f"{split_dir}: no scene folders (expected e.g. {split_dir / '000001'})")
    for scene_dir in scenes:
        gt_file, cam_file = scene_dir / "scene_gt.json", scene_dir / "scene_camera.json"
        gt, cam = _load_json(gt_file), _load_json(cam_file)
        for im_key in sorted(gt, key=_image_key(gt_file)):
            if im_key not in cam:
                raise ValueError(f"{cam_file}: no camera for image {im_key} (annotated in {gt_file.name})")
            K = _numbers(cam[im_key], "cam_K", 9, f"{cam_file}: image {im_key}").reshape(3, 3)
            if not (K[0, 0] > 0 and K[1, 1] > 0):
                raise ValueError(f"{cam_file}: image {im_key}: cam_K has non-positive focal lengths "
                                 f"{K[0, 0]}, {K[1, 1]}")
            for g, rec in enumerate(gt[im_key]):
                where = f"{gt_file}: image {im_key} annotation {g}"
                R = _numbers(rec, "cam_R_m2c", 9, where).reshape(3, 3)
                t = _numbers(rec, "cam_t_m2c", 3, where)
                check_pose(where, R, t)
                if "obj_id" not in rec:
                    raise ValueError(f"{where}: no obj_id")
                found.setdefault(int(rec["obj_id"]), []).append((scene_dir.name, int(im_key), g, R, t, K))
    return found


def _image_key(path: Path):
    def key(im_key: str) -> int:
        try:
            return int(im_key)
        except ValueError:
            raise ValueError(f"{path}: image ids must be integers; found {im_key!r}") from None
    return key


def _numbers(rec, key: str, n: int, where: str) -> np.ndarray:
    """rec[key] as a flat float64 array of n numbers, or a ValueError naming `where`."""
    if not isinstance(rec, dict) or key not in rec:
        raise ValueError(f"{where}: no {key}")
    try:
        vals = np.asarray(rec[key], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {key} must be numbers ({exc})") from exc
    if vals.size != n:
        raise ValueError(f"{where}: {key} needs {n} numbers; found {vals.size}")
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"{where}: {key} holds a non-finite value: {vals.tolist()}")
    return vals


def object_name(obj_id: int, names: str) -> str:
    return BOP_LM_NAMES[obj_id] if names == "linemod" and obj_id in BOP_LM_NAMES else f"obj_{obj_id:06d}"


def object_ids(values: list[str]) -> list[int]:
    """BOP object ids of --objects values: ids ('5'), LINEMOD names ('can') or BOP names ('obj_000005')."""
    by_name = {n: o for o, n in BOP_LM_NAMES.items()}
    ids = []
    for v in values:
        if v.isdigit():
            ids.append(int(v))
        elif v in by_name:
            ids.append(by_name[v])
        elif v.startswith("obj_") and v[4:].isdigit():
            ids.append(int(v[4:]))
        else:
            raise ValueError(f"--objects: {v!r} is neither a BOP object id, a LINEMOD name nor obj_NNNNNN")
    return ids


def class_ids(obj_ids: list[int], names: str) -> dict:
    """{obj_id: class id}: LINEMOD alphabetical index if all are LINEMOD objects, else sorted position."""
    named = {o: object_name(o, names) for o in obj_ids}
    if all(n in LINEMOD_OBJECTS for n in named.values()):
        return {o: LINEMOD_OBJECTS.index(n) for o, n in named.items()}
    return {o: i for i, o in enumerate(sorted(obj_ids))}


def _read_ids(path_pattern: str, name: str, obj_id: int) -> set[int]:
    path = Path(path_pattern.replace("{name}", name).replace("{obj_id}", str(obj_id)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split list not found")
    ids = set()
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if line:
            try:
                ids.add(int(Path(line).stem) if not line.isdigit() else int(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: expected an image id, found {line!r}") from exc
    return ids


def find_image(rgb_dir: Path, im_id: int) -> Path:
    """The BOP image rgb_dir/IIIIII.png (or .jpg, .jpeg)."""
    for ext in (".png", ".jpg", ".jpeg"):
        src = rgb_dir / f"{im_id:06d}{ext}"
        if src.is_file():
            return src
    raise FileNotFoundError(f"{rgb_dir / f'{im_id:06d}.png'}: BOP image not found (nor .jpg)")


def _write_image(src: Path, dst_stem: Path, image_format: str) -> Path:
    """Copy src to dst_stem.<image_format> atomically, re-encoding when the format differs."""
    out = dst_stem.with_suffix("." + image_format)
    if src.suffix.lower().lstrip(".").replace("jpeg", "jpg") == image_format:
        copy_file(src, out)
        return out
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{src}: cannot read the image")
    write_image(out, img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if image_format == "jpg" else [])
    return out


def file_indices(items: list) -> list[int]:
    """The file number of each of an object's images: the BOP im_id when it is unique for this
    object (one scene), else a running index."""
    single_scene = len({it[0] for it in items}) == 1 and len({it[1] for it in items}) == len(items)
    return [it[1] if single_scene else n for n, it in enumerate(items)]


def image_files(out: Path, name: str, items: list, image_format: str) -> list[Path]:
    """Where convert_object writes an object's images."""
    return [out / "LINEMOD" / name / "JPEGImages" / f"{image_stem(i)}.{image_format}" for i in file_indices(items)]


def mesh_path(bop: Path, obj_id: int) -> Path:
    return bop / "models" / f"obj_{obj_id:06d}.ply"


def convert_object(bop: Path, split: str, obj_id: int, items: list, out: Path, name: str, class_id: int,
                   diameter_m: float | None, rotate_y_180: bool = False, image_format: str = "jpg",
                   mask_kind: str = "visib", flags: np.ndarray | None = None, warn=print) -> Path:
    """Write LINEMOD/<name>/ for one BOP object; items from scan_split; flags (n,) test flags.

    Returns the .data path."""
    folder = out / "LINEMOD" / name
    mesh = MeshPly.from_millimetres(mesh_path(bop, obj_id))
    vertices, normals = mesh.vertices, mesh.normals
    if rotate_y_180:
        vertices = vertices @ ROT_Y_180.T
        normals = None if normals is None else normals @ ROT_Y_180.T
    vertices = write_mesh_metres(folder / f"{name}.ply", mesh, vertices, normals)
    corners = box_corners(vertices)

    K0 = items[0][5]
    varies = any(not np.allclose(it[5], K0, rtol=0, atol=K_TOLERANCE) for it in items)
    if varies:
        warn(f"warning: {name}: the camera K varies between images; labels use each image's K, "
             f"cfg/{name}.data gets the first one ({split}/{items[0][0]} image {items[0][1]})")
    entries, image_map, rel_images, rendered = [], [], [], 0
    for index, (scene, im_id, g, R, t_mm, K) in zip(file_indices(items), items):
        scene_dir = bop / split / scene
        dst = _write_image(find_image(scene_dir / "rgb", im_id), folder / "JPEGImages" / image_stem(index),
                           image_format)
        rel = f"LINEMOD/{name}/JPEGImages/{dst.name}"
        if rotate_y_180:
            R = R @ ROT_Y_180
        t = t_mm * MM_TO_M
        width, height = image_size(dst)
        row = label_from_pose(corners, R, t, K, class_id, width, height)
        write_label_rows(folder / "labels" / f"{image_stem(index)}.txt", row)
        mask = _read_mask(scene_dir, im_id, g, mask_kind, (height, width))
        if mask is None:  # no BOP mask: the mesh silhouette at the annotated pose
            mask = render_mask(vertices, mesh.indices, R, t, K, width, height)
            rendered += 1
        write_image(out / mask_path(rel), mask)
        extra = {"label": f"LINEMOD/{name}/labels/{image_stem(index)}.txt", "row": 0}
        if varies:
            extra["K"] = K.tolist()
        entries.append(pose_entry(rel, R, t, **extra))
        image_map.append(f"{image_stem(index)} {scene} {im_id} {g}")
        rel_images.append(rel)
    if rendered:
        warn(f"warning: {name}: {rendered} of {len(items)} images had no BOP mask; rendered from the mesh instead")
    flags = np.zeros(len(items), bool) if flags is None else flags
    write_list(folder / "train.txt", [p for p, f in zip(rel_images, flags) if not f])
    write_list(folder / "test.txt", [p for p, f in zip(rel_images, flags) if f])
    write_list(folder / "training_range.txt", [str(int(Path(p).stem)) for p, f in zip(rel_images, flags) if not f])
    write_list(folder / "image_map.txt", image_map)
    width, height = image_size(out / rel_images[0])
    write_poses_json(out / "poses" / f"{name}.json", name, class_id, f"LINEMOD/{name}/{name}.ply", K0, width, height,
                     entries)
    data = out / "cfg" / f"{name}.data"
    diam = mesh_diameter(vertices) if diameter_m is None else diameter_m
    write_data_cfg(data, data_cfg_items(name, f"LINEMOD/{name}", diam, K0, width, height))
    return data


def _read_mask(scene_dir: Path, im_id: int, gt_index: int, mask_kind: str, shape: tuple[int, int]):
    """The BOP mask (H, W) uint8 0/255 of one annotation (mask_visib/ or mask/ first), or None if there is none."""
    kinds = ["mask_visib", "mask"] if mask_kind == "visib" else ["mask", "mask_visib"]
    for kind in kinds:
        src = scene_dir / kind / f"{im_id:06d}_{gt_index:06d}.png"
        if src.is_file():
            m = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
            if m is None or m.shape != shape:
                raise ValueError(f"{src}: cannot read the mask as a {shape[1]}x{shape[0]} image")
            return np.where(m > 0, 255, 0).astype(np.uint8)
    return None


def convert(bop_dir, out_dir, split: str = "test", objects=None, names: str = "linemod", rotate_y_180: bool = False,
            train_list: str | None = None, test_list: str | None = None, test_fraction: float = DEFAULT_TEST_FRACTION,
            seed: int = 0, image_format: str = "jpg", mask_kind: str = "visib", overwrite: bool = False,
            warn=None) -> list[Path]:
    """Convert the chosen objects of a BOP split (see the module docstring); return the .data paths.

    Every input (annotations, cameras, meshes, images, split lists) is checked before anything is
    written; errors name the file (and the image id / annotation index).
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    bop, out = Path(bop_dir), Path(out_dir)
    found = scan_split(bop / split)
    info = _load_json(bop / "models" / "models_info.json")
    obj_ids = sorted(found) if not objects else sorted(int(o) for o in objects)
    missing = [o for o in obj_ids if o not in found]
    if missing:
        raise ValueError(f"{bop / split}: objects {missing} have no annotation; found {sorted(found)}")
    ids = class_ids(obj_ids, names)
    plans = []
    for o in obj_ids:
        name = object_name(o, names)
        if not mesh_path(bop, o).is_file():
            raise FileNotFoundError(f"{mesh_path(bop, o)}: mesh of object {o} not found")
        # a mesh whose box cannot give a pose is refused before anything is written (design D61)
        check_mesh_vertices(MeshPly.from_millimetres(mesh_path(bop, o)).vertices, mesh_path(bop, o))
        for scene, im_id, *_ in found[o]:
            find_image(bop / split / scene / "rgb", im_id)
        entry = info.get(str(o))
        if isinstance(entry, dict) and "diameter" in entry:
            diameter = float(entry["diameter"]) * MM_TO_M
        else:
            warn(f"warning: {bop / 'models' / 'models_info.json'}: no diameter for object {o}; using the mesh's")
            diameter = None
        im_ids = [it[1] for it in found[o]]
        flags = split_flags(im_ids, test_fraction, [seed, o],
                            _read_ids(train_list, name, o) if train_list else None,
                            _read_ids(test_list, name, o) if test_list else None,
                            lists=(str(train_list), str(test_list)))
        plans.append((o, name, diameter, flags))
    outputs = Outputs(out, TOOL)
    for o, name, _, _ in plans:
        outputs.plan(object_files(out, name, image_files(out, name, found[o], image_format), masks=True), name)
    outputs.check(overwrite, inputs=[p for o, *_ in plans for p in _input_files(bop, split, o, found[o])])
    with outputs.writing({"bop": str(bop), "split": split}):
        datas = []
        for o, name, diameter, flags in plans:
            datas.append(convert_object(bop, split, o, found[o], out, name, ids[o], diameter, rotate_y_180,
                                        image_format, mask_kind, flags, warn))
    for rel in outputs.kept:
        warn(f"warning: {out / rel}: changed since {TOOL} wrote it; kept as it is")
    return datas


def _input_files(bop: Path, split: str, obj_id: int, items: list) -> list[Path]:
    """The BOP files an object's conversion reads: its mesh, images and masks (none may be replaced)."""
    files = [mesh_path(bop, obj_id)]
    for scene, im_id, g, *_ in items:
        scene_dir = bop / split / scene
        files.append(find_image(scene_dir / "rgb", im_id))
        files += [scene_dir / kind / f"{im_id:06d}_{g:06d}.png" for kind in ("mask_visib", "mask")]
    return files


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n\n")[0],
                                    epilog="Frames, names, splits: "
                                           "python -c 'import tools.bop_to_linemod as m; help(m)'")
    p.add_argument("--bop", required=True, help="BOP dataset folder (holds models/ and the split folders)")
    cli.add_out(p, what="the dataset root to write (LINEMOD/<name>/, cfg/, poses/)", required=True)
    p.add_argument("--split", default="test", help="BOP split folder (default test)")
    cli.add_objects(p, "those to convert, by name (ape, obj_000005) or BOP id (default: all annotated)")
    p.add_argument("--names", choices=("linemod", "bop"), default="linemod", help="object naming (default linemod)")
    p.add_argument("--rotate-y-180", action="store_true",
                   help="write mesh and poses rotated 180 deg about the model Y axis (see the frames note)")
    p.add_argument("--train-list", default=None,
                   help="file of the images for train.txt: their ids ('{name}'/'{obj_id}' substituted)")
    p.add_argument("--test-list", default=None, help="file of the images for test.txt: their ids (default: the rest)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help=f"fraction of images in test.txt: a random split without lists (default "
                        f"{DEFAULT_TEST_FRACTION}: about LINEMOD's, where 15 %% of the images train)")
    cli.add_seed(p, what="of the random split")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="output image format (default jpg)")
    p.add_argument("--mask-kind", choices=("visib", "full"), default="visib",
                   help="BOP mask to use first (default visib)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run wrote: the files of these objects (never other files, nor the "
                        "BOP inputs)")
    return p


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    objects = None
    if args.objects:
        try:
            objects = object_ids(cli.object_list(args.objects))
        except ValueError as exc:
            parser.error(str(exc))
    try:
        datas = convert(args.bop, args.out, args.split, objects, args.names, args.rotate_y_180, args.train_list,
                        args.test_list, args.test_fraction, args.seed, args.image_format, args.mask_kind,
                        args.overwrite)
    except (OSError, ValueError) as exc:  # FileNotFoundError, FileExistsError, MeshError, PoseFileError
        print(f"bop_to_linemod: error: {exc}", file=sys.stderr)
        return 2
    print(f"converted {len(datas)} objects into {args.out}: " + " ".join(str(d) for d in datas))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
