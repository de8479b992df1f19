"""Region loss speed: vectorised `region_loss.RegionLoss` vs a per-cell Python-loop baseline.

Both implement the same algorithm (design §5.3, §5.4, §5.7): target building (ignore region,
responsible cells, tconf) plus the loss forward and backward. The baseline, `loop_region_loss`,
walks every image, object, anchor and cell in Python like a direct transcription of docs/design.md §5;
tests/test_region_loss.py also uses it as an independent reference.

Run: .venv/bin/python benchmarks/bench_loss.py [--rounds 20] [--batch-size 16]
Prints a table (ms per call) and the speed-up ratio; asserts first that both give the same loss.
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
from region_loss import RegionLoss

TH, SHARP, EPS = 80.0, 2.0, 1e-5  # design §5.2
IM_W, IM_H = 640.0, 480.0


def _conf(gt, pr, eps):
    """Mean exponential confidence of two flat [x0, y0, ...] lists (design §5.2), python floats."""
    total = 0.0
    for k in range(len(gt) // 2):
        d = math.hypot(IM_W * (pr[2 * k] - gt[2 * k]), IM_H * (pr[2 * k + 1] - gt[2 * k + 1]))
        if d < TH:
            total += (math.exp(SHARP * (1 - d / TH)) - 1) / (math.exp(SHARP) - 1 + eps)
    return total / (len(gt) // 2)


def _iou(aw, ah, gw, gh):
    cw, ch = min(aw, gw), min(ah, gh)
    if cw <= 0 or ch <= 0:
        return 0.0
    return cw * ch / (aw * ah + gw * gh - cw * ch)


def loop_region_loss(output, target, epoch, *, K=9, C=1, A=1, anchors=(), coord_scale=1.0, noobject_scale=1.0,
                     object_scale=5.0, class_scale=1.0, thresh=0.6, pretrain=15, repro_anchor_bug=False):
    """Per-cell reference: returns (loss tensor, dict of python stats). output (B, A*(2K+1+C), H, W)."""
    B, _, H, W = output.shape
    ch = 2 * K + 1 + C
    multi = C > 1 or A > 1
    o = output.detach().reshape(B, A, ch, H, W).tolist()
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))
    lab = target.reshape(B, -1, 2 * K + 3).tolist()

    def pred_pts(b, a, y, x):
        c = o[b][a]
        pts = []
        for k in range(K):
            px, py = c[2 * k][y][x], c[2 * k + 1][y][x]
            if k == 0:
                px, py = sig(px), sig(py)
            pts += [(px + x) / W, (py + y) / H]
        return pts

    conf_w = np.full((B, A, H, W), noobject_scale)
    coord = np.zeros((B, A, H, W))
    tx = np.zeros((B, A, K, H, W))
    ty = np.zeros((B, A, K, H, W))
    tconf = np.zeros((B, A, H, W))
    tcls = np.zeros((B, A, H, W), dtype=np.int64)
    n_gt = n_correct = 0
    for b in range(B):
        objs = []
        for row in lab[b]:
            if row[1] == 0:
                break
            objs.append(row)
        for a in range(A):
            for y in range(H):
                for x in range(W):
                    p = pred_pts(b, a, y, x)
                    best = max([_conf(r[1:1 + 2 * K], p, 0.0) for r in objs], default=0.0)
                    if best > thresh:
                        conf_w[b, a, y, x] = 0.0
        for row in objs:
            gx = [row[1 + 2 * k] * W for k in range(K)]
            gy = [row[2 + 2 * k] * H for k in range(K)]
            gi, gj = int(gx[0]), int(gy[0])
            n = 0
            if A > 1:
                best_iou, n = 0.0, -1
                for a in range(A):
                    iou = _iou(anchors[2 * a], anchors[2 * a + 1], row[2 * K + 1] * W, row[2 * K + 2] * H)
                    if iou > best_iou:
                        best_iou, n = iou, a
                if n == -1:
                    if repro_anchor_bug:
                        n = A - 1
                    else:
                        gap = [abs(anchors[2 * a] * anchors[2 * a + 1] - row[2 * K + 1] * W * row[2 * K + 2] * H)
                               for a in range(A)]
                        n = gap.index(min(gap))
            pb, pa = b, n
            if multi and repro_anchor_bug:
                pb, pa = (b - 1) % B, A - 1
            c = _conf(row[1:1 + 2 * K], pred_pts(pb, pa, gj, gi), EPS)
            coord[b, n, gj, gi] = 1.0
            conf_w[b, n, gj, gi] = object_scale
            for k in range(K):
                tx[b, n, k, gj, gi] = gx[k] - gi
                ty[b, n, k, gj, gi] = gy[k] - gj
            tconf[b, n, gj, gi] = c
            tcls[b, n, gj, gi] = int(row[0])
            n_gt += 1
            n_correct += c > 0.5
    # loss, term by term on the masked cells
    out = output.reshape(B, A, ch, H, W)
    dt, dev = output.dtype, output.device
    loss_x = output.new_zeros(())
    loss_y = output.new_zeros(())
    loss_cls = output.new_zeros(())
    for b, a, y, x in zip(*np.nonzero(coord)):
        v = out[b, a, :, y, x]
        for k in range(K):
            px = torch.sigmoid(v[2 * k]) if k == 0 else v[2 * k]
            py = torch.sigmoid(v[2 * k + 1]) if k == 0 else v[2 * k + 1]
            loss_x = loss_x + 0.5 * coord_scale * (px - float(tx[b, a, k, y, x])) ** 2
            loss_y = loss_y + 0.5 * coord_scale * (py - float(ty[b, a, k, y, x])) ** 2
        if C > 1:
            logits = v[2 * K + 1:]
            loss_cls = loss_cls + class_scale * (torch.logsumexp(logits, 0) - logits[tcls[b, a, y, x]])
    conf = torch.sigmoid(out[:, :, 2 * K])
    w = torch.as_tensor(conf_w, dtype=dt, device=dev)
    loss_conf = 0.5 * (w * (conf - torch.as_tensor(tconf, dtype=dt, device=dev)) ** 2).sum()
    loss = loss_x + loss_y + loss_cls + (loss_conf if epoch > pretrain else 0.0)
    stats = {"nGT": n_gt, "nCorrect": int(n_correct), **{k: v.item() for k, v in (
        ("loss_x", loss_x), ("loss_y", loss_y), ("loss_conf", loss_conf), ("loss_cls", loss_cls), ("total", loss))}}
    return loss, stats


def make_batch(B, H, W, K=9, C=1, A=1, n_obj=1, seed=0, planted=True):
    """Random output and labels; with `planted`, each GT cell gets near-GT predictions (recall path)."""
    g = torch.Generator().manual_seed(seed)
    ch = 2 * K + 1 + C
    out = torch.randn(B, A * ch, H, W, generator=g)
    target = torch.zeros(B, 50 * (2 * K + 3), dtype=torch.float32)
    rows = target.view(B, 50, 2 * K + 3)
    for b in range(B):
        for t in range(n_obj):
            c = torch.rand(2, generator=g) * 0.8 + 0.1
            pts = c + (torch.rand(K, 2, generator=g) - 0.5) * 0.3
            pts[0] = c
            rows[b, t, 0] = int(torch.randint(C, (1,), generator=g))
            rows[b, t, 1:1 + 2 * K] = pts.reshape(-1)
            rows[b, t, 2 * K + 1:] = pts.max(0).values - pts.min(0).values
            if planted:  # a near-perfect prediction at the centroid cell of anchor 0
                gx, gy = pts[:, 0] * W, pts[:, 1] * H
                gi, gj = int(gx[0]), int(gy[0])
                off = torch.stack([gx - gi, gy - gj], 1) + 0.01 * torch.randn(K, 2, generator=g)
                off[0] = torch.logit(off[0].clamp(1e-3, 1 - 1e-3))
                out[b, :2 * K, gj, gi] = off.reshape(-1)
    return out, target


def _time(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * min(ts)  # best of N: robust to other processes on a shared machine


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20,
                   help="timed repetitions: calls of the vectorised loss, the best counts (default 20: a call takes "
                        "milliseconds)")
    cli.add_batch_size(p, default=16, why="the originals' training batch")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    anchors = [1.4820, 2.2412, 2.0501, 3.1265, 2.3946, 4.6891, 3.1018, 3.9910, 3.4879, 5.8851]  # design §13
    cases = [("single 13x13", 13, 13, 1, 1, 1), ("single 19x19 (608 px)", 19, 19, 1, 1, 1),
             ("multi A5 C13 13x13, 3 obj", 13, 13, 5, 13, 3)]
    print(f"region loss, batch {args.batch_size}, epoch 16 (all terms), target building + forward + backward, "
          f"best of {args.rounds} (loop: {max(1, args.rounds // 4)}), {torch.get_num_threads()} threads")
    print(f"{'case':<28} {'loop ms':>10} {'vectorised ms':>14} {'speed-up':>9}")
    for name, H, W, A, C, n_obj in cases:
        out, target = make_batch(args.batch_size, H, W, C=C, A=A, n_obj=n_obj)
        loss_mod = RegionLoss(num_classes=C, anchors=anchors if A > 1 else [], num_anchors=A)
        kw = dict(C=C, A=A, anchors=anchors if A > 1 else ())

        def vec(out=out, loss_mod=loss_mod, target=target):
            o = out.clone().requires_grad_(True)
            loss, stats = loss_mod(o, target, 16)
            loss.backward()
            return stats

        def loop(out=out, target=target, kw=kw):
            o = out.clone().requires_grad_(True)
            loss, stats = loop_region_loss(o, target, 16, **kw)
            loss.backward()
            return stats

        s_vec, s_loop = vec(), loop()
        assert s_vec["nGT"] == s_loop["nGT"] and s_vec["nCorrect"] == s_loop["nCorrect"], (s_vec, s_loop)
        assert math.isclose(s_vec["total"], s_loop["total"], rel_tol=1e-5), (s_vec, s_loop)
        t_loop, t_vec = _time(loop, max(1, args.rounds // 4)), _time(vec, args.rounds)
        print(f"{name:<28} {t_loop:>10.1f} {t_vec:>14.2f} {t_loop / t_vec:>8.1f}x")


if __name__ == "__main__":
    run_cli(main, prog="bench_loss.py")
