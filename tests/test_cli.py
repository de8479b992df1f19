"""cli.py: one meaning per flag name; every script's parser takes the canonical names and the kept aliases."""
import argparse
import importlib
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import cli
import detect
import hostile
import linemod_format
import train
import valid
from benchmarks import bench_forward, bench_train, bench_valid
from errors import FlagError, OutputPathError
from multi_obj_pose_estimation import train_multi, valid_multi
from benchmarks import bench_loader, device_check, run_all
from tools import (bop_to_linemod, draw_labels, export_onnx, fork_numbers, make_labels, make_synthetic_linemod,
                   plot_curve, record_main_job, run_study)


def parse(module, argv):
    return module.get_args_parser().parse_args([str(a) for a in argv])


def test_valid_takes_flags_positional_form_and_the_forks_spelling():
    a = parse(valid, ["--datacfg", "d.data", "--modelcfg", "m.cfg", "--weightfile", "w", "--batch-size", "4",
                      "--test-size", "320", "--device", "cpu", "--workers", "2", "--distill", "1"])
    assert (a.datacfg, a.modelcfg, a.weightfile, a.batch_size, a.test_size, a.distiled) == \
        ("d.data", "m.cfg", "w", 4, 320, 1)
    assert parse(valid, ["--data", "d.data"]).datacfg == "d.data"
    assert parse(valid, ["--distiled", "1"]).distiled == 1
    b = cli.merge_positional(parse(valid, ["d.data", "m.cfg", "w"]), valid.POSITIONAL)
    assert (b.datacfg, b.modelcfg, b.weightfile) == ("d.data", "m.cfg", "w")
    with pytest.raises(FlagError, match="at most three positional arguments"):
        cli.merge_positional(parse(valid, ["a", "b", "c", "d"]), valid.POSITIONAL)
    with pytest.raises(FlagError, match="datacfg given twice"):
        cli.merge_positional(parse(valid, ["a", "--datacfg", "b"]), valid.POSITIONAL)


def test_detect_and_valid_multi_share_the_names():
    a = parse(detect, ["img/", "--datacfg", "d.data", "--weightfile", "w", "--test-size", "224", "--pnp", "epnp"])
    assert (a.source, a.datacfg, a.weightfile, a.test_size, a.pnp, a.device) == ("img/", "d.data", "w", 224, "epnp",
                                                                                 "auto")
    m = parse(valid_multi, ["--initweightfile", "w", "--objects", "ape,can", "glue", "--batch-size", "2"])
    assert m.weightfile == "w" and m.batch_size == 2
    assert cli.object_list(m.objects) == ["ape", "can", "glue"]
    assert parse(valid_multi, ["--weightfile", "x"]).weightfile == "x"


def test_objects_are_names_and_the_count_is_num_objects():
    assert parse(bop_to_linemod, ["--bop", "b", "--out", "o", "--objects", "ape", "5"]).objects == ["ape", "5"]
    assert bop_to_linemod.object_ids(["ape", "5", "obj_000007", "can"]) == [1, 5, 7, 5]
    assert parse(make_synthetic_linemod, ["--num-objects", "2"]).num_objects == 2
    assert parse(run_study, ["--num-objects", "1", "--images-per-object", "4", "--train-size", "64",
                             "--batch-size", "2"]).num_objects == 1
    for module, argv in ((make_synthetic_linemod, ["--objects", "2"]), (run_study, ["--objects", "2"]),
                         (valid, ["--size", "320"]), (detect, ["x", "--datacfg", "d", "--weightfile", "w", "--size",
                                                                "320"]), (bench_forward, ["--batches", "1,16"])):
        with pytest.raises(SystemExit):
            parse(module, argv)


def test_tools_and_benchmarks_use_the_canonical_names():
    assert parse(draw_labels, ["--datacfg", "a.data", "b.data", "--out-file", "x.png"]).datacfg == ["a.data", "b.data"]
    assert parse(draw_labels, ["--data", "a.data", "--out-file", "x.png"]).datacfg == ["a.data"]
    assert parse(export_onnx, ["--modelcfg", "m.cfg", "--weightfile", "w"]).weightfile == "w"
    assert parse(make_labels, ["--mesh", "m", "--poses", "p", "--out", "o", "--name", "n", "--seed", "3"]).seed == 3
    f = parse(bench_forward, ["--batch-sizes", "1,2", "--test-size", "64", "--device", "cpu"])
    assert (f.batch_sizes, f.test_size, f.device) == ("1,2", 64, "cpu")
    t = parse(bench_train, ["--batch-size", "8", "--train-size", "128"])
    assert (t.batch_size, t.train_size, t.device) == (8, 128, "auto")
    v = parse(bench_valid, ["--images-per-object", "4", "--batch-sizes", "1,2", "--test-size", "64"])
    assert (v.images_per_object, v.batch_sizes, v.test_size) == (4, "1,2", 64)


def test_checks_and_device():
    cli.check_size("--test-size", None)
    cli.check_size("--test-size", 64)
    for bad in (0, 100, -32):
        with pytest.raises(FlagError, match="--test-size must be a positive multiple of 32"):
            cli.check_size("--test-size", bad)
    with pytest.raises(FlagError, match="--batch-size must be >= 1, found 0"):
        cli.check_positive("--batch-size", 0)
    assert cli.resolve_device("cpu").type == "cpu"
    with pytest.raises(FlagError, match="--device banana: not a device"):
        cli.resolve_device("banana")


def test_a_bad_input_exits_with_status_2_and_one_message(tmp_path):
    root = Path(cli.__file__).parent
    proc = subprocess.run([sys.executable, "valid.py", str(tmp_path / "nope.data")], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("valid.py: error: cannot evaluate:")
    assert "nope.data: data cfg not found" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# issue 25: range checks that name the flag, output paths checked before the work
# --------------------------------------------------------------------------------------------

def test_devices_sizes_and_seeds_out_of_range_name_the_flag(capsys):
    for name in ("mps", "meta"):  # accepted by torch.device, then a traceback in the first layer
        with pytest.raises(FlagError, match=f"--device {name}: expected auto, cpu, cuda or cuda:N"):
            cli.resolve_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(FlagError, match="--device cuda:7: CUDA is not available"):
            cli.resolve_device("cuda:7")
    with pytest.raises(FlagError, match=f"--test-size must be at most {cli.MAX_SIZE} .*found 100000"):
        cli.check_size("--test-size", 100000)  # was a MemoryError after the model loaded
    cli.check_size("--test-size", cli.MAX_SIZE)
    assert parse(train, ["--seed", str(cli.MAX_SEED)]).seed == cli.MAX_SEED
    for bad in ("-1", str(cli.MAX_SEED + 1), "1.5"):
        with pytest.raises(SystemExit) as exit_:
            parse(train, ["--seed", bad])
        assert exit_.value.code == 2
        assert f"argument --seed: expected a whole number from 0 to {cli.MAX_SEED}" in capsys.readouterr().err
    with pytest.raises(FlagError, match="--opset must be from 18 to 25, found 1"):
        cli.check_range("--opset", 1, 18, 25)


def test_output_paths_are_checked_before_the_work(tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(OutputPathError, match=r"--json .*: is a folder; expected a file name"):
        cli.check_output_file("--json", tmp_path)
    with pytest.raises(OutputPathError, match=r"--csv .*a_file: is a file; expected a folder"):
        cli.check_output_file("--csv", a_file / "x.csv")
    with pytest.raises(OutputPathError, match=r"--out .*a_file: is a file; expected a folder"):
        cli.check_output_dir("--out", a_file)
    assert cli.check_output_file("--json", tmp_path / "new" / "s.json") == tmp_path / "new" / "s.json"
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []  # the probe is gone
    # tests run as root, where chmod stops no write: a read-only file system is simulated
    monkeypatch.setattr(linemod_format, "open", hostile.os_error(hostile.EROFS), raising=False)
    with pytest.raises(OutputPathError, match=r"--save-predictions .*ro: cannot write there \(Read-only file system\)"):
        cli.check_output_dir("--save-predictions", tmp_path / "ro")
    monkeypatch.undo()
    monkeypatch.setattr(cli.shutil, "disk_usage", lambda p: SimpleNamespace(total=1 << 30, used=1 << 30, free=10))
    with pytest.raises(OutputPathError, match=r"--out .*full: the file system is full \(10 bytes free\)"):
        cli.check_output_dir("--out", tmp_path / "full")


@pytest.mark.parametrize("module", [train, train_multi])
def test_a_minutes_budget_replaces_the_main_jobs_epochs(module):
    # `train.py --minutes 120` trains two hours: the main job's epoch count must not also stop it
    timed = cli.fill_main_job_defaults(parse(module, ["--minutes", "120"]), module.QUICK)
    assert timed.epochs is None and timed.minutes == 120 and timed.recipe == "fast"
    plain = cli.fill_main_job_defaults(parse(module, []), module.QUICK)
    assert plain.epochs == module.MAIN_JOB_EPOCHS and plain.minutes is None
    both = cli.fill_main_job_defaults(parse(module, ["--minutes", "5", "--epochs", "3"]), module.QUICK)
    assert (both.epochs, both.minutes) == (3, 5)  # given together, both stay: whichever ends first


# --------------------------------------------------------------------------------------------
# issue 36: one vocabulary. Every script (a file with a __main__ guard) exposes get_args_parser; a
# flag name has one meaning in all of them (the same dest, action, type and choices, and the same
# first words of its help); where its defaults differ, every help says why ("default X: why").
# --------------------------------------------------------------------------------------------

ROOT = Path(cli.__file__).resolve().parent
SCRIPT_FOLDERS = (".", "multi_obj_pose_estimation", "tools", "benchmarks")
DEFAULT_WHY = re.compile(r"\bdefault\b[^;()]*?:\s*\S")  # 'default X: why', or 'default: how' for a computed one


def script_modules() -> list[str]:
    """The module name of every script and tool: each .py file of SCRIPT_FOLDERS with a __main__ guard."""
    names = []
    for folder in SCRIPT_FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            if 'if __name__ == "__main__":' in path.read_text():
                names.append(path.relative_to(ROOT).with_suffix("").as_posix().replace("/", "."))
    return names


def meaning(help_text: str) -> str:
    """A help's first words, up to ' (', '; ', ': ' or ', ': what the flag is."""
    return re.split(r" \(|; |: |, ", help_text or "", maxsplit=1)[0].strip().lower()


def vocabulary_problems(parsers: dict) -> list[str]:
    """One line per flag name that has two meanings, or two defaults without a help that says why.

    parsers: {script: ArgumentParser}. Hidden options (help=SUPPRESS: the kept old spellings,
    cli.add_alias) are left out; a required flag has no default to explain."""
    uses = defaultdict(list)
    for script, parser in parsers.items():
        for action in parser._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                for name in action.option_strings:
                    uses[name].append((script, action))
    problems = []
    for name, found in sorted(uses.items()):
        kinds = {(a.dest, type(a).__name__, getattr(a.type, "__name__", a.type), tuple(a.choices or ()),
                  meaning(a.help)) for _, a in found}
        if len(kinds) > 1:
            problems.append(f"{name} has {len(kinds)} meanings: " + "; ".join(
                f"{script}: {meaning(a.help)!r} ({a.dest}, {type(a).__name__}, {getattr(a.type, '__name__', a.type)}, "
                f"{a.choices})" for script, a in found))
        optional = [(script, a) for script, a in found if not a.required]
        if len({repr(a.default) for _, a in optional}) > 1:
            problems += [f"{name} in {script}: default {a.default!r}, elsewhere another, and its help says not why "
                         f"('default X: why'): {a.help!r}"
                         for script, a in optional if not DEFAULT_WHY.search(a.help or "")]
    return problems


def test_every_script_exposes_its_parser_without_abbreviations():
    modules = script_modules()
    assert {"train", "valid", "detect", "multi_obj_pose_estimation.train_multi", "tools.run_study",
            "benchmarks.bench_loss"} <= set(modules) and len(modules) >= 23
    for name in modules:
        parser = importlib.import_module(name).get_args_parser()
        assert isinstance(parser, argparse.ArgumentParser) and not parser.allow_abbrev, name


def test_one_flag_name_has_one_meaning_in_every_script():
    parsers = {name: importlib.import_module(name).get_args_parser() for name in script_modules()}
    assert vocabulary_problems(parsers) == []


def test_the_vocabulary_rule_finds_two_meanings_and_unexplained_defaults():
    a, b = argparse.ArgumentParser(), argparse.ArgumentParser()
    a.add_argument("--multi", action="store_true", help="multi-object mode")
    b.add_argument("--multi", type=int, default=0, help="number of scenes")
    a.add_argument("--out", help="output folder")
    b.add_argument("--out", help="output file: the PNG")
    a.add_argument("--rounds", type=int, default=3, help="timed repetitions")
    b.add_argument("--rounds", type=int, default=5, help="timed repetitions (default 5: a median of five)")
    a.add_argument("--seed", type=int, default=0, help="random seed")
    b.add_argument("--seed", type=int, default=0, help="random seed: of the split")
    b.add_argument("--old", dest="seed", type=int, help=argparse.SUPPRESS)  # a kept spelling: not counted
    problems = vocabulary_problems({"a.py": a, "b.py": b})
    assert [p.split(":")[0] for p in problems] == ["--multi has 2 meanings", "--multi in a.py", "--multi in b.py",
                                                   "--out has 2 meanings", "--rounds in a.py"]
    assert "a.py: 'multi-object mode' (multi, _StoreTrueAction, None, None)" in problems[0]
    assert "b.py: 'number of scenes' (multi, _StoreAction, int, None)" in problems[0]
    assert problems[3].endswith("b.py: 'output file' (out, _StoreAction, None, None)")
    assert problems[4].startswith("--rounds in a.py: default 3, elsewhere another")


# the renamed flags (docs/design.md §15): old spelling, new spelling, the arguments the script needs besides
RENAMED = [
    (make_synthetic_linemod, "--multi", "--scenes", ["4"], []),
    (make_synthetic_linemod, "--fresh-multi", "--fresh-scenes", ["4"], []),
    (run_study, "--data", "--dataset", ["d"], []),
    (make_labels, "--diam", "--diameter", ["0.1"], ["--mesh", "m", "--poses", "p", "--out", "o", "--name", "n"]),
    (draw_labels, "--split", "--list", ["train"], ["--datacfg", "a.data", "--out-file", "x.png"]),
    (draw_labels, "--out", "--out-file", ["x.png"], ["--datacfg", "a.data"]),
    (export_onnx, "--out", "--out-file", ["m.onnx"], ["--modelcfg", "m.cfg"]),
    (plot_curve, "--out", "--out-file", ["c.png"], ["metrics.jsonl"]),
    (record_main_job, "--out", "--out-file", ["r.json"], ["--backupdir", "b", "--wall-minutes", "1", "--test-json",
                                                          "t", "--fresh-json", "f", "--fresh-seed", "1", "--machine",
                                                          "m"]),
    (record_main_job, "--backup", "--backupdir", ["b"], ["--wall-minutes", "1", "--test-json", "t", "--fresh-json",
                                                         "f", "--fresh-seed", "1", "--machine", "m", "--out-file",
                                                         "r.json"]),
    (run_all, "--out", "--out-file", ["b.md"], []),
    (make_synthetic_linemod, "--backgrounds", "--bg-dir", ["d"], ["--mesh", "m.ply"]),
    (device_check, "--steps", "--only", ["env"], []),
    (bench_loader, "--repeats", "--rounds", ["2"], []),
    (run_study, "--fresh-images", "--fresh-test", ["4"], []),
    (fork_numbers, "--size", "--train-size", ["128"], []),
]


@pytest.mark.parametrize("module, old, new, value, rest", RENAMED, ids=lambda v: v if isinstance(v, str) else None)
def test_a_renamed_flag_keeps_its_old_spelling_with_one_line_naming_the_new(module, old, new, value, rest, capsys):
    by_new = parse(module, rest + [new, *value])
    assert capsys.readouterr().err == ""
    by_old = parse(module, rest + [old, *value])
    assert vars(by_old) == vars(by_new)
    prog = module.get_args_parser().prog
    assert capsys.readouterr().err == f"{prog}: warning: {old} is deprecated: use {new} (the same flag; " \
                                      f"docs/design.md §15)\n"
    shown = {name for a in module.get_args_parser()._actions if a.help != argparse.SUPPRESS
             for name in a.option_strings}
    assert new in shown and old not in shown  # --help shows the one name


def test_an_original_scripts_own_spelling_stays_without_a_warning(capsys):
    """valid_multi.py's --initweightfile is the original's name for the weights it scores (design §7.4)."""
    assert parse(valid_multi, ["--initweightfile", "w"]).weightfile == "w"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("script", ["tools/plot_curve.py", "tools/record_main_job.py"])  # inside run_cli or not
def test_a_warning_of_a_deprecated_flag_is_one_line(tmp_path, script):
    proc = subprocess.run([sys.executable, script, "--out", str(tmp_path / "c.png"), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.stderr == (f"{Path(script).name}: warning: --out is deprecated: use --out-file (the same flag; "
                           f"docs/design.md §15)\n")
    assert proc.returncode == 0 and "--out-file" in proc.stdout


def test_names_are_never_abbreviated():
    """`--backup` is record_main_job.py's old spelling: in train.py it was an abbreviation of --backupdir."""
    for module, argv in ((train, ["--backup", "b"]), (train, ["--all"]), (train, ["--init", "w"])):
        with pytest.raises(SystemExit):
            parse(module, argv)
