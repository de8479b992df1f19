"""cli.py: one meaning per flag name; every script's parser takes the canonical names and the kept aliases."""
import subprocess
import sys
from pathlib import Path

import pytest

import cli
import detect
import valid
from benchmarks import bench_forward, bench_train, bench_valid
from errors import FlagError
from multi_obj_pose_estimation import valid_multi
from tools import bop_to_linemod, draw_labels, export_onnx, make_labels, make_synthetic_linemod, run_study


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
    assert parse(draw_labels, ["--datacfg", "a.data", "b.data", "--out", "x.png"]).datacfg == ["a.data", "b.data"]
    assert parse(draw_labels, ["--data", "a.data", "--out", "x.png"]).datacfg == ["a.data"]
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
    assert valid.resolve_device is cli.resolve_device
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
