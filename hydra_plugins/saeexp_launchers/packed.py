"""The launcher classes Hydra instantiates for packed sweeps (Hydra loads launchers only from `hydra_plugins`),
and the schema of `hydra/launcher=slurm`: hydra-submitit-launcher's plus the pack size.

Hydra's plugin scan imports this module whenever a config is composed (a notebook too), so it imports nothing
of saeexp's at the top: the work is in saeexp.cli.packed, imported when a sweep launches.
"""
from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class PackedLauncher(Launcher):
    """`hydra/launcher=packed`: the sweep in this process, its runs trained in packs that share one stream."""

    def __init__(self, pack: int = 0, memory_gb: Optional[float] = None) -> None:
        self.pack, self.memory_gb = int(pack or 0), memory_gb
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx):
        from saeexp.cli.packed import launch_local  # noqa: PLC0415 - see the module docstring

        return launch_local(self, job_overrides, initial_job_idx)


class PackedSlurmLauncher(SlurmLauncher):
    """`hydra/launcher=slurm`: hydra-submitit-launcher's array, with `pack` runs per task trained as packs."""

    def __init__(self, pack: int = 1, memory_gb: Optional[float] = None, **params) -> None:
        super().__init__(**params)
        self.pack, self.memory_gb = int(pack or 1), memory_gb

    def __call__(self, *args):
        if self.pack <= 1:
            return super().__call__(*args)
        from saeexp.cli.packed import run_group  # noqa: PLC0415 - see the module docstring

        group_jobs, _, _label, singleton_state = args
        return run_group(self, group_jobs, singleton_state)

    def launch(self, job_overrides, initial_job_idx):
        if self.pack <= 1:
            return super().launch(job_overrides, initial_job_idx)
        from saeexp.cli.packed import launch_slurm_groups  # noqa: PLC0415 - see the module docstring

        return launch_slurm_groups(self, job_overrides, initial_job_idx)


@dataclass
class PackedSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.saeexp_launchers.packed.PackedSlurmLauncher"
    pack: int = 1                      # jobs per array task, trained as packs; 1: one job per task
    memory_gb: Optional[float] = None  # a pack's memory budget (null: 80% of the GPU's, half the free RAM on CPU)


ConfigStore.instance().store(group="hydra/launcher", name="saeexp_slurm", node=PackedSlurmQueueConf, provider="saeexp")
