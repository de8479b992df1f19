"""The network a run trains or scores, built from its files and checked before any work (design §1, §2, §4).

    model = load_model("cfg/yolo-pose.cfg", "backup/ape/model.weights", "cpu")

darknet.py is the general darknet network and its `.weights` format; this module adds what a pose
run asks of it, so that every script, `evaluation`, `preflight` and `training` share one check:
`check_head` (the output has the A*(2K+1+C) channels its `[region]` describes, `utils.head_channels`),
`check_model_cfg` (the untrained network of a cfg, head checked), `check_weights` (a weights file
fills that network exactly) and `load_model` (both, then the weights loaded, in eval mode);
`NETWORKS`, the shipped networks by name. Errors are CfgError / WeightsError naming the file.
"""
from __future__ import annotations

from pathlib import Path

import utils
from darknet import Darknet, read_weights_file
from errors import CfgError, WeightsError

# The networks the project ships, by the names the study and the benchmarks use (design §1.5):
# name -> (cfg, init weights or None for a random start), paths relative to the repository root.
NETWORKS = {
    "yolov2": ("cfg/yolo-pose.cfg", None),
    "tiny": ("cfg/tiny-yolo-pose.cfg", None),
    "trial3": ("cfg/yolo-lite-trial3-pose.cfg", "weights/tiny-yolov2-trial3-voc.weights"),
    "trial10": ("cfg/yolo-lite-trial10-pose.cfg", "weights/tiny-yolov2-trial10-voc.weights"),
}


def check_head(model: Darknet, modelcfg) -> None:
    """CfgError naming `modelcfg` unless the network's output (the last layer before `[region]`) has
    the A*(2K+1+C) channels its `[region]` num, classes and `num_keypoints` describe (design §4)."""
    channels = model.output_channels
    expect = utils.head_channels(model.num_anchors, model.num_keypoints, model.num_classes)
    if channels != expect:
        raise CfgError(f"{modelcfg}: the output has {channels} channels; [region] num={model.num_anchors}, "
                       f"classes={model.num_classes} and num_keypoints={model.num_keypoints} need {expect}")


def check_model_cfg(modelcfg) -> Darknet:
    """The network of `modelcfg` (untrained), after `check_head`. Raises CfgError."""
    if not Path(modelcfg).is_file():
        raise CfgError(f"model cfg not found: {modelcfg}")
    model = Darknet(modelcfg)
    check_head(model, modelcfg)
    return model


def check_weights(model: Darknet, modelcfg, weightfile) -> None:
    """Raise WeightsError unless `weightfile` holds exactly the floats `model` (built from
    `modelcfg`) stores, all of them usable (`Darknet.check_weights`)."""
    if not Path(weightfile).is_file():
        raise WeightsError(f"weights file not found: {weightfile}")
    _, _, floats = read_weights_file(weightfile)
    need = model.num_stored_floats()
    if floats.size != need:  # a short file would otherwise load silently up to a layer boundary (design §2.2)
        raise WeightsError(f"{weightfile} does not fit {modelcfg}: the file holds {floats.size} floats, "
                           f"the cfg needs {need} (weights of another network, or a backbone-only file?)")
    model.check_weights(weightfile)


def load_model(modelcfg, weightfile, device) -> Darknet:
    """The network of `modelcfg` with all of `weightfile` loaded, in eval mode on `device`.

    Raises CfgError / WeightsError (see `check_model_cfg`, `check_weights`) before loading.
    """
    model = check_model_cfg(modelcfg)
    check_weights(model, modelcfg, weightfile)
    model.load_weights(weightfile)
    return model.to(device).eval()
