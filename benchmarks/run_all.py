"""Run every benchmark and write the tables to docs/benchmarks.md.

    .venv/bin/python benchmarks/run_all.py            # CPU (and CUDA + AMP when a GPU is present)
    .venv/bin/python benchmarks/run_all.py --quick    # smaller settings, a few minutes on 2 cores
    .venv/bin/python benchmarks/run_all.py --only forward,loss --out-file /tmp/bench.md

Each benchmark script prints its own markdown table with a ratio against a baseline measured in
the same run; this script runs them one after the other (never in parallel, so they do not
disturb each other), collects the tables, and adds for the forward pass the fraction of the
machine's FLOP ceiling reached. The ceiling is measured here, in the same run, as the GFLOP/s of
a large fp32 matrix product (bf16 on CUDA): a practical peak, not the datasheet number.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import the top level

import cli  # noqa: E402
from linemod_format import write_text  # noqa: E402
BENCH = ROOT / "benchmarks"

# name -> (script, full args, quick args, what it measures)
SUITE = {
    "forward": ("bench_forward.py", [], ["--nets", "trial3,trial10,tiny", "--batch-sizes", "1,16", "--rounds", "3"],
                "inference images/s per network and batch: eager vs BN-folded + channels-last (+ compile, AMP)"),
    "train": ("bench_train.py", [], ["--nets", "trial3,tiny", "--batch-size", "8", "--rounds", "2"],
              "training step images/s per network: fp32 vs channels-last (+ AMP on CUDA)"),
    "loss": ("bench_loss.py", [], ["--rounds", "20"], "region loss + target building: vectorised vs per-cell loop"),
    "loader": ("bench_loader.py", [], ["--images-per-object", "32", "--workers", "0", "2", "--rounds", "3"],
               "training loader images/s: the fast path vs Pillow and vs the fast path before issue 23"),
    "synthetic": ("bench_synthetic.py", [], [], "synthetic LINEMOD generator images/s (640x480)"),
    "valid": ("bench_valid.py", [], ["--batch-sizes", "1,8", "--rounds", "2"],
              "end-to-end evaluation images/s: the fused network (valid.py) vs eager, batched vs batch 1"),
    "detect": ("bench_detect.py", [], ["--images", "32", "--rounds", "2"],
               "detect.py end to end on 640x480 images (read, resize, forward, decode, PnP): fused vs eager"),
}
PER_DEVICE = ("forward", "train", "valid", "detect")  # run once per device (CPU, and CUDA when present)
# the CUDA figures come from benchmarks/device_check.py on a lent GPU machine, recorded by hand under
# this heading: a rewrite of the file keeps that section as it is
KEPT_HEADING = "## CUDA (benchmarks/device_check.py)"


def kept_section(path: Path) -> list[str]:
    """The lines of `path` from KEPT_HEADING to the end ([] when the file or the heading is missing)."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return lines[lines.index(KEPT_HEADING):] if KEPT_HEADING in lines else []


def flop_ceiling(device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s of an n x n x n matrix product (fp32 on CPU, bf16 on CUDA), best of a short loop."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        (a @ b).sum().item()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def tables(text: str) -> list[list[str]]:
    """Markdown tables in `text` (runs of lines starting with '|'); the last copy of each header wins."""
    found, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line.rstrip())
        elif cur:
            found.append(cur)
            cur = []
    if cur:
        found.append(cur)
    by_header = {}
    for t in found:
        if len(t) >= 2 and set(t[1].replace("|", "").strip()) <= set("-: "):
            by_header[t[0]] = t
    return list(by_header.values())


def add_ceiling_column(table: list[str], ceiling: float) -> list[str]:
    """Append '% of ceiling' to a table that has a 'GFLOP/s' column."""
    head = [c.strip() for c in table[0].strip("|").split("|")]
    if "GFLOP/s" not in head:
        return table
    k = head.index("GFLOP/s")
    out = [table[0] + " % of ceiling |", table[1] + "---|"]
    for row in table[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        try:
            pct = f"{100 * float(cells[k]) / ceiling:.1f} %"
        except (ValueError, IndexError):
            pct = ""
        out.append(row + f" {pct} |")
    return out


def run(name: str, quick: bool, device: str, timeout: float) -> tuple[str, float, int]:
    script, full, small, _ = SUITE[name]
    args = list(small if quick else full)
    if name in PER_DEVICE:
        args += ["--device", device]
    cmd = [sys.executable, str(BENCH / script), *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, rc = proc.stdout + ("\n" + proc.stderr[-2000:] if proc.returncode else ""), proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), -1
    return out, time.perf_counter() - t0, rc


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="smaller settings (a few minutes on 2 cores)")
    p.add_argument("--only", default=",".join(SUITE),
                   help=f"which parts to run: a comma list of {','.join(SUITE)} (default: all)")
    cli.add_out(p, "file", what="the report, markdown", why="docs/benchmarks.md of the repository")
    cli.add_alias(p, "--out", "--out-file")  # --out is an output folder everywhere
    p.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    return p


def main(args) -> Path:
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(SUITE)}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ceilings = {d: flop_ceiling(torch.device(d)) for d in devices}
    lines = ["# Benchmarks", "",
             f"Written by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` on "
             f"{time.strftime('%Y-%m-%d')}; every ratio is against a baseline measured in the same run.", "",
             "| | |", "|---|---|",
             f"| CPU | {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"torch threads {torch.get_num_threads()} |",
             f"| GPU | {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'} |",
             f"| software | Python {platform.python_version()}, torch {torch.__version__} |"]
    lines += [f"| FLOP ceiling ({d}) | {c:.0f} GFLOP/s ({'bf16' if d == 'cuda' else 'fp32'} 2048^3 matmul) |"
              for d, c in ceilings.items()]
    for name in names:
        for device in (devices if name in PER_DEVICE else ["cpu"]):
            print(f"running {name} on {device} ...", flush=True)
            out, seconds, rc = run(name, args.quick, device, args.timeout)
            title = f"{name}" + (f" ({device})" if name in PER_DEVICE else "")
            lines += ["", f"## {title}", "", f"{SUITE[name][3]}. ({seconds:.0f} s)", ""]
            found = tables(out)
            if rc != 0 or not found:  # a failure, or a script that prints plain text: keep its output
                lines += ["```", *([f"exit code {rc}"] if rc else []), *out.strip().splitlines()[-15:], "```"]
                continue
            for t in found:
                lines += add_ceiling_column(t, ceilings[device]) + [""]
    path = Path(args.out_file) if args.out_file else ROOT / "docs/benchmarks.md"
    kept = kept_section(path)
    if kept:
        lines += [""] + kept
    write_text(path, "\n".join(lines).rstrip() + "\n")  # atomically (design D60)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main(get_args_parser().parse_args())
