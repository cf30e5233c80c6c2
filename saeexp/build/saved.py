"""Plans of the commands that read a saved SAE (`saeexp-eval`, `saeexp-finetune`) or only a data config
(`saeexp-yardstick`): their config read once, the data source built."""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import saeexp.build.resolvers  # noqa: F401  (the config tree's resolvers)
from saeexp.build.plan import config_dirs, make, plain, source_from_config
from saeexp.errors import ConfigError
from saeexp.io import load_meta, sae_dir, saved_data_config
from saeexp.plan import FinetunePlan, SavedPlan, YardstickPlan


def plan_saved(cfg: DictConfig) -> SavedPlan:
    """`sae=PATH [data=...] [out=DIR]`: the SAE's data config from the command line, else from its meta.json (a
    SAELens folder records none)."""
    path = Path(str(cfg.sae))
    meta = load_meta(path)
    if cfg.get("data"):
        data = plain(cfg.data)
    elif "saelens" in meta:
        md = meta["saelens"].get("metadata") or {}
        hint = (f" (its cfg.json names model {md.get('model_name')!r}, hook {md.get('hook_name')!r}: e.g. data=lm "
                f"data.hook={md.get('hook_name')})" if md.get("hook_name") else "")
        raise ConfigError(f"{str(path)!r} is a SAELens folder with no saeexp data config: pass data=... on the "
                          f"command line{hint}")
    else:
        data = saved_data_config(meta, repr(str(sae_dir(path) / "meta.json")))
    return SavedPlan(path=path, source=make(OmegaConf.create(data)), data_config=data, seed=int(cfg.get("seed", 0)),
                     batch_size=int(cfg.batch_size), runs_root=Path(str(cfg.paths.runs_root)),
                     out=Path(str(cfg.out)) if cfg.get("out") else None, overwrite=bool(cfg.get("overwrite", False)),
                     config_dirs=config_dirs())


def plan_finetune(cfg: DictConfig) -> FinetunePlan:
    return FinetunePlan(saved=plan_saved(cfg), method=str(cfg.method), tokens=int(cfg.tokens), lr=float(cfg.lr),
                        lr_decay_frac=float(cfg.lr_decay_frac))


def plan_yardstick(cfg: DictConfig) -> YardstickPlan:
    """`+yardstick.rank=32 +yardstick.sample_tokens=...` override the defaults (64, 262144)."""
    ys = cfg.get("yardstick") or {}
    return YardstickPlan(source=make(cfg.data), seed=int(cfg.seed), rank=int(ys.get("rank", 64)),
                         sample_tokens=int(ys.get("sample_tokens", 262_144)))


def plan_features(run: Path):
    """The data source a finished data=lm run was trained on, from its meta.json (a dashboard needs its token
    contexts and the model's unembedding)."""
    if not (run / "sae").is_dir():
        raise ConfigError(f"{str(run)!r}: not a run directory (expected {run / 'sae'})")
    data = load_meta(run).get("data") or {}
    if "hook" not in data:
        raise ConfigError(f"{str(run)!r} was trained on {data.get('_target_', 'unknown data')}: dashboards need a "
                          "data=lm run (token contexts and the model's unembedding)")
    return make(OmegaConf.create(saved_data_config({"data": data}, repr(str(run / "sae" / "meta.json")))))


def prepare_data(data_cfg: dict) -> dict:
    """Build (or find) the cache of one data config: a SLURM job before a sweep's array (a job function, so it
    lives in the package, where submitit's unpickling finds it)."""
    t0 = time.perf_counter()
    source = source_from_config(data_cfg)
    source.prepare()
    return {"seconds": time.perf_counter() - t0, "describe": source.describe()}
