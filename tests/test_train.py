"""One trial's loop on generated tensors: it overfits a few clips, resumes bit-identically, names a
diverged term, reports the binding metrics, and evaluates clip-averaged scores."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, default_collate

from rev2net.batch import normalize_frames
from rev2net.spec import LossConfig, TrainerConfig
from rev2net.model import build_model
from rev2net.registry import model_config
from rev2net.train import (DivergedError, EpochReport, TrainingStep, build_optimizer, evaluate, fit, seed_everything,
                           to_channels_last)

ZERO = dict(alpha=0.0, beta=0.0, lambda_flow=0.0, lambda_im=0.0)
TIMING = {"clips_per_s", "epoch_time_s"}


def as_batch(items):
    frames, flow, label, skipped = default_collate(items)
    return {"frames": frames, "flow": flow, "label": label, "skipped": skipped}


def clips(n: int = 4, classes: int = 4, frames: int = 8, size: int = 32, skipped: int = 0, flow_value=None):
    """n uint8 clips with float16 flow at half resolution (the batch contract), labels 0..classes-1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, frames, size, size), dtype=torch.uint8, generator=g)
    flow = torch.randn(n, 2, frames - 1, size // 2, size // 2, generator=g) * 3
    if flow_value is not None:
        flow.fill_(flow_value)
    return TensorDataset(x, flow.half(), torch.arange(n) % classes, torch.full((n,), skipped))


def loader(dataset, batch: int = 4, seed: int = 1, sampler_cls=DistributedSampler) -> DataLoader:
    sampler = sampler_cls(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=as_batch)


def tiny(variant: str = "rev2net", classes: int = 4, seed: int = 0, **overrides):
    seed_everything(seed)
    return build_model(model_config(variant, width=0.125, **overrides), num_classes=classes)


def test_overfits_a_few_fixed_clips() -> None:
    data = clips(n=4, classes=4)
    history = fit(tiny(dropout=0.0), loader(data), None, TrainerConfig(max_epochs=20, lr=0.05), LossConfig())
    first, last = history[0], history[-1]
    assert last["train/ce"] < 0.1 * first["train/ce"], f"CE {first['train/ce']:.3f} -> {last['train/ce']:.3f}"
    assert last["train/loss"] < first["train/loss"]
    assert last["train/flow"] < first["train/flow"] and last["train/im"] < first["train/im"]
    assert last["train/top1"] == 1.0, f"train top-1 {last['train/top1']}"


def test_metrics_have_the_binding_names() -> None:
    data = clips(n=4, skipped=1)
    history = fit(tiny(), loader(data), loader(data, batch=2), TrainerConfig(max_epochs=1, lr=0.01), LossConfig())
    metrics = history[0]
    assert set(metrics) == {
        "train/loss", "train/ce", "train/ddp_high", "train/ddp_low", "train/flow", "train/im", "train/top1",
        "train/top5", "val/loss", "val/top1", "val/top5", "lr", "clips_per_s", "epoch_time_s", "skipped_videos", "clips",
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("train/top1", "train/top5", "val/top1", "val/top5"))
    assert metrics["skipped_videos"] == 8.0, "4 training + 4 validation clips, one skipped video each"
    assert metrics["lr"] == 0.01


def test_only_computed_terms_are_reported_and_validation_is_optional() -> None:
    data = clips(n=4)
    history = fit(tiny("i3d"), loader(data), None, TrainerConfig(max_epochs=1), LossConfig(**ZERO))
    assert {k for k in history[0] if k.startswith(("train/", "val/"))} == {
        "train/loss", "train/ce", "train/top1", "train/top5"}


@pytest.mark.parametrize("schedule, expected", [
    ("cosine", [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
    ("step", [0.1, 0.1, 0.05, 0.05]),
])
def test_lr_schedule_per_epoch(schedule: str, expected: list[float]) -> None:
    data = clips(n=2, frames=4, size=16)
    cfg = TrainerConfig(max_epochs=4, lr=0.1, schedule=schedule, step_every=2, step_gamma=0.5)
    history = fit(tiny("i3d"), loader(data, batch=2), None, cfg, LossConfig(**ZERO))
    assert [m["lr"] for m in history] == pytest.approx(expected)


def test_optimizer_choice() -> None:
    model = tiny("i3d")
    adamw = build_optimizer(model, TrainerConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.01
    sgd = build_optimizer(model, TrainerConfig())
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9


def test_sampler_epoch_is_set_every_epoch() -> None:
    epochs = []

    class Recording(DistributedSampler):
        def set_epoch(self, epoch: int) -> None:
            epochs.append(epoch)
            super().set_epoch(epoch)

    data = clips(n=2, frames=4, size=16)
    recording = loader(data, batch=2, sampler_cls=Recording)
    fit(tiny("i3d"), recording, None, TrainerConfig(max_epochs=3), LossConfig(**ZERO))
    assert epochs == [0, 1, 2]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_continues_bit_identically(optimizer: str) -> None:
    data = clips(n=8)
    cfg = TrainerConfig(max_epochs=4, lr=0.05 if optimizer == "sgd" else 0.002, grad_clip=5.0, seed=3,
                        optimizer=optimizer)
    saved: dict[int, bytes] = {}

    def checkpoint_and_disturb(report: EpochReport) -> None:
        buffer = io.BytesIO()
        torch.save(report.state_dict(), buffer)
        saved[report.epoch] = buffer.getvalue()
        torch.rand(10), random.random(), np.random.rand()  # a callback must not change the training

    model = tiny(seed=0)  # dropout and the Gaussian samples draw from the RNGs every step
    history = fit(model, loader(data), loader(data), cfg, LossConfig(), on_epoch_end=checkpoint_and_disturb)

    state = torch.load(io.BytesIO(saved[2]), weights_only=True)  # plain tensors, lists and numbers
    assert state["epoch"] == 2 and state["history"] == history[:2]
    resumed = tiny(seed=99)  # other initial weights: everything must come from the state
    torch.rand(5)  # and other RNG positions
    resumed_history = fit(resumed, loader(data), loader(data), cfg, LossConfig(), resume=state)

    assert resumed_history[:2] == history[:2]
    for epoch in (2, 3):
        for key, value in history[epoch].items():
            if key not in TIMING:
                assert resumed_history[epoch][key] == value, f"epoch {epoch + 1} {key}"
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resuming"


def test_callback_metrics_join_the_history_and_state_expires() -> None:
    reports: list[EpochReport] = []

    def add_metric(report: EpochReport) -> None:
        report.metrics["shuffle/complete/top1"] = 0.5
        assert report.state_dict()["history"][-1]["shuffle/complete/top1"] == 0.5
        reports.append(report)

    data = clips(n=2, frames=4, size=16)
    history = fit(tiny("i3d"), loader(data, batch=2), None, TrainerConfig(max_epochs=2), LossConfig(**ZERO),
                  on_epoch_end=add_metric)
    assert [r.epoch for r in reports] == [1, 2]
    assert all(m["shuffle/complete/top1"] == 0.5 for m in history)
    with pytest.raises(RuntimeError, match="only inside on_epoch_end"):
        reports[0].state_dict()


class TenSecondEpochs:
    """A loader whose every pass takes ten seconds of `rev2net.train`'s clock (a fake one)."""

    def __init__(self, inner: DataLoader, clock: list[float]) -> None:
        self.inner, self.clock, self.sampler = inner, clock, inner.sampler

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        self.clock[0] += 10.0
        return iter(self.inner)


def _budgeted(monkeypatch, budget_s: float, max_epochs: int = 10, resume=None, on_epoch_end=None,
              schedule: str = "cosine") -> list[dict[str, float]]:
    import types

    import rev2net.train as train_module

    clock = [0.0]
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    data = clips(n=2, frames=4, size=16)
    cfg = TrainerConfig(max_epochs=max_epochs, lr=0.1, max_train_s=budget_s, schedule=schedule, step_every=4,
                        step_gamma=0.5)
    return fit(tiny("i3d"), TenSecondEpochs(loader(data, batch=2), clock), None, cfg, LossConfig(**ZERO),
               resume=resume, on_epoch_end=on_epoch_end)


def test_a_wall_time_budget_trains_the_epochs_that_fit_with_the_schedule_over_the_budget(monkeypatch) -> None:
    """10-s epochs, 35 s: after 2 epochs (20 s) a third fits (30 s), a fourth would not (40 s). The
    cosine schedule spans the 35 s: epoch e starts at the fraction 10(e-1)/35 of it."""
    reports: list[EpochReport] = []
    history = _budgeted(monkeypatch, 35.0, on_epoch_end=reports.append)
    assert [m["epoch_time_s"] for m in history] == [10.0, 10.0, 10.0]
    assert [(r.epoch, r.last) for r in reports] == [(1, False), (2, False), (3, True)]
    assert [m["lr"] for m in history] == pytest.approx([0.05 * (1 + math.cos(math.pi * 10 * e / 35)) for e in range(3)])
    # the step schedule: max_epochs (10) stand for the 35 s, a decay every step_every (4) of them: after 14 s
    step = _budgeted(monkeypatch, 35.0, schedule="step")
    assert [m["lr"] for m in step] == pytest.approx([0.1, 0.1, 0.05])


def test_a_budget_trains_one_epoch_at_least_and_max_epochs_at_most(monkeypatch) -> None:
    reports: list[EpochReport] = []
    assert len(_budgeted(monkeypatch, 1.0, on_epoch_end=reports.append)) == 1 and reports[-1].last
    reports.clear()
    assert len(_budgeted(monkeypatch, 1000.0, max_epochs=2, on_epoch_end=reports.append)) == 2
    assert [r.last for r in reports] == [False, True]
    with pytest.raises(ValueError, match="max_train_s"):
        TrainerConfig(max_train_s=-1.0)


def test_a_resumed_trial_spends_only_what_is_left_of_its_budget(monkeypatch) -> None:
    """The budget counts the epochs of earlier attempts (the checkpoint's history), so a trial
    resumed after epoch 1 of a 35-s budget trains epochs 2 and 3, as it would have uninterrupted."""
    states: list[dict] = []
    _budgeted(monkeypatch, 35.0, on_epoch_end=lambda r: states.append(r.state_dict()))
    resumed: list[EpochReport] = []
    history = _budgeted(monkeypatch, 35.0, resume=states[0], on_epoch_end=resumed.append)
    assert [(r.epoch, r.last) for r in resumed] == [(2, False), (3, True)] and len(history) == 3
    assert history[1]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 10 / 35)))


def test_a_nan_flow_target_is_caught_and_named() -> None:
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(DivergedError, match="'flow'.*epoch 1, step 1.*loss.lambda_flow") as caught:
        fit(model, loader(clips(flow_value=float("nan"))), None, TrainerConfig(max_epochs=2, sync_every=1),
            LossConfig())
    assert (caught.value.term, caught.value.epoch, caught.value.step) == ("flow", 1, 1)
    assert math.isnan(caught.value.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "no update from a diverged step"


def test_divergence_is_found_without_a_sync_per_step() -> None:
    """trainer.sync_every: the host reads the divergence record only every N steps (here: at the
    epoch's end), and it still names the first diverged step and term."""
    data = clips(n=8, flow_value=float("nan"))
    with pytest.raises(DivergedError) as caught:
        fit(tiny(), loader(data, batch=2), None, TrainerConfig(max_epochs=1, sync_every=50), LossConfig())
    assert (caught.value.term, caught.value.epoch, caught.value.step) == ("flow", 1, 1)


def test_uncut_regions_train_through_the_loop() -> None:
    """data.augment_on=device: batches of uncut regions (rev2net.batch REGION, GEOMETRY) are cut into
    clips on the device inside the loop and train like frames cut by the loader."""
    from rev2net.data.transforms import Crop, crop_frames

    g = torch.Generator().manual_seed(0)
    regions = torch.randint(0, 256, (4, 8, 40, 40, 3), dtype=torch.uint8, generator=g)  # (B, T, S, S, 3)
    geometry = torch.tensor([[40, 0, 32], [40, 1, 32], [36, 0, 32], [40, 1, 32]])  # one smaller square, padded
    flow = (torch.randn(4, 2, 7, 16, 16, generator=g) * 3).half()
    label = torch.arange(4) % 4
    uncut = [{"region": regions, "geometry": geometry, "flow": flow, "label": label}]
    cut = torch.stack([torch.from_numpy(crop_frames(r[:, :side, :side].numpy(), Crop(0, 0, side, bool(flip)), 32))
                       for r, (side, flip, _) in zip(regions, geometry.tolist())])
    frames = [{"frames": cut, "flow": flow, "label": label}]
    histories = [fit(tiny(seed=0), batches, None, TrainerConfig(max_epochs=2, lr=0.05), LossConfig())
                 for batches in (uncut, frames)]
    for key in histories[1][1]:
        if key not in TIMING:
            assert histories[0][1][key] == pytest.approx(histories[1][1][key], rel=0.02, abs=1e-3), key


def test_channels_last_trains_like_contiguous() -> None:
    """trainer.memory_format=channels_last (the CUDA default) changes the layout, not the numbers:
    the weights are stored channels-last, and an epoch gives the same metrics (validation: after the
    update) and the same updated weights as contiguous."""
    data = clips(n=4)
    histories, models = [], []
    for memory_format in ("contiguous", "channels_last"):
        model = tiny(seed=0)
        histories.append(fit(model, loader(data), loader(data), TrainerConfig(max_epochs=1, seed=1,
                             memory_format=memory_format), LossConfig()))
        models.append(model)
    conv = models[1].encoder.Conv3d_1a_7x7.conv3d.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    for key in histories[0][0]:
        if key not in TIMING:
            assert histories[1][0][key] == pytest.approx(histories[0][0][key], rel=1e-3, abs=1e-5), key
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), name


@pytest.mark.parametrize("family,expected", [("rev2net", True), ("i3d_flow", True), ("two_stream_i3d", True),
                                             ("tsn", False), ("dcd", False), ("hidden_two_stream", False)])
def test_auto_memory_format_on_a_cpu_is_channels_last_for_all_3d_models_only(family: str, expected: bool) -> None:
    """auto: channels-last on CUDA always; on a CPU only where every convolution is 3D (oneDNN ran
    those 1.5-1.9x faster channels-last, the 2D families slower); explicit settings win."""
    from rev2net import registry
    from rev2net.train import memory_format

    model = registry.build(model_config(family, width=0.0625), 3)
    cpu = torch.device("cpu")
    assert (memory_format(cpu, "auto", model) == torch.channels_last_3d) is expected
    assert memory_format(torch.device("cuda"), "auto", model) == torch.channels_last_3d
    assert memory_format(cpu, "contiguous", model) is None
    assert memory_format(cpu, "channels_last", model) == torch.channels_last_3d
    assert memory_format(cpu, "auto") is None  # no model: nothing to judge by


def test_compiled_step_matches_eager() -> None:
    """trainer.compile: torch.compile of forward + objective, the decoders and both DDP terms inside
    the captured graphs (no graph break: fullgraph), same terms and gradients. The tiniest Rev2Net,
    captured once, and run through AOTAutograd with eager kernels: inductor's C++ code generation
    takes many minutes on a CPU (benchmarks/step.py --compile measures it)."""
    model = tiny(dropout=0.0)
    to_channels_last(model)  # the GPU path's layout, compiled as it would run there
    batch = next(iter(loader(clips(n=2, frames=4, size=16), batch=2)))
    x = normalize_frames(batch["frames"])
    flow, label = batch["flow"].float(), batch["label"]
    results = []
    for compiled in (False, True):
        step = TrainingStep(model, LossConfig(), torch.device("cpu"), "off", compile=compiled, backend="aot_eager",
                            fullgraph=True)
        model.zero_grad()
        torch.manual_seed(7)  # the Gaussian samples
        terms, logits, _ = step([x], label, x, flow, n=2)
        terms["total"].backward()
        results.append(({k: v.item() for k, v in terms.items()}, logits.detach(),
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (eager, eager_logits, eager_grads), (comp, comp_logits, comp_grads) = results
    assert set(comp) == {"ce", "ddp_high", "ddp_low", "flow", "im", "total"}
    assert comp == pytest.approx(eager, rel=1e-4, abs=1e-5)
    assert torch.allclose(comp_logits, eager_logits, rtol=1e-4, atol=1e-5)
    assert len(comp_grads) == len(eager_grads) > 0
    for a, b in zip(comp_grads, eager_grads):  # to float32 rounding of each tensor's scale
        assert (a - b).abs().max() <= 1e-5 * a.abs().max() + 1e-6, f"{(a - b).abs().max()} of {a.abs().max()}"


def test_an_infinite_classifier_is_caught_as_ce() -> None:
    model = tiny()
    with torch.no_grad():
        model.encoder.logits.conv3d.bias.fill_(float("inf"))
    with pytest.raises(DivergedError) as caught:
        fit(model, loader(clips()), None, TrainerConfig(max_epochs=1), LossConfig())
    assert caught.value.term == "ce"


def test_evaluate_averages_softmax_scores_over_clips() -> None:
    model = tiny("i3d", classes=5).train()
    g = torch.Generator().manual_seed(0)
    batches = [{"frames": torch.randint(0, 256, (3, 2, 3, 8, 32, 32), dtype=torch.uint8, generator=g),
                "label": torch.tensor([0, 1, 4]), "skipped": torch.tensor([0, 2, 0])} for _ in range(2)]
    result = evaluate(model, batches, "cpu")
    assert model.training, "evaluate restores the model's mode"
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(normalize_frames(b["frames"]).flatten(0, 1)).logits.softmax(-1).view(3, 2, 5).mean(1)
                            for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    assert result["top1"] == pytest.approx((scores.argmax(1) == labels).float().mean().item())
    top5 = (scores.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    assert result["top5"] == pytest.approx(top5) == 1.0
    assert result["loss"] == pytest.approx(-scores[torch.arange(6), labels].log().mean().item(), rel=1e-5)
    assert result["skipped_videos"] == 4.0


def test_batches_must_follow_the_contract() -> None:
    data = clips(n=2, frames=4, size=16)
    tuples = DataLoader(data, batch_size=2)
    with pytest.raises(TypeError, match="dict batches"):
        fit(tiny("i3d"), tuples, None, TrainerConfig(max_epochs=1), LossConfig(**ZERO))
    no_flow = [{"frames": b["frames"], "label": b["label"]} for b in loader(data, batch=2)]
    with pytest.raises(KeyError, match="flow"):
        fit(tiny(), no_flow, None, TrainerConfig(max_epochs=1), LossConfig())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_epoch_in_bf16_on_cuda() -> None:
    data = clips(n=4)
    history = fit(tiny(), loader(data), loader(data), TrainerConfig(max_epochs=1, device="cuda"), LossConfig())
    assert all(math.isfinite(v) for v in history[0].values())
