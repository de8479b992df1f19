"""Domain randomisation of sets rendered from user meshes (randomisation.py, backgrounds.py) and the
--mesh form of tools/make_synthetic_linemod.py."""
import colorsys
import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import synthetic
from backgrounds import BackgroundWarning, list_photos, procedural_photo
from errors import InputError
from randomisation import OPTION_FLAGS, Randomiser, RenderOptions, options_from_args
from render import Rendering
from tools import make_synthetic_linemod as gen_cli

from test_render import box_quads, colours_for, ply_text

ONE_FLAT = dict(distractors=(0, 0), occluders=(0, 0), blur_px=(0, 0), noise=(0, 0))


@pytest.fixture()
def box_ply(tmp_path):
    v, q = box_quads()
    path = tmp_path / "box.ply"
    path.write_text(ply_text(v, q, [("uchar", "red"), ("uchar", "green"), ("uchar", "blue")], colours_for(v)))
    return path


@pytest.fixture()
def photos(tmp_path):
    """Three flat photos of known colours (and one file that is not an image)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, bgr in enumerate(((0, 0, 200), (0, 200, 0), (200, 0, 0))):
        cv2.imwrite(str(folder / f"p{k}.jpg"), np.full((300, 500, 3), bgr, np.uint8))
    return folder


def test_every_option_has_a_flag_and_is_recorded_with_its_default(box_ply, tmp_path):
    assert set(OPTION_FLAGS) == set(RenderOptions().record())
    root = tmp_path / "set"
    synthetic.generate_from_meshes(root, [box_ply], n_images=1)
    info = json.loads((root / synthetic.INFO_FILE).read_text())
    assert info["options"] == RenderOptions().record()
    assert info["options"]["distance_m"] is None and info["meshes"][0]["distance_m"] == [0.6, 1.2]
    assert info["background_photos"] == 0


def test_backgrounds_folder_is_checked_before_rendering(box_ply, tmp_path, photos):
    out = tmp_path / "never"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"--bg-dir {empty}: no image files"):
        synthetic.generate_from_meshes(out, [box_ply], n_images=1, options=RenderOptions(backgrounds=str(empty)))
    (empty / "x.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"1 image file\(s\), none readable \(first: x.jpg\)"):
        synthetic.generate_from_meshes(out, [box_ply], n_images=1, options=RenderOptions(backgrounds=str(empty)))
    with pytest.raises(InputError, match="folder not found"):
        synthetic.generate_from_meshes(out, [box_ply], n_images=1, options=RenderOptions(backgrounds=str(out)))
    assert not out.exists()
    (photos / "notes.png").write_text("not a png")
    with pytest.warns(BackgroundWarning, match=r"1 of 4 image files are not readable and are skipped"):
        assert [Path(p).name for p in list_photos(photos)] == ["p0.jpg", "p1.jpg", "p2.jpg"]


def test_photo_backgrounds_show_behind_the_object(box_ply, tmp_path, photos):
    root = tmp_path / "photo_set"
    options = RenderOptions(backgrounds=str(photos), jpeg_quality=(100, 100), **ONE_FLAT)
    synthetic.generate_from_meshes(root, [box_ply], n_images=4, seed=1, options=options)
    colours = {(200, 0, 0), (0, 200, 0), (0, 0, 200)}  # RGB of the three photos
    seen = set()
    for img in sorted((root / "LINEMOD/box/JPEGImages").glob("*.jpg")):
        rgb = cv2.imread(str(img))[:, :, ::-1].astype(int)
        mask = cv2.imread(str(root / "LINEMOD/box/mask" / f"{img.stem[-4:]}.png"), cv2.IMREAD_GRAYSCALE) > 0
        far = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
        median = tuple(int(c) for c in np.median(rgb[far], axis=0))
        match = [c for c in colours if max(abs(a - b) for a, b in zip(c, median)) <= 3]
        assert match, median
        seen.add(match[0])
    assert len(seen) >= 2
    info = json.loads((root / synthetic.INFO_FILE).read_text())
    assert info["options"]["backgrounds"] == str(photos) and info["background_photos"] == 3


def test_camera_ranges_are_the_requested_ones(box_ply, tmp_path):
    root = tmp_path / "ranges"
    options = RenderOptions(distance_m=(0.8, 0.8), elevation_deg=(30, 30), **ONE_FLAT)
    synthetic.generate_from_meshes(root, [box_ply], n_images=5, seed=3, options=options)
    for e in json.loads((root / "poses/box.json").read_text())["poses"]:
        R, t = np.array(e["R"]), np.array(e["t"])
        camera = -R.T @ t  # the camera centre in the model frame
        assert np.linalg.norm(t) == pytest.approx(0.8, abs=1e-9)
        assert math.degrees(math.asin(camera[2] / np.linalg.norm(camera))) == pytest.approx(30.0, abs=1e-6)


def test_procedural_photo_backgrounds_are_textured_and_seeded():
    a = procedural_photo(np.random.default_rng(5), 320, 240)
    b = procedural_photo(np.random.default_rng(5), 320, 240)
    c = procedural_photo(np.random.default_rng(6), 320, 240)
    assert a.shape == (240, 320, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.std() > 5 and len(np.unique(a.reshape(-1, 3), axis=0)) > 500  # not flat, not a few colours


def _randomiser(**kw) -> Randomiser:
    return Randomiser(RenderOptions(**kw).checked())


def test_colour_jitter_changes_only_the_object_pixels():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = (200, 40, 40)
    selected = np.zeros((4, 4), bool)
    selected[0] = True
    out = rgb.copy()
    _randomiser(hue=0.5, saturation=(1, 1), brightness=(1, 1), contrast=(1, 1)).jitter(
        np.random.default_rng(0), out, selected)
    assert np.array_equal(out[1:], rgb[1:])  # unselected pixels untouched
    dh = np.random.default_rng(0).uniform(-0.5, 0.5)  # the draw jitter makes first
    h, sat, val = colorsys.rgb_to_hsv(200 / 255, 40 / 255, 40 / 255)
    expected = np.array(colorsys.hsv_to_rgb((h + dh) % 1.0, sat, val)) * 255
    assert np.abs(out[0].astype(float) - expected).max() <= 1.0  # every selected pixel: the hue turned by dh
    out = rgb.copy()
    _randomiser(hue=0.0, saturation=(1, 1), brightness=(0.5, 0.5), contrast=(1, 1)).jitter(
        np.random.default_rng(0), out, selected)
    assert np.array_equal(out[0, 0], [100, 20, 20])


def test_blur_and_noise_of_the_whole_image():
    bg = np.full((64, 64, 3), 100, np.uint8)
    rendering = Rendering(np.zeros_like(bg), np.full((64, 64), -1, np.int16), np.zeros(0, np.int64))
    rendering.ids[20:40, 20:40] = 0
    rendering.rgb[20:40, 20:40] = 250
    clean = _randomiser(blur_px=(0, 0), noise=(0, 0)).finish(np.random.default_rng(0), bg, rendering)
    assert np.array_equal(clean[rendering.ids == 0], np.full((400, 3), 250)) and np.all(clean[rendering.ids < 0] == 100)
    noisy = _randomiser(blur_px=(0, 0), noise=(8, 8)).finish(np.random.default_rng(0), bg, rendering)
    assert (noisy[:16].astype(float) - 100).std() == pytest.approx(8.0, rel=0.1)
    blurred = _randomiser(blur_px=(2, 2), noise=(0, 0)).finish(np.random.default_rng(0), bg, rendering)
    assert 100 < blurred[30, 18, 0] < 250  # the edge is spread


def test_bad_options_name_the_flag(tmp_path):
    parser = gen_cli.get_args_parser()
    args = parser.parse_args(["--mesh", "x.ply", "--blur", "0.5", "--distractors", "2,5", "--bg-dir", "d"])
    options = options_from_args(args)
    assert options.blur_px == (0.5, 0.5) and options.distractors == (2, 5) and options.backgrounds == "d"
    for argv, match in ((["--blur", "3,1"], r"--blur 3,1: expected 0 <= low <= high <= 20"),
                        (["--lights", "1.5,2"], r"--lights 1.5,2: expected whole numbers"),
                        (["--noise", "a"], r"--noise a: expected LOW,HIGH or one number"),
                        (["--min-visible", "2"], r"--min-visible 2: expected a number from 0 to 1")):
        with pytest.raises(InputError, match=match):
            options_from_args(parser.parse_args(["--mesh", "x.ply", *argv]))


def test_cli_renders_a_mesh_and_refuses_mesh_flags_without_one(box_ply, tmp_path, capsys):
    out = tmp_path / "cli"
    assert gen_cli.main(["--out", str(out), "--mesh", str(box_ply), "--images-per-object", "2", "--quiet",
                         "--jpeg-quality", "80,90", "--distance", "0.7,0.9", "--fx", "600"]) == 0
    info = json.loads((out / synthetic.INFO_FILE).read_text())
    assert info["options"]["jpeg_quality"] == [80, 90] and info["options"]["distance_m"] == [0.7, 0.9]
    assert info["K"][0][0] == 600.0 and (out / "cfg/box.data").is_file()
    with pytest.raises(SystemExit):
        gen_cli.main(["--out", str(tmp_path / "p"), "--bg-dir", str(tmp_path)])
    assert "--bg-dir is an option of a --mesh set" in capsys.readouterr().err
    assert gen_cli.main(["--out", str(tmp_path / "p"), "--jpeg-quality", "80,90"]) == 2
    err = capsys.readouterr().err
    assert "--jpeg-quality 80,90: expected a whole number (a range LOW,HIGH only with --mesh)" in err


def test_same_seed_same_randomised_set(box_ply, tmp_path, photos):
    options = RenderOptions(backgrounds=str(photos), distractors=(2, 3), occluders=(1, 1))
    a, b = tmp_path / "a", tmp_path / "b"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about here
        synthetic.generate_from_meshes(a, [box_ply], n_images=3, seed=9, options=options)
    synthetic.generate_from_meshes(b, [box_ply], n_images=3, seed=9, options=options)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "ssp_manifest.json")
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_neighbours_sit_just_behind_the_object_around_its_outline():
    from randomisation import NEIGHBOUR_OFFSET, NEIGHBOUR_SIZE

    K = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])
    options = RenderOptions(distractors=(0, 0), occluders=(0, 0), neighbours=(5, 5))
    randomiser = Randomiser.prepare(options, lambda k: np.random.default_rng(k))
    radius, t = 0.05, np.array([0.02, -0.01, 0.8])
    behind, front = randomiser.clutter(np.random.default_rng(3), radius, t, K, 640, 480)
    assert len(behind) == 5 and front == []
    centre = (K @ t)[:2] / t[2]
    r_px = K[0, 0] * radius / np.linalg.norm(t)
    for mesh, (_, pos) in behind:
        r = float(np.linalg.norm(mesh.vertices, axis=1).max())
        depth = float(np.linalg.norm(pos))
        assert NEIGHBOUR_SIZE[0] * radius - 1e-9 <= r <= NEIGHBOUR_SIZE[1] * radius + 1e-9  # the object's size
        assert depth >= np.linalg.norm(t) + radius + r - 1e-9  # beyond the object's far side: it never hides it
        pixel = (K @ pos)[:2] / pos[2]
        reach = r_px + K[0, 0] * r / depth
        offset = np.linalg.norm(pixel - centre)
        assert NEIGHBOUR_OFFSET[0] * reach - 1e-6 <= offset <= NEIGHBOUR_OFFSET[1] * reach + 1e-6


def test_neighbours_clutter_the_objects_surroundings_and_leave_its_mask_and_pose(box_ply, tmp_path):
    images = {}
    for count in (0, 4):
        root = tmp_path / f"n{count}"
        options = RenderOptions(neighbours=(count, count), jpeg_quality=(100, 100), **ONE_FLAT)
        synthetic.generate_from_meshes(root, [box_ply], n_images=3, seed=6, options=options)
        masks = root / "LINEMOD/box/mask"
        images[count] = [(cv2.imread(str(p)).astype(int),
                          cv2.imread(str(masks / f"{p.stem[-4:]}.png"), cv2.IMREAD_GRAYSCALE))
                         for p in sorted((root / "LINEMOD/box/JPEGImages").glob("*.jpg"))]
        assert json.loads((root / synthetic.INFO_FILE).read_text())["options"]["neighbours"] == [count, count]
    assert (tmp_path / "n0/poses/box.json").read_text() == (tmp_path / "n4/poses/box.json").read_text()
    for (plain, mask), (cluttered, mask4) in zip(images[0], images[4]):
        assert np.array_equal(mask, mask4)  # behind the object: its mask is whole
        ring = (cv2.dilate(mask, np.ones((41, 41), np.uint8)) > 0) & (mask == 0)
        assert np.mean(np.abs(plain - cluttered).max(axis=2)[ring] > 30) > 0.1  # objects around it


def test_a_lookalike_keeps_its_pattern_in_the_objects_colours():
    from randomisation import lookalike
    from render import make_mesh

    mesh = make_mesh(np.random.default_rng(4), diameter=1.0)
    colours = np.array([[250, 250, 250], [10, 10, 10], [200, 30, 30], [120, 120, 120]], np.uint8)
    twin = lookalike(mesh, colours)
    assert np.array_equal(twin.vertices, mesh.vertices) and np.array_equal(twin.faces, mesh.faces)
    for got in (twin.face_colors, twin.vertex_colors):
        assert {tuple(c) for c in got} <= {tuple(c) for c in colours}  # only the object's colours
    luma = np.array([0.299, 0.587, 0.114])
    own, new = mesh.face_colors @ luma, twin.face_colors @ luma
    order = np.argsort(own, kind="stable")
    assert np.all(np.diff(new[order]) >= 0)  # brightness order kept: the pattern stays
    assert tuple(twin.face_colors[np.argmax(own)]) == (250, 250, 250)
    assert tuple(twin.face_colors[np.argmin(own)]) == (10, 10, 10)


def test_lookalikes_colour_that_fraction_of_the_clutter_and_move_nothing():
    K = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])
    colours = np.array([[240, 235, 230], [180, 20, 20]], np.uint8)
    radius, t = 0.05, np.array([0.02, -0.01, 0.8])
    clutter = {}
    for fraction in (0.0, 1.0):
        options = RenderOptions(distractors=(3, 3), occluders=(1, 1), neighbours=(4, 4), lookalikes=fraction)
        randomiser = Randomiser.prepare(options, lambda k: np.random.default_rng(k))
        clutter[fraction] = randomiser.clutter(np.random.default_rng(5), radius, t, K, 640, 480, colours=colours)
    allowed = {tuple(c) for c in colours}
    for group0, group1 in zip(clutter[0.0], clutter[1.0]):
        assert len(group0) == len(group1)
        for (m0, (R0, t0)), (m1, (R1, t1)) in zip(group0, group1):
            assert np.array_equal(R0, R1) and np.array_equal(t0, t1) and np.array_equal(m0.vertices, m1.vertices)
            assert {tuple(c) for c in m1.face_colors} <= allowed
            assert not {tuple(c) for c in m0.face_colors} <= allowed  # the pool's own colours without them
    assert len(clutter[1.0][0]) == 7  # 3 distractors and 4 neighbours behind; the occluder in front or dropped


def test_sharp_shapes_add_full_contrast_edges_and_none_keeps_the_pixels():
    plain = procedural_photo(np.random.default_rng(8), 320, 240)
    assert np.array_equal(plain, procedural_photo(np.random.default_rng(8), 320, 240, sharp_shapes=(0, 0)))
    sharp = procedural_photo(np.random.default_rng(8), 320, 240, sharp_shapes=(40, 40))
    assert sharp.shape == plain.shape and sharp.dtype == np.uint8

    def edges(img):
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float64)
        return np.mean(np.abs(np.diff(grey, axis=1)) > 60)

    assert edges(sharp) > 5 * max(edges(plain), 1e-4)  # the smooth layers have almost no hard edges
    grey = cv2.cvtColor(sharp, cv2.COLOR_RGB2GRAY)
    assert np.mean(grey < 40) > 0.002 and np.mean(grey > 215) > 0.002  # black and white both present


@pytest.mark.parametrize("flags, message", [
    (["--lookalikes", "1.5"], r"--lookalikes 1.5: expected a number from 0 to 1"),
    (["--sharp-shapes", "9,3"], r"--sharp-shapes 9,3: expected whole numbers 0 <= low <= high <= 200"),
    (["--sharp-shapes", "2.5"], r"--sharp-shapes 2.5,2.5: expected whole numbers"),
])
def test_lookalike_and_sharp_shape_flags_are_checked(flags, message):
    args = gen_cli.get_args_parser().parse_args(["--mesh", "m.ply", *flags])
    with pytest.raises(InputError, match=message):
        options_from_args(args)


def _ground_case(elevation: float = 30.0):
    """A camera looking at a box standing on z = -0.05 m (model frame) from `elevation` degrees."""
    from render import look_at_rotation

    K = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])
    vertices = np.array([[x, y, z] for x in (-0.04, 0.04) for y in (-0.03, 0.03) for z in (-0.05, 0.06)])
    R = look_at_rotation(math.radians(elevation), math.radians(20.0), 0.0)
    return K, vertices, R, np.array([0.0, 0.0, 0.8])


def test_the_ground_is_a_table_under_the_object_seen_through_its_pose():
    K, vertices, R, t = _ground_case()
    background = np.full((480, 640, 3), 77, np.uint8)
    randomiser = Randomiser.prepare(RenderOptions(ground=1.0), lambda k: np.random.default_rng(k))
    out = randomiser.ground(np.random.default_rng(2), background, R, t, vertices, K)
    assert out.shape == background.shape and out.dtype == np.uint8 and np.all(background == 77)  # a new image
    changed = np.any(out != 77, axis=2)
    assert 0.05 < changed.mean() < 1.0

    def pixel(p):
        q = K @ (R @ p + t)
        return q[:2] / q[2]

    u, v = np.round(pixel(np.array([0.0, 0.0, -0.05]))).astype(int)  # under the object, on the plane
    assert changed[v - 3:v + 4, u - 3:u + 4].mean() > 0.8
    # every drawn pixel is on the plane in front of the camera: its ray meets z = -0.05 ahead
    K, vertices, R, t = _ground_case(12.0)  # a low view: the plane's horizon is inside the image
    changed = np.any(randomiser.ground(np.random.default_rng(3), background, R, t, vertices, K) != 77, axis=2)
    v, u = np.nonzero(changed)
    rays = (R.T @ (np.linalg.inv(K) @ np.stack([u, v, np.ones_like(u)]).astype(np.float64))).T
    centre = -R.T @ t
    ahead = (-0.05 - centre[2]) / rays[:, 2]
    assert len(u) > 1000 and np.all(ahead > 0)
    horizon = K @ R @ -np.array([math.cos(math.radians(20.0)), math.sin(math.radians(20.0)), 0.0])  # looking away
    assert 0 < horizon[1] / horizon[2] < 480  # the horizon of the plane is in the image: the test means something


def test_no_ground_draws_nothing_and_a_camera_below_the_table_gets_none():
    K, vertices, R, t = _ground_case()
    background = np.full((48, 64, 3), 77, np.uint8)
    for options, (rot, pos) in ((RenderOptions(), (R, t)), (RenderOptions(ground=1.0), _ground_case(-30.0)[2:])):
        randomiser = Randomiser.prepare(options, lambda k: np.random.default_rng(k))
        rng = np.random.default_rng(5)
        assert randomiser.ground(rng, background, rot, pos, vertices, K) is background
        draws_left = rng.random()
        if options.ground == 0:  # no draw at all: a set without the ground keeps its pixels
            assert draws_left == np.random.default_rng(5).random()
    assert RenderOptions().ground == 0.0


def _box_sets_off_and_on(box_ply, tmp_path, option: str, off, on) -> list:
    """Two 3-image sets of the box (seed 6, flat lights, lossless) with RenderOptions `option` at
    `off` then `on`: each set's info records it and both have the same poses. Returns per image
    ((off image, off mask), (on image, on mask)), images (H, W, 3) int, masks (H, W) uint8."""
    images = []
    for k, value in enumerate((off, on)):
        root = tmp_path / f"{option}{k}"
        options = RenderOptions(**{option: value}, jpeg_quality=(100, 100), **ONE_FLAT)
        synthetic.generate_from_meshes(root, [box_ply], n_images=3, seed=6, options=options)
        masks = root / "LINEMOD/box/mask"
        images.append([(cv2.imread(str(p)).astype(int),
                        cv2.imread(str(masks / f"{p.stem[-4:]}.png"), cv2.IMREAD_GRAYSCALE))
                       for p in sorted((root / "LINEMOD/box/JPEGImages").glob("*.jpg"))])
        recorded = json.loads((root / synthetic.INFO_FILE).read_text())["options"][option]
        assert recorded == (list(value) if isinstance(value, tuple) else value)
    assert (tmp_path / f"{option}0/poses/box.json").read_text() == (tmp_path / f"{option}1/poses/box.json").read_text()
    return list(zip(*images))


def test_the_ground_changes_the_surroundings_not_the_objects_mask_or_pose(box_ply, tmp_path):
    for (plain, mask), (grounded, mask1) in _box_sets_off_and_on(box_ply, tmp_path, "ground", 0.0, 1.0):
        assert np.array_equal(mask, mask1)  # under the object: its mask is whole
        assert np.mean(np.abs(plain - grounded).max(axis=2)[mask == 0] > 30) > 0.1


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_the_ground_flag_is_checked(value):
    args = gen_cli.get_args_parser().parse_args(["--mesh", "m.ply", "--ground", value])
    with pytest.raises(InputError, match=rf"--ground {value}: expected a number from 0 to 1"):
        options_from_args(args)


def test_detail_adds_a_fine_pattern_to_the_object_pixels_only():
    rgb = np.full((120, 160, 3), 128, np.uint8)
    selected = np.zeros((120, 160), bool)
    selected[20:100, 30:130] = True
    out = rgb.copy()
    _randomiser(detail=(20, 20)).detail(np.random.default_rng(4), out, selected)
    assert np.array_equal(out[~selected], rgb[~selected])  # nothing outside the object
    grey = out[..., 0].astype(float)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])  # grey detail
    assert grey[selected].std() == pytest.approx(20.0, rel=0.05)  # the amplitude is the pattern's spread
    coarse = cv2.GaussianBlur(grey[20:100, 30:130], (0, 0), 8.0)[16:-16, 16:-16]
    assert coarse.std() < 0.25 * 20.0  # fine: a blur of 8 px removes most of it (a few pixels, not shading)


def test_no_detail_draws_nothing_and_keeps_the_pixels():
    rgb = np.full((40, 40, 3), 90, np.uint8)
    selected = np.ones((40, 40), bool)
    rng = np.random.default_rng(1)
    _randomiser().detail(rng, rgb, selected)
    assert np.all(rgb == 90) and rng.random() == np.random.default_rng(1).random()  # no draw: later pixels kept
    assert RenderOptions().detail == (0.0, 0.0)


def test_detail_changes_the_object_not_its_mask_pose_or_surroundings(box_ply, tmp_path):
    for (plain, mask), (detailed, mask1) in _box_sets_off_and_on(box_ply, tmp_path, "detail", (0.0, 0.0), (30.0, 30.0)):
        assert np.array_equal(mask, mask1) and mask.any()
        far = cv2.dilate(mask, np.ones((33, 33), np.uint8)) == 0  # beyond the JPEG blocks the object touches
        assert np.abs(plain - detailed)[far].max() <= 2
        inner = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
        assert np.abs(plain - detailed).max(axis=2)[inner].mean() > 10


@pytest.mark.parametrize("value", ["-1,5", "5,2", "300"])
def test_the_detail_flag_is_checked(value):
    args = gen_cli.get_args_parser().parse_args(["--mesh", "m.ply", f"--detail={value}"])
    with pytest.raises(InputError, match=r"--detail .*: expected 0 <= low <= high <= 255"):
        options_from_args(args)


def test_cavity_darkens_a_groove_and_lights_a_ridge_from_the_depth_map():
    depth = np.full((60, 80), 1.0)
    depth[:, 30:33] = 1.01  # a groove 1 cm deep: 0.03 of a 0.33 m radius
    depth[:, 45:48] = 0.99  # a ridge as high
    selected = np.ones((60, 80), bool)
    selected[:, 70:] = False  # not the object: kept, and not compared with
    rgb = np.full((60, 80, 3), 100, np.uint8)
    out = rgb.copy()
    _randomiser(cavity=(0.5, 0.5)).cavity(np.random.default_rng(0), out, depth, selected, 1 / 3)
    assert np.array_equal(out[:, 70:], rgb[:, 70:])
    assert np.all(out[:, 31] < 80) and np.all(out[:, 31] >= 50)  # darker, at most by the strength
    assert np.all(out[:, 46] > 120) and np.all(out[:, 46] <= 150)
    assert np.all(out[:, 5:15] == 100)  # flat: unchanged
    assert np.all(out[:, 66:70] == 100)  # the object's edge is not compared with the empty pixels beside it


def test_no_cavity_draws_nothing_and_keeps_the_pixels():
    rgb = np.full((20, 20, 3), 90, np.uint8)
    depth = np.random.default_rng(0).uniform(1, 2, (20, 20))
    rng = np.random.default_rng(1)
    _randomiser().cavity(rng, rgb, depth, np.ones((20, 20), bool), 0.1)
    assert np.all(rgb == 90) and rng.random() == np.random.default_rng(1).random()
    assert RenderOptions().cavity == (0.0, 0.0)


def test_cavity_shades_the_object_not_its_mask_or_pose(box_ply, tmp_path):
    changed = 0
    for (plain, mask), (shaded, mask1) in _box_sets_off_and_on(box_ply, tmp_path, "cavity", (0.0, 0.0), (1.0, 1.0)):
        assert np.array_equal(mask, mask1) and mask.any()
        far = cv2.dilate(mask, np.ones((33, 33), np.uint8)) == 0
        assert np.abs(plain - shaded)[far].max() <= 2
        changed += int(np.abs(plain - shaded).max(axis=2)[mask > 0].max() > 20)
    assert changed >= 2  # a box's edges and corners are ridges: lit


@pytest.mark.parametrize("value", ["-0.1,0.5", "0.5,0.2", "1.5"])
def test_the_cavity_flag_is_checked(value):
    args = gen_cli.get_args_parser().parse_args(["--mesh", "m.ply", f"--cavity={value}"])
    with pytest.raises(InputError, match=r"--cavity .*: expected 0 <= low <= high <= 1"):
        options_from_args(args)
