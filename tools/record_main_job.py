"""Record a main-job measurement as one JSON file, and the README's main-job table made from it.

    python tools/record_main_job.py --backupdir backup/synthetic/obj00 --wall-minutes 12.4 \\
        --test-json runs/main_valid_test.json --fresh-json runs/main_valid_fresh11.json \\
        --machine "2-core x86_64, torch 2.13.0+cpu" --out-file docs/results/cpu_fast/main_job.json
    python tools/record_main_job.py --multi --backupdir backup_multi/synthetic --wall-minutes 14.2 \\
        --test-json runs/multi_test.json --fresh-json runs/multi_fresh11.json --fresh-seed 11 \\
        --machine "..." --out-file docs/results/cpu_multi/main_job.json     # train_multi.py, valid_multi.py --json

The record holds what a reader needs to trust a figure: the date and machine, the epochs, images
seen and minutes of training (from the run's own metrics.jsonl and checkpoint), the wall-clock
minutes of `python train.py` (data generation included, install excluded), and the valid.py
summaries on the test split and on a fresh set. `main_job_table(record)` renders the README's
table from it; a test checks that the README holds exactly that table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from errors import FlagError, InputError, run_cli
from linemod_format import write_text
from tools.plot_curve import read_rows

THRESHOLDS = (5, 10, 15, 20, 30)  # px, the valid.py report's lines
KEYS = ("acc_2d", "acc_2d_10px", "acc_2d_15px", "acc_2d_20px", "acc_2d_30px", "acc_add", "acc_5cm5deg",
        "mean_err_2d", "mean_err_corner", "n", "test_size", "box_rule")


def valid_objects(path) -> list[dict]:
    """The per-object summaries of a valid.py (valid_multi.py) --json file; InputError naming the file
    when it is missing, not JSON or has no 'objects' list of summaries."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: valid.py --json file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None
    objects = doc.get("objects") if isinstance(doc, dict) else None
    if not (isinstance(objects, list) and objects and all(isinstance(o, dict) for o in objects)):
        raise InputError(f"{path}: not a valid.py --json file (no 'objects' list of summaries)")
    return objects


def _pick(summary: dict, keys, path) -> dict:
    """`keys` of one object's summary; InputError naming the file and the missing keys."""
    missing = [k for k in keys if k not in summary]
    if missing:
        raise InputError(f"{path}: the summary of {summary.get('object', 'the object')} lacks {', '.join(missing)} "
                         f"(valid.py --json of another version, or the multi-object file without --multi?)")
    return {k: summary[k] for k in keys}


def summary_of(path) -> dict:
    """The first object's summary of a valid.py --json file, reduced to KEYS."""
    return _pick(valid_objects(path)[0], KEYS, path)


def training_of(backup) -> dict:
    """Epochs, images seen and minutes of training and testing from the run's last metrics row
    (InputError naming metrics.jsonl when it is missing or a row is bad: plot_curve.read_rows)."""
    rows = read_rows(Path(backup) / "metrics.jsonl")
    last = rows[-1]
    if not isinstance(last.get("epoch"), int) or "seen" not in last:
        raise InputError(f"{Path(backup) / 'metrics.jsonl'}: its last row has no integer 'epoch' and 'seen'")
    return {"epochs": last["epoch"] + 1, "images_seen": last["seen"], "training_minutes": last["minutes"]}


def main_job_table(record: dict) -> str:
    """The README's markdown table of a record: one row per test set."""
    head = ("| test images | " + " | ".join(f"{t} px" for t in THRESHOLDS)
            + " | ADD (0.1 d) | 5cm5deg | mean 2-D error | mean corner error |")
    lines = [head, "|" + "---|" * (len(THRESHOLDS) + 5)]
    for key, label in (("test", "test split"), ("fresh", f"fresh seed {record['fresh_seed']}")):
        s = record[key]
        accs = [s["acc_2d"]] + [s[f"acc_2d_{t}px"] for t in THRESHOLDS[1:]]
        cells = [f"**{a:.2f} %**" if t in (5, 10) else f"{a:.2f} %" for t, a in zip(THRESHOLDS, accs)]
        lines.append(f"| {label} ({s['n']}) | " + " | ".join(cells)
                     + f" | {s['acc_add']:.2f} % | {s['acc_5cm5deg']:.2f} % | {s['mean_err_2d']:.1f} px | "
                       f"{s['mean_err_corner']:.1f} px |")
    return "\n".join(lines)


MULTI_KEYS = ("object", "n", "thresholds", "acc_px", "acc_add", "acc_5cm5deg", "mean_err_2d", "test_size", "box_rule")


def multi_summaries_of(path) -> list[dict]:
    """Every object's summary of a valid_multi.py --json file, reduced to MULTI_KEYS."""
    return [_pick(s, MULTI_KEYS, path) for s in valid_objects(path)]


def multi_job_table(record: dict, key: str) -> str:
    """The README's markdown table of the multi-object record's `key` set ('test' or 'fresh'): one
    row per object (2-D accuracy at 5 to 50 px, ADD, 5cm5deg) and the unweighted mean."""
    objects = record[key]
    thresholds = objects[0]["thresholds"]
    head = ("| object (test images) | " + " | ".join(f"{t} px" for t in thresholds) + " | ADD (0.1 d) | 5cm5deg |")
    lines = [head, "|" + "---|" * (len(thresholds) + 3)]
    rows = [(f"{o['object']} ({o['n']})", o["acc_px"], o["acc_add"], o["acc_5cm5deg"]) for o in objects]
    mean = lambda values: sum(values) / len(values)
    rows.append(("mean", [mean([o["acc_px"][i] for o in objects]) for i in range(len(thresholds))],
                 mean([o["acc_add"] for o in objects]), mean([o["acc_5cm5deg"] for o in objects])))
    for label, accs, add, pose in rows:
        cells = [f"**{a:.2f} %**" if t in (5, 10) else f"{a:.2f} %" for t, a in zip(thresholds, accs)]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {add:.2f} % | {pose:.2f} % |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0])
    p.add_argument("--multi", action="store_true",
                   help="multi-object mode: the multi-object main job (train_multi.py, valid_multi.py)")
    p.add_argument("--backupdir", required=True, help="a training run's folder: the main job's, read")
    cli.add_alias(p, "--backup", "--backupdir")
    p.add_argument("--wall-minutes", type=float, required=True, help="wall clock of `python train.py`, minutes")
    p.add_argument("--test-json", required=True, help="valid.py (valid_multi.py) --json on the test split")
    p.add_argument("--fresh-json", required=True, help="valid.py (valid_multi.py) --json on a fresh set")
    p.add_argument("--fresh-seed", type=int, required=True, help="seed of the fresh test set: --fresh-json's")
    p.add_argument("--machine", required=True, help="what it ran on, e.g. '2-core x86_64, torch 2.13.0+cpu'")
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"), help="the day it ran (default: today)")
    p.add_argument("--commit", default=None, help="the commit it ran")
    p.add_argument("--command", default=None,
                   help="the command measured, when not the plain main job (e.g. 'python train.py --minutes 120')")
    cli.add_out(p, "file", what="the record, JSON", required=True)
    cli.add_alias(p, "--out", "--out-file")  # --out is an output folder everywhere
    return p


def main(args) -> dict:
    if not (math.isfinite(args.wall_minutes) and args.wall_minutes > 0):
        raise FlagError(f"--wall-minutes {args.wall_minutes}: must be a positive, finite number of minutes")
    if args.fresh_seed < 0:
        raise FlagError(f"--fresh-seed {args.fresh_seed}: must be >= 0")
    if args.multi:
        record = {"date": args.date, "machine": args.machine, "commit": args.commit,
                  "command": args.command or "python multi_obj_pose_estimation/train_multi.py",
                  "wall_minutes": args.wall_minutes,
                  **training_of(args.backupdir), "fresh_seed": args.fresh_seed,
                  "test": multi_summaries_of(args.test_json), "fresh": multi_summaries_of(args.fresh_json)}
        write_text(args.out_file, json.dumps(record, indent=1) + "\n")
        print(multi_job_table(record, "test") + "\n\n" + multi_job_table(record, "fresh"))
        return record
    record = {"date": args.date, "machine": args.machine, "commit": args.commit,
              "command": args.command or "python train.py",
              "wall_minutes": args.wall_minutes, **training_of(args.backupdir), "fresh_seed": args.fresh_seed,
              "test": summary_of(args.test_json), "fresh": summary_of(args.fresh_json)}
    write_text(args.out_file, json.dumps(record, indent=1) + "\n")
    print(main_job_table(record))
    return record


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)), prog="record_main_job.py")
