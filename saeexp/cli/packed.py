"""`saeexp -m ... hydra/launcher=packed`: a sweep's jobs trained in packs, each pack one process and one stream.

Every job is composed and planned as Hydra's basic launcher would run it (its run directory, `.hydra/`, the
guard's checks), then the plans that can share a stream are grouped (saeexp.jobs.pack.group: same data, seed,
batch size, length and trainer), a group over the memory budget or the `pack` size is split, the split is
printed, and each pack trains (saeexp.jobs.pack.train_pack). Each job's return is its own run's result or
error, so a failed run fails its job and the sweep reports it, as with one process per job.

Hydra only instantiates launchers defined under the `hydra_plugins` package: the classes Hydra sees are in
`hydra_plugins/saeexp_launchers/packed.py` and call the functions here.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import DictConfig, OmegaConf, open_dict

from saeexp.build.plan import plan_run
from saeexp.cli.common import USER_ERRORS, note_coefficient
from saeexp.jobs.pack import budget_bytes, group, member_bytes, memory_split, train_pack
from saeexp.train.stop import Stopped

log = logging.getLogger(__name__)


def plan_packs(plans: list, size: int, memory_gb: float | None) -> list[list[int]]:
    """The packs (indices into `plans`): grouped by stream, then split by the memory budget and `size`
    (0: no limit). Prints each split it makes."""
    out: list[list[int]] = []
    for g in group(plans):
        budget = budget_bytes(plans[g[0]].trainer_config, memory_gb)
        parts = memory_split(g, plans, budget)
        if len(parts) > 1:
            need = sum(member_bytes(plans[i]) for i in g) / 2 ** 30
            print(f"saeexp: a pack of {len(g)} SAEs needs about {need:.2f} GB, over the budget of "
                  f"{budget / 2 ** 30:.2f} GB (hydra.launcher.memory_gb): split into packs of "
                  f"{', '.join(str(len(p)) for p in parts)}", flush=True)
        for part in parts:
            out.extend(part[i:i + size] for i in range(0, len(part), size)) if size > 0 else out.append(part)
    return out


def _plan(cfg: DictConfig):
    plan = plan_run(cfg)
    note_coefficient(cfg)
    return plan


def _train_jobs(hydra_context, config: DictConfig, jobs: list[tuple[int, list[str]]], size: int,
                memory_gb: float | None, job_id=None) -> list[JobReturn]:
    """Plan each job (index, overrides) as Hydra's launchers run one, then train the plans in packs; each job's
    return is its own run's result or error."""
    returns: list[JobReturn] = []
    for idx, overrides in jobs:
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = job_id if job_id is not None else idx
            cfg.hydra.job.num = idx
        returns.append(run_job(hydra_context=hydra_context, task_function=_plan, config=cfg,
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    planned = [n for n, r in enumerate(returns) if r.status == JobStatus.COMPLETED]
    plans = [returns[n].return_value for n in planned]
    packs = plan_packs(plans, size, memory_gb)
    print(f"saeexp: {len(plans)} runs in {len(packs)} pack(s) of {', '.join(str(len(p)) for p in packs)}",
          flush=True)
    for members in packs:
        try:
            results = train_pack([plans[i] for i in members])
        except Stopped as e:  # a signal: every member checkpointed; the sweep stops, as a single run's does
            print(f"saeexp: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        except USER_ERRORS as e:  # the pack could not start (its trainer): each of its jobs failed so
            results = [e] * len(members)
        for i, result in zip(members, results):
            ret = returns[planned[i]]
            ret.status = JobStatus.FAILED if isinstance(result, BaseException) else JobStatus.COMPLETED
            ret.return_value = result
    return returns


def launch_local(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """`hydra/launcher=packed`: the whole sweep in this process, in packs (`launcher`: its hydra_plugins class,
    with pack, memory_gb, config and hydra_context)."""
    setup_globals()
    assert launcher.config is not None and launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    jobs = [(initial_job_idx + n, list(o)) for n, o in enumerate(job_overrides)]
    return _train_jobs(launcher.hydra_context, launcher.config, jobs, launcher.pack, launcher.memory_gb)


def launch_slurm_groups(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """`hydra/launcher=slurm hydra.launcher.pack=N` (N > 1): the sweep's jobs in groups of N consecutive ones, one
    array task per group (ceil(jobs / N) tasks); each task runs `run_group`. The executor is built as
    hydra-submitit-launcher builds it (whose own launch() submits one job per task)."""
    import submitit  # noqa: PLC0415 - as the plugin does: only a launch needs it

    assert launcher.config is not None
    p = dict(launcher.params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=p.pop("submitit_folder"),
                                     slurm_max_num_timeout=p.pop("max_num_timeout", 0))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in p.items()})
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    jobs = [(initial_job_idx + n, list(o)) for n, o in enumerate(job_overrides)]
    groups = [jobs[i:i + launcher.pack] for i in range(0, len(jobs), launcher.pack)]
    print(f"saeexp: {len(jobs)} runs in {len(groups)} SLURM array task(s) of up to {launcher.pack} "
          "(hydra.launcher.pack)", flush=True)
    # the launcher object is the task's callable (its __call__ runs `run_group`); submitit's requeue re-runs it
    # with the same group, which resumes every run of it
    submitted = executor.map_array(launcher, groups, ["hydra.sweep.dir"] * len(groups),
                                   [f"group_{g[0][0]}" for g in groups], [Singleton.get_state()] * len(groups))
    return [ret for job in submitted for ret in job.results()[0]]


def run_group(launcher, group_jobs, singleton_state) -> list[JobReturn]:
    """One array task of `launch_slurm_groups`: its group of jobs, trained in packs."""
    import submitit  # noqa: PLC0415 - inside a submitit job only

    Singleton.set_state(singleton_state)
    setup_globals()
    assert launcher.hydra_context is not None and launcher.config is not None
    return _train_jobs(launcher.hydra_context, launcher.config, [(i, list(o)) for i, o in group_jobs], launcher.pack,
                       launcher.memory_gb, job_id=submitit.JobEnvironment().job_id)
