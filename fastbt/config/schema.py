"""The run configuration's schema: typed, frozen sections, declared once; the only home of defaults.

Defaults are the paper recipe (facebookresearch/barlowtwins, main.py); configs/base.yaml mirrors
them (a test keeps it equal). `RANGES` are the checks made after the types; `derive` computes the
values that follow from the config and the run's world (per-GPU batch, steps per epoch, base LR).
Loading, checking and writing a config: `fastbt.config` (the loader is `fastbt.config.loader`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from fastbt.config.values import OneOf
from fastbt.errors import ConfigError
from pipelines.augment import AugSpec
from pipelines.convert import options as convert_options

@dataclass(frozen=True)
class DataConfig:
    backend: Annotated[str, OneOf("pipelines.backends:BACKENDS")] = "ffcv"  # ffcv, dali, torchvision, ...
    path: str = ""  # a .beton, a folder of DALI shards, or an image folder (torchvision backend)
    workers: int = 8  # decode processes/threads per training process (torchvision: 0 = in-process)


@dataclass(frozen=True)
class ModelConfig:
    arch: Annotated[str, OneOf("fastbt.train.model:ARCHS")] = "resnet50"  # any torchvision classifier
    projector: tuple[int, ...] = (8192, 8192, 8192)  # hidden and output sizes after the backbone


@dataclass(frozen=True)
class LossConfig:
    name: Annotated[str, OneOf("fastbt.train.losses:LOSSES")] = "barlow_twins"
    lambd: float = 0.0051  # weight of the off-diagonal (redundancy reduction) term
    scale: float = 1.0  # multiplies the loss; 1/world_size reproduces the official gradients
    mode: Literal["auto", "gram", "direct"] = "auto"  # how the fused op computes it (fastbt.train.ops)


@dataclass(frozen=True)
class OptimConfig:
    lr_weights: float = 0.2  # multiplies the base LR (batch/256) for weights
    lr_biases: float = 0.0048  # ... and for biases and BN parameters (p.ndim == 1)
    weight_decay: float = 1e-6
    momentum: float = 0.9
    eta: float = 0.001  # LARS trust coefficient
    warmup_epochs: float = 10.0
    final_lr_ratio: float = 0.001  # the cosine ends at base LR x this


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 2048  # global, over all processes
    seed: int = 0
    out_dir: str = "runs/default"
    checkpoint_every_steps: int = 0  # 0: only by time and at the end
    checkpoint_every_minutes: float = 30.0
    # with checkpoints in out_dir: auto = resume if the config matches (fastbt/train/rundir.py lists the
    # keys that may differ), force = resume with the new values, restart = set the old files aside
    resume: Literal["auto", "force", "restart"] = "auto"


@dataclass(frozen=True)
class RuntimeConfig:
    """Compile and precision: how the step runs, not what it computes."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: Optional[bool] = None  # None (null): on for CUDA, off for CPU (7x slower there)
    compile: bool = True
    compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"] = "default"
    dist_timeout_s: int = 600  # a collective waiting this long for a lost process fails the run


@dataclass(frozen=True)
class LoggingConfig:
    every_steps: int = 50  # host syncs for metrics happen only this often
    progress_bar: bool = True
    tensorboard: bool = False  # also write log.jsonl's scalars to RUN_DIR/tb (needs fastbt[tensorboard])


@dataclass(frozen=True)
class ProfileConfig:
    steps: int = 10  # measured steps per window (and in the per-phase breakdown)
    repeats: int = 5  # windows of each kind (loader, step, end to end), interleaved; median + spread
    warmup_steps: int = 10  # excluded from rates, reported apart
    trace: bool = False  # also write a torch.profiler trace of a few steps
    trace_steps: int = 5


@dataclass(frozen=True)
class KnnConfig:
    k: int = 20  # weighted kNN on cosine similarity, as the common SSL protocol
    temperature: float = 0.07  # neighbour weight exp(similarity / temperature)
    every_epochs: int = 0  # online monitor during pretraining on eval.train / eval.val; 0: off


@dataclass(frozen=True)
class LinearConfig:
    """The official linear probe (facebookresearch/barlowtwins evaluate.py, frozen backbone)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.3  # cosine to 0 over the epochs, stepped once per epoch
    momentum: float = 0.9
    weight_decay: float = 1e-6
    init_std: float = 0.01  # head weights ~ N(0, init_std), bias 0
    crop_scale: tuple[float, float] = (0.08, 1.0)  # training crops: random-resized-crop + flip
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # torchvision's RRC default
    seed: int = 0


@dataclass(frozen=True)
class FinetuneConfig:
    """Semi-supervised fine-tuning of the whole network (evaluate.py --weights finetune; the README's
    1% / 10% command: 20 epochs, lr 0.002 backbone / 0.5 classifier, no weight decay)."""

    epochs: int = 20
    batch_size: int = 256  # global: split over the processes
    lr_backbone: float = 0.002  # both cosine to 0 over the epochs, stepped once per epoch
    lr_classifier: float = 0.5
    weight_decay: float = 0.0
    momentum: float = 0.9
    init_std: float = 0.01  # classifier weights ~ N(0, init_std), bias 0
    crop_scale: tuple[float, float] = (0.08, 1.0)  # training crops: random-resized-crop + flip
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # torchvision's RRC default
    seed: int = 0  # of the classifier's init, the crops and a drawn label subset


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: `fastbt eval knn|linear|finetune` and the online kNN monitor."""

    train: str = ""  # labeled sets: an image folder, or a converted dataset folder (manifest.json)
    val: str = ""
    resize: int = 256  # center crops: resize the short side to this, then crop `size`
    size: int = 224
    batch_size: int = 256  # images per forward pass when extracting features
    knn: KnnConfig = field(default_factory=KnnConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass(frozen=True)
class ConvertConfig:
    """`fastbt convert`: how an image folder becomes a dataset (pipelines.convert.options.Options; the
    values were chosen with scripts/bench_convert.py, see docs/measurements.md)."""

    format: Annotated[str, OneOf("pipelines.backends:formats")] = "ffcv"  # what a converted dataset is
    max_resolution: int = convert_options.MAX_RESOLUTION  # the longest side, at most
    jpeg_quality: int = convert_options.JPEG_QUALITY
    shard_size: int = convert_options.SHARD_SIZE  # images per shard: the unit of parallelism and resume
    limit: Optional[int] = None  # convert only this many files, evenly spread (quick trials)
    max_unreadable: float = convert_options.MAX_UNREADABLE  # fraction that may fail to decode
    seed: int = convert_options.SEED  # of the shuffle over the shards (recorded in the manifest)
    workers: Optional[int] = None  # processes; null: every CPU core available


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugSpec = field(default_factory=AugSpec)  # the two-view recipe (pipelines/augment/)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)


# --------------------------------------------------------------------------------------------
# Derived values: computed once, here.


@dataclass(frozen=True)
class Derived:
    world_size: int
    per_device_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    base_lr: float  # batch/256, as in the paper


def per_device_batch(cfg: Config, world_size: int) -> int:
    batch = cfg.train.batch_size
    if batch % world_size:
        raise ConfigError(f"train.batch_size={batch} is not divisible by the world size {world_size}")
    return batch // world_size


def derive(cfg: Config, world_size: int, dataset_size: int) -> Derived:
    """The numbers that follow from the config, the number of processes and the dataset size."""
    batch = cfg.train.batch_size
    per_device = per_device_batch(cfg, world_size)
    steps_per_epoch = dataset_size // batch  # drop_last, as every loader does
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={batch} is larger than the dataset ({dataset_size} images)")
    return Derived(
        world_size=world_size,
        per_device_batch=per_device,
        steps_per_epoch=steps_per_epoch,
        total_steps=cfg.train.epochs * steps_per_epoch,
        warmup_steps=round(cfg.optim.warmup_epochs * steps_per_epoch),
        base_lr=batch / 256,
    )


# Range rules, checked after types: (keys, test, what the value must be).
RANGES = [
    (("train.epochs", "train.batch_size", "logging.every_steps", "profile.steps",
      "profile.trace_steps", "eval.resize", "eval.size", "eval.batch_size", "eval.knn.k",
      "eval.knn.temperature", "eval.linear.epochs", "eval.linear.batch_size", "eval.linear.init_std",
      "eval.finetune.epochs", "eval.finetune.batch_size", "eval.finetune.init_std"),
     lambda v: v > 0, "> 0"),
    (("profile.repeats", "runtime.dist_timeout_s"), lambda v: v > 0, "> 0"),
    (("loss.lambd", "loss.scale", "optim.lr_weights", "optim.lr_biases", "optim.weight_decay",
      "optim.momentum", "optim.eta", "optim.warmup_epochs", "optim.final_lr_ratio",
      "train.checkpoint_every_steps", "train.checkpoint_every_minutes", "profile.warmup_steps",
      "data.workers", "eval.knn.every_epochs", "eval.linear.lr", "eval.linear.momentum",
      "eval.linear.weight_decay", "eval.finetune.lr_backbone", "eval.finetune.lr_classifier",
      "eval.finetune.weight_decay", "eval.finetune.momentum"),
     lambda v: v >= 0, ">= 0"),
    (("eval.linear.crop_scale", "eval.finetune.crop_scale"), lambda v: 0 < v[0] <= v[1] <= 1, "0 < lo <= hi <= 1"),
    (("model.projector",), lambda v: len(v) > 0 and min(v) > 0, "a non-empty list of positive sizes"),
]

