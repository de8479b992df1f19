"""Accuracy against training minutes from a run's metrics.jsonl: a PNG and the raw JSON.

    python tools/plot_curve.py backup/synthetic/obj00_120min/metrics.jsonl --out-file docs/img/cpu_curve.png \\
        --json docs/results/cpu_fast/curve_120min.json [--title "..."]

Every evaluation row of train.py and train_multi.py has `minutes` (training and testing time so
far) and the 2-D projection accuracies `acc_2d_5px` and `acc_2d_10px` on the run's test (the mean
over the objects for train_multi.py); each `--also-valid` set of train.py, and each object of
train_multi.py, has the same under `<set>:acc_2d_5px` and `<set>:acc_2d_10px`. The figure draws the
5 and 10 px accuracies of every set against minutes; the JSON keeps the rows (under today's names:
older logs are read too, `linemod_format.log_row`).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from errors import FlagError, InputError, run_cli
from linemod_format import LOG_ACC_10PX, LOG_ACC_5PX, atomic_write, log_row, write_text


def read_rows(path) -> list[dict]:
    """The evaluation rows of a metrics.jsonl file; InputError naming the file and line if one is bad:
    not JSON, without `minutes` (a finite number) or the 5 px accuracy, an accuracy, `seen` or
    `epoch` that is not a number, or without an accuracy the first row has (every row draws the same sets)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: metrics file not found")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file ({exc})") from None
    rows, first = [], None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
        row = log_row(row) if isinstance(row, dict) else {}
        if "minutes" not in row or LOG_ACC_5PX not in row:
            raise InputError(f"{path}:{n}: no 'minutes' / '{LOG_ACC_5PX}' (not a train.py or train_multi.py log?)")
        accuracies = [k for k in row if k.endswith((LOG_ACC_5PX, LOG_ACC_10PX))]
        first = first or accuracies
        missing = [k for k in first if k not in row]
        if missing:
            raise InputError(f"{path}:{n}: no {', '.join(repr(k) for k in missing)} (the first row has them)")
        bad = [k for k in ("minutes", "seen", "epoch", *accuracies) if k in row and not _is_number(row[k])]
        if bad or not math.isfinite(row["minutes"]):
            raise InputError(f"{path}:{n}: {', '.join(repr(k) for k in bad or ['minutes'])} not a finite number")
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no evaluation rows")
    return rows


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_minutes(text: str) -> tuple[float, ...]:
    """--table-at 'M1,M2,...' -> the minutes (finite numbers >= 0); FlagError naming the flag otherwise."""
    try:
        at = tuple(float(m) for m in text.split(","))
    except ValueError:
        raise FlagError(f"--table-at {text}: expected minutes separated by commas, e.g. 30,60,120") from None
    if not all(math.isfinite(m) and m >= 0 for m in at):
        raise FlagError(f"--table-at {text}: minutes must be finite and >= 0")
    return at


def series(rows: list[dict]) -> dict[str, dict[str, list]]:
    """{set name: {'minutes': [...], '5 px': [...], '10 px': [...]}}; the run's own test is 'test', an
    --also-valid set or an object of a multi-object run its name (rows as `read_rows` gives them)."""
    sets = {"test": ""} | {k.split(":")[0]: k.split(":")[0] + ":" for k in rows[0] if k.endswith(f":{LOG_ACC_5PX}")}
    out = {}
    for name, prefix in sets.items():
        out[name] = {"minutes": [r["minutes"] for r in rows], "5 px": [r[f"{prefix}{LOG_ACC_5PX}"] for r in rows],
                     "10 px": [r[f"{prefix}{LOG_ACC_10PX}"] for r in rows]}
    return out


def minutes_to_reach(minutes: list[float], values: list[float], level: float) -> float | None:
    """The minutes at which `values` first reach `level`, interpolated linearly between the two
    evaluations around it (the first evaluation's minutes if it is already there); None if never."""
    for i, (m, v) in enumerate(zip(minutes, values)):
        if v >= level:
            if i == 0:
                return m
            m0, v0 = minutes[i - 1], values[i - 1]
            return m0 + (m - m0) * (level - v0) / (v - v0)
    return None


def curve_table(rows: list[dict], at_minutes: tuple[float, ...]) -> str:
    """A markdown table of the evaluation nearest to each of `at_minutes`, and the last one: minutes,
    images seen, the 5 and 10 px accuracies of every set (`series`) and the mean corner error (a
    multi-object log has none: '-')."""
    curves = series(rows)
    picked = dict.fromkeys(min(range(len(rows)), key=lambda i: abs(rows[i]["minutes"] - m)) for m in at_minutes)
    picked = sorted(set(picked) | {len(rows) - 1})
    head = ["minutes", "images seen"] + [f"{name} {key}" for name in curves for key in ("5 px", "10 px")]
    lines = ["| " + " | ".join(head + ["mean corner error"]) + " |", "|" + "---|" * (len(head) + 1)]
    for i in picked:
        accs = [f"{curves[name][key][i]:.1f} %" for name in curves for key in ("5 px", "10 px")]
        corner = rows[i].get("mean_err_corner")
        seen = f"{rows[i]['seen']:,}" if "seen" in rows[i] else "-"
        lines.append(f"| {rows[i]['minutes']:.1f} | {seen} | " + " | ".join(accs)
                     + (f" | {corner:.1f} px |" if corner is not None else " | - |"))
    return "\n".join(lines)


def plot(curves: dict, path, title: str = "") -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    styles = {"5 px": "--", "10 px": "-"}
    for name, c in curves.items():
        for key, style in styles.items():
            ax.plot(c["minutes"], c[key], style, marker="o", ms=3, label=f"{name}, {key}")
    for level in (50, 80):
        ax.axhline(level, color="grey", lw=0.6)
    ax.set(xlabel="minutes of training and testing (2 CPU cores)", ylabel="2-D projection accuracy (%)", ylim=(0, 101),
           title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")


def get_args_parser():
    p = cli.default_argument_parser(__doc__)
    p.add_argument("metrics", help="a run's metrics.jsonl")
    cli.add_out(p, "file", what="the PNG", required=True)
    cli.add_alias(p, "--out", "--out-file")  # --out is an output folder everywhere
    p.add_argument("--json", default=None, metavar="FILE", help="a JSON file to write: the rows and curves, too")
    p.add_argument("--title", default="", help="the figure's title")
    p.add_argument("--table-at", default=None, metavar="M1,M2,...",
                   help="print a markdown table of the evaluations nearest to these minutes and the last, and "
                        "the minutes at which each set first reaches 50 and 80 %% at 5 px")
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    rows = read_rows(args.metrics)
    at = parse_minutes(args.table_at) if args.table_at else None
    curves = series(rows)
    Path(args.out_file).parent.mkdir(parents=True, exist_ok=True)
    plot(curves, args.out_file, args.title)
    if args.json:
        write_text(args.json, json.dumps({"metrics": str(args.metrics), "curves": curves, "rows": rows}, indent=1)
                   + "\n")
    if at is not None:
        print(curve_table(rows, at))
        for name, c in curves.items():
            for level in (50, 80):
                reached = minutes_to_reach(c["minutes"], c["5 px"], level)
                print(f"{name}: {level} % at 5 px " + (f"after {reached:.1f} minutes" if reached is not None
                                                         else "not reached"))
    return curves


if __name__ == "__main__":
    run_cli(main, prog="plot_curve.py")
