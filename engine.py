"""The training driver shared by train.py and train_multi.py (in the shape of torchvision's engine.py).

One loop for every script: epochs (or a time budget), batches with a non-finite-loss check, a
Ctrl-C that leaves the model exactly as after the last finished batch, evaluation through a
callback, the strict best-model rule, atomic checkpoints that `torch.load(weights_only=True)`
reads, resume, and the refusal to mix two runs in one folder. The scripts build the model, the
data, the loss and the evaluation; `Trainer.fit` runs them.

Reading order: `TrainState` and the checkpoint functions, then `Trainer.train_one_epoch`, then
`Trainer.fit`.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

import cli
import errors
from errors import CheckpointError, InputError, OverwriteError
from linemod_format import append_text, atomic_write, write_text
from model_info import INFO_FILE

CHECKPOINT, BEST_WEIGHTS, LAST_WEIGHTS = "checkpoint.pt", "model.weights", "last.weights"
CHECKPOINT_FORMAT = 2  # 1: the pickled checkpoints of earlier versions, refused (they need unpickling)
METRICS_FILES = ("metrics.csv", "metrics.jsonl")
RUN_FILES = (CHECKPOINT, BEST_WEIGHTS, LAST_WEIGHTS, "costs.npz", "training.png", *METRICS_FILES, INFO_FILE)
# room a checkpoint needs besides the model: optimiser moments, EMA copy, logs (a generous factor)
CHECKPOINT_SIZE_FACTOR = 4
MIN_FREE_BYTES = 8 << 20
LOCK_FILE = "run.lock"  # the backup folder's owner: one run at a time (design D60)
MAX_PID = 2**31 - 1  # pid_t is a signed 32-bit integer (Linux allows at most 2**22)
MAX_COUNT = 2**53  # a checkpoint's counters (epoch, images seen, ...) stay below it: exact as floats


NonFiniteLoss = errors.NonFiniteLoss  # the loss became NaN or inf; the message names the epoch and the batch


def new_state(cost_keys) -> dict:
    """The training state: plain Python values only, so that checkpoints load without unpickling code."""
    return {"epoch": 0, "batch_in_epoch": 0, "seen": 0, "epoch_start_seen": 0, "iteration": 0,
            "best": -math.inf, "best_score": None, "train_seconds": 0.0, "evaluations": 0,
            "last_evaluated": None, "pending": None, "costs": {k: [] for k in cost_keys}}


# --------------------------------------------------------------------------------------------
# Atomic files and random states
# --------------------------------------------------------------------------------------------

def atomic_torch_save(obj, path) -> None:
    """torch.save `obj` to `path` atomically (the old file stays whole when the write fails).

    torch.save reports a failed write of its zip writer (a full disk: ENOSPC) as a RuntimeError
    ("unexpected pos ...") whose context is the OSError; that becomes the OSError again, naming
    the file and the space left, so that run_cli prints one line (status 1)."""
    try:
        # a Ctrl-C inside torch.save leaves its zip writer broken, and the RuntimeError of its
        # clean-up replaces the KeyboardInterrupt: the signal waits until the file is whole
        with errors.deferred_interrupts(), atomic_write(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as exc:
        cause = os_error_behind(exc)
        if cause is None:
            raise
        try:
            free = f"{shutil.disk_usage(Path(path).parent).free / 1e6:.1f} MB free"
        except OSError:
            free = "free space unknown"
        raise OSError(cause.errno, f"{cause.strerror or 'write failed'} ({free}; the previous file is kept)",
                      str(path)) from None


def os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError (with an errno) in the chain of causes and contexts of `exc`, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_npz(path, **arrays) -> None:
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def rng_state() -> dict:
    """Every random state as tensors and lists (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": [int(version), list(py_state), gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


# --------------------------------------------------------------------------------------------
# Run identity, checkpoints and the backup folder
# --------------------------------------------------------------------------------------------

def file_digest(path) -> str:
    """sha256 of a file's bytes (a cfg is identified by its content, not its path)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def run_identity(modelcfg, datacfg, batch: int, recipe: str, **extra) -> dict:
    """What a checkpoint must share with the run that resumes it."""
    return {"modelcfg": f"{Path(modelcfg).name} ({file_digest(modelcfg)})",
            "datacfg": str(Path(datacfg).resolve()), "batch": int(batch), "recipe": recipe,
            **{k: v for k, v in extra.items()}}


def load_checkpoint(path, device="cpu") -> dict:
    """Read a checkpoint without running any code from it.

    Raises CheckpointError naming the file when it is missing, truncated, of another format,
    or would need unpickling (an older version's checkpoint, or a crafted file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused: the file holds objects that only unpickling could build "
                              f"(an older version's checkpoint, or not one of ours); nothing was run. ({first})") \
            from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or another kind of file): {exc}") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format", "none") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: checkpoint format {found}; this version reads format {CHECKPOINT_FORMAT}")
    missing = [k for k in ("model", "optimizer", "state", "rng", "run") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    wrong = [k for k in ("model", "optimizer", "state", "rng", "run") if not isinstance(ckpt[k], dict)]
    if wrong:
        raise CheckpointError(f"{path}: refused: {', '.join(wrong)} not a mapping (a damaged or edited checkpoint)")
    return ckpt


STATE_COUNTERS = ("epoch", "batch_in_epoch", "seen", "epoch_start_seen", "iteration", "evaluations")


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def state_problem(state, cost_keys) -> str | None:
    """What is out of range in a checkpoint's training state (`new_state`'s keys), or None.

    Counters are integers in [0, 2**53); `epoch_start_seen` <= `seen`; `train_seconds` finite and
    >= 0; `best` a number, `best_score` None or a list of finite numbers; `last_evaluated` None
    or an epoch; `pending` None or {'epoch', 'last', 'due'}; `costs` the lists of `cost_keys`."""
    if not isinstance(state, dict):
        return f"the training state is a {type(state).__name__}, not a mapping"
    for key in STATE_COUNTERS:
        if not _count(state.get(key)):
            return f"state {key} = {state.get(key)!r} (an integer from 0 below 2**53 expected)"
    if state["epoch_start_seen"] > state["seen"]:
        return f"state epoch_start_seen {state['epoch_start_seen']} > seen {state['seen']}"
    seconds = state.get("train_seconds")
    if not (_number(seconds) and math.isfinite(seconds) and seconds >= 0):
        return f"state train_seconds = {seconds!r} (a finite number >= 0 expected)"
    if not _number(state.get("best")) or state["best"] == math.inf:
        return f"state best = {state.get('best')!r} (a number expected)"
    best_score = state.get("best_score")
    if best_score is not None and not (isinstance(best_score, list) and best_score
                                       and all(_number(v) and math.isfinite(v) for v in best_score)):
        return f"state best_score = {best_score!r} (None or a list of finite numbers expected)"
    if state.get("last_evaluated") is not None and not _count(state["last_evaluated"]):
        return f"state last_evaluated = {state['last_evaluated']!r} (None or an epoch expected)"
    pending = state.get("pending")
    if pending is not None and not (isinstance(pending, dict) and _count(pending.get("epoch"))
                                    and isinstance(pending.get("last"), bool) and isinstance(pending.get("due"), bool)):
        return f"state pending = {pending!r} (None or {{'epoch', 'last', 'due'}} expected)"
    costs = state.get("costs")
    if not isinstance(costs, dict) or sorted(costs) != sorted(cost_keys):
        found = sorted(costs) if isinstance(costs, dict) else type(costs).__name__
        return f"state costs hold {found}, expected {sorted(cost_keys)}"
    for key, values in costs.items():
        if not (isinstance(values, list) and all(_number(v) for v in values)):
            return f"state costs[{key!r}] is not a list of numbers"
    return None


OPTIMIZER_NUMBERS = ("lr", "weight_decay", "momentum", "dampening", "eps", "initial_lr")


def optimizer_problem(saved) -> str | None:
    """What is out of range in an optimiser's state_dict (its hyper-parameters finite and >= 0, Adam's
    betas in [0, 1), its state tensors finite), or None."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return "the optimiser state has no parameter groups"
    for i, group in enumerate(groups):
        for key in OPTIMIZER_NUMBERS:
            value = group.get(key)
            if key in group and not (_number(value) and math.isfinite(value) and value >= 0):
                return f"optimiser group {i}: {key} = {value!r} (a finite number >= 0 expected)"
        betas = group.get("betas")
        if betas is not None and not (isinstance(betas, (list, tuple)) and len(betas) == 2
                                      and all(_number(b) and 0 <= b < 1 for b in betas)):
            return f"optimiser group {i}: betas = {betas!r} (two numbers in [0, 1) expected)"
    return tensors_problem(saved.get("state"), "optimiser")


def tensors_problem(tree, what: str) -> str | None:
    """The first non-finite floating-point tensor in a (nested) state dict, named, or None."""
    stack = [("", tree)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return f"the {what} tensor {name} holds NaN or inf"
    return None


def run_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two run identities."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def process_start(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks after boot, /proc/<pid>/stat field 22), or None
    where that cannot be read; with the pid it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after the command name, which may hold blanks
    return fields[19] if len(fields) > 19 else None


def lock_owner_alive(owner: dict) -> bool:
    """Is the process that wrote a lock still running? A lock of another machine counts as alive."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= MAX_PID:
        return False  # no process has that pid (a hand-edited or corrupt lock)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process: it exists
        pass
    start = owner.get("start")
    return start is None or process_start(pid) in (None, start)


_HELD_LOCKS: set[Path] = set()


def lock_backup(backup: Path) -> Path:
    """Hold the backup folder for this process: `run.lock` holds its pid, host and start time.

    A lock of a running process refuses the run (OverwriteError naming the lock and its owner);
    a stale one (its process has ended) is taken over with a line saying so; one this process
    left (an earlier run in the same Python session) is taken over silently. The lock file is
    created complete in one step (a hard link of a written file), so a reader never sees it half
    written. Released by `release_backup` at the end of `Trainer.fit`, or at exit.
    """
    backup = Path(backup)
    path = backup / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = backup / f".{LOCK_FILE}.{os.getpid()}.tmp"
    write_text(tmp, json.dumps(me) + "\n")
    try:
        while True:
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                pass
            try:
                owner = json.loads(path.read_text())
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (OSError, ValueError):
                owner = {}
            if not isinstance(owner, dict):
                owner = {}
            mine = owner.get("pid") == me["pid"] and owner.get("host") == me["host"]
            if not mine and lock_owner_alive(owner):
                raise OverwriteError(
                    f"{backup}: in use by another run (pid {owner.get('pid')} on {owner.get('host')}, since "
                    f"{owner.get('since')}; lock {path}); wait for it to end or choose another --backupdir "
                    f"(if that run is over, remove {path})")
            if not mine:
                log(f"{path}: taking over a stale lock: pid {owner.get('pid', '?')} (since {owner.get('since', '?')}) "
                    f"is no longer running")
            path.unlink(missing_ok=True)
    finally:
        with contextlib.suppress(OSError):  # the clean-up must not hide the error that got us here
            tmp.unlink(missing_ok=True)
    if not _HELD_LOCKS:
        atexit.register(release_all_backups)
    _HELD_LOCKS.add(path)
    return path


def release_backup(backup: Path) -> None:
    """Remove this process's lock of `backup` (a lock another process took over is left alone)."""
    path = Path(backup) / LOCK_FILE
    if path not in _HELD_LOCKS:
        return
    _HELD_LOCKS.discard(path)
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(owner, dict) and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def release_all_backups() -> None:
    for path in list(_HELD_LOCKS):
        release_backup(path.parent)


def prepare_backup(backup: Path, resume: bool, overwrite: bool, need_bytes: int = 0) -> None:
    """Check the output folder before any work: a folder, writable, with room; no other run in it.

    The folder is locked for this run first (`lock_backup`: two runs at once are refused). A
    folder that already holds a run is refused unless resuming or told to overwrite (then the
    old run's files are removed, so that logs of two runs never mix). The folder itself is checked
    as every output folder is (`cli.check_output_dir`: OutputPathError naming --backupdir).
    """
    cli.check_output_dir("--backupdir", backup)
    lock_backup(backup)
    try:
        free = shutil.disk_usage(backup).free
        if free < need_bytes + MIN_FREE_BYTES:
            raise InputError(f"{backup}: {free / 1e6:.1f} MB free, a checkpoint needs about "
                             f"{(need_bytes + MIN_FREE_BYTES) / 1e6:.1f} MB")
        existing = [f for f in RUN_FILES if (backup / f).exists()]
        if existing and not resume:
            if not overwrite:
                raise InputError(f"{backup}: already holds a run ({', '.join(existing)}); continue it with "
                                 f"--resume, replace it with --overwrite, or choose another --backupdir")
            for f in existing:
                (backup / f).unlink()
    except InputError:
        release_backup(backup)
        raise


def prune_metrics(backup: Path, epoch: int) -> None:
    """Drop metric rows of epochs >= `epoch`: written after the checkpoint a resumed run starts from.

    A torn last line (a copy or a crash that cut the file) is dropped with a warning naming the
    file; any other line that is not a row with an integer epoch is an InputError naming the file
    and the line, before either log is changed."""
    plans = []
    for path, parse in ((backup / METRICS_FILES[1], _jsonl_epoch), (backup / METRICS_FILES[0], None)):
        if not path.is_file():
            continue
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the metric log: {exc}") from None
        first = 0
        if parse is None:  # the CSV: its header names the epoch column
            if not lines or "epoch" not in lines[0].split(","):
                continue
            col = lines[0].split(",").index("epoch")
            parse, first = (lambda ln, col=col: int(ln.split(",")[col])), 1
        kept, torn = lines[:first], False
        for number, line in enumerate(lines[first:], start=first + 1):
            if not line.strip():
                continue
            try:
                row_epoch = parse(line)
            except (ValueError, IndexError, TypeError):
                if number == len(lines):
                    torn = True
                    continue
                raise InputError(f"{path}:{number}: not a metric row ({line[:60]!r}); fix or remove the line, "
                                 f"then --resume again") from None
            if row_epoch < epoch:
                kept.append(line)
        if torn:
            warnings.warn(f"{path}:{len(lines)}: a torn last line (the run stopped while writing it) is dropped",
                          stacklevel=2)
        if kept != lines:
            plans.append((path, kept))
    for path, kept in plans:
        write_text(path, "".join(k + "\n" for k in kept))


def _jsonl_epoch(line: str) -> int:
    """The epoch of one metrics.jsonl row; ValueError when the line is not a row with an integer epoch."""
    row = json.loads(line)
    epoch = row.get("epoch") if isinstance(row, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise ValueError("no integer epoch")
    return epoch


def plain(value):
    """A value reduced to what weights_only checkpoints hold (str, numbers, bool, None, lists, dicts)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


# --------------------------------------------------------------------------------------------
# Distributed
# --------------------------------------------------------------------------------------------

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


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it (no loss scaling needed), else fp16 (with a GradScaler)."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def plot_training(costs: dict, path: Path, accuracy_label: str = "2-D projection accuracy at 5 px (%)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(costs["training_iters"], costs["training_losses"], lw=0.8)
    a.set(xlabel="images seen", ylabel="loss", yscale="log", title="training loss")
    b.plot(costs["testing_iters"], costs["testing_accuracies"], "o-")
    b.set(xlabel="images seen", ylabel=accuracy_label, ylim=(0, 101), title="test accuracy")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------

class Trainer:
    """Runs the epochs of one training run.

    model: the network (a Darknet: `save_weights`, `seen`); net: what the forward pass calls (the
    model, or its DDP wrapper); loss_fn(output, target, epoch, teacher_output) -> (loss, stats);
    schedule: `.lr(state)` and `.apply(optimizer, lr)` (recipes.py); ema: a recipes.ModelEMA or
    None (then the model itself is evaluated and saved); teacher: a frozen model whose outputs
    go to the loss, or None. backup: the output folder; run: `run_identity(...)`; args: a dict
    recorded in the checkpoint. cost_keys: the costs.npz arrays (the original's names).
    """

    def __init__(self, model, optimizer, loss_fn, schedule, *, backup: Path, run: dict, cost_keys, device,
                 net=None, ema=None, teacher=None, amp: bool = False, channels_last: bool = False,
                 rank: int = 0, world: int = 1, progress: bool = True, log_every: int = 0,
                 max_batches: int | None = None, args: dict | None = None):
        self.model, self.net = model, net if net is not None else model
        self.optimizer, self.loss_fn, self.schedule = optimizer, loss_fn, schedule
        self.backup, self.run, self.device = Path(backup), run, device
        self.ema, self.teacher = ema, teacher
        self.amp = amp and device.type == "cuda"
        self.channels_last = channels_last
        self.rank, self.world = rank, world
        self.progress, self.log_every, self.max_batches = progress, log_every, max_batches
        self.args = plain(args or {})
        self.state = new_state(cost_keys)
        self._before_step = None  # a copy of the state while end_epoch runs (what a Ctrl-C saves)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and amp_dtype(device) == torch.float16)

    @property
    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.backup / CHECKPOINT

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        self.model.seen = self.state["seen"]
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                           "optimizer": self.optimizer.state_dict(),
                           "ema": self.ema.state_dict() if self.ema is not None else None,
                           "state": plain(self.state), "rng": rng_state(), "run": plain(self.run),
                           "args": self.args}, self.checkpoint_path())

    def resume(self, path=None, force: bool = False) -> None:
        """Continue from a checkpoint; refuses one of another run (cfg, data, batch, recipe) unless forced."""
        path = Path(path) if path else self.checkpoint_path()
        ckpt = load_checkpoint(path, self.device)
        diffs = run_differences(ckpt["run"], plain(self.run))
        if diffs and not force:
            raise CheckpointError(f"{path}: made by another run; " + "; ".join(diffs)
                                  + " (--force-resume continues anyway)")
        state = ckpt["state"]
        if isinstance(state, dict):
            for key, value in (("train_seconds", 0.0), ("pending", None)):
                state.setdefault(key, value)
        why = state_problem(state, self.state["costs"]) or optimizer_problem(ckpt["optimizer"]) \
            or tensors_problem(ckpt["model"], "model") or tensors_problem(ckpt.get("ema"), "EMA")
        if why:
            raise CheckpointError(f"{path}: refused: {why}; not a state this run could have saved (a damaged or "
                                  f"edited checkpoint)")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.ema is not None and ckpt.get("ema"):
                self.ema.load_state_dict(ckpt["ema"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: does not fit this network or optimiser: {exc}") from None
        saved_rng = rng_state()
        try:
            set_rng_state(ckpt["rng"])
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            set_rng_state(saved_rng)
            raise CheckpointError(f"{path}: refused: its random states cannot be restored ({exc})") from None
        self.state = state
        if self.rank == 0:  # rows of the epoch whose evaluation was interrupted are written again
            pending = self.state["pending"]
            prune_metrics(self.backup, pending["epoch"] if pending else self.state["epoch"])
            print(f"resumed from {path}: epoch {self.state['epoch']}, batch {self.state['batch_in_epoch']}, "
                  f"seen {self.state['seen']}", flush=True)

    # -- one batch, one epoch -------------------------------------------------------------------
    def train_step(self, images, target, epoch: int, batch_index: int):
        """One optimiser step; returns (stats, lr). NonFiniteLoss before the step."""
        lr = self.schedule.lr(self.state)
        self.schedule.apply(self.optimizer, lr)
        dtype = amp_dtype(self.device) if self.amp else None
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
            output = self.net(images)
            teacher_output = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_output = self.teacher(images).float()
        loss, stats = self.loss_fn(output.float(), target, epoch, teacher_output)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {batch_index} "
                                f"(images seen {self.state['seen']}); terms: {stats}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return stats, lr

    def train_one_epoch(self, loader, epoch: int, start_batch: int = 0, stop: Callable[[], bool] = lambda: False):
        """Train over one epoch's batches (from start_batch); stops early when stop() says so.

        Returns {'batches', 'images' (this rank), 'loss' (mean batch loss), 'lr', 'seconds'}.
        """
        t0 = time.perf_counter()
        n_batches = n_images = 0
        loss_sum, lr = 0.0, float("nan")
        self.net.train()
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's BN uses running statistics
        bar = None
        if self.progress and self.rank == 0:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (logs, CI); the epoch line still prints
            bar = tqdm(total=loader.batch_sampler.num_batches, initial=start_batch, desc=f"epoch {epoch}",
                       unit="batch", leave=False, disable=None)
        state = self.state
        t_batch = time.perf_counter()
        for b, (images, target) in enumerate(errors.start_iteration(loader), start=start_batch):
            raise_if_stopped()
            if (self.max_batches is not None and b >= self.max_batches) or stop():
                break
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            target = target.to(self.device)
            # BN running statistics change in the forward pass: keep them so that a Ctrl-C during this
            # batch leaves the model exactly as after the previous one (resume then redoes the batch).
            buffers = [(buf, buf.clone()) for buf in self.model.buffers()]
            try:
                stats, lr = self.train_step(images, target, epoch, b)
            except KeyboardInterrupt:
                with torch.no_grad():
                    for buf, saved in buffers:
                        buf.copy_(saved)
                raise
            now = time.perf_counter()
            state["train_seconds"] += now - t_batch  # loading included: what a time budget pays for
            t_batch = now
            n_batches, n_images, loss_sum = n_batches + 1, n_images + len(images), loss_sum + stats["total"]
            state["seen"] += len(images) * self.world
            state["iteration"] += 1
            state["batch_in_epoch"] = b + 1
            state["costs"]["training_iters"].append(state["seen"])
            state["costs"]["training_losses"].append(stats["total"])
            if bar is not None:
                bar.set_postfix_str(f"lr {lr:.1e} x {stats['loss_x']:.2f} y {stats['loss_y']:.2f} "
                                    f"conf {stats['loss_conf']:.2f} recall {stats['nCorrect']}/{stats['nGT']}")
                bar.update(1)
            if self.log_every and self.rank == 0 and state["iteration"] % self.log_every == 0:
                print(self.loss_fn.format_stats(stats, state["seen"]), flush=True)
        if bar is not None:
            bar.close()
        return {"batches": n_batches, "images": n_images, "loss": loss_sum / max(n_batches, 1), "lr": lr,
                "seconds": time.perf_counter() - t0}

    # -- evaluation -----------------------------------------------------------------------------
    def record_evaluation(self, epoch: int, result: dict, accuracy_key: str = "acc_2d") -> None:
        """Log one evaluation: costs.npz, metrics.csv/jsonl, the best model (strictly better only), plot.

        result: {'row': dict of metric columns, 'costs': {cost key: value}, 'score': the best-model score,
        a number or a tuple compared lexicographically}.
        """
        from linemod_format import append_csv  # the metric CSV writer (one header, rows appended)

        c = self.state["costs"]
        for k, v in result["costs"].items():
            c[k].append(float(v))
        atomic_npz(self.backup / "costs.npz", **{k: np.asarray(v) for k, v in c.items()})
        row = {"epoch": epoch, "seen": self.state["seen"], "minutes": round(self.state["train_seconds"] / 60, 3),
               **result["row"]}
        append_csv(self.backup / METRICS_FILES[0], row, header=tuple(row))  # both logs: a new file replaces the
        append_text(self.backup / METRICS_FILES[1], json.dumps(plain(row)) + "\n")  # old (design D60)
        self.state["evaluations"] += 1
        self.state["last_evaluated"] = epoch
        score = [float(v) for v in (result["score"] if isinstance(result["score"], (tuple, list))
                                    else (result["score"],))]
        best = self.state.get("best_score") or [-math.inf]
        if score > best:  # strictly better only (lexicographic: ties on the first score go to the next)
            self.state["best"], self.state["best_score"] = score[0], score
            model = self.eval_model
            model.seen = self.state["seen"]
            model.save_weights(self.backup / BEST_WEIGHTS)  # atomic
            log(f"best model so far: {self.backup / BEST_WEIGHTS}")
        plot_training(c, self.backup / "training.png")

    # -- the run --------------------------------------------------------------------------------
    def end_epoch(self, epoch: int, last: bool, due: bool, evaluate: Callable, meaningful_from: int) -> None:
        """After epoch `epoch`: the evaluation when `due`, last.weights after the last epoch, the checkpoint.

        The step is marked in the state (`pending`) and a copy of the state is kept first: a Ctrl-C
        inside it saves the state of before the step, with the mark, and `fit` redoes the step on
        --resume (an interrupted final evaluation is never lost)."""
        state = self.state
        state["pending"] = {"epoch": epoch, "last": bool(last), "due": bool(due)}
        self._before_step = copy.deepcopy(state)
        if self.rank == 0 and due:
            if epoch >= meaningful_from:
                t_eval = time.perf_counter()
                result = evaluate(self.eval_model, epoch)
                state["train_seconds"] += time.perf_counter() - t_eval  # a budget pays for tests too
                self.record_evaluation(epoch, result)
            else:
                log(f"epoch {epoch}: evaluation skipped: the confidence term is off until epoch "
                    f"{meaningful_from}, so the most confident cell is arbitrary")
        if last and self.rank == 0:
            self.model.seen = state["seen"]
            self.eval_model.save_weights(self.backup / LAST_WEIGHTS)
        state["pending"] = None
        self._before_step = None
        self.save_checkpoint()

    def nothing_left(self, epochs: int | None, budget_s: float | None) -> str | None:
        """Why a run has nothing left to train (its epochs done, its time budget spent), or None."""
        state = self.state
        if epochs is not None and state["epoch"] >= epochs:
            return f"the checkpoint is at epoch {state['epoch']} and --epochs is {epochs}"
        if budget_s and state["train_seconds"] >= budget_s and state["batch_in_epoch"] == 0:
            return (f"the time budget is spent ({state['train_seconds'] / 60:.1f} of {budget_s / 60:.1f} "
                    f"minutes)")
        return None

    def fit(self, make_loader: Callable[[int, int, int], object], evaluate: Callable[[object, int], dict], *,
            epochs: int | None, budget_s: float | None = None, eval_every: int = 10,
            meaningful_from: int = 0) -> dict:
        """Train until `epochs` or until `budget_s` seconds of training and testing, evaluating along the way.

        make_loader(epoch, seen_before_epoch, start_batch) -> the epoch's loader;
        evaluate(model, epoch) -> {'row', 'costs', 'score'} (see record_evaluation).
        An evaluation runs after epochs e with e % eval_every == 0, e > 0, and after the last one;
        evaluations of epochs before `meaningful_from` are skipped (the confidence term is still
        off there, so the most confident cell is arbitrary). Ctrl-C (or SIGTERM) saves the checkpoint
        and exits with status 130; a non-finite loss exits with status 1 keeping the last good checkpoint.
        A resumed run first redoes an end-of-epoch step that Ctrl-C interrupted (`end_epoch`); one
        with nothing left to train says so and still writes its final files (and evaluates its last
        epoch if that evaluation is missing). The backup folder's lock is released at the end.
        """
        if epochs is None and budget_s is None:
            raise ValueError("fit needs a number of epochs or a time budget")
        state = self.state
        out_of_time = (lambda: state["train_seconds"] >= budget_s) if budget_s else (lambda: False)
        handlers = stop_signals_interrupt()
        quiet_fd_sharing_resets()
        unraisable = sys.unraisablehook
        sys.unraisablehook = dropping_swallowed_interrupts(unraisable)
        try:
            pending = state.get("pending")
            if pending:
                if self.rank == 0:
                    log(f"redoing the end of epoch {pending['epoch']}, which was interrupted"
                        + (" during its evaluation" if pending["due"] else ""))
                self.end_epoch(pending["epoch"], pending["last"], pending["due"], evaluate, meaningful_from)
            why = None if pending and pending["last"] else self.nothing_left(epochs, budget_s)
            if why:
                last_epoch = state["epoch"] - 1
                # an old checkpoint without 'last_evaluated' counts as evaluated
                due = last_epoch >= max(meaningful_from, 0) and state.get("last_evaluated", last_epoch) != last_epoch
                if self.rank == 0:
                    log(f"nothing left to train: {why}; writing the final files"
                        + (f" (and the missing evaluation of epoch {last_epoch})" if due else ""))
                self.end_epoch(last_epoch, True, due, evaluate, meaningful_from)
            done = bool(why) or bool(pending and pending["last"])  # the final files are written
            epoch = state["epoch"]
            while not done and self.nothing_left(epochs, budget_s) is None:
                if state["batch_in_epoch"] == 0:
                    state["epoch_start_seen"] = state["seen"]
                loader = make_loader(epoch, state["epoch_start_seen"], state["batch_in_epoch"])
                info = self.train_one_epoch(loader, epoch, state["batch_in_epoch"], out_of_time)
                last = (epochs is not None and epoch == epochs - 1) or out_of_time()
                if self.rank == 0 and self.progress:
                    total = f"/{epochs}" if epochs is not None else ""
                    spent = f", {state['train_seconds'] / 60:.1f} of {budget_s / 60:.1f} min" if budget_s else ""
                    print(f"epoch {epoch + 1}{total}: {info['batches']} batches, lr {info['lr']:.1e}, "
                          f"mean batch loss {info['loss']:.3f}, "
                          f"{info['images'] * self.world / max(info['seconds'], 1e-9):.1f} images/s{spent}", flush=True)
                state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
                self.end_epoch(epoch, last, (epoch % eval_every == 0 and epoch > 0) or last, evaluate,
                               meaningful_from)
                if not last:
                    raise_if_stopped()
                if self.world > 1:
                    dist.barrier()
                epoch += 1
                if last:
                    break
        except KeyboardInterrupt:
            if self._before_step is not None:  # inside end_epoch: save the state of before it, marked
                self.state = self._before_step
            self.save_checkpoint()  # a second Ctrl-C is ignored from the first on (_interrupt)
            if self.rank == 0:
                print(f"\ninterrupted: state saved to {self.checkpoint_path()}; continue with --resume",
                      file=sys.stderr)
            raise  # errors.run_cli ends the script with status 130; a library caller decides for itself
        except NonFiniteLoss as exc:
            raise NonFiniteLoss(f"{exc}; the last good checkpoint is kept: {self.checkpoint_path()}") from None
        finally:
            # the handlers come back last: a second Ctrl-C during the clean-up stays ignored until it is done
            if self.rank == 0:
                release_backup(self.backup)
            if self.world > 1 and dist.is_initialized():
                dist.destroy_process_group()
            restore_signals(handlers)
            sys.unraisablehook = unraisable
        return self.state


_stop = {"signal": None}  # the stop signal fit received, kept in case Python swallows its KeyboardInterrupt


def _interrupt(signum, frame):
    """The first Ctrl-C (or SIGTERM) stops training; those after it are ignored until `fit` restores
    the handlers, so that a second one cannot break the clean-up (the checkpoint being saved, the
    data-loader workers being stopped) or print a traceback."""
    _stop["signal"] = signum
    errors.ignore_interrupts()
    raise KeyboardInterrupt(f"signal {signum}")


def raise_if_stopped() -> None:
    """Raise the KeyboardInterrupt of a stop signal `fit` received, again.

    A signal handler's exception that lands in a finaliser (a data-loader iterator's __del__), a
    weakref callback or a fork hook is printed as 'Exception ignored' and swallowed: the run went
    on with Ctrl-C ignored. Training checks between batches and epochs, so it stops anyway."""
    if _stop["signal"] is not None:
        raise KeyboardInterrupt(f"signal {_stop['signal']}")


def dropping_swallowed_interrupts(previous: Callable) -> Callable:
    """A sys.unraisablehook for while `fit` runs: the KeyboardInterrupt of a stop signal that Python
    swallowed is not printed (raise_if_stopped raises it where training can save its state);
    everything else goes to `previous`."""
    def hook(unraisable):
        if _stop["signal"] is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            return
        previous(unraisable)

    return hook


def stop_signals_interrupt() -> dict:
    """Make SIGTERM (a `kill`, a scheduler ending the job) and SIGINT act as Ctrl-C during training:
    the checkpoint is saved and `--resume` continues. A process started in the background by a
    non-interactive shell inherits an ignored SIGINT; it is re-enabled here. Returns the old handlers."""
    _stop["signal"] = None
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, _interrupt)
    return old


def _from_fd_sharing(tb) -> bool:
    """Whether a traceback runs through multiprocessing's file-descriptor sharing thread."""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.replace("\\", "/").endswith("multiprocessing/resource_sharer.py"):
            return True
        tb = tb.tb_next
    return False


def _fd_sharing_reset(exc_type, tb) -> bool:
    return issubclass(exc_type, (ConnectionError, EOFError)) and _from_fd_sharing(tb)


def quiet_fd_sharing_resets() -> None:
    """Keep an interrupt's output clean: a loader worker stopped during a tensor hand-over leaves
    multiprocessing's fd-sharing thread with a reset connection, and its traceback used to follow
    a Ctrl-C. That thread catches its own errors and hands them to sys.excepthook (an uncaught one
    would reach threading.excepthook): both drop only its connection errors (a worker that really
    dies is reported by the DataLoader itself); every other error goes to the previous hook.
    Installed once per process."""
    previous_thread, previous_sys = threading.excepthook, sys.excepthook
    if getattr(previous_thread, "quiet_fd_sharing", False):
        return

    def thread_hook(args):
        if not _fd_sharing_reset(args.exc_type, args.exc_traceback):
            previous_thread(args)

    def sys_hook(exc_type, exc, tb):
        if not _fd_sharing_reset(exc_type, tb):
            previous_sys(exc_type, exc, tb)

    thread_hook.quiet_fd_sharing = sys_hook.quiet_fd_sharing = True
    threading.excepthook, sys.excepthook = thread_hook, sys_hook


def restore_signals(handlers: dict) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def log(msg: str) -> None:
    print(msg, flush=True)
