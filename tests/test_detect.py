"""detect.py (images, video, camera; poses equal valid.py's) and tools/export_onnx.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import detect
import evaluation
import hostile
import linemod_format
import utils
from darknet import Darknet
from errors import InputError
from MeshPly import write_ply
from synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
TRIAL3 = ROOT / "cfg/yolo-lite-trial3-pose.cfg"
BACKBONE3 = ROOT / "weights/tiny-yolov2-trial3-voc.weights"
SIZE = 160


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny synthetic object, and trial-3 weights (VOC backbone + seeded head) saved in full."""
    root = tmp_path_factory.mktemp("det")
    generate(root / "data", objects=1, images_per_object=8, seed=2)
    model = Darknet(TRIAL3)
    model.load_weights_until_last(BACKBONE3)
    torch.manual_seed(0)
    with torch.no_grad():
        head = model.models[11].conv if hasattr(model.models[11], "conv") else model.models[11][0]
        head.weight.normal_(0, 0.01)
    model.save_weights(root / "model.weights")
    datacfg = root / "data/cfg/obj00.data"
    opts = utils.read_data_cfg(datacfg, resolve_paths=True)
    images = root / "images"
    images.mkdir()
    paths = linemod_format.read_list(opts["valid"])
    for p in paths:
        shutil.copy(p, images / Path(p).name)
    return {"root": root, "datacfg": datacfg, "weights": root / "model.weights", "images": images, "paths": paths}


def run_detect(argv):
    return detect.main(detect.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.mark.parametrize("rule", ["max", "vote"])
def test_images_give_the_poses_of_valid(setup, tmp_path, rule):
    out = tmp_path / "out"
    res = run_detect([setup["images"], "--datacfg", setup["datacfg"], "--modelcfg", TRIAL3, "--weightfile",
                      setup["weights"], "--test-size", SIZE, "--out", out, "--quiet", "--box-rule", rule])
    names = sorted(Path(p).stem for p in setup["paths"])
    assert [f["frame"] for f in res["frames"]] == names
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.png" for n in names] + ["detections.json"])
    saved = json.loads((out / "detections.json").read_text())
    assert saved["frames"] == json.loads(json.dumps(res["frames"]))

    model = Darknet(TRIAL3)
    model.load_weights(setup["weights"])
    ev = evaluation.load_eval_setup(setup["datacfg"])
    test_set = dataset.listDataset(ev.valid_list, shape=(SIZE, SIZE), train=False)
    _, records = evaluation.evaluate(model.eval(), dataset.make_test_loader(test_set, batch_size=1), ev, "cpu",
                                     box_rule=rule)
    by_name = {f["frame"]: f["detections"] for f in saved["frames"]}
    for i, p in enumerate(setup["paths"]):
        (d,) = by_name[Path(p).stem]
        assert d["class"] == 0 and 0 < d["confidence"] < 1
        np.testing.assert_allclose(d["points_px"], records["pr_px"][i], atol=1e-3)
        np.testing.assert_allclose(d["R"], records["R_pr"][i], atol=1e-6)
        np.testing.assert_allclose(np.reshape(d["t"], 3), np.reshape(records["t_pr"][i], 3), atol=1e-6)

    drawn = cv2.imread(str(out / f"{names[0]}.png"))
    raw = cv2.imread(str(setup["images"] / f"{names[0]}.jpg"))
    assert drawn.shape == raw.shape and np.any(np.abs(drawn.astype(int) - raw.astype(int)) > 50)


def test_the_trained_size_and_rule_are_the_defaults(setup, tmp_path):
    import model_info

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(setup["weights"], run / "model.weights")
    model_info.write_info(run, TRIAL3, SIZE, "vote")
    args = [setup["images"], "--datacfg", setup["datacfg"], "--modelcfg", TRIAL3, "--out", tmp_path / "o", "--quiet",
            "--no-images"]
    implicit = run_detect([*args, "--weightfile", run / "model.weights"])
    explicit = run_detect([*args, "--weightfile", setup["weights"], "--test-size", SIZE, "--box-rule", "vote"])
    assert implicit["frames"] == explicit["frames"]


def test_the_input_filter_of_model_info_is_applied_as_valid_py_applies_it(setup, tmp_path):
    import model_info

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(setup["weights"], run / "model.weights")
    model_info.write_info(run, TRIAL3, SIZE, "vote", input_filter="median:7")
    args = [setup["images"], "--datacfg", setup["datacfg"], "--modelcfg", TRIAL3, "--out", tmp_path / "o", "--quiet",
            "--no-images"]
    implicit = run_detect([*args, "--weightfile", run / "model.weights"])
    explicit = run_detect([*args, "--weightfile", setup["weights"], "--test-size", SIZE, "--box-rule", "vote",
                           "--input-filter", "median:7"])
    plain = run_detect([*args, "--weightfile", run / "model.weights", "--input-filter", "none"])
    assert implicit["frames"] == explicit["frames"] != plain["frames"]
    rgb = np.asarray(Image.open(setup["paths"][0]).convert("RGB"))
    tensor = dataset.listDataset(setup["paths"][:1], shape=(SIZE, SIZE), input_filter="median:7")[0][0]
    torch.testing.assert_close(detect.preprocess(rgb, (SIZE, SIZE), "median:7")[0], tensor, rtol=0, atol=0)


def test_video_writes_mp4_and_json(setup, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (640, 480))
    for p in setup["paths"]:
        writer.write(cv2.imread(p))
    writer.release()
    res = run_detect([video, "--datacfg", setup["datacfg"], "--modelcfg", TRIAL3, "--weightfile", setup["weights"],
                      "--test-size", SIZE, "--out", tmp_path / "out", "--quiet"])
    n = len(setup["paths"])
    assert n >= 2 and [f["frame"] for f in res["frames"]] == [f"clip_{i:06d}" for i in range(n)]
    assert all(len(f["detections"]) == 1 for f in res["frames"])
    cap = cv2.VideoCapture(str(tmp_path / "out/clip.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n


def test_corrupt_video_frame_is_skipped_and_counted(setup, tmp_path, monkeypatch, capsys):
    frame = cv2.imread(setup["paths"][0])

    class FlakyCapture:
        """Four frames; the second fails to decode."""

        def __init__(self, *_):
            self.i = 0

        def isOpened(self):
            return True

        def get(self, prop):
            return 4 if prop == cv2.CAP_PROP_FRAME_COUNT else 10.0

        def read(self):
            self.i += 1
            if self.i > 4 or self.i == 2:
                return False, None
            return True, frame.copy()

        def release(self):
            pass

    (tmp_path / "v.mp4").write_bytes(b"placeholder")
    monkeypatch.setattr(detect.cv2, "VideoCapture", FlakyCapture)
    res = run_detect([tmp_path / "v.mp4", "--datacfg", setup["datacfg"], "--modelcfg", TRIAL3, "--weightfile",
                      setup["weights"], "--test-size", SIZE, "--out", tmp_path / "out", "--quiet", "--no-images"])
    assert res["skipped_frames"] == 1 and len(res["frames"]) == 3
    assert "1 corrupt frames skipped" in capsys.readouterr().out


def test_bad_inputs_are_input_errors(setup, tmp_path):
    """A negative focal length drew nonsense, a bad --out crashed after the model ran (issue 16)."""
    header_only = tmp_path / "h.weights"
    header_only.write_bytes(np.zeros(4, "<i4").tobytes())
    bad_cam = tmp_path / "cam.data"
    bad_cam.write_text(Path(setup["datacfg"]).read_text() + "fx = -572\n")
    a_file = tmp_path / "file"
    a_file.write_text("")
    two_classes = tmp_path / "two_classes.cfg"
    two_classes.write_text(Path(TRIAL3).read_text().replace("classes=1", "classes=2"))
    base = {"--datacfg": setup["datacfg"], "--modelcfg": TRIAL3, "--weightfile": setup["weights"],
            "--out": tmp_path / "out"}
    for change, message in [
        ({"--test-size": 100}, r"--test-size must be a positive multiple of 32 \(the network stride\), found 100"),
        ({"--weightfile": header_only}, r"h\.weights does not fit .*: the file holds 0 floats"),
        ({"--datacfg": bad_cam}, r"cam\.data: fx = '-572'; expected a positive finite number"),
        ({"--device": "gpu0"}, r"--device gpu0: not a device"),
        ({"--modelcfg": two_classes}, r"two_classes\.cfg: the output has 20 channels; \[region\] num=1, classes=2"),
        ({"--out": a_file / "sub"}, r"--out .*file/sub: cannot create the output folder"),
    ]:
        argv = [setup["images"], *[str(v) for kv in {**base, **change}.items() for v in kv], "--quiet"]
        with pytest.raises(InputError, match=message):
            run_detect(argv)


@pytest.mark.parametrize("case, message", [
    ("unreadable", r"broken\.jpg: cannot read image"),
    ("missing", "no such file"),
    ("camera", "camera 97: cannot be opened"),
    ("empty", "no images"),
])
def test_bad_sources(setup, tmp_path, case, message):
    sources = {"missing": tmp_path / "nope.mp4", "camera": "97", "empty": tmp_path}
    source = sources[case] if case != "unreadable" else None
    if case == "unreadable":
        source = tmp_path / "broken.jpg"
        source.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(detect.SourceError, match=message):
        run_detect([source, "--datacfg", setup["datacfg"], "--modelcfg", TRIAL3, "--weightfile", setup["weights"],
                    "--out", tmp_path / "out", "--quiet"])


def test_multi_mode_keeps_one_box_per_class_above_threshold():
    C, K, A, H, W = 3, 9, 1, 2, 2
    out = torch.full((1, A * (2 * K + 1 + C), H, W), -10.0)
    out[0, 2 * K] = torch.tensor([[3.0, -3.0], [2.0, 0.0]])  # confidences
    out[0, 2 * K + 1:, 0, 0] = torch.tensor([5.0, 0.0, 0.0])  # class 0 at (0, 0)
    out[0, 2 * K + 1:, 1, 0] = torch.tensor([0.0, 5.0, 0.0])  # class 1 at (1, 0)
    out[0, 2 * K + 1:, 1, 1] = torch.tensor([0.0, 5.0, 0.0])  # class 1 again, lower confidence
    out[0, 2 * K + 1:, 0, 1] = torch.tensor([0.0, 0.0, 5.0])  # class 2, confidence sigmoid(-3) ~ 0.047
    boxes = detect.select_boxes(out, True, C, K, A, conf_thresh=0.1)
    assert sorted(b[0] for b in boxes) == [0, 1]
    b1 = next(b for b in boxes if b[0] == 1)
    assert b1[2][0] == pytest.approx([(torch.sigmoid(torch.tensor(-10.0)).item() + 0) / W,
                                      (torch.sigmoid(torch.tensor(-10.0)).item() + 1) / H])


def test_multi_mode_names_the_classes_without_a_mesh(setup):
    """--multi with valid2 but no mesh2 gave class 1 a null pose without a word (issue 36)."""
    mesh = utils.read_data_cfg(setup["datacfg"], resolve_paths=True)["mesh"]
    opts = {"_datacfg": "occ.data", "mesh1": mesh, "valid1": "a.txt", "valid2": "b.txt"}
    with pytest.warns(UserWarning, match=r"occ.data: no mesh2 for class 1 of the network's 2: their detections get "
                                         r"no pose \(R and t null in detections.json"):
        corners = detect.class_corners(opts, True, num_classes=2)
    assert list(corners) == [0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class has its mesh: no warning
        assert list(detect.class_corners(dict(opts, mesh2=mesh), True, num_classes=2)) == [0, 1]
        assert list(detect.class_corners({"mesh": mesh}, False)) == [0]


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (see requirements.txt)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (see requirements.txt)")
    from tools import export_onnx

    torch.manual_seed(0)  # the head (not in the backbone file) is initialised at random
    model = export_onnx.load(TRIAL3, BACKBONE3, until_last=True)
    path = export_onnx.export(model, tmp_path / "t3.onnx")
    diff = export_onnx.check(model, path)
    assert diff <= export_onnx.TOLERANCE
    torch.manual_seed(0)
    unfused = export_onnx.load(TRIAL3, BACKBONE3, until_last=True, fuse=False)
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(model(x), unfused(x), atol=1e-4)


def test_onnx_cli_refuses_missing_weights(tmp_path):
    from tools import export_onnx

    with pytest.raises(InputError, match="weights not found"):
        export_onnx.main(export_onnx.get_args_parser().parse_args(
            ["--modelcfg", str(TRIAL3), "--weightfile", str(tmp_path / "x.weights")]))


# --------------------------------------------------------------------------------------------
# issue 25: hostile sources, flags and meshes are named errors before the first frame
# --------------------------------------------------------------------------------------------

def _argv(setup, source, out, *extra):
    return [source, "--datacfg", setup["datacfg"], "--modelcfg", TRIAL3, "--weightfile", setup["weights"],
            "--test-size", SIZE, "--out", out, "--quiet", *extra]


def test_hostile_sources_and_flags_stop_before_the_first_frame(setup, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(detect.SourceError, match=r"clip\.mp4: not a regular file \(a FIFO or device\)"):
        run_detect(_argv(setup, hostile.fifo(tmp_path / "clip.mp4"), tmp_path / "out"))  # hung on the pipe
    folder = tmp_path / "imgs"
    folder.mkdir()
    hostile.rgb(folder / "a.png", size=(64, 48))
    hostile.bomb_png(folder / "b.png")
    hostile.png16(folder / "c.png")
    with pytest.raises(detect.SourceError) as err:
        run_detect(_argv(setup, folder, tmp_path / "out"))
    assert "b.png: image is too large to decode" in str(err.value)
    assert "c.png: image has 16 or 32 bits per sample" in str(err.value)
    assert not (tmp_path / "out" / "a.png").exists()  # nothing drawn before the check
    with pytest.raises(InputError, match=r"--max-frames must be >= 1, found -1"):
        run_detect(_argv(setup, setup["images"], tmp_path / "out", "--max-frames", "-1"))
    with pytest.raises(InputError, match=r"--out .*a_file: is a file; expected a folder"):
        run_detect(_argv(setup, setup["images"], a_file))


def test_an_exif_rotation_warns_and_the_stored_pixels_are_used(setup, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    hostile.rotated_jpeg(folder / "turned.jpg", size=(64, 48))
    with pytest.warns(UserWarning, match=r"1 of 1 images have an EXIF rotation \(first: .*turned\.jpg\); the stored "
                                         r"pixels are used"):
        res = run_detect(_argv(setup, folder, tmp_path / "out", "--no-images"))
    assert (res["frames"][0]["width"], res["frames"][0]["height"]) == (64, 48)


@pytest.mark.parametrize("vertices", [np.zeros((1, 3)), np.full((4, 3), 0.02), np.outer(np.arange(4.0), [0.01, 0, 0])])
def test_a_mesh_that_gives_no_pose_is_refused_as_valid_refuses_it(setup, tmp_path, vertices):
    """detect.py wrote null poses for a point, identical vertices or a line; valid.py refused some."""
    mesh = tmp_path / "bad.ply"
    write_ply(mesh, vertices, np.zeros((1, 3), int))
    data = tmp_path / "bad.data"
    data.write_text(Path(setup["datacfg"]).read_text() + f"mesh = {mesh}\n")
    with pytest.raises(InputError, match=r"bad\.ply: the mesh's bounding box is .* a point or a line"):
        run_detect([*_argv(setup, setup["images"], tmp_path / "out"), "--datacfg", data])  # the last one wins


def test_ctrl_c_keeps_what_was_processed_and_ends_as_an_interruption(setup, tmp_path, monkeypatch, capsys):
    real, calls = detect.select_boxes, []

    def interrupt_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(detect, "select_boxes", interrupt_on_the_second)
    out = tmp_path / "out"
    argv = [str(setup["images"]), "--datacfg", str(setup["datacfg"]), "--modelcfg", str(TRIAL3), "--weightfile",
            str(setup["weights"]), "--test-size", str(SIZE), "--out", str(out), "--quiet", "--no-images"]
    with pytest.raises(KeyboardInterrupt):  # run_cli turns it into "detect.py: interrupted", status 130
        run_detect(argv)
    assert "interrupted: writing what was processed" in capsys.readouterr().err
    assert len(json.loads((out / "detections.json").read_text())["frames"]) == 1  # the frame before Ctrl-C
