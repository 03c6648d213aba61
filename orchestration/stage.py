"""One stage of the sweep as a plain function: `run_stage(cfg) -> StageResult`.

    compose (config.py) -> plan (spaces.py) -> validate everything -> data ready and checked
    -> MLflow parent run -> Ray Tune (new, or restored: see below) -> summary

Resuming is automatic: a stage's Tune state lives in `<ray.storage_path>/<experiment>/<sweep id>`,
where the sweep id is the stage, the mode and a hash of everything that changes the trials'
results (data, model, loss, trainer, search, scheduler and the planned points; not resources,
addresses or the tracking URI). Running the same command again therefore continues the same
sweep: finished trials are not rerun, unfinished ones continue from their last checkpoint, and
their MLflow runs continue (tracking.py). A different config is a different sweep. `--fresh`
starts the same config over as a new generation (`<sweep id>-r2`, ...), leaving the old one.

On a cluster (`ray.address=auto` inside it, or ray://head:10001): the trials' checkpoints and
Tune's state go to `ray.storage_path`, which every node must reach (a shared folder, checked
before the first trial, or an object store such as s3://); MLflow credentials set in the driver's
environment reach the trials through Ray's runtime environment; a node lost mid-sweep costs its
trials one retry each, from their last checkpoints, on the nodes that remain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mlflow.entities import RunTag
from omegaconf import DictConfig, OmegaConf

from analysis.runs import WEIGHTS, best_config, load_runs, stage_runs
from orchestration import tracking
from orchestration.config import SweepConfig, experiment_name, resolve_paths, to_objects
from orchestration.errors import ConfigError
from orchestration.spaces import (Plan, ablation_plan, coarse_plan, fine_plan, load_space, space_path)
from orchestration.trainable import META_KEYS, SweepContext, run_name

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
RUNTIME_SECTIONS = ("ray", "trial", "mlflow")  # how and where trials run; not part of a sweep's identity


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


# --------------------------------------------------------------------------- planning

def _client(cfg: DictConfig):
    return tracking.client(cfg.mlflow.tracking_uri)


def _stage_best(cfg: DictConfig, stage: str, parent_run_id: Optional[str] = None) -> tuple[dict[str, float], str]:
    """The best weights of the latest finished `stage` (or of `parent_run_id`) in this experiment."""
    exp = experiment_name(cfg)
    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():  # do not create it by looking
        raise LookupError(f"no MLflow store at {uri}")
    client = _client(cfg)
    if client.get_experiment_by_name(exp) is None:
        raise LookupError(f"no MLflow experiment {exp!r} at {cfg.mlflow.tracking_uri}")
    if parent_run_id is None:
        parents = stage_runs(client, exp, stage=stage, finished_only=True)
        if parents.empty:
            raise LookupError(f"no finished {stage} stage in MLflow experiment {exp!r} at {cfg.mlflow.tracking_uri}")
        parent_run_id = parents.iloc[0]["run_id"]
    runs = load_runs(cfg.mlflow.tracking_uri, exp, parent_run_id=parent_run_id)
    best = best_config(runs, metric=cfg.search.metric, mode=cfg.search.metric_mode)
    source = f"{stage} sweep {parent_run_id} (best {cfg.search.metric}={best.value:.4f}, run {best.run_id})"
    return {k: float(v) for k, v in best.params.items()}, source


def build_plan(cfg: DictConfig) -> Plan:
    """What the stage will run; the fine and ablation stages read earlier results from MLflow."""
    s = cfg.search
    stage = cfg.stage
    space = load_space(stage, s.spaces_dir)
    if stage == "coarse":
        return coarse_plan(space, mode=s.mode, algorithm=s.algorithm, num_samples=s.num_samples)
    if stage == "fine":
        coarse_file = Path(space["_path"]).parent / space.get("coarse", "coarse.yaml")
        coarse_space = load_space("coarse", str(coarse_file.parent)) if coarse_file.name == "coarse.yaml" else None
        if coarse_space is None:
            raise ConfigError(f"{space['_path']}: `coarse` must name a coarse.yaml")
        try:
            best, source = _stage_best(cfg, "coarse", s.coarse_sweep)
        except LookupError as e:
            raise ConfigError(f"the fine stage refines the coarse stage's results, but {e}; run "
                              "`python orchestration/grid.py --stage coarse` with the same data and mlflow settings "
                              "first (or set search.coarse_sweep=<parent run id>)") from e
        return fine_plan(space, coarse_space, best, mode=s.mode, algorithm=s.algorithm,
                         num_samples=s.num_samples, source=source)
    # ablation
    weights_from = space.get("weights", "auto")
    loss_weights = {k: float(OmegaConf.select(cfg, k)) for k in WEIGHTS}
    weights, source = loss_weights, "the loss config"
    if weights_from == "auto":
        for earlier in ("fine", "coarse"):
            try:
                weights, source = _stage_best(cfg, earlier)
                break
            except LookupError:
                continue
        else:
            source = f"the loss config (no finished fine or coarse stage in {experiment_name(cfg)})"
    elif weights_from != "config":
        raise ConfigError(f"{space['_path']}: weights={weights_from!r} is not one of auto, config")
    return ablation_plan(space, weights, seeds=s.seeds, variants=list(s.variants) or None,
                         first_seed=int(cfg.trainer.seed), source=source, model_ddp=str(cfg.model.ddp))


def sweep_id(cfg: DictConfig, plan: Plan, generation: int = 1) -> str:
    identity = OmegaConf.to_container(cfg, resolve=True)
    for k in RUNTIME_SECTIONS:
        identity.pop(k)
    identity["search"].pop("max_concurrent", None)
    identity["plan"] = {"points": plan.points, "values": plan.values, "base": plan.base,
                        "num_samples": plan.num_samples}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    sid = f"{cfg.stage}-{plan.mode}-{digest}"
    return sid if generation == 1 else f"{sid}-r{generation}"


# --------------------------------------------------------------------------- validation

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


def check_points(cfg: DictConfig, plan: Plan) -> SweepConfig:
    """Every trial's config is valid, before the first trial starts: each distinct (key, value)
    is merged into the typed config once (unknown keys, wrong types), then each point's
    dataclasses are rebuilt (value checks) and the model/loss combination is checked."""
    from rev2net.trial import TrialSpec, check_spec

    base = to_objects(cfg)
    pairs = {(k, json.dumps(v)) for p in plan.points for k, v in p.items() if k not in META_KEYS}
    pairs |= {(k, json.dumps(v)) for k, vals in plan.values.items() if k not in META_KEYS for v in vals}
    for key, value in sorted(pairs):
        probe = cfg.copy()
        try:
            OmegaConf.update(probe, key, json.loads(value), merge=False)
        except Exception as e:  # noqa: BLE001 - OmegaConf raises several types for one mistake
            raise ConfigError(f"search space key {key}={json.loads(value)!r}: {str(e).splitlines()[0]}") from e
    points = plan.points
    if plan.algorithm == "optuna":  # every point TPE could pick
        keys = list(plan.values)
        import itertools
        points = [dict(zip(keys, c)) for c in itertools.product(*(plan.values[k] for k in keys))]
    seen: set[str] = set()
    for point in points:
        config_point = {k: v for k, v in point.items() if k not in META_KEYS}
        ident = json.dumps(config_point, sort_keys=True)
        if ident in seen:
            continue
        seen.add(ident)
        try:
            obj = _replace(base, config_point)
            check_spec(TrialSpec(data=obj.data, model=obj.model, loss=obj.loss, trainer=obj.trainer))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"trial {run_name(point)}: {str(e).splitlines()[0]}") from e
    return base


def check_ray_address(address: Optional[str], timeout_s: float = 5.0) -> None:
    """An explicit Ray address must answer before anything starts (ray.init would retry for minutes)."""
    if address in (None, "", "local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address={address!r} is not host:port, ray://host:port, auto or null")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(f"Ray cluster at ray.address={address!r} is unreachable ({e}); start it or fix ray.address") from e


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


# --------------------------------------------------------------------------- the cluster

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in a job's entrypoint: the job's runtime env


def runtime_env() -> Optional[dict[str, Any]]:
    """The trials' runtime environment: the MLflow credentials set here, when there are any (workers
    on other nodes do not inherit this process's environment). Inside a Ray job, variables that the
    job's own runtime environment already sets are left to it (Ray refuses to merge a repeated one)."""
    env = tracking.worker_env_vars()
    if os.environ.get(JOB_CONFIG_ENV):
        taken = (json.loads(os.environ[JOB_CONFIG_ENV]).get("runtime_env") or {}).get("env_vars") or {}
        env = {k: v for k, v in env.items() if k not in taken}
    return {"env_vars": env} if env else None


def _node_sees(path: str) -> bool:
    return os.path.exists(path)


def check_shared_storage(storage_path: str) -> None:
    """On a cluster of several machines, a local `ray.storage_path` must be one folder that every
    node reads (checkpoints written on one node are restored on another after a failure): a marker
    written here must be visible from every alive node on another machine."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "://" in storage_path or ray.util.client.ray.is_connected():  # object store; or a Ray Client driver,
        return                                                          # which need not see the cluster's disks
    here = ray.util.get_node_ip_address()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["NodeManagerAddress"] != here]
    if not nodes:
        return
    os.makedirs(storage_path, exist_ok=True)
    marker = os.path.join(storage_path, f".rev2net-shared-{uuid.uuid4().hex}")
    open(marker, "w").close()
    try:
        check = ray.remote(num_cpus=0)(_node_sees)
        refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]:
                check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
                for n in nodes}
        blind = [name for name, ref in refs.items() if not ray.get(ref, timeout=120)]
    finally:
        os.remove(marker)
    if blind:
        raise ConfigError(f"ray.storage_path={storage_path} is not shared: node(s) {', '.join(blind)} do not see it; "
                          "use a folder every node mounts, or an object store such as s3://bucket/ray_results")


# --------------------------------------------------------------------------- resources

def local_resources(cfg: DictConfig) -> tuple[float, float]:
    if cfg.ray.address is None:
        cpus = cfg.ray.num_cpus if cfg.ray.num_cpus is not None else os.cpu_count() or 1
        if cfg.ray.num_gpus is not None:
            gpus = cfg.ray.num_gpus
        else:
            import torch
            gpus = torch.cuda.device_count()
        return float(cpus), float(gpus)
    import ray
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def trial_resources(cfg: DictConfig, cluster_gpus: float) -> dict[str, float]:
    gpus = cfg.trial.gpus if cfg.trial.gpus is not None else (1.0 if cluster_gpus > 0 else 0.0)
    return {"cpu": float(cfg.trial.cpus), "gpu": float(gpus)}


def max_concurrency(cfg: DictConfig, resources: dict[str, float], cluster: tuple[float, float]) -> int:
    cpus, gpus = cluster
    limits = [int(cpus // resources["cpu"]) if resources["cpu"] else math.inf]
    if resources["gpu"]:
        limits.append(int(gpus // resources["gpu"]))
    if cfg.search.max_concurrent:
        limits.append(cfg.search.max_concurrent)
    return int(max(1, min(limits)))


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


# --------------------------------------------------------------------------- the stage

def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _artifact_location(cfg: DictConfig) -> Optional[str]:
    if cfg.mlflow.artifact_location:
        return cfg.mlflow.artifact_location
    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):  # next to the database, not wherever the process happens to run
        return str(Path(uri[len("sqlite:///"):]).parent / "mlartifacts")
    return None


def experiment_dir(cfg: DictConfig) -> str:
    base = cfg.ray.storage_path
    return f"{base.rstrip('/')}/{experiment_name(cfg)}"


def _latest_generation(cfg: DictConfig, base_id: str) -> int:
    """The newest generation of this sweep that has Tune state (1 when none has)."""
    from ray import tune

    gen = 1
    while tune.Tuner.can_restore(f"{experiment_dir(cfg)}/{sweep_id_for(base_id, gen + 1)}"):
        gen += 1
    return gen


def sweep_id_for(base_id: str, generation: int) -> str:
    return base_id if generation == 1 else f"{base_id}-r{generation}"


def prepare(cfg: DictConfig) -> tuple[DictConfig, Plan]:
    """Resolve paths, plan the stage and validate every trial: all that a dry run does. The config
    is checked before MLflow is consulted (the fine and ablation plans read earlier results)."""
    cfg = resolve_paths(cfg)
    to_objects(cfg)
    if cfg.stage != "coarse":
        uri = cfg.mlflow.tracking_uri
        if not (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()):
            tracking.check_reachable(uri)
    plan = build_plan(cfg)
    if plan.num_trials == 0:
        raise ConfigError(f"stage {cfg.stage} plans no trials; check {space_path(cfg.stage, cfg.search.spaces_dir)}")
    check_points(cfg, plan)
    return cfg, plan


def run_stage(cfg: DictConfig, *, fresh: bool = False, require_resume: bool = False, progress: bool = True,
              progress_interval_s: float = 15.0) -> StageResult:
    """Validate everything, then run the stage on Ray Tune with every trial logged to MLflow."""
    with tracking.http_policy():  # fail fast on HTTP, retry here: a restarting server never stalls the loop
        return _run_stage(cfg, fresh=fresh, require_resume=require_resume, progress=progress,
                          progress_interval_s=progress_interval_s)


def _run_stage(cfg: DictConfig, *, fresh: bool, require_resume: bool, progress: bool,
               progress_interval_s: float) -> StageResult:
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from orchestration.callbacks import HeartbeatCallback, ProgressCallback, StatusCallback
    from orchestration.trainable import run_sweep_trial

    started = time.monotonic()
    # A checkpoint every epoch with num_to_keep forces frequent Tune state snapshots when epochs are
    # short; that is intended here, so the warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Our ProgressCallback is the display; Tune's own (banner, TensorBoard hint) stays quiet.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # MLflow is the record of every trial: of Tune's own loggers only result.json stays (added below);
    # its TensorBoard and CSV files would cost the driver's event loop at every result and trial end.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    cfg, plan = prepare(cfg)
    for note in plan.notes:
        if note.startswith("identical variants"):
            log.warning(note)
    check_ray_address(cfg.ray.address)
    tracking.check_reachable(cfg.mlflow.tracking_uri)
    prepare_data(cfg, progress=progress)

    exp = experiment_name(cfg)
    client = tracking.client(cfg.mlflow.tracking_uri)
    exp_id = tracking.experiment_id(client, exp, _artifact_location(cfg))

    base_id = sweep_id(cfg, plan)
    generation = _latest_generation(cfg, base_id)
    path = f"{experiment_dir(cfg)}/{sweep_id_for(base_id, generation)}"
    can_restore = tune.Tuner.can_restore(path)
    if fresh and can_restore:
        generation += 1
        path, can_restore = f"{experiment_dir(cfg)}/{sweep_id_for(base_id, generation)}", False
    if require_resume and not can_restore:
        raise ConfigError(f"--resume: there is no interrupted {cfg.stage} stage with this config under "
                          f"{experiment_dir(cfg)} (the sweep id is {base_id}); drop --resume to start it")
    sid = sweep_id_for(base_id, generation)

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    parent_id, parent_resumed = tracking.start_parent(
        client, exp_id, sweep_id=sid, stage=cfg.stage, mode=plan.mode,
        run_name=f"{cfg.stage} · {plan.mode} · {sid.split('-')[-1] if generation == 1 else sid}",
        params={"stage": cfg.stage, "mode": plan.mode, "algorithm": plan.algorithm, "trials": plan.num_trials,
                "scheduler": cfg.scheduler.name, "data.name": cfg.data.name, "trainer.max_epochs": cfg.trainer.max_epochs,
                "search.metric": cfg.search.metric},
        tags={tracking.TAG_GIT: _git_commit(), "rev2net.storage": path})
    if not parent_resumed:
        # tracking.redact: a secret from the environment never lands in MLflow, whatever key holds it
        client.log_text(parent_id, tracking.redact(config_yaml), "config.yaml")
        client.log_text(parent_id, tracking.redact(json.dumps({"points": plan.points, "values": plan.values,
                                                               "base": plan.base, "notes": plan.notes},
                                                              indent=1, default=str)), "plan.json")

    if not ray.is_initialized():
        if cfg.ray.address is None:  # "local": a new Ray here, never one found in /tmp/ray or RAY_ADDRESS
            ray.init(address="local", num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
                     include_dashboard=cfg.ray.include_dashboard, logging_level=logging.WARNING,
                     runtime_env=runtime_env())
        else:
            ray.init(address=cfg.ray.address, logging_level=logging.WARNING, runtime_env=runtime_env())
    check_shared_storage(cfg.ray.storage_path)
    cluster = local_resources(cfg)
    resources = trial_resources(cfg, cluster[1])

    ctx = SweepContext(config_yaml=config_yaml, sweep_id=sid, experiment_id=exp_id, parent_run_id=parent_id,
                       tracking_uri=cfg.mlflow.tracking_uri, stage=cfg.stage, metric=cfg.search.metric,
                       shuffle_protocols=tuple(plan.shuffle_protocols), flush_timeout_s=cfg.mlflow.flush_timeout_s)
    trainable = tune.with_resources(tune.with_parameters(run_sweep_trial, ctx=ctx), resources)
    metric, mode = cfg.search.metric, cfg.search.metric_mode
    if plan.algorithm == "optuna":
        param_space = {k: tune.choice(v) for k, v in plan.values.items()}
    else:
        param_space = {"point": tune.grid_search(plan.points)}

    if can_restore:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space)
    else:
        search_alg = None
        if plan.algorithm == "optuna":
            import optuna
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch
            search_alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.search.seed))
            if cfg.search.max_concurrent:
                search_alg = ConcurrencyLimiter(search_alg, max_concurrent=cfg.search.max_concurrent)
        scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=cfg.trainer.max_epochs,
                                   grace_period=cfg.scheduler.grace_period,
                                   reduction_factor=cfg.scheduler.reduction_factor)
                     if cfg.scheduler.name == "asha" else FIFOScheduler())
        callbacks = [StatusCallback(cfg.mlflow.tracking_uri, exp_id, sid, cfg.trainer.max_epochs,
                                    flush_timeout_s=cfg.mlflow.flush_timeout_s),
                     HeartbeatCallback(cfg.mlflow.tracking_uri, parent_id), JsonLoggerCallback()]
        if progress:
            callbacks.append(ProgressCallback(title=f"{cfg.stage} · {plan.mode}", total_trials=plan.num_trials,
                                              max_epochs=cfg.trainer.max_epochs, metric=metric,
                                              interval_s=progress_interval_s))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler,
                num_samples=plan.num_samples if plan.algorithm == "optuna" else 1,
                max_concurrent_trials=cfg.search.max_concurrent or None, reuse_actors=cfg.trial.reuse_actors,
                trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(
                name=sid, storage_path=experiment_dir(cfg), verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=cfg.trial.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.trial.keep_checkpoints)))
    grid = tuner.fit()

    trials = []
    for r in grid:
        metrics = r.metrics or {}
        point = (r.config or {}).get("point", r.config or {})
        trials.append({"name": run_name(point), "point": point, "error": str(r.error).splitlines()[-1] if r.error else None,
                       "epochs": int(metrics.get("epoch", 0)), metric: metrics.get(metric),
                       "mlflow_run_id": metrics.get("mlflow_run_id")})
    result = StageResult(stage=cfg.stage, sweep_id=sid, experiment=exp, tracking_uri=cfg.mlflow.tracking_uri,
                         storage_dir=path, plan=plan, metric=metric, parent_run_id=parent_id, resumed=can_restore, trials=trials)
    patience = cfg.mlflow.flush_timeout_s  # the tracking server may be restarting right now
    runs = tracking.retry(lambda: load_runs(cfg.mlflow.tracking_uri, exp, parent_run_id=parent_id),
                          what="load_runs", timeout_s=patience)
    unfinished = int((runs["status"] == "running").sum()) if not runs.empty else plan.num_trials
    try:
        best = best_config(runs, metric=metric, mode=mode, keys=[k for k in WEIGHTS if k in runs])
        result.best = {"params": {k: float(v) for k, v in best.params.items()}, "value": best.value, "run_id": best.run_id, "tied_with": best.tied_with}
        tags = [RunTag(f"best.{k}", str(v)) for k, v in best.params.items()] + [RunTag("best.run_id", best.run_id)]
        tracking.retry(lambda: client.log_batch(parent_id, tags=tags), what="best tags", timeout_s=patience)
        tracking.retry(lambda: client.log_metric(parent_id, f"best/{metric}", best.value), timeout_s=patience)
    except LookupError as e:
        log.warning("no best configuration: %s", e)
    complete = len(runs) >= plan.num_trials and unfinished == 0
    result.complete = complete
    tracking.retry(lambda: client.set_terminated(parent_id, "FINISHED" if complete else "KILLED"), timeout_s=patience)
    result.wall_s = time.monotonic() - started
    return result
