"""The distillation study (docs/design.md §14.4): a teacher, then students without and with KD, every run scored.

    python tools/run_study.py --budget cpu --out runs/study_cpu    # 2 cores: hours; resumable
    python tools/run_study.py --budget gpu --out runs/study_gpu    # one GPU: the fork's protocol
    python tools/run_study.py --budget cpu --out /tmp/s --epochs 1 --max-batches 2 --seeds 0,1 \\
        --images-per-object 12 --fresh-test 4 --train-size 64                  # a smoke run, minutes

Budgets (the flags below override single entries):
  cpu  the fast recipe at 256 px on a synthetic set like the earlier main job's (1 object, 1,360 train / 240 test
       images) plus a fresh test set of 200 images (seed 11). Teacher: Tiny-YOLOv2 pose, its first
       four convolutions from the YOLO-LITE trial 3 VOC backbone (the only ImageNet/VOC features on
       disk; design D53), 45 epochs (55,080 images). Students: YOLO-LITE trial 3 from its VOC
       backbone, `none`, `fork`, `fixed` (--kd-alpha 1, the fork's), `fixed-a0.5` (half ground
       truth) and `fixed-nt` (the neighbour cells regress the teacher too, D66), seeds 0, 1, 2, each
       30 epochs: the same 40,800 training images for every student, distilled or not (a time
       budget gave the distilled ones fewer). Epoch budgets: a busy machine trains the same models,
       only its images/s differ. Trial 10 cells are a second call with the same --out:
       `--students trial10 --modes none,fixed` (or the better fixed of trial 3).
  gpu  the fork's protocol: the original recipe (500 epochs, multi-scale 416, the cfg batch),
       3 synthetic objects with LINEMOD's split sizes (~180 train / ~1,020 test images each), a
       YOLOv2 pose teacher (darknet19 ImageNet backbone if cfg/darknet19_448.conv.23 exists),
       trial 3 and trial 10 students, the three modes, seeds 0, 1, 2. --dataset DIR runs it on a
       LINEMOD-format folder instead (e.g. the real LINEMOD set, tools/get_linemod.sh).

The teacher trains on nine tenths of the training images and is tested, to keep its best weights,
on the held-out tenth (OUT/teacher_data/), never on a test set; students are tested once, at the end.

Every run writes OUT/runs/<run>/<object>/ (train.py's outputs, valid_test.json, valid_fresh.json);
OUT/commands.txt has every command with its seed, OUT/results.{csv,json,md} the rows, the mean and
standard deviation over seeds and the paired differences against `none`, OUT/students.png one
point per seed. The study resumes: a finished run is never redone, a killed one continues from its
checkpoint (`--resume`), so run the same command again after a stop. Each run records its cell
(network, distillation flags, seed, init, budget) in `<run>/run.json`; a call that would train a
run differently, or a budget with other images or epochs, is refused before any training.
--publish DIR copies the small files (commands, results, figures, per-run valid JSON, metrics and
run.json) into DIR (docs/results/cpu), replacing only files an earlier --publish wrote there (DIR's
ssp_manifest.json, design D60). --restore DIR continues a published study in a new --out (a
new machine keeps only those files): every file is checked first (no link out of DIR, each JSON
readable, each run.json the cell its run's name says), then its finished students are copied in and
never trained again;
the teacher trains again, as its weights are not published, and the call says whether it scores as
the published one did; the published commands.txt then lists the restored runs' commands, a line
saying where the study continued, and the commands run since.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import evaluation
import model_loading
from model_loading import NETWORKS
from errors import FlagError, InputError, run_cli
from linemod_format import append_text, atomic_write, check_inside, copy_file, write_text
from ownership import Outputs
from stats import binomial_interval, sampling_error, t_interval

ROOT = Path(__file__).resolve().parents[1]

# A student cell's distillation: none, the fork's channel bug (fork), the right channels (fixed), at the
# fork's --kd-alpha 1 or, with '-a<alpha>', a blend with the ground truth (fixed-a0.5: half and half);
# '-nt': the fast recipe's neighbour cells regress the teacher too (--kd-neighbours teacher, D66), not the GT.
MODES = ("none", "fork", "fixed", "fixed-a0.5", "fixed-nt")
STUDENT_NETWORKS = tuple(k for k in NETWORKS if k != "yolov2")  # YOLOv2 only teaches


def kd_flags(mode: str) -> dict:
    """train.py's distillation flags of a study mode ({} for 'none'): 'fixed-a0.5' -> {kd_mode: 'fixed',
    kd_alpha: 0.5, kd_neighbours: 'gt'}, 'fixed-nt' -> neighbours 'teacher'; alpha 1 and the GT neighbours
    without a suffix."""
    if mode == "none":
        return {}
    kd, *suffixes = mode.split("-")
    alpha, neighbours = 1.0, "gt"
    for suffix in suffixes:
        if suffix == "nt":
            neighbours = "teacher"
        elif suffix.startswith("a"):
            alpha = float(suffix[1:])
        else:
            raise ValueError(f"study mode {mode!r}: unknown suffix {suffix!r}")
    return {"kd_mode": kd, "kd_alpha": alpha, "kd_neighbours": neighbours}


# Tiny-YOLOv2's first four 3x3 convolutions (16, 32, 64, 128 filters, with their max-pools: cfg
# layers 0-7) have the same shapes as YOLO-LITE trial 3's, so its VOC backbone can seed them (D53).
TRIAL3_SEED_LAYERS = 8
DARKNET19 = "cfg/darknet19_448.conv.23"  # the MS recipe's ImageNet backbone, a download


@dataclass(frozen=True)
class Budget:
    """One study protocol. minutes: a time budget (the fast recipe's cosine follows it); epochs: a
    fixed number of epochs (None with minutes). size/batch None: the recipe's own defaults."""
    name: str
    recipe: str
    teacher: str
    teacher_init: str  # 'trial3-seed' (D53), 'darknet19-if-present', 'none' or a weights path
    teacher_minutes: float | None
    teacher_epochs: int | None
    student_minutes: float | None
    student_epochs: int | None
    students: tuple[str, ...]
    modes: tuple[str, ...]
    seeds: tuple[int, ...]
    size: int | None
    batch: int | None
    objects: int
    images: int
    test_fraction: float
    fresh_images: int
    fresh_seed: int
    teacher_eval_every: int
    max_batches: int | None = None


CPU_STUDENT_EPOCHS = 30  # every CPU student trains 40,800 images (1,360 x 30), distilled or not: equal images
CPU_TEACHER_EPOCHS = 45  # 55,080 images (1,224 x 45), about what the 2-hour teacher of the first study saw
BUDGETS = {
    "cpu": Budget(name="cpu", recipe="fast", teacher="tiny", teacher_init="trial3-seed", teacher_minutes=None,
                  teacher_epochs=CPU_TEACHER_EPOCHS, student_minutes=None, student_epochs=CPU_STUDENT_EPOCHS,
                  students=("trial3",),
                  modes=MODES, seeds=(0, 1, 2), size=256, batch=8, objects=1, images=1600, test_fraction=0.15,
                  fresh_images=200, fresh_seed=11, teacher_eval_every=3),
    "gpu": Budget(name="gpu", recipe="original", teacher="yolov2", teacher_init="darknet19-if-present",
                  teacher_minutes=None, teacher_epochs=500, student_minutes=None, student_epochs=500,
                  students=("trial3", "trial10"), modes=MODES[:3], seeds=(0, 1, 2), size=None, batch=None, objects=3,
                  images=1200, test_fraction=0.85, fresh_images=200, fresh_seed=11, teacher_eval_every=10),
}
STUDENT_EVAL_EVERY = 10**6  # students are tested once, at the end: no model is picked on the test split
ROW_METRICS = ("acc_2d", "acc_2d_10px", "acc_add", "acc_5cm5deg", "mean_err_2d", "mean_err_corner", "images_per_s")
STAT_METRICS = ("acc_2d", "acc_2d_10px", "acc_add", "mean_err_corner")
ACCURACY_METRICS = ("acc_2d", "acc_2d_10px", "acc_add", "acc_5cm5deg")  # each a share of n test objects
RUN_SELECTION = ("students", "modes", "seeds")  # budget entries that only choose runs: may differ between calls


# --------------------------------------------------------------------------------------------
# arguments and the budget
# --------------------------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__)
    p.add_argument("--budget", choices=sorted(BUDGETS), default=None, help="the protocol (default cpu)")
    p.add_argument("--reduced", action="store_true", help="the same as --budget cpu")
    cli.add_out(p, what="the study's", why="runs/study_<budget>")
    p.add_argument("--dataset", default=None, metavar="DIR",
                   help="a LINEMOD-format folder with cfg/*.data to use instead of generating the synthetic set")
    cli.add_alias(p, "--data", "--dataset")  # --data is a .data file everywhere else
    p.add_argument("--students", default=None, help=f"comma list of {','.join(STUDENT_NETWORKS)}")
    p.add_argument("--modes", default=None, help=f"comma list of {','.join(MODES)}")
    p.add_argument("--seeds", default=None, help="comma list of student seeds (default 0,1,2)")
    p.add_argument("--teacher-minutes", type=float, default=None,
                   help="train the teacher for this many minutes (default: the budget's epochs)")
    p.add_argument("--student-minutes", type=float, default=None,
                   help="train each student for this many minutes (default: the budget's epochs)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to train: every run, teacher and students (default: the budget's)")
    p.add_argument("--max-batches", type=int, default=None, help="stop each epoch after N batches: smoke runs")
    cli.add_num_objects(p, what="synthetic objects", why="the budget's 'objects'")
    p.add_argument("--images-per-object", type=int, default=None,
                   help="images per object: synthetic images (default: the budget's)")
    p.add_argument("--fresh-test", type=int, default=None, metavar="N",
                   help="fresh test images per object: the fresh set every run is scored on too (default: the "
                        "budget's)")
    cli.add_alias(p, "--fresh-images", "--fresh-test")  # the generator's name for the same number
    cli.add_sizes(p, train=True, test=False, train_what="of every run, trained and scored", train_why="the budget's")
    cli.add_batch_size(p, what="of every training run", why="the budget's")
    p.add_argument("--teacher-weights", default=None,
                   help="the teacher's weights: use these (the budget's teacher cfg) instead of training the teacher")
    cli.add_device(p)
    cli.add_workers(p, default=None, what="of every run's loader", why="train.py's")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    p.add_argument("--publish", default=None, metavar="DIR", help="copy the results into DIR: the small result files")
    p.add_argument("--restore", default=None, metavar="DIR",
                   help="continue a study published with --publish DIR (e.g. on a new machine): its finished "
                        "student runs are copied into --out and never trained again; the teacher trains again, "
                        "its weights are not published")
    return p


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise FlagError(f"{flag} {text!r}: expected a comma list of integers") from None
    if not values:
        raise FlagError(f"{flag} {text!r}: empty")
    return values


def _name_list(flag: str, text: str, allowed) -> tuple[str, ...]:
    values = tuple(v for v in text.split(",") if v)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise FlagError(f"{flag} {text!r}: unknown {bad or 'empty list'}; choose from {', '.join(allowed)}")
    return values


def resolve_budget(args) -> Budget:
    """The budget named by --budget (or --reduced), with the override flags applied and checked."""
    if args.reduced and args.budget not in (None, "cpu"):
        raise FlagError(f"--reduced is --budget cpu; it cannot be combined with --budget {args.budget}")
    b = BUDGETS[args.budget or "cpu"]
    changes = {}
    if args.students is not None:
        changes["students"] = _name_list("--students", args.students, STUDENT_NETWORKS)
    if args.modes is not None:
        changes["modes"] = _name_list("--modes", args.modes, MODES)
    neighbour_modes = [m for m in changes.get("modes", b.modes) if kd_flags(m).get("kd_neighbours", "gt") != "gt"]
    if neighbour_modes and b.recipe != "fast":
        raise FlagError(f"--modes {','.join(neighbour_modes)}: the neighbour cells are the fast recipe's; "
                        f"budget {b.name!r} trains the {b.recipe} recipe")
    if args.seeds is not None:
        changes["seeds"] = _int_list("--seeds", args.seeds)
    for flag, key in (("teacher_minutes", "teacher_minutes"), ("student_minutes", "student_minutes")):
        if getattr(args, flag) is not None:
            if not getattr(args, flag) > 0:
                raise FlagError(f"--{flag.replace('_', '-')} must be positive, found {getattr(args, flag)}")
            changes[key] = getattr(args, flag)
            changes[key.replace("minutes", "epochs")] = None
    if args.epochs is not None:
        cli.check_positive("--epochs", args.epochs)
        changes.update(teacher_epochs=args.epochs, student_epochs=args.epochs, teacher_minutes=None,
                       student_minutes=None)
    for flag, key in (("max_batches", "max_batches"), ("num_objects", "objects"), ("images_per_object", "images"),
                      ("fresh_test", "fresh_images"), ("batch_size", "batch")):
        if getattr(args, flag) is not None:
            cli.check_positive(f"--{flag.replace('_', '-')}", getattr(args, flag))
            changes[key] = getattr(args, flag)
    if args.train_size is not None:
        cli.check_size("--train-size", args.train_size)
        changes["size"] = args.train_size
    return dataclasses.replace(b, **changes)


# --------------------------------------------------------------------------------------------
# the study folder: its budget, its data, its runs
# --------------------------------------------------------------------------------------------

def claim_folder(out: Path, b: Budget, data: str | None) -> None:
    """Record the budget in OUT/study.json, or refuse a folder that holds runs of another budget.

    Which students, modes and seeds run may change between calls (each run stands alone: a later
    call can add seeds); every other entry of the budget must be the same.
    """
    path = out / "study.json"
    mine = {"budget": dataclasses.asdict(b), "data": data}
    if path.is_file():
        theirs = read_json(path, dict)
        diff = budget_differences(theirs, b, data)
        if diff:
            name = theirs["budget"].get("name") if isinstance(theirs.get("budget"), dict) else None
            raise InputError(f"{out} holds the runs of another budget ({name!r}, "
                             f"this is {b.name!r}); use another --out. Differences: " + "; ".join(diff))
        return
    stale = [p for p in (out / "runs", out / "results.json") if p.exists()]
    if stale:
        raise InputError(f"{out} holds study runs without a study.json ({stale[0]}): they are of an unknown budget; "
                         f"use another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(mine, indent=1) + "\n")


def budget_differences(study: dict, b: Budget, data: str | None) -> list[str]:
    """What differs between a study.json's budget and data and this call's, selection entries aside."""
    old, new = study.get("budget"), json.loads(json.dumps(dataclasses.asdict(b)))
    old = old if isinstance(old, dict) else {}
    diff = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in new.items()
            if k not in RUN_SELECTION and old.get(k) != v]
    if study.get("data") != data:
        diff.append(f"data: {study.get('data')!r} there, {data!r} now")
    return diff


PUBLISHED_RUN_FILES = ("valid_test.json", "valid_fresh.json", "metrics.jsonl", "run.json")  # publish, restore
RESTORED_COMMANDS = "restored_commands.txt"  # the commands.txt of the study --restore continued


def restore_published(out: Path, source: Path, b: Budget, data: str | None, objects: dict[str, Path]) -> list[str]:
    """Continue a study that `--publish` copied out (a new machine keeps only the published files):
    each finished student run of SOURCE is copied into OUT/runs and marked done, so the plan never
    trains it again and the report covers it. A run OUT already holds is kept as it is. The teacher
    is not restored: its model.weights is not published, so it trains again (the same data, seed and
    epochs give the same model on the same kind of machine; `compare_teacher` says whether it did).
    Returns the restored runs' names. Every file is checked before anything is copied (InputError
    naming the file): a SOURCE of another budget or without a study.json, a symbolic link out of
    SOURCE, a valid JSON, metrics.jsonl or run.json that does not read as one, a run.json of
    another cell than its run's name says."""
    study_file = source / "study.json"
    if not study_file.is_file():
        raise InputError(f"--restore {source}: no study.json there (not a folder written by --publish)")
    check_inside(study_file, source, f"--restore {source}")
    diff = budget_differences(read_json(study_file, dict), b, data)
    if diff:
        raise InputError(f"--restore {source}: a study of another budget; differences: " + "; ".join(diff))
    copies, restored = [], []
    for run_dir in sorted(p for p in (source / "runs").glob("*") if p.is_dir() and p.name != "teacher"):
        run_name = parse_run_name(run_dir.name)
        if run_name is None:
            warnings.warn(f"{run_dir}: not a student run of this study (<network>-<mode>-s<seed>); not restored",
                          stacklevel=2)
            continue
        for obj, datacfg in objects.items():
            src, dest = run_dir / obj, out / "runs" / run_dir.name / obj
            needed = [f"valid_{split}.json" for split in splits_of(datacfg, b)] + ["metrics.jsonl"]
            if dest.exists() or not all((src / name).is_file() for name in needed):
                continue
            run = Run(run_dir.name, *run_name, obj, dest)
            names = [name for name in PUBLISHED_RUN_FILES if (src / name).is_file()]
            for name in names:
                check_inside(src / name, source, f"--restore {source}")
                check_published_run_file(src / name, run, b)
            copies += [(src / name, dest / name) for name in names]
            restored.append(run)
    commands = source / "commands.txt"
    if restored and commands.is_file() and not (out / RESTORED_COMMANDS).exists():
        check_inside(commands, source, f"--restore {source}")
        copies.append((commands, out / RESTORED_COMMANDS))  # they ran on the other machine: --publish keeps them
    for src, dest in copies:  # everything checked: now copy
        copy_file(src, dest, within=source)
    for run in restored:
        write_text(run.folder / "done.json", json.dumps({"restored_from": portable(str(source))}) + "\n")
    return [f"{run.run}/{run.obj}" for run in restored]


def parse_run_name(name: str) -> tuple[str, str, int] | None:
    """(network, mode, seed) of a student run's folder name '<network>-<mode>-s<seed>', or None."""
    head, _, seed = name.rpartition("-s")
    network, _, mode = head.partition("-")
    if network in STUDENT_NETWORKS and mode in MODES and seed.isdigit():
        return network, mode, int(seed)
    return None


def read_json(path: Path, kind: type):
    """The JSON value of a published file, of type `kind`; InputError naming the file otherwise."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, kind):
        raise InputError(f"{path}: a JSON {type(value).__name__}, not a {kind.__name__}")
    return value


def check_published_run_file(path: Path, run: Run, b: Budget) -> None:
    """InputError naming `path` unless it reads as what the report needs of it: a valid.py JSON with
    numeric metrics, a metrics.jsonl of JSON rows, a run.json of the cell `run`'s name says."""
    name = path.name
    if name == "metrics.jsonl":
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not readable ({exc})") from None
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: not a JSON metric row ({line[:60]!r})")
        if not lines:
            raise InputError(f"{path}: no metric rows")
    elif name == "run.json":
        theirs = read_json(path, dict)
        mine = cell_of(run, b, NETWORKS[run.network][1])
        diff = [f"{k}: {theirs.get(k)!r} there, {v!r} for {run.run}" for k, v in mine.items() if theirs.get(k) != v]
        if diff:
            raise InputError(f"{path}: not the cell of {run.run} in this budget: {'; '.join(diff)}")
    else:  # valid_<split>.json
        summary = valid_summary(path)
        bad = [k for k in (*ROW_METRICS, "n") if not (summary.get(k) is None or (
            isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool)))]
        if bad:
            raise InputError(f"{path}: not a valid.py --json summary (objects[0] lacks numbers for "
                             f"{', '.join(bad)})")


def compare_teacher(out: Path, source: Path, objects: list[str]) -> list[str]:
    """One line per object: whether the teacher trained here scores as the published one did on the
    test split (the restored distilled students learnt from the published teacher)."""
    lines = []
    for obj in objects:
        mine, theirs = (p / "runs" / "teacher" / obj / "valid_test.json" for p in (out, source))
        if not (mine.is_file() and theirs.is_file()):
            continue
        a, c = (valid_summary(p) for p in (mine, theirs))
        if all(a.get(k) == c.get(k) for k in STAT_METRICS):
            lines.append(f"the teacher of {obj} trained again scores as the published one "
                         f"({a['acc_2d']:.2f} % at 5 px on the test split)")
        else:
            lines.append(f"WARNING: the teacher of {obj} trained again differs from the published one ("
                         + ", ".join(f"{k} {a.get(k)} here, {c.get(k)} there" for k in STAT_METRICS
                                       if a.get(k) != c.get(k))
                         + "): the restored distilled students learnt from the published teacher")
    return lines


def prepare_data(out: Path, b: Budget, data: str | None, commands: Path) -> dict[str, Path]:
    """{object: its .data file}: the synthetic set (generated once in OUT/data) or --dataset's, with a
    fresh test set (`<obj>_fresh<S>.data`) added once to a synthetic set; a folder that is not
    synthetic (real LINEMOD) is scored on its test split only."""
    from synthetic import INFO_FILE, add_fresh_test, auto_workers, generate

    root = Path(data) if data else out / "data"
    if data is None and not (root / "cfg").is_dir():
        print(f"generating the synthetic LINEMOD set in {root} ...", flush=True)
        generate(root, objects=b.objects, images_per_object=b.images, seed=0, test_fraction=b.test_fraction,
                 workers=auto_workers(b.objects * b.images))
        note(commands, f"python tools/make_synthetic_linemod.py --out {portable(str(root))} --num-objects {b.objects} "
                       f"--images-per-object {b.images} --test-fraction {b.test_fraction} --seed 0")
    cfgs = sorted(c for c in (root / "cfg").glob("*.data") if not evaluation.skipped_by_all(c))
    if not cfgs:
        raise InputError(f"{root / 'cfg'}: no object .data files")
    if (root / INFO_FILE).is_file() and not all(fresh_of(c, b).is_file() for c in cfgs):
        print(f"adding a fresh test set (seed {b.fresh_seed}, {b.fresh_images} images per object) ...", flush=True)
        add_fresh_test(root, b.fresh_images, b.fresh_seed, workers=auto_workers(len(cfgs) * b.fresh_images))
        note(commands, f"python tools/make_synthetic_linemod.py --out {portable(str(root))} "
                       f"--fresh-test {b.fresh_images} --fresh-seed {b.fresh_seed}")
    return {c.stem: c for c in cfgs}


VALIDATION_FRACTION = 0.1  # of an object's training images, held out to choose the teacher's weights


def teacher_data(out: Path, datacfg: Path) -> Path:
    """OUT/teacher_data/<obj>.data, written once: the object's `.data` with `train` its training list
    minus a held-out tenth (a permutation of seed 0) and `valid` that tenth. The teacher trains on it,
    and its periodic test, which picks its model.weights, never sees a test image (issue 24); it is
    scored on the test split and the fresh set afterwards like every run."""
    import numpy as np

    import dataset
    from linemod_format import read_data_cfg

    folder = out / "teacher_data"
    dest = folder / f"{datacfg.stem}.data"
    if dest.is_file():
        return dest
    opts = read_data_cfg(datacfg, resolve_paths=True)
    paths = [os.path.abspath(p) for p in dataset.read_list(opts["train"])]
    if len(paths) < 2:
        raise InputError(f"{datacfg}: {len(paths)} training image(s); the teacher needs at least 2 to hold one out")
    order = np.random.default_rng(0).permutation(len(paths))
    k = max(1, round(VALIDATION_FRACTION * len(paths)))
    lists = {"train": sorted(order[k:]), "valid": sorted(order[:k])}
    for key, index in lists.items():
        write_text(folder / f"{datacfg.stem}_{key}.txt", "".join(paths[i] + "\n" for i in index))
    path_keys = ("mesh", "backup", "tr_range")
    lines = [f"{key} = {os.path.abspath(folder / f'{datacfg.stem}_{key}.txt')}" for key in lists]
    lines += [f"{key} = {os.path.abspath(value) if key in path_keys else value}" for key, value in opts.items()
              if key not in lists]
    write_text(dest, "\n".join(lines) + "\n")  # last: its presence means the lists are there
    return dest


def splits_of(datacfg: Path, b: Budget) -> dict[str, Path]:
    """The test lists a run is scored on: {'test': .data, 'fresh': .data if there is a fresh set}."""
    fresh = fresh_of(datacfg, b)
    return {"test": datacfg, **({"fresh": fresh} if fresh.is_file() else {})}


def teacher_init_file(out: Path, b: Budget) -> str | None:
    """The teacher's init weights: for 'trial3-seed', OUT/init/tiny-from-trial3-voc.conv.8 written
    once from the trial 3 VOC backbone (D53)."""
    if b.teacher_init == "none":
        return None
    if b.teacher_init == "darknet19-if-present":
        return DARKNET19 if (ROOT / DARKNET19).is_file() else None
    if b.teacher_init != "trial3-seed":
        return b.teacher_init
    path = out / "init" / f"tiny-from-trial3-voc.conv.{TRIAL3_SEED_LAYERS}"
    if not path.is_file():
        from darknet import Darknet

        cfg, weights = NETWORKS["trial3"]
        donor = Darknet(str(ROOT / cfg))
        donor.load_weights_until_last(str(ROOT / weights))
        path.parent.mkdir(parents=True, exist_ok=True)
        donor.save_weights(path, cutoff=TRIAL3_SEED_LAYERS)
    return str(path)


@dataclass(frozen=True)
class Run:
    """One training run of the study on one object."""
    run: str      # 'teacher' or '<network>-<mode>-s<seed>'
    network: str
    kd: str
    seed: int
    obj: str
    folder: Path

    @property
    def cfg(self) -> str:
        return NETWORKS[self.network][0]


def plan_runs(out: Path, b: Budget, objects: list[str]) -> list[Run]:
    """The teacher, then for each seed the students none, fork, fixed (the order they train in)."""
    runs = [Run("teacher", b.teacher, "none", 0, o, out / "runs" / "teacher" / o) for o in objects]
    for seed in b.seeds:
        for net in b.students:
            for mode in b.modes:
                name = f"{net}-{mode}-s{seed}"
                runs += [Run(name, net, mode, seed, o, out / "runs" / name / o) for o in objects]
    return runs


def report_runs(out: Path, b: Budget, objects: list[str], planned: list[Run]) -> tuple[list[Run], Budget]:
    """The runs a report covers: this call's and every finished run that earlier calls made in the
    folder with other students, modes or seeds (a study in several calls gets one table), in plan
    order; and the budget with the selection they make up."""
    seeds = set(b.seeds)
    for d in (out / "runs").glob("*-s*"):
        tail = d.name.rsplit("-s", 1)[1]
        if tail.isdigit():
            seeds.add(int(tail))
    full = dataclasses.replace(b, students=STUDENT_NETWORKS, modes=MODES, seeds=tuple(sorted(seeds)))
    mine = {(r.run, r.obj) for r in planned}
    runs = [r for r in plan_runs(out, full, objects)
            if (r.run, r.obj) in mine or (state(r) == "done" and (r.folder / "valid_test.json").is_file())]
    students = [r for r in runs if r.run != "teacher"]
    chosen = dataclasses.replace(b, students=tuple(dict.fromkeys(r.network for r in students)),
                                 modes=tuple(m for m in MODES if any(r.kd == m for r in students)),
                                 seeds=tuple(sorted({r.seed for r in students})))
    return runs, chosen


def state(run: Run) -> str:
    """'done' (trained and scored... or trained), 'failed', 'killed' (a checkpoint to resume), 'new'."""
    if (run.folder / "done.json").is_file():
        return "done"
    if (run.folder / "failed.json").is_file():
        return "failed"
    if (run.folder / "checkpoint.pt").is_file():
        return "killed"
    return "new"


def teacher_weights_for(runs: list[Run], obj: str, given: str | None) -> str:
    if given:
        return given
    return str(next(r for r in runs if r.run == "teacher" and r.obj == obj).folder / "model.weights")


def cell_of(run: Run, b: Budget, init: str | None) -> dict:
    """What makes a run's model: its network, distillation flags, seed, init weights and budget.
    Written to `<run>/run.json` when it starts; a later call that would train it otherwise is refused."""
    is_teacher = run.run == "teacher"
    kd = kd_flags(run.kd)
    return {"run": run.run, "cfg": run.cfg, "seed": run.seed, "init": init and portable(str(init)), **kd,
            "epochs": b.teacher_epochs if is_teacher else b.student_epochs,
            "minutes": b.teacher_minutes if is_teacher else b.student_minutes}


def check_cells(runs: list[Run], b: Budget, inits: dict[str, str | None]) -> None:
    """Before any training: every run folder made by an earlier call holds the same cell (run.json),
    else InputError naming the run and the difference (a folder made with other cells or images)."""
    problems = []
    for run in runs:
        path = run.folder / "run.json"
        if path.is_file():
            theirs, mine = read_json(path, dict), cell_of(run, b, inits[run.run])
            diff = [f"{k}: {theirs.get(k)!r} there, {v!r} now" for k, v in mine.items() if theirs.get(k) != v]
            if diff:
                problems.append(f"{run.folder}: " + "; ".join(diff))
    if problems:
        raise InputError("the study folder holds runs made with other cells; use another --out:\n  "
                         + "\n  ".join(problems))


def check_teachers(runs: list[Run], b: Budget, given: str | None, retry: bool) -> None:
    """Before any training: a distilled student needs a teacher that exists or will be trained."""
    if not any(r.kd != "none" for r in runs):
        return
    teacher_cfg = NETWORKS[b.teacher][0]
    if given:
        if not Path(given).is_file():
            raise InputError(f"--teacher-weights {given}: file not found")
        model_loading.check_weights(model_loading.check_model_cfg(str(ROOT / teacher_cfg)), teacher_cfg, given)
        return
    for t in (r for r in runs if r.run == "teacher"):
        s = state(t)
        if s == "failed" and not retry:
            info = read_json(t.folder / "failed.json", dict)
            raise InputError(f"the teacher run {t.folder} failed (exit {info.get('exit')}; see {info.get('log')}), "
                             f"so its distilled students cannot train. Fix the cause and rerun with --retry-failed, "
                             f"or give --teacher-weights")
        if s == "done" and not (t.folder / "model.weights").is_file():
            raise InputError(f"the teacher run {t.folder} is finished but its model.weights is missing, "
                             f"so its distilled students cannot train; restore it or give --teacher-weights")


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------

def portable(line: str) -> str:
    """A command line with this machine's interpreter and checkout paths removed."""
    return line.replace(sys.executable, "python").replace(str(ROOT) + "/", "")


def note(commands: Path, line: str) -> None:
    append_text(commands, portable(line) + "\n")  # the new file replaces the old (design D60)


class RunFailed(Exception):
    def __init__(self, code: int, line: str):
        super().__init__(f"exit {code}: {line}")
        self.code = code


def execute(cmd: list[str], log: Path, commands: Path) -> None:
    """Run a command from the repository root, logging the command line and its output."""
    line = " ".join(shlex.quote(c) for c in cmd)
    note(commands, line)
    print(f"$ {portable(line)}", flush=True)
    # the run's output streams into its log as it comes (a log for people, the one file appended in
    # place: a torn last line after a crash is tolerated; design D60), then it is fsync'd
    with open(log, "a") as f:
        f.write(f"\n$ {line}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
        os.fsync(f.fileno())
    if proc.returncode:
        raise RunFailed(proc.returncode, line)


def train_command(run: Run, b: Budget, datacfg: Path, args, init: str | None, teacher: str | None,
                  resume: bool, overwrite: bool) -> list[str]:
    is_teacher = run.run == "teacher"
    minutes = b.teacher_minutes if is_teacher else b.student_minutes
    epochs = b.teacher_epochs if is_teacher else b.student_epochs
    cmd = [sys.executable, "train.py", "--datacfg", str(datacfg), "--modelcfg", run.cfg,
           "--initweightfile", init or "none", "--recipe", b.recipe, "--backupdir", str(run.folder),
           "--seed", str(run.seed), "--device", args.device, "--quiet",
           "--eval-every", str(b.teacher_eval_every if is_teacher else STUDENT_EVAL_EVERY)]
    cmd += ["--minutes", f"{minutes:g}"] if minutes else ["--epochs", str(epochs)]
    if b.size:
        cmd += ["--train-size", str(b.size), "--test-size", str(b.size)]
    if b.batch:
        cmd += ["--batch-size", str(b.batch)]
    if b.max_batches:
        cmd += ["--max-batches", str(b.max_batches)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if b.recipe == "original" and epochs is not None and epochs < 20:  # smoke runs: reach the confidence term
        cmd += ["--pretrain_num_epochs", str(max(-1, min(epochs // 5, epochs - 2)))]
    if is_teacher and "fresh" in splits_of(datacfg, b):
        cmd += ["--also-valid", str(fresh_of(datacfg, b))]
    if kd := kd_flags(run.kd):
        cmd += ["--distiled", "1", "--kd-mode", kd["kd_mode"], "--kd-alpha", f"{kd['kd_alpha']:g}",
                "--kd-neighbours", kd["kd_neighbours"], "--teacher-cfg", NETWORKS[b.teacher][0],
                "--teacher-weights", teacher]
    if resume:
        cmd += ["--resume"]
    elif overwrite:
        cmd += ["--overwrite"]
    return cmd


def fresh_of(datacfg: Path, b: Budget) -> Path:
    return datacfg.with_name(f"{datacfg.stem}_fresh{b.fresh_seed}.data")


def valid_command(run: Run, datacfg: Path, b: Budget, split: str, args) -> list[str]:
    cmd = [sys.executable, "valid.py", "--datacfg", str(datacfg), "--modelcfg", run.cfg,
           "--weightfile", str(run.folder / "model.weights"), "--device", args.device,
           "--json", str(run.folder / f"valid_{split}.json"), "--quiet"]
    if b.size:
        cmd += ["--test-size", str(b.size)]
    return cmd


def train_and_score(run: Run, b: Budget, datacfg: Path, args, init: str | None, teacher: str | None,
                    log: Path, commands: Path, train_datacfg: Path | None = None) -> None:
    """Train the run (or continue it) unless done, then score it on both splits unless scored.
    train_datacfg: the `.data` it trains on when not `datacfg` (the teacher's, `teacher_data`)."""
    s = state(run)
    if s == "failed":
        (run.folder / "failed.json").unlink()  # --retry-failed (check_teachers refused it otherwise)
        s = "killed" if (run.folder / "checkpoint.pt").is_file() else "new"
    if s != "done":
        if s == "new":
            write_text(run.folder / "run.json", json.dumps(cell_of(run, b, init), indent=1) + "\n")
        overwrite = run.folder.is_dir() and any(p.name != "run.json" for p in run.folder.iterdir())
        cmd = train_command(run, b, train_datacfg or datacfg, args, init, teacher, resume=s == "killed",
                            overwrite=overwrite)
        try:
            execute(cmd, log, commands)
        except RunFailed as exc:
            if exc.code == 130:  # Ctrl-C or SIGTERM: train.py saved its checkpoint
                raise InputError(f"interrupted during {run.folder}; run the same command again to continue") from None
            run.folder.mkdir(parents=True, exist_ok=True)
            write_text(run.folder / "failed.json", json.dumps({"exit": exc.code, "log": str(log)}) + "\n")
            what = "the teacher" if run.run == "teacher" else run.run
            raise InputError(f"{what} failed on {run.obj} (exit {exc.code}); see {log}. Nothing after it ran; "
                             f"rerun with --retry-failed once fixed") from None
        write_text(run.folder / "done.json", json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    for split, cfg in splits_of(datacfg, b).items():
        if not (run.folder / f"valid_{split}.json").is_file():
            try:
                execute(valid_command(run, cfg, b, split, args), log, commands)
            except RunFailed as exc:
                raise InputError(f"scoring {run.folder} on {cfg} failed (exit {exc.code}); see {log}") from None


# --------------------------------------------------------------------------------------------
# rows and statistics
# --------------------------------------------------------------------------------------------

def verdict(mean: float, spread: float | None, sampling: float | None, lower_is_better: bool) -> str:
    """'better' / 'worse' only when the mean difference clears both the seed spread (the larger
    standard deviation over seeds of the two groups) and the sampling error of the test sets (for an
    accuracy; None for a mean error, whose per-image spread the summaries do not keep); else
    'no measurable effect'. Without a spread (fewer than 2 seeds) there is never an effect."""
    if spread is None or not math.isfinite(mean) or abs(mean) <= spread:
        return "no measurable effect"
    if sampling is not None and abs(mean) <= sampling:
        return "no measurable effect"
    return "better" if (mean < 0) == lower_is_better else "worse"


def valid_summary(path: Path) -> dict:
    """The (first) object's summary of a `valid.py --json` file (InputError naming it when it is not one)."""
    objects = read_json(path, dict).get("objects")
    if not (isinstance(objects, list) and objects and isinstance(objects[0], dict)):
        raise InputError(f"{path}: not a valid.py --json file (no 'objects' list)")
    return objects[0]


def run_row(run: Run, split: str) -> dict:
    """One row: the run's valid.py scores on one split, and its training throughput."""
    summary = valid_summary(run.folder / f"valid_{split}.json")
    kd = kd_flags(run.kd)
    row = {"run": run.run, "network": run.network, "kd": run.kd, "kd_alpha": kd.get("kd_alpha", 0.0),
           "kd_neighbours": kd.get("kd_neighbours"),
           "seed": run.seed, "object": run.obj, "split": split,
           **{k: summary.get(k) for k in ROW_METRICS}, "n": summary.get("n")}
    for k in ACCURACY_METRICS:  # the 95 % interval of each accuracy for its number of test objects
        if row.get(k) is not None and row["n"]:
            row[f"{k}_ci95"] = list(binomial_interval(row[k], row["n"]))
    metrics = run.folder / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    try:
        last = json.loads(lines[-1]) if lines else {}
    except ValueError:
        raise InputError(f"{metrics}:{len(lines)}: not a JSON metric row ({lines[-1][:60]!r})") from None
    if not isinstance(last, dict):
        raise InputError(f"{metrics}:{len(lines)}: not a JSON metric row ({lines[-1][:60]!r})")
    seen, minutes = last.get("seen"), last.get("minutes")
    row.update(train_images=seen, train_minutes=minutes,
               train_images_per_s=seen / (60 * minutes) if seen and minutes else None)
    return row


def mean_rows(rows: list[dict]) -> list[dict]:
    """Per run and split, the mean over objects as a row with object 'mean' (appended after them)."""
    out = []
    keys = dict.fromkeys((r["run"], r["split"]) for r in rows)
    for run, split in keys:
        group = [r for r in rows if r["run"] == run and r["split"] == split]
        mean = {k: group[0].get(k) for k in ("run", "network", "kd", "kd_alpha", "kd_neighbours", "seed")}
        mean.update(object="mean", split=split, n=sum(r.get("n") or 0 for r in group) or None)
        for k in (*ROW_METRICS, "train_images", "train_minutes", "train_images_per_s"):
            vals = [r[k] for r in group if r[k] is not None]
            mean[k] = sum(vals) / len(vals) if vals else None
        out += group + ([mean] if len(group) > 1 else [dict(group[0], object="mean")])
    return out


def group_stats(rows: list[dict], metric: str) -> list[dict]:
    """Mean and sample standard deviation over seeds of each (split, network, kd) group of students.

    rows: the 'mean' rows (one per run and split). Returns one dict per group, in first-seen order:
    {split, network, kd, metric, n, mean, std (None for n < 2), values (by seed)}.
    """
    groups: dict = {}
    for r in rows:
        if r["object"] == "mean" and r["run"] != "teacher" and r[metric] is not None:
            groups.setdefault((r["split"], r["network"], r["kd"]), {})[r["seed"]] = r[metric]
    out = []
    for (split, network, kd), by_seed in groups.items():
        values = [by_seed[s] for s in sorted(by_seed)]
        out.append({"split": split, "network": network, "kd": kd, "metric": metric, "n": len(values),
                    "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                    "values": {str(s): by_seed[s] for s in sorted(by_seed)}})
    return out


def paired_differences(rows: list[dict], metric: str) -> list[dict]:
    """Each distilled group minus `none` of the same network, seed by seed (paired).

    Returns {split, network, kd, metric, n, diffs (by seed), mean, std, ci95 (the t interval of the
    mean difference across seeds, None for < 2 seeds), spread (the larger std over seeds of the two
    groups), sampling (`sampling_error` of the two groups' mean accuracies for their test sizes;
    None for mean errors or rows without n), verdict (`verdict`)}.
    """
    stats = {(g["split"], g["network"], g["kd"]): g for g in group_stats(rows, metric)}
    sizes = {(r["split"], r["network"], r["kd"]): r.get("n") for r in rows
             if r["object"] == "mean" and r["run"] != "teacher" and r.get("n")}
    lower_is_better = metric.startswith("mean_err")
    out = []
    for (split, network, kd), g in stats.items():
        base = stats.get((split, network, "none"))
        if kd == "none" or base is None:
            continue
        seeds = [s for s in g["values"] if s in base["values"]]
        diffs = {s: g["values"][s] - base["values"][s] for s in seeds}
        d = list(diffs.values())
        mean = statistics.fmean(d) if d else math.nan
        std = statistics.stdev(d) if len(d) > 1 else None
        spread = (max(g["std"], base["std"]) if g["std"] is not None and base["std"] is not None else None)
        n_g, n_b = sizes.get((split, network, kd)), sizes.get((split, network, "none"))
        sampling = (sampling_error(g["mean"], n_g, base["mean"], n_b)
                    if metric in ACCURACY_METRICS and n_g and n_b else None)
        out.append({"split": split, "network": network, "kd": kd, "metric": metric, "n": len(d), "diffs": diffs,
                    "mean": mean, "std": std, "ci95": t_interval(d), "spread": spread, "sampling": sampling,
                    "verdict": verdict(mean, spread, sampling, lower_is_better)})
    return out


# --------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------

def _fmt(v, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _cell(row: dict, key: str) -> str:
    """One cell of the every-run table: an accuracy with its 95 % interval, a count, or a number."""
    if key == "train_images":
        return _fmt(row[key], 0)
    ci = row.get(f"{key}_ci95")
    return _fmt(row[key]) + (f" {_interval(ci)}" if ci and row[key] is not None else "")


def _interval(ci, digits: int = 1) -> str:
    """'[lo, hi]', or '' for no interval."""
    return "" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def write_reports(out: Path, rows: list[dict], b: Budget) -> dict:
    stats = [g for m in STAT_METRICS for g in group_stats(rows, m)]
    paired = [d for m in STAT_METRICS for d in paired_differences(rows, m)]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(out / "results.csv", buf.getvalue())
    payload = {"budget": dataclasses.asdict(b), "rows": rows, "stats": stats, "paired": paired}
    write_text(out / "results.json", json.dumps(payload, indent=1) + "\n")
    write_text(out / "results.md", markdown(rows, stats, paired, b))
    print(f"results: {out / 'results.md'}")
    return payload


SUMMARY_COLUMNS = (("test", "acc_2d", "test 2D 5 px %"), ("test", "acc_2d_10px", "test 2D 10 px %"),
                   ("fresh", "acc_2d", "fresh 2D 5 px %"), ("fresh", "acc_2d_10px", "fresh 2D 10 px %"),
                   ("test", "acc_add", "test ADD %"), ("test", "train_images", "training images"))


def summary_table(rows: list[dict]) -> str:
    """The README's results table: one line per network and mode (the teacher first), each cell the
    mean ± sample std over seeds of the 'mean' rows (a single run: its value)."""
    means = [r for r in rows if r["object"] == "mean"]
    groups = list(dict.fromkeys((r["run"] == "teacher", r["network"], r["kd"]) for r in means))
    groups.sort(key=lambda g: not g[0])  # the teacher first, then the students in run order
    lines = ["| network | distillation | seeds | " + " | ".join(c[2] for c in SUMMARY_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(SUMMARY_COLUMNS)]
    for is_teacher, network, kd in groups:
        group = [r for r in means if (r["run"] == "teacher", r["network"], r["kd"]) == (is_teacher, network, kd)]
        cells = []
        for split, metric, _ in SUMMARY_COLUMNS:
            vals = [r[metric] for r in group if r["split"] == split and r[metric] is not None]
            if metric == "train_images":  # a count: equal over seeds under an epoch budget
                cells.append(" / ".join(f"{v:,}" for v in dict.fromkeys(vals)))
            else:
                cells.append("" if not vals else f"{statistics.fmean(vals):.1f}" if len(vals) == 1
                             else f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f}")
        seeds = sorted({r["seed"] for r in group})
        name = f"{network} (teacher)" if is_teacher else network
        lines.append(f"| {name} | {kd} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PAIRED_COLUMNS = (("test", "acc_2d", "test 5 px"), ("test", "acc_2d_10px", "test 10 px"),
                  ("fresh", "acc_2d", "fresh 5 px"), ("fresh", "acc_2d_10px", "fresh 10 px"),
                  ("test", "acc_add", "test ADD"))


def paired_table(paired: list[dict]) -> str:
    """docs/results.md's table of paired differences against `none`: one line per network and mode,
    each cell 'mean [95 % t interval across seeds] ±sampling error' in points (no interval for one
    seed), and the verdicts of its columns (one word when they agree)."""
    by_key = {(d["network"], d["kd"], d["split"], d["metric"]): d for d in paired}
    groups = list(dict.fromkeys((d["network"], d["kd"]) for d in paired))
    lines = ["| network | mode | seeds | " + " | ".join(c[2] for c in PAIRED_COLUMNS) + " | verdict (every column) |",
             "|---|---|---|" + "---|" * (len(PAIRED_COLUMNS) + 1)]
    for network, kd in groups:
        cells, verdicts, seeds = [], [], []
        for split, metric, _ in PAIRED_COLUMNS:
            d = by_key.get((network, kd, split, metric))
            if d is None:
                cells.append("")
                continue
            seeds = seeds or list(d["diffs"])
            ci = d["ci95"]
            cells.append(f"{d['mean']:+.1f}" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")
                         + (f" ±{d['sampling']:.1f}" if d["sampling"] is not None else ""))
            verdicts.append(d["verdict"])
        lines.append(f"| {network} | {kd} | {', '.join(map(str, seeds))} | " + " | ".join(cells)
                     + f" | {', '.join(dict.fromkeys(verdicts))} |")
    return "\n".join(lines) + "\n"


def markdown(rows, stats, paired, b: Budget) -> str:
    cols = ("acc_2d", "acc_2d_10px", "acc_add", "mean_err_corner", "train_images", "train_images_per_s")
    head = ("| run | split | n | 2D 5 px % [95 %] | 2D 10 px % [95 %] | ADD % [95 %] | mean corner err px "
            "| training images | training images/s |\n|---|---|---|---|---|---|---|---|---|")
    # the runs' own training minutes (a call that only rebuilds the reports trains nothing)
    minutes = sum(r["train_minutes"] or 0 for r in rows if r["object"] != "mean" and r["split"] == "test")
    shared = ("" if b.student_minutes else " Under an epoch budget the machine may have been shared (the model is "
              "the same), so training images/s here is not a speed: benchmarks/bench_train.py measures it alone.")
    lines = [f"Budget `{b.name}`: {dataclasses.asdict(b)}; training time of all runs {minutes:.1f} min.{shared}", "",
             "### Summary (mean ± std over seeds)", "", summary_table(rows),
             "### Every run (mean over objects)", "", head]
    lines += [f"| {r['run']} | {r['split']} | {_fmt(r.get('n'))} | " + " | ".join(_cell(r, k) for k in cols) + " |"
              for r in rows if r["object"] == "mean"]
    lines += ["", "### Mean and standard deviation over seeds", "",
              "| split | network | kd | metric | n | mean | std | per seed |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {g['split']} | {g['network']} | {g['kd']} | {g['metric']} | {g['n']} | {_fmt(g['mean'])} | "
              f"{_fmt(g['std'])} | {', '.join(_fmt(v) for v in g['values'].values())} |" for g in stats]
    lines += ["", "### Paired differences against `none` (same seed), in points", "", paired_table(paired),
              "### Paired differences against `none` (same seed), every metric", "",
              "| split | network | kd | metric | mean diff | 95 % interval (seeds) | per seed | seed spread "
              "| sampling error | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {d['split']} | {d['network']} | {d['kd']} | {d['metric']} | {_fmt(d['mean'])} | "
              f"{_interval(d['ci95'], 2)} | "
              f"{', '.join(_fmt(v) for v in d['diffs'].values())} | {_fmt(d['spread'])} | {_fmt(d['sampling'])} | "
              f"{d['verdict']} |" for d in paired]
    return "\n".join(lines) + "\n"


def plot_students(out: Path, rows: list[dict]) -> Path:
    """OUT/students.png: 2-D accuracy at 5 and 10 px per student and mode, one point per seed,
    test split and fresh set side by side; the teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [r for r in rows if r["object"] == "mean"]
    groups = list(dict.fromkeys((r["network"], r["kd"]) for r in means if r["run"] != "teacher"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, metric, title in zip(axes, ("acc_2d", "acc_2d_10px"), ("2-D accuracy at 5 px", "2-D accuracy at 10 px")):
        for k, (split, marker, dx) in enumerate((("test", "o", -0.12), ("fresh", "s", 0.12))):
            for i, (net, kd) in enumerate(groups):
                ys = [r[metric] for r in means if (r["network"], r["kd"], r["split"]) == (net, kd, split)]
                ax.plot([i + dx] * len(ys), ys, marker, color=f"C{k}", alpha=0.8,
                        label=("test split" if split == "test" else "fresh set") if i == 0 else None)
            teacher = [r[metric] for r in means if r["run"] == "teacher" and r["split"] == split]
            if teacher:
                ax.axhline(teacher[0], color=f"C{k}", ls="--", lw=1, label=f"teacher, {split}")
        ax.set_xticks(range(len(groups)), [f"{n}\n{kd}" for n, kd in groups])
        ax.set(title=title, ylabel="% of test images", ylim=(-2, 102))
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "students.png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return path


def published_commands(out: Path) -> str:
    """Every command of the study in the order it ran: those of the runs `--restore` copied in (they
    ran on another machine), then a line saying so, then the commands run in OUT."""
    here = (out / "commands.txt").read_text() if (out / "commands.txt").is_file() else ""
    if not (out / RESTORED_COMMANDS).is_file():
        return here
    return ((out / RESTORED_COMMANDS).read_text()
            + "# continued on another machine with --restore: the restored runs above were copied in, not run "
              "again; the commands below ran on the new machine\n" + here)


PUBLISH_TOOL, PUBLISH_GROUP = "run_study.py", "publish"  # its files in DIR's manifest (ownership.py)
PUBLISHED_STUDY_FILES = ("study.json", "results.csv", "results.json", "results.md", "students.png",
                         "teacher_curve.png")


def publish(out: Path, dest: Path, runs: list[Run]) -> None:
    """Copy the small result files into dest (per-run valid JSON and metrics under dest/runs), with
    this checkout's paths made relative (`portable`), as in commands.txt.

    dest may hold other files: a file this --publish would write is replaced only when an earlier
    --publish wrote it and nobody changed it since (dest's ssp_manifest.json, design D60); any other
    is refused, naming every file, before anything is written. Files an earlier --publish wrote that
    this one no longer writes are removed."""
    texts: dict[str, str] = {"commands.txt": published_commands(out)}
    copies = {name: out / name for name in PUBLISHED_STUDY_FILES if (out / name).is_file()}
    for run in runs:
        for name in PUBLISHED_RUN_FILES:  # text files; valid.py's JSON names its weights by absolute path
            if (run.folder / name).is_file():
                texts[f"runs/{run.run}/{run.obj}/{name}"] = portable((run.folder / name).read_text())
    outputs = Outputs(dest, PUBLISH_TOOL)
    outputs.plan([dest / rel for rel in [*copies, *texts]], PUBLISH_GROUP)
    inputs = list(copies.values()) + [r.folder / name for r in runs for name in PUBLISHED_RUN_FILES]
    outputs.check(overwrite=True, inputs=inputs)
    with outputs.writing({"study": portable(str(out))}):
        for rel, src in copies.items():
            copy_file(src, dest / rel)
        for rel, text in texts.items():
            write_text(dest / rel, text)
    print(f"published: {dest}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main(args) -> list[dict]:
    b = resolve_budget(args)
    cli.resolve_device(args.device)  # a bad device stops here, not in the first run
    out = Path(args.out or f"runs/study_{b.name}").resolve()
    data = str(Path(args.dataset).resolve()) if args.dataset else None
    if data and not (Path(data) / "cfg").is_dir():
        raise InputError(f"--dataset {args.dataset}: no cfg/ folder with .data files there")
    claim_folder(out, b, data)
    commands, log = out / "commands.txt", out / "log.txt"
    objects = prepare_data(out, b, data, commands)
    if args.restore:
        restored = restore_published(out, Path(args.restore), b, data, objects)
        print(f"restored from {args.restore}: {len(restored)} finished runs" + (f" ({', '.join(restored)})"
                                                                                 if restored else ""), flush=True)
    runs = plan_runs(out, b, list(objects))
    check_teachers(runs, b, args.teacher_weights, args.retry_failed)
    if args.teacher_weights:
        runs = [r for r in runs if r.run != "teacher"]
    init_teacher = teacher_init_file(out, b) if any(r.run == "teacher" for r in runs) else None
    inits = {r.run: init_teacher if r.run == "teacher" else NETWORKS[r.network][1] for r in runs}
    check_cells(runs, b, inits)
    for run in runs:
        init = inits[run.run]
        if run.run == "teacher":
            teacher = None
        else:
            teacher = teacher_weights_for(runs, run.obj, args.teacher_weights) if run.kd != "none" else None
        train_on = teacher_data(out, objects[run.obj]) if run.run == "teacher" else None
        train_and_score(run, b, objects[run.obj], args, init, teacher, log, commands, train_on)
    if args.restore:
        for line in compare_teacher(out, Path(args.restore), list(objects)):
            print(line, flush=True)
    runs, b_report = report_runs(out, b, list(objects), runs)
    rows = mean_rows([run_row(r, split) for r in runs for split in splits_of(objects[r.obj], b)])
    payload = write_reports(out, rows, b_report)
    plot_students(out, rows)
    teacher_metrics = [r.folder / "metrics.jsonl" for r in runs if r.run == "teacher"]
    if teacher_metrics and teacher_metrics[0].is_file():
        from tools import plot_curve

        plot_curve.plot(plot_curve.series(plot_curve.read_rows(teacher_metrics[0])), out / "teacher_curve.png",
                        title=f"teacher ({b.teacher}) on {runs[0].obj}, tested on the held-out tenth of its images")
    if args.publish:
        publish(out, Path(args.publish), runs)
    return payload["rows"]


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)))
