"""What grid.py prints: the dry run's plan (text or JSON) and a finished stage's summary."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from orchestration import records
from orchestration.config import experiment_name, to_objects
from orchestration.plan import device_hours, trial_epochs
from orchestration.ray_cluster import local_resources, max_concurrency, trial_resources
from orchestration.spaces import Plan
from orchestration.sweep import experiment_dir, sweep_id

GRID = Path(__file__).resolve().parent / "grid.py"
NEXT_STAGE = {"coarse": "fine", "fine": "ablation"}


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _resources_line(cfg: DictConfig) -> str:
    local = cfg.ray.address is None
    cluster = local_resources(cfg) if local else None
    resources = trial_resources(cfg, cluster[1] if cluster else 1.0 if cfg.trial.gpus is None else cfg.trial.gpus)
    res = f"{_fmt(resources['cpu'])} CPU, {_fmt(resources['gpu'])} GPU per trial"
    if cfg.trial.processes or (resources["gpu"] >= 2):
        res += f" (data-parallel on {to_objects(cfg).trial.world_size()} processes)"
    if cluster:
        return (f"resources: {res} · up to {max_concurrency(cfg, resources, cluster)} trials at once on this machine "
                f"({_fmt(cluster[0])} CPUs, {_fmt(cluster[1])} GPUs)")
    limit = f"at most {cfg.search.max_concurrent}" if cfg.search.max_concurrent else "as many as the cluster fits"
    return f"resources: {res} · {limit} at once on the cluster at {cfg.ray.address}"


def _cost_line(cfg: DictConfig, plan: Plan, extra_epochs: int = 0) -> str:
    """The dry run's cost estimate: GPU-hours from search.step_time_s, and the wall-clock time at the
    concurrency the cluster allows (known on this machine, or from search.max_concurrent)."""
    local = cfg.ray.address is None
    cluster = local_resources(cfg) if local else None
    resources = trial_resources(cfg, cluster[1] if cluster else 1.0 if cfg.trial.gpus is None else cfg.trial.gpus)
    hours, how = device_hours(cfg, plan.num_trials, resources["gpu"], extra_epochs=extra_epochs, mode=plan.mode)
    if hours is None:
        return f"cost: no estimate: {how}"
    unit = "GPU-hours" if resources["gpu"] > 0 else "device-hours (CPU trials)"
    line = f"cost: ≈ {hours:.2f} {unit} ({how}; training steps only)"
    concurrency = max_concurrency(cfg, resources, cluster) if cluster else (cfg.search.max_concurrent or 0)
    if concurrency:
        trial_hours = hours / (resources["gpu"] if resources["gpu"] > 0 else 1.0)
        waves = max(1.0, plan.num_trials / concurrency)
        line += (f"; ≈ {trial_hours / min(concurrency, plan.num_trials):.2f} h wall-clock at {min(concurrency, plan.num_trials)} "
                 f"trials at once" + (f" ({waves:.1f} waves)" if waves > 1 else ""))
    return line


def format_plan(cfg: DictConfig, plan: Plan) -> str:
    """The dry run: trials, the exact values, resources, concurrency and trial-epochs."""
    lines = [f"stage {cfg.stage} · mode {plan.mode} · {plan.algorithm} search · {plan.num_trials} trials"]
    width = max(len(k) for k in plan.values)
    for key, values in plan.values.items():
        lines.append(f"  {key:<{width}}  {', '.join(_fmt(v) for v in values)}")
    if plan.mode == "axes":
        lines.append("  base point: " + ", ".join(f"{k}={_fmt(v)}" for k, v in plan.base.items()))
    lines += [f"  {note}" for note in plan.notes]
    if plan.shuffle_protocols:
        lines.append(f"  evaluated at the end under frame shuffles: {', '.join(plan.shuffle_protocols)}")
    confirm = cfg.search.confirm_top_k * cfg.search.confirm_seeds if cfg.stage in ("coarse", "fine") else 0
    if confirm:
        lines.append(f"  then the best {cfg.search.confirm_top_k} configuration(s) again with {cfg.search.confirm_seeds} "
                     f"more seed(s): {confirm} trials; best = the best mean over seeds")
    lines.append(_resources_line(cfg))
    total, how = trial_epochs(cfg, plan.num_trials, plan.mode)
    lines.append(f"trial-epochs: {total + confirm * int(cfg.trainer.max_epochs)} ({how}"
                 + (f"; + {confirm} × {cfg.trainer.max_epochs} confirming" if confirm else "") + ")")
    if cfg.trainer.max_train_s:
        lines.append(f"  at most: each trial trains whole epochs within trainer.max_train_s={_fmt(cfg.trainer.max_train_s)} s "
                     "of training and validation (the same wall time for every trial; faster models train more epochs)")
    lines.append(_cost_line(cfg, plan, extra_epochs=confirm * int(cfg.trainer.max_epochs)))
    lines.append(f"sweep id {sweep_id(cfg, plan)} · Tune state under {experiment_dir(cfg)} · "
                 f"MLflow {cfg.mlflow.tracking_uri}, experiment {experiment_name(cfg)}")
    return "\n".join(lines)


def plan_json(cfg: DictConfig, plan: Plan) -> str:
    """`--dry-run --json`: every trial's configuration, as a JSON list."""
    if plan.algorithm == "optuna":
        return json.dumps([{"trial": None, "name": "optuna", "values": plan.values, "num_samples": plan.num_samples,
                            "config": OmegaConf.to_container(cfg, resolve=True)}], indent=1, default=str)
    out = []
    for i, point in enumerate(plan.points):
        trial_cfg = cfg.copy()
        for key, value in point.items():
            if key not in records.META_PARAMS:
                OmegaConf.update(trial_cfg, key, value, merge=False)
        out.append({"trial": i, "name": records.run_name(point), "params": point,
                    "config": OmegaConf.to_container(trial_cfg, resolve=True)})
    return json.dumps(out, indent=1, default=str)


def _short(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _tool(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return _short(candidate) if candidate.exists() else name


def _top_trials(runs: pd.DataFrame, metric: str, top: int) -> list[str]:
    """The best `top` trials in `best_config`'s order, as aligned text, and the failed ones' reasons."""
    weights = [k for k in records.WEIGHTS if k in runs]
    ranked, _ = records.rank_trials(runs, metric=metric, keys=weights)
    keys = [k for k in (records.VARIANT_PARAM, *weights) if k in runs]
    table = pd.DataFrame({"rank": range(1, min(top, len(ranked)) + 1),
                          **{records.WEIGHT_SYMBOLS.get(k, k): [_fmt(v) for v in ranked[k].head(top)] for k in keys},
                          metric: [f"{v:.4f}" for v in ranked[metric].head(top)],
                          "epochs": ranked["epochs"].head(top).to_numpy(), "status": ranked["status"].head(top)})
    lines = [f"top {len(table)} trials by {metric}:"]
    lines += ["  " + line for line in table.to_string(index=False, justify="left").splitlines()]
    for _, r in runs[runs["status"] == records.FAILED].head(5).iterrows():
        lines.append(f"  failed: {r['run_name']}: {r['failure_reason']}")
    return lines


def format_summary(result, overrides: list[str], top: int = 5) -> str:
    """A finished (or interrupted) stage: its trials by status, the top trials, the best weights,
    how to open the MLflow UI on the store, and the command for the next stage."""
    runs = records.load_runs(result.tracking_uri, result.experiment, parent_run_id=result.parent_run_id)
    counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
    lines = [f"{result.stage} stage {'resumed and ' if result.resumed else ''}finished in {result.wall_s / 60:.1f} min: "
             f"{len(runs)} trials (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"]
    broken = result.broken_videos  # the stage has them in hand: no read back from the store
    if broken:
        lines.append(f"{len(broken)} broken video(s) left out of every trial (data.max_broken_fraction), listed in "
                     f"the parent run's {records.BROKEN_VIDEOS_ARTIFACT}:")
        lines += [f"  {video['path']}: {video['problem']}" for video in broken[:3]]
        lines += [f"  ... and {len(broken) - 3} more"] if len(broken) > 3 else []
    metric = result.metric
    if not runs.empty and metric in runs:
        lines += _top_trials(runs, metric, top)
    unlogged = [t for t in result.trials if t["error"] and not t["mlflow_run_id"]]
    if unlogged:
        lines.append(f"{len(unlogged)} trial(s) failed before their first epoch, e.g.:")
        lines.extend(f"  {t['name']}: {t['error']}" for t in unlogged[:3])
    if result.best:
        lines.append("best: " + " ".join(f"{k}={_fmt(v)}" for k, v in result.best["params"].items())
                     + f"  ({metric} {result.best['value']:.4f}, MLflow run {result.best['run_id']})")
    uri = result.tracking_uri
    lines.append(f"MLflow UI:  {_tool('mlflow')} ui --backend-store-uri {shlex.quote(uri)}   (then open http://127.0.0.1:5000)"
                 if not uri.startswith("http") else f"MLflow UI:  {uri}")
    if result.stage in NEXT_STAGE:
        lines.append(f"next stage: {_tool('python')} {_short(GRID)} --stage {NEXT_STAGE[result.stage]} "
                     + " ".join(shlex.quote(o) for o in overrides))
    else:
        lines.append(f"tables:     {_tool('python')} -m analysis.report --tracking-uri {shlex.quote(uri)} "
                     f"--experiment {shlex.quote(result.experiment)} --out reports")
    return "\n".join(lines).rstrip()
