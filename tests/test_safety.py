"""What others share never runs code here; user names never escape their root; secrets never leave the machine."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_bad_inputs import SMALL, nothing_left, one_error_line, run_cli

import saeexp
from saeexp.errors import ConfigError
from saeexp.io import save_sae
from saeexp.sae import ReLUSAE


class Payload:
    """Unpickling this runs `exec(code)`: what a hostile checkpoint carries."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def _shared_sae(tmp_path) -> Path:
    """A genuine saved SAE, as someone would share it."""
    return save_sae(ReLUSAE(d_in=8, d_sae=16), tmp_path / "shared" / "sae",
                    {"_target_": "saeexp.sae.ReLUSAE", "d_in": 8, "d_sae": 16},
                    {"input_scale": 1.0, "d_in": 8, "d_sae": 16,
                     "data": {"_target_": "saeexp.data.synthetic.SyntheticSource", "d_in": 8, "n_features": 16,
                              "heldout_tokens": 2048}})


def _marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


def test_a_shared_sae_loads_by_its_variant_key(tmp_path):
    d = _shared_sae(tmp_path)
    spec = yaml.safe_load((d / "config.yaml").read_text())
    assert spec["variant"] == "relu"
    assert type(saeexp.load_sae(d)) is ReLUSAE
    # a folder written before variant keys: its `_target_` is accepted because conf/model/relu.yaml declares it
    spec.pop("variant")
    (d / "config.yaml").write_text(yaml.safe_dump(spec))
    assert type(saeexp.load_sae(d)) is ReLUSAE


def test_a_variant_of_ones_own_loads_through_its_config_dir(tmp_path):
    conf = tmp_path / "myconf" / "model"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("_target_: saeexp.sae.ReLUSAE\nd_in: 8\nd_sae: 16\n")
    d = _shared_sae(tmp_path)
    spec = yaml.safe_load((d / "config.yaml").read_text())
    (d / "config.yaml").write_text(yaml.safe_dump({**spec, "variant": "mine"}))
    with pytest.raises(ConfigError, match="variant 'mine' is not one of the model configs in use"):
        saeexp.load_sae(d)
    assert type(saeexp.load_sae(d, config_dirs=[tmp_path / "myconf"])) is ReLUSAE


@pytest.mark.parametrize("name,config", [
    ("arbitrary_target", {"model": {"_target_": "builtins.exec", "_args_": ["CODE"]}}),
    ("torch_load_unsafe", {"model": {"_target_": "torch.load", "f": "PICKLE", "weights_only": False}}),
    ("target_disagrees_with_key", {"variant": "relu", "model": {"_target_": "builtins.exec", "d_in": 8}}),
    ("instantiate_keys", {"variant": "relu", "model": {"d_in": 8, "d_sae": 16, "_args_": ["CODE"]}}),
    ("nested_target", {"variant": "relu", "model": {"d_in": 8, "d_sae": {"_target_": "builtins.exec"}}}),
    ("unknown_key", {"variant": "builtins.exec", "model": {"d_in": 8}}),
    ("yaml_python_tag", "model: !!python/object/apply:builtins.exec [CODE]\n"),
])
def test_a_planted_config_is_refused_and_runs_nothing(name, config, tmp_path, capsys):
    d = _shared_sae(tmp_path)
    marker = tmp_path / "pwned"
    pickle_file = tmp_path / "payload.pt"
    torch.save(Payload(_marker_code(marker)), pickle_file)
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    text = text.replace("CODE", json.dumps(_marker_code(marker))[1:-1]).replace("PICKLE", str(pickle_file))
    (d / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="config.yaml"):
        saeexp.load_sae(d)
    code, err = run_cli(["saeexp-eval", str(d)], capsys, entry="eval")
    print(one_error_line(code, err, "config.yaml"), file=sys.__stdout__)
    assert not marker.exists()


@pytest.mark.parametrize("data", [
    {"_target_": "builtins.exec", "_args_": ["CODE"]},
    {"_target_": "saeexp.data.synthetic.SyntheticSource", "d_in": 8, "noise": {"_target_": "builtins.exec"}},
    {"_target_": "saeexp.data.synthetic.SyntheticSource", "d_in": "${oc.env:HOME}"},
], ids=["exec", "nested_exec", "interpolation"])
def test_a_planted_meta_data_entry_is_refused_by_eval_and_finetune(data, tmp_path, capsys):
    d = _shared_sae(tmp_path)
    marker = tmp_path / "pwned"
    meta = json.loads((d / "meta.json").read_text())
    text = json.dumps({**meta, "data": data}).replace("CODE", json.dumps(_marker_code(marker))[1:-1])
    (d / "meta.json").write_text(text)
    from saeexp.cli.finetune import main as finetune_main

    for entry, argv in (("eval", ["saeexp-eval", str(d)]),
                        (finetune_main, ["saeexp-finetune", f"sae={d}", "tokens=4096", "batch_size=1024"])):
        code, err = run_cli(argv, capsys, entry=entry)
        print(one_error_line(code, err, "meta.json"), file=sys.__stdout__)
    assert not marker.exists()


def test_a_pickled_checkpoint_is_refused_before_it_is_loaded(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "planted" / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "x": Payload(_marker_code(marker))}, run_dir / "checkpoints" / "last.ckpt")
    code, err = run_cli(["saeexp", *SMALL, "name=planted", f"hydra.run.dir={run_dir}"], capsys)
    print(one_error_line(code, err, "last.ckpt", "refused to resume"), file=sys.__stdout__)
    assert not marker.exists()
    assert not (run_dir / "mlflow_run_id").exists()  # refused before an MLflow run was opened


@pytest.mark.parametrize("value", ["..", "../x", "../../escape", "/abs", "a/b", "a\\b", "", " x", "x" * 201])
def test_path_parts_refuse_escapes(value):
    from saeexp.util.safepath import check_inside, path_part

    with pytest.raises(ConfigError, match="expected a plain name"):
        path_part("experiment", value)
    assert path_part("experiment", "my_sweep-2.0") == "my_sweep-2.0"
    with pytest.raises(ConfigError, match="outside"):
        check_inside("/tmp/root", "/tmp/root/../other", "run_dir")


def test_a_swept_experiment_name_is_checked_before_the_sweep_writes(tmp_path, capsys):
    code, err = run_cli(["saeexp", "-m", *SMALL, "name=fine,../../escape"], capsys)
    print(one_error_line(code, err, "name='../../escape'"), file=sys.__stdout__)
    nothing_left(tmp_path)


def test_secrets_are_masked_in_keys_uris_and_text():
    from saeexp.util.redact import is_secret_key, redact, redact_text

    assert redact_text("at http://alice:s3cret@mlflow.lan:5000/x") == "at http://***@mlflow.lan:5000/x"
    assert redact_text("http://u:p@ss@h/a@b") == "http://***@h/a@b"
    assert [is_secret_key(k) for k in ("hf_token", "MLFLOW_TRACKING_PASSWORD", "apiToken", "client_secret")] == [True] * 4
    assert not any(is_secret_key(k) for k in ("train.tokens", "harvest_tokens", "tokenizer", "dead_window_tokens"))
    tree = {"logger": {"tracking_uri": "https://bob:pw@h"}, "data": {"hf_token": "hf_abc", "tokens": 5}}
    assert redact(tree) == {"logger": {"tracking_uri": "https://***@h"}, "data": {"hf_token": "***", "tokens": 5}}


def test_mlflow_params_and_config_artifact_hold_no_secrets(compose_config, tmp_path):
    from mlflow.tracking import MlflowClient

    from saeexp.build.plan import plan_run
    from saeexp.tracking.logger import log_config, open_run

    uri = os.environ["MLFLOW_TRACKING_URI"]
    cfg = compose_config(["+extra.api_token=hf_abc123", "+extra.db_password=hunter2",
                          "+extra.uri='https://alice:s3cret@mlflow.example'"], run_dir=tmp_path / "run")
    tracking = plan_run(cfg).tracking
    logger = open_run(tracking, tmp_path / "run")
    log_config(logger, tracking, tmp_path / "run")
    client = MlflowClient(uri)
    params = client.get_run(logger.run_id).data.params
    art = Path(client.download_artifacts(logger.run_id, "config.yaml", str(tmp_path / "dl"))).read_text()
    for where, text in (("params", json.dumps(params)), ("artifact", art),
                        ("run dir", (tmp_path / "run" / "config.yaml").read_text())):
        assert not {"hf_abc123", "hunter2", "s3cret"} & set(text.replace('"', " ").replace("'", " ").split()), where
        assert "hf_abc123" not in text and "hunter2" not in text and "s3cret" not in text, (where, text)
    assert params["extra.api_token"] == "***" and params["extra.uri"] == "https://***@mlflow.example"
    assert params["train.tokens"] == str(cfg.train.tokens)  # counts of tokens are not secrets


def test_a_printed_error_masks_uri_credentials(capsys):
    from saeexp.cli.refuse import fail

    with pytest.raises(SystemExit):
        fail(ConfigError("cannot reach https://alice:s3cret@mlflow.example/api"))
    assert capsys.readouterr().err.strip() == "saeexp: error: cannot reach https://***@mlflow.example/api"


def test_metrics_survive_a_logging_outage(tmp_path, compose_config, monkeypatch):
    """MLflow failing (after its own retries) keeps the metrics and sends them at the next log; no exception."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from saeexp.build.plan import plan_run
    from saeexp.tracking.logger import open_run

    logger = open_run(plan_run(compose_config([], run_dir=tmp_path / "run")).tracking, tmp_path / "run")
    real, calls = logger.experiment.log_batch, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("connection refused")
        return real(*a, **k)

    monkeypatch.setattr(logger.experiment, "log_batch", flaky)
    logger.log_metrics({"train/l0": 5.0}, step=1)  # fails: kept
    logger.log_metrics({"train/l0": 4.0}, step=2)  # works: both sent
    hist = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_metric_history(logger.run_id, "train/l0")
    assert sorted((m.step, m.value) for m in hist) == [(1, 5.0), (2, 4.0)]


def test_the_shared_mlflow_server_is_not_opened_without_authentication(tmp_path):
    """Off loopback, scripts/mlflow-server.sh starts only with MLflow's basic-auth app (refused before starting)."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "mlflow-server.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    for extra, needle in (({"MLFLOW_HOST": "0.0.0.0", "MLFLOW_AUTH": "0"}, "without authentication"),
                          ({"MLFLOW_HOST": "10.0.0.5"}, "needs MLFLOW_TRACKING_PASSWORD")):
        p = subprocess.run(["bash", str(script), "start", str(tmp_path / "srv"), "5999"], env={**env, **extra},
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and needle in p.stderr, p.stderr
        assert not (tmp_path / "srv").exists()  # nothing started, nothing written


def test_pareto_refuses_an_experiment_name_that_escapes(capsys):
    from saeexp.cli.pareto import main

    with pytest.raises(SystemExit) as e:
        main(["../../escape"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().startswith("saeexp: error: experiment='../../escape'")
