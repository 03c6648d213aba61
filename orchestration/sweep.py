"""A stage's identity: its sweep id, its generations, and where its Tune state lives.

The sweep id is the stage, the mode and a hash of everything that changes the trials' results
(data, model, loss, trainer, search, scheduler and the planned points; not resources, addresses or
the tracking URI). Running the same command again therefore continues the same sweep: its Tune
state lives in `<ray.storage_path>/<experiment>/<sweep id>`, finished trials are not rerun,
unfinished ones continue from their last checkpoint, and their MLflow runs continue. A different
config is a different sweep. `--fresh` starts the same config over as a new generation
(`<sweep id>-r2`, `-r3`, ...), leaving the old one. Tune state is continued only with the store
that holds its parent run (`check_store`): a new or deleted store starts a new generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from orchestration.config import experiment_name
from orchestration.errors import ConfigError
from orchestration.spaces import Plan

log = logging.getLogger(__name__)
RUNTIME_SECTIONS = ("ray", "trial", "mlflow")  # how and where trials run; not part of a sweep's identity


ADDED_KEYS = (("trainer", "max_train_s", 0),)   # (section, key, default): see sweep_id


def sweep_id(cfg: DictConfig, plan: Plan, generation: int = 1) -> str:
    """`<stage>-<mode>-<hash>` (generation 1) or `<stage>-<mode>-<hash>-r<generation>`."""
    identity = OmegaConf.to_container(cfg, resolve=True)
    for k in RUNTIME_SECTIONS:
        identity.pop(k)
    identity["search"].pop("max_concurrent", None)
    # Keys added after sweeps existed leave those sweeps' ids as they were while at their default,
    # so a sweep started before an upgrade is continued after it, not started over.
    for section, key, default in ADDED_KEYS:
        if identity.get(section, {}).get(key, default) == default:
            identity.get(section, {}).pop(key, None)
    identity["plan"] = {"points": plan.points, "values": plan.values, "base": plan.base,
                        "num_samples": plan.num_samples}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    sid = f"{cfg.stage}-{plan.mode}-{digest}"
    return sid if generation == 1 else f"{sid}-r{generation}"


def experiment_dir(cfg: DictConfig) -> str:
    """Where the Tune state of this experiment's sweeps lives."""
    return f"{cfg.ray.storage_path.rstrip('/')}/{experiment_name(cfg)}"


def has_state(path: str) -> bool:
    """Tune state to restore at `path` (a local folder or an object-store URI)."""
    from ray import tune

    return tune.Tuner.can_restore(path)


def latest_generation(cfg: DictConfig, plan: Plan) -> int:
    """The newest generation of this sweep that has Tune state (1 when none has)."""
    gen = 1
    while has_state(f"{experiment_dir(cfg)}/{sweep_id(cfg, plan, gen + 1)}"):
        gen += 1
    return gen


@dataclass(frozen=True)
class Location:
    """Which generation of the sweep this invocation runs, and whether it continues one."""

    sweep_id: str
    generation: int
    path: str            # its Tune state: <experiment dir>/<sweep id>
    restore: bool        # Tune state is there to continue


def locate(cfg: DictConfig, plan: Plan, *, fresh: bool = False, require_resume: bool = False) -> Location:
    """The generation to run: the latest one (continued if it has state), or with `fresh` a new one;
    `require_resume` insists that there is something to continue."""
    generation = latest_generation(cfg, plan)
    path = f"{experiment_dir(cfg)}/{sweep_id(cfg, plan, generation)}"
    restore = has_state(path)
    if fresh and restore:
        generation += 1
        path, restore = f"{experiment_dir(cfg)}/{sweep_id(cfg, plan, generation)}", False
    if require_resume and not restore:
        raise ConfigError(f"--resume: there is no interrupted {cfg.stage} stage with this config under "
                          f"{experiment_dir(cfg)} (the sweep id is {sweep_id(cfg, plan)}); drop --resume to start it")
    return Location(sweep_id(cfg, plan, generation), generation, path, restore)


def check_store(cfg: DictConfig, plan: Plan, where: Location, has_parent: Callable[[str], bool]) -> Location:
    """A restore continues a sweep only in the store that holds its parent run. Tune state whose
    parent run the store lacks (the store was deleted, or mlflow.tracking_uri points at another
    one) cannot be continued (its trials' child runs are not there): a new generation starts
    instead, and says so in one line. `has_parent(sweep_id)`: whether the store holds that run."""
    if not where.restore or has_parent(where.sweep_id):
        return where
    generation = latest_generation(cfg, plan) + 1
    sid = sweep_id(cfg, plan, generation)
    log.warning("the Tune state at %s belongs to a sweep that the MLflow store %s does not hold (no parent run "
                "%s): starting it over as %s", where.path, cfg.mlflow.tracking_uri, where.sweep_id, sid)
    return Location(sid, generation, f"{experiment_dir(cfg)}/{sid}", False)


def confirm_location(cfg: DictConfig, confirm: Plan, main: Location) -> Location:
    """Where the confirmation re-runs of a stage's generation keep their Tune state: a sweep of their
    own (`<sweep id>-confirm-<hash of the re-run points>`), under the same parent run."""
    digest = hashlib.sha1(json.dumps(confirm.points, sort_keys=True, default=str).encode()).hexdigest()[:6]
    sid = f"{main.sweep_id}-confirm-{digest}"
    path = f"{experiment_dir(cfg)}/{sid}"
    return Location(sid, main.generation, path, has_state(path))
