"""Property-based fuzzing of every file reader: random and mutated bytes give our own errors only.

Each reader (network cfg, `.data`, label file, PLY mesh, darknet `.weights`) is fed random bytes,
mutations of a real file (flipped, deleted, inserted and repeated bytes, truncation) and, for the
text formats, random lines built from the format's own vocabulary. Whatever the input, a reader
returns or raises an `errors.InputError`; any other exception, or an example slower than the
deadline, fails the test. Examples are derandomised (the same on every run) and small.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dataset
import utils
from darknet import Darknet, parse_cfg, plan_layers, write_weights_file
from errors import InputError
from MeshPly import MeshPly, write_ply

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=150, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
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


def _ply_bytes(binary: bool) -> bytes:
    path = WORK / f"seed_{binary}.ply"
    v = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.2, 0], [0, 0, 0.3]])
    write_ply(path, v, np.array([[0, 1, 2], [0, 1, 3]]), normals=np.eye(3)[[0, 1, 2, 0]],
              colors=np.full((4, 3), 200, np.uint8), binary=binary)
    return path.read_bytes()


def _weights_bytes() -> bytes:
    path = WORK / "seed.weights"
    model = Darknet(_write("tiny.cfg", TINY_CFG))
    write_weights_file(path, [0, 1, 0, 5], model.weights_payload())
    return path.read_bytes()


def _write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


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


def _only_input_errors(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn(*args)
        except InputError:
            pass


# --------------------------------------------------------------------------------------------
# network cfg
# --------------------------------------------------------------------------------------------

CFG_KEYS = st.sampled_from(["width", "height", "channels", "filters", "size", "stride", "pad", "groups",
                            "batch_normalize", "activation", "layers", "from", "output", "anchors", "num",
                            "classes", "num_keypoints", "steps", "scales", "test_width", "type"])
CFG_SECTIONS = st.sampled_from(["[net]", "[convolutional]", "[maxpool]", "[avgpool]", "[route]", "[reorg]",
                                "[shortcut]", "[upsample]", "[connected]", "[softmax]", "[cost]", "[region]",
                                "[unknown]", "[net", "# comment"])
CFG_LINES = st.one_of(CFG_SECTIONS, st.builds(lambda k, v: f"{k}={v}", CFG_KEYS, NUMBERS),
                      st.sampled_from(["activation=leaky", "activation=linear", "activation=swish", "junk"]))


def _parse_and_plan(path):
    blocks = parse_cfg(path)
    plan_layers(blocks)


@FUZZ
@given(inputs(CFG_TEXT, st.one_of(CFG_LINES, CFG_LINES, CFG_LINES).map(str)))
def test_cfg_parser(data):
    _only_input_errors(_parse_and_plan, _write("f.cfg", data))


CFG_SECTION = st.builds(lambda head, lines: "\n".join([head, *lines]),
                        CFG_SECTIONS, st.lists(st.builds(lambda k, v: f"{k}={v}", CFG_KEYS, NUMBERS), max_size=6))


@settings(FUZZ, max_examples=400)
@given(st.lists(CFG_SECTION, max_size=8))
def test_cfg_parser_on_a_valid_start(sections):
    """Layers with random keys and values after a working [net]: planning never crashes."""
    text = "[net]\nwidth=64\nheight=64\nchannels=3\n" + "\n".join(sections) + "\n"
    _only_input_errors(_parse_and_plan, _write("g.cfg", text.encode()))


# --------------------------------------------------------------------------------------------
# .data file (and the values the scripts read from it)
# --------------------------------------------------------------------------------------------

DATA_LINES = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(["fx", "fy", "u0", "v0", "width", "height", "diam",
                                                          "im_width", "im_height", "name", ""]), NUMBERS),
    st.sampled_from(["# comment", "no equals sign", "=", "a = b = c"]))


def _read_data(path):
    opts = utils.read_data_cfg(path, resolve_paths=True)
    utils.camera_from_data_cfg(opts, path)
    if "diam" in opts:
        utils.data_cfg_number(opts, "diam", path, positive=True)


@FUZZ
@given(inputs(DATA_TEXT, DATA_LINES))
def test_data_cfg_reader(data):
    _only_input_errors(_read_data, _write("f.data", data))


# --------------------------------------------------------------------------------------------
# label files
# --------------------------------------------------------------------------------------------

LABEL_LINES = st.lists(NUMBERS, min_size=19, max_size=23).map(" ".join)


@FUZZ
@given(inputs(LABEL_TEXT * 2, LABEL_LINES))
def test_label_reader(data):
    _only_input_errors(dataset.read_truths, _write("f.txt", data))


# --------------------------------------------------------------------------------------------
# PLY meshes
# --------------------------------------------------------------------------------------------

PLY_LINES = st.one_of(
    st.sampled_from(["ply", "format ascii 1.0", "format binary_little_endian 1.0", "end_header",
                     "property float x", "property float y", "property float z", "property uchar red",
                     "property list uchar int vertex_indices", "property list uchar float x", "comment c"]),
    st.builds(lambda name, n: f"element {name} {n}", st.sampled_from(["vertex", "face"]), NUMBERS),
    st.lists(NUMBERS, max_size=5).map(" ".join))


@FUZZ
@given(inputs(_ply_bytes(binary=False), PLY_LINES))
def test_ply_reader_ascii(data):
    _only_input_errors(MeshPly, _write("f.ply", data))


@FUZZ
@given(inputs(_ply_bytes(binary=True)))
def test_ply_reader_binary(data):
    _only_input_errors(MeshPly, _write("b.ply", data))


# --------------------------------------------------------------------------------------------
# darknet .weights
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return Darknet(_write("tiny.cfg", TINY_CFG))


@FUZZ
@given(data=inputs(_weights_bytes()), until_last=st.booleans(), partial=st.booleans())
def test_weights_loader(tiny, data, until_last, partial):
    path = _write("f.weights", data)
    load = tiny.load_weights_until_last if until_last else tiny.load_weights
    _only_input_errors(load, path, partial)
