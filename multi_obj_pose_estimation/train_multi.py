"""Train the multi-object pose network, the OCCLUSION model (design §5.7, §6.3, §7.2, §7.5).

    python multi_obj_pose_estimation/train_multi.py      # main job: synthetic occlusion scenes, YOLO-LITE trial 3, CPU
    python multi_obj_pose_estimation/train_multi.py --datacfg cfg/occlusion.data \\
        --modelcfg multi_obj_pose_estimation/cfg/yolo-pose-multi.cfg --initweightfile backup_multi/init.weights
    torchrun --nproc_per_node 2 multi_obj_pose_estimation/train_multi.py ...   # DDP (the original used DataParallel)

Built on the top-level modules: the training sample is `dataset.MultiObjectDataset` (design §6.3), the
loss `region_loss.RegionLoss` with the cfg's anchors and classes and the MS scales (design §5.6), the
epoch loop `engine.Trainer` with the cfg steps counted in raw batches (design §7.2), and the test
`valid_multi.evaluate_object` (design §9.6).

Fixed by default, each with a flag that reproduces the original (design §11): the flipped /
wrapped main object's labels (--repro-label-bugs, item 20), the anchor chosen for tconf and for
all-zero IoUs (--repro-anchor-bug, item 22). Always fixed (item 23): every test (after epochs
e % 20 == 0, e > 0, and after the last) scores the objects valid_multi.py scores and records the
5 px accuracy, not the 50 px one; model.weights is saved when the mean over the objects improves.

Writes into the backup dir: model.weights (darknet format, best mean 5 px accuracy),
checkpoint.pt (every epoch and on Ctrl-C; --resume), costs.npz, metrics.csv, training.png.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import dataset
import engine
import model_info
import preflight
import recipes
import train
import utils
import valid
from errors import InputError, run_cli
from multi_obj_pose_estimation import valid_multi
from multi_obj_pose_estimation.valid_multi import find_path
from recipes import FAST
from region_loss import RegionLoss

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# design §7.4: the original's defaults (paths relative to multi_obj_pose_estimation/ or the repository root)
DEFAULT_DATACFG = "cfg/occlusion.data"
DEFAULT_MODELCFG = "cfg/yolo-pose-multi.cfg"
DEFAULT_INITWEIGHTS = "backup_multi/init.weights"
EVAL_EVERY = 20  # design §7.5
# The main job (no --datacfg): synthetic occlusion scenes and a small network, trained on the CPU.
SYNTHETIC_ROOT = Path("data/synthetic_multi")
SYNTHETIC_OBJECTS, SYNTHETIC_IMAGES, SYNTHETIC_SCENES = 3, 20, 40  # images per object feed the pasted extras
QUICK_MODELCFG = "cfg/yolo-lite-trial3-multi.cfg"
QUICK_INITWEIGHTS = "weights/tiny-yolov2-trial3-voc.weights"
QUICK = dict(epochs=30, eval_every=10, train_size=256, test_size=256, batch_size=8)
COST_KEYS = ("training_iters", "training_losses", "testing_iters", "testing_accuracies", "testing_errors_pixel")


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0], epilog=__doc__.split("\n\n")[1])
    cli.add_datacfg(p, help="occlusion .data file (the original's default: cfg/occlusion.data); without it, the "
                            f"synthetic set in {SYNTHETIC_ROOT} (generated if missing)")
    cli.add_model(p, weights="initweightfile",
                  cfg_help=f"network cfg (default {DEFAULT_MODELCFG}; synthetic: {QUICK_MODELCFG})",
                  weights_help=f"darknet weights loaded 'until last' (default {DEFAULT_INITWEIGHTS}; synthetic: "
                               f"{QUICK_INITWEIGHTS}; 'none' for random)")
    p.add_argument("--allow-partial-weights", action="store_true",
                   help="accept init weights that fill only part of the network (automatic for *.conv.N files)")
    p.add_argument("--recipe", default=None, choices=recipes.RECIPES,
                   help="original (default with --datacfg): the original's recipe; fast (default of the main "
                        "job): AdamW, cosine, EMA, confidence floor (see train.py -h, docs/design.md §7.6, D46)")
    p.add_argument("--minutes", type=float, default=None, help="train for this many minutes (fast: the schedule)")
    p.add_argument("--pretrain_num_epochs", type=int, default=None,
                   help="epochs without the confidence term (original multi default 0; fast: none)")
    p.add_argument("--backupdir", default=None, help="output folder (default: the .data 'backup' key)")
    p.add_argument("--repro-anchor-bug", action="store_true",
                   help="reproduce the original's tconf from anchor -1 and anchor -1 for all-zero IoUs (D22)")
    p.add_argument("--repro-label-bugs", action="store_true",
                   help="reproduce the original's labels that ignore the flip and the wrap-around shift (D20)")
    p.add_argument("--loss-scales", choices=("ms", "cfg"), default="ms",
                   help="ms: the original's own loss object (noobject 1, design §5.6); cfg: the [region] scales")
    cli.add_objects(p, help="objects to test (default: those valid_multi.py scores: the six of design §9.6, "
                            "else all)")
    cli.add_conf_thresh(p, default=utils.MULTI_CONF_THRESH, help="test box threshold (design §4.2)")
    p.add_argument("--linemod-dir", default=None,
                   help="folder of <obj>/train.txt for the pasted objects (default: the training images' LINEMOD "
                        "folder)")
    p.add_argument("--epochs", type=int, default=None, help="default: cfg max_epochs (500)")
    cli.add_batch_size(p, help="default: cfg batch")
    p.add_argument("--eval-every", type=int, default=None,
                   help=f"test after epochs e %% N == 0, e > 0 (default {EVAL_EVERY})")
    cli.add_sizes(p, train=True, test=True)
    cli.add_device(p)
    cli.add_seed(p)
    cli.add_workers(p, help="loader workers (default: min(4, cores))")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (default: <backupdir>/checkpoint.pt)")
    p.add_argument("--force-resume", action="store_true",
                   help="resume even from a checkpoint made with another cfg, data file, batch size or recipe")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in the backup folder")
    cli.add_resample(p)
    p.add_argument("--bg-dir", default=None, help="background images (VOC2012 JPEGImages); default: procedural")
    p.add_argument("--max-batches", type=int, default=None, help="stop each epoch after N batches (smoke tests)")
    p.add_argument("--log-every", type=int, default=0, help="print the per-batch loss line every N batches (0: never)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, network table or per-epoch lines")
    return p


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------

def ensure_synthetic_dataset(root: Path = SYNTHETIC_ROOT, quiet: bool = False) -> Path:
    """The synthetic occlusion set, generated once; return its occlusion .data file.

    A folder that holds another set or files the generator did not write is left as it is: the
    set goes to `<root>_main` instead (train.ensure_synthetic_dataset, design D60)."""
    from tools.make_synthetic_linemod import DEFAULT_TEST_FRACTION, ensure_dataset, generation_params

    params = generation_params(SYNTHETIC_OBJECTS, SYNTHETIC_IMAGES, seed=0, multi=SYNTHETIC_SCENES,
                               test_fraction=DEFAULT_TEST_FRACTION)
    return ensure_dataset(root, params, quiet=quiet) / "cfg" / "occlusion.data"


def resolve_args(args) -> tuple[argparse.Namespace, dict]:
    """Fill the defaults (the synthetic main job when no --datacfg) and read the data cfg.

    Numeric flags are checked first, before the main job generates its data."""
    train.check_run_numbers(args)
    quick = args.datacfg is None
    if quick:
        args.datacfg = str(ensure_synthetic_dataset(quiet=args.quiet))
        cli.fill_defaults(args, QUICK)
        args.modelcfg = args.modelcfg or QUICK_MODELCFG
        args.initweightfile = args.initweightfile or str(ROOT / QUICK_INITWEIGHTS)
    args.recipe = args.recipe or ("fast" if quick else "original")
    if args.pretrain_num_epochs is None:
        args.pretrain_num_epochs = -1 if args.recipe == "fast" else 0
    args.datacfg = find_path(args.datacfg)
    args.modelcfg = find_path(args.modelcfg or DEFAULT_MODELCFG)
    if args.initweightfile is None:
        args.initweightfile = DEFAULT_INITWEIGHTS
    if str(args.initweightfile).lower() == "none":
        args.initweightfile = None
    if args.eval_every is None:
        args.eval_every = EVAL_EVERY
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    args.objects = cli.object_list(args.objects)
    if not Path(args.datacfg).is_file():
        raise InputError(f"cannot start training: data cfg not found: {args.datacfg}")
    opts = utils.read_data_cfg(args.datacfg, resolve_paths=True)
    if args.backupdir is None:
        args.backupdir = "backup_multi/synthetic" if quick else opts.get("backup", "backup_multi")
    return args, opts


def extra_object_lists(train_paths: list[str], linemod_dir=None) -> dict[str, list[str]]:
    """object -> training images of the objects pasted around the main one (design §6.3 step 4):
    `<linemod_dir>/<obj>/train.txt`, linemod_dir defaulting to the folder holding the first
    training image's object folder (LINEMOD/benchvise/JPEGImages/x.jpg -> LINEMOD)."""
    folder = Path(linemod_dir) if linemod_dir else Path(train_paths[0]).resolve().parents[2]
    if not folder.is_dir():
        raise FileNotFoundError(f"--linemod-dir {folder}: folder not found")
    return dataset.linemod_train_lists(folder)


def check_inputs(args, opts: dict) -> list:
    """Every file training needs, checked before anything starts; returns the test objects."""
    problems, objects = [], []
    if "train" not in opts:
        problems.append(f"{args.datacfg}: no 'train' key")
    elif not Path(opts["train"]).is_file():
        problems.append(f"{args.datacfg}: train list not found: {opts['train']}")
    else:  # every training image, mask and label file now, not when the first batch meets them
        try:
            scan = preflight.check_image_list(opts["train"], train=True)
            problems.extend(preflight.summarise(scan.problems))
            preflight.warn_list_oddities(opts["train"], scan, "trained on")
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
    if not Path(args.modelcfg).is_file():
        problems.append(f"model cfg not found: {args.modelcfg}")
    if args.initweightfile and not Path(args.initweightfile).is_file():
        problems.append(f"init weights not found: {args.initweightfile}")
    try:
        objects = valid_multi.load_objects(args.datacfg, args.objects)
        valid_multi.check_test_images(objects)  # load_objects checked the lists and meshes
    except (OSError, ValueError) as exc:
        problems.append(str(exc))
    if problems:
        raise InputError("cannot start training:\n  " + "\n  ".join(problems))
    return objects


def check_extra_objects(extras: dict) -> None:
    """The images, masks and label files of the objects pasted around the main one, checked as the
    training list is (`preflight.check_images`), before training: the sample reads them mid-epoch."""
    problems = []
    for obj, paths in extras.items():
        scan = preflight.check_images(paths, f"the train list of {obj}", train=True)
        problems.extend(preflight.summarise(scan.problems))
    if problems:
        raise InputError("cannot start training:\n  " + "\n  ".join(problems))


def check_model(model, args, objects) -> None:
    """Refuse a network whose output or classes cannot serve the multi-object loss and test."""
    expect = model.num_anchors * (2 * model.num_keypoints + 1 + model.num_classes)
    with torch.no_grad():  # a tiny probe: the output channels, whatever the layers
        was_training = model.training
        channels = model.eval()(torch.zeros(1, model.channels, 64, 64, device=next(model.parameters()).device)).shape[1]
        model.train(was_training)
    if channels != expect:
        raise InputError(f"cannot start training: {args.modelcfg}: the output has {channels} channels; [region] "
                         f"num={model.num_anchors}, classes={model.num_classes} need {expect}")
    if model.num_anchors > 1 and len(model.anchors) < 2 * model.num_anchors:
        raise InputError(f"cannot start training: {args.modelcfg}: {model.num_anchors} anchors need "
                         f"{2 * model.num_anchors} anchor values")
    for o in objects:
        if o.class_id >= model.num_classes:
            raise InputError(f"cannot start training: {args.datacfg}: object {o.name!r} has class id {o.class_id} "
                             f"but {args.modelcfg} has {model.num_classes} classes")


def make_loss(model, args) -> RegionLoss:
    """The multi-object loss: the cfg's anchors and classes, the MS scales unless --loss-scales cfg;
    the fast recipe's confidence floor and batch mean (design §7.6)."""
    fast = args.recipe == "fast"
    pretrain = args.pretrain_num_epochs if args.pretrain_num_epochs is not None else (-1 if fast else 0)
    if args.loss_scales == "cfg":
        loss = RegionLoss.from_region(model.region, model.num_keypoints, "cfg", pretrain)
    else:
        loss = RegionLoss(model.num_keypoints, model.num_classes, model.anchors, model.num_anchors, pretrain)
    loss.repro_anchor_bug = bool(args.repro_anchor_bug)
    if fast:
        loss.conf_floor, loss.batch_mean = FAST.conf_floor, True
    return loss


# --------------------------------------------------------------------------------------------
# The periodic test (design §7.5, fixed: D23)
# --------------------------------------------------------------------------------------------

def test_all(model, loaders, objects, device, conf_thresh: float) -> dict:
    """Score every object; returns {'objects': [summary...], 'acc_5px': mean 5 px accuracy,
    'mean_err_2d': mean over objects of the mean 2-D projection error (px)}."""
    summaries = [valid_multi.evaluate_object(model, loader, o, device, conf_thresh)[0]
                 for o, loader in zip(objects, loaders)]
    errs = [s["mean_err_2d"] for s in summaries if math.isfinite(s["mean_err_2d"])]
    return {"objects": summaries, "acc_5px": float(np.mean([s["acc_px"][0] for s in summaries])),
            "mean_err_2d": float(np.mean(errs)) if errs else math.nan}


def log_test(result: dict, epoch: int) -> None:
    for s in result["objects"]:
        accs = " ".join(f"{a:.1f}" for a in s["acc_px"])
        valid.log(f"epoch {epoch} {s['object']}: 2D acc at {s['thresholds'][0]}..{s['thresholds'][-1]} px: {accs}; "
                  f"ADD {s['acc_add']:.1f}%, 5cm5deg {s['acc_5cm5deg']:.1f}%")
    valid.log(f"epoch {epoch}: mean 2D accuracy at 5 px {result['acc_5px']:.2f}%, "
              f"mean px err {result['mean_err_2d']:.2f}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main(args) -> dict:
    args, opts = resolve_args(args)
    device = cli.resolve_device(args.device)
    rank, world, device = engine.setup_distributed(device)
    cli.warn_amp_unused(args.amp, device)
    objects = check_inputs(args, opts)
    engine.seed_everything(args.seed)
    fast = args.recipe == "fast"

    model = train.build_model(args.modelcfg, args.initweightfile, device, channels_last=False,
                              partial=train.allow_partial(args), quiet=args.quiet or rank != 0)
    model.seen = 0  # the original resets the counter after loading the init weights
    check_model(model, args, objects)
    net = model.net
    batch = args.batch_size or int(net["batch"])
    epochs = args.epochs if args.epochs is not None else (None if args.minutes else int(model.max_epochs))
    loss_fn = make_loss(model, args)

    train_paths = dataset.read_list(opts["train"])
    try:
        extras = extra_object_lists(train_paths, args.linemod_dir)
        train_set = dataset.MultiObjectDataset(opts["train"], extras, train=True, seed=args.seed,
                                               resample=args.resample, bg_dir=args.bg_dir,
                                               repro_label_bugs=args.repro_label_bugs,
                                               num_keypoints=model.num_keypoints)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot start training:\n  {exc}") from None
    check_extra_objects(extras)
    train.check_single_image_batches(batch, len(train_set), args.train_size, world)
    if rank == 0 and not args.quiet:
        pasted = sorted(k for k, v in extras.items() if v)
        print(f"{len(train_set)} training images; objects to paste from: {', '.join(pasted) or 'none'}", flush=True)
    test_shape = (args.test_size,) * 2 if args.test_size else (model.test_width, model.test_height)
    test_loaders = [valid_multi.make_test_loader(o, test_shape, batch_size=8, resample=args.resample) for o in objects]

    budget_s = args.minutes * 60 if args.minutes else None
    optimizer, schedule = train.build_optimizer_and_schedule(model, args.recipe, batch, len(train_set), epochs,
                                                             minutes=args.minutes, step_unit=1.0)
    ema = recipes.ModelEMA(model, FAST.ema_decay) if fast else None
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    backup = Path(args.backupdir)
    if rank == 0:
        engine.prepare_backup(backup, resume=bool(args.resume), overwrite=args.overwrite,
                              need_bytes=engine.CHECKPOINT_SIZE_FACTOR * 4 * sum(p.numel() for p in model.parameters()))
        if test_shape[0] == test_shape[1]:  # valid_multi.py and detect.py --multi test at the trained size (D56)
            model_info.write_info(backup, args.modelcfg, test_shape[0], "max")
    run = engine.run_identity(args.modelcfg, args.datacfg, batch, args.recipe)
    trainer = engine.Trainer(model, optimizer, loss_fn, schedule, backup=backup, run=run, cost_keys=COST_KEYS,
                             device=device, net=ddp_model, ema=ema, amp=args.amp, rank=rank, world=world,
                             progress=not args.quiet, log_every=args.log_every, max_batches=args.max_batches,
                             args=vars(args))
    if args.resume:
        trainer.resume(None if args.resume == "auto" else args.resume, force=args.force_resume)
    elif rank == 0 and not args.quiet:
        model.print_network()

    def make_loader(epoch, seen, start_batch):
        return dataset.make_train_loader(
            train_set, batch_size=batch, seed=args.seed, epoch=epoch, seen=seen, workers=args.workers,
            mode="fixed" if args.train_size else "multi", fixed_size=args.train_size or 416, rank=rank,
            world_size=world, pin_memory=device.type == "cuda", start_batch=start_batch)

    def evaluate(eval_model, epoch):
        result = test_all(eval_model, test_loaders, objects, device, args.conf_thresh)
        log_test(result, epoch)
        row = {"acc_5px": result["acc_5px"], "mean_err_2d": result["mean_err_2d"],
               **{f"acc_5px_{s['object']}": s["acc_px"][0] for s in result["objects"]}}
        return {"row": row, "score": result["acc_5px"],
                "costs": {"testing_iters": trainer.state["seen"], "testing_accuracies": result["acc_5px"],
                          "testing_errors_pixel": result["mean_err_2d"]}}

    state = trainer.fit(make_loader, evaluate, epochs=epochs, budget_s=budget_s, eval_every=args.eval_every,
                        meaningful_from=args.pretrain_num_epochs + 1)
    if rank == 0:
        print(f"\noutputs in {backup}/: {train.BEST_WEIGHTS} (best mean 5 px accuracy {state['best']:.2f}%), "
              f"{train.CHECKPOINT}, costs.npz, metrics.csv, training.png")
        extra = f" --test-size {args.test_size}" if args.test_size else ""
        if args.objects:
            extra += " --objects " + " ".join(args.objects)
        print(f"score it with:\n  python {os.path.relpath(HERE / 'valid_multi.py')} --datacfg {args.datacfg} "
              f"--modelcfg {args.modelcfg} --weightfile {backup / train.BEST_WEIGHTS}{extra}")
    return state


def main_cli(argv=None) -> dict:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run_cli(main_cli, prog="train_multi.py")
