"""`saeexp-eval`: score any saved SAE on a data config's fixed held-out set."""
from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from saeexp.errors import ConfigError
from saeexp.io import load_meta, load_sae, sae_dir, saved_data_config
from saeexp.report import score, summary, write_report


def evaluate_saved(cfg: DictConfig) -> dict:
    """Load the SAE, undo the folded input scale, score it like the end of training does, write eval metrics."""
    path = Path(cfg.sae)
    sae = load_sae(path)
    meta = load_meta(path)
    data_cfg = cfg.get("data") or saved_data_config(meta, repr(str(sae_dir(path) / "meta.json")))
    source = instantiate(data_cfg)
    if source.d_in != sae.d_in:
        raise ConfigError(f"data.d_in={source.d_in} but the SAE at {str(path)!r} takes d_in={sae.d_in}")
    source.prepare()
    scale = float(meta["input_scale"])
    sae.fold_input_scale(1.0 / scale)  # back to the scaled space the metrics are stated in
    scalars, arrays = score(sae, source, scale, cfg.batch_size)
    saved = sae_dir(path)
    result = write_report(scalars, arrays, saved.parent, prefix="eval")
    print(f"saeexp-eval: {saved}\n  {summary(result)}\n  written to {saved.parent / 'eval_metrics.json'}")
    return result
