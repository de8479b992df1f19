"""Training-loader throughput (images/s): today's Pillow path against the cv2 fast path (D49).

    .venv/bin/python benchmarks/bench_loader.py [--images-per-object 48] [--batch-size 8] \\
        [--train-sizes 256 416] [--workers 0]

The fixture (640x480 JPEGs: a procedural background with a drawn object, its mask and label)
is written to a temporary folder. Each row runs one full epoch of `make_train_loader` (design §6.1
augmentation, a new background for every sample) after one warm-up batch. With 0 workers the
samples are made in the timing process, so images/s is the throughput of one core; the ratio is
against today's path (Pillow, a fresh procedural background per sample) at the same size and
worker count in the same run. Not a test: numbers depend on the machine.
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


def main(argv=None) -> list[tuple]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images-per-object", type=int, default=48, help="images of the one generated object")
    cli.add_batch_size(p, default=8)
    p.add_argument("--train-sizes", type=int, nargs="+", default=[256, 416], metavar="S",
                   help="square training sizes to time (default 256, the fast recipe's, and 416)")
    cli.add_workers(p, default=[0], nargs="+", help="loader worker counts to time (default 0: per core)")
    p.add_argument("--procedural-pool", type=int, default=16, help="also time the Pillow path with a pool of K")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        list_file = make_fixture(tmp, args.images_per_object)
        variants = [("Pillow, fresh backgrounds (today)", dict())]
        if args.procedural_pool:
            variants.append((f"Pillow, pool {args.procedural_pool}", dict(procedural_pool=args.procedural_pool)))
        variants.append(("cv2 fast path", dict(fast=True)))
        for size in args.train_sizes:
            for w in args.workers:
                base = None
                for name, kw in variants:
                    dataset = ds.PoseDataset(list_file, train=True, **kw)
                    dataset.warm_background_pool()
                    ips = images_per_second(dataset, args.batch_size, size, w)
                    base = base or ips
                    rows.append((size, w, name, ips, ips / base))
    print(f"training loader, {args.images_per_object} images 640x480, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs; ratio against today's path (Pillow, a fresh procedural background per sample) "
          f"at the same size and workers\n")
    print("| size | workers | path | images/s | vs today |\n|---|---|---|---|---|")
    for size, w, name, ips, ratio in rows:
        print(f"| {size} | {w} | {name} | {ips:.1f} | {ratio:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
