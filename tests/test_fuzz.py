"""Property-based fuzzing of every file reader, with tests that can fail (issue 25).

For each reader (network cfg, `.data`, label file, PLY mesh, darknet `.weights`, image header and
pixels, image list, pose file) three kinds of input:

- valid files and mutations that stay valid (comments, blank lines, spacing, CRLF, another
  layout of the same numbers): they must parse, to the expected values;
- hostile files built to break one rule (a partial label row, a NaN, a truncated payload, a
  16-bit image, ...): each must raise the reader's own InputError subclass;
- random bytes and random mutations of a real file: the reader returns or raises its own
  InputError subclass, never another exception.

A reader that refused every file fails the first kind; one that accepted everything fails the
second; a traceback fails the third. Examples are derandomised (the same on every run) and few.
"""
from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import dataset
import hostile
import image_files
import linemod_format as lf
import utils
from darknet import Darknet, parse_cfg, plan_layers, write_weights_file
from errors import (CfgError, DataCfgError, ImageError, LabelError, LayoutError, MeshError, PoseFileError,
                    WeightsError)
from MeshPly import MeshPly, write_ply
from conftest import write_poses_csv

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=60, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
FEW = settings(FUZZ, max_examples=25)  # the examples that write images or build networks
WORK = Path(tempfile.mkdtemp(prefix="ssp_fuzz_"))

# the seeds that mutations start from
CFG_TEXT = (ROOT / "cfg" / "yolo-lite-trial3-pose.cfg").read_bytes()
DATA_TEXT = (ROOT / "cfg" / "ape.data").read_bytes() + b"fx = 572.4114\nwidth = 640\n"
LABEL_TEXT = (" ".join(["0"] + [f"{0.1 + 0.04 * i:.6f}" for i in range(18)] + ["0.5", "0.4"]) + "\n").encode()
TINY_CFG = b"""[net]
width=32
height=32
channels=3
[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=3
size=1
stride=1
activation=linear
[region]
num=1
"""


def _write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def _ply_bytes(binary: bool) -> bytes:
    path = WORK / f"seed_{binary}.ply"
    v = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.2, 0], [0, 0, 0.3]])
    write_ply(path, v, np.array([[0, 1, 2], [0, 1, 3]]), normals=np.eye(3)[[0, 1, 2, 0]],
              colors=np.full((4, 3), 200, np.uint8), binary=binary)
    return path.read_bytes()


def _tiny() -> Darknet:
    return Darknet(_write("tiny.cfg", TINY_CFG))


def _weights_bytes() -> bytes:
    path = WORK / "seed.weights"
    write_weights_file(path, [0, 1, 0, 5], _tiny().weights_payload())
    return path.read_bytes()


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 9), (30, 60, 90)).save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def mutated(draw, seed: bytes):
    """`seed` after 1-4 random edits: flip, delete, insert, repeat a slice, or truncate."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "repeat", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 64))] * draw(st.integers(1, 3))
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def inputs(seed: bytes, lines=None):
    """Random bytes, mutations of `seed`, and (for text formats) random lines of its vocabulary."""
    options = [st.binary(max_size=512), mutated(seed)]
    if lines is not None:
        options.append(st.lists(lines, max_size=25).map(lambda ls: "\n".join(ls).encode()))
    return st.one_of(*options)


NUMBERS = st.sampled_from(["0", "1", "-1", "2", "3", "32", "416", "1e9", "-1e9", "1e400", "nan", "inf", "-inf",
                           "0.5", "abc", "", "1,2", ",", "1e-9", "99999999999999999999", "2000000000"])


def _returns_or_raises(error: type, fn, *args):
    """Call fn; it may return or raise `error` (the reader's own InputError subclass), nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args)
        except error:
            return None


def _layout(text: str, draw) -> str:
    """The same content in another valid layout: CRLF or LF, blank and comment lines, spaces."""
    lines = text.splitlines()
    out = []
    for line in lines:
        if draw(st.booleans()):
            out.append(draw(st.sampled_from(["", "   ", "\t"])))
        out.append(draw(st.sampled_from(["", " ", "\t"])) + line + draw(st.sampled_from(["", " ", "  "])))
    return draw(st.sampled_from(["\n", "\r\n"])).join(out) + "\n"


# --------------------------------------------------------------------------------------------
# label files (LabelError)
# --------------------------------------------------------------------------------------------

COORD = st.floats(0.001, 1.5, allow_nan=False)  # x0 = 0 is the empty-slot mark, refused
LABEL_ROW = st.builds(lambda c, xy, r: [float(c), *xy, *r], st.integers(0, 12),
                      st.lists(COORD, min_size=18, max_size=18), st.lists(st.floats(0, 2), min_size=2, max_size=2))


@FUZZ
@given(rows=st.lists(LABEL_ROW, max_size=4), data=st.data())
def test_label_reader_parses_valid_files_to_their_values(rows, data):
    """Every layout of the same rows (spacing, CRLF, blank lines, objects sharing a line: D40)
    reads back as the '%.6f' values."""
    expected = np.array([[float(lf.LABEL_FMT % v) for v in row] for row in rows]).reshape(-1, lf.LABEL_WIDTH)
    lines = [" ".join(lf.LABEL_FMT % v for v in row) for row in rows]
    if len(lines) >= 2 and data.draw(st.booleans()):
        lines = [lines[0] + " " + lines[1], *lines[2:]]  # two whole objects on one line
    got = lf.read_label_rows(_write("ok.txt", _layout("\n".join(lines), data.draw).encode()))
    np.testing.assert_array_equal(got, expected)


HOSTILE_LABEL = st.sampled_from([
    ("partial", lambda r: r[:-1]), ("word", lambda r: r[:5] + ["abc"] + r[6:]), ("nan", lambda r: r[:-1] + ["nan"]),
    ("inf", lambda r: [r[0], "inf", *r[2:]]), ("class -1", lambda r: ["-1", *r[1:]]),
    ("class 1.5", lambda r: ["1.5", *r[1:]]), ("pixels", lambda r: [r[0], "320", *r[2:]]),
    ("x0 = 0", lambda r: [r[0], "0", *r[2:]]), ("range", lambda r: r[:-1] + ["25"]),
])


@FUZZ
@given(row=LABEL_ROW, breaker=HOSTILE_LABEL, position=st.integers(0, 2))
def test_label_reader_refuses_every_hostile_row(row, breaker, position):
    good = [lf.LABEL_FMT % v for v in row]
    lines = [" ".join(good)] * 3
    lines[position] = " ".join(breaker[1](good))
    with pytest.raises(LabelError, match=rf"bad\.txt:{position + 1}: "):
        lf.read_label_rows(_write("bad.txt", ("\n".join(lines) + "\n").encode()))


def test_label_reader_refuses_bytes_that_are_not_text():
    with pytest.raises(LabelError, match=r"not a text file \(byte 0 is not UTF-8\)"):
        lf.read_label_rows(_write("bin.txt", b"\xff\xfe" + LABEL_TEXT))


LABEL_LINES = st.lists(NUMBERS, min_size=19, max_size=23).map(" ".join)


@FUZZ
@given(inputs(LABEL_TEXT * 2, LABEL_LINES))
def test_label_reader_on_random_input_returns_or_raises_label_errors(data):
    rows = _returns_or_raises(LabelError, dataset.read_truths, _write("f.txt", data))
    if rows is not None:  # whatever it accepted follows the rules
        assert rows.shape[1] == lf.LABEL_WIDTH and np.all(np.isfinite(rows)) and np.all(rows[:, 1] != 0)


# --------------------------------------------------------------------------------------------
# .data files and the camera (DataCfgError)
# --------------------------------------------------------------------------------------------

POSITIVE = st.floats(50.0, 5000.0, allow_nan=False)


@FUZZ
@given(fx=POSITIVE, fy=POSITIVE, u0=st.floats(-1e3, 1e3), v0=st.floats(-1e3, 1e3), w=st.integers(64, 2048),
       h=st.integers(64, 2048), data=st.data())
def test_data_reader_parses_valid_files_to_their_values(fx, fy, u0, v0, w, h, data):
    items = [("name", "obj"), ("fx", repr(fx)), ("fy", repr(fy)), ("u0", repr(u0)), ("v0", repr(v0)),
             ("width", str(w)), ("height", str(h))]
    lines = [f"{k}{data.draw(st.sampled_from(['=', ' = ', ' =  ']))}{v}" for k, v in items]
    text = _layout("\n".join(["# a comment", *lines]), data.draw)
    path = _write("ok.data", text.encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an odd field of view warns; the values still read
        K, width, height = utils.camera_from_data_cfg(utils.read_data_cfg(path), path)
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height) == (fx, fy, u0, v0, w, h)


HOSTILE_DATA = st.sampled_from([
    ("no equals sign", r":\d+: expected 'key = value'"), ("= 3", r":\d+: empty key"), ("fx = -572", r"fx = '-572'"),
    ("fx = 0", r"fx = '0'"), ("fy = nan", r"fy = 'nan'"), ("u0 = inf", r"u0 = 'inf'"),
    ("width = 1.5", r"width = '1.5'"), ("height = abc", r"height = 'abc'"), ("width = 0", r"width = '0'"),
])


@FUZZ
@given(breaker=HOSTILE_DATA, at=st.integers(0, 8))
def test_data_reader_refuses_every_hostile_line(breaker, at):
    lines = DATA_TEXT.decode().splitlines()
    lines.insert(min(at, len(lines)), breaker[0])
    if breaker[0].split(" ")[0] in ("fx", "fy", "u0", "width", "height"):
        lines.append(breaker[0])  # a later line wins: make sure the bad value is the one read
    path = _write("bad.data", ("\n".join(lines) + "\n").encode())
    with pytest.raises(DataCfgError, match=breaker[1]):
        utils.camera_from_data_cfg(utils.read_data_cfg(path), path)


DATA_LINES = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(["fx", "fy", "u0", "v0", "width", "height", "diam",
                                                          "im_width", "im_height", "name", ""]), NUMBERS),
    st.sampled_from(["# comment", "no equals sign", "=", "a = b = c"]))


def _read_data(path):
    opts = utils.read_data_cfg(path, resolve_paths=True)
    utils.camera_from_data_cfg(opts, path)
    if "diam" in opts:
        utils.data_cfg_number(opts, "diam", path, positive=True)
    return opts


@FUZZ
@given(inputs(DATA_TEXT, DATA_LINES))
def test_data_reader_on_random_input_returns_or_raises_data_cfg_errors(data):
    _returns_or_raises(DataCfgError, _read_data, _write("f.data", data))


# --------------------------------------------------------------------------------------------
# network cfg (CfgError)
# --------------------------------------------------------------------------------------------

CFG_SEPARATORS = ["=", " = ", "\t=\t"]


def _strip_lines(blocks):
    return [{k: v for k, v in b.items() if k not in ("_line", "_file")} for b in blocks]


@FUZZ
@given(st.data())
def test_cfg_parser_reads_every_layout_of_a_real_cfg_alike(data):
    """Comments, blank lines, spaces around '=' and CRLF change nothing (design §1.1)."""
    lines = []
    for line in CFG_TEXT.decode().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            k, v = line.split("=", 1)
            line = k.strip() + data.draw(st.sampled_from(CFG_SEPARATORS)) + v.strip()
        if data.draw(st.integers(0, 9)) == 0:
            lines.append(data.draw(st.sampled_from(["# note", "; note", "   # indented"])))
        lines.append(line)
    text = _layout("\n".join(lines), data.draw)
    assert _strip_lines(parse_cfg(_write("same.cfg", text.encode()))) == \
        _strip_lines(parse_cfg(_write("orig.cfg", CFG_TEXT)))
    plan_layers(parse_cfg(WORK / "same.cfg"))


HOSTILE_CFG = st.sampled_from([
    ("[convolutional", "lacks the closing"), ("[unknown]", "unknown section"), ("[net]", "a second \\[net\\]"),
    ("size=abc", "expected an integer"), ("no equals", "expected 'key = value'"), ("=3", "empty key"),
])


@FUZZ
@given(breaker=HOSTILE_CFG)
def test_cfg_parser_refuses_every_hostile_line(breaker):
    # at the end of the block before the first [maxpool]: a later key wins, so the bad value is read
    text = CFG_TEXT.decode().replace("[maxpool]", f"{breaker[0]}\n[maxpool]", 1)
    with pytest.raises(CfgError, match=breaker[1]):
        plan_layers(parse_cfg(_write("bad.cfg", text.encode())))


CFG_KEYS = st.sampled_from(["width", "height", "channels", "filters", "size", "stride", "pad", "groups",
                            "batch_normalize", "activation", "layers", "from", "output", "anchors", "num",
                            "classes", "num_keypoints", "steps", "scales", "test_width", "type"])
CFG_SECTIONS = st.sampled_from(["[net]", "[convolutional]", "[maxpool]", "[avgpool]", "[route]", "[reorg]",
                                "[shortcut]", "[upsample]", "[connected]", "[softmax]", "[cost]", "[region]",
                                "[unknown]", "[net", "# comment"])
CFG_LINES = st.one_of(CFG_SECTIONS, st.builds(lambda k, v: f"{k}={v}", CFG_KEYS, NUMBERS),
                      st.sampled_from(["activation=leaky", "activation=linear", "activation=swish", "junk"]))


def _parse_and_plan(path):
    plan_layers(parse_cfg(path))


@FUZZ
@given(inputs(CFG_TEXT, st.one_of(CFG_LINES, CFG_LINES, CFG_LINES).map(str)))
def test_cfg_parser_on_random_input_returns_or_raises_cfg_errors(data):
    _returns_or_raises(CfgError, _parse_and_plan, _write("f.cfg", data))


CFG_SECTION = st.builds(lambda head, lines: "\n".join([head, *lines]),
                        CFG_SECTIONS, st.lists(st.builds(lambda k, v: f"{k}={v}", CFG_KEYS, NUMBERS), max_size=6))


@settings(FUZZ, max_examples=150)
@given(st.lists(CFG_SECTION, max_size=8))
def test_cfg_parser_on_a_valid_start_returns_or_raises_cfg_errors(sections):
    """Layers with random keys and values after a working [net]: planning never crashes."""
    text = "[net]\nwidth=64\nheight=64\nchannels=3\n" + "\n".join(sections) + "\n"
    _returns_or_raises(CfgError, _parse_and_plan, _write("g.cfg", text.encode()))


# --------------------------------------------------------------------------------------------
# PLY meshes (MeshError)
# --------------------------------------------------------------------------------------------

VERTICES = st.lists(st.tuples(*[st.floats(-1.0, 1.0, allow_nan=False)] * 3), min_size=3, max_size=20)


@FUZZ
@given(vertices=VERTICES, binary=st.booleans(), comments=st.integers(0, 3))
def test_ply_reader_reads_back_what_was_written(vertices, binary, comments):
    """Also with comment lines added to the header, which change nothing."""
    v = np.array(vertices)
    path = WORK / "ok.ply"
    write_ply(path, v, np.array([[0, 1, 2]]), binary=binary)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"\n", b"\n" + b"comment added by the fuzz test\n" * comments, 1))
    mesh = MeshPly(path)
    np.testing.assert_array_equal(mesh.vertices, v.astype(np.float32).astype(np.float64))
    assert mesh.indices.tolist() == [[0, 1, 2]]


@FUZZ
@given(vertices=VERTICES, cut=st.floats(0.05, 0.95), kind=st.sampled_from(["truncated", "nan", "face", "count"]))
def test_ply_reader_refuses_every_hostile_mesh(vertices, cut, kind):
    v = np.array(vertices)
    path = WORK / "bad.ply"
    faces = np.array([[0, 1, 2]])
    if kind == "face":
        faces = np.array([[0, 1, len(v) + 3]])  # a vertex the file does not have
    if kind == "nan":
        v[int(cut * len(v))] = np.nan
    write_ply(path, v, faces, binary=True)
    data = path.read_bytes()
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    if kind == "truncated":
        data = data[:header_end + int(cut * (len(data) - header_end))]
    elif kind == "count":
        data = data.replace(f"element vertex {len(v)}".encode(), f"element vertex {len(v) + 1000}".encode())
    with pytest.raises(MeshError, match=r"bad\.ply"):
        MeshPly(_write("bad.ply", data))


PLY_LINES = st.one_of(
    st.sampled_from(["ply", "format ascii 1.0", "format binary_little_endian 1.0", "end_header",
                     "property float x", "property float y", "property float z", "property uchar red",
                     "property list uchar int vertex_indices", "property list uchar float x", "comment c"]),
    st.builds(lambda name, n: f"element {name} {n}", st.sampled_from(["vertex", "face"]), NUMBERS),
    st.lists(NUMBERS, max_size=5).map(" ".join))


@FUZZ
@given(inputs(_ply_bytes(binary=False), PLY_LINES))
def test_ply_reader_on_random_ascii_returns_or_raises_mesh_errors(data):
    _returns_or_raises(MeshError, MeshPly, _write("f.ply", data))


@FUZZ
@given(inputs(_ply_bytes(binary=True)))
def test_ply_reader_on_random_binary_returns_or_raises_mesh_errors(data):
    _returns_or_raises(MeshError, MeshPly, _write("b.ply", data))


# --------------------------------------------------------------------------------------------
# darknet .weights (WeightsError)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@FEW
@given(scale=st.floats(0.1, 10.0), seen=st.integers(0, 2**31 - 1))
def test_weights_loader_loads_valid_files_to_their_values(tiny, scale, seen):
    payload = (tiny.weights_payload() * np.float32(scale)).astype(np.float32)  # variances stay positive
    path = WORK / "ok.weights"
    write_weights_file(path, [0, 1, 0, seen], payload)
    report = tiny.load_weights(path)
    assert report.floats_read == payload.size and tiny.seen == seen
    np.testing.assert_array_equal(tiny.weights_payload(), payload)


@FEW
@given(kind=st.sampled_from(["cut", "extra", "nan", "odd"]), at=st.floats(0.0, 0.999))
def test_weights_loader_refuses_every_hostile_file(tiny, kind, at):
    payload = tiny.weights_payload().astype(np.float32)
    data = _weights_bytes()
    if kind == "cut":  # ends inside the payload, on a float boundary
        data = data[:16 + 4 * int(at * payload.size)]
    elif kind == "extra":
        data += np.ones(1 + int(at * 10), "<f4").tobytes()
    elif kind == "nan":
        bad = payload.copy()
        bad[int(at * bad.size)] = np.nan
        data = data[:16] + bad.astype("<f4").tobytes()
    else:  # not whole float32 values
        data = data[:-1 - int(at * 3)]
    with pytest.raises(WeightsError, match=r"bad\.weights"):
        tiny.load_weights(_write("bad.weights", data))


@FUZZ
@given(data=inputs(_weights_bytes()), until_last=st.booleans(), partial=st.booleans())
def test_weights_loader_on_random_input_returns_or_raises_weights_errors(tiny, data, until_last, partial):
    path = _write("f.weights", data)
    load = tiny.load_weights_until_last if until_last else tiny.load_weights
    _returns_or_raises(WeightsError, load, path, partial)


# --------------------------------------------------------------------------------------------
# images: the header reader and the decoder (ImageError)
# --------------------------------------------------------------------------------------------

@FEW
@given(w=st.integers(1, 48), h=st.integers(1, 48), mode=st.sampled_from(["RGB", "L", "P"]),
       fmt=st.sampled_from(["PNG", "JPEG", "BMP"]))
def test_image_reader_reads_valid_images_to_their_size_and_mode(w, h, mode, fmt):
    if fmt == "JPEG" and mode == "P":
        mode = "L"  # JPEG has no palette
    path = WORK / f"ok.{fmt.lower()}"
    Image.new(mode, (w, h), 7 if mode != "RGB" else (7, 8, 9)).save(path, format=fmt)
    header = image_files.check_image_header(path, size=(w, h))
    assert (header.size, header.orientation) == ((w, h), 1)
    assert header.mode == mode or fmt == "BMP"  # BMP stores a one-colour palette image as 1-bit
    assert image_files.load_image(path).size == (w, h)
    assert image_files.decode_rgb(image_files.read_bytes(path), path).shape == (h, w, 3)


@FEW
@given(kind=st.sampled_from(["16-bit", "rotated", "bomb", "size", "truncated"]), side=st.integers(2, 40))
def test_image_reader_refuses_every_hostile_image(kind, side):
    path = WORK / "bad.png"
    if kind == "16-bit":
        hostile.png16(path, size=(side, side))
    elif kind == "rotated":
        path = hostile.rotated_jpeg(WORK / "bad.jpg", size=(side, side), orientation=2 + side % 7)
    elif kind == "bomb":
        hostile.bomb_png(path, 9000 + side)
    elif kind == "size":
        hostile.rgb(path, size=(side, side + 1))
    else:
        hostile.rgb(path, size=(side, side))
        path.write_bytes(path.read_bytes()[:40])  # the header, and part of the pixels
    with pytest.raises(ImageError, match=r"bad\.(png|jpg): "):
        image_files.check_image_header(path, size=(side, side))
        image_files.load_image(path)


@FUZZ
@given(data=st.one_of(st.binary(max_size=256), mutated(_image_bytes("PNG")), mutated(_image_bytes("JPEG")),
                      mutated(_image_bytes("BMP"))))
def test_image_reader_on_random_input_returns_or_raises_image_errors(data):
    path = _write("f.img", data)
    _returns_or_raises(ImageError, image_files.read_header, path)
    _returns_or_raises(ImageError, image_files.load_image, path)


# --------------------------------------------------------------------------------------------
# image lists (LayoutError)
# --------------------------------------------------------------------------------------------

@FUZZ
@given(names=st.lists(st.from_regex(r"[a-z0-9_]{1,8}\.jpg", fullmatch=True), min_size=1, max_size=6), data=st.data())
def test_list_reader_reads_every_layout_to_the_entries(names, data):
    # the list deep in an empty tree: read_list also looks in its folder and 3 ancestors
    folder, root = WORK / "l1" / "l2" / "l3" / "l4", WORK / "root"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ok.txt"
    path.write_text(_layout("\n".join(names), data.draw))
    assert lf.read_list(path, root=root) == [str(root / n) for n in names]


@FUZZ
@given(st.one_of(st.binary(max_size=256), st.sampled_from([b"", b"\n\n", b"  \r\n", b"\xff\xfeabc"])))
def test_list_reader_on_random_input_returns_or_raises_layout_errors(data):
    paths = _returns_or_raises(LayoutError, lf.read_list, _write("f.lst", data))
    if data.strip() in (b"",) or data.startswith(b"\xff\xfe"):
        assert paths is None  # an empty list or one that is not text is refused


# --------------------------------------------------------------------------------------------
# pose files of make_labels.py (PoseFileError)
# --------------------------------------------------------------------------------------------

def _rotation(angles) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(angles, dtype=np.float64))[0]


POSE = st.builds(lambda a, t, name: {"image": name, "R": _rotation(a), "t": np.array(t)},
                 st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
                 st.lists(st.floats(-2.0, 2.0), min_size=3, max_size=3),
                 st.from_regex(r"[a-z0-9_]{1,8}\.jpg", fullmatch=True))


@FUZZ
@given(poses=st.lists(POSE, min_size=1, max_size=5), csv_file=st.booleans())
def test_pose_reader_reads_back_what_was_written(poses, csv_file):
    path = WORK / ("ok.csv" if csv_file else "ok.json")
    if csv_file:
        write_poses_csv(path, poses)
    else:
        path.write_text(json.dumps([lf.pose_entry(p["image"], p["R"], p["t"]) for p in poses]))
    got = lf.read_poses(path)
    assert [g["image"] for g in got] == [p["image"] for p in poses]
    for g, p in zip(got, poses):
        np.testing.assert_array_equal(g["R"], p["R"])
        np.testing.assert_array_equal(g["t"], p["t"])


HOSTILE_POSE = st.sampled_from([
    ("nan", lambda e: {**e, "t": [0.0, float("nan"), 1.0]}, "finite"),
    ("scaled", lambda e: {**e, "R": (np.array(e["R"]) * 2).tolist()}, "not a rotation"),
    ("short", lambda e: {**e, "R": np.reshape(e["R"], -1)[:8].tolist()}, "R needs 9 numbers"),
    ("missing", lambda e: {"image": e["image"], "R": e["R"]}, "must be an object with keys image, R, t"),
    ("word", lambda e: {**e, "t": ["a", 0, 1]}, "must be numbers"),
])


@FUZZ
@given(poses=st.lists(POSE, min_size=1, max_size=4), breaker=HOSTILE_POSE, at=st.integers(0, 3))
def test_pose_reader_refuses_every_hostile_entry(poses, breaker, at):
    entries = [lf.pose_entry(p["image"], p["R"], p["t"]) for p in poses]
    at = min(at, len(entries) - 1)
    entries[at] = breaker[1](entries[at])
    path = WORK / "bad.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(PoseFileError, match=rf"bad\.json: pose entry {at}.*{breaker[2]}"):
        lf.read_poses(path)


@FUZZ
@given(data=st.one_of(st.binary(max_size=256), mutated(b"image,r11,r12,r13,r21,r22,r23,r31,r32,r33,tx,ty,tz\n"
                                                       b"a.jpg,1,0,0,0,1,0,0,0,1,0,0,1\n")),
       suffix=st.sampled_from([".csv", ".json"]))
def test_pose_reader_on_random_input_returns_or_raises_pose_file_errors(data, suffix):
    _returns_or_raises(PoseFileError, lf.read_poses, _write("f" + suffix, data))
