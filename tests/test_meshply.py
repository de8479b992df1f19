"""PLY reading and writing: ASCII and binary, LINEMOD fields, millimetre meshes, bad files."""
import warnings

import numpy as np
import pytest

from MeshPly import MeshError, MeshPly, MeshUnitsWarning, units_warning, write_ply

VERTS = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.2, 0], [0, 0, 0.3]], dtype=np.float64)
FACES = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
NORMALS = np.eye(3)[[0, 1, 2, 0]].astype(np.float64)
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)


@pytest.mark.parametrize("binary", [False, True])
def test_round_trip_linemod_fields(tmp_path, binary):
    p = tmp_path / "m.ply"
    write_ply(p, VERTS, FACES, NORMALS, COLORS, binary=binary)
    head = p.read_bytes()[:200]
    assert (b"format ascii" in head) != binary
    m = MeshPly(p)
    np.testing.assert_allclose(m.vertices, VERTS, atol=1e-7)
    np.testing.assert_allclose(m.normals, NORMALS, atol=1e-7)
    np.testing.assert_allclose(m.colors, COLORS / 255.0)
    np.testing.assert_array_equal(m.indices, FACES)


def test_ascii_linemod_style_file_with_quads(tmp_path):
    p = tmp_path / "obj.ply"
    p.write_text(
        "ply\nformat ascii 1.0\ncomment a LINEMOD-like file\nelement vertex 4\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property float nx\nproperty float ny\nproperty float nz\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0 0 0 1 255 255 255\n1 0 0 0 0 1 0 0 0\n1 1 0 0 0 1 0 0 0\n0 1 0 0 0 1 0 0 0\n"
        "4 0 1 2 3\n"
    )
    m = MeshPly(p)
    assert m.vertices.shape == (4, 3)
    np.testing.assert_array_equal(m.indices, [[0, 1, 2], [0, 2, 3]])  # quad split in two
    np.testing.assert_allclose(m.colors[0], [1, 1, 1])


def test_point_cloud_without_faces_or_colours(tmp_path):
    p = tmp_path / "pts.ply"
    write_ply(p, VERTS)
    m = MeshPly(p, color=(0.5, 0.5, 0.5))
    assert m.indices.shape == (0, 3) and m.normals is None
    np.testing.assert_allclose(m.colors, 0.5)


def test_millimetre_helper(tmp_path):
    p = tmp_path / "obj_000001.ply"
    write_ply(p, VERTS * 1000.0)
    np.testing.assert_allclose(MeshPly.from_millimetres(p).vertices, VERTS, atol=1e-7)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(MeshError, match="missing.ply: mesh file not found"):
        MeshPly(tmp_path / "missing.ply")
    junk = tmp_path / "junk.ply"
    junk.write_text("this is not a ply file\n")
    with pytest.raises(MeshError, match="junk.ply: not a readable PLY"):
        MeshPly(junk)
    noxyz = tmp_path / "noxyz.ply"
    noxyz.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float a\nproperty float b\nend_header\n1 2\n")
    with pytest.raises(MeshError, match=r"noxyz.ply: vertex element lacks \['x', 'y', 'z'\]"):
        MeshPly(noxyz)


def test_non_finite_vertex_is_an_error(tmp_path):
    """A NaN vertex was accepted and turned every metric into NaN (issue 16)."""
    p = tmp_path / "nan.ply"
    bad = VERTS.copy()
    bad[2, 1] = np.nan
    write_ply(p, bad, FACES)
    with pytest.raises(MeshError, match=r"nan\.ply: 1 vertices have a NaN or inf coordinate \(first: vertex 2\)"):
        MeshPly(p)


def test_face_pointing_past_the_vertices_is_an_error(tmp_path):
    p = tmp_path / "faces.ply"
    write_ply(p, VERTS, np.array([[0, 1, 7]]))
    with pytest.raises(MeshError, match=r"faces\.ply: a face refers to vertex 7 .* the mesh has 4 vertices"):
        MeshPly(p)


def test_millimetre_mesh_read_as_metres_warns_once(tmp_path):
    """valid.py and train.py read a millimetre mesh without a word; only make_labels warned (issue 16)."""
    p = tmp_path / "mm.ply"
    write_ply(p, VERTS * 1000, FACES)
    with pytest.warns(MeshUnitsWarning) as record:
        MeshPly(p)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"{p}: the mesh is 374.2 m across") and "\n" not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MeshPly.from_millimetres(p)  # units stated: no warning
        write_ply(tmp_path / "m.ply", VERTS * 12, FACES)  # 4.5 m diagonal: no warning
        MeshPly(tmp_path / "m.ply")
    assert units_warning(VERTS * 16, "x") is not None and units_warning(VERTS * 12, "x") is None  # 6.0 m, 4.5 m


def test_header_declaring_more_records_than_bytes_is_refused_at_once(tmp_path):
    """plyfile allocated two billion face records (minutes, 14 GB) before noticing the end of file."""
    p = tmp_path / "huge.ply"
    p.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
                  b"property float z\nelement face 2000000000\nproperty list uchar int vertex_indices\nend_header\n"
                  + bytes(48))
    with pytest.raises(MeshError, match=r"huge\.ply: the header declares 2000000000 face records but 49 bytes follow"):
        MeshPly(p)
