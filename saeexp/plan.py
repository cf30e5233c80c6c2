"""The typed run plan: one training run, resolved once from the composed config (saeexp.build.plan_run).

Below the entry (saeexp.cli) and build (saeexp.build) layers no function receives a config: they take a
`RunPlan` or the parts of it they use. A packed sweep holds several plans that share one data source.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

ControlName = Literal["coefficient", "k", "target_l0"]


@dataclass(frozen=True)
class Schedule:
    """The train.* keys, in steps where the step uses them."""

    tokens: int
    batch_size: int
    steps: int
    lr_warmup_steps: int
    lr_decay_steps: int
    sparsity_warmup_steps: int
    grad_clip: float | None       # on the loss summed over d_in (saeexp.train.step.clip_grad)
    dead_window_tokens: int       # the dead-latent metric's window
    log_every: int
    checkpoint_every: int
    target_l0: float | None       # adapt the sparsity coefficient (or set k) to reach this L0
    matmul_precision: str
    reuse_memory: bool


@dataclass(frozen=True)
class Init:
    """Initialisation from a data sample (saeexp.train.init)."""

    scale_inputs: bool
    b_dec_init: str
    fit_encoder_scale: bool
    sample_tokens: int


@dataclass(frozen=True)
class Control:
    """The run's sparsity control, the x of its Pareto curve: a coefficient, k or a target L0, with its keys."""

    name: ControlName
    value: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Tracking:
    """Where and how the run is tracked: its MLflow identity, tags and (secret-free) params."""

    uri: str
    experiment: str
    tags: dict[str, str]
    params: dict[str, str]
    config_yaml: str              # the composed config, secrets masked: the run's config.yaml artifact
    make_logger: Callable[..., Any]  # (run_id=..., artifact_location=...) -> a Lightning MLflow logger


@dataclass
class RunPlan:
    """Everything `saeexp.jobs.train.train` needs: built objects and typed settings, no config."""

    run_dir: Path | None          # None when composed without Hydra's runtime (a notebook): `train` needs one
    seed: int
    overwrite: bool
    schedule: Schedule
    init: Init
    control: Control
    tracking: Tracking
    source: Any                   # saeexp.data.base.ActivationSource (shared by the plans of a pack)
    data_config: dict             # its resolved config: saved with the SAE, and what a pack groups on
    sae: Any                      # saeexp.sae.base.SAE, built, not yet initialised from data
    optimizer: Callable[..., Any]     # params -> torch optimiser
    make_trainer: Callable[..., Any]  # (**kwargs) -> lightning.Trainer
    penalties: list = field(default_factory=list)   # LossTerms: the sparsity penalty first, then extra terms
    resampler: Any = None         # saeexp.resample.anthropic.AnthropicResampler, or None
    callbacks: list = field(default_factory=list)   # extra Lightning callbacks (preemption, a user's)
    model_config: dict = field(default_factory=dict)  # the resolved model node: saved with the SAE
    variant: str | None = None    # the model config's key (`relu`, or one of a user's --config-dir): saved too
    dashboard: bool = False       # write features.html at the end (when the source can)
    trainer_config: dict = field(default_factory=dict)  # the resolved trainer node: what a pack groups on too


@dataclass
class SavedPlan:
    """A saved SAE (a run's `sae/`, a run directory or a SAELens folder) and the data to score it on."""

    path: Path
    source: Any                   # the data source: the command line's `data=`, else the one the SAE records
    data_config: dict
    seed: int
    batch_size: int
    runs_root: Path
    out: Path | None = None       # where results go; None: the command's default under the runs root
    overwrite: bool = False       # replace an existing result there
    config_dirs: tuple[Path, ...] = ()  # the command's --config-dirs: their model configs may name the SAE's class


@dataclass
class FinetunePlan:
    """`saeexp-finetune`: reference 003's fine-tuning of a saved SAE."""

    saved: SavedPlan
    method: str
    tokens: int
    lr: float
    lr_decay_frac: float


@dataclass
class YardstickPlan:
    """`saeexp-yardstick`: the rank-r PCA reconstruction scored on a training config's data."""

    source: Any
    seed: int
    rank: int
    sample_tokens: int
