"""A stage's plan: which trials it runs, each validated before the first one starts; the whole dry run.

    prepare(cfg) -> (cfg with absolute paths, Plan)
        the config's values checked (its dataclasses) -> the plan built from the stage's search
        space (orchestration/spaces.py), the fine and ablation stages reading earlier results from
        MLflow (orchestration/records.py) -> every planned trial's config checked for its model
        family (rev2net.registry.check_spec) and, for the generated dataset, for what the generator
        can make (rev2net.data.synthetic.check_params)
    prepare_data(cfg)      the embedded dataset generated on first use, the dataset checked
    trial_epochs(cfg, n)   how many trial-epochs the stage will train (the dry run prints it)
    device_hours(cfg, n, gpus_per_trial)   what they cost in GPU-hours, from search.step_time_s

Imports neither Ray nor torch: `grid.py --dry-run` runs this module and the console alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from orchestration import records, tracking
from orchestration.config import SweepConfig, experiment_name, resolve_paths, to_objects
from orchestration.errors import ConfigError
from orchestration.spaces import Plan, ablation_plan, coarse_plan, fine_plan, load_space, space_path
from rev2net.data.synthetic import check_params
from rev2net.registry import check_spec
from rev2net.spec import TrialSpec


def stage_best(cfg: DictConfig, stage: str, parent_run_id: Optional[str] = None) -> tuple[dict[str, float], str]:
    """The best weights of the latest finished `stage` (or of `parent_run_id`) in this experiment,
    and a line saying where they come from. LookupError when there is none."""
    exp, uri = experiment_name(cfg), cfg.mlflow.tracking_uri
    if records.store_missing(uri):  # do not create it by looking
        raise LookupError(f"no MLflow store at {uri}")
    client = tracking.client(uri)
    if client.get_experiment_by_name(exp) is None:
        raise LookupError(f"no MLflow experiment {exp!r} at {uri}")
    if parent_run_id is None:
        parents = records.stage_runs(client, exp, stage=stage, finished_only=True)
        if parents.empty:
            raise LookupError(f"no finished {stage} stage in MLflow experiment {exp!r} at {uri}")
        parent_run_id = parents.iloc[0]["run_id"]
    runs = records.load_runs(uri, exp, parent_run_id=parent_run_id)
    best = records.best_config(runs, metric=cfg.search.metric, mode=cfg.search.metric_mode)
    source = f"{stage} sweep {parent_run_id} (best {cfg.search.metric}={best.value:.4f}, run {best.run_id})"
    return {k: float(v) for k, v in best.params.items()}, source


def _fine(cfg: DictConfig, space: dict[str, Any]) -> Plan:
    s = cfg.search
    coarse_file = Path(space["_path"]).parent / space.get("coarse", "coarse.yaml")
    if coarse_file.name != "coarse.yaml":
        raise ConfigError(f"{space['_path']}: `coarse` must name a coarse.yaml")
    coarse_space = load_space("coarse", str(coarse_file.parent))
    try:
        best, source = stage_best(cfg, "coarse", s.coarse_sweep)
    except LookupError as e:
        raise ConfigError(f"the fine stage refines the coarse stage's results, but {e}; run "
                          "`python orchestration/grid.py --stage coarse` with the same data and mlflow settings "
                          "first (or set search.coarse_sweep=<parent run id>)") from e
    return fine_plan(space, coarse_space, best, mode=s.mode, algorithm=s.algorithm, num_samples=s.num_samples,
                     source=source)


def _ablation(cfg: DictConfig, space: dict[str, Any]) -> Plan:
    weights_from = space.get("weights", "auto")
    weights = {k: float(OmegaConf.select(cfg, k)) for k in records.WEIGHTS}
    source = "the loss config"
    if weights_from == "auto":
        for earlier in ("fine", "coarse"):
            try:
                weights, source = stage_best(cfg, earlier)
                break
            except LookupError:
                continue
        else:
            source = f"the loss config (no finished fine or coarse stage in {experiment_name(cfg)})"
    elif weights_from != "config":
        raise ConfigError(f"{space['_path']}: weights={weights_from!r} is not one of auto, config")
    s = cfg.search
    return ablation_plan(space, weights, seeds=s.seeds, variants=list(s.variants) or None,
                         first_seed=int(cfg.trainer.seed), source=source, model_ddp=str(cfg.model.ddp))


def build_plan(cfg: DictConfig) -> Plan:
    """What the stage will run; the fine and ablation stages read earlier results from MLflow."""
    s = cfg.search
    space = load_space(cfg.stage, s.spaces_dir)
    if cfg.stage == "coarse":
        return coarse_plan(space, mode=s.mode, algorithm=s.algorithm, num_samples=s.num_samples)
    return _fine(cfg, space) if cfg.stage == "fine" else _ablation(cfg, space)


def _replace(obj: Any, changes: dict[str, Any]) -> Any:
    """A copy of a dataclass tree with dotted keys changed. Each node is rebuilt once with all of
    its changes, so its __post_init__ checks the new combination (not a half-applied one)."""
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            own[head] = value
    for head, sub in nested.items():
        own[head] = _replace(getattr(obj, head), sub)
    return dataclasses.replace(obj, **own)


def _check_keys(cfg: DictConfig, plan: Plan) -> None:
    """Each distinct (key, value) of the plan merges into the typed config (unknown keys, wrong types)."""
    pairs = {(k, json.dumps(v)) for p in plan.points for k, v in p.items() if k != records.VARIANT_PARAM}
    pairs |= {(k, json.dumps(v)) for k, vals in plan.values.items() if k != records.VARIANT_PARAM for v in vals}
    for key, value in sorted(pairs):
        try:
            OmegaConf.update(cfg.copy(), key, json.loads(value), merge=False)
        except Exception as e:  # noqa: BLE001 - OmegaConf raises several types for one mistake
            raise ConfigError(f"search space key {key}={json.loads(value)!r}: {str(e).splitlines()[0]}") from e


def check_points(cfg: DictConfig, plan: Plan) -> SweepConfig:
    """Every trial's config is valid, before the first trial starts: keys and types (`_check_keys`),
    then each distinct point's dataclasses rebuilt (value checks) and checked for its family."""
    base = to_objects(cfg)
    _check_keys(cfg, plan)
    points = plan.points
    if plan.algorithm == "optuna":  # every point TPE could pick
        keys = list(plan.values)
        points = [dict(zip(keys, c)) for c in itertools.product(*(plan.values[k] for k in keys))]
    seen: set[str] = set()
    for point in points:
        config_point = {k: v for k, v in point.items() if k != records.VARIANT_PARAM}
        ident = json.dumps(config_point, sort_keys=True)
        if ident in seen:
            continue
        seen.add(ident)
        try:
            obj = _replace(base, config_point)
            check_spec(TrialSpec(data=obj.data, model=obj.model, loss=obj.loss, trainer=obj.trainer))
            if obj.data.name == "synthetic":  # what the generator can make (its own check)
                check_params(obj.data.synthetic)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"trial {records.run_name(point)}: {str(e).splitlines()[0]}") from e
    return base


def prepare(cfg: DictConfig) -> tuple[DictConfig, Plan]:
    """Resolve paths, plan the stage and validate every trial: all that a dry run does. The config
    is checked before MLflow is consulted (the fine and ablation plans read earlier results)."""
    cfg = resolve_paths(cfg)
    to_objects(cfg)
    if cfg.stage != "coarse" and not records.store_missing(cfg.mlflow.tracking_uri):
        tracking.check_reachable(cfg.mlflow.tracking_uri)
    plan = build_plan(cfg)
    if plan.num_trials == 0:
        raise ConfigError(f"stage {cfg.stage} plans no trials; check {space_path(cfg.stage, cfg.search.spaces_dir)}")
    check_points(cfg, plan)
    return cfg, plan


def prepare_data(cfg: DictConfig, *, progress: bool = True) -> None:
    """Generate the embedded dataset on first use, then check the dataset like `rev2net.data.check`."""
    from rev2net.data import check_dataset, ensure_synthetic

    data = to_objects(cfg).data
    if data.name == "synthetic":
        ensure_synthetic(data.root, data.synthetic, progress=progress)
    report = check_dataset(data)
    if not report.ok:
        raise ConfigError(f"dataset {data.name} at {data.root} is not ready: {report.summary().splitlines()[0]} "
                          f"(details: python -m rev2net.data.check --dataset {data.name} --root {data.root} "
                          f"--split {data.split})")


def trial_epochs(cfg: DictConfig, n_trials: int) -> tuple[int, str]:
    """Trial-epochs the stage will train; for ASHA the synchronous successive-halving estimate."""
    R = int(cfg.trainer.max_epochs)
    if cfg.scheduler.name == "fifo":
        return n_trials * R, f"fifo: {n_trials} trials × {R} epochs"
    g, eta = int(cfg.scheduler.grace_period), int(cfg.scheduler.reduction_factor)
    rungs = []
    r = g
    while r < R:
        rungs.append(r)
        r *= eta
    rungs.append(R)
    total, alive, prev = 0.0, float(n_trials), 0
    for rung in rungs:
        total += alive * (rung - prev)
        prev = rung
        alive = max(1.0, alive / eta)
    return int(round(total)), (f"asha: rungs at epochs {', '.join(map(str, rungs))}, keeping 1/{eta} at each "
                               f"(≈ estimate; {n_trials * R} without early stopping)")


def steps_per_epoch(cfg: DictConfig) -> tuple[Optional[int], str]:
    """Training steps (batches) per epoch of one trial: its training videos (the split's train list,
    less the held-out validation share) / (data.batch_size × data-parallel processes); (None, why)
    when the split list cannot be read yet (the embedded dataset is generated on first use)."""
    import math

    from rev2net.data.layouts import load_split

    data = to_objects(cfg).data
    try:
        train = len(load_split(data.name, data.root, data.split).train)
    except Exception as e:  # noqa: BLE001 - no dataset yet, or another layout problem: no estimate
        if data.name != "synthetic":
            return None, f"the {data.name} split list at {data.root} cannot be read ({str(e).splitlines()[0][:80]})"
        from rev2net.data.synthetic import video_plan   # not generated yet: its plan says what it will list

        syn = data.synthetic
        train = sum(1 for _, _, group, _ in video_plan(syn.classes, syn.videos_per_class) if group % 3 != data.split - 1)
    train = int(round(train * (1.0 - float(getattr(data, "val_fraction", 0.0) or 0.0))))
    per_step = int(data.batch_size) * to_objects(cfg).trial.world_size()
    return math.ceil(train / per_step), f"{train} training videos / {per_step} per step"


def device_hours(cfg: DictConfig, n_trials: int, gpus_per_trial: float) -> tuple[Optional[float], str]:
    """The stage's GPU-hours (CPU trials: device-hours) from a measured step time: trial-epochs
    (`trial_epochs`, the ASHA estimate included) × steps per epoch × search.step_time_s × GPUs per
    trial / 3600 — training steps only (evaluation, forward-only, adds about a tenth). (None, what
    is missing) without search.step_time_s or a readable split list."""
    step_s = cfg.search.step_time_s
    if step_s is None:
        return None, "pass search.step_time_s=<seconds per training step> (benchmarks/step.py at this fidelity)"
    steps, how = steps_per_epoch(cfg)
    if steps is None:
        return None, how
    epochs, _ = trial_epochs(cfg, n_trials)
    hours = epochs * steps * float(step_s) / 3600.0
    return hours * (gpus_per_trial if gpus_per_trial > 0 else 1.0), (
        f"{epochs} trial-epochs × {steps} steps ({how}) × {step_s:g} s"
        + (f" × {gpus_per_trial:g} GPU per trial" if gpus_per_trial > 0 else ", on CPU"))
