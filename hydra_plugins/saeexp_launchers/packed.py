"""The classes Hydra instantiates for saeexp's launchers (Hydra only loads launchers from `hydra_plugins`), and
the schema of `hydra/launcher=slurm`: hydra-submitit-launcher's plus the pack size.

The code is saeexp.cli.packed; this module only names it where Hydra looks.
"""
from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

from saeexp.cli import packed as _packed


class PackedLauncher(_packed.PackedLauncher):
    """A sweep's jobs trained in packs that share one activation stream (saeexp.cli.packed)."""


class PackedSlurmLauncher(_packed.PackedSlurmLauncher):
    """A SLURM array whose tasks each train a group of the sweep's jobs in packs (saeexp.cli.packed)."""


@dataclass
class PackedSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.saeexp_launchers.packed.PackedSlurmLauncher"
    pack: int = 1                      # jobs per array task, trained as packs; 1: one job per task
    memory_gb: Optional[float] = None  # a pack's memory budget (null: 80% of the GPU's, half the free RAM on CPU)


ConfigStore.instance().store(group="hydra/launcher", name="saeexp_slurm", node=PackedSlurmQueueConf, provider="saeexp")
