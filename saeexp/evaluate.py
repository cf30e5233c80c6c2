"""`saeexp-eval`: score any saved SAE (a saeexp run, or a SAELens folder) on a data config's fixed held-out set."""
from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from saeexp.errors import ConfigError
from saeexp.io import load_meta, load_sae, sae_dir, saved_data_config
from saeexp.report import score, summary, write_report

SCALE_SAMPLE_TOKENS = 16384  # as train.init_sample_tokens: the input scale of an SAE that records none


def open_saved(cfg: DictConfig):
    """(path, SAE on raw activations, meta, prepared data source, input scale) for `cfg.sae`.

    A SAELens folder has no saeexp metadata: its data config comes from the command line, and the input scale
    (which only states MSE in saeexp's scaled space, E||x|| = sqrt(d_in)) is estimated from that data.
    """
    path = Path(cfg.sae)
    sae = load_sae(path)
    meta = load_meta(path)
    foreign = "saelens" in meta
    data_cfg = cfg.get("data") or (None if foreign else saved_data_config(meta, repr(str(sae_dir(path) / "meta.json"))))
    if data_cfg is None:
        md = meta["saelens"].get("metadata") or {}
        hint = (f" (its cfg.json names model {md.get('model_name')!r}, hook {md.get('hook_name')!r}: e.g. data=lm "
                f"data.hook={md.get('hook_name')})" if md.get("hook_name") else "")
        raise ConfigError(f"{str(path)!r} is a SAELens folder with no saeexp data config: pass data=... on the "
                          f"command line{hint}")
    source = instantiate(data_cfg)
    if source.d_in != sae.d_in:
        raise ConfigError(f"data.d_in={source.d_in} but the SAE at {str(path)!r} takes d_in={sae.d_in}")
    source.prepare()
    if foreign:
        from saeexp.train.init import input_scale

        scale = input_scale(source.sample(SCALE_SAMPLE_TOKENS, seed=int(cfg.get("seed", 0))))
        meta = {**meta, "input_scale": scale, "data": OmegaConf.to_container(data_cfg, resolve=True),
                "d_in": sae.d_in, "d_sae": sae.d_sae}
    else:
        scale = float(meta["input_scale"])
    return path, sae, meta, source, scale


def out_dir(cfg: DictConfig, path: Path, under_runs: str, saeexp_default: Path) -> Path:
    """Where results go: `out=` if given; for a SAELens folder under the runs root (never into the folder)."""
    from saeexp.interop import saelens

    if cfg.get("out"):
        out = Path(cfg.out)
    elif saelens.is_folder(path):
        out = Path(cfg.paths.runs_root) / under_runs
    else:
        return saeexp_default
    if saelens.is_folder(path) and out.resolve().is_relative_to(path.resolve()):
        raise ConfigError(f"out={str(out)!r} is inside the SAELens folder {str(path)!r}, which is never written to")
    return out


def evaluate_saved(cfg: DictConfig) -> dict:
    """Load the SAE, undo the folded input scale, score it like the end of training does, write eval metrics."""
    path, sae, meta, source, scale = open_saved(cfg)
    sae.fold_input_scale(1.0 / scale)  # back to the scaled space the metrics are stated in
    scalars, arrays = score(sae, source, scale, cfg.batch_size)
    saved = sae_dir(path)
    out = out_dir(cfg, path, f"eval/{path.resolve().name}", saved.parent)
    result = write_report(scalars, arrays, out, prefix="eval")
    print(f"saeexp-eval: {saved}\n  {summary(result)}\n  written to {out / 'eval_metrics.json'}")
    return result
