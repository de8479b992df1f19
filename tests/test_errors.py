"""One error path for every script: our error types, a message naming the file, exit status 2."""
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from errors import EXIT_BAD_INPUT, DataCfgError, InputError, run_cli

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
