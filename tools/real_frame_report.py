"""The real-frame table of a model trained from a mesh (design §7.7): per object, the 2-D
projection accuracies at 5, 10 and 20 px and ADD, each with its 95 % Wilson interval over the n
frames, the mean and median 2-D error with the t interval of the mean, the frames with no
detection (the chosen box's confidence under utils.MULTI_CONF_THRESH, the threshold a box must pass
in detect.py), and the frames where the box is on the object (its predicted centroid inside the
ground-truth box's 2-D extent: the right object, whatever pose it gets; the rest are boxes on
something else), as a markdown table, and the mean over the objects.

    cd ../shared/data/real_lmo
    python <repo>/valid.py --datacfg ape.data --modelcfg <cfg> --weightfile <repo>/backup/mesh/ape/model.weights \\
        --json <repo>/runs/real/ape.json --save-predictions <repo>/runs/real
    cd <repo> && python tools/real_frame_report.py runs/real/ape.json runs/real/can.json \\
        --out-file runs/real/table.md --json runs/real/table.json

Each argument is a `valid.py --json` file; its per-frame predictions are read from
`predictions_<object>.npz` beside it (`--predictions-dir DIR` when `--save-predictions` went elsewhere).
"""
from __future__ import annotations

import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli  # noqa: E402
import utils  # noqa: E402
from errors import InputError, OverwriteError, run_cli  # noqa: E402
from linemod_format import write_text  # noqa: E402
from stats import binomial_interval, t_interval  # noqa: E402

PX_THRESHOLDS = (5, 10, 20)  # the three: the aim, and the two accepted levels
NO_DETECTION_CONF = utils.MULTI_CONF_THRESH  # below it a box is not a detection (design §4.2)
FRAME_KEYS = ("err_2d", "err_add", "conf")  # (N,) each
POINT_KEYS = ("gt_px", "pr_px")  # (N, 9, 2) each


def on_object(gt_px: np.ndarray, pr_px: np.ndarray) -> np.ndarray:
    """(N,) bool: the predicted centroid pr_px[:, 0] inside the 2-D extent of the ground-truth
    points gt_px (N, K, 2) pixels: the box is on the right object, whatever its pose (a frame with
    no box, NaN points, is not)."""
    lo, hi = gt_px.min(axis=1), gt_px.max(axis=1)
    centre = pr_px[:, 0]
    return np.all((centre >= lo) & (centre <= hi), axis=1)


def frame_summary(err_2d: np.ndarray, err_add: np.ndarray, conf: np.ndarray, add_threshold: float,
                  found: np.ndarray | None = None) -> dict:
    """The figures of one object's frames, from valid.py's per-frame arrays (N,) each (a miss has
    infinite errors): n; `acc_<t>px` and `acc_add` (% of the n frames, <= threshold as valid.py
    counts) with `<key>_ci95` (Wilson); `mean_err_2d` (over the finite errors), its t interval
    `mean_err_2d_ci95` and `median_err_2d`; `no_detection` (frames) with `no_detection_pct_ci95`;
    with found (N,) bool (on_object), `on_object` (% of the frames) with `on_object_ci95`."""
    n = len(err_2d)
    if n < 1:
        raise ValueError("no frames to summarise")
    row = {"n": n}
    passes = {f"acc_{t}px": err_2d <= t for t in PX_THRESHOLDS}
    passes["acc_add"] = err_add <= add_threshold
    for key, ok in passes.items():
        row[key] = 100.0 * float(np.sum(ok)) / n
        row[f"{key}_ci95"] = list(binomial_interval(row[key], n))
    finite = err_2d[np.isfinite(err_2d)]
    row["mean_err_2d"] = float(finite.mean()) if len(finite) else math.nan
    interval = t_interval(finite)
    row["mean_err_2d_ci95"] = list(interval) if interval else None
    row["median_err_2d"] = float(np.median(finite)) if len(finite) else math.nan
    missed = ~(conf >= NO_DETECTION_CONF)  # a NaN confidence is a miss too
    row["no_detection"] = int(np.sum(missed))
    row["no_detection_pct_ci95"] = list(binomial_interval(100.0 * row["no_detection"] / n, n))
    if found is not None:
        row["on_object"] = 100.0 * float(np.sum(found)) / n
        row["on_object_ci95"] = list(binomial_interval(row["on_object"], n))
    return row


def read_scored(json_path: Path, predictions_dir: Path | None) -> dict:
    """One object's summary from a valid.py --json file and its predictions .npz; InputError
    naming the file for a missing, unreadable or mismatched one."""
    try:
        scored = json.loads(json_path.read_text())
        obj = scored["objects"][0]
        name, n, add_threshold = str(obj["object"]), int(obj["n"]), float(obj["add_threshold"])
    except FileNotFoundError:
        raise InputError(f"{json_path}: valid.py --json file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise InputError(f"{json_path}: not a valid.py --json file ({type(exc).__name__}: {exc})") from None
    npz = (predictions_dir or json_path.parent) / f"predictions_{name}.npz"
    try:
        with np.load(npz) as f:
            arrays = {k: np.asarray(f[k], dtype=np.float64) for k in FRAME_KEYS}
            points = {k: np.asarray(f[k], dtype=np.float64) for k in POINT_KEYS}
    except FileNotFoundError:
        raise InputError(f"{npz}: predictions not found (valid.py --save-predictions of {json_path})") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{npz}: not a valid.py predictions file ({type(exc).__name__}: {exc})") from None
    shapes = [a.shape for a in (*arrays.values(), *points.values())]
    if any(a.shape != (n,) for a in arrays.values()) or any(p.ndim != 3 or p.shape[0] != n or p.shape[2] != 2
                                                            for p in points.values()):
        raise InputError(f"{npz}: arrays of shapes {shapes}; {json_path} scored {n} frames")
    found = on_object(points["gt_px"], points["pr_px"])
    return {"object": name, "json": str(json_path), **frame_summary(**arrays, add_threshold=add_threshold, found=found)}


def mean_row(rows: list[dict]) -> dict:
    """The plain mean over the objects of each accuracy and of the mean 2-D error (the issue's
    acceptance figures are the mean over the objects)."""
    keys = [f"acc_{t}px" for t in PX_THRESHOLDS] + ["acc_add", "mean_err_2d", "on_object"]
    return {"object": "mean", "n": sum(r["n"] for r in rows), **{k: float(np.mean([r[k] for r in rows])) for k in keys},
            "no_detection": sum(r["no_detection"] for r in rows)}


def markdown(rows: list[dict]) -> str:
    """The table: one line per object and the mean; accuracies as `value [lo, hi]`."""
    def acc(r, k):
        ci = r.get(f"{k}_ci95")
        return f"{r[k]:.1f}" + (f" [{ci[0]:.0f}, {ci[1]:.0f}]" if ci else "")

    def err(r):
        ci = r.get("mean_err_2d_ci95")
        median = f", median {r['median_err_2d']:.1f}" if "median_err_2d" in r else ""
        return f"{r['mean_err_2d']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "") + median

    head = (["object", "n"] + [f"2-D {t} px %" for t in PX_THRESHOLDS]
            + ["ADD %", "2-D error px", "no detection", "box on the object %"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["object"], str(r["n"])] + [acc(r, f"acc_{t}px") for t in PX_THRESHOLDS] + [acc(r, "acc_add"), err(r)]
        cells.append(str(r["no_detection"]) + (f" of {r['n']}" if r["object"] != "mean" else ""))
        cells.append(acc(r, "on_object"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def get_args_parser():
    p = cli.default_argument_parser(__doc__)
    p.add_argument("scored", nargs="+", type=Path, metavar="JSON", help="valid.py --json files, one per object")
    p.add_argument("--predictions-dir", type=Path, default=None, metavar="DIR",
                   help="the folder of valid.py --save-predictions (default: each JSON file's folder)")
    cli.add_out(p, kind="file", what="the markdown table (it is printed either way)")
    p.add_argument("--json", default=None, metavar="FILE", help="a JSON file to write: each object's row and the mean")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run wrote: the --out-file and --json files")
    return p


def main(argv=None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    outputs = [(flag, path) for flag, path in (("--out-file", args.out_file), ("--json", args.json)) if path]
    for flag, path in outputs:
        cli.check_output_file(flag, path)
        if Path(path).exists() and not args.overwrite:
            raise OverwriteError(f"{flag} {path}: exists; pass --overwrite to replace it")
    rows = [read_scored(p, args.predictions_dir) for p in args.scored]
    if len(rows) > 1:
        rows.append(mean_row(rows))
    table = markdown(rows)
    print(table, end="")
    if args.out_file:
        write_text(args.out_file, table)
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    run_cli(main, prog="real_frame_report.py")
