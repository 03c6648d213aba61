"""One stage of the sweep as a plain function: `run_stage(cfg) -> StageResult`.

The recipe (`run_stage`, top to bottom), each step in its own room:

    plan.prepare        the config checked, the plan built, every planned trial validated (the dry run)
    ray_cluster         the Ray address answers
    tracking            the MLflow store answers
    plan.prepare_data   the dataset generated (embedded default) and checked
    sweep.locate        which generation of this sweep: new, or continued from its Tune state
                        (every refusal above comes before anything is written anywhere)
    tracking            the MLflow store opened (a new SQLite store created under a file lock)
    claim               the sweep claimed for this driver, atomically, or SweepBusy naming the holder
    ray_cluster         Ray started or joined, shared storage checked, resources per trial
    sweep.check_store   Tune state whose parent run the store does not hold: a new generation
    tracking            the stage's parent run: created, or found again and continued
    tuner               the Tuner built (or restored) and run: one Ray trial per planned trial,
                        each an MLflow child run (trainable.py), exactly once (tracking.py)
    records             the runs read back: the best configuration, the parent run's end state

Resuming is automatic (orchestration/sweep.py): running the same command again continues the
same sweep; `--fresh` starts the same config over as a new generation.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mlflow.entities import RunTag
from omegaconf import DictConfig, OmegaConf

from orchestration import plan as planning
from orchestration import claim, ray_cluster, records, sweep, tracking, tuner
from orchestration.config import experiment_name
from orchestration.spaces import Plan
from orchestration.trainable import SweepContext

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


@dataclass
class StageResult:
    stage: str
    sweep_id: str
    experiment: str
    tracking_uri: str
    storage_dir: str
    plan: Plan
    metric: str = "val/top1"
    parent_run_id: Optional[str] = None
    resumed: bool = False
    trials: list[dict[str, Any]] = field(default_factory=list)   # name, point, status, metric, epochs
    best: Optional[dict[str, Any]] = None                          # params, value, run_id
    wall_s: float = 0.0
    complete: bool = False                                         # every trial ended (parent run FINISHED)
    broken_videos: list[dict[str, str]] = field(default_factory=list)  # left out by data.max_broken_fraction


def run_stage(cfg: DictConfig, *, fresh: bool = False, require_resume: bool = False, progress: bool = True,
              progress_interval_s: float = 15.0) -> StageResult:
    """Validate everything, then run the stage on Ray Tune with every trial logged to MLflow."""
    started = time.monotonic()
    with tracking.http_policy():  # fail fast on HTTP, retry here: a restarting server never stalls the loop
        tuner.quiet_tune()
        cfg, plan = planning.prepare(cfg)
        for note in plan.notes:
            if note.startswith("identical variants"):
                log.warning(note)
        ray_cluster.check_ray_address(cfg.ray.address)      # a Ray handshake, not only a TCP port
        tracking.check_reachable(cfg.mlflow.tracking_uri)   # a new SQLite store is not created here
        cfg, broken = planning.prepare_data(cfg, plan, progress=progress)  # tolerated broken videos: data.exclude
        sweep.locate(cfg, plan, fresh=fresh, require_resume=require_resume)  # every refusal before any write

        client = tracking.open_store(cfg.mlflow.tracking_uri)
        sid = sweep.sweep_id(cfg, plan)
        with claim.acquire(claim.slots_for(cfg.ray.storage_path, experiment_name(cfg), sid, cfg.mlflow.tracking_uri),
                           stage=cfg.stage, sweep_id=sid):   # one driver per sweep, or SweepBusy naming it
            ray_cluster.start(cfg)
            ray_cluster.check_shared_storage(cfg.ray.storage_path)
            exp_id = tracking.experiment_id(client, experiment_name(cfg), _artifact_location(cfg))
            where = sweep.locate(cfg, plan, fresh=fresh, require_resume=require_resume)
            where = sweep.check_store(cfg, plan, where, functools.partial(_has_parent, client, exp_id))
            parent_id = _open_parent(cfg, plan, client, exp_id, where)
            planning.log_broken_videos(client, parent_id, broken)

            run = functools.partial(_run_trials, cfg, exp_id=exp_id, parent_id=parent_id, progress=progress,
                                    progress_interval_s=progress_interval_s)
            trials = run(plan, where)
            confirm = planning.confirm_plan(cfg, plan, parent_id)
            if confirm is not None:  # the best configurations again, with more seeds, under the same parent run
                trials += run(confirm, sweep.confirm_location(cfg, confirm, where))

            result = StageResult(stage=cfg.stage, sweep_id=where.sweep_id, experiment=experiment_name(cfg),
                                 tracking_uri=cfg.mlflow.tracking_uri, storage_dir=where.path, plan=plan,
                                 metric=cfg.search.metric, parent_run_id=parent_id, resumed=where.restore,
                                 trials=trials, broken_videos=broken.to_dict()["videos"])
            _close_parent(cfg, plan, client, result)
    result.wall_s = time.monotonic() - started
    return result


def _has_parent(client: Any, exp_id: str, sweep_id: str) -> bool:
    return bool(tracking.find_runs(client, exp_id, {records.TAG_ROLE: records.ROLE_STAGE, records.TAG_SWEEP: sweep_id}))


def _run_trials(cfg: DictConfig, plan: Plan, where: sweep.Location, *, exp_id: str, parent_id: str, progress: bool,
                progress_interval_s: float) -> list[dict[str, Any]]:
    """One Tuner over `plan`'s trials (new, or continued from `where`): how each ended."""
    resources = ray_cluster.trial_resources(cfg, ray_cluster.local_resources(cfg)[1])
    ctx = SweepContext(config_yaml=OmegaConf.to_yaml(cfg, resolve=True), sweep_id=where.sweep_id,
                       experiment_id=exp_id, parent_run_id=parent_id, tracking_uri=cfg.mlflow.tracking_uri,
                       stage=cfg.stage, metric=cfg.search.metric, shuffle_protocols=tuple(plan.shuffle_protocols),
                       flush_timeout_s=cfg.mlflow.flush_timeout_s)
    calls = tuner.callbacks(cfg, plan, exp_id, where.sweep_id, parent_id, progress=progress,
                            progress_interval_s=progress_interval_s)
    grid = tuner.build(cfg, plan, where, tuner.trainable(ctx, resources), calls).fit()
    return tuner.collect(grid, cfg.search.metric)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _artifact_location(cfg: DictConfig) -> Optional[str]:
    if cfg.mlflow.artifact_location:
        return cfg.mlflow.artifact_location
    path = records.sqlite_path(cfg.mlflow.tracking_uri)  # next to the database, not wherever the process runs
    return str(path.parent / "mlartifacts") if path is not None else None


def _open_parent(cfg: DictConfig, plan: Plan, client: Any, exp_id: str, where: sweep.Location) -> str:
    """The stage's parent run (new, or the sweep's own, continued); a new one gets the resolved
    config and the plan as artifacts (tracking.redact: a secret from the environment never lands
    in MLflow, whatever key holds it)."""
    sid = where.sweep_id
    parent_id, resumed = tracking.start_parent(
        client, exp_id, sweep_id=sid, stage=cfg.stage, mode=plan.mode,
        run_name=f"{cfg.stage} · {plan.mode} · {sid.split('-')[-1] if where.generation == 1 else sid}",
        params={"stage": cfg.stage, "mode": plan.mode, "algorithm": plan.algorithm, "trials": plan.num_trials,
                "scheduler": cfg.scheduler.name, "data.name": cfg.data.name, "trainer.max_epochs": cfg.trainer.max_epochs,
                "search.metric": cfg.search.metric},
        tags={records.TAG_GIT: _git_commit(), records.TAG_STORAGE: where.path})
    if not resumed:
        client.log_text(parent_id, tracking.redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
        client.log_text(parent_id, tracking.redact(json.dumps({"points": plan.points, "values": plan.values,
                                                               "base": plan.base, "notes": plan.notes},
                                                              indent=1, default=str)), "plan.json")
    return parent_id


def _close_parent(cfg: DictConfig, plan: Plan, client: Any, result: StageResult) -> None:
    """Read the stage's trials back: the best configuration (tags and metric of the parent run) and
    whether every trial ended (the parent run FINISHED, else KILLED: the same command continues it)."""
    patience = cfg.mlflow.flush_timeout_s  # the tracking server may be restarting right now
    parent_id, metric = result.parent_run_id, result.metric
    runs = tracking.retry(lambda: records.load_runs(cfg.mlflow.tracking_uri, result.experiment,
                                                    parent_run_id=parent_id), what="load_runs", timeout_s=patience)
    try:
        best = records.best_config(runs, metric=metric, mode=cfg.search.metric_mode,
                                   keys=[k for k in records.WEIGHTS if k in runs])
    except LookupError as e:
        log.warning("no best configuration: %s", e)
    else:
        result.best = {"params": {k: float(v) for k, v in best.params.items()}, "value": best.value,
                       "run_id": best.run_id, "tied_with": best.tied_with}
        tags = [RunTag(f"{records.BEST_PREFIX}{k}", str(v)) for k, v in best.params.items()]
        tags.append(RunTag(f"{records.BEST_PREFIX}run_id", best.run_id))
        tracking.retry(lambda: client.log_batch(parent_id, tags=tags), what="best tags", timeout_s=patience)
        tracking.retry(lambda: client.log_metric(parent_id, f"best/{metric}", best.value), timeout_s=patience)
    tracking.log_cost_totals(client, parent_id, runs)
    unfinished = int((runs["status"] == records.RUNNING).sum()) if not runs.empty else plan.num_trials
    result.complete = len(runs) >= plan.num_trials and unfinished == 0
    tracking.retry(lambda: client.set_terminated(parent_id, "FINISHED" if result.complete else "KILLED"),
                   timeout_s=patience)
