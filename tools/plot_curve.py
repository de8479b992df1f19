"""Accuracy against training minutes from a run's metrics.jsonl: a PNG and the raw JSON.

    python tools/plot_curve.py backup/synthetic/obj00_120min/metrics.jsonl --out docs/img/cpu_curve.png \\
        --json docs/results/cpu_fast/curve_120min.json [--title "..."]

Every evaluation row of train.py has `minutes` (training and testing time so far), the 2-D
projection accuracies `acc_2d` (5 px) and `acc_2d_10px` on the run's test list, and, for each
`--also-valid` set, the same under `<set>:acc_2d` and `<set>:acc_2d_10px`. The figure draws the
5 and 10 px accuracies of every set against minutes; the JSON keeps the rows as they are.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from errors import InputError, run_cli
from linemod_format import atomic_write, write_text


def read_rows(path) -> list[dict]:
    """The evaluation rows of a metrics.jsonl file; InputError naming the file and line if one is bad."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: metrics file not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
        if "minutes" not in row or "acc_2d" not in row:
            raise InputError(f"{path}:{n}: no 'minutes' / 'acc_2d' (written by an older train.py?)")
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no evaluation rows")
    return rows


def series(rows: list[dict]) -> dict[str, dict[str, list]]:
    """{set name: {'minutes': [...], '5 px': [...], '10 px': [...]}}; the run's own test list is 'test'."""
    sets = {"test": ""} | {k.split(":")[0]: k.split(":")[0] + ":" for k in rows[0] if k.endswith(":acc_2d")}
    out = {}
    for name, prefix in sets.items():
        out[name] = {"minutes": [r["minutes"] for r in rows], "5 px": [r[f"{prefix}acc_2d"] for r in rows],
                     "10 px": [r[f"{prefix}acc_2d_10px"] for r in rows]}
    return out


def plot(curves: dict, path, title: str = "") -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    styles = {"5 px": "--", "10 px": "-"}
    for name, c in curves.items():
        for key, style in styles.items():
            ax.plot(c["minutes"], c[key], style, marker="o", ms=3, label=f"{name}, {key}")
    ax.axhline(50, color="grey", lw=0.6)
    ax.set(xlabel="minutes of training (2 CPU cores)", ylabel="2-D projection accuracy (%)", ylim=(0, 101),
           title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")


def get_args_parser():
    p = cli.default_argument_parser(__doc__)
    p.add_argument("metrics", help="a run's metrics.jsonl")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--json", default=None, help="also write the rows and curves as JSON")
    p.add_argument("--title", default="")
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    rows = read_rows(args.metrics)
    curves = series(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot(curves, args.out, args.title)
    if args.json:
        write_text(args.json, json.dumps({"metrics": str(args.metrics), "curves": curves, "rows": rows}, indent=1)
                   + "\n")
    return curves


if __name__ == "__main__":
    run_cli(main, prog="plot_curve.py")
