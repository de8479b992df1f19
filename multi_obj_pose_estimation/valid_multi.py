"""Score the multi-object pose network on OCCLUSION test scenes (design §9.6), one object at a time.

    python multi_obj_pose_estimation/valid_multi.py --modelcfg multi_obj_pose_estimation/cfg/yolo-pose-multi.cfg \\
        --weightfile backup_multi/model_backup.weights
    python multi_obj_pose_estimation/valid_multi.py --datacfg data/synthetic_multi/cfg/occlusion.data \\
        --modelcfg multi_obj_pose_estimation/cfg/yolo-lite-trial3-multi.cfg \\
        --weightfile backup_multi/synthetic/model.weights --test-size 256

For every object: the images of its `test_occlusion.txt`, labels from `<obj>/labels_occlusion`
(re-ordered from the OCCLUSION corner order to the design §9.2 order before PnP); each GT takes the
box of its class (`--select class`, D63): among the cells whose best class it is, the highest
det_conf * class prob, above --conf-thresh (default utils.MULTI_CONF_THRESH = 0.05) -- the box
`detect.py --multi` draws, so both give the same pose; no such box is a miss. `--select original`
restores the original's choice (design §4.2: every box above the threshold plus a fallback box of
the image's first GT class; for each GT the highest-det_conf box of its class). Prints the 2-D
projection accuracy at 5, 10, ..., 50 px, plus ADD (10 % of the diameter) and 5cm5deg, which the
original did not report, then one table.

Differences from the original (design §11): the objects and their test lists, meshes, diameters
and class ids come from one `.data` file (`valid<k>`, `mesh<k>`, `diam<k>`, class k-1) instead
of hard-coded per-object files (`diam<k>` required unless --diam mesh); the box choice (D63); a
GT with no box of its class, or a failed PnP, is a miss.

A thin command line over `evaluation.py` (`load_objects`, `evaluate_object`, the occlusion report)
and `model_loading.load_model`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
import model_info
import utils
from errors import FlagError, InputError, run_cli
from evaluation import (
    DIAM_SOURCES, MULTI_SELECTIONS, OCCLUSION_OBJECTS, check_occlusion_test_images, evaluate_object, load_objects, log,
    occlusion_mean_row, occlusion_report, occlusion_test_loader, print_occlusion_table, write_summaries_json,
)
from model_loading import load_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DEFAULT_DATACFG = "cfg/occlusion.data"
DEFAULT_MODELCFG = "cfg/yolo-pose-multi.cfg"
DEFAULT_WEIGHTFILE = "backup_multi/model_backup.weights"


def find_path(path) -> str:
    """`path` as given when it exists from the current directory, else from this folder (the
    original's working directory) or the repository root; unchanged when found nowhere."""
    return cli.find_path(path, HERE, ROOT)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0], epilog=__doc__.split("\n\n")[1])
    cli.add_model(p, cfg_default=DEFAULT_MODELCFG, cfg_why="the original valid_multi.py's", weights="weightfile",
                  weights_default=DEFAULT_WEIGHTFILE, weights_why="the original valid_multi.py's",
                  weights_detail="to score (the original's name: --initweightfile, kept)")
    cli.add_alias(p, "--initweightfile", "--weightfile", deprecated=False)  # the original's own flag (design §7.4)
    cli.add_datacfg(p, "an occlusion set's, with valid<k>/mesh<k>/diam<k>", default=DEFAULT_DATACFG,
                    why="the file the original reads")
    cli.add_objects(p, f"those to score (default: {' '.join(OCCLUSION_OBJECTS)} when the .data file has them, "
                       f"else all)")
    cli.add_conf_thresh(p, default=utils.MULTI_CONF_THRESH, what="as detect.py --multi (design §4.2, D63)")
    p.add_argument("--select", choices=MULTI_SELECTIONS, default="class",
                   help="box of each GT: 'class' (default, D63), the box of its class that detect.py --multi "
                        "draws; 'original', the original's boxes with the fallback box of the image's first GT "
                        "class (design §4.2)")
    cli.add_sizes(p, test=True, test_why="the size the weights were trained for, model_info.json beside them, else "
                                         "the cfg width x height")
    cli.add_box_rule(p)
    cli.add_input_filter(p)
    cli.add_batch_size(p, default=1, what="per forward pass, boxes are chosen per image",
                       why="the original's; more is faster, with the same scores")
    cli.add_workers(p, default=0, why="loading in the scoring process")
    cli.add_device(p)
    p.add_argument("--diam", choices=DIAM_SOURCES, default="data",
                   help="the ADD diameter: diam<k> (default; required for every object scored) or the mesh's")
    cli.add_pnp(p)
    cli.add_resample(p, "of the test images")
    p.add_argument("--json", default=None, metavar="FILE", help="a JSON file to write: every summary and the mean")
    p.add_argument("--quiet", action="store_true", help="print less: only the table")
    return p


def check_args(args) -> argparse.Namespace:
    """Resolve the default paths and check the flags that need no file (FlagError)."""
    args.datacfg, args.modelcfg = find_path(args.datacfg), find_path(args.modelcfg)
    args.objects = cli.object_list(args.objects)
    cli.check_positive("--batch-size", args.batch_size)
    cli.check_positive("--workers", args.workers, minimum=0)
    cli.check_size("--test-size", args.test_size)
    cli.check_input_filter(args.input_filter)
    if args.json:
        cli.check_output_file("--json", args.json)
    if not 0.0 <= args.conf_thresh < 1.0:
        raise FlagError(f"--conf-thresh must be in [0, 1), found {args.conf_thresh}")
    return args


def main(args) -> list:
    """Score every object; return their summaries. Bad inputs stop here with an InputError."""
    try:
        args = check_args(args)
        device = cli.resolve_device(args.device)
        objects = load_objects(args.datacfg, args.objects, args.diam, args.pnp)
        check_occlusion_test_images(objects)
        model = load_model(args.modelcfg, args.weightfile, device)
        size, rule, in_filter = model_info.resolve(args, args.weightfile, args.modelcfg,
                                              (model.test_width, model.test_height))
        loaders = [occlusion_test_loader(o, size, args.batch_size, args.workers, args.resample, in_filter)
                   for o in objects]
        for o in objects:
            if o.class_id >= model.num_classes:
                raise ValueError(f"{args.datacfg}: object {o.name!r} has class id {o.class_id} but {args.modelcfg} "
                                 f"has {model.num_classes} classes")
    except (OSError, ValueError) as exc:  # InputError is a ValueError; a missing image an OSError
        raise InputError(f"cannot evaluate:\n  {exc}") from None
    summaries = []
    for obj, loader in zip(objects, loaders):
        if not args.quiet:
            log(f"Testing {obj.name}: {len(loader.dataset)} test images at {size[0]}x{size[1]}")
        summary, _ = evaluate_object(model, loader, obj, device, args.conf_thresh, progress=not args.quiet,
                                     box_rule=rule, select=args.select)
        summary.update(model=str(args.modelcfg), weights=str(args.weightfile), test_size=list(size), box_rule=rule,
                       input_filter=in_filter,
                       select=args.select)
        summaries.append(summary)
        if not args.quiet:
            occlusion_report(summary)
    print_occlusion_table(summaries)
    if args.json:
        write_summaries_json(args.json, summaries, occlusion_mean_row)
    return summaries


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)))
