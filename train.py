"""Train a single-object pose network (spec §7), optionally distilled from a teacher (spec §8).

    python train.py                                    # main job: synthetic data, YOLO-LITE trial 3, CPU
    python train.py --datacfg cfg/ape.data --modelcfg cfg/yolo-pose.cfg --initweightfile cfg/darknet19_448.conv.23
    python train.py cfg/duck.data cfg/yolo-pose.cfg backup/duck/init.weights   # positional form
    python train.py --datacfg cfg/ape.data --modelcfg cfg/yolo-lite-trial3-pose.cfg \\
        --initweightfile weights/tiny-yolov2-trial3-voc.weights --distiled 1 --kd-mode fixed
    torchrun --nproc_per_node 2 train.py ...            # DDP (gloo on CPU, nccl on CUDA)

Writes into the backup dir: model.weights (darknet format, best 2-D accuracy so far),
checkpoint.pt (last state, every epoch and on Ctrl-C; --resume continues from it), costs.npz,
metrics.csv / metrics.jsonl (one row per evaluation) and training.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import dataset
import utils
import valid
from darknet import Darknet
from linemod_format import atomic_write
from region_loss import RegionLoss

ROOT = Path(__file__).resolve().parent
DEFAULT_MODELCFG = "cfg/yolo-lite-trial3-pose.cfg"
DEFAULT_INITWEIGHTS = "weights/tiny-yolov2-trial3-voc.weights"
DEFAULT_TEACHER_CFG = "cfg/yolo-pose.cfg"
# The main job (no --datacfg): a small synthetic LINEMOD set, trained briefly on the CPU.
SYNTHETIC_ROOT = Path("data/synthetic")
SYNTHETIC_OBJECTS, SYNTHETIC_IMAGES = 3, 80
QUICK = dict(epochs=16, pretrain_num_epochs=4, eval_every=4, train_size=256, test_size=256, batch_size=16)
CHECKPOINT, BEST_WEIGHTS = "checkpoint.pt", "model.weights"
COST_KEYS = ("training_iters", "training_losses", "testing_iters", "testing_accuracies",
             "testing_errors_pixel", "testing_errors_angle")  # spec §7.3


class NonFiniteLoss(RuntimeError):
    pass


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("positional", nargs="*", metavar="DATACFG MODELCFG INITWEIGHTS",
                   help="the original README's positional form")
    p.add_argument("--datacfg", help="object .data file (default: the synthetic set, generated if missing)")
    p.add_argument("--modelcfg", default=None, help=f"network cfg (default {DEFAULT_MODELCFG})")
    p.add_argument("--initweightfile", default=None,
                   help=f"darknet weights loaded 'until last' (default {DEFAULT_INITWEIGHTS}; 'none' for random)")
    p.add_argument("--pretrain_num_epochs", type=int, default=None,
                   help="epochs without the confidence term (spec §5.5; default 15)")
    p.add_argument("--backupdir", default=None, help="output folder (default: the .data 'backup' key)")
    p.add_argument("--distiled", "--distill", dest="distiled", type=int, default=0,
                   help="1: distil from a teacher (spec §8)")
    p.add_argument("--teacher-cfg", default=DEFAULT_TEACHER_CFG)
    p.add_argument("--teacher-weights", default=None, help="default backup/<name>/model_backup.weights")
    p.add_argument("--kd-mode", choices=("fork", "fixed"), default="fork",
                   help="fork: the fork's shifted teacher channels (spec §8.3); fixed: the right ones")
    p.add_argument("--kd-alpha", type=float, default=1.0, help="targets = (1-a)*GT + a*teacher (fork: 1)")
    p.add_argument("--loss-scales", choices=("cfg", "ms"), default="cfg",
                   help="cfg: [region] scales (fork, noobject 0.1); ms: MS train.py defaults (noobject 1)")
    p.add_argument("--epochs", type=int, default=None, help="default: cfg max_epochs (500)")
    p.add_argument("--batch-size", type=int, default=None, help="default: cfg batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: min(4, cores))")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint (default: <backupdir>/checkpoint.pt)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="test after epochs e %% N == 0, e > 0, and after the last (default 10, as the fork)")
    p.add_argument("--train-size", type=int, default=None, help="fixed square training size (default: multi-scale §6.5)")
    p.add_argument("--test-size", type=int, default=None, help="square test size (default: cfg test_width/height)")
    p.add_argument("--resample", choices=("bicubic", "nearest"), default="bicubic", help="spec §6.4")
    p.add_argument("--bg-dir", default=None, help="background images (VOC2012 JPEGImages); default: procedural")
    p.add_argument("--decay-bn-bias", type=int, default=1, help="0: no weight decay on BN and biases (spec §11 item 14)")
    p.add_argument("--max-batches", type=int, default=None, help="stop each epoch after N batches (smoke tests)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# --------------------------------------------------------------------------------------------
# Schedule and optimiser (spec §7.1, §7.2)
# --------------------------------------------------------------------------------------------

def learning_rate(t: float, base_lr: float, steps, scales, step_unit: float = 1.0) -> float:
    """Learning rate before batch t: walk the steps (x step_unit), multiplying while t >= step."""
    lr = base_lr
    for step, scale in zip(steps, scales):
        step = step * step_unit
        if t < step:
            break
        lr *= scale
        if t == step:
            break
    return lr


def build_optimizer(model, lr: float, momentum: float, decay: float, batch: int, decay_bn_bias: bool = True):
    """SGD with lr/batch and decay*batch (the loss is a batch sum, spec §7.1)."""
    if decay_bn_bias:
        groups = [{"params": list(model.parameters())}]
    else:
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        rest = [p for n, p in model.named_parameters() if p.ndim > 1]
        groups = [{"params": rest}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr / batch, momentum=momentum, dampening=0,
                           weight_decay=decay * batch, nesterov=False)


def set_lr(optimizer, lr: float, batch: int) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr / batch


# --------------------------------------------------------------------------------------------
# Checkpoints and logs (atomic writes: nothing a user made is lost)
# --------------------------------------------------------------------------------------------

def atomic_torch_save(obj, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def atomic_npz(path: Path, **arrays) -> None:
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plot_training(costs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(costs["training_iters"], costs["training_losses"], lw=0.8)
    a.set(xlabel="images seen", ylabel="loss (batch sum)", yscale="log", title="training loss")
    b.plot(costs["testing_iters"], costs["testing_accuracies"], "o-")
    b.set(xlabel="images seen", ylabel="2-D projection accuracy at 5 px (%)", ylim=(0, 101), title="test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Set-up helpers
# --------------------------------------------------------------------------------------------

def repo_path(path: str) -> str:
    """`path` as given if it exists from the current directory, else from the repository root
    (so the defaults work from any directory)."""
    return path if Path(path).exists() or not (ROOT / path).exists() else str(ROOT / path)


def ensure_synthetic_dataset(root: Path = SYNTHETIC_ROOT, quiet: bool = False) -> Path:
    """Generate the default synthetic LINEMOD set if it is missing; return its first object's .data."""
    cfgs = sorted((root / "cfg").glob("*.data")) if root.exists() else []
    cfgs = [c for c in cfgs if "occlusion" not in c.name]
    if not cfgs:
        from tools.make_synthetic_linemod import generate

        if not quiet:
            print(f"generating the synthetic LINEMOD set in {root} (once) ...", flush=True)
        generate(root, objects=SYNTHETIC_OBJECTS, images_per_object=SYNTHETIC_IMAGES, seed=0)
        cfgs = sorted(c for c in (root / "cfg").glob("*.data") if "occlusion" not in c.name)
    return cfgs[0]


def resolve_device(name: str) -> torch.device:
    """valid.resolve_device, with its error as a clean exit for the command line."""
    try:
        return valid.resolve_device(name)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def setup_distributed(device: torch.device):
    """(rank, world_size, device) under torchrun; (0, 1, device) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def check_inputs(args, opts: dict) -> None:
    """Every file training needs, checked before anything starts (spec-driven clear errors)."""
    problems = []
    for key in ("train", "valid", "mesh"):
        if key not in opts:
            problems.append(f"{args.datacfg}: no '{key}' key")
        elif not Path(opts[key]).is_file():
            problems.append(f"{args.datacfg}: {key} file not found: {opts[key]}")
    if not Path(args.modelcfg).is_file():
        problems.append(f"model cfg not found: {args.modelcfg}")
    if args.initweightfile and not Path(args.initweightfile).is_file():
        problems.append(f"init weights not found: {args.initweightfile}")
    if args.distiled:
        if not Path(args.teacher_cfg).is_file():
            problems.append(f"teacher cfg not found: {args.teacher_cfg}")
        if not Path(args.teacher_weights).is_file():
            problems.append(f"teacher weights not found: {args.teacher_weights}")
    if problems:
        raise SystemExit("cannot start training:\n  " + "\n  ".join(problems))


def resolve_args(args) -> tuple[argparse.Namespace, dict]:
    """Fill defaults: positional form, the synthetic main job, backup dir, teacher paths."""
    if args.positional:
        if len(args.positional) > 3:
            raise SystemExit("at most three positional arguments: DATACFG MODELCFG INITWEIGHTS")
        for key, value in zip(("datacfg", "modelcfg", "initweightfile"), args.positional):
            setattr(args, key, value)
    quick = args.datacfg is None
    if quick:
        args.datacfg = str(ensure_synthetic_dataset(quiet=args.quiet))
        for key, value in QUICK.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.modelcfg = args.modelcfg or repo_path(DEFAULT_MODELCFG)
    if args.initweightfile is None:
        args.initweightfile = repo_path(DEFAULT_INITWEIGHTS)
    if str(args.initweightfile).lower() == "none":
        args.initweightfile = None
    if args.eval_every is None:
        args.eval_every = 10
    if args.pretrain_num_epochs is None:
        args.pretrain_num_epochs = 15
    if not Path(args.datacfg).is_file():
        raise SystemExit(f"cannot start training: data cfg not found: {args.datacfg}")
    opts = utils.read_data_cfg(args.datacfg, resolve_paths=True)
    name = opts.get("name", Path(args.datacfg).stem)
    if args.backupdir is None:
        args.backupdir = opts.get("backup", f"backup/{name}")
        if quick:
            args.backupdir = f"backup/synthetic/{name}"
    if args.teacher_cfg == DEFAULT_TEACHER_CFG:
        args.teacher_cfg = repo_path(DEFAULT_TEACHER_CFG)
    if args.teacher_weights is None:
        args.teacher_weights = f"backup/{name}/model_backup.weights"
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    return args, opts


def build_model(cfg: str, weights, device, channels_last: bool, until_last: bool = True) -> Darknet:
    model = Darknet(cfg)
    if weights:
        (model.load_weights_until_last if until_last else model.load_weights)(weights)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------------

def train_one_epoch(model, loader, optimizer, loss_fn, state: dict, cfg: dict, device, epoch: int,
                    teacher=None, amp: bool = False, channels_last: bool = False, start_batch: int = 0,
                    max_batches=None, progress: bool = True, log_every: int = 0, rank: int = 0, world: int = 1):
    """Train over one epoch's batches; updates `state` (seen, iteration, costs) in place.

    Raises NonFiniteLoss naming the batch when the loss is NaN or inf, before the step.
    Returns {'batches', 'images' (this rank), 'loss' (mean batch loss), 'lr', 'seconds'}.
    """
    t0 = time.perf_counter()
    n_batches = n_images = 0
    loss_sum, lr = 0.0, float("nan")
    model.train()
    if teacher is not None:
        teacher.eval()  # spec §8.2: the teacher's BN uses running statistics
    it = iter(loader)
    bar = None
    total = loader.batch_sampler.num_batches  # the whole epoch, also when resuming mid-epoch
    if progress and rank == 0:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, CI); the epoch line still prints
        bar = tqdm(total=total, initial=start_batch, desc=f"epoch {epoch}", unit="batch", leave=False, disable=None)
    for b, (images, target) in enumerate(it, start=start_batch):
        if max_batches is not None and b >= max_batches:
            break
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = target.to(device)
        # BN running statistics change in the forward pass: keep them so that a Ctrl-C during this
        # batch leaves the model exactly as after the previous one (resume then redoes the batch).
        buffers = [(buf, buf.clone()) for buf in model.buffers()]
        try:
            loss, stats, lr = _train_step(model, images, target, optimizer, loss_fn, state, cfg, device, epoch, b,
                                          teacher, amp)
        except KeyboardInterrupt:
            with torch.no_grad():
                for buf, saved in buffers:
                    buf.copy_(saved)
            raise
        n_batches, n_images, loss_sum = n_batches + 1, n_images + len(images), loss_sum + stats["total"]
        state["seen"] += len(images) * world
        state["iteration"] += 1
        state["batch_in_epoch"] = b + 1
        state["costs"]["training_iters"].append(state["seen"])
        state["costs"]["training_losses"].append(stats["total"])
        if bar is not None:
            bar.set_postfix_str(f"lr {lr:.1e} x {stats['loss_x']:.2f} y {stats['loss_y']:.2f} "
                                f"conf {stats['loss_conf']:.2f} recall {stats['nCorrect']}/{stats['nGT']}")
            bar.update(1)
        if log_every and rank == 0 and state["iteration"] % log_every == 0:
            print(loss_fn.format_stats(stats, state["seen"]), flush=True)
    if bar is not None:
        bar.close()
    return {"batches": n_batches, "images": n_images, "loss": loss_sum / max(n_batches, 1), "lr": lr,
            "seconds": time.perf_counter() - t0}


NO_SCALER = torch.amp.GradScaler("cpu", enabled=False)


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it (no loss scaling needed), else fp16 (with a GradScaler)."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def _train_step(model, images, target, optimizer, loss_fn, state, cfg, device, epoch, batch_index, teacher, amp):
    """One SGD step on one batch; returns (loss, stats, lr). NonFiniteLoss before the step.

    amp: autocast on CUDA in bf16 where the GPU has it (no loss scaling needed), else fp16 with
    the GradScaler `cfg['scaler']` (not checkpointed; it re-calibrates in a few steps).
    """
    lr = learning_rate(state["iteration"], cfg["learning_rate"], cfg["steps"], cfg["scales"], cfg["step_unit"])
    set_lr(optimizer, lr, cfg["batch"])
    use_amp = amp and device.type == "cuda"
    dtype = amp_dtype(device) if use_amp else torch.float32
    scaler = cfg.get("scaler") or NO_SCALER
    with torch.autocast(device.type, dtype=dtype if use_amp else None, enabled=use_amp):
        output = model(images)
        teacher_output = None
        if teacher is not None:
            with torch.no_grad():
                teacher_output = teacher(images).float()
    loss, stats = loss_fn(output.float(), target, epoch, teacher_output)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {batch_index} "
                            f"(images seen {state['seen']}); terms: {stats}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, stats, lr


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main(args) -> dict:
    args, opts = resolve_args(args)
    device = resolve_device(args.device)
    rank, world, device = setup_distributed(device)
    check_inputs(args, opts)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    backup = Path(args.backupdir)
    if rank == 0:
        backup.mkdir(parents=True, exist_ok=True)

    model = build_model(args.modelcfg, args.initweightfile, device, args.channels_last)
    model.seen = 0  # spec §7.3
    net = model.net
    batch = args.batch_size or int(net["batch"])
    epochs = args.epochs if args.epochs is not None else int(model.max_epochs)
    loss_fn = RegionLoss.from_region(model.region, model.num_keypoints, scales=args.loss_scales,
                                     pretrain_num_epochs=args.pretrain_num_epochs)
    teacher = None
    if args.distiled:
        teacher = build_model(args.teacher_cfg, args.teacher_weights, device, args.channels_last, until_last=False)
        teacher.requires_grad_(False)
        loss_fn.kd_mode, loss_fn.kd_alpha = args.kd_mode, args.kd_alpha
        size = args.train_size or 416
        with torch.no_grad():  # refuse a teacher of another grid or keypoint count before training starts
            probe = torch.zeros(1, 3, size, size, device=device)
            loss_fn.check_teacher(model.eval()(probe), teacher.eval()(probe))

    train_set = dataset.listDataset(opts["train"], train=True, seed=args.seed, resample=args.resample,
                                    bg_dir=args.bg_dir, num_keypoints=model.num_keypoints)
    test_size = args.test_size or None
    test_shape = (test_size, test_size) if test_size else (model.test_width, model.test_height)
    test_set = dataset.listDataset(opts["valid"], train=False, shape=test_shape, resample=args.resample)
    setup = valid.load_eval_setup(args.datacfg)
    n_samples = len(train_set)
    cfg = {"learning_rate": float(net["learning_rate"]), "steps": list(net["steps"]), "scales": list(net["scales"]),
           "step_unit": n_samples / batch, "batch": batch,  # single-object steps are in epochs (spec §7.2)
           "scaler": torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda"
                                          and amp_dtype(device) == torch.float16)}
    optimizer = build_optimizer(model, cfg["learning_rate"], float(net["momentum"]), float(net["decay"]), batch,
                                bool(args.decay_bn_bias))
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    state = {"epoch": 0, "batch_in_epoch": 0, "seen": 0, "epoch_start_seen": 0, "iteration": 0, "best": -math.inf,
             "costs": {k: [] for k in COST_KEYS}}
    ckpt_path = backup / CHECKPOINT
    if args.resume:
        path = Path(args.resume if args.resume != "auto" else ckpt_path)
        if not path.is_file():
            raise SystemExit(f"--resume: checkpoint not found: {path}")
        ckpt = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
        if rank == 0:
            print(f"resumed from {path}: epoch {state['epoch']}, batch {state['batch_in_epoch']}, seen {state['seen']}")
    elif rank == 0 and not args.quiet:
        model.print_network()

    def save_checkpoint():
        if rank == 0:
            model.seen = state["seen"]
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                               "rng": rng_state(), "args": vars(args)}, ckpt_path)

    def evaluate_and_log(epoch: int):
        summary, _ = valid.evaluate(model, dataset.make_test_loader(test_set, batch_size=8, workers=0),
                                    setup, device, num_keypoints=model.num_keypoints)
        c = state["costs"]
        c["testing_iters"].append(state["seen"])
        c["testing_accuracies"].append(summary["acc_2d"])
        c["testing_errors_pixel"].append(summary["mean_err_2d"])
        c["testing_errors_angle"].append(summary["mean_err_angle"])
        atomic_npz(backup / "costs.npz", **{k: np.asarray(v) for k, v in c.items()})
        row = {"epoch": epoch, "seen": state["seen"], **{k: summary[k] for k in (
            "acc_2d", "acc_add", "acc_adds", "acc_5cm5deg", "acc_corner", "mean_err_2d", "mean_err_add",
            "mean_err_corner", "mean_err_trans", "mean_err_angle", "n", "n_failed")}}
        valid.append_csv(backup / "metrics.csv", row, header=tuple(row))
        with open(backup / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        valid.log(f"epoch {epoch}: 2D {summary['acc_2d']:.2f}%  ADD {summary['acc_add']:.2f}%  "
                  f"5cm5deg {summary['acc_5cm5deg']:.2f}%  mean px err {summary['mean_err_2d']:.2f}")
        if summary["acc_2d"] > state["best"]:  # strictly better only (spec §7.3)
            state["best"] = summary["acc_2d"]
            model.seen = state["seen"]
            model.save_weights(backup / BEST_WEIGHTS)
            valid.log(f"best model so far: {backup / BEST_WEIGHTS}")
        plot_training(c, backup / "training.png")

    try:
        for epoch in range(state["epoch"], epochs):
            if state["batch_in_epoch"] == 0:
                state["epoch_start_seen"] = state["seen"]
            loader = dataset.make_train_loader(
                train_set, batch_size=batch, seed=args.seed, epoch=epoch, seen=state["epoch_start_seen"],
                workers=args.workers, mode="fixed" if args.train_size else "single", fixed_size=args.train_size or 416,
                rank=rank, world_size=world, pin_memory=device.type == "cuda", start_batch=state["batch_in_epoch"])
            info = train_one_epoch(ddp_model, loader, optimizer, loss_fn, state, cfg, device, epoch, teacher,
                                   amp=args.amp, channels_last=args.channels_last, start_batch=state["batch_in_epoch"],
                                   max_batches=args.max_batches, progress=not args.quiet, rank=rank, world=world)
            if rank == 0 and not args.quiet:
                print(f"epoch {epoch + 1}/{epochs}: {info['batches']} batches, lr {info['lr']:.1e}, "
                      f"mean batch loss {info['loss']:.3f}, {info['images'] * world / max(info['seconds'], 1e-9):.1f} "
                      f"images/s", flush=True)
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            if rank == 0 and ((epoch % args.eval_every == 0 and epoch > 0) or epoch == epochs - 1):
                evaluate_and_log(epoch)
            save_checkpoint()
            if world > 1:
                dist.barrier()
    except KeyboardInterrupt:
        save_checkpoint()
        if rank == 0:
            print(f"\ninterrupted: state saved to {ckpt_path}; continue with --resume", file=sys.stderr)
        raise SystemExit(130)
    except NonFiniteLoss as exc:
        if rank == 0:
            print(f"stopping: {exc}\nthe last good checkpoint is kept: {ckpt_path}", file=sys.stderr)
        raise SystemExit(1)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(f"\noutputs in {backup}/: {BEST_WEIGHTS} (best 2-D accuracy {state['best']:.2f}%), {CHECKPOINT}, "
              f"costs.npz, metrics.csv, metrics.jsonl, training.png")
        ts = f" --test-size {args.test_size}" if args.test_size else ""
        print(f"score it with:\n  python valid.py --datacfg {args.datacfg} --modelcfg {args.modelcfg} "
              f"--weightfile {backup / BEST_WEIGHTS}{ts}")
    return state


if __name__ == "__main__":
    main(get_args_parser().parse_args())
