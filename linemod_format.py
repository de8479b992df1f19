"""The LINEMOD file formats, in one place: label rows, derived paths, lists, `.data` files, pose files.

Every reader and writer of the dataset layout (the loaders, valid.py, detect.py, the tools)
goes through this module, so a rule is written once (docs/design.md design §3):

    LINEMOD/<obj>/JPEGImages/NNNNNN.jpg          6-digit image index
    LINEMOD/<obj>/labels/NNNNNN.txt              rows of 21 numbers, '%.6f', space separated
    LINEMOD/<obj>/mask/NNNN.png                  a leading '00' of the stem dropped, 0 / 255
    LINEMOD/<obj>/labels_occlusion/NNNNNN.txt    one row, points in the OCCLUSION order (design §9.6)
    LINEMOD/<obj>/train.txt, test.txt            one image path per line
    cfg/<name>.data                              'key = value' lines (design §3.2)

A label row is [class, x0, y0, ..., x8, y8, x range, y range], normalised by the image size
(design §3.1): point 0 is the model origin, points 1..8 the box corners in the §9.2 order.

Reading order: constants, label rows, paths, image lists, `.data` files, the tools' pose files,
the train/test split, `atomic_write`, the one way this project writes a file, and the metric CSVs
(`append_csv`: valid.py --csv and the training logs). The module
needs only numpy, so every other module (darknet.py and MeshPly.py included) can import it.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from errors import DataCfgError, InputError, LabelError, LayoutError, PoseFileError

# design §3.3: the LINEMOD / OCCLUSION camera and image size (the `.data` defaults)
IM_WIDTH, IM_HEIGHT = 640, 480
LINEMOD_FX, LINEMOD_FY = 572.4114, 573.5704
LINEMOD_U0, LINEMOD_V0 = 325.2611, 242.0489

# design §3.1: 9 keypoints, 21 numbers per object, targets padded to 50 objects
NUM_KEYPOINTS = 9
LABEL_WIDTH = 2 * NUM_KEYPOINTS + 3  # class, 18 coordinates, x range, y range
MAX_OBJECTS = 50
LABEL_FMT = "%.6f"  # LINEMOD label files hold 6 decimals

IMAGE_DIGITS = 6  # design §3.4: JPEGImages/NNNNNN.jpg
JPEG_QUALITY = 95  # the JPEG images the tools write
IMAGE_DIRS = ("JPEGImages", "images")  # folders whose name is swapped for labels / mask
LIST_SEARCH_LEVELS = 3  # list entries may be relative to an ancestor of the list file's folder

# design §9.6: valid_multi re-orders OCCLUSION GT points with new[i] = old[OCCLUSION_PERM[i]]
# before PnP; so a file in OCCLUSION order holds occ[j] = std[OCCLUSION_PERM_INV[j]].
OCCLUSION_PERM = (0, 1, 3, 5, 7, 2, 4, 6, 8)
OCCLUSION_PERM_INV = tuple(int(i) for i in np.argsort(OCCLUSION_PERM))  # (0, 1, 5, 2, 6, 3, 7, 4, 8)

# design §3.2 and D7: keys every script may read, with the LINEMOD values when a file lacks them
DATA_CFG_DEFAULTS = {
    "gpus": "0", "num_workers": "10",
    "width": str(IM_WIDTH), "height": str(IM_HEIGHT),
    "fx": str(LINEMOD_FX), "fy": str(LINEMOD_FY), "u0": str(LINEMOD_U0), "v0": str(LINEMOD_V0),
}
DATA_PATH_KEYS = ("train", "valid", "mesh", "backup", "tr_range")  # plus valid<k>, mesh<k>
# A label coordinate is normalised by the image size; corners may leave the image (design §3.1),
# but a point more than 10 image sizes away is not a LINEMOD label: most often pixels unnormalised.
LABEL_COORD_LIMIT = 10.0
# Within that limit, a point more than one image size outside the image is legal (a corner of a
# large object close to the camera) but rare enough to be worth a warning (design D61).
LABEL_WARN_OUTSIDE = 1.0


# --------------------------------------------------------------------------------------------
# Label rows (design §3.1)
# --------------------------------------------------------------------------------------------

def read_label_rows(path, width: int = LABEL_WIDTH) -> np.ndarray:
    """All objects of a label file as (n, width) float64 rows; an empty file gives (0, width).

    A line holds one object or several whole objects (the original reshapes the file's numbers
    into rows of 21, so two objects on one line read as two rows: design D40); blank lines are
    skipped. A row is [class, x0, y0, ..., x_{K-1}, y_{K-1}, x range, y range], coordinates
    normalised by the image size. Raises FileNotFoundError for a missing file and LabelError
    naming the file and line for a file that is not text, a partial object (a count that is not
    a multiple of `width`), a non-number, NaN or inf, a class id that is not a whole number >= 0,
    a coordinate outside [-LABEL_COORD_LIMIT, LABEL_COORD_LIMIT] (10 image sizes: labels written
    in pixels), x0 = 0 (the empty-slot mark of the targets) or an x/y range larger than
    2 * LABEL_COORD_LIMIT; a path that is not a regular file (a FIFO would hang the read).
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isfile(path):
        raise LabelError(f"{path}: not a regular file (a folder, FIFO or device); expected a label file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: label file not found") from None
    except UnicodeDecodeError as exc:
        raise LabelError(f"{path}: not a text file (byte {exc.start} is not UTF-8); expected {width} "
                         f"numbers per object") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) % width:
            raise LabelError(f"{where}: expected {width} numbers per object, found {len(fields)}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise LabelError(f"{where}: expected {width} numbers, found {_clip(line)!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise LabelError(f"{where}: expected finite numbers, found NaN or inf in {_clip(line)!r}")
        for i in range(0, len(values), width):
            _check_label_row(values[i:i + width], where)
            rows.append(values[i:i + width])
    return np.array(rows, dtype=np.float64).reshape(-1, width)


def _clip(line: str, n: int = 200) -> str:
    line = line.strip()
    return line if len(line) <= n else line[:n] + "..."


def _check_label_row(values: list, where: str) -> None:
    cls, coords, ranges = values[0], values[1:-2], values[-2:]
    if cls < 0 or not cls.is_integer():
        raise LabelError(f"{where}: class id {cls:g}; expected a whole number >= 0")
    if coords[0] == 0:
        raise LabelError(f"{where}: x0 = 0, which marks an empty slot in the targets (design §3.1): the loss and "
                         f"the evaluation would ignore this object and every later one of the file; expected the "
                         f"centroid's x normalised by the image width (an all-zero row is not an object)")
    far = [i for i, v in enumerate(coords) if abs(v) > LABEL_COORD_LIMIT]
    if far:
        i = far[0]
        raise LabelError(f"{where}: {'xy'[i % 2]}{i // 2} = {coords[i]:g} is more than {LABEL_COORD_LIMIT:g} image "
                         f"sizes outside the image; expected coordinates normalised by the image size "
                         f"(pixels divided by width and height)")
    if any(abs(r) > 2 * LABEL_COORD_LIMIT for r in ranges):
        raise LabelError(f"{where}: x/y range {ranges[0]:g} {ranges[1]:g}; expected extents of at most "
                         f"{2 * LABEL_COORD_LIMIT:g} (normalised)")


def far_outside(rows: np.ndarray) -> bool:
    """Whether any point of label rows (n, w) lies more than LABEL_WARN_OUTSIDE image sizes outside the image."""
    coords = np.asarray(rows, dtype=np.float64)[:, 1:-2]
    return bool(np.any((coords < -LABEL_WARN_OUTSIDE) | (coords > 1.0 + LABEL_WARN_OUTSIDE)))


def duplicates(paths) -> list[str]:
    """The entries of a list that appear more than once (each once, in list order), compared as
    normalised absolute paths: each would be trained on or scored twice."""
    seen, twice = set(), {}
    for path in paths:
        key = os.path.normpath(os.path.abspath(os.fspath(path)))
        if key in seen:
            twice.setdefault(key, os.fspath(path))
        seen.add(key)
    return list(twice.values())


def format_label_rows(rows, width: int = LABEL_WIDTH, where: str = "label rows") -> str:
    """Text of a label file: one line per row of `rows` ((n, width) or (width,)), '%.6f' values.

    Raises LabelError (prefixed with `where`) for a wrong shape or a NaN / inf value.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        return ""
    rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
    if rows.ndim != 2 or (rows.size and rows.shape[1] != width):
        raise LabelError(f"{where}: expected label rows (n, {width}), found shape {rows.shape}")
    if not np.all(np.isfinite(rows)):
        bad = int(np.argwhere(~np.isfinite(rows))[0, 0])
        raise LabelError(f"{where}: label row {bad} contains NaN or inf")
    return "".join(" ".join(LABEL_FMT % v for v in row) + "\n" for row in rows)


def write_label_rows(path, rows, width: int = LABEL_WIDTH) -> None:
    """Write label rows as LINEMOD does (one line per object, '%.6f'), atomically, creating the folder."""
    write_text(path, format_label_rows(rows, width, where=os.fspath(path)))


def to_occlusion_order(row: np.ndarray) -> np.ndarray:
    """A (21,) label row with its 9 points moved from the design §9.2 order to the OCCLUSION order (§9.6).

    Inverse of the evaluation's re-ordering: `from_occlusion_order(to_occlusion_order(r)) == r`.
    Class id and the x / y ranges are unchanged (the range covers the same 9 points).
    """
    return _reorder_points(row, OCCLUSION_PERM_INV)


def from_occlusion_order(row: np.ndarray) -> np.ndarray:
    """A (21,) OCCLUSION-order row back in the design §9.2 order: points[i] = occ[OCCLUSION_PERM[i]] (§9.6)."""
    return _reorder_points(row, OCCLUSION_PERM)


def _reorder_points(row: np.ndarray, order) -> np.ndarray:
    row = np.asarray(row, dtype=np.float64)
    pts = row[1:1 + 2 * NUM_KEYPOINTS].reshape(NUM_KEYPOINTS, 2)
    return np.concatenate([row[:1], pts[list(order)].reshape(-1), row[1 + 2 * NUM_KEYPOINTS:]])


# --------------------------------------------------------------------------------------------
# Paths derived from an image path (design §3.4, D31: from the file name, never by substring)
# --------------------------------------------------------------------------------------------

def image_stem(index: int) -> str:
    """'000123' for index 123 (design §3.4)."""
    return f"{index:0{IMAGE_DIGITS}d}"


def mask_stem(stem: str) -> str:
    """The mask file stem of an image stem: a leading '00' dropped ('000123' -> '0123', '012345' kept)."""
    return stem[2:] if stem.startswith("00") else stem


def _sibling_folder(img_path, folder: str) -> tuple[str, str]:
    """(directory, stem) of img_path, with a JPEGImages / images parent folder renamed `folder`."""
    head, name = os.path.split(os.fspath(img_path))
    grand, parent = os.path.split(head)
    if parent in IMAGE_DIRS:
        head = os.path.join(grand, folder)
    return head, os.path.splitext(name)[0]


def label_path(img_path, folder: str = "labels") -> str:
    """`.../<obj>/JPEGImages/000123.jpg` -> `.../<obj>/labels/000123.txt` (also for an `images` folder).

    An image outside such a folder has its label beside it, as the original's replacement gives.
    """
    head, stem = _sibling_folder(img_path, folder)
    return os.path.join(head, stem + ".txt")


def mask_path(img_path) -> str:
    """`.../<obj>/JPEGImages/000123.jpg` -> `.../<obj>/mask/0123.png` (a leading "00" of the stem removed).

    Raises LayoutError when the mask would be the image itself (a PNG outside a JPEGImages folder).
    """
    head, stem = _sibling_folder(img_path, "mask")
    out = os.path.join(head, mask_stem(stem) + ".png")
    if os.path.normpath(out) == os.path.normpath(os.fspath(img_path)):
        raise LayoutError(f"{img_path}: the mask path would be the image itself; expected the image "
                          f"in a {' or '.join(IMAGE_DIRS)} folder")
    return out


def occlusion_label_path(img_path, obj: str) -> str:
    """OCCLUSION test label of `obj` for an image of the scene sequence (design §3.4).

    `.../benchvise/JPEGImages/000123.jpg` -> `.../<obj>/labels_occlusion/000123.txt`.
    """
    head, name = os.path.split(os.fspath(img_path))
    seq_dir = os.path.dirname(head)
    return os.path.join(os.path.dirname(seq_dir), obj, "labels_occlusion", os.path.splitext(name)[0] + ".txt")


# --------------------------------------------------------------------------------------------
# Image lists (design §3.4)
# --------------------------------------------------------------------------------------------

def read_list(list_file, root=None) -> list[str]:
    """Image paths of a list file: one per line, blank lines ignored.

    A relative entry is taken relative to `root` (default: the current directory); if it does
    not exist there, relative to the list file's folder or one of its 3 ancestors (LINEMOD lists
    hold repo-root paths like `LINEMOD/ape/JPEGImages/000001.jpg`). An entry found nowhere is
    returned relative to `root`; the dataset reports it. Raises LayoutError for an empty list or
    one that is not text.
    """
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"{list_file}: image list not found")
    try:
        with open(list_file, encoding="utf-8") as f:
            entries = [line.strip() for line in f.read().splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{list_file}: not a text file (byte {exc.start} is not UTF-8); expected one image "
                          f"path per line") from None
    if not entries:
        raise LayoutError(f"{list_file}: the image list is empty (expected one image path per line)")
    folder = os.path.dirname(os.path.abspath(list_file))
    fallbacks = [folder]
    for _ in range(LIST_SEARCH_LEVELS):
        folder = os.path.dirname(folder)
        fallbacks.append(folder)
    fallbacks = list(dict.fromkeys(fallbacks))
    paths, last_good = [], None
    for entry in entries:
        first = entry if root is None or os.path.isabs(entry) else os.path.join(os.fspath(root), entry)
        if os.path.isabs(entry) or os.path.exists(first):
            paths.append(first)
            continue
        order = ([last_good] if last_good else []) + [b for b in fallbacks if b != last_good]
        for base in order:
            candidate = os.path.normpath(os.path.join(base, entry))
            if os.path.exists(candidate):
                paths.append(candidate)
                last_good = base
                break
        else:
            paths.append(first)
    return paths


def write_list(path, lines) -> None:
    """A list file: one entry per line, newline-terminated, written atomically."""
    write_text(path, "".join(f"{line}\n" for line in lines))


# --------------------------------------------------------------------------------------------
# `.data` files (design §3.2)
# --------------------------------------------------------------------------------------------

def read_data_cfg(datacfg, resolve_paths: bool = False) -> dict:
    """Read a `.data` file (`key = value` lines) into a dict of strings, with the design §3.2 defaults.

    Lines starting with '#' are comments. With `resolve_paths`, the path keys (train, valid,
    mesh, backup, tr_range, valid<k>, mesh<k>) that are relative and do not exist from the current
    directory are resolved against the `.data` file's folder and then its parent (the dataset root).
    Raises FileNotFoundError for a missing file and DataCfgError naming the file (and line) of a
    bad one: not text, a line without '=', an empty key. Values are checked where they are used
    (`data_cfg_number`).
    """
    datacfg = Path(datacfg)
    if not datacfg.is_file():
        raise FileNotFoundError(f"{datacfg}: data cfg not found")
    try:
        text = datacfg.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataCfgError(f"{datacfg}: not a text file (byte {exc.start} is not UTF-8); "
                           f"expected 'key = value' lines") from None
    options = dict(DATA_CFG_DEFAULTS)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise DataCfgError(f"{datacfg}:{lineno}: expected 'key = value', found {raw!r}")
        key, value = line.split("=", 1)
        if not key.strip():
            raise DataCfgError(f"{datacfg}:{lineno}: empty key in {raw!r}; expected 'key = value'")
        options[key.strip()] = value.strip()
    if resolve_paths:
        for key, value in list(options.items()):
            if is_path_key(key) and value and not os.path.isabs(value) and not os.path.exists(value):
                for base in (datacfg.parent, datacfg.parent.parent):
                    if (base / value).exists():
                        options[key] = str(base / value)
                        break
    return options


def data_cfg_number(options: dict, key: str, source="<data cfg>", *, positive: bool = False,
                    integer: bool = False) -> float:
    """`options[key]` as a finite number (an int with `integer`; > 0 with `positive`).

    Raises DataCfgError naming `source` (the `.data` file), the key and the value found when the
    key is missing or its value is not such a number (`width = abc`, `fx = -500`, `diam = nan`).
    """
    if key not in options:
        raise DataCfgError(f"{source}: no '{key}' key (expected a line '{key} = <number>')")
    raw = options[key]
    kind = ("a positive " if positive else "a ") + ("whole number" if integer else "finite number")
    try:
        value = float(raw)
    except ValueError:
        raise DataCfgError(f"{source}: {key} = {raw!r}; expected {kind}") from None
    if not math.isfinite(value) or (positive and value <= 0) or (integer and not value.is_integer()):
        raise DataCfgError(f"{source}: {key} = {raw!r}; expected {kind}")
    return int(value) if integer else value


def is_path_key(key: str) -> bool:
    """Whether a `.data` key names a file or folder: train, valid, mesh, backup, tr_range, valid<k>, mesh<k>."""
    return key in DATA_PATH_KEYS or (key.rstrip("0123456789") in ("valid", "mesh") and key[-1:].isdigit())


def write_data_cfg(path, items) -> None:
    """A `.data` file from (key, value) pairs (or a dict), in the given order, as `key = value` lines.

    Raises DataCfgError for a key or value that would not read back (empty key, '=' in a key, a newline).
    """
    pairs = list(items.items()) if isinstance(items, dict) else list(items)
    for key, value in pairs:
        key, value = str(key), str(value)
        if not key.strip() or "=" in key or "\n" in key + value or key.strip().startswith("#"):
            raise DataCfgError(f"{path}: cannot write the .data entry {key!r} = {value!r}")
    write_text(path, "".join(f"{k} = {v}\n" for k, v in pairs))


def data_cfg_items(name: str, root_rel: str, diam: float, K: np.ndarray, width: int = IM_WIDTH,
                   height: int = IM_HEIGHT, train: str | None = None, valid: str | None = None,
                   mesh: str | None = None, backup: str | None = None) -> list[tuple[str, str]]:
    """Every design §3.2 key of a single-object `.data` file; paths relative to the dataset root.

    root_rel: the object folder relative to the root, e.g. 'LINEMOD/obj00'. diam in metres,
    written with repr() so it reads back exactly.
    """
    return [
        ("train", train or f"{root_rel}/train.txt"),
        ("valid", valid or f"{root_rel}/test.txt"),
        ("backup", backup or f"backup/{name}"),
        ("mesh", mesh or f"{root_rel}/{name}.ply"),
        ("tr_range", f"{root_rel}/training_range.txt"),
        ("name", name),
        ("diam", repr(float(diam))),
        ("gpus", "0"),
        ("num_workers", "10"),
        ("width", str(int(width))),
        ("height", str(int(height))),
        ("fx", repr(float(K[0, 0]))),
        ("fy", repr(float(K[1, 1]))),
        ("u0", repr(float(K[0, 2]))),
        ("v0", repr(float(K[1, 2]))),
    ]


# --------------------------------------------------------------------------------------------
# Pose files: the tools' output and make_labels.py input (design §14.3)
# --------------------------------------------------------------------------------------------

CSV_POSE_COLUMNS = ("image", "r11", "r12", "r13", "r21", "r22", "r23", "r31", "r32", "r33", "tx", "ty", "tz")
ROTATION_TOL = 1e-2  # |R R^T - I| and |det R - 1| allowed in a pose file (3 printed decimals pass)


def pose_entry(image: str, R: np.ndarray, t: np.ndarray, **extra) -> dict:
    """One pose record: image path, R (3, 3) nested rows, t (3,) metres, plus any extra fields."""
    return {"image": image, "R": np.asarray(R, dtype=np.float64).reshape(3, 3).tolist(),
            "t": np.asarray(t, dtype=np.float64).reshape(3).tolist(), **extra}


def write_poses_json(path, name: str, class_id: int, mesh: str, K: np.ndarray, width: int, height: int,
                     entries: list[dict]) -> None:
    """DIR/poses/<name>.json: the camera and every pose of one object (R, t in metres, camera frame)."""
    doc = {"object": name, "class_id": int(class_id), "mesh": mesh, "units": "metres",
           "K": np.asarray(K, dtype=np.float64).tolist(), "width": int(width), "height": int(height),
           "poses": entries}
    write_text(path, json.dumps(doc, indent=1) + "\n")


def check_pose(where: str, R: np.ndarray, t: np.ndarray) -> None:
    """Raise PoseFileError (prefixed with `where`) unless R (3, 3) is a finite rotation and t (3,) finite."""
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        raise PoseFileError(f"{where}: R and t must be finite numbers; found R={R.tolist()}, t={t.tolist()}")
    err = max(float(np.abs(R @ R.T - np.eye(3)).max()), abs(float(np.linalg.det(R)) - 1.0))
    if err > ROTATION_TOL:
        raise PoseFileError(f"{where}: R is not a rotation matrix (|R R^T - I| or |det R - 1| = {err:.2g} > "
                            f"{ROTATION_TOL}); R must be the 3x3 model-to-camera rotation, row-major")


def read_poses(path) -> list[dict]:
    """Poses from JSON (a list of {image, R, t}, or a poses.json written by these tools) or CSV.

    JSON: R as 3 rows of 3 or 9 numbers row-major, t as 3 numbers. CSV: header
    image,r11,r12,r13,r21,r22,r23,r31,r32,r33,tx,ty,tz. Returns [{'image': str, 'R': (3, 3)
    float64, 't': (3,) float64}] in file order, t in the file's unit. Raises FileNotFoundError or
    PoseFileError naming the file and the CSV line or JSON entry: missing field, wrong number of
    values, non-number, NaN/inf, R not a rotation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pose file not found")
    try:
        if path.suffix.lower() == ".csv":
            return _read_poses_csv(path)
        if path.suffix.lower() != ".json":
            raise PoseFileError(f"{path}: unknown pose file type {path.suffix!r}; use .json or .csv")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PoseFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise PoseFileError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    items = doc["poses"] if isinstance(doc, dict) and "poses" in doc else doc
    if not isinstance(items, list):
        raise PoseFileError(f"{path}: expected a JSON list of {{image, R, t}} or an object with a 'poses' list")
    records = []
    for i, rec in enumerate(items):
        where = f"{path}: pose entry {i}"
        if not isinstance(rec, dict) or any(k not in rec for k in ("image", "R", "t")):
            raise PoseFileError(f"{where}: must be an object with keys image, R, t; found {str(rec)[:80]}")
        try:
            R = np.asarray(rec["R"], dtype=np.float64)
            t = np.asarray(rec["t"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PoseFileError(f"{where} ({rec['image']}): R and t must be numbers ({exc})") from exc
        if R.size != 9 or t.size != 3:
            raise PoseFileError(f"{where} ({rec['image']}): R needs 9 numbers (3x3) and t 3; "
                                f"found R with shape {R.shape}, t with shape {t.shape}")
        R, t = R.reshape(3, 3), t.reshape(3)
        check_pose(f"{where} ({rec['image']})", R, t)
        records.append({"image": str(rec["image"]), "R": R, "t": t})
    return records


def _read_poses_csv(path: Path) -> list[dict]:
    records = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = fields
        missing = [c for c in CSV_POSE_COLUMNS if c not in fields]
        if missing:
            raise PoseFileError(f"{path}:1: CSV header lacks {missing}; expected {','.join(CSV_POSE_COLUMNS)}")
        for rec in reader:
            where = f"{path}:{reader.line_num}"
            if None in rec or any(rec[c] is None for c in CSV_POSE_COLUMNS):
                raise PoseFileError(f"{where}: expected {len(fields)} comma-separated values like the header")
            try:
                vals = np.array([float(rec[c]) for c in CSV_POSE_COLUMNS[1:]])
            except ValueError as exc:
                raise PoseFileError(f"{where}: bad number in pose row ({exc})") from exc
            R, t = vals[:9].reshape(3, 3), vals[9:]
            check_pose(where, R, t)
            if not rec["image"].strip():
                raise PoseFileError(f"{where}: empty image name")
            records.append({"image": rec["image"].strip(), "R": R, "t": t})
    return records


# --------------------------------------------------------------------------------------------
# Train / test split of a converted dataset
# --------------------------------------------------------------------------------------------

def split_flags(keys: list, test_fraction: float, seed, train=None, test=None,
                lists: tuple[str, str] = ("the train list", "the test list")) -> np.ndarray:
    """Boolean test flags (n,) for `keys` (image names or ids): from given sets, or a seeded random split.

    With only `train`, the other keys are the test set; with only `test`, the other keys are the
    training set; with both, every key must be in one of them (LayoutError naming `lists`
    otherwise). Without sets, round(n * test_fraction) keys drawn by
    `default_rng(seed).permutation` are the test set, at least one of each when 0 < fraction < 1
    and n >= 2. `seed` is anything default_rng takes (an int, or [seed, object id]).
    """
    if train is not None or test is not None:
        flags = np.array([(k in test) if test is not None else (k not in train) for k in keys], dtype=bool)
        if train is not None and test is not None:
            unknown = [k for k in keys if k not in train and k not in test]
            if unknown:
                raise LayoutError(f"{unknown[0]!r} is in neither {lists[0]} nor {lists[1]}")
        return flags
    if not 0.0 <= test_fraction <= 1.0:
        raise LayoutError(f"--test-fraction must be in [0, 1]; got {test_fraction}")
    n = len(keys)
    n_test = int(round(n * test_fraction))
    if 0.0 < test_fraction < 1.0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    flags = np.zeros(n, dtype=bool)
    flags[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return flags


# --------------------------------------------------------------------------------------------
# Atomic writes: a crash or an error never leaves half a file, nor a temporary one
# --------------------------------------------------------------------------------------------

def probe_write(folder) -> None:
    """Raise the OSError that creating a file in `folder` meets (a read-only file system, no
    permission, a full disk), if any: one byte written to a probe file, which is removed again.
    The one writability check of the output folders (cli.check_output_dir, engine.prepare_backup)."""
    probe = Path(folder) / f".ssp_write_test_{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"0")
    finally:
        with contextlib.suppress(OSError):  # a clean-up that fails must not hide the error of the write
            probe.unlink()


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
    """Open a temporary file beside `path` for writing; on success it replaces `path` in one step.

    `with atomic_write(p, "wb") as f: torch.save(obj, f)`. The folder is created; the
    temporary file (`.<name>.<random>.tmp`, same folder, so `os.replace` is atomic) is removed
    if the block raises, and the old `path`, if any, is left as it was. Text mode writes '\\n'.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', found {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x" + mode[1:], **({} if "b" in mode else {"newline": "\n"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    """Write `text` to `path` atomically (see atomic_write), creating the folder."""
    with atomic_write(path) as f:
        f.write(text)


def write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically (an encoded image, a copied file), creating the folder."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def append_text(path, text: str) -> None:
    """Add `text` at the end of a log (a CSV, a JSON-lines file) by writing the whole new file and
    replacing the old one (design D60): a reader sees the file before or after, never a torn line.
    The logs are small (a row per evaluation or per run), so rewriting them costs nothing."""
    path = Path(path)
    old = path.read_bytes() if path.is_file() else b""
    write_bytes(path, old + text.encode())


def copy_file(src, dst, within=None) -> None:
    """Copy the bytes of `src` to `dst` atomically; a symlink at `dst` is replaced, never written through.

    within: a folder `src` must lie in (`check_inside`): a copy out of a folder someone else made
    never brings in a file from elsewhere on the machine through a symbolic link."""
    if within is not None:
        check_inside(src, within)
    with open(src, "rb") as fin, atomic_write(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def check_inside(path, folder, what: str = "") -> None:
    """InputError unless `path` is a regular file inside `folder` once every symbolic link is
    followed (a link to a file elsewhere, or through a linked folder out of it, is refused)."""
    top, real = os.path.realpath(folder), os.path.realpath(path)
    if os.path.commonpath([top, real]) != top:
        raise InputError(f"{path}: a symbolic link that leads out of {what or folder} (to {real}); refused, "
                         f"nothing was copied")
    if not os.path.isfile(real):
        raise InputError(f"{path}: not a regular file; refused, nothing was copied")


# --------------------------------------------------------------------------------------------
# Metric CSVs: valid.py --csv (design §9.5) and the training logs (metrics.csv)
# --------------------------------------------------------------------------------------------

METRICS_CSV_HEADER = ("model", "object", "2d_projection", "3d_transformation")  # the fork's columns, design §9.5
# The training logs of both scripts name the 2-D projection accuracies as the evaluation summaries do,
# acc_2d_<t>px; a column of a part of the test is '<part>:<name>' (an --also-valid set, an object of
# train_multi.py). Older logs used other names: train.py acc_2d for the 5 px one (beside acc_2d_5px),
# train_multi.py acc_5px, acc_10px and acc_5px_<object>; `log_row` reads them under today's.
LOG_ACC_5PX, LOG_ACC_10PX = "acc_2d_5px", "acc_2d_10px"
OLD_LOG_NAMES = {"acc_2d": LOG_ACC_5PX, "acc_5px": LOG_ACC_5PX, "acc_10px": LOG_ACC_10PX}


def csv_columns(path, header=METRICS_CSV_HEADER) -> list | None:
    """The columns `append_csv` will write to `path`: the file's own order, or None for a new
    file. Raises InputError when the file's header has other columns than `header`."""
    path = Path(path)
    if not (path.exists() and path.stat().st_size > 0):
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            existing = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read its CSV header ({exc}); write to another file") from None
    if sorted(existing) != sorted(header):
        raise InputError(f"{path}: its header {existing} has other columns than {list(header)}; "
                         "write to another file")
    return existing


def log_row(row: dict) -> dict:
    """A training log row (metrics.jsonl) under today's column names (`OLD_LOG_NAMES`); a name
    already there is kept, so a train.py log's acc_2d_5px wins over its acc_2d."""
    renamed = {}
    for key, value in row.items():
        part, _, name = key.rpartition(":")
        if name in OLD_LOG_NAMES:
            name = OLD_LOG_NAMES[name]
        elif not part and name.startswith(("acc_5px_", "acc_10px_")):  # train_multi.py's acc_5px_<object>
            old, _, part = name.partition("px_")
            name = OLD_LOG_NAMES[old + "px"]
        renamed.setdefault(f"{part}:{name}" if part else name, value)
    return renamed | {k: v for k, v in row.items() if k in renamed}  # today's name wins over an old one


def append_csv(path, row: dict, header=METRICS_CSV_HEADER) -> None:
    """Append one row under a header written once, when the file is new (D34).

    An existing file keeps its own column order (the fork's CSVs have the columns sorted);
    one whose header has other columns than `header` raises InputError (`csv_columns`).
    """
    path = Path(path)
    fields = csv_columns(path, header)
    new = fields is None
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = list(header)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    if new:
        w.writeheader()
    w.writerow(row)
    append_text(path, buf.getvalue())  # the new file replaces the old: never a torn row (design D60)
