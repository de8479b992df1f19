"""Train a single-object pose network, optionally distilled from a teacher (docs/design.md).

    python train.py                                    # main job: synthetic data, YOLO-LITE trial 3, CPU, fast recipe
    python train.py --minutes 120                      # the same, for two hours: an accurate model on a CPU
    python train.py --datacfg cfg/ape.data --modelcfg cfg/yolo-pose.cfg --initweightfile cfg/darknet19_448.conv.23
    python train.py cfg/duck.data cfg/yolo-pose.cfg backup/duck/init.weights   # positional form
    python train.py --datacfg cfg/ape.data --modelcfg cfg/yolo-lite-trial3-pose.cfg \\
        --initweightfile weights/tiny-yolov2-trial3-voc.weights --distiled 1 --kd-mode fixed
    torchrun --nproc_per_node 2 train.py ...            # DDP (gloo on CPU, nccl on CUDA)

Recipes (--recipe): `original` is the originals' recipe exactly (SGD, the cfg's step schedule, no
confidence term for 15 epochs, the full augmentation): the default whenever --datacfg is given,
for reproducing the papers. `fast` (AdamW, warm-up and cosine decay over the epochs or the
--minutes budget, EMA weights, a confidence target with a floor, the cv2 loader, 256 px): the
default of the main job, and the one to use for a quick model on a CPU or a new dataset.

Writes into the backup dir: model.weights (darknet format, best evaluation so far), last.weights
(the end of the run), checkpoint.pt (every epoch and on Ctrl-C; --resume continues from it),
costs.npz, metrics.csv / metrics.jsonl (one row per evaluation) and training.png.
"""
from __future__ import annotations

import argparse
import os
import re
import warnings
from pathlib import Path

import torch

import cli
import dataset
import engine
import model_info
import preflight
import recipes
import utils
import valid
from darknet import Darknet
from errors import FlagError, InputError, run_cli
from recipes import FAST
from region_loss import COORD_LOSSES, RegionLoss

ROOT = Path(__file__).resolve().parent
DEFAULT_MODELCFG = "cfg/yolo-lite-trial3-pose.cfg"
DEFAULT_INITWEIGHTS = "weights/tiny-yolov2-trial3-voc.weights"
DEFAULT_TEACHER_CFG = "cfg/yolo-pose.cfg"
POSITIONAL = ("datacfg", "modelcfg", "initweightfile")
# The main job (no --datacfg): one synthetic LINEMOD object, the fast recipe, a time budget on the CPU.
SYNTHETIC_ROOT = Path("data/synthetic")
SYNTHETIC_OBJECTS, SYNTHETIC_IMAGES, SYNTHETIC_TEST_FRACTION = 1, 1600, 0.15  # 1360 train / 240 test images
# A number of epochs, not minutes, so that a seed gives the same model on every machine; about 12 minutes of
# training on an idle 2-core x86_64 machine (docs/results.md).
MAIN_JOB_EPOCHS = 48
QUICK = dict(recipe="fast", epochs=MAIN_JOB_EPOCHS, eval_every=5)
ORIGINAL_EVAL_EVERY = 10  # the fork's test cadence
CHECKPOINT, BEST_WEIGHTS = engine.CHECKPOINT, engine.BEST_WEIGHTS
COST_KEYS = ("training_iters", "training_losses", "testing_iters", "testing_accuracies",
             "testing_errors_pixel", "testing_errors_angle")  # the original's costs.npz arrays
ROW_KEYS = ("acc_2d", *(f"acc_2d_{t}px" for t in valid.REPORT_PX_THRESHOLDS), "acc_add", "acc_adds",
            "acc_5cm5deg", "acc_corner", "mean_err_2d", "mean_err_add", "mean_err_corner", "mean_err_trans",
            "mean_err_angle", "n", "n_failed")
NonFiniteLoss = engine.NonFiniteLoss

# the original optimiser and schedule, under the names the tests and benchmarks use
learning_rate = recipes.step_learning_rate
build_optimizer = recipes.build_sgd


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__)
    cli.add_positional(p, POSITIONAL)
    cli.add_datacfg(p, help="object .data file (default: the synthetic set, generated if missing)")
    cli.add_model(p, weights="initweightfile", cfg_help=f"network cfg (default {DEFAULT_MODELCFG})",
                  weights_help=f"darknet weights loaded 'until last' (default {DEFAULT_INITWEIGHTS}; 'none' for "
                               f"random)")
    p.add_argument("--allow-partial-weights", action="store_true",
                   help="accept init weights that fill only part of the network (automatic for darknet's "
                        "truncated backbones, *.conv.N)")
    p.add_argument("--recipe", default=None, choices=recipes.RECIPES,
                   help="original (default with --datacfg): the papers' recipe exactly; fast (default of the "
                        "main job): AdamW, cosine, EMA, confidence floor, neighbour cells, cv2 loader, 256 px "
                        "(docs/design.md §7.6, D46)")
    p.add_argument("--minutes", type=float, default=None,
                   help="train for this many minutes (the fast schedule then decays over them): a time budget, "
                        "so a slower or busier machine trains a different model; the main job trains "
                        f"{MAIN_JOB_EPOCHS} epochs instead")
    p.add_argument("--pretrain_num_epochs", type=int, default=None,
                   help="epochs without the confidence term (original: 15, design §5.5; fast: none)")
    p.add_argument("--backupdir", default=None, help="output folder (default: the .data 'backup' key)")
    cli.add_distiled(p, help="1: distil from a teacher (design §8)")
    p.add_argument("--teacher-cfg", default=DEFAULT_TEACHER_CFG)
    p.add_argument("--teacher-weights", default=None, help="default backup/<name>/model_backup.weights")
    p.add_argument("--kd-mode", choices=("fork", "fixed"), default="fixed",
                   help="fixed (default): the teacher's right channels; fork: reproduces the fork's channel-index "
                        "bug (corners 2-8 regressed to shifted channels, D10), which leaves students at 0 %% on "
                        "the CPU study (docs/results.md)")
    p.add_argument("--kd-alpha", type=float, default=1.0, help="targets = (1-a)*GT + a*teacher (fork: 1)")
    p.add_argument("--coord-loss", choices=COORD_LOSSES, default=None,
                   help="corner loss: mse, the originals' squared error (default with original); l1, the absolute "
                        f"error (D55; default with fast: {FAST.coord_loss})")
    p.add_argument("--loss-scales", choices=("cfg", "ms"), default="cfg",
                   help="cfg: [region] scales (fork, noobject 0.1); ms: MS train.py defaults (noobject 1)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"default: cfg max_epochs (500), or until --minutes; the main job {MAIN_JOB_EPOCHS}")
    cli.add_batch_size(p, help=f"default: cfg batch (fast: {FAST.batch})")
    cli.add_device(p)
    cli.add_seed(p)
    cli.add_workers(p, help="loader workers (default: original min(4, cores); fast 0 on a CPU, where loading "
                            "in the training process is cheaper than the cores a worker takes, else 4)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on with fast, off with original)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (default: <backupdir>/checkpoint.pt)")
    p.add_argument("--force-resume", action="store_true",
                   help="resume even from a checkpoint made with another cfg, data file, batch size or recipe")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in the backup folder")
    p.add_argument("--also-valid", nargs="+", default=[], metavar="DATACFG",
                   help="also test on these .data files' valid lists at every evaluation (e.g. a fresh test set "
                        "of tools/make_synthetic_linemod.py --fresh-test); logged, not used to pick the best model")
    p.add_argument("--eval-every", type=int, default=None,
                   help="test after epochs e %% N == 0, e > 0, and after the last (default 10, as the fork)")
    cli.add_sizes(p, train=True, test=True,
                  train_help=f"fixed square training size (default: original multi-scale, design §6.5; fast "
                             f"{FAST.size})",
                  test_help=f"square test size (default: original cfg test_width/height; fast {FAST.size})")
    p.add_argument("--final-size", type=int, default=None, metavar="S",
                   help="train the last --final-epochs epochs at S px (a multiple of 32) and test at S: a last phase "
                        "at a higher resolution, for sub-cell accuracy (D58; needs an epoch budget)")
    p.add_argument("--final-epochs", type=int, default=None, metavar="N",
                   help="how many of the last epochs train at --final-size")
    cli.add_resample(p)
    cli.add_box_rule(p, default_help=f"the recipe's (original: max; fast: {FAST.box_rule}); used by the evaluations "
                                     "and written to model_info.json for valid.py and detect.py")
    p.add_argument("--bg-dir", default=None, help="background images (VOC2012 JPEGImages); default: procedural")
    p.add_argument("--decay-bn-bias", type=int, default=1, help="0: no weight decay on BN and biases (D14)")
    p.add_argument("--max-batches", type=int, default=None, help="stop each epoch after N batches (smoke tests)")
    p.add_argument("--log-every", type=int, default=0, help="print the per-batch loss line every N batches")
    p.add_argument("--quiet", action="store_true", help="no progress bar, network table or per-epoch lines")
    return p


# --------------------------------------------------------------------------------------------
# Set-up helpers
# --------------------------------------------------------------------------------------------

def repo_path(path: str) -> str:
    """`path` as given if it exists from the current directory, else from the repository root
    (so the defaults work from any directory)."""
    return path if Path(path).exists() or not (ROOT / path).exists() else str(ROOT / path)


def ensure_synthetic_dataset(root: Path = SYNTHETIC_ROOT, quiet: bool = False) -> Path:
    """The main job's synthetic LINEMOD set, generated once; return its first object's .data.

    A folder that holds any other set (the README's by-hand one, an older main job's) or files
    the generator did not write is left as it is: the set goes to `<root>_main` instead (design D60).
    """
    from tools.make_synthetic_linemod import ensure_dataset, generation_params

    params = generation_params(SYNTHETIC_OBJECTS, SYNTHETIC_IMAGES, seed=0, multi=0,
                               test_fraction=SYNTHETIC_TEST_FRACTION)
    folder = ensure_dataset(root, params, quiet=quiet)
    cfgs = sorted(c for c in (folder / "cfg").glob("*.data") if not valid.skipped_by_all(c))
    return cfgs[0]


def check_run_numbers(args) -> None:
    """The numeric flags train.py and train_multi.py share, in range, before anything starts."""
    for flag in ("epochs", "batch_size", "eval_every", "max_batches"):
        cli.check_positive(f"--{flag.replace('_', '-')}", getattr(args, flag))
    cli.check_positive("--log-every", args.log_every, minimum=0)
    cli.check_positive("--workers", args.workers, minimum=0)
    cli.check_size("--train-size", args.train_size)
    cli.check_size("--final-size", getattr(args, "final_size", None))
    cli.check_size("--test-size", args.test_size)
    if args.minutes is not None and not args.minutes > 0:
        raise FlagError(f"--minutes must be positive, found {args.minutes}")


def check_numbers(args) -> None:
    """Every numeric flag of train.py in range, before anything starts."""
    check_run_numbers(args)
    cli.check_positive("--final-epochs", args.final_epochs)
    if (args.final_size is None) != (args.final_epochs is None):
        raise FlagError("--final-size and --final-epochs go together: give both or neither")
    if not 0.0 <= args.kd_alpha <= 1.0:
        raise FlagError(f"--kd-alpha must be in [0, 1], found {args.kd_alpha}")


def allow_partial(args) -> bool:
    """Partial init weights are allowed when asked, or for darknet's truncated backbones (`*.conv.N`)."""
    name = Path(args.initweightfile).name if args.initweightfile else ""
    return bool(args.allow_partial_weights) or re.search(r"\.conv\.\d+$", name) is not None


def check_inputs(args) -> None:
    """Every input training reads, checked before anything starts (preflight.py): the .data values,
    the mesh, every image, label and mask of both lists, the cfg, the init and teacher weights."""
    if args.distiled:
        missing = [f"{what} not found: {path}" for what, path in (("teacher cfg", args.teacher_cfg),
                                                                  ("teacher weights", args.teacher_weights))
                   if not Path(path).is_file()]
        if missing:
            raise InputError("cannot start training:\n  " + "\n  ".join(missing))
    if args.initweightfile and not Path(args.initweightfile).is_file():
        raise InputError(f"cannot start training:\n  init weights not found: {args.initweightfile}")
    preflight.check_training_inputs(args.datacfg, args.modelcfg, args.initweightfile,
                                    allow_partial=allow_partial(args),
                                    teacher_cfg=args.teacher_cfg if args.distiled else None,
                                    teacher_weights=args.teacher_weights if args.distiled else None,
                                    bg_dir=args.bg_dir)


def check_also_valid(datacfgs) -> list[tuple[str, valid.EvalSetup]]:
    """Every --also-valid `.data` file, its mesh, camera and test list (as valid.py checks them,
    `valid.check_test_list`), before training: InputError naming the flag. Returns (tag, setup)
    per file, the tag its stem (the metrics columns' prefix)."""
    tests, problems = [], []
    for datacfg in datacfgs:
        try:
            setup = valid.load_eval_setup(datacfg)
            problems.extend(f"--also-valid {datacfg}: {p}" for p in valid.check_test_list(setup, datacfg))
            tests.append((Path(datacfg).stem, setup))
        except (OSError, ValueError) as exc:  # InputError is a ValueError; a missing file an OSError
            problems.append(f"--also-valid {datacfg}: {exc}")
    if problems:
        raise InputError("cannot start training:\n  " + "\n  ".join(problems))
    return tests


def check_single_image_batches(batch: int, n_train: int, train_size, world: int = 1) -> None:
    """FlagError when a training batch would hold a single image at a 1x1 output grid (--train-size
    32): BatchNorm cannot normalise one value per channel, and the step would fail mid-epoch."""
    if train_size is None or train_size > cli.STRIDE:
        return
    per_rank = -(-n_train // world)
    if batch == 1 or per_rank % batch == 1:
        what = "--batch-size 1" if batch == 1 else (f"the last batch of each epoch ({per_rank} images in batches "
                                                      f"of {batch}) holds one image")
        raise FlagError(f"--train-size {train_size} gives a 1x1 output grid and {what}: BatchNorm needs more than "
                        f"one value per channel; use --train-size 64 or more, or another --batch-size")


def suggest_fast_recipe(recipe: str, device) -> None:
    """One warning line when the original recipe trains on a CPU: it stays at 0 % there for any
    budget a CPU has (docs/results.md); the fast recipe is the one for a CPU (design §7.6)."""
    if recipe == "original" and device.type == "cpu":
        warnings.warn("the original recipe (SGD, the cfg's step schedule, 416 px, full augmentation) stays at 0 % "
                      "on a CPU for hours; add --recipe fast for a working model on a CPU (design §7.6)",
                      stacklevel=2)


def resolve_args(args) -> tuple[argparse.Namespace, dict]:
    """Fill defaults: positional form, the main job, the recipe's defaults, backup dir, teacher paths."""
    cli.merge_positional(args, POSITIONAL)
    check_numbers(args)
    quick = args.datacfg is None
    if quick:
        args.datacfg = str(ensure_synthetic_dataset(quiet=args.quiet))
        cli.fill_defaults(args, QUICK)
    args.recipe = args.recipe or "original"
    fast = args.recipe == "fast"
    if args.final_size:
        if args.minutes:
            raise FlagError("--final-size needs an epoch budget (--epochs), not --minutes: its last epochs are counted")
        cli.fill_defaults(args, {"test_size": args.final_size})  # the model is tested at the size it ends at
    if fast:
        cli.fill_defaults(args, {"batch_size": FAST.batch, "train_size": FAST.size, "test_size": FAST.size,
                                 "coord_loss": FAST.coord_loss, "box_rule": FAST.box_rule})
        if args.pretrain_num_epochs is None:
            args.pretrain_num_epochs = -1  # the floored confidence target is meaningful from the first step
        if args.channels_last is None:
            args.channels_last = True
    args.channels_last = bool(args.channels_last)
    cli.fill_defaults(args, {"coord_loss": "mse", "box_rule": "max"})  # the original recipe's
    args.modelcfg = args.modelcfg or repo_path(DEFAULT_MODELCFG)
    if args.initweightfile is None:
        args.initweightfile = repo_path(DEFAULT_INITWEIGHTS)
    if str(args.initweightfile).lower() == "none":
        args.initweightfile = None
    if args.eval_every is None:
        args.eval_every = ORIGINAL_EVAL_EVERY
    if args.pretrain_num_epochs is None:
        args.pretrain_num_epochs = 15
    if not Path(args.datacfg).is_file():
        raise InputError(f"cannot start training: data cfg not found: {args.datacfg}")
    opts = utils.read_data_cfg(args.datacfg, resolve_paths=True)
    name = opts.get("name", Path(args.datacfg).stem)
    if args.backupdir is None:
        if quick:  # a budget other than the main job's gets its own folder
            suffix = (f"_{args.minutes:g}min" if args.minutes else
                      "" if args.epochs == MAIN_JOB_EPOCHS else f"_{args.epochs}ep")
            args.backupdir = f"backup/synthetic/{name}{suffix}"
        else:
            args.backupdir = opts.get("backup", f"backup/{name}")
    if args.teacher_cfg == DEFAULT_TEACHER_CFG:
        args.teacher_cfg = repo_path(DEFAULT_TEACHER_CFG)
    if args.teacher_weights is None:
        args.teacher_weights = f"backup/{name}/model_backup.weights"
    if args.workers is None:
        cpu_only = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
        args.workers = 0 if fast and cpu_only else min(4, os.cpu_count() or 1)
    return args, opts


def build_model(cfg: str, weights, device, channels_last: bool, until_last: bool = True,
                partial: bool = False, quiet: bool = True) -> Darknet:
    model = Darknet(cfg)
    if weights:
        report = (model.load_weights_until_last if until_last else model.load_weights)(weights,
                                                                                       allow_partial=partial)
        if not quiet:
            print(f"{weights}: {report}", flush=True)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_loss(model, args) -> RegionLoss:
    loss_fn = RegionLoss.from_region(model.region, model.num_keypoints, scales=args.loss_scales,
                                     pretrain_num_epochs=args.pretrain_num_epochs)
    if args.recipe == "fast":
        loss_fn.conf_floor, loss_fn.batch_mean = FAST.conf_floor, True
        loss_fn.noobject_scale = FAST.noobject_scale
        loss_fn.neighbour_cells = FAST.neighbour_cells
        loss_fn.neighbour_conf_scale = FAST.neighbour_conf_scale
    loss_fn.coord_loss = args.coord_loss
    return loss_fn


def build_optimizer_and_schedule(model, recipe: str, batch: int, n_samples: int, epochs, minutes=None,
                                 step_unit=None, decay_bn_bias: bool = True):
    """The recipe's optimiser and its schedule (recipes.py), for train.py and train_multi.py.

    fast: AdamW, warm-up and cosine decay over `epochs` or over `minutes`. original: SGD and the
    cfg's steps, counted in units of `step_unit` batches: an epoch (n_samples / batch, the default,
    single object, design §7.1) or one raw batch (1, multi-object, design §7.2)."""
    net = model.net
    budget_s = minutes * 60 if minutes else None
    if recipe == "fast":
        total = None if budget_s else epochs * -(-n_samples // batch)
        return recipes.build_adamw(model), recipes.CosineSchedule(FAST.lr, FAST.warmup, FAST.final_lr_fraction,
                                                                  total_iters=total, budget_s=budget_s)
    optimizer = recipes.build_sgd(model, float(net["learning_rate"]), float(net["momentum"]), float(net["decay"]),
                                  batch, decay_bn_bias)
    unit = n_samples / batch if step_unit is None else step_unit
    return optimizer, recipes.StepSchedule(float(net["learning_rate"]), net["steps"], net["scales"], unit, batch)


def evaluation(test_set, setup, device, num_keypoints: int, fast: bool, box_rule: str = "max"):
    """The periodic test: valid.evaluate on the test list; the score is the 5 px accuracy
    (fast: then the 10 px accuracy, which separates early models that are all at 0 % at 5 px)."""
    def evaluate(model, epoch):
        summary, _ = valid.evaluate(model, dataset.make_test_loader(test_set, batch_size=8, workers=0),
                                    setup, device, num_keypoints=num_keypoints, box_rule=box_rule)
        valid.log(f"epoch {epoch}: 2D {summary['acc_2d']:.2f}% (10 px {summary.get('acc_2d_10px', 0):.2f}%)  "
                  f"ADD {summary['acc_add']:.2f}%  5cm5deg {summary['acc_5cm5deg']:.2f}%  "
                  f"mean px err {summary['mean_err_2d']:.2f}  mean corner err {summary.get('mean_err_corner', 0):.2f}")
        score = (summary["acc_2d"], summary.get("acc_2d_10px", 0.0)) if fast else (summary["acc_2d"],)
        return {"row": {k: summary.get(k, float("nan")) for k in ROW_KEYS}, "score": score,
                "costs": {"testing_iters": 0, "testing_accuracies": summary["acc_2d"],
                          "testing_errors_pixel": summary["mean_err_2d"],
                          "testing_errors_angle": summary["mean_err_angle"]}}
    return evaluate


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main(args) -> dict:
    args, opts = resolve_args(args)
    device = cli.resolve_device(args.device)
    rank, world, device = engine.setup_distributed(device)
    if rank == 0:  # one line per run, not one per process
        cli.warn_amp_unused(args.amp, device)
        suggest_fast_recipe(args.recipe, device)
    check_inputs(args)
    extra_tests = check_also_valid(args.also_valid)
    engine.seed_everything(args.seed)
    fast = args.recipe == "fast"

    model = build_model(args.modelcfg, args.initweightfile, device, args.channels_last, partial=allow_partial(args),
                        quiet=args.quiet or rank != 0)
    model.seen = 0  # the original resets the counter after loading the init weights
    if fast and args.initweightfile:  # pretrained low-level filters: not worth their backward pass on a CPU
        recipes.freeze_first_convs(model, FAST.frozen_convs)
    batch = args.batch_size or int(model.net["batch"])
    epochs = args.epochs if args.epochs is not None else (None if args.minutes else int(model.max_epochs))
    final_from = epochs - args.final_epochs if args.final_size else None  # D58: the last epochs at final_size
    if final_from is not None and final_from < 0:  # refused before the backup folder is touched
        raise FlagError(f"--final-epochs {args.final_epochs} is more than the {epochs} epochs of the run")
    loss_fn = build_loss(model, args)
    teacher = None
    if args.distiled:
        # frozen: its BN-folded channels-last copy is several times cheaper per batch (D57)
        teacher = build_model(args.teacher_cfg, args.teacher_weights, device, False, until_last=False)
        teacher = teacher.inference_copy(channels_last=args.channels_last)
        loss_fn.kd_mode, loss_fn.kd_alpha = args.kd_mode, args.kd_alpha
        size = args.train_size or 416
        with torch.no_grad():  # refuse a teacher of another grid or keypoint count before training starts
            probe = torch.zeros(1, 3, size, size, device=device)
            loss_fn.check_teacher(model.eval()(probe), teacher.eval()(probe))

    train_set = dataset.listDataset(opts["train"], train=True, seed=args.seed, resample=args.resample,
                                    bg_dir=args.bg_dir, num_keypoints=model.num_keypoints, fast=fast,
                                    **({"jitter": FAST.jitter,
                                        "bg_prob": FAST.bg_prob_with_dir if args.bg_dir else FAST.bg_prob}
                                       if fast else {}))
    train_set.warm_background_pool()  # before the workers fork, so that they share it
    check_single_image_batches(batch, len(train_set), args.train_size, world)
    test_shape = (args.test_size, args.test_size) if args.test_size else (model.test_width, model.test_height)
    test_set = dataset.listDataset(opts["valid"], train=False, shape=test_shape, resample=args.resample)
    setup = valid.load_eval_setup(args.datacfg)
    optimizer, schedule = build_optimizer_and_schedule(model, args.recipe, batch, len(train_set), epochs,
                                                       minutes=args.minutes, decay_bn_bias=bool(args.decay_bn_bias))
    ema = recipes.ModelEMA(model, FAST.ema_decay) if fast else None
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    backup = Path(args.backupdir)
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        engine.prepare_backup(backup, resume=bool(args.resume), overwrite=args.overwrite,
                              need_bytes=engine.CHECKPOINT_SIZE_FACTOR * 4 * n_params)
    run = engine.run_identity(args.modelcfg, args.datacfg, batch, args.recipe)
    trainer = engine.Trainer(model, optimizer, loss_fn, schedule, backup=backup, run=run, cost_keys=COST_KEYS,
                             device=device, net=net, ema=ema, teacher=teacher, amp=args.amp,
                             channels_last=args.channels_last, rank=rank, world=world, progress=not args.quiet,
                             log_every=args.log_every, max_batches=args.max_batches, args=vars(args))
    if args.resume:
        trainer.resume(None if args.resume == "auto" else args.resume, force=args.force_resume)
    elif rank == 0 and not args.quiet:
        model.print_network()
        print(f"recipe {args.recipe}: batch {batch}, " + (f"{args.minutes:g} minutes" if args.minutes and not epochs
                                                         else f"{epochs} epochs"), flush=True)

    def make_loader(epoch, seen, start_batch):
        size = args.final_size if final_from is not None and epoch >= final_from else args.train_size
        return dataset.make_train_loader(
            train_set, batch_size=batch, seed=args.seed, epoch=epoch, seen=seen, workers=args.workers,
            mode="fixed" if size else "single", fixed_size=size or 416, rank=rank,
            world_size=world, pin_memory=device.type == "cuda", start_batch=start_batch)

    evaluate = evaluation(test_set, setup, device, model.num_keypoints, fast, args.box_rule)
    if rank == 0 and test_shape[0] == test_shape[1]:
        model_info.write_info(backup, args.modelcfg, test_shape[0], args.box_rule)
    extra_sets = [dataset.listDataset(s.valid_list, train=False, shape=test_shape, resample=args.resample)
                  for _, s in extra_tests]

    def evaluate_and_count(eval_model, epoch):
        result = evaluate(eval_model, epoch)
        result["costs"]["testing_iters"] = trainer.state["seen"]
        for (tag, extra_setup), extra_set in zip(extra_tests, extra_sets):
            summary, _ = valid.evaluate(eval_model, dataset.make_test_loader(extra_set, batch_size=8, workers=0),
                                        extra_setup, device, num_keypoints=model.num_keypoints,
                                        box_rule=args.box_rule)
            valid.log(f"epoch {epoch} on {tag}: 2D {summary['acc_2d']:.2f}% (10 px {summary['acc_2d_10px']:.2f}%)")
            result["row"].update({f"{tag}:{k}": summary[k] for k in ("acc_2d", "acc_2d_10px", "mean_err_corner")})
        return result

    state = trainer.fit(make_loader, evaluate_and_count, epochs=epochs,
                        budget_s=args.minutes * 60 if args.minutes else None, eval_every=args.eval_every,
                        meaningful_from=args.pretrain_num_epochs + 1)
    if rank == 0:
        print_outputs(args, backup, state)
    return state


def print_outputs(args, backup: Path, state: dict) -> None:
    best = backup / BEST_WEIGHTS
    if best.is_file():
        print(f"\noutputs in {backup}/: {BEST_WEIGHTS} (best 2-D accuracy {state['best']:.2f}% at 5 px), "
              f"last.weights, {CHECKPOINT}, costs.npz, metrics.csv, metrics.jsonl, training.png")
    else:
        print(f"\noutputs in {backup}/: no {BEST_WEIGHTS}: no evaluation was meaningful (the confidence term "
              f"was still off); last.weights holds the final state, {CHECKPOINT} continues with --resume")
        best = backup / engine.LAST_WEIGHTS
    # the test size and box rule travel in model_info.json beside the weights (D56)
    print(f"score it with:\n  python valid.py --datacfg {args.datacfg} --modelcfg {args.modelcfg} "
          f"--weightfile {best}")


def main_cli(argv=None) -> dict:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main_cli, prog="train.py")
