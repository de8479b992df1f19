"""Region loss (design §5) and distillation loss (design §8.3) against the original's golden outputs,
a per-cell loop reference (benchmarks/bench_loss.py), autograd and hand-made cases."""
import importlib.util
import math

import numpy as np
import pytest
import torch

import utils
from region_loss import (NEIGHBOUR_TARGETS, RegionLoss, add_neighbour_cells, blend_targets, build_targets,
                         check_teacher, choose_anchors, floor_confidence, format_stats, loss_terms, teacher_targets)

K = 9
ANCHORS3 = [1.0, 1.0, 2.0, 2.0, 4.0, 4.0]  # grid units


@pytest.fixture(scope="module")
def rl(golden):
    return golden("region_loss")


@pytest.fixture(scope="module")
def bench(root):
    spec = importlib.util.spec_from_file_location("bench_loss", root / "benchmarks" / "bench_loss.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _golden_loss(variant):
    loss = RegionLoss(num_keypoints=9, num_classes=1, anchors=[], num_anchors=1, pretrain_num_epochs=15)
    if variant == "cfg":  # the network's [region] values, as the fork's train.py uses them
        loss = RegionLoss.from_region({"anchors": [0.1067, 0.9223], "num_anchors": 1, "anchor_step": 2,
                                       "num_classes": 1, "object_scale": 5, "noobject_scale": 0.1,
                                       "class_scale": 1, "coord_scale": 1, "thresh": 0.6}, scales="cfg")
    return loss


def _rows(*objects, slots=50):
    """Label tensor (B, slots*21) from per-image lists of (cls, points (9,2) normalised, xrange, yrange)."""
    out = torch.zeros(len(objects), slots, 2 * K + 3, dtype=torch.float64)
    for b, objs in enumerate(objects):
        for t, (c, pts, xr, yr) in enumerate(objs):
            out[b, t, 0] = c
            out[b, t, 1:1 + 2 * K] = torch.as_tensor(pts, dtype=torch.float64).reshape(-1)
            out[b, t, 2 * K + 1:] = torch.tensor([xr, yr])
    return out.reshape(len(objects), -1)


def _box(cx, cy, half=0.05):
    """9 normalised points: the centroid then 8 corners around it."""
    corners = [(cx + sx * half, cy + sy * half * 1.3) for sx in (-1, 1) for sy in (-1, 1) for _ in (0, 1)]
    return np.array([(cx, cy)] + corners)


def _plant(out, b, a, gj, gi, pts, H, W, C=1, noise=0.0):
    """Write raw values at (b, anchor a, gj, gi) that decode to `pts` (9,2 normalised)."""
    ch = 2 * K + 1 + C
    g = torch.as_tensor(pts, dtype=out.dtype) * torch.tensor([W, H], dtype=out.dtype)
    off = g - torch.tensor([gi, gj], dtype=out.dtype) + noise
    off[0] = torch.logit(off[0].clamp(1e-4, 1 - 1e-4))
    out[b, a * ch:a * ch + 2 * K, gj, gi] = off.reshape(-1)


# ------------------------------------------------------------------------------------------------
# Golden: the original single-object loss (tests/data/README.md, region_loss.npz; design §5)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["train", "cfg"])
@pytest.mark.parametrize("epoch", [15, 16])
def test_golden_loss_terms_gradient_and_stats(rl, variant, epoch):
    p = f"{variant}_e{epoch}"
    out = torch.from_numpy(rl["output"]).clone().requires_grad_(True)
    loss, stats = _golden_loss(variant)(out, torch.from_numpy(rl["target"]).float(), epoch)
    loss.backward()
    for key in ("loss_x", "loss_y", "loss_conf", "total"):
        assert stats[key] == pytest.approx(float(rl[f"{p}_{key}"]), rel=1e-5), key
    assert loss.item() == pytest.approx(float(rl[f"{p}_total"]), rel=1e-5)
    assert stats["loss_cls"] == 0.0 == float(rl[f"{p}_loss_cls"])
    for key in ("nGT", "nCorrect", "nProposals"):
        assert stats[key] == int(rl[f"{p}_{key}"]), key
    g = rl[f"{p}_grad"]
    np.testing.assert_allclose(out.grad.numpy(), g, rtol=1e-5, atol=1e-5 * np.abs(g).max())


@pytest.mark.parametrize("variant", ["train", "cfg"])
def test_golden_build_targets(rl, variant):
    bt = _golden_loss(variant).build_targets(torch.from_numpy(rl["output"]), torch.from_numpy(rl["target"]).float())
    g = lambda name: rl[f"{variant}_bt_{name}"]
    for name in ("coord_mask", "conf_mask", "cls_mask"):
        np.testing.assert_array_equal(getattr(bt, name).numpy(), g(name), err_msg=name)
    np.testing.assert_array_equal(bt.tcls.numpy(), g("tcls"))
    np.testing.assert_allclose(bt.tconf.numpy(), g("tconf"), atol=1e-6)
    for name in ("tx", "ty"):  # the original returns K tensors (B, A, H, W): ours is (B, A, K, H, W)
        np.testing.assert_allclose(getattr(bt, name).permute(2, 0, 1, 3, 4).numpy(), g(name), atol=1e-6,
                                   err_msg=name)
    # the planted neighbour (5,7) of image 0 is ignored (conf weight 0), the GT cell is object_scale
    assert bt.conf_mask[0, 0, 5, 7] == 0 and bt.conf_mask[0, 0, 5, 6] == 5
    assert bt.nGT == 2 and bt.nCorrect == 1


def test_from_region_scales_and_thresh():
    region = {"anchors": [0.1067, 0.9223], "num_anchors": 1, "anchor_step": 2, "num_classes": 1,
              "object_scale": 4.0, "noobject_scale": 0.1, "class_scale": 2.0, "coord_scale": 3.0, "thresh": 0.3}
    cfg = RegionLoss.from_region(region, scales="cfg")
    ms = RegionLoss.from_region(region, scales="ms")
    assert (cfg.coord_scale, cfg.noobject_scale, cfg.object_scale, cfg.class_scale) == (3.0, 0.1, 4.0, 2.0)
    assert (ms.coord_scale, ms.noobject_scale, ms.object_scale, ms.class_scale) == (1.0, 1.0, 5.0, 1.0)
    assert cfg.thresh == ms.thresh == 0.6  # design §5.6: the cfg thresh is never read
    assert cfg.pretrain_num_epochs == 15 and cfg.num_anchors == 1 and cfg.anchor_step == 2
    with pytest.raises(ValueError, match="scales 'x'"):
        RegionLoss.from_region(region, scales="x")


def test_pretrain_gate_is_strict():
    torch.manual_seed(0)
    out = torch.randn(1, 20, 4, 4)
    target = _rows([(0, _box(0.4, 0.6), 0.1, 0.1)])
    loss = RegionLoss(pretrain_num_epochs=3)
    l3, s3 = loss(out, target, 3)
    l4, s4 = loss(out, target, 4)
    assert float(l3) == pytest.approx(s3["loss_x"] + s3["loss_y"], rel=1e-6)
    assert float(l4) == pytest.approx(s4["loss_x"] + s4["loss_y"] + s4["loss_conf"], rel=1e-6)
    assert s3["loss_conf"] == s4["loss_conf"] > 0


# ------------------------------------------------------------------------------------------------
# Autograd and the loop reference
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("A,C", [(1, 1), (2, 3)])
def test_gradcheck(A, C):
    torch.manual_seed(1)
    H = W = 4
    out = torch.randn(2, A * (2 * K + 1 + C), H, W, dtype=torch.float64)
    _plant(out, 0, 0, 1, 2, _box(2.5 / W, 1.5 / H), H, W, C, noise=0.02)
    target = _rows([(C - 1, _box(2.5 / W, 1.5 / H), 0.3, 0.4)], [(0, _box(0.1, 0.8), 0.6, 0.5)])
    anchors = [1.0, 1.5, 2.5, 2.0][:2 * A] if A > 1 else []
    loss = RegionLoss(num_classes=C, anchors=anchors, num_anchors=A)
    # before the confidence term the loss depends on the output only through autograd paths
    assert torch.autograd.gradcheck(lambda o: loss(o, target, 15)[0], (out.clone().requires_grad_(True),),
                                    fast_mode=True)
    # with the confidence term: targets (tconf, ignore mask) are fixed, as they carry no gradient
    bt = loss.build_targets(out, target)
    assert bt.nGT == 2 and bt.coord_mask.sum() == 2
    f = lambda o: loss_terms(o, bt, num_classes=C, num_anchors=A, coord_scale=1.5, class_scale=0.7)[0]
    assert torch.autograd.gradcheck(f, (out.clone().requires_grad_(True),), fast_mode=True)


def _random_case(seed, B, H, W, A, C, n_obj, dup_cell=False):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(B, A * (2 * K + 1 + C), H, W, generator=g, dtype=torch.float64)
    objs = []
    for b in range(B):
        img = []
        for t in range(n_obj):
            c = (torch.rand(2, generator=g) * 0.8 + 0.1).tolist()
            if dup_cell and t == 1:  # same centroid cell as object 0
                c = [img[0][1][0][0] + 0.1 / W, img[0][1][0][1]]
                c[0] = min(c[0], (int(img[0][1][0][0] * W) + 0.99) / W)
            pts = _box(*c, half=0.08)
            xr, yr = float(torch.rand(1, generator=g)) * 0.4, float(torch.rand(1, generator=g)) * 0.4
            img.append((int(torch.randint(C, (1,), generator=g)), pts, xr, yr))
            a = int(torch.randint(A, (1,), generator=g))
            _plant(out, b, a, int(c[1] * H), int(c[0] * W), pts, H, W, C, noise=0.01 * t)
        objs.append(img)
    return out, _rows(*objs)


@pytest.mark.parametrize("case", [
    dict(B=3, H=5, W=7, A=1, C=1, n_obj=1, repro=False),                 # multi-scale, single object
    dict(B=3, H=6, W=6, A=2, C=3, n_obj=3, repro=False),                 # multi object, fixed
    dict(B=3, H=6, W=6, A=2, C=3, n_obj=3, repro=True),                  # multi object, original bug
    dict(B=2, H=4, W=5, A=3, C=2, n_obj=2, repro=False, dup_cell=True),  # two objects in one cell
])
def test_matches_loop_reference(bench, case):
    A, C = case["A"], case["C"]
    anchors = ANCHORS3[:2 * A] if A > 1 else []
    out, target = _random_case(7, case["B"], case["H"], case["W"], A, C, case["n_obj"], case.get("dup_cell", False))
    # objects with zero extent exercise the all-zero-IoU fallback in the multi cases
    if A > 1:
        target.view(case["B"], 50, 21)[0, 0, 19:] = 0
    loss = RegionLoss(num_classes=C, anchors=anchors, num_anchors=A)
    loss.repro_anchor_bug = case["repro"]
    o1 = out.clone().requires_grad_(True)
    l1, s1 = loss(o1, target, 16)
    l1.backward()
    o2 = out.clone().requires_grad_(True)
    l2, s2 = bench.loop_region_loss(o2, target, 16, C=C, A=A, anchors=anchors, repro_anchor_bug=case["repro"])
    l2.backward()
    for key in ("nGT", "nCorrect"):
        assert s1[key] == s2[key], key
    assert s1["nCorrect"] > 0 or case["repro"]  # the planted predictions are found (the bug reads other rows)
    for key in ("loss_x", "loss_y", "loss_conf", "loss_cls", "total"):
        assert s1[key] == pytest.approx(s2[key], rel=1e-9, abs=1e-12), key
    torch.testing.assert_close(o1.grad, o2.grad, rtol=1e-9, atol=1e-12)


def test_batch_loss_is_the_sum_of_single_losses():
    out, target = _random_case(3, 2, 6, 6, 1, 1, 1)
    loss = RegionLoss()
    lb, sb = loss(out, target, 16)
    singles = [loss(out[i:i + 1], target[i:i + 1], 16) for i in range(2)]
    assert float(lb) == pytest.approx(sum(float(part) for part, _ in singles), rel=1e-12)
    for key in ("nGT", "nCorrect", "nProposals"):
        assert sb[key] == sum(s[key] for _, s in singles)


@pytest.mark.parametrize("A,C", [(1, 1), (3, 4)])
def test_images_without_objects(A, C):
    out = torch.randn(2, A * (2 * K + 1 + C), 5, 5, dtype=torch.float64).requires_grad_(True)
    loss = RegionLoss(num_classes=C, anchors=ANCHORS3[:2 * A] if A > 1 else [], num_anchors=A)
    total, stats = loss(out, torch.zeros(2, 50 * 21), 16)
    total.backward()
    conf = torch.sigmoid(out.detach().reshape(2, A, -1, 5, 5)[:, :, 2 * K])
    assert stats["nGT"] == 0 and stats["loss_x"] == stats["loss_y"] == stats["loss_cls"] == 0.0
    assert stats["total"] == pytest.approx(0.5 * float((conf ** 2).sum()), rel=1e-12)  # every cell is no-object


# ------------------------------------------------------------------------------------------------
# Target building details
# ------------------------------------------------------------------------------------------------

def test_responsible_cell_targets_overwrite_and_empty_slot():
    H, W = 4, 6
    first, second = _box(0.35, 0.40), _box(0.40, 0.45, half=0.1)  # both centroids in cell gi=2, gj=1
    third = _box(0.8, 0.8)
    out = torch.zeros(1, 20, H, W)
    target = _rows([(0, first, 0.1, 0.1), (0, second, 0.1, 0.1), (0, np.zeros((9, 2)), 0, 0), (0, third, 0.1, 0.1)])
    bt = build_targets(out, target)
    assert bt.nGT == 2  # scanning stops at the first x0 == 0 slot: the third object is never read
    assert bt.coord_mask.sum() == 1 and bt.coord_mask[0, 0, 1, 2] == 1
    expect_x = torch.tensor(second[:, 0] * W - 2, dtype=torch.float32)
    expect_y = torch.tensor(second[:, 1] * H - 1, dtype=torch.float32)
    torch.testing.assert_close(bt.tx[0, 0, :, 1, 2], expect_x)  # the later object wins
    torch.testing.assert_close(bt.ty[0, 0, :, 1, 2], expect_y)
    assert (bt.tx[0, 0, 1:, 1, 2] < 0).any()  # corner targets are not clipped to [0, 1)
    assert bt.conf_mask[0, 0, 1, 2] == 5 and (bt.conf_mask.flatten()[bt.coord_mask.flatten() == 0] == 1).all()


def test_truncation_and_bad_centroid():
    H = W = 13
    pts = _box(6.999 / 13, 5.2 / 13)
    bt = build_targets(torch.zeros(1, 20, H, W), _rows([(0, pts, 0.1, 0.1)]))
    assert bt.assigned["gi"].tolist() == [6] and bt.assigned["gj"].tolist() == [5]
    with pytest.raises(ValueError, match=r"image 0 slot 0: centroid \(1\.020000.*outside the 13x13 grid"):
        build_targets(torch.zeros(1, 20, H, W), _rows([(0, _box(1.02, 0.5), 0.1, 0.1)]))
    with pytest.raises(ValueError, match=r"target has shape \(1, 20\); expected \(B, S\*21\)"):
        build_targets(torch.zeros(1, 20, H, W), torch.zeros(1, 20))
    with pytest.raises(ValueError, match="output has 21 channels; expected .* = 20"):
        RegionLoss()(torch.zeros(1, 21, H, W), _rows([(0, pts, 0.1, 0.1)]), 0)


def test_ignore_region_uses_best_confidence_over_objects():
    H = W = 8
    a, b2 = _box(0.2, 0.2), _box(0.7, 0.6)
    out = torch.full((1, 20, H, W), -8.0)
    _plant(out, 0, 0, 1, 2, a, H, W)  # the cell right of object a's cell predicts a well
    _plant(out, 0, 0, 4, 6, b2, H, W)  # the cell right of object b's cell predicts b well
    bt = build_targets(out, _rows([(0, a, 0.1, 0.1), (0, b2, 0.1, 0.1)]), noobject_scale=0.1)
    zero = (bt.conf_mask == 0).nonzero().tolist()
    assert zero == [[0, 0, 1, 2], [0, 0, 4, 6]]
    assert bt.conf_mask[0, 0, 1, 1] == 5 and bt.conf_mask[0, 0, 4, 5] == 5
    assert bt.nCorrect == 0  # the responsible cells themselves predict nothing useful


# ------------------------------------------------------------------------------------------------
# Multi-object anchor assignment (design §5.7, D22)
# ------------------------------------------------------------------------------------------------

def test_choose_anchors_first_largest_iou_and_zero_fallback():
    anchors = torch.tensor([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]], dtype=torch.float64)
    gw = torch.tensor([2.0, 3.9, 0.5, 0.0, 3.0], dtype=torch.float64)
    gh = torch.tensor([2.0, 4.2, 0.4, 0.0, 0.0], dtype=torch.float64)
    assert choose_anchors(gw, gh, anchors).tolist() == [1, 2, 0, 0, 0]  # zero IoU: closest area (0 vs 1)
    assert choose_anchors(gw, gh, anchors, repro_anchor_bug=True).tolist() == [1, 2, 0, 2, 2]  # index -1
    ties = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # both IoU 1/2 with a 1x1 GT: first
    one = torch.ones(1, dtype=torch.float64)
    assert choose_anchors(one, one, ties).tolist() == [0]


@pytest.mark.parametrize("repro", [False, True])
def test_multi_anchor_assignment_and_tconf_row(repro):
    B, A, C, H, W = 2, 3, 2, 8, 8
    P = H * W
    big = _box(0.55, 0.30)  # extent 2x2 cells -> anchor 1 (IoU 1)
    flat = _box(0.30, 0.70)  # zero extent -> every IoU is 0
    out = torch.full((B, A * (2 * K + 1 + C), H, W), -6.0, dtype=torch.float64)
    _plant(out, 1, 1, 2, 4, big, H, W, C)  # image 1: an exact prediction at the trained anchor 1
    _plant(out, 0, 2, 2, 4, _box(0.55, 0.32), H, W, C)  # image 0, anchor 2: the row the bug reads
    target = _rows([(1, flat, 0.0, 0.0)], [(1, big, 2 / W, 2 / H)])
    loss = RegionLoss(num_classes=C, anchors=ANCHORS3, num_anchors=A)
    loss.repro_anchor_bug = repro
    bt = loss.build_targets(out, target)
    asg = bt.assigned
    assert asg["b"].tolist() == [0, 1] and asg["gj"].tolist() == [5, 2] and asg["gi"].tolist() == [2, 4]
    assert asg["anchor"].tolist() == ([2, 1] if repro else [0, 1])
    assert bt.coord_mask[0, asg["anchor"][0], 5, 2] == 1 and bt.coord_mask[1, 1, 2, 4] == 1
    points = utils.decode_output(out, K, C, A)[0].reshape(-1, 2 * K)
    if repro:  # row b*A*P - P + cell: image b-1 (wrapping), anchor A-1
        rows = [(B * A * P - P + 5 * W + 2), (1 * A * P - P + 2 * W + 4)]
    else:
        rows = [0 * A * P + 0 * P + 5 * W + 2, 1 * A * P + 1 * P + 2 * W + 4]
    assert asg["pred_row"].tolist() == rows
    gts = target.view(B, 50, 21)[:, 0, 1:19]
    expect = utils.corner_confidence(gts, points[rows])
    torch.testing.assert_close(asg["tconf"], expect)
    assert bt.tconf[1, 1, 2, 4] == asg["tconf"][1]
    if repro:  # image 1 reads image 0's anchor 2 (a near miss), not its own exact prediction
        assert 0.3 < float(asg["tconf"][1]) < 0.95 and bt.nCorrect == 1
    else:
        assert float(asg["tconf"][1]) > 0.99 and bt.nCorrect == 1
    assert bt.tcls[1, 1, 2, 4] == 1 and bt.cls_mask.sum() == 2


def test_multi_class_loss_value():
    H = W = 4
    A, C = 2, 3
    out = torch.randn(1, A * (2 * K + 1 + C), H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    target = _rows([(2, _box(0.6, 0.3), 2.0 / W, 2.0 / H)])  # anchor (2.5, 2.0) wins
    loss = RegionLoss(num_classes=C, anchors=[1.0, 1.5, 2.5, 2.0], num_anchors=A)
    loss.class_scale = 0.5
    _, stats = loss(out, target, 0)
    logits = out[0, 1 * 22 + 19:1 * 22 + 22, 1, 2]
    assert stats["loss_cls"] == pytest.approx(0.5 * float(torch.logsumexp(logits, 0) - logits[2]), rel=1e-12)
    assert stats["total"] == pytest.approx(stats["loss_x"] + stats["loss_y"] + stats["loss_cls"], rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Distillation (design §8.3)
# ------------------------------------------------------------------------------------------------

def _kd_pair(B=2, H=4, W=5):
    student = torch.randn(B, 20, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    values = 0.05 * torch.arange(20, dtype=torch.float64) - 0.3  # channel c holds a distinct constant
    teacher = values.view(1, 20, 1, 1).expand(B, 20, H, W).clone()
    target = _rows(*[[(0, _box(0.3 + 0.3 * b, 0.5), 0.1, 0.1)] for b in range(B)])
    return student, teacher, target, values


@pytest.mark.parametrize("mode", ["fork", "fixed"])
def test_teacher_targets_channels(mode):
    _, teacher, _, v = _kd_pair()
    tx, ty, tconf = teacher_targets(teacher, mode)
    assert tx.shape == (2, 1, 9, 4, 5) and tconf.shape == (2, 1, 4, 5)
    xs = [i + 1 for i in range(1, 9)] if mode == "fork" else [2 * i for i in range(1, 9)]
    ys = [i + 2 for i in range(1, 9)] if mode == "fork" else [2 * i + 1 for i in range(1, 9)]
    torch.testing.assert_close(tx[0, 0, :, 2, 3], torch.cat([torch.sigmoid(v[:1]), v[xs]]))
    torch.testing.assert_close(ty[1, 0, :, 0, 0], torch.cat([torch.sigmoid(v[1:2]), v[ys]]))
    torch.testing.assert_close(tconf, torch.sigmoid(v[18]).expand(2, 1, 4, 5))  # at every cell
    if mode == "fork":  # design §8.3: pairs (T2,T3), (T3,T4), ..., (T9,T10); channels 11..17 unused
        assert xs == [2, 3, 4, 5, 6, 7, 8, 9] and ys == [3, 4, 5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("mode", ["fork", "fixed"])
def test_kd_loss_alpha_blend(mode):
    student, teacher, target, v = _kd_pair()
    plain = RegionLoss()
    kd = RegionLoss()
    kd.kd_mode = mode
    gt = plain.build_targets(student, target)
    te = teacher_targets(teacher, mode)

    def run(alpha):
        kd.kd_alpha = alpha
        return kd(student, target, 16, teacher_output=teacher)

    l0, s0 = run(0.0)
    lp, sp = plain(student, target, 16)
    assert float(l0) == float(lp) and s0 == sp  # alpha 0 is the plain GT loss
    l1, s1 = run(1.0)
    # alpha 1 (the fork): teacher targets at the GT-responsible cells, teacher conf everywhere,
    # with the GT masks; statistics still come from the GT
    o = student.reshape(2, 1, 20, 4, 5)
    x_hat = torch.cat([torch.sigmoid(o[:, :, :1]), o[:, :, 2:18:2]], 2)
    y_hat = torch.cat([torch.sigmoid(o[:, :, 1:2]), o[:, :, 3:18:2]], 2)
    m = gt.coord_mask[:, :, None]
    assert s1["loss_x"] == pytest.approx(0.5 * float((m * (x_hat - te[0]) ** 2).sum()), rel=1e-12)
    assert s1["loss_y"] == pytest.approx(0.5 * float((m * (y_hat - te[1]) ** 2).sum()), rel=1e-12)
    conf = torch.sigmoid(o[:, :, 18])
    assert s1["loss_conf"] == pytest.approx(0.5 * float((gt.conf_mask * (conf - te[2]) ** 2).sum()), rel=1e-12)
    assert (s1["nGT"], s1["nCorrect"], s1["nProposals"]) == (sp["nGT"], sp["nCorrect"], sp["nProposals"])
    # alpha 0.5: targets halfway between GT and teacher
    mid = blend_targets(gt, te, 0.5)
    torch.testing.assert_close(mid.tx, 0.5 * (gt.tx + te[0]))
    torch.testing.assert_close(mid.tconf, 0.5 * (gt.tconf + te[2]))
    lm, _ = run(0.5)
    expect, _ = loss_terms(student, mid)
    assert float(lm) == pytest.approx(float(expect), rel=1e-12)
    assert float(lp) != pytest.approx(float(lm)) and float(l1) != pytest.approx(float(lm))


def test_kd_modes_differ_and_teacher_gets_no_gradient():
    student, teacher, target, _ = _kd_pair()
    teacher.requires_grad_(True)
    kd = RegionLoss()
    losses = {}
    for mode in ("fork", "fixed"):
        kd.kd_mode = mode
        s = student.clone().requires_grad_(True)
        loss, _ = kd(s, target, 16, teacher_output=teacher)
        loss.backward()
        losses[mode] = loss.item()
        assert s.grad is not None and teacher.grad is None
    assert losses["fork"] != pytest.approx(losses["fixed"])


def test_teacher_mismatch_is_refused():
    student, teacher, target, _ = _kd_pair(B=2, H=4, W=5)
    kd = RegionLoss()
    kd.kd_mode = "fork"
    check_teacher(student, teacher)  # matching pair: no error
    with pytest.raises(ValueError, match=r"grid 8x10 \(HxW\) vs student 4x5"):
        kd(student, target, 16, teacher_output=torch.zeros(2, 20, 8, 10))
    with pytest.raises(ValueError, match="batch 3 vs student 2"):
        kd.check_teacher(student, torch.zeros(3, 20, 4, 5))
    with pytest.raises(ValueError, match=r"teacher has 22 channels; expected .* = 1\*\(18\+1\+1\) = 20"):
        kd.check_teacher(student, torch.zeros(2, 22, 4, 5))
    k8 = RegionLoss(num_keypoints=8)  # a student with 8 keypoints: 18 channels; the 9-keypoint teacher has 20
    with pytest.raises(ValueError, match=r"teacher has 20 channels; expected .* = 1\*\(16\+1\+1\) = 18"):
        k8.check_teacher(torch.zeros(2, 18, 4, 5), teacher)
    with pytest.raises(ValueError, match="kd_mode is None"):
        RegionLoss()(student, target, 16, teacher_output=teacher)


# ------------------------------------------------------------------------------------------------
# Robustness, console line, CUDA
# ------------------------------------------------------------------------------------------------

def test_no_nan_from_finite_extremes():
    H = W = 6
    out = torch.randn(2, 20, H, W)
    out[:, :18] *= 1e20  # huge raw keypoints away from the responsible cells
    pts = _box(0.5, 0.5)
    _plant(out, 0, 0, 3, 3, pts, H, W)
    out[1, :, 3, 3] = 0.0
    out[:, 18] = torch.tensor([-1e4, 1e4]).repeat(H * W)[: H * W].view(H, W)  # saturated confidences
    out.requires_grad_(True)
    loss, stats = RegionLoss()(out, _rows([(0, pts, 0.1, 0.1)], [(0, pts, 0.1, 0.1)]), 16)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(out.grad).all()
    assert stats["nGT"] == 2


def test_format_stats():
    stats = {"nGT": 2, "nCorrect": 1, "nProposals": 291, "loss_x": 6.785792, "loss_y": 1.888202,
             "loss_conf": 46.760277, "loss_cls": 0.25, "total": 55.434273}
    line = "64: nGT 2, recall 1, proposals 291, loss: x 6.785792, y 1.888202, conf 46.760277, total 55.434273"
    assert RegionLoss().format_stats(stats, 64) == line
    multi = RegionLoss(num_classes=13, anchors=ANCHORS3[:4], num_anchors=2).format_stats(stats, 64)
    assert multi == line.replace("total", "cls 0.250000, total")
    assert format_stats(stats, 64) == line


@pytest.mark.cuda
def test_cuda_matches_cpu(rl):
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available: the device path is only exercised on a GPU machine")
    out = torch.from_numpy(rl["output"]).cuda().requires_grad_(True)
    loss, stats = _golden_loss("train")(out, torch.from_numpy(rl["target"]).float().cuda(), 16)
    loss.backward()
    assert loss.device.type == "cuda"
    assert stats["total"] == pytest.approx(float(rl["train_e16_total"]), rel=1e-5)
    np.testing.assert_allclose(out.grad.cpu().numpy(), rl["train_e16_grad"], atol=1e-5)


# --------------------------------------------------------------------------------------------
# the fast recipe's loss options (design §7.6, D47)
# --------------------------------------------------------------------------------------------

def _one_object(W=4, H=4):
    out = torch.randn(2, 20, H, W, generator=torch.Generator().manual_seed(0))
    tgt = torch.zeros(2, 50 * 21)
    pts = torch.tensor([0.30, 0.60, 0.1, 0.5, 0.2, 0.9, 0.5, 0.5, 0.4, 0.7, 0.3, 0.3, 0.6, 0.8, 0.2, 0.4, 0.35, 0.55],
                       dtype=torch.float64)
    tgt[0, 1:19] = pts
    tgt[1, 1:19] = torch.tensor([0.99] * 18, dtype=torch.float64)  # centroid in the corner cell (3, 3)
    return out, tgt


def test_confidence_floor_lifts_only_the_responsible_cell():
    out, tgt = _one_object()
    t = RegionLoss(9, 1).build_targets(out, tgt)
    f = floor_confidence(t, 0.5)
    cells = t.coord_mask > 0
    torch.testing.assert_close(f.tconf[cells], 0.5 + 0.5 * t.tconf[cells])
    torch.testing.assert_close(f.tconf[~cells], t.tconf[~cells])
    assert (f.tconf[cells] >= 0.5).all()
    with pytest.raises(ValueError, match="floor must be in"):
        floor_confidence(t, 1.5)


def test_neighbour_cells_regress_the_corners_but_not_the_centroid():
    out, tgt = _one_object()
    t = RegionLoss(9, 1).build_targets(out, tgt)
    n = add_neighbour_cells(t, tgt, noobject_scale=0.1)
    # image 0: centroid (0.3, 0.6) -> cell (gi 1, gj 2); its neighbours (0, 2), (2, 2), (1, 1), (1, 3)
    expect = torch.zeros(4, 4)
    expect[2, 1] = expect[2, 0] = expect[2, 2] = expect[1, 1] = expect[3, 1] = 1
    torch.testing.assert_close(n.point_mask[0, 0, 1], expect, check_dtype=False)
    centroid = torch.zeros(4, 4)
    centroid[2, 1] = 1
    torch.testing.assert_close(n.point_mask[0, 0, 0], centroid, check_dtype=False)
    # targets relative to each cell: x * W - i
    gx = tgt[0, 1:19:2] * 4
    torch.testing.assert_close(n.tx[0, 0, :, 2, 0], gx.to(n.tx.dtype))
    torch.testing.assert_close(n.tx[0, 0, :, 2, 2], (gx - 2).to(n.tx.dtype))
    # neighbours are background for the confidence (weight noobject, target 0), never ignored
    assert n.conf_mask[0, 0, 2, 0] == pytest.approx(0.1) and n.tconf[0, 0, 2, 0] == 0
    assert n.conf_mask[0, 0, 2, 1] == t.conf_mask[0, 0, 2, 1]  # the responsible cell keeps object_scale
    # image 1: corner cell (3, 3) has two neighbours inside the grid
    assert int(n.point_mask[1, 0, 1].sum()) == 3
    # the loss with neighbours: gradient on the neighbours' corner channels, none on their centroid
    loss_fn = RegionLoss(9, 1)
    loss_fn.neighbour_cells = 4
    o = out.clone().requires_grad_()
    loss, _ = loss_fn(o, tgt, epoch=100)
    loss.backward()
    assert o.grad[0, 2:18, 2, 0].abs().sum() > 0 and o.grad[0, 0:2, 2, 0].abs().sum() == 0
    assert o.grad[0, 2:18, 0, 3].abs().sum() == 0  # far cells: no coordinate gradient


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_what_the_neighbour_cells_regress_under_distillation(alpha):
    """The fast recipe with a teacher (D66): the responsible cell regresses the blend of GT and
    teacher; the neighbour cells regress the ground truth (gt, the default) or the same blend with
    the teacher's corners at the neighbour cell (teacher). Never the centroid, whatever the mode."""
    out, tgt = _one_object()
    teacher_out = torch.randn(2, 20, 4, 4, generator=torch.Generator().manual_seed(1))
    te_x, te_y, _ = teacher_targets(teacher_out, "fixed")
    gx, gy = tgt[0, 1:19:2].to(torch.float32) * 4, tgt[0, 2:19:2].to(torch.float32) * 4
    targets = {}
    for mode in NEIGHBOUR_TARGETS:
        loss_fn = RegionLoss(9, 1)
        loss_fn.neighbour_cells, loss_fn.kd_mode, loss_fn.kd_alpha, loss_fn.neighbour_target = 4, "fixed", alpha, mode
        targets[mode] = loss_fn.make_targets(out, tgt, teacher_out)
    blend = lambda g, t: (1 - alpha) * g + alpha * t
    for t in targets.values():  # the responsible cell (gi 1, gj 2) of image 0: the blend, both modes
        torch.testing.assert_close(t.tx[0, 0, :, 2, 1], blend(gx - 1, te_x[0, 0, :, 2, 1]))
        assert t.point_mask[0, 0, 0, 2, 0] == 0 and t.point_mask[0, 0, 1:, 2, 0].all()
    # the neighbour (gi 0, gj 2) and (gi 1, gj 1): corners 1..8 relative to the neighbour cell
    torch.testing.assert_close(targets["gt"].tx[0, 0, 1:, 2, 0], gx[1:])
    torch.testing.assert_close(targets["gt"].ty[0, 0, 1:, 1, 1], gy[1:] - 1)
    torch.testing.assert_close(targets["teacher"].tx[0, 0, 1:, 2, 0], blend(gx[1:], te_x[0, 0, 1:, 2, 0]))
    torch.testing.assert_close(targets["teacher"].ty[0, 0, 1:, 1, 1], blend(gy[1:] - 1, te_y[0, 0, 1:, 1, 1]))
    # without a teacher the mode changes nothing
    plain = RegionLoss(9, 1)
    plain.neighbour_cells, plain.neighbour_target = 4, "teacher"
    torch.testing.assert_close(plain.make_targets(out, tgt).tx[0, 0, 1:, 2, 0], gx[1:])
    plain.neighbour_target = "both"
    with pytest.raises(ValueError, match="neighbour_target 'both'"):
        plain(out, tgt, epoch=20)


def test_batch_mean_divides_the_summed_loss():
    out, tgt = _one_object()
    summed = RegionLoss(9, 1)
    mean = RegionLoss(9, 1)
    mean.batch_mean = True
    a, sa = summed(out, tgt, epoch=20)
    b, sb = mean(out, tgt, epoch=20)
    torch.testing.assert_close(b, a / 2)
    assert sb["loss_x"] == pytest.approx(sa["loss_x"] / 2)


def test_l1_coordinate_loss_is_the_weighted_absolute_error():
    out, tgt = _one_object()
    loss_fn = RegionLoss(9, 1)
    t = loss_fn.build_targets(out, tgt)
    mse, terms_mse = loss_terms(out, t, coord_scale=2.0)
    l1, terms_l1 = loss_terms(out, t, coord_scale=2.0, coord_loss="l1")
    B, _, H, W = out.shape
    o = out.reshape(B, 1, 20, H, W)
    x_hat = torch.cat([torch.sigmoid(o[:, :, :1]), o[:, :, 2:18:2]], dim=2)  # (B, 1, K, H, W)
    expect_x = (2.0 * t.coord_mask[:, :, None] * (x_hat - t.tx).abs()).sum()
    assert terms_l1["loss_x"].item() == pytest.approx(expect_x.item(), rel=1e-6)
    # the confidence term is the same squared error under both
    assert terms_l1["loss_conf"].item() == pytest.approx(terms_mse["loss_conf"].item(), rel=1e-6)
    total = terms_l1["loss_x"] + terms_l1["loss_y"] + terms_l1["loss_conf"]
    assert l1.item() == pytest.approx(total.item(), rel=1e-5)
    # a huge raw value under a zero weight adds nothing (no 0 * inf)
    far = out.clone()
    far[0, 4, 0, 3] = 1e30
    assert torch.isfinite(loss_terms(far, t, coord_loss="l1")[0])
    with pytest.raises(ValueError, match="coordinate loss"):
        loss_terms(out, t, coord_loss="huber")
    loss_fn.coord_loss = "l1"
    assert loss_fn(out, tgt, epoch=100)[0].item() == pytest.approx(loss_terms(out, t, coord_loss="l1")[0].item(),
                                                                     rel=1e-5)
