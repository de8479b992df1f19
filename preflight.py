"""Pre-flight checks: every input a training run reads, validated before the first batch.

    report = check_training_inputs("cfg/ape.data", "cfg/yolo-lite-trial3-pose.cfg",
                                   "weights/tiny-yolov2-trial3-voc.weights")

`check_training_inputs` is the one pre-flight of both training scripts (train.py and
train_multi.py, through `training.check_inputs`); what differs is the data (its `check_tests` and
`extra_lists`). It reads the `.data` file (camera, diameter), the mesh, the image lists
with every image header (size against the `.data` width and height, bit depth, EXIF orientation,
pixel count; the pixels are not decoded: design D61), label file (count, finite, range) and
training mask (its size against the image's), the network cfg, the init weights against that
cfg (`Darknet.check_weights`) and, when distilling, the teacher cfg and weights. It collects
every problem and raises one InputError listing them all, so that a user fixes them in one go
instead of one per run; inputs that are legal but suspicious (empty label files, a label point
far outside the image, a list entry given twice, a mesh that looks like millimetres or is flat,
a focal length no camera has) give one warning each, naming them. The test lists of valid.py,
valid_multi.py and train.py --also-valid (`evaluation.check_test_list`,
`evaluation.check_occlusion_test_images`) are scanned with the same `check_image_list`.

Nothing here trains, writes or allocates a model's worth of memory beyond building the two
networks once; the per-file rules live with their readers (linemod_format, dataset, utils,
MeshPly, darknet).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import image_files
import linemod_format as lf
import utils
from darknet import WeightsLoad
from errors import InputError
from MeshPly import MeshPly
from model_loading import check_model_cfg

MAX_LISTED = 5  # problems of one kind listed before "... and N more"


@dataclass
class TrainingInputs:
    """What the checks found: the `.data` options, the list sizes and the weights reports."""
    options: dict
    n_train: int = 0
    n_valid: int = 0
    empty_labels: dict = field(default_factory=dict)  # "train"/"valid" -> label files without an object
    init_weights: WeightsLoad | None = None
    teacher_weights: WeightsLoad | None = None


@dataclass
class ListScan:
    """One image list as `check_image_list` found it: its paths, what refuses it (problems) and
    what is legal but worth a warning (empty label files, points far outside, entries listed twice)."""
    paths: list
    problems: list = field(default_factory=list)
    empty: list = field(default_factory=list)
    far: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)


def check_image_list(list_file, *, train: bool, label_width: int = lf.LABEL_WIDTH, size=None, size_from: str = "",
                     label_of: Callable[[str], str] = lf.label_path) -> ListScan:
    """Scan one list: every image, label file and (for training) mask must be a regular file;
    every image header must pass `image_files.check_image_header` (of `size` (w, h) when given, which
    `size_from` names), every mask be the size of its image, every label file pass
    `linemod_format.read_label_rows`. label_of: the label file of an image (the OCCLUSION tests
    read another folder). Raises what `read_list` raises for the list itself."""
    return check_images(lf.read_list(list_file), list_file, train=train, label_width=label_width, size=size,
                        size_from=size_from, label_of=label_of)


def check_images(paths, source, *, train: bool, label_width: int = lf.LABEL_WIDTH, size=None, size_from: str = "",
                 label_of: Callable[[str], str] = lf.label_path) -> ListScan:
    """`check_image_list` of image paths that `source` (a list file, or words naming them) gives."""
    scan = ListScan(list(paths), duplicates=lf.duplicates(paths))
    for i, path in enumerate(paths):
        files = {"image": path, "label file": label_of(path)}
        if train:
            try:
                files["mask"] = lf.mask_path(path)
            except ValueError as exc:
                scan.problems.append(str(exc))
                continue
        missing = [f"{f}: {kind} {_absent(f)} (entry {i + 1} of {source})" for kind, f in files.items()
                   if not os.path.isfile(f)]
        if missing and not os.path.exists(path):  # the list could not place the entry: its label and mask
            missing = missing[:1]                  # paths derive from it, so report the image alone
        if missing:
            scan.problems.extend(missing)
            continue
        try:
            header = image_files.check_image_header(path, "image", size, size_from, decode=True)
            if train:
                image_files.check_image_header(files["mask"], "mask", header.size, f"the size of its image {path}")
            rows = lf.read_label_rows(files["label file"], label_width)
        except InputError as exc:
            scan.problems.append(str(exc))
            continue
        if rows.size == 0:
            scan.empty.append(files["label file"])
        elif lf.far_outside(rows):
            scan.far.append(files["label file"])
    return scan


def _absent(path) -> str:
    return "is not a regular file (a folder, FIFO or device)" if os.path.exists(path) else "not found"


def warn_list_oddities(list_file, scan: ListScan, use: str) -> None:
    """One warning each for entries listed twice and for label points far outside the image.

    use: what the list's images are for ('trained on', 'scored')."""
    n = len(scan.paths)
    if scan.duplicates:
        warnings.warn(f"{list_file}: {len(scan.duplicates)} of {n} entries are listed more than once, so they are "
                      f"{use} more than once (first: {scan.duplicates[0]})", stacklevel=3)
    if scan.far:
        warnings.warn(f"{list_file}: {len(scan.far)} label files have a point more than "
                      f"{lf.LABEL_WARN_OUTSIDE:g} image size outside the image (first: {scan.far[0]}); check "
                      f"that their coordinates are normalised by this image size", stacklevel=3)


def check_backgrounds(bg_dir) -> list:
    """The problems of the background images of --bg-dir: each header read as the lists' are
    (a regular file, within the pixel cap, 8-bit); raises what `image_files.list_images` raises."""
    problems = []
    for path in image_files.list_images(bg_dir):
        try:
            mode = image_files.read_header(path, "background image").mode
            image_files.check_bit_depth(path, mode, "background image")
        except InputError as exc:
            problems.append(str(exc))
    return problems


def summarise(problems: list) -> list:
    """The first MAX_LISTED problems, then one line counting the rest."""
    if len(problems) <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more like these"]


def check_training_inputs(datacfg, modelcfg, initweights=None, *, until_last: bool = True,
                          allow_partial: bool = False, teacher_cfg=None, teacher_weights=None,
                          bg_dir=None, check_tests: Callable | None = None,
                          extra_lists: dict | None = None) -> TrainingInputs:
    """Check everything a training run reads, single- or multi-object; return what was found.

    datacfg: the `.data` file (train, the camera keys, and what the test reads); modelcfg: the
    student cfg (its head, and its 2K+3 label width for every label file); initweights: loaded
    with `load_weights_until_last` (or `load_weights` when not `until_last`), refused when it
    fills less than the network unless `allow_partial`; teacher_cfg and teacher_weights (both or
    neither): a full load, the file must fit exactly; bg_dir: the background folder, if any.

    What differs between the two training scripts is the data, and only that is a parameter:
    check_tests(model) -> problems (model: the network of modelcfg, None when it is refused)
    checks what the run tests on; None: the single-object test (the `mesh`, `diam` and `valid`
    keys). extra_lists: {name: image paths} trained on besides the `train` list (the objects
    pasted around the main one, design §6.3), checked as it is.

    Raises InputError listing every problem found. Warns, one line each, about empty label files,
    label points far outside the image and entries listed twice, a mesh that looks like
    millimetres or is flat, an unreal focal length.
    """
    problems: list[str] = []
    opts = lf.read_data_cfg(datacfg, resolve_paths=True)  # DataCfgError: nothing else can be checked
    report = TrainingInputs(opts)
    camera = attempt(problems, utils.camera_from_data_cfg, opts, datacfg)
    size = None if camera is None else camera[1:]  # every image must be the .data width x height
    size_from = f"the width and height of {datacfg}"

    missing = [f"{what} not found: {path}" for what, path in (("init weights", initweights),
                                                             ("teacher cfg", teacher_cfg),
                                                             ("teacher weights", teacher_weights))
               if path and not os.path.isfile(path)]
    model = attempt(problems, check_model_cfg, modelcfg)  # CfgError, or a head that does not match [region]
    problems.extend(missing)
    label_width = lf.LABEL_WIDTH if model is None else 2 * model.num_keypoints + 3
    if model is not None and initweights and os.path.isfile(initweights):
        report.init_weights = attempt(problems, model.check_weights, initweights, until_last=until_last,
                                      allow_partial=allow_partial)
    if (teacher_cfg is None) != (teacher_weights is None):
        problems.append("distillation needs both a teacher cfg and teacher weights")
    elif teacher_cfg is not None and os.path.isfile(teacher_cfg) and os.path.isfile(teacher_weights):
        teacher = attempt(problems, check_model_cfg, teacher_cfg)
        if teacher is not None:  # a full load: the file must fill the teacher exactly
            report.teacher_weights = attempt(problems, teacher.check_weights, teacher_weights)

    lists = (("train", True),) if check_tests else (("train", True), ("valid", False))
    for key, train in lists:
        if key not in opts:
            problems.append(f"{datacfg}: no '{key}' key (expected a line '{key} = <image list>')")
            continue
        scan = attempt(problems, check_image_list, opts[key], train=train, label_width=label_width, size=size,
                       size_from=size_from)
        if scan is not None:
            problems.extend(summarise(scan.problems))
            report_list(report, key, opts[key], scan, train)
    for name, paths in (extra_lists or {}).items():
        scan = check_images(paths, f"the train list of {name}", train=True, label_width=label_width, size=size,
                            size_from=size_from)
        problems.extend(summarise(scan.problems))
    problems.extend(check_tests(model) if check_tests else single_object_tests(opts, datacfg))
    if bg_dir is not None:
        problems.extend(summarise(attempt(problems, check_backgrounds, bg_dir) or []))
    if problems:
        raise InputError("cannot start training:\n  " + "\n  ".join(dict.fromkeys(problems)))
    return report


def attempt(problems: list, fn, *args, **kw):
    """fn(*args, **kw), or None with its error's message appended to `problems`."""
    try:
        return fn(*args, **kw)
    except (ValueError, OSError) as exc:  # InputError is a ValueError; a missing folder an OSError
        problems.append(str(exc))
        return None


def single_object_tests(opts: dict, datacfg) -> list:
    """The problems of a single-object run's test besides its `valid` list (scanned with the
    training list): the `.data` diameter and the mesh."""
    problems = []
    if "diam" in opts:
        attempt(problems, lf.data_cfg_number, opts, "diam", datacfg, positive=True)
    if "mesh" not in opts:
        problems.append(f"{datacfg}: no 'mesh' key (expected a line 'mesh = <path>')")
    else:
        mesh = attempt(problems, MeshPly, opts["mesh"])
        if mesh is not None:  # a point or a line gives no pose; a flat mesh a warning
            attempt(problems, utils.check_mesh_vertices, mesh.vertices, opts["mesh"])
    return problems


def report_list(report: TrainingInputs, key: str, source, scan: ListScan, train: bool) -> None:
    """Record one scanned list in `report` (its size, its empty label files); warn once about empty
    label files and once about each oddity (`warn_list_oddities`)."""
    setattr(report, f"n_{key}", len(scan.paths))
    report.empty_labels[key] = empty = scan.empty
    if empty:
        what = "training images have no object to learn from" if train else "test images have no object to score"
        warnings.warn(f"{source}: {len(empty)} of {len(scan.paths)} label files are empty, so {len(empty)} "
                      f"{what} (first: {empty[0]})", stacklevel=3)
    warn_list_oddities(source, scan, "trained on" if train else "scored")
