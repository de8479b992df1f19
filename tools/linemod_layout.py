"""File names and text formats of the LINEMOD layout (spec §3), shared by the data tools.

Pure helpers plus small writers, so the generator, the label maker and the BOP converter write
byte-for-byte the same formats:

    LINEMOD/<obj>/JPEGImages/NNNNNN.jpg          6-digit image index
    LINEMOD/<obj>/labels/NNNNNN.txt              rows of 21 numbers, '%.6f', space separated
    LINEMOD/<obj>/mask/NNNN.png                  the §3.4 derivation ('/00' dropped), 0 / 255
    LINEMOD/<obj>/labels_occlusion/NNNNNN.txt    one row, keypoints in the OCCLUSION order (§9.6)
    cfg/<name>.data                              'key = value' lines (§3.2)

Label rows: [class, x0, y0, ..., x8, y8, x range, y range], normalised by the image size
(spec §3.1); point 0 is the model origin, points 1..8 the box corners in the §9.2 order.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from utils import IM_HEIGHT, IM_WIDTH, LABEL_WIDTH, NUM_KEYPOINTS, keypoints_from_pose, label_row

LABEL_FMT = "%.6f"  # spec §3.1: LINEMOD label files hold 6 decimals
IMAGE_DIGITS = 6  # spec §3.4: JPEGImages/NNNNNN.jpg
JPEG_QUALITY = 95

# spec §9.6: valid_multi re-orders OCCLUSION GT points with new[i] = old[OCCLUSION_PERM[i]]
# before PnP; so a file in OCCLUSION order holds occ[j] = std[OCCLUSION_PERM_INV[j]].
OCCLUSION_PERM = (0, 1, 3, 5, 7, 2, 4, 6, 8)
OCCLUSION_PERM_INV = tuple(int(i) for i in np.argsort(OCCLUSION_PERM))  # (0, 1, 5, 2, 6, 3, 7, 4, 8)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

def label_from_pose(corners: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, class_id: int = 0,
                    width: int = IM_WIDTH, height: int = IM_HEIGHT) -> np.ndarray:
    """The (21,) label row of an object: corners (8, 3) m in the §9.2 order, pose R (3, 3), t (3,) m, K (3, 3).

    One implementation for every tool: utils.keypoints_from_pose then utils.label_row.
    """
    return label_row(keypoints_from_pose(corners, R, t, K), class_id, width, height)


def to_occlusion_order(row: np.ndarray) -> np.ndarray:
    """A (21,) label row with its 9 points moved from the §9.2 order to the OCCLUSION order (§9.6).

    Inverse of the evaluation's re-ordering: `from_occlusion_order(to_occlusion_order(r)) == r`.
    Class id and the x / y ranges are unchanged (the range covers the same 9 points).
    """
    row = np.asarray(row, dtype=np.float64)
    pts = row[1:1 + 2 * NUM_KEYPOINTS].reshape(NUM_KEYPOINTS, 2)
    return np.concatenate([row[:1], pts[list(OCCLUSION_PERM_INV)].reshape(-1), row[1 + 2 * NUM_KEYPOINTS:]])


def from_occlusion_order(row: np.ndarray) -> np.ndarray:
    """A (21,) OCCLUSION-order row back in the §9.2 order: points[i] = occ[OCCLUSION_PERM[i]] (§9.6)."""
    row = np.asarray(row, dtype=np.float64)
    pts = row[1:1 + 2 * NUM_KEYPOINTS].reshape(NUM_KEYPOINTS, 2)
    return np.concatenate([row[:1], pts[list(OCCLUSION_PERM)].reshape(-1), row[1 + 2 * NUM_KEYPOINTS:]])


def format_label_rows(rows) -> str:
    """Text of a label file: one line per (21,) row, every number '%.6f', newline-terminated."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    if rows.size == 0:
        return ""
    if rows.shape[1] != LABEL_WIDTH:
        raise ValueError(f"label rows must have {LABEL_WIDTH} numbers; found {rows.shape[1]}")
    return "".join(" ".join(LABEL_FMT % v for v in r) + "\n" for r in rows)


def read_label_rows(path) -> np.ndarray:
    """(n, 21) float64 rows of a label file (an empty file gives (0, 21))."""
    text = Path(path).read_text().split()
    vals = np.array([float(v) for v in text], dtype=np.float64)
    if vals.size % LABEL_WIDTH:
        raise ValueError(f"{path}: {vals.size} numbers is not a multiple of {LABEL_WIDTH} (21 per object)")
    return vals.reshape(-1, LABEL_WIDTH)


# --------------------------------------------------------------------------------------------
# Paths (spec §3.4, derivations done on the file name only: §11 item 31)
# --------------------------------------------------------------------------------------------

def image_stem(index: int) -> str:
    """'000123' for index 123 (spec §3.4)."""
    return f"{index:0{IMAGE_DIGITS}d}"


def mask_stem(image_stem_: str) -> str:
    """The mask file stem the original derives: its one '/00' -> '/' replacement on the name.

    '000123' -> '0123' (LINEMOD's 4-digit masks); '012345' -> '012345' (no leading '00').
    """
    return image_stem_[2:] if image_stem_.startswith("00") else image_stem_


def label_path_for(image_path: str, folder: str = "labels") -> str:
    """LINEMOD/<obj>/JPEGImages/000012.jpg -> LINEMOD/<obj>/<folder>/000012.txt (string in, string out)."""
    p = Path(image_path)
    return str(p.parent.parent / folder / (p.stem + ".txt"))


def mask_path_for(image_path: str) -> str:
    """LINEMOD/<obj>/JPEGImages/000012.jpg -> LINEMOD/<obj>/mask/0012.png."""
    p = Path(image_path)
    return str(p.parent.parent / "mask" / (mask_stem(p.stem) + ".png"))


def occlusion_label_path_for(image_path: str, obj: str) -> str:
    """Scene image LINEMOD/<main>/JPEGImages/000012.jpg -> LINEMOD/<obj>/labels_occlusion/000012.txt (§3.4)."""
    p = Path(image_path)
    return str(p.parent.parent.parent / obj / "labels_occlusion" / (p.stem + ".txt"))


# --------------------------------------------------------------------------------------------
# Writers (atomic: a crash never leaves half a file)
# --------------------------------------------------------------------------------------------

def write_text(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def write_list(path, lines) -> None:
    """A list file: one entry per line, newline-terminated."""
    write_text(path, "".join(f"{line}\n" for line in lines))


def write_data_cfg(path, items) -> None:
    """A `.data` file from (key, value) pairs, in the given order, as `key = value` lines (§3.2)."""
    write_text(path, "".join(f"{k} = {v}\n" for k, v in items))


def data_cfg_items(name: str, root_rel: str, diam: float, K: np.ndarray, width: int = IM_WIDTH,
                   height: int = IM_HEIGHT, train: str | None = None, valid: str | None = None,
                   mesh: str | None = None, backup: str | None = None) -> list[tuple[str, str]]:
    """Every §3.2 key of a single-object `.data` file; paths relative to the dataset root.

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
# Pose files: generator / converter output and make_labels.py input
# --------------------------------------------------------------------------------------------

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


CSV_POSE_COLUMNS = ("image", "r11", "r12", "r13", "r21", "r22", "r23", "r31", "r32", "r33", "tx", "ty", "tz")
ROTATION_TOL = 1e-2  # |R R^T - I| and |det R - 1| allowed in a pose file (3 printed decimals pass)


class PoseFileError(ValueError):
    """A pose file that is missing a field, holds a non-number, a non-finite value or a non-rotation."""


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
    PoseFileError (a ValueError) naming the file and the CSV line or JSON entry: missing field,
    wrong number of values, non-number, NaN/inf, R not a rotation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pose file not found")
    if path.suffix.lower() == ".csv":
        return _read_poses_csv(path)
    if path.suffix.lower() != ".json":
        raise PoseFileError(f"{path}: unknown pose file type {path.suffix!r}; use .json or .csv")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PoseFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
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


def write_poses_csv(path, records) -> None:
    """A CSV pose file (the CSV_POSE_COLUMNS header) from [{image, R (3, 3), t (3,)}]; repr() numbers, exact."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_POSE_COLUMNS)
    for rec in records:
        vals = np.concatenate([np.asarray(rec["R"], dtype=np.float64).reshape(9), np.asarray(rec["t"], dtype=np.float64).reshape(3)])
        writer.writerow([str(rec["image"])] + [repr(float(v)) for v in vals])
    write_text(path, buf.getvalue())
