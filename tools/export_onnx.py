"""Export a pose network (cfg + .weights) to ONNX, with dynamic batch and input size, and check it.

    python tools/export_onnx.py --modelcfg cfg/yolo-lite-trial3-pose.cfg \\
        --weightfile weights/tiny-yolov2-trial3-voc.weights --until-last --out-file runs/trial3.onnx

The exported graph is the network's forward (raw output, design §4; decoding and PnP stay in
Python). BatchNorm is folded into the convolutions first (`--no-fuse` keeps it). After export the
model is run with onnxruntime on random inputs at two batch sizes and two input sizes and
compared with PyTorch: the largest difference is printed, and the tool fails (exit 1) above
--tolerance (1e-4).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from darknet import Darknet
from errors import CfgError, FlagError, WeightsError, run_cli

TOLERANCE = 1e-4
OPSET = 18
# torch's exporter writes opset 18 and newer itself; an older one goes through ONNX's version
# converter, which fails on this network and leaves opset 18 in the file with a traceback printed
MIN_OPSET = OPSET
CHECK_SHAPES = ((1, 416, 416), (2, 320, 256))  # (batch, height, width): dynamic axes exercised


class ExportMismatch(RuntimeError):
    pass


def load(modelcfg, weightfile=None, until_last: bool = False, fuse: bool = True) -> Darknet:
    model = Darknet(modelcfg)
    if weightfile:
        (model.load_weights_until_last if until_last else model.load_weights)(weightfile)
    model.eval()
    return model.fuse() if fuse else model


def export(model: Darknet, out, opset: int = OPSET) -> Path:
    """Write `model` to `out` as ONNX with dynamic batch, height and width; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, model.channels, model.test_height, model.test_width)
    stride = model.output_stride or 32  # the input must stay a multiple of the output stride
    grid_h, grid_w = torch.export.Dim("grid_h", min=1, max=128), torch.export.Dim("grid_w", min=1, max=128)
    torch.onnx.export(model, (x,), str(out), input_names=["images"], output_names=["output"], opset_version=opset,
                      dynamo=True, external_data=False, verbose=False,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096),
                                            2: stride * grid_h, 3: stride * grid_w}})
    return out


def check(model: Darknet, onnx_path, shapes=CHECK_SHAPES, seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| over random inputs of `shapes` (batch, height, width)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for b, h, w in shapes:
        x = rng.random((b, model.channels, h, w), dtype=np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        got = session.run(["output"], {"images": x})[0]
        if got.shape != ref.shape:
            raise ExportMismatch(f"{onnx_path}: output shape {got.shape} for input {x.shape}; "
                                 f"PyTorch gives {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__)
    cli.add_model(p, cfg_required=True, weights="weightfile", weights_why="random initialisation")
    p.add_argument("--until-last", action="store_true", help="load the weights up to the last conv (a backbone)")
    cli.add_out(p, "file", what="the .onnx", why="runs/<cfg name>.onnx")
    cli.add_alias(p, "--out", "--out-file")  # --out is an output folder everywhere
    p.add_argument("--no-fuse", action="store_true", help="keep BatchNorm as separate nodes")
    p.add_argument("--opset", type=int, default=OPSET,
                   help=f"ONNX opset, {MIN_OPSET} or newer (the exporter's own; default {OPSET})")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="largest difference allowed between the ONNX and the PyTorch outputs (default %(default)g)")
    return p


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def written_opset(path) -> int:
    """The default-domain opset recorded in an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def check_flags(args) -> Path:
    """--opset and --tolerance in range and --out-file a writable file, before the export; returns --out-file."""
    cli.check_range("--opset", args.opset, MIN_OPSET, max_opset())
    if not args.tolerance > 0:
        raise FlagError(f"--tolerance must be positive, found {args.tolerance}")
    return cli.check_output_file("--out-file", args.out_file or f"runs/{Path(args.modelcfg).stem}.onnx")


def main(args) -> float:
    """Export and check; a bad cfg or weights file raises CfgError / WeightsError naming it, a bad
    flag (or a file written with another opset than --opset) FlagError / OutputPathError."""
    for path, what, error in ((args.modelcfg, "model cfg", CfgError), (args.weightfile, "weights", WeightsError)):
        if path and not Path(path).is_file():
            raise error(f"{what} not found: {path}")
    out = check_flags(args)
    model = load(args.modelcfg, args.weightfile, args.until_last, fuse=not args.no_fuse)
    out = export(model, out, args.opset)
    if written_opset(out) != args.opset:  # the exporter falls back to its own opset rather than fail
        raise FlagError(f"--opset {args.opset}: {out} was written with opset {written_opset(out)} instead")
    diff = check(model, out)
    print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB); onnxruntime vs PyTorch max |diff| = {diff:.2e} "
          f"over inputs {', '.join(f'{b}x3x{h}x{w}' for b, h, w in CHECK_SHAPES)}")
    if not diff <= args.tolerance:
        print(f"FAILED: difference {diff:.2e} above the tolerance {args.tolerance:.0e}", file=sys.stderr)
        raise SystemExit(1)
    return diff


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)))
