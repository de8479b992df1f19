"""The distillation study (issue: results): teacher, students with and without KD, all scored.

    python tools/run_study.py --out runs/study                     # full budget (a CUDA machine)
    python tools/run_study.py --out runs/study_cpu --reduced       # CPU: small input, few epochs
    python tools/run_study.py --out /tmp/s --num-objects 1 --images-per-object 6 --epochs 1 --train-size 64 \\
        --students trial3 --modes none,fixed                       # smoke run (the test)

With one seed and one budget it
  1. generates the synthetic LINEMOD set (``--num-objects`` x ``--images-per-object``) in OUT/data,
  2. trains the YOLOv2 pose teacher on every object (random init: the darknet19 ImageNet weights
     of the MS recipe need a download; ``--teacher-init FILE`` uses them),
  3. trains the students (YOLO-LITE trial 3 and trial 10 from their VOC backbones in weights/,
     Tiny-YOLOv2 from random init) without KD (``none``), with ``--kd-mode fork`` and with
     ``--kd-mode fixed``, the teacher of the same object as ``--teacher-weights``,
  4. scores every run with ``valid.py --all`` (2D at 5 px, ADD, ADD-S, 5cm5deg, images/s),
and writes OUT/results.csv, OUT/results.json, OUT/commands.txt (every command, with the seed)
and OUT/results.md (the per-object and mean tables). Runs whose outputs exist are skipped, so an
interrupted study continues where it stopped (``--force`` redoes everything).
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import the top level

import cli
from errors import run_cli

ROOT = Path(__file__).resolve().parents[1]

TEACHER = ("yolov2", "cfg/yolo-pose.cfg", None)
STUDENTS = {
    "trial3": ("cfg/yolo-lite-trial3-pose.cfg", "weights/tiny-yolov2-trial3-voc.weights"),
    "trial10": ("cfg/yolo-lite-trial10-pose.cfg", "weights/tiny-yolov2-trial10-voc.weights"),
    "tiny": ("cfg/tiny-yolo-pose.cfg", None),
}
MODES = ("none", "fork", "fixed")
FULL = {"epochs": 300, "size": 416, "batch": 16, "images": 200}
REDUCED = {"epochs": 30, "size": 160, "batch": 8, "images": 60}
METRICS = ("acc_2d", "acc_add", "acc_adds", "acc_5cm5deg", "mean_err_2d", "mean_err_corner", "images_per_s")


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__)
    p.add_argument("--out", default="runs/study")
    p.add_argument("--reduced", action="store_true", help=f"CPU budget {REDUCED} instead of {FULL}")
    cli.add_num_objects(p, default=3)
    p.add_argument("--images-per-object", type=int, default=None, help="images per object (budget 'images')")
    p.add_argument("--epochs", type=int, default=None)
    cli.add_sizes(p, train=True, test=False,
                  train_help="square size of every run, trained and scored (a multiple of 32; budget 'size')")
    cli.add_batch_size(p, help="training batch size (budget 'batch')")
    cli.add_seed(p)
    p.add_argument("--students", default=",".join(STUDENTS), help=f"comma list of {','.join(STUDENTS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {','.join(MODES)}")
    p.add_argument("--teacher-init", default="none", help="init weights for the teacher (default: random)")
    cli.add_device(p)
    cli.add_workers(p, default=2)
    p.add_argument("--force", action="store_true", help="redo runs whose outputs exist")
    return p


def budget(args) -> dict:
    b = dict(REDUCED if args.reduced else FULL)
    for key, flag in (("epochs", "epochs"), ("size", "train_size"), ("batch", "batch_size"),
                      ("images", "images_per_object")):
        if getattr(args, flag) is not None:
            b[key] = getattr(args, flag)
    if b["size"] % 32:
        raise SystemExit(f"--train-size {b['size']}: must be a multiple of 32")
    return b


def portable(line: str) -> str:
    """A command line with this machine's interpreter and checkout paths removed."""
    return line.replace(sys.executable, "python").replace(str(ROOT) + "/", "")


def run(cmd: list[str], log: Path, commands: Path) -> None:
    """Run a command from the repository root, appending it to commands.txt and its output to log."""
    line = " ".join(shlex.quote(c) for c in cmd)
    with open(commands, "a") as f:  # as a user would type it: no interpreter or checkout paths
        f.write(portable(line) + "\n")
    print(f"$ {line}", flush=True)
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        raise SystemExit(f"run_study: command failed (exit {proc.returncode}); see {log}:\n  {line}")


def pretrain_epochs(epochs: int) -> int:
    """A fifth of the run without the confidence term, leaving at least the last epoch to evaluate (D47)."""
    return max(-1, min(epochs // 5, epochs - 2))


def train_cmd(args, b, datacfg, cfg, init, backup, extra=()) -> list[str]:
    return [sys.executable, "train.py", "--datacfg", str(datacfg), "--modelcfg", cfg,
            "--initweightfile", init or "none", "--backupdir", str(backup), "--epochs", str(b["epochs"]),
            "--batch-size", str(b["batch"]), "--train-size", str(b["size"]), "--test-size", str(b["size"]),
            "--eval-every", str(max(1, b["epochs"] // 5)), "--pretrain_num_epochs", str(pretrain_epochs(b["epochs"])),
            "--seed", str(args.seed), "--device", args.device, "--workers", str(args.workers), "--quiet", *extra]


def main(args) -> list[dict]:
    b = budget(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    students = [s for s in args.students.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    bad = [s for s in students if s not in STUDENTS] + [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown student(s)/mode(s) {bad}; students {list(STUDENTS)}, modes {list(MODES)}")
    commands, log = out / "commands.txt", out / "log.txt"
    data = out / "data"
    if not (data / "cfg").is_dir():
        from tools.make_synthetic_linemod import generate

        generate(data, objects=args.num_objects, images_per_object=b["images"], seed=args.seed)
        with open(commands, "a") as f:
            f.write(f"# generate: python tools/make_synthetic_linemod.py --out {data} --num-objects {args.num_objects} "
                    f"--images-per-object {b['images']} --seed {args.seed}\n")
    cfgs = sorted(c for c in (data / "cfg").glob("*.data") if "occlusion" not in c.name)
    objects = [c.stem for c in cfgs]

    runs = [("teacher", TEACHER[1], args.teacher_init if args.teacher_init != "none" else None, "none")]
    runs += [(s, STUDENTS[s][0], STUDENTS[s][1], m) for s in students for m in modes]
    t_start = time.time()
    for name, cfg, init, mode in runs:
        run_id = name if name == "teacher" else f"{name}-{mode}"
        for obj, datacfg in zip(objects, cfgs):
            backup = out / "runs" / run_id / obj
            if (backup / "model.weights").is_file() and not args.force:
                continue
            extra = []
            if mode != "none":
                extra = ["--distiled", "1", "--kd-mode", mode, "--teacher-cfg", TEACHER[1],
                         "--teacher-weights", str(out / "runs/teacher" / obj / "model.weights")]
            run(train_cmd(args, b, datacfg, cfg, init, backup, extra), log, commands)
        scores = out / "runs" / run_id / "valid.json"
        if not scores.is_file() or args.force:
            run([sys.executable, "valid.py", "--all", str(data / "cfg"), "--modelcfg", cfg, "--weightfile",
                 str(out / "runs" / run_id / "{name}" / "model.weights"), "--test-size", str(b["size"]),
                 "--device", args.device, "--json", str(scores), "--quiet"], log, commands)
    rows = collect(out, runs, objects)
    write_reports(out, rows, b, args, time.time() - t_start)
    plot_study(out, [r[0] if r[0] == "teacher" else f"{r[0]}-{r[3]}" for r in runs], objects)
    return rows


def plot_study(out: Path, run_ids: list[str], objects: list[str]) -> Path:
    """OUT/curves.png: per run, the training loss (mean over objects) against images seen, and the
    mean corner error at each in-training evaluation (the informative number while accuracies are 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run_id in run_ids:
        costs = [np.load(out / "runs" / run_id / o / "costs.npz") for o in objects]
        n = min(len(c["training_losses"]) for c in costs)
        loss = np.mean([c["training_losses"][:n] for c in costs], axis=0)
        k = max(1, n // 50)  # smooth over ~2 % of the run
        a.plot(costs[0]["training_iters"][:n][k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), label=run_id, lw=1)
        with open(out / "runs" / run_id / objects[0] / "metrics.csv") as f:
            seen = [int(r["seen"]) for r in csv.DictReader(f)]
        errs = []
        for o in objects:
            with open(out / "runs" / run_id / o / "metrics.csv") as f:
                errs.append([float(r["mean_err_corner"]) for r in csv.DictReader(f)])
        m = min(len(e) for e in errs)
        b.plot(seen[:m], np.mean([e[:m] for e in errs], axis=0), "o-", label=run_id, ms=3)
    a.set(xlabel="images seen (per object)", ylabel="training loss (batch sum, smoothed)", yscale="log",
          title="training loss, mean over objects")
    b.set(xlabel="images seen (per object)", ylabel="mean corner error (px)", yscale="log",
          title="test: mean error of the 9 points, mean over objects")
    b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def collect(out: Path, runs, objects) -> list[dict]:
    rows = []
    for name, cfg, _, mode in runs:
        run_id = name if name == "teacher" else f"{name}-{mode}"
        payload = json.loads((out / "runs" / run_id / "valid.json").read_text())
        for s in payload["objects"]:
            rows.append({"run": run_id, "network": Path(cfg).stem, "kd": mode, "object": s["object"],
                         **{k: s.get(k) for k in METRICS}})
        mean = payload.get("mean") or payload["objects"][0]
        rows.append({"run": run_id, "network": Path(cfg).stem, "kd": mode, "object": "mean",
                     **{k: mean.get(k) for k in METRICS}})
    return rows


def _fmt(v) -> str:
    return "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def write_reports(out: Path, rows: list[dict], b: dict, args, seconds: float) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps({"budget": b, "seed": args.seed, "rows": rows}, indent=1))
    head = "| run | object | 2D 5px % | ADD % | ADD-S % | 5cm5deg % | mean 2D err px | mean corner err px | images/s |"
    lines = [f"Budget: {b}, seed {args.seed}, {seconds / 60:.1f} min. Commands: `commands.txt`.", "",
             "### Mean over objects", "", head, "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['object']} | " + " | ".join(_fmt(r[k]) for k in METRICS) + " |"
              for r in rows if r["object"] == "mean"]
    lines += ["", "### Per object", "", head, "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['object']} | " + " | ".join(_fmt(r[k]) for k in METRICS) + " |"
              for r in rows if r["object"] != "mean"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"results: {out / 'results.md'}")


if __name__ == "__main__":
    run_cli(lambda argv: main(get_args_parser().parse_args(argv)))
