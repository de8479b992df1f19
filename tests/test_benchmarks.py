"""benchmarks/run_all.py: table collection and the FLOP-ceiling column."""
from __future__ import annotations

import pytest

from benchmarks import run_all

OUT = """progress line
| net | batch | GFLOP/s | vs eager |
|---|---|---|---|
| trial3 | 1 | 50.0 | 1.00x |

device cpu
| net | batch | GFLOP/s | vs eager |
|---|---|---|---|
| trial3 | 1 | 50.0 | 1.00x |
| trial3 | 16 | 75.0 | 1.50x |

| a | b |
"""


def test_tables_keeps_the_last_copy_of_each_table():
    (t,) = run_all.tables(OUT)
    # a lone row without a separator is not a table
    assert t[0] == "| net | batch | GFLOP/s | vs eager |" and len(t) == 4


def test_ceiling_column():
    (t,) = run_all.tables(OUT)
    out = run_all.add_ceiling_column(t, ceiling=100.0)
    assert out[0].endswith("% of ceiling |") and out[2].endswith("50.0 % |") and out[3].endswith("75.0 % |")
    other = ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert run_all.add_ceiling_column(other, 100.0) == other


def test_unknown_benchmark_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.main(run_all.get_args_parser().parse_args(["--only", "nope", "--out-file", str(tmp_path / "b.md")]))


def test_flop_ceiling_is_positive():
    assert run_all.flop_ceiling(run_all.torch.device("cpu"), n=256, seconds=0.05) > 0


def test_a_rewrite_keeps_the_recorded_cuda_section(tmp_path, monkeypatch):
    out = tmp_path / "benchmarks.md"
    cuda = [run_all.KEPT_HEADING, "", "No CUDA figures yet.", "| a | b |"]
    out.write_text("\n".join(["# Benchmarks", "", "## old table", "| x |", ""] + cuda) + "\n")
    monkeypatch.setattr(run_all, "run", lambda name, quick, device, timeout: (OUT, 0.1, 0))
    monkeypatch.setattr(run_all, "flop_ceiling", lambda device: 100.0)
    run_all.main(run_all.get_args_parser().parse_args(["--only", "loss", "--out-file", str(out)]))
    text = out.read_text()
    assert "## old table" not in text and "## loss" in text  # the rest is regenerated
    assert text.endswith("\n".join(cuda) + "\n") and text.count(run_all.KEPT_HEADING) == 1
    out.write_text("# Benchmarks\n")
    run_all.main(run_all.get_args_parser().parse_args(["--only", "loss", "--out-file", str(out)]))
    assert run_all.KEPT_HEADING not in out.read_text()


# --------------------------------------------------------------------------------------------
# issue 35: benchmarks/device_check.py, the prepared device check
# --------------------------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from benchmarks import device_check as dc  # noqa: E402


def shell_step(name: str, script: str, timeout_s: float = 30) -> dc.Step:
    return dc.Step(name, timeout_s, lambda ctx: ["bash", "-c", script], f"test step {name}")


def test_a_hanging_step_is_killed_with_its_children_and_the_next_one_runs(tmp_path):
    marker = tmp_path / "child_alive"
    # the step starts a child that would write the marker after 3 s; the step's group is killed at 1 s
    hang = shell_step("hang", f"(sleep 3; touch {marker}) & sleep 60", timeout_s=1)
    after = shell_step("after", "echo next step ran")
    t0 = time.monotonic()
    rows = dc.run_steps([hang, after], deadline_s=60, dry=True, out=tmp_path / "out", work=tmp_path / "work")
    assert time.monotonic() - t0 < 20
    assert [r["status"] for r in rows] == ["timeout", "ok"]
    assert "killed after its timeout of 1 s" in rows[0]["tail"] and rows[1]["tail"] == "next step ran"
    time.sleep(3)
    assert not marker.exists(), "the step's child process outlived its timeout"


def test_results_are_rewritten_after_every_step_and_the_deadline_skips_the_rest(tmp_path):
    out = tmp_path / "out"
    steps = [shell_step("one", "echo first; exit 3"), shell_step("two", "sleep 3"), shell_step("three", "echo no")]
    # a 12 s deadline: 'two' may start (more than MIN_STEP_S left), 'three' may not
    rows = dc.run_steps(steps, deadline_s=dc.MIN_STEP_S + 2, dry=True, out=out, work=tmp_path / "work")
    assert [(r["status"], r["rc"]) for r in rows] == [("failed", 3), ("ok", 0), ("skipped", None)]
    assert "not started" in rows[2]["tail"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["step"] for r in summary["steps"]] == ["one", "two", "three"] and summary["dry"] is True
    md = (out / "summary.md").read_text()
    assert "| one | failed |" in md and "first" in md
    with tarfile.open(out / dc.ARCHIVE) as tar:
        names = sorted(tar.getnames())
    assert names == ["device_check", "device_check/00_one.log", "device_check/01_two.log"]
    assert sorted(p.name for p in out.iterdir()) == ["device_check.tar.gz", "summary.json", "summary.md"]


def test_valid_step_takes_the_command_the_main_job_printed(tmp_path):
    ctx = dc.Context(dry=False, work=tmp_path)
    assert dc.valid(ctx) is None and "printed no valid.py command" in ctx.why
    ctx.logs["main_job"] = "outputs in x/\nscore it with:\n  python valid.py --datacfg a.data --weightfile b c\n"
    argv = dc.valid(ctx)
    assert argv[argv.index("valid.py"):] == ["valid.py", "--datacfg", "a.data", "--weightfile", "b", "c"]


def test_out_unset_writes_a_local_folder_and_bad_flags_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OUT", raising=False)
    monkeypatch.setattr(dc, "ROOT", tmp_path)
    out = dc.out_dir()
    assert out.parent == tmp_path / "runs" / "device_check" and out.is_dir()
    assert "$OUT is not set" in capsys.readouterr().out
    assert dc.main(["--only", "env,nope"]) == 2
    assert "--only: unknown nope" in capsys.readouterr().err
    assert dc.main(["--deadline", "0"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of a real (not DRY) step")
def test_a_cuda_step_on_a_cpu_machine_fails_with_the_named_device_error(tmp_path):
    (row,) = dc.run_steps([s for s in dc.STEPS if s.name == "forward"], 60, dry=False, out=tmp_path / "o",
                          work=tmp_path / "w")
    assert row["status"] == "failed" and row["rc"] == 2
    assert row["tail"] == "bench_forward.py: error: --device cuda: CUDA is not available on this machine"


@pytest.mark.slow
def test_dry_run_of_every_step_on_a_cpu(tmp_path):
    """DRY=1: the whole check, every step small, end to end (about a minute on 2 cores)."""
    out = tmp_path / "out"
    env = dict(os.environ, DRY="1", OUT=str(out))
    proc = subprocess.run([sys.executable, str(dc.Path(dc.__file__)), "--deadline", "300"], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "summary.json").read_text())["steps"]
    assert [r["step"] for r in rows] == [s.name for s in dc.STEPS]
    assert {r["step"]: r["status"] for r in rows} == {s.name: "ok" for s in dc.STEPS}, proc.stdout
    by = {r["step"]: r["tail"] for r in rows}
    assert "10 skipped" in by["cuda_tests"]  # the tests marked cuda, skipped here with their reason
    assert "Acc using 5 px 2D Projection" in by["valid"]  # the command the main job printed, run
    with tarfile.open(out / dc.ARCHIVE) as tar:
        assert len([n for n in tar.getnames() if n.endswith(".log")]) == len(dc.STEPS)
