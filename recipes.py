"""Training recipes: the optimiser, the learning-rate schedule, the loss options and the data options.

Two recipes (docs/design.md, "Training recipes"):

    original  the originals' recipe exactly: SGD with lr/batch and decay*batch on a loss summed over
              the batch, the cfg's step schedule counted in epochs (single object) or batches
              (multi object), no confidence term for the first `pretrain_num_epochs` epochs,
              the Pillow augmentation with a new background for every sample.
    fast      a modern recipe for quick convergence on small budgets: AdamW with warm-up and cosine
              decay, the loss averaged over the batch, EMA weights for evaluation, a confidence
              target with a floor (it cannot collapse while the points are still far off), the
              confidence term from the first step, the corners also regressed by the cells next
              to the centroid's, lighter augmentation with the cv2 loader, a smaller input size.

`original` is the default whenever a data cfg is given, so reproductions are unchanged; the main
job (no data cfg) uses `fast`. A schedule maps the training state to a learning rate: by the batch
counter, or, with a time budget, by the fraction of the budget spent, so that a run of
`--minutes M` decays over exactly M minutes of training.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

RECIPES = ("original", "fast")


@dataclass(frozen=True)
class FastRecipe:
    """The `fast` recipe's constants (measured on the synthetic set; docs/results.md)."""
    lr: float = 3e-3
    weight_decay: float = 5e-4  # decoupled (AdamW); BN and biases are not decayed
    betas: tuple = (0.9, 0.999)
    warmup: float = 0.03  # fraction of the run
    final_lr_fraction: float = 0.01  # the cosine ends at lr * this
    ema_decay: float = 0.999
    conf_floor: float = 0.5
    noobject_scale: float = 0.1
    neighbour_cells: int = 4  # the cells next to the centroid's also regress the corners
    neighbour_conf_scale: float = 1.0  # ... and are pushed to confidence 0 harder than other background cells
    frozen_convs: int = 1  # the first conv block keeps its pretrained weights: its backward is a third of a step
    size: int = 256
    batch: int = 8  # more steps per image than 16, a little better for the same images (docs/results.md)
    jitter: float = 0.1
    bg_prob: float = 0.0  # keep the image's own background (synthetic and real sets alike)...
    bg_prob_with_dir: float = 0.5  # ...unless --bg-dir gives real backgrounds: then half the samples
    coord_loss: str = "l1"  # D55: at equal images 15.8 % vs 10.4 % at 5 px (docs/results.md)
    box_rule: str = "vote"  # D54: the evaluations' rule, written to model_info.json (+3 points at 5 px)


FAST = FastRecipe()


def freeze_first_convs(model: torch.nn.Module, n: int) -> list[str]:
    """Stop training the weights of the first n convolutions and their BatchNorm (not its statistics).

    On a CPU the backward pass of the first block (full resolution, 3 input channels) costs about
    a third of a training step of YOLO-LITE at 256 px; its pretrained low-level filters need no
    tuning. Returns the frozen parameter names.
    """
    frozen = []
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][:n]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][:n]
    names = {id(p): name for name, p in model.named_parameters()}
    for module in (*convs, *norms):
        for p in module.parameters():
            p.requires_grad_(False)
            frozen.append(names[id(p)])
    return frozen


# --------------------------------------------------------------------------------------------
# Optimisers
# --------------------------------------------------------------------------------------------

def build_sgd(model, lr: float, momentum: float, decay: float, batch: int, decay_bn_bias: bool = True):
    """The original optimiser: SGD with lr/batch and decay*batch (the loss is a batch sum).

    decay_bn_bias=False excludes BN and biases from the decay, as the originals meant to.
    """
    if decay_bn_bias:
        groups = [{"params": list(model.parameters())}]
    else:
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        rest = [p for p in model.parameters() if p.ndim > 1]
        groups = [{"params": rest}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr / batch, momentum=momentum, dampening=0,
                           weight_decay=decay * batch, nesterov=False)


def build_adamw(model, recipe: FastRecipe = FAST):
    """AdamW with decoupled weight decay on the conv weights only (frozen parameters left out)."""
    decay = [p for p in model.parameters() if p.ndim > 1 and p.requires_grad]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 and p.requires_grad]
    return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=recipe.betas)


# --------------------------------------------------------------------------------------------
# Schedules: state -> learning rate, and how it is written into the optimiser
# --------------------------------------------------------------------------------------------

def step_learning_rate(t: float, base_lr: float, steps, scales, step_unit: float = 1.0) -> float:
    """The original schedule before batch t: walk the steps (x step_unit), multiplying while t >= step."""
    lr = base_lr
    for step, scale in zip(steps, scales):
        step = step * step_unit
        if t < step:
            break
        lr *= scale
        if t == step:
            break
    return lr


class StepSchedule:
    """The cfg's step schedule; the optimiser's lr is lr / batch (the loss is a batch sum)."""

    def __init__(self, base_lr: float, steps, scales, step_unit: float, batch: int, budget_s: float | None = None):
        self.base_lr, self.steps, self.scales = float(base_lr), list(steps), list(scales)
        self.step_unit, self.batch = float(step_unit), int(batch)
        self.budget_s = budget_s

    def lr(self, state: dict) -> float:
        return step_learning_rate(state["iteration"], self.base_lr, self.steps, self.scales, self.step_unit)

    def apply(self, optimizer, lr: float) -> None:
        for g in optimizer.param_groups:
            g["lr"] = lr / self.batch


class CosineSchedule:
    """Linear warm-up then cosine decay to final_fraction * lr, over a number of batches or a time budget.

    Progress is `iteration / total_iters`, or `train_seconds / budget_s` when a budget is given.
    """

    def __init__(self, base_lr: float, warmup: float, final_fraction: float, total_iters: int | None = None,
                 budget_s: float | None = None):
        if total_iters is None and budget_s is None:
            raise ValueError("a cosine schedule needs a number of batches or a time budget")
        self.base_lr, self.warmup, self.final_fraction = float(base_lr), float(warmup), float(final_fraction)
        self.total_iters, self.budget_s = total_iters, budget_s

    def progress(self, state: dict) -> float:
        if self.budget_s:
            return min(state["train_seconds"] / self.budget_s, 1.0)
        return min(state["iteration"] / max(self.total_iters, 1), 1.0)

    def lr(self, state: dict) -> float:
        p = self.progress(state)
        if p < self.warmup:
            return self.base_lr * max(p / self.warmup, 0.01)
        q = (p - self.warmup) / max(1.0 - self.warmup, 1e-9)
        f = self.final_fraction
        return self.base_lr * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * q)))

    def apply(self, optimizer, lr: float) -> None:
        for g in optimizer.param_groups:
            g["lr"] = lr


# --------------------------------------------------------------------------------------------
# EMA weights
# --------------------------------------------------------------------------------------------

class ModelEMA:
    """An exponential moving average of a model's parameters (buffers are copied).

    The decay ramps up as min(decay, (1 + n) / (10 + n)) so that early averages are not dominated
    by the random head. `module` is a full copy of the model, used for evaluation and for the
    saved best weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float = FAST.ema_decay):
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = float(decay)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates, self.decay = int(state["updates"]), float(state["decay"])


# --------------------------------------------------------------------------------------------
# The mesh job: `train.py --mesh` and `train_multi.py --mesh` (docs/design.md §7.7)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeshJob:
    """What `--mesh` renders and trains when no flag says otherwise: the one place of these numbers.

    The set: images_per_object rendered images of each mesh, scenes OCCLUSION-style scenes of the
    meshes together (multi-object only), test_fraction of them held out as the rendered test split.
    The run: the fast recipe (design §7.6) on `modelcfg` from `initweights`, at train_size and
    test_size, for `epochs`, tested every eval_every epochs, each test image through input_filter
    (D69); `flags` adds script flags (the multi-object sample and anchor rule). Each is a flag away
    (--images-per-object, --scenes, --modelcfg, --initweightfile, --train-size, --test-size,
    --epochs or --minutes, --eval-every, --input-filter).
    """
    images_per_object: int
    scenes: int
    test_fraction: float
    modelcfg: str
    initweights: str
    train_size: int
    test_size: int
    epochs: int
    eval_every: int
    input_filter: str = "none"  # what every test image goes through (D69), written to model_info.json
    flags: tuple = ()  # (flag dest, value) pairs of one script

    def defaults(self) -> dict:
        """The flag values of the job (cli.fill_main_job_defaults: a --minutes budget replaces the epochs)."""
        return {"recipe": "fast", "images_per_object": self.images_per_object, "scenes": self.scenes,
                "modelcfg": self.modelcfg, "initweightfile": self.initweights, "train_size": self.train_size,
                "test_size": self.test_size, "epochs": self.epochs, "eval_every": self.eval_every,
                "input_filter": self.input_filter,
                **dict(self.flags)}


# First numbers, to be tuned on the real frames of issue 34 (docs/results.md); not tuned per object.
MESH = MeshJob(
    images_per_object=6000,  # distinct renders beat repeated epochs at equal images (the main job's finding)
    scenes=0,  # one object: no scenes
    test_fraction=0.1,  # 600 rendered test images: a 95 % interval of about +-4 points
    modelcfg="cfg/yolo-lite-trial3-pose.cfg",  # YOLO-LITE trial 3, the main job's network: fast on a CPU
    initweights="weights/tiny-yolov2-trial3-voc.weights",  # its VOC backbone
    train_size=416,  # a user's object covers ~50 px of 640x480 (LINEMOD's ape): 256 px leaves it ~20 px
    test_size=416,  # tested at the size it trains at
    epochs=12,  # an epoch budget: the same model on every machine (design §7.6)
    eval_every=3,  # four tests: model.weights is the best of them (training.best_score)
    input_filter="median:5",  # real frames within 10 px: can 2 -> 5 of 15, ape 13 -> 10 (D69, docs/results.md)
)
# Several meshes: the multi-object main job's network and sample (train_multi.py, D65) on rendered scenes.
MESH_MULTI = MeshJob(
    images_per_object=20,  # the per-object lists of the layout; training reads the scenes (paste off)
    scenes=6000,  # OCCLUSION-style scenes where the meshes occlude each other
    test_fraction=0.1,
    modelcfg="multi_obj_pose_estimation/cfg/yolo-lite-trial3-multi3.cfg",  # 13 classes, one anchor per object
    initweights="weights/tiny-yolov2-trial3-voc.weights",
    train_size=416,
    test_size=416,
    epochs=12,
    eval_every=3,
    flags=(("paste", "off"), ("anchor_rule", "class")),  # the scenes show every object; one head per object
)
