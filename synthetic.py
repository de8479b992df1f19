"""The synthetic LINEMOD sets: generation, fresh test sets, the main jobs' cached set (design §3.4, §14.3).

The library behind tools/make_synthetic_linemod.py (its command line) and training.py (the main
jobs' set, `ensure_dataset`); rendering is render.py.

    from synthetic import generate, add_fresh_test, add_fresh_multi
    generate("data/synthetic", objects=3, images_per_object=20, seed=0, multi=0)
    add_fresh_test("data/synthetic", 100, fresh_seed=7)      # --fresh-test 100 --fresh-seed 7
    add_fresh_multi("data/synthetic", 50, fresh_seed=7)      # --fresh-scenes 50 --fresh-seed 7

add_fresh_test adds a fresh test set to an existing dataset: N new images per object whose
poses and backgrounds come from the fresh seed, listed in LINEMOD/<obj>/test_fresh<S>.txt, with
cfg/<obj>_fresh<S>.data pointing `valid` at them; nothing that exists is changed. add_fresh_multi adds
N fresh multi-object test scenes to a dataset made with multi > 0 (see below), listed in
LINEMOD/<obj>/test_occlusion_fresh<S>.txt, with cfg/occlusion_fresh<S>.data (cfg/occlusion.data
with every valid<k> pointing at them); nothing that exists is changed either.

Procedural, textured, asymmetric meshes (render.py) are rendered with the LINEMOD
camera (design §3.3) at LINEMOD-like poses (0.6-1.2 m, upper hemisphere, any in-plane roll) over
procedural cluttered backgrounds (image.procedural_background plus patches in the objects'
colours). Everything is drawn from numpy Generators seeded per (seed, object, image), so a seed
gives byte-identical files whatever the number of worker processes is.

Layout under DIR (DIR plays the role of the dataset root that contains LINEMOD/; every path in
a list or .data file is relative to DIR):

    LINEMOD/<obj>/JPEGImages/NNNNNN.jpg      640 x 480 RGB, JPEG quality 95
    LINEMOD/<obj>/labels/NNNNNN.txt          one 21-number row per object ('%.6f'); class id =
                                             object index; keypoints in the design §9.2 order
    LINEMOD/<obj>/mask/NNNN.png              0 / 255: exactly the pixels the renderer wrote for
                                             the object (4 digits: the design §3.4 '/00' derivation)
    LINEMOD/<obj>/train.txt, test.txt        e.g. 'LINEMOD/obj00/JPEGImages/000012.jpg'
    LINEMOD/<obj>/training_range.txt         training image indices, one per line
    LINEMOD/<obj>/<obj>.ply                  ASCII PLY, metres, normals, uchar colours
    cfg/<obj>.data                           every design §3.2 key; diam = utils.mesh_diameter(mesh)
    poses/<obj>.json                         K, image size, and for every image showing the
                                             object: image, label file, row, R (3x3), t (m)
    synthetic_info.json                      the generation parameters (written last)
    ssp_manifest.json                        every file written, with its size and sha256
                                             (ownership.py)

Nothing is replaced that this generator did not write: a file in its way (your cfg/<obj>.data, an
object folder of make_labels.py, a file you changed since) stops it before it writes anything,
named in the message, even with --overwrite; --overwrite replaces (or removes, when the new set
has fewer files) only files the manifest says it wrote, unchanged.

Objects are named obj00, obj01, ... (not LINEMOD names: the diameters differ).

With `multi=N` (--scenes N), N OCCLUSION-style scenes are added (design §3.4, §6.3, §9.6). Object 0 ("main",
the role benchvise plays in OCCLUSION) is in every scene, with 1-3 other objects placed so that
their silhouettes overlap (no 3-D interpenetration, each object at least MIN_VISIBLE visible):

    LINEMOD/obj00/JPEGImages/NNNNNN.jpg      scene images, numbered after the single-object ones
    LINEMOD/obj00/labels/NNNNNN.txt          one row per object in the scene (design §9.2 order)
    LINEMOD/obj00/mask/NNNN.png              union of all the scene's objects (what the
                                             multi-object loader keeps when it masks the image)
    cfg/train_occlusion.txt                  the training scenes (multi-object training list)
    LINEMOD/<obj>/test_occlusion.txt         test scenes that contain <obj>
    LINEMOD/<obj>/labels_occlusion/NNNNNN.txt   that object's row in the OCCLUSION corner order:
                                             re-ordered with [0,1,3,5,7,2,4,6,8] it gives the
                                             design §9.2 order (what valid_multi does, §9.6)
    cfg/occlusion.data                       train list, im_width/im_height, camera, valid<k>/
                                             mesh<k>/diam<k> with k = class id + 1
    cfg/<obj>_occlusion.data                 per-object evaluation cfg (valid = test_occlusion)

The label path of a test scene for <obj> is derived as in the original: replace the main
object's folder name by <obj> and JPEGImages by labels_occlusion.

add_fresh_multi(out, N, S) (--fresh-scenes N --fresh-seed S) adds N test scenes drawn from S alone, written
like the test scenes above and numbered after every image in the main object's JPEGImages, plus:

    LINEMOD/<obj>/test_occlusion_fresh<S>.txt   the fresh scenes that contain <obj>
    poses/<obj>_occlusion_fresh<S>.json      their poses, as in poses/<obj>.json
    cfg/occlusion_fresh<S>.data              cfg/occlusion.data with valid<k> = those lists
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import math
import multiprocessing
import os
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from errors import InputError, MeshError, OverwriteError
from image import procedural_background, write_image
from linemod_format import (
    IM_HEIGHT, IM_WIDTH, JPEG_QUALITY, data_cfg_items, image_stem, label_path, mask_path, occlusion_label_path,
    pose_entry, read_data_cfg, to_occlusion_order, write_data_cfg, write_label_rows, write_list, write_poses_json,
    write_text,
)
from MeshPly import read_mesh, write_ply
from ownership import Outputs, run_record
from randomisation import Randomiser, RenderOptions
from render import DISTANCE_RANGE_M, Light, Mesh, make_mesh, render, sample_pose
from utils import check_mesh_vertices, get_camera_intrinsic, label_from_pose, mesh_diameter

DEFAULT_OUT = "data/synthetic"
DEFAULT_TEST_FRACTION = 0.25
MAX_SCENE_EXTRAS = 3  # objects besides the main one in a multi-object scene
MIN_VISIBLE = 0.3  # every labelled scene object keeps at least 30 % of its silhouette
SCENE_TRIES = 20
SPHERE_CLEARANCE_M = 0.005
# procedural_background is drawn at 1/BACKGROUND_DOWNSCALE resolution and upsampled: its per-pixel
# Gaussian noise was ~70 % of the time per image at full size (the result is a little smoother)
BACKGROUND_DOWNSCALE = 2
BLUR_SIGMA_PX = 0.6  # a touch of camera blur on the composite (the mask stays the rendered pixels)
AUTO_IMAGES_PER_WORKER = 250  # CLI default: one more worker process per this many images
INFO_FILE = "synthetic_info.json"
TOOL, GROUP = "make_synthetic_linemod.py", "synthetic"  # how its files are listed in the manifest (ownership.py)
MAIN_JOB_SUFFIX = "_main"  # the main jobs' own folder when theirs holds another set (ensure_dataset)

# seed streams: np.random.SeedSequence([seed, TAG, ...]) keeps every draw independent of the others
TAG_MESH, TAG_IMAGE, TAG_SCENE, TAG_SPLIT, TAG_FRESH, TAG_FRESH_SCENE = 0, 1, 2, 3, 4, 5
TAG_JPEG, TAG_DISTRACTOR = 6, 7  # sets of user meshes: each image's JPEG quality; the distractor meshes


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def object_names(n: int) -> list[str]:
    """obj00, obj01, ... (two digits at least; fixed width so no name contains another)."""
    width = max(2, len(str(n - 1)))
    return [f"obj{i:0{width}d}" for i in range(n)]


@dataclass
class SynthObject:
    name: str
    class_id: int
    mesh: Mesh
    diameter: float  # metres, utils.mesh_diameter of the written vertices
    pose_ranges: dict = field(default_factory=dict)  # sample_pose keywords (a user mesh's camera ranges)


def build_objects(n: int, seed: int) -> list[SynthObject]:
    """The n procedural objects of a seed (object i depends only on (seed, i))."""
    out = []
    for i, name in enumerate(object_names(n)):
        mesh = make_mesh(_rng(seed, TAG_MESH, i))
        out.append(SynthObject(name, i, mesh, mesh_diameter(mesh.vertices)))
    return out


# --------------------------------------------------------------------------------------------
# One image / one scene (pure: arrays in, arrays out)
# --------------------------------------------------------------------------------------------

def make_background(rng: np.random.Generator, colors: np.ndarray, width: int, height: int) -> np.ndarray:
    """Procedural clutter (H, W, 3) uint8 plus a few patches in the objects' colours `colors` (P, 3)."""
    small = procedural_background(rng, width // BACKGROUND_DOWNSCALE, height // BACKGROUND_DOWNSCALE)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(4, 10))):
        col = tuple(float(c) for c in np.clip(colors[rng.integers(len(colors))] * rng.uniform(0.6, 1.1), 0, 255))
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 60)
        if rng.random() < 0.5:
            ang = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 7))))
            pts = np.stack([cx + r * np.cos(ang), cy + r * rng.uniform(0.4, 1.0) * np.sin(ang)], axis=1)
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], col)
        else:
            cv2.ellipse(img, (int(cx), int(cy)), (int(r), int(r * rng.uniform(0.3, 1.0))),
                        float(rng.uniform(0, 180)), 0, 360, col, -1)
    return img


def _composite(background: np.ndarray, rendering) -> np.ndarray:
    img = background.copy()
    cv2.copyTo(rendering.rgb, (rendering.ids >= 0).view(np.uint8), img)  # the rendered pixels over the background
    return cv2.GaussianBlur(img, (3, 3), BLUR_SIGMA_PX)


def render_single(objects: list[SynthObject], obj_idx: int, img_idx: int, seed: int, K: np.ndarray,
                  width: int = IM_WIDTH, height: int = IM_HEIGHT, tag: int = TAG_IMAGE):
    """One single-object image: (rgb (H, W, 3) uint8, mask (H, W) uint8 0/255, R (3, 3), t (3,) m).

    Pose, light and background come from the stream (seed, tag, obj_idx, img_idx).
    """
    rng = _rng(seed, tag, obj_idx, img_idx)
    obj = objects[obj_idx]
    R, t = sample_pose(rng, obj.mesh.keypoints3d, K, width, height)
    rendering = render([obj.mesh], [(R, t)], K, width, height, Light.random(rng))
    bg = make_background(rng, np.concatenate([o.mesh.face_colors for o in objects]).astype(np.float64), width, height)
    mask = np.where(rendering.ids == 0, 255, 0).astype(np.uint8)
    return _composite(bg, rendering), mask, R, t


def render_mesh_single(objects: list[SynthObject], obj_idx: int, img_idx: int, seed: int, K: np.ndarray,
                       width: int, height: int, randomiser: Randomiser, tag: int = TAG_IMAGE):
    """One image of a user's mesh: (rgb (H, W, 3) uint8, mask (H, W) uint8 0/255, R (3, 3), t (3,) m).

    Pose (the object's camera ranges), colour, lights, distractors, occluders, background and
    camera effects come from the stream (seed, tag, obj_idx, img_idx), drawn as `randomiser` says
    (randomisation.py); the mask is exactly the object's rendered pixels left visible.
    """
    rng = _rng(seed, tag, obj_idx, img_idx)
    obj = objects[obj_idx]
    R, t = sample_pose(rng, obj.mesh.keypoints3d, K, width, height, **obj.pose_ranges)
    mesh = _dress(rng, obj.mesh)
    lighting = randomiser.options.lighting(rng)
    radius = float(np.linalg.norm(obj.mesh.vertices, axis=1).max())
    behind, front = randomiser.clutter(rng, radius, t, K, width, height, colours=mesh.face_colors)
    extra = behind + front
    rendering = render([mesh] + [m for m, _ in extra], [(R, t)] + [p for _, p in extra], K, width, height, lighting)
    if front and rendering.visible_fraction()[0] < randomiser.options.min_visible:
        rendering = render([mesh] + [m for m, _ in behind], [(R, t)] + [p for _, p in behind], K, width, height,
                           lighting)  # the occluders hid too much: without them
    bg = randomiser.ground(rng, randomiser.background(rng, width, height), R, t, obj.mesh.vertices, K)
    rgb = rendering.rgb.copy()
    visible = rendering.ids == 0  # the object's pixels: its shading, jitter, detail and mask
    randomiser.cavity(rng, rgb, rendering.depth, visible, radius)
    randomiser.jitter(rng, rgb, visible)
    randomiser.detail(rng, rgb, visible)
    rgb = randomiser.finish(rng, bg, replace(rendering, rgb=rgb))
    return rgb, np.where(visible, 255, 0).astype(np.uint8), R, t


def _dress(rng: np.random.Generator, mesh: Mesh) -> Mesh:
    """The mesh as rendered in one image: a mesh without colours gets one random colour (a draw
    from rng only then), any other is unchanged."""
    if mesh.colored:
        return mesh
    h, sat, val = rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.3, 1.0)
    return mesh.recolored(np.round(np.array(colorsys.hsv_to_rgb(h, sat, val)) * 255).astype(np.uint8))


def _place_scene(rng, objects: list[SynthObject], chosen: list[int], K, width, height):
    """Poses [(R, t)] for the chosen objects (chosen[0] = main, near the image centre); others near it."""
    main = objects[chosen[0]]
    R, t = sample_pose(rng, main.mesh.keypoints3d, K, width, height,
                       centre_box=(0.3 * width, 0.7 * width, 0.3 * height, 0.7 * height), **main.pose_ranges)
    poses = [(R, t)]
    spheres = [_sphere(main.mesh, R, t)]
    main_px = K @ t / t[2]
    placed = [chosen[0]]
    for idx in chosen[1:]:
        mesh = objects[idx].mesh
        for _ in range(SCENE_TRIES):
            r_px = K[0, 0] * (spheres[0][1] / t[2] + mesh.bounding_sphere()[1] / 0.9)
            ang = rng.uniform(0, 2 * np.pi)
            target = main_px[:2] + rng.uniform(0.4, 1.0) * r_px * np.array([np.cos(ang), np.sin(ang)])
            box = (target[0] - 15, target[0] + 15, target[1] - 15, target[1] + 15)
            try:
                Ri, ti = sample_pose(rng, mesh.keypoints3d, K, width, height, centre_box=box,
                                     **objects[idx].pose_ranges)
            except RuntimeError:
                continue
            c, r = _sphere(mesh, Ri, ti)
            if all(np.linalg.norm(c - c2) > r + r2 + SPHERE_CLEARANCE_M for c2, r2 in spheres):
                poses.append((Ri, ti))
                spheres.append((c, r))
                placed.append(idx)
                break
    return placed, poses


def _sphere(mesh: Mesh, R, t):
    c, r = mesh.bounding_sphere()
    return R @ c + t, r


def render_scene(objects: list[SynthObject], scene_idx: int, seed: int, K: np.ndarray,
                 width: int = IM_WIDTH, height: int = IM_HEIGHT, tag: int = TAG_SCENE, options=None):
    """One multi-object scene with mutual occlusion.

    Objects, poses, light and background come from the stream (seed, tag, scene_idx); options: a
    randomisation.Randomiser (a set of user meshes: smooth shading, its backgrounds and camera
    effects) or None (the procedural sets, flat shading). Returns
    rgb (H, W, 3) uint8, mask (H, W) uint8 (union of all objects, 0/255), and a list of
    (object index, R (3, 3), t (3,) m, visible fraction) sorted by object index; object 0 always.
    """
    if len(objects) < 2:
        raise ValueError(f"multi-object scenes need at least 2 objects; got {len(objects)}")
    rng = _rng(seed, tag, scene_idx)
    others = np.arange(1, len(objects))
    light = Light.random(rng) if options is None else options.options.lighting(rng)
    meshes = [o.mesh for o in objects] if options is None else [_dress(rng, o.mesh) for o in objects]
    best = None
    for _ in range(SCENE_TRIES):
        n_extra = int(rng.integers(1, min(len(others), MAX_SCENE_EXTRAS) + 1))
        chosen = [0] + sorted(int(i) for i in rng.choice(others, size=n_extra, replace=False))
        placed, poses = _place_scene(rng, objects, chosen, K, width, height)
        rendering = render([meshes[i] for i in placed], poses, K, width, height, light)
        vis = rendering.visible_fraction()
        if len(placed) > 1 and np.all(vis >= MIN_VISIBLE):
            best = (placed, poses, rendering)
            break
        if best is None and vis[0] >= MIN_VISIBLE:
            keep = [k for k in range(len(placed)) if k == 0 or vis[k] >= MIN_VISIBLE]
            best = ([placed[k] for k in keep], [poses[k] for k in keep], None)
    if best is None:  # practically unreachable: fall back to the main object alone
        R, t = sample_pose(rng, objects[0].mesh.keypoints3d, K, width, height, **objects[0].pose_ranges)
        best = ([0], [(R, t)], None)
    placed, poses, rendering = best
    if rendering is None:  # objects were dropped: render the kept ones again
        rendering = render([meshes[i] for i in placed], poses, K, width, height, light)
    mask = np.where(rendering.ids >= 0, 255, 0).astype(np.uint8)
    vis = rendering.visible_fraction()
    items = sorted((placed[k], poses[k][0], poses[k][1], float(vis[k])) for k in range(len(placed)))
    if options is None:
        bg = make_background(rng, np.concatenate([o.mesh.face_colors for o in objects]).astype(np.float64), width,
                             height)
        return _composite(bg, rendering), mask, items
    bg = options.background(rng, width, height)
    rgb = rendering.rgb.copy()
    for k in range(len(placed)):
        options.jitter(rng, rgb, rendering.ids == k)
    return options.finish(rng, bg, replace(rendering, rgb=rgb)), mask, items


# --------------------------------------------------------------------------------------------
# Jobs (run in the main process or in worker processes; they write their own image files)
# --------------------------------------------------------------------------------------------

_STATE: dict = {}


def _init_worker(state: dict, worker_process: bool = True) -> None:
    if worker_process:  # one OpenCV thread per process: the pool already uses every core
        cv2.setNumThreads(1)
    _STATE.clear()
    _STATE.update(state)


def _write_image(out: Path, rel_image: str, rgb: np.ndarray, mask: np.ndarray, rows: np.ndarray, quality: int):
    write_image(out / rel_image, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    write_image(out / mask_path(rel_image), mask)
    write_label_rows(out / label_path(rel_image), rows)


def _run_job(job):
    """job = ('single', obj_idx, img_idx), ('scene', scene_idx, image index, is_test),
    ('fresh', ...) (add_fresh_test) or ('fresh_scene', ...) (add_fresh_multi)."""
    s = _STATE
    objects, K, out, seed = s["objects"], s["K"], s["out"], s["seed"]
    width, height, options = s.get("width", IM_WIDTH), s.get("height", IM_HEIGHT), s.get("options")
    if job[0] in ("single", "fresh"):
        _, oi, ii = job[:3]
        # ('fresh', obj_idx, image index, fresh seed, k-th fresh image): drawn from the fresh seed
        index, image_seed, tag = (job[4], job[3], TAG_FRESH) if job[0] == "fresh" else (ii, seed, TAG_IMAGE)
        if options is None:
            rgb, mask, R, t = render_single(objects, oi, index, image_seed, K, width, height, tag=tag)
        else:
            rgb, mask, R, t = render_mesh_single(objects, oi, index, image_seed, K, width, height, options, tag=tag)
        row = label_from_pose(objects[oi].mesh.corners, R, t, K, objects[oi].class_id, width, height)
        rel = f"LINEMOD/{objects[oi].name}/JPEGImages/{image_stem(ii)}.jpg"
        quality = s["quality"] if options is None else options.jpeg_quality(_rng(image_seed, TAG_JPEG, tag, oi, index))
        _write_image(out, rel, rgb, mask, row[None], quality)
        return job, [(oi, R, t, 1.0, row)]
    if job[0] == "fresh_scene":  # ('fresh_scene', k-th fresh scene, image index, fresh seed): a test scene
        _, si, ii, scene_seed = job
        is_test, tag = True, TAG_FRESH_SCENE
    else:
        _, si, ii, is_test = job
        scene_seed, tag = seed, TAG_SCENE
    rgb, mask, items = render_scene(objects, si, scene_seed, K, width, height, tag=tag, options=options)
    rows = [(oi, R, t, vis, label_from_pose(objects[oi].mesh.corners, R, t, K, objects[oi].class_id, width, height))
            for oi, R, t, vis in items]
    rel = f"LINEMOD/{objects[0].name}/JPEGImages/{image_stem(ii)}.jpg"
    quality = s["quality"] if options is None else options.jpeg_quality(_rng(scene_seed, TAG_JPEG, tag, si))
    _write_image(out, rel, rgb, mask, np.stack([r[4] for r in rows]), quality)
    if is_test:
        for oi, _, _, _, row in rows:
            write_label_rows(out / occlusion_label_path(rel, objects[oi].name), to_occlusion_order(row))
    return job, rows


def _scene_poses(rel: str, rows: list, objs: list[SynthObject], is_test: bool) -> list[tuple[int, dict]]:
    """(object index, pose record) for every object of the scene image `rel` (rows from _run_job)."""
    out = []
    for k, (oi, R, t, vis, _) in enumerate(rows):
        extra = {"label": label_path(rel), "row": k, "visible_fraction": round(vis, 6)}
        if is_test:
            extra["label_occlusion"] = occlusion_label_path(rel, objs[oi].name)
        out.append((oi, pose_entry(rel, R, t, **extra)))
    return out


def _split(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean (n,) test flags: round(n * fraction) of them, at least one train and one test if 0 < f < 1."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"test fraction must be in [0, 1]; got {fraction}")
    n_test = int(round(n * fraction))
    if 0.0 < fraction < 1.0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    flags = np.zeros(n, dtype=bool)
    flags[rng.permutation(n)[:n_test]] = True
    return flags


def _image_files(out: Path, rel_image: str) -> list[Path]:
    """The image, its mask and its label file."""
    return [out / rel_image, out / mask_path(rel_image), out / label_path(rel_image)]


def planned_files(out: Path, objs: list[SynthObject], images_per_object: int, multi: int,
                  scene_test: np.ndarray) -> list[Path]:
    """Every file generate() may write: for the test scenes, the OCCLUSION label of every object
    (only those of the objects a scene shows are written)."""
    files = [out / INFO_FILE]
    for o in objs:
        folder = out / "LINEMOD" / o.name
        for i in range(images_per_object):
            files += _image_files(out, f"LINEMOD/{o.name}/JPEGImages/{image_stem(i)}.jpg")
        files += [folder / n for n in ("train.txt", "test.txt", "training_range.txt", f"{o.name}.ply")]
        files += [out / "poses" / f"{o.name}.json", out / "cfg" / f"{o.name}.data"]
        if multi:
            files += [folder / "test_occlusion.txt", out / "cfg" / f"{o.name}_occlusion.data"]
    for s in range(multi):
        rel = f"LINEMOD/{objs[0].name}/JPEGImages/{image_stem(images_per_object + s)}.jpg"
        files += _image_files(out, rel)
        if scene_test[s]:
            files += [out / occlusion_label_path(rel, o.name) for o in objs]
    if multi:
        files += [out / "cfg" / "train_occlusion.txt", out / "cfg" / "occlusion.data"]
    return files


def generation_params(objects: int, images_per_object: int, seed: int, multi: int, test_fraction: float,
                      jpeg_quality: int = JPEG_QUALITY) -> dict:
    """The parameters that decide a dataset's files (recorded in the manifest, compared by the main jobs)."""
    return {"objects": int(objects), "images_per_object": int(images_per_object), "seed": int(seed),
            "multi": int(multi), "test_fraction": float(test_fraction), "jpeg_quality": int(jpeg_quality)}


def read_info(path: Path) -> dict:
    """A synthetic_info.json; InputError naming it when it is not a readable JSON object."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable {INFO_FILE} ({exc}); move it away or generate the set again") \
            from None
    if not isinstance(info, dict):
        raise InputError(f"{path}: a JSON {type(info).__name__}, not the object {INFO_FILE} holds")
    return info


def dataset_params(out) -> tuple[dict | None, bool]:
    """(the generation parameters of the synthetic set in `out`, finished?): from the manifest, or
    from synthetic_info.json for a set of an older version; (None, False) when there is none."""
    out = Path(out)
    record = run_record(out, TOOL, GROUP)
    if record is not None and record.get("params"):
        return record["params"], bool(record.get("finished"))
    info_path = out / INFO_FILE
    if not info_path.is_file():
        return None, False
    info = read_info(info_path)
    return generation_params(len(info.get("objects") or []), info.get("images_per_object", 0), info.get("seed", 0),
                             info.get("multi", 0), info.get("test_fraction", DEFAULT_TEST_FRACTION),
                             info.get("jpeg_quality", JPEG_QUALITY)), True


# --------------------------------------------------------------------------------------------
# The whole dataset
# --------------------------------------------------------------------------------------------

def generate(out_dir=DEFAULT_OUT, objects: int = 3, images_per_object: int = 20, seed: int = 0, multi: int = 0,
             test_fraction: float = DEFAULT_TEST_FRACTION, workers: int = 1, overwrite: bool = False,
             jpeg_quality: int = JPEG_QUALITY, quiet: bool = True) -> dict:
    """Write the synthetic LINEMOD dataset under out_dir (see the module docstring); return a summary.

    objects: number of objects (>= 1; >= 2 with multi); images_per_object: single-object images
    per object; multi: number of multi-object scenes; workers: processes (the output does not
    depend on it). The cfg/ files and synthetic_info.json are written last, so their presence
    means the dataset is complete. Raises OverwriteError, before writing, when a file it would
    write exists and is not its own (or, without `overwrite`, is its own). Summary keys: out,
    data_cfgs, occlusion_data, images, scenes, seconds.
    """
    if objects < 1 or images_per_object < 1 or multi < 0:
        raise ValueError(f"need objects >= 1, images_per_object >= 1, multi >= 0; "
                         f"got {objects}, {images_per_object}, {multi}")
    if multi and objects < 2:
        raise ValueError(f"--scenes needs at least 2 objects (scenes mix classes); got --num-objects {objects}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    start = time.perf_counter()
    K = get_camera_intrinsic()
    objs = build_objects(objects, seed)
    params = generation_params(objects, images_per_object, seed, multi, test_fraction, jpeg_quality)
    return _write_set(Path(out_dir), objs, K, IM_WIDTH, IM_HEIGHT, images_per_object, seed, multi, test_fraction,
                      workers, overwrite, jpeg_quality, params, "tools/make_synthetic_linemod.py", {}, None, quiet,
                      start)


def _write_set(out: Path, objs: list[SynthObject], K: np.ndarray, width: int, height: int, images_per_object: int,
               seed: int, multi: int, test_fraction: float, workers: int, overwrite: bool, jpeg_quality,
               params: dict, generator: str, extra_info: dict, options, quiet: bool, start: float,
               progress: bool = False) -> dict:
    """Render and write a set of `objs` (the one writer of generate and generate_from_meshes).

    params: what the manifest records (the set's identity); generator and extra_info: the
    synthetic_info.json entries beyond the common ones; jpeg_quality: the procedural sets' one
    quality (recorded as it is: a range for user meshes, whose options draw it per image);
    options: None (procedural, flat shading) or a randomisation.Randomiser. Returns generate's summary.
    """
    objects = len(objs)
    main = objs[0].name

    # single-object images, then scenes numbered after them in the main object's folder
    test_flags = {o.class_id: _split(images_per_object, test_fraction, _rng(seed, TAG_SPLIT, o.class_id)) for o in objs}
    scene_test = _split(multi, test_fraction, _rng(seed, TAG_SPLIT, objects)) if multi else np.zeros(0, bool)
    outputs = Outputs(out, TOOL)
    outputs.plan(planned_files(out, objs, images_per_object, multi, scene_test), GROUP)
    outputs.check(overwrite)  # before anything is written: never a file this generator did not write
    with outputs.writing(params):  # an error or Ctrl-C records what was written: the next run replaces it
        jobs = [("single", o.class_id, i) for o in objs for i in range(images_per_object)]
        jobs += [("scene", s, images_per_object + s, bool(scene_test[s])) for s in range(multi)]
        state = {"objects": objs, "K": K, "out": out, "seed": seed, "quality": jpeg_quality, "width": width,
                 "height": height, "options": options}
        results = _run_jobs(jobs, state, workers, progress)

        # per-object files
        poses = {o.class_id: [] for o in objs}
        train_scenes, test_scenes = [], {o.class_id: [] for o in objs}
        for job, rows in results:
            if job[0] == "single":
                _, oi, ii = job
                rel = f"LINEMOD/{objs[oi].name}/JPEGImages/{image_stem(ii)}.jpg"
                _, R, t, _, _ = rows[0]
                poses[oi].append(pose_entry(rel, R, t, label=label_path(rel), row=0))
                continue
            _, si, ii, is_test = job
            rel = f"LINEMOD/{main}/JPEGImages/{image_stem(ii)}.jpg"
            for oi, entry in _scene_poses(rel, rows, objs, is_test):
                poses[oi].append(entry)
                if is_test:
                    test_scenes[oi].append(rel)
            if not is_test:
                train_scenes.append(rel)

        data_cfgs = []
        for o in objs:
            folder = out / "LINEMOD" / o.name
            rel_folder = f"LINEMOD/{o.name}"
            images = [f"{rel_folder}/JPEGImages/{image_stem(i)}.jpg" for i in range(images_per_object)]
            flags = test_flags[o.class_id]
            write_list(folder / "train.txt", [p for p, f in zip(images, flags) if not f])
            write_list(folder / "test.txt", [p for p, f in zip(images, flags) if f])
            write_list(folder / "training_range.txt", [str(i) for i in range(images_per_object) if not flags[i]])
            m = o.mesh
            write_ply(folder / f"{o.name}.ply", m.vertices, m.faces, m.normals, m.vertex_colors)
            write_poses_json(out / "poses" / f"{o.name}.json", o.name, o.class_id, f"{rel_folder}/{o.name}.ply",
                             K, width, height, poses[o.class_id])
            if multi:
                write_list(folder / "test_occlusion.txt", test_scenes[o.class_id])

        # cfg files last: their presence means the dataset is complete
        for o in objs:
            path = out / "cfg" / f"{o.name}.data"
            write_data_cfg(path, data_cfg_items(o.name, f"LINEMOD/{o.name}", o.diameter, K, width, height))
            data_cfgs.append(path)
        occlusion_data = None
        if multi:
            write_list(out / "cfg" / "train_occlusion.txt", train_scenes)
            occlusion_data = out / "cfg" / "occlusion.data"
            write_data_cfg(occlusion_data, _occlusion_items(objs, K, width, height))
            for o in objs:
                write_data_cfg(out / "cfg" / f"{o.name}_occlusion.data", _object_occlusion_items(o, K, width, height))
        info = {"generator": generator, "format_version": 1, "seed": seed,
                "objects": [o.name for o in objs], "images_per_object": images_per_object, "multi": multi,
                "main_object": main if multi else None, "test_fraction": test_fraction, "jpeg_quality": jpeg_quality,
                "width": width, "height": height, "K": K.tolist(),
                "diameters": {o.name: o.diameter for o in objs}, **extra_info}
        write_text(out / INFO_FILE, json.dumps(info, indent=1) + "\n")
    for rel in outputs.kept:
        warnings.warn(f"{out / rel}: changed since {TOOL} wrote it; kept as it is", stacklevel=2)

    seconds = time.perf_counter() - start
    summary = {"out": str(out), "data_cfgs": [str(p) for p in data_cfgs],
               "occlusion_data": str(occlusion_data) if occlusion_data else None,
               "images": objects * images_per_object, "scenes": multi, "seconds": seconds}
    if not quiet:
        _print_summary(summary, objs, test_flags, scene_test)
    return summary


def describe(params: dict) -> str:
    """A set's parameters in words, for messages."""
    scenes = f", {params['multi']} scenes" if params.get("multi") else ""
    if "meshes" in params:  # a set of user meshes (generate_from_meshes)
        objects = "meshes " + ", ".join(m["name"] for m in params["meshes"])
    else:
        objects = f"{params['objects']} object{'' if params['objects'] == 1 else 's'}"
    return (f"{objects}, {params['images_per_object']} images per object{scenes}, "
            f"seed {params['seed']}, test fraction {params['test_fraction']:g}")


def ensure_dataset(root, params: dict, quiet: bool = False, make=None, fallback: str | None = MAIN_JOB_SUFFIX,
                   who: str = "the main job") -> Path:
    """The folder of a synthetic set made with exactly `params`, generated once; design D60. The
    one rule of the main jobs' sets and of the sets of `train.py --mesh` (design §7.7).

    `root` is used when it holds that set, an unfinished generation of it, or nothing in the
    generator's way; otherwise `<root><fallback>` (None: no other folder), by the same rule. A set
    made with other parameters and every file the generator did not write are never touched: when
    every folder is taken, OverwriteError says why and what to do. params: `generation_params`
    (a procedural set, made by `generate`) or `mesh_set_params`, with make(folder, overwrite)
    the call that renders it; who: whose set, for the messages.
    """
    root = Path(root)
    folders = (root,) if fallback is None else (root, root.with_name(root.name + fallback))
    if make is None:
        def make(folder, overwrite):
            n = params["objects"] * params["images_per_object"] + params["multi"]
            generate(folder, **params, overwrite=overwrite, workers=auto_workers(n))
    reasons = []
    for folder in folders:
        found, finished = dataset_params(folder)
        if found == params and finished:
            return folder
        if found is not None and found != params:
            short = f"{folder} holds a synthetic set made with other parameters ({describe(found)})"
            reasons.append(short)
        else:
            try:
                if not quiet:
                    print(f"generating the synthetic set in {folder} ({describe(params)}; once) ...", flush=True)
                make(folder, found is not None)  # overwrite only an unfinished run of this very set
                return folder
            except OverwriteError as exc:  # raised before anything was written
                short = f"{folder} holds files the generator did not write"
                reasons.append(str(exc))
        if folder == root and len(folders) > 1:  # where the set goes is worth a warning, --quiet or not
            warnings.warn(f"{short}: left as it is; {who} uses {folders[1]}", stacklevel=2)
    raise OverwriteError(f"{who}'s synthetic set cannot be made without replacing files it did not make:\n"
                         + "\n".join(reasons) + f"\npass --datacfg to train on a set of your own, or move "
                         f"{'one of these folders' if len(folders) > 1 else 'this folder'} away")


# --------------------------------------------------------------------------------------------
# Fresh test sets added to an existing dataset (--fresh-test, --fresh-scenes)
# --------------------------------------------------------------------------------------------

def fresh_names(name: str, fresh_seed: int) -> tuple[str, str]:
    """(test list relative to the dataset root, data cfg relative to it) of a fresh test set."""
    return f"LINEMOD/{name}/test_fresh{fresh_seed}.txt", f"cfg/{name}_fresh{fresh_seed}.data"


def fresh_multi_cfg(fresh_seed: int) -> str:
    """The occlusion .data file of the fresh multi-object scenes of a seed, relative to the dataset root."""
    return f"cfg/occlusion_fresh{fresh_seed}.data"


def fresh_multi_names(name: str, fresh_seed: int) -> tuple[str, str]:
    """(object `name`'s test list, the occlusion .data file), relative to the dataset root, of the
    fresh multi-object scenes of a seed (the .data file is the same for every object)."""
    return f"LINEMOD/{name}/test_occlusion_fresh{fresh_seed}.txt", fresh_multi_cfg(fresh_seed)


def _fresh_poses_json(out: Path, name: str, fresh_seed: int, multi: bool) -> Path:
    return out / "poses" / f"{name}_{'occlusion_' if multi else ''}fresh{fresh_seed}.json"


def _synthetic_info(out: Path) -> tuple[dict, list[str]]:
    """(synthetic_info.json of the dataset in `out`, its object names); InputError when there is none."""
    info_path = out / INFO_FILE
    if not info_path.is_file():
        raise InputError(f"{out}: no synthetic objects here ({INFO_FILE} not found); generate the dataset first "
                         f"with --out {out}")
    info = read_info(info_path)
    names = list(info.get("objects") or [])
    if not names:
        raise InputError(f"{info_path}: lists no objects")
    return info, names


def _fresh_state(out: Path, info: dict, names: list[str]) -> tuple[list[SynthObject], dict]:
    """(objects, job state) to render more images of the set in `out` from its synthetic_info.json:
    procedural objects are rebuilt from the set's seed; a set of user meshes reads its mesh files
    again (InputError naming the file when one is missing or changed since: its sha256 is recorded)
    and draws with its recorded options."""
    K = np.asarray(info["K"], dtype=np.float64)
    width, height, seed = int(info.get("width", IM_WIDTH)), int(info.get("height", IM_HEIGHT)), int(info["seed"])
    state = {"K": K, "out": out, "seed": seed, "width": width, "height": height}
    if info.get("generator") != MESH_GENERATOR:
        objs = build_objects(len(names), seed)
        return objs, {**state, "objects": objs, "quality": int(info.get("jpeg_quality", JPEG_QUALITY))}
    where = out / INFO_FILE
    try:
        records = [(Path(r["file"]), r["units"], r["name"], r["sha256"]) for r in info["meshes"]]
        options = RenderOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["options"].items()})
    except (KeyError, TypeError) as exc:
        raise InputError(f"{where}: the meshes or options of this set are not readable ({exc}); render a new set "
                         f"instead") from None
    for path, _, name, digest in records:
        if not path.is_file():
            raise InputError(f"{where}: mesh {path} of object {name} not found; it is needed to render more images")
        if _file_sha256(path) != digest:
            raise InputError(f"{where}: mesh {path} of object {name} changed since the set was made; render a new "
                             f"set (nothing was changed)")
    objs, _ = load_mesh_objects([r[0] for r in records], [r[1] for r in records], K, width, height, options,
                                [r[2] for r in records])
    randomiser = Randomiser.prepare(options, lambda k: _rng(seed, TAG_DISTRACTOR, k))
    return objs, {**state, "objects": objs, "quality": JPEG_QUALITY, "options": randomiser}


def _next_index(folder: Path) -> int:
    """The image index after every NNNNNN.jpg in `folder` (0 for none)."""
    return max((int(p.stem) for p in folder.glob("*.jpg") if p.stem.isdigit()), default=-1) + 1


def _fresh_start(out: Path, flag: str, n: int, need: str, fresh_seed: int):
    """The checks both fresh additions start with (InputError naming the flag): n >= 1, a seed >= 0,
    a synthetic dataset; returns its (info, object names) as `_synthetic_info`."""
    if n < 1:
        raise InputError(f"{flag} {n}: {need}")
    if fresh_seed < 0:
        raise InputError(f"--fresh-seed {fresh_seed}: must be >= 0")
    return _synthetic_info(out)


def add_fresh_test(out_dir, n: int, fresh_seed: int, workers: int = 1, quiet: bool = True) -> dict:
    """Add n new test images for every object of a synthetic dataset, from poses and backgrounds of fresh_seed.

    Writes the images (numbered after the object's existing ones), their labels and masks,
    LINEMOD/<obj>/test_fresh<S>.txt and cfg/<obj>_fresh<S>.data (the object's .data with `valid`
    pointing at the new list); changes no existing file. The same seed gives the same images.
    Raises InputError, before writing anything, for a folder without synthetic objects or a seed
    that already has a fresh test set.
    """
    out = Path(out_dir)
    info, names = _fresh_start(out, "--fresh-test", n, "need at least one image per object", fresh_seed)
    taken = [p for name in names for p in fresh_names(name, fresh_seed) if (out / p).exists()]
    if taken:
        raise InputError(f"{out}: seed {fresh_seed} already has a fresh test set ({taken[0]}); choose another "
                         f"--fresh-seed (nothing was changed)")
    start = time.perf_counter()
    objs, state = _fresh_state(out, info, names)
    K, width, height = state["K"], state["width"], state["height"]
    jobs = []
    outputs = Outputs(out, TOOL)
    for o in objs:
        first = _next_index(out / "LINEMOD" / o.name / "JPEGImages")
        jobs += [("fresh", o.class_id, first + k, int(fresh_seed), k) for k in range(n)]
        list_rel, cfg_rel = fresh_names(o.name, fresh_seed)
        outputs.plan([out / list_rel, out / cfg_rel, _fresh_poses_json(out, o.name, fresh_seed, False)], GROUP)
        for k in range(n):
            outputs.plan(_image_files(out, f"LINEMOD/{o.name}/JPEGImages/{image_stem(first + k)}.jpg"), GROUP)
    outputs.check(overwrite=False)  # a fresh set only adds files
    with outputs.writing():
        results = _run_jobs(jobs, state, workers)
        data_cfgs = []
        for o in objs:
            mine = [(job, rows) for job, rows in results if job[1] == o.class_id]
            images = [f"LINEMOD/{o.name}/JPEGImages/{image_stem(job[2])}.jpg" for job, _ in mine]
            list_rel, cfg_rel = fresh_names(o.name, fresh_seed)
            poses = [pose_entry(rel, rows[0][1], rows[0][2], label=label_path(rel), row=0)
                     for rel, (_, rows) in zip(images, mine)]
            write_poses_json(_fresh_poses_json(out, o.name, fresh_seed, False), o.name, o.class_id,
                             f"LINEMOD/{o.name}/{o.name}.ply", K, width, height, poses)
            write_list(out / list_rel, images)
            items = [(k, list_rel if k == "valid" else v)
                     for k, v in data_cfg_items(o.name, f"LINEMOD/{o.name}", o.diameter, K, width, height)]
            write_data_cfg(out / cfg_rel, items)
            data_cfgs.append(str(out / cfg_rel))
    summary = {"out": str(out), "data_cfgs": data_cfgs, "images": len(jobs), "seconds": time.perf_counter() - start}
    if not quiet:
        print(f"fresh test set (seed {fresh_seed}): {n} images for each of {', '.join(names)} in "
              f"{summary['seconds']:.1f} s\n  data cfgs: " + " ".join(data_cfgs))
    return summary


def add_fresh_multi(out_dir, n: int, fresh_seed: int, workers: int = 1, quiet: bool = True) -> dict:
    """Add n new OCCLUSION-style test scenes to a synthetic dataset made with --scenes, from fresh_seed.

    Scene k's objects, poses, placements, light and background come from the stream
    (fresh_seed, TAG_FRESH_SCENE, k), independent of the dataset's own scenes. Writes, like a test
    scene of generate(): the images in the main object's JPEGImages (numbered after every image
    there), their labels and masks, each shown object's labels_occlusion row; then
    poses/<obj>_occlusion_fresh<S>.json and LINEMOD/<obj>/test_occlusion_fresh<S>.txt for every
    object (the fresh scenes that show it; empty for an object in none of them, which valid_multi
    refuses: ask for more scenes), and last cfg/occlusion_fresh<S>.data, a copy of cfg/occlusion.data
    whose valid<k> lines name the new lists. Changes no existing file; the same seed gives the same
    files. Raises InputError, before writing anything, for n < 1, a negative seed, a folder without
    synthetic objects or without multi-object scenes, or a seed that already has fresh scenes.

    Returns {"out", "occlusion_data" (the new .data file), "test_lists" ({object: its new list}),
    "scenes" (n), "scenes_per_object" ({object: fresh scenes that show it}), "seconds"}.
    """
    out = Path(out_dir)
    info, names = _fresh_start(out, "--fresh-scenes", n, "need at least one scene", fresh_seed)
    occ_path = out / "cfg" / "occlusion.data"
    if not info.get("multi") or not occ_path.is_file():
        why = f"{INFO_FILE} says multi {info.get('multi', 0)}" if not info.get("multi") else f"{occ_path} not found"
        raise InputError(f"{out}: no multi-object scenes here ({why}); --fresh-scenes adds test scenes to a dataset "
                         f"made with --scenes N (nothing was changed)")
    cfg_rel = fresh_multi_cfg(fresh_seed)
    lists = {name: fresh_multi_names(name, fresh_seed)[0] for name in names}
    taken = [p for p in [cfg_rel, *lists.values()] if (out / p).exists()]
    if taken:
        raise InputError(f"{out}: seed {fresh_seed} already has fresh multi-object scenes ({taken[0]}); choose "
                         f"another --fresh-seed (nothing was changed)")
    cfg_text = _fresh_occlusion_cfg(occ_path, lists, names)  # a bad occlusion.data stops here, before writing
    start = time.perf_counter()
    objs, state = _fresh_state(out, info, names)
    K, width, height = state["K"], state["width"], state["height"]
    main = objs[0].name  # render_scene puts object 0 in every scene; generate() files scenes in its folder
    first = _next_index(out / "LINEMOD" / main / "JPEGImages")
    jobs = [("fresh_scene", k, first + k, int(fresh_seed)) for k in range(n)]
    outputs = Outputs(out, TOOL)
    for job in jobs:
        rel = f"LINEMOD/{main}/JPEGImages/{image_stem(job[2])}.jpg"
        outputs.plan(_image_files(out, rel) + [out / occlusion_label_path(rel, name) for name in names], GROUP)
    outputs.plan([out / p for p in lists.values()] + [out / cfg_rel]
                 + [_fresh_poses_json(out, name, fresh_seed, True) for name in names], GROUP)
    outputs.check(overwrite=False)  # fresh scenes only add files
    with outputs.writing():
        results = _run_jobs(jobs, state, workers)
        poses, scenes = {o.class_id: [] for o in objs}, {o.class_id: [] for o in objs}
        for job, rows in results:
            rel = f"LINEMOD/{main}/JPEGImages/{image_stem(job[2])}.jpg"
            for oi, entry in _scene_poses(rel, rows, objs, is_test=True):
                poses[oi].append(entry)
                scenes[oi].append(rel)
        for o in objs:
            write_poses_json(_fresh_poses_json(out, o.name, fresh_seed, True), o.name, o.class_id,
                             f"LINEMOD/{o.name}/{o.name}.ply", K, width, height, poses[o.class_id])
            write_list(out / lists[o.name], scenes[o.class_id])
        write_text(out / cfg_rel, cfg_text)  # last: its presence means the fresh scenes are complete
    summary = {"out": str(out), "occlusion_data": str(out / cfg_rel),
               "test_lists": {name: str(out / rel) for name, rel in lists.items()}, "scenes": n,
               "scenes_per_object": {o.name: len(scenes[o.class_id]) for o in objs},
               "seconds": time.perf_counter() - start}
    if not quiet:
        counts = ", ".join(f"{name} {k}" for name, k in summary["scenes_per_object"].items())
        print(f"fresh multi-object scenes (seed {fresh_seed}): {n} in LINEMOD/{main}/JPEGImages from index {first} "
              f"in {summary['seconds']:.1f} s; scenes per object: {counts}\n  multi-object cfg: {out / cfg_rel}")
    return summary


def _fresh_occlusion_cfg(occ_path: Path, lists: dict, names: list[str]) -> str:
    """The text of cfg/occlusion.data with every valid<k> line naming object k-1's list in `lists`;
    every other line as it is."""
    read_data_cfg(occ_path)  # a file that does not parse stops here, named
    lines = []
    for lineno, raw in enumerate(occ_path.read_text(encoding="utf-8").splitlines(), start=1):
        key = raw.split("=", 1)[0].strip() if "=" in raw and not raw.strip().startswith("#") else ""
        if key.startswith("valid") and key[len("valid"):].isdigit():
            k = int(key[len("valid"):])  # design §3.2: 1-based, class k - 1
            if not 1 <= k <= len(names):
                raise InputError(f"{occ_path}:{lineno}: {key} names no object (the dataset has classes 1.."
                                 f"{len(names)}: {', '.join(names)})")
            raw = f"{key} = {lists[names[k - 1]]}"
        lines.append(raw)
    return "".join(f"{line}\n" for line in lines)


def _occlusion_items(objs: list[SynthObject], K: np.ndarray, width: int = IM_WIDTH,
                     height: int = IM_HEIGHT) -> list[tuple[str, str]]:
    items = [("train", "cfg/train_occlusion.txt"), ("backup", "backup_multi"), ("name", "occlusion"),
             ("gpus", "0"), ("num_workers", "10"), ("im_width", str(width)), ("im_height", str(height)),
             ("fx", repr(float(K[0, 0]))), ("fy", repr(float(K[1, 1]))),
             ("u0", repr(float(K[0, 2]))), ("v0", repr(float(K[1, 2])))]
    for o in objs:  # design §3.2: 1-based suffixes in class order
        k = o.class_id + 1
        items += [(f"valid{k}", f"LINEMOD/{o.name}/test_occlusion.txt"), (f"mesh{k}", f"LINEMOD/{o.name}/{o.name}.ply"),
                  (f"diam{k}", repr(float(o.diameter)))]
    return items


def _object_occlusion_items(o: SynthObject, K: np.ndarray, width: int = IM_WIDTH,
                            height: int = IM_HEIGHT) -> list[tuple[str, str]]:
    items = data_cfg_items(o.name, f"LINEMOD/{o.name}", o.diameter, K, width, height,
                           train="cfg/train_occlusion.txt", valid=f"LINEMOD/{o.name}/test_occlusion.txt",
                           backup="backup_multi")
    return items + [("im_width", str(width)), ("im_height", str(height))]


def auto_workers(n_images: int) -> int:
    """Worker processes worth starting for n_images: a 'spawn' worker costs ~2-4 s to start (it
    imports torch, OpenCV and SciPy; benchmarks/bench_synthetic.py), ~150-250 images of one process."""
    return max(1, min(os.cpu_count() or 1, 8, n_images // AUTO_IMAGES_PER_WORKER))


def _run_jobs(jobs: list, state: dict, workers: int, progress: bool = False) -> list:
    """Results of _run_job in job order; workers > 1 uses a process pool; progress: a tqdm bar on stderr.

    The pool is started with 'spawn', never 'fork': a fork after torch or OpenCV have started
    their thread pools (as in a test session or in train.py) can deadlock the children.
    """
    workers = max(1, min(int(workers), len(jobs)))

    def bar(results):
        if not progress:
            return list(results)
        from tqdm import tqdm  # only a command that shows progress pays for the import

        return list(tqdm(results, total=len(jobs), desc="rendering", unit="image"))

    if workers == 1:
        _init_worker(state, worker_process=False)
        try:
            return bar(_run_job(j) for j in jobs)
        finally:
            _STATE.clear()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(state,)) as pool:
        return bar(pool.imap(_run_job, jobs, chunksize=max(1, len(jobs) // (8 * workers))))


def _print_summary(summary: dict, objs, test_flags, scene_test) -> None:
    n_img, n_scene, sec = summary["images"], summary["scenes"], summary["seconds"]
    print(f"synthetic LINEMOD written to {summary['out']}/ in {sec:.1f} s "
          f"({(n_img + n_scene) / max(sec, 1e-9):.1f} images/s)")
    for o in objs:
        n_test = int(test_flags[o.class_id].sum())
        print(f"  {o.name}: class {o.class_id}, {len(o.mesh.faces)} triangles, diam {o.diameter:.4f} m, "
              f"{len(test_flags[o.class_id]) - n_test} train / {n_test} test images")
    if n_scene:
        n_test = int(scene_test.sum())
        print(f"  {n_scene} multi-object scenes in LINEMOD/{objs[0].name}/JPEGImages: "
              f"{n_scene - n_test} train (cfg/train_occlusion.txt) / {n_test} test (test_occlusion.txt)")
    print("  data cfgs: " + " ".join(summary["data_cfgs"]))
    if summary["occlusion_data"]:
        print(f"  multi-object cfg: {summary['occlusion_data']}")


# --------------------------------------------------------------------------------------------
# Sets rendered from user meshes
# --------------------------------------------------------------------------------------------

MESH_GENERATOR = "synthetic.generate_from_meshes"
MIN_APPARENT_PX = 16.0  # the farthest view shows the object at least this wide (pixels)
FIT_FRACTION = 0.9  # the nearest default view fills at most this fraction of the shorter image side
LINEMOD_FX = 572.4114  # design §3.3: the default distances give a mesh LINEMOD's pixel sizes on any camera


def camera_distances(vertices: np.ndarray, K: np.ndarray, width: int, height: int, requested=None,
                     source="mesh") -> tuple[float, float]:
    """The camera distance range (lo, hi) in metres of a mesh (N, 3) m for camera K (3, 3) and a
    width x height image.

    The object's extent about its origin, 2 r with r = max |v|, spans 2 f r / d pixels at distance d.
    requested None: LINEMOD's DISTANCE_RANGE_M scaled by fx / LINEMOD_FX (a LINEMOD-sized object
    appears as in LINEMOD), clipped so the object fits in FIT_FRACTION of the shorter side and
    spans at least MIN_APPARENT_PX; when the clip leaves nothing, the range of the same ratio next
    to the limit it crossed. requested (lo, hi): checked, InputError naming `source` when the camera
    cannot see the object there (wider than the image at lo, narrower than MIN_APPARENT_PX at hi,
    or lo inside the object).
    """
    r = float(np.linalg.norm(np.asarray(vertices, dtype=np.float64), axis=1).max())
    f_near, f_far = float(max(K[0, 0], K[1, 1])), float(min(K[0, 0], K[1, 1]))
    side = float(min(width, height))
    if requested is not None:
        lo, hi = (float(x) for x in requested)
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
            raise InputError(f"camera distance {lo:g}-{hi:g} m: expected 0 < low <= high")
        problems = []
        if lo <= r:
            problems.append(f"at {lo:g} m the camera is inside the object (it reaches {r:.3g} m from its origin)")
        elif 2 * f_near * r / lo > side:
            problems.append(f"at {lo:g} m the object spans {2 * f_near * r / lo:.0f} px, more than the "
                            f"{width}x{height} image")
        if 2 * f_far * r / hi < MIN_APPARENT_PX:
            problems.append(f"at {hi:g} m the object spans {2 * f_far * r / hi:.1f} px, under {MIN_APPARENT_PX:g}")
        if problems:
            raise InputError(f"{source}: the camera (fx {K[0, 0]:g}, fy {K[1, 1]:g}, {width}x{height}) cannot see "
                             f"the object at the requested distances: {'; '.join(problems)}; choose another "
                             f"distance range (or check the mesh units)")
        return lo, hi
    lo, hi = (d * float(K[0, 0]) / LINEMOD_FX for d in DISTANCE_RANGE_M)
    near = max(2 * f_near * r / (FIT_FRACTION * side), 1.01 * r)
    far = 2 * f_far * r / MIN_APPARENT_PX
    ratio = hi / lo
    if near > hi or near > far:
        return near, max(near, min(near * ratio, far))
    if far < lo:
        return far / ratio, far
    return max(lo, near), min(hi, far)


def _object_name(path: Path, taken: set) -> str:
    """A folder-safe object name from a mesh file name (unique among `taken`)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_") or "object"
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def mesh_object_names(paths, names=None) -> list[str]:
    """The object names of a set of user meshes: folder-safe, unique, from `names` or the files'
    stems (ape.ply -> ape); InputError when `names` does not give one per mesh."""
    if names is not None and len(names) != len(paths):
        raise InputError(f"{len(names)} names for {len(paths)} meshes")
    taken: set = set()
    return [_object_name(Path(names[i]) if names else Path(path), taken) for i, path in enumerate(paths)]


def _mesh_paths_and_units(mesh_paths, mesh_units) -> tuple[list[Path], list[str]]:
    """The mesh files as a list and their units, one per mesh; InputError for none or a count mismatch."""
    paths = [Path(p) for p in ([mesh_paths] if isinstance(mesh_paths, (str, Path)) else mesh_paths)]
    if not paths:
        raise InputError("no mesh given; pass at least one .ply or .obj file")
    units = [mesh_units] * len(paths) if isinstance(mesh_units, str) else list(mesh_units)
    if len(units) != len(paths):
        raise InputError(f"{len(units)} mesh units for {len(paths)} meshes; give one for all or one per mesh")
    return paths, units


def mesh_set_params(mesh_paths, mesh_units="m", K=None, width: int = IM_WIDTH, height: int = IM_HEIGHT,
                    n_images: int = 100, seed: int = 0, options: RenderOptions | None = None, multi: int = 0,
                    test_fraction: float = DEFAULT_TEST_FRACTION, names=None) -> dict:
    """The parameters that identify a set of user meshes (generate_from_meshes' arguments): what its
    manifest records and `ensure_dataset` compares. Each mesh is known by its name, units and the
    sha256 of its file's bytes, so the files are hashed, not read as meshes; MeshError naming a
    file that is missing or not a file."""
    options = (options or RenderOptions()).checked()
    paths, units = _mesh_paths_and_units(mesh_paths, mesh_units)
    for path in paths:
        if not path.is_file():
            raise MeshError(f"{path}: mesh file not found" if not path.exists() else f"{path}: not a file")
    K = get_camera_intrinsic() if K is None else np.asarray(K, dtype=np.float64)
    meshes = [{"name": name, "sha256": _file_sha256(path), "units": unit}
              for path, unit, name in zip(paths, units, mesh_object_names(paths, names))]
    return {"meshes": meshes, "images_per_object": int(n_images), "seed": int(seed), "multi": int(multi),
            "test_fraction": float(test_fraction), "width": int(width), "height": int(height),
            "K": K.tolist(), "options": options.record()}


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_mesh_objects(mesh_paths, mesh_units="m", K=None, width: int = IM_WIDTH, height: int = IM_HEIGHT,
                      options: RenderOptions | None = None, names=None) -> tuple[list[SynthObject], list[dict]]:
    """Read the user meshes (MeshPly.read_mesh) as SynthObjects with their camera ranges, and their
    records for synthetic_info.json; MeshError / InputError naming the file before anything is written.

    mesh_units: one of MESH_UNITS for all, or a list with one per mesh.
    """
    options = (options or RenderOptions()).checked()
    K = get_camera_intrinsic() if K is None else np.asarray(K, dtype=np.float64)
    paths, units = _mesh_paths_and_units(mesh_paths, mesh_units)
    objs, records = [], []
    for i, (path, unit, name) in enumerate(zip(paths, units, mesh_object_names(paths, names))):
        mesh = Mesh.from_file(read_mesh(path, unit))
        check_mesh_vertices(mesh.vertices, path)  # a point or a line has no pose
        distance = camera_distances(mesh.vertices, K, width, height, options.distance_m, source=str(path))
        ranges = {"distance": distance, "elevation_deg": tuple(options.elevation_deg),
                  "inplane_rad": tuple(math.radians(a) for a in options.inplane_deg)}
        objs.append(SynthObject(name, i, mesh, mesh_diameter(mesh.vertices), ranges))
        records.append({"name": name, "file": str(path), "units": unit, "sha256": _file_sha256(path),
                        "vertices": len(mesh.vertices), "faces": len(mesh.faces),
                        "textured": mesh.texture is not None, "colored": mesh.colored,
                        "distance_m": [round(d, 6) for d in distance]})
    return objs, records


def generate_from_meshes(out_dir, mesh_paths, mesh_units="m", K=None, width: int = IM_WIDTH,
                         height: int = IM_HEIGHT, n_images: int = 100, seed: int = 0,
                         options: RenderOptions | None = None, multi: int = 0,
                         test_fraction: float = DEFAULT_TEST_FRACTION, workers: int = 1, overwrite: bool = False,
                         names=None, quiet: bool = True) -> dict:
    """Render a LINEMOD-format set of the user's meshes under out_dir; return generate's summary.

    mesh_paths: .ply / .obj files (one object each, class ids in this order); mesh_units 'm' or
    'mm' (or one per mesh); K (3, 3) the camera (default LINEMOD's) for width x height images;
    n_images per mesh; multi: OCCLUSION-style scenes of the meshes together (needs 2 or more);
    options: RenderOptions (the randomisation; defaults in its docstring). The layout, the
    manifest rules and the files are those of generate(); synthetic_info.json also records every
    mesh (file, units, sha256, camera distances) and the options. Labels are LINEMOD's: point 0 the
    mesh's own origin, then the corners of its axis-aligned box. The same arguments give the
    same bytes, whatever `workers` is. A progress bar on stderr unless quiet.
    """
    options = (options or RenderOptions()).checked()
    if n_images < 1 or multi < 0:
        raise InputError(f"need n_images >= 1 and multi >= 0; got {n_images}, {multi}")
    if seed < 0:
        raise InputError(f"seed must be >= 0; got {seed}")
    if int(width) < 1 or int(height) < 1:
        raise InputError(f"image size {width}x{height}: expected positive width and height")
    K = get_camera_intrinsic() if K is None else np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"camera matrix {K.tolist()}: expected a 3x3 matrix with positive fx and fy")
    start = time.perf_counter()
    objs, records = load_mesh_objects(mesh_paths, mesh_units, K, width, height, options, names)
    if multi and len(objs) < 2:
        raise InputError(f"multi-object scenes need at least 2 meshes; got {len(objs)}")
    randomiser = Randomiser.prepare(options, lambda k: _rng(seed, TAG_DISTRACTOR, k))  # --bg-dir checked
    params = mesh_set_params(mesh_paths, mesh_units, K, width, height, n_images, seed, options, multi,
                             test_fraction, names)
    extra = {"meshes": records, "options": options.record(), "background_photos": len(randomiser.photos)}
    return _write_set(Path(out_dir), objs, K, int(width), int(height), int(n_images), int(seed), int(multi),
                      float(test_fraction), workers, overwrite, list(options.jpeg_quality), params, MESH_GENERATOR,
                      extra, randomiser, quiet, start, progress=not quiet)
