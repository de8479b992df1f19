"""Training-loader throughput (images/s) for 0, 1 and 2 workers on a generated LINEMOD-layout fixture.

    .venv/bin/python benchmarks/bench_loader.py [--images-per-object 48] [--batch-size 8] [--train-size 416] \\
        [--workers 0 1 2]

The fixture (640x480 JPEGs: a procedural background with a drawn object, its mask and label)
is written to a temporary folder. Each row runs one full epoch of `make_train_loader` (design §6.1
augmentation, procedural backgrounds) after one warm-up batch; the ratio is against the first
worker count of the same run. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

import cli
import dataset as ds
import image as im
from utils import IM_HEIGHT, IM_WIDTH, label_row


def make_fixture(root: str, n: int, seed: int = 0) -> str:
    """n LINEMOD-style samples of object 'ape' under root/LINEMOD; returns the train list path."""
    base = os.path.join(root, "LINEMOD", "ape")
    for sub in ("JPEGImages", "labels", "mask"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        img = im.procedural_background(rng, IM_WIDTH, IM_HEIGHT)
        mask = np.zeros((IM_HEIGHT, IM_WIDTH), np.uint8)
        cx, cy = int(rng.integers(200, 440)), int(rng.integers(150, 330))
        ax, ay = int(rng.integers(30, 80)), int(rng.integers(30, 80))
        cv2.ellipse(mask, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 255, -1)
        img[mask > 0] = rng.integers(0, 256, size=3, dtype=np.uint8)
        Image.fromarray(img).save(os.path.join(base, "JPEGImages", f"{i:06d}.jpg"), quality=95)
        Image.fromarray(mask).save(os.path.join(base, "mask", f"{i:04d}.png"))
        pts = [[cx, cy]] + [[cx + sx * ax, cy + sy * ay] for sx in (-1, 1) for sy in (-1, 1) for _ in range(2)]
        ds.write_truths(os.path.join(base, "labels", f"{i:06d}.txt"), label_row(np.array(pts, float), 0))
        lines.append(os.path.join(base, "JPEGImages", f"{i:06d}.jpg"))
    list_file = os.path.join(base, "train.txt")
    with open(list_file, "w") as f:
        f.write("\n".join(lines) + "\n")
    return list_file


def images_per_second(dataset, batch: int, size: int, workers: int) -> float:
    """Images per second over one epoch, after a warm-up batch."""
    loader = ds.make_train_loader(dataset, batch, seed=0, epoch=0, workers=workers, mode="fixed", fixed_size=size)
    it = iter(loader)
    next(it)  # warm-up: worker start and first batch
    t0, count = time.perf_counter(), 0
    for images, _ in it:
        count += images.shape[0]
    return count / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images-per-object", type=int, default=48, help="images of the one generated object")
    cli.add_batch_size(p, default=8)
    cli.add_sizes(p, train=True, test=False, train_default=416, train_help="square training size (default 416)")
    cli.add_workers(p, default=[0, 1, 2], nargs="+", help="loader worker counts to time (default 0 1 2)")
    p.add_argument("--procedural-pool", type=int, default=16, help="also time a cached pool of K backgrounds")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        list_file = make_fixture(tmp, args.images_per_object)
        variants = [("fresh", 0)]
        if args.procedural_pool:
            variants.append((f"pool {args.procedural_pool}", args.procedural_pool))
        for name, pool in variants:
            dataset = ds.PoseDataset(list_file, train=True, procedural_pool=pool)
            rows += [(name, w, images_per_second(dataset, args.batch_size, args.train_size, w)) for w in args.workers]
    base = rows[0][2]
    print(f"training loader, {args.images_per_object} images 640x480 -> {args.train_size}x{args.train_size}, "
          f"batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs; ratio against '{rows[0][0]}' with {rows[0][1]} workers")
    print(f"{'backgrounds':>12} {'workers':>8} {'images/s':>10} {'ratio':>8}")
    for name, w, ips in rows:
        print(f"{name:>12} {w:>8} {ips:>10.1f} {ips / base:>7.2f}x")


if __name__ == "__main__":
    main()
