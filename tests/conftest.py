"""Shared fixtures: the golden outputs of the original code (tests/data/golden) and the repository root.

A missing golden file fails the test that needs it: the faithfulness checks run on every machine.
SSP_GOLDEN may point at another copy of the golden folder (optional; the default is tests/data/golden).
"""
import csv
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest

from linemod_format import CSV_POSE_COLUMNS, write_text

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("SSP_GOLDEN", ROOT / "tests" / "data" / "golden"))
# yolo_lite_trial3_full.weights (2.2 MB) is not committed: the `golden_weights` fixture rebuilds it
# from the VOC backbone in weights/ and the head in yolo_lite_trial3.npz (tests/data/README.md),
# and checks it byte for byte against the golden file's digest.
GOLDEN_WEIGHTS_SHA256 = "d222efaaa4048c64d511029c167c7a573d929e2016f3e92a594f4b2d42370896"
GOLDEN_WEIGHTS_BYTES = 2_188_832


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"golden file missing: {path} (see tests/data/README.md)")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _require(GOLDEN)


@pytest.fixture(scope="session")
def golden(golden_dir):
    """Load a golden .npz by stem: golden('evaluation')."""
    cache = {}

    def load(stem: str):
        if stem not in cache:
            cache[stem] = dict(np.load(_require(golden_dir / f"{stem}.npz"), allow_pickle=False))
        return cache[stem]

    return load


def build_golden_weights(golden, path: Path) -> Path:
    """The recipe of yolo_lite_trial3.npz (tests/data/README.md): the VOC trial 3 backbone loaded until the
    last layer, seen 0, the seeded head of yolo_lite_trial3.npz, saved with save_weights."""
    import torch

    from darknet import Darknet

    g = golden("yolo_lite_trial3")
    model = Darknet(ROOT / "cfg" / "yolo-lite-trial3-pose.cfg")
    model.load_weights_until_last(ROOT / "weights" / "tiny-yolov2-trial3-voc.weights")
    assert model.header.tolist() == g["init_header"].tolist()
    model.seen = 0
    with torch.no_grad():
        model.models[11].conv.weight.copy_(torch.from_numpy(g["head_weight"]))
        model.models[11].conv.bias.zero_()
    model.save_weights(path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def golden_weights(golden, tmp_path_factory) -> Path:
    """yolo_lite_trial3_full.weights: the golden file if SSP_GOLDEN has it, else rebuilt; its digest checked."""
    path = GOLDEN / "yolo_lite_trial3_full.weights"
    if not path.exists():
        path = build_golden_weights(golden, tmp_path_factory.mktemp("golden") / "yolo_lite_trial3_full.weights")
    assert path.stat().st_size == GOLDEN_WEIGHTS_BYTES and sha256(path) == GOLDEN_WEIGHTS_SHA256, \
        f"{path} differs from the golden yolo_lite_trial3_full.weights"
    return path


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _keep_stop_signals():
    """run_cli ignores Ctrl-C once a script is interrupted (it is ending); a test that runs it in this
    process gets the handlers back, so that the test session stays interruptible."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)


@pytest.fixture
def ctrl_c_raises():
    """Python's own Ctrl-C handler (KeyboardInterrupt) for the test, as in a terminal: a test run
    started in the background by a shell inherits SIGINT ignored, and Python then installs none
    (_keep_stop_signals puts the inherited handler back afterwards)."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)


def write_poses_csv(path, records) -> None:
    """A CSV pose file (the CSV_POSE_COLUMNS header that `linemod_format.read_poses` reads) from
    [{image, R (3, 3), t (3,)}]; repr() numbers, exact. Users write their own: only the tests need a writer."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_POSE_COLUMNS)
    for rec in records:
        vals = np.concatenate([np.asarray(rec["R"], dtype=np.float64).reshape(9),
                               np.asarray(rec["t"], dtype=np.float64).reshape(3)])
        writer.writerow([str(rec["image"])] + [repr(float(v)) for v in vals])
    write_text(path, buf.getvalue())
