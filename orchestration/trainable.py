"""One trial on Ray Tune: apply the trial's point to the sweep config, run the trial's runner
(`rev2net.trial.run_trial` by default), checkpoint every epoch and log it to its MLflow child run.

Order inside an epoch's end, chosen so that nothing is lost or written twice:
    1. metrics -> MLflow (`ChildRun.sync`: only epochs the run does not hold yet)
    2. state   -> Ray checkpoint, with the metrics -> Tune (`tune.report`)
Tune may stop a trial inside `tune.report` (ASHA, max_t), so everything the trial owes MLflow is
sent before it. A crash between 1 and 2 re-runs that epoch from the previous checkpoint; the run
already holds it, so `sync` skips it.

A data-parallel trial (trial.gpus >= 2, or trial.processes > 1) is still one Tune trial and one
MLflow run: the runner trains on that many processes of the trial's node, and the process that
runs this function is rank 0, the only one that logs and checkpoints.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import ray
import torch
from omegaconf import OmegaConf
from ray import tune

from orchestration import records, tracking
from orchestration.config import SweepConfig, to_objects
from orchestration.spaces import point_key
from rev2net.spec import TrialSpec
from rev2net.train import DivergedError, EpochReport

log = logging.getLogger(__name__)
STATE_FILE = "trial_state.pt"


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares; sent once to the workers through `tune.with_parameters`."""

    config_yaml: str            # the resolved sweep config (absolute paths)
    sweep_id: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    stage: str
    metric: str = "val/top1"   # Tune's metric: every report carries it (NaN for a diverged trial)
    shuffle_protocols: tuple[str, ...] = ()
    flush_timeout_s: float = 600.0


def trial_point(config: dict[str, Any]) -> dict[str, Any]:
    """The trial's point: grid trials carry it under "point", Optuna's are the flat config itself."""
    return dict(config["point"]) if "point" in config else dict(config)


@functools.lru_cache(maxsize=4)
def _base_config(config_yaml: str):
    """The resolved YAML merged back onto the typed schema (once per worker process)."""
    cfg = OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.create(config_yaml))
    OmegaConf.set_struct(cfg, True)
    return cfg


def apply_point(config_yaml: str, point: dict[str, Any]) -> SweepConfig:
    """The sweep config with the trial's values set, as validated dataclasses."""
    cfg = _base_config(config_yaml).copy()
    for key, value in point.items():
        if key not in records.META_PARAMS:  # names the trial; its settings are in the point already
            OmegaConf.update(cfg, key, value, merge=False)
    return to_objects(cfg)


def trial_params(cfg: SweepConfig, point: dict[str, Any]) -> dict[str, Any]:
    """The child run's params: the weights, the ablation switches, model/data identifiers, seed."""
    m, d, t, w = cfg.model, cfg.data, cfg.trainer, cfg.loss
    params = {
        "model.name": m.name, "loss.alpha": w.alpha, "loss.beta": w.beta, "loss.lambda_flow": w.lambda_flow, "loss.lambda_im": w.lambda_im,
        "model.flow_decoder": m.flow_decoder, "model.frame_decoder": m.frame_decoder,
        "model.frame_target": m.frame_target, "model.ddp_layers": ",".join(m.ddp_layers),
        "model.decoder_arch": m.decoder_arch, "model.width": m.width, "model.pretrained": m.pretrained,
        "model.modality": m.modality, "model.segments": m.segments, "model.branches": list(m.branches),
        "data.name": d.name, "data.split": d.split, "data.frames": d.frames, "data.frame_stride": d.frame_stride,
        "data.crop_size": d.crop_size, "data.class_map": d.class_map, "data.eval_name": d.eval_name,
        "trainer.seed": t.seed, "trainer.max_epochs": t.max_epochs, "trainer.lr": t.lr,
        "trainer.schedule": t.schedule, "data.batch_size": d.batch_size, "adapt.name": cfg.adapt.name,
        "data.val_fraction": d.val_fraction, "data.val_seed": d.val_seed,
    }
    for key, value in point.items():
        params.setdefault(key, value)
    return params


def load_runner(spec: str) -> Callable[..., dict[str, float]]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _load_state(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)


def run_sweep_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """The Ray Tune function trainable (wrapped with `tune.with_parameters(run_sweep_trial, ctx=...)`)."""
    for k, v in tracking.HTTP_ENV.items():
        os.environ.setdefault(k, v)
    for name in ("ray.train", "ray.tune"):  # one INFO line per checkpoint otherwise reaches the driver
        logging.getLogger(name).setLevel(logging.WARNING)
    point = trial_point(config)
    cfg = apply_point(ctx.config_yaml, point)
    torch.set_num_threads(max(1, int(cfg.trial.cpus)))
    spec = TrialSpec(data=cfg.data, model=cfg.model, loss=cfg.loss, trainer=cfg.trainer, adapt=cfg.adapt)
    runner = load_runner(cfg.trial.runner)
    processes = cfg.trial.world_size()

    saved = _load_state(tune.get_checkpoint())
    history: list[dict[str, float]] = list(saved["history"]) if saved else []
    client = tracking.client(ctx.tracking_uri)
    trial_id = tune.get_context().get_trial_id() or ""
    run = tracking.ChildRun.open(
        client, experiment_id=ctx.experiment_id, parent_id=ctx.parent_run_id, sweep_id=ctx.sweep_id,
        key=tracking.trial_key(ctx.sweep_id, point_key(point)), run_name=records.run_name(point),
        params=trial_params(cfg, point), tags={records.TAG_RAY_TRIAL: trial_id, records.TAG_STAGE: ctx.stage,
                                               records.TAG_NODE: ray.util.get_node_ip_address()},
        run_id=saved.get("mlflow_run_id") if saved else None, wait_s=ctx.flush_timeout_s)
    run.sync(history)  # what a crash or an unreachable server left unsent
    max_epochs = cfg.trainer.max_epochs
    if len(history) >= max_epochs:  # it had finished after Tune's last snapshot of a driver now restored:
        run.flush(history, timeout_s=ctx.flush_timeout_s)  # end it with its last result, no new checkpoint
        tune.report({**history[-1], "epoch": len(history), "mlflow_run_id": run.run_id})
        return

    def on_epoch_end(report: EpochReport) -> None:
        history[report.epoch - 1:] = [dict(report.metrics)]
        if report.epoch >= max_epochs:
            run.flush(history, timeout_s=ctx.flush_timeout_s)  # the last chance before Tune may stop us
        else:
            run.sync(history)
        state = {"runner": report.state_dict(), "history": list(history), "mlflow_run_id": run.run_id}
        tmp = tempfile.mkdtemp(prefix="rev2net-ckpt-")
        try:
            torch.save(state, os.path.join(tmp, STATE_FILE))
            tune.report({**report.metrics, "epoch": report.epoch, "mlflow_run_id": run.run_id},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    uses_gpu = bool(cfg.trial.gpus) if cfg.trial.gpus is not None else torch.cuda.is_available()
    monitor = tracking.system_metrics(ctx.tracking_uri, run.run_id, interval_s=cfg.mlflow.system_metrics_interval_s,
                                      enabled=uses_gpu if cfg.mlflow.system_metrics is None else cfg.mlflow.system_metrics)
    try:
        with monitor:
            runner(spec, resume=saved["runner"] if saved else None, on_epoch_end=on_epoch_end,
                   shuffle_protocols=list(ctx.shuffle_protocols), **dict(cfg.trial.runner_args),
                   **({"processes": processes} if processes > 1 else {}))
    except DivergedError as e:
        # Deterministic: a retry would diverge again. End the trial (no Tune retry); the driver's
        # StatusCallback marks the run failed with this reason.
        run.flush(history, timeout_s=ctx.flush_timeout_s)
        tune.report({ctx.metric: float("nan"), "epoch": len(history), "mlflow_run_id": run.run_id,
                     "diverged": 1.0, "failure_reason": str(e)})
