"""valid.py end to end: the original valid() goldens, metric sanity, CLI files and errors, the notebook.

The golden cases run the real loader on PNG images and label files rebuilt from evaluation.npz,
with a stand-in model that replays the golden network outputs (what the golden did, tests/data/README.md).
"""
import csv
import json
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dataset
import evaluation
import hostile
import linemod_format
import model_loading
import utils
import valid
from darknet import Darknet
from errors import InputError, MeshError, run_cli
from MeshPly import write_ply
from tolerances import PNP_ATOL

TRIAL3_CFG = str(Path(__file__).resolve().parents[1] / "cfg" / "yolo-lite-trial3-pose.cfg")
TEST_SIZE = 128  # small inputs keep the real-network tests fast; the metrics do not depend on it
GRID = 13


# --------------------------------------------------------------------------------------------
# Stand-in models and fixtures
# --------------------------------------------------------------------------------------------

class Replay(torch.nn.Module):
    """Returns the given raw outputs (N, 20, H, W) in order, len(x) at a time, whatever x is."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = torch.as_tensor(np.asarray(outputs, dtype=np.float32))
        self.next = 0

    def forward(self, x):
        out = self.outputs[self.next:self.next + len(x)]
        self.next += len(x)
        return out


def encode(points_norm: np.ndarray) -> np.ndarray:
    """Raw outputs (N, 20, 13, 13) that decode (design §4) to the 9 normalised points (N, 9, 2)."""
    out = np.full((len(points_norm), 20, GRID, GRID), -4.0)  # conf logit -4 everywhere...
    for n, pts in enumerate(np.asarray(points_norm, dtype=np.float64)):
        g = pts * GRID
        cx, cy = (int(v) for v in np.clip(np.floor(g[0]), 0, GRID - 1))
        off = g - [cx, cy]
        frac = np.clip(off[0], 1e-6, 1 - 1e-6)
        off[0] = np.log(frac / (1 - frac))  # the centroid goes through a sigmoid
        out[n, :18, cy, cx] = off.reshape(-1)
        out[n, 18, cy, cx] = 4.0  # ...but +4 in the chosen cell
    return out


def gt_points_norm(test_set) -> np.ndarray:
    """The first object's 9 label points (N, 9, 2), normalised, of every test image."""
    return np.stack([dataset.read_truths(linemod_format.label_path(p))[0, 1:19].reshape(9, 2) for p in test_set.paths])


@pytest.fixture(scope="module")
def ev(golden):
    return golden("evaluation")


@pytest.fixture(scope="module")
def golden_root(ev, golden_dir, tmp_path_factory):
    """The golden's 5 samples in the LINEMOD layout: PNG images, '%.6f' labels, the box mesh, diam 0.999."""
    root = tmp_path_factory.mktemp("golden_eval")
    images = root / "LINEMOD" / "box" / "JPEGImages"
    images.mkdir(parents=True)
    lines = []
    for i, row in enumerate(ev["label_rows"]):
        path = images / f"{i:06d}.png"
        cv2.imwrite(str(path), np.full((480, 640, 3), 10 * i, np.uint8))
        dataset.write_truths(linemod_format.label_path(path), row)
        lines.append(f"LINEMOD/box/JPEGImages/{i:06d}.png")
    (root / "LINEMOD" / "box" / "test.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(golden_dir / "synthetic_box.ply", root / "LINEMOD" / "box" / "box.ply")
    (root / "cfg").mkdir()
    # the golden's cfg diam is 0.999: the original ignores it (D25)
    (root / "cfg" / "box.data").write_text(
        "valid = LINEMOD/box/test.txt\nmesh = LINEMOD/box/box.ply\nname = box\ndiam = 0.999\n")
    return root


def run_golden(root, ev, batch_size=1, diam="mesh"):
    setup = evaluation.load_eval_setup(root / "cfg" / "box.data", diam_source=diam)
    test_set = dataset.listDataset(setup.valid_list, shape=(64, 64))
    return evaluation.evaluate(Replay(ev["network_outputs"]), dataset.make_test_loader(test_set, batch_size), setup)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, objects=2, images_per_object=6, seed=0)
    return root


@pytest.fixture(scope="module")
def trial3_weights(tmp_path_factory, root, synth):
    """A full trial-3 pose .weights file: the VOC backbone and a seeded small head whose bias
    encodes the box shape of obj00's first test label, so that every prediction is a plausible
    box (PnP stays well conditioned; a random head gives points thousands of pixels away)."""
    torch.manual_seed(0)
    model = Darknet(TRIAL3_CFG)
    model.load_weights_until_last(root / "weights" / "tiny-yolov2-trial3-voc.weights")
    first = linemod_format.read_list(synth / "LINEMOD" / "obj00" / "test.txt")[0]
    bias = encode(dataset.read_truths(linemod_format.label_path(first))[:1, 1:19].reshape(1, 9, 2))[0]
    head = model.models[-2].conv
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01)
        cy, cx = np.argwhere(bias[18] > 0)[0]
        head.bias.copy_(torch.from_numpy(bias[:, cy, cx]).float())
        head.bias[18] = 0.0
    path = tmp_path_factory.mktemp("weights") / "trial3.weights"
    model.save_weights(path)
    return path


def cli(*argv):
    return valid.main(valid.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.fixture
def fake_cli(monkeypatch):
    """Run the CLI with a stand-in model instead of a weights file."""

    def run(model, *argv):
        monkeypatch.setattr(valid, "check_model_cfg", lambda cfg: None)
        monkeypatch.setattr(valid, "check_weights", lambda net, cfg, w: None)
        monkeypatch.setattr(valid, "load_model", lambda cfg, w, device: _as_darknet(model))
        return cli(*argv)

    return run


def _as_darknet(model):
    model.test_width = model.test_height = 64
    model.num_classes, model.num_keypoints, model.num_anchors = 1, 9, 1
    return model


# --------------------------------------------------------------------------------------------
# The goldens, end to end
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_golden_evaluation_end_to_end(golden_root, ev, batch_size):
    summary, rec = run_golden(golden_root, ev, batch_size)
    np.testing.assert_array_equal(rec["gt_px"], ev["gt_corners2D"])
    np.testing.assert_array_equal(rec["pr_px"], ev["pr_corners2D"])
    for ours, theirs in (("R_gt", "R_gt"), ("t_gt", "t_gt"), ("R_pr", "R_pr"), ("t_pr", "t_pr")):
        np.testing.assert_allclose(rec[ours], ev[theirs], atol=PNP_ATOL, err_msg=ours)
    for ours, theirs in (("err_2d", "errs_2d"), ("err_add", "errs_3d"), ("err_trans", "errs_trans"),
                         ("err_angle", "errs_angle"), ("err_corner", "errs_corner2D")):
        np.testing.assert_allclose(rec[ours], ev[theirs], rtol=1e-5, atol=PNP_ATOL, err_msg=ours)
    np.testing.assert_allclose(summary["diam"], ev["diam"], rtol=1e-7)
    for ours, theirs in (("acc_2d", "acc_2d_5px"), ("acc_add", "acc_add_0p1d"), ("acc_5cm5deg", "acc_5cm5deg"),
                         ("acc_corner", "acc_corner_5px")):
        assert summary[ours] == pytest.approx(float(ev[theirs]), rel=1e-12), ours
    assert summary["acc_2d"] == pytest.approx(79.99984, abs=1e-5)
    np.testing.assert_allclose(summary["mean_err_2d"], ev["mean_err_2d"], rtol=1e-5)
    np.testing.assert_allclose(summary["mean_err_corner"], ev["mean_corner_err_2d"], rtol=1e-5)
    assert (summary["n"], summary["images"], summary["n_failed"]) == (5, 5, 0)
    assert np.all(rec["err_adds"] <= rec["err_add"] + 1e-12)
    np.testing.assert_array_equal(rec["image_index"], np.arange(5))


def test_batched_and_batch1_give_identical_numbers_on_the_golden(golden_root, ev):
    (s1, r1), (s4, r4) = run_golden(golden_root, ev, 1), run_golden(golden_root, ev, 4)
    for k in evaluation.RECORD_KEYS:
        np.testing.assert_array_equal(r1[k], r4[k], err_msg=k)
    for k in ("acc_2d", "acc_add", "acc_adds", "acc_5cm5deg", "acc_corner", "mean_err_2d", "mean_err_angle"):
        assert s1[k] == s4[k], k


def test_data_file_diameter_is_the_default(golden_root, ev):
    """Fix of D25: the .data diam (0.999 here) sets the ADD threshold unless --diam mesh."""
    summary, rec = run_golden(golden_root, ev, diam="data")
    assert summary["diam"] == 0.999 and summary["add_threshold"] == pytest.approx(0.0999)
    expect = utils.accuracy(np.sum(ev["errs_3d"] <= 0.0999), 5)
    assert summary["acc_add"] == pytest.approx(expect) and expect > float(ev["acc_add_0p1d"])


def test_cli_on_the_golden_writes_report_csv_json_predictions_curves(golden_root, ev, tmp_path, capsys, fake_cli):
    out = tmp_path / "out"
    summaries = fake_cli(Replay(ev["network_outputs"]), golden_root / "cfg" / "box.data", "--diam", "mesh",
                         "--csv", out / "metrics.csv", "--json", out / "summary.json",
                         "--save-predictions", out / "pred", "--batch-size", "2", "--modelcfg", TRIAL3_CFG)
    text = capsys.readouterr().out
    for field in ("Testing box", "Number of test samples: 5", "tensor to device", "forward pass",
                  "get_region_boxes", "prediction time", "eval", "Results of box",
                  "Acc using 5 px 2D Projection = 80.00%", "Acc using 0.014103 vx 3D Transformation = 80.00%",
                  "Acc using 5 cm 5 degree metric = 80.00%", "ADD-S", "mean corner error = 80.00%",
                  "Mean 2D pixel error is 3.68499", "Translation error:", "| box | 5 | 80.00 |"):
        assert field in text, field
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d Testing box", text)  # the design §9.4 time prefix
    with open(out / "metrics.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(linemod_format.METRICS_CSV_HEADER)
    assert rows[1][0] == "yolo-lite-trial3-pose" and rows[1][1] == "box"
    assert float(rows[1][2]) == pytest.approx(float(ev["acc_2d_5px"]), rel=1e-12)
    payload = json.loads((out / "summary.json").read_text())
    assert payload["mean"] is None and payload["objects"][0]["acc_add"] == pytest.approx(summaries[0]["acc_add"])
    pred = np.load(out / "pred" / "predictions_box.npz")
    np.testing.assert_allclose(pred["R_pr"], ev["R_pr"], atol=PNP_ATOL)
    np.testing.assert_allclose(pred["t_gt"], ev["t_gt"], atol=PNP_ATOL)
    np.testing.assert_array_equal(pred["pr_px"], ev["pr_corners2D"])
    assert [Path(p).name for p in pred["image"]] == [f"{i:06d}.png" for i in range(5)]
    png = out / "curves_box.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Metric sanity on known predictions
# --------------------------------------------------------------------------------------------

def synth_eval(synth, outputs_from_gt, batch_size=1, obj="obj00"):
    setup = evaluation.load_eval_setup(synth / "cfg" / f"{obj}.data")
    test_set = dataset.listDataset(setup.valid_list, shape=(64, 64))
    outputs = outputs_from_gt(gt_points_norm(test_set), setup)
    return evaluation.evaluate(Replay(outputs), dataset.make_test_loader(test_set, batch_size), setup)


def test_gt_points_as_predictions_score_100_everywhere(synth):
    summary, rec = synth_eval(synth, lambda gt, setup: encode(gt), batch_size=2)
    n = summary["n"]
    assert n == 2 and summary["n_failed"] == 0
    full = utils.accuracy(n, n)  # 100 * n / (n + 1e-5): never exactly 100 (design §9.3)
    for k in ("acc_2d", "acc_add", "acc_adds", "acc_5cm5deg", "acc_corner"):
        assert summary[k] == full, k
    # only float32 decoding separates the points: well below a thousandth of a pixel
    assert np.all(rec["err_corner"] < 1e-3) and np.all(rec["err_2d"] < 1e-3)
    assert np.all(rec["err_add"] < 1e-5) and np.all(rec["err_trans"] < 1e-5) and np.all(rec["err_angle"] < 0.01)


def test_metric_layer_with_gt_gives_zero_errors(synth):
    setup = evaluation.load_eval_setup(synth / "cfg" / "obj01.data")
    gt_px = gt_points_norm(dataset.listDataset(setup.valid_list, shape=(64, 64)))[0] * [640, 480]
    res = evaluation.pose_errors(gt_px.astype(np.float32), gt_px.astype(np.float32), setup)
    assert not res["failed"]
    for k in ("err_2d", "err_add", "err_trans", "err_corner"):
        assert res[k] == 0.0, k
    assert res["err_adds"] < 1e-15  # queried in the model frame: R^T (R x + t - t) is x to rounding
    assert res["err_angle"] < 1e-5  # arccos of a rounded trace


def test_known_pixel_shift_gives_known_errors(synth):
    """Every predicted point moved by (dx, dy) px: the corner error is hypot(dx, dy)."""
    for (dx, dy), inside in (((1.5, 2.0), True), ((6.0, 8.0), False)):
        shift = np.array([dx / 640, dy / 480])
        summary, rec = synth_eval(synth, lambda gt, setup, shift=shift: encode(gt + shift))
        np.testing.assert_allclose(rec["err_corner"], math.hypot(dx, dy), atol=1e-3)
        # a uniform image shift is nearly a translation parallel to the image plane
        np.testing.assert_allclose(rec["err_2d"], math.hypot(dx, dy), rtol=0.1)
        n = summary["n"]
        assert summary["acc_corner"] == utils.accuracy(n if inside else 0, n)
        assert summary["acc_2d"] == utils.accuracy(n if inside else 0, n)
        assert np.all(rec["err_adds"] <= rec["err_add"] + 1e-12)


def test_known_pose_offset_gives_known_errors(synth):
    """Predicted points projected from (R, t + d): ADD = ||d||, translation = ||d||, angle 0, and
    the 2-D error is the mean projected offset of the vertices."""
    setup = evaluation.load_eval_setup(synth / "cfg" / "obj00.data")
    R = cv2.Rodrigues(np.array([0.3, -1.2, 0.4]))[0]
    t = np.array([0.03, -0.02, 0.8])
    d = np.array([0.004, -0.003, 0.0])
    gt = utils.keypoints_from_pose(setup.corners, R, t, setup.K).astype(np.float32)
    pr = utils.keypoints_from_pose(setup.corners, R, t + d, setup.K).astype(np.float32)
    res = evaluation.pose_errors(gt, pr, setup)
    cam = setup.vertices @ R.T + t
    expect_2d = np.mean(np.hypot(setup.K[0, 0] * ((cam[:, 0] + d[0]) / cam[:, 2] - cam[:, 0] / cam[:, 2]),
                                 setup.K[1, 1] * ((cam[:, 1] + d[1]) / cam[:, 2] - cam[:, 1] / cam[:, 2])))
    # the 9 points pass through float32 before PnP, hence the tolerances
    np.testing.assert_allclose(res["err_add"], 0.005, rtol=1e-3)
    np.testing.assert_allclose(res["err_trans"], 0.005, rtol=1e-3)
    np.testing.assert_allclose(res["err_2d"], expect_2d, rtol=1e-3)
    assert res["err_angle"] < 0.01 and res["err_adds"] <= res["err_add"]


def test_non_finite_output_and_failed_pnp_count_as_misses(synth, monkeypatch, capsys):
    setup = evaluation.load_eval_setup(synth / "cfg" / "obj00.data")
    test_set = dataset.listDataset(setup.valid_list, shape=(64, 64))
    gt = gt_points_norm(test_set)
    outputs = encode(np.concatenate([gt, gt, gt]))
    outputs[0] = np.nan  # every score NaN: no box
    outputs[1, 2:18] = np.inf  # the chosen cell's corners are inf
    real_pnp, calls = utils.pnp, []

    def flaky_pnp(p3, p2, K, method="iterative"):
        calls.append(1)
        if len(calls) == 6:  # object 3's prediction (objects 0 and 1 skip PnP on non-finite points)
            raise cv2.error("solvePnP did not converge")
        return real_pnp(p3, p2, K, method)

    monkeypatch.setattr(utils, "pnp", flaky_pnp)
    loader = dataset.make_test_loader(dataset.listDataset(test_set.paths * 3, shape=(64, 64)), batch_size=2)
    summary, rec = evaluation.evaluate(Replay(outputs), loader, setup)
    assert summary["n"] == 6 and summary["n_failed"] == 3
    np.testing.assert_array_equal(rec["failed"], [True, True, False, True, False, False])
    assert np.all(np.isinf(rec["err_2d"][rec["failed"]])) and np.all(np.isnan(rec["R_pr"][0]))
    assert rec["err_corner"][3] < 1e-3  # the points were fine, only PnP failed
    for k in ("acc_2d", "acc_add", "acc_5cm5deg"):
        assert summary[k] == utils.accuracy(3, 6), k
    assert summary["acc_corner"] == utils.accuracy(4, 6)
    assert math.isfinite(summary["mean_err_2d"]) and summary["mean_err_2d"] < 1e-3
    evaluation.report(summary)
    assert "3 of 6 objects counted as misses" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# The real network, the CLI, its files and errors
# --------------------------------------------------------------------------------------------

def test_real_network_batched_equals_batch1_and_adds_le_add(synth, trial3_weights, root):
    model = model_loading.load_model(TRIAL3_CFG, trial3_weights, "cpu")
    setup = evaluation.load_eval_setup(synth / "cfg" / "obj01.data")
    test_set = dataset.listDataset(setup.valid_list, shape=(TEST_SIZE, TEST_SIZE))
    s1, r1 = evaluation.evaluate(model, dataset.make_test_loader(test_set, 1), setup)
    s2, r2 = evaluation.evaluate(model, dataset.make_test_loader(test_set, 2), setup)
    # the same per-image boxes; only the batch's conv kernels may differ in the last float32 bits
    # (about 1e-6 in the raw output at this size on CPU: 1e-4 px after decoding)
    np.testing.assert_allclose(r1["pr_px"], r2["pr_px"], atol=1e-3)
    np.testing.assert_array_equal(r1["gt_px"], r2["gt_px"])
    for k in (*evaluation.ERROR_KEYS, "R_pr", "t_pr"):
        np.testing.assert_allclose(r1[k], r2[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for k in ("acc_2d", "acc_add", "acc_adds", "acc_5cm5deg", "acc_corner", "n", "n_failed"):
        assert s1[k] == s2[k], k
    ok = np.isfinite(r1["err_add"])
    assert np.all(r1["err_adds"][ok] <= r1["err_add"][ok] + 1e-12)
    assert s1["images"] == 2 and s1["time_forward"] > 0 and s1["images_per_s"] > 0


def test_fused_evaluation_equals_the_eager_network(synth, trial3_weights):
    model = model_loading.load_model(TRIAL3_CFG, trial3_weights, "cpu")
    setup = evaluation.load_eval_setup(synth / "cfg" / "obj00.data")
    test_set = dataset.listDataset(setup.valid_list, shape=(TEST_SIZE, TEST_SIZE))
    for rule in utils.BOX_RULES:
        _, fused = evaluation.evaluate(model, dataset.make_test_loader(test_set, 2), setup, box_rule=rule)
        _, eager = evaluation.evaluate(model, dataset.make_test_loader(test_set, 2), setup, box_rule=rule, fuse=False)
        # outputs equal to 1e-4 (test_darknet): at most a few thousandths of a pixel after decoding
        np.testing.assert_allclose(fused["pr_px"], eager["pr_px"], atol=2e-2)
        np.testing.assert_allclose(fused["conf"], eager["conf"], atol=1e-4)
    assert not model.fused and not model.training  # evaluate fuses a copy


def _info_weights(tmp_path, trial3_weights, **info):
    """A copy of the weights with a model_info.json beside it (keys overridden by **info)."""
    import model_info

    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    shutil.copy(trial3_weights, folder / "model.weights")
    path = model_info.write_info(folder, TRIAL3_CFG, TEST_SIZE, "vote")
    if info:
        data = json.loads(path.read_text())
        data.update(info)
        path.write_text(json.dumps(data))
    return folder / "model.weights"


def test_the_trained_size_and_rule_travel_with_the_weights(synth, trial3_weights, tmp_path):
    weights = _info_weights(tmp_path, trial3_weights)
    (s,) = cli(synth / "cfg" / "obj00.data", TRIAL3_CFG, weights, "--quiet")
    assert s["test_size"] == [TEST_SIZE, TEST_SIZE] and s["box_rule"] == "vote"
    (flags,) = cli(synth / "cfg" / "obj00.data", TRIAL3_CFG, weights, "--quiet", "--test-size", 96,
                   "--box-rule", "max")  # the command line wins
    assert flags["test_size"] == [96, 96] and flags["box_rule"] == "max"
    (plain,) = cli(synth / "cfg" / "obj00.data", TRIAL3_CFG, trial3_weights, "--quiet")  # no file: the cfg's
    assert plain["test_size"] == [416, 416] and plain["box_rule"] == "max"


def test_the_input_filter_travels_with_the_weights_and_changes_what_the_network_sees(synth, trial3_weights, tmp_path):
    weights = _info_weights(tmp_path, trial3_weights, input_filter="gauss:2.5")
    args = (synth / "cfg" / "obj00.data", TRIAL3_CFG, weights, "--quiet", "--json")
    (blurred,) = cli(*args, tmp_path / "b.json", "--save-predictions", tmp_path / "b")
    (sharp,) = cli(*args, tmp_path / "s.json", "--save-predictions", tmp_path / "s", "--input-filter", "none")  # wins
    (median,) = cli(*args, tmp_path / "m.json", "--save-predictions", tmp_path / "m", "--input-filter", "median:5")
    assert blurred["input_filter"] == "gauss:2.5" and sharp["input_filter"] == "none"
    assert median["input_filter"] == "median:5"
    b, s = np.load(tmp_path / "b" / "predictions_obj00.npz"), np.load(tmp_path / "s" / "predictions_obj00.npz")
    m = np.load(tmp_path / "m" / "predictions_obj00.npz")
    assert not np.allclose(b["pr_px"], s["pr_px"]) and not np.allclose(m["pr_px"], s["pr_px"])
    (tmp_path / "old").mkdir()
    old = _info_weights(tmp_path / "old", trial3_weights)  # a file from before the field: no filter
    info = json.loads((old.parent / "model_info.json").read_text())
    del info["input_filter"]
    (old.parent / "model_info.json").write_text(json.dumps(info))
    (o,) = cli(synth / "cfg" / "obj00.data", TRIAL3_CFG, old, "--quiet", "--json", tmp_path / "o.json",
               "--save-predictions", tmp_path / "o")
    assert o["input_filter"] == "none" and o["test_size"] == [TEST_SIZE, TEST_SIZE] and o["box_rule"] == "vote"
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "predictions_obj00.npz")["pr_px"], s["pr_px"])


@pytest.mark.parametrize("value", ["median:4", "median:17", "median", "gauss:0", "gauss:21", "gauss:nan", "box:3",
                                   "none:1"])
def test_an_input_filter_it_cannot_apply_is_a_flag_error(synth, trial3_weights, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: valid.main(valid.get_args_parser().parse_args(argv)),
                [str(synth / "cfg" / "obj00.data"), TRIAL3_CFG, str(trial3_weights), "--input-filter", value],
                prog="valid.py")
    assert exit_.value.code == 2
    assert (f"--input-filter {value}: expected none, median:K (K odd, 3 to 15) or gauss:SIGMA (0 to 20 pixels)"
            in capsys.readouterr().err)


@pytest.mark.parametrize("change, message", [
    ({"input_filter": "median:6"}, "input_filter = 'median:6': expected none, median:K (K odd, 3 to 15)"),
    ({"input_filter": 5}, "input_filter = 5: expected a string"),
    ({"test_size": 100}, "test_size = 100 is out of range; expected a multiple of 32 from 32 to 4096"),
    ({"test_size": 10**6}, "test_size = 1000000 is out of range"),  # issue 36: it ran out of memory
    ({"box_rule": "median"}, "box_rule = 'median'"),
    ({"format": 7}, '"format": 1'),
    ({"cfg_sha256": "0" * 64}, "written for"),
    (None, "not readable JSON"),
])
def test_a_bad_model_info_warns_and_falls_back_to_the_cfg(synth, trial3_weights, tmp_path, change, message):
    weights = _info_weights(tmp_path, trial3_weights, **(change or {}))
    if change is None:
        (weights.parent / "model_info.json").write_text("{not json")
    with pytest.warns(UserWarning, match=re.escape(message)) as caught:
        (s,) = cli(synth / "cfg" / "obj00.data", TRIAL3_CFG, weights, "--quiet", "--test-size", TEST_SIZE)
    assert "model_info.json" in str(caught[0].message)
    assert s["test_size"] == [TEST_SIZE, TEST_SIZE] and s["box_rule"] == "max" and s["input_filter"] == "none"


def test_csv_append_keeps_one_header(synth, trial3_weights, tmp_path, capsys):
    out = tmp_path / "valid_metrics.csv"
    args = [synth / "cfg" / "obj00.data", TRIAL3_CFG, trial3_weights, "--test-size", TEST_SIZE, "--quiet", "--csv", out]
    s1 = cli(*args)[0]
    s2 = cli(*args)[0]
    cli(*args, "--distiled", "1")  # the fork's file name for distilled students
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["model", "object", "2d_projection", "3d_transformation"] and len(rows) == 3
    assert rows[1] == rows[2] == ["yolo-lite-trial3-pose", "obj00", repr(s1["acc_2d"]), repr(s1["acc_add"])]
    assert s1["acc_2d"] == s2["acc_2d"]
    assert len(list(csv.reader((tmp_path / "valid_metrics_distilling.csv").open()))) == 2
    # the fork's committed CSVs have their columns sorted: appending follows the file's order
    old = tmp_path / "old.csv"
    old.write_text("2d_projection,3d_transformation,model,object\n1.0,2.0,m,ape\n")
    linemod_format.append_csv(old, {"model": "m2", "object": "cat", "2d_projection": 3.0, "3d_transformation": 4.0})
    assert old.read_text().splitlines()[-1] == "3.0,4.0,m2,cat"
    bad = tmp_path / "other.csv"
    bad.write_text("epoch,acc\n1,2\n")
    with pytest.raises(InputError, match=r"other\.csv: its header \['epoch', 'acc'\] has other columns"):
        linemod_format.append_csv(bad, {"model": "m"})


def test_all_prints_per_object_rows_and_the_mean(synth, trial3_weights, tmp_path, capsys):
    summaries = cli("--all", synth / "cfg", "--modelcfg", TRIAL3_CFG, "--weightfile", trial3_weights,
                    "--test-size", TEST_SIZE, "--batch-size", 2, "--quiet", "--json", tmp_path / "all.json")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert [ln.split(" | ")[0][2:] for ln in lines] == ["object", "obj00", "obj01", "mean"]
    assert [s["object"] for s in summaries] == ["obj00", "obj01"]
    payload = json.loads((tmp_path / "all.json").read_text())
    mean = payload["mean"]
    assert mean["acc_2d"] == pytest.approx((summaries[0]["acc_2d"] + summaries[1]["acc_2d"]) / 2)
    assert mean["mean_err_2d"] == pytest.approx((summaries[0]["mean_err_2d"] + summaries[1]["mean_err_2d"]) / 2)
    assert mean["n"] == 4
    assert f"| mean | 4 | {mean['acc_2d']:.2f} | {mean['acc_add']:.2f} |" in lines[-1]
    assert (tmp_path / "curves_obj00.png").is_file() and (tmp_path / "curves_obj01.png").is_file()


def test_all_with_name_template_and_skip_missing(synth, trial3_weights, tmp_path, capsys):
    (tmp_path / "obj00").mkdir()
    shutil.copy(trial3_weights, tmp_path / "obj00" / "model.weights")
    template = str(tmp_path / "{name}" / "model.weights")
    # obj01 has no weights: nothing is evaluated, not even obj00, which comes first
    with pytest.raises(InputError, match=r"weights file not found: .*obj01/model\.weights"):
        cli("--all", synth / "cfg", "--modelcfg", TRIAL3_CFG, "--weightfile", template, "--test-size", TEST_SIZE)
    assert "Testing obj00" not in capsys.readouterr().out
    summaries = cli("--all", synth / "cfg", "--modelcfg", TRIAL3_CFG, "--weightfile", template, "--quiet",
                    "--skip-missing", "--test-size", TEST_SIZE)
    assert [s["object"] for s in summaries] == ["obj00"]
    assert "skipping obj01: weights file not found" in capsys.readouterr().out


@pytest.fixture
def no_loop(monkeypatch):
    """Fail if the evaluation loop is reached: bad inputs must stop before it."""
    def fail(*a, **k):
        raise AssertionError("the evaluation loop started")
    monkeypatch.setattr(valid, "evaluate", fail)


def test_bad_inputs_stop_before_the_loop_with_clear_errors(synth, trial3_weights, root, tmp_path, no_loop):
    data = synth / "cfg" / "obj00.data"
    cases = []
    bad_cfg = synth / "bad_cfg"  # beside cfg/, so that the relative paths resolve against the root
    bad_cfg.mkdir(exist_ok=True)
    # missing mesh
    no_mesh = bad_cfg / "no_mesh.data"
    no_mesh.write_text(data.read_text().replace("obj00.ply", "missing.ply"))
    cases.append(([no_mesh, TRIAL3_CFG, trial3_weights], r"no_mesh\.data: mesh file not found: .*missing\.ply"))
    # empty test list
    (tmp_path / "empty.txt").write_text("\n")
    empty = bad_cfg / "empty.data"
    empty.write_text(data.read_text().replace("valid = LINEMOD/obj00/test.txt", f"valid = {tmp_path / 'empty.txt'}"))
    cases.append(([empty, TRIAL3_CFG, trial3_weights], r"empty\.txt: the image list is empty"))
    # weights of another network: trial 3 weights into the Tiny-YOLOv2 pose cfg
    cases.append(([data, root / "cfg" / "tiny-yolo-pose.cfg", trial3_weights],
                  r"trial3\.weights does not fit .*cfg/tiny-yolo-pose\.cfg: the file holds 547204 floats, "
                  r"the cfg needs 15760260"))
    # a backbone-only file ending exactly at a layer boundary would load silently without the check
    short = tmp_path / "short.weights"
    short.write_bytes(trial3_weights.read_bytes()[:-4 * (20 + 20 * 256)])
    cases.append(([data, TRIAL3_CFG, short],
                  r"short\.weights does not fit .*holds 542064 floats, the cfg needs 547204"))
    # the VOC file (125-filter head)
    cases.append(([data, TRIAL3_CFG, root / "weights" / "tiny-yolov2-trial3-voc.weights"], r"does not fit"))
    cases.append(([data, TRIAL3_CFG, tmp_path / "nope.weights"], r"weights file not found: .*nope\.weights"))
    # a cfg whose head does not match its [region]: 20 filters but 2 classes
    two_classes = tmp_path / "two_classes.cfg"
    two_classes.write_text(Path(TRIAL3_CFG).read_text().replace("classes=1", "classes=2"))
    cases.append(([data, two_classes, trial3_weights], r"two_classes\.cfg: the output has 20 channels; \[region\] "
                                                        r"num=1, classes=2 and num_keypoints=9 need 21"))
    cases.append(([data, tmp_path / "nope.cfg", trial3_weights], r"model cfg not found: .*nope\.cfg"))
    cases.append(([tmp_path / "nope.data", TRIAL3_CFG, trial3_weights], r"nope\.data: data cfg not found"))
    cases.append(([data, TRIAL3_CFG, trial3_weights, "--test-size", "100"],
                  r"--test-size must be a positive multiple of 32"))
    cases.append(([data, TRIAL3_CFG, trial3_weights, "extra"], r"at most three positional arguments"))
    cases.append(([data, TRIAL3_CFG, trial3_weights, "--datacfg", data], r"datacfg given twice"))
    (tmp_path / "no_data").mkdir()
    cases.append((["--all", tmp_path / "no_data"], r"--all .*no_data: no \.data files there"))
    # bad .data values (issue 16): each names the file and the key or line
    for name, edit, message in [
        ("diam", "diam = big", r"diam\.data: diam = 'big'; expected a positive finite number"),
        ("diam0", "diam = 0", r"diam0\.data: diam = '0'; expected a positive"),
        ("width", "width = abc", r"width\.data: width = 'abc'; expected a positive whole number"),
        ("fx", "fx = -572.4", r"fx\.data: fx = '-572.4'; expected a positive finite number"),
        ("noeq", "this line has no equals sign", r"noeq\.data:\d+: expected 'key = value'"),
    ]:
        f = bad_cfg / f"{name}.data"
        f.write_text(data.read_text() + edit + "\n")
        cases.append(([f, TRIAL3_CFG, trial3_weights], message))
    # bad weights: header only, truncated inside a layer, NaN values
    header_only = tmp_path / "header.weights"
    header_only.write_bytes(trial3_weights.read_bytes()[:16])
    cases.append(([data, TRIAL3_CFG, header_only], r"header\.weights does not fit .*holds 0 floats"))
    cut = tmp_path / "cut.weights"
    cut.write_bytes(trial3_weights.read_bytes()[:-10])
    cases.append(([data, TRIAL3_CFG, cut],
                  r"cut\.weights: 2188806 bytes after the 16-byte header is not a whole number"))
    nan = tmp_path / "nan.weights"
    payload = np.frombuffer(trial3_weights.read_bytes()[16:], "<f4").copy()
    payload[-1] = np.nan
    nan.write_bytes(trial3_weights.read_bytes()[:16] + payload.tobytes())
    cases.append(([data, TRIAL3_CFG, nan], r"nan\.weights: layer 11 \(convolutional\) would get 1 NaN or inf"))
    # a bad cfg value
    bad_width = tmp_path / "width.cfg"
    bad_width.write_text(Path(TRIAL3_CFG).read_text().replace("width=416", "width=abc", 1))
    cases.append(([data, bad_width, trial3_weights], r"width\.cfg:\d+: \[net\]: width='abc': expected an integer"))
    # an existing CSV with other columns stops before the first object, not after it
    other_csv = tmp_path / "other.csv"
    other_csv.write_text("epoch,acc\n")
    cases.append(([data, TRIAL3_CFG, trial3_weights, "--csv", other_csv], r"other\.csv: its header"))
    for argv, message in cases:
        with pytest.raises(InputError, match=message):
            cli(*argv)


def test_bad_labels_stop_before_the_loop_and_empty_ones_warn(synth, trial3_weights, tmp_path, no_loop):
    """valid.py dropped test images with empty labels without a word (issue 16)."""
    root = tmp_path / "copy"
    shutil.copytree(synth / "LINEMOD" / "obj00", root / "LINEMOD" / "obj00")
    shutil.copytree(synth / "cfg", root / "cfg")
    data = root / "cfg" / "obj00.data"
    paths = linemod_format.read_list(root / "LINEMOD" / "obj00" / "test.txt")
    labels = [Path(linemod_format.label_path(p)) for p in paths]
    good = labels[0].read_text()
    labels[0].write_text("")
    labels[1].write_text("\n")
    with pytest.warns(UserWarning, match=rf"test\.txt: 2 of {len(paths)} test images have an empty label file "
                                         rf"\(first: .*{labels[0].name}\); they have no object to score"):
        with pytest.raises(AssertionError, match="the evaluation loop started"):
            cli(data, TRIAL3_CFG, trial3_weights, "--quiet")
    labels[0].write_text(good.replace(good.split()[1], "320.5", 1))  # pixels instead of normalised
    with pytest.raises(InputError, match=rf"{labels[0].name}:1: x0 = 320.5 is more than 10 image sizes outside"):
        cli(data, TRIAL3_CFG, trial3_weights, "--quiet")


def test_positional_form_equals_the_flags(synth, trial3_weights, tmp_path, capsys):
    data = synth / "cfg" / "obj01.data"
    a = cli(data, TRIAL3_CFG, trial3_weights, "--test-size", TEST_SIZE, "--quiet")[0]
    b = cli("--datacfg", data, "--modelcfg", TRIAL3_CFG, "--weightfile", trial3_weights, "--test-size", TEST_SIZE,
            "--quiet", "--backupdir", tmp_path / "backup")[0]
    for k in ("acc_2d", "acc_add", "mean_err_2d", "mean_err_corner", "n"):
        assert a[k] == b[k], k
    assert a["test_size"] == [TEST_SIZE, TEST_SIZE] and a["weights"] == str(trial3_weights)
    # the curves go next to the weights, or into the fork's --backupdir
    assert a["curves"] == str(trial3_weights.parent / "curves_obj01.png")
    assert b["curves"] == str(tmp_path / "backup" / "curves_obj01.png") and Path(b["curves"]).is_file()


# --------------------------------------------------------------------------------------------
# The notebook
# --------------------------------------------------------------------------------------------

def test_notebook_is_committed_clean_and_executes(synth, trial3_weights, root, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(root / "valid.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "commit it with outputs cleared"
    monkeypatch.setenv("SSP_NB_DATA", str(synth / "cfg" / "obj00.data"))
    monkeypatch.setenv("SSP_NB_WEIGHTS", str(trial3_weights))
    monkeypatch.setenv("SSP_NB_TEST_SIZE", str(TEST_SIZE))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(root)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Results of obj00" in text and f"weights: {trial3_weights}" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 4  # the test images with their boxes, the histograms, the curves


def test_save_predictions_is_atomic(tmp_path, monkeypatch):
    """--save-predictions: a failed write leaves the old file whole and no temporary file."""
    records = {k: np.zeros(2) for k in evaluation.RECORD_KEYS}
    records["image_index"] = np.arange(2)
    path = tmp_path / "predictions_x.npz"
    evaluation.save_predictions(path, records, ["a.jpg", "b.jpg"])
    before = path.read_bytes()

    def torn(f, **arrays):
        f.write(b"PK half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", torn)
    with pytest.raises(OSError, match="disk full"):
        evaluation.save_predictions(path, records, ["a.jpg", "b.jpg"])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert list(np.load(path)["image"]) == ["a.jpg", "b.jpg"]


def test_all_scores_each_object_once():
    """--all leaves out the OCCLUSION files and the fresh test sets, which test an object already listed."""
    names = ["ape.data", "obj00.data", "obj00_fresh7.data", "occlusion.data", "freshwater.data"]
    assert [n for n in names if not evaluation.skipped_by_all(Path(n))] == ["ape.data", "obj00.data", "freshwater.data"]


# --------------------------------------------------------------------------------------------
# issue 25: outputs, test images and meshes checked before the loop; Ctrl-C is one line
# --------------------------------------------------------------------------------------------

def _private_copy(synth, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth / "LINEMOD" / "obj00", root / "LINEMOD" / "obj00")
    shutil.copytree(synth / "cfg", root / "cfg")
    return root, root / "cfg" / "obj00.data", linemod_format.read_list(root / "LINEMOD" / "obj00" / "test.txt")


def test_output_paths_are_checked_before_the_loop(synth, trial3_weights, tmp_path, no_loop):
    """Each failed only after the whole evaluation had run."""
    data = synth / "cfg" / "obj00.data"
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for flags, message in [
        (["--json", tmp_path], r"--json .*: is a folder; expected a file name"),
        (["--csv", a_file / "m.csv"], r"--csv .*a_file: is a file; expected a folder"),
        (["--save-predictions", a_file], r"--save-predictions .*a_file: is a file; expected a folder"),
    ]:
        with pytest.raises(InputError, match=message):  # cannot evaluate: --json ...
            cli(data, TRIAL3_CFG, trial3_weights, "--quiet", *flags)


def test_hostile_test_images_stop_before_the_loop(synth, trial3_weights, tmp_path, no_loop):
    root, data, paths = _private_copy(synth, tmp_path)
    hostile.bomb_png(paths[0])
    hostile.rgb(paths[1], size=(1, 1))
    lst = root / "LINEMOD" / "obj00" / "test.txt"
    good_list = lst.read_text()
    pipe = hostile.fifo(Path(paths[0]).with_name("999999.jpg"))  # reading it waited forever
    lst.write_text(good_list + f"{pipe}\n")
    with pytest.raises(InputError) as err:
        cli(data, TRIAL3_CFG, trial3_weights, "--quiet")
    text = str(err.value)
    assert f"{pipe}: image is not a regular file (a folder, FIFO or device)" in text
    assert f"{paths[0]}: image is too large to decode" in text
    assert f"{paths[1]}: image is 1x1, expected 640x480 (the width and height of {data})" in text
    hostile.rgb(paths[0], size=(640, 480))
    hostile.rgb(paths[1], size=(640, 480))
    lst.write_text(good_list + good_list.splitlines()[-1] + "\n")  # the last image twice
    with pytest.warns(UserWarning, match=r"test\.txt: 1 of \d+ entries are listed more than once, so they are "
                                         r"scored more than once"):
        with pytest.raises(AssertionError, match="the evaluation loop started"):
            cli(data, TRIAL3_CFG, trial3_weights, "--quiet")


def test_a_mesh_that_gives_no_pose_is_refused(synth, tmp_path):
    """Identical vertices made every pose a miss, the mesh never named."""
    root, data, _ = _private_copy(synth, tmp_path)
    mesh = root / "LINEMOD" / "obj00" / "obj00.ply"
    write_ply(mesh, np.zeros((5, 3)), np.array([[0, 1, 2]]))
    with pytest.raises(MeshError, match=r"obj00\.ply: the mesh's bounding box is 0 x 0 x 0 \(m\) over 5 vertices"):
        evaluation.load_eval_setup(data)


def test_ctrl_c_is_one_line_and_status_130(synth, trial3_weights, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(valid, "evaluate", interrupted)
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: valid.main(valid.get_args_parser().parse_args(argv)),
                [str(synth / "cfg" / "obj00.data"), TRIAL3_CFG, str(trial3_weights), "--quiet"], prog="valid.py")
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert err.endswith("valid.py: interrupted\n") and "Traceback" not in err


def test_an_image_cut_half_way_is_refused_by_the_pre_flight_in_one_line(synth, trial3_weights, tmp_path, capsys,
                                                                        monkeypatch):
    """Its header is fine, its pixels fail to decode: the pre-flight decodes every image once, so it
    stops before the loop (a DataLoader worker used to meet it, with its whole traceback)."""
    _, data, paths = _private_copy(synth, tmp_path)
    full = Path(paths[0]).read_bytes()
    Path(paths[0]).write_bytes(full[:len(full) // 3])  # the header and a third of the pixels
    monkeypatch.setattr(valid, "evaluate", lambda *a, **k: pytest.fail("the evaluation loop started"))
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: valid.main(valid.get_args_parser().parse_args(argv)),
                [str(data), TRIAL3_CFG, str(trial3_weights), "--quiet", "--workers", "1",
                 "--test-size", str(TEST_SIZE)], prog="valid.py")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-2] == "valid.py: error: cannot evaluate:"  # the pre-flight's report
    assert err.splitlines()[-1].strip().startswith(f"{paths[0]}: cannot read image (image file is truncated")
    assert "Traceback" not in err and "DataLoader worker" not in err
