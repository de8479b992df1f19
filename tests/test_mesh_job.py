"""`train.py --mesh`: one command from a mesh to a model (mesh_job.py, design §7.7), on a tiny budget:
a 12-image set of a small PLY box at 64 x 64 px, one epoch."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

import detect
import mesh_job
import recipes
import synthetic
import train
import valid
from errors import FlagError, InputError, MeshError, OverwriteError, run_cli
from multi_obj_pose_estimation import train_multi, valid_multi
from randomisation import RenderOptions

from test_render import box_quads, colours_for, ply_text

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
CAMERA = ["--fx", "60", "--fy", "60", "--u0", "32", "--v0", "32", "--width", str(SIZE), "--height", str(SIZE)]
TINY = ["--train-size", str(SIZE), "--test-size", str(SIZE), "--epochs", "1",
        "--workers", "0", "--batch-size", "4", "--quiet"]


def write_box(path: Path, size=(80, 60, 100), origin=(10, -15, 20), reverse=False) -> Path:
    """An off-centre box in millimetres with a colour per vertex."""
    v, q = box_quads(size=size, origin=origin)
    colours = colours_for(v)
    path.write_text(ply_text(v, q, [("uchar", "red"), ("uchar", "green"), ("uchar", "blue")],
                             colours[::-1] if reverse else colours))
    return path


def mesh_argv(*meshes, extra=()) -> list[str]:
    return ["--mesh", *map(str, meshes), "--mesh-units", "mm", "--images-per-object", "12", *CAMERA, *TINY, *extra]


def command(out: str, script: str) -> list[str]:
    """The arguments of the printed `python <script> ...` command."""
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) > 1 and words[0] == "python" and Path(words[1]).name == script:
            return words[2:]
    raise AssertionError(f"no python {script} command in:\n{out}")


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """The one command, run once in a fresh folder: (folder, printed output, final state)."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("mesh_job")
    write_box(folder / "box.ply")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            state = train.main_cli(mesh_argv("box.ply"))
        yield folder, buffer.getvalue(), state
    finally:
        os.chdir(cwd)


def set_folder(root: Path) -> Path:
    """The one set under root/data/mesh/, relative to root (the folder the runs work in)."""
    (folder,) = (root / mesh_job.MESH_ROOT).iterdir()
    return folder.relative_to(root)


def test_the_one_command_renders_trains_and_prints_commands_that_run(one, monkeypatch, tmp_path):
    root, out, state = one
    monkeypatch.chdir(root)
    folder = set_folder(root)
    params = synthetic.mesh_set_params(["box.ply"], "mm", [[60, 0, 32], [0, 60, 32], [0, 0, 1]], SIZE, SIZE, 12, 0,
                                       None, 0, recipes.MESH.test_fraction)
    assert folder == mesh_job.set_folder(params) and folder.name.startswith("box_")
    assert synthetic.dataset_params(folder) == (params, True)  # the manifest records the set, finished
    assert len((folder / "LINEMOD/box/train.txt").read_text().split()) == 11  # 12 images, a tenth held out
    backup = Path("backup/mesh/box")
    assert (backup / "model.weights").is_file() and state["epoch"] == 1
    info = json.loads((backup / "model_info.json").read_text())
    assert info["test_size"] == SIZE and info["box_rule"] == recipes.FAST.box_rule
    assert info["input_filter"] == recipes.MESH.input_filter
    assert Path(info["modelcfg"]).name == Path(recipes.MESH.modelcfg).name
    # the printed valid.py command runs as written and scores the rendered test split (1 image)
    (summary,) = valid.main(valid.get_args_parser().parse_args(command(out, "valid.py")))
    assert summary["n"] == 1 and summary["test_size"] == [SIZE, SIZE] and 0 <= summary["acc_2d"] <= 100
    # the printed detect.py command: its camera and mesh are the set's; PHOTOS is the user's folder
    argv = command(out, "detect.py")
    assert argv[0] == mesh_job.PHOTOS and argv[argv.index("--datacfg") + 1] == str(folder / "cfg/box.data")
    photos = tmp_path / "photos"
    photos.mkdir()
    test_image = (folder / "LINEMOD/box/test.txt").read_text().split()[0]
    (photos / "a.jpg").write_bytes((folder / test_image).read_bytes())
    argv[0] = str(photos)
    detect.main(detect.get_args_parser().parse_args([*argv, "--out", str(tmp_path / "det"), "--quiet"]))
    (frame,) = json.loads((tmp_path / "det/detections.json").read_text())["frames"]
    assert frame["frame"] == "a" and frame["width"] == SIZE and (tmp_path / "det/a.png").is_file()


def test_a_second_call_reuses_the_set_and_other_inputs_render_another(one, monkeypatch, capsys):
    root, _, _ = one
    monkeypatch.chdir(root)
    folder = set_folder(root)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    train.main_cli([*mesh_argv("box.ply"), "--backupdir", "backup/again"])
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()} == before
    assert Path("backup/again/model.weights").is_file()
    # the same run folder again: the engine's rule (--resume or --overwrite), the set untouched
    with pytest.raises(InputError, match="already holds a run"):
        train.main_cli(mesh_argv("box.ply"))
    # another option is another set, in its own folder
    params = synthetic.mesh_set_params(["box.ply"], "mm", [[60, 0, 32], [0, 60, 32], [0, 0, 1]], SIZE, SIZE, 12, 0,
                                       RenderOptions(blur_px=(0, 0)), 0, recipes.MESH.test_fraction)
    assert mesh_job.set_folder(params) != folder
    capsys.readouterr()


def test_the_set_folder_is_named_by_every_input(tmp_path):
    mesh = write_box(tmp_path / "box.ply")
    K = [[60, 0, 32], [0, 60, 32], [0, 0, 1]]
    base = dict(mesh_paths=[mesh], mesh_units="mm", K=K, width=64, height=64, n_images=12, seed=0, options=None,
                multi=0, test_fraction=0.1)
    changes = [dict(mesh_units="m"), dict(K=[[61, 0, 32], [0, 60, 32], [0, 0, 1]]), dict(width=96),
               dict(n_images=13), dict(seed=1), dict(options=RenderOptions(noise=(0, 1))), dict(test_fraction=0.2)]
    names = {mesh_job.set_folder(synthetic.mesh_set_params(**{**base, **c})) for c in changes}
    first = mesh_job.set_folder(synthetic.mesh_set_params(**base))
    assert len(names) == len(changes) and first not in names
    assert mesh_job.set_folder(synthetic.mesh_set_params(**base)) == first  # the same inputs, the same folder
    write_box(mesh, size=(80, 60, 101))  # the mesh's bytes, not its name
    assert mesh_job.set_folder(synthetic.mesh_set_params(**base)) != first


def test_a_folder_it_did_not_make_is_refused_and_left_as_it_is(one, tmp_path, monkeypatch):
    root, _, _ = one
    monkeypatch.chdir(tmp_path)
    write_box(tmp_path / "box.ply")
    theirs = tmp_path / mesh_job.MESH_ROOT / set_folder(root).name / "cfg" / "box.data"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("the user's\n")
    with pytest.raises(OverwriteError, match=r"(?s)the --mesh run's synthetic set cannot be made.*box.data.*"
                                             r"move this folder away"):
        train.main_cli(mesh_argv("box.ply"))
    assert theirs.read_text() == "the user's\n"
    assert not Path("backup").exists()


@pytest.mark.parametrize("argv, error, message", [
    (["--mesh", "nope.ply"], MeshError, "nope.ply: mesh file not found"),
    (["--mesh", "box.ply", "--datacfg", "cfg/ape.data"], FlagError, "--mesh renders its own set"),
    (["--fx", "500"], FlagError, "--fx is an option of a --mesh set; pass --mesh FILE"),
    (["--blur", "0"], FlagError, "--blur is an option of a --mesh set"),
    (["--mesh", "box.ply", "--scenes", "3"], FlagError, "scenes show several objects together"),
    (["--mesh", "box.ply", "--images-per-object", "0"], FlagError, "--images-per-object must be >= 1"),
    (["--mesh", "box.ply", "--modelcfg", "nope.cfg"], InputError, "--modelcfg nope.cfg: file not found"),
    (["--mesh", "box.ply", "box.ply", "--scenes", "2", "--modelcfg", str(ROOT / recipes.MESH.modelcfg)], InputError,
     "2 meshes, one class each, but"),  # a one-class network for two meshes: before the rendering
])
def test_bad_input_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys, argv, error, message):
    monkeypatch.chdir(tmp_path)
    write_box(tmp_path / "box.ply")
    with pytest.raises(error, match=message):
        train.main_cli([*argv, *TINY])
    with pytest.raises(SystemExit) as exit_:
        run_cli(train.main_cli, [*argv, *TINY], prog="train.py")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error:") and message in err and len(err.splitlines()) == 1
    assert not Path("data").exists() and not Path("backup").exists()


def test_several_meshes_train_a_multi_object_model_on_scenes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, b = write_box(tmp_path / "a.ply"), write_box(tmp_path / "b.ply", size=(50, 90, 40), origin=(5, 5, -10),
                                                    reverse=True)
    with pytest.raises(FlagError, match="2 --mesh files train a multi-object model"):  # main() alone: one object
        train.main(train.get_args_parser().parse_args(mesh_argv(a, b)))
    with pytest.raises(FlagError, match="a multi-object model needs several meshes; train.py --mesh trains one"):
        train_multi.main_cli(mesh_argv(a))
    train.main_cli(mesh_argv(a, b, extra=["--images-per-object", "2", "--scenes", "12"]))
    out = capsys.readouterr().out
    folder = set_folder(tmp_path)
    assert folder.name.startswith("a_b_") and synthetic.dataset_params(folder)[0]["multi"] == 12
    backup = Path("backup/mesh/a_b")
    assert (backup / "model.weights").is_file() and (backup / "model_info.json").is_file()
    assert Path(json.loads((backup / "model_info.json").read_text())["modelcfg"]).name == \
        Path(recipes.MESH_MULTI.modelcfg).name
    # the printed valid_multi.py command scores every mesh on the rendered test scenes
    summaries = valid_multi.main(valid_multi.get_args_parser().parse_args(command(out, "valid_multi.py")))
    assert sorted(s["object"] for s in summaries) == ["a", "b"]
    detect_argv = command(out, "detect.py")
    assert "--multi" in detect_argv and detect_argv[detect_argv.index("--datacfg") + 1] == \
        str(folder / "cfg/occlusion.data")


def test_bg_dir_is_the_folder_the_set_is_rendered_over_and_trained_with(capsys):
    """train.py has one --bg-dir: with --mesh the rendering's photos (RenderOptions.backgrounds) and the
    training sample's; --backgrounds, the generator's old name, is the same flag."""
    from randomisation import options_from_args

    args = train.get_args_parser().parse_args(["--mesh", "x.ply", "--bg-dir", "photos", "--blur", "0.5"])
    assert args.bg_dir == "photos"
    options = options_from_args(args)
    assert options.backgrounds == "photos" and options.blur_px == (0.5, 0.5)
    old = train.get_args_parser().parse_args(["--mesh", "x.ply", "--backgrounds", "photos", "--blur", "0.5"])
    assert vars(old) == vars(args)
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "warning: --backgrounds is deprecated: use --bg-dir (the same flag; docs/design.md §15)")
