"""Generate a small synthetic dataset in the exact LINEMOD layout (design §3.4, §14.3).

    python tools/make_synthetic_linemod.py --out data/synthetic --num-objects 3 --images-per-object 20 \\
        --seed 0 [--scenes N] [--test-fraction 0.25] [--workers W] [--overwrite]
    python tools/make_synthetic_linemod.py --out data/synthetic --fresh-test 100 --fresh-seed 7
    python tools/make_synthetic_linemod.py --out data/synthetic --fresh-scenes 50 --fresh-seed 7
    python tools/make_synthetic_linemod.py --out data/ape_synth --mesh ape.ply --mesh-units mm \\
        --images-per-object 2000 [--camera-data cam.data] [--bg-dir VOC2012/JPEGImages] [...]

The second form adds a fresh test set to an existing dataset (N new images per object from the
fresh seed), the third N fresh multi-object test scenes to a dataset made with --scenes; nothing
that exists is changed. The fourth renders your own meshes (PLY or OBJ, one object each) with the
domain randomisation of docs/data.md §2c. The command line of synthetic.py, whose docstring
describes the layout, the scenes and the overwrite rules.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from errors import InputError, run_cli
from linemod_format import JPEG_QUALITY
from MeshPly import MESH_UNITS
from randomisation import JPEG_QUALITY_RANGE, OPTION_FLAGS, add_render_flags, options_from_args
from synthetic import (
    AUTO_IMAGES_PER_WORKER, DEFAULT_OUT, DEFAULT_TEST_FRACTION, add_fresh_multi, add_fresh_test, auto_workers,
    generate, generate_from_meshes,
)
from utils import resolve_camera


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n\n")[0])
    cli.add_out(p, what="the dataset root to create", default=DEFAULT_OUT, why="the main job's place")
    cli.add_num_objects(p, default=3, why="a small set to look at; the main jobs choose their own")
    p.add_argument("--images-per-object", type=int, default=20,
                   help="images per object: single-object images (default 20: a small set to look at)")
    cli.add_seed(p, what="same seed, same bytes")
    p.add_argument("--scenes", type=int, default=0,
                   help="number of OCCLUSION-style multi-object scenes (default 0: single-object images only)")
    cli.add_alias(p, "--multi", "--scenes")  # --multi is detect.py's multi-object switch
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help=f"fraction of images in test.txt (default {DEFAULT_TEST_FRACTION}: a quarter held out)")
    cli.add_workers(p, default=None, what="of the generator; they do not change the output",
                    why=f"one per {AUTO_IMAGES_PER_WORKER} images, at most the CPU count and 8")
    p.add_argument("--jpeg-quality", default=None, metavar="Q",
                   help=f"JPEG quality (default {JPEG_QUALITY}); with --mesh a range LOW,HIGH drawn per image "
                        f"(default {JPEG_QUALITY_RANGE[0]},{JPEG_QUALITY_RANGE[1]})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run wrote: a dataset of this generator (only the files its manifest "
                        "lists)")
    p.add_argument("--fresh-test", type=int, default=None, metavar="N",
                   help="fresh test images per object: add N new ones to the dataset in --out (poses and "
                        "backgrounds from --fresh-seed): LINEMOD/<obj>/test_fresh<S>.txt and cfg/<obj>_fresh<S>.data; "
                        "nothing existing changes")
    p.add_argument("--fresh-scenes", type=int, default=None, metavar="N",
                   help="add N new multi-object test scenes to the dataset in --out, made as --scenes (objects, "
                        "poses, placements, lights and backgrounds from --fresh-seed): "
                        "LINEMOD/<obj>/test_occlusion_fresh<S>.txt and cfg/occlusion_fresh<S>.data; nothing "
                        "existing changes; one of --fresh-test and --fresh-scenes per call")
    cli.add_alias(p, "--fresh-multi", "--fresh-scenes")
    p.add_argument("--fresh-seed", type=int, default=1, metavar="S",
                   help="seed of the fresh test set: its images or scenes (default 1: another than the dataset's 0)")
    p.add_argument("--quiet", action="store_true", help="print less: nothing")
    mesh = p.add_argument_group("your own objects (instead of procedural ones; docs/data.md §2b)")
    cli.add_mesh(mesh, "PLY or OBJ, one object per file, rendered (class ids in this order; "
                       "--images-per-object images of each)", nargs="+")
    cli.add_mesh_units(mesh, MESH_UNITS)
    cli.add_camera(p, "camera of a --mesh set (default: the LINEMOD camera, design §3.3, 640x480)")
    add_render_flags(p, "domain randomisation of a --mesh set (docs/data.md §2c)", skip=("jpeg_quality",))
    return p


MESH_ONLY = ("mesh_units", "camera_data", "fx", "fy", "u0", "v0", "width", "height",
             *(flag.lstrip("-").replace("-", "_") for name, (flag, _) in OPTION_FLAGS.items()
               if name != "jpeg_quality"))  # flags that mean nothing without --mesh


def _jpeg_quality(text) -> int:
    try:
        quality = int(text)
    except ValueError:
        raise InputError(f"--jpeg-quality {text}: expected a whole number (a range LOW,HIGH only with "
                         f"--mesh)") from None
    cli.check_range("--jpeg-quality", quality, 1, 100)
    return quality


def render_meshes(args) -> dict:
    """The --mesh form: the camera and the options from the flags, then generate_from_meshes."""
    K, width, height = resolve_camera(args.camera_data, args.fx, args.fy, args.u0, args.v0, args.width, args.height)
    options = options_from_args(args)
    n = len(args.mesh) * args.images_per_object + args.scenes
    return generate_from_meshes(args.out, args.mesh, args.mesh_units, K, width or 640, height or 480,
                                n_images=args.images_per_object, seed=args.seed, options=options, multi=args.scenes,
                                test_fraction=args.test_fraction, workers=args.workers or auto_workers(n),
                                overwrite=args.overwrite, quiet=args.quiet)


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.mesh is None:
        given = [name for name in MESH_ONLY if getattr(args, name) not in (None, parser.get_default(name))]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} is an option of a --mesh set; pass --mesh FILE ...")
    try:
        if args.mesh is not None:
            if args.fresh_test is not None or args.fresh_scenes is not None:
                raise InputError("--fresh-test and --fresh-scenes add to the set already in --out, made from "
                                 "meshes or not (its meshes and options are recorded there): leave out --mesh")
            render_meshes(args)
            return 0
        jpeg_quality = JPEG_QUALITY if args.jpeg_quality is None else _jpeg_quality(args.jpeg_quality)
        if args.fresh_test is not None and args.fresh_scenes is not None:
            raise InputError(f"--fresh-test {args.fresh_test} and --fresh-scenes {args.fresh_scenes}: choose one per "
                             f"call (run the command once for each; nothing was changed in {args.out})")
        if args.fresh_scenes is not None:
            add_fresh_multi(args.out, args.fresh_scenes, args.fresh_seed,
                            workers=args.workers or auto_workers(args.fresh_scenes), quiet=args.quiet)
            return 0
        if args.fresh_test is not None:
            add_fresh_test(args.out, args.fresh_test, args.fresh_seed,
                           workers=args.workers or auto_workers(args.fresh_test), quiet=args.quiet)
            return 0
        generate(args.out, objects=args.num_objects, images_per_object=args.images_per_object, seed=args.seed,
                 multi=args.scenes, test_fraction=args.test_fraction,
                 workers=args.workers or auto_workers(args.num_objects * args.images_per_object + args.scenes),
                 overwrite=args.overwrite, jpeg_quality=jpeg_quality, quiet=args.quiet)
    except (ValueError, FileExistsError) as exc:  # InputError is a ValueError
        print(f"make_synthetic_linemod: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
