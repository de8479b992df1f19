"""Procedural textured meshes, LINEMOD-like poses and a small numpy z-buffer renderer (CPU only).

Used by synthetic.py (design §14.3) and tools/make_labels.py (masks); every function is pure and takes its
randomness from an explicit numpy Generator, so a seed fixes every pixel.

Units and frames:
    mesh vertices in metres, model frame with z "up" (the side the camera sees from above);
    poses map model to camera: X_cam = R @ X + t, t in metres; camera x right, y down, z forward;
    pixels in OpenCV's convention (pixel (u, v) has its centre at integer u, v).

Meshes: a convex body (subdivided box, capped cylinder or ellipsoid) with 2-4 attachments
(handle, knob, block, cone) stuck on random points of its surface, each face textured with its
own colour pattern plus one marker patch, so neither the shape nor the texture is symmetric.
The model origin is moved off the box centre (like LINEMOD), then the mesh is scaled to a
target diameter (10-30 cm) and quantised to float32 (the precision of the written PLY).

User meshes (MeshPly.read_mesh -> Mesh.from_file): any PLY or OBJ, per-vertex colours or a
texture with UVs, the mesh's own origin; vertex normals computed when the file has none.

Renderer: back-face culling (not for a two-sided mesh: a user's mesh may be wound
inconsistently), then every triangle is rasterised at the pixel centres inside it (barycentric
weights, affine in the pixel, vectorised per bounding-box size), and a z-buffer on 1/z keeps the
nearest one. Two shadings:
    Light (the procedural sets, kept byte for byte): flat Lambertian per face, one directional
        light and an ambient term;
    Lighting (user meshes, domain randomisation): smooth per pixel, the vertex normals, colours
        and texture coordinates interpolated perspective-correctly (weights lambda_i / z_i,
        normalised), several coloured directional lights (Lambert), an ambient colour and a
        Blinn-Phong specular highlight.
The object mask is exactly the set of pixels the renderer wrote.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from MeshPly import MeshFile, vertex_normals
from utils import box_corners, mesh_diameter, pose_points3d, project_points

# design §14.3: object sizes and camera distances like LINEMOD
DIAMETER_RANGE_M = (0.10, 0.30)
DISTANCE_RANGE_M = (0.6, 1.2)
ELEVATION_RANGE_DEG = (10.0, 85.0)  # upper hemisphere (85: keep the look-at 'up' defined)
ORIGIN_OFFSET_RANGE = (0.08, 0.25)  # origin offset from the box centre, fraction of the box size
KEYPOINT_MARGIN_PX = 8.0  # all 9 label points at least this far inside the image when possible
POSE_TRIES = 200
INPLANE_RANGE_RAD = (-math.pi, math.pi)  # any in-plane roll
UNCOLORED_GRAY = 160  # the placeholder colour of a mesh without colours (a set randomises it per image)

# Lighting.random: the defaults of the smooth shading's randomisation (synthetic.RenderOptions)
LIGHT_COUNT_RANGE = (1, 3)
LIGHT_INTENSITY_RANGE = (0.5, 1.3)  # sum of the lights' diffuse intensities, shared between them
LIGHT_SATURATION_MAX = 0.25  # light colours: a random hue at most this saturated (0 = white)
AMBIENT_RANGE = (0.25, 0.55)
SPECULAR_RANGE = (0.0, 0.35)  # Blinn-Phong highlight strength (0-1 of full white)
SHININESS_RANGE = (8.0, 64.0)
LIGHT_MIN_FRONT = 0.2  # every light is at least this much towards the camera side (-z of its direction)


# --------------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------------

@dataclass
class Mesh:
    """A triangle mesh.

    vertices (N, 3) float64 metres (float32-exact values), faces (M, 3) int64,
    normals (N, 3) float64 unit, vertex_colors (N, 3) uint8, face_colors (M, 3) uint8 (the flat
    shading's colours; the mean colour of each face for a user mesh). Optional: uv (M, 3, 2) and
    texture (H, W, 3) uint8 RGB (a texture replaces the vertex colours in the smooth shading);
    colored False when the colours are a placeholder (the mesh file had none); two_sided True
    to render back faces too (no culling; the smooth shading flips normals that face away).
    """
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    vertex_colors: np.ndarray
    face_colors: np.ndarray
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None
    colored: bool = True
    two_sided: bool = False

    @classmethod
    def from_file(cls, mesh: MeshFile) -> Mesh:
        """The renderable mesh of a MeshPly.read_mesh result: normals from the file, or area-weighted
        from the faces; two-sided (a user's winding may be inconsistent)."""
        normals = mesh.normals if mesh.normals is not None else vertex_normals(mesh.vertices, mesh.faces)
        colored = mesh.colors is not None or mesh.texture is not None
        if mesh.colors is not None:
            vertex_colors = np.asarray(mesh.colors, dtype=np.uint8)
        else:
            vertex_colors = np.full((len(mesh.vertices), 3), UNCOLORED_GRAY, dtype=np.uint8)
        if mesh.texture is not None:
            face_colors = np.round(sample_texture(mesh.texture, mesh.uv.mean(axis=1))).astype(np.uint8)
        else:
            face_colors = np.round(vertex_colors[mesh.faces].astype(np.float64).mean(axis=1)).astype(np.uint8)
        return cls(mesh.vertices, np.asarray(mesh.faces, dtype=np.int64), normals, vertex_colors, face_colors,
                   uv=mesh.uv, texture=mesh.texture, colored=colored, two_sided=True)

    def recolored(self, color) -> Mesh:
        """A copy with every vertex and face colour set to `color` (3,) uint8 RGB (no texture)."""
        c = np.asarray(color, dtype=np.uint8).reshape(1, 3)
        return Mesh(self.vertices, self.faces, self.normals, np.repeat(c, len(self.vertices), 0),
                    np.repeat(c, len(self.faces), 0), None, None, True, self.two_sided)

    @property
    def corners(self) -> np.ndarray:
        """The 8 box corners (8, 3) in the design §9.2 order."""
        return box_corners(self.vertices)

    @property
    def keypoints3d(self) -> np.ndarray:
        """The 9 label points (9, 3): origin then the corners."""
        return pose_points3d(self.corners)

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """(centre (3,), radius) of a sphere around the mesh: the box centre and the farthest vertex."""
        c = 0.5 * (self.vertices.min(0) + self.vertices.max(0))
        return c, float(np.linalg.norm(self.vertices - c, axis=1).max())


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) float colours around one random base hue (object-like, not garish)."""
    base = rng.random()
    hues = base + rng.normal(0.0, 0.12, size=n) + rng.choice([0.0, 0.5], size=n, p=[0.75, 0.25])
    return np.stack([_hsv(h, rng.uniform(0.3, 0.9), rng.uniform(0.35, 0.95)) for h in hues])


def _grid(P: np.ndarray):
    """Quads of a parametric grid P (nu+1, nv+1, 3) -> ((Q, 4, 3) corners in order, (Q,) iu, (Q,) iv)."""
    nu, nv = P.shape[0] - 1, P.shape[1] - 1
    q = np.stack([P[:-1, :-1], P[1:, :-1], P[1:, 1:], P[:-1, 1:]], axis=2).reshape(-1, 4, 3)
    iu, iv = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
    return q, iu.reshape(-1), iv.reshape(-1)


def _box(size, n: int):
    """Box centred at 0 with edge lengths size (3,), each face an n x n grid; patch id = face (0..5)."""
    size = np.asarray(size, dtype=np.float64)
    s = np.linspace(0.0, 1.0, n + 1)
    U, V = np.meshgrid(s, s, indexing="ij")
    quads, ius, ivs, pids = [], [], [], []
    for a in range(3):
        b, c = (a + 1) % 3, (a + 2) % 3
        for k, sign in enumerate((-1.0, 1.0)):
            P = np.zeros(U.shape + (3,))
            P[..., a] = sign * size[a] / 2
            P[..., b] = (U - 0.5) * size[b]
            P[..., c] = (V - 0.5) * size[c]
            q, iu, iv = _grid(P)
            quads.append(q), ius.append(iu), ivs.append(iv), pids.append(np.full(len(q), 2 * a + k))
    return np.concatenate(quads), np.concatenate(ius), np.concatenate(ivs), np.concatenate(pids)


def _frustum(r0: float, r1: float, h: float, n_theta: int, n_h: int, n_r: int = 2):
    """Capped frustum (cylinder if r0 == r1, cone if r1 == 0) along z, centred at 0.

    Patch ids: 0 side, 1 bottom cap, 2 top cap.
    """
    u = np.linspace(0.0, 1.0, n_theta + 1)
    cos, sin = np.cos(2 * np.pi * u), np.sin(2 * np.pi * u)
    v = np.linspace(0.0, 1.0, n_h + 1)
    r = r0 + (r1 - r0) * v
    side = np.stack(np.broadcast_arrays(cos[:, None] * r, sin[:, None] * r, h * (v - 0.5)[None, :]), axis=-1)
    parts = [(side, 0)]
    w = np.linspace(0.0, 1.0, n_r + 1)
    for radius, z, pid in ((r0, -h / 2, 1), (r1, h / 2, 2)):
        if radius > 0:
            cap = np.stack(np.broadcast_arrays(cos[:, None] * radius * w, sin[:, None] * radius * w,
                                               np.full((1, n_r + 1), z)), axis=-1)
            parts.append((cap, pid))
    out = [(*_grid(P), np.full((P.shape[0] - 1) * (P.shape[1] - 1), pid)) for P, pid in parts]
    return tuple(np.concatenate(x) for x in zip(*out))


def _ellipsoid(radii, n_theta: int, n_phi: int):
    """Ellipsoid centred at 0 with semi-axes radii (3,); patch id 0."""
    u = np.linspace(0.0, 1.0, n_theta + 1)[:, None]
    v = np.linspace(0.0, 1.0, n_phi + 1)[None, :]
    P = np.stack(np.broadcast_arrays(radii[0] * np.sin(np.pi * v) * np.cos(2 * np.pi * u),
                                     radii[1] * np.sin(np.pi * v) * np.sin(2 * np.pi * u),
                                     radii[2] * np.cos(np.pi * v)), axis=-1)
    q, iu, iv = _grid(P)
    return q, iu, iv, np.zeros(len(q), dtype=np.int64)


def _triangulate(quads: np.ndarray, centre: np.ndarray):
    """Quads (Q, 4, 3) of a convex primitive around `centre` -> outward triangles.

    Returns tris (T, 3, 3) wound counter-clockwise seen from outside, per-triangle quad index (T,),
    and the per-quad outward unit normal (Q, 3) (both triangles of a quad share it).
    """
    qn = np.cross(quads[:, 2] - quads[:, 0], quads[:, 3] - quads[:, 1])
    qn_len = np.linalg.norm(qn, axis=1, keepdims=True)
    qn = qn / np.maximum(qn_len, 1e-300)
    out = np.sign(np.einsum("qi,qi->q", qn, quads.mean(1) - centre))
    qn *= np.where(out == 0, 1.0, out)[:, None]
    tris = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    owner = np.concatenate([np.arange(len(quads))] * 2)
    tn = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    area2 = np.linalg.norm(tn, axis=1)
    keep = area2 > 1e-12 * max(1.0, float(np.abs(quads).max()) ** 2)
    tris, owner, tn = tris[keep], owner[keep], tn[keep]
    flip = np.einsum("ti,ti->t", tn, tris.mean(1) - centre) < 0
    tris[flip] = tris[flip][:, [0, 2, 1]]
    return tris, owner, qn


def _texture(rng: np.random.Generator, iu, iv, pid, palette: np.ndarray) -> np.ndarray:
    """(Q, 3) float colours: each patch gets its own pattern (solid, checker, stripes, bands)."""
    colors = np.zeros((len(iu), 3))
    for p in np.unique(pid):
        sel = pid == p
        c1, c2 = palette[rng.choice(len(palette), size=2, replace=False)]
        kind = rng.integers(0, 4)
        width = int(rng.integers(1, 3))
        if kind == 0:
            pick = np.zeros(sel.sum(), dtype=bool)
        elif kind == 1:
            pick = ((iu[sel] // width + iv[sel] // width) % 2).astype(bool)
        elif kind == 2:
            pick = ((iu[sel] // width) % 2).astype(bool)
        else:
            pick = ((iv[sel] // width) % 2).astype(bool)
        colors[sel] = np.where(pick[:, None], c2, c1)
    return colors


def _frame_from_z(z: np.ndarray, spin: float) -> np.ndarray:
    """Rotation (3, 3) whose third column is the unit vector z, spun by `spin` radians about it."""
    z = z / np.linalg.norm(z)
    a = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(a, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(spin), math.sin(spin)
    return np.stack([c * x + s * y, -s * x + c * y, z], axis=1)


def _primitive(rng: np.random.Generator, kind: str, scale: float):
    """(quads, iu, iv, pid) of one primitive kind at roughly `scale` size, centred at 0."""
    if kind == "box":
        n = int(rng.integers(3, 6))
        return _box(scale * rng.uniform(0.5, 1.0, size=3), n)
    if kind == "cylinder":
        r, h = scale * rng.uniform(0.25, 0.5), scale * rng.uniform(0.5, 1.0)
        return _frustum(r, r * rng.uniform(0.7, 1.0), h, int(rng.integers(16, 25)), int(rng.integers(3, 6)))
    if kind == "ellipsoid":
        return _ellipsoid(scale * rng.uniform(0.3, 0.55, size=3), int(rng.integers(16, 23)), int(rng.integers(9, 13)))
    if kind == "handle":
        r = scale * rng.uniform(0.08, 0.15)
        return _frustum(r, r, scale * rng.uniform(0.5, 0.9), int(rng.integers(10, 15)), 2)
    if kind == "knob":
        return _ellipsoid(scale * rng.uniform(0.12, 0.25, size=3), int(rng.integers(10, 14)), int(rng.integers(6, 9)))
    if kind == "block":
        return _box(scale * rng.uniform(0.2, 0.45, size=3), 2)
    if kind == "cone":
        return _frustum(scale * rng.uniform(0.12, 0.22), 0.0, scale * rng.uniform(0.35, 0.7),
                        int(rng.integers(10, 15)), 2)
    raise ValueError(f"unknown primitive kind {kind!r}")


BODY_KINDS = ("box", "cylinder", "ellipsoid")
ATTACHMENT_KINDS = ("handle", "knob", "block", "cone")


def make_mesh(rng: np.random.Generator, diameter: float | None = None) -> Mesh:
    """A procedural, textured, asymmetric object of `diameter` metres (default U(0.10, 0.30)).

    A few hundred to ~2000 triangles; model origin off the box centre; float32-exact vertices.
    """
    target = float(rng.uniform(*DIAMETER_RANGE_M)) if diameter is None else float(diameter)
    palette = _palette(rng, 6)
    tris_all, normals_all, colors_all = [], [], []

    def add(quads, iu, iv, pid, rot, shift, marker: bool):
        centre = np.zeros(3)
        tris, owner, qn = _triangulate(quads, centre)
        qcol = _texture(rng, iu, iv, pid, palette)
        if marker:  # one distinctive patch: breaks any remaining texture symmetry
            q = int(rng.integers(0, len(quads)))
            near = (pid == pid[q]) & (np.abs(iu - iu[q]) <= 1) & (np.abs(iv - iv[q]) <= 1)
            qcol[near] = _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.choice([0.12, 0.97]))
        tris_all.append(tris @ rot.T + shift)
        normals_all.append(qn[owner] @ rot.T)
        colors_all.append(qcol[owner])

    body = str(rng.choice(BODY_KINDS))
    add(*_primitive(rng, body, 1.0), np.eye(3), np.zeros(3), marker=True)
    body_tris = tris_all[0]
    areas = 0.5 * np.linalg.norm(np.cross(body_tris[:, 1] - body_tris[:, 0], body_tris[:, 2] - body_tris[:, 0]), axis=1)
    for _ in range(int(rng.integers(2, 5))):
        kind = str(rng.choice(ATTACHMENT_KINDS))
        k = int(rng.choice(len(body_tris), p=areas / areas.sum()))
        anchor, normal = body_tris[k].mean(0), normals_all[0][k]
        quads, iu, iv, pid = _primitive(rng, kind, 1.0)
        half = np.abs(quads.reshape(-1, 3)[:, 2]).max()
        rot = _frame_from_z(normal, float(rng.uniform(0, 2 * np.pi)))
        add(quads, iu, iv, pid, rot, anchor + normal * half * rng.uniform(0.3, 0.7), marker=False)

    tris = np.concatenate(tris_all)
    normals = np.concatenate(normals_all)
    colors = np.clip(np.round(np.concatenate(colors_all)), 0, 255).astype(np.uint8)
    # origin off the box centre, then scale to the target diameter
    lo, hi = tris.reshape(-1, 3).min(0), tris.reshape(-1, 3).max(0)
    offset = rng.uniform(*ORIGIN_OFFSET_RANGE, size=3) * rng.choice([-1.0, 1.0], size=3) * (hi - lo)
    tris = tris - (0.5 * (lo + hi) + offset)
    tris *= target / mesh_diameter(tris.reshape(-1, 3))
    return _indexed_mesh(tris, normals, colors)


def _indexed_mesh(tris: np.ndarray, face_normals: np.ndarray, face_colors: np.ndarray) -> Mesh:
    """Merge the corners of triangle soup (T, 3, 3) that share position, normal and colour."""
    T = len(tris)
    pos = tris.reshape(-1, 3).astype(np.float32)
    nrm = np.repeat(face_normals, 3, axis=0).astype(np.float32)
    col = np.repeat(face_colors, 3, axis=0)
    key = np.concatenate([pos.view(np.uint32), nrm.view(np.uint32), col.astype(np.uint32)], axis=1)
    uniq, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    n = face_normals.astype(np.float64)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    return Mesh(vertices=pos[first].astype(np.float64), faces=inverse.reshape(T, 3).astype(np.int64),
                normals=nrm[first].astype(np.float64), vertex_colors=col[first], face_colors=face_colors)


# --------------------------------------------------------------------------------------------
# Poses
# --------------------------------------------------------------------------------------------

def look_at_rotation(elevation: float, azimuth: float, inplane: float) -> np.ndarray:
    """Model-to-camera rotation (3, 3) of a camera above the model (radians).

    The camera sits in direction (cos e cos a, cos e sin a, sin e) of the model frame (z up),
    looks at the origin with the model's 'up' pointing up in the image, then rolls by `inplane`.
    """
    c = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                  math.sin(elevation)])
    z = -c
    up = np.array([0.0, 0.0, 1.0])
    y = -(up - up.dot(z) * z)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    R0 = np.stack([x, y, z])  # rows: camera axes in model coordinates
    cr, sr = math.cos(inplane), math.sin(inplane)
    roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return roll @ R0


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3, 3) taking unit vector a to unit vector b (Rodrigues)."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    s, c = np.linalg.norm(v), float(a.dot(b))
    if s < 1e-12:
        return np.eye(3)  # the camera rays used here are never opposite
    k = v / s
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * Kx + (1 - c) * Kx @ Kx


def sample_pose(rng: np.random.Generator, keypoints3d: np.ndarray, K: np.ndarray, width: int, height: int,
                distance=DISTANCE_RANGE_M, centre_box=None, margin: float = KEYPOINT_MARGIN_PX,
                elevation_deg=ELEVATION_RANGE_DEG, inplane_rad=INPLANE_RANGE_RAD):
    """A LINEMOD-like pose (R (3, 3), t (3,) m): a view from elevation_deg (degrees above the model's
    xy plane, uniform over that band of the sphere), an in-plane roll uniform in inplane_rad.

    The origin lies `distance` metres from the camera (uniform in the range); its projection is
    uniform among the pixels that keep all `keypoints3d` (9, 3) `margin` px inside the image and,
    if given, inside centre_box = (u_lo, u_hi, v_lo, v_hi). The camera pans to that pixel
    (rotation about its centre), so the view stays a true perspective look-at.
    """
    sin_lo, sin_hi = (math.sin(math.radians(e)) for e in elevation_deg)
    Kinv = np.linalg.inv(K)
    fallback = None
    for _ in range(POSE_TRIES):
        elev = math.asin(rng.uniform(sin_lo, sin_hi))  # uniform over the spherical cap
        R0 = look_at_rotation(elev, rng.uniform(0, 2 * np.pi), rng.uniform(*inplane_rad))
        d = rng.uniform(*distance)
        kp = project_points(keypoints3d, R0, np.array([0.0, 0.0, d]), K)
        rel = kp - kp[0]
        u_lo, u_hi = margin - rel[:, 0].min(), width - 1 - margin - rel[:, 0].max()
        v_lo, v_hi = margin - rel[:, 1].min(), height - 1 - margin - rel[:, 1].max()
        if centre_box is not None:
            u_lo, u_hi = max(u_lo, centre_box[0]), min(u_hi, centre_box[1])
            v_lo, v_hi = max(v_lo, centre_box[2]), min(v_hi, centre_box[3])
        if u_lo > u_hi or v_lo > v_hi:
            continue
        u, v = rng.uniform(u_lo, u_hi), rng.uniform(v_lo, v_hi)
        ray = Kinv @ np.array([u, v, 1.0])
        ray /= np.linalg.norm(ray)
        Q = rotation_between(np.array([0.0, 0.0, 1.0]), ray)
        R, t = Q @ R0, d * ray
        kp = project_points(keypoints3d, R, t, K)
        inside = np.all((kp >= margin / 2) & (kp <= np.array([width - 1, height - 1]) - margin / 2))
        if inside:
            return R, t
        if fallback is None:
            fallback = (R, t)
    if fallback is None:
        raise RuntimeError("sample_pose: no pose keeps the object in the image; object too large for the camera")
    return fallback


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

@dataclass
class Light:
    """Flat Lambertian shading: colour * (ambient + diffuse * max(0, n . direction)).

    direction (3,) unit vector from the surface towards the light, camera frame.
    """
    direction: np.ndarray
    ambient: float = 0.4
    diffuse: float = 0.6

    @classmethod
    def random(cls, rng: np.random.Generator) -> Light:
        d = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.9, -0.1), -1.0])  # from the camera side, above
        return cls(d / np.linalg.norm(d), float(rng.uniform(0.3, 0.5)), float(rng.uniform(0.5, 0.75)))


@dataclass
class Lighting:
    """Smooth shading: albedo * (ambient + sum_l color_l * max(0, n . d_l))
    + 255 * specular * sum_l color_l * max(0, n . h_l) ** shininess, h_l = unit(d_l + view).

    directions (L, 3) unit vectors from the surface towards each light, camera frame; colors
    (L, 3) each light's RGB intensity (1 = full); ambient (3,) RGB; specular, shininess scalars.
    """
    directions: np.ndarray
    colors: np.ndarray
    ambient: np.ndarray
    specular: float = 0.0
    shininess: float = 32.0

    @classmethod
    def random(cls, rng: np.random.Generator, count=LIGHT_COUNT_RANGE, intensity=LIGHT_INTENSITY_RANGE,
               saturation: float = LIGHT_SATURATION_MAX, ambient=AMBIENT_RANGE, specular=SPECULAR_RANGE,
               shininess=SHININESS_RANGE) -> Lighting:
        """count lights (uniform integer in the range, inclusive) from random directions on the camera's
        side, colours of a random hue up to `saturation`, their intensities summing to a value uniform
        in `intensity`; ambient, specular and shininess uniform in their ranges."""
        n = int(rng.integers(count[0], count[1] + 1))
        d = rng.normal(size=(n, 3))
        d[:, 2] = -np.abs(d[:, 2])
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        d[:, 2] = np.minimum(d[:, 2], -LIGHT_MIN_FRONT)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        share = rng.dirichlet(np.ones(n)) * rng.uniform(*intensity)
        tint = np.stack([_hsv(rng.random(), rng.uniform(0, saturation), 1.0) / 255.0 for _ in range(n)])
        amb = rng.uniform(*ambient) * _hsv(rng.random(), rng.uniform(0, saturation / 2), 1.0) / 255.0
        return cls(d, tint * share[:, None], amb, float(rng.uniform(*specular)), float(rng.uniform(*shininess)))

    def shade(self, albedo: np.ndarray, normal: np.ndarray, view: np.ndarray) -> np.ndarray:
        """RGB (P, 3) uint8 of surface points: albedo (P, 3) 0-255, unit normal and view (P, 3), camera frame."""
        ndl = np.clip(normal @ self.directions.T, 0.0, None)  # (P, L)
        half = self.directions[None, :, :] + view[:, None, :]
        half /= np.maximum(np.linalg.norm(half, axis=2, keepdims=True), 1e-12)
        ndh = np.clip(np.einsum("pi,pli->pl", normal, half), 0.0, None) * (ndl > 0)
        diffuse = self.ambient + ndl @ self.colors  # (P, 3)
        highlight = (255.0 * self.specular) * (ndh ** self.shininess) @ self.colors
        return np.clip(np.round(albedo * diffuse + highlight), 0, 255).astype(np.uint8)


@dataclass
class Rendering:
    """rgb (H, W, 3) uint8 (0 where empty); ids (H, W) int16: object index or -1;
    silhouette_px (n,) int64: pixels each object would cover alone (occlusion ignored);
    depth (H, W) float64: the camera z (metres) of the visible surface, 0 where empty."""
    rgb: np.ndarray
    ids: np.ndarray
    silhouette_px: np.ndarray
    depth: np.ndarray | None = None

    def visible_fraction(self) -> np.ndarray:
        """(n,) visible pixels / unoccluded silhouette pixels of each object (0 when off-screen)."""
        vis = np.bincount(self.ids[self.ids >= 0].ravel(), minlength=len(self.silhouette_px))
        return np.where(self.silhouette_px > 0, vis / np.maximum(self.silhouette_px, 1), 0.0)


def _rasterize(px: np.ndarray, inv_z: np.ndarray, width: int, height: int):
    """Pixel-centre coverage of triangles px (T, 3, 2) pixels with per-vertex 1/z (T, 3).

    Returns candidate fragments (pixel index (F,) = v * width + u, triangle index (F,), 1/z (F,)).
    A pixel centre is covered when its three barycentric weights are >= -1e-9. The weights (and
    1/z) are affine in the pixel, w(lo + (i, j)) = w0 + dx * i + dy * j from the bounding box
    corner lo, so the coverage test of a box is a sum of a per-row and a per-column term.
    Triangles are grouped by power-of-two box size, so no Python loop over triangles.
    """
    lo = np.maximum(np.ceil(px.min(axis=1)).astype(np.int64), 0)
    hi = np.minimum(np.floor(px.max(axis=1)).astype(np.int64), np.array([width - 1, height - 1]))
    a, b, c = px[:, 0], px[:, 1], px[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ok = np.all(lo <= hi, axis=1) & (np.abs(area) > 1e-9)
    inv_area = np.where(ok, 1.0 / np.where(ok, area, 1.0), 0.0)

    def weight(p, q):
        """(w0, dx, dy) (T,) each: the weight of the vertex opposite the edge p -> q."""
        ex, ey = q[:, 0] - p[:, 0], q[:, 1] - p[:, 1]
        return (ex * (lo[:, 1] - p[:, 1]) - ey * (lo[:, 0] - p[:, 0])) * inv_area, -ey * inv_area, ex * inv_area

    wa, wb = weight(b, c), weight(c, a)
    wc = (1.0 - wa[0] - wb[0], -wa[1] - wb[1], -wa[2] - wb[2])
    size = hi - lo + 1  # (T, 2) box width, height
    span = np.where(ok, size.max(axis=1), 0)
    bucket = np.where(ok, 1 << np.ceil(np.log2(np.maximum(span, 1))).astype(np.int64), 0)
    eps = -1e-9
    pix_out, tri_out, iz_out = [], [], []
    for S in np.unique(bucket[ok]):
        idx = np.nonzero(bucket == S)[0]
        g = np.arange(S)
        inside = (g[None, :, None] < size[idx, 1, None, None]) & (g[None, None, :] < size[idx, 0, None, None])
        for w0, dx, dy in (wa, wb, wc):
            row = w0[idx, None] + dy[idx, None] * g  # (n, S): rows j
            col = dx[idx, None] * g  # (n, S): columns i
            inside &= row[:, :, None] >= (eps - col)[:, None, :]
        r, j, i = np.nonzero(inside)
        tri = idx[r]
        pix_out.append((lo[tri, 1] + j) * width + lo[tri, 0] + i)
        tri_out.append(tri)
        iz_out.append(sum((w[0][tri] + w[1][tri] * i + w[2][tri] * j) * inv_z[tri, k]
                          for k, w in enumerate((wa, wb, wc))))
    if not pix_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(pix_out), np.concatenate(tri_out), np.concatenate(iz_out)


def render(meshes, poses, K: np.ndarray, width: int, height: int, light) -> Rendering:
    """Render meshes (list of Mesh) at poses (list of (R (3, 3), t (3,) m)) with camera K (3, 3).

    light: a Light (flat shading per face) or a Lighting (smooth shading per pixel). Objects
    occlude each other through one z-buffer. Returns a Rendering (see its docstring).
    """
    smooth = isinstance(light, Lighting)
    px_all, iz_all, col_all, obj_all, face_all = [], [], [], [], []
    for i, (mesh, (R, t)) in enumerate(zip(meshes, poses)):
        cam = mesh.vertices @ np.asarray(R).T + np.asarray(t).reshape(1, 3)
        tri = cam[mesh.faces]  # (M, 3, 3)
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        if mesh.two_sided:
            front = np.ones(len(tri), dtype=bool)
        else:
            front = np.einsum("mi,mi->m", n, tri[:, 0]) < 0  # facing the camera at the origin
        tri, n = tri[front], n[front]
        if not smooth:
            n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
            shade = light.ambient + light.diffuse * np.clip(n @ light.direction, 0.0, None)
            col_all.append(np.clip(mesh.face_colors[front] * shade[:, None], 0, 255))
        uvw = tri @ np.asarray(K).T
        px_all.append(uvw[..., :2] / uvw[..., 2:3])
        iz_all.append(1.0 / tri[..., 2])
        obj_all.append(np.full(len(tri), i, dtype=np.int16))
        face_all.append(np.nonzero(front)[0])
    px, inv_z = np.concatenate(px_all), np.concatenate(iz_all)
    obj = np.concatenate(obj_all)
    pix, tri, iz = _rasterize(px, inv_z, width, height)
    rgb = np.zeros((width * height, 3), dtype=np.uint8)
    ids = np.full(width * height, -1, dtype=np.int16)
    depth = np.zeros(width * height)
    silhouette_px = np.zeros(len(meshes), dtype=np.int64)
    if len(pix):
        # z-buffer over the run of pixel indices the fragments touch (not the whole image)
        first = int(pix.min())
        local = pix - first
        n = int(local.max()) + 1
        zbuf = np.zeros(n)
        np.maximum.at(zbuf, local, iz)
        win = iz >= zbuf[local]
        face = np.full(n, -1, dtype=np.int64)
        face[local[win]] = tri[win]
        hit = np.nonzero(face >= 0)[0]
        if smooth:
            rgb[first + hit] = _shade_smooth(meshes, poses, K, light, first + hit, face[hit], px, inv_z, obj,
                                             np.concatenate(face_all), width)
        else:
            colors = np.concatenate(col_all).round().astype(np.uint8)
            rgb[first + hit] = colors[face[hit]]
        ids[first + hit] = obj[face[hit]]
        depth[first + hit] = 1.0 / zbuf[hit]
        sil = np.zeros((len(meshes), n), dtype=bool)
        sil[obj[tri], local] = True
        silhouette_px = sil.sum(axis=1)
    return Rendering(rgb.reshape(height, width, 3), ids.reshape(height, width), silhouette_px,
                     depth.reshape(height, width))


def _shade_smooth(meshes, poses, K, lighting: Lighting, pixels, tri, px, inv_z, obj, mesh_face, width: int):
    """RGB (P, 3) uint8 of the P pixels `pixels` (flat indices) won by triangles `tri` (P,).

    px (T, 3, 2) and inv_z (T, 3) are the rasterised triangles, obj (T,) their mesh and
    mesh_face (T,) their face in it. Screen-space barycentrics lambda (affine in the pixel) become
    perspective-correct weights mu_i = lambda_i / z_i / sum_j lambda_j / z_j, which interpolate the
    vertex normals (camera frame), colours and texture coordinates.
    """
    p = np.stack([pixels % width, pixels // width], axis=1).astype(np.float64)  # (P, 2) pixel centres
    a, b, c = px[tri, 0], px[tri, 1], px[tri, 2]

    def cross(e, f):
        return e[:, 0] * f[:, 1] - e[:, 1] * f[:, 0]

    area = cross(b - a, c - a)
    lam = np.stack([cross(c - b, p - b), cross(a - c, p - c)], axis=1) / area[:, None]
    lam = np.concatenate([lam, 1.0 - lam.sum(axis=1, keepdims=True)], axis=1)  # (P, 3)
    wz = lam * inv_z[tri]
    iz = wz.sum(axis=1)  # 1/z at the pixel (affine in screen space)
    mu = wz / iz[:, None]
    normal = np.zeros((len(p), 3))
    albedo = np.zeros((len(p), 3))
    for i, mesh in enumerate(meshes):
        sel = np.nonzero(obj[tri] == i)[0]
        if not len(sel):
            continue
        R = np.asarray(poses[i][0])
        corners = mesh.faces[mesh_face[tri[sel]]]  # (S, 3) vertex indices
        normal[sel] = np.einsum("sk,skj->sj", mu[sel], mesh.normals[corners] @ R.T)
        if mesh.texture is not None:
            uv = np.einsum("sk,skj->sj", mu[sel], mesh.uv[mesh_face[tri[sel]]])
            albedo[sel] = sample_texture(mesh.texture, uv)
        else:
            albedo[sel] = np.einsum("sk,skj->sj", mu[sel], mesh.vertex_colors[corners].astype(np.float64))
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    ray = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ np.linalg.inv(np.asarray(K)).T  # (P, 3) z = 1
    view = -ray / np.linalg.norm(ray, axis=1, keepdims=True)  # towards the camera
    normal *= np.where(np.einsum("pi,pi->p", normal, view) < 0, -1.0, 1.0)[:, None]  # two-sided lighting
    return lighting.shade(albedo, normal, view)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping look-up (P, 3) float64 of texture (H, W, 3) uint8 at uv (P, 2): u to the
    right, v up, 0..1 across the image (the OBJ / PLY convention)."""
    h, w = texture.shape[:2]
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    x = np.mod(uv[:, 0], 1.0) * w - 0.5  # texel centres at (i + 0.5) / w
    y = (1.0 - np.mod(uv[:, 1], 1.0)) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    x0, y0 = x0 % w, y0 % h
    tex = texture.astype(np.float64)
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
