"""Under SLURM only submitit requeues: Lightning's SLURM environment comes without its USR1 auto-requeue."""
from __future__ import annotations

import signal

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from saeexp.configtree import CONF_DIR


def _trainer(name: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"trainer={name}"])
    return instantiate(cfg.trainer, accelerator="cpu", precision="32-true", logger=False, max_steps=1)


def test_lightning_does_not_requeue_under_slurm(monkeypatch):
    for k, v in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "saeexp-x", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
                 "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS_PER_NODE": "1"}.items():
        monkeypatch.setenv(k, v)
    for name in ("cpu", "gpu"):
        env = _trainer(name)._accelerator_connector.cluster_environment
        assert type(env).__name__ == "SLURMEnvironment" and env.auto_requeue is False


def test_outside_slurm_nothing_changes(monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.delenv("SLURM_JOB_NAME", raising=False)
    assert type(_trainer("cpu")._accelerator_connector.cluster_environment).__name__ == "LightningEnvironment"


def test_preemption_callback_is_inert_without_submitit():
    from saeexp.train.preemption import PreemptionCheckpoint, preempt_signal

    before = signal.getsignal(preempt_signal())
    cb = PreemptionCheckpoint()
    cb.on_fit_start(trainer=None, module=None)
    assert signal.getsignal(preempt_signal()) == before and not cb.received
