"""tools/appearance_swap.py: the object's pixels of labelled frames swapped for parts of its render.

The end-to-end tests read the real-frame check set (../shared/data/real_lmo, only read); elsewhere
they skip, naming the folder they need.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from errors import InputError, OverwriteError
from tools import appearance_swap as swap_tool

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real_lmo"
CFG = str(ROOT / "cfg" / "yolo-lite-trial3-pose.cfg")
need_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"the real-frame set is not at {REAL}")


def test_variants_swap_the_object_only_and_split_coarse_from_fine():
    rng = np.random.default_rng(0)
    h, w = 80, 120
    fine = rng.normal(0, 20, (h, w, 1))
    real = np.clip(140 + fine, 0, 255).astype(np.uint8).repeat(3, axis=2)  # flat grey + fine grain
    ramp = np.linspace(60, 200, w)[None, :, None]
    rendered = np.broadcast_to(ramp, (h, w, 3)).round().astype(np.uint8)  # smooth: no fine detail
    mask = np.zeros((h, w), bool)
    mask[10:70, 20:100] = True
    detail = real.copy()
    detail[mask] = 7
    out = swap_tool.swap(real, rendered, mask, 3.0, detail)
    assert list(out) == list(swap_tool.VARIANTS)
    for name, img in out.items():
        assert img.dtype == np.uint8 and np.array_equal(img[~mask], real[~mask]), name  # the surroundings stay real
    assert np.array_equal(out["real"], real)
    assert np.array_equal(out["render"][mask], rendered[mask])
    assert np.all(out["render_detail"][mask] == 7)
    inner = np.zeros_like(mask)
    inner[25:55, 35:85] = True  # 15 px (5 sigma) inside the mask: no edge in the blur
    coarse_real = cv2.GaussianBlur(real.astype(np.float32), (0, 0), 3.0)
    # real_coarse: the real frame's coarse look (its grain blurred away) plus the smooth render's nothing
    assert np.abs(out["real_coarse"][inner].astype(float) - coarse_real[inner]).max() <= 1.5
    # render_coarse: the render's ramp plus the real grain
    expect = rendered.astype(np.float32) + real - coarse_real
    assert np.abs(out["render_coarse"][inner].astype(float) - np.clip(expect[inner], 0, 255)).max() <= 1.5
    assert out["render_coarse"][inner].std() > 3 * out["real_coarse"][inner].std()


def test_box_scale_is_the_spread_ratio_of_the_corners():
    gt = np.zeros((2, 9, 2))
    gt[:, 1:] = np.array([[x, y] for x in (-1, 1) for y in (-1, 1)] * 2, float) * 10 + 50
    pr = gt.copy()
    pr[0, 1:] = (gt[0, 1:] - 50) * 0.5 + 80  # half the size, elsewhere
    np.testing.assert_allclose(swap_tool.box_scale(gt, pr), [0.5, 1.0])


@need_real
def test_every_variant_is_scored_and_the_real_one_scores_as_the_frames(golden_weights, tmp_path, monkeypatch):
    import valid

    monkeypatch.chdir(REAL)  # the .data paths are relative to its folder, as the README runs it
    before = sorted(p for p in REAL.rglob("*"))
    argv = ["--datacfg", "can.data", "--mesh", "meshes/can.ply", "--mesh-units", "mm", "--modelcfg", CFG,
            "--weightfile", str(golden_weights), "--out", str(tmp_path / "swap")]
    rows = swap_tool.main(argv)
    assert sorted(p for p in REAL.rglob("*")) == before  # the frames are only read
    assert [r["variant"] for r in rows] == list(swap_tool.VARIANTS) and all(r["n"] == 15 for r in rows)
    assert json.loads((tmp_path / "swap" / "table.json").read_text()) == rows
    assert (tmp_path / "swap" / "table.md").read_text().count("\n") == 2 + len(rows)
    picture = cv2.imread(str(tmp_path / "swap" / "fine_detail.png"))
    w, h = swap_tool.PICTURE_TILE
    assert picture.shape == (4 * h, swap_tool.PICTURE_FRAMES * w, 3)
    # the real variant is the frame files themselves: valid.py's own errors on them
    valid.main(valid.get_args_parser().parse_args([
        "--datacfg", "can.data", "--modelcfg", CFG, "--weightfile", str(golden_weights),
        "--save-predictions", str(tmp_path / "direct"), "--quiet"]))
    direct = np.load(tmp_path / "direct" / "predictions_can.npz")["err_2d"]
    swapped = np.load(tmp_path / "swap" / "real" / "predictions_can.npz")["err_2d"]
    np.testing.assert_array_equal(swapped, direct)
    render = cv2.imread(str(tmp_path / "swap" / "render" / "JPEGImages" / "000017.png"))
    assert not np.array_equal(render, cv2.imread("LINEMOD/can/JPEGImages/000017.jpg"))
    with pytest.raises(OverwriteError, match="pass --overwrite"):
        swap_tool.main(argv)


@need_real
def test_labels_of_another_mesh_are_refused(golden_weights, tmp_path, monkeypatch):
    """(Units alone cannot be told from labels: a mesh 1000 times larger 1000 times further away
    projects to the same pixels, and renders the same image.)"""
    monkeypatch.chdir(REAL)
    with pytest.raises(InputError, match=r"000017\.txt: its points are .* px from the --mesh box.*--mesh-units"):
        swap_tool.main(["--datacfg", "can.data", "--mesh", "meshes/ape.ply", "--mesh-units", "mm", "--modelcfg", CFG,
                        "--weightfile", str(golden_weights), "--out", str(tmp_path / "swap")])
    assert not (tmp_path / "swap" / "table.md").exists()
