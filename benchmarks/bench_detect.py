"""detect.py end to end on a folder of 640x480 images: read, resize, forward, decode, PnP.

    .venv/bin/python benchmarks/bench_detect.py [--images 64] [--test-size 416] [--rounds 3]
        [--modelcfg cfg/yolo-lite-trial3-pose.cfg] [--weightfile W] [--device cpu|cuda]

`detect.main` on a folder of synthetic LINEMOD test images with `--no-images` (no annotated PNGs:
writing them is output, not detection), so every frame is read from disk, resized as the test
loader does, run through the network, decoded (the most confident cell) and turned into a pose by
PnP; `detections.json` is written once at the end. The baseline, in the same run and interleaved
rounds (median reported), is the same call with the eager network instead of the BN-folded,
channels-last copy that detect.py runs (design D57). The model is the trial-3 cfg with the VOC
backbone and a seeded head whose points form a plausible box (so PnP costs what it costs on a
trained model), or --weightfile. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import detect
from darknet import Darknet
from errors import run_cli

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELCFG = "cfg/yolo-lite-trial3-pose.cfg"
VOC_BACKBONE = ROOT / "weights" / "tiny-yolov2-trial3-voc.weights"


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64, help="640x480 images in the folder")
    cli.add_model(p, cfg_default=DEFAULT_MODELCFG, cfg_why="the main job's network, detect.py's", weights="weightfile",
                  weights_detail="full weights", weights_why="VOC backbone + a seeded head")
    cli.add_sizes(p, test=True, test_default=416, test_why="the papers' size")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed repetitions: passes over the folder per network (default 3: the best counts)")
    cli.add_device(p)
    return p


def seeded_weights(modelcfg, path: Path) -> Path:
    """The VOC backbone with a small seeded head: points near the cell, a plausible pose for PnP."""
    torch.manual_seed(0)
    model = Darknet(modelcfg)
    model.load_weights_until_last(VOC_BACKBONE)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01)
        head.bias.zero_()
    model.save_weights(path)
    return path


def run_once(argv: list[str], eager: bool) -> float:
    """Frames per second of one detect.main call over the folder (the eager network if asked)."""
    args = detect.get_args_parser().parse_args(argv)
    patch = mock.patch.object(Darknet, "inference_copy", lambda self, channels_last=True: self.eval()) if eager \
        else mock.patch.object(Darknet, "inference_copy", Darknet.inference_copy)
    with patch:
        t0 = time.perf_counter()
        result = detect.main(args)
        seconds = time.perf_counter() - t0
    return len(result["frames"]) / seconds


def main(args) -> list[tuple]:
    from synthetic import generate

    device = cli.resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench_detect_") as tmp:
        tmp = Path(tmp)
        generated = generate(tmp / "data", objects=1, images_per_object=args.images, seed=0, test_fraction=1.0)
        datacfg = generated["data_cfgs"][0]
        folder = tmp / "images"
        folder.mkdir()
        for jpg in sorted((tmp / "data" / "LINEMOD" / "obj00" / "JPEGImages").glob("*.jpg")):
            shutil.copy(jpg, folder / jpg.name)
        args.modelcfg = cli.find_path(args.modelcfg)  # from the current folder, else the repository's
        weights = args.weightfile or seeded_weights(args.modelcfg, tmp / "seeded.weights")
        argv = [str(folder), "--datacfg", str(datacfg), "--modelcfg", str(args.modelcfg), "--weightfile",
                str(weights), "--test-size", str(args.test_size), "--device", str(device), "--no-images",
                "--quiet", "--out", str(tmp / "out"), "--box-rule", "max"]
        for eager in (True, False):  # warm-up
            run_once(argv, eager)
        fps = {True: [], False: []}
        for _ in range(args.rounds):
            for eager in (True, False):
                fps[eager].append(run_once(argv, eager))
    base = statistics.median(fps[True])
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\ndetect.py end to end (read, resize, forward, decode, PnP), {args.images} images 640x480 at "
          f"{args.test_size} px, {Path(args.modelcfg).name}, device {device} ({what}), {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}; median of {args.rounds} rounds\n")
    rows = [("eager network", base, 1.0), ("fused + channels-last (detect.py)", statistics.median(fps[False]),
                                           statistics.median(fps[False]) / base)]
    print("| network | images/s | vs eager |\n|---|---|---|")
    for name, ips, ratio in rows:
        print(f"| {name} | {ips:.1f} | {ratio:.2f}x |")
    return rows


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)), prog="bench_detect.py")
