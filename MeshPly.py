"""PLY meshes (ASCII or binary) for the 6D pose metrics and the 3-D bounding box.

`MeshPly(path)` keeps the original's attribute names (`vertices`, `colors`, `indices`) so old
scripts keep working, but everything is a numpy array:

    vertices: (N, 3) float64, metres (LINEMOD) unless `scale` says otherwise
    normals:  (N, 3) float64 or None
    colors:   (N, 3) float64 in [0, 1] (the `color` argument where the file has none)
    indices:  (M, 3) int64 triangle vertex indices (empty (0, 3) for a point cloud)

BOP meshes are in millimetres: use `MeshPly.from_millimetres(path)` (or `scale=0.001`).
"""
from __future__ import annotations

import os

import numpy as np
from plyfile import PlyData, PlyElement

from errors import MeshError
from linemod_format import atomic_write

MM_TO_M = 1e-3  # BOP models_info and models/*.ply are in millimetres


class MeshPly:
    def __init__(self, filename, color=(0.0, 0.0, 0.0), scale: float = 1.0):
        self.filename = str(filename)
        if not os.path.isfile(self.filename):
            raise MeshError(f"{self.filename}: mesh file not found")
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

        self.vertices = np.stack([vertex[k] for k in ("x", "y", "z")], axis=1).astype(np.float64) * scale
        self.normals = (
            np.stack([vertex[k] for k in ("nx", "ny", "nz")], axis=1).astype(np.float64)
            if all(k in names for k in ("nx", "ny", "nz"))
            else None
        )
        if all(k in names for k in ("red", "green", "blue")):
            self.colors = np.stack([vertex[k] for k in ("red", "green", "blue")], axis=1).astype(np.float64) / 255.0
        else:
            self.colors = np.tile(np.asarray(color, dtype=np.float64), (len(self.vertices), 1))
        self.indices = _read_faces(ply)

    @classmethod
    def from_millimetres(cls, filename, color=(0.0, 0.0, 0.0)) -> MeshPly:
        """Read a millimetre mesh (BOP) and return it in metres."""
        return cls(filename, color=color, scale=MM_TO_M)

    def homogeneous(self) -> np.ndarray:
        """Vertices as the (4, N) homogeneous matrix the metrics use."""
        return np.vstack([self.vertices.T, np.ones((1, len(self.vertices)))])


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
