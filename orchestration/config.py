"""The sweep's configuration: one structured schema, composed by Hydra from `orchestration/conf/`.

Groups, one per concern (the YAML options live in orchestration/conf/<group>/):

    data       what the trials read      rev2net.data.DataConfig       synthetic | ucf101 | hmdb51 | kinetics400 | generic
    model      the network               rev2net.spec.ModelConfig    rev2net | i3d (families: rev2net.registry)
    loss       the weights of eq. (3)    rev2net.spec.LossConfig     paper | zero
    trainer    one trial's optimisation  rev2net.spec.TrainerConfig  default
    adapt      domain adaptation         rev2net.spec.AdaptConfig    none | dann
    search     what is searched, how     SearchConfig                  grid | optuna
    scheduler  early stopping            SchedulerConfig               fifo | asha
    cluster    where trials run          RayConfig + TrialConfig       local | gpu | gpu_shared | gpu_ddp
    mlflow     where runs are logged     MlflowConfig                  local

The schema is registered first in the defaults list, so every option and every command-line
override is merged into typed nodes: an unknown key or a wrong type fails at composition, and
`to_objects` then runs each dataclass's `__post_init__` checks (the values each key allows on its
own). What needs another module's knowledge — a model/loss combination for its family, what the
dataset generator can make — is checked per planned trial by orchestration/plan.py. All of it
happens before any trial.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestration.errors import ConfigError
from orchestration.records import sqlite_path
from orchestration.spaces import STAGES
from rev2net.spec import AdaptConfig, LossConfig, ModelConfig, TrainerConfig, parse_pretrained
from rev2net.data.config import DataConfig

CONF_DIR = Path(__file__).resolve().parent / "conf"
SEARCH_ALGORITHMS = ("grid", "optuna")
SCHEDULERS = ("fifo", "asha")


def _has_password(uri: str) -> bool:
    """`scheme://user:password@host...`: credentials written into a URI."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@", uri))


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is not allowed: expected {allowed}")


@dataclass
class SearchConfig:
    """What a stage searches and how (`search.*`); the spaces themselves are data in search_spaces/."""

    algorithm: str = "grid"          # grid: every point of the plan | optuna: TPE over the same values
    mode: str = "axes"               # factorial: the full product (6^4 = 1296 coarse trials) | axes: one weight at a time (21)
    num_samples: int = 64            # optuna: the trial budget
    seed: int = 0                    # optuna: the sampler's seed
    max_concurrent: int = 0          # trials at once; 0 = as many as the cluster's resources allow
    metric: str = "val/top1"         # what "best" means: an epoch metric of rev2net.train
    metric_mode: str = "max"         # max | min
    spaces_dir: Optional[str] = None  # None: the repository's search_spaces/
    coarse_sweep: Optional[str] = None  # fine: the coarse parent run id to refine (None: the latest finished one)
    seeds: Optional[int] = None      # ablation, compare, cross: seeds per variant (None: the space's `seeds`)
    variants: List[str] = field(default_factory=list)  # ablation, compare, cross: only these variants (empty: all)
    splits: List[int] = field(default_factory=list)  # ablation, compare, cross: run on each of these official
                                     # splits (data.split; empty: data.split alone); tables average over them
    confirm_top_k: int = 0           # coarse, fine: re-run the best K configurations ...
    confirm_seeds: int = 0           # ... with this many more seeds, in the same stage; "best" is then the
                                     # configuration with the best mean over its seeds
    step_time_s: Optional[float] = None  # --dry-run: seconds per training step (one batch) at this stage's fidelity on
                                         # the trial's device, measured (benchmarks/step.py), for the GPU-hour estimate

    def __post_init__(self) -> None:
        _check(self.algorithm in SEARCH_ALGORITHMS, "search.algorithm", self.algorithm, " | ".join(SEARCH_ALGORITHMS))
        _check(self.mode in ("factorial", "axes"), "search.mode", self.mode, "factorial | axes")
        _check(self.num_samples >= 1, "search.num_samples", self.num_samples, "an integer >= 1")
        _check(self.max_concurrent >= 0, "search.max_concurrent", self.max_concurrent, "an integer >= 0 (0 = no limit)")
        _check(self.metric_mode in ("max", "min"), "search.metric_mode", self.metric_mode, "max | min")
        _check(self.seeds is None or self.seeds >= 1, "search.seeds", self.seeds, "null or an integer >= 1")
        _check(all(n >= 1 for n in self.splits), "search.splits", list(self.splits), "a list of split numbers >= 1")
        _check(self.confirm_top_k >= 0 and self.confirm_seeds >= 0 and (self.confirm_top_k > 0) == (self.confirm_seeds > 0),
               "search.confirm_top_k", (self.confirm_top_k, self.confirm_seeds),
               "search.confirm_top_k and search.confirm_seeds both 0, or both >= 1")
        _check(self.step_time_s is None or self.step_time_s > 0, "search.step_time_s", self.step_time_s,
               "null or seconds per training step > 0 (measure it with benchmarks/step.py)")
        if self.algorithm == "optuna":
            _check(self.mode == "factorial", "search.mode", self.mode,
                   "factorial with search=optuna (TPE samples the product of the value sets)")


@dataclass
class SchedulerConfig:
    """Multi-fidelity early stopping (`scheduler.*`): fifo runs every trial to trainer.max_epochs."""

    name: str = "fifo"               # fifo | asha
    grace_period: int = 1            # asha: epochs every trial gets before it can be stopped
    reduction_factor: int = 3        # asha: keep the best 1/η at each rung

    def __post_init__(self) -> None:
        _check(self.name in SCHEDULERS, "scheduler.name", self.name, " | ".join(SCHEDULERS))
        _check(self.grace_period >= 1, "scheduler.grace_period", self.grace_period, "an integer >= 1")
        _check(self.reduction_factor >= 2, "scheduler.reduction_factor", self.reduction_factor, "an integer >= 2")


@dataclass
class RayConfig:
    """Where Ray runs (`ray.*`)."""

    address: Optional[str] = None    # None: start Ray on this machine | auto | ray://host:10001 | host:6379
    num_cpus: Optional[int] = None   # local Ray only: CPUs to offer (None: all)
    num_gpus: Optional[int] = None   # local Ray only: GPUs to offer (None: all)
    storage_path: str = "ray_results"  # trial checkpoints and Tune state: a local or shared folder, or s3://, gs://
    include_dashboard: bool = False  # local Ray only
    snapshot_period_s: float = 30.0  # how often Tune saves the experiment state (trial statuses) to storage_path:
                                     # a killed driver's successor redoes at most what ran after it (README: Performance)

    def __post_init__(self) -> None:
        _check(self.snapshot_period_s > 0, "ray.snapshot_period_s", self.snapshot_period_s, "seconds > 0")
        _check(bool(self.storage_path), "ray.storage_path", self.storage_path,
               "a folder every node can read (shared filesystem) or an object store URI such as s3://bucket/path")


@dataclass
class TrialConfig:
    """One trial's resources and fault tolerance (`trial.*`)."""

    cpus: float = 1.0                # CPUs per trial (the loader's workers run inside them)
    gpus: Optional[float] = None     # GPUs per trial; fractions pack trials (0.25 = 4 per GPU); None: 1 if the cluster has GPUs, else 0
    max_failures: int = 2            # retries of a crashed trial, each from its last checkpoint
    keep_checkpoints: int = 2        # checkpoints kept per trial (one is written every epoch)
    runner: str = "rev2net.trial:run_trial"  # the function one trial runs ("module:function")
    runner_args: Dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the runner
    reuse_actors: bool = True        # reuse Ray workers between trials (no new process per trial)
    processes: int = 0               # data-parallel (DDP) processes per trial, on one node: 0 = one per GPU when
                                     # trial.gpus >= 2, else 1; > 1 without GPUs = CPU processes (gloo)

    def __post_init__(self) -> None:
        _check(self.cpus > 0, "trial.cpus", self.cpus, "a number > 0")
        _check(self.gpus is None or self.gpus >= 0, "trial.gpus", self.gpus, "null or a number >= 0")
        _check(self.gpus is None or self.gpus <= 1 or float(self.gpus).is_integer(), "trial.gpus", self.gpus,
               "a fraction up to 1, or a whole number of GPUs")
        _check(self.processes >= 0, "trial.processes", self.processes, "an integer >= 0 (0 = one per GPU)")
        if self.processes > 1 and self.gpus:
            _check(self.gpus >= 2 and self.processes == self.gpus, "trial.processes", self.processes,
                   f"0 or trial.gpus={self.gpus:g}: a data-parallel trial runs one process per whole GPU")
        _check(self.max_failures >= 0, "trial.max_failures", self.max_failures, "an integer >= 0")
        _check(self.keep_checkpoints >= 1, "trial.keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _check(":" in self.runner, "trial.runner", self.runner, "'module:function'")

    def world_size(self) -> int:
        """The trial's data-parallel processes (1: no DDP)."""
        if self.processes:
            return self.processes
        return int(self.gpus) if self.gpus and self.gpus >= 2 else 1


@dataclass
class MlflowConfig:
    """Where trials are logged (`mlflow.*`)."""

    tracking_uri: str = "sqlite:///mlflow.db"  # MLflow's own default store, in the working directory
    experiment: Optional[str] = None  # None: rev2net-<data.name>
    artifact_location: Optional[str] = None  # for a new experiment (None: the server's default)
    flush_timeout_s: float = 600.0   # at a trial's end, how long to keep retrying metrics the server missed
    system_metrics: Optional[bool] = None  # MLflow system metrics (CPU, memory, GPU) per trial; None: on where
                                           # the trial uses a GPU (GPU figures need the nvidia-ml-py package)
    system_metrics_interval_s: float = 10.0  # their sampling interval
    log_report: bool = True          # grid.py: after a stage, its report (python -m analysis.report) into its parent run

    def __post_init__(self) -> None:
        _check(bool(re.match(r"^[a-z][a-z0-9+.-]*:", self.tracking_uri)) or "/" in self.tracking_uri,
               "mlflow.tracking_uri", self.tracking_uri, "a URI such as sqlite:///mlflow.db or http://host:5000")
        if _has_password(self.tracking_uri):  # the resolved config is logged with every stage
            raise ValueError("mlflow.tracking_uri holds a password, which would be logged with the config: put the "
                             "credentials in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (a tracking server) "
                             "or PGPASSWORD / ~/.pgpass (a database URI) instead")
        _check(self.flush_timeout_s >= 0, "mlflow.flush_timeout_s", self.flush_timeout_s, "a number >= 0")
        _check(self.system_metrics_interval_s > 0, "mlflow.system_metrics_interval_s", self.system_metrics_interval_s,
               "a number of seconds > 0")


@dataclass
class SweepConfig:
    """The whole composed configuration of one stage invocation."""

    stage: str = "coarse"            # one of orchestration.spaces.STAGES (the CLI's --stage)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self) -> None:
        _check(self.stage in STAGES, "stage", self.stage, " | ".join(STAGES))


def register() -> None:
    ConfigStore.instance().store(name="sweep_schema", node=SweepConfig)


_UNKNOWN_KEY = re.compile(r"Key '([^']+)' not in '([^']+)'|Could not override '([^']+)'")


def _hydra_message(err: Exception) -> str:
    """Hydra/OmegaConf errors -> one line that says which key and what to do."""
    text = " ".join(str(err).split())
    cause = err.__cause__ or err.__context__
    detail = " ".join(str(cause).split()) if cause else ""
    m = re.search(r"Could not override '([^']+)'", text)
    if m and ("not in" in (text + detail) or "Key '" in (text + detail)):
        key = m.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        return (f"unknown config key '{key}'" + (f" (see orchestration/config.py for the keys of '{parent}')" if parent
                else " (see orchestration/config.py)") + "; prefix with + only to add keys the schema allows")
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        group = m.group(1).split("/")[0]
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if (CONF_DIR / group).is_dir() else []
        return f"config option '{m.group(1)}' does not exist" + (f"; {group} is one of {', '.join(options)}" if options else "")
    m = re.search(r"full_key: (\S+)", text + " " + detail)
    first = re.split(r"\s+full_key:", detail or text)[0].strip()
    return f"{m.group(1)}: {first}" if m else first


def compose_config(overrides: list[str] | None = None, stage: str | None = None) -> DictConfig:
    """Compose the sweep config from orchestration/conf/ with Hydra overrides (`key=value`, `group=option`)."""
    register()
    overrides = list(overrides or [])
    if stage is not None:
        overrides.append(f"stage={stage}")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_hydra_message(e)) from e
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_objects(cfg: DictConfig) -> SweepConfig:
    """Instantiate the dataclasses, running every `__post_init__` check; errors name the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:  # to_object would silently fall back to the dataclass defaults
        raise ConfigError(", ".join(missing) + (" is" if len(missing) == 1 else " are") + " required by the chosen "
                          "options (" + ", ".join(f"{k.split('.')[0]}={_choice(cfg, k.split('.')[0])}" for k in missing)
                          + "): set " + " ".join(f"{k}=..." for k in missing))
    try:
        return OmegaConf.to_object(cfg)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e).split("\n")[0]) from e
    except OmegaConfBaseException as e:
        raise ConfigError(_hydra_message(e)) from e


def _choice(cfg: DictConfig, group: str) -> str:
    node = cfg.get(group)
    return str(node.get("name", "?")) if isinstance(node, DictConfig) and "name" in node else "?"


def resolve_paths(cfg: DictConfig, cwd: str | None = None) -> DictConfig:
    """Make every relative path absolute (Ray workers run in their trial folders, not here)."""
    cwd = cwd or os.getcwd()
    cfg = cfg.copy()

    def absolute(p: Optional[str]) -> Optional[str]:
        if p is None or "://" in p or os.path.isabs(p):
            return p
        return os.path.normpath(os.path.join(cwd, os.path.expanduser(p)))

    for key in ("data.root", "data.flow_root", "data.eval_root", "ray.storage_path", "search.spaces_dir",
                "mlflow.artifact_location"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            OmegaConf.update(cfg, key, absolute(value), merge=False)
    if cfg.model.pretrained is not None:  # imagenet:rel/g.pth -> imagenet:/abs/rel/g.pth
        scheme, path = parse_pretrained(cfg.model.pretrained)
        cfg.model.pretrained = f"{scheme}:{absolute(path)}" if scheme else absolute(path)
    if cfg.data.class_map and ("/" in cfg.data.class_map or cfg.data.class_map.endswith((".yaml", ".txt", ".csv"))):
        cfg.data.class_map = absolute(cfg.data.class_map)
    uri = cfg.mlflow.tracking_uri
    if sqlite_path(uri) is not None:
        cfg.mlflow.tracking_uri = "sqlite:///" + absolute(str(sqlite_path(uri)))
    elif "://" not in uri:  # a plain folder: MLflow's file store
        cfg.mlflow.tracking_uri = absolute(uri)
    return cfg


def experiment_name(cfg: DictConfig) -> str:
    return cfg.mlflow.experiment or f"rev2net-{cfg.data.name}"

