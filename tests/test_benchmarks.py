"""benchmarks/run_all.py: table collection and the FLOP-ceiling column."""
from __future__ import annotations

import pytest

from benchmarks import run_all

OUT = """progress line
| net | batch | GFLOP/s | vs eager |
|---|---|---|---|
| trial3 | 1 | 50.0 | 1.00x |

device cpu
| net | batch | GFLOP/s | vs eager |
|---|---|---|---|
| trial3 | 1 | 50.0 | 1.00x |
| trial3 | 16 | 75.0 | 1.50x |

| a | b |
"""


def test_tables_keeps_the_last_copy_of_each_table():
    (t,) = run_all.tables(OUT)
    # a lone row without a separator is not a table
    assert t[0] == "| net | batch | GFLOP/s | vs eager |" and len(t) == 4


def test_ceiling_column():
    (t,) = run_all.tables(OUT)
    out = run_all.add_ceiling_column(t, ceiling=100.0)
    assert out[0].endswith("% of ceiling |") and out[2].endswith("50.0 % |") and out[3].endswith("75.0 % |")
    other = ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert run_all.add_ceiling_column(other, 100.0) == other


def test_unknown_benchmark_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.main(run_all.get_args_parser().parse_args(["--only", "nope", "--out", str(tmp_path / "b.md")]))


def test_flop_ceiling_is_positive():
    assert run_all.flop_ceiling(run_all.torch.device("cpu"), n=256, seconds=0.05) > 0
