"""The one list of config keys that change no result: the run hash, its readable name and a sweep's series
leave them out (saeexp.build.identity, saeexp.report.series)."""
from __future__ import annotations

# keys that do not change what a run computes: where it writes and logs, how often it logs or checkpoints,
# how it is launched. A key ends an exclusion at a dot boundary (`paths` drops `paths.runs_root`, ...); a group
# override (`hydra/launcher=slurm`) counts as its dotted key.
RESULT_NEUTRAL = (
    "hydra", "paths", "logger", "name", "overwrite", "callbacks.preemption",
    "train.log_every", "train.checkpoint_every", "train.reuse_memory",
    "trainer.log_every_n_steps", "trainer.enable_model_summary", "trainer.enable_progress_bar",
    "trainer.plugins", "data.cache_dir", "features",
)
# not in the readable name although they change the result (the hash has their effect): the experiment preset
NAMELESS = ("experiment",)


def neutral(key: str, extra: tuple[str, ...] = ()) -> bool:
    key = key.replace("/", ".")
    return any(key == n or key.startswith(n + ".") for n in RESULT_NEUTRAL + tuple(extra))
