"""Rev2Net: decoder outputs shaped like their targets, the reversed frame target reaches across the
clip, each decoder decodes from its Gaussian sample, low-level DDP pairs layers of equal shape, what
is switched off is neither built nor run, eval is I3D, ImageNet weights are inflated into the
encoder, and the config names what is wrong."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from torch import nn

from rev2net.spec import DDP_LAYER_PAIRS, ModelConfig
from rev2net.decoders import DECODER_ARCHS
from rev2net.googlenet import build_googlenet
from rev2net.losses import area_resize, flow_target, frame_target, needs, objective
from rev2net.model import Need, Rev2Net, build_model, flow_size, flow_stride
from rev2net.registry import FORWARD_FRAMES, REV2NET, VARIANTS, model_config
from rev2net.spec import LossConfig

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
    assert len(out.ddp_pairs) == len(DDP_LAYER_PAIRS), "by default DDP compares every pair of equal shape"
    channels = model.flow_decoder.trunk.bn.num_features
    for a, b in out.ddp_pairs:
        assert a.shape == b.shape, f"DDP compares layers of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        assert a.shape[:3] == (2, channels, math.ceil(frames / 2)), f"a DDP layer is C x T/2 x .., got {tuple(a.shape)}"
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


TRUNKS = ["flow_decoder.trunk", "frame_decoder.trunk"]
HEADS = ["flow_decoder.head", "frame_decoder.out", "frame_decoder.background"]


@pytest.mark.parametrize(
    "need, layers, runs, skips",
    [
        (Need(flow=True), DDP_LAYER_PAIRS, ["flow_decoder.head", "flow_gaussian"],
         ["frame_decoder", "frame_gaussian"]),
        (Need(frames=True), DDP_LAYER_PAIRS, ["frame_decoder.out", "frame_gaussian"],
         ["flow_decoder", "flow_gaussian"]),
        (Need(ddp_low=True), DDP_LAYER_PAIRS, [*TRUNKS, "frame_decoder.refine", "flow_gaussian", "frame_gaussian"],
         HEADS),
        (Need(ddp_low=True), ["trunk-trunk"], [*TRUNKS, "flow_gaussian", "frame_gaussian"],
         [*HEADS, "frame_decoder.refine"]),
        (Need(ddp_high=True), DDP_LAYER_PAIRS, ["flow_gaussian", "frame_gaussian"], ["flow_decoder", "frame_decoder"]),
        (Need(), DDP_LAYER_PAIRS, [], ["flow_decoder", "frame_decoder", "flow_gaussian", "frame_gaussian"]),
    ],
)
def test_only_what_is_needed_runs(need: Need, layers: list[str], runs: list[str], skips: list[str]) -> None:
    model = tiny(ddp_layers=list(layers)).train()
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
    assert (model.flow_gaussian is not None) == cfg.flow_decoder, "each decoder decodes from its own Gaussian"
    assert (model.frame_gaussian is not None) == cfg.frame_decoder
    out = model.train()(torch.rand(2, 3, 8, 32, 32) * 2 - 1)  # default need: everything built
    assert (out.flow is not None) == cfg.flow_decoder and (out.frames is not None) == cfg.frame_decoder
    both = cfg.flow_decoder and cfg.frame_decoder
    assert (out.gaussians is not None) == both and bool(out.ddp_pairs) == both


def test_the_ddp_variants_are_the_full_network() -> None:
    """Table 2's "w/o DDP" changes the loss weights only: the same parameters, the same forward."""
    full = tiny(REV2NET)
    x = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    for name in ("no_ddp", "ddp_low_only", "ddp_high_only"):
        other = tiny(name)
        assert [(k, v.shape) for k, v in other.state_dict().items()] == \
            [(k, v.shape) for k, v in full.state_dict().items()], name
        other.load_state_dict(full.state_dict())
        torch.manual_seed(3)
        a = other.train()(x, need=ALL)
        torch.manual_seed(3)
        b = full.train()(x, need=ALL)
        assert torch.equal(a.frames, b.frames) and torch.equal(a.gaussians[0], b.gaussians[0]), name


def _output_compared_with_first_frame(out, clip: torch.Tensor) -> int:
    """The index of the output frame the objective compares with input frame 0."""
    target = frame_target(clip, tuple(out.frames.shape[2:]), out.frame_target)
    first = area_resize(clip[:, :, :1].float(), (1, *out.frames.shape[3:]))
    return int((target - first).flatten(3).abs().sum(dim=(0, 1, 3)).argmin())


@pytest.mark.parametrize("variant, far_end", [(REV2NET, True), (FORWARD_FRAMES, False)])
def test_reversed_target_makes_the_decoder_reach_across_the_clip(variant: str, far_end: bool) -> None:
    """With batch statistics frozen (eval-mode BatchNorm), the output frame compared with input frame
    0 depends on the clip's last frames more than on its first ones (the paper's reading: the decoder
    stays time-aligned and its frame i is compared with input frame T-1-i), and the other way round
    when frames are compared in input order."""
    frames = 16
    model = tiny(variant).eval()
    clip = (torch.rand(2, 3, frames, 32, 32) * 2 - 1).requires_grad_()
    out = model(clip, need=Need(frames=True))
    k = _output_compared_with_first_frame(out, clip.detach())
    assert k == (frames - 1 if far_end else 0), f"input frame 0 is compared with output frame {k}"
    weights = torch.randn(out.frames[:, :, k].shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((out.frames[:, :, k] * weights).sum(), clip)
    mass = grad.abs().sum(dim=(0, 1, 3, 4))  # (T,): how much each input frame moves that output frame
    first, last = mass[: frames // 4].sum().item(), mass[-(frames // 4):].sum().item()
    assert (last > 1.2 * first) if far_end else (first > 1.2 * last), f"first quarter {first:.4g}, last {last:.4g}"


def test_each_decoder_decodes_from_its_latent_sample() -> None:
    """z is an input of the decoder (it makes a frame even from blank tap features), not a scale."""
    model = tiny().eval()
    tap = torch.zeros(2, model.encoder.channels["Conv3d_2c_3x3"], 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(2, model.cfg.latent_dim, generator=g) for _ in range(2))
    for decoder, size in ((model.flow_decoder, (7, 16, 16)), (model.frame_decoder, (8, 16, 16))):
        _, a = decoder(tap, z1, size)
        _, b = decoder(tap, z2, size)
        assert not torch.allclose(a, b), f"{type(decoder).__name__} ignores z"
        spread = a.flatten(2).std(dim=2)  # (B, channels): the z-map has a layout in time and space
        assert (spread > 0).all(), f"{type(decoder).__name__} makes a constant map of z"
        with pytest.raises(TypeError):
            decoder(tap, size=size)


def test_ddp_layers_choose_the_pairs() -> None:
    model = tiny(ddp_layers=["trunk-refine"]).train()
    out = model(torch.rand(2, 3, 8, 32, 32) * 2 - 1, need=Need(ddp_low=True))
    assert len(out.ddp_pairs) == 1
    (a, b), = out.ddp_pairs
    assert a.shape == b.shape
    with pytest.raises(ValueError, match=r"model.ddp_layers: 'head-out' is not a pair .* trunk-trunk, trunk-refine"):
        ModelConfig(ddp_layers=["head-out"])


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


@pytest.fixture(scope="module")
def googlenet_file(tmp_path_factory) -> str:
    """A random ImageNet GoogLeNet in torchvision's state-dict layout (with its classifier and
    auxiliary heads' keys absent, as rev2net.googlenet builds it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "googlenet.pth"
    torch.save(build_googlenet(1000).state_dict(), path)
    return str(path)


def test_imagenet_checkpoint_is_inflated_into_the_encoder_and_trains(googlenet_file) -> None:
    torch.manual_seed(0)
    model = build_model(model_config(REV2NET, pretrained=f"imagenet:{googlenet_file}", dropout=0.0), num_classes=3)
    report = model.pretrained_report
    assert report.missing == [] and report.replaced == ["logits.conv3d.bias", "logits.conv3d.weight"]
    source = torch.load(googlenet_file)
    expected = source["inception4b.branch2.1.conv.weight"].unsqueeze(2).repeat(1, 1, 3, 1, 1) / 3
    torch.testing.assert_close(model.encoder.Mixed_4c.b1b.conv3d.weight, expected)
    loss_cfg = LossConfig()
    clips, flow = torch.rand(2, 3, 8, 32, 32) * 2 - 1, torch.randn(2, 2, 7, 16, 16)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
    terms = objective(model.train()(clips, need=needs(loss_cfg)), torch.tensor([0, 2]), clips, flow, loss_cfg)
    terms["total"].backward()
    optimiser.step()
    assert torch.isfinite(terms["total"]) and model.encoder.Conv3d_1a_7x7.conv3d.weight.grad.abs().sum() > 0


def test_a_bad_pretrained_spec_is_one_line_naming_the_key(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"^model.pretrained='kinetics:/w.pt': unknown scheme 'kinetics'[^\n]*$"):
        build_model(model_config(REV2NET, pretrained="kinetics:/w.pt"), num_classes=3)


@pytest.mark.parametrize("arch", ["paper", "deep"])
def test_channels_last_is_kept_through_every_layer_and_changes_no_output(arch):
    """trainer.memory_format=channels_last (CUDA's default): every 5D activation of I3D and the
    decoders stays channels-last (no layout conversions inside the network), same outputs."""
    from rev2net.train import to_channels_last

    torch.manual_seed(0)
    model = tiny(decoder_arch=arch, dropout=0.0).eval()
    reference = tiny(decoder_arch=arch, dropout=0.0).eval()
    reference.load_state_dict(model.state_dict())
    to_channels_last(model)
    layouts: dict[str, set] = {}

    def record(module, _, out):
        if isinstance(out, torch.Tensor) and out.dim() == 5:
            layouts.setdefault(type(module).__name__, set()).add(out.is_contiguous(memory_format=torch.channels_last_3d))

    for module in model.modules():
        module.register_forward_hook(record)
    x = torch.randn(2, 3, 8, 32, 32)
    everything = Need(flow=True, frames=True, ddp_low=True, ddp_high=True)
    out = model(x.contiguous(memory_format=torch.channels_last_3d), need=everything)
    assert {name for name, seen in layouts.items() if seen != {True}} == set(), layouts
    assert {"Conv3d", "MaxPool3dSame", "ConvTranspose3d", "LatentMap", "TrunkBlock"} <= set(layouts)
    expected = reference(x, need=everything)
    for name in ("logits", "flow", "frames"):
        assert torch.allclose(getattr(out, name), getattr(expected, name), rtol=1e-4, atol=1e-5), name
