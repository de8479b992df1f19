"""Training speed: images/s of one SGD step (forward, region loss, backward, step) per network.

For each network and variant it times full training steps on a fixed random batch with a
synthetic one-object target, so the number measures the model and the loss, not the loader
(benchmarks/bench_loader.py measures that). Variants, timed in interleaved rounds (median):

    fp32          NCHW, float32: the baseline
    channels-last weights and input in channels_last
    amp           autocast (bf16 where the GPU has it, else fp16 + GradScaler)   (CUDA only)
    amp+cl        both                                                          (CUDA only)

    .venv/bin/python benchmarks/bench_train.py [--nets trial3,tiny] [--batch-size 16] [--train-size 416] [--device cuda]

Defaults finish in about two minutes on a 2-core CPU (YOLOv2 is skipped on the CPU unless named).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import train
from darknet import Darknet
from region_loss import RegionLoss

ROOT = Path(__file__).resolve().parents[1]

NETS = {"trial3": "cfg/yolo-lite-trial3-pose.cfg", "trial10": "cfg/yolo-lite-trial10-pose.cfg",
        "tiny": "cfg/tiny-yolo-pose.cfg", "yolov2": "cfg/yolo-pose.cfg"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", default=None, help=f"comma list of {','.join(NETS)} (default: all but yolov2 on CPU)")
    cli.add_batch_size(p, default=16)
    cli.add_sizes(p, train=True, test=False, train_default=416, train_help="square training size (default 416)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
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


def variants(device) -> list[tuple[str, bool, bool]]:
    out = [("fp32", False, False), ("channels-last", True, False)]
    if device.type == "cuda":
        out += [("amp", False, True), ("amp+cl", True, True)]
    return out


def build(cfg: str, device, channels_last: bool, amp: bool):
    torch.manual_seed(0)
    model = Darknet(ROOT / cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = RegionLoss.from_region(model.region, model.num_keypoints, pretrain_num_epochs=0)
    optimizer = train.build_optimizer(model, 1e-3, 0.9, 5e-4, 16)
    use_fp16 = amp and train.amp_dtype(device) == torch.float16
    cfg_sched = {"learning_rate": 1e-3, "steps": [], "scales": [], "step_unit": 1.0, "batch": 16,
                 "scaler": torch.amp.GradScaler("cuda", enabled=use_fp16)}
    state = {"iteration": 0, "seen": 0}
    return model, loss_fn, optimizer, cfg_sched, state


def step_fn(model, loss_fn, optimizer, cfg, state, images, target, device, amp):
    def step():
        train._train_step(model, images, target, optimizer, loss_fn, state, cfg, device, 1, 0, None, amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return step


def main(args) -> list[dict]:
    device = cli.resolve_device(args.device)
    names = args.nets.split(",") if args.nets else [n for n in NETS if device.type == "cuda" or n != "yolov2"]
    images, target = make_batch(args.batch_size, args.train_size, device)
    rows = []
    for name in names:
        setups = {}
        for label, cl, amp in variants(device):
            model, loss_fn, opt, cfg, state = build(NETS[name], device, cl, amp)
            model.train()
            x = images.contiguous(memory_format=torch.channels_last) if cl else images
            step = step_fn(model, loss_fn, opt, cfg, state, x, target, device, amp)
            step()  # warm-up (allocations, cuDNN autotune)
            setups[label] = step
        times = {label: [] for label in setups}
        for _ in range(args.rounds):
            for label, step in setups.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[label].append((time.perf_counter() - t0) / args.steps)
        base = statistics.median(times["fp32"])
        for label, ts in times.items():
            t = statistics.median(ts)
            rows.append({"network": name, "variant": label, "ms": 1e3 * t, "ips": args.batch_size / t,
                         "ratio": base / t})
            r = rows[-1]
            print(f"| {name} | {label} | {r['ms']:.1f} | {r['ips']:.1f} | {r['ratio']:.2f}x |", flush=True)
    print(f"\ndevice {device}, torch {torch.__version__}, batch {args.batch_size}, "
          f"input {args.train_size}x{args.train_size}, "
          f"threads {torch.get_num_threads()}\n")
    print("| network | variant | ms / step | images/s | vs fp32 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['variant']} | {r['ms']:.1f} | {r['ips']:.1f} | {r['ratio']:.2f}x |")
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
