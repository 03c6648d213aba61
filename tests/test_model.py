"""Rev2Net: decoder outputs shaped like their targets, what is switched off is neither built nor run,
eval is I3D, and the config names what is wrong."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from torch import nn

from rev2net.spec import ModelConfig
from rev2net.decoders import DECODER_ARCHS
from rev2net.losses import flow_target, frame_target
from rev2net.model import Need, Rev2Net, build_model, flow_size, flow_stride
from rev2net.registry import VARIANTS, model_config

ALL = Need(flow=True, frames=True, ddp_low=True, ddp_high=True)


def tiny(variant: str = "rev2net", **overrides) -> Rev2Net:
    torch.manual_seed(0)
    return build_model(model_config(variant, width=0.125, **overrides), num_classes=5)


@contextmanager
def count_calls(model: nn.Module) -> Iterator[dict[str, int]]:
    """Count forward calls of every named submodule."""
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if name:
            def hook(_m, _i, _o, name=name) -> None:
                calls[name] = calls.get(name, 0) + 1
            handles.append(module.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def ran(calls: dict[str, int], prefix: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for name in calls)


@pytest.mark.parametrize("arch", sorted(DECODER_ARCHS))
@pytest.mark.parametrize("frames, height, width", [(8, 32, 32), (9, 34, 30)])
def test_decoder_outputs_have_the_shapes_of_their_targets(arch: str, frames: int, height: int, width: int) -> None:
    model = tiny(decoder_arch=arch).train()
    x = torch.rand(2, 3, frames, height, width) * 2 - 1
    out = model(x, need=ALL)
    t, h, w = flow_size(frames, height, width)
    assert (h, w) == (math.ceil(height / flow_stride()), math.ceil(width / flow_stride()))
    assert out.flow.shape == (2, 2, frames - 1, h, w), f"flow {tuple(out.flow.shape)} for clip {tuple(x.shape)}"
    assert out.frames.shape == (2, 3, frames, h, w), f"frames {tuple(out.frames.shape)} for clip {tuple(x.shape)}"
    # targets as the data pipeline delivers them (flow at the decoder's stride, or at full size)
    for flow_h, flow_w in ((h, w), (height, width)):
        target = flow_target(torch.randn(2, 2, frames - 1, flow_h, flow_w), (t, h, w))
        assert target.shape == out.flow.shape, f"flow target {tuple(target.shape)} vs {tuple(out.flow.shape)}"
    assert frame_target(x, tuple(out.frames.shape[2:])).shape == out.frames.shape
    assert out.frames.abs().max() <= 1, "reconstructed frames are on the input's [-1, 1] scale"
    assert len(out.ddp_pairs) == 1
    for a, b in out.ddp_pairs:
        assert a.shape == b.shape, f"DDP compares layers of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
    mu1, logvar1, mu2, logvar2 = out.gaussians
    assert mu1.shape == logvar1.shape == mu2.shape == logvar2.shape == (2, model.cfg.latent_dim)
    assert out.logits.shape == (2, 5)


def test_flow_stride_matches_the_model() -> None:
    model = tiny()
    assert model.flow_stride == flow_stride(model.cfg) == 2


def test_eval_runs_only_i3d() -> None:
    model = tiny().eval()
    x = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad(), count_calls(model) as calls:
        out = model(x)
    assert not ran(calls, "flow_decoder") and not ran(calls, "frame_decoder")
    assert not ran(calls, "flow_gaussian") and not ran(calls, "frame_gaussian")
    assert out.flow is None and out.frames is None and out.gaussians is None and out.ddp_pairs == []
    with torch.no_grad():
        assert torch.equal(out.logits, model.encoder(x)), "eval output is plain I3D's"


@pytest.mark.parametrize(
    "need, runs, skips",
    [
        (Need(flow=True), ["flow_decoder.head", "flow_gaussian"], ["frame_decoder", "frame_gaussian"]),
        (Need(frames=True), ["frame_decoder.out", "frame_gaussian"], ["flow_decoder", "flow_gaussian"]),
        (Need(ddp_low=True), ["flow_decoder.trunk", "frame_decoder.trunk"],
         ["flow_decoder.head", "frame_decoder.refine", "frame_decoder.out", "frame_decoder.background"]),
        (Need(ddp_high=True), ["flow_gaussian", "frame_gaussian"], ["flow_decoder", "frame_decoder"]),
        (Need(), [], ["flow_decoder", "frame_decoder", "flow_gaussian", "frame_gaussian"]),
    ],
)
def test_only_what_is_needed_runs(need: Need, runs: list[str], skips: list[str]) -> None:
    model = tiny().train()
    with count_calls(model) as calls:
        model(torch.rand(2, 3, 8, 32, 32) * 2 - 1, need=need)
    for name in runs:
        assert ran(calls, name), f"{name} must run for {need}"
    for name in skips:
        assert not ran(calls, name), f"{name} must not run for {need}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_builds_only_what_it_uses(variant: str) -> None:
    model = tiny(variant)
    cfg = model.cfg
    assert (model.flow_decoder is not None) == cfg.flow_decoder
    assert (model.frame_decoder is not None) == cfg.frame_decoder
    assert (model.flow_gaussian is not None) == (cfg.ddp in ("high", "both"))
    conditioned = model.flow_gaussian is not None
    for decoder in (model.flow_decoder, model.frame_decoder):
        if decoder is not None:
            assert (decoder.film is not None) == conditioned
    out = model.train()(torch.rand(2, 3, 8, 32, 32) * 2 - 1)  # default need: everything built
    assert (out.flow is not None) == cfg.flow_decoder and (out.frames is not None) == cfg.frame_decoder
    assert (out.gaussians is not None) == conditioned
    assert bool(out.ddp_pairs) == (cfg.ddp in ("low", "both"))


def test_i3d_baseline_has_exactly_the_inference_parameters() -> None:
    with torch.device("meta"):
        model = build_model(model_config("i3d"), num_classes=101)
        full = build_model(ModelConfig(), num_classes=101)
    assert sum(p.numel() for p in model.parameters()) == model.inference_parameters() == 12_390_789
    assert full.inference_parameters() == 12_390_789
    assert sum(p.numel() for p in full.parameters()) > 12_390_789


def test_asking_for_what_is_not_built_is_an_error() -> None:
    model = tiny("no_flow_decoder").train()
    with pytest.raises(ValueError, match="need.flow"):
        model(torch.rand(1, 3, 8, 32, 32), need=Need(flow=True))


def test_frames_must_be_a_clip() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        tiny()(torch.rand(3, 8, 32, 32))


def test_bn_momentum_reaches_every_batchnorm() -> None:
    model = tiny(bn_momentum=0.1)
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm3d)}
    assert momenta == {0.1}
    assert {m.momentum for m in tiny().modules() if isinstance(m, nn.BatchNorm3d)} == {0.01}
