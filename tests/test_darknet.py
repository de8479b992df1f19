"""darknet.py: cfg parsing, network building, forward semantics and `.weights` I/O (design §1, §2, §14)."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import darknet
from conftest import GOLDEN_WEIGHTS_BYTES, GOLDEN_WEIGHTS_SHA256, build_golden_weights, sha256
from darknet import Darknet, parse_cfg, parse_cfg_text
from errors import CfgError, WeightsError

# design §1.5, §14.1, §14.2: (cfg, trainable parameters, .weights bytes)
CFG_SIZES = [
    ("cfg/yolo-pose.cfg", 50_547_764, 202_273_760),
    ("cfg/yolo-pose-pre.cfg", 50_560_064, 202_322_960),
    ("multi_obj_pose_estimation/cfg/yolo-pose-multi.cfg", 50_691_264, 202_847_760),
    ("multi_obj_pose_estimation/cfg/yolo-pose-multi-pre.cfg", 50_691_264, 202_847_760),
    ("cfg/tiny-yolo-pose.cfg", 15_754_148, 63_041_056),
    ("cfg/yolo-lite-trial3-pose.cfg", 545_956, 2_188_832),
    ("cfg/yolo-lite-trial10-pose.cfg", 545_332, 2_181_344),
]
SMALL_CFGS = ["cfg/tiny-yolo-pose.cfg", "cfg/yolo-lite-trial3-pose.cfg", "cfg/yolo-lite-trial10-pose.cfg"]
ALL_CFGS = [c for c, _, _ in CFG_SIZES]
TRIAL3, TRIAL10 = "cfg/yolo-lite-trial3-pose.cfg", "cfg/yolo-lite-trial10-pose.cfg"
HEADER = 16


def randomize(model: Darknet, seed: int = 0) -> Darknet:
    """Give BN statistics and affine parameters non-default values (so I/O and fusing are tested)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def state_equal(a: Darknet, b: Darknet) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def raw_floats(path) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8)[HEADER:].view("<f4")


def cfg_text(*sections: str, net: str = "width=32\nheight=32\nchannels=3") -> str:
    return "[net]\n" + net + "\n\n" + "\n\n".join(sections) + "\n"


def conv(filters, size=3, bn=1, act="leaky", stride=1, extra=""):
    return (f"[convolutional]\nbatch_normalize={bn}\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            f"activation={act}\n{extra}").rstrip()


def build(text: str, source: str = "test.cfg") -> Darknet:
    return Darknet(parse_cfg_text(text, source))


# ------------------------------------------------------------------------------------------
# Sizes: parameters, .weights bytes, save/load round trip for every cfg
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,n_params,n_bytes", CFG_SIZES, ids=[c.split("/")[-1] for c in ALL_CFGS])
def test_sizes_and_round_trip(root, tmp_path, cfg, n_params, n_bytes):
    torch.manual_seed(0)
    model = randomize(Darknet(root / cfg))
    assert sum(p.numel() for p in model.parameters()) == n_params
    model.seen = 1234
    path = tmp_path / "model.weights"
    model.save_weights(path)  # one 200 MB save per YOLOv2 cfg, no more
    assert path.stat().st_size == n_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["model.weights"]  # atomic write left no temp file
    raw = np.fromfile(path, dtype=np.uint8)
    assert raw[:HEADER].view("<i4").tolist() == [0, 0, 0, 1234]

    torch.manual_seed(1)
    other = Darknet(root / cfg)
    other.load_weights(path)
    assert state_equal(model, other)
    assert other.seen == 1234 and other.header.tolist() == [0, 0, 0, 1234]
    # the byte stream it would re-save is the one it loaded
    assert other.weights_header() == (0, 0, 0, 1234)
    assert np.array_equal(other.weights_payload().view("<u4"), raw[HEADER:].view("<u4"))


@pytest.mark.parametrize("cfg", SMALL_CFGS)
def test_resave_is_byte_identical(root, tmp_path, cfg):
    model = randomize(Darknet(root / cfg), seed=3)
    model.save_weights(tmp_path / "a.weights")
    again = Darknet(root / cfg)
    again.load_weights(tmp_path / "a.weights")
    again.save_weights(tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()


def test_yolov2_layer_table_and_forward_plan(root):
    with torch.device("meta"):
        model = Darknet(root / "cfg/yolo-pose.cfg")
    specs = model.specs
    assert [s.stored for s in specs if s.stored][:3] == [992, 18688, 74240]  # design §1.5
    assert specs[29].stored == 11_800_576 and specs[30].stored == 20_500
    assert specs[25].sources == (16,) and specs[28].sources == (27, 24)
    assert specs[27].out_shape == (256, 13, 13) and specs[28].out_shape == (1280, 13, 13)
    # only the outputs a later route needs are kept during forward
    assert model._keep == {16, 24, 27}
    assert (model.width, model.height, model.test_width, model.test_height) == (416, 416, 672, 672)
    assert model.output_stride == darknet.OUTPUT_STRIDE == 32


# ------------------------------------------------------------------------------------------
# Reorg, route, maxpool
# ------------------------------------------------------------------------------------------

def test_reorg_matches_golden_and_formula(golden):
    g = golden("reorg")
    layer = darknet.Reorg(2)
    for shape in ("1x4x4x4", "2x3x4x6"):
        x = torch.from_numpy(g[f"x_{shape}"])
        y = layer(x)
        assert np.array_equal(y.numpy(), g[f"y_{shape}"])
        b, c, h, w = x.shape
        s = 2
        for dy in range(s):  # the design §1.2 index formula, slice by slice
            for dx in range(s):
                assert torch.equal(y[:, (dy * s + dx) * c:(dy * s + dx + 1) * c], x[:, :, dy::s, dx::s])
        assert not torch.equal(y, F.pixel_unshuffle(x, 2))


def test_reorg_stride3_formula():
    x = torch.arange(2 * 2 * 6 * 9, dtype=torch.float32).reshape(2, 2, 6, 9)
    y = darknet.Reorg(3)(x)
    assert y.shape == (2, 18, 2, 3)
    b, c, i, j, dy, dx = 1, 1, 1, 2, 2, 1
    assert y[b, (dy * 3 + dx) * 2 + c, i, j] == x[b, c, 3 * i + dy, 3 * j + dx]


def test_reorg_not_divisible_errors():
    with pytest.raises(CfgError, match=r"test.cfg:\d+: layer 1 \[reorg\]: reorg stride 2 must divide .* 15x15"):
        build(cfg_text(conv(4), "[reorg]\nstride=2", net="width=15\nheight=15"))
    model = build(cfg_text(conv(4), "[maxpool]\nsize=2\nstride=2", "[reorg]\nstride=2", net="width=8\nheight=8"))
    assert model(torch.zeros(1, 3, 12, 12)).shape == (1, 16, 3, 3)
    with pytest.raises(ValueError, match=r"reorg layer 2: input 5x5 .* not divisible by stride 2"):
        model(torch.zeros(1, 3, 10, 10))


def test_route_order_and_relative_indices():
    model = build(cfg_text(conv(4), conv(6), conv(5), "[route]\nlayers=-1,-3", "[route]\nlayers=1"))
    assert model.specs[3].sources == (2, 0) and model.specs[4].sources == (1,)
    assert model.specs[3].out_shape == (9, 32, 32)
    outs = {}
    for i in (0, 1, 2, 3):
        model.models[i].register_forward_hook(lambda m, inp, out, i=i: outs.__setitem__(i, out.clone()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert torch.equal(outs[3], torch.cat([outs[2], outs[0]], 1))  # listed order
    assert torch.equal(y, model.models[1](model.models[0](x)))  # layers=1 is absolute
    assert "    3 route" in model.network_table() and "2 0" in model.network_table()


@pytest.mark.parametrize("layers,message", [
    ("-5", r"layer 1 \[route\]: refers to layer -5 \(= layer -4\), which does not exist before layer 1"),
    ("3", r"layer 1 \[route\]: refers to layer 3, which does not exist before layer 1; expected a layer in 0..0"),
])
def test_route_to_missing_layer(layers, message):
    with pytest.raises(CfgError, match=r"test.cfg:14: " + message):
        build(cfg_text(conv(4), f"[route]\nlayers={layers}"))


def test_route_size_mismatch():
    text = cfg_text(conv(4), "[maxpool]\nsize=2\nstride=2", "[route]\nlayers=-1,-2")
    with pytest.raises(CfgError, match=r"layer 2 \[route\]: concatenates outputs of different spatial sizes"):
        build(text)


def test_maxpool_stride1_padding_trick():
    model = build(cfg_text(conv(4), "[maxpool]\nsize=2\nstride=1", net="width=13\nheight=13"))
    assert model.specs[1].out_shape == (4, 13, 13)
    x = torch.randn(2, 4, 13, 13)
    pool = model.models[1]
    y = pool(x)
    assert y.shape == x.shape
    assert torch.equal(y, F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1))
    # darknet-C meaning: taps outside the image are ignored
    assert torch.equal(y, F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 1))


def test_tiny_yolo_uses_stride1_maxpool(root):
    model = Darknet(root / "cfg/tiny-yolo-pose.cfg")
    assert isinstance(model.models[11], darknet.MaxPoolStride1)
    assert model.specs[11].in_shape == model.specs[11].out_shape == (512, 13, 13)


# ------------------------------------------------------------------------------------------
# Cfg parsing
# ------------------------------------------------------------------------------------------

def test_parse_rules(tmp_path):
    text = ("# a comment\n[net]\nwidth = 32\nheight=32\n  # indented comment\n\tname = a=b==c\n"
            "[convolutional]\nfilters=4\nfilters = 8\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
            "[cost]\ntype=sse\n")
    path = tmp_path / "x.cfg"
    path.write_text(text)
    blocks = parse_cfg(path)
    assert [b["type"] for b in blocks] == ["net", "convolutional", "cost"]
    assert blocks[0]["name"] == "a=b==c" and blocks[0]["width"] == "32"
    assert blocks[1]["filters"] == "8" and blocks[1]["batch_normalize"] == "0"
    assert blocks[2]["_type"] == "sse" and "type" in blocks[2] and blocks[2]["type"] == "cost"
    assert [b["_line"] for b in blocks] == [2, 7, 14] and blocks[1]["_file"] == str(path)
    model = Darknet(path)
    assert model.models[0].conv.out_channels == 8 and model.models[0].conv.bias is not None


@pytest.mark.parametrize("text,message", [
    ("[net]\nwidth=8\nheight=8\n\n[yolo]\nmask=0\n", r"t.cfg:5: unknown section \[yolo\]"),
    ("[convolutional]\nfilters=3\n", r"t.cfg:1: the first section is \[convolutional\], expected \[net\]"),
    ("width=3\n[net]\n", r"t.cfg:1: 'width=3' appears before any section"),
    ("[net]\nwidth\n", r"t.cfg:2: expected 'key = value', found 'width'"),
    ("[net]\nwidth=8\n[net\n", r"t.cfg:3: section header '\[net' lacks the closing"),
    ("", r"t.cfg: no sections"),
])
def test_parse_errors(text, message):
    with pytest.raises(CfgError, match=message):
        parse_cfg_text(text, "t.cfg")


@pytest.mark.parametrize("body, net, message", [
    ("[maxpool]\nsize=2\nstride=0", None, r"layer 0 \[maxpool\]: size and stride must be >= 1, found 2 and 0"),
    ("[upsample]\nstride=0", None, r"layer 0 \[upsample\]: stride must be >= 1, found 0"),
    ("[connected]\noutput=-5", None, r"layer 0 \[connected\]: output shape \(-5, 1, 1\)"),
    ("[maxpool]\nsize=2\nstride=2", "width=0\nheight=32", r"\[net\]: width, height and channels must be >= 1"),
    ("[convolutional]\nfilters=1e9\nsize=3", None,
     r"layer 0 \[convolutional\]: 28,000,000,000 parameters in one layer"),
    ("[region]\nanchors=nan,1\nnum=1", None, r"layer 0 \[region\]: anchors='nan,1': expected a comma-separated "
                                              r"list of finite numbers"),
    ("[maxpool]\nsize=2\nstride=2", "width=32\nheight=32\nlearning_rate=inf",
     r"\[net\]: learning_rate='inf': expected a finite number"),
])
def test_cfg_values_found_by_fuzzing(body, net, message):
    """Each crashed (ZeroDivisionError, negative tensor sizes), tried to allocate 100 GB or was
    accepted as NaN before the fuzz tests found it."""
    text = cfg_text(body) if net is None else cfg_text(body, net=net)
    with pytest.raises(CfgError, match=message):
        build(text)


def test_binary_cfg_file(tmp_path):
    path = tmp_path / "bin.cfg"
    path.write_bytes(b"[net]\n\x80\xff\n")
    with pytest.raises(CfgError, match=r"bin\.cfg: not a text file \(byte 6 is not UTF-8\)"):
        parse_cfg(path)


def test_missing_key_names_file_line_layer():
    text = cfg_text(conv(4), "[maxpool]\nsize=2\nstride=2", "[convolutional]\nsize=3\nstride=1\npad=1")
    with pytest.raises(CfgError, match=r"test.cfg:18: layer 2 \[convolutional\]: missing required key 'filters'"):
        build(text)
    with pytest.raises(CfgError, match=r"test.cfg:1: \[net\]: missing required key 'width'"):
        build("[net]\nheight=8\n" + conv(4))
    with pytest.raises(CfgError, match=r"layer 0 \[convolutional\]: filters='x8': expected an integer"):
        build(cfg_text(conv("x8")))
    with pytest.raises(CfgError, match=r"layer 0 \[convolutional\]: activation='mish': expected one of"):
        build(cfg_text(conv(4, act="mish")))
    with pytest.raises(CfgError, match=r"\[net\]: steps has 2 values but scales has 1"):
        build(cfg_text(conv(4), net="width=8\nheight=8\nsteps=1,2\nscales=.1"))


def test_net_defaults_and_attributes(root):
    model = build(cfg_text(conv(20, 1, 0, "linear"), "[region]\nclasses=1\nnum=1",
                           net="width=64\nheight=96\nbatch=16\nlearning_rate=0.002\nsteps=400000,450000\nscales=.1,.1"))
    assert (model.num_keypoints, model.test_width, model.test_height, model.max_epochs) == (9, 64, 96, 500)
    assert model.conf_thresh == 0.1 and model.seen == 0
    assert model.header.dtype == np.int32 and model.header.tolist() == [0, 0, 0, 0]
    assert model.net["batch"] == 16 and model.net["learning_rate"] == 0.002
    assert model.net["steps"] == [400000, 450000] and model.net["scales"] == [0.1, 0.1]
    assert model.net["momentum"] == 0.9 and model.net["decay"] == 0.0005
    assert (model.anchors, model.num_anchors, model.anchor_step, model.num_classes) == ([], 1, 0, 1)
    assert model.region == {"anchors": [], "num_anchors": 1, "anchor_step": 0, "num_classes": 1,
                            "object_scale": 5.0, "noobject_scale": 1.0, "class_scale": 1.0,
                            "coord_scale": 1.0, "thresh": 0.6}
    assert model.blocks[0]["width"] == "64"  # the strings stay

    with torch.device("meta"):  # attributes only: skip allocating and initialising 50M parameters
        ms = Darknet(root / "cfg/yolo-pose.cfg")
        multi = Darknet(root / "multi_obj_pose_estimation/cfg/yolo-pose-multi.cfg")
        pre = Darknet(root / "cfg/yolo-pose-pre.cfg")
    assert ms.net["steps"] == [-1, 80, 160] and ms.net["batch"] == 8 and ms.region["noobject_scale"] == 0.1
    assert multi.anchors[:2] == [1.4820, 2.2412] and (multi.num_anchors, multi.anchor_step) == (5, 2)
    assert multi.num_classes == 13 and multi.conf_thresh == 0.05 and multi.region["object_scale"] == 5.0
    assert pre.region["object_scale"] == 0.0 and pre.region["noobject_scale"] == 0.0 and pre.num_classes == 13
    assert pre.net["scales"] == [0.1, 10, 0.1, 0.1] and pre.test_width == 416


def test_fork_cfgs_declare_the_missing_keys(root):
    for cfg in (TRIAL3, TRIAL10):
        net = parse_cfg(root / cfg)[0]
        added = (net["num_keypoints"], net["test_width"], net["test_height"], net["max_epochs"])
        assert added == ("9", "416", "416", "500")
        model = Darknet(root / cfg)
        assert model.anchors == [0.1067, 0.9223] and model.net["batch"] == 16 and model.net["steps"] == [400000, 450000]
    for cfg in ALL_CFGS:
        assert (root / cfg).read_text().startswith("# "), f"{cfg} should start with a comment saying what it is"


def test_other_layer_kinds():
    text = cfg_text(conv(8, extra="groups=1"), conv(8, 3, 1, "relu", extra="groups=4"),
                    "[shortcut]\nfrom=-2\nactivation=leaky",
                    "[upsample]\nstride=2", "[maxpool]\nsize=2\nstride=2", "[avgpool]",
                    "[connected]\noutput=5\nactivation=linear", "[softmax]", "[cost]\ntype=sse",
                    net="width=8\nheight=8")
    model = build(text)
    assert model.models[1].conv.groups == 4 and model.specs[1].params == 8 * 2 * 9 + 16
    assert model.specs[2].sources == (0, 1)
    assert model.specs[6].params == 8 * 5 + 5 and model.specs[6].flops == 2 * 8 * 5
    x = torch.randn(3, 3, 8, 8)
    y = model(x)
    assert y.shape == (3, 5, 1, 1) and torch.allclose(y.sum(1), torch.ones(3, 1, 1))
    table = model.network_table()
    for name in ("shortcut", "upsample", "avg", "connected", "softmax", "cost"):
        assert name in table


def test_connected_weights_round_trip(tmp_path):
    text = cfg_text(conv(4), "[connected]\noutput=3\nactivation=leaky", net="width=4\nheight=4")
    a, b = build(text), build(text)
    a.save_weights(tmp_path / "c.weights")
    assert (tmp_path / "c.weights").stat().st_size == 16 + 4 * (16 + 108 + 3 + 64 * 3)
    b.load_weights(tmp_path / "c.weights")
    assert state_equal(a, b)


# ------------------------------------------------------------------------------------------
# Real backbones and the golden network
# ------------------------------------------------------------------------------------------

@pytest.fixture(params=[3, 10], ids=["trial3", "trial10"])
def backbone(request, root):
    t = request.param
    return t, root / "weights" / f"tiny-yolov2-trial{t}-voc.weights", root / f"cfg/yolo-lite-trial{t}-pose.cfg"


def test_backbone_until_last(backbone):
    trial, path, cfg = backbone
    seen = {3: 10_598_400, 10: 5_612_800}[trial]
    torch.manual_seed(0)
    model = Darknet(cfg)
    head = model.models[11].conv.weight.detach().clone()
    model.load_weights_until_last(path)
    assert model.header.tolist() == [0, 1, 0, seen] and model.seen == seen
    assert torch.equal(model.models[11].conv.weight, head)  # the head keeps its fresh init
    f = raw_floats(path)
    layer0 = model.models[0]
    if trial == 3:  # design §2.1: beta, gamma, mean, var, weights
        expect = [layer0.bn.bias, layer0.bn.weight, layer0.bn.running_mean, layer0.bn.running_var, layer0.conv.weight]
    else:  # bias, weights
        expect = [layer0.conv.bias, layer0.conv.weight]
    at = 0
    for t in expect:
        assert np.array_equal(t.detach().numpy().ravel(), f[at:at + t.numel()])
        at += t.numel()
    assert at == {3: 496, 10: 448}[trial]
    n_backbone = sum(s.stored for s in model.specs[:11])
    assert n_backbone == {3: 542_064, 10: 540_192}[trial] and f.size - n_backbone == 125 + 256 * 125
    last = model.models[10].weight_tensors()[-1]
    assert np.array_equal(last.detach().numpy().ravel(), f[n_backbone - last.numel():n_backbone])
    if trial == 3:
        assert (model.models[10].bn.running_var > 0).all()


def test_backbone_full_load_is_refused(backbone):
    trial, path, cfg = backbone
    model = Darknet(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        model.load_weights(path)
    msg = str(err.value)
    assert str(path) in msg and "layer 11" in msg and "expected 5140 floats" in msg and "found 32125" in msg
    assert "load_weights_until_last" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert model.seen == 0


def test_golden_yolo_lite_trial3(golden, golden_weights, root):
    g = golden("yolo_lite_trial3")
    model = Darknet(root / TRIAL3)
    model.load_weights(golden_weights)
    assert model.header.tolist() == g["saved_header"].tolist() == [0, 1, 0, 0]
    assert np.array_equal(model.models[11].conv.weight.detach().numpy(), g["head_weight"])
    assert np.array_equal(model.models[11].conv.bias.detach().numpy(), g["head_bias"])
    feats = {}
    model.models[10].register_forward_hook(lambda m, i, o: feats.setdefault("backbone", o.clone()))
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(g["input"]))
    assert out.shape == (1, 20, 13, 13)
    np.testing.assert_allclose(out.numpy(), g["output"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats["backbone"].numpy(), g["backbone_out"], rtol=1e-5, atol=1e-5)
    # the backbone payload is the first floats of the VOC init file (tests/data/README.md)
    init = root / "weights" / "tiny-yolov2-trial3-voc.weights"
    n = int(g["n_backbone_floats"])
    assert np.array_equal(raw_floats(golden_weights)[:n], raw_floats(init)[:n])


def test_golden_recipe_reproduces_the_file(golden, tmp_path):
    """Recipe (a): until-last load of the VOC file, seen=0, seeded head, save == the golden bytes (their digest)."""
    path = build_golden_weights(golden, tmp_path / "full.weights")
    assert path.stat().st_size == GOLDEN_WEIGHTS_BYTES and sha256(path) == GOLDEN_WEIGHTS_SHA256


# ------------------------------------------------------------------------------------------
# .weights edge cases
# ------------------------------------------------------------------------------------------

@pytest.fixture
def trial3_file(tmp_path, root):
    model = randomize(Darknet(root / TRIAL3), seed=5)
    model.seen = 77
    path = tmp_path / "t3.weights"
    model.save_weights(path)
    return model, path


def test_truncated_inside_a_layer(trial3_file, tmp_path, root):
    _, path = trial3_file
    data = path.read_bytes()
    for n_floats, layer, expected, found in [(1000, 2, 4736, 504), (547_204 - 10, 11, 5140, 5130)]:
        cut = tmp_path / f"cut{n_floats}.weights"
        cut.write_bytes(data[:HEADER + 4 * n_floats])
        model = Darknet(root / TRIAL3)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=rf"{re.escape(str(cut))}: the file ends inside layer {layer} "
                                             rf"\(convolutional\): expected {expected} floats, found {found}"):
            model.load_weights(cut)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    odd = tmp_path / "odd.weights"
    odd.write_bytes(data[:HEADER + 6])
    with pytest.raises(ValueError, match="not a whole number of float32"):
        Darknet(root / TRIAL3).load_weights(odd)


def test_cutoff_file(trial3_file, tmp_path, root):
    model, path = trial3_file
    model.save_weights(tmp_path / "cut.weights", cutoff=6)  # layers 0..5: three convs
    assert (tmp_path / "cut.weights").stat().st_size == HEADER + 4 * (496 + 4736 + 18688)
    torch.manual_seed(2)
    fresh = Darknet(root / TRIAL3)
    untouched = fresh.models[6].conv.weight.detach().clone()
    with pytest.raises(WeightsError, match=r"cut\.weights: 23920 floats after the header; .* needs 547204 "
                                           r"\(fills layers 0\.\.4 only\).*allow_partial=True"):
        fresh.load_weights(tmp_path / "cut.weights")  # refused by default: nothing changes
    assert torch.equal(fresh.models[6].conv.weight, untouched) and fresh.seen == 0
    report = fresh.load_weights(tmp_path / "cut.weights", allow_partial=True)
    assert report.layers == [0, 2, 4] and report.floats_read == report.floats_in_file == 23920
    assert report.partial and "partial load" in str(report)
    for i in (0, 2, 4):
        pairs = zip(fresh.models[i].weight_tensors(), model.models[i].weight_tensors())
        assert all(torch.equal(a, b) for a, b in pairs)
    assert torch.equal(fresh.models[6].conv.weight, untouched)
    assert fresh.seen == 77
    # until-last loading of a full file equals loading everything but the head
    other = Darknet(root / TRIAL3)
    other.load_weights_until_last(path)
    assert all(torch.equal(a, b) for a, b in zip(other.models[10].weight_tensors(), model.models[10].weight_tensors()))


def test_leftover_floats(trial3_file, tmp_path, root):
    _, path = trial3_file
    extra = tmp_path / "extra.weights"
    extra.write_bytes(path.read_bytes() + np.ones(3, "<f4").tobytes())
    with pytest.raises(ValueError, match=r"3 floats left unread after layer 11 \(convolutional\).*"
                                         r"expected 5140 floats .* found 5143"):
        Darknet(root / TRIAL3).load_weights(extra)
    # until-last skips the file's head, whatever its filter count, but 3 stray floats after it do not
    # make a convolution over the backbone's 256 channels: another network or a damaged file
    with pytest.raises(WeightsError, match=r"5143 floats remain after the 542064 of the backbone; .*256 channels"):
        Darknet(root / TRIAL3).load_weights_until_last(extra)
    Darknet(root / TRIAL3).load_weights_until_last(path)  # the file's own 20-filter head: skipped


def test_real_backbones_load_until_last_and_report(root):
    for t, backbone_floats in ((3, 542_064), (10, 540_192)):
        path = root / "weights" / f"tiny-yolov2-trial{t}-voc.weights"
        model = Darknet(root / f"cfg/yolo-lite-trial{t}-pose.cfg")
        report = model.load_weights_until_last(path)
        assert report.floats_read == backbone_floats and report.floats_in_file == backbone_floats + 32_125
        assert report.layers == [0, 2, 4, 6, 8, 10] and not report.partial
        assert f"read {backbone_floats:,d} of {backbone_floats + 32_125:,d} floats" in str(report)


def test_header_only_file_is_refused(tmp_path, root):
    """A header and no floats used to load silently, leaving the random init (issue 16)."""
    empty = tmp_path / "header.weights"
    empty.write_bytes(np.array([0, 1, 0, 9], "<i4").tobytes())
    for load in ("load_weights", "load_weights_until_last"):
        model = Darknet(root / TRIAL3)
        with pytest.raises(WeightsError, match=rf"{re.escape(str(empty))}: 0 floats after the header; .*needs "
                                               rf"(547204|542064) \(fills no layer\)"):
            getattr(model, load)(empty)
        assert model.seen == 0
    assert Darknet(root / TRIAL3).load_weights(empty, allow_partial=True).floats_read == 0


def test_file_ending_on_a_layer_boundary_is_refused_unless_partial(trial3_file, tmp_path, root):
    _, path = trial3_file
    cut = tmp_path / "cut.weights"
    cut.write_bytes(path.read_bytes()[:HEADER + 4 * 542_064])  # the backbone only, no head
    with pytest.raises(WeightsError, match=r"542064 floats after the header; .* needs 547204 \(fills layers 0\.\.10"):
        Darknet(root / TRIAL3).load_weights(cut)
    assert Darknet(root / TRIAL3).load_weights_until_last(cut).floats_read == 542_064  # exactly the backbone


@pytest.mark.parametrize("src, dst", [(10, 3), (3, 10)])
def test_init_weights_of_the_other_trial_are_refused(root, src, dst):
    """Trial 10 (conv bias) into trial 3 (BatchNorm) loaded garbage without a word (issue 16)."""
    path = root / "weights" / f"tiny-yolov2-trial{src}-voc.weights"
    model = Darknet(root / f"cfg/yolo-lite-trial{dst}-pose.cfg")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=rf"{re.escape(str(path))}: .*(another network|negative running var)"):
        model.load_weights_until_last(path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_non_finite_weights_and_negative_variances_are_refused(trial3_file, tmp_path, root):
    model, path = trial3_file
    floats = raw_floats(path).copy()
    header = path.read_bytes()[:HEADER]
    bad = tmp_path / "bad.weights"
    nan = floats.copy()
    nan[600] = np.nan  # inside layer 2
    bad.write_bytes(header + nan.tobytes())
    with pytest.raises(WeightsError, match=r"bad\.weights: layer 2 \(convolutional\) would get 1 NaN or inf"):
        Darknet(root / TRIAL3).load_weights(bad)
    neg = floats.copy()
    neg[3 * 16] = -1.0  # the first running variance of layer 0 (beta, gamma, mean, var: 16 each)
    bad.write_bytes(header + neg.tobytes())
    with pytest.raises(WeightsError, match=r"layer 0 \(convolutional, BatchNorm\) would get 1 negative running var"):
        Darknet(root / TRIAL3).load_weights(bad)


def test_check_weights_leaves_the_model_alone(trial3_file, root):
    _, path = trial3_file
    model = Darknet(root / TRIAL3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = model.check_weights(path)
    assert report.floats_read == 547_204 and report.seen == 77 and model.seen == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unreadable_weights_file(tmp_path, root):
    with pytest.raises(WeightsError, match=r"nope\.weights: cannot read the weights file"):
        Darknet(root / TRIAL3).load_weights(tmp_path / "nope.weights")
    with pytest.raises(WeightsError, match="cannot read the weights file"):
        Darknet(root / TRIAL3).load_weights(tmp_path)


def test_header_too_short(tmp_path, root):
    short = tmp_path / "short.weights"
    short.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=rf"{re.escape(str(short))}: 10 bytes; .* at least 16 bytes"):
        Darknet(root / TRIAL3).load_weights(short)
    v2 = tmp_path / "v2short.weights"
    v2.write_bytes(np.array([0, 2, 0, 5], "<i4").tobytes())
    with pytest.raises(ValueError, match="20-byte header"):
        Darknet(root / TRIAL3).load_weights(v2)


def test_header_v02_has_64bit_seen(trial3_file, tmp_path, root):
    model, path = trial3_file
    floats = path.read_bytes()[HEADER:]
    for seen in (123_456, 2**33 + 7):
        v2 = tmp_path / "v2.weights"
        v2.write_bytes(np.array([0, 2, 0], "<i4").tobytes() + np.array([seen], "<u8").tobytes() + floats)
        loaded = Darknet(root / TRIAL3)
        loaded.load_weights(v2)
        assert loaded.seen == seen and loaded.header[:3].tolist() == [0, 2, 0]
        assert state_equal(loaded, model)
    loaded.seen = 123_456
    loaded.save_weights(tmp_path / "back.weights")  # written as v0.1 with a 32-bit seen
    back = (tmp_path / "back.weights").read_bytes()
    assert np.frombuffer(back[:HEADER], "<i4").tolist() == [0, 1, 0, 123_456] and back[HEADER:] == floats
    loaded.seen = 2**33
    with pytest.warns(UserWarning, match="does not fit"):
        assert loaded.weights_header()[3] == 2**31 - 1


def test_load_copies_to_model_device_without_grad(trial3_file, root):
    model, path = trial3_file
    other = Darknet(root / TRIAL3)
    other.load_weights(path)
    assert all(p.requires_grad and p.grad is None and p.grad_fn is None for p in other.parameters())


# ------------------------------------------------------------------------------------------
# Forward, table, fuse, CUDA
# ------------------------------------------------------------------------------------------

def test_forward_any_multiple_of_32(root):
    model = Darknet(root / TRIAL3).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 352, 320)).shape == (2, 20, 11, 10)
    yolo = Darknet(root / "cfg/yolo-pose.cfg").eval()
    with torch.no_grad():
        assert yolo(torch.zeros(1, 3, 64, 96)).shape == (1, 20, 2, 3)
    multi = Darknet(root / "multi_obj_pose_estimation/cfg/yolo-pose-multi.cfg").eval()
    with torch.no_grad():
        assert multi(torch.zeros(1, 3, 32, 32)).shape == (1, 160, 1, 1)


@pytest.mark.parametrize("cfg,gflop,params", [
    ("cfg/yolo-pose.cfg", "29.32", "50,547,764"),
    ("cfg/tiny-yolo-pose.cfg", "6.93", "15,754,148"),
    (TRIAL3, "1.65", "545,956"),
    (TRIAL10, "1.65", "545,332"),
])
def test_print_network_flops(root, cfg, gflop, params):
    model = Darknet(root / cfg)
    buf = io.StringIO()
    text = model.print_network(file=buf)
    assert buf.getvalue().rstrip("\n") == text
    total = text.splitlines()[-1]
    assert f"{gflop} GFLOP at 416 x 416" in total and f"{params} trainable parameters" in total
    assert f"{darknet.HEADER_BYTES + 4 * model.num_stored_floats():,d} bytes" in total  # the file save_weights writes
    assert abs(model.gflops() - float(gflop)) < 0.005
    header = text.splitlines()[0].split()
    assert header == ["layer", "type", "filters", "size", "input", "output", "params", "GFLOP"]


def test_table_rows_and_sizes(root):
    model = Darknet(root / "cfg/yolo-pose.cfg")
    rows = model.network_table().splitlines()
    assert re.match(r"\s+0 conv\s+32\s+3 x 3 / 1\s+416 x 416 x\s+3->\s+416 x 416 x\s+32\s+928\s+0\.299", rows[1])
    assert re.match(r"\s+25 route\s+16\s+->\s+26 x\s+26 x\s+512$", rows[26])
    assert re.match(r"\s+28 route\s+27 24\s+->\s+13 x\s+13 x\s+1280$", rows[29])
    assert re.match(r"\s+31 detection", rows[32])
    assert "21 x  21 x   20" in model.network_table(672, 672)  # MS test size
    lite = Darknet(root / TRIAL3).network_table().splitlines()
    assert re.match(r"\s+1 max\s+2 x 2 / 2\s+416 x 416 x\s+16->\s+208 x 208 x\s+16$", lite[2])  # real channels
    assert darknet.print_cfg(model.blocks, 832, 832, file=io.StringIO()).splitlines()[-1].endswith("at 832 x 832")


@pytest.mark.parametrize("cfg", [TRIAL3, TRIAL10])
def test_fuse(root, cfg, tmp_path):
    torch.manual_seed(0)
    model = randomize(Darknet(root / cfg), seed=7).eval()
    fused = model.fuse()
    assert fused.fused and not model.fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 3, 128, 160)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (out - ref).abs().max() <= 1e-4
    with torch.no_grad():
        out_cl = fused.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert (out_cl - ref).abs().max() <= 1e-4
    with pytest.raises(RuntimeError, match="fused"):
        fused.save_weights(tmp_path / "f.weights")
    with pytest.raises(RuntimeError, match="fused"):
        fused.load_weights(tmp_path / "f.weights")
    model.save_weights(tmp_path / "ok.weights")  # the original keeps working


@pytest.mark.parametrize("cfg", [TRIAL3, TRIAL10])
def test_inference_copy_equals_eager_and_leaves_the_model_alone(root, cfg):
    model = randomize(Darknet(root / cfg), seed=3)
    model.train()
    net = model.inference_copy()
    assert net.fused and not any(p.requires_grad for p in net.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())  # untouched
    x = torch.rand(3, 3, 256, 256)
    with torch.no_grad():
        ref = model.eval()(x)
        out = net(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-4


def test_fuse_with_routes():
    text = cfg_text(conv(4), conv(6, 1), conv(8, 3, 0), "[maxpool]\nsize=2\nstride=2", "[reorg]\nstride=2",
                    "[route]\nlayers=-1,-1", conv(5, 1, 0, "linear"), "[region]", net="width=16\nheight=16")
    model = randomize(build(text), seed=1).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (model.fuse()(x) - model(x)).abs().max() <= 1e-4


def test_train_mode_backward(root):
    model = Darknet(root / TRIAL3).train()
    out = model(torch.rand(2, 3, 64, 64))
    out.square().sum().backward()
    assert model.models[0].conv.weight.grad is not None and model.models[0].bn.num_batches_tracked == 1


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", ALL_CFGS)
def test_cuda_matches_cpu(root, cfg):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine; the CPU/CUDA agreement test needs a GPU")
    torch.manual_seed(0)
    model = randomize(Darknet(root / cfg), seed=2).eval()
    x = torch.rand(2, 3, 160, 224)
    with torch.no_grad():
        ref = model(x)
    conv_tf32, mm_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            out = model.to("cuda")(x.to("cuda")).cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv_tf32, mm_tf32
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.cuda
def test_cuda_weights_io(root, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine; loading onto a CUDA model needs a GPU")
    model = randomize(Darknet(root / TRIAL3), seed=4)
    model.save_weights(tmp_path / "a.weights")
    gpu = Darknet(root / TRIAL3).to("cuda")
    gpu.load_weights(tmp_path / "a.weights")
    assert state_equal(model, gpu.cpu())


def test_model_loss_is_the_cfg_region_loss(root):
    """`model.loss` as the fork's train.py uses it: the [region] scales, outside the state dict."""
    m = Darknet(root / "cfg/yolo-lite-trial3-pose.cfg")
    keys = set(m.state_dict())
    loss = m.loss
    assert loss is m.loss
    assert (loss.object_scale, loss.noobject_scale, loss.coord_scale) == (5.0, 0.1, 1.0)
    assert loss.num_keypoints == 9 and loss.num_classes == 1 and loss.num_anchors == 1
    assert set(m.state_dict()) == keys
