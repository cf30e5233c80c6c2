"""End-of-run (and `saeexp-eval`) scoring: metrics.json, histograms, the learning verdict, final metrics in MLflow."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from saeexp import metrics as M
from saeexp.util.files import atomic_write_text


def score(sae, source, input_scale: float, batch_size: int = 4096, model_eval: bool = True) -> tuple[dict, dict]:
    """Metrics of an SAE (working in the scaled space) on the source's held-out set.

    Returns (scalars, arrays): scalars go to metrics.json and MLflow as `final/<name>`; arrays feed plots.
    """
    was_training = sae.training
    sae.eval()
    x_eval = source.heldout() * input_scale
    ev = M.evaluate(sae, x_eval, batch_size)
    density = ev.pop("density")
    dec_best = M.decoder_mmcs(sae.W_dec.detach())
    # with one feature there is no other decoder row to compare with: undefined (NaN, saved as null)
    mmcs = dec_best.mean().item() if sae.d_sae > 1 else float("nan")
    scalars = {**ev, "dec_mmcs": mmcs, "eval_tokens": x_eval.shape[0], "d_sae": sae.d_sae}
    truth = source.truth()
    if truth is not None:
        scalars.update(M.ground_truth_recovery(truth, sae.W_dec.detach()))
        if (truth_density := source.truth_density()) is not None:
            scalars["dense_unexplained"] = M.dense_unexplained(density, sae.W_dec.detach(), truth, truth_density)
    if model_eval and source.provides_model_eval:
        # sources backed by a model (data=lm) add metrics with the model in the loop (CE loss recovered)
        scalars.update(source.model_eval(sae, input_scale))
    sae.train(was_training)
    return scalars, {"density": density, "dec_mmcs": dec_best}


def histograms(arrays: dict, path: Path) -> Path:
    """Feature-density histogram (log10 firing frequency) and decoder nearest-neighbour cosines, one PNG."""
    import matplotlib  # noqa: PLC0415 - matplotlib is heavy: imported when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - as above

    density = arrays["density"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    live = density[density > 0]
    axes[0].hist(torch.log10(live).numpy(), bins=50)
    axes[0].set_xlabel("log10 feature density (fraction of eval tokens)")
    axes[0].set_title(f"feature density ({int((density == 0).sum())} dead not shown)")
    axes[1].hist(arrays["dec_mmcs"].numpy(), bins=50, range=(-0.1, 1.0))
    axes[1].set_xlabel("max cosine with another decoder row")
    axes[1].set_title("decoder geometry (dec_mmcs)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_report(scalars: dict, arrays: dict, run_dir: Path, logger=None, prefix: str = "final") -> dict:
    """metrics.json + PNG in the run directory; the same to MLflow when a logger is given."""
    run_dir.mkdir(parents=True, exist_ok=True)
    png = histograms(arrays, run_dir / f"{prefix}_histograms.png")
    # per-feature firing frequency on the evaluation set (an export's sparsity.safetensors); atomic, as the rest
    dpath = run_dir / f"{prefix}_density.safetensors"
    save_file({"density": arrays["density"].detach().cpu().float().contiguous()}, str(dpath) + ".tmp")
    os.replace(str(dpath) + ".tmp", dpath)
    clean = {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in scalars.items()}
    mpath = run_dir / ("metrics.json" if prefix == "final" else f"{prefix}_metrics.json")
    atomic_write_text(mpath, json.dumps(clean, indent=2, sort_keys=True))
    if logger is not None:
        # MLflow metric names allow [/\w.\- :] only: '@' becomes '_at_'
        nums = {f"{prefix}/{k}".replace("@", "_at_"): float(v) for k, v in scalars.items()
                if isinstance(v, (int, float)) and v == v}
        logger.log_metrics(nums)
        logger.experiment.log_artifact(logger.run_id, str(png))
        logger.experiment.log_artifact(logger.run_id, str(mpath))
    return clean


def summary(scalars: dict) -> str:
    keys = ["l0", "mse", "fvu", "l2_ratio", "gamma", "dead", "dense", "dense_unexplained", "dec_mmcs", "gt_mmcs",
            "gt_recovered@0.9", "ce_loss_recovered"]
    parts = []
    for k in keys:
        if k in scalars and scalars[k] is not None:
            v = scalars[k]
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return "  ".join(parts)
