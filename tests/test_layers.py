"""The layers of docs/design.md ("Layers"): a library module never imports a script or a tool.

Scripts are the top-level `.py` files run as commands (they hold an `if __name__ == "__main__":`
block: train.py, valid.py, detect.py) and everything under multi_obj_pose_estimation/, tools/ and
benchmarks/. Every other top-level `.py` is a library module; the list is made by that rule, so a
new module is covered without editing this file. Two checks, since either alone misses a case:
  - each library module imported in a fresh interpreter leaves no script or tool in sys.modules
    (an import at the top of any module it pulls in, however indirect);
  - no import statement of a library module, at the top or inside a function, names one (an
    import inside a function runs only when called, so the first check cannot see it).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_FOLDERS = ("multi_obj_pose_estimation", "tools", "benchmarks")


def is_script(path: Path) -> bool:
    """A top-level file run as a command: it has a `__main__` block."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


TOP_LEVEL = sorted(ROOT.glob("*.py"))
SCRIPTS = sorted(p.stem for p in TOP_LEVEL if is_script(p))
LIBRARY = sorted(p.stem for p in TOP_LEVEL if not is_script(p))
# the module names a script or tool is imported under: the top-level scripts, the script folders (as
# packages, `tools.run_study`) and their files by bare name (a script that puts its folder on sys.path)
FORBIDDEN = {*SCRIPTS, *SCRIPT_FOLDERS,
             *(p.stem for folder in SCRIPT_FOLDERS for p in (ROOT / folder).glob("*.py") if p.stem != "__init__")}


def forbidden(module: str) -> bool:
    """Whether an imported module name is a script, a tool or a module under a script folder."""
    return module.split(".")[0] in FORBIDDEN


def test_the_rule_finds_the_scripts_and_the_libraries():
    """The rule itself: the three top-level scripts are scripts, the core modules libraries."""
    assert {"train", "valid", "detect"} <= set(SCRIPTS)
    assert {"darknet", "dataset", "evaluation", "preflight", "training", "engine", "linemod_format"} <= set(LIBRARY)
    assert "make_synthetic_linemod" in FORBIDDEN and "valid_multi" in FORBIDDEN


@pytest.mark.parametrize("module", LIBRARY)
def test_importing_a_library_module_loads_no_script(module):
    """Fails on the code before issue 36 for preflight: it imported valid (which imports evaluation,
    which imported preflight inside a function: a cycle)."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = [m for m in json.loads(out.stdout.splitlines()[-1]) if forbidden(m)]
    assert loaded == [], f"import {module} loads {loaded}"


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import statement of a file, at any depth."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
            if node.module in SCRIPT_FOLDERS:  # from tools import run_study
                names += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return names


@pytest.mark.parametrize("module", LIBRARY)
def test_no_library_module_imports_a_script_even_inside_a_function(module):
    """Failed before issue 36 for preflight (it imported valid) and training (it imported
    tools.make_synthetic_linemod inside `ensure_synthetic_dataset`; now the library synthetic.py)."""
    path = ROOT / f"{module}.py"
    bad = [f"{path.name}:{line}: {name}" for line, name in imported_names(path) if forbidden(name)]
    assert bad == [], "a library module imports a script or tool: " + ", ".join(bad)
