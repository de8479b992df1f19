"""The region loss (design §5) and its knowledge-distillation variant (design §8.3).

One module serves both models:
    single object: A = 1 anchor, C = 1 class, 20 output channels, no class loss;
    multi object:  A anchors (grid units, design §5.7), C > 1 classes, a class cross-entropy.

Layout (design §4): the raw output (B, A*(2K+1+C), H, W) is viewed as (B, A, 2K+1+C, H, W) with
channels [x0, y0, x1, y1, ..., x8, y8, conf, cls_0, ...]. Targets are built in the same
(B, A, ..., H, W) layout so that every loss term is a masked sum over whole tensors.

Reading order: `build_targets` (GT -> masks and targets, design §5.3/§5.7; its steps are the
functions just above it), `teacher_targets`
(design §8.3), `loss_terms` (§5.4), then `RegionLoss`, which glues them together.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import (
    NUM_KEYPOINTS, check_head_channels, corner_confidence, corner_confidences, decode_output, head_channel_problem,
)

SIL_THRESH = 0.6  # design §5.3: ignore cells whose best corner confidence vs any GT is above this
RECALL_THRESH = 0.5  # design §5.3 / §13: a GT counts as "correct" when its tconf > 0.5
PROPOSAL_THRESH = 0.25  # design §5.8: proposals = cells with sigmoid confidence > 0.25
PRETRAIN_NUM_EPOCHS = 15  # design §5.5: confidence term only when epoch > 15
MS_SCALES = {"coord_scale": 1.0, "noobject_scale": 1.0, "object_scale": 5.0, "class_scale": 1.0}  # design §5.6
KD_MODES = (None, "fork", "fixed")  # design §8.3 / D10
ANCHOR_RULES = ("size", "class")  # design §5.7 (the original's) and D65
COORD_LOSSES = ("mse", "l1")  # design §5.4 (the originals' squared error) and D55 (absolute error, fast recipe)


# --------------------------------------------------------------------------------------------
# Target building (design §5.3, §5.7)
# --------------------------------------------------------------------------------------------

@dataclass
class Targets:
    """What `build_targets` returns. Shapes use B batch, A anchors, K keypoints, H x W grid.

    coord_mask: (B, A, H, W) float, 1 at responsible cells.
    conf_mask:  (B, A, H, W) float confidence weights (before the original's sqrt):
                noobject_scale, 0 in the ignore region, object_scale at responsible cells.
    cls_mask:   (B, A, H, W) float, 1 at responsible cells (equal to coord_mask).
    tx, ty:     (B, A, K, H, W) keypoint targets in grid units relative to the responsible cell.
    tconf:      (B, A, H, W) confidence target (rescore), 0 away from responsible cells.
    tcls:       (B, A, H, W) long class id.
    nGT, nCorrect, nProposals: ints (recall statistics; proposals = cells with sigmoid conf > 0.25).
    assigned:   one entry per GT object in processing order, tensors of shape (N,):
                b, slot, anchor (the anchor whose cell is trained), gj, gi, pred_row (the flat
                row b*A*H*W + a*H*W + gj*W + gi of the prediction that gave tconf), tconf.
    """
    coord_mask: torch.Tensor
    conf_mask: torch.Tensor
    cls_mask: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    tconf: torch.Tensor
    tcls: torch.Tensor
    point_mask: torch.Tensor | None = None  # (B, A, K, H, W) per-keypoint coordinate weights; None: coord_mask
    nGT: int = 0
    nCorrect: int = 0
    nProposals: int = 0
    assigned: dict = field(default_factory=dict)


def parse_target(target: torch.Tensor, num_keypoints: int = NUM_KEYPOINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the loader's padded labels into rows and a validity mask.

    target: (B, S*21) (or (B, S, 21)) normalised label rows [cls, x0, y0, ..., x8, y8, xrange, yrange],
    zero padded. Returns rows (B, S, 2K+3) and valid (B, S) bool: a slot is an object while no
    earlier slot of the image (nor itself) has x0 == 0 (design §3.1, scanning stops there).
    """
    width = 2 * num_keypoints + 3
    if target.dim() == 2 and target.shape[1] % width == 0:
        rows = target.reshape(target.shape[0], -1, width)
    elif target.dim() == 3 and target.shape[2] == width:
        rows = target
    else:
        raise ValueError(f"target has shape {tuple(target.shape)}; expected (B, S*{width}) label rows "
                         f"of {width} numbers [cls, 2K={2 * num_keypoints} coordinates, xrange, yrange]")
    valid = torch.cumprod((rows[:, :, 1] != 0).to(torch.int8), dim=1).bool()
    return rows, valid


def anchor_ious(gw: torch.Tensor, gh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU of centre-aligned boxes (design §5.7). gw, gh: (N,) grid units; anchors: (A, 2). -> (N, A)."""
    aw, ah = anchors[:, 0][None], anchors[:, 1][None]
    cw = torch.minimum(aw, gw[:, None])
    ch = torch.minimum(ah, gh[:, None])
    inter = cw * ch
    union = aw * ah + (gw * gh)[:, None] - inter
    ok = (cw > 0) & (ch > 0)
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(inter))


def choose_anchors(gw: torch.Tensor, gh: torch.Tensor, anchors: torch.Tensor,
                   repro_anchor_bug: bool = False) -> torch.Tensor:
    """Best anchor per GT (design §5.7): the first strictly largest IoU. -> (N,) long in [0, A).

    When every IoU is 0 (a GT with zero width or height, e.g. labels without x/y range):
      repro_anchor_bug=True: the original leaves the index at -1, i.e. the last anchor A-1;
      fixed (default): the anchor whose area w*h is closest to the GT's (first on ties), which
      is the smallest anchor for a degenerate zero-area GT, instead of the largest.
    """
    iou = anchor_ious(gw, gh, anchors)
    best = iou.argmax(dim=1)  # first maximum
    if repro_anchor_bug:
        fallback = torch.full_like(best, anchors.shape[0] - 1)
    else:
        area_gap = (anchors[:, 0] * anchors[:, 1])[None] - (gw * gh)[:, None]
        fallback = area_gap.abs().argmin(dim=1)
    return torch.where(iou.max(dim=1).values > 0, best, fallback)


def decode_for_targets(output: torch.Tensor, num_keypoints: int, num_classes: int, num_anchors: int):
    """The detached predictions the targets are built from: points (B, A, H, W, 2K) normalised and
    confidence (B, A, H, W). Only keypoints and confidence are decoded: one class channel is kept so
    that `decode_output` skips a softmax over C."""
    B, _, H, W = output.shape
    A, K = num_anchors, num_keypoints
    check_head_channels(output.shape[1], A, K, num_classes)
    per_anchor = output.shape[1] // A
    kept = output.detach().reshape(B, A, per_anchor, H, W)[:, :, :2 * K + 2].reshape(B, A * (2 * K + 2), H, W)
    points, conf, _ = decode_output(kept, K, 1, A)
    return points, conf


def best_gt_confidence(pred: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, num_keypoints: int) -> torch.Tensor:
    """(B, A*H*W) the best confidence (eps 0) of every cell and anchor's points `pred` (B, A*H*W, 2K)
    against any GT of its image, the ignore region's test (design §5.3). A loop over label slots:
    each step handles that slot of every image (a running maximum)."""
    best = torch.zeros(pred.shape[:2], dtype=pred.dtype, device=pred.device)
    n_slots = int(valid.nonzero(as_tuple=True)[1].max()) + 1 if valid.any() else 0
    for t in range(n_slots):
        gt = rows[:, t, None, 1:1 + 2 * num_keypoints].to(pred.dtype).expand_as(pred)  # utils takes the shape from gt
        best = torch.where(valid[:, t, None], torch.maximum(best, corner_confidences(gt, pred)), best)
    return best


def responsible_cells(row: torch.Tensor, b: torch.Tensor, slot: torch.Tensor, W: int, H: int, num_keypoints: int):
    """The cell of every object (its centroid's, design §5.3): (gx, gy) (N, K) its points in grid units
    (the target's dtype), (gi, gj) (N,) the cell, by int() truncation. ValueError naming the image
    and slot of a centroid outside the grid."""
    gxy = row[:, 1:1 + 2 * num_keypoints].reshape(-1, num_keypoints, 2)
    gx, gy = gxy[..., 0] * W, gxy[..., 1] * H
    gi, gj = gx[:, 0].trunc().long(), gy[:, 0].trunc().long()
    bad = (gi < 0) | (gi >= W) | (gj < 0) | (gj >= H)
    if bad.any():
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"target image {int(b[k])} slot {int(slot[k])}: centroid ({float(gxy[k, 0, 0]):.6f}, "
                         f"{float(gxy[k, 0, 1]):.6f}) falls in cell ({int(gi[k])}, {int(gj[k])}), outside the "
                         f"{W}x{H} grid; expected x0, y0 in [0, 1)")
    return gx, gy, gi, gj


def object_anchors(row: torch.Tensor, num_anchors: int, anchors, W: int, H: int, num_keypoints: int,
                   anchor_rule: str = "size", repro_anchor_bug: bool = False) -> torch.Tensor:
    """(N,) long: the anchor of every object, row (N, 2K+3). One anchor: 0. 'size': the best anchor
    by box IoU (design §5.7, `choose_anchors`); 'class': class id mod A (D65)."""
    A, K = num_anchors, num_keypoints
    if A == 1:
        return torch.zeros(row.shape[0], dtype=torch.long, device=row.device)
    if len(anchors) < 2 * A:
        raise ValueError(f"{A} anchors need {2 * A} anchor values (w, h pairs); got {len(anchors)}")
    step = len(anchors) // A
    anchor_wh = torch.tensor([[anchors[step * a], anchors[step * a + 1]] for a in range(A)],
                             dtype=torch.float64, device=row.device)
    if anchor_rule == "class":
        return row[:, 0].long() % A
    if anchor_rule == "size":
        return choose_anchors(row[:, 2 * K + 1].double() * W, row[:, 2 * K + 2].double() * H, anchor_wh,
                              repro_anchor_bug)
    raise ValueError(f"anchor rule {anchor_rule!r}; expected one of {ANCHOR_RULES}")


def last_writer(flat: torch.Tensor, size: int) -> torch.Tensor:
    """(N,) bool: the objects whose trained row `flat` (N,) no later object shares: where objects
    share (b, n, gj, gi), the later slot wins (design §5.3). size: the number of rows, B*A*H*W."""
    order = torch.arange(flat.numel(), device=flat.device)
    last = torch.full((size,), -1, dtype=torch.long, device=flat.device).scatter_reduce(
        0, flat, order, reduce="amax")
    return last[flat] == order


@torch.no_grad()
def build_targets(output: torch.Tensor, target: torch.Tensor, *, num_keypoints: int = NUM_KEYPOINTS,
                  num_classes: int = 1, num_anchors: int = 1, anchors=(), noobject_scale: float = 1.0,
                  object_scale: float = 5.0, sil_thresh: float = SIL_THRESH, multi: bool | None = None,
                  repro_anchor_bug: bool = False, anchor_rule: str = "size") -> Targets:
    """GT masks and targets from the detached current predictions (design §5.3, §5.7).

    output: (B, A*(2K+1+C), H, W) raw network output (only used detached, through
    `utils.decode_output`). target: (B, S*21) normalised, zero-padded label rows.
    anchors: flat list (w0, h0, w1, h1, ...) in grid units (only read when A > 1).
    multi: whether this is the multi-object loss (default: C > 1 or A > 1); only then does
    `repro_anchor_bug` apply (tconf taken from row b*A*H*W - H*W + gj*W + gi, wrapping for b = 0).
    anchor_rule: 'size', the original's best anchor by box IoU (design §5.7); 'class', anchor = class
    id mod A, so that each anchor's output channels regress one object's corners (ours, D65).
    Steps: the ignore region (`best_gt_confidence`), every object's cell and anchor
    (`responsible_cells`, `object_anchors`) and its confidence target, then the writes (`last_writer`).
    """
    B, _, H, W = output.shape
    A, K = num_anchors, num_keypoints
    multi = (num_classes > 1 or num_anchors > 1) if multi is None else multi
    points, conf_all = decode_for_targets(output, K, num_classes, A)  # (B, A, H, W, 2K), (B, A, H, W)
    dtype, device = points.dtype, points.device
    pred = points.reshape(B, A * H * W, 2 * K)
    rows, valid = parse_target(target.to(device), K)
    if rows.shape[0] != B:
        raise ValueError(f"target has {rows.shape[0]} images but the output has {B}")
    b, slot = valid.nonzero(as_tuple=True)  # every object, ordered by image then slot
    grid = (B, A, H, W)

    # 1. ignore region: cells whose points already match a GT of their image are not pushed to 0
    conf_mask = torch.full(grid, float(noobject_scale), dtype=dtype, device=device)
    conf_mask[(best_gt_confidence(pred, rows, valid, K) > sil_thresh).reshape(grid)] = 0.0

    # 2. responsible cell, anchor and tconf of every object
    row = rows[b, slot]  # (N, 2K+3)
    gx, gy, gi, gj = responsible_cells(row, b, slot, W, H, K)
    n = object_anchors(row, A, anchors, W, H, K, anchor_rule, repro_anchor_bug)
    cell = gj * W + gi
    flat = b * A * H * W + n * H * W + cell  # the trained row of (B*A*H*W)
    pred_row = flat
    if multi and repro_anchor_bug:  # design §5.7: prediction fetched with anchor index -1
        pred_row = (b * A * H * W - H * W + cell) % (B * A * H * W)
    conf = pred.new_zeros(0)  # (utils' confidence cannot reshape an empty batch)
    if b.numel():
        conf = corner_confidence(row[:, 1:1 + 2 * K].to(dtype), pred.reshape(-1, 2 * K)[pred_row])  # eps 1e-5

    # 3. write them; where objects share (b, n, gj, gi) the later slot wins (design §5.3)
    w = last_writer(flat, B * A * H * W)
    idx = (b[w], n[w], gj[w], gi[w])
    coord_mask = torch.zeros(grid, dtype=dtype, device=device)
    coord_mask[idx] = 1.0
    conf_mask[idx] = float(object_scale)
    tx = torch.zeros(B, A, K, H, W, dtype=dtype, device=device)
    ty = torch.zeros_like(tx)
    tx[idx[0], idx[1], :, idx[2], idx[3]] = (gx[w] - gi[w, None].to(gx.dtype)).to(dtype)
    ty[idx[0], idx[1], :, idx[2], idx[3]] = (gy[w] - gj[w, None].to(gy.dtype)).to(dtype)
    tconf = torch.zeros(grid, dtype=dtype, device=device)
    tconf[idx] = conf[w]
    tcls = torch.zeros(grid, dtype=torch.long, device=device)
    tcls[idx] = row[w, 0].long()

    assigned = {"b": b, "slot": slot, "anchor": n, "gj": gj, "gi": gi, "pred_row": pred_row, "tconf": conf}
    n_correct = int((conf > RECALL_THRESH).sum())
    n_proposals = int((conf_all > PROPOSAL_THRESH).sum())
    return Targets(coord_mask, conf_mask, coord_mask.clone(), tx, ty, tconf, tcls, None, int(b.numel()),
                   n_correct, n_proposals, assigned)


# --------------------------------------------------------------------------------------------
# Distillation targets (design §8.3)
# --------------------------------------------------------------------------------------------

def check_teacher(student_output: torch.Tensor, teacher_output: torch.Tensor, num_keypoints: int = NUM_KEYPOINTS,
                  num_classes: int = 1, num_anchors: int = 1) -> None:
    """Refuse a teacher output that cannot supply targets for this student (ValueError).

    Both are (B, A*(2K+1+C), H, W): batch, grid and channels must all agree (the fork assumed
    it; the teacher and student share output stride 32, design §8.2). Call once before training
    with dummy inputs, and it runs again on every distilled forward.
    """
    s, t = tuple(student_output.shape), tuple(teacher_output.shape)
    if len(t) != 4:
        raise ValueError(f"teacher output has shape {t}; expected 4-D (B, C, H, W) like the student's {s}")
    problems = [head_channel_problem(s[1], num_anchors, num_keypoints, num_classes, "student")]
    if t[0] != s[0]:
        problems.append(f"batch {t[0]} vs student {s[0]}")
    if t[2:] != s[2:]:
        problems.append(f"grid {t[2]}x{t[3]} (HxW) vs student {s[2]}x{s[3]}")
    problems.append(head_channel_problem(t[1], num_anchors, num_keypoints, num_classes, "teacher"))
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("teacher output does not match the student: " + "; ".join(problems))


def teacher_targets(teacher_output: torch.Tensor, mode: str, num_keypoints: int = NUM_KEYPOINTS,
                    num_classes: int = 1, num_anchors: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coordinate and confidence targets from the teacher's raw output (design §8.3).

    teacher_output: (B, A*(2K+1+C), H, W) raw, detached here. Returns tx, ty (B, A, K, H, W)
    in grid units relative to each cell and tconf (B, A, H, W) = sigmoid(T_2K) at every cell.
    mode 'fixed': tx_i = T_2i, ty_i = T_2i+1 (sigmoid for i = 0).
    mode 'fork':  the fork's channel-index bug, tx_i = T_(i+1), ty_i = T_(i+2) for i >= 1
                  (pairs (T2,T3), (T3,T4), ..., (T9,T10) for K = 9).
    """
    B, _, H, W = teacher_output.shape
    K = num_keypoints
    T = teacher_output.detach().reshape(B, num_anchors, 2 * K + 1 + num_classes, H, W)
    i = torch.arange(1, K, device=T.device)
    if mode == "fixed":
        xi, yi = 2 * i, 2 * i + 1
    elif mode == "fork":
        xi, yi = i + 1, i + 2
    else:
        raise ValueError(f"kd_mode {mode!r}; expected one of {KD_MODES}")
    tx = torch.cat([torch.sigmoid(T[:, :, 0:1]), T[:, :, xi]], dim=2)
    ty = torch.cat([torch.sigmoid(T[:, :, 1:2]), T[:, :, yi]], dim=2)
    return tx, ty, torch.sigmoid(T[:, :, 2 * K])


def blend(gt: torch.Tensor, teacher: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * gt + alpha * teacher, elementwise (design §8.3): the one distillation target rule."""
    return (1.0 - alpha) * gt + alpha * teacher


def blend_targets(targets: Targets, teacher: tuple, alpha: float) -> Targets:
    """Replace coordinate targets and tconf by `blend`(GT, teacher, alpha) (design §8.3).

    Masks and statistics are kept from the GT. alpha = 1 is the fork (teacher only);
    alpha = 0 is the plain GT loss.
    """
    tx, ty, tconf = (t.to(targets.tx.dtype) for t in teacher)
    return replace(targets, tx=blend(targets.tx, tx, alpha), ty=blend(targets.ty, ty, alpha),
                   tconf=blend(targets.tconf, tconf, alpha))


def floor_confidence(targets: Targets, floor: float) -> Targets:
    """Targets whose responsible-cell confidence is floor + (1 - floor) * tconf (other cells unchanged).

    The rescore target tconf is 0 while the predicted points are more than 80 px off, so early in
    training the responsible cell is taught the same confidence as the background and the most
    confident cell is arbitrary. With a floor it is always above every background cell's target.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"confidence floor must be in [0, 1], found {floor}")
    tconf = torch.where(targets.coord_mask > 0, floor + (1.0 - floor) * targets.tconf, targets.tconf)
    return replace(targets, tconf=tconf)


NEIGHBOUR_TARGETS = ("gt", "teacher")  # what the neighbour cells regress under distillation (D66)
NEIGHBOURS = {4: ((-1, 0), (1, 0), (0, -1), (0, 1)),
              8: ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1))}


def add_neighbour_cells(targets: Targets, target: torch.Tensor, noobject_scale: float,
                        num_keypoints: int = NUM_KEYPOINTS, neighbours: int = 4,
                        teacher: tuple | None = None, alpha: float = 1.0) -> Targets:
    """Targets where the 4 (or 8) cells next to each responsible cell also regress the box corners.

    A neighbour cell (gi +- 1, gj) or (gi, gj +- 1) (and, with 8, the diagonal ones) inside the
    grid, at the object's own anchor (`targets.assigned`; the only one in the single-object loss),
    and not itself responsible gets the corner targets relative to itself (k = 1..K-1, raw
    offsets, any value is reachable) but no centroid target (its sigmoid cannot leave its own
    cell), no class target, and keeps a background confidence target (0, weight
    `noobject_scale`, never ignored), so that the most confident cell stays the centroid's. Four
    times more corner gradient per image: the fast recipe's main speed-up (design §7.6).

    Under distillation the neighbours regress the ground truth unless `teacher` (tx, ty of
    `teacher_targets`, (B, A, K, H, W)) is given: then `blend`(GT, the teacher's corners at that
    neighbour cell, alpha), as the responsible cell's (D66).
    """
    B, A, H, W = targets.coord_mask.shape
    K = num_keypoints
    if neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours must be one of {sorted(NEIGHBOURS)}, found {neighbours}")
    rows, valid = parse_target(target.to(targets.tx.device), K)
    b, slot = valid.nonzero(as_tuple=True)  # the order of build_targets' `assigned`
    anchor = targets.assigned.get("anchor") if targets.assigned else None
    if anchor is None or anchor.numel() != b.numel():
        if A != 1:
            raise ValueError("neighbour cells of a multi-anchor loss need the anchors of build_targets")
        anchor = torch.zeros_like(b)
    point = targets.coord_mask[:, :, None].expand(B, A, K, H, W).clone()
    tx, ty, conf_mask = targets.tx.clone(), targets.ty.clone(), targets.conf_mask.clone()
    if b.numel():
        gxy = rows[b, slot, 1:1 + 2 * K].reshape(-1, K, 2)
        gx, gy = gxy[..., 0] * W, gxy[..., 1] * H
        gi, gj = gx[:, 0].trunc().long(), gy[:, 0].trunc().long()
        n = anchor.to(b.device).long()
        for di, dj in NEIGHBOURS[neighbours]:
            ni, nj = gi + di, gj + dj
            ok = (ni >= 0) & (ni < W) & (nj >= 0) & (nj < H)
            ok &= targets.coord_mask[b.clamp(max=B - 1), n, nj.clamp(0, H - 1), ni.clamp(0, W - 1)] == 0
            if not ok.any():
                continue
            bb, aa, ii, jj = b[ok], n[ok], ni[ok], nj[ok]
            point[bb, aa, :, jj, ii] = 1.0
            point[bb, aa, 0, jj, ii] = 0.0  # no centroid target
            x = (gx[ok] - ii[:, None].to(gx.dtype)).to(tx.dtype)
            y = (gy[ok] - jj[:, None].to(gy.dtype)).to(ty.dtype)
            if teacher is not None:
                x = blend(x, teacher[0][bb, aa, :, jj, ii].to(tx.dtype), alpha)
                y = blend(y, teacher[1][bb, aa, :, jj, ii].to(ty.dtype), alpha)
            tx[bb, aa, :, jj, ii] = x
            ty[bb, aa, :, jj, ii] = y
            conf_mask[bb, aa, jj, ii] = float(noobject_scale)  # never ignored: a background cell
    return replace(targets, point_mask=point, tx=tx, ty=ty, conf_mask=conf_mask)


# --------------------------------------------------------------------------------------------
# Loss terms (design §5.4)
# --------------------------------------------------------------------------------------------

def loss_terms(output: torch.Tensor, targets: Targets, *, num_keypoints: int = NUM_KEYPOINTS,
               num_classes: int = 1, num_anchors: int = 1, coord_scale: float = 1.0,
               class_scale: float = 1.0, with_conf: bool = True, class_loss: bool | None = None,
               coord_loss: str = "mse"):
    """The loss summed over the batch (design §5.4) -> (total 0-dim tensor, terms dict of 0-dim tensors).

    output: (B, A*(2K+1+C), H, W) raw; targets as built by `build_targets` (no gradient).
    loss_x = coord_scale/2 * sum coord_mask * (x_hat - tx)^2 over the K keypoints, with
    x_hat_0 = sigmoid(o_0) and x_hat_i = o_2i raw; loss_y likewise; loss_conf = 1/2 * sum
    conf_mask * (sigmoid(o_2K) - tconf)^2; loss_cls = class_scale * sum cross-entropy at
    cls_mask cells (only when class_loss, default C > 1; otherwise 0).
    coord_loss 'l1' (D55) replaces the coordinates' squared error by coord_scale * |x_hat - tx|:
    its gradient does not fade as the error shrinks below a cell, where the 5 px metric lives.
    total = loss_x + loss_y + loss_cls (+ loss_conf when with_conf). Only `total` carries a
    gradient: the squared errors are one weighted elementwise expression over the whole output
    (slicing per term would make autograd allocate a full-size gradient per slice); the other
    terms are read back from its detached value.
    """
    B, _, H, W = output.shape
    K, C, A = num_keypoints, num_classes, num_anchors
    o = output.reshape(B, A, 2 * K + 1 + C, H, W)
    dtype = o.dtype
    with torch.no_grad():
        zeros_c = targets.tconf.new_zeros(B, A, C, H, W)
        txy = torch.stack([targets.tx, targets.ty], dim=3).reshape(B, A, 2 * K, H, W)
        t_all = torch.cat([txy, targets.tconf[:, :, None], zeros_c], dim=2).to(dtype)
        if targets.point_mask is None:
            w_xy = (0.5 * coord_scale * targets.coord_mask)[:, :, None].expand(B, A, 2 * K, H, W)
        else:  # one weight per keypoint, shared by its x and y
            w_xy = (0.5 * coord_scale * targets.point_mask).repeat_interleave(2, dim=2)
        w_conf = (0.5 * targets.conf_mask)[:, :, None]
        w_all = torch.cat([w_xy, w_conf * float(with_conf), zeros_c], dim=2).to(dtype)
    pred = torch.cat([torch.sigmoid(o[:, :, :2]), o[:, :, 2:2 * K], torch.sigmoid(o[:, :, 2 * K:2 * K + 1]),
                      o[:, :, 2 * K + 1:]], dim=2)  # design §4: sigmoid on x0, y0 and the confidence only
    # sqrt(weight) inside the square, as the original: a huge raw value under a zero weight gives 0, not 0*inf
    sq = (w_all.sqrt() * (pred - t_all)) ** 2  # (B, A, 2K+1+C, H, W)
    if coord_loss == "l1":
        d = pred[:, :, :2 * K] - t_all[:, :, :2 * K]
        w = 2.0 * w_all[:, :, :2 * K]  # coord_scale * mask
        ad = torch.where(w > 0, w * d.abs(), torch.zeros_like(d))
        sq = torch.cat([ad, sq[:, :, 2 * K:]], dim=2)
    elif coord_loss != "mse":
        raise ValueError(f"unknown coordinate loss {coord_loss!r}; expected one of {COORD_LOSSES}")
    total = sq.sum()
    with torch.no_grad():
        e = sq.detach()
        loss_x, loss_y = e[:, :, 0:2 * K:2].sum(), e[:, :, 1:2 * K:2].sum()
        conf = pred.detach()[:, :, 2 * K]
        loss_conf = (0.5 * targets.conf_mask.to(dtype) * (conf - targets.tconf.to(dtype)) ** 2).sum()
    if class_loss is None:
        class_loss = C > 1
    if class_loss:
        sel = targets.cls_mask.bool()
        logits = o.permute(0, 1, 3, 4, 2)[sel][:, 2 * K + 1:]  # (N, C), gathers N cells only
        loss_cls = class_scale * F.cross_entropy(logits, targets.tcls[sel], reduction="sum")
        total = total + loss_cls
    else:
        loss_cls = output.new_zeros(())
    terms = {"loss_x": loss_x, "loss_y": loss_y, "loss_conf": loss_conf, "loss_cls": loss_cls.detach()}
    return total, terms


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------

class RegionLoss(nn.Module):
    """Region loss for the single- (A = 1, C = 1) and multi-object (A > 1 and/or C > 1) models.

    Scales are attributes (MS defaults, design §5.6): coord_scale 1, noobject_scale 1,
    object_scale 5, class_scale 1, thresh 0.6. Other attributes:
      repro_anchor_bug: reproduce the multi-object wrong-anchor tconf row and the -1 best anchor
                        when every IoU is 0 (design §5.7, D22); off = fixed.
      kd_mode: None | 'fork' | 'fixed' distillation targets (design §8.3, D10);
      kd_alpha: blend (1 - kd_alpha) * GT + kd_alpha * teacher; 1 = the fork.
    forward(output, target, epoch, teacher_output=None) -> (loss, stats).
    """

    def __init__(self, num_keypoints: int = NUM_KEYPOINTS, num_classes: int = 1, anchors=(), num_anchors: int = 1,
                 pretrain_num_epochs: int = PRETRAIN_NUM_EPOCHS):
        super().__init__()
        self.num_keypoints = int(num_keypoints)
        self.num_classes = int(num_classes)
        self.anchors = [float(a) for a in anchors]
        self.num_anchors = int(num_anchors)
        self.anchor_step = len(self.anchors) // self.num_anchors if self.num_anchors else 0
        self.pretrain_num_epochs = pretrain_num_epochs
        self.coord_scale = MS_SCALES["coord_scale"]
        self.noobject_scale = MS_SCALES["noobject_scale"]
        self.object_scale = MS_SCALES["object_scale"]
        self.class_scale = MS_SCALES["class_scale"]
        self.thresh = SIL_THRESH
        self.repro_anchor_bug = False
        self.anchor_rule = "size"  # 'class': anchor = class id mod A (D65)
        self.kd_mode = None
        self.kd_alpha = 1.0
        # the fast recipe (train.py --recipe fast); both off reproduces the original
        self.conf_floor = 0.0  # responsible-cell tconf = floor + (1 - floor) * rescore: never collapses to 0
        self.batch_mean = False  # divide the summed loss by the batch size
        self.neighbour_cells = 0  # 4 or 8: the cells next to the responsible one also regress the corners
        self.neighbour_conf_scale = None  # their background confidence weight (None: noobject_scale)
        self.neighbour_target = "gt"  # under distillation: 'gt' or 'teacher' (the blend, as the responsible cell; D66)
        self.coord_loss = "mse"  # 'l1' (D55): absolute instead of squared coordinate error
        if self.num_anchors > 1 and len(self.anchors) < 2 * self.num_anchors:
            raise ValueError(f"RegionLoss: {self.num_anchors} anchors need {2 * self.num_anchors} anchor "
                             f"values (w, h pairs); got {len(self.anchors)}")

    @classmethod
    def from_region(cls, region: dict, num_keypoints: int = NUM_KEYPOINTS, scales: str = "cfg",
                    pretrain_num_epochs: int = PRETRAIN_NUM_EPOCHS) -> RegionLoss:
        """Build from the model's `[region]` dict (keys anchors, num_anchors, anchor_step,
        num_classes, object_scale, noobject_scale, class_scale, coord_scale, thresh).

        scales='cfg' takes the loss scales from the dict (the fork, noobject 0.1); 'ms' keeps the
        MS defaults (design §5.6, D13). thresh is always 0.6: the cfg value is never read.
        """
        if scales not in ("cfg", "ms"):
            raise ValueError(f"scales {scales!r}; expected 'cfg' or 'ms'")
        loss = cls(num_keypoints, int(region["num_classes"]), list(region.get("anchors", [])),
                   int(region["num_anchors"]), pretrain_num_epochs)
        if scales == "cfg":
            for key in ("coord_scale", "noobject_scale", "object_scale", "class_scale"):
                setattr(loss, key, float(region[key]))
        return loss

    @property
    def multi(self) -> bool:
        return self.num_classes > 1 or self.num_anchors > 1

    def extra_repr(self) -> str:
        return (f"K={self.num_keypoints}, C={self.num_classes}, A={self.num_anchors}, coord={self.coord_scale}, "
                f"noobj={self.noobject_scale}, obj={self.object_scale}, cls={self.class_scale}, "
                f"thresh={self.thresh}, pretrain={self.pretrain_num_epochs}, kd={self.kd_mode}/{self.kd_alpha}")

    def check_teacher(self, student_output: torch.Tensor, teacher_output: torch.Tensor) -> None:
        """See the module-level `check_teacher`."""
        check_teacher(student_output, teacher_output, self.num_keypoints, self.num_classes, self.num_anchors)

    def build_targets(self, output: torch.Tensor, target: torch.Tensor) -> Targets:
        return build_targets(output, target, num_keypoints=self.num_keypoints, num_classes=self.num_classes,
                             num_anchors=self.num_anchors, anchors=self.anchors,
                             noobject_scale=self.noobject_scale, object_scale=self.object_scale,
                             sil_thresh=self.thresh, multi=self.multi, repro_anchor_bug=self.repro_anchor_bug,
                             anchor_rule=self.anchor_rule)

    def make_targets(self, output: torch.Tensor, target: torch.Tensor, teacher_output=None) -> Targets:
        """The targets the loss compares `output` with: build_targets, then the teacher's blend
        (distillation), the confidence floor and the neighbour cells (the fast recipe), in that order."""
        if teacher_output is not None and self.kd_mode is None:
            raise ValueError("a teacher output was given but kd_mode is None; set kd_mode to 'fork' or 'fixed'")
        if self.kd_mode not in KD_MODES:
            raise ValueError(f"kd_mode {self.kd_mode!r}; expected one of {KD_MODES}")
        if self.neighbour_target not in NEIGHBOUR_TARGETS:
            raise ValueError(f"neighbour_target {self.neighbour_target!r}; expected one of {NEIGHBOUR_TARGETS}")
        targets = self.build_targets(output, target)
        teacher = None
        if teacher_output is not None:
            self.check_teacher(output, teacher_output)
            teacher = teacher_targets(teacher_output.to(output.device), self.kd_mode, self.num_keypoints,
                                      self.num_classes, self.num_anchors)
            targets = blend_targets(targets, teacher, self.kd_alpha)
        if self.conf_floor:
            targets = floor_confidence(targets, self.conf_floor)
        if self.neighbour_cells:
            conf_scale = self.noobject_scale if self.neighbour_conf_scale is None else self.neighbour_conf_scale
            from_teacher = teacher if self.neighbour_target == "teacher" else None
            targets = add_neighbour_cells(targets, target, conf_scale, self.num_keypoints, self.neighbour_cells,
                                          teacher=from_teacher, alpha=self.kd_alpha)
        return targets

    def forward(self, output: torch.Tensor, target: torch.Tensor, epoch: int, teacher_output=None):
        """output: (B, A*(2K+1+C), H, W) raw; target: (B, 50*21) normalised label rows.

        Returns (loss, stats): loss a 0-dim tensor summed over the batch; stats python numbers
        nGT, nCorrect, nProposals, loss_x, loss_y, loss_conf, loss_cls, total.
        """
        targets = self.make_targets(output, target, teacher_output)
        loss, terms = loss_terms(output, targets, num_keypoints=self.num_keypoints, num_classes=self.num_classes,
                                 num_anchors=self.num_anchors, coord_scale=self.coord_scale,
                                 class_scale=self.class_scale, coord_loss=self.coord_loss,
                                 with_conf=epoch > self.pretrain_num_epochs)  # design §5.5
        if self.batch_mean:
            loss = loss / output.shape[0]
            terms = {k: v / output.shape[0] for k, v in terms.items()}
        stats = {"nGT": targets.nGT, "nCorrect": targets.nCorrect, "nProposals": targets.nProposals,
                 **{k: float(v.detach()) for k, v in terms.items()}, "total": float(loss.detach())}
        return loss, stats

    def format_stats(self, stats: dict, seen: int) -> str:
        """The per-batch console line (design §5.8); the class term only when C > 1."""
        return format_stats(stats, seen, multi=self.num_classes > 1)


def format_stats(stats: dict, seen: int, multi: bool = False) -> str:
    """Module-level form of `RegionLoss.format_stats` (multi adds the class term)."""
    cls = f"cls {stats['loss_cls']:f}, " if multi else ""
    return (f"{seen}: nGT {stats['nGT']}, recall {stats['nCorrect']}, proposals {stats['nProposals']}, "
            f"loss: x {stats['loss_x']:f}, y {stats['loss_y']:f}, conf {stats['loss_conf']:f}, "
            f"{cls}total {stats['total']:f}")
