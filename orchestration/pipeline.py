"""Stages in a row as one command, `coarse → fine → ablation`, safe to run on a schedule.

    python orchestration/grid.py --stage coarse --then fine,ablation [overrides] [coarse:key=value ...]

`run_pipeline(stages, overrides)` takes the stages in order. For each one:
  * finished (its MLflow parent run for this config is FINISHED): skipped;
  * unfinished (a run that was stopped, killed, or lost its driver): resumed (stage.py finds the
    sweep by its id: finished trials are not rerun, the others continue from their checkpoints);
  * never started: started;
  * driven right now by another live process (its parent run's heartbeat is fresh): left alone.
A stage that ends unfinished (trials left to run), or is busy elsewhere, stops the pipeline there;
the next run of the same command continues it. So a scheduled command resumes what its previous run left unfinished,
starts the next stage once a stage has finished, and does nothing once every stage has finished.
Which stages follow is the configuration: `--then fine,ablation` goes on to them; without `--then`
a finished stage is all there is (running it again reruns nothing).

Overrides written `<stage>:key=value` apply to that stage only, replacing a shared override of the
same key, e.g. `trial.gpus=1 coarse:trial.gpus=0.25` (the coarse stage packs 4 trials per GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from omegaconf import DictConfig

from orchestration import records
from orchestration.errors import ConfigError
from orchestration.spaces import STAGES


@dataclass
class StageStatus:
    stage: str
    state: str                      # new | unfinished | running (another live driver) | finished
    sweep_id: str
    parent_run_id: Optional[str] = None


@dataclass
class PipelineStep:
    stage: str
    outcome: str                    # skipped (had finished) | busy (driven elsewhere) | finished | unfinished
    sweep_id: str
    parent_run_id: Optional[str]
    result: Optional[object] = None  # the StageResult of a stage that ran


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def stage_overrides(overrides: list[str], stage: str) -> list[str]:
    """The overrides of one stage: the shared ones, with `<stage>:key=value` replacing `key=...`;
    other stages' prefixed overrides left out."""
    own, shared = [], []
    for o in overrides:
        head, sep, rest = o.partition(":")
        if sep and head in STAGES and "=" in rest and "=" not in head:
            if head == stage:
                own.append(rest)
        else:
            shared.append(o)
    replaced = {_override_key(o) for o in own}
    return [o for o in shared if _override_key(o) not in replaced] + own


def stage_status(cfg: DictConfig) -> StageStatus:
    """Where the stage with this config stands, from its MLflow parent run (looked up, never created).
    Raises ConfigError like a dry run would (e.g. fine before any finished coarse stage)."""
    from orchestration.config import experiment_name
    from orchestration.plan import prepare
    from orchestration.sweep import latest_generation, sweep_id

    cfg, plan = prepare(cfg)
    sid = sweep_id(cfg, plan, latest_generation(cfg, plan))
    uri = cfg.mlflow.tracking_uri
    if records.store_missing(uri):
        return StageStatus(cfg.stage, "new", sid)
    from orchestration import tracking  # here: a dry run never opens a store, so never imports mlflow

    client = tracking.client(uri)
    exp = tracking.retry(lambda: client.get_experiment_by_name(experiment_name(cfg)), what="get_experiment")
    if exp is None:
        return StageStatus(cfg.stage, "new", sid)
    found = tracking.find_runs(client, exp.experiment_id, {records.TAG_ROLE: records.ROLE_STAGE,
                                                           records.TAG_SWEEP: sid})
    if not found:
        return StageStatus(cfg.stage, "new", sid)
    parent = found[0]
    state = ("finished" if parent.info.status == "FINISHED" else
             "running" if tracking.live_driver(parent) else "unfinished")
    return StageStatus(cfg.stage, state, sid, parent.info.run_id)


def run_pipeline(stages: list[str], overrides: list[str], *, fresh: bool = False, require_resume: bool = False,
                 progress: bool = True, report: Optional[Callable[[PipelineStep], None]] = None) -> list[PipelineStep]:
    """Run `stages` in order, skipping finished ones and stopping after one that ends unfinished.
    `fresh` starts every stage over; `require_resume` insists that the first stage can be continued."""
    from orchestration.config import compose_config
    from orchestration.errors import SweepBusy
    from orchestration.stage import run_stage

    unknown = [s for s in stages if s not in STAGES]
    if unknown or len(set(stages)) != len(stages) or not stages:
        raise ConfigError(f"stages {','.join(stages)!r}: each of {', '.join(STAGES)} at most once, in the order to run")
    steps: list[PipelineStep] = []
    for i, stage in enumerate(stages):
        cfg = compose_config(stage_overrides(overrides, stage), stage=stage)
        status = stage_status(cfg)
        if status.state == "finished" and not fresh:
            step = PipelineStep(stage, "skipped", status.sweep_id, status.parent_run_id)
        elif status.state == "running" and not fresh:
            step = PipelineStep(stage, "busy", status.sweep_id, status.parent_run_id)
        else:
            try:
                result = run_stage(cfg, fresh=fresh, require_resume=require_resume and i == 0, progress=progress)
            except SweepBusy:  # a driver started between the look and the run
                step = PipelineStep(stage, "busy", status.sweep_id, status.parent_run_id)
            else:
                step = PipelineStep(stage, "finished" if result.complete else "unfinished", result.sweep_id,
                                    result.parent_run_id, result)
        steps.append(step)
        if report is not None:
            report(step)
        if step.outcome in ("unfinished", "busy"):
            break
    return steps
