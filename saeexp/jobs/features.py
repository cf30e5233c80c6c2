"""The feature dashboard of a `data=lm` run (`saeexp-features RUN`), written to RUN/features.html and logged to the
run's MLflow run; also drawn at the end of single `data=lm` runs (`features.enabled`)."""
from __future__ import annotations

from pathlib import Path

import yaml

from saeexp.errors import ConfigError
from saeexp.features.build import write
from saeexp.io import load_sae


def dashboard(sae, source, run_dir: Path, client=None, run_id: str | None = None, out: Path | None = None) -> dict:
    """Write the dashboard of `sae` (raw activations) on `source`; log it as an MLflow artifact when given a run."""
    out = out or run_dir / "features.html"
    info = write(sae, source, out, f"saeexp features: {run_dir.name} ({source.model}, {source.hook})")
    if client is not None and run_id is not None:
        client.log_artifact(run_id, str(out))
    print(f"saeexp: feature dashboard {out} ({info['bytes'] / 1e6:.1f} MB, {info['seconds']:.1f} s)")
    return info


def features_for_run(run: Path, source, out: Path | None = None, overwrite: bool = False) -> dict:
    """The dashboard of a finished data=lm run directory, with the data source it was trained on (built from its
    meta.json by saeexp.build.saved.plan_features), logged to its MLflow run when it has one."""
    target = out or run / "features.html"
    if target.exists() and not overwrite:  # refused before the work, which takes minutes
        raise ConfigError(f"{str(target)!r} already exists: expected --out NEW_FILE, or --overwrite to replace it")
    sae = load_sae(run)
    client = run_id = None
    if (run / "mlflow_run_id").is_file() and (run / "config.yaml").is_file():
        from mlflow.tracking import MlflowClient  # noqa: PLC0415 - mlflow is heavy (seconds to import): only code that talks to a store imports it

        uri = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("logger", {}).get("tracking_uri")
        client = MlflowClient(uri)
        run_id = (run / "mlflow_run_id").read_text().strip()
    return dashboard(sae, source, run, client, run_id, out)
