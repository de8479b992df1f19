"""Generate a small synthetic dataset in the exact LINEMOD layout (design §3.4, §14.3).

    python tools/make_synthetic_linemod.py --out data/synthetic --num-objects 3 --images-per-object 20 \\
        --seed 0 [--multi N] [--test-fraction 0.25] [--workers W] [--overwrite]
    python tools/make_synthetic_linemod.py --out data/synthetic --fresh-test 100 --fresh-seed 7
    python tools/make_synthetic_linemod.py --out data/synthetic --fresh-multi 50 --fresh-seed 7

The second form adds a fresh test set to an existing dataset (N new images per object from the
fresh seed), the third N fresh multi-object test scenes to a dataset made with --multi; nothing
that exists is changed. The command line of synthetic.py, whose docstring describes the layout,
the scenes and the overwrite rules.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from errors import InputError, run_cli
from linemod_format import JPEG_QUALITY
from synthetic import (
    AUTO_IMAGES_PER_WORKER, DEFAULT_OUT, DEFAULT_TEST_FRACTION, add_fresh_multi, add_fresh_test, auto_workers,
    generate,
)


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"dataset root to create (default {DEFAULT_OUT})")
    cli.add_num_objects(p, default=3)
    p.add_argument("--images-per-object", type=int, default=20, help="single-object images per object (default 20)")
    cli.add_seed(p, help="random seed (default 0); same seed, same bytes")
    p.add_argument("--multi", type=int, default=0, help="number of OCCLUSION-style multi-object scenes (default 0)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help=f"fraction of images in test.txt (default {DEFAULT_TEST_FRACTION})")
    cli.add_workers(p, default=None,
                    help=f"worker processes (default: one per {AUTO_IMAGES_PER_WORKER} images, at most the CPU "
                        f"count and 8); does not change the output")
    p.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY, help=f"JPEG quality (default {JPEG_QUALITY})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset this generator wrote before (only the files its manifest lists)")
    p.add_argument("--fresh-test", type=int, default=None, metavar="N",
                   help="add N new test images per object to the dataset in --out (poses and backgrounds from "
                        "--fresh-seed): LINEMOD/<obj>/test_fresh<S>.txt and cfg/<obj>_fresh<S>.data; nothing "
                        "existing changes")
    p.add_argument("--fresh-multi", type=int, default=None, metavar="N",
                   help="add N new multi-object test scenes to the dataset in --out, made with --multi (objects, "
                        "poses, placements, lights and backgrounds from --fresh-seed): "
                        "LINEMOD/<obj>/test_occlusion_fresh<S>.txt and cfg/occlusion_fresh<S>.data; nothing "
                        "existing changes; one of --fresh-test and --fresh-multi per call")
    p.add_argument("--fresh-seed", type=int, default=1, metavar="S",
                   help="seed of the fresh test set or scenes (default 1)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.fresh_test is not None and args.fresh_multi is not None:
            raise InputError(f"--fresh-test {args.fresh_test} and --fresh-multi {args.fresh_multi}: choose one per "
                             f"call (run the command once for each; nothing was changed in {args.out})")
        if args.fresh_multi is not None:
            add_fresh_multi(args.out, args.fresh_multi, args.fresh_seed,
                            workers=args.workers or auto_workers(args.fresh_multi), quiet=args.quiet)
            return 0
        if args.fresh_test is not None:
            add_fresh_test(args.out, args.fresh_test, args.fresh_seed,
                           workers=args.workers or auto_workers(args.fresh_test), quiet=args.quiet)
            return 0
        generate(args.out, objects=args.num_objects, images_per_object=args.images_per_object, seed=args.seed,
                 multi=args.multi, test_fraction=args.test_fraction,
                 workers=args.workers or auto_workers(args.num_objects * args.images_per_object + args.multi),
                 overwrite=args.overwrite, jpeg_quality=args.jpeg_quality, quiet=args.quiet)
    except (ValueError, FileExistsError) as exc:  # InputError is a ValueError
        print(f"make_synthetic_linemod: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
