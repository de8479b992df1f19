"""Score pose weights on a LINEMOD test split (design §9): 2-D projection, ADD, ADD-S, 5cm5deg.

    python valid.py --datacfg cfg/ape.data --modelcfg cfg/yolo-pose.cfg --weightfile backup/ape/model_backup.weights
    python valid.py cfg/ape.data cfg/yolo-pose.cfg backup/ape/model_backup.weights      # positional form
    python valid.py --all cfg --modelcfg cfg/yolo-pose.cfg --weightfile 'backup/{name}/model_backup.weights'

A thin command line over `evaluation.py`, which holds the evaluation itself (`load_eval_setup`,
`pose_errors`, `summarize`, `evaluate`, the reports), and `model_loading.py` (the network and its
weights, checked). Reading order: `get_args_parser` -> `plan_jobs` (every
input checked before the work) -> `score_object` -> `main` (curves, predictions, CSV, JSON, table).

Differences from the original valid.py, all listed in docs/design.md design §11: the box is chosen
per image, so batches > 1 work (D24); the ADD threshold uses the `.data` diameter unless `--diam
mesh` (D25); the angle is clipped (D26); timings are means over all images with CUDA
synchronisation (D33); the CSV is appended with a stable header (D34). A non-finite network
output or a failed PnP is a miss (counted and reported), never a crash.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import cli
import model_info
from errors import FlagError, InputError, run_cli
from evaluation import (
    DIAM_SOURCES, EvalSetup, accuracy_curves, check_test_list, evaluate, load_eval_setup, log, plot_curves,
    print_table, report, save_predictions, skipped_by_all, write_summaries_json,
)
from linemod_format import NUM_KEYPOINTS, append_csv, csv_columns
from model_loading import check_model_cfg, check_weights, load_model

DEFAULT_DATACFG = "cfg/ape.data"
DEFAULT_MODELCFG = "cfg/yolo-pose.cfg"
DEFAULT_WEIGHTFILE = "backup/{name}/model_backup.weights"  # the MS-released models (design §3.4)
DEFAULT_CSV, DISTILLED_CSV = "valid_metrics.csv", "valid_metrics_distilling.csv"  # the fork's names


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

POSITIONAL = ("datacfg", "modelcfg", "weightfile")  # the original's positional form


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0], epilog=__doc__.split("\n\n")[1])
    cli.add_positional(p, POSITIONAL)
    cli.add_datacfg(p, why=f"{DEFAULT_DATACFG}, the original valid.py's")
    cli.add_model(p, weights="weightfile", cfg_why=f"{DEFAULT_MODELCFG}, the original valid.py's",
                  weights_detail="'{name}' is replaced by the object name",
                  weights_why=f"{DEFAULT_WEIGHTFILE}, the MS-released models' place")
    p.add_argument("--backupdir", default=None,
                   help="a training run's folder: the curves go there when no --curves/--json/--csv is given (the "
                        "fork's flag)")
    p.add_argument("--pretrain_num_epochs", type=int, default=None,
                   help="epochs without the confidence term: accepted from the fork's valid.py, unused")
    cli.add_distiled(p, f"1: --csv writes {DISTILLED_CSV} (the fork's name)")
    cli.add_device(p)
    cli.add_batch_size(p, default=1, what="per forward pass, the box is chosen per image",
                       why="the original's; more is faster, with the same scores")
    cli.add_workers(p, default=0, why="loading in the scoring process")
    cli.add_sizes(p, test=True, test_why="the size the weights were trained for, model_info.json beside them, else "
                                         "the cfg test_width x test_height")
    cli.add_box_rule(p)
    cli.add_input_filter(p)
    p.add_argument("--all", nargs="?", const="cfg", default=None, metavar="DIR",
                   help="score every .data file in DIR (default cfg/; *occlusion* and *_fresh* skipped): one row each "
                        "and the mean")
    p.add_argument("--skip-missing", action="store_true", help="with --all: skip objects whose weights file is missing")
    p.add_argument("--diam", choices=DIAM_SOURCES, default="data",
                   help="the ADD diameter: the .data value (default) or the mesh's (the original valid.py, D25)")
    cli.add_pnp(p)
    cli.add_resample(p, "of the test images")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA: autocast")
    p.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="write DIR/predictions_<name>.npz: per-image R, t, 2-D points, errors, image paths")
    p.add_argument("--csv", nargs="?", const=DEFAULT_CSV, default=None, metavar="FILE",
                   help=f"append model, object, 2d_projection, 3d_transformation (default file {DEFAULT_CSV})")
    p.add_argument("--json", default=None, metavar="FILE", help="a JSON file to write: every summary and the mean")
    p.add_argument("--curves", default=None, metavar="DIR",
                   help="folder for curves_<name>.png (default: next to --json, else --csv, else --backupdir, "
                        "else the weights file)")
    p.add_argument("--quiet", action="store_true", help="print less: no progress bar or per-object report, only the "
                                                        "table")
    return p


@dataclass
class Job:
    """One object to score: its `.data` file, setup and weights file (all checked)."""
    datacfg: Path
    setup: EvalSetup
    weightfile: str


def plan_jobs(args) -> list[Job]:
    """Every object to score, with every input checked before anything runs.

    Raises InputError listing all the problems found: besides the files, every test image's
    header (`preflight.check_image_list`: a regular file, its size the `.data` width and height,
    8-bit, no EXIF rotation, within the pixel cap). Warns (one line per list) about test images
    whose label file is empty (they add no object to the scores), label points far outside the
    image and entries listed twice (`check_test_list`).
    """
    if args.all:
        datacfgs = sorted(p for p in Path(args.all).glob("*.data") if not skipped_by_all(p))
        if not datacfgs:
            raise InputError(f"--all {args.all}: no .data files there")
    else:
        datacfgs = [Path(args.datacfg)]
    model = check_model_cfg(args.modelcfg)  # untrained: only to check each weights file against it
    label_width = 2 * getattr(model, "num_keypoints", NUM_KEYPOINTS) + 3
    jobs, problems = [], []
    for datacfg in datacfgs:
        try:
            setup = load_eval_setup(datacfg, diam_source=args.diam, pnp_method=args.pnp)
            weightfile = args.weightfile.replace("{name}", setup.name)
            if args.all and args.skip_missing and not Path(weightfile).is_file():
                log(f"skipping {setup.name}: weights file not found: {weightfile}")
                continue
            check_weights(model, args.modelcfg, weightfile)
            test_list_problems = check_test_list(setup, datacfg, label_width)
            if test_list_problems:
                problems.extend(test_list_problems)
                continue
            jobs.append(Job(datacfg, setup, weightfile))
        except (OSError, ValueError) as exc:  # InputError is a ValueError; a missing image an OSError
            problems.append(str(exc))
    if problems:
        raise InputError("\n  ".join(dict.fromkeys(problems)))
    if not jobs:
        raise InputError(f"--all {args.all}: no object has its weights file ({args.weightfile})")
    return jobs


def score_object(job: Job, args, device) -> tuple[dict, dict]:
    """Evaluate one object's test split; prints the design §9.4 report unless --quiet."""
    import dataset

    setup = job.setup
    model = load_model(args.modelcfg, job.weightfile, device)
    size, rule, in_filter = model_info.resolve(args, job.weightfile, args.modelcfg,
                                               (model.test_width, model.test_height))
    test_set = dataset.listDataset(setup.valid_list, train=False, shape=size, resample=args.resample,
                                   input_filter=in_filter)
    if not args.quiet:
        log(f"Testing {setup.name}...")
        log(f"Number of test samples: {len(test_set)}")
    loader = dataset.make_test_loader(test_set, batch_size=args.batch_size, workers=args.workers)
    summary, records = evaluate(model, loader, setup, device, num_classes=model.num_classes,
                                num_keypoints=model.num_keypoints, num_anchors=model.num_anchors,
                                progress=not args.quiet, amp=args.amp, box_rule=rule)
    summary.update(model=str(args.modelcfg), weights=job.weightfile, test_size=list(size), box_rule=rule,
                   input_filter=in_filter,
                   datacfg=str(job.datacfg),
                   batch_size=args.batch_size, device=str(device))
    records["image_paths"] = test_set.paths
    if not args.quiet:
        report(summary)
    return summary, records


def resolve_args(args) -> argparse.Namespace:
    """Fill the positional form and the defaults; check the flags that need no file."""
    cli.merge_positional(args, POSITIONAL)
    if args.all and args.datacfg:
        raise FlagError("give either --all DIR or a data cfg, not both")
    args.datacfg = args.datacfg or DEFAULT_DATACFG
    args.modelcfg = args.modelcfg or DEFAULT_MODELCFG
    args.weightfile = args.weightfile or DEFAULT_WEIGHTFILE
    cli.check_positive("--batch-size", args.batch_size)
    cli.check_positive("--workers", args.workers, minimum=0)
    cli.check_size("--test-size", args.test_size)
    cli.check_input_filter(args.input_filter)
    return args


def curves_dir(args, weightfile: str) -> Path:
    """Where the accuracy-curve PNGs go: next to the report files, else the backup/weights folder."""
    if args.curves:
        return Path(args.curves)
    for f in (args.json, args.csv):
        if f:
            return Path(f).parent
    return Path(args.backupdir) if args.backupdir else Path(weightfile).parent


def check_outputs(args, csv_path) -> None:
    """Every file the run will write, checked before the evaluation (OutputPathError naming the
    flag): --json and --csv are files in writable folders, --save-predictions a writable folder;
    a CSV with other columns is refused here too, not after the first object."""
    if args.json:
        cli.check_output_file("--json", args.json)
    if csv_path:
        cli.check_output_file("--csv", csv_path)
        csv_columns(csv_path)
    if args.save_predictions:
        cli.check_output_dir("--save-predictions", args.save_predictions)


def main(args) -> list:
    """Score every object; return their summaries. Bad inputs stop here with an InputError."""
    try:
        args = resolve_args(args)
        device = cli.resolve_device(args.device)
        cli.warn_amp_unused(args.amp, device)
        csv_path = None
        if args.csv:
            csv_path = Path(args.csv)
            if args.distiled and csv_path.name == DEFAULT_CSV:
                csv_path = csv_path.with_name(DISTILLED_CSV)
        check_outputs(args, csv_path)
        jobs = plan_jobs(args)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot evaluate:\n  {exc}") from None
    summaries = []
    for job in jobs:
        summary, records = score_object(job, args, device)
        summaries.append(summary)
        name = job.setup.name
        out = curves_dir(args, job.weightfile)
        try:
            out.mkdir(parents=True, exist_ok=True)
            plot_curves(accuracy_curves(records, job.setup.diam), out / f"curves_{name}.png",
                        title=f"{name}: {Path(args.modelcfg).stem}")
            summary["curves"] = str(out / f"curves_{name}.png")
        except OSError as exc:  # e.g. released weights in a read-only folder: the scores still count
            log(f"could not write the accuracy curves into {out}: {exc}")
        if args.save_predictions:
            d = Path(args.save_predictions)
            d.mkdir(parents=True, exist_ok=True)
            save_predictions(d / f"predictions_{name}.npz", records, records["image_paths"])
        if csv_path:
            append_csv(csv_path, {"model": Path(args.modelcfg).stem, "object": name,
                                  "2d_projection": summary["acc_2d"], "3d_transformation": summary["acc_add"]})
    print_table(summaries)
    if args.json:
        write_summaries_json(args.json, summaries)
    return summaries


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)))
