"""The Ray Tune side of a stage: build the Tuner (new, or restored from the sweep's state), run
it, and read back how each trial ended.

    trainable(ctx, resources)                  the function trainable with the sweep's shared context
    build(cfg, plan, location, trainable, callbacks)  tune.Tuner: grid or Optuna's TPE, FIFO or ASHA
    callbacks(cfg, plan, exp_id, sid, parent_id)     MLflow statuses, heartbeat, Tune's result.json, progress
    collect(grid, metric)                      one dict per trial: name, point, error, epochs, metric, run id

Tune's state is the only record of which trials exist and where each stands, so a restore
(`tune.Tuner.restore`) resumes unfinished and errored trials from their checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from orchestration import records
from orchestration.callbacks import HeartbeatCallback, ProgressCallback, PruneGoneCheckpoints, StatusCallback
from orchestration.plan import stops_early, trial_epochs
from orchestration.spaces import Plan
from orchestration.sweep import Location, experiment_dir
from orchestration.trainable import SweepContext, run_sweep_trial, trial_point


def quiet_tune() -> None:
    """Tune's own output and loggers off, where the user has not set them: our ProgressCallback is
    the display and MLflow the record (Tune's TensorBoard and CSV files would cost the driver's
    event loop at every result)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def checkpoint_config(cfg: DictConfig) -> tune.CheckpointConfig:
    """Every checkpoint a trial reports is kept by Tune: no `num_to_keep`, which would force a full
    snapshot of the experiment state every `num_to_keep` checkpoints of any trial (Ray's
    experiment_state.py), i.e. several per second in a large sweep of short epochs. The trainable
    deletes its old checkpoints itself (trainable.prune_checkpoints, trial.keep_checkpoints)."""
    return tune.CheckpointConfig()


def use_snapshot_period(cfg: DictConfig) -> None:
    """Tune saves the experiment state (every trial's status and latest checkpoint: what a restore
    starts from) every `ray.snapshot_period_s` seconds, instead of its adaptive default; Tune reads
    the period from TUNE_GLOBAL_CHECKPOINT_S when `fit` starts, so this sets it from the config."""
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = f"{float(cfg.ray.snapshot_period_s):g}"


def trainable(ctx: SweepContext, resources: dict[str, float]) -> Any:
    return tune.with_resources(tune.with_parameters(run_sweep_trial, ctx=ctx), resources)


def param_space(plan: Plan) -> dict[str, Any]:
    if plan.algorithm == "optuna":
        return {k: tune.choice(v) for k, v in plan.values.items()}
    return {"point": tune.grid_search(plan.points)}


def _search_algorithm(cfg: DictConfig, plan: Plan) -> Any:
    if plan.algorithm != "optuna":
        return None
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    search = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.search.seed))
    return ConcurrencyLimiter(search, max_concurrent=cfg.search.max_concurrent) if cfg.search.max_concurrent else search


def _scheduler(cfg: DictConfig, plan: Plan) -> Any:
    if stops_early(cfg, plan.mode):
        return ASHAScheduler(time_attr="epoch", max_t=cfg.trainer.max_epochs,
                             grace_period=cfg.scheduler.grace_period, reduction_factor=cfg.scheduler.reduction_factor)
    return FIFOScheduler()


def callbacks(cfg: DictConfig, plan: Plan, experiment_id: str, sweep_id: str, parent_run_id: str, *,
              progress: bool, progress_interval_s: float) -> list[tune.Callback]:
    out = [StatusCallback(cfg.mlflow.tracking_uri, experiment_id, sweep_id, cfg.trainer.max_epochs,
                          flush_timeout_s=cfg.mlflow.flush_timeout_s),
           HeartbeatCallback(cfg.mlflow.tracking_uri, parent_run_id), PruneGoneCheckpoints(), JsonLoggerCallback()]
    if progress:
        out.append(ProgressCallback(title=f"{cfg.stage} · {plan.mode}", total_trials=plan.num_trials,
                                    max_epochs=cfg.trainer.max_epochs, metric=cfg.search.metric,
                                    interval_s=progress_interval_s,
                                    planned_epochs=trial_epochs(cfg, plan.num_trials, plan.mode)[0],
                                    by_trials=bool(cfg.trainer.max_train_s)))
    return out


def build(cfg: DictConfig, plan: Plan, location: Location, trainable: Any, callbacks: list) -> tune.Tuner:
    """The stage's Tuner: restored from `location` when it has state, else new."""
    use_snapshot_period(cfg)
    if location.restore:
        return tune.Tuner.restore(location.path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=param_space(plan))
    return tune.Tuner(
        trainable,
        param_space=param_space(plan),
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric, mode=cfg.search.metric_mode, search_alg=_search_algorithm(cfg, plan),
            scheduler=_scheduler(cfg, plan), num_samples=plan.num_samples if plan.algorithm == "optuna" else 1,
            max_concurrent_trials=cfg.search.max_concurrent or None, reuse_actors=cfg.trial.reuse_actors,
            trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(
            name=location.sweep_id, storage_path=experiment_dir(cfg), verbose=0, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=cfg.trial.max_failures),
            checkpoint_config=checkpoint_config(cfg)))


def collect(grid: Any, metric: str) -> list[dict[str, Any]]:
    """How each trial ended, as Tune saw it."""
    trials = []
    for r in grid:
        metrics = r.metrics or {}
        point = trial_point(r.config or {})
        trials.append({"name": records.run_name(point), "point": point,
                       "error": str(r.error).splitlines()[-1] if r.error else None,
                       "epochs": int(metrics.get("epoch", 0)), metric: metrics.get(metric),
                       "mlflow_run_id": metrics.get("mlflow_run_id")})
    return trials
