"""Keys that moved when each config group came to own its keys: an old one fails with one line naming the new.

Checked on the command line before Hydra composes (Hydra's own error for an unknown key names neither the
new key nor why). A prefix ending in "." renames every key under it (`ortho.coef` -> `loss.extra.ortho.coef`).
"""
from __future__ import annotations

from pathlib import Path

from saeexp.configtree import CONF_DIR
from saeexp.errors import ConfigError

RENAMED = (
    ("loss.sparsity.coef", "loss.l1", "the penalty's one coefficient key; loss.l0 with loss=l0"),
    ("loss.sparsity.", "loss.", "the loss group is the penalty itself"),
    ("loss.sparsity", "loss", "choose the penalty with loss=l1|l1_decoder_norm|l0|none"),
    ("loss.decoder_norm", "model.decoder_norm", "the model owns its decoder handling"),
    ("loss.init_dec_norm", "model.init_dec_norm", "the model owns its decoder handling"),
    ("extra_losses.ortho.", "ortho.", "the orthogonality term is chosen and tuned under `ortho`"),
    ("loss.extra.ortho.", "ortho.", "the orthogonality term is chosen and tuned under `ortho`"),
    ("extra_losses", "ortho", "the one extra term is the orthogonality term: ortho=nearest"),
    ("loss.extra", "ortho", "the one extra term is the orthogonality term: ortho=nearest"),
    ("logger.experiment", "name", "the MLflow experiment and the runs subfolder are named by `name=`"),
)
PRESETS = ("demo", "relu_grid", "variants_matched")  # former primary configs, now files of conf/experiment/


def _split(arg: str) -> tuple[str, str | None]:
    key, eq, value = arg.lstrip("~+").partition("=")
    return key, (value if eq else None)


def experiments(config_dirs: list[str]) -> set[str]:
    """The experiment files of the package's config tree and of the command's `--config-dir`s."""
    dirs = [CONF_DIR, *(Path(d) for d in config_dirs)]
    return {p.stem for d in dirs for p in (d / "experiment").glob("*.yaml")}


def check_argv(argv: list[str]) -> None:
    """Raise a one-line ConfigError for a renamed key, an `experiment=` that names no experiment file, or a
    preset asked for by its former `--config-name`."""
    config_dirs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config-dir", "-cd")]
    config_dirs += [a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]
    for i, arg in enumerate(argv):
        name = argv[i + 1] if arg in ("--config-name", "-cn") and i + 1 < len(argv) else None
        name = arg.split("=", 1)[1] if arg.startswith("--config-name=") else name
        if name in PRESETS:
            raise ConfigError(f"--config-name {name}: the preset is now an experiment; use experiment={name}")
        if arg.startswith("-"):
            continue
        key, value = _split(arg)
        for old, new, why in RENAMED:
            if key == old or (old.endswith(".") and key.startswith(old)):
                moved = new + key[len(old):] if old.endswith(".") else new
                raise ConfigError(f"{key}: renamed; use {moved}{'' if value is None else '=' + value} ({why})")
        if key == "experiment" and value is not None and "," not in value and value not in experiments(config_dirs):
            known = ", ".join(sorted(experiments(config_dirs)))
            raise ConfigError(f"experiment={value}: not a file of conf/experiment/ ({known}); "
                              f"the MLflow experiment name is now name={value}")
