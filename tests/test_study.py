"""tools/run_study.py end to end with a tiny budget."""
from __future__ import annotations

import csv
import json
import sys

import pytest

from tools import run_study


@pytest.mark.slow
def test_study_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--out", str(out), "--num-objects", "1", "--images-per-object", "6", "--epochs", "1", "--train-size", "64",
            "--batch-size", "4",
            "--students", "trial3", "--modes", "none,fixed", "--device", "cpu", "--workers", "0"]
    rows = run_study.main(run_study.get_args_parser().parse_args(argv))
    assert [(r["run"], r["object"]) for r in rows] == [
        ("teacher", "obj00"), ("teacher", "mean"), ("trial3-none", "obj00"), ("trial3-none", "mean"),
        ("trial3-fixed", "obj00"), ("trial3-fixed", "mean")]
    for r in rows:
        assert 0.0 <= r["acc_2d"] <= 100.0 and r["images_per_s"] > 0
    commands = (out / "commands.txt").read_text()
    assert "python train.py" in commands and sys.executable not in commands
    assert "--seed 0" in commands and "--kd-mode fixed" in commands and "runs/teacher/obj00/model.weights" in commands
    assert commands.count("train.py") == 3 and commands.count("valid.py") == 3
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    assert json.loads((out / "results.json").read_text())["budget"]["epochs"] == 1
    assert "| trial3-fixed | mean |" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 10_000

    # a second call finds every output and runs nothing
    run_study.main(run_study.get_args_parser().parse_args(argv))
    assert (out / "commands.txt").read_text() == commands


def test_bad_choices_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown student"):
        run_study.main(run_study.get_args_parser().parse_args(["--out", str(tmp_path), "--students", "resnet"]))
    with pytest.raises(SystemExit, match="multiple of 32"):
        run_study.main(run_study.get_args_parser().parse_args(["--out", str(tmp_path), "--train-size", "100"]))
