"""The data tools: make_labels.py, bop_to_linemod.py, draw_labels.py, get_linemod.sh.

The reference is the synthetic generator: its labels are exact projections of its saved poses
(tests/test_synthetic.py), so feeding those poses, meshes and images through the other tools must
give the same labels. Tolerances: make_labels in metres reads the same float64 poses and float32
mesh, so its label files are byte-identical; BOP stores the mesh in millimetres (float32), so a
label may differ by one unit of the 6th decimal ('%.6f' rounding), i.e. LABEL_TOL below.
"""
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

import hostile
import utils
from MeshPly import MeshPly, write_ply
from tools import bop_to_linemod as bop
from tools import draw_labels, make_labels
import synthetic as gen
from errors import FlagError, OutputPathError, PoseFileError
from conftest import write_poses_csv
from linemod_format import read_label_rows, read_list, read_poses

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "get_linemod.sh"
LABEL_TOL = 1e-6 + 1e-12  # one unit of '%.6f' (normalised units)
DATA_KEYS = ("train", "valid", "backup", "mesh", "tr_range", "name", "diam", "gpus", "num_workers",
             "width", "height", "fx", "fy", "u0", "v0")  # design §3.2
N_IMG, N_SCENES = 4, 2
RY = np.diag([-1.0, 1.0, -1.0])
CORNER_SWAP = [k ^ 0b101 for k in range(8)]  # 180 deg about Y: x and z of every corner flip


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools") / "synth"
    gen.generate(root, objects=2, images_per_object=N_IMG, seed=5, multi=N_SCENES, test_fraction=0.5, workers=1)
    return root


def _poses(root, name):
    return json.loads((root / "poses" / f"{name}.json").read_text())


def _synth_row(root, entry):
    """The generator's label row (21,) of a pose entry of poses/<obj>.json."""
    return read_label_rows(root / entry["label"])[entry["row"]]


# ------------------------------------------------------------------------------------------------
# a tiny BOP dataset made from the synthetic one
# ------------------------------------------------------------------------------------------------

def _write_bop(synth: Path, dest: Path) -> Path:
    """BOP layout: obj00 -> obj_id 1 (scene 1), obj01 -> obj_id 2 (scene 2), the multi-object
    scenes -> scene 3 (both objects, no masks). Meshes and translations in millimetres."""
    info = {}
    for obj_id, name in ((1, "obj00"), (2, "obj01")):
        m = MeshPly(synth / "LINEMOD" / name / f"{name}.ply")
        (dest / "models").mkdir(parents=True, exist_ok=True)
        write_ply(dest / "models" / f"obj_{obj_id:06d}.ply", m.vertices * 1000.0, m.indices, m.normals,
                  np.round(m.colors * 255).astype(np.uint8), binary=True)
        info[str(obj_id)] = {"diameter": utils.mesh_diameter(m.vertices) * 1000.0}
    (dest / "models" / "models_info.json").write_text(json.dumps(info))
    K = utils.get_camera_intrinsic().reshape(-1).tolist()
    scenes: dict = {}
    for obj_id, name in ((1, "obj00"), (2, "obj01")):
        for e in _poses(synth, name)["poses"]:
            im = int(Path(e["image"]).stem)
            scene = obj_id if im < N_IMG else 3
            gt = {"obj_id": obj_id, "cam_R_m2c": np.reshape(e["R"], -1).tolist(),
                  "cam_t_m2c": (np.array(e["t"]) * 1000.0).tolist()}
            scenes.setdefault(scene, {}).setdefault(im, (e["image"], []))[1].append(gt)
    for scene, images in scenes.items():
        d = dest / "test" / f"{scene:06d}"
        (d / "rgb").mkdir(parents=True)
        gt_doc, cam_doc = {}, {}
        for im, (rel, gts) in sorted(images.items()):
            gt_doc[str(im)] = sorted(gts, key=lambda g: g["obj_id"])
            cam_doc[str(im)] = {"cam_K": K, "depth_scale": 1.0}
            cv2.imwrite(str(d / "rgb" / f"{im:06d}.png"), cv2.imread(str(synth / rel)))
            if scene != 3:
                (d / "mask_visib").mkdir(exist_ok=True)
                shutil.copyfile(synth / rel.replace("JPEGImages", "mask").replace("/00", "/").replace(".jpg", ".png"),
                                d / "mask_visib" / f"{im:06d}_000000.png")
        (d / "scene_gt.json").write_text(json.dumps(gt_doc))
        (d / "scene_camera.json").write_text(json.dumps(cam_doc))
    return dest


@pytest.fixture(scope="module")
def bop_dir(synth, tmp_path_factory):
    return _write_bop(synth, tmp_path_factory.mktemp("bop") / "lm")


@pytest.fixture(scope="module")
def converted(bop_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv")
    warnings = []
    datas = bop.convert(bop_dir, out, names="bop", test_fraction=0.5, warn=warnings.append)
    return out, datas, warnings


def _image_map(out, name):
    """{(scene, im_id): 'NNNNNN'} from image_map.txt."""
    rows = [line.split() for line in (out / "LINEMOD" / name / "image_map.txt").read_text().splitlines()]
    return {(r[1], int(r[2])): r[0] for r in rows}


def test_bop_labels_equal_the_generator_labels(synth, converted):
    out, datas, warnings = converted
    assert [Path(d).name for d in datas] == ["obj_000001.data", "obj_000002.data"]
    checked = 0
    for obj_id, name, synth_name in ((1, "obj_000001", "obj00"), (2, "obj_000002", "obj01")):
        stems = _image_map(out, name)
        for e in _poses(synth, synth_name)["poses"]:
            im = int(Path(e["image"]).stem)
            scene = f"{obj_id:06d}" if im < N_IMG else "000003"
            row = read_label_rows(out / "LINEMOD" / name / "labels" / f"{stems[scene, im]}.txt")
            assert row.shape == (1, 21)
            np.testing.assert_allclose(row[0], _synth_row(synth, e), rtol=0, atol=LABEL_TOL)
            checked += 1
    assert checked == 2 * N_IMG + sum(len(read_label_rows(synth / f"LINEMOD/obj00/labels/{N_IMG + s:06d}.txt"))
                                      for s in range(N_SCENES))
    # both objects are in two scenes: files get a running index (scene order, then image id)
    for name in ("obj_000001", "obj_000002"):
        assert list(_image_map(out, name).values()) == [f"{i:06d}" for i in range(N_IMG + N_SCENES)]
        # scene 3 has no masks: rendered from the mesh, with a warning
        assert (f"warning: {name}: {N_SCENES} of {N_IMG + N_SCENES} images had no BOP mask; "
                f"rendered from the mesh instead") in warnings


def test_bop_masks_cfg_lists_and_mesh(synth, converted):
    out, _, _ = converted
    for name, synth_name in (("obj_000001", "obj00"), ("obj_000002", "obj01")):
        for k in range(N_IMG):  # BOP mask_visib copied (scene 1, 2); file names follow the design §3.4 derivation
            stem = _image_map(out, name)[(f"{int(name[-1]):06d}", k)]
            got = cv2.imread(str(out / "LINEMOD" / name / "mask" / f"{stem[2:]}.png"), cv2.IMREAD_UNCHANGED)
            want = cv2.imread(str(synth / "LINEMOD" / synth_name / "mask" / f"{k:04d}.png"), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(got, want)
        path = out / "cfg" / f"{name}.data"
        assert tuple(line.split("=")[0].strip() for line in path.read_text().splitlines()) == DATA_KEYS
        opts = utils.read_data_cfg(path, resolve_paths=True)
        K, w, h = utils.camera_from_data_cfg(opts)
        np.testing.assert_array_equal(K, utils.get_camera_intrinsic())
        assert (w, h) == (640, 480) and opts["name"] == name
        synth_mesh = MeshPly(synth / "LINEMOD" / synth_name / f"{synth_name}.ply")
        assert float(opts["diam"]) == pytest.approx(utils.mesh_diameter(synth_mesh.vertices), rel=1e-12)
        train = Path(opts["train"]).read_text().splitlines()
        test = Path(opts["valid"]).read_text().splitlines()
        assert len(test) == len(train) and not set(train) & set(test)
        assert all((out / p).is_file() for p in train + test)
        # frame claim (default): the BOP mesh only scaled mm -> m, poses unchanged
        written = MeshPly(opts["mesh"]).vertices
        np.testing.assert_allclose(written, synth_mesh.vertices, rtol=2.5e-7, atol=1e-12)  # float32 mm vs m
        assert written.shape == synth_mesh.vertices.shape


def test_bop_rotate_y_180_is_the_same_object_with_swapped_corners(bop_dir, converted, tmp_path):
    out, _, _ = converted
    rot_out = tmp_path / "rot"
    bop.convert(bop_dir, rot_out, objects=[2], names="bop", rotate_y_180=True, test_fraction=0.5, warn=lambda m: None)
    name = "obj_000002"
    v0 = MeshPly(out / "LINEMOD" / name / f"{name}.ply").vertices
    v1 = MeshPly(rot_out / "LINEMOD" / name / f"{name}.ply").vertices
    np.testing.assert_array_equal(v1, v0 * np.array([-1.0, 1.0, -1.0]))  # v' = Ry v (exact in float32)
    p0, p1 = _poses(out, name)["poses"], _poses(rot_out, name)["poses"]
    assert [e["image"] for e in p0] == [e["image"] for e in p1]
    for e0, e1 in zip(p0, p1):
        np.testing.assert_array_equal(np.array(e1["R"]), np.array(e0["R"]) @ RY)  # R' = R Ry
        assert e1["t"] == e0["t"]
        a = read_label_rows(out / e0["label"])[0]
        b = read_label_rows(rot_out / e1["label"])[0]
        pa, pb = a[1:19].reshape(9, 2), b[1:19].reshape(9, 2)
        np.testing.assert_array_equal(pb[0], pa[0])  # the centroid does not move
        np.testing.assert_allclose(pb[1:], pa[1:][CORNER_SWAP], rtol=0, atol=LABEL_TOL)
        assert not np.allclose(pb[1:], pa[1:], atol=1e-3)  # but the corner order does change
        np.testing.assert_allclose(b[19:], a[19:], rtol=0, atol=LABEL_TOL)
        mask = e0["image"].replace("JPEGImages", "mask").replace("/00", "/").replace(".jpg", ".png")
        assert (out / mask).read_bytes() == (rot_out / mask).read_bytes()


# ------------------------------------------------------------------------------------------------
# make_labels.py
# ------------------------------------------------------------------------------------------------

def _user_records(synth, name):
    """The generator's poses of one object as a user would give them: image, R, t (metres)."""
    return [{"image": e["image"], "R": e["R"], "t": e["t"]} for e in _poses(synth, name)["poses"]]


def _assert_same_labels(synth, out, name, synth_name, tol=0.0):
    entries = _poses(synth, synth_name)["poses"]
    mine = _poses(out, name)["poses"]
    assert len(mine) == len(entries)
    for i, (e, m) in enumerate(zip(entries, mine)):
        text = (out / m["label"]).read_text()
        if tol == 0.0:  # same numbers in, same '%.6f' text out
            row = read_label_rows(synth / e["label"])[e["row"]]
            assert text == " ".join("%.6f" % v for v in row) + "\n", i
        else:
            np.testing.assert_allclose(read_label_rows(out / m["label"])[0], _synth_row(synth, e), rtol=0, atol=tol)


def test_make_labels_json_and_csv_give_the_generator_labels(synth, tmp_path, capsys):
    records = _user_records(synth, "obj01")
    (tmp_path / "poses.json").write_text(json.dumps(records))
    write_poses_csv(tmp_path / "poses.csv", records)
    mesh = synth / "LINEMOD/obj01/obj01.ply"
    for kind in ("json", "csv"):
        out = tmp_path / f"out_{kind}"
        rc = make_labels.main(["--mesh", str(mesh), "--poses", str(tmp_path / f"poses.{kind}"),
                               "--images-dir", str(synth),
                               "--out", str(out), "--name", "thing", "--class-id", "1",
                               "--camera-data", str(synth / "cfg/obj01.data")])
        assert rc == 0, capsys.readouterr().err
        _assert_same_labels(synth, out, "thing", "obj01")
    # the tools' own poses.json is accepted too, and the outputs are the same files
    out = tmp_path / "out_tools"
    make_labels.make_labels(mesh, synth / "poses/obj01.json", synth, out, "thing", class_id=1)
    for rel in ("LINEMOD/thing/labels/000005.txt", "LINEMOD/thing/train.txt", "cfg/thing.data",
                "LINEMOD/thing/mask/0003.png"):
        assert (out / rel).read_bytes() == (tmp_path / "out_csv" / rel).read_bytes(), rel
    # layout, .data keys, diameter, rendered masks equal the generator's (single-object images)
    data = out / "cfg/thing.data"
    assert tuple(line.split("=")[0].strip() for line in data.read_text().splitlines()) == DATA_KEYS
    opts = utils.read_data_cfg(data, resolve_paths=True)
    assert Path(opts["mesh"]).is_file() and Path(opts["train"]).is_file() and opts["name"] == "thing"
    assert float(opts["diam"]) == utils.mesh_diameter(MeshPly(mesh).vertices)
    for k in range(N_IMG):
        np.testing.assert_array_equal(cv2.imread(str(out / f"LINEMOD/thing/mask/{k:04d}.png"), cv2.IMREAD_UNCHANGED),
                                      cv2.imread(str(synth / f"LINEMOD/obj01/mask/{k:04d}.png"), cv2.IMREAD_UNCHANGED))
    train = (out / "LINEMOD/thing/train.txt").read_text().splitlines()
    test = (out / "LINEMOD/thing/test.txt").read_text().splitlines()
    assert len(train) + len(test) == len(records) and len(test) == round(0.25 * len(records))
    assert (out / "LINEMOD/thing/image_map.txt").read_text().splitlines()[0] == f"000000 {records[0]['image']}"


def test_make_labels_millimetres_and_camera_flags(synth, tmp_path):
    records = _user_records(synth, "obj00")
    mm = [{"image": r["image"], "R": r["R"], "t": (np.array(r["t"]) * 1000).tolist()} for r in records]
    write_poses_csv(tmp_path / "mm.csv", mm)
    m = MeshPly(synth / "LINEMOD/obj00/obj00.ply")
    write_ply(tmp_path / "mm.ply", m.vertices * 1000, m.indices)  # no normals, no colours
    K = utils.get_camera_intrinsic()
    (tmp_path / "train.txt").write_text(records[1]["image"] + "\n")
    out = tmp_path / "out"
    rc = make_labels.main(["--mesh", str(tmp_path / "mm.ply"), "--poses", str(tmp_path / "mm.csv"), "--mm",
                           "--images-dir", str(synth), "--out", str(out), "--name", "o", "--masks", "full",
                           *[v for k, (i, j) in (("fx", (0, 0)), ("fy", (1, 1)), ("u0", (0, 2)), ("v0", (1, 2)))
                             for v in (f"--{k}", repr(float(K[i, j])))],
                           "--width", "640", "--height", "480", "--train-list", str(tmp_path / "train.txt")])
    assert rc == 0
    _assert_same_labels(synth, out, "o", "obj00", tol=LABEL_TOL)
    assert (out / "LINEMOD/o/train.txt").read_text() == "LINEMOD/o/JPEGImages/000001.jpg\n"
    assert cv2.imread(str(out / "LINEMOD/o/mask/0000.png"), cv2.IMREAD_GRAYSCALE).min() == 255  # --masks full
    # a focal length that differs moves the points: the flag is used
    out2 = tmp_path / "out2"
    make_labels.make_labels(tmp_path / "mm.ply", tmp_path / "mm.csv", synth, out2, "o", K=K * [[1.1], [1], [1]],
                            mesh_units="mm", pose_units="mm", masks="none")
    a = read_label_rows(out / "LINEMOD/o/labels/000000.txt")[0]
    b = read_label_rows(out2 / "LINEMOD/o/labels/000000.txt")[0]
    assert np.abs(a[1:19:2] - b[1:19:2]).max() > 1e-3 and np.allclose(a[2:19:2], b[2:19:2], atol=LABEL_TOL)
    assert not (out2 / "LINEMOD/o/mask").exists()


def test_make_labels_masks_dir_and_symlinks(synth, tmp_path):
    records = _user_records(synth, "obj01")[:N_IMG]  # the single-object images
    (tmp_path / "p.json").write_text(json.dumps(records))
    masks = tmp_path / "masks"
    for r in records:  # the user's masks: same relative path and stem as the image, any format
        dst = (masks / r["image"]).with_suffix(".bmp")
        dst.parent.mkdir(parents=True, exist_ok=True)
        mask_file = r["image"].replace("JPEGImages", "mask").replace("/00", "/").replace(".jpg", ".png")
        m = cv2.imread(str(synth / mask_file))
        cv2.imwrite(str(dst), m)
    out = tmp_path / "out"
    make_labels.make_labels(synth / "LINEMOD/obj01/obj01.ply", tmp_path / "p.json", synth, out, "o",
                            masks_dir=masks, symlink=True)
    for k, r in enumerate(records):
        img = out / f"LINEMOD/o/JPEGImages/{k:06d}.jpg"
        assert img.is_symlink() and img.resolve() == (synth / r["image"]).resolve()
        np.testing.assert_array_equal(cv2.imread(str(out / f"LINEMOD/o/mask/{k:04d}.png"), cv2.IMREAD_UNCHANGED),
                                      cv2.imread(str(synth / f"LINEMOD/obj01/mask/{k:04d}.png"), cv2.IMREAD_UNCHANGED))
    (masks / records[2]["image"]).with_suffix(".bmp").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"000002\.png: mask of image 'LINEMOD/obj01/JPEGImages/000002\.jpg' not found"):
        make_labels.make_labels(synth / "LINEMOD/obj01/obj01.ply", tmp_path / "p.json", synth, tmp_path / "o2", "o",
                                masks_dir=masks)


# ------------------------------------------------------------------------------------------------
# nothing a user made is replaced (ownership.py, design D60)
# ------------------------------------------------------------------------------------------------

def _make_labels_argv(synth, poses, out, name, *extra):
    return ["--mesh", str(synth / "LINEMOD/obj00/obj00.ply"), "--poses", str(poses), "--images-dir", str(synth),
            "--out", str(out), "--name", name, "--masks", "full", *extra]


def test_make_labels_refuses_to_replace_a_file_it_did_not_write(synth, tmp_path, capsys):
    """`--out . --name ape` from the repository root would have rewritten the shipped cfg/ape.data."""
    (tmp_path / "p.json").write_text(json.dumps(_user_records(synth, "obj00")[:2]))
    repo = tmp_path / "repo"
    (repo / "cfg").mkdir(parents=True)
    shipped = (ROOT / "cfg/ape.data").read_text()
    (repo / "cfg/ape.data").write_text(shipped)
    (repo / "poses").mkdir()
    (repo / "poses/ape.json").write_text("[]\n")
    for extra in ((), ("--overwrite",)):
        assert make_labels.main(_make_labels_argv(synth, tmp_path / "p.json", repo, "ape", *extra)) == 2
        err = capsys.readouterr().err
        assert f"{repo / 'cfg/ape.data'} (not written by make_labels.py)" in err
        assert f"{repo / 'poses/ape.json'} (not written by make_labels.py)" in err
    assert (repo / "cfg/ape.data").read_text() == shipped and (repo / "poses/ape.json").read_text() == "[]\n"
    assert not (repo / "LINEMOD").exists()  # nothing written


def test_make_labels_overwrite_keeps_its_inputs_and_files_it_did_not_write(synth, tmp_path, capsys):
    records = _user_records(synth, "obj00")[:3]
    (tmp_path / "p.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    assert make_labels.main(_make_labels_argv(synth, tmp_path / "p.json", out, "o")) == 0
    assert make_labels.main(_make_labels_argv(synth, tmp_path / "p.json", out, "o")) == 2
    assert "--overwrite replaces them" in capsys.readouterr().err
    # its own output images as the input of a new run: --overwrite would remove them, so it is refused
    again = [{**r, "image": f"LINEMOD/o/JPEGImages/{k:06d}.jpg"} for k, r in enumerate(records)]
    (tmp_path / "again.json").write_text(json.dumps(again))
    argv = _make_labels_argv(synth, tmp_path / "again.json", out, "o", "--overwrite")
    argv[argv.index("--images-dir") + 1] = str(out)
    assert make_labels.main(argv) == 2
    err = capsys.readouterr().err
    assert "inputs of this run that --overwrite would replace or remove" in err
    assert str(out / "LINEMOD/o/JPEGImages/000000.jpg") in err
    assert all((out / f"LINEMOD/o/JPEGImages/{k:06d}.jpg").is_file() for k in range(3))
    # --overwrite with fewer images: its older image goes, the user's own files stay
    (out / "LINEMOD/o/notes.txt").write_text("the user's\n")
    (out / "cfg/my_own.data").write_text("the user's\n")
    (tmp_path / "two.json").write_text(json.dumps(records[:2]))
    assert make_labels.main(_make_labels_argv(synth, tmp_path / "two.json", out, "o", "--overwrite")) == 0
    assert not (out / "LINEMOD/o/JPEGImages/000002.jpg").exists()
    assert (out / "LINEMOD/o/notes.txt").is_file() and (out / "cfg/my_own.data").is_file()


@pytest.mark.parametrize("diam", ["0", "-0.1", "nan", "inf"])
def test_make_labels_refuses_a_diameter_that_train_and_valid_refuse(synth, tmp_path, capsys, diam):
    """--diameter 0 was written as `diam = 0.0`, which train.py and valid.py then refused (issue 36)."""
    (tmp_path / "p.json").write_text(json.dumps(_user_records(synth, "obj00")[:2]))
    err = _run_make_labels(synth, tmp_path, capsys, tmp_path / "p.json", extra=["--diameter", diam])
    assert f"--diameter {float(diam)}: the object's diameter must be a positive number of metres" in err
    assert not (tmp_path / "bad_out").exists()


def test_make_labels_after_ctrl_c_overwrites_what_it_wrote_and_a_hostile_manifest_deletes_nothing(
        synth, tmp_path, capsys, monkeypatch):
    records = _user_records(synth, "obj00")[:3]
    (tmp_path / "p.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    real, calls = make_labels.write_label_rows, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(make_labels, "write_label_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_labels.main(_make_labels_argv(synth, tmp_path / "p.json", out, "o"))
    monkeypatch.setattr(make_labels, "write_label_rows", real)
    entry = json.loads((out / "ssp_manifest.json").read_text())["files"]["LINEMOD/o/labels/000000.txt"]
    assert entry["unfinished"] is True and len(entry["sha256"]) == 64  # what it wrote, recorded
    assert make_labels.main(_make_labels_argv(synth, tmp_path / "p.json", out, "o", "--overwrite")) == 0
    # a manifest edited to name a file outside its folder: refused, and nothing is removed
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's\n")
    manifest = json.loads((out / "ssp_manifest.json").read_text())
    manifest["files"]["../victim.txt"] = {"tool": "make_labels.py", "group": "o", "unfinished": True}
    (out / "ssp_manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert make_labels.main(_make_labels_argv(synth, tmp_path / "p.json", out, "o", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"{out / 'ssp_manifest.json'}: refused: the entry '../victim.txt' leads out of the folder" in err
    assert victim.read_text() == "the user's\n" and (out / "LINEMOD/o/labels/000000.txt").is_file()


def test_bop_to_linemod_refuses_to_replace_a_data_file_the_user_edited(bop_dir, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["--bop", str(bop_dir), "--out", str(out), "--objects", "1", "--names", "bop"]
    assert bop.main(argv) == 0
    data = out / "cfg/obj_000001.data"
    edited = data.read_text().replace("backup = ", "backup = my/")
    data.write_text(edited)
    (out / "LINEMOD/obj_000001/notes.txt").write_text("the user's\n")
    assert bop.main(argv + ["--overwrite"]) == 2
    assert f"{data} (changed since bop_to_linemod.py wrote it)" in capsys.readouterr().err
    assert data.read_text() == edited
    data.unlink()  # once the user moves it away, --overwrite replaces only the converter's own files
    assert bop.main(argv + ["--overwrite"]) == 0
    assert data.is_file() and (out / "LINEMOD/obj_000001/notes.txt").is_file()


# ------------------------------------------------------------------------------------------------
# bad inputs: the error names the file and the entry / line
# ------------------------------------------------------------------------------------------------

def _run_make_labels(synth, tmp_path, capsys, poses, mesh=None, extra=()):
    mesh = mesh or synth / "LINEMOD/obj00/obj00.ply"
    out = tmp_path / "bad_out"
    rc = make_labels.main(["--mesh", str(mesh), "--poses", str(poses), "--images-dir", str(synth), "--out", str(out),
                           "--name", "o", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert not (out / "LINEMOD").exists()  # checked before anything is written
    return err


def test_make_labels_bad_inputs(synth, tmp_path, capsys):
    good = _user_records(synth, "obj00")[:3]
    poses = tmp_path / "p.json"
    poses.write_text(json.dumps(good))
    err = _run_make_labels(synth, tmp_path, capsys, poses, mesh=tmp_path / "missing.ply")
    assert f"{tmp_path / 'missing.ply'}: mesh file not found" in err

    bad = [dict(r) for r in good]
    bad[1]["R"] = np.reshape(bad[1]["R"], -1)[:8].tolist()
    poses.write_text(json.dumps(bad))
    err = _run_make_labels(synth, tmp_path, capsys, poses)
    assert f"{poses}: pose entry 1" in err and "R needs 9 numbers" in err and "(8,)" in err

    bad = [dict(r) for r in good]
    bad[2]["t"] = [0.1, float("nan"), 0.8]
    poses.write_text(json.dumps(bad))  # json writes NaN, Python's reader accepts it
    err = _run_make_labels(synth, tmp_path, capsys, poses)
    assert f"{poses}: pose entry 2" in err and "finite" in err

    bad = [dict(r) for r in good]
    bad[0]["R"] = (np.array(bad[0]["R"]) * 2).tolist()
    poses.write_text(json.dumps(bad))
    assert "pose entry 0" in (err := _run_make_labels(synth, tmp_path, capsys, poses)) and "not a rotation" in err

    poses.write_text('[{"image": "a.jpg",\n "R": [1, 0, 0, 0, 1, 0, 0, 0, 1]\n "t": [0, 0, 1]}]')
    assert f"{poses}:3: not valid JSON" in _run_make_labels(synth, tmp_path, capsys, poses)

    csv_path = tmp_path / "p.csv"
    write_poses_csv(csv_path, good)
    lines = csv_path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",nan"
    csv_path.write_text("\n".join(lines) + "\n")
    assert f"{csv_path}:3: R and t must be finite" in _run_make_labels(synth, tmp_path, capsys, csv_path)
    lines[2] = lines[2].rsplit(",", 2)[0]
    csv_path.write_text("\n".join(lines) + "\n")
    assert f"{csv_path}:3: expected 13 comma-separated values" in _run_make_labels(synth, tmp_path, capsys, csv_path)
    lines[2] = lines[1].replace(",0.", ",x0.", 1)
    csv_path.write_text("\n".join(lines) + "\n")
    assert f"{csv_path}:3: bad number" in _run_make_labels(synth, tmp_path, capsys, csv_path)
    csv_path.write_text("image,r11\n")
    assert f"{csv_path}:1: CSV header lacks" in _run_make_labels(synth, tmp_path, capsys, csv_path)

    bad = [dict(r) for r in good]
    bad[1]["image"] = "LINEMOD/obj00/JPEGImages/999999.jpg"
    poses.write_text(json.dumps(bad))
    err = _run_make_labels(synth, tmp_path, capsys, poses)
    assert f"{synth / bad[1]['image']}: image of pose entry 1 ({poses}) not found" in err

    poses.write_text(json.dumps(good))
    err = _run_make_labels(synth, tmp_path, capsys, poses, extra=["--width", "320", "--height", "240"])
    assert "image of pose entry 0" in err and "is 640x480, the camera says 320x240" in err

    bad = [dict(r) for r in good]
    bad[0]["t"] = [0.0, 0.0, -1.0]
    poses.write_text(json.dumps(bad))
    assert "pose entry 0" in (err := _run_make_labels(synth, tmp_path, capsys, poses)) and "behind the camera" in err

    txt = tmp_path / "p.txt"
    txt.write_text("")
    with pytest.raises(PoseFileError, match=r"p\.txt: unknown pose file type '\.txt'"):
        read_poses(txt)


def test_make_labels_one_image_with_two_poses(synth, tmp_path, capsys):
    """One image listed twice with different poses was labelled twice without a word (issue 16)."""
    good = _user_records(synth, "obj00")[:3]
    poses = tmp_path / "p.json"
    twice = good + [dict(good[1], t=(np.array(good[1]["t"]) + [0.01, 0, 0]).tolist())]
    poses.write_text(json.dumps(twice))
    err = _run_make_labels(synth, tmp_path, capsys, poses)
    assert f"{poses}: image {good[1]['image']!r} has two different poses: entry 1 (R=" in err
    assert "and entry 3 (R=" in err
    # the same pose twice: kept once, with a warning
    poses.write_text(json.dumps(good + [good[1]]))
    out = tmp_path / "same"
    rc = make_labels.main(["--mesh", str(synth / "LINEMOD/obj00/obj00.ply"), "--poses", str(poses), "--images-dir",
                           str(synth), "--out", str(out), "--name", "o", "--masks", "none"])
    assert rc == 0 and "entry 3 repeats entry 1" in capsys.readouterr().err
    assert len(_poses(out, "o")["poses"]) == 3


def test_make_labels_nan_camera_and_binary_pose_file(synth, tmp_path, capsys):
    """--fx nan was accepted (labels of NaN geometry, one vague warning); a binary pose file
    gave a bare UnicodeDecodeError message without the file name (issue 16)."""
    poses = tmp_path / "p.json"
    poses.write_text(json.dumps(_user_records(synth, "obj00")[:2]))
    err = _run_make_labels(synth, tmp_path, capsys, poses, extra=["--fx", "nan"])
    assert "all camera values finite; got fx=nan" in err
    poses.write_bytes(bytes(range(256)))
    assert f"{poses}: not a text file (byte 128 is not UTF-8)" in _run_make_labels(synth, tmp_path, capsys, poses)


def test_make_labels_millimetre_mesh_warning_is_meshply_s(synth, tmp_path, capsys):
    m = MeshPly(synth / "LINEMOD/obj00/obj00.ply")
    write_ply(tmp_path / "mm.ply", m.vertices * 1000, m.indices)
    poses = tmp_path / "p.json"
    mm = [dict(r, t=(np.array(r["t"]) * 1000).tolist()) for r in _user_records(synth, "obj00")[:2]]
    poses.write_text(json.dumps(mm))  # mesh and poses in millimetres, read as metres
    rc = make_labels.main(["--mesh", str(tmp_path / "mm.ply"), "--poses", str(poses), "--images-dir", str(synth),
                           "--out", str(tmp_path / "o"), "--name", "o", "--masks", "none"])
    lines = capsys.readouterr().err.splitlines()
    mesh_lines = [x for x in lines if "mm.ply" in x]
    assert rc == 0 and len(mesh_lines) == 1 and len(lines) == 2  # the mesh once (not twice), the poses once
    assert mesh_lines[0].startswith(f"warning: {tmp_path / 'mm.ply'}: the mesh is ")
    assert "--mesh-units mm" in mesh_lines[0]


def _edit_json(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_bop_bad_inputs(bop_dir, tmp_path):
    def broken(edit):
        d = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(bop_dir, d)
        edit(d)
        return d

    def convert(d):
        bop.convert(d, tmp_path / "never", names="bop", warn=lambda m: None)

    d = broken(lambda d: (d / "test/000002/rgb/000003.png").unlink())
    with pytest.raises(FileNotFoundError, match=r"test/000002/rgb/000003\.png: BOP image not found"):
        convert(d)
    d = broken(lambda d: _edit_json(d / "test/000001/scene_gt.json", lambda g: g["2"][0].update(cam_R_m2c=[1] * 8)))
    with pytest.raises(ValueError,
                       match=r"000001/scene_gt\.json: image 2 annotation 0: cam_R_m2c needs 9 numbers; found 8"):
        convert(d)
    d = broken(lambda d: _edit_json(d / "test/000003/scene_gt.json",
                                    lambda g: g[str(N_IMG)][1].update(cam_t_m2c=[1.0, float("nan"), 900.0])))
    with pytest.raises(ValueError,
                       match=rf"000003/scene_gt\.json: image {N_IMG} annotation 1: cam_t_m2c holds a non-finite"):
        convert(d)
    d = broken(lambda d: (d / "models/obj_000002.ply").unlink())
    with pytest.raises(FileNotFoundError, match=r"models/obj_000002\.ply: mesh of object 2 not found"):
        convert(d)
    d = broken(lambda d: (d / "test/000002/scene_camera.json").write_text("{\n  \"0\": {\n"))
    with pytest.raises(ValueError, match=r"000002/scene_camera\.json:3: not valid JSON"):
        convert(d)
    # a mesh that cannot give a pose (all vertices on a line) is refused before anything is written
    d = broken(lambda d: write_ply(d / "models/obj_000002.ply", np.array([[0.0, 0, 0], [10.0, 0, 0], [20.0, 0, 0]])))
    with pytest.raises(ValueError, match=r"obj_000002\.ply: the mesh's bounding box .* a point or a line"):
        convert(d)
    assert not (tmp_path / "never").exists()


def test_bop_cli_errors_and_split_lists(bop_dir, tmp_path, capsys):
    assert bop.main(["--bop", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'nope' / 'test'}: BOP split folder not found" in capsys.readouterr().err
    # object 2 in one scene only (scene 3 dropped), image 0 not annotated: files named by BOP im_id
    d = tmp_path / "lm"
    shutil.copytree(bop_dir, d)
    shutil.rmtree(d / "test/000003")
    _edit_json(d / "test/000002/scene_gt.json", lambda g: g.pop("0"))
    (tmp_path / "train_obj_000002.txt").write_text("1\nLINEMOD/x/JPEGImages/000003.jpg\n")
    out = tmp_path / "o"
    assert bop.main(["--bop", str(d), "--out", str(out), "--objects", "2", "--names", "bop",
                     "--train-list", str(tmp_path / "train_{name}.txt")]) == 0
    folder = out / "LINEMOD/obj_000002"
    assert sorted(p.name for p in (folder / "JPEGImages").iterdir()) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert sorted(p.name for p in (folder / "mask").iterdir()) == ["0001.png", "0002.png", "0003.png"]
    assert (folder / "train.txt").read_text().splitlines() == [
        "LINEMOD/obj_000002/JPEGImages/000001.jpg", "LINEMOD/obj_000002/JPEGImages/000003.jpg"]
    assert (folder / "test.txt").read_text() == "LINEMOD/obj_000002/JPEGImages/000002.jpg\n"
    assert (folder / "training_range.txt").read_text() == "1\n3\n"
    assert bop.main(["--bop", str(d), "--out", str(out), "--objects", "2", "--names", "bop"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bop.main(["--bop", str(d), "--out", str(out), "--objects", "1,x"])
    assert "--objects: 'x' is neither a BOP object id, a LINEMOD name nor obj_NNNNNN" in capsys.readouterr().err


def test_bop_per_image_camera(bop_dir, tmp_path):
    d = tmp_path / "lm"
    shutil.copytree(bop_dir, d)
    K2 = utils.get_camera_intrinsic(330.0, 240.0, 600.0, 601.0)
    _edit_json(d / "test/000002/scene_camera.json", lambda c: c["1"].update(cam_K=K2.reshape(-1).tolist()))
    warnings, out = [], tmp_path / "o"
    bop.convert(d, out, objects=[2], names="bop", warn=warnings.append)
    assert any("the camera K varies between images" in w for w in warnings)
    name = "obj_000002"
    corners = utils.box_corners(MeshPly(out / f"LINEMOD/{name}/{name}.ply").vertices)
    for e in _poses(out, name)["poses"]:
        K = np.array(e["K"])  # saved per image when the camera varies
        np.testing.assert_array_equal(K, K2 if e["image"].endswith("/000001.jpg") else utils.get_camera_intrinsic())
        # alone: class 0
        want = utils.label_row(utils.keypoints_from_pose(corners, np.array(e["R"]), np.array(e["t"]), K), 0)
        np.testing.assert_allclose(read_label_rows(out / e["label"])[0], want, rtol=0, atol=5e-7 + 1e-12)
    opts = utils.read_data_cfg(out / f"cfg/{name}.data")
    assert float(opts["fx"]) == utils.LINEMOD_FX  # the .data file gets the first image's camera
    index = draw_labels.load_pose_index(out)
    _, gap = draw_labels.draw_image(f"LINEMOD/{name}/JPEGImages/000001.jpg", out, utils.get_camera_intrinsic(),
                                    640, 480, pose_index=index)
    assert gap < 1e-3  # draw_labels projects that pose with its own camera


def test_bop_names_and_class_ids():
    assert [bop.object_name(o, "linemod") for o in (1, 3, 15, 16)] == ["ape", "bowl", "phone", "obj_000016"]
    assert bop.object_name(1, "bop") == "obj_000001"
    # the 13 LINEMOD objects keep their design §3.1 (alphabetical) ids, whatever subset is converted
    assert bop.class_ids([5, 9, 15], "linemod") == {5: utils.LINEMOD_OBJECTS.index("can"),
                                                    9: utils.LINEMOD_OBJECTS.index("duck"), 15: 12}
    assert bop.class_ids([7, 2, 1], "linemod") == {1: 0, 2: 1, 7: 2}  # 'cup' is not one of them: sorted position


# ------------------------------------------------------------------------------------------------
# draw_labels.py
# ------------------------------------------------------------------------------------------------

def _box_edge_midpoints(row):
    pts = row[1:19].reshape(9, 2) * [640, 480]
    return [(pts[1 + a] + pts[1 + b]) / 2 for a, b in utils.BOX_EDGES], pts


def test_draw_labels_draws_the_box_and_pose_points(synth, tmp_path, capsys):
    out = tmp_path / "one.png"
    assert draw_labels.main(["--data", str(synth / "cfg/obj00.data"), "--list", "train", "--n", "1", "--cols", "1",
                             "--scale", "1", "--out-file", str(out)]) == 0
    assert "label vs saved pose: max" in capsys.readouterr().out
    drawn = cv2.imread(str(out))
    first = (synth / "LINEMOD/obj00/train.txt").read_text().split()[0]
    orig = cv2.imread(str(synth / first))
    assert drawn.shape == orig.shape
    label_file = synth / first.replace("JPEGImages", "labels").replace(".jpg", ".txt")
    mids, pts = _box_edge_midpoints(read_label_rows(label_file)[0])
    for m in mids:  # every edge passes through its midpoint, drawn in green (BGR)
        x, y = np.round(m).astype(int)
        assert np.array_equal(drawn[y, x], [0, 255, 0]), (m, drawn[y, x], orig[y, x])
    for p in pts:  # the points re-projected from the saved pose: magenta dots on the label points
        x, y = np.round(p).astype(int)
        assert np.array_equal(drawn[y, x], [255, 0, 255]), p
    far = np.ones(orig.shape[:2], bool)
    lo, hi = np.floor(pts.min(0)).astype(int) - 40, np.ceil(pts.max(0)).astype(int) + 40
    far[max(lo[1], 0):hi[1], max(lo[0], 0):hi[0]] = False
    np.testing.assert_array_equal(drawn[far], orig[far])  # nothing else changes
    assert (drawn != orig).any(axis=2).sum() > 200


def test_draw_labels_occlusion_order_and_grid(synth, tmp_path, monkeypatch):
    K = utils.get_camera_intrinsic()
    index = draw_labels.load_pose_index(synth)
    scene = (synth / "LINEMOD/obj01/test_occlusion.txt").read_text().split()[0]
    _, gap = draw_labels.draw_image(scene, synth, K, 640, 480, "obj01", index)
    assert gap < 1e-3  # OCCLUSION-order labels put back in the design §9.2 order match the pose
    monkeypatch.setattr(draw_labels, "from_occlusion_order", lambda r: r)
    _, gap = draw_labels.draw_image(scene, synth, K, 640, 480, "obj01", index)
    assert gap > 1.0  # read without the design §9.6 permutation they would not
    monkeypatch.undo()
    out = tmp_path / "grid.png"
    assert draw_labels.main(["--data", str(synth / "cfg/obj00.data"), "--list", "train", "--n", "3", "--cols", "3",
                             "--colors", "64", "--out-file", str(out)]) == 0
    grid = cv2.imread(str(out))
    assert grid.shape == (240, 960, 3) and len(np.unique(grid.reshape(-1, 3), axis=0)) <= 64
    assert grid[:, 640:].max() == 0 and grid[:, :640].max() > 0  # 2 training images in a 1x3 grid: black padding


def _fake_predictions(synth, path, shift=(0.03, 0.0, 0.0)):
    """A valid.py --save-predictions file for the first test image of obj00: its saved pose moved by
    `shift` metres, the 9 points of that pose; returns (image path, 9 points, the moved pose's 9 points)."""
    entry = (synth / "LINEMOD/obj00/test.txt").read_text().split()[0]
    rec = next(r for r in _poses(synth, "obj00")["poses"] if r["image"] == entry)
    corners = utils.box_corners(MeshPly(synth / "LINEMOD/obj00/obj00.ply").vertices)
    R, t = np.asarray(rec["R"]), np.asarray(rec["t"]) + shift
    K = utils.get_camera_intrinsic()
    moved = utils.keypoints_from_pose(corners, R, t, K)
    pr_px = moved + [[3.0, -2.0]]  # the network's points, off the moved box's so both can be seen
    np.savez(path, image=np.array([str((synth / entry).resolve())]), pr_px=pr_px[None], R_pr=R[None],
             t_pr=t[None], err_2d=np.array([4.2]))
    return entry, pr_px, moved


def test_draw_labels_predictions(synth, tmp_path, capsys):
    npz, out = tmp_path / "predictions_obj00.npz", tmp_path / "pred.png"
    entry, pr_px, moved = _fake_predictions(synth, npz)
    assert draw_labels.main(["--data", str(synth / "cfg/obj00.data"), "--predictions", str(npz), "--no-poses",
                             "--n", "4", "--cols", "1", "--scale", "1", "--out-file", str(out)]) == 0
    assert f"{entry}: 2-D error 4.20 px" in capsys.readouterr().out  # only the scored image, its error
    drawn = cv2.imread(str(out))
    assert drawn.shape == (480, 640, 3)  # one image: the file scores one of the two test images
    bgr = lambda rgb: list(rgb[::-1])  # noqa: E731
    for p in pr_px:  # the network's points: orange dots
        x, y = np.round(p).astype(int)
        assert list(drawn[y, x]) == bgr(draw_labels.PRED_POINT_COLOR), p
    mids = [(moved[1 + a] + moved[1 + b]) / 2 for a, b in utils.BOX_EDGES]
    blue = [np.array_equal(drawn[y, x], bgr(draw_labels.PRED_BOX_COLOR)) for x, y in np.round(mids).astype(int)]
    assert sum(blue) >= 10, blue  # the predicted pose's box (an edge hidden under a dot or the label box at most)


def test_draw_labels_prediction_errors(synth, tmp_path, capsys):
    npz = tmp_path / "p.npz"
    _fake_predictions(synth, npz)
    data = str(synth / "cfg/obj00.data")
    assert draw_labels.main(["--data", data, data, "--predictions", str(npz),
                             "--out-file", str(tmp_path / "x.png")]) == 2
    assert "--predictions goes with one --datacfg, found 2" in capsys.readouterr().err
    assert draw_labels.main(["--data", data, "--predictions", str(tmp_path / "no.npz"),
                             "--out-file", str(tmp_path / "x.png")]) == 2
    assert "no.npz: file not found" in capsys.readouterr().err
    np.savez(tmp_path / "old.npz", pr_px=np.zeros((1, 9, 2)))
    assert draw_labels.main(["--data", data, "--predictions", str(tmp_path / "old.npz"),
                             "--out-file", str(tmp_path / "x.png")]) == 2
    assert "old.npz: not a valid.py --save-predictions file with image paths (missing 'image" in capsys.readouterr().err
    assert draw_labels.main(["--data", data, "--list", "train", "--predictions", str(npz),
                             "--out-file", str(tmp_path / "x.png")]) == 2
    assert "is in the predictions file (another split or dataset?)" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_draw_labels_refuses_truncated_or_wrong_shaped_predictions(synth, tmp_path, capsys):
    """Each was a traceback (issue 36): one line naming the file and what is wrong."""
    npz = tmp_path / "p.npz"
    _fake_predictions(synth, npz)
    good = dict(np.load(npz))
    data = str(synth / "cfg/obj00.data")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(npz.read_bytes()[:300])
    wrong = {"pr": dict(good, pr_px=good["pr_px"][:, :8]), "R": dict(good, R_pr=good["R_pr"][:, :2]),
             "n": dict(good, err_2d=np.array([4.2, 1.0])), "image": dict(good, image=np.zeros(1))}
    for name, arrays in wrong.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
    for name, message in (("cut", "cut.npz: not a readable .npz file"),
                          ("pr", "pr.npz: 'pr_px' holds float64 of shape (1, 8, 2), expected numbers of shape "
                                 "(1, 9, 2) (one per image path)"),
                          ("R", "R.npz: 'R_pr' holds float64 of shape (1, 2, 3)"),
                          ("n", "n.npz: 'err_2d' holds float64 of shape (2,), expected numbers of shape (1,)"),
                          ("image", "image.npz: 'image' holds float64 of shape (1,), expected a list of paths")):
        assert draw_labels.main(["--data", data, "--predictions", str(tmp_path / f"{name}.npz"),
                                 "--out-file", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("draw_labels: error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def test_draw_labels_errors(synth, tmp_path, capsys):
    bad = tmp_path / "bad.data"
    bad.write_text((synth / "cfg/obj00.data").read_text().replace("LINEMOD/obj00/test.txt", "LINEMOD/obj00/none.txt"))
    shutil.copytree(synth / "cfg", tmp_path / "cfg", dirs_exist_ok=True)
    assert draw_labels.main(["--data", str(bad), "--out-file", str(tmp_path / "x.png")]) == 2
    assert "none.txt: image list not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# get_linemod.sh (never touches the network: curl/wget are replaced by a local fake)
# ------------------------------------------------------------------------------------------------

FAKE_CURL = """#!/usr/bin/env bash
echo "$@" >> "$FAKE_LOG"
while [[ $# -gt 0 ]]; do
    case "$1" in -o) out="$2"; shift 2 ;; -C|--retry) shift 2 ;; -*) shift ;; *) url="$1"; shift ;; esac
done
cp "$FAKE_SRC" "$out"
"""


@pytest.fixture
def sh(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for tool in ("curl", "wget"):
        (fake / tool).write_text(FAKE_CURL)
        (fake / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "fake.log")}
    env.pop("GET_LINEMOD_NEED_BYTES", None)

    def run(*args, **extra_env):
        return subprocess.run(["bash", str(SCRIPT), *args], env={**env, **extra_env}, capture_output=True,
                              text=True, timeout=30)
    run.log = tmp_path / "fake.log"
    return run


def test_get_linemod_syntax_help_and_dry_run(sh, tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    r = sh("--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout and "backup_multi" in r.stdout
    root = tmp_path / "data"
    r = sh("--root", str(root), "--dry-run", "--only", "linemod,backup,backup_multi,voc,darknet19")
    assert r.returncode == 0, r.stderr
    for url in ("resid=5750EBEE1537631%21135&authkey=AJRHFmZbcjXxTmI",
                "resid=C78B7DE6C569D7B%21191&authkey=AP183o4PlczZR78",
                "resid=5750EBEE1537631%21136&authkey=AFQv01OSbvhGnoM", "VOCtrainval_11-May-2012.tar",
                "darknet19_448.conv.23"):
        assert url in r.stdout
    assert "md5 6cd6e144f989b92b3379bac3b3de84fd" in r.stdout and "size 79327120 bytes" in r.stdout
    assert not root.exists() and not sh.log.exists()  # nothing written, nothing fetched
    r = sh("--only", "linemod,foo", "--dry-run")
    assert r.returncode == 2 and "unknown step 'foo'" in r.stderr


def test_get_linemod_refuses_without_free_space(sh, tmp_path):
    root = tmp_path / "data"
    r = sh("--root", str(root), "--only", "voc", GET_LINEMOD_NEED_BYTES=str(10 ** 18))
    assert r.returncode == 2
    assert f"not enough free space in {root} for voc" in r.stderr and "1000000000000000000 needed" in r.stderr
    assert not sh.log.exists() and not (root / "downloads").exists()
    r = sh("--root", str(root), "--only", "voc", "--dry-run", GET_LINEMOD_NEED_BYTES=str(10 ** 18))
    assert r.returncode == 0 and "would refuse: not enough free space" in r.stdout


def test_get_linemod_offline_download_unpack_and_checks(sh, tmp_path):
    src = tmp_path / "payload"
    (src / "LINEMOD/ape").mkdir(parents=True)
    (src / "LINEMOD/ape/train.txt").write_text("LINEMOD/ape/JPEGImages/000000.jpg\n")
    archive = tmp_path / "LINEMOD.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src / "LINEMOD", arcname="LINEMOD")
    root = tmp_path / "data"
    r = sh("--root", str(root), "--only", "linemod", "--linemod-url", "https://example.invalid/LINEMOD.tar",
           FAKE_SRC=str(archive))
    assert r.returncode == 0, r.stderr
    assert (root / "LINEMOD/ape/train.txt").is_file() and (root / ".done_linemod").is_file()
    assert not (root / "downloads/linemod.part").exists()  # archive removed after unpacking
    assert "-C - -o" in sh.log.read_text() and "example.invalid" in sh.log.read_text()  # resumable
    r = sh("--root", str(root), "--only", "linemod", FAKE_SRC=str(archive))
    assert r.returncode == 0 and "skip: already done" in r.stdout

    r = sh("--root", str(root), "--only", "voc", FAKE_SRC=str(archive))  # wrong bytes for the known md5
    assert r.returncode == 2 and "downloads/voc.part: md5" in r.stderr
    assert "expected 6cd6e144f989b92b3379bac3b3de84fd" in r.stderr
    r = sh("--root", str(root), "--only", "darknet19", FAKE_SRC=str(archive))
    assert r.returncode == 2 and "bytes, expected 79327120" in r.stderr
    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html><body>This item might not exist</body></html>")
    r = sh("--root", str(root), "--only", "backup", FAKE_SRC=str(page))
    assert r.returncode == 2 and "sent a web page" in r.stderr and "--backup-url" in r.stderr
    assert not (root / ".done_backup").exists()


# --------------------------------------------------------------------------------------------
# tools/plot_curve.py: accuracy against minutes from metrics.jsonl
# --------------------------------------------------------------------------------------------

def test_plot_curve_reads_the_runs_rows_and_the_extra_test_sets(tmp_path):
    """A log of before issue 36 (train.py named the 5 px accuracy acc_2d) is read under today's names."""
    from tools import plot_curve

    rows = [{"epoch": 5, "minutes": 4.0, "acc_2d": 1.0, "acc_2d_10px": 20.0, "fresh7:acc_2d": 0.5,
             "fresh7:acc_2d_10px": 18.0},
            {"epoch": 10, "minutes": 8.0, "acc_2d": 3.0, "acc_2d_10px": 45.0, "fresh7:acc_2d": 2.0,
             "fresh7:acc_2d_10px": 41.0}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = plot_curve.main([str(metrics), "--out-file", str(tmp_path / "c.png"), "--json", str(tmp_path / "c.json")])
    assert curves == {"test": {"minutes": [4.0, 8.0], "5 px": [1.0, 3.0], "10 px": [20.0, 45.0]},
                      "fresh7": {"minutes": [4.0, 8.0], "5 px": [0.5, 2.0], "10 px": [18.0, 41.0]}}
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == [
        {"epoch": 5, "minutes": 4.0, "acc_2d_5px": 1.0, "acc_2d_10px": 20.0, "fresh7:acc_2d_5px": 0.5,
         "fresh7:acc_2d_10px": 18.0},
        {"epoch": 10, "minutes": 8.0, "acc_2d_5px": 3.0, "acc_2d_10px": 45.0, "fresh7:acc_2d_5px": 2.0,
         "fresh7:acc_2d_10px": 41.0}]
    metrics.write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(plot_curve.InputError, match=r"metrics.jsonl:1: no 'minutes'"):
        plot_curve.read_rows(metrics)


@pytest.mark.parametrize("lines, message", [
    (['{"minutes": "4", "acc_2d_5px": 1.0}'], r"m.jsonl:1: 'minutes' not a finite number"),
    (['{"minutes": 4.0, "acc_2d_5px": 1.0, "seen": null}'], r"m.jsonl:1: 'seen' not a finite number"),
    (['{"minutes": Infinity, "acc_2d_5px": 1.0}'], r"m.jsonl:1: 'minutes' not a finite number"),
    (['{"minutes": 4.0, "acc_2d_5px": 1.0, "f:acc_2d_5px": 2.0}', '{"minutes": 8.0, "acc_2d_5px": 3.0}'],
     r"m.jsonl:2: no 'f:acc_2d_5px' \(the first row has them\)"),
])
def test_plot_curve_names_the_line_of_a_bad_row(tmp_path, lines, message):
    """Each ended in a traceback in series, curve_table or the plot (issue 36)."""
    from tools import plot_curve

    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(plot_curve.InputError, match=message):
        plot_curve.main([str(path), "--out-file", str(tmp_path / "c.png")])
    assert not (tmp_path / "c.png").exists()


def test_plot_curve_refuses_a_binary_log_and_bad_table_minutes(tmp_path):
    from tools import plot_curve

    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(plot_curve.InputError, match=r"m.jsonl: not a text file"):
        plot_curve.main([str(path), "--out-file", str(tmp_path / "c.png")])
    path.write_text('{"minutes": 4.0, "acc_2d_5px": 1.0, "acc_2d_10px": 2.0}\n')
    for at, message in (("ten,20", "expected minutes separated by commas"), ("nan", "minutes must be finite and >= 0")):
        with pytest.raises(FlagError, match=f"--table-at {at}: {message}"):
            plot_curve.main([str(path), "--out-file", str(tmp_path / "c.png"), "--table-at", at])
    assert not (tmp_path / "c.png").exists()  # the flag is checked before the figure is drawn
    plot_curve.main([str(path), "--out-file", str(tmp_path / "c.png"), "--table-at", "4"])  # no 'seen': '-'


def test_curve_reach_times_and_table_on_fixed_inputs():
    from tools import plot_curve

    minutes, acc = [10.0, 20.0, 30.0], [30.0, 40.0, 70.0]
    assert plot_curve.minutes_to_reach(minutes, acc, 50.0) == pytest.approx(20.0 + 10.0 / 3)
    assert plot_curve.minutes_to_reach(minutes, acc, 30.0) == 10.0  # already there at the first evaluation
    assert plot_curve.minutes_to_reach(minutes, acc, 80.0) is None
    rows = [{"minutes": m, "seen": 1000 * i, "acc_2d_5px": a, "acc_2d_10px": a + 20, "f:acc_2d_5px": a - 5,
             "f:acc_2d_10px": a + 10, "mean_err_corner": 20.0 - i} for i, (m, a) in enumerate(zip(minutes, acc), 1)]
    lines = plot_curve.curve_table(rows, (11.0,)).splitlines()
    assert lines[0] == ("| minutes | images seen | test 5 px | test 10 px | f 5 px | f 10 px | mean corner error |")
    assert lines[2:] == ["| 10.0 | 1,000 | 30.0 % | 50.0 % | 25.0 % | 40.0 % | 19.0 px |",
                         "| 30.0 | 3,000 | 70.0 % | 90.0 % | 65.0 % | 80.0 % | 17.0 px |"]  # the nearest, the last


def test_plot_curve_reads_a_published_multi_object_log():
    """train_multi.py's log of before issue 36 (acc_5px, acc_10px, acc_5px_<object>): the mean and each object."""
    from tools import plot_curve

    rows = plot_curve.read_rows(ROOT / "docs/results/cpu_multi/scenes_2960x20_metrics.jsonl")
    curves = plot_curve.series(rows)
    assert list(curves) == ["test", "obj00", "obj01", "obj02"]
    assert curves["test"]["5 px"][0] == pytest.approx(1.2469305728304672)
    assert curves["obj01"]["10 px"][0] == pytest.approx(31.491710967308787)
    assert plot_curve.curve_table(rows, ()).splitlines()[2].endswith(" | - |")  # no corner error in this log


# --------------------------------------------------------------------------------------------
# tools/record_main_job.py: the README's main-job table comes from a raw record
# --------------------------------------------------------------------------------------------

def test_record_main_job_on_fixed_inputs(tmp_path):
    from tools import record_main_job as rec

    backup = tmp_path / "backup"
    backup.mkdir()
    rows = [{"epoch": 4, "seen": 5440, "minutes": 1.5, "acc_2d_5px": 20.0, "acc_2d_10px": 60.0},
            {"epoch": 9, "seen": 13600, "minutes": 3.25, "acc_2d_5px": 41.0, "acc_2d_10px": 90.5}]
    (backup / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"acc_2d": 41.0, "acc_2d_10px": 90.5, "acc_2d_15px": 97.0, "acc_2d_20px": 99.0, "acc_2d_30px": 100.0,
               "acc_add": 30.0, "acc_5cm5deg": 20.0, "mean_err_2d": 5.55, "mean_err_corner": 9.04, "n": 240,
               "test_size": [256, 256], "box_rule": "vote", "other": 1}
    for name, n in (("t.json", 240), ("f.json", 200)):
        (tmp_path / name).write_text(json.dumps({"objects": [{**summary, "n": n}], "mean": None}))
    out = tmp_path / "main_job.json"
    record = rec.main(rec.get_args_parser().parse_args([
        "--backupdir", str(backup), "--wall-minutes", "11.5", "--test-json", str(tmp_path / "t.json"), "--fresh-json",
        str(tmp_path / "f.json"), "--fresh-seed", "11", "--machine", "2 cores", "--date", "2026-12-01",
        "--out-file", str(out)]))
    assert json.loads(out.read_text()) == record
    assert (record["epochs"], record["images_seen"], record["training_minutes"]) == (10, 13600, 3.25)
    assert "other" not in record["test"] and record["fresh"]["n"] == 200
    lines = rec.main_job_table(record).splitlines()
    assert lines[0] == ("| test images | 5 px | 10 px | 15 px | 20 px | 30 px | ADD (0.1 d) | 5cm5deg | "
                        "mean 2-D error | mean corner error |")
    assert lines[2] == ("| test split (240) | **41.00 %** | **90.50 %** | 97.00 % | 99.00 % | 100.00 % | 30.00 % | "
                        "20.00 % | 5.5 px | 9.0 px |")
    assert lines[3].startswith("| fresh seed 11 (200) |") and len(lines) == 4
    assert record["command"] == "python train.py"
    timed = rec.main(rec.get_args_parser().parse_args([
        "--backupdir", str(backup), "--wall-minutes", "121", "--test-json", str(tmp_path / "t.json"), "--fresh-json",
        str(tmp_path / "f.json"), "--fresh-seed", "11", "--machine", "2 cores", "--out-file", str(tmp_path / "c.json"),
        "--command", "python train.py --minutes 120"]))
    assert timed["command"] == "python train.py --minutes 120"


def test_record_main_job_checks_its_inputs(tmp_path, capsys):
    """No input was checked: a missing, truncated or other-version file ended in a traceback (issue 36)."""
    from tools import record_main_job as rec

    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "metrics.jsonl").write_text('{"epoch": 9, "seen": 13600, "minutes": 3.25, "acc_2d_5px": 41.0}\n{"ep')
    summary = {k: 1.0 for k in rec.KEYS}
    (tmp_path / "t.json").write_text(json.dumps({"objects": [summary]}))
    (tmp_path / "cut.json").write_text(json.dumps({"objects": [summary]})[:40])
    (tmp_path / "old.json").write_text(json.dumps({"objects": [{"acc_2d": 41.0}]}))

    def run(metrics_ok=True, test="t.json", wall="11.5"):
        if metrics_ok:
            (backup / "metrics.jsonl").write_text('{"epoch": 9, "seen": 13600, "minutes": 3.25, "acc_2d_5px": 41.0}\n')
        argv = ["--backupdir", str(backup), "--wall-minutes", wall, "--test-json", str(tmp_path / test), "--fresh-json",
                str(tmp_path / "t.json"), "--fresh-seed", "11", "--machine", "m",
                "--out-file", str(tmp_path / "r.json")]
        with pytest.raises(SystemExit) as exit_:
            rec.run_cli(lambda a: rec.main(rec.get_args_parser().parse_args(a)), argv, prog="record_main_job.py")
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert "metrics.jsonl:2: not a JSON line" in run(metrics_ok=False)
    assert "nope.json: valid.py --json file not found" in run(test="nope.json")
    assert "cut.json: not readable JSON" in run(test="cut.json")
    assert "old.json: the summary of the object lacks acc_2d_10px" in run(test="old.json")
    assert "--wall-minutes inf: must be a positive, finite number of minutes" in run(wall="inf")
    assert not (tmp_path / "r.json").exists()


def test_readme_main_job_table_is_its_raw_record():
    """The README's main-job table is main_job_table of the committed record, not typed by hand."""
    from tools import record_main_job as rec

    record = json.loads((ROOT / "docs/results/cpu_fast/main_job.json").read_text())
    table = rec.main_job_table(record)
    assert table in (ROOT / "README.md").read_text()
    assert table in (ROOT / "docs/results.md").read_text()
    assert record["command"] == "python train.py" and record["date"] and record["machine"]


def test_two_hour_table_is_its_raw_record():
    """The two-hour run's table in the README and docs/results.md is main_job_table of its record."""
    from tools import record_main_job as rec

    record = json.loads((ROOT / "docs/results/cpu_fast/curve_120min_record.json").read_text())
    table = rec.main_job_table(record)
    assert table in (ROOT / "README.md").read_text() and table in (ROOT / "docs/results.md").read_text()
    assert record["command"].startswith("python train.py --minutes 120") and record["date"] and record["machine"]
    curve = json.loads((ROOT / "docs/results/cpu_fast/curve_120min.json").read_text())
    assert curve["rows"][-1]["seen"] == record["images_seen"]


def test_record_multi_main_job_on_fixed_inputs(tmp_path):
    from tools import record_main_job as rec

    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "metrics.jsonl").write_text(json.dumps({"epoch": 39, "seen": 54400, "minutes": 11.0, "acc_2d_5px": 20.0,
                                                      "acc_2d_10px": 61.0}) + "\n")
    thresholds = list(range(5, 55, 5))
    objs = [{"object": f"obj0{i}", "n": 240 - 60 * i, "thresholds": thresholds,
             "acc_px": [10.0 * (i + 1)] + [60.0 + i] * 9, "acc_add": 5.0 * i, "acc_5cm5deg": 1.0,
             "mean_err_2d": 7.0, "test_size": [256, 256], "box_rule": "vote", "other": 0} for i in range(3)]
    for name in ("t.json", "f.json"):
        (tmp_path / name).write_text(json.dumps({"objects": objs, "mean": None}))
    record = rec.main(rec.get_args_parser().parse_args([
        "--multi", "--backupdir", str(backup), "--wall-minutes", "14.0", "--test-json", str(tmp_path / "t.json"),
        "--fresh-json", str(tmp_path / "f.json"), "--fresh-seed", "11", "--machine", "2 cores",
        "--out-file", str(tmp_path / "m.json")]))
    assert record["command"] == "python multi_obj_pose_estimation/train_multi.py" and record["images_seen"] == 54400
    lines = rec.multi_job_table(record, "test").splitlines()
    assert lines[0] == ("| object (test images) | 5 px | 10 px | 15 px | 20 px | 25 px | 30 px | 35 px | 40 px | "
                        "45 px | 50 px | ADD (0.1 d) | 5cm5deg |")
    assert lines[2].startswith("| obj00 (240) | **10.00 %** | **60.00 %** | 60.00 % |")
    assert lines[-1].startswith("| mean | **20.00 %** | **61.00 %** |") and lines[-1].endswith("| 5.00 % | 1.00 % |")
    assert len(lines) == 6 and "other" not in record["test"][0]


def test_readme_multi_main_job_tables_are_their_raw_record():
    """The README's multi-object tables (test scenes and a fresh set) are multi_job_table of the committed record."""
    from tools import record_main_job as rec

    record = json.loads((ROOT / "docs/results/cpu_multi/main_job.json").read_text())
    for key in ("test", "fresh"):
        table = rec.multi_job_table(record, key)
        assert table in (ROOT / "README.md").read_text()
        assert table in (ROOT / "docs/results.md").read_text()
    assert record["date"] and record["machine"] and record["wall_minutes"] > 0


# ------------------------------------------------------------------------------------------------
# issue 25: flags, output paths and meshes named before the work
# ------------------------------------------------------------------------------------------------

def test_make_labels_refuses_a_mesh_that_gives_no_pose(synth, tmp_path, capsys):
    """It wrote diam = 0, which train.py then refused."""
    poses = tmp_path / "p.json"
    poses.write_text(json.dumps(_user_records(synth, "obj00")[:3]))
    point = tmp_path / "point.ply"
    write_ply(point, np.full((3, 3), 0.1), np.array([[0, 1, 2]]))
    err = _run_make_labels(synth, tmp_path, capsys, poses, mesh=point)
    assert f"{point}: the mesh's bounding box is 0 x 0 x 0 (m) over 3 vertices: a point or a line" in err


@pytest.mark.parametrize("flags, message", [
    (["--n", "0"], "--n must be >= 1, found 0"),
    (["--cols", "0"], "--cols must be >= 1, found 0"),  # was a ZeroDivisionError
    (["--colors", "300"], "--colors must be from 0 to 256, found 300"),
    (["--scale", "0"], "--scale must be above 0"),
    (["--out-file", "DIR"], "--out-file DIR: is a folder; expected a file name"),
])
def test_draw_labels_flags_are_named(synth, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").mkdir()
    argv = ["--datacfg", str(synth / "cfg/obj00.data"), "--out-file", "x.png", *flags]
    assert draw_labels.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"draw_labels: error: {message}") and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_export_onnx_checks_the_opset_and_out_before_exporting(tmp_path, capsys):
    """--opset 1 printed a converter traceback, exited 0 and wrote opset 18."""
    from tools import export_onnx

    cfg = str(ROOT / "cfg/yolo-lite-trial3-pose.cfg")
    run = lambda *a: export_onnx.main(export_onnx.get_args_parser().parse_args(["--modelcfg", cfg, *a]))  # noqa: E731
    with pytest.raises(FlagError, match=rf"--opset must be from 18 to {export_onnx.max_opset()}, found 1"):
        run("--opset", "1", "--out-file", str(tmp_path / "m.onnx"))
    with pytest.raises(OutputPathError, match=r"--out-file .*: is a folder; expected a file name"):
        run("--out-file", str(tmp_path))
    with pytest.raises(FlagError, match=r"--tolerance must be positive, found -1"):
        run("--tolerance", "-1", "--out-file", str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_draw_labels_refuses_a_bomb_from_its_header(synth, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    hostile.bomb_png(read_list(root / "LINEMOD/obj00/test.txt")[0])  # cv2 decoded it: 1.2 GB
    argv = ["--datacfg", str(root / "cfg/obj00.data"), "--n", "1", "--out-file", str(tmp_path / "x.png")]
    assert draw_labels.main(argv) == 2
    assert "image is too large to decode" in capsys.readouterr().err
