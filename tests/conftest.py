"""Shared fixtures: where the golden outputs and the real backbones live."""
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# CI clones the project with shared/ beside it; SSP_SHARED overrides that for other layouts.
SHARED = Path(os.environ.get("SSP_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"golden material not found at {path} (set SSP_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _require(GOLDEN)


@pytest.fixture(scope="session")
def golden(golden_dir):
    """Load a golden .npz by stem: golden('evaluation')."""
    cache = {}

    def load(stem: str):
        if stem not in cache:
            cache[stem] = dict(np.load(golden_dir / f"{stem}.npz", allow_pickle=False))
        return cache[stem]

    return load


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
