"""Run a pose network on images, a video or a camera; draw the 3-D box from the PnP pose; save JSON.

    python detect.py data/synthetic/LINEMOD/obj00/JPEGImages --datacfg data/synthetic/cfg/obj00.data \\
        --modelcfg cfg/yolo-lite-trial3-pose.cfg --weightfile backup/synthetic/obj00/model.weights
    python detect.py clip.mp4 --datacfg cfg/ape.data --modelcfg cfg/yolo-pose.cfg --weightfile backup/ape/model.weights
    python detect.py 0 --datacfg cfg/ape.data ...            # camera index 0 (stop with Ctrl-C or --max-frames)
    python detect.py scenes/ --multi --datacfg cfg/occlusion.data \\
        --modelcfg multi_obj_pose_estimation/cfg/yolo-pose-multi.cfg --weightfile backup_multi/model.weights

The `.data` file gives the camera (fx, fy, u0, v0) and the mesh whose 3-D box is drawn; in
multi-object mode (`--multi`) the keys `mesh<k>` (or `mesh`) give the mesh of class k - 1. The pose of
each detection comes from its 9 predicted points through evaluation.solve_pose (PnP on the centroid + 8
corners), so for the same image and weights detect.py and valid.py agree; with --multi, each class's
box is `utils.select_multi_boxes`' (D63, threshold --conf-thresh, default utils.MULTI_CONF_THRESH),
the one valid_multi.py scores, so detect.py --multi and valid_multi.py agree too.

Writes into --out (default runs/detect): one annotated PNG per image (for a folder or image) or
`<name>.mp4` (video, camera), and `detections.json`: per frame, a list of detections with the
class, the confidence, the 9 points in pixels, R (3x3) and t (3, metres).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

import cli
import dataset
import image_files
import evaluation
import image
import model_info
import model_loading
import preflight
import utils
from errors import DataCfgError, InputError, MeshError, run_cli
from linemod_format import read_data_cfg, write_text
from MeshPly import MeshPly

DEFAULT_MODELCFG = "cfg/yolo-lite-trial3-pose.cfg"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GT_COLOR, PRED_COLOR = (0, 255, 0), (0, 0, 255)  # RGB: green ground truth (valid.ipynb), blue prediction
CLASS_COLORS = [(0, 0, 255), (255, 0, 0), (255, 200, 0), (255, 0, 255), (0, 200, 255), (128, 255, 0),
                (255, 128, 0), (128, 0, 255), (0, 128, 128), (128, 128, 0), (200, 200, 200), (0, 255, 128),
                (255, 128, 128)]


class SourceError(InputError):
    """An input that cannot be read (unreadable image, video or camera)."""


@dataclass
class Detection:
    class_id: int
    confidence: float
    points_px: np.ndarray  # (9, 2)
    R: np.ndarray | None  # (3, 3); None when PnP failed
    t: np.ndarray | None  # (3,)

    def to_json(self) -> dict:
        return {"class": self.class_id, "confidence": self.confidence, "points_px": self.points_px.tolist(),
                "R": None if self.R is None else self.R.tolist(), "t": None if self.t is None else self.t.tolist()}


# --------------------------------------------------------------------------------------------
# Frames: a folder or file of images, a video, a camera
# --------------------------------------------------------------------------------------------

def open_source(source: str):
    """(kind, iterator of (name, RGB uint8 frame or None for a corrupt frame), fps).

    kind is 'images', 'video' or 'camera'. Raises SourceError for what cannot be opened.
    """
    if source.isdigit():
        cap = cv2.VideoCapture(int(source))
        if not cap.isOpened():
            raise SourceError(f"camera {source}: cannot be opened (no such device or no permission)")
        return "camera", _video_frames(cap, f"camera{source}"), cap.get(cv2.CAP_PROP_FPS) or 30.0
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        check_images(files)
        return "images", _image_frames(files), 0.0
    if not path.exists():
        raise SourceError(f"{path}: no such file, folder or camera index")
    if not path.is_file():  # a FIFO or a device: a reader would wait on it forever
        raise SourceError(f"{path}: not a regular file (a FIFO or device); expected an image, a folder of images, "
                          f"a video file or a camera index")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        check_images([path])
        return "images", _image_frames([path]), 0.0
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"{path}: not an image and cannot be opened as a video")
    return "video", _video_frames(cap, path.stem), cap.get(cv2.CAP_PROP_FPS) or 30.0


def check_images(files) -> None:
    """Read every image's header before the first frame (design D61): SourceError naming each file
    that is not a regular file, cannot be read, is 16-bit or larger than the pixel cap. An image
    with an EXIF rotation gives one warning: detect.py, as every reader here, uses the stored
    pixels, which is the frame the camera's fx, fy, u0, v0 describe."""
    problems, rotated = [], []
    for f in files:
        try:
            header = image_files.read_header(f)
            image_files.check_bit_depth(f, header.mode)
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
            continue
        if header.orientation != 1:
            rotated.append(f)
    if problems:
        raise SourceError("\n  ".join(preflight.summarise(problems)))
    if rotated:
        warnings.warn(f"{len(rotated)} of {len(files)} images have an EXIF rotation (first: {rotated[0]}); the "
                      f"stored pixels are used, not rotated, as the camera's fx, fy, u0, v0 describe them",
                      stacklevel=2)


def _image_frames(files):
    """Decoded with PIL, like the test loader, so the pixels (hence the poses) equal valid.py's."""
    for f in files:
        try:
            img = image_files.load_image(f)
        except ValueError as exc:
            raise SourceError(f"{f}: unreadable image (corrupt or not an image)") from exc
        yield f.stem, np.asarray(img)


def _video_frames(cap, stem: str):
    index = 0
    try:
        n_total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        while True:
            ok, bgr = cap.read()
            if not ok:
                if n_total is not None and index < n_total:  # a frame that fails to decode mid-video
                    index += 1
                    yield f"{stem}_{index - 1:06d}", None
                    continue
                return
            yield f"{stem}_{index:06d}", bgr[..., ::-1].copy()
            index += 1
    finally:
        cap.release()


# --------------------------------------------------------------------------------------------
# Model, preprocessing, poses
# --------------------------------------------------------------------------------------------

def preprocess(rgb: np.ndarray, size: tuple[int, int], input_filter: str = "none") -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (1, 3, h, w) float in [0, 1], filtered (D69) and resized as the test loader
    does (design §6.2)."""
    img = Image.fromarray(image.input_filter(rgb, input_filter))
    if img.size != tuple(size):
        img = img.resize(size, image.resample_filter("bicubic"))
    return dataset.to_tensor(img)[None]


def select_boxes(output: torch.Tensor, multi: bool, num_classes: int, num_keypoints: int, num_anchors: int,
                 conf_thresh: float = utils.MULTI_CONF_THRESH,
                 box_rule: str = "max") -> list[tuple[int, float, np.ndarray]]:
    """[(class_id, confidence, normalised points (K, 2))] for one image's output (1, ch, H, W).

    Single object: the most confident cell (design §4.1), whatever its confidence; box_rule 'vote'
    takes its corners from the 3x3 vote (D54), as valid.py does. Multi object: per class, the box of
    `utils.select_multi_boxes` (D63: among the cells whose best class it is, the highest det_conf *
    class prob, kept above conf_thresh), the one valid_multi.py scores; confidence is that score.
    """
    if not multi:
        box = utils.get_region_boxes(output, num_classes, num_keypoints, num_anchors=num_anchors,
                                     rule=box_rule)[0].cpu().numpy()
        if not np.isfinite(box[2 * num_keypoints]):
            return []
        return [(int(box[-1]), float(box[2 * num_keypoints]), box[: 2 * num_keypoints].reshape(-1, 2))]
    boxes = utils.select_multi_boxes(output, conf_thresh, num_classes, num_keypoints, num_anchors, box_rule)
    score, points = boxes.score[0].cpu().numpy(), boxes.points[0].cpu().numpy()
    kept = np.flatnonzero(boxes.kept[0].cpu().numpy()).tolist()
    return [(c, float(score[c]), points[c].reshape(-1, 2)) for c in kept]


def class_corners(opts: dict, multi: bool, num_classes: int = 1) -> dict[int, np.ndarray]:
    """{class id: (8, 3) box corners} from the .data file's mesh keys: mesh (class 0), or in multi mode
    mesh<k> for class k - 1 (design §3.2, as valid_multi.py reads them). In multi mode, one warning
    names the classes of the network's `num_classes` without a mesh: their detections get no pose."""
    keys = {0: "mesh"} if not multi else {int(k[4:]) - 1: k for k in opts if k.startswith("mesh") and k[4:].isdigit()}
    if multi and not keys and "mesh" in opts:
        keys = {0: "mesh"}
    corners = {}
    for c, key in keys.items():
        if not Path(opts[key]).is_file():
            raise MeshError(f"{opts.get('_datacfg')}: {key} file not found: {opts[key]}")
        vertices = MeshPly(opts[key]).vertices
        utils.check_mesh_vertices(vertices, opts[key])  # a point or a line: no pose, refused as valid.py does
        corners[c] = utils.box_corners(vertices)
    if not corners:
        raise DataCfgError(f"{opts.get('_datacfg')}: no 'mesh' key; detect.py needs the object's mesh for its 3-D box")
    missing = [c for c in range(num_classes) if c not in corners] if multi else []
    if missing:
        warnings.warn(f"{opts.get('_datacfg')}: no {', '.join(f'mesh{c + 1}' for c in missing)} for class"
                      f"{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of the network's "
                      f"{num_classes}: their detections get no pose (R and t null in detections.json, no box "
                      f"drawn); add the key{'s' if len(missing) > 1 else ''} to the .data file", stacklevel=2)
    return corners


def annotate(rgb: np.ndarray, detections: list[Detection], corners: dict, K: np.ndarray, multi: bool) -> np.ndarray:
    """The frame with each detection's box reprojected from its pose (or its raw points if PnP failed)."""
    out = rgb
    for d in detections:
        color = CLASS_COLORS[d.class_id % len(CLASS_COLORS)] if multi else PRED_COLOR
        if d.R is not None and d.class_id in corners:
            pts = utils.keypoints_from_pose(corners[d.class_id], d.R, d.t.reshape(3, 1), K)
        else:
            pts = d.points_px
        out = utils.draw_box(out, pts, color=color)
        x, y = np.round(d.points_px[0]).astype(int)
        cv2.putText(out, f"{d.class_id}:{d.confidence:.2f}", (int(x) + 5, int(y) - 5), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, color, 1, cv2.LINE_AA)
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__)
    p.add_argument("source", help="image, folder of images, video file, or camera index (0, 1, ...)")
    cli.add_datacfg(p, "camera and mesh (with --multi mesh<k> for class k-1)", required=True)
    cli.add_model(p, cfg_default=DEFAULT_MODELCFG, weights="weightfile", weights_required=True,
                  cfg_why="the network train.py trains without flags; valid.py keeps the original's yolo-pose.cfg")
    cli.add_out(p, what="the annotated frames and detections.json", default="runs/detect",
                why="beside the other runs' outputs")
    p.add_argument("--multi", action="store_true", help="multi-object mode: one box per detected class")
    cli.add_conf_thresh(p, default=utils.MULTI_CONF_THRESH, what="with --multi, as valid_multi.py (design §4.2, D63)")
    cli.add_sizes(p, test=True, test_why="the size the weights were trained for, model_info.json beside them, else "
                                         "the cfg test_width x test_height")
    cli.add_box_rule(p)
    cli.add_input_filter(p)
    cli.add_device(p)
    cli.add_pnp(p)
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames (camera, long videos)")
    p.add_argument("--no-images", action="store_true", help="write only detections.json")
    p.add_argument("--quiet", action="store_true", help="print less: no progress bar")
    return p


def pose_of(points_px: np.ndarray, corners: np.ndarray, K: np.ndarray, method: str):
    """(R, t) of one detection from its 9 points (9, 2) pixels (`evaluation.solve_pose`); (None, None) on failure."""
    pose = evaluation.solve_pose(utils.pose_points3d(corners), points_px, K, method)
    return pose if pose is not None else (None, None)


def main(args) -> dict:
    """Detect on every frame of args.source; return the detections.json content. Bad inputs raise InputError."""
    try:
        cli.check_size("--test-size", args.test_size)
        cli.check_input_filter(args.input_filter)
        cli.check_positive("--max-frames", args.max_frames)
        out = cli.check_output_dir("--out", args.out)  # before any frame: a bad folder never ends a long run
        device = cli.resolve_device(args.device)
        model = model_loading.load_model(args.modelcfg, args.weightfile, device)
        opts = read_data_cfg(args.datacfg, resolve_paths=True)
        opts["_datacfg"] = args.datacfg
        K, _, _ = utils.camera_from_data_cfg(opts, args.datacfg)
        corners = class_corners(opts, args.multi, model.num_classes)
    except (OSError, ValueError) as exc:  # CfgError, WeightsError, ... are ValueErrors
        raise InputError(f"cannot detect:\n  {exc}") from None
    kind, frames, fps = open_source(args.source)  # SourceError names the source
    size, rule, in_filter = model_info.resolve(args, args.weightfile, args.modelcfg,
                                               (model.test_width, model.test_height))
    net = model.inference_copy(channels_last=True)  # D57
    writer, results, skipped = None, {"source": str(args.source), "frames": []}, 0
    interrupted = False
    from tqdm import tqdm

    bar = tqdm(desc="detect", unit="frame", disable=True if args.quiet else None)
    try:
        for n, (name, rgb) in enumerate(frames):
            if args.max_frames is not None and n >= args.max_frames:
                break
            bar.update(1)
            if rgb is None:
                skipped += 1
                continue
            h, w = rgb.shape[:2]
            with torch.inference_mode():
                output = net(preprocess(rgb, size, in_filter).to(device).contiguous(memory_format=torch.channels_last))
            detections = []
            for c, conf, pts in select_boxes(output, args.multi, model.num_classes, model.num_keypoints,
                                             model.num_anchors, args.conf_thresh, rule):
                pts_px = pts * np.array([w, h], dtype=np.float64)
                R, t = pose_of(pts_px, corners[c], K, args.pnp) if c in corners else (None, None)
                detections.append(Detection(c, conf, pts_px, R, t))
            results["frames"].append({"frame": name, "width": w, "height": h,
                                      "detections": [d.to_json() for d in detections]})
            if args.no_images:
                continue
            drawn = annotate(rgb, detections, corners, K, args.multi)
            if kind == "images":
                image.write_image(out / f"{name}.png", np.ascontiguousarray(drawn[..., ::-1]))  # atomically
            else:
                if writer is None:  # written under a temporary name, renamed when complete (design D60)
                    video = out / f"{Path(str(args.source)).stem or 'camera'}.mp4"
                    writer = cv2.VideoWriter(str(video.with_name(f".{video.stem}.part.mp4")),
                                             cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                writer.write(np.ascontiguousarray(drawn[..., ::-1]))
    except KeyboardInterrupt:  # keep what was processed, then end as every script does on Ctrl-C (exit 130)
        print("\ninterrupted: writing what was processed", file=sys.stderr)
        interrupted = True
    finally:
        bar.close()
        if writer is not None:
            writer.release()
            os.replace(video.with_name(f".{video.stem}.part.mp4"), video)
    results["skipped_frames"] = skipped
    write_text(out / "detections.json", json.dumps(results, indent=1))
    n = len(results["frames"])
    print(f"{n} frames, {sum(len(f['detections']) for f in results['frames'])} detections"
          f"{f', {skipped} corrupt frames skipped' if skipped else ''}; results in {out}/")
    if interrupted:
        raise KeyboardInterrupt
    return results


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)))
