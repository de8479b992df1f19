"""Training speed: the loader and the training step, each against today's (the original recipe's) path.

Two tables, each with a ratio against a baseline measured in the same run:

1. Training step (forward, region loss, backward, optimiser step; EMA for fast) per network on a
   fixed random batch with one object per image, so it measures the model and the loss:

       original      SGD, NCHW float32: the baseline (the original recipe)
       fast          AdamW + EMA, channels-last, first conv frozen (the fast recipe, as train.py runs it)
       fast, conv1 trained / fast, NCHW   the fast recipe without one of its speed-ups
       fast 1 thread the same with torch.set_num_threads(1)
       fast + teacher eager / fused   a distilled step (--kd-mode fixed) with a Tiny-YOLOv2 pose teacher,
                     run eager (as before issue 24) or as its BN-folded channels-last copy (what train.py
                     runs, design D57); YOLO-LITE students only. Their ratio to `fast` is the cost of
                     distillation per image
       fast S=...    the same at the smaller input sizes of --sizes
       compile       fast with torch.compile (only with --compile: it compiles for minutes on a CPU)
       amp, amp+cl   autocast (bf16 where the GPU has it, else fp16 + GradScaler)     (CUDA only)

2. Loader: images/s of training samples for the main job's size on a generated LINEMOD-layout
   fixture: the Pillow path with min(4, cores) workers (the original recipe's default) against
   the cv2 fast path with 0 workers (the fast recipe's default on a CPU) and with 1 worker.

    .venv/bin/python benchmarks/bench_train.py [--nets trial3] [--batch-size 16] [--train-size 256]
        [--sizes 224 192] [--compile] [--device cuda]

Defaults (trial 3 at 256, the main job's network and size) finish in about two minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import dataset as ds
import engine
import recipes
from benchmarks.bench_loader import make_fixture
from darknet import Darknet
from errors import run_cli
from model_loading import NETWORKS
from region_loss import RegionLoss

ROOT = Path(__file__).resolve().parents[1]

NETS = {name: cfg for name, (cfg, _) in NETWORKS.items()}
STUDENTS, TEACHER = ("trial3", "trial10"), "tiny"  # the CPU study's networks (docs/design.md §14.4)


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0])
    p.add_argument("--nets", default="trial3",
                   help=f"networks to time: a comma list of {','.join(NETS)} (default trial3: the main job's)")
    cli.add_batch_size(p, default=8, why="the fast recipe's")
    cli.add_sizes(p, train=True, test=False, train_default=256, train_why="the fast recipe's")
    p.add_argument("--sizes", type=int, nargs="*", default=[224, 192], help="smaller sizes to time the fast step at")
    p.add_argument("--compile", action="store_true", help="also time torch.compile: slow to compile on a CPU")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed repetitions: rounds per variant (default 3: the best counts)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    p.add_argument("--loader-images", type=int, default=48, help="fixture images for the loader table")
    p.add_argument("--no-loader", action="store_true", help="skip the loader table")
    cli.add_device(p)
    return p


def make_batch(batch: int, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and one object per image at a random place (class, 9 points, range)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    target = torch.zeros(batch, 50 * 21)
    centre = 0.2 + 0.6 * torch.rand(batch, 1, 2, generator=g)
    points = centre + 0.08 * (torch.rand(batch, 9, 2, generator=g) - 0.5)
    points[:, 0] = centre[:, 0]
    target[:, 1:19] = points.reshape(batch, 18)
    target[:, 19:21] = 0.1
    return images.to(device), target.to(device)


def step_variants(device, sizes, compile_: bool) -> list[dict]:
    """(label, recipe, channels_last, amp, threads, size or None, compile)."""
    out = [dict(label="original", recipe="original", cl=False, amp=False),
           dict(label="fast", recipe="fast", cl=True, amp=False),
           dict(label="fast, conv1 trained", recipe="fast", cl=True, amp=False, unfrozen=True),
           dict(label="fast, NCHW", recipe="fast", cl=False, amp=False)]
    if device.type == "cpu":
        out.append(dict(label="fast 1 thread", recipe="fast", cl=True, amp=False, threads=1))
    out += [dict(label="fast + teacher eager", recipe="fast", cl=True, amp=False, teacher="eager"),
            dict(label="fast + teacher fused", recipe="fast", cl=True, amp=False, teacher="fused")]
    out += [dict(label=f"fast S={s}", recipe="fast", cl=True, amp=False, size=s) for s in sizes]
    if compile_:
        out.append(dict(label="fast compile", recipe="fast", cl=True, amp=False, compile=True))
    if device.type == "cuda":
        out += [dict(label="fast amp", recipe="fast", cl=False, amp=True),
                dict(label="fast amp+cl", recipe="fast", cl=True, amp=True)]
    return out


def build_trainer(cfg: str, device, v: dict, batch: int) -> engine.Trainer:
    """A Trainer of the variant's recipe (no files are written: only train_step is called)."""
    torch.manual_seed(0)
    model = Darknet(ROOT / cfg).to(device)
    if v["cl"]:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = RegionLoss.from_region(model.region, model.num_keypoints, pretrain_num_epochs=-1)
    if v["recipe"] == "fast":
        if not v.get("unfrozen"):
            recipes.freeze_first_convs(model, recipes.FAST.frozen_convs)
        optimizer = recipes.build_adamw(model)
        schedule = recipes.CosineSchedule(1e-3, 0.03, 0.01, total_iters=1000)
        ema = recipes.ModelEMA(model)
        loss_fn.conf_floor, loss_fn.batch_mean = recipes.FAST.conf_floor, True
        loss_fn.neighbour_cells = recipes.FAST.neighbour_cells
    else:
        net = model.net
        optimizer = recipes.build_sgd(model, 1e-3, float(net["momentum"]), float(net["decay"]), batch)
        schedule = recipes.StepSchedule(1e-3, [], [], 1.0, batch)
        ema = None
    net = torch.compile(model) if v.get("compile") else model
    teacher = None
    if v.get("teacher"):
        teacher = Darknet(ROOT / NETS[TEACHER]).to(device).eval()
        teacher.requires_grad_(False)
        teacher = teacher.inference_copy(channels_last=v["cl"]) if v["teacher"] == "fused" else teacher
        loss_fn.kd_mode = "fixed"
    return engine.Trainer(model, optimizer, loss_fn, schedule, backup=Path(tempfile.gettempdir()), run={},
                          cost_keys=(), device=device, net=net, ema=ema, teacher=teacher, amp=v["amp"],
                          channels_last=v["cl"], progress=False)


def time_steps(names, args, device) -> list[dict]:
    rows = []
    threads = torch.get_num_threads()
    for name in names:
        setups = {}
        for v in step_variants(device, args.sizes, args.compile):
            if v.get("teacher") and name not in STUDENTS:
                continue
            size = v.get("size") or args.train_size
            images, target = make_batch(args.batch_size, size, device)
            if v["cl"]:
                images = images.contiguous(memory_format=torch.channels_last)
            trainer = build_trainer(NETS[name], device, v, args.batch_size)

            def step(trainer=trainer, images=images, target=target, v=v):
                torch.set_num_threads(v.get("threads", threads))
                try:
                    trainer.train_step(images, target, epoch=1, batch_index=0)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                finally:
                    torch.set_num_threads(threads)

            step()  # warm-up (allocations, cuDNN autotune, compilation)
            setups[v["label"]] = step
        times = {label: [] for label in setups}
        for _ in range(args.rounds):  # interleaved rounds: a busy machine slows every variant alike
            for label, step in setups.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[label].append((time.perf_counter() - t0) / args.steps)
        base = statistics.median(times["original"])
        for label, ts in times.items():
            t = statistics.median(ts)
            rows.append({"network": name, "variant": label, "ms": 1e3 * t, "ips": args.batch_size / t,
                         "ratio": base / t})
    return rows


def loader_ips(dataset, batch: int, size: int, workers: int, batches: int) -> float:
    """Training images per second from make_train_loader over `batches` batches, after a warm-up batch."""
    loader = ds.make_train_loader(dataset, batch, seed=0, epoch=0, workers=workers, mode="fixed", fixed_size=size)
    it = iter(loader)
    next(it)
    t0, count = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images, _ = next(it)
        except StopIteration:
            break
        count += images.shape[0]
    return count / (time.perf_counter() - t0)


def time_loader(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        list_file = make_fixture(tmp, args.loader_images)
        batches = max(args.loader_images // args.batch_size - 1, 1)
        slow = ds.PoseDataset(list_file, train=True)
        fast = ds.PoseDataset(list_file, train=True, fast=True, jitter=recipes.FAST.jitter,
                              bg_prob=recipes.FAST.bg_prob_with_dir)
        fast.warm_background_pool()
        default_workers = min(4, os.cpu_count() or 1)
        for label, d, w in ((f"Pillow (original), {default_workers} workers", slow, default_workers),
                            ("Pillow (original), 0 workers", slow, 0),
                            ("cv2 (fast), 0 workers", fast, 0), ("cv2 (fast), 1 worker", fast, 1)):
            rows.append({"loader": label, "ips": loader_ips(copy.copy(d), args.batch_size, args.train_size, w,
                                                             batches)})
    base = rows[0]["ips"]
    per_core_base = rows[1]["ips"]
    for r in rows:
        r["ratio"] = r["ips"] / base
        r["per_core_ratio"] = r["ips"] / per_core_base
    return rows


def main(args) -> dict:
    device = cli.resolve_device(args.device)
    names = args.nets.split(",")
    unknown = [n for n in names if n not in NETS]
    if unknown:
        raise SystemExit(f"unknown network(s) {unknown}; choose from {list(NETS)}")
    steps = time_steps(names, args, device)
    print(f"\ntraining step: device {device}, torch {torch.__version__}, batch {args.batch_size}, "
          f"input {args.train_size}x{args.train_size} unless named, threads {torch.get_num_threads()}\n")
    print("| network | variant | ms / step | images/s | vs original |\n|---|---|---|---|---|")
    for r in steps:
        print(f"| {r['network']} | {r['variant']} | {r['ms']:.1f} | {r['ips']:.1f} | {r['ratio']:.2f}x |")
    loads = [] if args.no_loader else time_loader(args)
    if loads:
        print(f"\nloader: {args.loader_images} fixture images 640x480 -> {args.train_size}x{args.train_size}, "
              f"batch {args.batch_size}, {os.cpu_count()} CPUs\n")
        print("| loader | images/s | vs the original default | per core, vs Pillow with 0 workers |\n"
              "|---|---|---|---|")
        for r in loads:
            print(f"| {r['loader']} | {r['ips']:.1f} | {r['ratio']:.2f}x | {r['per_core_ratio']:.2f}x |")
    return {"steps": steps, "loader": loads}


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)), prog="bench_train.py")
