"""`saeexp-eval`: score any saved SAE (a saeexp run, or a SAELens folder) on a data config's fixed held-out set."""
from __future__ import annotations

from pathlib import Path

from saeexp.errors import ConfigError
from saeexp.interop import saelens
from saeexp.io import load_meta, load_sae, sae_dir
from saeexp.plan import SavedPlan
from saeexp.report.score import score, summary, write_report
from saeexp.train.init import input_scale

SCALE_SAMPLE_TOKENS = 16384  # as train.init_sample_tokens: the input scale of an SAE that records none


def open_saved(plan: SavedPlan):
    """(SAE on raw activations, meta, input scale) of `plan.path`, its source prepared.

    A SAELens folder has no saeexp metadata: the input scale (which only states MSE in saeexp's scaled space,
    E||x|| = sqrt(d_in)) is estimated from the plan's data.
    """
    sae, meta, source = load_sae(plan.path, config_dirs=plan.config_dirs), load_meta(plan.path), plan.source
    if source.d_in != sae.d_in:
        raise ConfigError(f"data.d_in={source.d_in} but the SAE at {str(plan.path)!r} takes d_in={sae.d_in}")
    source.prepare()
    if "saelens" in meta:
        scale = input_scale(source.sample(SCALE_SAMPLE_TOKENS, seed=plan.seed))
        meta = {**meta, "input_scale": scale, "data": plan.data_config, "d_in": sae.d_in, "d_sae": sae.d_sae}
    else:
        scale = float(meta["input_scale"])
    return sae, meta, scale


def out_dir(plan: SavedPlan, under_runs: str, saeexp_default: Path) -> Path:
    """Where results go: `out=` if given; for a SAELens folder under the runs root (never into the folder)."""
    path = plan.path
    if plan.out is not None:
        out = plan.out
    elif saelens.is_folder(path):
        out = plan.runs_root / under_runs
    else:
        return saeexp_default
    if saelens.is_folder(path) and out.resolve().is_relative_to(path.resolve()):
        raise ConfigError(f"out={str(out)!r} is inside the SAELens folder {str(path)!r}, which is never written to")
    return out


def evaluate_saved(plan: SavedPlan) -> dict:
    """Load the SAE, undo the folded input scale, score it like the end of training does, write eval metrics."""
    sae, meta, scale = open_saved(plan)
    sae.fold_input_scale(1.0 / scale)  # back to the scaled space the metrics are stated in
    scalars, arrays = score(sae, plan.source, scale, plan.batch_size)
    saved = sae_dir(plan.path)
    out = out_dir(plan, f"eval/{plan.path.resolve().name}", saved.parent)
    result = write_report(scalars, arrays, out, prefix="eval")
    print(f"saeexp-eval: {saved}\n  {summary(result)}\n  written to {out / 'eval_metrics.json'}")
    return result
