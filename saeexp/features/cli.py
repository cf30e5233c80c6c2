"""`saeexp-features RUN [--out FILE]`: the feature dashboard of a `data=lm` run, written to RUN/features.html and
logged to the run's MLflow run; also called at the end of single `data=lm` runs (`features.enabled`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saeexp.errors import ConfigError


def wanted(cfg, source) -> bool:
    """At the end of training: on for a single run on an LM source, off under -m unless features.in_sweeps."""
    feats = cfg.get("features") or {}
    if not feats.get("enabled", False) or not source.provides_windows:
        return False
    if not source.provides_model_eval:  # data.model_eval=false: this run never loads the model
        print("saeexp: no feature dashboard (data.model_eval=false: no model for the unembedding); "
              "`saeexp-features RUN` builds it")
        return False
    try:
        from hydra.core.hydra_config import HydraConfig

        multirun = HydraConfig.get().mode.name == "MULTIRUN"
    except (ValueError, AttributeError):
        multirun = False
    return not multirun or bool(feats.get("in_sweeps", False))


def dashboard(sae, source, run_dir: Path, client=None, run_id: str | None = None, out: Path | None = None) -> dict:
    """Write the dashboard of `sae` (raw activations) on `source`; log it as an MLflow artifact when given a run."""
    from saeexp.features.build import write

    out = out or run_dir / "features.html"
    info = write(sae, source, out, f"saeexp features: {run_dir.name} ({source.model}, {source.hook})")
    if client is not None and run_id is not None:
        client.log_artifact(run_id, str(out))
    print(f"saeexp: feature dashboard {out} ({info['bytes'] / 1e6:.1f} MB, {info['seconds']:.1f} s)")
    return info


def features_for_run(run: str | Path, out: str | Path | None = None) -> dict:
    """The dashboard of a finished run directory (its SAE, and the data config it was trained with)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from saeexp.io import load_meta, load_sae

    run = Path(run)
    if not (run / "sae").is_dir():
        raise ConfigError(f"{str(run)!r}: not a run directory (expected {run / 'sae'})")
    sae, meta = load_sae(run), load_meta(run)
    data = meta.get("data") or {}
    if "hook" not in data:
        raise ConfigError(f"{str(run)!r} was trained on {data.get('_target_', 'unknown data')}: dashboards need a "
                          "data=lm run (token contexts and the model's unembedding)")
    source = instantiate(OmegaConf.create(data))
    client = run_id = None
    if (run / "mlflow_run_id").is_file() and (run / "config.yaml").is_file():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(OmegaConf.load(run / "config.yaml").logger.tracking_uri)
        run_id = (run / "mlflow_run_id").read_text().strip()
    return dashboard(sae, source, run, client, run_id, Path(out) if out else None)


def features_main(argv: list[str] | None = None) -> None:
    """Console script `saeexp-features`."""
    p = argparse.ArgumentParser(prog="saeexp-features", description="feature dashboard of a data=lm run")
    p.add_argument("run", help="a run directory")
    p.add_argument("--out", default=None, help="the HTML file (default RUN/features.html)")
    args = p.parse_args(argv)
    try:
        features_for_run(args.run, args.out)
    except ConfigError as e:
        print(f"saeexp: error: {e}", file=sys.stderr)
        sys.exit(2)
