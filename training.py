"""One set-up path for a training run, single- and multi-object alike (docs/design.md §7, D63).

train.py and multi_obj_pose_estimation/train_multi.py parse their flags, fill the defaults with
`fill_recipe_defaults` and call `run` with a `Variant`: what differs between the two (the input
checks, the training sample, the test, the command that scores the result). Everything else is
here, once: the device and DDP, the model with its frozen first conv and its output check, the
loss with the recipe's options, the distillation teacher, the optimiser and schedule, EMA, the
backup folder and model_info.json, the loader and its last phase at a higher resolution, and
`engine.Trainer`.

Reading order: the flag checks and defaults, the builders (`build_model`, `build_loss`,
`build_optimizer_and_schedule`, `build_teacher`), then `Variant` and `run`, whose steps follow it
in the order it calls them.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import cli
import dataset
import engine
import linemod_format as lf
import mesh_job
import model_info
import model_loading
import preflight
import recipes
import synthetic
from darknet import Darknet, parse_cfg
from errors import FlagError, InputError
from recipes import FAST
from region_loss import RegionLoss

ROOT = Path(__file__).resolve().parent
BEST_RULE = ("the 5 px plus the 10 px accuracy, ties broken by the 5 px accuracy (a 5 px hit of one test image in "
             "an early test cannot outrank a later model better at 10 px)")
ORIGINAL_EVAL_EVERY = 10  # the fork's test cadence; train_multi.py's original (20, design §7.5) is a flag away


# --------------------------------------------------------------------------------------------
# Paths, data and flags
# --------------------------------------------------------------------------------------------

def ensure_synthetic_dataset(root, params: dict, quiet: bool = False) -> Path:
    """The folder of a main job's synthetic set made with `params` (synthetic.py
    `generation_params`), generated once. One rule for both main jobs (design D60): a folder that
    holds any other set, or files the generator did not write, is left as it is and the set goes
    to `<root>_main` instead."""
    return synthetic.ensure_dataset(Path(root), params, quiet=quiet)


def add_run_flags(p: argparse.ArgumentParser, *, main_job_epochs: int, loss_scales: str, loss_scales_why: str,
                  pretrain_num_epochs: int, main_job_test_size: str = "") -> None:
    """The flags every training script has, with one meaning and one default everywhere; where the
    original scripts differ (--loss-scales, --pretrain_num_epochs), the help says which and why.
    main_job_test_size: a main job's own --test-size and why, appended to its help."""
    from region_loss import COORD_LOSSES

    p.add_argument("--allow-partial-weights", action="store_true",
                   help="accept init weights that fill only part of the network (automatic for darknet's "
                        "truncated backbones, *.conv.N)")
    p.add_argument("--init-all-layers", action="store_true",
                   help="load every layer of --initweightfile, the output conv too (continue from a trained model "
                        "of the same cfg); default: all but the output conv, as the originals ('until last')")
    p.add_argument("--recipe", default=None, choices=recipes.RECIPES,
                   help="original (default with --datacfg): the papers' recipe exactly; fast (default of the "
                        "main job): AdamW, cosine, EMA, confidence floor, neighbour cells, frozen first conv, "
                        "channels-last, the cv2 loader in the training process, 256 px (docs/design.md §7.6, D46)")
    p.add_argument("--minutes", type=float, default=None,
                   help="train for this many minutes (the fast schedule then decays over them): a time budget, "
                        "so a slower or busier machine trains a different model; the main job trains "
                        f"{main_job_epochs} epochs instead")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs to train (default: cfg max_epochs (500), or until --minutes; the main job "
                        f"{main_job_epochs})")
    p.add_argument("--pretrain_num_epochs", type=int, default=None,
                   help=f"epochs without the confidence term (original: {pretrain_num_epochs}, this script's "
                        f"original default, design §5.5; fast: none)")
    p.add_argument("--backupdir", default=None,
                   help="a training run's folder: where this run writes (default: the .data 'backup' key)")
    p.add_argument("--coord-loss", choices=COORD_LOSSES, default=None,
                   help="corner loss: mse, the originals' squared error (default with original); l1, the absolute "
                        f"error (D55; default with fast: {FAST.coord_loss})")
    p.add_argument("--loss-scales", choices=("cfg", "ms"), default=None,
                   help=f"cfg: the [region] scales (noobject 0.1); ms: the MS loss object's (noobject 1, design "
                        f"§5.6); default {loss_scales}: {loss_scales_why}")
    cli.add_batch_size(p, why=f"cfg batch; fast {FAST.batch}")
    cli.add_device(p)
    cli.add_seed(p)
    cli.add_workers(p, why="original min(4, cores); fast 0 on a CPU, where loading in the training process is "
                           "cheaper than the cores a worker takes, else 4")
    p.add_argument("--cache-images", action="store_true",
                   help="fast recipe: decode the training images and masks once into RAM (about 1.5 MB per 640x480 "
                        "image, shared by the loader workers) instead of every epoch; the same samples. For a GPU, "
                        "where decoding limits the loader (docs/design.md D67)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on with fast, off with original)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (default: <backupdir>/checkpoint.pt)")
    p.add_argument("--force-resume", action="store_true",
                   help="resume even from a checkpoint made with another cfg, data file, batch size or recipe")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run wrote: the run already in the backup folder")
    p.add_argument("--eval-every", type=int, default=None,
                   help=f"test after epochs e %% N == 0, e > 0, and after the last (default {ORIGINAL_EVAL_EVERY}, "
                        f"the fork's; the main jobs 5). model.weights is the best test so far by "
                        f"{BEST_RULE}; a later test replaces it only when strictly better")
    cli.add_sizes(p, train=True, test=True, train_what="fixed",
                  train_why=f"original multi-scale, design §6.5; fast {FAST.size}", test_what="of the tests",
                  test_why=f"original cfg test_width/height; fast {FAST.size}"
                           + (f"; {main_job_test_size}" if main_job_test_size else ""))
    p.add_argument("--train-sizes", default=None, metavar="LO,HI",
                   help="multi-scale around the test size: each batch at a size drawn uniformly from LO, LO+32, ..., "
                        "HI (multiples of 32), instead of --train-size (D68)")
    p.add_argument("--final-size", type=int, default=None, metavar="S",
                   help="train the last --final-epochs epochs at S px (a multiple of 32) and test at S: a last phase "
                        "at a higher resolution, for sub-cell accuracy (D58; needs an epoch budget)")
    p.add_argument("--final-epochs", type=int, default=None, metavar="N",
                   help="how many of the last epochs train at --final-size")
    cli.add_resample(p)
    cli.add_box_rule(p, default_help=f"the recipe's (original: max; fast: {FAST.box_rule}); used by the evaluations "
                                     "and written to model_info.json for the scoring scripts and detect.py")
    cli.add_input_filter(p, default_help="none (with --mesh: recipes.MESH's); used by the evaluations and written to "
                                         "model_info.json for the scoring scripts and detect.py")
    p.add_argument("--bg-dir", default=None,
                   help="folder of background photos: e.g. VOC2012 JPEGImages, behind the object (default: procedural)")
    p.add_argument("--decay-bn-bias", type=int, default=1, help="0: no weight decay on BN and biases (D14)")
    p.add_argument("--max-batches", type=int, default=None, help="stop each epoch after N batches: smoke tests")
    p.add_argument("--log-every", type=int, default=0, help="print the per-batch loss line every N batches")
    p.add_argument("--quiet", action="store_true", help="print less: no progress bar, network table or per-epoch lines")


def test_filter(args) -> str:
    """The input filter of the run's tests and of model_info.json (D69): --input-filter, else none."""
    return getattr(args, "input_filter", None) or "none"


def best_score(acc_5px: float, acc_10px: float) -> tuple[float, float]:
    """The best-model score of both training scripts (BEST_RULE, D64), compared lexicographically by
    engine.Trainer: the sum of the 5 and 10 px accuracies, then the 5 px accuracy."""
    return (acc_5px + acc_10px, acc_5px)


def best_accuracies(state: dict) -> tuple[float, float]:
    """(5 px, 10 px) accuracy of the best test of a finished run (its `best_score`, `best_score`'s
    inverse); NaN, NaN when no test was meaningful."""
    score = state.get("best_score")
    if not score or len(score) < 2:
        return math.nan, math.nan
    return score[1], score[0] - score[1]


def check_run_numbers(args) -> None:
    """Every numeric flag of a training run in range, before anything starts (FlagError)."""
    for flag in ("epochs", "batch_size", "eval_every", "max_batches", "final_epochs"):
        cli.check_positive(f"--{flag.replace('_', '-')}", getattr(args, flag, None))
    cli.check_positive("--log-every", args.log_every, minimum=0)
    cli.check_positive("--workers", args.workers, minimum=0)
    cli.check_size("--train-size", args.train_size)
    cli.check_size("--final-size", getattr(args, "final_size", None))
    cli.check_size("--test-size", args.test_size)
    cli.check_input_filter(getattr(args, "input_filter", None))
    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        raise FlagError(f"--minutes must be positive and finite (a time budget in minutes), found {args.minutes}")
    if (getattr(args, "final_size", None) is None) != (getattr(args, "final_epochs", None) is None):
        raise FlagError("--final-size and --final-epochs go together: give both or neither")
    args.train_sizes = parse_train_sizes(getattr(args, "train_sizes", None), args.train_size)
    alpha = getattr(args, "kd_alpha", None)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise FlagError(f"--kd-alpha must be in [0, 1], found {alpha}")


def parse_train_sizes(text, train_size) -> tuple[int, int] | None:
    """--train-sizes 'LO,HI' -> (LO, HI), multiples of 32 with LO <= HI (None stays None); FlagError
    otherwise, or when --train-size is given too (one training size rule per run)."""
    if text is None or isinstance(text, tuple):
        return text
    parts = str(text).split(",")
    try:
        lo, hi = (int(v) for v in parts)
    except ValueError:
        raise FlagError(f"--train-sizes must be LO,HI (two sizes, e.g. 224,320), found {text!r}") from None
    cli.check_size("--train-sizes", lo)
    cli.check_size("--train-sizes", hi)
    if lo > hi:
        raise FlagError(f"--train-sizes {text}: LO must not be above HI")
    if train_size is not None:
        raise FlagError(f"--train-sizes {text} and --train-size {train_size}: give one (a range or a fixed size)")
    return lo, hi


def fill_recipe_defaults(args, loss_scales: str, pretrain_num_epochs: int) -> argparse.Namespace:
    """The defaults every training script shares, after its main-job defaults (design §7.6).

    recipe original unless set; fast: batch, sizes, corner loss, box rule, the confidence term from
    the first step, channels-last, loading in the training process on a CPU. loss_scales: the
    script's own default for --loss-scales (train.py cfg, the fork's; train_multi.py ms, the
    original multi-object loss object's, design §5.6); pretrain_num_epochs: the original recipe's
    epochs without the confidence term (15 single object, 0 multi-object, design §5.5, §7.5)."""
    args.recipe = args.recipe or "original"
    fast = args.recipe == "fast"
    if getattr(args, "final_size", None):
        if args.minutes:
            raise FlagError("--final-size needs an epoch budget (--epochs), not --minutes: its last epochs are counted")
        cli.fill_defaults(args, {"test_size": args.final_size})  # the model is tested at the size it ends at
    if fast:
        cli.fill_defaults(args, {"batch_size": FAST.batch, "train_size": FAST.size, "test_size": FAST.size,
                                 "coord_loss": FAST.coord_loss, "box_rule": FAST.box_rule,
                                 "pretrain_num_epochs": -1,  # the floored confidence is meaningful from the start
                                 "channels_last": True})
    cli.fill_defaults(args, {"coord_loss": "mse", "box_rule": "max", "pretrain_num_epochs": pretrain_num_epochs,
                             "channels_last": False, "eval_every": ORIGINAL_EVAL_EVERY, "loss_scales": loss_scales})
    args.channels_last = bool(args.channels_last)
    if args.workers is None:
        cpu_only = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
        args.workers = 0 if fast and cpu_only else min(4, os.cpu_count() or 1)
    if getattr(args, "cache_images", False) and not fast:
        raise FlagError("--cache-images serves the fast recipe's cv2 loader; the original recipe's Pillow path "
                        "decodes every sample (add --recipe fast, or drop the flag)")
    if getattr(args, "kd_neighbours", "gt") != "gt" and not (fast and getattr(args, "distiled", 0)):
        raise FlagError(f"--kd-neighbours {args.kd_neighbours} sets what the fast recipe's neighbour cells regress "
                        "under distillation: it needs --distiled 1 and --recipe fast")
    return args


@dataclass(frozen=True)
class Defaults:
    """What a training script's flags default to (`resolve_args`); paths relative to the current
    folder, else to a folder of `search`.

    main_job: the flag values of the main job (no --datacfg), e.g. its recipe and epochs;
    main_job_data(quiet) -> its `.data` file, generated once. backup, main_job_backup: the backup
    folder when the `.data` has no 'backup' key ('{name}': the `.data` 'name'); the main job's
    gets its budget as a suffix when it is not the main job's own. loss_scales and
    pretrain_num_epochs: see `fill_recipe_defaults`. A run with --mesh takes its flag values from
    recipes.MESH or MESH_MULTI and its data from `mesh_job.mesh_dataset` (design §7.7)."""
    modelcfg: str
    initweights: str
    main_job: dict
    main_job_data: Callable[[bool], Path]
    backup: str
    main_job_backup: str
    loss_scales: str
    pretrain_num_epochs: int
    search: tuple = (ROOT,)


def resolve_args(args, defaults: Defaults) -> tuple[argparse.Namespace, dict]:
    """Fill a training run's defaults, one rule for both scripts; return (args, the `.data` options).

    The numeric flags are checked first (before the main job generates its data); without
    --datacfg, the main job's data and flag values; the recipe's defaults; --modelcfg and
    --initweightfile from `defaults` ('none': random initialisation); every path flag as given
    when it exists from the current folder, else found in `defaults.search` (cli.find_path); the
    backup folder. InputError when the `.data` file is missing."""
    check_run_numbers(args)
    mesh_job.check_mesh_flags(args)
    mesh = getattr(args, "mesh", None) is not None
    main_job = args.datacfg is None and not mesh
    if mesh:  # the job's flags first: the set's image counts are among them
        mesh_job.fill_mesh_defaults(args, mesh_job.job_for(args))
        check_files_before_rendering(args, defaults.search)
        args.datacfg = str(mesh_job.mesh_dataset(args, mesh_job.job_for(args), quiet=args.quiet))
    elif main_job:
        args.datacfg = str(defaults.main_job_data(args.quiet))
        cli.fill_main_job_defaults(args, defaults.main_job)
    fill_recipe_defaults(args, loss_scales=defaults.loss_scales, pretrain_num_epochs=defaults.pretrain_num_epochs)
    cli.fill_defaults(args, {"modelcfg": defaults.modelcfg, "initweightfile": defaults.initweights})
    if str(args.initweightfile).lower() == "none":
        args.initweightfile = None
    args.datacfg, args.modelcfg = (cli.find_path(p, *defaults.search) for p in (args.datacfg, args.modelcfg))
    if args.initweightfile is not None:
        args.initweightfile = cli.find_path(args.initweightfile, *defaults.search)
    if not Path(args.datacfg).is_file():
        raise InputError(f"cannot start training: data cfg not found: {args.datacfg}")
    opts = lf.read_data_cfg(args.datacfg, resolve_paths=True)
    name = opts.get("name", Path(args.datacfg).stem)
    if args.backupdir is None and main_job:  # a budget other than the main job's gets its own folder
        suffix = (f"_{args.minutes:g}min" if args.minutes else
                  "" if args.epochs == defaults.main_job["epochs"] else f"_{args.epochs}ep")
        args.backupdir = defaults.main_job_backup.format(name=name) + suffix
    elif args.backupdir is None and mesh:
        args.backupdir = mesh_job.MESH_BACKUP.format(name=mesh_job.run_name(args))
    elif args.backupdir is None:
        args.backupdir = opts.get("backup", defaults.backup.format(name=name))
    return args, opts


def check_files_before_rendering(args, search) -> None:
    """InputError when --modelcfg or --initweightfile is not a file, or the network has fewer classes
    than there are meshes: a --mesh run finds out before it renders its set (minutes), not after
    (the full check is the pre-flight's)."""
    for flag, path in (("--modelcfg", args.modelcfg), ("--initweightfile", args.initweightfile)):
        if path is not None and str(path).lower() != "none" and not Path(cli.find_path(path, *search)).is_file():
            raise InputError(f"cannot start training: {flag} {path}: file not found (checked before rendering the "
                             f"--mesh set)")
    cfg = cli.find_path(args.modelcfg, *search)
    regions = [b for b in parse_cfg(cfg) if b["type"] == "region"]
    classes = int(regions[-1].get("classes", 1)) if regions else 1
    if len(args.mesh) > classes:
        raise InputError(f"cannot start training: {len(args.mesh)} meshes, one class each, but {cfg} has {classes} "
                         f"class{'es' if classes != 1 else ''} (checked before rendering the --mesh set)")


def sample_options(args, model, composed: bool = False) -> dict:
    """The training sample's keywords (`dataset.PoseDataset`), one rule for both scripts: the seed,
    resize filter, --bg-dir, the network's keypoint count and the recipe's loader (fast: the cv2
    path). The fast recipe's jitter and background probability (`recipes.FAST`) apply to a list's
    own images; the design §6.3 composition (`composed`) keeps its own (dataset.MultiObjectDataset)."""
    fast = args.recipe == "fast"
    options = dict(train=True, seed=args.seed, resample=args.resample, bg_dir=args.bg_dir,
                   num_keypoints=model.num_keypoints, fast=fast)
    if fast and not composed:
        options.update(jitter=FAST.jitter, bg_prob=FAST.bg_prob_with_dir if args.bg_dir else FAST.bg_prob)
    return options


def check_inputs(args, check_tests: Callable | None = None, extra_lists: dict | None = None):
    """Every input a training run reads, checked before anything starts: the one pre-flight of
    both scripts (`preflight.check_training_inputs`) with this run's flags. What the scripts pass
    differs only where their data differ: check_tests (what the run tests on; None: the
    single-object `.data`'s test) and extra_lists (images trained on besides the `train` list).
    Raises InputError listing every problem; returns the preflight report."""
    distil = bool(getattr(args, "distiled", 0))
    return preflight.check_training_inputs(
        args.datacfg, args.modelcfg, args.initweightfile, until_last=not getattr(args, "init_all_layers", False),
        allow_partial=allow_partial(args), teacher_cfg=args.teacher_cfg if distil else None,
        teacher_weights=args.teacher_weights if distil else None, bg_dir=args.bg_dir, check_tests=check_tests,
        extra_lists=extra_lists)


def allow_partial(args) -> bool:
    """Partial init weights are allowed when asked, or for darknet's truncated backbones (`*.conv.N`)."""
    name = Path(args.initweightfile).name if args.initweightfile else ""
    return bool(args.allow_partial_weights) or re.search(r"\.conv\.\d+$", name) is not None


def check_single_image_batches(batch: int, n_train: int, sizes: dict, world: int = 1) -> None:
    """FlagError when a training batch would hold a single image at a 1x1 output grid (a training
    size of 32): BatchNorm cannot normalise one value per channel, and the step would fail
    mid-epoch. sizes: {the flag as given ('--train-size 32', '--train-sizes 32,64'): the smallest
    size it trains at, or None}."""
    small = [flag for flag, size in sizes.items() if size is not None and size <= cli.STRIDE]
    if not small:
        return
    per_rank = -(-n_train // world)
    if batch == 1 or per_rank % batch == 1:
        what = "--batch-size 1" if batch == 1 else (f"the last batch of each epoch ({per_rank} images in batches "
                                                      f"of {batch}) holds one image")
        raise FlagError(f"{small[0]} gives a 1x1 output grid and {what}: BatchNorm needs more than "
                        f"one value per channel; train at 64 or more, or choose another --batch-size")


def training_sizes(args) -> dict:
    """{flag as given: the smallest size it trains at} for check_single_image_batches."""
    sizes = getattr(args, "train_sizes", None)
    final_size = getattr(args, "final_size", None)
    return {f"--train-size {args.train_size}": args.train_size,
            f"--train-sizes {sizes[0]},{sizes[1]}" if sizes else "--train-sizes": sizes[0] if sizes else None,
            f"--final-size {final_size}": final_size}


def suggest_fast_recipe(recipe: str, device) -> None:
    """One warning line when the original recipe trains on a CPU: it stays at 0 % there for any
    budget a CPU has (docs/results.md); the fast recipe is the one for a CPU (design §7.6)."""
    if recipe == "original" and device.type == "cpu":
        warnings.warn("the original recipe (SGD, the cfg's step schedule, 416 px, full augmentation) stays at 0 % "
                      "on a CPU for hours; add --recipe fast for a working model on a CPU (design §7.6)",
                      stacklevel=2)


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------

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


def check_output(model, modelcfg) -> None:
    """InputError unless the network's output has the A*(2K+1+C) channels the loss and the test
    read, and its [region] has the anchor values its anchors need."""
    try:
        model_loading.check_head(model, modelcfg)
    except InputError as exc:
        raise InputError(f"cannot start training: {exc}") from None
    if model.num_anchors > 1 and len(model.anchors) < 2 * model.num_anchors:
        raise InputError(f"cannot start training: {modelcfg}: {model.num_anchors} anchors need "
                         f"{2 * model.num_anchors} anchor values")


def build_loss(model, args) -> RegionLoss:
    """The region loss of `model`'s [region] (anchors, classes), scales from --loss-scales; the fast
    recipe's confidence floor, batch mean, background weight and neighbour cells (design §7.6),
    the corner loss of --coord-loss, and the anchor fix unless --repro-anchor-bug (D22)."""
    loss_fn = RegionLoss.from_region(model.region, model.num_keypoints, scales=args.loss_scales,
                                     pretrain_num_epochs=args.pretrain_num_epochs)
    if args.recipe == "fast":
        loss_fn.conf_floor, loss_fn.batch_mean = FAST.conf_floor, True
        loss_fn.noobject_scale = FAST.noobject_scale
        loss_fn.neighbour_cells = FAST.neighbour_cells
        loss_fn.neighbour_conf_scale = FAST.neighbour_conf_scale
    loss_fn.coord_loss = args.coord_loss
    loss_fn.repro_anchor_bug = bool(getattr(args, "repro_anchor_bug", False))
    loss_fn.anchor_rule = getattr(args, "anchor_rule", None) or "size"
    return loss_fn


def build_optimizer_and_schedule(model, recipe: str, batch: int, n_samples: int, epochs, minutes=None,
                                 step_unit=None, decay_bn_bias: bool = True):
    """The recipe's optimiser and its schedule (recipes.py).

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


def build_teacher(args, model, loss_fn: RegionLoss, device):
    """The frozen distillation teacher as its BN-folded channels-last copy (D57), checked against
    the student's output on a probe: another grid, keypoint count or class count stops here."""
    teacher = build_model(args.teacher_cfg, args.teacher_weights, device, False, until_last=False)
    teacher = teacher.inference_copy(channels_last=args.channels_last)
    loss_fn.kd_mode, loss_fn.kd_alpha = args.kd_mode, args.kd_alpha
    loss_fn.neighbour_target = getattr(args, "kd_neighbours", "gt")
    size = args.train_size or 416
    with torch.no_grad():
        probe = torch.zeros(1, 3, size, size, device=device)
        try:
            loss_fn.check_teacher(model.eval()(probe), teacher.eval()(probe))
        finally:
            model.train()
    return teacher


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

@dataclass
class Variant:
    """What a training script brings to `run`: everything that differs between single- and
    multi-object training.

    check_inputs(): every input file, before anything starts (`check_inputs`; InputError).
    train_set(model): the training dataset (a dataset.PoseDataset).
    evaluation(model, device, test_shape, seen): a callable (eval_model, epoch) -> engine result
        dict ({'row', 'score', 'costs'}); seen() gives the images trained so far.
    outputs(state, backup): what the script prints at the end (the command that scores it).
    cost_keys: the arrays of costs.npz. step_unit: see build_optimizer_and_schedule.
    """
    check_inputs: Callable[[], None]
    train_set: Callable[[object], object]
    evaluation: Callable[..., Callable]
    outputs: Callable[[dict, Path], None]
    cost_keys: tuple
    step_unit: float | None = None


def run(args, variant: Variant) -> dict:
    """Train with the resolved `args` (the flags both scripts share) and `variant`; returns the
    final engine state. Raises InputError / FlagError before the backup folder is touched.

    The steps keep one order, which the random streams follow (the same seed, the same weights):
    the inputs checked, the seed set, the model, the loss and teacher, the training set, the
    optimiser, the trainer, then the epochs."""
    rank, world, device = start_processes(args)
    variant.check_inputs()
    engine.seed_everything(args.seed)
    model = prepare_model(args, device, quiet=args.quiet or rank != 0)
    batch = args.batch_size or int(model.net["batch"])
    epochs, final_from = epoch_budget(args, model)
    loss_fn = build_loss(model, args)
    teacher = build_teacher(args, model, loss_fn, device) if getattr(args, "distiled", 0) else None
    train_set = prepare_train_set(args, variant, model, announce=rank == 0 and not args.quiet)
    check_single_image_batches(batch, len(train_set), training_sizes(args), world)
    test_shape = (args.test_size, args.test_size) if args.test_size else (model.test_width, model.test_height)
    optimizer, schedule = build_optimizer_and_schedule(model, args.recipe, batch, len(train_set), epochs,
                                                       minutes=args.minutes, step_unit=variant.step_unit,
                                                       decay_bn_bias=bool(getattr(args, "decay_bn_bias", 1)))
    trainer = build_trainer(args, variant, model, optimizer, loss_fn, schedule, teacher, batch,
                            device=device, rank=rank, world=world)
    if args.resume:
        trainer.resume(None if args.resume == "auto" else args.resume, force=args.force_resume)
    elif rank == 0 and not args.quiet:
        model.print_network()
        print(f"recipe {args.recipe}: batch {batch}, " + (f"{args.minutes:g} minutes" if args.minutes and not epochs
                                                         else f"{epochs} epochs"), flush=True)
    make_loader = loader_factory(args, train_set, batch, final_from, device=device, rank=rank, world=world)
    evaluate = variant.evaluation(model, device, test_shape, lambda: trainer.state["seen"])
    if rank == 0 and test_shape[0] == test_shape[1]:  # valid.py and detect.py test at the trained size (D56)
        model_info.write_info(trainer.backup, args.modelcfg, test_shape[0], args.box_rule, test_filter(args))
    state = trainer.fit(make_loader, evaluate, epochs=epochs, budget_s=args.minutes * 60 if args.minutes else None,
                        eval_every=args.eval_every, meaningful_from=args.pretrain_num_epochs + 1)
    if rank == 0:
        variant.outputs(state, trainer.backup)
    return state


def start_processes(args) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process (DDP under torchrun, engine.setup_distributed);
    rank 0 warns once about --amp without CUDA and the original recipe on a CPU."""
    rank, world, device = engine.setup_distributed(cli.resolve_device(args.device))
    if rank == 0:  # one line per run, not one per process
        cli.warn_amp_unused(args.amp, device)
        suggest_fast_recipe(args.recipe, device)
    return rank, world, device


def prepare_model(args, device, quiet: bool) -> Darknet:
    """The student: built from --modelcfg with --initweightfile ('until last' unless --init-all-layers),
    its `seen` reset, its output checked (`check_output`); the fast recipe
    freezes its first convolutions when it starts from pretrained weights."""
    model = build_model(args.modelcfg, args.initweightfile, device, args.channels_last, partial=allow_partial(args),
                        until_last=not getattr(args, "init_all_layers", False), quiet=quiet)
    model.seen = 0  # the original resets the counter after loading the init weights
    check_output(model, args.modelcfg)
    if args.recipe == "fast" and args.initweightfile:  # pretrained low-level filters: not worth their backward pass
        recipes.freeze_first_convs(model, FAST.frozen_convs)
    return model


def epoch_budget(args, model) -> tuple[int | None, int | None]:
    """(epochs, final_from): --epochs, else the cfg's max_epochs (None under --minutes); the first
    epoch of the --final-size phase (D58), or None. FlagError when --final-epochs exceeds the run."""
    epochs = args.epochs if args.epochs is not None else (None if args.minutes else int(model.max_epochs))
    final_from = epochs - args.final_epochs if getattr(args, "final_size", None) else None
    if final_from is not None and final_from < 0:
        raise FlagError(f"--final-epochs {args.final_epochs} is more than the {epochs} epochs of the run")
    return epochs, final_from


def prepare_train_set(args, variant: Variant, model, announce: bool):
    """The variant's training set, its images decoded into RAM under --cache-images (D67) and its
    background pool filled: both before the loader workers fork, so that they share them."""
    train_set = variant.train_set(model)
    if getattr(args, "cache_images", False):
        t0 = time.perf_counter()
        held = train_set.cache_images()
        if announce:
            print(f"image cache: {len(train_set.decoded)} training images decoded, {held / 2**20:.0f} MiB, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    train_set.warm_background_pool()
    return train_set


def build_trainer(args, variant: Variant, model, optimizer, loss_fn, schedule, teacher, batch: int, *,
                  device, rank: int, world: int) -> engine.Trainer:
    """The engine.Trainer of the run: EMA weights with the fast recipe, the DDP wrapper with several
    processes, the backup folder prepared by rank 0 (engine.prepare_backup: --resume, --overwrite,
    room for the checkpoints)."""
    ema = recipes.ModelEMA(model, FAST.ema_decay) if args.recipe == "fast" else None
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    backup = Path(args.backupdir)
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        engine.prepare_backup(backup, resume=bool(args.resume), overwrite=args.overwrite,
                              need_bytes=engine.CHECKPOINT_SIZE_FACTOR * 4 * n_params)
    run_id = engine.run_identity(args.modelcfg, args.datacfg, batch, args.recipe)
    return engine.Trainer(model, optimizer, loss_fn, schedule, backup=backup, run=run_id,
                          cost_keys=variant.cost_keys, device=device, net=net, ema=ema, teacher=teacher,
                          amp=args.amp, channels_last=args.channels_last, rank=rank, world=world,
                          progress=not args.quiet, log_every=args.log_every, max_batches=args.max_batches,
                          args=vars(args))


def loader_factory(args, train_set, batch: int, final_from: int | None, *, device, rank: int, world: int):
    """make_loader(epoch, seen, start_batch) for engine.Trainer.fit: each epoch's loader at its sizes
    (--train-size, --train-sizes, the final phase's --final-size, else design §6.5's multi-scale table)."""
    final_size = getattr(args, "final_size", None)

    def make_loader(epoch, seen, start_batch):
        final = final_from is not None and epoch >= final_from
        size = final_size if final else args.train_size
        sizes = None if final else getattr(args, "train_sizes", None)
        mode = "range" if sizes else "fixed" if size else variant_scale_mode(train_set)
        return dataset.make_train_loader(
            train_set, batch_size=batch, seed=args.seed, epoch=epoch, seen=seen, workers=args.workers,
            mode=mode, fixed_size=size or dataset.DEFAULT_SIZE, size_range=sizes,
            rank=rank, world_size=world, pin_memory=device.type == "cuda", start_batch=start_batch)
    return make_loader


def variant_scale_mode(train_set) -> str:
    """The multi-scale table of design §6.5: the multi-object one for the composed sample."""
    return "multi" if isinstance(train_set, dataset.MultiObjectDataset) else "single"
