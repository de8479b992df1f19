"""Training-loader throughput (images/s): the cv2 fast path (D49) against today's fast path and Pillow.

    .venv/bin/python benchmarks/bench_loader.py [--images-per-object 48] [--batch-size 8] \\
        [--cases 416:files 256:own] [--workers 0] [--rounds 3]

The fixture (640x480 JPEGs: a procedural background with a drawn object, its mask and label, and a
folder of BG_FILES 640x480 background JPEGs standing in for VOC) is written to a temporary folder.
A case `S:files` trains at S px with background images from files (`--bg-dir`), `S:own` with the
image's own background (the fast recipe's default). Rows per case:

    Pillow, original recipe   `fast=False`, a new background for every sample (files, or fresh
                              procedural ones for `own`: the Pillow path always replaces it)
    cv2, today's fast path    the fast path as it was before issue 23 item 6 (the BASELINE copy
                              below), with the fast recipe's jitter and background probability
    cv2 fast path             `fast=True` as it is now, same settings
    cv2 fast path, cached     the same with the training images and masks decoded once into RAM
                              (`--cache-images`, D67: the same samples); the one-off decoding time
                              is printed above the table, not counted in images/s

Each row runs one full epoch of `make_train_loader` after one warm-up batch, `--rounds` times
interleaved with the other rows; the best is kept (the machine may be shared). With 0 workers the
samples are made in the timing process, so images/s is the throughput of one core. Ratios are
against today's fast path and against Pillow at the same case and worker count in the same run.
Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

import cli
import dataset as ds
import image_files
import image as im
import recipes
from linemod_format import label_path, mask_path
from errors import run_cli
from utils import IM_HEIGHT, IM_WIDTH, label_row

BG_FILES = 20  # background JPEGs in the fixture's --bg-dir folder
BG_SIZE = (640, 480)  # VOC2012's are at most 500 px a side; 640 x 480 costs a little more to decode
TODAY = "cv2, today's fast path"
CACHED = "cv2 fast path, cached"


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


def make_backgrounds(root: str, n: int = BG_FILES, seed: int = 1) -> str:
    """A folder of n procedural background JPEGs of BG_SIZE (a stand-in for VOC); returns its path."""
    folder = os.path.join(root, "backgrounds")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = im.procedural_background(rng, *BG_SIZE)
        Image.fromarray(img).save(os.path.join(folder, f"bg{i:03d}.jpg"), quality=90)
    return folder


# --------------------------------------------------------------------------------------------
# BASELINE ONLY: today's fast path, a faithful copy of `PoseDataset.fast_train_sample` and the
# helpers it used at the start of issue 23 item 6 (git 74f900f), kept here so that every run
# measures the new path against it. Not used by training; do not import from here.
# --------------------------------------------------------------------------------------------

def _today_read_rgb(path, kind="image"):
    path = os.fspath(path)
    arr = cv2.imread(path, cv2.IMREAD_COLOR)
    if arr is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: {kind} not found")
        return np.asarray(image_files.load_image(path, kind))
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def _today_fast_crop_resize(arr, offsets, size, fix_off_by_one=False, interpolation=cv2.INTER_LINEAR):
    H, W = arr.shape[:2]
    w, h = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    sw, sh = im.crop_size(W, H, offsets)
    level = 1 if min(sw / w, sh / h) >= 2 else 0
    src = cv2.pyrDown(arr) if level else arr
    m = im.crop_affine(offsets, W, H, (w, h), fix_off_by_one, level)
    return cv2.warpAffine(src, m, (w, h), flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _today_fast_augment(img, mask, background, offsets, size, fix_off_by_one=False):
    H, W = img.shape[:2]
    out = _today_fast_crop_resize(img, offsets, size, fix_off_by_one)
    if background is None:
        return out
    obj = _today_fast_crop_resize(mask, offsets, size, fix_off_by_one) > im.MASK_THRESHOLD
    merged = background.copy()
    np.copyto(merged, out, where=obj[..., None])
    u0, u1, v0, v1 = im.inside_rect(im.crop_affine(offsets, W, H, size, fix_off_by_one), W, H, size)
    if (u0, v0, u1, v1) != (0, 0, merged.shape[1], merged.shape[0]):
        inside = np.zeros(merged.shape[:2], bool)
        inside[v0:v1, u0:u1] = True
        merged[~inside] = 0
    return merged


def _today_background_window(pool_image, rng, size):
    H, W = pool_image.shape[:2]
    w, h = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    ww, wh = int(rng.integers(W // 2, W + 1)), int(rng.integers(H // 2, H + 1))
    x0, y0 = int(rng.integers(0, W - ww + 1)), int(rng.integers(0, H - wh + 1))
    out = cv2.resize(pool_image[y0:y0 + wh, x0:x0 + ww], (w, h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out[:, ::-1]) if rng.integers(2) else out


def _today_fast_distort(rgb, dhue, dsat, dexp):
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    hsv = cv2.merge([cv2.LUT(c, lut) for c, lut in zip(cv2.split(hsv), im.hsv_luts(dhue, dsat, dexp))])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def _today_to_tensor(img):
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0))


class TodayFastDataset(ds.PoseDataset):
    """BASELINE ONLY: `PoseDataset(fast=True)` with today's per-sample function (a file decoded per background)."""

    def warm_background_pool(self) -> None:
        if self.fast and not self.bg_files:
            for k in range(self.procedural_pool):
                self.pool_background(k)

    def fast_background(self, index, size):
        rng = np.random.default_rng([self.seed, self.epoch, index, ds._BG_STREAM])
        if self.bg_prob < 1.0 and rng.random() >= self.bg_prob:
            return None
        if self.bg_files:
            path = self.bg_files[int(rng.integers(len(self.bg_files)))]
            pool_image = np.asarray(image_files.load_image(path, "background image"))
        else:
            pool_image = self.pool_background(int(rng.integers(self.procedural_pool)))
        return _today_background_window(pool_image, rng, size)

    def fast_train_sample(self, index, size):
        """Returns the tensor (today's to_tensor), which `_load` passes through."""
        path = self.paths[index]
        rng = self.rng(index)
        img = _today_read_rgb(path)
        h0, w0 = img.shape[:2]
        rows = ds.read_truths(label_path(path), self.label_width)
        bg = self.fast_background(index, size)
        offsets = im.draw_crop_offsets(rng, w0, h0, self.jitter)
        mask = image_files.read_gray(mask_path(path), (w0, h0)) if bg is not None else None
        out = _today_fast_augment(img, mask, bg, offsets, size, self.fix_crop)
        rng.integers(1, 10001)
        out = _today_fast_distort(out, *im.draw_hsv(rng, self.hue, self.saturation, self.exposure))
        return _today_to_tensor(out), im.transform_labels(rows, *im.crop_label_params(offsets, w0, h0))

# ----------------------------------------------------------------------------- end of BASELINE


def images_per_second(dataset, batch: int, size: int, workers: int) -> float:
    """Images per second over one epoch, after a warm-up batch."""
    loader = ds.make_train_loader(dataset, batch, seed=0, epoch=0, workers=workers, mode="fixed", fixed_size=size)
    it = iter(loader)
    next(it)  # warm-up: worker start and first batch
    t0, count = time.perf_counter(), 0
    for images, _ in it:
        count += images.shape[0]
    return count / (time.perf_counter() - t0)


def parse_case(text: str) -> tuple[int, str]:
    """'416:files' -> (416, 'files'); the background is 'files' or 'own'."""
    size, _, bg = text.partition(":")
    if bg not in ("files", "own") or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected S:files or S:own, found {text!r}")
    return int(size), bg


def case_datasets(list_file: str, bg_dir: str, bg: str) -> list[tuple[str, ds.PoseDataset]]:
    """(row name, dataset) for one case: Pillow (original recipe), today's fast path, the fast path."""
    files = bg == "files"
    fast_kw = dict(fast=True, jitter=recipes.FAST.jitter, bg_dir=bg_dir if files else None,
                   bg_prob=recipes.FAST.bg_prob_with_dir if files else recipes.FAST.bg_prob)
    pillow = ds.PoseDataset(list_file, train=True, bg_dir=bg_dir if files else None)
    cached = ds.PoseDataset(list_file, train=True, **fast_kw)
    t0 = time.perf_counter()
    cached.cache_images()
    print(f"image cache: {len(cached.decoded)} images decoded in {time.perf_counter() - t0:.2f} s")
    return [("Pillow, original recipe", pillow), (TODAY, TodayFastDataset(list_file, train=True, **fast_kw)),
            ("cv2 fast path", ds.PoseDataset(list_file, train=True, **fast_kw)), (CACHED, cached)]


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.splitlines()[0])
    p.add_argument("--images-per-object", type=int, default=48,
                   help="images per object: of the one generated object (default 48: six batches of 8)")
    cli.add_batch_size(p, default=8, why="the fast recipe's")
    p.add_argument("--cases", type=parse_case, nargs="+", default=[(416, "files"), (256, "own")], metavar="S:BG",
                   help="training size and background: 'files' (--bg-dir) or 'own' (default 416:files 256:own)")
    cli.add_workers(p, default=[0], nargs="+", what="the loader's, each count timed",
                    why="loading in the training process, per core")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed repetitions: interleaved timings per row, the best is kept (default 3: the best counts)")
    cli.add_alias(p, "--repeats", "--rounds")  # --rounds in every other benchmark
    return p


def main(argv=None) -> list[tuple]:
    p = get_args_parser()
    args = p.parse_args(argv)
    if args.images_per_object < 2 * args.batch_size:  # the first batch is a warm-up: nothing would be timed
        p.error(f"--images-per-object {args.images_per_object}: need at least two batches of "
                f"--batch-size {args.batch_size}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        list_file = make_fixture(tmp, args.images_per_object)
        bg_dir = make_backgrounds(tmp)
        for size, bg in args.cases:
            variants = case_datasets(list_file, bg_dir, bg)
            for w in args.workers:
                best = {name: 0.0 for name, _ in variants}
                for _ in range(args.rounds):
                    for name, dataset in variants:
                        best[name] = max(best[name], images_per_second(dataset, args.batch_size, size, w))
                for name, _ in variants:
                    rows.append((size, bg, w, name, best[name], best[name] / best[TODAY],
                                 best[name] / best["Pillow, original recipe"]))
    print(f"training loader, {args.images_per_object} images 640x480, {BG_FILES} background files "
          f"{BG_SIZE[0]}x{BG_SIZE[1]}, batch {args.batch_size}, {os.cpu_count()} CPUs, best of {args.rounds}; "
          f"fast rows: jitter {recipes.FAST.jitter}, a file background for {recipes.FAST.bg_prob_with_dir:.0%} "
          f"of the samples with 'files'\n")
    print("| size | background | workers | path | images/s | vs today's fast path | vs Pillow |\n"
          "|---|---|---|---|---|---|---|")
    for size, bg, w, name, ips, ratio, vs_pillow in rows:
        print(f"| {size} | {bg} | {w} | {name} | {ips:.1f} | {ratio:.2f}x | {vs_pillow:.2f}x |")
    return rows


if __name__ == "__main__":
    run_cli(main, prog="bench_loader.py")
