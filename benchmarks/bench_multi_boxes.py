"""Multi-object box selection speed: vectorised `utils.get_multi_region_boxes` vs a per-cell loop.

Both implement design §4.2: every cell/anchor whose score beats conf_thresh is kept, and the
fallback box of the corresponding class comes from the running "det_conf and class probability
both increase" update. The baseline, `loop_multi_boxes`, walks rows, columns and anchors in
Python like a direct transcription of docs/design.md §4.2 (and like the original); tests/test_multi.py also
uses it as an independent reference.

Run: .venv/bin/python benchmarks/bench_multi_boxes.py [--rounds 5] [--batch-size 1]
Prints a table (ms per call) and the speed-up ratio; checks first that both give the same boxes.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from errors import run_cli
from utils import get_multi_region_boxes

K = 9
# the OCCLUSION network (design §4): 5 anchors, 13 classes, 13 x 13 grid at 416
A, C, GRID = 5, 13, 13


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def loop_multi_boxes(output: torch.Tensor, conf_thresh: float, C: int, A: int, wanted, only_objectness: int,
                     carry: bool) -> list[np.ndarray]:
    """The design §4.2 procedure cell by cell (rows, columns, anchors), in float64. -> B arrays (n_b, 2K+3)."""
    o = output.double().numpy()
    B, _, H, W = o.shape
    o = o.reshape(B, A, 2 * K + 1 + C, H, W)
    out, max_cls = [], -math.inf
    for b in range(B):
        max_conf, fallback, boxes = -math.inf, None, []
        if not carry:
            max_cls = -math.inf
        for cy in range(H):
            for cx in range(W):
                for a in range(A):
                    v = o[b, a, :, cy, cx]
                    pts = []
                    for k in range(K):
                        x, y = v[2 * k], v[2 * k + 1]
                        if k == 0:
                            x, y = _sigmoid(x), _sigmoid(y)
                        pts += [(x + cx) / W, (y + cy) / H]
                    det = _sigmoid(v[2 * K])
                    e = np.exp(v[2 * K + 1:] - v[2 * K + 1:].max())
                    p = e / e.sum()
                    cid = int(np.argmax(p))
                    score = det if only_objectness else det * p[cid]
                    if det > max_conf and p[wanted[b]] > max_cls:
                        max_conf, max_cls = det, p[wanted[b]]
                        fallback = pts + [det, p[wanted[b]], wanted[b]]
                    if score > conf_thresh:
                        boxes.append(pts + [det, p[cid], cid])
        if fallback is not None and not any(bx[-1] == wanted[b] for bx in boxes):
            boxes.append(fallback)
        out.append(np.array(boxes, dtype=np.float64).reshape(-1, 2 * K + 3))
    return out


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5,
                   help="timed repetitions: calls of the vectorised version, the best counts (default 5: the loop "
                        "is slow)")
    cli.add_batch_size(p, default=1, why="valid_multi.py's")
    return p


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    torch.manual_seed(0)
    output = torch.randn(args.batch_size, A * (2 * K + 1 + C), GRID, GRID) * 2
    wanted = [int(i) % C for i in range(args.batch_size)]
    rows = []
    for thresh in (0.05, 0.5):
        def fast(thresh=thresh):
            return get_multi_region_boxes(output, thresh, C, K, [], A, wanted, only_objectness=0, carry_class_max=False)

        def slow(thresh=thresh):
            return loop_multi_boxes(output, thresh, C, A, wanted, 0, False)

        for got, ref in zip(fast(), slow()):
            np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
        rows.append((thresh, len(fast()[0]), _time(slow, max(1, args.rounds // 5)), _time(fast, args.rounds)))
    print(f"get_multi_region_boxes, batch {args.batch_size}, {A} anchors x {GRID}x{GRID} cells, {C} classes "
          f"(ms per call)")
    print("| conf_thresh | boxes (image 0) | loop | vectorised | speed-up |")
    print("|---|---|---|---|---|")
    for thresh, n, slow_ms, fast_ms in rows:
        print(f"| {thresh} | {n} | {slow_ms:.1f} | {fast_ms:.2f} | {slow_ms / fast_ms:.0f}x |")


if __name__ == "__main__":
    run_cli(main, prog="bench_multi_boxes.py")
