"""One error path for every script: our error types, a message naming the file, exit status 2."""
import errno
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from errors import (EXIT_BAD_INPUT, EXIT_FAULT, EXIT_INTERRUPTED, WORKER_TRACEBACK, DataCfgError, ImageError,
                    InputError, one_line, run_cli)

ROOT = Path(__file__).resolve().parents[1]
TRIAL3 = ROOT / "cfg" / "yolo-lite-trial3-pose.cfg"


def test_run_cli_turns_input_errors_into_one_line_and_status_2(capsys):
    def main(argv):
        warnings.warn("x.ply: the mesh is 300 m across", stacklevel=2)
        raise DataCfgError(f"a.data:3: expected 'key = value', found {argv!r}")

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["bad"], prog="tool.py")
    assert exit_.value.code == EXIT_BAD_INPUT == 2
    assert capsys.readouterr().err.splitlines() == [
        "tool.py: warning: x.ply: the mesh is 300 m across",
        "tool.py: error: a.data:3: expected 'key = value', found ['bad']"]
    assert run_cli(lambda argv: 7) == 7
    with pytest.raises(ZeroDivisionError):  # a bug is not bad input: the traceback stays
        run_cli(lambda argv: 1 / 0)


def _run(*argv, cwd):
    return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


def test_scripts_exit_2_without_a_traceback(tmp_path):
    """valid.py and detect.py on bad input: one message naming the file, status 2 (issue 16)."""
    bad_data = tmp_path / "bad.data"
    bad_data.write_text("valid = x.txt\nthis line has no equals sign\n")
    header_only = tmp_path / "header.weights"
    header_only.write_bytes(np.array([0, 1, 0, 0], "<i4").tobytes())
    runs = {
        "valid.py": (_run(ROOT / "valid.py", bad_data, TRIAL3, header_only, cwd=tmp_path),
                     f"{bad_data}:2: expected 'key = value'"),
        "detect.py": (_run(ROOT / "detect.py", tmp_path, "--datacfg", bad_data, "--modelcfg", TRIAL3,
                           "--weightfile", header_only, cwd=tmp_path),
                      f"{header_only} does not fit {TRIAL3}: the file holds 0 floats"),
    }
    for script, (proc, message) in runs.items():
        assert proc.returncode == 2, (script, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith(f"{script}: error: ")
        assert message in proc.stderr, proc.stderr


def test_input_errors_are_value_errors():
    """Callers that caught ValueError keep working."""
    assert issubclass(InputError, ValueError)


# --------------------------------------------------------------------------------------------
# issue 25: the other ways a run ends early are one line too
# --------------------------------------------------------------------------------------------

def _raises(exc):
    def main(argv):
        raise exc
    return main


@pytest.mark.parametrize("exc, status, line", [
    (OSError(errno.ENOSPC, "No space left on device", "backup/x/checkpoint.pt"), EXIT_FAULT,
     "tool.py: error: backup/x/checkpoint.pt: No space left on device (the file system is full: free some space"),
    (OSError(errno.EROFS, "Read-only file system", "out/a.json"), EXIT_BAD_INPUT,
     "tool.py: error: out/a.json: Read-only file system"),
    (FileNotFoundError("x.jpg: image not found"), EXIT_BAD_INPUT, "tool.py: error: x.jpg: image not found"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "tool.py: interrupted"),
    (MemoryError(), EXIT_FAULT, "tool.py: error: out of memory"),
])
def test_faults_and_ctrl_c_end_in_one_line(capsys, exc, status, line):
    with pytest.raises(SystemExit) as exit_:
        run_cli(_raises(exc), [], prog="tool.py")
    assert exit_.value.code == status
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(line), err


class _Unreadable(torch.utils.data.Dataset):
    """A dataset whose every sample is an unreadable image (what a loader worker meets mid-run)."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise ImageError(f"img/{i:06d}.jpg: cannot read image (broken data stream)")


def test_a_loader_worker_error_prints_the_message_it_carried(capsys):
    """The worker's error reached the user with the worker's whole traceback in its message."""
    def main(argv):
        for _ in torch.utils.data.DataLoader(_Unreadable(), num_workers=1):
            pass

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [], prog="train.py")
    assert exit_.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "train.py: error: img/000000.jpg: cannot read image (broken data stream)\n"
    wrapped = ImageError("Caught ImageError in DataLoader worker process 0.\n" + WORKER_TRACEBACK + "\n  File "
                         "\"x.py\", line 1, in f\nerrors.ImageError: a.png: two\nlines\n")
    assert one_line(wrapped) == "a.png: two\nlines"
    assert one_line(InputError("plain")) == "plain"


def test_after_ctrl_c_a_script_ignores_a_second_one_while_it_ends():
    """A second Ctrl-C while the interpreter stopped the data-loader workers printed a traceback (issue 36)."""
    import signal

    with pytest.raises(SystemExit):
        run_cli(_raises(KeyboardInterrupt()), [], prog="tool.py")
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_deferred_interrupts_finish_the_block_then_deliver_the_signal(ctrl_c_raises):
    import os
    import signal

    from errors import deferred_interrupts

    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C during the clean-up
            done.append("saved")
    assert done == ["saved"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
