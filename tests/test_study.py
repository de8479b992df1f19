"""tools/run_study.py: the study end to end with a tiny budget, its resume, its statistics, its refusals."""
from __future__ import annotations

import csv
import json
import math
import shutil
import sys

import pytest

from errors import FlagError, InputError, OverwriteError
import stats
from tools import run_study

ROOT = run_study.ROOT

TINY = ["--budget", "cpu", "--epochs", "2", "--max-batches", "2", "--seeds", "0,1", "--modes", "none,fixed",
        "--num-objects", "1", "--images-per-object", "12", "--fresh-test", "4", "--train-size", "64",
        "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def study(out, *extra):
    return run_study.main(run_study.get_args_parser().parse_args(["--out", str(out), *TINY, *extra]))


def train_lines(out) -> list[str]:
    return [line for line in (out / "commands.txt").read_text().splitlines() if "train.py" in line]


@pytest.mark.slow
def test_study_end_to_end_kill_and_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    real_execute = run_study.execute

    def killed_after_one_epoch(cmd, log, commands):
        """The last student is stopped after its first epoch, as a SIGTERM would (train.py saves and exits 130)."""
        if "train.py" in cmd[1] and any("trial3-fixed-s1" in c for c in cmd):
            cmd = [("1" if prev == "--epochs" else c) for prev, c in zip(["", *cmd], cmd)]
            real_execute(cmd, log, commands)
            raise run_study.RunFailed(130, " ".join(cmd))
        real_execute(cmd, log, commands)

    monkeypatch.setattr(run_study, "execute", killed_after_one_epoch)
    with pytest.raises(InputError, match="interrupted during .*trial3-fixed-s1"):
        study(out)
    killed = out / "runs/trial3-fixed-s1/obj00"
    assert run_study.state(run_study.Run("trial3-fixed-s1", "trial3", "fixed", 1, "obj00", killed)) == "killed"
    assert not (killed / "valid_test.json").exists()
    first = train_lines(out)
    assert len(first) == 5  # the teacher and four students
    monkeypatch.undo()

    rows = study(out, "--publish", str(tmp_path / "published"))
    again = train_lines(out)[len(first):]
    assert len(again) == 1 and "trial3-fixed-s1" in again[0] and again[0].endswith("--resume")  # only the killed run
    assert "resumed from" in (out / "log.txt").read_text()
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1] == 1  # finished its second epoch (0-based) after the resume

    assert [(r["run"], r["split"]) for r in rows if r["object"] == "mean"] == [
        (run, split) for run in ("teacher", "trial3-none-s0", "trial3-fixed-s0", "trial3-none-s1", "trial3-fixed-s1")
        for split in ("test", "fresh")]
    for r in rows:
        assert {"run", "network", "kd", "seed", "object", "acc_2d", "acc_2d_10px", "acc_add", "mean_err_corner",
                "images_per_s", "train_images_per_s"} <= set(r)
        assert 0.0 <= r["acc_2d"] <= r["acc_2d_10px"] <= 100.0 and r["images_per_s"] > 0 and r["train_images"] > 0
    assert {r["kd"] for r in rows} == {"none", "fixed"} and {r["seed"] for r in rows} == {0, 1}
    # equal images: every student trained the same number of images, distilled or not (issue 24)
    assert len({r["train_images"] for r in rows if r["run"] != "teacher"}) == 1
    assert {(r["kd"], r["kd_alpha"]) for r in rows if r["run"] != "teacher"} == {("none", 0.0), ("fixed", 1.0)}
    for r in rows:  # each accuracy with its 95 % interval for its number of test images
        lo, hi = r["acc_2d_ci95"]
        assert r["n"] > 0 and lo <= r["acc_2d"] <= hi

    # the teacher picked its weights on a tenth of the training images, not on the test split (issue 24)
    teacher_cfg = out / "teacher_data/obj00.data"
    assert "teacher_data/obj00.data" in train_lines(out)[0] and teacher_cfg.is_file()
    held_out = (out / "teacher_data/obj00_valid.txt").read_text().split()
    trained = (out / "teacher_data/obj00_train.txt").read_text().split()
    assert len(held_out) >= 1 and not set(held_out) & set(trained)
    test_list = {p.rsplit("/", 1)[-1] for p in (out / "data/LINEMOD/obj00/test.txt").read_text().split()}
    assert not {p.rsplit("/", 1)[-1] for p in held_out} & test_list
    teacher_rows = [json.loads(line) for line in (out / "runs/teacher/obj00/metrics.jsonl").read_text().splitlines()]
    assert {r["n"] for r in teacher_rows} == {len(held_out)}
    commands = (out / "commands.txt").read_text()
    assert sys.executable not in commands and "python train.py" in commands
    assert "--seed 1" in commands and "--kd-mode fixed" in commands and "runs/teacher/obj00/model.weights" in commands
    assert "--fresh-test 4 --fresh-seed 11" in commands and commands.count("valid.py") == 10
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) == 20  # 5 runs x 2 splits x (object + mean)
    payload = json.loads((out / "results.json").read_text())
    assert payload["budget"]["name"] == "cpu" and len(payload["rows"]) == 20
    assert {(d["kd"], d["metric"]) for d in payload["paired"]} >= {("fixed", "acc_2d"), ("fixed", "acc_2d_10px")}
    assert "| trial3-fixed-s1 | fresh |" in (out / "results.md").read_text()
    for name in ("students.png", "teacher_curve.png"):
        assert (out / name).stat().st_size > 10_000
    published = tmp_path / "published"
    assert (published / "results.json").read_text() == (out / "results.json").read_text()
    assert (published / "runs/trial3-none-s0/obj00/valid_fresh.json").is_file()

    # a third call finds every run finished and scored: nothing runs
    before = (out / "commands.txt").read_text()
    study(out)
    assert (out / "commands.txt").read_text() == before
    # a call with another selection trains nothing new, and its report still holds the earlier calls' runs
    again = study(out, "--modes", "none", "--seeds", "1")
    assert (out / "commands.txt").read_text() == before
    assert [r["run"] for r in again] == [r["run"] for r in rows]
    assert "'modes': ('none', 'fixed'), 'seeds': (0, 1)" in (out / "results.md").read_text()

    # a new machine keeps only the published files: --restore continues the study in a new folder,
    # training only the teacher again (its weights are not published), which scores as it did
    assert (published / "runs/trial3-fixed-s1/obj00/run.json").is_file()
    moved = tmp_path / "moved"
    capsys.readouterr()
    restored = study(moved, "--restore", str(published))
    lines = train_lines(moved)
    assert len(lines) == 1 and "runs/teacher/obj00" in lines[0]
    assert json.loads((moved / "runs/trial3-none-s1/obj00/done.json").read_text())["restored_from"]
    said = capsys.readouterr().out
    assert "restored from" in said and "4 finished runs" in said
    assert "the teacher of obj00 trained again scores as the published one" in said
    keys = ("run", "split", "object", "acc_2d", "acc_2d_10px", "acc_add", "mean_err_corner", "train_images")
    assert [{k: r[k] for k in keys} for r in restored] == [{k: r[k] for k in keys} for r in rows]
    # publishing the continued study keeps the restored runs' commands, then the ones run here
    study(moved, "--publish", str(tmp_path / "republished"))
    history = (tmp_path / "republished/commands.txt").read_text()
    earlier, marker, here = history.partition("# continued on another machine with --restore")
    assert earlier == (published / "commands.txt").read_text() and marker
    assert "trial3-fixed-s1" not in here and here.count("train.py") == 1 and "runs/teacher/obj00" in here


def _rows(kd: str, values: list[float], metric: str = "acc_2d") -> list[dict]:
    return [{"run": f"trial3-{kd}-s{s}", "network": "trial3", "kd": kd, "seed": s, "object": "mean",
             "split": "test", metric: v} for s, v in enumerate(values)]


def test_summary_statistics_on_fixed_inputs():
    rows = _rows("none", [50.0, 52.0, 54.0]) + _rows("fixed", [55.0, 58.0, 61.0]) + _rows("fork", [49.0, 53.0, 52.0])
    rows += [{"run": "teacher", "network": "tiny", "kd": "none", "seed": 0, "object": "mean", "split": "test",
              "acc_2d": 90.0},  # not a student: left out
             {**rows[0], "object": "obj00", "acc_2d": 0.0}]  # a per-object row: left out
    groups = {g["kd"]: g for g in run_study.group_stats(rows, "acc_2d")}
    assert set(groups) == {"none", "fixed", "fork"}
    assert groups["none"]["mean"] == pytest.approx(52.0) and groups["none"]["std"] == pytest.approx(2.0)
    assert groups["fixed"]["mean"] == pytest.approx(58.0) and groups["fixed"]["std"] == pytest.approx(3.0)
    assert groups["fork"]["std"] == pytest.approx(math.sqrt(13 / 3))
    paired = {d["kd"]: d for d in run_study.paired_differences(rows, "acc_2d")}
    assert paired["fixed"]["diffs"] == {"0": 5.0, "1": 6.0, "2": 7.0}
    assert paired["fixed"]["mean"] == pytest.approx(6.0) and paired["fixed"]["std"] == pytest.approx(1.0)
    assert paired["fixed"]["spread"] == pytest.approx(3.0) and paired["fixed"]["verdict"] == "better"
    assert paired["fork"]["mean"] == pytest.approx(-2 / 3) and paired["fork"]["verdict"] == "no measurable effect"

    # errors: lower is better; one seed only: never a measurable effect
    err = _rows("none", [10.0, 12.0, 14.0], "mean_err_corner") + _rows("fixed", [6.0, 7.0, 8.0], "mean_err_corner")
    (d,) = run_study.paired_differences(err, "mean_err_corner")
    assert d["mean"] == pytest.approx(-5.0) and d["verdict"] == "better"
    (d,) = run_study.paired_differences(_rows("none", [10.0]) + _rows("fixed", [90.0]), "acc_2d")
    assert d["std"] is None and d["verdict"] == "no measurable effect"


def test_summary_table_on_fixed_inputs():
    def row(run, network, kd, seed, split, a5, a10):
        return {"run": run, "network": network, "kd": kd, "seed": seed, "object": "mean", "split": split,
                "acc_2d": a5, "acc_2d_10px": a10, "acc_add": 1.0, "train_images": 40800 if network != "tiny" else 55080}
    rows = [row(f"trial3-none-s{s}", "trial3", "none", s, split, 10.0 + 2 * s, 50.0) for s in range(3)
            for split in ("test", "fresh")]
    rows += [row("teacher", "tiny", "none", 0, split, 48.0, 90.0) for split in ("test", "fresh")]
    rows.append({**rows[0], "object": "obj00", "acc_2d": 99.0})  # a per-object row: left out
    lines = run_study.summary_table(rows).splitlines()
    assert lines[0].startswith("| network | distillation | seeds | test 2D 5 px % |")
    assert lines[0].endswith("| test ADD % | training images |")
    assert lines[2] == "| tiny (teacher) | none | 0 | 48.0 | 90.0 | 48.0 | 90.0 | 1.0 | 55,080 |"
    assert lines[3] == ("| trial3 | none | 0, 1, 2 | 12.0 ± 2.0 | 50.0 ± 0.0 | 12.0 ± 2.0 | 50.0 ± 0.0 "
                        "| 1.0 ± 0.0 | 40,800 |")  # equal images: one count for the three seeds
    assert len(lines) == 4


def test_readme_results_table_is_the_published_cpu_study():
    """The README's and docs/results.md's tables are generated from docs/results/cpu/results.json,
    not typed by hand."""
    payload = json.loads((ROOT / "docs/results/cpu/results.json").read_text())
    assert payload["budget"]["name"] == "cpu"
    table = run_study.summary_table(payload["rows"])
    assert table in (ROOT / "README.md").read_text()
    assert table in (ROOT / "docs/results/cpu/results.md").read_text()
    assert table in (ROOT / "docs/results.md").read_text()
    assert run_study.paired_table(payload["paired"]) in (ROOT / "docs/results.md").read_text()
    for run in {r["run"] for r in payload["rows"]}:  # every run's valid.py outputs are published
        for split in ("test", "fresh"):
            assert (ROOT / "docs/results/cpu/runs" / run / "obj00" / f"valid_{split}.json").is_file()


def test_mean_rows_average_the_objects():
    base = {"run": "r", "network": "trial3", "kd": "none", "kd_alpha": 0.0, "seed": 0, "split": "test", "n": 5,
            "train_images": 10,
            "train_minutes": 1.0, "train_images_per_s": 2.0, **{k: 0.0 for k in run_study.ROW_METRICS}}
    rows = run_study.mean_rows([{**base, "object": "a", "acc_2d": 10.0}, {**base, "object": "b", "acc_2d": 30.0}])
    assert [r["object"] for r in rows] == ["a", "b", "mean"] and rows[-1]["acc_2d"] == 20.0 and rows[-1]["n"] == 10


def test_unknown_budget_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        run_study.get_args_parser().parse_args(["--budget", "laptop"])
    assert exc.value.code == 2 and "invalid choice: 'laptop'" in capsys.readouterr().err
    with pytest.raises(FlagError, match="--reduced is --budget cpu"):
        run_study.main(run_study.get_args_parser().parse_args(["--reduced", "--budget", "gpu"]))
    with pytest.raises(FlagError, match="unknown.*resnet"):
        run_study.main(run_study.get_args_parser().parse_args(["--students", "resnet"]))


def test_folder_of_another_budget_is_refused(tmp_path):
    out = tmp_path / "study"
    b = run_study.resolve_budget(run_study.get_args_parser().parse_args(["--budget", "gpu"]))
    run_study.claim_folder(out, b, None)
    with pytest.raises(InputError, match="another budget.*'gpu'.*'cpu'.*recipe: 'original' there, 'fast' now"):
        study(out)
    assert sorted(p.name for p in out.iterdir()) == ["study.json"]  # nothing generated, nothing trained
    # more seeds (or students, modes) in the same budget are not another budget
    tiny = run_study.resolve_budget(run_study.get_args_parser().parse_args(TINY))
    run_study.claim_folder(tmp_path / "s2", tiny, None)
    run_study.claim_folder(tmp_path / "s2", run_study.dataclasses.replace(tiny, seeds=(0, 1, 2)), None)
    (tmp_path / "s3" / "runs").mkdir(parents=True)
    with pytest.raises(InputError, match="without a study.json"):
        run_study.claim_folder(tmp_path / "s3", tiny, None)
    # --restore takes only a published study of the same budget, and copies nothing otherwise
    with pytest.raises(InputError, match="--restore .*s3: no study.json there"):
        run_study.restore_published(tmp_path / "s4", tmp_path / "s3", tiny, None, {})
    with pytest.raises(InputError, match="--restore .*study: a study of another budget.*recipe: 'original' there"):
        run_study.restore_published(tmp_path / "s4", out, tiny, None, {})
    assert not (tmp_path / "s4").exists()


def test_folder_with_other_cells_or_images_is_refused(tmp_path):
    """A study folder whose runs were made with another cell (here another --kd-alpha for the same
    run name) or another image count is refused before any training, nothing overwritten."""
    out = _claimed_with_data(tmp_path)
    b = run_study.resolve_budget(run_study.get_args_parser().parse_args(TINY))
    run = run_study.Run("trial3-fixed-s0", "trial3", "fixed", 0, "obj00", out / "runs/trial3-fixed-s0/obj00")
    theirs = dict(run_study.cell_of(run, b, run_study.NETWORKS["trial3"][1]), kd_alpha=0.5)
    run_study.write_text(run.folder / "run.json", json.dumps(theirs))
    with pytest.raises(InputError, match="(?s)other cells.*trial3-fixed-s0.*kd_alpha: 0.5 there, 1.0 now"):
        study(out)
    assert not (out / "runs/teacher").exists() and json.loads((run.folder / "run.json").read_text()) == theirs
    more = [("16" if prev == "--images-per-object" else a) for prev, a in zip(["", *TINY], TINY)]
    with pytest.raises(InputError, match="another budget.*images: 12 there, 16 now"):
        run_study.main(run_study.get_args_parser().parse_args(["--out", str(out), *more]))


def _claimed_with_data(tmp_path):
    """A study folder with its (tiny) synthetic data made, and no run started."""
    out = tmp_path / "study"
    b = run_study.resolve_budget(run_study.get_args_parser().parse_args(TINY))
    run_study.claim_folder(out, b, None)
    run_study.prepare_data(out, b, None, out / "commands.txt")
    return out


def test_distilled_students_need_their_teacher(tmp_path):
    out = _claimed_with_data(tmp_path)
    teacher = out / "runs/teacher/obj00"
    teacher.mkdir(parents=True)
    (teacher / "failed.json").write_text(json.dumps({"exit": 1, "log": "log.txt"}))
    with pytest.raises(InputError, match="teacher run .* failed .*exit 1.*--retry-failed"):
        study(out)
    with pytest.raises(InputError, match="--teacher-weights .*missing.weights: file not found"):
        study(out, "--teacher-weights", str(tmp_path / "missing.weights"))
    (teacher / "failed.json").unlink()
    (teacher / "done.json").write_text("{}")  # finished, but its weights are gone
    with pytest.raises(InputError, match="finished but its model.weights is missing"):
        study(out)
    assert train_lines(out) == []  # refused before any training
    # without distilled students the teacher is not needed
    assert run_study.check_teachers(run_study.plan_runs(out, run_study.resolve_budget(
        run_study.get_args_parser().parse_args([*TINY, "--modes", "none"])), ["obj00"]),
        run_study.BUDGETS["cpu"], None, False) is None


def test_gpu_budget_runs_the_forks_protocol(tmp_path):
    args = run_study.get_args_parser().parse_args(["--budget", "gpu", "--device", "cuda"])
    b = run_study.resolve_budget(args)
    assert (b.recipe, b.teacher, b.students, b.seeds, b.student_epochs) == (
        "original", "yolov2", ("trial3", "trial10"), (0, 1, 2), 500)
    runs = run_study.plan_runs(tmp_path, b, ["obj00"])
    assert [r.run for r in runs][:4] == ["teacher", "trial3-none-s0", "trial3-fork-s0", "trial3-fixed-s0"]
    assert len(runs) == 1 + 2 * 3 * 3
    data = tmp_path / "obj00.data"
    teacher = run_study.train_command(runs[0], b, data, args, None, None, resume=False, overwrite=False)
    assert teacher[teacher.index("--modelcfg") + 1] == "cfg/yolo-pose.cfg"
    assert "--epochs" in teacher and "--minutes" not in teacher and "--train-size" not in teacher  # multi-scale 416
    fixed = run_study.train_command(runs[3], b, data, args, "w.weights", "t.weights", resume=True, overwrite=False)
    assert fixed[fixed.index("--kd-mode") + 1] == "fixed" and fixed[fixed.index("--teacher-weights") + 1] == "t.weights"
    assert fixed[-1] == "--resume" and fixed[fixed.index("--eval-every") + 1] == str(run_study.STUDENT_EVAL_EVERY)


def test_study_modes_map_to_kd_flags():
    def flags(mode, alpha, neighbours):
        return {"kd_mode": mode, "kd_alpha": alpha, "kd_neighbours": neighbours}

    assert run_study.kd_flags("none") == {}
    assert run_study.kd_flags("fixed") == flags("fixed", 1.0, "gt")
    assert run_study.kd_flags("fork") == flags("fork", 1.0, "gt")
    assert run_study.kd_flags("fixed-a0.5") == flags("fixed", 0.5, "gt")
    assert run_study.kd_flags("fixed-nt") == flags("fixed", 1.0, "teacher")
    assert run_study.kd_flags("fixed-a0.5-nt") == flags("fixed", 0.5, "teacher")
    with pytest.raises(ValueError, match="unknown suffix 'x'"):
        run_study.kd_flags("fixed-x")
    b = run_study.BUDGETS["cpu"]
    assert b.student_minutes is None and b.student_epochs == run_study.CPU_STUDENT_EPOCHS  # equal images
    # an epoch budget for the teacher too: the same teacher on a busy machine
    assert b.teacher_minutes is None and b.teacher_epochs == run_study.CPU_TEACHER_EPOCHS
    assert b.modes == ("none", "fork", "fixed", "fixed-a0.5", "fixed-nt")


def test_intervals_and_verdict_on_fixed_inputs():
    """The 95 % Wilson interval of an accuracy, the sampling error of a difference, the t interval
    across seeds, and the verdict that needs the difference to clear both the seed spread and the
    sampling error (issue 24)."""
    lo, hi = stats.binomial_interval(50.0, 100)
    assert (lo, hi) == pytest.approx((40.383, 59.617), abs=1e-3)
    assert stats.binomial_interval(0.0, 10) == pytest.approx((0.0, 27.753), abs=1e-3)  # not empty at 0 %
    assert stats.binomial_interval(100.0, 10)[1] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="at least one test object"):
        stats.binomial_interval(50.0, 0)
    assert stats.sampling_error(50.0, 240, 50.0, 240) == pytest.approx(8.946, abs=1e-3)
    assert stats.t_interval([5.0, 6.0, 7.0]) == pytest.approx((3.516, 8.484), abs=1e-3)
    assert stats.t_interval([5.0]) is None
    assert run_study.verdict(6.0, 3.0, 8.9, False) == "no measurable effect"  # within the sampling error
    assert run_study.verdict(6.0, 3.0, 5.0, False) == "better"
    assert run_study.verdict(-6.0, 3.0, None, True) == "better"  # an error: lower is better
    assert run_study.verdict(6.0, None, 1.0, False) == "no measurable effect"  # one seed: no spread
    # paired differences with the test sizes: the +6 points of `fixed` are inside 8.9 points of sampling error
    rows = [dict(r, n=240) for r in _rows("none", [50.0, 52.0, 54.0]) + _rows("fixed", [55.0, 58.0, 61.0])]
    (d,) = run_study.paired_differences(rows, "acc_2d")
    assert d["sampling"] == pytest.approx(8.885, abs=1e-3) and d["ci95"] == pytest.approx((3.516, 8.484), abs=1e-3)
    assert d["verdict"] == "no measurable effect"
    rows = [dict(r, n=2400) for r in rows]  # ten times the test images: the sampling error shrinks to 2.8
    (d,) = run_study.paired_differences(rows, "acc_2d")
    assert d["sampling"] == pytest.approx(2.810, abs=1e-3) and d["verdict"] == "better"



def test_results_md_shows_the_intervals():
    """results.md's every-run table gives each accuracy its Wilson interval, and the paired table the
    t interval across seeds, the seed spread and the sampling error next to the verdict."""
    rows = []
    for kd, a5 in (("none", [50.0, 52.0, 54.0]), ("fixed", [55.0, 58.0, 61.0])):
        for r in _rows(kd, a5):
            r.update(kd_alpha=1.0 if kd == "fixed" else 0.0, n=240, acc_2d_10px=90.0, acc_add=20.0,
                     mean_err_corner=9.0, train_images=40800.0, train_images_per_s=50.0)
            r.update({f"{k}_ci95": list(stats.binomial_interval(r[k], 240))
                      for k in ("acc_2d", "acc_2d_10px", "acc_add")})
            rows.append(r)
    groups = [g for m in ("acc_2d",) for g in run_study.group_stats(rows, m)]
    paired = run_study.paired_differences(rows, "acc_2d")
    text = run_study.markdown(rows, groups, paired, run_study.BUDGETS["cpu"])
    lo, hi = stats.binomial_interval(55.0, 240)
    assert (f"| trial3-fixed-s0 | test | 240 | 55.00 [{lo:.1f}, {hi:.1f}] | 90.00 [85.6, 93.2] | 20.00 [15.4, 25.5] "
            "| 9.00 | 40800 | 50.00 |") in text
    assert "| test | trial3 | fixed | acc_2d | 6.00 | [3.52, 8.48] | 5.00, 6.00, 7.00 | 3.00 | 8.88 " \
           "| no measurable effect |" in text
    assert run_study.paired_table(paired) in text


def test_paired_table_on_fixed_inputs():
    """One line per network and mode: mean [t interval] ±sampling error per column, and the verdicts."""
    rows = [dict(r, n=240) for r in _rows("none", [50.0, 52.0, 54.0]) + _rows("fixed", [55.0, 58.0, 61.0])]
    rows += [dict(r, split="fresh", n=2400) for r in rows]  # ten times the images: 'better' on the fresh set
    rows += [dict(r, network="trial10", run=r["run"].replace("trial3", "trial10"), acc_2d=r["acc_2d"] + 1)
             for r in _rows("none", [40.0]) + _rows("fixed", [45.0])]  # one seed: no interval, never an effect
    paired = run_study.paired_differences(rows, "acc_2d")
    lines = run_study.paired_table(paired).splitlines()
    assert lines[0] == ("| network | mode | seeds | test 5 px | test 10 px | fresh 5 px | fresh 10 px | test ADD "
                        "| verdict (every column) |")
    assert lines[2] == ("| trial3 | fixed | 0, 1, 2 | +6.0 [+3.5, +8.5] ±8.9 |  | +6.0 [+3.5, +8.5] ±2.8 |  |  "
                        "| no measurable effect, better |")
    assert lines[3] == "| trial10 | fixed | 0 | +5.0 |  |  |  |  | no measurable effect |"
    assert len(lines) == 4

# --------------------------------------------------------------------------------------------
# tools/fork_numbers.py: the fork's numbers experiment (issue 24)
# --------------------------------------------------------------------------------------------

def test_the_fork_rule_keeps_the_first_test_unless_5px_improves():
    from tools import fork_numbers

    evals = [dict(epoch=10, acc_2d_5px=4.0, acc_2d_10px=40.0), dict(epoch=20, acc_2d_5px=0.0, acc_2d_10px=45.0),
             dict(epoch=30, acc_2d_5px=4.0, acc_2d_10px=60.0), dict(epoch=40, acc_2d_5px=0.0, acc_2d_10px=0.0)]
    assert fork_numbers.fork_pick(evals)["epoch"] == 10  # ties at 5 px never replace it (strictly greater)
    assert fork_numbers.our_pick(evals)["epoch"] == 30  # 5 px + 10 px (training.best_score)
    zeros = [dict(epoch=e, acc_2d_5px=0.0, acc_2d_10px=0.0) for e in (10, 20)]
    assert fork_numbers.fork_pick(zeros)["epoch"] == 10  # the fork's best starts at -1: the first test is saved
    assert fork_numbers.our_pick(zeros)["epoch"] == 10  # ours too keeps the first of equal scores


def test_fork_numbers_names_a_bad_log_or_valid_file(tmp_path, capsys):
    """A torn metrics.jsonl or a truncated valid_test.json of the study ended in a traceback (issue 36)."""
    from tools import fork_numbers

    study_dir = tmp_path / "study"
    for rel in ("data/cfg/obj00.data", "runs/teacher/obj00/model.weights", "runs/trial3-none-s0/obj00/model.weights"):
        (study_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (study_dir / rel).write_text("x\n")
    cell = study_dir / "fork_numbers/none-trained"
    cell.mkdir(parents=True)
    (cell / "done.json").write_text("{}")
    row = {"epoch": 1, "seen": 32, "minutes": 0.5, "acc_2d_5px": 1.0, "acc_2d_10px": 2.0}
    argv = ["--study", str(study_dir), "--cells", "none-trained"]

    def one_line():
        with pytest.raises(SystemExit) as exit_:
            fork_numbers.run_cli(lambda a: fork_numbers.main(fork_numbers.get_args_parser().parse_args(a)), argv,
                                 prog="fork_numbers.py")
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
        return err

    (cell / "metrics.jsonl").write_text(json.dumps(row) + '\n{"epoch": 2, "se')
    assert "none-trained/metrics.jsonl:2: not a JSON line" in one_line()
    (cell / "metrics.jsonl").write_text(json.dumps(dict(row, epoch="1")) + "\n")
    assert "metrics.jsonl:1: 'epoch' not a finite number" in one_line()
    (cell / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (study_dir / "runs/trial3-none-s0/obj00/valid_test.json").write_text('{"objects": [{"acc_2d_5px": 3')
    assert "obj00/valid_test.json: not readable JSON" in one_line()
    assert not (study_dir / "fork_numbers/results.json").exists()


@pytest.mark.slow
def test_fork_numbers_end_to_end(tmp_path):
    from tools import fork_numbers

    out = tmp_path / "study"
    with pytest.raises(InputError, match="the study has not made these yet"):
        fork_numbers.main(fork_numbers.get_args_parser().parse_args(["--study", str(out)]))
    study(out, "--seeds", "0", "--modes", "none")  # the teacher and the trained student
    argv = ["--study", str(out), "--epochs", "2", "--steps-per-epoch", "1", "--train-size", "64", "--device", "cpu",
            "--cells", "fork-trained,fork-backbone,none-trained", "--publish", str(tmp_path / "pub")]
    record = fork_numbers.main(fork_numbers.get_args_parser().parse_args(argv))
    assert list(record["cells"]) == ["fork-trained", "fork-backbone", "none-trained"]
    for cell in record["cells"].values():
        assert [e["epoch"] for e in cell["evals"]] == [1] and cell["evals"][0]["steps"] == 2  # 2 epochs of 1 step
        assert cell["fork_pick"] == cell["evals"][0]
    lines = (out / "fork_numbers/commands.txt").read_text().splitlines()
    assert len(lines) == 3
    assert "--init-all-layers" in lines[0] and "--kd-mode fork" in lines[0] and "trial3-none-s0" in lines[0]
    assert "--init-all-layers" not in lines[1] and "--kd-mode fork" in lines[1]
    assert "--init-all-layers" in lines[2] and "--distiled" not in lines[2]
    assert all("--recipe original" in line and "--batch-size 16" in line for line in lines)
    for name in ("results.json", "results.md", "fork_numbers.png", "fork-trained_metrics.jsonl"):
        assert (tmp_path / "pub" / name).is_file(), name
    # a second call redoes nothing
    fork_numbers.main(fork_numbers.get_args_parser().parse_args(argv))
    assert len((out / "fork_numbers/commands.txt").read_text().splitlines()) == 3


def test_publish_leaves_no_machine_paths(tmp_path):
    """valid.py's JSON names the weights by absolute path; the published copy names them from the checkout."""
    folder = tmp_path / "study/runs/trial3-none-s0/obj00"
    folder.mkdir(parents=True)
    (folder / "valid_test.json").write_text(json.dumps({"weights": f"{run_study.ROOT}/runs/study_cpu/model.weights"}))
    run = run_study.Run("trial3-none-s0", "trial3", "none", 0, "obj00", folder)
    run_study.publish(tmp_path / "study", tmp_path / "pub", [run])
    published = json.loads((tmp_path / "pub/runs/trial3-none-s0/obj00/valid_test.json").read_text())
    assert published == {"weights": "runs/study_cpu/model.weights"}


def test_compare_teacher_names_what_differs(tmp_path):
    """--restore retrains the teacher; the call says whether it scores as the published one did."""
    summary = {"acc_2d": 49.2, "acc_2d_10px": 86.7, "acc_add": 42.5, "mean_err_corner": 10.6, "n": 240}
    for where, s in (("here", summary), ("there", summary), ("other", dict(summary, acc_add=40.0))):
        path = tmp_path / where / "runs/teacher/obj00/valid_test.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"objects": [s]}))
    same = run_study.compare_teacher(tmp_path / "here", tmp_path / "there", ["obj00", "obj01"])
    assert same == ["the teacher of obj00 trained again scores as the published one "
                    "(49.20 % at 5 px on the test split)"]  # obj01 has no teacher: no line
    differs = run_study.compare_teacher(tmp_path / "here", tmp_path / "other", ["obj00"])
    assert len(differs) == 1 and differs[0].startswith("WARNING: the teacher of obj00 trained again differs")
    assert "acc_add 42.5 here, 40.0 there" in differs[0] and "acc_2d " not in differs[0]


# --------------------------------------------------------------------------------------------
# issue 36: --restore checks every file first and follows no link out; --publish replaces only its own
# --------------------------------------------------------------------------------------------

def _published(tmp_path):
    """A published study of the TINY budget with one finished student run (no training)."""
    b = run_study.resolve_budget(run_study.get_args_parser().parse_args(TINY))
    source = tmp_path / "published"
    run_study.claim_folder(source, b, None)
    (source / "commands.txt").write_text("python train.py ...\n")
    run = run_study.Run("trial3-none-s0", "trial3", "none", 0, "obj00", source / "runs/trial3-none-s0/obj00")
    run.folder.mkdir(parents=True)
    summary = {"acc_2d": 50.0, "acc_2d_10px": 90.0, "acc_add": 40.0, "acc_5cm5deg": 10.0, "mean_err_2d": 5.5,
               "mean_err_corner": 6.0, "images_per_s": 12.0, "n": 4}
    (run.folder / "valid_test.json").write_text(json.dumps({"objects": [summary]}))
    (run.folder / "metrics.jsonl").write_text('{"epoch": 0, "seen": 8, "minutes": 0.1}\n'
                                              '{"epoch": 1, "seen": 16, "minutes": 0.2}\n')
    (run.folder / "run.json").write_text(json.dumps(run_study.cell_of(run, b, run_study.NETWORKS["trial3"][1])))
    return b, source, run.folder


def test_restore_copies_a_checked_published_run(tmp_path):
    b, source, _ = _published(tmp_path)
    out = tmp_path / "moved"
    assert run_study.restore_published(out, source, b, None, {"obj00": tmp_path / "obj00.data"}) == \
        ["trial3-none-s0/obj00"]
    dest = out / "runs/trial3-none-s0/obj00"
    assert sorted(p.name for p in dest.iterdir()) == ["done.json", "metrics.jsonl", "run.json", "valid_test.json"]
    assert (out / run_study.RESTORED_COMMANDS).read_text() == "python train.py ...\n"


@pytest.mark.parametrize("name, damage, message", [
    ("valid_test.json", lambda p: p.write_text(p.read_text()[:30]), r"valid_test.json: not readable JSON"),
    ("valid_test.json", lambda p: p.write_text('{"objects": [{"acc_2d": "high"}]}'),
     r"valid_test.json: not a valid.py --json summary \(objects\[0\] lacks numbers for acc_2d\)"),
    ("metrics.jsonl", lambda p: p.write_text(p.read_text()[:60]), r"metrics.jsonl:2: not a JSON metric row"),
    ("run.json", lambda p: p.write_text(p.read_text()[:20]), r"run.json: not readable JSON"),
    ("run.json", lambda p: p.write_text(json.dumps(dict(json.loads(p.read_text()), seed=7, init="/etc/x"))),
     r"run.json: not the cell of trial3-none-s1 in this budget: seed: 7 there, 1 for trial3-none-s1; init: '/etc/x'"),
    ("metrics.jsonl", "LINK", r"metrics.jsonl: a symbolic link that leads out of --restore .*published \(to "),
    ("run.json", "LINKED_FOLDER", r"s1/obj00/valid_test.json: a symbolic link that leads out of --restore"),
])
def test_restore_refuses_a_damaged_or_linked_file_before_copying_anything(tmp_path, name, damage, message):
    """A truncated file ended in a traceback, a link brought a file from elsewhere into the study,
    a hostile run.json was copied before it was checked (issue 36)."""
    b, source, good = _published(tmp_path)
    folder = source / "runs/trial3-none-s1/obj00"  # damaged below; checked after the good run s0
    shutil.copytree(good, folder)
    (folder / "run.json").write_text(json.dumps(dict(json.loads((good / "run.json").read_text()), seed=1,
                                                     run="trial3-none-s1")))
    outside = tmp_path / "elsewhere"
    if damage == "LINK":
        outside.mkdir()
        (outside / "secret.jsonl").write_text('{"epoch": 0, "secret": 1}\n')
        (folder / name).unlink()
        (folder / name).symlink_to(outside / "secret.jsonl")
    elif damage == "LINKED_FOLDER":
        shutil.move(str(folder), str(outside))
        folder.symlink_to(outside)
    else:
        damage(folder / name)
    out = tmp_path / "moved"
    with pytest.raises(InputError, match=message):
        run_study.restore_published(out, source, b, None, {"obj00": tmp_path / "obj00.data"})
    assert not out.exists()  # nothing copied, not even the good run s0


def test_publish_replaces_only_what_an_earlier_publish_wrote(tmp_path):
    b, source, folder = _published(tmp_path)
    run = run_study.Run("trial3-none-s0", "trial3", "none", 0, "obj00", folder)
    (source / "results.md").write_text("# results\n")
    dest = tmp_path / "docs"
    dest.mkdir()
    (dest / "results.md").write_text("my own notes\n")
    (dest / "notes.txt").write_text("mine\n")
    with pytest.raises(OverwriteError, match=rf"(?s)refused, nothing was written.*{dest / 'results.md'} \(not written "
                                             r"by run_study.py\)"):
        run_study.publish(source, dest, [run])
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt", "results.md"]
    (dest / "results.md").unlink()
    run_study.publish(source, dest, [run])
    assert (dest / "results.md").read_text() == "# results\n"
    assert (dest / "runs/trial3-none-s0/obj00/run.json").is_file()
    (source / "results.md").write_text("# results, again\n")
    run_study.publish(source, dest, [])  # its own earlier files: replaced, and those it no longer writes removed
    assert (dest / "results.md").read_text() == "# results, again\n"
    assert not (dest / "runs/trial3-none-s0/obj00/run.json").exists() and (dest / "notes.txt").read_text() == "mine\n"
    (dest / "commands.txt").write_text("edited by hand\n")
    with pytest.raises(OverwriteError, match=r"commands.txt \(changed since run_study.py wrote it\)"):
        run_study.publish(source, dest, [run])
    assert (dest / "commands.txt").read_text() == "edited by hand\n"
