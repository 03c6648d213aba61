"""One trial, end to end, in plain PyTorch: data -> model -> `fit` -> final evaluations.

No Ray and no MLflow here: whatever runs trials (orchestration/trainable.py, a notebook, a test)
hands in a `TrialSpec`, an optional state to resume from and an `on_epoch_end` callback, and
receives every epoch's report (metrics + checkpointable state) through it.

At the end of the last epoch, before that epoch is reported, the model is evaluated under each
requested frame-shuffle protocol (the 2018 paper's Tables 1 and 3); the accuracies join that
epoch's metrics as `shuffle/<protocol>/top1` and `shuffle/<protocol>/top5`. Doing it before the
report matters: a scheduler may stop the trial as soon as its last epoch is reported. With
`data.eval_name` set (cross-dataset, e.g. UCF101 -> HMDB51 through a class map), the target
dataset's test accuracy joins them as `cross/top1` and `cross/top5`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from rev2net.data import DataConfig, build_eval_loader, build_loaders
from rev2net.losses import LossConfig, check_compatible, needs
from rev2net.model import ModelConfig, build_model, flow_stride
from rev2net.train import EpochReport, TrainerConfig, evaluate, fit, resolve_device, seed_everything


@dataclass
class TrialSpec:
    """Everything one trial needs to know."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def check_spec(spec: TrialSpec) -> None:
    """Cross-group consistency, raised before anything is built (the orchestration calls it for
    every trial of a sweep before the first one starts)."""
    check_compatible(spec.model, spec.loss)
    if spec.data.flow and needs(spec.loss).flow and spec.data.flow_downsample != flow_stride(spec.model):
        raise ValueError(
            f"data.flow_downsample={spec.data.flow_downsample} delivers flow at {spec.data.flow_size} px, but the flow "
            f"decoder predicts at 1/{flow_stride(spec.model)} of the crop: set data.flow_downsample="
            f"{flow_stride(spec.model)}")


def run_trial(spec: TrialSpec, *, resume: Optional[dict] = None,
              on_epoch_end: Optional[Callable[[EpochReport], None]] = None,
              shuffle_protocols: Sequence[str] = ()) -> dict[str, float]:
    """Train one Rev2Net trial (continuing `resume`), report every epoch, return the last epoch's metrics."""
    check_spec(spec)
    need = needs(spec.loss)
    # Flow targets cost loader time; read them only when the flow term is trained.
    data_cfg = dataclasses.replace(spec.data, flow=spec.data.flow and need.flow)
    device = resolve_device(spec.trainer.device)
    seed_everything(spec.trainer.seed)  # identical initial weights for every trial with this seed
    data = build_loaders(data_cfg, seed=spec.trainer.seed, device_is_cuda=device.type == "cuda")
    model = build_model(spec.model, data.num_classes)
    max_epochs = spec.trainer.max_epochs

    def report(epoch_report: EpochReport) -> None:
        if epoch_report.epoch >= max_epochs:
            for protocol in shuffle_protocols:
                loader = build_eval_loader(data_cfg, protocol=protocol, seed=spec.trainer.seed,
                                           device_is_cuda=device.type == "cuda")
                scores = evaluate(model, loader, device, amp=spec.trainer.amp)
                epoch_report.metrics[f"shuffle/{protocol}/top1"] = scores["top1"]
                epoch_report.metrics[f"shuffle/{protocol}/top5"] = scores["top5"]
            if data_cfg.eval_name:  # cross-dataset: the target dataset's test list, through the class map
                loader = build_eval_loader(data_cfg, seed=spec.trainer.seed, cross_dataset=True,
                                           device_is_cuda=device.type == "cuda")
                scores = evaluate(model, loader, device, amp=spec.trainer.amp)
                epoch_report.metrics["cross/top1"], epoch_report.metrics["cross/top5"] = scores["top1"], scores["top5"]
        if on_epoch_end is not None:
            on_epoch_end(epoch_report)

    history = fit(model, data.train, data.val, spec.trainer, spec.loss, resume=resume, on_epoch_end=report,
                  device=device)
    return dict(history[-1]) if history else {}
