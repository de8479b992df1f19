"""Train a single-object pose network, optionally distilled from a teacher (docs/design.md).

    python train.py                                    # main job: synthetic data, YOLO-LITE trial 3, CPU, fast recipe
    python train.py --mesh my_object.ply --mesh-units mm --camera-data camera.data   # your object from its mesh
    python train.py --minutes 120                      # the same, for two hours: an accurate model on a CPU
    python train.py --datacfg cfg/ape.data --modelcfg cfg/yolo-pose.cfg --initweightfile cfg/darknet19_448.conv.23
    python train.py cfg/duck.data cfg/yolo-pose.cfg backup/duck/init.weights   # positional form
    python train.py --datacfg cfg/ape.data --modelcfg cfg/yolo-lite-trial3-pose.cfg \\
        --initweightfile weights/tiny-yolov2-trial3-voc.weights --distiled 1 --kd-mode fixed
    torchrun --nproc_per_node 2 train.py ...            # DDP (gloo on CPU, nccl on CUDA)

Recipes (--recipe): `original` is the originals' recipe exactly (SGD, the cfg's step schedule, no
confidence term for 15 epochs, the full augmentation): the default whenever --datacfg is given,
for reproducing the papers. `fast` (AdamW, warm-up and cosine decay over the epochs or the
--minutes budget, EMA weights, a confidence target with a floor, the cv2 loader, 256 px): the
default of the main job, and the one to use for a quick model on a CPU or a new dataset.

With --mesh (instead of --datacfg): a set is rendered from your mesh once (cached under data/mesh/, with the
camera and randomisation flags of tools/make_synthetic_linemod.py), recipes.MESH is trained on it into
backup/mesh/<name>/, and the commands that score it and run it on your photos are printed (design §7.7).
Several --mesh files train a multi-object model (multi_obj_pose_estimation/train_multi.py --mesh).

Writes into the backup dir: model.weights (darknet format, best evaluation so far), last.weights
(the end of the run), checkpoint.pt (every epoch and on Ctrl-C; --resume continues from it),
costs.npz, metrics.csv / metrics.jsonl (one row per evaluation) and training.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cli
import dataset
import engine
import evaluation
import mesh_job
import synthetic
import training
from errors import FlagError, InputError, run_cli
from linemod_format import LOG_ACC_10PX, LOG_ACC_5PX
from region_loss import NEIGHBOUR_TARGETS

DEFAULT_MODELCFG = "cfg/yolo-lite-trial3-pose.cfg"
DEFAULT_INITWEIGHTS = "weights/tiny-yolov2-trial3-voc.weights"
DEFAULT_TEACHER_CFG = "cfg/yolo-pose.cfg"
POSITIONAL = ("datacfg", "modelcfg", "initweightfile")
# The main job (no --datacfg): one synthetic LINEMOD object, the fast recipe, an epoch budget on the CPU.
SYNTHETIC_ROOT = Path("data/synthetic")
# 5,440 train / 240 test images: at equal images (48,960), 5,440 distinct x 9 epochs scored 51 % at 5 px and
# 95 % at 10 px on the test split, 1,360 x 36 33 % and 82 % (docs/results.md, "More distinct images").
SYNTHETIC_OBJECTS, SYNTHETIC_IMAGES, SYNTHETIC_TEST_IMAGES = 1, 5680, 240
SYNTHETIC_TEST_FRACTION = SYNTHETIC_TEST_IMAGES / SYNTHETIC_IMAGES
# A number of epochs, not minutes, so that a seed gives the same model on every machine; under 12 minutes of
# training on an idle 2-core x86_64 machine (docs/results.md).
MAIN_JOB_EPOCHS = 9
QUICK = dict(recipe="fast", epochs=MAIN_JOB_EPOCHS, eval_every=5)
COST_KEYS = ("training_iters", "training_losses", "testing_iters", "testing_accuracies",
             "testing_errors_pixel", "testing_errors_angle")  # the original's costs.npz arrays
# the columns of metrics.csv / metrics.jsonl: the 2-D accuracies as acc_2d_<t>px, the names of train_multi.py's log
ROW_KEYS = (*(f"acc_2d_{t}px" for t in evaluation.REPORT_PX_THRESHOLDS), "acc_add", "acc_adds",
            "acc_5cm5deg", "acc_corner", "mean_err_2d", "mean_err_add", "mean_err_corner", "mean_err_trans",
            "mean_err_angle", "n", "n_failed")
# what the flags default to (training.resolve_args); the fork's train.py reads the [region] loss scales, and
# the original recipe trains its first 15 epochs without the confidence term (design §5.5, §5.6)
DEFAULTS = training.Defaults(modelcfg=DEFAULT_MODELCFG, initweights=DEFAULT_INITWEIGHTS, main_job=QUICK,
                             main_job_data=lambda quiet: ensure_synthetic_dataset(quiet=quiet),
                             backup="backup/{name}", main_job_backup="backup/synthetic/{name}",
                             loss_scales="cfg", pretrain_num_epochs=15)


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.default_argument_parser(__doc__)
    cli.add_positional(p, POSITIONAL)
    cli.add_datacfg(p, why="the synthetic set, generated if missing")
    cli.add_model(p, weights="initweightfile", weights_detail="loaded 'until last'; 'none' for random",
                  cfg_why=f"{DEFAULT_MODELCFG}, YOLO-LITE trial 3, the main job's network",
                  weights_why=f"{DEFAULT_INITWEIGHTS}, its VOC backbone")
    training.add_run_flags(p, main_job_epochs=MAIN_JOB_EPOCHS, loss_scales=DEFAULTS.loss_scales,
                           loss_scales_why="the fork's train.py reads the [region] scales (noobject 0.1)",
                           pretrain_num_epochs=DEFAULTS.pretrain_num_epochs)
    cli.add_distiled(p, "1: distil from a teacher (design §8)")
    p.add_argument("--teacher-cfg", default=DEFAULT_TEACHER_CFG, help="the teacher's network cfg (default %(default)s)")
    p.add_argument("--teacher-weights", default=None,
                   help="the teacher's weights (default: backup/<name>/model_backup.weights)")
    p.add_argument("--kd-mode", choices=("fork", "fixed"), default="fixed",
                   help="fixed (default): the teacher's right channels; fork: reproduces the fork's channel-index "
                        "bug (corners 2-8 regressed to shifted channels, D10), which leaves students at 0 %% on "
                        "the CPU study (docs/results.md)")
    p.add_argument("--kd-alpha", type=float, default=1.0, help="targets = (1-a)*GT + a*teacher (fork: 1)")
    p.add_argument("--kd-neighbours", choices=NEIGHBOUR_TARGETS, default="gt",
                   help="what the fast recipe's neighbour cells regress under distillation: gt (default), the "
                        "ground truth; teacher, the --kd-alpha blend with the teacher's corners at that cell (D66)")
    p.add_argument("--also-valid", nargs="+", default=[], metavar="DATACFG",
                   help="also test on these .data files' valid lists at every evaluation (e.g. a fresh test set "
                        "of tools/make_synthetic_linemod.py --fresh-test); logged, not used to pick the best model")
    mesh_job.add_mesh_flags(p, multi=False)
    return p


# --------------------------------------------------------------------------------------------
# Set-up (the shared path is training.py; what is single-object is here)
# --------------------------------------------------------------------------------------------

def ensure_synthetic_dataset(root: Path = SYNTHETIC_ROOT, quiet: bool = False) -> Path:
    """The main job's synthetic LINEMOD set, generated once (training.ensure_synthetic_dataset, design
    D60); return its first object's .data."""
    params = synthetic.generation_params(SYNTHETIC_OBJECTS, SYNTHETIC_IMAGES, seed=0, multi=0,
                                         test_fraction=SYNTHETIC_TEST_FRACTION)
    folder = training.ensure_synthetic_dataset(root, params, quiet=quiet)
    cfgs = sorted(c for c in (folder / "cfg").glob("*.data") if not evaluation.skipped_by_all(c))
    return cfgs[0]


def check_also_valid(datacfgs) -> list[tuple[str, evaluation.EvalSetup]]:
    """Every --also-valid `.data` file, its mesh, camera and test list (as valid.py checks them,
    `evaluation.check_test_list`), before training: InputError naming the flag. Returns (tag, setup)
    per file, the tag its stem (the metrics columns' prefix)."""
    tests, problems = [], []
    for datacfg in datacfgs:
        try:
            setup = evaluation.load_eval_setup(datacfg)
            problems.extend(f"--also-valid {datacfg}: {p}" for p in evaluation.check_test_list(setup, datacfg))
            tests.append((Path(datacfg).stem, setup))
        except (OSError, ValueError) as exc:  # InputError is a ValueError; a missing file an OSError
            problems.append(f"--also-valid {datacfg}: {exc}")
    if problems:
        raise InputError("cannot start training:\n  " + "\n  ".join(problems))
    return tests


def resolve_args(args) -> tuple[argparse.Namespace, dict]:
    """The positional form, then the defaults (training.resolve_args, the rule of both scripts),
    then the teacher's paths."""
    cli.merge_positional(args, POSITIONAL)
    args, opts = training.resolve_args(args, DEFAULTS)
    if args.teacher_cfg == DEFAULT_TEACHER_CFG:
        args.teacher_cfg = cli.find_path(DEFAULT_TEACHER_CFG, training.ROOT)
    if args.teacher_weights is None:
        args.teacher_weights = f"backup/{opts.get('name', Path(args.datacfg).stem)}/model_backup.weights"
    return args, opts


def periodic_test(test_set, setup, device, num_keypoints: int, fast: bool, box_rule: str = "max"):
    """The periodic test: evaluation.evaluate on the test list; the best-model score is
    `training.best_score` of the 5 and 10 px accuracies (engine.Trainer keeps a model only when its
    score is strictly better)."""
    def evaluate(model, epoch):
        summary, _ = evaluation.evaluate(model, dataset.make_test_loader(test_set, batch_size=8, workers=0),
                                    setup, device, num_keypoints=num_keypoints, box_rule=box_rule)
        evaluation.log(f"epoch {epoch}: 2D {summary['acc_2d']:.2f}% (10 px {summary.get('acc_2d_10px', 0):.2f}%)  "
                  f"ADD {summary['acc_add']:.2f}%  5cm5deg {summary['acc_5cm5deg']:.2f}%  "
                  f"mean px err {summary['mean_err_2d']:.2f}  mean corner err {summary.get('mean_err_corner', 0):.2f}")
        score = training.best_score(summary["acc_2d"], summary.get("acc_2d_10px", 0.0))
        return {"row": {k: summary.get(k, float("nan")) for k in ROW_KEYS}, "score": score,
                "costs": {"testing_iters": 0, "testing_accuracies": summary["acc_2d"],
                          "testing_errors_pixel": summary["mean_err_2d"],
                          "testing_errors_angle": summary["mean_err_angle"]}}
    return evaluate


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main(args) -> dict:
    if args.mesh is not None and len(args.mesh) > 1:
        raise FlagError(f"{len(args.mesh)} --mesh files train a multi-object model: run "
                        f"multi_obj_pose_estimation/train_multi.py with the same flags (train.py's command line does)")
    args, opts = resolve_args(args)
    fast = args.recipe == "fast"
    extra_tests = []

    def check():
        training.check_inputs(args)
        extra_tests.extend(check_also_valid(args.also_valid))

    def train_set(model):
        return dataset.listDataset(opts["train"], **training.sample_options(args, model))

    def make_evaluation(model, device, test_shape, seen):
        test_set = dataset.listDataset(opts["valid"], train=False, shape=test_shape, resample=args.resample,
                                       input_filter=training.test_filter(args))
        evaluate = periodic_test(test_set, evaluation.load_eval_setup(args.datacfg), device, model.num_keypoints, fast,
                              args.box_rule)
        extra_sets = [dataset.listDataset(s.valid_list, train=False, shape=test_shape, resample=args.resample,
                                          input_filter=training.test_filter(args)) for _, s in extra_tests]

        def evaluate_and_count(eval_model, epoch):
            result = evaluate(eval_model, epoch)
            result["costs"]["testing_iters"] = seen()
            for (tag, extra_setup), extra_set in zip(extra_tests, extra_sets):
                loader = dataset.make_test_loader(extra_set, batch_size=8, workers=0)
                summary, _ = evaluation.evaluate(eval_model, loader, extra_setup, device,
                                                 num_keypoints=model.num_keypoints, box_rule=args.box_rule)
                evaluation.log(f"epoch {epoch} on {tag}: 2D {summary['acc_2d']:.2f}% "
                          f"(10 px {summary['acc_2d_10px']:.2f}%)")
                result["row"].update({f"{tag}:{k}": summary[k] for k in (LOG_ACC_5PX, LOG_ACC_10PX, "mean_err_corner")})
            return result
        return evaluate_and_count

    variant = training.Variant(check_inputs=check, train_set=train_set, evaluation=make_evaluation,
                               outputs=lambda state, backup: print_outputs(args, backup, state),
                               cost_keys=COST_KEYS)
    return training.run(args, variant)


def print_outputs(args, backup: Path, state: dict) -> None:
    best = backup / engine.BEST_WEIGHTS
    if best.is_file():
        a5, a10 = training.best_accuracies(state)
        print(f"\noutputs in {backup}/: {engine.BEST_WEIGHTS} (the best test: 2-D accuracy {a5:.2f}% at 5 px, "
              f"{a10:.2f}% at 10 px), last.weights, {engine.CHECKPOINT}, costs.npz, metrics.csv, metrics.jsonl, "
              f"training.png")
    else:
        print(f"\noutputs in {backup}/: no {engine.BEST_WEIGHTS}: no evaluation was meaningful (the confidence term "
              f"was still off); last.weights holds the final state, {engine.CHECKPOINT} continues with --resume")
        best = backup / engine.LAST_WEIGHTS
    # the test size and box rule travel in model_info.json beside the weights (D56)
    score = f"python valid.py --datacfg {args.datacfg} --modelcfg {args.modelcfg} --weightfile {best}"
    if args.mesh is not None:
        print(mesh_job.closing_commands(score, args.datacfg, args.modelcfg, best, multi=False))
    else:
        print(f"score it with:\n  {score}")


def main_cli(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    if args.mesh is not None and len(args.mesh) > 1:  # several meshes: a multi-object model (design §7.7)
        from multi_obj_pose_estimation import train_multi

        return train_multi.main_cli(argv)
    return main(args)


if __name__ == "__main__":
    run_cli(main_cli, prog="train.py")
