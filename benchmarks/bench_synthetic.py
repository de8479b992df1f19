"""Synthetic LINEMOD generator speed at 640x480: images/s for 1 vs 2 worker processes.

    .venv/bin/python benchmarks/bench_synthetic.py [--num-objects 3] [--images-per-object 80] [--workers 1 2]
        [--renders 60] [--mesh-images 30]

Three tables, all measured in this run:
1. `generate()` end to end (meshes, images, masks, labels, lists, cfg files) per worker count,
   at half and at the full number of images per object: total images/s (what a user waits for),
   and from the difference of the two runs the steady rate and the fixed start-up cost (a
   'spawn' worker imports torch, OpenCV and SciPy before its first image). Ratio against the
   first worker count.
2. Where one image's time goes in one process (ms per image): background, rendering,
   compositing, JPEG/PNG encoding and writing.
3. The renderer's rasteriser: the previous implementation (REFERENCE, kept below as the
   baseline: square power-of-two boxes, edge functions on full pixel grids) against the current
   one (render._rasterize: weights affine in the pixel, one row and one column term
   per box), ms per render of 1-3 objects, with the number of pixels where the two renderings
   differ (ids or colour).
4. Images of a user's mesh (synthetic.render_mesh_single with the default RenderOptions: smooth
   shading, procedural photo-like background, distractors, occluders, jitter, blur, noise) for a
   10k-face and a 50k-face mesh, against today's procedural images (render_single), images/s in
   this one process, and the rendering alone (render.render with a Lighting) in ms.
Defaults take about a minute on 2 cores. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import render as sr
import synthetic as gen
from errors import run_cli
from utils import IM_HEIGHT, IM_WIDTH, get_camera_intrinsic

ROOT = Path(__file__).resolve().parents[1]


def reference_rasterize(px: np.ndarray, inv_z: np.ndarray, width: int, height: int):
    """The previous render._rasterize, the baseline of table 3 (same signature and result)."""
    lo = np.maximum(np.ceil(px.min(axis=1)).astype(np.int64), 0)
    hi = np.minimum(np.floor(px.max(axis=1)).astype(np.int64), np.array([width - 1, height - 1]))
    a, b, c = px[:, 0], px[:, 1], px[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ok = np.all(lo <= hi, axis=1) & (np.abs(area) > 1e-9)
    span = np.where(ok, np.max(hi - lo + 1, axis=1), 0)
    bucket = np.where(ok, 1 << np.ceil(np.log2(np.maximum(span, 1))).astype(np.int64), 0)
    pix_out, tri_out, iz_out = [], [], []
    for S in np.unique(bucket[bucket > 0]):
        idx = np.nonzero(bucket == S)[0]
        g = np.arange(S)
        gx, gy = np.tile(g, S), np.repeat(g, S)
        qx, qy = lo[idx, 0:1] + gx, lo[idx, 1:2] + gy
        valid = (qx <= hi[idx, 0:1]) & (qy <= hi[idx, 1:2])
        ai, bi, ci, ar = a[idx], b[idx], c[idx], area[idx, None]
        la = ((ci[:, 0:1] - bi[:, 0:1]) * (qy - bi[:, 1:2]) - (ci[:, 1:2] - bi[:, 1:2]) * (qx - bi[:, 0:1])) / ar
        lb = ((ai[:, 0:1] - ci[:, 0:1]) * (qy - ci[:, 1:2]) - (ai[:, 1:2] - ci[:, 1:2]) * (qx - ci[:, 0:1])) / ar
        lc = 1.0 - la - lb
        inside = valid & (la >= -1e-9) & (lb >= -1e-9) & (lc >= -1e-9)
        r, k = np.nonzero(inside)
        tri = idx[r]
        iz_out.append(la[r, k] * inv_z[tri, 0] + lb[r, k] * inv_z[tri, 1] + lc[r, k] * inv_z[tri, 2])
        pix_out.append(qy[r, k] * width + qx[r, k])
        tri_out.append(tri)
    if not pix_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(pix_out), np.concatenate(tri_out), np.concatenate(iz_out)


def end_to_end(objects: int, per_object: int, workers: int) -> float:
    """Seconds of one generate() call into a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        gen.generate(Path(tmp) / "ds", objects=objects, images_per_object=per_object, seed=0, workers=workers)
        return time.perf_counter() - t0


def stage_times(objects: int, n: int) -> dict:
    """Median ms per image of each stage of a single-object image, in this process."""
    K = get_camera_intrinsic()
    objs = gen.build_objects(objects, 0)
    colors = np.concatenate([o.mesh.face_colors for o in objs]).astype(np.float64)
    stages: dict = {"pose + light": [], "background": [], "render": [], "composite": [], "encode + write": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            rng = gen._rng(0, gen.TAG_IMAGE, i % objects, i)
            o = objs[i % objects]
            t0 = time.perf_counter()
            R, t = sr.sample_pose(rng, o.mesh.keypoints3d, K, IM_WIDTH, IM_HEIGHT)
            light = sr.Light.random(rng)
            t1 = time.perf_counter()
            rendering = sr.render([o.mesh], [(R, t)], K, IM_WIDTH, IM_HEIGHT, light)
            t2 = time.perf_counter()
            bg = gen.make_background(rng, colors, IM_WIDTH, IM_HEIGHT)
            t3 = time.perf_counter()
            rgb = gen._composite(bg, rendering)
            mask = np.where(rendering.ids == 0, 255, 0).astype(np.uint8)
            t4 = time.perf_counter()
            row = gen.label_from_pose(o.mesh.corners, R, t, K, o.class_id)
            gen._write_image(Path(tmp), f"LINEMOD/x/JPEGImages/{i:06d}.jpg", rgb, mask, row[None], gen.JPEG_QUALITY)
            t5 = time.perf_counter()
            for key, dt in zip(stages, (t1 - t0, t3 - t2, t2 - t1, t4 - t3, t5 - t4)):
                stages[key].append(dt * 1e3)
    return {k: statistics.median(v) for k, v in stages.items()}


def renderer_comparison(n: int) -> tuple[float, float, int, int]:
    """(reference ms, current ms, differing pixels, object pixels) over n renders of 1-3 objects."""
    K = get_camera_intrinsic()
    objs = gen.build_objects(4, 1)
    current = sr._rasterize
    t_ref = t_cur = 0.0
    diff = covered = 0
    try:
        for i in range(n):
            rng = np.random.default_rng([7, i])
            meshes, poses = [], []
            for j in range(1 + i % 3):
                o = objs[(i + j) % len(objs)]
                poses.append(sr.sample_pose(rng, o.mesh.keypoints3d, K, IM_WIDTH, IM_HEIGHT,
                                            centre_box=(200, 440, 150, 330)))
                meshes.append(o.mesh)
            light = sr.Light.random(rng)
            sr._rasterize = reference_rasterize
            t0 = time.perf_counter()
            a = sr.render(meshes, poses, K, IM_WIDTH, IM_HEIGHT, light)
            sr._rasterize = current
            t1 = time.perf_counter()
            b = sr.render(meshes, poses, K, IM_WIDTH, IM_HEIGHT, light)
            t2 = time.perf_counter()
            t_ref, t_cur = t_ref + t1 - t0, t_cur + t2 - t1
            diff += int(((a.ids != b.ids) | (a.rgb != b.rgb).any(axis=2)).sum())
            covered += int((a.ids >= 0).sum())
    finally:
        sr._rasterize = current
    return t_ref / n * 1e3, t_cur / n * 1e3, diff, covered


def sphere_mesh(faces: int, seed: int = 0) -> sr.Mesh:
    """A bumpy UV sphere of about `faces` triangles (0.15 m wide), vertex colours, no normals: a
    stand-in for a scanned user mesh (normals computed by the renderer, as for a file without)."""
    from MeshPly import MeshFile

    n = max(4, int(round(np.sqrt(faces / 4))))
    th, ph = np.meshgrid(np.linspace(0, np.pi, n + 1), np.linspace(0, 2 * np.pi, 2 * n + 1), indexing="ij")
    rng = np.random.default_rng(seed)
    radius = 0.075 * (1 + 0.1 * np.sin(3 * th) * np.cos(5 * ph) + 0.01 * rng.random(th.shape))
    v = np.stack([radius * np.sin(th) * np.cos(ph), radius * np.sin(th) * np.sin(ph), radius * np.cos(th)], -1)
    idx = np.arange(v.shape[0] * v.shape[1]).reshape(v.shape[:2])
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    tris = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    colors = rng.integers(0, 256, size=(idx.size, 3), dtype=np.uint8)
    return sr.Mesh.from_file(MeshFile("sphere", v.reshape(-1, 3), tris, None, colors))


def mesh_images(n: int) -> list[tuple[str, int, float, float]]:
    """(mesh, faces, images/s of whole images, ms per render alone) for n images each of the
    procedural objects (today's sets) and of a 10k- and a 50k-face mesh."""
    from randomisation import Randomiser, RenderOptions

    K = get_camera_intrinsic()
    randomiser = Randomiser.prepare(RenderOptions(), lambda k: gen._rng(0, gen.TAG_DISTRACTOR, k))
    rows = []
    procedural = gen.build_objects(3, 0)
    t0 = time.perf_counter()
    for i in range(n):
        gen.render_single(procedural, i % 3, i, 0, K)
    whole = n / (time.perf_counter() - t0)
    rows.append(("procedural (flat)", int(np.mean([len(o.mesh.faces) for o in procedural])), whole, float("nan")))
    for faces in (10_000, 50_000):
        mesh = sphere_mesh(faces)
        d = gen.mesh_diameter(mesh.vertices)
        obj = gen.SynthObject("sphere", 0, mesh, d, {"distance": gen.camera_distances(mesh.vertices, K, IM_WIDTH,
                                                                                        IM_HEIGHT)})
        t0 = time.perf_counter()
        for i in range(n):
            gen.render_mesh_single([obj], 0, i, 0, K, IM_WIDTH, IM_HEIGHT, randomiser)
        whole = n / (time.perf_counter() - t0)
        render_ms = []
        for i in range(n):
            rng = np.random.default_rng(i)
            R, t = sr.sample_pose(rng, mesh.keypoints3d, K, IM_WIDTH, IM_HEIGHT, distance=obj.pose_ranges["distance"])
            t0 = time.perf_counter()
            sr.render([mesh], [(R, t)], K, IM_WIDTH, IM_HEIGHT, randomiser.options.lighting(rng))
            render_ms.append((time.perf_counter() - t0) * 1e3)
        rows.append((f"{faces // 1000}k-face mesh (smooth)", len(mesh.faces), whole, statistics.median(render_ms)))
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.splitlines()[0])
    cli.add_num_objects(p, default=3, why="the generator's")
    p.add_argument("--images-per-object", type=int, default=80,
                   help="images per object: the full size of table 1 (default 80: as train.py)")
    cli.add_workers(p, default=[1, 2], nargs="+", what="the generator's, each count timed",
                    why="one and two, on 2 cores")
    p.add_argument("--stage-images", type=int, default=60, help="images timed for table 2")
    p.add_argument("--renders", type=int, default=60, help="renders timed for table 3")
    p.add_argument("--mesh-images", type=int, default=30, help="images of each mesh timed for table 4")
    return p


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    cv2.setNumThreads(1)  # like a pool worker: the comparison is per process
    n_full = args.images_per_object
    n_half = max(1, n_full // 2)

    rows = []
    for w in args.workers:
        t_half = end_to_end(args.num_objects, n_half, w)
        t_full = end_to_end(args.num_objects, n_full, w)
        imgs_half, imgs_full = args.num_objects * n_half, args.num_objects * n_full
        steady = (imgs_full - imgs_half) / max(t_full - t_half, 1e-9)
        rows.append((w, imgs_full, t_full, imgs_full / t_full, steady, max(t_full - imgs_full / steady, 0.0)))
    base = rows[0][3]
    print(f"generate(): {args.num_objects} objects, 640x480, {os.cpu_count()} CPUs, 'spawn' worker processes; "
          f"ratio against {rows[0][0]} worker(s)\n")
    print("| workers | images | seconds | images/s | ratio | steady images/s | start-up s |")
    print("|---|---|---|---|---|---|---|")
    for w, n, t, ips, steady, startup in rows:
        print(f"| {w} | {n} | {t:.2f} | {ips:.1f} | {ips / base:.2f}x | {steady:.1f} | {startup:.2f} |")

    stages = stage_times(args.num_objects, args.stage_images)
    total = sum(stages.values())
    print(f"\none single-object image in one process (median of {args.stage_images}):\n")
    print("| stage | ms per image | share |")
    print("|---|---|---|")
    for k, v in stages.items():
        print(f"| {k} | {v:.2f} | {100 * v / total:.0f} % |")
    print(f"| total | {total:.2f} | {1000 / total:.0f} images/s |")

    ref, cur, diff, covered = renderer_comparison(args.renders)
    print(f"\nrenderer, {args.renders} renders of 1-3 objects; ratio against the reference rasteriser:\n")
    print("| rasteriser | ms per render | ratio | differing pixels |")
    print("|---|---|---|---|")
    print(f"| reference (previous) | {ref:.2f} | 1.00x | - |")
    print(f"| current | {cur:.2f} | {ref / cur:.2f}x | {diff} of {covered} |")

    rows = mesh_images(args.mesh_images)
    print(f"\nimages of a user's mesh, {args.mesh_images} each, one process; ratio against the procedural images:\n")
    print("| objects | faces | images/s | ratio | ms per render alone |")
    print("|---|---|---|---|---|")
    for name, faces, ips, ms in rows:
        print(f"| {name} | {faces} | {ips:.1f} | {ips / rows[0][2]:.2f}x | {'-' if ms != ms else f'{ms:.1f}'} |")


if __name__ == "__main__":
    run_cli(main, prog="bench_synthetic.py")
