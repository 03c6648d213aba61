"""One trial on Ray Tune: apply the trial's point to the sweep config, run the trial's runner
(`rev2net.trial.run_trial` by default), checkpoint every epoch and log it to its MLflow child run.

Order inside an epoch's end, chosen so that nothing is lost or written twice:
    1. metrics -> MLflow (`ChildRun.sync`: only epochs the run does not hold yet)
    2. state   -> Ray checkpoint, with the metrics -> Tune (`tune.report`)
Tune may stop a trial inside `tune.report` (ASHA, max_t), so everything the trial owes MLflow is
sent before it. A crash between 1 and 2 re-runs that epoch from the previous checkpoint; the run
already holds it, so `sync` skips it. So does a crash inside 1, after the store committed the
metrics but not the run's logged-epoch tag (`ChildRun.epoch_key`: the cost rides on every epoch).

What else the record gets, in step 1: every epoch carries the trial's cost so far
(records.COST_METRICS, cumulative over its attempts: `CostMeter`), and the last epoch first
uploads the final evaluations' per-video predictions (`predictions/<evaluation>.parquet`,
records.write_predictions; a re-run replaces the same files).

A data-parallel trial (trial.gpus >= 2, or trial.processes > 1) is still one Tune trial and one
MLflow run: the runner trains on that many processes of the trial's node, and the process that
runs this function is rank 0, the only one that logs and checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import psutil
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
FINAL = "final_epoch"  # a Tune result's flag: 1.0 on the trial's last epoch (max_epochs, or its wall-time budget spent)


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


@functools.lru_cache(maxsize=4)
def _base_objects(config_yaml: str) -> SweepConfig:
    return to_objects(_base_config(config_yaml))


def apply_point(config_yaml: str, point: dict[str, Any]) -> SweepConfig:
    """The sweep config with the trial's values set, as validated dataclasses. Only the sections the
    point touches are rebuilt (through their typed schema, every `__post_init__` check run); the
    others are the sweep's, converted once per worker process."""
    base = _base_objects(config_yaml)
    sections: dict[str, list[tuple[str, Any]]] = {}
    for key, value in point.items():
        if key not in records.META_PARAMS:  # names the trial; its settings are in the point already
            section, _, rest = key.partition(".")
            sections.setdefault(section, []).append((rest, value))
    rebuilt = {}
    for section, values in sections.items():
        node = _base_config(config_yaml)[section].copy()
        for rest, value in values:
            OmegaConf.update(node, rest, value, merge=False)
        rebuilt[section] = to_objects(node)
    return dataclasses.replace(base, **rebuilt)


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
        "trainer.seed": t.seed, "trainer.max_epochs": t.max_epochs, "trainer.max_train_s": t.max_train_s,
        "trainer.lr": t.lr,
        "trainer.schedule": t.schedule, "data.batch_size": d.batch_size, "adapt.name": cfg.adapt.name,
        "data.val_fraction": d.val_fraction, "data.val_seed": d.val_seed,
    }
    for key, value in point.items():
        params.setdefault(key, value)
    return params


def load_runner(spec: str) -> Callable[..., dict[str, float]]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _read_state(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)


def _load_state(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """The trial's state from the checkpoint Tune restores it from. Should that one be gone (a
    driver that stalled longer than CheckpointPruner allows for), the newest readable checkpoint
    beside it, by the epochs it holds."""
    if checkpoint is None:
        return None
    try:
        return _read_state(checkpoint)
    except FileNotFoundError:
        pass
    import pyarrow.fs

    fs, parent = checkpoint.filesystem, os.path.dirname(checkpoint.path.rstrip("/"))
    found = [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
             if i.type == pyarrow.fs.FileType.Directory and os.path.basename(i.path).startswith("checkpoint_")]
    states = []
    for path in found:
        try:
            states.append(_read_state(tune.Checkpoint(path, filesystem=fs)))
        except Exception as e:  # noqa: BLE001 - a partly written checkpoint: the others may do
            log.warning("checkpoint %s unreadable: %s", path, e)
    if not states:
        raise FileNotFoundError(f"the trial's checkpoint {checkpoint.path} is gone and no other is readable beside it")
    log.warning("checkpoint %s is gone; resuming from the newest one beside it", checkpoint.path)
    return max(states, key=lambda s: len(s["history"]))


class CheckpointPruner:
    """Deletes the trial's old checkpoints itself, instead of Tune's CheckpointConfig(num_to_keep),
    which forces a full snapshot of the experiment state every num_to_keep checkpoints of any trial.

    A checkpoint goes only when it is older than the newest `keep` and than a newer one that this
    process saw persisted at least `settle_s` ago (2 x ray.snapshot_period_s): Tune's experiment
    state, saved every period, names that newer one (or a later one) by then, so a driver that
    dies and is restarted never restores a trial from a deleted checkpoint. Checkpoints written
    within the last `settle_s` stay until a later epoch (short trials keep all of them)."""

    def __init__(self, keep: int, settle_s: float, restored: tune.Checkpoint | None):
        self.keep, self.settle_s = keep, settle_s
        self.held: list[tuple[tune.Checkpoint, float]] = [(restored, time.monotonic())] if restored else []

    def persisted(self, checkpoint: tune.Checkpoint | None) -> None:
        if checkpoint is None or (self.held and self.held[-1][0].path == checkpoint.path):
            return
        now = time.monotonic()
        self.held.append((checkpoint, now))
        settled = [i for i, (_, seen) in enumerate(self.held) if now - seen >= self.settle_s]
        cut = min(settled[-1], len(self.held) - self.keep) if settled else 0
        for old, _ in self.held[:max(0, cut)]:
            try:
                old.filesystem.delete_dir(old.path)
            except OSError as e:  # already gone (a re-run of the trial deleted it): nothing to free
                log.debug("checkpoint %s not deleted: %s", old.path, e)
        del self.held[:max(0, cut)]


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its children: those that ended (and were
    waited for) and those alive now (the loader's workers, data-parallel ranks)."""
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:  # ended meanwhile: counted with children_* once it is waited for
            continue
        total += t.user + t.system
    return total


class CostMeter:
    """A trial's records.COST_METRICS so far, over its attempts: each attempt adds the wall-clock
    and CPU seconds since it started to what its checkpoint carried (`state()`, saved with it).
    An attempt's time after its last checkpoint is lost with the attempt (a crashed worker)."""

    def __init__(self, saved: dict[str, float] | None, gpu_fraction: float):
        saved = saved or {}
        self.wall_s, self.cpu_s = float(saved.get("wall_s", 0.0)), float(saved.get("cpu_s", 0.0))
        self.gpu_fraction = gpu_fraction
        self._wall0, self._cpu0 = time.monotonic(), _cpu_seconds()

    def state(self) -> dict[str, float]:
        return {"wall_s": self.wall_s + time.monotonic() - self._wall0,
                "cpu_s": self.cpu_s + max(0.0, _cpu_seconds() - self._cpu0)}

    def metrics(self, clips: float) -> dict[str, float]:
        now = self.state()
        return records.trial_cost(wall_s=now["wall_s"], gpu_fraction=self.gpu_fraction, cpu_s=now["cpu_s"],
                                  clips=clips)


def _clips(history: list[dict[str, float]], predictions: dict[str, dict[str, Any]], eval_clips: int) -> float:
    """Clips processed: every epoch's training and validation clips (`clips`), and the final
    evaluations' (videos x data.eval_clips; shuffle/none is the plain test again)."""
    trained = sum(float(h.get("clips", 0.0)) for h in history if _finite(h.get("clips")))
    tested = sum(len(p["video_id"]) for name, p in predictions.items() if name != "shuffle/none")
    return trained + tested * eval_clips


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def log_predictions(client: Any, run_id: str, predictions: dict[str, dict[str, Any]], *, timeout_s: float) -> None:
    """The final evaluations' per-video predictions as the run's artifacts, one file per evaluation
    at records.predictions_path(evaluation), in one upload (a retried upload replaces the files)."""
    if not predictions:
        return
    with tempfile.TemporaryDirectory(prefix="rev2net-predictions-") as tmp:
        for evaluation, columns in predictions.items():
            records.write_predictions(pd.DataFrame({**columns, records.TOP5: list(columns[records.TOP5])}),
                                      os.path.join(tmp, records.predictions_path(evaluation)))
        tracking.retry(lambda: client.log_artifacts(run_id, tmp), what="log predictions", timeout_s=timeout_s)


@functools.lru_cache(maxsize=1)
def _node_ip() -> str:
    return ray.util.get_node_ip_address()


@functools.lru_cache(maxsize=8)
def _runs_before(tracking_uri: str, experiment_id: str, sweep_id: str) -> dict[str, str]:
    """The sweep's child runs as this worker process first saw them (once per process and sweep)."""
    return tracking.sweep_children(tracking.client(tracking_uri), experiment_id, sweep_id)


class RunMarker:
    """The trial's MLflow run id in a file beside its checkpoints (`<trial dir>/mlflow_run`, on
    ray.storage_path): empty while the run is being created, the run id once it is."""

    def __init__(self) -> None:
        from ray.train._internal.session import get_session  # Tune's own storage context (no public API)

        storage = get_session().storage
        self.fs, self.path = storage.storage_filesystem, f"{storage.trial_fs_path}/mlflow_run"

    def read(self) -> str | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read().decode().strip()
        except (FileNotFoundError, OSError):
            return None

    def write(self, text: str) -> None:
        self.fs.create_dir(os.path.dirname(self.path))
        with self.fs.open_output_stream(self.path) as f:
            f.write(text.encode())


def known_run(ctx: SweepContext, key: str, saved: dict[str, Any] | None) -> tuple[str | None, bool, RunMarker | None]:
    """Where the trial's MLflow run is known from, without searching the store by trial key (a
    search that grows with the sweep's runs): (run id or None, whether to search anyway, the
    marker to write the new run's id to).

    A run of this trial exists only if an earlier attempt created it: one under an earlier driver
    of the sweep (its run existed before this worker process first looked: `_runs_before`), or an
    earlier attempt under this driver (it wrote RunMarker first; an empty marker means it died
    while creating the run, and only then is the store searched)."""
    if saved and saved.get("mlflow_run_id"):
        return saved["mlflow_run_id"], True, None
    before = _runs_before(ctx.tracking_uri, ctx.experiment_id, ctx.sweep_id).get(key)
    if before:
        return before, True, None
    marker = RunMarker()
    text = marker.read()
    if text:
        return text, True, None
    if text is None:
        marker.write("")
    return None, text == "", marker


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

    restored = tune.get_checkpoint()
    saved = _load_state(restored)
    pruner = CheckpointPruner(cfg.trial.keep_checkpoints, 2 * cfg.ray.snapshot_period_s, restored)
    history: list[dict[str, float]] = list(saved["history"]) if saved else []
    client = tracking.client(ctx.tracking_uri)
    trial_id = tune.get_context().get_trial_id() or ""
    key = tracking.trial_key(ctx.sweep_id, point_key(point))
    run_id, search, marker = known_run(ctx, key, saved)
    run = tracking.ChildRun.open(
        client, experiment_id=ctx.experiment_id, parent_id=ctx.parent_run_id, sweep_id=ctx.sweep_id,
        key=key, run_name=records.run_name(point), params=trial_params(cfg, point),
        tags={records.TAG_RAY_TRIAL: trial_id, records.TAG_STAGE: ctx.stage, records.TAG_NODE: _node_ip()},
        run_id=run_id, search=search, wait_s=ctx.flush_timeout_s, epoch_key=records.COST_CLIPS)  # on every epoch
    if marker is not None:
        marker.write(run.run_id)
    run.sync(history)  # what a crash or an unreachable server left unsent
    max_epochs = cfg.trainer.max_epochs
    if len(history) >= max_epochs or (saved or {}).get("finished"):  # it had finished after Tune's last snapshot
        run.flush(history, timeout_s=ctx.flush_timeout_s)  # of a driver now restored: end it with its last result
        tune.report({**history[-1], "epoch": len(history), "mlflow_run_id": run.run_id, FINAL: 1.0})
        return
    cost = CostMeter(saved.get("cost") if saved else None,
                     float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)))

    def on_epoch_end(report: EpochReport) -> None:
        history[report.epoch - 1:] = [dict(report.metrics)]
        # the cost so far rides on every epoch (the last value is the trial's): a trial that the
        # scheduler stops inside tune.report has logged its cost already
        history[-1].update(cost.metrics(_clips(history, report.predictions, cfg.data.eval_clips)))
        last = report.last or report.epoch >= max_epochs  # max_epochs, or the wall-time budget spent
        if last:
            log_predictions(client, run.run_id, report.predictions, timeout_s=ctx.flush_timeout_s)
            run.flush(history, timeout_s=ctx.flush_timeout_s)  # the last chance before Tune may stop us
        else:
            run.sync(history)
        state = {"runner": report.state_dict(), "history": list(history), "mlflow_run_id": run.run_id,
                 "cost": cost.state(), "finished": last}
        tmp = tempfile.mkdtemp(prefix="rev2net-ckpt-")
        try:
            torch.save(state, os.path.join(tmp, STATE_FILE))
            tune.report({**report.metrics, "epoch": report.epoch, "mlflow_run_id": run.run_id, FINAL: float(last)},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        pruner.persisted(tune.get_checkpoint())  # the persisted copy, on ray.storage_path

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
        spent = cost.metrics(_clips(history, {}, cfg.data.eval_clips))  # through the epoch that diverged
        tracking.log_metrics(client, run.run_id, spent, step=len(history) + 1, timeout_s=ctx.flush_timeout_s)
        tune.report({ctx.metric: float("nan"), "epoch": len(history), "mlflow_run_id": run.run_id,
                     "diverged": 1.0, "failure_reason": str(e)})
