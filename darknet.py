"""Darknet networks: the `.cfg` parser, the network builder and the `.weights` file format.

Reading order (design §1, §2, §14):
    1. `parse_cfg`: cfg text -> list of plain dicts (`blocks`), block 0 is `[net]`.
    2. `plan_layers`: blocks -> one `LayerSpec` per layer (shapes, parameter, FLOP counts), with
       every cfg mistake reported here, by file, line and layer index.
    3. The layer modules (`ConvBNAct`, `MaxPoolStride1`, `Reorg`, `Route`, ...), one small class per
       darknet layer kind, and `build_layer`, which turns a `LayerSpec` into one of them.
    4. `Darknet`: the `nn.Module` the rest of the project uses; its `forward` returns the raw output
       of the last layer before `[region]`, shape `(B, A*(2K+1+C), H/32, W/32)`.
    5. `.weights` I/O: `read_weights_file` / `write_weights_file` and the Darknet methods
       `load_weights`, `load_weights_until_last` (both return a `WeightsLoad` saying what was
       read), `check_weights` (the same checks, nothing loaded) and `save_weights`.

Layer indices follow the cfg: layer 0 is the first section after `[net]` (design §1.1), and
`Darknet.models[i]` is layer i. Shapes are `(C, H, W)` per image; tensors are `(B, C, H, W)`.
"""
from __future__ import annotations

import copy
import math
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from errors import CfgError, WeightsError
from linemod_format import atomic_write

__all__ = [
    "parse_cfg", "parse_cfg_text", "plan_layers", "LayerSpec", "network_table", "print_cfg",
    "Darknet", "WeightsLoad", "read_weights_file", "write_weights_file",
    "fold_batchnorm", "OUTPUT_STRIDE",
]

# design §1.2, D36: BatchNorm as the weights were trained (eps 1e-4); leaky slope 0.1
BN_EPS = 1e-4
BN_MOMENTUM = 0.1
LEAKY_SLOPE = 0.1
OUTPUT_STRIDE = 32  # design §1.5: every pose network here downsamples by 32
# A sanity bound on one layer (the largest layer here, yolo-pose's 3x3x1024x1024 conv, has 9.4 M):
# a typo such as filters=1e9 is reported instead of trying to allocate tens of gigabytes.
MAX_LAYER_PARAMS = 1 << 31

# design §1.2: documented defaults for [net] keys the fork's committed cfgs lack
NET_DEFAULTS = {"num_keypoints": 9, "max_epochs": 500, "conf_thresh": 0.1}
# [net] training hyper-parameters when absent (darknet-C defaults, decay as in every cfg here)
NET_HYPER_DEFAULTS = {"batch": 1, "subdivisions": 1, "channels": 3, "learning_rate": 0.001,
                      "momentum": 0.9, "decay": 0.0005, "max_batches": 0}
# design §1.2 [region] / §5.6: loss scales when the key is missing; thresh 0.6 (§13)
REGION_DEFAULTS = {"object_scale": 5.0, "noobject_scale": 1.0, "class_scale": 1.0,
                   "coord_scale": 1.0, "thresh": 0.6}

# design §2.1: weights header
HEADER_INT32S = 4  # major, minor, revision, seen (32-bit form)
HEADER_BYTES = 16
HEADER_BYTES_SEEN64 = 20

# Section names the parser accepts (design §1.2 and "other section types")
LAYER_KINDS = ("convolutional", "maxpool", "avgpool", "route", "reorg", "shortcut", "upsample",
               "connected", "softmax", "cost", "region")
# Short names printed by print_network (design §1.4)
SHORT_NAMES = {"convolutional": "conv", "maxpool": "max", "avgpool": "avg", "region": "detection",
               "connected": "connected", "softmax": "softmax", "cost": "cost", "route": "route",
               "reorg": "reorg", "shortcut": "shortcut", "upsample": "upsample"}


# ============================================================================================
# 1. Parsing (design §1.1)
# ============================================================================================

def parse_cfg(cfgfile) -> list[dict]:
    """Read a darknet `.cfg` file into a list of blocks (see `parse_cfg_text`)."""
    path = Path(cfgfile)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CfgError(f"{path}: cannot read cfg file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise CfgError(f"{path}: not a text file (byte {exc.start} is not UTF-8); expected a darknet cfg") from None
    return parse_cfg_text(text, source=str(path))


def parse_cfg_text(text: str, source: str = "<cfg>") -> list[dict]:
    """Parse cfg text into blocks: `[{'type': 'net', ...}, {'type': 'convolutional', ...}, ...]`.

    Rules (design §1.1, with the project's fixes): blank lines and lines whose first non-space
    character is `#` or `;` are comments; `key = value` is split on the FIRST `=` and both sides
    stripped; values stay strings; a duplicate key keeps the last value; the key `type` becomes
    `_type`; `[convolutional]` starts with `batch_normalize='0'`. Each block also carries
    `_line` (1-based line of its `[header]`) and `_file` (`source`) for error messages.
    The first section must be `[net]`; unknown sections are errors.
    """
    blocks: list[dict] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{source}:{lineno}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise CfgError(f"{where}: section header {line!r} lacks the closing ']'")
            kind = line[1:-1].strip()
            if not blocks and kind != "net":
                raise CfgError(f"{where}: the first section is [{kind}], expected [net]")
            if blocks and kind == "net":
                raise CfgError(f"{where}: a second [net] section; [net] must appear once, first")
            if kind != "net" and kind not in LAYER_KINDS:
                raise CfgError(f"{where}: unknown section [{kind}] (layer {len(blocks) - 1}); "
                               f"expected one of [net], " + ", ".join(f"[{k}]" for k in LAYER_KINDS))
            block = {"type": kind, "_line": lineno, "_file": source}
            if kind == "convolutional":
                block["batch_normalize"] = "0"  # design §1.1 default
            blocks.append(block)
            continue
        if not blocks:
            raise CfgError(f"{where}: {line!r} appears before any section; expected [net] first")
        if "=" not in line:
            raise CfgError(f"{where}: expected 'key = value', found {line!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        if not key:
            raise CfgError(f"{where}: empty key in {line!r}")
        blocks[-1]["_type" if key == "type" else key] = value
    if not blocks:
        raise CfgError(f"{source}: no sections found; expected [net] first")
    return blocks


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


class _Options:
    """Typed access to one block's string values; errors name file, line and layer."""

    _MISSING = object()

    def __init__(self, block: dict, index: int | None):
        self.block, self.index = block, index

    def where(self) -> str:
        b = self.block
        layer = "[net]" if self.index is None else f"layer {self.index} [{b['type']}]"
        return f"{b.get('_file', '<cfg>')}:{b.get('_line', '?')}: {layer}"

    def error(self, message: str) -> CfgError:
        return CfgError(f"{self.where()}: {message}")

    def _get(self, key, convert, default, kind):
        if key not in self.block:
            if default is self._MISSING:
                raise self.error(f"missing required key '{key}'")
            return default
        raw = self.block[key]
        try:
            return convert(raw)
        except ValueError:
            raise self.error(f"{key}={raw!r}: expected {kind}") from None

    def integer(self, key, default=_MISSING) -> int:
        return self._get(key, lambda s: int(float(s)) if float(s).is_integer() else int(s), default, "an integer")

    def number(self, key, default=_MISSING) -> float:
        return self._get(key, _finite, default, "a finite number")

    def text(self, key, default=_MISSING) -> str:
        return self._get(key, str, default, "a string")

    def numbers(self, key, default=_MISSING) -> list[float]:
        return self._get(key, lambda s: [_finite(v) for v in s.split(",") if v.strip()], default,
                         "a comma-separated list of finite numbers")

    def integers(self, key, default=_MISSING) -> list[int]:
        def conv(s):
            return [int(float(v)) if float(v).is_integer() else int(v) for v in s.split(",") if v.strip()]
        return self._get(key, conv, default, "a comma-separated list of integers")


# ============================================================================================
# 2. Planning: shapes, parameters and FLOPs per layer, checked at the cfg's input size
# ============================================================================================

Shape = tuple  # (C, H, W) per image


@dataclass
class LayerSpec:
    """Everything about one layer that does not need tensors.

    `sources`: absolute indices of the layers a route/shortcut reads (None: the previous layer).
    `params`: trainable parameters; `stored`: float32 values in a `.weights` file (design §1.5);
    `flops`: multiply-accumulates x 2 at the planned input size (design §14.2).
    `options`: the parsed keyword arguments of the layer's module.
    """
    index: int
    kind: str
    where: str
    in_shape: Shape
    out_shape: Shape
    sources: tuple | None = None
    filters: int | None = None
    size: str = ""
    params: int = 0
    stored: int = 0
    flops: int = 0
    options: dict = field(default_factory=dict)


def _activation_name(opt: _Options, default: str = "linear") -> str:
    name = opt.text("activation", default)
    if name not in ACTIVATIONS:
        raise opt.error(f"activation={name!r}: expected one of {', '.join(ACTIVATIONS)}")
    return name


def _plan_convolutional(opt: _Options, i: int, inp: Shape, shapes: list) -> LayerSpec:
    c, h, w = inp
    filters, k = opt.integer("filters"), opt.integer("size")
    stride, groups = opt.integer("stride", 1), opt.integer("groups", 1)
    bn = opt.integer("batch_normalize", 0) != 0
    pad = (k - 1) // 2 if opt.integer("pad", 0) else 0  # design §1.2: a flag, not a pixel count
    if min(filters, k, stride, groups) < 1:
        raise opt.error(f"filters, size, stride and groups must be >= 1, found {filters}, {k}, {stride}, {groups}")
    if c % groups or filters % groups:
        raise opt.error(f"groups={groups} must divide the input channels ({c}) and filters ({filters})")
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    if oh < 1 or ow < 1:
        raise opt.error(f"a {k}x{k}/{stride} kernel does not fit the {w}x{h} input")
    weights = filters * (c // groups) * k * k
    return LayerSpec(
        i, "convolutional", opt.where(), inp, (filters, oh, ow), filters=filters, size=f"{k} x {k} / {stride}",
        params=weights + (2 if bn else 1) * filters, stored=weights + (4 if bn else 1) * filters,
        flops=2 * weights * oh * ow,
        options=dict(in_channels=c, filters=filters, size=k, stride=stride, padding=pad, groups=groups,
                     batch_normalize=bn, activation=_activation_name(opt)))


def _plan_maxpool(opt: _Options, i: int, inp: Shape, shapes: list) -> LayerSpec:
    c, h, w = inp
    stride = opt.integer("stride", 1)
    size = opt.integer("size", stride)
    if min(stride, size) < 1:
        raise opt.error(f"size and stride must be >= 1, found {size} and {stride}")
    if stride == 1:  # design §1.2 padding trick: replicate-pad right/bottom, then 2x2/1; size preserved
        size, out = 2, (c, h, w)
    else:
        out = (c, (h - size) // stride + 1, (w - size) // stride + 1)
        if out[1] < 1 or out[2] < 1:
            raise opt.error(f"a {size}x{size}/{stride} max-pool does not fit the {w}x{h} input")
    return LayerSpec(i, "maxpool", opt.where(), inp, out, size=f"{size} x {size} / {stride}",
                     options=dict(size=size, stride=stride))


def _plan_avgpool(opt: _Options, i: int, inp: Shape, shapes: list) -> LayerSpec:
    return LayerSpec(i, "avgpool", opt.where(), inp, (inp[0], 1, 1))


def _resolve(opt: _Options, i: int, v: int, shapes: list) -> int:
    j = v if v > 0 else i + v  # design §1.2: v > 0 absolute, v <= 0 relative to the route itself
    if not 0 <= j < i:
        ref = f"layer {v}" if v > 0 else f"layer {v} (= layer {j})"
        raise opt.error(f"refers to {ref}, which does not exist before layer {i}; "
                        f"expected a layer in 0..{i - 1}")
    return j


def _plan_route(opt: _Options, i: int, inp: Shape, shapes: list) -> LayerSpec:
    layers = [_resolve(opt, i, v, shapes) for v in opt.integers("layers")]
    if not layers:
        raise opt.error("layers= is empty; expected one or more layer indices")
    sizes = {shapes[j][1:] for j in layers}
    if len(sizes) > 1:
        found = ", ".join(f"layer {j}: {shapes[j][2]}x{shapes[j][1]}" for j in layers)
        raise opt.error(f"concatenates outputs of different spatial sizes ({found}); expected equal sizes")
    c = sum(shapes[j][0] for j in layers)
    return LayerSpec(i, "route", opt.where(), shapes[layers[0]], (c,) + shapes[layers[0]][1:], sources=tuple(layers),
                     size=" ".join(str(j) for j in layers), options=dict(index=i))


def _plan_reorg(opt: _Options, i: int, inp: Shape, shapes: list) -> LayerSpec:
    c, h, w = inp
    s = opt.integer("stride")
    if s < 1 or h % s or w % s:
        raise opt.error(f"reorg stride {s} must divide the input size, found {w}x{h}x{c}")
    return LayerSpec(i, "reorg", opt.where(), inp, (c * s * s, h // s, w // s), size=f"/ {s}",
                     options=dict(stride=s, index=i))


def _plan_shortcut(opt: _Options, i: int, inp: Shape, shapes: list) -> LayerSpec:
    j = _resolve(opt, i, opt.integer("from"), shapes)
    if i == 0 or shapes[j] != shapes[i - 1]:
        found = shapes[j] if i else None
        raise opt.error(f"adds layer {j} {found} to layer {i - 1} {inp}; expected equal shapes")
    return LayerSpec(i, "shortcut", opt.where(), inp, inp, sources=(j, i - 1), size=str(j),
                     options=dict(activation=_activation_name(opt), index=i))


def _plan_upsample(opt: _Options, i: int, inp: Shape, shapes: list) -> LayerSpec:
    s = opt.integer("stride", 2)
    if s < 1:
        raise opt.error(f"stride must be >= 1, found {s}")
    return LayerSpec(i, "upsample", opt.where(), inp, (inp[0], inp[1] * s, inp[2] * s), size=f"* {s}",
                     options=dict(stride=s))


def _plan_connected(opt: _Options, i: int, inp: Shape, shapes: list) -> LayerSpec:
    # D28 (fixed): the input size is C*H*W (darknet semantics), not the channel count
    n_in, n_out = inp[0] * inp[1] * inp[2], opt.integer("output")
    if opt.integer("batch_normalize", 0):
        raise opt.error("batch_normalize=1 on a connected layer is not supported")
    return LayerSpec(i, "connected", opt.where(), inp, (n_out, 1, 1), filters=n_out,
                     params=n_in * n_out + n_out, stored=n_in * n_out + n_out, flops=2 * n_in * n_out,
                     options=dict(inputs=n_in, output=n_out, activation=_activation_name(opt)))


def _plan_passthrough(opt: _Options, i: int, inp: Shape, shapes: list) -> LayerSpec:
    """softmax, cost, region: same shape out as in."""
    return LayerSpec(i, opt.block["type"], opt.where(), inp, inp)


_PLANNERS = {"convolutional": _plan_convolutional, "maxpool": _plan_maxpool, "avgpool": _plan_avgpool,
             "route": _plan_route, "reorg": _plan_reorg, "shortcut": _plan_shortcut,
             "upsample": _plan_upsample, "connected": _plan_connected, "softmax": _plan_passthrough,
             "cost": _plan_passthrough, "region": _plan_passthrough}


def plan_layers(blocks: list[dict], width: int | None = None, height: int | None = None) -> list[LayerSpec]:
    """One `LayerSpec` per layer (blocks[1:]) for an input of `width x height` (default: [net]).

    Raises `CfgError` naming file, line and layer for missing keys, bad values, routes to
    layers that do not exist, size mismatches and reorg strides that do not divide the input.
    """
    net = _Options(blocks[0], None)
    width = net.integer("width") if width is None else int(width)
    height = net.integer("height") if height is None else int(height)
    shape: Shape = (net.integer("channels", NET_HYPER_DEFAULTS["channels"]), height, width)
    if min(shape) < 1:
        raise net.error(f"width, height and channels must be >= 1, found {width}, {height}, {shape[0]}")
    specs, shapes = [], []
    for i, block in enumerate(blocks[1:]):
        kind = block["type"]
        opt = _Options(block, i)
        if kind not in _PLANNERS:
            raise opt.error(f"unknown layer type; expected one of {', '.join(LAYER_KINDS)}")
        spec = _PLANNERS[kind](opt, i, shape, shapes)
        if min(spec.out_shape) < 1:
            raise opt.error(f"output shape {spec.out_shape} (C, H, W) from input {shape}; every size must be >= 1")
        if spec.params > MAX_LAYER_PARAMS:
            raise opt.error(f"{spec.params:,d} parameters in one layer, more than {MAX_LAYER_PARAMS:,d}; "
                            f"check filters, size and output")
        specs.append(spec)
        shapes.append(spec.out_shape)
        shape = spec.out_shape
    return specs


def _fmt_shape(s: Shape | None) -> str:
    return "" if s is None else f"{s[2]:4d} x{s[1]:4d} x{s[0]:5d}"


def network_table(blocks: list[dict], width: int | None = None, height: int | None = None) -> str:
    """The design §1.4 layer table plus parameter and GFLOP columns (§14.2) and totals, as text."""
    specs = plan_layers(blocks, width, height)
    net = _Options(blocks[0], None)
    w = net.integer("width") if width is None else width
    h = net.integer("height") if height is None else height
    head = (f"{'layer':>5} {'type':<9}{'filters':>7}  {'size':<11}{'input':>19}  {'output':>19}"
            f"{'params':>12}{'GFLOP':>9}")
    lines = [head]
    for s in specs:
        name = SHORT_NAMES[s.kind]
        filters = f"{s.filters:7d}" if s.filters is not None and s.kind == "convolutional" else " " * 7
        if s.kind == "route":  # absolute indices, no input column (design §1.4)
            row = f"{s.index:5d} {name:<9}{'':>7}  {s.size:<11}{'':>19}->{_fmt_shape(s.out_shape):>19}"
        else:
            row = (f"{s.index:5d} {name:<9}{filters}  {s.size:<11}{_fmt_shape(s.in_shape):>19}"
                   f"->{_fmt_shape(s.out_shape):>19}")
        if s.params or s.flops:
            row += f"{s.params:12,d}{s.flops / 1e9:9.3f}"
        lines.append(row.rstrip())
    params, stored, flops = (sum(getattr(s, a) for s in specs) for a in ("params", "stored", "flops"))
    lines.append(f"total: {params:,d} trainable parameters, {stored:,d} stored floats "
                 f"({HEADER_BYTES + 4 * stored:,d} bytes as .weights), {flops / 1e9:.2f} GFLOP at {w} x {h}")
    return "\n".join(lines)


def print_cfg(blocks: list[dict], width: int | None = None, height: int | None = None, file=None) -> str:
    """Print `network_table(blocks, width, height)` (to stdout or `file`) and return it."""
    text = network_table(blocks, width, height)
    print(text, file=file or sys.stdout)
    return text


# ============================================================================================
# 3. Layer modules, one per darknet layer kind
# ============================================================================================

ACTIVATIONS = {
    "leaky": lambda: nn.LeakyReLU(LEAKY_SLOPE, inplace=True),  # design §1.2: slope 0.1
    "relu": lambda: nn.ReLU(inplace=True),
    "linear": nn.Identity,
    "logistic": nn.Sigmoid,  # darknet-C name; no cfg here uses it
}


class ConvBNAct(nn.Sequential):
    """`[convolutional]`: Conv2d (no bias when BN) -> BatchNorm2d(eps 1e-4) -> activation.

    (B, in_channels, H, W) -> (B, filters, H', W'), H' = (H + 2*padding - size)//stride + 1.
    Children are named `conv`, `bn` (only with batch_normalize) and `act`.
    """

    def __init__(self, in_channels, filters, size, stride, padding, groups, batch_normalize, activation):
        layers = {"conv": nn.Conv2d(in_channels, filters, size, stride, padding, groups=groups,
                                    bias=not batch_normalize)}
        if batch_normalize:
            layers["bn"] = nn.BatchNorm2d(filters, eps=BN_EPS, momentum=BN_MOMENTUM)
        layers["act"] = ACTIVATIONS[activation]()
        super().__init__(OrderedDict(layers))

    def weight_tensors(self) -> list[torch.Tensor]:
        """The tensors in `.weights` order (design §2.1): BN beta, gamma, mean, var, then conv
        weights (OIHW); without BN the conv bias, then weights."""
        if "bn" in self._modules:
            bn = self.bn
            return [bn.bias, bn.weight, bn.running_mean, bn.running_var, self.conv.weight]
        return [self.conv.bias, self.conv.weight]

    def fused(self) -> nn.Sequential:
        """An inference copy with BN folded into the conv (eval statistics): conv(+bias) -> act."""
        conv = fold_batchnorm(self.conv, self.bn) if "bn" in self._modules else copy.deepcopy(self.conv)
        return nn.Sequential(*[conv, copy.deepcopy(self.act)])


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Conv2d equal to `bn(conv(x))` in eval mode: w' = w*g/sqrt(var+eps), b' = beta + (b-mean)*g/sqrt(var+eps)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused


class MaxPoolStride1(nn.Module):
    """`[maxpool] stride=1` (design §1.2): replicate-pad right and bottom by 1, then 2x2 max, stride 1.
    (B, C, H, W) -> (B, C, H, W)."""

    def forward(self, x):
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)


class GlobalAvgPool(nn.Module):
    """`[avgpool]`: (B, C, H, W) -> (B, C, 1, 1). (The reference returns (B, C); D29.)"""

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


class Reorg(nn.Module):
    """`[reorg]` space-to-depth with the reference's channel order (design §1.2, D37):

        out[b, (dy*s + dx)*C + c, i, j] = x[b, c, s*i + dy, s*j + dx]

    (B, C, H, W) -> (B, s*s*C, H/s, W/s). Not `pixel_unshuffle` (which gives c*s*s + dy*s + dx).
    """

    def __init__(self, stride: int, index: int = -1):
        super().__init__()
        self.stride, self.index = stride, index

    def forward(self, x):
        b, c, h, w = x.shape
        s = self.stride
        if h % s or w % s:
            raise ValueError(f"reorg layer {self.index}: input {w}x{h} (W x H) is not divisible by stride {s}; "
                             f"use an input size that is a multiple of {OUTPUT_STRIDE}")
        x = x.reshape(b, c, h // s, s, w // s, s)        # b, c, i, dy, j, dx
        x = x.permute(0, 3, 5, 1, 2, 4)                  # b, dy, dx, c, i, j
        return x.reshape(b, s * s * c, h // s, w // s)

    def extra_repr(self):
        return f"stride={self.stride}"


class Route(nn.Module):
    """`[route]`: the listed layers' outputs concatenated along channels, in the listed order.
    `sources` are absolute layer indices (design §1.2: route layers concatenate in the listed order)."""

    def __init__(self, sources: tuple, index: int = -1):
        super().__init__()
        self.sources, self.index = tuple(sources), index

    def forward(self, *xs):
        if len(xs) == 1:
            return xs[0]
        if len({x.shape[2:] for x in xs}) > 1:
            found = ", ".join(f"layer {j}: {tuple(x.shape[2:])}" for j, x in zip(self.sources, xs))
            raise ValueError(f"route layer {self.index}: spatial sizes differ ({found}); expected equal sizes")
        return torch.cat(xs, 1)

    def extra_repr(self):
        return f"sources={self.sources}"


class Shortcut(nn.Module):
    """`[shortcut]`: act(output of layer `from` + output of the previous layer); shapes equal."""

    def __init__(self, sources: tuple, activation: str, index: int = -1):
        super().__init__()
        self.sources, self.index = tuple(sources), index
        self.act = ACTIVATIONS[activation]()

    def forward(self, a, b):
        return self.act(a + b)


class Upsample(nn.Module):
    """`[upsample]` (fork): nearest-neighbour, (B, C, H, W) -> (B, C, s*H, s*W)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class Connected(nn.Module):
    """`[connected]`: flatten (B, C, H, W) to (B, C*H*W), Linear, activation -> (B, output, 1, 1)."""

    def __init__(self, inputs: int, output: int, activation: str):
        super().__init__()
        self.linear = nn.Linear(inputs, output)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x):
        return self.act(self.linear(x.flatten(1)))[:, :, None, None]

    def weight_tensors(self) -> list[torch.Tensor]:
        """`.weights` order (design §2.1 item 4): bias, then weight (output x input)."""
        return [self.linear.bias, self.linear.weight]


class Softmax(nn.Module):
    """`[softmax]`: softmax over channels."""

    def forward(self, x):
        return F.softmax(x, dim=1)


class Skipped(nn.Identity):
    """`[region]` and `[cost]`: nothing happens in forward (design §1.3); the loss lives outside."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def extra_repr(self):
        return self.kind


_BUILDERS = {
    "convolutional": lambda o: ConvBNAct(**o),
    "maxpool": lambda o: MaxPoolStride1() if o["stride"] == 1 else nn.MaxPool2d(o["size"], o["stride"]),
    "avgpool": lambda o: GlobalAvgPool(),
    "reorg": lambda o: Reorg(o["stride"], o["index"]),
    "upsample": lambda o: Upsample(o["stride"]),
    "connected": lambda o: Connected(**o),
    "softmax": lambda o: Softmax(),
    "cost": lambda o: Skipped("cost"),
    "region": lambda o: Skipped("region"),
}


def build_layer(spec: LayerSpec) -> nn.Module:
    """The module for one planned layer."""
    if spec.kind == "route":
        return Route(spec.sources, spec.index)
    if spec.kind == "shortcut":
        return Shortcut(spec.sources, spec.options["activation"], spec.index)
    return _BUILDERS[spec.kind](spec.options)


# ============================================================================================
# 4. The network
# ============================================================================================

class Darknet(nn.Module):
    """A darknet network built from a `.cfg` (a path, or blocks from `parse_cfg`).

    `forward(x)`: x (B, channels, H, W), H and W multiples of 32 -> the raw output of the last layer
    before `[region]`, (B, A*(2K+1+C), H/32, W/32) for the pose cfgs; no activation is applied.
    """

    def __init__(self, cfgfile):
        super().__init__()
        if isinstance(cfgfile, (list, tuple)):
            self.cfgfile, self.blocks = None, [dict(b) for b in cfgfile]
        else:
            self.cfgfile, self.blocks = str(cfgfile), parse_cfg(cfgfile)
        self._read_net(_Options(self.blocks[0], None))
        self.specs = plan_layers(self.blocks)
        self.models = nn.ModuleList(build_layer(s) for s in self.specs)
        self._read_region()
        self._plan_forward()
        self.seen = 0
        self.header = np.zeros(HEADER_INT32S, dtype=np.int32)
        self.fused = False
        last = self.specs[self._last_output_layer()].out_shape if self.specs else (0, 0, 0)
        self.output_stride = self.width // last[2] if last[2] else 0

    # -- configuration --------------------------------------------------------------------

    def _read_net(self, o: _Options) -> None:
        self.width, self.height = o.integer("width"), o.integer("height")
        self.channels = o.integer("channels", NET_HYPER_DEFAULTS["channels"])
        self.test_width = o.integer("test_width", self.width)  # design §1.2 defaults
        self.test_height = o.integer("test_height", self.height)
        self.num_keypoints = o.integer("num_keypoints", NET_DEFAULTS["num_keypoints"])
        self.max_epochs = o.integer("max_epochs", NET_DEFAULTS["max_epochs"])
        self.conf_thresh = o.number("conf_thresh", NET_DEFAULTS["conf_thresh"])
        steps, scales = o.numbers("steps", []), o.numbers("scales", [])
        if len(steps) != len(scales):
            raise o.error(f"steps has {len(steps)} values but scales has {len(scales)}; expected equal lengths")
        self.net = {
            "batch": o.integer("batch", NET_HYPER_DEFAULTS["batch"]),
            "subdivisions": o.integer("subdivisions", NET_HYPER_DEFAULTS["subdivisions"]),
            "learning_rate": o.number("learning_rate", NET_HYPER_DEFAULTS["learning_rate"]),
            "momentum": o.number("momentum", NET_HYPER_DEFAULTS["momentum"]),
            "decay": o.number("decay", NET_HYPER_DEFAULTS["decay"]),
            "max_batches": o.integer("max_batches", NET_HYPER_DEFAULTS["max_batches"]),
            "steps": [int(s) if s.is_integer() else s for s in steps],
            "scales": scales,
            "width": self.width, "height": self.height, "channels": self.channels,
            "test_width": self.test_width, "test_height": self.test_height,
            "num_keypoints": self.num_keypoints, "max_epochs": self.max_epochs, "conf_thresh": self.conf_thresh,
        }

    def _read_region(self) -> None:
        """`region` dict and the anchor attributes from the last [region] block (design §1.2)."""
        regions = [(i, b) for i, b in enumerate(self.blocks[1:]) if b["type"] == "region"]
        i, block = regions[-1] if regions else (None, {"type": "region"})
        o = _Options(block, i)
        anchors = o.numbers("anchors", [])
        num = o.integer("num", 1)
        if num < 1 or (anchors and len(anchors) % num):
            raise o.error(f"{len(anchors)} anchor values do not split into num={num} anchors")
        self.anchors, self.num_anchors = anchors, num
        self.anchor_step = len(anchors) // num
        self.num_classes = o.integer("classes", 1)
        self.region = {"anchors": anchors, "num_anchors": num, "anchor_step": self.anchor_step,
                       "num_classes": self.num_classes}
        for key, default in REGION_DEFAULTS.items():
            self.region[key] = o.number(key, default)

    @property
    def loss(self):
        """The `[region]` loss as the original exposed it (`region_loss = model.loss` in the fork's
        train.py): a RegionLoss with the cfg's scales (design §5.6), built on first use and kept
        outside the module tree so it never enters `state_dict()` or `.weights`."""
        cached = self.__dict__.get("_region_loss")
        if cached is None:
            from region_loss import RegionLoss  # here: building a network needs no loss (nor utils' cv2, scipy)
            cached = RegionLoss.from_region(self.region, self.num_keypoints, scales="cfg")
            self.__dict__["_region_loss"] = cached
        return cached

    def _plan_forward(self) -> None:
        """Which outputs to keep for later routes/shortcuts, and when to drop them."""
        self._sources = [s.sources for s in self.specs]
        self._skip = [s.kind in ("region", "cost") for s in self.specs]
        last_use: dict[int, int] = {}
        for s in self.specs:
            for j in s.sources or ():
                last_use[j] = s.index
        self._keep = frozenset(last_use)
        self._free = [[j for j, last in last_use.items() if last == i] for i in range(len(self.specs))]

    def _last_output_layer(self) -> int:
        i = len(self.specs) - 1
        while i > 0 and self._skip[i]:
            i -= 1
        return i

    # -- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, channels, H, W) -> raw output of the last non-region layer, e.g. (B, 20, H/32, W/32)."""
        saved: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.models):
            if not self._skip[i]:
                sources = self._sources[i]
                x = layer(x) if sources is None else layer(*[saved[j] for j in sources])
            if i in self._keep:
                saved[i] = x
            for j in self._free[i]:
                del saved[j]
        return x

    # -- reporting --------------------------------------------------------------------------

    def network_table(self, width: int | None = None, height: int | None = None) -> str:
        """The layer table (design §1.4 + params and GFLOP, §14.2) at `width x height` (default: cfg)."""
        return network_table(self.blocks, width, height)

    def print_network(self, width: int | None = None, height: int | None = None, file=None) -> str:
        """Print the layer table (stdout or `file`) and return it."""
        return print_cfg(self.blocks, width, height, file)

    @property
    def output_channels(self) -> int:
        """Channels of `forward`'s output: the last layer before `[region]` (A*(2K+1+C) for a pose head)."""
        return self.specs[self._last_output_layer()].out_shape[0]

    def num_stored_floats(self) -> int:
        """float32 values a full `.weights` file holds for this cfg (design §1.5)."""
        return sum(s.stored for s in self.specs)

    def gflops(self, width: int | None = None, height: int | None = None) -> float:
        """GFLOP (multiply-accumulates x 2) per image at `width x height` (design §14.2)."""
        return sum(s.flops for s in plan_layers(self.blocks, width, height)) / 1e9

    # -- inference ---------------------------------------------------------------------------

    def fuse(self) -> Darknet:
        """An eval-mode copy with every BatchNorm folded into its convolution (design §14 addition).

        Outputs equal the unfused eval model's up to float rounding. The copy refuses
        `.weights` I/O (`fused` is True); keep the original for that.
        """
        model = copy.deepcopy(self).eval()
        for i, layer in enumerate(model.models):
            if isinstance(layer, ConvBNAct):
                model.models[i] = layer.fused()
        model.fused = True
        return model

    def inference_copy(self, channels_last: bool = True) -> Darknet:
        """What every test-time forward runs (valid.py, detect.py, the evaluations during training,
        the distillation teacher): `fuse()`, gradients off, channels-last (D57). Several times faster
        than the eager training model on a CPU; outputs equal its eval-mode outputs to float rounding.
        Call it again after the weights change (it is a copy)."""
        model = self.fuse()
        model.requires_grad_(False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # -- .weights I/O (design §2) ---------------------------------------------------------------

    def _param_layers(self, stop: int) -> list[tuple[int, list[torch.Tensor]]]:
        if self.fused:
            raise RuntimeError("this Darknet was fused (BatchNorm folded into convs); darknet .weights I/O "
                               "needs the unfused model: load/save on the original, then call fuse()")
        return [(i, self.models[i].weight_tensors()) for i in range(min(stop, len(self.models)))
                if hasattr(self.models[i], "weight_tensors")]

    def load_weights(self, weightfile, allow_partial: bool = False) -> WeightsLoad:
        """Load a darknet `.weights` file into every layer (design §2.2); return what was read.

        The file must fill every layer with weights. A shorter file that ends at a layer boundary
        (a cutoff file such as `darknet19_448.conv.23`) loads only with `allow_partial=True`; the
        layers after it keep their values. Raises WeightsError, before the model is modified, for
        a file ending inside a layer, floats left after the last layer (e.g. a 125-filter VOC
        head read into a 20-filter pose head), a header-only file, or values that cannot be this
        network's (see `plan_weights_load`).
        """
        return self._load(weightfile, until_last=False, allow_partial=allow_partial)

    def load_weights_until_last(self, weightfile, allow_partial: bool = False) -> WeightsLoad:
        """Like `load_weights` but never loads the last two sections (the output conv and
        `[region]`, design §2.2): how VOC/ImageNet backbones initialise a pose network. The file
        may hold one more convolution after the backbone (any filter count: the head it was
        trained with); more floats than that mean another network."""
        return self._load(weightfile, until_last=True, allow_partial=allow_partial)

    def check_weights(self, weightfile, until_last: bool = False, allow_partial: bool = False) -> WeightsLoad:
        """Check `weightfile` against this network as `load_weights` (or, with `until_last`,
        `load_weights_until_last`) would, without changing the model; return what it would read.

        Raises WeightsError naming the file, the floats expected and found, when
          - the file ends inside a layer;
          - it fills fewer layers than the network has (a header-only file, a cutoff file)
            and not `allow_partial`;
          - floats are left after the last layer (full load), or, with `until_last`, more than
            one convolution over the backbone's output channels would hold;
          - a value it puts into the model is NaN or inf, or a BatchNorm running variance is
            negative: the file was written for another layout (e.g. trial 10, without BN,
            read into trial 3, with BN).
        """
        return self._plan_load(weightfile, until_last, allow_partial)[0]

    def _plan_load(self, weightfile, until_last: bool, allow_partial: bool):
        """(WeightsLoad, [(tensors, offset)] of the layers to fill, float payload, header); see `check_weights`."""
        stop = len(self.models) - 2 if until_last else len(self.models)
        layers = self._param_layers(stop)
        header, seen, floats = read_weights_file(weightfile)
        need_total = sum(t.numel() for _, ts in layers for t in ts)
        plan, start, last = [], 0, None
        for i, tensors in layers:
            if start >= floats.size:  # design §2.2: a cutoff file simply ends here
                break
            need = sum(t.numel() for t in tensors)
            if start + need > floats.size:
                raise WeightsError(f"{weightfile}: the file ends inside layer {i} ({self.specs[i].kind}): "
                                   f"expected {need} floats, found {floats.size - start}")
            plan.append((i, tensors, start))
            last = (i, need, start)
            start += need
        if start < need_total and not allow_partial:
            filled = f"fills layers 0..{last[0]} only" if last else "fills no layer"
            raise WeightsError(
                f"{weightfile}: {floats.size} floats after the header; {'the backbone of ' if until_last else ''}"
                f"{self.cfgfile or 'this network'} needs {need_total} ({filled}). "
                f"A header-only, truncated or cutoff file; load it with allow_partial=True "
                f"if a partial load is what you want")
        left = floats.size - start
        if left and not until_last:
            if last is None:
                raise WeightsError(f"{weightfile}: {floats.size} floats but the cfg has no layers with weights")
            i, need, at = last
            raise WeightsError(
                f"{weightfile}: {left} floats left unread after layer {i} "
                f"({self.specs[i].kind}), the last layer with weights: expected {need} floats from that layer "
                f"to the end of the file, found {floats.size - at}. The file was written for a different "
                f"cfg (e.g. a VOC head); use load_weights_until_last to load only the backbone")
        if left and until_last:  # floats are left only when every backbone layer was filled
            self._check_head_floats(weightfile, left, need_total)
        self._check_loaded_values(weightfile, plan, floats)
        report = WeightsLoad(str(weightfile), floats.size, start, [i for i, _, _ in plan], len(layers), seen)
        return report, [(tensors, at) for _, tensors, at in plan], floats, header

    def _check_head_floats(self, weightfile, left: int, used: int) -> None:
        """With until_last, the floats after the backbone must be one conv over the head's input."""
        head = next((s for s in reversed(self.specs) if s.kind not in ("region", "cost")), None)
        if head is None or head.kind != "convolutional":
            return
        c = head.in_shape[0]
        sizes = [per for k in (1, 3) for per in (c * k * k + 1, c * k * k + 4)]  # bias or BN, 1x1 or 3x3
        if any(left % per == 0 for per in sizes):
            return
        raise WeightsError(
            f"{weightfile}: {left} floats remain after the {used} of the backbone; expected one output "
            f"convolution over its {c} channels (a multiple of {c + 1}, e.g. {125 * (c + 1)} for a 125-filter "
            f"VOC head). The file was written for another network (e.g. with or without BatchNorm)")

    def _check_loaded_values(self, weightfile, plan, floats: np.ndarray) -> None:
        for i, tensors, at in plan:
            chunk = floats[at:at + sum(t.numel() for t in tensors)]
            if not np.all(np.isfinite(chunk)):
                raise WeightsError(f"{weightfile}: layer {i} ({self.specs[i].kind}) would get "
                                   f"{int(np.sum(~np.isfinite(chunk)))} NaN or inf values; expected finite weights")
            layer = self.models[i]
            if "bn" in getattr(layer, "_modules", {}):
                n = layer.bn.num_features
                var = chunk[3 * n:4 * n]  # beta, gamma, mean, var (design §2.1)
                if np.any(var < 0):
                    raise WeightsError(
                        f"{weightfile}: layer {i} (convolutional, BatchNorm) would get {int(np.sum(var < 0))} "
                        f"negative running variances: the file was written for another network (e.g. one "
                        f"without BatchNorm, like trial 10 read into trial 3)")

    def _load(self, weightfile, until_last: bool, allow_partial: bool) -> WeightsLoad:
        report, plan, floats, header = self._plan_load(weightfile, until_last, allow_partial)
        if plan:
            device = plan[0][0][0].device
            buf = torch.from_numpy(floats[:report.floats_read]).to(device)
            with torch.no_grad():
                for tensors, at in plan:
                    for t in tensors:
                        t.copy_(buf[at:at + t.numel()].view_as(t))
                        at += t.numel()
        self.header, self.seen = header, report.seen
        return report

    def weights_payload(self, cutoff: int = 0) -> np.ndarray:
        """The float32 values `save_weights(cutoff)` writes after the header, in file order
        (design §2.1): layers 0..cutoff-1, all layers when cutoff <= 0."""
        stop = len(self.models) if cutoff <= 0 else cutoff
        tensors = [t for _, ts in self._param_layers(stop) for t in ts]
        if not tensors:
            return np.zeros(0, np.float32)
        return torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in tensors]).numpy()

    def weights_header(self) -> tuple[int, int, int, int]:
        """The header `save_weights` writes: the loaded `[major, minor, revision]` (default 0, 0, 0)
        and `seen` (design §2.3); a version >= 0.2 is written as 0.1 so that the 16-byte header
        (32-bit seen) stays self-consistent for darknet-C readers too."""
        major, minor, revision = (int(v) for v in self.header[:3])
        if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
            major, minor = 0, 1
        seen = int(self.seen)
        if seen > np.iinfo(np.int32).max:
            warnings.warn(f"seen={seen} does not fit the 32-bit header field; writing {np.iinfo(np.int32).max}",
                          stacklevel=2)
            seen = int(np.iinfo(np.int32).max)
        return major, minor, revision, seen

    def save_weights(self, weightfile, cutoff: int = 0) -> None:
        """Write a darknet `.weights` file (design §2.3) atomically: the 16-byte `weights_header()`,
        then `weights_payload(cutoff)`."""
        write_weights_file(weightfile, self.weights_header(), self.weights_payload(cutoff))


@dataclass
class WeightsLoad:
    """What one `.weights` load read: `str()` is the one-line summary a script prints.

    floats_in_file: float32 values after the header; floats_read: those copied into the model;
    layers: indices of the layers filled; layers_total: layers with weights the load covers.
    """
    path: str
    floats_in_file: int
    floats_read: int
    layers: list
    layers_total: int
    seen: int

    @property
    def partial(self) -> bool:
        return len(self.layers) < self.layers_total

    def __str__(self) -> str:
        span = f"layers {self.layers[0]}..{self.layers[-1]}" if self.layers else "no layer"
        text = (f"{self.path}: read {self.floats_read:,d} of {self.floats_in_file:,d} floats into {span} "
                f"({len(self.layers)} of {self.layers_total} layers with weights)")
        if self.floats_in_file > self.floats_read:
            text += f"; {self.floats_in_file - self.floats_read:,d} floats of the file's own head not used"
        if self.partial:
            text += "; the other layers keep their initial values (partial load)"
        return text


# ============================================================================================
# 5. The .weights file (design §2.1)
# ============================================================================================

def read_weights_file(path) -> tuple[np.ndarray, int, np.ndarray]:
    """Read a darknet `.weights` file -> (header int32[4], seen, float32 payload).

    The header is 4 x int32 `[major, minor, revision, seen]`, except that `seen` is uint64 (a
    20-byte header) when `major*10 + minor >= 2` and both are < 1000 (darknet-C, design §2.1).
    The returned header always has 4 int32 with seen (clipped to int32) in [3]. Raises
    WeightsError naming the file when it cannot be read, is shorter than its header, or its
    payload is not a whole number of float32 values.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the weights file ({exc.strerror or exc})") from exc
    if data.size < HEADER_BYTES:
        raise WeightsError(f"{path}: {data.size} bytes; a .weights header needs at least {HEADER_BYTES} bytes")
    major, minor, revision, seen32 = (int(v) for v in data[:HEADER_BYTES].view("<i4"))
    if major * 10 + minor >= 2 and 0 <= major < 1000 and 0 <= minor < 1000:
        if data.size < HEADER_BYTES_SEEN64:
            raise WeightsError(f"{path}: version {major}.{minor} has a {HEADER_BYTES_SEEN64}-byte header "
                             f"(64-bit seen) but the file has {data.size} bytes")
        seen, offset = int(data[12:20].view("<u8")[0]), HEADER_BYTES_SEEN64
    else:
        seen, offset = seen32, HEADER_BYTES
    payload = data[offset:]
    if payload.size % 4:
        raise WeightsError(f"{path}: {payload.size} bytes after the {offset}-byte header is not a whole number "
                         f"of float32 values")
    header = np.array([major, minor, revision, min(seen, np.iinfo(np.int32).max)], dtype=np.int32)
    return header, seen, payload.view("<f4")


def write_weights_file(path, header, floats: np.ndarray) -> None:
    """Write 4 x int32 `header` then `floats` as little-endian float32, atomically (linemod_format.atomic_write)."""
    header = np.asarray(header, dtype=np.int64)
    info = np.iinfo(np.int32)
    if header.shape != (HEADER_INT32S,) or header.min() < info.min or header.max() > info.max:
        raise ValueError(f"{path}: header {header.tolist()} must be 4 values that fit int32")
    with atomic_write(path, "wb") as f:
        f.write(header.astype("<i4").tobytes())
        f.write(np.ascontiguousarray(floats, dtype="<f4").tobytes())
