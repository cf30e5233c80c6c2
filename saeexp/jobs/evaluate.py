"""`saeexp-eval`: score any saved SAE (a saeexp run, or a SAELens folder) on a data config's fixed held-out set."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from saeexp.errors import ConfigError
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


def identity(plan: SavedPlan) -> str:
    """12 hex digits over the SAE's files and the data config: the same SAE scored on other data, or another SAE
    of the same folder name, gets another result directory."""
    h = hashlib.sha256(json.dumps(plan.data_config, sort_keys=True, default=str).encode())
    folder = sae_dir(plan.path)
    for f in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".yaml", ".json")
                    and p.name != "meta.json"):  # meta.json also records where it was saved from
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def out_dir(plan: SavedPlan, command: str, suffix: str, result: str) -> Path:
    """Where results go: `out=` if given, else `<runs root>/<command>/<folder name><suffix>__<identity>`; never
    beside or inside the SAE read (two SAEs in one parent overwrote each other's results), and a directory that
    already holds `result` only with overwrite=true."""
    path = sae_dir(plan.path)
    name = (path.parent.name if path.name == "sae" else path.name) or "sae"
    out = plan.out if plan.out is not None else plan.runs_root / command / f"{name}{suffix}__{identity(plan)}"
    if out.resolve().is_relative_to(path.resolve()):
        raise ConfigError(f"out={str(out)!r} is inside the SAE folder {str(path)!r}, which is never written to")
    if (out / result).exists() and not plan.overwrite:
        raise ConfigError(f"{str(out / result)!r} already exists: expected a new out= directory, or overwrite=true "
                          "to replace it")
    return out


def evaluate_saved(plan: SavedPlan) -> dict:
    """Load the SAE, undo the folded input scale, score it like the end of training does, write eval metrics."""
    sae, meta, scale = open_saved(plan)
    sae.fold_input_scale(1.0 / scale)  # back to the scaled space the metrics are stated in
    scalars, arrays = score(sae, plan.source, scale, plan.batch_size)
    saved = sae_dir(plan.path)
    out = out_dir(plan, "eval", "", "eval_metrics.json")
    result = write_report(scalars, arrays, out, prefix="eval")
    print(f"saeexp-eval: {saved}\n  {summary(result)}\n  written to {out / 'eval_metrics.json'}")
    return result
