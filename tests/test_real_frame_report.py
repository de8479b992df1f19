"""tools/real_frame_report.py: the real-frame table of a model trained from a mesh (design §7.7)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import stats
from errors import InputError, OverwriteError
from tools import real_frame_report as rfr

ERR_2D = np.array([1.0, 5.0, 6.0, 12.0, 20.0, np.inf])  # the last a miss: no box, infinite errors
ERR_ADD = np.array([0.001, 0.02, 0.05, 0.2, 0.3, np.inf])
CONF = np.array([0.9, 0.6, 0.04, 0.3, np.nan, 0.2])
GT_PX = np.tile(np.array([[50.0, 50.0], [40.0, 30.0], [60.0, 70.0]])[None], (6, 1, 1))  # extent x 40-60, y 30-70
PR_PX = GT_PX.copy()
PR_PX[:, 0] = [[50, 50], [40, 70], [39.9, 50], [50, 70.1], [300, 10], [np.nan, np.nan]]  # in, edge, out x3, none


def test_a_box_is_on_the_object_when_its_centroid_is_inside_the_ground_truth_extent():
    assert rfr.on_object(GT_PX, PR_PX).tolist() == [True, True, False, False, False, False]


def test_frame_summary_on_fixed_frames():
    row = rfr.frame_summary(ERR_2D, ERR_ADD, CONF, add_threshold=0.0102)
    assert row["n"] == 6
    assert row["acc_5px"] == pytest.approx(200 / 6)  # <= the threshold counts, as valid.py's
    assert row["acc_10px"] == pytest.approx(300 / 6) and row["acc_20px"] == pytest.approx(500 / 6)
    assert row["acc_add"] == pytest.approx(100 / 6)
    assert row["acc_10px_ci95"] == pytest.approx(list(stats.binomial_interval(50.0, 6)))
    assert row["acc_10px_ci95"] == pytest.approx([18.76, 81.24], abs=0.01)  # Wilson, n = 6
    assert row["mean_err_2d"] == pytest.approx(44 / 5)  # over the finite errors
    assert row["median_err_2d"] == pytest.approx(6.0)
    assert row["mean_err_2d_ci95"] == pytest.approx(list(stats.t_interval([1, 5, 6, 12, 20])))
    assert row["no_detection"] == 2  # conf 0.04 < utils.MULTI_CONF_THRESH, and a NaN confidence
    assert "on_object" not in row
    found = rfr.on_object(GT_PX, PR_PX)
    row = rfr.frame_summary(ERR_2D, ERR_ADD, CONF, add_threshold=0.0102, found=found)
    assert row["on_object"] == pytest.approx(200 / 6)
    assert row["on_object_ci95"] == pytest.approx(list(stats.binomial_interval(200 / 6, 6)))
    with pytest.raises(ValueError, match="no frames"):
        rfr.frame_summary(ERR_2D[:0], ERR_ADD[:0], CONF[:0], 0.01)


def write_scored(folder, name="ape", n=6, arrays=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "v.json").write_text(json.dumps({"objects": [{"object": name, "n": n, "add_threshold": 0.0102}]}))
    arrays = {"gt_px": GT_PX, "pr_px": PR_PX, **(arrays or {"err_2d": ERR_2D, "err_add": ERR_ADD, "conf": CONF})}
    np.savez(folder / f"predictions_{name}.npz", **arrays)
    return folder / "v.json"


def test_report_of_two_objects_with_the_mean(tmp_path, capsys):
    a = write_scored(tmp_path / "a", "ape")
    c = write_scored(tmp_path / "c", "can", arrays={"err_2d": np.full(6, 3.0), "err_add": ERR_ADD, "conf": CONF})
    rows = rfr.main([str(a), str(c), "--out-file", str(tmp_path / "t.md"), "--json", str(tmp_path / "t.json")])
    assert [r["object"] for r in rows] == ["ape", "can", "mean"]
    assert rows[2]["acc_10px"] == pytest.approx((50.0 + 100.0) / 2) and rows[2]["n"] == 12
    table = (tmp_path / "t.md").read_text()
    assert table == capsys.readouterr().out
    assert "| ape | 6 | 33.3 [10, 70] | 50.0 [19, 81] | 83.3 [44, 97] | 16.7 [3, 56] | 8.8 [" in table
    assert table.splitlines()[2].endswith("| 2 of 6 | 33.3 [10, 70] |")  # frames with no detection, box on the object
    assert rows[2]["on_object"] == pytest.approx(200 / 6)
    assert json.loads((tmp_path / "t.json").read_text())[1]["acc_5px"] == pytest.approx(100.0)
    with pytest.raises(OverwriteError, match="t.md: exists; pass --overwrite"):
        rfr.main([str(a), "--out-file", str(tmp_path / "t.md")])
    rfr.main([str(a), "--out-file", str(tmp_path / "t.md"), "--overwrite"])
    assert "mean" not in (tmp_path / "t.md").read_text()
    moved = tmp_path / "elsewhere"  # valid.py --save-predictions into another folder than --json
    moved.mkdir()
    (a.parent / "predictions_ape.npz").rename(moved / "predictions_ape.npz")
    (row,) = rfr.main([str(a), "--predictions-dir", str(moved)])
    assert row["acc_10px"] == pytest.approx(50.0)


def test_report_names_a_bad_input(tmp_path):
    with pytest.raises(InputError, match=r"nope.json: valid.py --json file not found"):
        rfr.main([str(tmp_path / "nope.json")])
    (tmp_path / "bad.json").write_text('{"objects": []}')
    with pytest.raises(InputError, match=r"bad.json: not a valid.py --json file"):
        rfr.main([str(tmp_path / "bad.json")])
    v = write_scored(tmp_path / "flat", arrays={"err_2d": ERR_2D, "err_add": ERR_ADD, "conf": CONF,
                                                 "pr_px": PR_PX.reshape(6, -1)})
    with pytest.raises(InputError, match=r"predictions_ape.npz: arrays of shapes .*\(6, 6\).* scored 6 frames"):
        rfr.main([str(v)])
    v = write_scored(tmp_path / "short", n=7)
    with pytest.raises(InputError, match=r"predictions_ape.npz: arrays of shapes .* scored 7 frames"):
        rfr.main([str(v)])
    (tmp_path / "short" / "predictions_ape.npz").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(InputError, match=r"predictions_ape.npz: not a valid.py predictions file"):
        rfr.main([str(v)])
    (tmp_path / "short" / "predictions_ape.npz").unlink()
    with pytest.raises(InputError, match=r"predictions_ape.npz: predictions not found"):
        rfr.main([str(v)])


def test_the_committed_real_frame_tables_are_the_reports_of_their_records(root):
    """docs/results.md and the README show the tables of docs/results/real_lmo/*.json, not typed by hand."""
    folder = root / "docs/results/real_lmo"
    results, readme = (root / "docs/results.md").read_text(), (root / "README.md").read_text()
    for stem in ("real_frames", "rendered_test"):
        rows = json.loads((folder / f"{stem}.json").read_text())
        table = rfr.markdown(rows)
        assert table == (folder / f"{stem}.md").read_text()
        assert table in results
        for row in rows[:-1]:  # the README's table: each object's 10 px accuracy with its interval
            lo, hi = row["acc_10px_ci95"]
            assert f"| {row['acc_10px']:.1f} [{lo:.0f}, {hi:.0f}] |" in readme, (stem, row["object"])
        for history in ("first_defaults", "upright_neighbours", "sharp_shapes"):  # earlier defaults' figures, kept
            earlier = folder / history / f"{stem}.json"
            assert rfr.markdown(json.loads(earlier.read_text())) == (folder / history / f"{stem}.md").read_text()
            assert rfr.markdown(json.loads(earlier.read_text())) in results


def test_the_readme_states_the_mean_of_its_real_frame_table(root):
    """The README's sentence on the issue's bar is the mean row of the committed record."""
    rows = json.loads((root / "docs/results/real_lmo/real_frames.json").read_text())
    mean = rows[-1]
    assert mean["object"] == "mean" and mean["n"] == 30
    readme = " ".join((root / "README.md").read_text().split())  # line breaks as spaces
    assert (f"**Over the two objects: {mean['acc_10px']:.1f} % of the real frames within 10 px and "
            f"{mean['acc_20px']:.1f} % within 20 px**") in readme
    within_20 = sum(round(r["acc_20px"] * r["n"] / 100) for r in rows[:-1])
    assert f"({within_20} of 30)" in readme
