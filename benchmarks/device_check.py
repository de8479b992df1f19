"""The prepared device check: every CUDA figure the project needs, from one call on a lent GPU machine.

GPU machines are lent to some sessions by chance, for about 15 minutes, starts included, so the
whole check is one command that ends inside one call (at most about 9 minutes: --deadline). It runs
the steps below in priority order, each in its own process group with its own timeout (a step that
hangs is killed and the next one runs), and never starts a step with less than MIN_STEP_S left:

    env          GPU, driver, torch, CUDA, cuDNN, OpenCV and numpy versions; the bf16 matrix peak
    cuda_tests   the tests marked `cuda` (they skip on a CPU machine)
    forward      bench_forward.py: trial 3, Tiny-YOLO, YOLOv2 pose; eager, fused+cl, bf16; batch 1, 64
    train_bench  bench_train.py: the training step per network at batch 64 (fp32, amp, amp+cl)
    loader       bench_loader.py: the loader's images/s, with and without --cache-images and workers
    main_job     `python train.py` with no flags (device auto), its minutes and accuracy
    valid        the valid.py command that the main job printed
    torchrun     `torchrun --nproc_per_node 1 train.py --epochs 1` (nccl on CUDA)
    quick_tests  `pytest -m "not slow"` with CUDA visible (-n 12 where pytest-xdist exists)

Everything goes to $OUT (a local folder runs/device_check/<time> when $OUT is not set): one log per
step inside device_check.tar.gz, plus summary.json and summary.md, all rewritten after every step,
so a call cut short still brings back what ran (the device tool returns at most 8 files).

    python benchmarks/device_check.py                  # on the device machine
    DRY=1 python benchmarks/device_check.py            # the same steps on a CPU with short caps
    python benchmarks/device_check.py --only env,forward --deadline 120

DRY=1 runs each step small (tiny networks and sets, a few seconds each, --device cpu) in a scratch
folder, so the script itself is tested on every CI run (tests/test_benchmarks.py).
Python packages missing on the device machine (plyfile) travel as wheels in .whl/ (see
docs/benchmarks.md "CUDA"); the script does not install anything.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: import the top level
import cli  # noqa: E402

DEADLINE_S = 540.0  # one device call is at most 10 minutes: leave one for the start and the transfers
MIN_STEP_S = 10.0  # a step with less time than this left is skipped, not started
ARCHIVE = "device_check.tar.gz"
TAIL_LINES = 25  # lines of each step's log kept in summary.md


@dataclass
class Step:
    """One step: `argv(ctx)` gives the command (None: skip, with ctx.why), `timeout_s` its own cap."""
    name: str
    timeout_s: float
    argv: Callable[[Context], list[str] | None]
    what: str


@dataclass
class Context:
    dry: bool
    work: Path  # scratch folder for the step's outputs (DRY: everything; real: the torchrun backup)
    logs: dict[str, str] = field(default_factory=dict)  # step name -> its output so far
    why: str = ""


def python() -> list[str]:
    return [sys.executable, "-u"]


def env_step(ctx: Context) -> list[str]:
    return python() + [str(Path(__file__).resolve()), "--env"] + (["--dry"] if ctx.dry else [])


def cuda_tests(ctx: Context) -> list[str]:
    return python() + ["-m", "pytest", "-q", "-m", "cuda", "-rs", "-p", "no:cacheprovider"]


def forward(ctx: Context) -> list[str]:
    if ctx.dry:
        return python() + ["benchmarks/bench_forward.py", "--device", "cpu", "--nets", "trial3", "--batch-sizes", "1",
                           "--test-size", "64", "--rounds", "1", "--round-time", "0.01", "--variants", "fused+cl"]
    return python() + ["benchmarks/bench_forward.py", "--device", "cuda", "--nets", "trial3,tiny,yolov2",
                       "--batch-sizes", "1,64", "--rounds", "3", "--variants", "fused+cl,bf16"]


def train_bench(ctx: Context) -> list[str]:
    if ctx.dry:
        return python() + ["benchmarks/bench_train.py", "--device", "cpu", "--nets", "trial3", "--batch-size", "2",
                           "--train-size", "64", "--sizes", "--rounds", "1", "--steps", "1", "--no-loader"]
    return python() + ["benchmarks/bench_train.py", "--device", "cuda", "--nets", "trial3,tiny,yolov2",
                       "--batch-size", "64", "--sizes", "--rounds", "2", "--no-loader"]


def loader(ctx: Context) -> list[str]:
    if ctx.dry:
        return python() + ["benchmarks/bench_loader.py", "--images-per-object", "12", "--batch-size", "4",
                           "--cases", "64:own", "--workers", "0", "--rounds", "1"]
    return python() + ["benchmarks/bench_loader.py", "--workers", "0", "4", "8", "--rounds", "2"]


def dry_data(ctx: Context) -> Path:
    return ctx.work / "synthetic"


def dry_train(ctx: Context, backup: str) -> list[str]:
    """train.py's arguments of a DRY run: the fast recipe, one epoch at 64 px on the 4-image set, on the CPU."""
    return ["train.py", "--datacfg", str(dry_data(ctx) / "cfg" / "obj00.data"), "--recipe", "fast", "--epochs", "1",
            "--train-size", "64", "--test-size", "64", "--batch-size", "2", "--device", "cpu",
            "--backupdir", str(ctx.work / backup), "--quiet"]


def main_job(ctx: Context) -> list[str]:
    if not ctx.dry:
        return python() + ["train.py"]
    # DRY: a 4-image set made first, then the fast recipe for one epoch at 64 px on it
    make = python() + ["tools/make_synthetic_linemod.py", "--out", str(dry_data(ctx)), "--num-objects", "1",
                       "--images-per-object", "4", "--workers", "1"]
    train = python() + dry_train(ctx, "main_job")
    return ["bash", "-c", f"{shlex.join(make)} && {shlex.join(train)}"]


VALID_LINE = re.compile(r"^\s*python valid\.py (.+)$", re.M)


def valid(ctx: Context) -> list[str] | None:
    found = VALID_LINE.findall(ctx.logs.get("main_job", ""))
    if not found:
        ctx.why = "the main job printed no valid.py command"
        return None
    return python() + ["valid.py"] + shlex.split(found[-1]) + (["--device", "cpu"] if ctx.dry else [])


def torchrun(ctx: Context) -> list[str]:
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1"]
    if ctx.dry:
        return run + dry_train(ctx, "torchrun")
    return run + ["train.py", "--epochs", "1", "--backupdir", str(ctx.work / "torchrun")]


def quick_tests(ctx: Context) -> list[str]:
    if ctx.dry:  # the suite itself runs in CI: here only that it collects
        return python() + ["-m", "pytest", "-q", "-m", "not slow", "--collect-only", "-p", "no:cacheprovider"]
    try:
        import xdist  # noqa: F401
        parallel = ["-n", "12"]
    except ImportError:
        parallel = []
    return python() + ["-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"] + parallel


# priority order: the cheap facts first, the long runs last; DRY caps every step at DRY_CAP_S
STEPS = [
    Step("env", 60, env_step, "versions and the bf16 matrix peak"),
    Step("cuda_tests", 120, cuda_tests, "tests marked cuda"),
    Step("forward", 120, forward, "inference images/s per network, batch 1 and 64"),
    Step("train_bench", 120, train_bench, "training step images/s per network, batch 64"),
    Step("main_job", 300, main_job, "python train.py with no flags"),
    Step("valid", 60, valid, "the printed valid.py command"),
    Step("loader", 90, loader, "loader images/s, cache and workers"),
    Step("torchrun", 120, torchrun, "torchrun --nproc_per_node 1 train.py --epochs 1"),
    Step("quick_tests", 300, quick_tests, "pytest -m 'not slow' with CUDA visible"),
]
DRY_CAP_S = 120.0


def run_command(argv: list[str], timeout_s: float, log: Path, env: dict | None = None) -> tuple[str, int | None]:
    """Run argv in its own process group with stdout+stderr into `log`; kill the group at timeout_s.

    Returns (status, exit code): ("ok", 0), ("failed", rc) or ("timeout", None)."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with_group(proc.pid, signal.SIGKILL)
                proc.wait()
            f.write(f"\n[device_check] killed after its timeout of {timeout_s:.0f} s\n".encode())
            return "timeout", None
    return ("ok" if rc == 0 else "failed"), rc


def with_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def write_results(out: Path, logs_dir: Path, rows: list[dict], meta: dict) -> None:
    """summary.json, summary.md and the archive of every log, each replaced whole (written aside, then renamed)."""
    summary = dict(meta, steps=rows)
    replace(out / "summary.json", json.dumps(summary, indent=1).encode())
    lines = [f"# device check ({'DRY, ' if meta['dry'] else ''}{meta['started']})", "",
             "| step | status | seconds | what |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['status']} | {r['seconds']:.1f} | {r['what']} |" for r in rows]
    for r in rows:
        if r.get("tail"):
            lines += ["", f"## {r['step']}", "", "```", r["tail"], "```"]
    replace(out / "summary.md", ("\n".join(lines) + "\n").encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(logs_dir, arcname="device_check")
    replace(out / ARCHIVE, buf.getvalue())


def replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def out_dir() -> Path:
    """$OUT on the device machine; elsewhere a new local folder runs/device_check/<time>."""
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
    else:
        out = ROOT / "runs" / "device_check" / time.strftime("%Y%m%d-%H%M%S")
        print(f"[device_check] $OUT is not set: writing to {out}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_steps(steps: list[Step], deadline_s: float, dry: bool, out: Path, work: Path) -> list[dict]:
    """Run `steps` in order within deadline_s seconds; results are written after every step."""
    start = time.monotonic()
    logs_dir = work / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(dry=dry, work=work)
    meta = dict(dry=dry, started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), deadline_s=deadline_s,
                python=sys.version.split()[0])
    rows: list[dict] = []
    for i, step in enumerate(steps):
        left = deadline_s - (time.monotonic() - start)
        timeout = min(step.timeout_s, DRY_CAP_S if dry else step.timeout_s, left)
        row = dict(step=step.name, what=step.what, status="skipped", seconds=0.0, rc=None, command=None, tail="")
        if left < MIN_STEP_S:
            row["tail"] = f"not started: {left:.0f} s left of the {deadline_s:.0f} s deadline"
        else:
            ctx.why = ""
            argv = step.argv(ctx)
            if argv is None:
                row["tail"] = f"not run: {ctx.why}"
            else:
                log = logs_dir / f"{i:02d}_{step.name}.log"
                row["command"] = shlex.join(argv)
                print(f"[device_check] {step.name} (at most {timeout:.0f} s): {row['command']}", flush=True)
                t0 = time.monotonic()
                row["status"], row["rc"] = run_command(argv, timeout, log)
                row["seconds"] = time.monotonic() - t0
                text = log.read_text(errors="replace")
                ctx.logs[step.name] = text
                row["tail"] = tail(text)
        print(f"[device_check] {step.name}: {row['status']} ({row['seconds']:.1f} s)", flush=True)
        rows.append(row)
        write_results(out, logs_dir, rows, meta)
    return rows


def print_env(dry: bool) -> None:
    """The env step (run in its own process so that a CUDA hang is a timeout, not ours)."""
    import platform

    import cv2
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.run_all import flop_ceiling

    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"OpenCV {cv2.__version__}, numpy {np.__version__}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"GPU {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
              f"capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
        subprocess.run(["nvidia-smi"], check=False)
        n = 8192
        print(f"bf16 matrix peak ({n}^3): {flop_ceiling(torch.device('cuda'), n=n, seconds=3.0) / 1e3:.0f} TFLOP/s")
    else:
        print("no CUDA device: the CUDA steps will fail with the named --device error or skip")
        print(f"fp32 matrix peak (512^3, CPU): {flop_ceiling(torch.device('cpu'), n=512, seconds=0.2):.0f} GFLOP/s")
    for name in ("plyfile", "xdist", "nbclient"):
        try:
            __import__(name)
            print(f"{name}: present")
        except ImportError:
            print(f"{name}: MISSING")


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(s.name for s in STEPS),
                   help="which parts to run: a comma list of steps, run in the script's order (default: all)")
    cli.add_alias(p, "--steps", "--only")  # --steps is bench_train.py's number of timed steps
    p.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for the whole check (default 540)")
    p.add_argument("--dry", action="store_true", help="the same as DRY=1: every step small, on the CPU")
    p.add_argument("--env", action="store_true", help=argparse.SUPPRESS)  # the env step's own process
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    dry = args.dry or os.environ.get("DRY", "") not in ("", "0")
    if args.env:
        print_env(dry)
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {s.name for s in STEPS})
    if unknown:
        print(f"device_check.py: error: --only: unknown {', '.join(unknown)}; "
              f"expected some of {', '.join(s.name for s in STEPS)}", file=sys.stderr)
        return 2
    if not args.deadline > 0:
        print(f"device_check.py: error: --deadline must be positive, found {args.deadline}", file=sys.stderr)
        return 2
    out = out_dir()
    work = Path(tempfile.mkdtemp(prefix="device_check_"))
    rows = run_steps([s for s in STEPS if s.name in names], args.deadline, dry, out, work)
    bad = [r["step"] for r in rows if r["status"] != "ok"]
    print(f"[device_check] done: {len(rows) - len(bad)} of {len(rows)} steps ok"
          + (f"; not ok: {', '.join(bad)}" if bad else "") + f"; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
