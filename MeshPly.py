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

`read_mesh(path, units)` reads a mesh to render (synthetic.py, render.py): PLY (ASCII or binary)
with per-vertex colours or a texture image and UVs, or OBJ (with an optional map_Kd texture),
in metres or millimetres, every polygon triangulated; see `MeshFile`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from plyfile import PlyData, PlyElement

from errors import MeshError
from linemod_format import atomic_write

MM_TO_M = 1e-3  # BOP models_info and models/*.ply are in millimetres
# A mesh read as metres whose bounding box is more than 5 m across (diagonal) is almost always a
# millimetre file: LINEMOD objects are 0.1-0.3 m, so in millimetres they measure 100-300 "m".
SUSPICIOUS_SIZE_M = 5.0
MESH_UNITS = {"m": 1.0, "mm": MM_TO_M}  # --mesh-units: metres per file unit
# a mesh to render wider than this (largest box edge) or narrower is almost surely read in the wrong
# units: one warning naming the size and --mesh-units (issue 34's bad-input list)
RENDER_WIDTH_RANGE_M = (0.001, 10.0)
PLY_COLOR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))
PLY_UV_NAMES = (("texture_u", "texture_v"), ("s", "t"), ("u", "v"))  # per-vertex texture coordinates
PLY_FACE_UV = "texcoord"  # per-face list of 2k floats (MeshLab, Blender)
PLY_TEXTURE_COMMENT = "TextureFile"  # header line 'comment TextureFile name.png' (MeshLab)


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
        ply = _load_ply(self.filename)
        vertex = ply["vertex"].data
        names = vertex.dtype.names or ()

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
        _check_geometry(self.filename, self.vertices, self.indices)
        if check_units and scale == 1.0:
            message = units_warning(self.vertices, self.filename)
            if message:
                warnings.warn(message, MeshUnitsWarning, stacklevel=2)

    @classmethod
    def from_millimetres(cls, filename, color=(0.0, 0.0, 0.0)) -> MeshPly:
        """Read a millimetre mesh (BOP) and return it in metres."""
        return cls(filename, color=color, scale=MM_TO_M)


def _load_ply(filename: str) -> PlyData:
    """The parsed PLY file with a vertex element holding x, y, z; MeshError naming the file otherwise."""
    if not os.path.isfile(filename):
        raise MeshError(f"{filename}: mesh file not found")
    _check_element_counts(filename)
    try:
        ply = PlyData.read(filename)
    except Exception as exc:  # plyfile raises several types for a non-PLY file
        raise MeshError(f"{filename}: not a readable PLY file ({exc})") from exc
    if "vertex" not in ply:
        raise MeshError(f"{filename}: PLY has no 'vertex' element")
    names = ply["vertex"].data.dtype.names or ()
    missing = [k for k in ("x", "y", "z") if k not in names]
    if missing:
        raise MeshError(f"{filename}: vertex element lacks {missing}; found properties {list(names)}")
    return ply


def _check_geometry(filename: str, vertices: np.ndarray, faces: np.ndarray) -> None:
    """MeshError naming the file for a NaN or inf coordinate or a face index out of range."""
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise MeshError(f"{filename}: {int(bad.sum())} vertices have a NaN or inf coordinate "
                        f"(first: vertex {int(np.argmax(bad))}); expected finite x, y, z")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise MeshError(f"{filename}: a face refers to vertex {int(faces.max())} "
                        f"(or a negative index); the mesh has {len(vertices)} vertices")


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
    return fan_triangulate([np.asarray(f, dtype=np.int64) for f in face[key]])


def fan_triangulate(polygons: list, width: int = 1) -> np.ndarray:
    """Triangles of polygons (each an array of k corners x `width` values, k >= 3; fewer are dropped).

    Polygon (c0, ..., ck-1) gives (c0, ci, ci+1) for i = 1..k-2, in polygon order; returns (T, 3)
    for width 1, else (T, 3, width). The same rule for vertex indices and per-face texture
    coordinates, so the two stay paired.
    """
    out_shape = (3,) if width == 1 else (3, width)
    rows = [np.asarray(p).reshape(-1, width) for p in polygons]
    sizes = np.array([len(r) for r in rows], dtype=np.int64)
    tris, order = [], []
    for k in np.unique(sizes[sizes >= 3]):  # one vectorised step per polygon size
        idx = np.nonzero(sizes == k)[0]
        block = np.stack([rows[i] for i in idx])  # (n, k, width)
        fan = np.stack([np.zeros(k - 2, np.int64), np.arange(1, k - 1), np.arange(2, k)], axis=1)  # (k-2, 3)
        tris.append(block[:, fan].reshape(-1, 3, width))
        order.append((idx[:, None] * (1 << 20) + np.arange(k - 2)[None, :]).reshape(-1))
    if not tris:
        return np.zeros((0, *out_shape), dtype=rows[0].dtype if rows else np.int64)
    tris = np.concatenate(tris)[np.argsort(np.concatenate(order), kind="stable")]
    return tris.reshape(-1, *out_shape)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (N, 3) of a triangle mesh (zeros for unused vertices)."""
    n = np.zeros_like(vertices, dtype=np.float64)
    if len(faces):
        tri = vertices[faces]
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        for k in range(3):
            np.add.at(n, faces[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(length > 0, n / np.maximum(length, 1e-300), 0.0)


class MeshColorWarning(UserWarning):
    """A mesh to render has neither vertex colours nor a texture: it gets random colours."""


@dataclass
class MeshFile:
    """A mesh read to be rendered (read_mesh).

    path: the file; vertices (N, 3) float64 metres, float32-exact (what write_ply stores), in the
    file's own frame (its origin is the model origin, label point 0); faces (M, 3) int64 triangles;
    normals (N, 3) float64 unit, or None when the file has none; colors (N, 3) uint8 RGB or None;
    uv (M, 3, 2) float64 texture coordinates of each face corner (u right, v up, 0..1 over the
    image) or None; texture (H, W, 3) uint8 RGB or None (both or neither).
    """
    path: str
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None


def read_mesh(path, units: str = "m") -> MeshFile:
    """Read a PLY or OBJ mesh to render, in `units` ('m' or 'mm', MESH_UNITS), as metres.

    Every polygon is fan-triangulated; the mesh keeps its own origin. Raises MeshError naming the
    file for: an unknown extension or units, no faces, fewer than 3 vertices, a NaN or inf vertex,
    a face index out of range, a colour property of a type other than uchar or float (float
    colours must lie in [0, 1]), a texture that is missing or unreadable, or a texture with no
    texture coordinates. Warns once (MeshColorWarning) for a mesh with neither colours nor a
    texture, and once (MeshUnitsWarning) when the object is wider than RENDER_WIDTH_RANGE_M allows
    (naming its size and --mesh-units).
    """
    filename = str(path)
    if units not in MESH_UNITS:
        raise MeshError(f"{filename}: mesh units must be one of {sorted(MESH_UNITS)}; got {units!r}")
    suffix = Path(filename).suffix.lower()
    if suffix == ".ply":
        mesh = _read_ply_mesh(filename)
    elif suffix == ".obj":
        mesh = _read_obj_mesh(filename)
    else:
        raise MeshError(f"{filename}: a mesh to render must be .ply or .obj; got {suffix or 'no extension'!r}")
    if len(mesh.vertices) < 3:
        raise MeshError(f"{filename}: {len(mesh.vertices)} vertex(es); a mesh to render needs at least 3 and faces")
    if len(mesh.faces) == 0:
        raise MeshError(f"{filename}: the mesh has no faces (a point cloud cannot be rendered); expected "
                        f"triangles or polygons")
    _check_geometry(filename, mesh.vertices, mesh.faces)
    mesh.vertices = (mesh.vertices * MESH_UNITS[units]).astype(np.float32).astype(np.float64)
    if mesh.normals is not None:
        length = np.linalg.norm(mesh.normals, axis=1, keepdims=True)
        if not np.all(np.isfinite(length)) or np.any(length < 1e-12):
            mesh.normals = None  # broken normals are recomputed by the renderer
        else:
            mesh.normals = mesh.normals / length
    if mesh.colors is None and mesh.texture is None:
        warnings.warn(f"{filename}: no vertex colours and no texture; the object gets random colours in every "
                      f"image", MeshColorWarning, stacklevel=2)
    width = float((mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)).max())
    lo, hi = RENDER_WIDTH_RANGE_M
    if not lo <= width <= hi:
        other = "mm" if units == "m" else "m"
        warnings.warn(f"{filename}: the object is {width:.4g} m wide in --mesh-units {units} (largest box edge; "
                      f"expected {lo:g} to {hi:g} m); if the file is in other units, pass --mesh-units {other}",
                      MeshUnitsWarning, stacklevel=2)
    return mesh


def _read_ply_mesh(filename: str) -> MeshFile:
    ply = _load_ply(filename)
    vertex = ply["vertex"].data
    names = vertex.dtype.names or ()
    try:
        vertices = _columns(vertex, ("x", "y", "z"))
        normals = _columns(vertex, ("nx", "ny", "nz")) if all(k in names for k in ("nx", "ny", "nz")) else None
        faces = _read_faces(ply)
    except (TypeError, ValueError) as exc:
        raise MeshError(f"{filename}: vertex or face data is not numeric as expected ({exc})") from None
    colors = next((_ply_colors(vertex, keys, filename) for keys in PLY_COLOR_NAMES
                   if all(k in names for k in keys)), None)
    texture_name = next((c.split(None, 1)[1].strip() for c in ply.comments
                         if c.split(None, 1)[0:1] == [PLY_TEXTURE_COMMENT] and len(c.split(None, 1)) == 2), None)
    uv = None
    if texture_name is not None:
        uv_keys = next((keys for keys in PLY_UV_NAMES if all(k in names for k in keys)), None)
        if uv_keys is not None:
            uv = _columns(vertex, uv_keys)[faces]  # (M, 3, 2)
        elif "face" in ply and PLY_FACE_UV in (ply["face"].data.dtype.names or ()):
            uv = _face_texcoords(ply, filename)
        else:
            raise MeshError(f"{filename}: names texture {texture_name!r} but has no texture coordinates "
                            f"(vertex {' / '.join('+'.join(k) for k in PLY_UV_NAMES)} or face {PLY_FACE_UV!r})")
    texture = read_texture(Path(filename).parent / texture_name, filename) if texture_name is not None else None
    if uv is not None and len(uv) != len(faces):
        raise MeshError(f"{filename}: {len(uv)} faces have texture coordinates for {len(faces)} triangles; every "
                        f"face needs 2 values per corner")
    return MeshFile(filename, vertices, faces, normals, colors, uv, texture)


def _ply_colors(vertex, keys, filename: str) -> np.ndarray:
    """(N, 3) uint8 colours from uchar (as they are) or float ([0, 1], scaled by 255) properties."""
    kinds = {vertex[k].dtype for k in keys}
    if all(d == np.uint8 for d in kinds):
        return _columns(vertex, keys).astype(np.uint8)
    if all(d.kind == "f" for d in kinds):
        values = _columns(vertex, keys)
        if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
            raise MeshError(f"{filename}: float colour properties {'/'.join(keys)} must lie in [0, 1]; found "
                            f"{np.nanmin(values):.4g} to {np.nanmax(values):.4g}")
        return np.round(values * 255.0).astype(np.uint8)
    found = ", ".join(f"{k} {vertex[k].dtype}" for k in keys)
    raise MeshError(f"{filename}: colour properties must be uchar (0-255) or float (0-1); found {found}")


def _face_texcoords(ply: PlyData, filename: str) -> np.ndarray:
    """(M, 3, 2) per-corner UVs from the face property 'texcoord' (2 floats per polygon corner)."""
    face = ply["face"].data
    key = next(k for k in ("vertex_indices", "vertex_index") if k in face.dtype.names)
    lists = [np.asarray(t, dtype=np.float64) for t in face[PLY_FACE_UV]]
    sizes = np.array([len(f) for f in face[key]])
    bad = np.nonzero(np.array([len(t) for t in lists]) != 2 * sizes)[0]
    if len(bad):
        raise MeshError(f"{filename}: face {int(bad[0])} has {len(lists[bad[0]])} texcoord values for "
                        f"{int(sizes[bad[0]])} corners; expected 2 per corner")
    return fan_triangulate(lists, width=2)


def read_texture(path, mesh_file) -> np.ndarray:
    """The texture image (H, W, 3) uint8 RGB of `mesh_file`; MeshError naming both when it is missing
    or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{mesh_file}: texture file {path} not found")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise MeshError(f"{mesh_file}: texture file {path} is not a readable image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _read_obj_mesh(filename: str) -> MeshFile:
    """A Wavefront OBJ: v, vt, vn, f (v, v/vt, v//vn, v/vt/vn; negative indices count from the end),
    and the map_Kd texture of the first material library that names one. Vertex colours written
    as 'v x y z r g b' (0-1) are read too."""
    if not os.path.isfile(filename):
        raise MeshError(f"{filename}: mesh file not found")
    verts, colours, uvs, polys, poly_uv, mtllibs = [], [], [], [], [], []
    try:
        lines = Path(filename).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise MeshError(f"{filename}: cannot read the file ({exc})") from None
    for lineno, line in enumerate(lines, start=1):
        words = line.split()
        try:
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "v":
                verts.append([float(w) for w in words[1:4]])
                if len(words) >= 7:
                    colours.append([float(w) for w in words[4:7]])
            elif words[0] == "vt":
                uvs.append([float(w) for w in words[1:3]])
            elif words[0] == "f":
                corners = [w.split("/") for w in words[1:]]
                polys.append([int(c[0]) for c in corners])
                poly_uv.append([int(c[1]) if len(c) > 1 and c[1] else 0 for c in corners])
            elif words[0] == "mtllib":
                mtllibs.append(line.split(None, 1)[1].strip())
        except (ValueError, IndexError) as exc:
            raise MeshError(f"{filename}:{lineno}: not a valid OBJ line ({exc}): {line.strip()[:80]!r}") from None
    if any(len(v) != 3 for v in verts):
        raise MeshError(f"{filename}: a 'v' line has fewer than 3 coordinates")
    vertices = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    n, n_uv = len(vertices), len(uvs)

    def resolve(idx, count):  # OBJ indices are 1-based; negative ones count back from the end
        idx = np.asarray(idx, dtype=np.int64)
        return np.where(idx < 0, count + idx, idx - 1)

    faces = fan_triangulate([resolve(p, n) for p in polys]) if polys else np.zeros((0, 3), np.int64)
    colors = None
    if colours and len(colours) == n:
        c = np.asarray(colours)
        colors = np.round(np.clip(c if c.max() > 1 else c * 255.0, 0, 255)).astype(np.uint8)
    texture_path = next((t for t in (_mtl_texture(Path(filename).parent / m, filename) for m in mtllibs) if t), None)
    uv = texture = None
    if texture_path is not None:
        if n_uv == 0 or any(0 in p for p in poly_uv):
            raise MeshError(f"{filename}: its material names texture {texture_path} but not every face has "
                            f"texture coordinates (f v/vt)")
        corner_uv = [np.asarray(uvs)[resolve(p, n_uv)] for p in poly_uv]
        uv = fan_triangulate(corner_uv, width=2)
        texture = read_texture(texture_path, filename)
    return MeshFile(filename, vertices, faces, None, colors, uv, texture)


def _mtl_texture(mtl_path: Path, obj_file: str) -> Path | None:
    """The first map_Kd image of a material library (relative to it), or None; a missing library
    is a MeshError (the OBJ names it)."""
    if not mtl_path.is_file():
        raise MeshError(f"{obj_file}: material library {mtl_path} not found")
    for line in mtl_path.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "map_Kd":
            return mtl_path.parent / words[-1]
    return None


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
