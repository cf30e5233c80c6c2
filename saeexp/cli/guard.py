"""`RunGuard`, a Hydra callback that refuses a bad command before Hydra creates its run directory.

Hydra makes the run directory (and writes `.hydra/`) before the task starts, so a check inside `train` comes
too late to leave nothing behind. The guard runs the config checks, checks that the run directory and the
MLflow store can be written and that a tracking server answers, all before that; it remembers which
directories this command creates, so that a refusal later (a check needing built objects) removes them.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit, urlunsplit
from urllib.request import Request, urlopen

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from saeexp.build.checks import check_config
from saeexp.cli.refuse import created, fail, remember_created
from saeexp.errors import ConfigError
from saeexp.tracking.store import sqlite_file
from saeexp.util.files import atomic_write_text
from saeexp.util.redact import redact_text
from saeexp.util.safepath import path_part

REACH_TIMEOUT_S = 5.0


def check_writable(path: Path, what: str) -> None:
    """Refuse when `path` (or the nearest existing directory above it) cannot be written."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"{what} {str(path)!r}: {str(p)!r} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):  # EROFS counts too, for root as well
        raise ConfigError(f"{what} {str(p)!r} is not writable; expected a writable directory "
                          "(SAEEXP_RUNS=/elsewhere moves the runs)")


def check_tracking(uri: str) -> None:
    """A tracking server must answer its health check now; a SQLite store's directory must be writable."""
    db = sqlite_file(uri)
    if db is not None:
        check_writable(db.parent, "MLflow store directory")
    elif uri.startswith(("http://", "https://")):
        reason = _unhealthy(uri)
        if reason:
            raise ConfigError(f"logger.tracking_uri={redact_text(uri)!r} (MLFLOW_TRACKING_URI): not reachable "
                              f"({reason}); expected a running MLflow server, or unset MLFLOW_TRACKING_URI for a "
                              "local SQLite store")
        refused = _refuses_credentials(uri)
        if refused:
            raise ConfigError(f"logger.tracking_uri={redact_text(uri)!r}: the server refused this client "
                              f"({refused}); expected MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                              "MLFLOW_TRACKING_TOKEN) of an account there")


def _refuses_credentials(uri: str) -> str | None:
    """'HTTP 401' when an authenticating server turns down the credentials MLflow will send (from the environment,
    as MLflow's client reads them), else None; any other answer is left to MLflow's client."""
    parts = urlsplit(uri)
    probe = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1],
                        parts.path.rstrip("/") + "/api/2.0/mlflow/experiments/search", "max_results=1", ""))
    headers = {}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    try:
        urlopen(Request(probe, headers=headers), timeout=REACH_TIMEOUT_S).close()
    except HTTPError as e:
        return f"HTTP {e.code}" if e.code in (401, 403) else None
    except (URLError, OSError, ValueError):
        return None
    return None


def _unhealthy(uri: str) -> str | None:
    """Why `<uri>/health` does not answer as an MLflow server does (within REACH_TIMEOUT_S), or None."""
    parts = urlsplit(uri)  # without user-info: urllib would take it for part of the host name
    health = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path.rstrip("/") + "/health", "", ""))
    try:
        urlopen(health, timeout=REACH_TIMEOUT_S).close()
        return None
    except HTTPError as e:  # 401/403: an authenticating proxy in front of the server; anything else is not MLflow
        return None if e.code in (401, 403) else f"HTTP {e.code} from {health}"
    except (URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", None) or e)


class RunGuard(Callback):
    """Checks a training command before Hydra writes anything (`hydra.callbacks.guard` in conf/config.yaml)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # `${hydra:...}` in the run dir and runs root resolve now
        try:
            check_config(config)
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
            check_writable(run_dir, "runs directory")
            check_tracking(str(OmegaConf.select(config, "logger.tracking_uri", default="") or ""))
        except ConfigError as e:
            fail(e)
        remember_created(run_dir)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        """Hydra has just saved the job's config, overrides and its own config under `.hydra/`: mask what a
        command line put there in clear (`logger.tracking_uri=http://user:pass@host`, a `..._token=`)."""
        subdir = OmegaConf.select(config, "hydra.output_subdir")
        saved = list((Path(str(config.hydra.runtime.output_dir)) / str(subdir)).glob("*.yaml")) if subdir else []
        if OmegaConf.select(config, "hydra.mode") in (RunMode.MULTIRUN, "MULTIRUN"):  # the sweep's own copy too
            saved.append(Path(str(config.hydra.sweep.dir)) / "multirun.yaml")
        for f in saved:
            text = f.read_text() if f.is_file() else ""
            if redact_text(text) != text:
                atomic_write_text(f, redact_text(text))

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        created.clear()  # the command got through: nothing of it is to be discarded any more

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)
        created.clear()
        try:
            check_config(config)  # the base config; each job checks its own values again in train()
            # a swept name becomes a sweep directory before any job runs: check every value
            for o in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
                if o.key_or_group == "name":
                    for v in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()]):
                        path_part("name", v)
            check_writable(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))), "runs directory")
            check_tracking(str(OmegaConf.select(config, "logger.tracking_uri", default="") or ""))
        except ConfigError as e:
            fail(e)
