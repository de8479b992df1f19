"""PLY meshes (ASCII or binary) for the 6D pose metrics and the 3-D bounding box.

`MeshPly(path)` keeps the original's attribute names (`vertices`, `colors`, `indices`) so old
scripts keep working, but everything is a numpy array:

    vertices: (N, 3) float64, metres (LINEMOD) unless `scale` says otherwise
    normals:  (N, 3) float64 or None
    colors:   (N, 3) float64 in [0, 1] (the `color` argument where the file has none)
    indices:  (M, 3) int64 triangle vertex indices (empty (0, 3) for a point cloud)

BOP meshes are in millimetres: use `MeshPly.from_millimetres(path)` (or `scale=0.001`). A mesh
read as metres that is more than `SUSPICIOUS_SIZE_M` across gives a one-line warning naming the
file (`units_warning`, shared with tools/make_labels.py); a NaN or inf coordinate, or a face that
points at a vertex the file does not have, is a MeshError naming the file.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from plyfile import PlyData, PlyElement

from errors import MeshError
from linemod_format import atomic_write

MM_TO_M = 1e-3  # BOP models_info and models/*.ply are in millimetres
# A mesh read as metres whose bounding box is more than 5 m across (diagonal) is almost always a
# millimetre file: LINEMOD objects are 0.1-0.3 m, so in millimetres they measure 100-300 "m".
SUSPICIOUS_SIZE_M = 5.0


class MeshUnitsWarning(UserWarning):
    """A mesh read as metres is suspiciously large (probably millimetres)."""


def units_warning(vertices: np.ndarray, source, hint: str = "convert it to metres "
                  "(e.g. tools/make_labels.py --mesh-units mm)") -> str | None:
    """The one-line warning for a mesh that looks like millimetres read as metres, or None.

    vertices (N, 3) in metres as read; the rule: bounding-box diagonal > SUSPICIOUS_SIZE_M.
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if len(v) == 0:
        return None
    size = float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))
    if not size > SUSPICIOUS_SIZE_M:
        return None
    return (f"{source}: the mesh is {size:.1f} m across (bounding-box diagonal), more than "
            f"{SUSPICIOUS_SIZE_M:g} m; if it is in millimetres, {hint}")


class MeshPly:
    """A PLY mesh; `scale` multiplies the coordinates (0.001 for millimetres). With the default
    scale and `check_units`, a mesh that looks like millimetres warns (MeshUnitsWarning)."""

    def __init__(self, filename, color=(0.0, 0.0, 0.0), scale: float = 1.0, check_units: bool = True):
        self.filename = str(filename)
        if not os.path.isfile(self.filename):
            raise MeshError(f"{self.filename}: mesh file not found")
        _check_element_counts(self.filename)
        try:
            ply = PlyData.read(self.filename)
        except Exception as exc:  # plyfile raises several types for a non-PLY file
            raise MeshError(f"{self.filename}: not a readable PLY file ({exc})") from exc
        if "vertex" not in ply:
            raise MeshError(f"{self.filename}: PLY has no 'vertex' element")
        vertex = ply["vertex"].data
        names = vertex.dtype.names or ()
        missing = [k for k in ("x", "y", "z") if k not in names]
        if missing:
            raise MeshError(f"{self.filename}: vertex element lacks {missing}; found properties {list(names)}")

        try:
            self.vertices = _columns(vertex, ("x", "y", "z")) * scale
            self.normals = (_columns(vertex, ("nx", "ny", "nz"))
                            if all(k in names for k in ("nx", "ny", "nz")) else None)
            if all(k in names for k in ("red", "green", "blue")):
                self.colors = _columns(vertex, ("red", "green", "blue")) / 255.0
            else:
                self.colors = np.tile(np.asarray(color, dtype=np.float64), (len(self.vertices), 1))
            self.indices = _read_faces(ply)
        except (TypeError, ValueError) as exc:  # e.g. a list-valued coordinate property
            raise MeshError(f"{self.filename}: vertex or face data is not numeric as expected ({exc})") from None
        bad = ~np.isfinite(self.vertices).all(axis=1)
        if bad.any():
            raise MeshError(f"{self.filename}: {int(bad.sum())} vertices have a NaN or inf coordinate "
                            f"(first: vertex {int(np.argmax(bad))}); expected finite x, y, z")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(self.vertices)):
            raise MeshError(f"{self.filename}: a face refers to vertex {int(self.indices.max())} "
                            f"(or a negative index); the mesh has {len(self.vertices)} vertices")
        if check_units and scale == 1.0:
            message = units_warning(self.vertices, self.filename)
            if message:
                warnings.warn(message, MeshUnitsWarning, stacklevel=2)

    @classmethod
    def from_millimetres(cls, filename, color=(0.0, 0.0, 0.0)) -> MeshPly:
        """Read a millimetre mesh (BOP) and return it in metres."""
        return cls(filename, color=color, scale=MM_TO_M)


MAX_HEADER_BYTES = 1 << 20


def _check_element_counts(filename: str) -> None:
    """Refuse a header that declares more records than the file has bytes (each record takes at
    least one): plyfile allocates `count` records up front, so a small file declaring two billion
    faces would take minutes and gigabytes before it reports the early end of file."""
    with open(filename, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
        size = os.fstat(f.fileno()).st_size
    end = head.find(b"end_header")
    if end < 0:
        return  # not a PLY header (or a huge one): plyfile reports it
    for line in head[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "element":
            try:
                count = int(words[2])
            except ValueError:
                raise MeshError(f"{filename}: header line {line.strip()!r}: the count is not a whole number") from None
            after = size - end - len(b"end_header")
            if not 0 <= count <= after:
                raise MeshError(f"{filename}: the header declares {count} {words[1]} records but "
                                f"{max(after, 0)} bytes follow it; a truncated or damaged file")


def _columns(vertex, keys) -> np.ndarray:
    """The named vertex properties as an (N, len(keys)) float64 array."""
    return np.stack([np.asarray(vertex[k], dtype=np.float64) for k in keys], axis=1).reshape(-1, len(keys))


def _read_faces(ply: PlyData) -> np.ndarray:
    if "face" not in ply or ply["face"].count == 0:
        return np.zeros((0, 3), dtype=np.int64)
    face = ply["face"].data
    key = next((k for k in ("vertex_indices", "vertex_index") if k in face.dtype.names), None)
    if key is None:
        return np.zeros((0, 3), dtype=np.int64)
    rows = [np.asarray(f, dtype=np.int64) for f in face[key]]
    tris = [r[[0, i, i + 1]] for r in rows for i in range(1, len(r) - 1)]  # fan-triangulate polygons
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def write_ply(path, vertices, faces=None, normals=None, colors=None, binary: bool = False) -> None:
    """Write a mesh with the LINEMOD vertex fields (x y z nx ny nz red green blue).

    vertices (N, 3) metres; faces (M, 3) ints; normals (N, 3); colors (N, 3) uint8 0..255.
    ASCII by default, as in the preprocessed LINEMOD archive, so the original reader can load it.
    """
    vertices = np.asarray(vertices, dtype=np.float32)
    n = len(vertices)
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if normals is not None:
        fields += [("nx", "f4"), ("ny", "f4"), ("nz", "f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.empty(n, dtype=fields)
    data["x"], data["y"], data["z"] = vertices.T
    if normals is not None:
        data["nx"], data["ny"], data["nz"] = np.asarray(normals, dtype=np.float32).T
    if colors is not None:
        data["red"], data["green"], data["blue"] = np.asarray(colors, dtype=np.uint8).T
    elements = [PlyElement.describe(data, "vertex")]
    if faces is not None and len(faces):
        face_data = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
        face_data["vertex_indices"] = np.asarray(faces, dtype=np.int32)
        elements.append(PlyElement.describe(face_data, "face"))
    with atomic_write(path, "wb") as f:
        PlyData(elements, text=not binary).write(f)
