"""Forward-pass speed of the pose networks: plain eager vs the inference-ready variants.

For each network (YOLO-LITE trial 3 / trial 10, Tiny-YOLOv2, YOLOv2 pose) and batch size, at
416x416 by default, it times in the same run:

    eager        model.eval() under torch.no_grad(), NCHW: the baseline
    fused        Darknet.fuse() (BatchNorm folded into the convs) under torch.inference_mode()
    fused+cl     fused, weights and input in channels_last memory format
    compile      torch.compile(fused+cl)                     (--compile; skipped if it fails)
    bf16, fp16   fused+cl under torch.autocast                (CUDA only)

and prints a markdown table with ms per batch, images/s, achieved GFLOP/s (design §14.2 counts)
and the ratio of images/s against `eager`, plus the largest output difference from `eager`.

Variants are timed in interleaved rounds (median reported), so that load from other processes
affects them alike.

Run: .venv/bin/python benchmarks/bench_forward.py [--nets trial3,tiny] [--batch-sizes 1,16]
     [--rounds 3] [--round-time 0.3] [--device cpu|cuda] [--threads N] [--compile]
Defaults finish in about two minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from darknet import Darknet
from errors import run_cli
from model_loading import NETWORKS

ROOT = Path(__file__).resolve().parents[1]

NETS = {name: cfg for name, (cfg, _) in NETWORKS.items()}


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0])
    p.add_argument("--nets", default="trial3,trial10,tiny,yolov2",
                   help=f"networks to time: a comma list of {','.join(NETS)} (default trial3,trial10,tiny,yolov2: all)")
    p.add_argument("--batch-sizes", default="1,16",
                   help="batch sizes to time: a comma list (default 1,16: detect.py's and training's)")
    cli.add_sizes(p, test=True, test_default=416, test_why="the papers' size")
    p.add_argument("--rounds", type=int, default=5,
                   help="timed repetitions: rounds per variant, the median is reported (default 5: a median of 5)")
    p.add_argument("--round-time", type=float, default=0.2, help="seconds per variant per round (at least 1 call)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (compile runs 2 more)")
    cli.add_device(p)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads: CPU threads "
                                                                        "(default: the CPU count)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile: fused+cl")
    p.add_argument("--max-gflop", type=float, default=None,
                   help="skip a network/batch whose forward exceeds this many GFLOP per batch "
                        "(default 150 on CPU, i.e. YOLOv2 batch 16 is skipped; no limit on CUDA)")
    p.add_argument("--variants", default="", help="comma list to restrict the variants (eager is always run)")
    return p


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_timed(fn, x, device, iters: int) -> float:
    """Seconds per call of fn(x), mean over `iters` calls."""
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    sync(device)
    return (time.perf_counter() - start) / iters


def time_interleaved(runs: dict, device, rounds: int, round_time: float) -> dict:
    """Median seconds per call for every {name: (fn, x)}; the variants take turns, round after
    round, so that load from other processes hits them alike."""
    with torch.inference_mode():
        per_call = {name: run_timed(fn, x, device, 1) for name, (fn, x) in runs.items()}  # calibration
        iters = {name: max(1, int(round_time / max(t, 1e-6))) for name, t in per_call.items()}
        samples = {name: [] for name in runs}
        for _ in range(rounds):
            for name, (fn, x) in runs.items():
                samples[name].append(run_timed(fn, x, device, iters[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def variants(model: Darknet, device: torch.device, want_compile: bool):
    """(name, callable, memory format, extra warm-up runs); built lazily so failures are isolated."""
    cl = torch.channels_last

    def fused():
        return model.fuse()

    def fused_cl():
        return model.fuse().to(memory_format=cl)

    def autocast(dtype):
        def make():
            net = fused_cl()
            def run(x):
                with torch.autocast(device.type, dtype=dtype):
                    return net(x)
            return run
        return make

    yield "eager", lambda: model, torch.contiguous_format, 0
    yield "fused", fused, torch.contiguous_format, 0
    yield "fused+cl", fused_cl, cl, 0
    if want_compile:
        yield "compile", lambda: torch.compile(fused_cl()), cl, 2
    if device.type == "cuda":
        yield "bf16", autocast(torch.bfloat16), cl, 0
        yield "fp16", autocast(torch.float16), cl, 0


def main(args) -> None:
    device = cli.resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    wanted = {v for v in args.variants.split(",") if v}
    max_gflop = args.max_gflop if args.max_gflop is not None else (150.0 if device.type == "cpu" else float("inf"))
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({what}), torch {torch.__version__}, input {args.test_size}x{args.test_size}\n")
    rows = ["| network | batch | variant | ms / batch | images/s | GFLOP/s | vs eager | max abs diff |",
            "|---|---|---|---|---|---|---|---|"]
    for name in args.nets.split(","):
        torch.manual_seed(0)
        model = Darknet(ROOT / NETS[name]).to(device).eval()
        gflop = model.gflops(args.test_size, args.test_size)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            if batch * gflop > max_gflop:
                rows.append(f"| {name} | {batch} | skipped: {batch * gflop:.0f} GFLOP per batch > --max-gflop "
                            f"{max_gflop:g} | | | | | |")
                continue
            x = torch.rand(batch, model.channels, args.test_size, args.test_size, device=device)
            runs, outs = {}, {}
            for variant, make, fmt, extra in variants(model, device, args.compile):
                if wanted and variant != "eager" and variant not in wanted:
                    continue
                try:
                    fn, xv = make(), x.contiguous(memory_format=fmt)
                    with torch.inference_mode():
                        for _ in range(args.warmup + extra):
                            out = fn(xv)
                    runs[variant], outs[variant] = (fn, xv), out.float()
                except Exception as exc:  # e.g. torch.compile without a working compiler
                    rows.append(f"| {name} | {batch} | {variant} | failed: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:60]} | | | | |")
                    print(rows[-1], flush=True)
            seconds = time_interleaved(runs, device, args.rounds, args.round_time)
            base_ips = batch / seconds["eager"]
            for variant, sec in seconds.items():
                ips = batch / sec
                diff = (outs[variant] - outs["eager"]).abs().max().item()
                rows.append(f"| {name} | {batch} | {variant} | {1e3 * sec:.1f} | {ips:.1f} | {ips * gflop:.1f} | "
                            f"{ips / base_ips:.2f}x | {diff:.1e} |")
                print(rows[-1], flush=True)
            del runs, outs
            del x
        del model
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)), prog="bench_forward.py")
