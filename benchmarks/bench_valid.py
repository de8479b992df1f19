"""End-to-end evaluation speed: the eager network at batch 1 (the original) vs the fused network, batched.

`evaluation.evaluate` over a whole test split, everything included: image loading and resizing, the
forward pass, decoding, PnP (GT and prediction) and every metric. The baseline is the eager
network at batch 1 (what the original valid.py does); valid.py runs the BN-folded, channels-last
copy (design D57). Each network and batch size is run in the same process, in interleaved rounds
(median reported), so that load from other processes affects them alike. The table shows
images/s, the mean milliseconds per image of each stage ("load" is the loader's share: the total
minus the timed stages), the ratio of the forward time against the eager network at the same
batch size, and the ratio of images/s against the baseline, and checks that every variant gives
the same accuracies.

The data: a synthetic LINEMOD object generated into a temporary folder (all images in the test
split), or --datacfg. The model: --modelcfg with --weightfile, or by default the trial-3 cfg with
the main job's weights (backup/synthetic/obj00/model.weights) when present, else the VOC backbone
with a random head (its wild points make PnP slower: pass trained weights for real numbers).

Run: .venv/bin/python benchmarks/bench_valid.py [--images-per-object 48] [--batch-sizes 1,8,32] [--workers 0]
     [--test-size 416] [--rounds 3] [--device cpu|cuda] [--datacfg X.data --modelcfg C --weightfile W]
Defaults finish in about a minute on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import dataset
import evaluation
import model_loading
from darknet import Darknet
from errors import run_cli

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MODELCFG = "cfg/yolo-lite-trial3-pose.cfg"
MAIN_JOB_WEIGHTS = "backup/synthetic/obj00/model.weights"  # what `python train.py` writes
VOC_BACKBONE = "weights/tiny-yolov2-trial3-voc.weights"
STAGES = ("load", "to_device", "forward", "decode", "eval")


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0])
    cli.add_datacfg(p, why="a generated synthetic object")
    p.add_argument("--images-per-object", type=int, default=48,
                   help="images per object: test images of the generated object (default 48: a few batches of 8 "
                        "and 32)")
    cli.add_model(p, cfg_default=DEFAULT_MODELCFG, cfg_why="the main job's network", weights="weightfile",
                  weights_detail="full weights",
                  weights_why=f"{MAIN_JOB_WEIGHTS} if present, else VOC backbone + random head")
    p.add_argument("--batch-sizes", default="1,8,32",
                   help="batch sizes to time: a comma list, the first is the baseline (default 1,8,32: "
                        "valid.py's 1 and two larger)")
    cli.add_workers(p, default=0, why="loading in the scoring process, as valid.py")
    cli.add_sizes(p, test=True, test_default=416, test_why="the papers' size")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed repetitions: passes over the test set per batch size (default 3: the best counts)")
    cli.add_device(p)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads: CPU threads "
                                                                        "(default: the CPU count)")
    return p


def build_model(args, device):
    """(model, description): the requested weights, the main job's, or the VOC backbone + random head."""
    weights = args.weightfile or (MAIN_JOB_WEIGHTS if (ROOT / MAIN_JOB_WEIGHTS).is_file() else None)
    if weights:
        return model_loading.load_model(cli.find_path(args.modelcfg), cli.find_path(weights), device), weights
    torch.manual_seed(0)
    model = Darknet(cli.find_path(args.modelcfg))
    model.load_weights_until_last(ROOT / VOC_BACKBONE)
    return model.to(device).eval(), f"{VOC_BACKBONE} + random head"


def run_once(model, setup, test_set, batch, workers, device, fuse: bool = True) -> dict:
    """One evaluate() pass: images/s, ms per image of each stage, and the summary."""
    loader = dataset.make_test_loader(test_set, batch_size=batch, workers=workers)
    start = time.perf_counter()
    summary, _ = evaluation.evaluate(model, loader, setup, device, num_classes=model.num_classes,
                                     num_keypoints=model.num_keypoints, num_anchors=model.num_anchors, fuse=fuse)
    total = time.perf_counter() - start
    n = summary["images"]
    ms = {k: 1e3 * summary[f"time_{k}"] for k in STAGES if k != "load"}
    ms["load"] = 1e3 * total / n - sum(ms.values())
    return {"ips": n / total, "ms": ms, "summary": summary}


def main(args) -> None:
    device = cli.resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_valid_") as tmp:
        datacfg = args.datacfg
        if datacfg is None:
            from synthetic import generate

            t = time.perf_counter()
            generated = generate(tmp, objects=1, images_per_object=args.images_per_object, seed=0, test_fraction=1.0)
            datacfg = generated["data_cfgs"][0]
            print(f"generated {args.images_per_object} test images in {time.perf_counter() - t:.1f} s")
        setup = evaluation.load_eval_setup(datacfg)
        test_set = dataset.listDataset(setup.valid_list, shape=(args.test_size, args.test_size))
        model, described = build_model(args, device)
        what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
        print(f"device {device} ({what}), torch {torch.__version__}; {len(test_set)} test images of {setup.name} "
              f"({len(setup.vertices)} mesh vertices) at {args.test_size}x{args.test_size}; "
              f"{args.modelcfg}, {described}; "
              f"{args.workers} loader workers\n")
        variants = [(b, fuse) for b in batches for fuse in (False, True)]
        for b, fuse in variants:  # warm-up (allocator, caches, one-off kernel choices)
            run_once(model, setup, test_set, b, args.workers, device, fuse)
        runs = {v: [] for v in variants}
        for _ in range(args.rounds):
            for b, fuse in variants:
                runs[(b, fuse)].append(run_once(model, setup, test_set, b, args.workers, device, fuse))
    median = lambda v: sorted(runs[v], key=lambda r: r["ips"])[len(runs[v]) // 2]  # noqa: E731
    baseline = (batches[0], False)
    rows = ["| network | batch | images/s | load ms | forward ms | decode ms | PnP+metrics ms | forward vs eager "
            f"| images/s vs eager batch {batches[0]} | same accuracies |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = median(baseline)["ips"]
    ref = runs[baseline][0]["summary"]
    for b, fuse in variants:
        med, eager = median((b, fuse)), median((b, False))
        ms = med["ms"]
        fwd = ms["to_device"] + ms["forward"]
        fwd_eager = eager["ms"]["to_device"] + eager["ms"]["forward"]
        keys = ("acc_2d", "acc_add", "acc_5cm5deg", "acc_corner")
        same = all(r["summary"][k] == ref[k] for r in runs[(b, fuse)] for k in keys)
        rows.append(f"| {'fused (valid.py)' if fuse else 'eager'} | {b} | {med['ips']:.1f} | {ms['load']:.1f} | "
                    f"{fwd:.2f} | {ms['decode']:.2f} | {ms['eval']:.2f} | {fwd_eager / fwd:.2f}x | "
                    f"{med['ips'] / base:.2f}x | {'yes' if same else 'NO'} |")
    print("\n".join(rows))


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)), prog="bench_valid.py")
