"""tools/mesh_ablation.py: the render-to-photo levers, one at a time at equal images (design §7.7)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import stats
from errors import InputError, OverwriteError
from tools import mesh_ablation as ma

GT_PX = np.tile(np.array([[50.0, 50.0], [40.0, 30.0], [60.0, 70.0]])[None], (4, 1, 1))


def write_scored(folder: Path, name: str, err_2d, centroids) -> None:
    """A valid.py --json file and its predictions for one object's frames."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(err_2d)
    (folder / f"{name}.json").write_text(json.dumps({"objects": [{"object": name, "n": n, "add_threshold": 0.01}]}))
    pr = GT_PX[:n].copy()
    pr[:, 0] = centroids
    np.savez(folder / f"predictions_{name}.npz", err_2d=np.asarray(err_2d, float), err_add=np.full(n, 0.1),
             conf=np.full(n, 0.9), gt_px=GT_PX[:n], pr_px=pr)


def write_run(out: Path, backup_root: Path, lever: str, name: str, real_err, real_centroids, seen=16200):
    write_scored(out / lever, name, real_err, real_centroids)
    write_scored(out / lever / "synth", name, [1.0, 2.0, 30.0, 4.0], [[50, 50]] * 4)
    (backup_root / lever / name).mkdir(parents=True, exist_ok=True)
    (backup_root / lever / name / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "seen": k, "minutes": 5.0 * e, "acc_2d_5px": 1.0}) + "\n"
                for e, k in ((2, seen // 2), (11, seen))))


def test_a_lever_is_a_name_and_the_flags_it_adds():
    assert ma.parse_lever("baseline=") == ("baseline", [])
    assert ma.parse_lever("more_distractors=--distractors 4,12 --occluders '0,2'") == (
        "more_distractors", ["--distractors", "4,12", "--occluders", "0,2"])
    for bad in ("no-equals", "../up=--x 1", "=--distractors 4,12", "a b=--x"):
        with pytest.raises(InputError, match="expected NAME=FLAGS"):
            ma.parse_lever(bad)


def test_the_training_command_is_the_mesh_command_with_the_levers_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(ma, "BACKUP_ROOT", tmp_path / "bk")
    argv = ma.train_argv(tmp_path / "real", "ape", "lights", ["--ambient", "0.5,0.8"], 1500, resume=False)
    assert argv[0] == sys.executable and argv[1].endswith("train.py")
    assert argv[2:] == ["--mesh", str(tmp_path / "real/meshes/ape.ply"), "--mesh-units", "mm", "--camera-data",
                        str(tmp_path / "real/ape.data"), "--images-per-object", "1500", "--backupdir",
                        str(tmp_path / "bk/lights/ape"), "--ambient", "0.5,0.8"]
    assert ma.train_argv(tmp_path / "real", "ape", "lights", [], 1500, resume=True)[-1] == "--resume"


def test_one_run_trains_then_scores_the_real_frames_and_the_renders_and_a_second_call_skips_it(tmp_path,
                                                                                               monkeypatch):
    monkeypatch.setattr(ma, "BACKUP_ROOT", tmp_path / "bk")
    real, out = tmp_path / "real", tmp_path / "out"
    calls = []

    def fake_run(argv, log, cwd):
        calls.append((Path(argv[1]).name, Path(cwd), argv))
        if argv[1].endswith("train.py"):
            backup = Path(argv[argv.index("--backupdir") + 1])
            backup.mkdir(parents=True)
            (backup / "model_info.json").write_text(json.dumps({"modelcfg": "cfg/yolo-lite-trial3-pose.cfg"}))
            log.write_text("score it on the rendered test split:\n  python valid.py --datacfg data/mesh/ape_0a/cfg/"
                           "ape.data --modelcfg cfg/yolo-lite-trial3-pose.cfg --weightfile x\n")
        else:
            Path(argv[argv.index("--json") + 1]).write_text("{}")
        return ""

    monkeypatch.setattr(ma, "run_logged", fake_run)
    ma.run_one(real, out, "baseline", [], "ape", 1500)
    assert [(script, cwd) for script, cwd, _ in calls] == [("train.py", ma.ROOT), ("valid.py", real),
                                                             ("valid.py", ma.ROOT)]
    real_argv, synth_argv = calls[1][2], calls[2][2]
    assert real_argv[real_argv.index("--datacfg") + 1] == "ape.data"  # the real .data, read in its folder
    assert synth_argv[synth_argv.index("--datacfg") + 1] == "data/mesh/ape_0a/cfg/ape.data"
    assert synth_argv[synth_argv.index("--modelcfg") + 1] == str(ma.ROOT / "cfg/yolo-lite-trial3-pose.cfg")
    assert synth_argv[synth_argv.index("--weightfile") + 1] == str(tmp_path / "bk/baseline/ape/model.weights")
    calls.clear()
    ma.run_one(real, out, "baseline", [], "ape", 1500)
    assert calls == []  # finished: nothing runs again


def test_the_table_pools_the_objects_real_frames_with_one_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(ma, "BACKUP_ROOT", tmp_path / "bk")
    out = tmp_path / "out"
    inside, outside = [50, 50], [200, 200]
    write_run(out, tmp_path / "bk", "baseline", "ape", [5.0, 15.0, 25.0, 300.0], [inside, inside, inside, outside])
    write_run(out, tmp_path / "bk", "baseline", "can", [8.0, 400.0, 500.0, 600.0], [inside, outside, outside, outside])
    row = ma.lever_row(out, "baseline", [], ["ape", "can"])
    assert row["n_real"] == 8 and row["images_seen"] == {"ape": 16200, "can": 16200}
    assert row["acc_10px"] == pytest.approx(100 * 2 / 8) and row["acc_20px"] == pytest.approx(100 * 3 / 8)
    assert row["on_object"] == pytest.approx(100 * 4 / 8)
    assert row["acc_10px_ci95"] == pytest.approx(list(stats.binomial_interval(25.0, 8)))
    assert row["median_err_2d"] == {"ape": pytest.approx(20.0), "can": pytest.approx(450.0)}
    assert row["rendered_acc_10px"] == pytest.approx(75.0)
    table = ma.markdown([row, {**row, "lever": "more", "flags": "--distractors 4,12"}])
    lines = table.splitlines()
    assert lines[2] == ("| baseline | (defaults) | 16,200 | 25.0 [7, 59] | 37.5 [14, 69] | 50.0 [22, 78] | "
                        "ape 20, can 450 | 75.0 [41, 93] |")  # 75 % of 8: the mirror of 25 %
    assert lines[3].startswith("| more | `--distractors 4,12` | 16,200 |")


def test_bad_inputs_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(ma, "BACKUP_ROOT", tmp_path / "bk")
    (tmp_path / "real" / "meshes").mkdir(parents=True)
    with pytest.raises(InputError, match=r"meshes/ape.ply: not found \(--real-dir .*, object ape\)"):
        ma.main(["--real-dir", str(tmp_path / "real"), "--objects", "ape", "--lever", "baseline=",
                 "--out", str(tmp_path / "out")])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "table.md").write_text("mine")
    with pytest.raises(OverwriteError, match="table.md: exists; pass --overwrite"):
        ma.main(["--real-dir", str(tmp_path / "real"), "--objects", "ape", "--lever", "baseline=",
                 "--out", str(tmp_path / "out"), "--table-only"])
    assert (tmp_path / "out" / "table.md").read_text() == "mine"
    (tmp_path / "bk" / "baseline" / "ape").mkdir(parents=True)
    metrics = tmp_path / "bk" / "baseline" / "ape" / "metrics.jsonl"
    metrics.write_text("")
    with pytest.raises(InputError, match="metrics.jsonl: no evaluation rows"):
        ma.images_seen(metrics)
    metrics.write_text(json.dumps({"epoch": 11, "minutes": 3.0, "acc_2d_5px": 1.0}) + "\n")
    with pytest.raises(InputError, match=r"metrics.jsonl: no images-seen count \('seen'\) in its last row"):
        ma.images_seen(metrics)


def test_the_committed_ablation_table_is_the_tools_table_of_its_record(root):
    """docs/results.md shows markdown() of docs/results/real_lmo/ablation/table.json, not a table typed by hand."""
    folder = root / "docs/results/real_lmo/ablation"
    rows = json.loads((folder / "table.json").read_text())
    assert rows[0]["lever"] == "baseline" and rows[0]["flags"] == ""
    assert len({s for r in rows for s in r["images_seen"].values()}) == 1  # equal images, every lever
    table = ma.markdown(rows)
    assert table == (folder / "table.md").read_text()
    assert table in (root / "docs/results.md").read_text()
