"""The project's error types: every bad input a user can give ends in one of these.

Each message names the file (and the line, key or entry) and what is wrong. Command-line scripts
run their `main` through `run_cli`, which prints the message and exits with status 2, the same
for every script, instead of a traceback.
"""
from __future__ import annotations

import sys
import warnings
from collections.abc import Callable


class InputError(ValueError):
    """Bad user input (a file, a flag, a value): the message says which and what is wrong."""


class FlagError(InputError):
    """A command-line flag with a value no file can fix: a size that is not a multiple of 32, a flag given twice."""


class CfgError(InputError):
    """A malformed network `.cfg`: names the file, the line and (if known) the layer."""


class DataCfgError(InputError):
    """A malformed `.data` file: names the file and the key or line."""


class LabelError(InputError):
    """A malformed label file: names the file, the row and what is wrong."""


class LayoutError(InputError):
    """A path or list that does not fit the LINEMOD layout: an empty image list, a mask path that is the image."""


class PoseFileError(InputError):
    """A pose file (JSON / CSV) with a missing field, a non-number, a non-finite value or a non-rotation."""


class MeshError(InputError):
    """A mesh file that is missing, not a PLY, or lacks usable vertex coordinates."""


class WeightsError(InputError):
    """A darknet `.weights` file that is truncated, too long, or does not fit the network."""


class CheckpointError(InputError):
    """A training checkpoint that cannot be read safely or belongs to another run."""


class OverwriteError(InputError):
    """A command would replace or remove a file it did not write, one of its own inputs, or (without
    --overwrite) its own earlier output; or a folder is in use by another run. Names every file."""


EXIT_BAD_INPUT = 2


def run_cli(main: Callable, argv=None, prog: str | None = None):
    """Run `main(argv)`; an InputError becomes one clean message on stderr and exit status 2.

    While `main` runs, warnings print as one line, `<prog>: warning: <message>`, without the
    source line Python adds by default.
    """
    name = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "ssp")

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"{name}: warning: {message}", file=file or sys.stderr)

    saved = warnings.showwarning
    warnings.showwarning = one_line
    try:
        return main(argv)
    except InputError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    finally:
        warnings.showwarning = saved
