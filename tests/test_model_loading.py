"""model_loading.py: the shipped networks, the head check, and a weights file against its cfg."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import model_loading
import utils
from darknet import Darknet
from errors import CfgError, WeightsError

ROOT = Path(__file__).resolve().parents[1]
TRIAL3 = ROOT / "cfg/yolo-lite-trial3-pose.cfg"


def test_head_channels_is_the_design_rule():
    """A*(2K+1+C) (design §4): 20 for the single-object head, 5 * (18 + 1 + 13) = 160 for the occlusion one."""
    assert utils.head_channels() == 20
    assert utils.head_channels(5, 9, 13) == 160
    assert utils.head_channel_problem(20) is None
    assert utils.head_channel_problem(21, 1, 9, 1, "teacher") == (
        "teacher has 21 channels; expected num_anchors*(2K+1+C) = 1*(18+1+1) = 20")
    with pytest.raises(ValueError, match=r"output has 19 channels; expected .* = 20"):
        utils.check_head_channels(19)


@pytest.mark.parametrize("name", sorted(model_loading.NETWORKS))
def test_every_shipped_network_has_a_checked_head_and_its_init_weights_fit(name):
    """Each registry entry: the cfg exists, its head passes, and the planned output channels
    (`Darknet.output_channels`, what `check_head` reads) are those a forward pass gives."""
    cfg, init = model_loading.NETWORKS[name]
    model = model_loading.check_model_cfg(ROOT / cfg)
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, model.channels, 64, 64))
    assert model.output_channels == out.shape[1] == utils.head_channels(model.num_anchors, model.num_keypoints,
                                                                         model.num_classes)
    if init is not None:  # a VOC backbone: loaded 'until last' (design §2.4)
        assert not model.check_weights(ROOT / init, until_last=True).partial


def test_a_head_that_does_not_match_its_region_is_refused(tmp_path):
    cfg = tmp_path / "two_classes.cfg"
    cfg.write_text(TRIAL3.read_text().replace("classes=1", "classes=2"))
    with pytest.raises(CfgError, match=r"two_classes\.cfg: the output has 20 channels; \[region\] num=1, "
                                       r"classes=2 and num_keypoints=9 need 21"):
        model_loading.check_model_cfg(cfg)
    with pytest.raises(CfgError, match=r"model cfg not found: .*missing\.cfg"):
        model_loading.check_model_cfg(tmp_path / "missing.cfg")


def test_load_model_loads_exactly_the_weights_of_its_cfg(tmp_path):
    torch.manual_seed(0)
    saved = Darknet(TRIAL3)
    path = tmp_path / "full.weights"
    saved.save_weights(path)
    model = model_loading.load_model(TRIAL3, path, "cpu")
    assert not model.training
    np.testing.assert_array_equal(model.weights_payload(), saved.weights_payload())
    short = tmp_path / "short.weights"
    short.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(WeightsError, match=r"short\.weights does not fit .*: the file holds \d+ floats, the cfg needs"):
        model_loading.load_model(TRIAL3, short, "cpu")
    with pytest.raises(WeightsError, match=r"weights file not found: .*none\.weights"):
        model_loading.load_model(TRIAL3, tmp_path / "none.weights", "cpu")
