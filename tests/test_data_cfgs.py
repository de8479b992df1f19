"""The shipped LINEMOD `.data` files carry every key of design §3.2 with the right values."""
import pytest

import utils

KEYS = ("train", "valid", "backup", "mesh", "tr_range", "name", "diam", "gpus", "width", "height",
        "fx", "fy", "u0", "v0")


@pytest.mark.parametrize("name", utils.LINEMOD_OBJECTS)
def test_linemod_data_file(root, name):
    path = root / "cfg" / f"{name}.data"
    text = path.read_text()
    opts = utils.read_data_cfg(path)
    for key in KEYS:  # written in the file itself, not only defaulted
        assert f"\n{key} = " in "\n" + text, f"{path} lacks {key}"
    assert opts["name"] == name
    assert float(opts["diam"]) == utils.LINEMOD_DIAMETERS[name]
    assert opts["train"] == f"LINEMOD/{name}/train.txt" and opts["valid"] == f"LINEMOD/{name}/test.txt"
    assert opts["mesh"] == f"LINEMOD/{name}/{name}.ply"
    K, w, h = utils.camera_from_data_cfg(opts)
    assert (w, h) == (640, 480)
    assert K[0, 0] == 572.4114 and K[1, 1] == 573.5704 and K[0, 2] == 325.2611 and K[1, 2] == 242.0489
    assert all("=" in line for line in text.splitlines() if line.strip()), \
        "the original reader needs key = value lines only"


def test_occlusion_data_file(root):
    opts = utils.read_data_cfg(root / "cfg" / "occlusion.data")
    assert opts["valid1"] == "LINEMOD/ape/test_occlusion.txt"
    assert opts["valid4"] == "LINEMOD/can/test_occlusion.txt"
    assert opts["valid10"] == "LINEMOD/holepuncher/test_occlusion.txt"
    assert float(opts["diam13"]) == utils.LINEMOD_DIAMETERS["phone"]
    assert (opts["im_width"], opts["im_height"]) == ("640", "480")
