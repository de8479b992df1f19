"""What a trained model needs at test time besides its `.weights`: the input size, box rule and input
filter it was trained and selected with (docs/design.md D56, D69).

train.py writes `model_info.json` into the backup folder, beside `model.weights` and `last.weights`:

    {"format": 1, "modelcfg": "cfg/yolo-lite-trial3-pose.cfg", "cfg_sha256": "...",
     "test_size": 256, "box_rule": "vote", "input_filter": "none"}

valid.py and detect.py read it (from the folder of `--weightfile`) for the defaults of `--test-size`,
`--box-rule` and `--input-filter` (a file without input_filter, from before D69, means none); a flag
given on the command line always wins. A file written for another cfg,
or one that cannot be read, gives a one-line warning naming it, and the cfg's own defaults apply.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import NamedTuple

from cli import MAX_SIZE, STRIDE
from image import parse_input_filter
from linemod_format import write_text
from utils import BOX_RULES

INFO_FILE = "model_info.json"
INFO_FORMAT = 1
FALLBACK = "using the cfg's test size, the max box rule and no input filter"


def cfg_digest(modelcfg) -> str:
    """sha256 of the cfg file's bytes: two cfgs that build the same network text match."""
    return hashlib.sha256(Path(modelcfg).read_bytes()).hexdigest()


class TestSettings(NamedTuple):
    """How a model is tested: the network input (width, height), the box rule, the input filter."""
    size: tuple[int, int]
    box_rule: str
    input_filter: str


def write_info(folder, modelcfg, test_size: int, box_rule: str, input_filter: str = "none") -> Path:
    """Write `folder/model_info.json` (atomically) and return its path."""
    path = Path(folder) / INFO_FILE
    info = {"format": INFO_FORMAT, "modelcfg": str(modelcfg), "cfg_sha256": cfg_digest(modelcfg),
            "test_size": int(test_size), "box_rule": box_rule, "input_filter": input_filter}
    write_text(path, json.dumps(info, indent=1) + "\n")
    return path


def _problem(path: Path, info) -> str | None:
    """Why `info` (read from `path`) is unusable, or None."""
    if not isinstance(info, dict) or info.get("format") != INFO_FORMAT:
        return f"expected a JSON object with \"format\": {INFO_FORMAT}"
    size = info.get("test_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < STRIDE or size % STRIDE or size > MAX_SIZE:
        return f"test_size = {size!r} is out of range; expected a multiple of {STRIDE} from {STRIDE} to {MAX_SIZE}"
    if info.get("box_rule") not in BOX_RULES:
        return f"box_rule = {info.get('box_rule')!r}; expected one of {', '.join(BOX_RULES)}"
    in_filter = info.get("input_filter", "none")
    try:
        if not isinstance(in_filter, str):
            raise ValueError("expected a string")
        parse_input_filter(in_filter)
    except ValueError as exc:
        return f"input_filter = {in_filter!r}: {exc}"
    if not isinstance(info.get("cfg_sha256"), str):
        return "no cfg_sha256"
    return None


def read_info(weightfile, modelcfg) -> dict:
    """The `model_info.json` beside `weightfile`, if it was written for `modelcfg`: {'test_size',
    'box_rule', 'input_filter'}.

    Returns {} when there is no such file. A malformed file, or one written for another cfg,
    warns (one line naming it and what is wrong) and returns {}: the cfg's defaults then apply.
    """
    path = Path(weightfile).parent / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path}: not readable JSON ({exc}); {FALLBACK}", stacklevel=2)
        return {}
    problem = _problem(path, info)
    if problem is None and info["cfg_sha256"] != cfg_digest(modelcfg):
        problem = f"written for {info.get('modelcfg')}, not {modelcfg}"
    if problem:
        warnings.warn(f"{path}: {problem}; {FALLBACK}", stacklevel=2)
        return {}
    return {"test_size": info["test_size"], "box_rule": info["box_rule"],
            "input_filter": info.get("input_filter", "none")}


def resolve(args, weightfile, modelcfg, default_size: tuple[int, int]) -> TestSettings:
    """How to test: the flags if given, else model_info.json, else the cfg's size, 'max' and 'none'.
    `args` has `test_size`, `box_rule` and `input_filter` (None when not given)."""
    filter_flag = getattr(args, "input_filter", None)
    given = (args.test_size, args.box_rule, filter_flag)
    info = read_info(weightfile, modelcfg) if None in given else {}
    size = args.test_size or info.get("test_size")
    rule = args.box_rule or info.get("box_rule") or BOX_RULES[0]
    in_filter = filter_flag or info.get("input_filter") or "none"
    return TestSettings((size, size) if size else tuple(default_size), rule, in_filter)
