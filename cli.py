"""One command-line vocabulary for every script: each flag name means one thing everywhere.

Every script builds its parser from `default_argument_parser` and the `add_*` helpers below, so
the same flag has the same spelling, meaning (the first words of its help), type and default
convention in train.py, valid.py, detect.py, the multi-object scripts, the tools and the
benchmarks (docs/design.md §15; tests/test_cli.py builds every parser and checks it):

    --datacfg (alias --data)      a `.data` file                      add_datacfg
    --modelcfg                    a network `.cfg`                    add_model
    --weightfile                  weights to evaluate or run          add_model(weights="weightfile")
    --initweightfile              weights to start training from      add_model(weights="initweightfile")
    DATACFG MODELCFG WEIGHTS      the original positional form        add_positional / merge_positional
    --device                      auto, cpu, cuda, cuda:1, ...        add_device / resolve_device
    --train-size, --test-size     square input sizes, multiples of 32 add_sizes / check_size
    --batch-size                  images per batch                    add_batch_size
    --workers                     worker processes (loader, generator) add_workers
    --seed                        the seed of every random stream     add_seed
    --pnp, --resample             PnP solver, PIL resize filter       add_pnp, add_resample
    --box-rule                    max cell or the paper's 3x3 vote    add_box_rule
    --input-filter                median or blur of a test image      add_input_filter
    --objects                     which objects, by name              add_objects
    --num-objects                 how many objects to generate        add_num_objects
    --distiled (alias --distill)  the fork's distillation switch      add_distiled
    --out, --out-file             an output folder, an output file    add_out

A flag that was renamed keeps its old spelling as a hidden alias that prints one warning line
naming the new one (`add_alias`); an original script's own spelling of another flag stays without a warning
(`add_alias(..., deprecated=False)`). Names are never abbreviated (`--back` is no flag): a
prefix would be a second name, with another meaning in another script.

Values that need no file are checked by the helpers (`check_size`, `check_positive`); they raise
errors.FlagError, which `errors.run_cli` turns into a one-line message and exit status 2. Output
paths are checked before the work starts (`check_output_file`, `check_output_dir`: OutputPathError).
Default paths are found from the current folder, else from the repository's (`find_path`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from pathlib import Path

from errors import FlagError, OutputPathError
from linemod_format import probe_write

STRIDE = 32  # design §1.5: every pose network has output stride 32
# 128 cells a side: four times LINEMOD's largest side; a larger input only exhausts memory
# (`--test-size 100000` asks for 10^10 pixels), and the ONNX export's dynamic grid stops there too
MAX_SIZE = 128 * STRIDE
MAX_SEED = 2**32 - 1  # numpy's legacy seed, which seed_everything sets, takes 32 bits
DEVICE_TYPES = ("cpu", "cuda")  # what the scripts run on (mps and meta lack operators we use)
MIN_FREE_OUTPUT_BYTES = 1 << 20  # an output folder with less room than this is full for our purposes


def default_argument_parser(doc: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser whose description is the script's docstring, shown as written (usage lines kept),
    that takes every flag by its whole name only (no abbreviations: one name, one meaning)."""
    return argparse.ArgumentParser(description=doc, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)


class Alias(argparse.Action):
    """Another spelling of a flag (`add_alias`): sets what the flag sets; when deprecated, prints
    one line on stderr naming the new spelling (in errors.run_cli's warning form, whether or not
    the script parses inside it)."""

    def __init__(self, option_strings, dest, target: argparse.Action, new: str, deprecated: bool, **kw):
        super().__init__(option_strings, dest, **kw)
        self.target, self.new, self.deprecated = target, new, deprecated

    def __call__(self, parser, namespace, values, option_string=None):
        if self.deprecated:
            print(f"{parser.prog}: warning: {option_string} is deprecated: use {self.new} (the same flag; "
                  f"docs/design.md §15)", file=sys.stderr)
        self.target(parser, namespace, values, self.new)


def add_alias(p: argparse.ArgumentParser, old: str, new: str, deprecated: bool = True) -> None:
    """Keep `old` as a spelling of flag `new` (already in `p`), hidden from --help.

    deprecated: a renamed flag (docs/design.md §15): each use prints one line naming `new`. False: an
    original script's own spelling (design §7.4), kept as it is, without a warning."""
    target = next(a for a in p._actions if new in a.option_strings)
    where = p
    if target.required:  # either spelling gives it: one of the two is required (and not both)
        target.required = False
        where = p.add_mutually_exclusive_group(required=True)
        where._group_actions.append(target)
    where.add_argument(old, dest=target.dest, nargs=target.nargs, const=target.const, type=target.type,
                       choices=target.choices, metavar=target.metavar, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS, action=Alias, target=target, new=new, deprecated=deprecated)


def add_out(p, kind: str = "folder", what: str = "", default=None, required: bool = False,
            why: str = "") -> None:
    """--out (an output folder) or, kind='file', --out-file (an output file): `what` it holds,
    `default` and `why` that default (docs/design.md §15)."""
    name, meaning = ("--out", "output folder") if kind == "folder" else ("--out-file", "output file")
    p.add_argument(name, default=default, required=required, metavar="DIR" if kind == "folder" else "FILE",
                   help=f"{meaning}{': ' + what if what else ''}{_default(default, why, why)}")


# --------------------------------------------------------------------------------------------
# Files: data cfg, network cfg, weights, the original positional form
# --------------------------------------------------------------------------------------------

def add_datacfg(p, what: str = "the object's", default=None, why: str = "", required: bool = False,
                nargs=None) -> None:
    """--datacfg (alias --data): a `.data` file (design §3.2), `what` it describes."""
    p.add_argument("--datacfg", "--data", dest="datacfg", default=default, required=required, nargs=nargs,
                   metavar="DATA", help=f".data file: {what}{_default(default, why, why)}")


def add_model(p, cfg_default=None, cfg_why: str = "", cfg_required: bool = False,
              weights: str | None = "weightfile", weights_default=None, weights_why: str = "",
              weights_required: bool = False, weights_detail: str = "") -> None:
    """--modelcfg and, unless weights is None, --weightfile (evaluate, run) or --initweightfile (train).

    *_why: why that default (a script whose default differs from another's says why, design §15);
    weights_detail: words after the meaning ('loaded until last', ...)."""
    p.add_argument("--modelcfg", default=cfg_default, required=cfg_required, metavar="CFG",
                   help=f"network cfg{_default(cfg_default, cfg_why, cfg_why)}")
    if weights is None:
        return
    if weights not in ("weightfile", "initweightfile"):
        raise ValueError(f"weights must be 'weightfile' or 'initweightfile', not {weights!r}")
    what = "darknet weights to start training from" if weights == "initweightfile" else "darknet weights"
    p.add_argument(f"--{weights}", dest=weights, default=weights_default, required=weights_required, metavar="WEIGHTS",
                   help=f"{what}{': ' + weights_detail if weights_detail else ''}"
                        f"{_default(weights_default, weights_why, weights_why)}")


def add_positional(p, names: tuple[str, ...]) -> None:
    """The original scripts' positional form, e.g. `valid.py DATACFG MODELCFG WEIGHTFILE`."""
    p.add_argument("positional", nargs="*", metavar=" ".join(n.upper() for n in names),
                   help="the original positional form (the same as the flags of these names)")


def merge_positional(args: argparse.Namespace, names: tuple[str, ...]) -> argparse.Namespace:
    """Move `args.positional` into the named attributes; FlagError for too many or a value given twice."""
    values = getattr(args, "positional", None) or []
    if len(values) > len(names):
        raise FlagError(f"at most {_count(len(names))} positional arguments: {' '.join(n.upper() for n in names)}")
    for key, value in zip(names, values):
        if getattr(args, key) is not None:
            raise FlagError(f"{key} given twice: positionally and as --{key}")
        setattr(args, key, value)
    return args


# --------------------------------------------------------------------------------------------
# Device, sizes, batches, workers, seed
# --------------------------------------------------------------------------------------------

def add_device(p, default: str = "auto") -> None:
    """--device: auto (CUDA if available), cpu, cuda, cuda:1, ..."""
    p.add_argument("--device", default=default, help="the device: auto (CUDA if available), cpu, cuda, cuda:1, ...")


def resolve_device(name: str):
    """The torch.device of a --device value; FlagError for another kind than cpu and cuda (mps,
    meta: the networks were never checked there), CUDA asked for and absent, or a GPU index past
    the machine's GPUs."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FlagError(f"--device {name}: not a device ({exc})") from None
    if device.type not in DEVICE_TYPES:
        raise FlagError(f"--device {name}: expected auto, cpu, cuda or cuda:N, found the {device.type!r} kind")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlagError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FlagError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                        f"numbered from 0")
    return device


def warn_amp_unused(amp: bool, device) -> None:
    """One warning when --amp is given for a device where it does nothing (autocast runs on CUDA only)."""
    if amp and device.type != "cuda":
        warnings.warn(f"--amp has no effect on {device.type}: mixed precision runs on CUDA only", stacklevel=2)


def add_sizes(p, train: bool = False, test: bool = True, train_default=None, test_default=None,
              train_why: str = "multi-scale, design §6.5", test_why: str = "the cfg test_width x test_height",
              train_what: str = "", test_what: str = "") -> None:
    """--train-size (the square training size) and / or --test-size (the square input size to test
    at), multiples of STRIDE; *_why: why that default, *_what: words after the meaning."""
    if train:
        p.add_argument("--train-size", type=int, default=train_default, metavar="S",
                       help=f"square training size: {train_what + ', ' if train_what else ''}a multiple of "
                            f"{STRIDE}{_default(train_default, train_why, train_why)}")
    if test:
        p.add_argument("--test-size", type=int, default=test_default, metavar="S",
                       help=f"square input size: {test_what + ', ' if test_what else ''}a multiple of "
                            f"{STRIDE}{_default(test_default, test_why, test_why)}")


def fill_defaults(args: argparse.Namespace, values: dict) -> argparse.Namespace:
    """Set every attribute of `values` that the command line left at None (e.g. a main job's settings)."""
    for key, value in values.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def fill_main_job_defaults(args: argparse.Namespace, values: dict) -> argparse.Namespace:
    """A main job's settings (`fill_defaults`), except that a --minutes budget replaces its epoch
    count: `--minutes 120` trains two hours, not the main job's epochs (whichever ended first)."""
    if getattr(args, "minutes", None):
        values = {k: v for k, v in values.items() if k != "epochs"}
    return fill_defaults(args, values)


def check_size(flag: str, value) -> None:
    """FlagError unless value is None or a positive multiple of the network stride (32) up to MAX_SIZE."""
    if value is not None and (value < STRIDE or value % STRIDE):
        raise FlagError(f"{flag} must be a positive multiple of {STRIDE} (the network stride), found {value}")
    if value is not None and value > MAX_SIZE:
        raise FlagError(f"{flag} must be at most {MAX_SIZE} ({MAX_SIZE // STRIDE} cells a side; LINEMOD images are "
                        f"640x480), found {value}")


def check_positive(flag: str, value, minimum: int = 1) -> None:
    """FlagError unless value is None or >= minimum."""
    if value is not None and value < minimum:
        raise FlagError(f"{flag} must be >= {minimum}, found {value}")


def check_range(flag: str, value, low, high) -> None:
    """FlagError unless value is None or low <= value <= high."""
    if value is not None and not low <= value <= high:
        raise FlagError(f"{flag} must be from {low} to {high}, found {value}")


# --------------------------------------------------------------------------------------------
# Output paths: checked before the work, so that a long evaluation never ends on a bad path
# --------------------------------------------------------------------------------------------

def check_output_dir(flag: str, path) -> Path:
    """Create folder `path` (and its parents) and check that a file can be written there.

    OutputPathError naming the flag when the path (or a parent) is a file, or the folder cannot
    be created or written (read-only file system, no permission) or is full."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a file; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{flag} {path}: cannot create the output folder ({exc.strerror or exc})") from None
    _probe_write(flag, path)
    return path


def check_output_file(flag: str, path) -> Path:
    """Check that file `path` can be written: not a folder, its folder creatable and writable, with room.

    The folder is created; the file itself is not touched (an existing one is replaced or
    appended to later, by the script's own rule)."""
    raw = os.fspath(path)
    path = Path(path)
    if path.is_dir() or raw.endswith(os.sep):
        raise OutputPathError(f"{flag} {raw}: is a folder; expected a file name")
    check_output_dir(flag, path.parent)
    return path


def _probe_write(flag: str, folder: Path) -> None:
    """OutputPathError unless a file can be created in `folder` and the file system has room."""
    try:
        probe_write(folder)
    except OSError as exc:
        raise OutputPathError(f"{flag} {folder}: cannot write there ({exc.strerror or exc})") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_OUTPUT_BYTES:
        raise OutputPathError(f"{flag} {folder}: the file system is full ({free} bytes free)")


def add_mesh(p, what: str, nargs=None, required: bool = False) -> None:
    """--mesh: the object's mesh file (PLY, or OBJ where it is rendered); `what` says what the script does with it."""
    p.add_argument("--mesh", nargs=nargs, required=required, default=None, metavar="FILE",
                   help=f"mesh of the object: {what}")


def add_mesh_units(p, choices, default="m", why: str = "LINEMOD's metres; BOP meshes are mm") -> None:
    """--mesh-units: the units of the --mesh file's coordinates (m, or mm for BOP meshes)."""
    shown = f"default: {why}" if default is None else f"default {default}: {why}"
    p.add_argument("--mesh-units", choices=sorted(choices), default=default,
                   help=f"units of the mesh coordinates ({shown})")


def add_camera(p, title: str) -> None:
    """The camera flags (utils.resolve_camera): a .data file, then any of its values overridden."""
    cam = p.add_argument_group(title)
    cam.add_argument("--camera-data", default=None, help=".data file to take fx, fy, u0, v0, width, height from")
    for key in ("fx", "fy", "u0", "v0"):
        cam.add_argument(f"--{key}", type=float, default=None, help="pixels")
    cam.add_argument("--width", type=int, default=None, help="image width in pixels")
    cam.add_argument("--height", type=int, default=None, help="image height in pixels")


def add_batch_size(p, default=None, why: str = "", what: str = "") -> None:
    """--batch-size: images per batch (forward pass, or training step); `what` after the meaning."""
    p.add_argument("--batch-size", type=int, default=default, metavar="N",
                   help=f"images per batch{': ' + what if what else ''}{_default(default, why, why)}")


def add_workers(p, default=None, why: str = "", what: str = "of the data loader", nargs=None) -> None:
    """--workers: worker processes (data loader, or the generator); a list with nargs='+' in benchmarks."""
    p.add_argument("--workers", type=int, default=default, nargs=nargs, metavar="N",
                   help=f"worker processes: {what}{_default(default, why, why)}")


def add_seed(p, default: int = 0, what: str = "") -> None:
    """--seed: the seed of every random stream (shuffle, augmentation, generation, split), 0..MAX_SEED."""
    p.add_argument("--seed", type=seed_value, default=default,
                   help=f"random seed: {what + ', ' if what else ''}0 to {MAX_SEED} (default {default})")


def seed_value(text: str) -> int:
    """A --seed value: a whole number from 0 to MAX_SEED (argparse prints the error and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED}, found {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED}, found {value}")
    return value


def add_conf_thresh(p, default=None, what: str = "") -> None:
    """--conf-thresh: the multi-object box score threshold, det_conf * class prob (design §4.2)."""
    p.add_argument("--conf-thresh", type=float, default=default, metavar="T",
                   help=f"box score threshold: det_conf * class prob of a multi-object box{', ' + what if what else ''}"
                        f"{_default(default, 'the cfg conf_thresh')}")


def add_pnp(p) -> None:
    """--pnp: the OpenCV PnP solver (the original: iterative, design §9.1)."""
    from utils import PNP_METHODS

    p.add_argument("--pnp", choices=sorted(PNP_METHODS), default="iterative",
                   help="PnP solver (default iterative: the original's)")


def add_box_rule(p, default_help: str = "the rule the weights were trained with (model_info.json beside them), "
                                       "else max") -> None:
    """--box-rule: which cell(s) give an image's 9 points (design §4.1, D54)."""
    from utils import BOX_RULES

    p.add_argument("--box-rule", choices=BOX_RULES, default=None,
                   help="max: the original's most confident cell; vote: the paper's test-time rule, the corners "
                        f"are the confidence-weighted mean over the 3x3 cells around it (D54). Default: {default_help}")


def add_input_filter(p, default_help: str = "the filter the weights were trained for (model_info.json beside "
                                           "them), else none") -> None:
    """--input-filter: what every test image goes through before it is resized to the network (D69)."""
    p.add_argument("--input-filter", default=None, metavar="FILTER",
                   help="filter applied to every image, at the size it is read, before it is resized to the network "
                        "input (D69): none, median:K (a K x K median, K odd: takes away lines thinner than about "
                        "K/2 pixels and keeps edges) or gauss:SIGMA (a Gaussian blur of SIGMA pixels). Default: "
                        + default_help)


def check_input_filter(value) -> None:
    """--input-filter must be a filter image.parse_input_filter reads (or None: not given)."""
    from image import parse_input_filter

    if value is not None:
        try:
            parse_input_filter(value)
        except ValueError as exc:
            raise FlagError(f"--input-filter {value}: {exc}") from None


def add_resample(p, what: str = "") -> None:
    """--resample: the PIL resize filter (bicubic: Pillow >= 7; nearest: Pillow < 7, design §6.4)."""
    from image import DEFAULT_RESAMPLE, RESAMPLE_FILTERS

    p.add_argument("--resample", choices=tuple(RESAMPLE_FILTERS), default=DEFAULT_RESAMPLE,
                   help=f"resize filter{': ' + what if what else ''} (default {DEFAULT_RESAMPLE}; nearest: Pillow < 7, "
                        f"design §6.4)")


# --------------------------------------------------------------------------------------------
# Objects and the fork's distillation switch
# --------------------------------------------------------------------------------------------

def add_objects(p, what: str) -> None:
    """--objects NAME [NAME ...]: which objects, by name (commas also separate: `ape,can`)."""
    p.add_argument("--objects", nargs="+", default=None, metavar="NAME", help=f"which objects, by name: {what}")


def object_list(values) -> list[str] | None:
    """The --objects values as a flat list (`ape can`, `ape,can` and `ape, can` all give ['ape', 'can'])."""
    if values is None:
        return None
    return [v for value in values for v in (s.strip() for s in str(value).split(",")) if v]


def add_num_objects(p, default=None, why: str = "", what: str = "") -> None:
    """--num-objects N: how many objects to generate."""
    p.add_argument("--num-objects", type=int, default=default, metavar="N",
                   help=f"number of objects{': ' + what if what else ''}{_default(default, why, why)}")


def add_distiled(p, what: str) -> None:
    """--distiled (the fork's spelling, alias --distill): nonzero switches distillation on."""
    p.add_argument("--distiled", "--distill", dest="distiled", type=int, default=0,
                   help=f"the fork's distillation switch: {what}")


def _default(value, otherwise: str | None = None, why: str = "") -> str:
    """' (default VALUE)', ' (default VALUE: WHY)' or, for None, ' (default: OTHERWISE)'."""
    if value is not None:
        return f" (default {value}{': ' + why if why else ''})"
    return f" (default: {otherwise})" if otherwise else ""


def _count(n: int) -> str:
    return {1: "one", 2: "two", 3: "three"}.get(n, str(n))


ROOT = Path(__file__).resolve().parent  # the repository: every default path is relative to it


def find_path(path, *bases) -> str:
    """`path` as given when it exists from the current directory, else from the first of `bases`
    (folders; default: the repository's) where it exists, relative to the current directory;
    unchanged when found nowhere. The one rule for default paths of every script."""
    for base in bases or (ROOT,):
        if not Path(path).exists() and (Path(base) / path).exists():
            return os.path.relpath(Path(base) / path)
    return str(path)
