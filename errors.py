"""The project's error types: every bad input a user can give ends in one of these.

Each message names the file (and the line, key or entry) and what is wrong. Command-line scripts
run their `main` through `run_cli`, which prints the message and exits with status 2, the same
for every script, instead of a traceback. The faults of the machine end the same way, one line
each: a full disk (status 1), Ctrl-C (`interrupted`, status 130), memory exhausted (status 1).
"""
from __future__ import annotations

import contextlib
import errno
import gc
import signal
import sys
import threading
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


class ImageError(InputError):
    """An image or mask that cannot be used: not a regular file, undecodable, larger than the pixel
    cap, 16-bit, EXIF-rotated, or of another size than its `.data` file or its image says."""


class OutputPathError(InputError):
    """An output path that cannot be written: a folder where a file goes (or a file where a folder
    goes), or a read-only or full file system. Checked before the work starts."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf (engine.Trainer); the message names the epoch and the
    batch, and the checkpoint that is kept. run_cli ends the script with status 1."""


class OverwriteError(InputError):
    """A command would replace or remove a file it did not write, one of its own inputs, or (without
    --overwrite) its own earlier output; or a folder is in use by another run. Names every file."""


EXIT_BAD_INPUT = 2
EXIT_FAULT = 1  # the machine, not the input: a full disk, an I/O error, memory exhausted
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
FAULT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM})
# torch.utils.data re-raises a worker's exception with the worker's whole traceback in its message
WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def one_line(exc: BaseException) -> str:
    """The message of `exc`; for an exception a DataLoader worker raised, the message it carried
    (the worker's traceback, which torch puts in front of it, dropped)."""
    text = str(exc)
    if WORKER_TRACEBACK not in text:
        return text
    cls = type(exc)
    for name in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__):
        at = text.rfind(f"\n{name}: ")
        if at >= 0:
            return text[at + len(name) + 3:].rstrip()
    return text.rstrip().rsplit("\n", 1)[-1]


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the file, what went wrong and, for a full disk, what to do."""
    if exc.errno is None:  # raised with a message of ours (e.g. 'x.jpg: image not found')
        return one_line(exc)
    what = exc.strerror or str(exc)
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    text = f"{where}: {what}" if where else what
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (the file system is full: free some space and run again; a training run continues with --resume)"
    return text


def exit_status(exc: OSError) -> int:
    """EXIT_FAULT for a fault of the machine (a full disk, an I/O error), else EXIT_BAD_INPUT."""
    return EXIT_FAULT if exc.errno in FAULT_ERRNOS else EXIT_BAD_INPUT


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and a `kill` or a scheduler ending the job


@contextlib.contextmanager
def deferred_interrupts():
    """Hold Ctrl-C and SIGTERM back while the block runs (a clean-up that saves a file): a signal
    that arrives meanwhile is raised again when the block ends, so a second Ctrl-C never stops a
    clean-up halfway. Python runs signal handlers in the main thread only, so outside it (where
    no handler can interrupt the block) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    old = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])  # delivered now, to the handler the block found


def start_iteration(iterable):
    """iter(iterable) with Ctrl-C and SIGTERM held back until it returns (see deferred_interrupts).

    A DataLoader with workers forks them here: a KeyboardInterrupt raised inside a fork hook is
    printed as 'Exception ignored' and swallowed (the run went on, deaf to Ctrl-C), and one raised
    halfway through the iterator's constructor left an object whose finaliser failed at exit."""
    with deferred_interrupts():
        return iter(iterable)


def ignore_interrupts() -> None:
    """Ignore Ctrl-C and SIGTERM from now on: the process is ending after an interruption, and a
    second Ctrl-C must not interrupt the interpreter's own clean-up (data-loader workers, exit
    handlers) with a traceback."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def run_cli(main: Callable, argv=None, prog: str | None = None):
    """Run `main(argv)`; an InputError becomes one clean message on stderr and exit status 2.

    The other ways a run ends early are one line too: an OSError (a missing file: status 2; a
    full disk or an I/O error: status 1), Ctrl-C (`<prog>: interrupted`, status 130) and
    MemoryError (status 1). An error a DataLoader worker raised prints the message it carried,
    without the worker's traceback. While `main` runs, warnings print as one line,
    `<prog>: warning: <message>`, without the source line Python adds by default.
    """
    name = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "ssp")

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{name}: warning: {message}", file=file or sys.stderr)

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        return main(argv)
    except InputError as exc:
        print(f"{name}: error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        ignore_interrupts()  # the script ends here: a second Ctrl-C must not break its exit
        print(f"{name}: interrupted", file=sys.stderr)
    except NonFiniteLoss as exc:
        print(f"{name}: error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_FAULT) from None
    except MemoryError:
        print(f"{name}: error: out of memory (a smaller --batch-size, --test-size or --workers needs less)",
              file=sys.stderr)
        raise SystemExit(EXIT_FAULT) from None
    except OSError as exc:
        print(f"{name}: error: {describe_os_error(exc)}", file=sys.stderr)
        raise SystemExit(exit_status(exc)) from None
    finally:
        warnings.showwarning = saved
    # interrupted: out of the except block, the run's frames (its data-loader workers, their shared
    # tensors) are released now, with Ctrl-C ignored, not while the interpreter shuts down
    gc.collect()
    raise SystemExit(EXIT_INTERRUPTED)
