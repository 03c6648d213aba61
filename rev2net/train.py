"""One trial's training loop, independent of Ray and MLflow (they plug in through `on_epoch_end`).

    seed_everything(trainer_cfg.seed)                 # before build_model: the init is seeded too
    model = build_model(model_cfg, num_classes)
    history = fit(model, train_loader, val_loader, trainer_cfg, loss_cfg,
                  resume=state_or_None, on_epoch_end=report_fn)

Loaders yield the dict batches of `rev2net.batch` (uint8 frames, float16 flow, labels, optional
`skipped` counts); `to_device` normalises them on the device. `fit` calls
`train_loader.sampler.set_epoch(epoch)` where the sampler has it, so per-epoch shuffling and
augmentation seeds are functions of (seed, epoch).

Optimisation defaults (TrainerConfig) and why: neither Rev2Net paper states its optimiser; it trains
I3D, which its paper and the public port train with SGD, momentum 0.9, learning rate 0.1 lowered in
steps (the port: 160 clips per update, weight decay 1e-7). We keep SGD + momentum 0.9 and scale the
rate linearly to the 8-16 clips a GPU holds at 32x224x224 (0.005-0.01; default 0.01); cosine
annealing per epoch by default (no milestones to retune when a sweep varies `max_epochs`), a step
schedule as the alternative; weight decay 1e-4, the usual value against overfitting on UCF101/HMDB51;
no clipping by default (the unsquared norms' gradients are bounded by their weights and the KL's by
the log-variance bound; `grad_clip` is there for aggressive rates); bf16 autocast on CUDA (no loss
scaling needed), float32 on CPU. BatchNorm keeps the port's momentum 0.01 unless
`model.bn_momentum` says otherwise: trials of a few dozen steps need 0.1, or validation runs on
running statistics that have not moved from their initial values. `optimizer=adamw` is the choice
for such short from-scratch trials (the embedded default): on the generated dataset SGD stayed near
chance for 15 epochs where AdamW (lr 1e-3) reached several times chance.

Per-epoch metrics (names are binding; the analysis reads them): `train/loss` (total), `train/ce`,
`train/ddp_high`, `train/ddp_low`, `train/flow`, `train/im` (only the computed terms), the model's
own terms (`train/<name>`), `train/domain` and `train/domain_acc` (domain-adversarial training),
`train/top1`, `train/top5`, `val/loss`, `val/top1`, `val/top5` (when there is a validation loader),
`lr` (the rate used in the epoch), `clips_per_s` (training clips per second of the training
phase), `epoch_time_s` (training + validation), `skipped_videos` (unreadable videos replaced,
training + validation), `clips` (training clips and validation videos processed). Accuracies are
fractions in [0, 1]; losses are averaged over samples.

The checkpoint (`EpochReport.state_dict()`) holds model, optimizer, scheduler, epoch, RNG states
(python, numpy, torch, cuda) and `history`, every finished epoch's metrics; it is plain tensors,
lists and numbers, so `torch.load(path, weights_only=True)` reads it, and training resumed from it
continues bit-identically on CPU.

Budgets: a trial trains `trainer.max_epochs` epochs, or, with `trainer.max_train_s` > 0, whole
epochs for as long as the next one fits that many seconds at the mean epoch time so far
(`budget_spent`; training and validation, over every attempt of the trial, so a resumed trial spends
only what is left; at least one epoch), and at most `max_epochs`. Under a budget the LR schedule
spans the budget, not the epochs (`budget_lr`): a slow model annealed over `max_epochs` would stop
at a high rate. This is the compare stage's "equal wall time" (README, "Equal epochs or equal wall
time"): a slow family trains fewer epochs in the same seconds. Wall time depends on the machine and
on what shares it, so the epochs a budget gives are not reproducible to the epoch; epochs are the
default. The epoch that ends training is `EpochReport.last`; the final evaluations run after it.

Speed (the GPU path; README, Performance): `trainer.memory_format` stores the model and its 5D
inputs channels-last (auto: on CUDA; `to_channels_last`), `trainer.compile` compiles the step's
forward + objective (`TrainingStep`), and the host waits for the device only every
`trainer.sync_every` steps: the loss sums, accuracies and the first non-finite step stay on the
device (`_Divergence`), and a DivergedError names that step and term when it is read. With
`data.augment_on=device` the batches' uncut regions are cut into clips on the device (`to_device`).
cuDNN's autotuner is on unless `trainer.deterministic`.

Data-parallel (`fit(..., distributed=True)`, inside a torch.distributed process group that
`rev2net.trial.run_trial(processes=N)` sets up): the model trains wrapped in
DistributedDataParallel (gradients averaged over the ranks; each rank's loader yields its shard,
so the global batch is N x data.batch_size), the first diverged step is compared over the ranks
every `trainer.sync_every` steps (a NaN on any rank stops every rank with the same DivergedError), and the epoch metrics are
sums over all ranks' samples, so they read as in a single process. Rank 0 alone calls
`on_epoch_end`; its checkpoint holds the unwrapped model (interchangeable with a single-process
one) and every rank's RNG state (`rng_ranks`), so a DDP trial resumes exactly on the same number
of ranks. BatchNorm statistics stay per rank (plain BatchNorm, as torchvision's DDP recipes).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from rev2net.batch import FLOW, FRAMES, INDEX, LABEL, REGION, SKIPPED, to_device
from rev2net.spec import LossConfig, TrainerConfig
from rev2net.losses import needs, objective
from rev2net.output import ModelOutput

class DivergedError(RuntimeError):
    """A loss term became NaN or infinite; `term` names it ("total" if only the sum overflowed)."""

    _FIX = {"ce": "trainer.lr", "ddp_high": "loss.alpha", "ddp_low": "loss.beta", "flow": "loss.lambda_flow",
            "im": "loss.lambda_im", "total": "trainer.lr"}

    def __init__(self, term: str, value: float, epoch: int, step: int) -> None:
        self.term, self.value, self.epoch, self.step = term, value, epoch, step
        super().__init__(
            f"loss term {term!r} diverged ({value}) at epoch {epoch}, step {step}; "
            f"lower {self._FIX.get(term, 'trainer.lr')} or set trainer.grad_clip"
        )


class EpochReport:
    """What `fit` hands to `on_epoch_end` after each epoch.

    `epoch` is the number of finished epochs (1-based), `last` whether training ends with it (callers
    that build reports themselves may leave it False: `epoch >= max_epochs` then says it), `metrics`
    that epoch's metrics: the entry of the history itself, so metrics a callback adds (e.g. a final
    extra evaluation) join the history and the checkpoint. `state_dict()` builds the full checkpoint (a CPU copy) when called and is
    valid only inside the callback, so callers that do not checkpoint this epoch do not pay for it.
    """

    def __init__(self, epoch: int, metrics: dict[str, float], state_fn: Callable[[], dict[str, Any]],
                 last: bool = False) -> None:
        self.epoch = epoch
        self.metrics = metrics
        self.last = last  # no epoch follows: max_epochs reached, or the wall-time budget (trainer.max_train_s) spent
        self.predictions: dict[str, dict[str, Any]] = {}  # per-video results of final evaluations (rev2net.trial)
        self._state_fn: Optional[Callable[[], dict[str, Any]]] = state_fn

    def state_dict(self) -> dict[str, Any]:
        if self._state_fn is None:
            raise RuntimeError("EpochReport.state_dict() is valid only inside on_epoch_end (training has moved on)")
        return self._state_fn()

    def _expire(self) -> None:
        self._state_fn = None

    def __repr__(self) -> str:
        return f"EpochReport(epoch={self.epoch}, metrics={self.metrics})"


# ------------------------------------------------------------------------------------ utilities


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: Union[str, torch.device, None]) -> torch.device:
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """bf16 autocast where `amp` asks for it ("auto": on CUDA only)."""
    enabled = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def memory_format(device: torch.device, setting: str = "auto",
                  model: Optional[nn.Module] = None) -> Optional[torch.memory_format]:
    """`trainer.memory_format` on `device`: torch.channels_last_3d or None (PyTorch's default, contiguous).

    `auto`: channels-last on CUDA, where cuDNN's 3D convolutions run channels-last natively; on a
    CPU, channels-last for a `model` whose convolutions are all 3D (I3D, Rev2Net, the flow and
    two-stream I3Ds: oneDNN ran their training step 1.5-1.9x faster so, benchmarks/step.py
    --memory-format), contiguous for models with 2D convolutions (TSN, TSM, DCD, MotionNet), which
    ran slower channels-last on a CPU."""
    if setting == "channels_last":
        return torch.channels_last_3d
    if setting != "auto":
        return None
    if device.type == "cuda":
        return torch.channels_last_3d
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)] if model is not None else []
    return torch.channels_last_3d if convs and all(m.weight.dim() == 5 for m in convs) else None


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 5D parameter and buffer (3D conv weights) channels-last (torch.channels_last_3d)
    and every 4D one (2D conv weights: TSN, TSM, DCD, MotionNet) torch.channels_last, in place."""
    def convert(t: Tensor) -> Tensor:
        if t.dim() == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    return module._apply(convert)


def _in_layout(x: Tensor, layout: Optional[torch.memory_format]) -> Tensor:
    return x.contiguous(memory_format=layout) if layout is not None and x.dim() == 5 else x


def build_optimizer(model: nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":  # `momentum` does not apply; AdamW's betas are PyTorch's defaults
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch (without a wall-time budget; with one, `budget_lr` sets the rate)."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.max_epochs)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_every, gamma=cfg.step_gamma)


def seconds_trained(history: Sequence[Mapping[str, float]]) -> float:
    """The wall time a history's epochs took (`epoch_time_s`: training and validation), over every
    attempt of the trial: what a wall-time budget counts."""
    return sum(float(h.get("epoch_time_s", 0.0)) for h in history)


def budget_spent(history: Sequence[Mapping[str, float]], budget_s: float) -> bool:
    """Whether a trial with this history stops under a wall-time budget: the next epoch, at the mean
    epoch time so far, would end past `budget_s`. A trial always trains its first epoch."""
    spent = seconds_trained(history)
    return bool(history) and spent + spent / len(history) > budget_s


def budget_lr(cfg: TrainerConfig, history: Sequence[Mapping[str, float]]) -> float:
    """The learning rate of the next epoch under a wall-time budget: the configured schedule with
    the budget in place of `max_epochs` (the fraction f of the budget spent stands for epoch
    f·max_epochs): cosine 0.5·(1 + cos(π·f)), step γ^⌊f·max_epochs / step_every⌋."""
    fraction = min(1.0, seconds_trained(history) / cfg.max_train_s)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * fraction))
    return cfg.lr * cfg.step_gamma ** math.floor(fraction * cfg.max_epochs / cfg.step_every)


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors, lists and numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_copy(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _topk_correct(logits: Tensor, label: Tensor) -> Tensor:
    """(correct@1, correct@5) as a (2,) tensor; top-5 is top-min(5, classes)."""
    k = min(5, logits.shape[-1])
    hits = logits.topk(k, dim=-1).indices == label[:, None]  # (B, k)
    return torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()]).float()


def _check_batch(batch: Any, keys: Iterable[str]) -> None:
    if not isinstance(batch, Mapping):
        raise TypeError(f"loaders must yield dict batches (rev2net/batch.py), got {type(batch).__name__}")
    missing = [k for k in keys if k not in batch and not (k == FRAMES and REGION in batch)]
    if missing:
        raise KeyError(f"batch lacks {missing} (has {sorted(batch)}); see rev2net/batch.py")


def _skipped(batch: Mapping[str, Any]) -> int:
    skipped = batch.get(SKIPPED)
    return int(skipped.sum()) if isinstance(skipped, Tensor) else 0


def _logits(out: Union[ModelOutput, Tensor]) -> Tensor:
    return out.logits if isinstance(out, ModelOutput) else out


def _sum_over_ranks(values: Tensor) -> Tensor:
    """The element-wise sum of `values` over every rank of the default process group (a new tensor)."""
    total = values.clone()
    dist.all_reduce(total)
    return total


# ----------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[Mapping[str, Any]], device: Union[str, torch.device, None] = None,
    *, amp: str = "auto", distributed: bool = False, inputs: Sequence[str] = (FRAMES,), predictions: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy and loss on clip-averaged scores, in eval mode (Rev2Net: I3D only).

    Each input (`inputs`: the batch keys the model's family reads, in its order) may be
    (B, C, T, H, W) or (B, K, C, T, H, W); with K clips per video the softmax scores are averaged
    over the clips, and `loss` is the cross-entropy of the averaged scores. Returns `loss`, `top1`,
    `top5` (fractions) and `skipped_videos`, and with `predictions` the per-video results as numpy
    arrays under "predictions": `index` (the batch's index: the video's position in the loader's
    dataset), `label`, `top5` (the best classes, best first) and `label_score` (the averaged softmax
    score of the label). The model's train/eval mode is restored. With `distributed`, each rank
    evaluates its shard and the results are over all ranks' videos (per-video results: this rank's).
    """
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros(2, device=device)
    count = skipped = 0
    per_video: dict[str, list[Tensor]] = {"index": [], "label": [], "top5": [], "label_score": []}
    try:
        for batch in loader:
            _check_batch(batch, (*inputs, LABEL))
            skipped += _skipped(batch)
            batch = to_device(batch, device)
            label = batch[LABEL]
            xs = [batch[k] for k in inputs]
            clips = xs[0].shape[1] if xs[0].dim() == 6 else 1
            with autocast(device, amp):
                logits = _logits(model(*(x.flatten(0, 1) if x.dim() == 6 else x for x in xs)))
            scores = logits.float().softmax(dim=-1).view(label.shape[0], clips, -1).mean(dim=1)  # (B, classes)
            loss_sum += F.nll_loss(scores.clamp_min(1e-12).log(), label, reduction="sum")
            correct += _topk_correct(scores, label)
            count += label.shape[0]
            if predictions:
                per_video["index"].append(batch[INDEX])
                per_video["label"].append(label)
                per_video["top5"].append(scores.topk(min(5, scores.shape[-1]), dim=-1).indices)
                per_video["label_score"].append(scores.gather(1, label[:, None])[:, 0])
    finally:
        model.train(was_training)
    if distributed:  # [loss, correct@1, correct@5, videos, skipped] summed over the ranks
        totals = _sum_over_ranks(torch.cat([loss_sum.reshape(1), correct,
                                            torch.tensor([count, skipped], dtype=torch.float32, device=device)]))
        loss_sum, correct = totals[0], totals[1:3]
        count, skipped = int(totals[3].item()), int(totals[4].item())
    if count == 0:
        raise ValueError("evaluate got an empty loader")
    top1, top5 = (correct / count).tolist()
    result: dict[str, Any] = {"loss": loss_sum.item() / count, "top1": top1, "top5": top5,
                              "skipped_videos": float(skipped)}
    if predictions:
        result["predictions"] = {k: torch.cat(v).cpu().numpy() for k, v in per_video.items()}
    return result


# -------------------------------------------------------------------------------------- training


class DomainTraining:
    """Domain-adversarial training (DANN, Ganin & Lempitsky 2015) inside `fit`: each step takes a
    batch of unlabelled target-domain clips beside the labelled source batch, runs both through the
    model in one forward (the labelled samples first), and adds the domain classifier's loss on the
    pooled features, behind a gradient reversal whose coefficient follows the training progress
    (rev2net.dann). With `target_decoders`, the target clips also feed the self-supervised decoders."""

    def __init__(self, adversary: nn.Module, target: Iterable[Mapping[str, Any]], *, weight: float,
                 target_decoders: bool = False) -> None:
        self.adversary, self.target, self.weight, self.target_decoders = adversary, target, weight, target_decoders
        self._batches: Optional[Iterator] = None

    def start_epoch(self, epoch: int) -> None:
        for sampler in (getattr(self.target, "sampler", None), getattr(self.target, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        self._batches = iter(self.target)

    def next_batch(self, device: torch.device) -> dict[str, Any]:
        """The next target batch (the target set cycles when it is shorter than the source)."""
        try:
            batch = next(self._batches)
        except StopIteration:
            self._batches = iter(self.target)
            batch = next(self._batches)
        if LABEL in batch:
            raise RuntimeError("a target-domain batch carries labels; domain adaptation must never see them")
        return to_device(batch, device)


class TrainingStep:
    """Forward + objective of one training step: eager, or compiled with torch.compile
    (`trainer.compile`; the decoders and the DDP terms the loss weights switch on are inside the
    compiled graph, backward is compiled with it by AOTAutograd; the optimizer step stays eager).
    Returns (terms, logits, pooled features). `n` labelled samples come first in the batch; with
    `all_samples` the self-supervised terms read every sample (domain adaptation's target decoders)."""

    def __init__(self, net: nn.Module, loss_cfg: LossConfig, device: torch.device, amp: str, *,
                 compile: bool = False, backend: str = "inductor", fullgraph: bool = False) -> None:
        self.net, self.loss_cfg, self.device, self.amp = net, loss_cfg, device, amp
        self.need = needs(loss_cfg)
        self.compiled = compile
        # `backend`: inductor generates kernels (Triton on CUDA, C++ on a CPU: minutes of warm-up there);
        # aot_eager captures the same forward and backward graphs and runs them with eager kernels.
        # `fullgraph`: fail on a graph break instead of running that part eagerly.
        self._run = (torch.compile(self._forward_objective, backend=backend, fullgraph=fullgraph) if compile
                     else self._forward_objective)

    def _forward_objective(self, xs: list[Tensor], label: Tensor, frames: Optional[Tensor], flow: Optional[Tensor],
                           n: int, all_samples: bool) -> tuple[dict[str, Tensor], Tensor, Optional[Tensor]]:
        with autocast(self.device, self.amp):
            out = self.net(*xs, need=self.need)
        learned = out if all_samples else out.take(slice(0, n))
        return objective(learned, label, frames, flow, self.loss_cfg), out.logits, out.features

    def __call__(self, xs: list[Tensor], label: Tensor, frames: Optional[Tensor], flow: Optional[Tensor], *,
                 n: int, all_samples: bool = True) -> tuple[dict[str, Tensor], Tensor, Optional[Tensor]]:
        return self._run(xs, label, frames, flow, n, all_samples)


class _Divergence:
    """The first training step whose loss terms were not all finite, kept on the device (no host
    synchronisation per step) and read every `sync_every` steps and at the end of the epoch."""

    def __init__(self, device: torch.device, epoch: int, distributed: bool) -> None:
        self.epoch, self.distributed = epoch, distributed
        self.step = torch.zeros((), dtype=torch.long, device=device)  # 0: none yet
        self.values: Optional[Tensor] = None

    def record(self, step: int, values: Tensor) -> None:
        first = (~torch.isfinite(values).all()) & (self.step == 0)
        self.step = torch.where(first, step, self.step)
        self.values = torch.where(first, values, values if self.values is None else self.values)

    def check(self, names: Sequence[str]) -> None:
        """Raise DivergedError naming the first diverged term and its step (over every rank: the
        earliest step of any rank, with the terms of the ranks that diverged there summed)."""
        step, values = self.step, self.values
        if self.distributed:  # every rank reaches this at the same step: equal batch counts
            big = torch.iinfo(torch.long).max
            first = torch.where(step > 0, step, big)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            values = _sum_over_ranks(torch.where(step == first, values, torch.zeros_like(values)))
            step = torch.where(first == big, 0, first)
        if int(step.item()) == 0:
            return
        bad = [(name, v) for name, v in zip(names, values.tolist()) if not math.isfinite(v)]
        name, value = bad[0] if bad else ("total", float("nan"))
        raise DivergedError(name, value, self.epoch, int(step.item()))


def _train_epoch(
    model: nn.Module, loader: Iterable[Mapping[str, Any]], optimizer: torch.optim.Optimizer,
    cfg: TrainerConfig, loss_cfg: LossConfig, device: torch.device, epoch: int, distributed: bool = False,
    inputs: Sequence[str] = (FRAMES,), adapt: Optional[DomainTraining] = None, progress: tuple[int, int] = (0, 1),
    flow_source: Optional[Callable[[Tensor], Tensor]] = None, step_fn: Optional[TrainingStep] = None,
    layout: Optional[torch.memory_format] = None,
) -> tuple[dict[str, float], int, int]:
    """One pass over `loader`; returns (averaged metrics, clips seen, skipped videos), over all
    ranks when `distributed`. `progress` = (steps done before this epoch, steps of the whole run);
    `flow_source` computes the flow targets from the clip on the device (else the batch holds them);
    `step_fn` runs forward + objective (default: eager); `layout` is the inputs' memory format.
    The host waits for the device only every `cfg.sync_every` steps (the divergence check) and at
    the end (the metrics): sums stay on the device."""
    model.train()
    step_fn = step_fn or TrainingStep(model, loss_cfg, device, cfg.amp)
    need = step_fn.need
    flow_key = (FLOW,) if need.flow and flow_source is None else ()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    sums: Optional[Tensor] = None
    correct = torch.zeros(2, device=device)
    divergence = _Divergence(device, epoch, distributed)
    names: list[str] = []
    count = skipped = 0
    if adapt is not None:
        adapt.start_epoch(epoch - 1)
    for step, batch in enumerate(loader, start=1):
        _check_batch(batch, (*inputs, LABEL, *flow_key))
        skipped += _skipped(batch)
        batch = to_device(batch, device)
        label, n = batch[LABEL], batch[LABEL].shape[0]
        if need.flow and flow_source is not None:
            batch[FLOW] = flow_source(batch[FRAMES])
        frames, flow = batch.get(FRAMES), batch.get(FLOW)
        xs = [_in_layout(batch[k], layout) for k in inputs]
        all_samples = True
        if adapt is not None:  # the labelled source samples first, then the target's
            target = adapt.next_batch(device)
            if adapt.target_decoders and need.flow and flow_source is not None:
                target[FLOW] = flow_source(target[FRAMES])
            xs = [torch.cat([x, _in_layout(target[k], layout)]) for x, k in zip(xs, inputs)]
            all_samples = adapt.target_decoders
            if adapt.target_decoders:
                frames = torch.cat([frames, target[FRAMES]]) if frames is not None else None
                flow = torch.cat([flow, target[FLOW]]) if need.flow else None
        terms, logits, features = step_fn(xs, label, frames, flow, n=n, all_samples=all_samples)
        extra = torch.zeros(0, device=device)
        if adapt is not None:
            done = (progress[0] + step - 1) / max(progress[1] - 1, 1)
            domains = torch.cat([torch.zeros(n, device=device), torch.ones(logits.shape[0] - n, device=device)])
            result = adapt.adversary(features.float(), min(done, 1.0), domains)
            terms = {**{k: v for k, v in terms.items() if k != "total"}, "domain": result.loss,
                     "total": terms["total"] + adapt.weight * result.loss}
            extra = result.accuracy.reshape(1).float()
        names = list(terms)
        values = torch.stack([t.detach().float() for t in terms.values()])
        divergence.record(step, values)
        if step % cfg.sync_every == 0:  # before this step's update
            divergence.check(names)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        values = torch.cat([values, extra])
        sums = values * n if sums is None else sums + values * n
        correct += _topk_correct(logits[:n].detach(), label)
        count += n
    if count == 0:
        raise ValueError("the training loader yielded no batches")
    divergence.check(names)
    if adapt is not None:
        names.append("domain_acc")
    if distributed:  # [Σ n·term..., correct@1, correct@5, clips, skipped] over the ranks
        local = torch.tensor([count, skipped], dtype=torch.float32, device=device)
        totals = _sum_over_ranks(torch.cat([sums, correct, local]))
        k = len(sums)
        sums, correct = totals[:k], totals[k:k + 2]
        count, skipped = int(totals[k + 2].item()), int(totals[k + 3].item())
    means = (sums / count).tolist()
    metrics = {("train/loss" if name == "total" else f"train/{name}"): value for name, value in zip(names, means)}
    metrics["train/top1"], metrics["train/top5"] = (correct / count).tolist()
    return metrics, count, skipped


def fit(
    model: nn.Module,
    train_loader: Iterable[Mapping[str, Any]],
    val_loader: Optional[Iterable[Mapping[str, Any]]],
    trainer_cfg: TrainerConfig,
    loss_cfg: LossConfig,
    *,
    resume: Optional[Mapping[str, Any]] = None,
    on_epoch_end: Optional[Callable[[EpochReport], None]] = None,
    device: Union[str, torch.device, None] = None,
    distributed: bool = False,
    inputs: Sequence[str] = (FRAMES,),
    adapt: Optional[DomainTraining] = None,
    flow_source: Optional[Callable[[Tensor], Tensor]] = None,
) -> list[dict[str, float]]:
    """Train `model` for `trainer_cfg.max_epochs` epochs (continuing `resume`, a state from
    `EpochReport.state_dict()`); return the history of per-epoch metrics. `inputs` are the batch
    keys the model's family reads, in its order (rev2net.registry.input_keys); `adapt` trains
    domain-adversarially (its domain classifier is optimised and checkpointed with the model);
    `flow_source` computes the flow targets from each training clip (e.g. a frozen MotionNet).

    With `distributed` (DDP; every rank calls `fit` with its shard of the data) only rank 0 calls
    `on_epoch_end`. Raises DivergedError when a loss term was NaN or infinite, at the next check (every
    `trainer.sync_every` steps, before that step's update, and at the epoch's end), naming the first
    such step and term."""
    trainer_cfg.validate()
    loss_cfg.validate()
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("fit(distributed=True) needs torch.distributed's default process group; "
                           "rev2net.trial.run_trial(spec, processes=N) sets it up")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = resolve_device(device if device is not None else trainer_cfg.device)
    if trainer_cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not trainer_cfg.deterministic
    model.to(device)
    layout = memory_format(device, trainer_cfg.memory_format, model)
    if layout is not None:
        to_channels_last(model)
    trained = nn.ModuleDict({"model": model, **({"adversary": adapt.adversary.to(device)} if adapt else {})})
    net = model  # what trains: the model itself, or its DDP wrapper (checkpoints hold the model itself)
    if distributed:
        # Heads whose loss weight is 0 are not run (needs()): their parameters get no gradient.
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=not all(asdict(needs(loss_cfg)).values()))
        if adapt is not None:
            adapt.adversary = DistributedDataParallel(adapt.adversary, device_ids=[device.index]
                                                      if device.type == "cuda" else None)
    optimizer = build_optimizer(trained, trainer_cfg)
    scheduler = build_scheduler(optimizer, trainer_cfg)
    step_fn = TrainingStep(net, loss_cfg, device, trainer_cfg.amp, compile=trainer_cfg.compile)
    history: list[dict[str, float]] = []
    start = 0
    if resume is None:
        seed_everything(trainer_cfg.seed)
    else:
        model.load_state_dict(resume["model"])
        if adapt is not None:
            trained["adversary"].load_state_dict(resume["adversary"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = [dict(m) for m in resume["history"]]
        start = int(resume["epoch"])
        ranks_rng = resume.get("rng_ranks") if distributed else None
        set_rng_state(ranks_rng[rank] if ranks_rng and len(ranks_rng) == world else resume["rng"])

    budget = trainer_cfg.max_train_s
    for epoch in range(start, trainer_cfg.max_epochs):
        started = time.perf_counter()
        for sampler in (getattr(train_loader, "sampler", None), getattr(train_loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        if budget:  # the same on every rank: rank 0's history is broadcast below each epoch
            for group in optimizer.param_groups:
                group["lr"] = budget_lr(trainer_cfg, history)
        lr = optimizer.param_groups[0]["lr"]
        steps = len(train_loader) if hasattr(train_loader, "__len__") else 1
        metrics, clips, skipped = _train_epoch(net, train_loader, optimizer, trainer_cfg, loss_cfg, device, epoch + 1,
                                               distributed=distributed, inputs=inputs, adapt=adapt,
                                               progress=(epoch * steps, trainer_cfg.max_epochs * steps),
                                               flow_source=flow_source, step_fn=step_fn, layout=layout)
        train_time = time.perf_counter() - started
        if distributed:  # BatchNorm statistics moved per rank in the last step: every rank evaluates rank 0's model
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        evaluated = 0
        if val_loader is not None:
            val = evaluate(model, val_loader, device, amp=trainer_cfg.amp, distributed=distributed, inputs=inputs)
            skipped += int(val.pop("skipped_videos"))
            metrics.update({f"val/{k}": v for k, v in val.items()})
            evaluated = len(val_loader.dataset) if hasattr(val_loader, "dataset") else 0
        if not budget:
            scheduler.step()
        metrics.update(lr=lr, clips_per_s=clips / train_time, epoch_time_s=time.perf_counter() - started,
                       skipped_videos=float(skipped), clips=float(clips + evaluated))
        if distributed and budget:  # rank 0's clock decides for every rank
            shared = [metrics["epoch_time_s"]]
            dist.broadcast_object_list(shared, src=0)
            metrics["epoch_time_s"] = shared[0]
        history.append(metrics)
        last = epoch + 1 == trainer_cfg.max_epochs or (budget > 0 and budget_spent(history, budget))
        ranks_rng: Optional[list] = None
        if distributed:  # every rank takes part; rank 0's checkpoint holds them all
            ranks_rng = [None] * world
            dist.all_gather_object(ranks_rng, rng_state())
        if on_epoch_end is not None and rank == 0:
            rng = rng_state()  # taken now: the callback can neither see nor perturb the training RNG stream

            def state(done: int = epoch + 1, rng: dict[str, Any] = rng) -> dict[str, Any]:
                out = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    **({"adversary": trained["adversary"].state_dict()} if adapt is not None else {}),
                    "scheduler": scheduler.state_dict(), "epoch": done, "rng": rng,
                    "history": [dict(m) for m in history], "trainer": asdict(trainer_cfg),
                }
                if ranks_rng is not None:
                    out["rng_ranks"] = ranks_rng
                return _cpu_copy(out)

            report = EpochReport(epoch + 1, metrics, state, last=last)
            try:
                on_epoch_end(report)
            finally:
                report._expire()
                set_rng_state(rng)
        if last:
            break
    return history
