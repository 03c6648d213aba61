"""A constant-time stand-in for `rev2net.trial.run_trial`, for the control plane alone.

It follows the runner protocol exactly (resume from a state, one `on_epoch_end` per epoch with
metrics and a checkpointable state, a history, the final shuffle metrics, `DivergedError`), but
an epoch is `epoch_s` seconds of sleep instead of training. The sweep machinery around it (Ray
Tune, MLflow child runs, checkpoints, retries, resume) is the real one, so this measures and
exercises exactly that: `trial.runner=orchestration.simulate:constant_step`.

`curve_step` is the same stand-in driven by a learning-curve model fitted from real trials
(orchestration/curves.py): `trial.runner=orchestration.simulate:curve_step
+trial.runner_args.curves=<model.json>`; it logs the modelled val/top1 of its point and seed.

Its metrics are a fixed, smooth function of the weights with a known optimum at the paper's
values (α=0.01, β=0.1, λ_flow=0.1, λ_im=0.1), so a sweep of it has a meaningful "best".

Failure drills (all off by default; passed as `trial.runner_args.<name>=...`):
    fail_once_at_epoch  raise once at this epoch (a marker file under `marker_dir` makes it once)
    nan_at_epoch        raise DivergedError at this epoch, naming the `flow` term
    diverge_above       with nan_at_epoch: only trials with a weight above this value diverge (as large
                        weights do in real training); 0 = every trial
    pid_dir             write this worker's pid to <pid_dir>/<trial key>.pid while it runs
    placement_dir       write where each attempt ran, to <placement_dir>/<trial key>-<pid>-<start>.json:
                        Ray node id and IP, GPU ids, the epoch it resumed from, start and end times (the
                        end is missing when the attempt was killed), the trial's DDP processes, and the
                        last epoch whose report came back (`reported`, at `reported_at`)

`processes` (a data-parallel trial's rank count, from trial.gpus / trial.processes) is accepted and
recorded: the stand-in trains nothing, so there is nothing to parallelise.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from rev2net.train import DivergedError, EpochReport

OPTIMUM = {"alpha": 0.01, "beta": 0.1, "lambda_flow": 0.1, "lambda_im": 0.1}


def score(loss: Any) -> float:
    """Validation accuracy of the stand-in: 0.9 at the paper's optimum, lower away from it in log space."""
    d = 0.0
    for name, best in OPTIMUM.items():
        w = float(getattr(loss, name))
        d += (math.log10(w + 1e-5) - math.log10(best + 1e-5)) ** 2
    return 0.9 * math.exp(-d / 8.0)


@dataclass
class _State:
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    rng: Any = None


def constant_step(spec: Any, *, resume: Optional[dict], on_epoch_end: Callable[[EpochReport], None],
                  shuffle_protocols: Sequence[str] = (), epoch_s: float = 0.0, fail_once_at_epoch: int = 0,
                  nan_at_epoch: int = 0, diverge_above: float = 0.0, marker_dir: str = "",
                  pid_dir: str = "", placement_dir: str = "", processes: int = 1) -> dict[str, float]:
    """Run `spec.trainer.max_epochs` constant-time epochs; same protocol as rev2net.trial.run_trial."""
    key = hashlib.sha1(repr((spec.loss, spec.model, spec.trainer.seed)).encode()).hexdigest()[:12]
    if pid_dir:
        os.makedirs(pid_dir, exist_ok=True)
        with open(os.path.join(pid_dir, f"{key}.pid"), "w") as f:
            f.write(str(os.getpid()))
    state = _State()
    rng = random.Random(spec.trainer.seed)
    if resume:
        state.epoch, state.history = resume["epoch"], list(resume["history"])
        rng.setstate(resume["rng"])
    placement = _placement(placement_dir, key, state.epoch, processes) if placement_dir else None
    try:
        return _epochs(spec, state, rng, _recording(on_epoch_end, placement), shuffle_protocols, epoch_s,
                       fail_once_at_epoch, nan_at_epoch, diverge_above, marker_dir, key)
    finally:
        if placement:
            placement[1]["end"] = time.time()
            _write_json(placement[0], placement[1])


def _recording(on_epoch_end: Callable[[EpochReport], None],
               placement: Optional[tuple[str, dict[str, Any]]]) -> Callable[[EpochReport], None]:
    """`on_epoch_end`, then (with a placement record) the epoch whose report came back, in the record."""
    if placement is None:
        return on_epoch_end

    def report(r: EpochReport) -> None:
        on_epoch_end(r)
        placement[1].update(reported=r.epoch, reported_at=time.time())
        _write_json(*placement)

    return report


def _write_json(path: str, record: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def _placement(folder: str, key: str, resumed_from: int, processes: int) -> tuple[str, dict[str, Any]]:
    """Where this attempt runs (inside a Ray worker), written at its start."""
    import ray

    ctx = ray.get_runtime_context()
    record = {"trial": key, "pid": os.getpid(), "node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
              "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])], "resumed_from": resumed_from,
              "processes": processes, "start": time.time(), "reported": resumed_from, "reported_at": None}
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{key}-{os.getpid()}-{time.time_ns()}.json")
    _write_json(path, record)
    return path, record


def curve_step(spec: Any, *, resume: Optional[dict], on_epoch_end: Callable[[EpochReport], None],
               shuffle_protocols: Sequence[str] = (), curves: str = "", epoch_s: float = 0.0,
               processes: int = 1) -> dict[str, float]:
    """`spec.trainer.max_epochs` epochs of `epoch_s` seconds logging the curve model's values for
    the trial's weights and seed (`curves`: the model's JSON, orchestration.curves.CurveModel.save);
    a point with a value that diverged in the real trials raises DivergedError at that epoch, as they
    did. Resumes from a state like `constant_step`; the values depend on (point, seed, epoch) only.
    It models val/top1 alone: val/loss is −log(val/top1) (so ties break as by accuracy), and no
    shuffle metrics are logged (the coarse stage has none)."""
    if not curves:
        raise ValueError("curve_step needs its model: +trial.runner_args.curves=<path of a curve model JSON> "
                         "(orchestration.curves.fit_store(...).save(path))")
    model = _curve_model(os.path.abspath(curves), os.path.getmtime(curves))
    if spec.trainer.max_epochs > model.epochs:
        raise ValueError(f"trainer.max_epochs={spec.trainer.max_epochs} is beyond the curve model's {model.epochs} "
                         f"epochs ({curves}); set trainer.max_epochs<={model.epochs}")
    point = {k: float(_dotted(spec, k)) for k in model.keys}
    seed = int(spec.trainer.seed)
    fails = model.diverges_at(point)
    epoch0, history = (resume["epoch"], list(resume["history"])) if resume else (0, [])
    for epoch in range(epoch0 + 1, spec.trainer.max_epochs + 1):
        started = time.perf_counter()
        if epoch_s:
            time.sleep(epoch_s)
        if fails is not None and epoch >= fails:
            key = min((k for k in model.diverged if model.diverges_at({k: point[k]}) == fails))
            term = next((t for t, fix in DivergedError._FIX.items() if fix == key), "total")
            raise DivergedError(term=term, epoch=epoch, step=epoch * 10, value=float("nan"))
        val = model.value(point, seed, epoch)
        metrics = {model.metric: val, "val/loss": -math.log(max(val, 1e-6)), "skipped_videos": 0.0,
                   "epoch_time_s": time.perf_counter() - started, "clips_per_s": 0.0}
        history.append(metrics)
        snapshot = {"epoch": epoch, "history": list(history)}
        on_epoch_end(EpochReport(epoch, dict(metrics), lambda s=snapshot: s))
    return dict(history[-1]) if history else {}


@functools.lru_cache(maxsize=4)
def _curve_model(path: str, mtime: float) -> Any:
    from orchestration import curves as curve_models

    return curve_models.load(path)


def _dotted(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _epochs(spec: Any, state: _State, rng: random.Random, on_epoch_end: Callable[[EpochReport], None],
            shuffle_protocols: Sequence[str], epoch_s: float, fail_once_at_epoch: int, nan_at_epoch: int,
            diverge_above: float, marker_dir: str, key: str) -> dict[str, float]:
    target = score(spec.loss)
    max_epochs = spec.trainer.max_epochs
    for epoch in range(state.epoch + 1, max_epochs + 1):
        started = time.perf_counter()
        if epoch_s:
            time.sleep(epoch_s)
        weights = (spec.loss.alpha, spec.loss.beta, spec.loss.lambda_flow, spec.loss.lambda_im)
        if nan_at_epoch and epoch == nan_at_epoch and (not diverge_above or max(weights) > diverge_above):
            raise DivergedError(term="flow", epoch=epoch, step=epoch * 10, value=float("nan"))
        if fail_once_at_epoch and epoch == fail_once_at_epoch:
            marker = os.path.join(marker_dir or ".", f"failed-{key}-{epoch}")
            if not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError(f"simulated crash of trial {key} at epoch {epoch}")
        progress = epoch / max_epochs
        noise = rng.uniform(-0.002, 0.002)
        val = target * (0.5 + 0.5 * progress) + noise
        metrics = {
            "train/loss": 2.0 * (1.0 - 0.8 * progress), "train/ce": 1.8 * (1.0 - 0.8 * progress),
            "train/top1": min(1.0, val + 0.05), "train/top5": min(1.0, val + 0.1),
            "val/loss": 2.2 * (1.0 - 0.7 * progress), "val/top1": val, "val/top5": min(1.0, val + 0.08),
            "lr": 0.01 * (1.0 - progress), "skipped_videos": 0.0,
        }
        if epoch == max_epochs:
            for p in shuffle_protocols:
                metrics[f"shuffle/{p}/top1"] = val * {"none": 1.0, "long_term": 0.9, "short_term": 0.85,
                                                      "complete": 0.6}.get(p, 0.5)
        metrics["epoch_time_s"] = time.perf_counter() - started
        metrics["clips_per_s"] = 0.0
        state.epoch = epoch
        state.history.append(metrics)
        snapshot = {"epoch": epoch, "history": list(state.history), "rng": rng.getstate()}
        on_epoch_end(EpochReport(epoch, dict(metrics), lambda s=snapshot: s))
    return dict(state.history[-1]) if state.history else {}
