"""Rendering a user's mesh: MeshPly.read_mesh (PLY / OBJ, colours, textures, units, bad input),
render.py's smooth shading, and synthetic.generate_from_meshes (labels, masks, determinism)."""
import hashlib
import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import synthetic
from errors import InputError, MeshError
from linemod_format import read_label_rows
from MeshPly import MeshColorWarning, MeshUnitsWarning, read_mesh, write_ply
from render import Lighting, Mesh, look_at_rotation, render, sample_texture
from utils import box_corners, get_camera_intrinsic, pose_points3d, project_points

K = get_camera_intrinsic()
W, H = 640, 480
LABEL_TOL_PX = 0.01  # issue 34: labels equal the projection of the mesh box under the saved pose


# --------------------------------------------------------------------------------------------
# Test meshes, written as their users would
# --------------------------------------------------------------------------------------------

def box_quads(size=(0.08, 0.06, 0.1), origin=(0.01, -0.015, 0.02)):
    """An off-centre box: 8 vertices (model origin not at the box centre), 6 quads wound outwards."""
    sx, sy, sz = size
    v = np.array([[x, y, z] for x in (-sx / 2, sx / 2) for y in (-sy / 2, sy / 2) for z in (-sz / 2, sz / 2)])
    v = v - np.asarray(origin)
    quads = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]])
    return v, quads


def ply_text(vertices, faces, vertex_props=(), vertex_values=None, face_extra=None, comments=()):
    """An ASCII PLY: x y z plus `vertex_props` [(type, name)], faces as index lists, optional per-face
    'texcoord' lists."""
    head = ["ply", "format ascii 1.0", *(f"comment {c}" for c in comments), f"element vertex {len(vertices)}",
            "property float x", "property float y", "property float z",
            *(f"property {t} {n}" for t, n in vertex_props), f"element face {len(faces)}",
            "property list uchar int vertex_indices"]
    if face_extra is not None:
        head.append("property list uchar float texcoord")
    lines = head + ["end_header"]
    for i, p in enumerate(vertices):
        extra = [] if vertex_values is None else [repr(x) if isinstance(x, float) else str(x) for x in vertex_values[i]]
        lines.append(" ".join([repr(float(c)) for c in p] + extra))
    for i, f in enumerate(faces):
        row = [str(len(f)), *map(str, f)]
        if face_extra is not None:
            row += [str(len(face_extra[i])), *(repr(float(x)) for x in face_extra[i])]
        lines.append(" ".join(row))
    return "\n".join(lines) + "\n"


def colours_for(vertices):
    """A distinct uchar colour per vertex."""
    return [(int(40 + 25 * i) % 256, int(200 - 20 * i) % 256, int(90 + 37 * i) % 256) for i in range(len(vertices))]


@pytest.fixture()
def coloured_ply(tmp_path):
    v, q = box_quads()
    path = tmp_path / "box.ply"
    props = [("uchar", "red"), ("uchar", "green"), ("uchar", "blue")]
    path.write_text(ply_text(v, q, props, colours_for(v)))
    return path


def write_texture(path, size=64):
    """Left half red, right half blue (RGB), written as BGR PNG."""
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[:, : size // 2] = (220, 30, 30)
    rgb[:, size // 2:] = (30, 30, 220)
    cv2.imwrite(str(path), rgb[:, :, ::-1])


# --------------------------------------------------------------------------------------------
# Reading meshes
# --------------------------------------------------------------------------------------------

def test_ply_with_vertex_colours_is_read_triangulated_in_metres(coloured_ply):
    v, q = box_quads()
    mesh = read_mesh(coloured_ply, "m")
    assert np.array_equal(mesh.vertices, v.astype(np.float32).astype(np.float64))
    assert mesh.faces.shape == (12, 3)  # 6 quads, fan-triangulated
    assert np.array_equal(mesh.faces[:2], [[0, 1, 3], [0, 3, 2]])
    assert np.array_equal(mesh.colors, np.array(colours_for(v), np.uint8))
    assert mesh.normals is None and mesh.uv is None and mesh.texture is None


def test_binary_ply_reads_as_the_ascii_one(coloured_ply, tmp_path):
    ascii_mesh = read_mesh(coloured_ply)
    binary = tmp_path / "box_bin.ply"
    write_ply(binary, ascii_mesh.vertices, ascii_mesh.faces, None, ascii_mesh.colors, binary=True)
    assert b"binary_little_endian" in binary.read_bytes()[:80]
    mesh = read_mesh(binary)
    assert np.array_equal(mesh.vertices, ascii_mesh.vertices)
    assert np.array_equal(mesh.faces, ascii_mesh.faces)
    assert np.array_equal(mesh.colors, ascii_mesh.colors)


def test_millimetres_are_scaled_and_float_colours_converted(tmp_path):
    v, q = box_quads()
    path = tmp_path / "box_mm.ply"
    floats = [(0.0, 0.5, 1.0)] * len(v)
    path.write_text(ply_text(v * 1000, q, [("float", "red"), ("float", "green"), ("float", "blue")], floats))
    mesh = read_mesh(path, "mm")
    assert np.allclose(mesh.vertices, v, atol=1e-7)
    assert np.array_equal(mesh.colors[0], [0, 128, 255])


def test_texture_from_vertex_uvs_face_texcoords_and_obj(tmp_path):
    v, q = box_quads()
    write_texture(tmp_path / "tex.png")
    uv = np.stack([(v[:, 0] > 0).astype(float) * 0.5 + 0.2, (v[:, 1] > 0) * 0.5 + 0.2], axis=1)
    per_vertex = tmp_path / "uv_vertex.ply"
    per_vertex.write_text(ply_text(v, q, [("float", "texture_u"), ("float", "texture_v")], uv.tolist(),
                                   comments=["TextureFile tex.png"]))
    m1 = read_mesh(per_vertex)
    assert m1.uv.shape == (12, 3, 2) and m1.texture.shape == (64, 64, 3)
    faces = Mesh.from_file(m1).face_colors  # the flat colour of a face: its texture at the mean UV
    assert faces.dtype == np.uint8 and {tuple(c) for c in faces} <= {(220, 30, 30), (30, 30, 220), (125, 30, 125)}
    assert np.allclose(m1.uv, uv.astype(np.float32)[m1.faces])
    assert np.array_equal(m1.texture[0, 0], [220, 30, 30])  # read as RGB
    per_face = tmp_path / "uv_face.ply"
    per_face.write_text(ply_text(v, q, face_extra=[uv[f].reshape(-1).tolist() for f in q],
                                 comments=["TextureFile tex.png"]))
    m2 = read_mesh(per_face)
    assert np.allclose(m2.uv, m1.uv) and np.array_equal(m2.faces, m1.faces)
    (tmp_path / "box.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd tex.png\n")
    obj = ["mtllib box.mtl", *(f"v {a} {b} {c}" for a, b, c in v), *(f"vt {a} {b}" for a, b in uv), "usemtl m"]
    obj += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in f) for f in q[:-1]]
    obj += ["f " + " ".join(f"{i - 8}/{i - 8}" for i in q[-1])]  # negative (relative) indices
    (tmp_path / "box.obj").write_text("\n".join(obj) + "\n")
    m3 = read_mesh(tmp_path / "box.obj")
    assert np.array_equal(m3.faces, m1.faces) and np.allclose(m3.uv, uv[m1.faces])
    assert np.allclose(m3.vertices, m1.vertices)


@pytest.mark.parametrize("case, match", [
    ("no_faces", "has no faces"),
    ("nan", "NaN or inf coordinate"),
    ("one_vertex", "1 vertex"),
    ("ushort_colour", "colour properties must be uchar .0-255. or float .0-1.; found red uint16"),
    ("float_colour_range", r"float colour properties red/green/blue must lie in \[0, 1\]"),
    ("missing_texture", "texture file .*nowhere.png not found"),
    ("unreadable_texture", "texture file .*broken.png is not a readable image"),
    ("texture_without_uv", "names texture 'tex.png' but has no texture coordinates"),
    ("bad_index", "a face refers to vertex 99"),
    ("extension", "must be .ply or .obj"),
    ("units", "mesh units must be one of"),
])
def test_bad_meshes_are_one_clear_error_naming_the_file(tmp_path, case, match):
    v, q = box_quads()
    path = tmp_path / ("m.stl" if case == "extension" else "m.ply")
    write_texture(tmp_path / "tex.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rgb = [("uchar", "red"), ("uchar", "green"), ("uchar", "blue")]
    texts = {
        "no_faces": ply_text(v, [], rgb, colours_for(v)),
        "nan": ply_text(np.where(np.arange(8)[:, None] == 3, np.nan, v), q),
        "one_vertex": ply_text(v[:1], [[0, 0, 0]]),
        "ushort_colour": ply_text(v, q, [("ushort", "red"), ("ushort", "green"), ("ushort", "blue")], colours_for(v)),
        "float_colour_range": ply_text(v, q, [("float", n) for n in ("red", "green", "blue")], [(2.0, 0.0, 0.0)] * 8),
        "missing_texture": ply_text(v, q, [("float", "s"), ("float", "t")], [(0.0, 0.0)] * 8,
                                    comments=["TextureFile nowhere.png"]),
        "unreadable_texture": ply_text(v, q, [("float", "s"), ("float", "t")], [(0.0, 0.0)] * 8,
                                       comments=["TextureFile broken.png"]),
        "texture_without_uv": ply_text(v, q, comments=["TextureFile tex.png"]),
        "bad_index": ply_text(v, [[0, 1, 99]]),
        "extension": "solid x\n",
        "units": ply_text(v, q),
    }
    path.write_text(texts[case])
    with pytest.raises(MeshError, match=match) as err:
        read_mesh(path, "inch" if case == "units" else "m")
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_no_colours_and_wrong_units_are_one_warning_each(tmp_path):
    v, q = box_quads()
    path = tmp_path / "plain.ply"
    path.write_text(ply_text(v, q))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = read_mesh(path, "mm")  # a 10 cm box read as millimetres: 0.1 mm wide
    messages = [str(w.message) for w in caught]
    assert [w.category for w in caught] == [MeshColorWarning, MeshUnitsWarning]
    assert messages[0] == f"{path}: no vertex colours and no texture; the object gets random colours in every image"
    assert messages[1].startswith(f"{path}: the object is 0.0001 m wide in --mesh-units mm")
    assert "pass --mesh-units m" in messages[1]
    assert not Mesh.from_file(mesh).colored
    big = tmp_path / "big.ply"
    big.write_text(ply_text(v * 1000, q, [("uchar", "red"), ("uchar", "green"), ("uchar", "blue")], colours_for(v)))
    with pytest.warns(MeshUnitsWarning, match=r"the object is 100 m wide in --mesh-units m .*pass --mesh-units mm"):
        read_mesh(big, "m")


# --------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------

def one_light(direction=(0.0, 0.0, -1.0), ambient=0.0, specular=0.0):
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    return Lighting(d[None], np.ones((1, 3)), np.full(3, ambient), specular, 32.0)


def sphere_mesh(radius=0.05, n=48):
    """A UV sphere (no normals, white): the renderer computes its vertex normals."""
    th, ph = np.meshgrid(np.linspace(0, np.pi, n + 1), np.linspace(0, 2 * np.pi, 2 * n + 1), indexing="ij")
    v = radius * np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    idx = np.arange(v.shape[0]).reshape(n + 1, 2 * n + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    from MeshPly import MeshFile

    return Mesh.from_file(MeshFile("sphere", v, faces, None, np.full((len(v), 3), 255, np.uint8)))


def test_smooth_shading_follows_the_true_sphere_normals():
    """A white sphere lit head-on: every pixel is 255 * cos(angle between the true normal and the light)."""
    mesh = sphere_mesh()
    t = np.array([0.0, 0.0, 0.5])
    r = render([mesh], [(np.eye(3), t)], K, W, H, one_light())
    ys, xs = np.nonzero(r.ids == 0)
    ray = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs, float)], 1)
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    b = ray @ t  # ray-sphere intersection: the nearer root
    depth = b - np.sqrt(np.maximum(b * b - t @ t + 0.05 ** 2, 0))
    normal = (ray * depth[:, None] - t) / 0.05
    expected = 255 * np.clip(normal @ np.array([0.0, 0.0, -1.0]), 0, 1)
    inner = normal[:, 2] < -0.3  # away from the silhouette, where the facets' chords dominate
    err = np.abs(r.rgb[ys, xs, 0].astype(float) - expected)[inner]
    assert err.mean() < 1.0 and err.max() < 4.0
    assert np.array_equal(r.rgb[ys, xs, 0], r.rgb[ys, xs, 2])  # white light on a white object stays grey
    z = (ray * depth[:, None])[:, 2]  # the depth map: the camera z of the visible surface, 0 elsewhere
    gap = (r.depth[ys, xs] - z)[inner]  # the facets lie inside the true sphere: a little deeper
    assert gap.min() > -1e-9 and gap.max() < 5e-4 and np.all(r.depth[r.ids < 0] == 0)


def test_specular_highlight_and_ambient():
    mesh = sphere_mesh()
    t = np.array([0.0, 0.0, 0.5])
    base = render([mesh], [(np.eye(3), t)], K, W, H, one_light()).rgb.astype(int)
    shiny = render([mesh], [(np.eye(3), t)], K, W, H, one_light(specular=0.5)).rgb.astype(int)
    centre = (int(round(K[1, 2])), int(round(K[0, 2])))
    assert base[centre][0] == 255 and shiny[centre][0] == 255  # saturated at the centre either way
    near = np.nonzero((base[..., 0] >= 230) & (base[..., 0] <= 250))  # normal within ~25 deg of the light
    assert np.all(shiny[near][:, 0] >= base[near][:, 0] + 3)  # (cos 25)^32 * 0.5 * 255 = 5 levels
    far = np.nonzero((base[..., 0] > 150) & (base[..., 0] < 200))  # ~50 deg: (cos 50)^32 is nothing
    assert np.all(shiny[far][:, 0] - base[far][:, 0] <= 1)
    edge = render([mesh], [(np.eye(3), t)], K, W, H, one_light(direction=(1.0, 0.0, -0.01), ambient=0.2)).rgb
    dark = np.nonzero((render([mesh], [(np.eye(3), t)], K, W, H, one_light(direction=(1, 0, -0.01))).ids == 0)
                      & (np.arange(W)[None, :] < K[0, 2] - 20))
    assert np.all(edge[dark][:, 0] == 51)  # unlit side: ambient 0.2 * 255


def test_texture_interpolation_is_perspective_correct(tmp_path):
    """A square tilted 60 degrees, textured red | blue at u = 0.5: the colour edge is where the 3-D
    midline projects, not at the midpoint between the projected edges (affine interpolation)."""
    from MeshPly import MeshFile

    v = np.array([[-0.1, -0.1, 0.0], [0.1, -0.1, 0.0], [0.1, 0.1, 0.0], [-0.1, 0.1, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])[faces]
    tex = np.zeros((8, 64, 3), np.uint8)
    tex[:, :32] = (255, 0, 0)
    tex[:, 32:] = (0, 0, 255)
    mesh = Mesh.from_file(MeshFile("square", v, faces, None, None, uv, tex))
    a = math.radians(60)
    R = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    t = np.array([0.0, 0.0, 0.3])
    r = render([mesh], [(R, t)], K, W, H, one_light(ambient=1.0))
    row = int(round(K[1, 2]))
    cols = np.nonzero(r.ids[row] == 0)[0]
    red = cols[r.rgb[row, cols, 0] > r.rgb[row, cols, 2]]
    blue = cols[r.rgb[row, cols, 2] > r.rgb[row, cols, 0]]
    edge = 0.5 * (red.max() + blue.min()) if red.max() < blue.min() else 0.5 * (red.min() + blue.max())
    mid3d = project_points(np.array([[0.0, 0.0, 0.0]]), R, t, K)[0, 0]
    ends = project_points(np.array([[-0.1, 0.0, 0.0], [0.1, 0.0, 0.0]]), R, t, K)[:, 0]
    assert abs(edge - mid3d) <= 1.0
    assert abs(ends.mean() - mid3d) > 5  # the affine answer would be far off


def test_sample_texture_is_bilinear_with_v_up():
    tex = np.zeros((2, 2, 3), np.uint8)
    tex[1, :] = 200  # the bottom image row: v near 0
    assert np.allclose(sample_texture(tex, [[0.25, 0.25], [0.25, 0.75], [0.25, 0.5]])[:, 0], [200, 0, 100])


def test_mask_is_exactly_the_rendered_object_and_two_sided_faces_show(coloured_ply):
    mesh = Mesh.from_file(read_mesh(coloured_ply))
    flipped = Mesh(mesh.vertices, mesh.faces[:, ::-1], mesh.normals, mesh.vertex_colors, mesh.face_colors,
                   two_sided=True)
    R = look_at_rotation(math.radians(30), 0.7, 0.2)
    t = np.array([0.02, -0.01, 0.5])
    light = Lighting.random(np.random.default_rng(0))
    r1 = render([mesh], [(R, t)], K, W, H, light)
    r2 = render([flipped], [(R, t)], K, W, H, light)
    assert np.array_equal(r1.ids, r2.ids)  # inconsistent winding loses nothing
    assert (r1.ids == 0).sum() == r1.silhouette_px[0] > 1000
    assert np.all(r1.rgb[r1.ids < 0] == 0)


# --------------------------------------------------------------------------------------------
# Sets from meshes
# --------------------------------------------------------------------------------------------

def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def mesh_set(tmp_path_factory):
    """A set from three user meshes: vertex colours in millimetres (ASCII), binary, textured (OBJ)."""
    src = tmp_path_factory.mktemp("meshes")
    v, q = box_quads()
    rgb = [("uchar", "red"), ("uchar", "green"), ("uchar", "blue")]
    (src / "mm_box.ply").write_text(ply_text(v * 1000, q, rgb, colours_for(v)))
    m = read_mesh(src / "mm_box.ply", "mm")
    write_ply(src / "bin_box.ply", m.vertices[:, [1, 0, 2]] * 1.3, m.faces, None, m.colors, binary=True)
    write_texture(src / "tex.png")
    (src / "t.mtl").write_text("newmtl m\nmap_Kd tex.png\n")
    uv = np.stack([(v[:, 0] > 0) * 0.5 + 0.2, (v[:, 2] > 0) * 0.5 + 0.2], 1)
    obj = ["mtllib t.mtl", *(f"v {a} {b} {c}" for a, b, c in v * 0.8), *(f"vt {a} {b}" for a, b in uv)]
    obj += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in f) for f in q]
    (src / "tex_box.obj").write_text("\n".join(obj) + "\n")
    paths = [src / "mm_box.ply", src / "bin_box.ply", src / "tex_box.obj"]
    root = tmp_path_factory.mktemp("set") / "ds"
    summary = synthetic.generate_from_meshes(root, paths, ["mm", "m", "m"], n_images=4, seed=5, multi=2,
                                             test_fraction=0.5)
    return root, paths, summary


def test_mesh_set_labels_are_the_projection_of_the_mesh_box_under_the_saved_pose(mesh_set):
    root, paths, _ = mesh_set
    units = ["mm", "m", "m"]
    info = json.loads((root / synthetic.INFO_FILE).read_text())
    assert info["generator"] == synthetic.MESH_GENERATOR and info["objects"] == ["mm_box", "bin_box", "tex_box"]
    assert [m["textured"] for m in info["meshes"]] == [False, False, True]
    for k, name in enumerate(info["objects"]):
        source = read_mesh(paths[k], units[k])  # the user's file, in metres: its own origin and box
        points = pose_points3d(box_corners(source.vertices))
        doc = json.loads((root / "poses" / f"{name}.json").read_text())
        assert len(doc["poses"]) >= 4
        for e in doc["poses"]:
            rows = read_label_rows(root / e["label"])
            row = rows[e["row"]]
            assert int(row[0]) == k
            px = row[1:19].reshape(9, 2) * [W, H]
            expected = project_points(points, np.array(e["R"]), np.array(e["t"]), K)
            assert np.abs(px - expected).max() < LABEL_TOL_PX


def _object_masks(root: Path, name: str, mesh: Mesh):
    """(mask file > 0, the object rendered alone at the saved pose, the image) of every image of `name`."""
    doc = json.loads((root / "poses" / f"{name}.json").read_text())
    for e in doc["poses"]:
        if e["label"].startswith(f"LINEMOD/{name}/"):
            stem = Path(e["image"]).stem
            mask = cv2.imread(str(root / f"LINEMOD/{name}/mask/{stem[-4:]}.png"), cv2.IMREAD_GRAYSCALE)
            alone = render([mesh], [(np.array(e["R"]), np.array(e["t"]))], K, W, H, one_light())
            yield mask > 0, alone.ids == 0, cv2.imread(str(root / e["image"]))[:, :, ::-1].astype(int)


def test_mesh_set_masks_are_the_rendered_object(mesh_set, tmp_path):
    root, paths, _ = mesh_set
    mesh = Mesh.from_file(read_mesh(paths[2]))
    for mask, alone, image in _object_masks(root, "tex_box", mesh):  # with distractors and occluders
        assert not np.any(mask & ~alone)  # never a pixel off the object
        assert mask.sum() >= synthetic.RenderOptions().min_visible * alone.sum()
        r, b = image[mask][:, 0], image[mask][:, 2]
        # red or blue texture, not grey: relative to brightness, as a dim light draw darkens both
        assert np.mean(np.abs(r - b) > 0.5 * np.maximum(r, b)) > 0.5
    bare = tmp_path / "bare"
    options = synthetic.RenderOptions(distractors=(0, 0), occluders=(0, 0))
    synthetic.generate_from_meshes(bare, paths[2:], n_images=3, seed=2, options=options)
    for mask, alone, _ in _object_masks(bare, "tex_box", mesh):
        assert np.array_equal(mask, alone)  # nothing in front: the mask is the whole rendered object


def test_occluders_hide_part_of_the_object_and_distractors_show(tmp_path, coloured_ply):
    options = synthetic.RenderOptions(distractors=(3, 3), occluders=(1, 1), min_visible=0.3, blur_px=(0, 0),
                                      noise=(0, 0))
    root = tmp_path / "cluttered"
    synthetic.generate_from_meshes(root, [coloured_ply], n_images=6, seed=4, options=options)
    mesh = Mesh.from_file(read_mesh(coloured_ply))
    hidden = [1 - m.sum() / a.sum() for m, a, _ in _object_masks(root, "box", mesh)]
    assert max(hidden) > 0.05 and min(hidden) >= 0.0 and max(hidden) <= 0.7


def test_mesh_set_is_byte_identical_for_a_seed_whatever_the_workers(mesh_set, tmp_path):
    root, paths, _ = mesh_set
    again = tmp_path / "again"
    synthetic.generate_from_meshes(again, paths, ["mm", "m", "m"], n_images=4, seed=5, multi=2, test_fraction=0.5,
                                   workers=2)
    ours, theirs = _tree(root), _tree(again)
    manifest = "ssp_manifest.json"
    ours.pop(manifest), theirs.pop(manifest)
    info_a = json.loads((root / synthetic.INFO_FILE).read_text())
    info_b = json.loads((again / synthetic.INFO_FILE).read_text())
    assert info_a == info_b
    assert ours == theirs and len(ours) > 40


def test_mesh_set_layout_reads_with_the_data_files(mesh_set):
    from linemod_format import read_data_cfg, read_list

    root, _, summary = mesh_set
    for cfg in summary["data_cfgs"]:
        opts = read_data_cfg(cfg)
        assert (root / opts["mesh"]).is_file() and read_list(root / opts["valid"], root)
        assert float(opts["width"]) == W and float(opts["fx"]) == K[0, 0]
    assert summary["occlusion_data"] and summary["images"] == 12 and summary["scenes"] == 2


def test_a_camera_that_cannot_see_the_object_is_refused_before_writing(coloured_ply, tmp_path):
    out = tmp_path / "never"
    too_near = synthetic.RenderOptions(distance_m=(0.05, 0.5))
    with pytest.raises(InputError, match=r"box.ply: the camera .* cannot see the object at the requested "
                                         r"distances: at 0.05 m the camera is inside the object"):
        synthetic.generate_from_meshes(out, [coloured_ply], n_images=1, options=too_near)
    too_far = synthetic.RenderOptions(distance_m=(0.5, 30.0))
    with pytest.raises(InputError, match=r"at 30 m the object spans .* px, under 16"):
        synthetic.generate_from_meshes(out, [coloured_ply], n_images=1, options=too_far)
    assert not out.exists()


def test_default_distances_follow_the_mesh_size_and_the_camera():
    v, _ = box_quads()
    assert synthetic.camera_distances(v, K, W, H) == pytest.approx((0.6, 1.2))  # LINEMOD-sized: LINEMOD's range
    lo, hi = synthetic.camera_distances(v * 20, K, W, H)  # 2 m wide: backed off until it fits
    r = np.linalg.norm(v * 20, axis=1).max()
    assert 2 * K[1, 1] * r / lo == pytest.approx(synthetic.FIT_FRACTION * H) and hi == pytest.approx(2 * lo)
    lo, hi = synthetic.camera_distances(v, 2 * K * [[1], [1], [0.5]], W, H)  # twice the focal length
    assert (lo, hi) == pytest.approx((1.2, 2.4))


def test_fresh_test_sets_of_a_mesh_set_render_the_same_meshes(mesh_set, tmp_path):
    import shutil

    root, paths, _ = mesh_set
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    summary = synthetic.add_fresh_test(copy, 2, fresh_seed=8)
    scenes = synthetic.add_fresh_multi(copy, 2, fresh_seed=8)
    assert scenes["scenes"] == 2 and len(summary["data_cfgs"]) == 3
    source = read_mesh(paths[0], "mm")
    doc = json.loads((copy / "poses/mm_box_fresh8.json").read_text())
    mesh = Mesh.from_file(source)
    for e in doc["poses"]:  # the user's mesh, not a procedural object: labels and masks fit it
        row = read_label_rows(copy / e["label"])[0]
        expected = project_points(pose_points3d(box_corners(source.vertices)), np.array(e["R"]), np.array(e["t"]), K)
        assert np.abs(row[1:19].reshape(9, 2) * [W, H] - expected).max() < LABEL_TOL_PX
        mask = cv2.imread(str(copy / f"LINEMOD/mm_box/mask/{Path(e['image']).stem[-4:]}.png"), 0) > 0
        alone = render([mesh], [(np.array(e["R"]), np.array(e["t"]))], K, W, H, one_light()).ids == 0
        assert mask.any() and not np.any(mask & ~alone)
    original = paths[1].read_bytes()
    try:
        paths[1].write_bytes(original + b"\n")  # a mesh changed since the set was made
        with pytest.raises(InputError, match=r"synthetic_info.json: mesh .*bin_box.ply of object bin_box changed"):
            synthetic.add_fresh_test(copy, 1, fresh_seed=9)
    finally:
        paths[1].write_bytes(original)  # the module's other tests use it


def test_the_main_job_meeting_a_mesh_set_names_it_and_moves_aside(coloured_ply, tmp_path, capsys):
    root = tmp_path / "synthetic"
    synthetic.generate_from_meshes(root, [coloured_ply], n_images=1)
    params = synthetic.generation_params(1, 2, seed=0, multi=0, test_fraction=0.5)
    with pytest.warns(UserWarning, match=rf"{root} holds a synthetic set made with other parameters \(meshes box, "
                                         r"1 images per object.*: left as it is; the main job uses"):
        assert synthetic.ensure_dataset(root, params) == tmp_path / "synthetic_main"

