"""Pre-flight checks: every input a training run reads, validated before the first batch.

    report = check_training_inputs("cfg/ape.data", "cfg/yolo-lite-trial3-pose.cfg",
                                   "weights/tiny-yolov2-trial3-voc.weights")

`check_training_inputs` reads the `.data` file (camera, diameter), the mesh, both image lists
with every image, label file (count, finite, range) and training mask, the network cfg, the
init weights against that cfg (`Darknet.check_weights`) and, when distilling, the teacher cfg
and weights. It collects every problem and raises one InputError listing them all, so that a
user fixes them in one go instead of one per run; inputs that are legal but suspicious (empty
label files, a mesh that looks like millimetres) give one warning each, naming them.

Nothing here trains, writes or allocates a model's worth of memory beyond building the two
networks once; the per-file rules live with their readers (linemod_format, utils, MeshPly, darknet).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import dataset
import linemod_format as lf
import utils
import valid
from darknet import WeightsLoad
from errors import InputError
from MeshPly import MeshPly

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


def check_image_list(list_file, *, train: bool, label_width: int = lf.LABEL_WIDTH) -> tuple[list, list, list]:
    """(image paths, problems, empty label files) of one list: every image and label file (and,
    for training, mask) must exist, and every label file must pass `linemod_format.read_label_rows`."""
    paths = lf.read_list(list_file)
    problems, empty = [], []
    for i, path in enumerate(paths):
        files = {"image": path, "label file": lf.label_path(path)}
        if train:
            try:
                files["mask"] = lf.mask_path(path)
            except ValueError as exc:
                problems.append(str(exc))
                continue
        missing = [f"{f}: {kind} not found (entry {i + 1} of {list_file})" for kind, f in files.items()
                   if not os.path.isfile(f)]
        if missing and not os.path.isfile(path):  # the list could not place the entry: its label and mask
            missing = missing[:1]                  # paths derive from it, so report the image alone
        if missing:
            problems.extend(missing)
            continue
        try:
            if lf.read_label_rows(files["label file"], label_width).size == 0:
                empty.append(files["label file"])
        except InputError as exc:
            problems.append(str(exc))
    return paths, problems, empty


def _summarise(problems: list) -> list:
    if len(problems) <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more like these"]


def check_training_inputs(datacfg, modelcfg, initweights=None, *, until_last: bool = True,
                          allow_partial: bool = False, teacher_cfg=None, teacher_weights=None,
                          bg_dir=None) -> TrainingInputs:
    """Check everything a single-object training run reads; return what was found.

    datacfg: the `.data` file (train, valid, mesh, camera keys, diam); modelcfg: the student cfg;
    initweights: loaded with `load_weights_until_last` (or `load_weights` when not `until_last`),
    refused when it fills less than the network unless `allow_partial`; teacher_cfg and
    teacher_weights (both or neither): a full load, the file must fit exactly; bg_dir: the
    background folder, if any. Raises InputError listing every problem found. Warns, one line
    each, about empty label files (train and valid) and a mesh that looks like millimetres.
    """
    problems: list[str] = []
    opts = lf.read_data_cfg(datacfg, resolve_paths=True)  # DataCfgError: nothing else can be checked
    report = TrainingInputs(opts)

    def attempt(fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except (ValueError, OSError) as exc:  # InputError is a ValueError; a missing folder an OSError
            problems.append(str(exc))
            return None

    attempt(utils.camera_from_data_cfg, opts, datacfg)
    if "diam" in opts:
        attempt(lf.data_cfg_number, opts, "diam", datacfg, positive=True)
    if "mesh" not in opts:
        problems.append(f"{datacfg}: no 'mesh' key (expected a line 'mesh = <path>')")
    else:
        mesh = attempt(MeshPly, opts["mesh"])
        if mesh is not None and len(mesh.vertices) < 2:
            problems.append(f"{opts['mesh']}: the mesh has {len(mesh.vertices)} vertices; metrics need at least 2")

    model = attempt(valid.check_model_cfg, modelcfg)  # CfgError, or a head that does not match [region]
    label_width = lf.LABEL_WIDTH if model is None else 2 * model.num_keypoints + 3
    if model is not None and initweights:
        report.init_weights = attempt(model.check_weights, initweights, until_last=until_last,
                                      allow_partial=allow_partial)
    if (teacher_cfg is None) != (teacher_weights is None):
        problems.append("distillation needs both a teacher cfg and teacher weights")
    elif teacher_cfg is not None:
        teacher = attempt(valid.check_model_cfg, teacher_cfg)
        if teacher is not None:  # a full load: the file must fill the teacher exactly
            report.teacher_weights = attempt(teacher.check_weights, teacher_weights)

    for key, train in (("train", True), ("valid", False)):
        if key not in opts:
            problems.append(f"{datacfg}: no '{key}' key (expected a line '{key} = <image list>')")
            continue
        found = attempt(check_image_list, opts[key], train=train, label_width=label_width)
        if found is None:
            continue
        paths, list_problems, empty = found
        problems.extend(_summarise(list_problems))
        setattr(report, f"n_{key}", len(paths))
        report.empty_labels[key] = empty
        if empty:
            what = "training images have no object to learn from" if train else "test images have no object to score"
            warnings.warn(f"{opts[key]}: {len(empty)} of {len(paths)} label files are empty, so {len(empty)} "
                          f"{what} (first: {empty[0]})", stacklevel=2)
    if bg_dir is not None:
        attempt(dataset.list_images, bg_dir)
    if problems:
        raise InputError("cannot start training:\n  " + "\n  ".join(dict.fromkeys(problems)))
    return report
