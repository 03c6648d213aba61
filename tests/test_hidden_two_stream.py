"""rev2net/hidden_two_stream.py: the three fine-tuning variants build, train a step and freeze what
they say; late fusion is the log of the averaged softmaxes; the classifier interface holds."""

from __future__ import annotations

import math

import pytest
import torch

from rev2net.hidden_two_stream import VARIANTS, HiddenTwoStream, build_hidden_two_stream
from rev2net.motionnet import build_motionnet, motionnet_state

CLASSES = 4


def tiny(variant: str, **kwargs) -> HiddenTwoStream:
    torch.manual_seed(0)
    return build_hidden_two_stream(CLASSES, variant=variant, width=0.0625, motionnet_width=0.0625,
                                   motionnet_frames=4, **kwargs)


def clip(batch: int = 2, frames: int = 8, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_train_a_step_and_freeze_what_they_say(variant):
    model = tiny(variant).train()
    motionnet_grad = {p.requires_grad for p in model.motionnet.parameters()}
    assert motionnet_grad == ({False} if variant == "a" else {True})
    assert all(p.requires_grad for p in model.spatial.parameters()) and all(
        p.requires_grad for p in model.temporal.parameters())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {part: snapshot(getattr(model, part)) for part in ("spatial", "temporal", "motionnet")}
    x, label = clip(), torch.tensor([0, 3])
    out = model.forward_streams(x)
    assert out.spatial.shape == out.temporal.shape == out.logits.shape == (2, CLASSES)
    assert out.flow.shape == (2, 2, 7, 32, 32)
    terms = model.objective(out, label)
    if variant == "c":
        assert {"pixel", "smooth", "ssim", "unsupervised"} <= set(terms)
        assert all(terms[k].requires_grad for k in ("pixel", "smooth", "ssim"))
    else:
        assert not {"pixel", "smooth", "ssim", "unsupervised"} & set(terms), f"variant {variant}: no unsupervised loss"
    torch.testing.assert_close(terms["total"], sum(v for k, v in terms.items()
                                                   if k in ("ce_spatial", "ce_temporal", "unsupervised")))
    optimizer.zero_grad()
    terms["total"].backward()
    optimizer.step()
    assert changed(before["spatial"], model.spatial) and changed(before["temporal"], model.temporal)
    motionnet_changed = changed(before["motionnet"], model.motionnet)
    if variant == "a":
        assert not motionnet_changed, "the frozen MotionNet is unchanged"
        assert all(p.grad is None for p in model.motionnet.parameters())
        assert not model.motionnet.training, "a frozen MotionNet stays in eval mode"
    else:
        assert motionnet_changed, f"variant {variant} fine-tunes MotionNet end to end"


def test_only_variant_c_trains_motionnet_on_the_unsupervised_terms():
    """With the action losses switched off, only the unsupervised terms are left to move MotionNet."""
    for variant, moves in (("b", False), ("c", True)):
        model = tiny(variant).train()
        out = model.forward_streams(clip())
        terms = model.objective(out, torch.tensor([0, 1]))
        unsupervised = terms.get("unsupervised", terms["total"] * 0)
        grads = torch.autograd.grad(unsupervised, list(model.motionnet.parameters()), allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == moves, variant


def test_fusion_is_the_log_of_the_averaged_softmaxes():
    model = tiny("b").eval()
    x = clip()
    with torch.no_grad():
        out = model.forward_streams(x)
        fused = model(x)
    averaged = (out.spatial.softmax(1) + out.temporal.softmax(1)) / 2
    torch.testing.assert_close(fused, averaged.log())
    torch.testing.assert_close(out.logits, fused)
    weighted = tiny("b", temporal_weight=1.5).eval()
    with torch.no_grad():
        out = weighted.forward_streams(x)
    torch.testing.assert_close(out.logits, (0.4 * out.spatial.softmax(1) + 0.6 * out.temporal.softmax(1)).log())
    with pytest.raises(ValueError, match="variant='d'"):
        tiny("d")


def test_features_and_head_are_each_streams_i3d():
    """In eval mode the pooled-feature head gives exactly each I3D's own logits; the temporal stream
    reads MotionNet's flow / 20, clipped."""
    model = tiny("c").eval()
    x = clip()
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features)
        assert model.num_features == model.spatial.num_features + model.temporal.num_features
        torch.testing.assert_close(model.forward_head(features), model(x))
        out = model.forward_streams(x)
        torch.testing.assert_close(out.spatial, model.spatial(x), atol=1e-5, rtol=1e-4)
        flow = model.motionnet(x)
        torch.testing.assert_close(out.flow, flow)
        torch.testing.assert_close(out.temporal, model.temporal((flow / 20).clamp(-1, 1)), atol=1e-5, rtol=1e-4)
        assert out.unsupervised == {}, "no unsupervised terms outside training"
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(x).shape == (2, 7)
    assert math.isclose(model(x).exp().sum(1)[0].item(), 1.0, rel_tol=1e-5)


def test_builder_loads_a_pretrained_motionnet(tmp_path):
    torch.manual_seed(1)
    pretrained = build_motionnet(frames=4, width=0.0625)
    path = tmp_path / "motionnet.pt"
    torch.save(motionnet_state(pretrained), path)
    model = build_hidden_two_stream(CLASSES, variant="a", width=0.0625, motionnet_checkpoint=path)
    assert model.motionnet.config == {"frames": 4, "width": 0.0625}
    for (name, a), b in zip(pretrained.state_dict().items(), model.motionnet.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="motionnet_width=0.25"):
        build_hidden_two_stream(CLASSES, width=0.0625, motionnet_width=0.25, motionnet_checkpoint=path)
