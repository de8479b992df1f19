"""Closing the render-to-photo gap one lever at a time, at equal images (design §7.7): for each lever
and object, the mesh command (`train.py --mesh`) with the lever's flags, its model scored by
valid.py on the object's real frames and on its rendered test split, then one table: per lever the
images seen, and over the objects' real frames together the 2-D accuracies at 10 and 20 px and the
frames whose box is on the object (Wilson 95 % intervals over all the frames), each object's median
2-D error, and the rendered test split's accuracy at 10 px.

    python tools/mesh_ablation.py --real-dir ../shared/data/real_lmo --objects ape can \\
        --lever baseline= --lever more_distractors="--distractors 4,12" --images-per-object 1500

`--real-dir` is a folder laid out as the real-frame check (`meshes/<object>.ply` in millimetres,
`<object>.data` whose camera the renders take and whose frames score the model). Each run lives in
`<out>/<lever>/`: the training log `<object>_train.log`, valid.py's `--json` files and predictions
of the real frames (`<object>.json`) and of the rendered test split (`synth/<object>.json`); its
weights in `backup/ablation/<lever>/<object>/`. The machine may stop: the same command again skips
what is finished and resumes an unfinished training from its checkpoint. `--table-only` writes the
table of what is there.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli  # noqa: E402
from errors import InputError, OverwriteError, run_cli  # noqa: E402
from linemod_format import write_text  # noqa: E402
from stats import binomial_interval  # noqa: E402
from tools import real_frame_report  # noqa: E402
from tools.plot_curve import read_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_MESH_UNITS = "mm"  # the real-frame check's meshes (BOP models)
BACKUP_ROOT = ROOT / "backup" / "ablation"  # <lever>/<object>/: each run's training folder
LEVER_NAME = re.compile(r"[A-Za-z0-9_.-]+")
SCORE_LINE = re.compile(r"python valid\.py --datacfg (\S+)")  # train.py --mesh's closing command


def parse_lever(text: str) -> tuple[str, list[str]]:
    """'name=flags' -> (name, the flags as a list); InputError for a name that is not a plain folder name."""
    name, sep, flags = text.partition("=")
    if not sep or not LEVER_NAME.fullmatch(name):
        raise InputError(f"--lever {text!r}: expected NAME=FLAGS with NAME of letters, digits, '_', '.', '-' "
                         f"(e.g. more_distractors='--distractors 4,12'; baseline= for no flag)")
    return name, shlex.split(flags)


def backup_dir(lever: str, obj: str) -> Path:
    return BACKUP_ROOT / lever / obj


def train_argv(real_dir: Path, obj: str, lever: str, flags: list[str], images_per_object: int,
               resume: bool) -> list[str]:
    """The train.py --mesh command of one (lever, object) run, from the repository root."""
    real_dir = Path(real_dir).resolve()
    argv = [sys.executable, str(ROOT / "train.py"), "--mesh", str(real_dir / "meshes" / f"{obj}.ply"),
            "--mesh-units", REAL_MESH_UNITS, "--camera-data", str(real_dir / f"{obj}.data"),
            "--images-per-object", str(images_per_object), "--backupdir", str(backup_dir(lever, obj)),
            *flags]
    return argv + (["--resume"] if resume else [])


def valid_argv(datacfg: str, weights: Path, json_path: Path, predictions_dir: Path) -> list[str]:
    """The valid.py command that scores `weights` (its network from model_info.json beside it) on datacfg."""
    modelcfg = json.loads((weights.parent / "model_info.json").read_text())["modelcfg"]
    return [sys.executable, str(ROOT / "valid.py"), "--datacfg", datacfg, "--modelcfg", str(ROOT / modelcfg),
            "--weightfile", str(weights.resolve()), "--json", str(json_path.resolve()),
            "--save-predictions", str(predictions_dir.resolve())]


def run_logged(argv: list[str], log: Path, cwd: Path) -> None:
    """Run argv in cwd with its output in log; InputError naming the log on failure."""
    with open(log, "w") as f:
        code = subprocess.call(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        raise InputError(f"{shlex.join(argv[1:3])}... failed (status {code}); see {log}")


def rendered_test_datacfg(log: Path) -> str | None:
    """The rendered test split's .data file from a training log, printed in its closing valid.py
    command: None until the run has finished."""
    found = SCORE_LINE.findall(log.read_text()) if log.is_file() else []
    return found[-1] if found else None


def run_one(real_dir: Path, out: Path, lever: str, flags: list[str], obj: str, images_per_object: int) -> None:
    """Train (or resume, or skip when finished) and score one (lever, object) run."""
    folder = out / lever
    (folder / "synth").mkdir(parents=True, exist_ok=True)
    backup = backup_dir(lever, obj)
    log = folder / f"{obj}_train.log"
    if rendered_test_datacfg(log) is None:  # not trained to the end yet
        resume = (backup / "checkpoint.pt").exists()
        print(f"{lever} / {obj}: training{' (resumed)' if resume else ''}, log in {log}", flush=True)
        run_logged(train_argv(real_dir, obj, lever, flags, images_per_object, resume), log, ROOT)
    weights = backup / "model.weights"
    if not (folder / f"{obj}.json").exists():
        run_logged(valid_argv(f"{obj}.data", weights, folder / f"{obj}.json", folder),
                   folder / f"{obj}_valid_real.log", Path(real_dir))
    if not (folder / "synth" / f"{obj}.json").exists():
        datacfg = rendered_test_datacfg(log)
        if datacfg is None:
            raise InputError(f"{log}: no 'python valid.py --datacfg' line: not a finished train.py --mesh run")
        run_logged(valid_argv(datacfg, weights, folder / "synth" / f"{obj}.json", folder / "synth"),
                   folder / f"{obj}_valid_synth.log", ROOT)


def images_seen(metrics_jsonl: Path) -> int:
    """The images seen by the end of a run: 'seen' of the last row of its metrics.jsonl (read and
    checked as tools/plot_curve.py reads it)."""
    last = read_rows(metrics_jsonl)[-1]
    if "seen" not in last:
        raise InputError(f"{metrics_jsonl}: no images-seen count ('seen') in its last row")
    return int(last["seen"])


def pooled(rows: list[dict], key: str) -> tuple[float, list[float]]:
    """The percentage of all the objects' frames together (rows of real_frame_report), with its Wilson interval."""
    n = sum(r["n"] for r in rows)
    pct = sum(r[key] * r["n"] for r in rows) / n
    return pct, list(binomial_interval(pct, n))


def lever_row(out: Path, lever: str, flags: list[str], objects: list[str]) -> dict:
    """One line of the table from a lever's scored runs."""
    real = [real_frame_report.read_scored(out / lever / f"{o}.json", None) for o in objects]
    synth = [real_frame_report.read_scored(out / lever / "synth" / f"{o}.json", None) for o in objects]
    seen = {o: images_seen(backup_dir(lever, o) / "metrics.jsonl") for o in objects}
    row = {"lever": lever, "flags": shlex.join(flags), "images_seen": seen, "n_real": sum(r["n"] for r in real),
           "median_err_2d": {r["object"]: r["median_err_2d"] for r in real}}
    for key in ("acc_10px", "acc_20px", "on_object"):
        row[key], row[f"{key}_ci95"] = pooled(real, key)
    row["rendered_acc_10px"], row["rendered_acc_10px_ci95"] = pooled(synth, "acc_10px")
    return row


def markdown(rows: list[dict]) -> str:
    def acc(r, k):
        lo, hi = r[f"{k}_ci95"]
        return f"{r[k]:.1f} [{lo:.0f}, {hi:.0f}]"

    head = ["lever", "flags", "images seen", "real 2-D 10 px %", "real 2-D 20 px %", "real box on the object %",
            "real median 2-D error px", "renders 2-D 10 px %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        seen = sorted(set(r["images_seen"].values()))
        medians = ", ".join(f"{o} {v:.0f}" for o, v in r["median_err_2d"].items())
        cells = [r["lever"], f"`{r['flags']}`" if r["flags"] else "(defaults)", " / ".join(f"{s:,}" for s in seen),
                 acc(r, "acc_10px"), acc(r, "acc_20px"), acc(r, "on_object"), medians, acc(r, "rendered_acc_10px")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def get_args_parser():
    p = cli.default_argument_parser(__doc__)
    p.add_argument("--real-dir", type=Path, required=True, metavar="DIR",
                   help="the real-frame check: meshes/<object>.ply (mm) and <object>.data")
    p.add_argument("--objects", nargs="+", required=True, metavar="NAME",
                   help="which objects: each trained alone, from meshes/NAME.ply and NAME.data of --real-dir")
    p.add_argument("--lever", action="append", required=True, metavar="NAME=FLAGS",
                   help="a lever: a name and the train.py flags it adds (baseline= for none); repeat, in table order")
    p.add_argument("--images-per-object", type=int, default=1500, metavar="N",
                   help="images per object: rendered of each mesh in every run (default 1500: a quarter of the "
                        "mesh command's 6000, so that several levers fit in a session)")
    cli.add_out(p, kind="folder", what="the runs' logs and scores", default="runs/ablation",
                why="beside the other runs, outside the repository's files")
    p.add_argument("--table-only", action="store_true", help="run nothing: write the table of the finished runs")
    p.add_argument("--overwrite", action="store_true", help="replace what an earlier run wrote: the table files")
    return p


def main(argv=None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    levers = [parse_lever(text) for text in args.lever]
    out = Path(args.out)
    table_md, table_json = out / "table.md", out / "table.json"
    for path in (table_md, table_json):
        if path.exists() and not args.overwrite:
            raise OverwriteError(f"{path}: exists; pass --overwrite to replace it")
    if not args.table_only:
        for name in args.objects:
            for path in (args.real_dir / "meshes" / f"{name}.ply", args.real_dir / f"{name}.data"):
                if not path.is_file():
                    raise InputError(f"{path}: not found (--real-dir {args.real_dir}, object {name})")
        cli.check_positive("--images-per-object", args.images_per_object)
        for lever, flags in levers:
            for name in args.objects:
                run_one(args.real_dir, out, lever, flags, name, args.images_per_object)
    rows = [lever_row(out, lever, flags, args.objects) for lever, flags in levers]
    table = markdown(rows)
    print(table, end="")
    write_text(table_md, table)
    write_text(table_json, json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    run_cli(main, prog="mesh_ablation.py")
