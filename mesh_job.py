"""`train.py --mesh`: one command from a user's mesh to a pose model (docs/design.md §7.7).

    python train.py --mesh my_object.ply --mesh-units mm --camera-data camera.data [--bg-dir DIR ...]
    python multi_obj_pose_estimation/train_multi.py --mesh a.ply b.ply --mesh-units mm ...

train.py and train_multi.py take --mesh with the generator's camera and randomisation flags
(tools/make_synthetic_linemod.py; one definition each: cli.add_mesh, cli.add_camera,
randomisation.add_render_flags). `mesh_dataset` renders the set once into
`data/mesh/<names>_<hash>/`, the hash of everything that decides its bytes (the meshes' sha256
and units, the camera, the options, the image counts, the seed): a second call with the same
inputs finds it, and `synthetic.ensure_dataset` (design D60) never renders over a set or a file it
did not make. The scripts then train `recipes.MESH` (or `recipes.MESH_MULTI`) on it and print
`closing_commands`: the command that scores the rendered test split and the one that runs the
model on the user's photos.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cli
import synthetic
from errors import FlagError
from linemod_format import IM_HEIGHT, IM_WIDTH
from MeshPly import MESH_UNITS
from randomisation import OPTION_FLAGS, add_render_flags, options_from_args
from recipes import MESH, MESH_MULTI, MeshJob
from utils import resolve_camera

MESH_ROOT = Path("data/mesh")  # the rendered sets, one folder each (relative to the current folder, as data/synthetic)
MESH_BACKUP = "backup/mesh/{name}"  # the run's folder: model.weights, model_info.json, ... ('{name}': the objects)
HASH_CHARS = 10  # hex digits of the set's hash in its folder name: 40 bits, no collision among a user's sets
DEFAULT_UNITS = "m"
CAMERA_FLAGS = ("camera_data", "fx", "fy", "u0", "v0", "width", "height")
# flags that mean nothing without --mesh (all default to None, so any given one is seen); --bg-dir is a
# training flag too (the fast recipe's background swap): with --mesh the set is rendered over its photos as well
MESH_ONLY = ("mesh_units", "images_per_object", "scenes", *CAMERA_FLAGS,
             *(flag.lstrip("-").replace("-", "_") for name, (flag, _) in OPTION_FLAGS.items() if name != "backgrounds"))
PHOTOS = "PHOTOS"  # the placeholder of the printed detect.py command


def add_mesh_flags(p, multi: bool) -> None:
    """--mesh and the flags of its set: units, image counts, the camera, the randomisation options.
    multi: the script trains a multi-object model (train_multi.py), else train.py."""
    job = MESH_MULTI if multi else MESH
    group = p.add_argument_group("your object from its mesh (instead of --datacfg; docs/design.md §7.7)")
    what = ("PLY or OBJ files, one object each: a set is rendered from them once (cached under "
            f"{MESH_ROOT}/) and a multi-object model trained on it" if multi else
            f"PLY or OBJ: a set is rendered from it once (cached under {MESH_ROOT}/) and a model trained on it; "
            "several files train a multi-object model (train_multi.py)")
    cli.add_mesh(group, what, nargs="+")
    cli.add_mesh_units(group, MESH_UNITS, default=None, why=f"{DEFAULT_UNITS}, LINEMOD's metres; BOP meshes are mm")
    group.add_argument("--images-per-object", type=int, default=None, metavar="N",
                       help=f"images per object: rendered of each --mesh (default: {job.images_per_object}, "
                            f"recipes.{'MESH_MULTI' if multi else 'MESH'})")
    group.add_argument("--scenes", type=int, default=None, metavar="N",
                       help=f"number of OCCLUSION-style multi-object scenes: of several --mesh files together "
                            f"(default: {MESH_MULTI.scenes}, recipes.MESH_MULTI)")
    cli.add_camera(p, "camera of the --mesh set, and of your photos (default: the LINEMOD camera, design §3.3, "
                      "640x480)")
    # --bg-dir (training.add_run_flags) is also the folder the set is rendered over (RenderOptions.backgrounds)
    add_render_flags(p, "domain randomisation of the --mesh set (docs/data.md §2c; and --bg-dir)",
                     skip=("backgrounds",))
    cli.add_alias(p, "--backgrounds", "--bg-dir")  # the generator's old name of the folder


def check_mesh_flags(args) -> None:
    """FlagError (one line) for a flag of a --mesh set without --mesh, --mesh with a --datacfg, or
    image counts out of range."""
    if getattr(args, "mesh", None) is None:
        given = [name for name in MESH_ONLY if getattr(args, name, None) is not None]
        if given:
            raise FlagError(f"--{given[0].replace('_', '-')} is an option of a --mesh set; pass --mesh FILE ...")
        return
    if args.datacfg is not None:
        raise FlagError(f"--mesh renders its own set and trains on it; --datacfg {args.datacfg} is another set: "
                        f"give one of the two")
    cli.check_positive("--images-per-object", args.images_per_object)
    cli.check_positive("--scenes", args.scenes, minimum=0)


def job_for(args) -> MeshJob:
    """The job of this --mesh run: MESH for one mesh, MESH_MULTI for several."""
    return MESH_MULTI if len(args.mesh) > 1 else MESH


def fill_mesh_defaults(args, job: MeshJob) -> None:
    """The job's flag values where the command line left them (a --minutes budget replaces its epochs)."""
    cli.fill_main_job_defaults(args, {**job.defaults(), "mesh_units": DEFAULT_UNITS})
    if len(args.mesh) > 1 and args.scenes < 1:
        raise FlagError(f"--scenes {args.scenes}: a multi-object model trains on scenes of the meshes together; "
                        f"give at least 1")
    if len(args.mesh) == 1 and args.scenes:
        raise FlagError(f"--scenes {args.scenes}: scenes show several objects together; give several --mesh files")


def set_folder(params: dict, root=MESH_ROOT) -> Path:
    """`root/<object names>_<hash>`: the hash (sha256 of the sorted JSON) of a set's parameters
    (synthetic.mesh_set_params), so that other inputs never meet an earlier set's folder."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:HASH_CHARS]
    return Path(root) / f"{'_'.join(m['name'] for m in params['meshes'])}_{digest}"


def run_name(args) -> str:
    """The name of a --mesh run, its backup folder's: the object names joined by '_'."""
    return "_".join(synthetic.mesh_object_names([Path(m) for m in args.mesh]))


def mesh_dataset(args, job: MeshJob, root=MESH_ROOT, quiet: bool = False) -> Path:
    """The `.data` file of the set rendered from args.mesh (rendered now unless it is cached):
    `cfg/<name>.data` for one mesh, `cfg/occlusion.data` for several. The camera from the camera
    flags (utils.resolve_camera), the options from the randomisation flags, the test fraction of
    `job`; args.seed draws the set. MeshError / InputError naming the file or flag before anything is
    written; OverwriteError when its folder holds files the generator did not write."""
    try:
        K, width, height = resolve_camera(*(getattr(args, name) for name in CAMERA_FLAGS))
    except ValueError as exc:  # a DataCfgError is one too, and names its file
        raise FlagError(f"the camera of --mesh: {exc}") from None
    width, height = width or IM_WIDTH, height or IM_HEIGHT
    options = options_from_args(args)
    params = synthetic.mesh_set_params(args.mesh, args.mesh_units, K, width, height, args.images_per_object,
                                       args.seed, options, args.scenes, job.test_fraction)
    folder = set_folder(params, root)
    n_images = len(args.mesh) * args.images_per_object + args.scenes

    def render(out, overwrite):
        synthetic.generate_from_meshes(out, args.mesh, args.mesh_units, K, width, height, args.images_per_object,
                                       args.seed, options, args.scenes, job.test_fraction,
                                       workers=synthetic.auto_workers(n_images), overwrite=overwrite, quiet=quiet)

    cached = synthetic.dataset_params(folder) == (params, True)
    folder = synthetic.ensure_dataset(folder, params, quiet=quiet, make=render, fallback=None, who="the --mesh run")
    if cached and not quiet:
        print(f"the set rendered from {', '.join(map(str, args.mesh))} is in {folder} (rendered before; "
              f"{synthetic.describe(params)})", flush=True)
    names = [m["name"] for m in params["meshes"]]
    return folder / "cfg" / ("occlusion.data" if len(names) > 1 else f"{names[0]}.data")


def closing_commands(score: str, datacfg, modelcfg, weights, multi: bool) -> str:
    """What a --mesh run prints at its end: `score` (the command that scores the rendered test
    split) and the detect.py command for the user's photos (their camera is the set's, in its
    .data file, with the mesh whose box is drawn; the test size and box rule are in
    model_info.json beside the weights, D56)."""
    flag = " --multi" if multi else ""
    return (f"score it on the rendered test split:\n  {score}\n"
            f"run it on your photos ({PHOTOS}: a folder of images, an image, a video or a camera index; taken with "
            f"the camera of the set):\n  python detect.py {PHOTOS}{flag} --datacfg {datacfg} --modelcfg {modelcfg} "
            f"--weightfile {weights}")
