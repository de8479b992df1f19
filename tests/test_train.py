"""train.py: schedule, optimiser, overfitting, resume, best-model rule, distillation, bad input, DDP,
and the main job (design §5, §7, §8)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import cli
import dataset
import engine
import evaluation
import hostile
import linemod_format
import recipes
import train
import training
import valid
from darknet import Darknet
from errors import EXIT_FAULT, FlagError, InputError, run_cli
from region_loss import RegionLoss
from synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
TRIAL3 = str(ROOT / "cfg/yolo-lite-trial3-pose.cfg")
TRIAL10 = str(ROOT / "cfg/yolo-lite-trial10-pose.cfg")
BACKBONE3 = str(ROOT / "weights/tiny-yolov2-trial3-voc.weights")
SIZE = 96  # smallest comfortable multiple of 32 for the smoke runs (3 x 3 grid)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """One synthetic object, 12 images (9 train / 3 test)."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, objects=1, images_per_object=12, seed=0)
    return root / "cfg" / "obj00.data"


def run_main(argv: list[str]) -> dict:
    return train.main(train.get_args_parser().parse_args(argv))


def small_args(datacfg, backup, *extra) -> list[str]:
    return [str(datacfg), TRIAL3, BACKBONE3, "--backupdir", str(backup), "--batch-size", "4",
            "--train-size", str(SIZE), "--test-size", str(SIZE), "--workers", "0", "--quiet",
            "--pretrain_num_epochs", "0", *extra]


# --------------------------------------------------------------------------------------------
# schedule and optimiser (design §7.1, §7.2)
# --------------------------------------------------------------------------------------------

def test_learning_rate_schedules_of_the_cfgs():
    ms = Darknet(ROOT / "cfg/yolo-pose.cfg").net  # steps -1,80,160 in epochs
    nb = 1000 / 8  # nbatches = nSamples / batch
    lr = lambda t: recipes.step_learning_rate(t, ms["learning_rate"], ms["steps"], ms["scales"], nb)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4)
    assert lr(80 * nb - 1) == pytest.approx(1e-4)
    assert lr(80 * nb) == pytest.approx(1e-5)
    assert lr(160 * nb - 1) == pytest.approx(1e-5)
    assert lr(160 * nb + 5) == pytest.approx(1e-6)

    fork = Darknet(TRIAL3).net  # steps 400000,450000 epochs: never reached
    last_batch = 500 * 100 / 16  # 500 epochs of 100 images
    last_lr = recipes.step_learning_rate(last_batch, fork["learning_rate"], fork["steps"], fork["scales"], 100 / 16)
    assert last_lr == 1e-3

    multi = Darknet(ROOT / "multi_obj_pose_estimation/cfg/yolo-pose-multi.cfg").net  # raw batches
    lr = lambda t: recipes.step_learning_rate(t, multi["learning_rate"], multi["steps"], multi["scales"])  # noqa: E731
    assert [lr(t) for t in (0, 99, 100, 19999, 20000, 29999, 30000, 10 ** 6)] == pytest.approx(
        [1e-4, 1e-4, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])


def test_optimizer_divides_lr_and_multiplies_decay_by_batch():
    model = Darknet(TRIAL3)
    opt = recipes.build_sgd(model, 1e-3, 0.9, 5e-4, 16)
    (g,) = opt.param_groups
    assert g["lr"] == pytest.approx(1e-3 / 16) and g["weight_decay"] == pytest.approx(5e-4 * 16)
    assert g["momentum"] == 0.9 and g["dampening"] == 0 and not g["nesterov"]
    assert len(g["params"]) == len(list(model.parameters()))  # BN and biases decayed too (design §7.1)
    opt = recipes.build_sgd(model, 1e-3, 0.9, 5e-4, 16, decay_bn_bias=False)
    assert [g["weight_decay"] for g in opt.param_groups] == [pytest.approx(8e-3), 0.0]
    assert all(p.ndim <= 1 for p in opt.param_groups[1]["params"])


# --------------------------------------------------------------------------------------------
# learning
# --------------------------------------------------------------------------------------------

def test_overfits_eight_images(tmp_path):
    """8 synthetic images at 128x128: the loss (all terms) at least halves within 60 steps."""
    generate(tmp_path / "d", objects=1, images_per_object=8, seed=1, test_fraction=0.0)
    opts = linemod_format.read_data_cfg(tmp_path / "d/cfg/obj00.data", resolve_paths=True)
    data = dataset.listDataset(opts["train"], shape=(128, 128), train=False)
    assert len(data) == 8
    images, target = next(iter(dataset.make_test_loader(data, batch_size=8)))
    torch.manual_seed(0)
    model = Darknet(TRIAL3)
    model.load_weights_until_last(BACKBONE3)
    model.train()
    loss_fn = RegionLoss.from_region(model.region, 9, scales="cfg", pretrain_num_epochs=0)
    opt = recipes.build_sgd(model, 1e-3, 0.9, 5e-4, 8)
    losses = []
    for _ in range(60):
        loss, _ = loss_fn(model(images), target, 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert min(losses[-5:]) < 0.5 * losses[0], losses[::10]


# --------------------------------------------------------------------------------------------
# outputs, resume, best-model rule
# --------------------------------------------------------------------------------------------

def test_two_epochs_equal_one_plus_resume(synth, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_main(small_args(synth, full, "--epochs", "2", "--eval-every", "1"))
    run_main(small_args(synth, part, "--epochs", "1", "--eval-every", "1"))
    first = torch.load(part / "checkpoint.pt", weights_only=True)
    assert first["state"]["epoch"] == 1 and first["state"]["batch_in_epoch"] == 0
    run_main(small_args(synth, part, "--epochs", "2", "--eval-every", "1", "--resume"))
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert a["state"]["seen"] == b["state"]["seen"] == 2 * 9
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["state"]["costs"]["training_losses"] == b["state"]["costs"]["training_losses"]

    # every output of design §7.3 plus ours, one metrics row per evaluation (epochs 1 and the last)
    for name in ("model.weights", "checkpoint.pt", "costs.npz", "metrics.csv", "metrics.jsonl", "training.png"):
        assert (full / name).is_file(), name
    costs = np.load(full / "costs.npz")
    assert set(costs.files) == set(train.COST_KEYS)
    assert len(costs["training_iters"]) == 6 and costs["training_iters"][-1] == 18  # 3 batches x 2 epochs
    with open(full / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"]
    model = Darknet(TRIAL3)
    model.load_weights(full / "model.weights")  # darknet format, full load
    assert model.seen == 18


def test_a_seed_gives_byte_identical_weights(synth, tmp_path):
    """An epoch budget trains the same model on any machine and under any load (no clock in the schedule)."""
    for run in ("a", "b"):
        run_main(small_args(synth, tmp_path / run, "--recipe", "fast", "--epochs", "2", "--eval-every", "1",
                            "--seed", "3"))
    for name in ("model.weights", "last.weights"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    run_main(small_args(synth, tmp_path / "c", "--recipe", "fast", "--epochs", "2", "--eval-every", "1",
                        "--seed", "4"))
    assert (tmp_path / "a" / "last.weights").read_bytes() != (tmp_path / "c" / "last.weights").read_bytes()


def test_the_image_cache_trains_the_same_model(synth, tmp_path):
    """--cache-images (D67) changes where the pixels come from, not the pixels: byte-identical weights
    (the cached run loads in a forked worker, which reads the parent's arrays)."""
    for run, extra in (("plain", []), ("cached", ["--cache-images", "--workers", "1"])):
        run_main(small_args(synth, tmp_path / run, "--recipe", "fast", "--epochs", "2", "--eval-every", "1",
                            "--seed", "3", *extra))
    for name in ("model.weights", "last.weights"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "cached" / name).read_bytes(), name
    with pytest.raises(FlagError, match="--cache-images serves the fast recipe's cv2 loader"):
        run_main(small_args(synth, tmp_path / "original", "--recipe", "original", "--epochs", "1", "--cache-images"))
    assert not (tmp_path / "original").exists()


def test_the_input_filter_is_the_run_s_tests_and_goes_to_model_info(synth, tmp_path, monkeypatch):
    """D69: --input-filter filters the images of the run's own tests and is written to model_info.json,
    from where valid.py and detect.py take it."""
    filters = []
    real = dataset.listDataset

    def spy(*args, **kw):
        filters.append((kw.get("train", False), kw.get("input_filter", "none")))
        return real(*args, **kw)

    monkeypatch.setattr(dataset, "listDataset", spy)
    run_main(small_args(synth, tmp_path / "run", "--recipe", "fast", "--epochs", "1", "--max-batches", "1",
                        "--input-filter", "median:3", "--also-valid", str(synth)))
    assert filters == [(True, "none"), (False, "median:3"), (False, "median:3")]  # training, test, --also-valid
    assert json.loads((tmp_path / "run" / "model_info.json").read_text())["input_filter"] == "median:3"
    run_main(small_args(synth, tmp_path / "plain", "--recipe", "fast", "--epochs", "1", "--max-batches", "1"))
    assert json.loads((tmp_path / "plain" / "model_info.json").read_text())["input_filter"] == "none"
    with pytest.raises(FlagError, match="--input-filter median:4: expected none, median:K"):
        run_main(small_args(synth, tmp_path / "bad", "--input-filter", "median:4"))
    assert not (tmp_path / "bad").exists()


def test_a_final_phase_trains_the_last_epochs_at_the_final_size_and_tests_there(synth, tmp_path, monkeypatch):
    sizes = []
    real = dataset.make_train_loader

    def spy(*args, **kw):
        sizes.append(kw["fixed_size"])
        return real(*args, **kw)

    monkeypatch.setattr(dataset, "make_train_loader", spy)
    argv = small_args(synth, tmp_path / "run", "--recipe", "fast", "--epochs", "3", "--final-size", "128",
                      "--final-epochs", "1", "--max-batches", "1")
    argv.remove("--test-size")
    argv.remove(str(SIZE))
    run_main(argv)
    assert sizes == [SIZE, SIZE, 128]
    assert json.loads((tmp_path / "run" / "model_info.json").read_text())["test_size"] == 128
    with pytest.raises(FlagError, match="go together"):
        train.resolve_args(train.get_args_parser().parse_args(small_args(synth, tmp_path / "x", "--final-size", "128")))
    with pytest.raises(FlagError, match="epoch budget"):
        train.resolve_args(train.get_args_parser().parse_args(
            small_args(synth, tmp_path / "y", "--final-size", "128", "--final-epochs", "1", "--minutes", "1")))
    with pytest.raises(FlagError, match="--final-epochs 5 is more than the 3 epochs of the run"):
        run_main(small_args(synth, tmp_path / "w", "--epochs", "3", "--final-size", "128", "--final-epochs", "5"))
    assert not (tmp_path / "w").exists()  # refused before the backup folder is made
    with pytest.raises(FlagError, match="--final-size must be a positive multiple of 32"):
        train.resolve_args(train.get_args_parser().parse_args(
            small_args(synth, tmp_path / "z", "--final-size", "100", "--final-epochs", "1")))


def test_train_sizes_draw_each_batch_in_the_range(synth, tmp_path, monkeypatch):
    """--train-sizes LO,HI (D68): the loader's batches take sizes in the range; bad values are refused."""
    seen = []
    real = dataset.make_train_loader

    def spy(*args, **kw):
        loader = real(*args, **kw)
        seen.extend(images.shape[-1] for images, _ in loader)
        return real(*args, **kw)

    monkeypatch.setattr(dataset, "make_train_loader", spy)
    argv = small_args(synth, tmp_path / "run", "--recipe", "fast", "--epochs", "2", "--train-sizes", "64,128")
    argv.remove("--train-size")
    argv.remove(str(SIZE))
    run_main(argv)
    assert set(seen) <= {64, 96, 128} and len(set(seen)) >= 2 and len(seen) == 6  # 2 epochs of 3 batches
    for value, message in [("64", "must be LO,HI"), ("64,100", "must be a positive multiple of 32"),
                           ("128,64", "LO must not be above HI")]:
        with pytest.raises(FlagError, match=message):
            train.resolve_args(train.get_args_parser().parse_args(small_args(synth, tmp_path / "x", "--train-sizes",
                                                                             value)))
    with pytest.raises(FlagError, match="give one"):  # small_args gives --train-size too
        train.resolve_args(train.get_args_parser().parse_args(small_args(synth, tmp_path / "x", "--train-sizes",
                                                                         "64,128")))


def test_best_model_is_replaced_only_by_a_strictly_better_one(synth, tmp_path, monkeypatch):
    scores = iter([10.0, 5.0, 10.0, 20.0])
    written = []

    def fake_evaluate(model, loader, setup, device, **kw):
        acc = next(scores)
        keys = ("acc_2d", "acc_add", "acc_adds", "acc_5cm5deg", "acc_corner", "mean_err_2d", "mean_err_add",
                "mean_err_corner", "mean_err_trans", "mean_err_angle", "n", "n_failed")
        return {k: (acc if k == "acc_2d" else 0.0) for k in keys}, {}

    real_save = Darknet.save_weights

    def spy_save(self, path, *a, **kw):
        if Path(path).name == "model.weights":  # not last.weights, written once at the end
            written.append(self.seen)
        return real_save(self, path, *a, **kw)

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(Darknet, "save_weights", spy_save)
    state = run_main(small_args(synth, tmp_path, "--epochs", "5", "--eval-every", "1"))
    assert state["best"] == 20.0
    assert written == [18, 45]  # after epochs 1 (10 %) and 4 (20 %); not 5 % nor the equal 10 %


def test_non_finite_loss_stops_with_the_batch_named_and_keeps_the_checkpoint(synth, tmp_path, monkeypatch, capsys):
    real = RegionLoss.forward

    def poisoned(self, output, target, epoch, teacher_output=None):
        loss, stats = real(self, output, target, epoch, teacher_output)
        return (loss * float("nan"), stats) if epoch == 1 else (loss, stats)

    monkeypatch.setattr(RegionLoss, "forward", poisoned)
    with pytest.raises(SystemExit) as exc:  # the library raises NonFiniteLoss; the CLI ends with status 1
        run_cli(train.main_cli, small_args(synth, tmp_path, "--epochs", "3"), prog="train.py")
    assert exc.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("train.py: error: non-finite loss") and "epoch 1, batch 0" in err[-1]
    assert f"the last good checkpoint is kept: {tmp_path / 'checkpoint.pt'}" in err[-1]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 1 and ckpt["state"]["seen"] == 9


def test_keyboard_interrupt_saves_and_resume_continues_mid_epoch(synth, tmp_path, monkeypatch):
    real = RegionLoss.forward
    calls = {"n": 0}

    def interrupt_on_5th(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 1, batch 1
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(RegionLoss, "forward", interrupt_on_5th)
    with pytest.raises(KeyboardInterrupt):  # no SystemExit from the library: run_cli turns it into status 130
        run_main(small_args(synth, tmp_path / "a", "--epochs", "2"))
    ckpt = torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)
    assert (ckpt["state"]["epoch"], ckpt["state"]["batch_in_epoch"], ckpt["state"]["seen"]) == (1, 1, 13)
    monkeypatch.setattr(RegionLoss, "forward", real)
    run_main(small_args(synth, tmp_path / "a", "--epochs", "2", "--resume"))
    run_main(small_args(synth, tmp_path / "b", "--epochs", "2"))
    a = torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b/checkpoint.pt", weights_only=True)
    assert a["state"]["seen"] == b["state"]["seen"] == 18
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# --------------------------------------------------------------------------------------------
# distillation (design §8)
# --------------------------------------------------------------------------------------------

def test_distillation_runs_with_the_chosen_mode(synth, tmp_path, monkeypatch):
    teacher = Darknet(TRIAL3)
    teacher.load_weights_until_last(BACKBONE3)
    teacher.save_weights(tmp_path / "teacher.weights")
    seen_modes = []
    real = RegionLoss.forward

    def spy(self, output, target, epoch, teacher_output=None):
        assert teacher_output is not None and not teacher_output.requires_grad
        assert teacher_output.shape == output.shape
        seen_modes.append((self.kd_mode, self.kd_alpha, self.neighbour_target, self.neighbour_cells > 0))
        return real(self, output, target, epoch, teacher_output)

    monkeypatch.setattr(RegionLoss, "forward", spy)
    argv = [str(synth), TRIAL10, str(ROOT / "weights/tiny-yolov2-trial10-voc.weights"), "--backupdir",
            str(tmp_path / "student"), "--batch-size", "4", "--train-size", str(SIZE), "--test-size", str(SIZE),
            "--workers", "0", "--quiet", "--epochs", "1", "--distiled", "1", "--teacher-cfg", TRIAL3,
            "--teacher-weights", str(tmp_path / "teacher.weights")]
    chosen = ["--kd-mode", "fixed", "--kd-alpha", "0.5", "--recipe", "fast", "--kd-neighbours", "teacher"]
    run_main(argv + chosen)
    assert seen_modes == [("fixed", 0.5, "teacher", True)] * 3
    # the default mode is the corrected one; the fork's bug only when asked for
    seen_modes.clear()
    run_main([*argv, "--backupdir", str(tmp_path / "student_default")])
    assert seen_modes == [("fixed", 1.0, "gt", False)] * 3


def test_init_all_layers_continues_from_a_trained_model(synth, tmp_path, monkeypatch):
    """--init-all-layers loads the output conv too: a model of the same cfg continues where it was;
    without it the head is fresh (the originals' 'until last'). A file whose head does not fit the
    cfg (the VOC backbone's 125 filters) is refused before training."""
    import training

    trained = Darknet(TRIAL3)
    with torch.no_grad():
        for p in trained.parameters():
            p.uniform_(-0.1, 0.1)
    trained.save_weights(tmp_path / "trained.weights")
    head = trained.models[-2][0].weight.detach().clone()  # the output conv (the last block is [region])
    built, real_build = [], training.build_model

    def spy(*args, **kw):
        model = real_build(*args, **kw)
        built.append(model.models[-2][0].weight.detach().cpu().clone())
        return model

    monkeypatch.setattr(training, "build_model", spy)

    def args(backup, weights, *extra):
        return [str(synth), TRIAL3, str(weights), "--backupdir", str(tmp_path / backup), "--batch-size", "4",
                "--train-size", str(SIZE), "--test-size", str(SIZE), "--workers", "0", "--quiet", "--epochs", "1",
                "--max-batches", "1", *extra]

    run_main(args("all", tmp_path / "trained.weights", "--init-all-layers"))
    run_main(args("until_last", tmp_path / "trained.weights"))
    assert torch.equal(built[0], head) and not torch.equal(built[1], head)
    with pytest.raises(InputError, match="tiny-yolov2-trial3-voc.weights"):
        run_main(args("voc", BACKBONE3, "--init-all-layers"))
    assert not (tmp_path / "voc").exists()


@pytest.mark.parametrize("extra", [[], ["--distiled", "1"]])
def test_kd_neighbours_without_distillation_in_the_fast_recipe_is_refused(synth, tmp_path, extra):
    """--kd-neighbours teacher only means something for a distilled student of the fast recipe (D66)."""
    args = small_args(synth, tmp_path / "out", "--epochs", "1", "--kd-neighbours", "teacher", *extra)
    with pytest.raises(FlagError, match="--kd-neighbours teacher .* needs --distiled 1 and --recipe fast"):
        run_main(args)
    assert not (tmp_path / "out").exists()


def test_teacher_of_another_layout_is_refused_before_training(synth, tmp_path):
    text = Path(TRIAL3).read_text().replace("filters=20", "filters=24")  # K=11 keypoints: 2*11+1+1 channels
    assert "filters=24" in text
    cfg = tmp_path / "teacher.cfg"
    cfg.write_text(text)
    Darknet(cfg).save_weights(tmp_path / "teacher.weights")
    with pytest.raises(ValueError, match="teacher"):
        run_main(small_args(synth, tmp_path / "out", "--epochs", "1", "--distiled", "1", "--teacher-cfg", str(cfg),
                            "--teacher-weights", str(tmp_path / "teacher.weights")))
    assert not (tmp_path / "out/checkpoint.pt").exists()


@pytest.mark.parametrize("case, message", [
    ("datacfg", "data cfg not found"),
    ("initweights", "init weights not found"),
    ("teacher", "teacher weights not found"),
    ("list", "missing.txt: image list not found"),
])
def test_missing_inputs_are_reported_before_training(synth, tmp_path, case, message):
    datacfg, init, extra = str(synth), BACKBONE3, []
    if case == "datacfg":
        datacfg = str(tmp_path / "nope.data")
    elif case == "initweights":
        init = str(tmp_path / "nope.weights")
    elif case == "teacher":
        extra = ["--distiled", "1", "--teacher-weights", str(tmp_path / "nope.weights")]
    elif case == "list":
        text = synth.read_text().replace("LINEMOD/obj00/train.txt", "LINEMOD/obj00/missing.txt")
        datacfg = str(tmp_path / "bad.data")
        Path(datacfg).write_text(text)
    argv = small_args(datacfg, tmp_path / "out", "--epochs", "1", *extra)
    argv[2] = init
    with pytest.raises(InputError, match=message) as exc:
        run_main(argv)
    assert "nope" in str(exc.value) or "missing" in str(exc.value)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# the main job and DDP (subprocesses: what a user runs)
# --------------------------------------------------------------------------------------------

def _files(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_main_jobs_dataset_step_leaves_the_readme_by_hand_set_in_place(tmp_path, monkeypatch, capsys):
    """README: the by-hand set (3 objects; fewer images here), a fresh test set and a .data file of
    the user's in data/synthetic, then `python train.py`: every file stays, the main job uses its own folder."""
    from synthetic import add_fresh_test

    monkeypatch.setattr(train, "SYNTHETIC_IMAGES", 4)
    root = tmp_path / "synthetic"
    generate(root, objects=3, images_per_object=4, seed=0)
    add_fresh_test(root, 2, fresh_seed=7)
    (root / "cfg/my_obj00.data").write_text((root / "cfg/obj00.data").read_text().replace("backup = ", "backup = my/"))
    before = _files(root)
    own = tmp_path / "synthetic_main"
    with pytest.warns(UserWarning) as caught:  # a warning line, --quiet or not (issue 36)
        data = train.ensure_synthetic_dataset(root)
    assert _files(root) == before
    assert data == own / "cfg/obj00.data" and data.is_file()
    assert [str(w.message) for w in caught] == [
        f"{root} holds a synthetic set made with other parameters (3 objects, 4 images per object, seed 0, test "
        f"fraction 0.25): left as it is; the main job uses {own}"]
    with pytest.warns(UserWarning, match=f"left as it is; the main job uses {own}"):
        assert train.ensure_synthetic_dataset(root, quiet=True) == data  # found, not made again
    # a set the main job made itself, in its own folder, is used as it is
    assert train.ensure_synthetic_dataset(own, quiet=True) == data
    assert _files(root) == before


def test_the_main_jobs_dataset_step_stops_when_both_folders_are_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "SYNTHETIC_IMAGES", 4)
    root = tmp_path / "synthetic"
    generate(root, objects=1, images_per_object=2, seed=0)
    (tmp_path / "synthetic_main/cfg").mkdir(parents=True)
    (tmp_path / "synthetic_main/cfg/obj00.data").write_text("the user's\n")
    with pytest.raises(InputError, match=r"(?s)other parameters \(1 object, 2 images.*synthetic_main/cfg/obj00.data "
                                         r"\(not written by.*pass --datacfg"):
        train.ensure_synthetic_dataset(root, quiet=True)
    assert (tmp_path / "synthetic_main/cfg/obj00.data").read_text() == "the user's\n"


@pytest.mark.slow
def test_main_job_generates_the_data_and_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "SYNTHETIC_OBJECTS", 1)
    monkeypatch.setattr(train, "SYNTHETIC_IMAGES", 6)
    monkeypatch.setitem(train.QUICK, "train_size", 128)
    monkeypatch.setitem(train.QUICK, "test_size", 128)
    monkeypatch.setitem(train.QUICK, "epochs", 1)  # the main job is a number of epochs, not minutes
    monkeypatch.setattr(train, "MAIN_JOB_EPOCHS", 1)
    run_main(["--quiet", "--workers", "0"])
    out = capsys.readouterr().out
    backup = Path("backup/synthetic/obj00")
    assert Path("data/synthetic/cfg/obj00.data").is_file()
    for name in ("model.weights", "checkpoint.pt", "costs.npz", "metrics.csv", "training.png", "model_info.json"):
        assert (backup / name).is_file(), name
    info = json.loads((backup / "model_info.json").read_text())
    assert info["test_size"] == 128 and info["box_rule"] == recipes.FAST.box_rule
    assert "python valid.py --datacfg data/synthetic/cfg/obj00.data" in out
    assert f"--weightfile {backup / 'model.weights'}" in out
    # the printed command works as written: the test size comes from model_info.json
    (summary,) = valid.main(valid.get_args_parser().parse_args(out.split("python valid.py ")[1].split()))
    assert summary["test_size"] == [128, 128] and summary["box_rule"] == recipes.FAST.box_rule


@pytest.mark.slow
def test_ddp_two_gloo_processes_write_one_set_of_outputs(synth, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29531", str(ROOT / "train.py"),
           *small_args(synth, tmp_path / "ddp", "--epochs", "1", "--pretrain_num_epochs", "-1")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("outputs in") == 1  # only rank 0 reports and writes
    ckpt = torch.load(tmp_path / "ddp/checkpoint.pt", weights_only=True)
    # 9 images padded to 10 and split 5 + 5; batch 4 per rank -> 2 steps of 4 + 1 images per rank
    assert ckpt["state"]["iteration"] == 2 and ckpt["state"]["seen"] == 10
    with open(tmp_path / "ddp/metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        ["model.weights", "last.weights", "checkpoint.pt", "costs.npz", "metrics.csv", "metrics.jsonl",
         "training.png", "model_info.json"])


# --------------------------------------------------------------------------------------------
# issue 25: flags and --also-valid before training, the recipe hint, a full disk mid-run
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--max-batches", "0"], r"--max-batches must be >= 1, found 0"),
    (["--train-size", "32", "--batch-size", "1"], r"--train-size 32 gives a 1x1 output grid and --batch-size 1"),
    (["--train-size", "32"], r"the last batch of each epoch \(9 images in batches of 4\) holds one image"),
    (["--train-sizes", "32,64", "--batch-size", "1"], r"--train-sizes 32,64 gives a 1x1 output grid and --batch-size"),
    (["--final-size", "32", "--final-epochs", "1", "--batch-size", "1"], r"--final-size 32 gives a 1x1 output grid"),
    (["--device", "meta"], r"--device meta: expected auto, cpu, cuda or cuda:N"),
    (["--also-valid", "NOPE"], r"--also-valid .*nope\.data: .*nope\.data: data cfg not found"),
])
def test_flags_and_also_valid_are_checked_before_training(synth, tmp_path, extra, message):
    """Each was a traceback: BatchNorm on one value per channel, a device without our operators,
    the extra test set read only at the first evaluation."""
    extra = [str(tmp_path / "nope.data") if e == "NOPE" else e for e in extra]
    argv = small_args(synth, tmp_path / "out", "--epochs", "1", *extra)
    if "--train-sizes" in extra:  # a range instead of the fixed size (the --batch-size 1 of issue 36)
        at = argv.index("--train-size")
        del argv[at:at + 2]
    with pytest.raises(InputError, match=message):
        run_main(argv)
    assert not (tmp_path / "out").exists()


def test_the_original_recipe_on_a_cpu_names_the_fast_one():
    with pytest.warns(UserWarning, match=r"stays at 0 % on a CPU for hours; add --recipe fast"):
        training.suggest_fast_recipe("original", torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.suggest_fast_recipe("fast", torch.device("cpu"))
        training.suggest_fast_recipe("original", torch.device("cuda"))
    with pytest.warns(UserWarning, match=r"--amp has no effect on cpu: mixed precision runs on CUDA only"):
        cli.warn_amp_unused(True, torch.device("cpu"))


def test_a_full_disk_during_training_is_one_line(synth, tmp_path, monkeypatch, capsys):
    """The checkpoint's writes find the disk full: torch.save raises its RuntimeError, the run ends in
    one line naming the file and the free space (issue 36)."""
    import linemod_format

    monkeypatch.setattr(linemod_format, "open", hostile.full_disk_open(1000, ".checkpoint.pt."), raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_cli(train.main_cli, small_args(synth, tmp_path / "out", "--epochs", "1", "--max-batches", "1"),
                prog="train.py")
    assert exit_.value.code == EXIT_FAULT
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"train.py: error: {tmp_path / 'out' / 'checkpoint.pt'}: No space left on device (")
    assert " MB free; the previous file is kept) (the file system is full" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "out" / engine.LOCK_FILE).exists()  # the run's lock is released
